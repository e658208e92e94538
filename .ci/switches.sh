#!/usr/bin/env bash
# Real switch software for the tests: Debian's kamailio (with the db_text/db_flatstore/acc/dialog
# modules the tests load, all in the main package) and sip-tester (SIPp). `install` is idempotent:
# it installs only what is missing. No system service is used: the tests start their own Kamailio
# on loopback with free ports and temp dirs (tests/switches/kamailio.py), so nothing must run here.
set -euo pipefail

modules_dir() {  # the compiled-in module path, e.g. /usr/lib/x86_64-linux-gnu/kamailio/modules
    kamailio -h 2>&1 | sed -n 's/.*-L path.*(default: \(.*\))/\1/p'
}

missing() {
    local need=() dir
    if command -v kamailio >/dev/null && dir=$(modules_dir) && [[ -e $dir/db_text.so && -e $dir/db_flatstore.so ]]; then
        :
    else
        need+=(kamailio)
    fi
    command -v sipp >/dev/null || need+=(sip-tester)
    echo "${need[@]:-}"
}

install() {
    local need
    need=$(missing)
    if [[ -z $need ]]; then
        echo "switches: found $(kamailio -v | head -1), $(sipp -v 2>&1 | grep -o 'SIPp v[^ -]*' | head -1)"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "switches: missing $need and not root; run: sudo apt-get install -y $need" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $need
    # the Debian package enables a system service; the tests never use it
    if command -v systemctl >/dev/null && systemctl is-active --quiet kamailio 2>/dev/null; then
        systemctl stop kamailio || true
    fi
    need=$(missing)
    [[ -z $need ]] || { echo "switches: install finished but still missing: $need" >&2; exit 1; }
    echo "switches: installed kamailio and sip-tester"
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac

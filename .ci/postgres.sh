#!/usr/bin/env bash
# PostgreSQL for the tests. `install` is idempotent: it installs the Debian server binaries
# only when no initdb/pg_ctl is found. No system service is used: the tests start and stop
# their own throwaway cluster (tests/postgres.py), so nothing must be running here.
set -euo pipefail

pg_bindir() {
    # Newest installed major version that has both initdb and pg_ctl.
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

install() {
    if dir=$(pg_bindir); then
        echo "postgres: found $dir"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "postgres: not installed and not root; run: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends postgresql
    dir=$(pg_bindir) || { echo "postgres: install finished but initdb/pg_ctl not found" >&2; exit 1; }
    echo "postgres: installed $dir"
}

case "${1:-}" in
    install) install ;;
    bindir) pg_bindir ;;
    *) echo "usage: $0 install|bindir" >&2; exit 2 ;;
esac

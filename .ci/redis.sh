#!/usr/bin/env bash
# Redis for the tests. `install` is idempotent: it installs Debian's redis-server only when no
# redis-server binary is found. No system service is used: the tests start and stop their own
# throwaway server on a free loopback port in a temp dir (tests/redis_server.py).
set -euo pipefail

install() {
    if command -v redis-server >/dev/null 2>&1; then
        echo "redis: found $(command -v redis-server) ($(redis-server --version | cut -d' ' -f3))"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "redis: not installed and not root; run: sudo apt-get install -y redis-server" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends redis-server
    command -v redis-server >/dev/null 2>&1 || { echo "redis: install finished but redis-server not found" >&2; exit 1; }
    # the package may start a system service on :6379; the tests never use it
    echo "redis: installed $(command -v redis-server)"
}

case "${1:-}" in
    install) install ;;
    *) echo "usage: $0 install" >&2; exit 2 ;;
esac

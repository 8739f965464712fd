#!/bin/sh
# Installs the Debian packages tokmon builds and tests with, when any is
# missing (apt-get update first), and the StatsD client the integration tests
# replay (npm hot-shots, pinned in tests/clients/package-lock.json).
#   scripts/deps.sh          install what is missing
#   scripts/deps.sh check    exit 1 when something is missing, install nothing
set -eu

PKGS="build-essential pkg-config clang libclang-rt-14-dev
libzmq3-dev libmsgpack-dev libpq-dev libcurl4-openssl-dev libsodium-dev
libinih-dev libjansson-dev libmicrohttpd-dev libprotobuf-c-dev protobuf-c-compiler
libsnappy-dev libcmocka-dev libxxhash-dev zlib1g-dev
postgresql-15 prometheus prometheus-alertmanager
python3 python3-statsd python3-msgpack python3-zmq jq systemd"

missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
node_missing=0
command -v npm >/dev/null 2>&1 || node_missing=1

here=$(cd "$(dirname "$0")/.." && pwd)
clients_missing=0
[ -d "$here/tests/clients/node_modules/hot-shots" ] || clients_missing=1

if [ "${1:-}" = check ]; then
    [ -z "$missing" ] && [ $node_missing = 0 ] && [ $clients_missing = 0 ] && exit 0
    echo "missing:$missing$( [ $node_missing = 1 ] && echo ' npm')$( [ $clients_missing = 1 ] && echo ' hot-shots')"
    exit 1
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if [ -n "$missing" ] || [ $node_missing = 1 ]; then
    [ $node_missing = 1 ] && missing="$missing nodejs npm"
    echo "deps: installing$missing"
    $SUDO apt-get update -qq
    # apt must not start the servers it installs; tests start their own
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
if [ $clients_missing = 1 ]; then
    echo "deps: installing the npm StatsD client for the integration tests"
    (cd "$here/tests/clients" && npm ci --no-audit --no-fund --loglevel=error)
fi

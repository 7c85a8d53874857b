#!/usr/bin/env bash
# run.sh: the replicas-behind-nginx test (make test runs it after the web page).
#
#   tests/cluster/run.sh [LLMD_BINARY]     default build/llmd
#
# Installs Debian's nginx-light with apt-get when run as root and nginx is
# missing; otherwise, or when that fails, says why and skips (exit 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
skip() { echo "== cluster test skipped: $*"; exit 0; }
if ! command -v nginx >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "nginx is not installed and this is not root"
    echo "== cluster test: installing nginx-light"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) \
        >/tmp/llmd-cluster-test-apt.log 2>&1 || skip "could not install nginx-light (see /tmp/llmd-cluster-test-apt.log)"
fi
[ -x /usr/bin/python3 ] || skip "no /usr/bin/python3"
echo "== cluster test: 3 replicas behind nginx ($(nginx -v 2>&1 | sed 's/.*\///')), one killed, one stopped, one restarted"
LLMD_BINARY="${1:-build/llmd}" timeout 300 /usr/bin/python3 tests/cluster/cluster_test.py

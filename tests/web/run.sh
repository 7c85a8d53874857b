#!/usr/bin/env bash
# run.sh: the web page's browser test (make test runs it after the C tests).
#
#   tests/web/run.sh [LLMD_BINARY]     default build/llmd
#
# Needs Debian's chromium and node/npm: installs them with apt-get when run as
# root and they are missing; otherwise, or when that fails, says why and skips
# (exit 0), so that `make test` stays runnable anywhere. playwright-core, pinned
# by tests/web/package-lock.json, is installed with `npm ci` into a cache outside
# the repository (LLMD_WEB_TEST_CACHE, default ~/.cache/llmd-web-test).
# Screenshots of each view go to build/web-test/.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-build/llmd}
CACHE=${LLMD_WEB_TEST_CACHE:-$HOME/.cache/llmd-web-test}
skip() { echo "== web page test skipped: $*"; exit 0; }

missing=""
command -v chromium >/dev/null || missing="$missing chromium"
command -v node >/dev/null || missing="$missing nodejs"
command -v npm >/dev/null || missing="$missing npm"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "== web page test: installing$missing"
        if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) \
            >/tmp/llmd-web-test-apt.log 2>&1; then
            skip "could not install$missing (see /tmp/llmd-web-test-apt.log)"
        fi
    else
        skip "$missing not installed and not root"
    fi
fi

mkdir -p "$CACHE"
if ! cmp -s tests/web/package-lock.json "$CACHE/package-lock.json" || ! [ -d "$CACHE/node_modules/playwright-core" ]; then
    cp tests/web/package.json tests/web/package-lock.json "$CACHE/"
    if ! (cd "$CACHE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >/tmp/llmd-web-test-npm.log 2>&1; then
        rm -f "$CACHE/package-lock.json"
        skip "npm ci of playwright-core failed (see /tmp/llmd-web-test-npm.log)"
    fi
fi

echo "== web page test (chromium $(chromium --version 2>/dev/null | awk '{print $2}'), $BIN)"
mkdir -p build/web-test
NODE_PATH="$CACHE/node_modules" LLMD_BINARY="$BIN" LLMD_WEB_SHOTS=build/web-test \
    CHROMIUM="$(command -v chromium)" PLAYWRIGHT_CORE="$CACHE/node_modules/playwright-core/index.mjs" \
    timeout 300 node tests/web/page_test.mjs

#!/bin/sh
# soak.sh: keeps `llmd serve` under mixed traffic for a while and checks that
# nothing grows: resident memory, open file descriptors, KV pages in use.
#
#   bench/soak.sh [SECONDS] [MODEL]        (default 120 s, the test model)
#   LLMD_BINARY=build/asan/llmd bench/soak.sh 600    # with ASan: a leak fails the exit
#
# Traffic, all at once: build/bench/loadgen bursts (16 streamed clients),
# clients that hang up mid-stream and mid-wait, malformed and oversized
# requests, and /metrics scrapes. Every 10 s it samples /metrics. At the end
# it requires: KV pages back to 0, no request left running, open fds within
# 8 of the start, resident memory within 20 % of the first sample after
# warm-up, and exit status 0 after SIGTERM.
set -eu
cd "$(dirname "$0")/.."

DURATION=${1:-120}
MODEL=${2:-tests/data/tiny-random.gguf}
BIN=${LLMD_BINARY:-build/llmd}
LOG=$(mktemp /tmp/llmd-soak-XXXXXX.log)
OUT=$(mktemp /tmp/llmd-soak-out-XXXXXX)
[ -x "$BIN" ] || { echo "soak: $BIN is not built (make $BIN)"; exit 2; }
[ -x build/bench/loadgen ] || { echo "soak: build/bench/loadgen is not built"; exit 2; }

"$BIN" serve --model "$MODEL" --port 0 --no-access-log >"$OUT" 2>"$LOG" &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
    URL=$(sed -n 's/^llmd: listening on \(http:[^ ]*\)$/\1/p' "$OUT")
    [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null 2>&1 && break
    sleep 0.1
done
[ -n "$URL" ] || { echo "soak: the daemon did not start; log $LOG"; exit 1; }

metric() { curl -s "$URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }

# One round of the mixed traffic (about 10 s).
round() {
    build/bench/loadgen --url "$URL" --concurrency 16 --requests 48 --no-wrk >/dev/null 2>&1 &
    LG=$!
    for _ in 1 2 3 4 5; do
        curl -s -N -m 0.3 "$URL/v1/completions" -o /dev/null \
            -d '{"prompt":"soak","max_tokens":400,"ignore_eos":true,"stream":true}' || true
        curl -s -m 0.3 "$URL/v1/chat/completions" -o /dev/null \
            -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":400,"ignore_eos":true}' || true
        curl -s "$URL/v1/completions" -o /dev/null -d '{"prompt": ' || true
        curl -s "$URL/v1/completions" -o /dev/null -d '{"prompt":"x","n":3,"logprobs":2,"max_tokens":4}' || true
        curl -s "$URL/nope" -o /dev/null || true
        curl -s "$URL/metrics" -o /dev/null || true
        sleep 0.5
    done
    wait $LG || true
}

printf '%8s %10s %8s %9s %10s\n' "seconds" "rss_MB" "fds" "kv_pages" "requests"
START=$(date +%s)
FDS0=$(metric process_open_fds)
RSS_WARM=""
while :; do
    round
    NOW=$(( $(date +%s) - START ))
    RSS=$(metric process_resident_memory_bytes)
    FDS=$(metric process_open_fds)
    KV=$(metric llmd_kv_pages_used)
    REQS=$(curl -s "$URL/metrics" | awk '/^llmd_http_requests_total/ { s += $2 } END { print s }')
    printf '%8d %10.1f %8d %9d %10d\n' "$NOW" "$(echo "$RSS" | awk '{ print $1 / 1048576 }')" \
        "$FDS" "$KV" "$REQS"
    [ -z "$RSS_WARM" ] && [ "$NOW" -ge 20 ] && RSS_WARM=$RSS
    [ "$NOW" -ge "$DURATION" ] && break
done

sleep 1
KV=$(metric llmd_kv_pages_used)
RUNNING=$(metric llmd_num_requests_running)
FDS=$(metric process_open_fds)
RSS=$(metric process_resident_memory_bytes)
[ -n "$RSS_WARM" ] || RSS_WARM=$RSS
GROWTH=$(awk -v a="$RSS_WARM" -v b="$RSS" 'BEGIN { printf "%.1f", 100 * (b - a) / a }')
kill -TERM $PID
STATUS=0
wait $PID || STATUS=$?
trap - EXIT

echo
echo "soak_seconds: $NOW"
echo "soak_rss_growth_percent: $GROWTH"
echo "soak_fds_start_end: $FDS0 $FDS"
echo "soak_kv_pages_left: $KV"
echo "soak_exit_status: $STATUS"
FAIL=0
[ "$KV" = 0 ] || { echo "soak: FAIL: $KV KV pages still in use"; FAIL=1; }
[ "$RUNNING" = 0 ] || { echo "soak: FAIL: $RUNNING requests still running"; FAIL=1; }
[ $((FDS - FDS0)) -le 8 ] || { echo "soak: FAIL: open fds grew from $FDS0 to $FDS"; FAIL=1; }
awk -v g="$GROWTH" 'BEGIN { exit !(g > 20) }' && { echo "soak: FAIL: RSS grew $GROWTH %"; FAIL=1; }
[ "$STATUS" = 0 ] || { echo "soak: FAIL: exit status $STATUS (log $LOG)"; FAIL=1; }
[ $FAIL = 0 ] && echo "soak: ok" && rm -f "$LOG" "$OUT"
exit $FAIL

#!/bin/sh
# soak.sh: a bounded soak of `llmd serve` on 127.0.0.1 under mixed traffic.
#
#   bench/soak.sh [SECONDS] [MODEL]          (default 60 s, the test model)
#   SOAK_CONNECTIONS=64 SOAK_MAX_TOKENS=16 bench/soak.sh 60 models/llmd-20m.gguf
#   LLMD_BINARY=build/asan/llmd bench/soak.sh 20   # with ASan: a leak fails the exit
#   SOAK_SERVER_ARGS="--precision fp32" ...        # more `serve` flags
#
# SOAK_CONNECTIONS (default 64) connections at once, for SECONDS:
#   1/4  build/bench/loadgen: streamed completions, closed loop
#   1/4  wrk POST /v1/completions (plain, bench/wrk_status.lua counts statuses)
#   1/4  wrk GET /health, 1/8 wrk GET /v1/models
#   the rest: /metrics scrapes, bad requests (each with its expected 4xx),
#   and clients that hang up mid-stream and mid-wait.
#   SOAK_PIM_CLIENTS (default 2) PIM clients, each looping over: a small vmm
#   waited on in the POST, a small SPD solve polled by id, every 3rd round a
#   slow invert (SOAK_PIM_SLOW_N, default 192) cancelled by DELETE, every 5th
#   a singular solve that must fail. 429 is allowed; every accepted job must
#   reach done (vmm, solve), failed (singular) or cancelled/done (the
#   cancelled ones), and the server's PIM counters must agree.
# Every 10 s it samples /metrics. It reports requests served, errors by kind
# (client side and server side), resident memory at start and end, and
# requires: no error but 429 (and the bad requests' own 4xx), every
# generation request the server accepted finished (stop, length, or
# cancelled when its client left; none by error or timeout), KV pages back
# to 0, nothing running or waiting, open fds within 8 of the start, RSS
# within 20 % of the first sample after warm-up, exit status 0 after SIGTERM.
set -eu
cd "$(dirname "$0")/.."

DURATION=${1:-60}
MODEL=${2:-tests/data/tiny-random.gguf}
BIN=${LLMD_BINARY:-build/llmd}
CONNS=${SOAK_CONNECTIONS:-64}
MAX_TOKENS=${SOAK_MAX_TOKENS:-16}
LOG=$(mktemp /tmp/llmd-soak-XXXXXX.log)
OUT=$(mktemp /tmp/llmd-soak-out-XXXXXX)
TMP=$(mktemp -d /tmp/llmd-soak-XXXXXX)
[ -x "$BIN" ] || { echo "soak: $BIN is not built (make $BIN)"; exit 2; }
[ -x build/bench/loadgen ] || { echo "soak: build/bench/loadgen is not built"; exit 2; }
command -v wrk >/dev/null || { echo "soak: wrk is not installed (make deps)"; exit 2; }
[ "$CONNS" -ge 16 ] || { echo "soak: SOAK_CONNECTIONS must be at least 16"; exit 2; }
C4=$((CONNS / 4))
C8=$((CONNS / 8))
PIM_CLIENTS=${SOAK_PIM_CLIENTS:-2}
PIM_SLOW_N=${SOAK_PIM_SLOW_N:-192}

# shellcheck disable=SC2086 # SOAK_SERVER_ARGS is a list of flags
"$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --no-access-log \
    --max-running 64 ${SOAK_SERVER_ARGS:-} >"$OUT" 2>"$LOG" &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true' EXIT
URL=""
for _ in $(seq 1 600); do
    URL=$(sed -n 's/^llmd: listening on \(http:[^ ]*\)$/\1/p' "$OUT")
    [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null 2>&1 && break
    sleep 0.1
done
[ -n "$URL" ] || { echo "soak: the daemon did not start; log $LOG"; exit 1; }
case "$URL" in http://127.0.0.1:*) ;; *) echo "soak: not on 127.0.0.1: $URL"; exit 1 ;; esac

metric() { curl -s "$URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
# Sum of the llmd_http_requests_total samples whose labels match $1 (a regex).
http_count() {
    curl -s "$URL/metrics" |
        awk -v re="$1" '/^llmd_http_requests_total/ && $1 ~ re { s += $2 } END { print s + 0 }'
}
# Adds one to counter file $TMP/$1.
tally() { echo x >>"$TMP/$1"; }
count() { [ -f "$TMP/$1" ] && wc -l <"$TMP/$1" | tr -d ' ' || echo 0; }

# A request that must get status $1: tallies "bad_$1" or "unexpected".
expect() {
    want=$1
    shift
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)
    if [ "$got" = "$want" ]; then tally "bad_$want"; else tally "unexpected_$got"; fi
}

# --- PIM jobs: bodies written once, a client loop, a final check by id
# An n x n diagonally dominant symmetric matrix as nested JSON (SPD).
spd_json() {
    awk -v n="$1" 'BEGIN { srand(7); printf "["
        for (i = 0; i < n; i++) for (j = 0; j <= i; j++) a[i, j] = a[j, i] = (i == j ? n + 1 : rand() - 0.5)
        for (i = 0; i < n; i++) { printf "%s[", i ? "," : ""
            for (j = 0; j < n; j++) printf "%s%.4f", j ? "," : "", a[i, j]
            printf "]" }
        printf "]" }'
}
printf '{"type":"vmm","matrix":[[1,2,3,4],[5,6,7,8],[-1,0.5,2,-3]],"input":[1,-1,2,0.5],"seed":1,"wait":30}' >"$TMP/pim_vmm"
printf '{"type":"solve","matrix":%s,"rhs":[1,2,3,4,5,6,7,8]}' "$(spd_json 8)" >"$TMP/pim_solve"
printf '{"type":"invert","matrix":%s}' "$(spd_json "$PIM_SLOW_N")" >"$TMP/pim_slow"
printf '{"type":"solve","matrix":[[1,2],[2,4]],"rhs":[1,1]}' >"$TMP/pim_singular"

# pim_call METHOD PATH [BODY_FILE]: prints the status code, then the body.
pim_call() {
    if [ $# -ge 3 ]; then
        curl -s -m 60 -X "$1" "$URL$2" --data-binary @"$3" -w '\n%{http_code}' 2>/dev/null || echo 000
    else
        curl -s -m 60 -X "$1" "$URL$2" -w '\n%{http_code}' 2>/dev/null || echo 000
    fi
}
code_of() { printf '%s\n' "$1" | tail -n 1; }
id_of() { printf '%s' "$1" | grep -o '"id": *"pim-[0-9]*"' | head -n 1 | sed 's/.*"\(pim-[0-9]*\)"/\1/'; }
state_of() { printf '%s' "$1" | grep -o '"status": *"[a-z]*"' | head -n 1 | sed 's/.*"\([a-z]*\)"/\1/'; }

# pim_submit CLIENT KIND BODY_FILE [QUERY]: submits; records "ID KIND" when
# accepted; prints the answer.
pim_submit() {
    ans=$(pim_call POST "/v1/pim/jobs${4:-}" "$3")
    code=$(code_of "$ans")
    case $code in
    200 | 202) echo "$(id_of "$ans") $2" >>"$TMP/pim_ids_$1" ;;
    429) tally pim_429 ;;
    *) tally "pim_unexpected_$code" ;;
    esac
    printf '%s' "$ans"
}

pim_client() {
    round=0
    while [ "$(date +%s)" -lt "$DEADLINE" ]; do
        round=$((round + 1))
        pim_submit "$1" vmm "$TMP/pim_vmm" >/dev/null
        ans=$(pim_submit "$1" solve "$TMP/pim_solve")
        id=$(id_of "$ans")
        [ -n "$id" ] && pim_call GET "/v1/pim/jobs/$id?wait=30" >/dev/null
        if [ $((round % 3)) = 0 ]; then
            id=$(id_of "$(pim_submit "$1" cancelled "$TMP/pim_slow")")
            if [ -n "$id" ]; then
                sleep 0.05
                code=$(code_of "$(pim_call DELETE "/v1/pim/jobs/$id")")
                case $code in 200) tally pim_cancel_200 ;; 409) tally pim_cancel_409 ;; *) tally "pim_unexpected_$code" ;; esac
            fi
        fi
        [ $((round % 5)) = 0 ] && pim_submit "$1" failed "$TMP/pim_singular" "?wait=30" >/dev/null
    done
}

PROMPT='It was a bright cold day in April, and the clocks were striking'
POST_BODY="{\"prompt\": \"$PROMPT\", \"max_tokens\": $MAX_TOKENS, \"temperature\": 0}"
START=$(date +%s)
DEADLINE=$((START + DURATION))
RSS0=$(metric process_resident_memory_bytes)
FDS0=$(metric process_open_fds)
# /health said 503 while the model loaded: those are not the soak's.
SERVER_5XX0=$(http_count 'status="5')

# --- the background load: wrk (three kinds) and loadgen in a loop
WRK_BODY=$POST_BODY wrk -t2 -c"$C4" -d"${DURATION}s" --timeout 60s -s bench/wrk_status.lua \
    "$URL/v1/completions" >"$TMP/wrk_post" 2>&1 &
W1=$!
wrk -t1 -c"$C4" -d"${DURATION}s" -s bench/wrk_status.lua "$URL/health" >"$TMP/wrk_health" 2>&1 &
W2=$!
wrk -t1 -c"$C8" -d"${DURATION}s" -s bench/wrk_status.lua "$URL/v1/models" >"$TMP/wrk_models" 2>&1 &
W3=$!
(
    while [ "$(date +%s)" -lt "$DEADLINE" ]; do
        build/bench/loadgen --url "$URL" --concurrency "$C4" --requests $((2 * C4)) \
            --max-tokens "$MAX_TOKENS" --no-wrk 2>&1 | grep -E '^(completed|failed)_requests:'
    done
) >"$TMP/loadgen" &
LG=$!
PIM_PIDS=""
for c in $(seq 1 "$PIM_CLIENTS"); do
    pim_client "$c" &
    PIM_PIDS="$PIM_PIDS $!"
done

# --- the foreground: scrapes, bad requests, hang-ups, samples every 10 s
printf '%8s %10s %8s %9s %10s\n' "seconds" "rss_MB" "fds" "kv_pages" "requests"
RSS_WARM=""
NEXT_SAMPLE=$START
BIG=$(head -c 1100000 /dev/zero | tr '\0' a)
while [ "$(date +%s)" -lt "$DEADLINE" ]; do
    curl -s "$URL/metrics" -o /dev/null && tally scrapes
    expect 400 "$URL/v1/completions" -d '{"prompt": '
    expect 400 "$URL/v1/completions" -d '{"prompt": "a", "temperature": NaN}'
    expect 400 "$URL/v1/chat/completions" -d '{"messages": "hi"}'
    expect 400 "$URL/detokenize" -d '{"tokens": [-1]}'
    expect 404 "$URL/nope"
    expect 404 "$URL/v1/completions" -d '{"prompt": "a", "model": "gpt-4"}'
    expect 405 "$URL/v1/completions"
    printf '{"prompt": "%s"}' "$BIG" | expect 413 "$URL/v1/completions" --data-binary @-
    curl -s -N -m 0.3 "$URL/v1/completions" -o /dev/null \
        -d '{"prompt":"soak","max_tokens":400,"ignore_eos":true,"stream":true}' || true
    curl -s -m 0.3 "$URL/v1/chat/completions" -o /dev/null \
        -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":400,"ignore_eos":true}' || true
    tally hangups
    tally hangups
    NOW=$(date +%s)
    if [ "$NOW" -ge "$NEXT_SAMPLE" ]; then
        NEXT_SAMPLE=$((NOW + 10))
        RSS=$(metric process_resident_memory_bytes)
        printf '%8d %10.1f %8d %9d %10d\n' $((NOW - START)) \
            "$(echo "$RSS" | awk '{ print $1 / 1048576 }')" "$(metric process_open_fds)" \
            "$(metric llmd_kv_pages_used)" "$(http_count .)"
        [ -z "$RSS_WARM" ] && [ $((NOW - START)) -ge 20 ] && RSS_WARM=$RSS
    fi
    sleep 0.2
done
wait $W1 $W2 $W3 || true
wait $LG || true
for p in $PIM_PIDS; do wait "$p" || true; done

# Every accepted PIM job in a final state, and the one its kind must reach.
cat "$TMP"/pim_ids_* 2>/dev/null >"$TMP/pim_ids" || true
while read -r id kind; do
    [ -n "$id" ] || { tally pim_no_id; continue; }
    state=$(state_of "$(pim_call GET "/v1/pim/jobs/$id?wait=30")")
    tally "pim_final_${state:-none}"
    case "$kind:$state" in
    vmm:done | solve:done | failed:failed | cancelled:cancelled | cancelled:done) ;;
    *) tally pim_wrong; echo "soak: PIM job $id ($kind) ended $state" ;;
    esac
done <"$TMP/pim_ids"
PIM_ACCEPTED=$(wc -l <"$TMP/pim_ids" | tr -d ' ')
pim_metric_sum() { curl -s "$URL/metrics" | awk -v n="$1" 'index($1, n) == 1 { s += $2 } END { print s + 0 }'; }
PIM_SUBMITTED=$(pim_metric_sum 'llmd_pim_jobs_submitted_total')
PIM_FINISHED=$(pim_metric_sum 'llmd_pim_jobs_total{')
PIM_REJECTED=$(metric llmd_pim_jobs_rejected_total)
PIM_QUEUE=$(metric llmd_pim_queue_length)
PIM_BUSY=$(metric llmd_pim_busy_devices)
PIM_UNEXPECTED=$(cat "$TMP"/pim_unexpected_* 2>/dev/null | wc -l | tr -d ' ')
PIM_BAD=$(($(count pim_wrong) + $(count pim_no_id) + PIM_UNEXPECTED))

# --- the end: let what is in flight finish, then read the figures
for _ in $(seq 1 100); do
    [ "$(metric llmd_num_requests_running)" = 0 ] && [ "$(metric llmd_num_requests_waiting)" = 0 ] && break
    sleep 0.1
done
KV=$(metric llmd_kv_pages_used)
RUNNING=$(metric llmd_num_requests_running)
WAITING=$(metric llmd_num_requests_waiting)
FDS=$(metric process_open_fds)
RSS=$(metric process_resident_memory_bytes)
[ -n "$RSS_WARM" ] || RSS_WARM=$RSS
GROWTH=$(awk -v a="$RSS_WARM" -v b="$RSS" 'BEGIN { printf "%.1f", 100 * (b - a) / a }')
finished() { metric "llmd_request_finished_total{finished_reason=\"$1\"}" | awk '{ print $1 + 0 }'; }
F_STOP=$(finished stop)
F_LENGTH=$(finished length)
F_CANCELLED=$(finished cancelled)
F_TIMEOUT=$(finished timeout)
F_ERROR=$(finished error)
GEN='path="/v1/(chat/)?completions"'
ACCEPTED=$(( $(http_count "$GEN,status=\"200\"") + $(http_count "$GEN,status=\"499\"") ))
SERVER_5XX=$(($(http_count 'status="5') - SERVER_5XX0))
SERVER_429=$(http_count 'status="429"')
SERVER_TOTAL=$(http_count .)
# The server's own view of every answer but 200, by path and status.
SERVER_NON_200=$(curl -s "$URL/metrics" | awk '/^llmd_http_requests_total/ && $1 !~ /status="200"/ {
    sub(/^llmd_http_requests_total/, "", $1); printf "%s%s=%d", sep, $1, $2; sep = " " }')
kill -TERM $PID
STATUS=0
wait $PID || STATUS=$?
trap - EXIT

# Client-side tallies.
status_of() { awk -v c="$2" '$1 == "status" && $2 == c { print $3 }' "$TMP/$1" | awk '{ s += $1 } END { print s + 0 }'; }
other_status() { awk '$1 == "status" && $2 != 200 && $2 != 429 { s += $3 } END { print s + 0 }' "$TMP/$1"; }
sockerr() { awk '$1 == "socket_errors" { print $3 + $5 + $7 + $9 }' "$TMP/$1"; }
LG_OK=$(awk '$1 == "completed_requests:" { s += $2 } END { print s + 0 }' "$TMP/loadgen")
LG_FAIL=$(awk '$1 == "failed_requests:" { s += $2 } END { print s + 0 }' "$TMP/loadgen")
BAD=$(($(count bad_400) + $(count bad_404) + $(count bad_405) + $(count bad_413)))
UNEXPECTED=$(cat "$TMP"/unexpected_* 2>/dev/null | wc -l | tr -d ' ')
CLIENT_429=0
CLIENT_OTHER=0
for w in wrk_post wrk_health wrk_models; do
    CLIENT_429=$((CLIENT_429 + $(status_of $w 429)))
    CLIENT_OTHER=$((CLIENT_OTHER + $(other_status $w)))
done
SERVED=$(($(status_of wrk_post 200) + LG_OK + $(status_of wrk_health 200) + $(status_of wrk_models 200) + $(count scrapes) + BAD))

echo
echo "soak: $CONNS connections for $DURATION s on $URL; model $MODEL; binary $BIN"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); $(nproc) cpus; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %10s %8s\n' "traffic" "served" "errors"
printf '%-28s %10d %8d\n' "wrk POST /v1/completions" "$(status_of wrk_post 200)" "$(other_status wrk_post)"
printf '%-28s %10d %8d\n' "loadgen streamed" "$LG_OK" "$LG_FAIL"
printf '%-28s %10d %8d\n' "wrk GET /health" "$(status_of wrk_health 200)" "$(other_status wrk_health)"
printf '%-28s %10d %8d\n' "wrk GET /v1/models" "$(status_of wrk_models 200)" "$(other_status wrk_models)"
printf '%-28s %10d %8d\n' "/metrics scrapes" "$(count scrapes)" 0
printf '%-28s %10d %8d\n' "bad requests (their 4xx)" "$BAD" "$UNEXPECTED"
printf '%-28s %10d %8s\n' "hang-ups mid-stream/wait" "$(count hangups)" "-"
printf '%-28s %10d %8d\n' "PIM jobs accepted" "$PIM_ACCEPTED" "$PIM_BAD"
echo
echo "soak_seconds: $DURATION"
echo "soak_connections: $CONNS"
echo "soak_requests_served: $SERVED"
echo "soak_server_requests_total: $SERVER_TOTAL"
echo "soak_errors_429: client $CLIENT_429 server $SERVER_429"
echo "soak_errors_other: client $((CLIENT_OTHER + LG_FAIL + UNEXPECTED)) server_5xx $SERVER_5XX"
echo "soak_server_answers_not_200: $SERVER_NON_200"
echo "soak_bad_requests_by_status: 400 $(count bad_400) 404 $(count bad_404) 405 $(count bad_405) 413 $(count bad_413)"
echo "soak_socket_errors: post $(sockerr wrk_post) health $(sockerr wrk_health) models $(sockerr wrk_models)"
echo "soak_wrk_post_latency_ms: p50 $(awk '$1 == "latency_p50_ms" { print $2 }' "$TMP/wrk_post") p99 $(awk '$1 == "latency_p99_ms" { print $2 }' "$TMP/wrk_post")"
echo "soak_generation_accepted: $ACCEPTED"
echo "soak_generation_finished: stop $F_STOP length $F_LENGTH cancelled $F_CANCELLED timeout $F_TIMEOUT error $F_ERROR"
echo "soak_pim_jobs_accepted: $PIM_ACCEPTED (server: submitted $PIM_SUBMITTED finished $PIM_FINISHED)"
echo "soak_pim_jobs_final: done $(count pim_final_done) failed $(count pim_final_failed) cancelled $(count pim_final_cancelled) other $(($(count pim_final_queued) + $(count pim_final_running) + $(count pim_final_none)))"
echo "soak_pim_cancels: answered $(count pim_cancel_200) already_finished_409 $(count pim_cancel_409)"
echo "soak_pim_429: client $(count pim_429) server_rejected ${PIM_REJECTED:-0}"
echo "soak_pim_errors: wrong_final_state $(count pim_wrong) unexpected_status $PIM_UNEXPECTED"
echo "soak_rss_MB_start_end: $(awk -v a="$RSS0" -v b="$RSS" 'BEGIN { printf "%.1f %.1f", a / 1048576, b / 1048576 }')"
echo "soak_rss_growth_percent_after_warmup: $GROWTH"
echo "soak_fds_start_end: $FDS0 $FDS"
echo "soak_kv_pages_left: $KV"
echo "soak_exit_status: $STATUS"
FAIL=0
[ "$KV" = 0 ] || { echo "soak: FAIL: $KV KV pages still in use"; FAIL=1; }
[ "$RUNNING" = 0 ] && [ "$WAITING" = 0 ] || { echo "soak: FAIL: $RUNNING running, $WAITING waiting"; FAIL=1; }
[ "$SERVER_5XX" = 0 ] || { echo "soak: FAIL: $SERVER_5XX answers 5xx"; FAIL=1; }
[ $((CLIENT_OTHER + LG_FAIL + UNEXPECTED)) = 0 ] || { echo "soak: FAIL: errors other than 429"; FAIL=1; }
[ "$F_TIMEOUT" = 0 ] && [ "$F_ERROR" = 0 ] || { echo "soak: FAIL: requests ended by timeout or error"; FAIL=1; }
[ $((F_STOP + F_LENGTH + F_CANCELLED)) = "$ACCEPTED" ] ||
    { echo "soak: FAIL: $ACCEPTED generation requests accepted, $((F_STOP + F_LENGTH + F_CANCELLED)) finished"; FAIL=1; }
[ "$PIM_BAD" = 0 ] || { echo "soak: FAIL: $PIM_BAD PIM jobs with an unexpected status or end"; FAIL=1; }
[ "$PIM_SUBMITTED" = "$PIM_ACCEPTED" ] && [ "$PIM_FINISHED" = "$PIM_ACCEPTED" ] ||
    { echo "soak: FAIL: $PIM_ACCEPTED PIM jobs accepted, server submitted $PIM_SUBMITTED finished $PIM_FINISHED"; FAIL=1; }
[ "${PIM_QUEUE:-0}" = 0 ] && [ "${PIM_BUSY:-0}" = 0 ] || { echo "soak: FAIL: PIM queue $PIM_QUEUE busy $PIM_BUSY"; FAIL=1; }
[ $((FDS - FDS0)) -le 8 ] || { echo "soak: FAIL: open fds grew from $FDS0 to $FDS"; FAIL=1; }
awk -v g="$GROWTH" 'BEGIN { exit !(g > 20) }' && { echo "soak: FAIL: RSS grew $GROWTH %"; FAIL=1; }
[ "$STATUS" = 0 ] || { echo "soak: FAIL: exit status $STATUS (log $LOG)"; FAIL=1; }
[ $FAIL = 0 ] && echo "soak: ok" && rm -rf "$LOG" "$OUT" "$TMP"
exit $FAIL

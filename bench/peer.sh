#!/usr/bin/env bash
# peer.sh: llmd against llama.cpp, side by side in one run on this machine
# (`make bench-peer`; never part of `make test` or CI).
#
#   make bench-peer                        both shapes; long context 4K/16K/32K on 58m, 4K on 1.1b
#   PEER_SHAPES=58m make bench-peer        one shape (58m, 1.1b)
#   PEER_LONG=1 make bench-peer            4K/16K/32K context on 1.1b too (slow)
#   PEER_QUICK=1 make bench-peer           smoke run: 58m only, one repeat, 4K only
#   PEER_REQUANTIZE=1 make bench-peer      quantize the llmd files again
#   PEER_NO_LOCK=1 ...                     the caller already holds /tmp/llmd-bench.lock
#
# What it does, caching the expensive parts in ~/.cache/llmd-peer/ (PEER_CACHE):
#  1. llama.cpp from the node-llama-cpp npm package (its llama/gitRelease.bundle
#     is a git bundle of llama.cpp's source): npm pack, clone, and a Release
#     build with GGML_NATIVE of llama-bench, llama-batched-bench, llama-server
#     and llama-quantize in build-<hash of the CPU flags>/ (machines change).
#  2. Per shape, models/<shape>-f16.gguf from build/bench/peer_model (random
#     weights, llmd's SentencePiece vocabulary padded to 32000), quantized the
#     default way of each program: `llama-quantize F16 Q4_0` (output head Q6_K)
#     -> <shape>-q4_0.gguf, and `llmd quantize` with its defaults ->
#     <shape>-llmd.gguf, made again when the last commit touching quant/ or
#     core/ changes (recorded in <shape>-llmd.gguf.key).
#  3. Per shape, 2 threads for llama.cpp (-t 2), llmd on all cores (its
#     default; 2 on the 2-core machines this was written on), llmd with the
#     settings of `llmd serve` (build/bench/peer_llmd reads them the way
#     serve does):
#     - decode at 1, 8, 32 sequences after 32 prompt tokens each, 32 steps,
#       total tok/s: llama-batched-bench vs peer_llmd; median of 3 runs;
#     - prefill of 512 tokens of one sequence: llama-bench -p 512 vs peer_llmd
#       (chunks of serve's prefill chunk); medians;
#     - decode of one sequence at 4K/16K/32K tokens of context: llama-bench
#       -d vs peer_llmd after a real prefill;
#     - serve: llama-server -np 8 -c 16384 and `llmd serve` in turn under
#       build/bench/loadgen (streamed /v1/completions, ignore_eos, 32 tokens)
#       at 1 and 8 clients: output tok/s and p50 end-to-end latency; load
#       time = start to the first 200 from /health (median of 3 starts);
#       peak RSS = VmHWM of the server after the 8-client run.
#  Each side-by-side group runs holding /tmp/llmd-bench.lock (flock), so no
#  other measurement overlaps it, and each program waits for a quiet machine
#  first (less than 10% CPU use over 2 s, for up to PEER_QUIET_WAIT seconds,
#  default 300): other work (a `make test` beside it) starves spinning
#  threads, llama.cpp's and llmd's. Each table says how much of the CPUs
#  other processes used while each side was measured. The programs run from
#  private copies of build/ and conf/llmd.json (LLMD_CONFIG), so that a
#  rebuild or an edit in this checkout during the run changes nothing.
#
# Output: one table per shape (what | llama.cpp | llmd | ratio, ratio > 1
# meaning llmd is better: tok/s llmd/llama.cpp, latency, RSS and load time
# llama.cpp/llmd), `name: value` ratio lines, the CPU and its flags, the
# date; also written to ~/.cache/llmd-peer/last-run.txt. The tools' own
# output is kept in ~/.cache/llmd-peer/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${PEER_CACHE:-$HOME/.cache/llmd-peer}
NODE_LLAMA_CPP_VERSION=3.21.1
LOCK=/tmp/llmd-bench.lock
THREADS=2
SHAPES=${PEER_SHAPES:-58m,1.1b}
QUICK=${PEER_QUICK:-0}
LONG=${PEER_LONG:-0}
REPEAT=3
STARTS=3
if [ "$QUICK" = 1 ]; then
    SHAPES=58m
    REPEAT=1
    STARTS=1
fi
LOGS=$CACHE/logs
MODELS=$CACHE/models
mkdir -p "$LOGS" "$MODELS"

say() { echo "peer: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# Runs a command or a function of this script holding $LOCK (fd 9); the
# servers started inside never keep it, flock -u releases it for all.
locked() {
    if [ "${PEER_NO_LOCK:-0}" = 1 ]; then
        "$@"
        return
    fi
    local rc=0
    exec 9>"$LOCK"
    flock 9
    "$@" || rc=$?
    flock -u 9
    exec 9>&-
    return $rc
}

# Median of the numbers on stdin, one a line.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a";
                   else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B with two decimals, n/a when either is missing.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a";
                                     else printf "%.2f\n", a / b }'
}

# fmt VALUE DECIMALS
fmt() {
    awk -v v="$1" -v d="$2" 'BEGIN { if (v == "n/a" || v == "") print "n/a"; else printf("%." d "f\n", v) }'
}

# The `name: value` line of a log, or n/a.
value_of() {
    local v
    v=$(sed -n "s/^$2: *//p" "$1" 2>/dev/null | tail -1)
    echo "${v:-n/a}"
}

# ------------------------------------------------- the machine's other load

SERVER_PID=""
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
# CPU ticks the whole machine has spent busy.
machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# CPU ticks of the shell that runs main, of its finished children, and of
# the server it is running.
own_ticks() {
    local server=0
    if [ -n "$SERVER_PID" ]; then
        server=$(awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0)
    fi
    awk -v s="$server" '{ print $14 + $15 + $16 + $17 + s }' "/proc/$MAIN_PID/stat"
}

# Waits until the machine is quiet (see the top), or PEER_QUIET_WAIT passes.
wait_quiet() {
    local deadline=$((SECONDS + ${PEER_QUIET_WAIT:-300})) a b busy said=0
    while :; do
        a=$(machine_busy_ticks)
        sleep 2
        b=$(machine_busy_ticks)
        busy=$(((b - a) * 100 / (2 * HZ * NCPU)))
        [ "$busy" -ge 10 ] || return 0
        if [ $SECONDS -ge $deadline ]; then
            say "the machine is still ${busy}% busy; measuring anyway"
            return 0
        fi
        if [ $said = 0 ]; then
            say "waiting for a quiet machine (${busy}% busy)"
            said=1
        fi
    done
}

# measured SIDE COMMAND...: waits for a quiet machine, then runs the
# command, adding the CPU ticks other processes used meanwhile to
# OTHER[SIDE] and the machine's ticks to WALL[SIDE]; LAST_OTHERS is the
# percentage of the CPUs others used during this command.
declare -A OTHER WALL BUSY
BUSY_LIMIT=${PEER_BUSY_LIMIT:-10}
measured() {
    local side=$1 busy own t0 wall other rc=0
    shift
    wait_quiet
    busy=$(machine_busy_ticks)
    own=$(own_ticks)
    t0=$(date +%s.%N)
    "$@" || rc=$?
    busy=$(($(machine_busy_ticks) - busy))
    own=$(($(own_ticks) - own))
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" -v hz="$HZ" -v n="$NCPU" \
        'BEGIN { printf "%d\n", (b - a) * hz * n }')
    other=$((busy > own ? busy - own : 0))
    OTHER[$side]=$((${OTHER[$side]:-0} + other))
    WALL[$side]=$((${WALL[$side]:-0} + wall))
    LAST_OTHERS=$((other * 100 / (wall > 0 ? wall : 1)))
    return $rc
}

# measure SIDE KEY COMMAND...: `measured`, and once more when other
# processes took PEER_BUSY_LIMIT% (10) of the CPUs or more meanwhile (their
# spinning threads suffer most from that: llama.cpp's decode at 4K once ran
# 30x slower beside a `make test`). BUSY[SIDE:KEY] keeps the largest share
# of the last tries of KEY's commands, for the table's marks.
measure() {
    local side=$1 key=$2 rc=0
    shift 2
    measured "$side" "$@" || rc=$?
    if [ "$LAST_OTHERS" -ge "$BUSY_LIMIT" ]; then
        say "other processes used $LAST_OTHERS% of the CPUs during $side $key; measuring it again"
        rc=0
        measured "$side" "$@" || rc=$?
    fi
    local before=${BUSY[$side:$key]:-0}
    BUSY[$side:$key]=$((LAST_OTHERS > before ? LAST_OTHERS : before))
    return $rc
}

# to OUT ERR COMMAND...: the command with its output in OUT and ERR (a
# command that `measure` may run twice writes its files afresh each time).
to() {
    local out=$1 err=$2
    shift 2
    "$@" >"$out" 2>"$err"
}

# Others' share of the CPUs while SIDE was measured, in percent.
others_percent() {
    local w=${WALL[$1]:-0}
    echo $((${OTHER[$1]:-0} * 100 / (w > 0 ? w : 1)))
}

TIMES=()
# timed PART COMMAND...: runs it and records how long it took.
timed() {
    local part=$1 t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    TIMES+=("$part: $((SECONDS - t0)) s")
    return $rc
}

# ------------------------------------------------------------- llama.cpp

CPU_KEY=$(grep -m1 '^flags' /proc/cpuinfo | md5sum | cut -c1-8)
LLAMA_BUILD=$CACHE/build-$CPU_KEY
LLAMA_BIN=$LLAMA_BUILD/bin
LLAMA_TOOLS="llama-bench llama-batched-bench llama-server llama-quantize"

llama_ready() {
    local t
    for t in $LLAMA_TOOLS; do [ -x "$LLAMA_BIN/$t" ] || return 1; done
}

get_llama() {
    if llama_ready; then
        say "llama.cpp: $LLAMA_BUILD (cached)"
        return
    fi
    (
        cd "$CACHE"
        # one build at a time, also across concurrent runs of this script
        exec 8>"$CACHE/build.lock"
        flock 8
        if [ ! -d llama.cpp/.git ]; then
            if [ ! -f package/llama/gitRelease.bundle ]; then
                [ -f node-llama-cpp-$NODE_LLAMA_CPP_VERSION.tgz ] ||
                    npm pack node-llama-cpp@$NODE_LLAMA_CPP_VERSION >&2
                tar xzf node-llama-cpp-$NODE_LLAMA_CPP_VERSION.tgz package/llama/gitRelease.bundle
            fi
            git clone -q package/llama/gitRelease.bundle llama.cpp
        fi
        say "llama.cpp: building in $LLAMA_BUILD (log $LOGS/llama-build.log; tens of minutes on 2 cores)"
        cmake -S llama.cpp -B "$LLAMA_BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
            -DLLAMA_BUILD_HTML=OFF -DLLAMA_BUILD_APP=OFF >"$LOGS/llama-build.log" 2>&1
        # shellcheck disable=SC2086 # a list of targets
        cmake --build "$LLAMA_BUILD" -j"$(nproc)" --target $LLAMA_TOOLS >>"$LOGS/llama-build.log" 2>&1
    ) || die "llama.cpp build failed; see $LOGS/llama-build.log"
    llama_ready || die "llama.cpp build did not produce $LLAMA_TOOLS"
}

# ---------------------------------------------------------------- models

# The F16 model, again when bench/peer_model.c changed.
make_f16() {
    local shape=$1 f16=$MODELS/$1-f16.gguf key
    key=$(git hash-object bench/peer_model.c models/llmd-20m.gguf | md5sum | cut -c1-12)
    if [ -f "$f16" ] && [ "$(cat "$f16.key" 2>/dev/null)" = "$key" ]; then
        say "$shape: $f16 (cached)"
        return
    fi
    say "$shape: writing $f16"
    "$BIN/peer_model" --shape "$shape" --out "$f16" >&2 || die "peer_model failed"
    echo "$key" >"$f16.key"
}

make_q4_0() {
    local shape=$1 f16=$MODELS/$1-f16.gguf q4=$MODELS/$1-q4_0.gguf
    if [ -f "$q4" ] && [ "$q4" -nt "$f16" ]; then
        say "$shape: $q4 (cached)"
        return
    fi
    say "$shape: llama-quantize F16 -> Q4_0"
    locked "$LLAMA_BIN/llama-quantize" "$f16" "$q4" Q4_0 >"$LOGS/$shape-llama-quantize.log" 2>&1 ||
        die "llama-quantize failed; see $LOGS/$shape-llama-quantize.log"
}

# llmd's file, keyed on the last commit of its quantizer and model code:
# kernel changes that keep the format do not force a re-quantize.
make_llmd() {
    local shape=$1 f16=$MODELS/$1-f16.gguf out=$MODELS/$1-llmd.gguf key
    key=$(git log -1 --format=%h -- quant core)
    if [ "${PEER_REQUANTIZE:-0}" != 1 ] && [ -f "$out" ] && [ "$out" -nt "$f16" ] &&
        [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
        say "$shape: $out (cached, quant/core at $key)"
        return
    fi
    say "$shape: llmd quantize with its defaults (quant/core at $key; Atom calibrates: minutes for 1.1b)"
    local t0=$SECONDS
    locked "$BIN/llmd" quantize --model "$f16" --out "$out" 2>&1 | tee "$LOGS/$shape-llmd-quantize.log" |
        sed 's/^/    /' >&2 || true
    if ! [ -f "$out" ] || ! [ "$out" -nt "$f16" ]; then
        die "llmd quantize failed; see $LOGS/$shape-llmd-quantize.log"
    fi
    echo "$key" >"$out.key"
    say "$shape: llmd quantize took $((SECONDS - t0)) s"
}

# ---------------------------------------------------------- measurements

# Values of the current shape, by name; "n/a" until measured.
declare -A LLAMA LLMD
put() { # put llama|llmd NAME VALUE
    if [ "$1" = llama ]; then LLAMA[$2]=${3:-n/a}; else LLMD[$2]=${3:-n/a}; fi
}

# llama-bench's jsonl line -> the median of its samples_ts.
samples_median() {
    sed -n 's/.*"samples_ts": \[\([^]]*\)\].*/\1/p' | tr ',' '\n' | median
}

measure_llama() {
    local shape=$1 q4=$MODELS/$1-q4_0.gguf depths=$2 log=$LOGS/$1-llama r b d
    for r in $(seq 1 "$REPEAT"); do
        measure llama decode to "$log-batched-$r.jsonl" "$log-batched-$r.err" \
            "$LLAMA_BIN/llama-batched-bench" -m "$q4" -c 4096 -b 2048 -ub 512 -npp 32 -ntg 32 \
            -npl 1,8,32 -t $THREADS --output-format jsonl ||
            say "$shape: llama-batched-bench failed (run $r); see $log-batched-$r.err"
    done
    for b in 1 8 32; do
        LLAMA[decode_$b]=$(for r in $(seq 1 "$REPEAT"); do
            sed -n "s/.*\"pl\": $b,.*\"speed_tg\": \([0-9.]*\),.*/\1/p" "$log-batched-$r.jsonl"
        done | median)
    done
    measure llama prefill to "$log-prefill.jsonl" "$log-prefill.err" \
        "$LLAMA_BIN/llama-bench" -m "$q4" -p 512 -n 0 -t $THREADS -o jsonl ||
        say "$shape: llama-bench prefill failed; see $log-prefill.err"
    LLAMA[prefill_512]=$(samples_median <"$log-prefill.jsonl")
    measure llama depth to "$log-depth.jsonl" "$log-depth.err" \
        "$LLAMA_BIN/llama-bench" -m "$q4" -p 0 -n 16 -d "$depths" -t $THREADS -o jsonl ||
        say "$shape: llama-bench -d failed; see $log-depth.err"
    for d in ${depths//,/ }; do
        LLAMA[depth_$d]=$(grep "\"n_depth\": $d," "$log-depth.jsonl" | samples_median)
    done
}

# One part of peer_llmd's measurements (the others off), as `measure` KEY.
peer_llmd_part() {
    local shape=$1 key=$2 log=$LOGS/$1-llmd-$2.txt
    shift 2
    measure llmd "$key" to "$log" "$log.err" "$BIN/peer_llmd" --model "$MODELS/$shape-llmd.gguf" \
        --batches "" --prefill 0 --depths "" --repeat "$REPEAT" "$@" ||
        say "$shape: peer_llmd ($key) failed; see $log.err"
}

measure_llmd() {
    local shape=$1 depths=$2 log=$LOGS/$1-llmd b d
    peer_llmd_part "$shape" decode --batches 1,8,32 --prompt 32 --decode 32
    for b in 1 8 32; do LLMD[decode_$b]=$(value_of "$log-decode.txt" "decode_tps_b$b"); done
    LLMD_SETTINGS=$(sed -n 's/^# llmd on [^:]*: \(.*\); loaded in.*/\1/p' "$log-decode.txt")
    peer_llmd_part "$shape" prefill --prefill 512
    LLMD[prefill_512]=$(value_of "$log-prefill.txt" prefill_tps_512)
    peer_llmd_part "$shape" depth --depths "$depths" --depth-decode 16
    for d in ${depths//,/ }; do LLMD[depth_$d]=$(value_of "$log-depth.txt" "decode_tps_depth$d"); done
}

forward_pair() {
    say "$1: llama.cpp decode / prefill / depth $2"
    timed "$1 llama.cpp forward" measure_llama "$1" "$2"
    say "$1: llmd decode / prefill / depth $2"
    timed "$1 llmd forward" measure_llmd "$1" "$2"
}

# A free TCP port on 127.0.0.1.
free_port() {
    local p
    for p in $(seq 18090 18190); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
            echo "$p"
            return
        }
    done
    die "no free port in 18090..18190"
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# start_server KIND MODEL LOG: starts it, waits for /health 200; sets
# SERVER_PID, SERVER_URL and LOAD_S.
start_server() {
    local kind=$1 model=$2 log=$3 t0 port
    t0=$(date +%s.%N)
    SERVER_URL=""
    if [ "$kind" = llama ]; then
        port=$(free_port)
        "$LLAMA_BIN/llama-server" -m "$model" -t $THREADS -np 8 -c $((8 * 2048)) \
            --host 127.0.0.1 --port "$port" >"$log" 2>&1 9>&- &
        SERVER_PID=$!
        SERVER_URL=http://127.0.0.1:$port
    else
        "$BIN/llmd" serve --model "$model" --host 127.0.0.1 --port 0 >"$log.out" 2>"$log" 9>&- &
        SERVER_PID=$!
    fi
    local deadline=$((SECONDS + 900))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            say "$kind server exited; see $log"
            SERVER_PID=""
            return 1
        }
        [ -n "$SERVER_URL" ] || SERVER_URL=$(sed -n 's/^llmd: listening on \(http:[^ ]*\)$/\1/p' "$log.out")
        if [ -n "$SERVER_URL" ] &&
            [ "$(curl -s -o /dev/null -w '%{http_code}' "$SERVER_URL/health")" = 200 ]; then
            LOAD_S=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f\n", b - a }')
            return 0
        fi
        sleep 0.05
    done
    say "$kind server never answered 200 on /health; see $log"
    stop_server
    return 1
}

# serve_one KIND MODEL SHAPE: load time over $STARTS starts, loadgen on the
# last, peak RSS; fills LLAMA or LLMD.
serve_one() {
    local kind=$1 model=$2 shape=$3 log=$LOGS/$3-$1-serve loads=() i
    put "$kind" load_s n/a
    for i in $(seq 1 "$STARTS"); do
        # not measured twice: a second try would start a second server
        measured "$kind" start_server "$kind" "$model" "$log.log" || return 0
        if [ "$LAST_OTHERS" -gt "${BUSY[$kind:load]:-0}" ]; then BUSY[$kind:load]=$LAST_OTHERS; fi
        loads+=("$LOAD_S")
        if [ "$i" -lt "$STARTS" ]; then stop_server; fi
    done
    put "$kind" load_s "$(printf '%s\n' "${loads[@]}" | median)"
    measure "$kind" serve to "$log-loadgen.txt" "$log-loadgen.err" \
        "$BIN/loadgen" --url "$SERVER_URL" --concurrency 1,8 --max-tokens 32 --no-wrk ||
        say "$shape: loadgen against $kind had failures; see $log-loadgen.txt"
    local rss_kb
    rss_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || true)
    if [ -n "$rss_kb" ]; then
        put "$kind" rss_mb "$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f\n", k / 1024 }')"
    fi
    stop_server
    local c
    for c in 1 8; do
        put "$kind" "serve_tps_$c" "$(value_of "$log-loadgen.txt" "output_tokens_per_s_c$c")"
        # the e2e column of loadgen's table: "p50 / p99" after the last bar
        put "$kind" "serve_p50_$c" "$(awk -F'|' -v c="$c" '$1 ~ "^ *" c " +[0-9]" {
            split($NF, a, "/"); print a[1] + 0 }' "$log-loadgen.txt" | tail -1)"
    done
}

serve_pair() {
    say "$1: llama-server under loadgen ($STARTS starts)"
    timed "$1 llama-server" serve_one llama "$MODELS/$1-q4_0.gguf" "$1"
    say "$1: llmd serve under loadgen ($STARTS starts)"
    timed "$1 llmd serve" serve_one llmd "$MODELS/$1-llmd.gguf" "$1"
}

# ---------------------------------------------------------------- report

file_mb() { awk -v b="$(stat -c %s "$1" 2>/dev/null || echo 0)" 'BEGIN { printf "%.1f\n", b / 1048576 }'; }

RATIOS=()
# A value, marked * when other processes took BUSY_LIMIT% of the CPUs
# or more while it was measured (after the second try).
cell() { # cell SIDE MEASUREMENT VALUE DECIMALS
    local v
    v=$(fmt "$3" "$4")
    if [ "${BUSY[$1:$2]:-0}" -ge "$BUSY_LIMIT" ]; then v="$v*"; fi
    echo "$v"
}

row() { # row NAME WHAT KEY MEASUREMENT DECIMALS HIGHER_IS_BETTER
    local name=$1 what=$2 key=$3 m=$4 dec=$5 higher=$6 a b r
    a=${LLAMA[$key]:-n/a}
    b=${LLMD[$key]:-n/a}
    if [ "$higher" = 1 ]; then r=$(ratio "$b" "$a"); else r=$(ratio "$a" "$b"); fi
    printf '| %-44s | %10s | %10s | %6s |\n' "$what" "$(cell llama "$m" "$a" "$dec")" \
        "$(cell llmd "$m" "$b" "$dec")" "$r"
    if [ "${BUSY[llama:$m]:-0}" -ge "$BUSY_LIMIT" ] || [ "${BUSY[llmd:$m]:-0}" -ge "$BUSY_LIMIT" ]; then
        MARKED=1
    fi
    RATIOS+=("${name}_ratio_$SHAPE: $r")
}

report_shape() {
    local shape=$1 depths=$2 note=$3 d
    echo
    echo "## $shape: llama.cpp $LLAMA_COMMIT Q4_0 (head Q6_K), -t $THREADS vs llmd $LLMD_COMMIT ($LLMD_SETTINGS)"
    [ -z "$note" ] || echo "$note"
    echo "(files: $shape-q4_0.gguf $(file_mb "$MODELS/$shape-q4_0.gguf") MB," \
        "$shape-llmd.gguf $(file_mb "$MODELS/$shape-llmd.gguf") MB)"
    echo "(other processes used $(others_percent llama)% of the CPUs while llama.cpp was measured," \
        "$(others_percent llmd)% while llmd was)"
    echo
    printf '| %-44s | %10s | %10s | %6s |\n' what llama.cpp llmd ratio
    printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..11}):" \
        "$(printf -- '-%.0s' {1..11}):" "$(printf -- '-%.0s' {1..7}):"
    SHAPE=$shape
    MARKED=0
    row decode_1 "decode, 1 sequence, tok/s" decode_1 decode 1 1
    row decode_8 "decode, 8 sequences, total tok/s" decode_8 decode 1 1
    row decode_32 "decode, 32 sequences, total tok/s" decode_32 decode 1 1
    row prefill_512 "prefill, 512 tokens, tok/s" prefill_512 prefill 1 1
    for d in ${depths//,/ }; do
        row "decode_depth$((d / 1024))k" "decode at $((d / 1024))K context, 1 sequence, tok/s" \
            "depth_$d" depth 2 1
    done
    row serve_tps_1 "serve, 1 client: output tok/s" serve_tps_1 serve 1 1
    row serve_p50_1 "serve, 1 client: p50 end-to-end, ms" serve_p50_1 serve 0 0
    row serve_tps_8 "serve, 8 clients: output tok/s" serve_tps_8 serve 1 1
    row serve_p50_8 "serve, 8 clients: p50 end-to-end, ms" serve_p50_8 serve 0 0
    row load "load, start to /health 200, s (median of $STARTS)" load_s load 2 0
    row rss "peak RSS after 8 clients (VmHWM), MB" rss_mb serve 0 0
    if [ "$MARKED" = 1 ]; then
        echo
        echo "* other processes took ${BUSY_LIMIT}% of the CPUs or more while this was measured" \
            "(on the second try): read it as disturbed"
    fi
}

# ------------------------------------------------------------------ main

main() {
    local t0=$SECONDS shape depths note
    MAIN_PID=$BASHPID
    # Private copies, so that a rebuild in this checkout during the run (by
    # someone else's make) does not change the programs measured.
    BIN=$(mktemp -d /tmp/llmd-peer-bin.XXXXXX)
    trap 'stop_server; rm -rf "$BIN"' EXIT
    local b
    for b in build/llmd build/bench/peer_model build/bench/peer_llmd build/bench/loadgen; do
        [ -x "$b" ] || die "$b is not built (make bench-peer builds it)"
        cp "$b" "$BIN/"
    done
    # and of the settings file they were built with (serve's defaults)
    local conf=${LLMD_CONFIG:-conf/llmd.json}
    if [ -f "$conf" ]; then
        cp "$conf" "$BIN/llmd.json"
        export LLMD_CONFIG=$BIN/llmd.json
    fi
    timed "llama.cpp (get/build)" get_llama
    LLAMA_COMMIT=$(git -C "$CACHE/llama.cpp" log -1 --format=%h 2>/dev/null || echo "?")
    LLMD_COMMIT=$(git log -1 --format=%h)
    git diff --quiet HEAD -- core quant attention util server || LLMD_COMMIT="$LLMD_COMMIT+changes"
    LLMD_SETTINGS="serve's defaults"

    echo "# llmd vs llama.cpp (node-llama-cpp $NODE_LLAMA_CPP_VERSION's llama.cpp), side by side, one run"
    echo "# ratio > 1: llmd better (tok/s llmd/llama.cpp; latency, load time, RSS llama.cpp/llmd)"
    if [ "$QUICK" = 1 ]; then echo "# PEER_QUICK=1: 58m only, 1 repeat, 1 start, 4K context only"; fi

    for shape in ${SHAPES//,/ }; do
        case "$shape" in 58m | 1.1b) ;; *) die "unknown shape $shape (58m, 1.1b)" ;; esac
        depths=4096,16384,32768
        note=""
        if [ "$QUICK" = 1 ]; then
            depths=4096
            note="(PEER_QUICK: long context at 4K only)"
        elif [ "$shape" = 1.1b ] && [ "$LONG" != 1 ]; then
            depths=4096
            note="(long context at 4K only on 1.1b; PEER_LONG=1 adds 16K and 32K)"
        fi
        LLAMA=()
        LLMD=()
        OTHER=()
        WALL=()
        BUSY=()
        timed "$shape f16 model" make_f16 "$shape"
        timed "$shape llama-quantize" make_q4_0 "$shape"
        timed "$shape llmd quantize" make_llmd "$shape"
        locked forward_pair "$shape" "$depths"
        locked serve_pair "$shape"
        report_shape "$shape" "$depths" "$note"
    done

    echo
    printf '%s\n' "${RATIOS[@]}"
    echo
    echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: //'), $(nproc) cores"
    echo "cpu_flags: $(grep -m1 '^flags' /proc/cpuinfo | sed 's/^[^:]*: //' | tr ' ' '\n' |
        grep -E '^(avx2|fma|f16c|avx_vnni|avx512.*|amx.*)$' | tr '\n' ' ' | sed 's/ $//')"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    TIMES+=("total: $((SECONDS - t0)) s")
    printf '# took: %s\n' "${TIMES[@]}"
}

# The report goes to stdout and last-run.txt (last-run.txt.partial until it
# is complete); progress goes to stderr.
rm -f "$CACHE/last-run.txt.partial"
main | tee "$CACHE/last-run.txt.partial"
mv "$CACHE/last-run.txt.partial" "$CACHE/last-run.txt"

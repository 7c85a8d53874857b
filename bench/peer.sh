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
#  other measurement overlaps it, and first waits for a quiet machine (less
#  than 10% CPU use over 2 s, for up to PEER_QUIET_WAIT seconds, default
#  300): other work (a `make test` beside it) starves llama.cpp's spinning
#  threads most. Each table says how much of the CPUs other processes used
#  while it was measured.
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

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
# CPU ticks the whole machine has spent busy.
machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# CPU ticks of the shell that runs main and of its finished children.
own_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$MAIN_PID/stat"; }

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

# Others' CPU use while measuring: measure_begin / measure_end around each
# side-by-side group add to OTHER_TICKS and WALL_TICKS.
OTHER_TICKS=0
WALL_TICKS=0
measure_begin() {
    wait_quiet
    M_BUSY=$(machine_busy_ticks)
    M_OWN=$(own_ticks)
    M_T0=$(date +%s.%N)
}
measure_end() {
    local busy own wall
    busy=$(($(machine_busy_ticks) - M_BUSY))
    own=$(($(own_ticks) - M_OWN))
    wall=$(awk -v a="$M_T0" -v b="$(date +%s.%N)" -v hz="$HZ" -v n="$NCPU" \
        'BEGIN { printf "%d\n", (b - a) * hz * n }')
    OTHER_TICKS=$((OTHER_TICKS + (busy > own ? busy - own : 0)))
    WALL_TICKS=$((WALL_TICKS + wall))
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
    build/bench/peer_model --shape "$shape" --out "$f16" >&2 || die "peer_model failed"
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
    locked build/llmd quantize --model "$f16" --out "$out" 2>&1 | tee "$LOGS/$shape-llmd-quantize.log" |
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
    local shape=$1 q4=$MODELS/$1-q4_0.gguf depths=$2 log=$LOGS/$1-llama
    local r
    : >"$log-batched.jsonl"
    for r in $(seq 1 "$REPEAT"); do
        "$LLAMA_BIN/llama-batched-bench" -m "$q4" -c 4096 -b 2048 -ub 512 -npp 32 -ntg 32 \
            -npl 1,8,32 -t $THREADS --output-format jsonl >>"$log-batched.jsonl" 2>"$log-batched.err" ||
            say "$shape: llama-batched-bench failed (run $r); see $log-batched.err"
    done
    local b
    for b in 1 8 32; do
        LLAMA[decode_$b]=$(sed -n "s/.*\"pl\": $b,.*\"speed_tg\": \([0-9.]*\),.*/\1/p" "$log-batched.jsonl" | median)
    done
    "$LLAMA_BIN/llama-bench" -m "$q4" -p 512 -n 0 -t $THREADS -o jsonl >"$log-prefill.jsonl" \
        2>"$log-prefill.err" || say "$shape: llama-bench prefill failed; see $log-prefill.err"
    LLAMA[prefill_512]=$(samples_median <"$log-prefill.jsonl")
    "$LLAMA_BIN/llama-bench" -m "$q4" -p 0 -n 16 -d "$depths" -t $THREADS -o jsonl \
        >"$log-depth.jsonl" 2>"$log-depth.err" || say "$shape: llama-bench -d failed; see $log-depth.err"
    local d
    for d in ${depths//,/ }; do
        LLAMA[depth_$d]=$(grep "\"n_depth\": $d," "$log-depth.jsonl" | samples_median)
    done
}

measure_llmd() {
    local shape=$1 depths=$2 log=$LOGS/$1-llmd-forward.txt
    build/bench/peer_llmd --model "$MODELS/$shape-llmd.gguf" --batches 1,8,32 --prompt 32 \
        --decode 32 --repeat "$REPEAT" --prefill 512 --depths "$depths" --depth-decode 16 \
        >"$log" 2>"$log.err" || say "$shape: peer_llmd failed; see $log.err"
    local b d
    for b in 1 8 32; do LLMD[decode_$b]=$(value_of "$log" "decode_tps_b$b"); done
    LLMD[prefill_512]=$(value_of "$log" prefill_tps_512)
    for d in ${depths//,/ }; do LLMD[depth_$d]=$(value_of "$log" "decode_tps_depth$d"); done
    LLMD_SETTINGS=$(sed -n 's/^# llmd on [^:]*: \(.*\); loaded in.*/\1/p' "$log")
}

forward_pair() {
    measure_begin
    say "$1: llama.cpp decode / prefill / depth $2"
    timed "$1 llama.cpp forward" measure_llama "$1" "$2"
    say "$1: llmd decode / prefill / depth $2"
    timed "$1 llmd forward" measure_llmd "$1" "$2"
    measure_end
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

SERVER_PID=""
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
        build/llmd serve --model "$model" --host 127.0.0.1 --port 0 >"$log.out" 2>"$log" 9>&- &
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
        start_server "$kind" "$model" "$log.log" || return 0
        loads+=("$LOAD_S")
        if [ "$i" -lt "$STARTS" ]; then stop_server; fi
    done
    put "$kind" load_s "$(printf '%s\n' "${loads[@]}" | median)"
    build/bench/loadgen --url "$SERVER_URL" --concurrency 1,8 --max-tokens 32 --no-wrk \
        >"$log-loadgen.txt" 2>&1 9>&- || say "$shape: loadgen against $kind had failures; see $log-loadgen.txt"
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
    measure_begin
    say "$1: llama-server under loadgen ($STARTS starts)"
    timed "$1 llama-server" serve_one llama "$MODELS/$1-q4_0.gguf" "$1"
    say "$1: llmd serve under loadgen ($STARTS starts)"
    timed "$1 llmd serve" serve_one llmd "$MODELS/$1-llmd.gguf" "$1"
    measure_end
}

# ---------------------------------------------------------------- report

RATIOS=()
row() { # row NAME WHAT KEY DECIMALS HIGHER_IS_BETTER
    local name=$1 what=$2 key=$3 dec=$4 higher=$5 a b r
    a=${LLAMA[$key]:-n/a}
    b=${LLMD[$key]:-n/a}
    if [ "$higher" = 1 ]; then r=$(ratio "$b" "$a"); else r=$(ratio "$a" "$b"); fi
    printf '| %-44s | %10s | %10s | %6s |\n' "$what" "$(fmt "$a" "$dec")" "$(fmt "$b" "$dec")" "$r"
    RATIOS+=("${name}_ratio_$SHAPE: $r")
}

report_shape() {
    local shape=$1 depths=$2 note=$3 d
    echo
    echo "## $shape: llama.cpp $LLAMA_COMMIT Q4_0 (head Q6_K), -t $THREADS vs llmd $LLMD_COMMIT ($LLMD_SETTINGS)"
    [ -z "$note" ] || echo "$note"
    echo "(other processes used $((OTHER_TICKS * 100 / (WALL_TICKS > 0 ? WALL_TICKS : 1)))% of the CPUs while this was measured)"
    echo
    printf '| %-44s | %10s | %10s | %6s |\n' what llama.cpp llmd ratio
    printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..46})" "$(printf -- '-%.0s' {1..11}):" \
        "$(printf -- '-%.0s' {1..11}):" "$(printf -- '-%.0s' {1..7}):"
    SHAPE=$shape
    row decode_1 "decode, 1 sequence, tok/s" decode_1 1 1
    row decode_8 "decode, 8 sequences, total tok/s" decode_8 1 1
    row decode_32 "decode, 32 sequences, total tok/s" decode_32 1 1
    row prefill_512 "prefill, 512 tokens, tok/s" prefill_512 1 1
    for d in ${depths//,/ }; do
        row "decode_depth$((d / 1024))k" "decode at $((d / 1024))K context, 1 sequence, tok/s" "depth_$d" 2 1
    done
    row serve_tps_1 "serve, 1 client: output tok/s" serve_tps_1 1 1
    row serve_p50_1 "serve, 1 client: p50 end-to-end, ms" serve_p50_1 0 0
    row serve_tps_8 "serve, 8 clients: output tok/s" serve_tps_8 1 1
    row serve_p50_8 "serve, 8 clients: p50 end-to-end, ms" serve_p50_8 0 0
    row load "load, start to /health 200, s (median of $STARTS)" load_s 2 0
    row rss "peak RSS after 8 clients (VmHWM), MB" rss_mb 0 0
}

# ------------------------------------------------------------------ main

main() {
    local t0=$SECONDS shape depths note
    trap stop_server EXIT
    MAIN_PID=$BASHPID
    local b
    for b in build/llmd build/bench/peer_model build/bench/peer_llmd build/bench/loadgen; do
        [ -x "$b" ] || die "$b is not built (make bench-peer builds it)"
    done
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
        OTHER_TICKS=0
        WALL_TICKS=0
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

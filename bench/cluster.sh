#!/usr/bin/env bash
# cluster.sh: throughput of 1, 2 and 3 llmd replicas behind nginx on this
# machine, and nginx's overhead against going to a replica directly, under
# the same load generator (build/bench/loadgen: streamed completions, closed
# loop at CLIENTS, default 8). The replicas share this machine's cores.
#
#   bench/cluster.sh            (after make build/llmd build/bench/loadgen)
#
# The model is models/llmd-20m.gguf quantized once with serve's defaults
# (build/cluster-bench/llmd-20m-atom.gguf), so that replicas load in
# moments. Holds /tmp/llmd-bench.lock while measuring. Prints a table and
# `name: value` lines.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
REQUESTS=${REQUESTS:-320}
# Threads per replica: the cores split between the replicas (SPLIT=0: every
# replica takes all cores, llmd's default, and they fight over them).
SPLIT=${SPLIT:-1}
DIR=build/cluster-bench
mkdir -p "$DIR/logs" "$DIR/tmp"
MODEL=$DIR/llmd-20m-atom.gguf
[ -f "$MODEL" ] || build/llmd quantize --out "$MODEL" >"$DIR/quantize.log" 2>&1

BASE=${BASE_PORT:-18400}
pids=()
cleanup() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
trap cleanup EXIT

start_cluster() { # N
    local n=$1 i threads=0
    [ "$SPLIT" = 1 ] && threads=$(( $(nproc) / n > 0 ? $(nproc) / n : 1 ))
    for i in $(seq 1 "$n"); do
        build/llmd serve --model "$MODEL" --host 127.0.0.1 --port $((BASE + i)) --replica-id "r$i" \
            --no-access-log --threads "$threads" >"$DIR/r$i.log" 2>&1 &
        pids+=($!)
    done
    conf/nginx/cluster.sh conf "$n" "$BASE" "$BASE" >"$DIR/nginx.conf"
    [ "$(id -u)" = 0 ] && sed -i '1i user root;' "$DIR/nginx.conf"
    nginx -p "$DIR" -c nginx.conf -g 'daemon off;' >"$DIR/nginx.log" 2>&1 &
    pids+=($!)
    local up
    for i in $(seq 1 "$n") 0; do
        up=false
        for _ in $(seq 1 300); do
            curl -sf "http://127.0.0.1:$((BASE + i))/health" >/dev/null && up=true && break
            sleep 0.1
        done
        $up || { echo "cluster bench: 127.0.0.1:$((BASE + i)) never healthy; see $DIR/" >&2; exit 1; }
    done
}

measure() { # LABEL URL -> "tok/s p50-e2e-ms failed"
    local out
    out=$(flock /tmp/llmd-bench.lock build/bench/loadgen --url "$2" --concurrency "$CLIENTS" \
        --requests "$REQUESTS" --max-tokens 32 --no-wrk 2>&1)
    echo "$out" >"$DIR/loadgen-$1.txt"
    # loadgen's row: conc reqs fail req/s tok/s | ttft p50 / p99 | tpot | itl | e2e p50 / p99
    echo "$out" | awk -v c="$CLIENTS" '$1 == c && $6 == "|" {print $5, $19, $3; exit}'
}

declare -A TPS P50 FAIL
for n in 1 2 3; do
    start_cluster "$n"
    read -r TPS[$n] P50[$n] FAIL[$n] < <(measure "nginx-$n" "http://127.0.0.1:$BASE")
    if [ "$n" = 1 ]; then
        read -r TPS[direct] P50[direct] FAIL[direct] < <(measure direct "http://127.0.0.1:$((BASE + 1))")
    fi
    cleanup
done

echo "# llmd replicas behind nginx on one machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores shared by every replica and nginx"
echo "# load: build/bench/loadgen, $CLIENTS clients, $REQUESTS streamed requests of 32 tokens; threads per replica: $([ "$SPLIT" = 1 ] && echo "cores / replicas" || echo "all cores (default)"); $(date -u '+%Y-%m-%d %H:%M UTC')"
printf '%-28s %12s %14s %8s\n' "setup" "out tok/s" "p50 e2e ms" "failed"
printf '%-28s %12s %14s %8s\n' "1 replica, direct" "${TPS[direct]}" "${P50[direct]}" "${FAIL[direct]}"
for n in 1 2 3; do
    printf '%-28s %12s %14s %8s\n' "$n replica(s) behind nginx" "${TPS[$n]}" "${P50[$n]}" "${FAIL[$n]}"
done
for n in 1 2 3; do echo "tps_nginx_$n: ${TPS[$n]}"; done
echo "tps_direct: ${TPS[direct]}"
awk -v a="${TPS[1]}" -v b="${TPS[direct]}" 'BEGIN {printf "nginx_overhead_tps: %.3f\n", 1 - a / b}'

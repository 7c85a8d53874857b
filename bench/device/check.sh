#!/usr/bin/env bash
# bench/device/check.sh: llmd's kernels on a CPU this machine does not have
# (the device machine's host: an Intel Xeon with AVX-512, AVX-VNNI and AMX).
#
#   bench/device/check.sh build   here: static binaries, stripped and
#                                 gzipped (the working tree that travels is
#                                 small), into build/device/ (the device
#                                 machine has none of llmd's libraries)
#   bench/device/check.sh run     there (build/device carried along): every
#                                 quantized kernel against the reference
#                                 (quant_amx_check), the whole forward pass
#                                 under each kernel and instruction set
#                                 (isa_check), and decode speed per kernel
#                                 on 2 threads (forward)
#
# The static build links the reference BLAS/LAPACK (Debian's static OpenBLAS
# crashes in a static binary) and bench/device/blas.c; nothing here is part
# of `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/device

build() {
    make -s build/llmd build/obj/bench/quant_amx_check.o build/obj/bench/isa_check.o \
        build/obj/bench/forward.o >/dev/null
    mkdir -p "$out"
    gcc -O2 -c bench/device/blas.c -o "$out/blas.o"
    local objs libs
    objs="$(ls build/obj/{util,core,quant,attention}/*.o) $out/blas.o"
    libs="-l:liblapacke.a /usr/lib/x86_64-linux-gnu/lapack/liblapack.a \
          /usr/lib/x86_64-linux-gnu/blas/libblas.a -lgfortran -lquadmath -lm"
    for prog in quant_amx_check isa_check forward; do
        # shellcheck disable=SC2086
        gcc -static -s -fopenmp "build/obj/bench/$prog.o" $objs -o "$out/$prog" $libs 2>&1 |
            grep -v -e dlopen -e gomp_target || true
        gzip -9 -f "$out/$prog"
    done
    rm -f "$out/blas.o"
    ls -la "$out"
}

run() {
    export LLMD_NO_REEXEC=1 # static: no OpenBLAS to fix, and GOMP_SPINCOUNT is ours to leave
    local bin=/tmp/llmd-device
    mkdir -p $bin
    for prog in quant_amx_check isa_check forward; do
        gunzip -c "$out/$prog.gz" >"$bin/$prog" && chmod +x "$bin/$prog"
    done
    out=$bin
    grep -m1 'model name' /proc/cpuinfo
    # one quantized file, made there once: every run below reads the same weights
    "$out/isa_check" quantize models/llmd-20m.gguf "$out/llmd-20m-atom.gguf"
    "$out/quant_amx_check" --quick || status=1
    echo
    # The quantized kernels compute the same bits (the reference's rounding,
    # groups within one chunk): one model, every kernel, no tolerance.
    local kernels="avx2 avxvnni avx512 amx" k ok=1
    for k in scalar $kernels; do
        LLMD_QKERNEL=$k "$out/isa_check" run "$out/llmd-20m-atom.gguf" "/tmp/atom-$k.bin" || ok=0
    done
    for k in $kernels; do
        "$out/isa_check" compare /tmp/atom-scalar.bin "/tmp/atom-$k.bin" 0 || ok=0
    done
    # The attention kernels sum in their own order: fp32 model, AVX2 against AVX-512.
    LLMD_ISA=avx2 "$out/isa_check" run models/llmd-20m.gguf /tmp/fp32-avx2.bin || ok=0
    "$out/isa_check" run models/llmd-20m.gguf /tmp/fp32-native.bin || ok=0
    "$out/isa_check" compare /tmp/fp32-avx2.bin /tmp/fp32-native.bin 1e-4 || ok=0
    echo
    echo "decode speed per quantized kernel, 2 threads (bench/forward, llmd-20m atom, int4 KV):"
    for k in $kernels; do
        echo "LLMD_QKERNEL=$k"
        LLMD_QKERNEL=$k OMP_NUM_THREADS=2 taskset -c 0,1 "$out/forward" \
            --model "$out/llmd-20m-atom.gguf" --precisions atom --kv int4 --batches 1,8,32 \
            --prompt 64 --decode 32 --repeat 3 | grep -E '^(atom|#)'
    done
    echo "isa_check_passed: $([ $ok = 1 ] && echo yes || echo no)"
    [ "$ok" = 1 ] && [ "${status:-0}" = 0 ]
}

case "${1:-}" in
build) build ;;
run) run ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac

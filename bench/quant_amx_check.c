/*
 * quant_amx_check: every quantized GEMM kernel this CPU can run, against the
 * scalar reference on awkward shapes (PASS/FAIL), then its throughput in
 * TOPS (2 M N K / time) next to the AVX-512 VNNI kernel. Self-contained (no
 * Criterion, no OpenBLAS) so that it links statically and runs on a machine
 * with AMX that has none of llmd's libraries:
 *
 *   make build/obj/bench/quant_amx_check.o build/obj/util/util.o build/obj/util/cpu.o \
 *        build/obj/util/numeric.o build/obj/quant/format.o build/obj/quant/act.o \
 *        build/obj/quant/linear.o build/obj/quant/gemm.o build/obj/quant/gemm_avx2.o \
 *        build/obj/quant/gemm_avx512.o build/obj/quant/gemm_amx.o build/obj/quant/gemm_avxvnni.o \
 *        build/obj/util/pool.o
 *   gcc -static -fopenmp build/obj/bench/quant_amx_check.o build/obj/util/util.o \
 *        build/obj/util/cpu.o build/obj/util/numeric.o build/obj/util/pool.o \
 *        build/obj/quant/format.o build/obj/quant/act.o build/obj/quant/linear.o \
 *        build/obj/quant/gemm.o build/obj/quant/gemm_avx2.o build/obj/quant/gemm_avxvnni.o \
 *        build/obj/quant/gemm_avx512.o build/obj/quant/gemm_amx.o -lm -o build/quant_amx_check
 *   (bench/device_check.sh does this and more)
 *
 *   quant_amx_check [--quick]      exit status 0 when every kernel passed
 */
#include "quant/quant_internal.h"
#include "tests/test_quant_helpers.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define KERNEL_REL_TOL 1e-5 /* as in tests/test_quant_gemm.c */
#define MIN_SECONDS    0.2  /* per timing: repeat the call until this long */

/* Compares one kernel with the reference on one shape; returns failures. */
static int check_shape(enum q_kernel kernel, const struct q_format *f, int m, int n, int k)
{
    int *perm = util_xmalloc((size_t)k * sizeof *perm);
    for (int j = 0; j < k; j++) perm[j] = (j * 37 + 11) % k;
    int loud[2] = {1, k / 2};
    float *x = tq_matrix(100 + (uint64_t)m, m, k, loud, 2, 8.0f);
    float *w = tq_matrix(200 + (uint64_t)n, n, k, NULL, 0, 1.0f);
    const int *p = f->n_outlier ? perm : NULL;
    q_linear *layer = q_linear_quantize(w, n, k, f, p);
    q_act *act = q_act_create(f, k, m);
    q_act_quantize(act, x, m, p);
    float *ref = util_xmalloc((size_t)m * n * sizeof *ref),
          *y = util_xmalloc((size_t)m * n * sizeof *y);
    float *exact = util_xmalloc((size_t)m * n * sizeof *exact);
    float *scale = util_xmalloc((size_t)m * n * sizeof *scale);
    tq_product_definition(layer, act, m, exact, scale);
    q_gemm_with(Q_KERNEL_SCALAR, layer, act, m, ref);
    q_gemm_with(kernel, layer, act, m, y);
    int bad = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        bool ok = fabsf(y[i] - ref[i]) <= KERNEL_REL_TOL * scale[i] + FLT_MIN &&
                  fabsf(ref[i] - exact[i]) <= KERNEL_REL_TOL * scale[i] + FLT_MIN;
        if (!ok && bad++ == 0)
            printf(
                "  FAIL %s m=%d n=%d k=%d outliers=%d at (%zu, %zu): %g, reference %g, exact %g\n",
                q_kernel_name(kernel), m, n, k, f->n_outlier, i / n, i % n, y[i], ref[i], exact[i]);
    }
    free(perm), free(x), free(w), free(ref), free(y), free(exact), free(scale);
    q_linear_free(layer);
    q_act_free(act);
    return bad ? 1 : 0;
}

/* The jobs interface (as the forward pass calls it): two layers, a row
 * stride wider than n, the second accumulating, split over 3 threads. */
static int check_jobs(enum q_kernel kernel)
{
    const int k = 272, m = 20, ns[2] = {48, 129}, ldy = 140;
    struct q_format f = tq_w4a4(128, 16);
    float *x = tq_matrix(41, m, k, NULL, 0, 1.0f);
    q_act *act = q_act_create(&f, k, m);
    q_act_quantize(act, x, m, NULL);
    int bad = 0;
    for (int j = 0; j < 2; j++) {
        float *w = tq_matrix(42 + (uint64_t)j, ns[j], k, NULL, 0, 1.0f);
        q_linear *layer = q_linear_quantize(w, ns[j], k, &f, NULL);
        float *ref = util_xmalloc((size_t)m * ns[j] * sizeof *ref);
        float *y = util_xmalloc((size_t)m * ldy * sizeof *y);
        q_gemm_with(Q_KERNEL_SCALAR, layer, act, m, ref);
        for (int i = 0; i < m * ldy; i++) y[i] = 1.0f;
        struct q_gemm_job job = {layer, act, y, ldy, j == 1};
        for (int ith = 0; ith < 3; ith++) q_gemm_jobs_with(kernel, &job, 1, m, ith, 3);
        for (int t = 0; t < m; t++)
            for (int c = 0; c < ldy; c++) {
                float got = y[(size_t)t * ldy + c];
                float want =
                    c >= ns[j] ? 1.0f : ref[(size_t)t * ns[j] + c] + (j == 1 ? 1.0f : 0.0f);
                if (fabsf(got - want) > 1e-4f * (fabsf(want) + 1.0f) && bad++ == 0)
                    printf("  FAIL %s jobs (accumulate %d) at (%d, %d): %g, want %g\n",
                           q_kernel_name(kernel), j == 1, t, c, got, want);
            }
        free(w), free(ref), free(y);
        q_linear_free(layer);
    }
    free(x);
    q_act_free(act);
    return bad ? 1 : 0;
}

static int check_kernel(enum q_kernel kernel, bool quick)
{
    const int ms[] = {1, 3, 7, 17, 33, 70}, ns[] = {1, 31, 33, 129};
    struct {
        struct q_format f;
        int k;
    } cases[16];
    int n_cases = 0;
    const int normals[] = {128, 256, 384}, outliers[] = {0, 16, 32};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            cases[n_cases].f = tq_w4a4(128, outliers[b]);
            cases[n_cases++].k = normals[a] + outliers[b];
        }
    cases[n_cases].f = tq_w4a4(128, 16); /* short last group, padded outliers */
    cases[n_cases++].k = 512;
    cases[n_cases].f = tq_w4a4(32, 48);
    cases[n_cases++].k = 128;
    cases[n_cases].f = q_format_default(Q_W8A8);
    cases[n_cases++].k = 16;
    cases[n_cases].f = q_format_default(Q_W8A8);
    cases[n_cases++].k = 2080;                   /* split over chunks */
    cases[n_cases].f = q_format_default(Q_W4A8); /* int8 activations over int4 weights */
    cases[n_cases++].k = 512;
    cases[n_cases].f = q_format_default(Q_W4A8);
    cases[n_cases].f.group_size = 48;
    cases[n_cases++].k = 144;
    int failed = 0, shapes = 0;
    for (int c = 0; c < n_cases; c++)
        for (size_t i = 0; i < sizeof ms / sizeof *ms; i++)
            for (size_t j = 0; j < sizeof ns / sizeof *ns; j++) {
                if (quick && (i + j) % 3) continue;
                failed += check_shape(kernel, &cases[c].f, ms[i], ns[j], cases[c].k);
                shapes++;
            }
    /* Large enough to run on every thread. */
    struct q_format atom = tq_w4a4(128, 128);
    failed += check_shape(kernel, &atom, 100, 300, 4096);
    shapes++;
    failed += check_jobs(kernel);
    shapes++;
    printf("%-8s %s (%d shapes, %d failed)\n", q_kernel_name(kernel), failed ? "FAIL" : "PASS",
           shapes, failed);
    return failed;
}

/* Seconds per call of q_gemm_with (median of 5 timings). */
static double time_gemm(enum q_kernel kernel, const q_linear *layer, const q_act *act, int m,
                        float *y)
{
    double t[5];
    for (int r = 0; r < 5; r++) {
        int calls = 0;
        double t0 = util_now();
        do {
            q_gemm_with(kernel, layer, act, m, y);
            calls++;
        } while (util_now() - t0 < MIN_SECONDS);
        t[r] = (util_now() - t0) / calls;
    }
    for (int i = 1; i < 5; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) {
            double s = t[j];
            t[j] = t[j - 1];
            t[j - 1] = s;
        }
    return t[2];
}

static void throughput(bool quick)
{
    const int ms[] = {1, 32, 256};
    const int n = 4096, k = 4096;
    printf("\nthroughput, N = K = %d, TOPS = 2 M N K / time (median of 5):\n", n);
    printf("%-6s %4s", "format", "M");
    for (int kernel = Q_KERNEL_AVX2; kernel < Q_KERNEL_COUNT; kernel++)
        if (q_kernel_available((enum q_kernel)kernel))
            printf(" %9s", q_kernel_name((enum q_kernel)kernel));
    printf("\n");
    float *w = tq_matrix(7, n, k, NULL, 0, 1.0f);
    for (int method = 0; method < 2; method++) {
        struct q_format f = q_format_default(method ? Q_W4A4 : Q_W8A8);
        q_linear *layer = q_linear_quantize(w, n, k, &f, NULL);
        for (size_t i = 0; i < sizeof ms / sizeof *ms; i++) {
            int m = ms[i];
            if (quick && m == 32) continue;
            float *x = tq_matrix(8, m, k, NULL, 0, 1.0f);
            float *y = util_xmalloc((size_t)m * n * sizeof *y);
            q_act *act = q_act_create(&f, k, m);
            q_act_quantize(act, x, m, NULL);
            printf("%-6s %4d", method ? "W4A4" : "W8A8", m);
            for (int kernel = Q_KERNEL_AVX2; kernel < Q_KERNEL_COUNT; kernel++) {
                if (!q_kernel_available((enum q_kernel)kernel)) continue;
                double t = time_gemm((enum q_kernel)kernel, layer, act, m, y);
                printf(" %9.3f", 2.0 * m * n * k / t * 1e-12);
                fflush(stdout);
            }
            printf("\n");
            free(x), free(y);
            q_act_free(act);
        }
        q_linear_free(layer);
    }
    free(w);
}

int main(int argc, char **argv)
{
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    printf("quant_amx_check\ncpu: %s\nflags: %s\nselected kernel: %s\n\n", util_cpu_model_name(),
           util_cpu_flags_string(), q_kernel_name(q_kernel_selected()));
    int failed = 0;
    for (int kernel = Q_KERNEL_AVX2; kernel < Q_KERNEL_COUNT; kernel++) {
        if (q_kernel_available((enum q_kernel)kernel))
            failed += check_kernel((enum q_kernel)kernel, quick);
        else
            printf("%-8s not available on this CPU\n", q_kernel_name((enum q_kernel)kernel));
    }
    throughput(quick);
    printf("\namx_available: %s\nkernels_passed: %s\n",
           q_kernel_available(Q_KERNEL_AMX) ? "yes" : "no", failed ? "no" : "yes");
    return failed ? 1 : 0;
}

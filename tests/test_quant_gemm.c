/*
 * Tests for the quantized products: the scalar reference against the
 * dequantized definition, and every SIMD kernel the CPU has against the
 * scalar reference, on awkward shapes.
 */
#include "quant/quant_internal.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <float.h>
#include <signal.h>
#include <string.h>

/* Kernels differ from the reference only in fp32 rounding of at most ~40
 * terms of 3 roundings each: 1e-5 of the sum of the terms' magnitudes is
 * ~40x that. Anything wrong in the integer part is off by a whole step. */
#define KERNEL_REL_TOL 1e-5
/* Guard floats after y: a kernel must not write past (m, n). */
#define GUARD       64
#define GUARD_VALUE 12345.0f

/* A deterministic shuffle of 0..k-1, so that channel order matters. */
static int *shuffled(int k, uint64_t seed)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    int *perm = util_xmalloc((size_t)k * sizeof *perm);
    for (int j = 0; j < k; j++) perm[j] = j;
    for (int j = k - 1; j > 0; j--) {
        int i = (int)(util_rng_next(&rng) % (uint64_t)(j + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    return perm;
}

/* Checks every available kernel against the reference for one shape. */
static void check_shape(const struct q_format *f, int m, int n, int k, bool permute)
{
    int loud[4] = {0, k / 3, k / 2, k - 1};
    float *x = tq_matrix(1000 + (uint64_t)m * 7 + (uint64_t)k, m, k, loud, 4, 8.0f);
    float *w = tq_matrix(2000 + (uint64_t)n * 13 + (uint64_t)k, n, k, NULL, 0, 1.0f);
    int *perm = permute ? shuffled(k, (uint64_t)k) : NULL;
    q_linear *layer = q_linear_quantize(w, n, k, f, perm);
    q_act *act = q_act_create(f, k, m);
    q_act_quantize(act, x, m, perm);

    float *exact = util_xmalloc((size_t)m * n * sizeof *exact);
    float *scale = util_xmalloc((size_t)m * n * sizeof *scale);
    tq_product_definition(layer, act, m, exact, scale);

    float *ref = util_xmalloc(((size_t)m * n + GUARD) * sizeof *ref);
    float *y = util_xmalloc(((size_t)m * n + GUARD) * sizeof *y);
    q_gemm_with(Q_KERNEL_SCALAR, layer, act, m, ref);
    for (size_t i = 0; i < (size_t)m * n; i++)
        cr_assert_leq(fabsf(ref[i] - exact[i]), KERNEL_REL_TOL * scale[i] + FLT_MIN,
                      "scalar vs definition: m=%d n=%d k=%d at %zu: %g vs %g", m, n, k, i, ref[i],
                      exact[i]);
    for (int kernel = Q_KERNEL_AVX2; kernel < Q_KERNEL_COUNT; kernel++) {
        if (!tq_kernel_runs_here((enum q_kernel)kernel)) continue;
        for (size_t i = 0; i < (size_t)m * n + GUARD; i++) y[i] = GUARD_VALUE;
        q_gemm_with((enum q_kernel)kernel, layer, act, m, y);
        for (size_t i = 0; i < (size_t)m * n; i++)
            cr_assert_leq(fabsf(y[i] - ref[i]), KERNEL_REL_TOL * scale[i] + FLT_MIN,
                          "%s: m=%d n=%d k=%d outliers=%d at (%zu, %zu): %g vs %g",
                          q_kernel_name((enum q_kernel)kernel), m, n, k, f->n_outlier, i / n, i % n,
                          y[i], ref[i]);
        for (size_t i = (size_t)m * n; i < (size_t)m * n + GUARD; i++)
            cr_assert_eq(y[i], GUARD_VALUE, "%s wrote past y",
                         q_kernel_name((enum q_kernel)kernel));
    }
    free(x), free(w), free(perm), free(exact), free(scale);
    free(ref), free(y);
    q_linear_free(layer);
    q_act_free(act);
}

static const int ms[] = {1, 3, 7, 17, 33}; /* 7: two tiles unpacking in registers */
static const int ns[] = {1, 31, 33, 129};

static void check_all_shapes(const struct q_format *f, int k, bool permute)
{
    for (size_t i = 0; i < sizeof ms / sizeof *ms; i++)
        for (size_t j = 0; j < sizeof ns / sizeof *ns; j++)
            check_shape(f, ms[i], ns[j], k, permute);
}

Test(quant_gemm, w4a4_kernels_match_reference_for_k_128_256_384_and_0_16_32_outliers)
{
    const int normals[] = {128, 256, 384}, outliers[] = {0, 16, 32};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            struct q_format f = tq_w4a4(128, outliers[b]);
            check_all_shapes(&f, normals[a] + outliers[b], outliers[b] > 0);
        }
}

Test(quant_gemm, w4a4_kernels_match_reference_with_a_short_last_group)
{
    struct q_format f = tq_w4a4(128, 16); /* 496 int4 channels: 3 x 128 + 112 */
    check_all_shapes(&f, 512, true);
    f = tq_w4a4(32, 48); /* 80 int4 channels: 32 + 32 + 16 */
    check_all_shapes(&f, 128, true);
}

Test(quant_gemm, w4a4_kernels_match_reference_with_all_channels_int8)
{
    struct q_format f = tq_w4a4(128, 64);
    check_all_shapes(&f, 64, true);
}

Test(quant_gemm, w4a8_kernels_match_reference)
{
    struct q_format f = q_format_default(Q_W4A8);
    check_all_shapes(&f, 128, false);
    check_all_shapes(&f, 512, false); /* four groups of int8 activations over int4 weights */
    f.group_size = 48;                /* a short last group: 144 = 2 x 48 + 48, 128 = 2 x 48 + 32 */
    check_all_shapes(&f, 128, false);
}

Test(quant_gemm, w8a8_kernels_match_reference)
{
    struct q_format f = q_format_default(Q_W8A8);
    check_all_shapes(&f, 16, false);
    check_all_shapes(&f, 144, false);
    check_all_shapes(&f, 1040, true); /* longer than a chunk: split int8 groups */
}

Test(quant_gemm, large_product_splits_over_threads_and_matches_reference)
{
    struct q_format f = tq_w4a4(128, 32);
    check_shape(&f, 70, 300, 4096, true);
    struct q_format f8 = q_format_default(Q_W8A8);
    check_shape(&f8, 40, 17, 2048, false); /* one panel: the tokens are split */
    check_shape(&f, 300, 129, 144, true);  /* more tokens than a kernel pass takes */
}

/* Three layers reading one act (as Q, K and V do), written with a row
 * stride wider than n, the last accumulating onto what y held, by every
 * kernel this CPU runs: every thread count gives the reference's numbers,
 * bit for bit the same for every thread count (each column block is one
 * thread's, whole). */
static void check_jobs(enum q_kernel kernel)
{
    const int k = 272, ns[3] = {48, 31, 129}, m_values[] = {1, 5, 40};
    struct q_format f = tq_w4a4(128, 16);
    int *perm = shuffled(k, 7);
    q_linear *layers[3];
    for (int j = 0; j < 3; j++) {
        float *w = tq_matrix(300 + (uint64_t)j, ns[j], k, NULL, 0, 1.0f);
        layers[j] = q_linear_quantize(w, ns[j], k, &f, perm);
        free(w);
    }
    for (size_t mi = 0; mi < sizeof m_values / sizeof *m_values; mi++) {
        int m = m_values[mi], ldy = 140;
        float *x = tq_matrix(400 + (uint64_t)m, m, k, NULL, 0, 1.0f);
        q_act *act = q_act_create(&f, k, m);
        q_act_quantize(act, x, m, perm);
        float *ref[3], *y[3], *first = NULL;
        for (int j = 0; j < 3; j++) {
            ref[j] = util_xmalloc((size_t)m * ns[j] * sizeof(float));
            q_gemm_with(Q_KERNEL_SCALAR, layers[j], act, m, ref[j]);
            y[j] = util_xmalloc((size_t)m * ldy * sizeof(float));
        }
        for (int nth = 1; nth <= 5; nth++) {
            for (int j = 0; j < 3; j++)
                for (int i = 0; i < m * ldy; i++) y[j][i] = j == 2 ? 1.0f : GUARD_VALUE;
            struct q_gemm_job jobs[3];
            for (int j = 0; j < 3; j++)
                jobs[j] = (struct q_gemm_job){layers[j], act, y[j], ldy, j == 2};
            for (int ith = nth - 1; ith >= 0; ith--) q_gemm_jobs_with(kernel, jobs, 3, m, ith, nth);
            for (int j = 0; j < 3; j++)
                for (int t = 0; t < m; t++)
                    for (int c = 0; c < ldy; c++) {
                        float got = y[j][(size_t)t * ldy + c];
                        if (c >= ns[j]) {
                            cr_assert_eq(got, j == 2 ? 1.0f : GUARD_VALUE, "%s wrote past n",
                                         q_kernel_name(kernel));
                            continue;
                        }
                        float want = ref[j][(size_t)t * ns[j] + c] + (j == 2 ? 1.0f : 0.0f);
                        cr_assert_leq(fabsf(got - want), 1e-4f * (fabsf(want) + 1.0f),
                                      "%s job %d m=%d threads=%d (%d, %d): %g vs %g",
                                      q_kernel_name(kernel), j, m, nth, t, c, got, want);
                    }
            if (!first) {
                first = util_xmalloc((size_t)m * ldy * sizeof(float));
                memcpy(first, y[0], (size_t)m * ldy * sizeof(float));
            } else {
                cr_assert(memcmp(first, y[0], (size_t)m * ldy * sizeof(float)) == 0,
                          "%s: %d threads changed the numbers", q_kernel_name(kernel), nth);
            }
        }
        for (int j = 0; j < 3; j++) free(ref[j]), free(y[j]);
        free(first), free(x);
        q_act_free(act);
    }
    for (int j = 0; j < 3; j++) q_linear_free(layers[j]);
    free(perm);
}

Test(quant_gemm, jobs_split_over_threads_with_stride_and_accumulate_match_reference)
{
    for (int kernel = Q_KERNEL_SCALAR; kernel < Q_KERNEL_COUNT; kernel++)
        if (kernel == Q_KERNEL_SCALAR || tq_kernel_runs_here((enum q_kernel)kernel))
            check_jobs((enum q_kernel)kernel);
}

Test(quant_gemm, selected_kernel_is_available_and_named)
{
    enum q_kernel k = q_kernel_selected();
    cr_assert(q_kernel_available(k));
    cr_assert(q_kernel_available(Q_KERNEL_SCALAR));
    cr_assert_str_neq(q_kernel_name(k), "unknown");
}

Test(quant_gemm, act_in_another_channel_order_is_refused, .signal = SIGABRT)
{
    struct q_format f = tq_w4a4(128, 16);
    int *perm = shuffled(144, 1);
    float *w = tq_matrix(1, 16, 144, NULL, 0, 1.0f), *x = tq_matrix(2, 1, 144, NULL, 0, 1.0f);
    q_linear *layer = q_linear_quantize(w, 16, 144, &f, perm);
    q_act *act = q_act_create(&f, 144, 1);
    q_act_quantize(act, x, 1, NULL);
    float y[16];
    q_gemm(layer, act, 1, y);
}

Test(quant_gemm, act_of_another_format_is_refused, .signal = SIGABRT)
{
    struct q_format f4 = tq_w4a4(128, 0), f8 = q_format_default(Q_W8A8);
    float *w = tq_matrix(1, 16, 128, NULL, 0, 1.0f), *x = tq_matrix(2, 1, 128, NULL, 0, 1.0f);
    q_linear *layer = q_linear_quantize(w, 16, 128, &f4, NULL);
    q_act *act = q_act_create(&f8, 128, 1);
    q_act_quantize(act, x, 1, NULL);
    float y[16];
    q_gemm(layer, act, 1, y);
}

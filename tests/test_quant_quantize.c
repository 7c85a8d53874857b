/*
 * Tests for the quantizers: every one against its round-trip error bound,
 * computed here from the definition (symmetric, scale = clip * absmax / qmax
 * per group), and the fused RMSNorm and SwiGLU variants against the plain
 * computation.
 */
#include "quant/quant.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <float.h>
#include <string.h>

/* Round to nearest: |x - dq| <= scale / 2, up to the rounding of x / scale
 * in fp32 (a few ulps, far below this slack). */
#define ROUND_TRIP_SLACK 1e-5
/* A clipped value dequantizes to exactly +-qmax * scale, up to fp32. */
#define CLIPPED_REL_TOL 1e-6
/* Fused and plain inputs differ in fp32 rounding (and SiLU's polynomial
 * exponential, ~2e-7): relative slack on the input value. */
#define FUSED_INPUT_REL_TOL 2e-6

/* More groups than any test format has. */
#define Q_MAX_GROUPS_TEST 300

/* Describes the groups of a format the way quant.h defines them, without
 * looking inside the library: channel range and bits of group g, of the
 * activations or of the weights (they differ in W4A8). */
struct tq_group {
    int start, len, bits;
};

static int tq_groups(const struct q_format *f, int k, bool activations, struct tq_group *out)
{
    if (f->method == Q_W8A8) {
        out[0] = (struct tq_group){0, k, 8};
        return 1;
    }
    int n = 0, normal = k - f->n_outlier;
    int bits = f->method == Q_W4A8 && activations ? 8 : 4;
    for (int s = 0; s < normal; s += f->group_size)
        out[n++] =
            (struct tq_group){s, normal - s < f->group_size ? normal - s : f->group_size, bits};
    if (f->n_outlier) out[n++] = (struct tq_group){normal, f->n_outlier, 8};
    return n;
}

/* Checks dq against h (layer order, k values) group by group; returns the
 * number of clipped values. `input_tol` is extra slack relative to |h|. */
static int check_round_trip(const struct q_format *f, float clip, const float *h, const float *dq,
                            int k, double input_tol, const char *what)
{
    struct tq_group groups[Q_MAX_GROUPS_TEST];
    int n_groups = tq_groups(f, k, strcmp(what, "weight") != 0, groups), clipped = 0;
    for (int g = 0; g < n_groups; g++) {
        float absmax = 0;
        for (int c = 0; c < groups[g].len; c++)
            absmax = fmaxf(absmax, fabsf(h[groups[g].start + c]));
        int qmax = groups[g].bits == 4 ? 7 : 127;
        double scale = (groups[g].bits == 4 ? clip : 1.0) * absmax / qmax;
        for (int c = 0; c < groups[g].len; c++) {
            int j = groups[g].start + c;
            double slack = input_tol * fabs(h[j]);
            if (fabs(h[j]) <= qmax * scale) {
                cr_assert_leq(fabs(h[j] - dq[j]), scale / 2 * (1 + ROUND_TRIP_SLACK) + slack,
                              "%s: channel %d (group %d, %d bits): %g -> %g, scale %g", what, j, g,
                              groups[g].bits, h[j], dq[j], scale);
            } else {
                clipped++;
                double want = copysign(qmax * scale, h[j]);
                cr_assert_leq(fabs(dq[j] - want), CLIPPED_REL_TOL * fabs(want) + slack,
                              "%s: clipped channel %d: %g -> %g, want %g", what, j, h[j], dq[j],
                              want);
            }
        }
    }
    return clipped;
}

/* Channel j*37+11 mod k: a permutation for every k the tests use (37 is prime). */
static int *scrambled(int k)
{
    int *perm = util_xmalloc((size_t)k * sizeof *perm);
    for (int j = 0; j < k; j++) perm[j] = (j * 37 + 11) % k;
    return perm;
}

/* Activations: all tokens of x (m, k), quantized with perm, checked. */
static void check_act(const struct q_format *f, const float *x, int m, int k, const int *perm)
{
    q_act *act = q_act_create(f, k, m + 3);
    q_act_quantize(act, x, m, perm);
    float *dq = util_xmalloc((size_t)m * k * sizeof *dq), *h = util_xmalloc((size_t)k * sizeof *h);
    q_act_dequantize(act, m, dq);
    int clipped = 0;
    for (int t = 0; t < m; t++) {
        for (int j = 0; j < k; j++) h[j] = x[(size_t)t * k + (perm ? perm[j] : j)];
        clipped += check_round_trip(f, f->act_clip, h, dq + (size_t)t * k, k, 0, "activation");
    }
    if (f->method == Q_W4A4 && f->act_clip < 1) cr_assert_gt(clipped, 0, "clipping never happened");
    free(dq), free(h);
    q_act_free(act);
}

Test(quant_act, int4_groups_and_int8_outliers_round_trip_within_half_a_step)
{
    int loud[3] = {5, 77, 140};
    float *x = tq_matrix(3, 9, 144, loud, 3, 30.0f);
    int *perm = scrambled(144);
    struct q_format f = tq_w4a4(128, 16);
    check_act(&f, x, 9, 144, perm);
    check_act(&f, x, 9, 144, NULL);
    f = tq_w4a4(32, 32); /* short last group: 112 = 3 x 32 + 16 */
    check_act(&f, x, 9, 144, perm);
    free(x), free(perm);
}

Test(quant_act, w4a8_int8_groups_round_trip_within_half_a_step_unclipped)
{
    int loud[2] = {3, 200};
    float *x = tq_matrix(5, 7, 384, loud, 2, 30.0f);
    struct q_format f = q_format_default(Q_W4A8);
    check_act(&f, x, 7, 384, NULL);
    f.group_size = 32;
    check_act(&f, x, 7, 384, NULL);
    free(x);
}

Test(quant_act, w8a8_tokens_round_trip_within_half_a_step)
{
    float *x = tq_matrix(4, 5, 4096, NULL, 0, 1.0f);
    struct q_format f = q_format_default(Q_W8A8);
    check_act(&f, x, 5, 4096, NULL);
    free(x);
}

Test(quant_act, zero_token_quantizes_to_zero_and_its_product_is_zero)
{
    struct q_format f = tq_w4a4(128, 16);
    float x[2 * 144] = {0};
    for (int j = 0; j < 144; j++) x[144 + j] = (float)j - 70.0f;
    q_act *act = q_act_create(&f, 144, 2);
    q_act_quantize(act, x, 2, NULL);
    float dq[2 * 144];
    q_act_dequantize(act, 2, dq);
    for (int j = 0; j < 144; j++) cr_assert_eq(dq[j], 0.0f);
    float *w = tq_matrix(8, 20, 144, NULL, 0, 1.0f), y[2 * 20];
    q_linear *layer = q_linear_quantize(w, 20, 144, &f, NULL);
    q_gemm(layer, act, 2, y);
    for (int r = 0; r < 20; r++) cr_assert_eq(y[r], 0.0f);
    free(w);
    q_linear_free(layer);
    q_act_free(act);
}

Test(quant_act, rmsnorm_fusion_matches_normalising_first)
{
    const int m = 6, k = 528;
    const float eps = 1e-5f;
    int loud[2] = {3, 400};
    float *x = tq_matrix(5, m, k, loud, 2, 20.0f);
    float *nw = tq_matrix(6, 1, k, NULL, 0, 1.0f);
    int *perm = scrambled(k);
    struct q_format f = tq_w4a4(128, 16);
    q_act *act = q_act_create(&f, k, m);
    q_act_quantize_rmsnorm(act, x, nw, eps, m, perm);
    float *dq = util_xmalloc((size_t)m * k * sizeof *dq), *h = util_xmalloc((size_t)k * sizeof *h);
    q_act_dequantize(act, m, dq);
    for (int t = 0; t < m; t++) {
        double ss = 0;
        for (int j = 0; j < k; j++) ss += (double)x[t * k + j] * x[t * k + j];
        double inv = 1.0 / sqrt(ss / k + eps);
        for (int j = 0; j < k; j++) h[j] = (float)(x[t * k + perm[j]] * inv * nw[perm[j]]);
        check_round_trip(&f, f.act_clip, h, dq + (size_t)t * k, k, FUSED_INPUT_REL_TOL, "rmsnorm");
    }
    free(x), free(nw), free(perm), free(dq), free(h);
    q_act_free(act);
}

Test(quant_act, swiglu_fusion_matches_silu_times_up)
{
    const int m = 5, k = 1536;
    float *gate = tq_matrix(7, m, k, NULL, 0, 4.0f), *up = tq_matrix(8, m, k, NULL, 0, 1.0f);
    gate[3] = 95.0f; /* exp overflows without care */
    gate[4] = -95.0f;
    struct q_format f = tq_w4a4(128, 48);
    q_act *act = q_act_create(&f, k, m);
    q_act_quantize_swiglu(act, gate, up, m);
    float *dq = util_xmalloc((size_t)m * k * sizeof *dq), *h = util_xmalloc((size_t)k * sizeof *h);
    q_act_dequantize(act, m, dq);
    for (int t = 0; t < m; t++) {
        for (int j = 0; j < k; j++) {
            double g = gate[t * k + j];
            h[j] = (float)(g / (1.0 + exp(-g)) * up[t * k + j]);
        }
        check_round_trip(&f, f.act_clip, h, dq + (size_t)t * k, k, FUSED_INPUT_REL_TOL, "swiglu");
    }
    free(gate), free(up), free(dq), free(h);
    q_act_free(act);
}

/* Weights: rows of w (n, k) against q_linear_dequantize (original order). */
static void check_weights(const struct q_format *f, const float *w, int n, int k, const int *perm)
{
    q_linear *layer = q_linear_quantize(w, n, k, f, perm);
    cr_assert_eq(q_linear_rows(layer), n);
    cr_assert_eq(q_linear_cols(layer), k);
    float *dq = util_xmalloc((size_t)n * k * sizeof *dq);
    float *h = util_xmalloc((size_t)k * sizeof *h), *hd = util_xmalloc((size_t)k * sizeof *hd);
    q_linear_dequantize(layer, dq);
    int clipped = 0;
    for (int r = 0; r < n; r++) {
        for (int j = 0; j < k; j++) {
            int c = perm ? perm[j] : j;
            h[j] = w[(size_t)r * k + c];
            hd[j] = dq[(size_t)r * k + c];
        }
        clipped += check_round_trip(f, f->weight_clip, h, hd, k, 0, "weight");
    }
    if (f->method != Q_W8A8) cr_assert_gt(clipped, 0, "clipping never happened");
    free(dq), free(h), free(hd);
    q_linear_free(layer);
}

Test(quant_linear, int4_rows_and_int8_outliers_round_trip_within_half_a_step)
{
    int loud[2] = {1, 100};
    float *w = tq_matrix(9, 37, 144, loud, 2, 10.0f);
    int *perm = scrambled(144);
    struct q_format f = tq_w4a4(128, 16);
    check_weights(&f, w, 37, 144, perm);
    f = tq_w4a4(64, 32);
    check_weights(&f, w, 37, 144, NULL);
    f = q_format_default(Q_W8A8);
    check_weights(&f, w, 37, 144, perm);
    f = q_format_default(Q_W4A8);
    check_weights(&f, w, 37, 144, NULL);
    free(w), free(perm);
}

Test(quant_linear, reports_its_shape_format_and_order)
{
    float *w = tq_matrix(10, 3, 48, NULL, 0, 1.0f);
    int *perm = scrambled(48);
    struct q_format f = tq_w4a4(16, 16);
    q_linear *layer = q_linear_quantize(w, 3, 48, &f, perm);
    cr_assert_eq(q_linear_format(layer)->group_size, 16);
    cr_assert_eq(memcmp(q_linear_perm(layer), perm, 48 * sizeof(int)), 0);
    cr_assert_geq(q_linear_bytes(layer), 16 * 32 / 2 + 16 * 16);
    q_linear_free(layer);
    layer = q_linear_quantize(w, 3, 48, &f, NULL);
    cr_assert_null(q_linear_perm(layer));
    q_linear_free(layer);
    free(w), free(perm);
}

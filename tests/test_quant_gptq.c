/*
 * Tests for GPTQ: on inputs with a realistic covariance (a few strong
 * shared factors, uneven channel scales, loud outlier channels) it lowers
 * the layer's output error against round-to-nearest, with and without
 * Atom's int8 outlier channels; and it refuses a Hessian it cannot factor.
 */
#include "quant/quant.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <string.h>

/* GPTQ's output error as a fraction of RTN's at most. Weight-only (what
 * GPTQ minimises) it measures ~0.2 here. Through the W4A4 product the
 * activations' own rounding dominates and the gain shrinks (~0.8 with
 * outlier channels, ~0.93 without, where loud activations swamp it). */
#define GPTQ_OVER_RTN_MAX_WEIGHT_ONLY 0.5
#define GPTQ_OVER_RTN_MAX_W4A4        0.97

enum { K = 384, N = 96, CALIB_TOKENS = 4096, TEST_TOKENS = 1024, FACTORS = 12, N_LOUD = 16 };

/* Tokens x (m, K) = sum of FACTORS shared directions with decaying weight,
 * plus channel noise, times an uneven per-channel scale; N_LOUD channels
 * 8x louder. The same seed gives the same directions and scales. */
static float *correlated_tokens(uint64_t structure_seed, uint64_t token_seed, int m)
{
    struct util_rng srng, trng;
    util_rng_seed(&srng, structure_seed);
    util_rng_seed(&trng, token_seed);
    float *dir = util_xmalloc((size_t)FACTORS * K * sizeof *dir), scale[K];
    for (int i = 0; i < FACTORS * K; i++) dir[i] = (float)util_rng_normal(&srng);
    for (int j = 0; j < K; j++) scale[j] = (float)exp(0.5 * util_rng_normal(&srng));
    for (int i = 0; i < N_LOUD; i++) scale[(i * 23 + 7) % K] *= 8.0f;
    float *x = util_xmalloc((size_t)m * K * sizeof *x);
    for (int t = 0; t < m; t++) {
        float z[FACTORS];
        for (int f = 0; f < FACTORS; f++) z[f] = (float)(util_rng_normal(&trng) / sqrt(1.0 + f));
        for (int j = 0; j < K; j++) {
            float v = 0.3f * (float)util_rng_normal(&trng);
            for (int f = 0; f < FACTORS; f++) v += z[f] * dir[f * K + j];
            x[(size_t)t * K + j] = v * scale[j];
        }
    }
    free(dir);
    return x;
}

struct setup {
    float *w, *x_test, *y_test;
    atom_calib *calib;
    int perm[K];
};

static struct setup make_setup(void)
{
    struct setup s;
    s.w = tq_matrix(5, N, K, NULL, 0, 1.0f);
    float *x_cal = correlated_tokens(11, 12, CALIB_TOKENS);
    s.x_test = correlated_tokens(11, 13, TEST_TOKENS);
    s.calib = atom_calib_create(K, true);
    atom_calib_add(s.calib, x_cal, CALIB_TOKENS / 2);
    atom_calib_add(s.calib, x_cal + (size_t)CALIB_TOKENS / 2 * K, CALIB_TOKENS / 2);
    atom_outlier_permutation(atom_calib_mean_square(s.calib), K, N_LOUD, s.perm);
    s.y_test = util_xmalloc((size_t)TEST_TOKENS * N * sizeof *s.y_test);
    tq_matmul(s.x_test, s.w, TEST_TOKENS, N, K, false, s.y_test);
    free(x_cal);
    return s;
}

static void free_setup(struct setup *s)
{
    free(s->w), free(s->x_test), free(s->y_test);
    atom_calib_free(s->calib);
}

/* Output error on the test tokens with the layer's weights dequantized and
 * the activations in float: the error GPTQ minimises. */
static double weight_only_error(const struct setup *s, const q_linear *layer)
{
    float *wd = util_xmalloc((size_t)N * K * sizeof *wd);
    float *y = util_xmalloc((size_t)TEST_TOKENS * N * sizeof *y);
    q_linear_dequantize(layer, wd);
    tq_matmul(s->x_test, wd, TEST_TOKENS, N, K, false, y);
    double err = tq_rel_error(y, s->y_test, (size_t)TEST_TOKENS * N);
    free(wd), free(y);
    return err;
}

/* The same through the quantized product (activations quantized too). */
static double w4a4_error(const struct setup *s, const q_linear *layer, const int *perm)
{
    q_act *act = q_act_create(q_linear_format(layer), K, TEST_TOKENS);
    q_act_quantize(act, s->x_test, TEST_TOKENS, perm);
    float *y = util_xmalloc((size_t)TEST_TOKENS * N * sizeof *y);
    q_gemm(layer, act, TEST_TOKENS, y);
    double err = tq_rel_error(y, s->y_test, (size_t)TEST_TOKENS * N);
    free(y);
    q_act_free(act);
    return err;
}

static void compare(const struct q_format *f, bool permute, const char *name)
{
    struct setup s = make_setup();
    const int *p = permute ? s.perm : NULL;
    q_linear *rtn = q_linear_quantize(s.w, N, K, f, p);
    q_linear *gptq = q_linear_quantize_gptq(s.w, N, K, f, p, atom_calib_hessian(s.calib), 0.01f);
    cr_assert_not_null(gptq);
    double rtn_w = weight_only_error(&s, rtn), gptq_w = weight_only_error(&s, gptq);
    double rtn_q = w4a4_error(&s, rtn, p), gptq_q = w4a4_error(&s, gptq, p);
    cr_log_info("%s: weight-only error RTN %.4f GPTQ %.4f; W4A4 RTN %.4f GPTQ %.4f", name, rtn_w,
                gptq_w, rtn_q, gptq_q);
    cr_assert_leq(gptq_w, GPTQ_OVER_RTN_MAX_WEIGHT_ONLY * rtn_w, "%s weight-only", name);
    cr_assert_leq(gptq_q, GPTQ_OVER_RTN_MAX_W4A4 * rtn_q, "%s W4A4", name);
    q_linear_free(rtn);
    q_linear_free(gptq);
    free_setup(&s);
}

Test(quant_gptq, lowers_output_error_against_rtn_on_correlated_inputs)
{
    struct q_format f = q_format_default(Q_W4A4);
    compare(&f, false, "W4A4 RTN format");
}

Test(quant_gptq, lowers_output_error_with_int8_outlier_channels_last)
{
    struct q_format f = tq_w4a4(128, N_LOUD);
    compare(&f, true, "Atom format");
}

Test(quant_gptq, refuses_a_hessian_that_is_not_positive_definite)
{
    const int k = 32, n = 16;
    float *w = tq_matrix(3, n, k, NULL, 0, 1.0f), *h = util_xcalloc((size_t)k * k, sizeof *h);
    for (int j = 0; j < k; j++) h[j * k + j] = -1.0f;
    struct q_format f = tq_w4a4(16, 16);
    cr_assert_null(q_linear_quantize_gptq(w, n, k, &f, NULL, h, 0.01f));
    free(w), free(h);
}

Test(quant_gptq, channel_never_seen_in_calibration_gets_zero_weight)
{
    const int k = 64, n = 20;
    float *w = tq_matrix(4, n, k, NULL, 0, 1.0f), *x = tq_matrix(5, 256, k, NULL, 0, 1.0f);
    for (int t = 0; t < 256; t++) x[t * k + 9] = 0.0f;
    atom_calib *calib = atom_calib_create(k, true);
    atom_calib_add(calib, x, 256);
    struct q_format f = tq_w4a4(32, 0);
    q_linear *layer = q_linear_quantize_gptq(w, n, k, &f, NULL, atom_calib_hessian(calib), 0.01f);
    cr_assert_not_null(layer);
    float *wd = util_xmalloc((size_t)n * k * sizeof *wd);
    q_linear_dequantize(layer, wd);
    for (int r = 0; r < n; r++) cr_assert_eq(wd[r * k + 9], 0.0f);
    free(w), free(x), free(wd);
    q_linear_free(layer);
    atom_calib_free(calib);
}

Test(quant_gptq, with_an_identity_hessian_equals_round_to_nearest)
{
    /* H = I: no correlation to exploit, every error stays in its column. */
    const int k = 160, n = 24;
    float *w = tq_matrix(6, n, k, NULL, 0, 1.0f), *h = util_xcalloc((size_t)k * k, sizeof *h);
    for (int j = 0; j < k; j++) h[j * k + j] = 1.0f;
    struct q_format f = tq_w4a4(64, 32);
    q_linear *gptq = q_linear_quantize_gptq(w, n, k, &f, NULL, h, 0.0f);
    q_linear *rtn = q_linear_quantize(w, n, k, &f, NULL);
    float *a = util_xmalloc((size_t)n * k * sizeof *a),
          *b = util_xmalloc((size_t)n * k * sizeof *b);
    q_linear_dequantize(gptq, a);
    q_linear_dequantize(rtn, b);
    for (int i = 0; i < n * k; i++) cr_assert_eq(a[i], b[i], "weight %d: %g vs %g", i, a[i], b[i]);
    free(w), free(h), free(a), free(b);
    q_linear_free(gptq);
    q_linear_free(rtn);
}

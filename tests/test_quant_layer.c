/*
 * Tests of a whole quantized linear layer against FP32: the error stays
 * within what the formats' rounding predicts, and Atom's int8 outlier
 * channels remove the error that outlier activations cause in plain RTN.
 */
#include "quant/quant.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>

/* Relative (Frobenius) output error for Gaussian x and w. Predicted: int4
 * with scale clip*absmax/7, absmax of 128 normals ~2.9 sigma, rounding
 * noise scale/sqrt(12): ~0.108 (activations, clip 0.9) and ~0.102 (weights,
 * 0.85), so ~0.15 in the product; int8 per row of 1024, absmax ~3.4 sigma:
 * ~0.011. The bounds leave a third more. */
#define W4A4_GAUSSIAN_MAX_REL_ERROR 0.20
#define W8A8_GAUSSIAN_MAX_REL_ERROR 0.015
/* With 16 activation channels 20x louder: Atom keeps them int8 and stays
 * well within the Gaussian bound; RTN's groups are scaled by them. */
#define ATOM_OUTLIER_MAX_REL_ERROR 0.10
#define RTN_OVER_ATOM_MIN_RATIO    3.0

enum { M = 64, N = 256, K = 1024, N_LOUD = 16 };

/* The layer's relative output error for x (M, K) against x w^T. */
static double layer_error(const struct q_format *f, const float *x, const float *w, const int *perm)
{
    float *y = util_xmalloc((size_t)M * N * sizeof *y),
          *yq = util_xmalloc((size_t)M * N * sizeof *yq);
    tq_matmul(x, w, M, N, K, false, y);
    q_linear *layer = q_linear_quantize(w, N, K, f, perm);
    q_act *act = q_act_create(f, K, M);
    q_act_quantize(act, x, M, perm);
    q_gemm(layer, act, M, yq);
    double err = tq_rel_error(yq, y, (size_t)M * N);
    q_linear_free(layer);
    q_act_free(act);
    free(y), free(yq);
    return err;
}

Test(quant_layer, gaussian_output_error_within_the_formats_rounding)
{
    float *x = tq_matrix(1, M, K, NULL, 0, 1.0f), *w = tq_matrix(2, N, K, NULL, 0, 1.0f);
    struct q_format w4 = q_format_default(Q_W4A4), w8 = q_format_default(Q_W8A8);
    double e4 = layer_error(&w4, x, w, NULL), e8 = layer_error(&w8, x, w, NULL);
    cr_log_info("relative error: W4A4 %.4f, W8A8 %.4f", e4, e8);
    cr_assert_leq(e4, W4A4_GAUSSIAN_MAX_REL_ERROR);
    cr_assert_leq(e8, W8A8_GAUSSIAN_MAX_REL_ERROR);
    cr_assert_gt(e4, e8);
    free(x), free(w);
}

Test(quant_layer, int8_outlier_channels_remove_the_error_of_loud_activations)
{
    int loud[N_LOUD], perm[K], n = 0;
    for (int i = 0; i < N_LOUD; i++) loud[i] = i * (K / N_LOUD) + 5;
    float *x = tq_matrix(3, M, K, loud, N_LOUD, 20.0f), *w = tq_matrix(4, N, K, NULL, 0, 1.0f);
    for (int j = 0; j < K; j++)
        if (j % (K / N_LOUD) != 5) perm[n++] = j;
    for (int i = 0; i < N_LOUD; i++) perm[n++] = loud[i];
    struct q_format rtn = q_format_default(Q_W4A4), atom = tq_w4a4(128, N_LOUD);
    double e_rtn = layer_error(&rtn, x, w, NULL), e_atom = layer_error(&atom, x, w, perm);
    cr_log_info("relative error with loud channels: RTN %.4f, Atom %.4f", e_rtn, e_atom);
    cr_assert_leq(e_atom, ATOM_OUTLIER_MAX_REL_ERROR);
    cr_assert_geq(e_rtn, RTN_OVER_ATOM_MIN_RATIO * e_atom);
    free(x), free(w);
}

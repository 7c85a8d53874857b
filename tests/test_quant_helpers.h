/* Helpers shared by the quant tests: deterministic data and reference math. */
#ifndef LLMD_TEST_QUANT_HELPERS_H
#define LLMD_TEST_QUANT_HELPERS_H

#include "quant/quant.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Gaussian (rows, cols) matrix; channels listed in `loud` (n_loud of them)
 * are scaled by `loud_gain`, like the outlier channels of LLM activations. */
static inline float *tq_matrix(uint64_t seed, int rows, int cols, const int *loud, int n_loud,
                               float loud_gain)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    float *x = util_xmalloc((size_t)rows * cols * sizeof *x);
    for (size_t i = 0; i < (size_t)rows * cols; i++) x[i] = (float)util_rng_normal(&rng);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n_loud; i++) x[(size_t)r * cols + loud[i]] *= loud_gain;
    return x;
}

/* y (m, n) = x (m, k) w (n, k)^T in double, rounded to float. With `absolute`,
 * |x| |w|^T instead (a scale for rounding tolerances). */
static inline void tq_matmul(const float *x, const float *w, int m, int n, int k, bool absolute,
                             float *y)
{
    for (int t = 0; t < m; t++)
        for (int r = 0; r < n; r++) {
            double s = 0;
            for (int c = 0; c < k; c++) {
                double p = (double)x[(size_t)t * k + c] * w[(size_t)r * k + c];
                s += absolute ? fabs(p) : p;
            }
            y[(size_t)t * n + r] = (float)s;
        }
}

/* ||a - b|| / ||b|| over n values. */
static inline double tq_rel_error(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* The product by its definition, from the dequantized activations and
 * weights (both in the layer's channel order): exact (m, n), and scale
 * (m, n) = |x| |w|^T, the size of the terms, for rounding tolerances. */
static inline void tq_product_definition(const q_linear *layer, const q_act *act, int m,
                                         float *exact, float *scale)
{
    int n = q_linear_rows(layer), k = q_linear_cols(layer);
    const int *perm = q_linear_perm(layer);
    float *xd = util_xmalloc((size_t)m * k * sizeof *xd);
    float *wd = util_xmalloc((size_t)n * k * sizeof *wd),
          *wdp = util_xmalloc((size_t)n * k * sizeof *wdp);
    q_act_dequantize(act, m, xd);
    q_linear_dequantize(layer, wd);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++)
            wdp[(size_t)r * k + j] = wd[(size_t)r * k + (perm ? perm[j] : j)];
    tq_matmul(xd, wdp, m, n, k, false, exact);
    tq_matmul(xd, wdp, m, n, k, true, scale);
    free(xd), free(wd), free(wdp);
}

/* Whether the CPU runs `kernel`; where it does not, says once per test
 * program that the kernel's checks are skipped, and why. */
static inline bool tq_kernel_runs_here(enum q_kernel kernel)
{
    static bool said[Q_KERNEL_COUNT];
    if (q_kernel_available(kernel)) return true;
    if (!said[kernel]) {
        said[kernel] = true;
        fprintf(stderr, "skipped: the %s kernel's checks (this CPU has: %s)\n",
                q_kernel_name(kernel), util_cpu_flags_string());
    }
    return false;
}

/* A W4A4 format with the given group size and outliers, default clipping. */
static inline struct q_format tq_w4a4(int group_size, int n_outlier)
{
    struct q_format f = q_format_default(Q_W4A4);
    f.group_size = group_size;
    f.n_outlier = n_outlier;
    return f;
}

#endif

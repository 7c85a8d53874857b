/*
 * calib.c: Atom's calibration statistics of one layer's input, and the
 * outlier channel order they imply.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

struct atom_calib {
    int k;
    long long tokens;
    double *sum_square; /* k: sums in double, calibration sees millions of tokens */
    float *mean_square; /* k, kept current */
    float *hessian;     /* k x k: X^T X / tokens, both triangles, kept current; or NULL */
};

atom_calib *atom_calib_create(int k, bool with_hessian)
{
    UTIL_CHECK(k >= 1);
    atom_calib *calib = util_xcalloc(1, sizeof *calib);
    calib->k = k;
    calib->sum_square = util_xcalloc((size_t)k, sizeof *calib->sum_square);
    calib->mean_square = util_xcalloc((size_t)k, sizeof *calib->mean_square);
    if (with_hessian) calib->hessian = util_aligned_alloc((size_t)k * k * sizeof(float));
    return calib;
}

void atom_calib_free(atom_calib *calib)
{
    if (!calib) return;
    free(calib->sum_square);
    free(calib->mean_square);
    util_aligned_free(calib->hessian);
    free(calib);
}

void atom_calib_add(atom_calib *calib, const float *x, int m)
{
    UTIL_CHECK(calib && x && m >= 0);
    if (m == 0) return;
    int k = calib->k;
    for (int t = 0; t < m; t++)
        for (int j = 0; j < k; j++) {
            double v = x[(size_t)t * k + j];
            calib->sum_square[j] += v * v;
        }
    long long before = calib->tokens;
    calib->tokens += m;
    for (int j = 0; j < k; j++)
        calib->mean_square[j] = (float)(calib->sum_square[j] / (double)calib->tokens);
    if (!calib->hessian) return;
    /* Running mean: H = (before H + X^T X) / tokens, upper triangle by ssyrk. */
    float *h = calib->hessian;
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, k, m, (float)(1.0 / (double)calib->tokens),
                x, k, (float)((double)before / (double)calib->tokens), h, k);
    for (int i = 0; i < k; i++)
        for (int j = i + 1; j < k; j++) h[(size_t)j * k + i] = h[(size_t)i * k + j];
}

const float *atom_calib_mean_square(const atom_calib *calib)
{
    return calib->mean_square;
}

const float *atom_calib_hessian(const atom_calib *calib)
{
    return calib->hessian;
}

long long atom_calib_tokens(const atom_calib *calib)
{
    return calib->tokens;
}

/* ------------------------------------------------------------- outliers */

struct ranked {
    float value;
    int channel;
};

/* Increasing mean square, NaN last (a broken channel is no normal one),
 * ties by channel so that the order never depends on the sort. */
static int compare_ranked(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    bool na = isnan(a->value), nb = isnan(b->value);
    if (na != nb) return na ? 1 : -1;
    if (!na && a->value != b->value) return a->value < b->value ? -1 : 1;
    return (a->channel > b->channel) - (a->channel < b->channel);
}

void atom_outlier_permutation(const float *mean_square, int k, int n_outlier, int *perm)
{
    UTIL_CHECK(mean_square && perm && k >= 1 && n_outlier >= 0 && n_outlier <= k);
    struct ranked *rank = util_xmalloc((size_t)k * sizeof *rank);
    bool *is_outlier = util_xcalloc((size_t)k, sizeof *is_outlier);
    for (int j = 0; j < k; j++) rank[j] = (struct ranked){mean_square[j], j};
    qsort(rank, (size_t)k, sizeof *rank, compare_ranked);
    for (int i = k - n_outlier; i < k; i++) is_outlier[rank[i].channel] = true;
    int pos = 0;
    for (int j = 0; j < k; j++)
        if (!is_outlier[j]) perm[pos++] = j;
    for (int i = k - n_outlier; i < k; i++) perm[pos++] = rank[i].channel;
    free(rank);
    free(is_outlier);
}

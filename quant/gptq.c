/*
 * gptq.c: GPTQ (Frantar et al. 2022) for the weights of one layer, the way
 * Atom uses it: columns in the layer's channel order (int4 groups first,
 * int8 outlier channels last), each column rounded in turn and its error
 * spread over the columns not yet rounded, weighted by the inverse Hessian
 * of the layer's input. The outlier columns come last, so they absorb the
 * int4 columns' error before they are rounded to int8 themselves.
 *
 * Blocks of GPTQ_BLOCK columns get the updates at once (the "lazy batch"
 * of the paper) through one sgemm; a block never crosses the start of a
 * group, so a group's scales are taken from columns that are up to date.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

#define GPTQ_BLOCK 128
/* Extra damping tried, each 10x the last, when the Cholesky fails. */
#define GPTQ_DAMP_RETRIES 3

/* U with H^-1 = U^T U (upper triangle, lower zeroed) from the damped H, as
 * GPTQ's reference does it: Cholesky, inverse, Cholesky again. Returns
 * false when H is not positive definite. */
static bool inverse_cholesky(const float *h, int k, float damp, float *u)
{
    double mean_diag = 0;
    for (int j = 0; j < k; j++) mean_diag += h[(size_t)j * k + j];
    mean_diag /= k;
    memcpy(u, h, (size_t)k * k * sizeof *u);
    for (int j = 0; j < k; j++) u[(size_t)j * k + j] += (float)(damp * mean_diag);
    if (LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', k, u, k) != 0) return false;
    if (LAPACKE_spotri(LAPACK_ROW_MAJOR, 'U', k, u, k) != 0) return false;
    if (LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'U', k, u, k) != 0) return false;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < i; j++) u[(size_t)i * k + j] = 0.0f;
    for (int j = 0; j < k; j++)
        if (!(u[(size_t)j * k + j] > 0.0f)) return false;
    return true;
}

/* The group of column i, and the end of the block that starts there:
 * GPTQ_BLOCK columns or the end of the group, whichever comes first. */
static int block_at(const struct q_layout *lay, int i1, int *end)
{
    int g = 0;
    while (g + 1 < lay->n_groups && lay->groups[g + 1].start <= i1) g++;
    int group_end = lay->groups[g].start + lay->groups[g].len;
    *end = i1 + GPTQ_BLOCK < group_end ? i1 + GPTQ_BLOCK : group_end;
    return g;
}

/* Rounds columns [i1, i2) of group g in one row w (k values, updated in
 * place), with the block's errors into err (i2 - i1 values). The group's
 * scale is taken when its first column comes. */
static void gptq_row_block(const struct q_layout *lay, float weight_clip, const float *u, int g,
                           int i1, int i2, float *w, int8_t *q, float *scales, float *err)
{
    const struct q_group *grp = &lay->groups[g];
    if (i1 == grp->start) {
        float absmax = 0.0f;
        for (int c = 0; c < grp->len; c++) absmax = fmaxf(absmax, fabsf(w[grp->start + c]));
        scales[g] = q_group_scale(absmax, grp->bits, weight_clip);
    }
    float inv = scales[g] > 0.0f ? 1.0f / scales[g] : 0.0f;
    int qmax = q_group_qmax(grp->bits);
    for (int i = i1; i < i2; i++) {
        q[i] = (int8_t)q_round_clamp(w[i] * inv, qmax);
        const float *ui = u + (size_t)i * lay->k;
        float e = (w[i] - (float)q[i] * scales[g]) / ui[i];
        err[i - i1] = e;
        for (int j = i + 1; j < i2; j++) w[j] -= e * ui[j];
    }
}

q_linear *q_linear_quantize_gptq(const float *w, int n, int k, const struct q_format *format,
                                 const int *perm, const float *hessian, float damp)
{
    UTIL_CHECK(w && hessian && damp >= 0.0f);
    struct q_linear *layer = q_linear_alloc(n, k, format, perm);
    const struct q_layout *lay = &layer->layout;

    /* W and H in the layer's channel order; a channel never seen in
     * calibration (zero diagonal) gets weight 0, as in GPTQ. */
    float *wp = util_xmalloc((size_t)n * k * sizeof *wp);
    float *h = util_xmalloc((size_t)k * k * sizeof *h);
    for (int i = 0; i < k; i++) {
        int pi = perm ? perm[i] : i;
        for (int j = 0; j < k; j++)
            h[(size_t)i * k + j] = hessian[(size_t)pi * k + (perm ? perm[j] : j)];
    }
    for (int r = 0; r < n; r++)
        for (int j = 0; j < k; j++) wp[(size_t)r * k + j] = w[(size_t)r * k + (perm ? perm[j] : j)];
    for (int j = 0; j < k; j++) {
        if (h[(size_t)j * k + j] != 0.0f) continue;
        h[(size_t)j * k + j] = 1.0f;
        for (int r = 0; r < n; r++) wp[(size_t)r * k + j] = 0.0f;
    }

    float *u = util_xmalloc((size_t)k * k * sizeof *u);
    bool ok = false;
    for (int attempt = 0; attempt <= GPTQ_DAMP_RETRIES && !ok; attempt++) {
        float d = damp;
        for (int a = 0; a < attempt; a++) d = d > 0.0f ? d * 10.0f : 0.01f;
        ok = inverse_cholesky(h, k, d, u);
        if (!ok) LOG_DEBUG("gptq: Cholesky failed with damping %g", (double)d);
    }
    free(h);
    if (!ok) {
        LOG_WARN("gptq: the Hessian is not positive definite even with extra damping");
        free(wp);
        free(u);
        q_linear_free(layer);
        return NULL;
    }

    int8_t *q = util_xmalloc((size_t)n * k);
    float *scales = util_xmalloc((size_t)n * lay->n_groups * sizeof *scales);
    float *err = util_xmalloc((size_t)n * GPTQ_BLOCK * sizeof *err);
    for (int i1 = 0, i2; i1 < k; i1 = i2) {
        int g = block_at(lay, i1, &i2), width = i2 - i1;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++)
            gptq_row_block(lay, format->weight_clip, u, g, i1, i2, wp + (size_t)r * k,
                           q + (size_t)r * k, scales + (size_t)r * lay->n_groups,
                           err + (size_t)r * width);
        if (i2 < k)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, k - i2, width, -1.0f, err,
                        width, u + (size_t)i1 * k + i2, k, 1.0f, wp + i2, k);
    }
    for (int r = 0; r < n; r++)
        q_linear_set_row(layer, r, q + (size_t)r * k, scales + (size_t)r * lay->n_groups);
    free(wp);
    free(u);
    free(q);
    free(scales);
    free(err);
    return layer;
}

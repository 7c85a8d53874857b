/*
 * act.c: dynamic activation quantization, per token per group, fused with
 * what comes before it in the model (channel reorder, RMSNorm, SwiGLU).
 *
 * Each token is first brought into the layer's channel order as floats (one
 * row of per-thread scratch), then every group is quantized from its
 * largest magnitude. The loops are written for the compiler to vectorise
 * (omp simd); the exponential of SiLU is a polynomial for the same reason.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

/* Tokens below which quantization stays on one thread. */
#define ACT_PARALLEL_MIN_TOKENS 4

q_act *q_act_create(const struct q_format *format, int k, int max_m)
{
    UTIL_CHECK(q_format_check(format, k) == 0);
    UTIL_CHECK(max_m >= 1);
    q_act *act = util_xcalloc(1, sizeof *act);
    act->format = *format;
    q_layout_init(&act->layout, format, k);
    act->k = k;
    act->max_m = max_m;
    act->rows = q_round_up(max_m, Q_ACT_ROW_ALIGN) + Q_ACT_ROW_ALIGN;
    act->values = util_aligned_alloc((size_t)act->rows * (size_t)act->layout.act_row_bytes);
    act->scales = util_xcalloc((size_t)max_m * (size_t)act->layout.n_groups, sizeof(float));
    act->sums = util_xcalloc((size_t)max_m * (size_t)act->layout.n_groups, sizeof(int32_t));
    return act;
}

void q_act_free(q_act *act)
{
    if (!act) return;
    q_layout_free(&act->layout);
    util_aligned_free(act->values);
    free(act->scales);
    free(act->sums);
    free(act);
}

/* ------------------------------------------------------------ per group */

/* Quantizes the floats of one token (layer order) into row t of act. The
 * padding between groups was zeroed at creation and is never written. */
static void act_quantize_token(q_act *act, int t, const float *h)
{
    const struct q_layout *lay = &act->layout;
    int8_t *row = act->values + (size_t)t * (size_t)lay->act_row_bytes;
    for (int g = 0; g < lay->n_groups; g++) {
        const struct q_group *grp = &lay->groups[g];
        const float *src = h + grp->start;
        int8_t *dst = row + grp->act_offset;
        float absmax = 0.0f;
#pragma omp simd reduction(max : absmax)
        for (int c = 0; c < grp->len; c++) {
            float a = fabsf(src[c]);
            absmax = a > absmax ? a : absmax;
        }
        float scale = q_group_scale(absmax, grp->bits, act->format.act_clip);
        float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        float qmax = (float)q_group_qmax(grp->bits);
        int sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < grp->len; c++) {
            float v = src[c] * inv;
            v = v >= -qmax ? v : -qmax; /* NaN lands here too */
            v = v <= qmax ? v : qmax;
            int q = (int)rintf(v);
            dst[c] = (int8_t)q;
            sum += q;
        }
        act->scales[(size_t)t * lay->n_groups + g] = scale;
        act->sums[(size_t)t * lay->n_groups + g] = sum;
    }
}

/* --------------------------------------------------------- fused inputs */

enum act_source { ACT_PLAIN, ACT_RMSNORM, ACT_SWIGLU };

struct act_input {
    enum act_source source;
    const float *x, *norm_weight, *gate, *up; /* (m, k) rows; norm_weight k */
    float eps;
    const int *perm;
};

/* exp(x) to about 2e-7 relative, branch-free so that it vectorises:
 * 2^n * e^r with |r| <= ln2/2 and a degree-6 Taylor polynomial. */
static inline float act_expf(float x)
{
    x = x >= -87.0f ? x : -87.0f;
    x = x <= 88.0f ? x : 88.0f;
    float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693145751953125f, x);
    r = fmaf(n, -1.42860682030941723212e-6f, r);
    float p = 1.0f / 720;
    p = fmaf(p, r, 1.0f / 120);
    p = fmaf(p, r, 1.0f / 24);
    p = fmaf(p, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union {
        uint32_t u;
        float f;
    } two_n = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * two_n.f;
}

/* Token t of the input, in the layer's channel order, into h (k floats). */
static void act_load_token(const struct act_input *in, int k, int t, float *h)
{
    const int *perm = in->perm;
    if (in->source == ACT_SWIGLU) {
        const float *gate = in->gate + (size_t)t * k, *up = in->up + (size_t)t * k;
#pragma omp simd
        for (int j = 0; j < k; j++) h[j] = gate[j] / (1.0f + act_expf(-gate[j])) * up[j];
        return;
    }
    const float *x = in->x + (size_t)t * k;
    float mul = 1.0f;
    if (in->source == ACT_RMSNORM) {
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int j = 0; j < k; j++) ss += x[j] * x[j];
        mul = 1.0f / sqrtf(ss / (float)k + in->eps);
    }
    const float *w = in->norm_weight;
    if (perm && w)
        for (int j = 0; j < k; j++) h[j] = x[perm[j]] * mul * w[perm[j]];
    else if (perm)
        for (int j = 0; j < k; j++) h[j] = x[perm[j]];
    else if (w)
#pragma omp simd
        for (int j = 0; j < k; j++) h[j] = x[j] * mul * w[j];
    else
        memcpy(h, x, (size_t)k * sizeof *h);
}

static void act_quantize(q_act *act, const struct act_input *in, int m)
{
    UTIL_CHECK(act && m >= 1 && m <= act->max_m);
    int k = act->k;
#pragma omp parallel if (m >= ACT_PARALLEL_MIN_TOKENS && !omp_in_parallel())
    {
        float *h = util_xmalloc((size_t)k * sizeof *h);
#pragma omp for schedule(static)
        for (int t = 0; t < m; t++) {
            act_load_token(in, k, t, h);
            act_quantize_token(act, t, h);
        }
        free(h);
    }
    act->m = m;
}

void q_act_quantize(q_act *act, const float *x, int m, const int *perm)
{
    UTIL_CHECK(x);
    struct act_input in = {.source = ACT_PLAIN, .x = x, .perm = perm};
    act_quantize(act, &in, m);
    act->perm_hash = q_perm_hash(perm, act->k);
    act->perm_known = true;
}

void q_act_quantize_rmsnorm(q_act *act, const float *x, const float *norm_weight, float eps,
                            int m, const int *perm)
{
    UTIL_CHECK(x && norm_weight);
    struct act_input in = {
        .source = ACT_RMSNORM, .x = x, .norm_weight = norm_weight, .eps = eps, .perm = perm};
    act_quantize(act, &in, m);
    act->perm_hash = q_perm_hash(perm, act->k);
    act->perm_known = true;
}

void q_act_quantize_swiglu(q_act *act, const float *gate, const float *up, int m)
{
    UTIL_CHECK(gate && up);
    struct act_input in = {.source = ACT_SWIGLU, .gate = gate, .up = up};
    act_quantize(act, &in, m);
    act->perm_known = false;
}

void q_act_dequantize(const q_act *act, int m, float *x)
{
    UTIL_CHECK(act && x && m >= 0 && m <= act->m);
    const struct q_layout *lay = &act->layout;
    for (int t = 0; t < m; t++) {
        const int8_t *row = q_act_row(act, t);
        for (int g = 0; g < lay->n_groups; g++) {
            const struct q_group *grp = &lay->groups[g];
            float scale = q_act_scale(act, t, g);
            for (int c = 0; c < grp->len; c++)
                x[(size_t)t * act->k + grp->start + c] = (float)row[grp->act_offset + c] * scale;
        }
    }
}

/*
 * act.c: dynamic activation quantization, per token per group, fused with
 * what comes before it in the model (channel reorder, RMSNorm, SwiGLU).
 *
 * Each token is first brought into the layer's channel order as floats (one
 * row of per-thread scratch), then every group is quantized from its
 * largest magnitude. AVX2 (the build's baseline), 8 channels at a time:
 * every width is a multiple of 16; SiLU's exponential is a polynomial.
 */
#include "quant/quant_internal.h"
#include "util/util.h"
#include "util/vec.h"

#include <immintrin.h>
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

/* Quantizes the floats of one token (layer order) into row t of act, 16
 * channels at a time (every group length is a multiple of 16). The
 * padding between groups was zeroed at creation and is never written. */
static void act_quantize_token(q_act *act, int t, const float *h)
{
    const struct q_layout *lay = &act->layout;
    int8_t *row = act->values + (size_t)t * (size_t)lay->act_row_bytes;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int g = 0; g < lay->n_groups; g++) {
        const struct q_group *grp = &lay->groups[g];
        const float *src = h + grp->start;
        int8_t *dst = row + grp->act_offset;
        __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
        for (int c = 0; c < grp->len; c += 16) {
            m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + c)));
            m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + c + 8)));
        }
        float scale =
            q_group_scale(util_hmax8(_mm256_max_ps(m0, m1)), grp->a_bits, act->format.act_clip);
        float qmax = (float)q_group_qmax(grp->a_bits);
        const __m256 inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
        const __m256 lo = _mm256_set1_ps(-qmax), hi = _mm256_set1_ps(qmax);
        __m256i sum = _mm256_setzero_si256();
        for (int c = 0; c < grp->len; c += 16) {
            /* max(v, lo) gives lo for NaN; rounding is to nearest even, as rintf */
            __m256 v0 =
                _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(src + c), inv), lo), hi);
            __m256 v1 = _mm256_min_ps(
                _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(src + c + 8), inv), lo), hi);
            __m256i q0 = _mm256_cvtps_epi32(v0), q1 = _mm256_cvtps_epi32(v1);
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(q0, q1));
            __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_setzero_si256());
            bytes = _mm256_permutevar8x32_epi32(bytes, order);
            _mm_storeu_si128((__m128i *)(dst + c), _mm256_castsi256_si128(bytes));
        }
        act->scales[(size_t)t * lay->n_groups + g] = scale;
        act->sums[(size_t)t * lay->n_groups + g] = util_hsum8_epi32(sum);
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

/* Token t of the input in the layer's channel order: into h (k floats),
 * or, when nothing needs computing, a pointer into the input itself. */
static const float *act_load_token(const struct act_input *in, int k, int t, float *h)
{
    const float *x = in->x + (size_t)t * k;
    const int *perm = in->perm;
    if (in->source == ACT_SWIGLU) {
        const float *gate = in->gate + (size_t)t * k, *up = in->up + (size_t)t * k;
        const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
        for (int j = 0; j < k; j += 8) {
            __m256 g = _mm256_loadu_ps(gate + j);
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, util_exp8(_mm256_xor_ps(g, sign))));
            _mm256_storeu_ps(h + j, _mm256_mul_ps(silu, _mm256_loadu_ps(up + j)));
        }
        return h;
    }
    if (in->source == ACT_PLAIN) {
        if (!perm) return x;
        for (int j = 0; j < k; j += 8)
            _mm256_storeu_ps(
                h + j, _mm256_i32gather_ps(x, _mm256_loadu_si256((const __m256i *)(perm + j)), 4));
        return h;
    }
    __m256 ss0 = _mm256_setzero_ps(), ss1 = _mm256_setzero_ps();
    for (int j = 0; j < k; j += 16) {
        __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + 8);
        ss0 = _mm256_fmadd_ps(a, a, ss0);
        ss1 = _mm256_fmadd_ps(b, b, ss1);
    }
    __m256 s = _mm256_add_ps(ss0, ss1);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    const __m256 mul = _mm256_set1_ps(1.0f / sqrtf(_mm_cvtss_f32(s4) / (float)k + in->eps));
    const float *w = in->norm_weight;
    for (int j = 0; j < k; j += 8) {
        __m256 xv, wv;
        if (perm) {
            __m256i idx = _mm256_loadu_si256((const __m256i *)(perm + j));
            xv = _mm256_i32gather_ps(x, idx, 4);
            wv = _mm256_i32gather_ps(w, idx, 4);
        } else {
            xv = _mm256_loadu_ps(x + j);
            wv = _mm256_loadu_ps(w + j);
        }
        _mm256_storeu_ps(h + j, _mm256_mul_ps(_mm256_mul_ps(xv, mul), wv));
    }
    return h;
}

/* Tokens [t_begin, t_end) of m on the calling thread. The part holding
 * token 0 records what the act now holds. */
static void act_quantize_part(q_act *act, const struct act_input *in, int m, int t_begin, int t_end,
                              float *h)
{
    for (int t = t_begin; t < t_end; t++)
        act_quantize_token(act, t, act_load_token(in, act->k, t, h));
    if (t_begin == 0 && t_end > 0) {
        act->m = m;
        act->perm_known = in->source != ACT_SWIGLU;
        if (act->perm_known) act->perm_hash = q_perm_hash(in->perm, act->k);
    }
}

static void act_quantize(q_act *act, const struct act_input *in, int m)
{
    UTIL_CHECK(act && m >= 1 && m <= act->max_m);
#pragma omp parallel if (m >= ACT_PARALLEL_MIN_TOKENS && !omp_in_parallel())
    {
        float *h = util_xmalloc((size_t)act->k * sizeof *h);
        int t0, t1;
        util_split(m, omp_get_thread_num(), omp_get_num_threads(), &t0, &t1);
        act_quantize_part(act, in, m, t0, t1, h);
        free(h);
    }
}

void q_act_quantize(q_act *act, const float *x, int m, const int *perm)
{
    UTIL_CHECK(x);
    struct act_input in = {.source = ACT_PLAIN, .x = x, .perm = perm};
    act_quantize(act, &in, m);
}

void q_act_quantize_rmsnorm(q_act *act, const float *x, const float *norm_weight, float eps, int m,
                            const int *perm)
{
    UTIL_CHECK(x && norm_weight);
    struct act_input in = {
        .source = ACT_RMSNORM, .x = x, .norm_weight = norm_weight, .eps = eps, .perm = perm};
    act_quantize(act, &in, m);
}

void q_act_quantize_swiglu(q_act *act, const float *gate, const float *up, int m)
{
    UTIL_CHECK(gate && up);
    struct act_input in = {.source = ACT_SWIGLU, .gate = gate, .up = up};
    act_quantize(act, &in, m);
}

/* The row-range forms, for callers that split tokens over their own threads. */
static void act_quantize_rows(q_act *act, const struct act_input *in, int m, int t_begin, int t_end)
{
    UTIL_CHECK(act && m >= 1 && m <= act->max_m && 0 <= t_begin && t_begin <= t_end && t_end <= m);
    if (t_begin == t_end) return;
    float *h = util_xmalloc((size_t)act->k * sizeof *h);
    act_quantize_part(act, in, m, t_begin, t_end, h);
    free(h);
}

void q_act_quantize_rows(q_act *act, const float *x, int m, int t_begin, int t_end, const int *perm)
{
    UTIL_CHECK(x);
    struct act_input in = {.source = ACT_PLAIN, .x = x, .perm = perm};
    act_quantize_rows(act, &in, m, t_begin, t_end);
}

void q_act_quantize_rmsnorm_rows(q_act *act, const float *x, const float *norm_weight, float eps,
                                 int m, int t_begin, int t_end, const int *perm)
{
    UTIL_CHECK(x && norm_weight);
    struct act_input in = {
        .source = ACT_RMSNORM, .x = x, .norm_weight = norm_weight, .eps = eps, .perm = perm};
    act_quantize_rows(act, &in, m, t_begin, t_end);
}

void q_act_quantize_swiglu_rows(q_act *act, const float *gate, const float *up, int m, int t_begin,
                                int t_end)
{
    UTIL_CHECK(gate && up);
    struct act_input in = {.source = ACT_SWIGLU, .gate = gate, .up = up};
    act_quantize_rows(act, &in, m, t_begin, t_end);
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

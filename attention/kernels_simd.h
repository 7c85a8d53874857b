/*
 * kernels_simd.h: the body of the SIMD attention kernels, written once over
 * a small vector interface and included by each instruction-set file
 * (kernels_avx2.c, kernels_avx512.c), which first defines:
 *
 *   vec, VEC_LANES (8 or 16), and static inline vec_zero, vec_set1,
 *   vec_load, vec_store, vec_add, vec_sub, vec_mul, vec_fmadd (a*b+c),
 *   vec_abs, vec_max, vec_min, vec_reduce_add, vec_reduce_add4 (four vectors' sums into
 *   out[0, 4)), vec_reduce_max_first (max of the first n
 *   lanes, n >= 1), vec_exp_first (exp of the first n lanes, 0 in the rest,
 *   for arguments <= 0), vec_load_f16, vec_load_i8 (VEC_LANES elements) and
 *   vec_load_i4 (elements [i0, i0 + VEC_LANES) of a packed INT4 row);
 *   SIMD_TABLE, the name of the attn_kernels it defines, and SIMD_NAME.
 *
 * The same arithmetic as kernels_scalar.c, reordered for registers: per
 * page, scores of 16 tokens at a time from K transposed (one channel of
 * VEC_LANES tokens per register, no horizontal sums), one softmax rescale
 * per page, and V accumulated channel chunk by channel chunk. Query rows go
 * in blocks of SIMD_ROWS so that each K and V load feeds several rows (the
 * query heads of one KV head). Quantized K/V are never expanded in memory:
 * per-token scales multiply the scores (K) or the probabilities (V), and
 * INT4 zero points add sum(q)*zero (K) or sum(p*zero) (V).
 */
#ifndef SIMD_TABLE
#error "kernels_simd.h is included by an instruction-set file that defines the vec interface"
#endif

#include <math.h>

#define SIMD_ROWS   4 /* query rows per block: the 4 heads of a GQA 8/2 group */
#define SIMD_INLINE static inline __attribute__((always_inline))

/* With `codes`, a quantized page's codes were already widened to floats
 * (simd_widen_codes) and sit where f32 values would: a plain load, the
 * same numbers the unpacking gives. */
SIMD_INLINE vec simd_load_key(enum attn_kv_type type, bool codes, const struct attn_block *b,
                              int page_size, int d, int t0)
{
    size_t at = (size_t)d * page_size + t0;
    if (codes) return vec_load((const float *)b->k + at);
    switch (type) {
    case ATTN_KV_F32:
        return vec_load((const float *)b->k + at);
    case ATTN_KV_F16:
        return vec_load_f16((const uint16_t *)b->k + at);
    case ATTN_KV_INT8:
        return vec_load_i8((const int8_t *)b->k + at);
    case ATTN_KV_INT4:
        return vec_load_i4((const uint8_t *)b->k + (size_t)d * (page_size / 2), t0);
    }
    return vec_zero();
}

SIMD_INLINE vec simd_load_value(enum attn_kv_type type, bool codes, const struct attn_block *b,
                                int head_dim, int t, int c0)
{
    size_t at = (size_t)t * head_dim + c0;
    if (codes) return vec_load((const float *)b->v + at);
    switch (type) {
    case ATTN_KV_F32:
        return vec_load((const float *)b->v + at);
    case ATTN_KV_F16:
        return vec_load_f16((const uint16_t *)b->v + at);
    case ATTN_KV_INT8:
        return vec_load_i8((const int8_t *)b->v + at);
    case ATTN_KV_INT4:
        return vec_load_i4((const uint8_t *)b->v + (size_t)t * (head_dim / 2), c0);
    }
    return vec_zero();
}

/* Scores of rows q[0, R) against tokens [0, tmax) of the page, into
 * s[r][t] (already scaled for quantized keys). */
SIMD_INLINE void simd_scores(enum attn_kv_type type, bool codes, const int R,
                             const struct attn_block *b, int head_dim, int page_size,
                             const float *const *q, int tmax, float s[][ATTN_MAX_PAGE_SIZE])
{
    /* sum(q) for the zero points, in vectors: a scalar chain of head_dim
     * dependent adds per row and page was a quarter of a prefill's INT4
     * attention */
    float qsum[SIMD_ROWS] = {0};
    if (type == ATTN_KV_INT4)
        for (int r = 0; r < R; r++) {
            vec s0 = vec_zero(), s1 = vec_zero();
            int d = 0;
            for (; d + 2 * VEC_LANES <= head_dim; d += 2 * VEC_LANES) {
                s0 = vec_add(s0, vec_load(q[r] + d));
                s1 = vec_add(s1, vec_load(q[r] + d + VEC_LANES));
            }
            if (d < head_dim) s0 = vec_add(s0, vec_load(q[r] + d));
            qsum[r] = vec_reduce_add(vec_add(s0, s1));
        }
    for (int t0 = 0; t0 < tmax; t0 += VEC_LANES) {
        /* two accumulators per row: even and odd channels, to hide latency */
        vec a0[SIMD_ROWS], a1[SIMD_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) a0[r] = a1[r] = vec_zero();
        for (int d = 0; d < head_dim; d += 2) {
            vec k0 = simd_load_key(type, codes, b, page_size, d, t0);
            vec k1 = simd_load_key(type, codes, b, page_size, d + 1, t0);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                a0[r] = vec_fmadd(vec_set1(q[r][d]), k0, a0[r]);
                a1[r] = vec_fmadd(vec_set1(q[r][d + 1]), k1, a1[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            vec x = vec_add(a0[r], a1[r]);
            if (type == ATTN_KV_INT8 || type == ATTN_KV_INT4)
                x = vec_mul(x, vec_load(b->k_scale + t0));
            if (type == ATTN_KV_INT4) x = vec_fmadd(vec_load(b->k_zero + t0), vec_set1(qsum[r]), x);
            vec_store(&s[r][t0], x);
        }
    }
}

/* Online-softmax step of one row over its first n <= tmax tokens: turns
 * s[0, tmax) into the weights of the V rows (0 past n), updates max and
 * sum, and returns the factor the row's old acc must be scaled by. For
 * INT4 *zsum gets sum(p * v_zero). */
SIMD_INLINE float simd_softmax(enum attn_kv_type type, const struct attn_block *b, int n, int tmax,
                               float *s, float *max, float *sum, float *zsum)
{
    float page_max = -INFINITY;
    for (int t0 = 0; t0 < n; t0 += VEC_LANES)
        page_max = attn_maxf(page_max, vec_reduce_max_first(vec_load(s + t0), n - t0));
    float old_max = *max, new_max = attn_maxf(old_max, page_max);
    float corr = 1.0f;
    if (new_max > old_max) {
        corr = expf(old_max - new_max);
        *max = new_max;
    }
    vec psum = vec_zero(), zs = vec_zero(), m = vec_set1(new_max);
    for (int t0 = 0; t0 < tmax; t0 += VEC_LANES) {
        vec p = vec_exp_first(vec_sub(vec_load(s + t0), m), n - t0);
        psum = vec_add(psum, p);
        if (type == ATTN_KV_INT4) zs = vec_fmadd(p, vec_load(b->v_zero + t0), zs);
        if (type == ATTN_KV_INT8 || type == ATTN_KV_INT4) p = vec_mul(p, vec_load(b->v_scale + t0));
        vec_store(s + t0, p);
    }
    *sum = *sum * corr + vec_reduce_add(psum);
    *zsum = vec_reduce_add(zs);
    return corr;
}

/* Rows [r0, r0 + R) of the rows against the page: R is a constant (1..4),
 * so that a decode step of one query head per KV head computes one row,
 * not four. */
SIMD_INLINE void simd_block(enum attn_kv_type type, bool codes, const int R,
                            const struct attn_block *b, int head_dim, int page_size,
                            const struct attn_rows *rows, const int *visible, int r0)
{
    float s[SIMD_ROWS][ATTN_MAX_PAGE_SIZE] __attribute__((aligned(64)));
    int vis[SIMD_ROWS], tmax = 0;
    const float *q[SIMD_ROWS];
    for (int r = 0; r < R; r++) {
        int v = visible[r0 + r];
        vis[r] = v < 0 ? 0 : v > page_size ? page_size : v;
        if (vis[r] > tmax) tmax = vis[r];
        q[r] = rows->q + (size_t)(r0 + r) * head_dim;
    }
    if (tmax == 0) return;
    int tpad = (tmax + VEC_LANES - 1) / VEC_LANES * VEC_LANES;

    simd_scores(type, codes, R, b, head_dim, page_size, q, tmax, s);

    float corr[SIMD_ROWS], zsum[SIMD_ROWS];
    for (int r = 0; r < R; r++) {
        corr[r] = 1.0f, zsum[r] = 0;
        if (vis[r] == 0) {
            for (int t = 0; t < tpad; t++) s[r][t] = 0;
            continue;
        }
        corr[r] = simd_softmax(type, b, vis[r], tmax, s[r], &rows->max[r0 + r], &rows->sum[r0 + r],
                               &zsum[r]);
    }

    int c0 = 0;
    /* Two blocks of channels at once: each weight broadcast feeds two FMAs,
     * and the two blocks' accumulators hide the latency. */
    for (; c0 + 2 * VEC_LANES <= head_dim; c0 += 2 * VEC_LANES) {
        vec o0[SIMD_ROWS], o1[SIMD_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) o0[r] = o1[r] = vec_zero();
        for (int t = 0; t < tmax; t++) {
            vec v0 = simd_load_value(type, codes, b, head_dim, t, c0);
            vec v1 = simd_load_value(type, codes, b, head_dim, t, c0 + VEC_LANES);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                vec p = vec_set1(s[r][t]);
                o0[r] = vec_fmadd(p, v0, o0[r]);
                o1[r] = vec_fmadd(p, v1, o1[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (vis[r] == 0) continue;
            float *acc = rows->acc + (size_t)(r0 + r) * head_dim + c0;
            vec x0 = o0[r], x1 = o1[r];
            if (type == ATTN_KV_INT4) {
                x0 = vec_add(x0, vec_set1(zsum[r]));
                x1 = vec_add(x1, vec_set1(zsum[r]));
            }
            vec_store(acc, vec_fmadd(vec_load(acc), vec_set1(corr[r]), x0));
            vec_store(acc + VEC_LANES, vec_fmadd(vec_load(acc + VEC_LANES), vec_set1(corr[r]), x1));
        }
    }
    for (; c0 < head_dim; c0 += VEC_LANES) {
        /* one block: even and odd tokens in separate accumulators */
        vec o0[SIMD_ROWS], o1[SIMD_ROWS];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) o0[r] = o1[r] = vec_zero();
        int t = 0;
        for (; t + 1 < tmax; t += 2) {
            vec v0 = simd_load_value(type, codes, b, head_dim, t, c0);
            vec v1 = simd_load_value(type, codes, b, head_dim, t + 1, c0);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                o0[r] = vec_fmadd(vec_set1(s[r][t]), v0, o0[r]);
                o1[r] = vec_fmadd(vec_set1(s[r][t + 1]), v1, o1[r]);
            }
        }
        if (t < tmax) {
            vec v0 = simd_load_value(type, codes, b, head_dim, t, c0);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) o0[r] = vec_fmadd(vec_set1(s[r][t]), v0, o0[r]);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            if (vis[r] == 0) continue;
            float *acc = rows->acc + (size_t)(r0 + r) * head_dim + c0;
            vec o = vec_add(o0[r], o1[r]);
            if (type == ATTN_KV_INT4) o = vec_add(o, vec_set1(zsum[r]));
            vec_store(acc, vec_fmadd(vec_load(acc), vec_set1(corr[r]), o));
        }
    }
}

/* A quantized page's codes as floats, in the f32 layouts (K transposed,
 * V by token), into kc and vc: once per page for all the row blocks that
 * read it, instead of unpacking it again for each. */
SIMD_INLINE void simd_widen_codes(enum attn_kv_type type, const struct attn_block *b, int head_dim,
                                  int page_size, float *kc, float *vc)
{
    for (int d = 0; d < head_dim; d++)
        for (int t0 = 0; t0 < page_size; t0 += VEC_LANES)
            vec_store(kc + (size_t)d * page_size + t0,
                      simd_load_key(type, false, b, page_size, d, t0));
    for (int t = 0; t < page_size; t++)
        for (int c0 = 0; c0 < head_dim; c0 += VEC_LANES)
            vec_store(vc + (size_t)t * head_dim + c0,
                      simd_load_value(type, false, b, head_dim, t, c0));
}

SIMD_INLINE void simd_page(enum attn_kv_type type, const struct attn_block *b, int head_dim,
                           int page_size, const struct attn_rows *rows, const int *visible)
{
    bool quantized = type == ATTN_KV_INT8 || type == ATTN_KV_INT4;
    bool codes = quantized && rows->n > SIMD_ROWS && rows->codes;
    struct attn_block widened = *b;
    if (codes) {
        simd_widen_codes(type, b, head_dim, page_size, rows->codes,
                         rows->codes + (size_t)head_dim * page_size);
        widened.k = rows->codes;
        widened.v = rows->codes + (size_t)head_dim * page_size;
    }
    for (int r0 = 0; r0 < rows->n; r0 += SIMD_ROWS) {
        switch (rows->n - r0 < SIMD_ROWS ? rows->n - r0 : SIMD_ROWS) {
        case 1:
            simd_block(type, codes, 1, &widened, head_dim, page_size, rows, visible, r0);
            break;
        case 2:
            simd_block(type, codes, 2, &widened, head_dim, page_size, rows, visible, r0);
            break;
        case 3:
            simd_block(type, codes, 3, &widened, head_dim, page_size, rows, visible, r0);
            break;
        default:
            simd_block(type, codes, 4, &widened, head_dim, page_size, rows, visible, r0);
            break;
        }
    }
}

#define SIMD_PAGE_FN(NAME, TYPE)                                                                   \
    static void NAME(const struct attn_block *block, int head_dim, int page_size,                  \
                     const struct attn_rows *rows, const int *visible)                             \
    {                                                                                              \
        simd_page(TYPE, block, head_dim, page_size, rows, visible);                                \
    }
SIMD_PAGE_FN(simd_page_f32, ATTN_KV_F32)
SIMD_PAGE_FN(simd_page_f16, ATTN_KV_F16)
SIMD_PAGE_FN(simd_page_int8, ATTN_KV_INT8)
SIMD_PAGE_FN(simd_page_int4, ATTN_KV_INT4)

/*
 * Quest bound. Rather than q.(M+m)/2 + |q|.(M-m)/2, the same bound as
 * q+.M + q-.m with q+ = max(q, 0) and q- = min(q, 0), split once per call:
 * two FMAs per channel and query, no add, sub or abs per page, and each
 * term is exactly the max(q*M, q*m) of the definition (the other factor is
 * an exact 0). A bound past f16 range (an infinite M or m) can come out
 * NaN here, which selection treats as +inf: such a page is always read.
 * Bounds of later pages are prefetched: scattered pages do not stream.
 */
SIMD_INLINE void simd_split_signs(const float *q, int head_dim, float *pos, float *neg)
{
    for (int d = 0; d < head_dim; d += VEC_LANES) {
        vec x = vec_load(q + d);
        vec_store(pos + d, vec_max(x, vec_zero()));
        vec_store(neg + d, vec_min(x, vec_zero()));
    }
}

static void simd_bound(const struct attn_bounds_view *view, int n_pages, int head_dim,
                       const float *q, int n_q, float *out)
{
    const int ahead = 8;
    float qp[4][ATTN_MAX_HEAD_DIM] __attribute__((aligned(64)));
    float qn[4][ATTN_MAX_HEAD_DIM] __attribute__((aligned(64)));
    for (int j0 = 0; j0 < n_q;) {
        /* Four queries at a time (a GQA 8/2 group): the bounds convert once
         * and one horizontal reduction gives the four sums. */
        int block = n_q - j0 >= 4 ? 4 : 1;
        for (int k = 0; k < block; k++)
            simd_split_signs(q + (size_t)(j0 + k) * head_dim, head_dim, qp[k], qn[k]);
        for (int i = 0; i < n_pages; i++) {
            if (i + ahead < n_pages)
                attn_prefetch(view->base + (size_t)view->pages[i + ahead] * view->stride,
                              view->kmin_offset + (size_t)head_dim * sizeof(uint16_t));
            const unsigned char *at = view->base + (size_t)view->pages[i] * view->stride;
            const uint16_t *kmax = (const uint16_t *)at;
            const uint16_t *kmin = (const uint16_t *)(at + view->kmin_offset);
            float *o = out + (size_t)i * n_q + j0;
            if (block == 4) {
                vec a[4];
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) a[k] = vec_zero();
                for (int d = 0; d < head_dim; d += VEC_LANES) {
                    vec hi = vec_load_f16(kmax + d), lo = vec_load_f16(kmin + d);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; k++)
                        a[k] = vec_fmadd(hi, vec_load(qp[k] + d),
                                         vec_fmadd(lo, vec_load(qn[k] + d), a[k]));
                }
                vec_reduce_add4(a[0], a[1], a[2], a[3], o);
            } else {
                vec a = vec_zero(), b = vec_zero();
                for (int d = 0; d < head_dim; d += VEC_LANES) {
                    a = vec_fmadd(vec_load_f16(kmax + d), vec_load(qp[0] + d), a);
                    b = vec_fmadd(vec_load_f16(kmin + d), vec_load(qn[0] + d), b);
                }
                o[0] = vec_reduce_add(vec_add(a, b));
            }
        }
        j0 += block;
    }
}

const struct attn_kernels SIMD_TABLE = {
    .name = SIMD_NAME,
    .page = {simd_page_f32, simd_page_f16, simd_page_int8, simd_page_int4},
    .bound = simd_bound,
};

/* kernels_avx512.c: AVX-512 versions of the crossbar column sums (VNNI for
 * integer levels) and of the normal random stream. Same results as the
 * scalar reference (exact for int8; float sums up to rounding order). */
#include "pim/pim_internal.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------- column sums */

/* nt_blk (1..4) vectors share each load of levels; inlined with a constant. */
static inline __attribute__((always_inline)) void
i8_block(const uint8_t *lv, const int8_t *d, int ld, int nt_blk, int r4, float *p, size_t pstride)
{
    __m512i acc[4][2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) acc[k][0] = acc[k][1] = _mm512_setzero_si512();
    for (int g = 0; g < r4 / 4; g++) {
        __m512i l0 = _mm512_loadu_si512(lv + (size_t)g * PIM_GROUP * 4);
        __m512i l1 = _mm512_loadu_si512(lv + (size_t)g * PIM_GROUP * 4 + 64);
#pragma GCC unroll 4
        for (int k = 0; k < nt_blk; k++) {
            int32_t w;
            memcpy(&w, d + (size_t)k * ld + 4 * g, 4);
            __m512i x = _mm512_set1_epi32(w);
            acc[k][0] = _mm512_dpbusd_epi32(acc[k][0], l0, x);
            acc[k][1] = _mm512_dpbusd_epi32(acc[k][1], l1, x);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < nt_blk; k++) {
        _mm512_storeu_ps(p + k * pstride, _mm512_cvtepi32_ps(acc[k][0]));
        _mm512_storeu_ps(p + k * pstride + 16, _mm512_cvtepi32_ps(acc[k][1]));
    }
}

void pim_kernel_i8_avx512(const uint8_t *lv, const int8_t *d, int ld, int nt, int nb, int r4,
                          float *p)
{
    size_t pstride = (size_t)nb * PIM_GROUP;
    for (int b = 0; b < nb; b++) {
        const uint8_t *block = lv + (size_t)b * r4 * PIM_GROUP;
        for (int t = 0; t < nt; t += 4) {
            const int8_t *dt = d + (size_t)t * ld + (size_t)b * r4;
            float *pt = p + ((size_t)t * nb + b) * PIM_GROUP;
            switch (nt - t) {
            case 1:
                i8_block(block, dt, ld, 1, r4, pt, pstride);
                break;
            case 2:
                i8_block(block, dt, ld, 2, r4, pt, pstride);
                break;
            case 3:
                i8_block(block, dt, ld, 3, r4, pt, pstride);
                break;
            default:
                i8_block(block, dt, ld, 4, r4, pt, pstride);
                break;
            }
        }
    }
}

static inline __attribute__((always_inline)) void f32_block(const float *g, const float *d, int ld,
                                                            int nt_blk, int r4, float off, float *p,
                                                            float *q, size_t pstride, bool var)
{
    __m512 s[4][2], v[4][2];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) s[k][0] = s[k][1] = v[k][0] = v[k][1] = _mm512_setzero_ps();
    const __m512 o = _mm512_set1_ps(off);
    for (int r = 0; r < r4; r++) {
        __m512 g0 = _mm512_loadu_ps(g + (size_t)r * PIM_GROUP);
        __m512 g1 = _mm512_loadu_ps(g + (size_t)r * PIM_GROUP + 16);
        __m512 h0 = g0, h1 = g1;
        if (var) {
            h0 = _mm512_add_ps(g0, o);
            h1 = _mm512_add_ps(g1, o);
            h0 = _mm512_mul_ps(h0, h0);
            h1 = _mm512_mul_ps(h1, h1);
        }
#pragma GCC unroll 4
        for (int k = 0; k < nt_blk; k++) {
            __m512 x = _mm512_set1_ps(d[(size_t)k * ld + r]);
            s[k][0] = _mm512_fmadd_ps(g0, x, s[k][0]);
            s[k][1] = _mm512_fmadd_ps(g1, x, s[k][1]);
            if (var) {
                __m512 y = _mm512_mul_ps(x, x);
                v[k][0] = _mm512_fmadd_ps(h0, y, v[k][0]);
                v[k][1] = _mm512_fmadd_ps(h1, y, v[k][1]);
            }
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < nt_blk; k++) {
        _mm512_storeu_ps(p + k * pstride, s[k][0]);
        _mm512_storeu_ps(p + k * pstride + 16, s[k][1]);
        if (var) {
            _mm512_storeu_ps(q + k * pstride, v[k][0]);
            _mm512_storeu_ps(q + k * pstride + 16, v[k][1]);
        }
    }
}

#define F32_CASES(VAR)                                                                             \
    switch (nt - t) {                                                                              \
    case 1:                                                                                        \
        f32_block(block, dt, ld, 1, r4, off, pt, qt, pstride, VAR);                                \
        break;                                                                                     \
    case 2:                                                                                        \
        f32_block(block, dt, ld, 2, r4, off, pt, qt, pstride, VAR);                                \
        break;                                                                                     \
    case 3:                                                                                        \
        f32_block(block, dt, ld, 3, r4, off, pt, qt, pstride, VAR);                                \
        break;                                                                                     \
    default:                                                                                       \
        f32_block(block, dt, ld, 4, r4, off, pt, qt, pstride, VAR);                                \
        break;                                                                                     \
    }

void pim_kernel_f32_avx512(const float *g, const float *d, int ld, int nt, int nb, int r4,
                           float off, float *p, float *q)
{
    size_t pstride = (size_t)nb * PIM_GROUP;
    for (int b = 0; b < nb; b++) {
        const float *block = g + (size_t)b * r4 * PIM_GROUP;
        for (int t = 0; t < nt; t += 4) {
            const float *dt = d + (size_t)t * ld + (size_t)b * r4;
            size_t at = ((size_t)t * nb + b) * PIM_GROUP;
            float *pt = p + at, *qt = q ? q + at : NULL;
            if (q) {
                F32_CASES(true)
            } else {
                F32_CASES(false)
            }
        }
    }
}

void pim_unpack_avx512(const uint8_t *packed, int pack, size_t n_chunks, uint8_t *out)
{
    int w = 8 / pack;
    const __m512i mask = _mm512_set1_epi8((char)((1u << w) - 1));
    for (size_t k = 0; k < n_chunks; k++)
        for (int h = 0; h < 2; h++) {
            __m512i v = _mm512_loadu_si512(packed + k * 128 + 64 * h);
            for (int q = 0; q < pack; q++) {
                __m512i l = _mm512_and_si512(_mm512_srli_epi16(v, (unsigned)(q * w)), mask);
                _mm512_storeu_si512(out + (k * pack + q) * 128 + 64 * h, l);
            }
        }
}

/* ---------------------------------------------------------------- normals */

static inline __m512i mix32(__m512i x)
{
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7feb352d));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846ca68bu));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

static inline __m512 unit(__m512i w)
{
    __m512i v = _mm512_add_epi32(_mm512_srli_epi32(w, 8), _mm512_set1_epi32(1));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(0x1p-24f));
}

/* The same operations, in the same order, as log_avx2 in rng.c. */
static inline __m512 log_u(__m512 x)
{
    __m512i bits = _mm512_castps_si512(x);
    __m512 e =
        _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(126)));
    x = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)),
                                            _mm512_set1_epi32(0x3f000000)));
    __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm512_mask_sub_ps(e, small, e, _mm512_set1_ps(1.0f));
    x = _mm512_sub_ps(_mm512_mask_add_ps(x, small, x, x), _mm512_set1_ps(1.0f));
    __m512 z = _mm512_mul_ps(x, x);
    __m512 y = _mm512_set1_ps(7.0376836292e-2f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.1514610310e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.1676998740e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.2420140846e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.4249322787e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.6668057665e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(2.0000714765e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-2.4999993993e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(3.3333331174e-1f));
    y = _mm512_mul_ps(_mm512_mul_ps(y, x), z);
    y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
    y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
    x = _mm512_add_ps(x, y);
    return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), x);
}

static inline void sincos2pi(__m512 u, __m512 *s, __m512 *c)
{
    __m512 q = _mm512_roundscale_ps(_mm512_mul_ps(u, _mm512_set1_ps(4.0f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(q, _mm512_set1_ps(0.25f), u);
    __m512 t = _mm512_mul_ps(f, _mm512_set1_ps((float)(2.0 * M_PI)));
    __m512 t2 = _mm512_mul_ps(t, t);
    __m512 sp = _mm512_set1_ps(-1.9515295891e-4f);
    sp = _mm512_fmadd_ps(sp, t2, _mm512_set1_ps(8.3321608736e-3f));
    sp = _mm512_fmadd_ps(sp, t2, _mm512_set1_ps(-1.6666654611e-1f));
    __m512 sn = _mm512_fmadd_ps(_mm512_mul_ps(sp, t2), t, t);
    __m512 cp = _mm512_set1_ps(2.443315711809948e-5f);
    cp = _mm512_fmadd_ps(cp, t2, _mm512_set1_ps(-1.388731625493765e-3f));
    cp = _mm512_fmadd_ps(cp, t2, _mm512_set1_ps(4.166664568298827e-2f));
    __m512 cs = _mm512_fmadd_ps(_mm512_mul_ps(cp, t2), t2,
                                _mm512_fnmadd_ps(t2, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
    __m512i qi = _mm512_and_si512(_mm512_cvtps_epi32(q), _mm512_set1_epi32(3));
    __mmask16 swap = _mm512_test_epi32_mask(qi, _mm512_set1_epi32(1));
    __mmask16 neg_s = _mm512_cmpeq_epi32_mask(qi, _mm512_set1_epi32(2)) |
                      _mm512_cmpeq_epi32_mask(qi, _mm512_set1_epi32(3));
    __mmask16 neg_c = _mm512_cmpeq_epi32_mask(qi, _mm512_set1_epi32(1)) |
                      _mm512_cmpeq_epi32_mask(qi, _mm512_set1_epi32(2));
    __m512 s0 = _mm512_mask_blend_ps(swap, sn, cs), c0 = _mm512_mask_blend_ps(swap, cs, sn);
    __m512 sign = _mm512_set1_ps(-0.0f);
    *s = _mm512_mask_xor_ps(s0, neg_s, s0, sign);
    *c = _mm512_mask_xor_ps(c0, neg_c, c0, sign);
}

static void normal_block(uint64_t key, uint64_t block, float *out)
{
    uint32_t a = (uint32_t)key, b = (uint32_t)(key >> 32);
    __m512i k =
        _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)(block * 16)),
                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i va = _mm512_set1_epi32((int)a), vb = _mm512_set1_epi32((int)b);
    __m512i w1 = mix32(_mm512_add_epi32(mix32(_mm512_xor_si512(k, va)), vb));
    __m512i w2 = mix32(_mm512_xor_si512(_mm512_xor_si512(mix32(_mm512_add_epi32(k, vb)), va),
                                        _mm512_set1_epi32((int)0x9e3779b9u)));
    __m512 r = _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), log_u(unit(w1))));
    __m512 s, c;
    sincos2pi(unit(w2), &s, &c);
    _mm512_storeu_ps(out, _mm512_mul_ps(r, c));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(r, s));
}

void pim_rng_normal_avx512(uint64_t key, uint64_t first, float *out, size_t n)
{
    float tmp[32];
    size_t i = 0;
    while (i < n) {
        uint64_t pos = first + i, block = pos >> 5;
        size_t lane = (size_t)(pos & 31), take = 32 - lane;
        if (take > n - i) take = n - i;
        if (lane == 0 && take == 32) {
            normal_block(key, block, out + i);
        } else {
            normal_block(key, block, tmp);
            memcpy(out + i, tmp + lane, take * sizeof(float));
        }
        i += take;
    }
}

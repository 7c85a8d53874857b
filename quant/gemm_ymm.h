/*
 * gemm_ymm.h: the body of the 256-bit kernels, written once and included by
 * gemm_avx2.c (YMM_VNNI 0: vpmaddubsw, for every AVX2 CPU) and
 * gemm_avxvnni.c (YMM_VNNI 1: AVX-VNNI's vpdpbusd on ymm, Alder Lake and
 * Zen 4 on), each of which first defines YMM_VNNI and YMM_KERNEL (the
 * kernel's name).
 *
 * A register tile is up to GEMM_MR tokens x one column block (16 output
 * rows, two ymm of 8). The weights are read straight from the packed
 * layout: one 64-byte load holds two quads of int4 (low and high nibbles)
 * for all 16 rows, unpacked in registers and used by every token of the
 * tile, so no pass through memory is needed at any batch size. The block's
 * weights (at most a few tens of KB) stay in L1/L2 while the tiles of
 * tokens go by.
 *
 * AVX2, int4 groups: vpmaddubsw of the biased unsigned weights (0..15) and
 * the signed activations (-7..7) gives pairs of at most 210 in magnitude;
 * two quads are added before they reach the int16 sums, at most 420 per
 * step and Q_MAX_GROUP / 8 steps (26880, no overflow; hence Q_MAX_GROUP),
 * widened once per group by vpmaddwd. With int8 activations (W4A8) a step's
 * two quads reach 7620, so each step is widened at once. int8 groups: the
 * sign trick (|w| times a with w's sign) keeps vpmaddubsw from saturating,
 * widened at once.
 * AVX-VNNI: vpdpbusd multiplies the biased unsigned weights (int4 or int8)
 * by the signed activations and adds four products straight into int32.
 * Either way the bias is taken out per group (-bias x the token's group
 * sum), and each group is rescaled into float sums that go to y once, at
 * the end of the tile.
 */
#ifndef YMM_KERNEL
#error                                                                                             \
    "gemm_ymm.h is included by gemm_avx2.c or gemm_avxvnni.c, which define YMM_VNNI and YMM_KERNEL"
#endif

#include "quant/quant_internal.h"

#include <immintrin.h>
#include <string.h>

#define GEMM_MR 4

_Static_assert(Q_PANEL_AVX2 == 1 && Q_PANEL_AVXVNNI == 1, "one column block a tile");
_Static_assert(Q_MAX_GROUP / 8 * 4 * 15 * Q_INT4_MAX <= 32767, "int16 group sums fit");

static inline __m256i broadcast_i32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The int32 sums (two ymm: rows 0-7 and 8-15) of one int4 group for MR
 * tokens, the weights' bias already taken out; WIDE for int8 activations
 * (AVX2 only: vpdpbusd sums in int32 anyway). */
static inline __attribute__((always_inline)) void
int4_group(const int MR, const bool WIDE, const uint8_t *w, const int8_t *a, size_t stride, int len,
           const int32_t *a_sums, int n_groups, __m256i out[][2])
{
    const __m256i low = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256i acc[GEMM_MR][2];
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    for (int p = 0; p < len / 8; p++) {
        __m256i v0 = _mm256_load_si256((const __m256i *)(w + (size_t)p * Q_QUAD_BYTES));
        __m256i v1 = _mm256_load_si256((const __m256i *)(w + (size_t)p * Q_QUAD_BYTES + 32));
        __m256i lo0 = _mm256_and_si256(v0, low),
                hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
        __m256i lo1 = _mm256_and_si256(v1, low),
                hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
#pragma GCC unroll 4
        for (int t = 0; t < MR; t++) {
            __m256i x0 = broadcast_i32(a + t * stride + 8 * p);
            __m256i x1 = broadcast_i32(a + t * stride + 8 * p + 4);
#if YMM_VNNI
            (void)WIDE;
            acc[t][0] =
                _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc[t][0], lo0, x0), hi0, x1);
            acc[t][1] =
                _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc[t][1], lo1, x0), hi1, x1);
#else
            __m256i p0 =
                _mm256_add_epi16(_mm256_maddubs_epi16(lo0, x0), _mm256_maddubs_epi16(hi0, x1));
            __m256i p1 =
                _mm256_add_epi16(_mm256_maddubs_epi16(lo1, x0), _mm256_maddubs_epi16(hi1, x1));
            if (WIDE) {
                acc[t][0] = _mm256_add_epi32(acc[t][0], _mm256_madd_epi16(p0, ones));
                acc[t][1] = _mm256_add_epi32(acc[t][1], _mm256_madd_epi16(p1, ones));
            } else {
                acc[t][0] = _mm256_add_epi16(acc[t][0], p0);
                acc[t][1] = _mm256_add_epi16(acc[t][1], p1);
            }
#endif
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) {
        __m256i bias = _mm256_set1_epi32(-Q_INT4_BIAS * a_sums[(size_t)t * n_groups]);
        __m256i s0 = YMM_VNNI || WIDE ? acc[t][0] : _mm256_madd_epi16(acc[t][0], ones);
        __m256i s1 = YMM_VNNI || WIDE ? acc[t][1] : _mm256_madd_epi16(acc[t][1], ones);
        out[t][0] = _mm256_add_epi32(s0, bias);
        out[t][1] = _mm256_add_epi32(s1, bias);
    }
}

/* The same for an int8 group: the weights are stored biased by 128. AVX2
 * flips the top bit for the signed value (no bias to take out); VNNI
 * multiplies the biased bytes and takes 128 x the group sum out. */
static inline __attribute__((always_inline)) void int8_group(const int MR, const uint8_t *w,
                                                             const int8_t *a, size_t stride,
                                                             int len, const int32_t *a_sums,
                                                             int n_groups, __m256i out[][2])
{
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) out[t][0] = out[t][1] = _mm256_setzero_si256();
#if YMM_VNNI
    for (int q = 0; q < len / 4; q++) {
        __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES));
        __m256i w1 = _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES + 32));
#pragma GCC unroll 4
        for (int t = 0; t < MR; t++) {
            __m256i x = broadcast_i32(a + t * stride + 4 * q);
            out[t][0] = _mm256_dpbusd_avx_epi32(out[t][0], w0, x);
            out[t][1] = _mm256_dpbusd_avx_epi32(out[t][1], w1, x);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) {
        __m256i bias = _mm256_set1_epi32(-Q_INT8_BIAS * a_sums[(size_t)t * n_groups]);
        out[t][0] = _mm256_add_epi32(out[t][0], bias);
        out[t][1] = _mm256_add_epi32(out[t][1], bias);
    }
#else
    (void)a_sums, (void)n_groups;
    const __m256i flip = _mm256_set1_epi8((char)Q_INT8_BIAS), ones = _mm256_set1_epi16(1);
    for (int q = 0; q < len / 4; q++) {
        __m256i w0 = _mm256_xor_si256(
            _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES)), flip);
        __m256i w1 = _mm256_xor_si256(
            _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES + 32)), flip);
        __m256i abs0 = _mm256_abs_epi8(w0), abs1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 4
        for (int t = 0; t < MR; t++) {
            __m256i x = broadcast_i32(a + t * stride + 4 * q);
            __m256i p0 = _mm256_maddubs_epi16(abs0, _mm256_sign_epi8(x, w0));
            __m256i p1 = _mm256_maddubs_epi16(abs1, _mm256_sign_epi8(x, w1));
            out[t][0] = _mm256_add_epi32(out[t][0], _mm256_madd_epi16(p0, ones));
            out[t][1] = _mm256_add_epi32(out[t][1], _mm256_madd_epi16(p1, ones));
        }
    }
#endif
}

/* MR tokens from t0 against column block `block`: every group, then y. */
static inline __attribute__((always_inline)) void tile(const int MR, const struct q_linear *layer,
                                                       const struct q_act *act, int block, int t0,
                                                       float *y, int ldy, bool accumulate)
{
    const struct q_layout *lay = &layer->layout;
    const int n_groups = lay->n_groups;
    const size_t stride = (size_t)act->layout.act_row_bytes;
    const uint8_t *blk = layer->packed + (size_t)block * lay->block_bytes;
    const int8_t *a0 = act->values + (size_t)t0 * stride;
    __m256 sums[GEMM_MR][2];
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) sums[t][0] = sums[t][1] = _mm256_setzero_ps();
    for (int g = 0; g < n_groups; g++) {
        const struct q_group *grp = &lay->groups[g];
        __m256i dot[GEMM_MR][2];
        const int32_t *a_sums = act->sums + (size_t)t0 * n_groups + g;
        if (grp->bits == 4 && grp->a_bits == 8) /* constant WIDE: each is compiled on its own */
            int4_group(MR, true, blk + grp->w_offset, a0 + grp->act_offset, stride, grp->len,
                       a_sums, n_groups, dot);
        else if (grp->bits == 4)
            int4_group(MR, false, blk + grp->w_offset, a0 + grp->act_offset, stride, grp->len,
                       a_sums, n_groups, dot);
        else
            int8_group(MR, blk + grp->w_offset, a0 + grp->act_offset, stride, grp->len, a_sums,
                       n_groups, dot);
        const float *ws = q_linear_scales(layer, block, g);
        __m256 w_scale0 = _mm256_loadu_ps(ws), w_scale1 = _mm256_loadu_ps(ws + 8);
#pragma GCC unroll 4
        for (int t = 0; t < MR; t++) {
            __m256 a_scale = _mm256_set1_ps(act->scales[(size_t)(t0 + t) * n_groups + g]);
            sums[t][0] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot[t][0]), w_scale0),
                                         a_scale, sums[t][0]);
            sums[t][1] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot[t][1]), w_scale1),
                                         a_scale, sums[t][1]);
        }
    }
    int cols = layer->n - block * Q_BLOCK_ROWS;
#pragma GCC unroll 4
    for (int t = 0; t < MR; t++) {
        float *yp = y + (size_t)(t0 + t) * ldy + (size_t)block * Q_BLOCK_ROWS;
        if (cols >= Q_BLOCK_ROWS) {
            if (accumulate) {
                sums[t][0] = _mm256_add_ps(sums[t][0], _mm256_loadu_ps(yp));
                sums[t][1] = _mm256_add_ps(sums[t][1], _mm256_loadu_ps(yp + 8));
            }
            _mm256_storeu_ps(yp, sums[t][0]);
            _mm256_storeu_ps(yp + 8, sums[t][1]);
        } else {
            _Alignas(32) float row[Q_BLOCK_ROWS];
            _mm256_store_ps(row, sums[t][0]);
            _mm256_store_ps(row + 8, sums[t][1]);
            for (int c = 0; c < cols; c++) yp[c] = accumulate ? yp[c] + row[c] : row[c];
        }
    }
}

typedef void tile_fn(const struct q_linear *layer, const struct q_act *act, int block, int t0,
                     float *y, int ldy, bool accumulate);

#define TILE(MR)                                                                                   \
    static void tile_##MR(const struct q_linear *layer, const struct q_act *act, int block,        \
                          int t0, float *y, int ldy, bool accumulate)                              \
    {                                                                                              \
        tile(MR, layer, act, block, t0, y, ldy, accumulate);                                       \
    }
TILE(1)
TILE(2)
TILE(3)
TILE(4)
static tile_fn *const tiles[GEMM_MR] = {tile_1, tile_2, tile_3, tile_4};

void YMM_KERNEL(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                int block_begin, int block_end, float *y, int ldy, bool accumulate)
{
    for (int block = block_begin; block < block_end; block++) {
        /* Tiles of nearly equal height: 6 tokens as 3 + 3, not 4 + 2. */
        for (int t = t_begin, mr; t < t_end; t += mr) {
            int tiles_left = (t_end - t + GEMM_MR - 1) / GEMM_MR;
            mr = (t_end - t + tiles_left - 1) / tiles_left;
            tiles[mr - 1](layer, act, block, t, y, ldy, accumulate);
        }
    }
}

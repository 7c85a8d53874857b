/*
 * gemm_avx2.c: the AVX2 kernel, for CPUs without AVX-512 VNNI.
 *
 * A register tile of GEMM_MR tokens x one column block (two ymm of 8 output
 * rows). int4 groups: vpmaddubsw of the biased unsigned weights (0..15) and
 * the signed activations (-7..7) gives pairs of at most 210 in magnitude,
 * summed in int16 over the whole group (at most 128 quads: 26880, no
 * overflow; hence Q_MAX_GROUP), widened once per group by vpmaddwd. int8
 * groups: the sign trick (|w| times a with w's sign) keeps vpmaddubsw from
 * saturating, widened at once. Rescaled per group in fp32 like AVX-512.
 */
#include "quant/quant_internal.h"

#include <immintrin.h>
#include <string.h>

#define GEMM_MR 4

_Static_assert(Q_PANEL_AVX2 == 1, "one column block a tile");
_Static_assert(Q_MAX_GROUP / 4 * 2 * 15 * Q_INT4_MAX <= 32767, "int16 group sums fit");

struct tile_args {
    const struct q_act *act;
    int t0;
    float *y;        /* y row t0, first column of the block */
    int n;           /* y row stride */
    __m256i mask[2]; /* lanes inside n, for the two halves of the block */
    bool fresh;
};

static inline int32_t load_i32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void tile(const int MR, const struct tile_args *ta,
                                                       const struct q_seg *segs, int n_segs)
{
    const struct q_act *act = ta->act;
    const int n_groups = act->layout.n_groups;
    const size_t stride = (size_t)act->layout.act_row_bytes;
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int s = 0; s < n_segs; s++) {
        const struct q_seg *seg = &segs[s];
        const int8_t *a = act->values + (size_t)ta->t0 * stride + seg->a_offset;
        const uint8_t *w = seg->w[0];
        __m256i acc[GEMM_MR][2];
#pragma GCC unroll 8
        for (int t = 0; t < MR; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
        if (seg->bits == 4) {
            for (int q = 0; q < seg->quads; q++) {
                __m256i w0 = _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES));
                __m256i w1 =
                    _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES + 32));
#pragma GCC unroll 8
                for (int t = 0; t < MR; t++) {
                    __m256i av = _mm256_set1_epi32(load_i32(a + t * stride + 4 * q));
                    acc[t][0] = _mm256_add_epi16(acc[t][0], _mm256_maddubs_epi16(w0, av));
                    acc[t][1] = _mm256_add_epi16(acc[t][1], _mm256_maddubs_epi16(w1, av));
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < MR; t++) {
                int32_t sum = act->sums[(size_t)(ta->t0 + t) * n_groups + seg->g];
                __m256i start = _mm256_set1_epi32(seg->first ? -Q_INT4_BIAS * sum : 0);
                acc[t][0] = _mm256_add_epi32(_mm256_madd_epi16(acc[t][0], ones16), start);
                acc[t][1] = _mm256_add_epi32(_mm256_madd_epi16(acc[t][1], ones16), start);
            }
        } else {
            const __m256i bias = _mm256_set1_epi8((char)Q_INT8_BIAS);
            for (int q = 0; q < seg->quads; q++) {
                __m256i w0 = _mm256_xor_si256(
                    _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES)), bias);
                __m256i w1 = _mm256_xor_si256(
                    _mm256_load_si256((const __m256i *)(w + (size_t)q * Q_QUAD_BYTES + 32)), bias);
                __m256i abs0 = _mm256_abs_epi8(w0), abs1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 8
                for (int t = 0; t < MR; t++) {
                    __m256i av = _mm256_set1_epi32(load_i32(a + t * stride + 4 * q));
                    __m256i p0 = _mm256_maddubs_epi16(abs0, _mm256_sign_epi8(av, w0));
                    __m256i p1 = _mm256_maddubs_epi16(abs1, _mm256_sign_epi8(av, w1));
                    acc[t][0] = _mm256_add_epi32(acc[t][0], _mm256_madd_epi16(p0, ones16));
                    acc[t][1] = _mm256_add_epi32(acc[t][1], _mm256_madd_epi16(p1, ones16));
                }
            }
        }
        const bool store = ta->fresh && s == 0;
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256 w_scale = _mm256_loadu_ps(seg->w_scale[0] + 8 * h);
#pragma GCC unroll 8
            for (int t = 0; t < MR; t++) {
                float *yp = ta->y + (size_t)t * ta->n + 8 * h;
                __m256 a_scale =
                    _mm256_set1_ps(act->scales[(size_t)(ta->t0 + t) * n_groups + seg->g]);
                __m256 prod = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][h]), w_scale);
                __m256 prev = store ? _mm256_setzero_ps() : _mm256_maskload_ps(yp, ta->mask[h]);
                _mm256_maskstore_ps(yp, ta->mask[h], _mm256_fmadd_ps(prod, a_scale, prev));
            }
        }
    }
}

static void unpack_int4(const uint8_t *restrict src, int quads, uint8_t *restrict dst)
{
    const __m256i low = _mm256_set1_epi8(0x0f);
    for (int h = 0; h < quads; h++) { /* h: 32-byte half h % 2 of pair h / 2 */
        __m256i v = _mm256_load_si256((const __m256i *)(src + (size_t)h * 32));
        uint8_t *lo = dst + (size_t)(h / 2) * 2 * Q_QUAD_BYTES + (size_t)(h % 2) * 32;
        _mm256_store_si256((__m256i *)lo, _mm256_and_si256(v, low));
        _mm256_store_si256((__m256i *)(lo + Q_QUAD_BYTES),
                           _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    }
}

typedef void tile_fn(const struct tile_args *ta, const struct q_seg *segs, int n_segs);

#define TILE(MR)                                                                                   \
    static void tile_##MR(const struct tile_args *ta, const struct q_seg *segs, int n)             \
    {                                                                                              \
        tile(MR, ta, segs, n);                                                                     \
    }
TILE(1)
TILE(2) TILE(3) TILE(4) static tile_fn *const tiles[GEMM_MR] = {tile_1, tile_2, tile_3, tile_4};

void q_gemm_avx2(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                 float *y, int block_begin, int block_end)
{
    _Alignas(64) uint8_t buf[Q_CHUNK_BLOCK_BYTES];
    struct q_seg segs[Q_CHUNK_MAX_SEGS];
    for (int block = block_begin; block < block_end; block++) {
        struct tile_args ta = {.act = act, .n = layer->n, .fresh = true};
        uint16_t mask = q_block_mask(layer, block);
        for (int h = 0; h < 2; h++) {
            int32_t lanes[8];
            for (int i = 0; i < 8; i++) lanes[i] = (mask >> (8 * h + i)) & 1 ? -1 : 0;
            ta.mask[h] = _mm256_loadu_si256((const __m256i *)lanes);
        }
        struct q_cursor cur = {0, 0};
        int n_segs;
        while ((n_segs = q_chunk_plan(layer, block, 1, &cur, segs)) > 0) {
            q_chunk_unpack(segs, n_segs, 1, buf, unpack_int4);
            for (int t = t_begin; t < t_end; t += GEMM_MR) {
                int mr = t_end - t < GEMM_MR ? t_end - t : GEMM_MR;
                ta.t0 = t;
                ta.y = y + (size_t)t * layer->n + (size_t)block * Q_BLOCK_ROWS;
                tiles[mr - 1](&ta, segs, n_segs);
            }
            ta.fresh = false;
        }
    }
}

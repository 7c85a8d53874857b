/*
 * gemm_avx512.c: the AVX-512 VNNI kernel.
 *
 * A register tile of GEMM_MR tokens x GEMM_NV column blocks (16 output rows
 * each) holds int32 sums. For every quad of channels, one vpdpbusd per
 * accumulator: the 64 weight bytes of a block (unsigned, biased, from the
 * unpacked chunk) times 4 activation bytes of a token broadcast from memory
 * (signed). The bias is taken out by starting each sum at -bias * (sum of
 * the token's group). At the end of a group the sums are rescaled into y in
 * fp32: y += float(sum) * w_scale * a_scale.
 */
#include "quant/quant_internal.h"

#include <immintrin.h>
#include <string.h>

#define GEMM_MR 6
#define GEMM_NV Q_PANEL_AVX512

_Static_assert(GEMM_NV <= Q_MAX_PANEL, "panel fits a chunk plan");

/* What a tile needs besides its segments. */
struct tile_args {
    const struct q_act *act;
    int t0;              /* first token */
    float *y;            /* y row t0, column of the panel's first block */
    int n;               /* y row stride */
    __mmask16 mask[GEMM_NV];
    bool fresh;          /* y not yet written for this panel: store, don't add */
};

static inline int32_t load_i32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void tile(const int MR, const int NV,
                                                       const struct tile_args *ta,
                                                       const struct q_seg *segs, int n_segs)
{
    const struct q_act *act = ta->act;
    const int n_groups = act->layout.n_groups;
    const size_t stride = (size_t)act->layout.act_row_bytes;
    for (int s = 0; s < n_segs; s++) {
        const struct q_seg *seg = &segs[s];
        const int8_t *a = act->values + (size_t)ta->t0 * stride + seg->a_offset;
        const int bias = seg->first ? (seg->bits == 4 ? Q_INT4_BIAS : Q_INT8_BIAS) : 0;
        __m512i acc[MR][NV];
#pragma GCC unroll 8
        for (int t = 0; t < MR; t++) {
            __m512i start = _mm512_set1_epi32(-bias * act->sums[(size_t)(ta->t0 + t) * n_groups + seg->g]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++) acc[t][j] = start;
        }
        const uint8_t *w[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) w[j] = seg->w[j];
        for (int q = 0; q < seg->quads; q++) {
            __m512i wv[NV];
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++) wv[j] = _mm512_load_si512(w[j] + (size_t)q * Q_QUAD_BYTES);
#pragma GCC unroll 8
            for (int t = 0; t < MR; t++) {
                __m512i av = _mm512_set1_epi32(load_i32(a + t * stride + 4 * q));
#pragma GCC unroll 4
                for (int j = 0; j < NV; j++) acc[t][j] = _mm512_dpbusd_epi32(acc[t][j], wv[j], av);
            }
        }
        const bool store = ta->fresh && s == 0;
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) {
            __m512 w_scale = _mm512_loadu_ps(seg->w_scale[j]);
#pragma GCC unroll 8
            for (int t = 0; t < MR; t++) {
                float *yp = ta->y + (size_t)t * ta->n + 16 * j;
                __m512 a_scale = _mm512_set1_ps(act->scales[(size_t)(ta->t0 + t) * n_groups + seg->g]);
                __m512 prod = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[t][j]), w_scale);
                __m512 prev = store ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(ta->mask[j], yp);
                _mm512_mask_storeu_ps(yp, ta->mask[j], _mm512_fmadd_ps(prod, a_scale, prev));
            }
        }
    }
}

/* One function per tile shape, chosen by the number of tokens and blocks left. */
typedef void tile_fn(const struct tile_args *ta, const struct q_seg *segs, int n_segs);

#define TILE(MR, NV)                                                                           \
    static void tile_##MR##_##NV(const struct tile_args *ta, const struct q_seg *segs, int n) \
    {                                                                                          \
        tile(MR, NV, ta, segs, n);                                                             \
    }
#define TILE_ROW(MR) TILE(MR, 1) TILE(MR, 2) TILE(MR, 3) TILE(MR, 4)
TILE_ROW(1) TILE_ROW(2) TILE_ROW(3) TILE_ROW(4) TILE_ROW(5) TILE_ROW(6)
#define TILE_REF(MR) {tile_##MR##_1, tile_##MR##_2, tile_##MR##_3, tile_##MR##_4}
static tile_fn *const tiles[GEMM_MR][GEMM_NV] = {TILE_REF(1), TILE_REF(2), TILE_REF(3),
                                                  TILE_REF(4), TILE_REF(5), TILE_REF(6)};

void q_gemm_avx512(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                   float *y, int block_begin, int block_end)
{
    _Alignas(64) uint8_t buf[GEMM_NV * Q_CHUNK_BLOCK_BYTES];
    struct q_seg segs[Q_CHUNK_MAX_SEGS];
    for (int block = block_begin; block < block_end; block += GEMM_NV) {
        int nv = block_end - block < GEMM_NV ? block_end - block : GEMM_NV;
        struct tile_args ta = {.act = act, .n = layer->n, .fresh = true};
        for (int j = 0; j < nv; j++) ta.mask[j] = q_block_mask(layer, block + j);
        struct q_cursor cur = {0, 0};
        int n_segs;
        while ((n_segs = q_chunk_plan(layer, block, nv, &cur, buf, segs)) > 0) {
            for (int t = t_begin; t < t_end; t += GEMM_MR) {
                int mr = t_end - t < GEMM_MR ? t_end - t : GEMM_MR;
                ta.t0 = t;
                ta.y = y + (size_t)t * layer->n + (size_t)block * Q_BLOCK_ROWS;
                tiles[mr - 1][nv - 1](&ta, segs, n_segs);
            }
            ta.fresh = false;
        }
    }
}

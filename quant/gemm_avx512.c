/*
 * gemm_avx512.c: the AVX-512 VNNI kernel.
 *
 * A register tile of GEMM_MR tokens x GEMM_NV column blocks (16 output rows
 * each) holds int32 sums. For every quad of channels, one vpdpbusd per
 * accumulator: the 64 weight bytes of a block (unsigned, biased) times 4
 * activation bytes of a token broadcast from memory (signed). The bias is
 * taken out by starting each sum at -bias * (sum of the token's group). At
 * the end of a group the sums are rescaled into the panel's float sums:
 * += float(sum) * w_scale * a_scale; those go to y when the panel is done.
 *
 * Weights: a chunk's int4 groups are unpacked once to a byte a weight
 * (L1-sized buffer) and reused by every tile of tokens; with at most
 * GEMM_DIRECT_MAX_TOKENS tokens they are unpacked in registers instead.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <immintrin.h>
#include <string.h>

#define GEMM_MR 6
#define GEMM_NV Q_PANEL_AVX512
/* Up to this many tokens the int4 weights are unpacked in registers: with
 * one tile of tokens a pass through the chunk buffer costs more (and more
 * tokens would not leave the registers for it). */
#define GEMM_DIRECT_MAX_TOKENS 8
/* Tile height when unpacking in registers: with 6 the unpacked weights and
 * the broadcasts no longer fit beside the sums. */
#define GEMM_DIRECT_MR 4

_Static_assert(GEMM_NV <= Q_MAX_PANEL, "panel fits a chunk plan");

/* Tokens per pass over a panel: the panel's sums for them stay in a
 * private buffer (GEMM_TOKEN_BLOCK x GEMM_NV x 16 floats, 64 KB), not in y
 * itself. Masked stores to y and loads back from them, group after group,
 * would not forward and stall; y's rows may also share cache sets. */
#define GEMM_TOKEN_BLOCK 256

/* What a tile needs besides its segments. */
struct tile_args {
    const struct q_act *act;
    int t0;     /* first token */
    float *out; /* the tile's first row in the panel's float sums */
    bool fresh; /* sums not yet written for this pass: store, don't add */
};
/* Floats per row of the panel's float sums. */
#define PANEL_FLOATS (GEMM_NV * Q_BLOCK_ROWS)

static inline int32_t load_i32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The accumulators are named variables, not an array: GCC keeps an array of
 * 24 zmm in memory. FOR_ROW(t, OP) applies OP(t, j, acc) to the live sums
 * of token t (dead ones are never touched, so never computed). */
#define FOR_ROW(t, OP)                                                                             \
    do {                                                                                           \
        if (MR > t) {                                                                              \
            OP(t, 0, acc##t##_0);                                                                  \
            if (NV > 1) OP(t, 1, acc##t##_1);                                                      \
            if (NV > 2) OP(t, 2, acc##t##_2);                                                      \
            if (NV > 3) OP(t, 3, acc##t##_3);                                                      \
        }                                                                                          \
    } while (0)
#define FOR_TILE(OP)                                                                               \
    do {                                                                                           \
        FOR_ROW(0, OP);                                                                            \
        FOR_ROW(1, OP);                                                                            \
        FOR_ROW(2, OP);                                                                            \
        FOR_ROW(3, OP);                                                                            \
        FOR_ROW(4, OP);                                                                            \
        FOR_ROW(5, OP);                                                                            \
    } while (0)
_Static_assert(GEMM_MR == 6 && GEMM_NV == 4, "FOR_TILE spells out 6 x 4 accumulators");

/* Sums start at -bias * (the token's sum over the group), taking the
 * weights' bias out; later segments of a split int8 group start at 0. */
#define OP_START(t, j, acc)                                                                        \
    acc = _mm512_set1_epi32(-bias * act->sums[(size_t)(ta->t0 + (t)) * n_groups + seg->g])
#define OP_DOT(t, j, acc) acc = _mm512_dpbusd_epi32(acc, w##j, av)
#define ROW_DOT(t)                                                                                 \
    do {                                                                                           \
        if (MR > t) {                                                                              \
            __m512i av = _mm512_set1_epi32(load_i32(a + (t)*stride + 4 * q));                      \
            FOR_ROW(t, OP_DOT);                                                                    \
        }                                                                                          \
    } while (0)
/* Packed int4: one 64-byte load gives the weights of quads 2p (low
 * nibbles) and 2p+1 (high), unpacked in registers. */
#define FOR_COLUMN(j, OP)                                                                          \
    do {                                                                                           \
        OP(0, j, acc0_##j);                                                                        \
        OP(1, j, acc1_##j);                                                                        \
        OP(2, j, acc2_##j);                                                                        \
        OP(3, j, acc3_##j);                                                                        \
        OP(4, j, acc4_##j);                                                                        \
        OP(5, j, acc5_##j);                                                                        \
    } while (0)
#define OP_DOT_PACKED(t, j, acc)                                                                   \
    do {                                                                                           \
        if (MR > t) {                                                                              \
            const int8_t *at = a + (t)*stride + 8 * p;                                             \
            acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(load_i32(at)));                   \
            acc = _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(load_i32(at + 4)));               \
        }                                                                                          \
    } while (0)
#define COLUMN_DOT_PACKED(j)                                                                       \
    do {                                                                                           \
        if (NV > j) {                                                                              \
            __m512i v = _mm512_load_si512(p##j + (size_t)p * Q_QUAD_BYTES);                        \
            __m512i lo = _mm512_and_si512(v, low);                                                 \
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);                           \
            FOR_COLUMN(j, OP_DOT_PACKED);                                                          \
        }                                                                                          \
    } while (0)

/* The sums leave the registers before rescaling: with rescaling's own
 * registers on top of 24 live sums GCC spills inside the loop instead. */
#define OP_SPILL(t, j, acc) _mm512_store_si512(sums[t][j], acc)
/* Float sums += float(int sum) * w_scale * a_scale, straight-line code. */
#define OP_RESCALE(t, j, acc)                                                                      \
    do {                                                                                           \
        float *yp = ta->out + (size_t)(t)*PANEL_FLOATS + 16 * (j);                                 \
        __m512 prod =                                                                              \
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums[t][j])), w_scale[j]);          \
        __m512 a_scale = _mm512_set1_ps(a_scales[(size_t)(t)*n_groups]);                           \
        __m512 prev = store ? _mm512_setzero_ps() : _mm512_load_ps(yp);                            \
        _mm512_store_ps(yp, _mm512_fmadd_ps(prod, a_scale, prev));                                 \
    } while (0)

/* One segment on an MR x NV tile: integer sums, then rescaled into y. */
static inline __attribute__((always_inline)) void tile_segment(const int MR, const int NV,
                                                               const struct tile_args *ta,
                                                               const struct q_seg *seg, bool store)
{
    const struct q_act *act = ta->act;
    const int n_groups = act->layout.n_groups;
    const size_t stride = (size_t)act->layout.act_row_bytes;
    const int8_t *a = act->values + (size_t)ta->t0 * stride + seg->a_offset;
    const int bias = seg->first ? (seg->bits == 4 ? Q_INT4_BIAS : Q_INT8_BIAS) : 0;
    __m512i acc0_0, acc0_1, acc0_2, acc0_3, acc1_0, acc1_1, acc1_2, acc1_3, acc2_0, acc2_1, acc2_2,
        acc2_3, acc3_0, acc3_1, acc3_2, acc3_3, acc4_0, acc4_1, acc4_2, acc4_3, acc5_0, acc5_1,
        acc5_2, acc5_3;
    FOR_TILE(OP_START);
    const uint8_t *p0 = seg->w[0], *p1 = seg->w[NV > 1 ? 1 : 0], *p2 = seg->w[NV > 2 ? 2 : 0],
                  *p3 = seg->w[NV > 3 ? 3 : 0];
    if (seg->packed) {
        const __m512i low = _mm512_set1_epi8(0x0f);
        for (int p = 0; p < seg->quads / 2; p++) {
            COLUMN_DOT_PACKED(0);
            COLUMN_DOT_PACKED(1);
            COLUMN_DOT_PACKED(2);
            COLUMN_DOT_PACKED(3);
        }
    }
    for (int q = 0; q < (seg->packed ? 0 : seg->quads); q++) {
        const size_t off = (size_t)q * Q_QUAD_BYTES;
        __m512i w0 = _mm512_load_si512(p0 + off);
        __m512i w1 = NV > 1 ? _mm512_load_si512(p1 + off) : w0;
        __m512i w2 = NV > 2 ? _mm512_load_si512(p2 + off) : w0;
        __m512i w3 = NV > 3 ? _mm512_load_si512(p3 + off) : w0;
        ROW_DOT(0);
        ROW_DOT(1);
        ROW_DOT(2);
        ROW_DOT(3);
        ROW_DOT(4);
        ROW_DOT(5);
    }
    _Alignas(64) int32_t sums[GEMM_MR][GEMM_NV][16];
    FOR_TILE(OP_SPILL);
    const float *a_scales = act->scales + (size_t)ta->t0 * n_groups + seg->g;
    __m512 w_scale[GEMM_NV];
    for (int j = 0; j < NV; j++) w_scale[j] = _mm512_loadu_ps(seg->w_scale[j]);
    FOR_TILE(OP_RESCALE);
}

static inline __attribute__((always_inline)) void
tile(const int MR, const int NV, const struct tile_args *ta, const struct q_seg *segs, int n_segs)
{
    for (int s = 0; s < n_segs; s++) tile_segment(MR, NV, ta, &segs[s], ta->fresh && s == 0);
}

static void unpack_int4(const uint8_t *restrict src, int quads, uint8_t *restrict dst)
{
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int p = 0; p < quads / 2; p++) {
        __m512i v = _mm512_load_si512(src + (size_t)p * Q_QUAD_BYTES);
        _mm512_store_si512(dst + (size_t)2 * p * Q_QUAD_BYTES, _mm512_and_si512(v, low));
        _mm512_store_si512(dst + (size_t)(2 * p + 1) * Q_QUAD_BYTES,
                           _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
    }
}

/* One function per tile shape, chosen by the number of tokens and blocks left. */
typedef void tile_fn(const struct tile_args *ta, const struct q_seg *segs, int n_segs);

#define TILE(MR, NV)                                                                               \
    static void tile_##MR##_##NV(const struct tile_args *ta, const struct q_seg *segs, int n)      \
    {                                                                                              \
        tile(MR, NV, ta, segs, n);                                                                 \
    }
#define TILE_ROW(MR) TILE(MR, 1) TILE(MR, 2) TILE(MR, 3) TILE(MR, 4)
TILE_ROW(1)
TILE_ROW(2)
TILE_ROW(3) TILE_ROW(4) TILE_ROW(5) TILE_ROW(6)
#define TILE_REF(MR)                                                                               \
    {                                                                                              \
        tile_##MR##_1, tile_##MR##_2, tile_##MR##_3, tile_##MR##_4                                 \
    }
    static tile_fn *const tiles[GEMM_MR][GEMM_NV] = {TILE_REF(1), TILE_REF(2), TILE_REF(3),
                                                     TILE_REF(4), TILE_REF(5), TILE_REF(6)};

void q_gemm_avx512(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                   int block_begin, int block_end, float *y, int ldy, bool accumulate)
{
    _Alignas(64) uint8_t buf[GEMM_NV * Q_CHUNK_BLOCK_BYTES];
    struct q_seg segs[Q_CHUNK_MAX_SEGS];
    int tokens = t_end - t_begin < GEMM_TOKEN_BLOCK ? t_end - t_begin : GEMM_TOKEN_BLOCK;
    float *sums = util_aligned_alloc((size_t)tokens * PANEL_FLOATS * sizeof *sums);
    bool unpack = t_end - t_begin > GEMM_DIRECT_MAX_TOKENS;
    for (int block = block_begin; block < block_end; block += GEMM_NV) {
        int nv = block_end - block < GEMM_NV ? block_end - block : GEMM_NV;
        for (int tb = t_begin; tb < t_end; tb += GEMM_TOKEN_BLOCK) {
            int tb_end = t_end - tb < GEMM_TOKEN_BLOCK ? t_end : tb + GEMM_TOKEN_BLOCK;
            struct tile_args ta = {.act = act, .fresh = true};
            struct q_cursor cur = {0, 0};
            int n_segs;
            while ((n_segs = q_chunk_plan(layer, block, nv, &cur, segs)) > 0) {
                if (unpack) q_chunk_unpack(segs, n_segs, nv, buf, unpack_int4);
                /* Tiles of nearly equal height: 8 tokens as 4 + 4, not 6 + 2. */
                int most = unpack ? GEMM_MR : GEMM_DIRECT_MR;
                for (int t = tb, mr; t < tb_end; t += mr) {
                    int tiles_left = (tb_end - t + most - 1) / most;
                    mr = (tb_end - t + tiles_left - 1) / tiles_left;
                    ta.t0 = t;
                    ta.out = sums + (size_t)(t - tb) * PANEL_FLOATS;
                    tiles[mr - 1][nv - 1](&ta, segs, n_segs);
                }
                ta.fresh = false;
            }
            for (int j = 0; j < nv; j++) {
                __mmask16 mask = q_block_mask(layer, block + j);
                for (int t = tb; t < tb_end; t++) {
                    float *yp = y + (size_t)t * ldy + (size_t)(block + j) * Q_BLOCK_ROWS;
                    __m512 v = _mm512_load_ps(sums + (size_t)(t - tb) * PANEL_FLOATS + 16 * j);
                    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, yp));
                    _mm512_mask_storeu_ps(yp, mask, v);
                }
            }
        }
    }
    util_aligned_free(sums);
}

/*
 * gemm_amx.c: the AMX-INT8 kernel.
 *
 * Tiles: four int32 accumulators C (2 x 2: 32 tokens x 32 output rows), two
 * activation tiles A (16 tokens x 64 channels, read in place from the
 * quantized activations, whose groups start on 64 bytes and are
 * zero-padded), two weight tiles B (16 quads x 16 rows, the packed quad
 * layout). TDPBSSD multiplies signed bytes, so the weights of a chunk are
 * unpacked to signed int8 first, each group zero-padded to 64 channels.
 * After each group the accumulators go to memory and are rescaled into y
 * with AVX-512, as the other kernels do.
 *
 * GCC 12's _tile_loadconfig declares that it reads 8 bytes, so the stores
 * that fill the 64-byte configuration may be dropped and the first tile
 * load dies with SIGILL: the configuration is loaded by inline asm with a
 * 64-byte memory operand instead.
 *
 * The tile operations go through AMX_* macros so that a test can compile
 * this file against a software model of the tiles (Q_AMX_EMULATE) on a CPU
 * without AMX.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define AMX_TILE_K   64   /* channels per tile step */
#define AMX_KC       1024 /* padded channels per chunk: 2 blocks x 16 KB of weights */
#define AMX_MAX_SEGS (AMX_KC / AMX_TILE_K)
#define AMX_NV       Q_PANEL_AMX

_Static_assert(AMX_NV == 2, "the tile code spells out 2 x 2 accumulators");
_Static_assert(AMX_KC >= Q_MAX_GROUP, "an int4 group fits a chunk");
_Static_assert(Q_ACT_GROUP_ALIGN == AMX_TILE_K, "activation groups start on a tile step");

/* The 64-byte tile configuration (palette 1). */
struct amx_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
_Static_assert(sizeof(struct amx_config) == 64, "ldtilecfg reads 64 bytes");

#ifndef Q_AMX_EMULATE
#define AMX_LOAD_CONFIG(cfg)       __asm__ volatile("ldtilecfg %0" : : "m"(*(cfg)))
#define AMX_RELEASE()              _tile_release()
#define AMX_ZERO(t)                _tile_zero(t)
#define AMX_LOAD(t, base, stride)  _tile_loadd(t, base, stride)
#define AMX_STORE(t, base, stride) _tile_stored(t, base, stride)
#define AMX_DPBSSD(c, a, b)        _tile_dpbssd(c, a, b)
#endif

/* Tile numbers: macros, since the intrinsics paste them into the asm text. */
#define C00 0
#define C01 1
#define C10 2
#define C11 3
#define A0  4
#define A1  5
#define B0  6
#define B1  7

/* A run of channels of one group, padded to whole tile steps. */
struct amx_seg {
    int g;
    int a_offset;            /* 64-aligned byte offset in activation rows */
    int steps;               /* tile steps of AMX_TILE_K channels */
    const int8_t *w[AMX_NV]; /* B tiles of each block: 1 KB a step, rows 64 bytes apart */
    const float *w_scale[AMX_NV];
};

/* Unpacks `quads` quads of group grp, from quad q0 on, of one block to
 * signed bytes (Q_QUAD_BYTES a quad). */
static void unpack_signed(const struct q_group *grp, const uint8_t *blk, int q0, int quads,
                          int8_t *dst)
{
    const __m512i low = _mm512_set1_epi8(0x0f), four = _mm512_set1_epi8(Q_INT4_BIAS);
    const __m512i flip = _mm512_set1_epi8((char)Q_INT8_BIAS);
    for (int q = 0; q < quads; q++) {
        int quad = q0 + q;
        __m512i v;
        if (grp->bits == 8) {
            v = _mm512_xor_si512(_mm512_load_si512(blk + (size_t)quad * Q_QUAD_BYTES), flip);
        } else {
            v = _mm512_load_si512(blk + (size_t)(quad / 2) * Q_QUAD_BYTES);
            if (quad % 2) v = _mm512_srli_epi16(v, 4);
            v = _mm512_sub_epi8(_mm512_and_si512(v, low), four);
        }
        _mm512_store_si512(dst + (size_t)q * Q_QUAD_BYTES, v);
    }
}

/* Plans (and unpacks) the chunk of blocks [block, block + nv) from *cur on,
 * like q_chunk_plan but signed and padded to tile steps. */
static int amx_chunk_plan(const struct q_linear *layer, int block, int nv, struct q_cursor *cur,
                          int8_t *buf, struct amx_seg *segs)
{
    const struct q_layout *lay = &layer->layout;
    int n_segs = 0, used = 0;
    while (cur->g < lay->n_groups && used < AMX_KC) {
        const struct q_group *grp = &lay->groups[cur->g];
        int take = grp->len - cur->c;
        if (q_round_up(take, AMX_TILE_K) > AMX_KC - used) {
            if (grp->bits == 4) break; /* int4 groups are never split */
            take = AMX_KC - used;      /* a multiple of AMX_TILE_K */
        }
        int padded = q_round_up(take, AMX_TILE_K);
        struct amx_seg *seg = &segs[n_segs++];
        seg->g = cur->g;
        seg->a_offset = grp->act_offset + cur->c;
        seg->steps = padded / AMX_TILE_K;
        for (int j = 0; j < nv; j++) {
            int8_t *dst = buf + (size_t)j * AMX_KC * Q_BLOCK_ROWS + (size_t)used / 4 * Q_QUAD_BYTES;
            const uint8_t *blk =
                layer->packed + (size_t)(block + j) * lay->block_bytes + grp->w_offset;
            unpack_signed(grp, blk, cur->c / 4, take / 4, dst);
            memset(dst + (size_t)take / 4 * Q_QUAD_BYTES, 0,
                   (size_t)(padded - take) / 4 * Q_QUAD_BYTES);
            seg->w[j] = dst;
            seg->w_scale[j] = q_linear_scales(layer, block + j, cur->g);
        }
        used += padded;
        cur->c += take;
        if (cur->c == grp->len) {
            cur->g++;
            cur->c = 0;
        }
    }
    return n_segs;
}

/* y rows [t0, t_end) of the tile, columns of blocks j < nv: add (or store,
 * when fresh) float(c) * w_scale * a_scale. */
static void amx_rescale(const struct q_act *act, const struct amx_seg *seg, int32_t c[4][16][16],
                        int t0, int t_end, int nv, const __mmask16 *mask, float *y, int n,
                        bool fresh)
{
    const int n_groups = act->layout.n_groups;
    for (int j = 0; j < nv; j++) {
        const __m512 w_scale = _mm512_loadu_ps(seg->w_scale[j]);
        for (int t = t0; t < t_end && t < t0 + 32; t++) {
            int i = (t - t0) / 16, r = (t - t0) % 16;
            float *yp = y + (size_t)(t - t0) * n + 16 * j;
            __m512 a_scale = _mm512_set1_ps(act->scales[(size_t)t * n_groups + seg->g]);
            __m512 prod =
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[2 * i + j][r])), w_scale);
            __m512 prev = fresh ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[j], yp);
            _mm512_mask_storeu_ps(yp, mask[j], _mm512_fmadd_ps(prod, a_scale, prev));
        }
    }
}

/* The product of tokens [t_begin, t_end) and blocks [block_begin,
 * block_end) stored at y: y points at (t_begin, block_begin's first column). */
static void gemm_amx_store(const struct q_linear *layer, const struct q_act *act, int t_begin,
                           int t_end, int block_begin, int block_end, float *y, int ldy);

/* Accumulating, the product is made first and added to y last, as the
 * other kernels add it: the same bits from every kernel. */
void q_gemm_amx(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                int block_begin, int block_end, float *y, int ldy, bool accumulate)
{
    if (!accumulate) {
        gemm_amx_store(layer, act, t_begin, t_end, block_begin, block_end,
                       y + (size_t)t_begin * ldy + (size_t)block_begin * Q_BLOCK_ROWS, ldy);
        return;
    }
    int c0 = block_begin * Q_BLOCK_ROWS;
    int c1 = block_end * Q_BLOCK_ROWS < layer->n ? block_end * Q_BLOCK_ROWS : layer->n;
    int cols = (block_end - block_begin) * Q_BLOCK_ROWS, rows = t_end - t_begin;
    float *part = util_xmalloc((size_t)rows * cols * sizeof(float)); /* heap: reused, not mapped anew */
    gemm_amx_store(layer, act, t_begin, t_end, block_begin, block_end, part, cols);
    for (int t = 0; t < rows; t++)
        for (int c = c0; c < c1; c++)
            y[(size_t)(t_begin + t) * ldy + c] += part[(size_t)t * cols + c - c0];
    free(part);
}

static void gemm_amx_store(const struct q_linear *layer, const struct q_act *act, int t_begin,
                           int t_end, int block_begin, int block_end, float *y, int ldy)
{
    struct amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    AMX_LOAD_CONFIG(&cfg);
    _Alignas(64) int8_t buf[AMX_NV * AMX_KC * Q_BLOCK_ROWS];
    _Alignas(64) int32_t c[4][16][16];
    struct amx_seg segs[AMX_MAX_SEGS];
    const size_t stride = (size_t)act->layout.act_row_bytes;
    for (int block = block_begin; block < block_end; block += AMX_NV) {
        int nv = block_end - block < AMX_NV ? block_end - block : AMX_NV;
        __mmask16 mask[AMX_NV];
        for (int j = 0; j < nv; j++) mask[j] = q_block_mask(layer, block + j);
        struct q_cursor cur = {0, 0};
        bool fresh = true;
        int n_segs;
        while ((n_segs = amx_chunk_plan(layer, block, nv, &cur, buf, segs)) > 0) {
            for (int t0 = t_begin; t0 < t_end; t0 += 32) {
                /* Rows past t_end are read (act has Q_ACT_ROW_ALIGN spare rows) but never stored.
                 */
                bool two_rows = t_end - t0 > 16, two_cols = nv == 2;
                const int8_t *a = act->values + (size_t)t0 * stride;
                float *yt =
                    y + (size_t)(t0 - t_begin) * ldy + (size_t)(block - block_begin) * Q_BLOCK_ROWS;
                for (int s = 0; s < n_segs; s++) {
                    const struct amx_seg *seg = &segs[s];
                    AMX_ZERO(C00);
                    AMX_ZERO(C01);
                    AMX_ZERO(C10);
                    AMX_ZERO(C11);
                    for (int step = 0; step < seg->steps; step++) {
                        const int8_t *as = a + seg->a_offset + (size_t)step * AMX_TILE_K;
                        size_t w_off = (size_t)step * (AMX_TILE_K / 4) * Q_QUAD_BYTES;
                        AMX_LOAD(A0, as, stride);
                        AMX_LOAD(B0, seg->w[0] + w_off, Q_QUAD_BYTES);
                        AMX_DPBSSD(C00, A0, B0);
                        if (two_cols) {
                            AMX_LOAD(B1, seg->w[1] + w_off, Q_QUAD_BYTES);
                            AMX_DPBSSD(C01, A0, B1);
                        }
                        if (two_rows) {
                            AMX_LOAD(A1, as + 16 * stride, stride);
                            AMX_DPBSSD(C10, A1, B0);
                            if (two_cols) AMX_DPBSSD(C11, A1, B1);
                        }
                    }
                    AMX_STORE(C00, c[0], 64);
                    AMX_STORE(C01, c[1], 64);
                    AMX_STORE(C10, c[2], 64);
                    AMX_STORE(C11, c[3], 64);
                    amx_rescale(act, seg, c, t0, t_end, nv, mask, yt, ldy, fresh && s == 0);
                }
            }
            fresh = false;
        }
    }
    AMX_RELEASE();
}

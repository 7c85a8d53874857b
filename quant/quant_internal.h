/*
 * quant_internal.h: the layouts that quant's files and kernels share. Not a
 * public interface: only quant/ and its tests include it.
 *
 * Channel groups. A row of k channels (in the layer's channel order) is a
 * sequence of groups: W4A4 has int4 groups of group_size channels (the last
 * one may be shorter) followed by one int8 group of the n_outlier channels;
 * W8A8 has one int8 group of all k channels. Each group has one scale per
 * output row and one per token.
 *
 * Packed weights. Output rows are taken 16 at a time ("column blocks" of
 * the product; rows past n are zero). A block stores its groups one after
 * the other; a group stores its channels four at a time ("quads"), each quad
 * as 64 bytes: byte 4r+i holds channel 4q+i of row r. That is the layout of
 * one AVX-512 VNNI operand and of one row of an AMX B tile. Values are
 * biased to be unsigned: int4 w is stored as the nibble w+8, int8 w as the
 * byte w+128. In an int4 group quads 2p and 2p+1 share 64 bytes: quad 2p in
 * the low nibbles, 2p+1 in the high ones.
 *
 * Quantized activations. One row per token, int8 (int4 values stored one a
 * byte), each group starting at a multiple of 64 bytes and zero-padded up to
 * the next one (AMX reads whole 64-byte tile rows); Q_ACT_ROW_ALIGN spare
 * rows follow the last token so that 32-row tile loads never leave the
 * buffer (what they read past the last token is never stored).
 */
#ifndef LLMD_QUANT_INTERNAL_H
#define LLMD_QUANT_INTERNAL_H

#include "quant/quant.h"

#include <math.h>

/* OpenMP when built with it (the fuzz build is not): one thread otherwise. */
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_in_parallel(void)
{
    return 0;
}
static inline int omp_get_max_threads(void)
{
    return 1;
}
static inline int omp_get_num_threads(void)
{
    return 1;
}
static inline int omp_get_thread_num(void)
{
    return 0;
}
#endif

#define Q_BLOCK_ROWS      16               /* output rows per packed column block */
#define Q_QUAD_BYTES      64               /* one quad of a block: 16 rows x 4 channels */
#define Q_CHANNEL_ALIGN   16               /* k, group_size and n_outlier are multiples of it */
#define Q_MAX_K           65536            /* keeps every int32 partial sum in range */
#define Q_MAX_GROUP       Q_GROUP_SIZE_MAX /* keeps the AVX2 int16 partial sums in range */
#define Q_ACT_GROUP_ALIGN 64               /* activation groups start on a 64-byte boundary */
#define Q_ACT_ROW_ALIGN   32  /* activation rows: a multiple of it, and as many spare */
#define Q_INT4_MAX        7   /* symmetric int4: -7..7 */
#define Q_INT8_MAX        127 /* symmetric int8: -127..127 */
#define Q_INT4_BIAS       8
#define Q_INT8_BIAS       128

_Static_assert(Q_QUAD_BYTES == Q_BLOCK_ROWS * 4, "a quad is 4 channels of every row of a block");

struct q_group {
    int start;       /* first channel, in the layer's channel order */
    int len;         /* channels, a multiple of Q_CHANNEL_ALIGN */
    int bits;        /* the weights': 4 or 8 */
    int a_bits;      /* the activations': as bits, or 8 over int4 weights (W4A8) */
    int act_offset;  /* byte offset in an activation row */
    size_t w_offset; /* byte offset in a packed column block */
};

struct q_layout {
    int k;
    int n_groups;
    struct q_group *groups; /* n_groups, owned */
    int act_row_bytes;      /* bytes of one activation row, padding included */
    size_t block_bytes;     /* bytes of one packed column block */
};

/* Fills lay for a checked format and width (q_format_check() == 0); free
 * with q_layout_free. */
void q_layout_init(struct q_layout *lay, const struct q_format *format, int k);
void q_layout_free(struct q_layout *lay);

static inline int q_round_up(int x, int to)
{
    return (x + to - 1) / to * to;
}

/* The scale of a group from its largest magnitude: int4 groups clip, int8
 * ones keep the full range. Zero when the group is all zero. */
static inline float q_group_scale(float absmax, int bits, float clip)
{
    if (!(absmax > 0.0f) || !isfinite(absmax)) return 0.0f;
    return bits == 4 ? clip * absmax / Q_INT4_MAX : absmax / Q_INT8_MAX;
}

/* Round-to-nearest of v (already divided by the scale), clamped to
 * -qmax..qmax; NaN becomes -qmax rather than undefined behaviour. */
static inline int q_round_clamp(float v, int qmax)
{
    v = fminf(fmaxf(v, (float)-qmax), (float)qmax);
    return (int)rintf(v);
}

static inline int q_group_qmax(int bits)
{
    return bits == 4 ? Q_INT4_MAX : Q_INT8_MAX;
}

/* FNV-1a of a channel order; the identity (NULL) hashes like 0,1,2,... */
uint64_t q_perm_hash(const int *perm, int k);

/* ------------------------------------------------------------ activations */

struct q_act {
    struct q_format format;
    struct q_layout layout;
    int k, max_m;
    int m;              /* tokens of the last quantization */
    int rows;           /* allocated rows: see Q_ACT_ROW_ALIGN */
    int8_t *values;     /* rows x layout.act_row_bytes */
    float *scales;      /* max_m x n_groups */
    int32_t *sums;      /* max_m x n_groups: sum of the group's quantized values */
    uint64_t perm_hash; /* channel order of the last quantization */
    bool perm_known;    /* false after q_act_quantize_swiglu (order not given) */
};

/* ---------------------------------------------------------------- weights */

struct q_linear {
    struct q_format format;
    struct q_layout layout;
    int n, k;
    int n_blocks; /* ceil(n / Q_BLOCK_ROWS) */
    int *perm;    /* k entries, or NULL for the identity; owned */
    uint64_t perm_hash;
    uint8_t *packed; /* n_blocks x layout.block_bytes, 64-byte aligned */
    float *scales;   /* n_blocks x n_groups x Q_BLOCK_ROWS */
    bool borrowed;   /* packed and scales belong to someone else (q_linear_view) */
};

/* True when perm holds each of 0..k-1 once. */
bool q_is_permutation(const int *perm, int k);

/* An empty layer (weights zero) of a checked format, for the quantizers and
 * the loader to fill. */
struct q_linear *q_linear_alloc(int n, int k, const struct q_format *format, const int *perm);

/* A layer whose scales and packed weights are someone else's memory, read
 * in place (packed 64-byte aligned). */
struct q_linear *q_linear_alloc_view(int n, int k, const struct q_format *format, const int *perm,
                                     const void *scales, const void *packed);

/* Stores the quantized values q (k entries, layer order) and the group
 * scales (n_groups entries) of output row `row`. */
void q_linear_set_row(struct q_linear *layer, int row, const int8_t *q, const float *scales);

static inline const float *q_linear_scales(const struct q_linear *layer, int block, int g)
{
    return layer->scales + ((size_t)block * layer->layout.n_groups + g) * Q_BLOCK_ROWS;
}

/* The integer weight of output row `row` at channel `c` of group g (layer
 * order): what every kernel multiplies. Plain and slow; for the reference. */
static inline int q_linear_value(const struct q_linear *layer, int row, int g, int c)
{
    const struct q_group *grp = &layer->layout.groups[g];
    const uint8_t *blk =
        layer->packed + (size_t)(row / Q_BLOCK_ROWS) * layer->layout.block_bytes + grp->w_offset;
    int r = row % Q_BLOCK_ROWS, quad = c / 4, i = 4 * r + c % 4;
    if (grp->bits == 8) return (int)blk[(size_t)quad * Q_QUAD_BYTES + i] - Q_INT8_BIAS;
    uint8_t byte = blk[(size_t)(quad / 2) * Q_QUAD_BYTES + i];
    return (int)((quad % 2 ? byte >> 4 : byte) & 0x0f) - Q_INT4_BIAS;
}

/* Scale of token t in group g, and its quantized row. */
static inline float q_act_scale(const struct q_act *act, int t, int g)
{
    return act->scales[(size_t)t * act->layout.n_groups + g];
}
static inline const int8_t *q_act_row(const struct q_act *act, int t)
{
    return act->values + (size_t)t * act->layout.act_row_bytes;
}

/* --------------------------------------------------------------- kernels */

/* Computes rows [t_begin, t_end) of y (m, n; row t at y + t * ldy), the
 * columns of column blocks [block_begin, block_end); with `accumulate` adds
 * them to what y holds. One thread; q_gemm splits the work. */
typedef void q_kernel_fn(const struct q_linear *layer, const struct q_act *act, int t_begin,
                         int t_end, int block_begin, int block_end, float *y, int ldy,
                         bool accumulate);

q_kernel_fn q_gemm_scalar, q_gemm_avx2, q_gemm_avxvnni, q_gemm_avx512, q_gemm_amx;

/* q_gemm_jobs with a given kernel (must be available): for tests and
 * checks that compare the kernels on the jobs interface. */
void q_gemm_jobs_with(enum q_kernel kernel, const struct q_gemm_job *jobs, int n_jobs, int m,
                      int ith, int nth);

/* Column blocks a kernel computes side by side (threads split on it). */
#define Q_PANEL_AVX2    1
#define Q_PANEL_AVXVNNI 1
#define Q_PANEL_AVX512  4
#define Q_PANEL_AMX     2
#define Q_MAX_PANEL     4

/* ----------------------------------------------- chunks (AVX2, AVX-512) */

/* The SIMD kernels walk the channels in chunks of at most this many; the
 * int4 groups of a chunk are unpacked to one byte a weight first (8 KB a
 * column block, in L1 with the panel's others), then reused by every token. */
#define Q_CHUNK_CHANNELS    512
#define Q_CHUNK_MAX_SEGS    (Q_CHUNK_CHANNELS / Q_CHANNEL_ALIGN)
#define Q_CHUNK_BLOCK_BYTES (Q_CHUNK_CHANNELS * Q_BLOCK_ROWS) /* unpacked bytes per block */

/* A run of channels of one group inside a chunk. */
struct q_seg {
    int g;        /* its group */
    int bits;     /* the group's bits */
    bool first;   /* starts the group: the group's bias correction goes here */
    int a_offset; /* byte offset of its first channel in an activation row */
    int quads;    /* channels / 4 */
    /* True: w points at packed int4 (two quads in 64 bytes, see above).
     * False: quads are Q_QUAD_BYTES apart, one biased unsigned byte a weight
     * (int8 groups, or int4 after q_chunk_unpack). */
    bool packed;
    const uint8_t *w[Q_MAX_PANEL];     /* first quad of each column block of the panel */
    const float *w_scale[Q_MAX_PANEL]; /* the blocks' 16 row scales of group g */
};

/* Where the next chunk starts: group g, channel c within it. */
struct q_cursor {
    int g, c;
};

/* Plans the chunk of column blocks [block, block + nv) that starts at *cur
 * and advances it: segments covering at most Q_CHUNK_CHANNELS channels, all
 * pointing at the packed weights (int4 groups stay packed). Asks the memory
 * for the next chunk meanwhile. Returns the number of segments, 0 at the
 * end. */
int q_chunk_plan(const struct q_linear *layer, int block, int nv, struct q_cursor *cur,
                 struct q_seg *segs);

/* Unpacks `quads` quads of packed int4 (pairs sharing 64 bytes) to one
 * biased byte a weight; each kernel brings its own, in its own ISA. */
typedef void q_unpack_fn(const uint8_t *restrict src, int quads, uint8_t *restrict dst);

/* Unpacks the int4 segments of a planned chunk into buf (nv x
 * Q_CHUNK_BLOCK_BYTES, 64-byte aligned) and points them there: worth it when
 * many tokens reuse the weights. */
void q_chunk_unpack(struct q_seg *segs, int n_segs, int nv, uint8_t *buf, q_unpack_fn *unpack);

/* Lane masks (one bit a column) of the nv blocks of a panel starting at
 * `block`: all 16 columns except past n. */
static inline uint16_t q_block_mask(const struct q_linear *layer, int block)
{
    int cols = layer->n - block * Q_BLOCK_ROWS;
    return cols >= Q_BLOCK_ROWS ? 0xffff : (uint16_t)((1u << cols) - 1);
}

#endif

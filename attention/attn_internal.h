/*
 * attn_internal.h: what the attention module's files share with each other
 * and with its tests: the page layout, the kernel table, and the pieces of
 * attn_forward (page selection, attention over a given page list) exposed so
 * that tests can pin each one down. Not for use outside attention/ and tests.
 */
#ifndef LLMD_ATTN_INTERNAL_H
#define LLMD_ATTN_INTERNAL_H

#include "attention/attention.h"
#include "util/util.h"

#define ATTN_MAX_PAGE_SIZE 256 /* page_size is a multiple of 16 up to this */
#define ATTN_MAX_HEAD_DIM  256 /* head_dim is a multiple of 16 up to this */
#define ATTN_CHUNK         16  /* SIMD kernels work on 16 tokens or channels at a time */

/* ------------------------------------------------------------ page layout */

/*
 * A page holds, for each layer and KV head (layer-major), one block. A block
 * is laid out for the kernels, each section 64-byte aligned:
 *
 *   k        K transposed: head_dim rows (channels) of page_size tokens, so a
 *            SIMD register holds one channel of 16 tokens and a page's scores
 *            come out without horizontal sums
 *   v        V: page_size rows (tokens) of head_dim channels
 *   k_scale  per token (int8, int4); k_zero per token (int4): x = c*scale + zero
 *   v_scale, v_zero  likewise
 *
 * Beside the pool, a table indexed by page id holds each page's Quest
 * metadata, per layer and KV head: per channel the max of the page's keys
 * as f16 rounded up (kmax), then the min rounded down (kmin). The f16
 * bounds are still true bounds of the f32 keys and read half the bytes.
 * The table is (layer, KV head, page)-major so that scoring a sequence's
 * pages, usually handed out in order, streams through memory instead of
 * hopping a page apart for every 256 bytes (the page's blocks are 100 KB
 * apart); it lives and is reset with its page.
 *
 * INT4 rows are packed in chunks of 16 elements in 8 bytes: byte j of a chunk
 * holds element j in its low nibble and element j+8 in its high nibble, so
 * one 8-byte load unpacks into 16 lanes in order. K rows pack along tokens,
 * V rows along channels. INT8 is signed symmetric (zero is 0).
 */
struct attn_block_layout {
    size_t k, v, k_scale, k_zero, v_scale, v_zero;
    size_t bytes;
};

/* What names a published page (prefix.c). */
struct attn_page_key {
    uint64_t hash, parent; /* its name, and its parent page's (the salt for the first) */
    bool published;        /* in the table */
};

struct attn_cache {
    struct attn_cache_config config;
    struct attn_block_layout layout;
    size_t page_bytes;
    unsigned char *pool; /* n_pages * page_bytes, 64-byte aligned */
    int *free_pages;     /* stack of free page ids; the top is reused first */
    int n_free;
    uint16_t *bounds; /* (n_layers, n_kv_heads, n_pages, 2, head_dim): kmax then kmin */
    uint16_t *fill;   /* (n_pages, n_layers, n_kv_heads): leading tokens written and folded
                         into the bounds (per KV head: heads are written by different threads) */
    /* prefix caching (prefix.c) */
    int *refs;                   /* (n_pages) sequences holding the page */
    struct attn_page_key *keys;  /* (n_pages) */
    int32_t *key_tokens;         /* (n_pages, page_size) token ids of published pages */
    int *table;                  /* (table_size) hash -> published page, -1 empty */
    int table_size;              /* a power of 2, at least twice n_pages */
    int *lru_prev, *lru_next;    /* (n_pages) idle published pages, oldest first */
    int lru_head, lru_tail, n_lru;
    int n_published, n_shared;
    int64_t evictions;
};

struct attn_seq {
    attn_cache *cache;
    int *pages; /* page table: pages[i] holds positions [i*page_size, (i+1)*page_size) */
    int n_pages, cap;
    int len;         /* committed tokens */
    int n_published; /* leading pages whose names are known (published, or adopted) */
    uint64_t chain;  /* the name of page n_published - 1 */
};

/* The page pool's side of prefix caching (prefix.c): every page handed out
 * or given back goes through these, so that idle published pages are kept
 * until the pool needs them. */
void attn_prefix_init(attn_cache *cache);
void attn_prefix_free(attn_cache *cache);
int attn_prefix_take_page(attn_cache *cache);           /* a free page, or evicts the LRU one */
void attn_prefix_drop_page(attn_cache *cache, int page); /* one holder fewer */
void attn_prefix_unpublish(attn_cache *cache, int page); /* before a page is changed */

/* One page's block of one layer and KV head, read-only, as the kernels see it. */
struct attn_block {
    const void *k;
    const void *v;
    const float *k_scale, *k_zero, *v_scale, *v_zero;
};

/* Max and min for hot loops: libm's fmaxf has NaN rules that gcc will not
 * inline, and a call per element costs more than the work. A NaN in `b`
 * is returned, one in `a` is not; callers say where NaN can come in. */
static inline float attn_maxf(float a, float b)
{
    return a > b ? a : b;
}
static inline float attn_minf(float a, float b)
{
    return a < b ? a : b;
}

/* INT4 element i of a row packed in 16-element chunks. */
static inline size_t attn_int4_byte(int i)
{
    return (size_t)(i / 16) * 8 + (i % 16) % 8;
}
static inline int attn_int4_shift(int i)
{
    return (i % 16) >= 8 ? 4 : 0;
}
static inline int attn_int4_code(const uint8_t *row, int i)
{
    return (row[attn_int4_byte(i)] >> attn_int4_shift(i)) & 0xf;
}

/* Element (channel d, token t) of a block's K, dequantized. */
static inline float attn_block_key(const struct attn_block *b, enum attn_kv_type type, int head_dim,
                                   int page_size, int d, int t)
{
    size_t i = (size_t)d * page_size + t;
    switch (type) {
    case ATTN_KV_F32:
        return ((const float *)b->k)[i];
    case ATTN_KV_F16:
        return util_f16_to_f32(((const uint16_t *)b->k)[i]);
    case ATTN_KV_INT8:
        return ((const int8_t *)b->k)[i] * b->k_scale[t];
    case ATTN_KV_INT4:
        return attn_int4_code((const uint8_t *)b->k + (size_t)d * (page_size / 2), t) *
                   b->k_scale[t] +
               b->k_zero[t];
    }
    (void)head_dim;
    return 0;
}

/* Element (token t, channel d) of a block's V, dequantized. */
static inline float attn_block_value(const struct attn_block *b, enum attn_kv_type type,
                                     int head_dim, int t, int d)
{
    size_t i = (size_t)t * head_dim + d;
    switch (type) {
    case ATTN_KV_F32:
        return ((const float *)b->v)[i];
    case ATTN_KV_F16:
        return util_f16_to_f32(((const uint16_t *)b->v)[i]);
    case ATTN_KV_INT8:
        return ((const int8_t *)b->v)[i] * b->v_scale[t];
    case ATTN_KV_INT4:
        return attn_int4_code((const uint8_t *)b->v + (size_t)t * (head_dim / 2), d) *
                   b->v_scale[t] +
               b->v_zero[t];
    }
    return 0;
}

/* Asks for [p, p + bytes) to be brought into cache: pages are scattered over
 * the pool, so the hardware prefetcher cannot see the next one coming. */
static inline void attn_prefetch(const void *p, size_t bytes)
{
    for (size_t at = 0; at < bytes; at += 64) __builtin_prefetch((const char *)p + at);
}

/* The block of page `page` (a pool page id), `layer`, `kv_head`. Inline:
 * attention asks for one per page it reads. */
static inline unsigned char *attn_cache_block(const attn_cache *cache, int page, int layer,
                                              int kv_head)
{
    size_t index = (size_t)layer * cache->config.n_kv_heads + kv_head;
    return cache->pool + (size_t)page * cache->page_bytes + index * cache->layout.bytes;
}
struct attn_block attn_cache_block_view(const attn_cache *cache, int page, int layer, int kv_head);
/* The Quest bounds of a page at a layer and KV head: head_dim f16 values
 * each, kmin right after kmax. */
static inline uint16_t *attn_cache_bounds(const attn_cache *cache, int page, int layer, int kv_head)
{
    const struct attn_cache_config *c = &cache->config;
    size_t run = (size_t)layer * c->n_kv_heads + kv_head;
    return cache->bounds + (run * c->n_pages + page) * 2 * c->head_dim;
}
static inline const uint16_t *attn_cache_kmax(const attn_cache *cache, int page, int layer,
                                              int kv_head)
{
    return attn_cache_bounds(cache, page, layer, kv_head);
}
static inline const uint16_t *attn_cache_kmin(const attn_cache *cache, int page, int layer,
                                              int kv_head)
{
    return attn_cache_bounds(cache, page, layer, kv_head) + cache->config.head_dim;
}

/* Tokens written at `page`, `layer`, `kv_head`. */
static inline uint16_t *attn_cache_fill(const attn_cache *cache, int page, int layer, int kv_head)
{
    const struct attn_cache_config *c = &cache->config;
    return cache->fill + ((size_t)page * c->n_layers + layer) * c->n_kv_heads + kv_head;
}

/* Reads back, dequantized, the key and value of position `pos` of `seq` at
 * `layer` and `kv_head` into k and v (head_dim floats each). */
void attn_seq_read_kv(const attn_seq *seq, int layer, int kv_head, int pos, float *k, float *v);

/* f32 -> f16 rounded toward +inf / -inf: the Quest bounds stay bounds. */
uint16_t attn_f16_round_up(float x);
uint16_t attn_f16_round_down(float x);

/* ---------------------------------------------------------------- kernels */

/*
 * The online-softmax state of `n` query rows against one KV head: row r has
 * query q[r] (head_dim floats, already multiplied by the softmax scale),
 * running max max[r] (-inf before any key), running sum sum[r] and the
 * unnormalised output acc[r] (head_dim floats).
 */
struct attn_rows {
    int n;
    const float *q;
    float *max, *sum, *acc;
    /* Scratch of 2 * head_dim * page_size floats (or NULL): where a SIMD
     * kernel widens a quantized page's codes once for many rows. */
    float *codes;
};

/* Folds one page into the rows' online softmax. Row r sees the first
 * visible[r] tokens of the page (0: the row skips the page). */
typedef void (*attn_page_fn)(const struct attn_block *block, int head_dim, int page_size,
                             const struct attn_rows *rows, const int *visible);

/* Where the Quest bounds of a run of pages are: page pages[i] has its kmax
 * (head_dim f16) at base + pages[i] * stride, its kmin kmin_offset bytes
 * further. */
struct attn_bounds_view {
    const unsigned char *base;
    size_t stride, kmin_offset;
    const int *pages;
};

/* The bounds of `seq`'s pages at `layer` and `kv_head`, in table order. */
struct attn_bounds_view attn_seq_bounds_view(const attn_seq *seq, int layer, int kv_head);

/* Quest bounds of n_pages pages for n_q queries q (n_q, head_dim):
 * out[i * n_q + j] = sum_c max(q_j[c]*kmax[c], q_j[c]*kmin[c]) over page
 * i's bounds, an upper bound of q_j.k for every key k of the page. */
typedef void (*attn_bound_fn)(const struct attn_bounds_view *view, int n_pages, int head_dim,
                              const float *q, int n_q, float *out);

/* One instruction set's kernels; page[] is indexed by enum attn_kv_type. */
struct attn_kernels {
    const char *name;
    attn_page_fn page[4];
    attn_bound_fn bound;
};

/* The SIMD tables; reach them through the functions below, which check
 * that the CPU runs them. */
extern const struct attn_kernels attn_kernels_avx2_table, attn_kernels_avx512_table;

const struct attn_kernels *attn_kernels_scalar(void);
const struct attn_kernels *attn_kernels_avx2(void);   /* NULL without AVX2, FMA and F16C */
const struct attn_kernels *attn_kernels_avx512(void); /* NULL where the CPU lacks AVX-512 */
/* The widest set this CPU runs, chosen once. */
const struct attn_kernels *attn_kernels_best(void);

/* ---------------------------------------------------- selection and forward */

/* Quest criticality of candidate pages [0, n_cand) of `seq` at `layer` for KV
 * head `kv_head`, from the `group` query heads q (group, head_dim) that share
 * it. scratch: n_cand * group floats. */
void attn_quest_page_scores(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                            int kv_head, const float *q, int group, int n_cand, float *scores,
                            float *scratch);

/* Writes into out, ascending, the indices of the k highest of scores[0, n)
 * (ties: the lower index wins; NaN counts as +inf). Returns min(k, n). */
int attn_select_top_k(const float *scores, int n, int k, int *out);

/* The page-table indices a sparse decode step at position `pos` reads, in
 * ascending order; returns their count (at most max(budget_pages, 1)).
 * QUEST scores with q (group, head_dim); WINDOW ignores q. out: room for
 * max(budget_pages, 1) ints; scratch: (group + 1) * (pos / page_size) floats. */
int attn_select_pages(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                      int kv_head, enum attn_mode mode, int budget_pages, int pos, const float *q,
                      int group, int *out, float *scratch);

/* attn_forward with a given kernel set. */
void attn_forward_kernels(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                          const float *q, const int *pos, int n_q, const struct attn_params *params,
                          float *out, struct attn_stats *stats);

/* One decode query at `pos` attending, for each KV head h, exactly the page-
 * table indices pages[h][0, n_pages[h]) (ascending; the page of `pos` must be
 * last if it is listed, and is read up to pos). The test hook for sparse
 * attention; attn_forward uses it for its sparse calls. */
void attn_forward_pages(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                        const float *q, int pos, const struct attn_params *params,
                        const int *const *pages, const int *n_pages, float *out);

#endif

/*
 * attention: the paged KV cache, Quest page metadata and page selection, and
 * the attention kernels that read the cache.
 *
 * The cache is a pool of fixed-size pages. A page holds `page_size`
 * consecutive tokens of one sequence for every layer and KV head, both K
 * and V, in the cache's storage type (f32, f16, int8 or int4). Beside each
 * page, per layer and KV head, Quest keeps the channel-wise min and max of
 * the page's keys (post-RoPE, unquantized; stored as f16 rounded outward, so
 * they still bound the keys), so a decode query can bound its score against
 * a whole page without reading it.
 *
 * A sequence owns a page table: page i holds positions
 * [i*page_size, (i+1)*page_size). Pages go back to the pool when the
 * sequence is freed. Full pages can be shared between sequences with the
 * same prefix (prefix caching, below): reference-counted, never written
 * once shared, kept after their last holder until the pool needs them.
 *
 * Threading: the cache's pool is not locked. One thread (the engine) creates,
 * grows and frees sequences; attention calls on different sequences may run
 * in parallel (they only read the cache and write their own output).
 *
 * Errors are 0 or -errno (util.h); -ENOSPC means the pool has no free page.
 */
#ifndef LLMD_ATTENTION_H
#define LLMD_ATTENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum attn_kv_type { ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_INT8, ATTN_KV_INT4 };

/* "f32", "f16", "int8", "int4" <-> the enum; parse returns -EINVAL. */
int attn_kv_type_parse(const char *name, enum attn_kv_type *out);
const char *attn_kv_type_name(enum attn_kv_type type);

struct attn_cache_config {
    int n_layers;
    int n_kv_heads;
    int head_dim;  /* must be a multiple of 16, at most 256 */
    int page_size; /* tokens per page; 16 by default; a multiple of 16, at most 256 */
    int n_pages;   /* pages in the pool */
    enum attn_kv_type kv_type;
};

typedef struct attn_cache attn_cache;
typedef struct attn_seq attn_seq;

/* Allocates the page pool. The caller frees it with attn_cache_free after
 * every sequence is freed. */
int attn_cache_create(const struct attn_cache_config *config, attn_cache **out);
void attn_cache_free(attn_cache *cache);
const struct attn_cache_config *attn_cache_config(const attn_cache *cache);
int attn_cache_pages_free(const attn_cache *cache);
int attn_cache_pages_total(const attn_cache *cache);
/* Bytes of one page (K, V and Quest metadata, all layers). */
size_t attn_cache_page_bytes(const attn_cache *cache);

/* ------------------------------------------------------------- sequences */

/* A new, empty sequence in `cache`. Never fails (it owns no page yet). */
attn_seq *attn_seq_create(attn_cache *cache);
/* Returns the sequence's pages to the pool and frees it. NULL is a no-op. */
void attn_seq_free(attn_seq *seq);
/* Tokens committed so far. */
int attn_seq_len(const attn_seq *seq);
int attn_seq_pages(const attn_seq *seq);

/* Makes sure pages exist for positions [0, len + n_new). On -ENOSPC the
 * sequence keeps whatever it had before the call. */
int attn_seq_reserve(attn_seq *seq, int n_new);

/* Writes K and V of `n` tokens at positions [pos, pos + n) of `layer`
 * (positions must be reserved), and updates the Quest min/max of the pages
 * they land in. k and v are (n, n_kv_heads * head_dim), post-RoPE.
 * Within a page, a layer's positions are written in order without gaps
 * (checked); writing a position again restarts the page's bounds there. */
void attn_seq_write(attn_seq *seq, int layer, int pos, int n, const float *k, const float *v);

/* The same for one KV head: k and v point at the head's channels of the
 * first token, rows `stride` floats apart. Different heads of a sequence
 * may be written by different threads at once. */
void attn_seq_write_head(attn_seq *seq, int layer, int kv_head, int pos, int n, const float *k,
                         const float *v, int stride);

/* ------------------------------------------------------- prefix caching */

/* For an empty sequence: takes the longest run of published pages whose
 * tokens are the first tokens of `tokens` (whole pages only), as `salt`
 * (which names the model, precision and KV type) published them; they are
 * shared, not copied. Returns the pages taken; the sequence's length is
 * then that many pages. */
int attn_seq_adopt_prefix(attn_seq *seq, const int32_t *tokens, int n_tokens, uint64_t salt);
/* What attn_seq_adopt_prefix would take, without taking it: the pages, and
 * in *idle how many of them no sequence holds now (adopting those takes
 * them from the pool's free count). */
int attn_cache_prefix_match(const attn_cache *cache, const int32_t *tokens, int n_tokens,
                            uint64_t salt, int *idle);
/* Publishes the sequence's full pages, whose tokens are tokens[0, n_tokens)
 * (at least its length), so that later sequences can adopt them. Pages
 * published before are skipped; a page whose prefix another sequence
 * published first stays private. */
void attn_seq_publish(attn_seq *seq, const int32_t *tokens, int n_tokens, uint64_t salt);

struct attn_prefix_stats {
    int pages_cached;  /* published pages (held or idle) */
    int pages_shared;  /* held by more than one sequence */
    int pages_idle;    /* published, held by none: given out again when the pool runs short */
    int64_t evictions; /* idle published pages given out again */
};
void attn_cache_prefix_stats(const attn_cache *cache, struct attn_prefix_stats *out);

/* Declares positions [0, len) written in every layer; len may only grow. */
void attn_seq_commit(attn_seq *seq, int len);

/* Drops positions >= len (pages wholly past it go back to the pool). Used to
 * roll back a step that was not committed. */
void attn_seq_truncate(attn_seq *seq, int len);

/* ------------------------------------------------------------ attention */

enum attn_mode {
    ATTN_DENSE,  /* every position up to the query's */
    ATTN_QUEST,  /* query-aware top-K pages plus the current page */
    ATTN_WINDOW, /* query-agnostic baseline: first page(s) (sinks) + most recent pages */
};

struct attn_params {
    int n_heads; /* query heads; a multiple of the cache's n_kv_heads (GQA) */
    float scale; /* usually 1/sqrt(head_dim) */
    enum attn_mode mode;
    int token_budget; /* QUEST/WINDOW: tokens read per head; 0 means dense */
    int dense_layers; /* QUEST/WINDOW: layers below this stay dense (default 2) */
};

/* Fills params with the defaults: scale 1/sqrt(head_dim), dense, budget 0,
 * dense_layers 2. */
void attn_params_default(struct attn_params *params, int n_heads, int head_dim);

struct attn_stats {
    int64_t pages_read;  /* page reads (per layer and KV head), every call */
    int64_t pages_total; /* page reads dense attention would have made */
    /* The same counts for sparse calls only (Quest/window decode steps past
     * the dense layers, on sequences longer than the budget): what the page
     * selection chose, not diluted by prefill, dense layers or short
     * sequences. */
    int64_t sparse_pages_read;
    int64_t sparse_pages_total;
};

/* Attention of `n_q` queries of one sequence at `layer`.
 * q: (n_q, n_heads * head_dim); pos[i]: the position of query i, which sees
 * positions [0, pos[i]] (all written). out: (n_q, n_heads * head_dim).
 * Sparse modes apply only to single-query (decode) calls past the dense
 * layers and when the sequence has more pages than the budget; otherwise
 * the call is dense. `stats` may be NULL; counts are added to it. */
void attn_forward(const attn_seq *seq, int layer, const float *q, const int *pos, int n_q,
                  const struct attn_params *params, float *out, struct attn_stats *stats);

/* The same call cut into independent units of work, for a caller that runs
 * them on its own threads: running every unit in [0, attn_forward_units())
 * once, in any order and on any threads, is attn_forward. `threads` (how
 * many will share the units) decides how finely dense calls are cut; pass
 * the same value to both. */
int attn_forward_units(const attn_seq *seq, int layer, const int *pos, int n_q,
                       const struct attn_params *params, int threads);
void attn_forward_unit(const attn_seq *seq, int layer, const float *q, const int *pos, int n_q,
                       const struct attn_params *params, int threads, int unit, float *out,
                       struct attn_stats *stats);

#endif

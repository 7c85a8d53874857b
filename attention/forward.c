/* forward.c: attn_forward: picks dense or sparse, splits the work over the
 * cores, runs the page kernels and counts page reads. */
#include "attention/attn_internal.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Query rows (queries x heads of one KV head) handled by one work item. */
#define ROWS_PER_ITEM 128

void attn_params_default(struct attn_params *params, int n_heads, int head_dim)
{
    *params = (struct attn_params){
        .n_heads = n_heads,
        .scale = 1.0f / sqrtf((float)head_dim),
        .mode = ATTN_DENSE,
        .token_budget = 0,
        .dense_layers = 2,
    };
}

/* -------------------------------------------------------------- work items */

/* Query heads [h0, h1) of KV head kv_head (absolute head numbers) for
 * queries [i0, i1), over the page-table indices pages[0, n_pages) or, when
 * pages is NULL, densely over every page up to each query's position. */
struct attn_item {
    int kv_head, h0, h1, i0, i1;
    const int *pages;
    int n_pages;
};

struct attn_call {
    const struct attn_kernels *kernels;
    const attn_seq *seq;
    int layer;
    const float *q;
    const int *pos;
    const struct attn_params *params;
    float *out;
};

static void item_run(const struct attn_call *call, const struct attn_item *item)
{
    const attn_cache *cache = call->seq->cache;
    const struct attn_cache_config *c = &cache->config;
    int hd = c->head_dim, ps = c->page_size, width = call->params->n_heads * hd;
    int heads = item->h1 - item->h0, n = (item->i1 - item->i0) * heads;

    size_t codes =
        c->kv_type == ATTN_KV_INT8 || c->kv_type == ATTN_KV_INT4 ? 2 * (size_t)hd * ps : 0;
    float *buf = util_aligned_alloc(sizeof(float) * ((size_t)n * (2 * hd + 2) + codes) +
                                    sizeof(int) * (size_t)n);
    float *q = buf, *acc = q + (size_t)n * hd, *max = acc + (size_t)n * hd, *sum = max + n;
    float *codes_buf = codes ? sum + n : NULL;
    int *visible = (int *)(sum + n + codes);
    int last_pos = 0;
    for (int i = item->i0; i < item->i1; i++) {
        if (call->pos[i] > last_pos) last_pos = call->pos[i];
        for (int h = item->h0; h < item->h1; h++) {
            int r = (i - item->i0) * heads + (h - item->h0);
            const float *src = call->q + (size_t)i * width + (size_t)h * hd;
            for (int d = 0; d < hd; d++) q[(size_t)r * hd + d] = src[d] * call->params->scale;
            max[r] = -INFINITY;
            sum[r] = 0;
        }
    }
    memset(acc, 0, sizeof(float) * (size_t)n * hd);
    struct attn_rows rows = {
        .n = n, .q = q, .max = max, .sum = sum, .acc = acc, .codes = codes_buf};
    attn_page_fn page_fn = call->kernels->page[c->kv_type];

    int n_iter = item->pages ? item->n_pages : last_pos / ps + 1;
    for (int j = 0; j < n_iter; j++) {
        int index = item->pages ? item->pages[j] : j;
        int start = index * ps;
        for (int i = item->i0; i < item->i1; i++) {
            int v = call->pos[i] - start + 1;
            v = v < 0 ? 0 : v > ps ? ps : v;
            for (int h = 0; h < heads; h++) visible[(i - item->i0) * heads + h] = v;
        }
        if (j + 1 < n_iter) {
            int next = item->pages ? item->pages[j + 1] : j + 1;
            attn_prefetch(
                attn_cache_block(cache, call->seq->pages[next], call->layer, item->kv_head),
                cache->layout.bytes);
        }
        struct attn_block block =
            attn_cache_block_view(cache, call->seq->pages[index], call->layer, item->kv_head);
        page_fn(&block, hd, ps, &rows, visible);
    }

    for (int i = item->i0; i < item->i1; i++) {
        for (int h = item->h0; h < item->h1; h++) {
            int r = (i - item->i0) * heads + (h - item->h0);
            float *dst = call->out + (size_t)i * width + (size_t)h * hd;
            float inv = 1.0f / sum[r];
            for (int d = 0; d < hd; d++) dst[d] = acc[(size_t)r * hd + d] * inv;
        }
    }
    util_aligned_free(buf);
}

/* How many pieces to cut each KV head's query heads into so that the cores
 * have work: only when there are fewer (KV head, query tile) pairs than
 * threads, since each piece reads the KV head's pages again. */
static int head_splits(int group, int pairs, int threads)
{
    if (pairs >= threads) return 1;
    int splits = (threads + pairs - 1) / pairs;
    return splits < group ? splits : group;
}

static void add_stats(struct attn_stats *stats, int64_t read, int64_t total, bool sparse)
{
    if (!stats) return;
    __atomic_fetch_add(&stats->pages_read, read, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats->pages_total, total, __ATOMIC_RELAXED);
    if (!sparse) return;
    __atomic_fetch_add(&stats->sparse_pages_read, read, __ATOMIC_RELAXED);
    __atomic_fetch_add(&stats->sparse_pages_total, total, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ calls */

static void check_call(const attn_seq *seq, int layer, const int *pos, int n_q,
                       const struct attn_params *params)
{
    const struct attn_cache_config *c = &seq->cache->config;
    UTIL_CHECK(layer >= 0 && layer < c->n_layers);
    UTIL_CHECK(params->n_heads > 0 && params->n_heads % c->n_kv_heads == 0);
    UTIL_CHECK(n_q > 0);
    for (int i = 0; i < n_q; i++) {
        UTIL_CHECK(pos[i] >= 0 && pos[i] < seq->n_pages * c->page_size);
        /* the query's own token is written in this layer (K/V before attention) */
        int page = seq->pages[pos[i] / c->page_size];
        for (int h = 0; h < c->n_kv_heads; h++)
            UTIL_CHECK(*attn_cache_fill(seq->cache, page, layer, h) > pos[i] % c->page_size);
    }
}

/* How a call is cut into units. Dense: (KV head, head split, query tile),
 * tile-minor. Sparse: one unit per KV head, which chooses its pages and
 * attends to them with all the KV head's query heads. */
struct attn_plan {
    bool sparse;
    int n_kv, group, budget_pages, seen;
    int tile, tiles, splits, per;
    int units;
};

static struct attn_plan plan_call(const attn_seq *seq, int layer, const int *pos, int n_q,
                                  const struct attn_params *params, int threads)
{
    const struct attn_cache_config *c = &seq->cache->config;
    struct attn_plan pl = {.n_kv = c->n_kv_heads, .group = params->n_heads / c->n_kv_heads};
    pl.budget_pages = params->token_budget / c->page_size;
    pl.seen = pos[0] / c->page_size + 1; /* pages a single query reads densely */
    pl.sparse = params->mode != ATTN_DENSE && params->token_budget > 0 &&
                layer >= params->dense_layers && n_q == 1 && pl.seen > pl.budget_pages;
    if (pl.sparse) {
        pl.units = pl.n_kv;
        return pl;
    }
    pl.tile = ROWS_PER_ITEM / pl.group > 0 ? ROWS_PER_ITEM / pl.group : 1;
    pl.tiles = (n_q + pl.tile - 1) / pl.tile;
    pl.splits = head_splits(pl.group, pl.n_kv * pl.tiles, threads < 1 ? 1 : threads);
    pl.per = (pl.group + pl.splits - 1) / pl.splits;
    pl.units = pl.n_kv * pl.splits * pl.tiles;
    return pl;
}

/* Query heads [h0, h1) of KV head kv (absolute numbers) reading `pages`. */
static void run_heads(const struct attn_call *call, int kv, int h0, int h1, int i0, int i1,
                      const int *pages, int n_pages)
{
    if (h0 >= h1) return;
    struct attn_item item = {kv, h0, h1, i0, i1, pages, n_pages};
    item_run(call, &item);
}

/* Sparse unit: KV head kv chooses its pages and attends to them. */
static void run_sparse(const struct attn_call *call, const struct attn_plan *pl, int kv,
                       struct attn_stats *stats)
{
    const attn_seq *seq = call->seq;
    int hd = seq->cache->config.head_dim;
    int cap = pl->budget_pages > 1 ? pl->budget_pages : 1;
    int *pages = util_xmalloc(sizeof(int) * (size_t)cap);
    float *scratch = util_xmalloc(sizeof(float) * ((size_t)(pl->group + 1) * (pl->seen - 1) + 1));
    /* The query is scaled inside item_run; the bounds rank pages, where a
     * common positive scale changes nothing. */
    const float *q_group = call->q + (size_t)kv * pl->group * hd;
    int n = attn_select_pages(call->kernels, seq, call->layer, kv, call->params->mode,
                              pl->budget_pages, call->pos[0], q_group, pl->group, pages, scratch);
    free(scratch);
    for (int j = 0; j < n; j++) UTIL_CHECK(pages[j] >= 0 && pages[j] < seq->n_pages);
    run_heads(call, kv, kv * pl->group, (kv + 1) * pl->group, 0, 1, pages, n);
    free(pages);
    add_stats(stats, n, pl->seen, true);
}

int attn_forward_units(const attn_seq *seq, int layer, const int *pos, int n_q,
                       const struct attn_params *params, int threads)
{
    return plan_call(seq, layer, pos, n_q, params, threads).units;
}

static void run_unit(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                     const float *q, const int *pos, int n_q, const struct attn_params *params,
                     const struct attn_plan *pl, int unit, float *out, struct attn_stats *stats)
{
    UTIL_CHECK(unit >= 0 && unit < pl->units);
    struct attn_call call = {kernels, seq, layer, q, pos, params, out};
    if (pl->sparse) {
        run_sparse(&call, pl, unit, stats);
        return;
    }
    int kv = unit / (pl->splits * pl->tiles), s = unit / pl->tiles % pl->splits,
        t = unit % pl->tiles;
    int h0 = kv * pl->group + s * pl->per;
    int h1 = h0 + pl->per < (kv + 1) * pl->group ? h0 + pl->per : (kv + 1) * pl->group;
    int i0 = t * pl->tile, i1 = (t + 1) * pl->tile < n_q ? (t + 1) * pl->tile : n_q;
    run_heads(&call, kv, h0, h1, i0, i1, NULL, 0);
    /* Page reads are counted once per call: by its first unit. */
    if (unit == 0) {
        int64_t pages = 0;
        int ps = seq->cache->config.page_size;
        for (int i = 0; i < n_q; i++) pages += pos[i] / ps + 1;
        add_stats(stats, pages * pl->n_kv, pages * pl->n_kv, false);
    }
}

void attn_forward_unit(const attn_seq *seq, int layer, const float *q, const int *pos, int n_q,
                       const struct attn_params *params, int threads, int unit, float *out,
                       struct attn_stats *stats)
{
    check_call(seq, layer, pos, n_q, params);
    struct attn_plan pl = plan_call(seq, layer, pos, n_q, params, threads);
    run_unit(attn_kernels_best(), seq, layer, q, pos, n_q, params, &pl, unit, out, stats);
}

void attn_forward_pages(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                        const float *q, int pos, const struct attn_params *params,
                        const int *const *pages, const int *n_pages, float *out)
{
    check_call(seq, layer, &pos, 1, params);
    int n_kv = seq->cache->config.n_kv_heads, group = params->n_heads / n_kv;
    struct attn_call call = {kernels, seq, layer, q, &pos, params, out};
    for (int kv = 0; kv < n_kv; kv++) {
        for (int j = 0; j < n_pages[kv]; j++)
            UTIL_CHECK(pages[kv][j] >= 0 && pages[kv][j] < seq->n_pages);
        run_heads(&call, kv, kv * group, (kv + 1) * group, 0, 1, pages[kv], n_pages[kv]);
    }
}

void attn_forward_kernels(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                          const float *q, const int *pos, int n_q, const struct attn_params *params,
                          float *out, struct attn_stats *stats)
{
    check_call(seq, layer, pos, n_q, params);
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    struct attn_plan pl = plan_call(seq, layer, pos, n_q, params, threads);
#pragma omp parallel for schedule(dynamic, 1) if (threads > 1 && pl.units > 1)
    for (int unit = 0; unit < pl.units; unit++)
        run_unit(kernels, seq, layer, q, pos, n_q, params, &pl, unit, out, stats);
}

void attn_forward(const attn_seq *seq, int layer, const float *q, const int *pos, int n_q,
                  const struct attn_params *params, float *out, struct attn_stats *stats)
{
    attn_forward_kernels(attn_kernels_best(), seq, layer, q, pos, n_q, params, out, stats);
}

/* quest.c: which pages a sparse decode step reads: Quest's query-aware
 * top-K by page criticality, and the query-agnostic window baseline. */
#include "attention/attn_internal.h"

#include <math.h>
#include <stdlib.h>

/* ------------------------------------------------------------- criticality */

/*
 * Grouped-query attention: the group's query heads share one KV head, so
 * they must share one page set (K/V are read per KV head). Each head's
 * bound u_h(p) is shifted by that head's best bound over the candidates,
 * and a page scores the max over the heads: u_h(p) - max_p' u_h(p').
 * Why the max: a page that one head needs (a retrieval head finding a
 * passkey) must not be outvoted by heads that do not care, which a sum
 * would do. Why the shift: softmax only sees logits relative to the head's
 * own largest one, so the shift puts every head on the scale its softmax
 * uses; without it a head with large logits everywhere would pick for all.
 * With one head per KV head this is plain Quest (a constant shift).
 */
void attn_quest_page_scores(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                            int kv_head, const float *q, int group, int n_cand, float *scores,
                            float *scratch)
{
    const attn_cache *cache = seq->cache;
    UTIL_CHECK(n_cand <= seq->n_pages);
    struct attn_bounds_view view = attn_seq_bounds_view(seq, layer, kv_head);
    kernels->bound(&view, n_cand, cache->config.head_dim, q, group, scratch);
    if (group == 1) {
        for (int i = 0; i < n_cand; i++) scores[i] = scratch[i];
        return;
    }
    float best[64]; /* per head; the heap only for groups above 64 heads */
    float *head_best = group <= 64 ? best : util_xmalloc(sizeof(float) * group);
    for (int h = 0; h < group; h++) head_best[h] = -INFINITY;
    /* A NaN bound (keys beyond f16 range) is skipped here and scores +inf
     * below: such a page stays selectable. */
    for (int i = 0; i < n_cand; i++)
        for (int h = 0; h < group; h++)
            head_best[h] = attn_maxf(scratch[(size_t)i * group + h], head_best[h]);
    for (int i = 0; i < n_cand; i++) {
        const float *u = scratch + (size_t)i * group;
        float s = -INFINITY;
        bool nan = false;
        for (int h = 0; h < group; h++) {
            s = attn_maxf(u[h] - head_best[h], s);
            nan |= u[h] != u[h];
        }
        scores[i] = nan ? INFINITY : s;
    }
    if (head_best != best) free(head_best);
}

/* ----------------------------------------------------------------- top-K */

/* The selection order: higher score first, then lower index; NaN as +inf.
 * A strict total order, so the chosen set never depends on the algorithm. */
static bool ranks_before(const float *scores, int a, int b)
{
    float sa = isnan(scores[a]) ? INFINITY : scores[a];
    float sb = isnan(scores[b]) ? INFINITY : scores[b];
    return sa > sb || (sa == sb && a < b);
}

static void swap_int(int *a, int *b)
{
    int t = *a;
    *a = *b;
    *b = t;
}

static int compare_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int attn_select_top_k(const float *scores, int n, int k, int *out)
{
    if (k <= 0 || n <= 0) return 0;
    int *idx = util_xmalloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) idx[i] = i;
    if (k < n) {
        /* Quickselect: afterwards idx[0, k) holds the k best in some order. */
        int lo = 0, hi = n - 1;
        while (lo < hi) {
            int mid = lo + (hi - lo) / 2;
            /* median of three as the pivot, moved to hi */
            if (ranks_before(scores, idx[mid], idx[lo])) swap_int(&idx[mid], &idx[lo]);
            if (ranks_before(scores, idx[hi], idx[lo])) swap_int(&idx[hi], &idx[lo]);
            if (ranks_before(scores, idx[mid], idx[hi])) swap_int(&idx[mid], &idx[hi]);
            int pivot = idx[hi], store = lo;
            for (int i = lo; i < hi; i++)
                if (ranks_before(scores, idx[i], pivot)) swap_int(&idx[i], &idx[store++]);
            swap_int(&idx[store], &idx[hi]);
            if (store == k - 1 || store == k) break;
            if (store < k)
                lo = store + 1;
            else
                hi = store - 1;
        }
    } else {
        k = n;
    }
    qsort(idx, (size_t)k, sizeof(int), compare_int);
    for (int i = 0; i < k; i++) out[i] = idx[i];
    free(idx);
    return k;
}

/* ------------------------------------------------------------- selection */

int attn_select_pages(const struct attn_kernels *kernels, const attn_seq *seq, int layer,
                      int kv_head, enum attn_mode mode, int budget_pages, int pos, const float *q,
                      int group, int *out, float *scratch)
{
    int current = pos / seq->cache->config.page_size;
    UTIL_CHECK(current < seq->n_pages);
    int others = budget_pages - 1; /* pages besides the current one */
    int n = 0;
    if (others > 0 && mode == ATTN_QUEST) {
        float *scores = scratch + (size_t)current * group;
        attn_quest_page_scores(kernels, seq, layer, kv_head, q, group, current, scores, scratch);
        n = attn_select_top_k(scores, current, others, out);
    } else if (others > 0 && mode == ATTN_WINDOW) {
        /* One attention-sink page, then the most recent pages. */
        if (others >= current) {
            for (int i = 0; i < current; i++) out[n++] = i;
        } else {
            out[n++] = 0;
            for (int i = current - (others - 1); i < current; i++) out[n++] = i;
        }
    }
    out[n++] = current;
    return n;
}

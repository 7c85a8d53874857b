/* Tests for Quest: the page bound, top-K selection, sparse attention over a
 * page set, and when attn_forward goes sparse; and the window baseline. */
#include "test_attention_common.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#define DENSE_MAX_ABS_ERR 2e-5f /* as in test_attention_dense.c */
/* The bound is summed in float: allow the rounding of its terms. */
#define BOUND_REL_SLACK 1e-5f

/* ------------------------------------------------------------------ bound */

/* Sum over channels of |q| * max(|kmax|, |kmin|): the scale of a bound's terms. */
static float bound_magnitude(const float *q, const uint16_t *kmax, const uint16_t *kmin, int hd)
{
    float m = 0;
    for (int d = 0; d < hd; d++)
        m += fabsf(q[d]) * fmaxf(fabsf(util_f16_to_f32(kmax[d])), fabsf(util_f16_to_f32(kmin[d])));
    return m;
}

Test(attention_quest, bound_is_at_least_every_key_score_in_its_page, .timeout = 120)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    for (uint64_t seed = 0; seed < 40; seed++) {
        int hd = seed % 2 ? 128 : 64, len = 16 * 6 + (int)seed % 16, nkv = 2;
        enum attn_kv_type type = (enum attn_kv_type)(seed % 4);
        struct test_kv t;
        test_kv_create(&t, 1, 4, nkv, hd, len, type, seed, 13);
        /* Rewrite the keys with a scale and a shift per page (and channel),
         * so that pages differ the way real ones do. */
        int width = nkv * hd;
        struct util_rng rng;
        util_rng_seed(&rng, seed * 7 + 1);
        for (int p = 0; p * 16 < len; p++) {
            float scale = expf(1.5f * (float)util_rng_normal(&rng));
            float shift = (float)util_rng_normal(&rng) * 2;
            for (int tok = p * 16; tok < len && tok < (p + 1) * 16; tok++)
                for (int i = 0; i < width; i++)
                    t.k[(size_t)tok * width + i] =
                        t.k[(size_t)tok * width + i] * scale + shift * (i % 3 == 0);
        }
        attn_seq_truncate(t.seq, 0);
        cr_assert_eq(attn_seq_reserve(t.seq, len), 0);
        attn_seq_write(t.seq, 0, 0, len, t.k, t.v);
        attn_seq_commit(t.seq, len);
        float *q = test_random_queries(4, hd, seed + 1000);
        for (int s = 0; s < n_sets; s++) {
            for (int p = 0; p * 16 < len; p++) {
                for (int h = 0; h < nkv; h++) {
                    int page = t.seq->pages[p];
                    const uint16_t *kmax = attn_cache_kmax(t.cache, page, 0, h);
                    const uint16_t *kmin = attn_cache_kmin(t.cache, page, 0, h);
                    float bound[4];
                    struct attn_bounds_view view = attn_seq_bounds_view(t.seq, 0, h);
                    view.pages = &t.seq->pages[p];
                    sets[s]->bound(&view, 1, hd, q, 4, bound);
                    for (int i = 0; i < 4; i++) {
                        const float *qi = q + (size_t)i * hd;
                        float slack = BOUND_REL_SLACK * bound_magnitude(qi, kmax, kmin, hd);
                        for (int tok = p * 16; tok < len && tok < (p + 1) * 16; tok++) {
                            /* the unquantized key, as written */
                            const float *k = t.k + (size_t)tok * width + (size_t)h * hd;
                            double dot = 0;
                            for (int d = 0; d < hd; d++) dot += (double)qi[d] * k[d];
                            cr_assert_leq(dot, bound[i] + slack, "%s seed %lu page %d tok %d",
                                          sets[s]->name, (unsigned long)seed, p, tok);
                        }
                    }
                }
            }
        }
        free(q);
        test_kv_free(&t);
    }
}

Test(attention_quest, bound_of_a_one_token_page_is_its_score_to_f16_rounding)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    int hd = 64;
    struct test_kv t;
    test_kv_create(&t, 1, 1, 1, hd, 1, ATTN_KV_F32, 4, 1);
    float *q = test_random_queries(1, hd, 5);
    double dot = 0, mag = 0;
    for (int d = 0; d < hd; d++) dot += (double)q[d] * t.k[d], mag += fabs(q[d] * t.k[d]);
    for (int s = 0; s < n_sets; s++) {
        float bound;
        struct attn_bounds_view view = attn_seq_bounds_view(t.seq, 0, 0);
        sets[s]->bound(&view, 1, hd, q, 1, &bound);
        cr_assert_geq(bound, dot - 1e-5 * mag);
        cr_assert_leq(bound, dot + 0x1p-10 * mag, "%s: %g vs %g", sets[s]->name, bound, dot);
    }
    free(q);
    test_kv_free(&t);
}

/* ------------------------------------------------------------------ top-K */

static const float *sort_scores;
static int compare_rank(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    float sx = isnan(sort_scores[x]) ? INFINITY : sort_scores[x];
    float sy = isnan(sort_scores[y]) ? INFINITY : sort_scores[y];
    if (sx != sy) return sx > sy ? -1 : 1;
    return (x > y) - (x < y);
}
static int compare_int(const void *a, const void *b)
{
    return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

Test(attention_quest, top_k_picks_exactly_the_highest_ties_to_the_lower_index)
{
    struct util_rng rng;
    util_rng_seed(&rng, 17);
    for (int trial = 0; trial < 400; trial++) {
        int n = 1 + (int)(util_rng_uniform(&rng) * (trial < 200 ? 40 : 3000));
        float *scores = util_xmalloc(sizeof(float) * n);
        /* Few distinct values, so that ties are everywhere; some NaN and inf. */
        int levels = 1 + trial % 9;
        for (int i = 0; i < n; i++) {
            scores[i] = (float)(int)(util_rng_uniform(&rng) * levels);
            if (util_rng_uniform(&rng) < 0.01) scores[i] = NAN;
            if (util_rng_uniform(&rng) < 0.01) scores[i] = -INFINITY;
        }
        int *order = util_xmalloc(sizeof(int) * n), *got = util_xmalloc(sizeof(int) * (n + 1));
        for (int i = 0; i < n; i++) order[i] = i;
        sort_scores = scores;
        qsort(order, n, sizeof(int), compare_rank);
        int ks[] = {0, 1, 2, n / 3, n - 1, n, n + 5};
        for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
            int k = ks[j];
            int m = attn_select_top_k(scores, n, k, got);
            int expect = k < 0 ? 0 : k > n ? n : k;
            cr_assert_eq(m, expect);
            qsort(order, (size_t)m, sizeof(int), compare_int); /* expected set, ascending */
            for (int i = 0; i < m; i++)
                cr_assert_eq(got[i], order[i], "trial %d n %d k %d i %d", trial, n, k, i);
            qsort(order, n, sizeof(int), compare_rank); /* back to rank order */
        }
        free(scores);
        free(order);
        free(got);
    }
}

/* ----------------------------------------------------------- selection */

Test(attention_quest, group_score_is_max_over_heads_of_bound_minus_heads_best)
{
    int nh = 8, nkv = 2, hd = 64, len = 16 * 20 + 3, group = nh / nkv;
    struct test_kv t;
    test_kv_create(&t, 1, nh, nkv, hd, len, ATTN_KV_F32, 21, 64);
    float *q = test_random_queries(1, nh * hd, 22);
    int n_cand = len / 16; /* pages before the current one */
    float *scores = util_xmalloc(sizeof(float) * n_cand);
    float *scratch = util_xmalloc(sizeof(float) * n_cand * group);
    for (int kv = 0; kv < nkv; kv++) {
        attn_quest_page_scores(attn_kernels_scalar(), t.seq, 0, kv, q + (size_t)kv * group * hd,
                               group, n_cand, scores, scratch);
        float u[20][4], best[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        for (int p = 0; p < n_cand; p++) {
            for (int h = 0; h < group; h++) {
                const float *qh = q + (size_t)(kv * group + h) * hd;
                const uint16_t *kmax = attn_cache_kmax(t.cache, t.seq->pages[p], 0, kv);
                const uint16_t *kmin = attn_cache_kmin(t.cache, t.seq->pages[p], 0, kv);
                double b = 0;
                for (int d = 0; d < hd; d++)
                    b += fmax(qh[d] * util_f16_to_f32(kmax[d]), qh[d] * util_f16_to_f32(kmin[d]));
                u[p][h] = (float)b;
                best[h] = fmaxf(best[h], u[p][h]);
            }
        }
        for (int p = 0; p < n_cand; p++) {
            float expect = -INFINITY;
            for (int h = 0; h < group; h++) expect = fmaxf(expect, u[p][h] - best[h]);
            cr_assert_float_eq(scores[p], expect, 1e-4, "kv %d page %d", kv, p);
        }
    }
    free(q);
    free(scores);
    free(scratch);
    test_kv_free(&t);
}

Test(attention_quest, selects_top_budget_minus_one_pages_plus_the_current_one)
{
    int nh = 8, nkv = 2, hd = 64, len = 16 * 40 + 5, group = nh / nkv;
    struct test_kv t;
    test_kv_create(&t, 1, nh, nkv, hd, len, ATTN_KV_INT4, 31, 100);
    float *q = test_random_queries(1, nh * hd, 32);
    int pos = len - 1, current = pos / 16, budgets[] = {16, 32, 64, 128, 16 * 40};
    float *scores = util_xmalloc(sizeof(float) * current);
    float *scratch = util_xmalloc(sizeof(float) * (group + 1) * current);
    int out[64], expect[64];
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        int budget_pages = budgets[b] / 16;
        for (int kv = 0; kv < nkv; kv++) {
            const float *qg = q + (size_t)kv * group * hd;
            int n = attn_select_pages(attn_kernels_scalar(), t.seq, 0, kv, ATTN_QUEST, budget_pages,
                                      pos, qg, group, out, scratch);
            cr_assert_eq(n, budget_pages, "budget %d", budgets[b]);
            cr_assert_eq(out[n - 1], current);
            attn_quest_page_scores(attn_kernels_scalar(), t.seq, 0, kv, qg, group, current, scores,
                                   scratch);
            int m = attn_select_top_k(scores, current, budget_pages - 1, expect);
            cr_assert_eq(m, n - 1);
            cr_assert_eq(memcmp(out, expect, sizeof(int) * m), 0);
            /* No unchosen page scores above a chosen one. */
            for (int i = 0; i < m; i++)
                for (int p = 0, j = 0; p < current; p++) {
                    if (j < m && expect[j] == p) {
                        j++;
                        continue;
                    }
                    cr_assert_geq(scores[out[i]], scores[p]);
                }
        }
    }
    free(q);
    free(scores);
    free(scratch);
    test_kv_free(&t);
}

Test(attention_quest, window_selects_a_sink_page_and_the_most_recent_pages)
{
    struct test_kv t;
    test_kv_create(&t, 1, 2, 2, 32, 16 * 10 + 1, ATTN_KV_F32, 1, 200);
    int out[16];
    float scratch[1];
    int n = attn_select_pages(attn_kernels_scalar(), t.seq, 0, 0, ATTN_WINDOW, 4, 16 * 10, NULL, 1,
                              out, scratch);
    int expect[] = {0, 8, 9, 10};
    cr_assert_eq(n, 4);
    cr_assert_eq(memcmp(out, expect, sizeof expect), 0);
    n = attn_select_pages(attn_kernels_scalar(), t.seq, 0, 0, ATTN_WINDOW, 1, 16 * 10, NULL, 1, out,
                          scratch);
    cr_assert(n == 1 && out[0] == 10);
    n = attn_select_pages(attn_kernels_scalar(), t.seq, 0, 0, ATTN_QUEST, 0, 16 * 10, NULL, 1, out,
                          scratch);
    cr_assert(n == 1 && out[0] == 10, "a budget under a page reads the current page only");
    test_kv_free(&t);
}

/* ------------------------------------------------------ sparse attention */

/* The reference over the positions of the listed pages, up to pos. */
static void check_sparse(const struct test_kv *t, int layer, const float *q, int pos,
                         const int *const *pages, const int *n_pages, const float *out,
                         const char *what)
{
    int hd = t->config.head_dim, group = t->n_heads / t->config.n_kv_heads;
    int *positions = util_xmalloc(sizeof(int) * (size_t)(pos + 1));
    float ref[ATTN_MAX_HEAD_DIM];
    for (int h = 0; h < t->n_heads; h++) {
        int kv = h / group, n = 0;
        for (int j = 0; j < n_pages[kv]; j++)
            for (int p = pages[kv][j] * 16; p < (pages[kv][j] + 1) * 16 && p <= pos; p++)
                positions[n++] = p;
        test_reference_attention(t->seq, layer, kv, q + (size_t)h * hd, 1.0f / sqrtf(hd), positions,
                                 n, ref);
        float err = test_max_abs_diff(ref, out + (size_t)h * hd, (size_t)hd);
        cr_assert_leq(err, DENSE_MAX_ABS_ERR, "%s head %d err %g", what, h, err);
    }
    free(positions);
}

Test(attention_quest, sparse_over_a_page_set_equals_dense_masked_to_it, .timeout = 120)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    struct util_rng rng;
    util_rng_seed(&rng, 99);
    for (int type = 0; type < 4; type++) {
        for (int hl = 0; hl < 3; hl++) {
            int layouts[3][2] = {{8, 8}, {8, 2}, {4, 1}};
            int nh = layouts[hl][0], nkv = layouts[hl][1], hd = 64, len = 16 * 30 + 9;
            struct test_kv t;
            test_kv_create(&t, 1, nh, nkv, hd, len, (enum attn_kv_type)type, 40 + type, 77);
            float *q = test_random_queries(1, nh * hd, 41 + hl);
            float *out = util_xmalloc(sizeof(float) * nh * hd);
            struct attn_params p;
            attn_params_default(&p, nh, hd);
            int pos = len - 1, n_all = pos / 16 + 1;
            int lists[8][31], counts[8];
            const int *ptrs[8];
            /* A random subset per KV head, the current page kept or not. */
            for (int kv = 0; kv < nkv; kv++) {
                counts[kv] = 0;
                for (int j = 0; j < n_all; j++)
                    if (util_rng_uniform(&rng) < 0.3) lists[kv][counts[kv]++] = j;
                if (counts[kv] == 0) lists[kv][counts[kv]++] = n_all - 1;
                ptrs[kv] = lists[kv];
            }
            for (int s = 0; s < n_sets; s++) {
                char what[96];
                snprintf(what, sizeof what, "%s %s %d/%d", sets[s]->name,
                         attn_kv_type_name((enum attn_kv_type)type), nh, nkv);
                attn_forward_pages(sets[s], t.seq, 0, q, pos, &p, ptrs, counts, out);
                check_sparse(&t, 0, q, pos, ptrs, counts, out, what);
            }
            free(q);
            free(out);
            test_kv_free(&t);
        }
    }
}

Test(attention_quest, sparse_over_every_page_is_bitwise_dense)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    int nh = 8, nkv = 2, hd = 64, len = 16 * 12 + 4, width = nh * hd;
    struct test_kv t;
    test_kv_create(&t, 1, nh, nkv, hd, len, ATTN_KV_INT8, 50, 64);
    float *q = test_random_queries(1, width, 51);
    float *dense = util_xmalloc(sizeof(float) * width),
          *sparse = util_xmalloc(sizeof(float) * width);
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    int pos = len - 1, all[13], counts[2] = {13, 13};
    for (int i = 0; i < 13; i++) all[i] = i;
    const int *ptrs[2] = {all, all};
    for (int s = 0; s < n_sets; s++) {
        attn_forward_kernels(sets[s], t.seq, 0, q, &pos, 1, &p, dense, NULL);
        attn_forward_pages(sets[s], t.seq, 0, q, pos, &p, ptrs, counts, sparse);
        cr_assert_eq(memcmp(dense, sparse, sizeof(float) * width), 0, "%s", sets[s]->name);
    }
    free(q);
    free(dense);
    free(sparse);
    test_kv_free(&t);
}

/* --------------------------------------------------- when forward is sparse */

/*
 * Runs attn_forward in `mode` with `budget` at layer `layer` for one query
 * at the end and checks it: bitwise equal to dense when it must be dense,
 * else bitwise equal to attention over the pages attn_select_pages picks,
 * with stats counting those pages.
 */
static void check_forward_mode(const struct test_kv *t, enum attn_mode mode, int budget, int layer,
                               bool expect_sparse)
{
    int nh = t->n_heads, nkv = t->config.n_kv_heads, hd = t->config.head_dim, width = nh * hd;
    int group = nh / nkv, pos = t->len - 1, n_all = pos / 16 + 1;
    float *q = test_random_queries(1, width, 60 + budget);
    float *got = util_xmalloc(sizeof(float) * width), *expect = util_xmalloc(sizeof(float) * width);
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    attn_forward(t->seq, layer, q, &pos, 1, &p, expect, NULL);
    p.mode = mode;
    p.token_budget = budget;
    struct attn_stats stats = {0};
    attn_forward(t->seq, layer, q, &pos, 1, &p, got, &stats);
    cr_assert_eq(stats.pages_total, (int64_t)n_all * nkv);
    if (expect_sparse) {
        int lists[8][256], counts[8];
        const int *ptrs[8];
        float *scratch = util_xmalloc(sizeof(float) * (group + 1) * n_all);
        int64_t read = 0;
        for (int kv = 0; kv < nkv; kv++) {
            counts[kv] =
                attn_select_pages(attn_kernels_best(), t->seq, layer, kv, mode, budget / 16, pos,
                                  q + (size_t)kv * group * hd, group, lists[kv], scratch);
            ptrs[kv] = lists[kv];
            read += counts[kv];
        }
        attn_forward_pages(attn_kernels_best(), t->seq, layer, q, pos, &p, ptrs, counts, expect);
        cr_assert_eq(stats.pages_read, read);
        cr_assert_lt(stats.pages_read, stats.pages_total);
        free(scratch);
    } else {
        cr_assert_eq(stats.pages_read, stats.pages_total);
    }
    cr_assert_eq(memcmp(got, expect, sizeof(float) * width), 0, "mode %d budget %d layer %d", mode,
                 budget, layer);
    free(q);
    free(got);
    free(expect);
}

Test(attention_quest, budget_covering_the_context_is_bitwise_dense)
{
    struct test_kv t;
    test_kv_create(&t, 3, 8, 2, 64, 16 * 8, ATTN_KV_F32, 70, 128); /* exactly 8 pages */
    check_forward_mode(&t, ATTN_QUEST, 16 * 8, 2, false);
    check_forward_mode(&t, ATTN_QUEST, 100000, 2, false);
    check_forward_mode(&t, ATTN_WINDOW, 16 * 8 + 15, 2, false);
    check_forward_mode(&t, ATTN_QUEST, 0, 2, false);      /* 0 means dense */
    check_forward_mode(&t, ATTN_QUEST, 16 * 7, 2, true);  /* one page short: sparse */
    check_forward_mode(&t, ATTN_QUEST, 16 * 7, 1, false); /* dense layer */
    check_forward_mode(&t, ATTN_WINDOW, 16 * 3, 2, true);
    check_forward_mode(&t, ATTN_QUEST, 8, 2, true); /* under a page: the current one */
    test_kv_free(&t);
}

Test(attention_quest, quest_and_window_on_long_context_attend_their_selection)
{
    for (int type = 0; type < 4; type += 3) {
        struct test_kv t;
        test_kv_create(&t, 3, 8, 2, 64, 1000, (enum attn_kv_type)type, 80, 256);
        check_forward_mode(&t, ATTN_QUEST, 256, 2, true);
        check_forward_mode(&t, ATTN_WINDOW, 256, 2, true);
        test_kv_free(&t);
    }
}

Test(attention_quest, multi_query_calls_stay_dense)
{
    int nh = 4, nkv = 1, hd = 64, len = 400, width = nh * hd;
    struct test_kv t;
    test_kv_create(&t, 3, nh, nkv, hd, len, ATTN_KV_F16, 90, 400);
    float *q = test_random_queries(2, width, 91);
    float *a = util_xmalloc(sizeof(float) * 2 * width),
          *b = util_xmalloc(sizeof(float) * 2 * width);
    int pos[2] = {398, 399};
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    attn_forward(t.seq, 2, q, pos, 2, &p, a, NULL);
    p.mode = ATTN_QUEST;
    p.token_budget = 64;
    attn_forward(t.seq, 2, q, pos, 2, &p, b, NULL);
    cr_assert_eq(memcmp(a, b, sizeof(float) * 2 * width), 0);
    free(q);
    free(a);
    free(b);
    test_kv_free(&t);
}

/* A key far back that the query strongly matches: Quest must keep its page
 * and so match dense attention, where the window baseline loses it. */
Test(attention_quest, quest_keeps_a_needle_page_that_the_window_drops)
{
    int nh = 8, nkv = 2, hd = 64, len = 2000, width = nh * hd, group = nh / nkv;
    struct test_kv t;
    test_kv_create(&t, 3, nh, nkv, hd, len, ATTN_KV_INT4, 100, 2000);
    float *q = test_random_queries(1, width, 101);
    /* Rewrite position 500 of layer 2 with keys along each group's queries. */
    int needle = 500;
    float *kv_row = t.k + ((size_t)2 * len + needle) * nkv * hd;
    for (int kv = 0; kv < nkv; kv++)
        for (int d = 0; d < hd; d++) kv_row[kv * hd + d] = 3.0f * q[(size_t)kv * group * hd + d];
    attn_seq_truncate(t.seq, needle);
    cr_assert_eq(attn_seq_reserve(t.seq, len - needle), 0);
    for (int l = 0; l < 3; l++)
        attn_seq_write(t.seq, l, needle, len - needle, t.k + ((size_t)l * len + needle) * nkv * hd,
                       t.v + ((size_t)l * len + needle) * nkv * hd);
    attn_seq_commit(t.seq, len);
    float *dense = util_xmalloc(sizeof(float) * width),
          *quest = util_xmalloc(sizeof(float) * width),
          *window = util_xmalloc(sizeof(float) * width);
    int pos = len - 1;
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    attn_forward(t.seq, 2, q, &pos, 1, &p, dense, NULL);
    p.mode = ATTN_QUEST;
    p.token_budget = 128;
    attn_forward(t.seq, 2, q, &pos, 1, &p, quest, NULL);
    p.mode = ATTN_WINDOW;
    attn_forward(t.seq, 2, q, &pos, 1, &p, window, NULL);
    /* The needle's head in each group dominates softmax: Quest is near dense. */
    for (int kv = 0; kv < nkv; kv++) {
        const float *h0 = dense + (size_t)kv * group * hd;
        float eq = test_max_abs_diff(h0, quest + (size_t)kv * group * hd, hd);
        float ew = test_max_abs_diff(h0, window + (size_t)kv * group * hd, hd);
        cr_assert_lt(eq, 0.05f, "quest err %g", eq);
        cr_assert_gt(ew, 0.3f, "window err %g", ew);
    }
    free(q);
    free(dense);
    free(quest);
    free(window);
    test_kv_free(&t);
}

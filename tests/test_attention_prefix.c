/* Tests for prefix caching in the KV pool (attention/prefix.c): adoption of
 * published pages, reference counts, the idle pages kept and evicted, and
 * pages that must not be handed to another prefix. */
#include "test_attention_common.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#define SALT 0x1234u
#define PS   16

static attn_cache *make_cache(int n_pages)
{
    struct attn_cache_config cfg = {.n_layers = 2, .n_kv_heads = 2, .head_dim = 32,
                                    .page_size = PS, .n_pages = n_pages,
                                    .kv_type = ATTN_KV_INT4};
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    return c;
}

/* Writes n tokens into seq: every layer and head, K/V from the token id. */
static void fill(attn_seq *seq, const int32_t *tokens, int n)
{
    const struct attn_cache_config *c = attn_cache_config(seq->cache);
    int width = c->n_kv_heads * c->head_dim, len = attn_seq_len(seq);
    cr_assert_eq(attn_seq_reserve(seq, n), 0);
    float *k = malloc(sizeof(float) * (size_t)n * width), *v = malloc(sizeof(float) * (size_t)n * width);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < width; j++) {
            k[(size_t)i * width + j] = (float)((tokens[i] * 31 + j) % 17) - 8;
            v[(size_t)i * width + j] = (float)((tokens[i] * 7 + j) % 13) - 6;
        }
    for (int l = 0; l < c->n_layers; l++) attn_seq_write(seq, l, len, n, k, v);
    attn_seq_commit(seq, len + n);
    free(k), free(v);
}

static int32_t *token_list(int n, int seed)
{
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) t[i] = (i * 37 + seed) % 1000;
    return t;
}

Test(attention_prefix, a_published_prefix_is_adopted_whole_pages_only_and_shared_not_copied)
{
    attn_cache *c = make_cache(16);
    int32_t *tokens = token_list(60, 1);
    attn_seq *a = attn_seq_create(c);
    fill(a, tokens, 60); /* 3 full pages + 12 */
    attn_seq_publish(a, tokens, 60, SALT);
    struct attn_prefix_stats st;
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_cached, 3, "only full pages are published");

    attn_seq *b = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(b, tokens, 50, SALT), 3);
    cr_assert_eq(attn_seq_len(b), 48);
    for (int i = 0; i < 3; i++) cr_assert_eq(b->pages[i], a->pages[i], "shared, not copied");
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_shared, 3);
    /* the adopted K/V are the writer's */
    float k1[32], v1[32], k2[32], v2[32];
    attn_seq_read_kv(a, 1, 1, 40, k1, v1);
    attn_seq_read_kv(b, 1, 1, 40, k2, v2);
    cr_assert(memcmp(k1, k2, sizeof k1) == 0 && memcmp(v1, v2, sizeof v1) == 0);
    /* b goes on in its own pages */
    fill(b, tokens + 48, 12);
    cr_assert_neq(b->pages[3], a->pages[3]);

    /* another salt (another model or KV type) or another token: no match */
    attn_seq *x = attn_seq_create(c), *y = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(x, tokens, 60, SALT + 1), 0);
    int32_t *other = token_list(60, 1);
    other[20] += 1; /* page 1 differs: page 0 still matches */
    cr_assert_eq(attn_seq_adopt_prefix(y, other, 60, SALT), 1);
    attn_seq_free(x), attn_seq_free(y), attn_seq_free(a), attn_seq_free(b);
    attn_cache_free(c);
    free(tokens), free(other);
}

Test(attention_prefix, idle_pages_stay_cached_until_the_pool_needs_them_lru_first)
{
    attn_cache *c = make_cache(6);
    int32_t *t1 = token_list(32, 1), *t2 = token_list(32, 2);
    attn_seq *a = attn_seq_create(c), *b = attn_seq_create(c);
    fill(a, t1, 32);
    attn_seq_publish(a, t1, 32, SALT);
    fill(b, t2, 32);
    attn_seq_publish(b, t2, 32, SALT);
    attn_seq_free(a); /* a's pages idle first: the oldest */
    attn_seq_free(b);
    struct attn_prefix_stats st;
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_idle, 4);
    cr_assert_eq(attn_cache_pages_free(c), 6, "idle cached pages count as free");

    /* 3 pages: the 2 never used, then the least recently used: a's last
     * page (a sequence's pages go idle last first, so that a prefix loses
     * its tail before its head, which its tail cannot do without) */
    attn_seq *d = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(d, 48), 0);
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.evictions, 1);
    cr_assert_eq(st.pages_cached, 3);
    attn_seq *e = attn_seq_create(c), *f = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(e, t1, 32, SALT), 1, "a's second page was evicted");
    cr_assert_eq(attn_seq_adopt_prefix(f, t2, 32, SALT), 2, "b's pages were kept");
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_idle, 0, "adopting takes pages out of the idle list");
    /* every page is in use or idle: nothing is lost or given out twice */
    cr_assert_eq(attn_cache_pages_free(c), 0);
    cr_assert_eq(attn_seq_reserve(e, 16), -ENOSPC);
    attn_seq_free(d), attn_seq_free(e), attn_seq_free(f);
    cr_assert_eq(attn_cache_pages_free(c), 6);
    attn_cache_free(c);
    free(t1), free(t2);
}

Test(attention_prefix, a_page_lives_while_any_holder_does)
{
    attn_cache *c = make_cache(4);
    int32_t *t = token_list(16, 3);
    attn_seq *a = attn_seq_create(c);
    fill(a, t, 16);
    attn_seq_publish(a, t, 16, SALT);
    attn_seq *b = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(b, t, 16, SALT), 1);
    attn_seq_free(a);
    /* b still holds it: the pool cannot give it to anyone */
    attn_seq *d = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(d, 48), 0);
    cr_assert_eq(attn_seq_reserve(d, 64), -ENOSPC);
    for (int i = 0; i < attn_seq_pages(d); i++) cr_assert_neq(d->pages[i], b->pages[0]);
    float k[32], v[32], k0[32], v0[32];
    attn_seq_read_kv(b, 0, 0, 5, k, v);
    attn_seq *ref = attn_seq_create(c);
    attn_seq_free(d);
    fill(ref, t, 16);
    attn_seq_read_kv(ref, 0, 0, 5, k0, v0);
    cr_assert(memcmp(k, k0, sizeof k) == 0 && memcmp(v, v0, sizeof v) == 0);
    attn_seq_free(ref), attn_seq_free(b);
    attn_cache_free(c);
    free(t);
}

Test(attention_prefix, truncating_into_a_private_published_page_unpublishes_it)
{
    attn_cache *c = make_cache(4);
    int32_t *t = token_list(32, 4);
    attn_seq *a = attn_seq_create(c);
    fill(a, t, 32);
    attn_seq_publish(a, t, 32, SALT);
    attn_seq_truncate(a, 20); /* page 1 changes */
    struct attn_prefix_stats st;
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_cached, 1, "page 1 is no longer what its name says");
    attn_seq *b = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(b, t, 32, SALT), 1);
    attn_seq_free(a), attn_seq_free(b);
    attn_cache_free(c);
    free(t);
}

Test(attention_prefix, two_writers_of_one_prefix_publish_it_once)
{
    attn_cache *c = make_cache(8);
    int32_t *t = token_list(32, 5);
    attn_seq *a = attn_seq_create(c), *b = attn_seq_create(c);
    fill(a, t, 32);
    fill(b, t, 32);
    attn_seq_publish(a, t, 32, SALT);
    attn_seq_publish(b, t, 32, SALT);
    struct attn_prefix_stats st;
    attn_cache_prefix_stats(c, &st);
    cr_assert_eq(st.pages_cached, 2);
    attn_seq *d = attn_seq_create(c);
    cr_assert_eq(attn_seq_adopt_prefix(d, t, 32, SALT), 2);
    cr_assert_eq(d->pages[0], a->pages[0], "the first publisher's pages");
    attn_seq_free(a), attn_seq_free(b), attn_seq_free(d);
    attn_cache_free(c);
    free(t);
}

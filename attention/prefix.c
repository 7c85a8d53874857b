/*
 * prefix.c: pages shared between sequences (prefix caching).
 *
 * A page whose tokens are all written is immutable from then on. Its K/V
 * depend on its own tokens and on every token before it, and on nothing
 * else the cache does not already fix (the model, its precision and the KV
 * type: the caller's `salt`). So a full page is named by a hash chained
 * over the token ids of it and of all the pages before it, and a new
 * sequence whose prompt starts with the same tokens can take the pages
 * instead of computing them again (vLLM's automatic prefix caching).
 *
 * Every page has a reference count: the sequences holding it. A published
 * page (one with a name in the table) whose count falls to zero is not
 * freed but kept, least recently used first, and given out again only when
 * the pool has no never-used or freed page left: it counts as free. Each
 * published page keeps its parent's hash and its own token ids, and a
 * lookup compares them: the chain cannot hand out a page of another prefix
 * even where 64-bit hashes collide.
 *
 * Shared pages are never written: a sequence only appends after its
 * adopted prefix (new pages), and rewriting or truncating into a published
 * page it alone holds unpublishes it first (cache.c).
 */
#include "attention/attn_internal.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY -1

/* ----------------------------------------------------------------- hash */

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The name of a page with these tokens after the page named `parent`. */
static uint64_t page_hash(uint64_t parent, const int32_t *tokens, int n)
{
    uint64_t h = mix(parent ^ 0x9e3779b97f4a7c15ull);
    for (int i = 0; i < n; i++) h = mix(h ^ (uint32_t)tokens[i]);
    return h;
}

/* ---------------------------------------------------------------- table */
/* Open addressing, linear probing, backward-shift deletion: hash -> page. */

static size_t slot_of(const attn_cache *cache, uint64_t hash)
{
    return (size_t)(hash & (uint64_t)(cache->table_size - 1));
}

static void table_insert(attn_cache *cache, int page)
{
    size_t at = slot_of(cache, cache->keys[page].hash);
    while (cache->table[at] != EMPTY) at = (at + 1) & (size_t)(cache->table_size - 1);
    cache->table[at] = page;
}

static void table_remove(attn_cache *cache, int page)
{
    size_t mask = (size_t)cache->table_size - 1, at = slot_of(cache, cache->keys[page].hash);
    while (cache->table[at] != page) {
        UTIL_CHECK(cache->table[at] != EMPTY);
        at = (at + 1) & mask;
    }
    /* shift back the entries that probed past the hole */
    for (size_t next = (at + 1) & mask; cache->table[next] != EMPTY; next = (next + 1) & mask) {
        size_t home = slot_of(cache, cache->keys[cache->table[next]].hash);
        if (((next - home) & mask) >= ((next - at) & mask)) {
            cache->table[at] = cache->table[next];
            at = next;
        }
    }
    cache->table[at] = EMPTY;
}

/* The published page named `hash` with this parent and these tokens, or -1. */
static int table_find(const attn_cache *cache, uint64_t hash, uint64_t parent, const int32_t *tokens)
{
    int ps = cache->config.page_size;
    for (size_t at = slot_of(cache, hash); cache->table[at] != EMPTY;
         at = (at + 1) & (size_t)(cache->table_size - 1)) {
        int page = cache->table[at];
        const struct attn_page_key *k = &cache->keys[page];
        if (k->hash == hash && k->parent == parent &&
            memcmp(cache->key_tokens + (size_t)page * ps, tokens, sizeof(int32_t) * (size_t)ps) == 0)
            return page;
    }
    return EMPTY;
}

/* ------------------------------------------------------------------ LRU */

static void lru_remove(attn_cache *cache, int page)
{
    int prev = cache->lru_prev[page], next = cache->lru_next[page];
    if (prev != EMPTY) cache->lru_next[prev] = next;
    else cache->lru_head = next;
    if (next != EMPTY) cache->lru_prev[next] = prev;
    else cache->lru_tail = prev;
    cache->n_lru--;
}

static void lru_push(attn_cache *cache, int page)
{
    cache->lru_prev[page] = cache->lru_tail;
    cache->lru_next[page] = EMPTY;
    if (cache->lru_tail != EMPTY) cache->lru_next[cache->lru_tail] = page;
    else cache->lru_head = page;
    cache->lru_tail = page;
    cache->n_lru++;
}

/* ------------------------------------------------- pool (used by cache.c) */

void attn_prefix_init(attn_cache *cache)
{
    int n = cache->config.n_pages;
    cache->refs = util_xcalloc((size_t)n, sizeof(int));
    cache->keys = util_xcalloc((size_t)n, sizeof *cache->keys);
    cache->key_tokens = util_xmalloc(sizeof(int32_t) * (size_t)n * (size_t)cache->config.page_size);
    cache->table_size = 16;
    while (cache->table_size < 2 * n) cache->table_size *= 2;
    cache->table = util_xmalloc(sizeof(int) * (size_t)cache->table_size);
    for (int i = 0; i < cache->table_size; i++) cache->table[i] = EMPTY;
    cache->lru_prev = util_xmalloc(sizeof(int) * (size_t)n);
    cache->lru_next = util_xmalloc(sizeof(int) * (size_t)n);
    cache->lru_head = cache->lru_tail = EMPTY;
}

void attn_prefix_free(attn_cache *cache)
{
    free(cache->refs);
    free(cache->keys);
    free(cache->key_tokens);
    free(cache->table);
    free(cache->lru_prev);
    free(cache->lru_next);
}

void attn_prefix_unpublish(attn_cache *cache, int page)
{
    if (!cache->keys[page].published) return;
    table_remove(cache, page);
    cache->keys[page].published = false;
    cache->n_published--;
}

int attn_prefix_take_page(attn_cache *cache)
{
    int page;
    if (cache->n_free > 0) {
        page = cache->free_pages[--cache->n_free];
    } else {
        UTIL_CHECK(cache->n_lru > 0);
        page = cache->lru_head; /* the least recently used cached page */
        lru_remove(cache, page);
        attn_prefix_unpublish(cache, page);
        cache->evictions++;
    }
    cache->refs[page] = 1;
    return page;
}

void attn_prefix_drop_page(attn_cache *cache, int page)
{
    UTIL_CHECK(cache->refs[page] > 0);
    if (--cache->refs[page] == 1) cache->n_shared--;
    if (cache->refs[page] > 0) return;
    if (cache->keys[page].published)
        lru_push(cache, page);
    else
        cache->free_pages[cache->n_free++] = page;
}

/* ------------------------------------------------------------ sequences */

int attn_cache_prefix_match(const attn_cache *cache, const int32_t *tokens, int n_tokens,
                            uint64_t salt, int *idle)
{
    int ps = cache->config.page_size, n = 0;
    uint64_t parent = salt;
    *idle = 0;
    for (; (n + 1) * ps <= n_tokens; n++) {
        const int32_t *page_tokens = tokens + (size_t)n * ps;
        uint64_t hash = page_hash(parent, page_tokens, ps);
        int page = table_find(cache, hash, parent, page_tokens);
        if (page == EMPTY) break;
        *idle += cache->refs[page] == 0;
        parent = hash;
    }
    return n;
}

int attn_seq_adopt_prefix(attn_seq *seq, const int32_t *tokens, int n_tokens, uint64_t salt)
{
    attn_cache *cache = seq->cache;
    int ps = cache->config.page_size;
    UTIL_CHECK(seq->n_pages == 0 && seq->len == 0 && n_tokens >= 0);
    uint64_t parent = salt;
    int n = 0;
    for (; (n + 1) * ps <= n_tokens; n++) {
        const int32_t *page_tokens = tokens + (size_t)n * ps;
        uint64_t hash = page_hash(parent, page_tokens, ps);
        int page = table_find(cache, hash, parent, page_tokens);
        if (page == EMPTY) break;
        if (cache->refs[page] == 0) lru_remove(cache, page);
        if (++cache->refs[page] == 2) cache->n_shared++;
        if (seq->n_pages == seq->cap) {
            seq->cap = seq->cap ? 2 * seq->cap : 16;
            seq->pages = util_xrealloc(seq->pages, sizeof(int) * (size_t)seq->cap);
        }
        seq->pages[seq->n_pages++] = page;
        parent = hash;
    }
    seq->len = n * ps;
    seq->n_published = n;
    seq->chain = parent;
    return n;
}

void attn_seq_publish(attn_seq *seq, const int32_t *tokens, int n_tokens, uint64_t salt)
{
    attn_cache *cache = seq->cache;
    int ps = cache->config.page_size;
    int full = (n_tokens < seq->len ? n_tokens : seq->len) / ps;
    if (seq->n_published == 0) seq->chain = salt;
    for (int i = seq->n_published; i < full; i++) {
        const int32_t *page_tokens = tokens + (size_t)i * ps;
        uint64_t hash = page_hash(seq->chain, page_tokens, ps);
        int page = seq->pages[i];
        /* another sequence may have published the same prefix first: keep
         * its page, this one stays private */
        if (!cache->keys[page].published && table_find(cache, hash, seq->chain, page_tokens) == EMPTY) {
            cache->keys[page] = (struct attn_page_key){.hash = hash, .parent = seq->chain, .published = true};
            memcpy(cache->key_tokens + (size_t)page * ps, page_tokens, sizeof(int32_t) * (size_t)ps);
            table_insert(cache, page);
            cache->n_published++;
        }
        seq->chain = hash;
        seq->n_published = i + 1;
    }
}

void attn_cache_prefix_stats(const attn_cache *cache, struct attn_prefix_stats *out)
{
    *out = (struct attn_prefix_stats){
        .pages_cached = cache->n_published,
        .pages_shared = cache->n_shared,
        .pages_idle = cache->n_lru,
        .evictions = cache->evictions,
    };
}

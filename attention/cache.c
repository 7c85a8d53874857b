/* cache.c: the paged KV cache: page pool, page tables, K/V storage and
 * quantization, and the Quest min/max kept beside each page. */
#include "attention/attn_internal.h"
#include "util/util.h"
#include "util/vec.h"

#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ types */

static const char *const kv_type_names[] = {"f32", "f16", "int8", "int4"};

int attn_kv_type_parse(const char *name, enum attn_kv_type *out)
{
    if (!name || !out) return -EINVAL;
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, kv_type_names[i]) == 0) {
            *out = (enum attn_kv_type)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *attn_kv_type_name(enum attn_kv_type type)
{
    return (unsigned)type < 4 ? kv_type_names[type] : "unknown";
}

/* Bytes of n stored elements of a K or V row. */
static size_t kv_bytes(enum attn_kv_type type, size_t n)
{
    switch (type) {
    case ATTN_KV_F32:
        return n * 4;
    case ATTN_KV_F16:
        return n * 2;
    case ATTN_KV_INT8:
        return n;
    case ATTN_KV_INT4:
        return n / 2;
    }
    return 0;
}

/* ------------------------------------------------------------ page layout */

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static struct attn_block_layout block_layout(const struct attn_cache_config *c)
{
    struct attn_block_layout l = {0};
    size_t data = align64(kv_bytes(c->kv_type, (size_t)c->head_dim * c->page_size));
    size_t per_token = align64((size_t)c->page_size * sizeof(float));
    bool scaled = c->kv_type == ATTN_KV_INT8 || c->kv_type == ATTN_KV_INT4;
    bool zeroed = c->kv_type == ATTN_KV_INT4;
    size_t at = 0;
    l.k = at, at += data;
    l.v = at, at += data;
    l.k_scale = at, at += scaled ? per_token : 0;
    l.k_zero = at, at += zeroed ? per_token : 0;
    l.v_scale = at, at += scaled ? per_token : 0;
    l.v_zero = at, at += zeroed ? per_token : 0;
    l.bytes = at;
    return l;
}

struct attn_block attn_cache_block_view(const attn_cache *cache, int page, int layer, int kv_head)
{
    const unsigned char *b = attn_cache_block(cache, page, layer, kv_head);
    const struct attn_block_layout *l = &cache->layout;
    return (struct attn_block){
        .k = b + l->k,
        .v = b + l->v,
        .k_scale = (const float *)(b + l->k_scale),
        .k_zero = (const float *)(b + l->k_zero),
        .v_scale = (const float *)(b + l->v_scale),
        .v_zero = (const float *)(b + l->v_zero),
    };
}

struct attn_bounds_view attn_seq_bounds_view(const attn_seq *seq, int layer, int kv_head)
{
    const attn_cache *cache = seq->cache;
    return (struct attn_bounds_view){
        .base = (const unsigned char *)attn_cache_bounds(cache, 0, layer, kv_head),
        .stride = (size_t)2 * cache->config.head_dim * sizeof(uint16_t),
        .kmin_offset = (size_t)cache->config.head_dim * sizeof(uint16_t),
        .pages = seq->pages,
    };
}

/* ------------------------------------------------------------------- pool */

/* Quest bounds of one page, all layers and KV heads. */
static size_t bounds_bytes_per_page(const struct attn_cache_config *c)
{
    return (size_t)c->n_layers * c->n_kv_heads * 2 * c->head_dim * sizeof(uint16_t);
}

int attn_cache_create(const struct attn_cache_config *config, attn_cache **out)
{
    if (!config || !out) return -EINVAL;
    const struct attn_cache_config *c = config;
    if (c->n_layers <= 0 || c->n_kv_heads <= 0 || c->n_pages <= 0) return -EINVAL;
    if (c->head_dim <= 0 || c->head_dim % ATTN_CHUNK || c->head_dim > ATTN_MAX_HEAD_DIM)
        return -EINVAL;
    if (c->page_size <= 0 || c->page_size % ATTN_CHUNK || c->page_size > ATTN_MAX_PAGE_SIZE)
        return -EINVAL;
    if ((unsigned)c->kv_type > ATTN_KV_INT4) return -EINVAL;

    attn_cache *cache = util_xcalloc(1, sizeof *cache);
    cache->config = *c;
    cache->layout = block_layout(c);
    cache->page_bytes = cache->layout.bytes * (size_t)c->n_layers * c->n_kv_heads;
    cache->pool = util_aligned_alloc(cache->page_bytes * (size_t)c->n_pages);
    cache->free_pages = util_xmalloc(sizeof(int) * (size_t)c->n_pages);
    /* Pushed in reverse so that page 0 is handed out first. */
    for (int i = 0; i < c->n_pages; i++) cache->free_pages[i] = c->n_pages - 1 - i;
    cache->n_free = c->n_pages;
    cache->fill = util_xcalloc((size_t)c->n_pages * c->n_layers * c->n_kv_heads, sizeof(uint16_t));
    cache->bounds = util_aligned_alloc(bounds_bytes_per_page(c) * (size_t)c->n_pages);
    attn_prefix_init(cache);
    *out = cache;
    return 0;
}

void attn_cache_free(attn_cache *cache)
{
    if (!cache) return;
    /* every sequence freed first */
    UTIL_CHECK(cache->n_free + cache->n_lru == cache->config.n_pages);
    attn_prefix_free(cache);
    util_aligned_free(cache->pool);
    free(cache->free_pages);
    free(cache->fill);
    util_aligned_free(cache->bounds);
    free(cache);
}

const struct attn_cache_config *attn_cache_config(const attn_cache *cache)
{
    return &cache->config;
}
int attn_cache_pages_free(const attn_cache *cache)
{
    return cache->n_free + cache->n_lru; /* idle cached pages are given out when needed */
}
int attn_cache_pages_total(const attn_cache *cache)
{
    return cache->config.n_pages;
}
size_t attn_cache_page_bytes(const attn_cache *cache)
{
    return cache->page_bytes + bounds_bytes_per_page(&cache->config);
}

/* ------------------------------------------------------ Quest min and max */

uint16_t attn_f16_round_up(float x)
{
    uint16_t h = util_f32_to_f16(x);
    if (isnan(x) || util_f16_to_f32(h) >= x) return h;
    if (h == 0x8000) return 0x0001;      /* -0 -> smallest positive subnormal */
    return (h & 0x8000) ? h - 1 : h + 1; /* one f16 step toward +inf */
}

uint16_t attn_f16_round_down(float x)
{
    return attn_f16_round_up(-x) ^ 0x8000;
}

/* Empty bounds (max -inf, min +inf) of the block of `page` at `layer` and
 * `kv_head`, and no token folded in. */
static void meta_reset(attn_cache *cache, int page, int layer, int kv_head)
{
    const struct attn_cache_config *c = &cache->config;
    uint16_t *kmax = attn_cache_bounds(cache, page, layer, kv_head), *kmin = kmax + c->head_dim;
    for (int d = 0; d < c->head_dim; d++) kmax[d] = 0xfc00, kmin[d] = 0x7c00;
    *attn_cache_fill(cache, page, layer, kv_head) = 0;
}

/* Widens the bounds of `page` at layer and kv_head to cover key k: F16C
 * rounds toward +inf for the max and toward -inf for the min, so the f16
 * bounds still bound the f32 key (attn_f16_round_up/down, 8 channels at a
 * time). A NaN channel leaves its bounds alone (max/min return the old
 * bound when the new value is NaN). */
static void meta_fold(attn_cache *cache, int page, int layer, int kv_head, const float *k)
{
    uint16_t *kmax = attn_cache_bounds(cache, page, layer, kv_head);
    uint16_t *kmin = kmax + cache->config.head_dim;
    for (int d = 0; d < cache->config.head_dim; d += 8) {
        __m256 x = _mm256_loadu_ps(k + d);
        __m256 up = _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
        __m256 down =
            _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
        __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kmax + d)));
        __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kmin + d)));
        /* exact: both sides are f16 values */
        _mm_storeu_si128((__m128i *)(kmax + d), _mm256_cvtps_ph(_mm256_max_ps(up, hi), 0));
        _mm_storeu_si128((__m128i *)(kmin + d), _mm256_cvtps_ph(_mm256_min_ps(down, lo), 0));
    }
}

/* ------------------------------------------------------ K/V quantization */

static int8_t quantize_int8_value(float x, float inv_scale)
{
    float c = nearbyintf(x * inv_scale);
    return (int8_t)attn_minf(attn_maxf(c, -127.0f), 127.0f);
}

/* Symmetric INT8 of n values: codes and the scale (absmax / 127). */
static float quantize_int8(const float *x, int n, int8_t *codes)
{
    float absmax = 0;
    for (int i = 0; i < n; i++) absmax = attn_maxf(absmax, fabsf(x[i]));
    float scale = absmax / 127.0f;
    float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (int i = 0; i < n; i++) codes[i] = quantize_int8_value(x[i], inv);
    return scale;
}

/* Asymmetric INT4 of n values (a multiple of 16): codes 0..15 with
 * x ~ code*scale + zero, where zero is the minimum and scale spreads
 * [min, max] over 15 steps. AVX2, 8 values at a time; rounding to nearest
 * even, as nearbyintf. NaN inputs give code 0. */
static void quantize_int4(const float *x, int n, uint8_t *codes, float *scale, float *zero)
{
    __m256 lo8 = _mm256_loadu_ps(x), hi8 = lo8;
    for (int i = 8; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        lo8 = _mm256_min_ps(v, lo8);
        hi8 = _mm256_max_ps(v, hi8);
    }
    float lo = -util_hmax8(_mm256_sub_ps(_mm256_setzero_ps(), lo8)), hi = util_hmax8(hi8);
    float s = (hi - lo) / 15.0f;
    float inv = s > 0 ? 1.0f / s : 0.0f;
    const __m256 vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv),
                 fifteen = _mm256_set1_ps(15.0f);
    for (int i = 0; i < n; i += 8) {
        __m256 c = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vlo), vinv),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c = _mm256_min_ps(_mm256_max_ps(c, _mm256_setzero_ps()), fifteen); /* NaN -> 0 */
        __m256i q = _mm256_cvtps_epi32(c);
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(codes + i), _mm_packus_epi16(w, w));
    }
    *scale = s;
    *zero = lo;
}

/* Where element d of token t sits in a K (transposed) or V section. */
static size_t element_index(const struct attn_cache_config *c, bool transposed, int d, int t)
{
    return transposed ? (size_t)d * c->page_size + t : (size_t)t * c->head_dim + d;
}

/*
 * Stores vector x (head_dim floats) as token `t` of a K (transposed: element
 * d at d*page_size + t, stride page_size) or V (row t: element d at
 * t*head_dim + d) section, quantized to the cache's type. For INT4 the
 * transposed row is packed along tokens, the V row along channels.
 */
static void store_vector(const attn_cache *cache, unsigned char *data, float *scale, float *zero,
                         bool transposed, int t, const float *x)
{
    const struct attn_cache_config *c = &cache->config;
    int hd = c->head_dim, ps = c->page_size;
    switch (c->kv_type) {
    case ATTN_KV_F32:
        for (int d = 0; d < hd; d++) ((float *)data)[element_index(c, transposed, d, t)] = x[d];
        break;
    case ATTN_KV_F16:
        for (int d = 0; d < hd; d++)
            ((uint16_t *)data)[element_index(c, transposed, d, t)] = util_f32_to_f16(x[d]);
        break;
    case ATTN_KV_INT8: {
        int8_t codes[ATTN_MAX_HEAD_DIM];
        scale[t] = quantize_int8(x, hd, codes);
        for (int d = 0; d < hd; d++)
            ((int8_t *)data)[element_index(c, transposed, d, t)] = codes[d];
        break;
    }
    case ATTN_KV_INT4: {
        uint8_t codes[ATTN_MAX_HEAD_DIM];
        quantize_int4(x, hd, codes, &scale[t], &zero[t]);
        if (transposed) { /* token t is one nibble of each channel's row */
            size_t byte = attn_int4_byte(t);
            int shift = attn_int4_shift(t);
            for (int d = 0; d < hd; d++) {
                uint8_t *b = data + (size_t)d * (ps / 2) + byte;
                *b = (uint8_t)((*b & ~(0xf << shift)) | (codes[d] << shift));
            }
        } else { /* a chunk of 16: byte j = element j (low nibble) and j + 8 (high) */
            uint8_t *row = data + (size_t)t * (hd / 2);
            for (int c = 0; c < hd; c += 16) {
                __m128i v = _mm_loadu_si128((const __m128i *)(codes + c));
                __m128i packed = _mm_or_si128(v, _mm_slli_epi16(_mm_srli_si128(v, 8), 4));
                _mm_storel_epi64((__m128i *)(row + c / 2), packed);
            }
        }
        break;
    }
    }
}

static void read_token(const attn_cache *cache, int page, int layer, int kv_head, int t, float *k,
                       float *v)
{
    const struct attn_cache_config *c = &cache->config;
    struct attn_block b = attn_cache_block_view(cache, page, layer, kv_head);
    for (int d = 0; d < c->head_dim; d++) {
        if (k) k[d] = attn_block_key(&b, c->kv_type, c->head_dim, c->page_size, d, t);
        if (v) v[d] = attn_block_value(&b, c->kv_type, c->head_dim, t, d);
    }
}

/* Rebuilds the bounds of `page` at `layer` and `kv_head` from its first n
 * stored keys. Used when tokens are rewritten or truncated; for quantized
 * caches the stored keys are the dequantized ones, which are what
 * attention reads. */
static void meta_rebuild(attn_cache *cache, int page, int layer, int kv_head, int n)
{
    meta_reset(cache, page, layer, kv_head);
    float k[ATTN_MAX_HEAD_DIM];
    for (int t = 0; t < n; t++) {
        read_token(cache, page, layer, kv_head, t, k, NULL);
        meta_fold(cache, page, layer, kv_head, k);
    }
    *attn_cache_fill(cache, page, layer, kv_head) = (uint16_t)n;
}

/* -------------------------------------------------------------- sequences */

attn_seq *attn_seq_create(attn_cache *cache)
{
    UTIL_CHECK(cache);
    attn_seq *seq = util_xcalloc(1, sizeof *seq);
    seq->cache = cache;
    return seq;
}

/* Gives back pages [keep, n_pages) of seq, the last one first so that the
 * pool hands them out again in table order. */
static void release_pages(attn_seq *seq, int keep)
{
    attn_cache *cache = seq->cache;
    for (int i = seq->n_pages - 1; i >= keep; i--) attn_prefix_drop_page(cache, seq->pages[i]);
    seq->n_pages = keep;
}

void attn_seq_free(attn_seq *seq)
{
    if (!seq) return;
    release_pages(seq, 0);
    free(seq->pages);
    free(seq);
}

int attn_seq_len(const attn_seq *seq)
{
    return seq->len;
}
int attn_seq_pages(const attn_seq *seq)
{
    return seq->n_pages;
}

int attn_seq_reserve(attn_seq *seq, int n_new)
{
    if (!seq || n_new < 0) return -EINVAL;
    attn_cache *cache = seq->cache;
    int ps = cache->config.page_size;
    int64_t tokens = (int64_t)seq->len + n_new;
    int64_t need64 = (tokens + ps - 1) / ps;
    if (need64 > cache->config.n_pages) return -ENOSPC;
    int need = (int)need64;
    if (need <= seq->n_pages) return 0;
    if (need - seq->n_pages > attn_cache_pages_free(cache)) return -ENOSPC;
    if (need > seq->cap) {
        seq->cap = need > 2 * seq->cap ? need : 2 * seq->cap;
        seq->pages = util_xrealloc(seq->pages, sizeof(int) * (size_t)seq->cap);
    }
    while (seq->n_pages < need) {
        int page = attn_prefix_take_page(cache);
        /* A reused page must not carry its last owner's bounds. */
        for (int l = 0; l < cache->config.n_layers; l++)
            for (int h = 0; h < cache->config.n_kv_heads; h++) meta_reset(cache, page, l, h);
        seq->pages[seq->n_pages++] = page;
    }
    return 0;
}

void attn_seq_write_head(attn_seq *seq, int layer, int kv_head, int pos, int n, const float *k,
                         const float *v, int stride)
{
    attn_cache *cache = seq->cache;
    const struct attn_cache_config *c = &cache->config;
    const struct attn_block_layout *l = &cache->layout;
    int ps = c->page_size;
    UTIL_CHECK(layer >= 0 && layer < c->n_layers && kv_head >= 0 && kv_head < c->n_kv_heads);
    UTIL_CHECK(pos >= 0 && n >= 0 && (int64_t)pos + n <= (int64_t)seq->n_pages * ps);
    for (int i = 0; i < n; i++) {
        int p = pos + i, page = seq->pages[p / ps], t = p % ps;
        uint16_t *fill = attn_cache_fill(cache, page, layer, kv_head);
        /* Writes go in order; rewriting a token drops the bounds of it and
         * everything after it in the page. */
        UTIL_CHECK(t <= *fill);
        if (t < *fill) { /* a rewrite: only of a page no other sequence holds */
            UTIL_CHECK(cache->refs[page] == 1);
            attn_prefix_unpublish(cache, page);
            if (seq->n_published > p / ps) seq->n_published = 0;
            meta_rebuild(cache, page, layer, kv_head, t);
        }
        unsigned char *b = attn_cache_block(cache, page, layer, kv_head);
        const float *kx = k + (size_t)i * stride, *vx = v + (size_t)i * stride;
        store_vector(cache, b + l->k, (float *)(b + l->k_scale), (float *)(b + l->k_zero), true, t,
                     kx);
        store_vector(cache, b + l->v, (float *)(b + l->v_scale), (float *)(b + l->v_zero), false, t,
                     vx);
        meta_fold(cache, page, layer, kv_head, kx); /* from the unquantized key */
        *fill = (uint16_t)(t + 1);
    }
}

void attn_seq_write(attn_seq *seq, int layer, int pos, int n, const float *k, const float *v)
{
    const struct attn_cache_config *c = &seq->cache->config;
    int width = c->n_kv_heads * c->head_dim;
    for (int h = 0; h < c->n_kv_heads; h++)
        attn_seq_write_head(seq, layer, h, pos, n, k + (size_t)h * c->head_dim,
                            v + (size_t)h * c->head_dim, width);
}

void attn_seq_commit(attn_seq *seq, int len)
{
    UTIL_CHECK(len >= seq->len &&
               (int64_t)len <= (int64_t)seq->n_pages * seq->cache->config.page_size);
    seq->len = len;
}

void attn_seq_truncate(attn_seq *seq, int len)
{
    attn_cache *cache = seq->cache;
    const struct attn_cache_config *c = &cache->config;
    UTIL_CHECK(len >= 0);
    int ps = c->page_size;
    if (len < seq->len) seq->len = len;
    int keep = (len + ps - 1) / ps;
    if (keep < seq->n_pages) release_pages(seq, keep);
    if (seq->n_published > len / ps) seq->n_published = 0; /* named again on the next publish */
    if (len % ps == 0 || keep == 0) return;
    int page = seq->pages[keep - 1], t = len % ps;
    bool cut = false;
    for (int layer = 0; layer < c->n_layers && !cut; layer++)
        for (int h = 0; h < c->n_kv_heads; h++) cut |= *attn_cache_fill(cache, page, layer, h) > t;
    if (cut) { /* the page changes: only one no other sequence holds */
        UTIL_CHECK(cache->refs[page] == 1);
        attn_prefix_unpublish(cache, page);
    }
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int h = 0; h < c->n_kv_heads; h++)
            if (*attn_cache_fill(cache, page, layer, h) > t) meta_rebuild(cache, page, layer, h, t);
}

void attn_seq_read_kv(const attn_seq *seq, int layer, int kv_head, int pos, float *k, float *v)
{
    const attn_cache *cache = seq->cache;
    int ps = cache->config.page_size;
    UTIL_CHECK(pos >= 0 && pos < seq->n_pages * ps);
    read_token(cache, seq->pages[pos / ps], layer, kv_head, pos % ps, k, v);
}

/* Tests for the paged KV cache: the pool, page tables, storage round trips,
 * and the Quest min/max kept beside each page. */
#include "test_attention_common.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

/* Round-trip error bounds of the storage types, relative to what each
 * quantizer promises: half a step of its grid, plus float rounding. */
#define F16_MAX_REL_ERR        0x1p-11f     /* half an ulp of f16's 10-bit mantissa */
#define INT8_MAX_ERR_OF_ABSMAX (0.5f / 127) /* half a step of absmax/127 */
#define INT4_MAX_ERR_OF_RANGE  (0.5f / 15)  /* half a step of (max-min)/15 */
#define F16_MIN_ABS_ERR        0x1p-25f     /* half the f16 subnormal step */
#define QUANT_SLACK            1e-6f        /* float rounding of scale and zero */

static struct attn_cache_config small_config(enum attn_kv_type type, int n_pages)
{
    return (struct attn_cache_config){.n_layers = 2,
                                      .n_kv_heads = 2,
                                      .head_dim = 32,
                                      .page_size = 16,
                                      .n_pages = n_pages,
                                      .kv_type = type};
}

/* --------------------------------------------------------------- config */

Test(attention_cache, kv_type_names_round_trip_and_unknown_is_einval)
{
    for (int i = 0; i < 4; i++) {
        enum attn_kv_type t;
        cr_assert_eq(attn_kv_type_parse(attn_kv_type_name((enum attn_kv_type)i), &t), 0);
        cr_assert_eq((int)t, i);
    }
    enum attn_kv_type t;
    cr_assert_eq(attn_kv_type_parse("int2", &t), -EINVAL);
    cr_assert_eq(attn_kv_type_parse(NULL, &t), -EINVAL);
}

Test(attention_cache, create_rejects_sizes_the_kernels_cannot_take)
{
    attn_cache *c = NULL;
    struct attn_cache_config bad[] = {
        {2, 2, 24, 16, 8, ATTN_KV_F32}, /* head_dim not a multiple of 16 */
        {2, 2, 32, 8, 8, ATTN_KV_F32},  /* page_size not a multiple of 16 */
        {2, 2, 32, 0, 8, ATTN_KV_F32},           {0, 2, 32, 16, 8, ATTN_KV_F32},
        {2, 0, 32, 16, 8, ATTN_KV_F32},          {2, 2, 32, 16, 0, ATTN_KV_F32},
        {2, 2, 512, 16, 8, ATTN_KV_F32},         {2, 2, 32, 512, 8, ATTN_KV_F32},
        {2, 2, 32, 16, 8, (enum attn_kv_type)9},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(attn_cache_create(&bad[i], &c), -EINVAL, "config %zu", i);
    struct attn_cache_config ok = small_config(ATTN_KV_INT4, 4);
    cr_assert_eq(attn_cache_create(&ok, &c), 0);
    cr_assert_eq(attn_cache_pages_total(c), 4);
    cr_assert_eq(attn_cache_pages_free(c), 4);
    cr_assert_geq(attn_cache_page_bytes(c), (size_t)2 * 2 * (2 * 16 * 32 / 2));
    attn_cache_free(c);
}

/* ------------------------------------------------------------ page pool */

Test(attention_cache, reserve_takes_whole_pages_and_free_returns_them)
{
    struct attn_cache_config cfg = small_config(ATTN_KV_F32, 10);
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    attn_seq *a = attn_seq_create(c), *b = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(a, 17), 0);
    cr_assert_eq(attn_seq_pages(a), 2);
    cr_assert_eq(attn_seq_reserve(a, 32), 0); /* still from len 0: 2 pages */
    cr_assert_eq(attn_seq_pages(a), 2);
    attn_seq_commit(a, 17);
    cr_assert_eq(attn_seq_len(a), 17);
    cr_assert_eq(attn_seq_reserve(a, 16), 0); /* 33 tokens: 3 pages */
    cr_assert_eq(attn_seq_pages(a), 3);
    cr_assert_eq(attn_seq_reserve(b, 16 * 7), 0);
    cr_assert_eq(attn_cache_pages_free(c), 0);
    /* Every page belongs to exactly one sequence. */
    int seen[10] = {0};
    for (int i = 0; i < 3; i++) seen[a->pages[i]]++;
    for (int i = 0; i < 7; i++) seen[b->pages[i]]++;
    for (int i = 0; i < 10; i++) cr_assert_eq(seen[i], 1);
    attn_seq_free(a);
    cr_assert_eq(attn_cache_pages_free(c), 3);
    attn_seq_free(b);
    attn_seq_free(NULL);
    cr_assert_eq(attn_cache_pages_free(c), 10);
    attn_cache_free(c);
}

Test(attention_cache, reserve_on_exhausted_pool_returns_enospc_and_changes_nothing)
{
    struct attn_cache_config cfg = small_config(ATTN_KV_F16, 5);
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    attn_seq *a = attn_seq_create(c), *b = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(a, 40), 0); /* 3 pages */
    attn_seq_commit(a, 20);
    int before[3];
    memcpy(before, a->pages, sizeof before);
    cr_assert_eq(attn_seq_reserve(b, 16), 0);       /* 1 page, 1 left */
    cr_assert_eq(attn_seq_reserve(a, 60), -ENOSPC); /* needs 5, has 3, 1 free */
    cr_assert_eq(attn_seq_pages(a), 3);
    cr_assert_eq(attn_seq_len(a), 20);
    cr_assert_eq(memcmp(before, a->pages, sizeof before), 0);
    cr_assert_eq(attn_cache_pages_free(c), 1);
    cr_assert_eq(attn_seq_reserve(b, 16 * 10000), -ENOSPC); /* more than the pool */
    cr_assert_eq(attn_seq_pages(b), 1);
    cr_assert_eq(attn_seq_reserve(a, 44), 0); /* exactly the last page */
    cr_assert_eq(attn_cache_pages_free(c), 0);
    cr_assert_eq(attn_seq_reserve(a, -1), -EINVAL);
    attn_seq_free(a);
    attn_seq_free(b);
    attn_cache_free(c);
}

Test(attention_cache, truncate_frees_pages_past_the_new_length)
{
    struct attn_cache_config cfg = small_config(ATTN_KV_F32, 8);
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    attn_seq *s = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(s, 70), 0); /* 5 pages */
    attn_seq_commit(s, 50);
    attn_seq_truncate(s, 33); /* keeps 3 pages */
    cr_assert_eq(attn_seq_pages(s), 3);
    cr_assert_eq(attn_seq_len(s), 33);
    cr_assert_eq(attn_cache_pages_free(c), 5);
    attn_seq_truncate(s, 48); /* past len: only drops unneeded pages */
    cr_assert_eq(attn_seq_len(s), 33);
    cr_assert_eq(attn_seq_pages(s), 3);
    attn_seq_truncate(s, 0);
    cr_assert_eq(attn_seq_pages(s), 0);
    cr_assert_eq(attn_cache_pages_free(c), 8);
    attn_seq_free(s);
    attn_cache_free(c);
}

/* ------------------------------------------------------------- storage */

/* Writes random K/V, reads them back and checks each type's error bound. */
static void check_round_trip(enum attn_kv_type type)
{
    for (int hd = 16; hd <= 128; hd *= 2) {
        struct test_kv t;
        int len = 37;
        test_kv_create(&t, 2, 2, 2, hd, len, type, 100 + hd, 5);
        float k[ATTN_MAX_HEAD_DIM], v[ATTN_MAX_HEAD_DIM];
        for (int l = 0; l < 2; l++) {
            for (int p = 0; p < len; p++) {
                for (int h = 0; h < 2; h++) {
                    attn_seq_read_kv(t.seq, l, h, p, k, v);
                    const float *src[2] = {t.k + ((size_t)(l * len + p) * 2 + h) * hd,
                                           t.v + ((size_t)(l * len + p) * 2 + h) * hd};
                    const float *got[2] = {k, v};
                    for (int w = 0; w < 2; w++) {
                        float lo = src[w][0], hi = src[w][0], absmax = 0;
                        for (int d = 0; d < hd; d++) {
                            lo = fminf(lo, src[w][d]), hi = fmaxf(hi, src[w][d]);
                            absmax = fmaxf(absmax, fabsf(src[w][d]));
                        }
                        for (int d = 0; d < hd; d++) {
                            float x = src[w][d], err = fabsf(got[w][d] - x), bound = 0;
                            switch (type) {
                            case ATTN_KV_F32:
                                bound = 0;
                                break;
                            case ATTN_KV_F16:
                                bound = fmaxf(fabsf(x) * F16_MAX_REL_ERR, F16_MIN_ABS_ERR);
                                break;
                            case ATTN_KV_INT8:
                                bound = absmax * (INT8_MAX_ERR_OF_ABSMAX + QUANT_SLACK);
                                break;
                            case ATTN_KV_INT4:
                                bound = (hi - lo) * INT4_MAX_ERR_OF_RANGE + absmax * QUANT_SLACK;
                                break;
                            }
                            cr_assert_leq(err, bound,
                                          "%s hd %d %s layer %d pos %d head %d d %d: "
                                          "%g vs %g",
                                          attn_kv_type_name(type), hd, w ? "v" : "k", l, p, h, d,
                                          got[w][d], x);
                        }
                    }
                }
            }
        }
        test_kv_free(&t);
    }
}

Test(attention_cache, f32_storage_is_exact)
{
    check_round_trip(ATTN_KV_F32);
}
Test(attention_cache, f16_storage_within_half_an_ulp)
{
    check_round_trip(ATTN_KV_F16);
}
Test(attention_cache, int8_storage_within_half_a_step_of_absmax_over_127)
{
    check_round_trip(ATTN_KV_INT8);
}
Test(attention_cache, int4_storage_within_half_a_step_of_range_over_15)
{
    check_round_trip(ATTN_KV_INT4);
}

Test(attention_cache, int4_constant_vector_round_trips_exactly)
{
    struct attn_cache_config cfg = small_config(ATTN_KV_INT4, 2);
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    attn_seq *s = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(s, 1), 0);
    float x[64], k[32], v[32];
    for (int i = 0; i < 64; i++) x[i] = -2.5f;
    attn_seq_write(s, 1, 0, 1, x, x);
    attn_seq_read_kv(s, 1, 1, 0, k, v);
    for (int d = 0; d < 32; d++) cr_assert(k[d] == -2.5f && v[d] == -2.5f);
    attn_seq_free(s);
    attn_cache_free(c);
}

/* -------------------------------------------------------- Quest metadata */

Test(attention_cache, f16_outward_rounding_gives_the_nearest_bound)
{
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    for (int i = 0; i < 100000; i++) {
        float x = (float)(util_rng_normal(&rng) * pow(10, (int)(util_rng_uniform(&rng) * 10) - 5));
        uint16_t up = attn_f16_round_up(x), down = attn_f16_round_down(x);
        float fu = util_f16_to_f32(up), fd = util_f16_to_f32(down);
        cr_assert(fu >= x && fd <= x, "%g: [%g, %g]", x, fd, fu);
        /* The tightest bounds: equal when x is an f16, else neighbours. */
        if (util_f16_to_f32(util_f32_to_f16(x)) == x)
            cr_assert(up == down, "%g", x);
        else if (down & 0x8000)
            cr_assert_eq(down, up + 1, "%g: 0x%04x 0x%04x", x, down, up);
        else
            cr_assert_eq(up, down + 1, "%g: 0x%04x 0x%04x", x, down, up);
    }
    cr_assert_eq(attn_f16_round_up(1.0f), 0x3c00);
    cr_assert_eq(attn_f16_round_up(1.0f + 0x1p-12f), 0x3c01);
    cr_assert_eq(attn_f16_round_down(1.0f + 0x1p-12f), 0x3c00);
    cr_assert_eq(attn_f16_round_up(-1.0f - 0x1p-12f), 0xbc00);
    cr_assert_eq(attn_f16_round_down(-1.0f - 0x1p-12f), 0xbc01);
    cr_assert_eq(attn_f16_round_up(1e-9f), 0x0001);
    cr_assert_eq(attn_f16_round_up(1e6f), 0x7c00);
}

/* Checks the bounds of page-table entry `index` at layer and kv_head
 * against the keys keys[0, n) (head_dim floats each). */
static void check_page_bounds(const attn_seq *s, int layer, int index, int kv_head,
                              const float *const *keys, int n)
{
    int hd = attn_cache_config(s->cache)->head_dim;
    const uint16_t *kmax = attn_cache_kmax(s->cache, s->pages[index], layer, kv_head);
    const uint16_t *kmin = attn_cache_kmin(s->cache, s->pages[index], layer, kv_head);
    for (int d = 0; d < hd; d++) {
        float hi = -INFINITY, lo = INFINITY;
        for (int i = 0; i < n; i++) hi = fmaxf(hi, keys[i][d]), lo = fminf(lo, keys[i][d]);
        cr_assert_eq(kmax[d], attn_f16_round_up(hi), "layer %d page %d head %d d %d", layer, index,
                     kv_head, d);
        cr_assert_eq(kmin[d], attn_f16_round_down(lo), "layer %d page %d head %d d %d", layer,
                     index, kv_head, d);
    }
}

/* Checks every page's bounds of s, for positions [0, len), against the keys
 * `keys` (layer, keys_len, n_kv_heads * head_dim) actually in it. */
static void check_metadata(const attn_seq *s, const float *keys, int keys_len, int len)
{
    const struct attn_cache_config *c = attn_cache_config(s->cache);
    int ps = c->page_size, hd = c->head_dim, width = c->n_kv_heads * hd;
    const float *page_keys[ATTN_MAX_PAGE_SIZE];
    for (int l = 0; l < c->n_layers; l++) {
        for (int p0 = 0; p0 < len; p0 += ps) {
            int n = len - p0 < ps ? len - p0 : ps;
            for (int h = 0; h < c->n_kv_heads; h++) {
                for (int i = 0; i < n; i++)
                    page_keys[i] = keys + ((size_t)l * keys_len + p0 + i) * width + (size_t)h * hd;
                check_page_bounds(s, l, p0 / ps, h, page_keys, n);
            }
        }
    }
}

Test(attention_cache, metadata_is_min_max_of_each_pages_keys_across_boundaries)
{
    /* Chunks of 7 tokens straddle page boundaries; the last page is partial. */
    for (int type = 0; type < 4; type++) {
        struct test_kv t;
        test_kv_create(&t, 2, 4, 2, 64, 75, (enum attn_kv_type)type, 9, 7);
        check_metadata(t.seq, t.k, t.len, t.len);
        test_kv_free(&t);
    }
}

Test(attention_cache, metadata_after_truncate_and_rewrite_covers_only_live_keys)
{
    struct test_kv t;
    test_kv_create(&t, 2, 2, 2, 32, 40, ATTN_KV_F32, 11, 40);
    int width = 2 * 32;
    attn_seq_truncate(t.seq, 20); /* page 1 keeps tokens 16..19 */
    check_metadata(t.seq, t.k, t.len, 20);
    /* Write new keys, 10x larger, at 20..39; bounds must follow them. */
    for (int i = 0; i < 2 * 40 * width; i++) {
        int pos = i / width % 40;
        if (pos >= 20) t.k[i] *= 10;
    }
    cr_assert_eq(attn_seq_reserve(t.seq, 20), 0);
    for (int l = 0; l < 2; l++)
        attn_seq_write(t.seq, l, 20, 20, t.k + ((size_t)l * 40 + 20) * width,
                       t.v + ((size_t)l * 40 + 20) * width);
    attn_seq_commit(t.seq, 40);
    check_metadata(t.seq, t.k, t.len, 40);
    /* Rewriting position 18 of layer 0 with zeros, without truncating: that
     * page's bounds then cover tokens 16, 17 and the new 18 only, while
     * layer 1 keeps all of 16..31. */
    for (int d = 0; d < width; d++) t.k[(size_t)18 * width + d] = 0;
    attn_seq_write(t.seq, 0, 18, 1, t.k + (size_t)18 * width, t.v + (size_t)18 * width);
    for (int l = 0; l < 2; l++) {
        for (int h = 0; h < 2; h++) {
            const float *keys[16];
            int n = l == 0 ? 3 : 16;
            for (int i = 0; i < n; i++)
                keys[i] = t.k + ((size_t)l * 40 + 16 + i) * width + (size_t)h * 32;
            check_page_bounds(t.seq, l, 1, h, keys, n);
        }
    }
    test_kv_free(&t);
}

Test(attention_cache, reused_pages_carry_no_old_min_max)
{
    struct attn_cache_config cfg = small_config(ATTN_KV_INT4, 4);
    attn_cache *c;
    cr_assert_eq(attn_cache_create(&cfg, &c), 0);
    int width = 2 * 32, len = 64;
    float *big = util_xmalloc(sizeof(float) * len * width);
    float *keys = util_xmalloc(sizeof(float) * 2 * len * width);
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    for (int i = 0; i < len * width; i++) big[i] = 1000.0f * (i % 2 ? 1 : -1);
    for (int i = 0; i < 2 * len * width; i++) keys[i] = (float)util_rng_normal(&rng);

    attn_seq *a = attn_seq_create(c);
    cr_assert_eq(attn_seq_reserve(a, len), 0);
    for (int l = 0; l < 2; l++) attn_seq_write(a, l, 0, len, big, big);
    attn_seq_commit(a, len);
    attn_seq_free(a);

    /* b gets the same four pages and writes 3 tokens less than a page into
     * the last: its bounds are of its own keys only. */
    attn_seq *b = attn_seq_create(c);
    int blen = 61;
    cr_assert_eq(attn_seq_reserve(b, blen), 0);
    cr_assert_eq(attn_cache_pages_free(c), 0);
    for (int l = 0; l < 2; l++)
        attn_seq_write(b, l, 0, blen, keys + (size_t)l * len * width,
                       keys + (size_t)l * len * width);
    attn_seq_commit(b, blen);
    check_metadata(b, keys, len, blen);
    attn_seq_free(b);
    attn_cache_free(c);
    free(big);
    free(keys);
}

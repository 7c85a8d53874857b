/* Tests of every SIMD kernel set (AVX2, AVX-512) against the scalar
 * reference: the page kernel on awkward shapes and states, the Quest bound,
 * and whole forward calls over the sizes the model meets. */
#include "test_attention_common.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

/* The SIMD kernels reorder float sums (FMA chains, scales applied to sums,
 * a polynomial exp of about 1 ulp): results agree to a few ulps of the
 * magnitudes involved. */
#define KERNEL_REL_TOL  2e-6f
#define FORWARD_ABS_TOL 1e-5f /* outputs are averages of N(0,1) values */

/* Sets other than the reference; returns their count. */
static int simd_sets(const struct attn_kernels **out)
{
    const struct attn_kernels *all[4];
    int n = test_kernel_sets(all), m = 0;
    for (int i = 1; i < n; i++) out[m++] = all[i];
    cr_log_info("SIMD kernel sets on this CPU: %d", m);
    return m;
}

/* ------------------------------------------------------------ page kernel */

struct row_state {
    float *q, *max, *sum, *acc;
};

static void state_alloc(struct row_state *s, int n, int hd)
{
    s->q = util_xmalloc(sizeof(float) * n * hd);
    s->max = util_xmalloc(sizeof(float) * n);
    s->sum = util_xmalloc(sizeof(float) * n);
    s->acc = util_xmalloc(sizeof(float) * n * hd);
}

static void state_copy(struct row_state *dst, const struct row_state *src, int n, int hd)
{
    memcpy(dst->q, src->q, sizeof(float) * n * hd);
    memcpy(dst->max, src->max, sizeof(float) * n);
    memcpy(dst->sum, src->sum, sizeof(float) * n);
    memcpy(dst->acc, src->acc, sizeof(float) * n * hd);
}

static void state_free(struct row_state *s)
{
    free(s->q);
    free(s->max);
    free(s->sum);
    free(s->acc);
}

Test(attention_kernels, page_kernel_matches_scalar_on_awkward_shapes, .timeout = 120)
{
    const struct attn_kernels *sets[4];
    int n_sets = simd_sets(sets);
    struct util_rng rng;
    util_rng_seed(&rng, 2024);
    const int head_dims[] = {16, 32, 64, 128, 256};
    const int page_sizes[] = {16, 32, 48};
    const int row_counts[] = {1, 2, 3, 4, 5, 7, 9, 33};
    for (int type = 0; type < 4; type++)
        for (int hi = 0; hi < 5; hi++)
            for (int pi = 0; pi < 3; pi++) {
                int hd = head_dims[hi], ps = page_sizes[pi];
                struct attn_cache_config cfg = {1, 1, hd, ps, 1, (enum attn_kv_type)type};
                attn_cache *cache;
                cr_assert_eq(attn_cache_create(&cfg, &cache), 0);
                attn_seq *seq = attn_seq_create(cache);
                cr_assert_eq(attn_seq_reserve(seq, ps), 0);
                float *k = test_random_queries(ps, hd, rng.s[0]);
                float *v = test_random_queries(ps, hd, rng.s[1]);
                attn_seq_write(seq, 0, 0, ps, k, v);
                struct attn_block block = attn_cache_block_view(cache, seq->pages[0], 0, 0);
                for (int ri = 0; ri < 8; ri++) {
                    int n = row_counts[ri];
                    struct row_state init, ref, got;
                    state_alloc(&init, n, hd), state_alloc(&ref, n, hd), state_alloc(&got, n, hd);
                    int visible[33];
                    for (int r = 0; r < n; r++) {
                        /* 0, 1, all, or anything between; a fresh row or one
                         * carrying an earlier page's state */
                        int pick = (int)(util_rng_uniform(&rng) * 5);
                        visible[r] = pick == 0   ? 0
                                     : pick == 1 ? 1
                                     : pick == 2 ? ps
                                                 : 1 + (int)(util_rng_uniform(&rng) * ps);
                        bool fresh = util_rng_uniform(&rng) < 0.5;
                        init.max[r] = fresh ? -INFINITY : (float)util_rng_normal(&rng) * 3;
                        init.sum[r] = fresh ? 0 : 1 + (float)util_rng_uniform(&rng) * 5;
                        for (int d = 0; d < hd; d++) {
                            init.q[r * hd + d] = (float)util_rng_normal(&rng) * 0.3f;
                            init.acc[r * hd + d] = fresh ? 0 : (float)util_rng_normal(&rng);
                        }
                    }
                    state_copy(&ref, &init, n, hd);
                    struct attn_rows rows = {n, ref.q, ref.max, ref.sum, ref.acc, NULL};
                    attn_kernels_scalar()->page[type](&block, hd, ps, &rows, visible);
                    for (int s = 0; s < n_sets; s++) {
                        state_copy(&got, &init, n, hd);
                        rows = (struct attn_rows){n, got.q, got.max, got.sum, got.acc, NULL};
                        sets[s]->page[type](&block, hd, ps, &rows, visible);
                        /* with scratch, a quantized page is widened once for all the
                         * rows: the same arithmetic, so the same bits */
                        struct row_state wide;
                        state_alloc(&wide, n, hd);
                        state_copy(&wide, &init, n, hd);
                        float *codes = malloc(sizeof(float) * 2 * (size_t)hd * ps);
                        rows = (struct attn_rows){n, wide.q, wide.max, wide.sum, wide.acc, codes};
                        sets[s]->page[type](&block, hd, ps, &rows, visible);
                        cr_assert(memcmp(wide.acc, got.acc, sizeof(float) * (size_t)n * hd) == 0 &&
                                      memcmp(wide.sum, got.sum, sizeof(float) * (size_t)n) == 0 &&
                                      memcmp(wide.max, got.max, sizeof(float) * (size_t)n) == 0,
                                  "%s type %d rows %d: the widened page computed other bits",
                                  sets[s]->name, type, n);
                        free(codes);
                        state_free(&wide);
                        for (int r = 0; r < n; r++) {
                            const char *name = sets[s]->name;
                            if (visible[r] == 0) { /* the row must be left alone */
                                cr_assert(memcmp(&got.max[r], &ref.max[r], 4) == 0 &&
                                          got.sum[r] == ref.sum[r] &&
                                          memcmp(&got.acc[r * hd], &ref.acc[r * hd], 4 * hd) == 0);
                                continue;
                            }
                            float scale = fmaxf(fabsf(ref.max[r]), 1.0f);
                            cr_assert_float_eq(got.max[r], ref.max[r], 4 * KERNEL_REL_TOL * scale,
                                               "%s type %d hd %d ps %d row %d: %g vs %g vis %d",
                                               name, type, hd, ps, r, got.max[r], ref.max[r],
                                               visible[r]);
                            cr_assert_float_eq(got.sum[r], ref.sum[r],
                                               16 * KERNEL_REL_TOL * fabsf(ref.sum[r]) + 1e-30f,
                                               "%s sum", name);
                            float mag = 0;
                            for (int d = 0; d < hd; d++)
                                mag = fmaxf(mag, fabsf(ref.acc[r * hd + d]));
                            float err = test_max_abs_diff(&got.acc[r * hd], &ref.acc[r * hd], hd);
                            cr_assert_leq(err, 16 * KERNEL_REL_TOL * (mag + ref.sum[r]),
                                          "%s type %d hd %d ps %d rows %d row %d vis %d err %g",
                                          name, type, hd, ps, n, r, visible[r], err);
                        }
                    }
                    state_free(&init), state_free(&ref), state_free(&got);
                }
                free(k);
                free(v);
                attn_seq_free(seq);
                attn_cache_free(cache);
            }
}

/* The SIMD exp, seen through a page of two tokens: key 0 scores 0 and has
 * value 0, key 1 scores x and has value e_0, so acc[0] is exactly the
 * kernel's exp(x). Compared with libm's expf over the whole range. */
#define EXP_MAX_ULPS 2
Test(attention_kernels, softmax_exp_is_within_two_ulps_of_expf)
{
    const struct attn_kernels *sets[4];
    int n_sets = simd_sets(sets);
    int hd = 16, ps = 16;
    struct attn_cache_config cfg = {1, 1, hd, ps, 1, ATTN_KV_F32};
    attn_cache *cache;
    cr_assert_eq(attn_cache_create(&cfg, &cache), 0);
    attn_seq *seq = attn_seq_create(cache);
    cr_assert_eq(attn_seq_reserve(seq, 2), 0);
    float k[2][16] = {{0}}, v[2][16] = {{0}}, q[16] = {1}, acc[16], max, sum;
    v[1][0] = 1;
    int visible = 2;
    for (float x = 0; x > -110; x -= 0.0137f) {
        k[1][0] = x;
        attn_seq_truncate(seq, 0);
        cr_assert_eq(attn_seq_reserve(seq, 2), 0);
        attn_seq_write(seq, 0, 0, 2, &k[0][0], &v[0][0]);
        struct attn_block block = attn_cache_block_view(cache, seq->pages[0], 0, 0);
        for (int s = 0; s < n_sets; s++) {
            max = -INFINITY, sum = 0;
            memset(acc, 0, sizeof acc);
            struct attn_rows rows = {1, q, &max, &sum, acc, NULL};
            sets[s]->page[ATTN_KV_F32](&block, hd, ps, &rows, &visible);
            float expect = expf(x);
            if (expect >= 0x1p-126f) /* normal range: relative error in ulps */
                cr_assert_leq(fabsf(acc[0] - expect), EXP_MAX_ULPS * expect * 0x1p-23f,
                              "%s exp(%g) = %.9g, expf %.9g", sets[s]->name, x, acc[0], expect);
            else /* underflow: as small as the smallest normal float */
                cr_assert_leq(acc[0], 0x1p-125f, "%s exp(%g) = %g", sets[s]->name, x, acc[0]);
        }
    }
    attn_seq_free(seq);
    attn_cache_free(cache);
}

/* ------------------------------------------------------------- Quest bound */

/* Bounds of pages laid out like the cache's (a stride between pages, kmin
 * after kmax), visited in a scrambled page order. */
Test(attention_kernels, bound_kernel_matches_scalar)
{
    const struct attn_kernels *sets[4];
    int n_sets = simd_sets(sets);
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    enum { PAGES = 13 };
    size_t stride = 4 * ATTN_MAX_HEAD_DIM * sizeof(uint16_t), kmin_offset = stride / 2;
    unsigned char *buf = util_aligned_alloc(stride * PAGES);
    int order[PAGES];
    for (int i = 0; i < PAGES; i++) order[i] = (i * 5 + 3) % PAGES;
    struct attn_bounds_view view = {buf, stride, kmin_offset, order};
    float q[8 * ATTN_MAX_HEAD_DIM], ref[PAGES * 8], got[PAGES * 8];
    for (int trial = 0; trial < 200; trial++) {
        int hd = 16 * (1 + trial % 16), n_q = 1 + trial % 8, n_pages = 1 + trial % PAGES;
        for (int p = 0; p < PAGES; p++) {
            uint16_t *kmax = (uint16_t *)(buf + p * stride);
            uint16_t *kmin = (uint16_t *)(buf + p * stride + kmin_offset);
            for (int d = 0; d < hd; d++) {
                float a = (float)util_rng_normal(&rng) * 5;
                float b = a + (float)util_rng_uniform(&rng) * 4;
                kmax[d] = attn_f16_round_up(b), kmin[d] = attn_f16_round_down(a);
            }
        }
        for (int i = 0; i < n_q * hd; i++) q[i] = (float)util_rng_normal(&rng);
        attn_kernels_scalar()->bound(&view, n_pages, hd, q, n_q, ref);
        for (int s = 0; s < n_sets; s++) {
            sets[s]->bound(&view, n_pages, hd, q, n_q, got);
            for (int p = 0; p < n_pages; p++) {
                const uint16_t *kmax = (const uint16_t *)(buf + order[p] * stride);
                const uint16_t *kmin = (const uint16_t *)(buf + order[p] * stride + kmin_offset);
                for (int i = 0; i < n_q; i++) {
                    float mag = 0;
                    for (int d = 0; d < hd; d++)
                        mag += fabsf(q[i * hd + d]) * fmaxf(fabsf(util_f16_to_f32(kmax[d])),
                                                            fabsf(util_f16_to_f32(kmin[d])));
                    cr_assert_float_eq(got[p * n_q + i], ref[p * n_q + i], 4 * KERNEL_REL_TOL * mag,
                                       "%s hd %d page %d q %d", sets[s]->name, hd, p, i);
                }
            }
        }
    }
    util_aligned_free(buf);
}

/* ---------------------------------------------------------- whole calls */

/* Decode at the last position and a causal prefill of the last 20 positions,
 * each SIMD set against the scalar set. */
static void check_forward(enum attn_kv_type type, int len, int nh, int nkv, int hd)
{
    const struct attn_kernels *sets[4];
    int n_sets = simd_sets(sets);
    int width = nh * hd, n_q = len < 20 ? len : 20;
    struct test_kv t;
    test_kv_create(&t, 1, nh, nkv, hd, len, type, (uint64_t)len * 31 + hd + nkv, 128);
    float *q = test_random_queries(n_q, width, len + 5);
    float *ref = util_xmalloc(sizeof(float) * n_q * width);
    float *got = util_xmalloc(sizeof(float) * n_q * width);
    int pos[20];
    for (int i = 0; i < n_q; i++) pos[i] = len - n_q + i;
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    for (int call = 0; call < 2; call++) {
        int nq = call == 0 ? 1 : n_q;
        const int *ps = call == 0 ? &pos[n_q - 1] : pos;
        attn_forward_kernels(attn_kernels_scalar(), t.seq, 0, q, ps, nq, &p, ref, NULL);
        for (int s = 0; s < n_sets; s++) {
            attn_forward_kernels(sets[s], t.seq, 0, q, ps, nq, &p, got, NULL);
            float err = test_max_abs_diff(ref, got, (size_t)nq * width);
            cr_assert_leq(err, FORWARD_ABS_TOL, "%s %s len %d heads %d/%d hd %d n_q %d: %g",
                          sets[s]->name, attn_kv_type_name(type), len, nh, nkv, hd, nq, err);
        }
    }
    free(q);
    free(ref);
    free(got);
    test_kv_free(&t);
}

static void check_forward_grid(enum attn_kv_type type)
{
    const int lengths[] = {1, 15, 16, 17, 33, 1000};
    const int layouts[][2] = {{8, 8}, {8, 2}, {4, 1}};
    for (int li = 0; li < 6; li++)
        for (int hl = 0; hl < 3; hl++)
            for (int hd = 64; hd <= 128; hd *= 2)
                check_forward(type, lengths[li], layouts[hl][0], layouts[hl][1], hd);
}

Test(attention_kernels, f32_forward_matches_scalar, .timeout = 120)
{
    check_forward_grid(ATTN_KV_F32);
}
Test(attention_kernels, f16_forward_matches_scalar, .timeout = 120)
{
    check_forward_grid(ATTN_KV_F16);
}
Test(attention_kernels, int8_forward_matches_scalar, .timeout = 120)
{
    check_forward_grid(ATTN_KV_INT8);
}
Test(attention_kernels, int4_forward_matches_scalar, .timeout = 120)
{
    check_forward_grid(ATTN_KV_INT4);
}

Test(attention_kernels, best_set_is_the_widest_the_cpu_runs)
{
    const struct attn_kernels *best = attn_kernels_best();
    if (util_cpu_has_avx512())
        cr_assert_str_eq(best->name, "avx512");
    else if (util_cpu()->avx2)
        cr_assert_str_eq(best->name, "avx2");
    else
        cr_assert_str_eq(best->name, "scalar");
}

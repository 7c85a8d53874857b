/* Tests for dense attention: decode and causal prefill against a double-
 * precision reference, for every storage type, head layout and kernel set. */
#include "test_attention_common.h"

#include <criterion/criterion.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

/* Kernels compute in float with an online softmax; the reference in double
 * with one pass. Outputs are averages of N(0,1) values, so an absolute bound
 * of a few float ulps of the largest terms. */
#define DENSE_MAX_ABS_ERR 2e-5f

static const int lengths[] = {1, 15, 16, 17, 33, 1000};
static const int head_layouts[][2] = {{8, 8}, {8, 2}, {4, 1}};
static const int head_dims[] = {64, 128};

/* Checks query `qi` of a call (at position pos, all heads) against the
 * reference over positions [0, pos]. */
static void check_query(const struct test_kv *t, int layer, const float *q, const float *out,
                        int pos, float scale, const char *what)
{
    int hd = t->config.head_dim, group = t->n_heads / t->config.n_kv_heads;
    int *positions = util_xmalloc(sizeof(int) * (size_t)(pos + 1));
    for (int i = 0; i <= pos; i++) positions[i] = i;
    float ref[ATTN_MAX_HEAD_DIM];
    for (int h = 0; h < t->n_heads; h++) {
        test_reference_attention(t->seq, layer, h / group, q + (size_t)h * hd, scale, positions,
                                 pos + 1, ref);
        float err = test_max_abs_diff(ref, out + (size_t)h * hd, (size_t)hd);
        cr_assert_leq(err, DENSE_MAX_ABS_ERR, "%s: pos %d head %d err %g", what, pos, h, err);
    }
    free(positions);
}

static void check_decode(enum attn_kv_type type)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        for (size_t hl = 0; hl < 3; hl++) {
            for (size_t di = 0; di < 2; di++) {
                int len = lengths[li], nh = head_layouts[hl][0], nkv = head_layouts[hl][1];
                int hd = head_dims[di];
                struct test_kv t;
                test_kv_create(&t, 1, nh, nkv, hd, len, type, 1000 + len + hd, 64);
                float *q = test_random_queries(1, nh * hd, len * 7 + hd);
                float *out = util_xmalloc(sizeof(float) * nh * hd);
                struct attn_params p;
                attn_params_default(&p, nh, hd);
                int pos = len - 1;
                for (int s = 0; s < n_sets; s++) {
                    char what[128];
                    snprintf(what, sizeof what, "%s %s len %d heads %d/%d hd %d", sets[s]->name,
                             attn_kv_type_name(type), len, nh, nkv, hd);
                    memset(out, 0xff, sizeof(float) * nh * hd);
                    attn_forward_kernels(sets[s], t.seq, 0, q, &pos, 1, &p, out, NULL);
                    check_query(&t, 0, q, out, pos, p.scale, what);
                }
                free(q);
                free(out);
                test_kv_free(&t);
            }
        }
    }
}

Test(attention_dense, f32_decode_matches_reference, .timeout = 120)
{
    check_decode(ATTN_KV_F32);
}
Test(attention_dense, f16_decode_matches_reference, .timeout = 120)
{
    check_decode(ATTN_KV_F16);
}
Test(attention_dense, int8_decode_matches_reference, .timeout = 120)
{
    check_decode(ATTN_KV_INT8);
}
Test(attention_dense, int4_decode_matches_reference, .timeout = 120)
{
    check_decode(ATTN_KV_INT4);
}

/* A causal prefill call of every position gives, for each query, exactly
 * (bitwise) what a decode call at that position gives: each row's arithmetic
 * does not depend on the rows it is tiled with. */
static void check_prefill(enum attn_kv_type type)
{
    const struct attn_kernels *sets[4];
    int n_sets = test_kernel_sets(sets);
    int len = 83, nh = 8, nkv = 2, hd = 64, width = nh * hd;
    struct test_kv t;
    test_kv_create(&t, 2, nh, nkv, hd, len, type, 77, 83);
    float *q = test_random_queries(len, width, 78);
    float *out = util_xmalloc(sizeof(float) * len * width);
    float *one = util_xmalloc(sizeof(float) * width);
    int *pos = util_xmalloc(sizeof(int) * len);
    for (int i = 0; i < len; i++) pos[i] = i;
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    for (int s = 0; s < n_sets; s++) {
        attn_forward_kernels(sets[s], t.seq, 1, q, pos, len, &p, out, NULL);
        for (int i = 0; i < len; i++) {
            attn_forward_kernels(sets[s], t.seq, 1, q + (size_t)i * width, &i, 1, &p, one, NULL);
            cr_assert_eq(memcmp(one, out + (size_t)i * width, sizeof(float) * width), 0,
                         "%s %s query %d", sets[s]->name, attn_kv_type_name(type), i);
            if (i % 10 == 0) check_query(&t, 1, q + (size_t)i * width, one, i, p.scale, "prefill");
        }
    }
    free(q);
    free(out);
    free(one);
    free(pos);
    test_kv_free(&t);
}

Test(attention_dense, f32_prefill_equals_decode_of_each_query)
{
    check_prefill(ATTN_KV_F32);
}
Test(attention_dense, int4_prefill_equals_decode_of_each_query)
{
    check_prefill(ATTN_KV_INT4);
}

Test(attention_dense, call_inside_parallel_region_runs_serially_with_same_result)
{
    int len = 300, nh = 8, nkv = 2, hd = 64, width = nh * hd, n_q = 5;
    struct test_kv t;
    test_kv_create(&t, 1, nh, nkv, hd, len, ATTN_KV_F16, 5, 300);
    float *q = test_random_queries(n_q, width, 6);
    float *outside = util_xmalloc(sizeof(float) * n_q * width);
    float *inside = util_xcalloc((size_t)2 * n_q * width, sizeof(float));
    int pos[5] = {299, 10, 150, 16, 0};
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    attn_forward(t.seq, 0, q, pos, n_q, &p, outside, NULL);
    int team = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        team = omp_get_num_threads();
        int me = omp_get_thread_num();
        attn_forward(t.seq, 0, q, pos, n_q, &p, inside + (size_t)me * n_q * width, NULL);
    }
    for (int m = 0; m < team; m++)
        cr_assert_eq(memcmp(outside, inside + (size_t)m * n_q * width, sizeof(float) * n_q * width),
                     0, "thread %d", m);
    free(q);
    free(outside);
    free(inside);
    test_kv_free(&t);
}

Test(attention_dense, stats_count_one_read_per_page_query_and_kv_head)
{
    int len = 50, nh = 4, nkv = 2, hd = 32;
    struct test_kv t;
    test_kv_create(&t, 3, nh, nkv, hd, len, ATTN_KV_F32, 8, 50);
    float *q = test_random_queries(3, nh * hd, 9);
    float *out = util_xmalloc(sizeof(float) * 3 * nh * hd);
    int pos[3] = {49, 15, 16}; /* 4, 1 and 2 pages */
    struct attn_params p;
    attn_params_default(&p, nh, hd);
    struct attn_stats stats = {0};
    attn_forward(t.seq, 2, q, pos, 3, &p, out, &stats);
    cr_assert_eq(stats.pages_read, (4 + 1 + 2) * nkv);
    cr_assert_eq(stats.pages_total, (4 + 1 + 2) * nkv);
    attn_forward(t.seq, 0, q, pos, 1, &p, out, &stats);
    cr_assert_eq(stats.pages_total, (4 + 1 + 2 + 4) * nkv);
    free(q);
    free(out);
    test_kv_free(&t);
}

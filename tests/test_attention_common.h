/* test_attention_common.h: helpers shared by the attention tests: a small
 * cache filled with deterministic keys and values, and a plain double-
 * precision attention to compare against. */
#ifndef LLMD_TEST_ATTENTION_COMMON_H
#define LLMD_TEST_ATTENTION_COMMON_H

#include "attention/attn_internal.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct test_kv {
    attn_cache *cache;
    attn_seq *seq;
    struct attn_cache_config config;
    int n_heads, len;
    float *k, *v; /* (n_layers, len, n_kv_heads * head_dim) as written */
};

/* Keys shaped like real ones: a per-channel scale (a few large channels). */
static inline float test_key_value(struct util_rng *rng, int d)
{
    float channel_scale = (d % 7 == 3) ? 4.0f : 1.0f;
    return (float)util_rng_normal(rng) * channel_scale;
}

/* A cache of one sequence of `len` tokens in every layer, written in chunks
 * of `chunk` tokens (reserve, write every layer, commit). */
static inline void test_kv_create(struct test_kv *t, int n_layers, int n_heads, int n_kv_heads,
                                  int head_dim, int len, enum attn_kv_type type, uint64_t seed,
                                  int chunk)
{
    int ps = 16;
    t->config = (struct attn_cache_config){
        .n_layers = n_layers,
        .n_kv_heads = n_kv_heads,
        .head_dim = head_dim,
        .page_size = ps,
        .n_pages = (len + ps - 1) / ps + 4,
        .kv_type = type,
    };
    t->n_heads = n_heads;
    t->len = len;
    if (attn_cache_create(&t->config, &t->cache) != 0) abort();
    t->seq = attn_seq_create(t->cache);
    size_t width = (size_t)n_kv_heads * head_dim;
    t->k = util_xmalloc(sizeof(float) * (size_t)n_layers * len * width + 1);
    t->v = util_xmalloc(sizeof(float) * (size_t)n_layers * len * width + 1);
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    for (int l = 0; l < n_layers; l++) {
        for (size_t i = 0; i < (size_t)len * width; i++) {
            t->k[(size_t)l * len * width + i] = test_key_value(&rng, (int)(i % head_dim));
            t->v[(size_t)l * len * width + i] = (float)util_rng_normal(&rng);
        }
    }
    for (int pos = 0; pos < len; pos += chunk) {
        int n = len - pos < chunk ? len - pos : chunk;
        if (attn_seq_reserve(t->seq, n) != 0) abort();
        for (int l = 0; l < n_layers; l++)
            attn_seq_write(t->seq, l, pos, n, t->k + ((size_t)l * len + pos) * width,
                           t->v + ((size_t)l * len + pos) * width);
        attn_seq_commit(t->seq, pos + n);
    }
}

static inline void test_kv_free(struct test_kv *t)
{
    attn_seq_free(t->seq);
    attn_cache_free(t->cache);
    free(t->k);
    free(t->v);
}

static inline float *test_random_queries(int n, int width, uint64_t seed)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    float *q = util_xmalloc(sizeof(float) * (size_t)n * width);
    for (int i = 0; i < n * width; i++) q[i] = (float)util_rng_normal(&rng);
    return q;
}

/*
 * Reference attention of one query head over the positions `positions[0,
 * n)`, reading the cache's (dequantized) keys and values, in double
 * precision. out: head_dim floats.
 */
static inline void test_reference_attention(const attn_seq *seq, int layer, int kv_head,
                                            const float *q, float scale, const int *positions,
                                            int n, float *out)
{
    int hd = attn_cache_config(seq->cache)->head_dim;
    double *s = util_xmalloc(sizeof(double) * (size_t)n);
    double *acc = util_xcalloc((size_t)hd, sizeof(double));
    float k[ATTN_MAX_HEAD_DIM], v[ATTN_MAX_HEAD_DIM];
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) {
        attn_seq_read_kv(seq, layer, kv_head, positions[j], k, NULL);
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += (double)q[d] * k[d];
        s[j] = dot * scale;
        if (s[j] > mx) mx = s[j];
    }
    for (int j = 0; j < n; j++) {
        attn_seq_read_kv(seq, layer, kv_head, positions[j], NULL, v);
        double p = exp(s[j] - mx);
        sum += p;
        for (int d = 0; d < hd; d++) acc[d] += p * v[d];
    }
    for (int d = 0; d < hd; d++) out[d] = (float)(acc[d] / sum);
    free(s);
    free(acc);
}

/* The kernel sets this CPU can run, the scalar reference first. Returns
 * their count; says (once a program) which sets' checks are skipped. */
static inline int test_kernel_sets(const struct attn_kernels **out)
{
    static bool said;
    int n = 0;
    out[n++] = attn_kernels_scalar();
    if (attn_kernels_avx2()) out[n++] = attn_kernels_avx2();
    if (attn_kernels_avx512()) out[n++] = attn_kernels_avx512();
    if (!said && !attn_kernels_avx512())
        fprintf(stderr, "skipped: the avx512 attention kernels' checks (this CPU has: %s)\n",
                util_cpu_flags_string());
    said = true;
    return n;
}

/* Largest |a[i] - b[i]|. */
static inline float test_max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

#endif

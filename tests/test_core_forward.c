/*
 * Tests for the forward pass against an independent implementation: the
 * logits of Hugging Face's LlamaForCausalLM for the same GGUF weights
 * (tests/data/tiny-random.logits.bin, made by tools/ref_logits.py), alone,
 * in one mixed batch, and with prefill and decode mixed in one step.
 */
#include "core/llm.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL_PATH         "tests/data/tiny-random.gguf"
#define REF_PATH           "tests/data/tiny-random.logits.bin"
#define TRAINED_MODEL_PATH "models/llmd-20m.gguf"
#define TRAINED_REF_PATH   "tests/data/llmd-20m.logits.bin"
/* float32 both sides; the differences are summation order only */
#define MAX_REL_ERROR 1e-4

struct ref_prompt {
    int n;
    int32_t *ids;
    float *logits; /* (n, vocab) */
};

static struct ref_prompt refs[8];
static int n_refs, ref_vocab;
static llm_model *model;

static void read_exact(FILE *f, void *p, size_t n)
{
    cr_assert_eq(fread(p, 1, n, f), n, "short read of reference logits");
}

static void load_model_and_refs(const char *model_path, const char *ref_path)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 256;
    cr_assert_eq(llm_model_load(model_path, &o, &model, err, sizeof err), 0, "%s", err);
    FILE *f = fopen(ref_path, "rb");
    cr_assert_not_null(f);
    char magic[8];
    uint32_t head[4];
    read_exact(f, magic, 8);
    cr_assert(memcmp(magic, "LLMDLOGT", 8) == 0);
    read_exact(f, head, sizeof head);
    cr_assert_eq(head[0], 1u);
    n_refs = (int)head[1];
    ref_vocab = (int)head[2];
    cr_assert(n_refs > 0 && n_refs <= 8);
    cr_assert_eq(ref_vocab, llm_model_config(model)->vocab_size);
    for (int i = 0; i < n_refs; i++) {
        uint32_t n;
        read_exact(f, &n, 4);
        refs[i].n = (int)n;
        refs[i].ids = malloc(sizeof(int32_t) * n);
        refs[i].logits = malloc(sizeof(float) * n * (size_t)ref_vocab);
        read_exact(f, refs[i].ids, sizeof(int32_t) * n);
        read_exact(f, refs[i].logits, sizeof(float) * n * (size_t)ref_vocab);
    }
    fclose(f);
}

static void load_fixtures(void)
{
    load_model_and_refs(MODEL_PATH, REF_PATH);
}
static void load_trained(void)
{
    load_model_and_refs(TRAINED_MODEL_PATH, TRAINED_REF_PATH);
}

static void free_fixtures(void)
{
    for (int i = 0; i < n_refs; i++) {
        free(refs[i].ids);
        free(refs[i].logits);
    }
    llm_model_free(model);
}

/* ||got - want|| / ||want|| over `rows` rows. */
static double rel_error(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num / den);
}

TestSuite(forward, .init = load_fixtures, .fini = free_fixtures);

Test(forward, each_prompt_alone_matches_hugging_face)
{
    llm_workspace *ws = llm_workspace_create(model, 64);
    for (int i = 0; i < n_refs; i++) {
        attn_seq *seq = attn_seq_create(llm_model_kv_cache(model));
        float *logits = malloc(sizeof(float) * (size_t)refs[i].n * ref_vocab);
        struct llm_batch_item item = {
            .kv = seq, .tokens = refs[i].ids, .n_tokens = refs[i].n, .all_logits = true};
        cr_assert_eq(llm_forward(model, ws, &item, 1, logits, NULL), 0);
        double err = rel_error(logits, refs[i].logits, (size_t)refs[i].n * ref_vocab);
        cr_assert_leq(err, MAX_REL_ERROR, "prompt %d: relative error %g", i, err);
        cr_assert_eq(attn_seq_len(seq), refs[i].n);
        free(logits);
        attn_seq_free(seq);
    }
    llm_workspace_free(ws);
}

static void all_prompts_in_one_batch_match(void)
{
    int total = 0;
    for (int i = 0; i < n_refs; i++) total += refs[i].n;
    llm_workspace *ws = llm_workspace_create(model, total);
    struct llm_batch_item items[8];
    for (int i = 0; i < n_refs; i++)
        items[i] = (struct llm_batch_item){.kv = attn_seq_create(llm_model_kv_cache(model)),
                                           .tokens = refs[i].ids,
                                           .n_tokens = refs[i].n,
                                           .all_logits = true};
    float *logits = malloc(sizeof(float) * (size_t)total * ref_vocab);
    cr_assert_eq(llm_forward(model, ws, items, n_refs, logits, NULL), 0);
    size_t row = 0;
    for (int i = 0; i < n_refs; i++) {
        double err =
            rel_error(logits + row * ref_vocab, refs[i].logits, (size_t)refs[i].n * ref_vocab);
        cr_assert_leq(err, MAX_REL_ERROR, "prompt %d in the batch: relative error %g", i, err);
        row += (size_t)refs[i].n;
        attn_seq_free(items[i].kv);
    }
    free(logits);
    llm_workspace_free(ws);
}

Test(forward, all_prompts_in_one_batch_match_hugging_face)
{
    all_prompts_in_one_batch_match();
}

/* The shipped model too: its logits from Hugging Face were computed when it
 * was trained (tools/device_run.sh train). */
Test(forward_trained, the_shipped_model_matches_hugging_face_in_a_batch, .init = load_trained,
     .fini = free_fixtures)
{
    all_prompts_in_one_batch_match();
}

/* Prompt 0 decodes token by token while prompt 1 prefills in chunks of 5 in
 * the same steps: every step's last-token logits must match the reference. */
Test(forward, prefill_and_decode_mixed_in_one_step_match_hugging_face)
{
    cr_assert_geq(n_refs, 2);
    const struct ref_prompt *a = &refs[0], *b = &refs[1];
    llm_workspace *ws = llm_workspace_create(model, 16);
    attn_seq *sa = attn_seq_create(llm_model_kv_cache(model)),
             *sb = attn_seq_create(llm_model_kv_cache(model));
    float *logits = malloc(sizeof(float) * 2 * ref_vocab);
    int fa = 0, fb = 0, steps = 0;
    while (fa < a->n || fb < b->n) {
        struct llm_batch_item items[2];
        const float *want[2];
        int n = 0;
        if (fa < a->n) {
            items[n] = (struct llm_batch_item){.kv = sa, .tokens = a->ids + fa, .n_tokens = 1};
            want[n++] = a->logits + (size_t)fa * ref_vocab;
            fa++;
        }
        if (fb < b->n) {
            int chunk = b->n - fb < 5 ? b->n - fb : 5;
            items[n] = (struct llm_batch_item){.kv = sb, .tokens = b->ids + fb, .n_tokens = chunk};
            fb += chunk;
            want[n++] = b->logits + (size_t)(fb - 1) * ref_vocab;
        }
        cr_assert_eq(llm_forward(model, ws, items, n, logits, NULL), 0);
        for (int i = 0; i < n; i++) {
            double err = rel_error(logits + (size_t)i * ref_vocab, want[i], (size_t)ref_vocab);
            cr_assert_leq(err, MAX_REL_ERROR, "step %d item %d: relative error %g", steps, i, err);
        }
        steps++;
    }
    free(logits);
    attn_seq_free(sa);
    attn_seq_free(sb);
    llm_workspace_free(ws);
}

Test(forward, a_full_kv_pool_fails_the_step_and_changes_nothing)
{
    attn_cache *kv = llm_model_kv_cache(model);
    int page = attn_cache_config(kv)->page_size;
    int free_pages = attn_cache_pages_free(kv);
    /* one sequence takes all but one page; a second needs two */
    attn_seq *big = attn_seq_create(kv), *small = attn_seq_create(kv);
    cr_assert_eq(attn_seq_reserve(big, (free_pages - 1) * page), 0);
    int32_t tokens[40];
    for (int i = 0; i < 40; i++) tokens[i] = refs[n_refs - 1].ids[i % refs[n_refs - 1].n];
    llm_workspace *ws = llm_workspace_create(model, 40);
    float *logits = malloc(sizeof(float) * ref_vocab);
    struct llm_batch_item item = {.kv = small, .tokens = tokens, .n_tokens = page + 1};
    cr_assert_eq(llm_forward(model, ws, &item, 1, logits, NULL), -ENOSPC);
    cr_assert_eq(attn_seq_len(small), 0);
    cr_assert_eq(attn_cache_pages_free(kv), 1);
    item.n_tokens = page; /* one page fits */
    cr_assert_eq(llm_forward(model, ws, &item, 1, logits, NULL), 0);
    cr_assert_eq(attn_seq_len(small), page);
    attn_seq_free(big);
    attn_seq_free(small);
    cr_assert_eq(attn_cache_pages_free(kv), free_pages);
    free(logits);
    llm_workspace_free(ws);
}

/* The prompts in one batch, prefill then three decode steps, on the model
 * at `path` loaded for `threads` threads; returns every step's logits
 * (caller frees). */
static float *batch_logits_with_threads(const char *path, enum llm_precision precision, int threads,
                                        size_t *n_out)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 256;
    o.threads = threads;
    o.precision = precision;
    o.kv_type = precision == LLM_FP32 ? ATTN_KV_F32 : ATTN_KV_INT4;
    o.quant.calib_tokens = 512;
    o.head = precision != LLM_FP32 ? LLM_HEAD_INT8 : LLM_HEAD_F32; /* our kernels end to end */
    llm_model *m;
    cr_assert_eq(llm_model_load(path, &o, &m, err, sizeof err), 0, "%s", err);
    int vocab = llm_model_config(m)->vocab_size, total = 0;
    for (int i = 0; i < n_refs; i++) total += refs[i].n;
    llm_workspace *ws = llm_workspace_create(m, total);
    struct llm_batch_item items[8];
    for (int i = 0; i < n_refs; i++)
        items[i] = (struct llm_batch_item){.kv = attn_seq_create(llm_model_kv_cache(m)),
                                           .tokens = refs[i].ids,
                                           .n_tokens = refs[i].n};
    const int steps = 4;
    float *logits = malloc(sizeof(float) * (size_t)steps * n_refs * vocab);
    int32_t next[8];
    for (int s = 0; s < steps; s++) {
        float *out = logits + (size_t)s * n_refs * vocab;
        cr_assert_eq(llm_forward(m, ws, items, n_refs, out, NULL), 0);
        for (int i = 0; i < n_refs; i++) {
            next[i] = (int32_t)((s * 131 + i * 17) % vocab);
            items[i].tokens = &next[i];
            items[i].n_tokens = 1;
        }
    }
    for (int i = 0; i < n_refs; i++) attn_seq_free(items[i].kv);
    llm_workspace_free(ws);
    llm_model_free(m);
    *n_out = (size_t)steps * n_refs * vocab;
    return logits;
}

/* Each thread owns whole output columns and attention heads, so in the
 * quantized paths (our kernels) the thread count must not change a single
 * bit. Atom's calibration runs the fp32 model, so its file is made once and
 * loaded with each thread count. fp32 calls OpenBLAS on each thread's
 * columns, whose kernels may sum in an order that depends on the slice's
 * width: there, summation order only. */
Test(forward, logits_do_not_depend_on_the_thread_count)
{
    char atom_path[] = "/tmp/llmd-test-atom-XXXXXX";
    int fd = mkstemp(atom_path);
    cr_assert_geq(fd, 0);
    close(fd);
    {
        char err[256];
        struct llm_model_options o;
        llm_model_options_default(&o);
        o.precision = LLM_ATOM;
        o.quant.calib_tokens = 512;
        o.kv_pages = 64;
        llm_model *m;
        cr_assert_eq(llm_model_load(MODEL_PATH, &o, &m, err, sizeof err), 0, "%s", err);
        cr_assert_eq(llm_model_save_quantized(m, MODEL_PATH, atom_path, err, sizeof err), 0, "%s",
                     err);
        llm_model_free(m);
    }
    const char *paths[] = {atom_path, MODEL_PATH, MODEL_PATH};
    enum llm_precision precisions[] = {LLM_ATOM, LLM_W8A8, LLM_FP32};
    for (int p = 0; p < 3; p++) {
        size_t n, n_other;
        float *one = batch_logits_with_threads(paths[p], precisions[p], 1, &n);
        for (int threads = 2; threads <= 3; threads++) {
            float *other = batch_logits_with_threads(paths[p], precisions[p], threads, &n_other);
            cr_assert_eq(n, n_other);
            if (precisions[p] == LLM_FP32) {
                double err = rel_error(other, one, n);
                cr_assert_leq(err, 1e-6, "fp32: %d threads: relative error %g", threads, err);
            } else {
                cr_assert(memcmp(one, other, n * sizeof(float)) == 0,
                          "%s: %d threads differ from 1", llm_precision_name(precisions[p]),
                          threads);
            }
            free(other);
        }
        free(one);
    }
    unlink(atom_path);
}

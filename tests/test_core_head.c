/*
 * Tests for the f16 output head (core/head.c): both kernels (dot product
 * for few rows, widened panels through OpenBLAS for many) against the
 * scalar reference on awkward sizes, and a model with head_f16 giving the
 * logits of its f32 head within the rounding of a sum.
 */
#include "core/model_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_sizes(int R, int V, int D)
{
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)(R * 1000003 + V * 101 + D));
    float *x = malloc(sizeof(float) * (size_t)R * D);
    uint16_t *w = malloc(sizeof(uint16_t) * (size_t)V * D);
    float *y = malloc(sizeof(float) * (size_t)R * V), *ref = malloc(sizeof(float) * (size_t)R * V);
    for (int i = 0; i < R * D; i++) x[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < V * D; i++) w[i] = util_f32_to_f16((float)(0.1 * util_rng_normal(&rng)));
    llm_head_f16(x, w, y, R, V, D);
    llm_head_f16_scalar(x, w, ref, R, V, D);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            /* bound: D products of |x| |w| each, rounded differently */
            double mag = 0;
            for (int d = 0; d < D; d++)
                mag += fabs(x[(size_t)r * D + d] * util_f16_to_f32(w[(size_t)v * D + d]));
            double got = y[(size_t)r * V + v], want = ref[(size_t)r * V + v];
            cr_assert(fabs(got - want) <= 1e-6 * D * mag + 1e-30,
                      "R %d V %d D %d at (%d, %d): %g vs %g", R, V, D, r, v, got, want);
        }
    free(x);
    free(w);
    free(y);
    free(ref);
}

Test(core_head, both_kernels_match_the_scalar_reference_on_awkward_sizes, .timeout = 60)
{
    static const int rows[] = {1, 3, 4, 5, 16, 17, 40};
    static const int vocab[] = {1, 37, 300};
    static const int width[] = {8, 24, 520};
    for (size_t a = 0; a < sizeof rows / sizeof *rows; a++)
        for (size_t b = 0; b < sizeof vocab / sizeof *vocab; b++)
            for (size_t c = 0; c < sizeof width / sizeof *width; c++)
                check_sizes(rows[a], vocab[b], width[c]);
}

Test(core_head, a_model_with_an_f16_head_gives_the_f32_heads_logits, .timeout = 60)
{
    /* tiny-random stores f16 weights: the f16 head holds the same numbers */
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 8;
    llm_model *m32, *m16;
    char err[256];
    cr_assert_eq(llm_model_load("tests/data/tiny-random.gguf", &o, &m32, err, sizeof err), 0, "%s",
                 err);
    o.head = LLM_HEAD_F16;
    cr_assert_eq(llm_model_load("tests/data/tiny-random.gguf", &o, &m16, err, sizeof err), 0, "%s",
                 err);
    cr_assert_not_null(m16->output_f16);
    cr_assert_null(m16->output_f16_owned, "an f16 file's head is read where it lies");
    int vocab = m32->config.vocab_size;
    int32_t ids[20];
    for (int i = 0; i < 20; i++) ids[i] = 1 + i * 97;
    float *a = malloc(sizeof(float) * 20 * (size_t)vocab),
          *b = malloc(sizeof(float) * 20 * (size_t)vocab);
    llm_model *models[2] = {m32, m16};
    float *outs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        llm_workspace *ws = llm_workspace_create(models[k], 20);
        attn_seq *seq = attn_seq_create(llm_model_kv_cache(models[k]));
        struct llm_batch_item item = {.kv = seq, .tokens = ids, .n_tokens = 20, .all_logits = true};
        cr_assert_eq(llm_forward(models[k], ws, &item, 1, outs[k], NULL), 0);
        attn_seq_free(seq);
        llm_workspace_free(ws);
    }
    double worst = 0;
    for (size_t i = 0; i < 20 * (size_t)vocab; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    cr_assert_lt(worst, 1e-3, "largest logit difference %g", worst);
    free(a);
    free(b);
    llm_model_free(m32);
    llm_model_free(m16);
}

/* Logits of a model with a quantized head against the f32 head's: relative
 * error of the logit vectors below `bound`, and not zero. */
static void check_quantized_head(enum llm_head head, double bound)
{
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 8;
    llm_model *m32, *mq;
    char err[256];
    cr_assert_eq(llm_model_load("tests/data/tiny-random.gguf", &o, &m32, err, sizeof err), 0, "%s",
                 err);
    o.head = head;
    cr_assert_eq(llm_model_load("tests/data/tiny-random.gguf", &o, &mq, err, sizeof err), 0, "%s",
                 err);
    cr_assert_not_null(mq->output_q);
    cr_assert_null(mq->output_f16);
    int vocab = m32->config.vocab_size;
    int32_t ids[20];
    for (int i = 0; i < 20; i++) ids[i] = 1 + i * 97;
    float *a = malloc(sizeof(float) * 20 * (size_t)vocab),
          *b = malloc(sizeof(float) * 20 * (size_t)vocab);
    llm_model *models[2] = {m32, mq};
    float *outs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        llm_workspace *ws = llm_workspace_create(models[k], 20);
        attn_seq *seq = attn_seq_create(llm_model_kv_cache(models[k]));
        struct llm_batch_item item = {.kv = seq, .tokens = ids, .n_tokens = 20, .all_logits = true};
        cr_assert_eq(llm_forward(models[k], ws, &item, 1, outs[k], NULL), 0);
        attn_seq_free(seq);
        llm_workspace_free(ws);
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < 20 * (size_t)vocab; i++)
        num += (a[i] - b[i]) * (a[i] - b[i]), den += a[i] * a[i];
    cr_assert_lt(sqrt(num / den), bound, "%s head: relative logit error %g", llm_head_name(head),
                 sqrt(num / den));
    cr_assert_gt(num, 0.0, "the %s head computes something else than the f32 one",
                 llm_head_name(head));
    free(a);
    free(b);
    llm_model_free(m32);
    llm_model_free(mq);
}

/* int8 on both sides: relative error of a logit vector ~1%; int4 weights
 * (groups of 128, clipped at 0.9) with int8 activations: ~10% on this
 * random model, whose weights have no structure a 4-bit grid could keep. */
Test(core_head, a_model_with_an_int8_head_stays_close_to_the_f32_head, .timeout = 60)
{
    check_quantized_head(LLM_HEAD_INT8, 0.03);
}

Test(core_head, a_model_with_an_int4_head_stays_within_its_bound_of_the_f32_head, .timeout = 60)
{
    check_quantized_head(LLM_HEAD_INT4, 0.15);
}

/* A quantized file keeps its quantized head: saved with an int4 head and
 * loaded back (with another head asked for: the file's wins), the logits
 * are the same bits. */
Test(core_head, a_quantized_file_keeps_its_int4_head, .timeout = 60)
{
    char path[] = "/tmp/llmd-test-head-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 8;
    o.precision = LLM_W8A8;
    o.head = LLM_HEAD_INT4;
    llm_model *made, *loaded;
    char err[256];
    cr_assert_eq(llm_model_load("tests/data/tiny-random.gguf", &o, &made, err, sizeof err), 0, "%s",
                 err);
    cr_assert_eq(
        llm_model_save_quantized(made, "tests/data/tiny-random.gguf", path, err, sizeof err), 0,
        "%s", err);
    o.head = LLM_HEAD_F16;
    cr_assert_eq(llm_model_load(path, &o, &loaded, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(loaded->output_q);
    cr_assert_eq(q_linear_format(loaded->output_q)->method, Q_W4A8);
    int vocab = made->config.vocab_size;
    int32_t ids[9] = {1, 50, 900, 17, 4000, 2, 77, 7999, 3};
    float *a = malloc(sizeof(float) * 9 * (size_t)vocab),
          *b = malloc(sizeof(float) * 9 * (size_t)vocab);
    llm_model *models[2] = {made, loaded};
    float *outs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        llm_workspace *ws = llm_workspace_create(models[k], 9);
        attn_seq *seq = attn_seq_create(llm_model_kv_cache(models[k]));
        struct llm_batch_item item = {.kv = seq, .tokens = ids, .n_tokens = 9, .all_logits = true};
        cr_assert_eq(llm_forward(models[k], ws, &item, 1, outs[k], NULL), 0);
        attn_seq_free(seq);
        llm_workspace_free(ws);
    }
    cr_assert_eq(memcmp(a, b, sizeof(float) * 9 * (size_t)vocab), 0);
    free(a);
    free(b);
    llm_model_free(made);
    llm_model_free(loaded);
    unlink(path);
}

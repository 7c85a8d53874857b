/*
 * Quest end to end, through core's public API on the random-weight test model
 * (2 layers, 4 query heads over 2 KV heads, context 512, pages of 16):
 * a budget that covers the sequence is dense attention exactly; a smaller
 * budget changes the output only once the sequence has more pages than the
 * budget; the engine's page counters count sparse decode steps only, and
 * exactly the pages the selection chose; page metadata survives page reuse
 * and rollback.
 */
#include "core/llm.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL_PATH "tests/data/tiny-random.gguf"
#define PAGE       16
#define MAX_GEN    64

TestSuite(core_quest, .timeout = 120);

static llm_model *load(enum attn_kv_type kv, enum attn_mode sparse_mode, int dense_layers)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_type = kv;
    o.kv_pages = 256;
    o.sparse_mode = sparse_mode;
    o.dense_layers = dense_layers;
    llm_model *m;
    cr_assert_eq(llm_model_load(MODEL_PATH, &o, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* BOS + n - 1 random tokens from `seed`. */
static int32_t *random_tokens(const llm_model *m, int seed, int n)
{
    int vocab = llm_model_config(m)->vocab_size;
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)seed);
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n);
    t[0] = llm_tokenizer_bos(llm_model_tokenizer(m));
    for (int i = 1; i < n; i++) t[i] = 3 + (int32_t)(util_rng_next(&rng) % (uint64_t)(vocab - 3));
    return t;
}

/* Feeds tokens [from, n) one at a time (decode steps, where Quest applies)
 * to seq with `budget` and writes each step's logits row into
 * logits + (i - from) * vocab. */
static void decode_steps(llm_model *m, llm_workspace *ws, attn_seq *seq, const int32_t *tokens,
                         int from, int n, int budget, float *logits)
{
    int vocab = llm_model_config(m)->vocab_size;
    for (int i = from; i < n; i++) {
        cr_assert_eq(attn_seq_len(seq), i);
        struct llm_batch_item item = {
            .kv = seq, .tokens = tokens + i, .n_tokens = 1, .quest_budget = budget};
        cr_assert_eq(llm_forward(m, ws, &item, 1, logits + (size_t)(i - from) * vocab, NULL), 0);
    }
}

/* The logits of every position of `tokens` in a new sequence, fed one token
 * at a time with `budget`. Returns (n, vocab) floats. */
static float *teacher_forced_logits(llm_model *m, const int32_t *tokens, int n, int budget)
{
    int vocab = llm_model_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)n * vocab);
    llm_workspace *ws = llm_workspace_create(m, 1);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    decode_steps(m, ws, seq, tokens, 0, n, budget, logits);
    attn_seq_free(seq);
    llm_workspace_free(ws);
    return logits;
}

static bool rows_equal(const float *a, const float *b, int vocab)
{
    return memcmp(a, b, sizeof(float) * (size_t)vocab) == 0;
}

/* KL(p || q) of the softmaxes of two logit rows, in nats. */
static double kl_of_logits(const float *p_logits, const float *q_logits, int vocab)
{
    double pmax = -INFINITY, qmax = -INFINITY, psum = 0, qsum = 0;
    for (int v = 0; v < vocab; v++) {
        pmax = fmax(pmax, p_logits[v]);
        qmax = fmax(qmax, q_logits[v]);
    }
    for (int v = 0; v < vocab; v++) {
        psum += exp(p_logits[v] - pmax);
        qsum += exp(q_logits[v] - qmax);
    }
    double kl = 0;
    for (int v = 0; v < vocab; v++) {
        double lp = p_logits[v] - pmax - log(psum), lq = q_logits[v] - qmax - log(qsum);
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

/* ------------------------------------------------------------- engine */

struct run {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int32_t tokens[4][MAX_GEN];
    int n_tokens[4];
    int n_done;
};

static void on_event(const struct llm_event *ev, void *ctx)
{
    struct run *r = ctx;
    int slot = (int)(intptr_t)ev->user;
    pthread_mutex_lock(&r->lock);
    if (ev->type == LLM_EVENT_TOKEN) {
        cr_assert_lt(r->n_tokens[slot], MAX_GEN);
        r->tokens[slot][r->n_tokens[slot]++] = ev->token;
    } else {
        r->n_done++;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
}

static llm_engine *engine_start(llm_model *m, struct run *r, int prefill_chunk)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    struct llm_engine_config ec;
    llm_engine_config_default(&ec);
    ec.prefill_chunk = prefill_chunk;
    llm_engine *e;
    cr_assert_eq(llm_engine_create(m, &ec, on_event, r, &e), 0);
    return e;
}

/* Submits a greedy request (prompt copied) in `slot` and waits until the
 * engine has finished it and published the step's counters. */
static void engine_generate(llm_engine *e, struct run *r, int slot, const int32_t *prompt,
                            int n_prompt, int max_tokens, int budget)
{
    struct llm_request req;
    llm_request_init(&req);
    req.prompt = malloc(sizeof(int32_t) * (size_t)n_prompt);
    memcpy(req.prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
    req.n_prompt = n_prompt;
    req.max_tokens = max_tokens;
    req.stop_at_eos = false;
    req.quest_budget = budget;
    req.user = (void *)(intptr_t)slot;
    uint64_t id;
    pthread_mutex_lock(&r->lock);
    int want = r->n_done + 1;
    pthread_mutex_unlock(&r->lock);
    cr_assert_eq(llm_engine_submit(e, &req, &id), 0);
    pthread_mutex_lock(&r->lock);
    while (r->n_done < want) pthread_cond_wait(&r->cond, &r->lock);
    pthread_mutex_unlock(&r->lock);
    /* DONE comes before the step's counters are published; the engine is
     * idle (running 0) once they are. */
    struct llm_engine_stats s;
    for (int i = 0; i < 10000; i++) {
        llm_engine_stats(e, &s);
        if (s.running == 0 && s.waiting == 0) break;
        usleep(1000);
    }
    cr_assert_eq(s.running, 0);
    cr_assert_eq(r->n_tokens[slot], max_tokens);
}

static void engine_stop(llm_engine *e, struct run *r)
{
    llm_engine_shutdown(e, 0);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
}

/* -------------------------------------------------------------- tests */

Test(core_quest, a_budget_covering_the_sequence_is_dense_attention_exactly)
{
    enum { N = 300 };                 /* 19 pages */
    int budgets[] = {512, 19 * PAGE}; /* the context; exactly the sequence's pages */
    enum attn_mode modes[] = {ATTN_QUEST, ATTN_WINDOW};
    for (int mi = 0; mi < 2; mi++) {
        llm_model *m = load(ATTN_KV_F32, modes[mi], 0);
        int vocab = llm_model_config(m)->vocab_size;
        int32_t *tokens = random_tokens(m, 5, N);
        float *dense = teacher_forced_logits(m, tokens, N, 0);
        for (int b = 0; b < 2; b++) {
            float *sparse = teacher_forced_logits(m, tokens, N, budgets[b]);
            for (int i = 0; i < N; i++)
                cr_assert(rows_equal(dense + (size_t)i * vocab, sparse + (size_t)i * vocab, vocab),
                          "mode %d budget %d: logits of position %d differ", modes[mi], budgets[b],
                          i);
            free(sparse);
        }
        /* Generation through the engine: the same tokens. */
        static struct run r;
        llm_engine *e = engine_start(m, &r, 64);
        engine_generate(e, &r, 0, tokens, 250, 40, 0);
        engine_generate(e, &r, 1, tokens, 250, 40, 512);
        cr_assert_arr_eq(r.tokens[0], r.tokens[1], sizeof(int32_t) * 40, "mode %d", modes[mi]);
        struct llm_engine_stats s;
        llm_engine_stats(e, &s);
        cr_assert_eq(s.quest_pages_total, 0, "no step was sparse");
        engine_stop(e, &r);
        free(dense);
        free(tokens);
        llm_model_free(m);
    }
}

Test(core_quest, a_budget_changes_the_output_only_past_its_pages_and_nears_dense_as_it_grows)
{
    enum { N = 400 };              /* the sequence grows to 25 pages */
    int budgets[] = {16, 64, 128}; /* 1, 4 and 8 pages */
    llm_model *m = load(ATTN_KV_F32, ATTN_QUEST, 0);
    int vocab = llm_model_config(m)->vocab_size;
    int32_t *tokens = random_tokens(m, 9, N);
    float *dense = teacher_forced_logits(m, tokens, N, 0);
    double kl_mean[3];
    for (int b = 0; b < 3; b++) {
        float *quest = teacher_forced_logits(m, tokens, N, budgets[b]);
        int differ = 0, sparse_positions = 0;
        double kl_sum = 0;
        for (int i = 0; i < N; i++) {
            const float *d = dense + (size_t)i * vocab, *q = quest + (size_t)i * vocab;
            if (i / PAGE + 1 <= budgets[b] / PAGE) { /* the sequence fits the budget */
                cr_assert(rows_equal(d, q, vocab), "budget %d: position %d differs", budgets[b], i);
                continue;
            }
            for (int v = 0; v < vocab; v++)
                cr_assert(isfinite(q[v]), "position %d: logit %d", i, v);
            sparse_positions++;
            differ += !rows_equal(d, q, vocab);
            if (i >= 128) kl_sum += kl_of_logits(d, q, vocab); /* sparse for every budget */
        }
        cr_assert_gt(differ, sparse_positions / 2, "budget %d: only %d of %d positions changed",
                     budgets[b], differ, sparse_positions);
        kl_mean[b] = kl_sum / (N - 128);
        cr_log_info("budget %d: %d/%d positions changed, mean KL(dense || quest) %.4f nats",
                    budgets[b], differ, sparse_positions, kl_mean[b]);
        free(quest);
    }
    /* Sane: more pages bring the output closer to dense. (Random weights
     * attend almost uniformly, so no small budget is close; measured KL
     * 0.61, 0.45 and 0.25 nats.) */
    cr_assert_lt(kl_mean[1], kl_mean[0]);
    cr_assert_lt(kl_mean[2], kl_mean[1]);
    free(dense);
    free(tokens);
    llm_model_free(m);
}

/* What the engine must count for one request: decode steps run at
 * positions n_prompt .. n_prompt + max_tokens - 2 (the first token comes
 * from prefill). A step is sparse, in each layer past the dense ones, when
 * the sequence has more pages than the budget; the selection then reads
 * budget / PAGE pages (top-K plus the current one) of each KV head. */
static void expected_sparse_pages(int n_prompt, int max_tokens, int budget, int sparse_layers,
                                  int n_kv, int64_t *read, int64_t *total)
{
    int budget_pages = budget / PAGE > 1 ? budget / PAGE : 1;
    for (int pos = n_prompt; pos <= n_prompt + max_tokens - 2; pos++) {
        int seen = pos / PAGE + 1;
        if (budget == 0 || seen <= budget / PAGE) continue;
        *read += (int64_t)sparse_layers * n_kv * budget_pages;
        *total += (int64_t)sparse_layers * n_kv * seen;
    }
}

Test(core_quest, the_engine_counts_exactly_the_pages_of_sparse_decode_steps)
{
    /* Layer 0 dense, layer 1 sparse. Prefill chunks of 32 leave a last
     * chunk of one token for a 97-token prompt: prefill all the same. */
    llm_model *m = load(ATTN_KV_F32, ATTN_QUEST, 1);
    int n_kv = llm_model_config(m)->n_kv_heads;
    int32_t *tokens = random_tokens(m, 13, 200);
    static struct run r;
    llm_engine *e = engine_start(m, &r, 32);
    struct llm_engine_stats s;

    engine_generate(e, &r, 0, tokens, 97, 40, 0); /* dense request */
    llm_engine_stats(e, &s);
    cr_assert_eq(s.quest_pages_read, 0);
    cr_assert_eq(s.quest_pages_total, 0);

    engine_generate(e, &r, 1, tokens, 20, 30, 64); /* never more than 4 pages: dense */
    llm_engine_stats(e, &s);
    cr_assert_eq(s.quest_pages_read, 0, "a sequence within its budget counted %lld reads",
                 (long long)s.quest_pages_read);
    cr_assert_eq(s.quest_pages_total, 0);

    int64_t read = 0, total = 0;
    engine_generate(e, &r, 2, tokens, 97, 40, 64);
    expected_sparse_pages(97, 40, 64, 1, n_kv, &read, &total);
    llm_engine_stats(e, &s);
    cr_assert_eq(s.quest_pages_read, read);
    cr_assert_eq(s.quest_pages_total, total);

    /* Budget below a page: the current page only. */
    engine_generate(e, &r, 3, tokens, 50, 20, 8);
    expected_sparse_pages(50, 20, 8, 1, n_kv, &read, &total);
    llm_engine_stats(e, &s);
    cr_assert_eq(s.quest_pages_read, read);
    cr_assert_eq(s.quest_pages_total, total);
    cr_assert_lt(s.quest_pages_read, s.quest_pages_total);
    engine_stop(e, &r);
    free(tokens);
    llm_model_free(m);
}

/* Logits of B, decoded with a budget, in a fresh cache and again after a
 * longer sequence A used (and left stale bounds in) the same pages. */
static void check_page_reuse(enum attn_kv_type kv)
{
    enum { NA = 333, NB = 250, BUDGET = 48 };
    llm_model *m = load(kv, ATTN_QUEST, 0);
    int vocab = llm_model_config(m)->vocab_size;
    int32_t *a = random_tokens(m, 21, NA), *b = random_tokens(m, 22, NB);
    int free_pages = attn_cache_pages_free(llm_model_kv_cache(m));
    float *fresh = teacher_forced_logits(m, b, NB, BUDGET);
    float *other = teacher_forced_logits(m, a, NA, BUDGET); /* takes B's pages and more */
    float *reused = teacher_forced_logits(m, b, NB, BUDGET);
    cr_assert_eq(attn_cache_pages_free(llm_model_kv_cache(m)), free_pages, "every page came back");
    for (int i = 0; i < NB; i++)
        cr_assert(rows_equal(fresh + (size_t)i * vocab, reused + (size_t)i * vocab, vocab),
                  "kv %s: position %d differs after page reuse", attn_kv_type_name(kv), i);
    free(fresh);
    free(other);
    free(reused);
    free(a);
    free(b);
    llm_model_free(m);
}

Test(core_quest, reused_pages_give_the_same_output_as_a_fresh_cache)
{
    check_page_reuse(ATTN_KV_F32);
    check_page_reuse(ATTN_KV_INT4);
}

Test(core_quest, decoding_again_after_a_rollback_gives_the_same_output)
{
    /* What bench/quest_quality does: prefill once, decode with one budget,
     * truncate back to the prompt (mid-page), decode with another. */
    enum { N = 300, PROMPT = 201 };
    llm_model *m = load(ATTN_KV_F32, ATTN_QUEST, 0);
    int vocab = llm_model_config(m)->vocab_size;
    int32_t *tokens = random_tokens(m, 31, N);
    llm_workspace *ws = llm_workspace_create(m, PROMPT);
    float *prefill = malloc(sizeof(float) * (size_t)vocab);
    size_t rows = (size_t)(N - PROMPT) * vocab;
    float *first = malloc(sizeof(float) * rows), *again = malloc(sizeof(float) * rows);
    float *other = malloc(sizeof(float) * rows);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    struct llm_batch_item item = {.kv = seq, .tokens = tokens, .n_tokens = PROMPT};
    cr_assert_eq(llm_forward(m, ws, &item, 1, prefill, NULL), 0);
    decode_steps(m, ws, seq, tokens, PROMPT, N, 64, first);
    attn_seq_truncate(seq, PROMPT);
    decode_steps(m, ws, seq, tokens, PROMPT, N, 0, other);
    attn_seq_truncate(seq, PROMPT);
    decode_steps(m, ws, seq, tokens, PROMPT, N, 64, again);
    cr_assert(memcmp(first, again, sizeof(float) * rows) == 0);
    cr_assert(memcmp(first, other, sizeof(float) * rows) != 0, "budget 64 is sparse here");
    attn_seq_free(seq);
    llm_workspace_free(ws);
    free(prefill);
    free(first);
    free(again);
    free(other);
    free(tokens);
    llm_model_free(m);
}

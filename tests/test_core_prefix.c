/*
 * Prefix caching in the batching engine, on the random-weight test model
 * quantized the way `serve` runs (Atom W4A4, INT4 KV): greedy output with
 * the cache is the output without it, token for token, for a shared system
 * prompt, a multi-turn chat, n > 1 choices of one prompt and under pool
 * pressure (eviction), and what the cache saved is reported.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/llm.h"
#include "tests/engine_events.h"

#define MODEL_PATH "tests/data/tiny-random.gguf"
#define PAGE 16

static llm_model *load(int kv_pages)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.precision = LLM_ATOM;
    o.kv_type = ATTN_KV_INT4;
    o.quant.calib_tokens = 512;
    o.kv_pages = kv_pages;
    o.page_size = PAGE;
    llm_model *m;
    cr_assert_eq(llm_model_load(MODEL_PATH, &o, &m, err, sizeof err), 0, "%s", err);
    return m;
}

static llm_engine *start(llm_model *m, struct collector *c, bool prefix_cache)
{
    struct llm_engine_config ec;
    llm_engine_config_default(&ec);
    ec.max_running = 8;
    ec.prefill_chunk = 24; /* chunks that end inside pages */
    ec.prefix_cache = prefix_cache;
    llm_engine *e;
    cr_assert_eq(llm_engine_create(m, &ec, on_event, c, &e), 0);
    return e;
}

/* Random tokens (never BOS/EOS/UNK) after `head`. */
static int32_t *tokens(llm_model *m, const int32_t *head, int n_head, int n, uint64_t seed)
{
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n);
    memcpy(t, head, sizeof(int32_t) * (size_t)n_head);
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    int vocab = llm_model_config(m)->vocab_size;
    for (int i = n_head; i < n; i++) t[i] = 3 + (int32_t)(util_rng_next(&rng) % (uint64_t)(vocab - 3));
    return t;
}

/* Runs one engine over the model (whose KV pool, and so whose prefix cache,
 * outlives it) on these prompts, all submitted at once. */
static float temperature; /* of the next runs; with seeds 1, 2, ... */

static void run(llm_model *m, bool prefix_cache, int n, int32_t *const *prompts,
                const int *n_prompt, int max_tokens, struct collector *c)
{
    collector_init(c);
    llm_engine *e = start(m, c, prefix_cache);
    for (int i = 0; i < n; i++) {
        struct llm_request r;
        llm_request_init(&r);
        r.prompt = malloc(sizeof(int32_t) * (size_t)n_prompt[i]);
        memcpy(r.prompt, prompts[i], sizeof(int32_t) * (size_t)n_prompt[i]);
        r.n_prompt = n_prompt[i];
        r.max_tokens = max_tokens;
        r.stop_at_eos = false;
        r.sampling.temperature = temperature;
        r.sampling.seed = 1 + (uint64_t)i;
        r.user = (void *)(intptr_t)i;
        uint64_t id;
        cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    }
    wait_done(c, n);
    llm_engine_shutdown(e, 0);
}

static void assert_same_tokens(const struct collector *a, const struct collector *b, int n)
{
    for (int i = 0; i < n; i++) {
        const struct result *x = &a->results[i], *y = &b->results[i];
        cr_assert_eq(x->n_tokens, y->n_tokens, "request %d: %d tokens vs %d", i, x->n_tokens,
                     y->n_tokens);
        cr_assert_arr_eq(x->tokens, y->tokens, sizeof(int32_t) * (size_t)x->n_tokens,
                         "request %d: the cached run generated other tokens", i);
    }
}

/* Whole pages of the first n - 1 tokens: the most a prompt of n can take. */
static int cacheable(int n) { return (n - 1) / PAGE * PAGE; }

TestSuite(prefix, .timeout = 240);

/* Eight requests with one 100-token system prompt, sent together, twice.
 * The first round computes the system prompt once (the others wait for its
 * pages rather than computing them too); the second takes each whole
 * prompt's pages from the cache. */
Test(prefix, a_shared_system_prompt_is_computed_once_and_changes_no_output)
{
    enum { N = 8, SYS = 100, GEN = 12 };
    llm_model *m = load(256);
    int32_t bos = llm_tokenizer_bos(llm_model_tokenizer(m));
    int32_t *sys = tokens(m, &bos, 1, SYS, 1);
    int32_t *prompts[N];
    int n_prompt[N];
    for (int i = 0; i < N; i++) {
        n_prompt[i] = SYS + 5 + 3 * i;
        prompts[i] = tokens(m, sys, SYS, n_prompt[i], 100 + (uint64_t)i);
    }
    static struct collector plain, first, second;
    run(m, false, N, prompts, n_prompt, GEN, &plain);
    run(m, true, N, prompts, n_prompt, GEN, &first);
    run(m, true, N, prompts, n_prompt, GEN, &second);
    assert_same_tokens(&plain, &first, N);
    assert_same_tokens(&plain, &second, N);

    int from_cache = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(plain.results[i].final.cached_tokens, 0);
        from_cache += first.results[i].final.cached_tokens == SYS / PAGE * PAGE;
        cr_assert_eq(second.results[i].final.cached_tokens, cacheable(n_prompt[i]));
    }
    cr_assert_eq(from_cache, N - 1, "all but the first took the system prompt's pages");
    free(sys);
    for (int i = 0; i < N; i++) free(prompts[i]);
    llm_model_free(m);
}

/* A chat of three turns, each resending the history: the prompt and the
 * reply of the turns before come from the cache. */
Test(prefix, a_multi_turn_chat_reuses_its_history_and_changes_no_output)
{
    enum { TURNS = 3, GEN = 20 };
    llm_model *m = load(256);
    int32_t bos = llm_tokenizer_bos(llm_model_tokenizer(m));
    static struct collector plain[TURNS], cached[TURNS];
    int32_t *history = tokens(m, &bos, 1, 37, 7);
    int n_history = 37;
    for (int t = 0; t < TURNS; t++) {
        run(m, false, 1, &history, &n_history, GEN, &plain[t]);
        run(m, true, 1, &history, &n_history, GEN, &cached[t]);
        assert_same_tokens(&plain[t], &cached[t], 1);
        if (t > 0) {
            /* the turn before wrote its prompt and all its reply but the
             * last token to the cache */
            int before = n_history - 23 - GEN - 1;
            int expect = cacheable(n_history) < before / PAGE * PAGE ? cacheable(n_history)
                                                                       : before / PAGE * PAGE;
            cr_assert_geq(cached[t].results[0].final.cached_tokens, expect, "turn %d", t);
        }
        /* the next turn: the history, the reply, a new user message */
        const struct result *reply = &cached[t].results[0];
        int32_t *next = tokens(m, history, n_history, n_history + reply->n_tokens + 23, 50 + (uint64_t)t);
        memcpy(next + n_history, reply->tokens, sizeof(int32_t) * (size_t)reply->n_tokens);
        free(history);
        history = next;
        n_history += reply->n_tokens + 23;
    }
    free(history);
    llm_model_free(m);
}

/* n > 1: four choices of one prompt share its pages; seeded sampling gives
 * each its own tokens, the same with the cache as without. */
Test(prefix, choices_of_one_prompt_share_its_pages)
{
    enum { N = 4, LEN = 90, GEN = 16 };
    llm_model *m = load(256);
    int32_t bos = llm_tokenizer_bos(llm_model_tokenizer(m));
    int32_t *prompt = tokens(m, &bos, 1, LEN, 3);
    int32_t *prompts[N] = {prompt, prompt, prompt, prompt};
    int n_prompt[N] = {LEN, LEN, LEN, LEN};
    static struct collector plain, cached;
    temperature = 0.9f;
    run(m, false, N, prompts, n_prompt, GEN, &plain);
    run(m, true, N, prompts, n_prompt, GEN, &cached);
    assert_same_tokens(&plain, &cached, N);
    cr_assert(memcmp(plain.results[0].tokens, plain.results[1].tokens, sizeof(int32_t) * GEN),
              "seeded choices differ");
    int shared = 0;
    for (int i = 0; i < N; i++) shared += cached.results[i].final.cached_tokens == cacheable(LEN);
    cr_assert_eq(shared, N - 1);
    free(prompt);
    llm_model_free(m);
}

/* A pool of 40 pages and prompts of 7 pages: the idle cached pages of old
 * prompts are given out again, least recently used first, and output stays
 * the same. */
Test(prefix, eviction_under_pool_pressure_takes_the_least_recently_used)
{
    enum { N = 8, LEN = 7 * PAGE + 5, GEN = 8 };
    llm_model *m = load(40);
    int32_t bos = llm_tokenizer_bos(llm_model_tokenizer(m));
    int32_t *prompts[N];
    int n_prompt[N];
    for (int i = 0; i < N; i++) {
        prompts[i] = tokens(m, &bos, 1, LEN, 200 + (uint64_t)i);
        n_prompt[i] = LEN;
    }
    static struct collector plain[N], cached[N], again_last, again_first;
    for (int i = 0; i < N; i++) run(m, false, 1, &prompts[i], &n_prompt[i], GEN, &plain[i]);
    for (int i = 0; i < N; i++) { /* one after another: each leaves 7 idle cached pages */
        run(m, true, 1, &prompts[i], &n_prompt[i], GEN, &cached[i]);
        assert_same_tokens(&plain[i], &cached[i], 1);
        cr_assert_eq(cached[i].results[0].final.cached_tokens, 0);
    }
    /* 8 x 8 pages went through a pool of 40: the oldest prompts' are gone,
     * the newest one's stay */
    run(m, true, 1, &prompts[N - 1], &n_prompt[N - 1], GEN, &again_last);
    assert_same_tokens(&plain[N - 1], &again_last, 1);
    cr_assert_eq(again_last.results[0].final.cached_tokens, cacheable(LEN));
    run(m, true, 1, &prompts[0], &n_prompt[0], GEN, &again_first);
    assert_same_tokens(&plain[0], &again_first, 1);
    cr_assert_eq(again_first.results[0].final.cached_tokens, 0);

    struct attn_prefix_stats s;
    attn_cache_prefix_stats(llm_model_kv_cache(m), &s);
    cr_assert_gt(s.evictions, 0);
    cr_assert_leq(s.pages_cached, 40);
    cr_assert_eq(s.pages_idle, s.pages_cached, "no sequence holds a page now");
    for (int i = 0; i < N; i++) free(prompts[i]);
    llm_model_free(m);
}

/*
 * Tests for the batching engine on the random-weight test model: batching
 * does not change greedy output, finish reasons, stop strings, streamed text,
 * cancellation, the bounded queue and draining at shutdown.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/llm.h"
#include "tests/engine_events.h"

#define MODEL_PATH "tests/data/tiny-random.gguf"
static llm_model *model;

static void load_model(void)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 512;
    cr_assert_eq(llm_model_load(MODEL_PATH, &o, &model, err, sizeof err), 0, "%s", err);
}

static void unload_model(void) { llm_model_free(model); }

TestSuite(engine, .init = load_model, .fini = unload_model, .timeout = 120);

/* A request for a prompt made from `seed`: BOS + 3..40 tokens. */
static struct llm_request make_request(int seed, int max_tokens, int slot)
{
    struct llm_request r;
    llm_request_init(&r);
    const struct llm_config *cfg = llm_model_config(model);
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)seed);
    r.n_prompt = 4 + (int)(util_rng_next(&rng) % 37);
    r.prompt = malloc(sizeof(int32_t) * (size_t)r.n_prompt);
    r.prompt[0] = llm_tokenizer_bos(llm_model_tokenizer(model));
    for (int i = 1; i < r.n_prompt; i++) r.prompt[i] = 3 + (int32_t)(util_rng_next(&rng) % (uint64_t)(cfg->vocab_size - 3));
    r.max_tokens = max_tokens;
    r.stop_at_eos = false;
    r.user = (void *)(intptr_t)slot;
    return r;
}

static llm_engine *start(struct collector *c, int max_running, int max_waiting)
{
    struct llm_engine_config ec;
    llm_engine_config_default(&ec);
    ec.max_running = max_running;
    ec.max_waiting = max_waiting;
    ec.prefill_chunk = 16; /* several chunks per prompt, mixed with decodes */
    llm_engine *e;
    cr_assert_eq(llm_engine_create(model, &ec, on_event, c, &e), 0);
    return e;
}

Test(engine, greedy_output_is_the_same_alone_and_in_a_batch_of_32)
{
    enum { N = 32, GEN = 12 };
    static struct collector alone, batched;
    collector_init(&alone);
    collector_init(&batched);
    for (int i = 0; i < N; i++) { /* one at a time */
        llm_engine *e = start(&alone, 1, 4);
        struct llm_request r = make_request(100 + i, GEN, i);
        uint64_t id;
        cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
        wait_done(&alone, i + 1);
        llm_engine_shutdown(e, 0);
    }
    llm_engine *e = start(&batched, N, N);
    for (int i = 0; i < N; i++) {
        struct llm_request r = make_request(100 + i, GEN, i);
        uint64_t id;
        cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    }
    wait_done(&batched, N);
    llm_engine_shutdown(e, 0);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(batched.results[i].n_tokens, GEN);
        cr_assert_arr_eq(alone.results[i].tokens, batched.results[i].tokens, sizeof(int32_t) * GEN,
                         "request %d differs in the batch", i);
        cr_assert_eq(batched.results[i].final.finish, LLM_FINISH_LENGTH);
        cr_assert_eq(batched.results[i].final.completion_tokens, GEN);
    }
}

Test(engine, streamed_text_equals_the_decoded_tokens)
{
    static struct collector c;
    collector_init(&c);
    llm_engine *e = start(&c, 4, 4);
    struct llm_request r = make_request(7, 40, 0);
    uint64_t id;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&c, 1);
    llm_engine_shutdown(e, 0);
    char *whole = llm_detokenize(llm_model_tokenizer(model), c.results[0].tokens, c.results[0].n_tokens);
    cr_assert_not_null(whole);
    cr_assert_eq(c.results[0].text_len, strlen(whole));
    cr_assert(memcmp(c.results[0].text, whole, strlen(whole)) == 0);
    free(whole);
}

Test(engine, a_stop_string_ends_the_text_before_it)
{
    static struct collector first, second;
    collector_init(&first);
    llm_engine *e = start(&first, 4, 4);
    struct llm_request r = make_request(11, 40, 0);
    uint64_t id;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&first, 1);
    const struct result *full = &first.results[0];
    cr_assert_gt(full->text_len, 12u);
    /* a stop string from the middle of the text */
    size_t at = full->text_len / 2;
    char stop[5];
    memcpy(stop, full->text + at, 4);
    stop[4] = 0;
    const char *first_hit = memmem(full->text, full->text_len, stop, 4);
    size_t expect = (size_t)(first_hit - full->text);

    collector_init(&second);
    llm_engine_shutdown(e, 0);
    e = start(&second, 4, 4);
    r = make_request(11, 40, 0);
    r.stop[0] = strdup(stop);
    r.n_stop = 1;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&second, 1);
    llm_engine_shutdown(e, 0);
    cr_assert_eq(second.results[0].final.finish, LLM_FINISH_STOP);
    cr_assert_eq(second.results[0].text_len, expect);
    cr_assert(memcmp(second.results[0].text, full->text, expect) == 0);
}

Test(engine, cancel_ends_the_request_and_frees_its_pages)
{
    static struct collector c;
    collector_init(&c);
    llm_engine *e = start(&c, 4, 4);
    struct llm_request r = make_request(5, MAX_GEN, 0);
    uint64_t id;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    for (;;) { /* wait for a few tokens */
        pthread_mutex_lock(&c.lock);
        int n = c.results[0].n_tokens;
        pthread_mutex_unlock(&c.lock);
        if (n >= 2) break;
        usleep(1000);
    }
    llm_engine_cancel(e, id);
    wait_done(&c, 1);
    cr_assert_eq(c.results[0].final.finish, LLM_FINISH_CANCELLED);
    cr_assert_lt(c.results[0].n_tokens, MAX_GEN);
    struct llm_engine_stats s;
    for (int i = 0; i < 1000; i++) { /* stats are published after the step */
        llm_engine_stats(e, &s);
        if (s.kv_pages_used == 0) break;
        usleep(1000);
    }
    cr_assert_eq(s.kv_pages_used, 0);
    cr_assert_eq(s.running, 0);
    llm_engine_shutdown(e, 0);
}

Test(engine, a_full_queue_refuses_with_eagain_and_bad_requests_with_einval)
{
    static struct collector c;
    collector_init(&c);
    llm_engine *e = start(&c, 1, 2);
    int accepted = 0, refused = 0;
    for (int i = 0; i < 8; i++) {
        struct llm_request r = make_request(20 + i, MAX_GEN, i);
        uint64_t id;
        int rc = llm_engine_submit(e, &r, &id);
        if (rc == 0) accepted++;
        else {
            cr_assert_eq(rc, -EAGAIN);
            refused++;
            free(r.prompt);
        }
    }
    cr_assert_geq(refused, 1);
    cr_assert_leq(accepted, 3, "one running and two waiting at most");

    struct llm_request bad = make_request(1, 8, 9);
    bad.prompt[1] = llm_model_config(model)->vocab_size; /* out of range */
    uint64_t id;
    cr_assert_eq(llm_engine_submit(e, &bad, &id), -EINVAL);
    free(bad.prompt);
    llm_engine_shutdown(e, 0);
    cr_assert_eq(c.n_done, accepted, "every accepted request gets its DONE");
}

Test(engine, shutdown_with_grace_lets_accepted_requests_finish)
{
    static struct collector c;
    collector_init(&c);
    llm_engine *e = start(&c, 2, 8);
    for (int i = 0; i < 6; i++) {
        struct llm_request r = make_request(40 + i, 8, i);
        uint64_t id;
        cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    }
    llm_engine_shutdown(e, 60.0);
    cr_assert_eq(c.n_done, 6);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(c.results[i].final.finish, LLM_FINISH_LENGTH);
        cr_assert_eq(c.results[i].n_tokens, 8);
    }
}

/* logit_bias: +100 makes a token the greedy choice every step; -100 on the
 * tokens greedy decoding chose keeps each of them out. */
Test(engine, logit_bias_forces_and_bans_tokens)
{
    enum { GEN = 8 };
    static struct collector plain, forced, banned;
    collector_init(&plain);
    llm_engine *e = start(&plain, 4, 4);
    struct llm_request r = make_request(31, GEN, 0);
    uint64_t id;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&plain, 1);
    llm_engine_shutdown(e, 0);
    const struct result *base = &plain.results[0];

    int32_t target = 1000 + base->tokens[0] % 500;
    collector_init(&forced);
    e = start(&forced, 4, 4);
    r = make_request(31, GEN, 0);
    r.logit_bias = malloc(sizeof *r.logit_bias);
    r.logit_bias[0] = (struct llm_logit_bias){target, 100};
    r.n_logit_bias = 1;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&forced, 1);
    llm_engine_shutdown(e, 0);
    for (int i = 0; i < GEN; i++) cr_assert_eq(forced.results[0].tokens[i], target);

    collector_init(&banned);
    e = start(&banned, 4, 4);
    r = make_request(31, GEN, 0);
    r.logit_bias = malloc(sizeof *r.logit_bias * GEN);
    for (int i = 0; i < GEN; i++) r.logit_bias[i] = (struct llm_logit_bias){base->tokens[i], -100};
    r.n_logit_bias = GEN;
    cr_assert_eq(llm_engine_submit(e, &r, &id), 0);
    wait_done(&banned, 1);
    llm_engine_shutdown(e, 0);
    for (int i = 0; i < GEN; i++)
        for (int j = 0; j < GEN; j++)
            cr_assert_neq(banned.results[0].tokens[i], base->tokens[j], "a banned token came");

    r = make_request(31, GEN, 0); /* out of range: refused */
    r.logit_bias = malloc(sizeof *r.logit_bias);
    r.logit_bias[0] = (struct llm_logit_bias){0, 101};
    r.n_logit_bias = 1;
    collector_init(&banned);
    e = start(&banned, 4, 4);
    cr_assert_eq(llm_engine_submit(e, &r, &id), -EINVAL);
    llm_engine_shutdown(e, 0);
    free(r.prompt);
    free(r.logit_bias);
}

/*
 * engine.c: continuous batching.
 *
 * Requests wait in a bounded FIFO. Each step the engine thread
 *   1. applies cancellations and deadlines,
 *   2. admits waiting requests first come, first served while the running
 *      set has room and the KV pool can hold every running sequence at its
 *      full length (prompt + max_tokens), so a running sequence never runs
 *      out of pages: new requests wait instead. With the prefix cache, a
 *      new sequence first takes the pages of the longest prefix of its
 *      prompt that is cached (counted once, however many hold them), and
 *      one whose prompt starts like that of a sequence still prefilling
 *      waits for its pages rather than computing them a second time,
 *   3. builds one batch: a decode token for every sequence past its prompt,
 *      then prompt chunks (at most prefill_chunk tokens a sequence) in
 *      admission order until max_step_tokens,
 *   4. runs the forward pass, samples, and reports tokens and finishes,
 *      and publishes the pages it filled for later prompts to take.
 * Only the engine thread touches running sequences; the lock guards the
 * waiting queue, the cancel list and the counters read by llm_engine_stats.
 */
#include "core/llm.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct engine_seq {
    uint64_t id;
    struct llm_request req;
    attn_seq *kv;
    llm_sampler *sampler;
    llm_grammar_matcher *matcher; /* with a grammar */
    struct llm_detok detok;
    /* req.prompt holds the prompt, then the tokens sampled: the tokens of
     * the pages published */
    int n_tokens, cap_tokens;
    int n_fed;  /* prompt tokens in the KV cache so far */
    int cached; /* of them, taken from the prefix cache */
    int n_generated;
    int32_t next_token; /* the last sampled token, fed at the next decode step */
    char *held;         /* text held back: it may start a stop string */
    size_t held_len;
    int pages_needed; /* pages at full length (prompt + max_tokens) */
    double t_submit, t_scheduled, t_first_token;
    enum llm_finish finish; /* set when it must end this step */
};

struct llm_engine {
    llm_model *model;
    struct llm_engine_config config;
    llm_event_fn on_event;
    void *ctx;
    int vocab_size, page_size, pages_total;
    uint64_t salt; /* names this model's pages in the prefix cache */

    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    /* guarded by lock */
    struct engine_seq **waiting; /* ring of max_waiting */
    int wait_head, wait_count;
    uint64_t *cancels;
    int n_cancels, cap_cancels;
    uint64_t next_id;
    bool stopping;
    double stop_deadline;
    struct llm_engine_stats stats;

    /* engine thread only */
    struct engine_seq **running;
    int n_running;
    llm_workspace *ws;
    float *logits; /* (max_step_tokens, vocab) */
    struct llm_batch_item *items;
    struct engine_seq **item_seq;
    char *piece; /* one token's text */
    size_t piece_cap;
    llm_grammar_vocab *vocab; /* the vocabulary as grammars see it; built at the first grammar */
};

static const char *const finish_names[] = {"none",      "stop",    "length",
                                           "cancelled", "timeout", "error"};

const char *llm_finish_name(enum llm_finish reason)
{
    return (unsigned)reason <= LLM_FINISH_ERROR ? finish_names[reason] : "unknown";
}

void llm_engine_config_default(struct llm_engine_config *c)
{
    c->max_running = 32;
    c->max_waiting = 256;
    c->max_step_tokens = 512;
    c->prefill_chunk = 256;
    c->quest_budget = 0;
    c->prefix_cache = true;
}

void llm_request_init(struct llm_request *r)
{
    memset(r, 0, sizeof *r);
    r->max_tokens = 16;
    llm_sampling_default(&r->sampling);
    r->stop_at_eos = true;
    r->quest_budget = -1;
}

/* ------------------------------------------------------------- sequences */

static void request_release(struct llm_request *r)
{
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->logit_bias);
    llm_grammar_unref(r->grammar);
    r->grammar = NULL;
    r->prompt = NULL;
    r->n_stop = 0;
    r->logit_bias = NULL;
    r->n_logit_bias = 0;
}

static void seq_free(struct engine_seq *s)
{
    if (!s) return;
    request_release(&s->req);
    attn_seq_free(s->kv);
    llm_sampler_free(s->sampler);
    llm_grammar_matcher_free(s->matcher);
    free(s->held);
    free(s);
}

static void emit_done(llm_engine *e, struct engine_seq *s)
{
    double now = util_now();
    struct llm_event ev = {
        .type = LLM_EVENT_DONE,
        .id = s->id,
        .user = s->req.user,
        .finish = s->finish,
        .prompt_tokens = s->req.n_prompt,
        .cached_tokens = s->cached,
        .completion_tokens = s->n_generated,
        .queue_s = (s->t_scheduled > 0 ? s->t_scheduled : now) - s->t_submit,
        .first_token_s = s->t_first_token > 0 ? s->t_first_token - s->t_submit : 0,
        .total_s = now - s->t_submit,
    };
    e->on_event(&ev, e->ctx);
}

/* ---------------------------------------------------------------- submit */

int llm_engine_submit(llm_engine *e, struct llm_request *r, uint64_t *id)
{
    const struct llm_config *c = llm_model_config(e->model);
    if (r->n_prompt <= 0 || r->n_prompt >= c->ctx_len || r->max_tokens <= 0 || r->n_stop < 0 ||
        r->n_stop > LLM_MAX_STOP || r->n_logprobs < 0 || r->n_logprobs > LLM_MAX_LOGPROBS ||
        llm_sampling_validate(&r->sampling, NULL) != 0)
        return -EINVAL;
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= e->vocab_size) return -EINVAL;
    for (int i = 0; i < r->n_stop; i++)
        if (!r->stop[i] || !r->stop[i][0]) return -EINVAL;
    if (r->n_logit_bias < 0 || r->n_logit_bias > LLM_MAX_LOGIT_BIAS ||
        (r->n_logit_bias > 0 && !r->logit_bias))
        return -EINVAL;
    for (int i = 0; i < r->n_logit_bias; i++)
        if (r->logit_bias[i].token < 0 || r->logit_bias[i].token >= e->vocab_size ||
            !(fabsf(r->logit_bias[i].bias) <= 100))
            return -EINVAL;

    if (r->n_prompt >= e->pages_total * e->page_size) return -EINVAL;

    pthread_mutex_lock(&e->lock);
    if (e->stopping || e->wait_count == e->config.max_waiting) {
        int rc = e->stopping ? -ESHUTDOWN : -EAGAIN;
        pthread_mutex_unlock(&e->lock);
        return rc;
    }
    struct engine_seq *s = util_xcalloc(1, sizeof *s);
    s->id = ++e->next_id;
    s->req = *r;
    if (s->req.max_tokens > c->ctx_len - r->n_prompt) s->req.max_tokens = c->ctx_len - r->n_prompt;
    /* a sequence never needs more pages than the whole pool holds */
    int pool_tokens = e->pages_total * e->page_size;
    if (s->req.max_tokens > pool_tokens - r->n_prompt)
        s->req.max_tokens = pool_tokens - r->n_prompt;
    if (s->req.quest_budget < 0) s->req.quest_budget = e->config.quest_budget;
    s->pages_needed = (r->n_prompt + s->req.max_tokens + e->page_size - 1) / e->page_size;
    s->n_tokens = s->cap_tokens = r->n_prompt;
    s->t_submit = util_now();
    e->waiting[(e->wait_head + e->wait_count) % e->config.max_waiting] = s;
    e->wait_count++;
    e->stats.waiting = e->wait_count;
    *id = s->id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);

    /* the engine owns these now */
    r->prompt = NULL;
    r->n_stop = 0;
    r->logit_bias = NULL;
    r->n_logit_bias = 0;
    r->grammar = NULL;
    return 0;
}

void llm_engine_cancel(llm_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->lock);
    if (e->n_cancels == e->cap_cancels) {
        e->cap_cancels = e->cap_cancels ? 2 * e->cap_cancels : 16;
        e->cancels = util_xrealloc(e->cancels, sizeof(uint64_t) * (size_t)e->cap_cancels);
    }
    e->cancels[e->n_cancels++] = id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
}

void llm_engine_stats(llm_engine *e, struct llm_engine_stats *out)
{
    pthread_mutex_lock(&e->lock);
    *out = e->stats;
    pthread_mutex_unlock(&e->lock);
}

/* --------------------------------------------------------- the step loop */

/* Removes waiting sequences named in the cancel list (returned through
 * `dropped`) and marks running ones. Called with the lock held. */
static int apply_cancels_locked(llm_engine *e, struct engine_seq **dropped, int cap)
{
    int n_dropped = 0;
    for (int c = 0; c < e->n_cancels; c++) {
        uint64_t id = e->cancels[c];
        for (int i = 0; i < e->n_running; i++)
            if (e->running[i]->id == id && !e->running[i]->finish)
                e->running[i]->finish = LLM_FINISH_CANCELLED;
        for (int i = 0; i < e->wait_count && n_dropped < cap; i++) {
            int at = (e->wait_head + i) % e->config.max_waiting;
            if (e->waiting[at]->id != id) continue;
            dropped[n_dropped++] = e->waiting[at];
            for (int j = i; j + 1 < e->wait_count; j++)
                e->waiting[(e->wait_head + j) % e->config.max_waiting] =
                    e->waiting[(e->wait_head + j + 1) % e->config.max_waiting];
            e->wait_count--;
            break;
        }
    }
    e->n_cancels = 0;
    return n_dropped;
}

/* Pages the running sequences may still take from the pool before they end. */
static int pages_to_grow(const llm_engine *e)
{
    int sum = 0;
    for (int i = 0; i < e->n_running; i++)
        sum += e->running[i]->pages_needed - attn_seq_pages(e->running[i]->kv);
    return sum;
}

/* Whether a running sequence still prefilling a prompt that starts like
 * s's will publish pages s could take beyond the `cached` ones: then s
 * waits for them rather than computing the same pages again (n > 1
 * choices, clients sending one system prompt at once). */
static bool prefix_in_flight(const llm_engine *e, const struct engine_seq *s, int cached)
{
    int want = (cached + 1) * e->page_size; /* one page more than the cache has */
    if (want > s->req.n_prompt - 1) return false;
    for (int i = 0; i < e->n_running; i++) {
        const struct engine_seq *r = e->running[i];
        if (r->finish || r->n_fed >= r->req.n_prompt || r->req.n_prompt < want) continue;
        if (memcmp(r->req.prompt, s->req.prompt, sizeof(int32_t) * (size_t)want) == 0) return true;
    }
    return false;
}

/* The vocabulary as grammars see it: each token's output bytes. */
static const llm_grammar_vocab *grammar_vocab(llm_engine *e)
{
    if (e->vocab) return e->vocab;
    const llm_tokenizer *tok = llm_model_tokenizer(e->model);
    struct llm_grammar_token *tokens = util_xcalloc((size_t)e->vocab_size, sizeof *tokens);
    for (int32_t id = 0; id < e->vocab_size; id++) {
        bool loses_space;
        int len = llm_tokenizer_token_text(tok, id, &tokens[id].text, &loses_space);
        if (len < 0) continue; /* adds no text: never allowed (EOS aside) */
        tokens[id].len = len;
        tokens[id].space_first = loses_space;
    }
    e->vocab = llm_grammar_vocab_create(tokens, e->vocab_size, llm_tokenizer_eos(tok));
    UTIL_CHECK(e->vocab);
    free(tokens);
    return e->vocab;
}

/* Moves waiting sequences into the running set, FCFS. Lock held. */
static void admit_locked(llm_engine *e)
{
    attn_cache *kv = llm_model_kv_cache(e->model);
    int growth = pages_to_grow(e);
    while (e->wait_count > 0 && e->n_running < e->config.max_running) {
        struct engine_seq *s = e->waiting[e->wait_head];
        /* At least the prompt's last token is computed: its logits are the
         * first sample's. */
        int match = 0, idle = 0, n_match = s->req.n_prompt - 1;
        if (e->config.prefix_cache) {
            match = attn_cache_prefix_match(kv, s->req.prompt, n_match, e->salt, &idle);
            if (prefix_in_flight(e, s, match)) break;
        }
        /* taking idle cached pages takes them from the free count */
        int need = s->pages_needed - match;
        if (growth + need + idle > attn_cache_pages_free(kv)) break; /* waits for pages */
        e->wait_head = (e->wait_head + 1) % e->config.max_waiting;
        e->wait_count--;
        growth += need;
        s->kv = attn_seq_create(kv);
        if (match > 0) {
            UTIL_CHECK(attn_seq_adopt_prefix(s->kv, s->req.prompt, n_match, e->salt) == match);
            s->n_fed = s->cached = match * e->page_size;
        }
        e->stats.prompt_tokens += s->req.n_prompt;
        e->stats.cached_tokens += s->cached;
        s->sampler = llm_sampler_create(&s->req.sampling, e->vocab_size);
        if (s->req.grammar) s->matcher = llm_grammar_matcher_create(s->req.grammar, grammar_vocab(e));
        for (int i = 0; i < s->req.n_prompt; i++) llm_sampler_accept(s->sampler, s->req.prompt[i]);
        llm_detok_init(&s->detok);
        s->t_scheduled = util_now();
        e->running[e->n_running++] = s;
    }
}

/* Appends text to the held-back buffer. */
static void hold_text(struct engine_seq *s, const char *text, size_t len)
{
    s->held = util_xrealloc(s->held, s->held_len + len + 1);
    memcpy(s->held + s->held_len, text, len);
    s->held_len += len;
    s->held[s->held_len] = 0;
}

/* Length of the longest suffix of s->held that is a proper prefix of a stop
 * string: that much must stay held. */
static size_t stop_prefix_suffix(const struct engine_seq *s)
{
    size_t keep = 0;
    for (int i = 0; i < s->req.n_stop; i++) {
        size_t n = strlen(s->req.stop[i]);
        for (size_t k = n - 1 < s->held_len ? n - 1 : s->held_len; k > keep; k--)
            if (memcmp(s->held + s->held_len - k, s->req.stop[i], k) == 0) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Earliest match of a stop string in held, or -1. */
static long find_stop(const struct engine_seq *s)
{
    long best = -1;
    if (!s->held) return -1; /* nothing generated as text yet (e.g. EOS first) */
    for (int i = 0; i < s->req.n_stop; i++) {
        const char *at = memmem(s->held, s->held_len, s->req.stop[i], strlen(s->req.stop[i]));
        if (at && (best < 0 || at - s->held < best)) best = at - s->held;
    }
    return best;
}

/* Samples the next token of s from its logits row (changed in place: the
 * request's biases first) and reports it. Log-probabilities are those of
 * the distribution sampled from. */
static void take_token(llm_engine *e, struct engine_seq *s, float *logits)
{
    const llm_tokenizer *tok = llm_model_tokenizer(e->model);
    for (int i = 0; i < s->req.n_logit_bias; i++)
        logits[s->req.logit_bias[i].token] += s->req.logit_bias[i].bias;
    if (s->matcher && llm_grammar_matcher_mask_logits(s->matcher, logits) == 0) {
        /* no token can go on (a vocabulary that cannot spell a byte the
         * grammar needs, or a grammar too ambiguous to follow) */
        LOG_WARN("request %llu: the grammar allows no token; ending it",
                 (unsigned long long)s->id);
        s->finish = LLM_FINISH_ERROR;
        return;
    }
    struct llm_logprob top[LLM_MAX_LOGPROBS];
    int n_top = 0;
    if (s->req.n_logprobs > 0) {
        int32_t ids[LLM_MAX_LOGPROBS];
        float lps[LLM_MAX_LOGPROBS];
        int n = llm_top_logprobs(logits, e->vocab_size, s->req.n_logprobs, ids, lps);
        for (int i = 0; i < n; i++) /* masked tokens are not alternatives */
            if (isfinite(lps[i])) top[n_top++] = (struct llm_logprob){ids[i], lps[i]};
    }
    float logprob = 0;
    int32_t token = llm_sampler_sample(s->sampler, logits, s->req.logprobs ? &logprob : NULL);
    llm_sampler_accept(s->sampler, token);
    s->n_generated++;
    s->next_token = token;
    if (s->n_tokens == s->cap_tokens) {
        s->cap_tokens = 2 * s->cap_tokens + 16;
        s->req.prompt = util_xrealloc(s->req.prompt, sizeof(int32_t) * (size_t)s->cap_tokens);
    }
    s->req.prompt[s->n_tokens++] = token;
    double now = util_now();
    if (s->t_first_token == 0) s->t_first_token = now;

    bool eos = (s->req.stop_at_eos || s->matcher) && token == llm_tokenizer_eos(tok);
    if (s->matcher) UTIL_CHECK(llm_grammar_matcher_accept(s->matcher, token) == 0); /* the mask allowed it */
    if (!eos) {
        int n = llm_detok_push(tok, &s->detok, token, e->piece, e->piece_cap);
        UTIL_CHECK(n >= 0); /* the token is in range and piece_cap always suffices */
        hold_text(s, e->piece, (size_t)n);
    }
    size_t release;
    long stop_at = find_stop(s);
    if (stop_at >= 0) {
        s->finish = LLM_FINISH_STOP;
        release = (size_t)stop_at;
    } else {
        if (eos || (s->matcher && llm_grammar_matcher_finished(s->matcher))) /* complete */
            s->finish = LLM_FINISH_STOP;
        else if (s->n_generated >= s->req.max_tokens)
            s->finish = LLM_FINISH_LENGTH;
        else if (s->req.deadline > 0 && now > s->req.deadline)
            s->finish = LLM_FINISH_TIMEOUT;
        if (s->finish) {
            char tail[16];
            int n = llm_detok_flush(&s->detok, tail, sizeof tail);
            if (n > 0) hold_text(s, tail, (size_t)n);
            release = s->held_len;
        } else {
            release = s->held_len - stop_prefix_suffix(s);
        }
    }
    struct llm_event ev = {
        .type = LLM_EVENT_TOKEN,
        .id = s->id,
        .user = s->req.user,
        .token = token,
        .text = s->held ? s->held : "",
        .text_len = (int)release,
        .logprob = logprob,
        .top = top,
        .n_top = n_top,
    };
    e->on_event(&ev, e->ctx);
    if (s->held) {
        memmove(s->held, s->held + release, s->held_len - release);
        s->held_len -= release;
        s->held[s->held_len] = 0;
    }
}

/* Builds the step's batch; returns the number of items. */
static int build_batch(llm_engine *e)
{
    int n = 0, budget = e->config.max_step_tokens;
    for (int i = 0; i < e->n_running && budget > 0; i++) { /* decodes first: one token each */
        struct engine_seq *s = e->running[i];
        if (s->finish || s->n_fed < s->req.n_prompt) continue;
        e->items[n] = (struct llm_batch_item){.kv = s->kv,
                                              .tokens = &s->next_token,
                                              .n_tokens = 1,
                                              .quest_budget = s->req.quest_budget};
        e->item_seq[n++] = s;
        budget--;
    }
    for (int i = 0; i < e->n_running && budget > 0; i++) { /* then prompt chunks */
        struct engine_seq *s = e->running[i];
        if (s->finish || s->n_fed >= s->req.n_prompt) continue;
        int chunk = s->req.n_prompt - s->n_fed;
        if (chunk > e->config.prefill_chunk) chunk = e->config.prefill_chunk;
        if (chunk > budget) chunk = budget;
        /* Prefill is dense (Quest is a decode method), also for a chunk of
         * one token, which attention could not tell from a decode step. */
        e->items[n] = (struct llm_batch_item){
            .kv = s->kv, .tokens = s->req.prompt + s->n_fed, .n_tokens = chunk, .quest_budget = 0};
        e->item_seq[n++] = s;
        budget -= chunk;
    }
    return n;
}

static void run_step(llm_engine *e, struct attn_stats *stats)
{
    int n = build_batch(e);
    if (n == 0) return;
    int rc = llm_forward(e->model, e->ws, e->items, n, e->logits, stats);
    if (rc) { /* cannot happen with admission by promised pages; fail safe */
        LOG_ERROR("forward pass failed: %s", util_strerror(rc));
        for (int i = 0; i < n; i++) e->item_seq[i]->finish = LLM_FINISH_ERROR;
        return;
    }
    for (int i = 0; i < n; i++) {
        struct engine_seq *s = e->item_seq[i];
        bool decoding = s->n_fed >= s->req.n_prompt;
        if (!decoding) s->n_fed += e->items[i].n_tokens;
        if (e->config.prefix_cache) attn_seq_publish(s->kv, s->req.prompt, s->n_tokens, e->salt);
        if (s->n_fed >= s->req.n_prompt && !s->finish)
            take_token(e, s, e->logits + (size_t)i * e->vocab_size);
    }
}

/* Ends finished sequences: DONE events, pages back to the pool. */
static void retire_finished(llm_engine *e)
{
    int kept = 0;
    for (int i = 0; i < e->n_running; i++) {
        struct engine_seq *s = e->running[i];
        if (!s->finish && s->req.deadline > 0 && util_now() > s->req.deadline)
            s->finish = LLM_FINISH_TIMEOUT;
        if (!s->finish) {
            e->running[kept++] = s;
            continue;
        }
        attn_seq_free(s->kv);
        s->kv = NULL;
        emit_done(e, s);
        seq_free(s);
    }
    e->n_running = kept;
}

static void publish_stats_locked(llm_engine *e, const struct attn_stats *quest)
{
    attn_cache *kv = llm_model_kv_cache(e->model);
    e->stats.running = e->n_running;
    e->stats.waiting = e->wait_count;
    e->stats.kv_pages_total = attn_cache_pages_total(kv);
    e->stats.kv_pages_used = e->stats.kv_pages_total - attn_cache_pages_free(kv);
    /* Only sparse decode steps: prefill, dense layers and sequences within
     * their budget would dilute the fraction the page selection reads. */
    e->stats.quest_pages_read += quest->sparse_pages_read;
    e->stats.quest_pages_total += quest->sparse_pages_total;
    struct attn_prefix_stats prefix;
    attn_cache_prefix_stats(kv, &prefix);
    e->stats.kv_pages_cached = prefix.pages_cached;
    e->stats.kv_pages_shared = prefix.pages_shared;
    e->stats.kv_pages_evicted = prefix.evictions;
}

static void *engine_main(void *arg)
{
    llm_engine *e = arg;
    struct engine_seq *dropped[64];
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->stopping && e->n_running == 0 && e->wait_count == 0 && e->n_cancels == 0)
            pthread_cond_wait(&e->wake, &e->lock);
        int n_dropped = apply_cancels_locked(e, dropped, 64);
        bool grace_over = e->stopping && util_now() > e->stop_deadline;
        if (grace_over) { /* everything left ends now */
            for (int i = 0; i < e->n_running; i++)
                if (!e->running[i]->finish) e->running[i]->finish = LLM_FINISH_CANCELLED;
            while (e->wait_count > 0 && n_dropped < 64) {
                dropped[n_dropped++] = e->waiting[e->wait_head];
                e->wait_head = (e->wait_head + 1) % e->config.max_waiting;
                e->wait_count--;
            }
        } else {
            admit_locked(e);
        }
        bool done = e->stopping && e->n_running == 0 && e->wait_count == 0 && n_dropped == 0;
        pthread_mutex_unlock(&e->lock);

        for (int i = 0; i < n_dropped; i++) {
            dropped[i]->finish = LLM_FINISH_CANCELLED;
            emit_done(e, dropped[i]);
            seq_free(dropped[i]);
        }
        if (done) break;

        struct attn_stats quest = {0};
        run_step(e, &quest);
        retire_finished(e);

        pthread_mutex_lock(&e->lock);
        e->stats.steps++;
        publish_stats_locked(e, &quest);
        pthread_mutex_unlock(&e->lock);
    }
    return NULL;
}

/* --------------------------------------------------------------- life */

/* What a page's K/V depend on besides its tokens: the model, its precision
 * and the KV type (the pool is the model's own, so this guards against a
 * pool ever outliving or serving another configuration). */
static uint64_t cache_salt(llm_model *model)
{
    const struct llm_config *c = llm_model_config(model);
    const struct attn_cache_config *kc = attn_cache_config(llm_model_kv_cache(model));
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    const char *name = llm_model_name(model);
    for (const char *p = name ? name : ""; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    int64_t fields[] = {c->n_layers, c->dim,        c->ffn_dim, c->n_heads,
                        c->n_kv_heads, c->vocab_size, c->ctx_len, llm_model_precision(model),
                        kc->kv_type,  kc->page_size};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        h = (h ^ (uint64_t)fields[i]) * 1099511628211ull;
    return h;
}

int llm_engine_create(llm_model *model, const struct llm_engine_config *config,
                      llm_event_fn on_event, void *ctx, llm_engine **out)
{
    *out = NULL;
    if (config->max_running <= 0 || config->max_waiting <= 0 || config->max_step_tokens <= 0 ||
        config->prefill_chunk <= 0 || config->quest_budget < 0 || !on_event)
        return -EINVAL;
    const struct llm_config *c = llm_model_config(model);
    attn_cache *kv = llm_model_kv_cache(model);
    llm_engine *e = util_xcalloc(1, sizeof *e);
    e->model = model;
    e->config = *config;
    if (e->config.max_step_tokens < e->config.max_running)
        e->config.max_step_tokens = e->config.max_running;
    e->on_event = on_event;
    e->ctx = ctx;
    e->vocab_size = c->vocab_size;
    e->page_size = attn_cache_config(kv)->page_size;
    e->pages_total = attn_cache_pages_total(kv);
    e->salt = cache_salt(model);
    if (e->pages_total * e->page_size < c->ctx_len)
        LOG_WARN("KV pool holds %d tokens, less than the context (%d): longer prompts are refused "
                 "and max_tokens is cut to fit",
                 e->pages_total * e->page_size, c->ctx_len);
    e->waiting = util_xcalloc((size_t)config->max_waiting, sizeof *e->waiting);
    e->running = util_xcalloc((size_t)config->max_running, sizeof *e->running);
    int max_items = e->config.max_running;
    e->items = util_xcalloc((size_t)max_items, sizeof *e->items);
    e->item_seq = util_xcalloc((size_t)max_items, sizeof *e->item_seq);
    e->ws = llm_workspace_create(model, e->config.max_step_tokens);
    e->logits = util_aligned_alloc(sizeof(float) * (size_t)max_items * (size_t)e->vocab_size);
    e->stats.kv_pages_total = e->pages_total;
    e->piece_cap = llm_tokenizer_max_piece_len(llm_model_tokenizer(model)) + 12;
    e->piece = util_xmalloc(e->piece_cap);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    int rc = pthread_create(&e->thread, NULL, engine_main, e);
    if (rc) {
        llm_workspace_free(e->ws);
        free(e);
        return -rc;
    }
    *out = e;
    return 0;
}

void llm_engine_shutdown(llm_engine *e, double grace_s)
{
    if (!e) return;
    pthread_mutex_lock(&e->lock);
    e->stopping = true;
    e->stop_deadline = util_now() + (grace_s > 0 ? grace_s : 0);
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);

    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->wake);
    llm_workspace_free(e->ws);
    util_aligned_free(e->logits);
    free(e->items);
    free(e->item_seq);
    free(e->waiting);
    free(e->running);
    free(e->cancels);
    free(e->piece);
    llm_grammar_vocab_free(e->vocab);
    free(e);
}

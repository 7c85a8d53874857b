/*
 * engine: the batching engine. It owns the running sequences of one model and
 * steps them together (continuous batching): each step admits waiting
 * requests first come, first served under a limit on running sequences and
 * on tokens per step, prefills long prompts in chunks, runs one batched
 * forward pass for all of them, samples, and reports every token as an event.
 *
 * Threads: llm_engine_submit/cancel/stats may be called from any thread. The
 * engine runs on its own thread; the event callback is called on that thread
 * and must not block (copy the event and hand it over, e.g. with
 * uv_async_send). After the final event of a request (LLM_EVENT_DONE) the
 * engine never mentions its id again.
 */
#ifndef LLMD_CORE_ENGINE_H
#define LLMD_CORE_ENGINE_H

#include "core/model.h"
#include "core/sampler.h"
#include "core/grammar.h"

#include <stdbool.h>
#include <stdint.h>

#define LLM_MAX_STOP       8
#define LLM_MAX_LOGPROBS   20
#define LLM_MAX_LOGIT_BIAS 1024

enum llm_finish {
    LLM_FINISH_NONE,
    LLM_FINISH_STOP,
    LLM_FINISH_LENGTH,
    LLM_FINISH_CANCELLED,
    LLM_FINISH_TIMEOUT,
    LLM_FINISH_ERROR
};
const char *llm_finish_name(enum llm_finish reason); /* "stop", "length", ... */

/* Added to a token's logit before sampling (OpenAI's logit_bias: -100
 * bans a token, +100 all but forces it). */
struct llm_logit_bias {
    int32_t token;
    float bias; /* -100..100 */
};

struct llm_request {
    int32_t *prompt; /* token ids, BOS included if wanted; the engine takes ownership */
    int n_prompt;
    int max_tokens; /* generated tokens at most (> 0) */
    struct llm_sampling sampling;
    char *stop[LLM_MAX_STOP]; /* stop strings (owned by the engine after submit) */
    int n_stop;
    struct llm_logit_bias *logit_bias; /* owned by the engine after submit; may be NULL */
    int n_logit_bias;                  /* <= LLM_MAX_LOGIT_BIAS */
    llm_grammar *grammar; /* the output must be a sentence of it (structured
                              outputs); the engine takes this reference; NULL = none */
    bool stop_at_eos; /* end at the EOS token (default true; with a grammar, EOS
                         always ends: it is allowed only where the output is complete) */
    bool logprobs;    /* report each token's log-probability (a softmax over the
                         vocabulary: only when asked for) */
    int n_logprobs;   /* 0 = none; else the top alternatives per token (<= 20) */
    int quest_budget; /* -1 = the engine's default; 0 = dense; else tokens */
    double deadline;  /* util_now() time after which it ends with TIMEOUT; 0 = none */
    void *user;       /* passed back in every event */
};

/* max_tokens 16, greedy sampling, stop at EOS, the engine's Quest budget. */
void llm_request_init(struct llm_request *request);

enum llm_event_type { LLM_EVENT_TOKEN, LLM_EVENT_DONE };

struct llm_logprob {
    int32_t token;
    float logprob;
};

struct llm_event {
    enum llm_event_type type;
    uint64_t id; /* from llm_engine_submit */
    void *user;
    /* TOKEN: the sampled token, its text (complete UTF-8 only; bytes of a
     * character split over tokens come with the token that completes it, and
     * text that may be the start of a stop string is held back until it is
     * known not to be), its log-probability and the top alternatives. Every
     * sampled token gets one TOKEN event, the EOS token too (its own text is
     * empty); the last one carries all text still held back, cut before a
     * stop string that matched (the stop string itself is never sent). */
    int32_t token;
    const char *text; /* valid during the callback only */
    int text_len;
    float logprob; /* 0 unless the request asked for logprobs */
    const struct llm_logprob *top;
    int n_top;
    /* DONE: why it ended and what it used. */
    enum llm_finish finish;
    int prompt_tokens;
    int cached_tokens; /* prompt tokens whose KV came from the prefix cache */
    int completion_tokens;
    double queue_s;       /* submit to first scheduled */
    double first_token_s; /* submit to first token */
    double total_s;       /* submit to done */
};

typedef void (*llm_event_fn)(const struct llm_event *event, void *ctx);

struct llm_engine_config {
    int max_running;     /* sequences decoding at once */
    int max_waiting;     /* bounded waiting queue; submit returns -EAGAIN when full */
    int max_step_tokens; /* tokens per forward step (prefill chunks included) */
    int prefill_chunk;   /* prompt tokens a sequence prefills per step at most */
    int quest_budget;    /* default per-request budget (0 = dense) */
    bool prefix_cache;   /* share the KV pages of prompts' common prefixes */
};
void llm_engine_config_default(struct llm_engine_config *config);

struct llm_engine_stats {
    int running;
    int waiting;
    int kv_pages_used;
    int kv_pages_total;
    int64_t steps;
    /* Sparse decode steps only (Quest or window, past the dense layers, on
     * sequences with more pages than their budget): page reads made, and
     * the reads dense attention would have made in those same steps. */
    int64_t quest_pages_read;
    int64_t quest_pages_total;
    /* Prefix cache: prompt tokens admitted, and those taken from the cache;
     * the pool's published pages, those shared by several sequences, and
     * idle published pages given out again. */
    int64_t prompt_tokens;
    int64_t cached_tokens;
    int kv_pages_cached;
    int kv_pages_shared;
    int64_t kv_pages_evicted;
};

typedef struct llm_engine llm_engine;

/* Creates the engine over a loaded model (not owned) and starts its thread.
 * `on_event` is called on the engine thread for every event. */
int llm_engine_create(llm_model *model, const struct llm_engine_config *config,
                      llm_event_fn on_event, void *ctx, llm_engine **out);

/* Queues a request. On success the engine owns the request's prompt and stop
 * strings, and *id names it in events; the struct itself may be reused.
 * Returns -EAGAIN when the waiting queue is full, -ESHUTDOWN once shutdown
 * began, -EINVAL for a request that
 * can never run (empty or too long prompt for the context, bad parameters);
 * the caller keeps ownership then. */
int llm_engine_submit(llm_engine *engine, struct llm_request *request, uint64_t *id);

/* Ends a request (its client left): it stops within one step, its KV pages
 * are freed, and a DONE event with LLM_FINISH_CANCELLED follows. Unknown or
 * finished ids are ignored. */
void llm_engine_cancel(llm_engine *engine, uint64_t id);

void llm_engine_stats(llm_engine *engine, struct llm_engine_stats *out);

/* Stops the engine: no new requests; running and waiting ones go on until
 * they finish or `grace_s` passes, then the rest end with CANCELLED. Joins
 * the thread and frees the engine. Every accepted request gets its DONE. */
void llm_engine_shutdown(llm_engine *engine, double grace_s);

#endif

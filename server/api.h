/*
 * api: the OpenAI-compatible HTTP API without the HTTP. Everything here is a
 * pure function of its arguments (no sockets, no engine, no globals), so it
 * is unit-tested table-driven: request bodies are validated into plain C
 * structs or an OpenAI-shaped error, results become response JSON and SSE
 * frames, chat messages become a prompt, and the bearer key and the CORS
 * origin are checked.
 *
 * Ownership: a parsed request owns all its strings and arrays
 * (srv_completion_request_free); JSON builders return new references.
 */
#ifndef LLMD_SERVER_API_H
#define LLMD_SERVER_API_H

#include "core/engine.h"
#include "core/tokenizer.h"
#include "server/buf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* --------------------------------------------------------------- errors */

/* An error answer: {"error":{"message","type","param","code"}}. */
struct srv_error {
    int status;       /* HTTP status */
    const char *type; /* static: "invalid_request_error", "server_error", ... */
    const char *code; /* static or NULL */
    char param[64];   /* the offending parameter; "" = null */
    char message[320];
};

void srv_error_set(struct srv_error *e, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* 400 invalid_request_error naming `param`. Returns -EINVAL for chaining. */
int srv_bad_param(struct srv_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
json_t *srv_error_json(const struct srv_error *e);

/* ------------------------------------------------------------- requests */

enum srv_api { SRV_API_COMPLETIONS, SRV_API_CHAT };

#define SRV_MAX_N        16 /* choices per prompt */
#define SRV_MAX_PROMPTS  16 /* prompts in one completions request */
#define SRV_MAX_CHOICES  64 /* prompts x n */
#define SRV_MAX_STOP_LEN 256

/* One completions prompt: text to tokenize, or token ids to use as given. */
struct srv_prompt {
    char *text; /* NULL when ids */
    size_t text_len;
    int32_t *ids;
    int n_ids;
};

struct srv_message {
    char *role;    /* system, developer, user, assistant, tool */
    char *content; /* text parts joined */
};

struct srv_completion_request {
    enum srv_api api;
    char *model;                /* as given; NULL when absent */
    struct srv_prompt *prompts; /* completions */
    int n_prompts;
    struct srv_message *messages; /* chat */
    int n_messages;
    int max_tokens; /* 0 = not given */
    int n;
    struct llm_sampling sampling; /* OpenAI's defaults where not given */
    bool has_seed;
    char *stop[LLM_MAX_STOP];
    int n_stop;
    bool ignore_eos;  /* vLLM's extension: generate max_tokens regardless of EOS */
    bool logprobs;    /* per-token log-probabilities wanted */
    int top_logprobs; /* alternatives per token (0..LLM_MAX_LOGPROBS) */
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    int quest_budget;   /* quest.token_budget; -1 = the server's default */
    struct llm_logit_bias *logit_bias; /* token id -> bias */
    int n_logit_bias;
    llm_grammar *grammar; /* response_format json_object/json_schema, or grammar (GBNF) */
};

/* What validation needs to know about the served model. */
struct srv_model_limits {
    const char *model_name; /* requests naming another model get 404 */
    int vocab_size;         /* token ids must be below it */
    int ctx_len;            /* prompts must be shorter */
};

/* Validates a completions or chat body into *out. On failure returns
 * -EINVAL with *err set (400 naming the parameter, or 404 for an unknown
 * model) and *out freed. Unknown fields are ignored, as OpenAI clients send
 * many; known fields of the wrong type or out of range are errors, and so
 * are features that are not supported (echo, best_of > 1, suffix,
 * tools), rather than being
 * silently dropped. */
int srv_parse_completion(const json_t *body, enum srv_api api, const struct srv_model_limits *lim,
                         struct srv_completion_request *out, struct srv_error *err);
void srv_completion_request_free(struct srv_completion_request *r);

/* Decides the generation limit once the prompt is tokenized: an empty
 * prompt, a prompt that fills the context, or max_tokens beyond what the
 * context leaves is a 400. Without max_tokens: 16 for completions (as
 * OpenAI), the rest of the context for chat. */
int srv_resolve_max_tokens(const struct srv_completion_request *r, int n_prompt, int ctx_len,
                           int *max_tokens, struct srv_error *err);

/* Refuses, before tokenizing, text that cannot fit the context: no token
 * covers more than max_piece_len bytes, so `bytes` of text make at least
 * bytes / max_piece_len tokens. This bounds the tokenizing the loop thread
 * does for one prompt to about ctx_len x max_piece_len bytes, whatever the
 * body size. 0 or -EINVAL with a 400 naming `param`. */
int srv_check_prompt_bytes(size_t bytes, size_t max_piece_len, int ctx_len, const char *param,
                           struct srv_error *err);

/* POST /tokenize: {"prompt": text} or {"messages": [...]} (rendered with
 * the chat template), "add_special_tokens" (default true). */
struct srv_tokenize_request {
    char *prompt;
    size_t prompt_len;
    struct srv_message *messages;
    int n_messages;
    bool add_special;
};
int srv_parse_tokenize(const json_t *body, const struct srv_model_limits *lim,
                       struct srv_tokenize_request *out, struct srv_error *err);
void srv_tokenize_request_free(struct srv_tokenize_request *r);

/* POST /detokenize: {"tokens": [ids]}. *ids is the caller's to free. */
int srv_parse_detokenize(const json_t *body, const struct srv_model_limits *lim, int32_t **ids,
                         int *n_ids, struct srv_error *err);

/* -------------------------------------------------------- chat templates */

/* Chat formats rendered natively. A GGUF's Jinja template is recognised by
 * its markers (as llama.cpp does); one that is not recognised falls back to
 * the built-in format:
 *
 *     {system}\n\n            (when there is a system message)
 *     User: {user}\n
 *     Assistant: {assistant}\n
 *     ...
 *     Assistant:
 *
 * Control tokens between turns (<s>, </s>, <|begin_of_text|>) are left out
 * of the text: the tokenizer adds BOS itself. */
enum srv_chat_format {
    SRV_CHAT_BUILTIN,
    SRV_CHAT_CHATML,
    SRV_CHAT_LLAMA2,
    SRV_CHAT_LLAMA3,
    SRV_CHAT_ZEPHYR,
    SRV_CHAT_GEMMA,
};
/* The format of a GGUF chat template (NULL = none). *recognized is false
 * when there was a template but it is not one of ours. */
enum srv_chat_format srv_chat_detect(const char *gguf_template, bool *recognized);
const char *srv_chat_format_name(enum srv_chat_format f);
/* Renders the conversation and the opening of the assistant's turn. The
 * caller frees the result. */
char *srv_chat_render(enum srv_chat_format f, const struct srv_message *messages, int n);
/* The text that ends an assistant turn in this format; the server adds it
 * to the stop strings so that the model does not speak for the user. */
const char *srv_chat_turn_end(enum srv_chat_format f);

/* ------------------------------------------------------------ responses */

/* One token's log-probability and its alternatives. */
struct srv_token_logprob {
    int32_t token;
    float logprob;
    int text_offset; /* where the token's text starts in the choice */
    int n_top;
    struct llm_logprob top[LLM_MAX_LOGPROBS];
};

/* What one choice produced. */
struct srv_choice_result {
    int index;
    struct srv_buf text;
    struct srv_token_logprob *logprobs;
    int n_logprobs;
    int cap_logprobs;
    int logprob_text_len; /* the tokens' text so far, for text_offset */
    enum llm_finish finish;
    int completion_tokens;
};

/* Appends a token's log-probability entry to a choice. */
void srv_choice_add_logprob(struct srv_choice_result *c, const llm_tokenizer *tok, int32_t token,
                            float logprob, const struct llm_logprob *top, int n_top);
void srv_choice_result_free(struct srv_choice_result *c);

/* The fields every response and chunk of one request share. */
struct srv_response_meta {
    enum srv_api api;
    const char *id;  /* "cmpl-..." or "chatcmpl-..." */
    int64_t created; /* Unix seconds */
    const char *model;
    bool logprobs;            /* include logprobs objects (else null) */
    const llm_tokenizer *tok; /* for token strings in logprobs */
};

/* "stop" or "length" as OpenAI reports them, or what else ended the
 * choice: "timeout" (request_timeout_s), "cancelled", "error"; NULL while
 * it goes on. */
const char *srv_finish_reason(enum llm_finish f);

/* The complete non-streamed response; `cached_tokens` of the prompt tokens
 * came from the prefix cache (usage.prompt_tokens_details). */
json_t *srv_response_json(const struct srv_response_meta *meta,
                          const struct srv_choice_result *choices, int n_choices,
                          int prompt_tokens, int cached_tokens);
/* A streamed chunk for one choice: `text` (may be empty), the log-probs of
 * the tokens it covers, `finish` (LLM_FINISH_NONE while going on), and for
 * chat the role delta that opens a choice. `usage_null` adds "usage": null
 * (when stream_options.include_usage is set). */
json_t *srv_chunk_json(const struct srv_response_meta *meta, int index, const char *text,
                       size_t text_len, const struct srv_token_logprob *lps, int n_lps,
                       enum llm_finish finish, bool role_delta, bool usage_null);
/* The last chunk of include_usage: no choices, the usage totals. */
json_t *srv_usage_chunk_json(const struct srv_response_meta *meta, int prompt_tokens,
                             int cached_tokens, int completion_tokens);
json_t *srv_usage_json(int prompt_tokens, int cached_tokens, int completion_tokens);

/* ---------------------------------------------------------------- text */

/* Appends `len` bytes as valid UTF-8: each invalid byte becomes U+FFFD.
 * JSON strings must be valid UTF-8 and model output need not be. */
void srv_utf8_sanitize(struct srv_buf *out, const char *s, size_t len);
/* A JSON string of arbitrary bytes (sanitized). */
json_t *srv_json_text(const char *s, size_t len);
/* The bytes a token stands for: its piece with U+2581 as a space, and a
 * byte piece <0xNN> as that byte. Returns the length (0 for an unknown id
 * or a control token). */
size_t srv_token_bytes(const llm_tokenizer *tok, int32_t id, char *out, size_t cap);
/* A token as OpenAI's logprobs show it: its bytes when they are valid
 * UTF-8, else "bytes:\xNN..." */
void srv_token_display(const llm_tokenizer *tok, int32_t id, struct srv_buf *out);

/* ------------------------------------------------------------------ SSE */

/* How response JSON is written: compact, and reals (log-probabilities are
 * floats) with the 9 digits that round-trip a float, not 17. */
#define SRV_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))

/* Appends "data: {compact json}\n\n". */
void srv_sse_append_json(struct srv_buf *out, const json_t *data);
/* Appends "data: [DONE]\n\n". */
void srv_sse_append_done(struct srv_buf *out);

/* --------------------------------------------------------- auth and CORS */

/* Compares two byte strings in time that depends only on the length of `a`
 * (the client's), not on where they differ or on `b`. */
bool srv_ct_equal(const char *a, size_t a_len, const char *b, size_t b_len);
/* True when an `Authorization: Bearer <key>` header value carries one of
 * the keys. Every key is compared, so timing does not tell which matched. */
bool srv_auth_bearer_ok(const char *authorization, char *const *keys, int n_keys);
/* The Access-Control-Allow-Origin value for a request's Origin, or NULL when
 * the origin is not allowed (or CORS is off: n_allowed == 0). */
const char *srv_cors_allow_origin(const char *origin, char *const *allowed, int n_allowed);

#endif

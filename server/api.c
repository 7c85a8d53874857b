/*
 * api.c: request validation, response JSON, SSE framing, auth and CORS for
 * the OpenAI-compatible API. Pure functions; see api.h.
 */
#include "server/api.h"

#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* --------------------------------------------------------------- errors */

static void error_vset(struct srv_error *e, int status, const char *type, const char *code,
                       const char *param, const char *fmt, va_list ap)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    vsnprintf(e->message, sizeof e->message, fmt, ap);
}

void srv_error_set(struct srv_error *e, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(e, status, type, code, param, fmt, ap);
    va_end(ap);
}

int srv_bad_param(struct srv_error *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(e, 400, "invalid_request_error", NULL, param, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* 400 with OpenAI's code for a prompt (plus completion) longer than the
 * model's context, so that clients can tell it from other bad input. */
static int context_exceeded(struct srv_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int context_exceeded(struct srv_error *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(e, 400, "invalid_request_error", "context_length_exceeded", param, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

json_t *srv_error_json(const struct srv_error *e)
{
    json_t *inner = json_object();
    json_object_set_new(inner, "message", srv_json_text(e->message, strlen(e->message)));
    json_object_set_new(inner, "type", json_string(e->type));
    json_object_set_new(inner, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->code ? json_string(e->code) : json_null());
    return json_pack("{s:o}", "error", inner);
}

/* ------------------------------------------------------- field getters */

/* Each getter returns 1 when the field is present (and not null) and
 * valid, 0 when absent or null, -EINVAL with *err set otherwise. */

static int get_int(const json_t *obj, const char *key, const char *param, long long min,
                   long long max, long long *out, struct srv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return srv_bad_param(err, param, "'%s' must be an integer", param);
    }
    if (x < min || x > max)
        return srv_bad_param(err, param, "'%s' must be between %lld and %lld, got %lld", param, min,
                             max, x);
    *out = x;
    return 1;
}

/* A number in [min, max], or (min, max] when min_open. */
static int get_number(const json_t *obj, const char *key, double min, double max, bool min_open,
                      double *out, struct srv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return srv_bad_param(err, key, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (x > max || x < min || (min_open && x == min))
        return srv_bad_param(err, key, "'%s' must be in %s%g, %g], got %g", key,
                             min_open ? "(" : "[", min, max, x);
    *out = x;
    return 1;
}

static int get_bool(const json_t *obj, const char *key, const char *param, bool *out,
                    struct srv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return srv_bad_param(err, param, "'%s' must be a boolean", param);
    *out = json_is_true(v);
    return 1;
}

static int get_string(const json_t *obj, const char *key, const char **out, size_t *len,
                      struct srv_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return srv_bad_param(err, key, "'%s' must be a string", key);
    *out = json_string_value(v);
    if (len) *len = json_string_length(v);
    return 1;
}

static char *dup_bytes(const char *s, size_t len)
{
    char *out = util_xmalloc(len + 1);
    memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

/* --------------------------------------------------- prompts and messages */

static int parse_token_ids(const json_t *arr, const char *param, const struct srv_model_limits *lim,
                           int32_t **ids_out, int *n_out, struct srv_error *err)
{
    size_t n = json_array_size(arr);
    if (n == 0) return srv_bad_param(err, param, "'%s' must not be empty", param);
    if (n >= (size_t)lim->ctx_len)
        return context_exceeded(err, param,
                                "This model's maximum context length is %d tokens, and the prompt "
                                "has %zu",
                                lim->ctx_len, n);
    int32_t *ids = util_xmalloc(n * sizeof *ids);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v)) {
            free(ids);
            return srv_bad_param(err, param, "'%s' must hold token ids (integers)", param);
        }
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= lim->vocab_size) {
            free(ids);
            return srv_bad_param(err, param, "token id %lld is out of range [0, %d)", (long long)id,
                                 lim->vocab_size);
        }
        ids[i] = (int32_t)id;
    }
    *ids_out = ids;
    *n_out = (int)n;
    return 0;
}

static int parse_prompts(const json_t *body, const struct srv_model_limits *lim,
                         struct srv_completion_request *r, struct srv_error *err)
{
    json_t *p = json_object_get(body, "prompt");
    if (!p || json_is_null(p)) return srv_bad_param(err, "prompt", "'prompt' is required");
    if (json_is_string(p)) {
        r->prompts = util_xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        r->prompts[0].text = dup_bytes(json_string_value(p), json_string_length(p));
        r->prompts[0].text_len = json_string_length(p);
        return 0;
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return srv_bad_param(err, "prompt",
                             "'prompt' must be a string, a list of token ids, or a non-empty "
                             "list of either");
    json_t *first = json_array_get(p, 0);
    if (json_is_integer(first)) {
        r->prompts = util_xcalloc(1, sizeof *r->prompts);
        r->n_prompts = 1;
        return parse_token_ids(p, "prompt", lim, &r->prompts[0].ids, &r->prompts[0].n_ids, err);
    }
    size_t n = json_array_size(p);
    if (n > SRV_MAX_PROMPTS)
        return srv_bad_param(err, "prompt", "at most %d prompts per request, got %zu",
                             SRV_MAX_PROMPTS, n);
    r->prompts = util_xcalloc(n, sizeof *r->prompts);
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(p, i);
        struct srv_prompt *dst = &r->prompts[i];
        if (json_is_string(v)) {
            dst->text = dup_bytes(json_string_value(v), json_string_length(v));
            dst->text_len = json_string_length(v);
        } else if (json_is_array(v)) {
            int rc = parse_token_ids(v, "prompt", lim, &dst->ids, &dst->n_ids, err);
            if (rc) return rc;
        } else {
            return srv_bad_param(err, "prompt",
                                 "'prompt' items must all be strings or all token-id lists");
        }
    }
    return 0;
}

static bool role_known(const char *role)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (strcmp(role, roles[i]) == 0) return true;
    return false;
}

/* A message's content: a string, null, or a list of {"type":"text"} parts
 * (joined with newlines). */
static int parse_content(const json_t *content, int index, struct srv_buf *out,
                         struct srv_error *err)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%d].content", index);
    if (!content || json_is_null(content)) return 0;
    if (json_is_string(content)) {
        srv_buf_append(out, json_string_value(content), json_string_length(content));
        return 0;
    }
    if (!json_is_array(content))
        return srv_bad_param(err, param, "'%s' must be a string or a list of parts", param);
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0)
            return srv_bad_param(err, param, "only text content parts are supported");
        if (!json_is_string(text))
            return srv_bad_param(err, param, "a text part needs a string 'text'");
        if (i > 0) srv_buf_puts(out, "\n");
        srv_buf_append(out, json_string_value(text), json_string_length(text));
    }
    return 0;
}

static int parse_messages(const json_t *body, struct srv_message **out, int *n_out,
                          struct srv_error *err)
{
    json_t *msgs = json_object_get(body, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return srv_bad_param(err, "messages", "'messages' must be a non-empty list");
    size_t n = json_array_size(msgs);
    *out = util_xcalloc(n, sizeof **out);
    *n_out = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char param[48];
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_object(m))
            return srv_bad_param(err, "messages", "messages[%zu] must be an object", i);
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role) || !role_known(json_string_value(role)))
            return srv_bad_param(err, param,
                                 "'%s' must be system, developer, user, assistant or tool", param);
        struct srv_buf content = SRV_BUF_INIT;
        int rc = parse_content(json_object_get(m, "content"), (int)i, &content, err);
        if (rc) {
            srv_buf_free(&content);
            return rc;
        }
        (*out)[i].role = util_xstrdup(json_string_value(role));
        (*out)[i].content = srv_buf_take(&content);
    }
    return 0;
}

static void messages_free(struct srv_message *m, int n)
{
    for (int i = 0; i < n; i++) {
        free(m[i].role);
        free(m[i].content);
    }
    free(m);
}

/* ------------------------------------------------------ sampling fields */

static int parse_stop(const json_t *body, struct srv_completion_request *r, struct srv_error *err)
{
    json_t *stop = json_object_get(body, "stop");
    if (!stop || json_is_null(stop)) return 0;
    json_t *single = json_is_string(stop) ? stop : NULL;
    if (!single && !json_is_array(stop))
        return srv_bad_param(err, "stop", "'stop' must be a string or a list of strings");
    size_t n = single ? 1 : json_array_size(stop);
    if (n > LLM_MAX_STOP - 1) /* one slot stays free for the chat turn end */
        return srv_bad_param(err, "stop", "at most %d stop strings", LLM_MAX_STOP - 1);
    for (size_t i = 0; i < n; i++) {
        json_t *s = single ? single : json_array_get(stop, i);
        if (!json_is_string(s) || json_string_length(s) == 0 ||
            json_string_length(s) > SRV_MAX_STOP_LEN)
            return srv_bad_param(err, "stop",
                                 "stop strings must be non-empty strings of at most %d bytes",
                                 SRV_MAX_STOP_LEN);
        r->stop[r->n_stop++] = dup_bytes(json_string_value(s), json_string_length(s));
    }
    return 0;
}

static int parse_sampling(const json_t *body, struct srv_completion_request *r,
                          struct srv_error *err)
{
    struct llm_sampling *s = &r->sampling;
    double x;
    long long k;
    int rc;
    /* OpenAI's defaults. */
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->top_k = 0;
    s->min_p = 0.0f;
    s->repetition_penalty = 1.0f;
    s->presence_penalty = 0.0f;
    s->frequency_penalty = 0.0f;
    s->seed = 0;
    if ((rc = get_number(body, "temperature", 0, 2, false, &x, err)) < 0) return rc;
    if (rc) s->temperature = (float)x;
    if ((rc = get_number(body, "top_p", 0, 1, false, &x, err)) < 0) return rc; /* 0: greedy */
    if (rc) s->top_p = (float)x;
    if ((rc = get_int(body, "top_k", "top_k", -1, 1 << 30, &k, err)) < 0) return rc;
    if (rc) s->top_k = k < 0 ? 0 : (int)k; /* -1 means off, as in vLLM */
    if ((rc = get_number(body, "min_p", 0, 1, false, &x, err)) < 0) return rc;
    if (rc) s->min_p = (float)x;
    if ((rc = get_number(body, "presence_penalty", -2, 2, false, &x, err)) < 0) return rc;
    if (rc) s->presence_penalty = (float)x;
    if ((rc = get_number(body, "frequency_penalty", -2, 2, false, &x, err)) < 0) return rc;
    if (rc) s->frequency_penalty = (float)x;
    if ((rc = get_number(body, "repetition_penalty", 0, 10, true, &x, err)) < 0) return rc;
    if (rc) s->repetition_penalty = (float)x;
    if ((rc = get_int(body, "seed", "seed", INT64_MIN, INT64_MAX, &k, err)) < 0) return rc;
    if (rc) {
        s->seed = (uint64_t)k;
        r->has_seed = true;
    }
    return 0;
}

static int parse_logprobs(const json_t *body, struct srv_completion_request *r,
                          struct srv_error *err)
{
    long long k;
    int rc;
    if (r->api == SRV_API_COMPLETIONS) {
        /* Legacy completions: "logprobs": N alternatives (0 = the chosen
         * token's only). */
        json_t *v = json_object_get(body, "logprobs");
        if (v && json_is_boolean(v))
            return srv_bad_param(err, "logprobs", "'logprobs' must be an integer");
        if ((rc = get_int(body, "logprobs", "logprobs", 0, LLM_MAX_LOGPROBS, &k, err)) < 0)
            return rc;
        if (rc) {
            r->logprobs = true;
            r->top_logprobs = (int)k;
        }
        return 0;
    }
    if ((rc = get_bool(body, "logprobs", "logprobs", &r->logprobs, err)) < 0) return rc;
    if ((rc = get_int(body, "top_logprobs", "top_logprobs", 0, LLM_MAX_LOGPROBS, &k, err)) < 0)
        return rc;
    if (rc) {
        if (!r->logprobs)
            return srv_bad_param(err, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->top_logprobs = (int)k;
    }
    return 0;
}

static int parse_stream(const json_t *body, struct srv_completion_request *r, struct srv_error *err)
{
    int rc;
    if ((rc = get_bool(body, "stream", "stream", &r->stream, err)) < 0) return rc;
    json_t *opts = json_object_get(body, "stream_options");
    if (!opts || json_is_null(opts)) return 0;
    if (!json_is_object(opts))
        return srv_bad_param(err, "stream_options", "'stream_options' must be an object");
    if (!r->stream)
        return srv_bad_param(err, "stream_options", "'stream_options' needs 'stream': true");
    rc = get_bool(opts, "include_usage", "stream_options.include_usage", &r->include_usage, err);
    return rc < 0 ? rc : 0;
}

/* "logit_bias": {"<token id>": bias in [-100, 100], ...}, as OpenAI. */
static int parse_logit_bias(const json_t *body, const struct srv_model_limits *lim,
                            struct srv_completion_request *r, struct srv_error *err)
{
    json_t *map = json_object_get(body, "logit_bias");
    if (!map || json_is_null(map)) return 0;
    if (!json_is_object(map))
        return srv_bad_param(err, "logit_bias",
                             "'logit_bias' must be an object of token ids to biases");
    if (json_object_size(map) > LLM_MAX_LOGIT_BIAS)
        return srv_bad_param(err, "logit_bias", "'logit_bias' may have at most %d entries",
                             LLM_MAX_LOGIT_BIAS);
    r->logit_bias = util_xcalloc(json_object_size(map) + 1, sizeof *r->logit_bias);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)map, key, v)
    {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id >= lim->vocab_size)
            return srv_bad_param(err, "logit_bias",
                                 "'logit_bias' keys must be token ids from 0 to %d, not '%.40s'",
                                 lim->vocab_size - 1, key);
        if (!json_is_number(v) || !(fabs(json_number_value(v)) <= 100))
            return srv_bad_param(err, "logit_bias",
                                 "'logit_bias' values must be numbers from -100 to 100");
        r->logit_bias[r->n_logit_bias++] =
            (struct llm_logit_bias){(int32_t)id, (float)json_number_value(v)};
    }
    return 0;
}

/* Structured outputs: "response_format" {"type": "text" | "json_object" |
 * "json_schema", "json_schema": {"schema": {...}}}, or llama.cpp's
 * "grammar" (GBNF text); compiled here, once for all choices. */
static int parse_structured(const json_t *body, struct srv_completion_request *r,
                            struct srv_error *err)
{
    char msg[400];
    const char *gbnf;
    size_t gbnf_len;
    int rc = get_string(body, "grammar", &gbnf, &gbnf_len, err);
    if (rc < 0) return rc;
    json_t *format = json_object_get(body, "response_format");
    const char *type = "text";
    if (format && !json_is_null(format)) {
        if (!json_is_object(format) || !json_is_string(json_object_get(format, "type")))
            return srv_bad_param(err, "response_format",
                                 "'response_format' must be an object with a 'type'");
        type = json_string_value(json_object_get(format, "type"));
    }
    bool text = strcmp(type, "text") == 0;
    if (rc && !text)
        return srv_bad_param(err, "grammar", "give 'grammar' or 'response_format', not both");
    if (rc) {
        if (llm_grammar_compile_gbnf(gbnf, gbnf_len, &r->grammar, msg, sizeof msg))
            return srv_bad_param(err, "grammar", "the grammar does not compile: %s", msg);
        return 0;
    }
    if (text) return 0;
    if (strcmp(type, "json_object") == 0) {
        UTIL_CHECK(llm_grammar_compile_json_object(&r->grammar) == 0);
        return 0;
    }
    if (strcmp(type, "json_schema") != 0)
        return srv_bad_param(err, "response_format.type",
                             "'response_format.type' must be one of: text, json_object, "
                             "json_schema");
    json_t *spec = json_object_get(format, "json_schema");
    json_t *schema = json_object_get(spec, "schema");
    if (!json_is_object(spec) || !(json_is_object(schema) || json_is_boolean(schema)))
        return srv_bad_param(err, "response_format.json_schema",
                             "'response_format.json_schema' must be an object with a 'schema'");
    if (llm_grammar_compile_json_schema(schema, &r->grammar, msg, sizeof msg))
        return srv_bad_param(err, "response_format.json_schema.schema", "%s", msg);
    return 0;
}

static int parse_quest(const json_t *body, struct srv_completion_request *r, struct srv_error *err)
{
    r->quest_budget = -1;
    json_t *q = json_object_get(body, "quest");
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return srv_bad_param(err, "quest", "'quest' must be an object");
    const char *key;
    json_t *v;
    json_object_foreach(q, key, v)
    {
        if (strcmp(key, "token_budget") != 0)
            return srv_bad_param(err, "quest", "unknown field in 'quest' (only token_budget)");
    }
    long long k;
    int rc = get_int(q, "token_budget", "quest.token_budget", 0, INT32_MAX, &k, err);
    if (rc < 0) return rc;
    if (rc) r->quest_budget = (int)k;
    return 0;
}

/* Features we do not have are refused rather than ignored. */
static int refuse_unsupported(const json_t *body, struct srv_error *err)
{
    json_t *v;
    if ((v = json_object_get(body, "echo")) && json_is_true(v))
        return srv_bad_param(err, "echo", "'echo' is not supported");
    if ((v = json_object_get(body, "best_of")) && !json_is_null(v) &&
        !(json_is_integer(v) && json_integer_value(v) == 1))
        return srv_bad_param(err, "best_of", "'best_of' other than 1 is not supported");
    if ((v = json_object_get(body, "suffix")) && !json_is_null(v) &&
        !(json_is_string(v) && json_string_length(v) == 0))
        return srv_bad_param(err, "suffix", "'suffix' is not supported");
    if ((v = json_object_get(body, "tools")) && !json_is_null(v) &&
        !(json_is_array(v) && json_array_size(v) == 0))
        return srv_bad_param(err, "tools", "'tools' are not supported");
    return 0;
}

static int check_model(const json_t *body, const struct srv_model_limits *lim, char **model,
                       struct srv_error *err)
{
    const char *name;
    size_t len;
    int rc = get_string(body, "model", &name, &len, err);
    if (rc <= 0) return rc;
    if (strcmp(name, lim->model_name) != 0) {
        srv_error_set(err, 404, "invalid_request_error", "model_not_found", "model",
                      "The model '%.100s' does not exist", name);
        return -EINVAL;
    }
    if (model) *model = dup_bytes(name, len);
    return 0;
}

/* ----------------------------------------------------- request parsing */

static int parse_completion(const json_t *body, enum srv_api api,
                            const struct srv_model_limits *lim, struct srv_completion_request *r,
                            struct srv_error *err)
{
    int rc;
    long long k;
    if (!json_is_object(body))
        return srv_bad_param(err, NULL, "the request body must be a JSON object");
    if ((rc = check_model(body, lim, &r->model, err))) return rc;
    if (api == SRV_API_COMPLETIONS)
        rc = parse_prompts(body, lim, r, err);
    else
        rc = parse_messages(body, &r->messages, &r->n_messages, err);
    if (rc) return rc;
    if ((rc = refuse_unsupported(body, err))) return rc;

    if ((rc = get_int(body, "max_tokens", "max_tokens", 1, INT32_MAX, &k, err)) < 0) return rc;
    if (rc) r->max_tokens = (int)k;
    if (api == SRV_API_CHAT) {
        rc = get_int(body, "max_completion_tokens", "max_completion_tokens", 1, INT32_MAX, &k, err);
        if (rc < 0) return rc;
        if (rc) r->max_tokens = (int)k;
    }
    r->n = 1;
    if ((rc = get_int(body, "n", "n", 1, SRV_MAX_N, &k, err)) < 0) return rc;
    if (rc) r->n = (int)k;
    int n_prompts = api == SRV_API_COMPLETIONS ? r->n_prompts : 1;
    if (r->n * n_prompts > SRV_MAX_CHOICES)
        return srv_bad_param(err, "n", "prompts x n must be at most %d", SRV_MAX_CHOICES);

    if ((rc = parse_sampling(body, r, err))) return rc;
    if ((rc = parse_stop(body, r, err))) return rc;
    if ((rc = parse_logprobs(body, r, err))) return rc;
    if ((rc = parse_stream(body, r, err))) return rc;
    if ((rc = parse_quest(body, r, err))) return rc;
    if ((rc = parse_logit_bias(body, lim, r, err))) return rc;
    if ((rc = parse_structured(body, r, err))) return rc;
    if ((rc = get_bool(body, "ignore_eos", "ignore_eos", &r->ignore_eos, err)) < 0) return rc;
    const char *user;
    if ((rc = get_string(body, "user", &user, NULL, err)) < 0) return rc;
    return 0;
}

int srv_parse_completion(const json_t *body, enum srv_api api, const struct srv_model_limits *lim,
                         struct srv_completion_request *out, struct srv_error *err)
{
    memset(out, 0, sizeof *out);
    out->api = api;
    int rc = parse_completion(body, api, lim, out, err);
    if (rc) srv_completion_request_free(out);
    return rc;
}

void srv_completion_request_free(struct srv_completion_request *r)
{
    free(r->model);
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    messages_free(r->messages, r->n_messages);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->logit_bias);
    llm_grammar_unref(r->grammar);
    memset(r, 0, sizeof *r);
}

int srv_resolve_max_tokens(const struct srv_completion_request *r, int n_prompt, int ctx_len,
                           int *max_tokens, struct srv_error *err)
{
    const char *prompt_param = r->api == SRV_API_CHAT ? "messages" : "prompt";
    if (n_prompt <= 0) return srv_bad_param(err, prompt_param, "the prompt is empty");
    if (n_prompt >= ctx_len)
        return context_exceeded(err, prompt_param,
                                "This model's maximum context length is %d tokens. However, your "
                                "prompt has %d tokens",
                                ctx_len, n_prompt);
    int room = ctx_len - n_prompt;
    if (r->max_tokens > room)
        return context_exceeded(
            err, r->api == SRV_API_CHAT ? "max_completion_tokens" : "max_tokens",
            "This model's maximum context length is %d tokens. However, you requested %lld tokens "
            "(%d in the prompt, %d for the completion)",
            ctx_len, (long long)n_prompt + r->max_tokens, n_prompt, r->max_tokens);
    if (r->max_tokens > 0)
        *max_tokens = r->max_tokens;
    else
        *max_tokens = r->api == SRV_API_CHAT ? room : (room < 16 ? room : 16);
    return 0;
}

int srv_check_prompt_bytes(size_t bytes, size_t max_piece_len, int ctx_len, const char *param,
                           struct srv_error *err)
{
    if (max_piece_len == 0 || bytes / max_piece_len < (size_t)ctx_len) return 0;
    return context_exceeded(err, param,
                            "This model's maximum context length is %d tokens, and the prompt "
                            "(%zu bytes) is longer than that",
                            ctx_len, bytes);
}

int srv_parse_tokenize(const json_t *body, const struct srv_model_limits *lim,
                       struct srv_tokenize_request *out, struct srv_error *err)
{
    memset(out, 0, sizeof *out);
    out->add_special = true;
    int rc;
    if (!json_is_object(body))
        return srv_bad_param(err, NULL, "the request body must be a JSON object");
    if ((rc = check_model(body, lim, NULL, err))) goto fail;
    const char *prompt;
    size_t len;
    if ((rc = get_string(body, "prompt", &prompt, &len, err)) < 0) goto fail;
    if (rc) {
        out->prompt = dup_bytes(prompt, len);
        out->prompt_len = len;
    } else if (json_object_get(body, "messages")) {
        if ((rc = parse_messages(body, &out->messages, &out->n_messages, err))) goto fail;
    } else {
        rc = srv_bad_param(err, "prompt", "'prompt' (a string) or 'messages' is required");
        goto fail;
    }
    if ((rc = get_bool(body, "add_special_tokens", "add_special_tokens", &out->add_special, err)) <
        0)
        goto fail;
    return 0;
fail:
    srv_tokenize_request_free(out);
    return -EINVAL;
}

void srv_tokenize_request_free(struct srv_tokenize_request *r)
{
    free(r->prompt);
    messages_free(r->messages, r->n_messages);
    memset(r, 0, sizeof *r);
}

int srv_parse_detokenize(const json_t *body, const struct srv_model_limits *lim, int32_t **ids,
                         int *n_ids, struct srv_error *err)
{
    *ids = NULL;
    *n_ids = 0;
    if (!json_is_object(body))
        return srv_bad_param(err, NULL, "the request body must be a JSON object");
    int rc = check_model(body, lim, NULL, err);
    if (rc) return rc;
    json_t *tokens = json_object_get(body, "tokens");
    if (!json_is_array(tokens))
        return srv_bad_param(err, "tokens", "'tokens' must be a list of token ids");
    if (json_array_size(tokens) == 0) {
        *ids = util_xmalloc(sizeof **ids);
        return 0;
    }
    /* Any length is fine here: nothing is run. */
    struct srv_model_limits unbounded = *lim;
    unbounded.ctx_len = INT32_MAX;
    return parse_token_ids(tokens, "tokens", &unbounded, ids, n_ids, err);
}

/* ---------------------------------------------------------------- text */

/* The length of the valid UTF-8 sequence at s, or 0 when it is invalid
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_sequence(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned cp, min;
    if ((c & 0xe0) == 0xc0)
        n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n > len) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

void srv_utf8_sanitize(struct srv_buf *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0; /* valid bytes not yet copied start at i - run */
    while (i < len) {
        size_t n = utf8_sequence(p + i, len - i);
        if (n) {
            i += n;
            run += n;
            continue;
        }
        srv_buf_append(out, s + i - run, run);
        srv_buf_puts(out, "\xef\xbf\xbd");
        i++;
        run = 0;
    }
    srv_buf_append(out, s + len - run, run);
}

json_t *srv_json_text(const char *s, size_t len)
{
    struct srv_buf clean = SRV_BUF_INIT;
    srv_utf8_sanitize(&clean, s, len);
    json_t *j = json_stringn(clean.data ? clean.data : "", clean.len);
    srv_buf_free(&clean);
    UTIL_CHECK(j);
    return j;
}

size_t srv_token_bytes(const llm_tokenizer *tok, int32_t id, char *out, size_t cap)
{
    if (id == llm_tokenizer_bos(tok) || id == llm_tokenizer_eos(tok)) return 0;
    const char *piece = llm_tokenizer_piece(tok, id);
    if (!piece) return 0;
    unsigned byte;
    char tail;
    if (strlen(piece) == 6 && sscanf(piece, "<0x%2X%c", &byte, &tail) == 2 && tail == '>') {
        if (cap < 1) return 0;
        out[0] = (char)byte;
        return 1;
    }
    size_t n = 0;
    for (const char *p = piece; *p && n < cap;) {
        if (strncmp(p, "\xe2\x96\x81", 3) == 0) {
            out[n++] = ' ';
            p += 3;
        } else {
            out[n++] = *p++;
        }
    }
    return n;
}

static bool utf8_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence((const unsigned char *)s + i, len - i);
        if (!n) return false;
        i += n;
    }
    return true;
}

void srv_token_display(const llm_tokenizer *tok, int32_t id, struct srv_buf *out)
{
    char bytes[256];
    size_t n = srv_token_bytes(tok, id, bytes, sizeof bytes);
    if (utf8_valid(bytes, n)) {
        srv_buf_append(out, bytes, n);
        return;
    }
    srv_buf_puts(out, "bytes:");
    for (size_t i = 0; i < n; i++) srv_buf_printf(out, "\\x%02x", (unsigned char)bytes[i]);
}

/* ------------------------------------------------------------ responses */

const char *srv_finish_reason(enum llm_finish f)
{
    switch (f) {
    case LLM_FINISH_NONE:
        return NULL;
    case LLM_FINISH_STOP:
        return "stop";
    case LLM_FINISH_LENGTH:
        return "length";
    case LLM_FINISH_TIMEOUT: /* request_timeout_s ran out: not the model's length limit */
        return "timeout";
    case LLM_FINISH_CANCELLED:
        return "cancelled";
    default:
        return "error";
    }
}

void srv_choice_add_logprob(struct srv_choice_result *c, const llm_tokenizer *tok, int32_t token,
                            float logprob, const struct llm_logprob *top, int n_top)
{
    if (c->n_logprobs == c->cap_logprobs) {
        c->cap_logprobs = c->cap_logprobs ? 2 * c->cap_logprobs : 16;
        c->logprobs = util_xrealloc(c->logprobs, sizeof *c->logprobs * (size_t)c->cap_logprobs);
    }
    struct srv_token_logprob *lp = &c->logprobs[c->n_logprobs++];
    lp->token = token;
    lp->logprob = logprob;
    lp->text_offset = c->logprob_text_len;
    lp->n_top = n_top < LLM_MAX_LOGPROBS ? n_top : LLM_MAX_LOGPROBS;
    if (lp->n_top > 0) memcpy(lp->top, top, sizeof *top * (size_t)lp->n_top);
    char bytes[256];
    c->logprob_text_len += (int)srv_token_bytes(tok, token, bytes, sizeof bytes);
}

void srv_choice_result_free(struct srv_choice_result *c)
{
    srv_buf_free(&c->text);
    free(c->logprobs);
    c->logprobs = NULL;
    c->n_logprobs = c->cap_logprobs = 0;
}

/* JSON has no infinities; OpenAI writes -9999 for a token that cannot be. */
static json_t *logprob_value(float lp)
{
    return json_real(isfinite(lp) ? lp : -9999.0);
}

static json_t *token_string(const llm_tokenizer *tok, int32_t id)
{
    struct srv_buf b = SRV_BUF_INIT;
    srv_token_display(tok, id, &b);
    json_t *j = srv_json_text(b.data ? b.data : "", b.len);
    srv_buf_free(&b);
    return j;
}

static json_t *token_bytes_json(const llm_tokenizer *tok, int32_t id)
{
    char bytes[256];
    size_t n = srv_token_bytes(tok, id, bytes, sizeof bytes);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_integer((unsigned char)bytes[i]));
    return arr;
}

/* Completions: {"tokens","token_logprobs","top_logprobs","text_offset"}. */
static json_t *completion_logprobs(const llm_tokenizer *tok, const struct srv_token_logprob *lps,
                                   int n)
{
    json_t *tokens = json_array(), *values = json_array(), *tops = json_array(),
           *offsets = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, token_string(tok, lps[i].token));
        json_array_append_new(values, logprob_value(lps[i].logprob));
        json_t *top = json_object();
        for (int k = 0; k < lps[i].n_top; k++) {
            struct srv_buf name = SRV_BUF_INIT;
            srv_token_display(tok, lps[i].top[k].token, &name);
            struct srv_buf clean = SRV_BUF_INIT;
            srv_utf8_sanitize(&clean, name.data ? name.data : "", name.len);
            json_object_set_new(top, clean.data ? clean.data : "",
                                logprob_value(lps[i].top[k].logprob));
            srv_buf_free(&clean);
            srv_buf_free(&name);
        }
        json_array_append_new(tops, top);
        json_array_append_new(offsets, json_integer(lps[i].text_offset));
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", values,
                     "top_logprobs", tops, "text_offset", offsets);
}

/* Chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}]}. */
static json_t *chat_logprobs(const llm_tokenizer *tok, const struct srv_token_logprob *lps, int n)
{
    json_t *content = json_array();
    for (int i = 0; i < n; i++) {
        json_t *top = json_array();
        for (int k = 0; k < lps[i].n_top; k++)
            json_array_append_new(top, json_pack("{s:o,s:o,s:o}", "token",
                                                 token_string(tok, lps[i].top[k].token), "logprob",
                                                 logprob_value(lps[i].top[k].logprob), "bytes",
                                                 token_bytes_json(tok, lps[i].top[k].token)));
        json_array_append_new(
            content, json_pack("{s:o,s:o,s:o,s:o}", "token", token_string(tok, lps[i].token),
                               "logprob", logprob_value(lps[i].logprob), "bytes",
                               token_bytes_json(tok, lps[i].token), "top_logprobs", top));
    }
    return json_pack("{s:o}", "content", content);
}

static json_t *logprobs_json(const struct srv_response_meta *meta,
                             const struct srv_token_logprob *lps, int n)
{
    if (!meta->logprobs) return json_null();
    return meta->api == SRV_API_CHAT ? chat_logprobs(meta->tok, lps, n)
                                     : completion_logprobs(meta->tok, lps, n);
}

static json_t *finish_json(enum llm_finish f)
{
    const char *reason = srv_finish_reason(f);
    return reason ? json_string(reason) : json_null();
}

json_t *srv_usage_json(int prompt_tokens, int cached_tokens, int completion_tokens)
{
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", prompt_tokens, "completion_tokens",
                     completion_tokens, "total_tokens", prompt_tokens + completion_tokens,
                     "prompt_tokens_details", "cached_tokens", cached_tokens);
}

static json_t *envelope(const struct srv_response_meta *meta, const char *object)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", meta->id, "object", object, "created",
                     (json_int_t)meta->created, "model", meta->model);
}

json_t *srv_response_json(const struct srv_response_meta *meta,
                          const struct srv_choice_result *choices, int n_choices, int prompt_tokens,
                          int cached_tokens)
{
    bool chat = meta->api == SRV_API_CHAT;
    json_t *root = envelope(meta, chat ? "chat.completion" : "text_completion");
    json_t *arr = json_array();
    int completion_tokens = 0;
    for (int i = 0; i < n_choices; i++) {
        const struct srv_choice_result *c = &choices[i];
        json_t *text = srv_json_text(c->text.data ? c->text.data : "", c->text.len);
        json_t *choice = json_pack("{s:i}", "index", c->index);
        if (chat)
            json_object_set_new(choice, "message",
                                json_pack("{s:s,s:o}", "role", "assistant", "content", text));
        else
            json_object_set_new(choice, "text", text);
        json_object_set_new(choice, "logprobs", logprobs_json(meta, c->logprobs, c->n_logprobs));
        json_object_set_new(choice, "finish_reason", finish_json(c->finish));
        json_array_append_new(arr, choice);
        completion_tokens += c->completion_tokens;
    }
    json_object_set_new(root, "choices", arr);
    json_object_set_new(root, "usage",
                        srv_usage_json(prompt_tokens, cached_tokens, completion_tokens));
    return root;
}

json_t *srv_chunk_json(const struct srv_response_meta *meta, int index, const char *text,
                       size_t text_len, const struct srv_token_logprob *lps, int n_lps,
                       enum llm_finish finish, bool role_delta, bool usage_null)
{
    bool chat = meta->api == SRV_API_CHAT;
    json_t *root = envelope(meta, chat ? "chat.completion.chunk" : "text_completion");
    json_t *choice = json_pack("{s:i}", "index", index);
    if (chat) {
        json_t *delta = json_object();
        if (role_delta) {
            json_object_set_new(delta, "role", json_string("assistant"));
            json_object_set_new(delta, "content", json_string(""));
        } else if (text_len > 0 || finish == LLM_FINISH_NONE) {
            json_object_set_new(delta, "content", srv_json_text(text ? text : "", text_len));
        }
        json_object_set_new(choice, "delta", delta);
    } else {
        json_object_set_new(choice, "text", srv_json_text(text ? text : "", text_len));
    }
    json_object_set_new(choice, "logprobs",
                        n_lps > 0 ? logprobs_json(meta, lps, n_lps) : json_null());
    json_object_set_new(choice, "finish_reason", finish_json(finish));
    json_object_set_new(root, "choices", json_pack("[o]", choice));
    if (usage_null) json_object_set_new(root, "usage", json_null());
    return root;
}

json_t *srv_usage_chunk_json(const struct srv_response_meta *meta, int prompt_tokens,
                             int cached_tokens, int completion_tokens)
{
    json_t *root =
        envelope(meta, meta->api == SRV_API_CHAT ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(root, "choices", json_array());
    json_object_set_new(root, "usage",
                        srv_usage_json(prompt_tokens, cached_tokens, completion_tokens));
    return root;
}

/* ------------------------------------------------------------------ SSE */

void srv_sse_append_json(struct srv_buf *out, const json_t *data)
{
    /* Compact JSON has no raw newlines (strings escape them), so one
     * data: line carries the whole event. */
    char *text = json_dumps(data, SRV_JSON_FLAGS);
    UTIL_CHECK(text);
    srv_buf_puts(out, "data: ");
    srv_buf_puts(out, text);
    srv_buf_puts(out, "\n\n");
    free(text);
}

void srv_sse_append_done(struct srv_buf *out)
{
    srv_buf_puts(out, "data: [DONE]\n\n");
}

/* --------------------------------------------------------- auth and CORS */

bool srv_ct_equal(const char *a, size_t a_len, const char *b, size_t b_len)
{
    if (b_len == 0) return a_len == 0;
    volatile unsigned char diff = (unsigned char)(a_len != b_len);
    for (size_t i = 0; i < a_len; i++) diff |= (unsigned char)(a[i] ^ b[i % b_len]);
    return diff == 0;
}

bool srv_auth_bearer_ok(const char *authorization, char *const *keys, int n_keys)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return false;
    const char *token = authorization + 7;
    while (*token == ' ') token++;
    size_t len = strlen(token);
    while (len > 0 && token[len - 1] == ' ') len--;
    bool ok = false;
    for (int i = 0; i < n_keys; i++) ok |= srv_ct_equal(token, len, keys[i], strlen(keys[i]));
    return ok;
}

const char *srv_cors_allow_origin(const char *origin, char *const *allowed, int n_allowed)
{
    if (!origin || !origin[0]) return NULL;
    for (int i = 0; i < n_allowed; i++) {
        if (strcmp(allowed[i], "*") == 0) return "*";
        if (strcmp(allowed[i], origin) == 0) return origin;
    }
    return NULL;
}

/*
 * generate.c: /v1/completions and /v1/chat/completions on the engine. A
 * request becomes one engine request per choice (prompts x n); their token
 * events become SSE chunks as they come, or one JSON response when the last
 * choice is done. Loop thread only.
 */
#include "server/daemon.h"
#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --------------------------------------------------------------- SSE */

/* Appends an event (taking the reference) for the reader to send. */
static void sse_append(struct srv_request *r, json_t *chunk)
{
    srv_sse_append_json(&r->sse, chunk);
    json_decref(chunk);
    r->sse_last = util_now();
}

void srv_streams_keepalive(struct srv_daemon *d)
{
    double now = util_now(), quiet = d->cfg->sse_keepalive_s;
    for (struct srv_request *r = d->requests; r; r = r->next) {
        if (r->state != SRV_REQ_STREAMING || r->stream_finished || r->client_gone) continue;
        if (now - r->sse_last < quiet) continue;
        srv_buf_puts(&r->sse, ": keep-alive\n\n"); /* a comment: clients skip it */
        r->sse_last = now;
        srv_request_wake(r);
    }
}

static void sse_push(struct srv_request *r, json_t *chunk)
{
    sse_append(r, chunk);
    srv_request_wake(r);
}

/* MHD asks for the next bytes of the stream. With none yet, the connection
 * is suspended until an event brings some (returning 0 without suspending
 * would make MHD spin). */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct srv_request *r = cls;
    if (r->client_gone) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (r->sse.len > 0) {
        size_t n = r->sse.len < max ? r->sse.len : max;
        memcpy(buf, r->sse.data, n);
        srv_buf_consume(&r->sse, n);
        return (ssize_t)n;
    }
    if (r->stream_finished) return MHD_CONTENT_READER_END_OF_STREAM;
    srv_request_suspend(r);
    return 0;
}

static void start_stream(struct srv_request *r)
{
    static const char *const headers[] = {"Cache-Control", "no-cache", "X-Accel-Buffering", "no",
                                          NULL};
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, r, NULL);
    UTIL_CHECK(resp);
    srv_add_headers(r, resp, "text/event-stream", headers);
    if (MHD_queue_response(r->conn, 200, resp) == MHD_YES) r->status = 200;
    MHD_destroy_response(resp);
    r->state = SRV_REQ_STREAMING;
    r->sse_last = util_now();
    if (r->params.api == SRV_API_CHAT)
        for (int i = 0; i < r->n_choices; i++)
            sse_append(r, srv_chunk_json(&r->meta, i, NULL, 0, NULL, 0, LLM_FINISH_NONE, true,
                                         r->params.include_usage));
}

/* ----------------------------------------------------------- submitting */

static void make_id(struct srv_request *r)
{
    uint64_t a = util_rng_next(&r->d->rng), b = util_rng_next(&r->d->rng);
    snprintf(r->id, sizeof r->id, "%s-%016llx%016llx",
             r->params.api == SRV_API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)a,
             (unsigned long long)b);
}

/* The token ids of prompt p (a new array). Returns the count, or -EINVAL
 * with *e set for text that cannot fit the context. */
static int prompt_tokens(struct srv_request *r, int p, int32_t **ids, struct srv_error *e)
{
    struct srv_daemon *d = r->d;
    const struct srv_completion_request *q = &r->params;
    *ids = NULL;
    if (q->api == SRV_API_COMPLETIONS && q->prompts[p].ids) {
        *ids = util_xmalloc(sizeof **ids * (size_t)q->prompts[p].n_ids);
        memcpy(*ids, q->prompts[p].ids, sizeof **ids * (size_t)q->prompts[p].n_ids);
        return q->prompts[p].n_ids;
    }
    char *rendered =
        q->api == SRV_API_CHAT ? srv_chat_render(d->chat_format, q->messages, q->n_messages) : NULL;
    const char *text = rendered ? rendered : q->prompts[p].text;
    size_t len = rendered ? strlen(rendered) : q->prompts[p].text_len;
    int n = srv_check_prompt_bytes(len, llm_tokenizer_max_piece_len(d->tok), d->ctx_len,
                                   rendered ? "messages" : "prompt", e);
    if (n == 0) {
        n = srv_tokenize(d->tok, text, len, llm_tokenizer_add_bos(d->tok), ids);
        if (n < 0)
            n = srv_bad_param(e, rendered ? "messages" : "prompt",
                              "the prompt cannot be tokenized: %s", util_strerror(n));
    }
    free(rendered);
    return n;
}

/* Fills an engine request for choice `index` of prompt `ids` (copied). */
static void fill_engine_request(struct srv_request *r, struct srv_choice *c, int index,
                                const int32_t *ids, int n_ids, int max_tokens, double deadline,
                                struct llm_request *req)
{
    const struct srv_completion_request *q = &r->params;
    memset(req, 0, sizeof *req);
    req->prompt = util_xmalloc(sizeof *ids * (size_t)n_ids);
    memcpy(req->prompt, ids, sizeof *ids * (size_t)n_ids);
    req->n_prompt = n_ids;
    req->max_tokens = max_tokens;
    req->sampling = q->sampling;
    /* The choices of one prompt differ; a given seed still reproduces. */
    req->sampling.seed =
        q->has_seed ? q->sampling.seed + (uint64_t)(index % q->n) : util_rng_next(&r->d->rng);
    for (int i = 0; i < q->n_stop; i++) req->stop[req->n_stop++] = util_xstrdup(q->stop[i]);
    if (q->api == SRV_API_CHAT)
        req->stop[req->n_stop++] = util_xstrdup(srv_chat_turn_end(r->d->chat_format));
    req->stop_at_eos = !q->ignore_eos;
    req->logprobs = q->logprobs;
    req->n_logprobs = q->logprobs ? q->top_logprobs : 0;
    req->quest_budget = q->quest_budget;
    if (q->n_logit_bias > 0) {
        req->logit_bias = util_xmalloc(sizeof *req->logit_bias * (size_t)q->n_logit_bias);
        memcpy(req->logit_bias, q->logit_bias, sizeof *req->logit_bias * (size_t)q->n_logit_bias);
        req->n_logit_bias = q->n_logit_bias;
    }
    if (q->grammar) req->grammar = llm_grammar_ref(q->grammar);
    req->deadline = deadline;
    req->user = c;
}

static void free_engine_request(struct llm_request *req)
{
    free(req->prompt);
    for (int i = 0; i < req->n_stop; i++) free(req->stop[i]);
    free(req->logit_bias);
    llm_grammar_unref(req->grammar);
}

/* Answers an error from the handler; choices already submitted are
 * cancelled and their events dropped. */
static void fail_now(struct srv_request *r, const struct srv_error *e)
{
    r->failed = true;
    srv_generate_cancel(r);
    srv_respond_error(r, e);
}

void srv_generate_start(struct srv_request *r, enum srv_api api, json_t *body)
{
    struct srv_daemon *d = r->d;
    struct srv_error e;
    struct srv_model_limits lim = {d->model_name, d->vocab_size, d->ctx_len};
    if (srv_parse_completion(body, api, &lim, &r->params, &e)) {
        r->failed = true;
        srv_respond_error(r, &e);
        return;
    }
    struct srv_completion_request *q = &r->params;
    int n_prompts = api == SRV_API_CHAT ? 1 : q->n_prompts;
    int32_t **ids = util_xcalloc((size_t)n_prompts, sizeof *ids);
    int *n_ids = util_xcalloc((size_t)n_prompts, sizeof *n_ids);
    int *max_tokens = util_xcalloc((size_t)n_prompts, sizeof *max_tokens);
    int rc = 0;
    for (int p = 0; p < n_prompts && rc == 0; p++) {
        n_ids[p] = prompt_tokens(r, p, &ids[p], &e);
        rc = n_ids[p] < 0 ? n_ids[p]
                          : srv_resolve_max_tokens(q, n_ids[p], d->ctx_len, &max_tokens[p], &e);
        r->prompt_tokens += n_ids[p] > 0 ? n_ids[p] : 0;
    }

    if (rc == 0) {
        make_id(r);
        r->meta = (struct srv_response_meta){api,           r->id,       (int64_t)time(NULL),
                                             d->model_name, q->logprobs, d->tok};
        r->n_choices = n_prompts * q->n;
        r->choices = util_xcalloc((size_t)r->n_choices, sizeof *r->choices);
        double deadline =
            d->cfg->request_timeout_s > 0 ? util_now() + d->cfg->request_timeout_s : 0;
        for (int i = 0; i < r->n_choices && rc == 0; i++) {
            struct srv_choice *c = &r->choices[i];
            int p = i / q->n;
            c->req = r;
            c->result.index = i;
            struct llm_request req;
            fill_engine_request(r, c, i, ids[p], n_ids[p], max_tokens[p], deadline, &req);
            rc = llm_engine_submit(d->engine, &req, &c->engine_id);
            if (rc == 0) {
                c->submitted = true;
                r->engine_pending++;
            } else {
                free_engine_request(&req);
                if (rc == -EAGAIN)
                    srv_error_set(&e, 429, "rate_limit_error", "queue_full", NULL,
                                  "The server is busy: the request queue is full; retry later");
                else if (rc == -ESHUTDOWN)
                    srv_error_set(&e, 503, "server_error", "shutting_down", NULL,
                                  "The server is shutting down");
                else if (rc == -EINVAL) /* the rest was validated: the KV pool is too small */
                    srv_bad_param(&e, "prompt",
                                  "the prompt does not fit this server's KV cache (kv_pages x "
                                  "page_size tokens)");
                else
                    srv_bad_param(&e, NULL, "the request cannot be served: %s", util_strerror(rc));
            }
        }
    }
    for (int p = 0; p < n_prompts; p++) free(ids[p]);
    free(ids);
    free(n_ids);
    free(max_tokens);
    if (rc) {
        fail_now(r, &e);
        return;
    }
    if (q->stream) {
        start_stream(r);
    } else {
        r->state = SRV_REQ_WAITING;
        srv_request_suspend(r);
    }
}

/* --------------------------------------------------------------- events */

/* New text (and a token's log-probs) of a choice. */
static void choice_output(struct srv_request *r, struct srv_choice *c, const struct llm_event *ev,
                          bool has_token)
{
    const struct srv_completion_request *q = &r->params;
    int lp_before = c->result.n_logprobs;
    if (has_token && q->logprobs)
        srv_choice_add_logprob(&c->result, r->d->tok, ev->token, ev->logprob, ev->top, ev->n_top);
    int n_lps = c->result.n_logprobs - lp_before;
    if (!q->stream) {
        srv_buf_append(&c->result.text, ev->text, (size_t)ev->text_len);
        return;
    }
    if (ev->text_len == 0 && n_lps == 0) return;
    sse_push(r, srv_chunk_json(&r->meta, c->result.index, ev->text, (size_t)ev->text_len,
                               c->result.logprobs + lp_before, n_lps, LLM_FINISH_NONE, false,
                               q->include_usage));
}

/* The last choice is done: the stream ends, or the response is built. */
static void request_done(struct srv_request *r)
{
    const struct srv_completion_request *q = &r->params;
    enum llm_finish worst = LLM_FINISH_NONE;
    for (int i = 0; i < r->n_choices; i++) {
        enum llm_finish f = r->choices[i].result.finish;
        if (f == LLM_FINISH_ERROR || (f == LLM_FINISH_CANCELLED && worst != LLM_FINISH_ERROR))
            worst = f;
    }
    struct srv_error e;
    if (worst == LLM_FINISH_ERROR)
        srv_error_set(&e, 500, "server_error", "engine_error", NULL,
                      "The engine failed while generating");
    else if (worst == LLM_FINISH_CANCELLED)
        srv_error_set(&e, 503, "server_error", "shutting_down", NULL,
                      "The server shut down before the request finished");

    if (q->stream) {
        if (worst != LLM_FINISH_NONE)
            sse_append(r, srv_error_json(&e));
        else if (q->include_usage)
            sse_append(r, srv_usage_chunk_json(&r->meta, r->prompt_tokens, r->cached_tokens,
                                                  r->completion_tokens));
        srv_sse_append_done(&r->sse);
        r->stream_finished = true;
        srv_request_wake(r);
        return;
    }
    if (worst != LLM_FINISH_NONE) {
        srv_respond_later_json(r, e.status, srv_error_json(&e));
        return;
    }
    struct srv_choice_result *results = util_xmalloc(sizeof *results * (size_t)r->n_choices);
    for (int i = 0; i < r->n_choices; i++) results[i] = r->choices[i].result;
    srv_respond_later_json(r, 200,
                           srv_response_json(&r->meta, results, r->n_choices, r->prompt_tokens,
                                             r->cached_tokens));
    free(results);
}

static void choice_done(struct srv_request *r, struct srv_choice *c, const struct llm_event *ev)
{
    c->done = true;
    c->result.finish = ev->finish;
    c->result.completion_tokens = ev->completion_tokens;
    r->completion_tokens += ev->completion_tokens;
    /* a prompt counts once, as its first choice used it (the others share
     * its pages) */
    if (c->result.index % r->params.n == 0) r->cached_tokens += ev->cached_tokens;
    r->n_done++;
    if (ev->text_len > 0) choice_output(r, c, ev, false);
    bool ok = ev->finish != LLM_FINISH_ERROR && ev->finish != LLM_FINISH_CANCELLED;
    if (r->params.stream && ok)
        sse_push(r, srv_chunk_json(&r->meta, c->result.index, NULL, 0, NULL, 0, ev->finish, false,
                                   r->params.include_usage));
    if (r->n_done == r->n_choices) request_done(r);
}

void srv_generate_on_event(struct srv_daemon *d, const struct llm_event *ev, double t)
{
    struct srv_choice *c = ev->user;
    struct srv_request *r = c->req;
    bool live = !r->failed && !r->client_gone && !r->http_done;
    if (ev->type == LLM_EVENT_TOKEN) {
        if (c->last_token_t > 0) srv_metrics_observe_inter_token(&d->metrics, t - c->last_token_t);
        c->last_token_t = t;
        if (live) choice_output(r, c, ev, true);
        return;
    }
    struct srv_request_timing timing = {ev->finish,
                                        ev->prompt_tokens,
                                        ev->completion_tokens,
                                        ev->queue_s,
                                        ev->completion_tokens > 0 ? ev->first_token_s : -1,
                                        ev->total_s};
    srv_metrics_observe_request(&d->metrics, &timing);
    r->engine_pending--;
    if (live)
        choice_done(r, c, ev);
    else
        c->done = true;
    srv_request_release(r);
}

void srv_generate_cancel(struct srv_request *r)
{
    struct srv_daemon *d = r->d;
    if (!d->engine || d->engine_stopping) return; /* the stopper thread owns it */
    for (int i = 0; i < r->n_choices; i++)
        if (r->choices[i].submitted && !r->choices[i].done)
            llm_engine_cancel(d->engine, r->choices[i].engine_id);
}

void srv_generate_free(struct srv_request *r)
{
    for (int i = 0; i < r->n_choices; i++) srv_choice_result_free(&r->choices[i].result);
    free(r->choices);
    r->choices = NULL;
    srv_completion_request_free(&r->params);
    srv_buf_free(&r->sse);
}

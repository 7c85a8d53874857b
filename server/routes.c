/*
 * routes.c: the HTTP side of `llmd serve` - MHD's request handler and
 * completion callback, routing, auth, CORS, limits, responses, the
 * disconnect watcher of suspended connections, and the small endpoints
 * (/health, /metrics, /v1/models, /tokenize, /detokenize).
 */
#include "server/daemon.h"
#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static void handle_completions(struct srv_request *r, const char *url);
static void handle_chat(struct srv_request *r, const char *url);
static void handle_models(struct srv_request *r, const char *url);
static void handle_model(struct srv_request *r, const char *url);
static void handle_tokenize(struct srv_request *r, const char *url);
static void handle_detokenize(struct srv_request *r, const char *url);
static void handle_health(struct srv_request *r, const char *url);
static void handle_metrics(struct srv_request *r, const char *url);

static const struct srv_route routes[] = {
    {"/v1/completions", SRV_POST, false, false, handle_completions, false},
    {"/v1/chat/completions", SRV_POST, false, false, handle_chat, false},
    {"/v1/models", SRV_GET, false, false, handle_models, false},
    {"/v1/models/", SRV_GET, true, false, handle_model, false},
    {"/tokenize", SRV_POST, false, false, handle_tokenize, false},
    {"/detokenize", SRV_POST, false, false, handle_detokenize, false},
    {"/health", SRV_GET, false, true, handle_health, false},
    {"/metrics", SRV_GET, false, true, handle_metrics, false},
    {"/v1/pim/jobs", SRV_POST, false, false, srv_pim_handle_submit, false},
    {"/v1/pim/jobs/", SRV_GET | SRV_DELETE, true, false, srv_pim_handle_job, false},
    {"/v1/pim/devices", SRV_GET, false, false, srv_pim_handle_devices, false},
    {"/", SRV_GET, false, true, srv_web_handle, true},
    {"/ui/", SRV_GET, true, true, srv_web_handle, true},
};

/* The metrics label of paths that are not routes. */
static const char other_path[] = "other";

static const struct srv_route *find_route(const char *url)
{
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const struct srv_route *rt = &routes[i];
        size_t n = strlen(rt->path);
        if (rt->prefix ? strncmp(url, rt->path, n) == 0 && url[n] : strcmp(url, rt->path) == 0)
            return rt;
    }
    return NULL;
}

static unsigned method_bit(const char *method)
{
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0) return SRV_GET;
    if (strcmp(method, "POST") == 0) return SRV_POST;
    if (strcmp(method, "DELETE") == 0) return SRV_DELETE;
    return 0;
}

static const char *allow_header(unsigned methods)
{
    if (methods == (SRV_GET | SRV_DELETE)) return "GET, HEAD, DELETE, OPTIONS";
    return methods == SRV_GET ? "GET, HEAD, OPTIONS" : "POST, OPTIONS";
}

/* ------------------------------------------------------------ responses */

void srv_add_headers(struct srv_request *r, struct MHD_Response *resp, const char *content_type,
                     const char *const *headers)
{
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (r->cors_origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors_origin);
        if (strcmp(r->cors_origin, "*") != 0) MHD_add_response_header(resp, "Vary", "Origin");
    }
    if (r->d->draining) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    for (int i = 0; headers && headers[i]; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
}

static struct MHD_Response *make_response(struct srv_request *r, const char *content_type,
                                          char *body, size_t len, const char *const *headers)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    UTIL_CHECK(resp);
    srv_add_headers(r, resp, content_type, headers);
    return resp;
}

static void queue(struct srv_request *r, int status, struct MHD_Response *resp)
{
    if (MHD_queue_response(r->conn, (unsigned)status, resp) == MHD_YES) r->status = status;
    MHD_destroy_response(resp);
    r->state = SRV_REQ_ANSWERED;
}

void srv_respond(struct srv_request *r, int status, const char *content_type, char *body,
                 size_t len, const char *const *headers)
{
    queue(r, status, make_response(r, content_type, body, len, headers));
}

static char *dump_json(json_t *json, size_t *len)
{
    char *text = json_dumps(json, SRV_JSON_FLAGS);
    UTIL_CHECK(text);
    json_decref(json);
    *len = strlen(text);
    return text;
}

void srv_respond_json(struct srv_request *r, int status, json_t *json, const char *const *headers)
{
    size_t len;
    char *text = dump_json(json, &len);
    srv_respond(r, status, "application/json", text, len, headers);
}

void srv_respond_error(struct srv_request *r, const struct srv_error *e)
{
    static const char *const retry[] = {"Retry-After", "1", NULL};
    static const char *const bearer[] = {"WWW-Authenticate", "Bearer", NULL};
    const char *const *headers = NULL;
    if (e->status == 429 || e->status == 503)
        headers = retry;
    else if (e->status == 401)
        headers = bearer;
    srv_respond_json(r, e->status, srv_error_json(e), headers);
}

void srv_respond_later_json(struct srv_request *r, int status, json_t *json)
{
    size_t len;
    char *text = dump_json(json, &len);
    r->ready = make_response(r, "application/json", text, len, NULL);
    r->ready_status = status;
    r->state = SRV_REQ_READY;
    srv_request_wake(r);
}

/* ------------------------------------------------- suspend and watching */

static void on_watch_closed(uv_handle_t *h)
{
    struct srv_request *r = h->data;
    free(h);
    r->watches_closing--;
    srv_request_release(r);
}

static void stop_watch(struct srv_request *r)
{
    if (!r->watch) return;
    /* uv_close stops polling at once (the fd is still open here); only the
     * callback is deferred. */
    r->watches_closing++;
    uv_close((uv_handle_t *)r->watch, on_watch_closed);
    r->watch = NULL;
}

static void client_gone(struct srv_request *r)
{
    if (r->client_gone) return;
    r->client_gone = true;
    LOG_DEBUG("%s %s: the client left", r->method, r->path);
    srv_generate_cancel(r);
    srv_request_wake(r); /* MHD then closes the connection */
}

/* A suspended connection is invisible to MHD, so a client that leaves is
 * noticed here: the socket reports a hang-up, or reads as end-of-file. */
static void on_watch(uv_poll_t *p, int status, int events)
{
    struct srv_request *r = p->data;
    bool gone = status < 0 || (events & UV_DISCONNECT);
    if (!gone && (events & UV_READABLE)) {
        int fd;
        char c;
        if (uv_fileno((uv_handle_t *)p, &fd) == 0) {
            ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
        }
        if (!gone) {
            /* A pipelined request: the client is there; stop asking. */
            stop_watch(r);
            return;
        }
    }
    if (gone) client_gone(r);
}

void srv_request_suspend(struct srv_request *r)
{
    UTIL_CHECK(!r->suspended);
    MHD_suspend_connection(r->conn);
    r->suspended = true;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return;
    uv_poll_t *p = util_xmalloc(sizeof *p);
    if (uv_poll_init(&r->d->loop, p, info->connect_fd) != 0) {
        free(p);
        return;
    }
    p->data = r;
    r->watch = p;
    uv_poll_start(p, UV_READABLE | UV_DISCONNECT, on_watch);
}

void srv_request_wake(struct srv_request *r)
{
    if (!r->suspended) return;
    stop_watch(r);
    r->suspended = false;
    MHD_resume_connection(r->conn);
    r->d->mhd_run_wanted = true;
}

/* ------------------------------------------------------------- lifetime */

static struct srv_request *request_new(struct srv_daemon *d, struct MHD_Connection *conn,
                                       const char *method, const char *url)
{
    struct srv_request *r = util_xcalloc(1, sizeof *r);
    r->d = d;
    r->conn = conn;
    r->start = util_now();
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    r->next = d->requests;
    if (d->requests) d->requests->prev = r;
    d->requests = r;
    d->n_requests++;
    return r;
}

void srv_request_release(struct srv_request *r)
{
    if (!r->http_done || r->engine_pending > 0 || r->watch || r->watches_closing > 0) return;
    if (r->ready) MHD_destroy_response(r->ready);
    srv_generate_free(r);
    srv_buf_free(&r->body);
    free(r->cors_origin);
    free(r);
}

void srv_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct srv_daemon *d = cls;
    struct srv_request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) client_gone(r);
    stop_watch(r);
    r->suspended = false;
    r->http_done = true;
    if (r->prev)
        r->prev->next = r->next;
    else
        d->requests = r->next;
    if (r->next) r->next->prev = r->prev;
    d->n_requests--;

    /* 499 (nginx's): the client left before a response was sent. */
    int status = r->status ? r->status : 499;
    srv_metrics_count_http(&d->metrics, r->route ? r->route->path : other_path, status);
    if (d->cfg->access_log) {
        char tokens[64] = "";
        if (r->n_choices)
            snprintf(tokens, sizeof tokens, " prompt_tokens=%d completion_tokens=%d",
                     r->prompt_tokens, r->completion_tokens);
        LOG_INFO("%s %s %d %.1fms%s%s", r->method, r->path, status, (util_now() - r->start) * 1e3,
                 tokens,
                 toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    }
    srv_request_release(r);
}

/* --------------------------------------------------------- the handler */

/* CORS preflight: 204 with what the route allows. */
static void preflight(struct srv_request *r)
{
    const char *req_headers =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    const char *allow = allow_header(r->route->methods);
    const char *const cors[] = {"Allow",
                                allow,
                                "Access-Control-Allow-Methods",
                                allow,
                                "Access-Control-Allow-Headers",
                                req_headers ? req_headers : "Authorization, Content-Type",
                                "Access-Control-Max-Age",
                                "600",
                                NULL};
    srv_respond(r, 204, NULL, NULL, 0, r->cors_origin ? cors : cors + 6);
}

/* Checks made once the headers are in: path, method, key, limits. Answers
 * and returns true when the request goes no further. */
static bool reject_early(struct srv_request *r, const char *url, const char *method)
{
    struct srv_daemon *d = r->d;
    const struct srv_config *c = d->cfg;
    struct srv_error e;
    r->route = find_route(url);
    const char *origin = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
    const char *allowed = srv_cors_allow_origin(origin, c->cors_origins, c->n_cors_origins);
    if (allowed) r->cors_origin = util_xstrdup(allowed);

    if (!r->route) {
        srv_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no route for %s %.100s",
                      method, url);
        srv_respond_error(r, &e);
        return true;
    }
    if (strcmp(method, "OPTIONS") == 0) {
        preflight(r);
        return true;
    }
    if (!(method_bit(method) & r->route->methods)) {
        const char *const allow[] = {"Allow", allow_header(r->route->methods), NULL};
        srv_error_set(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
                      "%s is not allowed here (allowed: %s)", method,
                      allow_header(r->route->methods));
        srv_respond_json(r, 405, srv_error_json(&e), allow);
        return true;
    }
    if (c->n_api_keys > 0 && !r->route->page && (!r->route->open || c->auth_health_metrics)) {
        const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
        if (!srv_auth_bearer_ok(auth, c->api_keys, c->n_api_keys)) {
            srv_error_set(&e, 401, "invalid_request_error", "invalid_api_key", NULL,
                          auth ? "Incorrect API key provided" : "An API key is required");
            srv_respond_error(r, &e);
            return true;
        }
    }
    if (d->draining && !r->route->open) {
        srv_error_set(&e, 503, "server_error", "shutting_down", NULL,
                      "The server is shutting down");
        srv_respond_error(r, &e);
        return true;
    }
    const char *length = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (length && strtoull(length, NULL, 10) > (unsigned long long)c->max_body_bytes) {
        srv_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                      "The request body is larger than %d bytes", c->max_body_bytes);
        srv_respond_error(r, &e);
        return true;
    }
    return false;
}

enum MHD_Result srv_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct srv_daemon *d = cls;
    struct srv_request *r = *con_cls;
    if (!r) {
        r = request_new(d, conn, method, url);
        *con_cls = r;
        reject_early(r, url, method);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->state != SRV_REQ_READING) return MHD_YES; /* answered early: drop the rest */
        /* A body without Content-Length that outgrows the limit is read and
         * dropped, and answered once it ends (MHD cannot answer in the
         * middle of an upload); one that goes on far past it is cut off. */
        r->body_bytes += n;
        if (r->body_bytes > (uint64_t)d->cfg->max_body_bytes) {
            srv_buf_free(&r->body);
            return r->body_bytes > 16 * (uint64_t)d->cfg->max_body_bytes ? MHD_NO : MHD_YES;
        }
        srv_buf_append(&r->body, upload_data, n);
        return MHD_YES;
    }
    if (r->state == SRV_REQ_READING && r->body_bytes > (uint64_t)d->cfg->max_body_bytes) {
        struct srv_error e;
        srv_error_set(&e, 413, "invalid_request_error", "request_too_large", NULL,
                      "The request body is larger than %d bytes", d->cfg->max_body_bytes);
        srv_respond_error(r, &e);
        return MHD_YES;
    }
    switch (r->state) {
    case SRV_REQ_READING:
        r->route->handle(r, url);
        return MHD_YES;
    case SRV_REQ_READY:
        queue(r, r->ready_status, r->ready);
        r->ready = NULL;
        return MHD_YES;
    case SRV_REQ_WAITING:
        if (r->client_gone) return MHD_NO;
        srv_request_suspend(r);
        return MHD_YES;
    case SRV_REQ_STREAMING:
    case SRV_REQ_ANSWERED:
        return r->client_gone ? MHD_NO : MHD_YES;
    }
    return MHD_NO;
}

/* ------------------------------------------------------------ helpers */

bool srv_require_model(struct srv_request *r)
{
    int state = atomic_load(&r->d->load_state);
    struct srv_error e;
    if (r->d->draining) { /* the stopper thread may be freeing the engine */
        srv_error_set(&e, 503, "server_error", "shutting_down", NULL,
                      "The server is shutting down");
        srv_respond_error(r, &e);
        return true;
    }
    if (state == SRV_READY && r->d->engine) return false;
    srv_error_set(&e, 503, "server_error",
                  state == SRV_LOADING ? "model_loading" : "model_unavailable", NULL,
                  state == SRV_LOADING ? "The model is loading" : "The model is not available");
    srv_respond_error(r, &e);
    return true;
}

json_t *srv_parse_body(struct srv_request *r)
{
    json_error_t jerr;
    json_t *body = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    if (!body) {
        struct srv_error e;
        srv_bad_param(&e, NULL, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.column,
                      jerr.text);
        srv_respond_error(r, &e);
    }
    return body;
}

static struct srv_model_limits model_limits(const struct srv_daemon *d)
{
    struct srv_model_limits lim = {d->model_name, d->vocab_size, d->ctx_len};
    return lim;
}

/* ------------------------------------------------------------ endpoints */

static void handle_completions(struct srv_request *r, const char *url)
{
    (void)url;
    if (srv_require_model(r)) return;
    json_t *body = srv_parse_body(r);
    if (!body) return;
    srv_generate_start(r, SRV_API_COMPLETIONS, body);
    json_decref(body);
}

static void handle_chat(struct srv_request *r, const char *url)
{
    (void)url;
    if (srv_require_model(r)) return;
    json_t *body = srv_parse_body(r);
    if (!body) return;
    srv_generate_start(r, SRV_API_CHAT, body);
    json_decref(body);
}

static json_t *model_json(const struct srv_daemon *d)
{
    return json_pack("{s:s,s:s,s:I,s:s,s:i}", "id", d->model_name, "object", "model", "created",
                     (json_int_t)d->created, "owned_by", "llmd", "max_model_len", d->ctx_len);
}

static void handle_models(struct srv_request *r, const char *url)
{
    (void)url;
    if (srv_require_model(r)) return;
    srv_respond_json(r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_json(r->d)),
                     NULL);
}

static void handle_model(struct srv_request *r, const char *url)
{
    if (srv_require_model(r)) return;
    const char *id = url + strlen("/v1/models/");
    if (strcmp(id, r->d->model_name) != 0) {
        struct srv_error e;
        srv_error_set(&e, 404, "invalid_request_error", "model_not_found", "model",
                      "The model '%.100s' does not exist", id);
        srv_respond_error(r, &e);
        return;
    }
    srv_respond_json(r, 200, model_json(r->d), NULL);
}

int srv_tokenize(const llm_tokenizer *tok, const char *text, size_t len, bool add_bos,
                 int32_t **ids)
{
    int cap = (int)(len < 1u << 20 ? len : 1u << 20) + 8;
    *ids = util_xmalloc(sizeof **ids * (size_t)cap);
    int n = llm_tokenize(tok, text, len, add_bos, *ids, cap);
    if (n > cap) {
        *ids = util_xrealloc(*ids, sizeof **ids * (size_t)n);
        n = llm_tokenize(tok, text, len, add_bos, *ids, n);
    }
    if (n < 0) {
        free(*ids);
        *ids = NULL;
    }
    return n;
}

static void handle_tokenize(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_daemon *d = r->d;
    if (srv_require_model(r)) return;
    json_t *body = srv_parse_body(r);
    if (!body) return;
    struct srv_model_limits lim = model_limits(d);
    struct srv_tokenize_request req;
    struct srv_error e;
    int rc = srv_parse_tokenize(body, &lim, &req, &e);
    json_decref(body);
    if (rc) {
        srv_respond_error(r, &e);
        return;
    }
    char *rendered =
        req.messages ? srv_chat_render(d->chat_format, req.messages, req.n_messages) : NULL;
    const char *text = rendered ? rendered : req.prompt;
    size_t len = rendered ? strlen(rendered) : req.prompt_len;
    int32_t *ids = NULL;
    int n = srv_check_prompt_bytes(len, llm_tokenizer_max_piece_len(d->tok), d->ctx_len,
                                   rendered ? "messages" : "prompt", &e);
    if (n == 0) {
        n = srv_tokenize(d->tok, text, len, req.add_special && llm_tokenizer_add_bos(d->tok), &ids);
        if (n < 0)
            srv_bad_param(&e, "prompt", "the text cannot be tokenized: %s", util_strerror(n));
    }
    free(rendered);
    srv_tokenize_request_free(&req);
    if (n < 0) {
        srv_respond_error(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
    free(ids);
    srv_respond_json(
        r, 200, json_pack("{s:i,s:i,s:o}", "count", n, "max_model_len", d->ctx_len, "tokens", arr),
        NULL);
}

static void handle_detokenize(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_daemon *d = r->d;
    if (srv_require_model(r)) return;
    json_t *body = srv_parse_body(r);
    if (!body) return;
    struct srv_model_limits lim = model_limits(d);
    int32_t *ids;
    int n;
    struct srv_error e;
    int rc = srv_parse_detokenize(body, &lim, &ids, &n, &e);
    json_decref(body);
    if (rc) {
        srv_respond_error(r, &e);
        return;
    }
    char *text = llm_detokenize(d->tok, ids, n);
    free(ids);
    if (!text) {
        srv_bad_param(&e, "tokens", "a token id is out of range");
        srv_respond_error(r, &e);
        return;
    }
    srv_respond_json(r, 200, json_pack("{s:o}", "prompt", srv_json_text(text, strlen(text))), NULL);
    free(text);
}

static void handle_health(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_daemon *d = r->d;
    int state = atomic_load(&d->load_state);
    char reason[96];
    const char *status = "ok";
    if (d->draining) {
        status = "draining";
        snprintf(reason, sizeof reason, "shutting down");
    } else if (state == SRV_LOADING) {
        status = "loading";
        snprintf(reason, sizeof reason, "loading the model (%.0f%%)",
                 atomic_load(&d->load_permille) / 10.0);
    } else if (state == SRV_LOAD_FAILED) {
        status = "error";
        snprintf(reason, sizeof reason, "the model could not be loaded");
    }
    if (strcmp(status, "ok") == 0)
        srv_respond_json(r, 200, json_pack("{s:s}", "status", status), NULL);
    else
        srv_respond_json(r, 503, json_pack("{s:s,s:s}", "status", status, "reason", reason), NULL);
}

static void handle_metrics(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_engine_gauges g;
    srv_daemon_engine_gauges(r->d, &g);
    struct srv_buf out = SRV_BUF_INIT;
    /* Which replica this is, so that series scraped from several stay apart
     * (replica_id holds only letters, digits and _: no escaping needed). */
    char labels[64];
    snprintf(labels, sizeof labels, "replica_id=\"%s\"", r->d->cfg->replica_id);
    srv_metrics_write_header(&out, "llmd_build_info", "gauge",
                             "Always 1: its labels name this replica (replica_id).");
    srv_metrics_write_sample(&out, "llmd_build_info", labels, 1);
    srv_metrics_render(&r->d->metrics, &g, &out);
    size_t len = out.len;
    srv_respond(r, 200, "text/plain; version=0.0.4; charset=utf-8", srv_buf_take(&out), len, NULL);
}

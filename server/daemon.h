/*
 * daemon: the internals of `llmd serve` shared by daemon.c (loop, MHD glue,
 * model loading, signals, shutdown), routes.c (the HTTP handler, routing,
 * auth, CORS, the small endpoints) and generate.c (completions and chat:
 * engine requests, events, SSE).
 *
 * Threads. The loop thread owns everything here: libmicrohttpd runs in
 * external-poll mode inside it (its epoll fd is a uv_poll_t, its timeout a
 * uv_timer_t), and every srv_request, every MHD call and the metrics are
 * touched by it alone. Three other threads hand work back through
 * uv_async_send: the engine thread (token events, copied into a list under
 * events_lock), the loader thread (the model is loaded), and the stopper
 * thread (llm_engine_shutdown returned).
 *
 * Lifetimes. A srv_request lives from the first handler call of an HTTP
 * request until both sides are done with it: MHD's request-completed
 * callback has run (http_done) and every engine request it submitted has
 * sent its DONE event (engine_pending == 0), and its disconnect watcher is
 * closed. A client that leaves early makes http_done come first; its engine
 * requests are cancelled and their DONE events still find the srv_request.
 */
#ifndef LLMD_SERVER_DAEMON_H
#define LLMD_SERVER_DAEMON_H

#include "core/llm.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/server.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

struct srv_daemon;
struct srv_request;

/* ---------------------------------------------------------------- routes */

enum { SRV_GET = 1, SRV_POST = 2, SRV_DELETE = 4 };

struct srv_route {
    const char *path; /* also the metrics label */
    unsigned methods;
    bool prefix; /* matches path + anything */
    bool open;   /* no API key needed unless auth_health_metrics */
    void (*handle)(struct srv_request *r, const char *url);
    bool page; /* the web page's files: never a key (the page asks for one) */
};

/* ------------------------------------------------------------- requests */

enum srv_request_state {
    SRV_REQ_READING,   /* the body is coming */
    SRV_REQ_WAITING,   /* non-streamed generation under way; connection suspended */
    SRV_REQ_READY,     /* the response is built; queued at the next handler call */
    SRV_REQ_STREAMING, /* an SSE response is queued and being fed */
    SRV_REQ_ANSWERED,  /* a response is queued */
};

/* One engine request: a choice of a completion. */
struct srv_choice {
    struct srv_request *req;
    struct srv_choice_result result;
    uint64_t engine_id;
    bool submitted;
    bool done;
    double last_token_t; /* for inter-token gaps; 0 before the first */
};

struct srv_request {
    struct srv_daemon *d;
    struct MHD_Connection *conn;
    struct srv_request *prev, *next; /* the daemon's list of live requests */
    const struct srv_route *route;   /* NULL: unknown path */
    char method[16];
    char path[128]; /* for the access log, truncated */
    double start;
    int status; /* sent; 0 = none yet */
    enum srv_request_state state;
    struct srv_buf body;
    uint64_t body_bytes; /* received, kept or not */
    char *cors_origin;   /* Access-Control-Allow-Origin to send, or NULL */

    bool http_done;
    bool client_gone;
    bool suspended;
    uv_poll_t *watch; /* disconnect watcher while suspended */
    int watches_closing;
    int engine_pending; /* submitted, no DONE yet */

    /* a built response waiting for the handler (SRV_REQ_READY) */
    struct MHD_Response *ready;
    int ready_status;

    /* generation */
    struct srv_completion_request params;
    struct srv_response_meta meta;
    char id[48];
    struct srv_choice *choices;
    int n_choices;
    int n_done;
    int prompt_tokens;
    int cached_tokens; /* of them, from the prefix cache */
    int completion_tokens;
    bool failed;          /* answered with an error; engine events are dropped */
    struct srv_buf sse;   /* SSE bytes not yet handed to MHD */
    bool stream_finished; /* [DONE] is in sse */
    double sse_last;      /* util_now() when the stream last got bytes */

    /* a PIM job request waiting for its job (pim_http.c) */
    uint64_t pim_wait_id; /* 0 = not waiting */
    double pim_deadline;  /* util_now() clock */
    int pim_wait_status;  /* the status if the job is still going at the deadline */
};

/* --------------------------------------------------------------- daemon */

enum srv_load_state { SRV_LOADING, SRV_READY, SRV_LOAD_FAILED };

/* An engine event copied off the engine thread. */
struct srv_event {
    struct srv_event *next;
    struct llm_event ev;
    double t; /* util_now() when the engine reported it */
    struct llm_logprob top[LLM_MAX_LOGPROBS];
    char text[]; /* ev.text points here */
};

struct srv_daemon {
    struct srv_config *cfg;
    uv_loop_t loop;
    struct MHD_Daemon *mhd;
    int port;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    bool mhd_run_wanted; /* a connection was resumed: run MHD after the events */
    bool mhd_rerun;      /* a connection closed: run MHD once more */
    uv_async_t events_async;
    uv_async_t loaded_async;
    uv_async_t stopped_async;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uv_timer_t keepalive_timer; /* SSE comments on quiet streams (generate.c) */

    /* the model, once loaded */
    atomic_int load_state;    /* enum srv_load_state */
    atomic_int load_permille; /* loading progress */
    uv_thread_t loader;
    int load_rc;
    char load_error[512];
    llm_model *model;
    const llm_tokenizer *tok;
    llm_engine *engine;
    char model_name[256];
    int ctx_len;
    int vocab_size;
    enum srv_chat_format chat_format;
    int64_t created; /* when the model was loaded (Unix seconds) */

    /* engine -> loop */
    pthread_mutex_t events_lock;
    struct srv_event *events_head, *events_tail;

    /* shutdown */
    bool draining;
    bool engine_stopping; /* the stopper thread owns the engine */
    uv_thread_t stopper;
    double drain_deadline;
    int exit_code;
    struct srv_engine_gauges last_gauges;

    struct srv_pim *pim; /* the PIM accelerator pool (pim_http.c) */

    struct srv_request *requests; /* live HTTP requests */
    int n_requests;
    struct srv_metrics metrics;
    struct util_rng rng;
};

/* generate.c: an SSE comment for every stream quiet for sse_keepalive_s */
void srv_streams_keepalive(struct srv_daemon *d);

/* daemon.c */
void srv_daemon_run_mhd(struct srv_daemon *d);
void srv_daemon_engine_gauges(struct srv_daemon *d, struct srv_engine_gauges *out);

/* routes.c: the MHD callbacks and responses */
enum MHD_Result srv_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls);
void srv_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode toe);
/* Adds Content-Type (unless NULL), the CORS headers the request earned,
 * Connection: close while draining, and `headers` (NULL or a
 * NULL-terminated list of name, value pairs). */
void srv_add_headers(struct srv_request *r, struct MHD_Response *resp, const char *content_type,
                     const char *const *headers);
/* Queues a response now (inside the handler). `body` is malloc'ed and taken.
 * `headers` as for srv_add_headers. */
void srv_respond(struct srv_request *r, int status, const char *content_type, char *body,
                 size_t len, const char *const *headers);
void srv_respond_json(struct srv_request *r, int status, json_t *json, const char *const *headers);
void srv_respond_error(struct srv_request *r, const struct srv_error *e);
/* Builds a response to be queued at the next handler call and wakes the
 * connection (outside the handler). */
void srv_respond_later_json(struct srv_request *r, int status, json_t *json);
/* Suspends the connection and watches the socket for the client leaving
 * (inside an MHD callback). */
void srv_request_suspend(struct srv_request *r);
/* Resumes a suspended connection (outside MHD callbacks). */
void srv_request_wake(struct srv_request *r);
/* Frees the request when nothing refers to it any more. */
void srv_request_release(struct srv_request *r);
/* A 503 while the model is not ready; false when it is. */
bool srv_require_model(struct srv_request *r);
/* Tokenizes text into a new array *ids (NULL on failure): the count or a
 * negative error. */
int srv_tokenize(const llm_tokenizer *tok, const char *text, size_t len, bool add_bos,
                 int32_t **ids);
/* Parses the body as JSON or answers 400. New reference or NULL. */
json_t *srv_parse_body(struct srv_request *r);

/* pim_http.c: the PIM job endpoints. srv_pim_create starts the pool (on
 * failure d->pim may still be set: srv_pim_stop and srv_pim_free clean up);
 * srv_pim_stop, on the loop thread at shutdown, stops it and closes its
 * handles; srv_pim_free, after the loop ended, frees the rest. */
struct srv_pim;
int srv_pim_create(struct srv_daemon *d, char *err, size_t err_len);
void srv_pim_stop(struct srv_daemon *d);
/* Answers the requests waiting for PIM jobs now (draining). */
void srv_pim_answer_waiters(struct srv_daemon *d);
void srv_pim_free(struct srv_daemon *d);
void srv_pim_handle_submit(struct srv_request *r, const char *url);
void srv_pim_handle_job(struct srv_request *r, const char *url);
void srv_pim_handle_devices(struct srv_request *r, const char *url);

/* The web page (web.c): GET / and /ui/app.js, /ui/style.css. */
void srv_web_handle(struct srv_request *r, const char *url);

/* generate.c */
void srv_generate_start(struct srv_request *r, enum srv_api api, json_t *body);
void srv_generate_on_event(struct srv_daemon *d, const struct llm_event *ev, double t);
/* Cancels the request's engine requests that have not finished. */
void srv_generate_cancel(struct srv_request *r);
void srv_generate_free(struct srv_request *r);

#endif

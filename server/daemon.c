/*
 * daemon.c: `llmd serve` - the libuv loop, libmicrohttpd in external-poll
 * mode, the model loader thread, the engine bridge, signals and draining.
 * See daemon.h for the threads and lifetimes.
 */
#include "server/daemon.h"

#include "util/util.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* After the engine stopped, responses still being written get this long. */
#define SRV_DRAIN_WRITE_S 5.0

static void begin_shutdown(struct srv_daemon *d, const char *why);

/* ------------------------------------------------------------ MHD glue */

static void on_mhd_timer(uv_timer_t *t)
{
    srv_daemon_run_mhd(t->data);
}

/* Lets MHD do all it can without blocking, then arms the timer for what it
 * wants next (connection timeouts, or at once when it has work left). */
void srv_daemon_run_mhd(struct srv_daemon *d)
{
    if (!d->mhd) return;
    MHD_run(d->mhd);
    if (d->mhd_rerun) {
        d->mhd_rerun = false;
        uv_timer_start(&d->mhd_timer, on_mhd_timer, 0, 0);
        return;
    }
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(d->mhd, &ms) == MHD_YES)
        uv_timer_start(&d->mhd_timer, on_mhd_timer, ms, 0);
    else
        uv_timer_stop(&d->mhd_timer);
}

static void on_mhd_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    srv_daemon_run_mhd(p->data);
}

/* A connection closed: when MHD was at its connection limit it takes the
 * listen socket back into its epoll set only on its next run, and a client
 * waiting in the backlog makes no event until then. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)conn;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) ((struct srv_daemon *)cls)->mhd_rerun = true;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (!util_log_enabled(UTIL_LOG_DEBUG)) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    LOG_DEBUG("http: %s", msg);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes %XX in the URL in place, as MHD does, except %00: MHD's decoder
 * would cut the path there ("/health%00x" served as /health), so it stays
 * as written and such a path matches no route. */
static size_t unescape_url(void *cls, struct MHD_Connection *conn, char *uri)
{
    (void)cls;
    (void)conn;
    char *out = uri;
    for (const char *in = uri; *in; out++) {
        int hi = in[0] == '%' ? hex_value(in[1]) : -1;
        int lo = hi >= 0 ? hex_value(in[2]) : -1;
        if (lo >= 0 && (hi | lo) != 0) {
            *out = (char)(hi * 16 + lo);
            in += 3;
        } else {
            *out = *in++;
        }
    }
    *out = '\0';
    return (size_t)(out - uri);
}

/* Binds the address and starts MHD; d->port gets the port bound. */
static int start_http(struct srv_daemon *d)
{
    const struct srv_config *c = d->cfg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    int rc = getaddrinfo(c->host, port, &hints, &ai);
    if (rc) {
        LOG_ERROR("cannot resolve host '%s': %s", c->host, gai_strerror(rc));
        return -EINVAL;
    }
    struct sockaddr_storage addr;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    bool ipv6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);

    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
    d->mhd = MHD_start_daemon(
        flags, (uint16_t)c->port, NULL, NULL, srv_on_request, d, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, d, MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_NOTIFY_COMPLETED, srv_on_completed, d,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, d, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)c->max_header_bytes, MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(c->idle_timeout_s + 0.5),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_url, d, MHD_OPTION_END);
    if (!d->mhd) {
        LOG_ERROR("cannot listen on %s:%d (address in use, or not ours?)", c->host, c->port);
        return -EADDRINUSE;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d->mhd, MHD_DAEMON_INFO_BIND_PORT);
    d->port = info ? info->port : c->port;
    info = MHD_get_daemon_info(d->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    UTIL_CHECK(info);
    UTIL_CHECK(uv_poll_init(&d->loop, &d->mhd_poll, info->epoll_fd) == 0);
    d->mhd_poll.data = d;
    UTIL_CHECK(uv_poll_start(&d->mhd_poll, UV_READABLE, on_mhd_poll) == 0);
    return 0;
}

/* --------------------------------------------------------- engine bridge */

/* Engine thread: copies the event and wakes the loop. Never blocks for
 * long: the lock guards a list append. */
static void on_engine_event(const struct llm_event *ev, void *ctx)
{
    struct srv_daemon *d = ctx;
    size_t text_len = ev->text && ev->text_len > 0 ? (size_t)ev->text_len : 0;
    struct srv_event *e = util_xmalloc(sizeof *e + text_len + 1);
    e->next = NULL;
    e->ev = *ev;
    e->t = util_now();
    if (text_len) memcpy(e->text, ev->text, text_len);
    e->text[text_len] = '\0';
    e->ev.text = e->text;
    e->ev.text_len = (int)text_len;
    int n_top = ev->top && ev->n_top > 0 ? ev->n_top : 0;
    if (n_top > LLM_MAX_LOGPROBS) n_top = LLM_MAX_LOGPROBS;
    if (n_top) memcpy(e->top, ev->top, sizeof *e->top * (size_t)n_top);
    e->ev.top = e->top;
    e->ev.n_top = n_top;

    pthread_mutex_lock(&d->events_lock);
    if (d->events_tail)
        d->events_tail->next = e;
    else
        d->events_head = e;
    d->events_tail = e;
    pthread_mutex_unlock(&d->events_lock);
    uv_async_send(&d->events_async);
}

/* Loop thread: hands every queued event to generate.c, then lets MHD send
 * what the resumed connections have. */
static void drain_events(struct srv_daemon *d)
{
    pthread_mutex_lock(&d->events_lock);
    struct srv_event *e = d->events_head;
    d->events_head = d->events_tail = NULL;
    pthread_mutex_unlock(&d->events_lock);
    while (e) {
        struct srv_event *next = e->next;
        srv_generate_on_event(d, &e->ev, e->t);
        free(e);
        e = next;
    }
    if (d->mhd_run_wanted) {
        d->mhd_run_wanted = false;
        srv_daemon_run_mhd(d);
    }
}

static void on_events(uv_async_t *a)
{
    drain_events(a->data);
}

void srv_daemon_engine_gauges(struct srv_daemon *d, struct srv_engine_gauges *out)
{
    /* While the stopper thread owns the engine, the last figures stand. */
    if (d->engine && !d->engine_stopping) {
        d->last_gauges.valid = true;
        llm_engine_stats(d->engine, &d->last_gauges.stats);
    }
    *out = d->last_gauges;
}

/* ---------------------------------------------------------- model load */

static void on_load_progress(const char *what, double fraction, void *ctx)
{
    struct srv_daemon *d = ctx;
    int permille = (int)(fraction * 1000.0);
    int before = atomic_exchange(&d->load_permille, permille);
    if (permille / 100 != before / 100 || permille == 1000)
        LOG_INFO("loading model: %s %3.0f%%", what, fraction * 100.0);
}

static void loader_main(void *arg)
{
    struct srv_daemon *d = arg;
    struct llm_model_options o;
    srv_config_model_options(d->cfg, &o);
    o.progress = on_load_progress;
    o.progress_ctx = d;
    d->load_rc = llm_model_load(d->cfg->model, &o, &d->model, d->load_error, sizeof d->load_error);
    uv_async_send(&d->loaded_async);
}

static void on_loaded(uv_async_t *a)
{
    struct srv_daemon *d = a->data;
    uv_thread_join(&d->loader);
    if (d->load_rc) {
        LOG_ERROR("cannot load the model: %s", d->load_error);
        snprintf(d->load_error, sizeof d->load_error, "the model could not be loaded");
        atomic_store(&d->load_state, SRV_LOAD_FAILED);
        d->exit_code = 1;
        begin_shutdown(d, "no model");
        return;
    }
    const struct llm_config *mc = llm_model_config(d->model);
    d->tok = llm_model_tokenizer(d->model);
    d->ctx_len = mc->ctx_len;
    d->vocab_size = mc->vocab_size;
    d->created = (int64_t)time(NULL);
    snprintf(d->model_name, sizeof d->model_name, "%s",
             d->cfg->served_model_name[0] ? d->cfg->served_model_name : llm_model_name(d->model));
    bool recognized;
    const char *tmpl = llm_model_chat_template(d->model);
    d->chat_format = srv_chat_detect(tmpl, &recognized);
    if (!recognized)
        LOG_WARN("the model's chat template is not one we render; chat uses the built-in format");
    srv_metrics_set_context_length(&d->metrics, d->ctx_len);

    if (d->draining) { /* a signal came while loading */
        atomic_store(&d->load_state, SRV_READY);
        begin_shutdown(d, "stopping after load");
        return;
    }
    struct llm_engine_config ec;
    srv_config_engine_config(d->cfg, &ec);
    int rc = llm_engine_create(d->model, &ec, on_engine_event, d, &d->engine);
    if (rc) {
        LOG_ERROR("cannot start the engine: %s", util_strerror(rc));
        atomic_store(&d->load_state, SRV_LOAD_FAILED);
        d->exit_code = 1;
        begin_shutdown(d, "no engine");
        return;
    }
    atomic_store(&d->load_state, SRV_READY);
    LOG_INFO("model '%s' ready: %d layers, dim %d, context %d, vocab %d, %s, kv %s, chat %s",
             d->model_name, mc->n_layers, mc->dim, d->ctx_len, d->vocab_size,
             llm_precision_name(llm_model_precision(d->model)), d->cfg->kv_type,
             srv_chat_format_name(d->chat_format));
}

/* ------------------------------------------------------------ shutdown */

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* The last step: every connection is resumed (MHD requires it before
 * stopping), MHD stops (completing what is left), the handles close and
 * uv_run returns. */
static void finish_shutdown(struct srv_daemon *d)
{
    uv_timer_stop(&d->drain_timer);
    uv_timer_stop(&d->keepalive_timer);
    srv_pim_stop(d);
    for (struct srv_request *r = d->requests; r; r = r->next)
        if (r->suspended) {
            r->client_gone = true; /* nothing more will be sent */
            srv_request_wake(r);
        }
    if (d->mhd) {
        uv_poll_stop(&d->mhd_poll);
        close_handle((uv_handle_t *)&d->mhd_poll);
        MHD_stop_daemon(d->mhd);
        d->mhd = NULL;
    }
    close_handle((uv_handle_t *)&d->mhd_timer);
    close_handle((uv_handle_t *)&d->drain_timer);
    close_handle((uv_handle_t *)&d->keepalive_timer);
    close_handle((uv_handle_t *)&d->events_async);
    close_handle((uv_handle_t *)&d->loaded_async);
    close_handle((uv_handle_t *)&d->stopped_async);
    close_handle((uv_handle_t *)&d->sigterm);
    close_handle((uv_handle_t *)&d->sigint);
    LOG_INFO("stopped");
}

/* Waits for the responses still being written, up to SRV_DRAIN_WRITE_S. */
static void on_drain_timer(uv_timer_t *t)
{
    struct srv_daemon *d = t->data;
    if (d->n_requests == 0 || util_now() > d->drain_deadline) finish_shutdown(d);
}

static void engine_stopped(struct srv_daemon *d)
{
    d->drain_deadline = util_now() + SRV_DRAIN_WRITE_S;
    uv_timer_start(&d->drain_timer, on_drain_timer, 0, 20);
}

static void stopper_main(void *arg)
{
    struct srv_daemon *d = arg;
    llm_engine_shutdown(d->engine, d->cfg->grace_s);
    uv_async_send(&d->stopped_async);
}

static void on_stopped(uv_async_t *a)
{
    struct srv_daemon *d = a->data;
    uv_thread_join(&d->stopper);
    d->engine = NULL;
    d->engine_stopping = false;
    drain_events(d); /* every DONE is queued by now */
    engine_stopped(d);
}

/* Stops accepting, then drains: the engine finishes what it has (up to
 * grace_s) on the stopper thread while the loop keeps serving it. */
static void begin_shutdown(struct srv_daemon *d, const char *why)
{
    if (!d->draining) {
        d->draining = true;
        srv_pim_answer_waiters(d);
        LOG_INFO("shutting down (%s): no new requests; up to %.0f s for running ones", why,
                 d->cfg->grace_s);
        if (d->mhd) {
            MHD_socket s = MHD_quiesce_daemon(d->mhd);
            if (s != MHD_INVALID_SOCKET) close(s);
        }
    }
    if (atomic_load(&d->load_state) == SRV_LOADING) return; /* on_loaded comes back here */
    if (d->engine) {
        if (d->engine_stopping) return;
        d->engine_stopping = true;
        UTIL_CHECK(uv_thread_create(&d->stopper, stopper_main, d) == 0);
        return;
    }
    engine_stopped(d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct srv_daemon *d = s->data;
    if (d->draining) {
        LOG_WARN("second %s: exiting now", strsignal(signum));
        _exit(1);
    }
    begin_shutdown(d, strsignal(signum));
}

/* ---------------------------------------------------------------- main */

static void on_keepalive_timer(uv_timer_t *t)
{
    srv_streams_keepalive(t->data);
}

static int init_loop(struct srv_daemon *d)
{
    UTIL_CHECK(uv_loop_init(&d->loop) == 0);
    uv_timer_init(&d->loop, &d->mhd_timer);
    uv_timer_init(&d->loop, &d->drain_timer);
    uv_timer_init(&d->loop, &d->keepalive_timer);
    uv_async_init(&d->loop, &d->events_async, on_events);
    uv_async_init(&d->loop, &d->loaded_async, on_loaded);
    uv_async_init(&d->loop, &d->stopped_async, on_stopped);
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    d->mhd_timer.data = d->drain_timer.data = d->keepalive_timer.data = d;
    if (d->cfg->sse_keepalive_s > 0) { /* checked at a quarter of the interval */
        uint64_t ms = (uint64_t)(d->cfg->sse_keepalive_s * 250);
        uv_timer_start(&d->keepalive_timer, on_keepalive_timer, ms ? ms : 1, ms ? ms : 1);
    }
    d->events_async.data = d->loaded_async.data = d->stopped_async.data = d;
    d->sigterm.data = d->sigint.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    return 0;
}

int srv_serve(struct srv_config *config)
{
    char err[512];
    enum util_log_level level;
    UTIL_CHECK(util_log_level_parse(config->log_level, &level) == 0);
    util_log_configure(level, config->log_json);
    signal(SIGPIPE, SIG_IGN);

    struct srv_daemon *d = util_xcalloc(1, sizeof *d);
    d->cfg = config;
    pthread_mutex_init(&d->events_lock, NULL);
    srv_metrics_init(&d->metrics);
    util_rng_seed(&d->rng,
                  (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(util_now() * 1e9));
    atomic_init(&d->load_state, SRV_LOADING);
    init_loop(d);
    if (config->config_path) LOG_INFO("settings from %s", config->config_path);

    if (srv_pim_create(d, err, sizeof err)) {
        fprintf(stderr, "llmd serve: %s\n", err);
        d->exit_code = 2;
        atomic_store(&d->load_state, SRV_LOAD_FAILED);
        begin_shutdown(d, "no PIM pool");
    } else if (start_http(d)) {
        d->exit_code = 1;
        atomic_store(&d->load_state, SRV_LOAD_FAILED);
        begin_shutdown(d, "cannot listen");
    } else {
        printf("llmd: listening on http://%s%s%s:%d\n", strchr(config->host, ':') ? "[" : "",
               config->host, strchr(config->host, ':') ? "]" : "", d->port);
        fflush(stdout);
        LOG_INFO("listening on %s port %d; loading %s%s%s", config->host, d->port, config->model,
                 config->replica_id[0] ? "; replica " : "", config->replica_id);
        UTIL_CHECK(uv_thread_create(&d->loader, loader_main, d) == 0);
        srv_daemon_run_mhd(d);
    }

    uv_run(&d->loop, UV_RUN_DEFAULT);
    UTIL_CHECK(uv_loop_close(&d->loop) == 0);

    int exit_code = d->exit_code;
    if (d->model) llm_model_free(d->model);
    srv_pim_free(d);
    srv_metrics_free(&d->metrics);
    pthread_mutex_destroy(&d->events_lock);
    free(d);
    return exit_code;
}

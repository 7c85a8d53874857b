/*
 * pim_http.c: the PIM accelerator pool as a network service.
 *
 *   POST   /v1/pim/jobs        submit (202 with the queued job; with "wait"
 *                              in the body or ?wait=S, the finished job)
 *   GET    /v1/pim/jobs/{id}   the job; ?wait=S waits for it to finish
 *   DELETE /v1/pim/jobs/{id}   cancel
 *   GET    /v1/pim/devices     devices, presets, queue
 *
 * Threads. Jobs run on the pool's workers; their on_complete callback only
 * appends to a list under `lock` and wakes the loop (uv_async_send). The
 * loop thread then counts the metrics and answers the requests waiting for
 * those jobs. A waiting request is suspended like a non-streamed completion
 * and holds nothing but the job id and a deadline; one timer serves every
 * deadline. Nothing here blocks the loop thread on a job.
 */
#include "server/daemon.h"
#include "server/pim_json.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PIM_MAX_LISTED_DEVICES 256
/* DELETE of a running job waits this long for it to reach a check point. */
#define PIM_CANCEL_WAIT_S 5.0

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1,      2.5,   5,    10,    30,   60,  300};

struct srv_pim {
    struct srv_daemon *d;
    pim_pool *pool;
    pim_presets *presets;
    struct pim_json_limits lim;

    /* workers -> loop */
    pthread_mutex_t lock;
    struct pim_completion *pending;
    int n_pending, cap_pending;
    uv_async_t async;
    uv_timer_t timer; /* the earliest wait deadline */
    bool stopped;

    /* metrics, loop thread only */
    uint64_t submitted[PIM_JOB_TYPE_COUNT];
    uint64_t finished[PIM_JOB_TYPE_COUNT][PIM_STATUS_COUNT];
    uint64_t rejected_full;
    struct srv_histogram latency;
    double energy;
    uint64_t adc_conversions;
};

/* ------------------------------------------------------------ responses */

static void respond_pim_error(struct srv_request *r, int status, const struct pim_json_error *e)
{
    srv_respond_json(r, status, pim_json_error_body(e), NULL);
}

static void not_found(struct srv_request *r, const char *id)
{
    struct srv_error e;
    srv_error_set(&e, 404, "invalid_request_error", "job_not_found", "id",
                  "No PIM job '%.64s' (unknown, or its result expired)", id);
    srv_respond_error(r, &e);
}

static bool is_finished(enum pim_job_status s)
{
    return s == PIM_STATUS_DONE || s == PIM_STATUS_FAILED || s == PIM_STATUS_CANCELLED;
}

/* The job as JSON (NULL when it is gone); *finished says whether it ended. */
static json_t *job_json(struct srv_pim *p, uint64_t id, bool *finished)
{
    struct pim_job_view view;
    if (pim_pool_acquire(p->pool, id, &view) != 0) return NULL;
    json_t *j = pim_json_job(&view, &p->lim);
    if (finished) *finished = is_finished(view.status);
    pim_pool_release(p->pool, &view);
    return j;
}

/* Answers a suspended waiter with the job as it is now. */
static void answer_waiter(struct srv_request *r)
{
    struct srv_pim *p = r->d->pim;
    uint64_t id = r->pim_wait_id;
    r->pim_wait_id = 0;
    bool finished = false;
    json_t *j = job_json(p, id, &finished);
    if (!j) {
        char name[PIM_JOB_ID_MAX];
        pim_json_format_job_id(p->lim.replica_id, id, name);
        struct srv_error e;
        srv_error_set(&e, 404, "invalid_request_error", "job_not_found", "id",
                      "No PIM job '%s' (its result expired)", name);
        srv_respond_later_json(r, 404, srv_error_json(&e));
        return;
    }
    srv_respond_later_json(r, r->pim_wait_status && !finished ? r->pim_wait_status : 200, j);
}

/* ---------------------------------------------------------------- waits */

static void on_wait_timer(uv_timer_t *t);

/* Arms the timer for the earliest deadline among the waiters. */
static void rearm(struct srv_pim *p)
{
    double first = INFINITY;
    for (struct srv_request *r = p->d->requests; r; r = r->next)
        if (r->pim_wait_id && r->pim_deadline < first) first = r->pim_deadline;
    if (!isfinite(first)) {
        uv_timer_stop(&p->timer);
        return;
    }
    double ms = (first - util_now()) * 1e3;
    uv_timer_start(&p->timer, on_wait_timer, ms > 0 ? (uint64_t)ms + 1 : 0, 0);
}

static void on_wait_timer(uv_timer_t *t)
{
    struct srv_pim *p = t->data;
    double now = util_now();
    for (struct srv_request *r = p->d->requests; r; r = r->next)
        if (r->pim_wait_id && r->pim_deadline <= now) answer_waiter(r);
    rearm(p);
    if (p->d->mhd_run_wanted) {
        p->d->mhd_run_wanted = false;
        srv_daemon_run_mhd(p->d);
    }
}

/* Suspends r until job `id` finishes or `seconds` pass; then the answer is
 * the job with status 200, or `unfinished_status` if it is still going. */
static void wait_for(struct srv_request *r, uint64_t id, double seconds, int unfinished_status)
{
    r->pim_wait_id = id;
    r->pim_wait_status = unfinished_status;
    r->pim_deadline = util_now() + seconds;
    r->state = SRV_REQ_WAITING;
    srv_request_suspend(r);
    rearm(r->d->pim);
}

/* Answers now when the job is finished or no wait is asked, else waits. */
static void answer_or_wait(struct srv_request *r, uint64_t id, double wait_s, int unfinished_status)
{
    bool finished = false;
    json_t *j = job_json(r->d->pim, id, &finished);
    if (!j) {
        char name[PIM_JOB_ID_MAX];
        pim_json_format_job_id(r->d->pim->lim.replica_id, id, name);
        not_found(r, name);
        return;
    }
    if (finished || wait_s <= 0) {
        srv_respond_json(r, finished ? 200 : unfinished_status, j, NULL);
        return;
    }
    json_decref(j);
    wait_for(r, id, wait_s, unfinished_status);
}

/* ------------------------------------------------------ completions in */

/* Worker thread (or the cancelling thread): hand it to the loop. */
static void on_pool_complete(const struct pim_completion *done, void *user)
{
    struct srv_pim *p = user;
    pthread_mutex_lock(&p->lock);
    if (p->n_pending == p->cap_pending) {
        p->cap_pending = p->cap_pending ? 2 * p->cap_pending : 16;
        p->pending = util_xrealloc(p->pending, sizeof *p->pending * (size_t)p->cap_pending);
    }
    p->pending[p->n_pending++] = *done;
    bool stopped = p->stopped;
    pthread_mutex_unlock(&p->lock);
    if (!stopped) uv_async_send(&p->async);
}

static void count_completion(struct srv_pim *p, const struct pim_completion *c)
{
    if ((int)c->type < 0 || c->type >= PIM_JOB_TYPE_COUNT) return;
    if ((int)c->status < 0 || c->status >= PIM_STATUS_COUNT) return;
    p->finished[c->type][c->status]++;
    srv_histogram_observe(&p->latency, c->queue_seconds + c->run_seconds);
    if (isfinite(c->energy)) p->energy += c->energy;
    p->adc_conversions += c->adc_conversions;
}

static void on_completions(uv_async_t *a)
{
    struct srv_pim *p = a->data;
    pthread_mutex_lock(&p->lock);
    struct pim_completion *list = p->pending;
    int n = p->n_pending;
    p->pending = NULL;
    p->n_pending = p->cap_pending = 0;
    pthread_mutex_unlock(&p->lock);
    bool woke = false;
    for (int i = 0; i < n; i++) {
        count_completion(p, &list[i]);
        for (struct srv_request *r = p->d->requests; r; r = r->next)
            if (r->pim_wait_id == list[i].id) {
                answer_waiter(r);
                woke = true;
            }
    }
    free(list);
    if (woke) rearm(p);
    if (p->d->mhd_run_wanted) {
        p->d->mhd_run_wanted = false;
        srv_daemon_run_mhd(p->d);
    }
}

/* --------------------------------------------------------------- helpers */

/* A plain decimal number: strtod alone also takes hex, "inf", "nan" and
 * leading spaces, which a seconds value has no business being. */
static bool parse_decimal(const char *q, double *v)
{
    if (!((*q >= '0' && *q <= '9') || *q == '.') || q[strspn(q, "0123456789.eE+-")]) return false;
    char *end;
    *v = strtod(q, &end);
    return end != q && !*end;
}

/* Reads ?wait= into *seconds (unchanged when absent). False after a 400. */
static bool query_wait(struct srv_request *r, double *seconds)
{
    const char *q = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "wait");
    if (!q) return true;
    double v = -1;
    double max = r->d->cfg->pim_max_wait_s;
    if (!parse_decimal(q, &v) || !(v >= 0) || v > max) {
        struct srv_error e;
        srv_bad_param(&e, "wait", "'wait' must be a number of seconds from 0 to %g", max);
        srv_respond_error(r, &e);
        return false;
    }
    *seconds = v;
    return true;
}

/* Takes "wait" out of a job object and names the default preset when it
 * names no device, so that pim_json (which refuses unknown fields and
 * defaults to isaac) sees a plain job. False after answering 400. */
static bool take_server_fields(struct srv_request *r, json_t *root, double *wait_s)
{
    if (!json_is_object(root)) return true; /* pim_json says what is wrong */
    json_t *wait = json_object_get(root, "wait");
    if (wait) {
        double v = json_is_number(wait) ? json_number_value(wait) : -1;
        double max = r->d->cfg->pim_max_wait_s;
        if (!(v >= 0) || v > max) {
            struct srv_error e;
            srv_bad_param(&e, "wait", "'wait' must be a number of seconds from 0 to %g", max);
            srv_respond_error(r, &e);
            return false;
        }
        *wait_s = v;
        json_object_del(root, "wait");
    }
    const char *preset = r->d->cfg->pim_preset;
    json_t *device = json_object_get(root, "device");
    if (!device)
        json_object_set_new(root, "device", json_string(preset));
    else if (json_is_object(device) && !json_object_get(device, "preset"))
        json_object_set_new(device, "preset", json_string(preset));
    return true;
}

/* ------------------------------------------------------------ endpoints */

void srv_pim_handle_submit(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_pim *p = r->d->pim;
    double wait_s = 0;
    const char *text = r->body.data ? r->body.data : "";
    json_error_t parse_err;
    json_t *root = json_loadb(text, r->body.len, JSON_REJECT_DUPLICATES, &parse_err);
    if ((root && !take_server_fields(r, root, &wait_s)) || !query_wait(r, &wait_s)) {
        json_decref(root);
        return;
    }
    struct pim_job job;
    struct pim_json_error jerr = {0};
    int rc = root ? pim_json_parse_job_object(root, &p->lim, p->presets, &job, &jerr)
                  : pim_json_parse_job(text, r->body.len, &p->lim, p->presets, &job, &jerr);
    json_decref(root);
    if (rc) {
        respond_pim_error(r, rc == -E2BIG ? 413 : 400, &jerr);
        return;
    }
    enum pim_job_type type = job.type;
    uint64_t id;
    struct pim_error perr = {0};
    rc = pim_pool_submit(p->pool, &job, &id, &perr);
    if (rc) {
        pim_job_free(&job);
        struct srv_error e;
        if (rc == -EAGAIN) {
            p->rejected_full++;
            srv_error_set(&e, 429, "rate_limit_error", "queue_full", NULL,
                          "The PIM job queue is full (%d jobs); retry later", r->d->cfg->pim_queue);
        } else if (rc == -ESHUTDOWN) {
            srv_error_set(&e, 503, "server_error", "shutting_down", NULL,
                          "The server is shutting down");
        } else {
            srv_bad_param(&e, perr.param[0] ? perr.param : NULL, "%s",
                          perr.message[0] ? perr.message : util_strerror(rc));
        }
        srv_respond_error(r, &e);
        return;
    }
    p->submitted[type]++;
    answer_or_wait(r, id, wait_s, 202);
}

void srv_pim_handle_job(struct srv_request *r, const char *url)
{
    struct srv_pim *p = r->d->pim;
    const char *name = url + strlen("/v1/pim/jobs/");
    uint64_t id;
    if (pim_json_parse_job_id(p->lim.replica_id, name, &id) != 0) {
        not_found(r, name);
        return;
    }
    if (strcmp(r->method, "DELETE") == 0) {
        int rc = pim_pool_cancel(p->pool, id);
        if (rc == -ENOENT) {
            not_found(r, name);
            return;
        }
        if (rc == -EALREADY) {
            struct srv_error e;
            srv_error_set(&e, 409, "invalid_request_error", "job_finished", "id",
                          "The PIM job '%.64s' has already finished", name);
            srv_respond_error(r, &e);
            return;
        }
        /* A running job stops at its next check point; answer once it has. */
        double wait_s = PIM_CANCEL_WAIT_S;
        if (wait_s > r->d->cfg->pim_max_wait_s) wait_s = r->d->cfg->pim_max_wait_s;
        answer_or_wait(r, id, wait_s, 200);
        return;
    }
    double wait_s = 0;
    if (!query_wait(r, &wait_s)) return;
    answer_or_wait(r, id, wait_s, 200);
}

void srv_pim_handle_devices(struct srv_request *r, const char *url)
{
    (void)url;
    struct srv_pim *p = r->d->pim;
    struct pim_device_info info[PIM_MAX_LISTED_DEVICES];
    int n = pim_pool_devices(p->pool, info, PIM_MAX_LISTED_DEVICES);
    if (n > PIM_MAX_LISTED_DEVICES) n = PIM_MAX_LISTED_DEVICES;
    struct pim_pool_stats stats;
    pim_pool_stats(p->pool, &stats);
    json_t *o = pim_json_devices(info, n, pim_pool_device_config(p->pool), &stats, p->lim.replica_id);
    json_t *presets = json_array();
    for (int i = 0; i < pim_presets_count(p->presets); i++)
        json_array_append_new(presets, json_string(pim_presets_at(p->presets, i)->name));
    json_object_set_new(o, "presets", presets);
    json_object_set_new(o, "default_preset", json_string(r->d->cfg->pim_preset));
    srv_respond_json(r, 200, o, NULL);
}

/* --------------------------------------------------------------- metrics */

static void collect(struct srv_buf *out, void *ctx)
{
    struct srv_pim *p = ctx;
    if (!p->pool) return; /* stopped */
    srv_metrics_write_header(out, "llmd_pim_jobs_submitted_total", "counter",
                             "PIM jobs accepted into the queue, by type.");
    for (int t = 0; t < PIM_JOB_TYPE_COUNT; t++) {
        char labels[64];
        snprintf(labels, sizeof labels, "type=\"%s\"", pim_job_type_name((enum pim_job_type)t));
        srv_metrics_write_sample(out, "llmd_pim_jobs_submitted_total", labels,
                                 (double)p->submitted[t]);
    }
    srv_metrics_write_header(out, "llmd_pim_jobs_total", "counter",
                             "PIM jobs that ended, by type and status.");
    for (int t = 0; t < PIM_JOB_TYPE_COUNT; t++)
        for (int s = PIM_STATUS_DONE; s < PIM_STATUS_COUNT; s++) {
            char labels[96];
            snprintf(labels, sizeof labels, "type=\"%s\",status=\"%s\"",
                     pim_job_type_name((enum pim_job_type)t),
                     pim_job_status_name((enum pim_job_status)s));
            srv_metrics_write_sample(out, "llmd_pim_jobs_total", labels, (double)p->finished[t][s]);
        }
    srv_metrics_write_counter(out, "llmd_pim_jobs_rejected_total",
                              "PIM jobs refused with 429 because the queue was full.",
                              (double)p->rejected_full);
    srv_metrics_write_histogram(out, "llmd_pim_job_latency_seconds",
                                "Histogram of PIM job submit-to-finish time in seconds.",
                                &p->latency);
    srv_metrics_write_counter(out, "llmd_pim_energy_joules_total",
                              "Simulated energy of the finished PIM jobs in joules.", p->energy);
    srv_metrics_write_counter(out, "llmd_pim_adc_conversions_total",
                              "Simulated A/D conversions of the finished PIM jobs.",
                              (double)p->adc_conversions);
    struct pim_pool_stats stats;
    pim_pool_stats(p->pool, &stats);
    srv_metrics_write_gauge(out, "llmd_pim_devices", "Simulated PIM devices.", stats.n_devices);
    srv_metrics_write_gauge(out, "llmd_pim_busy_devices", "PIM devices running a job.",
                            stats.busy_devices);
    srv_metrics_write_gauge(out, "llmd_pim_queue_length", "PIM jobs waiting for a device.",
                            stats.queue_length);
    srv_metrics_write_gauge(out, "llmd_pim_queue_capacity", "PIM jobs the queue holds at most.",
                            stats.queue_capacity);
}

/* ------------------------------------------------------------- lifetime */

int srv_pim_create(struct srv_daemon *d, char *err, size_t err_len)
{
    const struct srv_config *c = d->cfg;
    struct srv_pim *p = util_xcalloc(1, sizeof *p);
    p->d = d;
    struct pim_json_error jerr = {0};
    int rc = pim_presets_load_dir(c->pim_presets_dir, &p->presets, &jerr);
    if (rc == -ENOENT) {
        LOG_WARN("no PIM preset folder %s: only the built-in isaac preset", c->pim_presets_dir);
        p->presets = pim_presets_builtin();
    } else if (rc) {
        snprintf(err, err_len, "PIM presets: %s", jerr.message);
        free(p);
        return rc;
    }
    const struct pim_device *dev = pim_presets_find(p->presets, c->pim_preset);
    if (!dev) {
        snprintf(err, err_len, "pim_preset: no preset '%s' in %s", c->pim_preset,
                 c->pim_presets_dir);
        pim_presets_free(p->presets);
        free(p);
        return -EINVAL;
    }
    pim_json_limits_default(&p->lim);
    p->lim.max_tensor_elements = c->pim_max_tensor_elements;
    p->lim.replica_id = c->replica_id; /* the config outlives the pool */
    if (p->lim.max_total_elements < 2 * p->lim.max_tensor_elements)
        p->lim.max_total_elements = 2 * p->lim.max_tensor_elements;

    struct pim_pool_config pc;
    pim_pool_config_default(&pc);
    pc.n_devices = c->pim_devices;
    pc.queue_capacity = c->pim_queue;
    pc.result_ttl = c->pim_result_ttl_s;
    pc.threads_per_job = c->pim_threads_per_job;
    pc.device = *dev;
    if (c->replica_id[0]) {
        /* Behind a balancer a replica restarts while clients hold its job
         * ids: number from the boot time in microseconds, so that a new
         * job never takes an old id. */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        pc.first_id = (uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u;
    }
    pc.on_complete = on_pool_complete;
    pc.user = p;
    pthread_mutex_init(&p->lock, NULL);
    UTIL_CHECK(uv_async_init(&d->loop, &p->async, on_completions) == 0);
    UTIL_CHECK(uv_timer_init(&d->loop, &p->timer) == 0);
    p->async.data = p->timer.data = p;
    rc = pim_pool_create(&pc, &p->pool);
    if (rc) {
        snprintf(err, err_len, "cannot start the PIM pool: %s", util_strerror(rc));
        p->stopped = true;
        d->pim = p;
        return rc; /* srv_pim_stop and srv_pim_free clean up */
    }
    srv_histogram_init(&p->latency, latency_bounds,
                       (int)(sizeof latency_bounds / sizeof latency_bounds[0]));
    UTIL_CHECK(srv_metrics_add_collector(&d->metrics, collect, p) == 0);
    d->pim = p;
    LOG_INFO("PIM pool: %d devices (%s), queue %d", c->pim_devices, c->pim_preset, c->pim_queue);
    return 0;
}

/* Loop thread, when draining starts: every waiter is answered now with its
 * job as it is, rather than holding the shutdown up. */
void srv_pim_answer_waiters(struct srv_daemon *d)
{
    if (!d->pim || !d->pim->pool) return;
    for (struct srv_request *r = d->requests; r; r = r->next)
        if (r->pim_wait_id) answer_waiter(r);
    uv_timer_stop(&d->pim->timer);
    if (d->mhd_run_wanted) {
        d->mhd_run_wanted = false;
        srv_daemon_run_mhd(d);
    }
}

/* Loop thread, at shutdown: stops the workers (running jobs are
 * cancelled), then closes the handles. */
void srv_pim_stop(struct srv_daemon *d)
{
    struct srv_pim *p = d->pim;
    if (!p || uv_is_closing((uv_handle_t *)&p->async)) return;
    if (p->pool) pim_pool_destroy(p->pool);
    p->pool = NULL;
    pthread_mutex_lock(&p->lock);
    p->stopped = true;
    pthread_mutex_unlock(&p->lock);
    uv_close((uv_handle_t *)&p->async, NULL);
    uv_close((uv_handle_t *)&p->timer, NULL);
}

/* After the loop ended. */
void srv_pim_free(struct srv_daemon *d)
{
    struct srv_pim *p = d->pim;
    if (!p) return;
    if (p->pool) pim_pool_destroy(p->pool);
    free(p->pending);
    pthread_mutex_destroy(&p->lock);
    if (p->latency.counts) srv_histogram_free(&p->latency);
    pim_presets_free(p->presets);
    free(p);
    d->pim = NULL;
}

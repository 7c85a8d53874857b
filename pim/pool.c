/* pool.c: the accelerator pool: N simulated devices, one worker thread
 * each, a bounded FIFO of queued jobs, and a table of jobs by id whose
 * finished entries expire after result_ttl.
 *
 * One mutex guards everything; workers run jobs outside it. A record is
 * freed only when it has expired and no view holds it. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct job_record {
    uint64_t id;
    struct pim_job job;
    enum pim_job_status status;
    int device;
    double submitted, started, finished;
    struct pim_result result;
    struct pim_error error;
    int error_code;
    atomic_bool cancel;
    int refs; /* views and waiters holding it */
    bool in_table;
    struct job_record *next_queued;
    struct job_record *next_in_bucket;
};

struct device_state {
    bool busy;
    uint64_t current_job, jobs_done;
    double busy_seconds, energy;
};

struct pim_pool {
    struct pim_pool_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t work;     /* a job was queued, or stopping */
    pthread_cond_t finished; /* a job finished */
    bool stopping;

    struct job_record *queue_head, *queue_tail;
    int queue_length;

    struct job_record **buckets;
    size_t n_buckets;
    int n_records;
    uint64_t next_id;

    pthread_t *threads;
    struct device_state *devices;
    int started_threads;
    struct pim_pool_stats stats;
};

void pim_pool_config_default(struct pim_pool_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->n_devices = 2;
    cfg->queue_capacity = 64;
    cfg->result_ttl = 600;
    pim_device_default(&cfg->device);
}

const char *pim_job_status_name(enum pim_job_status status)
{
    static const char *const names[PIM_STATUS_COUNT] = {"queued", "running", "done", "failed",
                                                        "cancelled"};
    return (unsigned)status < PIM_STATUS_COUNT ? names[status] : NULL;
}

static bool is_finished(enum pim_job_status s)
{
    return s == PIM_STATUS_DONE || s == PIM_STATUS_FAILED || s == PIM_STATUS_CANCELLED;
}

/* ------------------------------------------------------------------ table */

static struct job_record **bucket_of(pim_pool *pool, uint64_t id)
{
    return &pool->buckets[(id * 0x9e3779b97f4a7c15ull >> 20) & (pool->n_buckets - 1)];
}

static struct job_record *table_find(pim_pool *pool, uint64_t id)
{
    for (struct job_record *r = *bucket_of(pool, id); r; r = r->next_in_bucket)
        if (r->id == id) return r;
    return NULL;
}

static void table_insert(pim_pool *pool, struct job_record *rec)
{
    struct job_record **b = bucket_of(pool, rec->id);
    rec->next_in_bucket = *b;
    *b = rec;
    rec->in_table = true;
    pool->n_records++;
}

static void record_free(struct job_record *rec)
{
    pim_job_free(&rec->job);
    pim_result_free(&rec->result);
    free(rec);
}

/* Drops expired records (under the lock); held ones go when released. */
static void expire_locked(pim_pool *pool, double now)
{
    for (size_t b = 0; b < pool->n_buckets; b++) {
        struct job_record **p = &pool->buckets[b];
        while (*p) {
            struct job_record *r = *p;
            if (is_finished(r->status) && now - r->finished >= pool->cfg.result_ttl) {
                *p = r->next_in_bucket;
                r->in_table = false;
                pool->n_records--;
                if (r->refs == 0) record_free(r);
            } else {
                p = &r->next_in_bucket;
            }
        }
    }
}

/* ------------------------------------------------------------ completion */

static struct pim_completion completion_of(const struct job_record *rec)
{
    struct pim_completion c = {.id = rec->id,
                               .type = rec->job.type,
                               .status = rec->status,
                               .queue_seconds = (rec->started > 0 ? rec->started : rec->finished) -
                                                rec->submitted,
                               .run_seconds = rec->started > 0 ? rec->finished - rec->started : 0};
    if (rec->status == PIM_STATUS_DONE) {
        c.energy = pim_cost_energy(&rec->result.cost);
        c.adc_conversions = rec->result.cost.adc_conversions;
    }
    return c;
}

/* Marks a record finished and counts it (under the lock). */
static void finish_locked(pim_pool *pool, struct job_record *rec, enum pim_job_status status)
{
    rec->status = status;
    rec->finished = util_now();
    pool->stats.finished[rec->job.type][status]++;
    if (status == PIM_STATUS_DONE) {
        pool->stats.energy += pim_cost_energy(&rec->result.cost);
        pool->stats.adc_conversions += rec->result.cost.adc_conversions;
    }
    pthread_cond_broadcast(&pool->finished);
}

static void notify(pim_pool *pool, const struct pim_completion *c)
{
    if (pool->cfg.on_complete) pool->cfg.on_complete(c, pool->cfg.user);
}

/* ----------------------------------------------------------------- worker */

struct worker_arg {
    pim_pool *pool;
    int index;
};

static void *worker_main(void *p)
{
    struct worker_arg *arg = p;
    pim_pool *pool = arg->pool;
    int index = arg->index;
    free(arg);
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stopping && !pool->queue_head) pthread_cond_wait(&pool->work, &pool->lock);
        if (pool->stopping) break;
        struct job_record *rec = pool->queue_head;
        pool->queue_head = rec->next_queued;
        if (!pool->queue_head) pool->queue_tail = NULL;
        pool->queue_length--;
        rec->status = PIM_STATUS_RUNNING;
        rec->device = index;
        rec->started = util_now();
        rec->refs++;
        struct device_state *dev = &pool->devices[index];
        dev->busy = true;
        dev->current_job = rec->id;
        pool->stats.busy_devices++;
        pthread_mutex_unlock(&pool->lock);

        rec->job.threads = pool->cfg.threads_per_job;
        int rc = pim_job_run(&rec->job, &rec->cancel, &rec->result, &rec->error);
        pim_job_free(&rec->job); /* the inputs are no longer needed */

        pthread_mutex_lock(&pool->lock);
        rec->error_code = rc;
        finish_locked(pool, rec,
                      rc == 0            ? PIM_STATUS_DONE
                      : rc == -ECANCELED ? PIM_STATUS_CANCELLED
                                         : PIM_STATUS_FAILED);
        dev->busy = false;
        dev->current_job = 0;
        dev->jobs_done++;
        dev->busy_seconds += rec->finished - rec->started;
        if (rc == 0) dev->energy += pim_cost_energy(&rec->result.cost);
        pool->stats.busy_devices--;
        struct pim_completion done = completion_of(rec);
        rec->refs--;
        if (!rec->in_table && rec->refs == 0) record_free(rec);
        pthread_mutex_unlock(&pool->lock);
        notify(pool, &done);
        pthread_mutex_lock(&pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* ------------------------------------------------------------- lifecycle */

int pim_pool_create(const struct pim_pool_config *cfg, pim_pool **out)
{
    *out = NULL;
    if (cfg->n_devices < 1 || cfg->n_devices > 1024 || cfg->queue_capacity < 1 ||
        cfg->queue_capacity > (1 << 24) || !(cfg->result_ttl >= 0) || cfg->threads_per_job < 0 ||
        pim_device_validate(&cfg->device, NULL) != 0)
        return -EINVAL;
    pim_pool *pool = util_xcalloc(1, sizeof *pool);
    pool->cfg = *cfg;
    if (pool->cfg.threads_per_job == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int per = (int)(cores > 0 ? cores : 1) / cfg->n_devices;
        pool->cfg.threads_per_job = per > 0 ? per : 1;
    }
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->work, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&pool->finished, &attr);
    pthread_condattr_destroy(&attr);
    pool->n_buckets = 1024;
    pool->buckets = util_xcalloc(pool->n_buckets, sizeof *pool->buckets);
    pool->next_id = cfg->first_id ? cfg->first_id : 1;
    pool->devices = util_xcalloc((size_t)cfg->n_devices, sizeof *pool->devices);
    pool->threads = util_xcalloc((size_t)cfg->n_devices, sizeof *pool->threads);
    pool->stats.n_devices = cfg->n_devices;
    pool->stats.queue_capacity = cfg->queue_capacity;
    for (int i = 0; i < cfg->n_devices; i++) {
        struct worker_arg *arg = util_xmalloc(sizeof *arg);
        *arg = (struct worker_arg){pool, i};
        if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pim_pool_destroy(pool);
            return -EAGAIN;
        }
        pool->started_threads++;
    }
    *out = pool;
    return 0;
}

void pim_pool_destroy(pim_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = true;
    for (size_t b = 0; b < pool->n_buckets; b++)
        for (struct job_record *r = pool->buckets[b]; r; r = r->next_in_bucket)
            if (r->status == PIM_STATUS_RUNNING) atomic_store(&r->cancel, true);
    pthread_cond_broadcast(&pool->work);
    pthread_cond_broadcast(&pool->finished);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->started_threads; i++) pthread_join(pool->threads[i], NULL);
    for (size_t b = 0; b < pool->n_buckets; b++) {
        struct job_record *r = pool->buckets[b];
        while (r) {
            struct job_record *next = r->next_in_bucket;
            record_free(r);
            r = next;
        }
    }
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->work);
    pthread_cond_destroy(&pool->finished);
    free(pool->buckets);
    free(pool->devices);
    free(pool->threads);
    free(pool);
}

/* ------------------------------------------------------------------ jobs */

int pim_pool_submit(pim_pool *pool, struct pim_job *job, uint64_t *id, struct pim_error *err)
{
    int rc = pim_job_validate(job, err);
    if (rc) return rc;
    pthread_mutex_lock(&pool->lock);
    if (pool->stopping) {
        pthread_mutex_unlock(&pool->lock);
        return -ESHUTDOWN;
    }
    double now = util_now();
    expire_locked(pool, now);
    if (pool->queue_length >= pool->cfg.queue_capacity) {
        pool->stats.rejected_full++;
        pthread_mutex_unlock(&pool->lock);
        return -EAGAIN;
    }
    struct job_record *rec = util_xcalloc(1, sizeof *rec);
    rec->id = pool->next_id++;
    rec->job = *job;
    rec->status = PIM_STATUS_QUEUED;
    rec->device = -1;
    rec->submitted = now;
    atomic_init(&rec->cancel, false);
    table_insert(pool, rec);
    if (pool->queue_tail)
        pool->queue_tail->next_queued = rec;
    else
        pool->queue_head = rec;
    pool->queue_tail = rec;
    pool->queue_length++;
    pool->stats.submitted[job->type]++;
    *id = rec->id;
    pthread_cond_signal(&pool->work);
    pthread_mutex_unlock(&pool->lock);
    pim_job_init(job, job->type); /* the pool owns the tensors now */
    return 0;
}

static void fill_view(const struct job_record *rec, struct pim_job_view *view)
{
    view->id = rec->id;
    view->type = rec->job.type;
    view->status = rec->status;
    view->device = rec->device;
    view->submitted = rec->submitted;
    view->started = rec->started;
    view->finished = is_finished(rec->status) ? rec->finished : 0;
    view->result = rec->status == PIM_STATUS_DONE ? &rec->result : NULL;
    view->error_code = rec->status == PIM_STATUS_FAILED ? rec->error_code : 0;
    view->error = rec->status == PIM_STATUS_FAILED ? &rec->error : NULL;
    view->ref = (void *)rec;
}

int pim_pool_acquire(pim_pool *pool, uint64_t id, struct pim_job_view *view)
{
    pthread_mutex_lock(&pool->lock);
    expire_locked(pool, util_now());
    struct job_record *rec = table_find(pool, id);
    if (rec) {
        rec->refs++;
        fill_view(rec, view);
    }
    pthread_mutex_unlock(&pool->lock);
    return rec ? 0 : -ENOENT;
}

void pim_pool_release(pim_pool *pool, struct pim_job_view *view)
{
    struct job_record *rec = view->ref;
    if (!rec) return;
    pthread_mutex_lock(&pool->lock);
    rec->refs--;
    if (!rec->in_table && rec->refs == 0) record_free(rec);
    pthread_mutex_unlock(&pool->lock);
    memset(view, 0, sizeof *view);
}

int pim_pool_wait(pim_pool *pool, uint64_t id, double timeout)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double secs = timeout > 0 ? timeout : 0;
    if (secs > 1e6) secs = 1e6;
    deadline.tv_sec += (time_t)secs;
    deadline.tv_nsec += (long)((secs - (double)(time_t)secs) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&pool->lock);
    struct job_record *rec = table_find(pool, id);
    if (!rec) {
        pthread_mutex_unlock(&pool->lock);
        return -ENOENT;
    }
    rec->refs++;
    int rc = 0;
    while (!is_finished(rec->status) && !pool->stopping) {
        if (pthread_cond_timedwait(&pool->finished, &pool->lock, &deadline) == ETIMEDOUT) {
            rc = is_finished(rec->status) ? 0 : -ETIMEDOUT;
            break;
        }
    }
    if (!is_finished(rec->status) && rc == 0) rc = -ETIMEDOUT;
    rec->refs--;
    if (!rec->in_table && rec->refs == 0) record_free(rec);
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

int pim_pool_cancel(pim_pool *pool, uint64_t id)
{
    pthread_mutex_lock(&pool->lock);
    struct job_record *rec = table_find(pool, id);
    int rc = 0;
    bool dropped = false;
    struct pim_completion done;
    if (!rec) {
        rc = -ENOENT;
    } else if (is_finished(rec->status)) {
        rc = -EALREADY;
    } else if (rec->status == PIM_STATUS_RUNNING) {
        atomic_store(&rec->cancel, true);
    } else { /* queued: unlink and drop its inputs */
        for (struct job_record **p = &pool->queue_head, *prev = NULL; *p;
             prev = *p, p = &(*p)->next_queued)
            if (*p == rec) {
                *p = rec->next_queued;
                if (pool->queue_tail == rec) pool->queue_tail = prev;
                break;
            }
        pool->queue_length--;
        pim_job_free(&rec->job);
        finish_locked(pool, rec, PIM_STATUS_CANCELLED);
        done = completion_of(rec);
        dropped = true;
    }
    pthread_mutex_unlock(&pool->lock);
    if (dropped) notify(pool, &done);
    return rc;
}

int pim_pool_devices(pim_pool *pool, struct pim_device_info *out, int max)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->cfg.n_devices;
    for (int i = 0; i < n && i < max; i++) {
        const struct device_state *d = &pool->devices[i];
        out[i] = (struct pim_device_info){.index = i,
                                          .busy = d->busy,
                                          .current_job = d->current_job,
                                          .jobs_done = d->jobs_done,
                                          .busy_seconds = d->busy_seconds,
                                          .energy = d->energy};
        memcpy(out[i].name, pool->cfg.device.name, sizeof out[i].name);
    }
    pthread_mutex_unlock(&pool->lock);
    return n;
}

void pim_pool_stats(pim_pool *pool, struct pim_pool_stats *stats)
{
    pthread_mutex_lock(&pool->lock);
    *stats = pool->stats;
    stats->queue_length = pool->queue_length;
    stats->jobs_in_table = pool->n_records;
    pthread_mutex_unlock(&pool->lock);
}

void pim_pool_expire(pim_pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    expire_locked(pool, util_now());
    pthread_mutex_unlock(&pool->lock);
}

const struct pim_device *pim_pool_device_config(const pim_pool *pool)
{
    return &pool->cfg.device;
}

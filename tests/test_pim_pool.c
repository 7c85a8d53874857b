/* Tests for pim jobs (every type end to end) and the pool: queue full ->
 * -EAGAIN, cancellation of queued and running jobs, result expiry, waiting,
 * concurrent submits, device listing and counters. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fill_tensor(struct pim_tensor *t, int ndim, int64_t d0, int64_t d1, uint64_t seed,
                        double scale)
{
    int64_t shape[2] = {d0, d1};
    pim_tensor_alloc(t, ndim, shape);
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    for (size_t i = 0; i < pim_tensor_count(t); i++)
        t->data[i] = (float)(scale * util_rng_normal(&rng));
}

static void vmm_job(struct pim_job *job, int m, int n, int batch, bool noisy)
{
    pim_job_init(job, PIM_JOB_VMM);
    fill_tensor(&job->matrix, 2, m, n, 1, 1);
    fill_tensor(&job->input, batch > 1 ? 2 : 1, batch > 1 ? batch : n, n, 2, 1);
    if (noisy) {
        job->device.prog_noise = 0.02;
        job->device.read_noise = 0.01;
    }
}

/* ------------------------------------------------------------------ jobs */

Test(pim_job, vmm_runs_and_reports_error_and_cost)
{
    struct pim_job job;
    vmm_job(&job, 40, 70, 3, false);
    struct pim_result res;
    struct pim_error err = {0};
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_eq(res.output.ndim, 2);
    cr_assert_eq(res.output.shape[0], 3);
    cr_assert_eq(res.output.shape[1], 40);
    cr_assert_lt(res.rel_l2_vs_fp64, 1e-3);
    cr_assert_eq(res.cost.adc_conversions, 3ull * 40 * 8 * 16 * 1);
    cr_assert_gt(res.cost.energy[PIM_E_ADC], 0);
    cr_assert_gt(res.cost.energy[PIM_E_WRITE], 0);
    cr_assert_gt(res.cost.latency, 0);
    cr_assert_gt(res.cost.crossbars, 0);
    pim_result_free(&res);
    pim_job_free(&job);
}

Test(pim_job, solve_invert_and_kfac_reach_16_bits)
{
    struct pim_job job;
    pim_job_init(&job, PIM_JOB_SOLVE);
    int n = 12;
    /* A = M M^T / n + I: SPD */
    struct pim_tensor m;
    fill_tensor(&m, 2, n, n, 3, 1);
    int64_t shape[2] = {n, n};
    pim_tensor_alloc(&job.matrix, 2, shape);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = i == j;
            for (int k = 0; k < n; k++) s += (double)m.data[i * n + k] * m.data[j * n + k] / n;
            job.matrix.data[i * n + j] = (float)s;
        }
    pim_tensor_free(&m);
    fill_tensor(&job.rhs, 1, n, 0, 4, 1);
    struct pim_result res;
    struct pim_error err = {0};
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_eq(res.output.ndim, 1);
    cr_assert_leq(res.rel_l2_vs_fp64, 0x1p-16);
    cr_assert_gt(res.plain_rel_l2, 0x1p-10);
    cr_assert_gt(res.iterations, 0);
    pim_result_free(&res);

    job.type = PIM_JOB_INVERT;
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_eq(res.output.shape[0], n);
    cr_assert_eq(res.output.shape[1], n);
    cr_assert_leq(res.rel_l2_vs_fp64, 0x1p-16);
    pim_result_free(&res);
    pim_job_free(&job);

    pim_job_init(&job, PIM_JOB_KFAC_STEP);
    fill_tensor(&job.activations, 2, 32, 10, 5, 1);
    fill_tensor(&job.output_grads, 2, 32, 6, 6, 0.1);
    fill_tensor(&job.grad, 2, 6, 10, 7, 1);
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_leq(res.rel_l2_vs_fp64, 0x1p-15);
    cr_assert_gt(pim_cost_energy(&res.digital), 0);
    pim_result_free(&res);
    pim_job_free(&job);
}

Test(pim_job, sme_admm_and_dataflow_eval_run)
{
    struct pim_job job;
    pim_job_init(&job, PIM_JOB_SME_MAP);
    fill_tensor(&job.matrix, 2, 50, 200, 8, 0.02);
    fill_tensor(&job.input, 1, 200, 0, 9, 1);
    struct pim_result res;
    struct pim_error err = {0};
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_leq(res.sme.crossbars_sme, res.sme.crossbars_baseline);
    cr_assert_lt(res.rel_l2_vs_fp64, 0.05); /* 8-bit weights */
    cr_assert_eq(res.output.shape[0], 50);
    pim_result_free(&res);
    pim_job_free(&job);

    pim_job_init(&job, PIM_JOB_ADMM_COMPRESS);
    fill_tensor(&job.matrix, 2, 16, 24, 10, 1);
    fill_tensor(&job.inputs, 2, 100, 24, 11, 1);
    fill_tensor(&job.targets, 2, 100, 16, 12, 1);
    job.admm.block_rows = job.admm.block_cols = 8;
    job.admm.keep_ratio = 0.5;
    job.admm.iterations = 5;
    job.admm.retrain_steps = 10;
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_eq(res.admm.blocks_kept, 3);
    cr_assert_float_eq(res.admm.compression_ratio, 2, 1e-9);
    cr_assert(isfinite(res.rel_l2_vs_fp64));
    pim_result_free(&res);
    pim_job_free(&job);

    pim_job_init(&job, PIM_JOB_DATAFLOW_EVAL);
    job.n_layers = 2;
    job.layers = util_xmalloc(2 * sizeof *job.layers);
    job.layers[0] = (struct pim_layer_shape){4096, 4096, 10};
    job.layers[1] = (struct pim_layer_shape){4096, 11008, 10};
    cr_assert_eq(pim_job_run(&job, NULL, &res, &err), 0, "%s", err.message);
    cr_assert_eq(res.n_reports, 3);
    cr_assert_eq(res.reports[0].cost.adc_conversions, 10ull * 8 * 16 * 32 * (4096 + 11008));
    cr_assert_eq(res.reports[2].cost.adc_conversions, 10ull * 32 * (4096 + 11008));
    cr_assert_gt(res.reports[2].throughput_per_mm2, res.reports[0].throughput_per_mm2);
    pim_result_free(&res);
    pim_job_free(&job);
}

Test(pim_job, invalid_jobs_name_the_parameter)
{
    struct pim_job job;
    struct pim_error err = {0};
    vmm_job(&job, 4, 5, 1, false);
    job.input.shape[0] = 4; /* one short; the data is still 5 floats */
    cr_assert_eq(pim_job_validate(&job, &err), -EINVAL);
    cr_assert_str_eq(err.param, "input");
    job.input.shape[0] = 5;
    job.matrix.data[3] = NAN;
    cr_assert_eq(pim_job_validate(&job, &err), -EINVAL);
    cr_assert_str_eq(err.param, "matrix");
    job.matrix.data[3] = 0;
    job.device.adc_bits = 99;
    cr_assert_eq(pim_job_validate(&job, &err), -EINVAL);
    cr_assert_str_eq(err.param, "device.adc_bits");
    pim_job_free(&job);
    pim_job_init(&job, PIM_JOB_SOLVE);
    fill_tensor(&job.matrix, 2, 3, 4, 1, 1);
    cr_assert_eq(pim_job_validate(&job, &err), -EINVAL);
    cr_assert_str_eq(err.param, "matrix");
    pim_job_free(&job);
}

/* ------------------------------------------------------------------ pool */

struct completions {
    pthread_mutex_t lock;
    int count[PIM_STATUS_COUNT];
    double energy;
};

static void on_complete(const struct pim_completion *c, void *user)
{
    struct completions *cs = user;
    pthread_mutex_lock(&cs->lock);
    cs->count[c->status]++;
    cs->energy += c->energy;
    pthread_mutex_unlock(&cs->lock);
}

static pim_pool *make_pool(int devices, int capacity, double ttl, struct completions *cs)
{
    struct pim_pool_config cfg;
    pim_pool_config_default(&cfg);
    cfg.n_devices = devices;
    cfg.queue_capacity = capacity;
    cfg.result_ttl = ttl;
    cfg.threads_per_job = 1;
    if (cs) {
        memset(cs, 0, sizeof *cs);
        pthread_mutex_init(&cs->lock, NULL);
        cfg.on_complete = on_complete;
        cfg.user = cs;
    }
    pim_pool *pool;
    cr_assert_eq(pim_pool_create(&cfg, &pool), 0);
    return pool;
}

/* A job that keeps a device busy for seconds unless cancelled. */
static void slow_job(struct pim_job *job)
{
    vmm_job(job, 1024, 1024, 512, true);
}

static enum pim_job_status status_of(pim_pool *pool, uint64_t id)
{
    struct pim_job_view v;
    cr_assert_eq(pim_pool_acquire(pool, id, &v), 0);
    enum pim_job_status s = v.status;
    pim_pool_release(pool, &v);
    return s;
}

static void wait_running(pim_pool *pool, uint64_t id)
{
    for (int i = 0; i < 2000 && status_of(pool, id) == PIM_STATUS_QUEUED; i++) usleep(1000);
    cr_assert_eq(status_of(pool, id), PIM_STATUS_RUNNING);
}

Test(pim_pool, full_queue_says_eagain_and_cancel_drops_or_stops, .timeout = 60)
{
    struct completions cs;
    pim_pool *pool = make_pool(1, 2, 600, &cs);
    struct pim_job job;
    uint64_t running, q1, q2, extra;
    slow_job(&job);
    cr_assert_eq(pim_pool_submit(pool, &job, &running, NULL), 0);
    cr_assert_null(job.matrix.data, "the pool owns the tensors");
    wait_running(pool, running);
    vmm_job(&job, 8, 8, 1, false);
    cr_assert_eq(pim_pool_submit(pool, &job, &q1, NULL), 0);
    vmm_job(&job, 8, 8, 1, false);
    cr_assert_eq(pim_pool_submit(pool, &job, &q2, NULL), 0);
    vmm_job(&job, 8, 8, 1, false);
    cr_assert_eq(pim_pool_submit(pool, &job, &extra, NULL), -EAGAIN);
    pim_job_free(&job); /* still ours after a refusal */

    struct pim_pool_stats st;
    pim_pool_stats(pool, &st);
    cr_assert_eq(st.queue_length, 2);
    cr_assert_eq(st.busy_devices, 1);
    cr_assert_eq(st.rejected_full, 1);
    struct pim_device_info devs[4];
    cr_assert_eq(pim_pool_devices(pool, devs, 4), 1);
    cr_assert(devs[0].busy);
    cr_assert_eq(devs[0].current_job, running);

    cr_assert_eq(pim_pool_cancel(pool, q1), 0); /* queued: dropped at once */
    cr_assert_eq(status_of(pool, q1), PIM_STATUS_CANCELLED);
    cr_assert_eq(pim_pool_cancel(pool, q1), -EALREADY);
    double t0 = util_now();
    cr_assert_eq(pim_pool_cancel(pool, running), 0); /* running: stops at a check point */
    cr_assert_eq(pim_pool_wait(pool, running, 30), 0);
    cr_assert_lt(util_now() - t0, 5.0);
    cr_assert_eq(status_of(pool, running), PIM_STATUS_CANCELLED);
    cr_assert_eq(pim_pool_wait(pool, q2, 30), 0);
    cr_assert_eq(status_of(pool, q2), PIM_STATUS_DONE);
    cr_assert_eq(pim_pool_cancel(pool, 12345), -ENOENT);

    pim_pool_stats(pool, &st);
    cr_assert_eq(st.finished[PIM_JOB_VMM][PIM_STATUS_CANCELLED], 2);
    cr_assert_eq(st.finished[PIM_JOB_VMM][PIM_STATUS_DONE], 1);
    cr_assert_eq(st.submitted[PIM_JOB_VMM], 3);
    pim_pool_destroy(pool);
    cr_assert_eq(cs.count[PIM_STATUS_CANCELLED], 2);
    cr_assert_eq(cs.count[PIM_STATUS_DONE], 1);
}

Test(pim_pool, results_expire_but_held_views_stay_readable)
{
    pim_pool *pool = make_pool(1, 4, 0.2, NULL);
    struct pim_job job;
    uint64_t id;
    vmm_job(&job, 8, 8, 1, false);
    cr_assert_eq(pim_pool_submit(pool, &job, &id, NULL), 0);
    cr_assert_eq(pim_pool_wait(pool, id, 30), 0);
    struct pim_job_view held;
    cr_assert_eq(pim_pool_acquire(pool, id, &held), 0);
    cr_assert_eq(held.status, PIM_STATUS_DONE);
    cr_assert_not_null(held.result);
    usleep(300000);
    pim_pool_expire(pool);
    struct pim_job_view again;
    cr_assert_eq(pim_pool_acquire(pool, id, &again), -ENOENT);
    cr_assert_eq(pim_pool_wait(pool, id, 1), -ENOENT);
    cr_assert_eq(held.result->output.shape[0], 8); /* still valid */
    struct pim_pool_stats st;
    pim_pool_stats(pool, &st);
    cr_assert_eq(st.jobs_in_table, 0);
    pim_pool_release(pool, &held);
    pim_pool_destroy(pool);
}

Test(pim_pool, wait_times_out_on_a_running_job, .timeout = 60)
{
    pim_pool *pool = make_pool(1, 4, 600, NULL);
    struct pim_job job;
    uint64_t id;
    slow_job(&job);
    cr_assert_eq(pim_pool_submit(pool, &job, &id, NULL), 0);
    double t0 = util_now();
    cr_assert_eq(pim_pool_wait(pool, id, 0.05), -ETIMEDOUT);
    cr_assert_lt(util_now() - t0, 1.0);
    pim_pool_destroy(pool); /* cancels the running job */
}

Test(pim_pool, failed_jobs_keep_their_error)
{
    pim_pool *pool = make_pool(1, 4, 600, NULL);
    struct pim_job job;
    pim_job_init(&job, PIM_JOB_SOLVE);
    int64_t shape[2] = {2, 2};
    pim_tensor_alloc(&job.matrix, 2, shape);
    for (int i = 0; i < 4; i++) job.matrix.data[i] = 1; /* singular */
    pim_tensor_alloc(&job.rhs, 1, shape);
    uint64_t id;
    cr_assert_eq(pim_pool_submit(pool, &job, &id, NULL), 0);
    cr_assert_eq(pim_pool_wait(pool, id, 30), 0);
    struct pim_job_view v;
    cr_assert_eq(pim_pool_acquire(pool, id, &v), 0);
    cr_assert_eq(v.status, PIM_STATUS_FAILED);
    cr_assert_eq(v.error_code, -EDOM);
    cr_assert_str_eq(v.error->param, "matrix");
    pim_pool_release(pool, &v);

    struct pim_error err = {0};
    pim_job_init(&job, PIM_JOB_VMM); /* no tensors */
    cr_assert_eq(pim_pool_submit(pool, &job, &id, &err), -EINVAL);
    cr_assert_str_eq(err.param, "matrix");
    pim_pool_destroy(pool);
}

struct submitter {
    pim_pool *pool;
    uint64_t ids[25];
};

static void *submit_many(void *p)
{
    struct submitter *s = p;
    for (int i = 0; i < 25; i++) {
        struct pim_job job;
        vmm_job(&job, 16, 16, 1, false);
        job.seed = (uint64_t)i;
        int rc;
        while ((rc = pim_pool_submit(s->pool, &job, &s->ids[i], NULL)) == -EAGAIN) usleep(100);
        if (rc != 0) s->ids[i] = 0;
    }
    return NULL;
}

Test(pim_pool, concurrent_submits_all_finish_with_unique_ids, .timeout = 60)
{
    struct completions cs;
    pim_pool *pool = make_pool(2, 16, 600, &cs);
    pthread_t threads[4];
    struct submitter subs[4];
    for (int t = 0; t < 4; t++) {
        subs[t].pool = pool;
        cr_assert_eq(pthread_create(&threads[t], NULL, submit_many, &subs[t]), 0);
    }
    for (int t = 0; t < 4; t++) pthread_join(threads[t], NULL);
    uint64_t seen[100];
    int n = 0;
    double energy = 0;
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 25; i++) {
            uint64_t id = subs[t].ids[i];
            cr_assert_neq(id, 0);
            for (int k = 0; k < n; k++) cr_assert_neq(seen[k], id);
            seen[n++] = id;
            cr_assert_eq(pim_pool_wait(pool, id, 30), 0);
            struct pim_job_view v;
            cr_assert_eq(pim_pool_acquire(pool, id, &v), 0);
            cr_assert_eq(v.status, PIM_STATUS_DONE);
            energy += pim_cost_energy(&v.result->cost);
            pim_pool_release(pool, &v);
        }
    struct pim_pool_stats st;
    pim_pool_stats(pool, &st);
    cr_assert_eq(st.submitted[PIM_JOB_VMM], 100);
    cr_assert_eq(st.finished[PIM_JOB_VMM][PIM_STATUS_DONE], 100);
    cr_assert_float_eq(st.energy, energy, 1e-12 * energy);
    cr_assert_eq(st.busy_devices, 0);
    pim_pool_destroy(pool);
    cr_assert_eq(cs.count[PIM_STATUS_DONE], 100);
    cr_assert_float_eq(cs.energy, energy, 1e-12 * energy);
}

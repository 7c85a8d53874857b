/*
 * pool.c: the thread pool that runs a forward pass.
 *
 * A decode step is a few hundred short phases (a norm, a product, attention,
 * ...) that every thread works on together, with a barrier between phases.
 * OpenMP's parallel regions cost a wake-up each and its barriers fall back
 * to futexes after a short spin (llmd sets GOMP_SPINCOUNT low so that idle
 * OpenMP threads do not steal the cores), so a step is one util_pool_run:
 * the caller and the workers run the same function, split the work of each
 * phase by their index, and meet at util_pool_barrier, a spinning barrier.
 *
 * Waiting: inside a run, threads spin (with pause) and yield the core after
 * a while, so a step survives a busy machine. Between runs, workers spin for
 * POOL_IDLE_SPIN_US (decode steps follow each other within that) and then
 * sleep on a condition variable until the next run.
 */
#include "util.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

/* Spins of a barrier wait before each further check also yields the core. */
#define POOL_SPINS_BEFORE_YIELD 20000
/* How long an idle worker keeps spinning for the next run before sleeping. */
#define POOL_IDLE_SPIN_US 2000

struct util_pool {
    int n_threads;
    pthread_t *workers; /* n_threads - 1 */
    /* the current run */
    util_pool_fn *fn;
    void *ctx;
    _Atomic unsigned run_gen; /* bumped to start a run */
    _Atomic int running;      /* workers still inside the current run */
    _Atomic bool quit;
    /* the barrier: arrivals of the current phase, and the phase number */
    _Atomic int arrived;
    _Atomic unsigned phase;
    /* sleeping workers */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic int sleeping;
};

struct worker_arg {
    util_pool *pool;
    int ith;
};

static inline void spin_pause(unsigned *spins)
{
    _mm_pause();
    if (++*spins > POOL_SPINS_BEFORE_YIELD) sched_yield();
}

void util_pool_barrier(util_pool *pool)
{
    if (pool->n_threads == 1) return;
    unsigned phase = atomic_load_explicit(&pool->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == pool->n_threads - 1) {
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&pool->phase, phase + 1, memory_order_release);
        return;
    }
    unsigned spins = 0;
    while (atomic_load_explicit(&pool->phase, memory_order_acquire) == phase) spin_pause(&spins);
}

/* Waits for a run newer than `seen`; false when the pool is shutting down. */
static bool wait_for_run(util_pool *pool, unsigned seen)
{
    double until = util_now() + POOL_IDLE_SPIN_US * 1e-6;
    unsigned spins = 0;
    while (atomic_load(&pool->run_gen) == seen && !atomic_load(&pool->quit)) {
        _mm_pause();
        if (++spins % 1024 == 0 && util_now() > until) {
            pthread_mutex_lock(&pool->lock);
            atomic_fetch_add(&pool->sleeping, 1);
            while (atomic_load(&pool->run_gen) == seen && !atomic_load(&pool->quit))
                pthread_cond_wait(&pool->wake, &pool->lock);
            atomic_fetch_sub(&pool->sleeping, 1);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    return !atomic_load(&pool->quit);
}

static void *worker_main(void *p)
{
    struct worker_arg arg = *(struct worker_arg *)p;
    free(p);
    util_pool *pool = arg.pool;
    unsigned seen = 0;
    while (wait_for_run(pool, seen)) {
        seen = atomic_load(&pool->run_gen);
        pool->fn(pool->ctx, arg.ith, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->running, 1, memory_order_release);
    }
    return NULL;
}

util_pool *util_pool_create(int n_threads)
{
    UTIL_CHECK(n_threads >= 1);
    util_pool *pool = util_xcalloc(1, sizeof *pool);
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->workers = util_xcalloc((size_t)n_threads, sizeof *pool->workers);
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *arg = util_xmalloc(sizeof *arg);
        *arg = (struct worker_arg){pool, i};
        int rc = pthread_create(&pool->workers[i - 1], NULL, worker_main, arg);
        if (rc) util_die("pool: cannot start thread %d of %d (error %d)", i, n_threads, rc);
    }
    return pool;
}

void util_pool_free(util_pool *pool)
{
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->quit, true);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i - 1], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->workers);
    free(pool);
}

int util_pool_threads(const util_pool *pool)
{
    return pool->n_threads;
}

void util_pool_run(util_pool *pool, util_pool_fn *fn, void *ctx)
{
    if (pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store(&pool->running, pool->n_threads - 1);
    atomic_fetch_add(&pool->run_gen, 1); /* seq_cst: ordered before reading `sleeping` */
    if (atomic_load(&pool->sleeping) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    fn(ctx, 0, pool->n_threads);
    unsigned spins = 0;
    while (atomic_load_explicit(&pool->running, memory_order_acquire) > 0) spin_pause(&spins);
}

void util_split(int n, int ith, int nth, int *begin, int *end)
{
    *begin = (int)((long long)n * ith / nth);
    *end = (int)((long long)n * (ith + 1) / nth);
}

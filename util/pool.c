/*
 * pool.c: the thread pool that runs a forward pass.
 *
 * A decode step is a few hundred short phases (a norm, a product, attention,
 * ...) that every thread works on together, with a barrier between phases.
 * OpenMP's parallel regions cost a wake-up each and its barriers fall back
 * to futexes after a short spin (llmd sets GOMP_SPINCOUNT low so that idle
 * OpenMP threads do not steal the cores), so a step is one util_pool_run:
 * the caller and the workers run the same function, split the work of each
 * phase by their index, and meet at util_pool_barrier.
 *
 * Waiting: a thread that waits spins (with pause) for a short while, then
 * sleeps on a futex until the thread it waits for wakes it. The spin makes
 * the barrier cheap on an otherwise idle machine (a phase's threads arrive
 * within microseconds of each other); the sleep keeps a busy machine from
 * collapsing: when another program holds one of the cores, a spinning
 * thread would burn its own core while the thread it waits for queues for
 * the other one, once per phase. Asleep, it leaves its core to that thread.
 * Between runs workers spin longer (decode steps follow each other within
 * POOL_IDLE_SPIN_S), then sleep until the next run.
 */
#include "util.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* How long a waiting thread spins before it sleeps: in a step, and between steps. */
#define POOL_PHASE_SPIN_S 50e-6
#define POOL_IDLE_SPIN_S  2e-3

/* A 32-bit word that threads wait on until it changes, and how many of
 * them sleep on it (so that the waker makes a system call only then). */
struct pool_event {
    _Atomic uint32_t value;
    _Atomic int sleepers;
};

struct util_pool {
    int n_threads;
    pthread_t *workers; /* n_threads - 1 */
    util_pool_fn *fn;   /* the current run */
    void *ctx;
    _Atomic bool quit;
    struct pool_event run;   /* bumped to start a run */
    struct pool_event done;  /* bumped when the last worker finishes a run */
    _Atomic int running;     /* workers still inside the current run */
    struct pool_event phase; /* the barrier's phase number */
    _Atomic int arrived;     /* threads at the barrier of the current phase */
};

struct worker_arg {
    util_pool *pool;
    int ith;
};

static void futex_wait(_Atomic uint32_t *word, uint32_t value)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Waits until ev->value is no longer `value` (or quit is set, when given):
 * spins for up to spin_s seconds, then sleeps. */
static void event_wait(struct pool_event *ev, uint32_t value, double spin_s, _Atomic bool *quit)
{
    double until = 0;
    for (unsigned spins = 1;; spins++) {
        if (atomic_load_explicit(&ev->value, memory_order_acquire) != value) return;
        if (quit && atomic_load_explicit(quit, memory_order_relaxed)) return;
        _mm_pause();
        if (spins % 64) continue;
        double now = util_now();
        if (until == 0) until = now + spin_s;
        if (now > until) break;
    }
    /* seq_cst: the waker reads `sleepers` after changing the value, we
     * change `sleepers` before the kernel re-reads the value. */
    atomic_fetch_add(&ev->sleepers, 1);
    while (atomic_load(&ev->value) == value && !(quit && atomic_load(quit)))
        futex_wait(&ev->value, value);
    atomic_fetch_sub(&ev->sleepers, 1);
}

/* Changes ev->value to `value` and wakes whoever sleeps on it. */
static void event_set(struct pool_event *ev, uint32_t value)
{
    atomic_store(&ev->value, value);
    if (atomic_load(&ev->sleepers) > 0) futex_wake_all(&ev->value);
}

void util_pool_barrier(util_pool *pool)
{
    if (pool->n_threads == 1) return;
    uint32_t phase = atomic_load_explicit(&pool->phase.value, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->arrived, 1, memory_order_acq_rel) == pool->n_threads - 1) {
        atomic_store_explicit(&pool->arrived, 0, memory_order_relaxed);
        event_set(&pool->phase, phase + 1);
        return;
    }
    event_wait(&pool->phase, phase, POOL_PHASE_SPIN_S, NULL);
}

static void *worker_main(void *p)
{
    struct worker_arg arg = *(struct worker_arg *)p;
    free(p);
    util_pool *pool = arg.pool;
    uint32_t seen = 0;
    for (;;) {
        event_wait(&pool->run, seen, POOL_IDLE_SPIN_S, &pool->quit);
        if (atomic_load(&pool->quit)) return NULL;
        seen = atomic_load_explicit(&pool->run.value, memory_order_acquire);
        pool->fn(pool->ctx, arg.ith, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->running, 1, memory_order_acq_rel) == 1)
            event_set(&pool->done, seen);
    }
}

util_pool *util_pool_create(int n_threads)
{
    UTIL_CHECK(n_threads >= 1);
    util_pool *pool = util_xcalloc(1, sizeof *pool);
    pool->n_threads = n_threads;
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
    atomic_store(&pool->quit, true);
    /* a new value too: a worker between its last check and its futex wait
     * would otherwise sleep through the wake-up */
    atomic_fetch_add(&pool->run.value, 1);
    futex_wake_all(&pool->run.value);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i - 1], NULL);
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
    uint32_t gen = atomic_load(&pool->run.value) + 1;
    event_set(&pool->run, gen);
    fn(ctx, 0, pool->n_threads);
    event_wait(&pool->done, gen - 1, POOL_PHASE_SPIN_S, NULL);
}

void util_split(int n, int ith, int nth, int *begin, int *end)
{
    *begin = (int)((long long)n * ith / nth);
    *end = (int)((long long)n * (ith + 1) / nth);
}

/* Tests for util/: half-precision conversion, the random generator, errors,
 * the thread pool. */
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

Test(util_half, f16_round_trips_every_finite_value)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue; /* inf and nan */
        float f = util_f16_to_f32((uint16_t)h);
        cr_assert_eq(util_f32_to_f16(f), h, "f16 0x%04x -> %g -> 0x%04x", h, f, util_f32_to_f16(f));
    }
}

Test(util_half, f16_rounds_to_nearest_even_and_saturates_to_inf)
{
    cr_assert_eq(util_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie, even stays */
    cr_assert_eq(util_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie, rounds up to even */
    cr_assert_eq(util_f32_to_f16(70000.0f), 0x7c00);
    cr_assert_eq(util_f32_to_f16(-70000.0f), 0xfc00);
    cr_assert(isnan(util_f16_to_f32(util_f32_to_f16(NAN))));
    cr_assert_float_eq(util_f16_to_f32(0x0001), 0x1p-24f, 0);
}

Test(util_half, bf16_round_trips_and_rounds_to_nearest_even)
{
    cr_assert_eq(util_f32_to_bf16(1.0f), 0x3f80);
    cr_assert_float_eq(util_bf16_to_f32(util_f32_to_bf16(3.140625f)), 3.140625f, 0);
    cr_assert_eq(util_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie to even */
    cr_assert_eq(util_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie to even, up */
    cr_assert(isnan(util_bf16_to_f32(util_f32_to_bf16(NAN))));
}

Test(util_rng, same_seed_gives_same_stream_and_other_seed_does_not)
{
    struct util_rng a, b, c;
    util_rng_seed(&a, 42);
    util_rng_seed(&b, 42);
    util_rng_seed(&c, 43);
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = util_rng_next(&a);
        cr_assert_eq(x, util_rng_next(&b));
        differ += x != util_rng_next(&c);
    }
    cr_assert_gt(differ, 990);
}

Test(util_rng, normal_has_zero_mean_and_unit_variance)
{
    struct util_rng r;
    util_rng_seed(&r, 7);
    double sum = 0, sum2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = util_rng_normal(&r);
        sum += x;
        sum2 += x * x;
    }
    double mean = sum / n, var = sum2 / n - mean * mean;
    cr_assert_lt(fabs(mean), 0.01);
    cr_assert_lt(fabs(var - 1.0), 0.02);
}

Test(util_errors, messages_for_codes)
{
    cr_assert_str_eq(util_strerror(0), "success");
    cr_assert_str_eq(util_strerror(-ENOSPC), "out of KV-cache pages");
    cr_assert_str_eq(util_strerror(-EINVAL), strerror(EINVAL));
}

Test(util_cpu, reports_avx2_on_the_build_target)
{
    /* the binary is built for x86-64-v3, so it could not run without AVX2 */
    cr_assert(util_cpu()->avx2);
    cr_assert(strstr(util_cpu_flags_string(), "avx2") != NULL);
}

Test(util_blas, openblas_runs_a_kernel_set_at_least_as_wide_as_avx2)
{
    const char *core = util_blas_corename();
    cr_assert(strcmp(core, "Prescott") != 0, "OpenBLAS left on its SSE3 kernels");
}

/* Each phase, every thread adds its index to the slot of the phase, waits
 * at the barrier, and checks that every thread's add of the phase landed. */
struct pool_check {
    util_pool *pool;
    int phases;
    _Atomic long *slots;
    _Atomic int failures;
    _Atomic int calls;
};

static void pool_phases(void *p, int ith, int nth)
{
    struct pool_check *c = p;
    atomic_fetch_add(&c->calls, 1);
    long all = (long)nth * (nth - 1) / 2;
    for (int ph = 0; ph < c->phases; ph++) {
        atomic_fetch_add(&c->slots[ph], ith);
        util_pool_barrier(c->pool);
        if (atomic_load(&c->slots[ph]) != all) atomic_fetch_add(&c->failures, 1);
    }
}

Test(util_pool, runs_every_thread_once_and_the_barrier_holds_them_together)
{
    for (int threads = 1; threads <= 4; threads++) {
        struct pool_check c = {.pool = util_pool_create(threads), .phases = 200};
        cr_assert_eq(util_pool_threads(c.pool), threads);
        c.slots = calloc((size_t)c.phases, sizeof *c.slots);
        for (int run = 0; run < 20; run++) {
            for (int ph = 0; ph < c.phases; ph++) atomic_store(&c.slots[ph], 0);
            util_pool_run(c.pool, pool_phases, &c);
            /* the run returns only when every thread is done with it */
            cr_assert_eq(atomic_load(&c.calls), threads * (run + 1));
            if (run == 10) usleep(5000); /* long enough for the workers to go to sleep */
        }
        cr_assert_eq(atomic_load(&c.failures), 0, "%d threads: a thread passed a barrier early",
                     threads);
        free(c.slots);
        util_pool_free(c.pool);
    }
}

Test(util_pool, split_covers_the_range_in_near_equal_parts)
{
    const int ns[] = {0, 1, 7, 100}, nths[] = {1, 2, 3, 8};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int next = 0;
            for (int ith = 0; ith < nths[j]; ith++) {
                int b, e;
                util_split(ns[i], ith, nths[j], &b, &e);
                cr_assert_eq(b, next);
                cr_assert(e - b == ns[i] / nths[j] || e - b == ns[i] / nths[j] + 1);
                next = e;
            }
            cr_assert_eq(next, ns[i]);
        }
}

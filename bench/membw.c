/*
 * bench/membw.c: the machine's read bandwidth, the ceiling of a
 * memory-bound decode step (each step reads every weight once).
 *
 *   build/bench/membw [--mb 1024] [--repeat 7]
 *
 * Every thread of the pool's size (all cores, as the model runs) sums its
 * share of a --mb buffer with 256-bit loads, --repeat times; GB/s of the
 * median pass. The buffer is far larger than the caches, so it streams from
 * DRAM as a large model's weights do. Holds /tmp/llmd-bench.lock while
 * timing, as the other benchmarks do.
 */
#include "bench/bench.h"
#include "util/util.h"

#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

/* Sum of n floats (n a multiple of 32) with four independent accumulators. */
static float read_sum(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

int main(int argc, char **argv)
{
    long mb = 1024, repeat = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc)
            mb = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
            repeat = strtol(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: membw [--mb 1024] [--repeat 7]\n");
            return 2;
        }
    }
    if (mb < 64 || repeat < 1 || repeat > 100) {
        fprintf(stderr, "membw: --mb >= 64 and --repeat in [1, 100]\n");
        return 2;
    }
    size_t n = (size_t)mb << 18; /* floats */
    float *buf = util_aligned_alloc(n * sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7); /* really backed by pages */
    int threads = omp_get_max_threads();

    int lock = open("/tmp/llmd-bench.lock", O_RDWR | O_CREAT, 0666);
    if (lock >= 0) flock(lock, LOCK_EX);
    double *gbs = util_xmalloc((size_t)repeat * sizeof *gbs);
    volatile float sink = 0;
    for (long r = 0; r < repeat; r++) {
        float part[256] = {0};
        double t0 = util_now();
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t chunk = n / (size_t)nt / 32 * 32;
            size_t len = t == nt - 1 ? n - (size_t)t * chunk : chunk;
            part[t & 255] = read_sum(buf + (size_t)t * chunk, len);
        }
        double dt = util_now() - t0;
        for (int t = 0; t < threads && t < 256; t++) sink += part[t];
        gbs[r] = (double)n * sizeof *buf / dt / 1e9;
    }
    if (lock >= 0) close(lock);
    qsort(gbs, (size_t)repeat, sizeof *gbs, bench_cmp_double);
    printf("# read bandwidth: %ld MB summed by %d threads, %ld passes\n", mb, threads, repeat);
    printf("# cpu: %s [%s]\n", util_cpu_model_name(), util_cpu_flags_string());
    printf("pass   GB/s\nmin    %.1f\nmedian %.1f\nmax    %.1f\n", gbs[0], gbs[repeat / 2],
           gbs[repeat - 1]);
    printf("read_gbs_median: %.2f\n", gbs[repeat / 2]);
    (void)sink;
    free(gbs);
    util_aligned_free(buf);
    return 0;
}

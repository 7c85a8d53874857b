/*
 * quant_gemm: throughput of the quantized products against OpenBLAS FP32.
 *
 * For each shape y (M, N) = x (M, K) W^T it times, side by side and
 * interleaved: cblas_sgemm, q_gemm W8A8, q_gemm W4A4 (RTN, groups of 128),
 * and W4A4 Atom (with int8 outlier channels), all on every core; the
 * quantized ones on activations quantized beforehand (that step is timed
 * apart, "act"). Medians of REPS runs. Prints a table and headline ratios.
 *
 *   build/bench/quant_gemm [--quick] [--kernel scalar|avx2|avx512|amx] [--single]
 *
 * --single runs everything on one thread and times it in that thread's CPU
 * time: on a machine shared with other work, the figures (and the ratios)
 * then depend on the code, not on who else got the cores.
 */
#include "bench/bench.h"
#include "quant/quant.h"
#include "util/util.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIN_SECONDS 0.05 /* per measurement: repeat the call until this long */
/* After a library's calls its idle threads keep spinning for a while
 * (OpenBLAS ~2^28 cycles, libgomp ~300000 pauses) and would steal one of
 * the two cores from the next measurement: wait them out. */
#define OPENBLAS_SPIN_SECONDS 0.15
#define GOMP_SPIN_SECONDS     0.03

static int reps = 7;
static bool single; /* one thread, timed in thread CPU time */

/* Seconds on the clock the figures use. */
static double now(void)
{
    if (!single) return util_now();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct shape {
    const char *name;
    int m, n, k, n_outlier;
};

static void sleep_seconds(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static float *random_matrix(uint64_t seed, size_t count)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    float *x = util_xmalloc(count * sizeof *x);
    for (size_t i = 0; i < count; i++) x[i] = (float)util_rng_normal(&rng);
    return x;
}

enum { FP32, W8A8, W4A4, ATOM, N_PATHS };

struct run {
    const struct shape *s;
    const float *x, *w;
    float *y;
    q_linear *layer[N_PATHS];
    q_act *act[N_PATHS];
    int *perm;
    enum q_kernel kernel;
};

/* Seconds per call of one path, timed over enough calls to be measurable. */
static double time_path(struct run *r, int path)
{
    const struct shape *s = r->s;
    int calls = 0;
    double t0 = now(), t;
    do {
        if (path == FP32)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->m, s->n, s->k, 1.0f, r->x, s->k,
                        r->w, s->k, 0.0f, r->y, s->n);
        else
            q_gemm_with(r->kernel, r->layer[path], r->act[path], s->m, r->y);
        calls++;
        t = now() - t0;
    } while (t < MIN_SECONDS);
    return t / calls;
}

static double time_act(struct run *r)
{
    int calls = 0;
    double t0 = now(), t;
    do {
        q_act_quantize(r->act[ATOM], r->x, r->s->m, r->perm);
        calls++;
        t = now() - t0;
    } while (t < MIN_SECONDS);
    return t / calls;
}

/* Times one shape; returns the medians (seconds) per path in out. */
static void bench_shape(const struct shape *s, enum q_kernel kernel, double out[N_PATHS + 1])
{
    struct run r = {.s = s, .kernel = kernel};
    float *x = random_matrix(1, (size_t)s->m * s->k), *w = random_matrix(2, (size_t)s->n * s->k);
    r.x = x;
    r.w = w;
    r.y = util_xmalloc((size_t)s->m * s->n * sizeof *r.y);
    r.perm = util_xmalloc((size_t)s->k * sizeof *r.perm);
    for (int j = 0; j < s->k; j++) r.perm[j] = (j + s->n_outlier) % s->k; /* any order will do */
    struct q_format f[N_PATHS] = {
        {0}, q_format_default(Q_W8A8), q_format_default(Q_W4A4), q_format_default(Q_W4A4)};
    f[ATOM].n_outlier = s->n_outlier;
    for (int p = W8A8; p < N_PATHS; p++) {
        const int *perm = p == ATOM ? r.perm : NULL;
        r.layer[p] = q_linear_quantize(w, s->n, s->k, &f[p], perm);
        r.act[p] = q_act_create(&f[p], s->k, s->m);
        q_act_quantize(r.act[p], x, s->m, perm);
    }
    double t[N_PATHS + 1][64];
    for (int i = 0; i < reps; i++) {
        t[FP32][i] = time_path(&r, FP32);
        sleep_seconds(OPENBLAS_SPIN_SECONDS);
        for (int p = W8A8; p < N_PATHS; p++) t[p][i] = time_path(&r, p);
        t[N_PATHS][i] = time_act(&r);
        sleep_seconds(GOMP_SPIN_SECONDS);
    }
    for (int p = 0; p <= N_PATHS; p++) out[p] = bench_median(t[p], reps);
    for (int p = W8A8; p < N_PATHS; p++) {
        q_linear_free(r.layer[p]);
        q_act_free(r.act[p]);
    }
    free(x), free(w), free(r.y), free(r.perm);
}

int main(int argc, char **argv)
{
    bool quick = false;
    enum q_kernel kernel = q_kernel_selected();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
            reps = 3;
        } else if (strcmp(argv[i], "--single") == 0) {
            single = true;
            omp_set_num_threads(1);
            openblas_set_num_threads(1);
        } else if (strcmp(argv[i], "--kernel") == 0 && i + 1 < argc) {
            const char *want = argv[++i];
            for (int k = 0; k < Q_KERNEL_COUNT; k++)
                if (strcmp(want, q_kernel_name((enum q_kernel)k)) == 0) kernel = (enum q_kernel)k;
        } else {
            fprintf(stderr, "usage: %s [--quick] [--kernel scalar|avx2|avx512|amx] [--single]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!q_kernel_available(kernel)) {
        fprintf(stderr, "kernel %s is not available on this CPU\n", q_kernel_name(kernel));
        return 1;
    }
    const int big_ms[] = {1, 8, 32, 128, 256};
    const int model_ms[] = {1, 8, 32, 128, 256};
    /* The default model: width 512 (16 outliers), FFN 1536 (48), KV width 128. */
    const struct shape model[] = {{"q/o 512x512", 0, 512, 512, 16},
                                  {"k/v 128x512", 0, 128, 512, 16},
                                  {"gate/up 1536x512", 0, 1536, 512, 16},
                                  {"down 512x1536", 0, 512, 1536, 48}};
    struct shape shapes[64];
    int n_shapes = 0;
    for (size_t i = 0; i < sizeof big_ms / sizeof *big_ms; i++)
        shapes[n_shapes++] = (struct shape){"4096x4096", big_ms[i], 4096, 4096, 128};
    for (size_t j = 0; j < sizeof model / sizeof *model; j++)
        for (size_t i = 0; i < sizeof model_ms / sizeof *model_ms; i++) {
            if (quick && model_ms[i] != 1 && model_ms[i] != 256) continue;
            shapes[n_shapes] = model[j];
            shapes[n_shapes++].m = model_ms[i];
        }

    printf("quant_gemm: y (M, N) = x (M, K) W^T; medians of %d runs; GOPS = 2MNK / time\n", reps);
    printf("cpu: %s\nflags: %s\n", util_cpu_model_name(), util_cpu_flags_string());
    printf("threads: %d (OpenMP), OpenBLAS %s with %d threads; quantized kernel: %s; timed in %s\n",
           omp_get_max_threads(), util_blas_corename(), util_blas_threads(), q_kernel_name(kernel),
           single ? "thread CPU time" : "wall time");
    double load[3];
    if (getloadavg(load, 3) == 3)
        printf("load average at start: %.2f %.2f %.2f\n", load[0], load[1], load[2]);
    printf("\n");
    printf("%-17s %4s | %9s %9s %9s %9s | %8s %8s %8s | %7s %7s %7s | %8s\n", "shape NxK", "M",
           "fp32 us", "w8a8 us", "w4a4 us", "atom us", "fp32 GOP", "w8a8 GOP", "w4a4 GOP",
           "w4/fp32", "w8/fp32", "w4/w8", "act us");
    double head_w4_fp32_256 = 0, head_w4_w8_1 = 0, head_w4_tops_256 = 0, head_w8_fp32_256 = 0;
    for (int i = 0; i < n_shapes; i++) {
        const struct shape *s = &shapes[i];
        double t[N_PATHS + 1];
        bench_shape(s, kernel, t);
        double ops = 2.0 * s->m * s->n * s->k;
        printf(
            "%-17s %4d | %9.1f %9.1f %9.1f %9.1f | %8.1f %8.1f %8.1f | %7.2f %7.2f %7.2f | %8.1f\n",
            s->name, s->m, 1e6 * t[FP32], 1e6 * t[W8A8], 1e6 * t[W4A4], 1e6 * t[ATOM],
            ops / t[FP32] * 1e-9, ops / t[W8A8] * 1e-9, ops / t[W4A4] * 1e-9, t[FP32] / t[W4A4],
            t[FP32] / t[W8A8], t[W8A8] / t[W4A4], 1e6 * t[N_PATHS]);
        fflush(stdout);
        if (s->n == 4096 && s->m == 256) {
            head_w4_fp32_256 = t[FP32] / t[W4A4];
            head_w8_fp32_256 = t[FP32] / t[W8A8];
            head_w4_tops_256 = ops / t[W4A4] * 1e-12;
        }
        if (s->n == 4096 && s->m == 1) head_w4_w8_1 = t[W8A8] / t[W4A4];
    }
    printf("\nw4a4_over_fp32_m256_4096: %.2f\n", head_w4_fp32_256);
    printf("w8a8_over_fp32_m256_4096: %.2f\n", head_w8_fp32_256);
    printf("w4a4_tops_m256_4096: %.3f\n", head_w4_tops_256);
    printf("w4a4_over_w8a8_m1_4096: %.2f\n", head_w4_w8_1);
    return 0;
}

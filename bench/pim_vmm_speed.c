/*
 * pim_vmm_speed: how fast the crossbar simulator runs bit-sliced VMMs, and
 * how far its results are from the exact product, at 128, 1024 and 4096
 * square, batch 1 and 256, with quantisation effects only and with the
 * non-idealities on.
 *
 * The configuration is the one CrossSim 3.2 was timed with on this machine
 * (the brief's figures): 8-bit weights over 2-bit cells (differential
 * pairs, 4 slices each), 8-bit inputs through an 8-bit DAC in one cycle,
 * 8-bit ADCs whose range is calibrated per slice on 16 separate sample
 * vectors (as CrossSim's). "noisy" adds RRAM programming error (2% of the range) and
 * 1% read noise, as CrossSim's run; "all" adds stuck-at faults (0.1% each)
 * and a day of drift. The bit-sliced engine is measured (the exact-product
 * shortcut is off). Times are medians of `reps` products after programming.
 *
 * CrossSim 3.2 (NumPy) on this machine, 4096 x 4096: 0.045 VMM/s with
 * programming error and read noise (32% error); quantisation only 1.3 VMM/s
 * at batch 1, 9.5 at batch 256 (1.5% error). VMM/s counts matrix-vector
 * products (a batch of 256 is 256 of them).
 */
#include "bench/bench.h"
#include "pim/pim_internal.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CROSSSIM_NOISY_B1   0.045
#define CROSSSIM_QUANT_B1   1.3
#define CROSSSIM_QUANT_B256 9.5

enum mode { MODE_QUANT, MODE_NOISY, MODE_ALL, MODE_COUNT };
static const char *const mode_names[MODE_COUNT] = {"quant", "noisy", "all"};

static struct pim_device bench_device(enum mode mode)
{
    struct pim_device dev;
    pim_device_default(&dev);
    dev.weight_bits = 8;
    dev.input_bits = 8;
    dev.dac_bits = 8;
    dev.adc_bits = 8;
    dev.adc_flip = false;
    dev.signed_mode = PIM_SIGNED_DIFFERENTIAL;
    if (mode >= MODE_NOISY) {
        dev.prog_noise = 0.02;
        dev.read_noise = 0.01;
    }
    if (mode == MODE_ALL) {
        dev.stuck_on_rate = dev.stuck_off_rate = 0.001;
        dev.drift_nu = 0.005;
        dev.drift_nu_std = 0.002;
        dev.drift_time = 86400;
    }
    return dev;
}

struct run {
    double program_s, vmm_s, vps, error;
};

static struct run measure(int n, int batch, enum mode mode, int reps)
{
    struct pim_device dev = bench_device(mode);
    struct util_rng rng;
    util_rng_seed(&rng, 1);
    float *w = util_xmalloc((size_t)n * n * sizeof(float)),
          *x = util_xmalloc((size_t)batch * n * sizeof(float));
    float *y = util_xmalloc((size_t)batch * n * sizeof(float));
    float *calib = util_xmalloc((size_t)16 * n * sizeof(float));
    double *want = util_xmalloc((size_t)batch * n * sizeof(double));
    for (size_t i = 0; i < (size_t)n * n; i++) w[i] = (float)util_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)batch * n; i++) x[i] = (float)util_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)16 * n; i++) calib[i] = (float)util_rng_normal(&rng);
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < n; i++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += (double)w[(size_t)i * n + k] * x[(size_t)t * n + k];
            want[(size_t)t * n + i] = s;
        }
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 42);
    ctx.no_exact_shortcut = true;
    struct run r = {0};
    double t0 = util_now();
    pim_matrix *mat;
    if (pim_matrix_program(&dev, &ctx, w, n, n, &mat) != 0) util_die("program failed");
    r.program_s = util_now() - t0;
    if (pim_matrix_calibrate_adc(mat, &ctx, calib, 16) != 0) util_die("calibration failed");
    double times[16];
    for (int k = 0; k < reps; k++) {
        t0 = util_now();
        if (pim_matrix_vmm(mat, pim_dataflow_get(PIM_DF_ISAAC), &ctx, x, batch, y, NULL) != 0)
            util_die("vmm failed");
        times[k] = util_now() - t0;
    }
    qsort(times, (size_t)reps, sizeof *times, bench_cmp_double);
    r.vmm_s = times[reps / 2];
    r.vps = batch / r.vmm_s;
    r.error = pim_rel_l2_f(y, want, (size_t)batch * n);
    pim_matrix_free(mat);
    free(w), free(x), free(y), free(want), free(calib);
    return r;
}

int main(int argc, char **argv)
{
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps < 1 || reps > 16) reps = 5;
    printf("# pim_vmm_speed\n\nCPU: %s; flags: %s; kernels: %s; OpenMP threads: %d\n\n",
           util_cpu_model_name(), util_cpu_flags_string(), pim_isa_name(pim_isa_selected()),
           pim_threads(&(struct pim_ctx){0}));
    printf(
        "| size | batch | effects | program (s) | VMM call (s) | VMM/s | rel. error vs fp64 |\n");
    printf("|---:|---:|---|---:|---:|---:|---:|\n");
    const int sizes[] = {128, 1024, 4096}, batches[] = {1, 256};
    struct run big[MODE_COUNT][2];
    for (int s = 0; s < 3; s++)
        for (int b = 0; b < 2; b++)
            for (int m = 0; m < MODE_COUNT; m++) {
                int n = sizes[s], batch = batches[b];
                /* Fewer repeats where one call takes seconds. */
                int r =
                    (n == 4096 && batch == 256 && m != MODE_QUANT) ? (reps < 3 ? reps : 3) : reps;
                struct run run = measure(n, batch, (enum mode)m, r);
                if (n == 4096) big[m][b] = run;
                printf("| %d | %d | %s | %.3f | %.4g | %.4g | %.4f |\n", n, batch, mode_names[m],
                       run.program_s, run.vmm_s, run.vps, run.error);
                fflush(stdout);
            }
    printf("\nAgainst CrossSim 3.2 at 4096 x 4096 (its figures from the brief, same machine):\n\n");
    printf("| case | CrossSim VMM/s | llmd VMM/s | speedup | CrossSim error | llmd error "
           "|\n|---|---:|---:|---:|---:|---:|\n");
    printf("| quantisation, batch 1 | %.3g | %.4g | %.0fx | 1.5%% | %.2f%% |\n", CROSSSIM_QUANT_B1,
           big[MODE_QUANT][0].vps, big[MODE_QUANT][0].vps / CROSSSIM_QUANT_B1,
           100 * big[MODE_QUANT][0].error);
    printf("| quantisation, batch 256 | %.3g | %.4g | %.0fx | 1.5%% | %.2f%% |\n",
           CROSSSIM_QUANT_B256, big[MODE_QUANT][1].vps,
           big[MODE_QUANT][1].vps / CROSSSIM_QUANT_B256, 100 * big[MODE_QUANT][1].error);
    printf(
        "| programming error + 1%% read noise, batch 1 | %.3g | %.4g | %.0fx | 32%% | %.2f%% |\n\n",
        CROSSSIM_NOISY_B1, big[MODE_NOISY][0].vps, big[MODE_NOISY][0].vps / CROSSSIM_NOISY_B1,
        100 * big[MODE_NOISY][0].error);
    printf("pim_vmm_4096_b1_quant_vps: %.4g\n", big[MODE_QUANT][0].vps);
    printf("pim_vmm_4096_b256_quant_vps: %.4g\n", big[MODE_QUANT][1].vps);
    printf("pim_vmm_4096_b1_noisy_vps: %.4g\n", big[MODE_NOISY][0].vps);
    printf("pim_vmm_4096_b256_noisy_vps: %.4g\n", big[MODE_NOISY][1].vps);
    printf("pim_vmm_speedup_vs_crosssim_quant_b1: %.0f\n",
           big[MODE_QUANT][0].vps / CROSSSIM_QUANT_B1);
    printf("pim_vmm_speedup_vs_crosssim_quant_b256: %.0f\n",
           big[MODE_QUANT][1].vps / CROSSSIM_QUANT_B256);
    printf("pim_vmm_speedup_vs_crosssim_noisy_b1: %.0f\n",
           big[MODE_NOISY][0].vps / CROSSSIM_NOISY_B1);
    return 0;
}

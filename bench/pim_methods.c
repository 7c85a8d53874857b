/*
 * pim_methods: the four ReRAM methods measured on the simulator.
 *   1. RePAST inversion: plain 8-bit INV solve and refined solve against
 *      float64, by condition number; a K-FAC step against the same work on
 *      the reference digital processor.
 *   2. SME: crossbars of the bit-sparse mapping against the plain
 *      bit-sliced mapping, on 8-bit quantised Gaussian and LLM-like
 *      (Laplacian, Student-t) weights.
 *   3. Dataflows: A/D conversions, energy, latency and throughput per mm^2
 *      of LLaMA-7B's linear layers and ResNet-18 convolutions under ISAAC,
 *      CASCADE and Neural-PIM, with ratios to ISAAC; and each dataflow's
 *      functional error on one product.
 *   4. ADMM: compression against error on a block-sparse least-squares
 *      problem.
 * Prints tables (markdown) and headline `name: value` lines.
 */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------- inversion */

static void spd_matrix(int n, double cond, uint64_t seed, double *a)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    double *q = util_xmalloc((size_t)n * n * sizeof(double)),
           *tau = util_xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < n * n; i++) q[i] = util_rng_normal(&rng);
    LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q, n, tau);
    LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q, n, tau);
    memset(a, 0, (size_t)n * n * sizeof(double));
    for (int l = 0; l < n; l++) {
        double lambda = pow(cond, -(double)l / (n - 1));
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) a[i * n + j] += lambda * q[i * n + l] * q[j * n + l];
    }
    free(q);
    free(tau);
}

static double worst_refined_error = 0, worst_plain_cond10 = 0;
static int worst_iterations = 0;

static void bench_inversion(void)
{
    int n = 64, k = 4;
    struct pim_device dev;
    pim_device_default(&dev);
    printf("## RePAST inversion (n = %d, %d right-hand sides, ISAAC device, 8-bit INV circuit)\n\n",
           n, k);
    printf("| cond | plain INV error | refined error | refinement steps | INV solves | VMM "
           "products | energy (J) | latency (s) |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    const double conds[] = {1, 10, 100, 1000, 10000};
    for (int c = 0; c < 5; c++) {
        double *a = util_xmalloc((size_t)n * n * 8), *b = util_xmalloc((size_t)n * k * 8);
        double *x = util_xmalloc((size_t)n * k * 8), *want = util_xmalloc((size_t)n * k * 8);
        double *f = util_xmalloc((size_t)n * n * 8);
        spd_matrix(n, conds[c], 100 + c, a);
        struct util_rng rng;
        util_rng_seed(&rng, 7);
        for (int i = 0; i < n * k; i++) b[i] = util_rng_normal(&rng);
        memcpy(f, a, (size_t)n * n * 8);
        memcpy(want, b, (size_t)n * k * 8);
        LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, k, f, n, want, k);
        struct pim_solve_options opt;
        pim_solve_options_default(&opt);
        struct pim_ctx ctx;
        struct pim_solve_stats st;
        struct pim_cost cost = {0};
        opt.refine = false;
        pim_ctx_init(&ctx, 1);
        pim_solve(&dev, &ctx, a, n, b, k, &opt, x, &st, &cost);
        double plain = pim_rel_l2(x, want, (size_t)n * k);
        opt.refine = true;
        pim_ctx_init(&ctx, 1);
        memset(&cost, 0, sizeof cost);
        int rc = pim_solve(&dev, &ctx, a, n, b, k, &opt, x, &st, &cost);
        double refined = rc == 0 ? pim_rel_l2(x, want, (size_t)n * k) : NAN;
        printf("| %.0e | %.3g | %.3g | %d | %d | %d | %.3g | %.3g |\n", conds[c], plain, refined,
               st.iterations, st.inv_solves, st.vmm_products, pim_cost_energy(&cost), cost.latency);
        if (conds[c] <= 1000) {
            worst_refined_error = fmax(worst_refined_error, refined);
            if (st.iterations > worst_iterations) worst_iterations = st.iterations;
        }
        if (conds[c] == 10) worst_plain_cond10 = plain;
        free(a), free(b), free(x), free(want), free(f);
    }
    printf("\n");
}

static double kfac_speedup, kfac_energy_saving, kfac_error;

static void bench_kfac(void)
{
    int batch = 512, d_in = 256, d_out = 128;
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    float *act = util_xmalloc((size_t)batch * d_in * 4),
          *og = util_xmalloc((size_t)batch * d_out * 4);
    float *grad = util_xmalloc((size_t)d_out * d_in * 4);
    for (int i = 0; i < batch * d_in; i++) act[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < batch * d_out; i++) og[i] = (float)(0.1 * util_rng_normal(&rng));
    for (int i = 0; i < d_out * d_in; i++) grad[i] = (float)util_rng_normal(&rng);
    struct pim_job job;
    pim_job_init(&job, PIM_JOB_KFAC_STEP);
    int64_t sa[2] = {batch, d_in}, sg[2] = {batch, d_out}, sw[2] = {d_out, d_in};
    pim_tensor_alloc(&job.activations, 2, sa);
    pim_tensor_alloc(&job.output_grads, 2, sg);
    pim_tensor_alloc(&job.grad, 2, sw);
    memcpy(job.activations.data, act, sizeof(float) * batch * d_in);
    memcpy(job.output_grads.data, og, sizeof(float) * batch * d_out);
    memcpy(job.grad.data, grad, sizeof(float) * d_out * d_in);
    job.damping = 1e-2;
    struct pim_result res;
    struct pim_error err = {0};
    double t0 = util_now();
    if (pim_job_run(&job, NULL, &res, &err) != 0) util_die("kfac: %s", err.message);
    double wall = util_now() - t0;
    kfac_speedup = res.digital.latency / res.cost.latency;
    kfac_energy_saving = pim_cost_energy(&res.digital) / pim_cost_energy(&res.cost);
    kfac_error = res.rel_l2_vs_fp64;
    printf("## K-FAC step (batch %d, layer %d -> %d, damping %g)\n\n", batch, d_in, d_out,
           job.damping);
    printf("| | latency (s) | energy (J) |\n|---|---:|---:|\n");
    printf("| simulated PIM (INV + VMM crossbars, digital glue) | %.3g | %.3g |\n",
           res.cost.latency, pim_cost_energy(&res.cost));
    printf("| reference digital processor (10 TFLOP/s, 30 pJ/FLOP, assumed) | %.3g | %.3g |\n\n",
           res.digital.latency, pim_cost_energy(&res.digital));
    printf("Error against float64: %.3g; %d refinement steps, %d INV solves, %d VMM products; "
           "simulated in %.2f s.\n\n",
           res.rel_l2_vs_fp64, res.iterations, res.solve.inv_solves, res.solve.vmm_products, wall);
    pim_result_free(&res);
    pim_job_free(&job);
    free(act), free(og), free(grad);
}

/* ------------------------------------------------------------------- SME */

static double sme_best_ratio;

static void weights(int kind, struct util_rng *rng, float *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double u = util_rng_uniform(rng) - 0.5;
        switch (kind) {
        case 0:
            w[i] = (float)util_rng_normal(rng);
            break;
        case 1:
            w[i] = (float)((u < 0 ? 1 : -1) * log(1 - 2 * fabs(u)));
            break;
        default: { /* Student-t, 4 degrees of freedom: heavier tails, LLM-like outliers */
            double z = util_rng_normal(rng), chi = 0;
            for (int k = 0; k < 4; k++) {
                double g = util_rng_normal(rng);
                chi += g * g;
            }
            w[i] = (float)(z / sqrt(chi / 4));
        }
        }
    }
}

static void bench_sme(void)
{
    int m = 2048, n = 2048;
    static const char *const names[] = {"Gaussian", "Laplacian", "Student-t(4)"};
    printf("## SME bit-sparse mapping (%d x %d, 8-bit per-tensor quantised weights, 128 x 128 "
           "crossbars)\n\n",
           m, n);
    printf("| weights | cell bits | max set bits | bit density | plain bit-sliced (sign-magnitude) "
           "| offset (ISAAC) | SME | saving vs plain | vs offset |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    float *w = util_xmalloc((size_t)m * n * 4);
    int32_t *q = util_xmalloc((size_t)m * n * 4), *r = util_xmalloc((size_t)m * n * 4);
    for (int kind = 0; kind < 3; kind++) {
        struct util_rng rng;
        util_rng_seed(&rng, 11 + kind);
        weights(kind, &rng, w, (size_t)m * n);
        pim_quantize(w, (size_t)m * n, 8, q);
        for (int cb = 1; cb <= 2; cb++)
            for (int k = 0; k <= 3; k += 3) {
                struct pim_device dev;
                pim_device_default(&dev);
                dev.cell_bits = cb;
                memcpy(r, q, (size_t)m * n * 4);
                pim_sme_requantize(r, (size_t)m * n, 8, k);
                pim_sme *sme;
                struct pim_sme_stats st;
                if (pim_sme_map(&dev, r, m, n, 8, &sme, &st) != 0) util_die("sme map");
                double ratio = (double)st.crossbars_baseline / (double)st.crossbars_sme;
                if (ratio > sme_best_ratio) sme_best_ratio = ratio;
                printf("| %s | %d | %s | %.3f | %lu | %lu | %lu | %.2fx | %.2fx |\n", names[kind],
                       cb, k ? "3" : "all", st.bit_density, (unsigned long)st.crossbars_baseline,
                       (unsigned long)st.crossbars_offset, (unsigned long)st.crossbars_sme, ratio,
                       (double)st.crossbars_offset / (double)st.crossbars_sme);
                pim_sme_free(sme);
            }
    }
    printf("\n");
    free(w), free(q), free(r);
}

/* ------------------------------------------------------------- dataflows */

static double npim_adc_ratio, npim_energy_ratio, cascade_energy_ratio, npim_tput_area_ratio;

static void dataflow_table(const char *title, const struct pim_device *dev,
                           const struct pim_layer_shape *layers, int n_layers, bool headline)
{
    struct pim_dataflow_report rep[PIM_DF_COUNT];
    for (int k = 0; k < PIM_DF_COUNT; k++)
        pim_dataflow_evaluate(dev, pim_dataflow_get(k), layers, n_layers, &rep[k]);
    printf("### %s\n\n", title);
    printf("| dataflow | A/D conversions | vs ISAAC | energy (J) | vs ISAAC | ADC energy (J) | "
           "latency (s) | crossbars | ADCs | area (mm^2) | vectors/s per mm^2 | vs ISAAC |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int k = 0; k < PIM_DF_COUNT; k++) {
        const struct pim_cost *c = &rep[k].cost;
        double e = pim_cost_energy(c), e0 = pim_cost_energy(&rep[0].cost);
        printf("| %s | %.4g | %.1fx | %.4g | %.2fx | %.4g | %.4g | %lu | %lu | %.3g | %.4g | %.2fx "
               "|\n",
               pim_dataflow_get(k)->name, (double)c->adc_conversions,
               (double)rep[0].cost.adc_conversions / (double)c->adc_conversions, e, e0 / e,
               c->energy[PIM_E_ADC], c->latency, (unsigned long)c->crossbars,
               (unsigned long)c->adcs, c->area, rep[k].throughput_per_mm2,
               rep[k].throughput_per_mm2 / rep[0].throughput_per_mm2);
    }
    printf("\n");
    if (headline) {
        npim_adc_ratio = (double)rep[0].cost.adc_conversions / (double)rep[2].cost.adc_conversions;
        npim_energy_ratio = pim_cost_energy(&rep[0].cost) / pim_cost_energy(&rep[2].cost);
        cascade_energy_ratio = pim_cost_energy(&rep[0].cost) / pim_cost_energy(&rep[1].cost);
        npim_tput_area_ratio = rep[2].throughput_per_mm2 / rep[0].throughput_per_mm2;
    }
}

static void bench_dataflows(void)
{
    /* LLaMA-7B per token: 32 layers of q, k, v, o (4096 x 4096), gate and up
     * (4096 -> 11008), down (11008 -> 4096). */
    const struct pim_layer_shape llama[] = {
        {4096, 4096, 32 * 4}, {4096, 11008, 32 * 2}, {11008, 4096, 32}};
    /* ResNet-18's 3x3 convolutions on 224 x 224 (one image). */
    const struct pim_layer_shape resnet[] = {{64 * 9, 64, 4 * 56 * 56},   {64 * 9, 128, 28 * 28},
                                             {128 * 9, 128, 3 * 28 * 28}, {128 * 9, 256, 14 * 14},
                                             {256 * 9, 256, 3 * 14 * 14}, {256 * 9, 512, 7 * 7},
                                             {512 * 9, 512, 3 * 7 * 7}};
    struct pim_device isaac, npim8;
    pim_device_default(&isaac);
    pim_device_default(&npim8);
    npim8.weight_bits = npim8.input_bits = 8;
    npim8.signed_mode = PIM_SIGNED_DIFFERENTIAL;
    npim8.adc_flip = false;
    printf("## Dataflows (weights resident, each matrix on its own crossbars; component figures of "
           "PAPERS.md, assumed ones in conf/pim/isaac.json)\n\n");
    dataflow_table("LLaMA-7B linear layers, one token, ISAAC device (16-bit operands)", &isaac,
                   llama, 3, false);
    dataflow_table(
        "LLaMA-7B linear layers, one token, 8-bit operands (differential, 4 slices, 8 cycles)",
        &npim8, llama, 3, true);
    dataflow_table("ResNet-18 3x3 convolutions, one image, 8-bit operands", &npim8, resnet, 7,
                   false);

    /* Functional error of each dataflow on one product, 8-bit operands. */
    int m = 512, n = 2048, batch = 16;
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    float *w = util_xmalloc((size_t)m * n * 4), *x = util_xmalloc((size_t)batch * n * 4),
          *y = util_xmalloc((size_t)batch * m * 4);
    double *want = util_xmalloc((size_t)batch * m * 8);
    for (int i = 0; i < m * n; i++) w[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < batch * n; i++) x[i] = (float)util_rng_normal(&rng);
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += (double)w[(size_t)i * n + k] * x[(size_t)t * n + k];
            want[(size_t)t * m + i] = s;
        }
    printf(
        "### Functional error of one product (%d x %d, %d vectors, 8-bit operands, 8-bit ADC)\n\n",
        m, n, batch);
    printf("| dataflow | rel. error vs fp64, default ADC range (one LSB per unit) | ADC range "
           "calibrated per slice |\n|---|---:|---:|\n");
    for (int k = 0; k < PIM_DF_COUNT; k++) {
        double e[2];
        for (int cal = 0; cal < 2; cal++) {
            struct pim_ctx ctx;
            pim_ctx_init(&ctx, 1);
            ctx.no_exact_shortcut = true;
            pim_matrix *mat;
            pim_matrix_program(&npim8, &ctx, w, m, n, &mat);
            if (cal) pim_matrix_calibrate_adc(mat, &ctx, x, batch);
            pim_matrix_vmm(mat, pim_dataflow_get(k), &ctx, x, batch, y, NULL);
            e[cal] = pim_rel_l2_f(y, want, (size_t)batch * m);
            pim_matrix_free(mat);
        }
        printf("| %s | %.4f | %.4f |\n", pim_dataflow_get(k)->name, e[0], e[1]);
    }
    printf("\n");
    free(w), free(x), free(y), free(want);
}

/* ------------------------------------------------------------------ ADMM */

static double admm_best_ratio_at_small_error;

static void bench_admm(void)
{
    int rows = 256, cols = 256, samples = 2048, bs = 64;
    struct util_rng rng;
    util_rng_seed(&rng, 21);
    /* W_true: 4 of the 16 blocks of 64 x 64 non-zero. */
    float *wt = util_xcalloc((size_t)rows * cols, 4), *w0 = util_xmalloc((size_t)rows * cols * 4);
    float *x = util_xmalloc((size_t)samples * cols * 4),
          *y = util_xmalloc((size_t)samples * rows * 4);
    float *out = util_xmalloc((size_t)rows * cols * 4);
    const int on[4][2] = {{0, 0}, {1, 3}, {2, 1}, {3, 2}};
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < bs; i++)
            for (int j = 0; j < bs; j++)
                wt[(size_t)(on[b][0] * bs + i) * cols + on[b][1] * bs + j] =
                    (float)util_rng_normal(&rng);
    for (int i = 0; i < rows * cols; i++) w0[i] = wt[i] + (float)(0.1 * util_rng_normal(&rng));
    for (int i = 0; i < samples * cols; i++) x[i] = (float)util_rng_normal(&rng);
    for (int s = 0; s < samples; s++)
        for (int i = 0; i < rows; i++) {
            double v = 0;
            for (int j = 0; j < cols; j++)
                v += (double)x[(size_t)s * cols + j] * wt[(size_t)i * cols + j];
            y[(size_t)s * rows + i] = (float)(v + 0.05 * util_rng_normal(&rng));
        }
    struct pim_device dev;
    pim_device_default(&dev);
    dev.rows = dev.cols = 64;
    printf("## ADMM compression (%d x %d least squares, %d samples, 64 x 64 crossbar blocks, 4 of "
           "16 blocks in the true model)\n\n",
           rows, cols, samples);
    printf("| keep | levels | compression | error before | after ADMM | after retraining | with "
           "5%% mismatch | crossbars freed | power saved | area saved |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    const double keeps[] = {1, 0.5, 0.25, 0.125};
    const int levels[] = {16, 4};
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 4; k++) {
            struct pim_admm_options opt;
            pim_admm_options_default(&opt);
            opt.block_rows = opt.block_cols = bs;
            opt.keep_ratio = keeps[k];
            opt.levels = levels[l];
            struct pim_ctx ctx;
            pim_ctx_init(&ctx, 1);
            struct pim_admm_stats st;
            if (pim_admm_compress(&dev, &ctx, w0, rows, cols, x, y, samples, &opt, out, &st,
                                  NULL) != 0)
                util_die("admm");
            printf("| %.3f | %d | %.1fx | %.4f | %.4f | %.4f | %.4f | %lu of %lu | %.0f%% | %.0f%% "
                   "|\n",
                   keeps[k], levels[l], st.compression_ratio, st.error_before, st.error_pruned,
                   st.error_after, st.error_mismatch, (unsigned long)st.crossbars_freed,
                   (unsigned long)st.crossbars_dense, 100 * (1 - st.power_kept / st.power_dense),
                   100 * (1 - st.area_kept / st.area_dense));
            if (st.error_after < 0.1 && st.compression_ratio > admm_best_ratio_at_small_error)
                admm_best_ratio_at_small_error = st.compression_ratio;
        }
    printf("\n");
    free(wt), free(w0), free(x), free(y), free(out);
}

int main(void)
{
    printf("# pim_methods\n\nCPU: %s; flags: %s\n\n", util_cpu_model_name(),
           util_cpu_flags_string());
    bench_inversion();
    bench_kfac();
    bench_sme();
    bench_dataflows();
    bench_admm();
    printf("pim_inv_refined_worst_error_cond_le_1e3: %.3g\n", worst_refined_error);
    printf("pim_inv_refined_worst_steps_cond_le_1e3: %d\n", worst_iterations);
    printf("pim_inv_plain_error_cond_10: %.3g\n", worst_plain_cond10);
    printf("pim_kfac_speedup_vs_digital: %.3g\n", kfac_speedup);
    printf("pim_kfac_energy_saving_vs_digital: %.3g\n", kfac_energy_saving);
    printf("pim_kfac_rel_error: %.3g\n", kfac_error);
    printf("pim_sme_best_crossbar_saving: %.3g\n", sme_best_ratio);
    printf("pim_npim_adc_reduction_vs_isaac_llama7b: %.3g\n", npim_adc_ratio);
    printf("pim_npim_energy_efficiency_vs_isaac_llama7b: %.3g\n", npim_energy_ratio);
    printf("pim_cascade_energy_efficiency_vs_isaac_llama7b: %.3g\n", cascade_energy_ratio);
    printf("pim_npim_throughput_per_area_vs_isaac_llama7b: %.3g\n", npim_tput_area_ratio);
    printf("pim_admm_best_compression_error_below_0.1: %.3g\n", admm_best_ratio_at_small_error);
    return 0;
}

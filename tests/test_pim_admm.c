/* Tests for ADMM memristor-aware compression: the result has at most the
 * allowed blocks, every value on the conductance levels, recovers a
 * block-sparse model, and reports mismatch, crossbars, power and area. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A recovered block-sparse model explains the targets to within this. */
#define RECOVERED_REL_ERROR 0.05

struct problem {
    int rows, cols, samples;
    float *w0, *x, *y;
};

/* Y = X W_true^T + noise, W_true non-zero on `blocks` of 32 x 32 blocks; the
 * starting point W0 is W_true plus dense noise. */
static struct problem make_problem(uint64_t seed)
{
    struct problem p = {.rows = 64, .cols = 96, .samples = 400};
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    float *wt = util_xcalloc((size_t)p.rows * p.cols, 4);
    const int on[][2] = {{0, 0}, {1, 2}, {0, 1}, {1, 0}}; /* 4 of the 6 blocks */
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 32; j++)
                wt[(size_t)(on[b][0] * 32 + i) * p.cols + on[b][1] * 32 + j] =
                    (float)util_rng_normal(&rng);
    p.w0 = util_xmalloc((size_t)p.rows * p.cols * 4);
    for (int i = 0; i < p.rows * p.cols; i++)
        p.w0[i] = wt[i] + (float)(0.05 * util_rng_normal(&rng));
    p.x = util_xmalloc((size_t)p.samples * p.cols * 4);
    p.y = util_xmalloc((size_t)p.samples * p.rows * 4);
    for (int i = 0; i < p.samples * p.cols; i++) p.x[i] = (float)util_rng_normal(&rng);
    for (int s = 0; s < p.samples; s++)
        for (int i = 0; i < p.rows; i++) {
            double v = 0;
            for (int j = 0; j < p.cols; j++) v += (double)p.x[s * p.cols + j] * wt[i * p.cols + j];
            p.y[s * p.rows + i] = (float)(v + 0.01 * util_rng_normal(&rng));
        }
    free(wt);
    return p;
}

static void free_problem(struct problem *p)
{
    free(p->w0);
    free(p->x);
    free(p->y);
}

static void admm_run(const struct problem *p, const struct pim_admm_options *opt, float *out,
                     struct pim_admm_stats *st)
{
    struct pim_device dev;
    pim_device_default(&dev);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_cost cost = {0};
    cr_assert_eq(pim_admm_compress(&dev, &ctx, p->w0, p->rows, p->cols, p->x, p->y, p->samples, opt,
                                   out, st, &cost),
                 0);
    cr_assert_gt(cost.energy[PIM_E_DIGITAL], 0);
    cr_assert_eq(cost.crossbars, st->crossbars_kept);
}

Test(pim_admm, result_has_the_allowed_blocks_on_the_levels_and_recovers_the_model)
{
    struct problem p = make_problem(1);
    struct pim_admm_options opt;
    pim_admm_options_default(&opt);
    opt.block_rows = opt.block_cols = 32;
    opt.keep_ratio = 4.0 / 6.0;
    opt.levels = 32;
    float *w = util_xmalloc((size_t)p.rows * p.cols * 4);
    struct pim_admm_stats st;
    admm_run(&p, &opt, w, &st);
    cr_log_info("before %.4f pruned %.4f after %.4f mismatch %.4f ratio %.2f", st.error_before,
                st.error_pruned, st.error_after, st.error_mismatch, st.compression_ratio);

    int nonzero_blocks = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++) {
            bool any = false;
            for (int i = 0; i < 32; i++)
                for (int j = 0; j < 32; j++) any |= w[(a * 32 + i) * p.cols + b * 32 + j] != 0;
            nonzero_blocks += any;
        }
    cr_assert_leq(nonzero_blocks, 4);
    cr_assert_eq(st.blocks_kept, 4);
    cr_assert_eq(st.blocks_total, 6);
    for (int i = 0; i < p.rows * p.cols; i++) {
        double k = w[i] / st.scale;
        cr_assert_float_eq(k, nearbyint(k), 1e-4, "value %g is not on a level (scale %g)", w[i],
                           st.scale);
        cr_assert_leq(fabs(k), opt.levels - 1 + 1e-4);
    }
    cr_assert_lt(st.error_after, RECOVERED_REL_ERROR);
    cr_assert_leq(st.error_after, st.error_pruned + 1e-9);
    cr_assert_gt(st.error_mismatch, st.error_after);
    cr_assert_float_eq(st.compression_ratio, 1.5, 1e-9);
    cr_assert_eq(st.crossbars_freed, st.crossbars_dense - st.crossbars_kept);
    cr_assert_lt(st.power_kept, st.power_dense);
    cr_assert_lt(st.area_kept, st.area_dense);
    free(w);
    free_problem(&p);
}

Test(pim_admm, harder_pruning_and_coarser_levels_cost_accuracy)
{
    struct problem p = make_problem(2);
    struct pim_admm_options opt;
    pim_admm_options_default(&opt);
    opt.block_rows = opt.block_cols = 32;
    float *w = util_xmalloc((size_t)p.rows * p.cols * 4);
    struct pim_admm_stats a, b;
    opt.keep_ratio = 4.0 / 6.0;
    opt.levels = 64;
    admm_run(&p, &opt, w, &a);
    opt.keep_ratio = 2.0 / 6.0; /* fewer blocks than the model has */
    admm_run(&p, &opt, w, &b);
    cr_assert_gt(b.error_after, a.error_after);
    cr_assert_gt(b.compression_ratio, a.compression_ratio);
    opt.keep_ratio = 4.0 / 6.0;
    opt.levels = 3; /* ternary cells */
    admm_run(&p, &opt, w, &b);
    cr_assert_gt(b.error_after, a.error_after);
    free(w);
    free_problem(&p);
}

Test(pim_admm, mismatch_error_rises_with_sigma)
{
    struct problem p = make_problem(3);
    struct pim_admm_options opt;
    pim_admm_options_default(&opt);
    opt.block_rows = opt.block_cols = 32;
    opt.keep_ratio = 4.0 / 6.0;
    opt.iterations = 10;
    opt.retrain_steps = 20;
    float *w = util_xmalloc((size_t)p.rows * p.cols * 4);
    double last = -1;
    const double sigmas[] = {0, 0.02, 0.1, 0.3};
    for (int i = 0; i < 4; i++) {
        struct pim_admm_stats st;
        opt.mismatch_sigma = sigmas[i];
        admm_run(&p, &opt, w, &st);
        cr_assert_gt(st.error_mismatch, last, "sigma %g: %g", sigmas[i], st.error_mismatch);
        if (i == 0) cr_assert_float_eq(st.error_mismatch, st.error_after, 1e-9);
        last = st.error_mismatch;
    }
    free(w);
    free_problem(&p);
}

Test(pim_admm, invalid_options_are_rejected)
{
    struct problem p = make_problem(4);
    struct pim_admm_options opt;
    pim_admm_options_default(&opt);
    struct pim_device dev;
    pim_device_default(&dev);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_admm_stats st;
    float *w = util_xmalloc((size_t)p.rows * p.cols * 4);
    opt.keep_ratio = 0;
    cr_assert_eq(pim_admm_compress(&dev, &ctx, p.w0, p.rows, p.cols, p.x, p.y, p.samples, &opt, w,
                                   &st, NULL),
                 -EINVAL);
    opt.keep_ratio = 0.5;
    opt.levels = 1;
    cr_assert_eq(pim_admm_compress(&dev, &ctx, p.w0, p.rows, p.cols, p.x, p.y, p.samples, &opt, w,
                                   &st, NULL),
                 -EINVAL);
    free(w);
    free_problem(&p);
}

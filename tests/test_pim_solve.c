/* Tests for pim's high-precision solves (RePAST) and the K-FAC step:
 * refined solves reach 16-bit accuracy against float64 for SPD matrices up
 * to condition number 1e3 while the plain INV solve stays near 8-bit. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One timeout for every test of the binary (Criterion 2.4.1 leaks under
 * LeakSanitizer with mixed ones). */
#define TIMEOUT 120
/* The contract: refined solves within 2^-16 of float64. */
#define REFINED_REL_ERROR 0x1p-16
/* "A handful" of refinement steps. */
#define MAX_REFINEMENT_STEPS 6
/* The plain 8-bit INV solve at condition 10: between 2^-10 and 2^-4. */
#define PLAIN_BEST  0x1p-10
#define PLAIN_WORST 0x1p-4
/* The reduction one refinement step asks of its inner solve (solve.c). */
#define INNER_SIX_BITS 0x1p-6

/* A (n x n) = Q diag(lambda) Q^T, lambda log-spaced from 1 to 1/cond, Q a
 * random orthogonal matrix (QR of a Gaussian one). */
static void spd_matrix(int n, double cond, uint64_t seed, double *a)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    double *q = util_xmalloc((size_t)n * n * sizeof(double)),
           *tau = util_xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < n * n; i++) q[i] = util_rng_normal(&rng);
    cr_assert_eq(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q, n, tau), 0);
    cr_assert_eq(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q, n, tau), 0);
    memset(a, 0, (size_t)n * n * sizeof(double));
    for (int l = 0; l < n; l++) {
        double lambda = n > 1 ? pow(cond, -(double)l / (n - 1)) : 1;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) a[i * n + j] += lambda * q[i * n + l] * q[j * n + l];
    }
    free(q);
    free(tau);
}

static void reference_solve(const double *a, int n, const double *b, int k, double *x)
{
    double *f = util_xmalloc((size_t)n * n * sizeof(double));
    memcpy(f, a, (size_t)n * n * sizeof(double));
    memcpy(x, b, (size_t)n * k * sizeof(double));
    cr_assert_eq(LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, k, f, n, x, k), 0);
    free(f);
}

static struct pim_device test_device(void)
{
    struct pim_device dev;
    pim_device_default(&dev);
    return dev;
}

/* Relative errors of the plain and the refined solve of A x = b. */
static void solve_errors(const struct pim_device *dev, int n, double cond, int k, uint64_t seed,
                         double *plain, double *refined, struct pim_solve_stats *st)
{
    double *a = util_xmalloc((size_t)n * n * 8), *b = util_xmalloc((size_t)n * k * 8);
    double *want = util_xmalloc((size_t)n * k * 8), *x = util_xmalloc((size_t)n * k * 8);
    spd_matrix(n, cond, seed, a);
    struct util_rng rng;
    util_rng_seed(&rng, seed + 1);
    for (int i = 0; i < n * k; i++) b[i] = util_rng_normal(&rng);
    reference_solve(a, n, b, k, want);

    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    struct pim_cost cost = {0};
    opt.refine = false;
    pim_ctx_init(&ctx, seed);
    cr_assert_eq(pim_solve(dev, &ctx, a, n, b, k, &opt, x, st, &cost), 0);
    *plain = pim_rel_l2(x, want, (size_t)n * k);
    opt.refine = true;
    pim_ctx_init(&ctx, seed);
    memset(&cost, 0, sizeof cost);
    cr_assert_eq(pim_solve(dev, &ctx, a, n, b, k, &opt, x, st, &cost), 0);
    *refined = pim_rel_l2(x, want, (size_t)n * k);
    cr_assert_eq(cost.inv_solves, (uint64_t)st->inv_solves);
    cr_assert_gt(cost.energy[PIM_E_INV], 0);
    cr_assert_gt(cost.adc_conversions, 0);
    free(a), free(b), free(want), free(x);
}

Test(pim_solve, refined_reaches_16_bits_up_to_condition_1e3, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    const double conds[] = {10, 100, 1000};
    const int sizes[] = {16, 64};
    for (int s = 0; s < 2; s++)
        for (int c = 0; c < 3; c++) {
            double plain, refined;
            struct pim_solve_stats st;
            solve_errors(&dev, sizes[s], conds[c], 2, 10 + c, &plain, &refined, &st);
            cr_log_info(
                "n=%d cond=%g: plain %.3g refined %.3g, %d steps, %d INV solves, %d products",
                sizes[s], conds[c], plain, refined, st.iterations, st.inv_solves, st.vmm_products);
            cr_assert_leq(refined, REFINED_REL_ERROR, "n=%d cond=%g refined %g", sizes[s], conds[c],
                          refined);
            cr_assert_leq(st.iterations, MAX_REFINEMENT_STEPS, "n=%d cond=%g: %d steps", sizes[s],
                          conds[c], st.iterations);
            cr_assert(st.converged);
            cr_assert_leq(st.residual, 0x1p-18, "converged means the residual met the tolerance");
            cr_assert_gt(plain, PLAIN_BEST, "plain INV must stay near 8-bit: %g", plain);
            if (c == 0) cr_assert_lt(plain, PLAIN_WORST, "plain INV at cond 10: %g", plain);
        }
}

Test(pim_solve, well_conditioned_refinement_is_one_inv_solve_per_step, .timeout = TIMEOUT)
{
    /* RePAST's iteration x += INV(r): when the INV circuit contracts, each
     * step's inner solve is one INV solve. */
    struct pim_device dev = test_device();
    double plain, refined;
    struct pim_solve_stats st;
    solve_errors(&dev, 8, 2, 1, 5, &plain, &refined, &st);
    cr_assert_lt(plain, INNER_SIX_BITS, "plain %g", plain);
    cr_assert_leq(refined, REFINED_REL_ERROR);
    cr_assert_eq(st.inv_solves, 1 + st.iterations, "%d INV solves for %d steps", st.inv_solves,
                 st.iterations);
}

Test(pim_solve, programming_noise_hurts_the_plain_solve_not_the_refined, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    double plain0, refined0, plain1, refined1;
    struct pim_solve_stats st;
    solve_errors(&dev, 32, 30, 1, 7, &plain0, &refined0, &st);
    dev.prog_noise = 0.003; /* 0.4 INV levels; far below the VMM ADC's half LSB */
    solve_errors(&dev, 32, 30, 1, 7, &plain1, &refined1, &st);
    cr_assert_gt(plain1, plain0, "noise %g vs clean %g", plain1, plain0);
    cr_assert_leq(refined1, REFINED_REL_ERROR);
}

Test(pim_solve, invert_reaches_16_bits, .timeout = TIMEOUT)
{
    int n = 24;
    double *a = util_xmalloc((size_t)n * n * 8), *inv = util_xmalloc((size_t)n * n * 8);
    double *want = util_xcalloc((size_t)n * n, 8), *eye = util_xcalloc((size_t)n * n, 8);
    spd_matrix(n, 500, 3, a);
    for (int i = 0; i < n; i++) eye[i * n + i] = 1;
    reference_solve(a, n, eye, n, want);
    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    struct pim_cost cost = {0};
    cr_assert_eq(pim_invert(&dev, &ctx, a, n, &opt, inv, &st, &cost), 0);
    cr_assert_leq(pim_rel_l2(inv, want, (size_t)n * n), REFINED_REL_ERROR);
    free(a), free(inv), free(want), free(eye);
}

Test(pim_solve, many_right_hand_sides_are_refined_in_chunks, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    double plain, refined;
    struct pim_solve_stats st;
    solve_errors(&dev, 12, 50, 70, 21, &plain, &refined, &st); /* 64 + 6 columns */
    cr_assert_leq(refined, REFINED_REL_ERROR);
    cr_assert(st.converged);
    cr_assert_geq(st.inv_solves, 70);
}

Test(pim_solve, singular_and_invalid_inputs_are_errors, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    double a[4] = {1, 1, 1, 1}, b[2] = {1, 2}, x[2];
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EDOM);
    a[1] = NAN;
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EINVAL);
    a[1] = 0;
    opt.residual_bits = 40;
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EINVAL);
    pim_solve_options_default(&opt);
    cr_assert_eq(pim_solve(&dev, &ctx, a, PIM_SOLVE_MAX_N + 1, b, 1, &opt, x, &st, NULL), -EINVAL);
}

Test(pim_solve, singular_matrices_fail_instead_of_converging, .timeout = TIMEOUT)
{
    /* [[1,2],[2,4]] is exactly singular; its 8-bit INV mapping is not, so
     * without the check the refinement stalled at a residual of ~1.5 and
     * called it converged. */
    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    double a[4] = {1, 2, 2, 4}, b[2] = {1, 1}, x[2], inv[4];
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EDOM);
    cr_assert_lt(st.rcond, DBL_EPSILON);
    cr_assert_not(st.converged);
    cr_assert_eq(pim_invert(&dev, &ctx, a, 2, &opt, inv, &st, NULL), -EDOM);
    opt.refine = false; /* the plain solve too */
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EDOM);
    /* Numerically singular: a perturbation below float64's precision. */
    a[3] = 4 + 0x1p-50;
    pim_solve_options_default(&opt);
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -EDOM);
    cr_assert_lt(st.rcond, DBL_EPSILON);
    cr_assert_gt(st.rcond, 0);
    /* A regular 2 x 2 system still solves. */
    a[3] = 5;
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), 0);
    cr_assert(st.converged);
    cr_assert_float_eq(x[0], 3.0, 1e-4);
    cr_assert_float_eq(x[1], -1.0, 1e-4);
}

Test(pim_solve, a_stalled_refinement_is_not_converged, .timeout = TIMEOUT)
{
    /* Condition 1e12: regular in float64, far past what 32-bit residuals
     * refine; the solve returns, but says it did not converge. */
    struct pim_device dev = test_device();
    int n = 16;
    double *a = util_xmalloc((size_t)n * n * 8), b[16], x[16];
    spd_matrix(n, 1e12, 4, a);
    for (int i = 0; i < n; i++) b[i] = 1;
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    cr_assert_eq(pim_solve(&dev, &ctx, a, n, b, 1, &opt, x, &st, NULL), 0);
    cr_log_info("cond 1e12: residual %g after %d steps", st.residual, st.iterations);
    cr_assert_gt(st.rcond, DBL_EPSILON);
    cr_assert_gt(st.residual, opt.tolerance);
    cr_assert_not(st.converged);
    free(a);
}

Test(pim_solve, an_overflowing_solution_is_an_error, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    double a[4] = {1e-300, 0, 0, 1e-300}, b[2] = {1e300, 1e300}, x[2];
    cr_assert_eq(pim_solve(&dev, &ctx, a, 2, b, 1, &opt, x, &st, NULL), -ERANGE);
    cr_assert_not(st.converged);
}

Test(pim_solve, cancellation_stops_a_solve, .timeout = TIMEOUT)
{
    struct pim_device dev = test_device();
    int n = 16;
    double *a = util_xmalloc((size_t)n * n * 8), b[16] = {1}, x[16];
    spd_matrix(n, 100, 2, a);
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    atomic_bool cancel = true;
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    ctx.cancel = &cancel;
    struct pim_solve_stats st;
    struct pim_cost cost = {0};
    cr_assert_eq(pim_solve(&dev, &ctx, a, n, b, 1, &opt, x, &st, &cost), -ECANCELED);
    free(a);
}

/* ---------------------------------------------------------------- K-FAC */

Test(pim_kfac, preconditioned_gradient_matches_float64, .timeout = TIMEOUT)
{
    int batch = 64, d_in = 20, d_out = 12;
    double damping = 1e-3;
    struct util_rng rng;
    util_rng_seed(&rng, 9);
    float *act = util_xmalloc((size_t)batch * d_in * 4),
          *og = util_xmalloc((size_t)batch * d_out * 4);
    float *grad = util_xmalloc((size_t)d_out * d_in * 4),
          *p = util_xmalloc((size_t)d_out * d_in * 4);
    for (int i = 0; i < batch * d_in; i++) act[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < batch * d_out; i++) og[i] = (float)(0.1 * util_rng_normal(&rng));
    for (int i = 0; i < d_out * d_in; i++) grad[i] = (float)util_rng_normal(&rng);

    /* float64: G^-1 grad A^-1 */
    double *fa = util_xcalloc((size_t)d_in * d_in, 8), *fg = util_xcalloc((size_t)d_out * d_out, 8);
    for (int r = 0; r < batch; r++) {
        for (int i = 0; i < d_in; i++)
            for (int j = 0; j < d_in; j++)
                fa[i * d_in + j] += (double)act[r * d_in + i] * act[r * d_in + j] / batch;
        for (int i = 0; i < d_out; i++)
            for (int j = 0; j < d_out; j++)
                fg[i * d_out + j] += (double)og[r * d_out + i] * og[r * d_out + j] / batch;
    }
    for (int i = 0; i < d_in; i++) fa[i * d_in + i] += sqrt(damping);
    for (int i = 0; i < d_out; i++) fg[i * d_out + i] += sqrt(damping);
    double *g = util_xmalloc((size_t)d_out * d_in * 8),
           *x1 = util_xmalloc((size_t)d_out * d_in * 8);
    double *x1t = util_xmalloc((size_t)d_in * d_out * 8),
           *pt = util_xmalloc((size_t)d_in * d_out * 8);
    double *want = util_xmalloc((size_t)d_out * d_in * 8);
    for (int i = 0; i < d_out * d_in; i++) g[i] = grad[i];
    reference_solve(fg, d_out, g, d_in, x1);
    for (int i = 0; i < d_out; i++)
        for (int j = 0; j < d_in; j++) x1t[j * d_out + i] = x1[i * d_in + j];
    reference_solve(fa, d_in, x1t, d_out, pt);
    for (int i = 0; i < d_out; i++)
        for (int j = 0; j < d_in; j++) want[i * d_in + j] = pt[j * d_out + i];

    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    struct pim_cost cost = {0}, digital = {0};
    cr_assert_eq(pim_kfac_step(&dev, &ctx, act, og, batch, d_in, d_out, grad, damping, &opt, p, &st,
                               &cost, &digital),
                 0);
    double err = pim_rel_l2_f(p, want, (size_t)d_out * d_in);
    cr_assert_leq(err, 0x1p-15, "K-FAC error %g (float output)", err);
    cr_assert_gt(pim_cost_energy(&digital), 0);
    cr_assert_gt(digital.latency, 0);
    cr_assert_gt(cost.inv_solves, 0);
    free(act), free(og), free(grad), free(p), free(fa), free(fg), free(g), free(x1), free(x1t),
        free(pt), free(want);
}

Test(pim_kfac, a_singular_damped_factor_is_an_error, .timeout = TIMEOUT)
{
    /* Rank-one activation statistics and a damping far below float64's
     * precision: the damped factor is singular to working precision. */
    int batch = 4, d_in = 4, d_out = 2;
    float act[16], og[8], grad[8], p[8];
    for (int i = 0; i < 16; i++) act[i] = 1;
    for (int i = 0; i < 8; i++) og[i] = (float)(i % 3) - 1, grad[i] = 1;
    struct pim_device dev = test_device();
    struct pim_solve_options opt;
    pim_solve_options_default(&opt);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_solve_stats st;
    struct pim_cost cost = {0};
    cr_assert_eq(pim_kfac_step(&dev, &ctx, act, og, batch, d_in, d_out, grad, 1e-300, &opt, p, &st,
                               &cost, NULL),
                 -EDOM);
    cr_assert_lt(st.rcond, DBL_EPSILON);
    cr_assert_not(st.converged);
    cr_assert_eq(pim_kfac_step(&dev, &ctx, act, og, batch, d_in, d_out, grad, 1e-2, &opt, p, &st,
                               &cost, NULL),
                 0);
    cr_assert(st.converged);
}

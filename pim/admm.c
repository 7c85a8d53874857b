/* admm.c: memristor-aware compression of a weight matrix by ADMM.
 *
 * Objective: least squares f(W) = ||X W^T - Y||^2 / (2 s) over s samples,
 * so grad f = W H - G with H = X^T X / s and G = Y^T X / s.
 * Constraint set: at most keep_blocks non-zero blocks of block_rows x
 * block_cols (a crossbar each), every value on the grid of a differential
 * cell pair with `levels` conductance levels: k * scale, |k| <= levels - 1.
 * ADMM: W-step gradient descent on f + rho/2 ||W - Z + U||^2; Z-step the
 * Euclidean projection (top blocks by norm, then rounding); U += W - Z;
 * rho grows each iteration. Masked retraining continues with the block mask
 * fixed. The result is evaluated with device mismatch: each cell's
 * conductance (g_off included) times 1 + N(0, sigma). */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* rho grows by this factor per ADMM iteration. */
#define RHO_GROWTH 1.25

void pim_admm_options_default(struct pim_admm_options *opt)
{
    opt->block_rows = 128;
    opt->block_cols = 128;
    opt->keep_ratio = 0.25;
    opt->levels = 16;
    opt->rho = 1e-2;
    opt->iterations = 30;
    opt->w_steps = 20;
    opt->retrain_steps = 100;
    opt->mismatch_sigma = 0.05;
    opt->mismatch_trials = 8;
}

struct admm_problem {
    int rows, cols, samples;
    const double *x, *y; /* (samples x cols), (samples x rows) */
    double *h, *g;       /* (cols x cols), (rows x cols) */
    double lmax;         /* largest eigenvalue of H */
    double y_norm;
    double flops; /* digital work done */
    /* blocks */
    int br, bc, nbr, nbc, keep;
    int levels;
    double scale;
};

/* Relative error ||X W^T - Y|| / ||Y||. */
static double rel_error(struct admm_problem *p, const double *w)
{
    double *pred = util_xmalloc((size_t)p->samples * p->rows * sizeof(double));
    memcpy(pred, p->y, (size_t)p->samples * p->rows * sizeof(double));
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->samples, p->rows, p->cols, 1.0, p->x,
                p->cols, w, p->cols, -1.0, pred, p->rows);
    double e = 0;
    for (size_t i = 0; i < (size_t)p->samples * p->rows; i++) e += pred[i] * pred[i];
    free(pred);
    p->flops += 2.0 * p->samples * p->rows * p->cols;
    return p->y_norm > 0 ? sqrt(e) / p->y_norm : sqrt(e);
}

/* Largest eigenvalue of H by power iteration. */
static double largest_eigenvalue(const double *h, int n)
{
    double *v = util_xmalloc((size_t)n * sizeof(double)),
           *w = util_xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) v[i] = 1.0 / sqrt(n) * (1 + 0.01 * (i % 7));
    double lambda = 0;
    for (int it = 0; it < 100; it++) {
        cblas_dgemv(CblasRowMajor, CblasNoTrans, n, n, 1.0, h, n, v, 1, 0.0, w, 1);
        double norm = cblas_dnrm2(n, w, 1);
        if (norm == 0) break;
        lambda = norm;
        for (int i = 0; i < n; i++) v[i] = w[i] / norm;
    }
    free(v);
    free(w);
    return lambda;
}

static double round_level(const struct admm_problem *p, double v)
{
    double k = nearbyint(v / p->scale), top = p->levels - 1;
    return (k > top ? top : k < -top ? -top : k) * p->scale;
}

/* The block (a, b)'s extent. */
static void block_range(const struct admm_problem *p, int a, int b, int *r0, int *r1, int *c0,
                        int *c1)
{
    *r0 = a * p->br;
    *r1 = *r0 + p->br < p->rows ? *r0 + p->br : p->rows;
    *c0 = b * p->bc;
    *c1 = *c0 + p->bc < p->cols ? *c0 + p->bc : p->cols;
}

struct block_norm {
    double norm;
    int index;
};

static int by_norm_desc(const void *pa, const void *pb)
{
    const struct block_norm *a = pa, *b = pb;
    if (a->norm != b->norm) return a->norm < b->norm ? 1 : -1;
    return a->index - b->index;
}

/* z = projection of v: the keep blocks of largest norm (or those of mask
 * when given), values rounded to the levels; mask_out records the blocks. */
static void project(const struct admm_problem *p, const double *v, const uint8_t *mask, double *z,
                    uint8_t *mask_out)
{
    int nblocks = p->nbr * p->nbc;
    uint8_t *keep = mask_out;
    if (mask) {
        memcpy(keep, mask, (size_t)nblocks);
    } else {
        struct block_norm *bn = util_xmalloc((size_t)nblocks * sizeof *bn);
        for (int a = 0; a < p->nbr; a++)
            for (int b = 0; b < p->nbc; b++) {
                int r0, r1, c0, c1;
                block_range(p, a, b, &r0, &r1, &c0, &c1);
                double s = 0;
                for (int i = r0; i < r1; i++)
                    for (int j = c0; j < c1; j++) {
                        double q = round_level(p, v[(size_t)i * p->cols + j]);
                        s += q * q; /* the norm the block keeps once on the levels */
                    }
                bn[a * p->nbc + b] = (struct block_norm){s, a * p->nbc + b};
            }
        qsort(bn, (size_t)nblocks, sizeof *bn, by_norm_desc);
        memset(keep, 0, (size_t)nblocks);
        for (int i = 0; i < p->keep; i++) keep[bn[i].index] = 1;
        free(bn);
    }
    for (int a = 0; a < p->nbr; a++)
        for (int b = 0; b < p->nbc; b++) {
            int r0, r1, c0, c1;
            block_range(p, a, b, &r0, &r1, &c0, &c1);
            bool on = keep[a * p->nbc + b];
            for (int i = r0; i < r1; i++)
                for (int j = c0; j < c1; j++)
                    z[(size_t)i * p->cols + j] =
                        on ? round_level(p, v[(size_t)i * p->cols + j]) : 0;
        }
}

/* steps of gradient descent on f(W) + rho/2 ||W - Z + U||^2, the gradient
 * masked to the kept blocks when mask is given. */
static void w_step(struct admm_problem *p, double *w, const double *z, const double *u, double rho,
                   int steps, const uint8_t *mask, double *grad)
{
    double eta = 1.0 / (p->lmax + rho);
    size_t count = (size_t)p->rows * p->cols;
    for (int it = 0; it < steps; it++) {
        memcpy(grad, p->g, count * sizeof(double));
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->rows, p->cols, p->cols, 1.0, w,
                    p->cols, p->h, p->cols, -1.0, grad, p->cols);
        for (size_t i = 0; i < count; i++) {
            double gi = grad[i] + rho * (w[i] - z[i] + u[i]);
            if (mask) {
                int a = (int)(i / p->cols) / p->br, b = (int)(i % p->cols) / p->bc;
                if (!mask[a * p->nbc + b]) gi = 0;
            }
            w[i] -= eta * gi;
        }
        p->flops += 2.0 * p->rows * (double)p->cols * p->cols + 6.0 * count;
    }
}

/* The relative error of w under device mismatch, averaged over trials:
 * both cells of each kept weight's pair (g_off included) scaled by
 * 1 + N(0, sigma); released blocks have no cells. */
static double mismatch_error(struct admm_problem *p, const struct pim_device *dev,
                             struct pim_ctx *ctx, const double *w, const uint8_t *mask,
                             double sigma, int trials)
{
    size_t count = (size_t)p->rows * p->cols;
    double *wm = util_xmalloc(count * sizeof(double));
    float *z = util_xmalloc(2 * count * sizeof(float));
    double off = (p->levels - 1) / (dev->on_off - 1); /* g_off in level units */
    double sum = 0;
    uint64_t stream = ctx->stream++;
    for (int t = 0; t < trials; t++) {
        pim_rng_normal(pim_key(ctx->seed, stream, 7, (uint64_t)t), 0, z, 2 * count);
        for (size_t i = 0; i < count; i++) {
            int a = (int)(i / p->cols) / p->br, b = (int)(i % p->cols) / p->bc;
            double k = w[i] / p->scale, kp = k > 0 ? k : 0, kn = k < 0 ? -k : 0;
            wm[i] = !mask[a * p->nbc + b] ? 0
                                          : p->scale * ((kp + off) * (1 + sigma * z[2 * i]) -
                                                        (kn + off) * (1 + sigma * z[2 * i + 1]));
        }
        sum += rel_error(p, wm);
    }
    free(wm);
    free(z);
    return trials > 0 ? sum / trials : 0;
}

/* Power and area of `crossbars` crossbars with their converters. */
static void array_power_area(const struct pim_device *dev, uint64_t crossbars, double *power,
                             double *area)
{
    double per_power = dev->xbar_power + dev->rows * dev->dac_power +
                       dev->adcs_per_crossbar * (dev->adc_power + dev->sa_power);
    double per_area = dev->xbar_area + dev->rows * dev->dac_area +
                      dev->adcs_per_crossbar * (dev->adc_area + dev->sa_area);
    *power = (double)crossbars * per_power;
    *area = (double)crossbars * per_area;
}

static bool admm_options_valid(const struct pim_admm_options *o)
{
    return o->block_rows >= 1 && o->block_cols >= 1 && o->keep_ratio > 0 && o->keep_ratio <= 1 &&
           o->levels >= 2 && o->levels <= 1 << 16 && isfinite(o->rho) && o->rho > 0 &&
           o->iterations >= 0 && o->iterations <= 10000 && o->w_steps >= 1 && o->w_steps <= 10000 &&
           o->retrain_steps >= 0 && o->retrain_steps <= 100000 && isfinite(o->mismatch_sigma) &&
           o->mismatch_sigma >= 0 && o->mismatch_trials >= 0 && o->mismatch_trials <= 1000;
}

int pim_admm_compress(const struct pim_device *dev, struct pim_ctx *ctx, const float *w, int rows,
                      int cols, const float *x, const float *y, int samples,
                      const struct pim_admm_options *opt, float *w_out,
                      struct pim_admm_stats *stats, struct pim_cost *cost)
{
    memset(stats, 0, sizeof *stats);
    if (rows < 1 || cols < 1 || cols > PIM_ADMM_MAX_COLS || samples < 1 ||
        !admm_options_valid(opt) || pim_device_validate(dev, NULL) != 0)
        return -EINVAL;
    struct pim_cost ignored = {0};
    if (!cost) cost = &ignored;
    size_t count = (size_t)rows * cols;
    struct admm_problem p = {.rows = rows, .cols = cols, .samples = samples};
    double *xd = util_xmalloc((size_t)samples * cols * sizeof(double));
    double *yd = util_xmalloc((size_t)samples * rows * sizeof(double));
    for (size_t i = 0; i < (size_t)samples * cols; i++) xd[i] = x[i];
    for (size_t i = 0; i < (size_t)samples * rows; i++) yd[i] = y[i];
    p.x = xd;
    p.y = yd;
    p.y_norm = cblas_dnrm2(samples * rows, yd, 1);
    p.h = util_xmalloc((size_t)cols * cols * sizeof(double));
    p.g = util_xmalloc(count * sizeof(double));
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, cols, samples, 1.0 / samples, xd,
                cols, xd, cols, 0.0, p.h, cols);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, cols, samples, 1.0 / samples, yd,
                rows, xd, cols, 0.0, p.g, cols);
    p.flops += 2.0 * samples * ((double)cols * cols + (double)rows * cols);
    p.lmax = largest_eigenvalue(p.h, cols);
    p.br = opt->block_rows;
    p.bc = opt->block_cols;
    p.nbr = pim_ceil_div(rows, p.br);
    p.nbc = pim_ceil_div(cols, p.bc);
    int nblocks = p.nbr * p.nbc;
    p.keep = (int)ceil(opt->keep_ratio * nblocks - 1e-9);
    if (p.keep < 1) p.keep = 1;
    p.levels = opt->levels;

    double *wd = util_xmalloc(count * sizeof(double)), *z = util_xmalloc(count * sizeof(double));
    double *u = util_xcalloc(count, sizeof(double)), *grad = util_xmalloc(count * sizeof(double));
    double *v = util_xmalloc(count * sizeof(double));
    uint8_t *mask = util_xmalloc((size_t)nblocks);
    double amax = 0;
    for (size_t i = 0; i < count; i++) {
        wd[i] = w[i];
        amax = fmax(amax, fabs(wd[i]));
    }
    /* The level step: the clipping of absmax that rounds W with the least
     * squared error. */
    p.scale = amax > 0 ? amax / (p.levels - 1) : 1;
    double best_sq = INFINITY, best_scale = p.scale;
    for (int c = 20; c >= 4 && amax > 0; c--) {
        p.scale = amax * c / 20.0 / (p.levels - 1);
        double sq = 0;
        for (size_t i = 0; i < count; i++) {
            double d = wd[i] - round_level(&p, wd[i]);
            sq += d * d;
        }
        if (sq < best_sq) {
            best_sq = sq;
            best_scale = p.scale;
        }
    }
    p.scale = best_scale;
    stats->error_before = rel_error(&p, wd);

    int rc = 0;
    double rho = opt->rho * (p.lmax > 0 ? p.lmax : 1);
    project(&p, wd, NULL, z, mask);
    for (int it = 0; it < opt->iterations && rc == 0; it++) {
        w_step(&p, wd, z, u, rho, opt->w_steps, NULL, grad);
        for (size_t i = 0; i < count; i++) v[i] = wd[i] + u[i];
        project(&p, v, NULL, z, mask);
        for (size_t i = 0; i < count; i++) u[i] += wd[i] - z[i];
        rho *= RHO_GROWTH;
        if (pim_ctx_cancelled(ctx)) rc = -ECANCELED;
    }
    stats->error_pruned = rel_error(&p, z);

    /* Masked retraining: the blocks fixed, the values still pulled onto the
     * levels, from the projected point with a softer penalty so that W can
     * move again; the best projected point found is kept. */
    double *best = util_xmalloc(count * sizeof(double));
    memcpy(best, z, count * sizeof(double));
    double best_error = stats->error_pruned;
    memcpy(wd, z, count * sizeof(double));
    memset(u, 0, count * sizeof(double));
    rho /= 16;
    for (int it = 0; it < opt->retrain_steps && rc == 0; it += 10) {
        w_step(&p, wd, z, u, rho, 10, mask, grad);
        for (size_t i = 0; i < count; i++) v[i] = wd[i] + u[i];
        project(&p, v, mask, z, mask);
        for (size_t i = 0; i < count; i++) u[i] += wd[i] - z[i];
        rho *= RHO_GROWTH;
        double e = rel_error(&p, z);
        if (e < best_error) {
            best_error = e;
            memcpy(best, z, count * sizeof(double));
        }
        if (pim_ctx_cancelled(ctx)) rc = -ECANCELED;
    }
    memcpy(z, best, count * sizeof(double));
    free(best);
    if (rc == 0) {
        stats->error_after = rel_error(&p, z);
        stats->error_mismatch =
            mismatch_error(&p, dev, ctx, z, mask, opt->mismatch_sigma, opt->mismatch_trials);
        for (size_t i = 0; i < count; i++) w_out[i] = (float)z[i];

        int kept = 0;
        size_t kept_weights = 0;
        for (int b = 0; b < nblocks; b++)
            if (mask[b]) {
                int r0, r1, c0, c1;
                block_range(&p, b / p.nbc, b % p.nbc, &r0, &r1, &c0, &c1);
                kept++;
                kept_weights += (size_t)(r1 - r0) * (c1 - c0);
            }
        stats->blocks_total = nblocks;
        stats->blocks_kept = kept;
        stats->compression_ratio = kept_weights ? (double)count / kept_weights : INFINITY;
        stats->scale = p.scale;
        /* A block of br outputs x bc inputs: inputs on rows, two columns per weight. */
        uint64_t per_block =
            (uint64_t)pim_ceil_div(p.bc, dev->rows) * (uint64_t)pim_ceil_div(2L * p.br, dev->cols);
        stats->crossbars_dense = per_block * (uint64_t)nblocks;
        stats->crossbars_kept = per_block * (uint64_t)kept;
        stats->crossbars_freed = stats->crossbars_dense - stats->crossbars_kept;
        array_power_area(dev, stats->crossbars_dense, &stats->power_dense, &stats->area_dense);
        array_power_area(dev, stats->crossbars_kept, &stats->power_kept, &stats->area_kept);

        pim_cost_add_digital(dev, p.flops, cost);
        pim_cost_add_program(dev, 2 * (uint64_t)kept_weights, stats->crossbars_kept, cost);
        cost->crossbars += stats->crossbars_kept;
        cost->area += stats->area_kept;
    }
    free(xd), free(yd), free(p.h), free(p.g);
    free(wd), free(z), free(u), free(grad), free(v), free(mask);
    return rc;
}

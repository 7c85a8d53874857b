/* solve.c: high-precision linear solves on the simulated device (RePAST),
 * and the K-FAC preconditioning step built on them.
 *
 * Two kinds of arrays take part:
 *   the INV circuit   A_H, A quantised to inv_bits on differential cell
 *                     pairs (with the device's programming noise and
 *                     faults); op-amps in feedback settle to A_H x = b in one
 *                     step. b enters through inv_bits DACs, x leaves through
 *                     inv_bits ADCs (ranged to the output). Its steady state
 *                     is simulated by an LU solve of the programmed A_H.
 *   VMM crossbars     A bit-sliced at residual_bits, for residuals r = b - A x
 *                     and Krylov products, through the device's dataflow.
 * Refinement (GMRES-IR): r = b - A x on the VMM crossbars; the correction d
 * of A d = r by flexible GMRES preconditioned by the INV circuit, to a few
 * bits (one step when the INV circuit alone contracts, as in RePAST's
 * iteration x += INV(r)); x += d; until the residual meets the tolerance or
 * stops shrinking. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Residual reduction each refinement step asks of its inner solve: about
 * what one 8-bit INV solve gives a well-conditioned system. */
#define INNER_REDUCTION 0x1p-6
/* A refinement step that shrinks the residual by less than this has hit the
 * precision floor of the residual arithmetic. */
#define STAGNATION 0.9
/* Right-hand sides refined together (their products batched). */
#define SOLVE_CHUNK 64

void pim_solve_options_default(struct pim_solve_options *opt)
{
    opt->refine = true;
    opt->max_iterations = 10;
    opt->inner_max = 40;
    opt->tolerance = 0x1p-18;
    opt->residual_bits = 32;
}

/* ------------------------------------------------------------ INV circuit */

struct inv_circuit {
    const struct pim_device *dev;
    int n;
    double *lu; /* LU factors of the programmed A_H */
    lapack_int *piv;
    struct pim_cost per_solve; /* without its time: see inv_time */
    double solve_time;
    uint64_t replicas; /* circuits side by side on half the device */
};

/* A_H on the INV arrays: quantised, with programming noise (a fraction of
 * the level range) and stuck cells. */
static int inv_program(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
                       struct inv_circuit *inv, struct pim_cost *cost)
{
    size_t nn = (size_t)n * n;
    int32_t *q = util_xmalloc(nn * sizeof(int32_t));
    float *z = util_xmalloc(nn * sizeof(float)), *u = util_xmalloc(nn * sizeof(float));
    double scale = pim_quantize_d(a, nn, dev->inv_bits, q);
    double qmax = ldexp(1.0, dev->inv_bits - 1) - 1;
    uint64_t stream = ctx->stream++;
    pim_rng_normal(pim_key(ctx->seed, stream, 1, 0), 0, z, nn);
    pim_rng_uniform(pim_key(ctx->seed, stream, 2, 0), 0, u, nn);
    inv->dev = dev;
    inv->n = n;
    inv->lu = util_xmalloc(nn * sizeof(double));
    inv->piv = util_xmalloc((size_t)n * sizeof(lapack_int));
    for (size_t i = 0; i < nn; i++) {
        double level = q[i] + dev->prog_noise * qmax * z[i];
        if (u[i] <= dev->stuck_on_rate)
            level = q[i] < 0 ? -qmax : qmax;
        else if (u[i] <= dev->stuck_on_rate + dev->stuck_off_rate)
            level = 0;
        inv->lu[i] = level * scale;
    }
    free(q);
    free(z);
    free(u);
    lapack_int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, n, n, inv->lu, n, inv->piv);

    uint64_t crossbars =
        (uint64_t)pim_ceil_div(n, dev->rows) * (uint64_t)pim_ceil_div(2L * n, dev->cols);
    pim_cost_add_program(dev, 2 * nn, crossbars, cost);
    cost->crossbars += crossbars;
    cost->area +=
        (double)crossbars * dev->xbar_area + (double)n * (2 * dev->dac_area + dev->adc_area);

    struct pim_device conv = *dev;
    conv.adc_bits = dev->inv_bits;
    struct pim_cost *c = &inv->per_solve;
    memset(c, 0, sizeof *c);
    c->inv_solves = 1;
    c->dac_conversions = (uint64_t)n;
    c->adc_conversions = (uint64_t)n;
    c->crossbar_reads = crossbars;
    c->energy[PIM_E_DAC] = n * dev->dac_power * dev->inv_settle_time;
    c->energy[PIM_E_ADC] = n * pim_device_adc_energy(&conv);
    c->energy[PIM_E_INV] = n * dev->inv_opamp_power * dev->inv_settle_time;
    c->energy[PIM_E_CROSSBAR] = (double)crossbars * dev->xbar_power * dev->inv_settle_time;
    inv->solve_time = dev->inv_settle_time + dev->t_read; /* settle, then convert */
    inv->replicas = (uint64_t)dev->n_crossbars / 2 / crossbars;
    if (inv->replicas < 1) inv->replicas = 1;
    cost->area += (double)(inv->replicas - 1) * crossbars * dev->xbar_area;
    if (inv->replicas > cost->replicas) cost->replicas = inv->replicas;
    return info > 0 ? -EDOM : info < 0 ? -EINVAL : 0;
}

/* The time of `count` independent solves over the replicas. */
static void inv_time(const struct inv_circuit *inv, uint64_t count, struct pim_cost *cost)
{
    uint64_t rounds = (count + inv->replicas - 1) / inv->replicas;
    cost->cycles += rounds;
    cost->latency += (double)rounds * inv->solve_time;
}

static void inv_free(struct inv_circuit *inv)
{
    free(inv->lu);
    free(inv->piv);
}

/* x = INV(b): through the DACs, the circuit and the ADCs. */
static void inv_solve(const struct inv_circuit *inv, const double *b, double *x, int32_t *scratch,
                      struct pim_cost *cost)
{
    int n = inv->n, bits = inv->dev->inv_bits;
    double s = pim_quantize_d(b, (size_t)n, bits, scratch);
    for (int i = 0; i < n; i++) x[i] = scratch[i] * s;
    LAPACKE_dgetrs(LAPACK_ROW_MAJOR, 'N', n, 1, inv->lu, n, inv->piv, x, 1);
    s = pim_quantize_d(x, (size_t)n, bits, scratch);
    for (int i = 0; i < n; i++) x[i] = scratch[i] * s;
    pim_cost_add(cost, &inv->per_solve);
}

/* ---------------------------------------------------- high-precision VMM */

struct hp_vmm {
    pim_matrix *mat;
    const struct pim_dataflow *df;
    int bits, n;
};

static int hp_program(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
                      int bits, struct hp_vmm *hp, struct pim_cost *cost)
{
    struct pim_device wide = *dev;
    wide.weight_bits = bits;
    wide.input_bits = bits;
    if (wide.dac_bits > 7) wide.dac_bits = 7;
    int32_t *q = util_xmalloc((size_t)n * n * sizeof(int32_t));
    double scale = pim_quantize_d(a, (size_t)n * n, bits, q);
    int rc = pim_matrix_program_q(&wide, ctx, q, n, n, scale, &hp->mat);
    free(q);
    if (rc != 0) return rc;
    pim_matrix_program_cost(hp->mat, cost);
    hp->df = pim_dataflow_get(PIM_DF_ISAAC);
    hp->bits = bits;
    hp->n = n;
    return 0;
}

/* y_c = A x_c for k vectors (each n, stored one after another). */
static int hp_apply(struct hp_vmm *hp, struct pim_ctx *ctx, const double *x, int k, double *y,
                    struct pim_cost *cost)
{
    int n = hp->n;
    int32_t *xq = util_xmalloc((size_t)k * n * sizeof(int32_t));
    double *scales = util_xmalloc((size_t)k * sizeof(double));
    for (int c = 0; c < k; c++)
        scales[c] = pim_quantize_d(x + (size_t)c * n, (size_t)n, hp->bits, xq + (size_t)c * n);
    int rc = pim_matrix_vmm_q(hp->mat, hp->df, ctx, xq, k, y, cost);
    double sa = pim_matrix_scale(hp->mat);
    for (size_t i = 0; rc == 0 && i < (size_t)k * n; i++) y[i] *= sa * scales[i / n];
    free(xq);
    free(scales);
    return rc;
}

/* ----------------------------------------------------------- vector ops */

static double dot(const double *a, const double *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static double norm2(const double *a, int n)
{
    return sqrt(dot(a, a, n));
}

/* --------------------------------------------------------------- FGMRES */

/* Flexible GMRES for A d_c = r_c, k right-hand sides in lockstep (their
 * products batched), right-preconditioned by the INV circuit. Stops a
 * column when its residual estimate falls by `reduction` or after max_steps.
 * Returns 0 or -ECANCELED; counts INV solves and products in stats. */
struct fgmres {
    int n, k, m;
    double *v, *z;       /* [k][m+1][n], [k][m][n] */
    double *h;           /* [k][(m+1) m] */
    double *cs, *sn, *g; /* [k][m+1] */
    double *y;           /* [m] */
    int *steps;
};

static void fgmres_init(struct fgmres *f, int n, int k, int m)
{
    f->n = n;
    f->k = k;
    f->m = m;
    f->v = util_xmalloc((size_t)k * (m + 1) * n * sizeof(double));
    f->z = util_xmalloc((size_t)k * m * n * sizeof(double));
    f->h = util_xcalloc((size_t)k * (m + 1) * m, sizeof(double));
    f->cs = util_xmalloc((size_t)k * (m + 1) * sizeof(double));
    f->sn = util_xmalloc((size_t)k * (m + 1) * sizeof(double));
    f->g = util_xmalloc((size_t)k * (m + 1) * sizeof(double));
    f->y = util_xmalloc((size_t)m * sizeof(double));
    f->steps = util_xmalloc((size_t)k * sizeof(int));
}

static void fgmres_free(struct fgmres *f)
{
    free(f->v);
    free(f->z);
    free(f->h);
    free(f->cs);
    free(f->sn);
    free(f->g);
    free(f->y);
    free(f->steps);
}

static int fgmres_solve(struct fgmres *f, const struct inv_circuit *inv, struct hp_vmm *hp,
                        struct pim_ctx *ctx, const double *r, const int *cols, int ncols,
                        double reduction, double *d, struct pim_solve_stats *stats,
                        struct pim_cost *cost)
{
    int n = f->n, m = f->m;
    size_t vs = (size_t)(m + 1) * n, zs = (size_t)m * n, hs = (size_t)(m + 1) * m;
    int *active = util_xmalloc((size_t)ncols * sizeof(int));
    double *beta = util_xmalloc((size_t)ncols * sizeof(double));
    double *batch_in = util_xmalloc((size_t)ncols * n * sizeof(double));
    double *batch_out = util_xmalloc((size_t)ncols * n * sizeof(double));
    int32_t *scratch = util_xmalloc((size_t)n * sizeof(int32_t));
    int n_active = 0, rc = 0;
    memset(f->h, 0, (size_t)f->k * hs * sizeof(double));
    for (int a = 0; a < ncols; a++) {
        const double *rc_ = r + (size_t)cols[a] * n;
        double *v0 = f->v + (size_t)a * vs;
        beta[a] = norm2(rc_, n);
        f->steps[a] = 0;
        f->g[(size_t)a * (m + 1)] = beta[a];
        if (beta[a] == 0) continue;
        for (int i = 0; i < n; i++) v0[i] = rc_[i] / beta[a];
        active[n_active++] = a;
    }
    for (int j = 0; j < m && n_active > 0; j++) {
        for (int t = 0; t < n_active; t++) {
            int a = active[t];
            double *zj = f->z + (size_t)a * zs + (size_t)j * n;
            inv_solve(inv, f->v + (size_t)a * vs + (size_t)j * n, zj, scratch, cost);
            memcpy(batch_in + (size_t)t * n, zj, (size_t)n * sizeof(double));
        }
        stats->inv_solves += n_active;
        inv_time(inv, (uint64_t)n_active, cost);
        rc = hp_apply(hp, ctx, batch_in, n_active, batch_out, cost);
        stats->vmm_products += n_active;
        if (rc != 0) break;
        int still = 0;
        for (int t = 0; t < n_active; t++) {
            int a = active[t];
            double *v = f->v + (size_t)a * vs, *w = batch_out + (size_t)t * n;
            double *h = f->h + (size_t)a * hs, *cs = f->cs + (size_t)a * (m + 1);
            double *sn = f->sn + (size_t)a * (m + 1), *g = f->g + (size_t)a * (m + 1);
            for (int i = 0; i <= j; i++) { /* modified Gram-Schmidt */
                double hij = dot(w, v + (size_t)i * n, n);
                h[(size_t)i * m + j] = hij;
                for (int l = 0; l < n; l++) w[l] -= hij * v[(size_t)i * n + l];
            }
            double hnext = norm2(w, n);
            if (hnext > 0)
                for (int l = 0; l < n; l++) v[(size_t)(j + 1) * n + l] = w[l] / hnext;
            for (int i = 0; i < j; i++) { /* earlier rotations on the new column */
                double x = h[(size_t)i * m + j], y = h[(size_t)(i + 1) * m + j];
                h[(size_t)i * m + j] = cs[i] * x + sn[i] * y;
                h[(size_t)(i + 1) * m + j] = -sn[i] * x + cs[i] * y;
            }
            double x = h[(size_t)j * m + j], rr = hypot(x, hnext);
            cs[j] = rr > 0 ? x / rr : 1;
            sn[j] = rr > 0 ? hnext / rr : 0;
            h[(size_t)j * m + j] = rr;
            g[j + 1] = -sn[j] * g[j];
            g[j] = cs[j] * g[j];
            f->steps[a] = j + 1;
            if (fabs(g[j + 1]) > reduction * beta[a] && hnext > 0) active[still++] = a;
        }
        pim_cost_add_digital(inv->dev, (double)n_active * (4.0 * (j + 1) * n + 10.0 * n), cost);
        n_active = still;
        if (pim_ctx_cancelled(ctx)) rc = -ECANCELED;
        if (rc != 0) break;
    }
    /* d = Z y with H y = g (upper triangular). */
    for (int a = 0; a < ncols && rc == 0; a++) {
        int steps = f->steps[a];
        double *h = f->h + (size_t)a * hs, *g = f->g + (size_t)a * (m + 1), *y = f->y;
        for (int i = steps - 1; i >= 0; i--) {
            double s = g[i];
            for (int l = i + 1; l < steps; l++) s -= h[(size_t)i * m + l] * y[l];
            y[i] = h[(size_t)i * m + i] != 0 ? s / h[(size_t)i * m + i] : 0;
        }
        double *dc = d + (size_t)cols[a] * n;
        memset(dc, 0, (size_t)n * sizeof(double));
        for (int i = 0; i < steps; i++)
            for (int l = 0; l < n; l++) dc[l] += y[i] * f->z[(size_t)a * zs + (size_t)i * n + l];
    }
    free(active);
    free(beta);
    free(batch_in);
    free(batch_out);
    free(scratch);
    return rc;
}

/* ---------------------------------------------------------------- solve */

static bool finite_all(const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* The reciprocal condition number (1-norm) of A in float64: 0 when an LU
 * pivot is exactly zero. The host checks A before programming it: no
 * refinement recovers x from a singular system, it only shuffles noise. */
static double reciprocal_condition(const double *a, int n)
{
    double *f = util_xmalloc((size_t)n * n * sizeof(double));
    lapack_int *piv = util_xmalloc((size_t)n * sizeof(lapack_int));
    memcpy(f, a, (size_t)n * n * sizeof(double));
    double anorm = LAPACKE_dlange(LAPACK_ROW_MAJOR, '1', n, n, f, n), rcond = 0;
    lapack_int info = LAPACKE_dgetrf(LAPACK_ROW_MAJOR, n, n, f, n, piv);
    if (info == 0 && anorm > 0 &&
        LAPACKE_dgecon(LAPACK_ROW_MAJOR, '1', n, f, n, anorm, &rcond) != 0)
        rcond = 0;
    free(f);
    free(piv);
    return isfinite(rcond) ? rcond : 0;
}

/* max over columns of ||b - A x|| / ||b|| in float64 (reporting only). */
static double true_residual(const double *a, int n, const double *b, const double *x, int k)
{
    double worst = 0;
    for (int c = 0; c < k; c++) {
        const double *bc = b + (size_t)c * n, *xc = x + (size_t)c * n;
        double num = 0, den = 0;
        for (int i = 0; i < n; i++) {
            double r = bc[i] - dot(a + (size_t)i * n, xc, n);
            num += r * r;
            den += bc[i] * bc[i];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (rel > worst) worst = rel;
    }
    return worst;
}

/* Work space of one chunk of right-hand sides. */
struct refine_work {
    double *rt, *dt, *prev, *xbest;
    int *cols;
};

/* GMRES-IR for the k columns bt (k x n, one after another) from the INV
 * solutions already in xt, until each meets the tolerance, stops shrinking,
 * or runs out of steps. */
static int refine_columns(const struct pim_device *dev, struct pim_ctx *ctx,
                          const struct inv_circuit *inv, struct hp_vmm *hp, struct fgmres *fg,
                          const double *bt, double *xt, int n, int k,
                          const struct pim_solve_options *opt, struct refine_work *w,
                          struct pim_solve_stats *stats, struct pim_cost *cost)
{
    double *rt = w->rt, *dt = w->dt, *prev = w->prev, *xbest = w->xbest;
    int *cols = w->cols, rc = 0, ncols = k;
    for (int c = 0; c < k; c++) {
        prev[c] = INFINITY;
        cols[c] = c;
    }
    for (int it = 0; rc == 0 && ncols > 0; it++) {
        /* r = b - A x for the columns still refining (packed, then
         * unpacked in place back to front: cols is increasing). */
        for (int t = 0; t < ncols; t++)
            memcpy(dt + (size_t)t * n, xt + (size_t)cols[t] * n, (size_t)n * sizeof(double));
        rc = hp_apply(hp, ctx, dt, ncols, rt, cost);
        stats->vmm_products += ncols;
        if (rc != 0) break;
        for (int t = ncols - 1; t >= 0; t--)
            memmove(rt + (size_t)cols[t] * n, rt + (size_t)t * n, (size_t)n * sizeof(double));
        int still = 0;
        for (int t = 0; t < ncols; t++) {
            int c = cols[t];
            double *r = rt + (size_t)c * n;
            const double *bc = bt + (size_t)c * n;
            for (int i = 0; i < n; i++) r[i] = bc[i] - r[i];
            double bn = norm2(bc, n), res = bn > 0 ? norm2(r, n) / bn : norm2(r, n);
            if (res > STAGNATION * prev[c]) { /* past the floor: keep the better x */
                if (res > prev[c])
                    memcpy(xt + (size_t)c * n, xbest + (size_t)c * n, (size_t)n * sizeof(double));
                continue;
            }
            memcpy(xbest + (size_t)c * n, xt + (size_t)c * n, (size_t)n * sizeof(double));
            prev[c] = res;
            if (res == 0) continue;
            if (it >= opt->max_iterations) {
                stats->converged = false;
                continue;
            }
            cols[still++] = c;
        }
        pim_cost_add_digital(dev, 3.0 * n * ncols, cost);
        ncols = still;
        if (ncols == 0) break;
        if (it + 1 > stats->iterations) stats->iterations = it + 1;
        rc = fgmres_solve(fg, inv, hp, ctx, rt, cols, ncols, INNER_REDUCTION, dt, stats, cost);
        /* x += d; a correction below tolerance |x| means x is within it. */
        still = 0;
        for (int t = 0; rc == 0 && t < ncols; t++) {
            int c = cols[t];
            double *xc = xt + (size_t)c * n, *dc = dt + (size_t)c * n;
            for (int i = 0; i < n; i++) xc[i] += dc[i];
            if (norm2(dc, n) > opt->tolerance * norm2(xc, n)) cols[still++] = c;
        }
        ncols = still;
    }
    return rc;
}

int pim_solve(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
              const double *b, int k, const struct pim_solve_options *opt, double *x,
              struct pim_solve_stats *stats, struct pim_cost *cost)
{
    struct pim_cost ignored = {0};
    if (!cost) cost = &ignored;
    memset(stats, 0, sizeof *stats);
    if (n < 1 || n > PIM_SOLVE_MAX_N || k < 1 || pim_device_validate(dev, NULL) != 0 ||
        !finite_all(a, (size_t)n * n) || !finite_all(b, (size_t)n * k) || opt->max_iterations < 0 ||
        opt->inner_max < 1 || opt->inner_max > 1000 || opt->residual_bits < 8 ||
        opt->residual_bits > 32 || !(opt->tolerance >= 0))
        return -EINVAL;
    /* Singular to working precision (LAPACK's xGESVX test). */
    stats->rcond = reciprocal_condition(a, n);
    if (stats->rcond < DBL_EPSILON) return -EDOM;

    struct inv_circuit inv = {0};
    struct hp_vmm hp = {0};
    struct fgmres fg = {0};
    int chunk = k < SOLVE_CHUNK ? k : SOLVE_CHUNK;
    /* Columns one after another: bt[c][i] = b[i][c]. */
    double *bt = util_xmalloc((size_t)n * k * sizeof(double));
    double *xt = util_xcalloc((size_t)n * k, sizeof(double));
    struct refine_work w = {
        .rt = util_xmalloc((size_t)n * chunk * sizeof(double)),
        .dt = util_xmalloc((size_t)n * chunk * sizeof(double)),
        .prev = util_xmalloc((size_t)chunk * sizeof(double)),
        .xbest = util_xmalloc((size_t)n * chunk * sizeof(double)),
        .cols = util_xmalloc((size_t)chunk * sizeof(int)),
    };
    int32_t *scratch = util_xmalloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++)
        for (int c = 0; c < k; c++) bt[(size_t)c * n + i] = b[(size_t)i * k + c];

    int rc = inv_program(dev, ctx, a, n, &inv, cost);
    if (rc == 0 && opt->refine) {
        rc = hp_program(dev, ctx, a, n, opt->residual_bits, &hp, cost);
        fgmres_init(&fg, n, chunk, opt->inner_max);
        stats->converged = true;
    }
    /* Right-hand sides a chunk at a time: the Krylov bases stay small. */
    for (int c0 = 0; rc == 0 && c0 < k; c0 += chunk) {
        int kc = k - c0 < chunk ? k - c0 : chunk;
        double *bc = bt + (size_t)c0 * n, *xc = xt + (size_t)c0 * n;
        for (int c = 0; c < kc; c++)
            inv_solve(&inv, bc + (size_t)c * n, xc + (size_t)c * n, scratch, cost);
        inv_time(&inv, (uint64_t)kc, cost);
        stats->inv_solves += kc;
        if (!finite_all(xc, (size_t)n * kc)) rc = -ERANGE; /* overflowed past float64 */
        if (rc == 0 && opt->refine)
            rc = refine_columns(dev, ctx, &inv, &hp, &fg, bc, xc, n, kc, opt, &w, stats, cost);
        if (rc == 0 && pim_ctx_cancelled(ctx)) rc = -ECANCELED;
    }
    if (rc == 0) {
        for (int i = 0; i < n; i++)
            for (int c = 0; c < k; c++) x[(size_t)i * k + c] = xt[(size_t)c * n + i];
        stats->residual = true_residual(a, n, bt, xt, k);
        if (!finite_all(xt, (size_t)n * k) || !isfinite(stats->residual)) rc = -ERANGE;
        /* Converged only where the refined residual meets the tolerance. */
        stats->converged =
            rc == 0 && opt->refine && stats->converged && stats->residual <= opt->tolerance;
    }
    if (rc != 0) {
        stats->converged = false;
    }
    inv_free(&inv);
    pim_matrix_free(hp.mat);
    fgmres_free(&fg);
    free(bt);
    free(xt);
    free(w.rt);
    free(w.dt);
    free(w.prev);
    free(w.xbest);
    free(w.cols);
    free(scratch);
    return rc;
}

int pim_invert(const struct pim_device *dev, struct pim_ctx *ctx, const double *a, int n,
               const struct pim_solve_options *opt, double *inv, struct pim_solve_stats *stats,
               struct pim_cost *cost)
{
    if (n < 1) return -EINVAL;
    double *eye = util_xcalloc((size_t)n * n, sizeof(double));
    for (int i = 0; i < n; i++) eye[(size_t)i * n + i] = 1;
    int rc = pim_solve(dev, ctx, a, n, eye, n, opt, inv, stats, cost);
    free(eye);
    return rc;
}

/* ---------------------------------------------------------------- K-FAC */

/* f = x^T x / rows + damping I (d x d), in float64. */
static void damped_factor(const float *x, int rows, int d, double damping, double *f)
{
    memset(f, 0, (size_t)d * d * sizeof(double));
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < d; i++) {
            double xi = x[(size_t)r * d + i];
            for (int j = 0; j < d; j++) f[(size_t)i * d + j] += xi * x[(size_t)r * d + j];
        }
    for (size_t i = 0; i < (size_t)d * d; i++) f[i] /= rows;
    for (int i = 0; i < d; i++) f[(size_t)i * d + i] += damping;
}

int pim_kfac_step(const struct pim_device *dev, struct pim_ctx *ctx, const float *act,
                  const float *out_grad, int batch, int d_in, int d_out, const float *grad,
                  double damping, const struct pim_solve_options *opt, float *precond,
                  struct pim_solve_stats *stats, struct pim_cost *cost, struct pim_cost *digital)
{
    memset(stats, 0, sizeof *stats);
    if (batch < 1 || d_in < 1 || d_out < 1 || !(damping > 0) || !isfinite(damping)) return -EINVAL;
    double pi_damp = sqrt(damping);
    double *fa = util_xmalloc((size_t)d_in * d_in * sizeof(double));
    double *fg = util_xmalloc((size_t)d_out * d_out * sizeof(double));
    double *g = util_xmalloc((size_t)d_out * d_in * sizeof(double));
    double *x1 = util_xmalloc((size_t)d_out * d_in * sizeof(double));
    double *x1t = util_xmalloc((size_t)d_in * d_out * sizeof(double));
    double *pt = util_xmalloc((size_t)d_in * d_out * sizeof(double));
    damped_factor(act, batch, d_in, pi_damp, fa);
    damped_factor(out_grad, batch, d_out, pi_damp, fg);
    for (size_t i = 0; i < (size_t)d_out * d_in; i++) g[i] = grad[i];

    /* The factor statistics are digital work in both versions. */
    double stats_flops = 2.0 * batch * ((double)d_in * d_in + (double)d_out * d_out);
    pim_cost_add_digital(dev, stats_flops, cost);

    /* X1 = G^-1 grad (d_in right-hand sides), then P^T = A^-1 X1^T. */
    struct pim_solve_stats s1 = {0}, s2 = {0};
    /* Huge statistics overflow float64 in the factor products. */
    bool finite = finite_all(fa, (size_t)d_in * d_in) && finite_all(fg, (size_t)d_out * d_out);
    int rc = finite ? pim_solve(dev, ctx, fg, d_out, g, d_in, opt, x1, &s1, cost) : -ERANGE;
    stats->rcond = s1.rcond;
    if (rc == 0) {
        for (int i = 0; i < d_out; i++)
            for (int j = 0; j < d_in; j++) x1t[(size_t)j * d_out + i] = x1[(size_t)i * d_in + j];
        rc = pim_solve(dev, ctx, fa, d_in, x1t, d_out, opt, pt, &s2, cost);
        stats->rcond = rc == 0 ? fmin(s1.rcond, s2.rcond) : s2.rcond;
    }
    if (rc == 0) {
        for (int i = 0; i < d_out; i++)
            for (int j = 0; j < d_in; j++)
                precond[(size_t)i * d_in + j] = (float)pt[(size_t)j * d_out + i];
        stats->iterations = s1.iterations > s2.iterations ? s1.iterations : s2.iterations;
        stats->inv_solves = s1.inv_solves + s2.inv_solves;
        stats->vmm_products = s1.vmm_products + s2.vmm_products;
        stats->residual = fmax(s1.residual, s2.residual);
        stats->converged = s1.converged && s2.converged;
    }
    if (digital) {
        /* Cholesky of both factors and two triangular solves per right-hand side. */
        double di = d_in, dout = d_out;
        double flops = stats_flops + (di * di * di + dout * dout * dout) / 3 +
                       2.0 * dout * dout * di + 2.0 * di * di * dout;
        memset(digital, 0, sizeof *digital);
        pim_cost_add_digital(dev, flops, digital);
    }
    free(fa);
    free(fg);
    free(g);
    free(x1);
    free(x1t);
    free(pt);
    return rc;
}

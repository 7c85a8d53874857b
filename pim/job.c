/* job.c: jobs as plain structs: defaults, validation, and running each
 * type on its device, with its float64 reference. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <float.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ names */

static const char *const type_names[PIM_JOB_TYPE_COUNT] = {
    "vmm", "solve", "invert", "kfac_step", "sme_map", "admm_compress", "dataflow_eval",
};

const char *pim_job_type_name(enum pim_job_type type)
{
    return (unsigned)type < PIM_JOB_TYPE_COUNT ? type_names[type] : NULL;
}

int pim_job_type_parse(const char *name, enum pim_job_type *type)
{
    for (int i = 0; i < PIM_JOB_TYPE_COUNT; i++)
        if (strcmp(name, type_names[i]) == 0) {
            *type = (enum pim_job_type)i;
            return 0;
        }
    return -EINVAL;
}

/* ---------------------------------------------------------------- tensors */

size_t pim_tensor_count(const struct pim_tensor *t)
{
    if (t->ndim == 0) return 0;
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

void pim_tensor_alloc(struct pim_tensor *t, int ndim, const int64_t *shape)
{
    UTIL_CHECK(ndim >= 1 && ndim <= PIM_TENSOR_MAX_DIMS);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    size_t n = pim_tensor_count(t);
    t->data = util_xcalloc(n ? n : 1, sizeof(float));
}

void pim_tensor_free(struct pim_tensor *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------- jobs */

void pim_job_init(struct pim_job *job, enum pim_job_type type)
{
    memset(job, 0, sizeof *job);
    job->type = type;
    pim_device_default(&job->device);
    job->dataflow = PIM_DF_ISAAC;
    pim_solve_options_default(&job->solve);
    job->damping = 1e-3;
    job->weight_bits = 8;
    pim_admm_options_default(&job->admm);
    job->dataflows = (1u << PIM_DF_COUNT) - 1;
}

void pim_job_free(struct pim_job *job)
{
    pim_tensor_free(&job->matrix);
    pim_tensor_free(&job->input);
    pim_tensor_free(&job->rhs);
    pim_tensor_free(&job->activations);
    pim_tensor_free(&job->output_grads);
    pim_tensor_free(&job->grad);
    pim_tensor_free(&job->inputs);
    pim_tensor_free(&job->targets);
    free(job->layers);
    job->layers = NULL;
    job->n_layers = 0;
}

void pim_result_free(struct pim_result *res)
{
    pim_tensor_free(&res->output);
}

/* ------------------------------------------------------------- validation */

static int invalid(struct pim_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int invalid(struct pim_error *err, const char *param, const char *fmt, ...)
{
    if (err) {
        snprintf(err->param, sizeof err->param, "%s", param);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* A present tensor of 1 or 2 dimensions (as allowed), every dim in
 * [1, INT_MAX], at most 2^31 finite values. */
static int check_tensor(const struct pim_tensor *t, const char *name, int min_dims, int max_dims,
                        struct pim_error *err)
{
    if (t->ndim == 0 || !t->data) return invalid(err, name, "'%s' is required", name);
    if (t->ndim < min_dims || t->ndim > max_dims)
        return invalid(err, name, "'%s' must have %d%s%d dimensions, got %d", name, min_dims,
                       min_dims == max_dims ? "" : " to ", max_dims, t->ndim);
    double total = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 1 || t->shape[i] > INT_MAX)
            return invalid(err, name, "'%s' has an empty or oversized dimension", name);
        total *= (double)t->shape[i];
    }
    if (total > (double)(1u << 31)) return invalid(err, name, "'%s' is too large", name);
    size_t n = pim_tensor_count(t);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(t->data[i]))
            return invalid(err, name, "'%s' holds NaN or Inf at %zu", name, i);
    return 0;
}

/* Rows and columns of a matrix or a vector (a vector is 1 x n). */
static int64_t dim_rows(const struct pim_tensor *t)
{
    return t->ndim == 2 ? t->shape[0] : 1;
}
static int64_t dim_last(const struct pim_tensor *t)
{
    return t->shape[t->ndim - 1];
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_) return rc_;                                                                       \
    } while (0)

static int validate_solve_options(const struct pim_solve_options *o, struct pim_error *err)
{
    if (o->max_iterations < 0 || o->max_iterations > 1000)
        return invalid(err, "max_iterations", "max_iterations must be in [0, 1000]");
    if (o->inner_max < 1 || o->inner_max > 1000)
        return invalid(err, "inner_max", "inner_max must be in [1, 1000]");
    if (!isfinite(o->tolerance) || o->tolerance < 0 || o->tolerance >= 1)
        return invalid(err, "tolerance", "tolerance must be in [0, 1)");
    if (o->residual_bits < 8 || o->residual_bits > 32)
        return invalid(err, "residual_bits", "residual_bits must be in [8, 32]");
    return 0;
}

int pim_job_validate(const struct pim_job *job, struct pim_error *err)
{
    if ((unsigned)job->type >= PIM_JOB_TYPE_COUNT) return invalid(err, "type", "unknown job type");
    TRY(pim_device_validate(&job->device, err));
    if ((unsigned)job->dataflow >= PIM_DF_COUNT)
        return invalid(err, "dataflow", "unknown dataflow");
    switch (job->type) {
    case PIM_JOB_VMM:
        TRY(check_tensor(&job->matrix, "matrix", 2, 2, err));
        TRY(check_tensor(&job->input, "input", 1, 2, err));
        if (dim_last(&job->input) != job->matrix.shape[1])
            return invalid(err, "input",
                           "'input' has %lld values per vector, the matrix %lld columns",
                           (long long)dim_last(&job->input), (long long)job->matrix.shape[1]);
        return 0;
    case PIM_JOB_SOLVE:
    case PIM_JOB_INVERT:
        TRY(check_tensor(&job->matrix, "matrix", 2, 2, err));
        if (job->matrix.shape[0] != job->matrix.shape[1])
            return invalid(err, "matrix", "'matrix' must be square");
        if (job->matrix.shape[0] > PIM_SOLVE_MAX_N)
            return invalid(err, "matrix", "'matrix' may have at most %d rows", PIM_SOLVE_MAX_N);
        if (job->type == PIM_JOB_SOLVE) {
            TRY(check_tensor(&job->rhs, "rhs", 1, 2, err));
            if (job->rhs.shape[0] != job->matrix.shape[0])
                return invalid(err, "rhs", "'rhs' must have %lld rows",
                               (long long)job->matrix.shape[0]);
        }
        return validate_solve_options(&job->solve, err);
    case PIM_JOB_KFAC_STEP:
        TRY(check_tensor(&job->activations, "activations", 2, 2, err));
        TRY(check_tensor(&job->output_grads, "output_grads", 2, 2, err));
        TRY(check_tensor(&job->grad, "grad", 2, 2, err));
        if (job->output_grads.shape[0] != job->activations.shape[0])
            return invalid(err, "output_grads",
                           "'output_grads' and 'activations' need the same batch");
        if (job->grad.shape[0] != job->output_grads.shape[1] ||
            job->grad.shape[1] != job->activations.shape[1])
            return invalid(err, "grad", "'grad' must be d_out x d_in");
        if (!isfinite(job->damping) || job->damping <= 0)
            return invalid(err, "damping", "damping must be > 0");
        return validate_solve_options(&job->solve, err);
    case PIM_JOB_SME_MAP:
        TRY(check_tensor(&job->matrix, "matrix", 2, 2, err));
        if (job->weight_bits < 2 || job->weight_bits > 16)
            return invalid(err, "weight_bits", "weight_bits must be in [2, 16]");
        if (job->sme_max_bits < 0 || job->sme_max_bits > 16)
            return invalid(err, "max_bits", "max_bits must be in [0, 16]");
        if (job->input.ndim) {
            TRY(check_tensor(&job->input, "input", 1, 2, err));
            if (dim_last(&job->input) != job->matrix.shape[1])
                return invalid(err, "input",
                               "'input' must have as many values as the matrix columns");
        }
        return 0;
    case PIM_JOB_ADMM_COMPRESS: {
        TRY(check_tensor(&job->matrix, "matrix", 2, 2, err));
        TRY(check_tensor(&job->inputs, "inputs", 2, 2, err));
        TRY(check_tensor(&job->targets, "targets", 2, 2, err));
        const struct pim_admm_options *o = &job->admm;
        if (job->inputs.shape[1] != job->matrix.shape[1])
            return invalid(err, "inputs", "'inputs' must have as many columns as the matrix");
        if (job->targets.shape[0] != job->inputs.shape[0] ||
            job->targets.shape[1] != job->matrix.shape[0])
            return invalid(err, "targets", "'targets' must be samples x matrix rows");
        if (o->block_rows < 1 || o->block_cols < 1 || o->block_rows > 65536 ||
            o->block_cols > 65536)
            return invalid(err, "block", "block must be two sizes in [1, 65536]");
        if (!(o->keep_ratio > 0 && o->keep_ratio <= 1))
            return invalid(err, "keep_ratio", "keep_ratio must be in (0, 1]");
        if (o->levels < 2 || o->levels > 65536)
            return invalid(err, "levels", "levels must be in [2, 65536]");
        if (!isfinite(o->rho) || o->rho <= 0) return invalid(err, "rho", "rho must be > 0");
        if (o->iterations < 0 || o->iterations > 10000)
            return invalid(err, "iterations", "iterations must be in [0, 10000]");
        if (o->w_steps < 1 || o->w_steps > 10000)
            return invalid(err, "w_steps", "w_steps must be in [1, 10000]");
        if (o->retrain_steps < 0 || o->retrain_steps > 100000)
            return invalid(err, "retrain_steps", "retrain_steps must be in [0, 100000]");
        if (!isfinite(o->mismatch_sigma) || o->mismatch_sigma < 0 || o->mismatch_sigma > 10)
            return invalid(err, "mismatch_sigma", "mismatch_sigma must be in [0, 10]");
        if (o->mismatch_trials < 0 || o->mismatch_trials > 1000)
            return invalid(err, "mismatch_trials", "mismatch_trials must be in [0, 1000]");
        return 0;
    }
    case PIM_JOB_DATAFLOW_EVAL:
        if (job->n_layers < 1 || !job->layers)
            return invalid(err, "layers", "'layers' must list at least one layer");
        for (int i = 0; i < job->n_layers; i++) {
            const struct pim_layer_shape *l = &job->layers[i];
            if (l->in < 1 || l->out < 1 || l->count < 1 || l->count > (1ull << 48))
                return invalid(err, "layers", "layer %d: 'in', 'out' and 'count' must be positive",
                               i);
        }
        if (job->dataflows == 0 || job->dataflows >= 1u << PIM_DF_COUNT)
            return invalid(err, "dataflows", "'dataflows' must name at least one known dataflow");
        return 0;
    default:
        return invalid(err, "type", "unknown job type");
    }
}

/* ---------------------------------------------------------------- running */

static double *to_double(const struct pim_tensor *t)
{
    size_t n = pim_tensor_count(t);
    double *d = util_xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = t->data[i];
    return d;
}

static void output_like(struct pim_result *res, int ndim, int64_t d0, int64_t d1)
{
    int64_t shape[2] = {d0, d1};
    pim_tensor_alloc(&res->output, ndim, shape);
}

static int fail(struct pim_error *err, int rc, const char *param, const char *msg)
{
    if (err) {
        snprintf(err->param, sizeof err->param, "%s", param);
        snprintf(err->message, sizeof err->message, "%s", msg);
    }
    return rc;
}

/* y = W x in float64 for batch vectors. */
static void reference_product(const float *w, const float *x, int m, int n, int batch, double *y)
{
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += (double)w[(size_t)i * n + k] * x[(size_t)t * n + k];
            y[(size_t)t * m + i] = s;
        }
}

static int run_vmm(const struct pim_job *job, struct pim_ctx *ctx, struct pim_result *res,
                   struct pim_error *err)
{
    int m = (int)job->matrix.shape[0], n = (int)job->matrix.shape[1];
    int batch = (int)dim_rows(&job->input);
    pim_matrix *mat;
    int rc = pim_matrix_program(&job->device, ctx, job->matrix.data, m, n, &mat);
    if (rc)
        return fail(err, rc, "matrix",
                    rc == -E2BIG ? "the matrix needs more cells than a device simulates (2^28)"
                                 : "the matrix could not be programmed");
    pim_matrix_program_cost(mat, &res->cost);
    if (job->calibrate_adc) rc = pim_matrix_calibrate_adc(mat, ctx, job->input.data, batch);
    if (rc) {
        pim_matrix_free(mat);
        return rc;
    }
    output_like(res, job->input.ndim, job->input.ndim == 2 ? batch : m, m);
    rc = pim_matrix_vmm(mat, pim_dataflow_get(job->dataflow), ctx, job->input.data, batch,
                        res->output.data, &res->cost);
    pim_matrix_free(mat);
    if (rc) return rc;
    double *want = util_xmalloc((size_t)batch * m * sizeof(double));
    reference_product(job->matrix.data, job->input.data, m, n, batch, want);
    res->rel_l2_vs_fp64 = pim_rel_l2_f(res->output.data, want, (size_t)batch * m);
    free(want);
    return 0;
}

/* X = A^-1 B in float64 (LU); returns false when A is singular. */
static bool reference_solve(const double *a, int n, const double *b, int k, double *x)
{
    double *f = util_xmalloc((size_t)n * n * sizeof(double));
    lapack_int *piv = util_xmalloc((size_t)n * sizeof(lapack_int));
    memcpy(f, a, (size_t)n * n * sizeof(double));
    memcpy(x, b, (size_t)n * k * sizeof(double));
    lapack_int info = LAPACKE_dgesv(LAPACK_ROW_MAJOR, n, k, f, n, piv, x, k);
    free(f);
    free(piv);
    return info == 0;
}

/* Why a solve failed, in words a client can act on. */
static int solve_failure(struct pim_error *err, int rc, const char *param, const char *what,
                         double rcond)
{
    char msg[sizeof err->message];
    if (rc == -EDOM && rcond < DBL_EPSILON)
        snprintf(msg, sizeof msg,
                 "%s is singular to working precision (reciprocal condition number %.3g)", what,
                 rcond);
    else if (rc == -EDOM)
        snprintf(msg, sizeof msg, "%s is singular on the INV circuit once quantised", what);
    else if (rc == -ERANGE)
        snprintf(msg, sizeof msg, "%s overflows: the solution is not finite", what);
    else
        return rc;
    return fail(err, rc, param, msg);
}

static int run_solve(const struct pim_job *job, struct pim_ctx *ctx, struct pim_result *res,
                     struct pim_error *err)
{
    int n = (int)job->matrix.shape[0];
    bool invert = job->type == PIM_JOB_INVERT;
    int k = invert ? n : (job->rhs.ndim == 2 ? (int)job->rhs.shape[1] : 1);
    double *a = to_double(&job->matrix), *b;
    if (invert) {
        b = util_xcalloc((size_t)n * n, sizeof(double));
        for (int i = 0; i < n; i++) b[(size_t)i * n + i] = 1;
    } else {
        b = to_double(&job->rhs);
    }
    double *x = util_xmalloc((size_t)n * k * sizeof(double));
    double *want = util_xmalloc((size_t)n * k * sizeof(double));
    bool have_ref = reference_solve(a, n, b, k, want);
    int rc = 0;
    /* The plain INV solve first, on a context of its own with the same seed:
     * the same INV circuit as the refined solve starts from. */
    if (job->solve.refine && have_ref) {
        struct pim_ctx plain_ctx = *ctx;
        struct pim_solve_options plain = job->solve;
        plain.refine = false;
        rc = pim_solve(&job->device, &plain_ctx, a, n, b, k, &plain, x, &res->solve, NULL);
        if (rc == 0) res->plain_rel_l2 = pim_rel_l2(x, want, (size_t)n * k);
    }
    if (rc == 0)
        rc = pim_solve(&job->device, ctx, a, n, b, k, &job->solve, x, &res->solve, &res->cost);
    if (rc == 0) {
        res->iterations = res->solve.iterations;
        if (!job->solve.refine && have_ref) res->plain_rel_l2 = pim_rel_l2(x, want, (size_t)n * k);
        res->rel_l2_vs_fp64 = have_ref ? pim_rel_l2(x, want, (size_t)n * k) : NAN;
        if (invert || job->rhs.ndim == 2)
            output_like(res, 2, n, k);
        else
            output_like(res, 1, n, 0);
        for (size_t i = 0; i < (size_t)n * k; i++) res->output.data[i] = (float)x[i];
    } else {
        solve_failure(err, rc, "matrix", "the matrix", res->solve.rcond);
    }
    free(a), free(b), free(x), free(want);
    return rc;
}

static int run_kfac(const struct pim_job *job, struct pim_ctx *ctx, struct pim_result *res,
                    struct pim_error *err)
{
    int batch = (int)job->activations.shape[0], d_in = (int)job->activations.shape[1];
    int d_out = (int)job->output_grads.shape[1];
    output_like(res, 2, d_out, d_in);
    int rc = pim_kfac_step(&job->device, ctx, job->activations.data, job->output_grads.data, batch,
                           d_in, d_out, job->grad.data, job->damping, &job->solve, res->output.data,
                           &res->solve, &res->cost, &res->digital);
    if (rc) return solve_failure(err, rc, "damping", "a damped K-FAC factor", res->solve.rcond);
    res->iterations = res->solve.iterations;
    /* float64: G^-1 grad A^-1 by LU solves. */
    double sd = sqrt(job->damping);
    double *fa = util_xcalloc((size_t)d_in * d_in, sizeof(double)),
           *fg = util_xcalloc((size_t)d_out * d_out, sizeof(double));
    const float *act = job->activations.data, *og = job->output_grads.data;
    for (int r = 0; r < batch; r++) {
        for (int i = 0; i < d_in; i++)
            for (int j = 0; j < d_in; j++)
                fa[(size_t)i * d_in + j] +=
                    (double)act[(size_t)r * d_in + i] * act[(size_t)r * d_in + j] / batch;
        for (int i = 0; i < d_out; i++)
            for (int j = 0; j < d_out; j++)
                fg[(size_t)i * d_out + j] +=
                    (double)og[(size_t)r * d_out + i] * og[(size_t)r * d_out + j] / batch;
    }
    for (int i = 0; i < d_in; i++) fa[(size_t)i * d_in + i] += sd;
    for (int i = 0; i < d_out; i++) fg[(size_t)i * d_out + i] += sd;
    double *g = to_double(&job->grad), *x1 = util_xmalloc((size_t)d_out * d_in * sizeof(double));
    double *x1t = util_xmalloc((size_t)d_in * d_out * sizeof(double)),
           *pt = util_xmalloc((size_t)d_in * d_out * sizeof(double));
    double *want = util_xmalloc((size_t)d_out * d_in * sizeof(double));
    res->rel_l2_vs_fp64 = NAN;
    if (reference_solve(fg, d_out, g, d_in, x1)) {
        for (int i = 0; i < d_out; i++)
            for (int j = 0; j < d_in; j++) x1t[(size_t)j * d_out + i] = x1[(size_t)i * d_in + j];
        if (reference_solve(fa, d_in, x1t, d_out, pt)) {
            for (int i = 0; i < d_out; i++)
                for (int j = 0; j < d_in; j++)
                    want[(size_t)i * d_in + j] = pt[(size_t)j * d_out + i];
            res->rel_l2_vs_fp64 = pim_rel_l2_f(res->output.data, want, (size_t)d_out * d_in);
        }
    }
    free(fa), free(fg), free(g), free(x1), free(x1t), free(pt), free(want);
    return 0;
}

static int run_sme(const struct pim_job *job, struct pim_ctx *ctx, struct pim_result *res,
                   struct pim_error *err)
{
    int m = (int)job->matrix.shape[0], n = (int)job->matrix.shape[1];
    int32_t *wq = util_xmalloc((size_t)m * n * sizeof(int32_t));
    double ws = pim_quantize(job->matrix.data, (size_t)m * n, job->weight_bits, wq);
    pim_sme_requantize(wq, (size_t)m * n, job->weight_bits, job->sme_max_bits);
    pim_sme *sme;
    int rc = pim_sme_map(&job->device, wq, m, n, job->weight_bits, &sme, &res->sme);
    if (rc) {
        free(wq);
        return fail(err, rc, "matrix", "the matrix could not be mapped");
    }
    pim_sme_program_cost(sme, &res->cost);
    res->cost.crossbars += res->sme.crossbars_sme;
    res->rel_l2_vs_fp64 = NAN;
    if (job->input.ndim) {
        int batch = (int)dim_rows(&job->input);
        int32_t *xq = util_xmalloc((size_t)batch * n * sizeof(int32_t));
        double *xs = util_xmalloc((size_t)batch * sizeof(double));
        double *acc = util_xmalloc((size_t)batch * m * sizeof(double));
        for (int t = 0; t < batch; t++)
            xs[t] = pim_quantize(job->input.data + (size_t)t * n, (size_t)n, job->device.input_bits,
                                 xq + (size_t)t * n);
        rc = pim_sme_vmm_q(sme, ctx, xq, batch, acc, &res->cost);
        if (rc == 0) {
            output_like(res, job->input.ndim, job->input.ndim == 2 ? batch : m, m);
            for (int t = 0; t < batch; t++)
                for (int i = 0; i < m; i++)
                    res->output.data[(size_t)t * m + i] =
                        (float)(acc[(size_t)t * m + i] * ws * xs[t]);
            double *want = util_xmalloc((size_t)batch * m * sizeof(double));
            reference_product(job->matrix.data, job->input.data, m, n, batch, want);
            res->rel_l2_vs_fp64 = pim_rel_l2_f(res->output.data, want, (size_t)batch * m);
            free(want);
        }
        free(xq), free(xs), free(acc);
    }
    pim_sme_free(sme);
    free(wq);
    return rc;
}

static int run_admm(const struct pim_job *job, struct pim_ctx *ctx, struct pim_result *res,
                    struct pim_error *err)
{
    int rows = (int)job->matrix.shape[0], cols = (int)job->matrix.shape[1];
    int samples = (int)job->inputs.shape[0];
    output_like(res, 2, rows, cols);
    int rc = pim_admm_compress(&job->device, ctx, job->matrix.data, rows, cols, job->inputs.data,
                               job->targets.data, samples, &job->admm, res->output.data, &res->admm,
                               &res->cost);
    if (rc == -EINVAL) return fail(err, rc, "admm", "invalid compression options");
    if (rc) return rc;
    /* predictions of the compressed W against those of the given W */
    double *want = util_xmalloc((size_t)samples * rows * sizeof(double));
    float *got = util_xmalloc((size_t)samples * rows * sizeof(float));
    double *got_d = util_xmalloc((size_t)samples * rows * sizeof(double));
    reference_product(job->matrix.data, job->inputs.data, rows, cols, samples, want);
    reference_product(res->output.data, job->inputs.data, rows, cols, samples, got_d);
    for (size_t i = 0; i < (size_t)samples * rows; i++) got[i] = (float)got_d[i];
    res->rel_l2_vs_fp64 = pim_rel_l2_f(got, want, (size_t)samples * rows);
    free(want), free(got), free(got_d);
    return 0;
}

static int run_dataflow_eval(const struct pim_job *job, struct pim_result *res)
{
    res->rel_l2_vs_fp64 = NAN;
    for (int k = 0; k < PIM_DF_COUNT; k++) {
        if (!(job->dataflows & (1u << k))) continue;
        struct pim_dataflow_report *r = &res->reports[res->n_reports++];
        pim_dataflow_evaluate(&job->device, pim_dataflow_get(k), job->layers, job->n_layers, r);
        if (k == (int)job->dataflow || res->n_reports == 1) res->cost = r->cost;
    }
    return 0;
}

int pim_job_run(const struct pim_job *job, const atomic_bool *cancel, struct pim_result *res,
                struct pim_error *err)
{
    memset(res, 0, sizeof *res);
    res->rel_l2_vs_fp64 = NAN;
    res->plain_rel_l2 = NAN;
    int rc = pim_job_validate(job, err);
    if (rc) return rc;
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, job->seed);
    ctx.cancel = cancel;
    ctx.threads = job->threads;
    switch (job->type) {
    case PIM_JOB_VMM:
        rc = run_vmm(job, &ctx, res, err);
        break;
    case PIM_JOB_SOLVE:
    case PIM_JOB_INVERT:
        rc = run_solve(job, &ctx, res, err);
        break;
    case PIM_JOB_KFAC_STEP:
        rc = run_kfac(job, &ctx, res, err);
        break;
    case PIM_JOB_SME_MAP:
        rc = run_sme(job, &ctx, res, err);
        break;
    case PIM_JOB_ADMM_COMPRESS:
        rc = run_admm(job, &ctx, res, err);
        break;
    case PIM_JOB_DATAFLOW_EVAL:
        rc = run_dataflow_eval(job, res);
        break;
    default:
        rc = -EINVAL;
    }
    if (rc == 0 && pim_ctx_cancelled(&ctx)) rc = -ECANCELED;
    if (rc) {
        if (err && !err->message[0]) fail(err, rc, "", util_strerror(rc));
        pim_result_free(res);
    }
    return rc;
}

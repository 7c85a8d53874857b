/* vmm.c: programming a matrix onto crossbars, and the bit-sliced product.
 *
 * Programming quantises W, encodes signs (offset or differential), cuts each
 * value into cell_bits-wide slices (one plane per slice and polarity), and
 * lays the planes out for the kernels: per m-group of PIM_GROUP columns and
 * row block. Exact cells keep integer levels (int8 kernel); with any
 * non-ideality each cell holds its conductance in level units (float
 * kernel), after programming noise, stuck-at faults and drift.
 *
 * The product streams the inputs as DAC digits; for every (input cycle,
 * weight slice) the kernels give each crossbar column's analog value, read
 * noise is added, and the dataflow converts and accumulates. Work is split
 * over m-groups (OpenMP) and tiles of vectors; every random number is keyed
 * by what it belongs to, so the split does not change the result. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ quantisation */

static double quantize_scale(double amax, int bits)
{
    return amax > 0 ? amax / (ldexp(1.0, bits - 1) - 1) : 0;
}

static int32_t quantize_one(double v, double scale, int bits)
{
    double qmax = ldexp(1.0, bits - 1) - 1;
    double q = nearbyint(v / scale);
    return (int32_t)(q > qmax ? qmax : q < -qmax ? -qmax : q);
}

double pim_quantize(const float *x, size_t n, int bits, int32_t *q)
{
    double amax = 0;
    for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs((double)x[i]));
    double scale = quantize_scale(amax, bits);
    for (size_t i = 0; i < n; i++) q[i] = scale > 0 ? quantize_one(x[i], scale, bits) : 0;
    return scale;
}

double pim_quantize_d(const double *x, size_t n, int bits, int32_t *q)
{
    double amax = 0;
    for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs(x[i]));
    double scale = quantize_scale(amax, bits);
    for (size_t i = 0; i < n; i++) q[i] = scale > 0 ? quantize_one(x[i], scale, bits) : 0;
    return scale;
}

/* ------------------------------------------------------------- programming */

/* The level of slice s, polarity p, of weight w. */
static inline int weight_level(const struct pim_matrix *mat, int32_t w, int s, int p)
{
    int64_t u;
    if (mat->polarities == 1)
        u = (int64_t)w + mat->offset;
    else
        u = p == 0 ? (w > 0 ? w : 0) : (w < 0 ? -(int64_t)w : 0);
    return (int)((u >> (s * mat->dev.cell_bits)) & (mat->levels - 1));
}

/* What stored plane (s, p) holds for w: the level, or for fused
 * differential planes l+ - l- + (levels - 1). */
static inline int stored_level(const struct pim_matrix *mat, int32_t w, int s, int p)
{
    if (mat->polarities == 2 && mat->stored == 1)
        return weight_level(mat, w, s, 0) - weight_level(mat, w, s, 1) + mat->levels - 1;
    return weight_level(mat, w, s, p);
}

/* Where (plane, m-group) starts: in cells of g, or in bytes of lv. */
static size_t plane_offset(const struct pim_matrix *mat, int plane, int group)
{
    return ((size_t)plane * mat->groups + group) *
           (mat->exact_cells ? mat->plane_group_bytes : mat->plane_group_cells);
}

/* Sets a level in the packed layout (pim_internal.h). */
static void put_level(struct pim_matrix *mat, size_t base, size_t cell, int level)
{
    size_t group = cell / (PIM_GROUP * 4), chunk = group / (size_t)mat->pack;
    int q = (int)(group % (size_t)mat->pack), w = 8 / mat->pack;
    mat->lv[base + chunk * PIM_GROUP * 4 + cell % (PIM_GROUP * 4)] |= (uint8_t)(level << (q * w));
}

/* ISAAC column flipping: a column whose levels sum over more than half of
 * its maximum is stored inverted, so that no input can drive its sum past
 * half the ADC range. */
static void decide_flips(struct pim_matrix *mat)
{
    size_t width = (size_t)mat->groups * PIM_GROUP;
    int rows = mat->dev.rows, top = mat->levels - 1;
    mat->flip = util_xcalloc((size_t)mat->slices * mat->nb * width, 1);
    for (int s = 0; s < mat->slices; s++)
        for (int i = 0; i < mat->m; i++)
            for (int b = 0; b < mat->nb; b++) {
                int n0 = b * rows, n1 = n0 + rows < mat->n ? n0 + rows : mat->n;
                long sum = 0;
                for (int k = n0; k < n1; k++)
                    sum += weight_level(mat, mat->wq[(size_t)i * mat->n + k], s, 0);
                mat->flip[((size_t)s * mat->nb + b) * width + i] = 2 * sum > (long)(n1 - n0) * top;
            }
}

/* The conductance of one cell in level units (g_off subtracted), from its
 * ideal level and its random draws. */
static float cell_conductance(const struct pim_device *dev, const struct pim_matrix *mat, int level,
                              float z_prog, float u_stuck, float z_drift)
{
    double top = mat->levels - 1, off = mat->level_off;
    double g = level + off;
    g += dev->prog_noise * top * z_prog;
    if (g < 0) g = 0;
    if (u_stuck <= dev->stuck_on_rate)
        g = top + off;
    else if (u_stuck <= dev->stuck_on_rate + dev->stuck_off_rate)
        g = off;
    if (dev->drift_time > 1)
        g *= pow(dev->drift_time, -(dev->drift_nu + dev->drift_nu_std * z_drift));
    return (float)(g - off);
}

/* Lays out one row (output i) of plane (s, p). */
static void program_row(struct pim_matrix *mat, uint64_t seed, int s, int p, int i, float *z_prog,
                        float *u_stuck, float *z_drift)
{
    const struct pim_device *dev = &mat->dev;
    int plane = s * mat->stored + p, n = mat->n, rows = dev->rows, r4 = mat->r4;
    int group = i / PIM_GROUP, col = i % PIM_GROUP;
    size_t base = plane_offset(mat, plane, group);
    size_t width = (size_t)mat->groups * PIM_GROUP;
    if (!mat->exact_cells) {
        uint64_t first = (uint64_t)i * (uint64_t)n;
        if (dev->prog_noise > 0)
            pim_rng_normal(pim_key(seed, mat->stream, 1, plane), first, z_prog, n);
        if (dev->stuck_on_rate + dev->stuck_off_rate > 0)
            pim_rng_uniform(pim_key(seed, mat->stream, 2, plane), first, u_stuck, n);
        if (dev->drift_time > 1 && dev->drift_nu_std > 0)
            pim_rng_normal(pim_key(seed, mat->stream, 3, plane), first, z_drift, n);
    }
    for (int k = 0; k < n; k++) {
        int b = k / rows, r = k % rows;
        int level = stored_level(mat, mat->wq[(size_t)i * n + k], s, p);
        if (mat->flip && mat->flip[((size_t)s * mat->nb + b) * width + i])
            level = mat->levels - 1 - level;
        if (mat->exact_cells) {
            put_level(mat, base,
                      ((size_t)b * (r4 / 4) + r / 4) * (PIM_GROUP * 4) + col * 4 + (r & 3), level);
        } else {
            float zp = dev->prog_noise > 0 ? z_prog[k] : 0;
            float us = dev->stuck_on_rate + dev->stuck_off_rate > 0 ? u_stuck[k] : 2.0f;
            float zd = dev->drift_time > 1 && dev->drift_nu_std > 0 ? z_drift[k] : 0;
            mat->g[base + ((size_t)b * r4 + r) * PIM_GROUP + col] =
                cell_conductance(dev, mat, level, zp, us, zd);
        }
    }
}

/* Neural-PIM converters: a range per (row block, column) from the column's
 * worst case, and a static gain mismatch. */
static void npim_converters(struct pim_matrix *mat, uint64_t seed)
{
    const struct pim_device *dev = &mat->dev;
    size_t width = (size_t)mat->groups * PIM_GROUP;
    double xmax = ldexp(1.0, dev->input_bits - 1) - 1;
    mat->npim_fs = util_xcalloc((size_t)mat->nb * width, sizeof(double));
    mat->npim_gain = util_xmalloc((size_t)mat->nb * width * sizeof(float));
    pim_rng_normal(pim_key(seed, mat->stream, 5, 0), 0, mat->npim_gain, (size_t)mat->nb * width);
    for (size_t k = 0; k < (size_t)mat->nb * width; k++)
        mat->npim_gain[k] = 1.0f + (float)dev->npim_sa_gain_error * mat->npim_gain[k];
    for (int i = 0; i < mat->m; i++)
        for (int k = 0; k < mat->n; k++)
            mat->npim_fs[(size_t)(k / dev->rows) * width + i] +=
                fabs((double)mat->wq[(size_t)i * mat->n + k]);
    for (size_t k = 0; k < (size_t)mat->nb * width; k++)
        mat->npim_fs[k] *= xmax * dev->npim_full_scale;
}

int pim_matrix_program_q(const struct pim_device *dev, struct pim_ctx *ctx, const int32_t *wq,
                         int m, int n, double scale, pim_matrix **out)
{
    *out = NULL;
    if (pim_device_validate(dev, NULL) != 0 || m < 1 || n < 1 || !isfinite(scale)) return -EINVAL;
    int64_t wmax = ((int64_t)1 << (dev->weight_bits - 1)) - 1;
    for (size_t k = 0; k < (size_t)m * n; k++)
        if (wq[k] > wmax || wq[k] < -wmax) return -EINVAL;

    struct pim_matrix *mat = util_xcalloc(1, sizeof *mat);
    mat->dev = *dev;
    mat->m = m;
    mat->n = n;
    mat->scale = scale;
    mat->slices = pim_device_weight_slices(dev);
    mat->polarities = dev->signed_mode == PIM_SIGNED_DIFFERENTIAL ? 2 : 1;
    mat->levels = 1 << dev->cell_bits;
    mat->exact_cells = pim_device_cells_ideal(dev);
    /* Fused pairs store up to 2 (levels - 1): at most 126 keeps the AVX2
     * kernel's pairwise 16-bit sums from saturating. */
    bool fused = mat->polarities == 2 && mat->exact_cells && dev->cell_bits <= 6;
    mat->stored = mat->polarities == 2 && !fused ? 2 : 1;
    int stored_bits = dev->cell_bits + fused;
    mat->pack = !mat->exact_cells ? 1 : stored_bits <= 2 ? 4 : stored_bits <= 4 ? 2 : 1;
    mat->nb = pim_ceil_div(n, dev->rows);
    mat->r4 = pim_ceil_div(dev->rows, 4 * mat->pack) * 4 * mat->pack;
    mat->groups = pim_ceil_div(m, PIM_GROUP);
    mat->plane_group_cells = (size_t)mat->nb * mat->r4 * PIM_GROUP;
    mat->plane_group_bytes = mat->plane_group_cells / (size_t)mat->pack;
    if ((double)mat->plane_group_cells * mat->groups * mat->slices * mat->stored >
        (double)PIM_MAX_CELLS) {
        free(mat);
        return -E2BIG;
    }
    mat->offset = mat->polarities == 1 ? (int64_t)1 << (dev->weight_bits - 1) : 0;
    mat->level_off = (float)((mat->levels - 1) / (dev->on_off - 1));
    mat->wq = util_xmalloc((size_t)m * n * sizeof(int32_t));
    memcpy(mat->wq, wq, (size_t)m * n * sizeof(int32_t));
    mat->stream = ctx->stream++;

    if (mat->polarities == 1 && dev->adc_flip && dev->adc_bits > 0) decide_flips(mat);
    size_t cells = (size_t)mat->slices * mat->stored * mat->groups * mat->plane_group_cells;
    if (mat->exact_cells)
        mat->lv = util_aligned_alloc(cells / (size_t)mat->pack);
    else
        mat->g = util_aligned_alloc(cells * sizeof(float));

    int planes = mat->slices * mat->stored;
#pragma omp parallel num_threads(pim_threads(ctx))
    {
        float *z_prog = util_xmalloc((size_t)n * sizeof(float));
        float *u_stuck = util_xmalloc((size_t)n * sizeof(float));
        float *z_drift = util_xmalloc((size_t)n * sizeof(float));
#pragma omp for collapse(2) schedule(dynamic, 8)
        for (int plane = 0; plane < planes; plane++)
            for (int i = 0; i < m; i++)
                if (!pim_ctx_cancelled(ctx))
                    program_row(mat, ctx->seed, plane / mat->stored, plane % mat->stored, i, z_prog,
                                u_stuck, z_drift);
        free(z_prog);
        free(u_stuck);
        free(z_drift);
    }
    if (pim_ctx_cancelled(ctx)) {
        pim_matrix_free(mat);
        return -ECANCELED;
    }
    npim_converters(mat, ctx->seed);

    struct pim_vmm_counts c;
    pim_dataflow_get(PIM_DF_ISAAC)->counts(dev, m, n, &c);
    pim_cost_add_program(dev, (uint64_t)m * n * mat->slices * mat->polarities, c.crossbars,
                         &mat->program_cost);
    mat->program_cost.crossbars = c.crossbars;
    *out = mat;
    return 0;
}

int pim_matrix_program(const struct pim_device *dev, struct pim_ctx *ctx, const float *w, int m,
                       int n, pim_matrix **out)
{
    *out = NULL;
    if (pim_device_validate(dev, NULL) != 0 || m < 1 || n < 1) return -EINVAL;
    int32_t *wq = util_xmalloc((size_t)m * n * sizeof(int32_t));
    double scale = pim_quantize(w, (size_t)m * n, dev->weight_bits, wq);
    int rc = pim_matrix_program_q(dev, ctx, wq, m, n, scale, out);
    free(wq);
    return rc;
}

void pim_matrix_free(pim_matrix *mat)
{
    if (!mat) return;
    free(mat->wq);
    util_aligned_free(mat->lv);
    util_aligned_free(mat->g);
    free(mat->flip);
    free(mat->npim_fs);
    free(mat->npim_gain);
    free(mat->adc_range);
    free(mat);
}

int pim_matrix_rows(const pim_matrix *mat)
{
    return mat->m;
}
int pim_matrix_cols(const pim_matrix *mat)
{
    return mat->n;
}
const int32_t *pim_matrix_weights_q(const pim_matrix *mat)
{
    return mat->wq;
}
double pim_matrix_scale(const pim_matrix *mat)
{
    return mat->scale;
}

void pim_matrix_program_cost(const pim_matrix *mat, struct pim_cost *cost)
{
    pim_cost_add(cost, &mat->program_cost);
}

/* ----------------------------------------------------------------- product */

/* Input digits of one tile of vectors: int8 or float [cycle][t][ld], and
 * the per-block sums the dataflows need. */
struct tile_inputs {
    int8_t *d8;
    float *df;
    float *dsum;  /* [cycle][t][nb] */
    float *d2sum; /* [cycle][t][nb] */
    double *xsum; /* [t][nb] */
};

static void tile_inputs_fill(const struct pim_vmm_plan *plan, const int32_t *xq, int nt,
                             struct tile_inputs *in)
{
    const struct pim_matrix *mat = plan->mat;
    const struct pim_device *dev = plan->dev;
    int S = plan->cycles, db = dev->dac_bits, nb = mat->nb, r4 = mat->r4, n = mat->n;
    size_t ld = (size_t)nb * r4;
    int32_t mask = (1 << db) - 1;
    size_t digits = (size_t)S * nt * ld;
    if (in->d8) memset(in->d8, 0, digits);
    if (in->df) memset(in->df, 0, digits * sizeof(float));
    memset(in->dsum, 0, (size_t)S * nt * nb * sizeof(float));
    memset(in->d2sum, 0, (size_t)S * nt * nb * sizeof(float));
    memset(in->xsum, 0, (size_t)nt * nb * sizeof(double));
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < n; k++) {
            int32_t x = xq[(size_t)t * n + k];
            int b = k / dev->rows, r = k % dev->rows;
            in->xsum[(size_t)t * nb + b] += x;
            for (int j = 0; j < S; j++) {
                int digit;
                if (j < S - 1)
                    digit = (x >> (j * db)) & mask;
                else
                    digit = plan->top_negated ? -(x >> (j * db)) : x >> (j * db);
                size_t at = ((size_t)j * nt + t) * ld + (size_t)b * r4 + r;
                if (in->d8) in->d8[at] = (int8_t)digit;
                if (in->df) in->df[at] = (float)digit;
                in->dsum[((size_t)j * nt + t) * nb + b] += (float)digit;
                in->d2sum[((size_t)j * nt + t) * nb + b] += (float)(digit * digit);
            }
        }
}

/* Per-thread buffers of one m-group's work. */
struct group_scratch {
    float *p, *p2, *q, *q2, *noise;
    double *y, *analog;
    uint8_t *levels[2]; /* the unpacked (plane, m-group) of each polarity */
};

static void scratch_init(struct group_scratch *sc, const struct pim_matrix *mat, int nt, int nb,
                         bool npim)
{
    size_t cells = (size_t)nt * nb * PIM_GROUP;
    for (int p = 0; p < 2; p++)
        sc->levels[p] =
            mat->pack > 1 && p < mat->stored ? util_aligned_alloc(mat->plane_group_cells) : NULL;
    sc->p = util_aligned_alloc(cells * sizeof(float));
    sc->p2 = util_aligned_alloc(cells * sizeof(float));
    sc->q = util_aligned_alloc(cells * sizeof(float));
    sc->q2 = util_aligned_alloc(cells * sizeof(float));
    sc->noise = util_aligned_alloc(PIM_GROUP * sizeof(float));
    sc->y = util_aligned_alloc((size_t)nt * PIM_GROUP * sizeof(double));
    sc->analog = npim ? util_aligned_alloc(cells * sizeof(double)) : NULL;
}

static void scratch_free(struct group_scratch *sc)
{
    util_aligned_free(sc->p);
    util_aligned_free(sc->p2);
    util_aligned_free(sc->q);
    util_aligned_free(sc->q2);
    util_aligned_free(sc->noise);
    util_aligned_free(sc->y);
    util_aligned_free(sc->analog);
    util_aligned_free(sc->levels[0]);
    util_aligned_free(sc->levels[1]);
}

/* Adds read noise to the column values of (cycle j, slice s): variance
 * sigma^2 sum (g + g_off)^2 d^2 over the column's cells, drawn once per
 * column read (the sum of independent per-cell noise). */
static void add_read_noise(const struct pim_vmm_plan *plan, const struct tile_inputs *in,
                           struct pim_vmm_tile *tile, struct group_scratch *sc, const float *q)
{
    const struct pim_matrix *mat = plan->mat;
    const struct pim_device *dev = plan->dev;
    int nb = mat->nb;
    float sigma = (float)dev->read_noise;
    float cell_max = (float)(mat->levels - 1) + mat->level_off;
    for (int t = 0; t < tile->nt; t++) {
        uint64_t key = pim_key(plan->noise_key, (uint64_t)(tile->t0 + t), (uint64_t)tile->j,
                               (uint64_t)tile->s);
        for (int b = 0; b < nb; b++) {
            float *row = sc->p + ((size_t)t * nb + b) * PIM_GROUP;
            pim_rng_normal(key, (uint64_t)b * mat->groups * PIM_GROUP + tile->c0, sc->noise,
                           PIM_GROUP);
            if (dev->read_noise_model == PIM_READ_NOISE_PROPORTIONAL) {
                const float *var = q + ((size_t)t * nb + b) * PIM_GROUP;
                for (int c = 0; c < PIM_GROUP; c++) row[c] += sigma * sqrtf(var[c]) * sc->noise[c];
            } else {
                float d2 = in->d2sum[((size_t)tile->j * tile->nt + t) * nb + b];
                float sd = sigma * cell_max * sqrtf(d2 * (float)mat->polarities);
                for (int c = 0; c < PIM_GROUP; c++) row[c] += sd * sc->noise[c];
            }
        }
    }
}

/* All cycles and slices of one m-group for one tile of vectors. */
static void run_group(const struct pim_vmm_plan *plan, const struct pim_dataflow *df,
                      const struct pim_kernels *kern, const struct tile_inputs *in,
                      struct pim_vmm_tile *tile, struct group_scratch *sc)
{
    const struct pim_matrix *mat = plan->mat;
    const struct pim_device *dev = plan->dev;
    int nb = mat->nb, r4 = mat->r4, nt = tile->nt, S = plan->cycles;
    int ld = nb * r4;
    size_t cells = (size_t)nt * nb * PIM_GROUP;
    bool noise = dev->read_noise > 0;
    bool proportional = noise && dev->read_noise_model == PIM_READ_NOISE_PROPORTIONAL;
    memset(sc->y, 0, (size_t)nt * PIM_GROUP * sizeof(double));
    if (sc->analog) memset(sc->analog, 0, cells * sizeof(double));
    tile->y = sc->y;
    tile->analog = sc->analog;
    tile->noise = sc->noise;
    tile->p = sc->p;
    /* Slices outside, cycles inside: each plane is unpacked once per tile. */
    for (int s = 0; s < mat->slices; s++) {
        const uint8_t *planes[2] = {NULL, NULL};
        for (int p = 0; mat->exact_cells && p < mat->stored; p++) {
            const uint8_t *lv = mat->lv + plane_offset(mat, s * mat->stored + p, tile->group);
            if (mat->pack > 1) {
                kern->unpack(lv, mat->pack, mat->plane_group_bytes / (PIM_GROUP * 4),
                             sc->levels[p]);
                lv = sc->levels[p];
            }
            planes[p] = lv;
        }
        for (int j = 0; j < S; j++) {
            for (int p = 0; p < mat->stored; p++) {
                float *dst = p == 0 ? sc->p : sc->p2;
                float *var = proportional ? (p == 0 ? sc->q : sc->q2) : NULL;
                if (mat->exact_cells)
                    kern->i8(planes[p], in->d8 + (size_t)j * nt * ld, ld, nt, nb, r4, dst);
                else
                    kern->f32(mat->g + plane_offset(mat, s * mat->stored + p, tile->group),
                              in->df + (size_t)j * nt * ld, ld, nt, nb, r4, mat->level_off, dst,
                              var);
            }
            if (mat->stored == 2) { /* the pair's currents subtracted */
                for (size_t k = 0; k < cells; k++) sc->p[k] -= sc->p2[k];
                if (proportional)
                    for (size_t k = 0; k < cells; k++) sc->q[k] += sc->q2[k];
            } else if (mat->polarities == 2) { /* fused pair: remove the bias */
                const float *dsum = in->dsum + (size_t)j * nt * nb;
                float bias = (float)(mat->levels - 1);
                for (int t = 0; t < nt; t++)
                    for (int b = 0; b < nb; b++) {
                        float *row = sc->p + ((size_t)t * nb + b) * PIM_GROUP,
                              off = bias * dsum[(size_t)t * nb + b];
                        for (int c = 0; c < PIM_GROUP; c++) row[c] -= off;
                    }
            }
            tile->j = j;
            tile->s = s;
            if (noise) add_read_noise(plan, in, tile, sc, sc->q);
            bool negated = plan->top_negated && j == S - 1;
            tile->weight = ldexp(negated ? -1.0 : 1.0, j * dev->dac_bits + s * dev->cell_bits);
            tile->adc_signed = mat->polarities == 2 || (j == S - 1 && !plan->top_negated);
            tile->dsum = in->dsum + (size_t)j * nt * nb;
            df->reduce(plan, tile);
        }
    }
    df->finish(plan, tile);
}

bool pim_matrix_product_exact(const pim_matrix *mat, const struct pim_dataflow *df)
{
    const struct pim_device *dev = &mat->dev;
    if (!mat->exact_cells) return false;
    if (df->kind == PIM_DF_NEURAL_PIM)
        return dev->adc_bits == 0 && dev->npim_sa_gain_error == 0 && dev->npim_sa_noise == 0;
    if (dev->adc_bits == 0) return true;
    if (dev->adc_full_scale != 0 || mat->adc_range || (df->kind == PIM_DF_CASCADE && mat->nb > 1))
        return false;
    /* The largest |column value| of any cycle against the converter's codes. */
    int rows = mat->n < dev->rows ? mat->n : dev->rows, top = mat->levels - 1;
    double column = mat->flip ? (double)(rows * top / 2) : (double)rows * top;
    int cycles = pim_device_input_cycles(dev);
    int top_bits = dev->input_bits - (cycles - 1) * dev->dac_bits;
    double low_digit = cycles > 1 ? ldexp(1.0, dev->dac_bits) - 1 : 0;
    double top_digit = top_bits == 1 ? 1 : ldexp(1.0, top_bits - 1);
    double signed_codes = ldexp(1.0, dev->adc_bits - 1) - 1, unsigned_codes = 2 * signed_codes + 1;
    double low_codes = mat->polarities == 2 ? signed_codes : unsigned_codes;
    double top_codes = mat->polarities == 2 || top_bits > 1 ? signed_codes : unsigned_codes;
    return column * low_digit <= low_codes && column * top_digit <= top_codes;
}

/* The integer product, for products proven exact. */
static void exact_product(const pim_matrix *mat, const int32_t *xq, int batch, double *acc,
                          int threads)
{
    int m = mat->m, n = mat->n;
    (void)threads; /* unused without OpenMP */
#pragma omp parallel for collapse(2) num_threads(threads)
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            const int32_t *w = mat->wq + (size_t)i * n, *x = xq + (size_t)t * n;
            __int128 s = 0;
            for (int k = 0; k < n; k++) s += (int64_t)w[k] * x[k];
            acc[(size_t)t * m + i] = (double)s;
        }
}

/* The bit-sliced product through the kernels and the dataflow. */
static int engine_product(pim_matrix *mat, const struct pim_dataflow *df, struct pim_ctx *ctx,
                          const int32_t *xq, int batch, double *acc, int threads,
                          double *calibration)
{
    const struct pim_device *dev = &mat->dev;
    (void)threads; /* unused without OpenMP */
    struct pim_vmm_plan plan = {.mat = mat, .dev = dev, .cycles = pim_device_input_cycles(dev)};
    int top_bits = dev->input_bits - (plan.cycles - 1) * dev->dac_bits;
    plan.top_negated = top_bits == 1;
    for (int s = 0; s < mat->slices; s++) {
        double fu = mat->adc_range ? mat->adc_range[2 * s] : dev->adc_full_scale;
        double fb = mat->adc_range ? mat->adc_range[2 * s + 1] : dev->adc_full_scale;
        plan.step_unsigned[s] =
            fu > 0 && dev->adc_bits > 0 ? fu / (ldexp(1.0, dev->adc_bits) - 1) : 1;
        plan.step_signed[s] =
            fb > 0 && dev->adc_bits > 1 ? fb / (ldexp(1.0, dev->adc_bits - 1) - 1) : 1;
    }
    plan.noise_key = pim_key(ctx->seed, mat->stream, 4, mat->products);
    plan.calibration = calibration;

    const struct pim_kernels *kern = pim_kernels_for(pim_isa_selected());
    int nb = mat->nb, S = plan.cycles;
    size_t ld = (size_t)nb * mat->r4;
    int tile_max = batch < PIM_TILE_VECTORS ? batch : PIM_TILE_VECTORS;
    struct tile_inputs in = {0};
    if (mat->exact_cells)
        in.d8 = util_aligned_alloc((size_t)S * tile_max * ld);
    else
        in.df = util_aligned_alloc((size_t)S * tile_max * ld * sizeof(float));
    in.dsum = util_xmalloc((size_t)S * tile_max * nb * sizeof(float));
    in.d2sum = util_xmalloc((size_t)S * tile_max * nb * sizeof(float));
    in.xsum = util_xmalloc((size_t)tile_max * nb * sizeof(double));

    for (int t0 = 0; t0 < batch && !pim_ctx_cancelled(ctx); t0 += tile_max) {
        int nt = batch - t0 < tile_max ? batch - t0 : tile_max;
        tile_inputs_fill(&plan, xq + (size_t)t0 * mat->n, nt, &in);
#pragma omp parallel num_threads(threads)
        {
            struct group_scratch sc;
            scratch_init(&sc, mat, nt, nb, df->kind == PIM_DF_NEURAL_PIM);
#pragma omp for schedule(dynamic, 1)
            for (int g = 0; g < mat->groups; g++) {
                if (pim_ctx_cancelled(ctx)) continue;
                struct pim_vmm_tile tile = {.t0 = t0,
                                            .nt = nt,
                                            .group = g,
                                            .c0 = g * PIM_GROUP,
                                            .width = mat->m - g * PIM_GROUP < PIM_GROUP
                                                         ? mat->m - g * PIM_GROUP
                                                         : PIM_GROUP,
                                            .xsum = in.xsum,
                                            .acc = acc};
                run_group(&plan, df, kern, &in, &tile, &sc);
            }
            scratch_free(&sc);
        }
    }
    util_aligned_free(in.d8);
    util_aligned_free(in.df);
    free(in.dsum);
    free(in.d2sum);
    free(in.xsum);
    return pim_ctx_cancelled(ctx) ? -ECANCELED : 0;
}

int pim_matrix_vmm_q(pim_matrix *mat, const struct pim_dataflow *df, struct pim_ctx *ctx,
                     const int32_t *xq, int batch, double *acc, struct pim_cost *cost)
{
    const struct pim_device *dev = &mat->dev;
    if (!df || batch < 1) return -EINVAL;
    int64_t xmax = ((int64_t)1 << (dev->input_bits - 1)) - 1;
    for (size_t k = 0; k < (size_t)batch * mat->n; k++)
        if (xq[k] > xmax || xq[k] < -xmax) return -EINVAL;

    int threads = pim_threads(ctx);
    int rc = 0;
    if (!ctx->no_exact_shortcut && !mat->adc_range && pim_matrix_product_exact(mat, df))
        exact_product(mat, xq, batch, acc, threads);
    else
        rc = engine_product(mat, df, ctx, xq, batch, acc, threads, NULL);
    mat->products++;
    if (rc == 0 && cost) {
        struct pim_vmm_counts c;
        df->counts(dev, mat->m, mat->n, &c);
        pim_cost_add_reads(dev, df, &c, mat->m, mat->n, (uint64_t)batch, cost);
    }
    return rc;
}

/* Each vector quantised with its own scale to input_bits. */
static double *quantize_inputs(const pim_matrix *mat, const float *x, int batch, int32_t *xq)
{
    double *scales = util_xmalloc((size_t)batch * sizeof(double));
    for (int t = 0; t < batch; t++)
        scales[t] = pim_quantize(x + (size_t)t * mat->n, (size_t)mat->n, mat->dev.input_bits,
                                 xq + (size_t)t * mat->n);
    return scales;
}

int pim_matrix_calibrate_adc(pim_matrix *mat, struct pim_ctx *ctx, const float *x, int batch)
{
    if (batch < 1) return -EINVAL;
    int32_t *xq = util_xmalloc((size_t)batch * mat->n * sizeof(int32_t));
    double *scales = quantize_inputs(mat, x, batch, xq);
    double *range = util_xcalloc((size_t)mat->slices * 2, sizeof(double));
    free(mat->adc_range);
    mat->adc_range = NULL; /* measure through the uncalibrated device */
    int rc = engine_product(mat, &pim_calibration_dataflow, ctx, xq, batch, NULL, pim_threads(ctx),
                            range);
    mat->products++;
    if (rc == 0)
        mat->adc_range = range;
    else
        free(range);
    free(xq);
    free(scales);
    return rc;
}

int pim_matrix_vmm(pim_matrix *mat, const struct pim_dataflow *df, struct pim_ctx *ctx,
                   const float *x, int batch, float *y, struct pim_cost *cost)
{
    if (!df || batch < 1) return -EINVAL;
    int n = mat->n, m = mat->m;
    int32_t *xq = util_xmalloc((size_t)batch * n * sizeof(int32_t));
    double *scales = quantize_inputs(mat, x, batch, xq);
    double *acc = util_xmalloc((size_t)batch * m * sizeof(double));
    int rc = pim_matrix_vmm_q(mat, df, ctx, xq, batch, acc, cost);
    if (rc == 0)
        for (int t = 0; t < batch; t++)
            for (int i = 0; i < m; i++)
                y[(size_t)t * m + i] = (float)(acc[(size_t)t * m + i] * mat->scale * scales[t]);
    free(xq);
    free(scales);
    free(acc);
    return rc;
}

int pim_linear(const struct pim_device *dev, const struct pim_dataflow *df, struct pim_ctx *ctx,
               const float *x, int m, const float *w, int n, int k, float *y, struct pim_cost *cost)
{
    pim_matrix *mat;
    int rc = pim_matrix_program(dev, ctx, w, n, k, &mat);
    if (rc != 0) return rc;
    rc = pim_matrix_vmm(mat, df, ctx, x, m, y, cost);
    if (rc == 0 && cost) pim_matrix_program_cost(mat, cost);
    pim_matrix_free(mat);
    return rc;
}

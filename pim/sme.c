/* sme.c: SME's bit-sparse crossbar mapping.
 *
 * A weight is split into sign and magnitude; the magnitude into slices of
 * cell_bits bits. Each (slice, sign) is a plane: positive weights' slices on
 * the positive planes, negative weights' on the negative ones (a
 * differential pair over two crossbar columns, subtracted after
 * conversion). The columns of all planes, the high planes first, are cut
 * into groups of a crossbar's width after dropping all-zero columns; within
 * a group the input rows that are zero in every column are dropped too, and
 * the surviving rows are packed into as few crossbars as they fill. Index
 * tables route inputs to rows and columns to (output, shift, sign).
 *
 * Squeezing only removes rows and columns, so the count never exceeds the
 * unsqueezed mapping of the same planes, ceil(N/R) ceil(2 M S_w / C). */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One packed crossbar. */
struct sme_xbar {
    int rows, cols;
    int *row_input;   /* [rows] input feeding each row */
    int *col_output;  /* [cols] output of each column */
    int *col_shift;   /* [cols] bit position of its slice */
    int8_t *col_sign; /* [cols] +1 positive plane, -1 negative */
    uint8_t *levels;  /* [cols][rows], stored inverted where flip */
    uint8_t *flip;    /* [cols] */
};

struct pim_sme {
    struct pim_device dev;
    int m, n, weight_bits;
    struct sme_xbar *xbars;
    int n_xbars;
    uint64_t cells;
};

static int magnitude_level(int32_t w, int sign, int slice, int cell_bits)
{
    int64_t mag = sign == 0 ? (w > 0 ? w : 0) : (w < 0 ? -(int64_t)w : 0);
    return (int)((mag >> (slice * cell_bits)) & ((1 << cell_bits) - 1));
}

/* A plane column: slice, sign, output, and its non-zero cells. */
struct plane_col {
    int slice, sign, output, nnz;
};

/* Within a plane, sparse columns first: grouped together they share more
 * all-zero rows to squeeze out. */
static int by_plane_then_nnz(const void *pa, const void *pb)
{
    const struct plane_col *a = pa, *b = pb;
    if (a->slice != b->slice) return b->slice - a->slice;
    if (a->sign != b->sign) return a->sign - b->sign;
    if (a->nnz != b->nnz) return a->nnz - b->nnz;
    return a->output - b->output;
}

int pim_sme_map(const struct pim_device *dev, const int32_t *wq, int m, int n, int weight_bits,
                pim_sme **out, struct pim_sme_stats *stats)
{
    *out = NULL;
    if (pim_device_validate(dev, NULL) != 0 || m < 1 || n < 1 || weight_bits < 2 ||
        weight_bits > 32)
        return -EINVAL;
    int64_t wmax = ((int64_t)1 << (weight_bits - 1)) - 1;
    for (size_t k = 0; k < (size_t)m * n; k++)
        if (wq[k] > wmax || wq[k] < -wmax) return -EINVAL;

    int cb = dev->cell_bits, R = dev->rows, C = dev->cols;
    int slices = pim_ceil_div(weight_bits - 1, cb);
    memset(stats, 0, sizeof *stats);
    stats->crossbars_baseline =
        (uint64_t)pim_ceil_div(n, R) * (uint64_t)pim_ceil_div(2L * m * slices, C);
    stats->crossbars_offset = (uint64_t)pim_ceil_div(n, R) *
                              (uint64_t)pim_ceil_div((long)m * pim_ceil_div(weight_bits, cb), C);
    uint64_t set_bits = 0;
    for (size_t k = 0; k < (size_t)m * n; k++)
        set_bits += (uint64_t)__builtin_popcountll((uint64_t)llabs(wq[k]));
    stats->bit_density = (double)set_bits / ((double)m * n * (weight_bits - 1));

    /* The non-empty plane columns, high planes first, sparse ones first. */
    struct plane_col *cols = util_xmalloc((size_t)2 * slices * m * sizeof *cols);
    int n_cols = 0;
    for (int s = slices - 1; s >= 0; s--)
        for (int sign = 0; sign < 2; sign++)
            for (int i = 0; i < m; i++) {
                const int32_t *row = wq + (size_t)i * n;
                int nnz = 0;
                for (int k = 0; k < n; k++) nnz += magnitude_level(row[k], sign, s, cb) != 0;
                if (nnz) cols[n_cols++] = (struct plane_col){s, sign, i, nnz};
            }
    qsort(cols, (size_t)n_cols, sizeof *cols, by_plane_then_nnz);
    stats->zero_columns = (uint64_t)2 * slices * m - (uint64_t)n_cols;

    struct pim_sme *sme = util_xcalloc(1, sizeof *sme);
    sme->dev = *dev;
    sme->m = m;
    sme->n = n;
    sme->weight_bits = weight_bits;
    int cap = 0;
    int *kept = util_xmalloc((size_t)n * sizeof(int));
    bool flips = dev->adc_flip && dev->adc_bits > 0;
    for (int g0 = 0; g0 < n_cols; g0 += C) {
        int gc = n_cols - g0 < C ? n_cols - g0 : C, n_kept = 0;
        for (int k = 0; k < n; k++) {
            bool any = false;
            for (int c = 0; c < gc && !any; c++) {
                const struct plane_col *pc = &cols[g0 + c];
                any = magnitude_level(wq[(size_t)pc->output * n + k], pc->sign, pc->slice, cb) != 0;
            }
            if (any) kept[n_kept++] = k;
        }
        stats->zero_rows += (uint64_t)(n - n_kept);
        for (int r0 = 0; r0 < n_kept; r0 += R) {
            if (sme->n_xbars == cap) {
                cap = cap ? 2 * cap : 16;
                sme->xbars = util_xrealloc(sme->xbars, (size_t)cap * sizeof *sme->xbars);
            }
            struct sme_xbar *x = &sme->xbars[sme->n_xbars++];
            x->rows = n_kept - r0 < R ? n_kept - r0 : R;
            x->cols = gc;
            x->row_input = util_xmalloc((size_t)x->rows * sizeof(int));
            memcpy(x->row_input, kept + r0, (size_t)x->rows * sizeof(int));
            x->col_output = util_xmalloc((size_t)gc * sizeof(int));
            x->col_shift = util_xmalloc((size_t)gc * sizeof(int));
            x->col_sign = util_xmalloc((size_t)gc);
            x->levels = util_xmalloc((size_t)gc * x->rows);
            x->flip = util_xcalloc((size_t)gc, 1);
            int top = (1 << cb) - 1;
            for (int c = 0; c < gc; c++) {
                const struct plane_col *pc = &cols[g0 + c];
                x->col_output[c] = pc->output;
                x->col_shift[c] = pc->slice * cb;
                x->col_sign[c] = pc->sign ? -1 : 1;
                uint8_t *lv = x->levels + (size_t)c * x->rows;
                long sum = 0;
                for (int r = 0; r < x->rows; r++) {
                    lv[r] = (uint8_t)magnitude_level(wq[(size_t)pc->output * n + x->row_input[r]],
                                                     pc->sign, pc->slice, cb);
                    sum += lv[r];
                }
                if (flips && 2 * sum > (long)x->rows * top) { /* ISAAC column flipping */
                    x->flip[c] = 1;
                    for (int r = 0; r < x->rows; r++) lv[r] = (uint8_t)(top - lv[r]);
                }
            }
            sme->cells += (uint64_t)x->rows * (uint64_t)gc;
        }
    }
    free(kept);
    free(cols);
    stats->crossbars_sme = (uint64_t)sme->n_xbars;
    *out = sme;
    return 0;
}

void pim_sme_free(pim_sme *sme)
{
    if (!sme) return;
    for (int i = 0; i < sme->n_xbars; i++) {
        struct sme_xbar *x = &sme->xbars[i];
        free(x->row_input);
        free(x->col_output);
        free(x->col_shift);
        free(x->col_sign);
        free(x->levels);
        free(x->flip);
    }
    free(sme->xbars);
    free(sme);
}

int pim_sme_vmm_q(const pim_sme *sme, struct pim_ctx *ctx, const int32_t *xq, int batch,
                  double *acc, struct pim_cost *cost)
{
    const struct pim_device *dev = &sme->dev;
    if (batch < 1) return -EINVAL;
    int64_t xmax = ((int64_t)1 << (dev->input_bits - 1)) - 1;
    for (size_t k = 0; k < (size_t)batch * sme->n; k++)
        if (xq[k] > xmax || xq[k] < -xmax) return -EINVAL;
    int S = pim_device_input_cycles(dev), db = dev->dac_bits, top = (1 << dev->cell_bits) - 1;
    bool negated = dev->input_bits - (S - 1) * db == 1;
    double fs = dev->adc_full_scale;
    double step_u = fs > 0 ? fs / (ldexp(1.0, dev->adc_bits) - 1) : 1;
    double step_s = fs > 0 && dev->adc_bits > 1 ? fs / (ldexp(1.0, dev->adc_bits - 1) - 1) : 1;
    memset(acc, 0, (size_t)batch * sme->m * sizeof(double));
    int rc = 0;
#pragma omp parallel for num_threads(pim_threads(ctx)) schedule(dynamic, 1)
    for (int t = 0; t < batch; t++) {
        if (pim_ctx_cancelled(ctx)) continue;
        const int32_t *x = xq + (size_t)t * sme->n;
        double *y = acc + (size_t)t * sme->m;
        for (int i = 0; i < sme->n_xbars; i++) {
            const struct sme_xbar *xb = &sme->xbars[i];
            for (int j = 0; j < S; j++) {
                bool last = j == S - 1, is_signed = last && !negated;
                struct pim_adc adc =
                    pim_adc_make(dev->adc_bits, is_signed ? step_s : step_u, is_signed);
                double dsum = 0;
                int digits[xb->rows];
                for (int r = 0; r < xb->rows; r++) {
                    int32_t v = x[xb->row_input[r]];
                    int d = !last ? (v >> (j * db)) & ((1 << db) - 1) : v >> (j * db);
                    digits[r] = last && negated ? -d : d;
                    dsum += digits[r];
                }
                double weight = ldexp(last && negated ? -1.0 : 1.0, j * db);
                for (int c = 0; c < xb->cols; c++) {
                    const uint8_t *lv = xb->levels + (size_t)c * xb->rows;
                    long col = 0;
                    for (int r = 0; r < xb->rows; r++) col += (long)lv[r] * digits[r];
                    double q = pim_adc_convert(&adc, (double)col);
                    if (xb->flip[c]) q = top * dsum - q;
                    y[xb->col_output[c]] += xb->col_sign[c] * ldexp(weight, xb->col_shift[c]) * q;
                }
            }
        }
    }
    if (pim_ctx_cancelled(ctx)) rc = -ECANCELED;
    if (rc == 0 && cost) {
        uint64_t conv = 0, dacs = 0;
        for (int i = 0; i < sme->n_xbars; i++) {
            conv += (uint64_t)sme->xbars[i].cols;
            dacs += (uint64_t)sme->xbars[i].rows;
        }
        struct pim_vmm_counts c = {.row_blocks = 1,
                                   .weight_slices = 1,
                                   .input_cycles = S,
                                   .crossbars = (uint64_t)sme->n_xbars,
                                   .adc_conversions = conv * S,
                                   .dac_conversions = dacs * S,
                                   .crossbar_reads = (uint64_t)sme->n_xbars * S,
                                   .shift_adds = conv * S,
                                   .cycles = (uint64_t)S};
        pim_cost_add_reads(dev, pim_dataflow_get(PIM_DF_ISAAC), &c, sme->m, sme->n, (uint64_t)batch,
                           cost);
    }
    return rc;
}

/* The program cost of the packed crossbars. */
void pim_sme_program_cost(const pim_sme *sme, struct pim_cost *cost)
{
    pim_cost_add_program(&sme->dev, sme->cells, (uint64_t)sme->n_xbars, cost);
}

/* ------------------------------------------------------- re-quantisation */

void pim_sme_requantize(int32_t *wq, size_t count, int weight_bits, int max_bits)
{
    int mag_bits = weight_bits - 1;
    if (max_bits <= 0 || max_bits >= mag_bits || mag_bits > 16) return;
    /* Every magnitude with at most max_bits set bits, in increasing order. */
    int32_t limit = (1 << mag_bits) - 1, n_allowed = 0;
    int32_t *allowed = util_xmalloc(((size_t)limit + 1) * sizeof(int32_t));
    for (int32_t v = 0; v <= limit; v++)
        if (__builtin_popcount((unsigned)v) <= max_bits) allowed[n_allowed++] = v;
    for (size_t i = 0; i < count; i++) {
        int32_t mag = wq[i] < 0 ? -wq[i] : wq[i];
        int lo = 0, hi = n_allowed - 1;
        while (lo < hi) { /* first allowed >= mag */
            int mid = (lo + hi) / 2;
            if (allowed[mid] < mag)
                lo = mid + 1;
            else
                hi = mid;
        }
        int32_t best = allowed[lo];
        if (lo > 0 && mag - allowed[lo - 1] <= best - mag) best = allowed[lo - 1];
        wq[i] = wq[i] < 0 ? -best : best;
    }
    free(allowed);
}

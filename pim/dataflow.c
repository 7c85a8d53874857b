/* dataflow.c: ISAAC, CASCADE and Neural-PIM, each as its cost counts and
 * the functional steps the engine calls (reduce per cycle and slice,
 * finish per tile).
 *
 * Column values reach reduce as read (stored-inverted columns still
 * inverted). ISAAC converts them as they are and un-inverts digitally;
 * CASCADE and Neural-PIM un-invert in the analog domain (a reference
 * current) before they accumulate. */
#include "pim/pim_internal.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ counts */

static void counts_common(const struct pim_device *dev, int m, int n, struct pim_vmm_counts *c)
{
    memset(c, 0, sizeof *c);
    int polarities = dev->signed_mode == PIM_SIGNED_DIFFERENTIAL ? 2 : 1;
    c->row_blocks = pim_ceil_div(n, dev->rows);
    c->weight_slices = pim_device_weight_slices(dev);
    c->input_cycles = pim_device_input_cycles(dev);
    uint64_t col_tiles = (uint64_t)pim_ceil_div((long)m * c->weight_slices * polarities, dev->cols);
    c->crossbars = (uint64_t)c->row_blocks * col_tiles;
    c->crossbar_reads = (uint64_t)c->input_cycles * c->crossbars;
    c->dac_conversions = (uint64_t)c->input_cycles * (uint64_t)n * col_tiles;
    c->cycles = (uint64_t)c->input_cycles;
}

static void isaac_counts(const struct pim_device *dev, int m, int n, struct pim_vmm_counts *c)
{
    counts_common(dev, m, n, c);
    c->adc_conversions = (uint64_t)m * c->weight_slices * c->input_cycles * c->row_blocks;
    c->shift_adds = c->adc_conversions;
}

static void cascade_counts(const struct pim_device *dev, int m, int n, struct pim_vmm_counts *c)
{
    counts_common(dev, m, n, c);
    c->adc_conversions = (uint64_t)m * c->weight_slices * c->input_cycles;
    c->shift_adds = c->adc_conversions;
    c->analog_ops = c->adc_conversions * c->row_blocks; /* partial sums into the buffers */
    c->depth = 1;                                       /* the buffer stage */
}

static void npim_counts(const struct pim_device *dev, int m, int n, struct pim_vmm_counts *c)
{
    counts_common(dev, m, n, c);
    c->adc_conversions = (uint64_t)m * c->row_blocks;
    c->shift_adds = c->adc_conversions; /* row blocks added digitally */
    c->analog_ops = (uint64_t)m * c->weight_slices * c->input_cycles * c->row_blocks;
    c->depth = 1; /* the final conversion */
}

/* --------------------------------------------------------------- functional */

const uint8_t pim_no_flips[PIM_GROUP];

/* One row of PIM_GROUP column values through the converter, un-inverted,
 * into y with weight w: q = adc(v); y += w (flip ? inverted - q : q).
 * AVX2 (the baseline of every build): this runs once per crossbar column
 * per cycle and slice, as often as the kernels' dot products. */
static void convert_row(const struct pim_adc *adc, const float *v, const uint8_t *flip,
                        double inverted, double w, double *y)
{
    const __m256d vinv = _mm256_set1_pd(inverted), vw = _mm256_set1_pd(w);
    const __m256d half = _mm256_set1_pd(0.5), two = _mm256_set1_pd(2.0);
    const __m256d step = _mm256_set1_pd(adc->step), inv = _mm256_set1_pd(adc->inv_step);
    const __m256d lo = _mm256_set1_pd(adc->lo), hi = _mm256_set1_pd(adc->hi);
    for (int c = 0; c < PIM_GROUP; c += 4) {
        __m256d q = _mm256_cvtps_pd(_mm_loadu_ps(v + c));
        if (adc->bits) {
            __m256d code = _mm256_floor_pd(_mm256_fmadd_pd(q, inv, half));
            code = _mm256_min_pd(_mm256_max_pd(code, lo), hi);
            q = _mm256_mul_pd(code, step);
        }
        int32_t f4;
        memcpy(&f4, flip + c, 4);
        __m256d f = _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(f4)));
        q = _mm256_fmadd_pd(f, _mm256_fnmadd_pd(two, q, vinv), q); /* flip ? inverted - q : q */
        _mm256_storeu_pd(y + c, _mm256_fmadd_pd(vw, q, _mm256_loadu_pd(y + c)));
    }
}

/* ISAAC: each crossbar column converted every cycle, shifted and added. */
static void isaac_reduce(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    int nb = mat->nb;
    struct pim_adc adc =
        pim_adc_make(plan->dev->adc_bits,
                     tile->adc_signed ? plan->step_signed[tile->s] : plan->step_unsigned[tile->s],
                     tile->adc_signed);
    double top = mat->levels - 1;
    for (int t = 0; t < tile->nt; t++)
        for (int b = 0; b < nb; b++)
            convert_row(&adc, tile->p + ((size_t)t * nb + b) * PIM_GROUP,
                        pim_tile_flips(plan, tile, b), top * tile->dsum[(size_t)t * nb + b],
                        tile->weight, tile->y + (size_t)t * PIM_GROUP);
}

/* Digital results minus the offset of offset-encoded weights. */
static void digital_finish(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    for (int t = 0; t < tile->nt; t++) {
        double xsum = 0;
        for (int b = 0; b < mat->nb; b++) xsum += tile->xsum[(size_t)t * mat->nb + b];
        double *out = tile->acc + (size_t)(tile->t0 + t) * mat->m + tile->c0;
        for (int c = 0; c < tile->width; c++)
            out[c] = tile->y[(size_t)t * PIM_GROUP + c] - (double)mat->offset * xsum;
    }
}

/* CASCADE: the row blocks' partial sums of a column added in analog, one
 * conversion per column per cycle; the converter's full scale grows with
 * the blocks summed (same resolution). */
static void cascade_reduce(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    int nb = mat->nb;
    double step =
        (tile->adc_signed ? plan->step_signed[tile->s] : plan->step_unsigned[tile->s]) * nb;
    struct pim_adc adc = pim_adc_make(plan->dev->adc_bits, step, tile->adc_signed);
    double top = mat->levels - 1, w = tile->weight;
    double sum[PIM_GROUP];
    for (int t = 0; t < tile->nt; t++) {
        memset(sum, 0, sizeof sum);
        for (int b = 0; b < nb; b++) {
            const float *v = tile->p + ((size_t)t * nb + b) * PIM_GROUP;
            const uint8_t *flip = pim_tile_flips(plan, tile, b);
            double inverted = top * tile->dsum[(size_t)t * nb + b];
            for (int c = 0; c < PIM_GROUP; c++) sum[c] += flip[c] ? inverted - v[c] : v[c];
        }
        double *y = tile->y + (size_t)t * PIM_GROUP;
        for (int c = 0; c < PIM_GROUP; c++) y[c] += w * pim_adc_convert(&adc, sum[c]);
    }
}

/* Neural-PIM: shift-and-add over cycles and slices in the analog domain. */
static void npim_reduce(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    int nb = mat->nb;
    double top = mat->levels - 1, w = tile->weight;
    for (int t = 0; t < tile->nt; t++)
        for (int b = 0; b < nb; b++) {
            const float *v = tile->p + ((size_t)t * nb + b) * PIM_GROUP;
            double *a = tile->analog + ((size_t)t * nb + b) * PIM_GROUP;
            const uint8_t *flip = pim_tile_flips(plan, tile, b);
            double inverted = top * tile->dsum[(size_t)t * nb + b];
            for (int c = 0; c < PIM_GROUP; c++) a[c] += w * (flip[c] ? inverted - v[c] : v[c]);
        }
}

/* One conversion per (column, row block) through the S+A/ADC transfer
 * function: gain mismatch, noise, and a bipolar converter whose range is a
 * fraction of the column block's worst case; the offset of offset-encoded
 * weights is removed in analog first. Row blocks are added digitally. */
static void npim_finish(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    const struct pim_device *dev = plan->dev;
    int nb = mat->nb, bits = dev->adc_bits;
    size_t width = (size_t)mat->groups * PIM_GROUP;
    double max_code = bits > 1 ? ldexp(1.0, bits - 1) - 1 : 1;
    struct pim_adc adc = pim_adc_make(bits, 1, true);
    for (int t = 0; t < tile->nt; t++) {
        double *y = tile->y + (size_t)t * PIM_GROUP;
        uint64_t key = pim_key(plan->noise_key, (uint64_t)(tile->t0 + t), PIM_MAX_CYCLES + 1, 0);
        for (int b = 0; b < nb; b++) {
            const double *a = tile->analog + ((size_t)t * nb + b) * PIM_GROUP;
            const double *fs = mat->npim_fs + (size_t)b * width + tile->c0;
            const float *gain = mat->npim_gain + (size_t)b * width + tile->c0;
            double offset = (double)mat->offset * tile->xsum[(size_t)t * nb + b];
            if (dev->npim_sa_noise > 0)
                pim_rng_normal(key, (uint64_t)b * width + tile->c0, tile->noise, PIM_GROUP);
            for (int c = 0; c < PIM_GROUP; c++) {
                double v = (a[c] - offset) * gain[c];
                if (dev->npim_sa_noise > 0) v += dev->npim_sa_noise * fs[c] * tile->noise[c];
                if (fs[c] > 0 && bits > 0) {
                    adc.step = fs[c] / max_code;
                    adc.inv_step = max_code / fs[c];
                    v = pim_adc_convert(&adc, v);
                }
                y[c] += v;
            }
        }
        double *out = tile->acc + (size_t)(tile->t0 + t) * mat->m + tile->c0;
        for (int c = 0; c < tile->width; c++) out[c] = y[c];
    }
}

/* Calibration: records the largest |column value| per slice and polarity
 * of the cycle, converts nothing. */
static void calibrate_reduce(const struct pim_vmm_plan *plan, void *arg)
{
    struct pim_vmm_tile *tile = arg;
    const struct pim_matrix *mat = plan->mat;
    double largest = 0;
    for (size_t k = 0; k < (size_t)tile->nt * mat->nb * PIM_GROUP; k++)
        largest = fmax(largest, fabs(tile->p[k]));
    double *slot = &plan->calibration[2 * tile->s + tile->adc_signed];
#pragma omp critical(pim_calibration)
    *slot = fmax(*slot, largest);
}

static void calibrate_finish(const struct pim_vmm_plan *plan, void *arg)
{
    (void)plan;
    (void)arg;
}

const struct pim_dataflow pim_calibration_dataflow = {PIM_DF_ISAAC, "calibration", isaac_counts,
                                                      calibrate_reduce, calibrate_finish};

/* ---------------------------------------------------------------- registry */

static const struct pim_dataflow dataflows[PIM_DF_COUNT] = {
    [PIM_DF_ISAAC] = {PIM_DF_ISAAC, "isaac", isaac_counts, isaac_reduce, digital_finish},
    [PIM_DF_CASCADE] = {PIM_DF_CASCADE, "cascade", cascade_counts, cascade_reduce, digital_finish},
    [PIM_DF_NEURAL_PIM] = {PIM_DF_NEURAL_PIM, "neural_pim", npim_counts, npim_reduce, npim_finish},
};

const struct pim_dataflow *pim_dataflow_get(enum pim_dataflow_kind kind)
{
    return (unsigned)kind < PIM_DF_COUNT ? &dataflows[kind] : NULL;
}

const struct pim_dataflow *pim_dataflow_by_name(const char *name)
{
    for (int k = 0; k < PIM_DF_COUNT; k++)
        if (strcmp(dataflows[k].name, name) == 0) return &dataflows[k];
    return NULL;
}

void pim_dataflow_evaluate(const struct pim_device *dev, const struct pim_dataflow *df,
                           const struct pim_layer_shape *layers, int n_layers,
                           struct pim_dataflow_report *report)
{
    memset(report, 0, sizeof *report);
    report->kind = df->kind;
    uint64_t vectors = 0;
    for (int i = 0; i < n_layers; i++) {
        /* Each matrix resident on its own crossbars: no passes, no copies. */
        struct pim_device resident = *dev;
        struct pim_vmm_counts c;
        df->counts(dev, layers[i].out, layers[i].in, &c);
        resident.n_crossbars = c.crossbars > 0 ? (long)c.crossbars : 1;
        struct pim_cost layer = {0};
        pim_vmm_cost(&resident, df, layers[i].out, layers[i].in, layers[i].count, false, &layer);
        uint64_t crossbars =
            report->cost.crossbars > layer.crossbars ? report->cost.crossbars : layer.crossbars;
        uint64_t adcs = report->cost.adcs > layer.adcs ? report->cost.adcs : layer.adcs;
        double area = report->cost.area > layer.area ? report->cost.area : layer.area;
        pim_cost_add(&report->cost, &layer);
        report->cost.crossbars = crossbars;
        report->cost.adcs = adcs;
        report->cost.area = area;
        vectors += layers[i].count;
    }
    report->throughput = report->cost.latency > 0 ? (double)vectors / report->cost.latency : 0;
    report->throughput_per_mm2 = report->cost.area > 0 ? report->throughput / report->cost.area : 0;
    report->energy_per_vector = vectors > 0 ? pim_cost_energy(&report->cost) / (double)vectors : 0;
}

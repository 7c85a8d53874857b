/* device.c: the device description, its defaults and checks, and the cost
 * model every functional path reports through. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ----------------------------------------------------------------- device */

void pim_device_default(struct pim_device *dev)
{
    memset(dev, 0, sizeof *dev);
    snprintf(dev->name, sizeof dev->name, "isaac");
    dev->rows = 128;
    dev->cols = 128;
    dev->cell_bits = 2;
    dev->g_on = 1.0 / 100e3; /* R_on 100 kOhm */
    dev->on_off = 17;
    dev->n_crossbars = 168L * 12 * 8; /* ISAAC: 168 tiles x 12 IMAs x 8 crossbars */

    dev->weight_bits = 16;
    dev->input_bits = 16;
    dev->signed_mode = PIM_SIGNED_OFFSET;
    dev->dac_bits = 1;
    dev->adc_bits = 8;
    dev->adc_full_scale = 0;
    dev->adc_flip = true;

    dev->read_noise_model = PIM_READ_NOISE_PROPORTIONAL;
    dev->npim_sa_gain_error = 0.002; /* assumed: Neural-PIM's NN-S+A/ADC residual error */
    dev->npim_sa_noise = 0.001;
    dev->npim_full_scale = 0.125;

    dev->inv_bits = 8;
    dev->inv_settle_time = 500e-9; /* assumed */
    dev->inv_opamp_power = 0.1e-3; /* assumed */

    dev->t_read = 100e-9;
    dev->write_time_row = 1e-6; /* assumed: write-verify of one row */

    /* ISAAC component figures (PAPERS.md; areas from ISAAC's table) */
    dev->adc_power = 2e-3;
    dev->adc_rate = 1.28e9;
    dev->adc_area = 0.0096 / 8;
    dev->adc_ref_bits = 8;
    dev->adcs_per_crossbar = 1;
    dev->dac_power = 4e-3 / 1024;
    dev->dac_area = 0.00017 / 1024;
    dev->xbar_power = 0.3e-3;
    dev->xbar_area = 0.0002 / 8;
    dev->sa_power = 0.05e-3;
    dev->sa_area = 0.00024 / 4;
    dev->npim_sa_energy = 0.1e-12;        /* assumed */
    dev->npim_sa_area = 0.00024 / 4;      /* assumed: as a digital S+A unit */
    dev->cascade_buffer_energy = 0.2e-12; /* assumed */
    dev->edram_energy = 17.2e-12;
    dev->edram_bits = 256;
    dev->write_energy_cell = 10e-12; /* assumed: about five verify pulses */

    dev->digital_flops = 10e12; /* assumed: a 300 W GPU sustaining 10 TFLOP/s */
    dev->digital_energy_flop = 30e-12;
}

static int fail(struct pim_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct pim_error *err, const char *param, const char *fmt, ...)
{
    if (err) {
        snprintf(err->param, sizeof err->param, "device.%s", param);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

#define CHECK_INT(field, lo, hi)                                                                   \
    do {                                                                                           \
        if (dev->field < (lo) || dev->field > (hi))                                                \
            return fail(err, #field, #field " must be in [%d, %d], got %d", (int)(lo), (int)(hi),  \
                        (int)dev->field);                                                          \
    } while (0)

/* Non-negative and finite, and at most hi. */
#define CHECK_REAL(field, hi)                                                                      \
    do {                                                                                           \
        if (!isfinite(dev->field) || dev->field < 0 || dev->field > (hi))                          \
            return fail(err, #field, #field " must be finite, in [0, %g]", (double)(hi));          \
    } while (0)

int pim_device_validate(const struct pim_device *dev, struct pim_error *err)
{
    CHECK_INT(rows, 1, 4096);
    CHECK_INT(cols, 1, 4096);
    CHECK_INT(cell_bits, 1, 7);
    if (!isfinite(dev->g_on) || dev->g_on <= 0) return fail(err, "g_on", "g_on must be > 0");
    if (!isfinite(dev->on_off) || dev->on_off <= 1)
        return fail(err, "on_off", "on_off must be > 1");
    if (dev->n_crossbars < 1 || dev->n_crossbars > (1L << 40))
        return fail(err, "n_crossbars", "n_crossbars must be in [1, 2^40]");
    CHECK_INT(weight_bits, 2, 32);
    CHECK_INT(input_bits, 2, 32);
    if (dev->signed_mode != PIM_SIGNED_OFFSET && dev->signed_mode != PIM_SIGNED_DIFFERENTIAL)
        return fail(err, "signed_mode", "signed_mode must be offset or differential");
    CHECK_INT(dac_bits, 1, 8);
    /* Digits must fit int8: unsigned digits of up to 7 bits, or one signed digit. */
    if (dev->dac_bits == 8 && dev->input_bits > 8)
        return fail(err, "dac_bits", "an 8-bit DAC needs input_bits <= 8 (one signed digit)");
    CHECK_INT(adc_bits, 0, 24);
    CHECK_REAL(adc_full_scale, 1e12);
    if (pim_device_weight_slices(dev) > PIM_MAX_SLICES)
        return fail(err, "weight_bits", "too many weight slices");
    CHECK_REAL(prog_noise, 10);
    CHECK_REAL(read_noise, 10);
    if (dev->read_noise_model != PIM_READ_NOISE_PROPORTIONAL &&
        dev->read_noise_model != PIM_READ_NOISE_ADDITIVE)
        return fail(err, "read_noise_model", "read_noise_model must be proportional or additive");
    CHECK_REAL(stuck_on_rate, 1);
    CHECK_REAL(stuck_off_rate, 1);
    if (dev->stuck_on_rate + dev->stuck_off_rate > 1)
        return fail(err, "stuck_on_rate", "stuck_on_rate + stuck_off_rate must be <= 1");
    CHECK_REAL(drift_nu, 1);
    CHECK_REAL(drift_nu_std, 1);
    CHECK_REAL(drift_time, 1e12);
    CHECK_REAL(npim_sa_gain_error, 1);
    CHECK_REAL(npim_sa_noise, 1);
    if (!isfinite(dev->npim_full_scale) || dev->npim_full_scale <= 0 || dev->npim_full_scale > 1)
        return fail(err, "npim_full_scale", "npim_full_scale must be in (0, 1]");
    CHECK_INT(inv_bits, 2, 16);
    CHECK_REAL(inv_settle_time, 1);
    CHECK_REAL(inv_opamp_power, 1);
    if (!isfinite(dev->t_read) || dev->t_read <= 0 || dev->t_read > 1)
        return fail(err, "t_read", "t_read must be in (0, 1] seconds");
    CHECK_REAL(write_time_row, 1);
    CHECK_REAL(adc_power, 1e3);
    if (!isfinite(dev->adc_rate) || dev->adc_rate <= 0 || dev->adc_rate > 1e13)
        return fail(err, "adc_rate", "adc_rate must be in (0, 1e13] per second");
    CHECK_REAL(adc_area, 1e3);
    CHECK_INT(adc_ref_bits, 1, 24);
    CHECK_INT(adcs_per_crossbar, 1, 4096);
    CHECK_REAL(dac_power, 1e3);
    CHECK_REAL(dac_area, 1e3);
    CHECK_REAL(xbar_power, 1e3);
    CHECK_REAL(xbar_area, 1e3);
    CHECK_REAL(sa_power, 1e3);
    CHECK_REAL(sa_area, 1e3);
    CHECK_REAL(npim_sa_energy, 1);
    CHECK_REAL(npim_sa_area, 1e3);
    CHECK_REAL(cascade_buffer_energy, 1);
    CHECK_REAL(edram_energy, 1);
    if (!isfinite(dev->edram_bits) || dev->edram_bits < 1 || dev->edram_bits > 1e6)
        return fail(err, "edram_bits", "edram_bits must be in [1, 1e6]");
    CHECK_REAL(write_energy_cell, 1);
    if (!isfinite(dev->digital_flops) || dev->digital_flops <= 0 || dev->digital_flops > 1e20)
        return fail(err, "digital_flops", "digital_flops must be in (0, 1e20]");
    CHECK_REAL(digital_energy_flop, 1);
    return 0;
}

bool pim_device_cells_ideal(const struct pim_device *dev)
{
    return dev->prog_noise == 0 && dev->read_noise == 0 && dev->stuck_on_rate == 0 &&
           dev->stuck_off_rate == 0 &&
           (dev->drift_time <= 1 || dev->drift_nu + dev->drift_nu_std == 0);
}

int pim_device_weight_slices(const struct pim_device *dev)
{
    int magnitude_bits =
        dev->signed_mode == PIM_SIGNED_OFFSET ? dev->weight_bits : dev->weight_bits - 1;
    return pim_ceil_div(magnitude_bits, dev->cell_bits);
}

int pim_device_input_cycles(const struct pim_device *dev)
{
    return pim_ceil_div(dev->input_bits, dev->dac_bits);
}

double pim_device_adc_energy(const struct pim_device *dev)
{
    /* Converter energy doubles per bit (Walden figure of merit). */
    int bits = dev->adc_bits > 0 ? dev->adc_bits : dev->adc_ref_bits;
    return dev->adc_power / dev->adc_rate * ldexp(1.0, bits - dev->adc_ref_bits);
}

/* ------------------------------------------------------------------- cost */

static const char *const energy_part_names[PIM_E_COUNT] = {
    [PIM_E_CROSSBAR] = "crossbar",
    [PIM_E_DAC] = "dac",
    [PIM_E_ADC] = "adc",
    [PIM_E_SHIFT_ADD] = "shift_add",
    [PIM_E_ANALOG_SA] = "analog_shift_add",
    [PIM_E_ANALOG_BUFFER] = "analog_buffer",
    [PIM_E_BUFFER] = "buffer",
    [PIM_E_WRITE] = "write",
    [PIM_E_INV] = "inv",
    [PIM_E_DIGITAL] = "digital",
};

const char *pim_energy_part_name(enum pim_energy_part part)
{
    return (unsigned)part < PIM_E_COUNT ? energy_part_names[part] : NULL;
}

double pim_cost_energy(const struct pim_cost *cost)
{
    double total = 0;
    for (int i = 0; i < PIM_E_COUNT; i++) total += cost->energy[i];
    return total;
}

void pim_cost_add(struct pim_cost *dst, const struct pim_cost *src)
{
    dst->cycles += src->cycles;
    dst->latency += src->latency;
    for (int i = 0; i < PIM_E_COUNT; i++) dst->energy[i] += src->energy[i];
    dst->adc_conversions += src->adc_conversions;
    dst->dac_conversions += src->dac_conversions;
    dst->crossbar_reads += src->crossbar_reads;
    dst->shift_adds += src->shift_adds;
    dst->analog_ops += src->analog_ops;
    dst->cell_writes += src->cell_writes;
    dst->inv_solves += src->inv_solves;
    dst->crossbars += src->crossbars;
    if (src->replicas > dst->replicas) dst->replicas = src->replicas;
    dst->adcs += src->adcs;
    dst->area += src->area;
}

/* Crossbars the whole matrix needs at once, and the passes the device takes
 * when it has fewer. */
static uint64_t passes_for(const struct pim_device *dev, uint64_t crossbars)
{
    return crossbars <= (uint64_t)dev->n_crossbars
               ? 1
               : (crossbars + (uint64_t)dev->n_crossbars - 1) / (uint64_t)dev->n_crossbars;
}

void pim_cost_add_program(const struct pim_device *dev, uint64_t cells, uint64_t crossbars,
                          struct pim_cost *cost)
{
    cost->cell_writes += cells;
    cost->energy[PIM_E_WRITE] += (double)cells * dev->write_energy_cell;
    /* Crossbars are written in parallel, each row by row. */
    cost->latency += dev->write_time_row * dev->rows * (double)passes_for(dev, crossbars);
}

void pim_cost_add_digital(const struct pim_device *dev, double flops, struct pim_cost *cost)
{
    cost->energy[PIM_E_DIGITAL] += flops * dev->digital_energy_flop;
    cost->latency += flops / dev->digital_flops;
}

void pim_cost_add_reads(const struct pim_device *dev, const struct pim_dataflow *df,
                        const struct pim_vmm_counts *c, int m, int n, uint64_t vectors,
                        struct pim_cost *cost)
{
    double v = (double)vectors;
    uint64_t passes = passes_for(dev, c->crossbars);
    cost->adc_conversions += c->adc_conversions * vectors;
    cost->dac_conversions += c->dac_conversions * vectors;
    cost->crossbar_reads += c->crossbar_reads * vectors;
    cost->shift_adds += c->shift_adds * vectors;
    cost->analog_ops += c->analog_ops * vectors;

    cost->energy[PIM_E_CROSSBAR] += v * (double)c->crossbar_reads * dev->xbar_power * dev->t_read;
    cost->energy[PIM_E_DAC] += v * (double)c->dac_conversions * dev->dac_power * dev->t_read;
    cost->energy[PIM_E_ADC] += v * (double)c->adc_conversions * pim_device_adc_energy(dev);
    cost->energy[PIM_E_SHIFT_ADD] += v * (double)c->shift_adds * dev->sa_power / dev->adc_rate;
    if (df->kind == PIM_DF_NEURAL_PIM)
        cost->energy[PIM_E_ANALOG_SA] += v * (double)c->analog_ops * dev->npim_sa_energy;
    if (df->kind == PIM_DF_CASCADE)
        cost->energy[PIM_E_ANALOG_BUFFER] += v * (double)c->analog_ops * dev->cascade_buffer_energy;
    /* Inputs read from and outputs written to the eDRAM buffers. */
    double bits = (double)n * dev->input_bits + (double)m * dev->input_bits;
    cost->energy[PIM_E_BUFFER] += v * ceil(bits / dev->edram_bits) * dev->edram_energy;

    /* A full pipeline: one vector enters every `cycles` read cycles; the
     * device runs the passes one after another, rewriting the cells. A
     * matrix that fits several times takes vectors on each copy at once. */
    uint64_t replicas =
        passes > 1 || c->crossbars == 0 ? 1 : (uint64_t)dev->n_crossbars / c->crossbars;
    if (replicas > vectors) replicas = vectors;
    if (replicas < 1) replicas = 1;
    uint64_t cycles = ((vectors + replicas - 1) / replicas * c->cycles + c->depth) * passes;
    cost->cycles += cycles;
    cost->latency += (double)cycles * dev->t_read;
    if (passes > 1) {
        uint64_t cells = (uint64_t)m * (uint64_t)n * (uint64_t)c->weight_slices *
                         (dev->signed_mode == PIM_SIGNED_DIFFERENTIAL ? 2 : 1);
        pim_cost_add_program(dev, cells, c->crossbars, cost);
    }

    /* Hardware to keep pace: ADCs for the conversions of one cycle. */
    uint64_t mapped =
        c->crossbars < (uint64_t)dev->n_crossbars ? c->crossbars : (uint64_t)dev->n_crossbars;
    double per_cycle = (double)c->adc_conversions / (double)c->input_cycles / (double)passes;
    uint64_t adcs = (uint64_t)ceil(per_cycle / (dev->adc_rate * dev->t_read)) * replicas;
    cost->crossbars += mapped;
    if (replicas > cost->replicas) cost->replicas = replicas;
    cost->adcs += adcs;
    cost->area +=
        (double)(mapped * replicas) * (dev->xbar_area + dev->rows * dev->dac_area) +
        (double)adcs * (dev->adc_area + dev->sa_area) +
        (df->kind == PIM_DF_NEURAL_PIM ? (double)(mapped * replicas) * dev->npim_sa_area : 0);
}

void pim_vmm_cost(const struct pim_device *dev, const struct pim_dataflow *df, int m, int n,
                  uint64_t vectors, bool program, struct pim_cost *cost)
{
    struct pim_vmm_counts c;
    df->counts(dev, m, n, &c);
    pim_cost_add_reads(dev, df, &c, m, n, vectors, cost);
    if (program) {
        uint64_t cells = (uint64_t)m * (uint64_t)n * (uint64_t)c.weight_slices *
                         (dev->signed_mode == PIM_SIGNED_DIFFERENTIAL ? 2 : 1);
        pim_cost_add_program(dev, cells, c.crossbars, cost);
    }
}

/* ------------------------------------------------------------------ misc */

double pim_rel_l2(const double *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

double pim_rel_l2_f(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return sqrt(num / den);
}

void pim_ctx_init(struct pim_ctx *ctx, uint64_t seed)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->seed = seed;
}

bool pim_ctx_cancelled(const struct pim_ctx *ctx)
{
    return ctx->cancel && atomic_load_explicit(ctx->cancel, memory_order_relaxed);
}

/* Tests for pim/: kernels against their scalar reference, the random
 * streams, the bit-sliced product (exact on ideal devices, each
 * non-ideality moving the error the right way, reproducible by seed) and
 * the A/D counts of the dataflows against PAPERS.md's formulas. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A quantiser's round trip is within half a step. */
#define QUANT_ROUND_TRIP_STEPS 0.5
/* SIMD float sums against the scalar order. */
#define KERNEL_F32_REL_TOL 1e-5
/* SIMD normals against libm Box-Muller. */
#define NORMAL_ABS_TOL 2e-5

static const int awkward[] = {1, 31, 32, 33, 127, 129};

static void random_i32(struct util_rng *rng, int32_t *x, size_t n, int bits)
{
    int64_t max = ((int64_t)1 << (bits - 1)) - 1;
    for (size_t i = 0; i < n; i++)
        x[i] = (int32_t)((int64_t)(util_rng_next(rng) % (uint64_t)(2 * max + 1)) - max);
}

static void exact_product(const int32_t *w, const int32_t *x, int m, int n, int batch, double *out)
{
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            int64_t s = 0;
            for (int k = 0; k < n; k++) s += (int64_t)w[(size_t)i * n + k] * x[(size_t)t * n + k];
            out[(size_t)t * m + i] = (double)s;
        }
}

static struct pim_device ideal_device(void)
{
    struct pim_device dev;
    pim_device_default(&dev);
    dev.npim_sa_gain_error = 0;
    dev.npim_sa_noise = 0;
    return dev;
}

/* ------------------------------------------------------------- kernels */

Test(pim_kernels, simd_matches_scalar_on_awkward_sizes)
{
    struct util_rng rng;
    util_rng_seed(&rng, 1);
    const int nts[] = {1, 2, 3, 4, 5, 7, 9};
    const int nbs[] = {1, 2, 3};
    const int r4s[] = {4, 32, 128, 132};
    for (int isa = PIM_ISA_AVX2; isa < PIM_ISA_COUNT; isa++) {
        if (!pim_isa_available(isa)) {
            fprintf(stderr, "skipped: PIM kernel set %d's checks (this CPU has: %s)\n", isa,
                    util_cpu_flags_string());
            continue;
        }
        const struct pim_kernels *k = pim_kernels_for(isa);
        for (size_t a = 0; a < 7; a++)
            for (size_t b = 0; b < 3; b++)
                for (size_t c = 0; c < 4; c++) {
                    int nt = nts[a], nb = nbs[b], r4 = r4s[c], ld = nb * r4 + 4;
                    size_t cells = (size_t)nb * r4 * PIM_GROUP, outs = (size_t)nt * nb * PIM_GROUP;
                    uint8_t *lv = util_xmalloc(cells);
                    int8_t *d8 = util_xmalloc((size_t)nt * ld);
                    float *g = util_xmalloc(cells * sizeof(float)),
                          *df = util_xmalloc((size_t)nt * ld * sizeof(float));
                    float *p0 = util_xmalloc(outs * 4), *p1 = util_xmalloc(outs * 4);
                    float *q0 = util_xmalloc(outs * 4), *q1 = util_xmalloc(outs * 4);
                    for (size_t i = 0; i < cells; i++) {
                        lv[i] = (uint8_t)(util_rng_next(&rng) % 128);
                        g[i] = (float)(util_rng_uniform(&rng) * 3.2 - 0.1);
                    }
                    for (size_t i = 0; i < (size_t)nt * ld; i++) {
                        d8[i] = (int8_t)(util_rng_next(&rng) % 256 - 128);
                        df[i] = d8[i];
                    }
                    pim_kernel_i8_scalar(lv, d8, ld, nt, nb, r4, p0);
                    k->i8(lv, d8, ld, nt, nb, r4, p1);
                    for (size_t i = 0; i < outs; i++)
                        cr_assert_eq(p0[i], p1[i], "%s i8 nt=%d nb=%d r4=%d at %zu",
                                     pim_isa_name(isa), nt, nb, r4, i);
                    pim_kernel_f32_scalar(g, df, ld, nt, nb, r4, 0.19f, p0, q0);
                    k->f32(g, df, ld, nt, nb, r4, 0.19f, p1, q1);
                    for (size_t i = 0; i < outs; i++) {
                        cr_assert(fabsf(p0[i] - p1[i]) <=
                                      KERNEL_F32_REL_TOL * (1 + fabsf(p0[i])) * r4,
                                  "%s f32 p nt=%d nb=%d r4=%d: %g vs %g", pim_isa_name(isa), nt, nb,
                                  r4, p0[i], p1[i]);
                        cr_assert(fabsf(q0[i] - q1[i]) <= KERNEL_F32_REL_TOL * (1 + q0[i]),
                                  "%s f32 q: %g vs %g", pim_isa_name(isa), q0[i], q1[i]);
                    }
                    k->f32(g, df, ld, nt, nb, r4, 0.19f, p1, NULL);
                    for (size_t i = 0; i < outs; i++)
                        cr_assert(fabsf(p0[i] - p1[i]) <=
                                  KERNEL_F32_REL_TOL * (1 + fabsf(p0[i])) * r4);
                    free(lv), free(d8), free(g), free(df), free(p0), free(p1), free(q0), free(q1);
                }
    }
}

Test(pim_kernels, unpack_matches_scalar_for_every_packing)
{
    struct util_rng rng;
    util_rng_seed(&rng, 2);
    const size_t chunks[] = {1, 3, 33, 129};
    for (int isa = PIM_ISA_AVX2; isa < PIM_ISA_COUNT; isa++) {
        if (!pim_isa_available(isa)) continue;
        for (int pack = 2; pack <= 4; pack += 2)
            for (size_t c = 0; c < 4; c++) {
                size_t n = chunks[c] * PIM_GROUP * 4;
                uint8_t *in = util_xmalloc(n), *a = util_xmalloc(n * pack),
                        *b = util_xmalloc(n * pack);
                for (size_t i = 0; i < n; i++) in[i] = (uint8_t)util_rng_next(&rng);
                pim_unpack_scalar(in, pack, chunks[c], a);
                pim_kernels_for(isa)->unpack(in, pack, chunks[c], b);
                cr_assert_arr_eq(a, b, n * pack, "%s pack %d chunks %zu", pim_isa_name(isa), pack,
                                 chunks[c]);
                for (size_t i = 0; i < n * pack; i++) cr_assert_lt(a[i], 1 << (8 / pack));
                free(in), free(a), free(b);
            }
    }
}

/* ---------------------------------------------------------------- rng */

Test(pim_rng, simd_normals_match_reference_at_any_offset)
{
    float ref[300], got[300];
    for (int isa = PIM_ISA_AVX2; isa < PIM_ISA_COUNT; isa++) {
        if (!pim_isa_available(isa)) continue;
        for (size_t a = 0; a < sizeof awkward / sizeof *awkward; a++) {
            uint64_t first = (uint64_t)awkward[a] * 7;
            size_t n = (size_t)awkward[a] + 100;
            pim_rng_normal_scalar(0xabcdef, first, ref, n);
            pim_rng_normal_with(isa, 0xabcdef, first, got, n);
            for (size_t i = 0; i < n; i++)
                cr_assert(fabsf(ref[i] - got[i]) <= NORMAL_ABS_TOL, "%s sample %zu: %g vs %g",
                          pim_isa_name(isa), first + i, ref[i], got[i]);
        }
    }
}

Test(pim_rng, a_stream_is_the_same_however_it_is_split)
{
    float whole[1000], part[1000];
    pim_rng_normal(99, 5, whole, 1000);
    for (size_t at = 0; at < 1000;) {
        size_t n = 1 + (at * 37) % 61;
        if (n > 1000 - at) n = 1000 - at;
        pim_rng_normal(99, 5 + at, part + at, n);
        at += n;
    }
    cr_assert_arr_eq(whole, part, sizeof whole);
}

Test(pim_rng, normals_have_unit_variance_and_keys_differ)
{
    size_t n = 1 << 18;
    float *z = util_xmalloc(n * sizeof(float)), *w = util_xmalloc(n * sizeof(float));
    pim_rng_normal(pim_key(1, 2, 3, 4), 0, z, n);
    pim_rng_normal(pim_key(1, 2, 3, 5), 0, w, n);
    double sum = 0, sum2 = 0, cross = 0;
    for (size_t i = 0; i < n; i++) {
        sum += z[i];
        sum2 += (double)z[i] * z[i];
        cross += (double)z[i] * w[i];
    }
    cr_assert(fabs(sum / n) < 0.01, "mean %g", sum / n);
    cr_assert(fabs(sum2 / n - 1) < 0.01, "variance %g", sum2 / n);
    cr_assert(fabs(cross / n) < 0.01, "correlation of two keys %g", cross / n);
    free(z);
    free(w);
}

/* ---------------------------------------------------------- quantiser */

Test(pim_quantize, round_trip_within_half_a_step)
{
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    float x[257];
    int32_t q[257];
    for (int bits = 2; bits <= 32; bits += 5) {
        for (int i = 0; i < 257; i++) x[i] = (float)(util_rng_normal(&rng) * 3);
        double s = pim_quantize(x, 257, bits, q);
        for (int i = 0; i < 257; i++) {
            cr_assert(fabs(x[i] - q[i] * s) <= QUANT_ROUND_TRIP_STEPS * s * (1 + 1e-9), "bits %d",
                      bits);
            cr_assert(llabs((long long)q[i]) <= (1LL << (bits - 1)) - 1);
        }
    }
    memset(x, 0, sizeof x);
    cr_assert_eq(pim_quantize(x, 257, 8, q), 0);
    cr_assert_eq(q[100], 0);
}

/* ------------------------------------------------------------ exactness */

/* Runs wq x xq through every dataflow on dev and checks the result is the
 * exact integer product. */
static void check_exact(const struct pim_device *dev, int m, int n, int batch, uint64_t seed,
                        bool all_dataflows)
{
    struct util_rng rng;
    util_rng_seed(&rng, seed);
    int32_t *w = util_xmalloc((size_t)m * n * 4), *x = util_xmalloc((size_t)batch * n * 4);
    double *want = util_xmalloc((size_t)batch * m * 8), *got = util_xmalloc((size_t)batch * m * 8);
    random_i32(&rng, w, (size_t)m * n, dev->weight_bits);
    random_i32(&rng, x, (size_t)batch * n, dev->input_bits);
    exact_product(w, x, m, n, batch, want);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, seed);
    pim_matrix *mat;
    cr_assert_eq(pim_matrix_program_q(dev, &ctx, w, m, n, 1.0, &mat), 0);
    /* The bit-sliced engine, and the shortcut where it is proven exact. */
    for (int shortcut = 0; shortcut < 2; shortcut++)
        for (int k = 0; k < (all_dataflows ? PIM_DF_COUNT : 1); k++) {
            ctx.no_exact_shortcut = !shortcut;
            cr_assert_eq(pim_matrix_vmm_q(mat, pim_dataflow_get(k), &ctx, x, batch, got, NULL), 0);
            for (size_t i = 0; i < (size_t)batch * m; i++)
                cr_assert_eq(got[i], want[i],
                             "%s m=%d n=%d batch=%d dac=%d cells=%d %s: %.17g vs %.17g at %zu",
                             pim_dataflow_get(k)->name, m, n, batch, dev->dac_bits, dev->cell_bits,
                             dev->signed_mode == PIM_SIGNED_OFFSET ? "offset" : "differential",
                             got[i], want[i], i);
        }
    pim_matrix_free(mat);
    free(w), free(x), free(want), free(got);
}

Test(pim_vmm, isaac_default_device_is_exact_thanks_to_column_flipping)
{
    struct pim_device dev = ideal_device();
    for (size_t a = 0; a < 6; a++)
        check_exact(&dev, awkward[a], awkward[5 - a] + 128, a % 2 ? 3 : 1, a, false);
    check_exact(&dev, 40, 300, 70, 9, false); /* more vectors than a tile */
}

Test(pim_vmm, ideal_converters_are_exact_for_every_dataflow_and_encoding)
{
    struct pim_device dev = ideal_device();
    dev.adc_bits = 0;
    const int dacs[] = {1, 2, 3, 7};
    const int cells[] = {1, 2, 3, 7};
    for (int mode = 0; mode < 2; mode++)
        for (int d = 0; d < 4; d++) {
            dev.signed_mode = mode ? PIM_SIGNED_DIFFERENTIAL : PIM_SIGNED_OFFSET;
            dev.dac_bits = dacs[d];
            dev.cell_bits = cells[3 - d];
            dev.weight_bits = 9 + d;
            dev.input_bits = 8 + 2 * d;
            check_exact(&dev, awkward[d + 1], awkward[d + 2] + 5, 1 + d, 100 + d, true);
        }
    dev.dac_bits = 8; /* one signed digit */
    dev.input_bits = 8;
    check_exact(&dev, 33, 200, 5, 7, true);
    dev.rows = 61; /* rows not a multiple of 4 */
    dev.cols = 50;
    check_exact(&dev, 31, 129, 2, 8, true);
}

Test(pim_vmm, unflipped_dense_columns_clip_the_adc)
{
    /* All weights at the top of the range: slice sums reach 3 x 128 > 255. */
    struct pim_device dev = ideal_device();
    int m = 4, n = 128;
    int32_t *w = util_xmalloc((size_t)m * n * 4), x[128];
    for (int i = 0; i < m * n; i++) w[i] = 32767;
    for (int i = 0; i < n; i++) x[i] = 32767;
    double want[4], got[4];
    exact_product(w, x, m, n, 1, want);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    for (int flip = 0; flip < 2; flip++) {
        dev.adc_flip = flip;
        pim_matrix *mat;
        cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, m, n, 1, &mat), 0);
        cr_assert_eq(pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_ISAAC)), flip != 0);
        ctx.no_exact_shortcut = true;
        cr_assert_eq(pim_matrix_vmm_q(mat, pim_dataflow_get(PIM_DF_ISAAC), &ctx, x, 1, got, NULL),
                     0);
        if (flip)
            cr_assert_eq(got[0], want[0]);
        else
            cr_assert_lt(got[0], want[0] * 0.99, "clipping must lose the top: %g vs %g", got[0],
                         want[0]);
        pim_matrix_free(mat);
    }
    free(w);
}

Test(pim_vmm, exactness_is_claimed_only_where_the_converters_cannot_round_or_clip)
{
    struct pim_device dev = ideal_device();
    int32_t w[256 * 4] = {0};
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    pim_matrix *mat;
    /* 256 inputs: two row blocks. */
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 4, 256, 1, &mat), 0);
    cr_assert(pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_ISAAC)));
    cr_assert(!pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_CASCADE)));
    cr_assert(!pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_NEURAL_PIM)));
    pim_matrix_free(mat);
    dev.dac_bits = 2; /* digits up to 3: 192 x 3 > 255 */
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 4, 256, 1, &mat), 0);
    cr_assert(!pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_ISAAC)));
    pim_matrix_free(mat);
    dev.adc_bits = 0;
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 4, 256, 1, &mat), 0);
    cr_assert(pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_CASCADE)));
    cr_assert(pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_NEURAL_PIM)));
    pim_matrix_free(mat);
    dev.read_noise = 0.01;
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 4, 256, 1, &mat), 0);
    cr_assert(!pim_matrix_product_exact(mat, pim_dataflow_get(PIM_DF_ISAAC)));
    pim_matrix_free(mat);
}

Test(pim_vmm, rejects_out_of_range_operands)
{
    struct pim_device dev = ideal_device();
    dev.weight_bits = 8;
    int32_t w[4] = {1, 2, 128, 4}, x[2] = {1, 1};
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    pim_matrix *mat;
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 2, 2, 1, &mat), -EINVAL);
    w[2] = 127;
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, 2, 2, 1, &mat), 0);
    double y[2];
    x[1] = 40000; /* input_bits 16 */
    cr_assert_eq(pim_matrix_vmm_q(mat, pim_dataflow_get(PIM_DF_ISAAC), &ctx, x, 1, y, NULL),
                 -EINVAL);
    pim_matrix_free(mat);
}

/* ------------------------------------------------------- non-idealities */

/* Relative error of the float product through dev against float64 W x. */
static double product_error(const struct pim_device *dev, enum pim_dataflow_kind kind,
                            uint64_t seed, float *out)
{
    int m = 64, n = 256, batch = 8;
    struct util_rng rng;
    util_rng_seed(&rng, 42); /* the same operands for every device */
    float *w = util_xmalloc((size_t)m * n * 4), *x = util_xmalloc((size_t)batch * n * 4);
    float *y = out ? out : util_xmalloc((size_t)batch * m * 4);
    double *want = util_xmalloc((size_t)batch * m * 8);
    for (int i = 0; i < m * n; i++) w[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < batch * n; i++) x[i] = (float)util_rng_normal(&rng);
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += (double)w[i * n + k] * x[t * n + k];
            want[t * m + i] = s;
        }
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, seed);
    struct pim_cost cost = {0};
    cr_assert_eq(pim_linear(dev, pim_dataflow_get(kind), &ctx, x, batch, w, m, n, y, &cost), 0);
    double err = pim_rel_l2_f(y, want, (size_t)batch * m);
    free(w), free(x), free(want);
    if (!out) free(y);
    return err;
}

/* Error rises with each step of `field` through `values`. */
static void check_monotonic(const char *what, double *field, const double *values, int count,
                            struct pim_device *dev)
{
    double last = -1;
    for (int i = 0; i < count; i++) {
        *field = values[i];
        double err = product_error(dev, PIM_DF_ISAAC, 5, NULL);
        cr_assert_gt(err, last, "%s = %g: error %g not above %g", what, values[i], err, last);
        last = err;
    }
}

Test(pim_vmm, each_non_ideality_raises_the_error)
{
    struct pim_device dev = ideal_device();
    double base = product_error(&dev, PIM_DF_ISAAC, 5, NULL);
    cr_assert_lt(base, 1e-4, "16-bit ideal product error %g", base);

    /* Small noise is rounded away by the exact ADC, so steps start above it. */
    const double noise[] = {0, 0.02, 0.05, 0.15};
    check_monotonic("prog_noise", &dev.prog_noise, noise, 4, &dev);
    dev.prog_noise = 0;
    check_monotonic("read_noise", &dev.read_noise, noise, 4, &dev);
    dev.read_noise_model = PIM_READ_NOISE_ADDITIVE;
    check_monotonic("read_noise additive", &dev.read_noise, noise, 4, &dev);
    dev.read_noise = 0;
    const double rates[] = {0, 0.0005, 0.005, 0.05};
    check_monotonic("stuck_on_rate", &dev.stuck_on_rate, rates, 4, &dev);
    dev.stuck_on_rate = 0;
    check_monotonic("stuck_off_rate", &dev.stuck_off_rate, rates, 4, &dev);
    dev.stuck_off_rate = 0;
    dev.drift_nu = 0.005;
    dev.drift_nu_std = 0.002;
    const double times[] = {1, 10, 1e3, 1e6};
    check_monotonic("drift_time", &dev.drift_time, times, 4, &dev);
    dev.drift_time = 0;

    /* Lower on/off ratio: more off-state current, more proportional read noise. */
    dev.read_noise = 0.01;
    dev.read_noise_model = PIM_READ_NOISE_PROPORTIONAL;
    const double on_off[] = {1000, 17, 3, 1.5};
    double last = -1;
    for (int i = 0; i < 4; i++) {
        dev.on_off = on_off[i];
        double err = product_error(&dev, PIM_DF_ISAAC, 5, NULL);
        cr_assert_gt(err, last, "on_off %g: %g", on_off[i], err);
        last = err;
    }
}

Test(pim_vmm, fewer_adc_bits_raise_the_error)
{
    struct pim_device dev = ideal_device();
    dev.weight_bits = 8;
    dev.input_bits = 8;
    dev.adc_flip = false;
    dev.adc_full_scale = 384; /* 128 rows x level 3 x digit 1 */
    double last = -1;
    for (int bits = 12; bits >= 4; bits -= 2) {
        dev.adc_bits = bits;
        double err = product_error(&dev, PIM_DF_ISAAC, 5, NULL);
        cr_assert_gt(err, last, "adc_bits %d: %g", bits, err);
        last = err;
    }
}

Test(pim_vmm, calibrated_adc_ranges_beat_the_worst_case_range)
{
    int m = 64, n = 512, batch = 8;
    struct util_rng rng;
    util_rng_seed(&rng, 4);
    float *w = util_xmalloc((size_t)m * n * 4), *x = util_xmalloc((size_t)batch * n * 4);
    float *cal = util_xmalloc((size_t)16 * n * 4), *y = util_xmalloc((size_t)batch * m * 4);
    double *want = util_xmalloc((size_t)batch * m * 8);
    for (int i = 0; i < m * n; i++) w[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < batch * n; i++) x[i] = (float)util_rng_normal(&rng);
    for (int i = 0; i < 16 * n; i++) cal[i] = (float)util_rng_normal(&rng);
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += (double)w[i * n + k] * x[t * n + k];
            want[t * m + i] = s;
        }
    struct pim_device dev = ideal_device();
    dev.weight_bits = dev.input_bits = dev.dac_bits = 8;
    dev.signed_mode = PIM_SIGNED_DIFFERENTIAL;
    dev.adc_flip = false;
    dev.adc_full_scale = 128.0 * 3 * 127; /* the worst case */
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    pim_matrix *mat;
    cr_assert_eq(pim_matrix_program(&dev, &ctx, w, m, n, &mat), 0);
    cr_assert_eq(pim_matrix_vmm(mat, pim_dataflow_get(PIM_DF_ISAAC), &ctx, x, batch, y, NULL), 0);
    double worst = pim_rel_l2_f(y, want, (size_t)batch * m);
    cr_assert_eq(pim_matrix_calibrate_adc(mat, &ctx, cal, 16), 0);
    cr_assert_eq(pim_matrix_vmm(mat, pim_dataflow_get(PIM_DF_ISAAC), &ctx, x, batch, y, NULL), 0);
    double calibrated = pim_rel_l2_f(y, want, (size_t)batch * m);
    cr_assert_lt(calibrated, worst / 4, "calibrated %g vs worst-case range %g", calibrated, worst);
    cr_assert_lt(calibrated, 0.03);
    pim_matrix_free(mat);
    free(w), free(x), free(cal), free(y), free(want);
}

Test(pim_vmm, neural_pim_converter_error_raises_the_error)
{
    struct pim_device dev = ideal_device();
    dev.weight_bits = 8;
    dev.input_bits = 8;
    dev.adc_bits = 0;
    const double sa[] = {0, 0.001, 0.01, 0.05};
    double last = -1;
    for (int i = 0; i < 4; i++) {
        dev.npim_sa_noise = sa[i];
        dev.npim_sa_gain_error = sa[i];
        double err = product_error(&dev, PIM_DF_NEURAL_PIM, 5, NULL);
        cr_assert_gt(err, last, "npim_sa %g: %g", sa[i], err);
        last = err;
    }
}

Test(pim_vmm, noise_is_reproducible_by_seed)
{
    struct pim_device dev = ideal_device();
    dev.prog_noise = 0.02;
    dev.read_noise = 0.02;
    dev.stuck_on_rate = dev.stuck_off_rate = 0.001;
    dev.drift_time = 1000;
    dev.drift_nu = 0.01;
    dev.drift_nu_std = 0.005;
    float a[512], b[512], c[512];
    double ea = product_error(&dev, PIM_DF_ISAAC, 77, a);
    double eb = product_error(&dev, PIM_DF_ISAAC, 77, b);
    double ec = product_error(&dev, PIM_DF_ISAAC, 78, c);
    cr_assert_arr_eq(a, b, sizeof a);
    cr_assert_eq(ea, eb);
    cr_assert_neq(ea, ec);
    cr_assert(memcmp(a, c, sizeof a) != 0);
}

/* ------------------------------------------------------------- counts */

Test(pim_dataflow, adc_counts_follow_the_papers_formulas)
{
    struct pim_device dev = ideal_device();
    const int shapes[][2] = {{128, 128}, {100, 300}, {513, 1000}, {1, 1}};
    for (int mode = 0; mode < 2; mode++) {
        dev.signed_mode = mode ? PIM_SIGNED_DIFFERENTIAL : PIM_SIGNED_OFFSET;
        for (int i = 0; i < 4; i++) {
            int m = shapes[i][0], n = shapes[i][1];
            uint64_t S_w = (uint64_t)pim_ceil_div(mode ? 15 : 16, 2), S_i = 16;
            uint64_t blocks = (uint64_t)pim_ceil_div(n, 128);
            uint64_t want[PIM_DF_COUNT] = {m * S_w * S_i * blocks, m * S_w * S_i, m * blocks};
            uint64_t crossbars =
                blocks * (uint64_t)pim_ceil_div((long)m * S_w * (mode ? 2 : 1), 128);
            for (int k = 0; k < PIM_DF_COUNT; k++) {
                struct pim_cost cost = {0};
                pim_vmm_cost(&dev, pim_dataflow_get(k), m, n, 3, false, &cost);
                cr_assert_eq(cost.adc_conversions, 3 * want[k], "%s %dx%d",
                             pim_dataflow_get(k)->name, m, n);
                cr_assert_eq(cost.crossbars, crossbars);
                cr_assert_eq(cost.crossbar_reads, 3 * S_i * crossbars);
            }
        }
    }
}

Test(pim_dataflow, spare_crossbars_take_vectors_in_parallel)
{
    struct pim_device dev = ideal_device();
    struct pim_cost wide = {0}, tight = {0};
    pim_vmm_cost(&dev, pim_dataflow_get(PIM_DF_ISAAC), 128, 128, 100, false, &wide);
    cr_assert_eq(wide.replicas, 100); /* 8 crossbars a copy, 16128 on the device */
    cr_assert_eq(wide.cycles, 16);
    dev.n_crossbars = 8; /* room for one copy */
    pim_vmm_cost(&dev, pim_dataflow_get(PIM_DF_ISAAC), 128, 128, 100, false, &tight);
    cr_assert_eq(tight.replicas, 1);
    cr_assert_eq(tight.cycles, 1600);
    cr_assert_float_eq(pim_cost_energy(&wide), pim_cost_energy(&tight), 1e-18);
    cr_assert_eq(wide.crossbars, tight.crossbars);
    cr_assert_gt(wide.area, tight.area);
    dev.n_crossbars = 4; /* half a copy: two passes, cells rewritten each call */
    struct pim_cost passes = {0};
    pim_vmm_cost(&dev, pim_dataflow_get(PIM_DF_ISAAC), 128, 128, 100, false, &passes);
    cr_assert_eq(passes.cycles, 3200);
    cr_assert_gt(passes.cell_writes, 0);
}

Test(pim_dataflow, functional_product_reports_the_same_counts)
{
    struct pim_device dev = ideal_device();
    int m = 70, n = 300, batch = 2;
    int32_t *w = util_xcalloc((size_t)m * n, 4), *x = util_xcalloc((size_t)batch * n, 4);
    double *y = util_xmalloc((size_t)batch * m * 8);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    pim_matrix *mat;
    cr_assert_eq(pim_matrix_program_q(&dev, &ctx, w, m, n, 1, &mat), 0);
    for (int k = 0; k < PIM_DF_COUNT; k++) {
        struct pim_cost run = {0}, model = {0};
        cr_assert_eq(pim_matrix_vmm_q(mat, pim_dataflow_get(k), &ctx, x, batch, y, &run), 0);
        pim_vmm_cost(&dev, pim_dataflow_get(k), m, n, batch, false, &model);
        cr_assert_eq(run.adc_conversions, model.adc_conversions);
        cr_assert_eq(run.dac_conversions, model.dac_conversions);
        cr_assert_eq(run.cycles, model.cycles);
        cr_assert_float_eq(pim_cost_energy(&run), pim_cost_energy(&model), 1e-18);
    }
    pim_matrix_free(mat);
    free(w), free(x), free(y);
}

Test(pim_dataflow, fewer_conversions_cost_less_adc_energy_than_isaac)
{
    struct pim_device dev = ideal_device();
    struct pim_cost c[PIM_DF_COUNT];
    for (int k = 0; k < PIM_DF_COUNT; k++) {
        memset(&c[k], 0, sizeof c[k]);
        pim_vmm_cost(&dev, pim_dataflow_get(k), 4096, 4096, 1, false, &c[k]);
    }
    cr_assert_gt(c[PIM_DF_ISAAC].energy[PIM_E_ADC], c[PIM_DF_CASCADE].energy[PIM_E_ADC]);
    cr_assert_gt(c[PIM_DF_CASCADE].energy[PIM_E_ADC], c[PIM_DF_NEURAL_PIM].energy[PIM_E_ADC]);
    cr_assert_gt(pim_cost_energy(&c[PIM_DF_ISAAC]), pim_cost_energy(&c[PIM_DF_NEURAL_PIM]));
    cr_assert_gt(c[PIM_DF_ISAAC].adcs, c[PIM_DF_NEURAL_PIM].adcs);
}

Test(pim_device, default_is_valid_and_bad_fields_are_named)
{
    struct pim_device dev;
    pim_device_default(&dev);
    struct pim_error err = {0};
    cr_assert_eq(pim_device_validate(&dev, &err), 0);
    dev.cell_bits = 9;
    cr_assert_eq(pim_device_validate(&dev, &err), -EINVAL);
    cr_assert_str_eq(err.param, "device.cell_bits");
    pim_device_default(&dev);
    dev.prog_noise = NAN;
    cr_assert_eq(pim_device_validate(&dev, &err), -EINVAL);
    cr_assert_str_eq(err.param, "device.prog_noise");
    pim_device_default(&dev);
    dev.dac_bits = 8;
    cr_assert_eq(pim_device_validate(&dev, &err), -EINVAL);
    cr_assert_str_eq(err.param, "device.dac_bits");
    cr_assert_float_eq(pim_device_adc_energy(&dev), 2e-3 / 1.28e9, 1e-20);
}

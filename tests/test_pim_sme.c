/* Tests for SME's bit-sparse mapping: the product through the squeezed,
 * packed crossbars is exact for the quantised weights, never takes more
 * crossbars than the unsqueezed mapping, and saves crossbars on sparse,
 * LLM-like weights; re-quantisation keeps at most k bits, nearest. */
#include "pim/pim_internal.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Laplacian weights (scale b) quantised per tensor to `bits`. */
static void laplacian_weights(struct util_rng *rng, int32_t *wq, size_t n, int bits, double b)
{
    float *w = util_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        double u = util_rng_uniform(rng) - 0.5;
        w[i] = (float)(-b * (u < 0 ? -1 : 1) * log(1 - 2 * fabs(u)));
    }
    pim_quantize(w, n, bits, wq);
    free(w);
}

static void check_exact(const struct pim_device *dev, const int32_t *w, int m, int n, int bits,
                        int batch, struct pim_sme_stats *st)
{
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    int32_t *x = util_xmalloc((size_t)batch * n * 4);
    int64_t xmax = ((int64_t)1 << (dev->input_bits - 1)) - 1;
    for (int i = 0; i < batch * n; i++)
        x[i] = (int32_t)((int64_t)(util_rng_next(&rng) % (2 * xmax + 1)) - xmax);
    pim_sme *sme;
    cr_assert_eq(pim_sme_map(dev, w, m, n, bits, &sme, st), 0);
    cr_assert_leq(st->crossbars_sme, st->crossbars_baseline);
    double *y = util_xmalloc((size_t)batch * m * 8);
    struct pim_ctx ctx;
    pim_ctx_init(&ctx, 1);
    struct pim_cost cost = {0};
    cr_assert_eq(pim_sme_vmm_q(sme, &ctx, x, batch, y, &cost), 0);
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < m; i++) {
            int64_t want = 0;
            for (int k = 0; k < n; k++)
                want += (int64_t)w[(size_t)i * n + k] * x[(size_t)t * n + k];
            cr_assert_eq(y[(size_t)t * m + i], (double)want,
                         "m=%d n=%d bits=%d cells=%d at (%d,%d)", m, n, bits, dev->cell_bits, t, i);
        }
    cr_assert_eq(cost.crossbar_reads,
                 (uint64_t)batch * pim_device_input_cycles(dev) * st->crossbars_sme);
    pim_sme_free(sme);
    free(x), free(y);
}

Test(pim_sme, output_is_exact_for_the_quantised_weights)
{
    struct pim_device dev;
    pim_device_default(&dev);
    const int sizes[][2] = {{1, 1}, {31, 33}, {33, 129}, {127, 300}, {200, 129}};
    struct util_rng rng;
    util_rng_seed(&rng, 1);
    for (int cells = 1; cells <= 3; cells++)
        for (int i = 0; i < 5; i++) {
            dev.cell_bits = cells;
            int m = sizes[i][0], n = sizes[i][1];
            int32_t *w = util_xmalloc((size_t)m * n * 4);
            laplacian_weights(&rng, w, (size_t)m * n, 8, 0.02);
            struct pim_sme_stats st;
            check_exact(&dev, w, m, n, 8, 3, &st);
            free(w);
        }
    dev.cell_bits = 2;
    dev.dac_bits = 3; /* wider digits through an ideal converter */
    dev.adc_bits = 0;
    int32_t w[40 * 50];
    laplacian_weights(&rng, w, 40 * 50, 12, 0.05);
    struct pim_sme_stats st;
    check_exact(&dev, w, 40, 50, 12, 2, &st);
}

Test(pim_sme, dense_weights_take_exactly_the_baseline)
{
    struct pim_device dev;
    pim_device_default(&dev);
    int m = 256, n = 256;
    int32_t *w = util_xmalloc((size_t)m * n * 4);
    for (int i = 0; i < m * n; i++)
        w[i] = (i * 7919 % 3) ? 127 : -127; /* every bit set, both signs */
    struct pim_sme_stats st;
    check_exact(&dev, w, m, n, 8, 1, &st);
    cr_assert_eq(st.crossbars_sme, st.crossbars_baseline);
    cr_assert_eq(st.crossbars_baseline, 2u * 16u); /* 2 row blocks x ceil(2*256*4 / 128) */
    free(w);
}

Test(pim_sme, llm_like_weights_release_crossbars)
{
    struct pim_device dev;
    pim_device_default(&dev);
    int m = 512, n = 512;
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    int32_t *w = util_xmalloc((size_t)m * n * 4);
    laplacian_weights(&rng, w, (size_t)m * n, 8, 0.02);
    struct pim_sme_stats st;
    check_exact(&dev, w, m, n, 8, 1, &st);
    cr_log_info("512x512 Laplacian int8: baseline %lu, offset %lu, SME %lu, bit density %.3f",
                (unsigned long)st.crossbars_baseline, (unsigned long)st.crossbars_offset,
                (unsigned long)st.crossbars_sme, st.bit_density);
    cr_assert_lt(st.crossbars_sme, st.crossbars_baseline);
    cr_assert_gt(st.zero_columns + st.zero_rows, 0);

    /* Re-quantised to fewer set bits: sparser, and still exact. */
    for (int k = 4; k >= 1; k--) {
        int32_t *r = util_xmalloc((size_t)m * n * 4);
        memcpy(r, w, (size_t)m * n * 4);
        pim_sme_requantize(r, (size_t)m * n, 8, k);
        struct pim_sme_stats sk;
        check_exact(&dev, r, m, n, 8, 1, &sk);
        cr_assert_lt(sk.bit_density, st.bit_density, "k=%d", k);
        free(r);
    }
    free(w);
}

Test(pim_sme, zero_matrix_takes_no_crossbars)
{
    struct pim_device dev;
    pim_device_default(&dev);
    int32_t w[64] = {0};
    struct pim_sme_stats st;
    check_exact(&dev, w, 8, 8, 8, 2, &st);
    cr_assert_eq(st.crossbars_sme, 0);
    cr_assert_eq(st.bit_density, 0);
}

Test(pim_sme, requantize_keeps_at_most_k_bits_and_is_nearest)
{
    int32_t all[255];
    for (int k = 1; k <= 7; k++) {
        for (int i = 0; i < 255; i++) all[i] = i - 127;
        pim_sme_requantize(all, 255, 8, k);
        for (int i = 0; i < 255; i++) {
            int v = i - 127, got = all[i];
            cr_assert_leq(__builtin_popcount((unsigned)abs(got)), k);
            cr_assert((got >= 0) == (v >= 0) || got == 0);
            /* no value with <= k bits is closer */
            for (int c = 0; c <= 127; c++)
                if (__builtin_popcount((unsigned)c) <= k)
                    cr_assert_leq(abs(abs(v) - abs(got)), abs(abs(v) - c),
                                  "v=%d k=%d got %d, %d closer", v, k, got, c);
        }
    }
}

Test(pim_sme, rejects_values_over_the_weight_bits)
{
    struct pim_device dev;
    pim_device_default(&dev);
    int32_t w[4] = {0, 128, 0, 0};
    pim_sme *sme;
    struct pim_sme_stats st;
    cr_assert_eq(pim_sme_map(&dev, w, 2, 2, 8, &sme, &st), -EINVAL);
    cr_assert_null(sme);
}

/*
 * The AMX kernel on a software model of the AMX tiles, against the scalar
 * reference: this machine has no AMX, so the kernel's logic (tile shapes,
 * padding, chunking, rescaling, tails) is tested here by compiling
 * quant/gemm_amx.c with its AMX_* operations mapped to the model below;
 * only the instructions themselves are left to bench/quant_amx_check on an
 * AMX machine. The model follows the ISA: ldtilecfg palette 1, tileloadd /
 * tilestored row by row, TDPBSSD C[m][n] += sum_k,i A[m][4k+i] * B[k][4n+i].
 */
#include "quant/quant_internal.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <float.h>
#include <immintrin.h>
#include <string.h>

struct emu_tile {
    int rows, colsb;
    uint8_t data[16][64];
};
static _Thread_local struct emu_tile emu[8];
static _Thread_local bool emu_configured;

static void emu_load_config(const void *cfg)
{
    const uint8_t *p = cfg;
    cr_assert_eq(p[0], 1, "palette 1");
    for (int t = 0; t < 8; t++) {
        uint16_t colsb;
        memcpy(&colsb, p + 16 + 2 * t, 2);
        emu[t].rows = p[48 + t];
        emu[t].colsb = colsb;
        cr_assert(emu[t].rows <= 16 && emu[t].colsb <= 64);
        memset(emu[t].data, 0, sizeof emu[t].data); /* ldtilecfg zeroes the tiles */
    }
    emu_configured = true;
}

static void emu_check(int t)
{
    cr_assert(emu_configured, "tile %d used before ldtilecfg", t);
}

static void emu_zero(int t)
{
    emu_check(t);
    memset(emu[t].data, 0, sizeof emu[t].data);
}

static void emu_load(int t, const void *base, size_t stride)
{
    emu_check(t);
    for (int r = 0; r < emu[t].rows; r++)
        memcpy(emu[t].data[r], (const uint8_t *)base + r * stride, (size_t)emu[t].colsb);
}

static void emu_store(int t, void *base, size_t stride)
{
    emu_check(t);
    for (int r = 0; r < emu[t].rows; r++)
        memcpy((uint8_t *)base + r * stride, emu[t].data[r], (size_t)emu[t].colsb);
}

static void emu_dpbssd(int c, int a, int b)
{
    emu_check(c);
    cr_assert_eq(emu[b].rows * 4, emu[a].colsb, "B rows = A bytes / 4");
    cr_assert_eq(emu[c].colsb, emu[b].colsb, "C and B have as many columns");
    for (int m = 0; m < emu[a].rows; m++)
        for (int n = 0; n < emu[c].colsb / 4; n++) {
            int32_t acc;
            memcpy(&acc, &emu[c].data[m][4 * n], 4);
            for (int k = 0; k < emu[b].rows; k++)
                for (int i = 0; i < 4; i++)
                    acc += (int8_t)emu[a].data[m][4 * k + i] * (int8_t)emu[b].data[k][4 * n + i];
            memcpy(&emu[c].data[m][4 * n], &acc, 4);
        }
}

static void emu_release(void)
{
    emu_configured = false;
}

#define Q_AMX_EMULATE
#define AMX_LOAD_CONFIG(cfg)       emu_load_config(cfg)
#define AMX_RELEASE()              emu_release()
#define AMX_ZERO(t)                emu_zero(t)
#define AMX_LOAD(t, base, stride)  emu_load(t, base, stride)
#define AMX_STORE(t, base, stride) emu_store(t, base, stride)
#define AMX_DPBSSD(c, a, b)        emu_dpbssd(c, a, b)
#define q_gemm_amx                 q_gemm_amx_emulated
/* The kernel rescales with AVX-512: only it is compiled for AVX-512, and
 * the tests skip where the CPU has none. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include "quant/gemm_amx.c"
#pragma GCC pop_options

static void skip_without_avx512(void)
{
    if (!util_cpu_has_avx512())
        cr_skip_test("skipped: the emulated AMX kernel rescales with AVX-512, which this CPU "
                     "(%s) lacks", util_cpu_flags_string());
}

#define KERNEL_REL_TOL 1e-5 /* as in test_quant_gemm.c */

static void check(const struct q_format *f, int m, int n, int k, int t_begin)
{
    int *perm = util_xmalloc((size_t)k * sizeof *perm);
    for (int j = 0; j < k; j++) perm[j] = (j * 37 + 5) % k;
    int loud[2] = {1, k - 2};
    float *x = tq_matrix(31 + (uint64_t)m, m, k, loud, 2, 8.0f);
    float *w = tq_matrix(32 + (uint64_t)n, n, k, NULL, 0, 1.0f);
    q_linear *layer = q_linear_quantize(w, n, k, f, perm);
    q_act *act = q_act_create(f, k, m);
    /* Earlier, larger data in the spare rows: the kernel may read it, never use it. */
    float *junk = tq_matrix(33, m, k, NULL, 0, 100.0f);
    q_act_quantize(act, junk, m, perm);
    q_act_quantize(act, x, m, perm);
    float *ref = util_xcalloc((size_t)m * n, sizeof *ref),
          *y = util_xcalloc((size_t)m * n + 16, sizeof *y);
    for (int i = 0; i < m * n + 16; i++) y[i] = -7.0f;
    q_gemm_scalar(layer, act, t_begin, m, 0, layer->n_blocks, ref, n, false);
    /* Two calls splitting the blocks, as two threads would. */
    int half = layer->n_blocks / 2;
    q_gemm_amx_emulated(layer, act, t_begin, m, 0, half, y, n, false);
    q_gemm_amx_emulated(layer, act, t_begin, m, half, layer->n_blocks, y, n, false);
    float *exact = util_xmalloc((size_t)m * n * sizeof *exact);
    float *scale = util_xmalloc((size_t)m * n * sizeof *scale);
    tq_product_definition(layer, act, m, exact, scale);
    for (int t = 0; t < m; t++)
        for (int r = 0; r < n; r++) {
            size_t i = (size_t)t * n + r;
            if (t < t_begin)
                cr_assert_eq(y[i], -7.0f, "row %d before t_begin written", t);
            else
                cr_assert_leq(fabsf(y[i] - ref[i]), KERNEL_REL_TOL * scale[i] + FLT_MIN,
                              "m=%d n=%d k=%d at (%d, %d): %g vs %g", m, n, k, t, r, y[i], ref[i]);
        }
    free(exact), free(scale);
    for (int i = m * n; i < m * n + 16; i++) cr_assert_eq(y[i], -7.0f, "wrote past y");
    free(perm), free(x), free(w), free(junk), free(ref), free(y);
    q_linear_free(layer);
    q_act_free(act);
}

Test(quant_amx_emulated, matches_reference_on_awkward_shapes)
{
    skip_without_avx512();
    const int ms[] = {1, 3, 17, 33}, ns[] = {1, 31, 33, 129};
    const int normals[] = {128, 256, 384}, outliers[] = {0, 16, 32};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            struct q_format f = tq_w4a4(128, outliers[b]);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) check(&f, ms[i], ns[j], normals[a] + outliers[b], 0);
        }
}

Test(quant_amx_emulated, matches_reference_with_short_groups_long_int8_and_token_ranges)
{
    skip_without_avx512();
    struct q_format f = tq_w4a4(128, 16); /* 496 = 3 x 128 + 112, outliers padded 16 -> 64 */
    check(&f, 33, 40, 512, 0);
    check(&f, 70, 33, 512, 35); /* a token range that starts mid-tile */
    f = tq_w4a4(32, 48);
    check(&f, 17, 31, 128, 0);
    struct q_format f8 = q_format_default(Q_W8A8);
    check(&f8, 33, 17, 2080, 0); /* int8 group split over chunks of 1024 */
    check(&f8, 5, 64, 16, 2);
}

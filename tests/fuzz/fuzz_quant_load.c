/*
 * fuzz_quant_load: reads arbitrary bytes as a quantized layer blob. What
 * loads must save back to the same bytes (an older blob version to a blob
 * that loads and saves back to itself), and its product with the scalar
 * reference must agree with the selected kernel's.
 */
#include "quant/quant.h"
#include "util/util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_PRODUCT (1 << 20) /* rows x channels; larger layers are only loaded */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    q_linear *layer = q_linear_load(data, size);
    if (!layer) return 0;
    size_t saved = q_linear_save(layer, NULL, 0);
    uint8_t *copy = util_xmalloc(saved);
    q_linear_save(layer, copy, saved);
    if (saved == size && memcmp(copy, data, size) == 0) {
        free(copy);
    } else {
        /* Only a blob of an older version may change on saving: the header's
         * version field (bytes 8..11) differs, and the new blob is stable. */
        UTIL_CHECK(memcmp(copy + 8, data + 8, 4) != 0);
        q_linear *again = q_linear_load(copy, saved);
        UTIL_CHECK(again);
        uint8_t *copy2 = util_xmalloc(saved);
        UTIL_CHECK(q_linear_save(again, copy2, saved) == saved);
        UTIL_CHECK(memcmp(copy, copy2, saved) == 0);
        q_linear_free(again);
        free(copy), free(copy2);
    }

    int n = q_linear_rows(layer), k = q_linear_cols(layer);
    if ((long)n * k <= FUZZ_MAX_PRODUCT) {
        const int m = 2;
        struct util_rng rng;
        util_rng_seed(&rng, size);
        float *x = util_xmalloc((size_t)m * k * sizeof *x);
        for (int i = 0; i < m * k; i++) x[i] = (float)util_rng_normal(&rng);
        float *ref = util_xmalloc((size_t)m * n * sizeof *ref);
        float *y = util_xmalloc((size_t)m * n * sizeof *y);
        q_act *act = q_act_create(q_linear_format(layer), k, m);
        q_act_quantize(act, x, m, q_linear_perm(layer));
        q_gemm_with(Q_KERNEL_SCALAR, layer, act, m, ref);
        q_gemm(layer, act, m, y);
        for (int i = 0; i < m * n; i++) {
            /* Scales may be huge: compare relative, and only finite values. */
            if (!isfinite(ref[i]) || !isfinite(y[i])) continue;
            UTIL_CHECK(fabsf(y[i] - ref[i]) <= 1e-4f * fabsf(ref[i]) + 1e-30f ||
                       fabsf(y[i] - ref[i]) <= 1e-3f * (fabsf(ref[i]) + fabsf(y[i])));
        }
        free(x), free(ref), free(y);
        q_act_free(act);
    }
    q_linear_free(layer);
    return 0;
}

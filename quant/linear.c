/*
 * linear.c: quantized weights: allocation, packing into the kernels'
 * layout, round-to-nearest quantization, and reading them back.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

bool q_is_permutation(const int *perm, int k)
{
    bool *seen = util_xcalloc((size_t)k, 1);
    bool ok = true;
    for (int j = 0; j < k && ok; j++) {
        ok = perm[j] >= 0 && perm[j] < k && !seen[perm[j]];
        if (ok) seen[perm[j]] = true;
    }
    free(seen);
    return ok;
}

/* A layer's shape, format and channel order, without weights. */
static struct q_linear *new_layer(int n, int k, const struct q_format *format, const int *perm)
{
    UTIL_CHECK(q_format_check(format, k) == 0);
    UTIL_CHECK(n >= 1);
    UTIL_CHECK(!perm || q_is_permutation(perm, k));
    struct q_linear *layer = util_xcalloc(1, sizeof *layer);
    layer->format = *format;
    q_layout_init(&layer->layout, format, k);
    layer->n = n;
    layer->k = k;
    layer->n_blocks = (n + Q_BLOCK_ROWS - 1) / Q_BLOCK_ROWS;
    if (perm) {
        layer->perm = util_xmalloc((size_t)k * sizeof *perm);
        memcpy(layer->perm, perm, (size_t)k * sizeof *perm);
    }
    layer->perm_hash = q_perm_hash(perm, k);
    return layer;
}

struct q_linear *q_linear_alloc(int n, int k, const struct q_format *format, const int *perm)
{
    struct q_linear *layer = new_layer(n, k, format, perm);
    layer->packed = util_aligned_alloc((size_t)layer->n_blocks * layer->layout.block_bytes);
    layer->scales = util_aligned_alloc((size_t)layer->n_blocks * (size_t)layer->layout.n_groups *
                                       Q_BLOCK_ROWS * sizeof(float));
    /* Zero weights read as the bias, so that padding rows multiply to 0. */
    for (int b = 0; b < layer->n_blocks; b++) {
        uint8_t *blk = layer->packed + (size_t)b * layer->layout.block_bytes;
        for (int g = 0; g < layer->layout.n_groups; g++) {
            const struct q_group *grp = &layer->layout.groups[g];
            size_t bytes = (size_t)grp->len * Q_BLOCK_ROWS * (size_t)grp->bits / 8;
            memset(blk + grp->w_offset, grp->bits == 4 ? 0x88 : Q_INT8_BIAS, bytes);
        }
    }
    return layer;
}

struct q_linear *q_linear_alloc_view(int n, int k, const struct q_format *format, const int *perm,
                                     const void *scales, const void *packed)
{
    UTIL_CHECK((uintptr_t)packed % 64 == 0);
    struct q_linear *layer = new_layer(n, k, format, perm);
    layer->packed = (uint8_t *)packed; /* never written: the layer is done */
    layer->scales = (float *)scales;
    layer->borrowed = true;
    return layer;
}

void q_linear_set_row(struct q_linear *layer, int row, const int8_t *q, const float *scales)
{
    UTIL_CHECK(row >= 0 && row < layer->n);
    uint8_t *blk = layer->packed + (size_t)(row / Q_BLOCK_ROWS) * layer->layout.block_bytes;
    int r = row % Q_BLOCK_ROWS;
    for (int g = 0; g < layer->layout.n_groups; g++) {
        const struct q_group *grp = &layer->layout.groups[g];
        uint8_t *dst = blk + grp->w_offset;
        const int8_t *src = q + grp->start;
        for (int c = 0; c < grp->len; c++) {
            int quad = c / 4, i = 4 * r + c % 4;
            if (grp->bits == 8) {
                UTIL_CHECK(src[c] >= -Q_INT8_MAX && src[c] <= Q_INT8_MAX);
                dst[(size_t)quad * Q_QUAD_BYTES + i] = (uint8_t)(src[c] + Q_INT8_BIAS);
                continue;
            }
            UTIL_CHECK(src[c] >= -Q_INT4_MAX && src[c] <= Q_INT4_MAX);
            uint8_t *byte = &dst[(size_t)(quad / 2) * Q_QUAD_BYTES + i];
            uint8_t nibble = (uint8_t)(src[c] + Q_INT4_BIAS);
            *byte = quad % 2 ? (uint8_t)((*byte & 0x0f) | nibble << 4)
                             : (uint8_t)((*byte & 0xf0) | nibble);
        }
        float *s = layer->scales +
                   ((size_t)(row / Q_BLOCK_ROWS) * layer->layout.n_groups + g) * Q_BLOCK_ROWS;
        s[r] = scales[g];
    }
}

/* ------------------------------------------------------ round to nearest */

/* Quantizes one row h (layer order) group by group into q and scales. */
static void quantize_row_rtn(const struct q_layout *lay, float weight_clip, const float *h,
                             int8_t *q, float *scales)
{
    for (int g = 0; g < lay->n_groups; g++) {
        const struct q_group *grp = &lay->groups[g];
        float absmax = 0.0f;
        for (int c = 0; c < grp->len; c++) { /* a NaN is skipped, as fmaxf would (but inline) */
            float a = fabsf(h[grp->start + c]);
            absmax = a > absmax ? a : absmax;
        }
        float scale = q_group_scale(absmax, grp->bits, weight_clip);
        float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        int qmax = q_group_qmax(grp->bits);
        for (int c = 0; c < grp->len; c++)
            q[grp->start + c] = (int8_t)q_round_clamp(h[grp->start + c] * inv, qmax);
        scales[g] = scale;
    }
}

q_linear *q_linear_create(int n, int k, const struct q_format *format, const int *perm)
{
    return q_linear_alloc(n, k, format, perm);
}

void q_linear_quantize_rows(q_linear *layer, const float *w, int row0, int n_rows)
{
    UTIL_CHECK(layer && w && !layer->borrowed);
    UTIL_CHECK(row0 >= 0 && n_rows >= 0 && row0 + n_rows <= layer->n);
    int k = layer->k;
    const int *perm = layer->perm;
    /* Rows write disjoint bytes of `packed` (byte 4r+i of each quad). */
#pragma omp parallel if (!omp_in_parallel() && n_rows > 16)
    {
        float *h = util_xmalloc((size_t)k * sizeof *h);
        int8_t *q = util_xmalloc((size_t)k);
        float *scales = util_xmalloc((size_t)layer->layout.n_groups * sizeof *scales);
#pragma omp for schedule(static)
        for (int i = 0; i < n_rows; i++) {
            const float *src = w + (size_t)i * k;
            for (int j = 0; j < k; j++) h[j] = src[perm ? perm[j] : j];
            quantize_row_rtn(&layer->layout, layer->format.weight_clip, h, q, scales);
            q_linear_set_row(layer, row0 + i, q, scales);
        }
        free(h);
        free(q);
        free(scales);
    }
}

q_linear *q_linear_quantize(const float *w, int n, int k, const struct q_format *format,
                            const int *perm)
{
    UTIL_CHECK(w);
    q_linear *layer = q_linear_alloc(n, k, format, perm);
    q_linear_quantize_rows(layer, w, 0, n);
    return layer;
}

/* ------------------------------------------------------------- accessors */

void q_linear_free(q_linear *layer)
{
    if (!layer) return;
    q_layout_free(&layer->layout);
    free(layer->perm);
    if (!layer->borrowed) {
        util_aligned_free(layer->packed);
        util_aligned_free(layer->scales);
    }
    free(layer);
}

int q_linear_rows(const q_linear *layer)
{
    return layer->n;
}

int q_linear_cols(const q_linear *layer)
{
    return layer->k;
}

const struct q_format *q_linear_format(const q_linear *layer)
{
    return &layer->format;
}

const int *q_linear_perm(const q_linear *layer)
{
    return layer->perm;
}

size_t q_linear_bytes(const q_linear *layer)
{
    return sizeof *layer + (size_t)layer->layout.n_groups * sizeof(struct q_group) +
           (layer->perm ? (size_t)layer->k * sizeof(int) : 0) +
           (size_t)layer->n_blocks * layer->layout.block_bytes +
           (size_t)layer->n_blocks * (size_t)layer->layout.n_groups * Q_BLOCK_ROWS * sizeof(float);
}

void q_linear_dequantize(const q_linear *layer, float *w)
{
    UTIL_CHECK(layer && w);
    const struct q_layout *lay = &layer->layout;
    for (int row = 0; row < layer->n; row++) {
        for (int g = 0; g < lay->n_groups; g++) {
            const struct q_group *grp = &lay->groups[g];
            float scale = q_linear_scales(layer, row / Q_BLOCK_ROWS, g)[row % Q_BLOCK_ROWS];
            for (int c = 0; c < grp->len; c++) {
                int j = grp->start + c;
                int channel = layer->perm ? layer->perm[j] : j;
                w[(size_t)row * layer->k + channel] =
                    (float)q_linear_value(layer, row, g, c) * scale;
            }
        }
    }
}

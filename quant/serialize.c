/*
 * serialize.c: a quantized layer as a flat little-endian blob, for
 * `llmd quantize` to store and the model loader to read back.
 *
 *   offset  size  field
 *        0     8  magic "LLMDQLIN"
 *        8     4  version (1)
 *       12     4  method (0 W8A8, 1 W4A4)
 *       16     4  group_size
 *       20     4  n_outlier
 *       24     4  act_clip (f32)
 *       28     4  weight_clip (f32)
 *       32     4  n (output rows)
 *       36     4  k (input channels)
 *       40     4  flags: bit 0 = a channel order follows
 *       44     4  reserved, 0
 *       48        perm: k x i32, when flagged
 *                 scales: ceil(n/16) x groups x 16 f32
 *                 packed weights: ceil(n/16) x block bytes (see quant_internal.h)
 *
 * The blob's size must be exactly what the header implies; the format must
 * pass q_format_check, the order must be a permutation, the scales finite
 * and not negative. Any byte is a valid packed weight.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

#define BLOB_MAGIC        "LLMDQLIN"
#define BLOB_VERSION      1u
#define BLOB_HEADER_BYTES 48
#define BLOB_FLAG_PERM    1u
#define BLOB_MAX_ROWS     (1 << 24)

_Static_assert(sizeof(float) == 4 && sizeof(int) == 4, "the blob stores 4-byte fields");

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static float get_f32(const uint8_t *p)
{
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* Bytes of the three arrays after the header. */
static size_t scales_bytes(const struct q_linear *layer)
{
    return (size_t)layer->n_blocks * (size_t)layer->layout.n_groups * Q_BLOCK_ROWS * sizeof(float);
}

static size_t packed_bytes(const struct q_linear *layer)
{
    return (size_t)layer->n_blocks * layer->layout.block_bytes;
}

size_t q_linear_save(const q_linear *layer, void *buf, size_t cap)
{
    UTIL_CHECK(layer);
    size_t perm_bytes = layer->perm ? (size_t)layer->k * sizeof(int) : 0;
    size_t total = BLOB_HEADER_BYTES + perm_bytes + scales_bytes(layer) + packed_bytes(layer);
    if (!buf) return total;
    UTIL_CHECK(cap >= total);
    uint8_t *p = buf;
    memset(p, 0, BLOB_HEADER_BYTES);
    memcpy(p, BLOB_MAGIC, 8);
    put_u32(p + 8, BLOB_VERSION);
    put_u32(p + 12, layer->format.method == Q_W4A4 ? 1u : 0u);
    put_u32(p + 16, (uint32_t)layer->format.group_size);
    put_u32(p + 20, (uint32_t)layer->format.n_outlier);
    memcpy(p + 24, &layer->format.act_clip, 4);
    memcpy(p + 28, &layer->format.weight_clip, 4);
    put_u32(p + 32, (uint32_t)layer->n);
    put_u32(p + 36, (uint32_t)layer->k);
    put_u32(p + 40, layer->perm ? BLOB_FLAG_PERM : 0u);
    p += BLOB_HEADER_BYTES;
    if (layer->perm) memcpy(p, layer->perm, perm_bytes);
    p += perm_bytes;
    memcpy(p, layer->scales, scales_bytes(layer));
    p += scales_bytes(layer);
    memcpy(p, layer->packed, packed_bytes(layer));
    return total;
}

q_linear *q_linear_load(const void *buf, size_t size)
{
    const uint8_t *p = buf;
    if (!p || size < BLOB_HEADER_BYTES || memcmp(p, BLOB_MAGIC, 8) != 0) return NULL;
    if (get_u32(p + 8) != BLOB_VERSION) return NULL;
    uint32_t method = get_u32(p + 12), flags = get_u32(p + 40);
    if (method > 1 || (flags & ~BLOB_FLAG_PERM) || get_u32(p + 44) != 0) return NULL;
    struct q_format format = {
        .method = method ? Q_W4A4 : Q_W8A8,
        .group_size = (int)get_u32(p + 16),
        .n_outlier = (int)get_u32(p + 20),
        .act_clip = get_f32(p + 24),
        .weight_clip = get_f32(p + 28),
    };
    int32_t n = (int32_t)get_u32(p + 32), k = (int32_t)get_u32(p + 36);
    if (n < 1 || n > BLOB_MAX_ROWS || q_format_check(&format, k) != 0) return NULL;

    /* The header is sane: sizes below cannot overflow (k <= 65536, n <= 2^24). */
    size_t perm_bytes = flags & BLOB_FLAG_PERM ? (size_t)k * sizeof(int) : 0;
    struct q_layout lay;
    q_layout_init(&lay, &format, k);
    size_t n_blocks = ((size_t)n + Q_BLOCK_ROWS - 1) / Q_BLOCK_ROWS;
    size_t want = BLOB_HEADER_BYTES + perm_bytes +
                  n_blocks * (size_t)lay.n_groups * Q_BLOCK_ROWS * sizeof(float) +
                  n_blocks * lay.block_bytes;
    q_layout_free(&lay);
    if (size != want) return NULL;

    const uint8_t *body = p + BLOB_HEADER_BYTES;
    int *perm = NULL;
    if (perm_bytes) {
        perm = util_xmalloc(perm_bytes);
        memcpy(perm, body, perm_bytes);
        if (!q_is_permutation(perm, k)) {
            free(perm);
            return NULL;
        }
    }
    struct q_linear *layer = q_linear_alloc(n, k, &format, perm);
    free(perm);
    const uint8_t *scales = body + perm_bytes;
    memcpy(layer->scales, scales, scales_bytes(layer));
    memcpy(layer->packed, scales + scales_bytes(layer), packed_bytes(layer));
    size_t n_scales = scales_bytes(layer) / sizeof(float);
    for (size_t i = 0; i < n_scales; i++) {
        if (!isfinite(layer->scales[i]) || layer->scales[i] < 0.0f) {
            q_linear_free(layer);
            return NULL;
        }
    }
    return layer;
}

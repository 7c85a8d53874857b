/*
 * serialize.c: a quantized layer as a flat little-endian blob, for
 * `llmd quantize` to store and the model loader to read back.
 *
 *   offset  size  field
 *        0     8  magic "LLMDQLIN"
 *        8     4  version (1)
 *       12     4  method (0 W8A8, 1 W4A4, 2 W4A8)
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
 *                 (version 2: zeros up to a multiple of 64 bytes from the start)
 *                 packed weights: ceil(n/16) x block bytes (see quant_internal.h)
 *
 * The blob's size must be exactly what the header implies; the format must
 * pass q_format_check, the order must be a permutation, the scales finite
 * and not negative. Any byte is a valid packed weight.
 *
 * Version 2 (written now) pads the packed weights to a 64-byte boundary of
 * the blob, so that a blob stored 64-byte aligned (llmd's GGUF files are)
 * can be used where it lies: q_linear_view reads scales and weights in
 * place, from a mapped file, without a copy. Version 1 is still read.
 */
#include "quant/quant_internal.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

#define BLOB_MAGIC        "LLMDQLIN"
#define BLOB_VERSION      2u
#define BLOB_PACKED_ALIGN 64
#define BLOB_HEADER_BYTES 48
#define BLOB_FLAG_PERM    1u
#define BLOB_MAX_ROWS     (1 << 24)

_Static_assert(sizeof(float) == 4 && sizeof(int) == 4, "the blob stores 4-byte fields");
_Static_assert(Q_W8A8 == 0 && Q_W4A4 == 1 && Q_W4A8 == 2, "the blob stores the method's number");

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

/* Bytes from the blob's start to its packed weights. */
static size_t packed_offset(uint32_t version, size_t perm_bytes, size_t scale_bytes)
{
    size_t at = BLOB_HEADER_BYTES + perm_bytes + scale_bytes;
    return version >= 2 ? (at + BLOB_PACKED_ALIGN - 1) / BLOB_PACKED_ALIGN * BLOB_PACKED_ALIGN : at;
}

size_t q_linear_save(const q_linear *layer, void *buf, size_t cap)
{
    UTIL_CHECK(layer);
    size_t perm_bytes = layer->perm ? (size_t)layer->k * sizeof(int) : 0;
    size_t at_packed = packed_offset(BLOB_VERSION, perm_bytes, scales_bytes(layer));
    size_t total = at_packed + packed_bytes(layer);
    if (!buf) return total;
    UTIL_CHECK(cap >= total);
    uint8_t *p = buf;
    memset(p, 0, at_packed);
    memcpy(p, BLOB_MAGIC, 8);
    put_u32(p + 8, BLOB_VERSION);
    put_u32(p + 12, (uint32_t)layer->format.method);
    put_u32(p + 16, (uint32_t)layer->format.group_size);
    put_u32(p + 20, (uint32_t)layer->format.n_outlier);
    memcpy(p + 24, &layer->format.act_clip, 4);
    memcpy(p + 28, &layer->format.weight_clip, 4);
    put_u32(p + 32, (uint32_t)layer->n);
    put_u32(p + 36, (uint32_t)layer->k);
    put_u32(p + 40, layer->perm ? BLOB_FLAG_PERM : 0u);
    if (layer->perm) memcpy(p + BLOB_HEADER_BYTES, layer->perm, perm_bytes);
    memcpy(p + BLOB_HEADER_BYTES + perm_bytes, layer->scales, scales_bytes(layer));
    memcpy(p + at_packed, layer->packed, packed_bytes(layer));
    return total;
}

/* Checks a blob and makes its layer: in place (scales and packed weights
 * pointing into buf, when `view` and the blob allows it) or as a copy. */
static q_linear *blob_layer(const void *buf, size_t size, bool view)
{
    const uint8_t *p = buf;
    if (!p || size < BLOB_HEADER_BYTES || memcmp(p, BLOB_MAGIC, 8) != 0) return NULL;
    uint32_t version = get_u32(p + 8);
    if (version < 1 || version > BLOB_VERSION) return NULL;
    uint32_t method = get_u32(p + 12), flags = get_u32(p + 40);
    if (method > Q_W4A8 || (flags & ~BLOB_FLAG_PERM) || get_u32(p + 44) != 0) return NULL;
    struct q_format format = {
        .method = (enum q_method)method,
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
    size_t scale_bytes = n_blocks * (size_t)lay.n_groups * Q_BLOCK_ROWS * sizeof(float);
    size_t at_packed = packed_offset(version, perm_bytes, scale_bytes);
    size_t want = at_packed + n_blocks * lay.block_bytes;
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
    const uint8_t *scales = body + perm_bytes;
    size_t n_scales = scale_bytes / sizeof(float);
    for (size_t i = 0; i < n_scales; i++) {
        float v = get_f32(scales + 4 * i);
        if (!isfinite(v) || v < 0.0f) {
            free(perm);
            return NULL;
        }
    }
    /* In place: the weights must sit on 64 bytes (aligned loads), the scales on 4. */
    bool in_place = view && (uintptr_t)(p + at_packed) % BLOB_PACKED_ALIGN == 0 &&
                    (uintptr_t)scales % sizeof(float) == 0;
    struct q_linear *layer = in_place
                                 ? q_linear_alloc_view(n, k, &format, perm, scales, p + at_packed)
                                 : q_linear_alloc(n, k, &format, perm);
    free(perm);
    if (!in_place) {
        memcpy(layer->scales, scales, scale_bytes);
        memcpy(layer->packed, p + at_packed, packed_bytes(layer));
    }
    return layer;
}

q_linear *q_linear_load(const void *buf, size_t size)
{
    return blob_layer(buf, size, false);
}

q_linear *q_linear_view(const void *buf, size_t size)
{
    return blob_layer(buf, size, true);
}

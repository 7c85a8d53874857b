/* Tests for the quantized layer blob: round trips, in-place views, version 1
 * blobs, and malformed blobs refused. */
#include "quant/quant.h"
#include "tests/test_quant_helpers.h"

#include <criterion/criterion.h>
#include <string.h>

/* A layer and its blob; the caller frees both. */
static q_linear *sample_layer(const struct q_format *f, int n, int k, bool permute)
{
    int *perm = util_xmalloc((size_t)k * sizeof *perm);
    for (int j = 0; j < k; j++) perm[j] = (j * 7 + 3) % k;
    float *w = tq_matrix(21, n, k, NULL, 0, 1.0f);
    q_linear *layer = q_linear_quantize(w, n, k, f, permute ? perm : NULL);
    free(w), free(perm);
    return layer;
}

static uint8_t *save(const q_linear *layer, size_t *size)
{
    *size = q_linear_save(layer, NULL, 0);
    uint8_t *blob = util_xmalloc(*size);
    cr_assert_eq(q_linear_save(layer, blob, *size), *size);
    return blob;
}

static void check_round_trip(const struct q_format *f, int n, int k, bool permute)
{
    q_linear *layer = sample_layer(f, n, k, permute);
    size_t size;
    uint8_t *blob = save(layer, &size);
    q_linear *back = q_linear_load(blob, size);
    cr_assert_not_null(back);
    cr_assert_eq(q_linear_rows(back), n);
    cr_assert_eq(q_linear_cols(back), k);
    cr_assert_eq(memcmp(q_linear_format(back), q_linear_format(layer), sizeof *f), 0);
    cr_assert_eq(q_linear_perm(back) != NULL, permute);
    size_t size2;
    uint8_t *blob2 = save(back, &size2);
    cr_assert_eq(size2, size);
    cr_assert_eq(memcmp(blob, blob2, size), 0, "saving the loaded layer gives the same bytes");

    /* And the product is the same, bit for bit. */
    float *x = tq_matrix(22, 3, k, NULL, 0, 1.0f);
    float *y1 = util_xmalloc((size_t)3 * n * sizeof *y1),
          *y2 = util_xmalloc((size_t)3 * n * sizeof *y2);
    q_act *act = q_act_create(f, k, 3);
    q_act_quantize(act, x, 3, q_linear_perm(layer));
    q_gemm(layer, act, 3, y1);
    q_gemm(back, act, 3, y2);
    cr_assert_eq(memcmp(y1, y2, (size_t)3 * n * sizeof *y1), 0);
    free(x), free(y1), free(y2), free(blob), free(blob2);
    q_act_free(act);
    q_linear_free(layer);
    q_linear_free(back);
}

Test(quant_serialize, w4a4_atom_and_w8a8_layers_round_trip_exactly)
{
    struct q_format f = tq_w4a4(128, 16);
    check_round_trip(&f, 37, 528, true);
    f = tq_w4a4(32, 0);
    check_round_trip(&f, 16, 64, false);
    f = q_format_default(Q_W8A8);
    check_round_trip(&f, 5, 96, false);
}

Test(quant_serialize, every_truncation_and_an_extra_byte_are_refused)
{
    struct q_format f = tq_w4a4(16, 16);
    q_linear *layer = sample_layer(&f, 3, 48, true);
    size_t size;
    uint8_t *blob = save(layer, &size);
    for (size_t cut = 0; cut < size; cut++)
        cr_assert_null(q_linear_load(blob, cut), "a blob cut to %zu of %zu bytes", cut, size);
    uint8_t *longer = util_xmalloc(size + 1);
    memcpy(longer, blob, size);
    longer[size] = 0;
    cr_assert_null(q_linear_load(longer, size + 1));
    cr_assert_null(q_linear_load(NULL, size));
    free(blob), free(longer);
    q_linear_free(layer);
}

/* Loads blob with one 32-bit field at `offset` replaced by value. */
static q_linear *load_patched(const uint8_t *blob, size_t size, size_t offset, uint32_t value)
{
    uint8_t *copy = util_xmalloc(size);
    memcpy(copy, blob, size);
    memcpy(copy + offset, &value, 4);
    q_linear *layer = q_linear_load(copy, size);
    free(copy);
    return layer;
}

Test(quant_serialize, malformed_headers_orders_and_scales_are_refused)
{
    struct q_format f = tq_w4a4(16, 16);
    q_linear *layer = sample_layer(&f, 3, 48, true);
    size_t size;
    uint8_t *blob = save(layer, &size);
    q_linear *ok = load_patched(blob, size, 44, 0); /* the reserved word, unchanged */
    cr_assert_not_null(ok);
    q_linear_free(ok);
    float nan = NAN, neg = -1.0f;
    uint32_t nan_bits, neg_bits;
    memcpy(&nan_bits, &nan, 4);
    memcpy(&neg_bits, &neg, 4);
    const struct {
        size_t offset;
        uint32_t value;
        const char *what;
    } bad[] = {
        {0, 0x4d4d4c4c, "magic"},
        {8, 0, "version 0"},
        {8, 3, "a version from the future"},
        {12, 3, "method"},
        {16, 24, "group size not a multiple of 16"},
        {20, 8, "outliers not a multiple of 16"},
        {20, 64, "more outliers than channels"},
        {24, nan_bits, "NaN clip"},
        {28, 0, "zero clip"},
        {32, 0, "no rows"},
        {32, 0x80000000u, "negative rows"},
        {32, 17, "rows that change the size"},
        {36, 64, "channels that change the size"},
        {40, 0, "order flag dropped"},
        {40, 3, "unknown flag"},
        {44, 1, "reserved word"},
        {48, 5, "order repeats a channel"},
        {48, 48, "order out of range"},
        {48 + 48 * 4, nan_bits, "NaN scale"},
        {48 + 48 * 4 + 4, neg_bits, "negative scale"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_null(load_patched(blob, size, bad[i].offset, bad[i].value), "%s", bad[i].what);
    free(blob);
    q_linear_free(layer);
}

/* The same product from a layer and from y computed by another layer. */
static void check_same_product(const q_linear *a, const q_linear *b, const struct q_format *f)
{
    int n = q_linear_rows(a), k = q_linear_cols(a);
    float *x = tq_matrix(23, 2, k, NULL, 0, 1.0f);
    float *y1 = util_xmalloc((size_t)2 * n * sizeof *y1),
          *y2 = util_xmalloc((size_t)2 * n * sizeof *y2);
    q_act *act = q_act_create(f, k, 2);
    q_act_quantize(act, x, 2, q_linear_perm(a));
    q_gemm(a, act, 2, y1);
    q_gemm(b, act, 2, y2);
    cr_assert_eq(memcmp(y1, y2, (size_t)2 * n * sizeof *y1), 0);
    free(x), free(y1), free(y2);
    q_act_free(act);
}

/* A blob on 64 bytes is read in place (its weights are the layer's: a
 * change to the buffer shows in the product); anywhere else it is copied. */
Test(quant_serialize, a_view_reads_an_aligned_blob_in_place_and_copies_a_misaligned_one)
{
    struct q_format f = tq_w4a4(128, 16);
    q_linear *layer = sample_layer(&f, 37, 528, true);
    size_t size;
    uint8_t *blob = save(layer, &size);
    uint8_t *aligned = util_aligned_alloc(size + 64);
    memcpy(aligned, blob, size);
    q_linear *view = q_linear_view(aligned, size);
    cr_assert_not_null(view);
    check_same_product(layer, view, &f);
    uint8_t *odd = util_xmalloc(size + 4);
    memcpy(odd + 4, blob, size);
    q_linear *copy = q_linear_view(odd + 4, size);
    cr_assert_not_null(copy);
    check_same_product(layer, copy, &f);
    /* zero the weights in both buffers: only the view sees it */
    memset(aligned + size - 64, 0x88, 64);
    memset(odd + 4 + size - 64, 0x88, 64);
    float *w0 = util_xmalloc((size_t)37 * 528 * sizeof(float)),
          *w1 = util_xmalloc((size_t)37 * 528 * sizeof(float));
    float *w2 = util_xmalloc((size_t)37 * 528 * sizeof(float));
    q_linear_dequantize(layer, w0);
    q_linear_dequantize(view, w1);
    q_linear_dequantize(copy, w2);
    cr_assert(memcmp(w0, w1, (size_t)37 * 528 * sizeof(float)) != 0,
              "the view did not read in place");
    cr_assert(memcmp(w0, w2, (size_t)37 * 528 * sizeof(float)) == 0,
              "the copy changed with its buffer");
    q_linear_free(view);
    q_linear_free(copy);
    free(w0), free(w1), free(w2), free(odd), free(blob);
    util_aligned_free(aligned);
    q_linear_free(layer);
}

/* Files written before version 2 had no padding before the weights. */
Test(quant_serialize, a_version_1_blob_still_loads)
{
    struct q_format f = tq_w4a4(16, 16);
    q_linear *layer = sample_layer(&f, 3, 48, true);
    size_t size;
    uint8_t *blob = save(layer, &size);
    /* v2 = header | perm | scales | zeros to 64 | packed: the packed bytes
     * end the blob (one block of 16 rows: 32 int4 channels + 16 int8) */
    size_t weights = (size_t)32 * 16 / 2 + (size_t)16 * 16;
    size_t head = 48 + 48 * 4 + (size_t)3 * 16 * 4; /* header, perm, 3 groups x 16 scales */
    cr_assert_eq(size, (head + 63) / 64 * 64 + weights);
    uint8_t *v1 = util_xmalloc(head + weights);
    memcpy(v1, blob, head);
    memcpy(v1 + head, blob + size - weights, weights);
    uint32_t one = 1;
    memcpy(v1 + 8, &one, 4);
    q_linear *back = q_linear_load(v1, head + weights);
    cr_assert_not_null(back);
    check_same_product(layer, back, &f);
    free(v1), free(blob);
    q_linear_free(back);
    q_linear_free(layer);
}

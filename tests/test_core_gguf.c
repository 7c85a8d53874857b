/*
 * Tests for core/gguf.c.
 *
 * Round trips read tests/data/gguf-types.gguf, written by
 * tools/make_gguf_testdata.py with tools/gguf.py (numpy), so the reader is
 * checked against an independent writer. Malformed files are built field
 * by field with tests/gguf_builder.h.
 */
#include "core/gguf.h"
#include "tests/gguf_builder.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURE           "tests/data/gguf-types.gguf"
#define FIXTURE_ALIGNMENT 64 /* tools/make_gguf_testdata.py's ALIGNMENT */

static char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s (run the tests from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = util_xmalloc((size_t)n);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static llm_gguf *open_fixture(void)
{
    llm_gguf *g = NULL;
    char err[256];
    int rc = llm_gguf_open(FIXTURE, &g, err, sizeof err);
    cr_assert_eq(rc, 0, "open: %s", err);
    return g;
}

/* The formula of tools/make_gguf_testdata.py's test_values(). */
static float fixture_value(uint64_t i)
{
    int64_t k = (int64_t)((i * 2654435761ull) % (1ull << 24)) - (1 << 23);
    return (float)k * 0x1p-20f;
}

static bool same_float(float a, float b)
{
    return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof a) == 0;
}

/* ------------------------------------------------------------ metadata */

Test(core_gguf, scalar_values_of_every_type_round_trip_from_the_python_writer)
{
    llm_gguf *g = open_fixture();
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;

    cr_assert_eq(llm_gguf_get_u32(g, "test.u8", &u32), 0);
    cr_assert_eq(u32, 255);
    cr_assert_eq(llm_gguf_get_i32(g, "test.i8", &i32), 0);
    cr_assert_eq(i32, -128);
    cr_assert_eq(llm_gguf_get_u32(g, "test.u16", &u32), 0);
    cr_assert_eq(u32, 65535);
    cr_assert_eq(llm_gguf_get_i32(g, "test.i16", &i32), 0);
    cr_assert_eq(i32, -32768);
    cr_assert_eq(llm_gguf_get_u32(g, "test.u32", &u32), 0);
    cr_assert_eq(u32, UINT32_MAX);
    cr_assert_eq(llm_gguf_get_i32(g, "test.i32", &i32), 0);
    cr_assert_eq(i32, INT32_MIN);
    cr_assert_eq(llm_gguf_get_u64(g, "test.u64", &u64), 0);
    cr_assert_eq(u64, UINT64_MAX);
    cr_assert_eq(llm_gguf_get_i64(g, "test.i64", &i64), 0);
    cr_assert_eq(i64, INT64_MIN);
    cr_assert_eq(llm_gguf_get_f32(g, "test.f32", &f32), 0);
    cr_assert_eq(f32, (float)M_PI);
    cr_assert_eq(llm_gguf_get_f64(g, "test.f64", &f64), 0);
    cr_assert_eq(f64, M_PI);
    cr_assert_eq(llm_gguf_get_bool(g, "test.bool_true", &b), 0);
    cr_assert(b);
    cr_assert_eq(llm_gguf_get_bool(g, "test.bool_false", &b), 0);
    cr_assert_not(b);

    struct llm_gguf_string s;
    const char *expect = "h\xc3\xa9llo \xe2\x96\x81w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac";
    cr_assert_eq(llm_gguf_get_string(g, "test.string", &s), 0);
    cr_assert_eq(s.len, strlen(expect));
    cr_assert_arr_eq(s.ptr, expect, s.len);
    cr_assert_eq(llm_gguf_get_string(g, "test.empty_string", &s), 0);
    cr_assert_eq(s.len, 0);
    llm_gguf_close(g);
}

Test(core_gguf, integer_getters_convert_widths_and_refuse_what_does_not_fit)
{
    llm_gguf *g = open_fixture();
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    cr_assert_eq(llm_gguf_get_u32(g, "test.small_u64", &u32), 0);
    cr_assert_eq(u32, 7);
    cr_assert_eq(llm_gguf_get_i32(g, "test.small_i64", &i32), 0);
    cr_assert_eq(i32, -7);
    cr_assert_eq(llm_gguf_get_i64(g, "test.u32", &i64), 0);
    cr_assert_eq(i64, UINT32_MAX);
    cr_assert_eq(llm_gguf_get_u32(g, "test.i8", &u32), -ERANGE);
    cr_assert_eq(llm_gguf_get_u64(g, "test.small_i64", &u64), -ERANGE);
    cr_assert_eq(llm_gguf_get_i32(g, "test.u32", &i32), -ERANGE);
    cr_assert_eq(llm_gguf_get_u32(g, "test.u64", &u32), -ERANGE);
    cr_assert_eq(llm_gguf_get_i64(g, "test.u64", &i64), -ERANGE);
    cr_assert_eq(llm_gguf_get_i32(g, "test.i64", &i32), -ERANGE);
    llm_gguf_close(g);
}

Test(core_gguf, getters_say_enoent_for_a_missing_key_and_einval_for_a_wrong_type)
{
    llm_gguf *g = open_fixture();
    uint32_t u32;
    float f32;
    bool b;
    struct llm_gguf_string s;
    cr_assert_eq(llm_gguf_get_u32(g, "no.such.key", &u32), -ENOENT);
    cr_assert_eq(llm_gguf_get_u32(g, "test.string", &u32), -EINVAL);
    cr_assert_eq(llm_gguf_get_u32(g, "test.bool_true", &u32), -EINVAL);
    cr_assert_eq(llm_gguf_get_u32(g, "test.f32", &u32), -EINVAL);
    cr_assert_eq(llm_gguf_get_f32(g, "test.u8", &f32), -EINVAL);
    cr_assert_eq(llm_gguf_get_bool(g, "test.u8", &b), -EINVAL);
    cr_assert_eq(llm_gguf_get_string(g, "test.array.string", &s), -EINVAL);
    cr_assert_eq(llm_gguf_get_array_string(g, "test.array.u8", 0, &s), -EINVAL);
    cr_assert_eq(llm_gguf_get_array_string(g, "test.array.string", 4, &s), -ERANGE);
    cr_assert_eq(llm_gguf_get_array(g, "test.u8", NULL, NULL, NULL), -EINVAL);
    llm_gguf_close(g);
}

static void assert_array(const llm_gguf *g, const char *key, enum llm_gguf_type type,
                         const void *expect, uint64_t count, size_t elem_size)
{
    enum llm_gguf_type et;
    uint64_t n;
    const void *data;
    cr_assert_eq(llm_gguf_get_array(g, key, &et, &n, &data), 0, "%s", key);
    cr_assert_eq(et, type, "%s: type %d", key, et);
    cr_assert_eq(n, count, "%s: count %llu", key, (unsigned long long)n);
    /* GGUF is little-endian, like the x86 we run on. */
    cr_assert(count == 0 || memcmp(data, expect, count * elem_size) == 0, "%s: values", key);
}

#define ASSERT_ARRAY(g, key, type, arr)                                                            \
    assert_array(g, key, type, arr, sizeof(arr) / sizeof(arr[0]), sizeof(arr[0]))

Test(core_gguf, arrays_of_every_element_type_round_trip_from_the_python_writer)
{
    llm_gguf *g = open_fixture();
    static const uint8_t u8[] = {0, 1, 255};
    static const int8_t i8[] = {-128, 0, 127};
    static const uint16_t u16[] = {0, 65535};
    static const int16_t i16[] = {-32768, 32767};
    static const uint32_t u32[] = {0, UINT32_MAX, 12345};
    static const int32_t i32[] = {INT32_MIN, INT32_MAX};
    static const float f32[] = {-1.5f, 0.0f, 1e30f};
    static const uint8_t bools[] = {1, 0, 1};
    static const uint64_t u64[] = {0, UINT64_MAX};
    static const int64_t i64[] = {INT64_MIN, INT64_MAX};
    static const double f64[] = {M_E, -0.0};
    ASSERT_ARRAY(g, "test.array.u8", GGUF_TYPE_UINT8, u8);
    ASSERT_ARRAY(g, "test.array.i8", GGUF_TYPE_INT8, i8);
    ASSERT_ARRAY(g, "test.array.u16", GGUF_TYPE_UINT16, u16);
    ASSERT_ARRAY(g, "test.array.i16", GGUF_TYPE_INT16, i16);
    ASSERT_ARRAY(g, "test.array.u32", GGUF_TYPE_UINT32, u32);
    ASSERT_ARRAY(g, "test.array.i32", GGUF_TYPE_INT32, i32);
    ASSERT_ARRAY(g, "test.array.f32", GGUF_TYPE_FLOAT32, f32);
    ASSERT_ARRAY(g, "test.array.bool", GGUF_TYPE_BOOL, bools);
    ASSERT_ARRAY(g, "test.array.u64", GGUF_TYPE_UINT64, u64);
    ASSERT_ARRAY(g, "test.array.i64", GGUF_TYPE_INT64, i64);
    ASSERT_ARRAY(g, "test.array.f64", GGUF_TYPE_FLOAT64, f64);
    assert_array(g, "test.array.empty", GGUF_TYPE_UINT32, NULL, 0, 4);

    static const char *const strings[] = {"a", "", "\xe2\x96\x81x",
                                          "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"};
    enum llm_gguf_type et;
    uint64_t n;
    cr_assert_eq(llm_gguf_get_array(g, "test.array.string", &et, &n, NULL), 0);
    cr_assert_eq(et, GGUF_TYPE_STRING);
    cr_assert_eq(n, 4);
    for (uint64_t i = 0; i < n; i++) {
        struct llm_gguf_string s;
        cr_assert_eq(llm_gguf_get_array_string(g, "test.array.string", i, &s), 0);
        cr_assert_eq(s.len, strlen(strings[i]));
        cr_assert(memcmp(s.ptr, strings[i], s.len) == 0, "string %llu", (unsigned long long)i);
    }
    llm_gguf_close(g);
}

Test(core_gguf, metadata_is_listed_in_file_order_with_alignment_first)
{
    llm_gguf *g = open_fixture();
    struct llm_gguf_string key;
    enum llm_gguf_type type;
    cr_assert_eq(llm_gguf_kv_count(g), 30);
    cr_assert_eq(llm_gguf_kv_at(g, 0, &key, &type), 0);
    cr_assert_eq(key.len, strlen("general.alignment"));
    cr_assert(memcmp(key.ptr, "general.alignment", key.len) == 0);
    cr_assert_eq(type, GGUF_TYPE_UINT32);
    cr_assert_eq(llm_gguf_kv_at(g, 29, &key, &type), 0);
    cr_assert(memcmp(key.ptr, "test.array.empty", key.len) == 0);
    cr_assert_eq(type, GGUF_TYPE_ARRAY);
    cr_assert_eq(llm_gguf_kv_at(g, 30, &key, &type), -ERANGE);
    cr_assert_str_eq(llm_gguf_type_name(GGUF_TYPE_FLOAT64), "float64");
    llm_gguf_close(g);
}

/* ---------------------------------------------------------------- tensors */

Test(core_gguf, tensor_infos_have_reversed_dims_aligned_data_and_sizes)
{
    llm_gguf *g = open_fixture();
    cr_assert_eq(llm_gguf_alignment(g), FIXTURE_ALIGNMENT);
    cr_assert_eq(llm_gguf_data_offset(g) % FIXTURE_ALIGNMENT, 0);
    cr_assert_eq(llm_gguf_tensor_count(g), 7);
    struct {
        const char *name;
        int n_dims;
        uint64_t dims[4];
        enum llm_ggml_type type;
        uint64_t n_bytes;
    } expect[] = {
        {"f32", 3, {7, 5, 3, 1}, GGML_TYPE_F32, 105 * 4},
        {"f16", 1, {37, 1, 1, 1}, GGML_TYPE_F16, 37 * 2},
        {"bf16", 4, {17, 3, 1, 2}, GGML_TYPE_BF16, 102 * 2},
        {"q8_0", 2, {64, 3, 1, 1}, GGML_TYPE_Q8_0, 6 * 34},
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, expect[i].name);
        cr_assert_not_null(t, "%s", expect[i].name);
        cr_assert_eq(t->name.len, strlen(expect[i].name));
        cr_assert_eq(t->n_dims, expect[i].n_dims, "%s", expect[i].name);
        cr_assert_arr_eq(t->dims, expect[i].dims, sizeof t->dims, "%s", expect[i].name);
        cr_assert_eq(t->type, expect[i].type);
        cr_assert_eq(t->n_bytes, expect[i].n_bytes, "%s", expect[i].name);
        cr_assert_eq(((uintptr_t)t->data - (uintptr_t)llm_gguf_tensor_at(g, 0)->data) %
                         FIXTURE_ALIGNMENT,
                     0);
    }
    cr_assert_null(llm_gguf_find_tensor(g, "f3"));
    cr_assert_null(llm_gguf_tensor_at(g, 7));
    llm_gguf_close(g);
}

Test(core_gguf, f32_tensor_holds_the_values_python_wrote)
{
    llm_gguf *g = open_fixture();
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, "f32");
    float out[105];
    cr_assert_eq(llm_gguf_tensor_to_f32(t, out), 0);
    for (int i = 0; i < 105; i++) cr_assert_eq(out[i], fixture_value(i), "element %d", i);
    llm_gguf_close(g);
}

/* Each converted tensor equals what numpy decoded from the same bytes (the
 * ".expect" twin), with both the AVX2 and the scalar path, and lies within
 * the format's rounding of the values written. */
Test(core_gguf, f16_bf16_q8_0_convert_exactly_as_numpy_decodes_them)
{
    llm_gguf *g = open_fixture();
    struct {
        const char *name;
        float rel_tol, abs_tol; /* the format's rounding of test_values() in [-8, 8) */
    } cases[] = {
        {"f16", 0x1p-11f, 0},
        {"bf16", 0x1p-8f, 0},
        /* half a step of amax/127, plus the f16 rounding of the scale times 127 */
        {"q8_0", 0, 8.0f / 127 / 2 + 8.0f * 0x1p-11f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char name[32];
        snprintf(name, sizeof name, "%s.expect", cases[c].name);
        const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, cases[c].name);
        const struct llm_gguf_tensor *e = llm_gguf_find_tensor(g, name);
        cr_assert(t && e && t->n_elements == e->n_elements);
        uint64_t n = t->n_elements;
        float *got = util_xmalloc(n * 4), *ref = util_xmalloc(n * 4), *expect = util_xmalloc(n * 4);
        cr_assert_eq(llm_gguf_tensor_to_f32(t, got), 0);
        cr_assert_eq(llm_gguf_tensor_to_f32_scalar(t, ref), 0);
        cr_assert_eq(llm_gguf_tensor_to_f32(e, expect), 0);
        for (uint64_t i = 0; i < n; i++) {
            cr_assert_eq(got[i], expect[i], "%s[%llu]", cases[c].name, (unsigned long long)i);
            cr_assert_eq(ref[i], expect[i], "%s[%llu] scalar", cases[c].name,
                         (unsigned long long)i);
            float x = fixture_value(i);
            cr_assert_leq(fabsf(got[i] - x), fabsf(x) * cases[c].rel_tol + cases[c].abs_tol,
                          "%s[%llu] = %g, written %g", cases[c].name, (unsigned long long)i, got[i],
                          x);
        }
        free(got);
        free(ref);
        free(expect);
    }
    llm_gguf_close(g);
}

Test(core_gguf, rows_convert_like_the_matching_slice_of_the_whole_tensor)
{
    llm_gguf *g = open_fixture();
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, "q8_0");
    float all[192], rows[128];
    cr_assert_eq(llm_gguf_tensor_to_f32(t, all), 0);
    cr_assert_eq(llm_gguf_tensor_rows_to_f32(t, 1, 2, rows), 0);
    cr_assert_arr_eq(rows, all + 64, sizeof rows);
    cr_assert_eq(llm_gguf_tensor_rows_to_f32(t, 2, 2, rows), -ERANGE);
    cr_assert_eq(llm_gguf_tensor_rows_to_f32(t, 4, 0, rows), -ERANGE);
    cr_assert_eq(llm_gguf_tensor_rows_to_f32(t, 3, 0, rows), 0);
    llm_gguf_close(g);
}

/* The AVX2 kernels against the scalar reference on random bit patterns
 * (NaN, inf and subnormals included), awkward sizes and unaligned data. */
Test(core_gguf, simd_conversion_matches_the_scalar_reference_on_awkward_sizes)
{
    static const uint64_t sizes[] = {1, 7, 8, 9, 31, 32, 33, 127, 129, 1023};
    struct util_rng rng;
    util_rng_seed(&rng, 1234);
    uint8_t *bytes = util_xmalloc(1 + 34 * 1024);
    for (size_t i = 0; i < 1 + 34 * 1024; i++) bytes[i] = (uint8_t)util_rng_next(&rng);
    float *simd = util_xmalloc(32 * 1024 * 4), *ref = util_xmalloc(32 * 1024 * 4);
    enum llm_ggml_type types[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0};
    for (size_t ti = 0; ti < 4; ti++)
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            /* Q8_0 rows come in blocks of 32: size n means n blocks. */
            uint64_t n = types[ti] == GGML_TYPE_Q8_0 ? 32 * sizes[si] : sizes[si];
            struct llm_gguf_tensor t = {
                .n_dims = 1,
                .dims = {n, 1, 1, 1},
                .n_elements = n,
                .type = types[ti],
                .data = bytes + 1, /* odd address: the kernels must not assume alignment */
            };
            cr_assert_eq(llm_gguf_tensor_to_f32(&t, simd), 0);
            cr_assert_eq(llm_gguf_tensor_to_f32_scalar(&t, ref), 0);
            for (uint64_t i = 0; i < n; i++)
                cr_assert(same_float(simd[i], ref[i]), "type %d n %llu [%llu]: %g vs %g", types[ti],
                          (unsigned long long)n, (unsigned long long)i, simd[i], ref[i]);
        }
    free(bytes);
    free(simd);
    free(ref);
}

Test(core_gguf, conversion_refuses_a_type_it_does_not_read)
{
    uint8_t data[64] = {0};
    float out[16];
    struct llm_gguf_tensor t = {.n_dims = 1,
                                .dims = {16, 1, 1, 1},
                                .n_elements = 16,
                                .type = (enum llm_ggml_type)2 /* Q4_0 */,
                                .data = data};
    cr_assert_eq(llm_gguf_tensor_to_f32(&t, out), -EINVAL);
    cr_assert_eq(llm_gguf_tensor_to_f32_scalar(&t, out), -EINVAL);
}

/* ------------------------------------------------------- truncated files */

Test(core_gguf, every_truncation_of_a_valid_file_fails_cleanly)
{
    size_t size;
    char *file = read_file(FIXTURE, &size);
    llm_gguf *g;
    char err[256];
    cr_assert_eq(llm_gguf_open_memory(file, size, &g, err, sizeof err), 0, "%s", err);
    /* The file may end with padding after the last tensor; cutting only
     * padding leaves a valid file. */
    uint64_t end = 0;
    for (uint64_t i = 0; i < llm_gguf_tensor_count(g); i++) {
        const struct llm_gguf_tensor *t = llm_gguf_tensor_at(g, i);
        uint64_t e = (uint64_t)((const char *)t->data - file) + t->n_bytes;
        end = e > end ? e : end;
    }
    llm_gguf_close(g);
    cr_assert_gt(end, size - FIXTURE_ALIGNMENT);

    for (size_t len = 0; len < size; len++) {
        /* A fresh buffer of exactly len bytes, so ASan sees any over-read. */
        char *prefix = util_xmalloc(len ? len : 1);
        memcpy(prefix, file, len);
        err[0] = 0;
        g = (llm_gguf *)1;
        int rc = llm_gguf_open_memory(prefix, len, &g, err, sizeof err);
        if (len < end) {
            cr_assert_eq(rc, -EBADMSG, "prefix of %zu bytes: rc %d", len, rc);
            cr_assert_null(g);
            cr_assert(strstr(err, "past the end") || strstr(err, "needs at least"),
                      "prefix of %zu bytes: %s", len, err);
        } else {
            cr_assert_eq(rc, 0, "prefix of %zu bytes: %s", len, err);
            llm_gguf_close(g);
        }
        free(prefix);
    }
    free(file);
}

/* --------------------------------------------------------- malformed files */

/* Opens b's bytes from a buffer of exactly that size; asserts the outcome
 * and that the message contains `expect` (when given). */
static void assert_open_fails(const struct gguf_builder *b, const char *expect)
{
    uint8_t *copy = util_xmalloc(b->len ? b->len : 1);
    memcpy(copy, b->buf, b->len);
    llm_gguf *g = NULL;
    char err[256] = "";
    int rc = llm_gguf_open_memory(copy, b->len, &g, err, sizeof err);
    cr_assert_eq(rc, -EBADMSG, "expected failure with \"%s\", got rc %d (%s)", expect, rc, err);
    cr_assert_null(g);
    cr_assert(strstr(err, expect), "message \"%s\" lacks \"%s\"", err, expect);
    free(copy);
}

static llm_gguf *assert_open_succeeds(const struct gguf_builder *b)
{
    llm_gguf *g = NULL;
    char err[256] = "";
    int rc = llm_gguf_open_memory(b->buf, b->len, &g, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return g;
}

Test(core_gguf, a_hand_made_file_with_default_alignment_opens)
{
    struct gguf_builder b = {0};
    const uint64_t dims[] = {4, 2};
    gb_header(&b, GB_VERSION, 2, 1);
    gb_kv_u32(&b, "answer", 42);
    gb_tensor(&b, "a", 2, dims, GGML_TYPE_F32, 0);
    gb_tensor(&b, "b", 1, dims, GGML_TYPE_F16, 32); /* 32 bytes of "a" end exactly at 32 */
    gb_data(&b, 32, 40);
    llm_gguf *g = assert_open_succeeds(&b);
    cr_assert_eq(llm_gguf_alignment(g), 32);
    cr_assert_eq(llm_gguf_data_offset(g) % 32, 0);
    cr_assert_eq((const uint8_t *)llm_gguf_find_tensor(g, "a")->data,
                 b.buf + llm_gguf_data_offset(g));
    cr_assert_eq((const uint8_t *)llm_gguf_find_tensor(g, "b")->data,
                 b.buf + llm_gguf_data_offset(g) + 32);
    uint32_t v;
    cr_assert_eq(llm_gguf_get_u32(g, "answer", &v), 0);
    cr_assert_eq(v, 42);
    llm_gguf_close(g);
    gb_free(&b);
}

Test(core_gguf, wrong_magic_or_version_is_named)
{
    struct gguf_builder b = {0};
    gb_put(&b, "GGML", 4);
    gb_u32(&b, 3);
    gb_u64(&b, 0);
    gb_u64(&b, 0);
    assert_open_fails(&b, "not a GGUF file");

    for (uint32_t v = 1; v <= 2; v++) {
        b.len = 0;
        gb_header(&b, v, 0, 0);
        char expect[64];
        snprintf(expect, sizeof expect, "GGUF version %u is not supported", v);
        assert_open_fails(&b, expect);
    }
    b.len = 0;
    gb_header(&b, 3u << 24, 0, 0); /* version 3 written big-endian */
    assert_open_fails(&b, "big-endian");
    b.len = 0;
    gb_header(&b, 4, 0, 0);
    assert_open_fails(&b, "GGUF version 4 is not supported");
    b.len = 0;
    assert_open_fails(&b, "magic (4 bytes at offset 0) runs past the end");
    gb_free(&b);
}

Test(core_gguf, bogus_counts_fail_at_the_end_of_the_file_without_a_huge_allocation)
{
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 0, UINT64_MAX / 2);
    gb_kv_u32(&b, "k", 1);
    assert_open_fails(&b, "metadata key #1: key (8 bytes at offset");

    b.len = 0;
    gb_header(&b, GB_VERSION, UINT64_MAX, 0);
    assert_open_fails(&b, "tensor #0: name (8 bytes");
    gb_free(&b);
}

Test(core_gguf, bad_keys_and_value_types_are_named)
{
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 0, 1);
    gb_u64(&b, 1ull << 40); /* key length */
    gb_put(&b, "abc", 3);
    assert_open_fails(&b, "metadata key #0: key (1099511627776 bytes at offset 32) runs past");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 2);
    gb_kv_u32(&b, "first", 1);
    gb_str(&b, "second");
    gb_u32(&b, 13); /* one past float64, the last GGUF type */
    assert_open_fails(&b, "metadata key #1 'second': value type 13 is not a GGUF type");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "s");
    gb_u32(&b, GGUF_TYPE_STRING);
    gb_u64(&b, 100);
    gb_put(&b, "short", 5);
    assert_open_fails(&b, "'s': string value (100 bytes at offset 45) runs past the end");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "flag");
    gb_u32(&b, GGUF_TYPE_BOOL);
    gb_put(&b, "\x02", 1);
    assert_open_fails(&b, "'flag': bool value 2 is neither 0 nor 1");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 2);
    gb_kv_u32(&b, "same", 1);
    gb_kv_u32(&b, "same", 2);
    assert_open_fails(&b, "metadata key #1 'same': duplicate of key #0");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "bad\n\x01name");
    gb_u32(&b, 99);
    assert_open_fails(&b, "'bad??name': value type 99");
    gb_free(&b);
}

Test(core_gguf, bad_arrays_are_named)
{
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "nested");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u64(&b, 1);
    assert_open_fails(&b, "'nested': nested arrays are not supported");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, 200);
    assert_open_fails(&b, "'a': array element type 200 is not a GGUF type");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_UINT32);
    gb_u64(&b, 1000);
    gb_u32(&b, 7);
    assert_open_fails(&b, "'a': array of 1000 uint32 (4000 bytes at offset");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_UINT64);
    gb_u64(&b, 1ull << 62); /* times 8 bytes overflows 64 bits */
    assert_open_fails(&b, "'a': array of 4611686018427387904 uint64 overflows");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_STRING);
    gb_u64(&b, 1ull << 61);
    gb_str(&b, "x");
    assert_open_fails(&b, "'a': array of 2305843009213693952 strings needs at least");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_STRING);
    gb_u64(&b, 3);
    gb_str(&b, "x");
    gb_u64(&b, 100); /* longer than what follows */
    gb_str(&b, "y");
    assert_open_fails(&b, "'a': string 1 of the array (100 bytes at offset");

    b.len = 0;
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "a");
    gb_u32(&b, GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_BOOL);
    gb_u64(&b, 3);
    gb_put(&b, "\x01\x00\x05", 3);
    assert_open_fails(&b, "'a': bool value 5 is neither 0 nor 1");
    gb_free(&b);
}

Test(core_gguf, bad_alignment_is_refused)
{
    static const uint32_t bad[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct gguf_builder b = {0};
        gb_header(&b, GB_VERSION, 0, 1);
        gb_kv_u32(&b, "general.alignment", bad[i]);
        char expect[64];
        snprintf(expect, sizeof expect, "general.alignment: %u is not a power of two", bad[i]);
        assert_open_fails(&b, expect);
        gb_free(&b);
    }
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 0, 1);
    gb_str(&b, "general.alignment");
    gb_u32(&b, GGUF_TYPE_FLOAT32);
    gb_u32(&b, 0x42000000u); /* 32.0f */
    assert_open_fails(&b, "general.alignment: must be an unsigned 32-bit integer");
    gb_free(&b);
}

Test(core_gguf, bad_tensor_infos_are_named)
{
    const uint64_t dims[] = {32, 2, 1, 1, 1};
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 5, dims, GGML_TYPE_F32, 0);
    assert_open_fails(&b, "tensor #0 'w': 5 dimensions; at most 4 are supported");

    const uint64_t huge[] = {1ull << 32, 1ull << 32};
    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, huge, GGML_TYPE_F32, 0);
    assert_open_fails(&b, "tensor #0 'w': element count overflows 64 bits at dimension 1");

    const uint64_t big[] = {1ull << 62};
    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 1, big, GGML_TYPE_F32, 0);
    assert_open_fails(&b, "tensor #0 'w': size of 4611686018427387904 elements overflows");

    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, dims, 12, 0); /* ggml's Q4_K */
    assert_open_fails(&b, "tensor #0 'w': tensor type 12 (Q4_K) is not supported");

    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, dims, 31, 0);
    assert_open_fails(&b, "tensor type 31 (unknown) is not supported");

    const uint64_t odd[] = {33, 2};
    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, odd, GGML_TYPE_Q8_0, 0);
    assert_open_fails(&b, "tensor #0 'w': row length 33 is not a multiple of the Q8_0 block (32)");

    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, dims, GGML_TYPE_F32, 4);
    assert_open_fails(&b, "tensor #0 'w': data offset 4 is not a multiple of the alignment 32");

    b.len = 0;
    gb_header(&b, GB_VERSION, 2, 0);
    gb_tensor(&b, "w", 2, dims, GGML_TYPE_F32, 0);
    gb_tensor(&b, "v", 2, dims, GGML_TYPE_F32, 256);
    gb_data(&b, 32, 256 + 255); /* one byte short of "v" */
    assert_open_fails(&b, "tensor #1 'v': data (256 bytes at offset 256 of the data section");

    b.len = 0;
    gb_header(&b, GB_VERSION, 1, 0);
    gb_tensor(&b, "w", 2, dims, GGML_TYPE_F32, 1ull << 63);
    gb_data(&b, 32, 256);
    assert_open_fails(&b, "runs past the end of the file");

    b.len = 0;
    gb_header(&b, GB_VERSION, 2, 0);
    gb_tensor(&b, "w", 2, dims, GGML_TYPE_F32, 0);
    gb_tensor(&b, "w", 2, dims, GGML_TYPE_F32, 256);
    gb_data(&b, 32, 512);
    assert_open_fails(&b, "tensor #1 'w': duplicate of tensor #0");
    gb_free(&b);
}

Test(core_gguf, opening_a_path_reports_the_path_and_the_errno)
{
    llm_gguf *g = (llm_gguf *)1;
    char err[256];
    cr_assert_eq(llm_gguf_open("tests/data/no-such-file.gguf", &g, err, sizeof err), -ENOENT);
    cr_assert_null(g);
    cr_assert(strstr(err, "no-such-file.gguf"), "%s", err);
    cr_assert_eq(llm_gguf_open("tests/data", &g, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "not a regular file"), "%s", err);

    char path[] = "/tmp/llmd-gguf-test-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(llm_gguf_open(path, &g, err, sizeof err), -EBADMSG);
    cr_assert(strstr(err, path) && strstr(err, "magic"), "%s", err);
    unlink(path);
}

Test(core_gguf, the_writer_copies_metadata_byte_for_byte_and_reads_back)
{
    llm_gguf *src;
    char err[256];
    cr_assert_eq(llm_gguf_open("tests/data/gguf-types.gguf", &src, err, sizeof err), 0, "%s", err);
    llm_gguf_writer *w = llm_gguf_writer_create();
    for (uint64_t i = 0; i < llm_gguf_kv_count(src); i++) {
        struct llm_gguf_string key;
        enum llm_gguf_type type;
        const void *value;
        uint64_t len;
        cr_assert_eq(llm_gguf_kv_raw(src, i, &key, &type, &value, &len), 0);
        if (key.len == 17 && memcmp(key.ptr, "general.alignment", 17) == 0) continue;
        llm_gguf_writer_kv_raw(w, key.ptr, key.len, type, value, len);
    }
    llm_gguf_writer_kv_string(w, "new.string", "hello");
    llm_gguf_writer_kv_i32(w, "new.i32", -5);
    llm_gguf_writer_kv_f32(w, "new.f32", 0.25f);
    llm_gguf_writer_kv_bool(w, "new.bool", true);
    static const int8_t blob[37] = {1, -2, 3};
    static const float vec[5] = {1, 2, 3, 4, 5};
    uint64_t blob_dims[1] = {37}, vec_dims[2] = {5, 1};
    llm_gguf_writer_tensor(w, "blob", 4, 1, blob_dims, GGML_TYPE_I8, blob, 37);
    llm_gguf_writer_tensor(w, "vec", 3, 2, vec_dims, GGML_TYPE_F32, vec, sizeof vec);
    char path[] = "/tmp/llmd-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(llm_gguf_writer_save(w, path, err, sizeof err), 0, "%s", err);
    llm_gguf_writer_free(w);

    llm_gguf *g;
    cr_assert_eq(llm_gguf_open(path, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_gguf_alignment(g), 64, "the writer aligns to 64 and says so");
    for (uint64_t i = 0, j = 1; i < llm_gguf_kv_count(src); i++) {
        struct llm_gguf_string ka, kb;
        enum llm_gguf_type ta, tb;
        const void *va, *vb;
        uint64_t la, lb;
        llm_gguf_kv_raw(src, i, &ka, &ta, &va, &la);
        if (ka.len == 17 && memcmp(ka.ptr, "general.alignment", 17) == 0) continue;
        cr_assert_eq(llm_gguf_kv_raw(g, j++, &kb, &tb, &vb, &lb), 0);
        cr_assert(ka.len == kb.len && memcmp(ka.ptr, kb.ptr, ka.len) == 0);
        cr_assert(ta == tb && la == lb && memcmp(va, vb, la) == 0, "key %.*s", (int)ka.len, ka.ptr);
    }
    struct llm_gguf_string s;
    int32_t i32;
    float f32;
    bool b;
    cr_assert_eq(llm_gguf_get_string(g, "new.string", &s), 0);
    cr_assert(s.len == 5 && memcmp(s.ptr, "hello", 5) == 0);
    cr_assert(llm_gguf_get_i32(g, "new.i32", &i32) == 0 && i32 == -5);
    cr_assert(llm_gguf_get_f32(g, "new.f32", &f32) == 0 && f32 == 0.25f);
    cr_assert(llm_gguf_get_bool(g, "new.bool", &b) == 0 && b);
    const struct llm_gguf_tensor *tb = llm_gguf_find_tensor(g, "blob"),
                                 *tv = llm_gguf_find_tensor(g, "vec");
    cr_assert(tb && tb->type == GGML_TYPE_I8 && tb->n_bytes == 37 &&
              memcmp(tb->data, blob, 37) == 0);
    float out[37];
    cr_assert_eq(llm_gguf_tensor_to_f32(tb, out), 0);
    cr_assert(out[0] == 1.0f && out[1] == -2.0f && out[36] == 0.0f);
    cr_assert(tv && tv->n_dims == 2 && memcmp(tv->data, vec, sizeof vec) == 0);
    cr_assert_eq((uintptr_t)tv->data % 64, 0);
    llm_gguf_close(g);
    llm_gguf_close(src);
    remove(path);
}

/*
 * fuzz_gguf: opens arbitrary bytes as a GGUF file from memory, then reads
 * everything the handle offers: every key through every getter, every
 * string array element, every tensor info, and small tensors converted to
 * float32 by both the AVX2 and the scalar path (which must agree).
 */
#include "core/gguf.h"
#include "util/util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_MAX_CONVERT 4096 /* elements; larger tensors are only looked up */

static void fuzz_walk_metadata(const llm_gguf *g)
{
    for (uint64_t i = 0; i < llm_gguf_kv_count(g); i++) {
        struct llm_gguf_string key;
        enum llm_gguf_type type;
        UTIL_CHECK(llm_gguf_kv_at(g, i, &key, &type) == 0);
        UTIL_CHECK(strcmp(llm_gguf_type_name(type), "unknown") != 0);
        const void *raw;
        uint64_t raw_len;
        struct llm_gguf_string raw_key;
        enum llm_gguf_type raw_type;
        UTIL_CHECK(llm_gguf_kv_raw(g, i, &raw_key, &raw_type, &raw, &raw_len) == 0);
        UTIL_CHECK(raw_type == type && raw_key.ptr == key.ptr && raw_len > 0);
        volatile uint8_t raw_last = ((const uint8_t *)raw)[raw_len - 1];
        (void)raw_last;
        /* The getters take C strings: a key with a NUL inside is cut there. */
        char *name = util_xmalloc(key.len + 1);
        memcpy(name, key.ptr, key.len);
        name[key.len] = 0;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f32;
        double f64;
        bool b;
        struct llm_gguf_string s;
        enum llm_gguf_type et;
        uint64_t count;
        const void *data;
        (void)llm_gguf_get_u32(g, name, &u32);
        (void)llm_gguf_get_i32(g, name, &i32);
        (void)llm_gguf_get_u64(g, name, &u64);
        (void)llm_gguf_get_i64(g, name, &i64);
        (void)llm_gguf_get_f32(g, name, &f32);
        (void)llm_gguf_get_f64(g, name, &f64);
        (void)llm_gguf_get_bool(g, name, &b);
        if (llm_gguf_get_string(g, name, &s) == 0 && s.len) {
            volatile char last = s.ptr[s.len - 1];
            (void)last;
        }
        if (llm_gguf_get_array(g, name, &et, &count, &data) == 0) {
            for (uint64_t j = 0; et == GGUF_TYPE_STRING && j < count; j++) {
                UTIL_CHECK(llm_gguf_get_array_string(g, name, j, &s) == 0);
                if (s.len) {
                    volatile char last = s.ptr[s.len - 1];
                    (void)last;
                }
            }
            UTIL_CHECK(llm_gguf_get_array_string(g, name, count, &s) != 0);
        }
        free(name);
    }
}

static void fuzz_walk_tensors(const llm_gguf *g)
{
    for (uint64_t i = 0; i < llm_gguf_tensor_count(g); i++) {
        const struct llm_gguf_tensor *t = llm_gguf_tensor_at(g, i);
        UTIL_CHECK(t && t->n_dims >= 0 && t->n_dims <= 4);
        if (t->n_bytes) {
            volatile uint8_t last = ((const uint8_t *)t->data)[t->n_bytes - 1];
            (void)last;
        }
        if (t->n_elements > FUZZ_MAX_CONVERT) continue;
        float *simd = util_xmalloc((t->n_elements + 1) * sizeof(float));
        float *ref = util_xmalloc((t->n_elements + 1) * sizeof(float));
        UTIL_CHECK(llm_gguf_tensor_to_f32(t, simd) == 0);
        UTIL_CHECK(llm_gguf_tensor_to_f32_scalar(t, ref) == 0);
        for (uint64_t j = 0; j < t->n_elements; j++)
            UTIL_CHECK((isnan(simd[j]) && isnan(ref[j])) || memcmp(&simd[j], &ref[j], 4) == 0);
        free(simd);
        free(ref);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    llm_gguf *g;
    char err[256];
    if (llm_gguf_open_memory(data, size, &g, err, sizeof err) != 0) {
        UTIL_CHECK(err[0] != 0);
        return 0;
    }
    fuzz_walk_metadata(g);
    fuzz_walk_tensors(g);
    llm_gguf_close(g);
    return 0;
}

/*
 * gguf_builder.h: writes GGUF v3 files field by field, for tests that need
 * hand-made or malformed files (tests/test_core_gguf.c,
 * tests/test_core_tokenizer.c). Each gb_* call appends one field in the
 * order and width the format gives it: little-endian, strings as a u64
 * length and the bytes.
 */
#ifndef LLMD_TESTS_GGUF_BUILDER_H
#define LLMD_TESTS_GGUF_BUILDER_H

#include "core/gguf.h"
#include "util/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GB_VERSION 3 /* the GGUF version llmd reads */

struct gguf_builder {
    uint8_t *buf;
    size_t len, cap;
};

static inline void gb_put(struct gguf_builder *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = 2 * (b->len + n) + 64;
        b->buf = util_xrealloc(b->buf, b->cap);
    }
    if (n) memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static inline void gb_u32(struct gguf_builder *b, uint32_t v)
{
    gb_put(b, &v, 4);
}
static inline void gb_u64(struct gguf_builder *b, uint64_t v)
{
    gb_put(b, &v, 8);
}

static inline void gb_str(struct gguf_builder *b, const char *s)
{
    gb_u64(b, strlen(s));
    gb_put(b, s, strlen(s));
}

static inline void gb_header(struct gguf_builder *b, uint32_t version, uint64_t n_tensors,
                             uint64_t n_kv)
{
    gb_put(b, "GGUF", 4);
    gb_u32(b, version);
    gb_u64(b, n_tensors);
    gb_u64(b, n_kv);
}

static inline void gb_kv_u32(struct gguf_builder *b, const char *key, uint32_t v)
{
    gb_str(b, key);
    gb_u32(b, GGUF_TYPE_UINT32);
    gb_u32(b, v);
}

static inline void gb_kv_bool(struct gguf_builder *b, const char *key, bool v)
{
    uint8_t byte = v;
    gb_str(b, key);
    gb_u32(b, GGUF_TYPE_BOOL);
    gb_put(b, &byte, 1);
}

static inline void gb_kv_string(struct gguf_builder *b, const char *key, const char *s)
{
    gb_str(b, key);
    gb_u32(b, GGUF_TYPE_STRING);
    gb_str(b, s);
}

/* The key and array header; the caller appends the `count` elements. */
static inline void gb_kv_array(struct gguf_builder *b, const char *key, enum llm_gguf_type elem,
                               uint64_t count)
{
    gb_str(b, key);
    gb_u32(b, GGUF_TYPE_ARRAY);
    gb_u32(b, elem);
    gb_u64(b, count);
}

/* A tensor info with n_dims dims taken from dims[]. */
static inline void gb_tensor(struct gguf_builder *b, const char *name, uint32_t n_dims,
                             const uint64_t *dims, uint32_t type, uint64_t offset)
{
    gb_str(b, name);
    gb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) gb_u64(b, dims[i]);
    gb_u32(b, type);
    gb_u64(b, offset);
}

/* Zeros up to the next multiple of `alignment`, then n zero bytes of data. */
static inline void gb_data(struct gguf_builder *b, size_t alignment, size_t n)
{
    size_t pad = (alignment - b->len % alignment) % alignment;
    uint8_t *zeros = util_xcalloc(1, pad + n + 1);
    gb_put(b, zeros, pad + n);
    free(zeros);
}

static inline void gb_free(struct gguf_builder *b)
{
    free(b->buf);
    *b = (struct gguf_builder){0};
}

#endif

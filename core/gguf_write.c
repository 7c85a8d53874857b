/*
 * gguf_write.c: the GGUF v3 writer (see gguf.c for the layout). Metadata
 * and tensor infos are serialized into byte buffers as they are added;
 * save writes them after the header, pads to the alignment and writes each
 * tensor's data at its offset.
 */
#include "core/gguf.h"
#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 64: a cache line and an AVX-512 register, so that data mapped from the
 * file can be read in place by aligned loads (quantized layers). Written
 * as general.alignment by save; callers must not write that key. */
#define WRITER_ALIGNMENT 64
#define ALIGNMENT_KEY    "general.alignment"

struct bytes {
    uint8_t *p;
    size_t len, cap;
};

struct writer_tensor {
    const void *data;
    uint64_t n_bytes, offset;
};

struct llm_gguf_writer {
    struct bytes kvs, infos;
    uint64_t n_kv;
    struct writer_tensor *tensors;
    uint64_t n_tensors;
    uint64_t data_bytes; /* the data section so far, padded */
};

static void put(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = 2 * (b->len + n) + 256;
        b->p = util_xrealloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void put_u32(struct bytes *b, uint32_t v)
{
    put(b, &v, 4);
}
static void put_u64(struct bytes *b, uint64_t v)
{
    put(b, &v, 8);
}

static void put_string(struct bytes *b, const char *s, size_t len)
{
    put_u64(b, len);
    put(b, s, len);
}

llm_gguf_writer *llm_gguf_writer_create(void)
{
    return util_xcalloc(1, sizeof(llm_gguf_writer));
}

void llm_gguf_writer_free(llm_gguf_writer *w)
{
    if (!w) return;
    free(w->kvs.p);
    free(w->infos.p);
    free(w->tensors);
    free(w);
}

void llm_gguf_writer_kv_raw(llm_gguf_writer *w, const char *key, size_t key_len,
                            enum llm_gguf_type type, const void *value, size_t value_len)
{
    UTIL_CHECK(!(key_len == sizeof ALIGNMENT_KEY - 1 && memcmp(key, ALIGNMENT_KEY, key_len) == 0));
    put_string(&w->kvs, key, key_len);
    put_u32(&w->kvs, (uint32_t)type);
    put(&w->kvs, value, value_len);
    w->n_kv++;
}

void llm_gguf_writer_kv_u32(llm_gguf_writer *w, const char *key, uint32_t v)
{
    llm_gguf_writer_kv_raw(w, key, strlen(key), GGUF_TYPE_UINT32, &v, 4);
}

void llm_gguf_writer_kv_i32(llm_gguf_writer *w, const char *key, int32_t v)
{
    llm_gguf_writer_kv_raw(w, key, strlen(key), GGUF_TYPE_INT32, &v, 4);
}

void llm_gguf_writer_kv_f32(llm_gguf_writer *w, const char *key, float v)
{
    llm_gguf_writer_kv_raw(w, key, strlen(key), GGUF_TYPE_FLOAT32, &v, 4);
}

void llm_gguf_writer_kv_bool(llm_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    llm_gguf_writer_kv_raw(w, key, strlen(key), GGUF_TYPE_BOOL, &b, 1);
}

void llm_gguf_writer_kv_string(llm_gguf_writer *w, const char *key, const char *v)
{
    struct bytes value = {0};
    put_string(&value, v, strlen(v));
    llm_gguf_writer_kv_raw(w, key, strlen(key), GGUF_TYPE_STRING, value.p, value.len);
    free(value.p);
}

void llm_gguf_writer_tensor(llm_gguf_writer *w, const char *name, size_t name_len, int n_dims,
                            const uint64_t *dims, enum llm_ggml_type type, const void *data,
                            uint64_t n_bytes)
{
    UTIL_CHECK(n_dims >= 1 && n_dims <= 4);
    put_string(&w->infos, name, name_len);
    put_u32(&w->infos, (uint32_t)n_dims);
    for (int d = 0; d < n_dims; d++) put_u64(&w->infos, dims[d]);
    put_u32(&w->infos, (uint32_t)type);
    put_u64(&w->infos, w->data_bytes);
    w->tensors = util_xrealloc(w->tensors, (w->n_tensors + 1) * sizeof *w->tensors);
    w->tensors[w->n_tensors++] = (struct writer_tensor){data, n_bytes, w->data_bytes};
    w->data_bytes += (n_bytes + WRITER_ALIGNMENT - 1) / WRITER_ALIGNMENT * WRITER_ALIGNMENT;
}

static int write_all(FILE *f, const llm_gguf_writer *w)
{
    static const uint8_t zeros[WRITER_ALIGNMENT];
    struct bytes head = {0};
    put(&head, "GGUF", 4);
    put_u32(&head, 3);
    put_u64(&head, w->n_tensors);
    put_u64(&head, w->n_kv + 1);
    put_string(&head, ALIGNMENT_KEY, sizeof ALIGNMENT_KEY - 1);
    put_u32(&head, GGUF_TYPE_UINT32);
    put_u32(&head, WRITER_ALIGNMENT);
    size_t meta = head.len + w->kvs.len + w->infos.len;
    size_t pad = (WRITER_ALIGNMENT - meta % WRITER_ALIGNMENT) % WRITER_ALIGNMENT;
    bool ok = fwrite(head.p, 1, head.len, f) == head.len &&
              fwrite(w->kvs.p, 1, w->kvs.len, f) == w->kvs.len &&
              fwrite(w->infos.p, 1, w->infos.len, f) == w->infos.len &&
              fwrite(zeros, 1, pad, f) == pad;
    free(head.p);
    uint64_t at = 0;
    for (uint64_t i = 0; i < w->n_tensors && ok; i++) {
        const struct writer_tensor *t = &w->tensors[i];
        size_t gap = (size_t)(t->offset - at);
        ok = fwrite(zeros, 1, gap, f) == gap && fwrite(t->data, 1, t->n_bytes, f) == t->n_bytes;
        at = t->offset + t->n_bytes;
    }
    return ok ? 0 : -EIO;
}

int llm_gguf_writer_save(const llm_gguf_writer *w, const char *path, char *err, size_t err_len)
{
    size_t n = strlen(path) + 8;
    char *tmp = util_xmalloc(n);
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int rc = f ? 0 : -errno;
    if (f) {
        rc = write_all(f, w);
        if (fclose(f) != 0 && rc == 0) rc = -errno;
        if (rc == 0 && rename(tmp, path) != 0) rc = -errno;
        if (rc) remove(tmp);
    }
    if (rc && err && err_len) snprintf(err, err_len, "%s: %s", path, strerror(-rc));
    free(tmp);
    return rc;
}

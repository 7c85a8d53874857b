/*
 * gguf: a reader for GGUF v3 model files, memory-mapped.
 *
 * Everything read from the file is checked against its size before use:
 * counts, string lengths, array lengths, tensor dims, offsets and alignment.
 * A truncated or malformed file gives an error with a message, never a crash
 * or a read out of bounds. Strings point into the mapping and are not
 * NUL-terminated (use the length).
 *
 * Refused at open: versions other than 3, nested arrays, duplicate keys or
 * tensor names, a `general.alignment` that is not a power of two, more than
 * 4 dims, and tensor types other than F32, F16, BF16, Q8_0 and I8 (plain
 * int8 values; llmd also stores its quantized layers in 1-D I8 tensors as
 * opaque blobs, see core/model_file.c).
 */
#ifndef LLMD_CORE_GGUF_H
#define LLMD_CORE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum llm_gguf_type {
    GGUF_TYPE_UINT8 = 0, GGUF_TYPE_INT8 = 1, GGUF_TYPE_UINT16 = 2, GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4, GGUF_TYPE_INT32 = 5, GGUF_TYPE_FLOAT32 = 6, GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8, GGUF_TYPE_ARRAY = 9, GGUF_TYPE_UINT64 = 10, GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
};

/* Tensor types we read (ggml's numbering). */
enum llm_ggml_type {
    GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q8_0 = 8, GGML_TYPE_I8 = 24, GGML_TYPE_BF16 = 30
};

struct llm_gguf_string {
    const char *ptr;
    uint64_t len;
};

struct llm_gguf_tensor {
    struct llm_gguf_string name;
    int n_dims;
    uint64_t dims[4];    /* dims[0] varies fastest (a row's length) */
    uint64_t n_elements;
    enum llm_ggml_type type;
    const void *data;    /* into the mapping */
    uint64_t n_bytes;
};

typedef struct llm_gguf llm_gguf;

/* Opens and maps a file / parses a buffer the caller keeps alive until
 * close. On failure returns -errno (-EBADMSG for a malformed file), sets
 * *out to NULL and writes a message into err (which key or tensor, what is
 * wrong). Tensor data lies at a multiple of `general.alignment` from the
 * start of the file (so a mapped file's tensors are aligned in memory; a
 * buffer's only as well as the buffer is). Everything the handle hands out
 * lives until llm_gguf_close; close(NULL) does nothing. A handle is
 * read-only: any number of threads may use it at once. */
int llm_gguf_open(const char *path, llm_gguf **out, char *err, size_t err_len);
int llm_gguf_open_memory(const void *data, size_t size, llm_gguf **out, char *err, size_t err_len);
void llm_gguf_close(llm_gguf *gguf);

/* Metadata lookups: 0, -ENOENT (no such key), -EINVAL (wrong type) or
 * -ERANGE (an integer that does not fit, an index past the end). The
 * integer getters accept any integer type whose value fits; the float
 * getters accept float32 and float64. */
int llm_gguf_get_u32(const llm_gguf *gguf, const char *key, uint32_t *out);
int llm_gguf_get_i32(const llm_gguf *gguf, const char *key, int32_t *out);
int llm_gguf_get_u64(const llm_gguf *gguf, const char *key, uint64_t *out);
int llm_gguf_get_i64(const llm_gguf *gguf, const char *key, int64_t *out);
int llm_gguf_get_f32(const llm_gguf *gguf, const char *key, float *out);
int llm_gguf_get_f64(const llm_gguf *gguf, const char *key, double *out);
int llm_gguf_get_bool(const llm_gguf *gguf, const char *key, bool *out);
int llm_gguf_get_string(const llm_gguf *gguf, const char *key, struct llm_gguf_string *out);
/* An array of numbers: its element type, count and data (little-endian, in
 * the mapping; may be unaligned, read with memcpy). For an array of strings
 * data points at the serialized strings; read them with
 * llm_gguf_get_array_string. Any of the out pointers may be NULL. */
int llm_gguf_get_array(const llm_gguf *gguf, const char *key, enum llm_gguf_type *elem_type,
                       uint64_t *count, const void **data);
/* Element i of an array of strings, in O(1) (the strings are indexed at open). */
int llm_gguf_get_array_string(const llm_gguf *gguf, const char *key, uint64_t i,
                              struct llm_gguf_string *out);

/* The metadata in file order, for listing it: key i and its value type
 * (-ERANGE past the end). */
uint64_t llm_gguf_kv_count(const llm_gguf *gguf);
int llm_gguf_kv_at(const llm_gguf *gguf, uint64_t i, struct llm_gguf_string *key,
                   enum llm_gguf_type *type);
/* Key i with its value exactly as serialized after the value type (for an
 * array: element type, count, elements), for copying metadata into another
 * file. -ERANGE past the end. */
int llm_gguf_kv_raw(const llm_gguf *gguf, uint64_t i, struct llm_gguf_string *key,
                    enum llm_gguf_type *type, const void **value, uint64_t *value_len);
/* "uint8" ... "float64", for messages. */
const char *llm_gguf_type_name(enum llm_gguf_type type);

/* `general.alignment` (32 when absent) and the file offset of the data section. */
uint64_t llm_gguf_alignment(const llm_gguf *gguf);
uint64_t llm_gguf_data_offset(const llm_gguf *gguf);

uint64_t llm_gguf_tensor_count(const llm_gguf *gguf);
const struct llm_gguf_tensor *llm_gguf_tensor_at(const llm_gguf *gguf, uint64_t i);
/* NULL when absent. */
const struct llm_gguf_tensor *llm_gguf_find_tensor(const llm_gguf *gguf, const char *name);
/* Converts a whole tensor to float32 (out holds n_elements). -EINVAL for a
 * type we do not read. Uses AVX2/F16C (the build's baseline). */
int llm_gguf_tensor_to_f32(const struct llm_gguf_tensor *t, float *out);
/* Converts rows [row, row + n_rows) (a row is dims[0] elements) to float32,
 * e.g. one token's embedding. -ERANGE when the rows are not all there. */
int llm_gguf_tensor_rows_to_f32(const struct llm_gguf_tensor *t, uint64_t row, uint64_t n_rows,
                                float *out);
/* The plain scalar reference of llm_gguf_tensor_to_f32, for tests. */
int llm_gguf_tensor_to_f32_scalar(const struct llm_gguf_tensor *t, float *out);

/* ---------------------------------------------------------------- writer */

/* Builds a GGUF v3 file in memory order: metadata and tensor infos are
 * collected, then llm_gguf_writer_save writes header, metadata, tensor infos,
 * padding to the alignment (32) and the data. Tensor data is not copied: it
 * must stay alive until save. Keys and tensor names must be unique (not
 * checked here; the reader refuses duplicates). */
typedef struct llm_gguf_writer llm_gguf_writer;
llm_gguf_writer *llm_gguf_writer_create(void);
void llm_gguf_writer_free(llm_gguf_writer *w);
/* A value already serialized (see llm_gguf_kv_raw). */
void llm_gguf_writer_kv_raw(llm_gguf_writer *w, const char *key, size_t key_len,
                            enum llm_gguf_type type, const void *value, size_t value_len);
void llm_gguf_writer_kv_u32(llm_gguf_writer *w, const char *key, uint32_t v);
void llm_gguf_writer_kv_i32(llm_gguf_writer *w, const char *key, int32_t v);
void llm_gguf_writer_kv_f32(llm_gguf_writer *w, const char *key, float v);
void llm_gguf_writer_kv_bool(llm_gguf_writer *w, const char *key, bool v);
void llm_gguf_writer_kv_string(llm_gguf_writer *w, const char *key, const char *v);
/* dims[0] varies fastest; n_bytes must match the type and dims. */
void llm_gguf_writer_tensor(llm_gguf_writer *w, const char *name, size_t name_len, int n_dims,
                            const uint64_t *dims, enum llm_ggml_type type, const void *data,
                            uint64_t n_bytes);
/* Writes the file (through a temporary name, renamed at the end, so that a
 * failed write leaves no half file). 0 or -errno with a message. */
int llm_gguf_writer_save(const llm_gguf_writer *w, const char *path, char *err, size_t err_len);

#endif

/*
 * gguf.c: the GGUF v3 reader.
 *
 * Layout of a file (all little-endian): magic "GGUF", u32 version, u64
 * tensor count, u64 metadata count; the key/value pairs (string key, u32
 * value type, value); the tensor infos (string name, u32 n_dims, u64 dims
 * with the fastest-varying first, u32 ggml type, u64 offset into the data
 * section); padding to `general.alignment`; the data section.
 *
 * The parser walks the file once with a cursor that checks every read
 * against the bytes left, so a bogus count or length fails at the first
 * read it would push past the end. Tables grow as entries are actually
 * parsed, never sized up front from a count in the file. String arrays are
 * indexed at open so that element i is found in O(1); keys and tensor names
 * are hashed so that lookups are O(1) and duplicates are caught.
 */
#include "core/gguf.h"

#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC             "GGUF"
#define GGUF_VERSION           3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS          4
#define GGUF_N_VALUE_TYPES     13
#define GGUF_NAME_IN_MESSAGES  64 /* bytes of a key or tensor name quoted in errors */

/* Q8_0: 32 weights share one f16 scale; weight = scale * q. */
#define GGUF_QK8_0 32
struct gguf_block_q8_0 {
    uint16_t scale; /* f16 */
    int8_t qs[GGUF_QK8_0];
};
_Static_assert(sizeof(struct gguf_block_q8_0) == 34, "Q8_0 block is an f16 and 32 int8");

/* ------------------------------------------------------------------ types */

static const char *const gguf_value_type_names[GGUF_N_VALUE_TYPES] = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

/* Bytes of one scalar value; 0 for string and array. */
static const uint8_t gguf_value_type_sizes[GGUF_N_VALUE_TYPES] = {
    [GGUF_TYPE_UINT8] = 1,  [GGUF_TYPE_INT8] = 1,  [GGUF_TYPE_UINT16] = 2,  [GGUF_TYPE_INT16] = 2,
    [GGUF_TYPE_UINT32] = 4, [GGUF_TYPE_INT32] = 4, [GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1,
    [GGUF_TYPE_UINT64] = 8, [GGUF_TYPE_INT64] = 8, [GGUF_TYPE_FLOAT64] = 8,
};

/* ggml's names, for messages about types we do not read. */
static const char *const gguf_ggml_type_names[] = {
    [0] = "F32",     [1] = "F16",      [2] = "Q4_0",   [3] = "Q4_1",    [6] = "Q5_0",
    [7] = "Q5_1",    [8] = "Q8_0",     [9] = "Q8_1",   [10] = "Q2_K",   [11] = "Q3_K",
    [12] = "Q4_K",   [13] = "Q5_K",    [14] = "Q6_K",  [15] = "Q8_K",   [16] = "IQ2_XXS",
    [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S",
    [22] = "IQ2_S",  [23] = "IQ4_XS",  [24] = "I8",    [25] = "I16",    [26] = "I32",
    [27] = "I64",    [28] = "F64",     [29] = "IQ1_M", [30] = "BF16",
};

static const char *gguf_ggml_type_name(uint32_t type)
{
    size_t n = sizeof gguf_ggml_type_names / sizeof gguf_ggml_type_names[0];
    return type < n && gguf_ggml_type_names[type] ? gguf_ggml_type_names[type] : "unknown";
}

/* Elements per block and bytes per block of the tensor types we read;
 * false for the others. */
static bool gguf_ggml_type_layout(uint32_t type, uint64_t *block_elems, uint64_t *block_bytes)
{
    switch (type) {
    case GGML_TYPE_F32:
        *block_elems = 1, *block_bytes = 4;
        return true;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16:
        *block_elems = 1, *block_bytes = 2;
        return true;
    case GGML_TYPE_Q8_0:
        *block_elems = GGUF_QK8_0, *block_bytes = sizeof(struct gguf_block_q8_0);
        return true;
    case GGML_TYPE_I8:
        *block_elems = 1, *block_bytes = 1;
        return true;
    default:
        return false;
    }
}

/* ---------------------------------------------------------------- the file */

struct gguf_kv {
    struct llm_gguf_string key;
    enum llm_gguf_type type;
    enum llm_gguf_type elem_type;    /* arrays */
    uint64_t count;                  /* arrays: elements; strings: bytes */
    const uint8_t *data;             /* the scalar, the string's bytes, or the array's elements */
    struct llm_gguf_string *strings; /* arrays of strings: every element, indexed at open */
    const uint8_t *raw;              /* the value as serialized (after its type), for copying */
    uint64_t raw_len;
};

/* Open addressing over entry indexes: a slot holds index + 1, 0 when empty.
 * Entries are found by the name each one starts with. */
struct gguf_index {
    size_t *slots;
    size_t mask;
};

_Static_assert(offsetof(struct gguf_kv, key) == 0, "the index reads a kv's key first");
_Static_assert(offsetof(struct llm_gguf_tensor, name) == 0,
               "the index reads a tensor's name first");

struct llm_gguf {
    const uint8_t *base;
    uint64_t size;
    void *mapping; /* our mmap of the file, NULL for a caller's buffer */
    size_t mapping_len;
    struct gguf_kv *kvs;
    uint64_t n_kv;
    struct llm_gguf_tensor *tensors;
    uint64_t n_tensors;
    struct gguf_index kv_index, tensor_index;
    uint64_t alignment;
    uint64_t data_offset; /* start of the data section */
};

/* -------------------------------------------------------------- hash index */

static uint64_t gguf_hash(const char *s, uint64_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static bool gguf_string_eq(struct llm_gguf_string a, const char *s, uint64_t len)
{
    return a.len == len && memcmp(a.ptr, s, len) == 0;
}

static void gguf_index_init(struct gguf_index *index, uint64_t n)
{
    size_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    index->slots = util_xcalloc(cap, sizeof *index->slots);
    index->mask = cap - 1;
}

/* Slot of `name` among `entries` (each `stride` bytes, starting with its
 * name): either the slot holding it or the empty slot where it would go. */
static size_t *gguf_index_slot(const struct gguf_index *index, const void *entries, size_t stride,
                               const char *name, uint64_t len)
{
    for (size_t i = gguf_hash(name, len) & index->mask;; i = (i + 1) & index->mask) {
        size_t *slot = &index->slots[i];
        if (*slot == 0) return slot;
        const struct llm_gguf_string *s =
            (const void *)((const char *)entries + (*slot - 1) * stride);
        if (gguf_string_eq(*s, name, len)) return slot;
    }
}

/* Index of `name`, or -1. */
static int64_t gguf_index_find(const struct gguf_index *index, const void *entries, size_t stride,
                               const char *name)
{
    if (!index->slots) return -1;
    size_t slot = *gguf_index_slot(index, entries, stride, name, strlen(name));
    return slot ? (int64_t)slot - 1 : -1;
}

/* ------------------------------------------------------------------ parser */

struct gguf_parser {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char *err;
    size_t err_len;
    char where[160]; /* what is being read, the prefix of messages */
};

/* Formats "<where>: <message>" into the error buffer; returns -EBADMSG. */
static int gguf_fail(struct gguf_parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int gguf_fail(struct gguf_parser *p, const char *fmt, ...)
{
    if (p->err && p->err_len) {
        int n = snprintf(p->err, p->err_len, "%s: ", p->where);
        if (n >= 0 && (size_t)n < p->err_len) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + n, p->err_len - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -EBADMSG;
}

/* A name from the file made safe to print: at most GGUF_NAME_IN_MESSAGES
 * bytes, anything but printable ASCII replaced by '?'. */
static void gguf_printable(char *out, size_t cap, struct llm_gguf_string s)
{
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        out[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n] = 0;
    if (n < s.len && n >= 3) memcpy(out + n - 3, "...", 3);
}

static void gguf_set_where(struct gguf_parser *p, const char *what, uint64_t i,
                           const struct llm_gguf_string *name)
{
    if (!name) {
        snprintf(p->where, sizeof p->where, "%s #%" PRIu64, what, i);
        return;
    }
    char printable[GGUF_NAME_IN_MESSAGES + 1];
    gguf_printable(printable, sizeof printable, *name);
    snprintf(p->where, sizeof p->where, "%s #%" PRIu64 " '%s'", what, i, printable);
}

/* Takes n bytes at the cursor, or fails naming `what`. */
static int gguf_take(struct gguf_parser *p, uint64_t n, const char *what, const uint8_t **out)
{
    if (n > p->size - p->pos)
        return gguf_fail(p,
                         "%s (%" PRIu64 " bytes at offset %" PRIu64 ") runs past the end of the "
                         "file (%" PRIu64 " bytes)",
                         what, n, p->pos, p->size);
    *out = p->base + p->pos;
    p->pos += n;
    return 0;
}

static int gguf_read_u32(struct gguf_parser *p, const char *what, uint32_t *v)
{
    const uint8_t *b = NULL;
    int rc = gguf_take(p, 4, what, &b);
    if (rc == 0) memcpy(v, b, 4);
    return rc;
}

static int gguf_read_u64(struct gguf_parser *p, const char *what, uint64_t *v)
{
    const uint8_t *b = NULL;
    int rc = gguf_take(p, 8, what, &b);
    if (rc == 0) memcpy(v, b, 8);
    return rc;
}

static int gguf_read_string(struct gguf_parser *p, const char *what, struct llm_gguf_string *s)
{
    uint64_t len;
    const uint8_t *b = NULL;
    int rc = gguf_read_u64(p, what, &len);
    if (rc == 0) rc = gguf_take(p, len, what, &b);
    if (rc == 0) *s = (struct llm_gguf_string){(const char *)b, len};
    return rc;
}

static int gguf_check_bools(struct gguf_parser *p, const uint8_t *b, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (b[i] > 1) return gguf_fail(p, "bool value %u is neither 0 nor 1", b[i]);
    return 0;
}

/* Reads an array of strings twice: once to check every length, then, with
 * the count known to be real, to index the elements. */
static int gguf_parse_string_array(struct gguf_parser *p, struct gguf_kv *kv)
{
    if (kv->count > (p->size - p->pos) / 8)
        return gguf_fail(p,
                         "array of %" PRIu64 " strings needs at least %" PRIu64
                         " bytes but %" PRIu64 " are left",
                         kv->count, kv->count > UINT64_MAX / 8 ? UINT64_MAX : kv->count * 8,
                         p->size - p->pos);
    uint64_t start = p->pos;
    for (uint64_t i = 0; i < kv->count; i++) {
        struct llm_gguf_string s;
        char what[64];
        snprintf(what, sizeof what, "string %" PRIu64 " of the array", i);
        int rc = gguf_read_string(p, what, &s);
        if (rc) return rc;
    }
    kv->data = p->base + start;
    kv->strings = util_xmalloc((kv->count ? kv->count : 1) * sizeof *kv->strings);
    uint64_t pos = start;
    for (uint64_t i = 0; i < kv->count; i++) {
        uint64_t len;
        memcpy(&len, p->base + pos, 8);
        kv->strings[i] = (struct llm_gguf_string){(const char *)p->base + pos + 8, len};
        pos += 8 + len;
    }
    return 0;
}

static int gguf_parse_value(struct gguf_parser *p, struct gguf_kv *kv)
{
    uint32_t type;
    int rc = gguf_read_u32(p, "value type", &type);
    if (rc) return rc;
    if (type >= GGUF_N_VALUE_TYPES)
        return gguf_fail(p, "value type %u is not a GGUF type (0..12)", type);
    kv->type = (enum llm_gguf_type)type;

    if (type == GGUF_TYPE_STRING) {
        struct llm_gguf_string s;
        rc = gguf_read_string(p, "string value", &s);
        if (rc == 0) kv->data = (const uint8_t *)s.ptr, kv->count = s.len;
        return rc;
    }
    if (type != GGUF_TYPE_ARRAY) {
        rc = gguf_take(p, gguf_value_type_sizes[type], "value", &kv->data);
        if (rc == 0 && type == GGUF_TYPE_BOOL) rc = gguf_check_bools(p, kv->data, 1);
        return rc;
    }

    uint32_t elem;
    if ((rc = gguf_read_u32(p, "array element type", &elem))) return rc;
    if (elem >= GGUF_N_VALUE_TYPES)
        return gguf_fail(p, "array element type %u is not a GGUF type (0..12)", elem);
    if (elem == GGUF_TYPE_ARRAY) return gguf_fail(p, "nested arrays are not supported");
    kv->elem_type = (enum llm_gguf_type)elem;
    if ((rc = gguf_read_u64(p, "array length", &kv->count))) return rc;
    if (elem == GGUF_TYPE_STRING) return gguf_parse_string_array(p, kv);

    uint64_t elem_size = gguf_value_type_sizes[elem];
    if (kv->count > UINT64_MAX / elem_size)
        return gguf_fail(p, "array of %" PRIu64 " %s overflows", kv->count,
                         gguf_value_type_names[elem]);
    char what[64];
    snprintf(what, sizeof what, "array of %" PRIu64 " %s", kv->count, gguf_value_type_names[elem]);
    rc = gguf_take(p, kv->count * elem_size, what, &kv->data);
    if (rc == 0 && elem == GGUF_TYPE_BOOL) rc = gguf_check_bools(p, kv->data, kv->count);
    return rc;
}

static int gguf_parse_kvs(struct gguf_parser *p, llm_gguf *g, uint64_t n_kv)
{
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_set_where(p, "metadata key", i, NULL);
        if (g->n_kv == cap) {
            cap = cap ? 2 * cap : 16;
            g->kvs = util_xrealloc(g->kvs, cap * sizeof *g->kvs);
        }
        struct gguf_kv *kv = &g->kvs[g->n_kv];
        *kv = (struct gguf_kv){0};
        int rc = gguf_read_string(p, "key", &kv->key);
        if (rc) return rc;
        gguf_set_where(p, "metadata key", i, &kv->key);
        g->n_kv++; /* counted now so that close frees its string index */
        uint64_t value_start = p->pos + 4; /* past the value type */
        if ((rc = gguf_parse_value(p, kv))) return rc;
        kv->raw = p->base + value_start;
        kv->raw_len = p->pos - value_start;
    }

    gguf_index_init(&g->kv_index, g->n_kv);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct llm_gguf_string key = g->kvs[i].key;
        size_t *slot = gguf_index_slot(&g->kv_index, g->kvs, sizeof *g->kvs, key.ptr, key.len);
        if (*slot) {
            gguf_set_where(p, "metadata key", i, &key);
            return gguf_fail(p, "duplicate of key #%zu", *slot - 1);
        }
        *slot = i + 1;
    }
    return 0;
}

/* ---------------------------------------------------------- value lookups */

static const struct gguf_kv *gguf_find_kv(const llm_gguf *g, const char *key)
{
    int64_t i = gguf_index_find(&g->kv_index, g->kvs, sizeof *g->kvs, key);
    return i < 0 ? NULL : &g->kvs[i];
}

/* An integer of any width and signedness: value = negative ? -magnitude : magnitude. */
struct gguf_integer {
    bool negative;
    uint64_t magnitude;
};

static int gguf_kv_integer(const struct gguf_kv *kv, struct gguf_integer *out)
{
    bool is_signed;
    switch (kv->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_UINT64:
        is_signed = false;
        break;
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        is_signed = true;
        break;
    default:
        return -EINVAL;
    }
    unsigned bits = 8u * gguf_value_type_sizes[kv->type];
    uint64_t mask = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
    uint64_t u = 0;
    memcpy(&u, kv->data, bits / 8); /* the low bytes: file and host are little-endian */
    out->negative = is_signed && (u >> (bits - 1)) & 1;
    out->magnitude = out->negative ? (0 - u) & mask : u; /* two's complement of `bits` bits */
    return 0;
}

/* The integer under `key` if it lies in [-neg_limit, pos_limit]. */
static int gguf_get_integer(const llm_gguf *g, const char *key, uint64_t neg_limit,
                            uint64_t pos_limit, struct gguf_integer *out)
{
    if (!g || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(g, key);
    if (!kv) return -ENOENT;
    int rc = gguf_kv_integer(kv, out);
    if (rc) return rc;
    return out->magnitude <= (out->negative ? neg_limit : pos_limit) ? 0 : -ERANGE;
}

/* -magnitude as int64, for magnitude <= 2^63, without a signed overflow. */
static int64_t gguf_negate(uint64_t magnitude)
{
    return magnitude == 0 ? 0 : -(int64_t)(magnitude - 1) - 1;
}

int llm_gguf_get_u32(const llm_gguf *gguf, const char *key, uint32_t *out)
{
    struct gguf_integer v;
    int rc = gguf_get_integer(gguf, key, 0, UINT32_MAX, &v);
    if (rc == 0) *out = (uint32_t)v.magnitude;
    return rc;
}

int llm_gguf_get_u64(const llm_gguf *gguf, const char *key, uint64_t *out)
{
    struct gguf_integer v;
    int rc = gguf_get_integer(gguf, key, 0, UINT64_MAX, &v);
    if (rc == 0) *out = v.magnitude;
    return rc;
}

int llm_gguf_get_i32(const llm_gguf *gguf, const char *key, int32_t *out)
{
    struct gguf_integer v;
    int rc = gguf_get_integer(gguf, key, (uint64_t)INT32_MAX + 1, INT32_MAX, &v);
    if (rc == 0) *out = (int32_t)(v.negative ? gguf_negate(v.magnitude) : (int64_t)v.magnitude);
    return rc;
}

int llm_gguf_get_i64(const llm_gguf *gguf, const char *key, int64_t *out)
{
    struct gguf_integer v;
    int rc = gguf_get_integer(gguf, key, (uint64_t)INT64_MAX + 1, INT64_MAX, &v);
    if (rc == 0) *out = v.negative ? gguf_negate(v.magnitude) : (int64_t)v.magnitude;
    return rc;
}

int llm_gguf_get_f64(const llm_gguf *gguf, const char *key, double *out)
{
    if (!gguf || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(gguf, key);
    if (!kv) return -ENOENT;
    if (kv->type == GGUF_TYPE_FLOAT32) {
        float f;
        memcpy(&f, kv->data, 4);
        *out = f;
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        memcpy(out, kv->data, 8);
    } else {
        return -EINVAL;
    }
    return 0;
}

int llm_gguf_get_f32(const llm_gguf *gguf, const char *key, float *out)
{
    double v;
    int rc = llm_gguf_get_f64(gguf, key, &v);
    if (rc == 0) *out = (float)v;
    return rc;
}

int llm_gguf_get_bool(const llm_gguf *gguf, const char *key, bool *out)
{
    if (!gguf || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(gguf, key);
    if (!kv) return -ENOENT;
    if (kv->type != GGUF_TYPE_BOOL) return -EINVAL;
    *out = kv->data[0] != 0;
    return 0;
}

int llm_gguf_get_string(const llm_gguf *gguf, const char *key, struct llm_gguf_string *out)
{
    if (!gguf || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(gguf, key);
    if (!kv) return -ENOENT;
    if (kv->type != GGUF_TYPE_STRING) return -EINVAL;
    *out = (struct llm_gguf_string){(const char *)kv->data, kv->count};
    return 0;
}

int llm_gguf_get_array(const llm_gguf *gguf, const char *key, enum llm_gguf_type *elem_type,
                       uint64_t *count, const void **data)
{
    if (!gguf || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(gguf, key);
    if (!kv) return -ENOENT;
    if (kv->type != GGUF_TYPE_ARRAY) return -EINVAL;
    if (elem_type) *elem_type = kv->elem_type;
    if (count) *count = kv->count;
    if (data) *data = kv->data;
    return 0;
}

int llm_gguf_get_array_string(const llm_gguf *gguf, const char *key, uint64_t i,
                              struct llm_gguf_string *out)
{
    if (!gguf || !key) return -EINVAL;
    const struct gguf_kv *kv = gguf_find_kv(gguf, key);
    if (!kv) return -ENOENT;
    if (kv->type != GGUF_TYPE_ARRAY || kv->elem_type != GGUF_TYPE_STRING) return -EINVAL;
    if (i >= kv->count) return -ERANGE;
    *out = kv->strings[i];
    return 0;
}

uint64_t llm_gguf_kv_count(const llm_gguf *gguf)
{
    return gguf->n_kv;
}

int llm_gguf_kv_raw(const llm_gguf *gguf, uint64_t i, struct llm_gguf_string *key,
                    enum llm_gguf_type *type, const void **value, uint64_t *value_len)
{
    if (!gguf || i >= gguf->n_kv) return -ERANGE;
    const struct gguf_kv *kv = &gguf->kvs[i];
    *key = kv->key;
    *type = kv->type;
    *value = kv->raw;
    *value_len = kv->raw_len;
    return 0;
}

int llm_gguf_kv_at(const llm_gguf *gguf, uint64_t i, struct llm_gguf_string *key,
                   enum llm_gguf_type *type)
{
    if (!gguf || i >= gguf->n_kv) return -ERANGE;
    if (key) *key = gguf->kvs[i].key;
    if (type) *type = gguf->kvs[i].type;
    return 0;
}

const char *llm_gguf_type_name(enum llm_gguf_type type)
{
    return (unsigned)type < GGUF_N_VALUE_TYPES ? gguf_value_type_names[type] : "unknown";
}

/* ---------------------------------------------------------- tensor infos */

/* Reads one tensor info. Its data offset goes to *offset, to be checked
 * against the file once the start of the data section is known. */
static int gguf_parse_tensor_info(struct gguf_parser *p, uint64_t i, uint64_t alignment,
                                  struct llm_gguf_tensor *t, uint64_t *offset)
{
    int rc = gguf_read_string(p, "name", &t->name);
    if (rc) return rc;
    gguf_set_where(p, "tensor", i, &t->name);

    uint32_t n_dims, type;
    if ((rc = gguf_read_u32(p, "dimension count", &n_dims))) return rc;
    if (n_dims > GGUF_MAX_DIMS)
        return gguf_fail(p, "%u dimensions; at most %d are supported", n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    t->n_elements = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if ((rc = gguf_read_u64(p, "dimension", &t->dims[d]))) return rc;
        if (__builtin_mul_overflow(t->n_elements, t->dims[d], &t->n_elements))
            return gguf_fail(p, "element count overflows 64 bits at dimension %u (%" PRIu64 ")", d,
                             t->dims[d]);
    }

    if ((rc = gguf_read_u32(p, "type", &type))) return rc;
    uint64_t block_elems, block_bytes;
    if (!gguf_ggml_type_layout(type, &block_elems, &block_bytes))
        return gguf_fail(p,
                         "tensor type %u (%s) is not supported; llmd reads F32, F16, BF16 and Q8_0",
                         type, gguf_ggml_type_name(type));
    t->type = (enum llm_ggml_type)type;
    if (t->dims[0] % block_elems)
        return gguf_fail(p,
                         "row length %" PRIu64 " is not a multiple of the %s block (%" PRIu64 ")",
                         t->dims[0], gguf_ggml_type_name(type), block_elems);
    if (__builtin_mul_overflow(t->n_elements / block_elems, block_bytes, &t->n_bytes))
        return gguf_fail(p, "size of %" PRIu64 " elements overflows 64 bits", t->n_elements);

    if ((rc = gguf_read_u64(p, "data offset", offset))) return rc;
    if (*offset % alignment)
        return gguf_fail(p, "data offset %" PRIu64 " is not a multiple of the alignment %" PRIu64,
                         *offset, alignment);
    return 0;
}

/* Places a tensor's data in the data section and checks it lies inside the file. */
static int gguf_place_tensor(struct gguf_parser *p, const llm_gguf *g, struct llm_gguf_tensor *t,
                             uint64_t offset)
{
    if (g->data_offset > p->size)
        return gguf_fail(p,
                         "the data section would start at %" PRIu64 ", past the end of the file "
                         "(%" PRIu64 " bytes)",
                         g->data_offset, p->size);
    uint64_t left = p->size - g->data_offset;
    if (offset > left || t->n_bytes > left - offset)
        return gguf_fail(p,
                         "data (%" PRIu64 " bytes at offset %" PRIu64
                         " of the data section at %" PRIu64
                         ") runs past the end of the file (%" PRIu64 " bytes)",
                         t->n_bytes, offset, g->data_offset, p->size);
    t->data = p->base + g->data_offset + offset;
    return 0;
}

static int gguf_parse_tensors(struct gguf_parser *p, llm_gguf *g, uint64_t n_tensors)
{
    uint64_t cap = 0, *offsets = NULL;
    int rc = 0;
    for (uint64_t i = 0; i < n_tensors && rc == 0; i++) {
        gguf_set_where(p, "tensor", i, NULL);
        if (g->n_tensors == cap) {
            cap = cap ? 2 * cap : 16;
            g->tensors = util_xrealloc(g->tensors, cap * sizeof *g->tensors);
            offsets = util_xrealloc(offsets, cap * sizeof *offsets);
        }
        g->tensors[i] = (struct llm_gguf_tensor){0};
        rc = gguf_parse_tensor_info(p, i, g->alignment, &g->tensors[i], &offsets[i]);
        if (rc == 0) g->n_tensors++;
    }
    if (rc == 0) {
        /* The data section starts at the first aligned offset after the infos. */
        g->data_offset = p->pos + (g->alignment - p->pos % g->alignment) % g->alignment;
        gguf_index_init(&g->tensor_index, g->n_tensors);
    }
    for (uint64_t i = 0; i < g->n_tensors && rc == 0; i++) {
        struct llm_gguf_tensor *t = &g->tensors[i];
        gguf_set_where(p, "tensor", i, &t->name);
        if ((rc = gguf_place_tensor(p, g, t, offsets[i]))) break;
        size_t *slot = gguf_index_slot(&g->tensor_index, g->tensors, sizeof *g->tensors,
                                       t->name.ptr, t->name.len);
        if (*slot) rc = gguf_fail(p, "duplicate of tensor #%zu", *slot - 1);
        *slot = i + 1;
    }
    free(offsets);
    return rc;
}

/* ------------------------------------------------------------ open, close */

static int gguf_parse_alignment(struct gguf_parser *p, llm_gguf *g)
{
    snprintf(p->where, sizeof p->where, "general.alignment");
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    uint32_t alignment;
    int rc = llm_gguf_get_u32(g, "general.alignment", &alignment);
    if (rc == -ENOENT) return 0;
    if (rc) return gguf_fail(p, "must be an unsigned 32-bit integer");
    if (alignment == 0 || (alignment & (alignment - 1)))
        return gguf_fail(p, "%u is not a power of two", alignment);
    g->alignment = alignment;
    return 0;
}

static int gguf_parse(struct gguf_parser *p, llm_gguf *g)
{
    snprintf(p->where, sizeof p->where, "header");
    const uint8_t *magic = NULL;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    int rc = gguf_take(p, 4, "magic", &magic);
    if (rc) return rc;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0)
        return gguf_fail(p, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                         magic[0], magic[1], magic[2], magic[3]);
    if ((rc = gguf_read_u32(p, "version", &version))) return rc;
    if (version != GGUF_VERSION) {
        if (version == 1 || version == 2)
            return gguf_fail(p,
                             "GGUF version %u is not supported; llmd reads version 3 (convert "
                             "the file with a current llama.cpp)",
                             version);
        if (version == __builtin_bswap32(GGUF_VERSION))
            return gguf_fail(p, "big-endian GGUF is not supported; llmd reads version 3, "
                                "little-endian");
        return gguf_fail(p, "GGUF version %u is not supported; llmd reads version 3", version);
    }
    if ((rc = gguf_read_u64(p, "tensor count", &n_tensors))) return rc;
    if ((rc = gguf_read_u64(p, "metadata count", &n_kv))) return rc;
    if ((rc = gguf_parse_kvs(p, g, n_kv))) return rc;
    if ((rc = gguf_parse_alignment(p, g))) return rc;
    return gguf_parse_tensors(p, g, n_tensors);
}

int llm_gguf_open_memory(const void *data, size_t size, llm_gguf **out, char *err, size_t err_len)
{
    if (err && err_len) err[0] = 0;
    if (!out || (!data && size)) return -EINVAL;
    *out = NULL;
    llm_gguf *g = util_xcalloc(1, sizeof *g);
    g->base = data;
    g->size = size;
    struct gguf_parser p = {.base = data, .size = size, .err = err, .err_len = err_len};
    int rc = gguf_parse(&p, g);
    if (rc) {
        llm_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int llm_gguf_open(const char *path, llm_gguf **out, char *err, size_t err_len)
{
    if (err && err_len) err[0] = 0;
    if (!path || !out) return -EINVAL;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        if (err && err_len) snprintf(err, err_len, "%s: %s", path, strerror(-rc));
        return rc;
    }
    struct stat st;
    int rc = fstat(fd, &st) != 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
    if (rc) {
        if (err && err_len)
            snprintf(err, err_len, "%s: %s", path,
                     rc == -EINVAL ? "not a regular file" : strerror(-rc));
        close(fd);
        return rc;
    }
    size_t size = (size_t)st.st_size;
    /* mmap refuses an empty file; a zero-byte buffer gets the parser's message. */
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err && err_len) snprintf(err, err_len, "%s: mmap: %s", path, strerror(map_errno));
        return -map_errno;
    }
    char msg[256];
    rc = llm_gguf_open_memory(map, size, out, msg, sizeof msg);
    if (rc) {
        if (err && err_len) snprintf(err, err_len, "%s: %s", path, msg);
        if (map) munmap(map, size);
        return rc;
    }
    (*out)->mapping = map;
    (*out)->mapping_len = size;
    return 0;
}

void llm_gguf_close(llm_gguf *gguf)
{
    if (!gguf) return;
    for (uint64_t i = 0; i < gguf->n_kv; i++) free(gguf->kvs[i].strings);
    free(gguf->kvs);
    free(gguf->tensors);
    free(gguf->kv_index.slots);
    free(gguf->tensor_index.slots);
    if (gguf->mapping) munmap(gguf->mapping, gguf->mapping_len);
    free(gguf);
}

/* ----------------------------------------------------------------- tensors */

uint64_t llm_gguf_tensor_count(const llm_gguf *gguf)
{
    return gguf->n_tensors;
}

const struct llm_gguf_tensor *llm_gguf_tensor_at(const llm_gguf *gguf, uint64_t i)
{
    return i < gguf->n_tensors ? &gguf->tensors[i] : NULL;
}

const struct llm_gguf_tensor *llm_gguf_find_tensor(const llm_gguf *gguf, const char *name)
{
    if (!gguf || !name) return NULL;
    int64_t i = gguf_index_find(&gguf->tensor_index, gguf->tensors, sizeof *gguf->tensors, name);
    return i < 0 ? NULL : &gguf->tensors[i];
}

uint64_t llm_gguf_data_offset(const llm_gguf *gguf)
{
    return gguf->data_offset;
}

uint64_t llm_gguf_alignment(const llm_gguf *gguf)
{
    return gguf->alignment;
}

/* -------------------------------------------------------- to float32, scalar */

/* The reference conversions: plain loops, never tuned. `src` may be unaligned. */
static void gguf_f16_to_f32_scalar(const uint8_t *src, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        out[i] = util_f16_to_f32(h);
    }
}

static void gguf_bf16_to_f32_scalar(const uint8_t *src, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        out[i] = util_bf16_to_f32(h);
    }
}

static void gguf_q8_0_to_f32_scalar(const uint8_t *src, uint64_t n, float *out)
{
    for (uint64_t b = 0; b < n / GGUF_QK8_0; b++) {
        struct gguf_block_q8_0 block;
        memcpy(&block, src + b * sizeof block, sizeof block);
        float scale = util_f16_to_f32(block.scale);
        for (int j = 0; j < GGUF_QK8_0; j++) out[b * GGUF_QK8_0 + j] = scale * (float)block.qs[j];
    }
}

/* ---------------------------------------------------------- to float32, AVX2 */

/* x86-64-v3 (our baseline) has AVX2 and F16C; the results equal the scalar
 * ones bit for bit (NaN payloads aside). */
static void gguf_f16_to_f32_avx2(const uint8_t *src, uint64_t n, float *out)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    gguf_f16_to_f32_scalar(src + 2 * i, n - i, out + i);
}

static void gguf_bf16_to_f32_avx2(const uint8_t *src, uint64_t n, float *out)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
    }
    gguf_bf16_to_f32_scalar(src + 2 * i, n - i, out + i);
}

static void gguf_q8_0_to_f32_avx2(const uint8_t *src, uint64_t n, float *out)
{
    for (uint64_t b = 0; b < n / GGUF_QK8_0; b++) {
        const uint8_t *block = src + b * sizeof(struct gguf_block_q8_0);
        uint16_t scale_bits;
        memcpy(&scale_bits, block, 2);
        __m256 scale = _mm256_set1_ps(util_f16_to_f32(scale_bits));
        const uint8_t *qs = block + offsetof(struct gguf_block_q8_0, qs);
        for (int j = 0; j < GGUF_QK8_0; j += 8) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + j)));
            _mm256_storeu_ps(out + b * GGUF_QK8_0 + j, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(q)));
        }
    }
}

/* ------------------------------------------------------- to float32, public */

typedef void (*gguf_convert_fn)(const uint8_t *src, uint64_t n, float *out);

static void gguf_i8_to_f32(const uint8_t *src, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n; i++) out[i] = (float)(int8_t)src[i];
}

static void gguf_f32_copy(const uint8_t *src, uint64_t n, float *out)
{
    memcpy(out, src, n * sizeof(float));
}

/* Converts rows [row, row + n_rows) with the scalar or the AVX2 kernels. */
static int gguf_rows_to_f32(const struct llm_gguf_tensor *t, uint64_t row, uint64_t n_rows,
                            float *out, bool simd)
{
    if (!t || (!out && n_rows)) return -EINVAL;
    gguf_convert_fn convert;
    switch (t->type) {
    case GGML_TYPE_F32:
        convert = gguf_f32_copy;
        break;
    case GGML_TYPE_F16:
        convert = simd ? gguf_f16_to_f32_avx2 : gguf_f16_to_f32_scalar;
        break;
    case GGML_TYPE_BF16:
        convert = simd ? gguf_bf16_to_f32_avx2 : gguf_bf16_to_f32_scalar;
        break;
    case GGML_TYPE_Q8_0:
        convert = simd ? gguf_q8_0_to_f32_avx2 : gguf_q8_0_to_f32_scalar;
        break;
    case GGML_TYPE_I8:
        convert = gguf_i8_to_f32;
        break;
    default:
        return -EINVAL;
    }
    uint64_t row_len = t->dims[0], block_elems, block_bytes;
    UTIL_CHECK(gguf_ggml_type_layout(t->type, &block_elems, &block_bytes));
    if (row_len == 0 || row_len % block_elems) return n_rows == 0 && row == 0 ? 0 : -EINVAL;
    uint64_t total_rows = t->n_elements / row_len;
    if (row > total_rows || n_rows > total_rows - row) return -ERANGE;
    uint64_t row_bytes = row_len / block_elems * block_bytes;
    convert((const uint8_t *)t->data + row * row_bytes, n_rows * row_len, out);
    return 0;
}

int llm_gguf_tensor_rows_to_f32(const struct llm_gguf_tensor *t, uint64_t row, uint64_t n_rows,
                                float *out)
{
    return gguf_rows_to_f32(t, row, n_rows, out, true);
}

int llm_gguf_tensor_to_f32(const struct llm_gguf_tensor *t, float *out)
{
    if (!t) return -EINVAL;
    uint64_t rows = t->dims[0] ? t->n_elements / t->dims[0] : 0;
    return gguf_rows_to_f32(t, 0, rows, out, true);
}

int llm_gguf_tensor_to_f32_scalar(const struct llm_gguf_tensor *t, float *out)
{
    if (!t) return -EINVAL;
    uint64_t rows = t->dims[0] ? t->n_elements / t->dims[0] : 0;
    return gguf_rows_to_f32(t, 0, rows, out, false);
}

/* pim_json.c: PIM jobs, devices and results to and from JSON (jansson).
 * See pim_json.h for the shapes. Everything from the request is checked
 * before it is used: types, ranges, shapes, finiteness, sizes. */
#include "server/pim_json.h"

#include "util/util.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ errors */

static int set_error(struct pim_json_error *err, int rc, const char *code, const char *param,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int set_error(struct pim_json_error *err, int rc, const char *code, const char *param,
                     const char *fmt, ...)
{
    if (err) {
        snprintf(err->type, sizeof err->type, "invalid_request_error");
        snprintf(err->code, sizeof err->code, "%s", code);
        snprintf(err->param, sizeof err->param, "%s", param ? param : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return rc;
}

#define INVALID(err, param, ...) set_error(err, -EINVAL, "invalid_value", param, __VA_ARGS__)

void pim_json_limits_default(struct pim_json_limits *lim)
{
    lim->max_tensor_elements = 1 << 24;
    lim->max_total_elements = 1 << 25;
    lim->max_dim = 1 << 20;
    lim->max_layers = 4096;
    lim->max_output_elements_nested = 1 << 16;
    lim->replica_id = NULL;
}

/* ---------------------------------------------------------- scalar values */

/* An integer in [lo, hi]: a JSON integer, or a real with an integral value. */
static int get_int64(const json_t *v, int64_t lo, int64_t hi, const char *param, int64_t *out,
                     struct pim_json_error *err)
{
    double d;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < lo || i > hi)
            return INVALID(err, param, "'%s' must be in [%" PRId64 ", %" PRId64 "]", param, lo, hi);
        *out = (int64_t)i;
        return 0;
    }
    if (!json_is_real(v)) return INVALID(err, param, "'%s' must be an integer", param);
    d = json_real_value(v);
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi)
        return INVALID(err, param, "'%s' must be an integer in [%" PRId64 ", %" PRId64 "]", param,
                       lo, hi);
    *out = (int64_t)d;
    return 0;
}

static int get_int(const json_t *v, int lo, int hi, const char *param, int *out,
                   struct pim_json_error *err)
{
    int64_t x;
    int rc = get_int64(v, lo, hi, param, &x, err);
    if (rc == 0) *out = (int)x;
    return rc;
}

static int get_real(const json_t *v, const char *param, double *out, struct pim_json_error *err)
{
    if (!json_is_number(v)) return INVALID(err, param, "'%s' must be a number", param);
    double d = json_number_value(v);
    if (!isfinite(d)) return INVALID(err, param, "'%s' must be finite", param);
    *out = d;
    return 0;
}

static int get_bool(const json_t *v, const char *param, bool *out, struct pim_json_error *err)
{
    if (!json_is_boolean(v)) return INVALID(err, param, "'%s' must be true or false", param);
    *out = json_is_true(v);
    return 0;
}

/* ----------------------------------------------------------- device fields */

enum field_kind { F_INT, F_LONG, F_REAL, F_BOOL, F_SIGNED_MODE, F_NOISE_MODEL };

struct device_field {
    const char *name;
    enum field_kind kind;
    size_t offset;
};

#define FIELD(n, k)                                                                                \
    {                                                                                              \
#n, k, offsetof(struct pim_device, n)                                                      \
    }

static const struct device_field device_fields[] = {
    FIELD(rows, F_INT),
    FIELD(cols, F_INT),
    FIELD(cell_bits, F_INT),
    FIELD(g_on, F_REAL),
    FIELD(on_off, F_REAL),
    FIELD(n_crossbars, F_LONG),
    FIELD(weight_bits, F_INT),
    FIELD(input_bits, F_INT),
    FIELD(signed_mode, F_SIGNED_MODE),
    FIELD(dac_bits, F_INT),
    FIELD(adc_bits, F_INT),
    FIELD(adc_full_scale, F_REAL),
    FIELD(adc_flip, F_BOOL),
    FIELD(prog_noise, F_REAL),
    FIELD(read_noise, F_REAL),
    FIELD(read_noise_model, F_NOISE_MODEL),
    FIELD(stuck_on_rate, F_REAL),
    FIELD(stuck_off_rate, F_REAL),
    FIELD(drift_nu, F_REAL),
    FIELD(drift_nu_std, F_REAL),
    FIELD(drift_time, F_REAL),
    FIELD(npim_sa_gain_error, F_REAL),
    FIELD(npim_sa_noise, F_REAL),
    FIELD(npim_full_scale, F_REAL),
    FIELD(inv_bits, F_INT),
    FIELD(inv_settle_time, F_REAL),
    FIELD(inv_opamp_power, F_REAL),
    FIELD(t_read, F_REAL),
    FIELD(write_time_row, F_REAL),
    FIELD(adc_power, F_REAL),
    FIELD(adc_rate, F_REAL),
    FIELD(adc_area, F_REAL),
    FIELD(adc_ref_bits, F_INT),
    FIELD(adcs_per_crossbar, F_INT),
    FIELD(dac_power, F_REAL),
    FIELD(dac_area, F_REAL),
    FIELD(xbar_power, F_REAL),
    FIELD(xbar_area, F_REAL),
    FIELD(sa_power, F_REAL),
    FIELD(sa_area, F_REAL),
    FIELD(npim_sa_energy, F_REAL),
    FIELD(npim_sa_area, F_REAL),
    FIELD(cascade_buffer_energy, F_REAL),
    FIELD(edram_energy, F_REAL),
    FIELD(edram_bits, F_REAL),
    FIELD(write_energy_cell, F_REAL),
    FIELD(digital_flops, F_REAL),
    FIELD(digital_energy_flop, F_REAL),
};

#define N_DEVICE_FIELDS (sizeof device_fields / sizeof *device_fields)

static const struct device_field *device_field(const char *name)
{
    for (size_t i = 0; i < N_DEVICE_FIELDS; i++)
        if (strcmp(device_fields[i].name, name) == 0) return &device_fields[i];
    return NULL;
}

static int set_device_field(const struct device_field *f, const json_t *v, struct pim_device *dev,
                            const char *param, struct pim_json_error *err)
{
    char *p = (char *)dev + f->offset;
    int64_t l;
    int rc;
    switch (f->kind) {
    case F_INT:
        return get_int(v, -1000000000, 1000000000, param, (int *)p, err);
    case F_LONG:
        rc = get_int64(v, 0, INT64_MAX / 2, param, &l, err);
        if (rc == 0) *(long *)p = (long)l;
        return rc;
    case F_REAL:
        return get_real(v, param, (double *)p, err);
    case F_BOOL:
        return get_bool(v, param, (bool *)p, err);
    case F_SIGNED_MODE: {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "offset") == 0)
            *(enum pim_signed_mode *)p = PIM_SIGNED_OFFSET;
        else if (s && strcmp(s, "differential") == 0)
            *(enum pim_signed_mode *)p = PIM_SIGNED_DIFFERENTIAL;
        else
            return INVALID(err, param, "'%s' must be \"offset\" or \"differential\"", param);
        return 0;
    }
    case F_NOISE_MODEL: {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "proportional") == 0)
            *(enum pim_read_noise_model *)p = PIM_READ_NOISE_PROPORTIONAL;
        else if (s && strcmp(s, "additive") == 0)
            *(enum pim_read_noise_model *)p = PIM_READ_NOISE_ADDITIVE;
        else
            return INVALID(err, param, "'%s' must be \"proportional\" or \"additive\"", param);
        return 0;
    }
    }
    return -EINVAL;
}

int pim_json_device_apply(const json_t *obj, struct pim_device *dev, const char *prefix,
                          struct pim_json_error *err)
{
    if (!json_is_object(obj)) return INVALID(err, prefix, "the device must be an object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (!strcmp(key, "preset") || !strcmp(key, "name") || !strcmp(key, "base") ||
            !strcmp(key, "notes"))
            continue;
        char param[64];
        snprintf(param, sizeof param, "%s%s", prefix, key);
        const struct device_field *f = device_field(key);
        if (!f)
            return set_error(err, -EINVAL, "unknown_parameter", param, "unknown device field '%s'",
                             key);
        int rc = set_device_field(f, v, dev, param, err);
        if (rc) return rc;
    }
    return 0;
}

json_t *pim_json_device(const struct pim_device *dev)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(dev->name));
    for (size_t i = 0; i < N_DEVICE_FIELDS; i++) {
        const struct device_field *f = &device_fields[i];
        const char *p = (const char *)dev + f->offset;
        json_t *v = NULL;
        switch (f->kind) {
        case F_INT:
            v = json_integer(*(const int *)p);
            break;
        case F_LONG:
            v = json_integer(*(const long *)p);
            break;
        case F_REAL:
            v = json_real(*(const double *)p);
            break;
        case F_BOOL:
            v = json_boolean(*(const bool *)p);
            break;
        case F_SIGNED_MODE:
            v = json_string(*(const enum pim_signed_mode *)p == PIM_SIGNED_OFFSET ? "offset"
                                                                                  : "differential");
            break;
        case F_NOISE_MODEL:
            v = json_string(*(const enum pim_read_noise_model *)p == PIM_READ_NOISE_PROPORTIONAL
                                ? "proportional"
                                : "additive");
            break;
        }
        json_object_set_new(o, f->name, v);
    }
    return o;
}

/* ---------------------------------------------------------------- presets */

struct pim_presets {
    struct pim_device *devices;
    int count;
};

pim_presets *pim_presets_builtin(void)
{
    pim_presets *p = util_xcalloc(1, sizeof *p);
    p->devices = util_xmalloc(sizeof *p->devices);
    pim_device_default(&p->devices[0]);
    p->count = 1;
    return p;
}

void pim_presets_free(pim_presets *presets)
{
    if (!presets) return;
    free(presets->devices);
    free(presets);
}

const struct pim_device *pim_presets_find(const pim_presets *presets, const char *name)
{
    for (int i = 0; presets && i < presets->count; i++)
        if (strcmp(presets->devices[i].name, name) == 0) return &presets->devices[i];
    return NULL;
}

int pim_presets_count(const pim_presets *presets)
{
    return presets ? presets->count : 0;
}

const struct pim_device *pim_presets_at(const pim_presets *presets, int index)
{
    return presets && index >= 0 && index < presets->count ? &presets->devices[index] : NULL;
}

int pim_presets_load_dir(const char *dir, pim_presets **out, struct pim_json_error *err)
{
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return set_error(err, -errno, "not_found", "", "cannot open preset folder %s", dir);
    json_t **files = NULL;
    int n = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) && rc == 0) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        json_error_t jerr;
        json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
        if (!root || !json_is_object(root) || !json_is_string(json_object_get(root, "name"))) {
            rc = set_error(err, -EINVAL, "invalid_preset", e->d_name, "%s: %s", e->d_name,
                           root ? "a preset needs a \"name\"" : jerr.text);
            json_decref(root);
            break;
        }
        files = util_xrealloc(files, (size_t)(n + 1) * sizeof *files);
        files[n++] = root;
    }
    closedir(d);

    pim_presets *p = util_xcalloc(1, sizeof *p);
    p->devices = util_xcalloc((size_t)n + 1, sizeof *p->devices);
    /* Resolve bases: a preset is built once its base is; no progress in a
     * pass means a missing base or a cycle. */
    bool *done = util_xcalloc((size_t)n + 1, sizeof(bool));
    for (int resolved = 0; rc == 0 && resolved < n;) {
        int before = resolved;
        for (int i = 0; i < n && rc == 0; i++) {
            if (done[i]) continue;
            const char *name = json_string_value(json_object_get(files[i], "name"));
            const char *base = json_string_value(json_object_get(files[i], "base"));
            struct pim_device dev;
            if (base) {
                const struct pim_device *b = pim_presets_find(p, base);
                if (!b) continue;
                dev = *b;
            } else {
                pim_device_default(&dev);
            }
            snprintf(dev.name, sizeof dev.name, "%s", name);
            rc = pim_json_device_apply(files[i], &dev, "", err);
            if (rc == 0 && pim_device_validate(&dev, NULL) != 0)
                rc = set_error(err, -EINVAL, "invalid_preset", name,
                               "preset %s is not a valid device", name);
            if (rc == 0) {
                p->devices[p->count++] = dev;
                done[i] = true;
                resolved++;
            }
        }
        if (rc == 0 && resolved == before)
            rc = set_error(err, -EINVAL, "invalid_preset", "base",
                           "a preset's base is missing or circular");
    }
    free(done);
    for (int i = 0; i < n; i++) json_decref(files[i]);
    free(files);
    if (rc == 0 && !pim_presets_find(p, "isaac")) pim_device_default(&p->devices[p->count++]);
    if (rc) {
        pim_presets_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* ----------------------------------------------------------------- base64 */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 with padding; returns the decoded length or -1. */
static long b64_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
    if (len % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad) return -1; /* data after padding */
            v[k] = b64_value(c);
            if (v[k] < 0) return -1;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        int bytes = 3 - pad;
        if (o + (size_t)bytes > cap) return -1;
        for (int k = 0; k < bytes; k++) out[o++] = (uint8_t)(w >> (16 - 8 * k));
    }
    return (long)o;
}

static char *b64_encode(const uint8_t *in, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = util_xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16;
        if (i + 1 < len) w |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len) w |= in[i + 2];
        *o++ = abc[w >> 18 & 63];
        *o++ = abc[w >> 12 & 63];
        *o++ = i + 1 < len ? abc[w >> 6 & 63] : '=';
        *o++ = i + 2 < len ? abc[w & 63] : '=';
    }
    *o = 0;
    return out;
}

/* ---------------------------------------------------------------- tensors */

struct parse_ctx {
    struct pim_job *job;
    const struct pim_json_limits *lim;
    const pim_presets *presets;
    struct pim_json_error *err;
    int64_t total;
    bool have_type;
};

/* Checks a shape against the limits and returns its element count. */
static int check_shape(struct parse_ctx *pc, const char *param, int ndim, const int64_t *shape,
                       int64_t *count)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1) return INVALID(pc->err, param, "'%s' has an empty dimension", param);
        if (shape[i] > pc->lim->max_dim)
            return set_error(pc->err, -E2BIG, "too_large", param,
                             "'%s' has a dimension over %" PRId64, param, pc->lim->max_dim);
        n *= shape[i];
        if (n > pc->lim->max_tensor_elements)
            return set_error(pc->err, -E2BIG, "too_large", param,
                             "'%s' has more than %" PRId64 " values", param,
                             pc->lim->max_tensor_elements);
    }
    if (pc->total + n > pc->lim->max_total_elements)
        return set_error(pc->err, -E2BIG, "too_large", param,
                         "the job's tensors exceed %" PRId64 " values",
                         pc->lim->max_total_elements);
    pc->total += n;
    *count = n;
    return 0;
}

static int fill_nested(struct parse_ctx *pc, const char *param, const json_t *v, int depth,
                       const struct pim_tensor *t, size_t *pos)
{
    if (depth == t->ndim) {
        if (!json_is_number(v))
            return INVALID(pc->err, param, "'%s' must hold numbers (found a %s at value %zu)",
                           param, json_is_array(v) ? "nested array" : "non-number", *pos);
        double d = json_number_value(v);
        float f = (float)d;
        if (!isfinite(d) || !isfinite(f))
            return INVALID(pc->err, param, "'%s' value %zu is not a finite float", param, *pos);
        t->data[(*pos)++] = f;
        return 0;
    }
    if (!json_is_array(v) || (int64_t)json_array_size(v) != t->shape[depth])
        return INVALID(pc->err, param,
                       "'%s' is ragged: every row at depth %d must have %" PRId64 " entries", param,
                       depth, t->shape[depth]);
    for (size_t i = 0; i < json_array_size(v); i++) {
        int rc = fill_nested(pc, param, json_array_get(v, i), depth + 1, t, pos);
        if (rc) return rc;
    }
    return 0;
}

static int tensor_from_nested(struct parse_ctx *pc, const char *param, const json_t *arr,
                              struct pim_tensor *t)
{
    int64_t shape[PIM_TENSOR_MAX_DIMS];
    int ndim = 0;
    for (const json_t *v = arr; json_is_array(v); v = json_array_get(v, 0)) {
        if (ndim == PIM_TENSOR_MAX_DIMS)
            return INVALID(pc->err, param, "'%s' has more than %d dimensions", param,
                           PIM_TENSOR_MAX_DIMS);
        shape[ndim++] = (int64_t)json_array_size(v);
        if (json_array_size(v) == 0)
            return INVALID(pc->err, param, "'%s' has an empty dimension", param);
    }
    int64_t count;
    int rc = check_shape(pc, param, ndim, shape, &count);
    if (rc) return rc;
    pim_tensor_alloc(t, ndim, shape);
    size_t pos = 0;
    rc = fill_nested(pc, param, arr, 0, t, &pos);
    if (rc) pim_tensor_free(t);
    return rc;
}

static int tensor_from_object(struct parse_ctx *pc, const char *param, const json_t *obj,
                              struct pim_tensor *t)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (strcmp(key, "shape") && strcmp(key, "dtype") && strcmp(key, "data"))
            return set_error(pc->err, -EINVAL, "unknown_parameter", param,
                             "'%s' has an unknown field '%s'", param, key);
    }
    const json_t *jshape = json_object_get(obj, "shape"), *jdtype = json_object_get(obj, "dtype");
    const json_t *jdata = json_object_get(obj, "data");
    if (jdtype && (!json_is_string(jdtype) || (strcmp(json_string_value(jdtype), "f32") != 0 &&
                                               strcmp(json_string_value(jdtype), "float32") != 0)))
        return INVALID(pc->err, param, "'%s': only dtype \"f32\" is supported", param);
    if (!json_is_array(jshape) || json_array_size(jshape) < 1 ||
        json_array_size(jshape) > PIM_TENSOR_MAX_DIMS)
        return INVALID(pc->err, param, "'%s': shape must list 1 to %d sizes", param,
                       PIM_TENSOR_MAX_DIMS);
    if (!json_is_string(jdata))
        return INVALID(pc->err, param, "'%s': data must be a base64 string", param);
    int ndim = (int)json_array_size(jshape);
    int64_t shape[PIM_TENSOR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        int rc = get_int64(json_array_get(jshape, (size_t)i), 1, INT64_MAX / 2, param, &shape[i],
                           pc->err);
        if (rc) return rc;
    }
    int64_t count;
    int rc = check_shape(pc, param, ndim, shape, &count);
    if (rc) return rc;
    size_t bytes = (size_t)count * 4, len = json_string_length(jdata);
    if (len != (bytes + 2) / 3 * 4)
        return INVALID(pc->err, param,
                       "'%s': data holds %zu base64 characters, the shape needs %zu", param, len,
                       (bytes + 2) / 3 * 4);
    pim_tensor_alloc(t, ndim, shape);
    long got = b64_decode(json_string_value(jdata), len, (uint8_t *)t->data, bytes);
    if (got != (long)bytes) {
        pim_tensor_free(t);
        return INVALID(pc->err, param, "'%s': data is not valid base64 of %zu bytes", param, bytes);
    }
    for (size_t i = 0; i < (size_t)count; i++) { /* little-endian on the wire, as on x86 */
        if (!isfinite(t->data[i])) {
            pim_tensor_free(t);
            return INVALID(pc->err, param, "'%s' value %zu is NaN or Inf", param, i);
        }
    }
    return 0;
}

static int parse_tensor(struct parse_ctx *pc, const char *param, const json_t *v,
                        struct pim_tensor *t)
{
    pim_tensor_free(t);
    if (json_is_array(v)) return tensor_from_nested(pc, param, v, t);
    if (json_is_object(v)) return tensor_from_object(pc, param, v, t);
    return INVALID(pc->err, param,
                   "'%s' must be a nested array or {\"shape\", \"dtype\", \"data\"}", param);
}

/* ------------------------------------------------------------- job fields */

static int p_type(struct parse_ctx *pc, const char *k, const json_t *v)
{
    const char *s = json_string_value(v);
    enum pim_job_type type;
    if (!s || pim_job_type_parse(s, &type) != 0)
        return set_error(pc->err, -EINVAL, "unknown_type", k,
                         "'type' must be one of vmm, solve, invert, kfac_step, sme_map, "
                         "admm_compress, dataflow_eval");
    pc->job->type = type;
    pc->have_type = true;
    return 0;
}

static int p_device(struct parse_ctx *pc, const char *k, const json_t *v)
{
    const char *preset = json_is_string(v)   ? json_string_value(v)
                         : json_is_object(v) ? json_string_value(json_object_get(v, "preset"))
                                             : NULL;
    if (!json_is_string(v) && !json_is_object(v))
        return INVALID(pc->err, k, "'device' must be a preset name or an object");
    if (json_is_object(v) && json_object_get(v, "preset") && !preset)
        return INVALID(pc->err, "device.preset", "'device.preset' must be a string");
    if (preset) {
        const struct pim_device *d = pc->presets ? pim_presets_find(pc->presets, preset) : NULL;
        if (!d && strcmp(preset, "isaac") != 0) {
            char known[256] = "isaac";
            for (int i = 0; pc->presets && i < pim_presets_count(pc->presets); i++) {
                const char *name = pim_presets_at(pc->presets, i)->name;
                if (strcmp(name, "isaac") != 0)
                    snprintf(known + strlen(known), sizeof known - strlen(known), ", %s", name);
            }
            return set_error(pc->err, -EINVAL, "unknown_preset",
                             json_is_string(v) ? "device" : "device.preset",
                             "unknown device preset '%.64s': one of %s", preset, known);
        }
        if (d)
            pc->job->device = *d;
        else
            pim_device_default(&pc->job->device);
    }
    return json_is_object(v) ? pim_json_device_apply(v, &pc->job->device, "device.", pc->err) : 0;
}

/* "isaac, cascade, neural_pim": the accepted dataflow names, for messages. */
static const char *dataflow_names(void)
{
    static char names[128];
    if (!names[0])
        for (int k = 0; k < PIM_DF_COUNT; k++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "",
                     pim_dataflow_get((enum pim_dataflow_kind)k)->name);
    return names;
}

static int p_dataflow(struct parse_ctx *pc, const char *k, const json_t *v)
{
    const struct pim_dataflow *df =
        json_is_string(v) ? pim_dataflow_by_name(json_string_value(v)) : NULL;
    if (!df)
        return set_error(pc->err, -EINVAL, "invalid_value", k, "'dataflow' must be one of %s",
                         dataflow_names());
    pc->job->dataflow = df->kind;
    return 0;
}

static int p_dataflows(struct parse_ctx *pc, const char *k, const json_t *v)
{
    if (json_is_string(v) && strcmp(json_string_value(v), "all") == 0) {
        pc->job->dataflows = (1u << PIM_DF_COUNT) - 1;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return INVALID(pc->err, k, "'dataflows' must be a non-empty list of dataflow names");
    unsigned mask = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        const struct pim_dataflow *df =
            json_is_string(e) ? pim_dataflow_by_name(json_string_value(e)) : NULL;
        if (!df)
            return set_error(pc->err, -EINVAL, "invalid_value", k,
                             "'dataflows[%zu]' is not a dataflow: one of %s, or \"all\"", i,
                             dataflow_names());
        mask |= 1u << df->kind;
    }
    pc->job->dataflows = mask;
    return 0;
}

static int p_seed(struct parse_ctx *pc, const char *k, const json_t *v)
{
    int64_t s;
    int rc = get_int64(v, 0, INT64_MAX, k, &s, pc->err);
    if (rc == 0) pc->job->seed = (uint64_t)s;
    return rc;
}

static int p_block(struct parse_ctx *pc, const char *k, const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) != 2)
        return INVALID(pc->err, k, "'block' must be [rows, cols]");
    int rc = get_int(json_array_get(v, 0), 1, 65536, k, &pc->job->admm.block_rows, pc->err);
    return rc ? rc : get_int(json_array_get(v, 1), 1, 65536, k, &pc->job->admm.block_cols, pc->err);
}

/* One layer: {"in", "out", "count"} or {"conv": {...}, "count"}, plus "name". */
static int parse_layer(struct parse_ctx *pc, const json_t *v, size_t i, struct pim_layer_shape *l)
{
    char param[64];
    snprintf(param, sizeof param, "layers[%zu]", i);
    if (!json_is_object(v)) return INVALID(pc->err, param, "'%s' must be an object", param);
    int64_t in = 0, out = 0, count = 1, pixels = 1;
    const char *key;
    json_t *f;
    int rc = 0;
    json_object_foreach((json_t *)v, key, f)
    {
        char fp[96];
        snprintf(fp, sizeof fp, "%s.%s", param, key);
        if (!strcmp(key, "in"))
            rc = get_int64(f, 1, 1 << 30, fp, &in, pc->err);
        else if (!strcmp(key, "out"))
            rc = get_int64(f, 1, 1 << 30, fp, &out, pc->err);
        else if (!strcmp(key, "count"))
            rc = get_int64(f, 1, (int64_t)1 << 40, fp, &count, pc->err);
        else if (!strcmp(key, "name"))
            rc = json_is_string(f) ? 0 : INVALID(pc->err, fp, "'%s' must be a string", fp);
        else if (!strcmp(key, "conv")) {
            int64_t cin = 0, cout = 0, kh = 0, kw = 0, oh = 1, ow = 1;
            const char *ck;
            json_t *cv;
            if (!json_is_object(f)) return INVALID(pc->err, fp, "'%s' must be an object", fp);
            json_object_foreach(f, ck, cv)
            {
                char cp[128];
                snprintf(cp, sizeof cp, "%s.%s", fp, ck);
                if (!strcmp(ck, "in_channels"))
                    rc = get_int64(cv, 1, 1 << 20, cp, &cin, pc->err);
                else if (!strcmp(ck, "out_channels"))
                    rc = get_int64(cv, 1, 1 << 20, cp, &cout, pc->err);
                else if (!strcmp(ck, "out_h"))
                    rc = get_int64(cv, 1, 1 << 20, cp, &oh, pc->err);
                else if (!strcmp(ck, "out_w"))
                    rc = get_int64(cv, 1, 1 << 20, cp, &ow, pc->err);
                else if (!strcmp(ck, "kernel")) {
                    if (!json_is_array(cv) || json_array_size(cv) != 2)
                        return INVALID(pc->err, cp, "'%s' must be [kh, kw]", cp);
                    rc = get_int64(json_array_get(cv, 0), 1, 1024, cp, &kh, pc->err);
                    if (!rc) rc = get_int64(json_array_get(cv, 1), 1, 1024, cp, &kw, pc->err);
                } else
                    return set_error(pc->err, -EINVAL, "unknown_parameter", cp,
                                     "unknown field '%s'", cp);
                if (rc) return rc;
            }
            if (!cin || !cout || !kh)
                return set_error(pc->err, -EINVAL, "missing_parameter", fp,
                                 "'%s' needs in_channels, out_channels and kernel", fp);
            in = cin * kh * kw;
            out = cout;
            if (in > 1 << 30) return INVALID(pc->err, fp, "'%s' has too large a fan-in", fp);
            pixels = oh * ow; /* one input vector per output pixel */
        } else
            return set_error(pc->err, -EINVAL, "unknown_parameter", fp, "unknown field '%s'", fp);
        if (rc) return rc;
    }
    if (count > ((int64_t)1 << 48) / pixels)
        return INVALID(pc->err, param, "'%s' runs too many vectors", param);
    count *= pixels;
    if (!in || !out)
        return set_error(pc->err, -EINVAL, "missing_parameter", param,
                         "'%s' needs 'in' and 'out' (or 'conv')", param);
    *l = (struct pim_layer_shape){(int)in, (int)out, (uint64_t)count};
    return 0;
}

static int p_layers(struct parse_ctx *pc, const char *k, const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return INVALID(pc->err, k, "'layers' must be a non-empty list");
    if (json_array_size(v) > (size_t)pc->lim->max_layers)
        return set_error(pc->err, -E2BIG, "too_large", k, "'layers' lists more than %d layers",
                         pc->lim->max_layers);
    free(pc->job->layers);
    pc->job->n_layers = 0;
    pc->job->layers = util_xmalloc(json_array_size(v) * sizeof *pc->job->layers);
    for (size_t i = 0; i < json_array_size(v); i++) {
        int rc = parse_layer(pc, json_array_get(v, i), i, &pc->job->layers[i]);
        if (rc) return rc;
        pc->job->n_layers++;
    }
    return 0;
}

/* Tensor fields: the offset of the pim_tensor in struct pim_job. */
static const struct {
    const char *name;
    size_t offset;
} tensor_fields[] = {
    {"matrix", offsetof(struct pim_job, matrix)},
    {"input", offsetof(struct pim_job, input)},
    {"rhs", offsetof(struct pim_job, rhs)},
    {"activations", offsetof(struct pim_job, activations)},
    {"output_grads", offsetof(struct pim_job, output_grads)},
    {"grad", offsetof(struct pim_job, grad)},
    {"inputs", offsetof(struct pim_job, inputs)},
    {"targets", offsetof(struct pim_job, targets)},
};

/* Scalar option fields. */
enum opt_kind { O_INT, O_REAL, O_BOOL };
static const struct {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    int lo, hi;
} option_fields[] = {
    {"calibrate_adc", O_BOOL, offsetof(struct pim_job, calibrate_adc), 0, 0},
    {"refine", O_BOOL, offsetof(struct pim_job, solve.refine), 0, 0},
    {"max_iterations", O_INT, offsetof(struct pim_job, solve.max_iterations), 0, 1000},
    {"inner_max", O_INT, offsetof(struct pim_job, solve.inner_max), 1, 1000},
    {"tolerance", O_REAL, offsetof(struct pim_job, solve.tolerance), 0, 0},
    {"residual_bits", O_INT, offsetof(struct pim_job, solve.residual_bits), 8, 32},
    {"damping", O_REAL, offsetof(struct pim_job, damping), 0, 0},
    {"weight_bits", O_INT, offsetof(struct pim_job, weight_bits), 2, 16},
    {"max_bits", O_INT, offsetof(struct pim_job, sme_max_bits), 0, 16},
    {"keep_ratio", O_REAL, offsetof(struct pim_job, admm.keep_ratio), 0, 0},
    {"levels", O_INT, offsetof(struct pim_job, admm.levels), 2, 65536},
    {"rho", O_REAL, offsetof(struct pim_job, admm.rho), 0, 0},
    {"iterations", O_INT, offsetof(struct pim_job, admm.iterations), 0, 10000},
    {"w_steps", O_INT, offsetof(struct pim_job, admm.w_steps), 1, 10000},
    {"retrain_steps", O_INT, offsetof(struct pim_job, admm.retrain_steps), 0, 100000},
    {"mismatch_sigma", O_REAL, offsetof(struct pim_job, admm.mismatch_sigma), 0, 0},
    {"mismatch_trials", O_INT, offsetof(struct pim_job, admm.mismatch_trials), 0, 1000},
};

static const struct {
    const char *name;
    int (*parse)(struct parse_ctx *pc, const char *key, const json_t *v);
} special_fields[] = {
    {"type", p_type}, {"device", p_device}, {"dataflow", p_dataflow}, {"dataflows", p_dataflows},
    {"seed", p_seed}, {"block", p_block},   {"layers", p_layers},
};

#define COUNT(a) (sizeof(a) / sizeof *(a))

static int parse_field(struct parse_ctx *pc, const char *key, const json_t *v)
{
    for (size_t i = 0; i < COUNT(special_fields); i++)
        if (!strcmp(key, special_fields[i].name)) return special_fields[i].parse(pc, key, v);
    for (size_t i = 0; i < COUNT(tensor_fields); i++)
        if (!strcmp(key, tensor_fields[i].name))
            return parse_tensor(pc, key, v,
                                (struct pim_tensor *)((char *)pc->job + tensor_fields[i].offset));
    for (size_t i = 0; i < COUNT(option_fields); i++) {
        if (strcmp(key, option_fields[i].name)) continue;
        void *p = (char *)pc->job + option_fields[i].offset;
        switch (option_fields[i].kind) {
        case O_INT:
            return get_int(v, option_fields[i].lo, option_fields[i].hi, key, p, pc->err);
        case O_REAL:
            return get_real(v, key, p, pc->err);
        case O_BOOL:
            return get_bool(v, key, p, pc->err);
        }
    }
    return set_error(pc->err, -EINVAL, "unknown_parameter", key, "unknown parameter '%s'", key);
}

int pim_json_parse_job_object(const json_t *root, const struct pim_json_limits *lim,
                              const pim_presets *presets, struct pim_job *job,
                              struct pim_json_error *err)
{
    struct pim_json_limits defaults;
    if (!lim) {
        pim_json_limits_default(&defaults);
        lim = &defaults;
    }
    pim_job_init(job, PIM_JOB_VMM);
    const struct pim_device *isaac = presets ? pim_presets_find(presets, "isaac") : NULL;
    if (isaac) job->device = *isaac;
    struct parse_ctx pc = {.job = job, .lim = lim, .presets = presets, .err = err};
    int rc = 0;
    if (!json_is_object(root)) {
        rc = INVALID(err, NULL, "the job must be a JSON object");
    } else {
        /* The type first: errors about other fields read better knowing it. */
        const json_t *type = json_object_get(root, "type");
        if (!type)
            rc = set_error(err, -EINVAL, "missing_parameter", "type", "'type' is required");
        else
            rc = p_type(&pc, "type", type);
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)root, key, v)
        {
            if (rc) break;
            if (strcmp(key, "type") != 0) rc = parse_field(&pc, key, v);
        }
    }
    if (rc == 0) {
        struct pim_error perr = {0};
        if (pim_job_validate(job, &perr) != 0) {
            bool missing = strstr(perr.message, "is required") != NULL;
            rc = set_error(err, -EINVAL, missing ? "missing_parameter" : "invalid_value",
                           perr.param[0] ? perr.param : NULL, "%s", perr.message);
        }
    }
    if (rc) pim_job_free(job);
    return rc;
}

int pim_json_parse_job(const char *body, size_t len, const struct pim_json_limits *lim,
                       const pim_presets *presets, struct pim_job *job, struct pim_json_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        pim_job_init(job, PIM_JOB_VMM);
        return set_error(err, -EINVAL, "invalid_json", NULL,
                         "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                         jerr.text);
    }
    int rc = pim_json_parse_job_object(root, lim, presets, job, err);
    json_decref(root);
    return rc;
}

void pim_json_format_job_id(const char *replica_id, uint64_t id, char buf[PIM_JOB_ID_MAX])
{
    if (replica_id && replica_id[0])
        snprintf(buf, PIM_JOB_ID_MAX, "pim-%.32s-%" PRIu64, replica_id, id);
    else
        snprintf(buf, PIM_JOB_ID_MAX, "pim-%" PRIu64, id);
}

int pim_json_parse_job_id(const char *replica_id, const char *text, uint64_t *id)
{
    if (!text || strncmp(text, "pim-", 4) != 0) return -EINVAL;
    const char *p = text + 4;
    if (replica_id && replica_id[0]) {
        size_t n = strlen(replica_id);
        if (strncmp(p, replica_id, n) != 0 || p[n] != '-') return -EINVAL;
        p += n + 1;
    }
    if (*p < '1' || *p > '9') return -EINVAL;
    uint64_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10) return -EINVAL;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *id = v;
    return 0;
}

/* ----------------------------------------------------------------- render */

static json_t *real_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static json_t *nested(const float *data, int ndim, const int64_t *shape, size_t *pos)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < shape[0]; i++)
        json_array_append_new(a, ndim == 1 ? real_or_null(data[(*pos)++])
                                           : nested(data, ndim - 1, shape + 1, pos));
    return a;
}

static json_t *tensor_json(const struct pim_tensor *t, const struct pim_json_limits *lim)
{
    if (t->ndim == 0) return json_null();
    size_t count = pim_tensor_count(t);
    if ((int64_t)count <= lim->max_output_elements_nested) {
        size_t pos = 0;
        return nested(t->data, t->ndim, t->shape, &pos);
    }
    json_t *shape = json_array();
    for (int i = 0; i < t->ndim; i++) json_array_append_new(shape, json_integer(t->shape[i]));
    char *b64 = b64_encode((const uint8_t *)t->data, count * sizeof(float));
    json_t *o = json_pack("{s:o, s:s, s:s}", "shape", shape, "dtype", "f32", "data", b64);
    free(b64);
    return o;
}

json_t *pim_json_cost(const struct pim_cost *c)
{
    json_t *energy = json_object();
    json_object_set_new(energy, "total", json_real(pim_cost_energy(c)));
    for (int i = 0; i < PIM_E_COUNT; i++)
        json_object_set_new(energy, pim_energy_part_name((enum pim_energy_part)i),
                            json_real(c->energy[i]));
    return json_pack(
        "{s:I, s:f, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}", "cycles",
        (json_int_t)c->cycles, "latency_s", c->latency, "energy_j", energy, "adc_conversions",
        (json_int_t)c->adc_conversions, "dac_conversions", (json_int_t)c->dac_conversions,
        "crossbar_reads", (json_int_t)c->crossbar_reads, "shift_adds", (json_int_t)c->shift_adds,
        "analog_ops", (json_int_t)c->analog_ops, "cell_writes", (json_int_t)c->cell_writes,
        "inv_solves", (json_int_t)c->inv_solves, "crossbars", (json_int_t)c->crossbars, "adcs",
        (json_int_t)c->adcs, "area_mm2", c->area);
}

static double ratio(double a, double b)
{
    return b > 0 ? a / b : NAN;
}

static void add_type_fields(json_t *r, enum pim_job_type type, const struct pim_result *res)
{
    switch (type) {
    case PIM_JOB_SOLVE:
    case PIM_JOB_INVERT:
    case PIM_JOB_KFAC_STEP:
        json_object_set_new(r, "iterations", json_integer(res->iterations));
        json_object_set_new(r, "inv_solves", json_integer(res->solve.inv_solves));
        json_object_set_new(r, "vmm_products", json_integer(res->solve.vmm_products));
        json_object_set_new(r, "residual", real_or_null(res->solve.residual));
        json_object_set_new(r, "converged", json_boolean(res->solve.converged));
        if (type != PIM_JOB_KFAC_STEP) {
            json_object_set_new(json_object_get(r, "error"), "plain_rel_l2_vs_fp64",
                                real_or_null(res->plain_rel_l2));
        } else {
            json_object_set_new(r, "digital_cost", pim_json_cost(&res->digital));
            json_object_set_new(r, "speedup_vs_digital",
                                real_or_null(ratio(res->digital.latency, res->cost.latency)));
            json_object_set_new(
                r, "energy_saving_vs_digital",
                real_or_null(ratio(pim_cost_energy(&res->digital), pim_cost_energy(&res->cost))));
        }
        break;
    case PIM_JOB_SME_MAP:
        json_object_set_new(r, "crossbars",
                            json_pack("{s:I, s:I, s:I}", "baseline",
                                      (json_int_t)res->sme.crossbars_baseline, "sme",
                                      (json_int_t)res->sme.crossbars_sme, "offset_mapping",
                                      (json_int_t)res->sme.crossbars_offset));
        json_object_set_new(r, "zero_columns", json_integer((json_int_t)res->sme.zero_columns));
        json_object_set_new(r, "zero_rows", json_integer((json_int_t)res->sme.zero_rows));
        json_object_set_new(r, "bit_density", json_real(res->sme.bit_density));
        break;
    case PIM_JOB_ADMM_COMPRESS: {
        const struct pim_admm_stats *a = &res->admm;
        json_object_set_new(r, "compression_ratio", real_or_null(a->compression_ratio));
        json_object_set_new(
            r, "blocks", json_pack("{s:i, s:i}", "total", a->blocks_total, "kept", a->blocks_kept));
        json_t *e = json_object_get(r, "error");
        json_object_set_new(e, "before", real_or_null(a->error_before));
        json_object_set_new(e, "pruned", real_or_null(a->error_pruned));
        json_object_set_new(e, "after", real_or_null(a->error_after));
        json_object_set_new(e, "mismatch", real_or_null(a->error_mismatch));
        json_object_set_new(r, "scale", real_or_null(a->scale));
        json_object_set_new(r, "crossbars",
                            json_pack("{s:I, s:I, s:I}", "dense", (json_int_t)a->crossbars_dense,
                                      "kept", (json_int_t)a->crossbars_kept, "freed",
                                      (json_int_t)a->crossbars_freed));
        json_object_set_new(
            r, "power_w", json_pack("{s:f, s:f}", "dense", a->power_dense, "kept", a->power_kept));
        json_object_set_new(r, "area_mm2",
                            json_pack("{s:f, s:f}", "dense", a->area_dense, "kept", a->area_kept));
        break;
    }
    case PIM_JOB_DATAFLOW_EVAL: {
        json_t *reports = json_array();
        const struct pim_dataflow_report *isaac = NULL;
        for (int i = 0; i < res->n_reports; i++)
            if (res->reports[i].kind == PIM_DF_ISAAC) isaac = &res->reports[i];
        for (int i = 0; i < res->n_reports; i++) {
            const struct pim_dataflow_report *rep = &res->reports[i];
            json_t *o = json_pack(
                "{s:s, s:o, s:f, s:f, s:f}", "dataflow", pim_dataflow_get(rep->kind)->name, "cost",
                pim_json_cost(&rep->cost), "throughput", rep->throughput, "throughput_per_mm2",
                rep->throughput_per_mm2, "energy_per_vector_j", rep->energy_per_vector);
            if (isaac) {
                json_object_set_new(o, "adc_ratio_vs_isaac",
                                    real_or_null(ratio((double)isaac->cost.adc_conversions,
                                                       (double)rep->cost.adc_conversions)));
                json_object_set_new(o, "energy_ratio_vs_isaac",
                                    real_or_null(ratio(pim_cost_energy(&isaac->cost),
                                                       pim_cost_energy(&rep->cost))));
                json_object_set_new(
                    o, "throughput_per_mm2_ratio_vs_isaac",
                    real_or_null(ratio(rep->throughput_per_mm2, isaac->throughput_per_mm2)));
            }
            json_array_append_new(reports, o);
        }
        json_object_set_new(r, "reports", reports);
        break;
    }
    default:
        break;
    }
}

json_t *pim_json_job(const struct pim_job_view *view, const struct pim_json_limits *lim)
{
    struct pim_json_limits defaults;
    if (!lim) {
        pim_json_limits_default(&defaults);
        lim = &defaults;
    }
    char id[PIM_JOB_ID_MAX];
    pim_json_format_job_id(lim->replica_id, view->id, id);
    json_t *o =
        json_pack("{s:s, s:s, s:s, s:s}", "id", id, "object", "pim.job", "type",
                  pim_job_type_name(view->type), "status", pim_job_status_name(view->status));
    json_object_set_new(o, "device", view->device >= 0 ? json_integer(view->device) : json_null());
    double started = view->started > 0 ? view->started : view->finished;
    json_object_set_new(o, "queue_seconds",
                        started > 0 ? json_real(started - view->submitted) : json_null());
    json_object_set_new(o, "run_seconds",
                        view->started > 0 && view->finished > 0
                            ? json_real(view->finished - view->started)
                            : json_null());
    if (view->status == PIM_STATUS_DONE && view->result) {
        const struct pim_result *res = view->result;
        json_t *r = json_object();
        json_object_set_new(r, "output", tensor_json(&res->output, lim));
        json_object_set_new(
            r, "error", json_pack("{s:o}", "rel_l2_vs_fp64", real_or_null(res->rel_l2_vs_fp64)));
        json_object_set_new(r, "cost", pim_json_cost(&res->cost));
        add_type_fields(r, view->type, res);
        json_object_set_new(o, "result", r);
    } else if (view->status == PIM_STATUS_FAILED) {
        struct pim_json_error e = {0};
        const char *code = view->error_code == -EDOM     ? "singular_matrix"
                           : view->error_code == -ERANGE ? "non_finite_result"
                           : view->error_code == -EINVAL ? "invalid_value"
                                                         : "job_failed";
        set_error(&e, 0, code, view->error && view->error->param[0] ? view->error->param : NULL,
                  "%s",
                  view->error && view->error->message[0] ? view->error->message
                                                         : util_strerror(view->error_code));
        json_t *body = pim_json_error_body(&e);
        json_object_set(o, "error", json_object_get(body, "error"));
        json_decref(body);
    }
    return o;
}

json_t *pim_json_error_body(const struct pim_json_error *err)
{
    return json_pack("{s:{s:s, s:s, s:o, s:s}}", "error", "message", err->message, "type",
                     err->type[0] ? err->type : "invalid_request_error", "param",
                     err->param[0] ? json_string(err->param) : json_null(), "code",
                     err->code[0] ? err->code : "invalid_value");
}

json_t *pim_json_devices(const struct pim_device_info *devices, int n,
                         const struct pim_device *config, const struct pim_pool_stats *stats,
                         const char *replica_id)
{
    json_t *data = json_array();
    for (int i = 0; i < n; i++) {
        const struct pim_device_info *d = &devices[i];
        char id[PIM_JOB_ID_MAX];
        pim_json_format_job_id(replica_id, d->current_job, id);
        json_array_append_new(data, json_pack("{s:i, s:s, s:s, s:b, s:o, s:I, s:f, s:f}", "id",
                                              d->index, "object", "pim.device", "name", d->name,
                                              "busy", d->busy, "current_job",
                                              d->current_job ? json_string(id) : json_null(),
                                              "jobs_done", (json_int_t)d->jobs_done, "busy_seconds",
                                              d->busy_seconds, "energy_j", d->energy));
    }
    json_t *o = json_pack("{s:s, s:o}", "object", "list", "data", data);
    /* which replica answered, through a load balancer */
    json_object_set_new(o, "replica_id",
                        replica_id && replica_id[0] ? json_string(replica_id) : json_null());
    if (config) json_object_set_new(o, "config", pim_json_device(config));
    if (stats) {
        json_object_set_new(o, "queue",
                            json_pack("{s:i, s:i}", "length", stats->queue_length, "capacity",
                                      stats->queue_capacity));
        json_t *jobs = json_object();
        for (int t = 0; t < PIM_JOB_TYPE_COUNT; t++) {
            json_t *by = json_pack("{s:I}", "submitted", (json_int_t)stats->submitted[t]);
            for (int s = PIM_STATUS_DONE; s < PIM_STATUS_COUNT; s++)
                json_object_set_new(by, pim_job_status_name((enum pim_job_status)s),
                                    json_integer((json_int_t)stats->finished[t][s]));
            json_object_set_new(jobs, pim_job_type_name((enum pim_job_type)t), by);
        }
        json_object_set_new(o, "jobs", jobs);
        json_object_set_new(o, "busy_devices", json_integer(stats->busy_devices));
        json_object_set_new(o, "energy_j", json_real(stats->energy));
        json_object_set_new(o, "adc_conversions", json_integer((json_int_t)stats->adc_conversions));
    }
    return o;
}

/*
 * settings.c: the one settings table of llmd (settings.h). One table
 * describes each setting once; the config file key, the LLMD_* variable, the
 * --flag, the default, the range and the help line all come from it.
 */
#include "cli/settings.h"

#include "util/util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ------------------------------------------------------------ the table */

enum opt_type { OPT_STRING, OPT_INT, OPT_DOUBLE, OPT_BOOL, OPT_LIST };

struct opt {
    const char *key; /* file key; flag and variable derive from it */
    enum opt_type type;
    size_t offset;       /* of the value in struct srv_config */
    size_t count_offset; /* OPT_LIST: of its count */
    const char *def;     /* default, as text (parsed like a variable's value) */
    double min, max;     /* OPT_INT, OPT_DOUBLE */
    const char *choices; /* OPT_STRING: "a|b|c", or NULL for any */
    bool secret;         /* never echoed in messages */
    unsigned group;
    const char *metavar;
    const char *help;
};

#define OFF(field) offsetof(struct srv_config, field)
#define M          CMD_SETTINGS_GROUP_MODEL
#define S          CMD_SETTINGS_GROUP_SERVER

static const struct opt opts[] = {
    {"host", OPT_STRING, OFF(host), 0, "127.0.0.1", 0, 0, NULL, false, S, "ADDR",
     "address to listen on (IPv4 or IPv6 literal, or a host name)"},
    {"port", OPT_INT, OFF(port), 0, "8080", 0, 65535, NULL, false, S, "N",
     "TCP port; 0 picks a free one and prints it"},
    {"model", OPT_STRING, OFF(model), 0, "models/llmd-20m.gguf", 0, 0, NULL, false, M, "PATH",
     "GGUF model file"},
    {"served_model_name", OPT_STRING, OFF(served_model_name), 0, "", 0, 0, NULL, false, S, "NAME",
     "model name in the API; empty = the model's own name"},
    {"threads", OPT_INT, OFF(threads), 0, "0", 0, 1024, NULL, false, M, "N",
     "compute threads; 0 = all cores"},
    {"precision", OPT_STRING, OFF(precision), 0, "atom", 0, 0, "fp32|w8a8|w4a4-rtn|atom", false, M,
     "P", "how the linear layers compute"},
    {"kv_type", OPT_STRING, OFF(kv_type), 0, "int4", 0, 0, "f32|f16|int8|int4", false, M, "T",
     "KV cache element type"},
    {"group_size", OPT_INT, OFF(group_size), 0, "128", 0, 512, NULL, false, M, "N",
     "Atom: channels per int4 group (multiple of 16); 0 = per row (at most 512: the kernels' "
     "limit)"},
    {"outliers", OPT_INT, OFF(outliers), 0, "-1", -1, 65536, NULL, false, M, "N",
     "Atom: int8 outlier channels (multiple of 16); -1 = width/32, 0 = none"},
    {"act_clip", OPT_DOUBLE, OFF(act_clip), 0, "0.9", 0.01, 1, NULL, false, M, "F",
     "Atom: activation clipping ratio (1 = none)"},
    {"weight_clip", OPT_DOUBLE, OFF(weight_clip), 0, "0.85", 0.01, 1, NULL, false, M, "F",
     "Atom: weight clipping ratio (1 = none)"},
    {"gptq", OPT_BOOL, OFF(gptq), 0, "true", 0, 0, NULL, false, M, NULL,
     "Atom: GPTQ for the int4 weights (--no-gptq: round to nearest)"},
    {"calib_file", OPT_STRING, OFF(calib_file), 0, "models/calibration.txt", 0, 0, NULL, false, M,
     "FILE", "Atom: calibration text"},
    {"calib_tokens", OPT_INT, OFF(calib_tokens), 0, "16384", 16, 1 << 24, NULL, false, M, "N",
     "Atom: calibration tokens"},
    {"head", OPT_STRING, OFF(head), 0, "int4", 0, 0, "f32|f16|int8|int4", false, M, "H",
     "output head (lm_head): int4 (W4A8) reads an eighth of f32's bytes a decode step, int8 (W8A8) "
     "a quarter, f16 half; a quantized file's own head wins"},
    {"kv_pages", OPT_INT, OFF(kv_pages), 0, "0", 0, INT_MAX, NULL, false, M, "N",
     "KV cache pages; 0 = the context x max_running sequences (serve), x 8 (the other commands)"},
    {"page_size", OPT_INT, OFF(page_size), 0, "16", 1, 4096, NULL, false, M, "N",
     "tokens per KV page"},
    {"quest_budget", OPT_INT, OFF(quest_budget), 0, "1024", 0, INT_MAX, NULL, false, M, "N",
     "default Quest token budget per request: past it, decode attends to the top pages (the first "
     "2 layers stay dense); 0 = dense attention"},
    {"sparse_mode", OPT_STRING, OFF(sparse_mode), 0, "quest", 0, 0, "quest|window", false, M, "M",
     "what a Quest budget selects: quest (query-aware top pages), or window (attention sinks and "
     "the recent pages, the query-agnostic baseline)"},
    {"dense_layers", OPT_INT, OFF(dense_layers), 0, "2", 0, 65536, NULL, false, M, "N",
     "layers that always attend densely under a Quest budget"},
    {"max_running", OPT_INT, OFF(max_running), 0, "32", 1, 4096, NULL, false, S, "N",
     "sequences decoding at once"},
    {"max_waiting", OPT_INT, OFF(max_waiting), 0, "256", 0, 1 << 20, NULL, false, S, "N",
     "requests queued beyond those; more get 429"},
    {"max_step_tokens", OPT_INT, OFF(max_step_tokens), 0, "512", 1, 1 << 20, NULL, false, S, "N",
     "tokens per forward step, prefill chunks included"},
    {"prefill_chunk", OPT_INT, OFF(prefill_chunk), 0, "256", 1, 1 << 20, NULL, false, S, "N",
     "prompt tokens one sequence prefills per step at most"},
    {"prefix_cache", OPT_BOOL, OFF(prefix_cache), 0, "true", 0, 0, NULL, false, S, NULL,
     "share the KV pages of common prompt prefixes (a system prompt, a chat's history) between "
     "requests and keep them until the pool needs the pages (--no-prefix-cache: off)"},
    {"max_body_bytes", OPT_INT, OFF(max_body_bytes), 0, "1048576", 64, 1 << 30, NULL, false, S, "N",
     "largest request body; more gets 413"},
    {"max_header_bytes", OPT_INT, OFF(max_header_bytes), 0, "32768", 4096, 1 << 24, NULL, false, S,
     "N", "per-connection memory for the request line and headers; more gets 431"},
    {"max_connections", OPT_INT, OFF(max_connections), 0, "1024", 1, 1 << 20, NULL, false, S, "N",
     "open connections at most; more are refused"},
    {"request_timeout_s", OPT_DOUBLE, OFF(request_timeout_s), 0, "600", 0, 1e9, NULL, false, S,
     "SEC", "a generation request ends after this long; 0 = no limit"},
    {"sse_keepalive_s", OPT_DOUBLE, OFF(sse_keepalive_s), 0, "10", 0, 1e6, NULL, false, S, "SEC",
     "a stream with nothing to send for this long (a long prompt prefilling) gets an SSE comment, "
     "so that proxies keep it open; 0 = never"},
    {"idle_timeout_s", OPT_DOUBLE, OFF(idle_timeout_s), 0, "60", 1, 1e6, NULL, false, S, "SEC",
     "an idle connection is closed after this long"},
    {"grace_s", OPT_DOUBLE, OFF(grace_s), 0, "30", 0, 1e6, NULL, false, S, "SEC",
     "on SIGTERM/SIGINT, running requests get this long to finish"},
    {"api_keys", OPT_LIST, OFF(api_keys), OFF(n_api_keys), "", 0, 0, NULL, true, S, "K1,K2",
     "accepted bearer keys; empty = no authentication"},
    {"auth_health_metrics", OPT_BOOL, OFF(auth_health_metrics), 0, "false", 0, 0, NULL, false, S,
     NULL, "require a key for /health and /metrics too"},
    {"cors_origins", OPT_LIST, OFF(cors_origins), OFF(n_cors_origins), "", 0, 0, NULL, false, S,
     "O1,O2", "origins allowed by CORS (\"*\" = any); empty = CORS off"},
    {"pim_devices", OPT_INT, OFF(pim_devices), 0, "2", 1, 256, NULL, false, S, "N",
     "simulated PIM devices, one worker thread each"},
    {"pim_threads_per_job", OPT_INT, OFF(pim_threads_per_job), 0, "0", 0, 1024, NULL, false, S, "N",
     "OpenMP threads one PIM job may use; 0 = cores / pim_devices"},
    {"pim_queue", OPT_INT, OFF(pim_queue), 0, "64", 1, 1 << 20, NULL, false, S, "N",
     "PIM jobs queued beyond the running ones; more get 429"},
    {"pim_result_ttl_s", OPT_DOUBLE, OFF(pim_result_ttl_s), 0, "600", 0, 1e9, NULL, false, S, "SEC",
     "a finished PIM job stays readable this long"},
    {"pim_max_tensor_elements", OPT_INT, OFF(pim_max_tensor_elements), 0, "16777216", 1, INT_MAX,
     NULL, false, S, "N", "elements of one PIM job tensor at most; more gets 413"},
    {"pim_max_wait_s", OPT_DOUBLE, OFF(pim_max_wait_s), 0, "300", 0, 1e6, NULL, false, S, "SEC",
     "the longest \"wait\" a PIM job request may ask for"},
    {"pim_preset", OPT_STRING, OFF(pim_preset), 0, "isaac", 0, 0, NULL, false, S, "NAME",
     "device preset of PIM jobs that name none"},
    {"pim_presets_dir", OPT_STRING, OFF(pim_presets_dir), 0, "conf/pim", 0, 0, NULL, false, S,
     "DIR", "folder of PIM device presets (*.json); missing = the built-in isaac only"},
    {"replica_id", OPT_STRING, OFF(replica_id), 0, "", 0, 0, NULL, false, S, "ID",
     "this replica's name behind a load balancer (letters, digits, _; up to 32): prefixed to PIM "
     "job ids (pim-ID-N, so that a balancer can send polls home) and a label of llmd_build_info"},
    {"log_level", OPT_STRING, OFF(log_level), 0, "info", 0, 0, "error|warn|info|debug", false, S,
     "L", "log level"},
    {"log_json", OPT_BOOL, OFF(log_json), 0, "false", 0, 0, NULL, false, S, NULL,
     "log one JSON object a line"},
    {"access_log", OPT_BOOL, OFF(access_log), 0, "true", 0, 0, NULL, false, S, NULL,
     "log one line per HTTP request"},
};

#undef M
#undef S
#undef OFF

#define N_OPTS (sizeof opts / sizeof opts[0])

/* Flags users already type, kept working: another spelling of a setting, or
 * a shortcut for one of its values (value == NULL: the flag takes one). */
static const struct alias {
    const char *flag;
    const char *key;
    const char *value;
} aliases[] = {
    {"kv", "kv_type", NULL},
    {"head-f16", "head", "f16"},
    {"head-int8", "head", "int8"},
};

#define N_ALIASES (sizeof aliases / sizeof aliases[0])

static void *opt_field(struct srv_config *c, const struct opt *o)
{
    return (char *)c + o->offset;
}

static __attribute__((format(printf, 3, 4))) int fail(char *err, size_t err_len, const char *fmt,
                                                      ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && err_len) vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* --------------------------------------------------------- value setters */

static void list_free(char **items, int n)
{
    for (int i = 0; i < n; i++) free(items[i]);
    free(items);
}

static void set_string(struct srv_config *c, const struct opt *o, const char *value)
{
    char **field = opt_field(c, o);
    free(*field);
    *field = util_xstrdup(value);
}

static void set_list(struct srv_config *c, const struct opt *o, char **items, int n)
{
    char ***field = opt_field(c, o);
    int *count = (int *)((char *)c + o->count_offset);
    list_free(*field, *count);
    *field = items;
    *count = n;
}

static bool choice_ok(const struct opt *o, const char *value)
{
    if (!o->choices) return true;
    size_t n = strlen(value);
    for (const char *p = o->choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0) return true;
        p += len + (bar ? 1 : 0);
    }
    return false;
}

/* Names the setting as its source spells it. */
static const char *opt_display(const struct opt *o, const char *origin, char *buf, size_t len)
{
    snprintf(buf, len, "%s (%s)", o->key, origin);
    return buf;
}

static int check_string(const struct opt *o, const char *value, const char *origin, char *err,
                        size_t err_len)
{
    char name[128];
    if (!choice_ok(o, value))
        return fail(err, err_len, "%s: '%s' is not one of %s",
                    opt_display(o, origin, name, sizeof name), value, o->choices);
    return 0;
}

static int check_number(const struct opt *o, double v, const char *origin, char *err,
                        size_t err_len)
{
    char name[128];
    if (!(v >= o->min && v <= o->max))
        return fail(err, err_len, "%s: %g is out of range [%g, %g]",
                    opt_display(o, origin, name, sizeof name), v, o->min, o->max);
    return 0;
}

/* Splits "a, b,c" into trimmed non-empty items. */
static char **split_list(const char *text, int *n_out)
{
    char **items = NULL;
    int n = 0;
    for (const char *p = text; *p;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (b > a) {
            items = util_xrealloc(items, sizeof *items * (size_t)(n + 1));
            items[n] = util_xmalloc((size_t)(b - a) + 1);
            memcpy(items[n], a, (size_t)(b - a));
            items[n][b - a] = '\0';
            n++;
        }
        p = comma ? comma + 1 : end;
    }
    *n_out = n;
    return items;
}

static int parse_bool_text(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = true, 0;
        if (strcasecmp(s, no[i]) == 0) return *out = false, 0;
    }
    return -EINVAL;
}

/* Applies a value given as text (a default, a variable, a flag). */
static int apply_text(struct srv_config *c, const struct opt *o, const char *text,
                      const char *origin, char *err, size_t err_len)
{
    char name[128];
    switch (o->type) {
    case OPT_STRING: {
        int rc = check_string(o, text, origin, err, err_len);
        if (rc) return rc;
        set_string(c, o, text);
        return 0;
    }
    case OPT_INT: {
        char *end;
        errno = 0;
        long v = strtol(text, &end, 10);
        if (errno || end == text || *end)
            return fail(err, err_len, "%s: '%s' is not an integer",
                        opt_display(o, origin, name, sizeof name), o->secret ? "..." : text);
        int rc = check_number(o, (double)v, origin, err, err_len);
        if (rc) return rc;
        *(int *)opt_field(c, o) = (int)v;
        return 0;
    }
    case OPT_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(v))
            return fail(err, err_len, "%s: '%s' is not a number",
                        opt_display(o, origin, name, sizeof name), text);
        int rc = check_number(o, v, origin, err, err_len);
        if (rc) return rc;
        *(double *)opt_field(c, o) = v;
        return 0;
    }
    case OPT_BOOL: {
        bool v;
        if (parse_bool_text(text, &v))
            return fail(err, err_len, "%s: '%s' is not true or false",
                        opt_display(o, origin, name, sizeof name), text);
        *(bool *)opt_field(c, o) = v;
        return 0;
    }
    case OPT_LIST: {
        int n;
        char **items = split_list(text, &n);
        set_list(c, o, items, n);
        return 0;
    }
    }
    UTIL_CHECK(!"unknown option type");
    return -EINVAL;
}

/* Applies a value from the JSON config file. */
static int apply_json_value(struct srv_config *c, const struct opt *o, const json_t *v,
                            const char *origin, char *err, size_t err_len)
{
    char name[128];
    opt_display(o, origin, name, sizeof name);
    switch (o->type) {
    case OPT_STRING:
        if (!json_is_string(v)) return fail(err, err_len, "%s: must be a string", name);
        return apply_text(c, o, json_string_value(v), origin, err, err_len);
    case OPT_INT: {
        if (!json_is_integer(v)) return fail(err, err_len, "%s: must be an integer", name);
        json_int_t x = json_integer_value(v);
        int rc = check_number(o, (double)x, origin, err, err_len);
        if (rc) return rc;
        *(int *)opt_field(c, o) = (int)x;
        return 0;
    }
    case OPT_DOUBLE: {
        if (!json_is_number(v)) return fail(err, err_len, "%s: must be a number", name);
        double x = json_number_value(v);
        int rc = check_number(o, x, origin, err, err_len);
        if (rc) return rc;
        *(double *)opt_field(c, o) = x;
        return 0;
    }
    case OPT_BOOL:
        if (!json_is_boolean(v)) return fail(err, err_len, "%s: must be true or false", name);
        *(bool *)opt_field(c, o) = json_is_true(v);
        return 0;
    case OPT_LIST: {
        if (!json_is_array(v)) return fail(err, err_len, "%s: must be an array of strings", name);
        size_t n = json_array_size(v);
        for (size_t i = 0; i < n; i++)
            if (!json_is_string(json_array_get(v, i)) ||
                json_string_length(json_array_get(v, i)) == 0)
                return fail(err, err_len, "%s: item %zu must be a non-empty string", name, i);
        char **items = n ? util_xcalloc(n, sizeof *items) : NULL;
        for (size_t i = 0; i < n; i++)
            items[i] = util_xstrdup(json_string_value(json_array_get(v, i)));
        set_list(c, o, items, (int)n);
        return 0;
    }
    }
    UTIL_CHECK(!"unknown option type");
    return -EINVAL;
}

/* ------------------------------------------------------------ public API */

void cmd_settings_init(struct srv_config *c)
{
    memset(c, 0, sizeof *c);
    char err[256];
    for (size_t i = 0; i < N_OPTS; i++)
        if (apply_text(c, &opts[i], opts[i].def, "default", err, sizeof err))
            util_die("config: bad built-in default: %s", err);
}

void cmd_settings_free(struct srv_config *c)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        if (o->type == OPT_STRING) {
            char **field = opt_field(c, o);
            free(*field);
            *field = NULL;
        } else if (o->type == OPT_LIST) {
            set_list(c, o, NULL, 0);
        }
    }
    free(c->config_path);
    c->config_path = NULL;
}

static const struct opt *find_opt_key(const char *key)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts[i].key, key) == 0) return &opts[i];
    return NULL;
}

int cmd_settings_apply_json(struct srv_config *c, const json_t *object, const char *origin,
                            char *err, size_t err_len)
{
    if (!json_is_object(object))
        return fail(err, err_len, "%s: the settings must be a JSON object", origin);
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)object, key, value)
    {
        const struct opt *o = find_opt_key(key);
        if (!o) return fail(err, err_len, "%s: unknown setting '%.64s'", origin, key);
        int rc = apply_json_value(c, o, value, origin, err, err_len);
        if (rc) return rc;
    }
    return 0;
}

int cmd_settings_apply_file(struct srv_config *c, const char *path, char *err, size_t err_len)
{
    if (access(path, F_OK) != 0) {
        snprintf(err, err_len, "config file %s does not exist", path);
        return -ENOENT;
    }
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return fail(err, err_len, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    int rc = cmd_settings_apply_json(c, root, path, err, err_len);
    json_decref(root);
    if (rc == 0) {
        free(c->config_path);
        c->config_path = util_xstrdup(path);
    }
    return rc;
}

/* "max_body_bytes" -> "LLMD_MAX_BODY_BYTES" */
static void env_name(const struct opt *o, char *out, size_t len)
{
    size_t n = (size_t)snprintf(out, len, "LLMD_%s", o->key);
    for (size_t i = 5; i < n && i < len; i++) out[i] = (char)toupper((unsigned char)out[i]);
}

/* "max_body_bytes" -> "max-body-bytes" */
static void flag_name(const struct opt *o, char *out, size_t len)
{
    snprintf(out, len, "%s", o->key);
    for (char *p = out; *p; p++)
        if (*p == '_') *p = '-';
}

int cmd_settings_apply_env(struct srv_config *c, char *err, size_t err_len)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        char name[64];
        env_name(&opts[i], name, sizeof name);
        const char *v = getenv(name);
        if (!v) continue;
        int rc = apply_text(c, &opts[i], v, name, err, err_len);
        if (rc) return rc;
    }
    return 0;
}

int cmd_settings_parse_flag(struct srv_config *c, int argc, char **argv, int *i, char *err,
                            size_t err_len)
{
    const char *arg = argv[*i];
    if (strncmp(arg, "--", 2) != 0) return 0;
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    bool negated = false;
    if (!eq && strncmp(name, "no-", 3) == 0) {
        negated = true;
        name += 3;
        name_len -= 3;
    }
    for (size_t k = 0; k < N_OPTS; k++) {
        const struct opt *o = &opts[k];
        char flag[64];
        flag_name(o, flag, sizeof flag);
        if (strlen(flag) != name_len || strncmp(flag, name, name_len) != 0) continue;
        char origin[80];
        snprintf(origin, sizeof origin, "--%s", flag);
        if (negated) {
            if (o->type != OPT_BOOL) return 0;
            *(bool *)opt_field(c, o) = false;
            *i += 1;
            return 1;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
            *i += 1;
        } else if (o->type == OPT_BOOL) {
            value = "true";
            *i += 1;
        } else {
            if (*i + 1 >= argc) return fail(err, err_len, "%s needs a value", origin);
            value = argv[*i + 1];
            *i += 2;
        }
        int rc = apply_text(c, o, value, origin, err, err_len);
        return rc ? rc : 1;
    }
    for (size_t k = 0; k < N_ALIASES && !negated; k++) {
        const struct alias *a = &aliases[k];
        if (strlen(a->flag) != name_len || strncmp(a->flag, name, name_len) != 0) continue;
        char origin[80];
        snprintf(origin, sizeof origin, "--%s", a->flag);
        const char *value = a->value;
        if (a->value && eq) return fail(err, err_len, "%s takes no value", origin);
        if (!value && eq) {
            value = eq + 1;
            *i += 1;
        } else if (!value) {
            if (*i + 1 >= argc) return fail(err, err_len, "%s needs a value", origin);
            value = argv[*i + 1];
            *i += 2;
        } else {
            *i += 1;
        }
        int rc = apply_text(c, find_opt_key(a->key), value, origin, err, err_len);
        return rc ? rc : 1;
    }
    return 0;
}

/* getopt_long values: setting i is BASE + 2i (BASE + 2i + 1 for --no-),
 * alias k is BASE + 2 (N_OPTS + k), --config the one after. */
#define OPT_VAL_CONFIG (CMD_SETTINGS_OPT_BASE + 2 * (int)(N_OPTS + N_ALIASES))

struct option *cmd_settings_options(const struct option *own, size_t n_own, unsigned groups)
{
    size_t cap = n_own + 2 * N_OPTS + N_ALIASES + 2;
    struct option *all = util_xcalloc(cap, sizeof *all);
    size_t n = 0;
    for (size_t i = 0; i < n_own; i++) all[n++] = own[i];
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        if (!(o->group & groups)) continue;
        char flag[64];
        flag_name(o, flag, sizeof flag);
        bool is_bool = o->type == OPT_BOOL;
        all[n++] =
            (struct option){util_xstrdup(flag), is_bool ? optional_argument : required_argument,
                            NULL, CMD_SETTINGS_OPT_BASE + 2 * (int)i};
        if (is_bool) {
            char no[80];
            snprintf(no, sizeof no, "no-%s", flag);
            all[n++] = (struct option){util_xstrdup(no), no_argument, NULL,
                                       CMD_SETTINGS_OPT_BASE + 2 * (int)i + 1};
        }
    }
    for (size_t k = 0; k < N_ALIASES; k++)
        if (find_opt_key(aliases[k].key)->group & groups)
            all[n++] = (struct option){util_xstrdup(aliases[k].flag),
                                       aliases[k].value ? no_argument : required_argument, NULL,
                                       CMD_SETTINGS_OPT_BASE + 2 * (int)(N_OPTS + k)};
    all[n++] = (struct option){util_xstrdup("config"), required_argument, NULL, OPT_VAL_CONFIG};
    return all;
}

void cmd_settings_free_options(struct option *options)
{
    if (!options) return;
    for (struct option *o = options; o->name; o++)
        if (o->val >= CMD_SETTINGS_OPT_BASE) free((char *)o->name);
    free(options);
}

int cmd_settings_apply_option(struct srv_config *c, int val, const char *arg, char *err,
                              size_t err_len)
{
    if (val == OPT_VAL_CONFIG) return 0; /* read before the flags */
    if (val < CMD_SETTINGS_OPT_BASE || val > OPT_VAL_CONFIG)
        return fail(err, err_len, "not a setting");
    size_t i = (size_t)(val - CMD_SETTINGS_OPT_BASE) / 2;
    bool negated = (val - CMD_SETTINGS_OPT_BASE) % 2;
    char origin[80];
    if (i >= N_OPTS) {
        const struct alias *a = &aliases[i - N_OPTS];
        snprintf(origin, sizeof origin, "--%s", a->flag);
        return apply_text(c, find_opt_key(a->key), a->value ? a->value : arg, origin, err, err_len);
    }
    const struct opt *o = &opts[i];
    char flag[64];
    flag_name(o, flag, sizeof flag);
    snprintf(origin, sizeof origin, "--%s", flag);
    if (negated) return apply_text(c, o, "false", origin, err, err_len);
    return apply_text(c, o, arg ? arg : "true", origin, err, err_len);
}

int cmd_settings_validate(const struct srv_config *c, char *err, size_t err_len)
{
    if (!c->host[0]) return fail(err, err_len, "host must not be empty");
    if (!c->model[0]) return fail(err, err_len, "model must not be empty");
    if (c->prefill_chunk > c->max_step_tokens)
        return fail(err, err_len, "prefill_chunk (%d) must not exceed max_step_tokens (%d)",
                    c->prefill_chunk, c->max_step_tokens);
    if (c->max_running > c->max_connections)
        return fail(err, err_len, "max_running (%d) must not exceed max_connections (%d)",
                    c->max_running, c->max_connections);
    if (c->group_size % 16)
        return fail(err, err_len, "group_size (%d) must be a multiple of 16, or 0 for per row",
                    c->group_size);
    if (c->outliers != -1 && c->outliers % 16)
        return fail(err, err_len, "outliers (%d) must be a multiple of 16, or -1 for width/32",
                    c->outliers);
    size_t rid = strlen(c->replica_id);
    if (rid > 32 || strspn(c->replica_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789_") != rid)
        return fail(err, err_len,
                    "replica_id: '%.40s' must be up to 32 letters, digits or _ (it goes into "
                    "PIM job ids and metric labels)",
                    c->replica_id);
    for (int i = 0; i < c->n_cors_origins; i++)
        if (strcmp(c->cors_origins[i], "*") != 0 && !strstr(c->cors_origins[i], "://"))
            return fail(err, err_len,
                        "cors_origins: '%.100s' is not an origin (scheme://host[:port] or *)",
                        c->cors_origins[i]);
    return 0;
}

int cmd_settings_apply_file_and_env(struct srv_config *c, int argc, char **argv, char *err,
                                    size_t err_len)
{
    /* The config file comes first, so find --config before the rest. */
    const char *path = getenv("LLMD_CONFIG");
    bool named = path != NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) return fail(err, err_len, "--config needs a value");
            path = argv[++i];
            named = true;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
            named = true;
        }
    }
    if (!path) path = CMD_SETTINGS_DEFAULT_PATH;
    int rc = cmd_settings_apply_file(c, path, err, err_len);
    if (rc == -ENOENT && !named) rc = 0;
    if (rc) return rc;
    return cmd_settings_apply_env(c, err, err_len);
}

int cmd_settings_load(struct srv_config *c, int argc, char **argv, char *err, size_t err_len)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return CMD_SETTINGS_HELP;
    int rc = cmd_settings_apply_file_and_env(c, argc, argv, err, err_len);
    if (rc) return rc;
    for (int i = 1; i < argc;) {
        if (strcmp(argv[i], "--config") == 0) {
            i += 2;
            continue;
        }
        if (strncmp(argv[i], "--config=", 9) == 0) {
            i++;
            continue;
        }
        rc = cmd_settings_parse_flag(c, argc, argv, &i, err, err_len);
        if (rc < 0) return rc;
        if (rc == 0) return fail(err, err_len, "unknown argument '%.100s' (see --help)", argv[i]);
    }
    return cmd_settings_validate(c, err, err_len);
}

json_t *cmd_settings_to_json(const struct srv_config *c)
{
    json_t *root = json_object();
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        const void *field = (const char *)c + o->offset;
        json_t *v = NULL;
        switch (o->type) {
        case OPT_STRING:
            v = json_string(*(char *const *)field);
            break;
        case OPT_INT:
            v = json_integer(*(const int *)field);
            break;
        case OPT_DOUBLE:
            v = json_real(*(const double *)field);
            break;
        case OPT_BOOL:
            v = json_boolean(*(const bool *)field);
            break;
        case OPT_LIST: {
            char *const *items = *(char **const *)field;
            int n = *(const int *)((const char *)c + o->count_offset);
            v = json_array();
            for (int k = 0; k < n; k++)
                json_array_append_new(v, json_string(o->secret ? "<redacted>" : items[k]));
            break;
        }
        }
        json_object_set_new(root, o->key, v);
    }
    return root;
}

void cmd_settings_print_help(FILE *out, unsigned groups)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        if (!(o->group & groups)) continue;
        char flag[64], env[64], left[96];
        flag_name(o, flag, sizeof flag);
        env_name(o, env, sizeof env);
        if (o->type == OPT_BOOL)
            snprintf(left, sizeof left, "--[no-]%s", flag);
        else
            snprintf(left, sizeof left, "--%s %s", flag, o->choices ? o->choices : o->metavar);
        fprintf(out, "  %-36s %s\n", left, o->help);
        fprintf(out, "  %-36s default: %s%s%s; env %s\n", "", o->type == OPT_STRING ? "\"" : "",
                o->def[0] || o->type == OPT_STRING ? o->def : "(none)",
                o->type == OPT_STRING ? "\"" : "", env);
    }
    for (size_t k = 0; k < N_ALIASES; k++) {
        const struct alias *a = &aliases[k];
        const struct opt *o = find_opt_key(a->key);
        if (!(o->group & groups)) continue;
        char flag[64], left[96], right[96];
        flag_name(o, flag, sizeof flag);
        snprintf(left, sizeof left, "--%s%s%s", a->flag, a->value ? "" : " ",
                 a->value ? "" : o->metavar);
        snprintf(right, sizeof right, "the same as --%s %s", flag,
                 a->value ? a->value : o->metavar);
        fprintf(out, "  %-36s %s\n", left, right);
    }
}

/*
 * grammar_schema.c: JSON Schema -> GBNF text, which grammar_gbnf.c then compiles.
 *
 * The output is compact JSON with bounded whitespace (llama.cpp's
 * json-schema-to-grammar shapes): after every value and every ':' or ','
 * at most one space, or a newline and up to 20 spaces or tabs; none before
 * the root value. Numbers have at most 16 integer digits, 16 fraction
 * digits and a 2-digit exponent (every one fits a double; integers fit an
 * int64); strings are JSON strings whose \u escapes are valid (no lone
 * surrogates, no \u0000), so strict parsers such as jansson read them. A
 * bounded schema therefore has finitely many outputs.
 *
 * Supported:
 *   type (one or a list); enum and const (with type: the values of that type);
 *   object: properties, required, additionalProperties. Properties come in
 *     the schema's order, required ones first; absent or false
 *     additionalProperties means no other keys (a subset of what the spec
 *     allows, so still valid); true or a schema allows other keys after the
 *     declared ones, spelled without escapes until they differ from every
 *     declared name (so they never repeat a declared key);
 *   array: items, prefixItems (and items as an array), minItems, maxItems;
 *   string: minLength, maxLength (in characters, as the spec counts them),
 *     format date, time, date-time and uuid;
 *   integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum (numeric
 *     or draft-4 boolean); number, boolean, null;
 *   $ref to "#" or any local JSON pointer ($defs, definitions, ...), recursion included;
 *   anyOf, and oneOf compiled as anyOf (an output may match several
 *     branches when they overlap).
 * Ignored annotations: title, description, default, examples, $schema,
 * $id, $comment, deprecated, readOnly, writeOnly. Anything else (pattern,
 * other formats, bounds on numbers, allOf, not, if/then/else,
 * patternProperties, ...) is an error that names each keyword with its
 * JSON pointer. A schema without type is inferred from its keywords
 * (properties -> object, items -> array, minLength -> string); with none,
 * any JSON value.
 */
#include "core/grammar_internal.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_MAX_DEPTH  128                /* nested schemas, through $refs too */
#define SCHEMA_MAX_INT    9999999999999999LL /* 16 digits */
#define SCHEMA_MAX_NAME   96                 /* rule names derived from keys are cut here */
#define SCHEMA_MAX_ERRORS 16                 /* unsupported keywords named in one message */

/* ---------------------------------------------------------------- strings */

struct sb {
    char *s;
    size_t n, cap;
};

static void sb_putn(struct sb *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->s = util_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void sb_puts(struct sb *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    UTIL_CHECK(n >= 0);
    if (b->n + (size_t)n + 1 > b->cap) {
        b->cap = (b->n + (size_t)n + 1) * 2;
        b->s = util_xrealloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

/* s[0..n) as a GBNF literal. */
static void sb_literal(struct sb *b, const char *s, size_t n)
{
    sb_putn(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            sb_printf(b, "\\%c", ch);
        else if (ch == '\n')
            sb_puts(b, "\\n");
        else if (ch < 0x20 || ch == 0x7F)
            sb_printf(b, "\\x%02X", ch);
        else
            sb_putn(b, (const char *)&ch, 1);
    }
    sb_putn(b, "\"", 1);
}

/* A JSON value's compact text as a GBNF literal. */
static void sb_json_literal(struct sb *b, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    UTIL_CHECK(text);
    sb_literal(b, text, strlen(text));
    free(text);
}

/* ----------------------------------------------------------------- builtins */

enum builtin {
    B_SPACE,
    B_VALUE,
    B_OBJECT,
    B_ARRAY,
    B_STRING,
    B_CHAR,
    B_HEX,
    B_UESC,
    B_NUMBER,
    B_INTEGER,
    B_INTEGRAL,
    B_BOOLEAN,
    B_NULL,
    B_DATE,
    B_TIME,
    B_DATE_TIME,
    B_UUID,
    B_COUNT
};

#define BIT(b) (1u << (b))

static const struct {
    const char *name, *body;
    unsigned deps;
} builtins[B_COUNT] = {
    [B_SPACE] = {"space", "( \" \" | \"\\n\" [ \\t]{0,20} )?", 0},
    [B_VALUE] = {"value", "object | array | string | number | boolean | null",
                 BIT(B_OBJECT) | BIT(B_ARRAY) | BIT(B_STRING) | BIT(B_NUMBER) | BIT(B_BOOLEAN) |
                     BIT(B_NULL)},
    [B_OBJECT] =
        {"object",
         "\"{\" space ( string \":\" space value ( \",\" space string \":\" space value )* "
         ")? \"}\" space",
         BIT(B_SPACE) | BIT(B_STRING) | BIT(B_VALUE)},
    [B_ARRAY] = {"array", "\"[\" space ( value ( \",\" space value )* )? \"]\" space",
                 BIT(B_SPACE) | BIT(B_VALUE)},
    [B_STRING] = {"string", "\"\\\"\" char* \"\\\"\" space", BIT(B_CHAR) | BIT(B_SPACE)},
    /* any character but '"', '\\' and controls, or an escape */
    [B_CHAR] = {"char", "[^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" uesc )",
                BIT(B_UESC)},
    [B_HEX] = {"hex", "[0-9a-fA-F]", 0},
    /* \uXXXX but not \u0000 nor a lone surrogate: a high one only before a low one */
    [B_UESC] = {"uesc",
                "[1-9a-cA-CeEfF] hex hex hex | \"0\" ( [1-9a-fA-F] hex hex | \"0\" ( [1-9a-fA-F] "
                "hex | \"0\" [1-9a-fA-F] ) ) | [dD] [0-7] hex hex | [dD] [89abAB] hex hex "
                "\"\\\\u\" [dD] [c-fC-F] hex hex",
                BIT(B_HEX)},
    [B_NUMBER] = {"number",
                  "\"-\"? integral-part ( \".\" [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )? space",
                  BIT(B_INTEGRAL) | BIT(B_SPACE)},
    [B_INTEGER] = {"integer", "\"-\"? integral-part space", BIT(B_INTEGRAL) | BIT(B_SPACE)},
    [B_INTEGRAL] = {"integral-part", "\"0\" | [1-9] [0-9]{0,15}", 0},
    [B_BOOLEAN] = {"boolean", "( \"true\" | \"false\" ) space", BIT(B_SPACE)},
    [B_NULL] = {"null", "\"null\" space", BIT(B_SPACE)},
    /* RFC 3339 full-date (not year 0, which Python refuses), partial-time with a time
     * offset; days up to 28-31 by month (never February 29) */
    [B_DATE] = {"date",
                "( [1-9] [0-9]{3} | \"0\" [1-9] [0-9]{2} | \"00\" [1-9] [0-9] | \"000\" [1-9] ) "
                "\"-\" ( \"0\" [13578] \"-\" day31 | \"1\" [02] \"-\" day31 | \"0\" "
                "[469] \"-\" day30 | \"11-\" day30 | \"02-\" day28 )",
                0},
    [B_TIME] =
        {"time",
         "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,9} "
         ")? ( [zZ] | [-+] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )",
         0},
    [B_DATE_TIME] = {"date-time", "date [tT] time", BIT(B_DATE) | BIT(B_TIME)},
    [B_UUID] = {"uuid", "hex{8} \"-\" hex{4} \"-\" hex{4} \"-\" hex{4} \"-\" hex{12}", BIT(B_HEX)},
};

/* The helper rules of the date builtin. */
static const char date_days[] = "day31 ::= \"0\" [1-9] | [12] [0-9] | \"3\" [01]\n"
                                "day30 ::= \"0\" [1-9] | [12] [0-9] | \"30\"\n"
                                "day28 ::= \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8]\n";

/* ---------------------------------------------------------------- compiler */

struct sc_ref {
    char *target;
    const char *rule;
};

struct sc {
    const json_t *root;
    struct sb rules;
    struct sb errors;
    int n_errors;
    char **names; /* open addressing set of rule names in use */
    size_t names_cap, n_names;
    struct sc_ref *refs;
    int n_refs, cap_refs;
    unsigned used; /* builtins */
    int depth;
    struct sb ptr; /* the JSON pointer of the schema being compiled */
};

static void sc_error(struct sc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sc_error(struct sc *c, const char *fmt, ...)
{
    if (c->n_errors++ >= SCHEMA_MAX_ERRORS) return;
    if (c->errors.n) sb_puts(&c->errors, "; ");
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    UTIL_CHECK(n >= 0);
    char *line = util_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(line, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_puts(&c->errors, line);
    free(line);
}

static const char *sc_where(const struct sc *c)
{
    return c->ptr.n ? c->ptr.s : "(root)";
}

/* Appends a key to the pointer (escaped per RFC 6901); returns the old length. */
static size_t sc_push(struct sc *c, const char *key)
{
    size_t old = c->ptr.n;
    sb_putn(&c->ptr, "/", 1);
    for (const char *k = key; *k; k++) {
        if (*k == '~')
            sb_puts(&c->ptr, "~0");
        else if (*k == '/')
            sb_puts(&c->ptr, "~1");
        else
            sb_putn(&c->ptr, k, 1);
    }
    return old;
}

static size_t sc_push_index(struct sc *c, size_t i)
{
    char key[32];
    snprintf(key, sizeof key, "%zu", i);
    return sc_push(c, key);
}

static void sc_pop(struct sc *c, size_t old)
{
    c->ptr.n = old;
    if (c->ptr.s) c->ptr.s[old] = '\0';
}

static uint64_t sc_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

/* Adds name to the set; false when it was there. */
static bool sc_claim(struct sc *c, const char *name)
{
    if (2 * (c->n_names + 1) > c->names_cap) {
        size_t cap = c->names_cap ? 2 * c->names_cap : 256;
        char **names = util_xcalloc(cap, sizeof *names);
        for (size_t i = 0; i < c->names_cap; i++) {
            if (!c->names[i]) continue;
            size_t j = sc_hash(c->names[i]) & (cap - 1);
            while (names[j]) j = (j + 1) & (cap - 1);
            names[j] = c->names[i];
        }
        free(c->names);
        c->names = names;
        c->names_cap = cap;
    }
    size_t j = sc_hash(name) & (c->names_cap - 1);
    for (; c->names[j]; j = (j + 1) & (c->names_cap - 1))
        if (!strcmp(c->names[j], name)) return false;
    c->names[j] = util_xstrdup(name);
    c->n_names++;
    return true;
}

/* A fresh rule name from a hint: letters, digits and '-', unique. The
 * returned string lives as long as the compiler. */
static const char *sc_name(struct sc *c, const char *hint)
{
    char base[SCHEMA_MAX_NAME + 1];
    size_t n = 0;
    for (const char *h = hint; *h && n < SCHEMA_MAX_NAME; h++) {
        char ch = *h;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!ok) ch = '-';
        if (ch == '-' && (n == 0 || base[n - 1] == '-')) continue;
        base[n++] = ch;
    }
    while (n > 0 && base[n - 1] == '-') n--;
    if (n == 0) base[n++] = 'r';
    base[n] = '\0';
    char name[SCHEMA_MAX_NAME + 32];
    snprintf(name, sizeof name, "%s", base);
    for (int k = 2; !sc_claim(c, name); k++) snprintf(name, sizeof name, "%s-%d", base, k);
    size_t j = sc_hash(name) & (c->names_cap - 1);
    while (strcmp(c->names[j], name)) j = (j + 1) & (c->names_cap - 1);
    return c->names[j];
}

static const char *sc_builtin(struct sc *c, enum builtin b)
{
    c->used |= BIT(b);
    return builtins[b].name;
}

/* Emits `name ::= body` for a new rule named after hint; returns the name. */
static const char *sc_rule(struct sc *c, const char *hint, const char *body)
{
    const char *name = sc_name(c, hint);
    sb_printf(&c->rules, "%s ::= %s\n", name, body);
    return name;
}

/* parent-suffix; a suffix without a letter or digit reads "x", so that a
 * child's name never sanitizes to its parent's (and never to "root"). */
static char *sc_hint(const char *parent, const char *suffix)
{
    bool named = false;
    for (const char *p = suffix; *p && !named; p++)
        named = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9');
    struct sb b = {0};
    sb_printf(&b, "%s-%s", parent, named ? suffix : "x");
    if (b.n > SCHEMA_MAX_NAME) b.s[SCHEMA_MAX_NAME] = '\0';
    return b.s;
}

static const char *sc_visit(struct sc *c, const json_t *s, const char *hint);

/* ---------------------------------------------------------------- keywords */

static const char *const sc_annotations[] = {
    "title",      "description", "default",   "examples", "$schema",     "$id", "$comment",
    "deprecated", "readOnly",    "writeOnly", "$defs",    "definitions", NULL};

/* Keywords that constrain values, with the type they belong to (NULL: any). */
static const struct {
    const char *key, *type;
} sc_keywords[] = {
    {"type", NULL},
    {"enum", NULL},
    {"const", NULL},
    {"anyOf", NULL},
    {"oneOf", NULL},
    {"$ref", NULL},
    {"properties", "object"},
    {"required", "object"},
    {"additionalProperties", "object"},
    {"items", "array"},
    {"prefixItems", "array"},
    {"minItems", "array"},
    {"maxItems", "array"},
    {"minLength", "string"},
    {"maxLength", "string"},
    {"format", "string"},
    {"minimum", "integer"},
    {"maximum", "integer"},
    {"exclusiveMinimum", "integer"},
    {"exclusiveMaximum", "integer"},
};

#define SC_N_KEYWORDS (sizeof sc_keywords / sizeof sc_keywords[0])

static bool sc_is_annotation(const char *key)
{
    for (int i = 0; sc_annotations[i]; i++)
        if (!strcmp(key, sc_annotations[i])) return true;
    return false;
}

static int sc_keyword(const char *key)
{
    for (size_t i = 0; i < SC_N_KEYWORDS; i++)
        if (!strcmp(key, sc_keywords[i].key)) return (int)i;
    return -1;
}

static void sc_unsupported(struct sc *c, const char *key, const char *why)
{
    size_t old = sc_push(c, key);
    sc_error(c, "unsupported keyword '%s' at %s%s", key, c->ptr.s, why ? why : "");
    sc_pop(c, old);
}

/* A non-negative integer keyword; def when absent; -2 on error. */
static long long sc_count(struct sc *c, const json_t *s, const char *key, long long def)
{
    const json_t *v = json_object_get(s, key);
    if (!v) return def;
    double d = json_is_integer(v) ? (double)json_integer_value(v)
               : json_is_real(v)  ? json_real_value(v)
                                  : -1;
    if (d < 0 || d != floor(d)) {
        size_t old = sc_push(c, key);
        sc_error(c, "'%s' at %s must be a non-negative integer", key, c->ptr.s);
        sc_pop(c, old);
        return -2;
    }
    if (d > LLM_GRAMMAR_MAX_REPEAT) {
        size_t old = sc_push(c, key);
        sc_error(c, "'%s' at %s is over the supported %d", key, c->ptr.s, LLM_GRAMMAR_MAX_REPEAT);
        sc_pop(c, old);
        return -2;
    }
    return (long long)d;
}

/* "{m,n}" (n -1: unbounded), or "" for {1}. */
static void sb_repeat(struct sb *b, long long m, long long n)
{
    if (m == 1 && n == 1) return;
    if (n < 0)
        sb_printf(b, "{%lld,}", m);
    else if (m == n)
        sb_printf(b, "{%lld}", m);
    else
        sb_printf(b, "{%lld,%lld}", m, n);
}

/* ------------------------------------------------------------------ $ref */

/* Resolves a local reference "#/a/b" against the root document. */
static const json_t *sc_resolve(const struct sc *c, const char *ref)
{
    if (ref[0] != '#') return NULL;
    const json_t *at = c->root;
    const char *p = ref + 1;
    if (*p && *p != '/') return NULL; /* "#anchor" */
    while (*p == '/') {
        p++;
        struct sb seg = {0};
        sb_putn(&seg, "", 0);
        while (*p && *p != '/') {
            if (p[0] == '~' && (p[1] == '0' || p[1] == '1')) {
                sb_putn(&seg, p[1] == '0' ? "~" : "/", 1);
                p += 2;
            } else if (p[0] == '%' && p[1] && p[2]) {
                char hex[3] = {p[1], p[2], 0}, *end;
                long v = strtol(hex, &end, 16);
                if (*end || v <= 0) {
                    free(seg.s);
                    return NULL;
                }
                char ch = (char)v;
                sb_putn(&seg, &ch, 1);
                p += 3;
            } else {
                sb_putn(&seg, p++, 1);
            }
        }
        if (json_is_object(at)) {
            at = json_object_get(at, seg.s);
        } else if (json_is_array(at)) {
            char *end;
            unsigned long i = strtoul(seg.s, &end, 10);
            at = *seg.s && !*end ? json_array_get(at, i) : NULL;
        } else {
            at = NULL;
        }
        free(seg.s);
        if (!at) return NULL;
    }
    return at;
}

static const char *sc_ref(struct sc *c, const char *target)
{
    for (int i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i].target, target)) return c->refs[i].rule;
    const json_t *t = sc_resolve(c, target);
    if (!t) {
        if (target[0] != '#')
            sc_error(c, "$ref '%s' at %s is not local (only '#...' references are supported)",
                     target, sc_where(c));
        else
            sc_error(c, "$ref '%s' at %s points nowhere", target, sc_where(c));
        return sc_builtin(c, B_VALUE);
    }
    char *hint = sc_hint("ref", strrchr(target, '/') ? strrchr(target, '/') + 1 : "root");
    const char *name = sc_name(c, hint);
    free(hint);
    if (c->n_refs == c->cap_refs) {
        c->cap_refs = c->cap_refs ? 2 * c->cap_refs : 16;
        c->refs = util_xrealloc(c->refs, (size_t)c->cap_refs * sizeof *c->refs);
    }
    c->refs[c->n_refs++] = (struct sc_ref){util_xstrdup(target), name};
    /* errors inside the target are reported at its own place */
    struct sb saved = c->ptr;
    c->ptr = (struct sb){0};
    sb_puts(&c->ptr, target + 1);
    const char *body = sc_visit(c, t, name);
    free(c->ptr.s);
    c->ptr = saved;
    sb_printf(&c->rules, "%s ::= %s\n", name, body);
    return name;
}

/* ----------------------------------------------------------------- values */

static bool sc_value_has_type(const json_t *v, const char *type)
{
    if (!strcmp(type, "string")) return json_is_string(v);
    if (!strcmp(type, "number")) return json_is_number(v);
    if (!strcmp(type, "integer"))
        return json_is_integer(v) ||
               (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)));
    if (!strcmp(type, "boolean")) return json_is_boolean(v);
    if (!strcmp(type, "null")) return json_is_null(v);
    if (!strcmp(type, "object")) return json_is_object(v);
    if (!strcmp(type, "array")) return json_is_array(v);
    return false;
}

static const char *const sc_type_names[] = {"object",  "array",   "string", "number",
                                            "integer", "boolean", "null",   NULL};

static bool sc_is_type_name(const char *t)
{
    for (int i = 0; sc_type_names[i]; i++)
        if (!strcmp(t, sc_type_names[i])) return true;
    return false;
}

/* The types of "type" (or NULL when absent) as a NULL-terminated list of
 * at most 8; false after an error. */
static bool sc_types(struct sc *c, const json_t *s, const char *types[8], bool *present)
{
    const json_t *t = json_object_get(s, "type");
    int n = 0;
    *present = t != NULL;
    if (!t) {
        types[0] = NULL;
        return true;
    }
    bool ok = true;
    if (json_is_string(t)) {
        types[n++] = json_string_value(t);
    } else if (json_is_array(t) && json_array_size(t) > 0 && json_array_size(t) <= 7) {
        size_t i;
        const json_t *e;
        json_array_foreach(t, i, e)
        {
            if (!json_is_string(e)) ok = false;
            if (ok) types[n++] = json_string_value(e);
        }
    } else {
        ok = false;
    }
    for (int i = 0; i < n && ok; i++)
        if (!sc_is_type_name(types[i])) ok = false;
    types[n] = NULL;
    if (!ok) {
        size_t old = sc_push(c, "type");
        sc_error(c, "'type' at %s must be a type name or a list of them", c->ptr.s);
        sc_pop(c, old);
    }
    return ok;
}

static const char *sc_enum(struct sc *c, const json_t *s, const char *hint,
                           const char *const *types, bool typed)
{
    const json_t *e = json_object_get(s, "enum"), *k = json_object_get(s, "const");
    if (e && !json_is_array(e)) {
        sc_error(c, "'enum' at %s must be an array", sc_where(c));
        return sc_builtin(c, B_VALUE);
    }
    struct sb body = {0};
    sb_puts(&body, "( ");
    int n = 0;
    for (size_t i = 0; i < (k ? 1 : json_array_size(e)); i++) {
        const json_t *v = k ? k : json_array_get(e, i);
        /* with enum and const both, a value must satisfy both */
        if (k && e) {
            bool in = false;
            for (size_t j = 0; j < json_array_size(e) && !in; j++)
                in = json_equal((json_t *)json_array_get(e, j), (json_t *)k);
            if (!in) continue;
        }
        bool ok = !typed;
        for (int t = 0; typed && types[t] && !ok; t++) ok = sc_value_has_type(v, types[t]);
        if (!ok) continue;
        if (n++) sb_puts(&body, " | ");
        sb_json_literal(&body, v);
    }
    sb_puts(&body, " ) space");
    sc_builtin(c, B_SPACE);
    const char *name;
    if (n == 0) {
        sc_error(c, "%s at %s allows no value", k ? "'const'" : "'enum'", sc_where(c));
        name = sc_builtin(c, B_VALUE);
    } else {
        name = sc_rule(c, hint, body.s);
    }
    free(body.s);
    return name;
}

/* --------------------------------------------------------------- strings */

static const char *sc_string(struct sc *c, const json_t *s, const char *hint)
{
    const json_t *f = json_object_get(s, "format");
    long long m = sc_count(c, s, "minLength", 0), n = sc_count(c, s, "maxLength", -1);
    if (f) {
        const char *fmt = json_is_string(f) ? json_string_value(f) : "";
        enum builtin b = !strcmp(fmt, "date")        ? B_DATE
                         : !strcmp(fmt, "time")      ? B_TIME
                         : !strcmp(fmt, "date-time") ? B_DATE_TIME
                         : !strcmp(fmt, "uuid")      ? B_UUID
                                                     : B_COUNT;
        if (b == B_COUNT) {
            sc_unsupported(c, "format", " (supported: date, time, date-time, uuid)");
            return sc_builtin(c, B_STRING);
        }
        if (m > 0 || n >= 0) {
            sc_unsupported(c, json_object_get(s, "minLength") ? "minLength" : "maxLength",
                           " (next to 'format')");
            return sc_builtin(c, B_STRING);
        }
        struct sb body = {0};
        sb_printf(&body, "\"\\\"\" %s \"\\\"\" space", sc_builtin(c, b));
        sc_builtin(c, B_SPACE);
        const char *name = sc_rule(c, hint, body.s);
        free(body.s);
        return name;
    }
    if (m == -2 || n == -2) return sc_builtin(c, B_STRING);
    if (n >= 0 && m > n) {
        sc_error(c, "string at %s: minLength %lld > maxLength %lld", sc_where(c), m, n);
        return sc_builtin(c, B_STRING);
    }
    if (m == 0 && n < 0) return sc_builtin(c, B_STRING);
    struct sb body = {0};
    sb_puts(&body, "\"\\\"\" ");
    if (n != 0) {
        sb_puts(&body, sc_builtin(c, B_CHAR));
        sb_repeat(&body, m, n);
    }
    sb_puts(&body, " \"\\\"\" space");
    sc_builtin(c, B_SPACE);
    const char *name = sc_rule(c, hint, body.s);
    free(body.s);
    return name;
}

/* ---------------------------------------------------------------- integers */

/* Fixed-width decimal strings from lo to hi (same length, leading zeros
 * allowed) as a GBNF expression: the usual split of a numeric range into
 * digit-class runs. */
static void sb_digits_range(struct sb *b, const char *lo, const char *hi, int d)
{
    if (d == 0) return;
    if (!memcmp(lo, hi, (size_t)d)) {
        sb_literal(b, lo, (size_t)d);
        return;
    }
    if (d == 1) {
        sb_printf(b, "[%c-%c]", lo[0], hi[0]);
        return;
    }
    if (lo[0] == hi[0]) {
        sb_printf(b, "\"%c\" ", lo[0]);
        sb_digits_range(b, lo + 1, hi + 1, d - 1);
        return;
    }
    char zeros[20], nines[20];
    memset(zeros, '0', sizeof zeros);
    memset(nines, '9', sizeof nines);
    bool lo_full = !memcmp(lo + 1, zeros, (size_t)d - 1),
         hi_full = !memcmp(hi + 1, nines, (size_t)d - 1);
    char mid_lo = lo_full ? lo[0] : (char)(lo[0] + 1), mid_hi = hi_full ? hi[0] : (char)(hi[0] - 1);
    int n = 0;
    sb_puts(b, "( ");
    if (!lo_full) {
        sb_printf(b, "\"%c\" ", lo[0]);
        sb_digits_range(b, lo + 1, nines, d - 1);
        n++;
    }
    if (mid_lo <= mid_hi) {
        if (n++) sb_puts(b, " | ");
        sb_printf(b, "[%c-%c] [0-9]{%d}", mid_lo, mid_hi, d - 1);
    }
    if (!hi_full) {
        if (n++) sb_puts(b, " | ");
        sb_printf(b, "\"%c\" ", hi[0]);
        sb_digits_range(b, zeros, hi + 1, d - 1);
    }
    sb_puts(b, " )");
}

/* Decimal representations (no leading zeros) of lo..hi, 0 <= lo <= hi. */
static void sb_natural_range(struct sb *b, long long lo, long long hi)
{
    char a[24], z[24];
    int la = snprintf(a, sizeof a, "%lld", lo), lz = snprintf(z, sizeof z, "%lld", hi);
    sb_puts(b, "( ");
    for (int d = la; d <= lz; d++) {
        char from[24], to[24];
        if (d == la)
            memcpy(from, a, (size_t)d);
        else
            from[0] = '1', memset(from + 1, '0', (size_t)d - 1);
        if (d == lz)
            memcpy(to, z, (size_t)d);
        else
            memset(to, '9', (size_t)d);
        if (d > la) sb_puts(b, " | ");
        sb_digits_range(b, from, to, d);
    }
    sb_puts(b, " )");
}

/* A bound keyword as a number; false when absent or not a number. */
static bool sc_number_kw(struct sc *c, const json_t *s, const char *key, double *out)
{
    const json_t *v = json_object_get(s, key);
    if (!v) return false;
    if (json_is_boolean(v)) return false; /* draft 4's exclusive flags, read by the caller */
    if (!json_is_number(v)) {
        size_t old = sc_push(c, key);
        sc_error(c, "'%s' at %s must be a number", key, c->ptr.s);
        sc_pop(c, old);
        return false;
    }
    *out = json_number_value(v);
    return true;
}

static const char *sc_integer(struct sc *c, const json_t *s, const char *hint)
{
    long long lo = -SCHEMA_MAX_INT, hi = SCHEMA_MAX_INT;
    double v;
    bool bounded = false;
    bool excl_min4 = json_is_true(json_object_get(s, "exclusiveMinimum"));
    bool excl_max4 = json_is_true(json_object_get(s, "exclusiveMaximum"));
    if (sc_number_kw(c, s, "minimum", &v)) {
        double l = excl_min4 ? floor(v) + 1 : ceil(v);
        if (l > lo) lo = l > (double)SCHEMA_MAX_INT ? SCHEMA_MAX_INT + 1 : (long long)l;
        bounded = true;
    }
    if (sc_number_kw(c, s, "exclusiveMinimum", &v)) {
        double l = floor(v) + 1;
        if (l > lo) lo = l > (double)SCHEMA_MAX_INT ? SCHEMA_MAX_INT + 1 : (long long)l;
        bounded = true;
    }
    if (sc_number_kw(c, s, "maximum", &v)) {
        double h = excl_max4 ? ceil(v) - 1 : floor(v);
        if (h < hi) hi = h < -(double)SCHEMA_MAX_INT ? -SCHEMA_MAX_INT - 1 : (long long)h;
        bounded = true;
    }
    if (sc_number_kw(c, s, "exclusiveMaximum", &v)) {
        double h = ceil(v) - 1;
        if (h < hi) hi = h < -(double)SCHEMA_MAX_INT ? -SCHEMA_MAX_INT - 1 : (long long)h;
        bounded = true;
    }
    if (!bounded) return sc_builtin(c, B_INTEGER);
    if (lo > hi) {
        sc_error(c, "integer at %s: no integer of at most 16 digits lies within its bounds",
                 sc_where(c));
        return sc_builtin(c, B_INTEGER);
    }
    struct sb body = {0};
    sb_puts(&body, "( ");
    if (lo < 0) {
        sb_puts(&body, "\"-\" ");
        sb_natural_range(&body, hi < 0 ? -hi : 1, -lo);
    }
    if (hi >= 0) {
        if (lo < 0) sb_puts(&body, " | ");
        sb_natural_range(&body, lo < 0 ? 0 : lo, hi);
    }
    sb_puts(&body, " ) space");
    sc_builtin(c, B_SPACE);
    const char *name = sc_rule(c, hint, body.s);
    free(body.s);
    return name;
}

static const char *sc_number(struct sc *c, const json_t *s)
{
    static const char *const bounds[] = {"minimum", "maximum", "exclusiveMinimum",
                                         "exclusiveMaximum", NULL};
    for (int i = 0; bounds[i]; i++)
        if (json_object_get(s, bounds[i]))
            sc_unsupported(c, bounds[i], " (bounds are supported on integers only)");
    return sc_builtin(c, B_NUMBER);
}

/* ----------------------------------------------------------------- arrays */

static const char *sc_array(struct sc *c, const json_t *s, const char *hint)
{
    const json_t *prefix = json_object_get(s, "prefixItems"), *items = json_object_get(s, "items");
    if (json_object_get(s, "additionalItems")) return sc_builtin(c, B_ARRAY); /* reported */
    if (json_is_array(items)) {                                               /* draft 4-7 tuples */
        if (prefix) {
            sc_error(c, "array at %s has both prefixItems and an items array", sc_where(c));
            return sc_builtin(c, B_ARRAY);
        }
        prefix = items;
        items = NULL;
    }
    if (prefix && !json_is_array(prefix)) {
        sc_error(c, "'prefixItems' at %s must be an array", sc_where(c));
        return sc_builtin(c, B_ARRAY);
    }
    long long m = sc_count(c, s, "minItems", 0), n = sc_count(c, s, "maxItems", -1);
    if (m == -2 || n == -2) return sc_builtin(c, B_ARRAY);
    long long np = prefix ? (long long)json_array_size(prefix) : 0;
    if (json_is_false(items) && (n < 0 || n > np)) n = np;
    if (n >= 0 && m > n) {
        sc_error(c, "array at %s: minItems %lld is more than it can hold (%lld)", sc_where(c), m,
                 n);
        return sc_builtin(c, B_ARRAY);
    }
    const char **item = util_xcalloc((size_t)np + 1, sizeof *item);
    for (long long i = 0; i < np && (n < 0 || i < n); i++) {
        size_t old =
            sc_push(c, json_is_array(json_object_get(s, "prefixItems")) ? "prefixItems" : "items");
        size_t old2 = sc_push_index(c, (size_t)i);
        char num[32];
        snprintf(num, sizeof num, "%lld", i);
        char *h = sc_hint(hint, num);
        item[i] = sc_visit(c, json_array_get(prefix, (size_t)i), h);
        free(h);
        sc_pop(c, old2);
        sc_pop(c, old);
    }
    const char *rest = NULL;
    if (n < 0 || n > np) {
        if (items && !json_is_false(items)) {
            size_t old = sc_push(c, "items");
            char *h = sc_hint(hint, "item");
            rest = sc_visit(c, items, h);
            free(h);
            sc_pop(c, old);
        } else {
            rest = sc_builtin(c, B_VALUE);
        }
    }
    sc_builtin(c, B_SPACE);
    struct sb body = {0};
    sb_puts(&body, "\"[\" space ");
    if (n != 0) {
        struct sb content = {0};
        int closers = 0;
        for (long long i = 0; n < 0 || i < n; i++) {
            if (i < np) {
                if (i == 0)
                    sb_puts(&content, item[0]);
                else if (i < m)
                    sb_printf(&content, " \",\" space %s", item[i]);
                else
                    sb_printf(&content, " ( \",\" space %s", item[i]), closers++;
                continue;
            }
            /* the rest: rest items, each after a comma but the very first */
            long long need = m > i ? m - i : 0, most = n < 0 ? -1 : n - i;
            if (i == 0) {
                sb_puts(&content, rest);
                need = need > 0 ? need - 1 : 0;
                most = most < 0 ? -1 : most - 1;
            }
            if (most != 0) {
                sb_printf(&content, " ( \",\" space %s )", rest);
                if (need == 0 && most < 0)
                    sb_puts(&content, "*");
                else if (need == 0 && most == 1)
                    sb_puts(&content, "?");
                else
                    sb_repeat(&content, need, most);
            }
            break;
        }
        for (int k = 0; k < closers; k++) sb_puts(&content, " )?");
        if (m >= 1)
            sb_printf(&body, "%s ", content.s);
        else
            sb_printf(&body, "( %s )? ", content.s);
        free(content.s);
    }
    sb_puts(&body, "\"]\" space");
    const char *name = sc_rule(c, hint, body.s);
    free(body.s);
    free(item);
    return name;
}

/* ---------------------------------------------------------------- objects */

static int sc_strcmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Decodes the UTF-8 character at s (jansson keeps keys valid UTF-8). */
static int sc_utf8(const char *s, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    int n = u[0] < 0x80 ? 1 : u[0] < 0xE0 ? 2 : u[0] < 0xF0 ? 3 : 4;
    uint32_t v = n == 1 ? u[0] : u[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) v = v << 6 | (u[i] & 0x3F);
    *cp = v;
    return n;
}

static bool sc_raw_char(uint32_t cp)
{
    return cp >= 0x20 && cp != '"' && cp != '\\' && cp != 0x7F;
}

/* The key strings of additional properties: JSON strings that differ from
 * every declared name. Until a key's characters leave the trie of the
 * declared names they are written raw (no escapes, so each spells one
 * character); at the first character that no declared name has there, any
 * string may follow. Rules are made breadth-first from a work list (names
 * may be long). */
static const char *sc_extra_key(struct sc *c, const json_t *props, const char *hint)
{
    size_t n = props ? json_object_size(props) : 0;
    const char **names = util_xmalloc((n + 1) * sizeof *names);
    size_t k = 0;
    const char *key;
    const json_t *v;
    if (props) json_object_foreach((json_t *)props, key, v) names[k++] = key;
    qsort(names, n, sizeof *names, sc_strcmp);
    struct item {
        size_t lo, hi, off;
        const char *rule;
    } *work = util_xmalloc((2 * n + 2) * sizeof *work);
    size_t cap = 2 * n + 2, n_work = 0;
    char *root_hint = sc_hint(hint, "key");
    work[n_work++] = (struct item){0, n, 0, sc_name(c, root_hint)};
    const char *root = work[0].rule;
    free(root_hint);
    sc_builtin(c, B_CHAR);
    for (size_t w = 0; w < n_work; w++) {
        struct item it = work[w];
        struct sb body = {0}, others = {0};
        bool ends_here = false;
        int alts = 0;
        for (size_t i = it.lo; i < it.hi;) {
            if (strlen(names[i]) == it.off) {
                ends_here = true, i++;
                continue;
            }
            uint32_t cp;
            int len = sc_utf8(names[i] + it.off, &cp);
            size_t j = i + 1;
            while (j < it.hi && strlen(names[j]) > it.off &&
                   !memcmp(names[j] + it.off, names[i] + it.off, (size_t)len))
                j++;
            if (sc_raw_char(cp)) {
                sb_printf(&others, "\\U%08X", cp);
                if (n_work == cap) {
                    cap *= 2;
                    work = util_xrealloc(work, cap * sizeof *work);
                }
                const char *child = sc_name(c, it.rule);
                work[n_work++] = (struct item){i, j, it.off + (size_t)len, child};
                if (alts++) sb_puts(&body, " | ");
                sb_literal(&body, names[i] + it.off, (size_t)len);
                sb_printf(&body, " %s", child);
            }
            i = j;
        }
        if (alts++) sb_puts(&body, " | ");
        sb_printf(&body, "[^\"\\\\\\x7F\\x00-\\x1F%s] char*", others.s ? others.s : "");
        if (!ends_here) sb_puts(&body, " | \"\"");
        sb_printf(&c->rules, "%s ::= %s\n", it.rule, body.s);
        free(body.s);
        free(others.s);
    }
    free(work);
    free(names);
    return root;
}

static const char *sc_object(struct sc *c, const json_t *s, const char *hint)
{
    const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required"),
                 *extra = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) {
        sc_error(c, "'properties' at %s must be an object", sc_where(c));
        return sc_builtin(c, B_OBJECT);
    }
    if (req && !json_is_array(req)) {
        sc_error(c, "'required' at %s must be an array of strings", sc_where(c));
        return sc_builtin(c, B_OBJECT);
    }
    size_t n_req = req ? json_array_size(req) : 0;
    for (size_t i = 0; i < n_req; i++)
        if (!json_is_string(json_array_get(req, i))) {
            sc_error(c, "'required' at %s must be an array of strings", sc_where(c));
            return sc_builtin(c, B_OBJECT);
        }
    bool allow_extra = extra && !json_is_false(extra);
    if (extra && !json_is_boolean(extra) && !json_is_object(extra)) {
        sc_error(c, "'additionalProperties' at %s must be a schema", sc_where(c));
        return sc_builtin(c, B_OBJECT);
    }
    sc_builtin(c, B_SPACE);

    /* The keys in output order: required ones (in properties' order, then
     * those only listed in required), then optional ones. */
    size_t n_props = props ? json_object_size(props) : 0, n_keys = 0;
    struct key {
        const char *name;
        const json_t *schema;
        bool required;
        const char *kv; /* rule */
    } *keys = util_xcalloc(n_props + n_req + 1, sizeof *keys);
    const char *key;
    const json_t *v;
    for (int pass = 0; pass < 2; pass++) {
        if (props) json_object_foreach((json_t *)props, key, v)
            {
                bool r = false;
                for (size_t i = 0; i < n_req && !r; i++)
                    r = !strcmp(json_string_value(json_array_get(req, i)), key);
                if (r == (pass == 0)) keys[n_keys++] = (struct key){key, v, r, NULL};
            }
        if (pass == 0)
            for (size_t i = 0; i < n_req; i++) {
                const char *name = json_string_value(json_array_get(req, i));
                bool seen = false;
                for (size_t k = 0; k < n_keys && !seen; k++) seen = !strcmp(keys[k].name, name);
                if (seen) continue;
                if (!allow_extra) {
                    sc_error(c,
                             "object at %s requires '%s', which its properties and "
                             "additionalProperties do not allow",
                             sc_where(c), name);
                    continue;
                }
                keys[n_keys++] = (struct key){name, extra, true, NULL};
            }
    }
    for (size_t k = 0; k < n_keys; k++) {
        const char *value;
        size_t old = sc_push(c, keys[k].schema == extra ? "additionalProperties" : "properties");
        size_t old2 = keys[k].schema == extra ? c->ptr.n : sc_push(c, keys[k].name);
        char *h = sc_hint(hint, keys[k].name);
        value = sc_visit(c, keys[k].schema, h);
        struct sb body = {0};
        json_t *name = json_string(keys[k].name);
        sb_json_literal(&body, name);
        json_decref(name);
        sb_printf(&body, " space \":\" space %s", value);
        char *hkv = sc_hint(h, "kv");
        keys[k].kv = sc_rule(c, hkv, body.s);
        free(hkv);
        free(h);
        free(body.s);
        sc_pop(c, old2);
        sc_pop(c, old);
    }
    const char *extra_kv = NULL;
    if (allow_extra) {
        size_t old = sc_push(c, "additionalProperties");
        char *h = sc_hint(hint, "additional");
        const char *value = sc_visit(c, extra, h);
        const char *k = sc_extra_key(c, props, h);
        struct sb body = {0};
        sb_printf(&body, "\"\\\"\" %s \"\\\"\" space \":\" space %s", k, value);
        char *hkv = sc_hint(h, "kv");
        extra_kv = sc_rule(c, hkv, body.s);
        free(hkv);
        free(h);
        free(body.s);
        sc_pop(c, old);
    }

    /* Optional keys o_1..o_k (then the extra ones) may each be there or not,
     * in order: rest_i ::= ( "," space kv_i )? rest_(i+1), and the first key
     * present takes no comma when no required key came before it. */
    size_t first_opt = 0;
    while (first_opt < n_keys && keys[first_opt].required) first_opt++;
    size_t n_opt = n_keys - first_opt + (extra_kv ? 1 : 0);
    const char **rest = util_xcalloc(n_opt + 1, sizeof *rest);
    for (size_t i = n_opt; i-- > 0;) {
        struct sb body = {0};
        bool is_extra = extra_kv && i == n_opt - 1;
        const char *kv = is_extra ? extra_kv : keys[first_opt + i].kv;
        sb_printf(&body, "( \",\" space %s )%s", kv, is_extra ? "*" : "?");
        if (rest[i + 1]) sb_printf(&body, " %s", rest[i + 1]);
        char *h = sc_hint(hint, "rest");
        rest[i] = sc_rule(c, h, body.s);
        free(h);
        free(body.s);
    }
    struct sb body = {0};
    sb_puts(&body, "\"{\" space ");
    for (size_t k = 0; k < first_opt; k++)
        sb_printf(&body, "%s%s ", k ? "\",\" space " : "", keys[k].kv);
    if (n_opt > 0) {
        if (first_opt > 0) {
            sb_printf(&body, "%s ", rest[0]);
        } else {
            sb_puts(&body, "( ");
            for (size_t i = 0; i < n_opt; i++) {
                bool is_extra = extra_kv && i == n_opt - 1;
                const char *kv = is_extra ? extra_kv : keys[first_opt + i].kv;
                sb_printf(&body, "%s%s", i ? " | " : "", kv);
                if (is_extra)
                    sb_printf(&body, " ( \",\" space %s )*", kv);
                else if (rest[i + 1])
                    sb_printf(&body, " %s", rest[i + 1]);
            }
            sb_puts(&body, " )? ");
        }
    }
    sb_puts(&body, "\"}\" space");
    const char *name = sc_rule(c, hint, body.s);
    free(body.s);
    free(rest);
    free(keys);
    return name;
}

/* ---------------------------------------------------------------- schemas */

/* The rule of the values that validate against schema s. Always returns a
 * rule name; errors are collected in c. */
static const char *sc_visit(struct sc *c, const json_t *s, const char *hint)
{
    if (json_is_true(s)) return sc_builtin(c, B_VALUE);
    if (json_is_false(s)) {
        sc_error(c, "schema at %s is false: nothing validates", sc_where(c));
        return sc_builtin(c, B_VALUE);
    }
    if (!json_is_object(s)) {
        sc_error(c, "schema at %s is not an object or a boolean", sc_where(c));
        return sc_builtin(c, B_VALUE);
    }
    if (c->depth >= SCHEMA_MAX_DEPTH) {
        sc_error(c, "schema at %s is nested deeper than %d", sc_where(c), SCHEMA_MAX_DEPTH);
        return sc_builtin(c, B_VALUE);
    }
    c->depth++;
    const char *key;
    const json_t *v;
    bool families[7] = {0}; /* keywords present per type, sc_type_names order */
    int n_value_keywords = 0;
    json_object_foreach((json_t *)s, key, v)
    {
        if (sc_is_annotation(key)) continue;
        int k = sc_keyword(key);
        if (k < 0) {
            sc_unsupported(c, key, NULL);
            continue;
        }
        n_value_keywords++;
        for (int t = 0; sc_keywords[k].type && sc_type_names[t]; t++)
            if (!strcmp(sc_keywords[k].type, sc_type_names[t])) families[t] = true;
    }
    const char *result = NULL;
    const json_t *ref = json_object_get(s, "$ref");
    const json_t *any = json_object_get(s, "anyOf"), *one = json_object_get(s, "oneOf");
    if (ref) {
        if (!json_is_string(ref)) {
            sc_error(c, "'$ref' at %s must be a string", sc_where(c));
        } else if (n_value_keywords > 1) {
            json_object_foreach((json_t *)s, key,
                                v) if (sc_keyword(key) >= 0 && strcmp(key, "$ref"))
                sc_unsupported(c, key, " (next to '$ref')");
        } else {
            result = sc_ref(c, json_string_value(ref));
        }
    } else if (any || one) {
        const char *kw = any ? "anyOf" : "oneOf";
        const json_t *list = any ? any : one;
        if (n_value_keywords > 1) {
            json_object_foreach((json_t *)s, key, v) if (sc_keyword(key) >= 0 && strcmp(key, kw))
                sc_unsupported(c, key, any ? " (next to 'anyOf')" : " (next to 'oneOf')");
        } else if (!json_is_array(list) || json_array_size(list) == 0) {
            sc_error(c, "'%s' at %s must be a non-empty array", kw, sc_where(c));
        } else {
            struct sb body = {0};
            size_t i, old = sc_push(c, kw);
            const json_t *e;
            json_array_foreach(list, i, e)
            {
                size_t old2 = sc_push_index(c, i);
                char num[32];
                snprintf(num, sizeof num, "%zu", i);
                char *h = sc_hint(hint, num);
                sb_printf(&body, "%s%s", i ? " | " : "", sc_visit(c, e, h));
                free(h);
                sc_pop(c, old2);
            }
            sc_pop(c, old);
            result = sc_rule(c, hint, body.s);
            free(body.s);
        }
    } else {
        const char *types[8];
        bool typed;
        if (!sc_types(c, s, types, &typed)) {
            result = sc_builtin(c, B_VALUE);
        } else if (json_object_get(s, "enum") || json_object_get(s, "const")) {
            json_object_foreach((json_t *)s, key, v)
            {
                int k = sc_keyword(key);
                if (k >= 0 && sc_keywords[k].type)
                    sc_unsupported(c, key, " (next to 'enum' or 'const')");
            }
            result = sc_enum(c, s, hint, types, typed);
        } else {
            if (!typed) { /* inferred from the keywords */
                int n = 0;
                for (int t = 0; sc_type_names[t]; t++)
                    if (families[t])
                        types[n++] =
                            !strcmp(sc_type_names[t], "integer") ? "number" : sc_type_names[t];
                types[n] = NULL;
            }
            if (!types[0]) {
                result = sc_builtin(c, B_VALUE);
            } else {
                struct sb body = {0};
                const char *only = NULL;
                for (int t = 0; types[t]; t++) {
                    const char *r, *ty = types[t];
                    char *h = types[1] ? sc_hint(hint, ty) : util_xstrdup(hint);
                    if (!strcmp(ty, "object"))
                        r = sc_object(c, s, h);
                    else if (!strcmp(ty, "array"))
                        r = sc_array(c, s, h);
                    else if (!strcmp(ty, "string"))
                        r = sc_string(c, s, h);
                    else if (!strcmp(ty, "integer"))
                        r = sc_integer(c, s, h);
                    else if (!strcmp(ty, "number"))
                        r = sc_number(c, s);
                    else if (!strcmp(ty, "boolean"))
                        r = sc_builtin(c, B_BOOLEAN);
                    else
                        r = sc_builtin(c, B_NULL);
                    free(h);
                    sb_printf(&body, "%s%s", t ? " | " : "", r);
                    only = r;
                }
                result = types[1] ? sc_rule(c, hint, body.s) : only;
                free(body.s);
            }
        }
    }
    c->depth--;
    return result ? result : sc_builtin(c, B_VALUE);
}

/* ------------------------------------------------------------- entry points */

/* The builtins used and those they use, as GBNF rules. */
static void sc_emit_builtins(unsigned used, struct sb *out)
{
    for (bool grew = true; grew;) {
        grew = false;
        for (int b = 0; b < B_COUNT; b++)
            if ((used & BIT(b)) && (builtins[b].deps & ~used))
                used |= builtins[b].deps, grew = true;
    }
    for (int b = 0; b < B_COUNT; b++) {
        if (!(used & BIT(b))) continue;
        sb_printf(out, "%s ::= %s\n", builtins[b].name, builtins[b].body);
        if (b == B_DATE) sb_puts(out, date_days);
    }
}

static void sc_free(struct sc *c)
{
    for (size_t i = 0; i < c->names_cap; i++) free(c->names[i]);
    free(c->names);
    for (int i = 0; i < c->n_refs; i++) free(c->refs[i].target);
    free(c->refs);
    free(c->rules.s);
    free(c->errors.s);
    free(c->ptr.s);
}

char *llm_grammar_json_schema_to_gbnf(const json_t *schema, char *err, size_t err_len)
{
    if (err && err_len) err[0] = '\0';
    if (!schema) {
        if (err && err_len) snprintf(err, err_len, "no schema");
        return NULL;
    }
    struct sc c = {.root = schema};
    /* builtin names, and the helpers of date */
    for (int b = 0; b < B_COUNT; b++) sc_claim(&c, builtins[b].name);
    sc_claim(&c, "day31");
    sc_claim(&c, "day30");
    sc_claim(&c, "day28");
    const char *top = sc_visit(&c, schema, "root");
    if (c.n_errors) {
        if (err && err_len) {
            if (c.n_errors > SCHEMA_MAX_ERRORS)
                snprintf(err, err_len, "%s; and %d more", c.errors.s,
                         c.n_errors - SCHEMA_MAX_ERRORS);
            else
                snprintf(err, err_len, "%s", c.errors.s);
        }
        sc_free(&c);
        return NULL;
    }
    struct sb out = {0};
    if (strcmp(top, "root")) sb_printf(&out, "root ::= %s\n", top);
    if (c.rules.s) sb_puts(&out, c.rules.s);
    sc_emit_builtins(c.used, &out);
    sc_free(&c);
    return out.s;
}

int llm_grammar_compile_json_schema(const json_t *schema, llm_grammar **out, char *err, size_t err_len)
{
    if (!out) return -EINVAL;
    *out = NULL;
    char *text = llm_grammar_json_schema_to_gbnf(schema, err, err_len);
    if (!text) return -EINVAL;
    char gerr[256];
    int rc = llm_grammar_compile_gbnf(text, strlen(text), out, gerr, sizeof gerr);
    if (rc && err && err_len) snprintf(err, err_len, "the schema's grammar: %s", gerr);
    free(text);
    return rc;
}

int llm_grammar_compile_json_object(llm_grammar **out)
{
    if (!out) return -EINVAL;
    struct sb text = {0};
    sb_puts(&text, "root ::= object\n");
    sc_emit_builtins(BIT(B_OBJECT), &text);
    char err[256];
    int rc = llm_grammar_compile_gbnf(text.s, text.n, out, err, sizeof err);
    UTIL_CHECK(rc == 0); /* a fixed grammar */
    free(text.s);
    return rc;
}

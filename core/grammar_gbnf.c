/*
 * grammar_gbnf.c: GBNF text -> a byte-level grammar (grammar_internal.h).
 *
 * The parser builds rules whose alternatives are sequences of terminals
 * (byte sets) and rule references:
 *   - a literal becomes its UTF-8 bytes, one singleton set each;
 *   - a character class becomes code-point ranges, split into UTF-8
 *     byte-range sequences (the range splitting of regex engines), so a
 *     class of ASCII is one terminal and any other class is a rule of
 *     alternatives that each spell whole, valid UTF-8 characters;
 *   - a group is a new rule; x* is R ::= x R | "" (right recursion: the
 *     reference in tail position does not grow the matcher's stacks),
 *     x{m,n} is m copies of x then n-m nested optionals.
 * Then the checks that keep the matcher finite and live: every referenced
 * rule is defined, no rule reaches itself leftmost with something pending
 * after it (left recursion: the stacks would grow without reading a byte),
 * and every rule reachable from root can complete (so every live state can
 * still reach the end of the text).
 */
#include "core/grammar_internal.h"
#include "util/util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GBNF_MAX_NESTING   256 /* ( ) depth; keeps the recursive parser's stack small */
#define GBNF_MAX_CODEPOINT 0x10FFFF
#define GBNF_MAX_NAME      256

/* ------------------------------------------------------------ the builder */

/* A symbol while building: >= 0 is a byte set, < 0 is rule -(s + 1). */
#define GBNF_REF(r) (-(int32_t)(r)-1)

struct gbnf_alt {
    int32_t *syms;
    int n, cap;
};

struct gbnf_rule {
    char *name;     /* NULL for the rules made for groups, classes, repetitions */
    int32_t owner;  /* the named rule it was made in (itself when named) */
    size_t def_at;  /* offset of its definition (or of the construct it was made for) */
    size_t used_at; /* offset of the first reference */
    bool defined;
    struct gbnf_alt *alts;
    int n_alts, cap_alts;
};

struct gbnf {
    const unsigned char *src;
    size_t len, at;
    int depth;
    int32_t current; /* the named rule being parsed */

    struct gbnf_rule *rules;
    int32_t n_rules, cap_rules;
    int32_t *names; /* open addressing: name -> rule id; -1 empty */
    size_t names_cap;
    struct llm_grammar_byteset *sets;
    int32_t n_sets, cap_sets;
    int32_t singleton[256]; /* set id of {b}, or -1 */
    int64_t n_syms;         /* every symbol pushed, with one END per alternative */

    char *err;
    size_t err_len;
    int rc;
};

static int gbnf_fail_at(struct gbnf *p, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error as "LINE:COLUMN: message". */
static int gbnf_fail_at(struct gbnf *p, size_t at, const char *fmt, ...)
{
    if (p->rc) return p->rc;
    p->rc = -EINVAL;
    if (!p->err || !p->err_len) return p->rc;
    int line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < at && i < p->len; i++)
        if (p->src[i] == '\n') line++, line_start = i + 1;
    int n = snprintf(p->err, p->err_len, "%d:%zu: ", line, at - line_start + 1);
    if (n >= 0 && (size_t)n < p->err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->err_len - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return p->rc;
}

static uint64_t gbnf_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static int32_t gbnf_new_rule(struct gbnf *p, char *name, size_t at)
{
    if (p->n_rules == p->cap_rules) {
        p->cap_rules = p->cap_rules ? 2 * p->cap_rules : 64;
        p->rules = util_xrealloc(p->rules, (size_t)p->cap_rules * sizeof *p->rules);
    }
    int32_t id = p->n_rules++;
    p->rules[id] = (struct gbnf_rule){
        .name = name, .owner = name ? id : p->current, .def_at = at, .used_at = at};
    return id;
}

static void gbnf_names_grow(struct gbnf *p)
{
    size_t cap = p->names_cap ? 2 * p->names_cap : 256;
    int32_t *names = util_xmalloc(cap * sizeof *names);
    memset(names, 0xff, cap * sizeof *names);
    for (size_t i = 0; i < p->names_cap; i++) {
        int32_t id = p->names[i];
        if (id < 0) continue;
        const char *n = p->rules[id].name;
        size_t j = gbnf_hash(n, strlen(n)) & (cap - 1);
        while (names[j] >= 0) j = (j + 1) & (cap - 1);
        names[j] = id;
    }
    free(p->names);
    p->names = names;
    p->names_cap = cap;
}

/* The rule named s[0..n), created (undefined) on first sight. */
static int32_t gbnf_rule_named(struct gbnf *p, const char *s, size_t n, size_t at)
{
    if (2 * (size_t)(p->n_rules + 1) > p->names_cap) gbnf_names_grow(p);
    size_t mask = p->names_cap - 1;
    for (size_t j = gbnf_hash(s, n) & mask;; j = (j + 1) & mask) {
        int32_t id = p->names[j];
        if (id < 0) {
            char *name = util_xmalloc(n + 1);
            memcpy(name, s, n);
            name[n] = '\0';
            id = gbnf_new_rule(p, name, at);
            p->names[j] = id;
            return id;
        }
        if (strlen(p->rules[id].name) == n && memcmp(p->rules[id].name, s, n) == 0) return id;
    }
}

static struct gbnf_alt *gbnf_new_alt(struct gbnf *p, int32_t rule)
{
    struct gbnf_rule *r = &p->rules[rule];
    if (r->n_alts == r->cap_alts) {
        r->cap_alts = r->cap_alts ? 2 * r->cap_alts : 2;
        r->alts = util_xrealloc(r->alts, (size_t)r->cap_alts * sizeof *r->alts);
    }
    r->alts[r->n_alts] = (struct gbnf_alt){0};
    p->n_syms++; /* its END */
    return &r->alts[r->n_alts++];
}

static int gbnf_push(struct gbnf *p, struct gbnf_alt *a, int32_t sym)
{
    if (++p->n_syms > LLM_GRAMMAR_MAX_SYMBOLS)
        return gbnf_fail_at(p, p->at, "grammar too large (over %d symbols once expanded)",
                            LLM_GRAMMAR_MAX_SYMBOLS);
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 8;
        a->syms = util_xrealloc(a->syms, (size_t)a->cap * sizeof *a->syms);
    }
    a->syms[a->n++] = sym;
    return 0;
}

static int32_t gbnf_add_set(struct gbnf *p, const struct llm_grammar_byteset *s)
{
    int count = 0, only = 0;
    for (int b = 0; b < 256 && count < 2; b++)
        if (llm_grammar_byteset_has(s, (uint8_t)b)) count++, only = b;
    if (count == 1 && p->singleton[only] >= 0) return p->singleton[only];
    if (p->n_sets == p->cap_sets) {
        p->cap_sets = p->cap_sets ? 2 * p->cap_sets : 64;
        p->sets = util_xrealloc(p->sets, (size_t)p->cap_sets * sizeof *p->sets);
    }
    p->sets[p->n_sets] = *s;
    if (count == 1) p->singleton[only] = p->n_sets;
    return p->n_sets++;
}

static void byteset_add_range(struct llm_grammar_byteset *s, unsigned lo, unsigned hi)
{
    for (unsigned b = lo; b <= hi; b++) s->bits[b >> 6] |= 1ull << (b & 63);
}

static int32_t gbnf_byte(struct gbnf *p, uint8_t b)
{
    struct llm_grammar_byteset s = {{0}};
    byteset_add_range(&s, b, b);
    return gbnf_add_set(p, &s);
}

/* ------------------------------------------------------------------ UTF-8 */

static int utf8_encode(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one well-formed UTF-8 character (no overlong forms, no
 * surrogates). Returns its length, or 0 when s[0..n) does not start with one. */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0) return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    int len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (len == 0 || (size_t)len > n || s[0] > 0xF4) return 0;
    uint32_t c = s[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_cp[len] || c > GBNF_MAX_CODEPOINT || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

/* Code points [lo, hi] as UTF-8 byte-range sequences: each seq[i] spells
 * exactly the characters whose byte k lies in [lo[k], hi[k]] for every k. */
struct utf8_seq {
    int n;
    uint8_t lo[4], hi[4];
};

struct utf8_seqs {
    struct utf8_seq *v;
    int n, cap;
};

static void utf8_seqs_push(struct utf8_seqs *s, uint32_t lo, uint32_t hi)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->v = util_xrealloc(s->v, (size_t)s->cap * sizeof *s->v);
    }
    struct utf8_seq *q = &s->v[s->n++];
    q->n = utf8_encode(lo, q->lo);
    UTIL_CHECK(utf8_encode(hi, q->hi) == q->n);
}

/* Splits [lo, hi] until every byte position is an independent range (as
 * regex-syntax's Utf8Sequences does): first at the encoded-length
 * boundaries and around the surrogates, then where a lower byte does not
 * span its whole 6-bit range. */
static void utf8_split(struct utf8_seqs *out, uint32_t lo, uint32_t hi)
{
    if (lo > hi) return;
    if (lo <= 0xDFFF && hi >= 0xD800) {
        if (lo < 0xD800) utf8_split(out, lo, 0xD7FF);
        if (hi > 0xDFFF) utf8_split(out, 0xE000, hi);
        return;
    }
    static const uint32_t max_of_len[3] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= max_of_len[i] && hi > max_of_len[i]) {
            utf8_split(out, lo, max_of_len[i]);
            utf8_split(out, max_of_len[i] + 1, hi);
            return;
        }
    if (hi < 0x80) {
        utf8_seqs_push(out, lo, hi);
        return;
    }
    for (int i = 1; i < 4; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if ((lo & m) != 0) {
                utf8_split(out, lo, lo | m);
                utf8_split(out, (lo | m) + 1, hi);
                return;
            }
            if ((hi & m) != m) {
                utf8_split(out, lo, (hi & ~m) - 1);
                utf8_split(out, hi & ~m, hi);
                return;
            }
        }
    }
    utf8_seqs_push(out, lo, hi);
}

/* ---------------------------------------------------------- the classes */

struct cp_range {
    uint32_t lo, hi;
};

struct cp_ranges {
    struct cp_range *v;
    int n, cap;
};

static void cp_ranges_push(struct cp_ranges *r, uint32_t lo, uint32_t hi)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->v = util_xrealloc(r->v, (size_t)r->cap * sizeof *r->v);
    }
    r->v[r->n++] = (struct cp_range){lo, hi};
}

static int cp_range_cmp(const void *a, const void *b)
{
    const struct cp_range *x = a, *y = b;
    return (x->lo > y->lo) - (x->lo < y->lo);
}

/* Sorts and merges; with negate, the complement within [0, U+10FFFF]. */
static void cp_ranges_normalize(struct cp_ranges *r, bool negate)
{
    if (r->n > 1) qsort(r->v, (size_t)r->n, sizeof *r->v, cp_range_cmp);
    int n = 0;
    for (int i = 0; i < r->n; i++) {
        if (n > 0 && r->v[i].lo <= r->v[n - 1].hi + 1) {
            if (r->v[i].hi > r->v[n - 1].hi) r->v[n - 1].hi = r->v[i].hi;
        } else {
            r->v[n++] = r->v[i];
        }
    }
    r->n = n;
    if (!negate) return;
    struct cp_ranges c = {0};
    uint32_t next = 0;
    for (int i = 0; i < r->n; i++) {
        if (r->v[i].lo > next) cp_ranges_push(&c, next, r->v[i].lo - 1);
        next = r->v[i].hi + 1;
    }
    if (next <= GBNF_MAX_CODEPOINT) cp_ranges_push(&c, next, GBNF_MAX_CODEPOINT);
    free(r->v);
    *r = c;
}

/* A class as symbols pushed onto `a`: one terminal when it holds only
 * ASCII, else a reference to a new rule with one alternative per group of
 * byte sequences that differ only in their first byte (merged into one
 * set: [E1-EC][80-BF][80-BF] and [EE-EF][80-BF][80-BF] become one). */
static int gbnf_push_class(struct gbnf *p, struct gbnf_alt *a, struct cp_ranges *r, size_t at)
{
    struct utf8_seqs seqs = {0};
    for (int i = 0; i < r->n; i++) utf8_split(&seqs, r->v[i].lo, r->v[i].hi);
    if (seqs.n == 0) {
        free(seqs.v);
        return gbnf_fail_at(p, at, "character class matches no character");
    }
    struct llm_grammar_byteset *first = util_xcalloc((size_t)seqs.n, sizeof *first);
    int n_groups = 0;
    int *group_of = util_xmalloc((size_t)seqs.n * sizeof *group_of);
    int *leader = util_xmalloc((size_t)seqs.n * sizeof *leader);
    struct llm_grammar_byteset ascii = {{0}};
    bool has_ascii = false;
    for (int i = 0; i < seqs.n; i++) {
        const struct utf8_seq *q = &seqs.v[i];
        if (q->n == 1) {
            byteset_add_range(&ascii, q->lo[0], q->hi[0]);
            has_ascii = true;
            continue;
        }
        int g = 0;
        for (; g < n_groups; g++) {
            const struct utf8_seq *l = &seqs.v[leader[g]];
            if (l->n == q->n && !memcmp(l->lo + 1, q->lo + 1, (size_t)q->n - 1) &&
                !memcmp(l->hi + 1, q->hi + 1, (size_t)q->n - 1))
                break;
        }
        if (g == n_groups) leader[n_groups++] = i;
        byteset_add_range(&first[g], q->lo[0], q->hi[0]);
        group_of[i] = g;
    }
    int rc = 0;
    if (n_groups == 0) {
        rc = gbnf_push(p, a, gbnf_add_set(p, &ascii));
    } else {
        int32_t rule = gbnf_new_rule(p, NULL, at);
        p->rules[rule].defined = true;
        if (has_ascii) rc = gbnf_push(p, gbnf_new_alt(p, rule), gbnf_add_set(p, &ascii));
        for (int g = 0; g < n_groups && !rc; g++) {
            const struct utf8_seq *l = &seqs.v[leader[g]];
            struct gbnf_alt *alt = gbnf_new_alt(p, rule);
            rc = gbnf_push(p, alt, gbnf_add_set(p, &first[g]));
            for (int k = 1; k < l->n && !rc; k++) {
                struct llm_grammar_byteset s = {{0}};
                byteset_add_range(&s, l->lo[k], l->hi[k]);
                /* the new alternative may have moved the rule's array */
                alt = &p->rules[rule].alts[p->rules[rule].n_alts - 1];
                rc = gbnf_push(p, alt, gbnf_add_set(p, &s));
            }
        }
        if (!rc) rc = gbnf_push(p, a, GBNF_REF(rule));
    }
    free(first);
    free(group_of);
    free(leader);
    free(seqs.v);
    return rc;
}

/* ----------------------------------------------------------------- parser */

static int gbnf_peek(const struct gbnf *p)
{
    return p->at < p->len ? p->src[p->at] : -1;
}

static bool gbnf_is_name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static void gbnf_skip_space(struct gbnf *p, bool newline_ok)
{
    while (p->at < p->len) {
        int c = p->src[p->at];
        if (c == '#') {
            while (p->at < p->len && p->src[p->at] != '\n' && p->src[p->at] != '\r') p->at++;
        } else if (c == ' ' || c == '\t' || (newline_ok && (c == '\n' || c == '\r'))) {
            p->at++;
        } else {
            break;
        }
    }
}

static int gbnf_hex(struct gbnf *p, int digits, uint32_t *out)
{
    uint32_t v = 0;
    size_t start = p->at;
    for (int i = 0; i < digits; i++) {
        int c = gbnf_peek(p);
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return gbnf_fail_at(p, start, "expected %d hex digits", digits);
        v = v << 4 | (uint32_t)d;
        p->at++;
    }
    if (v > GBNF_MAX_CODEPOINT || (v >= 0xD800 && v <= 0xDFFF))
        return gbnf_fail_at(p, start, "U+%X is not a Unicode scalar value", v);
    *out = v;
    return 0;
}

/* One character of a literal or class: raw UTF-8 or an escape. */
static int gbnf_char(struct gbnf *p, uint32_t *cp)
{
    size_t start = p->at;
    if (p->src[p->at] != '\\') {
        int n = utf8_decode(p->src + p->at, p->len - p->at, cp);
        if (n == 0) return gbnf_fail_at(p, start, "invalid UTF-8");
        p->at += (size_t)n;
        return 0;
    }
    if (p->at + 1 >= p->len) return gbnf_fail_at(p, start, "unterminated escape");
    int c = p->src[p->at + 1];
    p->at += 2;
    switch (c) {
    case 'x':
        return gbnf_hex(p, 2, cp);
    case 'u':
        return gbnf_hex(p, 4, cp);
    case 'U':
        return gbnf_hex(p, 8, cp);
    case 'n':
        *cp = '\n';
        return 0;
    case 'r':
        *cp = '\r';
        return 0;
    case 't':
        *cp = '\t';
        return 0;
    case '\\':
    case '"':
    case '[':
    case ']':
    case '-':
    case '^':
        *cp = (uint32_t)c;
        return 0;
    default:
        if (c >= 0x21 && c < 0x7F) return gbnf_fail_at(p, start, "unknown escape '\\%c'", c);
        return gbnf_fail_at(p, start, "unknown escape (byte 0x%02X)", c);
    }
}

static int gbnf_literal(struct gbnf *p, struct gbnf_alt *a)
{
    size_t start = p->at++;
    while (p->at < p->len && p->src[p->at] != '"') {
        uint32_t cp;
        if (gbnf_char(p, &cp)) return p->rc;
        uint8_t bytes[4];
        int n = utf8_encode(cp, bytes);
        for (int i = 0; i < n; i++)
            if (gbnf_push(p, a, gbnf_byte(p, bytes[i]))) return p->rc;
    }
    if (p->at >= p->len) return gbnf_fail_at(p, start, "unterminated literal");
    p->at++;
    return 0;
}

static int gbnf_class(struct gbnf *p, struct gbnf_alt *a)
{
    size_t start = p->at++;
    bool negate = false;
    if (gbnf_peek(p) == '^') negate = true, p->at++;
    struct cp_ranges r = {0};
    int rc = 0;
    while (!rc && p->at < p->len && p->src[p->at] != ']') {
        uint32_t lo, hi;
        size_t at = p->at;
        rc = gbnf_char(p, &lo);
        hi = lo;
        if (!rc && gbnf_peek(p) == '-' && p->at + 1 < p->len && p->src[p->at + 1] != ']') {
            p->at++;
            rc = gbnf_char(p, &hi);
            if (!rc && hi < lo)
                rc = gbnf_fail_at(p, at, "character range is backwards (U+%X > U+%X)", lo, hi);
        }
        if (!rc) cp_ranges_push(&r, lo, hi);
    }
    if (!rc && p->at >= p->len) rc = gbnf_fail_at(p, start, "unterminated character class");
    if (!rc) {
        p->at++;
        cp_ranges_normalize(&r, negate);
        rc = gbnf_push_class(p, a, &r, start);
    }
    free(r.v);
    return rc;
}

static int gbnf_number(struct gbnf *p, int *out)
{
    size_t start = p->at;
    long v = 0;
    while (gbnf_peek(p) >= '0' && gbnf_peek(p) <= '9') {
        v = v * 10 + (gbnf_peek(p) - '0');
        if (v > LLM_GRAMMAR_MAX_REPEAT)
            return gbnf_fail_at(p, start, "repetition count over %d", LLM_GRAMMAR_MAX_REPEAT);
        p->at++;
    }
    if (p->at == start) return gbnf_fail_at(p, start, "expected a number");
    *out = (int)v;
    return 0;
}

/* {m}, {m,}, {m,n}; max -1 = unbounded. */
static int gbnf_braces(struct gbnf *p, int *min, int *max)
{
    size_t start = p->at++;
    gbnf_skip_space(p, true);
    if (gbnf_number(p, min)) return p->rc;
    gbnf_skip_space(p, true);
    *max = *min;
    if (gbnf_peek(p) == ',') {
        p->at++;
        gbnf_skip_space(p, true);
        *max = -1;
        if (gbnf_peek(p) >= '0' && gbnf_peek(p) <= '9') {
            if (gbnf_number(p, max)) return p->rc;
            gbnf_skip_space(p, true);
        }
    }
    if (gbnf_peek(p) != '}') return gbnf_fail_at(p, p->at, "expected '}' to close the repetition");
    p->at++;
    if (*max >= 0 && *max < *min)
        return gbnf_fail_at(p, start, "repetition {%d,%d} has max below min", *min, *max);
    return 0;
}

static struct gbnf_alt *gbnf_last_alt(struct gbnf *p, int32_t rule)
{
    return &p->rules[rule].alts[p->rules[rule].n_alts - 1];
}

/* Applies a repetition to a->syms[from..n). */
static int gbnf_repeat(struct gbnf *p, int32_t rule, int from, int min, int max, size_t at)
{
    struct gbnf_alt *a = gbnf_last_alt(p, rule);
    if (a->n - from != 1) { /* several symbols (a literal): one rule first */
        int32_t unit = gbnf_new_rule(p, NULL, at);
        p->rules[unit].defined = true;
        struct gbnf_alt *u = gbnf_new_alt(p, unit);
        a = gbnf_last_alt(p, rule);
        for (int i = from; i < a->n; i++)
            if (gbnf_push(p, u, a->syms[i])) return p->rc;
        p->n_syms -= a->n - from;
        a->n = from;
        if (gbnf_push(p, a, GBNF_REF(unit))) return p->rc;
    }
    int32_t x = a->syms[--a->n];
    p->n_syms--;
    for (int i = 0; i < min; i++)
        if (gbnf_push(p, gbnf_last_alt(p, rule), x)) return p->rc;
    if (max == min) return 0;
    /* R ::= x R | ""  for the unbounded tail, else nested optionals
     * O_k ::= x O_(k-1) | "" (the reference is in tail position). */
    int32_t tail = -1;
    int levels = max < 0 ? 1 : max - min;
    for (int k = 0; k < levels; k++) {
        int32_t r = gbnf_new_rule(p, NULL, at);
        p->rules[r].defined = true;
        struct gbnf_alt *alt = gbnf_new_alt(p, r);
        if (gbnf_push(p, alt, x)) return p->rc;
        int32_t next = max < 0 ? r : tail;
        if (next >= 0 && gbnf_push(p, gbnf_last_alt(p, r), GBNF_REF(next))) return p->rc;
        gbnf_new_alt(p, r);
        tail = r;
    }
    return gbnf_push(p, gbnf_last_alt(p, rule), GBNF_REF(tail));
}

static int gbnf_alternates(struct gbnf *p, int32_t rule, bool nested);

/* Elements of one alternative, up to '|', ')', the end of the line
 * (outside groups) or the end of the text. */
static int gbnf_sequence(struct gbnf *p, int32_t rule, bool nested)
{
    int last = -1; /* where the last element's symbols start */
    for (;;) {
        int c = gbnf_peek(p);
        size_t at = p->at;
        struct gbnf_alt *a = gbnf_last_alt(p, rule);
        if (c == '"') {
            last = a->n;
            if (gbnf_literal(p, a)) return p->rc;
        } else if (c == '[') {
            last = a->n;
            if (gbnf_class(p, a)) return p->rc;
        } else if (c == '.') {
            p->at++;
            last = a->n;
            struct cp_ranges r = {0};
            cp_ranges_push(&r, 0, GBNF_MAX_CODEPOINT);
            int rc = gbnf_push_class(p, a, &r, at);
            free(r.v);
            if (rc) return rc;
        } else if (c >= 0 && gbnf_is_name_char(c)) {
            while (gbnf_is_name_char(gbnf_peek(p))) p->at++;
            if (p->at - at > GBNF_MAX_NAME) return gbnf_fail_at(p, at, "rule name too long");
            int32_t ref = gbnf_rule_named(p, (const char *)p->src + at, p->at - at, at);
            a = gbnf_last_alt(p, rule);
            last = a->n;
            if (gbnf_push(p, a, GBNF_REF(ref))) return p->rc;
        } else if (c == '(') {
            if (++p->depth > GBNF_MAX_NESTING)
                return gbnf_fail_at(p, at, "groups nested deeper than %d", GBNF_MAX_NESTING);
            p->at++;
            gbnf_skip_space(p, true);
            int32_t group = gbnf_new_rule(p, NULL, at);
            p->rules[group].defined = true;
            if (gbnf_alternates(p, group, true)) return p->rc;
            int close = gbnf_peek(p);
            if (close < 0) return gbnf_fail_at(p, at, "unclosed '('");
            if (close != ')') {
                if (close >= 0x21 && close < 0x7F)
                    return gbnf_fail_at(p, p->at, "unexpected '%c'", close);
                return gbnf_fail_at(p, p->at, "unexpected byte 0x%02X", close);
            }
            p->at++;
            p->depth--;
            a = gbnf_last_alt(p, rule);
            last = a->n;
            if (gbnf_push(p, a, GBNF_REF(group))) return p->rc;
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (last < 0) return gbnf_fail_at(p, at, "'%c' has nothing before it to repeat", c);
            int min = c == '+', max = c == '?' ? 1 : -1;
            if (c == '{') {
                if (gbnf_braces(p, &min, &max)) return p->rc;
            } else {
                p->at++;
            }
            if (gbnf_repeat(p, rule, last, min, max, at)) return p->rc;
        } else {
            return 0;
        }
        gbnf_skip_space(p, nested);
    }
}

/* True when, past blank lines and comments, the next line starts with '|'. */
static bool gbnf_continues(struct gbnf *p)
{
    size_t save = p->at;
    gbnf_skip_space(p, true);
    bool yes = gbnf_peek(p) == '|';
    if (!yes) p->at = save;
    return yes;
}

static int gbnf_alternates(struct gbnf *p, int32_t rule, bool nested)
{
    for (;;) {
        gbnf_new_alt(p, rule);
        if (gbnf_sequence(p, rule, nested)) return p->rc;
        if (gbnf_peek(p) == '|' || (!nested && gbnf_continues(p))) {
            p->at++;
            gbnf_skip_space(p, true);
            continue;
        }
        return 0;
    }
}

static int gbnf_rule(struct gbnf *p)
{
    size_t at = p->at;
    while (gbnf_is_name_char(gbnf_peek(p))) p->at++;
    if (p->at == at) {
        int c = gbnf_peek(p);
        if (c >= 0x21 && c < 0x7F)
            return gbnf_fail_at(p, at, "expected a rule name, found '%c'", c);
        return gbnf_fail_at(p, at, "expected a rule name");
    }
    if (p->at - at > GBNF_MAX_NAME) return gbnf_fail_at(p, at, "rule name too long");
    int32_t rule = gbnf_rule_named(p, (const char *)p->src + at, p->at - at, at);
    if (p->rules[rule].defined)
        return gbnf_fail_at(p, at, "rule '%s' is defined twice", p->rules[rule].name);
    p->rules[rule].defined = true;
    p->rules[rule].def_at = at;
    p->current = rule;
    gbnf_skip_space(p, false);
    if (p->len - p->at < 3 || memcmp(p->src + p->at, "::=", 3) != 0)
        return gbnf_fail_at(p, p->at, "expected '::=' after rule name");
    p->at += 3;
    gbnf_skip_space(p, true);
    if (gbnf_alternates(p, rule, false)) return p->rc;
    int c = gbnf_peek(p);
    if (c == '\r' || c == '\n' || c < 0) return 0;
    if (c == ')') return gbnf_fail_at(p, p->at, "unmatched ')'");
    if (c >= 0x21 && c < 0x7F) return gbnf_fail_at(p, p->at, "unexpected '%c'", c);
    return gbnf_fail_at(p, p->at, "unexpected byte 0x%02X", c);
}

/* ------------------------------------------------------------------ checks */

/* The flat grammar plus what the checks need: which rule owns an
 * alternative, and for each rule the alternatives that refer to it (one
 * entry per reference). */
struct gbnf_index {
    int32_t *alt_rule;
    int32_t *users_begin; /* rules + 1 */
    int32_t *users;       /* alternatives */
};

static void gbnf_index_build(const llm_grammar *g, struct gbnf_index *x)
{
    x->alt_rule = util_xmalloc((size_t)g->n_alts * sizeof *x->alt_rule);
    x->users_begin = util_xcalloc((size_t)g->n_rules + 1, sizeof *x->users_begin);
    int64_t n_refs = 0;
    for (int32_t r = 0; r < g->n_rules; r++)
        for (int32_t a = g->rules[r].alt_begin; a < g->rules[r].alt_end; a++) {
            x->alt_rule[a] = r;
            for (int32_t i = g->alts[a]; g->syms[i].kind != LLM_GRAMMAR_END; i++)
                if (g->syms[i].kind == LLM_GRAMMAR_REF) x->users_begin[g->syms[i].arg + 1]++, n_refs++;
        }
    for (int32_t r = 0; r < g->n_rules; r++) x->users_begin[r + 1] += x->users_begin[r];
    x->users = util_xmalloc((size_t)(n_refs ? n_refs : 1) * sizeof *x->users);
    int32_t *fill = util_xmalloc((size_t)g->n_rules * sizeof *fill);
    memcpy(fill, x->users_begin, (size_t)g->n_rules * sizeof *fill);
    for (int32_t a = 0; a < g->n_alts; a++)
        for (int32_t i = g->alts[a]; g->syms[i].kind != LLM_GRAMMAR_END; i++)
            if (g->syms[i].kind == LLM_GRAMMAR_REF) x->users[fill[g->syms[i].arg]++] = a;
    free(fill);
}

static void gbnf_index_free(struct gbnf_index *x)
{
    free(x->alt_rule);
    free(x->users_begin);
    free(x->users);
}

/* Least fixpoint of "some alternative has only symbols that are good",
 * where a terminal is good when terminals_good: nullable rules (false) or
 * productive ones (true). Counts each alternative's pending symbols; a
 * rule that turns good releases its users' counts. */
static bool *gbnf_fixpoint(const llm_grammar *g, const struct gbnf_index *x, bool terminals_good)
{
    bool *good = util_xcalloc((size_t)g->n_rules, 1);
    int32_t *pending = util_xmalloc((size_t)g->n_alts * sizeof *pending);
    int32_t *queue = util_xmalloc((size_t)g->n_rules * sizeof *queue);
    int32_t head = 0, tail = 0;
    for (int32_t a = 0; a < g->n_alts; a++) {
        int32_t n = 0;
        for (int32_t i = g->alts[a]; g->syms[i].kind != LLM_GRAMMAR_END; i++)
            if (g->syms[i].kind == LLM_GRAMMAR_REF)
                n++;
            else if (!terminals_good)
                n = INT32_MAX / 2; /* never nullable */
        pending[a] = n;
        int32_t r = x->alt_rule[a];
        if (n == 0 && !good[r]) good[r] = true, queue[tail++] = r;
    }
    while (head < tail) {
        int32_t r = queue[head++];
        for (int32_t u = x->users_begin[r]; u < x->users_begin[r + 1]; u++) {
            int32_t a = x->users[u];
            int32_t owner = x->alt_rule[a];
            if (--pending[a] == 0 && !good[owner]) good[owner] = true, queue[tail++] = owner;
        }
    }
    free(pending);
    free(queue);
    return good;
}

/* Left recursion: an edge A -> B when B is referenced with only nullable
 * symbols before it; "tail" when nothing follows it in the alternative.
 * Expanding a non-tail edge pushes a stack entry, so a cycle through one
 * grows the stacks forever without reading a byte. Tarjan's strongly
 * connected components, iteratively (chains of generated rules are deep);
 * a non-tail edge inside a component is such a cycle. Returns a rule on one, or -1. */
struct gbnf_edges {
    int32_t *begin; /* rules + 1 */
    int32_t *to;
    bool *tail;
};

static void gbnf_left_edges(const llm_grammar *g, const bool *nullable, struct gbnf_edges *e)
{
    e->begin = util_xcalloc((size_t)g->n_rules + 1, sizeof *e->begin);
    for (int pass = 0; pass < 2; pass++) {
        int32_t n = 0;
        for (int32_t r = 0; r < g->n_rules; r++) {
            if (pass == 0) e->begin[r] = n;
            for (int32_t a = g->rules[r].alt_begin; a < g->rules[r].alt_end; a++)
                for (int32_t i = g->alts[a]; g->syms[i].kind == LLM_GRAMMAR_REF; i++) {
                    if (pass == 1) {
                        e->to[n] = (int32_t)g->syms[i].arg;
                        e->tail[n] = g->syms[i + 1].kind == LLM_GRAMMAR_END;
                    }
                    n++;
                    if (!nullable[g->syms[i].arg]) break;
                }
        }
        if (pass == 0) {
            e->begin[g->n_rules] = n;
            e->to = util_xmalloc((size_t)(n ? n : 1) * sizeof *e->to);
            e->tail = util_xmalloc((size_t)(n ? n : 1) * sizeof *e->tail);
        }
    }
}

static int32_t gbnf_left_recursive(const llm_grammar *g, const bool *nullable)
{
    struct gbnf_edges e;
    gbnf_left_edges(g, nullable, &e);
    int32_t n = g->n_rules;
    int32_t *index = util_xmalloc((size_t)n * sizeof *index);
    int32_t *low = util_xmalloc((size_t)n * sizeof *low);
    int32_t *comp = util_xmalloc((size_t)n * sizeof *comp);
    int32_t *stack = util_xmalloc((size_t)n * sizeof *stack);
    int32_t *call = util_xmalloc((size_t)n * sizeof *call); /* DFS: rule */
    int32_t *next = util_xmalloc((size_t)n * sizeof *next); /* DFS: its next edge */
    bool *on_stack = util_xcalloc((size_t)n, 1);
    for (int32_t r = 0; r < n; r++) index[r] = -1;
    int32_t counter = 0, sp = 0, n_comp = 0;
    for (int32_t start = 0; start < n; start++) {
        if (index[start] >= 0) continue;
        int32_t depth = 0;
        call[depth] = start;
        next[depth] = e.begin[start];
        index[start] = low[start] = counter++;
        stack[sp++] = start;
        on_stack[start] = true;
        while (depth >= 0) {
            int32_t v = call[depth];
            if (next[depth] < e.begin[v + 1]) {
                int32_t w = e.to[next[depth]++];
                if (index[w] < 0) {
                    index[w] = low[w] = counter++;
                    stack[sp++] = w;
                    on_stack[w] = true;
                    depth++;
                    call[depth] = w;
                    next[depth] = e.begin[w];
                } else if (on_stack[w] && index[w] < low[v]) {
                    low[v] = index[w];
                }
                continue;
            }
            if (low[v] == index[v]) {
                int32_t w;
                do {
                    w = stack[--sp];
                    on_stack[w] = false;
                    comp[w] = n_comp;
                } while (w != v);
                n_comp++;
            }
            depth--;
            if (depth >= 0 && low[v] < low[call[depth]]) low[call[depth]] = low[v];
        }
    }
    int32_t found = -1;
    for (int32_t r = 0; r < n && found < 0; r++)
        for (int32_t k = e.begin[r]; k < e.begin[r + 1]; k++)
            if (!e.tail[k] && comp[e.to[k]] == comp[r]) {
                found = r;
                break;
            }
    free(index);
    free(low);
    free(comp);
    free(stack);
    free(call);
    free(next);
    free(on_stack);
    free(e.begin);
    free(e.to);
    free(e.tail);
    return found;
}

static bool *gbnf_reachable(const llm_grammar *g)
{
    bool *seen = util_xcalloc((size_t)g->n_rules, 1);
    int32_t *queue = util_xmalloc((size_t)g->n_rules * sizeof *queue);
    int32_t head = 0, tail = 0;
    seen[g->root] = true;
    queue[tail++] = g->root;
    while (head < tail) {
        int32_t r = queue[head++];
        for (int32_t a = g->rules[r].alt_begin; a < g->rules[r].alt_end; a++)
            for (int32_t i = g->alts[a]; g->syms[i].kind != LLM_GRAMMAR_END; i++)
                if (g->syms[i].kind == LLM_GRAMMAR_REF && !seen[g->syms[i].arg]) {
                    seen[g->syms[i].arg] = true;
                    queue[tail++] = (int32_t)g->syms[i].arg;
                }
    }
    free(queue);
    return seen;
}

/* The rule to name in a message about rule r, and where. */
static const char *gbnf_rule_label(const struct gbnf *p, int32_t r)
{
    return p->rules[p->rules[r].owner >= 0 ? p->rules[r].owner : r].name;
}

static int gbnf_check(struct gbnf *p, llm_grammar *g)
{
    struct gbnf_index x;
    gbnf_index_build(g, &x);
    bool *nullable = gbnf_fixpoint(g, &x, false);
    int32_t left = gbnf_left_recursive(g, nullable);
    if (left >= 0) {
        const char *name = gbnf_rule_label(p, left);
        gbnf_fail_at(p, p->rules[left].def_at,
                     "left recursion: rule '%s' can reach itself without reading anything",
                     name ? name : "?");
    }
    if (!p->rc) {
        bool *productive = gbnf_fixpoint(g, &x, true);
        bool *reachable = gbnf_reachable(g);
        /* name a rule that refers to itself if there is one: the others are
         * only stuck behind it */
        int32_t stuck = -1;
        for (int32_t r = 0; r < g->n_rules; r++) {
            if (!reachable[r] || productive[r]) continue;
            if (stuck < 0) stuck = r;
            bool self = false;
            for (int32_t a = g->rules[r].alt_begin; a < g->rules[r].alt_end && !self; a++)
                for (int32_t i = g->alts[a]; g->syms[i].kind != LLM_GRAMMAR_END; i++)
                    if (g->syms[i].kind == LLM_GRAMMAR_REF && (int32_t)g->syms[i].arg == r) self = true;
            if (self) {
                stuck = r;
                break;
            }
        }
        if (stuck >= 0) {
            const char *name = gbnf_rule_label(p, stuck);
            gbnf_fail_at(p, p->rules[stuck].def_at,
                         "rule '%s' can never complete (every alternative recurses forever)",
                         name ? name : "?");
        }
        free(productive);
        free(reachable);
    }
    free(nullable);
    gbnf_index_free(&x);
    return p->rc;
}

/* -------------------------------------------------------------- assembly */

static llm_grammar *gbnf_flatten(struct gbnf *p, int32_t root)
{
    llm_grammar *g = util_xcalloc(1, sizeof *g);
    int64_t n_alts = 0;
    for (int32_t r = 0; r < p->n_rules; r++) n_alts += p->rules[r].n_alts;
    g->n_rules = p->n_rules;
    g->rules = util_xmalloc((size_t)p->n_rules * sizeof *g->rules);
    g->alts = util_xmalloc((size_t)(n_alts ? n_alts : 1) * sizeof *g->alts);
    g->syms = util_xmalloc((size_t)p->n_syms * sizeof *g->syms);
    int32_t ns = 0, na = 0;
    for (int32_t r = 0; r < p->n_rules; r++) {
        g->rules[r].alt_begin = na;
        for (int k = 0; k < p->rules[r].n_alts; k++) {
            const struct gbnf_alt *a = &p->rules[r].alts[k];
            g->alts[na++] = ns;
            for (int i = 0; i < a->n; i++) {
                int32_t s = a->syms[i];
                g->syms[ns++] = s >= 0 ? (struct llm_grammar_sym){LLM_GRAMMAR_TERM, (uint32_t)s}
                                       : (struct llm_grammar_sym){LLM_GRAMMAR_REF, (uint32_t)(-s - 1)};
            }
            g->syms[ns++] = (struct llm_grammar_sym){LLM_GRAMMAR_END, 0};
        }
        g->rules[r].alt_end = na;
    }
    UTIL_CHECK(ns == p->n_syms && na == n_alts);
    g->n_syms = ns;
    g->n_alts = na;
    g->sets = p->sets;
    g->n_sets = p->n_sets;
    p->sets = NULL;
    g->root = root;
    return g;
}

static void gbnf_free(struct gbnf *p)
{
    for (int32_t r = 0; r < p->n_rules; r++) {
        for (int k = 0; k < p->rules[r].n_alts; k++) free(p->rules[r].alts[k].syms);
        free(p->rules[r].alts);
        free(p->rules[r].name);
    }
    free(p->rules);
    free(p->names);
    free(p->sets);
}

/* Frees what grammar_gbnf.c allocated in a grammar (grammar_matcher.c frees the rest). */
void llm_grammar_free_tables(llm_grammar *g);
void llm_grammar_free_tables(llm_grammar *g)
{
    free(g->syms);
    free(g->sets);
    free(g->alts);
    free(g->rules);
}

int llm_grammar_compile_gbnf(const char *text, size_t len, llm_grammar **out, char *err, size_t err_len)
{
    if (err && err_len) err[0] = '\0';
    if (!out || (!text && len)) return -EINVAL;
    *out = NULL;
    struct gbnf p = {.src = (const unsigned char *)text,
                     .len = len,
                     .current = -1,
                     .err = err,
                     .err_len = err_len};
    memset(p.singleton, 0xff, sizeof p.singleton);
    gbnf_skip_space(&p, true);
    while (!p.rc && p.at < p.len) {
        gbnf_rule(&p);
        gbnf_skip_space(&p, true);
    }
    int32_t root = -1;
    for (int32_t r = 0; r < p.n_rules && !p.rc; r++)
        if (p.rules[r].name && !p.rules[r].defined)
            gbnf_fail_at(&p, p.rules[r].used_at, "undefined rule '%s'", p.rules[r].name);
    if (!p.rc) {
        root = p.names_cap ? gbnf_rule_named(&p, "root", 4, 0) : -1;
        if (root < 0 || !p.rules[root].defined) gbnf_fail_at(&p, 0, "no rule named 'root'");
    }
    llm_grammar *g = NULL;
    if (!p.rc) {
        g = gbnf_flatten(&p, root);
        if (gbnf_check(&p, g)) {
            llm_grammar_free_tables(g);
            free(g);
            g = NULL;
        }
    }
    int rc = p.rc;
    gbnf_free(&p);
    if (rc) return rc;
    *out = llm_grammar_finish(g);
    return 0;
}

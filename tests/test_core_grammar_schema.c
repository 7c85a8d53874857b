/*
 * Tests for core/grammar_schema.c: JSON Schemas compiled to grammars.
 *
 * The main check walks each schema's matcher at random over the real
 * vocabulary of models/llmd-20m.gguf (its tokenizer, decoded as the engine
 * decodes) until EOS: at every step something must be allowed and the
 * token taken must be accepted; the output must equal llm_detokenize of
 * the tokens (the first-token space rule as the engine applies it), parse
 * with jansson, and validate against the schema with a real validator
 * (python3-jsonschema, all outputs of a test in one call, format checks
 * on). Then exact checks with a one-byte-per-token vocabulary (integer
 * bounds, string lengths in characters, extra keys never repeating a
 * declared one), and the errors for unsupported keywords.
 */
#include "core/gguf.h"
#include "core/tokenizer.h"
#include "core/grammar.h"
#include "tests/grammar_helpers.h"
#include "tests/jsonschema_check.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL      "models/llmd-20m.gguf"
#define WALKS      16   /* random outputs per schema */
#define MAX_STEPS  4000 /* a walk that has not ended by then fails the test */
#define LEAN_AFTER 64   /* steps before the walk starts to favour closing tokens */

/* ------------------------------------------------------------- fixture */

static llm_gguf *gguf;
static llm_tokenizer *tok;
static struct gh_vocab vocab, bytes;

static void setup(void)
{
    char err[256];
    cr_assert_eq(llm_gguf_open(MODEL, &gguf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_tokenizer_load(gguf, &tok, err, sizeof err), 0, "%s", err);
    vocab = gh_tokenizer_vocab(tok);
    bytes = gh_byte_vocab();
}

static void teardown(void)
{
    gh_vocab_free(&vocab);
    gh_vocab_free(&bytes);
    llm_tokenizer_free(tok);
    llm_gguf_close(gguf);
}

TestSuite(schema, .init = setup, .fini = teardown, .timeout = 600);

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    cr_assert(j, "bad test JSON %s: %s", text, jerr.text);
    return j;
}

static llm_grammar *compile_schema(const json_t *schema)
{
    llm_grammar *g = NULL;
    char err[1024];
    int rc = llm_grammar_compile_json_schema(schema, &g, err, sizeof err);
    char *dump = json_dumps(schema, JSON_COMPACT);
    cr_assert_eq(rc, 0, "%s: %s", dump, err);
    free(dump);
    return g;
}

/* ------------------------------------------------------ random outputs */

/* WALKS random outputs of g, each checked on the spot and appended to
 * batch as [schema, text] for the validator. */
static void walk(llm_grammar *g, const json_t *schema, uint64_t seed, json_t *batch,
                 bool want_object)
{
    int total_steps = 0;
    for (int w = 0; w < WALKS; w++) {
        llm_grammar_matcher *m = llm_grammar_matcher_create(g, vocab.v);
        struct util_rng rng;
        util_rng_seed(&rng, seed * 1000 + (uint64_t)w);
        struct gh_text out = {0};
        struct gh_walk r = gh_random_walk(m, &vocab, &rng, MAX_STEPS, LEAN_AFTER, &out);
        cr_assert(!r.empty_mask, "walk %d: nothing allowed after \"%s\"", w, out.s);
        cr_assert(!r.inconsistent, "walk %d: the mask and accept disagree after \"%s\"", w, out.s);
        cr_assert(r.ended, "walk %d: no EOS in %d steps: \"%.200s\"", w, MAX_STEPS, out.s);
        total_steps += r.steps;
        /* the engine's own decoding gives the same text */
        char *decoded = llm_detokenize(tok, r.ids, r.steps);
        cr_assert_str_eq(decoded, out.s);
        free(decoded);
        json_error_t jerr;
        json_t *j = json_loads(out.s, JSON_DECODE_ANY, &jerr);
        cr_assert(j, "walk %d: jansson cannot parse \"%s\": %s", w, out.s, jerr.text);
        if (want_object) cr_assert(json_is_object(j), "not an object: %s", out.s);
        json_decref(j);
        json_array_append_new(batch, json_pack("[O s]", schema, out.s));
        free(r.ids);
        free(out.s);
        llm_grammar_matcher_free(m);
    }
    cr_assert_gt(total_steps, WALKS, "the walks do take tokens");
}

/* Random outputs of each schema, validated together. */
static void check_schemas(const char *const *schemas, int n)
{
    json_t *batch = json_array();
    for (int i = 0; i < n; i++) {
        json_t *schema = parse(schemas[i]);
        llm_grammar *g = compile_schema(schema);
        walk(g, schema, (uint64_t)i + 1, batch, false);
        llm_grammar_unref(g);
        json_decref(schema);
    }
    jsonschema_check(batch);
    json_decref(batch);
}

Test(schema, objects_with_required_and_optional_properties)
{
    static const char *const schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
        "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
        "\"email\":{\"type\":\"string\"},\"admin\":{\"type\":\"boolean\"}},"
        "\"required\":[\"age\",\"name\"],\"additionalProperties\":false}",
        /* only optional properties: any subset, in order, commas right */
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"null\"},\"b\":{\"type\":\"null\"},"
        "\"c\":{\"type\":\"null\"}}}",
        /* extra keys: never one of the declared names */
        "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"idx\":{\"type\":"
        "\"boolean\"}},\"required\":[\"id\"],\"additionalProperties\":{\"type\":\"string\","
        "\"maxLength\":3}}",
        "{\"properties\":{\"k\":{\"const\":1}},\"additionalProperties\":true}",
        /* a required key that is only allowed as an extra one */
        "{\"type\":\"object\",\"required\":[\"x\"],\"additionalProperties\":{\"type\":\"integer\"}"
        "}",
        "{\"type\":\"object\",\"properties\":{\"\\u043a\\u043b\\u044e\\u0447\":{\"type\":"
        "\"string\",\"minLength\":1},\"a\\\"b\\\\c\":{\"type\":\"integer\"}},\"required\":["
        "\"\\u043a\\u043b\\u044e\\u0447\",\"a\\\"b\\\\c\"]}",
    };
    check_schemas(schemas, sizeof schemas / sizeof *schemas);
}

Test(schema, arrays_with_bounds_and_tuples)
{
    static const char *const schemas[] = {
        "{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":2,\"maxItems\":4}",
        "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":2},\"maxItems\":1}",
        "{\"type\":\"array\",\"minItems\":1}",
        "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"},{\"type\":\"boolean\"}],"
        "\"items\":false,\"minItems\":1}",
        "{\"type\":\"array\",\"prefixItems\":[{\"const\":\"head\"}],\"items\":{\"type\":\"null\"},"
        "\"minItems\":3,\"maxItems\":5}",
        "{\"$schema\":\"http://json-schema.org/draft-07/schema#\",\"type\":\"array\",\"items\":["
        "{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}",
        "{\"type\":\"array\",\"maxItems\":0}",
    };
    check_schemas(schemas, sizeof schemas / sizeof *schemas);
}

Test(schema, enums_consts_strings_and_scalars)
{
    static const char *const schemas[] = {
        "{\"enum\":[\"red\",\"green\",1,null,{\"a\":[1,2.5]},[true]]}",
        "{\"type\":\"string\",\"enum\":[\"a\",1,\"b\\n\\u00e9\"]}",
        "{\"const\":{\"fixed\":\"value\"}}",
        "{\"type\":\"string\",\"minLength\":3,\"maxLength\":6}",
        "{\"type\":\"string\"}",
        "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"number\"},\"n\":{\"type\":"
        "\"integer\",\"minimum\":-50,\"exclusiveMaximum\":1000},\"b\":{\"type\":\"boolean\"},"
        "\"z\":{\"type\":\"null\"},\"i\":{\"type\":\"integer\"}},\"required\":[\"x\",\"n\",\"b\","
        "\"z\",\"i\"]}",
        "{\"type\":[\"string\",\"null\",\"integer\"],\"maxLength\":2,\"minimum\":5,\"maximum\":7}",
        "{\"type\":\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"date\"},"
        "\"t\":{\"type\":\"string\",\"format\":\"date-time\"},\"h\":{\"type\":\"string\","
        "\"format\":\"time\"},\"u\":{\"type\":\"string\",\"format\":\"uuid\"}},"
        "\"required\":[\"d\",\"t\",\"h\",\"u\"]}",
        "{}",
        "{\"title\":\"annotations only\",\"description\":\"ignored\",\"examples\":[1]}",
    };
    check_schemas(schemas, sizeof schemas / sizeof *schemas);
}

Test(schema, refs_defs_and_alternatives)
{
    static const char *const schemas[] = {
        /* a recursive tree */
        "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"value\":{\"type\":"
        "\"integer\"},\"children\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},"
        "\"maxItems\":2}},\"required\":[\"value\"],\"additionalProperties\":false}},"
        "\"$ref\":\"#/$defs/node\"}",
        "{\"definitions\":{\"pt\":{\"type\":\"array\",\"items\":{\"type\":\"number\"},"
        "\"minItems\":2,\"maxItems\":2}},\"type\":\"object\",\"properties\":{\"from\":{\"$ref\":"
        "\"#/definitions/pt\"},\"to\":{\"$ref\":\"#/definitions/pt\",\"description\":\"end\"}},"
        "\"required\":[\"from\",\"to\"]}",
        "{\"anyOf\":[{\"type\":\"string\",\"maxLength\":5},{\"type\":\"integer\"},{\"type\":"
        "\"object\",\"properties\":{\"k\":{\"type\":\"boolean\"}},\"required\":[\"k\"],"
        "\"additionalProperties\":false}]}",
        "{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"kind\":{\"const\":\"a\"},\"x\":{"
        "\"type\":\"integer\"}},\"required\":[\"kind\",\"x\"],\"additionalProperties\":false},"
        "{\"type\":\"object\",\"properties\":{\"kind\":{\"const\":\"b\"},\"y\":{\"type\":"
        "\"string\"}},\"required\":[\"kind\",\"y\"],\"additionalProperties\":false}]}",
        /* a list defined by recursion through the root */
        "{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"next\":{\"anyOf\":["
        "{\"$ref\":\"#\"},{\"type\":\"null\"}]}},\"required\":[\"v\",\"next\"],"
        "\"additionalProperties\":false}",
        "{\"$defs\":{\"a/"
        "b\":{\"type\":\"boolean\"},\"c~d\":{\"type\":\"null\"}},\"type\":\"array\","
        "\"prefixItems\":[{\"$ref\":\"#/$defs/a~1b\"},{\"$ref\":\"#/$defs/c~0d\"}],\"items\":false,"
        "\"minItems\":2}",
    };
    check_schemas(schemas, sizeof schemas / sizeof *schemas);
}

Test(schema, json_object_mode_gives_objects)
{
    llm_grammar *g = NULL;
    cr_assert_eq(llm_grammar_compile_json_object(&g), 0);
    json_t *batch = json_array(), *schema = parse("{\"type\":\"object\"}");
    walk(g, schema, 99, batch, true);
    jsonschema_check(batch);
    /* and only objects: a bare value or array is refused */
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    cr_assert_eq(llm_grammar_matcher_accept(m, '['), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, '"'), -EINVAL);
    cr_assert_eq(llm_grammar_matcher_accept(m, '{'), 0);
    llm_grammar_matcher_free(m);
    json_decref(schema);
    json_decref(batch);
    llm_grammar_unref(g);
}

/* The output's first token loses the space of a piece like "▁{": the
 * mask of the first step must take exactly the tokens whose text, read
 * that way, starts the grammar, and a later step must read the space. */
Test(schema, the_first_token_space_rule_follows_the_tokenizer)
{
    llm_grammar *g = NULL;
    const char *text = "root ::= \"the\" (\" the\")*";
    cr_assert_eq(llm_grammar_compile_gbnf(text, strlen(text), &g, NULL, 0), 0);
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, vocab.v);
    float *logits = util_xcalloc((size_t)vocab.n, sizeof *logits);
    llm_grammar_matcher_mask_logits(m, logits);
    int32_t space_the = -1;
    for (int32_t t = 0; t < vocab.n; t++) {
        if (!vocab.texts[t]) continue;
        const char *s = vocab.texts[t];
        int len = vocab.lens[t];
        if (vocab.space_first[t]) s++, len--;
        /* a lone "▁" (nothing once its space is lost) is allowed too */
        bool want = (len > 0 || vocab.space_first[t]) && len <= 3 && !strncmp(s, "the", (size_t)len);
        cr_assert_eq(logits[t] == 0.0f, want, "first token %d \"%s\"", t, vocab.texts[t]);
        if (vocab.space_first[t] && !strcmp(vocab.texts[t], " the")) space_the = t;
    }
    cr_assert_geq(space_the, 0, "the vocabulary has \"\u2581the\"");
    cr_assert_eq(llm_grammar_matcher_accept(m, space_the), 0);
    cr_assert(llm_grammar_matcher_accepting(m));
    for (int32_t t = 0; t < vocab.n; t++) logits[t] = 0.0f;
    llm_grammar_matcher_mask_logits(m, logits);
    cr_assert_eq(logits[space_the], 0.0f, "later, \"\u2581the\" reads \" the\"");
    cr_assert_eq(llm_grammar_matcher_accept(m, space_the), 0);
    int32_t ids[2] = {space_the, space_the};
    char *decoded = llm_detokenize(tok, ids, 2);
    cr_assert_str_eq(decoded, "the the");
    free(decoded);
    free(logits);
    llm_grammar_matcher_free(m);
    llm_grammar_unref(g);
}

/* The mask of every step of a few random outputs equals the tokens
 * checked one by one: the output so far plus the token's text fed byte by
 * byte to a matcher of the same grammar (the trie walk and its shortcuts
 * against the plain definition). */
Test(schema, masks_over_the_real_vocabulary_equal_token_by_token_checks)
{
    static const char *const schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"},\"n\":{\"type\":"
        "\"integer\"}},\"required\":[\"text\",\"n\"]}",
        "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":3},\"minItems\":6}",
        "{\"type\":\"array\",\"items\":{\"anyOf\":[{\"type\":\"number\"},{\"enum\":[\"x\\u00e9\","
        "true]}]},\"minItems\":8}",
    };
    float *logits = util_xmalloc((size_t)vocab.n * sizeof *logits);
    for (size_t i = 0; i < sizeof schemas / sizeof *schemas; i++) {
        json_t *schema = parse(schemas[i]);
        llm_grammar *g = compile_schema(schema), *ref = compile_schema(schema);
        struct util_rng rng;
        util_rng_seed(&rng, 40 + i);
        llm_grammar_matcher *m = llm_grammar_matcher_create(g, vocab.v);
        struct gh_text out = {0};
        gh_text_put(&out, "", 0);
        int step = 0;
        for (; step < 24; step++) {
            for (int t = 0; t < vocab.n; t++) logits[t] = 0.0f;
            int n = llm_grammar_matcher_mask_logits(m, logits);
            int count = 0, pick = -1;
            for (int t = 0; t < vocab.n; t++) {
                bool want;
                if (t == vocab.eos) {
                    want = llm_grammar_matcher_accepting(m);
                } else if (!vocab.texts[t]) {
                    want = false;
                } else {
                    const char *text = vocab.texts[t];
                    int len = vocab.lens[t];
                    if (step == 0 && vocab.space_first[t]) text++, len--;
                    llm_grammar_matcher *r = llm_grammar_matcher_create(ref, bytes.v);
                    want = len > 0 || vocab.space_first[t];
                    for (size_t k = 0; k < out.n && want; k++)
                        want = !llm_grammar_matcher_accept(r, (uint8_t)out.s[k]);
                    for (int k = 0; k < len && want; k++)
                        want = !llm_grammar_matcher_accept(r, (uint8_t)text[k]);
                    llm_grammar_matcher_free(r);
                }
                cr_assert_eq(logits[t] == 0.0f, want, "%s: token %d \"%s\" after \"%s\"",
                             schemas[i], t, vocab.texts[t] ? vocab.texts[t] : "", out.s);
                if (want && t != vocab.eos && util_rng_next(&rng) % (uint64_t)++count == 0) pick = t;
            }
            cr_assert_gt(n, 0);
            if (pick < 0) break;
            cr_assert_eq(llm_grammar_matcher_accept(m, pick), 0);
            const char *text = vocab.texts[pick];
            int len = vocab.lens[pick];
            if (step == 0 && vocab.space_first[pick]) text++, len--;
            gh_text_put(&out, text, (size_t)len);
        }
        cr_assert_eq(step, 24, "the output went on: %s", out.s);
        free(out.s);
        llm_grammar_matcher_free(m);
        llm_grammar_unref(g);
        llm_grammar_unref(ref);
        json_decref(schema);
    }
    free(logits);
}

/* ---------------------------------------------------- exact languages */

/* Whether the grammar takes the whole of s, byte by byte. */
static bool takes(llm_grammar *g, const char *s)
{
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, bytes.v);
    bool ok = true;
    for (const char *p = s; *p && ok; p++) ok = llm_grammar_matcher_accept(m, (uint8_t)*p) == 0;
    ok = ok && llm_grammar_matcher_accepting(m);
    llm_grammar_matcher_free(m);
    return ok;
}

static llm_grammar *compile_text(const char *schema_text)
{
    json_t *s = parse(schema_text);
    llm_grammar *g = compile_schema(s);
    json_decref(s);
    return g;
}

Test(schema, integer_bounds_take_exactly_the_integers_in_range)
{
    static const struct {
        const char *schema;
        long lo, hi;
    } cases[] = {
        {"{\"type\":\"integer\",\"minimum\":-57,\"maximum\":1003}", -57, 1003},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":-1,\"exclusiveMaximum\":100}", 0, 99},
        {"{\"type\":\"integer\",\"minimum\":1.5,\"maximum\":20.9}", 2, 20},
        {"{\"type\":\"integer\",\"minimum\":-1000,\"maximum\":-990}", -1000, -990},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":10,\"exclusiveMinimum\":true,"
         "\"exclusiveMaximum\":true}",
         6, 9},
        {"{\"type\":\"integer\",\"minimum\":100}", 100, 9999999999999999L},
        {"{\"type\":\"integer\",\"maximum\":-3}", -9999999999999999L, -3},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        llm_grammar *g = compile_text(cases[c].schema);
        for (long v = -1200; v <= 1200; v++) {
            char s[32];
            snprintf(s, sizeof s, "%ld", v);
            cr_assert_eq(takes(g, s), v >= cases[c].lo && v <= cases[c].hi, "%s on %ld",
                         cases[c].schema, v);
        }
        static const long far[] = {9999999999999999L, -9999999999999999L, 123456789012345L};
        for (size_t i = 0; i < sizeof far / sizeof *far; i++) {
            char s[32];
            snprintf(s, sizeof s, "%ld", far[i]);
            cr_assert_eq(takes(g, s), far[i] >= cases[c].lo && far[i] <= cases[c].hi, "%s on %s",
                         cases[c].schema, s);
        }
        cr_assert(!takes(g, "10000000000000000"), "17 digits never");
        cr_assert(!takes(g, "-0"), "bounded integers are never written -0");
        cr_assert(!takes(g, "007"));
        llm_grammar_unref(g);
    }
}

Test(schema, string_lengths_count_characters_not_bytes_or_escapes)
{
    llm_grammar *g = compile_text("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}");
    cr_assert(takes(g, "\"ab\""));
    cr_assert(takes(g, "\"\xce\xb1\xce\xb2\xce\xb3\"")); /* αβγ: 6 bytes, 3 characters */
    cr_assert(takes(g, "\"a\\nb\""));
    cr_assert(takes(g, "\"\\ud83d\\ude00x\"")); /* a surrogate pair is one */
    cr_assert(!takes(g, "\"a\""));
    cr_assert(!takes(g, "\"abcd\""));
    cr_assert(!takes(g, "\"\\ud83dx\""), "a lone high surrogate");
    cr_assert(!takes(g, "\"\\ude00x\""), "a lone low surrogate");
    cr_assert(!takes(g, "\"\\u0000x\""), "NUL, which strict parsers refuse");
    cr_assert(!takes(g, "\"a\tb\""), "raw control characters");
    llm_grammar_unref(g);
}

Test(schema, extra_keys_never_repeat_a_declared_one)
{
    llm_grammar *g =
        compile_text("{\"properties\":{\"a\":{\"type\":\"integer\"},\"ab\":{\"type\":\"integer\"}},"
                     "\"additionalProperties\":{\"type\":\"string\"}}");
    cr_assert(takes(g, "{\"a\":1,\"x\":\"s\"}"));
    cr_assert(takes(g, "{\"abc\":\"s\",\"b\":\"t\"}"));
    cr_assert(takes(g, "{\"\":\"s\"}"));
    cr_assert(takes(g, "{\"ab\":2, \"ax\\n\":\"s\"}"));
    cr_assert(!takes(g, "{\"a\\n\":\"s\"}"), "no escape before the key leaves the names");
    cr_assert(!takes(g, "{\"a\":1,\"a\":\"s\"}"));
    cr_assert(!takes(g, "{\"ab\":\"s\"}"));
    cr_assert(!takes(g, "{\"a\":\"s\"}"));
    cr_assert(!takes(g, "{\"\\u0061\":\"s\"}"), "an escape that spells a declared name");
    llm_grammar_unref(g);
    /* whitespace is bounded: one space, or a newline and 20 blanks at most */
    g = compile_text("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"null\"}}}");
    cr_assert(takes(g, "{ \"a\" : null }"));
    cr_assert(takes(g, "{\n                    \"a\":null}"));
    cr_assert(!takes(g, "{  \"a\":null}"));
    cr_assert(!takes(g, "{\n                     \"a\":null}"));
    cr_assert(!takes(g, " {}"), "nothing before the value");
    llm_grammar_unref(g);
}

Test(schema, gbnf_text_is_readable_and_deterministic)
{
    json_t *s = parse("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"}},"
                      "\"required\":[\"name\"]}");
    char err[256];
    char *a = llm_grammar_json_schema_to_gbnf(s, err, sizeof err),
         *b = llm_grammar_json_schema_to_gbnf(s, err, sizeof err);
    cr_assert(a && b, "%s", err);
    cr_assert_str_eq(a, b);
    cr_assert(strstr(a, "root ::= \"{\" space root-name-kv \"}\" space\n"), "%s", a);
    cr_assert(strstr(a, "root-name-kv ::= \"\\\"name\\\"\" space \":\" space string\n"), "%s", a);
    cr_assert(strstr(a, "\nspace ::= "), "%s", a);
    free(a);
    free(b);
    json_decref(s);
}

/* --------------------------------------------------------------- errors */

/* The schema is refused, with every string of wants in the message;
 * before its grammar is made (no GBNF text) unless in_grammar. */
static void schema_fails_at(const char *schema_text, const char *const *wants, bool in_grammar)
{
    json_t *s = parse(schema_text);
    llm_grammar *g = (llm_grammar *)1;
    char err[1024];
    cr_assert_eq(llm_grammar_compile_json_schema(s, &g, err, sizeof err), -EINVAL, "%s compiled",
                 schema_text);
    cr_assert_null(g);
    for (int i = 0; wants[i]; i++)
        cr_assert(strstr(err, wants[i]), "%s: \"%s\" lacks \"%s\"", schema_text, err, wants[i]);
    cr_assert(!strchr(err, '\n'));
    char *text = llm_grammar_json_schema_to_gbnf(s, err, sizeof err);
    cr_assert_eq(text != NULL, in_grammar);
    free(text);
    json_decref(s);
}

static void schema_fails(const char *schema_text, const char *const *wants)
{
    schema_fails_at(schema_text, wants, false);
}

Test(schema, unsupported_keywords_are_named_with_their_json_pointer)
{
    schema_fails("{\"type\":\"string\",\"pattern\":\"^a\"}",
                 (const char *const[]){"'pattern' at /pattern", NULL});
    schema_fails(
        "{\"properties\":{\"a\":{\"type\":\"string\",\"pattern\":\"x\"},\"b/c\":{\"not\":{}}},"
        "\"allOf\":[{}],\"patternProperties\":{}}",
        (const char *const[]){"'pattern' at /properties/a/pattern", "'not' at /properties/b~1c/not",
                              "'allOf' at /allOf", "'patternProperties' at /patternProperties",
                              NULL});
    schema_fails("{\"type\":\"number\",\"minimum\":0}",
                 (const char *const[]){"'minimum' at /minimum", NULL});
    schema_fails("{\"type\":\"string\",\"format\":\"email\"}",
                 (const char *const[]){"'format' at /format", NULL});
    schema_fails("{\"if\":{},\"then\":{},\"else\":{}}",
                 (const char *const[]){"'if' at /if", "'then' at /then", "'else' at /else", NULL});
    schema_fails("{\"$defs\":{\"x\":{\"type\":\"integer\",\"multipleOf\":2}},\"items\":{\"$ref\":"
                 "\"#/$defs/x\"}}",
                 (const char *const[]){"'multipleOf' at /$defs/x/multipleOf", NULL});
    schema_fails("{\"type\":\"object\",\"anyOf\":[{}]}",
                 (const char *const[]){"'type' at /type", "next to 'anyOf'", NULL});
}

Test(schema, malformed_or_unsatisfiable_schemas_are_refused)
{
    schema_fails("{\"$ref\":\"http://example.com/s.json\"}",
                 (const char *const[]){"not local", NULL});
    schema_fails("{\"$ref\":\"#/$defs/missing\"}", (const char *const[]){"points nowhere", NULL});
    schema_fails("{\"type\":\"strin\"}", (const char *const[]){"'type' at /type", NULL});
    schema_fails("{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}",
                 (const char *const[]){"minLength 5 > maxLength 2", NULL});
    schema_fails("{\"type\":\"string\",\"maxLength\":-1}",
                 (const char *const[]){"'maxLength' at /maxLength", NULL});
    schema_fails("{\"enum\":[]}", (const char *const[]){"allows no value", NULL});
    schema_fails("{\"type\":\"integer\",\"enum\":[\"a\"]}",
                 (const char *const[]){"allows no value", NULL});
    schema_fails("{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}",
                 (const char *const[]){"within its bounds", NULL});
    schema_fails("{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}",
                 (const char *const[]){"minItems 3", NULL});
    schema_fails("{\"properties\":{\"a\":false},\"required\":[\"a\"]}",
                 (const char *const[]){"/properties/a is false", NULL});
    schema_fails("{\"required\":[\"zz\"],\"additionalProperties\":false}",
                 (const char *const[]){"requires 'zz'", NULL});
    schema_fails("[1]", (const char *const[]){"not an object or a boolean", NULL});
    /* a reference cycle that never reads anything */
    schema_fails_at("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},"
                    "\"$ref\":\"#/$defs/a\"}",
                    (const char *const[]){"never complete", NULL}, true);
    /* deeply nested schemas stop at a depth limit instead of the C stack's */
    char deep[8192] = "";
    for (int i = 0; i < 200; i++) strcat(deep, "{\"items\":");
    strcat(deep, "{}");
    for (int i = 0; i < 200; i++) strcat(deep, "}");
    schema_fails(deep, (const char *const[]){"nested deeper than", NULL});
}

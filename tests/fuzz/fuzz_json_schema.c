/*
 * fuzz_json_schema: any bytes as a JSON Schema. Compiling must succeed or
 * fail with a message; a schema whose GBNF text was made must compile
 * unless its references loop without reading anything; never crash, hang
 * or leak. A grammar that compiles is walked at random over a small byte
 * vocabulary, leaning towards closing brackets and strings after a while;
 * a walk that reaches EOS must be JSON that jansson (a strict parser)
 * reads.
 */
#include "core/grammar.h"
#include "tests/grammar_helpers.h"
#include "util/util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_WALKS 2
#define FUZZ_STEPS 400

static const struct gh_vocab *fuzz_vocab(void)
{
    static struct gh_vocab v;
    static bool ready;
    if (!ready) v = gh_mixed_vocab(), ready = true;
    return &v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *schema = json_loadb((const char *)data, size, JSON_DECODE_ANY, &jerr);
    if (!schema) return 0;
    char err[512];
    char *text = llm_grammar_json_schema_to_gbnf(schema, err, sizeof err);
    UTIL_CHECK(text || err[0]);
    llm_grammar *g = NULL;
    int rc = llm_grammar_compile_json_schema(schema, &g, err, sizeof err);
    UTIL_CHECK((rc == 0) == (g != NULL));
    if (text && rc)
        UTIL_CHECK(strstr(err, "never complete") || strstr(err, "left recursion") ||
                   strstr(err, "too large"));
    if (!text) UTIL_CHECK(rc == -EINVAL);
    free(text);
    if (g) {
        const struct gh_vocab *v = fuzz_vocab();
        for (int w = 0; w < FUZZ_WALKS; w++) {
            llm_grammar_matcher *m = llm_grammar_matcher_create(g, v->v);
            struct util_rng rng;
            util_rng_seed(&rng, size * 31 + (uint64_t)w);
            struct gh_text out = {0};
            struct gh_walk r = gh_random_walk(m, v, &rng, FUZZ_STEPS, 32, &out);
            UTIL_CHECK(!r.inconsistent);
            if (r.empty_mask) { /* only when a step was refused for ambiguity */
                struct llm_grammar_stats st;
                llm_grammar_stats(g, &st);
                UTIL_CHECK(st.stack_overflows > 0);
            }
            if (r.ended) {
                json_t *j = json_loadb(out.s, out.n, JSON_DECODE_ANY, &jerr);
                if (!j) util_die("fuzz_json_schema: not JSON: %s (%s)", out.s, jerr.text);
                json_decref(j);
            }
            free(r.ids);
            free(out.s);
            llm_grammar_matcher_free(m);
        }
        llm_grammar_unref(g);
    }
    json_decref(schema);
    return 0;
}

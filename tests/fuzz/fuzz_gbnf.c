/*
 * fuzz_gbnf: any bytes as GBNF text. Compiling must succeed, or fail with a
 * one-line "LINE:COLUMN: message"; never crash, hang or leak. A grammar
 * that compiles is walked at random (seeded by the input) over a small
 * vocabulary of every byte plus multi-byte tokens: every mask must count
 * what it allows, allow something (unless a step was refused for ambiguity)
 * and agree with accept, a few tokens it refuses must be refused by accept,
 * and a walk that reaches EOS must spell a sentence the grammar takes byte
 * by byte. Every other input runs with a tiny cache limit, so that cache
 * rebuilds happen mid-walk.
 */
#include "core/grammar.h"
#include "tests/grammar_helpers.h"
#include "util/util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_WALKS 3
#define FUZZ_STEPS 48

static const struct gh_vocab *fuzz_vocab(bool bytes_only)
{
    static struct gh_vocab mixed, bytes;
    static bool ready;
    if (!ready) {
        mixed = gh_mixed_vocab();
        bytes = gh_byte_vocab();
        ready = true;
    }
    return bytes_only ? &bytes : &mixed;
}

static uint64_t fuzz_hash(const uint8_t *data, size_t size)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 0x100000001b3ull;
    return h;
}

/* The whole text, one byte a token, must be a sentence of g. */
static void fuzz_check_sentence(llm_grammar *g, const struct gh_text *text)
{
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, fuzz_vocab(true)->v);
    for (size_t i = 0; i < text->n; i++) UTIL_CHECK(llm_grammar_matcher_accept(m, (uint8_t)text->s[i]) == 0);
    UTIL_CHECK(llm_grammar_matcher_accepting(m));
    llm_grammar_matcher_free(m);
}

static void fuzz_walk(llm_grammar *g, uint64_t seed)
{
    const struct gh_vocab *v = fuzz_vocab(false);
    for (int w = 0; w < FUZZ_WALKS; w++) {
        llm_grammar_matcher *m = llm_grammar_matcher_create(g, v->v);
        struct util_rng rng;
        util_rng_seed(&rng, seed + (uint64_t)w);
        /* a refused token leaves the matcher as it was */
        for (int k = 0; k < 4; k++) {
            int32_t t = (int32_t)(util_rng_next(&rng) % (uint64_t)v->n);
            bool was = llm_grammar_matcher_accepting(m);
            float *logits = util_xcalloc((size_t)v->n, sizeof *logits);
            llm_grammar_matcher_mask_logits(m, logits);
            if (logits[t] != 0.0f) {
                UTIL_CHECK(llm_grammar_matcher_accept(m, t) == -EINVAL);
                UTIL_CHECK(llm_grammar_matcher_accepting(m) == was);
            }
            free(logits);
        }
        struct gh_text out = {0};
        struct gh_walk r = gh_random_walk(m, v, &rng, FUZZ_STEPS, FUZZ_STEPS / 2, &out);
        UTIL_CHECK(!r.inconsistent);
        if (r.empty_mask) {
            struct llm_grammar_stats st;
            llm_grammar_stats(g, &st);
            UTIL_CHECK(st.stack_overflows > 0);
        }
        if (r.ended) fuzz_check_sentence(g, &out);
        free(r.ids);
        free(out.s);
        llm_grammar_matcher_free(m);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    llm_grammar *g = NULL;
    char err[256];
    int rc = llm_grammar_compile_gbnf((const char *)data, size, &g, err, sizeof err);
    if (rc) {
        UTIL_CHECK(rc == -EINVAL && g == NULL);
        /* "LINE:COLUMN: message", one line */
        char *colon = strchr(err, ':');
        UTIL_CHECK(colon && colon > err && strchr(colon + 1, ':') && !strchr(err, '\n'));
        return 0;
    }
    uint64_t seed = fuzz_hash(data, size);
    if (seed & 1) llm_grammar_set_cache_limit(g, 1);
    fuzz_walk(g, seed);
    llm_grammar_unref(g);
    return 0;
}

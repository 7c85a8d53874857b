/*
 * grammar_internal.h: the compiled grammar as grammar_gbnf.c writes it and
 * grammar_matcher.c walks it. Not part of the module's interface.
 *
 * A grammar is flat: syms[] holds every alternative of every rule as a run
 * of symbols ended by LLM_GRAMMAR_END; alts[] gives each alternative's first
 * position; rules[r] is the range of r's alternatives in alts[]. A
 * position in the grammar is an index into syms[].
 */
#ifndef LLMD_GRAMMAR_INTERNAL_H
#define LLMD_GRAMMAR_INTERNAL_H

#include "core/grammar.h"

#include <stdatomic.h>
#include <stdint.h>

enum llm_grammar_sym_kind {
    LLM_GRAMMAR_END,  /* the end of an alternative */
    LLM_GRAMMAR_TERM, /* one byte out of sets[arg] */
    LLM_GRAMMAR_REF,  /* rule arg */
};

struct llm_grammar_sym {
    uint32_t kind : 2;
    uint32_t arg : 30;
};

struct llm_grammar_byteset {
    uint64_t bits[4];
};

static inline bool llm_grammar_byteset_has(const struct llm_grammar_byteset *s, uint8_t b)
{
    return (s->bits[b >> 6] >> (b & 63)) & 1;
}

struct llm_grammar_rule {
    int32_t alt_begin, alt_end; /* alts[alt_begin..alt_end) */
};

struct llm_grammar_cache; /* grammar_matcher.c */

struct llm_grammar {
    atomic_int refs;
    struct llm_grammar_sym *syms;
    int32_t n_syms;
    struct llm_grammar_byteset *sets;
    int32_t n_sets;
    int32_t *alts; /* first position of each alternative */
    int32_t n_alts;
    struct llm_grammar_rule *rules;
    int32_t n_rules;
    int32_t root;

    /* the matching side (grammar_matcher.c) */
    struct llm_grammar_cache *cache;
    size_t cache_limit;
    llm_grammar_matcher *matchers; /* live matchers, whose states survive a cache reset */
    struct llm_grammar_stats stats;
};

/* logits[i] = -INFINITY for every i < n whose bit is clear (grammar_mask.c): the
 * scalar reference, the AVX2 version, and the pick for this CPU. */
void llm_grammar_apply_mask_scalar(const uint64_t *bits, int32_t n, float *logits);
void llm_grammar_apply_mask_avx2(const uint64_t *bits, int32_t n, float *logits);
void llm_grammar_apply_mask(const uint64_t *bits, int32_t n, float *logits);

/* Takes over a grammar that grammar_gbnf.c has filled in (syms .. root) and
 * sets up its matching side, with one reference. */
llm_grammar *llm_grammar_finish(llm_grammar *g);

#endif

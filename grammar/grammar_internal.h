/*
 * grammar_internal.h: the compiled grammar as grammar.c writes it and
 * matcher.c walks it. Not part of the module's interface.
 *
 * A grammar is flat: syms[] holds every alternative of every rule as a run
 * of symbols ended by GRAM_END; alts[] gives each alternative's first
 * position; rules[r] is the range of r's alternatives in alts[]. A
 * position in the grammar is an index into syms[].
 */
#ifndef LLMD_GRAMMAR_INTERNAL_H
#define LLMD_GRAMMAR_INTERNAL_H

#include "grammar/grammar.h"

#include <stdatomic.h>
#include <stdint.h>

enum gram_sym_kind {
    GRAM_END,  /* the end of an alternative */
    GRAM_TERM, /* one byte out of sets[arg] */
    GRAM_REF,  /* rule arg */
};

struct gram_sym {
    uint32_t kind : 2;
    uint32_t arg : 30;
};

struct gram_byteset {
    uint64_t bits[4];
};

static inline bool gram_byteset_has(const struct gram_byteset *s, uint8_t b)
{
    return (s->bits[b >> 6] >> (b & 63)) & 1;
}

struct gram_rule {
    int32_t alt_begin, alt_end; /* alts[alt_begin..alt_end) */
};

struct gram_cache; /* matcher.c */

struct gram_grammar {
    atomic_int refs;
    struct gram_sym *syms;
    int32_t n_syms;
    struct gram_byteset *sets;
    int32_t n_sets;
    int32_t *alts; /* first position of each alternative */
    int32_t n_alts;
    struct gram_rule *rules;
    int32_t n_rules;
    int32_t root;

    /* the matching side (matcher.c) */
    struct gram_cache *cache;
    size_t cache_limit;
    gram_matcher *matchers; /* live matchers, whose states survive a cache reset */
    struct gram_stats stats;
};

/* Takes over a grammar that grammar.c has filled in (syms .. root) and
 * sets up its matching side, with one reference. */
gram_grammar *gram_grammar_finish(gram_grammar *g);

#endif

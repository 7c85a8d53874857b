/*
 * grammar.h: structured outputs. A grammar (GBNF text, a JSON Schema, or "any
 * JSON object") is compiled to a byte-level context-free grammar; a matcher
 * follows one sequence's output through it and masks the logits of every
 * token that would take the output out of the grammar's language, so that
 * whatever the sampler picks, the output always parses.
 *
 * How it works (grammar_gbnf.c, grammar_matcher.c, grammar_mask.c, grammar_schema.c):
 *   - every character class becomes alternatives of UTF-8 byte-range
 *     sequences, so terminals are sets of bytes and the matcher only ever
 *     accepts whole, valid UTF-8 characters;
 *   - a position in the grammar is a set of parse stacks (a pushdown
 *     automaton as in llama.cpp's llama-grammar), expanded until every top
 *     is a terminal. Stacks are interned persistent lists, a set of stacks
 *     is interned to a state id, (state, byte) -> state is memoized, and a
 *     state's token mask (a bitset over the vocabulary) is cached; a mask is
 *     computed by a walk over a byte trie of the vocabulary pruned at dead
 *     states;
 *   - the caches live in the grammar, shared by all of its matchers, and are
 *     bounded (llm_grammar_set_cache_limit): when they grow past the limit
 *     they are dropped and rebuilt from the live matchers' states alone.
 *
 * Threading: compile on any thread. After that, a grammar and all of its
 * matchers (create, mask, accept, free) are used from one thread at a time
 * (the engine thread): the caches in the grammar are not locked. Only the
 * reference count is atomic, so the last llm_grammar_unref may come from
 * another thread once no matcher of the grammar is left. A vocabulary is
 * read-only once created and may be shared by any number of threads.
 *
 * Errors are 0 or a negative errno (-EINVAL for a bad grammar or schema,
 * with a one-line message in err). Out-of-memory aborts.
 */
#ifndef LLMD_GRAMMAR_H
#define LLMD_GRAMMAR_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- grammars */

typedef struct llm_grammar llm_grammar;

/* Compiles GBNF text, llama.cpp's dialect: rules `name ::= ...` (names of
 * letters, digits, '-' and '_'; the start rule is `root`), "literals" with
 * the escapes \n \r \t \\ \" \[ \] \xNN \uNNNN \UNNNNNNNN (each a code point,
 * written as UTF-8), [classes] with ranges and ^negation, . (any character),
 * ( ) groups, | alternatives, * + ? {m} {m,} {m,n} repetition and # comments.
 * A rule ends at the end of its line unless inside ( ); a line that starts
 * with | continues the rule above it. On success *out holds one reference.
 * On error returns -EINVAL and writes "LINE:COLUMN: message" into err: a
 * syntax error, an undefined or twice-defined rule, left recursion, a rule
 * that can never complete, a repetition over LLM_GRAMMAR_MAX_REPEAT, or a grammar
 * over LLM_GRAMMAR_MAX_SYMBOLS. */
int llm_grammar_compile_gbnf(const char *text, size_t len, llm_grammar **out, char *err, size_t err_len);

/* Compiles a JSON Schema to a grammar of the JSON texts that validate
 * against it (see grammar_schema.c for the keywords and the output's shape). An
 * unsupported keyword gives -EINVAL and a message naming every unsupported
 * keyword with its JSON pointer; so does a schema that nothing satisfies. */
int llm_grammar_compile_json_schema(const json_t *schema, llm_grammar **out, char *err, size_t err_len);

/* Any JSON object (response_format {"type": "json_object"}). */
int llm_grammar_compile_json_object(llm_grammar **out);

/* The GBNF text a schema compiles to, as a NUL-terminated string the caller
 * frees; NULL with a message in err on error. For debugging and tests. */
char *llm_grammar_json_schema_to_gbnf(const json_t *schema, char *err, size_t err_len);

/* Reference counting (atomic): one compiled grammar is shared by the n
 * choices of a request. Each matcher holds a reference of its own. */
llm_grammar *llm_grammar_ref(llm_grammar *g);
void llm_grammar_unref(llm_grammar *g);

#define LLM_GRAMMAR_MAX_REPEAT          10000     /* the largest m or n in {m,n} */
#define LLM_GRAMMAR_MAX_SYMBOLS         (1 << 21) /* grammar size after expanding repetitions and classes */
#define LLM_GRAMMAR_MAX_STACKS          4096      /* parses followed at once; a step to more is refused */
#define LLM_GRAMMAR_DEFAULT_CACHE_BYTES ((size_t)64 << 20)

/* Caps the memory of the grammar's caches (interned stacks and states,
 * transitions, token masks). Past it they are rebuilt from the live
 * matchers' states before the next mask or accept. */
void llm_grammar_set_cache_limit(llm_grammar *g, size_t bytes);

/* What the caches hold; for tests and benchmarks. */
struct llm_grammar_stats {
    size_t cache_bytes;
    int64_t states, stacks;         /* interned so far */
    int64_t mask_hits, mask_misses; /* llm_grammar_matcher_mask_logits */
    int64_t transitions_computed;   /* (state, byte) pairs worked out */
    int64_t cache_resets;           /* rebuilds over the limit */
    int64_t stack_overflows;        /* steps refused for following over LLM_GRAMMAR_MAX_STACKS parses */
};
void llm_grammar_stats(const llm_grammar *g, struct llm_grammar_stats *out);

/* ------------------------------------------------------------- vocabulary */

/* The model's vocabulary as the grammar sees it: each token's output bytes. */
struct llm_grammar_token {
    const char
        *text; /* the bytes the token adds to the output; NULL = never allowed (control, unknown) */
    int len;
    bool space_first; /* text starts with a space that the output's very first token loses
                         (SentencePiece's dummy prefix) */
};
typedef struct llm_grammar_vocab llm_grammar_vocab;

/* Copies what it needs from tokens[0..n_tokens). eos may be -1 (no EOS).
 * Tokens whose text is NULL or empty are never allowed. As the first token
 * of the output, a space_first token whose text is only that space (a lone
 * "▁") is allowed and adds nothing, as SentencePiece decodes it; after it
 * spaces count. Returns NULL when n_tokens < 1 or eos is out of range. */
llm_grammar_vocab *llm_grammar_vocab_create(const struct llm_grammar_token *tokens, int n_tokens, int32_t eos);
void llm_grammar_vocab_free(llm_grammar_vocab *v);
int llm_grammar_vocab_size(const llm_grammar_vocab *v);

/* -------------------------------------------------------------- matchers */

/* One sequence's position in the grammar. */
typedef struct llm_grammar_matcher llm_grammar_matcher;

/* A matcher at the start of the output. It takes a reference to g; v must
 * outlive it. */
llm_grammar_matcher *llm_grammar_matcher_create(llm_grammar *g, const llm_grammar_vocab *v);
void llm_grammar_matcher_free(llm_grammar_matcher *m);

/* Sets logits[i] (i < llm_grammar_vocab_size) to -INFINITY for every token the
 * grammar does not allow next; EOS is allowed exactly when the text so far
 * is complete. Returns the number of tokens allowed. That is at least one
 * whenever the vocabulary can spell every byte (byte fallback pieces), and
 * 0 only when it cannot or when EOS was accepted. One exception: a step
 * that would follow more than LLM_GRAMMAR_MAX_STACKS parses at once (a grammar
 * ambiguous enough to double them at every byte) is refused, which may
 * leave nothing allowed; the engine should then end the sequence with an
 * error. */
int llm_grammar_matcher_mask_logits(llm_grammar_matcher *m, float *logits);

/* Advances by a token; -EINVAL (and no change) if the grammar does not
 * allow it (exactly the tokens the mask keeps). Accepting EOS ends the
 * matcher: nothing is allowed after it. */
int llm_grammar_matcher_accept(llm_grammar_matcher *m, int32_t token);

/* The text so far is a complete sentence (EOS is allowed). */
bool llm_grammar_matcher_accepting(const llm_grammar_matcher *m);
/* Complete and nothing may follow: only EOS is allowed. */
bool llm_grammar_matcher_finished(const llm_grammar_matcher *m);

#endif

/*
 * grammar_helpers.h: what the grammar tests, fuzz targets and benchmark
 * share (header-only): vocabularies for the matcher (one token per byte,
 * or a SentencePiece tokenizer's pieces decoded the way core/tokenizer.c
 * decodes them) and a seeded random walk of a matcher to EOS.
 */
#ifndef LLMD_TESTS_GRAMMAR_HELPERS_H
#define LLMD_TESTS_GRAMMAR_HELPERS_H

#include "core/tokenizer.h"
#include "core/grammar.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A vocabulary with the token texts kept beside the llm_grammar_vocab, for
 * building outputs and reference checks. */
struct gh_vocab {
    llm_grammar_vocab *v;
    int n;
    int32_t eos;
    char **texts; /* NULL: never allowed */
    int *lens;
    bool *space_first;
};

static inline struct gh_vocab gh_vocab_make(struct llm_grammar_token *t, int n, int32_t eos)
{
    struct gh_vocab g = {.n = n, .eos = eos};
    g.texts = util_xcalloc((size_t)n, sizeof *g.texts);
    g.lens = util_xcalloc((size_t)n, sizeof *g.lens);
    g.space_first = util_xcalloc((size_t)n, sizeof *g.space_first);
    for (int i = 0; i < n; i++) {
        if (!t[i].text) continue;
        g.texts[i] = util_xmalloc((size_t)t[i].len + 1);
        memcpy(g.texts[i], t[i].text, (size_t)t[i].len);
        g.texts[i][t[i].len] = '\0';
        g.lens[i] = t[i].len;
        g.space_first[i] = t[i].space_first;
    }
    g.v = llm_grammar_vocab_create(t, n, eos);
    return g;
}

static inline void gh_vocab_free(struct gh_vocab *g)
{
    llm_grammar_vocab_free(g->v);
    for (int i = 0; i < g->n; i++) free(g->texts[i]);
    free(g->texts);
    free(g->lens);
    free(g->space_first);
}

/* 256 one-byte tokens (token b is byte b) and EOS as token 256. */
#define GH_BYTE_EOS 256

static inline struct gh_vocab gh_byte_vocab(void)
{
    char bytes[256];
    struct llm_grammar_token t[257];
    for (int b = 0; b < 256; b++) {
        bytes[b] = (char)b;
        t[b] = (struct llm_grammar_token){bytes + b, 1, false};
    }
    t[256] = (struct llm_grammar_token){NULL, 0, false};
    return gh_vocab_make(t, 257, GH_BYTE_EOS);
}

/* Every byte as a token, then multi-byte tokens (some space_first, some
 * ending inside a UTF-8 character) and EOS last: small, but it takes the
 * mask's trie walk and the first-token rule through their paces. */
static inline struct gh_vocab gh_mixed_vocab(void)
{
    static const char *const pieces[] = {
        "ab",  " a",     " {",   "{\"",   "\":",    "\", \"", "true", "null", "12",  "0.5",
        "\\u00", "\xc3\xa9", "\xe2\x82", "\xac",  "}}",     "]}",     " ",    "  ",   "\n  ", "aaaa",
        "\"}",  "\",",    "-1",   "e+",    "()",     ")(",     "xyz"};
    enum { N_PIECES = sizeof pieces / sizeof *pieces };
    char bytes[256];
    struct llm_grammar_token t[256 + N_PIECES + 1];
    for (int b = 0; b < 256; b++) {
        bytes[b] = (char)b;
        t[b] = (struct llm_grammar_token){bytes + b, 1, false};
    }
    for (int i = 0; i < N_PIECES; i++)
        t[256 + i] = (struct llm_grammar_token){pieces[i], (int)strlen(pieces[i]), pieces[i][0] == ' '};
    t[256 + N_PIECES] = (struct llm_grammar_token){NULL, 0, false};
    return gh_vocab_make(t, 256 + N_PIECES + 1, 256 + N_PIECES);
}

/* The output text of each token under SentencePiece decoding (as
 * core/tokenizer.c decodes): U+2581 is a space, a byte piece <0xNN> is that
 * byte, control and unknown tokens add nothing (never allowed); normal
 * pieces that start with U+2581 lose it as the output's first token. */
static inline struct gh_vocab gh_tokenizer_vocab(const llm_tokenizer *tok)
{
    int n = llm_tokenizer_vocab_size(tok);
    struct llm_grammar_token *t = util_xcalloc((size_t)n, sizeof *t);
    char *buf = util_xmalloc(llm_tokenizer_max_piece_len(tok) + 1);
    char **keep = util_xcalloc((size_t)n, sizeof *keep);
    for (int32_t id = 0; id < n; id++) {
        if (llm_tokenizer_is_control(tok, id) || id == llm_tokenizer_unk(tok)) continue;
        const char *p = llm_tokenizer_piece(tok, id);
        size_t len = strlen(p), k = 0;
        unsigned byte;
        if (len == 6 && !strncmp(p, "<0x", 3) && p[5] == '>' && sscanf(p + 3, "%2x", &byte) == 1) {
            buf[k++] = (char)byte;
        } else {
            for (size_t i = 0; i < len;)
                if (!strncmp(p + i, "\xe2\x96\x81", 3))
                    buf[k++] = ' ', i += 3;
                else
                    buf[k++] = p[i++];
            t[id].space_first = len >= 3 && !strncmp(p, "\xe2\x96\x81", 3);
        }
        keep[id] = util_xmalloc(k + 1);
        memcpy(keep[id], buf, k);
        t[id].text = keep[id];
        t[id].len = (int)k;
    }
    struct gh_vocab g = gh_vocab_make(t, n, llm_tokenizer_eos(tok));
    for (int i = 0; i < n; i++) free(keep[i]);
    free(keep);
    free(buf);
    free(t);
    return g;
}

/* A growing output string. */
struct gh_text {
    char *s;
    size_t n, cap;
};

static inline void gh_text_put(struct gh_text *t, const char *s, size_t n)
{
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->s = util_xrealloc(t->s, t->cap);
    }
    memcpy(t->s + t->n, s, n);
    t->n += n;
    t->s[t->n] = '\0';
}

/* Where a JSON text stands lexically: inside a string (after a
 * backslash), and how deep in brackets. The walk leans on it after a while
 * so that random JSON ends: it then favours tokens that leave it shallower
 * and outside strings. */
struct gh_json_lex {
    bool in_string, escaped;
    int depth;
};

static inline void gh_json_lex_feed(struct gh_json_lex *l, const char *s, int len)
{
    for (int i = 0; i < len; i++) {
        char c = s[i];
        if (l->in_string) {
            if (l->escaped)
                l->escaped = false;
            else if (c == '\\')
                l->escaped = true;
            else if (c == '"')
                l->in_string = false;
        } else if (c == '"') {
            l->in_string = true;
        } else if (c == '{' || c == '[') {
            l->depth++;
        } else if (c == '}' || c == ']') {
            l->depth--;
        }
    }
}

static inline int gh_json_lex_cost(struct gh_json_lex l, const char *s, int len)
{
    gh_json_lex_feed(&l, s, len);
    return 2 * l.depth + l.in_string;
}

struct gh_walk {
    int32_t *ids;      /* the tokens accepted, EOS included (the caller frees) */
    int steps;         /* how many */
    bool ended;        /* reached EOS */
    bool empty_mask;   /* a mask allowed nothing: must never happen */
    bool inconsistent; /* accept refused a token the mask allowed */
};

/* Walks m from where it is to EOS (or max_steps): at each step masks a
 * zero logit vector, checks that something is allowed, picks EOS with
 * probability 1/2 when it is allowed, else an allowed token at random
 * (after lean_after steps, half of the time one that leaves the JSON text
 * least open, see gh_json_lex), and
 * appends the token's output to out. Free the result's ids. */
static inline struct gh_walk gh_random_walk(llm_grammar_matcher *m, const struct gh_vocab *v,
                                            struct util_rng *rng, int max_steps, int lean_after,
                                            struct gh_text *out)
{
    int n_vocab = v->n;
    int32_t eos = v->eos;
    char *const *texts = v->texts;
    const int *lens = v->lens;
    const bool *space_first = v->space_first;
    struct gh_walk w = {0};
    w.ids = util_xmalloc(((size_t)max_steps + 1) * sizeof *w.ids);
    float *logits = util_xmalloc((size_t)n_vocab * sizeof *logits);
    int32_t *allowed = util_xmalloc((size_t)n_vocab * sizeof *allowed);
    bool first = true;
    struct gh_json_lex lex = {0};
    while (w.steps < max_steps) {
        for (int i = 0; i < n_vocab; i++) logits[i] = 0.0f;
        int n = llm_grammar_matcher_mask_logits(m, logits);
        int k = 0;
        for (int i = 0; i < n_vocab; i++)
            if (logits[i] == 0.0f) allowed[k++] = i;
        if (n != k || n == 0) {
            w.empty_mask = n == 0;
            w.inconsistent = n != k;
            break;
        }
        bool eos_ok = eos >= 0 && logits[eos] == 0.0f;
        int32_t pick;
        if (eos_ok && util_rng_uniform(rng) < 0.5) {
            pick = eos;
        } else if (w.steps >= lean_after && util_rng_uniform(rng) < 0.5) {
            int best = 1 << 30, ties = 0;
            pick = allowed[0];
            for (int i = 0; i < k; i++) {
                int32_t t = allowed[i];
                int cost = t == eos ? -(1 << 20) : gh_json_lex_cost(lex, texts[t], lens[t]);
                if (cost < best)
                    best = cost, pick = t, ties = 1;
                else if (cost == best && util_rng_next(rng) % (uint64_t)++ties == 0)
                    pick = t;
            }
        } else {
            pick = allowed[util_rng_next(rng) % (uint64_t)k];
        }
        if (llm_grammar_matcher_accept(m, pick) != 0) {
            w.inconsistent = true;
            break;
        }
        w.ids[w.steps++] = pick;
        if (pick == eos) {
            w.ended = true;
            break;
        }
        const char *s = texts[pick];
        int len = lens[pick];
        if (first && space_first[pick]) s++, len--;
        gh_text_put(out, s, (size_t)len);
        gh_json_lex_feed(&lex, s, len);
        first = false;
    }
    free(logits);
    free(allowed);
    if (!out->s) gh_text_put(out, "", 0);
    return w;
}

#endif

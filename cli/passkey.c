/*
 * passkey.c: the pass-key prompt builder and answer check (passkey.h).
 *
 * The prompt is the contract of tools/PASSKEY.md, shared with training:
 * HEADER + filler part 1 + KEY_SENTENCE + filler part 2 + QUESTION, as long
 * as fits in ctx - CMD_PASSKEY_ANSWER_BUDGET tokens with BOS; the filler is
 * whole sentences of a text, from a random start; the key goes between two
 * of them at a random depth. The answer is right when the first run of
 * digits the model generates (greedy) is the key.
 */
#include "cli/passkey.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PASSKEY_HEADER                                                                             \
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize " \
    "it. I will quiz you about the pass key.\n\n"
#define PASSKEY_KEY_SENTENCE " The pass key is %d. Remember it. %d is the pass key. "
#define PASSKEY_QUESTION     "\n\nWhat is the pass key? The pass key is"

struct cmd_passkey_sentences cmd_passkey_split_sentences(char *text)
{
    size_t w = 0;
    bool space = true; /* drops leading whitespace */
    for (size_t r = 0; text[r]; r++) {
        bool ws = text[r] == ' ' || text[r] == '\n' || text[r] == '\t' || text[r] == '\r' ||
                  text[r] == '\f' || text[r] == '\v';
        if (ws && space) continue;
        text[w++] = ws ? ' ' : text[r];
        space = ws;
    }
    if (w > 0 && text[w - 1] == ' ') w--;
    text[w] = 0;
    struct cmd_passkey_sentences out = {NULL, 0};
    int cap = 0;
    char *start = text;
    for (char *p = text; *p; p++) {
        bool end = (*p == '.' || *p == '!' || *p == '?') && p[1] == ' ';
        if (!end && p[1]) continue;
        if (end) p[1] = 0;
        if (out.n == cap)
            out.s = util_xrealloc(out.s, sizeof(char *) * (size_t)(cap = cap ? 2 * cap : 1024));
        out.s[out.n++] = start;
        if (!end) break;
        start = p + 2;
        p++;
    }
    return out;
}

static int count_tokens(const llm_tokenizer *tok, const char *text)
{
    return llm_tokenize(tok, text, strlen(text), false, NULL, 0);
}

/* Appends printf-formatted text to a growing string. */
static void append(char **buf, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char **buf, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    *buf = util_xrealloc(*buf, *len + (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(*buf + *len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    *len += (size_t)n;
}

char *cmd_passkey_prompt(const llm_tokenizer *tok, const struct cmd_passkey_sentences *f, int ctx,
                         int key, struct util_rng *rng, double *depth)
{
    int budget = ctx - CMD_PASSKEY_ANSWER_BUDGET, s0 = 0, total = 0;
    char key_sentence[128];
    snprintf(key_sentence, sizeof key_sentence, PASSKEY_KEY_SENTENCE, key, key);
    bool fits = false;
    for (int draw = 0; draw < 100 && !fits; draw++) {
        s0 = (int)(util_rng_next(rng) % (uint64_t)f->n);
        char *probe = NULL;
        size_t len = 0;
        append(&probe, &len, "%s%s%s%s%s", PASSKEY_HEADER, f->s[s0], key_sentence,
               f->s[(s0 + 1) % f->n], PASSKEY_QUESTION);
        total = 1 + count_tokens(tok, probe);
        free(probe);
        fits = total <= budget;
    }
    if (!fits) return NULL;
    int n = 2;
    while (n < f->n) {
        int c = count_tokens(tok, f->s[(s0 + n) % f->n]);
        if (total + c > budget) break;
        total += c;
        n++;
    }
    int j = 1 + (int)(util_rng_next(rng) % (uint64_t)(n - 1));
    char *text = NULL;
    size_t len = 0;
    append(&text, &len, "%s", PASSKEY_HEADER);
    for (int i = 0; i < j; i++) append(&text, &len, "%s%s", i ? " " : "", f->s[(s0 + i) % f->n]);
    append(&text, &len, "%s", key_sentence);
    for (int i = j; i < n; i++)
        append(&text, &len, "%s%s", i > j ? " " : "", f->s[(s0 + i) % f->n]);
    append(&text, &len, "%s", PASSKEY_QUESTION);
    *depth = (double)j / n;
    return text;
}

bool cmd_passkey_correct(const char *text, int key)
{
    if (!text) return false;
    while (*text && (*text < '0' || *text > '9')) text++;
    char *end;
    long v = strtol(text, &end, 10);
    return end != text && v == key && end - text == 5;
}

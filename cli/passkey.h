/*
 * passkey: the pass-key retrieval test of tools/PASSKEY.md (the contract
 * shared with training): the prompt builder and the answer check. Used by
 * `llmd passkey` and by bench/quest_quality.c, so both ask the same thing.
 */
#ifndef LLMD_CLI_PASSKEY_H
#define LLMD_CLI_PASSKEY_H

#include "core/tokenizer.h"
#include "util/util.h"

#include <stdbool.h>

/* Tokens left for the answer: a prompt is at most ctx - this long. */
#define CMD_PASSKEY_ANSWER_BUDGET 8

/* Sentences of the filler text (pointers into the text, which they modify). */
struct cmd_passkey_sentences {
    char **s;
    int n;
};

/* Whitespace runs become one space; a sentence ends after '.', '!' or '?'
 * followed by a space (the space is dropped). Modifies text; the caller
 * frees .s (not the sentences). */
struct cmd_passkey_sentences cmd_passkey_split_sentences(char *text);

/* Builds one prompt of at most ctx - CMD_PASSKEY_ANSWER_BUDGET tokens (BOS
 * included) hiding `key`. Returns the text (caller frees) and the key's
 * depth in [0, 1), or NULL when no start sentence fits. */
char *cmd_passkey_prompt(const llm_tokenizer *tok, const struct cmd_passkey_sentences *filler,
                         int ctx, int key, struct util_rng *rng, double *depth);

/* True when the first run of digits in text is the 5-digit key. */
bool cmd_passkey_correct(const char *text, int key);

#endif

/*
 * tokenizer: SentencePiece BPE as stored in GGUF (`tokenizer.ggml.model` =
 * "llama"): tokens, scores, token types, byte fallback pieces <0xNN>,
 * BOS/EOS/UNK ids, add_bos, and the U+2581 leading-space marker.
 *
 * Encoding follows sentencepiece's BPE: spaces become U+2581, a U+2581 is
 * prefixed to the text (add_dummy_prefix), then the highest-scoring merge of
 * two adjacent pieces that is in the vocabulary is applied until none is;
 * characters not in the vocabulary fall back to their UTF-8 bytes.
 */
#ifndef LLMD_CORE_TOKENIZER_H
#define LLMD_CORE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/gguf.h"

typedef struct llm_tokenizer llm_tokenizer;

/* Reads the vocabulary from a GGUF file's metadata (a file with no tensors
 * will do). Returns -EINVAL/-EBADMSG with a message in err on a missing or
 * malformed vocabulary. */
int llm_tokenizer_load(const llm_gguf *gguf, llm_tokenizer **out, char *err, size_t err_len);
void llm_tokenizer_free(llm_tokenizer *tok);

int llm_tokenizer_vocab_size(const llm_tokenizer *tok);
int32_t llm_tokenizer_bos(const llm_tokenizer *tok);
int32_t llm_tokenizer_eos(const llm_tokenizer *tok);
bool llm_tokenizer_add_bos(const llm_tokenizer *tok);
/* The piece of a token as stored (with U+2581 for spaces), or NULL when id
 * is out of range. */
const char *llm_tokenizer_piece(const llm_tokenizer *tok, int32_t id);

/* Encodes `len` bytes of text (invalid UTF-8 is encoded byte by byte through
 * the byte pieces). Writes at most `cap` ids; returns the number of ids the
 * whole text needs (call again with a larger buffer when it is > cap), or a
 * negative error. BOS first when add_bos. */
int llm_tokenize(const llm_tokenizer *tok, const char *text, size_t len, bool add_bos,
                 int32_t *ids, int cap);

/* Streaming decoder: turns tokens into text a piece at a time and never
 * emits part of a UTF-8 character; bytes of a character split across tokens
 * are held until the character is complete. The first piece of the output
 * loses its leading space (the dummy prefix). Control tokens (BOS, EOS)
 * decode to nothing. */
struct llm_detok {
    uint8_t pending[8];
    int n_pending;
    bool started;
};
void llm_detok_init(struct llm_detok *d);
/* Appends the text of `id` that is complete so far to out. Returns the bytes
 * written, -EINVAL for an id out of range, or -ENOSPC when cap is too small
 * (the piece's length + 8 always suffices). */
int llm_detok_push(const llm_tokenizer *tok, struct llm_detok *d, int32_t id, char *out, size_t cap);
/* Emits what is still held back (an incomplete character as U+FFFD). */
int llm_detok_flush(struct llm_detok *d, char *out, size_t cap);

/* Decodes a whole id list into a NUL-terminated string the caller frees.
 * Returns NULL for an id out of range. */
char *llm_detokenize(const llm_tokenizer *tok, const int32_t *ids, int n);

#endif

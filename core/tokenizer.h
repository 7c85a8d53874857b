/*
 * tokenizer: SentencePiece BPE as stored in GGUF (`tokenizer.ggml.model` =
 * "llama"): tokens, scores, token types, byte fallback pieces <0xNN>,
 * BOS/EOS/UNK ids, add_bos, and the U+2581 leading-space marker.
 *
 * Encoding follows sentencepiece's BPE: spaces become U+2581, a U+2581 is
 * prefixed to the text (add_dummy_prefix), then the highest-scoring merge of
 * two adjacent pieces that is in the vocabulary is applied until none is;
 * characters not in the vocabulary fall back to their UTF-8 bytes.
 * User-defined pieces are matched whole. The ids equal sentencepiece's for
 * valid UTF-8 (tests/test_core_tokenizer.c checks them against it).
 *
 * A tokenizer is read-only once loaded: any number of threads may encode
 * and decode with it at once.
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
 * malformed vocabulary. The tokenizer copies what it needs: the GGUF may be
 * closed afterwards. Missing BOS/EOS ids read as -1; add_bos_token and
 * add_space_prefix default to true. Free with llm_tokenizer_free. */
int llm_tokenizer_load(const llm_gguf *gguf, llm_tokenizer **out, char *err, size_t err_len);
void llm_tokenizer_free(llm_tokenizer *tok);

int llm_tokenizer_vocab_size(const llm_tokenizer *tok);
int32_t llm_tokenizer_bos(const llm_tokenizer *tok);
int32_t llm_tokenizer_eos(const llm_tokenizer *tok);
int32_t llm_tokenizer_unk(const llm_tokenizer *tok);
bool llm_tokenizer_add_bos(const llm_tokenizer *tok);
/* True for control tokens (BOS, EOS, ...), which decode to nothing. */
bool llm_tokenizer_is_control(const llm_tokenizer *tok, int32_t id);
/* The longest piece in bytes, or decoded text (UNK decodes to " \u2047 "),
 * for sizing llm_detok_push's buffer. */
size_t llm_tokenizer_max_piece_len(const llm_tokenizer *tok);
/* The piece of a token as stored (with U+2581 for spaces), or NULL when id
 * is out of range. */
const char *llm_tokenizer_piece(const llm_tokenizer *tok, int32_t id);

/* The bytes token `id` adds to the output, as llm_detok_push writes them
 * (U+2581 as a space, a byte piece's single byte), in *text (not
 * NUL-terminated), and in *loses_space whether it loses its first byte (the
 * dummy prefix's space) as the output's first token. Returns the length;
 * -1 for tokens that add no text (control tokens), for UNK (its text is a
 * stand-in, not the input's) and for ids out of range. */
int llm_tokenizer_token_text(const llm_tokenizer *tok, int32_t id, const char **text,
                             bool *loses_space);

/* Encodes `len` bytes of text (invalid UTF-8 is encoded byte by byte through
 * the byte pieces). Writes at most `cap` ids; returns the number of ids the
 * whole text needs (call again with a larger buffer when it is > cap), or a
 * negative error (-E2BIG past INT_MAX / 4 bytes). BOS first when add_bos.
 * ids may be NULL when cap is 0. */
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
/* Appends the text of `id` that is complete so far to out (not
 * NUL-terminated). Returns the bytes written, -EINVAL for an id out of
 * range, or -ENOSPC when cap is too small; then the decoder is unchanged
 * and the call may be repeated with more room. A cap of
 * llm_tokenizer_max_piece_len() + 12 always suffices (held bytes may turn
 * into three U+FFFD). Bytes held back when a token other than a byte piece
 * arrives are broken: they become U+FFFD, as in sentencepiece. */
int llm_detok_push(const llm_tokenizer *tok, struct llm_detok *d, int32_t id, char *out, size_t cap);
/* Emits what is still held back (an incomplete character as U+FFFD, one per
 * byte); 12 bytes always suffice. Returns the bytes written or -ENOSPC. */
int llm_detok_flush(struct llm_detok *d, char *out, size_t cap);

/* Decodes a whole id list into a NUL-terminated string the caller frees:
 * the concatenated output of llm_detok_push and llm_detok_flush, which is
 * sentencepiece's decoding. Returns NULL for an id out of range. */
char *llm_detokenize(const llm_tokenizer *tok, const int32_t *ids, int n);

#endif

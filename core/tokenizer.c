/*
 * tokenizer.c: SentencePiece BPE from a GGUF vocabulary.
 *
 * Encoding reproduces sentencepiece (bpe_model.cc, Model::SampleEncode with
 * no dropout, then SentencePieceProcessor's byte fallback):
 *   1. normalize: U+2581 in front (add_dummy_prefix) and for every space;
 *      nothing else (a `llama` GGUF implies the identity normalizer);
 *   2. split into symbols: the longest user-defined piece at this point
 *      (frozen: never merged), else one UTF-8 character, else one byte of
 *      invalid UTF-8;
 *   3. merge: a heap holds every adjacent pair whose concatenation is a
 *      normal, user-defined or unused piece, best score first and, on equal
 *      scores, the leftmost first. Popped pairs that went stale (a side was
 *      merged away or grew) are skipped. Symbols form a linked list, so a
 *      merge is O(log n);
 *   4. emit: an unused piece is split back into the two pieces it was last
 *      proposed from (sentencepiece's rev_merge); a piece not in the
 *      vocabulary becomes its bytes' <0xNN> pieces when the vocabulary has
 *      byte pieces, else UNK (a run of unknown pieces gives one UNK).
 * Differences from sentencepiece: invalid UTF-8 is kept byte by byte (its
 * normalizer would turn each bad byte into U+FFFD).
 *
 * Decoding reproduces SentencePieceProcessor::Decode: U+2581 becomes a
 * space, the first piece loses its leading U+2581, control tokens vanish,
 * UNK reads " \u2047 ", and runs of byte pieces are decoded as UTF-8 with
 * each byte that does not belong to a well-formed character read as U+FFFD.
 */
#include "core/tokenizer.h"

#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOKENIZER_SPACE       "\xe2\x96\x81" /* U+2581, a space inside pieces */
#define TOKENIZER_SPACE_LEN   3
#define TOKENIZER_UNK_SURFACE " \xe2\x81\x87 "        /* sentencepiece's decoding of UNK */
#define TOKENIZER_REPLACEMENT "\xef\xbf\xbd"          /* U+FFFD */
#define TOKENIZER_MAX_PENDING 3                       /* bytes of an unfinished UTF-8 character */
#define TOKENIZER_MAX_TEXT    ((size_t)(INT_MAX / 4)) /* every id fits an int */

/* llama.cpp's token types, as tools/gguf.py writes them. */
enum tokenizer_type {
    TOKENIZER_UNDEFINED = 0, /* older converters; read as normal */
    TOKENIZER_NORMAL = 1,
    TOKENIZER_UNKNOWN = 2,
    TOKENIZER_CONTROL = 3,
    TOKENIZER_USER_DEFINED = 4,
    TOKENIZER_UNUSED = 5,
    TOKENIZER_BYTE = 6,
};

struct tokenizer_token {
    size_t text;    /* arena offset of the piece, NUL-terminated */
    size_t decoded; /* arena offset of its text with U+2581 as spaces */
    uint32_t len, decoded_len;
    float score;
    uint8_t type;
    uint8_t byte;         /* the value of a byte piece */
    bool space_first;     /* the piece starts with U+2581 */
    int32_t unused_index; /* among the unused pieces; -1 for the others */
};

struct llm_tokenizer {
    int32_t n_vocab;
    struct tokenizer_token *tokens;
    char *arena;
    int32_t *table; /* piece -> id, open addressing; -1 is empty */
    size_t table_mask;
    int32_t byte_ids[256]; /* -1 when the vocabulary lacks that byte piece */
    bool has_byte_pieces;
    int32_t bos, eos, unk;
    bool add_bos, add_space_prefix;
    uint32_t max_user_defined_len; /* 0 when there is none */
    bool user_defined_first_byte[256];
    int32_t n_unused;
    uint32_t max_piece_len;
};

/* ------------------------------------------------------------ piece table */

#define TOKENIZER_FNV_OFFSET 0xcbf29ce484222325ull
#define TOKENIZER_FNV_PRIME  0x100000001b3ull

static uint64_t tokenizer_hash_step(uint64_t h, uint8_t c)
{
    return (h ^ c) * TOKENIZER_FNV_PRIME;
}

static uint64_t tokenizer_hash(const char *s, size_t len)
{
    uint64_t h = TOKENIZER_FNV_OFFSET;
    for (size_t i = 0; i < len; i++) h = tokenizer_hash_step(h, (uint8_t)s[i]);
    return h;
}

/* The id of the piece s[0..len) whose FNV-1a hash is `hash`, or -1. */
static int32_t tokenizer_find_hashed(const llm_tokenizer *tok, const char *s, size_t len,
                                     uint64_t hash)
{
    for (size_t i = hash & tok->table_mask;; i = (i + 1) & tok->table_mask) {
        int32_t id = tok->table[i];
        if (id < 0) return -1;
        const struct tokenizer_token *t = &tok->tokens[id];
        if (t->len == len && memcmp(tok->arena + t->text, s, len) == 0) return id;
    }
}

static int32_t tokenizer_find(const llm_tokenizer *tok, const char *s, size_t len)
{
    return tokenizer_find_hashed(tok, s, len, tokenizer_hash(s, len));
}

/* Adds id unless its piece is already there (the first of duplicates wins). */
static void tokenizer_table_insert(llm_tokenizer *tok, int32_t id)
{
    const struct tokenizer_token *t = &tok->tokens[id];
    const char *s = tok->arena + t->text;
    size_t i = tokenizer_hash(s, t->len) & tok->table_mask;
    for (;; i = (i + 1) & tok->table_mask) {
        int32_t other = tok->table[i];
        if (other < 0) break;
        const struct tokenizer_token *o = &tok->tokens[other];
        if (o->len == t->len && memcmp(tok->arena + o->text, s, t->len) == 0) return;
    }
    tok->table[i] = id;
}

/* ------------------------------------------------------------------ UTF-8 */

/* The UTF-8 character at s, n > 0 bytes available: its length when complete
 * and well-formed (Unicode's table 3-7: no overlong forms, no surrogates,
 * nothing above U+10FFFF), -1 when the n bytes are a well-formed start of a
 * longer one, 0 when s[0] starts no well-formed character. */
static int tokenizer_utf8_char(const uint8_t *s, size_t n)
{
    uint8_t c = s[0], lo = 0x80, hi = 0xbf;
    int len;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        lo = c == 0xe0 ? 0xa0 : lo;
        hi = c == 0xed ? 0x9f : hi;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        lo = c == 0xf0 ? 0x90 : lo;
        hi = c == 0xf4 ? 0x8f : hi;
    } else {
        return 0;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        if (i == 1 ? s[1] < lo || s[1] > hi : (s[i] & 0xc0) != 0x80) return 0;
    }
    return len;
}

/* ------------------------------------------------------------------ load */

static int tokenizer_fail(char *err, size_t err_len, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int tokenizer_fail(char *err, size_t err_len, int rc, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* An optional array of n numbers of one element type: 0 and *data (NULL
 * when absent), or -EBADMSG. */
static int tokenizer_get_array(const llm_gguf *gguf, const char *key, enum llm_gguf_type type,
                               uint64_t n, const void **data, char *err, size_t err_len)
{
    enum llm_gguf_type et;
    uint64_t count;
    *data = NULL;
    int rc = llm_gguf_get_array(gguf, key, &et, &count, data);
    if (rc == -ENOENT) return 0;
    if (rc || et != type || count != n)
        return tokenizer_fail(err, err_len, -EBADMSG, "%s must be an array of %" PRIu64 " %s", key,
                              n, llm_gguf_type_name(type));
    return 0;
}

/* An optional token id: `fallback` when absent, -EBADMSG when out of range. */
static int tokenizer_get_id(const llm_gguf *gguf, const char *key, int32_t n_vocab,
                            int32_t fallback, int32_t *out, char *err, size_t err_len)
{
    uint32_t id;
    int rc = llm_gguf_get_u32(gguf, key, &id);
    if (rc == -ENOENT) {
        *out = fallback;
        return 0;
    }
    if (rc || id >= (uint32_t)n_vocab)
        return tokenizer_fail(err, err_len, -EBADMSG, "%s must be a token id below %d", key,
                              n_vocab);
    *out = (int32_t)id;
    return 0;
}

static int tokenizer_get_flag(const llm_gguf *gguf, const char *key, bool fallback, bool *out,
                              char *err, size_t err_len)
{
    int rc = llm_gguf_get_bool(gguf, key, out);
    if (rc == -ENOENT)
        *out = fallback;
    else if (rc)
        return tokenizer_fail(err, err_len, -EBADMSG, "%s must be a bool", key);
    return 0;
}

/* "<0xNN>" -> NN, or -1. */
static int tokenizer_parse_byte_piece(const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
    return hi && lo ? (int)((hi - hex) * 16 + (lo - hex)) : -1;
}

/* Copies the pieces and their decoded texts into the arena. */
static void tokenizer_fill_arena(llm_tokenizer *tok, const llm_gguf *gguf, size_t arena_len)
{
    tok->arena = util_xmalloc(arena_len);
    size_t pos = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        struct tokenizer_token *t = &tok->tokens[id];
        struct llm_gguf_string s;
        UTIL_CHECK(llm_gguf_get_array_string(gguf, "tokenizer.ggml.tokens", (uint64_t)id, &s) == 0);
        t->text = pos;
        memcpy(tok->arena + pos, s.ptr, s.len);
        tok->arena[pos + s.len] = 0;
        pos += s.len + 1;

        t->decoded = pos;
        if (t->type == TOKENIZER_UNKNOWN) {
            memcpy(tok->arena + pos, TOKENIZER_UNK_SURFACE, strlen(TOKENIZER_UNK_SURFACE));
            t->decoded_len = (uint32_t)strlen(TOKENIZER_UNK_SURFACE);
        } else if (t->type != TOKENIZER_CONTROL && t->type != TOKENIZER_BYTE) {
            uint32_t n = 0;
            for (uint64_t i = 0; i < s.len;) {
                if (s.len - i >= TOKENIZER_SPACE_LEN &&
                    memcmp(s.ptr + i, TOKENIZER_SPACE, TOKENIZER_SPACE_LEN) == 0) {
                    tok->arena[pos + n++] = ' ';
                    i += TOKENIZER_SPACE_LEN;
                } else {
                    tok->arena[pos + n++] = s.ptr[i++];
                }
            }
            t->decoded_len = n;
        }
        tok->arena[pos + t->decoded_len] = 0;
        if (t->decoded_len > tok->max_piece_len) tok->max_piece_len = t->decoded_len;
        pos += t->decoded_len + 1;
    }
    UTIL_CHECK(pos <= arena_len);
}

/* Reads the pieces, scores and types; sizes the arena. */
static int tokenizer_read_tokens(llm_tokenizer *tok, const llm_gguf *gguf, size_t *arena_len,
                                 char *err, size_t err_len)
{
    const void *scores, *types;
    uint64_t n = (uint64_t)tok->n_vocab;
    int rc = tokenizer_get_array(gguf, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, n, &scores, err,
                                 err_len);
    if (rc == 0)
        rc = tokenizer_get_array(gguf, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n, &types, err,
                                 err_len);
    if (rc) return rc;
    *arena_len = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        struct tokenizer_token *t = &tok->tokens[id];
        struct llm_gguf_string s;
        UTIL_CHECK(llm_gguf_get_array_string(gguf, "tokenizer.ggml.tokens", (uint64_t)id, &s) == 0);
        if (s.len > UINT32_MAX / 2)
            return tokenizer_fail(err, err_len, -EBADMSG, "token %d is %" PRIu64 " bytes long", id,
                                  s.len);
        t->len = (uint32_t)s.len;
        t->space_first = s.len >= TOKENIZER_SPACE_LEN &&
                         memcmp(s.ptr, TOKENIZER_SPACE, TOKENIZER_SPACE_LEN) == 0;
        t->unused_index = -1;
        if (scores) memcpy(&t->score, (const char *)scores + 4 * (size_t)id, 4);
        if (isnan(t->score))
            return tokenizer_fail(err, err_len, -EBADMSG, "token %d has a NaN score", id);
        int32_t type = TOKENIZER_NORMAL;
        if (types) memcpy(&type, (const char *)types + 4 * (size_t)id, 4);
        if (type < TOKENIZER_UNDEFINED || type > TOKENIZER_BYTE)
            return tokenizer_fail(err, err_len, -EBADMSG, "token %d has type %d (not 0..6)", id,
                                  type);
        t->type = (uint8_t)(type == TOKENIZER_UNDEFINED ? TOKENIZER_NORMAL : type);
        if (t->type == TOKENIZER_BYTE) {
            int byte = tokenizer_parse_byte_piece(s.ptr, s.len);
            if (byte < 0)
                return tokenizer_fail(err, err_len, -EBADMSG,
                                      "token %d is a byte token but not of the form <0xNN>", id);
            t->byte = (uint8_t)byte;
        }
        if (t->type == TOKENIZER_UNUSED) t->unused_index = tok->n_unused++;
        if (t->len > tok->max_piece_len) tok->max_piece_len = t->len;
        /* the piece, its decoded text (never longer, or the UNK surface), two NULs */
        *arena_len += 2 * (size_t)t->len + strlen(TOKENIZER_UNK_SURFACE) + 2;
    }
    return 0;
}

/* Byte pieces, user-defined pieces and the piece table. */
static void tokenizer_index(llm_tokenizer *tok)
{
    size_t cap = 16;
    while (cap < 2 * (size_t)tok->n_vocab) cap *= 2;
    tok->table = util_xmalloc(cap * sizeof *tok->table);
    memset(tok->table, 0xff, cap * sizeof *tok->table); /* all -1 */
    tok->table_mask = cap - 1;
    for (int b = 0; b < 256; b++) tok->byte_ids[b] = -1;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        const struct tokenizer_token *t = &tok->tokens[id];
        tokenizer_table_insert(tok, id);
        if (t->type == TOKENIZER_BYTE && tok->byte_ids[t->byte] < 0) {
            tok->byte_ids[t->byte] = id;
            tok->has_byte_pieces = true;
        }
        if (t->type == TOKENIZER_USER_DEFINED && t->len > 0) {
            if (t->len > tok->max_user_defined_len) tok->max_user_defined_len = t->len;
            tok->user_defined_first_byte[(uint8_t)tok->arena[t->text]] = true;
        }
    }
}

static int tokenizer_read_specials(llm_tokenizer *tok, const llm_gguf *gguf, char *err,
                                   size_t err_len)
{
    int32_t first_unknown = -1;
    for (int32_t id = 0; id < tok->n_vocab && first_unknown < 0; id++)
        if (tok->tokens[id].type == TOKENIZER_UNKNOWN) first_unknown = id;
    int rc = tokenizer_get_id(gguf, "tokenizer.ggml.bos_token_id", tok->n_vocab, -1, &tok->bos, err,
                              err_len);
    if (rc == 0)
        rc = tokenizer_get_id(gguf, "tokenizer.ggml.eos_token_id", tok->n_vocab, -1, &tok->eos, err,
                              err_len);
    if (rc == 0)
        rc = tokenizer_get_id(gguf, "tokenizer.ggml.unknown_token_id", tok->n_vocab, first_unknown,
                              &tok->unk, err, err_len);
    if (rc == 0)
        rc = tokenizer_get_flag(gguf, "tokenizer.ggml.add_bos_token", true, &tok->add_bos, err,
                                err_len);
    if (rc == 0)
        rc = tokenizer_get_flag(gguf, "tokenizer.ggml.add_space_prefix", true,
                                &tok->add_space_prefix, err, err_len);
    if (rc == 0 && tok->unk < 0)
        rc = tokenizer_fail(err, err_len, -EBADMSG, "the vocabulary has no unknown token");
    return rc;
}

int llm_tokenizer_load(const llm_gguf *gguf, llm_tokenizer **out, char *err, size_t err_len)
{
    if (err && err_len) err[0] = 0;
    if (!gguf || !out) return -EINVAL;
    *out = NULL;
    struct llm_gguf_string model;
    int rc = llm_gguf_get_string(gguf, "tokenizer.ggml.model", &model);
    if (rc)
        return tokenizer_fail(err, err_len, -EINVAL, "tokenizer.ggml.model is %s",
                              rc == -ENOENT ? "missing" : "not a string");
    if (model.len != 5 || memcmp(model.ptr, "llama", 5) != 0)
        return tokenizer_fail(err, err_len, -EINVAL,
                              "tokenizer.ggml.model '%.*s' is not supported (only 'llama', "
                              "SentencePiece BPE)",
                              (int)(model.len < 32 ? model.len : 32), model.ptr);
    enum llm_gguf_type et;
    uint64_t n;
    rc = llm_gguf_get_array(gguf, "tokenizer.ggml.tokens", &et, &n, NULL);
    if (rc || et != GGUF_TYPE_STRING || n == 0 || n > INT32_MAX)
        return tokenizer_fail(err, err_len, rc == -ENOENT ? -EINVAL : -EBADMSG,
                              "tokenizer.ggml.tokens must be a non-empty array of strings");

    llm_tokenizer *tok = util_xcalloc(1, sizeof *tok);
    tok->n_vocab = (int32_t)n;
    tok->tokens = util_xcalloc(n, sizeof *tok->tokens);
    size_t arena_len;
    rc = tokenizer_read_tokens(tok, gguf, &arena_len, err, err_len);
    if (rc == 0) {
        tokenizer_fill_arena(tok, gguf, arena_len);
        tokenizer_index(tok);
        rc = tokenizer_read_specials(tok, gguf, err, err_len);
    }
    if (rc) {
        llm_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return 0;
}

void llm_tokenizer_free(llm_tokenizer *tok)
{
    if (!tok) return;
    free(tok->tokens);
    free(tok->arena);
    free(tok->table);
    free(tok);
}

int llm_tokenizer_vocab_size(const llm_tokenizer *tok)
{
    return tok->n_vocab;
}
int32_t llm_tokenizer_bos(const llm_tokenizer *tok)
{
    return tok->bos;
}
int32_t llm_tokenizer_eos(const llm_tokenizer *tok)
{
    return tok->eos;
}
int32_t llm_tokenizer_unk(const llm_tokenizer *tok)
{
    return tok->unk;
}
bool llm_tokenizer_add_bos(const llm_tokenizer *tok)
{
    return tok->add_bos;
}
size_t llm_tokenizer_max_piece_len(const llm_tokenizer *tok)
{
    return tok->max_piece_len;
}

const char *llm_tokenizer_piece(const llm_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_vocab) return NULL;
    return tok->arena + tok->tokens[id].text;
}

int llm_tokenizer_token_text(const llm_tokenizer *tok, int32_t id, const char **text,
                             bool *loses_space)
{
    if (!tok || id < 0 || id >= tok->n_vocab) return -1;
    const struct tokenizer_token *t = &tok->tokens[id];
    *loses_space = false;
    if (t->type == TOKENIZER_BYTE) {
        *text = (const char *)&t->byte;
        return 1;
    }
    if (t->type == TOKENIZER_CONTROL || t->type == TOKENIZER_UNKNOWN) return -1;
    *text = tok->arena + t->decoded;
    *loses_space = tok->add_space_prefix && t->space_first; /* as tokenizer_decode_token */
    return (int)t->decoded_len;
}

bool llm_tokenizer_is_control(const llm_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->n_vocab && tok->tokens[id].type == TOKENIZER_CONTROL;
}

/* ---------------------------------------------------------------- encode */

struct tokenizer_symbol {
    uint32_t start, len; /* a slice of the normalized text; len 0 once merged away */
    int32_t prev, next;  /* -1 at the ends */
    bool frozen;         /* a user-defined piece: never merged */
};

struct tokenizer_pair {
    float score;
    int32_t left, right;
    uint32_t len; /* left's + right's length when proposed; stale if they changed */
};

/* One call's state. */
struct tokenizer_encoder {
    const llm_tokenizer *tok;
    const char *text; /* normalized */
    struct tokenizer_symbol *symbols;
    struct tokenizer_pair *heap;
    size_t n_heap, cap_heap;
    uint32_t *split; /* per unused piece: left length of its last proposal, 0 for none */
    int32_t *ids;
    int cap;
    int n_ids;
    bool prev_unknown;
};

/* sentencepiece's agenda order: the higher score first, then the leftmost. */
static bool tokenizer_pair_before(const struct tokenizer_pair *a, const struct tokenizer_pair *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void tokenizer_heap_push(struct tokenizer_encoder *enc, struct tokenizer_pair pair)
{
    if (enc->n_heap == enc->cap_heap) {
        enc->cap_heap = enc->cap_heap ? 2 * enc->cap_heap : 64;
        enc->heap = util_xrealloc(enc->heap, enc->cap_heap * sizeof *enc->heap);
    }
    size_t i = enc->n_heap++;
    while (i > 0 && tokenizer_pair_before(&pair, &enc->heap[(i - 1) / 2])) {
        enc->heap[i] = enc->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    enc->heap[i] = pair;
}

static struct tokenizer_pair tokenizer_heap_pop(struct tokenizer_encoder *enc)
{
    struct tokenizer_pair top = enc->heap[0], last = enc->heap[--enc->n_heap];
    size_t i = 0, n = enc->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && tokenizer_pair_before(&enc->heap[child + 1], &enc->heap[child]))
            child++;
        if (!tokenizer_pair_before(&enc->heap[child], &last)) break;
        enc->heap[i] = enc->heap[child];
        i = child;
    }
    if (n) enc->heap[i] = last;
    return top;
}

static bool tokenizer_mergeable(uint8_t type)
{
    return type == TOKENIZER_NORMAL || type == TOKENIZER_USER_DEFINED || type == TOKENIZER_UNUSED;
}

/* Proposes merging symbols left and right when their concatenation is a piece. */
static void tokenizer_propose(struct tokenizer_encoder *enc, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) return;
    const struct tokenizer_symbol *l = &enc->symbols[left], *r = &enc->symbols[right];
    if (l->frozen || r->frozen) return;
    uint32_t len = l->len + r->len;
    int32_t id = tokenizer_find(enc->tok, enc->text + l->start, len);
    if (id < 0) return;
    const struct tokenizer_token *t = &enc->tok->tokens[id];
    if (!tokenizer_mergeable(t->type)) return;
    tokenizer_heap_push(enc, (struct tokenizer_pair){t->score, left, right, len});
    if (t->type == TOKENIZER_UNUSED) enc->split[t->unused_index] = l->len;
}

static void tokenizer_emit_id(struct tokenizer_encoder *enc, int32_t id)
{
    if (enc->n_ids < enc->cap) enc->ids[enc->n_ids] = id;
    enc->n_ids++;
}

/* Emits the ids of a final symbol's text. */
static void tokenizer_emit_piece(struct tokenizer_encoder *enc, uint32_t start, uint32_t len)
{
    const llm_tokenizer *tok = enc->tok;
    int32_t id = tokenizer_find(tok, enc->text + start, len);
    if (id >= 0 && tok->tokens[id].type == TOKENIZER_UNUSED) {
        uint32_t left = enc->split[tok->tokens[id].unused_index];
        if (left) {
            tokenizer_emit_piece(enc, start, left);
            tokenizer_emit_piece(enc, start + left, len - left);
            return;
        }
    }
    if (id >= 0) {
        tokenizer_emit_id(enc, id);
        enc->prev_unknown = false;
        return;
    }
    if (tok->has_byte_pieces) {
        for (uint32_t i = 0; i < len; i++) {
            int32_t byte_id = tok->byte_ids[(uint8_t)enc->text[start + i]];
            tokenizer_emit_id(enc, byte_id >= 0 ? byte_id : tok->unk);
        }
    } else if (!enc->prev_unknown) {
        tokenizer_emit_id(enc, tok->unk);
    }
    enc->prev_unknown = true;
}

/* Length of the longest user-defined piece at s (n bytes left), or 0. */
static uint32_t tokenizer_match_user_defined(const llm_tokenizer *tok, const char *s, size_t n)
{
    if (!tok->max_user_defined_len || !tok->user_defined_first_byte[(uint8_t)s[0]]) return 0;
    uint64_t h = TOKENIZER_FNV_OFFSET;
    uint32_t best = 0;
    size_t max = n < tok->max_user_defined_len ? n : tok->max_user_defined_len;
    for (size_t k = 1; k <= max; k++) {
        h = tokenizer_hash_step(h, (uint8_t)s[k - 1]);
        int32_t id = tokenizer_find_hashed(tok, s, k, h);
        if (id >= 0 && tok->tokens[id].type == TOKENIZER_USER_DEFINED) best = (uint32_t)k;
    }
    return best;
}

/* U+2581 in front (when add_space_prefix) and for every space. Returns the
 * length; buf holds 3 * len + 3 bytes. */
static size_t tokenizer_normalize(const llm_tokenizer *tok, const char *text, size_t len, char *buf)
{
    size_t n = 0;
    if (tok->add_space_prefix) {
        memcpy(buf, TOKENIZER_SPACE, TOKENIZER_SPACE_LEN);
        n = TOKENIZER_SPACE_LEN;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + n, TOKENIZER_SPACE, TOKENIZER_SPACE_LEN);
            n += TOKENIZER_SPACE_LEN;
        } else {
            buf[n++] = text[i];
        }
    }
    return n;
}

/* Splits the normalized text into symbols: user-defined pieces, UTF-8
 * characters, stray bytes. Returns their count. */
static int32_t tokenizer_split(struct tokenizer_encoder *enc, size_t len)
{
    int32_t n = 0;
    for (size_t pos = 0; pos < len; n++) {
        const char *s = enc->text + pos;
        uint32_t size = tokenizer_match_user_defined(enc->tok, s, len - pos);
        bool frozen = size > 0;
        if (!frozen) {
            int c = tokenizer_utf8_char((const uint8_t *)s, len - pos);
            size = c > 0 ? (uint32_t)c : 1;
        }
        enc->symbols[n] = (struct tokenizer_symbol){(uint32_t)pos, size, n - 1, n + 1, frozen};
        pos += size;
    }
    if (n) enc->symbols[n - 1].next = -1;
    return n;
}

static void tokenizer_merge(struct tokenizer_encoder *enc, int32_t n_symbols)
{
    struct tokenizer_symbol *sym = enc->symbols;
    for (int32_t i = 1; i < n_symbols; i++) tokenizer_propose(enc, i - 1, i);
    while (enc->n_heap) {
        struct tokenizer_pair top = tokenizer_heap_pop(enc);
        struct tokenizer_symbol *l = &sym[top.left], *r = &sym[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.len) continue; /* stale */
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = top.left;
        r->len = 0;
        tokenizer_propose(enc, l->prev, top.left);
        tokenizer_propose(enc, top.left, l->next);
    }
}

int llm_tokenize(const llm_tokenizer *tok, const char *text, size_t len, bool add_bos, int32_t *ids,
                 int cap)
{
    if (!tok || (!text && len) || cap < 0 || (!ids && cap)) return -EINVAL;
    if (len > TOKENIZER_MAX_TEXT) return -E2BIG;
    struct tokenizer_encoder enc = {.tok = tok, .ids = ids, .cap = cap};
    if (add_bos && tok->bos >= 0) tokenizer_emit_id(&enc, tok->bos);
    if (len == 0) return enc.n_ids;

    char *normalized = util_xmalloc(3 * len + TOKENIZER_SPACE_LEN);
    size_t n = tokenizer_normalize(tok, text, len, normalized);
    enc.text = normalized;
    enc.symbols = util_xmalloc(n * sizeof *enc.symbols);
    enc.split = tok->n_unused ? util_xcalloc((size_t)tok->n_unused, sizeof *enc.split) : NULL;
    int32_t n_symbols = tokenizer_split(&enc, n);
    tokenizer_merge(&enc, n_symbols);
    for (int32_t i = 0; i >= 0; i = enc.symbols[i].next)
        tokenizer_emit_piece(&enc, enc.symbols[i].start, enc.symbols[i].len);

    free(normalized);
    free(enc.symbols);
    free(enc.heap);
    free(enc.split);
    return enc.n_ids;
}

/* ---------------------------------------------------------------- decode */

/* Bounded output that keeps counting past its end. */
struct tokenizer_writer {
    char *out;
    size_t cap, n;
};

static void tokenizer_write(struct tokenizer_writer *w, const void *s, size_t len)
{
    if (w->n <= w->cap && len <= w->cap - w->n) memcpy(w->out + w->n, s, len);
    w->n += len;
}

/* Emits the held bytes that form complete characters, and U+FFFD for each
 * byte that cannot be part of one. At the end of a run of byte pieces an
 * unfinished character is broken too. */
static void tokenizer_drain(struct llm_detok *d, struct tokenizer_writer *w, bool end_of_run)
{
    while (d->n_pending > 0) {
        int c = tokenizer_utf8_char(d->pending, (size_t)d->n_pending);
        if (c < 0 && !end_of_run) break;
        int used = c > 0 ? c : 1;
        if (c > 0)
            tokenizer_write(w, d->pending, (size_t)c);
        else
            tokenizer_write(w, TOKENIZER_REPLACEMENT, strlen(TOKENIZER_REPLACEMENT));
        d->n_pending -= used;
        memmove(d->pending, d->pending + used, (size_t)d->n_pending);
    }
}

void llm_detok_init(struct llm_detok *d)
{
    *d = (struct llm_detok){0};
}

/* Decodes one token on a copy of the state; the caller commits it when the
 * output fitted. */
static void tokenizer_decode_token(const llm_tokenizer *tok, struct llm_detok *d, int32_t id,
                                   struct tokenizer_writer *w)
{
    const struct tokenizer_token *t = &tok->tokens[id];
    if (t->type == TOKENIZER_BYTE) {
        UTIL_CHECK(d->n_pending < TOKENIZER_MAX_PENDING + 1);
        d->pending[d->n_pending++] = t->byte;
        d->started = true;
        tokenizer_drain(d, w, false);
        return;
    }
    tokenizer_drain(d, w, true); /* any other token ends a run of byte pieces */
    if (t->type == TOKENIZER_CONTROL) return;
    const char *s = tok->arena + t->decoded;
    size_t len = t->decoded_len;
    if (!d->started && tok->add_space_prefix && t->space_first && t->type != TOKENIZER_UNKNOWN) {
        s++, len--; /* the dummy prefix: U+2581 decoded to one space */
    }
    d->started = true;
    tokenizer_write(w, s, len);
}

int llm_detok_push(const llm_tokenizer *tok, struct llm_detok *d, int32_t id, char *out, size_t cap)
{
    if (!tok || !d || (!out && cap) || d->n_pending < 0 || d->n_pending > TOKENIZER_MAX_PENDING)
        return -EINVAL;
    if (id < 0 || id >= tok->n_vocab) return -EINVAL;
    struct llm_detok next = *d;
    struct tokenizer_writer w = {out, cap, 0};
    tokenizer_decode_token(tok, &next, id, &w);
    if (w.n > cap) return -ENOSPC;
    *d = next;
    return (int)w.n;
}

int llm_detok_flush(struct llm_detok *d, char *out, size_t cap)
{
    if (!d || (!out && cap) || d->n_pending < 0 || d->n_pending > TOKENIZER_MAX_PENDING)
        return -EINVAL;
    struct llm_detok next = *d;
    struct tokenizer_writer w = {out, cap, 0};
    tokenizer_drain(&next, &w, true);
    if (w.n > cap) return -ENOSPC;
    *d = next;
    return (int)w.n;
}

char *llm_detokenize(const llm_tokenizer *tok, const int32_t *ids, int n)
{
    if (!tok || n < 0 || (!ids && n)) return NULL;
    /* Each byte piece writes at most 3 bytes (its own, or U+FFFD) over the
     * whole decode; any other token at most its decoded text. */
    size_t size = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab) return NULL;
        const struct tokenizer_token *t = &tok->tokens[ids[i]];
        size += t->type == TOKENIZER_BYTE ? strlen(TOKENIZER_REPLACEMENT) : t->decoded_len;
    }
    char *text = util_xmalloc(size);
    struct llm_detok d;
    llm_detok_init(&d);
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        int rc = llm_detok_push(tok, &d, ids[i], text + len, size - 1 - len);
        UTIL_CHECK(rc >= 0);
        len += (size_t)rc;
    }
    int rc = llm_detok_flush(&d, text + len, size - 1 - len);
    UTIL_CHECK(rc >= 0);
    len += (size_t)rc;
    text[len] = 0;
    return text;
}

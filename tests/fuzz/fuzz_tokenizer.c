/*
 * fuzz_tokenizer: encodes arbitrary bytes and decodes arbitrary ids with the
 * test vocabulary (tests/data/vocab-test.gguf, or $LLMD_FUZZ_VOCAB), loaded
 * once. The first input byte picks the mode:
 *   even: the rest is text. Encoding must succeed, agree with itself given a
 *         short buffer, and decode back to the text when the text is valid
 *         UTF-8 without U+2581 (which decodes to a space);
 *   odd:  the rest is little-endian int16 ids (out-of-range ones included).
 * Either way the ids are decoded whole and streamed, and the two must agree,
 * with every streamed chunk whole UTF-8 characters.
 */
#include "core/gguf.h"
#include "core/tokenizer.h"
#include "tests/utf8_valid.h"
#include "util/util.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_DETOK_SLACK 12 /* llm_detok_push's bound beyond the piece's length */

static const llm_tokenizer *fuzz_tokenizer(void)
{
    static llm_gguf *gguf;
    static llm_tokenizer *tok;
    if (tok) return tok;
    const char *path = getenv("LLMD_FUZZ_VOCAB");
    char err[256];
    if (!path) path = "tests/data/vocab-test.gguf";
    if (llm_gguf_open(path, &gguf, err, sizeof err) != 0 ||
        llm_tokenizer_load(gguf, &tok, err, sizeof err) != 0)
        util_die("fuzz_tokenizer: %s (run from the repository root)", err);
    return tok;
}

/* Streams ids through llm_detok and compares with llm_detokenize. Returns
 * the whole decode (the caller frees it), or NULL when an id is out of range. */
static char *fuzz_decode(const llm_tokenizer *tok, const int32_t *ids, int n, size_t *len)
{
    char *whole = llm_detokenize(tok, ids, n);
    struct llm_detok d;
    llm_detok_init(&d);
    size_t cap = llm_tokenizer_max_piece_len(tok) + FUZZ_DETOK_SLACK;
    char *chunk = util_xmalloc(cap);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int w = llm_detok_push(tok, &d, ids[i], chunk, cap);
        if (ids[i] < 0 || ids[i] >= llm_tokenizer_vocab_size(tok)) {
            UTIL_CHECK(w == -EINVAL && whole == NULL);
            continue;
        }
        UTIL_CHECK(w >= 0 && utf8_valid(chunk, (size_t)w));
        if (whole) UTIL_CHECK(memcmp(whole + total, chunk, (size_t)w) == 0);
        total += (size_t)w;
    }
    int w = llm_detok_flush(&d, chunk, cap);
    UTIL_CHECK(w >= 0 && utf8_valid(chunk, (size_t)w));
    if (whole) {
        UTIL_CHECK(memcmp(whole + total, chunk, (size_t)w) == 0);
        total += (size_t)w;
        UTIL_CHECK(whole[total] == 0 && utf8_valid(whole, total));
    }
    free(chunk);
    *len = total;
    return whole;
}

static void fuzz_encode(const llm_tokenizer *tok, const char *text, size_t len)
{
    int n = llm_tokenize(tok, text, len, true, NULL, 0);
    UTIL_CHECK(n >= 1);
    int32_t *ids = util_xmalloc((size_t)n * sizeof *ids);
    UTIL_CHECK(llm_tokenize(tok, text, len, true, ids, n) == n);
    int32_t prefix[4];
    int n_prefix = n < 4 ? n : 4;
    UTIL_CHECK(llm_tokenize(tok, text, len, true, prefix, n_prefix) == n);
    UTIL_CHECK(memcmp(prefix, ids, (size_t)n_prefix * sizeof *ids) == 0);
    for (int i = 0; i < n; i++) UTIL_CHECK(ids[i] >= 0 && ids[i] < llm_tokenizer_vocab_size(tok));

    size_t decoded_len;
    char *decoded = fuzz_decode(tok, ids, n, &decoded_len);
    UTIL_CHECK(decoded);
    if (utf8_valid(text, len) && !memmem(text, len, "\xe2\x96\x81", 3))
        UTIL_CHECK(decoded_len == len && memcmp(decoded, text, len) == 0);
    free(decoded);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const llm_tokenizer *tok = fuzz_tokenizer();
    if (size == 0) return 0;
    if (data[0] % 2 == 0) {
        fuzz_encode(tok, (const char *)data + 1, size - 1);
        return 0;
    }
    int n = (int)((size - 1) / 2);
    int32_t *ids = util_xmalloc(((size_t)n + 1) * sizeof *ids);
    for (int i = 0; i < n; i++) {
        int16_t id;
        memcpy(&id, data + 1 + 2 * i, 2);
        ids[i] = id;
    }
    size_t len;
    free(fuzz_decode(tok, ids, n, &len));
    free(ids);
    return 0;
}

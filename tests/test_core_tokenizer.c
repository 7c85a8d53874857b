/*
 * Tests for core/tokenizer.c.
 *
 * The expected ids and texts come from sentencepiece itself:
 * tools/make_tokenizer_testdata.py trained the vocabularies in
 * tests/data/vocab-test*.gguf and wrote what sentencepiece encodes and
 * decodes into tests/data/tokenizer-cases.tsv and
 * tests/data/tokenizer-decode-cases.tsv. Hand-made vocabularies
 * (tests/gguf_builder.h) pin down the rules the trained one cannot show:
 * ties, runs of unknown characters, a vocabulary without byte pieces, and
 * malformed vocabularies.
 */
#include "core/gguf.h"
#include "core/tokenizer.h"
#include "tests/gguf_builder.h"
#include "tests/utf8_valid.h"
#include "util/util.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VOCAB_MAIN        "tests/data/vocab-test.gguf"
#define VOCAB_UNUSED      "tests/data/vocab-test-unused.gguf"
#define ENCODE_CASES      "tests/data/tokenizer-cases.tsv"
#define DECODE_CASES      "tests/data/tokenizer-decode-cases.tsv"
#define DETOK_SLACK       12 /* llm_detok_push needs max_piece_len + this */
#define LONG_TEXT_BYTES   (100 * 1024)

/* ------------------------------------------------------------- helpers */

struct vocab {
    llm_gguf *gguf;
    llm_tokenizer *tok;
};

static struct vocab vocab_open(const char *path)
{
    struct vocab v;
    char err[256];
    cr_assert_eq(llm_gguf_open(path, &v.gguf, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_tokenizer_load(v.gguf, &v.tok, err, sizeof err), 0, "%s", err);
    return v;
}

static void vocab_close(struct vocab v)
{
    llm_tokenizer_free(v.tok);
    llm_gguf_close(v.gguf);
}

static int32_t piece_id(const llm_tokenizer *tok, const char *piece)
{
    for (int32_t id = 0; id < llm_tokenizer_vocab_size(tok); id++)
        if (strcmp(llm_tokenizer_piece(tok, id), piece) == 0) return id;
    cr_assert_fail("no piece \"%s\"", piece);
    return -1;
}

/* Encodes into a malloc'ed array; *n gets the count. */
static int32_t *encode(const llm_tokenizer *tok, const char *text, size_t len, bool bos, int *n)
{
    *n = llm_tokenize(tok, text, len, bos, NULL, 0);
    cr_assert_geq(*n, 0);
    int32_t *ids = util_xmalloc(((size_t)*n + 1) * sizeof *ids);
    cr_assert_eq(llm_tokenize(tok, text, len, bos, ids, *n), *n);
    return ids;
}

/* Undoes make_tokenizer_testdata.py's escape(): \\ \t \n \r \xNN. */
static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    for (; *s; s++) {
        if (*s != '\\') {
            out[n++] = *s;
            continue;
        }
        s++;
        switch (*s) {
        case 't':
            out[n++] = '\t';
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 'x': {
            char hex[3] = {s[1], s[2], 0};
            out[n++] = (char)strtol(hex, NULL, 16);
            s += 2;
            break;
        }
        default:
            out[n++] = *s;
            break;
        }
    }
    out[n] = 0;
    return n;
}

static int parse_ids(char *s, int32_t *ids)
{
    int n = 0;
    for (char *tok = strtok(s, " "); tok; tok = strtok(NULL, " ")) ids[n++] = atoi(tok);
    return n;
}

/* One line of a case file split at tabs (in place); returns the field count. */
static int split_fields(char *line, char **fields, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = 0;
    for (char *p = line; n < max;) {
        fields[n++] = p;
        p = strchr(p, '\t');
        if (!p) break;
        *p++ = 0;
    }
    return n;
}

struct encode_case {
    char vocab[16];
    char *text;
    size_t len;
    int32_t *ids;
    int n_ids;
    bool round_trips;
};

static struct encode_case *read_encode_cases(int *count)
{
    FILE *f = fopen(ENCODE_CASES, "r");
    cr_assert_not_null(f, "cannot open %s (run from the repository root)", ENCODE_CASES);
    struct encode_case *cases = NULL;
    int n = 0, cap = 0;
    char *line = NULL;
    size_t line_cap = 0;
    while (getline(&line, &line_cap, f) > 0) {
        if (line[0] == '#') continue;
        char *fields[4];
        cr_assert_eq(split_fields(line, fields, 4), 4, "bad line in %s", ENCODE_CASES);
        if (n == cap) cases = util_xrealloc(cases, (size_t)(cap = 2 * cap + 64) * sizeof *cases);
        struct encode_case *c = &cases[n++];
        snprintf(c->vocab, sizeof c->vocab, "%s", fields[0]);
        c->text = util_xmalloc(strlen(fields[1]) + 1);
        c->len = unescape(fields[1], c->text);
        c->ids = util_xmalloc((strlen(fields[2]) / 2 + 2) * sizeof *c->ids);
        c->n_ids = parse_ids(fields[2], c->ids);
        c->round_trips = atoi(fields[3]) == 1;
    }
    free(line);
    fclose(f);
    *count = n;
    return cases;
}

static void free_encode_cases(struct encode_case *cases, int n)
{
    for (int i = 0; i < n; i++) {
        free(cases[i].text);
        free(cases[i].ids);
    }
    free(cases);
}

/* Decodes ids token by token into buffers of the documented size; checks
 * every chunk is whole UTF-8 characters; returns the concatenation. */
static char *stream_decode(const llm_tokenizer *tok, const int32_t *ids, int n, size_t *len)
{
    size_t room = llm_tokenizer_max_piece_len(tok) + DETOK_SLACK;
    char *text = util_xmalloc((size_t)n * room + DETOK_SLACK + 1);
    size_t total = 0;
    struct llm_detok d;
    llm_detok_init(&d);
    for (int i = 0; i < n; i++) {
        int w = llm_detok_push(tok, &d, ids[i], text + total, room);
        cr_assert_geq(w, 0, "token %d (%d): %d", i, ids[i], w);
        cr_assert(utf8_valid(text + total, (size_t)w), "chunk of token %d ends inside a character",
                  i);
        total += (size_t)w;
    }
    int w = llm_detok_flush(&d, text + total, DETOK_SLACK);
    cr_assert_geq(w, 0);
    cr_assert(utf8_valid(text + total, (size_t)w));
    total += (size_t)w;
    text[total] = 0;
    *len = total;
    return text;
}

/* -------------------------------------------------------------- loading */

Test(core_tokenizer, loads_the_vocabulary_sentencepiece_wrote)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    cr_assert_eq(llm_tokenizer_vocab_size(v.tok), 2000);
    cr_assert_str_eq(llm_tokenizer_piece(v.tok, llm_tokenizer_unk(v.tok)), "<unk>");
    cr_assert_str_eq(llm_tokenizer_piece(v.tok, llm_tokenizer_bos(v.tok)), "<s>");
    cr_assert_str_eq(llm_tokenizer_piece(v.tok, llm_tokenizer_eos(v.tok)), "</s>");
    cr_assert(llm_tokenizer_add_bos(v.tok));
    cr_assert(llm_tokenizer_is_control(v.tok, llm_tokenizer_bos(v.tok)));
    cr_assert_not(llm_tokenizer_is_control(v.tok, piece_id(v.tok, "\xe2\x96\x81the")));
    cr_assert_null(llm_tokenizer_piece(v.tok, 2000));
    cr_assert_null(llm_tokenizer_piece(v.tok, -1));
    cr_assert_geq(llm_tokenizer_max_piece_len(v.tok), strlen("\xe2\x96\x81the"));
    vocab_close(v);
}

/* --------------------------------------------------------------- encode */

static void assert_encodes_like_sentencepiece(const char *vocab_name, const char *path)
{
    struct vocab v = vocab_open(path);
    int n_cases, checked = 0;
    struct encode_case *cases = read_encode_cases(&n_cases);
    for (int i = 0; i < n_cases; i++) {
        struct encode_case *c = &cases[i];
        if (strcmp(c->vocab, vocab_name) != 0) continue;
        int n;
        int32_t *ids = encode(v.tok, c->text, c->len, false, &n);
        cr_assert_eq(n, c->n_ids, "case %d \"%.60s\": %d ids, sentencepiece %d", i, c->text, n,
                     c->n_ids);
        for (int k = 0; k < n; k++)
            cr_assert_eq(ids[k], c->ids[k],
                         "case %d \"%.60s\": id %d is %d (%s), sentencepiece %d (%s)", i, c->text,
                         k, ids[k], llm_tokenizer_piece(v.tok, ids[k]), c->ids[k],
                         llm_tokenizer_piece(v.tok, c->ids[k]));
        free(ids);
        checked++;
    }
    cr_assert_gt(checked, 150, "only %d %s cases", checked, vocab_name);
    free_encode_cases(cases, n_cases);
    vocab_close(v);
}

Test(core_tokenizer, encodes_every_case_to_the_ids_sentencepiece_gives)
{
    assert_encodes_like_sentencepiece("main", VOCAB_MAIN);
}

Test(core_tokenizer, resegments_unused_pieces_as_sentencepiece_does)
{
    assert_encodes_like_sentencepiece("unused", VOCAB_UNUSED);
}

Test(core_tokenizer, bos_comes_first_when_asked_for)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    int n, n_bos;
    int32_t *ids = encode(v.tok, "Hello world", 11, false, &n);
    int32_t *with_bos = encode(v.tok, "Hello world", 11, true, &n_bos);
    cr_assert_eq(n_bos, n + 1);
    cr_assert_eq(with_bos[0], llm_tokenizer_bos(v.tok));
    cr_assert_arr_eq(with_bos + 1, ids, (size_t)n * sizeof *ids);
    free(ids);
    free(with_bos);
    int32_t only;
    cr_assert_eq(llm_tokenize(v.tok, "", 0, true, &only, 1), 1);
    cr_assert_eq(only, llm_tokenizer_bos(v.tok));
    cr_assert_eq(llm_tokenize(v.tok, "", 0, false, NULL, 0), 0);
    vocab_close(v);
}

Test(core_tokenizer, a_short_buffer_gets_a_prefix_and_the_full_count)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    const char *text = "The quick brown fox jumps over the lazy dog.";
    int n;
    int32_t *ids = encode(v.tok, text, strlen(text), true, &n);
    int32_t few[3] = {-7, -7, -7};
    cr_assert_eq(llm_tokenize(v.tok, text, strlen(text), true, few, 2), n);
    cr_assert_eq(few[0], ids[0]);
    cr_assert_eq(few[1], ids[1]);
    cr_assert_eq(few[2], -7, "wrote past cap");
    cr_assert_eq(llm_tokenize(v.tok, text, 3, true, NULL, 1), -EINVAL);
    cr_assert_eq(llm_tokenize(v.tok, NULL, 3, true, few, 3), -EINVAL);
    free(ids);
    vocab_close(v);
}

Test(core_tokenizer, invalid_utf8_becomes_byte_pieces_one_byte_each)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    /* 0xff never starts a character; e6 97 is an unfinished 3-byte one;
     * ed a0 80 would be a surrogate; c0 af an overlong '/'. */
    const char text[] = "\xff\xe6\x97\xed\xa0\x80\xc0\xaf";
    const char *bytes[] = {"<0xFF>", "<0xE6>", "<0x97>", "<0xED>",
                           "<0xA0>", "<0x80>", "<0xC0>", "<0xAF>"};
    int n;
    int32_t *ids = encode(v.tok, text, sizeof text - 1, false, &n);
    cr_assert_eq(n, 9);
    cr_assert_eq(ids[0], piece_id(v.tok, "\xe2\x96\x81")); /* the dummy prefix */
    for (int i = 0; i < 8; i++) cr_assert_eq(ids[i + 1], piece_id(v.tok, bytes[i]), "byte %d", i);

    /* Each of those bytes decodes to U+FFFD: no well-formed character. */
    char *decoded = llm_detokenize(v.tok, ids, n);
    char expect[64] = "";
    for (int i = 0; i < 8; i++) strcat(expect, "\xef\xbf\xbd");
    cr_assert_str_eq(decoded, expect);
    free(decoded);
    free(ids);
    vocab_close(v);
}

Test(core_tokenizer, a_100_kb_text_of_each_kind_encodes_and_valid_text_decodes_back)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    int n_cases;
    struct encode_case *cases = read_encode_cases(&n_cases);
    char *text = util_xmalloc(LONG_TEXT_BYTES);
    struct util_rng rng;
    util_rng_seed(&rng, 99);
    /* prose, one repeated letter (long runs of equal-score pairs), spaces,
     * and random bytes */
    for (int kind = 0; kind < 4; kind++) {
        size_t len = 0;
        for (int i = 0; len < LONG_TEXT_BYTES; i++) {
            if (kind == 0) {
                const struct encode_case *c = &cases[i % n_cases];
                size_t k = c->len < LONG_TEXT_BYTES - len ? c->len : LONG_TEXT_BYTES - len;
                memcpy(text + len, c->text, k);
                len += k;
            } else {
                text[len++] = kind == 1 ? 'a' : kind == 2 ? ' ' : (char)util_rng_next(&rng);
            }
        }
        /* speed is measured by bench/tokenizer.c, not asserted here */
        int n = llm_tokenize(v.tok, text, LONG_TEXT_BYTES, false, NULL, 0);
        cr_assert_gt(n, 1000);
        /* prose is cut mid-character at the end and random bytes are not
         * valid UTF-8: only the runs must decode back exactly */
        if (kind == 0 || kind == 3) continue;
        int32_t *ids = util_xmalloc(sizeof(int32_t) * (size_t)n);
        cr_assert_eq(llm_tokenize(v.tok, text, LONG_TEXT_BYTES, false, ids, n), n);
        char *back = llm_detokenize(v.tok, ids, n);
        cr_assert_not_null(back);
        cr_assert_eq(strlen(back), (size_t)LONG_TEXT_BYTES, "kind %d", kind);
        cr_assert(memcmp(back, text, LONG_TEXT_BYTES) == 0, "kind %d does not decode back", kind);
        free(back);
        free(ids);
    }
    free(text);
    free_encode_cases(cases, n_cases);
    vocab_close(v);
}

/* --------------------------------------------------------------- decode */

Test(core_tokenizer, decode_of_encode_gives_the_text_back_where_sentencepiece_does)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    int n_cases, checked = 0;
    struct encode_case *cases = read_encode_cases(&n_cases);
    for (int i = 0; i < n_cases; i++) {
        struct encode_case *c = &cases[i];
        if (strcmp(c->vocab, "main") != 0 || !c->round_trips) continue;
        int n;
        int32_t *ids = encode(v.tok, c->text, c->len, true, &n);
        char *text = llm_detokenize(v.tok, ids, n);
        cr_assert_not_null(text);
        /* memcmp, not strcmp: one case holds a NUL */
        cr_assert(memcmp(text, c->text, c->len) == 0 && text[c->len] == 0,
                  "case %d: \"%s\" vs \"%s\"", i, text, c->text);
        free(text);
        free(ids);
        checked++;
    }
    cr_assert_gt(checked, 150);
    free_encode_cases(cases, n_cases);
    vocab_close(v);
}

Test(core_tokenizer, decodes_random_id_sequences_to_the_text_sentencepiece_gives)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    FILE *f = fopen(DECODE_CASES, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t line_cap = 0;
    int checked = 0;
    while (getline(&line, &line_cap, f) > 0) {
        if (line[0] == '#') continue;
        char *fields[2];
        cr_assert_eq(split_fields(line, fields, 2), 2);
        char *expect = util_xmalloc(strlen(fields[1]) + 1);
        size_t expect_len = unescape(fields[1], expect);
        int32_t ids[64];
        int n = parse_ids(fields[0], ids);
        char *text = llm_detokenize(v.tok, ids, n);
        cr_assert_eq(strlen(text), expect_len, "line %d: \"%s\" vs \"%s\"", checked, text, expect);
        cr_assert(memcmp(text, expect, expect_len) == 0, "line %d: \"%s\" vs \"%s\"", checked, text,
                  expect);
        size_t streamed_len;
        char *streamed = stream_decode(v.tok, ids, n, &streamed_len);
        cr_assert_str_eq(streamed, text);
        free(streamed);
        free(text);
        free(expect);
        checked++;
    }
    cr_assert_eq(checked, 300);
    free(line);
    fclose(f);
    vocab_close(v);
}

Test(core_tokenizer, streaming_decode_equals_whole_decode_and_never_splits_a_character)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    int n_cases;
    struct encode_case *cases = read_encode_cases(&n_cases);
    for (int i = 0; i < n_cases; i++) {
        if (strcmp(cases[i].vocab, "main") != 0) continue;
        size_t len;
        char *streamed = stream_decode(v.tok, cases[i].ids, cases[i].n_ids, &len);
        char *whole = llm_detokenize(v.tok, cases[i].ids, cases[i].n_ids);
        cr_assert_str_eq(streamed, whole, "case %d", i);
        free(streamed);
        free(whole);
    }
    /* Random ids, most of them byte pieces. */
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    int32_t first_byte = piece_id(v.tok, "<0x00>");
    for (int round = 0; round < 2000; round++) {
        int32_t ids[24];
        int n = 1 + (int)(util_rng_next(&rng) % 24);
        for (int k = 0; k < n; k++)
            ids[k] = util_rng_next(&rng) % 4 ? first_byte + (int32_t)(util_rng_next(&rng) % 256)
                                             : (int32_t)(util_rng_next(&rng) % 2000);
        size_t len;
        char *streamed = stream_decode(v.tok, ids, n, &len);
        char *whole = llm_detokenize(v.tok, ids, n);
        cr_assert_str_eq(streamed, whole, "round %d", round);
        cr_assert(utf8_valid(whole, strlen(whole)));
        free(streamed);
        free(whole);
    }
    free_encode_cases(cases, n_cases);
    vocab_close(v);
}

Test(core_tokenizer, a_character_split_across_byte_pieces_is_held_until_complete)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    struct llm_detok d;
    char out[64];
    llm_detok_init(&d);
    /* U+65E5 (e6 97 a5) arrives a byte at a time */
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0xE6>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0x97>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0xA5>"), out, sizeof out), 3);
    cr_assert(memcmp(out, "\xe6\x97\xa5", 3) == 0);

    /* an unfinished character becomes U+FFFD per byte at the flush... */
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0xE6>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0x97>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_flush(&d, out, sizeof out), 6);
    cr_assert(memcmp(out, "\xef\xbf\xbd\xef\xbf\xbd", 6) == 0);
    cr_assert_eq(llm_detok_flush(&d, out, sizeof out), 0);

    /* ...and as soon as a byte shows it cannot be completed */
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0xE6>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0x41>"), out, sizeof out), 4);
    cr_assert(memcmp(out,
                     "\xef\xbf\xbd"
                     "A",
                     4) == 0);
    vocab_close(v);
}

Test(core_tokenizer, detok_with_too_little_room_says_enospc_and_keeps_its_state)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    struct llm_detok d;
    char out[64];
    llm_detok_init(&d);
    int32_t the = piece_id(v.tok, "\xe2\x96\x81the");
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0xF0>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0x9F>"), out, sizeof out), 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, piece_id(v.tok, "<0x98>"), out, sizeof out), 0);
    /* three held bytes break: 9 bytes of U+FFFD, then " the" (not the first piece) */
    cr_assert_eq(llm_detok_push(v.tok, &d, the, out, 12), -ENOSPC);
    cr_assert_eq(d.n_pending, 3);
    cr_assert_eq(llm_detok_push(v.tok, &d, the, out, 13), 13);
    cr_assert(memcmp(out, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd the", 13) == 0);
    cr_assert_eq(llm_detok_push(v.tok, &d, 2000, out, sizeof out), -EINVAL);
    cr_assert_eq(llm_detok_push(v.tok, &d, -1, out, sizeof out), -EINVAL);
    vocab_close(v);
}

Test(core_tokenizer, decode_drops_control_tokens_and_only_the_first_leading_space)
{
    struct vocab v = vocab_open(VOCAB_MAIN);
    int32_t ids[] = {llm_tokenizer_bos(v.tok), piece_id(v.tok, "\xe2\x96\x81\xe2\x96\x81"),
                     piece_id(v.tok, "\xe2\x96\x81the"), llm_tokenizer_eos(v.tok),
                     llm_tokenizer_unk(v.tok)};
    char *text = llm_detokenize(v.tok, ids, 5);
    cr_assert_str_eq(text, "  the \xe2\x81\x87 "); /* "▁▁" loses one space; UNK is " ⁇ " */
    free(text);
    cr_assert_null(llm_detokenize(v.tok, (int32_t[]){5, 2000}, 2));
    vocab_close(v);
}

/* ---------------------------------------------------- hand-made vocabularies */

struct hand_token {
    const char *piece;
    float score;
    int32_t type;
};

/* A vocabulary-only GGUF with these tokens (UNK is token 0). */
static struct gguf_builder hand_vocab(const struct hand_token *tokens, int n, bool space_prefix)
{
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, 0, 6);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_array(&b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, (uint64_t)n);
    for (int i = 0; i < n; i++) gb_str(&b, tokens[i].piece);
    gb_kv_array(&b, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, (uint64_t)n);
    for (int i = 0; i < n; i++) gb_put(&b, &tokens[i].score, 4);
    gb_kv_array(&b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, (uint64_t)n);
    for (int i = 0; i < n; i++) gb_put(&b, &tokens[i].type, 4);
    gb_kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    gb_kv_bool(&b, "tokenizer.ggml.add_space_prefix", space_prefix);
    return b;
}

static void assert_pieces(const llm_tokenizer *tok, const char *text, const char *expect)
{
    int n;
    int32_t *ids = encode(tok, text, strlen(text), false, &n);
    char got[256] = "";
    for (int i = 0; i < n; i++) {
        if (i) strcat(got, " ");
        strcat(got, llm_tokenizer_piece(tok, ids[i]));
    }
    cr_assert_str_eq(got, expect, "\"%s\"", text);
    free(ids);
}

#define SP "\xe2\x96\x81" /* U+2581 */

Test(core_tokenizer, equal_scores_merge_leftmost_first_and_unknown_runs_give_one_unk)
{
    static const struct hand_token tokens[] = {
        {"<unk>", 0, 2},   {SP, -1, 1},         {"a", -2, 1},
        {"b", -3, 1},      {"aa", -0.5f, 1},    {SP "b", -0.25f, 1},
        {"ab", -0.25f, 1}, {SP "a", -0.25f, 1}, {"<x>", 0, 4},
    };
    struct gguf_builder b = hand_vocab(tokens, 9, true);
    llm_gguf *g;
    llm_tokenizer *tok;
    char err[256];
    cr_assert_eq(llm_gguf_open_memory(b.buf, b.len, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_tokenizer_load(g, &tok, err, sizeof err), 0, "%s", err);
    assert_pieces(tok, "baaa", SP "b aa a"); /* (a,a) at 2 and at 3 tie: the left one merges */
    assert_pieces(tok, "ab", SP "a b");      /* ▁a and ab tie: the left one merges */
    assert_pieces(tok, "x\xc3\xa9y a", SP " <unk> " SP "a"); /* no byte pieces: one UNK a run */
    assert_pieces(tok, "a<x>b", SP "a <x> b");               /* user-defined: whole, never merged */
    llm_tokenizer_free(tok);
    llm_gguf_close(g);
    gb_free(&b);
}

Test(core_tokenizer, without_space_prefix_the_text_is_not_prefixed)
{
    static const struct hand_token tokens[] = {{"<unk>", 0, 2}, {SP, -1, 1}, {"a", -2, 1}};
    struct gguf_builder b = hand_vocab(tokens, 3, false);
    llm_gguf *g;
    llm_tokenizer *tok;
    char err[256];
    cr_assert_eq(llm_gguf_open_memory(b.buf, b.len, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_tokenizer_load(g, &tok, err, sizeof err), 0, "%s", err);
    assert_pieces(tok, "a a", "a " SP " a");
    int32_t ids[] = {1, 2};
    char *text = llm_detokenize(tok, ids, 2);
    cr_assert_str_eq(text, " a"); /* no dummy prefix to drop */
    free(text);
    llm_tokenizer_free(tok);
    llm_gguf_close(g);
    gb_free(&b);
}

static void assert_load_fails(struct gguf_builder *b, int rc_expect, const char *message)
{
    llm_gguf *g;
    llm_tokenizer *tok = (llm_tokenizer *)1;
    char err[256];
    cr_assert_eq(llm_gguf_open_memory(b->buf, b->len, &g, err, sizeof err), 0, "%s", err);
    cr_assert_eq(llm_tokenizer_load(g, &tok, err, sizeof err), rc_expect, "%s", err);
    cr_assert_null(tok);
    cr_assert(strstr(err, message), "\"%s\" lacks \"%s\"", err, message);
    llm_gguf_close(g);
    gb_free(b);
}

Test(core_tokenizer, malformed_vocabularies_are_refused_with_a_message)
{
    static const struct hand_token bad_type[] = {{"<unk>", 0, 2}, {"a", 0, 9}};
    struct gguf_builder b = hand_vocab(bad_type, 2, true);
    assert_load_fails(&b, -EBADMSG, "token 1 has type 9");

    static const struct hand_token bad_byte[] = {{"<unk>", 0, 2}, {"<0xZZ>", 0, 6}};
    b = hand_vocab(bad_byte, 2, true);
    assert_load_fails(&b, -EBADMSG, "token 1 is a byte token but not of the form <0xNN>");

    /* no unknown_token_id key and no token of the unknown type */
    gb_header(&b, GB_VERSION, 0, 2);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_array(&b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 2);
    gb_str(&b, "a");
    gb_str(&b, "b");
    assert_load_fails(&b, -EBADMSG, "no unknown token");

    gb_header(&b, GB_VERSION, 0, 3);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_array(&b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 1);
    gb_str(&b, "<unk>");
    gb_kv_array(&b, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, 2);
    gb_u32(&b, 0);
    gb_u32(&b, 0);
    assert_load_fails(&b, -EBADMSG, "tokenizer.ggml.scores must be an array of 1 float32");

    gb_header(&b, GB_VERSION, 0, 2);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_u32(&b, "tokenizer.ggml.tokens", 7);
    assert_load_fails(&b, -EBADMSG, "tokenizer.ggml.tokens must be a non-empty array of strings");

    gb_header(&b, GB_VERSION, 0, 3);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_array(&b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, 1);
    gb_str(&b, "<unk>");
    gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    assert_load_fails(&b, -EBADMSG, "tokenizer.ggml.bos_token_id must be a token id below 1");

    gb_header(&b, GB_VERSION, 0, 1);
    gb_kv_string(&b, "tokenizer.ggml.model", "gpt2");
    assert_load_fails(&b, -EINVAL, "tokenizer.ggml.model 'gpt2' is not supported");

    gb_header(&b, GB_VERSION, 0, 0);
    assert_load_fails(&b, -EINVAL, "tokenizer.ggml.model is missing");
}

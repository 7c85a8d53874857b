/*
 * bench/peer_model.c: writes the F16 GGUF models that `make bench-peer`
 * (bench/peer.sh) gives to both llama.cpp and llmd: a LLaMA shape with
 * random weights (seeded, normal with standard deviation 0.02, in f16;
 * norms 1.0, in f32 as llama.cpp's converter writes them; untied output head), context 32768, rope base 10000, RMS eps 1e-5, and a
 * real vocabulary so that llama.cpp's tokenizer accepts the file: the
 * SentencePiece vocabulary of models/llmd-20m.gguf (every tokenizer.* key,
 * byte-fallback pieces included), padded to the shape's vocabulary with
 * unique normal pieces ("▁x12345") scored below every real piece.
 *
 *   build/bench/peer_model --shape 58m|1.1b --out FILE [--vocab models/llmd-20m.gguf]
 *                          [--seed N]
 *
 * Shapes: 58m (width 512, 8 layers, 8/8 heads, FFN 1408, vocab 32000) and
 * 1.1b (width 2048, 22 layers, 32/4 heads, FFN 5632, vocab 32000: TinyLlama's).
 * The whole file is built in memory first (2.2 GB for 1.1b), then written
 * through a temporary name. Without --shape it prints this usage and exits
 * 0: `make bench` runs every bench program without arguments, and this one
 * only makes files.
 */
#include "core/llm.h"
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct peer_shape {
    const char *name;
    int dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab;
};

static const struct peer_shape shapes[] = {
    {"58m", 512, 8, 8, 8, 1408, 32000},
    {"1.1b", 2048, 22, 32, 4, 5632, 32000},
};

#define CONTEXT_LENGTH 32768
#define ROPE_BASE      10000.0f
#define RMS_EPS        1e-5f
#define WEIGHT_STD     0.02

/* ------------------------------------------------------------ vocabulary */

/* A growing byte buffer for serialized GGUF arrays. */
struct bytes {
    uint8_t *data;
    size_t len, cap;
};

static void bytes_put(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = util_xrealloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* An array's header as GGUF serializes it after the value type. */
static void bytes_put_array_header(struct bytes *b, enum llm_gguf_type elem, uint64_t count)
{
    uint32_t t = elem;
    bytes_put(b, &t, 4);
    bytes_put(b, &count, 8);
}

static void bytes_put_string(struct bytes *b, const char *s, uint64_t len)
{
    bytes_put(b, &len, 8);
    bytes_put(b, s, len);
}

static bool key_is(struct llm_gguf_string k, const char *s)
{
    return k.len == strlen(s) && memcmp(k.ptr, s, k.len) == 0;
}

/* Adds the tokenizer of `vocab_path` to w, padded to n_vocab pieces (the
 * writer copies metadata at once). Returns 0, or -1 with a message printed. */
static int add_vocabulary(llm_gguf_writer *w, const char *vocab_path, int n_vocab)
{
    llm_gguf *g;
    char err[512];
    if (llm_gguf_open(vocab_path, &g, err, sizeof err)) {
        fprintf(stderr, "peer_model: %s: %s\n", vocab_path, err);
        return -1;
    }
    enum llm_gguf_type st, tt;
    uint64_t n, n_scores, n_types;
    const void *scores, *types;
    if (llm_gguf_get_array(g, "tokenizer.ggml.tokens", NULL, &n, NULL) ||
        llm_gguf_get_array(g, "tokenizer.ggml.scores", &st, &n_scores, &scores) ||
        llm_gguf_get_array(g, "tokenizer.ggml.token_type", &tt, &n_types, &types) ||
        st != GGUF_TYPE_FLOAT32 || tt != GGUF_TYPE_INT32 || n_scores != n || n_types != n ||
        n == 0 || n > (uint64_t)n_vocab) {
        fprintf(stderr, "peer_model: %s has no SentencePiece vocabulary of 1..%d pieces\n",
                vocab_path, n_vocab);
        llm_gguf_close(g);
        return -1;
    }
    float lowest = 0;
    for (uint64_t i = 0; i < n; i++) {
        float s;
        memcpy(&s, (const uint8_t *)scores + 4 * i, 4);
        if (i == 0 || s < lowest) lowest = s;
    }
    struct bytes tokens = {0}, score_out = {0}, type_out = {0};
    bytes_put_array_header(&tokens, GGUF_TYPE_STRING, (uint64_t)n_vocab);
    bytes_put_array_header(&score_out, GGUF_TYPE_FLOAT32, (uint64_t)n_vocab);
    bytes_put_array_header(&type_out, GGUF_TYPE_INT32, (uint64_t)n_vocab);
    for (uint64_t i = 0; i < (uint64_t)n_vocab; i++) {
        if (i < n) {
            struct llm_gguf_string piece;
            UTIL_CHECK(llm_gguf_get_array_string(g, "tokenizer.ggml.tokens", i, &piece) == 0);
            bytes_put_string(&tokens, piece.ptr, piece.len);
            bytes_put(&score_out, (const uint8_t *)scores + 4 * i, 4);
            bytes_put(&type_out, (const uint8_t *)types + 4 * i, 4);
        } else {
            /* A word that no text of the benchmark spells; below every real
             * piece all the same, so a tokenizer prefers the real ones. */
            char piece[32];
            int len = snprintf(piece, sizeof piece, "\xe2\x96\x81x%llu", (unsigned long long)i);
            float score = lowest - 1.0f;
            int32_t normal = 1;
            bytes_put_string(&tokens, piece, (uint64_t)len);
            bytes_put(&score_out, &score, 4);
            bytes_put(&type_out, &normal, 4);
        }
    }
    llm_gguf_writer_kv_string(w, "tokenizer.ggml.model", "llama");
    llm_gguf_writer_kv_raw(w, "tokenizer.ggml.tokens", 21, GGUF_TYPE_ARRAY, tokens.data,
                           tokens.len);
    llm_gguf_writer_kv_raw(w, "tokenizer.ggml.scores", 21, GGUF_TYPE_ARRAY, score_out.data,
                           score_out.len);
    llm_gguf_writer_kv_raw(w, "tokenizer.ggml.token_type", 25, GGUF_TYPE_ARRAY, type_out.data,
                           type_out.len);
    free(tokens.data);
    free(score_out.data);
    free(type_out.data);
    /* The rest of the tokenizer as it is: special ids, add_bos, ... */
    uint64_t n_kv = llm_gguf_kv_count(g);
    for (uint64_t i = 0; i < n_kv; i++) {
        struct llm_gguf_string key;
        enum llm_gguf_type type;
        const void *value;
        uint64_t value_len;
        UTIL_CHECK(llm_gguf_kv_raw(g, i, &key, &type, &value, &value_len) == 0);
        if (key.len > 10 && memcmp(key.ptr, "tokenizer.", 10) == 0 &&
            !key_is(key, "tokenizer.ggml.model") && !key_is(key, "tokenizer.ggml.tokens") &&
            !key_is(key, "tokenizer.ggml.scores") && !key_is(key, "tokenizer.ggml.token_type"))
            llm_gguf_writer_kv_raw(w, key.ptr, key.len, type, value, value_len);
    }
    llm_gguf_close(g);
    return 0;
}

/* --------------------------------------------------------------- weights */

/* The tensors being written: their data stays alive until the save. */
struct tensors {
    void **data;
    int n, cap;
};

/* Adds a rows x cols matrix of f16, normal with standard deviation `std`;
 * rows 0 is a norm's vector of cols ones, in f32 as llama.cpp's converter
 * writes 1-D tensors (its CPU backend multiplies f32 by f32 norms only). */
static void add_tensor(llm_gguf_writer *w, struct tensors *t, const char *name, int rows, int cols,
                       double std, struct util_rng *rng)
{
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    size_t n = (size_t)cols * (size_t)(rows ? rows : 1);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->data = util_xrealloc(t->data, sizeof *t->data * (size_t)t->cap);
    }
    if (rows) {
        uint16_t *v = util_xmalloc(n * sizeof *v);
        for (size_t i = 0; i < n; i++) v[i] = util_f32_to_f16((float)(std * util_rng_normal(rng)));
        llm_gguf_writer_tensor(w, name, strlen(name), 2, dims, GGML_TYPE_F16, v, 2 * n);
        t->data[t->n++] = v;
    } else {
        float *v = util_xmalloc(n * sizeof *v);
        for (size_t i = 0; i < n; i++) v[i] = 1.0f;
        llm_gguf_writer_tensor(w, name, strlen(name), 1, dims, GGML_TYPE_F32, v, 4 * n);
        t->data[t->n++] = v;
    }
}

static int write_model(const struct peer_shape *s, const char *vocab_path, uint64_t seed,
                       const char *path)
{
    llm_gguf_writer *w = llm_gguf_writer_create();
    char name[64];
    snprintf(name, sizeof name, "peer-%s-random", s->name);
    llm_gguf_writer_kv_string(w, "general.architecture", "llama");
    llm_gguf_writer_kv_string(w, "general.name", name);
    llm_gguf_writer_kv_u32(w, "general.file_type", 1); /* LLAMA_FTYPE_MOSTLY_F16 */
    llm_gguf_writer_kv_u32(w, "llama.block_count", (uint32_t)s->n_layers);
    llm_gguf_writer_kv_u32(w, "llama.context_length", CONTEXT_LENGTH);
    llm_gguf_writer_kv_u32(w, "llama.embedding_length", (uint32_t)s->dim);
    llm_gguf_writer_kv_u32(w, "llama.feed_forward_length", (uint32_t)s->ffn_dim);
    llm_gguf_writer_kv_u32(w, "llama.attention.head_count", (uint32_t)s->n_heads);
    llm_gguf_writer_kv_u32(w, "llama.attention.head_count_kv", (uint32_t)s->n_kv_heads);
    llm_gguf_writer_kv_u32(w, "llama.rope.dimension_count", (uint32_t)(s->dim / s->n_heads));
    llm_gguf_writer_kv_f32(w, "llama.rope.freq_base", ROPE_BASE);
    llm_gguf_writer_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", RMS_EPS);
    llm_gguf_writer_kv_u32(w, "llama.vocab_size", (uint32_t)s->vocab);
    if (add_vocabulary(w, vocab_path, s->vocab)) {
        llm_gguf_writer_free(w);
        return -1;
    }

    struct util_rng rng;
    util_rng_seed(&rng, seed);
    struct tensors t = {0};
    int kv_dim = s->dim / s->n_heads * s->n_kv_heads;
    add_tensor(w, &t, "token_embd.weight", s->vocab, s->dim, WEIGHT_STD, &rng);
    add_tensor(w, &t, "output_norm.weight", 0, s->dim, 0, &rng);
    add_tensor(w, &t, "output.weight", s->vocab, s->dim, WEIGHT_STD, &rng);
    for (int l = 0; l < s->n_layers; l++) {
        static const char *suffix[9] = {"attn_norm", "attn_q",   "attn_k", "attn_v",  "attn_output",
                                        "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down"};
        int rows[9] = {0, s->dim, kv_dim, kv_dim, s->dim, 0, s->ffn_dim, s->ffn_dim, s->dim};
        int cols[9] = {s->dim, s->dim, s->dim, s->dim, s->dim, s->dim, s->dim, s->dim, s->ffn_dim};
        for (int j = 0; j < 9; j++) {
            char tname[64];
            snprintf(tname, sizeof tname, "blk.%d.%s.weight", l, suffix[j]);
            add_tensor(w, &t, tname, rows[j], cols[j], rows[j] ? WEIGHT_STD : 0, &rng);
        }
        if (isatty(STDERR_FILENO))
            fprintf(stderr, "\rpeer_model: %s: layer %d/%d%s", s->name, l + 1, s->n_layers,
                    l + 1 == s->n_layers ? "\n" : "");
    }
    char err[512];
    int rc = llm_gguf_writer_save(w, path, err, sizeof err);
    if (rc) fprintf(stderr, "peer_model: cannot write %s: %s\n", path, err);
    for (int i = 0; i < t.n; i++) free(t.data[i]);
    free(t.data);
    llm_gguf_writer_free(w);
    return rc ? -1 : 0;
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *out)
{
    fprintf(out, "usage: peer_model --shape 58m|1.1b --out FILE [--vocab models/llmd-20m.gguf] "
                 "[--seed N]\n"
                 "writes the F16 model that `make bench-peer` gives llama.cpp and llmd "
                 "(see bench/peer.sh)\n");
}

int main(int argc, char **argv)
{
    const char *shape_name = NULL, *out = NULL, *vocab = "models/llmd-20m.gguf";
    uint64_t seed = 58;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        if (!strcmp(argv[i], "--shape"))
            shape_name = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out = argv[i + 1];
        else if (!strcmp(argv[i], "--vocab"))
            vocab = argv[i + 1];
        else if (!strcmp(argv[i], "--seed"))
            seed = strtoull(argv[i + 1], NULL, 10);
        else {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (!shape_name) {
        usage(stdout);
        return 0;
    }
    const struct peer_shape *shape = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shapes[i].name, shape_name)) shape = &shapes[i];
    if (!shape || !out) {
        usage(stderr);
        return 2;
    }
    double t0 = util_now();
    if (write_model(shape, vocab, seed, out)) return 1;
    printf("peer_model: wrote %s (%s, seed %llu) in %.1f s\n", out, shape->name,
           (unsigned long long)seed, util_now() - t0);
    return 0;
}

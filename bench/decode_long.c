/*
 * decode_long: end-to-end decode tokens/s of one sequence at long context,
 * dense attention against Quest, FP32 and INT4 KV cache, on the shape of the
 * 58M-parameter LLaMA that llama.cpp was measured with (issue 6: width 512,
 * 8 layers, 8 heads, FFN 1408, vocabulary 32000, untied output).
 *
 * Weights are synthetic (uniform noise, written as an F16 GGUF to a
 * temporary file and loaded like any model). The context is filled by a
 * synthetic prefill: random K/V written straight into the KV cache with the
 * attention API (attn_seq_write, which keeps Quest's page bounds as a real
 * prefill does), since a real dense prefill of 32K tokens is O(n^2) and
 * takes minutes here. Decode steps are real: the whole forward pass
 * (embedding, 8 layers, output head over 32000 tokens) for one token at
 * the end of the context.
 *
 * The sequence grows through --contexts; at each one, dense and Quest take
 * turns token by token (each step decodes at that exact context, then the
 * sequence is truncated back), --reps steps each after one warm-up; medians.
 *
 *   build/bench/decode_long [--contexts 4096,8192,16384,32768] [--budget 2048]
 *       [--kv f32,int4] [--precisions fp32,atom] [--dense-layers 2]
 *       [--reps 7] [--threads 1]
 *
 * Times are the thread's CPU time with one thread (the default), so that
 * the figures mean the same on a shared machine; with --threads N > 1 they
 * are wall time.
 */
#include "bench/bench.h"
#include "core/llm.h"
#include "tests/gguf_builder.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST 8

/* The llama.cpp comparison shape. */
enum { DIM = 512, LAYERS = 8, HEADS = 8, KV_HEADS = 8, FFN = 1408, VOCAB = 32000 };

struct options {
    int contexts[MAX_LIST], n_contexts;
    int budget, dense_layers, reps, threads;
    enum attn_kv_type kv[4];
    int n_kv;
    enum llm_precision precisions[4];
    int n_precisions;
};

static bool use_wall_time; /* --threads N > 1 */

/* ------------------------------------------------------------- options */

static void usage(void)
{
    fprintf(stderr, "usage: decode_long [--contexts 4096,...] [--budget N] [--kv f32,int4]\n"
                    "  [--precisions fp32,atom] [--dense-layers N] [--reps N] [--threads N]\n");
    exit(2);
}

/* Splits a comma list of names and parses each with `parse`. */
static int parse_names(const char *s, void *out, size_t elem, int (*parse)(const char *, void *))
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < 4;
         t = strtok_r(NULL, ",", &save))
        if (parse(t, (char *)out + elem * (size_t)n++) != 0) usage();
    return n;
}

static int parse_kv(const char *s, void *out)
{
    return attn_kv_type_parse(s, out);
}
static int parse_precision(const char *s, void *out)
{
    return llm_precision_parse(s, out);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){.contexts = {4096, 8192, 16384, 32768},
                          .n_contexts = 4,
                          .budget = 2048,
                          .dense_layers = 2,
                          .reps = 7,
                          .threads = 1,
                          .kv = {ATTN_KV_F32, ATTN_KV_INT4},
                          .n_kv = 2,
                          .precisions = {LLM_FP32, LLM_ATOM},
                          .n_precisions = 2};
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (strcmp(a, "--contexts") == 0)
            o->n_contexts = bench_parse_list(v, o->contexts, MAX_LIST);
        else if (strcmp(a, "--budget") == 0)
            o->budget = atoi(v);
        else if (strcmp(a, "--dense-layers") == 0)
            o->dense_layers = atoi(v);
        else if (strcmp(a, "--reps") == 0)
            o->reps = atoi(v);
        else if (strcmp(a, "--threads") == 0)
            o->threads = atoi(v), use_wall_time = o->threads != 1;
        else if (strcmp(a, "--kv") == 0)
            o->n_kv = parse_names(v, o->kv, sizeof o->kv[0], parse_kv);
        else if (strcmp(a, "--precisions") == 0)
            o->n_precisions =
                parse_names(v, o->precisions, sizeof o->precisions[0], parse_precision);
        else
            usage();
    }
    if (o->n_contexts < 1 || o->budget < 16 || o->reps < 1 || o->threads < 1 || o->n_kv < 1 ||
        o->n_precisions < 1)
        usage();
    for (int i = 1; i < o->n_contexts; i++)
        if (o->contexts[i] <= o->contexts[i - 1]) usage(); /* the sequence only grows */
}

/* ------------------------------------------------------- the model file */

static void tensor_info(struct gguf_builder *b, const char *name, int rows, int cols,
                        uint64_t *offset)
{
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    bool vector = rows == 0;
    gb_tensor(b, name, vector ? 1 : 2, dims, vector ? GGML_TYPE_F32 : GGML_TYPE_F16, *offset);
    uint64_t bytes = vector ? 4 * (uint64_t)cols : 2 * (uint64_t)rows * cols;
    *offset += (bytes + 31) / 32 * 32;
}

struct tensor_shape {
    char name[48];
    int rows, cols; /* rows 0: an F32 vector (norm weights, all ones) */
};

static int model_tensors(struct tensor_shape *t)
{
    int n = 0;
    t[n++] = (struct tensor_shape){"token_embd.weight", VOCAB, DIM};
    t[n++] = (struct tensor_shape){"output_norm.weight", 0, DIM};
    t[n++] = (struct tensor_shape){"output.weight", VOCAB, DIM};
    const char *names[] = {"attn_norm", "attn_q",   "attn_k", "attn_v",  "attn_output",
                           "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down"};
    int rows[] = {0, DIM, KV_HEADS * DIM / HEADS, KV_HEADS * DIM / HEADS, DIM, 0, FFN, FFN, DIM};
    int cols[] = {DIM, DIM, DIM, DIM, DIM, DIM, DIM, DIM, FFN};
    for (int l = 0; l < LAYERS; l++)
        for (int i = 0; i < 9; i++) {
            t[n] = (struct tensor_shape){"", rows[i], cols[i]};
            snprintf(t[n].name, sizeof t[n].name, "blk.%d.%s.weight", l, names[i]);
            n++;
        }
    return n;
}

/* Writes the synthetic model to `path`: a llama tokenizer of VOCAB made-up
 * pieces (byte pieces, so that Atom's calibration text tokenizes) and uniform weights of std
 * 1/sqrt(fan-in). */
static void write_model(const char *path, int ctx_len)
{
    struct tensor_shape t[3 + 9 * LAYERS];
    int n_tensors = model_tensors(t);
    struct gguf_builder b = {0};
    gb_header(&b, GB_VERSION, (uint64_t)n_tensors, 14);
    gb_kv_string(&b, "general.architecture", "llama");
    gb_kv_string(&b, "general.name", "synthetic-58m");
    gb_kv_u32(&b, "llama.block_count", LAYERS);
    gb_kv_u32(&b, "llama.embedding_length", DIM);
    gb_kv_u32(&b, "llama.feed_forward_length", FFN);
    gb_kv_u32(&b, "llama.attention.head_count", HEADS);
    gb_kv_u32(&b, "llama.attention.head_count_kv", KV_HEADS);
    gb_kv_u32(&b, "llama.context_length", (uint32_t)ctx_len);
    gb_kv_string(&b, "tokenizer.ggml.model", "llama");
    gb_kv_u32(&b, "tokenizer.ggml.unknown_token_id", 0);
    gb_kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
    gb_kv_array(&b, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, VOCAB);
    for (int i = 0; i < VOCAB; i++) { /* <unk> <s> </s>, the 256 byte pieces, made-up words */
        char piece[16];
        if (i < 3)
            snprintf(piece, sizeof piece, "%s", (const char *[]){"<unk>", "<s>", "</s>"}[i]);
        else if (i < 259)
            snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else
            snprintf(piece, sizeof piece, "w%d", i);
        gb_str(&b, piece);
    }
    gb_kv_array(&b, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, VOCAB);
    for (int i = 0; i < VOCAB; i++) gb_u32(&b, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
    uint64_t offset = 0;
    for (int i = 0; i < n_tensors; i++) tensor_info(&b, t[i].name, t[i].rows, t[i].cols, &offset);
    size_t data_start = (b.len + 31) / 32 * 32;
    gb_data(&b, 32, offset);
    struct util_rng rng;
    util_rng_seed(&rng, 58);
    uint64_t at = 0;
    for (int i = 0; i < n_tensors; i++) {
        uint8_t *dst = b.buf + data_start + at;
        if (t[i].rows == 0) {
            for (int c = 0; c < t[i].cols; c++) ((float *)dst)[c] = 1.0f;
            at += ((uint64_t)4 * t[i].cols + 31) / 32 * 32;
            continue;
        }
        size_t n = (size_t)t[i].rows * t[i].cols;
        float amp = 1.7320508f / sqrtf((float)t[i].cols); /* uniform [-a, a] has std a/sqrt(3) */
        for (size_t j = 0; j < n; j++)
            ((uint16_t *)dst)[j] =
                util_f32_to_f16(amp * (float)(2.0 * util_rng_uniform(&rng) - 1.0));
        at += ((uint64_t)2 * n + 31) / 32 * 32;
    }
    FILE *f = fopen(path, "wb");
    UTIL_CHECK(f && fwrite(b.buf, 1, b.len, f) == b.len && fclose(f) == 0);
    gb_free(&b);
}

/* ------------------------------------------------------------ measuring */

/* Grows seq to `len` tokens of random K/V in every layer (the synthetic
 * prefill). */
static void synthetic_fill(attn_seq *seq, int len, struct util_rng *rng)
{
    enum { CHUNK = 256 };
    int width = KV_HEADS * (DIM / HEADS);
    float *k = util_xmalloc(sizeof(float) * CHUNK * width),
          *v = util_xmalloc(sizeof(float) * CHUNK * width);
    for (int at = attn_seq_len(seq); at < len; at += CHUNK) {
        int n = len - at < CHUNK ? len - at : CHUNK;
        UTIL_CHECK(attn_seq_reserve(seq, n) == 0);
        for (int l = 0; l < LAYERS; l++) {
            for (int i = 0; i < n * width;
                 i++) { /* uniform [-2, 2): cheap, and spread like N(0,1) */
                uint64_t r = util_rng_next(rng);
                k[i] = (float)(int32_t)(r >> 32) * 0x1p-30f;
                v[i] = (float)(int32_t)r * 0x1p-30f;
            }
            attn_seq_write(seq, l, at, n, k, v);
        }
        attn_seq_commit(seq, at + n);
    }
    free(k);
    free(v);
}

/* The calling thread's CPU time: with one thread, what a step costs on a
 * core of its own, whatever else the shared machine runs. */
static double thread_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* One decode step at the end of seq with `budget` (0 = dense); returns its
 * time and rolls the sequence back. */
static double timed_step(llm_model *m, llm_workspace *ws, attn_seq *seq, int budget, float *logits,
                         struct attn_stats *stats)
{
    int len = attn_seq_len(seq);
    int32_t token = 3 + len % (VOCAB - 3);
    struct llm_batch_item item = {
        .kv = seq, .tokens = &token, .n_tokens = 1, .quest_budget = budget};
    double t0 = use_wall_time ? util_now() : thread_cpu_now();
    UTIL_CHECK(llm_forward(m, ws, &item, 1, logits, stats) == 0);
    double dt = (use_wall_time ? util_now() : thread_cpu_now()) - t0;
    attn_seq_truncate(seq, len);
    return dt;
}

static void run_model(const char *path, const struct options *o, enum llm_precision precision,
                      enum attn_kv_type kv)
{
    int max_ctx = o->contexts[o->n_contexts - 1];
    struct llm_model_options mo;
    llm_model_options_default(&mo);
    mo.precision = precision;
    mo.kv_type = kv;
    mo.kv_pages = max_ctx / 16 + 4;
    mo.dense_layers = o->dense_layers;
    mo.threads = o->threads;
    mo.head = LLM_HEAD_INT4; /* serve's default */
    /* Atom on synthetic weights: round to nearest (no GPTQ) after a short
     * calibration (outlier channels), so quantizing takes seconds. The
     * kernels, and so the speed, are those of the full recipe. */
    mo.quant.gptq = false;
    mo.quant.calib_tokens = 512;
    char err[512];
    llm_model *m;
    if (llm_model_load(path, &mo, &m, err, sizeof err)) {
        fprintf(stderr, "decode_long: %s\n", err);
        exit(1);
    }
    llm_workspace *ws = llm_workspace_create(m, 1);
    float *logits = util_aligned_alloc(sizeof(float) * VOCAB);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    struct util_rng rng;
    util_rng_seed(&rng, 7);
    for (int c = 0; c < o->n_contexts; c++) {
        double t_fill = util_now();
        synthetic_fill(seq, o->contexts[c], &rng);
        t_fill = util_now() - t_fill;
        double *dense = util_xmalloc(sizeof(double) * (size_t)o->reps);
        double *quest = util_xmalloc(sizeof(double) * (size_t)o->reps);
        struct attn_stats stats = {0};
        double phases[2][LLM_PHASE_COUNT] = {{0}};
        timed_step(m, ws, seq, 0, logits, NULL); /* warm-up */
        timed_step(m, ws, seq, o->budget, logits, NULL);
        for (int r = 0; r < o->reps; r++) { /* the two take turns */
            llm_workspace_profile(ws, phases[0]);
            dense[r] = timed_step(m, ws, seq, 0, logits, NULL);
            llm_workspace_profile(ws, phases[1]);
            quest[r] = timed_step(m, ws, seq, o->budget, logits, &stats);
        }
        llm_workspace_profile(ws, NULL);
        double d = bench_median(dense, o->reps) * 1e3, q = bench_median(quest, o->reps) * 1e3;
        printf("| %-8s | %-4s | %6d | %9.2f | %7.1f | %9.2f | %7.1f | %5.2fx | %5.1f%% | %5.1f |\n",
               llm_precision_name(precision), attn_kv_type_name(kv), o->contexts[c], d, 1e3 / d, q,
               1e3 / q, d / q,
               100.0 * (double)stats.sparse_pages_read /
                   (double)(stats.sparse_pages_total ? stats.sparse_pages_total : 1),
               t_fill);
        for (int k = 0; k < 2; k++) {
            printf("|   %s step, ms (wall):", k ? "quest" : "dense");
            for (int p = 0; p < LLM_PHASE_COUNT; p++)
                printf(" %s %.2f", llm_phase_name((enum llm_phase)p), 1e3 * phases[k][p] / o->reps);
            printf(" |\n");
        }
        fflush(stdout);
        free(dense);
        free(quest);
    }
    attn_seq_free(seq);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    llm_model_free(m);
}

int main(int argc, char **argv)
{
    struct options o;
    parse_options(argc, argv, &o);
    char path[] = "/tmp/llmd-decode-long-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("decode_long: mkstemp");
        return 1;
    }
    close(fd);
    double t0 = util_now();
    write_model(path, o.contexts[o.n_contexts - 1] + 64);
    printf("decode_long: synthetic LLaMA, width %d, %d layers, %d/%d heads, FFN %d, vocabulary %d "
           "(written in %.1f s); Quest budget %d, %d dense layers; medians of %d steps; %d "
           "thread(s), %s time\n\n",
           DIM, LAYERS, HEADS, KV_HEADS, FFN, VOCAB, util_now() - t0, o.budget, o.dense_layers,
           o.reps, o.threads, use_wall_time ? "wall" : "thread CPU");
    printf("| weights | kv | ctx | dense ms | dense tok/s | quest ms | quest tok/s | quest/dense | "
           "read | fill s |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (int p = 0; p < o.n_precisions; p++)
        for (int k = 0; k < o.n_kv; k++) run_model(path, &o, o.precisions[p], o.kv[k]);
    unlink(path);
    printf("\n(read: pages read over dense in the sparse layers. llama.cpp, same shape, Q4_0 "
           "weights,\n"
           "F16 cache, on this machine (issue 6): 60 tok/s at 4K, 13 at 16K, 8.8 at 32K.)\n");
    return 0;
}

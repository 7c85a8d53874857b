/*
 * bench/forward.c: prefill and decode throughput of the forward pass, per
 * precision path and batch size, measured side by side in one run.
 *
 *   build/bench/forward [--model FILE | --synthetic-58m] [--precisions fp32,w8a8,atom]
 *                       [--batches 1,8,32] [--prompt N] [--decode N]
 *                       [--kv f32] [--tpot-ms 50] [--repeat 3] [--calib-tokens N]
 *                       [--head-f16] [--profile]
 *
 * A precision written P+h16 (e.g. atom+h16) runs P with the output head in
 * f16, P+h8 with it W8A8, P+h4 W4A8, so that the heads are measured in one
 * run (a quantized file's own head wins);
 * --head-f16 sets f16 for all.
 *
 * --synthetic-58m writes (once) /tmp/llmd-synthetic-58m.gguf: the LLaMA shape
 * llama.cpp's figures in issue 5 were measured on (width 512, 8 layers, 8
 * heads, FFN 1408, 32000-token vocabulary, untied output head, 58M
 * parameters), with random f16 weights and a placeholder vocabulary (256
 * byte pieces, the rest never produced by the tokenizer); Atom calibrates on
 * models/calibration.txt as bytes.
 *
 * For each precision and batch size B: B sequences prefill N prompt tokens
 * in one step per sequence chunk, then decode together for --decode steps.
 * Prefill tokens/s = B*N / prefill time; decode tokens/s = B*steps / decode
 * time; time per output token = decode time / steps. Medians of --repeat
 * runs. --profile adds, per precision and batch, where a prefill step and
 * a decode step spend their time (llm_workspace_profile), over all runs.
 * The last lines give, per precision, the largest batch whose time per
 * output token meets --tpot-ms, and the decode speed-up over fp32.
 */
#include "bench/bench.h"
#include "core/llm.h"
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST       16
#define SYNTHETIC_PATH "/tmp/llmd-synthetic-58m.gguf"

/* A string array as GGUF serializes it: element type, count, strings. */
static void *vocab_array(int n, size_t *len)
{
    size_t cap = 16 + (size_t)n * 24, at = 0;
    uint8_t *buf = util_xmalloc(cap);
    uint32_t type = GGUF_TYPE_STRING;
    uint64_t count = (uint64_t)n;
    memcpy(buf, &type, 4);
    memcpy(buf + 4, &count, 8);
    at = 12;
    for (int i = 0; i < n; i++) {
        char piece[16];
        uint64_t l = (uint64_t)snprintf(piece, sizeof piece, "%s",
                                        i == 0   ? "<unk>"
                                        : i == 1 ? "<s>"
                                        : i == 2 ? "</s>"
                                                 : "");
        if (i >= 3 && i < 259)
            l = (uint64_t)snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else if (i >= 259)
            l = (uint64_t)snprintf(piece, sizeof piece, "t%d", i);
        memcpy(buf + at, &l, 8);
        memcpy(buf + at + 8, piece, l);
        at += 8 + l;
    }
    *len = at;
    return buf;
}

/* Token types: unknown, control, control, 256 byte pieces (byte fallback
 * gives calibration real tokens), then normal pieces. */
static void *vocab_types(int n, size_t *len)
{
    uint8_t *buf = util_xmalloc(12 + 4 * (size_t)n);
    uint32_t type = GGUF_TYPE_INT32;
    uint64_t count = (uint64_t)n;
    memcpy(buf, &type, 4);
    memcpy(buf + 4, &count, 8);
    for (int i = 0; i < n; i++) {
        int32_t t = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
        memcpy(buf + 12 + 4 * (size_t)i, &t, 4);
    }
    *len = 12 + 4 * (size_t)n;
    return buf;
}

/* n f16 values: 1.0 (norms) or normal with standard deviation `std`. */
static uint16_t *random_f16(size_t n, double std, struct util_rng *rng)
{
    uint16_t *v = util_xmalloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = util_f32_to_f16(std > 0 ? (float)(std * util_rng_normal(rng)) : 1.0f);
    return v;
}

static int write_synthetic_58m(const char *path)
{
    enum { DIM = 512, LAYERS = 8, HEADS = 8, FFN = 1408, VOCAB = 32000 };
    llm_gguf_writer *w = llm_gguf_writer_create();
    llm_gguf_writer_kv_string(w, "general.architecture", "llama");
    llm_gguf_writer_kv_string(w, "general.name", "synthetic-58m");
    llm_gguf_writer_kv_u32(w, "llama.block_count", LAYERS);
    llm_gguf_writer_kv_u32(w, "llama.embedding_length", DIM);
    llm_gguf_writer_kv_u32(w, "llama.feed_forward_length", FFN);
    llm_gguf_writer_kv_u32(w, "llama.attention.head_count", HEADS);
    llm_gguf_writer_kv_u32(w, "llama.attention.head_count_kv", HEADS);
    llm_gguf_writer_kv_u32(w, "llama.context_length", 2048);
    llm_gguf_writer_kv_string(w, "tokenizer.ggml.model", "llama");
    size_t vlen;
    void *vocab = vocab_array(VOCAB, &vlen);
    llm_gguf_writer_kv_raw(w, "tokenizer.ggml.tokens", 21, GGUF_TYPE_ARRAY, vocab, vlen);
    size_t tlen;
    void *types = vocab_types(VOCAB, &tlen);
    llm_gguf_writer_kv_raw(w, "tokenizer.ggml.token_type", 25, GGUF_TYPE_ARRAY, types, tlen);
    llm_gguf_writer_kv_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    llm_gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", 1);
    llm_gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
    struct util_rng rng;
    util_rng_seed(&rng, 58);
    void *data[3 + 9 * LAYERS];
    int n_data = 0;
    char name[64];
#define TENSOR(rows, cols, std)                                                                    \
    do {                                                                                           \
        uint64_t dims[2] = {(uint64_t)(cols), (uint64_t)(rows)};                                   \
        size_t n = (size_t)(cols) * (size_t)((rows) ? (rows) : 1);                                 \
        data[n_data] = random_f16(n, std, &rng);                                                   \
        llm_gguf_writer_tensor(w, name, strlen(name), (rows) ? 2 : 1, dims, GGML_TYPE_F16,         \
                               data[n_data++], 2 * n);                                             \
    } while (0)
    snprintf(name, sizeof name, "token_embd.weight");
    TENSOR(VOCAB, DIM, 0.02);
    snprintf(name, sizeof name, "output_norm.weight");
    TENSOR(0, DIM, 0);
    snprintf(name, sizeof name, "output.weight");
    TENSOR(VOCAB, DIM, 0.02);
    for (int i = 0; i < LAYERS; i++) {
        const char *suffix[9] = {"attn_norm", "attn_q",   "attn_k", "attn_v",  "attn_output",
                                 "ffn_norm",  "ffn_gate", "ffn_up", "ffn_down"};
        int rows[9] = {0, DIM, DIM, DIM, DIM, 0, FFN, FFN, DIM},
            cols[9] = {DIM, DIM, DIM, DIM, DIM, DIM, DIM, DIM, FFN};
        for (int j = 0; j < 9; j++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", i, suffix[j]);
            TENSOR(rows[j], cols[j], rows[j] ? 0.02 : 0);
        }
    }
#undef TENSOR
    char err[256];
    int rc = llm_gguf_writer_save(w, path, err, sizeof err);
    if (rc) fprintf(stderr, "cannot write %s: %s\n", path, err);
    for (int i = 0; i < n_data; i++) free(data[i]);
    free(vocab);
    free(types);
    llm_gguf_writer_free(w);
    return rc;
}

struct result {
    double prefill_tps, decode_tps, tpot_ms;
};

/* Seconds per phase, prefill and decode, when --profile is given. */
static bool profiling, profile_this_run; /* --profile: the last run of each precision and batch */
static double prefill_phases[LLM_PHASE_COUNT], decode_phases[LLM_PHASE_COUNT];
static int prefill_steps, decode_steps;
static char profile_lines[MAX_LIST * MAX_LIST][512];

/* One line of where the time went, into out; resets the sums. */
static void format_profile(char *out, size_t len, const char *name, int batch)
{
    size_t at = 0;
    const double *phases[2] = {prefill_phases, decode_phases};
    int *steps[2] = {&prefill_steps, &decode_steps};
    for (int w = 0; w < 2; w++) {
        double total = 0;
        for (int p = 0; p < LLM_PHASE_COUNT; p++) total += phases[w][p];
        at += (size_t)snprintf(out + at, len - at, "# profile %s batch %d %s %.3f ms/step:", name,
                               batch, w ? "decode" : "prefill", 1e3 * total / *steps[w]);
        for (int p = 0; p < LLM_PHASE_COUNT && at < len; p++)
            at += (size_t)snprintf(out + at, len - at, " %s %.0f%%",
                                   llm_phase_name((enum llm_phase)p), 100 * phases[w][p] / total);
        if (at < len) at += (size_t)snprintf(out + at, len - at, "\n");
    }
    memset(prefill_phases, 0, sizeof prefill_phases);
    memset(decode_phases, 0, sizeof decode_phases);
    prefill_steps = decode_steps = 0;
}

/* One measurement: B sequences, N prompt tokens each, `steps` decode steps. */
static struct result run_once(llm_model *m, int B, int N, int steps, struct util_rng *rng)
{
    const struct llm_config *c = llm_model_config(m);
    int max_tokens = N > B ? N : B;
    llm_workspace *ws = llm_workspace_create(m, max_tokens);
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)B * c->vocab_size);
    attn_seq **seqs = util_xcalloc((size_t)B, sizeof *seqs);
    int32_t *prompt = util_xmalloc(sizeof(int32_t) * (size_t)N);
    int32_t *next = util_xmalloc(sizeof(int32_t) * (size_t)B);
    struct llm_batch_item *items = util_xcalloc((size_t)B, sizeof *items);
    struct llm_sampling sampling;
    llm_sampling_default(&sampling);
    llm_sampler *greedy = llm_sampler_create(&sampling, c->vocab_size);

    if (profile_this_run) llm_workspace_profile(ws, prefill_phases);
    double t0 = util_now();
    for (int b = 0; b < B; b++) {
        seqs[b] = attn_seq_create(llm_model_kv_cache(m));
        for (int i = 0; i < N; i++)
            prompt[i] = 3 + (int32_t)(util_rng_next(rng) % (uint64_t)(c->vocab_size - 3));
        struct llm_batch_item item = {.kv = seqs[b], .tokens = prompt, .n_tokens = N};
        UTIL_CHECK(llm_forward(m, ws, &item, 1, logits, NULL) == 0);
        next[b] = prompt[N - 1];
    }
    double t1 = util_now();
    if (profile_this_run) llm_workspace_profile(ws, decode_phases);
    if (profile_this_run) prefill_steps += B, decode_steps += steps;
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++)
            items[b] = (struct llm_batch_item){.kv = seqs[b], .tokens = &next[b], .n_tokens = 1};
        UTIL_CHECK(llm_forward(m, ws, items, B, logits, NULL) == 0);
        for (int b = 0; b < B; b++) /* greedy, so the work is real decoding */
            next[b] = llm_sampler_sample(greedy, logits + (size_t)b * c->vocab_size, NULL);
    }
    double t2 = util_now();
    struct result r = {
        .prefill_tps = (double)B * N / (t1 - t0),
        .decode_tps = (double)B * steps / (t2 - t1),
        .tpot_ms = 1e3 * (t2 - t1) / steps,
    };
    for (int b = 0; b < B; b++) attn_seq_free(seqs[b]);
    free(seqs);
    free(prompt);
    free(next);
    free(items);
    llm_sampler_free(greedy);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    return r;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/llmd-20m.gguf", *precisions = "fp32,w8a8,atom", *kv = "f32";
    int batches[MAX_LIST] = {1, 8, 32}, n_batches = 3, N = 128, steps = 32, repeat = 3,
        calib_tokens = 0;
    bool head_f16 = false;
    double tpot_target = 50.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--synthetic-58m")) {
            model_path = SYNTHETIC_PATH;
            FILE *f = fopen(model_path, "rb");
            if (f)
                fclose(f);
            else if (write_synthetic_58m(model_path))
                return 1;
            continue;
        }
        if (!strcmp(argv[i], "--head-f16")) {
            head_f16 = true;
            continue;
        }
        if (!strcmp(argv[i], "--profile")) {
            profiling = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "option %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--model"))
            model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--calib-tokens"))
            calib_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--precisions"))
            precisions = argv[i + 1];
        else if (!strcmp(argv[i], "--batches"))
            n_batches = bench_parse_list(argv[i + 1], batches, MAX_LIST);
        else if (!strcmp(argv[i], "--prompt"))
            N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv"))
            kv = argv[i + 1];
        else if (!strcmp(argv[i], "--tpot-ms"))
            tpot_target = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat"))
            repeat = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s (see the comment at the top of bench/forward.c)\n",
                    argv[i]);
            return 2;
        }
        i++;
    }
    if (N < 1 || steps < 1 || repeat < 1 || n_batches < 1) return 2;
    printf(
        "# forward pass of %s: prefill %d tokens, decode %d steps, KV %s, head %s, median of %d\n",
        model_path, N, steps, kv, head_f16 ? "f16" : "f32", repeat);
    printf("# cpu: %s [%s]; OpenBLAS %s\n", util_cpu_model_name(), util_cpu_flags_string(),
           util_blas_corename());
    printf("%-10s %6s %14s %14s %10s\n", "precision", "batch", "prefill tok/s", "decode tok/s",
           "tpot ms");

    /* Every precision is loaded first, then the runs interleave (batch by
     * batch, repeat by repeat, one precision after the other), so that a
     * change in the machine's load hits all of them alike. */
    char list[256];
    snprintf(list, sizeof list, "%s", precisions);
    char *names[MAX_LIST];
    llm_model *models[MAX_LIST];
    int n_models = 0;
    int max_b = 0;
    for (int i = 0; i < n_batches; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
    for (char *save, *p = strtok_r(list, ",", &save); p && n_models < MAX_LIST;
         p = strtok_r(NULL, ",", &save)) {
        struct llm_model_options o;
        llm_model_options_default(&o);
        /* "atom+h16": that precision with the f16 head, side by side with "atom" */
        char base[32];
        snprintf(base, sizeof base, "%s", p);
        static const char *const heads[] = {"+h16", "+h8", "+h4"};
        static const enum llm_head head_of[] = {LLM_HEAD_F16, LLM_HEAD_INT8, LLM_HEAD_INT4};
        o.head = head_f16 ? LLM_HEAD_F16 : LLM_HEAD_F32;
        for (int h = 0; h < 3; h++) {
            char *suffix = strstr(base, heads[h]);
            if (!suffix) continue;
            o.head = head_of[h];
            *suffix = 0;
        }
        if (llm_precision_parse(base, &o.precision) || attn_kv_type_parse(kv, &o.kv_type)) {
            fprintf(stderr, "bad precision %s or kv %s\n", p, kv);
            return 2;
        }
        o.kv_pages = max_b * ((N + steps) / 16 + 2);
        if (o.kv_pages < 40) o.kv_pages = 40; /* calibration runs windows of 512 tokens */
        if (calib_tokens > 0) o.quant.calib_tokens = calib_tokens;
        char err[512];
        if (llm_model_load(model_path, &o, &models[n_models], err, sizeof err)) {
            fprintf(stderr, "cannot load %s: %s\n", model_path, err);
            return 1;
        }
        names[n_models++] = p;
    }
    struct util_rng rng;
    util_rng_seed(&rng, 1);
    for (int k = 0; k < n_models; k++)
        run_once(models[k], 1, N < 16 ? N : 16, 2, &rng); /* warm-up */
    static double pf[MAX_LIST][MAX_LIST][32], dc[MAX_LIST][MAX_LIST][32],
        tp[MAX_LIST][MAX_LIST][32];
    int reps = repeat < 32 ? repeat : 32;
    for (int i = 0; i < n_batches; i++)
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < n_models; k++) {
                profile_this_run = profiling && r == reps - 1;
                struct result res = run_once(models[k], batches[i], N, steps, &rng);
                pf[k][i][r] = res.prefill_tps, dc[k][i][r] = res.decode_tps,
                tp[k][i][r] = res.tpot_ms;
                if (profile_this_run)
                    format_profile(profile_lines[k * MAX_LIST + i], sizeof profile_lines[0],
                                   names[k], batches[i]);
            }
    double fp32_decode[MAX_LIST] = {0};
    char summary[4096] = "";
    size_t used = 0;
    for (int k = 0; k < n_models; k++) {
        const char *p = names[k];
        int best_batch = 0;
        double best_tps = 0;
        for (int i = 0; i < n_batches; i++) {
            double pfm = bench_median(pf[k][i], reps), dcm = bench_median(dc[k][i], reps),
                   tpm = bench_median(tp[k][i], reps);
            printf("%-10s %6d %14.1f %14.1f %10.2f\n", p, batches[i], pfm, dcm, tpm);
            if (profiling) fputs(profile_lines[k * MAX_LIST + i], stdout);
            if (!strcmp(p, "fp32"))
                fp32_decode[i] = dcm;
            else if (fp32_decode[i] > 0)
                used += (size_t)snprintf(summary + used, sizeof summary - used,
                                         "decode_speedup_%s_vs_fp32_batch%d: %.2f\n", p, batches[i],
                                         dcm / fp32_decode[i]);
            if (tpm <= tpot_target && dcm > best_tps) best_batch = batches[i], best_tps = dcm;
        }
        used += (size_t)snprintf(summary + used, sizeof summary - used,
                                 "largest_batch_within_%.0fms_%s: %d (%.1f tok/s)\n", tpot_target,
                                 p, best_batch, best_tps);
        llm_model_free(models[k]);
    }
    fputs(summary, stdout);
    return 0;
}

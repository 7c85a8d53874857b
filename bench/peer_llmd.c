/*
 * bench/peer_llmd.c: llmd's half of `make bench-peer` (bench/peer.sh), the
 * in-process measurements that llama.cpp's llama-batched-bench and
 * llama-bench make on their side:
 *
 *   - decode: B sequences prefill --prompt tokens each (not timed), then
 *     decode --decode steps together; total tokens/s = B x steps / time,
 *     median of --repeat runs, for each B of --batches;
 *   - prefill: one sequence of --prefill tokens in chunks of serve's
 *     prefill chunk; tokens/s, median of --repeat runs;
 *   - long context: for each depth D of --depths, one sequence prefills D
 *     tokens (timed once, for the record), then decodes 3 x --depth-decode
 *     steps; tokens/s is the median of the three windows.
 *
 *   build/bench/peer_llmd --model FILE [--batches 1,8,32] [--prompt 32] [--decode 32]
 *                         [--repeat 3] [--prefill 512] [--depths 4096,16384,32768]
 *                         [--depth-decode 16] [-- SERVE-SETTING-FLAGS...]
 *
 * The model is loaded the way `llmd serve` loads it: its settings go
 * through the server's own precedence chain (compiled defaults,
 * conf/llmd.json, LLMD_* variables, then the flags after `--`), so the
 * figures are those of serve's defaults (precision, KV type, Quest budget,
 * prefill chunk, threads, ...), not of values restated here. An empty
 * --batches, --prefill 0 or an empty --depths skips that part. Decode is
 * greedy on the logits, so the steps do real work.
 *
 * Output: a table, then `name: value` lines that peer.sh reads
 * (decode_tps_b8, prefill_tps_512, decode_tps_depth4096, load_s, ...).
 * Without --model it prints this usage and exits 0 (`make bench` runs every
 * bench program without arguments; this one needs the peer's models).
 */
#include "bench/bench.h"
#include "core/llm.h"
#include "cli/settings.h"
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST        16
#define MAX_REPEAT      32
#define MAX_SERVE_FLAGS 64
#define DEPTH_WINDOWS   3

/* What a run needs besides the model: serve's engine settings. */
struct run_ctx {
    llm_model *model;
    llm_workspace *ws;
    const struct llm_config *cfg;
    int prefill_chunk, quest_budget;
    float *logits; /* max_batch x vocab */
    struct util_rng rng;
};

static void random_tokens(struct run_ctx *r, int32_t *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = 3 + (int32_t)(util_rng_next(&r->rng) % (uint64_t)(r->cfg->vocab_size - 3));
}

/* Prefills `tokens` into seq in chunks of serve's prefill chunk, as the
 * engine does (dense attention while prefilling, as the engine's). */
static void prefill(struct run_ctx *r, attn_seq *seq, const int32_t *tokens, int n)
{
    for (int at = 0; at < n; at += r->prefill_chunk) {
        int chunk = n - at < r->prefill_chunk ? n - at : r->prefill_chunk;
        struct llm_batch_item item = {.kv = seq, .tokens = tokens + at, .n_tokens = chunk};
        UTIL_CHECK(llm_forward(r->model, r->ws, &item, 1, r->logits, NULL) == 0);
    }
}

/* `steps` decode steps of the B sequences, greedy from next[]; seconds. */
static double decode(struct run_ctx *r, attn_seq **seqs, int32_t *next, int B, int steps)
{
    struct llm_batch_item *items = util_xcalloc((size_t)B, sizeof *items);
    int vocab = r->cfg->vocab_size;
    /* greedy through the engine's own sampler (a vectorised argmax), as
     * serving picks each token */
    struct llm_sampling greedy;
    llm_sampling_default(&greedy);
    llm_sampler *sampler = llm_sampler_create(&greedy, vocab);
    double t0 = util_now();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++)
            items[b] = (struct llm_batch_item){
                .kv = seqs[b], .tokens = &next[b], .n_tokens = 1, .quest_budget = r->quest_budget};
        UTIL_CHECK(llm_forward(r->model, r->ws, items, B, r->logits, NULL) == 0);
        for (int b = 0; b < B; b++)
            next[b] = llm_sampler_sample(sampler, r->logits + (size_t)b * vocab, NULL);
    }
    double t = util_now() - t0;
    llm_sampler_free(sampler);
    free(items);
    return t;
}

/* Decode tokens/s of B sequences after `prompt` tokens each. */
static double decode_run(struct run_ctx *r, int B, int prompt, int steps)
{
    attn_seq **seqs = util_xcalloc((size_t)B, sizeof *seqs);
    int32_t *tokens = util_xmalloc(sizeof(int32_t) * (size_t)prompt);
    int32_t *next = util_xmalloc(sizeof(int32_t) * (size_t)B);
    for (int b = 0; b < B; b++) {
        seqs[b] = attn_seq_create(llm_model_kv_cache(r->model));
        random_tokens(r, tokens, prompt);
        prefill(r, seqs[b], tokens, prompt);
        next[b] = tokens[prompt - 1];
    }
    double t = decode(r, seqs, next, B, steps);
    for (int b = 0; b < B; b++) attn_seq_free(seqs[b]);
    free(seqs);
    free(tokens);
    free(next);
    return (double)B * steps / t;
}

/* Prefill tokens/s of one sequence of n tokens. */
static double prefill_run(struct run_ctx *r, int n)
{
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(r->model));
    int32_t *tokens = util_xmalloc(sizeof(int32_t) * (size_t)n);
    random_tokens(r, tokens, n);
    double t0 = util_now();
    prefill(r, seq, tokens, n);
    double t = util_now() - t0;
    attn_seq_free(seq);
    free(tokens);
    return n / t;
}

/* One sequence at depth D: prefill tokens/s of the D tokens, and the
 * median decode tokens/s over DEPTH_WINDOWS windows of `steps` steps. */
static void depth_run(struct run_ctx *r, int depth, int steps, double *prefill_tps,
                      double *decode_tps)
{
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(r->model));
    int32_t *tokens = util_xmalloc(sizeof(int32_t) * (size_t)depth);
    random_tokens(r, tokens, depth);
    double t0 = util_now();
    prefill(r, seq, tokens, depth);
    *prefill_tps = depth / (util_now() - t0);
    int32_t next = tokens[depth - 1];
    double w[DEPTH_WINDOWS];
    for (int i = 0; i < DEPTH_WINDOWS; i++) w[i] = steps / decode(r, &seq, &next, 1, steps);
    *decode_tps = bench_median(w, DEPTH_WINDOWS);
    attn_seq_free(seq);
    free(tokens);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: peer_llmd --model FILE [--batches 1,8,32] [--prompt 32] [--decode 32]\n"
                 "                 [--repeat 3] [--prefill 512] [--depths 4096,16384,32768]\n"
                 "                 [--depth-decode 16] [-- SERVE-SETTING-FLAGS...]\n"
                 "llmd's side of `make bench-peer` (see bench/peer.sh)\n");
}

int main(int argc, char **argv)
{
    const char *model_path = NULL;
    int batches[MAX_LIST] = {1, 8, 32}, n_batches = 3, depths[MAX_LIST] = {4096, 16384, 32768},
        n_depths = 3, prompt = 32, steps = 32, repeat = 3, prefill_n = 512, depth_steps = 16;
    const char *serve_argv[MAX_SERVE_FLAGS + 4] = {"serve"};
    int serve_argc = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            for (i++; i < argc && serve_argc < MAX_SERVE_FLAGS; i++)
                serve_argv[serve_argc++] = argv[i];
            break;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        const char *v = argv[i + 1];
        if (!strcmp(argv[i], "--model"))
            model_path = v;
        else if (!strcmp(argv[i], "--batches"))
            n_batches = bench_parse_list(v, batches, MAX_LIST);
        else if (!strcmp(argv[i], "--depths"))
            n_depths = bench_parse_list(v, depths, MAX_LIST);
        else if (!strcmp(argv[i], "--prompt"))
            prompt = atoi(v);
        else if (!strcmp(argv[i], "--decode"))
            steps = atoi(v);
        else if (!strcmp(argv[i], "--repeat"))
            repeat = atoi(v);
        else if (!strcmp(argv[i], "--prefill"))
            prefill_n = atoi(v);
        else if (!strcmp(argv[i], "--depth-decode"))
            depth_steps = atoi(v);
        else {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (!model_path) {
        usage(stdout);
        return 0;
    }
    if (prompt < 1 || steps < 1 || depth_steps < 1 || repeat < 1 || repeat > MAX_REPEAT ||
        prefill_n < 0) {
        usage(stderr);
        return 2;
    }
    serve_argv[serve_argc++] = "--model";
    serve_argv[serve_argc++] = model_path;
    serve_argv[serve_argc] = NULL;

    struct srv_config sc;
    cmd_settings_init(&sc);
    char err[512];
    if (cmd_settings_load(&sc, serve_argc, (char **)serve_argv, err, sizeof err)) {
        fprintf(stderr, "peer_llmd: serve's settings: %s\n", err);
        return 2;
    }
    struct llm_model_options o;
    srv_config_model_options(&sc, &o);
    struct run_ctx r = {.prefill_chunk = sc.prefill_chunk, .quest_budget = sc.quest_budget};
    double t0 = util_now();
    if (llm_model_load(model_path, &o, &r.model, err, sizeof err)) {
        fprintf(stderr, "peer_llmd: cannot load %s: %s\n", model_path, err);
        return 1;
    }
    double load_s = util_now() - t0;
    r.cfg = llm_model_config(r.model);
    int max_batch = 1;
    for (int i = 0; i < n_batches; i++) max_batch = batches[i] > max_batch ? batches[i] : max_batch;
    /* serve's engine steps at most max_step_tokens tokens */
    int ws_tokens = sc.max_step_tokens;
    if (ws_tokens < max_batch) ws_tokens = max_batch;
    if (ws_tokens < sc.prefill_chunk) ws_tokens = sc.prefill_chunk;
    r.ws = llm_workspace_create(r.model, ws_tokens);
    r.logits = util_aligned_alloc(sizeof(float) * (size_t)max_batch * r.cfg->vocab_size);
    util_rng_seed(&r.rng, 1);

    printf("# llmd on %s: %s, KV %s, quest budget %d, prefill chunk %d, threads %s; "
           "loaded in %.2f s\n",
           model_path, llm_precision_name(llm_model_precision(r.model)),
           attn_kv_type_name(o.kv_type), sc.quest_budget, sc.prefill_chunk,
           sc.threads ? "as set" : "all cores", load_s);
    printf("# cpu: %s [%s]\n", util_cpu_model_name(), util_cpu_flags_string());
    fflush(stdout);

    decode_run(&r, 1, prompt < 16 ? prompt : 16, 2); /* warm-up */
    char summary[4096];
    size_t used = (size_t)snprintf(summary, sizeof summary, "load_s: %.3f\n", load_s);
    for (int i = 0; i < n_batches; i++) {
        double v[MAX_REPEAT];
        for (int k = 0; k < repeat; k++) v[k] = decode_run(&r, batches[i], prompt, steps);
        double m = bench_median(v, repeat);
        printf("decode  %2d sequences x %d steps after %d tokens: %9.1f tok/s (total)\n",
               batches[i], steps, prompt, m);
        fflush(stdout);
        used += (size_t)snprintf(summary + used, sizeof summary - used, "decode_tps_b%d: %.2f\n",
                                 batches[i], m);
    }
    if (prefill_n > 0) {
        double v[MAX_REPEAT];
        for (int k = 0; k < repeat; k++) v[k] = prefill_run(&r, prefill_n);
        double m = bench_median(v, repeat);
        printf("prefill %d tokens, 1 sequence:                %9.1f tok/s\n", prefill_n, m);
        fflush(stdout);
        used += (size_t)snprintf(summary + used, sizeof summary - used, "prefill_tps_%d: %.2f\n",
                                 prefill_n, m);
    }
    for (int i = 0; i < n_depths; i++) {
        double pf, dc;
        depth_run(&r, depths[i], depth_steps, &pf, &dc);
        printf("decode  1 sequence at depth %6d:            %9.2f tok/s (prefill %.1f tok/s)\n",
               depths[i], dc, pf);
        fflush(stdout);
        used += (size_t)snprintf(summary + used, sizeof summary - used,
                                 "decode_tps_depth%d: %.3f\nprefill_tps_depth%d: %.2f\n",
                                 depths[i], dc, depths[i], pf);
    }
    fputs(summary, stdout);
    util_aligned_free(r.logits);
    llm_workspace_free(r.ws);
    llm_model_free(r.model);
    cmd_settings_free(&sc);
    return 0;
}

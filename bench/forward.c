/*
 * bench/forward.c: prefill and decode throughput of the forward pass, per
 * precision path and batch size, measured side by side in one run.
 *
 *   build/bench/forward [--model FILE] [--precisions fp32,w8a8,atom]
 *                       [--batches 1,8,32] [--prompt N] [--decode N]
 *                       [--kv f32] [--tpot-ms 50] [--repeat 3]
 *
 * For each precision and batch size B: B sequences prefill N prompt tokens
 * in one step per sequence chunk, then decode together for --decode steps.
 * Prefill tokens/s = B*N / prefill time; decode tokens/s = B*steps / decode
 * time; time per output token = decode time / steps. Medians of --repeat
 * runs. The last lines give, per precision, the largest batch whose time per
 * output token meets --tpot-ms, and the decode speed-up over fp32.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/llm.h"
#include "util/util.h"

#define MAX_LIST 16

static int parse_list(const char *s, int *out)
{
    int n = 0;
    for (const char *p = s; *p && n < MAX_LIST;) {
        out[n++] = atoi(p);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct result {
    double prefill_tps, decode_tps, tpot_ms;
};

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

    double t0 = util_now();
    for (int b = 0; b < B; b++) {
        seqs[b] = attn_seq_create(llm_model_kv_cache(m));
        for (int i = 0; i < N; i++) prompt[i] = 3 + (int32_t)(util_rng_next(rng) % (uint64_t)(c->vocab_size - 3));
        struct llm_batch_item item = {.kv = seqs[b], .tokens = prompt, .n_tokens = N};
        UTIL_CHECK(llm_forward(m, ws, &item, 1, logits, NULL) == 0);
        next[b] = prompt[N - 1];
    }
    double t1 = util_now();
    for (int s = 0; s < steps; s++) {
        for (int b = 0; b < B; b++) items[b] = (struct llm_batch_item){.kv = seqs[b], .tokens = &next[b], .n_tokens = 1};
        UTIL_CHECK(llm_forward(m, ws, items, B, logits, NULL) == 0);
        for (int b = 0; b < B; b++) { /* greedy, so the work is real decoding */
            const float *row = logits + (size_t)b * c->vocab_size;
            int32_t best = 0;
            for (int v = 1; v < c->vocab_size; v++)
                if (row[v] > row[best]) best = v;
            next[b] = best;
        }
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
    util_aligned_free(logits);
    llm_workspace_free(ws);
    return r;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/llmd-20m.gguf", *precisions = "fp32,w8a8,atom", *kv = "f32";
    int batches[MAX_LIST] = {1, 8, 32}, n_batches = 3, N = 128, steps = 32, repeat = 3;
    double tpot_target = 50.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--precisions")) precisions = argv[i + 1];
        else if (!strcmp(argv[i], "--batches")) n_batches = parse_list(argv[i + 1], batches);
        else if (!strcmp(argv[i], "--prompt")) N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--kv")) kv = argv[i + 1];
        else if (!strcmp(argv[i], "--tpot-ms")) tpot_target = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s (see the comment at the top of bench/forward.c)\n", argv[i]);
            return 2;
        }
    }
    if (N < 1 || steps < 1 || repeat < 1 || n_batches < 1) return 2;
    printf("# forward pass: prefill %d tokens, decode %d steps, KV %s, median of %d\n", N, steps, kv, repeat);
    printf("# cpu: %s [%s]; OpenBLAS %s\n", util_cpu_model_name(), util_cpu_flags_string(), util_blas_corename());
    printf("%-10s %6s %14s %14s %10s\n", "precision", "batch", "prefill tok/s", "decode tok/s", "tpot ms");

    char list[256];
    snprintf(list, sizeof list, "%s", precisions);
    double fp32_decode[MAX_LIST] = {0};
    char summary[4096] = "";
    size_t used = 0;
    for (char *save, *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        struct llm_model_options o;
        llm_model_options_default(&o);
        if (llm_precision_parse(p, &o.precision) || attn_kv_type_parse(kv, &o.kv_type)) {
            fprintf(stderr, "bad precision %s or kv %s\n", p, kv);
            return 2;
        }
        int max_b = 0;
        for (int i = 0; i < n_batches; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
        o.kv_pages = max_b * ((N + steps) / 16 + 2);
        llm_model *m;
        char err[512];
        if (llm_model_load(model_path, &o, &m, err, sizeof err)) {
            fprintf(stderr, "cannot load %s: %s\n", model_path, err);
            return 1;
        }
        struct util_rng rng;
        util_rng_seed(&rng, 1);
        run_once(m, 1, N < 16 ? N : 16, 2, &rng); /* warm-up: threads, caches */
        int best_batch = 0;
        double best_tps = 0;
        for (int i = 0; i < n_batches; i++) {
            double pf[32], dc[32], tp[32];
            for (int r = 0; r < repeat && r < 32; r++) {
                struct result res = run_once(m, batches[i], N, steps, &rng);
                pf[r] = res.prefill_tps, dc[r] = res.decode_tps, tp[r] = res.tpot_ms;
            }
            int n = repeat < 32 ? repeat : 32;
            double pfm = median(pf, n), dcm = median(dc, n), tpm = median(tp, n);
            printf("%-10s %6d %14.1f %14.1f %10.2f\n", p, batches[i], pfm, dcm, tpm);
            if (!strcmp(p, "fp32")) fp32_decode[i] = dcm;
            else if (fp32_decode[i] > 0)
                used += (size_t)snprintf(summary + used, sizeof summary - used,
                                         "decode_speedup_%s_vs_fp32_batch%d: %.2f\n", p, batches[i], dcm / fp32_decode[i]);
            if (tpm <= tpot_target && dcm > best_tps) best_batch = batches[i], best_tps = dcm;
        }
        used += (size_t)snprintf(summary + used, sizeof summary - used,
                                 "largest_batch_within_%.0fms_%s: %d (%.1f tok/s)\n", tpot_target, p, best_batch, best_tps);
        llm_model_free(m);
    }
    fputs(summary, stdout);
    return 0;
}

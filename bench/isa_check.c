/*
 * isa_check: the whole forward pass under each instruction set a CPU has,
 * compared with each other. Kernel tests compare one kernel with its
 * reference; this runs a real model end to end (prefill of three prompts
 * in one batch, then decode steps together) and writes every logit, so
 * that runs under different LLMD_QKERNEL / LLMD_ISA settings can be
 * compared. Links without Criterion or shared libraries (bench/device_check.sh
 * builds it static) for machines that have none of llmd's libraries.
 *
 *   isa_check quantize IN OUT      Atom-quantizes IN (int8 head) into OUT, once,
 *                                  so that every run below reads the same weights
 *   isa_check run MODEL OUT        the workload on MODEL (a quantized file:
 *                                  no calibration, so every run computes with
 *                                  the same weights); logits to OUT
 *   isa_check compare A B [TOL]    relative L2 difference of each logit row
 *                                  and the greedy token of each; exit 1 when
 *                                  a row differs by more than TOL (default
 *                                  2e-3) or a greedy token differs
 */
#include "core/llm.h"
#include "quant/quant.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_SEQS  3
#define N_STEPS 6

static int run(const char *model_path, const char *out_path)
{
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_type = ATTN_KV_INT4;
    o.kv_pages = 64;
    llm_model *m;
    char err[512];
    if (llm_model_load(model_path, &o, &m, err, sizeof err)) {
        fprintf(stderr, "isa_check: %s\n", err);
        return 2;
    }
    const int lens[N_SEQS] = {40, 17, 64};
    int vocab = llm_model_config(m)->vocab_size, total = 0;
    for (int i = 0; i < N_SEQS; i++) total += lens[i];
    llm_workspace *ws = llm_workspace_create(m, total);
    int32_t *prompt = util_xmalloc(sizeof(int32_t) * (size_t)total), next[N_SEQS];
    for (int i = 0; i < total; i++) prompt[i] = (int32_t)(3 + (i * 131) % (vocab - 3));
    struct llm_batch_item items[N_SEQS];
    for (int i = 0, at = 0; i < N_SEQS; at += lens[i], i++)
        items[i] = (struct llm_batch_item){.kv = attn_seq_create(llm_model_kv_cache(m)),
                                           .tokens = prompt + at,
                                           .n_tokens = lens[i]};
    float *logits = util_xmalloc(sizeof(float) * (size_t)N_SEQS * (N_STEPS + 1) * vocab);
    for (int s = 0; s <= N_STEPS; s++) {
        float *out = logits + (size_t)s * N_SEQS * vocab;
        UTIL_CHECK(llm_forward(m, ws, items, N_SEQS, out, NULL) == 0);
        for (int i = 0; i < N_SEQS; i++) { /* greedy */
            const float *row = out + (size_t)i * vocab;
            int best = 0;
            for (int v = 1; v < vocab; v++)
                if (row[v] > row[best]) best = v;
            next[i] = best;
            items[i].tokens = &next[i];
            items[i].n_tokens = 1;
        }
    }
    FILE *f = fopen(out_path, "wb");
    size_t n = (size_t)N_SEQS * (N_STEPS + 1) * vocab;
    int rc =
        f && fwrite(&vocab, sizeof vocab, 1, f) == 1 && fwrite(logits, sizeof(float), n, f) == n
            ? 0
            : 2;
    if (f) fclose(f);
    printf("isa_check run: cpu %s [%s], quantized kernel %s, %d rows of %d logits -> %s\n",
           util_cpu_model_name(), util_cpu_flags_string(), q_kernel_name(q_kernel_selected()),
           N_SEQS * (N_STEPS + 1), vocab, out_path);
    for (int i = 0; i < N_SEQS; i++) attn_seq_free(items[i].kv);
    free(prompt);
    free(logits);
    llm_workspace_free(ws);
    llm_model_free(m);
    return rc;
}

static float *read_logits(const char *path, int *vocab, size_t *n)
{
    char *data = util_read_file(path, n);
    if (!data || *n < sizeof(int)) {
        fprintf(stderr, "isa_check: cannot read %s\n", path);
        exit(2);
    }
    memcpy(vocab, data, sizeof(int));
    *n = (*n - sizeof(int)) / sizeof(float);
    float *logits = util_xmalloc(*n * sizeof(float));
    memcpy(logits, data + sizeof(int), *n * sizeof(float));
    free(data);
    return logits;
}

static int argmax(const float *row, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

static int compare(const char *a_path, const char *b_path, double tol)
{
    int va, vb;
    size_t na, nb;
    float *a = read_logits(a_path, &va, &na), *b = read_logits(b_path, &vb, &nb);
    if (va != vb || na != nb) {
        fprintf(stderr, "isa_check: %s and %s have different shapes\n", a_path, b_path);
        return 2;
    }
    double worst = 0;
    int rows = (int)(na / (size_t)va), greedy_diff = 0;
    for (int r = 0; r < rows; r++) {
        double num = 0, den = 0;
        for (int v = 0; v < va; v++) {
            double d = (double)a[(size_t)r * va + v] - b[(size_t)r * va + v];
            num += d * d;
            den += (double)a[(size_t)r * va + v] * a[(size_t)r * va + v];
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        if (rel > worst) worst = rel;
        greedy_diff += argmax(a + (size_t)r * va, va) != argmax(b + (size_t)r * va, va);
    }
    bool ok = worst <= tol && greedy_diff == 0;
    printf("isa_check compare %s %s: %d rows, worst relative L2 %.3g (tolerance %.3g), "
           "greedy tokens differing %d: %s\n",
           a_path, b_path, rows, worst, tol, greedy_diff, ok ? "PASS" : "FAIL");
    free(a);
    free(b);
    return ok ? 0 : 1;
}

static int quantize(const char *in, const char *out)
{
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.precision = LLM_ATOM;
    o.head = LLM_HEAD_INT8;
    o.quant.calib_tokens = 4096;
    o.kv_pages = 64;
    llm_model *m;
    char err[512];
    int rc = llm_model_load(in, &o, &m, err, sizeof err);
    if (!rc) {
        rc = llm_model_save_quantized(m, in, out, err, sizeof err);
        llm_model_free(m);
    }
    if (rc) fprintf(stderr, "isa_check: %s\n", err);
    return rc ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "quantize") == 0) return quantize(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "run") == 0) return run(argv[2], argv[3]);
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "compare") == 0)
        return compare(argv[2], argv[3], argc == 5 ? atof(argv[4]) : 2e-3);
    fprintf(stderr, "usage: isa_check quantize IN OUT | run MODEL OUT | compare A B [TOL]\n");
    return 2;
}

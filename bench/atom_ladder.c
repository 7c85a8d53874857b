/*
 * bench/atom_ladder.c: held-out perplexity for each step of Atom's recipe,
 * all rungs in one process on the same token windows.
 *
 *   build/bench/atom_ladder [--model FILE] [--file TEXT] [--ctx 1024]
 *                           [--windows 4 | --all] [--calib-tokens N]
 *                           [--rungs 0,7]  (only these rungs; 0 = fp32 is the reference)
 *
 * Rungs: fp32; w8a8; w4a4-rtn (int4 per row, round to nearest); then Atom
 * built up one step at a time: + int8 outlier channels (reordered), + int4
 * groups of 128, + clipping (0.9 activations, 0.85 weights), + GPTQ,
 * + int4 KV cache (= Atom). "Per row" means groups of at most 512 channels
 * (the kernels' limit), so the FFN down projection (1280 wide) has 3 groups.
 * Perplexity is computed like `llmd perplexity`: the stream BOS +
 * tokenize(TEXT) cut into full windows of ctx tokens, each scored on its own.
 */
#include "core/llm.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rung {
    const char *name;
    enum llm_precision precision;
    int group_size, n_outlier;
    float act_clip, weight_clip;
    bool gptq;
    enum attn_kv_type kv;
};

static const struct rung ladder[] = {
    {"fp32", LLM_FP32, 0, 0, 1, 1, false, ATTN_KV_F32},
    {"w8a8", LLM_W8A8, 0, 0, 1, 1, false, ATTN_KV_F32},
    {"w4a4-rtn", LLM_W4A4_RTN, 0, 0, 1, 1, false, ATTN_KV_F32},
    {"+ outliers int8", LLM_ATOM, 0, -1, 1, 1, false, ATTN_KV_F32},
    {"+ groups of 128", LLM_ATOM, 128, -1, 1, 1, false, ATTN_KV_F32},
    {"+ clipping", LLM_ATOM, 128, -1, 0.9f, 0.85f, false, ATTN_KV_F32},
    {"+ GPTQ", LLM_ATOM, 128, -1, 0.9f, 0.85f, true, ATTN_KV_F32},
    {"+ int4 KV (Atom)", LLM_ATOM, 128, -1, 0.9f, 0.85f, true, ATTN_KV_INT4},
};
#define N_RUNGS (int)(sizeof ladder / sizeof ladder[0])

/* Sum of -log p(token) over tokens 1..n-1 of one window, prefilled in chunks. */
static double window_nll(llm_model *m, llm_workspace *ws, int chunk, const int32_t *tokens, int n,
                         float *logits)
{
    int vocab = llm_model_config(m)->vocab_size;
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    double nll = 0;
    for (int at = 0; at < n - 1;) {
        int step = n - 1 - at < chunk ? n - 1 - at : chunk;
        struct llm_batch_item item = {
            .kv = seq, .tokens = tokens + at, .n_tokens = step, .all_logits = true};
        UTIL_CHECK(llm_forward(m, ws, &item, 1, logits, NULL) == 0);
        for (int j = 0; j < step; j++) {
            const float *row = logits + (size_t)j * vocab;
            float mx = row[0];
            for (int v = 1; v < vocab; v++) mx = row[v] > mx ? row[v] : mx;
            double sum = 0;
            for (int v = 0; v < vocab; v++) sum += exp((double)(row[v] - mx));
            nll += (double)mx + log(sum) - (double)row[tokens[at + j + 1]];
        }
        at += step;
    }
    attn_seq_free(seq);
    return nll;
}

static llm_model *load_rung(const char *path, const struct rung *r, int calib_tokens)
{
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.precision = r->precision;
    o.kv_type = r->kv;
    o.kv_sequences = 1;
    o.quant.group_size = r->group_size;
    o.quant.n_outlier = r->n_outlier;
    o.quant.act_clip = r->act_clip;
    o.quant.weight_clip = r->weight_clip;
    o.quant.gptq = r->gptq;
    if (calib_tokens > 0) o.quant.calib_tokens = calib_tokens;
    llm_model *m;
    char err[512];
    if (llm_model_load(path, &o, &m, err, sizeof err)) {
        fprintf(stderr, "cannot load %s (%s): %s\n", path, r->name, err);
        return NULL;
    }
    return m;
}

int main(int argc, char **argv)
{
    const char *model_path = "models/llmd-20m.gguf", *text_path = "models/heldout.txt";
    int ctx = 1024, windows = 4, calib_tokens = 0, chunk = 512;
    bool run_rung[N_RUNGS];
    for (int r = 0; r < N_RUNGS; r++) run_rung[r] = true;
    for (int i = 1; i < argc; i++) {
        bool has = i + 1 < argc;
        if (!strcmp(argv[i], "--all"))
            windows = 0;
        else if (has && !strcmp(argv[i], "--model"))
            model_path = argv[++i];
        else if (has && !strcmp(argv[i], "--file"))
            text_path = argv[++i];
        else if (has && !strcmp(argv[i], "--ctx"))
            ctx = atoi(argv[++i]);
        else if (has && !strcmp(argv[i], "--windows"))
            windows = atoi(argv[++i]);
        else if (has && !strcmp(argv[i], "--calib-tokens"))
            calib_tokens = atoi(argv[++i]);
        else if (has && !strcmp(argv[i], "--rungs")) {
            for (int r = 0; r < N_RUNGS; r++) run_rung[r] = false;
            for (const char *p = argv[++i]; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
                if (atoi(p) >= 0 && atoi(p) < N_RUNGS) run_rung[atoi(p)] = true;
            run_rung[0] = true;
        } else {
            fprintf(stderr,
                    "unknown option %s (see the comment at the top of bench/atom_ladder.c)\n",
                    argv[i]);
            return 2;
        }
    }
    if (ctx < 2 || windows < 0) return 2;
    size_t len;
    char *text = util_read_file(text_path, &len);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", text_path);
        return 1;
    }
    int32_t *ids = NULL;
    int n = 0;
    double fp32_ppl = 0;
    printf("# Atom ladder: %s on %s\n", model_path, text_path);
    printf("# cpu: %s [%s]; OpenBLAS %s\n", util_cpu_model_name(), util_cpu_flags_string(),
           util_blas_corename());
    for (int r = 0; r < N_RUNGS; r++) {
        if (!run_rung[r]) continue;
        double t0 = util_now();
        llm_model *m = load_rung(model_path, &ladder[r], calib_tokens);
        if (!m) return 1;
        double t_load = util_now() - t0;
        const struct llm_config *c = llm_model_config(m);
        if (!ids) { /* tokenize once: every rung scores the same windows */
            ids = util_xmalloc(sizeof(int32_t) * (len + 2));
            n = llm_tokenize(llm_model_tokenizer(m), text, len, true, ids, (int)len + 2);
            if (ctx > c->ctx_len) ctx = c->ctx_len;
            int all = n / ctx;
            if (windows == 0 || windows > all) windows = all;
            if (windows == 0) {
                fprintf(stderr, "%s: %d tokens, fewer than one window of %d\n", text_path, n, ctx);
                return 1;
            }
            printf("# %d windows of %d tokens (%d scored) of %d in the text\n", windows, ctx,
                   windows * (ctx - 1), n);
            printf("%-18s %10s %10s %9s %9s\n", "rung", "perplexity", "vs fp32", "load s",
                   "score s");
        }
        int step = chunk < ctx ? chunk : ctx;
        llm_workspace *ws = llm_workspace_create(m, step);
        float *logits = util_aligned_alloc(sizeof(float) * (size_t)step * c->vocab_size);
        double nll = 0, t1 = util_now();
        for (int w = 0; w < windows; w++)
            nll += window_nll(m, ws, step, ids + (size_t)w * ctx, ctx, logits);
        double ppl = exp(nll / ((double)windows * (ctx - 1)));
        if (r == 0) fp32_ppl = ppl;
        printf("%-18s %10.4f %+9.2f%% %9.1f %9.1f\n", ladder[r].name, ppl,
               100.0 * (ppl / fp32_ppl - 1.0), t_load, util_now() - t1);
        fflush(stdout);
        util_aligned_free(logits);
        llm_workspace_free(ws);
        llm_model_free(m);
    }
    free(ids);
    free(text);
    return 0;
}

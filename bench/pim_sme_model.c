/*
 * pim_sme_model: SME crossbar savings on a real model's own weights (the
 * default models/llmd-20m.gguf), quantised per tensor to 8 bits, against
 * the plain bit-sliced (sign-magnitude) mapping and ISAAC's offset mapping,
 * on 128 x 128 crossbars of 1- and 2-bit cells. Side by side: the same
 * shapes filled with Gaussian weights.
 *
 * The weights are reached through core's public linear-layer hook: one
 * forward pass of one token visits every linear once, and the hook maps it
 * and declines (the model computes as usual).
 *
 *   build/bench/pim_sme_model [MODEL]
 */
#include "core/llm.h"
#include "pim/pim.h"
#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tally {
    uint64_t plain, offset, sme;
    double bits, density_bits; /* for the mean bit density, weighted by size */
};

struct visit {
    int cell_bits;
    bool gaussian;
    struct tally by_kind[LLM_LINEAR_COUNT];
    struct util_rng rng;
};

static void map_one(struct visit *v, enum llm_linear_kind kind, const float *w, int n, int k)
{
    size_t count = (size_t)n * (size_t)k;
    float *src = (float *)w;
    if (v->gaussian) {
        src = util_xmalloc(count * sizeof *src);
        for (size_t i = 0; i < count; i++) src[i] = (float)util_rng_normal(&v->rng);
    }
    int32_t *q = util_xmalloc(count * sizeof *q);
    pim_quantize(src, count, 8, q);
    struct pim_device dev;
    pim_device_default(&dev);
    dev.cell_bits = v->cell_bits;
    pim_sme *sme;
    struct pim_sme_stats st;
    if (pim_sme_map(&dev, q, n, k, 8, &sme, &st) != 0) util_die("sme map %dx%d", n, k);
    pim_sme_free(sme);
    struct tally *t = &v->by_kind[kind];
    t->plain += st.crossbars_baseline;
    t->offset += st.crossbars_offset;
    t->sme += st.crossbars_sme;
    t->bits += (double)count;
    t->density_bits += st.bit_density * (double)count;
    free(q);
    if (src != w) free(src);
}

static bool hook(void *ctx, int layer, enum llm_linear_kind kind, const float *w, int n, int k,
                 const float *x, int T, float *y)
{
    (void)layer, (void)x, (void)T, (void)y;
    map_one(ctx, kind, w, n, k);
    return false; /* the model computes it */
}

static void row(const char *name, const struct tally *t)
{
    printf("| %s | %.3f | %lu | %lu | %lu | %.2fx | %.2fx |\n", name, t->density_bits / t->bits,
           (unsigned long)t->plain, (unsigned long)t->offset, (unsigned long)t->sme,
           (double)t->plain / (double)t->sme, (double)t->offset / (double)t->sme);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "models/llmd-20m.gguf";
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.precision = LLM_FP32;
    o.kv_pages = 4;
    llm_model *m;
    char err[256];
    if (llm_model_load(path, &o, &m, err, sizeof err)) util_die("%s", err);
    const struct llm_config *c = llm_model_config(m);
    printf("# pim_sme_model\n\nCPU: %s\nmodel: %s (%d layers, dim %d, ffn %d), weights quantised "
           "per tensor to 8 bits, 128 x 128 crossbars\n\n",
           util_cpu_model_name(), path, c->n_layers, c->dim, c->ffn_dim);
    llm_workspace *ws = llm_workspace_create(m, 1);
    float *logits = util_xmalloc(sizeof *logits * (size_t)c->vocab_size);
    for (int cb = 1; cb <= 2; cb++)
        for (int g = 0; g <= 1; g++) {
            struct visit v = {.cell_bits = cb, .gaussian = g};
            util_rng_seed(&v.rng, 7);
            if (llm_model_set_linear_hook(m, hook, &v)) util_die("hook");
            attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
            int32_t tok = 1;
            struct llm_batch_item item = {.kv = seq, .tokens = &tok, .n_tokens = 1};
            if (llm_forward(m, ws, &item, 1, logits, NULL)) util_die("forward");
            attn_seq_free(seq);
            llm_model_set_linear_hook(m, NULL, NULL);
            printf("### %s, %d-bit cells\n\n",
                   g ? "Gaussian weights of the same shapes" : "the model's weights", cb);
            printf("| linears | bit density | plain bit-sliced | offset (ISAAC) | SME | saving vs "
                   "plain | vs offset |\n|---|---:|---:|---:|---:|---:|---:|\n");
            struct tally all = {0};
            for (int k = 0; k < LLM_LINEAR_COUNT; k++) {
                row(llm_linear_kind_name((enum llm_linear_kind)k), &v.by_kind[k]);
                all.plain += v.by_kind[k].plain;
                all.offset += v.by_kind[k].offset;
                all.sme += v.by_kind[k].sme;
                all.bits += v.by_kind[k].bits;
                all.density_bits += v.by_kind[k].density_bits;
            }
            row("**all**", &all);
            printf("\n");
        }
    free(logits);
    llm_workspace_free(ws);
    llm_model_free(m);
    return 0;
}

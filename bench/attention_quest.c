/*
 * attention_quest: decode attention time per token, dense against Quest (and
 * the window baseline), for F32 and INT4 KV caches, at 4K..32K tokens of
 * context and budgets 512..2048, on a model-shaped synthetic cache.
 *
 * One query token at the end of the context runs attention in every layer
 * (the first --dense-layers stay dense in every mode). Caches are flushed
 * before each token, so the cache is read from memory as when many
 * sequences are served, and each repetition uses another query, so Quest
 * picks other pages each time. Times are medians; ratios are of medians
 * measured side by side in this run.
 *
 *   build/bench/attention_quest [--kv-heads 2] [--heads 8] [--head-dim 64]
 *       [--layers 6] [--dense-layers 2] [--reps 9] [--types f32,int4]
 *       [--contexts 4096,8192,16384,32768] [--budgets 512,1024,2048]
 *       [--flush-mb 512]
 */
#include "attention/attn_internal.h"
#include "bench/bench.h"
#include "util/util.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST 16

struct options {
    int kv_heads, heads, head_dim, layers, dense_layers, reps, flush_mb;
    int n_types, n_contexts, n_budgets;
    enum attn_kv_type types[4];
    int contexts[MAX_LIST], budgets[MAX_LIST];
};

/* ------------------------------------------------------------- options */

static void usage(void)
{
    fprintf(stderr,
            "usage: attention_quest [--kv-heads N] [--heads N] [--head-dim N] [--layers N]\n"
            "  [--dense-layers N] [--reps N] [--types f32,int4] [--contexts 4096,...]\n"
            "  [--budgets 512,...] [--flush-mb N]\n");
    exit(2);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){.kv_heads = 2,
                          .heads = 8,
                          .head_dim = 64,
                          .layers = 6,
                          .dense_layers = 2,
                          .reps = 9,
                          .flush_mb = 512};
    o->n_types = 2, o->types[0] = ATTN_KV_F32, o->types[1] = ATTN_KV_INT4;
    o->n_contexts = bench_parse_list("4096,8192,16384,32768", o->contexts, MAX_LIST);
    o->n_budgets = bench_parse_list("512,1024,2048", o->budgets, MAX_LIST);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(a, "--kv-heads"))
            o->kv_heads = atoi(v);
        else if (!strcmp(a, "--heads"))
            o->heads = atoi(v);
        else if (!strcmp(a, "--head-dim"))
            o->head_dim = atoi(v);
        else if (!strcmp(a, "--layers"))
            o->layers = atoi(v);
        else if (!strcmp(a, "--dense-layers"))
            o->dense_layers = atoi(v);
        else if (!strcmp(a, "--reps"))
            o->reps = atoi(v);
        else if (!strcmp(a, "--flush-mb"))
            o->flush_mb = atoi(v);
        else if (!strcmp(a, "--contexts"))
            o->n_contexts = bench_parse_list(v, o->contexts, MAX_LIST);
        else if (!strcmp(a, "--budgets"))
            o->n_budgets = bench_parse_list(v, o->budgets, MAX_LIST);
        else if (!strcmp(a, "--types")) {
            o->n_types = 0;
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && o->n_types < 4; tok = strtok(NULL, ","))
                if (attn_kv_type_parse(tok, &o->types[o->n_types++]) != 0) usage();
        } else
            usage();
    }
    if (o->kv_heads <= 0 || o->heads % o->kv_heads || o->reps <= 0 || o->n_contexts == 0 ||
        o->dense_layers < 0 || o->dense_layers >= o->layers)
        usage();
}

/* ------------------------------------------------------- synthetic model */

/*
 * Keys shaped like real post-RoPE keys: a per-channel scale (log-normal, so
 * a few channels are large) and a per-channel offset, rotated by RoPE at
 * their position. Values are N(0, 1). Queries mix noise with a few earlier
 * keys, so attention has peaks to find, and are rotated at the query's
 * position the same way.
 */
struct synth {
    int hd, width;
    float *channel_scale, *channel_offset; /* (layer, kv width) */
    struct util_rng rng;
};

static void rope(float *x, int hd, int pos)
{
    for (int i = 0; i < hd / 2; i++) {
        double theta = pos * pow(10000.0, -2.0 * i / hd);
        float c = (float)cos(theta), s = (float)sin(theta), a = x[i], b = x[i + hd / 2];
        x[i] = a * c - b * s;
        x[i + hd / 2] = a * s + b * c;
    }
}

static void synth_init(struct synth *s, const struct options *o)
{
    s->hd = o->head_dim;
    s->width = o->kv_heads * o->head_dim;
    util_rng_seed(&s->rng, 12345);
    size_t n = (size_t)o->layers * s->width;
    s->channel_scale = util_xmalloc(sizeof(float) * n);
    s->channel_offset = util_xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        s->channel_scale[i] = (float)exp(0.8 * util_rng_normal(&s->rng));
        s->channel_offset[i] = (float)util_rng_normal(&s->rng);
    }
}

/* K and V rows of n tokens at positions [pos, pos + n) of layer. */
static void synth_kv(struct synth *s, int layer, int pos, int n, float *k, float *v)
{
    const float *scale = s->channel_scale + (size_t)layer * s->width;
    const float *offset = s->channel_offset + (size_t)layer * s->width;
    for (int t = 0; t < n; t++) {
        float *kt = k + (size_t)t * s->width;
        for (int i = 0; i < s->width; i++) {
            kt[i] = scale[i] * (offset[i] + (float)util_rng_normal(&s->rng));
            v[(size_t)t * s->width + i] = (float)util_rng_normal(&s->rng);
        }
        for (int h = 0; h < s->width / s->hd; h++) rope(kt + (size_t)h * s->hd, s->hd, pos + t);
    }
}

/* A query (n_heads * hd) at `pos` of `layer`: noise plus two earlier keys
 * per head, read back from the cache. */
static void synth_query(struct synth *s, const attn_seq *seq, int layer, int n_heads, int pos,
                        float *q)
{
    int group = n_heads * s->hd / s->width;
    float k[ATTN_MAX_HEAD_DIM];
    for (int h = 0; h < n_heads; h++) {
        float *qh = q + (size_t)h * s->hd;
        for (int d = 0; d < s->hd; d++) qh[d] = 0.3f * (float)util_rng_normal(&s->rng);
        for (int j = 0; j < 2; j++) {
            int p = (int)(util_rng_uniform(&s->rng) * pos);
            attn_seq_read_kv(seq, layer, h / group, p, k, NULL);
            for (int d = 0; d < s->hd; d++) qh[d] += 0.25f * k[d];
        }
    }
}

/* ---------------------------------------------------------------- timing */

/* Reads and writes a buffer larger than the last-level cache. */
static void flush_caches(unsigned char *buf, size_t bytes)
{
    static unsigned char sink;
    unsigned char acc = 0;
#pragma omp parallel for reduction(^ : acc)
    for (size_t i = 0; i < bytes; i += 64) {
        acc ^= buf[i];
        buf[i] = (unsigned char)(acc + 1);
    }
    sink ^= acc;
}

struct run {
    double token_ms, sparse_layer_ms; /* medians */
    double read_fraction, mb_read, rel_err, recall;
};

struct setup {
    const struct options *o;
    attn_seq *seq;
    float **queries; /* reps queries per layer: queries[rep][layer * width] */
    float **dense_out;
    float **page_mass; /* per rep: (sparse layer, head, page) dense softmax mass */
    unsigned char *flush;
    size_t flush_bytes;
    size_t kv_block_bytes, meta_block_bytes;
};

/* Dense softmax mass of each page for every rep, sparse layer and head. */
static void compute_page_mass(const struct setup *s, int pos)
{
    const struct options *o = s->o;
    int hd = o->head_dim, width = o->heads * hd, group = o->heads / o->kv_heads;
    int pages = pos / 16 + 1, n = pos + 1;
    float scale = 1.0f / sqrtf((float)hd), k[ATTN_MAX_HEAD_DIM];
    double *score = util_xmalloc(sizeof(double) * n * group);
    for (int r = 0; r < o->reps; r++) {
        for (int l = o->dense_layers; l < o->layers; l++) {
            for (int kv = 0; kv < o->kv_heads; kv++) {
                const float *q = s->queries[r] + (size_t)l * width + (size_t)kv * group * hd;
                for (int p = 0; p < n; p++) {
                    attn_seq_read_kv(s->seq, l, kv, p, k, NULL);
                    for (int h = 0; h < group; h++) {
                        double dot = 0;
                        for (int d = 0; d < hd; d++) dot += (double)q[h * hd + d] * k[d];
                        score[(size_t)p * group + h] = dot * scale;
                    }
                }
                for (int h = 0; h < group; h++) {
                    double mx = -INFINITY, sum = 0;
                    for (int p = 0; p < n; p++) mx = fmax(mx, score[(size_t)p * group + h]);
                    for (int p = 0; p < n; p++) sum += exp(score[(size_t)p * group + h] - mx);
                    float *mass =
                        s->page_mass[r] +
                        ((size_t)(l - o->dense_layers) * o->heads + kv * group + h) * pages;
                    for (int i = 0; i < pages; i++) mass[i] = 0;
                    for (int p = 0; p < n; p++)
                        mass[p / 16] += (float)(exp(score[(size_t)p * group + h] - mx) / sum);
                }
            }
        }
    }
    free(score);
}

/* Mean over reps, sparse layers and heads of the dense softmax mass on the
 * pages `mode` reads: what Quest tries to keep. */
static double mass_recall(const struct setup *s, int pos, enum attn_mode mode, int budget)
{
    const struct options *o = s->o;
    int hd = o->head_dim, width = o->heads * hd, group = o->heads / o->kv_heads;
    int pages = pos / 16 + 1, budget_pages = budget / 16, cap = budget_pages > 1 ? budget_pages : 1;
    int *list = util_xmalloc(sizeof(int) * cap);
    float *scratch = util_xmalloc(sizeof(float) * (group + 1) * pages);
    double total = 0;
    int count = 0;
    for (int r = 0; r < o->reps; r++) {
        for (int l = o->dense_layers; l < o->layers; l++) {
            for (int kv = 0; kv < o->kv_heads; kv++) {
                const float *q = s->queries[r] + (size_t)l * width + (size_t)kv * group * hd;
                int n = pages;
                if (mode != ATTN_DENSE && budget_pages < pages)
                    n = attn_select_pages(attn_kernels_best(), s->seq, l, kv, mode, budget_pages,
                                          pos, q, group, list, scratch);
                else
                    for (int i = 0; i < pages && i < cap; i++) list[i] = i;
                for (int h = 0; h < group; h++) {
                    const float *mass =
                        s->page_mass[r] +
                        ((size_t)(l - o->dense_layers) * o->heads + kv * group + h) * pages;
                    double got = 0;
                    if (n == pages && (mode == ATTN_DENSE || budget_pages >= pages))
                        got = 1;
                    else
                        for (int i = 0; i < n; i++) got += mass[list[i]];
                    total += got;
                    count++;
                }
            }
        }
    }
    free(list);
    free(scratch);
    return total / count;
}

/* One mode and budget being measured: per-rep times, page counts and the
 * output error against dense, accumulated as reps run. */
struct config {
    enum attn_mode mode;
    int budget;
    double *token, *sparse; /* seconds per rep: all layers, mean sparse layer */
    struct attn_stats stats;
    double err_num, err_den;
};

static void config_init(struct config *c, const struct options *o, enum attn_mode mode, int budget)
{
    *c = (struct config){.mode = mode, .budget = budget};
    c->token = util_xmalloc(sizeof(double) * o->reps);
    c->sparse = util_xmalloc(sizeof(double) * o->reps);
}

/* One decode token of rep r through every layer, caches flushed first.
 * Dense (which runs first in each rep) keeps its output; the others are
 * compared with it. */
static void run_token(const struct setup *s, int pos, struct config *c, int r)
{
    const struct options *o = s->o;
    int width = o->heads * o->head_dim, sparse_layers = o->layers - o->dense_layers;
    struct attn_params p;
    attn_params_default(&p, o->heads, o->head_dim);
    p.mode = c->mode;
    p.token_budget = c->budget;
    p.dense_layers = o->dense_layers;
    float out[ATTN_MAX_HEAD_DIM * 64];
    UTIL_CHECK(width <= ATTN_MAX_HEAD_DIM * 64);
    flush_caches(s->flush, s->flush_bytes);
    c->token[r] = c->sparse[r] = 0;
    for (int l = 0; l < o->layers; l++) {
        const float *q = s->queries[r] + (size_t)l * width;
        bool sparse_layer = l >= o->dense_layers;
        double t0 = util_now();
        attn_forward(s->seq, l, q, &pos, 1, &p, out, sparse_layer ? &c->stats : NULL);
        double dt = util_now() - t0;
        c->token[r] += dt;
        if (sparse_layer) c->sparse[r] += dt / sparse_layers;
        float *ref = s->dense_out[r] + (size_t)l * width;
        if (c->mode == ATTN_DENSE)
            memcpy(ref, out, sizeof(float) * width);
        else if (sparse_layer)
            for (int i = 0; i < width; i++) {
                c->err_num += (double)(out[i] - ref[i]) * (out[i] - ref[i]);
                c->err_den += (double)ref[i] * ref[i];
            }
    }
}

static struct run config_finish(const struct setup *s, int pos, struct config *c)
{
    const struct options *o = s->o;
    int sparse_layers = o->layers - o->dense_layers;
    struct run run = {
        .token_ms = 1e3 * bench_median(c->token, o->reps),
        .sparse_layer_ms = 1e3 * bench_median(c->sparse, o->reps),
        .read_fraction = (double)c->stats.pages_read / (double)c->stats.pages_total,
        .rel_err = c->mode == ATTN_DENSE ? 0 : sqrt(c->err_num / c->err_den),
        .recall = mass_recall(s, pos, c->mode, c->budget),
    };
    /* Bytes one token reads: K/V blocks of every page read in every layer,
     * plus for Quest the bounds of every candidate page in sparse layers. */
    int pages = pos / 16 + 1;
    double dense_blocks = (double)pages * o->kv_heads * o->dense_layers;
    double sparse_blocks = (double)c->stats.pages_read / o->reps;
    double meta = c->mode == ATTN_QUEST && c->budget / 16 < pages
                      ? (double)(pages - 1) * o->kv_heads * sparse_layers * s->meta_block_bytes
                      : 0;
    run.mb_read = ((dense_blocks + sparse_blocks) * s->kv_block_bytes + meta) / 1e6;
    free(c->token);
    free(c->sparse);
    return run;
}

/* ------------------------------------------------------------------ main */

struct headline {
    double sparse_speedup, token_speedup;
    bool set;
};

int main(int argc, char **argv)
{
    struct options o;
    parse_options(argc, argv, &o);
    int max_ctx = 0;
    for (int i = 0; i < o.n_contexts; i++)
        max_ctx = o.contexts[i] > max_ctx ? o.contexts[i] : max_ctx;
    int width = o.heads * o.head_dim, kv_width = o.kv_heads * o.head_dim;

    printf("# attention_quest: decode attention per token, dense vs Quest vs window\n");
    printf("cpu: %s\nflags: %s\nkernels: %s, threads: %d\n", util_cpu_model_name(),
           util_cpu_flags_string(), attn_kernels_best()->name, omp_get_max_threads());
    printf("model: %d layers (%d dense), %d heads, %d kv heads, head_dim %d, page 16; "
           "median of %d tokens, caches flushed (%d MB) before each\n\n",
           o.layers, o.dense_layers, o.heads, o.kv_heads, o.head_dim, o.reps, o.flush_mb);

    struct setup s = {.o = &o, .flush_bytes = (size_t)o.flush_mb << 20};
    s.flush = util_xmalloc(s.flush_bytes);
    memset(s.flush, 1, s.flush_bytes);
    s.queries = util_xmalloc(sizeof(float *) * o.reps);
    s.dense_out = util_xmalloc(sizeof(float *) * o.reps);
    s.page_mass = util_xmalloc(sizeof(float *) * o.reps);
    for (int r = 0; r < o.reps; r++) {
        s.queries[r] = util_xmalloc(sizeof(float) * o.layers * width);
        s.dense_out[r] = util_xmalloc(sizeof(float) * o.layers * width);
        s.page_mass[r] = util_xmalloc(sizeof(float) * (o.layers - o.dense_layers) * o.heads *
                                      (max_ctx / 16 + 1));
    }
    struct headline head[4][MAX_LIST][MAX_LIST] = {{{{0}}}};

    printf("%-5s %6s %-7s %6s %10s %11s %8s %8s %9s %7s %7s %8s\n", "kv", "ctx", "mode", "budget",
           "ms/token", "ms/sp.layer", "x token", "x layer", "MB/token", "read%", "recall",
           "rel.err");
    for (int ti = 0; ti < o.n_types; ti++) {
        struct attn_cache_config cfg = {o.layers, o.kv_heads,       o.head_dim,
                                        16,       max_ctx / 16 + 1, o.types[ti]};
        attn_cache *cache;
        UTIL_CHECK(attn_cache_create(&cfg, &cache) == 0);
        s.seq = attn_seq_create(cache);
        s.kv_block_bytes = cache->layout.bytes;
        s.meta_block_bytes = (size_t)2 * o.head_dim * sizeof(uint16_t);
        struct synth syn;
        synth_init(&syn, &o);
        int chunk = 1024;
        float *k = util_xmalloc(sizeof(float) * chunk * kv_width);
        float *v = util_xmalloc(sizeof(float) * chunk * kv_width);
        for (int pos = 0; pos < max_ctx; pos += chunk) {
            int n = max_ctx - pos < chunk ? max_ctx - pos : chunk;
            UTIL_CHECK(attn_seq_reserve(s.seq, n) == 0);
            for (int l = 0; l < o.layers; l++) {
                synth_kv(&syn, l, pos, n, k, v);
                attn_seq_write(s.seq, l, pos, n, k, v);
            }
            attn_seq_commit(s.seq, pos + n);
        }
        free(k);
        free(v);

        for (int ci = 0; ci < o.n_contexts; ci++) {
            int pos = o.contexts[ci] - 1;
            for (int r = 0; r < o.reps; r++)
                for (int l = 0; l < o.layers; l++)
                    synth_query(&syn, s.seq, l, o.heads, pos, s.queries[r] + (size_t)l * width);
            compute_page_mass(&s, pos);
            /* Every mode runs once per rep, in turn, so that drifts in the
             * machine's speed hit all of them alike. */
            struct config cfg[1 + 2 * MAX_LIST];
            int n_cfg = 0;
            config_init(&cfg[n_cfg++], &o, ATTN_DENSE, 0);
            for (int bi = 0; bi < o.n_budgets; bi++) {
                config_init(&cfg[n_cfg++], &o, ATTN_QUEST, o.budgets[bi]);
                config_init(&cfg[n_cfg++], &o, ATTN_WINDOW, o.budgets[bi]);
            }
            for (int r = 0; r < o.reps; r++)
                for (int c = 0; c < n_cfg; c++) run_token(&s, pos, &cfg[c], r);
            const char *tname = attn_kv_type_name(o.types[ti]);
            struct run dense = config_finish(&s, pos, &cfg[0]);
            printf("%-5s %6d %-7s %6s %10.3f %11.3f %8s %8s %9.2f %6.1f%% %7.3f %8s\n", tname,
                   pos + 1, "dense", "-", dense.token_ms, dense.sparse_layer_ms, "1.00", "1.00",
                   dense.mb_read, 100 * dense.read_fraction, dense.recall, "0");
            for (int c = 1; c < n_cfg; c++) {
                struct run run = config_finish(&s, pos, &cfg[c]);
                double xt = dense.token_ms / run.token_ms;
                double xl = dense.sparse_layer_ms / run.sparse_layer_ms;
                printf("%-5s %6d %-7s %6d %10.3f %11.3f %8.2f %8.2f %9.2f %6.1f%% %7.3f %8.4f\n",
                       tname, pos + 1, cfg[c].mode == ATTN_QUEST ? "quest" : "window",
                       cfg[c].budget, run.token_ms, run.sparse_layer_ms, xt, xl, run.mb_read,
                       100 * run.read_fraction, run.recall, run.rel_err);
                if (cfg[c].mode == ATTN_QUEST)
                    head[ti][ci][(c - 1) / 2] = (struct headline){xl, xt, true};
            }
            fflush(stdout);
        }
        attn_seq_free(s.seq);
        attn_cache_free(cache);
        free(syn.channel_scale);
        free(syn.channel_offset);
    }

    printf("\n");
    for (int ti = 0; ti < o.n_types; ti++)
        for (int ci = 0; ci < o.n_contexts; ci++)
            for (int bi = 0; bi < o.n_budgets; bi++) {
                if (o.contexts[ci] != 32768 || o.budgets[bi] != 2048 || !head[ti][ci][bi].set)
                    continue;
                const char *tname = attn_kv_type_name(o.types[ti]);
                printf("quest_speedup_sparse_layer_32k_b2048_%s: %.2f\n", tname,
                       head[ti][ci][bi].sparse_speedup);
                printf("quest_speedup_token_all_layers_32k_b2048_%s: %.2f\n", tname,
                       head[ti][ci][bi].token_speedup);
            }
    for (int r = 0; r < o.reps; r++) free(s.queries[r]), free(s.dense_out[r]), free(s.page_mass[r]);
    free(s.page_mass);
    free(s.queries);
    free(s.dense_out);
    free(s.flush);
    return 0;
}

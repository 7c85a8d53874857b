/*
 * quest_quality: what Quest's page budget costs in quality on the real model,
 * beside dense attention and the query-agnostic window baseline (one sink
 * page + the most recent pages) at the same budget.
 *
 *  (a) passkey accuracy at --ctx tokens (the prompts of `llmd passkey`,
 *      cli/passkey.c), greedy, 8 answer tokens;
 *  (b) held-out perplexity of the last --ppl-tail tokens of --ppl-windows
 *      windows of --ctx tokens (BOS + models/heldout.txt, as
 *      `llmd perplexity` cuts it), each scored token decoded one at a time.
 *
 * Prefill is dense and the same for every configuration, so each prompt (or
 * window head) is prefilled once; then each configuration decodes from it
 * and the sequence is truncated back to the prompt (tests/test_core_quest.c
 * checks that this gives what a fresh sequence gives). The first answer
 * token comes from the prefill's logits, as in the engine, so it is the same
 * for every configuration.
 *
 *   build/bench/quest_quality [--model FILE] [--ctx 4096] [--trials 20]
 *       [--budgets 32,64,128,256,512,1024] [--ppl-windows 2] [--ppl-tail 128]
 *       [--seed 1] [--text models/heldout.txt] [--tsv FILE] [--threads N]
 *       [--dense-layers 2] [--no-passkey] [--no-ppl]
 *
 * Prints a table and writes a TSV (test, mode, budget, value, n, read
 * fraction) that tools/plot_quest.py plots.
 */
#include "bench/bench.h"
#include "cli/passkey.h"
#include "core/llm.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST      16
#define MAX_CONFIGS   (1 + 2 * MAX_LIST)
#define PREFILL_CHUNK 512

struct options {
    const char *model, *text, *tsv;
    int ctx, trials, ppl_windows, ppl_tail, seed, threads, dense_layers, n_budgets;
    int budgets[MAX_LIST];
    bool passkey, ppl;
};

/* One attention configuration: dense, or a mode at a budget. */
struct config {
    enum attn_mode mode;
    int budget;
    struct attn_stats stats;
    int correct; /* passkey */
    double nll;  /* perplexity */
    int64_t scored;
};

static const char *mode_name(enum attn_mode m)
{
    return m == ATTN_DENSE ? "dense" : m == ATTN_QUEST ? "quest" : "window";
}

/* ------------------------------------------------------------- options */

static void usage(void)
{
    fprintf(stderr,
            "usage: quest_quality [--model FILE] [--ctx N] [--trials N] [--budgets 32,64,...]\n"
            "  [--ppl-windows N] [--ppl-tail N] [--seed N] [--text FILE] [--tsv FILE]\n"
            "  [--threads N] [--dense-layers N] [--no-passkey] [--no-ppl]\n");
    exit(2);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    *o = (struct options){.model = "models/llmd-20m.gguf",
                          .text = "models/heldout.txt",
                          .tsv = "build/bench/quest_quality.tsv",
                          .ctx = 4096,
                          .trials = 20,
                          .ppl_windows = 2,
                          .ppl_tail = 128,
                          .seed = 1,
                          .dense_layers = 2,
                          .n_budgets = 6,
                          .budgets = {32, 64, 128, 256, 512, 1024},
                          .passkey = true,
                          .ppl = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-passkey") == 0)
            o->passkey = false;
        else if (strcmp(a, "--no-ppl") == 0)
            o->ppl = false;
        else if (!v)
            usage();
        else if (strcmp(a, "--model") == 0)
            o->model = v, i++;
        else if (strcmp(a, "--text") == 0)
            o->text = v, i++;
        else if (strcmp(a, "--tsv") == 0)
            o->tsv = v, i++;
        else if (strcmp(a, "--ctx") == 0)
            o->ctx = atoi(v), i++;
        else if (strcmp(a, "--trials") == 0)
            o->trials = atoi(v), i++;
        else if (strcmp(a, "--ppl-windows") == 0)
            o->ppl_windows = atoi(v), i++;
        else if (strcmp(a, "--ppl-tail") == 0)
            o->ppl_tail = atoi(v), i++;
        else if (strcmp(a, "--seed") == 0)
            o->seed = atoi(v), i++;
        else if (strcmp(a, "--threads") == 0)
            o->threads = atoi(v), i++;
        else if (strcmp(a, "--dense-layers") == 0)
            o->dense_layers = atoi(v), i++;
        else if (strcmp(a, "--budgets") == 0)
            o->n_budgets = bench_parse_list(v, o->budgets, MAX_LIST), i++;
        else
            usage();
    }
    if (o->ctx < 256 || o->trials < 0 || o->ppl_windows < 0 || o->ppl_tail < 2 ||
        o->ppl_tail >= o->ctx || o->n_budgets < 1 || o->dense_layers < 0)
        usage();
}

/* ------------------------------------------------------------ helpers */

static int tokenize(const llm_tokenizer *tok, const char *text, size_t len, int32_t **out)
{
    int n = llm_tokenize(tok, text, len, true, NULL, 0);
    UTIL_CHECK(n > 0);
    *out = util_xmalloc(sizeof(int32_t) * (size_t)n);
    UTIL_CHECK(llm_tokenize(tok, text, len, true, *out, n) == n);
    return n;
}

static int32_t argmax(const float *row, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

/* -log softmax(row)[target] */
static double nll_of(const float *row, int n, int32_t target)
{
    float mx = row[0];
    for (int i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)(row[i] - mx));
    return (double)mx + log(sum) - (double)row[target];
}

/* Dense prefill of tokens[0, n) into a new sequence in chunks; the last
 * token's logits go to `last`. */
static attn_seq *prefill(llm_model *m, llm_workspace *ws, const int32_t *tokens, int n, float *last)
{
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    for (int at = 0; at < n; at += PREFILL_CHUNK) {
        int step = n - at < PREFILL_CHUNK ? n - at : PREFILL_CHUNK;
        struct llm_batch_item item = {.kv = seq, .tokens = tokens + at, .n_tokens = step};
        UTIL_CHECK(llm_forward(m, ws, &item, 1, last, NULL) == 0);
    }
    return seq;
}

/* One decode step of `token` under configuration c. */
static void decode(llm_model *m, llm_workspace *ws, attn_seq *seq, int32_t token, struct config *c,
                   float *logits)
{
    struct llm_batch_item item = {.kv = seq,
                                  .tokens = &token,
                                  .n_tokens = 1,
                                  .quest_budget = c->budget,
                                  .sparse_mode = c->mode == ATTN_DENSE ? ATTN_QUEST : c->mode};
    UTIL_CHECK(llm_forward(m, ws, &item, 1, logits, &c->stats) == 0);
}

/* ------------------------------------------------------------- passkey */

/* Greedy answer of configuration c from a prefilled prompt: the first token
 * from the prefill, then up to CMD_PASSKEY_ANSWER_BUDGET - 1 decode steps. */
static bool passkey_answer(llm_model *m, llm_workspace *ws, attn_seq *seq,
                           const float *prefill_logits, struct config *c, int key, float *logits)
{
    const llm_tokenizer *tok = llm_model_tokenizer(m);
    int vocab = llm_model_config(m)->vocab_size;
    int32_t answer[CMD_PASSKEY_ANSWER_BUDGET];
    int n = 0;
    answer[n++] = argmax(prefill_logits, vocab);
    while (n < CMD_PASSKEY_ANSWER_BUDGET && answer[n - 1] != llm_tokenizer_eos(tok)) {
        decode(m, ws, seq, answer[n - 1], c, logits);
        answer[n++] = argmax(logits, vocab);
    }
    if (answer[n - 1] == llm_tokenizer_eos(tok)) n--;
    char *text = llm_detokenize(tok, answer, n);
    bool right = cmd_passkey_correct(text, key);
    free(text);
    return right;
}

static void run_passkey(llm_model *m, const struct options *o, struct config *cs, int n_configs)
{
    size_t len;
    char *text = util_read_file(o->text, &len);
    if (!text) {
        fprintf(stderr, "quest_quality: cannot read %s: %s\n", o->text, strerror(errno));
        exit(1);
    }
    struct cmd_passkey_sentences filler = cmd_passkey_split_sentences(text);
    const llm_tokenizer *tok = llm_model_tokenizer(m);
    int vocab = llm_model_config(m)->vocab_size;
    llm_workspace *ws = llm_workspace_create(m, PREFILL_CHUNK);
    float *first = util_aligned_alloc(sizeof(float) * (size_t)vocab);
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)vocab);
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)o->seed);
    double t0 = util_now();
    for (int t = 0; t < o->trials; t++) {
        int key = 10000 + (int)(util_rng_next(&rng) % 90000); /* as `llmd passkey` draws them */
        double depth;
        char *prompt = cmd_passkey_prompt(tok, &filler, o->ctx, key, &rng, &depth);
        UTIL_CHECK(prompt);
        int32_t *ids;
        int n = tokenize(tok, prompt, strlen(prompt), &ids);
        attn_seq *seq = prefill(m, ws, ids, n, first);
        for (int c = 0; c < n_configs; c++) {
            cs[c].correct += passkey_answer(m, ws, seq, first, &cs[c], key, logits);
            attn_seq_truncate(seq, n);
        }
        attn_seq_free(seq);
        free(ids);
        free(prompt);
        fprintf(stderr, "\rpasskey trial %d/%d (%.0f s)", t + 1, o->trials, util_now() - t0);
    }
    fprintf(stderr, "\n");
    util_aligned_free(first);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    free(filler.s);
    free(text);
}

/* ---------------------------------------------------------- perplexity */

static void run_perplexity(llm_model *m, const struct options *o, struct config *cs, int n_configs)
{
    size_t len;
    char *text = util_read_file(o->text, &len);
    if (!text) {
        fprintf(stderr, "quest_quality: cannot read %s: %s\n", o->text, strerror(errno));
        exit(1);
    }
    const llm_tokenizer *tok = llm_model_tokenizer(m);
    int vocab = llm_model_config(m)->vocab_size;
    int32_t *ids;
    int n = tokenize(tok, text, len, &ids); /* BOS + the text, as `llmd perplexity` */
    free(text);
    int windows = n / o->ctx < o->ppl_windows ? n / o->ctx : o->ppl_windows;
    int head = o->ctx - o->ppl_tail;
    llm_workspace *ws = llm_workspace_create(m, PREFILL_CHUNK);
    float *last = util_aligned_alloc(sizeof(float) * (size_t)vocab);
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)vocab);
    double t0 = util_now();
    for (int w = 0; w < windows; w++) {
        const int32_t *win = ids + (size_t)w * o->ctx;
        attn_seq *seq = prefill(m, ws, win, head, last);
        /* Scored: tokens head+1 .. ctx-1, each predicted by a decode step. */
        for (int c = 0; c < n_configs; c++) {
            for (int p = head; p < o->ctx - 1; p++) {
                decode(m, ws, seq, win[p], &cs[c], logits);
                cs[c].nll += nll_of(logits, vocab, win[p + 1]);
                cs[c].scored++;
            }
            attn_seq_truncate(seq, head);
        }
        attn_seq_free(seq);
        fprintf(stderr, "\rperplexity window %d/%d (%.0f s)", w + 1, windows, util_now() - t0);
    }
    fprintf(stderr, "\n");
    util_aligned_free(last);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    free(ids);
}

/* ---------------------------------------------------------------- main */

/* Pages read over dense in the sparse layers of sparse steps (what the
 * selection chose), and over every layer of every decode step. */
static double read_fraction(const struct config *c)
{
    const struct attn_stats *s = &c->stats;
    return s->sparse_pages_total ? (double)s->sparse_pages_read / (double)s->sparse_pages_total
                                 : 1.0;
}

static double read_fraction_all(const struct config *c)
{
    const struct attn_stats *s = &c->stats;
    return s->pages_total ? (double)s->pages_read / (double)s->pages_total : 1.0;
}

static void report(const struct options *o, const struct config *cs, int n_configs, FILE *tsv)
{
    printf("\n%-7s %7s  %-17s  %-10s  %-12s  %s\n", "mode", "budget", "passkey", "perplexity",
           "read sparse", "read all");
    for (int c = 0; c < n_configs; c++) {
        char pk[32] = "-", ppl[32] = "-";
        if (o->passkey && o->trials > 0)
            snprintf(pk, sizeof pk, "%.3f (%d/%d)", (double)cs[c].correct / o->trials,
                     cs[c].correct, o->trials);
        if (o->ppl && cs[c].scored > 0)
            snprintf(ppl, sizeof ppl, "%.3f", exp(cs[c].nll / (double)cs[c].scored));
        printf("%-7s %7d  %-17s  %-10s  %-12.3f  %.3f\n", mode_name(cs[c].mode), cs[c].budget, pk,
               ppl, read_fraction(&cs[c]), read_fraction_all(&cs[c]));
        if (o->passkey && o->trials > 0)
            fprintf(tsv, "passkey\t%s\t%d\t%.4f\t%d\t%.4f\n", mode_name(cs[c].mode), cs[c].budget,
                    (double)cs[c].correct / o->trials, o->trials, read_fraction(&cs[c]));
        if (o->ppl && cs[c].scored > 0)
            fprintf(tsv, "perplexity\t%s\t%d\t%.4f\t%lld\t%.4f\n", mode_name(cs[c].mode),
                    cs[c].budget, exp(cs[c].nll / (double)cs[c].scored), (long long)cs[c].scored,
                    read_fraction(&cs[c]));
    }
}

int main(int argc, char **argv)
{
    struct options o;
    parse_options(argc, argv, &o);
    struct llm_model_options mo;
    llm_model_options_default(&mo);
    mo.threads = o.threads;
    mo.dense_layers = o.dense_layers;
    mo.kv_sequences = 1;
    char err[512];
    llm_model *m;
    int rc = llm_model_load(o.model, &mo, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "quest_quality: %s\n", err);
        return 1;
    }
    struct config cs[MAX_CONFIGS];
    int n_configs = 0;
    cs[n_configs++] = (struct config){.mode = ATTN_DENSE};
    for (int b = 0; b < o.n_budgets; b++) {
        cs[n_configs++] = (struct config){.mode = ATTN_QUEST, .budget = o.budgets[b]};
        cs[n_configs++] = (struct config){.mode = ATTN_WINDOW, .budget = o.budgets[b]};
    }
    const struct llm_config *c = llm_model_config(m);
    printf(
        "quest_quality: %s (%d layers, %d dense), ctx %d, page %d; passkey %d trials; perplexity "
        "%d windows x last %d tokens of %s\n",
        o.model, c->n_layers, mo.dense_layers, o.ctx, mo.page_size, o.passkey ? o.trials : 0,
        o.ppl ? o.ppl_windows : 0, o.ppl_tail, o.text);
    double t0 = util_now();
    if (o.passkey && o.trials > 0) run_passkey(m, &o, cs, n_configs);
    if (o.ppl && o.ppl_windows > 0) run_perplexity(m, &o, cs, n_configs);
    FILE *tsv = fopen(o.tsv, "w");
    if (!tsv) {
        fprintf(stderr, "quest_quality: cannot write %s: %s\n", o.tsv, strerror(errno));
        llm_model_free(m);
        return 1;
    }
    fprintf(tsv, "test\tmode\tbudget\tvalue\tn\tread_fraction\n");
    report(&o, cs, n_configs, tsv);
    fclose(tsv);
    printf("(%.0f s; TSV in %s. read sparse: pages read over dense in the sparse layers of the\n"
           "decode steps; read all: over every layer and decode step, the dense layers included)\n",
           util_now() - t0, o.tsv);
    llm_model_free(m);
    return 0;
}

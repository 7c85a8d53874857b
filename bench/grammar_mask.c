/*
 * bench/grammar_mask.c: what structured outputs cost per token, against a
 * batch-8 decode step (the goal: masking the 8 sequences of a step costs
 * under 5% of the step).
 *
 *   build/bench/grammar_mask [--model FILE] [--model32k FILE] [--passes N] [--steps N]
 *                            [--prompt N] [--repeat N] [--no-step]
 *
 * Vocabularies: 8000 is models/llmd-20m.gguf's tokenizer (decoded as the
 * engine decodes); 32000 is those 8000 pieces plus the 24000 most frequent
 * words (runs of letters, digits, apostrophes) of models/heldout.txt and
 * calibration.txt, each with a leading space as SentencePiece writes word
 * pieces, then their most frequent prefixes where the words run out.
 *
 * Outputs: a valid JSON instance per schema (a person record, an order, a
 * string-heavy summary, and json_object mode on a tool call), tokenized by
 * the real tokenizer for vocabulary 8000 and by longest match for 32000,
 * walked token by token: each token's llm_grammar_matcher_mask_logits +
 * llm_grammar_matcher_accept is timed. "cold" is the first pass over a freshly
 * compiled grammar (every state new), "warm" the later passes with the same
 * grammar (new matchers, caches kept, as for the n choices of a request or
 * a server that caches compiled grammars). Medians, p99 and means per
 * token.
 *
 * The step: the model loaded as `llmd serve` loads it (its settings:
 * precision atom, int4 head, int4 KV), 8 sequences prefill --prompt tokens,
 * then --steps decode steps at batch 8 are timed (median of --repeat runs).
 * Vocabulary 8000: --model (models/llmd-20m.gguf); 32000: --model32k, by
 * default the 58M shape of bench/peer_model (random weights, vocabulary
 * 32000), written once to /tmp with the peer_model binary next to this one,
 * and quantized once (an Atom copy kept beside it).
 *
 * Timed parts hold /tmp/llmd-bench.lock (flock), as the other benchmarks do.
 * Output: a table, then `name: value` lines.
 */
#include "bench/bench.h"
#include "cli/settings.h"
#include "core/llm.h"
#include "core/grammar.h"
#include "tests/grammar_helpers.h"
#include "util/util.h"

#include <ctype.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#define BIG_VOCAB      32000
#define WORDS_FILES    "models/heldout.txt", "models/calibration.txt"
#define PEER_58M_PATH  "/tmp/llmd-grammar-58m.gguf"
#define PEER_58M_ATOM  "/tmp/llmd-grammar-58m-atom.gguf"
#define BATCH          8
#define GOAL_SHARE     0.05
#define MAX_RUNS       16

/* ----------------------------------------------------------- the schemas */

struct workload {
    const char *name;
    const char *schema; /* NULL: json_object mode */
    const char *instance;
};

static const char person_schema[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"name\":{\"type\":\"string\",\"maxLength\":64},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
    "\"email\":{\"type\":\"string\"},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},"
    "\"city\":{\"type\":\"string\"},\"zip\":{\"type\":\"string\",\"maxLength\":10}},"
    "\"required\":[\"street\",\"city\"],\"additionalProperties\":false},"
    "\"phones\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
    "\"kind\":{\"enum\":[\"home\",\"work\",\"mobile\"]},\"number\":{\"type\":\"string\"}},"
    "\"required\":[\"kind\",\"number\"],\"additionalProperties\":false},\"maxItems\":4},"
    "\"member\":{\"type\":\"boolean\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}},"
    "\"required\":[\"name\",\"age\",\"address\"],\"additionalProperties\":false}";

static const char person_instance[] =
    "{\"name\": \"Margaret Hale\", \"age\": 34, \"address\": {\"street\": \"14 Crampton Terrace\", "
    "\"city\": \"Milton\", \"zip\": \"M1 4TQ\"}, \"email\": \"margaret.hale@example.org\", "
    "\"phones\": [{\"kind\": \"home\", \"number\": \"+44 161 555 0192\"}, {\"kind\": "
    "\"mobile\", \"number\": \"+44 7700 900461\"}], \"member\": true, \"tags\": [\"reader\", "
    "\"north\", \"volunteer\"]}";

static const char order_schema[] =
    "{\"$defs\":{\"line\":{\"type\":\"object\",\"properties\":{"
    "\"sku\":{\"type\":\"string\",\"maxLength\":16},"
    "\"quantity\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1000},"
    "\"price\":{\"type\":\"number\"},\"gift\":{\"type\":\"boolean\"}},"
    "\"required\":[\"sku\",\"quantity\",\"price\"],\"additionalProperties\":false}},"
    "\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"string\",\"format\":\"uuid\"},"
    "\"placed\":{\"type\":\"string\",\"format\":\"date-time\"},"
    "\"status\":{\"enum\":[\"pending\",\"paid\",\"shipped\",\"cancelled\"]},"
    "\"lines\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/line\"},\"minItems\":1},"
    "\"total\":{\"type\":\"number\"},\"note\":{\"type\":[\"string\",\"null\"]}},"
    "\"required\":[\"id\",\"placed\",\"status\",\"lines\",\"total\",\"note\"],"
    "\"additionalProperties\":false}";

static const char order_instance[] =
    "{\"id\": \"3f2b8c1e-9d4a-4e7b-a1c2-5d6e7f809a1b\", \"placed\": \"2024-03-18T09:42:17Z\", "
    "\"status\": \"paid\", \"lines\": [{\"sku\": \"BK-1021\", \"quantity\": 2, \"price\": "
    "12.5}, {\"sku\": \"PN-77\", \"quantity\": 10, \"price\": 0.99, \"gift\": false}, {\"sku\": "
    "\"MAP-UK-3\", \"quantity\": 1, \"price\": 7.25}], \"total\": 42.15, \"note\": null}";

static const char summary_schema[] =
    "{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\",\"maxLength\":80},"
    "\"summary\":{\"type\":\"string\"},\"keywords\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"string\"},\"maxItems\":8},\"sentiment\":{\"enum\":[\"positive\",\"neutral\","
    "\"negative\"]}},\"required\":[\"title\",\"summary\",\"keywords\",\"sentiment\"],"
    "\"additionalProperties\":false}";

static const char summary_instance[] =
    "{\"title\": \"A voyage along the northern coast\", \"summary\": \"The narrator leaves the "
    "harbour at dawn with a small crew and a borrowed chart. Storms keep them in a fishing "
    "village for a week, where an old pilot tells them of the channel that the maps do not "
    "show. They find it, lose a mast on the rocks, and come home late in the autumn with more "
    "stories than cargo, wiser about the sea and about one another.\", \"keywords\": "
    "[\"voyage\", \"coast\", \"storm\", \"village\", \"pilot\"], \"sentiment\": \"positive\"}";

static const char tool_instance[] =
    "{\"name\": \"search_flights\", \"arguments\": {\"from\": \"LHR\", \"to\": \"JFK\", "
    "\"date\": \"2024-07-01\", \"passengers\": {\"adults\": 2, \"children\": 1}, \"cabin\": "
    "\"economy\", \"flexible\": true, \"max_price\": 850.0, \"airlines\": [\"BA\", \"VS\", "
    "\"AA\"]}}";

static const struct workload workloads[] = {
    {"person", person_schema, person_instance},
    {"order", order_schema, order_instance},
    {"summary", summary_schema, summary_instance},
    {"json_object", NULL, tool_instance},
};
#define N_WORKLOADS (int)(sizeof workloads / sizeof *workloads)

/* ------------------------------------------------------ vocabulary 32000 */

struct word {
    char *text; /* with its leading space */
    int count;
};

static bool is_word_byte(unsigned char c)
{
    return isalnum(c) || c == '\'' || c >= 0x80;
}

static int word_cmp(const void *a, const void *b)
{
    const struct word *x = a, *y = b;
    if (x->count != y->count) return y->count - x->count;
    return strcmp(x->text, y->text);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Counts each distinct key (sorted array of strings) into words. */
static int count_sorted(char **keys, int n, struct word *words)
{
    qsort(keys, (size_t)n, sizeof *keys, str_cmp);
    int w = 0;
    for (int i = 0; i < n;) {
        int j = i + 1;
        while (j < n && !strcmp(keys[i], keys[j])) j++;
        words[w++] = (struct word){keys[i], j - i};
        for (int k = i + 1; k < j; k++) free(keys[k]);
        i = j;
    }
    return w;
}

/* Vocabulary 8000 plus the most frequent " word"s (then " word-prefix"es)
 * not already in it, up to BIG_VOCAB tokens. */
static struct gh_vocab big_vocab(const struct gh_vocab *base, int *n_words_out)
{
    const char *files[] = {WORDS_FILES};
    int cap = 1 << 20, n = 0, np = 0;
    char **keys = util_xmalloc((size_t)cap * sizeof *keys);
    char **prefixes = util_xmalloc((size_t)cap * 4 * sizeof *prefixes);
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        size_t len;
        char *text = util_read_file(files[f], &len);
        if (!text) util_die("grammar_mask: cannot read %s", files[f]);
        /* words are runs of letters, digits and apostrophes: SentencePiece
         * pieces seldom join letters and punctuation */
        for (size_t i = 0; i < len;) {
            while (i < len && !is_word_byte((unsigned char)text[i])) i++;
            size_t j = i;
            while (j < len && is_word_byte((unsigned char)text[j])) j++;
            if (j > i && j - i < 32 && n < cap) {
                char *w = util_xmalloc(j - i + 2);
                w[0] = ' ';
                memcpy(w + 1, text + i, j - i);
                w[j - i + 1] = '\0';
                keys[n++] = w;
                for (size_t p = 3; p < j - i && np < 4 * cap; p++) { /* " wo", " wor", ... */
                    char *q = util_xmalloc(p + 2);
                    memcpy(q, w, p + 1);
                    q[p + 1] = '\0';
                    prefixes[np++] = q;
                }
            }
            i = j;
        }
        free(text);
    }
    struct word *words = util_xmalloc((size_t)(n + np) * sizeof *words);
    int nw = count_sorted(keys, n, words);
    qsort(words, (size_t)nw, sizeof *words, word_cmp);
    struct word *pw = util_xmalloc((size_t)np * sizeof *pw);
    int npw = count_sorted(prefixes, np, pw);
    qsort(pw, (size_t)npw, sizeof *pw, word_cmp);

    int total = BIG_VOCAB, have = base->n;
    struct llm_grammar_token *t = util_xcalloc((size_t)total, sizeof *t);
    for (int i = 0; i < base->n; i++)
        t[i] = (struct llm_grammar_token){base->texts[i], base->lens[i], base->space_first[i]};
    /* skip texts the vocabulary has already */
    char **seen = util_xmalloc((size_t)total * sizeof *seen);
    int n_seen = 0;
    for (int i = 0; i < base->n; i++)
        if (base->texts[i]) seen[n_seen++] = base->texts[i];
    qsort(seen, (size_t)n_seen, sizeof *seen, str_cmp);
    int n_words = 0;
    for (int pass = 0; pass < 2 && have < total; pass++) {
        struct word *list = pass ? pw : words;
        int count = pass ? npw : nw;
        for (int i = 0; i < count && have < total; i++) {
            if (bsearch(&list[i].text, seen, (size_t)n_seen, sizeof *seen, str_cmp)) continue;
            t[have++] = (struct llm_grammar_token){list[i].text, (int)strlen(list[i].text), true};
            n_words += pass == 0;
        }
        /* the prefixes may repeat the words just added */
        n_seen = 0;
        for (int i = 0; i < have; i++)
            if (t[i].text) seen[n_seen++] = (char *)t[i].text;
        qsort(seen, (size_t)n_seen, sizeof *seen, str_cmp);
    }
    if (have < total) util_die("grammar_mask: only %d distinct words and prefixes", have);
    struct gh_vocab v = gh_vocab_make(t, total, base->eos);
    for (int i = 0; i < nw; i++) free(words[i].text);
    for (int i = 0; i < npw; i++) free(pw[i].text);
    free(words);
    free(pw);
    free(keys);
    free(prefixes);
    free(seen);
    free(t);
    *n_words_out = n_words;
    return v;
}

/* Longest-match tokenization of " " + text (the dummy prefix, which the
 * first token loses): at each place the longest token text that matches,
 * preferring a space_first token for the first. */
static int32_t *longest_match(const struct gh_vocab *v, const char *text, int *n_out)
{
    size_t len = strlen(text) + 1;
    char *s = util_xmalloc(len + 1);
    s[0] = ' ';
    memcpy(s + 1, text, len);
    int32_t *ids = util_xmalloc(len * sizeof *ids);
    int n = 0;
    for (size_t at = 0; at < len;) {
        int best = -1, best_len = 0;
        for (int t = 0; t < v->n; t++) {
            int l = v->lens[t];
            if (!v->texts[t] || l == 0 || l < best_len || at + (size_t)l > len) continue;
            if (memcmp(s + at, v->texts[t], (size_t)l)) continue;
            if (l > best_len || (at == 0 && v->space_first[t] && !v->space_first[best]))
                best = t, best_len = l;
        }
        if (best < 0) util_die("grammar_mask: no token for byte 0x%02x", (unsigned char)s[at]);
        ids[n++] = best;
        at += (size_t)best_len;
    }
    free(s);
    *n_out = n;
    return ids;
}

/* ------------------------------------------------------------- masking */

struct timing {
    double cold_med, cold_p99, cold_mean;
    double warm_med, warm_p99, warm_mean;
    int tokens;
    double allowed_mean; /* tokens allowed per step, over the warm passes */
};

static double percentile(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

static double mean(const double *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return s / n;
}

/* One pass of the token sequence through a new matcher of g: per-token
 * seconds of mask + accept into t[]. */
static void timed_pass(llm_grammar *g, const struct gh_vocab *v, const int32_t *ids, int n,
                       const float *fresh, float *logits, double *t, double *allowed)
{
    llm_grammar_matcher *m = llm_grammar_matcher_create(g, v->v);
    for (int i = 0; i <= n; i++) {
        int32_t token = i < n ? ids[i] : v->eos;
        memcpy(logits, fresh, (size_t)v->n * sizeof *logits);
        double t0 = util_now();
        int k = llm_grammar_matcher_mask_logits(m, logits);
        int rc = llm_grammar_matcher_accept(m, token);
        t[i] = util_now() - t0;
        if (rc || logits[token] == -INFINITY)
            util_die("grammar_mask: token %d (#%d of %d) refused", token, i, n);
        *allowed += k;
    }
    llm_grammar_matcher_free(m);
}

static llm_grammar *compile_workload(const struct workload *w)
{
    llm_grammar *g = NULL;
    char err[512];
    if (!w->schema) {
        UTIL_CHECK(llm_grammar_compile_json_object(&g) == 0);
        return g;
    }
    json_error_t jerr;
    json_t *schema = json_loads(w->schema, 0, &jerr);
    if (!schema) util_die("grammar_mask: %s: %s", w->name, jerr.text);
    if (llm_grammar_compile_json_schema(schema, &g, err, sizeof err))
        util_die("grammar_mask: %s: %s", w->name, err);
    json_decref(schema);
    return g;
}

static struct timing time_workload(const struct workload *w, const struct gh_vocab *v,
                                   const int32_t *ids, int n, int passes)
{
    struct timing r = {.tokens = n + 1};
    float *fresh = util_xmalloc((size_t)v->n * sizeof *fresh), *logits =
                                                                    util_xmalloc((size_t)v->n * sizeof *logits);
    struct util_rng rng;
    util_rng_seed(&rng, 5);
    for (int i = 0; i < v->n; i++) fresh[i] = (float)util_rng_normal(&rng);
    double *cold = util_xmalloc((size_t)(n + 1) * sizeof *cold);
    double *warm = util_xmalloc((size_t)(n + 1) * (size_t)passes * sizeof *warm);
    double allowed = 0;
    llm_grammar *g = compile_workload(w);
    timed_pass(g, v, ids, n, fresh, logits, cold, &allowed);
    allowed = 0;
    for (int p = 0; p < passes; p++)
        timed_pass(g, v, ids, n, fresh, logits, warm + (size_t)p * (n + 1), &allowed);
    llm_grammar_unref(g);
    r.cold_mean = mean(cold, n + 1);
    r.cold_med = percentile(cold, n + 1, 0.5);
    r.cold_p99 = percentile(cold, n + 1, 0.99);
    r.warm_mean = mean(warm, (n + 1) * passes);
    r.warm_med = percentile(warm, (n + 1) * passes, 0.5);
    r.warm_p99 = percentile(warm, (n + 1) * passes, 0.99);
    r.allowed_mean = allowed / ((n + 1) * passes);
    free(fresh);
    free(logits);
    free(cold);
    free(warm);
    return r;
}

/* --------------------------------------------------------------- steps */

struct step_result {
    double step_s; /* median seconds of a batch-8 decode step */
    int vocab;
    char what[160];
};

/* Loads path as serve does (saving an Atom copy at save_path when given and
 * absent, and loading that instead later), then times batch-8 decode
 * steps. */
static int time_steps(const char *path, const char *save_path, int prompt, int steps, int repeat,
                      int lock_fd, struct step_result *out)
{
    struct srv_config sc;
    cmd_settings_init(&sc);
    char err[512];
    const char *argv[] = {"serve", NULL};
    if (cmd_settings_load(&sc, 1, (char **)argv, err, sizeof err))
        util_die("grammar_mask: serve's settings: %s", err);
    struct llm_model_options o;
    srv_config_model_options(&sc, &o);
    struct stat st;
    const char *load = save_path && stat(save_path, &st) == 0 ? save_path : path;
    llm_model *model;
    double t0 = util_now();
    if (llm_model_load(load, &o, &model, err, sizeof err)) {
        fprintf(stderr, "grammar_mask: cannot load %s: %s\n", load, err);
        cmd_settings_free(&sc);
        return -1;
    }
    double load_s = util_now() - t0;
    if (save_path && load == path && !llm_model_prequantized(model))
        if (llm_model_save_quantized(model, path, save_path, err, sizeof err))
            fprintf(stderr, "grammar_mask: not saved (%s); it will be quantized again\n", err);
    const struct llm_config *cfg = llm_model_config(model);
    llm_workspace *ws = llm_workspace_create(model, BATCH * prompt > sc.max_step_tokens
                                                       ? BATCH * prompt
                                                       : sc.max_step_tokens);
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)BATCH * prompt * cfg->vocab_size);
    struct util_rng rng;
    util_rng_seed(&rng, 3);
    double runs[MAX_RUNS];
    flock(lock_fd, LOCK_EX);
    for (int r = 0; r < repeat; r++) {
        attn_seq *seqs[BATCH];
        int32_t next[BATCH];
        int32_t *tokens = util_xmalloc(sizeof(int32_t) * (size_t)prompt);
        struct llm_batch_item items[BATCH];
        for (int b = 0; b < BATCH; b++) {
            seqs[b] = attn_seq_create(llm_model_kv_cache(model));
            for (int i = 0; i < prompt; i++)
                tokens[i] = 3 + (int32_t)(util_rng_next(&rng) % (uint64_t)(cfg->vocab_size - 3));
            struct llm_batch_item it = {.kv = seqs[b], .tokens = tokens, .n_tokens = prompt};
            UTIL_CHECK(llm_forward(model, ws, &it, 1, logits, NULL) == 0);
            next[b] = tokens[prompt - 1];
        }
        double *t = util_xmalloc(sizeof(double) * (size_t)steps);
        for (int s = 0; s < steps; s++) {
            for (int b = 0; b < BATCH; b++)
                items[b] = (struct llm_batch_item){.kv = seqs[b], .tokens = &next[b], .n_tokens = 1,
                                                   .quest_budget = sc.quest_budget};
            double s0 = util_now();
            UTIL_CHECK(llm_forward(model, ws, items, BATCH, logits, NULL) == 0);
            t[s] = util_now() - s0;
            for (int b = 0; b < BATCH; b++) { /* greedy, so that the steps do real work */
                const float *row = logits + (size_t)b * cfg->vocab_size;
                int32_t best = 0;
                for (int v = 1; v < cfg->vocab_size; v++)
                    if (row[v] > row[best]) best = v;
                next[b] = best;
            }
        }
        runs[r] = bench_median(t, steps);
        free(t);
        free(tokens);
        for (int b = 0; b < BATCH; b++) attn_seq_free(seqs[b]);
    }
    flock(lock_fd, LOCK_UN);
    out->step_s = bench_median(runs, repeat);
    out->vocab = cfg->vocab_size;
    snprintf(out->what, sizeof out->what, "%s, %s, head %s, KV %s, loaded in %.1f s", load,
             llm_precision_name(llm_model_precision(model)), sc.head, sc.kv_type, load_s);
    util_aligned_free(logits);
    llm_workspace_free(ws);
    llm_model_free(model);
    cmd_settings_free(&sc);
    return 0;
}

/* Writes the 58M peer model with bench/peer_model (next to this program)
 * unless it is there. */
static const char *peer_58m(const char *argv0)
{
    struct stat st;
    if (stat(PEER_58M_PATH, &st) == 0) return PEER_58M_PATH;
    char self[PATH_MAX], cmd[PATH_MAX + 128];
    snprintf(self, sizeof self, "%s", argv0);
    snprintf(cmd, sizeof cmd, "%s/peer_model --shape 58m --out %s >&2", dirname(self),
             PEER_58M_PATH);
    fprintf(stderr, "grammar_mask: %s\n", cmd);
    if (system(cmd) != 0 || stat(PEER_58M_PATH, &st) != 0) return NULL;
    return PEER_58M_PATH;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: grammar_mask [--model FILE] [--model32k FILE] [--passes N] [--steps N]\n"
               "                    [--prompt N] [--repeat N] [--no-step]\n");
}

int main(int argc, char **argv)
{
    const char *model = "models/llmd-20m.gguf", *model32k = NULL;
    int passes = 5, steps = 32, prompt = 64, repeat = 3;
    bool do_steps = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-step")) {
            do_steps = false;
            continue;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(argv[i - 1], "--model"))
            model = v;
        else if (!strcmp(argv[i - 1], "--model32k"))
            model32k = v;
        else if (!strcmp(argv[i - 1], "--passes"))
            passes = atoi(v);
        else if (!strcmp(argv[i - 1], "--steps"))
            steps = atoi(v);
        else if (!strcmp(argv[i - 1], "--prompt"))
            prompt = atoi(v);
        else if (!strcmp(argv[i - 1], "--repeat"))
            repeat = atoi(v);
        else {
            usage(stderr);
            return 2;
        }
    }
    if (passes < 1 || steps < 1 || prompt < 1 || repeat < 1 || repeat > MAX_RUNS) {
        usage(stderr);
        return 2;
    }
    int lock_fd = open("/tmp/llmd-bench.lock", O_RDWR | O_CREAT, 0666);
    if (lock_fd < 0) util_die("grammar_mask: cannot open /tmp/llmd-bench.lock");

    char err[512];
    llm_gguf *gguf;
    llm_tokenizer *tok;
    if (llm_gguf_open(model, &gguf, err, sizeof err) ||
        llm_tokenizer_load(gguf, &tok, err, sizeof err))
        util_die("grammar_mask: %s (run from the repository root)", err);
    struct gh_vocab vocabs[2];
    vocabs[0] = gh_tokenizer_vocab(tok);
    int n_words;
    vocabs[1] = big_vocab(&vocabs[0], &n_words);

    printf("# grammar masks per token against a batch-%d decode step\n", BATCH);
    printf("# cpu: %s [%s]\n", util_cpu_model_name(), util_cpu_flags_string());
    printf("# vocab %d: %s's tokenizer; vocab %d: those pieces + %d frequent words of "
           "models/heldout.txt and calibration.txt with a leading space + %d word prefixes\n",
           vocabs[0].n, model, vocabs[1].n, n_words, vocabs[1].n - vocabs[0].n - n_words);
    printf("# per token = llm_grammar_matcher_mask_logits + llm_grammar_matcher_accept; cold = first pass of "
           "a new grammar, warm = %d more passes with the grammar's caches kept\n", passes);
    printf("%-6s %-12s %6s %8s | %10s %10s %10s | %10s %10s %10s\n", "vocab", "schema", "tokens",
           "allowed", "cold p50", "cold p99", "cold mean", "warm p50", "warm p99", "warm mean");

    double cold_sum[2] = {0}, warm_sum[2] = {0}, warm_p99_max[2] = {0};
    int tok_sum[2] = {0};
    flock(lock_fd, LOCK_EX);
    for (int vi = 0; vi < 2; vi++)
        for (int w = 0; w < N_WORKLOADS; w++) {
            int n;
            int32_t *ids;
            if (vi == 0) {
                const char *text = workloads[w].instance;
                n = llm_tokenize(tok, text, strlen(text), false, NULL, 0);
                ids = util_xmalloc(sizeof(int32_t) * (size_t)n);
                UTIL_CHECK(llm_tokenize(tok, text, strlen(text), false, ids, n) == n);
            } else {
                ids = longest_match(&vocabs[1], workloads[w].instance, &n);
            }
            struct timing r = time_workload(&workloads[w], &vocabs[vi], ids, n, passes);
            printf("%-6d %-12s %6d %8.0f | %8.2fus %8.2fus %8.2fus | %8.2fus %8.2fus %8.2fus\n",
                   vocabs[vi].n, workloads[w].name, r.tokens, r.allowed_mean, r.cold_med * 1e6,
                   r.cold_p99 * 1e6, r.cold_mean * 1e6, r.warm_med * 1e6, r.warm_p99 * 1e6,
                   r.warm_mean * 1e6);
            fflush(stdout);
            cold_sum[vi] += r.cold_mean * r.tokens;
            warm_sum[vi] += r.warm_mean * r.tokens;
            tok_sum[vi] += r.tokens;
            if (r.warm_p99 > warm_p99_max[vi]) warm_p99_max[vi] = r.warm_p99;
            free(ids);
        }
    flock(lock_fd, LOCK_UN);

    struct step_result step[2] = {{0}};
    bool have_step[2] = {false, false};
    if (do_steps) {
        have_step[0] = time_steps(model, NULL, prompt, steps, repeat, lock_fd, &step[0]) == 0;
        const char *big = model32k ? model32k : peer_58m(argv[0]);
        if (big)
            have_step[1] = time_steps(big, model32k ? NULL : PEER_58M_ATOM, prompt, steps, repeat,
                                      lock_fd, &step[1]) == 0;
        else
            fprintf(stderr, "grammar_mask: no 32000-vocabulary model (give --model32k)\n");
    }
    printf("\n%-6s %12s %14s %14s %12s %12s  %s\n", "vocab", "step b8", "8 masks warm",
           "8 masks cold", "share warm", "share cold", "model");
    char summary[4096];
    size_t used = 0;
    for (int vi = 0; vi < 2; vi++) {
        double warm = warm_sum[vi] / tok_sum[vi], cold = cold_sum[vi] / tok_sum[vi];
        int vn = vocabs[vi].n;
        used += (size_t)snprintf(summary + used, sizeof summary - used,
                                 "mask_us_warm_mean_v%d: %.2f\nmask_us_warm_p99_v%d: %.2f\n"
                                 "mask_us_cold_mean_v%d: %.2f\n",
                                 vn, warm * 1e6, vn, warm_p99_max[vi] * 1e6, vn, cold * 1e6);
        if (!have_step[vi]) {
            printf("%-6d %12s %12.1fus %12.1fus %12s %12s  (no step measured)\n", vn, "-",
                   BATCH * warm * 1e6, BATCH * cold * 1e6, "-", "-");
            continue;
        }
        if (step[vi].vocab != vn)
            printf("# note: the step's model has vocabulary %d\n", step[vi].vocab);
        double sw = BATCH * warm / step[vi].step_s, scold = BATCH * cold / step[vi].step_s;
        printf("%-6d %10.2fms %12.1fus %12.1fus %11.2f%% %11.2f%%  %s\n", vn,
               step[vi].step_s * 1e3, BATCH * warm * 1e6, BATCH * cold * 1e6, 100 * sw,
               100 * scold, step[vi].what);
        used += (size_t)snprintf(summary + used, sizeof summary - used,
                                 "step_ms_b8_v%d: %.3f\nmask_share_b8_warm_v%d: %.4f\n"
                                 "mask_share_b8_cold_v%d: %.4f\nmask_goal_met_v%d: %s\n",
                                 vn, step[vi].step_s * 1e3, vn, sw, vn, scold, vn,
                                 sw < GOAL_SHARE ? "yes" : "no");
    }
    printf("# share = %d sequences' mask+accept per token (mean over the workloads' tokens) / "
           "one batch-%d decode step (median); goal < %.0f%%\n",
           BATCH, BATCH, 100 * GOAL_SHARE);
    fputs(summary, stdout);
    for (int vi = 0; vi < 2; vi++) gh_vocab_free(&vocabs[vi]);
    llm_tokenizer_free(tok);
    llm_gguf_close(gguf);
    close(lock_fd);
    return 0;
}

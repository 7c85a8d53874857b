/*
 * commands.c: llmd's offline subcommands: generate, perplexity, passkey,
 * tokenize. They share the model flags (precision, KV type, Quest budget,
 * threads) so that every path can be measured from the command line.
 */
#include "cli/commands.h"

#include "cli/passkey.h"
#include "cli/pim_llm.h"
#include "cli/settings.h"
#include "core/llm.h"
#include "server/pim_json.h"
#include "util/util.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ model flags */

enum {
    OPT_HELP = 256,
    /* per command */
    OPT_PROMPT,
    OPT_N,
    OPT_TEMPERATURE,
    OPT_TOP_K,
    OPT_TOP_P,
    OPT_MIN_P,
    OPT_SEED,
    OPT_REPEAT_PENALTY,
    OPT_PRESENCE_PENALTY,
    OPT_FREQUENCY_PENALTY,
    OPT_STOP,
    OPT_IDS,
    OPT_NO_BOS,
    OPT_FILE,
    OPT_CTX,
    OPT_MAX_TOKENS,
    OPT_BATCH,
    OPT_TRIALS,
    OPT_BOS,
    OPT_OUTPUT,
    OPT_DEPTH,
    OPT_OUT,
    OPT_PIM_LAYERS,
    OPT_PIM_DEVICE,
    OPT_PIM_DATAFLOW,
};

/* The model settings come from the one table (cli/settings.c), in its order:
 * defaults < config file < LLMD_* < flags. One command runs per process, so
 * they live here for its whole life. */
static struct srv_config settings;

struct model_flags {
    const char *path;
    struct llm_model_options options;
    int kv_sequences; /* full contexts the KV pool holds when kv_pages is 0 */
    int quest_budget;
    bool precision_given; /* --precision was on the command line */
    bool failed;          /* the config file or a variable was refused (message printed) */
};

/* Defaults, then the config file and the LLMD_* variables; the flags follow
 * in the command's getopt loop (parse_model_flag). */
static void model_flags_init(struct model_flags *f, int argc, char **argv)
{
    memset(f, 0, sizeof *f);
    struct llm_model_options defaults;
    llm_model_options_default(&defaults);
    f->kv_sequences = defaults.kv_sequences;
    cmd_settings_init(&settings);
    bool help = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) help = true;
        if (strcmp(argv[i], "--precision") == 0 || strncmp(argv[i], "--precision=", 12) == 0)
            f->precision_given = true;
    }
    char err[512];
    if (!help && cmd_settings_apply_file_and_env(&settings, argc, argv, err, sizeof err)) {
        fprintf(stderr, "llmd %s: %s\n", argv[0], err);
        f->failed = true;
    }
}

/* After the flags: checks the settings together and maps them to the model's
 * options. False (message printed) when they do not fit. */
static bool model_flags_finish(struct model_flags *f)
{
    char err[512];
    if (cmd_settings_validate(&settings, err, sizeof err)) {
        fprintf(stderr, "llmd: %s\n", err);
        return false;
    }
    srv_config_model_options(&settings, &f->options);
    f->options.kv_sequences = f->kv_sequences; /* serve's is max_running */
    f->path = settings.model;
    f->quest_budget = settings.quest_budget;
    return true;
}

static void print_model_help(void)
{
    printf("Model settings (defaults < %s or --config FILE < LLMD_* variables < flags):\n"
           "  %-36s JSON settings file (llmd serve reads the same)\n",
           CMD_SETTINGS_DEFAULT_PATH, "--config FILE");
    cmd_settings_print_help(stdout, CMD_SETTINGS_GROUP_MODEL);
    printf("  %-36s this text\n", "--help");
}

static bool parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* Returns 1 when `opt` was a model setting (applied), 0 when it is not one,
 * -1 on a bad value (message printed). */
static int parse_model_flag(int opt, const char *arg)
{
    if (opt < CMD_SETTINGS_OPT_BASE) return 0;
    char err[512];
    if (cmd_settings_apply_option(&settings, opt, arg, err, sizeof err)) {
        fprintf(stderr, "llmd: %s\n", err);
        return -1;
    }
    return 1;
}

/* A command's own options, --help, and the model settings, for getopt_long.
 * Free with cmd_settings_free_options. */
static struct option *join_options(const struct option *own, size_t n_own)
{
    struct option *with_help = util_xcalloc(n_own + 1, sizeof *with_help);
    memcpy(with_help, own, n_own * sizeof *own);
    with_help[n_own] = (struct option){"help", no_argument, 0, OPT_HELP};
    struct option *all = cmd_settings_options(with_help, n_own + 1, CMD_SETTINGS_GROUP_MODEL);
    free(with_help);
    return all;
}

static void print_progress(const char *what, double fraction, void *ctx)
{
    (void)ctx;
    if (!isatty(STDERR_FILENO) && fraction < 1.0) return;
    fprintf(stderr, "\r%s: %3.0f%%%s", what, 100.0 * fraction, fraction >= 1.0 ? "\n" : "");
}

static llm_model *load_model(struct model_flags *f)
{
    if (!model_flags_finish(f)) return NULL;
    f->options.progress = print_progress;
    llm_model *model;
    char err[512];
    int rc = llm_model_load(f->path, &f->options, &model, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llmd: cannot load model: %s\n", err);
        return NULL;
    }
    const struct llm_config *c = llm_model_config(model);
    fprintf(stderr,
            "llmd: %s: %d layers, width %d, %d/%d heads, FFN %d, vocab %d, context %d; %s, KV %s\n",
            llm_model_name(model), c->n_layers, c->dim, c->n_heads, c->n_kv_heads, c->ffn_dim,
            c->vocab_size, c->ctx_len, llm_precision_name(llm_model_precision(model)),
            attn_kv_type_name(f->options.kv_type));
    if (llm_model_prequantized(model) && f->precision_given &&
        llm_model_precision(model) != f->options.precision)
        fprintf(stderr, "llmd: %s is quantized (%s): --precision %s does not apply\n", f->path,
                llm_precision_name(llm_model_precision(model)),
                llm_precision_name(f->options.precision));
    fprintf(stderr, "llmd: cpu %s [%s]; OpenBLAS %s kernels\n", util_cpu_model_name(),
            util_cpu_flags_string(), util_blas_corename());
    return model;
}

/* Tokenizes text into a new array; returns the count or a negative error. */
static int tokenize_all(const llm_tokenizer *tok, const char *text, size_t len, bool bos,
                        int32_t **out)
{
    int cap = (int)(len < 64 ? 64 : len + 2);
    int32_t *ids = util_xmalloc(sizeof(int32_t) * (size_t)cap);
    int n = llm_tokenize(tok, text, len, bos, ids, cap);
    if (n > cap) {
        ids = util_xrealloc(ids, sizeof(int32_t) * (size_t)n);
        n = llm_tokenize(tok, text, len, bos, ids, n);
    }
    if (n < 0) {
        free(ids);
        return n;
    }
    *out = ids;
    return n;
}

/* --------------------------------------------------------------- generate */

struct generate_run {
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    bool done;
    bool print_ids;
    int32_t *ids;
    int n_ids;
    struct llm_event final;
};

static void generate_on_event(const struct llm_event *ev, void *ctx)
{
    struct generate_run *run = ctx;
    if (ev->type == LLM_EVENT_TOKEN) {
        fwrite(ev->text, 1, (size_t)ev->text_len, stdout);
        fflush(stdout);
        run->ids = util_xrealloc(run->ids, sizeof(int32_t) * (size_t)(run->n_ids + 1));
        run->ids[run->n_ids++] = ev->token;
        return;
    }
    pthread_mutex_lock(&run->lock);
    run->final = *ev;
    run->done = true;
    pthread_cond_signal(&run->done_cond);
    pthread_mutex_unlock(&run->lock);
}

static const char generate_help[] =
    "Usage: llmd generate [--model FILE] --prompt TEXT [-n N] [sampling options] [--ids]\n"
    "Generates text for a prompt and prints it, then tokens/s on stderr.\n\n"
    "  --prompt TEXT           the prompt\n"
    "  -n, --max-tokens N      tokens to generate (default 64)\n"
    "  --temperature T         0 = greedy (default 0)\n"
    "  --top-k K, --top-p P, --min-p P   truncation (defaults off)\n"
    "  --seed S                random seed (default 0); the same seed gives the same text\n"
    "  --repeat-penalty R, --presence-penalty P, --frequency-penalty F\n"
    "  --stop TEXT             stop string (repeatable, up to 8)\n"
    "  --ids                   also print the generated token ids\n"
    "  --no-bos                do not prepend the BOS token\n\n";

int cmd_generate(int argc, char **argv)
{
    static const struct option own[] = {
        {"prompt", required_argument, 0, OPT_PROMPT},
        {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, OPT_TEMPERATURE},
        {"top-k", required_argument, 0, OPT_TOP_K},
        {"top-p", required_argument, 0, OPT_TOP_P},
        {"min-p", required_argument, 0, OPT_MIN_P},
        {"seed", required_argument, 0, OPT_SEED},
        {"repeat-penalty", required_argument, 0, OPT_REPEAT_PENALTY},
        {"presence-penalty", required_argument, 0, OPT_PRESENCE_PENALTY},
        {"frequency-penalty", required_argument, 0, OPT_FREQUENCY_PENALTY},
        {"stop", required_argument, 0, OPT_STOP},
        {"ids", no_argument, 0, OPT_IDS},
        {"no-bos", no_argument, 0, OPT_NO_BOS},
    };
    struct option *options = join_options(own, sizeof own / sizeof own[0]);
    struct model_flags mf;
    model_flags_init(&mf, argc, argv);
    struct llm_request req;
    llm_request_init(&req);
    req.max_tokens = 64;
    const char *prompt = NULL;
    bool bos = true, print_ids = false;
    int opt, rc = 2, seed = 0;
    bool ok = !mf.failed;
    optind = 1;
    while (ok && (opt = getopt_long(argc, argv, "n:", options, NULL)) != -1) {
        struct llm_sampling *s = &req.sampling;
        switch (opt) {
        case OPT_PROMPT:
            prompt = optarg;
            break;
        case 'n':
            ok = parse_int(optarg, 1, 1 << 20, &req.max_tokens);
            break;
        case OPT_TEMPERATURE:
            ok = parse_float(optarg, 0, 100, &s->temperature);
            break;
        case OPT_TOP_K:
            ok = parse_int(optarg, 0, 1 << 20, &s->top_k);
            break;
        case OPT_TOP_P:
            ok = parse_float(optarg, 1e-6f, 1, &s->top_p);
            break;
        case OPT_MIN_P:
            ok = parse_float(optarg, 0, 1, &s->min_p);
            break;
        case OPT_SEED:
            ok = parse_int(optarg, 0, 2147483647, &seed);
            break;
        case OPT_REPEAT_PENALTY:
            ok = parse_float(optarg, 1e-3f, 100, &s->repetition_penalty);
            break;
        case OPT_PRESENCE_PENALTY:
            ok = parse_float(optarg, -2, 2, &s->presence_penalty);
            break;
        case OPT_FREQUENCY_PENALTY:
            ok = parse_float(optarg, -2, 2, &s->frequency_penalty);
            break;
        case OPT_STOP:
            if (req.n_stop == LLM_MAX_STOP || !optarg[0])
                ok = false;
            else
                req.stop[req.n_stop++] = util_xstrdup(optarg);
            break;
        case OPT_IDS:
            print_ids = true;
            break;
        case OPT_NO_BOS:
            bos = false;
            break;
        case OPT_HELP:
            printf("%s", generate_help);
            print_model_help();
            rc = 0;
            goto out;
        default: {
            int r = parse_model_flag(opt, optarg);
            if (r <= 0) ok = false;
        }
        }
        if (!ok && opt != '?') fprintf(stderr, "llmd generate: bad value for an option\n");
    }
    if (!ok || !prompt || optind != argc) {
        if (ok)
            fprintf(stderr, "llmd generate: %s\n",
                    prompt ? "unexpected argument" : "--prompt is required");
        fprintf(stderr, "see llmd generate --help\n");
        goto out;
    }
    req.sampling.seed = (uint64_t)seed;

    llm_model *model = load_model(&mf);
    if (!model) {
        rc = 1;
        goto out;
    }
    const llm_tokenizer *tok = llm_model_tokenizer(model);
    int n =
        tokenize_all(tok, prompt, strlen(prompt), bos && llm_tokenizer_add_bos(tok), &req.prompt);
    if (n <= 0) {
        fprintf(stderr, "llmd generate: the prompt gives no tokens\n");
        llm_model_free(model);
        rc = 2;
        goto out;
    }
    req.n_prompt = n;

    struct generate_run run = {.print_ids = print_ids};
    pthread_mutex_init(&run.lock, NULL);
    pthread_cond_init(&run.done_cond, NULL);
    struct llm_engine_config ec;
    llm_engine_config_default(&ec);
    ec.quest_budget = mf.quest_budget;
    llm_engine *engine = NULL;
    uint64_t id;
    rc = llm_engine_create(model, &ec, generate_on_event, &run, &engine);
    if (rc == 0) rc = llm_engine_submit(engine, &req, &id);
    if (rc) {
        fprintf(stderr, "llmd generate: %s\n",
                rc == -EINVAL ? "the prompt is longer than the context" : util_strerror(rc));
        if (engine) llm_engine_shutdown(engine, 0);
        llm_model_free(model);
        rc = 2;
        goto out;
    }
    pthread_mutex_lock(&run.lock);
    while (!run.done) pthread_cond_wait(&run.done_cond, &run.lock);
    pthread_mutex_unlock(&run.lock);
    llm_engine_shutdown(engine, 0);
    printf("\n");
    if (print_ids) {
        for (int i = 0; i < run.n_ids; i++) printf("%s%d", i ? " " : "", run.ids[i]);
        printf("\n");
    }
    const struct llm_event *f = &run.final;
    double decode_s = f->total_s - f->first_token_s;
    fprintf(stderr,
            "llmd: prompt %d tokens in %.3f s (%.1f tokens/s); generated %d tokens, %.1f tokens/s; "
            "finish %s\n",
            f->prompt_tokens, f->first_token_s,
            f->prompt_tokens / (f->first_token_s > 0 ? f->first_token_s : 1e-9),
            f->completion_tokens,
            f->completion_tokens > 1 ? (f->completion_tokens - 1) / (decode_s > 0 ? decode_s : 1e-9)
                                     : 0.0,
            llm_finish_name(f->finish));
    free(run.ids);
    pthread_mutex_destroy(&run.lock);
    pthread_cond_destroy(&run.done_cond);
    llm_model_free(model);
    rc = 0;
out:
    free(req.prompt);
    for (int i = 0; i < req.n_stop; i++) free(req.stop[i]);
    cmd_settings_free_options(options);
    return rc;
}

/* ------------------------------------------------------------- perplexity */

/* Negative log-likelihood of tokens[1..n) given their prefixes, in one
 * fresh sequence: the first `dense_prefix` tokens go through prefill in
 * chunks, the rest one at a time (decode, where Quest applies). */
static int score_window(llm_model *model, llm_workspace *ws, int chunk, const int32_t *tokens,
                        int n, int dense_prefix, int quest_budget, double *nll,
                        struct attn_stats *stats)
{
    const struct llm_config *c = llm_model_config(model);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(model));
    float *logits = util_aligned_alloc(sizeof(float) * (size_t)chunk * (size_t)c->vocab_size);
    int rc = 0;
    for (int at = 0; at < n - 1 && rc == 0;) {
        int step = at < dense_prefix ? chunk : 1;
        if (step > n - 1 - at) step = n - 1 - at;
        struct llm_batch_item item = {.kv = seq,
                                      .tokens = tokens + at,
                                      .n_tokens = step,
                                      .all_logits = true,
                                      .quest_budget = quest_budget};
        rc = llm_forward(model, ws, &item, 1, logits, stats);
        for (int j = 0; j < step && rc == 0; j++) {
            const float *row = logits + (size_t)j * c->vocab_size;
            float mx = row[0];
            for (int v = 1; v < c->vocab_size; v++) mx = row[v] > mx ? row[v] : mx;
            double sum = 0;
            for (int v = 0; v < c->vocab_size; v++) sum += exp((double)(row[v] - mx));
            *nll += (double)mx + log(sum) - (double)row[tokens[at + j + 1]];
        }
        at += step;
    }
    util_aligned_free(logits);
    attn_seq_free(seq);
    return rc;
}

/* Hooks the --pim-layers onto the model; 0, or -errno after a message. */
static int pim_attach(llm_model *model, const char *layers, const char *device,
                      const char *dataflow, cmd_pim_llm **out)
{
    pim_presets *presets = NULL;
    struct pim_json_error jerr = {0};
    int rc = pim_presets_load_dir("conf/pim", &presets, &jerr);
    if (rc == -ENOENT)
        presets = pim_presets_builtin();
    else if (rc) {
        fprintf(stderr, "llmd perplexity: PIM presets: %s\n", jerr.message);
        return rc;
    }
    const struct pim_device *dev = pim_presets_find(presets, device);
    char err[256];
    if (!dev) {
        fprintf(stderr, "llmd perplexity: --pim-device: no preset '%s' in conf/pim\n", device);
        rc = -EINVAL;
    } else {
        rc = cmd_pim_llm_attach(model, layers, dev, dataflow, 0, out, err, sizeof err);
        if (rc) fprintf(stderr, "llmd perplexity: --pim-layers: %s\n", err);
    }
    pim_presets_free(presets);
    return rc;
}

static void pim_print(const cmd_pim_llm *pim, const char *layers, const char *device,
                      const char *dataflow)
{
    struct cmd_pim_llm_report r;
    cmd_pim_llm_report(pim, &r);
    if (cmd_pim_llm_error(pim))
        printf("pim: some products fell back to float: %s\n",
               util_strerror(cmd_pim_llm_error(pim)));
    printf("pim: layers %s on %s (%s): %d matrices, %llu products, %llu token rows\n", layers,
           device, dataflow, r.matrices, (unsigned long long)r.products,
           (unsigned long long)r.vectors);
    printf("pim run cost: energy %.6g J (adc %.6g J), adc conversions %llu, latency %.6g s, "
           "crossbars %llu\n",
           pim_cost_energy(&r.run), r.run.energy[PIM_E_ADC],
           (unsigned long long)r.run.adc_conversions, r.run.latency,
           (unsigned long long)r.program.crossbars);
    printf("pim program cost: energy %.6g J, cell writes %llu, latency %.6g s\n",
           pim_cost_energy(&r.program), (unsigned long long)r.program.cell_writes,
           r.program.latency);
    if (r.vectors)
        printf("pim per token row: energy %.6g J, adc conversions %.0f\n",
               pim_cost_energy(&r.run) / (double)r.vectors,
               (double)r.run.adc_conversions / (double)r.vectors);
}

static const char perplexity_help[] =
    "Usage: llmd perplexity [--model FILE] --file TEXT [--ctx N] [--max-tokens N]\n"
    "Perplexity of a text file: the token stream BOS + tokenize(TEXT) (its first N\n"
    "tokens with --max-tokens) is cut into non-overlapping windows of ctx tokens\n"
    "(full windows only); each window runs on its own and its tokens 1..ctx-1 are\n"
    "scored given the tokens before them in the window. With --quest-budget, tokens\n"
    "past the budget are fed one at a time so that decode attention (Quest) applies.\n\n"
    "  --file TEXT        the text (e.g. models/heldout.txt)\n"
    "  --ctx N            window length in tokens (default: the model's context)\n"
    "  --max-tokens N     use the first N tokens of the stream (default: all)\n"
    "  --batch N          prefill chunk in tokens (default 512)\n"
    "  --pim-layers SPEC  run these linear layers on the simulated ReRAM crossbars and\n"
    "                     report the simulated cost (fp32 only). SPEC: comma-separated\n"
    "                     kinds (q,k,v,o,gate,up,down, attn, ffn, all) and layers (N or\n"
    "                     N-M); e.g. ffn, all, 0-1, ffn,3\n"
    "  --pim-device NAME  device preset from conf/pim (default isaac)\n"
    "  --pim-dataflow D   isaac | cascade | neural_pim (default isaac)\n\n";

int cmd_perplexity(int argc, char **argv)
{
    static const struct option own[] = {
        {"file", required_argument, 0, OPT_FILE},
        {"ctx", required_argument, 0, OPT_CTX},
        {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"batch", required_argument, 0, OPT_BATCH},
        {"pim-layers", required_argument, 0, OPT_PIM_LAYERS},
        {"pim-device", required_argument, 0, OPT_PIM_DEVICE},
        {"pim-dataflow", required_argument, 0, OPT_PIM_DATAFLOW},
    };
    struct option *options = join_options(own, sizeof own / sizeof own[0]);
    struct model_flags mf;
    model_flags_init(&mf, argc, argv);
    const char *file = NULL, *pim_layers = NULL, *pim_device = "isaac", *pim_dataflow = "isaac";
    int ctx = 0, max_tokens = 0, batch = 512, opt, rc = 2;
    bool ok = !mf.failed;
    optind = 1;
    while (ok && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case OPT_FILE:
            file = optarg;
            break;
        case OPT_CTX:
            ok = parse_int(optarg, 2, 1 << 24, &ctx);
            break;
        case OPT_MAX_TOKENS:
            ok = parse_int(optarg, 2, 1 << 30, &max_tokens);
            break;
        case OPT_BATCH:
            ok = parse_int(optarg, 1, 1 << 16, &batch);
            break;
        case OPT_PIM_LAYERS:
            pim_layers = optarg;
            break;
        case OPT_PIM_DEVICE:
            pim_device = optarg;
            break;
        case OPT_PIM_DATAFLOW:
            pim_dataflow = optarg;
            break;
        case OPT_HELP:
            printf("%s", perplexity_help);
            print_model_help();
            cmd_settings_free_options(options);
            return 0;
        default:
            ok = parse_model_flag(opt, optarg) > 0;
        }
    }
    cmd_settings_free_options(options);
    if (!ok || !file || optind != argc) {
        fprintf(stderr, "llmd perplexity: %s; see --help\n",
                !file && ok ? "--file is required" : "bad arguments");
        return 2;
    }
    size_t len;
    char *text = util_read_file(file, &len);
    if (!text) {
        fprintf(stderr, "llmd perplexity: cannot read %s: %s\n", file, strerror(errno));
        return 1;
    }
    llm_model *model = load_model(&mf);
    if (!model) {
        free(text);
        return 1;
    }
    const struct llm_config *c = llm_model_config(model);
    const llm_tokenizer *tok = llm_model_tokenizer(model);
    int32_t *ids;
    int n = tokenize_all(tok, text, len, true, &ids); /* the stream starts with BOS */
    free(text);
    if (ctx == 0 || ctx > c->ctx_len) ctx = c->ctx_len;
    if (max_tokens > 0 && n > max_tokens) n = max_tokens;
    int per_window = ctx - 1, windows = n / ctx;
    if (windows == 0) {
        fprintf(stderr, "llmd perplexity: the text has %d tokens, fewer than one window of %d\n", n,
                ctx);
        llm_model_free(model);
        free(ids);
        return 2;
    }
    if (batch > ctx) batch = ctx;
    cmd_pim_llm *pim = NULL;
    if (pim_layers && pim_attach(model, pim_layers, pim_device, pim_dataflow, &pim) != 0) {
        llm_model_free(model);
        free(ids);
        return 2;
    }
    llm_workspace *ws = llm_workspace_create(model, batch);
    double nll = 0, t0 = util_now();
    struct attn_stats stats = {0};
    int dense_prefix = mf.quest_budget > 0 ? mf.quest_budget : ctx;
    rc = 0;
    for (int w = 0; w < windows && rc == 0; w++) {
        rc = score_window(model, ws, batch, ids + (size_t)w * ctx, ctx, dense_prefix,
                          mf.quest_budget, &nll, &stats);
        double scored = (double)(w + 1) * per_window;
        fprintf(stderr, "\rwindow %d/%d: perplexity %.4f", w + 1, windows, exp(nll / scored));
    }
    fprintf(stderr, "\n");
    if (rc) {
        fprintf(stderr, "llmd perplexity: %s\n", util_strerror(rc));
    } else {
        double scored = (double)windows * per_window, secs = util_now() - t0;
        printf("perplexity: %.4f\n", exp(nll / scored));
        printf("tokens scored: %.0f in %d windows of %d (%.1f tokens/s)\n", scored, windows, ctx,
               scored / secs);
        if (stats.pages_total > 0)
            printf("kv pages read: %.4f of dense (%.4f in sparse decode steps)\n",
                   (double)stats.pages_read / (double)stats.pages_total,
                   stats.sparse_pages_total
                       ? (double)stats.sparse_pages_read / (double)stats.sparse_pages_total
                       : 1.0);
        if (pim) pim_print(pim, pim_layers, pim_device, pim_dataflow);
    }
    free(ids);
    llm_workspace_free(ws);
    cmd_pim_llm_detach(pim);
    llm_model_free(model);
    return rc ? 1 : 0;
}

/* --------------------------------------------------------------- quantize */

static const char quantize_help[] =
    "Usage: llmd quantize [--model IN] [--precision atom] [Atom options] --out OUT.gguf\n"
    "Quantizes a model (calibrating it for atom) and writes the result as a GGUF that\n"
    "generate, perplexity, passkey and serve load as it is, without recalibrating: the\n"
    "file's precision and formats then win over --precision and the Atom options.\n\n"
    "  --out FILE         the quantized model to write\n"
    "  --precision P      w8a8 | w4a4-rtn | atom (default atom)\n"
    "  --head H           the output head in the file: int4 (default) or int8, read in\n"
    "                     place at load; f16/f32 keep the source's head as it is\n\n";

int cmd_quantize(int argc, char **argv)
{
    static const struct option own[] = {{"out", required_argument, 0, OPT_OUT}};
    struct option *options = join_options(own, sizeof own / sizeof own[0]);
    struct model_flags mf;
    model_flags_init(&mf, argc, argv);
    mf.kv_sequences = 1; /* the KV cache only serves calibration */
    const char *out = NULL;
    int opt;
    bool ok = !mf.failed;
    optind = 1;
    while (ok && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == OPT_OUT)
            out = optarg;
        else if (opt == OPT_HELP) {
            printf("%s", quantize_help);
            print_model_help();
            cmd_settings_free_options(options);
            return 0;
        } else
            ok = parse_model_flag(opt, optarg) > 0;
    }
    cmd_settings_free_options(options);
    if (ok && !model_flags_finish(&mf)) return 2;
    if (!ok || !out || optind != argc || mf.options.precision == LLM_FP32) {
        fprintf(stderr, "llmd quantize: %s; see --help\n",
                !ok || optind != argc ? "bad arguments"
                : !out                ? "--out is required"
                                      : "--precision fp32 has nothing to quantize");
        return 2;
    }
    double t0 = util_now();
    llm_model *model = load_model(&mf);
    if (!model) return 1;
    char err[512];
    int rc = llm_model_save_quantized(model, mf.path, out, err, sizeof err);
    if (rc)
        fprintf(stderr, "llmd quantize: %s\n", err);
    else
        fprintf(stderr, "llmd: wrote %s (%s) in %.1f s\n", out,
                llm_precision_name(llm_model_precision(model)), util_now() - t0);
    llm_model_free(model);
    return rc ? 1 : 0;
}

/* --------------------------------------------------------------- tokenize */

static const char tokenize_help[] =
    "Usage: llmd tokenize [--model FILE] [--bos]\n"
    "Reads lines on stdin and prints each line's token ids, space-separated, one\n"
    "line per input line. Works on a vocabulary-only GGUF (no tensors needed); of the\n"
    "model settings only --model matters (the others are accepted like every command's).\n\n"
    "  --bos          prepend the BOS token\n\n";

int cmd_tokenize(int argc, char **argv)
{
    static const struct option own[] = {{"bos", no_argument, 0, OPT_BOS}};
    struct option *options = join_options(own, sizeof own / sizeof own[0]);
    struct model_flags mf;
    model_flags_init(&mf, argc, argv);
    bool bos = false, ok = !mf.failed;
    int opt;
    optind = 1;
    while (ok && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == OPT_BOS)
            bos = true;
        else if (opt == OPT_HELP) {
            fputs(tokenize_help, stdout);
            print_model_help();
            cmd_settings_free_options(options);
            return 0;
        } else
            ok = parse_model_flag(opt, optarg) > 0;
    }
    cmd_settings_free_options(options);
    if (!ok || optind != argc || !model_flags_finish(&mf)) {
        fprintf(stderr, "see llmd tokenize --help\n");
        return 2;
    }
    const char *path = mf.path;
    llm_gguf *g;
    llm_tokenizer *tok;
    char err[512];
    int rc = llm_gguf_open(path, &g, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llmd tokenize: %s: %s\n", path, err);
        return 1;
    }
    rc = llm_tokenizer_load(g, &tok, err, sizeof err);
    if (rc) {
        fprintf(stderr, "llmd tokenize: %s: %s\n", path, err);
        llm_gguf_close(g);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n') n--;
        int32_t *ids;
        int count = tokenize_all(tok, line, (size_t)n, bos, &ids);
        if (count < 0) {
            fprintf(stderr, "llmd tokenize: %s\n", util_strerror(count));
            rc = 1;
            break;
        }
        for (int i = 0; i < count; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
        free(ids);
    }
    free(line);
    llm_tokenizer_free(tok);
    llm_gguf_close(g);
    return rc;
}

/* ---------------------------------------------------------------- passkey */
struct passkey_run {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int remaining;
    char **answers; /* per trial, the generated text */
    size_t *answer_len;
};

static void passkey_on_event(const struct llm_event *ev, void *ctx)
{
    struct passkey_run *run = ctx;
    int trial = (int)(intptr_t)ev->user;
    pthread_mutex_lock(&run->lock);
    if (ev->type == LLM_EVENT_TOKEN) {
        run->answers[trial] =
            util_xrealloc(run->answers[trial], run->answer_len[trial] + (size_t)ev->text_len + 1);
        memcpy(run->answers[trial] + run->answer_len[trial], ev->text, (size_t)ev->text_len);
        run->answer_len[trial] += (size_t)ev->text_len;
        run->answers[trial][run->answer_len[trial]] = 0;
    } else if (--run->remaining == 0) {
        pthread_cond_signal(&run->cond);
    }
    pthread_mutex_unlock(&run->lock);
}

static const char passkey_help[] =
    "Usage: llmd passkey [--model FILE] --ctx N --trials T [--seed S] [--filler FILE]\n"
    "Hides a random 5-digit pass key at a random depth of N tokens of filler prose,\n"
    "asks for it at the end, and prints the accuracy of greedy retrieval. The\n"
    "attention path is a model option: --quest-budget N [--sparse-mode quest|window].\n\n"
    "  --ctx N          prompt length in tokens (default 4096)\n"
    "  --trials T       number of prompts (default 50)\n"
    "  --seed S         seed for keys, filler starts and depths (default 1)\n"
    "  --filler FILE    filler prose (default models/heldout.txt)\n"
    "  --depth-table    also print accuracy by depth (fifths of the prompt)\n\n";

int cmd_passkey(int argc, char **argv)
{
    static const struct option own[] = {
        {"ctx", required_argument, 0, OPT_CTX},     {"trials", required_argument, 0, OPT_TRIALS},
        {"seed", required_argument, 0, OPT_SEED},   {"filler", required_argument, 0, OPT_FILE},
        {"depth-table", no_argument, 0, OPT_DEPTH},
    };
    struct option *options = join_options(own, sizeof own / sizeof own[0]);
    struct model_flags mf;
    model_flags_init(&mf, argc, argv);
    const char *filler_path = "models/heldout.txt";
    int ctx = 4096, trials = 50, seed = 1, opt;
    bool ok = !mf.failed, depth_table = false;
    optind = 1;
    while (ok && (opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case OPT_CTX:
            ok = parse_int(optarg, 64, 1 << 24, &ctx);
            break;
        case OPT_TRIALS:
            ok = parse_int(optarg, 1, 100000, &trials);
            break;
        case OPT_SEED:
            ok = parse_int(optarg, 0, 2147483647, &seed);
            break;
        case OPT_FILE:
            filler_path = optarg;
            break;
        case OPT_DEPTH:
            depth_table = true;
            break;
        case OPT_HELP:
            printf("%s", passkey_help);
            print_model_help();
            cmd_settings_free_options(options);
            return 0;
        default:
            ok = parse_model_flag(opt, optarg) > 0;
        }
    }
    cmd_settings_free_options(options);
    if (!ok || optind != argc) {
        fprintf(stderr, "llmd passkey: bad arguments; see --help\n");
        return 2;
    }
    size_t len;
    char *text = util_read_file(filler_path, &len);
    if (!text) {
        fprintf(stderr, "llmd passkey: cannot read %s: %s\n", filler_path, strerror(errno));
        return 1;
    }
    struct cmd_passkey_sentences filler = cmd_passkey_split_sentences(text);
    if (filler.n < 2) {
        fprintf(stderr, "llmd passkey: %s has fewer than two sentences\n", filler_path);
        free(filler.s);
        free(text);
        return 2;
    }
    llm_model *model = load_model(&mf);
    if (!model) {
        free(filler.s);
        free(text);
        return 1;
    }
    const llm_tokenizer *tok = llm_model_tokenizer(model);
    if (ctx > llm_model_config(model)->ctx_len)
        fprintf(stderr, "llmd passkey: warning: %d tokens is past the model's context of %d\n", ctx,
                llm_model_config(model)->ctx_len);

    struct passkey_run run = {.remaining = trials};
    pthread_mutex_init(&run.lock, NULL);
    pthread_cond_init(&run.cond, NULL);
    run.answers = util_xcalloc((size_t)trials, sizeof(char *));
    run.answer_len = util_xcalloc((size_t)trials, sizeof(size_t));
    int *keys = util_xcalloc((size_t)trials, sizeof(int));
    double *depths = util_xcalloc((size_t)trials, sizeof(double));

    struct llm_engine_config ec;
    llm_engine_config_default(&ec);
    ec.max_waiting = trials;
    ec.quest_budget = mf.quest_budget;
    llm_engine *engine = NULL;
    int rc = llm_engine_create(model, &ec, passkey_on_event, &run, &engine);
    struct util_rng rng;
    util_rng_seed(&rng, (uint64_t)seed);
    double t0 = util_now();
    for (int t = 0; t < trials && rc == 0; t++) {
        keys[t] = 10000 + (int)(util_rng_next(&rng) % 90000);
        char *prompt = cmd_passkey_prompt(tok, &filler, ctx, keys[t], &rng, &depths[t]);
        if (!prompt) {
            fprintf(stderr, "llmd passkey: no filler start fits %d tokens\n", ctx);
            rc = -EINVAL;
            break;
        }
        struct llm_request req;
        llm_request_init(&req);
        req.max_tokens = CMD_PASSKEY_ANSWER_BUDGET;
        req.user = (void *)(intptr_t)t;
        req.n_prompt = tokenize_all(tok, prompt, strlen(prompt), true, &req.prompt);
        free(prompt);
        uint64_t id;
        rc = llm_engine_submit(engine, &req, &id);
        if (rc) {
            fprintf(stderr, "llmd passkey: submit: %s\n", util_strerror(rc));
            free(req.prompt);
        }
    }
    if (rc == 0) {
        pthread_mutex_lock(&run.lock);
        while (run.remaining > 0) pthread_cond_wait(&run.cond, &run.lock);
        pthread_mutex_unlock(&run.lock);
    }
    if (engine) llm_engine_shutdown(engine, 0);
    double secs = util_now() - t0;
    if (rc == 0) {
        int correct = 0, bucket_n[5] = {0}, bucket_ok[5] = {0};
        for (int t = 0; t < trials; t++) {
            bool right = cmd_passkey_correct(run.answers[t], keys[t]);
            correct += right;
            int b = (int)(depths[t] * 5);
            b = b > 4 ? 4 : b;
            bucket_n[b]++;
            bucket_ok[b] += right;
        }
        if (depth_table)
            for (int b = 0; b < 5; b++)
                printf("depth %3d-%3d%%: %d/%d\n", b * 20, b * 20 + 20, bucket_ok[b], bucket_n[b]);
        printf("passkey accuracy: %.4f (%d/%d) at %d tokens, %s, budget %d (%.1f s)\n",
               (double)correct / trials, correct, trials, ctx,
               mf.quest_budget == 0                   ? "dense"
               : mf.options.sparse_mode == ATTN_QUEST ? "quest"
                                                      : "window",
               mf.quest_budget, secs);
    }
    for (int t = 0; t < trials; t++) free(run.answers[t]);
    free(run.answers);
    free(run.answer_len);
    free(keys);
    free(depths);
    pthread_mutex_destroy(&run.lock);
    pthread_cond_destroy(&run.cond);
    llm_model_free(model);
    free(filler.s);
    free(text);
    return rc ? 1 : 0;
}

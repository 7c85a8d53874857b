/*
 * Tests for the offline commands (cli/commands.c) through the real
 * binary: tokenize on a vocabulary-only GGUF gives sentencepiece's ids,
 * generate is reproducible by seed, perplexity equals the forward pass's own
 * figure, and bad input gives a clear message and a non-zero status.
 */
#include "core/llm.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TEST_MODEL "tests/data/tiny-random.gguf"
#define VOCAB_ONLY "tests/data/vocab-test.gguf"

#ifdef __SANITIZE_ADDRESS__
#define LLMD "build/asan/llmd"
#else
#define LLMD "build/llmd"
#endif

struct output {
    char text[65536];
    int status;
};

/* Runs llmd with `args` (NULL-terminated), feeding `input` on stdin; stdout
 * and stderr together into out->text. */
static void run_llmd(const char *const *args, const char *input, struct output *out)
{
    int to_child[2], from_child[2];
    cr_assert_eq(pipe(to_child), 0);
    cr_assert_eq(pipe(from_child), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        dup2(from_child[1], 2);
        close(to_child[1]);
        close(from_child[0]);
        const char *argv[32] = {LLMD};
        for (int i = 0; args[i] && i < 30; i++) argv[i + 1] = args[i];
        execv(LLMD, (char *const *)argv);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    if (input) cr_assert_eq(write(to_child[1], input, strlen(input)), (ssize_t)strlen(input));
    close(to_child[1]);
    size_t len = 0;
    ssize_t n;
    while ((n = read(from_child[0], out->text + len, sizeof out->text - 1 - len)) > 0)
        len += (size_t)n;
    out->text[len] = 0;
    close(from_child[0]);
    int status;
    waitpid(pid, &status, 0);
    out->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Every test here has the same timeout: Criterion 2.4.1 leaks 48 bytes under
 * LeakSanitizer when tests of one binary use different timeouts. */
Test(cli, tokenize_on_a_vocabulary_only_file_prints_sentencepieces_ids, .timeout = 120)
{
    /* ids from tests/data/tokenizer-cases.tsv (made by sentencepiece) */
    FILE *f = fopen("tests/data/tokenizer-cases.tsv", "r");
    cr_assert_not_null(f);
    char line[8192], input[4096] = "", expect[8192] = "";
    int cases = 0;
    while (fgets(line, sizeof line, f) && cases < 40) {
        char *vocab = strtok(line, "\t"), *text = strtok(NULL, "\t"), *ids = strtok(NULL, "\t");
        if (!vocab || strcmp(vocab, "main") || !text || !ids || strchr(text, '\\') || !*text)
            continue;
        strcat(input, text);
        strcat(input, "\n");
        strcat(expect, ids);
        strcat(expect, "\n");
        cases++;
    }
    fclose(f);
    cr_assert_gt(cases, 10);
    struct output out;
    const char *args[] = {"tokenize", "--model", VOCAB_ONLY, NULL};
    run_llmd(args, input, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    cr_assert_str_eq(out.text, expect);
}

/* The generated text: what follows the model's description line and comes
 * before the speed line. */
static void generated_part(const char *text, char *out, size_t cap)
{
    const char *start = strstr(text, "OpenBLAS");
    start = start ? strchr(start, '\n') + 1 : text;
    const char *end = strstr(start, "llmd: prompt");
    size_t n = end ? (size_t)(end - start) : strlen(start);
    n = n < cap - 1 ? n : cap - 1;
    memcpy(out, start, n);
    out[n] = 0;
}

Test(cli, generate_gives_the_same_text_for_the_same_seed, .timeout = 120)
{
    struct output a, b, c;
    const char *args_a[] = {"generate",
                            "--model",
                            TEST_MODEL,
                            "--prompt",
                            "Once upon a time",
                            "-n",
                            "24",
                            "--temperature",
                            "1.0",
                            "--seed",
                            "7",
                            "--ids",
                            NULL};
    const char *args_c[] = {"generate",
                            "--model",
                            TEST_MODEL,
                            "--prompt",
                            "Once upon a time",
                            "-n",
                            "24",
                            "--temperature",
                            "1.0",
                            "--seed",
                            "8",
                            "--ids",
                            NULL};
    run_llmd(args_a, NULL, &a);
    run_llmd(args_a, NULL, &b);
    run_llmd(args_c, NULL, &c);
    cr_assert_eq(a.status, 0, "%s", a.text);
    char ga[8192], gb[8192], gc[8192];
    generated_part(a.text, ga, sizeof ga);
    generated_part(b.text, gb, sizeof gb);
    generated_part(c.text, gc, sizeof gc);
    cr_assert_gt(strlen(ga), 10u);
    cr_assert_str_eq(ga, gb);
    cr_assert_str_neq(ga, gc);
    cr_assert(strstr(a.text, "generated 24 tokens"), "%s", a.text);
}

Test(cli, perplexity_equals_the_forward_pass_computed_here, .timeout = 120)
{
    /* the command's figure for two windows of 64 tokens of the held-out text,
     * on the fp32 reference path (the defaults are serve's: atom, INT4 KV) */
    struct output out;
    const char *args[] = {"perplexity",
                          "--model",
                          TEST_MODEL,
                          "--file",
                          "models/heldout.txt",
                          "--ctx",
                          "64",
                          "--max-tokens",
                          "128",
                          "--precision",
                          "fp32",
                          "--kv",
                          "f32",
                          "--head",
                          "f32",
                          "--quest-budget",
                          "0",
                          NULL};
    run_llmd(args, NULL, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    const char *at = strstr(out.text, "perplexity: ");
    cr_assert_not_null(at, "%s", out.text);
    double ppl = atof(at + strlen("perplexity: "));

    /* the same computed with the library */
    llm_model *m;
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.kv_pages = 16;
    cr_assert_eq(llm_model_load(TEST_MODEL, &o, &m, err, sizeof err), 0, "%s", err);
    FILE *f = fopen("models/heldout.txt", "r");
    static char text[20000];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    int32_t ids[4096];
    int n = llm_tokenize(llm_model_tokenizer(m), text, len, true, ids, 4096);
    cr_assert_geq(n, 128);
    int vocab = llm_model_config(m)->vocab_size;
    llm_workspace *ws = llm_workspace_create(m, 64);
    float *logits = malloc(sizeof(float) * 64 * (size_t)vocab);
    double nll = 0;
    for (int w = 0; w < 2; w++) {
        attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
        struct llm_batch_item item = {
            .kv = seq, .tokens = ids + 64 * w, .n_tokens = 63, .all_logits = true};
        cr_assert_eq(llm_forward(m, ws, &item, 1, logits, NULL), 0);
        for (int t = 0; t < 63; t++) {
            const float *row = logits + (size_t)t * vocab;
            double mx = row[0], sum = 0;
            for (int v = 1; v < vocab; v++) mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < vocab; v++) sum += exp(row[v] - mx);
            nll += mx + log(sum) - row[ids[64 * w + t + 1]];
        }
        attn_seq_free(seq);
    }
    double want = exp(nll / 126);
    cr_assert_float_eq(ppl, want, want * 1e-4, "command %f, library %f", ppl, want);
    free(logits);
    llm_workspace_free(ws);
    llm_model_free(m);
}

Test(cli, bad_input_gives_a_message_and_a_non_zero_status, .timeout = 120)
{
    struct output out;
    const char *missing[] = {"generate", "--model", "/no/such/model.gguf", "--prompt", "x", NULL};
    run_llmd(missing, NULL, &out);
    cr_assert_eq(out.status, 1);
    cr_assert(strstr(out.text, "/no/such/model.gguf: No such file or directory"), "%s", out.text);

    const char *corrupt[] = {"generate", "--model", "tests/data/tokenizer-cases.tsv",
                             "--prompt", "x",       NULL};
    run_llmd(corrupt, NULL, &out);
    cr_assert_eq(out.status, 1);
    cr_assert(strstr(out.text, "cannot load model"), "%s", out.text);

    const char *bad_value[] = {"generate", "--prompt", "x", "--temperature", "hot", NULL};
    run_llmd(bad_value, NULL, &out);
    cr_assert_eq(out.status, 2, "%s", out.text);

    const char *unknown[] = {"frobnicate", NULL};
    run_llmd(unknown, NULL, &out);
    cr_assert_eq(out.status, 2);
    cr_assert(strstr(out.text, "unknown command"), "%s", out.text);

    const char *help[] = {"perplexity", "--help", NULL};
    run_llmd(help, NULL, &out);
    cr_assert_eq(out.status, 0);
    cr_assert(strstr(out.text, "--max-tokens"), "%s", out.text);
}

/* The last "...; PRECISION, KV TYPE" start-up line of a command's output. */
static void loaded_as(const struct output *out, char *what, size_t len)
{
    const char *line = strstr(out->text, "context ");
    cr_assert_not_null(line, "%s", out->text);
    const char *semi = strchr(line, ';'), *end = strchr(line, '\n');
    cr_assert(semi && end && semi < end, "%s", out->text);
    snprintf(what, len, "%.*s", (int)(end - semi - 2), semi + 2);
}

Test(cli, settings_come_from_the_table_defaults_file_env_flags, .timeout = 120)
{
    /* serve's defaults, for every command */
    struct output out;
    char what[64];
    const char *plain[] = {"generate", "--model", TEST_MODEL, "--prompt", "x", "-n", "1", NULL};
    run_llmd(plain, NULL, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    loaded_as(&out, what, sizeof what);
    cr_assert_str_eq(what, "atom, KV int4");

    /* the file beats the defaults, a variable the file, a flag the variable */
    char path[] = "/tmp/llmd-cli-settings-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *json = "{\"precision\": \"w8a8\", \"kv_type\": \"int8\", \"head\": \"f16\"}";
    cr_assert_eq(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    const char *with_file[] = {"generate", "--config", path, "--model", TEST_MODEL,
                               "--prompt", "x",        "-n", "1",       NULL};
    run_llmd(with_file, NULL, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    loaded_as(&out, what, sizeof what);
    cr_assert_str_eq(what, "w8a8, KV int8");

    setenv("LLMD_KV_TYPE", "f16", 1);
    run_llmd(with_file, NULL, &out);
    loaded_as(&out, what, sizeof what);
    cr_assert_str_eq(what, "w8a8, KV f16");

    /* flags, with the spellings users already type (--kv, --head-int8) */
    const char *with_flags[] = {"generate", "--config", path,  "--model",     TEST_MODEL,
                                "--prompt", "x",        "-n",  "1",           "--precision",
                                "fp32",     "--kv",     "f32", "--head-int8", NULL};
    run_llmd(with_flags, NULL, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    loaded_as(&out, what, sizeof what);
    cr_assert_str_eq(what, "fp32, KV f32");

    /* a bad value names its source; every command's --help comes from the table */
    setenv("LLMD_DENSE_LAYERS", "many", 1);
    run_llmd(with_flags, NULL, &out);
    cr_assert_eq(out.status, 2, "%s", out.text);
    cr_assert(strstr(out.text, "dense_layers (LLMD_DENSE_LAYERS): 'many' is not an integer"), "%s",
              out.text);
    unsetenv("LLMD_DENSE_LAYERS");
    const char *commands[] = {"generate", "perplexity", "passkey", "quantize", "tokenize"};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const char *help[] = {commands[i], "--help", NULL};
        run_llmd(help, NULL, &out);
        cr_assert_eq(out.status, 0, "%s", out.text);
        cr_assert(strstr(out.text, "--precision fp32|w8a8|w4a4-rtn|atom"), "%s", out.text);
        cr_assert(strstr(out.text, "default: \"atom\"; env LLMD_PRECISION"), "%s", out.text);
        cr_assert(strstr(out.text, "--sparse-mode quest|window"), "%s", out.text);
        cr_assert(strstr(out.text, "--kv T"), "%s", out.text);
    }
    unlink(path);
}

/* ------------------------------------------------------------ quantize */

#define QUANT_CALIB "512"

static llm_model *load_for_test(const char *path, enum llm_precision precision)
{
    struct llm_model_options o;
    llm_model_options_default(&o);
    o.precision = precision;
    o.head = LLM_HEAD_INT4;   /* what `quantize` writes by default */
    o.kv_pages = 8;           /* calibration has a cache of its own */
    o.kv_type = ATTN_KV_INT4; /* and an f32 one: `quantize` (--kv f32) agrees */
    o.quant.calib_tokens = atoi(QUANT_CALIB);
    llm_model *m;
    char err[512];
    cr_assert_eq(llm_model_load(path, &o, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* Logits of every position of a 48-token prompt. */
static float *all_logits(llm_model *m, const int32_t *ids, int n)
{
    int vocab = llm_model_config(m)->vocab_size;
    llm_workspace *ws = llm_workspace_create(m, n);
    float *logits = malloc(sizeof(float) * (size_t)n * (size_t)vocab);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    struct llm_batch_item item = {.kv = seq, .tokens = ids, .n_tokens = n, .all_logits = true};
    cr_assert_eq(llm_forward(m, ws, &item, 1, logits, NULL), 0);
    attn_seq_free(seq);
    llm_workspace_free(ws);
    return logits;
}

static void quantize_to(const char *path, const char *precision)
{
    struct output out;
    const char *args[] = {"quantize",       "--model",   TEST_MODEL, "--precision", precision,
                          "--calib-tokens", QUANT_CALIB, "--out",    path,          NULL};
    run_llmd(args, NULL, &out);
    cr_assert_eq(out.status, 0, "%s", out.text);
    cr_assert(strstr(out.text, "wrote"), "%s", out.text);
    if (strcmp(precision, "atom") == 0)
        cr_assert(strstr(out.text, "calibrating: 100%"), "%s", out.text);
}

Test(cli, a_quantized_file_computes_what_quantizing_at_load_computes, .timeout = 120)
{
    static const char *const precisions[] = {"atom", "w8a8", "w4a4-rtn"};
    char path[] = "/tmp/llmd-test-quant-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    int32_t ids[48];
    for (int i = 0; i < 48; i++) ids[i] = 1 + (i * 37) % 7000;
    for (int p = 0; p < 3; p++) {
        quantize_to(path, precisions[p]);
        enum llm_precision precision;
        cr_assert_eq(llm_precision_parse(precisions[p], &precision), 0);
        llm_model *at_load = load_for_test(TEST_MODEL, precision);
        llm_model *from_file = load_for_test(path, LLM_FP32); /* the file's precision wins */
        cr_assert(llm_model_prequantized(from_file));
        cr_assert_eq(llm_model_precision(from_file), precision);
        int vocab = llm_model_config(at_load)->vocab_size;
        float *a = all_logits(at_load, ids, 48), *b = all_logits(from_file, ids, 48);
        cr_assert_eq(memcmp(a, b, sizeof(float) * 48 * (size_t)vocab), 0, "%s: logits differ",
                     precisions[p]);
        free(a);
        free(b);
        llm_model_free(at_load);
        llm_model_free(from_file);
    }

    /* the command line agrees: the same perplexity, and no calibration */
    struct output loaded, quantized;
    const char *args_load[] = {
        "perplexity", "--model", TEST_MODEL,           "--precision", "w4a4-rtn", "--head",
        "int4",       "--file",  "models/heldout.txt", "--ctx",       "64",       "--max-tokens",
        "128",        NULL};
    const char *args_file[] = {
        "perplexity", "--model", path,           "--file", "models/heldout.txt",
        "--ctx",      "64",      "--max-tokens", "128",    NULL};
    run_llmd(args_load, NULL, &loaded);
    run_llmd(args_file, NULL, &quantized);
    cr_assert_eq(quantized.status, 0, "%s", quantized.text);
    cr_assert_null(strstr(quantized.text, "quantizing"), "%s", quantized.text);
    cr_assert(strstr(quantized.text, "w4a4-rtn"), "%s", quantized.text);
    const char *pa = strstr(loaded.text, "perplexity: "),
               *pb = strstr(quantized.text, "perplexity: ");
    cr_assert(pa && pb, "%s\n%s", loaded.text, quantized.text);
    cr_assert_eq(strncmp(pa, pb, 24), 0, "%.24s vs %.24s", pa, pb);
    remove(path);
}

/* Reads a whole file. */
static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(*len);
    cr_assert_eq(fread(buf, 1, *len, f), *len);
    fclose(f);
    return buf;
}

static void spit(const char *path, const uint8_t *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

Test(cli, a_corrupt_quantized_file_gives_a_clear_error, .timeout = 120)
{
    char path[] = "/tmp/llmd-test-quant-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    quantize_to(path, "w8a8");
    size_t len;
    uint8_t *buf = slurp(path, &len);
    llm_gguf *g;
    char err[256];
    cr_assert_eq(llm_gguf_open_memory(buf, len, &g, err, sizeof err), 0, "%s", err);
    const struct llm_gguf_tensor *t = llm_gguf_find_tensor(g, "blk.1.ffn_up.weight");
    cr_assert_not_null(t);
    cr_assert_eq(t->type, GGML_TYPE_I8);
    size_t at = (size_t)((const uint8_t *)t->data - buf);
    llm_gguf_close(g);

    struct output out;
    const char *args[] = {"perplexity", "--model", path,           "--file", "models/heldout.txt",
                          "--ctx",      "64",      "--max-tokens", "128",    NULL};
    buf[at + 33] ^= 0x40; /* the layer's row count */
    spit(path, buf, len);
    run_llmd(args, NULL, &out);
    cr_assert_eq(out.status, 1, "%s", out.text);
    cr_assert(strstr(out.text, "blk.1.ffn_up.weight is a malformed quantized layer"), "%s",
              out.text);

    buf[at + 33] ^= 0x40;
    spit(path, buf, len / 2); /* truncated */
    run_llmd(args, NULL, &out);
    cr_assert_eq(out.status, 1, "%s", out.text);
    cr_assert(strstr(out.text, "cannot load model"), "%s", out.text);
    free(buf);
    remove(path);
}

/*
 * Tests for the offline commands (server/commands.c) through the real
 * binary: tokenize on a vocabulary-only GGUF gives sentencepiece's ids,
 * generate is reproducible by seed, perplexity equals the forward pass's own
 * figure, and bad input gives a clear message and a non-zero status.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/llm.h"

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
    while ((n = read(from_child[0], out->text + len, sizeof out->text - 1 - len)) > 0) len += (size_t)n;
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
        if (!vocab || strcmp(vocab, "main") || !text || !ids || strchr(text, '\\') || !*text) continue;
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
    const char *args_a[] = {"generate", "--model", TEST_MODEL, "--prompt", "Once upon a time", "-n", "24",
                            "--temperature", "1.0", "--seed", "7", "--ids", NULL};
    const char *args_c[] = {"generate", "--model", TEST_MODEL, "--prompt", "Once upon a time", "-n", "24",
                            "--temperature", "1.0", "--seed", "8", "--ids", NULL};
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
    /* the command's figure for two windows of 64 tokens of the held-out text */
    struct output out;
    const char *args[] = {"perplexity", "--model", TEST_MODEL, "--file", "models/heldout.txt", "--ctx", "64",
                          "--max-tokens", "128", NULL};
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
        struct llm_batch_item item = {.kv = seq, .tokens = ids + 64 * w, .n_tokens = 63, .all_logits = true};
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

    const char *corrupt[] = {"generate", "--model", "tests/data/tokenizer-cases.tsv", "--prompt", "x", NULL};
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

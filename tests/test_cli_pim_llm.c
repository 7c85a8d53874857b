/* The PIM linear-layer hook (cli/pim_llm.c over core's
 * llm_model_set_linear_hook): the layer spec, an ideal device matching the
 * float forward pass, a noisy one not, the cost it reports, and refusal of
 * quantized models. */
#include "cli/pim_llm.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_PATH "tests/data/tiny-random.gguf"
#define TIMEOUT    120

static llm_model *load(const char *precision)
{
    char err[256];
    struct llm_model_options o;
    llm_model_options_default(&o);
    cr_assert_eq(llm_precision_parse(precision, &o.precision), 0);
    o.kv_pages = 64;
    llm_model *m;
    cr_assert_eq(llm_model_load(MODEL_PATH, &o, &m, err, sizeof err), 0, "%s", err);
    return m;
}

/* Logits of every token of a fixed prompt. */
static float *forward(llm_model *m, int n)
{
    int vocab = llm_model_config(m)->vocab_size;
    int32_t ids[32];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 37 + 5) % vocab);
    llm_workspace *ws = llm_workspace_create(m, n);
    attn_seq *seq = attn_seq_create(llm_model_kv_cache(m));
    float *logits = malloc(sizeof *logits * (size_t)n * (size_t)vocab);
    struct llm_batch_item item = {.kv = seq, .tokens = ids, .n_tokens = n, .all_logits = true};
    cr_assert_eq(llm_forward(m, ws, &item, 1, logits, NULL), 0);
    attn_seq_free(seq);
    llm_workspace_free(ws);
    return logits;
}

static double rel_error(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return sqrt(num / den);
}

Test(pim_llm, the_spec_picks_kinds_and_layers, .timeout = TIMEOUT)
{
    enum { L = 4 };
    bool sel[L * LLM_LINEAR_COUNT];
    char err[256];
    cr_assert_eq(cmd_pim_llm_parse_spec("ffn", L, sel, err, sizeof err), 0);
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LLM_LINEAR_COUNT; k++)
            cr_assert_eq(sel[l * LLM_LINEAR_COUNT + k], k >= LLM_LINEAR_GATE);
    cr_assert_eq(cmd_pim_llm_parse_spec("q,down,1-2", L, sel, err, sizeof err), 0);
    for (int l = 0; l < L; l++)
        for (int k = 0; k < LLM_LINEAR_COUNT; k++)
            cr_assert_eq(sel[l * LLM_LINEAR_COUNT + k],
                         (l == 1 || l == 2) && (k == LLM_LINEAR_Q || k == LLM_LINEAR_DOWN));
    cr_assert_eq(cmd_pim_llm_parse_spec("3", L, sel, err, sizeof err), 0);
    for (int k = 0; k < LLM_LINEAR_COUNT; k++) cr_assert(sel[3 * LLM_LINEAR_COUNT + k]);
    cr_assert(!sel[0]);
    cr_assert_eq(cmd_pim_llm_parse_spec("all", L, sel, err, sizeof err), 0);
    for (int i = 0; i < L * LLM_LINEAR_COUNT; i++) cr_assert(sel[i]);
    const char *bad[] = {"", "4", "2-1", "-1", "ffn,x", "1-9", "0-", ",", NULL};
    for (int i = 0; bad[i]; i++)
        cr_assert_eq(cmd_pim_llm_parse_spec(bad[i], L, sel, err, sizeof err), -EINVAL, "'%s'",
                     bad[i]);
}

Test(pim_llm, an_ideal_device_matches_the_float_forward_and_reports_its_cost, .timeout = TIMEOUT)
{
    llm_model *m = load("fp32");
    const struct llm_config *c = llm_model_config(m);
    int n = 12;
    size_t count = (size_t)n * (size_t)c->vocab_size;
    float *plain = forward(m, n);

    /* ISAAC's 16-bit weights and inputs, no noise, a 12-bit ADC: no clipping */
    struct pim_device dev;
    pim_device_default(&dev);
    dev.adc_bits = 12;
    cmd_pim_llm *p;
    char err[256];
    cr_assert_eq(cmd_pim_llm_attach(m, "all", &dev, "isaac", 1, &p, err, sizeof err), 0, "%s", err);
    float *hooked = forward(m, n);
    double ideal = rel_error(hooked, plain, count);
    cr_assert(ideal < 1e-3, "ideal device: logits off by %g", ideal);
    struct cmd_pim_llm_report r;
    cmd_pim_llm_report(p, &r);
    cr_assert_eq(cmd_pim_llm_error(p), 0);
    cr_assert_eq(r.matrices, c->n_layers * LLM_LINEAR_COUNT);
    cr_assert_eq(r.products, (uint64_t)c->n_layers * LLM_LINEAR_COUNT);
    cr_assert_eq(r.vectors, (uint64_t)n * c->n_layers * LLM_LINEAR_COUNT);
    cr_assert(r.run.adc_conversions > 0 && pim_cost_energy(&r.run) > 0 && r.run.latency > 0);
    cr_assert(r.program.cell_writes > 0);
    cmd_pim_llm_detach(p);
    free(hooked);

    /* detached: the plain forward again, bit for bit */
    hooked = forward(m, n);
    cr_assert_eq(memcmp(hooked, plain, count * sizeof *hooked), 0);
    free(hooked);

    /* a coarse, noisy device on the FFN only moves the logits further */
    dev.weight_bits = 4;
    dev.read_noise = 0.05;
    cr_assert_eq(cmd_pim_llm_attach(m, "ffn", &dev, "isaac", 1, &p, err, sizeof err), 0, "%s", err);
    hooked = forward(m, n);
    double noisy = rel_error(hooked, plain, count);
    cr_assert(noisy > 10 * ideal && noisy > 1e-3, "noisy %g, ideal %g", noisy, ideal);
    cmd_pim_llm_report(p, &r);
    cr_assert_eq(r.products, (uint64_t)c->n_layers * 3);
    cmd_pim_llm_detach(p);
    free(hooked);
    free(plain);

    cr_assert_eq(cmd_pim_llm_attach(m, "ffn", &dev, "nope", 1, &p, err, sizeof err), -EINVAL);
    cr_assert_eq(cmd_pim_llm_attach(m, "bogus", &dev, "isaac", 1, &p, err, sizeof err), -EINVAL);
    llm_model_free(m);
}

Test(pim_llm, a_quantized_model_is_refused, .timeout = TIMEOUT)
{
    llm_model *m = load("w8a8");
    struct pim_device dev;
    pim_device_default(&dev);
    cmd_pim_llm *p;
    char err[256];
    cr_assert_eq(cmd_pim_llm_attach(m, "all", &dev, "isaac", 1, &p, err, sizeof err), -ENOTSUP);
    cr_assert_eq(llm_model_set_linear_hook(m, NULL, NULL), 0);
    llm_model_free(m);
}

/*
 * pim_llm.c: chosen LLM linear layers on the simulated crossbars (see
 * pim_llm.h).
 */
#include "cli/pim_llm.h"

#include "util/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cmd_pim_llm {
    llm_model *model;
    int n_layers;
    bool *sel;         /* n_layers x LLM_LINEAR_COUNT */
    pim_matrix **mats; /* likewise; programmed on first use */
    struct pim_device dev;
    const struct pim_dataflow *df;
    struct pim_ctx ctx;
    struct cmd_pim_llm_report report;
    int error;
};

/* --------------------------------------------------------------- the spec */

static bool kind_group(const char *item, bool kinds[LLM_LINEAR_COUNT])
{
    if (strcmp(item, "all") == 0) {
        for (int k = 0; k < LLM_LINEAR_COUNT; k++) kinds[k] = true;
        return true;
    }
    if (strcmp(item, "attn") == 0) {
        for (int k = LLM_LINEAR_Q; k <= LLM_LINEAR_O; k++) kinds[k] = true;
        return true;
    }
    if (strcmp(item, "ffn") == 0) {
        for (int k = LLM_LINEAR_GATE; k <= LLM_LINEAR_DOWN; k++) kinds[k] = true;
        return true;
    }
    for (int k = 0; k < LLM_LINEAR_COUNT; k++)
        if (strcmp(item, llm_linear_kind_name((enum llm_linear_kind)k)) == 0) {
            kinds[k] = true;
            return true;
        }
    return false;
}

/* "N" or "N-M" into [*lo, *hi]. */
static bool layer_range(const char *item, int *lo, int *hi)
{
    char *end;
    long a = strtol(item, &end, 10);
    if (end == item || a < 0) return false;
    long b = a;
    if (*end == '-') {
        const char *p = end + 1;
        b = strtol(p, &end, 10);
        if (end == p || b < a) return false;
    }
    if (*end || b > 1 << 20) return false;
    *lo = (int)a;
    *hi = (int)b;
    return true;
}

int cmd_pim_llm_parse_spec(const char *spec, int n_layers, bool *sel, char *err, size_t err_len)
{
    bool kinds[LLM_LINEAR_COUNT] = {false}, any_kind = false, any_layer = false;
    bool *layers = util_xcalloc((size_t)n_layers, sizeof *layers);
    char *copy = util_xstrdup(spec ? spec : "");
    int rc = 0;
    char *save;
    for (char *item = strtok_r(copy, ",", &save); item && rc == 0;
         item = strtok_r(NULL, ",", &save)) {
        int lo, hi;
        if (kind_group(item, kinds)) {
            any_kind = true;
        } else if (layer_range(item, &lo, &hi)) {
            if (hi >= n_layers) {
                snprintf(err, err_len, "layer %d out of range (the model has %d)", hi, n_layers);
                rc = -EINVAL;
            }
            for (int l = lo; l <= hi && l < n_layers; l++) layers[l] = true;
            any_layer = true;
        } else {
            snprintf(err, err_len,
                     "'%s' is neither a layer (N, N-M) nor a linear (q, k, v, o, gate, up, "
                     "down, attn, ffn, all)",
                     item);
            rc = -EINVAL;
        }
    }
    if (rc == 0 && !any_kind && !any_layer) {
        snprintf(err, err_len, "the layer spec is empty");
        rc = -EINVAL;
    }
    for (int l = 0; l < n_layers && rc == 0; l++)
        for (int k = 0; k < LLM_LINEAR_COUNT; k++)
            sel[l * LLM_LINEAR_COUNT + k] = (!any_layer || layers[l]) && (!any_kind || kinds[k]);
    free(copy);
    free(layers);
    return rc;
}

/* --------------------------------------------------------------- the hook */

static pim_matrix *matrix_for(cmd_pim_llm *p, int slot, const float *w, int n, int k)
{
    if (p->mats[slot]) return p->mats[slot];
    pim_matrix *mat;
    int rc = pim_matrix_program(&p->dev, &p->ctx, w, n, k, &mat);
    if (rc) {
        if (!p->error) p->error = rc;
        return NULL;
    }
    pim_matrix_program_cost(mat, &p->report.program);
    p->report.matrices++;
    p->mats[slot] = mat;
    return mat;
}

static bool on_linear(void *ctx, int layer, enum llm_linear_kind kind, const float *w, int n, int k,
                      const float *x, int T, float *y)
{
    cmd_pim_llm *p = ctx;
    if (layer < 0 || layer >= p->n_layers || (int)kind < 0 || kind >= LLM_LINEAR_COUNT)
        return false;
    int slot = layer * LLM_LINEAR_COUNT + kind;
    if (!p->sel[slot]) return false;
    pim_matrix *mat = matrix_for(p, slot, w, n, k);
    if (!mat) return false;
    int rc = pim_matrix_vmm(mat, p->df, &p->ctx, x, T, y, &p->report.run);
    if (rc) {
        if (!p->error) p->error = rc;
        return false;
    }
    p->report.products++;
    p->report.vectors += (uint64_t)T;
    return true;
}

/* --------------------------------------------------------------- lifetime */

int cmd_pim_llm_attach(llm_model *model, const char *spec, const struct pim_device *dev,
                       const char *dataflow, uint64_t seed, cmd_pim_llm **out, char *err,
                       size_t err_len)
{
    const struct pim_dataflow *df = pim_dataflow_by_name(dataflow ? dataflow : "isaac");
    if (!df) {
        snprintf(err, err_len, "unknown dataflow '%s' (isaac, cascade, neural_pim)", dataflow);
        return -EINVAL;
    }
    struct pim_error perr = {0};
    if (pim_device_validate(dev, &perr) != 0) {
        snprintf(err, err_len, "device %s: %s", perr.param, perr.message);
        return -EINVAL;
    }
    int n_layers = llm_model_config(model)->n_layers;
    cmd_pim_llm *p = util_xcalloc(1, sizeof *p);
    p->sel = util_xcalloc((size_t)n_layers * LLM_LINEAR_COUNT, sizeof *p->sel);
    int rc = cmd_pim_llm_parse_spec(spec, n_layers, p->sel, err, err_len);
    if (rc == 0) {
        rc = llm_model_set_linear_hook(model, on_linear, p);
        if (rc) snprintf(err, err_len, "the PIM layers need an fp32 model (--precision fp32)");
    }
    if (rc) {
        free(p->sel);
        free(p);
        return rc;
    }
    p->model = model;
    p->n_layers = n_layers;
    p->mats = util_xcalloc((size_t)n_layers * LLM_LINEAR_COUNT, sizeof *p->mats);
    p->dev = *dev;
    p->df = df;
    pim_ctx_init(&p->ctx, seed);
    *out = p;
    return 0;
}

int cmd_pim_llm_error(const cmd_pim_llm *p)
{
    return p->error;
}

void cmd_pim_llm_report(const cmd_pim_llm *p, struct cmd_pim_llm_report *out)
{
    *out = p->report;
}

void cmd_pim_llm_detach(cmd_pim_llm *p)
{
    if (!p) return;
    llm_model_set_linear_hook(p->model, NULL, NULL);
    for (int i = 0; i < p->n_layers * LLM_LINEAR_COUNT; i++) pim_matrix_free(p->mats[i]);
    free(p->mats);
    free(p->sel);
    free(p);
}

/*
 * pim_llm: runs chosen linear layers of an fp32 model through the simulated
 * ReRAM crossbars (pim/), by core's linear-layer hook, and adds up what the
 * analog hardware would have spent. `llmd perplexity --pim-layers SPEC`
 * uses it to report what the device does to model quality.
 *
 * SPEC: comma-separated items. Kinds: q, k, v, o, gate, up, down, "attn"
 * (q,k,v,o), "ffn" (gate,up,down), "all". Layers: N or N-M (0-based).
 * Without kinds every linear of the chosen layers runs on the device;
 * without layers the chosen kinds of every layer do. "ffn,0-1" = the FFN
 * of layers 0 and 1.
 *
 * Each chosen matrix is programmed once (quantized per tensor to the
 * device's weight_bits, with its programming noise and faults), on first
 * use; every product then goes through it with the device's converters and
 * read noise. Not thread-safe: one forward pass at a time.
 */
#ifndef LLMD_CLI_PIM_LLM_H
#define LLMD_CLI_PIM_LLM_H

#include "core/llm.h"
#include "pim/pim.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cmd_pim_llm cmd_pim_llm;

/* What the hooked layers cost so far. */
struct cmd_pim_llm_report {
    int matrices;            /* programmed */
    uint64_t products;       /* hook calls that ran on the device */
    uint64_t vectors;        /* token rows through them */
    struct pim_cost program; /* programming the matrices */
    struct pim_cost run;     /* the products */
};

/* Parses SPEC for a model of n_layers into sel[layer * LLM_LINEAR_COUNT +
 * kind]. Returns 0 or -EINVAL with a message. */
int cmd_pim_llm_parse_spec(const char *spec, int n_layers, bool *sel, char *err, size_t err_len);

/* Hooks the chosen layers of model (fp32) onto dev with dataflow df
 * ("isaac", "cascade", "neural_pim"). Returns 0, -EINVAL (bad spec or
 * dataflow, err says why) or -ENOTSUP (a quantized model). */
int cmd_pim_llm_attach(llm_model *model, const char *spec, const struct pim_device *dev,
                       const char *dataflow, uint64_t seed, cmd_pim_llm **out, char *err,
                       size_t err_len);
/* The first error a product hit (0 when none; failed products fall back to
 * the float path). */
int cmd_pim_llm_error(const cmd_pim_llm *p);
void cmd_pim_llm_report(const cmd_pim_llm *p, struct cmd_pim_llm_report *out);
/* Removes the hook and frees the programmed matrices. */
void cmd_pim_llm_detach(cmd_pim_llm *p);

#endif

/* Fuzz target for the --pim-layers spec parser (cli/pim_llm.c): any
 * bytes parse to a selection or fail with a message, never crash; a parsed
 * spec selects something. */
#include "cli/pim_llm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256) return 0;
    char spec[257];
    memcpy(spec, data, size);
    spec[size] = '\0';
    enum { LAYERS = 12 };
    bool sel[LAYERS * LLM_LINEAR_COUNT];
    char err[256] = "";
    int n_layers = size > 0 ? 1 + data[0] % LAYERS : LAYERS;
    if (cmd_pim_llm_parse_spec(spec, n_layers, sel, err, sizeof err) != 0) {
        if (!err[0]) abort(); /* every failure says why */
        return 0;
    }
    bool any = false;
    for (int i = 0; i < n_layers * LLM_LINEAR_COUNT; i++) any |= sel[i];
    if (!any) abort();
    return 0;
}

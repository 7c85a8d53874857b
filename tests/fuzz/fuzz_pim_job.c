/* Fuzz target for the PIM job parser (server/pim_json.c): any bytes must
 * parse to a valid job or fail with an error naming a parameter, never
 * crash or leak; a parsed job renders, and a tiny one runs. */
#include "server/pim_json.h"
#include "util/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pim_json_limits lim;
    pim_json_limits_default(&lim);
    lim.max_tensor_elements = 4096; /* keep each input quick */
    lim.max_total_elements = 8192;
    lim.max_dim = 4096;
    lim.max_layers = 64;
    struct pim_job job;
    struct pim_json_error err = {0};
    int rc = pim_json_parse_job((const char *)data, size, &lim, NULL, &job, &err);
    if (rc != 0) {
        if (!err.message[0] || !err.code[0]) abort(); /* every failure says why */
        json_decref(pim_json_error_body(&err));
        return 0;
    }
    struct pim_error perr = {0};
    if (pim_job_validate(&job, &perr) != 0) abort(); /* parsed means valid */

    /* Run what is cheap to run: analytic evaluations and small products on
     * small devices. */
    bool small = job.type == PIM_JOB_DATAFLOW_EVAL ||
                 (job.type == PIM_JOB_VMM && pim_tensor_count(&job.matrix) <= 256 &&
                  pim_tensor_count(&job.input) <= 256 && job.device.weight_bits <= 16 &&
                  job.device.input_bits <= 16 && job.device.rows <= 256);
    if (small) {
        struct pim_result res;
        job.threads = 1;
        if (pim_job_run(&job, NULL, &res, &perr) == 0) {
            struct pim_job_view view = {
                .id = 1, .type = job.type, .status = PIM_STATUS_DONE, .device = 0, .result = &res};
            json_t *o = pim_json_job(&view, &lim);
            char *text = json_dumps(o, 0);
            free(text);
            json_decref(o);
            pim_result_free(&res);
        }
    }
    pim_job_free(&job);
    return 0;
}

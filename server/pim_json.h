/*
 * pim_json: JSON <-> pim structs for the PIM job endpoints (jansson).
 *
 * Routes the server wires to these and to pim/pim.h:
 *
 *   POST   /v1/pim/jobs        pim_json_parse_job(body) -> pim_pool_submit
 *                               -> 202 {"id": ..., "status": "queued"} via
 *                               pim_json_job(view); parse error -> 400 with
 *                               pim_json_error_body(err); -EAGAIN -> 429 +
 *                               Retry-After. With ?wait=S, pim_pool_wait (or
 *                               the pool's on_complete -> uv_async_send) and
 *                               answer like GET.
 *   GET    /v1/pim/jobs/{id}   pim_json_parse_job_id -> pim_pool_acquire ->
 *                               pim_json_job(view) -> pim_pool_release;
 *                               -ENOENT -> 404.
 *   DELETE /v1/pim/jobs/{id}   pim_pool_cancel: 0 -> 200 with the job,
 *                               -EALREADY -> 409, -ENOENT -> 404.
 *   GET    /v1/pim/devices     pim_pool_devices + pim_pool_stats ->
 *                               pim_json_devices.
 *
 * A job body:
 *   {"type": "vmm" | "solve" | "invert" | "kfac_step" | "sme_map" |
 *            "admm_compress" | "dataflow_eval",
 *    "device": "preset" | {"preset": "isaac", "<field>": value, ...},
 *    "dataflow": "isaac" | "cascade" | "neural_pim", "seed": 42,
 *    tensors by the names of pim.h (matrix, input, rhs, activations,
 *    output_grads, grad, inputs, targets), each a nested array or
 *    {"shape": [...], "dtype": "f32", "data": "<base64 little-endian>"},
 *    and per type: calibrate_adc, refine, max_iterations, inner_max, tolerance,
 *    residual_bits, damping, weight_bits, max_bits, block [r, c],
 *    keep_ratio, levels, rho, iterations, w_steps, retrain_steps,
 *    mismatch_sigma, mismatch_trials, layers [{"in","out","count"} or
 *    {"conv": {"in_channels","out_channels","kernel":[kh,kw],"out_h",
 *    "out_w"}, "count"}], dataflows ["isaac", ...]}.
 * Unknown fields are errors. Every error names the offending parameter.
 */
#ifndef LLMD_SERVER_PIM_JSON_H
#define LLMD_SERVER_PIM_JSON_H

#include "pim/pim.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* An OpenAI-shaped error: {"error": {"message", "type", "param", "code"}}.
 * param is empty when no single parameter is at fault (rendered null). */
struct pim_json_error {
    char message[256];
    char type[32];  /* "invalid_request_error" */
    char param[64]; /* "matrix", "device.adc_bits", "layers[2].in", ... */
    char code[32];  /* "invalid_json", "missing_parameter", "invalid_value",
                       "unknown_parameter", "too_large", ... */
};

/* Sizes a request may reach; the server sets them from its config. */
struct pim_json_limits {
    int64_t max_tensor_elements;        /* one tensor; default 2^24 */
    int64_t max_total_elements;         /* all tensors of a job; default 2^25 */
    int64_t max_dim;                    /* any one dimension; default 2^20 */
    int max_layers;                     /* dataflow_eval layers; default 4096 */
    int64_t max_output_elements_nested; /* larger outputs render as base64; default 2^16 */
    const char *replica_id;             /* job ids are pim-REPLICA-N; NULL or "" = pim-N */
};

void pim_json_limits_default(struct pim_json_limits *lim);

/* ---------------------------------------------------------------- presets */

/* Device presets by name, loaded from the .json files of conf/pim: each an object
 * with "name", an optional "base" (another preset, or the built-in ISAAC
 * default when absent), an optional "notes", and device fields. */
typedef struct pim_presets pim_presets;

/* Loads every .json file of dir. Returns 0, or -errno with err naming the file
 * and field. *out is freed with pim_presets_free. */
int pim_presets_load_dir(const char *dir, pim_presets **out, struct pim_json_error *err);
/* A set with only the built-in default ("isaac"). */
pim_presets *pim_presets_builtin(void);
void pim_presets_free(pim_presets *presets);
/* NULL if unknown. */
const struct pim_device *pim_presets_find(const pim_presets *presets, const char *name);
int pim_presets_count(const pim_presets *presets);
const struct pim_device *pim_presets_at(const pim_presets *presets, int index);

/* Applies the fields of a JSON object to dev (the same names as struct
 * pim_device). `prefix` is put before field names in errors ("device.").
 * "preset", "name", "base" and "notes" are left to the caller. */
int pim_json_device_apply(const json_t *obj, struct pim_device *dev, const char *prefix,
                          struct pim_json_error *err);

/* ------------------------------------------------------------------- jobs */

/* Parses and validates a job body into *job (pim_job_init'd here; on
 * success the caller owns its tensors: pim_job_free, or pim_pool_submit
 * takes them). presets may be NULL (built-in default only). Returns 0 or
 * -EINVAL (bad input, err filled), -E2BIG (over a limit, err filled). */
int pim_json_parse_job(const char *body, size_t len, const struct pim_json_limits *lim,
                       const pim_presets *presets, struct pim_job *job, struct pim_json_error *err);

/* The same for a parsed body (the server takes its own members, "wait",
 * out first). root is not modified. */
int pim_json_parse_job_object(const json_t *root, const struct pim_json_limits *lim,
                              const pim_presets *presets, struct pim_job *job,
                              struct pim_json_error *err);

/* Job ids are rendered "pim-<n>", or "pim-<replica>-<n>" with a replica id
 * (a balancer maps the id to its replica). Parsing takes only this
 * replica's ids. */
#define PIM_JOB_ID_MAX 64
void pim_json_format_job_id(const char *replica_id, uint64_t id, char buf[PIM_JOB_ID_MAX]);
/* Returns 0 and the id, or -EINVAL. */
int pim_json_parse_job_id(const char *replica_id, const char *text, uint64_t *id);

/* ---------------------------------------------------------------- render */

/* {"id", "object": "pim.job", "type", "status", "device", "queue_seconds",
 *  "run_seconds", "result": {...}} for a done job, "error": {...} for a
 * failed one. New reference; the caller json_decref's it. */
json_t *pim_json_job(const struct pim_job_view *view, const struct pim_json_limits *lim);

/* {"object": "list", "data": [devices], "config": {device fields},
 *  "queue": {"length", "capacity"}, "jobs": {...counters}}. New reference. */
json_t *pim_json_devices(const struct pim_device_info *devices, int n,
                         const struct pim_device *config, const struct pim_pool_stats *stats,
                         const char *replica_id); /* "replica_id" too: who answered */

/* All fields of a device (what presets and overrides accept). New reference. */
json_t *pim_json_device(const struct pim_device *dev);

/* {"error": {...}}. New reference. */
json_t *pim_json_error_body(const struct pim_json_error *err);

/* A cost report object (for embedding). New reference. */
json_t *pim_json_cost(const struct pim_cost *cost);

#endif

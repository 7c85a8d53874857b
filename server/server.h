/*
 * server: `llmd serve`, the HTTP serving daemon, and its configuration.
 *
 * The daemon is one libuv loop thread that owns HTTP (libmicrohttpd in
 * external-poll mode), an engine thread (core/engine.h) that batches the
 * generation requests, and a loader thread that reads the model while
 * /health answers 503. See server/daemon.h for how the pieces talk.
 *
 * Settings come from four places, each overriding the one before: the
 * compiled defaults (the same values conf/llmd.json lists), the config file,
 * LLMD_* environment variables, and command-line flags. One table in
 * config.c describes every setting once; the file key, the environment
 * variable (LLMD_ + upper case) and the flag (-- + dashes) derive from it.
 */
#ifndef LLMD_SERVER_SERVER_H
#define LLMD_SERVER_SERVER_H

#include "core/engine.h"
#include "core/model.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

/* ------------------------------------------------------------ the daemon */

/* Serves with settings that cli/settings.c has loaded and validated (the
 * daemon parses nothing itself). Runs until SIGTERM or SIGINT, then drains
 * (see the grace_s setting). Returns the process exit status: 0 after a
 * clean shutdown, 1 when the model cannot be loaded or the port cannot be
 * bound, 2 for settings the PIM pool refuses (its presets). */
struct srv_config;
int srv_serve(struct srv_config *config);

/* -------------------------------------------------------- configuration */

struct srv_config {
    char *config_path; /* the file read (NULL when none) */
    /* listening */
    char *host;
    int port; /* 0 = an ephemeral port, printed at start */
    /* the model */
    char *model;             /* GGUF path */
    char *served_model_name; /* "" = the model's own name */
    int threads;             /* compute threads; 0 = all cores */
    char *precision;         /* fp32 | w8a8 | w4a4-rtn | atom */
    char *kv_type;           /* f32 | f16 | int8 | int4 */
    int kv_pages;            /* 0 = the context x max_running sequences */
    int page_size;           /* tokens per KV page */
    int quest_budget;        /* default Quest token budget; 0 = dense */
    char *sparse_mode;       /* quest | window: what a budget selects */
    int dense_layers;        /* layers that stay dense under a budget */
    /* Atom's recipe, step by step (ablation switches; see llm_quant_options) */
    int group_size;     /* channels per int4 group; 0 = per row */
    int outliers;       /* int8 outlier channels; -1 = width / 32, 0 = none */
    double act_clip;    /* activation clipping ratio */
    double weight_clip; /* weight clipping ratio */
    bool gptq;          /* GPTQ (else round to nearest) */
    char *calib_file;   /* calibration text */
    int calib_tokens;   /* calibration tokens used */
    char *head;         /* output head: f32 | f16 | int8 */
    /* the engine */
    int max_running;
    int max_waiting;
    int max_step_tokens;
    int prefill_chunk;
    bool prefix_cache; /* share KV pages of common prompt prefixes */
    /* limits */
    int max_body_bytes;
    int max_header_bytes; /* per-connection memory for the request line and headers */
    int max_connections;
    double request_timeout_s; /* 0 = none */
    double sse_keepalive_s;   /* a quiet stream gets an SSE comment this often; 0 = never */
    double idle_timeout_s;    /* an idle keep-alive connection is closed after this */
    double grace_s;           /* on SIGTERM, running requests get this long to finish */
    /* access */
    char **api_keys;
    int n_api_keys;
    bool auth_health_metrics; /* /health and /metrics need a key too */
    char **cors_origins;      /* "*" allows any origin */
    int n_cors_origins;
    /* the PIM accelerator pool (/v1/pim/...) */
    int pim_devices;             /* simulated devices = worker threads */
    int pim_threads_per_job;     /* 0 = cores / devices */
    int pim_queue;               /* queued jobs before 429 */
    double pim_result_ttl_s;     /* finished jobs stay readable this long */
    int pim_max_tensor_elements; /* one tensor of a job */
    double pim_max_wait_s;       /* the longest "wait" a request may ask */
    char *pim_preset;            /* device of jobs that name none */
    char *pim_presets_dir;       /* conf/pim */
    /* logs */
    char *replica_id; /* "" = none */
    char *log_level;
    bool log_json;
    bool access_log;
};

/* What the settings mean for the model and the engine: the options `llmd
 * serve` loads the model and runs the engine with (benchmarks that measure
 * serve's configuration in-process use them too). */
void srv_config_model_options(const struct srv_config *config, struct llm_model_options *out);
void srv_config_engine_config(const struct srv_config *config, struct llm_engine_config *out);

#endif

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

/* `llmd serve [flags]`: argv[0] is "serve". Runs until SIGTERM or SIGINT,
 * then drains (see the grace_s setting). Returns the process exit status:
 * 0 after a clean shutdown, 1 when the model cannot be loaded or the port
 * cannot be bound, 2 for bad settings. */
int srv_serve_main(int argc, char **argv);

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
    char *replica_id;            /* "" = none */
    char *log_level;
    bool log_json;
    bool access_log;
};

/* Setting groups for srv_config_print_help: the model settings are shared
 * with the other commands that load a model (generate, perplexity, ...). */
enum { SRV_CONFIG_GROUP_MODEL = 1, SRV_CONFIG_GROUP_SERVER = 2, SRV_CONFIG_GROUP_ALL = 3 };

/* The default config file, read when it exists and no other is named. */
#define SRV_CONFIG_DEFAULT_PATH "conf/llmd.json"

/* Fills every setting with its compiled default. Free with srv_config_free. */
void srv_config_init(struct srv_config *config);
void srv_config_free(struct srv_config *config);

/* Applies a JSON object of settings; `origin` names it in messages.
 * Unknown keys, wrong types and out-of-range values are errors (-EINVAL
 * with a message in err). Values of secret settings never appear in
 * messages. */
int srv_config_apply_json(struct srv_config *config, const json_t *object, const char *origin,
                          char *err, size_t err_len);
/* Reads and applies a config file. -ENOENT when it does not exist. */
int srv_config_apply_file(struct srv_config *config, const char *path, char *err, size_t err_len);
/* Applies the LLMD_* environment variables that are set. */
int srv_config_apply_env(struct srv_config *config, char *err, size_t err_len);

/* Tries argv[*i] as a setting flag (`--port 9000`, `--port=9000`,
 * `--log-json`, `--no-log-json`). Returns 1 and advances *i past what it
 * used, 0 when argv[*i] is not a setting flag (leaving *i), or -EINVAL with
 * a message. For commands that mix these flags with their own. */
int srv_config_parse_flag(struct srv_config *config, int argc, char **argv, int *i, char *err,
                          size_t err_len);

/* Checks the settings together (ranges are checked as they are applied).
 * 0 or -EINVAL with a message. */
int srv_config_validate(const struct srv_config *config, char *err, size_t err_len);

/* The whole precedence chain for `llmd serve`: defaults, the config file
 * (--config FILE, else LLMD_CONFIG, else conf/llmd.json when it exists),
 * the environment, the flags (argv[0] is the command name), then
 * srv_config_validate. Returns 0, SRV_CONFIG_HELP when --help/-h was given,
 * or -EINVAL/-ENOENT with a message. The config must have been
 * srv_config_init'ed. */
#define SRV_CONFIG_HELP 1
int srv_config_load(struct srv_config *config, int argc, char **argv, char *err, size_t err_len);

/* What the settings mean for the model and the engine: the options `llmd
 * serve` loads the model and runs the engine with (benchmarks that measure
 * serve's configuration in-process use them too). */
void srv_config_model_options(const struct srv_config *config, struct llm_model_options *out);
void srv_config_engine_config(const struct srv_config *config, struct llm_engine_config *out);

/* All settings as a JSON object in the config file's format (new
 * reference), secrets replaced by "<redacted>": for the start-up log, and
 * for checking conf/llmd.json against the compiled defaults. */
json_t *srv_config_to_json(const struct srv_config *config);

/* Lists the settings of `groups` as flags, each with its environment
 * variable and default. */
void srv_config_print_help(FILE *out, unsigned groups);

#endif

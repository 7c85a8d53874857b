/*
 * metrics: the Prometheus text exposition (format 0.0.4) of /metrics.
 *
 * The server's own metrics live in struct srv_metrics and are touched by the
 * loop thread only, so they need no locks. Names carry the prefix `llmd_`
 * and follow vLLM's, with vLLM's histogram buckets; the process_* metrics
 * follow the Prometheus client libraries' conventions.
 *
 * Other modules add their metrics through a collector: a function called on
 * the loop thread at every scrape that appends complete metric families with
 * the srv_metrics_write_* helpers (the PIM pool registers one for its job
 * counters). A collector reading counters that other threads update must
 * read them atomically.
 */
#ifndef LLMD_SERVER_METRICS_H
#define LLMD_SERVER_METRICS_H

#include "core/engine.h"
#include "server/buf.h"

#include <stdbool.h>
#include <stdint.h>

/* ----------------------------------------------------------- histograms */

struct srv_histogram {
    const double *bounds; /* upper bounds, strictly increasing; not owned */
    int n_bounds;
    uint64_t *counts; /* n_bounds + 1 (the last is +Inf), not cumulative */
    double sum;
    uint64_t count;
};

void srv_histogram_init(struct srv_histogram *h, const double *bounds, int n_bounds);
void srv_histogram_free(struct srv_histogram *h);
/* Counts v in the first bucket whose bound is >= v (Prometheus' `le`). */
void srv_histogram_observe(struct srv_histogram *h, double v);

/* vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to max_value.
 * Writes at most cap bounds; returns how many. */
int srv_buckets_1_2_5(int max_value, double *out, int cap);

/* vLLM's bucket boundaries (vllm/engine/metrics.py, v1 logger). */
extern const double srv_buckets_ttft[];
extern const int srv_n_buckets_ttft;
extern const double srv_buckets_tpot[];
extern const int srv_n_buckets_tpot;
extern const double srv_buckets_request_latency[]; /* e2e and queue time */
extern const int srv_n_buckets_request_latency;

/* ------------------------------------------------------ writing families */

/* Formats a sample value the way Prometheus reads it back exactly: the
 * shortest decimal that round-trips, "+Inf", "-Inf" or "NaN". */
void srv_metrics_format_value(char *out, size_t cap, double v);
/* Appends a label value with \, " and newline escaped. */
void srv_metrics_escape_label(struct srv_buf *out, const char *value);
/* "# HELP name help\n# TYPE name type\n" */
void srv_metrics_write_header(struct srv_buf *out, const char *name, const char *type,
                              const char *help);
/* "name{labels} value\n"; labels is preformatted (`a="b",c="d"`) or NULL. */
void srv_metrics_write_sample(struct srv_buf *out, const char *name, const char *labels, double v);
/* A one-sample family. */
void srv_metrics_write_gauge(struct srv_buf *out, const char *name, const char *help, double v);
void srv_metrics_write_counter(struct srv_buf *out, const char *name, const char *help, double v);
/* A whole histogram family: cumulative _bucket{le=...} lines, +Inf, _sum,
 * _count. */
void srv_metrics_write_histogram(struct srv_buf *out, const char *name, const char *help,
                                 const struct srv_histogram *h);
/* process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_start_time_seconds,
 * process_open_fds, process_max_fds, read from /proc/self. */
void srv_metrics_write_process(struct srv_buf *out);

/* ------------------------------------------------- the server's metrics */

typedef void (*srv_metrics_collect_fn)(struct srv_buf *out, void *ctx);

#define SRV_METRICS_MAX_COLLECTORS    8
#define SRV_METRICS_MAX_HTTP          128 /* distinct (path, status) pairs */
#define SRV_METRICS_MAX_TOKEN_BUCKETS 32

/* What one engine request (one choice) reported when it ended. */
struct srv_request_timing {
    enum llm_finish finish;
    int prompt_tokens;
    int completion_tokens;
    double queue_s;
    double first_token_s; /* < 0 when no token came */
    double total_s;
};

struct srv_metrics {
    int64_t prompt_tokens;
    int64_t generation_tokens;
    int64_t finished[LLM_FINISH_ERROR + 1];
    struct {
        const char *path; /* static string: a route name */
        int status;
        int64_t count;
    } http[SRV_METRICS_MAX_HTTP];
    int n_http;
    struct srv_histogram ttft, tpot, itl, e2e, queue, prompt_len, generation_len;
    double token_bounds[SRV_METRICS_MAX_TOKEN_BUCKETS];
    int n_token_bounds; /* 0 until the context length is known */
    struct {
        srv_metrics_collect_fn fn;
        void *ctx;
    } collectors[SRV_METRICS_MAX_COLLECTORS];
    int n_collectors;
};

/* The engine's state at scrape time (llm_engine_stats), or zeros with
 * `valid` false while no engine runs. */
struct srv_engine_gauges {
    bool valid;
    struct llm_engine_stats stats;
};

void srv_metrics_init(struct srv_metrics *m);
void srv_metrics_free(struct srv_metrics *m);
/* Sizes the prompt and generation length histograms (1-2-5 buckets up to
 * the context length, as vLLM does); called once the model is loaded. */
void srv_metrics_set_context_length(struct srv_metrics *m, int ctx_len);
/* Records a finished engine request: finish reason, token counters and the
 * TTFT, time per output token, end-to-end, queue and length histograms. */
void srv_metrics_observe_request(struct srv_metrics *m, const struct srv_request_timing *t);
/* Records the gap between two tokens of one sequence. */
void srv_metrics_observe_inter_token(struct srv_metrics *m, double seconds);
/* Counts one HTTP request. `path` must be a static string from a bounded
 * set (route names), so that label cardinality stays bounded. */
void srv_metrics_count_http(struct srv_metrics *m, const char *path, int status);
/* Registers a collector; returns -ENOSPC when SRV_METRICS_MAX_COLLECTORS
 * are registered. */
int srv_metrics_add_collector(struct srv_metrics *m, srv_metrics_collect_fn fn, void *ctx);
/* Appends the whole /metrics page. */
void srv_metrics_render(const struct srv_metrics *m, const struct srv_engine_gauges *g,
                        struct srv_buf *out);

#endif

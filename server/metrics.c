/* metrics.c: histograms, the Prometheus text format, process metrics. */
#include "server/metrics.h"

#include "util/util.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ----------------------------------------------------------- histograms */

const double srv_buckets_ttft[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                   0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                   20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const int srv_n_buckets_ttft = sizeof srv_buckets_ttft / sizeof srv_buckets_ttft[0];
const double srv_buckets_tpot[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                   0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const int srv_n_buckets_tpot = sizeof srv_buckets_tpot / sizeof srv_buckets_tpot[0];
const double srv_buckets_request_latency[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                              5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                              60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const int srv_n_buckets_request_latency =
    sizeof srv_buckets_request_latency / sizeof srv_buckets_request_latency[0];

void srv_histogram_init(struct srv_histogram *h, const double *bounds, int n_bounds)
{
    for (int i = 1; i < n_bounds; i++) UTIL_CHECK(bounds[i] > bounds[i - 1]);
    h->bounds = bounds;
    h->n_bounds = n_bounds;
    h->counts = util_xcalloc((size_t)n_bounds + 1, sizeof *h->counts);
    h->sum = 0;
    h->count = 0;
}

void srv_histogram_free(struct srv_histogram *h)
{
    free(h->counts);
    h->counts = NULL;
}

void srv_histogram_observe(struct srv_histogram *h, double v)
{
    /* Binary search for the first bound >= v; NaN lands in +Inf. */
    int lo = 0, hi = h->n_bounds;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (h->bounds[mid] >= v)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (isnan(v)) lo = h->n_bounds;
    h->counts[lo]++;
    h->sum += v;
    h->count++;
}

int srv_buckets_1_2_5(int max_value, double *out, int cap)
{
    static const int mantissa[] = {1, 2, 5};
    int n = 0;
    for (double scale = 1;; scale *= 10)
        for (int i = 0; i < 3; i++) {
            double v = mantissa[i] * scale;
            if (v > max_value || n == cap) return n;
            out[n++] = v;
        }
}

/* ------------------------------------------------------ writing families */

void srv_metrics_format_value(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == (double)(int64_t)v && fabs(v) < 1e15) {
        snprintf(out, cap, "%lld", (long long)v);
        return;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(out, cap, "%.*g", precision, v);
        if (strtod(out, NULL) == v) return;
    }
}

void srv_metrics_escape_label(struct srv_buf *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            srv_buf_puts(out, "\\\\");
        else if (*p == '"')
            srv_buf_puts(out, "\\\"");
        else if (*p == '\n')
            srv_buf_puts(out, "\\n");
        else
            srv_buf_append(out, p, 1);
    }
}

void srv_metrics_write_header(struct srv_buf *out, const char *name, const char *type,
                              const char *help)
{
    srv_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void srv_metrics_write_sample(struct srv_buf *out, const char *name, const char *labels, double v)
{
    char value[40];
    srv_metrics_format_value(value, sizeof value, v);
    if (labels && labels[0])
        srv_buf_printf(out, "%s{%s} %s\n", name, labels, value);
    else
        srv_buf_printf(out, "%s %s\n", name, value);
}

void srv_metrics_write_gauge(struct srv_buf *out, const char *name, const char *help, double v)
{
    srv_metrics_write_header(out, name, "gauge", help);
    srv_metrics_write_sample(out, name, NULL, v);
}

void srv_metrics_write_counter(struct srv_buf *out, const char *name, const char *help, double v)
{
    srv_metrics_write_header(out, name, "counter", help);
    srv_metrics_write_sample(out, name, NULL, v);
}

void srv_metrics_write_histogram(struct srv_buf *out, const char *name, const char *help,
                                 const struct srv_histogram *h)
{
    srv_metrics_write_header(out, name, "histogram", help);
    char sample[160], le[48], bound[40];
    snprintf(sample, sizeof sample, "%s_bucket", name);
    uint64_t cumulative = 0;
    for (int i = 0; i <= h->n_bounds; i++) {
        cumulative += h->counts[i];
        if (i < h->n_bounds)
            srv_metrics_format_value(bound, sizeof bound, h->bounds[i]);
        else
            snprintf(bound, sizeof bound, "+Inf");
        snprintf(le, sizeof le, "le=\"%s\"", bound);
        srv_metrics_write_sample(out, sample, le, (double)cumulative);
    }
    snprintf(sample, sizeof sample, "%s_sum", name);
    srv_metrics_write_sample(out, sample, NULL, h->sum);
    snprintf(sample, sizeof sample, "%s_count", name);
    srv_metrics_write_sample(out, sample, NULL, (double)h->count);
}

/* Fields of /proc/self/stat we report (see proc(5)). */
struct proc_stat {
    double cpu_s;
    double start_s; /* since boot */
    double vsize;
    double rss_bytes;
};

static int read_proc_stat(struct proc_stat *st)
{
    char text[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -errno;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: fields
     * are counted from the last ')'. */
    char *p = strrchr(text, ')');
    if (!p) return -EBADMSG;
    unsigned long utime = 0, stime = 0, vsize = 0;
    unsigned long long starttime = 0;
    long rss = 0;
    int got = sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d "
                     "%*d %llu %lu %ld",
                     &utime, &stime, &starttime, &vsize, &rss);
    if (got != 5) return -EBADMSG;
    double tick = (double)sysconf(_SC_CLK_TCK);
    st->cpu_s = (double)(utime + stime) / tick;
    st->start_s = (double)starttime / tick;
    st->vsize = (double)vsize;
    st->rss_bytes = (double)rss * (double)sysconf(_SC_PAGESIZE);
    return 0;
}

static double boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[256];
    double btime = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %lf", &btime) == 1) break;
    fclose(f);
    return btime;
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory stream's own fd */
}

void srv_metrics_write_process(struct srv_buf *out)
{
    struct proc_stat st;
    if (read_proc_stat(&st) == 0) {
        srv_metrics_write_counter(out, "process_cpu_seconds_total",
                                  "Total user and system CPU time spent in seconds.", st.cpu_s);
        srv_metrics_write_gauge(out, "process_resident_memory_bytes",
                                "Resident memory size in bytes.", st.rss_bytes);
        srv_metrics_write_gauge(out, "process_virtual_memory_bytes",
                                "Virtual memory size in bytes.", st.vsize);
        srv_metrics_write_gauge(out, "process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.",
                                boot_time() + st.start_s);
    }
    int fds = count_open_fds();
    if (fds >= 0)
        srv_metrics_write_gauge(out, "process_open_fds", "Number of open file descriptors.", fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        srv_metrics_write_gauge(out, "process_max_fds", "Maximum number of open file descriptors.",
                                rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

/* ------------------------------------------------- the server's metrics */

void srv_metrics_init(struct srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    srv_histogram_init(&m->ttft, srv_buckets_ttft, srv_n_buckets_ttft);
    srv_histogram_init(&m->tpot, srv_buckets_tpot, srv_n_buckets_tpot);
    srv_histogram_init(&m->itl, srv_buckets_tpot, srv_n_buckets_tpot);
    srv_histogram_init(&m->e2e, srv_buckets_request_latency, srv_n_buckets_request_latency);
    srv_histogram_init(&m->queue, srv_buckets_request_latency, srv_n_buckets_request_latency);
}

void srv_metrics_free(struct srv_metrics *m)
{
    srv_histogram_free(&m->ttft);
    srv_histogram_free(&m->tpot);
    srv_histogram_free(&m->itl);
    srv_histogram_free(&m->e2e);
    srv_histogram_free(&m->queue);
    if (m->n_token_bounds) {
        srv_histogram_free(&m->prompt_len);
        srv_histogram_free(&m->generation_len);
    }
}

void srv_metrics_set_context_length(struct srv_metrics *m, int ctx_len)
{
    UTIL_CHECK(m->n_token_bounds == 0 && ctx_len >= 1);
    m->n_token_bounds = srv_buckets_1_2_5(ctx_len, m->token_bounds, SRV_METRICS_MAX_TOKEN_BUCKETS);
    srv_histogram_init(&m->prompt_len, m->token_bounds, m->n_token_bounds);
    srv_histogram_init(&m->generation_len, m->token_bounds, m->n_token_bounds);
}

void srv_metrics_observe_request(struct srv_metrics *m, const struct srv_request_timing *t)
{
    UTIL_CHECK(t->finish >= 0 && t->finish <= LLM_FINISH_ERROR);
    m->finished[t->finish]++;
    m->prompt_tokens += t->prompt_tokens;
    m->generation_tokens += t->completion_tokens;
    if (t->first_token_s >= 0) srv_histogram_observe(&m->ttft, t->first_token_s);
    if (t->completion_tokens > 1)
        srv_histogram_observe(&m->tpot,
                              (t->total_s - t->first_token_s) / (double)(t->completion_tokens - 1));
    srv_histogram_observe(&m->e2e, t->total_s);
    srv_histogram_observe(&m->queue, t->queue_s);
    if (m->n_token_bounds) {
        srv_histogram_observe(&m->prompt_len, t->prompt_tokens);
        srv_histogram_observe(&m->generation_len, t->completion_tokens);
    }
}

void srv_metrics_observe_inter_token(struct srv_metrics *m, double seconds)
{
    srv_histogram_observe(&m->itl, seconds);
}

void srv_metrics_count_http(struct srv_metrics *m, const char *path, int status)
{
    for (int i = 0; i < m->n_http; i++)
        if (m->http[i].status == status && strcmp(m->http[i].path, path) == 0) {
            m->http[i].count++;
            return;
        }
    if (m->n_http == SRV_METRICS_MAX_HTTP) {
        LOG_WARN("metrics: more than %d (path, status) pairs; not counted", SRV_METRICS_MAX_HTTP);
        return;
    }
    m->http[m->n_http].path = path;
    m->http[m->n_http].status = status;
    m->http[m->n_http].count = 1;
    m->n_http++;
}

int srv_metrics_add_collector(struct srv_metrics *m, srv_metrics_collect_fn fn, void *ctx)
{
    if (m->n_collectors == SRV_METRICS_MAX_COLLECTORS) return -ENOSPC;
    m->collectors[m->n_collectors].fn = fn;
    m->collectors[m->n_collectors].ctx = ctx;
    m->n_collectors++;
    return 0;
}

static void render_engine(const struct srv_engine_gauges *g, struct srv_buf *out)
{
    const struct llm_engine_stats *s = &g->stats;
    srv_metrics_write_gauge(out, "llmd_num_requests_running",
                            "Sequences the engine is running (prefilling or decoding).",
                            s->running);
    srv_metrics_write_gauge(out, "llmd_num_requests_waiting",
                            "Sequences waiting in the engine's queue.", s->waiting);
    srv_metrics_write_gauge(out, "llmd_kv_pages_used",
                            "KV cache pages held by sequences (idle cached pages count as free).", s->kv_pages_used);
    srv_metrics_write_gauge(out, "llmd_kv_pages_capacity", "KV cache pages in the pool.",
                            s->kv_pages_total);
    srv_metrics_write_gauge(out, "llmd_kv_cache_usage_perc",
                            "KV cache usage. 1 means 100 percent usage.",
                            s->kv_pages_total ? (double)s->kv_pages_used / s->kv_pages_total : 0);
    srv_metrics_write_counter(out, "llmd_engine_steps_total", "Forward steps the engine ran.",
                              (double)s->steps);
    srv_metrics_write_counter(
        out, "llmd_quest_pages_read_total",
        "KV page reads made by sparse (Quest) decode steps (per layer and KV head).",
        (double)s->quest_pages_read);
    srv_metrics_write_counter(out, "llmd_quest_pages_dense_total",
                              "KV page reads dense attention would have made in those steps.",
                              (double)s->quest_pages_total);
    srv_metrics_write_gauge(
        out, "llmd_quest_pages_read_fraction",
        "Fraction of KV pages read in sparse decode steps since start (1 = none yet).",
        s->quest_pages_total ? (double)s->quest_pages_read / (double)s->quest_pages_total : 1.0);
    srv_metrics_write_counter(out, "llmd_prefix_cache_query_tokens_total",
                              "Prompt tokens of admitted sequences, looked up in the prefix cache.",
                              (double)s->prompt_tokens);
    srv_metrics_write_counter(out, "llmd_prefix_cache_hit_tokens_total",
                              "Prompt tokens whose KV came from the prefix cache.",
                              (double)s->cached_tokens);
    srv_metrics_write_gauge(
        out, "llmd_prefix_cache_hit_ratio",
        "Fraction of admitted prompt tokens taken from the prefix cache since start.",
        s->prompt_tokens ? (double)s->cached_tokens / (double)s->prompt_tokens : 0);
    srv_metrics_write_gauge(out, "llmd_kv_pages_cached",
                            "KV pages published to the prefix cache (held or idle).",
                            s->kv_pages_cached);
    srv_metrics_write_gauge(out, "llmd_kv_pages_shared",
                            "KV pages held by more than one sequence.", s->kv_pages_shared);
    srv_metrics_write_counter(out, "llmd_kv_pages_evicted_total",
                              "Idle cached KV pages given out again when the pool ran short.",
                              (double)s->kv_pages_evicted);
}

void srv_metrics_render(const struct srv_metrics *m, const struct srv_engine_gauges *g,
                        struct srv_buf *out)
{
    render_engine(g, out);

    srv_metrics_write_counter(out, "llmd_prompt_tokens_total", "Prompt tokens processed.",
                              (double)m->prompt_tokens);
    srv_metrics_write_counter(out, "llmd_generation_tokens_total", "Generated tokens.",
                              (double)m->generation_tokens);
    srv_metrics_write_header(out, "llmd_request_finished_total", "counter",
                             "Engine requests (one per choice) by finish reason.");
    for (int r = LLM_FINISH_STOP; r <= LLM_FINISH_ERROR; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "finished_reason=\"%s\"", llm_finish_name(r));
        srv_metrics_write_sample(out, "llmd_request_finished_total", labels,
                                 (double)m->finished[r]);
    }
    srv_metrics_write_header(out, "llmd_http_requests_total", "counter",
                             "HTTP requests by route and status (499: the client left first).");
    for (int i = 0; i < m->n_http; i++) {
        struct srv_buf labels = SRV_BUF_INIT;
        srv_buf_puts(&labels, "path=\"");
        srv_metrics_escape_label(&labels, m->http[i].path);
        srv_buf_printf(&labels, "\",status=\"%d\"", m->http[i].status);
        srv_metrics_write_sample(out, "llmd_http_requests_total", labels.data,
                                 (double)m->http[i].count);
        srv_buf_free(&labels);
    }

    srv_metrics_write_histogram(out, "llmd_time_to_first_token_seconds",
                                "Histogram of time to first token in seconds.", &m->ttft);
    srv_metrics_write_histogram(out, "llmd_time_per_output_token_seconds",
                                "Histogram of time per output token (per request, after the "
                                "first) in seconds.",
                                &m->tpot);
    srv_metrics_write_histogram(out, "llmd_inter_token_latency_seconds",
                                "Histogram of the time between two tokens of a sequence in "
                                "seconds.",
                                &m->itl);
    srv_metrics_write_histogram(out, "llmd_e2e_request_latency_seconds",
                                "Histogram of end to end request latency in seconds.", &m->e2e);
    srv_metrics_write_histogram(out, "llmd_request_queue_time_seconds",
                                "Histogram of time spent waiting in the queue in seconds.",
                                &m->queue);
    if (m->n_token_bounds) {
        srv_metrics_write_histogram(out, "llmd_request_prompt_tokens",
                                    "Histogram of prompt tokens per request.", &m->prompt_len);
        srv_metrics_write_histogram(out, "llmd_request_generation_tokens",
                                    "Histogram of generated tokens per request.",
                                    &m->generation_len);
    }

    srv_metrics_write_process(out);
    for (int i = 0; i < m->n_collectors; i++) m->collectors[i].fn(out, m->collectors[i].ctx);
}

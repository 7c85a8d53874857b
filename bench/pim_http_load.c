/*
 * pim_http_load: jobs/s of the PIM pool over HTTP against the same pool
 * driven in-process, side by side.
 *
 * For each job size and client concurrency C it runs C client threads in a
 * closed loop, each POSTing {"...", "wait": 60} to /v1/pim/jobs (one round
 * trip per finished job, keep-alive) until `jobs` have finished, and reports
 * jobs/s and the p50/p99 round trip. The in-process column does the same
 * work minus HTTP: parse the same body (pim_json_parse_job), submit to a
 * pool of the same size, pim_pool_wait, render the result (pim_json_job).
 * The ratio HTTP / in-process is the cost of the network service.
 *
 * Starts `build/llmd serve --model tests/data/tiny-random.gguf --port 0
 * --pim-devices D` itself (the model only serves /health here).
 *
 * Each cell is the median of `repeat` runs, HTTP and in-process runs
 * alternated, so that a busy machine's swings hit both columns alike.
 *
 *   build/bench/pim_http_load [--devices 2] [--concurrency 1,4,16] [--jobs N] [--repeat 5]
 */
#include "bench/bench.h"
#include "server/buf.h"
#include "server/pim_json.h"
#include "util/util.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LEVELS  8
#define MAX_CLIENTS 64

static pid_t server_pid;

struct job_size {
    const char *name;
    int m, n, batch;
};

static const struct job_size sizes[] = {
    {"vmm 32x32, 1 vector", 32, 32, 1},
    {"vmm 128x128, 64 vectors", 128, 128, 64},
};

/* A vmm job body with a seeded random matrix and input. */
static char *job_body(const struct job_size *s)
{
    struct srv_buf b = SRV_BUF_INIT;
    uint64_t state = 42;
    srv_buf_printf(&b, "{\"type\":\"vmm\",\"seed\":1,\"wait\":60,\"matrix\":[");
    for (int i = 0; i < s->m; i++) {
        srv_buf_puts(&b, i ? ",[" : "[");
        for (int j = 0; j < s->n; j++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            srv_buf_printf(&b, "%s%.4f", j ? "," : "", (double)(state >> 40) / (1 << 24) - 0.5);
        }
        srv_buf_puts(&b, "]");
    }
    srv_buf_puts(&b, "],\"input\":[");
    for (int i = 0; i < s->batch; i++) {
        srv_buf_puts(&b, i ? ",[" : "[");
        for (int j = 0; j < s->n; j++) srv_buf_printf(&b, "%s%.3f", j ? "," : "", (j % 7) * 0.1);
        srv_buf_puts(&b, "]");
    }
    srv_buf_puts(&b, "]}");
    return srv_buf_take(&b);
}

/* ------------------------------------------------------------ the server */

static int start_server(int devices, char *base, size_t len)
{
    char dev[16];
    snprintf(dev, sizeof dev, "%d", devices);
    const char *argv[] = {"build/llmd",
                          "serve",
                          "--model",
                          "tests/data/tiny-random.gguf",
                          "--port",
                          "0",
                          "--precision",
                          "fp32",
                          "--kv-type",
                          "f32",
                          "--pim-devices",
                          dev,
                          "--pim-queue",
                          "1024",
                          "--access-log=false",
                          NULL};
    server_pid = bench_start_server(argv, "/tmp/llmd-pim-http-load.log", 60, base, len);
    return server_pid < 0 ? (int)server_pid : 0;
}

static void stop_server(void)
{
    if (server_pid <= 0) return;
    bench_stop_server(server_pid);
    server_pid = 0;
}

/* --------------------------------------------------------------- clients */

struct run {
    const char *url; /* NULL: in-process */
    const char *body;
    pim_pool *pool;
    atomic_int next;
    int jobs;
    double *latency; /* per job */
    atomic_int failures;
};

static size_t collect(char *d, size_t s, size_t n, void *ctx)
{
    srv_buf_append(ctx, d, s * n);
    return s * n;
}

static bool http_job(CURL *c, struct run *r)
{
    struct srv_buf out = SRV_BUF_INIT;
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    long status = 0;
    bool ok = curl_easy_perform(c) == CURLE_OK;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    ok = ok && status == 200 && out.data && strstr(out.data, "\"status\":\"done\"");
    (void)r;
    srv_buf_free(&out);
    return ok;
}

static bool pool_job(struct run *r)
{
    struct pim_job job;
    struct pim_json_error err;
    /* the body without "wait", which is the server's, not the codec's */
    if (pim_json_parse_job(r->body, strlen(r->body), NULL, NULL, &job, &err)) return false;
    uint64_t id;
    struct pim_error perr = {0};
    if (pim_pool_submit(r->pool, &job, &id, &perr)) {
        pim_job_free(&job);
        return false;
    }
    if (pim_pool_wait(r->pool, id, 60)) return false;
    struct pim_job_view view;
    if (pim_pool_acquire(r->pool, id, &view)) return false;
    bool ok = view.status == PIM_STATUS_DONE;
    json_t *j = pim_json_job(&view, NULL);
    char *text = json_dumps(j, JSON_COMPACT);
    free(text);
    json_decref(j);
    pim_pool_release(r->pool, &view);
    return ok;
}

static void *client_main(void *arg)
{
    struct run *r = arg;
    CURL *c = NULL;
    if (r->url) {
        c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, r->url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    }
    for (;;) {
        int i = atomic_fetch_add(&r->next, 1);
        if (i >= r->jobs) break;
        double t0 = util_now();
        bool ok = c ? http_job(c, r) : pool_job(r);
        r->latency[i] = util_now() - t0;
        if (!ok) atomic_fetch_add(&r->failures, 1);
    }
    if (c) curl_easy_cleanup(c);
    return NULL;
}

struct result {
    double jobs_s, p50, p99;
    int failures;
};

static struct result drive(const char *url, const char *body, pim_pool *pool, int clients, int jobs)
{
    struct run r = {.url = url, .body = body, .pool = pool, .jobs = jobs};
    r.latency = util_xcalloc((size_t)jobs, sizeof *r.latency);
    pthread_t t[MAX_CLIENTS];
    double t0 = util_now();
    for (int i = 0; i < clients; i++) pthread_create(&t[i], NULL, client_main, &r);
    for (int i = 0; i < clients; i++) pthread_join(t[i], NULL);
    double secs = util_now() - t0;
    qsort(r.latency, (size_t)jobs, sizeof *r.latency, bench_cmp_double);
    struct result res = {jobs / secs, r.latency[jobs / 2], r.latency[(int)(jobs * 0.99)],
                         atomic_load(&r.failures)};
    free(r.latency);
    return res;
}

/* Field by field medians of runs. */
static struct result median_result(const struct result *runs, int n)
{
    double v[3][99];
    for (int i = 0; i < n; i++) {
        v[0][i] = runs[i].jobs_s;
        v[1][i] = runs[i].p50;
        v[2][i] = runs[i].p99;
    }
    for (int f = 0; f < 3; f++) qsort(v[f], (size_t)n, sizeof v[f][0], bench_cmp_double);
    struct result r = {v[0][n / 2], v[1][n / 2], v[2][n / 2], 0};
    return r;
}

/* The body without its "wait" member (the codec refuses unknown fields). */
static char *without_wait(const char *body)
{
    char *copy = util_xstrdup(body);
    char *w = strstr(copy, "\"wait\":60,");
    if (w) memmove(w, w + 10, strlen(w + 10) + 1);
    return copy;
}

int main(int argc, char **argv)
{
    int devices = 2, jobs = 0, repeat = 5, levels[MAX_LEVELS] = {1, 4, 16}, n_levels = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--devices") && i + 1 < argc) {
            devices = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) {
            repeat = atoi(argv[++i]);
            if (repeat < 1 || repeat > 99) repeat = 5;
        } else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) {
            jobs = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc) {
            n_levels = 0;
            for (char *s = argv[++i]; *s && n_levels < MAX_LEVELS;) {
                int v = (int)strtol(s, &s, 10);
                if (v < 1 || v > MAX_CLIENTS) {
                    fprintf(stderr, "concurrency 1..%d\n", MAX_CLIENTS);
                    return 2;
                }
                levels[n_levels++] = v;
                if (*s == ',') s++;
            }
        } else {
            fprintf(stderr, "usage: %s [--devices D] [--concurrency 1,4,16] [--jobs N]\n", argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char base[256], url[300];
    if (start_server(devices, base, sizeof base)) {
        fprintf(stderr, "cannot start build/llmd serve\n");
        return 1;
    }
    snprintf(url, sizeof url, "%s/v1/pim/jobs", base);
    struct pim_pool_config pc;
    pim_pool_config_default(&pc);
    pc.n_devices = devices;
    pc.queue_capacity = 1024;
    pim_pool *pool;
    if (pim_pool_create(&pc, &pool)) return 1;

    printf("PIM pool over HTTP vs in-process, %d devices, closed loop, \"wait\" in the body, "
           "medians of %d alternated runs\n\n",
           devices, repeat);
    printf("%-26s %4s %6s | %10s %9s %9s | %10s %9s | %6s\n", "job", "C", "jobs", "HTTP job/s",
           "p50 ms", "p99 ms", "pool job/s", "p50 ms", "ratio");
    int failures = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        char *body = job_body(&sizes[s]);
        char *plain = without_wait(body);
        for (int l = 0; l < n_levels; l++) {
            int c = levels[l];
            int n = jobs > 0 ? jobs : (s == 0 ? 200 : 24) * (c < 4 ? 1 : 2);
            drive(url, body, NULL, c, c); /* warm the connections */
            struct result hs[99], ps[99];
            for (int k = 0; k < repeat; k++) {
                hs[k] = drive(url, body, NULL, c, n);
                ps[k] = drive(NULL, plain, pool, c, n);
                failures += hs[k].failures + ps[k].failures;
            }
            struct result h = median_result(hs, repeat), p = median_result(ps, repeat);
            printf("%-26s %4d %6d | %10.1f %9.2f %9.2f | %10.1f %9.2f | %6.2f\n", sizes[s].name, c,
                   n, h.jobs_s, h.p50 * 1e3, h.p99 * 1e3, p.jobs_s, p.p50 * 1e3,
                   h.jobs_s / p.jobs_s);
            fflush(stdout);
        }
        printf("  (body %zu bytes)\n", strlen(body));
        free(body);
        free(plain);
    }
    printf("\nratio = HTTP jobs/s / in-process jobs/s at the same concurrency.\n");
    if (failures) printf("FAILED JOBS: %d\n", failures);
    pim_pool_destroy(pool);
    stop_server();
    curl_global_cleanup();
    return failures ? 1 : 0;
}

/*
 * loadgen: load test of `llmd serve` (or any OpenAI-compatible server) with
 * streamed completions. At each concurrency level it keeps that many
 * requests in flight (closed loop) until it has `requests` answers, and
 * reports requests/s, output tokens/s, time to first token, time per output
 * token (per request, after the first), inter-token latency (every gap
 * between two streamed tokens) and end-to-end latency, p50 and p99. Then it
 * runs `wrk -t2 -c32 -d10s` on /health.
 *
 * Without --url it starts `build/llmd serve` itself on a free port with
 * --model (default models/llmd-20m.gguf, else the test model) and stops
 * it with SIGTERM at the end.
 *
 *   build/bench/loadgen [--url URL] [--model PATH] [--concurrency 1,4,8,16,64]
 *                       [--requests N] [--max-tokens 32] [--server-arg ARG]...
 */
#include "bench/sse_client.h"

#include <signal.h>

#define MAX_LEVELS      16
#define MAX_SERVER_ARGS 32

struct options {
    const char *url;
    const char *model;
    int levels[MAX_LEVELS];
    int n_levels;
    int requests; /* per level; 0 = max(16, 4 x concurrency) */
    int max_tokens;
    const char *prompt;
    bool wrk;
    const char *server_args[MAX_SERVER_ARGS];
    int n_server_args;
};

static char *request_body(const struct options *o)
{
    json_t *body = json_pack("{s:s,s:i,s:f,s:b,s:b,s:{s:b}}", "prompt", o->prompt, "max_tokens",
                             o->max_tokens, "temperature", 0.0, "ignore_eos", 1, "stream", 1,
                             "stream_options", "include_usage", 1);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}

/* ---------------------------------------------------------- one level */

struct level_result {
    int concurrency, requests, failed;
    double seconds, tokens;
    struct samples ttft, tpot, itl, e2e;
};

static void run_level(const struct options *o, const char *base, int concurrency, int requests,
                      struct level_result *res)
{
    char url[512];
    snprintf(url, sizeof url, "%s/v1/completions", base);
    char *body = request_body(o);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    CURLM *multi = curl_multi_init();
    struct stream *streams = util_xcalloc((size_t)concurrency, sizeof *streams);
    memset(res, 0, sizeof *res);
    res->concurrency = concurrency;
    int started = 0, done = 0, running = 0;
    double t0 = util_now();
    for (; started < concurrency && started < requests; started++)
        stream_start(&streams[started], multi, url, body, headers, &res->itl, NULL);
    while (done < requests) {
        curl_multi_perform(multi, &running);
        struct stream *s;
        while ((s = stream_next_done(multi))) {
            /* With ignore_eos an answer short of max_tokens did not complete. */
            if (s->tokens != o->max_tokens) s->failed = true;
            if (s->failed) {
                res->failed++;
            } else {
                res->tokens += s->tokens;
                samples_add(&res->ttft, s->first - s->start);
                samples_add(&res->e2e, s->end - s->start);
                if (s->tokens > 1)
                    samples_add(&res->tpot, (s->last - s->first) / (double)(s->tokens - 1));
            }
            stream_free(s);
            done++;
            if (started < requests) {
                stream_start(s, multi, url, body, headers, &res->itl, NULL);
                started++;
            }
        }
        if (done < requests) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    res->seconds = util_now() - t0;
    res->requests = requests;
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    free(streams);
    free(body);
}

/* ------------------------------------------------------------- server */

static pid_t server_pid;

/* Starts build/llmd serve on a free port; writes its base URL. */
static int start_server(const struct options *o, char *base, size_t len)
{
    const char *argv[64] = {"build/llmd", "serve", "--model", o->model, "--port", "0"};
    int argc = 6;
    for (int i = 0; i < o->n_server_args; i++) argv[argc++] = o->server_args[i];
    argv[argc] = NULL;
    server_pid = bench_start_server(argv, "/tmp/llmd-loadgen-server.log", 120, base, len);
    return server_pid < 0 ? (int)server_pid : 0;
}

/* Runs wrk on /health; returns requests/s or NAN. */
static double run_wrk(const char *base)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "wrk -t2 -c32 -d10s %s/health 2>&1", base);
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    char line[256];
    double rps = NAN;
    while (fgets(line, sizeof line, p)) {
        fputs("    ", stdout);
        fputs(line, stdout);
        sscanf(line, "Requests/sec: %lf", &rps);
    }
    pclose(p);
    return rps;
}

/* -------------------------------------------------------------- main */

static void usage(void)
{
    printf("usage: loadgen [--url URL] [--model PATH] [--concurrency 1,4,8,16,64] [--requests N]\n"
           "               [--max-tokens N] [--prompt TEXT] [--no-wrk] [--server-arg ARG]...\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
    o->model = access("models/llmd-20m.gguf", R_OK) == 0 ? "models/llmd-20m.gguf"
                                                         : "tests/data/tiny-random.gguf";
    o->max_tokens = 32;
    o->prompt = "The history of the city begins in the year when the first settlers arrived";
    o->wrk = true;
    const char *levels = "1,4,8,16,64";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-wrk") == 0) {
            o->wrk = false;
            continue;
        }
        if (strcmp(a, "--help") == 0) return 1;
        if (!v) return -1;
        if (strcmp(a, "--url") == 0)
            o->url = v;
        else if (strcmp(a, "--model") == 0)
            o->model = v;
        else if (strcmp(a, "--concurrency") == 0)
            levels = v;
        else if (strcmp(a, "--requests") == 0)
            o->requests = atoi(v);
        else if (strcmp(a, "--max-tokens") == 0)
            o->max_tokens = atoi(v);
        else if (strcmp(a, "--prompt") == 0)
            o->prompt = v;
        else if (strcmp(a, "--server-arg") == 0 && o->n_server_args < MAX_SERVER_ARGS)
            o->server_args[o->n_server_args++] = v;
        else
            return -1;
        i++;
    }
    for (const char *p = levels; *p && o->n_levels < MAX_LEVELS;) {
        int c = atoi(p);
        if (c < 1) return -1;
        o->levels[o->n_levels++] = c;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    return o->n_levels > 0 && o->max_tokens > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct options o = {0};
    int rc = parse_args(argc, argv, &o);
    if (rc) {
        usage();
        return rc > 0 ? 0 : 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char base[256];
    if (o.url) {
        snprintf(base, sizeof base, "%s", o.url);
    } else if (start_server(&o, base, sizeof base)) {
        fprintf(stderr,
                "loadgen: could not start build/llmd serve (see /tmp/llmd-loadgen-server.log)\n");
        return 1;
    }
    if (bench_wait_ready(base)) {
        fprintf(stderr, "loadgen: %s/health never said 200\n", base);
        if (server_pid > 0) kill(server_pid, SIGKILL);
        return 1;
    }
    printf("loadgen: %s, model %s, %d output tokens a request (ignore_eos), greedy, streamed\n",
           base, o.url ? "(the server's)" : o.model, o.max_tokens);
    printf("cpu: %s; %s\n\n", util_cpu_model_name(), util_cpu_flags_string());

    struct level_result warm;
    run_level(&o, base, 2, 4, &warm);
    printf("%5s %5s %6s %8s %9s | %-17s | %-17s | %-17s | %-17s\n", "conc", "reqs", "fail", "req/s",
           "out tok/s", "TTFT ms p50/p99", "TPOT ms p50/p99", "ITL ms p50/p99", "e2e ms p50/p99");
    struct level_result results[MAX_LEVELS];
    for (int l = 0; l < o.n_levels; l++) {
        int c = o.levels[l];
        int n = o.requests > 0 ? o.requests : (4 * c > 16 ? 4 * c : 16);
        struct level_result *r = &results[l];
        run_level(&o, base, c, n, r);
        printf("%5d %5d %6d %8.2f %9.1f | %7.1f / %7.1f | %7.2f / %7.2f | %7.2f / %7.2f | "
               "%7.1f / %7.1f\n",
               c, n, r->failed, (n - r->failed) / r->seconds, r->tokens / r->seconds,
               1e3 * percentile(&r->ttft, 50), 1e3 * percentile(&r->ttft, 99),
               1e3 * percentile(&r->tpot, 50), 1e3 * percentile(&r->tpot, 99),
               1e3 * percentile(&r->itl, 50), 1e3 * percentile(&r->itl, 99),
               1e3 * percentile(&r->e2e, 50), 1e3 * percentile(&r->e2e, 99));
        fflush(stdout);
    }
    double health_rps = NAN;
    if (o.wrk) {
        printf("\nwrk -t2 -c32 -d10s %s/health\n", base);
        health_rps = run_wrk(base);
    }
    printf("\n");
    for (int l = 0; l < o.n_levels; l++) {
        struct level_result *r = &results[l];
        printf("requests_per_s_c%d: %.2f\n", r->concurrency,
               (r->requests - r->failed) / r->seconds);
        printf("output_tokens_per_s_c%d: %.1f\n", r->concurrency, r->tokens / r->seconds);
        printf("ttft_p50_ms_c%d: %.1f\n", r->concurrency, 1e3 * percentile(&r->ttft, 50));
        printf("itl_p50_ms_c%d: %.2f\n", r->concurrency, 1e3 * percentile(&r->itl, 50));
    }
    if (o.wrk) printf("health_requests_per_s: %.0f\n", health_rps);
    int failed = 0;
    for (int l = 0; l < o.n_levels; l++) failed += results[l].failed;
    int total = 0;
    for (int l = 0; l < o.n_levels; l++) total += results[l].requests;
    printf("completed_requests: %d\n", total - failed);
    printf("failed_requests: %d\n", failed);

    if (server_pid > 0) bench_stop_server(server_pid);
    curl_global_cleanup();
    return failed ? 1 : 0;
}

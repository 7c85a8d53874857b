/* Faults and security of `llmd serve` with the test model: a full KV-page
 * pool queues requests instead of failing them, SIGTERM under load drains
 * every accepted request (queued ones too), a whole daemon run under load
 * ends with exit 0 and no sanitizer or leak report, a missing or corrupt
 * model exits 1 with a clear message, keys guard every non-public route,
 * errors echo neither keys nor file system paths, and the default bind is
 * loopback. */
#include "tests/integration/harness.h"

#include <sys/stat.h>

#define TIMEOUT 300 /* one .timeout for every test of this file (Criterion quirk) */

static char *body_of(const char *prompt, int max_tokens, bool stream)
{
    char *body = malloc(512);
    snprintf(body, 512,
             "{\"prompt\": \"%s\", \"temperature\": 0, \"max_tokens\": %d, \"ignore_eos\": true, "
             "\"stream\": %s}",
             prompt, max_tokens,
             stream ? "true, \"stream_options\": {\"include_usage\": true}" : "false");
    return body;
}

/* The completion tokens of a finished job, streamed or not. */
static int job_tokens(const struct http_job *j, bool stream)
{
    cr_assert_eq(j->resp.status, 200, "%s -> %ld: %.300s", j->body, j->resp.status,
                 j->resp.body.data ? j->resp.body.data : "");
    if (stream) {
        /* The last event carries the usage (stream_options.include_usage). */
        json_t *events = sse_events(&j->resp.body);
        size_t i;
        json_t *ev;
        json_array_foreach(events, i, ev) cr_assert_null(json_object_get(ev, "error"), "an error");
        int n = usage_of(json_array_get(events, json_array_size(events) - 1), "completion_tokens");
        json_decref(events);
        return n;
    }
    json_t *r = json_loadb(j->resp.body.data, j->resp.body.len, 0, NULL);
    cr_assert(r);
    int n = usage_of(r, "completion_tokens");
    json_decref(r);
    return n;
}

/* ------------------------------------------------------- the KV pool */

struct pool_watch {
    const struct daemon *d;
    double max_used, max_waiting;
};

static bool watch_pool(int running, void *ctx)
{
    (void)running;
    struct pool_watch *w = ctx;
    double used = metric(w->d, "llmd_kv_pages_used");
    double waiting = metric(w->d, "llmd_num_requests_waiting");
    if (used > w->max_used) w->max_used = used;
    if (waiting > w->max_waiting) w->max_waiting = waiting;
    return true;
}

/* 32 pages of 16 tokens hold 4 requests of 8 pages at full length; 10 come
 * at once. The others wait for pages and every one finishes in full. */
Test(server_faults, a_full_kv_pool_queues_new_requests_and_all_complete, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(
        &d, (const char *[]){"--kv-pages", "32", "--page-size", "16", "--max-running", "16", NULL});
    cr_assert_eq(metric(&d, "llmd_kv_pages_capacity"), 32);
    enum { N = 10, TOKENS = 110 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].path = "/v1/completions";
        jobs[i].body =
            body_of(i % 2 ? "In a hole in the ground" : "Call me Ishmael.", TOKENS, i % 3 == 0);
    }
    struct pool_watch w = {&d, 0, 0};
    http_run_jobs(&d, jobs, N, watch_pool, &w);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(job_tokens(&jobs[i], i % 3 == 0), TOKENS, "request %d finished in full", i);
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
    cr_assert(w.max_used <= 32 && w.max_used > 0, "pages used at most %g", w.max_used);
    cr_assert(w.max_waiting > 0, "no request ever waited for pages");
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5));
    cr_assert_eq(metric(&d, "llmd_request_finished_total{finished_reason=\"length\"}"), N);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* 4 pages of 16 tokens, less than the context (512): a prompt longer than
 * the pool is refused with a 400 naming the prompt; a short one gets
 * max_tokens cut to what the pool holds, and the pool drains. */
Test(server_faults, a_pool_smaller_than_the_context_refuses_long_prompts_and_cuts_max_tokens,
     .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--kv-pages", "4", "--page-size", "16", NULL});
    char body[1024] = "{\"prompt\": [1";
    for (int i = 1; i < 100; i++) strcat(body, ",7");
    strcat(body, "], \"max_tokens\": 4}");
    long status;
    json_t *j = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 400);
    json_t *e = json_object_get(j, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "param")), "prompt");
    cr_assert(strstr(json_string_value(json_object_get(e, "message")), "KV cache"));
    json_decref(j);
    j = http_json(&d, "POST", "/v1/completions",
                  "{\"prompt\": [1, 7, 7, 7, 7, 7, 7, 7, 7, 7], \"max_tokens\": 200, "
                  "\"ignore_eos\": true}",
                  &status);
    cr_assert_eq(status, 200);
    cr_assert_eq(usage_of(j, "completion_tokens"), 64 - 10);
    cr_assert_str_eq(finish_reason(j, 0), "length");
    json_decref(j);
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5));
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* -------------------------------------------------- SIGTERM under load */

struct drain_watch {
    struct daemon *d;
    int n;
    bool signalled;
};

/* Sends SIGTERM once every request is accepted (running or waiting). */
static bool terminate_when_all_accepted(int running, void *ctx)
{
    (void)running;
    struct drain_watch *s = ctx;
    double accepted =
        metric(s->d, "llmd_num_requests_running") + metric(s->d, "llmd_num_requests_waiting");
    if (accepted < s->n) return true;
    kill(s->d->pid, SIGTERM);
    s->signalled = true;
    return false;
}

/* 12 requests, 3 running and 9 queued, when SIGTERM comes: all 12 finish
 * with 200 in full, and the exit status is 0. */
Test(server_faults, sigterm_under_load_completes_every_accepted_request, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-running", "3", "--grace-s", "120", NULL});
    enum { N = 12, TOKENS = 40 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].path = i % 4 == 3 ? "/v1/chat/completions" : "/v1/completions";
        if (i % 4 == 3) {
            jobs[i].body = strdup("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                                  "\"max_tokens\": 40, \"ignore_eos\": true}");
        } else {
            jobs[i].body = body_of("The sky above the port", TOKENS, i % 2);
        }
    }
    struct drain_watch s = {&d, N, false};
    http_run_jobs(&d, jobs, N, terminate_when_all_accepted, &s);
    cr_assert(s.signalled, "the requests never were all accepted");
    for (int i = 0; i < N; i++) {
        if (i % 4 == 3) {
            cr_assert_eq(jobs[i].resp.status, 200, "chat %d: %ld", i, jobs[i].resp.status);
            json_t *r = json_loadb(jobs[i].resp.body.data, jobs[i].resp.body.len, 0, NULL);
            cr_assert_eq(usage_of(r, "completion_tokens"), TOKENS, "chat %d finished short: %.*s",
                         i, (int)jobs[i].resp.body.len, jobs[i].resp.body.data);
            json_decref(r);
        } else {
            cr_assert_eq(job_tokens(&jobs[i], i % 2), TOKENS, "request %d finished in full", i);
        }
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S), "the daemon did not exit after draining");
    cr_assert_eq(d.status, 0, "exit status %d; log:\n%s", d.status, daemon_log_tail(&d));
}

/* ----------------------------------------------- a whole run, no leaks */

/* Whether the daemon's whole stderr mentions `what`. */
static bool log_has(const struct daemon *d, const char *what)
{
    FILE *f = fopen(d->log, "r");
    cr_assert(f);
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

/* Plain and streamed completions, chat, tokenize, detokenize, metrics, bad
 * requests and a client that leaves mid-stream, twice, then SIGTERM. With
 * build/asan/llmd (LeakSanitizer on; used by both test flavours when it is
 * built) the exit status is 0 and stderr holds no sanitizer report. */
Test(server_faults, a_whole_daemon_run_under_mixed_load_exits_0_without_leaks, .timeout = TIMEOUT)
{
    /* The sanitized daemon in both test flavours, where it is built. */
    if (!getenv("LLMD_TEST_BINARY") && access("build/asan/llmd", X_OK) == 0)
        setenv("LLMD_TEST_BINARY", "build/asan/llmd", 1);
    setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0", 1);
    setenv("UBSAN_OPTIONS", "print_stacktrace=1", 1);
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-running", "4", NULL});
    enum { N = 12 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], "
                       "\"max_tokens\": 12, \"stream\": %s}";
    char chat_plain[256], chat_stream[256];
    snprintf(chat_plain, sizeof chat_plain, chat, "false");
    snprintf(chat_stream, sizeof chat_stream, chat, "true");
    char *bodies[4] = {body_of("Once upon a time", 16, false),
                       body_of("Once upon a time", 16, true),
                       body_of("Call me Ishmael.", 400, true), NULL};
    struct {
        const char *method, *path, *body;
        long status;
    } load[N] = {
        {"POST", "/v1/completions", bodies[0], 200},
        {"POST", "/v1/completions", bodies[1], 200},
        {"POST", "/v1/chat/completions", chat_plain, 200},
        {"POST", "/v1/chat/completions", chat_stream, 200},
        {"POST", "/tokenize", "{\"prompt\": \"Hello there\"}", 200},
        {"POST", "/detokenize", "{\"tokens\": [5, 6, 7]}", 200},
        {"GET", "/metrics", NULL, 200},
        {"GET", "/v1/models", NULL, 200},
        {"POST", "/v1/completions", "{\"prompt\": ", 400},
        {"POST", "/v1/chat/completions", "{\"messages\": 3}", 400},
        {"GET", "/nowhere", NULL, 404},
        {"POST", "/v1/completions", bodies[2], 0}, /* leaves mid-stream */
    };
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            jobs[i].method = load[i].method;
            jobs[i].path = load[i].path;
            jobs[i].body = load[i].body;
            jobs[i].resp.abort_after = load[i].status ? 0 : 300;
        }
        http_run_jobs(&d, jobs, N, NULL, NULL);
        for (int i = 0; i < N; i++) {
            if (load[i].status)
                cr_assert_eq(jobs[i].resp.status, load[i].status, "%s %s: %ld", load[i].method,
                             load[i].path, jobs[i].resp.status);
            else
                cr_assert_eq(jobs[i].resp.rc, CURLE_WRITE_ERROR, "the client hung up");
            http_response_free(&jobs[i].resp);
        }
    }
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 10));
    int status = daemon_stop(&d);
    for (int i = 0; bodies[i]; i++) free(bodies[i]);
    cr_assert_not(log_has(&d, "LeakSanitizer"), "a leak; log %s:\n%s", d.log, daemon_log_tail(&d));
    cr_assert_not(log_has(&d, "AddressSanitizer"), "log %s:\n%s", d.log, daemon_log_tail(&d));
    cr_assert_not(log_has(&d, "runtime error"), "UBSan; log %s:\n%s", d.log, daemon_log_tail(&d));
    cr_assert_eq(status, 0, "exit status %d; log %s:\n%s", status, d.log, daemon_log_tail(&d));
}

/* ----------------------------------------------- missing, corrupt model */

static void assert_serve_fails_to_load(const char *model)
{
    struct daemon d;
    /* The daemon may print its port before it fails to load; either way it
     * must exit 1 with a message. */
    daemon_spawn(&d, model, NULL);
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S), "serve %s did not exit", model);
    cr_assert_eq(d.status, 1, "serve %s: exit %d; log:\n%s", model, d.status, daemon_log_tail(&d));
    cr_assert(log_has(&d, "cannot load the model"), "serve %s: log:\n%s", model,
              daemon_log_tail(&d));
    cr_assert_not(log_has(&d, "Sanitizer"), "log:\n%s", daemon_log_tail(&d));
}

Test(server_faults, serve_with_a_missing_or_corrupt_model_exits_1_with_a_message,
     .timeout = TIMEOUT)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/llmd-test-missing-%d.gguf", (int)getpid());
    unlink(path);
    assert_serve_fails_to_load(path);

    /* Garbage, a GGUF magic with nothing after it, and a truncated model. */
    snprintf(path, sizeof path, "/tmp/llmd-test-corrupt-%d.gguf", (int)getpid());
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < 4096; i++) fputc((i * 131 + 7) & 0xff, f);
    fclose(f);
    assert_serve_fails_to_load(path);
    f = fopen(path, "wb");
    fwrite("GGUF\x03\x00\x00\x00", 1, 8, f);
    fclose(f);
    assert_serve_fails_to_load(path);
    FILE *src = fopen(TEST_MODEL, "rb");
    cr_assert(src);
    f = fopen(path, "wb");
    char buf[4096];
    for (size_t total = 0; total < 60000;) {
        size_t n = fread(buf, 1, sizeof buf, src);
        cr_assert(n > 0);
        fwrite(buf, 1, n, f);
        total += n;
    }
    fclose(src);
    fclose(f);
    assert_serve_fails_to_load(path);
    unlink(path);
}

/* -------------------------------------------------------------- security */

struct route_case {
    const char *method, *path, *body;
};

static const struct route_case guarded[] = {
    {"POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 2}"},
    {"POST", "/v1/chat/completions",
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"max_tokens\": 2}"},
    {"GET", "/v1/models", NULL},
    {"GET", "/v1/models/tiny-random", NULL},
    {"POST", "/tokenize", "{\"prompt\": \"a\"}"},
    {"POST", "/detokenize", "{\"tokens\": [5]}"},
};

static long request_with(const struct daemon *d, const struct route_case *c, const char *auth,
                         struct http_response *r)
{
    memset(r, 0, sizeof *r);
    http_request(d, c->method, c->path, c->body, (const char *[]){auth, NULL}, r);
    return r->status;
}

Test(server_faults, keys_guard_every_route_but_the_public_ones_and_are_never_echoed,
     .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--api-keys", "sk-right-0123456789", NULL});
    const char *wrong[] = {NULL,
                           "Authorization: Bearer sk-wrong-secret-XYZ",
                           "Authorization: Bearer sk-right-012345678", /* a prefix */
                           "Authorization: Bearer sk-right-01234567890",
                           "Authorization: Basic c2stcmlnaHQ=",
                           "Authorization: Bearer "};
    for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++) {
        struct http_response r;
        for (size_t k = 0; k < sizeof wrong / sizeof wrong[0]; k++) {
            cr_assert_eq(request_with(&d, &guarded[i], wrong[k], &r), 401, "%s %s with %s",
                         guarded[i].method, guarded[i].path, wrong[k] ? wrong[k] : "no key");
            cr_assert_null(strstr(r.body.data, "sk-"), "a key echoed: %s", r.body.data);
            cr_assert_null(strstr(r.body.data, "XYZ"), "a key echoed: %s", r.body.data);
            json_t *j = json_loadb(r.body.data, r.body.len, 0, NULL);
            cr_assert_str_eq(
                json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                "invalid_api_key");
            json_decref(j);
            http_response_free(&r);
        }
        cr_assert_eq(request_with(&d, &guarded[i], "Authorization: Bearer sk-right-0123456789", &r),
                     200, "%s %s with the key", guarded[i].method, guarded[i].path);
        http_response_free(&r);
    }
    /* The public ones: /health and /metrics (unless auth_health_metrics). */
    const struct route_case open[] = {{"GET", "/health", NULL}, {"GET", "/metrics", NULL}};
    for (size_t i = 0; i < 2; i++) {
        struct http_response r;
        cr_assert_eq(request_with(&d, &open[i], NULL, &r), 200, "%s", open[i].path);
        cr_assert_null(strstr(r.body.data, "sk-right"), "/metrics shows a key");
        http_response_free(&r);
    }
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
    cr_assert_not(log_has(&d, "sk-right-0123456789"), "the key is in the log");
    cr_assert_not(log_has(&d, "sk-wrong-secret"), "a wrong key is in the log");
}

/* The model path is a FIFO in a distinctive folder: while loading blocks,
 * no answer names the path; then the load fails and serve exits 1. */
Test(server_faults, api_errors_never_show_the_model_path, .timeout = TIMEOUT)
{
    char dir[64], fifo[96];
    snprintf(dir, sizeof dir, "/tmp/llmd-secret-dir-%d", (int)getpid());
    snprintf(fifo, sizeof fifo, "%s/hidden-model.gguf", dir);
    mkdir(dir, 0700);
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    struct daemon d;
    cr_assert(daemon_spawn(&d, fifo, NULL), "log %s:\n%s", d.log, daemon_log_tail(&d));
    const struct route_case calls[] = {
        {"GET", "/health", NULL},
        {"GET", "/v1/models", NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\"}"},
        {"POST", "/tokenize", "{\"prompt\": \"a\"}"},
        {"GET", "/metrics", NULL},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        struct http_response r;
        request_with(&d, &calls[i], NULL, &r);
        cr_assert(r.status == 200 || r.status == 503, "%s: %ld", calls[i].path, r.status);
        cr_assert_null(strstr(r.body.data, "secret-dir"), "%s shows the path: %s", calls[i].path,
                       r.body.data);
        cr_assert_null(strstr(r.body.data, "hidden-model"), "%s shows the file", calls[i].path);
        http_response_free(&r);
    }
    int w = open(fifo, O_WRONLY);
    cr_assert(w >= 0);
    close(w);
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 1);
    unlink(fifo);
    rmdir(dir);
}

/* Without --host (and a settings file that names none) serve binds
 * 127.0.0.1. */
Test(server_faults, the_default_bind_is_loopback, .timeout = TIMEOUT)
{
    char conf[64];
    snprintf(conf, sizeof conf, "/tmp/llmd-test-empty-%d.json", (int)getpid());
    FILE *f = fopen(conf, "w");
    fputs("{}\n", f);
    fclose(f);
    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(out[1], 1);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        execl(daemon_binary(), daemon_binary(), "serve", "--config", conf, "--model", TEST_MODEL,
              "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[256] = "";
    size_t len = 0;
    double deadline = now_s() + START_TIMEOUT_S;
    while (now_s() < deadline && len < sizeof line - 1 && !strchr(line, '\n')) {
        struct pollfd p = {out[0], POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = read(out[0], line + len, sizeof line - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        line[len] = '\0';
    }
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    close(out[0]);
    unlink(conf);
    cr_assert(strstr(line, "listening on http://127.0.0.1:"), "serve printed: %s", line);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d", status);
}

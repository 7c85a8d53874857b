/*
 * harness.h: what the server's integration tests share. They start the real
 * daemon (`build/llmd serve`, or `build/asan/llmd serve` when the test itself
 * is built with AddressSanitizer; LLMD_TEST_BINARY overrides) with the test
 * model on 127.0.0.1 and an ephemeral port (--port 0: the daemon prints the
 * port it got), talk to it with libcurl, and stop it with SIGTERM, expecting
 * exit status 0 (under ASan a leak makes that fail).
 *
 * Header-only (static functions) because each test file is its own binary.
 * Every wait is bounded.
 */
#ifndef LLMD_TESTS_INTEGRATION_HARNESS_H
#define LLMD_TESTS_INTEGRATION_HARNESS_H

#include "server/buf.h"

#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TEST_MODEL      "tests/data/tiny-random.gguf"
#define START_TIMEOUT_S 60.0
#define STOP_TIMEOUT_S  60.0
#define HTTP_TIMEOUT_S  60L

extern char **environ;

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------- the daemon */

struct daemon {
    pid_t pid;
    int port;
    int out_fd;   /* the daemon's stdout */
    char log[64]; /* its stderr */
    bool exited;
    int status;
};

static inline const char *daemon_binary(void)
{
    const char *env = getenv("LLMD_TEST_BINARY");
    if (env) return env;
#ifdef __SANITIZE_ADDRESS__
    return "build/asan/llmd";
#else
    return "build/llmd";
#endif
}

/* Starts `llmd serve` with the test model and `args` (NULL-terminated),
 * without waiting for the model. Returns false when the daemon exits or
 * prints no port in time. */
static inline bool daemon_spawn(struct daemon *d, const char *model, const char *const *args)
{
    memset(d, 0, sizeof *d);
    snprintf(d->log, sizeof d->log, "/tmp/llmd-test-%d-XXXXXX", (int)getpid());
    int log_fd = mkstemp(d->log);
    cr_assert(log_fd >= 0);
    int out[2];
    cr_assert_eq(pipe(out), 0);
    const char *argv[48] = {daemon_binary(), "serve",  "--model",  model,           "--host",
                            "127.0.0.1",     "--port", "0",        "--precision",   "fp32",
                            "--kv-type",     "f32",    "--config", "conf/llmd.json"};
    int argc = 14;
    for (int i = 0; args && args[i]; i++) argv[argc++] = args[i];
    argv[argc] = NULL;
    d->pid = fork();
    cr_assert(d->pid >= 0);
    if (d->pid == 0) {
        /* The daemon dies with the test, even one that fails. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* Settings come from the flags only. */
        for (char **e = environ; *e;) {
            if (strncmp(*e, "LLMD_", 5) == 0 && strncmp(*e, "LLMD_TEST", 9) != 0) {
                char name[128];
                snprintf(name, sizeof name, "%.*s", (int)(strchr(*e, '=') - *e), *e);
                unsetenv(name);
            } else {
                e++;
            }
        }
        dup2(out[1], 1);
        dup2(log_fd, 2);
        close(out[0]);
        close(out[1]);
        close(log_fd);
        execv(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(log_fd);
    d->out_fd = out[0];

    char line[256];
    size_t len = 0;
    double deadline = now_s() + START_TIMEOUT_S;
    while (now_s() < deadline && len < sizeof line - 1) {
        struct pollfd p = {d->out_fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = read(d->out_fd, line + len, 1);
        if (n <= 0) return false; /* it exited */
        if (line[len] == '\n') {
            line[len] = '\0';
            const char *colon = strrchr(line, ':');
            if (strstr(line, "listening on http://127.0.0.1:") && colon) {
                d->port = atoi(colon + 1);
                return d->port > 0;
            }
            len = 0;
            continue;
        }
        len++;
    }
    return false;
}

/* Waits up to timeout_s for the daemon to exit; its status is in d->status
 * (the exit code, or 128 + the signal). */
static inline bool daemon_wait_exit(struct daemon *d, double timeout_s)
{
    double deadline = now_s() + timeout_s;
    while (!d->exited) {
        int status;
        pid_t got = waitpid(d->pid, &status, WNOHANG);
        if (got == d->pid) {
            d->exited = true;
            d->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            close(d->out_fd);
            break;
        }
        if (now_s() > deadline) return false;
        sleep_s(0.01);
    }
    return true;
}

/* The last lines of the daemon's log, for failure messages (static). */
static inline const char *daemon_log_tail(const struct daemon *d)
{
    static char tail[2048];
    tail[0] = '\0';
    FILE *f = fopen(d->log, "r");
    if (!f) return tail;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > (long)sizeof tail - 1 ? size - (long)sizeof tail + 1 : 0, SEEK_SET);
    size_t n = fread(tail, 1, sizeof tail - 1, f);
    tail[n] = '\0';
    fclose(f);
    return tail;
}

/* Stops the daemon with SIGTERM and returns its exit status. */
static inline int daemon_stop(struct daemon *d)
{
    if (!d->exited) kill(d->pid, SIGTERM);
    if (!daemon_wait_exit(d, STOP_TIMEOUT_S)) {
        kill(d->pid, SIGKILL);
        daemon_wait_exit(d, 5);
        cr_assert_fail("the daemon did not stop within %.0f s; log %s:\n%s", STOP_TIMEOUT_S, d->log,
                       daemon_log_tail(d));
    }
    return d->status;
}

/* ---------------------------------------------------------------- HTTP */

struct http_response {
    long status;
    struct srv_buf body;
    struct srv_buf headers;
    CURLcode rc;
    size_t abort_after; /* > 0: the client hangs up after this many body bytes */
    long timeout_ms;    /* > 0: the client gives up after this long */
};

static inline size_t collect_body(char *data, size_t size, size_t n, void *ctx)
{
    struct http_response *r = ctx;
    srv_buf_append(&r->body, data, size * n);
    if (r->abort_after && r->body.len >= r->abort_after) return 0; /* curl aborts */
    return size * n;
}

static inline size_t collect_header(char *data, size_t size, size_t n, void *ctx)
{
    srv_buf_append(&((struct http_response *)ctx)->headers, data, size * n);
    return size * n;
}

/* An easy handle for one request; headers (NULL-terminated "Name: value")
 * are owned by the caller until the transfer is done. */
static inline CURL *http_easy(const struct daemon *d, const char *method, const char *path,
                              const char *body, struct curl_slist *headers,
                              struct http_response *out)
{
    static bool initialized;
    if (!initialized) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        initialized = true;
    }
    char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", d->port, path);
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    if (strcmp(method, "HEAD") == 0) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
    if (out->timeout_ms > 0)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, out->timeout_ms);
    else
        curl_easy_setopt(c, CURLOPT_TIMEOUT, HTTP_TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PRIVATE, out);
    return c;
}

static inline struct curl_slist *header_list(const char *const *headers)
{
    struct curl_slist *list = NULL;
    for (int i = 0; headers && headers[i]; i++) list = curl_slist_append(list, headers[i]);
    return list;
}

static inline void http_request(const struct daemon *d, const char *method, const char *path,
                                const char *body, const char *const *headers,
                                struct http_response *out)
{
    struct http_response keep = *out;
    memset(out, 0, sizeof *out);
    out->abort_after = keep.abort_after;
    out->timeout_ms = keep.timeout_ms;
    struct curl_slist *list = header_list(headers);
    CURL *c = http_easy(d, method, path, body, list, out);
    out->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(list);
}

static inline void http_response_free(struct http_response *r)
{
    srv_buf_free(&r->body);
    srv_buf_free(&r->headers);
}

/* A response header's value (case-insensitive name), or NULL (static). */
static inline const char *http_header(const struct http_response *r, const char *name)
{
    static char value[256];
    size_t n = strlen(name);
    for (const char *p = r->headers.data; p && *p;) {
        const char *end = strstr(p, "\r\n");
        if (!end) break;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ') v++;
            snprintf(value, sizeof value, "%.*s", (int)(end - v), v);
            return value;
        }
        p = end + 2;
    }
    return NULL;
}

/* POST (or any method) and parse the JSON answer; asserts it is JSON. */
static inline json_t *http_json(const struct daemon *d, const char *method, const char *path,
                                const char *body, long *status)
{
    struct http_response r = {0};
    http_request(d, method, path, body, NULL, &r);
    cr_assert_eq(r.rc, CURLE_OK, "%s %s: %s", method, path, curl_easy_strerror(r.rc));
    json_error_t jerr;
    json_t *j = json_loadb(r.body.data ? r.body.data : "", r.body.len, 0, &jerr);
    cr_assert(j, "%s %s -> %ld, not JSON: %.300s", method, path, r.status,
              r.body.data ? r.body.data : "");
    if (status) *status = r.status;
    http_response_free(&r);
    return j;
}

/* A completion's choice text (static copy). */
static inline const char *choice_text(json_t *resp, int index)
{
    json_t *choice = json_array_get(json_object_get(resp, "choices"), (size_t)index);
    cr_assert(choice, "no choice %d", index);
    json_t *text = json_object_get(choice, "text");
    if (!text) text = json_object_get(json_object_get(choice, "message"), "content");
    cr_assert(json_is_string(text));
    return json_string_value(text);
}

static inline const char *finish_reason(json_t *resp, int index)
{
    json_t *choice = json_array_get(json_object_get(resp, "choices"), (size_t)index);
    return json_string_value(json_object_get(choice, "finish_reason"));
}

static inline int usage_of(json_t *resp, const char *key)
{
    return (int)json_integer_value(json_object_get(json_object_get(resp, "usage"), key));
}

/* ----------------------------------------------------------------- SSE */

/* Parses a whole SSE body, asserting the framing: only `data: <payload>`
 * events each ended by a blank line, the last one [DONE], nothing after.
 * Returns the JSON payloads in order. */
static inline json_t *sse_events(const struct srv_buf *body)
{
    json_t *events = json_array();
    const char *p = body->data ? body->data : "";
    const char *end = p + body->len;
    bool done = false;
    while (p < end) {
        if (*p == ':') { /* a comment (keep-alive): skipped, as clients do */
            const char *stop = strstr(p, "\n\n");
            cr_assert(stop, "a comment without its blank line: %.100s", p);
            p = stop + 2;
            continue;
        }
        cr_assert(!done, "data after [DONE]: %.100s", p);
        cr_assert(strncmp(p, "data: ", 6) == 0, "not an SSE data line: %.100s", p);
        const char *stop = strstr(p, "\n\n");
        cr_assert(stop, "an event without its blank line: %.100s", p);
        const char *payload = p + 6;
        size_t n = (size_t)(stop - payload);
        cr_assert(!memchr(payload, '\n', n), "an event of several lines");
        if (n == 6 && strncmp(payload, "[DONE]", 6) == 0) {
            done = true;
        } else {
            json_error_t jerr;
            json_t *j = json_loadb(payload, n, 0, &jerr);
            cr_assert(j, "bad event JSON: %.*s", (int)n, payload);
            json_array_append_new(events, j);
        }
        p = stop + 2;
    }
    cr_assert(done, "the stream did not end with [DONE]");
    return events;
}

/* The text of choice `index` put together from stream events. */
static inline char *sse_text(json_t *events, int index)
{
    struct srv_buf text = SRV_BUF_INIT;
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        json_t *choice = json_array_get(json_object_get(ev, "choices"), 0);
        if (!choice || json_integer_value(json_object_get(choice, "index")) != index) continue;
        json_t *t = json_object_get(choice, "text");
        if (!t) t = json_object_get(json_object_get(choice, "delta"), "content");
        if (json_is_string(t)) srv_buf_append(&text, json_string_value(t), json_string_length(t));
    }
    return srv_buf_take(&text);
}

/* -------------------------------------------------------------- metrics */

/* The value of one sample of /metrics (exact name with labels), or NAN. */
static inline double metric(const struct daemon *d, const char *sample)
{
    struct http_response r = {0};
    http_request(d, "GET", "/metrics", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    double v = NAN;
    size_t n = strlen(sample);
    for (const char *p = r.body.data; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, sample, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    http_response_free(&r);
    return v;
}

/* Polls a metric until it equals `want` (true) or timeout_s passes. */
static inline bool wait_metric(const struct daemon *d, const char *sample, double want,
                               double timeout_s)
{
    double deadline = now_s() + timeout_s;
    do {
        if (metric(d, sample) == want) return true;
        sleep_s(0.02);
    } while (now_s() < deadline);
    return false;
}

/* Starts the daemon and waits for /health to say 200 (or 401 when it
 * needs a key). */
static inline void daemon_start(struct daemon *d, const char *const *args)
{
    cr_assert(daemon_spawn(d, TEST_MODEL, args), "the daemon did not start; log %s:\n%s", d->log,
              daemon_log_tail(d));
    double deadline = now_s() + START_TIMEOUT_S;
    for (;;) {
        struct http_response r = {0};
        http_request(d, "GET", "/health", NULL, NULL, &r);
        http_response_free(&r);
        if (r.status == 200 || r.status == 401) return;
        cr_assert(now_s() < deadline, "/health never said 200; log %s:\n%s", d->log,
                  daemon_log_tail(d));
        sleep_s(0.02);
    }
}

/* ---------------------------------------------------- concurrent requests */

struct http_job {
    const char *method;
    const char *path;
    const char *body;
    struct http_response resp;
    bool done;
};

/* Runs jobs concurrently on one curl multi handle. `each_round` (may be
 * NULL) is called between rounds with the number still running; it returns
 * false to stop driving (the caller finishes with http_multi_finish). */
static inline void http_run_jobs(const struct daemon *d, struct http_job *jobs, int n,
                                 bool (*each_round)(int running, void *ctx), void *ctx)
{
    CURLM *multi = curl_multi_init();
    CURL *easies[256];
    cr_assert(n <= 256);
    for (int i = 0; i < n; i++) {
        struct http_response keep = jobs[i].resp;
        memset(&jobs[i].resp, 0, sizeof jobs[i].resp);
        jobs[i].resp.abort_after = keep.abort_after;
        jobs[i].resp.timeout_ms = keep.timeout_ms;
        jobs[i].done = false;
        easies[i] = http_easy(d, jobs[i].method ? jobs[i].method : "POST", jobs[i].path,
                              jobs[i].body, NULL, &jobs[i].resp);
        curl_multi_add_handle(multi, easies[i]);
    }
    int running = n;
    double deadline = now_s() + 2 * HTTP_TIMEOUT_S;
    while (running > 0 && now_s() < deadline) {
        curl_multi_perform(multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left)))
            if (msg->msg == CURLMSG_DONE) {
                struct http_response *r;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
                r->rc = msg->data.result;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &r->status);
                for (int i = 0; i < n; i++)
                    if (&jobs[i].resp == r) jobs[i].done = true;
            }
        if (each_round && !each_round(running, ctx)) each_round = NULL;
        if (running) curl_multi_poll(multi, NULL, 0, 20, NULL);
    }
    for (int i = 0; i < n; i++) {
        curl_multi_remove_handle(multi, easies[i]);
        curl_easy_cleanup(easies[i]);
    }
    curl_multi_cleanup(multi);
    for (int i = 0; i < n; i++) cr_assert(jobs[i].done, "job %d did not finish", i);
}

#endif

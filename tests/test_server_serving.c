/* Integration tests of `llmd serve` under load with the test model: many
 * concurrent clients each getting their own answer, cancellation when a
 * client leaves (KV pages freed), the prefix cache, the bounded queue (429),
 * per-request deadlines, and SIGTERM draining. */
#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const char *const prompts[] = {
    "The quick brown fox",      "In a hole in the ground", "Call me Ishmael.",
    "It was a bright cold day", "All happy families are",  "Once upon a midnight",
    "The sky above the port",   "Many years later, as he",
};
#define N_PROMPTS 8

static char *completion_body(const char *prompt, int max_tokens, bool stream, const char *extra)
{
    char *body = malloc(1024);
    snprintf(body, 1024,
             "{\"prompt\": \"%s\", \"temperature\": 0, \"max_tokens\": %d, \"stream\": %s%s%s}",
             prompt, max_tokens, stream ? "true" : "false", extra ? ", " : "", extra ? extra : "");
    return body;
}

/* The text of a finished job, streamed or not (a new string). */
static char *job_text(struct http_job *j, bool stream)
{
    cr_assert_eq(j->resp.status, 200, "%s -> %ld: %.300s", j->body, j->resp.status,
                 j->resp.body.data ? j->resp.body.data : "");
    if (stream) {
        json_t *events = sse_events(&j->resp.body);
        char *text = sse_text(events, 0);
        json_decref(events);
        return text;
    }
    json_error_t jerr;
    json_t *r = json_loadb(j->resp.body.data, j->resp.body.len, 0, &jerr);
    cr_assert(r);
    char *text = strdup(choice_text(r, 0));
    json_decref(r);
    return text;
}

/* --------------------------------------------------------- concurrency */

/* 32 clients at once (each prompt twice streamed, twice whole) in one
 * running batch of 32: every answer equals the prompt's answer alone. */
#define COPIES 4
Test(server_serving, concurrent_clients_each_get_their_own_greedy_answer)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-running", "32", NULL});
    /* Alone, one at a time. */
    char *alone[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++) {
        char *body = completion_body(prompts[i], 24, false, NULL);
        long status;
        json_t *r = http_json(&d, "POST", "/v1/completions", body, &status);
        cr_assert_eq(status, 200);
        alone[i] = strdup(choice_text(r, 0));
        json_decref(r);
        free(body);
    }
    /* All at once, each prompt streamed and not. */
    struct http_job jobs[COPIES * N_PROMPTS];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < COPIES * N_PROMPTS; i++) {
        jobs[i].path = "/v1/completions";
        jobs[i].body = completion_body(prompts[i % N_PROMPTS], 24, (i / N_PROMPTS) % 2 == 1, NULL);
    }
    http_run_jobs(&d, jobs, COPIES * N_PROMPTS, NULL, NULL);
    for (int i = 0; i < COPIES * N_PROMPTS; i++) {
        bool streamed = (i / N_PROMPTS) % 2 == 1;
        char *text = job_text(&jobs[i], streamed);
        cr_assert_str_eq(text, alone[i % N_PROMPTS], "prompt %d (%s): together '%s', alone '%s'",
                         i % N_PROMPTS, streamed ? "streamed" : "whole", text,
                         alone[i % N_PROMPTS]);
        free(text);
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
    /* The engine really ran them together. */
    /* alone: ~25 steps a prompt; together one batch of ~25 steps, where one
     * at a time would take COPIES * N_PROMPTS * 25 */
    cr_assert(metric(&d, "llmd_engine_steps_total") < (double)(N_PROMPTS * 25 + 4 * 25),
              "no batching: %g steps", metric(&d, "llmd_engine_steps_total"));
    for (int i = 0; i < N_PROMPTS; i++) free(alone[i]);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* -------------------------------------------------------- cancellation */

struct watch_pages {
    const struct daemon *d;
    double max_pages;
};

static bool note_pages(int running, void *ctx)
{
    (void)running;
    struct watch_pages *w = ctx;
    double pages = metric(w->d, "llmd_kv_pages_used");
    if (pages > w->max_pages) w->max_pages = pages;
    return true;
}

Test(server_serving, a_client_that_leaves_frees_its_kv_pages)
{
    struct daemon d;
    daemon_start(&d, NULL);
    cr_assert_eq(metric(&d, "llmd_kv_pages_used"), 0);
    /* Streamed: the client hangs up after a few chunks. */
    struct http_job job = {.path = "/v1/completions"};
    job.body = completion_body(prompts[0], 480, true, "\"ignore_eos\": true");
    job.resp.abort_after = 600;
    struct watch_pages w = {&d, 0};
    double t0 = now_s();
    http_run_jobs(&d, &job, 1, note_pages, &w);
    cr_assert_eq(job.resp.rc, CURLE_WRITE_ERROR, "the client hung up");
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5), "pages still held: %g",
              metric(&d, "llmd_kv_pages_used"));
    cr_assert(w.max_pages > 0, "the request held pages while it ran");
    cr_assert(wait_metric(&d, "llmd_request_finished_total{finished_reason=\"cancelled\"}", 1, 5));
    cr_assert(now_s() - t0 < 20, "cancelled long before 480 tokens");
    cr_assert(metric(&d, "llmd_generation_tokens_total") < 480);
    free((char *)job.body);
    http_response_free(&job.resp);

    /* Not streamed: the connection is suspended while the engine works;
     * the client gives up, and the server notices at once. */
    struct http_job whole = {.path = "/v1/completions"};
    whole.body = completion_body(prompts[1], 480, false, "\"ignore_eos\": true");
    whole.resp.timeout_ms = 400;
    w.max_pages = 0;
    http_run_jobs(&d, &whole, 1, note_pages, &w);
    cr_assert_eq(whole.resp.rc, CURLE_OPERATION_TIMEDOUT);
    cr_assert(w.max_pages > 0);
    cr_assert(wait_metric(&d, "llmd_request_finished_total{finished_reason=\"cancelled\"}", 2, 5),
              "the suspended request was not cancelled");
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5));
    cr_assert(
        wait_metric(&d, "llmd_http_requests_total{path=\"/v1/completions\",status=\"499\"}", 1, 5),
        "the request that got no answer counts as 499");
    cr_assert(wait_metric(&d, "llmd_num_requests_running", 0, 5));
    free((char *)whole.body);
    http_response_free(&whole.resp);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------- prefix cache */

static const char system_prompt[] =
    "You are a careful assistant for a library. Answer in one sentence, name the shelf, "
    "never invent a title, and say when a book is out. The shelves run from A at the door to "
    "K at the back, poetry is on D, maps are on H, and children's books are on B and C.";

/* Eight chats with one system prompt, all at once, twice. */
static void run_chats(const struct daemon *d, char **texts, int *cached)
{
    enum { N = 8 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        char *body = malloc(2048);
        snprintf(body, 2048,
                 "{\"messages\": [{\"role\": \"system\", \"content\": \"%s\"}, {\"role\": "
                 "\"user\", \"content\": \"%s\"}], \"temperature\": 0, \"max_tokens\": 12}",
                 system_prompt, prompts[i]);
        jobs[i].path = "/v1/chat/completions";
        jobs[i].body = body;
    }
    http_run_jobs(d, jobs, N, NULL, NULL);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(jobs[i].resp.status, 200, "%.300s", jobs[i].resp.body.data);
        json_t *r = json_loadb(jobs[i].resp.body.data, jobs[i].resp.body.len, 0, NULL);
        cr_assert(r);
        json_t *details = json_object_get(json_object_get(r, "usage"), "prompt_tokens_details");
        cr_assert(json_is_integer(json_object_get(details, "cached_tokens")));
        cached[i] = (int)json_integer_value(json_object_get(details, "cached_tokens"));
        cr_assert_lt(cached[i], usage_of(r, "prompt_tokens"));
        texts[i] = strdup(choice_text(r, 0));
        json_decref(r);
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
}

Test(server_serving, a_shared_system_prompt_comes_from_the_prefix_cache)
{
    enum { N = 8 };
    char *plain[N], *first[N], *second[N];
    int cached_plain[N], cached_first[N], cached_second[N];
    struct daemon d;
    daemon_start(&d, (const char *[]){"--no-prefix-cache", NULL});
    run_chats(&d, plain, cached_plain);
    cr_assert_eq(metric(&d, "llmd_prefix_cache_hit_tokens_total"), 0);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));

    daemon_start(&d, NULL);
    run_chats(&d, first, cached_first);
    run_chats(&d, second, cached_second);
    int hits_first = 0;
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cached_plain[i], 0);
        cr_assert_str_eq(first[i], plain[i], "chat %d: '%s' with the cache, '%s' without", i,
                         first[i], plain[i]);
        cr_assert_str_eq(second[i], plain[i]);
        hits_first += cached_first[i] > 0;
        cr_assert_gt(cached_second[i], cached_first[i] > 0 ? cached_first[i] - 1 : 0);
        free(plain[i]);
        free(first[i]);
        free(second[i]);
    }
    cr_assert_geq(hits_first, N - 1, "the system prompt was computed once");
    cr_assert_gt(metric(&d, "llmd_prefix_cache_hit_tokens_total"), 0);
    cr_assert_gt(metric(&d, "llmd_prefix_cache_hit_ratio"), 0.4);
    cr_assert_gt(metric(&d, "llmd_kv_pages_cached"), 0);
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5), "idle cached pages count as free");
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* logit_bias reaches the engine: +100 on one token makes the whole output
 * that token. */
Test(server_serving, logit_bias_steers_the_output)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;
    json_t *text = http_json(&d, "POST", "/detokenize", "{\"tokens\": [300, 300, 300, 300]}", &status);
    cr_assert_eq(status, 200);
    char *body = completion_body(prompts[2], 4, false, "\"logit_bias\": {\"300\": 100}");
    json_t *r = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(choice_text(r, 0), json_string_value(json_object_get(text, "prompt")));
    json_decref(r);
    json_decref(text);
    free(body);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* --------------------------------------------------------- the queue */

Test(server_serving, a_full_queue_answers_429_with_retry_after)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-running", "1", "--max-waiting", "1", NULL});
    enum { N = 6 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].path = "/v1/completions";
        jobs[i].body = completion_body(prompts[i], 48, false, "\"ignore_eos\": true");
    }
    http_run_jobs(&d, jobs, N, NULL, NULL);
    int ok = 0, busy = 0;
    for (int i = 0; i < N; i++) {
        struct http_response *r = &jobs[i].resp;
        if (r->status == 429) {
            busy++;
            cr_assert_str_eq(http_header(r, "Retry-After"), "1");
            json_t *j = json_loadb(r->body.data, r->body.len, 0, NULL);
            json_t *e = json_object_get(j, "error");
            cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "rate_limit_error");
            cr_assert_str_eq(json_string_value(json_object_get(e, "code")), "queue_full");
            json_decref(j);
        } else {
            cr_assert_eq(r->status, 200, "job %d: %ld", i, r->status);
            ok++;
            json_t *j = json_loadb(r->body.data, r->body.len, 0, NULL);
            cr_assert_eq(usage_of(j, "completion_tokens"), 48);
            json_decref(j);
        }
        free((char *)jobs[i].body);
        http_response_free(r);
    }
    cr_assert(ok >= 1 && ok <= 2, "one runs and at most one waits: %d ok", ok);
    cr_assert_eq(busy, N - ok);
    cr_assert_eq(metric(&d, "llmd_http_requests_total{path=\"/v1/completions\",status=\"429\"}"),
                 busy);
    /* n = 3 needs three slots: refused as a whole, nothing left behind. */
    long status;
    json_t *j = http_json(&d, "POST", "/v1/completions",
                          "{\"prompt\": \"a\", \"n\": 3, \"max_tokens\": 4}", &status);
    cr_assert_eq(status, 429);
    json_decref(j);
    cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 5));
    cr_assert(wait_metric(&d, "llmd_num_requests_waiting", 0, 5));
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_serving, the_request_deadline_cuts_generation)
{
    struct daemon d;
    /* well under the time 480 tokens take even on the fastest build */
    daemon_start(&d, (const char *[]){"--request-timeout-s", "0.05", NULL});
    char *body = completion_body(prompts[2], 480, false, "\"ignore_eos\": true");
    long status;
    double t0 = now_s();
    json_t *r = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(finish_reason(r, 0), "timeout", "not the model's length limit");
    cr_assert(usage_of(r, "completion_tokens") < 480);
    cr_assert(now_s() - t0 < 10);
    cr_assert_eq(metric(&d, "llmd_request_finished_total{finished_reason=\"timeout\"}"), 1);
    json_decref(r);
    free(body);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------------ draining */

struct drain {
    struct daemon *d;
    int want_in_flight;
    bool signalled;
    bool refused_after; /* a new connection after SIGTERM was refused */
};

static bool connection_refused(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool refused = connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno == ECONNREFUSED;
    close(fd);
    return refused;
}

/* Once every request is in the engine, SIGTERM; then new connections must
 * be refused while the old ones go on. */
static bool terminate_when_busy(int running, void *ctx)
{
    (void)running;
    struct drain *s = ctx;
    if (s->signalled) return false;
    double in_flight =
        metric(s->d, "llmd_num_requests_running") + metric(s->d, "llmd_num_requests_waiting");
    if (in_flight < s->want_in_flight) return true;
    kill(s->d->pid, SIGTERM);
    s->signalled = true;
    for (int i = 0; i < 100 && !s->refused_after; i++) {
        s->refused_after = connection_refused(s->d->port);
        sleep_s(0.01);
    }
    return false;
}

Test(server_serving, sigterm_lets_running_requests_finish_and_exits_0)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--grace-s", "60", NULL});
    enum { N = 4 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        jobs[i].path = "/v1/completions";
        jobs[i].body = completion_body(prompts[i], 64, i % 2, "\"ignore_eos\": true");
    }
    struct drain s = {&d, N, false, false};
    http_run_jobs(&d, jobs, N, terminate_when_busy, &s);
    cr_assert(s.signalled, "the requests never were all in flight");
    cr_assert(s.refused_after, "new connections were still accepted after SIGTERM");
    for (int i = 0; i < N; i++) {
        char *text = job_text(&jobs[i], i % 2);
        cr_assert(strlen(text) > 0);
        if (i % 2 == 0) {
            json_t *r = json_loadb(jobs[i].resp.body.data, jobs[i].resp.body.len, 0, NULL);
            cr_assert_eq(usage_of(r, "completion_tokens"), 64, "request %d finished in full", i);
            json_decref(r);
        }
        free(text);
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S), "the daemon did not exit after draining");
    cr_assert_eq(d.status, 0, "exit status %d; log:\n%s", d.status, daemon_log_tail(&d));
}

Test(server_serving, past_the_grace_period_requests_end_with_an_error_and_exit_is_0)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--grace-s", "0.2", NULL});
    struct http_job jobs[2];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 2; i++) {
        jobs[i].path = "/v1/completions";
        jobs[i].body = completion_body(prompts[i], 490, i == 1, "\"ignore_eos\": true");
    }
    struct drain s = {&d, 2, false, false};
    http_run_jobs(&d, jobs, 2, terminate_when_busy, &s);
    cr_assert(s.signalled);
    /* Not streamed: a 503. Streamed: the headers were out, so an error
     * event, then [DONE]. */
    cr_assert_eq(jobs[0].resp.status, 503, "%.200s", jobs[0].resp.body.data);
    cr_assert(strstr(jobs[0].resp.body.data, "shutting_down"));
    cr_assert_eq(jobs[1].resp.status, 200);
    json_t *events = sse_events(&jobs[1].resp.body);
    json_t *last = json_array_get(events, json_array_size(events) - 1);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(last, "error"), "code")),
                     "shutting_down");
    json_decref(events);
    for (int i = 0; i < 2; i++) {
        free((char *)jobs[i].body);
        http_response_free(&jobs[i].resp);
    }
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 0, "exit status %d; log:\n%s", d.status, daemon_log_tail(&d));
}

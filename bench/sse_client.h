/* sse_client.h: the streaming OpenAI client the load benchmarks share
 * (header-only, as bench.h): one streamed request on a curl multi handle,
 * timed per chunk, its text and usage kept; latency samples and their
 * percentiles; waiting for a server's /health. */
#ifndef LLMD_BENCH_SSE_CLIENT_H
#define LLMD_BENCH_SSE_CLIENT_H

#include "bench/bench.h"
#include "server/buf.h"
#include "util/util.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>

/* ---------------------------------------------------------- statistics */

struct samples {
    double *v;
    int n, cap;
};

static inline void samples_add(struct samples *s, double v)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->v = util_xrealloc(s->v, sizeof *s->v * (size_t)s->cap);
    }
    s->v[s->n++] = v;
}

/* Nearest-rank percentile (p in 0..100); NAN for no samples. */
static inline double percentile(struct samples *s, double p)
{
    if (s->n == 0) return NAN;
    qsort(s->v, (size_t)s->n, sizeof *s->v, bench_cmp_double);
    int rank = (int)((p / 100.0) * s->n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > s->n) rank = s->n;
    return s->v[rank - 1];
}

/* -------------------------------------------------------- one request */

struct stream {
    CURL *easy;
    struct srv_buf pending; /* bytes of an event not complete yet */
    struct srv_buf text;    /* the text streamed so far */
    double start, first, last, end;
    int tokens;        /* completion tokens, from the usage chunk */
    int prompt_tokens; /* from the usage chunk */
    int cached_tokens; /* usage.prompt_tokens_details.cached_tokens */
    int chunks;        /* chunks with text */
    bool failed;
    long status;
    struct samples *itl; /* where inter-token gaps go (may be NULL) */
    void *user;
};

/* Handles one SSE event's payload. */
static inline void stream_event(struct stream *s, const char *data, size_t len, double t)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) return;
    json_t *j = json_loadb(data, len, 0, NULL);
    if (!j) {
        s->failed = true;
        return;
    }
    json_t *usage = json_object_get(j, "usage");
    if (json_is_object(usage)) {
        s->tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
        s->prompt_tokens = (int)json_integer_value(json_object_get(usage, "prompt_tokens"));
        json_t *details = json_object_get(usage, "prompt_tokens_details");
        s->cached_tokens = (int)json_integer_value(json_object_get(details, "cached_tokens"));
    }
    if (json_object_get(j, "error")) s->failed = true;
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    json_t *text = json_object_get(choice, "text");
    if (!text) text = json_object_get(json_object_get(choice, "delta"), "content");
    if (json_is_string(text) && json_string_length(text) > 0) {
        if (s->chunks == 0)
            s->first = t;
        else if (s->itl)
            samples_add(s->itl, t - s->last);
        s->last = t;
        s->chunks++;
        srv_buf_append(&s->text, json_string_value(text), json_string_length(text));
    }
    json_decref(j);
}

static inline size_t stream_data(char *data, size_t size, size_t n, void *ctx)
{
    struct stream *s = ctx;
    double t = util_now();
    srv_buf_append(&s->pending, data, size * n);
    for (;;) {
        char *end = strstr(s->pending.data, "\n\n");
        if (!end) break;
        if (strncmp(s->pending.data, "data: ", 6) == 0)
            stream_event(s, s->pending.data + 6, (size_t)(end - s->pending.data - 6), t);
        srv_buf_consume(&s->pending, (size_t)(end + 2 - s->pending.data));
    }
    return size * n;
}

/* Posts `body` (copied) to `url` on the multi handle. */
static inline void stream_start(struct stream *s, CURLM *multi, const char *url, const char *body,
                                struct curl_slist *headers, struct samples *itl, void *user)
{
    memset(s, 0, sizeof *s);
    s->itl = itl;
    s->user = user;
    s->easy = curl_easy_init();
    curl_easy_setopt(s->easy, CURLOPT_URL, url);
    curl_easy_setopt(s->easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, stream_data);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
    curl_easy_setopt(s->easy, CURLOPT_TIMEOUT, 600L);
    curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
    s->start = util_now();
    curl_multi_add_handle(multi, s->easy);
}

/* The next finished stream of the multi handle, or NULL: its status and end
 * time set, failed when the transfer, the status or the events say so, its
 * curl handle gone (free its buffers with stream_free). */
static inline struct stream *stream_next_done(CURLM *multi)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        struct stream *s;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &s->status);
        s->end = util_now();
        if (msg->data.result != CURLE_OK || s->status != 200 || s->chunks == 0) s->failed = true;
        curl_multi_remove_handle(multi, s->easy);
        curl_easy_cleanup(s->easy);
        s->easy = NULL;
        return s;
    }
    return NULL;
}

static inline void stream_free(struct stream *s)
{
    srv_buf_free(&s->pending);
    srv_buf_free(&s->text);
}

/* ------------------------------------------------------------- server */

static inline size_t bench_discard(char *d, size_t s, size_t n, void *c)
{
    (void)d;
    (void)c;
    return s * n;
}

/* Waits until base/health says 200 (a model quantized at load takes a while). */
static inline int bench_wait_ready(const char *base)
{
    char url[512];
    snprintf(url, sizeof url, "%s/health", base);
    double deadline = util_now() + 600;
    while (util_now() < deadline) {
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bench_discard);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        if (status == 200) return 0;
        usleep(100000);
    }
    return -ETIMEDOUT;
}

#endif

/*
 * prefix_cache: what the prefix cache saves a serving user, measured side
 * by side in one run: `llmd serve` without the cache (--no-prefix-cache)
 * and with it (the default), on two chat workloads, streamed, greedy,
 * `--clients` in flight (closed loop):
 *
 *   system-prompt  every request is one shared system prompt of about
 *                  --system-tokens tokens and a short question of its own;
 *   multi-turn     each client holds a conversation of --turns turns, every
 *                  turn resending the whole history (its questions and the
 *                  model's replies) with a new question.
 *
 * It prints TTFT and end-to-end latency (p50/p99), output tokens/s and the
 * share of prompt tokens the server took from its cache, then the ratios
 * (`name: value` lines). The server runs with ignore_eos so that every
 * answer has the length asked for: between half and one and a half times
 * --max-tokens, drawn per request (the same draws for both servers), so
 * that the clients do not finish in lockstep and arrive in waves; the
 * texts come from models/heldout.txt.
 *
 *   build/bench/prefix_cache [--model PATH] [--clients 8] [--requests 48]
 *       [--system-tokens 1000] [--turns 6] [--max-tokens 16] [--rounds 1]
 *       [--server-arg ARG]...
 */
#include "bench/sse_client.h"

#include <signal.h>

#define MAX_CLIENTS     64
#define MAX_SERVER_ARGS 32

struct options {
    const char *model;
    int clients, requests, system_tokens, turns, max_tokens, rounds;
    const char *server_args[MAX_SERVER_ARGS];
    int n_server_args;
};

/* ------------------------------------------------------------- texts */

static char *heldout; /* models/heldout.txt */
static size_t heldout_len;

/* A piece of the held-out text: `n` bytes from a word start near `at`,
 * JSON-safe (no quotes or control characters survive). */
static char *text_piece(size_t at, size_t n)
{
    at %= heldout_len - n - 1;
    while (at > 0 && heldout[at - 1] != ' ') at--;
    char *s = util_xmalloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)heldout[at + i];
        s[i] = c < 32 || c == '"' || c == '\\' ? ' ' : (char)c;
    }
    s[n] = 0;
    return s;
}

static size_t collect(char *data, size_t size, size_t n, void *ctx)
{
    srv_buf_append(ctx, data, size * n);
    return size * n;
}

/* POSTs a JSON body (taking the reference) and returns the parsed answer (NULL on failure). */
static json_t *post_json(const char *base, const char *path, json_t *body)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct srv_buf out = SRV_BUF_INIT;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    json_t *answer = curl_easy_perform(c) == CURLE_OK ? json_loadb(out.data, out.len, 0, NULL) : NULL;
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    srv_buf_free(&out);
    free(text);
    return answer;
}

/* A system prompt of `tokens` tokens of held-out text: cut by the server's
 * own tokenizer (/tokenize, /detokenize). */
static char *system_prompt(const char *base, int tokens)
{
    char *raw = text_piece(0, (size_t)tokens * 8);
    json_t *ids = post_json(base, "/tokenize", json_pack("{s:s,s:b}", "prompt", raw, "add_special_tokens", 0));
    free(raw);
    json_t *all = json_object_get(ids, "tokens");
    if (!json_is_array(all) || (int)json_array_size(all) < tokens) {
        json_decref(ids);
        return NULL;
    }
    json_t *cut = json_array();
    for (int i = 0; i < tokens; i++) json_array_append(cut, json_array_get(all, (size_t)i));
    json_t *text = post_json(base, "/detokenize", json_pack("{s:o}", "tokens", cut));
    json_decref(ids);
    const char *content = json_string_value(json_object_get(text, "prompt"));
    char *out = content ? strdup(content) : NULL;
    json_decref(text);
    return out;
}

/* ------------------------------------------------------------ workloads */

struct result {
    int requests, failed;
    double seconds, tokens, prompt_tokens, cached_tokens;
    struct samples ttft, e2e;
};

struct client {
    struct stream stream;
    json_t *messages; /* the conversation so far (multi-turn) */
    int turn;
    int max_tokens; /* of the request in flight */
    bool busy;
};

static char *chat_body(json_t *messages, int max_tokens)
{
    json_t *body = json_pack("{s:O,s:i,s:f,s:b,s:b,s:{s:b}}", "messages", messages, "max_tokens",
                             max_tokens, "temperature", 0.0, "ignore_eos", 1, "stream", 1,
                             "stream_options", "include_usage", 1);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    return text;
}

static json_t *message(const char *role, const char *content)
{
    return json_pack("{s:s,s:s}", "role", role, "content", content);
}

/* The next request of client `c`: the k-th of the system-prompt workload
 * (system != NULL), or its conversation's next turn. */
static void client_send(const struct options *o, struct client *c, CURLM *multi, const char *url,
                        struct curl_slist *headers, const char *system, int k, int client)
{
    if (system) {
        json_decref(c->messages);
        char question[160], *topic = text_piece((size_t)k * 7919, 80);
        snprintf(question, sizeof question, "Question %d: what does this say? %s", k, topic);
        free(topic);
        c->messages = json_pack("[o,o]", message("system", system), message("user", question));
    } else {
        if (!c->messages) c->messages = json_array();
        char *say = text_piece((size_t)(client * 104729 + c->turn * 1299709), 240);
        json_array_append_new(c->messages, message("user", say));
        free(say);
    }
    /* a length drawn from the request's place in the workload */
    uint64_t draw = (uint64_t)(system ? k : client * 1000 + c->turn) * 0x9e3779b97f4a7c15ull;
    c->max_tokens = o->max_tokens / 2 + (int)((draw >> 33) % (uint64_t)(o->max_tokens + 1));
    if (c->max_tokens < 1) c->max_tokens = 1;
    char *body = chat_body(c->messages, c->max_tokens);
    stream_start(&c->stream, multi, url, body, headers, NULL, c);
    free(body);
    c->busy = true;
}

/* Runs one workload against the server at `base`. */
static void run_workload(const struct options *o, const char *base, const char *system,
                         struct result *res)
{
    char url[512];
    snprintf(url, sizeof url, "%s/v1/chat/completions", base);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    CURLM *multi = curl_multi_init();
    struct client clients[MAX_CLIENTS];
    memset(clients, 0, sizeof clients);
    memset(res, 0, sizeof *res);
    int total = system ? o->requests : o->clients * o->turns, started = 0, done = 0, running;
    double t0 = util_now();
    for (int i = 0; i < o->clients && started < total; i++, started++)
        client_send(o, &clients[i], multi, url, headers, system, started, i);
    while (done < total) {
        curl_multi_perform(multi, &running);
        struct stream *s;
        while ((s = stream_next_done(multi))) {
            struct client *c = s->user;
            if (s->tokens != c->max_tokens) s->failed = true;
            if (s->failed) {
                res->failed++;
            } else {
                res->tokens += s->tokens;
                res->prompt_tokens += s->prompt_tokens;
                res->cached_tokens += s->cached_tokens;
                samples_add(&res->ttft, s->first - s->start);
                samples_add(&res->e2e, s->end - s->start);
            }
            if (!system) /* the reply joins the history */
                json_array_append_new(c->messages,
                                      message("assistant", s->text.data ? s->text.data : ""));
            stream_free(s);
            c->busy = false;
            c->turn++;
            done++;
            int index = (int)(c - clients);
            bool more = system ? started < total : c->turn < o->turns;
            if (more) {
                client_send(o, c, multi, url, headers, system, started, index);
                started++;
            }
        }
        if (done < total) curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    res->seconds = util_now() - t0;
    res->requests = total;
    for (int i = 0; i < o->clients; i++) json_decref(clients[i].messages);
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
}

/* ---------------------------------------------------------------- main */

static pid_t start_server(const struct options *o, bool cache, char *base, size_t len)
{
    const char *argv[64] = {"build/llmd", "serve", "--model", o->model, "--port", "0"};
    int argc = 6;
    if (!cache) argv[argc++] = "--no-prefix-cache";
    for (int i = 0; i < o->n_server_args; i++) argv[argc++] = o->server_args[i];
    argv[argc] = NULL;
    pid_t pid = bench_start_server(argv, "/tmp/llmd-prefix-cache-server.log", 120, base, len);
    if (pid > 0 && bench_wait_ready(base)) {
        kill(pid, SIGKILL);
        return -ETIMEDOUT;
    }
    return pid;
}

static void print_row(const char *workload, bool cache, struct result *r)
{
    printf("%-14s %-5s %5d %4d | %7.1f / %7.1f | %7.1f / %7.1f | %9.1f | %6.1f%%\n", workload,
           cache ? "on" : "off", r->requests, r->failed, 1e3 * percentile(&r->ttft, 50),
           1e3 * percentile(&r->ttft, 99), 1e3 * percentile(&r->e2e, 50),
           1e3 * percentile(&r->e2e, 99), r->tokens / r->seconds,
           r->prompt_tokens > 0 ? 100 * r->cached_tokens / r->prompt_tokens : 0);
    fflush(stdout);
}

static int parse_args(int argc, char **argv, struct options *o)
{
    *o = (struct options){.model = "models/llmd-20m.gguf", .clients = 8, .requests = 48,
                          .system_tokens = 1000, .turns = 6, .max_tokens = 16, .rounds = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) return 1;
        if (!v) return -1;
        if (strcmp(a, "--model") == 0) o->model = v;
        else if (strcmp(a, "--clients") == 0) o->clients = atoi(v);
        else if (strcmp(a, "--requests") == 0) o->requests = atoi(v);
        else if (strcmp(a, "--system-tokens") == 0) o->system_tokens = atoi(v);
        else if (strcmp(a, "--turns") == 0) o->turns = atoi(v);
        else if (strcmp(a, "--max-tokens") == 0) o->max_tokens = atoi(v);
        else if (strcmp(a, "--rounds") == 0) o->rounds = atoi(v);
        else if (strcmp(a, "--server-arg") == 0 && o->n_server_args < MAX_SERVER_ARGS)
            o->server_args[o->n_server_args++] = v;
        else return -1;
        i++;
    }
    bool ok = o->clients >= 1 && o->clients <= MAX_CLIENTS && o->requests >= 1 &&
              o->system_tokens >= 16 && o->turns >= 1 && o->max_tokens >= 1 && o->rounds >= 1;
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_args(argc, argv, &o);
    if (rc) {
        printf("usage: prefix_cache [--model PATH] [--clients 8] [--requests 48] "
               "[--system-tokens 1000]\n"
               "                    [--turns 6] [--max-tokens 16] [--rounds 1] "
               "[--server-arg ARG]...\n");
        return rc > 0 ? 0 : 2;
    }
    heldout = util_read_file("models/heldout.txt", &heldout_len);
    if (!heldout || heldout_len < 100000) {
        fprintf(stderr, "prefix_cache: models/heldout.txt is missing or short\n");
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    printf("prefix_cache: model %s, %d clients, ~%d output tokens a request (ignore_eos), greedy, "
           "streamed chat\n",
           o.model, o.clients, o.max_tokens);
    printf("system-prompt: %d requests, a %d-token system prompt and a question each; multi-turn: "
           "%d turns a client, ~50 new tokens a turn\n",
           o.requests, o.system_tokens, o.turns);
    printf("cpu: %s; %s\n\n", util_cpu_model_name(), util_cpu_flags_string());
    printf("%-14s %-5s %5s %4s | %-17s | %-17s | %9s | %7s\n", "workload", "cache", "reqs", "fail",
           "TTFT ms p50/p99", "e2e ms p50/p99", "out tok/s", "cached");

    /* per workload (0 system-prompt, 1 multi-turn) and cache (0 off, 1 on):
     * the medians over rounds */
    double ttft[2][2][16], tput[2][2][16];
    int failed = 0;
    for (int round = 0; round < o.rounds && round < 16; round++)
        for (int cache = 0; cache < 2; cache++) {
            char base[256];
            pid_t pid = start_server(&o, cache, base, sizeof base);
            if (pid < 0) {
                fprintf(stderr, "prefix_cache: the server did not start (see "
                                "/tmp/llmd-prefix-cache-server.log)\n");
                return 1;
            }
            char *system = system_prompt(base, o.system_tokens);
            if (!system) {
                fprintf(stderr, "prefix_cache: /tokenize gave too few tokens\n");
                kill(pid, SIGKILL);
                return 1;
            }
            for (int w = 0; w < 2; w++) {
                struct result r;
                run_workload(&o, base, w == 0 ? system : NULL, &r);
                print_row(w == 0 ? "system-prompt" : "multi-turn", cache, &r);
                ttft[w][cache][round] = percentile(&r.ttft, 50);
                tput[w][cache][round] = r.tokens / r.seconds;
                failed += r.failed;
                free(r.ttft.v);
                free(r.e2e.v);
            }
            free(system);
            bench_stop_server(pid);
        }
    int rounds = o.rounds < 16 ? o.rounds : 16;
    printf("\n");
    const char *names[2] = {"system_prompt", "multi_turn"};
    for (int w = 0; w < 2; w++) {
        double off = bench_median(ttft[w][0], rounds), on = bench_median(ttft[w][1], rounds);
        printf("%s_ttft_p50_ms_off: %.1f\n%s_ttft_p50_ms_on: %.1f\n", names[w], 1e3 * off, names[w],
               1e3 * on);
        printf("%s_ttft_p50_ratio: %.2f\n", names[w], off / on);
        double toff = bench_median(tput[w][0], rounds), ton = bench_median(tput[w][1], rounds);
        printf("%s_throughput_ratio: %.2f\n", names[w], ton / toff);
    }
    printf("failed_requests: %d\n", failed);
    free(heldout);
    curl_global_cleanup();
    return failed ? 1 : 0;
}

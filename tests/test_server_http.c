/* Integration tests of `llmd serve` over HTTP with the test model: every
 * endpoint and parameter, the bad-input matrix, auth, CORS, limits, and
 * /health while the model loads. */
#include "tests/integration/harness.h"
#include "tests/prometheus_names.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define PROMPT "Once upon a time there was a"

/* A greedy completion of PROMPT-like text: the parsed response. */
static json_t *complete(const struct daemon *d, const char *extra)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"prompt\": \"" PROMPT "\", \"temperature\": 0, \"max_tokens\": 12%s%s}",
             extra ? ", " : "", extra ? extra : "");
    long status;
    json_t *j = http_json(d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 200, "%s -> %ld", body, status);
    return j;
}

/* ------------------------------------------------------------ endpoints */

Test(server_http, health_models_and_completion_shapes)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;
    json_t *health = http_json(&d, "GET", "/health", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(health, "status")), "ok");
    json_decref(health);

    json_t *models = http_json(&d, "GET", "/v1/models", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(models, "object")), "list");
    json_t *m = json_array_get(json_object_get(models, "data"), 0);
    const char *name = json_string_value(json_object_get(m, "id"));
    cr_assert_str_eq(name, "tiny-random");
    cr_assert_str_eq(json_string_value(json_object_get(m, "object")), "model");
    cr_assert_eq(json_integer_value(json_object_get(m, "max_model_len")), 512);
    json_t *one = http_json(&d, "GET", "/v1/models/tiny-random", NULL, &status);
    cr_assert_eq(status, 200);
    cr_assert(json_equal(one, m));
    json_decref(one);
    json_decref(models);

    json_t *r = complete(&d, "\"model\": \"tiny-random\"");
    cr_assert(strncmp(json_string_value(json_object_get(r, "id")), "cmpl-", 5) == 0);
    cr_assert_str_eq(json_string_value(json_object_get(r, "object")), "text_completion");
    cr_assert(json_integer_value(json_object_get(r, "created")) > 1600000000);
    cr_assert_str_eq(json_string_value(json_object_get(r, "model")), "tiny-random");
    cr_assert_eq(json_array_size(json_object_get(r, "choices")), 1);
    cr_assert_str_eq(finish_reason(r, 0), "length");
    cr_assert(strlen(choice_text(r, 0)) > 0);
    cr_assert_eq(usage_of(r, "completion_tokens"), 12);
    cr_assert_eq(usage_of(r, "total_tokens"),
                 usage_of(r, "prompt_tokens") + usage_of(r, "completion_tokens"));
    cr_assert(json_is_null(
        json_object_get(json_array_get(json_object_get(r, "choices"), 0), "logprobs")));
    json_decref(r);

    json_t *chat = http_json(&d, "POST", "/v1/chat/completions",
                             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be kind.\"}, "
                             "{\"role\": \"user\", \"content\": \"Hello there\"}], "
                             "\"temperature\": 0, \"max_tokens\": 6}",
                             &status);
    cr_assert_eq(status, 200);
    cr_assert(strncmp(json_string_value(json_object_get(chat, "id")), "chatcmpl-", 9) == 0);
    cr_assert_str_eq(json_string_value(json_object_get(chat, "object")), "chat.completion");
    json_t *msg = json_object_get(json_array_get(json_object_get(chat, "choices"), 0), "message");
    cr_assert_str_eq(json_string_value(json_object_get(msg, "role")), "assistant");
    cr_assert(json_is_string(json_object_get(msg, "content")));
    cr_assert(usage_of(chat, "completion_tokens") <= 6);
    json_decref(chat);

    /* the whole /metrics page of a daemon that served (PIM and process
     * families included) follows Prometheus's naming rules */
    struct http_response page = {0};
    http_request(&d, "GET", "/metrics", NULL, NULL, &page);
    cr_assert_eq(page.status, 200);
    cr_assert_gt(prom_check_names(page.body.data), 20);
    cr_assert(strstr(page.body.data, "llmd_pim_jobs_total"), "PIM families on the page");
    http_response_free(&page);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, tokenize_detokenize_and_prompt_ids_agree_with_text)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;
    json_t *tok = http_json(&d, "POST", "/tokenize", "{\"prompt\": \"" PROMPT "\"}", &status);
    cr_assert_eq(status, 200);
    json_t *ids = json_object_get(tok, "tokens");
    cr_assert_eq(json_integer_value(json_object_get(tok, "count")),
                 (json_int_t)json_array_size(ids));
    cr_assert_eq(json_integer_value(json_object_get(tok, "max_model_len")), 512);
    cr_assert_eq(json_integer_value(json_array_get(ids, 0)), 1, "BOS first");

    json_t *plain =
        http_json(&d, "POST", "/tokenize",
                  "{\"prompt\": \"" PROMPT "\", \"add_special_tokens\": false}", &status);
    cr_assert_eq(json_array_size(json_object_get(plain, "tokens")), json_array_size(ids) - 1);
    json_decref(plain);

    char *ids_text = json_dumps(ids, JSON_COMPACT);
    char body[2048];
    snprintf(body, sizeof body, "{\"tokens\": %s}", ids_text);
    json_t *detok = http_json(&d, "POST", "/detokenize", body, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(detok, "prompt")), PROMPT);
    json_decref(detok);

    /* The same prompt as ids gives the same greedy text and usage. */
    json_t *by_text = complete(&d, NULL);
    snprintf(body, sizeof body, "{\"prompt\": %s, \"temperature\": 0, \"max_tokens\": 12}",
             ids_text);
    json_t *by_ids = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 200);
    cr_assert_str_eq(choice_text(by_ids, 0), choice_text(by_text, 0));
    cr_assert_eq(usage_of(by_text, "prompt_tokens"), (int)json_array_size(ids));
    cr_assert_eq(usage_of(by_ids, "prompt_tokens"), (int)json_array_size(ids));
    free(ids_text);
    json_decref(by_text);
    json_decref(by_ids);

    json_t *chat_tok =
        http_json(&d, "POST", "/tokenize",
                  "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}", &status);
    cr_assert_eq(status, 200);
    json_t *chat = http_json(&d, "POST", "/v1/chat/completions",
                             "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                             "\"max_tokens\": 2}",
                             &status);
    cr_assert_eq(usage_of(chat, "prompt_tokens"),
                 (int)json_integer_value(json_object_get(chat_tok, "count")),
                 "/tokenize renders messages with the chat template");
    json_decref(chat);
    json_decref(chat_tok);
    json_decref(tok);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ----------------------------------------------------------- parameters */

Test(server_http, sampling_parameters_act)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_t *greedy = complete(&d, NULL);
    const char *text = choice_text(greedy, 0);

    /* top_k 1 at any temperature is greedy. */
    json_t *k1 = complete(&d, "\"temperature\": 1.5, \"top_k\": 1, \"seed\": 3");
    cr_assert_str_eq(choice_text(k1, 0), text);
    /* A seed reproduces a sampled output; another seed (almost surely) does not. */
    json_t *s1 = complete(&d, "\"temperature\": 1.0, \"seed\": 42, \"max_tokens\": 24");
    json_t *s2 = complete(&d, "\"temperature\": 1.0, \"seed\": 42, \"max_tokens\": 24");
    json_t *s3 = complete(&d, "\"temperature\": 1.0, \"seed\": 43, \"max_tokens\": 24");
    cr_assert_str_eq(choice_text(s1, 0), choice_text(s2, 0));
    cr_assert_str_neq(choice_text(s1, 0), choice_text(s3, 0));
    /* The random model repeats itself under greedy decoding; a frequency
     * penalty must change that. */
    json_t *long_greedy = complete(&d, "\"max_tokens\": 32");
    json_t *penalized = complete(&d, "\"max_tokens\": 32, \"frequency_penalty\": 2.0");
    json_t *presence = complete(&d, "\"max_tokens\": 32, \"presence_penalty\": 2.0");
    json_t *repetition = complete(&d, "\"max_tokens\": 32, \"repetition_penalty\": 1.5");
    cr_assert_str_neq(choice_text(penalized, 0), choice_text(long_greedy, 0));
    cr_assert_str_neq(choice_text(presence, 0), choice_text(long_greedy, 0));
    cr_assert_str_neq(choice_text(repetition, 0), choice_text(long_greedy, 0));
    /* min_p and top_p are accepted; top_p tiny is greedy. */
    json_t *p =
        complete(&d, "\"temperature\": 1.0, \"top_p\": 0.000001, \"min_p\": 0.1, \"seed\": 9");
    cr_assert_str_eq(choice_text(p, 0), text);
    /* Quest with a budget past the whole context reads every page: dense. */
    json_t *q = complete(&d, "\"quest\": {\"token_budget\": 4096}");
    cr_assert_str_eq(choice_text(q, 0), text);
    json_t *q0 = complete(&d, "\"quest\": {\"token_budget\": 0}");
    cr_assert_str_eq(choice_text(q0, 0), text);
    json_t *all[] = {greedy,    k1,       s1,         s2, s3, long_greedy,
                     penalized, presence, repetition, p,  q,  q0};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) json_decref(all[i]);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, stop_strings_cut_the_text_and_report_stop)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_t *full = complete(&d, "\"max_tokens\": 24");
    const char *text = choice_text(full, 0);
    size_t len = strlen(text);
    cr_assert(len > 12);
    /* Stop at a piece from the middle: the text is what came before it. */
    char stop[5];
    memcpy(stop, text + len / 2, 4);
    stop[4] = '\0';
    const char *at = strstr(text, stop);
    char extra[128];
    snprintf(extra, sizeof extra, "\"max_tokens\": 24, \"stop\": [\"zzzz-never\", \"%s\"]", stop);
    json_t *cut = complete(&d, extra);
    cr_assert_str_eq(finish_reason(cut, 0), "stop");
    cr_assert_eq(strlen(choice_text(cut, 0)), (size_t)(at - text), "'%s' cut at '%s': '%s'", text,
                 stop, choice_text(cut, 0));
    cr_assert(strncmp(choice_text(cut, 0), text, (size_t)(at - text)) == 0);
    json_decref(cut);
    json_decref(full);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, n_and_prompt_lists_give_choices_in_order)
{
    struct daemon d;
    daemon_start(&d, NULL);
    long status;
    json_t *a =
        http_json(&d, "POST", "/v1/completions",
                  "{\"prompt\": \"First prompt\", \"temperature\": 0, \"max_tokens\": 8}", &status);
    json_t *b = http_json(
        &d, "POST", "/v1/completions",
        "{\"prompt\": \"Second one here\", \"temperature\": 0, \"max_tokens\": 8}", &status);
    json_t *both = http_json(&d, "POST", "/v1/completions",
                             "{\"prompt\": [\"First prompt\", \"Second one here\"], \"n\": 2, "
                             "\"temperature\": 0, \"max_tokens\": 8}",
                             &status);
    cr_assert_eq(status, 200);
    json_t *choices = json_object_get(both, "choices");
    cr_assert_eq(json_array_size(choices), 4);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(
            json_integer_value(json_object_get(json_array_get(choices, (size_t)i), "index")), i);
        cr_assert_str_eq(choice_text(both, i), choice_text(i < 2 ? a : b, 0), "choice %d", i);
    }
    cr_assert_eq(usage_of(both, "prompt_tokens"),
                 usage_of(a, "prompt_tokens") + usage_of(b, "prompt_tokens"));
    cr_assert_eq(usage_of(both, "completion_tokens"), 32);
    json_decref(a);
    json_decref(b);
    json_decref(both);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, logprobs_in_both_shapes)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_t *r = complete(&d, "\"logprobs\": 3");
    json_t *lp = json_object_get(json_array_get(json_object_get(r, "choices"), 0), "logprobs");
    json_t *tokens = json_object_get(lp, "tokens");
    json_t *values = json_object_get(lp, "token_logprobs");
    json_t *tops = json_object_get(lp, "top_logprobs");
    json_t *offsets = json_object_get(lp, "text_offset");
    cr_assert_eq(json_array_size(tokens), 12);
    cr_assert_eq(json_array_size(values), 12);
    cr_assert_eq(json_array_size(tops), 12);
    cr_assert_eq(json_array_size(offsets), 12);
    struct srv_buf joined = SRV_BUF_INIT;
    for (size_t i = 0; i < 12; i++) {
        double v = json_number_value(json_array_get(values, i));
        json_t *top = json_array_get(tops, i);
        cr_assert(v <= 0 && isfinite(v));
        cr_assert(json_object_size(top) >= 1 && json_object_size(top) <= 3);
        /* Greedy: the chosen token is the most likely one. */
        double best = -INFINITY;
        const char *key;
        json_t *x;
        json_object_foreach(top, key, x) best = fmax(best, json_number_value(x));
        cr_assert_float_eq(v, best, 1e-5);
        cr_assert_eq(json_integer_value(json_array_get(offsets, i)), (json_int_t)joined.len);
        srv_buf_puts(&joined, json_string_value(json_array_get(tokens, i)));
    }
    /* The tokens spell the text (the first loses its leading space). */
    const char *text = choice_text(r, 0);
    const char *spelled = joined.data[0] == ' ' && text[0] != ' ' ? joined.data + 1 : joined.data;
    cr_assert_str_eq(spelled, text);
    srv_buf_free(&joined);
    json_decref(r);

    long status;
    json_t *c = http_json(&d, "POST", "/v1/chat/completions",
                          "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                          "\"temperature\": 0, \"max_tokens\": 5, \"logprobs\": true, "
                          "\"top_logprobs\": 2}",
                          &status);
    cr_assert_eq(status, 200);
    json_t *content = json_object_get(
        json_object_get(json_array_get(json_object_get(c, "choices"), 0), "logprobs"), "content");
    cr_assert_eq(json_array_size(content), (size_t)usage_of(c, "completion_tokens"));
    json_t *first = json_array_get(content, 0);
    cr_assert(json_is_string(json_object_get(first, "token")));
    cr_assert(json_is_array(json_object_get(first, "bytes")));
    cr_assert_eq(json_array_size(json_object_get(first, "top_logprobs")), 2);
    json_decref(c);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, streaming_matches_the_whole_answer)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_t *whole = complete(&d, "\"max_tokens\": 16");
    struct http_response r = {0};
    http_request(&d, "POST", "/v1/completions",
                 "{\"prompt\": \"" PROMPT "\", \"temperature\": 0, \"max_tokens\": 16, "
                 "\"stream\": true, \"stream_options\": {\"include_usage\": true}}",
                 NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(http_header(&r, "Content-Type"), "text/event-stream");
    json_t *events = sse_events(&r.body);
    char *text = sse_text(events, 0);
    cr_assert_str_eq(text, choice_text(whole, 0));
    size_t n = json_array_size(events);
    json_t *last = json_array_get(events, n - 1);
    cr_assert_eq(json_array_size(json_object_get(last, "choices")), 0, "the usage chunk");
    cr_assert(json_equal(json_object_get(last, "usage"), json_object_get(whole, "usage")));
    json_t *finish = json_array_get(json_object_get(json_array_get(events, n - 2), "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(finish, "finish_reason")), "length");
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *ev = json_array_get(events, i);
        cr_assert_str_eq(json_string_value(json_object_get(ev, "object")), "text_completion");
        cr_assert(json_is_null(json_object_get(ev, "usage")), "usage: null before the end");
    }
    free(text);
    json_decref(events);
    http_response_free(&r);

    /* Chat: a role delta first, then content deltas, then finish. */
    json_t *chat = http_json(&d, "POST", "/v1/chat/completions",
                             "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                             "\"temperature\": 0, \"max_tokens\": 8}",
                             NULL);
    memset(&r, 0, sizeof r);
    http_request(&d, "POST", "/v1/chat/completions",
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"temperature\": 0, "
                 "\"max_tokens\": 8, \"stream\": true}",
                 NULL, &r);
    events = sse_events(&r.body);
    json_t *delta0 = json_object_get(
        json_array_get(json_object_get(json_array_get(events, 0), "choices"), 0), "delta");
    cr_assert_str_eq(json_string_value(json_object_get(delta0, "role")), "assistant");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(events, 1), "object")),
                     "chat.completion.chunk");
    text = sse_text(events, 0);
    cr_assert_str_eq(text, choice_text(chat, 0));
    free(text);
    json_decref(events);
    json_decref(chat);
    http_response_free(&r);
    json_decref(whole);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* A stream whose prompt takes long to prefill gets SSE comments meanwhile,
 * so that a proxy does not cut it; clients skip comments, so the events
 * are those of the same request without them. Prefill is slowed by
 * one-token chunks and the interval is short. */
Test(server_http, a_stream_gets_keep_alive_comments_while_its_prompt_prefills)
{
    char body[8192] = "{\"prompt\": [1";
    for (int i = 0; i < 400; i++)
        snprintf(body + strlen(body), sizeof body - strlen(body), ", %d", 5 + i % 90);
    strcat(body, "], \"max_tokens\": 2, \"temperature\": 0, \"stream\": true}");
    struct daemon d;
    daemon_start(&d, (const char *[]){"--prefill-chunk", "1", "--sse-keepalive-s", "0.002", NULL});
    struct http_response r = {0};
    http_request(&d, "POST", "/v1/completions", body, NULL, &r);
    cr_assert_eq(r.status, 200);
    const char *comment = strstr(r.body.data, ": keep-alive\n\n"),
               *data = strstr(r.body.data, "data:");
    cr_assert(comment && data && comment < data, "no keep-alive before the first event:\n%.300s",
              r.body.data);
    json_t *events = sse_events(&r.body); /* the comments skipped, as clients do */
    size_t n = json_array_size(events);
    cr_assert_geq(n, 1);
    json_t *finish = json_array_get(json_object_get(json_array_get(events, n - 1), "choices"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(finish, "finish_reason")), "length");
    json_decref(events);
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));

    daemon_start(&d, (const char *[]){"--prefill-chunk", "1", "--sse-keepalive-s", "0", NULL});
    memset(&r, 0, sizeof r);
    http_request(&d, "POST", "/v1/completions", body, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_null(strstr(r.body.data, ": keep-alive"), "0 turns them off");
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, ignore_eos_generates_exactly_max_tokens)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_t *r = complete(&d, "\"max_tokens\": 40, \"ignore_eos\": true, \"temperature\": 1.0, "
                             "\"seed\": 5");
    cr_assert_eq(usage_of(r, "completion_tokens"), 40);
    cr_assert_str_eq(finish_reason(r, 0), "length");
    json_decref(r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------------ bad input */

struct bad_case {
    const char *method;
    const char *path;
    const char *body;
    long status;
    const char *type;
    const char *param; /* NULL: null */
    const char *code;  /* NULL: not checked */
};

Test(server_http, bad_input_matrix_gets_4xx_and_the_daemon_stays_up)
{
    static char long_prompt[8000];
    if (!long_prompt[0]) {
        strcpy(long_prompt, "{\"prompt\": \"");
        for (int i = 0; i < 600; i++) strcat(long_prompt, "hello ");
        strcat(long_prompt, "\"}");
    }
    const struct bad_case cases[] = {
        {"POST", "/v1/completions", "{\"prompt\": ", 400, "invalid_request_error", NULL, NULL},
        {"POST", "/v1/completions", "", 400, "invalid_request_error", NULL, NULL},
        {"POST", "/v1/completions", "[1, 2]", 400, "invalid_request_error", NULL, NULL},
        {"POST", "/v1/completions", "{\"prompt\": 5}", 400, "invalid_request_error", "prompt",
         NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": \"9\"}", 400,
         "invalid_request_error", "max_tokens", NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\", \"temperature\": 3}", 400,
         "invalid_request_error", "temperature", NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\", \"n\": 100}", 400, "invalid_request_error",
         "n", NULL},
        {"POST", "/v1/completions", "{\"prompt\": [9999999]}", 400, "invalid_request_error",
         "prompt", NULL},
        {"POST", "/v1/completions", long_prompt, 400, "invalid_request_error", "prompt", NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 100000}", 400,
         "invalid_request_error", "max_tokens", NULL},
        {"POST", "/v1/completions", "{\"prompt\": \"a\", \"model\": \"gpt-4\"}", 404,
         "invalid_request_error", "model", "model_not_found"},
        {"POST", "/v1/chat/completions", "{\"messages\": []}", 400, "invalid_request_error",
         "messages", NULL},
        {"POST", "/v1/chat/completions", "{\"messages\": [{\"role\": \"x\", \"content\": \"\"}]}",
         400, "invalid_request_error", "messages[0].role", NULL},
        {"POST", "/tokenize", "{}", 400, "invalid_request_error", "prompt", NULL},
        {"POST", "/detokenize", "{\"tokens\": [-3]}", 400, "invalid_request_error", "tokens", NULL},
        {"GET", "/v1/models/other", NULL, 404, "invalid_request_error", "model", "model_not_found"},
        {"GET", "/v2/nothing", NULL, 404, "invalid_request_error", NULL, "not_found"},
        {"GET", "/v1/completions", NULL, 405, "invalid_request_error", NULL, "method_not_allowed"},
        {"DELETE", "/health", NULL, 405, "invalid_request_error", NULL, "method_not_allowed"},
        {"PUT", "/v1/chat/completions", "{}", 405, "invalid_request_error", NULL,
         "method_not_allowed"},
    };
    struct daemon d;
    daemon_start(&d, NULL);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct bad_case *t = &cases[i];
        long status;
        json_t *j = http_json(&d, t->method, t->path, t->body, &status);
        json_t *e = json_object_get(j, "error");
        cr_assert_eq(status, t->status, "case %zu (%s %s): %ld", i, t->method, t->path, status);
        cr_assert(json_is_string(json_object_get(e, "message")), "case %zu", i);
        cr_assert_str_eq(json_string_value(json_object_get(e, "type")), t->type, "case %zu", i);
        if (t->param)
            cr_assert_str_eq(json_string_value(json_object_get(e, "param")), t->param,
                             "case %zu: param %s", i,
                             json_string_value(json_object_get(e, "param")));
        else
            cr_assert(json_is_null(json_object_get(e, "param")), "case %zu: param not null", i);
        if (t->code)
            cr_assert_str_eq(json_string_value(json_object_get(e, "code")), t->code, "case %zu", i);
        cr_assert(json_object_get(e, "code"), "case %zu: no code field", i);
        cr_assert_null(strstr(json_string_value(json_object_get(e, "message")), "/work"),
                       "case %zu: a path leaked", i);
        json_decref(j);
    }
    /* Still serving, and counted. */
    json_t *r = complete(&d, NULL);
    json_decref(r);
    cr_assert(metric(&d, "llmd_http_requests_total{path=\"/v1/completions\",status=\"400\"}") >= 8);
    cr_assert_eq(metric(&d, "llmd_http_requests_total{path=\"other\",status=\"404\"}"), 1);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, size_limits_give_413_and_431)
{
    struct daemon d;
    daemon_start(&d,
                 (const char *[]){"--max-body-bytes", "4096", "--max-header-bytes", "8192", NULL});
    char *body = malloc(9000);
    strcpy(body, "{\"prompt\": \"");
    memset(body + 12, 'a', 8000);
    strcpy(body + 8012, "\"}");
    long status;
    json_t *j = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 413);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "request_too_large");
    json_decref(j);

    /* Without Content-Length (chunked), the limit holds as the body comes. */
    struct http_response r = {0};
    http_request(&d, "POST", "/v1/completions", body,
                 (const char *[]){"Transfer-Encoding: chunked", NULL}, &r);
    cr_assert_eq(r.status, 413);
    http_response_free(&r);

    char *big = malloc(10000);
    strcpy(big, "X-Big: ");
    memset(big + 7, 'b', 9000);
    big[9007] = '\0';
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/health", NULL, (const char *[]){big, NULL}, &r);
    cr_assert(r.status == 431 || r.status == 413, "a header past the limit: %ld", r.status);
    http_response_free(&r);
    free(big);
    free(body);
    json_t *ok = complete(&d, NULL);
    json_decref(ok);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* Past the limit MHD stops accepting: the extra connection waits in the
 * listen backlog, unanswered, until a slot frees. */
Test(server_http, connection_limit_holds_the_extra_connection_back)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-connections", "3", "--max-running", "2", NULL});
    int fds[4];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d.port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[512];
    for (int i = 0; i < 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(fds[i], (struct sockaddr *)&addr, sizeof addr), 0);
        cr_assert(write(fds[i], req, sizeof req - 1) > 0);
        struct pollfd p = {fds[i], POLLIN, 0};
        int ready = poll(&p, 1, i < 3 ? 5000 : 500);
        if (i < 3) {
            cr_assert_eq(ready, 1, "connection %d not served", i);
            ssize_t n = read(fds[i], buf, sizeof buf - 1);
            cr_assert(n > 12);
            buf[n] = '\0';
            cr_assert(strstr(buf, "200 OK"), "%s", buf);
        } else {
            cr_assert_eq(ready, 0, "the fourth connection was served past the limit");
        }
    }
    close(fds[0]);
    struct pollfd p = {fds[3], POLLIN, 0};
    cr_assert_eq(poll(&p, 1, 5000), 1, "a freed slot lets the waiting connection in");
    ssize_t n = read(fds[3], buf, sizeof buf - 1);
    cr_assert(n > 12);
    buf[n] = '\0';
    cr_assert(strstr(buf, "200 OK"), "%s", buf);
    for (int i = 1; i < 4; i++) close(fds[i]);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ---------------------------------------------------------- auth, CORS */

Test(server_http, api_keys_guard_the_api_but_not_health_and_metrics)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--api-keys", "sk-first,sk-second", NULL});
    const char *body = "{\"prompt\": \"a\", \"max_tokens\": 2}";
    struct http_response r = {0};
    http_request(&d, "POST", "/v1/completions", body, NULL, &r);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(http_header(&r, "WWW-Authenticate"), "Bearer");
    cr_assert(strstr(r.body.data, "invalid_api_key"));
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "POST", "/v1/completions", body,
                 (const char *[]){"Authorization: Bearer sk-firs", NULL}, &r);
    cr_assert_eq(r.status, 401);
    cr_assert_null(strstr(r.body.data, "sk-"), "the key is not echoed: %s", r.body.data);
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "POST", "/v1/completions", body,
                 (const char *[]){"Authorization: Bearer sk-second", NULL}, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/v1/models", NULL, NULL, &r);
    cr_assert_eq(r.status, 401);
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/metrics", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));

    daemon_start(&d, (const char *[]){"--api-keys", "sk-first", "--auth-health-metrics", NULL});
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/metrics", NULL, NULL, &r);
    cr_assert_eq(r.status, 401);
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/metrics", NULL,
                 (const char *[]){"Authorization: Bearer sk-first", NULL}, &r);
    cr_assert_eq(r.status, 200);
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* The web page: its three files from the binary, with their types, open
 * even when every other route needs a key (the page asks for it). */
Test(server_http, the_web_page_is_served_at_the_root_without_a_key)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--api-keys", "sk-first", "--auth-health-metrics", NULL});
    static const struct {
        const char *path, *type, *contains;
    } files[] = {
        {"/", "text/html; charset=utf-8", "<script src=\"/ui/app.js\""},
        {"/ui/app.js", "text/javascript; charset=utf-8", "function parseMetrics("},
        {"/ui/style.css", "text/css; charset=utf-8", ".chart polyline"},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        struct http_response r = {0};
        http_request(&d, "GET", files[i].path, NULL, NULL, &r);
        cr_assert_eq(r.status, 200, "%s", files[i].path);
        cr_assert_str_eq(http_header(&r, "Content-Type"), files[i].type);
        cr_assert(r.body.data && memmem(r.body.data, r.body.len, files[i].contains,
                                        strlen(files[i].contains)),
                  "%s lacks %s", files[i].path, files[i].contains);
        http_response_free(&r);
    }
    static const struct {
        const char *method, *path;
        long status;
    } refused[] = {
        {"GET", "/ui/missing.js", 404}, {"GET", "/ui/", 404}, {"POST", "/", 405},
        {"GET", "/v1/models", 401},     {"GET", "/metrics", 401},
    };
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
        struct http_response r = {0};
        http_request(&d, refused[i].method, refused[i].path, NULL, NULL, &r);
        cr_assert_eq(r.status, refused[i].status, "%s %s -> %ld", refused[i].method,
                     refused[i].path, r.status);
        http_response_free(&r);
    }
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_http, cors_is_off_by_default_and_follows_the_origin_list)
{
    struct daemon d;
    daemon_start(&d, NULL);
    struct http_response r = {0};
    http_request(&d, "GET", "/v1/models", NULL, (const char *[]){"Origin: http://a.example", NULL},
                 &r);
    cr_assert_eq(r.status, 200);
    cr_assert_null(http_header(&r, "Access-Control-Allow-Origin"));
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0);

    daemon_start(&d,
                 (const char *[]){"--cors-origins", "http://a.example", "--api-keys", "k", NULL});
    memset(&r, 0, sizeof r);
    http_request(&d, "OPTIONS", "/v1/chat/completions", NULL,
                 (const char *[]){"Origin: http://a.example", "Access-Control-Request-Method: POST",
                                  "Access-Control-Request-Headers: authorization, content-type",
                                  NULL},
                 &r);
    cr_assert_eq(r.status, 204, "a preflight needs no key");
    cr_assert_str_eq(http_header(&r, "Access-Control-Allow-Origin"), "http://a.example");
    cr_assert_str_eq(http_header(&r, "Access-Control-Allow-Methods"), "POST, OPTIONS");
    cr_assert_str_eq(http_header(&r, "Access-Control-Allow-Headers"),
                     "authorization, content-type");
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "POST", "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 1}",
                 (const char *[]){"Origin: http://a.example", "Authorization: Bearer k", NULL}, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(http_header(&r, "Access-Control-Allow-Origin"), "http://a.example");
    cr_assert_str_eq(http_header(&r, "Vary"), "Origin");
    http_response_free(&r);
    memset(&r, 0, sizeof r);
    http_request(&d, "GET", "/health", NULL, (const char *[]){"Origin: http://evil.example", NULL},
                 &r);
    cr_assert_null(http_header(&r, "Access-Control-Allow-Origin"));
    http_response_free(&r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------ loading, errors */

/* The model path is a FIFO: loading blocks in open() until we write to it,
 * so /health is caught answering 503 while the model loads; the load then
 * fails (a FIFO is not a regular file) and the daemon exits 1. */
Test(server_http, health_is_503_while_loading_and_a_bad_model_exits_1)
{
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/llmd-test-fifo-%d.gguf", (int)getpid());
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    struct daemon d;
    cr_assert(daemon_spawn(&d, fifo, NULL), "log %s:\n%s", d.log, daemon_log_tail(&d));
    long status;
    json_t *h = http_json(&d, "GET", "/health", NULL, &status);
    cr_assert_eq(status, 503);
    cr_assert_str_eq(json_string_value(json_object_get(h, "status")), "loading");
    cr_assert(strstr(json_string_value(json_object_get(h, "reason")), "loading"));
    json_decref(h);
    json_t *c = http_json(&d, "POST", "/v1/completions", "{\"prompt\": \"a\"}", &status);
    cr_assert_eq(status, 503);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(c, "error"), "code")),
                     "model_loading");
    json_decref(c);
    int w = open(fifo, O_WRONLY); /* lets the daemon's open() return */
    cr_assert(w >= 0);
    close(w);
    cr_assert(daemon_wait_exit(&d, STOP_TIMEOUT_S));
    cr_assert_eq(d.status, 1, "exit status %d; log:\n%s", d.status, daemon_log_tail(&d));
    cr_assert(strstr(daemon_log_tail(&d), "cannot load the model"));
    unlink(fifo);
}

Test(server_http, bad_settings_exit_2_with_a_message)
{
    struct daemon d;
    cr_assert_not(daemon_spawn(&d, TEST_MODEL, (const char *[]){"--port", "http", NULL}));
    cr_assert(daemon_wait_exit(&d, 10));
    cr_assert_eq(d.status, 2);
    cr_assert(strstr(daemon_log_tail(&d), "--port"), "%s", daemon_log_tail(&d));
}

/* Integration tests of structured outputs through `llmd serve` with the test
 * model (random weights: left alone it writes noise, so whatever parses
 * below does so because the mask made it): JSON schemas on completions and
 * chat, streamed and not, n > 1, many requests batched together, every
 * output validated by python3-jsonschema; a GBNF grammar; 400s that name
 * what is wrong. */
#include "tests/integration/harness.h"
#include "tests/jsonschema_check.h"

#include <regex.h>

/* Bounded schemas: every output ends (EOS, or nothing more may follow)
 * within max_tokens, so finish_reason is "stop". */
static const char *const schemas[] = {
    "{\"type\": \"object\", \"properties\": {\"name\": {\"type\": \"string\", \"maxLength\": 8},"
    " \"age\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 120},"
    " \"admin\": {\"type\": \"boolean\"}}, \"required\": [\"name\", \"age\"],"
    " \"additionalProperties\": false}",

    "{\"type\": \"array\", \"items\": {\"enum\": [\"red\", \"green\", 3, null]},"
    " \"minItems\": 1, \"maxItems\": 4}",

    "{\"$defs\": {\"point\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"number\"},"
    " \"y\": {\"type\": \"integer\", \"exclusiveMinimum\": -5, \"maximum\": 5}},"
    " \"required\": [\"x\", \"y\"]}},"
    " \"type\": \"object\", \"properties\": {\"from\": {\"$ref\": \"#/$defs/point\"},"
    " \"to\": {\"$ref\": \"#/$defs/point\"}, \"tag\": {\"type\": [\"string\", \"null\"],"
    " \"maxLength\": 4, \"minLength\": 2}, \"day\": {\"type\": \"string\", \"format\": \"date\"}},"
    " \"required\": [\"from\", \"to\", \"tag\"]}",
};
#define N_SCHEMAS 3
#define N_CHOICES 2
#define MAX_TOKENS 400

/* One request per schema x {completions, chat} x {streamed, whole}. */
static char *structured_body(int schema, bool chat, bool stream, int seed)
{
    char *body = malloc(4096);
    snprintf(body, 4096,
             "{%s, \"max_tokens\": %d, \"temperature\": 1.0, \"seed\": %d, \"n\": %d,"
             " \"stream\": %s, \"response_format\": {\"type\": \"json_schema\","
             " \"json_schema\": {\"name\": \"s%d\", \"schema\": %s}}}",
             chat ? "\"messages\": [{\"role\": \"user\", \"content\": \"Give me JSON.\"}]"
                  : "\"prompt\": \"Here is the record:\"",
             MAX_TOKENS, seed, N_CHOICES, stream ? "true" : "false", schema, schemas[schema]);
    return body;
}

Test(server_structured, every_output_of_batched_schema_requests_validates)
{
    struct daemon d;
    daemon_start(&d, (const char *[]){"--max-running", "32", NULL});
    enum { N = N_SCHEMAS * 4 };
    struct http_job jobs[N];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < N; i++) {
        bool chat = i / N_SCHEMAS % 2, stream = i / N_SCHEMAS / 2;
        jobs[i].path = chat ? "/v1/chat/completions" : "/v1/completions";
        jobs[i].body = structured_body(i % N_SCHEMAS, chat, stream, 100 + i);
    }
    http_run_jobs(&d, jobs, N, NULL, NULL);

    json_t *batch = json_array();
    int outputs = 0, distinct = 0;
    for (int i = 0; i < N; i++) {
        bool stream = i / N_SCHEMAS / 2;
        struct http_response *r = &jobs[i].resp;
        cr_assert_eq(r->status, 200, "%s -> %ld: %.300s", jobs[i].body, r->status,
                     r->body.data ? r->body.data : "");
        json_t *schema = json_loads(schemas[i % N_SCHEMAS], 0, NULL);
        json_t *events = stream ? sse_events(&r->body) : NULL;
        json_t *whole = stream ? NULL : json_loadb(r->body.data, r->body.len, 0, NULL);
        char *texts[N_CHOICES];
        for (int c = 0; c < N_CHOICES; c++) {
            texts[c] = stream ? sse_text(events, c) : strdup(choice_text(whole, c));
            if (!stream)
                cr_assert_str_eq(finish_reason(whole, c), "stop", "job %d choice %d: '%s'", i,
                                 c, texts[c]);
            json_error_t jerr;
            json_t *parsed = json_loads(texts[c], JSON_DECODE_ANY, &jerr);
            cr_assert(parsed, "job %d choice %d does not parse: '%s' (%s)", i, c, texts[c],
                      jerr.text);
            json_decref(parsed);
            json_array_append_new(batch, json_pack("[O s]", schema, texts[c]));
            outputs++;
        }
        distinct += strcmp(texts[0], texts[1]) != 0; /* sampled, not one forced answer */
        for (int c = 0; c < N_CHOICES; c++) free(texts[c]);
        json_decref(events);
        json_decref(whole);
        json_decref(schema);
        free((char *)jobs[i].body);
        http_response_free(r);
    }
    jsonschema_check(batch);
    json_decref(batch);
    cr_assert_eq(outputs, N * N_CHOICES);
    cr_assert_gt(distinct, N / 2, "the mask leaves the sampler a choice");
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_structured, a_gbnf_grammar_shapes_the_output)
{
    struct daemon d;
    daemon_start(&d, NULL);
    const char *body = "{\"prompt\": \"Answer:\", \"max_tokens\": 40, \"temperature\": 1.0,"
                       " \"seed\": 7, \"n\": 4, \"grammar\":"
                       " \"root ::= (\\\"yes\\\" | \\\"no\\\") \\\", \\\" [0-9]{1,3} \\\".\\\"\"}";
    long status;
    json_t *r = http_json(&d, "POST", "/v1/completions", body, &status);
    cr_assert_eq(status, 200);
    regex_t re;
    cr_assert_eq(regcomp(&re, "^(yes|no), [0-9]{1,3}\\.$", REG_EXTENDED | REG_NOSUB), 0);
    for (int c = 0; c < 4; c++) {
        cr_assert_eq(regexec(&re, choice_text(r, c), 0, NULL, 0), 0, "choice %d: '%s'", c,
                     choice_text(r, c));
        cr_assert_str_eq(finish_reason(r, c), "stop");
    }
    regfree(&re);
    json_decref(r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* What is wrong is named in error.param, and in the message for schemas. */
Test(server_structured, bad_schemas_and_grammars_are_400s_that_say_why)
{
    struct daemon d;
    daemon_start(&d, NULL);
    static const struct {
        const char *extra, *param, *in_message;
    } cases[] = {
        {"\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\":"
         " {\"type\": \"string\", \"pattern\": \"^a+$\"}}}",
         "response_format.json_schema.schema", "pattern"},
        {"\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"schema\":"
         " {\"properties\": {\"a\": {\"allOf\": []}}}}}",
         "response_format.json_schema.schema", "/properties/a"},
        {"\"response_format\": {\"type\": \"json_schema\"}", "response_format.json_schema", NULL},
        {"\"response_format\": {\"type\": \"xml\"}", "response_format.type", "json_schema"},
        {"\"grammar\": \"root ::= root \\\"a\\\"\"", "grammar", "recursion"},
        {"\"grammar\": \"root ::= [a-\"", "grammar", "1:"},
        {"\"grammar\": \"root ::= \\\"a\\\"\", \"response_format\": {\"type\": \"json_object\"}",
         "grammar", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char body[1024];
        snprintf(body, sizeof body, "{\"prompt\": \"x\", \"max_tokens\": 4, %s}", cases[i].extra);
        long status;
        json_t *r = http_json(&d, "POST", "/v1/completions", body, &status);
        cr_assert_eq(status, 400, "case %zu", i);
        json_t *e = json_object_get(r, "error");
        cr_assert_str_eq(json_string_value(json_object_get(e, "type")), "invalid_request_error");
        cr_assert_str_eq(json_string_value(json_object_get(e, "param")), cases[i].param,
                         "case %zu", i);
        const char *msg = json_string_value(json_object_get(e, "message"));
        if (cases[i].in_message)
            cr_assert(strstr(msg, cases[i].in_message), "case %zu: '%s' lacks '%s'", i, msg,
                      cases[i].in_message);
        json_decref(r);
    }
    /* and the daemon still serves */
    long status;
    json_t *r = http_json(&d, "POST", "/v1/completions",
                          "{\"prompt\": \"x\", \"max_tokens\": 2}", &status);
    cr_assert_eq(status, 200);
    json_decref(r);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* Tests for the API layer without HTTP: request validation (table-driven),
 * context limits, chat formats, response and chunk shapes, SSE framing,
 * UTF-8 sanitizing, bearer keys and CORS. */
#include "server/api.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct srv_model_limits lim = {"tiny", 8000, 256};

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    cr_assert(j, "bad test JSON %s: %s", text, jerr.text);
    return j;
}

/* ------------------------------------------------------------ validation */

struct bad_request {
    enum srv_api api;
    const char *body;
    int status;
    const char *param; /* "" = null */
};

#define C SRV_API_COMPLETIONS
#define H SRV_API_CHAT
static const struct bad_request bad_requests[] = {
    {C, "[]", 400, ""},
    {C, "\"text\"", 400, ""},
    {C, "{}", 400, "prompt"},
    {C, "{\"prompt\": null}", 400, "prompt"},
    {C, "{\"prompt\": 5}", 400, "prompt"},
    {C, "{\"prompt\": []}", 400, "prompt"},
    {C, "{\"prompt\": [1, \"a\"]}", 400, "prompt"},
    {C, "{\"prompt\": [\"a\", 1]}", 400, "prompt"},
    {C, "{\"prompt\": [[1, 2], []]}", 400, "prompt"},
    {C, "{\"prompt\": [-1]}", 400, "prompt"},
    {C, "{\"prompt\": [8000]}", 400, "prompt"},
    {C, "{\"prompt\": [1.5]}", 400, "prompt"},
    {C, "{\"prompt\": \"a\", \"model\": \"gpt-4\"}", 404, "model"},
    {C, "{\"prompt\": \"a\", \"model\": 3}", 400, "model"},
    {C, "{\"prompt\": \"a\", \"max_tokens\": 0}", 400, "max_tokens"},
    {C, "{\"prompt\": \"a\", \"max_tokens\": -5}", 400, "max_tokens"},
    {C, "{\"prompt\": \"a\", \"max_tokens\": \"16\"}", 400, "max_tokens"},
    {C, "{\"prompt\": \"a\", \"max_tokens\": 1.5}", 400, "max_tokens"},
    {C, "{\"prompt\": \"a\", \"temperature\": -0.1}", 400, "temperature"},
    {C, "{\"prompt\": \"a\", \"temperature\": 2.01}", 400, "temperature"},
    {C, "{\"prompt\": \"a\", \"temperature\": \"hot\"}", 400, "temperature"},
    {C, "{\"prompt\": \"a\", \"top_p\": -0.01}", 400, "top_p"},
    {C, "{\"prompt\": \"a\", \"top_p\": 1.5}", 400, "top_p"},
    {C, "{\"prompt\": \"a\", \"top_k\": -2}", 400, "top_k"},
    {C, "{\"prompt\": \"a\", \"top_k\": 2.5}", 400, "top_k"},
    {C, "{\"prompt\": \"a\", \"min_p\": 1.1}", 400, "min_p"},
    {C, "{\"prompt\": \"a\", \"presence_penalty\": 2.5}", 400, "presence_penalty"},
    {C, "{\"prompt\": \"a\", \"frequency_penalty\": -3}", 400, "frequency_penalty"},
    {C, "{\"prompt\": \"a\", \"repetition_penalty\": 0}", 400, "repetition_penalty"},
    {C, "{\"prompt\": \"a\", \"seed\": \"x\"}", 400, "seed"},
    {C, "{\"prompt\": \"a\", \"stop\": 5}", 400, "stop"},
    {C, "{\"prompt\": \"a\", \"stop\": [\"a\", 5]}", 400, "stop"},
    {C, "{\"prompt\": \"a\", \"stop\": \"\"}", 400, "stop"},
    {C, "{\"prompt\": \"a\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\"]}", 400,
     "stop"},
    {C, "{\"prompt\": \"a\", \"n\": 0}", 400, "n"},
    {C, "{\"prompt\": \"a\", \"n\": 17}", 400, "n"},
    {C, "{\"prompt\": [\"a\",\"b\",\"c\",\"d\",\"e\"], \"n\": 16}", 400, "n"},
    {C, "{\"prompt\": \"a\", \"logprobs\": 21}", 400, "logprobs"},
    {C, "{\"prompt\": \"a\", \"logprobs\": true}", 400, "logprobs"},
    {C, "{\"prompt\": \"a\", \"stream\": \"yes\"}", 400, "stream"},
    {C, "{\"prompt\": \"a\", \"stream_options\": {\"include_usage\": true}}", 400,
     "stream_options"},
    {C, "{\"prompt\": \"a\", \"stream\": true, \"stream_options\": 1}", 400, "stream_options"},
    {C, "{\"prompt\": \"a\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}", 400,
     "stream_options.include_usage"},
    {C, "{\"prompt\": \"a\", \"quest\": 5}", 400, "quest"},
    {C, "{\"prompt\": \"a\", \"quest\": {\"token_budget\": -1}}", 400, "quest.token_budget"},
    {C, "{\"prompt\": \"a\", \"quest\": {\"budget\": 64}}", 400, "quest"},
    {C, "{\"prompt\": \"a\", \"ignore_eos\": 1}", 400, "ignore_eos"},
    {C, "{\"prompt\": \"a\", \"echo\": true}", 400, "echo"},
    {C, "{\"prompt\": \"a\", \"best_of\": 3}", 400, "best_of"},
    {C, "{\"prompt\": \"a\", \"suffix\": \"end\"}", 400, "suffix"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": [5, 10]}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"x\": 10}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"5x\": 10}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"\": 10}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"-1\": 10}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"8000\": 10}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"5\": 100.5}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"logit_bias\": {\"5\": \"10\"}}", 400, "logit_bias"},
    {C, "{\"prompt\": \"a\", \"user\": 7}", 400, "user"},
    {H, "{}", 400, "messages"},
    {H, "{\"messages\": []}", 400, "messages"},
    {H, "{\"messages\": \"hi\"}", 400, "messages"},
    {H, "{\"messages\": [\"hi\"]}", 400, "messages"},
    {H, "{\"messages\": [{\"content\": \"hi\"}]}", 400, "messages[0].role"},
    {H, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages[0].role"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages[0].content"},
    {H,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", "
     "\"content\": [{\"type\": \"image_url\"}]}]}",
     400, "messages[1].content"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": 1}", 400,
     "logprobs"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"top_logprobs\": 2}", 400,
     "top_logprobs"},
    {H,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"logprobs\": true, "
     "\"top_logprobs\": 21}",
     400, "top_logprobs"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"max_completion_tokens\": 0}",
     400, "max_completion_tokens"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": [{}]}", 400,
     "tools"},
    {H, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"response_format\": 5}",
     400, "response_format"},
    {H,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"response_format\": "
     "{\"type\": \"xml\"}}",
     400, "response_format.type"},
    {H,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"response_format\": "
     "{\"type\": \"json_schema\"}}",
     400, "response_format.json_schema"},
    {H,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"response_format\": "
     "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {\"type\": \"string\", "
     "\"pattern\": \"^a+$\"}}}}",
     400, "response_format.json_schema.schema"},
    {C, "{\"prompt\": \"a\", \"grammar\": 5}", 400, "grammar"},
    {C, "{\"prompt\": \"a\", \"grammar\": \"root ::= undefined-rule\"}", 400, "grammar"},
    {C,
     "{\"prompt\": \"a\", \"grammar\": \"root ::= \\\"x\\\"\", \"response_format\": "
     "{\"type\": \"json_object\"}}",
     400, "grammar"},
};
#undef C
#undef H

Test(server_api, every_bad_request_gets_its_status_and_param)
{
    for (size_t i = 0; i < sizeof bad_requests / sizeof bad_requests[0]; i++) {
        const struct bad_request *t = &bad_requests[i];
        json_t *body = parse(t->body);
        struct srv_completion_request r;
        struct srv_error e;
        memset(&e, 0, sizeof e);
        int rc = srv_parse_completion(body, t->api, &lim, &r, &e);
        cr_assert_eq(rc, -EINVAL, "%s: accepted", t->body);
        cr_assert_eq(e.status, t->status, "%s: status %d", t->body, e.status);
        cr_assert_str_eq(e.param, t->param, "%s: param '%s'", t->body, e.param);
        cr_assert(e.message[0], "%s: no message", t->body);
        /* The error body has OpenAI's shape. */
        json_t *j = srv_error_json(&e);
        json_t *inner = json_object_get(j, "error");
        cr_assert(json_is_string(json_object_get(inner, "message")));
        cr_assert(json_is_string(json_object_get(inner, "type")));
        cr_assert(t->param[0] ? json_is_string(json_object_get(inner, "param"))
                              : json_is_null(json_object_get(inner, "param")));
        cr_assert(json_object_get(inner, "code"));
        json_decref(j);
        json_decref(body);
    }
}

Test(server_api, completion_defaults_are_openai_s)
{
    json_t *body = parse("{\"prompt\": \"Hello\"}");
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_prompts, 1);
    cr_assert_str_eq(r.prompts[0].text, "Hello");
    cr_assert_null(r.model);
    cr_assert_eq(r.max_tokens, 0);
    cr_assert_eq(r.n, 1);
    cr_assert_float_eq(r.sampling.temperature, 1.0f, 0);
    cr_assert_float_eq(r.sampling.top_p, 1.0f, 0);
    cr_assert_eq(r.sampling.top_k, 0);
    cr_assert_float_eq(r.sampling.repetition_penalty, 1.0f, 0);
    cr_assert_not(r.has_seed);
    cr_assert_eq(r.n_stop, 0);
    cr_assert_not(r.logprobs);
    cr_assert_not(r.stream);
    cr_assert_eq(r.quest_budget, -1);
    srv_completion_request_free(&r);
    json_decref(body);
    /* top_p 0 is accepted, as OpenAI accepts it: greedy */
    body = json_pack("{s:s, s:f}", "prompt", "Hello", "top_p", 0.0);
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0, "%s", e.message);
    cr_assert_float_eq(r.sampling.top_p, 0.0f, 0);
    srv_completion_request_free(&r);
    json_decref(body);
}

Test(server_api, every_parameter_lands_in_the_struct)
{
    json_t *body = parse("{\"model\": \"tiny\", \"prompt\": [[1, 2, 3], [4]], \"max_tokens\": 7, "
                         "\"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.05, "
                         "\"seed\": -1, \"stop\": [\"\\n\", \"END\"], \"n\": 3, \"logprobs\": 2, "
                         "\"presence_penalty\": 0.5, \"frequency_penalty\": -0.5, "
                         "\"repetition_penalty\": 1.1, \"stream\": true, "
                         "\"stream_options\": {\"include_usage\": true}, "
                         "\"quest\": {\"token_budget\": 64}, \"ignore_eos\": true, "
                         "\"user\": \"u1\", \"unknown_field\": {\"x\": 1}, \"best_of\": 1, "
                         "\"echo\": false, \"suffix\": null, "
                         "\"logit_bias\": {\"17\": -100, \"7999\": 2.5}}");
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.model, "tiny");
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_eq(r.prompts[0].n_ids, 3);
    cr_assert_eq(r.prompts[0].ids[2], 3);
    cr_assert_eq(r.prompts[1].n_ids, 1);
    cr_assert_eq(r.prompts[1].ids[0], 4);
    cr_assert_eq(r.max_tokens, 7);
    cr_assert_float_eq(r.sampling.temperature, 0.5f, 1e-7);
    cr_assert_float_eq(r.sampling.top_p, 0.9f, 1e-7);
    cr_assert_eq(r.sampling.top_k, 40);
    cr_assert_float_eq(r.sampling.min_p, 0.05f, 1e-7);
    cr_assert(r.has_seed);
    cr_assert_eq(r.sampling.seed, UINT64_MAX);
    cr_assert_eq(r.n_stop, 2);
    cr_assert_str_eq(r.stop[0], "\n");
    cr_assert_str_eq(r.stop[1], "END");
    cr_assert_eq(r.n, 3);
    cr_assert(r.logprobs);
    cr_assert_eq(r.top_logprobs, 2);
    cr_assert_float_eq(r.sampling.presence_penalty, 0.5f, 1e-7);
    cr_assert_float_eq(r.sampling.frequency_penalty, -0.5f, 1e-7);
    cr_assert_float_eq(r.sampling.repetition_penalty, 1.1f, 1e-7);
    cr_assert(r.stream);
    cr_assert(r.include_usage);
    cr_assert_eq(r.quest_budget, 64);
    cr_assert_eq(r.n_logit_bias, 2);
    cr_assert_eq(r.logit_bias[0].token, 17);
    cr_assert_float_eq(r.logit_bias[0].bias, -100.0f, 0);
    cr_assert_eq(r.logit_bias[1].token, 7999);
    cr_assert_float_eq(r.logit_bias[1].bias, 2.5f, 0);
    cr_assert(r.ignore_eos);
    srv_completion_request_free(&r);
    json_decref(body);
}

Test(server_api, prompt_forms_string_list_and_top_k_minus_one)
{
    json_t *body = parse("{\"prompt\": [\"a\", \"b\\u00e9\"], \"top_k\": -1, \"logprobs\": 0, "
                         "\"max_tokens\": 16.0}");
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_prompts, 2);
    cr_assert_eq(r.prompts[1].text_len, 3, "the length is in bytes");
    cr_assert_eq(r.sampling.top_k, 0);
    cr_assert(r.logprobs, "logprobs: 0 still asks for the chosen tokens' log-probs");
    cr_assert_eq(r.top_logprobs, 0);
    cr_assert_eq(r.max_tokens, 16);
    srv_completion_request_free(&r);
    json_decref(body);
}

Test(server_api, chat_messages_parts_and_logprobs)
{
    json_t *body =
        parse("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
              "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
              "{\"type\": \"text\", \"text\": \"b\"}]}, "
              "{\"role\": \"assistant\", \"content\": null}], "
              "\"logprobs\": true, \"top_logprobs\": 3, \"max_completion_tokens\": 9, "
              "\"stop\": \"x\"}");
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_CHAT, &lim, &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.n_messages, 3);
    cr_assert_str_eq(r.messages[0].role, "system");
    cr_assert_str_eq(r.messages[1].content, "a\nb");
    cr_assert_str_eq(r.messages[2].content, "");
    cr_assert(r.logprobs);
    cr_assert_eq(r.top_logprobs, 3);
    cr_assert_eq(r.max_tokens, 9);
    cr_assert_eq(r.n_stop, 1);
    srv_completion_request_free(&r);
    json_decref(body);
}

Test(server_api, token_prompt_as_long_as_the_context_is_refused)
{
    json_t *arr = json_array();
    for (int i = 0; i < lim.ctx_len; i++) json_array_append_new(arr, json_integer(5));
    json_t *body = json_pack("{s:o}", "prompt", arr);
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), -EINVAL);
    cr_assert_str_eq(e.param, "prompt");
    cr_assert_str_eq(e.code, "context_length_exceeded");
    cr_assert(strstr(e.message, "maximum context length is 256"), "%s", e.message);
    json_decref(body);
}

struct max_tokens_case {
    enum srv_api api;
    int requested; /* 0 = not given */
    int n_prompt;
    int want; /* -1 = error */
    const char *param;
};

Test(server_api, max_tokens_is_resolved_against_the_context)
{
    static const struct max_tokens_case cases[] = {
        {SRV_API_COMPLETIONS, 0, 10, 16, NULL},    /* OpenAI's default */
        {SRV_API_COMPLETIONS, 0, 250, 6, NULL},    /* what is left */
        {SRV_API_CHAT, 0, 10, 246, NULL},          /* chat: the rest of the context */
        {SRV_API_COMPLETIONS, 246, 10, 246, NULL}, /* exactly fills it */
        {SRV_API_COMPLETIONS, 247, 10, -1, "max_tokens"},
        {SRV_API_CHAT, 247, 10, -1, "max_completion_tokens"},
        {SRV_API_COMPLETIONS, 5, 256, -1, "prompt"},
        {SRV_API_CHAT, 5, 300, -1, "messages"},
        {SRV_API_COMPLETIONS, 5, 0, -1, "prompt"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct max_tokens_case *t = &cases[i];
        struct srv_completion_request r = {.api = t->api, .max_tokens = t->requested};
        struct srv_error e;
        int got = -1;
        int rc = srv_resolve_max_tokens(&r, t->n_prompt, 256, &got, &e);
        if (t->want < 0) {
            cr_assert_eq(rc, -EINVAL, "case %zu accepted", i);
            cr_assert_eq(e.status, 400);
            cr_assert_str_eq(e.param, t->param, "case %zu", i);
            /* too long for the context, or an empty prompt (plain bad input) */
            if (t->n_prompt > 0)
                cr_assert_str_eq(e.code, "context_length_exceeded", "case %zu", i);
            else
                cr_assert_null(e.code, "case %zu", i);
        } else {
            cr_assert_eq(rc, 0, "case %zu: %s", i, e.message);
            cr_assert_eq(got, t->want, "case %zu: %d", i, got);
        }
    }
}

Test(server_api, prompts_too_long_in_bytes_are_refused_before_tokenizing)
{
    struct srv_error e;
    /* 512 tokens of context, no piece over 16 bytes: 8191 bytes may fit. */
    cr_assert_eq(srv_check_prompt_bytes(8191, 16, 512, "prompt", &e), 0);
    cr_assert_eq(srv_check_prompt_bytes(8192, 16, 512, "prompt", &e), -EINVAL);
    cr_assert_eq(e.status, 400);
    cr_assert_str_eq(e.param, "prompt");
    cr_assert_str_eq(e.code, "context_length_exceeded");
    cr_assert(strstr(e.message, "maximum context length is 512"), "%s", e.message);
    cr_assert_eq(srv_check_prompt_bytes(1u << 30, 16, 512, "messages", &e), -EINVAL);
    cr_assert_str_eq(e.param, "messages");
    cr_assert_eq(srv_check_prompt_bytes(100, 0, 512, "prompt", &e), 0, "no bound without pieces");
}

Test(server_api, tokenize_and_detokenize_bodies)
{
    json_t *body = parse("{\"prompt\": \"hi\", \"add_special_tokens\": false}");
    struct srv_tokenize_request t;
    struct srv_error e;
    cr_assert_eq(srv_parse_tokenize(body, &lim, &t, &e), 0, "%s", e.message);
    cr_assert_str_eq(t.prompt, "hi");
    cr_assert_not(t.add_special);
    srv_tokenize_request_free(&t);
    json_decref(body);

    body = parse("{\"prompt\": 3}");
    cr_assert_eq(srv_parse_tokenize(body, &lim, &t, &e), -EINVAL);
    cr_assert_str_eq(e.param, "prompt");
    json_decref(body);

    int32_t *ids;
    int n;
    body = parse("{\"tokens\": [1, 7999]}");
    cr_assert_eq(srv_parse_detokenize(body, &lim, &ids, &n, &e), 0, "%s", e.message);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[1], 7999);
    free(ids);
    json_decref(body);

    body = parse("{\"tokens\": [8000]}");
    cr_assert_eq(srv_parse_detokenize(body, &lim, &ids, &n, &e), -EINVAL);
    cr_assert_str_eq(e.param, "tokens");
    json_decref(body);
}

/* ------------------------------------------------------------------ chat */

static const struct srv_message conversation[] = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}};

Test(server_api, chat_formats_render_the_conversation)
{
    static const struct {
        enum srv_chat_format f;
        const char *want;
    } cases[] = {
        {SRV_CHAT_BUILTIN, "Be brief.\n\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"},
        {SRV_CHAT_CHATML,
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
         "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
         "<|im_start|>assistant\n"},
        {SRV_CHAT_LLAMA3, "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
                          "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n"},
        {SRV_CHAT_LLAMA2,
         "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. [INST] Bye [/INST]"},
        {SRV_CHAT_ZEPHYR, "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n"
                          "<|user|>\nBye</s>\n<|assistant|>\n"},
        {SRV_CHAT_GEMMA, "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
                         "Hello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
                         "<start_of_turn>model\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = srv_chat_render(cases[i].f, conversation, 4);
        cr_assert_str_eq(got, cases[i].want, "%s:\n%s", srv_chat_format_name(cases[i].f), got);
        free(got);
    }
}

Test(server_api, chat_templates_are_recognised_by_their_markers)
{
    static const struct {
        const char *tmpl;
        enum srv_chat_format f;
        bool recognized;
    } cases[] = {
        {NULL, SRV_CHAT_BUILTIN, true},
        {"", SRV_CHAT_BUILTIN, true},
        {"{% for m in messages %}<|im_start|>{{ m.role }}", SRV_CHAT_CHATML, true},
        {"{{ '<|start_header_id|>' + m['role'] }}", SRV_CHAT_LLAMA3, true},
        {"{{ bos_token + '[INST] ' + content }}", SRV_CHAT_LLAMA2, true},
        {"<|user|>\n{{ m }}</s><|assistant|>", SRV_CHAT_ZEPHYR, true},
        {"<start_of_turn>{{ role }}", SRV_CHAT_GEMMA, true},
        {"{{ weird_format(messages) }}", SRV_CHAT_BUILTIN, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool recognized;
        cr_assert_eq(srv_chat_detect(cases[i].tmpl, &recognized), cases[i].f, "case %zu", i);
        cr_assert_eq(recognized, cases[i].recognized, "case %zu", i);
    }
}

/* ------------------------------------------------------------- responses */

static const struct srv_response_meta completion_meta = {
    SRV_API_COMPLETIONS, "cmpl-1", 1700000000, "tiny", false, NULL};
static const struct srv_response_meta chat_meta = {SRV_API_CHAT, "chatcmpl-1", 1700000000,
                                                   "tiny",       false,        NULL};

static void assert_json(json_t *got, const char *want_text)
{
    json_t *want = parse(want_text);
    char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT);
    cr_assert(json_equal(got, want), "got %s\nwant %s", g, want_text);
    free(g);
    json_decref(want);
    json_decref(got);
}

static struct srv_choice_result choice(int index, const char *text, enum llm_finish f, int tokens)
{
    struct srv_choice_result c = {.index = index, .finish = f, .completion_tokens = tokens};
    srv_buf_puts(&c.text, text);
    return c;
}

Test(server_api, completion_response_has_openai_s_shape)
{
    struct srv_choice_result cs[2] = {choice(0, "Hi there", LLM_FINISH_STOP, 2),
                                      choice(1, "Hey", LLM_FINISH_LENGTH, 3)};
    assert_json(srv_response_json(&completion_meta, cs, 2, 4, 0),
                "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                "\"model\":\"tiny\",\"choices\":["
                "{\"index\":0,\"text\":\"Hi there\",\"logprobs\":null,\"finish_reason\":\"stop\"},"
                "{\"index\":1,\"text\":\"Hey\",\"logprobs\":null,\"finish_reason\":\"length\"}],"
                "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5,\"total_tokens\":9,"
                "\"prompt_tokens_details\":{\"cached_tokens\":0}}}");
    srv_choice_result_free(&cs[0]);
    srv_choice_result_free(&cs[1]);
}

/* A request cut by request_timeout_s says "timeout", not "length": the
 * model's length limit was not what ended it (README, API). */
Test(server_api, chat_response_has_openai_s_shape_and_timeout_reads_timeout)
{
    struct srv_choice_result c = choice(0, "Hello.", LLM_FINISH_TIMEOUT, 7);
    assert_json(srv_response_json(&chat_meta, &c, 1, 11, 8),
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"created\":1700000000,"
                "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                "\"content\":\"Hello.\"},\"logprobs\":null,\"finish_reason\":\"timeout\"}],"
                "\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,"
                "\"prompt_tokens_details\":{\"cached_tokens\":8}}}");
    srv_choice_result_free(&c);
}

Test(server_api, finish_reasons_name_what_ended_the_choice)
{
    cr_assert_null(srv_finish_reason(LLM_FINISH_NONE));
    cr_assert_str_eq(srv_finish_reason(LLM_FINISH_STOP), "stop");
    cr_assert_str_eq(srv_finish_reason(LLM_FINISH_LENGTH), "length");
    cr_assert_str_eq(srv_finish_reason(LLM_FINISH_TIMEOUT), "timeout");
    cr_assert_str_eq(srv_finish_reason(LLM_FINISH_CANCELLED), "cancelled");
    cr_assert_str_eq(srv_finish_reason(LLM_FINISH_ERROR), "error");
}

Test(server_api, stream_chunks_have_openai_s_shape)
{
    assert_json(
        srv_chunk_json(&completion_meta, 1, "ab", 2, NULL, 0, LLM_FINISH_NONE, false, false),
        "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
        "\"model\":\"tiny\",\"choices\":[{\"index\":1,\"text\":\"ab\",\"logprobs\":null,"
        "\"finish_reason\":null}]}");
    assert_json(srv_chunk_json(&completion_meta, 0, NULL, 0, NULL, 0, LLM_FINISH_STOP, false, true),
                "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1700000000,"
                "\"model\":\"tiny\",\"choices\":[{\"index\":0,\"text\":\"\",\"logprobs\":null,"
                "\"finish_reason\":\"stop\"}],\"usage\":null}");
    assert_json(srv_chunk_json(&chat_meta, 0, NULL, 0, NULL, 0, LLM_FINISH_NONE, true, false),
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                "\"created\":1700000000,\"model\":\"tiny\",\"choices\":[{\"index\":0,"
                "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
                "\"finish_reason\":null}]}");
    assert_json(srv_chunk_json(&chat_meta, 0, "x\n", 2, NULL, 0, LLM_FINISH_NONE, false, false),
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                "\"created\":1700000000,\"model\":\"tiny\",\"choices\":[{\"index\":0,"
                "\"delta\":{\"content\":\"x\\n\"},\"logprobs\":null,\"finish_reason\":null}]}");
    assert_json(srv_chunk_json(&chat_meta, 2, NULL, 0, NULL, 0, LLM_FINISH_LENGTH, false, false),
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                "\"created\":1700000000,\"model\":\"tiny\",\"choices\":[{\"index\":2,"
                "\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}");
    assert_json(srv_usage_chunk_json(&chat_meta, 3, 2, 4),
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","
                "\"created\":1700000000,\"model\":\"tiny\",\"choices\":[],"
                "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7,"
                "\"prompt_tokens_details\":{\"cached_tokens\":2}}}");
}

/* ------------------------------------------------------------------- SSE */

Test(server_api, sse_frames_are_one_data_line_and_a_blank_line)
{
    struct srv_buf b = SRV_BUF_INIT;
    json_t *j = json_pack("{s:s}", "text", "line1\nline2\r\n");
    srv_sse_append_json(&b, j);
    srv_sse_append_done(&b);
    cr_assert_str_eq(b.data, "data: {\"text\":\"line1\\nline2\\r\\n\"}\n\ndata: [DONE]\n\n");
    json_decref(j);
    srv_buf_free(&b);
}

/* ------------------------------------------------------------------ text */

Test(server_api, utf8_sanitize_keeps_valid_text_and_replaces_each_bad_byte)
{
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"plain", 5, "plain"},
        {"\xc3\xa9t\xc3\xa9", 5, "\xc3\xa9t\xc3\xa9"},               /* été */
        {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},                 /* an emoji */
        {"a\xffz", 3, "a\xef\xbf\xbdz"},                             /* bad byte */
        {"\xe2\x82", 2, "\xef\xbf\xbd\xef\xbf\xbd"},                 /* truncated */
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", 4,
         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"", 0, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct srv_buf b = SRV_BUF_INIT;
        srv_utf8_sanitize(&b, cases[i].in, cases[i].len);
        cr_assert_eq(b.len, strlen(cases[i].want), "case %zu", i);
        cr_assert(b.len == 0 || memcmp(b.data, cases[i].want, b.len) == 0, "case %zu", i);
        json_t *j = srv_json_text(cases[i].in, cases[i].len);
        cr_assert(json_is_string(j), "case %zu: jansson refused it", i);
        json_decref(j);
        srv_buf_free(&b);
    }
}

/* --------------------------------------------------------- auth and CORS */

Test(server_api, constant_time_compare_is_plain_equality)
{
    cr_assert(srv_ct_equal("abc", 3, "abc", 3));
    cr_assert_not(srv_ct_equal("abc", 3, "abd", 3));
    cr_assert_not(srv_ct_equal("ab", 2, "abc", 3));
    cr_assert_not(srv_ct_equal("abcabc", 6, "abc", 3), "a repeat of the key is not the key");
    cr_assert_not(srv_ct_equal("", 0, "abc", 3));
    cr_assert(srv_ct_equal("", 0, "", 0));
    cr_assert_not(srv_ct_equal("a", 1, "", 0));
}

Test(server_api, bearer_keys_match_exactly)
{
    char *keys[] = {"key-one", "key-two"};
    cr_assert(srv_auth_bearer_ok("Bearer key-one", keys, 2));
    cr_assert(srv_auth_bearer_ok("Bearer key-two", keys, 2));
    cr_assert(srv_auth_bearer_ok("bearer   key-two ", keys, 2), "scheme is case-insensitive");
    cr_assert_not(srv_auth_bearer_ok("Bearer key-three", keys, 2));
    cr_assert_not(srv_auth_bearer_ok("Bearer key-on", keys, 2));
    cr_assert_not(srv_auth_bearer_ok("Bearer key-one1", keys, 2));
    cr_assert_not(srv_auth_bearer_ok("Basic key-one", keys, 2));
    cr_assert_not(srv_auth_bearer_ok("key-one", keys, 2));
    cr_assert_not(srv_auth_bearer_ok("Bearer ", keys, 2));
    cr_assert_not(srv_auth_bearer_ok(NULL, keys, 2));
    cr_assert_not(srv_auth_bearer_ok("Bearer key-one", keys, 0));
}

Test(server_api, cors_allows_listed_origins_or_any)
{
    char *list[] = {"https://a.example", "http://localhost:3000"};
    char *any[] = {"*"};
    cr_assert_str_eq(srv_cors_allow_origin("https://a.example", list, 2), "https://a.example");
    cr_assert_str_eq(srv_cors_allow_origin("http://localhost:3000", list, 2),
                     "http://localhost:3000");
    cr_assert_null(srv_cors_allow_origin("https://b.example", list, 2));
    cr_assert_null(srv_cors_allow_origin("https://a.example", list, 0), "off by default");
    cr_assert_null(srv_cors_allow_origin(NULL, list, 2));
    cr_assert_str_eq(srv_cors_allow_origin("https://b.example", any, 1), "*");
}

/* response_format and grammar compile into one grammar for the request; an
 * unsupported schema keyword is named in the error. */
Test(server_api, structured_output_requests_compile_once)
{
    const char *ok[] = {
        "{\"prompt\": \"a\", \"response_format\": {\"type\": \"json_object\"}}",
        "{\"prompt\": \"a\", \"response_format\": {\"type\": \"json_schema\", \"json_schema\": "
        "{\"name\": \"x\", \"strict\": true, \"schema\": {\"type\": \"object\", \"properties\": "
        "{\"n\": {\"type\": \"integer\"}}, \"required\": [\"n\"]}}}}",
        "{\"prompt\": \"a\", \"grammar\": \"root ::= [a-z]+\"}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        json_t *body = parse(ok[i]);
        struct srv_completion_request r;
        struct srv_error e;
        cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0, "%s: %s",
                     ok[i], e.message);
        cr_assert_not_null(r.grammar, "%s", ok[i]);
        srv_completion_request_free(&r);
        json_decref(body);
    }
    json_t *body = parse("{\"prompt\": \"a\", \"response_format\": {\"type\": \"text\"}}");
    struct srv_completion_request r;
    struct srv_error e;
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), 0);
    cr_assert_null(r.grammar);
    srv_completion_request_free(&r);
    json_decref(body);

    body = parse("{\"prompt\": \"a\", \"response_format\": {\"type\": \"json_schema\", "
                 "\"json_schema\": {\"schema\": {\"type\": \"object\", \"properties\": {\"s\": "
                 "{\"type\": \"string\", \"pattern\": \"^a$\"}}}}}}");
    cr_assert_eq(srv_parse_completion(body, SRV_API_COMPLETIONS, &lim, &r, &e), -EINVAL);
    cr_assert(strstr(e.message, "pattern"), "%s", e.message);
    json_decref(body);
}

/* The bad-input matrix of `llmd serve`: one table row per hostile or broken
 * request, each asserting the status and the OpenAI-shaped error body, then
 * raw-socket cases (slow bodies and headers, truncated bodies, garbage
 * request lines, a client leaving mid-stream). After all of them the daemon
 * still gives the same greedy answer it gave before, and exits 0.
 *
 * New endpoints (the PIM routes, say) add their rows to `rows`. */
#include "tests/integration/harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define TIMEOUT          300 /* one .timeout for every test of this file (Criterion quirk) */
#define BODY_LIMIT       8192
#define HEAD_LIMIT       8192
#define IDLE_S           "1"
#define PIM_TENSOR_LIMIT "64" /* elements: a 9 x 9 matrix is over it */
#define GOOD_PROMPT      "{\"prompt\": \"The quick brown fox\", \"temperature\": 0, \"max_tokens\": 16}"

/* The daemon every test of this file starts: small limits so the rows reach
 * them cheaply, and a short idle timeout for the slow clients. */
static const char *const daemon_args[] = {"--max-body-bytes",
                                          "8192",
                                          "--max-header-bytes",
                                          "8192",
                                          "--idle-timeout-s",
                                          IDLE_S,
                                          "--pim-max-tensor-elements",
                                          PIM_TENSOR_LIMIT,
                                          NULL};

/* ------------------------------------------------------------ the table */

struct row {
    const char *name;
    const char *method;
    const char *path;
    const char *header; /* one extra "Name: value", or NULL */
    const char *body;   /* NULL: none */
    long status;
    const char *type;  /* NULL: the answer is MHD's own, not JSON */
    const char *param; /* NULL: JSON null */
    const char *code;  /* NULL: not checked (but present) */
};

/* Bodies too big to write out, filled by fill_big_inputs(). */
static char over_context_text[16384]; /* text of far more tokens than the context */
static char over_context_ids[8192];   /* 600 token ids; the context is 512 */
static char over_body_limit[BODY_LIMIT + 512];
static char over_header_limit[HEAD_LIMIT + 512];
static char deep_nesting[6001];
static char over_pim_limit_nested[512]; /* a 9 x 9 vmm matrix: 81 elements */

static void fill_big_inputs(void)
{
    strcpy(over_context_text, "{\"prompt\": \"");
    for (int i = 0; i < 1500; i++) strcat(over_context_text, "sea ");
    strcat(over_context_text, "\"}");

    strcpy(over_context_ids, "{\"prompt\": [1");
    for (int i = 1; i < 600; i++) strcat(over_context_ids, ",7");
    strcat(over_context_ids, "]}");

    strcpy(over_body_limit, "{\"prompt\": \"");
    memset(over_body_limit + 12, 'a', BODY_LIMIT);
    strcpy(over_body_limit + 12 + BODY_LIMIT, "\"}");

    strcpy(over_header_limit, "X-Filler: ");
    memset(over_header_limit + 10, 'h', HEAD_LIMIT + 100);
    over_header_limit[10 + HEAD_LIMIT + 100] = '\0';

    /* 3000 nested arrays, closed: past jansson's depth limit (2048), so
     * refused as bad JSON rather than parsed by deep recursion. */
    for (int i = 0; i < 3000; i++) {
        deep_nesting[i] = '[';
        deep_nesting[3000 + i] = ']';
    }
    deep_nesting[6000] = '\0';

    strcpy(over_pim_limit_nested, "{\"type\": \"vmm\", \"matrix\": [");
    for (int i = 0; i < 9; i++)
        strcat(over_pim_limit_nested, i ? ", [1,1,1,1,1,1,1,1,1]" : "[1,1,1,1,1,1,1,1,1]");
    strcat(over_pim_limit_nested, "], \"input\": [1,1,1,1,1,1,1,1,1]}");
}

#define IR   "invalid_request_error"
#define P    "POST"
#define CMP  "/v1/completions"
#define CHAT "/v1/chat/completions"
#define JOBS "/v1/pim/jobs"
static const struct row rows[] = {
    /* malformed and truncated JSON */
    {"truncated object", P, CMP, NULL, "{\"prompt\": ", 400, IR, NULL, NULL},
    {"truncated string", P, CMP, NULL, "{\"prompt\": \"abc", 400, IR, NULL, NULL},
    {"empty body", P, CMP, NULL, "", 400, IR, NULL, NULL},
    {"no body at all", P, CMP, NULL, NULL, 400, IR, NULL, NULL},
    {"trailing garbage", P, CMP, NULL, "{\"prompt\": \"a\"} x", 400, IR, NULL, NULL},
    {"single quotes", P, CMP, NULL, "{'prompt': 'a'}", 400, IR, NULL, NULL},
    {"trailing comma", P, CMP, NULL, "{\"prompt\": \"a\",}", 400, IR, NULL, NULL},
    {"deep nesting", P, CMP, NULL, deep_nesting, 400, IR, NULL, NULL},
    {"top-level array", P, CMP, NULL, "[1, 2]", 400, IR, NULL, NULL},
    {"top-level string", P, CHAT, NULL, "\"hello\"", 400, IR, NULL, NULL},
    {"NUL escape in a string", P, CMP, NULL, "{\"prompt\": \"a\\u0000b\"}", 400, IR, NULL, NULL},
    /* wrong types */
    {"prompt a number", P, CMP, NULL, "{\"prompt\": 5}", 400, IR, "prompt", NULL},
    {"prompt an object", P, CMP, NULL, "{\"prompt\": {}}", 400, IR, "prompt", NULL},
    {"max_tokens a string", P, CMP, NULL, "{\"prompt\": \"a\", \"max_tokens\": \"9\"}", 400, IR,
     "max_tokens", NULL},
    {"temperature a string", P, CMP, NULL, "{\"prompt\": \"a\", \"temperature\": \"hot\"}", 400, IR,
     "temperature", NULL},
    {"stream a string", P, CMP, NULL, "{\"prompt\": \"a\", \"stream\": \"yes\"}", 400, IR, "stream",
     NULL},
    {"stop a number", P, CMP, NULL, "{\"prompt\": \"a\", \"stop\": 5}", 400, IR, "stop", NULL},
    {"model a number", P, CMP, NULL, "{\"prompt\": \"a\", \"model\": 3}", 400, IR, "model", NULL},
    {"messages a string", P, CHAT, NULL, "{\"messages\": \"hi\"}", 400, IR, "messages", NULL},
    {"content a number", P, CHAT, NULL, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}",
     400, IR, "messages[0].content", NULL},
    {"tokenize prompt a number", P, "/tokenize", NULL, "{\"prompt\": 5}", 400, IR, "prompt", NULL},
    {"detokenize tokens a string", P, "/detokenize", NULL, "{\"tokens\": \"1 2\"}", 400, IR,
     "tokens", NULL},
    {"detokenize a real id", P, "/detokenize", NULL, "{\"tokens\": [1.5]}", 400, IR, "tokens",
     NULL},
    /* missing fields */
    {"completion without prompt", P, CMP, NULL, "{\"max_tokens\": 4}", 400, IR, "prompt", NULL},
    {"chat without messages", P, CHAT, NULL, "{\"max_tokens\": 4}", 400, IR, "messages", NULL},
    {"chat message without role", P, CHAT, NULL, "{\"messages\": [{\"content\": \"hi\"}]}", 400, IR,
     "messages[0].role", NULL},
    {"tokenize without prompt", P, "/tokenize", NULL, "{}", 400, IR, "prompt", NULL},
    {"detokenize without tokens", P, "/detokenize", NULL, "{}", 400, IR, "tokens", NULL},
    /* negative and huge numbers */
    {"negative max_tokens", P, CMP, NULL, "{\"prompt\": \"a\", \"max_tokens\": -1}", 400, IR,
     "max_tokens", NULL},
    {"huge max_tokens", P, CMP, NULL, "{\"prompt\": \"a\", \"max_tokens\": 2147483648}", 400, IR,
     "max_tokens", NULL},
    {"max_tokens past int64", P, CMP, NULL,
     "{\"prompt\": \"a\", \"max_tokens\": 99999999999999999999999}", 400, IR, NULL, NULL},
    {"real overflow", P, CMP, NULL, "{\"prompt\": \"a\", \"temperature\": 1e400}", 400, IR, NULL,
     NULL},
    {"negative n", P, CMP, NULL, "{\"prompt\": \"a\", \"n\": -3}", 400, IR, "n", NULL},
    {"huge n", P, CMP, NULL, "{\"prompt\": \"a\", \"n\": 1000000}", 400, IR, "n", NULL},
    {"negative token id", P, CMP, NULL, "{\"prompt\": [-1]}", 400, IR, "prompt", NULL},
    {"token id past the vocabulary", P, CMP, NULL, "{\"prompt\": [9999999]}", 400, IR, "prompt",
     NULL},
    {"huge logprobs", P, CMP, NULL, "{\"prompt\": \"a\", \"logprobs\": 1000000}", 400, IR,
     "logprobs", NULL},
    {"negative top_k", P, CMP, NULL, "{\"prompt\": \"a\", \"top_k\": -2}", 400, IR, "top_k", NULL},
    {"huge seed", P, CMP, NULL, "{\"prompt\": \"a\", \"seed\": 1e300}", 400, IR, "seed", NULL},
    {"detokenize negative id", P, "/detokenize", NULL, "{\"tokens\": [-3]}", 400, IR, "tokens",
     NULL},
    {"detokenize id past the vocabulary", P, "/detokenize", NULL, "{\"tokens\": [2147483647]}", 400,
     IR, "tokens", NULL},
    /* NaN and Infinity are not JSON */
    {"NaN temperature", P, CMP, NULL, "{\"prompt\": \"a\", \"temperature\": NaN}", 400, IR, NULL,
     NULL},
    {"Infinity top_p", P, CMP, NULL, "{\"prompt\": \"a\", \"top_p\": Infinity}", 400, IR, NULL,
     NULL},
    {"-Infinity penalty", P, CHAT, NULL,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"presence_penalty\": -Infinity}",
     400, IR, NULL, NULL},
    /* invalid UTF-8 and bad escapes */
    {"invalid UTF-8 in the prompt", P, CMP, NULL, "{\"prompt\": \"a\xff\xfe b\"}", 400, IR, NULL,
     NULL},
    {"overlong UTF-8 in content", P, CHAT, NULL,
     "{\"messages\": [{\"role\": \"user\", \"content\": \"\xc0\xaf\"}]}", 400, IR, NULL, NULL},
    {"truncated UTF-8 sequence", P, "/tokenize", NULL, "{\"prompt\": \"\xe2\x82\"}", 400, IR, NULL,
     NULL},
    {"invalid UTF-8 in a key", P, CMP, NULL, "{\"pr\xffompt\": \"a\"}", 400, IR, NULL, NULL},
    {"lone surrogate escape", P, CMP, NULL, "{\"prompt\": \"\\ud800\"}", 400, IR, NULL, NULL},
    /* the context and the limits */
    {"text prompt over the context", P, CMP, NULL, over_context_text, 400, IR, "prompt", NULL},
    {"token prompt over the context", P, CMP, NULL, over_context_ids, 400, IR, "prompt", NULL},
    {"max_tokens past the context", P, CMP, NULL, "{\"prompt\": \"a\", \"max_tokens\": 100000}",
     400, IR, "max_tokens", NULL},
    {"body over the limit", P, CMP, NULL, over_body_limit, 413, IR, NULL, "request_too_large"},
    {"chunked body over the limit", P, CMP, "Transfer-Encoding: chunked", over_body_limit, 413, IR,
     NULL, "request_too_large"},
    /* MHD 0.9.75 answers headers past its connection memory with its own
     * 431 page (not JSON). */
    {"headers over the limit", "GET", "/health", over_header_limit, NULL, 431, NULL, NULL, NULL},
    /* paths, methods, models */
    {"unknown path", "GET", "/v2/nothing", NULL, NULL, 404, IR, NULL, "not_found"},
    {"unknown path under /v1", P, "/v1/embeddings", NULL, "{}", 404, IR, NULL, "not_found"},
    {"path with a NUL-like escape", "GET", "/health%00x", NULL, NULL, 404, IR, NULL, "not_found"},
    {"GET on a POST route", "GET", CMP, NULL, NULL, 405, IR, NULL, "method_not_allowed"},
    {"DELETE on /health", "DELETE", "/health", NULL, NULL, 405, IR, NULL, "method_not_allowed"},
    {"PUT on chat", "PUT", CHAT, NULL, "{}", 405, IR, NULL, "method_not_allowed"},
    {"unknown method", "BREW", "/tokenize", NULL, NULL, 405, IR, NULL, "method_not_allowed"},
    {"unknown model in a completion", P, CMP, NULL, "{\"prompt\": \"a\", \"model\": \"gpt-4\"}",
     404, IR, "model", "model_not_found"},
    {"unknown model in chat", P, CHAT, NULL,
     "{\"model\": \"x\", \"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}", 404, IR,
     "model", "model_not_found"},
    {"unknown model by id", "GET", "/v1/models/other", NULL, NULL, 404, IR, "model",
     "model_not_found"},
    /* A wrong Content-Type does not matter: the body is JSON. */
    {"form content type, bad body", P, CMP, "Content-Type: application/x-www-form-urlencoded",
     "prompt=a", 400, IR, NULL, NULL},
    /* PIM jobs: malformed JSON, unknown types */
    {"pim: truncated job", P, JOBS, NULL, "{\"type\": \"vmm\",", 400, IR, NULL, "invalid_json"},
    {"pim: empty body", P, JOBS, NULL, "", 400, IR, NULL, NULL},
    {"pim: job an array", P, JOBS, NULL, "[{\"type\": \"vmm\"}]", 400, IR, NULL, NULL},
    {"pim: job without type", P, JOBS, NULL, "{\"matrix\": [[1]], \"input\": [1]}", 400, IR, "type",
     "missing_parameter"},
    {"pim: unknown type", P, JOBS, NULL, "{\"type\": \"fft\"}", 400, IR, "type", NULL},
    {"pim: type a number", P, JOBS, NULL, "{\"type\": 3}", 400, IR, "type", NULL},
    {"pim: unknown field", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"bogus\": 1}", 400, IR, "bogus",
     "unknown_parameter"},
    {"pim: seed a string", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"seed\": \"x\"}", 400, IR, "seed",
     NULL},
    {"pim: unknown device field", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"device\": {\"warp\": 9}}", 400, IR,
     "device.warp", NULL},
    /* PIM tensors: wrong shapes */
    {"pim: vmm without matrix", P, JOBS, NULL, "{\"type\": \"vmm\", \"input\": [1]}", 400, IR,
     "matrix", NULL},
    {"pim: matrix and input mismatch", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, 2]], \"input\": [1, 2, 3]}", 400, IR, "input", NULL},
    {"pim: batched input mismatch", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, 2]], \"input\": [[1, 2], [3, 4, 5]]}", 400, IR, "input",
     NULL},
    {"pim: ragged matrix", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, 2], [3]], \"input\": [1, 2]}", 400, IR, "matrix", NULL},
    {"pim: ragged depth", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, 2], 3], \"input\": [1, 2]}", 400, IR, "matrix", NULL},
    {"pim: three-dimensional matrix", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[[1]]], \"input\": [1]}", 400, IR, "matrix", NULL},
    {"pim: empty matrix", P, JOBS, NULL, "{\"type\": \"vmm\", \"matrix\": [], \"input\": []}", 400,
     IR, "matrix", NULL},
    {"pim: empty rows", P, JOBS, NULL, "{\"type\": \"vmm\", \"matrix\": [[], []], \"input\": []}",
     400, IR, "matrix", NULL},
    {"pim: string element", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, \"2\"]], \"input\": [1, 2]}", 400, IR, "matrix", NULL},
    {"pim: solve not square", P, JOBS, NULL,
     "{\"type\": \"solve\", \"matrix\": [[1, 2, 3], [4, 5, 6]], \"rhs\": [1, 2]}", 400, IR,
     "matrix", NULL},
    {"pim: solve rhs mismatch", P, JOBS, NULL,
     "{\"type\": \"solve\", \"matrix\": [[2, 0], [0, 2]], \"rhs\": [1, 2, 3]}", 400, IR, "rhs",
     NULL},
    {"pim: kfac grad mismatch", P, JOBS, NULL,
     "{\"type\": \"kfac_step\", \"activations\": [[1, 2]], \"output_grads\": [[1]], "
     "\"grad\": [[1, 2, 3]]}",
     400, IR, "grad", NULL},
    {"pim: base64 shorter than its shape", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [2, 2], \"dtype\": \"f32\", \"data\": "
     "\"AACAPwAAAEA=\"}, \"input\": [1, 2]}",
     400, IR, "matrix", NULL},
    {"pim: base64 longer than its shape", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f32\", \"data\": "
     "\"AACAPwAAAEA=\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: base64 not a multiple of 4 bytes", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f32\", \"data\": "
     "\"AACA\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: base64 with bad characters", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f32\", \"data\": "
     "\"AA*A\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: unknown dtype", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f64\", \"data\": "
     "\"AAAAAAAA8D8=\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: negative shape", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [-1, 1], \"dtype\": \"f32\", \"data\": "
     "\"\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: shape product past int64", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [4294967296, 4294967296], \"dtype\": "
     "\"f32\", \"data\": \"\"}, \"input\": [1]}",
     413, IR, "matrix", NULL},
    {"pim: three-dimensional shape", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1, 1], \"dtype\": \"f32\", \"data\": "
     "\"AACAPw==\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: shape a string", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": \"1x1\", \"dtype\": \"f32\", \"data\": "
     "\"AACAPw==\"}, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: tensor object without data", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f32\"}, \"input\": "
     "[1]}",
     400, IR, "matrix", NULL},
    {"pim: matrix null", P, JOBS, NULL, "{\"type\": \"vmm\", \"matrix\": null, \"input\": [1]}",
     400, IR, "matrix", NULL},
    {"pim: boolean element", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[true]], \"input\": [1]}", 400, IR, "matrix", NULL},
    {"pim: real overflow in a tensor", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1e400]], \"input\": [1]}", 400, IR, NULL, NULL},
    {"pim: negative max_iterations", P, JOBS, NULL,
     "{\"type\": \"solve\", \"matrix\": [[2]], \"rhs\": [1], \"max_iterations\": -1}", 400, IR,
     "max_iterations", NULL},
    {"pim: huge max_iterations", P, JOBS, NULL,
     "{\"type\": \"solve\", \"matrix\": [[2]], \"rhs\": [1], \"max_iterations\": 1e12}", 400, IR,
     "max_iterations", NULL},
    {"pim: zero damping", P, JOBS, NULL,
     "{\"type\": \"kfac_step\", \"activations\": [[1]], \"output_grads\": [[1]], \"grad\": "
     "[[1]], \"damping\": 0}",
     400, IR, "damping", NULL},
    {"pim: keep_ratio past 1", P, JOBS, NULL,
     "{\"type\": \"admm_compress\", \"matrix\": [[1]], \"inputs\": [[1]], \"targets\": "
     "[[1]], \"keep_ratio\": 2}",
     400, IR, "keep_ratio", NULL},
    {"pim: weight_bits zero", P, JOBS, NULL,
     "{\"type\": \"sme_map\", \"matrix\": [[1]], \"weight_bits\": 0}", 400, IR, "weight_bits",
     NULL},
    {"pim: unknown dataflow", P, JOBS, NULL,
     "{\"type\": \"dataflow_eval\", \"layers\": [{\"in\": 4, \"out\": 4}], \"dataflows\": "
     "[\"warp\"]}",
     400, IR, "dataflows", NULL},
    {"pim: huge layer count", P, JOBS, NULL,
     "{\"type\": \"dataflow_eval\", \"layers\": [{\"in\": 4, \"out\": 4, \"count\": "
     "1e300}]}",
     400, IR, "layers[0].count", NULL},
    /* PIM tensors: NaN and Infinity */
    {"pim: NaN literal in a tensor", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[NaN]], \"input\": [1]}", 400, IR, NULL, NULL},
    {"pim: f32 overflow in a tensor", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1, 1e39]], \"input\": [1, 1]}", 400, IR, "matrix",
     "invalid_value"},
    {"pim: base64 NaN", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1, 1], \"dtype\": \"f32\", \"data\": "
     "\"AADAfw==\"}, \"input\": [1]}",
     400, IR, "matrix", "invalid_value"},
    {"pim: base64 Infinity", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": {\"shape\": [1], \"dtype\": \"f32\", "
     "\"data\": \"AACAfw==\"}}",
     400, IR, "input", "invalid_value"},
    {"pim: base64 -Infinity in rhs", P, JOBS, NULL,
     "{\"type\": \"solve\", \"matrix\": [[1]], \"rhs\": {\"shape\": [1], \"dtype\": \"f32\", "
     "\"data\": \"AACA/w==\"}}",
     400, IR, "rhs", "invalid_value"},
    /* PIM tensors over the size limit */
    {"pim: nested tensor over the limit", P, JOBS, NULL, over_pim_limit_nested, 413, IR, "matrix",
     NULL},
    {"pim: base64 shape over the limit", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": {\"shape\": [1000, 1000], \"dtype\": \"f32\", "
     "\"data\": \"\"}, \"input\": [1]}",
     413, IR, "matrix", NULL},
    /* PIM ids, methods and waits */
    {"pim: GET an unknown id", "GET", JOBS "/pim-424242", NULL, NULL, 404, IR, "id",
     "job_not_found"},
    {"pim: GET a malformed id", "GET", JOBS "/banana", NULL, NULL, 404, IR, "id", "job_not_found"},
    {"pim: DELETE an unknown id", "DELETE", JOBS "/pim-424242", NULL, NULL, 404, IR, "id",
     "job_not_found"},
    {"pim: DELETE a malformed id", "DELETE", JOBS "/pim-1x", NULL, NULL, 404, IR, "id",
     "job_not_found"},
    {"pim: POST to a job", P, JOBS "/pim-1", NULL, "{}", 405, IR, NULL, "method_not_allowed"},
    {"pim: GET the job list", "GET", JOBS, NULL, NULL, 405, IR, NULL, "method_not_allowed"},
    {"pim: PUT the job list", "PUT", JOBS, NULL, "{}", 405, IR, NULL, "method_not_allowed"},
    {"pim: DELETE the job list", "DELETE", JOBS, NULL, NULL, 405, IR, NULL, "method_not_allowed"},
    {"pim: POST the devices", P, "/v1/pim/devices", NULL, "{}", 405, IR, NULL,
     "method_not_allowed"},
    {"pim: wait not a number", P, JOBS "?wait=abc", NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1]}", 400, IR, "wait", NULL},
    {"pim: wait negative", "GET", JOBS "/pim-424242?wait=-1", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait huge", "GET", JOBS "/pim-424242?wait=1e9", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait NaN", "GET", JOBS "/pim-424242?wait=nan", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait empty", "GET", JOBS "/pim-424242?wait=", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait with trailing junk", P, JOBS "?wait=5s", NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1]}", 400, IR, "wait", NULL},
    {"pim: wait infinite", "GET", JOBS "/pim-424242?wait=inf", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait in hex", "GET", JOBS "/pim-424242?wait=0x10", NULL, NULL, 400, IR, "wait", NULL},
    {"pim: wait with a leading space", "GET", JOBS "/pim-424242?wait=%205", NULL, NULL, 400, IR,
     "wait", NULL},
    {"pim: id past uint64", "GET", JOBS "/pim-99999999999999999999999", NULL, NULL, 404, IR, "id",
     "job_not_found"},
    {"pim: id with a NUL escape", "GET", JOBS "/pim-1%00", NULL, NULL, 404, IR, "id",
     "job_not_found"},
    {"pim: id negative", "DELETE", JOBS "/pim--1", NULL, NULL, 404, IR, "id", "job_not_found"},
    {"pim: wait a string in the body", P, JOBS, NULL,
     "{\"type\": \"vmm\", \"matrix\": [[1]], \"input\": [1], \"wait\": \"5\"}", 400, IR, "wait",
     NULL},
};
#undef IR
#undef P
#undef CMP
#undef CHAT
#undef JOBS

/* A greedy completion's text (a new string). */
static char *good_answer(const struct daemon *d)
{
    long status;
    json_t *r = http_json(d, "POST", "/v1/completions", GOOD_PROMPT, &status);
    cr_assert_eq(status, 200);
    char *text = strdup(choice_text(r, 0));
    json_decref(r);
    return text;
}

/* [[1, 2], [3, 4]] [5, 6] = [17, 39], to the default device's 8 bits. */
static void check_vmm_output(json_t *job)
{
    cr_assert_str_eq(json_string_value(json_object_get(job, "status")), "done", "%s",
                     json_dumps(job, 0));
    json_t *out = json_object_get(json_object_get(job, "result"), "output");
    cr_assert_eq(json_array_size(out), 2, "%s", json_dumps(job, 0));
    cr_assert(fabs(json_number_value(json_array_get(out, 0)) - 17) < 0.2, "%s", json_dumps(out, 0));
    cr_assert(fabs(json_number_value(json_array_get(out, 1)) - 39) < 0.4, "%s", json_dumps(out, 0));
}

/* After the matrix a PIM vmm job still comes back right, waited on in the
 * POST and polled by id. */
static void check_pim_still_serves(const struct daemon *d)
{
    static const char vmm[] =
        "{\"type\": \"vmm\", \"matrix\": [[1, 2], [3, 4]], \"input\": [5, 6]%s}";
    char body[256];
    long status;
    snprintf(body, sizeof body, vmm, ", \"wait\": 30");
    json_t *j = http_json(d, "POST", "/v1/pim/jobs", body, &status);
    cr_assert_eq(status, 200, "%ld %s", status, json_dumps(j, 0));
    check_vmm_output(j);
    json_decref(j);

    snprintf(body, sizeof body, vmm, "");
    j = http_json(d, "POST", "/v1/pim/jobs", body, &status);
    cr_assert(status == 202 || status == 200, "%ld", status);
    char path[96];
    snprintf(path, sizeof path, "/v1/pim/jobs/%s?wait=30",
             json_string_value(json_object_get(j, "id")));
    json_decref(j);
    j = http_json(d, "GET", path, NULL, &status);
    cr_assert_eq(status, 200, "%ld", status);
    check_vmm_output(j);
    json_decref(j);
}

static void check_row(const struct daemon *d, const struct row *t)
{
    struct http_response r = {0};
    const char *headers[] = {t->header, NULL};
    http_request(d, t->method, t->path, t->body, headers, &r);
    cr_assert_eq(r.rc, CURLE_OK, "%s: %s", t->name, curl_easy_strerror(r.rc));
    cr_assert_eq(r.status, t->status, "%s: %ld (%.200s)", t->name, r.status,
                 r.body.data ? r.body.data : "");
    if (t->type) {
        json_t *j = json_loadb(r.body.data ? r.body.data : "", r.body.len, 0, NULL);
        cr_assert(j, "%s: not JSON: %.200s", t->name, r.body.data ? r.body.data : "");
        json_t *e = json_object_get(j, "error");
        cr_assert(json_is_string(json_object_get(e, "message")), "%s: no message", t->name);
        cr_assert_str_eq(json_string_value(json_object_get(e, "type")), t->type, "%s", t->name);
        json_t *param = json_object_get(e, "param");
        if (t->param)
            cr_assert_str_eq(json_string_value(param), t->param, "%s: param %s", t->name,
                             json_string_value(param));
        else
            cr_assert(json_is_null(param), "%s: param %s, not null", t->name,
                      json_string_value(param));
        cr_assert(json_object_get(e, "code"), "%s: no code", t->name);
        if (t->code)
            cr_assert_str_eq(json_string_value(json_object_get(e, "code")), t->code, "%s", t->name);
        cr_assert(json_is_object(json_object_get(j, "error")) && json_object_size(j) == 1,
                  "%s: more than the error", t->name);
        json_decref(j);
    }
    http_response_free(&r);
}

Test(server_badinput, every_row_gets_its_status_and_error_and_the_daemon_stays_correct,
     .timeout = TIMEOUT)
{
    fill_big_inputs();
    struct daemon d;
    daemon_start(&d, daemon_args);
    char *before = good_answer(&d);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) check_row(&d, &rows[i]);
    char *after = good_answer(&d);
    cr_assert_str_eq(after, before, "the same greedy answer after the matrix");
    check_pim_still_serves(&d);
    static const char *const paths[] = {
        "/v1/completions", "/v1/chat/completions", "/tokenize",       "/detokenize", "/health",
        "/v1/pim/jobs",    "/v1/pim/jobs/",        "/v1/pim/devices", "other"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        char sample[128];
        snprintf(sample, sizeof sample, "llmd_http_requests_total{path=\"%s\",status=\"500\"}",
                 paths[i]);
        cr_assert(isnan(metric(&d, sample)), "a 500 on %s", paths[i]);
    }
    free(before);
    free(after);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* ------------------------------------------------------------ raw sockets */

static int connect_to(const struct daemon *d)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        cr_assert(n > 0, "send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

/* Reads what comes within timeout_s into buf; returns the byte count, and
 * *closed says whether the daemon closed the connection. */
static size_t read_for(int fd, char *buf, size_t cap, double timeout_s, bool *closed)
{
    size_t len = 0;
    double deadline = now_s() + timeout_s;
    *closed = false;
    while (len < cap - 1 && now_s() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n <= 0) {
            *closed = true;
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    return len;
}

/* /health answers, and quickly, while a slow client holds its connection. */
static void assert_serves_others(const struct daemon *d)
{
    double t0 = now_s();
    struct http_response r = {0};
    http_request(d, "GET", "/health", NULL, NULL, &r);
    cr_assert_eq(r.status, 200);
    cr_assert(now_s() - t0 < 0.5, "/health took %.2f s beside a slow client", now_s() - t0);
    http_response_free(&r);
}

/* Sends `head`, then `drip` a byte every `gap_s` (longer than the idle
 * timeout): the daemon must close the connection without answering 2xx,
 * and serve others meanwhile. Returns the seconds until the close. */
static double slow_client(const struct daemon *d, const char *head, const char *drip, double gap_s)
{
    int fd = connect_to(d);
    double t0 = now_s();
    send_all(fd, head, strlen(head));
    bool closed = false;
    char buf[1024];
    for (size_t i = 0; drip[i] && !closed; i++) {
        assert_serves_others(d);
        read_for(fd, buf, sizeof buf, gap_s, &closed);
        if (closed) break;
        if (send(fd, drip + i, 1, MSG_NOSIGNAL) != 1) closed = true;
    }
    if (!closed) read_for(fd, buf, sizeof buf, 5.0, &closed);
    cr_assert(closed, "a client slower than the idle timeout kept its connection");
    cr_assert_null(strstr(buf, " 200 "), "the slow request was served: %s", buf);
    close(fd);
    return now_s() - t0;
}

Test(server_badinput, slowloris_bodies_and_headers_are_cut_off_at_the_idle_timeout,
     .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, daemon_args);
    /* The body: 40 bytes promised, one sent every 1.6 s (idle timeout 1 s). */
    double body_s = slow_client(&d,
                                "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n",
                                "{\"prompt\": \"slow and steady\", \"n\": 1}  ", 1.6);
    cr_assert(body_s < 6, "the slow body was cut off after %.1f s", body_s);
    /* The headers, a byte at a time. */
    double head_s =
        slow_client(&d, "GET /health HTTP/1.1\r\nHo", "st: x\r\nX-Slow: yes\r\n\r\n", 1.6);
    cr_assert(head_s < 6, "the slow headers were cut off after %.1f s", head_s);
    char *text = good_answer(&d);
    cr_assert(strlen(text) > 0);
    free(text);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

Test(server_badinput, truncated_bodies_and_garbage_requests_leave_the_daemon_serving,
     .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, daemon_args);
    char buf[2048];
    bool closed;

    /* A body shorter than its Content-Length, then a hang-up. */
    int fd = connect_to(&d);
    const char *part = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                       "{\"prompt\": \"a";
    send_all(fd, part, strlen(part));
    close(fd);

    /* Request lines that are not HTTP: MHD closes the connection, with
     * its own 400 or without a word. */
    const char *const garbage[] = {"GARBAGE\r\n\r\n", "GET\r\n\r\n", "GET / HTTP/9.9\r\n\r\n",
                                   "GET /health HTTP/1.1\r\nNo colon here\r\n\r\n",
                                   "\r\n\r\n\r\n\r\n"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        fd = connect_to(&d);
        send_all(fd, garbage[i], strlen(garbage[i]));
        read_for(fd, buf, sizeof buf, 5.0, &closed);
        cr_assert(closed || strncmp(buf, "HTTP/1.1 4", 10) == 0, "garbage %zu got: %.100s", i, buf);
        cr_assert(buf[0] == '\0' || strncmp(buf, "HTTP/1.1 4", 10) == 0 ||
                      strncmp(buf, "HTTP/1.1 505", 12) == 0,
                  "garbage %zu got: %.100s", i, buf);
        close(fd);
    }

    /* Binary junk with no line end at all, then a hang-up. */
    fd = connect_to(&d);
    char junk[512];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(i * 37 + 11);
    send(fd, junk, sizeof junk, MSG_NOSIGNAL);
    close(fd);

    /* A Content-Length that is not a number: refused, not trusted. */
    fd = connect_to(&d);
    const char *bad_len = "POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}";
    send_all(fd, bad_len, strlen(bad_len));
    read_for(fd, buf, sizeof buf, 5.0, &closed);
    cr_assert(strncmp(buf, "HTTP/1.1 4", 10) == 0, "a negative length got: %.100s", buf);
    close(fd);

    /* A huge body announced with Expect: 100-continue: 413 before any of
     * it is sent; a Content-Length past 2^64; a chunk size that is not hex. */
    const struct {
        const char *request, *want;
    } announced[] = {
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
         "Expect: 100-continue\r\n\r\n",
         "HTTP/1.1 413"},
        {"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
         "Content-Length: 184467440737095516160\r\n\r\n{}",
         "HTTP/1.1 413"},
        {"POST /tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
         "HTTP/1.1 400"},
    };
    for (size_t i = 0; i < sizeof announced / sizeof announced[0]; i++) {
        fd = connect_to(&d);
        send_all(fd, announced[i].request, strlen(announced[i].request));
        read_for(fd, buf, sizeof buf, 5.0, &closed);
        cr_assert(strncmp(buf, announced[i].want, strlen(announced[i].want)) == 0,
                  "case %zu got: %.100s", i, buf);
        close(fd);
    }

    /* HTTP/1.1 pipelining: two requests in one write, two answers. */
    fd = connect_to(&d);
    const char *two = "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n";
    send_all(fd, two, strlen(two));
    read_for(fd, buf, sizeof buf, 5.0, &closed);
    const char *second = strstr(buf, "HTTP/1.1 200");
    cr_assert(second && strstr(second + 1, "HTTP/1.1 200"), "pipelined: %.300s", buf);
    close(fd);

    char *text = good_answer(&d);
    cr_assert(strlen(text) > 0);
    free(text);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/* A streamed request whose client closes the socket after the first event:
 * the request is cancelled and every KV page goes back. */
Test(server_badinput, a_client_leaving_mid_stream_frees_every_kv_page, .timeout = TIMEOUT)
{
    struct daemon d;
    daemon_start(&d, daemon_args);
    cr_assert_eq(metric(&d, "llmd_kv_pages_used"), 0);
    for (int round = 0; round < 3; round++) {
        int fd = connect_to(&d);
        const char *body = round == 1
                               ? "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                                 "\"max_tokens\": 400, \"ignore_eos\": true, \"stream\": true}"
                               : "{\"prompt\": \"Call me Ishmael.\", \"max_tokens\": 400, "
                                 "\"ignore_eos\": true, \"stream\": true}";
        char req[512];
        int n =
            snprintf(req, sizeof req,
                     "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     round == 1 ? "/v1/chat/completions" : "/v1/completions", strlen(body), body);
        send_all(fd, req, (size_t)n);
        char buf[4096] = "";
        bool closed;
        size_t got = 0;
        double deadline = now_s() + 30;
        while (!strstr(buf, "data: ") && now_s() < deadline && got < sizeof buf / 2)
            got += read_for(fd, buf + got, sizeof buf - got, 0.05, &closed);
        cr_assert(strstr(buf, "data: "), "no event came: %.200s", buf);
        cr_assert(metric(&d, "llmd_kv_pages_used") > 0, "the request holds pages while it runs");
        if (round == 2) shutdown(fd, SHUT_RDWR); /* a reset-like end, too */
        close(fd);
        cr_assert(wait_metric(&d, "llmd_kv_pages_used", 0, 10), "pages still held: %g",
                  metric(&d, "llmd_kv_pages_used"));
        cr_assert(wait_metric(&d, "llmd_num_requests_running", 0, 10));
    }
    cr_assert(metric(&d, "llmd_generation_tokens_total") < 3 * 400, "the requests were cut short");
    char *text = good_answer(&d);
    cr_assert(strlen(text) > 0);
    free(text);
    cr_assert_eq(daemon_stop(&d), 0, "log %s:\n%s", d.log, daemon_log_tail(&d));
}

/*
 * fuzz_server_request: any bytes as a request body of every endpoint's
 * validator (completions, chat, tokenize, detokenize). Validation must
 * accept or refuse with a 4xx, never crash or leak; an accepted request
 * renders as a chat prompt and resolves its token limit. The same bytes as
 * model output must come out as a valid JSON string (invalid UTF-8
 * replaced).
 */
#include "server/api.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct srv_model_limits lim = {"tiny", 8000, 256};
    json_t *text = srv_json_text((const char *)data, size);
    if (!json_is_string(text)) abort();
    json_decref(text);
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data, size, 0, &jerr);
    if (!body) return 0;
    for (int api = SRV_API_COMPLETIONS; api <= SRV_API_CHAT; api++) {
        struct srv_completion_request r;
        struct srv_error e;
        if (srv_parse_completion(body, (enum srv_api)api, &lim, &r, &e) == 0) {
            int max_tokens;
            srv_resolve_max_tokens(&r, 10, lim.ctx_len, &max_tokens, &e);
            if (api == SRV_API_CHAT) {
                for (int f = SRV_CHAT_BUILTIN; f <= SRV_CHAT_GEMMA; f++)
                    free(srv_chat_render((enum srv_chat_format)f, r.messages, r.n_messages));
            }
            srv_completion_request_free(&r);
        } else if (e.status < 400 || e.status >= 500) {
            abort();
        }
        json_decref(srv_error_json(&e));
    }
    struct srv_tokenize_request t;
    struct srv_error e;
    if (srv_parse_tokenize(body, &lim, &t, &e) == 0) {
        if (t.messages) free(srv_chat_render(SRV_CHAT_BUILTIN, t.messages, t.n_messages));
        srv_tokenize_request_free(&t);
    }
    int32_t *ids;
    int n;
    if (srv_parse_detokenize(body, &lim, &ids, &n, &e) == 0) free(ids);
    json_decref(body);
    return 0;
}

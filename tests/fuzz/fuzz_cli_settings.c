/*
 * fuzz_cli_settings: any bytes as the JSON settings file. Applying them
 * must succeed or fail with a message, never crash or leak; what succeeds
 * must dump back to JSON, and what validates must map to the model's and the
 * engine's options (their parsers accept every choice the table does).
 */
#include "cli/settings.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, size, 0, &jerr);
    if (!root) return 0;
    struct srv_config c;
    cmd_settings_init(&c);
    char err[256];
    if (cmd_settings_apply_json(&c, root, "fuzz", err, sizeof err) == 0) {
        if (cmd_settings_validate(&c, err, sizeof err) == 0) {
            struct llm_model_options o;
            struct llm_engine_config e;
            srv_config_model_options(&c, &o);
            srv_config_engine_config(&c, &e);
        }
        json_decref(cmd_settings_to_json(&c));
    } else if (!err[0]) {
        abort();
    }
    cmd_settings_free(&c);
    json_decref(root);
    return 0;
}

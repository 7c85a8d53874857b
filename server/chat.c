/*
 * chat.c: chat messages to a prompt. GGUF files store their chat template as
 * Jinja; rather than interpret Jinja we recognise the common formats by
 * their markers, as llama.cpp's llm_chat_detect_template does, and render
 * them natively. Anything else falls back to the built-in format (api.h).
 */
#include "server/api.h"

#include <stdlib.h>
#include <string.h>

enum srv_chat_format srv_chat_detect(const char *tmpl, bool *recognized)
{
    *recognized = true;
    if (!tmpl || !tmpl[0]) return SRV_CHAT_BUILTIN;
    if (strstr(tmpl, "<|start_header_id|>")) return SRV_CHAT_LLAMA3;
    if (strstr(tmpl, "<|im_start|>")) return SRV_CHAT_CHATML;
    if (strstr(tmpl, "<start_of_turn>")) return SRV_CHAT_GEMMA;
    if (strstr(tmpl, "<|user|>") && strstr(tmpl, "<|assistant|>")) return SRV_CHAT_ZEPHYR;
    if (strstr(tmpl, "[INST]")) return SRV_CHAT_LLAMA2;
    *recognized = false;
    return SRV_CHAT_BUILTIN;
}

const char *srv_chat_format_name(enum srv_chat_format f)
{
    static const char *const names[] = {"builtin", "chatml", "llama2", "llama3", "zephyr", "gemma"};
    return names[f];
}

const char *srv_chat_turn_end(enum srv_chat_format f)
{
    static const char *const ends[] = {"\nUser:",    "<|im_end|>", "[INST]",
                                       "<|eot_id|>", "</s>",       "<end_of_turn>"};
    return ends[f];
}

static bool is_system(const struct srv_message *m)
{
    return strcmp(m->role, "system") == 0 || strcmp(m->role, "developer") == 0;
}

static bool is_assistant(const struct srv_message *m)
{
    return strcmp(m->role, "assistant") == 0;
}

static void render_builtin(struct srv_buf *out, const struct srv_message *m, int n)
{
    for (int i = 0; i < n; i++) {
        if (is_system(&m[i]))
            srv_buf_printf(out, "%s\n\n", m[i].content);
        else if (is_assistant(&m[i]))
            srv_buf_printf(out, "Assistant: %s\n", m[i].content);
        else
            srv_buf_printf(out, "User: %s\n", m[i].content);
    }
    srv_buf_puts(out, "Assistant:");
}

static void render_chatml(struct srv_buf *out, const struct srv_message *m, int n)
{
    for (int i = 0; i < n; i++)
        srv_buf_printf(out, "<|im_start|>%s\n%s<|im_end|>\n",
                       is_system(&m[i]) ? "system" : m[i].role, m[i].content);
    srv_buf_puts(out, "<|im_start|>assistant\n");
}

static void render_llama3(struct srv_buf *out, const struct srv_message *m, int n)
{
    for (int i = 0; i < n; i++)
        srv_buf_printf(out, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>",
                       is_system(&m[i]) ? "system" : m[i].role, m[i].content);
    srv_buf_puts(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render_zephyr(struct srv_buf *out, const struct srv_message *m, int n)
{
    for (int i = 0; i < n; i++)
        srv_buf_printf(out, "<|%s|>\n%s</s>\n", is_system(&m[i]) ? "system" : m[i].role,
                       m[i].content);
    srv_buf_puts(out, "<|assistant|>\n");
}

/* Gemma has no system role: the system text opens the first user turn. */
static void render_gemma(struct srv_buf *out, const struct srv_message *m, int n)
{
    const char *system = NULL;
    for (int i = 0; i < n; i++) {
        if (is_system(&m[i])) {
            system = m[i].content;
            continue;
        }
        bool model = is_assistant(&m[i]);
        srv_buf_printf(out, "<start_of_turn>%s\n", model ? "model" : "user");
        if (system && !model) {
            srv_buf_printf(out, "%s\n\n", system);
            system = NULL;
        }
        srv_buf_printf(out, "%s<end_of_turn>\n", m[i].content);
    }
    srv_buf_puts(out, "<start_of_turn>model\n");
}

/* Llama 2: the system prompt sits inside the first [INST] block. */
static void render_llama2(struct srv_buf *out, const struct srv_message *m, int n)
{
    const char *system = NULL;
    bool open = false; /* an [INST] block awaits its answer */
    for (int i = 0; i < n; i++) {
        if (is_system(&m[i])) {
            system = m[i].content;
        } else if (is_assistant(&m[i])) {
            srv_buf_printf(out, "%s%s ", open ? " [/INST] " : "", m[i].content);
            open = false;
        } else {
            srv_buf_puts(out, open ? "\n\n" : "[INST] ");
            if (system) {
                srv_buf_printf(out, "<<SYS>>\n%s\n<</SYS>>\n\n", system);
                system = NULL;
            }
            srv_buf_puts(out, m[i].content);
            open = true;
        }
    }
    srv_buf_puts(out, open ? " [/INST]" : "[INST] [/INST]");
}

char *srv_chat_render(enum srv_chat_format f, const struct srv_message *messages, int n)
{
    struct srv_buf out = SRV_BUF_INIT;
    switch (f) {
    case SRV_CHAT_BUILTIN:
        render_builtin(&out, messages, n);
        break;
    case SRV_CHAT_CHATML:
        render_chatml(&out, messages, n);
        break;
    case SRV_CHAT_LLAMA2:
        render_llama2(&out, messages, n);
        break;
    case SRV_CHAT_LLAMA3:
        render_llama3(&out, messages, n);
        break;
    case SRV_CHAT_ZEPHYR:
        render_zephyr(&out, messages, n);
        break;
    case SRV_CHAT_GEMMA:
        render_gemma(&out, messages, n);
        break;
    }
    return srv_buf_take(&out);
}

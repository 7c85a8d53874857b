/*
 * web.c: the web page at / (server/web/: index.html, app.js, style.css),
 * compiled into the binary so that `llmd serve` needs no files beside it
 * and nothing outside the machine: the assembler copies each file in
 * (.incbin, paths from the repository root, where make runs the compiler;
 * the Makefile makes this object depend on server/web/).
 */
#include "server/daemon.h"

#include <stdlib.h>
#include <string.h>

#define WEB_ASSET(sym, file)                                                                       \
    __asm__(".section .rodata\n"                                                                   \
            ".balign 16\n"                                                                         \
            ".globl " #sym "_start\n" #sym "_start:\n"                                             \
            ".incbin \"" file "\"\n"                                                               \
            ".globl " #sym "_end\n" #sym "_end:\n"                                                 \
            ".previous\n");                                                                        \
    extern const char sym##_start[], sym##_end[]

WEB_ASSET(llmd_web_index, "server/web/index.html");
WEB_ASSET(llmd_web_app, "server/web/app.js");
WEB_ASSET(llmd_web_style, "server/web/style.css");

static const struct web_file {
    const char *path, *content_type;
    const char *start, *end;
} files[] = {
    {"/", "text/html; charset=utf-8", llmd_web_index_start, llmd_web_index_end},
    {"/ui/app.js", "text/javascript; charset=utf-8", llmd_web_app_start, llmd_web_app_end},
    {"/ui/style.css", "text/css; charset=utf-8", llmd_web_style_start, llmd_web_style_end},
};

void srv_web_handle(struct srv_request *r, const char *url)
{
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        const struct web_file *f = &files[i];
        if (strcmp(url, f->path) != 0) continue;
        size_t len = (size_t)(f->end - f->start);
        char *body = malloc(len ? len : 1);
        UTIL_CHECK(body);
        memcpy(body, f->start, len);
        /* The page changes with the binary: revalidate rather than cache. */
        const char *const headers[] = {"Cache-Control", "no-cache", "X-Content-Type-Options",
                                       "nosniff", NULL};
        srv_respond(r, 200, f->content_type, body, len, headers);
        return;
    }
    struct srv_error e;
    srv_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no page at %s", url);
    srv_respond_error(r, &e);
}

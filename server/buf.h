/*
 * buf: a growable byte buffer, the one way the server builds text (JSON
 * bodies, SSE frames, Prometheus pages). Always NUL-terminated, so `data`
 * can be used as a C string; binary-safe through `len`. Growth aborts on
 * out-of-memory like util_xmalloc.
 */
#ifndef LLMD_SERVER_BUF_H
#define LLMD_SERVER_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct srv_buf {
    char *data; /* NULL until the first append */
    size_t len;
    size_t cap;
};

#define SRV_BUF_INIT                                                                               \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

void srv_buf_append(struct srv_buf *b, const void *bytes, size_t n);
void srv_buf_puts(struct srv_buf *b, const char *s);
void srv_buf_printf(struct srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_vprintf(struct srv_buf *b, const char *fmt, va_list ap);
/* Empties the buffer, keeping its memory. */
void srv_buf_reset(struct srv_buf *b);
/* Drops the first n bytes (n <= len). */
void srv_buf_consume(struct srv_buf *b, size_t n);
/* Hands the bytes to the caller (who frees them with free()) and leaves the
 * buffer empty. Never NULL. */
char *srv_buf_take(struct srv_buf *b);
void srv_buf_free(struct srv_buf *b);

#endif

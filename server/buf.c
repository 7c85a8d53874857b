/* buf.c: the growable byte buffer. */
#include "server/buf.h"

#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void buf_reserve(struct srv_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    b->data = util_xrealloc(b->data, cap);
    b->cap = cap;
}

void srv_buf_append(struct srv_buf *b, const void *bytes, size_t n)
{
    buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void srv_buf_puts(struct srv_buf *b, const char *s)
{
    srv_buf_append(b, s, strlen(s));
}

void srv_buf_vprintf(struct srv_buf *b, const char *fmt, va_list ap)
{
    va_list again;
    va_copy(again, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    UTIL_CHECK(n >= 0);
    if ((size_t)n < sizeof small) {
        srv_buf_append(b, small, (size_t)n);
    } else {
        buf_reserve(b, (size_t)n);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, again);
        b->len += (size_t)n;
    }
    va_end(again);
}

void srv_buf_printf(struct srv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    srv_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void srv_buf_reset(struct srv_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void srv_buf_consume(struct srv_buf *b, size_t n)
{
    UTIL_CHECK(n <= b->len);
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

char *srv_buf_take(struct srv_buf *b)
{
    char *out = b->data ? b->data : util_xstrdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return out;
}

void srv_buf_free(struct srv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* util.c: errors, logging, clocks and allocation. */
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* ------------------------------------------------------------------ errors */

const char *util_strerror(int code)
{
    if (code == 0) return "success";
    if (code > 0) return "invalid error code";
    switch (-code) {
    case EBADMSG:
        return "malformed data";
    case ENOSPC:
        return "out of KV-cache pages";
    case EAGAIN:
        return "queue full, try again later";
    default:
        return strerror(-code);
    }
}

_Noreturn void util_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("llmd: fatal: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ----------------------------------------------------------------- logging */

static enum util_log_level log_level = UTIL_LOG_INFO;
static bool log_json = false;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void util_log_configure(enum util_log_level level, bool json)
{
    log_level = level;
    log_json = json;
}

int util_log_level_parse(const char *name, enum util_log_level *out)
{
    for (int i = 0; i <= UTIL_LOG_DEBUG; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum util_log_level)i;
            return 0;
        }
    return -EINVAL;
}

bool util_log_enabled(enum util_log_level level)
{
    return level <= log_level;
}

/* Writes `s` as the body of a JSON string (quotes, backslashes and control
 * characters escaped). */
static void write_json_string_body(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
}

void util_log(enum util_log_level level, const char *fmt, ...)
{
    if (!util_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);

    pthread_mutex_lock(&log_lock);
    if (log_json) {
        fprintf(stderr, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", when,
                ts.tv_nsec / 1000000, level_names[level]);
        write_json_string_body(stderr, msg);
        fputs("\"}\n", stderr);
    } else {
        fprintf(stderr, "%s.%03ldZ %-5s %s\n", when, ts.tv_nsec / 1000000, level_names[level], msg);
    }
    pthread_mutex_unlock(&log_lock);
}

/* ------------------------------------------------------------------ clocks */

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------- allocation */

static void *check_alloc(void *p, size_t size)
{
    if (!p && size) util_die("out of memory (%zu bytes)", size);
    return p;
}

void *util_xmalloc(size_t size)
{
    return check_alloc(malloc(size ? size : 1), size);
}

void *util_xcalloc(size_t count, size_t size)
{
    return check_alloc(calloc(count ? count : 1, size ? size : 1), count * size);
}

void *util_xrealloc(void *ptr, size_t size)
{
    return check_alloc(realloc(ptr, size ? size : 1), size);
}

char *util_xstrdup(const char *s)
{
    return check_alloc(strdup(s), strlen(s) + 1);
}

/* A 64-byte header before each aligned block says how it was made. Large
 * blocks are anonymous mappings, zero by construction and resident only
 * where written (a KV pool sized for full contexts costs what it holds);
 * small ones come from the heap and are cleared. */
#define ALIGNED_HEADER   64
#define ALIGNED_MMAP_MIN (8u << 20) /* below it: the heap (per-call scratch reuses it) */

struct aligned_header {
    size_t size; /* bytes after the header */
    bool mapped;
};
_Static_assert(sizeof(struct aligned_header) <= ALIGNED_HEADER, "header fits its 64 bytes");

void *util_aligned_alloc(size_t size)
{
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    unsigned char *base;
    bool mapped = rounded >= ALIGNED_MMAP_MIN;
    if (mapped) {
        base = mmap(NULL, rounded + ALIGNED_HEADER, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) base = NULL;
    } else {
        base = aligned_alloc(64, rounded + ALIGNED_HEADER);
        if (base) memset(base + ALIGNED_HEADER, 0, rounded);
    }
    check_alloc(base, rounded);
    struct aligned_header h = {rounded, mapped};
    memcpy(base, &h, sizeof h);
    return base + ALIGNED_HEADER;
}

void util_aligned_free(void *ptr)
{
    if (!ptr) return;
    unsigned char *base = (unsigned char *)ptr - ALIGNED_HEADER;
    struct aligned_header h;
    memcpy(&h, base, sizeof h);
    if (h.mapped)
        munmap(base, h.size + ALIGNED_HEADER);
    else
        free(base);
}

char *util_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    /* Read in chunks rather than by ftell: it works on pipes and FIFOs too. */
    size_t cap = 1 << 16, n = 0, got;
    char *buf = util_xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) buf = util_xrealloc(buf, cap *= 2);
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        errno = EIO;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

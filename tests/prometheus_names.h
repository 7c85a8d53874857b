/* Prometheus's naming rules, checked over a whole /metrics page by the
 * metrics tests (unit and daemon): metric names match
 * [a-zA-Z_:][a-zA-Z0-9_:]*; only counters end in _total, and every counter
 * does; histogram samples are the family's _bucket (with an le label), _sum
 * and _count; every sample belongs to the family declared last. */
#ifndef LLMD_TEST_PROMETHEUS_NAMES_H
#define LLMD_TEST_PROMETHEUS_NAMES_H

#include <criterion/criterion.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static inline bool prom_valid_name(const char *name)
{
    if (!(isalpha((unsigned char)name[0]) || name[0] == '_' || name[0] == ':')) return false;
    for (const char *p = name + 1; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == ':')) return false;
    return true;
}

static inline bool prom_ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

/* Copies the line at *at (a /metrics page ends every line with '\n') into
 * text, without its newline, and moves *at past it; false at the end. */
static inline bool prom_next_line(const char **at, char *text, size_t cap)
{
    if (!**at) return false;
    const char *end = strchr(*at, '\n');
    cr_assert(end, "the page ends with a newline");
    size_t n = (size_t)(end - *at);
    cr_assert(n < cap, "a line of %zu bytes", n);
    memcpy(text, *at, n);
    text[n] = '\0';
    *at = end + 1;
    return true;
}

/* Checks every TYPE line and every sample of page against the rules;
 * returns the number of families seen. */
static inline int prom_check_names(const char *page)
{
    char family[128] = "", type[32] = "";
    int families = 0;
    char text[512];
    for (const char *at = page; prom_next_line(&at, text, sizeof text);) {
        if (strncmp(text, "# TYPE ", 7) == 0) {
            cr_assert_eq(sscanf(text + 7, "%127s %31s", family, type), 2, "bad TYPE: %s", text);
            cr_assert(prom_valid_name(family), "metric name %s breaks the naming rules", family);
            bool counter = strcmp(type, "counter") == 0;
            cr_assert(counter == prom_ends_with(family, "_total"),
                      "%s is a %s: only counters end in _total, and every counter does", family,
                      type);
            families++;
            continue;
        }
        if (text[0] == '#' || text[0] == '\0') continue;
        char name[160];
        size_t len = strcspn(text, "{ ");
        cr_assert(len < sizeof name);
        memcpy(name, text, len);
        name[len] = '\0';
        if (strcmp(type, "histogram") == 0) {
            char bucket[160], sum[160], count[160];
            snprintf(bucket, sizeof bucket, "%s_bucket", family);
            snprintf(sum, sizeof sum, "%s_sum", family);
            snprintf(count, sizeof count, "%s_count", family);
            cr_assert(strcmp(name, bucket) == 0 || strcmp(name, sum) == 0 ||
                          strcmp(name, count) == 0,
                      "%s is not a sample of histogram %s", name, family);
            if (strcmp(name, bucket) == 0) cr_assert(strstr(text, "le=\""), "bucket without le");
        } else {
            cr_assert_str_eq(name, family, "sample %s outside its family %s", name, family);
        }
    }
    return families;
}

#endif

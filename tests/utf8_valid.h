/*
 * utf8_valid.h: a strict UTF-8 check (no overlong forms, surrogates or code
 * points past U+10FFFF) for tests and fuzz targets, written independently
 * of the tokenizer's own.
 */
#ifndef LLMD_TESTS_UTF8_VALID_H
#define LLMD_TESTS_UTF8_VALID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline bool utf8_valid(const char *s, size_t n)
{
    static const uint32_t min_code_point[5] = {0, 0, 0x80, 0x800, 0x10000};
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t c = p[i], cp, len;
        if (c < 0x80)
            len = 1, cp = c;
        else if ((c & 0xe0) == 0xc0)
            len = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0)
            len = 3, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0)
            len = 4, cp = c & 0x07;
        else
            return false;
        if (len > n - i) return false;
        for (uint32_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min_code_point[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

#endif

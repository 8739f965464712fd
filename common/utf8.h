/* utf8: validation of UTF-8 text from the outside (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF). Strings that reach the bus
 * are valid UTF-8, so JSON output and PostgreSQL text never choke on them. */
#ifndef TOKMON_UTF8_H
#define TOKMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Returns the length of the valid UTF-8 sequence starting at s (1 to 4), or
 * 0 when s[0..n) does not start with one. */
static inline size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c < 0xc2 || c > 0xf4)
        return 0;
    if (c < 0xe0)
        return n >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c < 0xf0) {
        if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if (c == 0xe0 && s[1] < 0xa0) /* overlong */
            return 0;
        if (c == 0xed && s[1] >= 0xa0) /* surrogates */
            return 0;
        return 3;
    }
    if (n < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
        return 0;
    if (c == 0xf0 && s[1] < 0x90) /* overlong */
        return 0;
    if (c == 0xf4 && s[1] >= 0x90) /* above U+10FFFF */
        return 0;
    return 4;
}

static inline bool utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) { /* fast path for ASCII */
            i++;
            continue;
        }
        size_t k = utf8_seq(s + i, n - i);
        if (!k)
            return false;
        i += k;
    }
    return true;
}

#endif

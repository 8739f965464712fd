/* span: a borrowed, not NUL-terminated byte range (pointer + length).
 * Parsers hand out spans that point into the caller's buffer so that the hot
 * path never copies or allocates; a span is valid as long as that buffer is. */
#ifndef TOKMON_SPAN_H
#define TOKMON_SPAN_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct {
    const char *p;
    size_t len;
} span_t;

#define SPAN_NULL ((span_t){ NULL, 0 })
#define SPAN_LIT(s) ((span_t){ (s), sizeof(s) - 1 })

static inline span_t span_make(const char *p, size_t len) { return (span_t){ p, len }; }
static inline span_t span_cstr(const char *s) { return (span_t){ s, s ? strlen(s) : 0 }; }
static inline bool span_is_set(span_t s) { return s.p != NULL; }

static inline bool span_eq(span_t a, span_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static inline bool span_eq_cstr(span_t a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && (n == 0 || memcmp(a.p, s, n) == 0);
}

static inline bool span_starts_with(span_t a, const char *prefix)
{
    size_t n = strlen(prefix);
    return a.len >= n && memcmp(a.p, prefix, n) == 0;
}

#endif

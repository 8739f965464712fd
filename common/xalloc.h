/* xalloc: allocation that cannot fail. Out of memory is not a condition a
 * daemon can recover from in a useful way, so every allocation goes through
 * these wrappers, which abort with a message instead of returning NULL. */
#ifndef TOKMON_XALLOC_H
#define TOKMON_XALLOC_H

#include <stddef.h>

/* Each returns memory owned by the caller (free with free()); never NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
/* Reallocates an array of nmemb elements of size bytes, checking overflow. */
void *xreallocarray(void *p, size_t nmemb, size_t size);
char *xstrdup(const char *s);
/* Copies len bytes and appends a NUL. */
char *xstrndup(const char *s, size_t len);
/* printf into a new string. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

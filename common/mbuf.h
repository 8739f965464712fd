/* mbuf: a growable byte buffer that msgpack packers write into. It grows
 * through xrealloc, so packing never fails; reset keeps the memory for the
 * next message. */
#ifndef TOKMON_MBUF_H
#define TOKMON_MBUF_H

#include <msgpack.h>
#include <stddef.h>
#include <string.h>

#include "xalloc.h"

typedef struct {
    char *data;
    size_t len, cap;
} mbuf_t;

static inline void mbuf_reserve(mbuf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static inline void mbuf_append(mbuf_t *b, const void *p, size_t n)
{
    mbuf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* The msgpack_packer_write callback; data is the mbuf_t. */
static inline int mbuf_write(void *data, const char *buf, size_t len)
{
    mbuf_append((mbuf_t *)data, buf, len);
    return 0;
}

static inline void mbuf_packer(mbuf_t *b, msgpack_packer *pk) { msgpack_packer_init(pk, b, mbuf_write); }
static inline void mbuf_reset(mbuf_t *b) { b->len = 0; }
static inline void mbuf_free(mbuf_t *b)
{
    free(b->data);
    *b = (mbuf_t){ 0 };
}

#endif

/* mpr: a strict, allocation-free msgpack reader. The collector reads msgpack
 * usage events from the network with it, and every bus message is checked
 * with mpr_validate() before msgpack-c unpacks it: msgpack-c allocates room
 * for a container's declared size before reading its elements, so a five-byte
 * hostile message could otherwise ask for gigabytes. */
#ifndef TOKMON_MPR_H
#define TOKMON_MPR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    MPR_NIL,
    MPR_BOOL,
    MPR_UINT,  /* non-negative integer, in u */
    MPR_INT,   /* negative integer, in i */
    MPR_FLOAT, /* float32 or float64, in f */
    MPR_STR,   /* str, in s */
    MPR_BIN,   /* bin, in s */
    MPR_ARRAY, /* header: n elements follow */
    MPR_MAP,   /* header: n key/value pairs follow */
    MPR_EXT,   /* ext, payload in s (type byte skipped) */
} mpr_type_t;

typedef struct {
    mpr_type_t type;
    union {
        bool b;
        uint64_t u;
        int64_t i;
        double f;
        uint32_t n;
        struct {
            const char *p;
            uint32_t len;
        } s;
    };
} mpr_val_t;

typedef struct {
    const uint8_t *p, *end;
} mpr_t;

static inline void mpr_init(mpr_t *r, const void *p, size_t len)
{
    r->p = p;
    r->end = r->p + len;
}

/* Reads one scalar or container header. Returns 0, or -1 on truncated or
 * invalid input (the reader is then unusable), including a container that
 * declares more elements than bytes remain. */
int mpr_next(mpr_t *r, mpr_val_t *v);

/* Skips one whole value, descending at most max_depth levels. 0 or -1. */
int mpr_skip(mpr_t *r, unsigned max_depth);

/* Checks that buf[0..len) is exactly one well-formed msgpack value nested at
 * most max_depth deep. Returns 0 or -1. */
int mpr_validate(const void *buf, size_t len, unsigned max_depth);

#endif

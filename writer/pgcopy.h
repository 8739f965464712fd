/* pgcopy: rows in PostgreSQL's binary COPY format, built in memory. The
 * tuples of a table go one after the other into a buffer, with each row's
 * offset kept, so that any run of rows can be sent as a COPY of its own
 * (the writer sends half a batch again when PostgreSQL refuses a row).
 * Each field: int32 length (-1: NULL) and the value in network order:
 * bigint 8 bytes, integer 4, boolean 1, text its UTF-8 bytes, timestamptz
 * microseconds since 2000-01-01 UTC, bytea its bytes, jsonb the version
 * byte 1 and JSON text. */
#ifndef TOKMON_PGCOPY_H
#define TOKMON_PGCOPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mbuf.h"
#include "span.h"
#include "xalloc.h"

#define PGCOPY_HEADER "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0"
#define PGCOPY_HEADER_LEN 19
#define PGCOPY_TRAILER "\377\377"
#define PGCOPY_TRAILER_LEN 2
/* unix seconds of 2000-01-01T00:00:00Z, PostgreSQL's epoch */
#define PGCOPY_EPOCH_UNIX 946684800LL

typedef struct {
    mbuf_t tup;    /* the tuples, back to back */
    size_t *off;   /* off[i]: where row i starts; off[n]: tup.len */
    size_t n, cap; /* rows */
} pgcopy_t;

static inline void pgcopy_be16(mbuf_t *b, uint16_t v)
{
    unsigned char x[2] = { (unsigned char)(v >> 8), (unsigned char)v };
    mbuf_append(b, x, 2);
}

static inline void pgcopy_be32(mbuf_t *b, uint32_t v)
{
    unsigned char x[4] = { (unsigned char)(v >> 24), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 8), (unsigned char)v };
    mbuf_append(b, x, 4);
}

static inline void pgcopy_be64(mbuf_t *b, uint64_t v)
{
    pgcopy_be32(b, (uint32_t)(v >> 32));
    pgcopy_be32(b, (uint32_t)v);
}

/* Starts a row of nfields fields. */
static inline void pgcopy_row(pgcopy_t *c, uint16_t nfields)
{
    if (c->n + 2 > c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->off = xreallocarray(c->off, c->cap, sizeof *c->off);
    }
    c->off[c->n++] = c->tup.len;
    pgcopy_be16(&c->tup, nfields);
}

/* Drops the row being built (started with pgcopy_row). */
static inline void pgcopy_unrow(pgcopy_t *c)
{
    c->tup.len = c->off[--c->n];
}

/* Where row i ends (or where the next would start). */
static inline size_t pgcopy_end_of(const pgcopy_t *c, size_t i)
{
    return i + 1 < c->n ? c->off[i + 1] : c->tup.len;
}

static inline void pgcopy_null(pgcopy_t *c) { pgcopy_be32(&c->tup, 0xffffffffu); }

static inline void pgcopy_i64(pgcopy_t *c, int64_t v)
{
    pgcopy_be32(&c->tup, 8);
    pgcopy_be64(&c->tup, (uint64_t)v);
}

static inline void pgcopy_i32(pgcopy_t *c, int32_t v)
{
    pgcopy_be32(&c->tup, 4);
    pgcopy_be32(&c->tup, (uint32_t)v);
}

static inline void pgcopy_f64(pgcopy_t *c, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    pgcopy_be32(&c->tup, 8);
    pgcopy_be64(&c->tup, u);
}

static inline void pgcopy_bool(pgcopy_t *c, bool v)
{
    pgcopy_be32(&c->tup, 1);
    unsigned char x = v;
    mbuf_append(&c->tup, &x, 1);
}

static inline void pgcopy_bytes(pgcopy_t *c, const void *p, size_t n)
{
    pgcopy_be32(&c->tup, (uint32_t)n);
    if (n)
        mbuf_append(&c->tup, p, n);
}

/* text: NULL when s is absent */
static inline void pgcopy_text(pgcopy_t *c, span_t s)
{
    if (!s.p)
        pgcopy_null(c);
    else
        pgcopy_bytes(c, s.p, s.len);
}

/* text, '' when absent (key columns that are NOT NULL) */
static inline void pgcopy_text0(pgcopy_t *c, span_t s) { pgcopy_bytes(c, s.p ? s.p : "", s.len); }

/* unix ns, rounded down to the microsecond */
static inline int64_t pgcopy_ts_value(int64_t ns)
{
    int64_t us = ns / 1000 - (ns % 1000 < 0);
    return us - PGCOPY_EPOCH_UNIX * 1000000;
}

static inline void pgcopy_ts(pgcopy_t *c, int64_t ns) { pgcopy_i64(c, pgcopy_ts_value(ns)); }

/* jsonb from JSON text */
static inline void pgcopy_jsonb(pgcopy_t *c, const char *json, size_t n)
{
    pgcopy_be32(&c->tup, (uint32_t)n + 1);
    unsigned char v = 1;
    mbuf_append(&c->tup, &v, 1);
    mbuf_append(&c->tup, json, n);
}

static inline void pgcopy_reset(pgcopy_t *c)
{
    c->tup.len = 0;
    c->n = 0;
}

static inline void pgcopy_free(pgcopy_t *c)
{
    mbuf_free(&c->tup);
    free(c->off);
    memset(c, 0, sizeof *c);
}

#endif

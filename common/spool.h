/* spool: a publisher's append-only log of every bus message it sends
 * (DESIGN section 4). Messages go into segment files in one directory,
 * named by their first seq; each record carries its seq, topic and envelope
 * and a CRC, so a torn tail left by a crash is found and cut off on open.
 * A publisher that restarts continues from the last seq on disk. Segments
 * roll by size and age and the oldest are deleted past a size or age cap;
 * readers (the replay service) walk it with cursors that stay valid while
 * appends go on and old segments are deleted. One thread owns a spool. */
#ifndef TOKMON_SPOOL_H
#define TOKMON_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mbuf.h"

typedef struct {
    const char *dir;         /* created if missing */
    int64_t segment_bytes;   /* roll when a segment reaches this size */
    int64_t segment_age_ms;  /* ... or is this old */
    int64_t max_bytes;       /* delete the oldest segments beyond this total */
    int64_t max_age_ms;      /* ... or older than this (by their last write) */
    int64_t fsync_ms;        /* group fsync interval; 0: after every append; < 0: never */
} spool_opts_t;

typedef struct spool spool_t;

/* Opens (or creates) the spool in o->dir, repairs a torn tail and finds the
 * last seq. Returns NULL with a reason in err. */
spool_t *spool_open(const spool_opts_t *o, char *err, size_t errcap);
/* Syncs and closes. */
void spool_close(spool_t **s);

uint64_t spool_last_seq(const spool_t *s);   /* last written (flushed) seq; 0 when empty */
uint64_t spool_oldest_seq(const spool_t *s); /* first retained seq; 0 when empty */
uint64_t spool_bytes(const spool_t *s);
size_t spool_segments(const spool_t *s);
/* Bytes of the tail cut off at open (a crash in the middle of a write). */
uint64_t spool_repaired(const spool_t *s);

/* Appends one message to the write buffer; it reaches the file at the next
 * spool_flush (or when 1 MiB is buffered, or the segment rolls). seq must
 * follow the last appended one (any seq when the spool is empty). Returns 0,
 * or -1 with errno (the message is not in the spool and must not be sent). */
int spool_append(spool_t *s, uint64_t seq, const char *topic, const void *env, size_t len);

/* Writes what was appended, in one write. A publisher sends nothing it has
 * not flushed. Returns 0, or -1 with errno: then every record appended since
 * the last flush is dropped (none of them may be sent) and the next append
 * continues from spool_last_seq() + 1. */
int spool_flush(spool_t *s);

/* The last seq appended, written or not. */
uint64_t spool_appended_seq(const spool_t *s);

/* Housekeeping, from the owner's loop: group fsync when due, rolling by
 * age, retention. now_ms is the monotonic clock. Returns 0 or -1 (errno). */
int spool_tick(spool_t *s, int64_t now_ms);
int spool_sync(spool_t *s);

/* ---- reading ------------------------------------------------------------ */

typedef struct spool_cursor spool_cursor_t;

/* A cursor at the first message with seq >= from. Returns NULL with
 * *gone set to the oldest retained seq when from is older than that, or
 * NULL with *gone 0 on an I/O error. A from beyond the last seq gives a
 * cursor that is at its end. */
spool_cursor_t *spool_cursor_open(spool_t *s, uint64_t from, uint64_t *gone);
void spool_cursor_close(spool_cursor_t **c);

/* After spool_cursor_next returned -1: the seq from which the spool can be
 * read again (the next segment's first, or the oldest retained when
 * retention took what the cursor needed, or the last seq + 1). */
uint64_t spool_cursor_resume(const spool_cursor_t *c, const spool_t *s);

/* Reads the next message: returns 1 with its seq, topic (NUL-terminated, in
 * topic[0..64]) and envelope (replacing env's contents), 0 at the end of
 * what has been written, -1 on a damaged record or I/O error. */
int spool_cursor_next(spool_cursor_t *c, uint64_t *seq, char *topic, mbuf_t *env);

#endif

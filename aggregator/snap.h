/* snap: the aggregator's durable state file. A snapshot is a stream of
 * msgpack values (each module writes its records one by one, so neither
 * writing nor reading holds the state twice in memory) between a magic line
 * and a trailer carrying the XXH3 hash of everything before it. It is
 * written to a temporary file, fsynced and renamed over the old one, so a
 * crash at any moment leaves either the old snapshot or the new one whole. */
#ifndef TOKMON_SNAP_H
#define TOKMON_SNAP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "span.h"

typedef struct snapw snapw_t;

/* Starts writing path (through path.tmp). NULL with a reason in err. */
snapw_t *snapw_open(const char *path, char *err, size_t errcap);

/* The packer to write the next value with. After each record call
 * snapw_record so the buffer goes to the file in large writes. */
msgpack_packer *snapw_packer(snapw_t *w);
void snapw_record(snapw_t *w);

/* Finishes: trailer, fsync, rename over path, fsync of the directory.
 * Frees w. Returns 0, or -1 with a reason (the old snapshot stays). */
int snapw_commit(snapw_t **w, char *err, size_t errcap);
/* Drops an unfinished snapshot (the old one stays). */
void snapw_abort(snapw_t **w);

/* Bytes written so far. */
uint64_t snapw_bytes(const snapw_t *w);

typedef struct snapr snapr_t;

/* Opens and checks a snapshot (magic, trailer, hash). NULL with errno
 * ENOENT when there is none, or with another errno and a reason in err when
 * it cannot be used. */
snapr_t *snapr_open(const char *path, char *err, size_t errcap);

/* The next value, valid until the next call; NULL at the end (err "") or
 * when a value is malformed (a reason in err). */
const msgpack_object *snapr_next(snapr_t *r, char *err, size_t errcap);

void snapr_close(snapr_t **r);

/* Reading one record written as a msgpack array: each getter takes the next
 * element; a missing element or a wrong type sets bad (and returns 0 or an
 * empty span), so a loader reads a whole record and checks once. */
typedef struct {
    const msgpack_object *a;
    uint32_t n, i;
    bool bad;
} snap_rec_t;

void snap_rec_open(snap_rec_t *r, const msgpack_object *o);
int64_t snap_rec_i64(snap_rec_t *r);
uint64_t snap_rec_u64(snap_rec_t *r);
span_t snap_rec_str(snap_rec_t *r); /* str or bin */
const msgpack_object *snap_rec_obj(snap_rec_t *r);
/* true when the record was read whole and well */
bool snap_rec_ok(const snap_rec_t *r);

/* Writing helpers. */
void snap_pack_str(msgpack_packer *pk, const char *p, size_t n);
void snap_pack_bin(msgpack_packer *pk, const void *p, size_t n);

#endif

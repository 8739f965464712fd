/* rollup: usage in minute, hour and day buckets (days in the configured
 * zone) by (provider, model, operation, status), by user, by account and by
 * project: requests, errors, each token bucket, cost, and latency and
 * time-to-first-token sketches. Events go to the bucket of their own time.
 * A bucket closes when the watermark passes its end plus close_delay and
 * goes out whole (roll.m, roll.h, roll.d); it is kept for lateness more, and
 * an event that arrives meanwhile amends it: the cells it changed go out
 * again with the next revision number. Later events are counted and left
 * out of the rollups (quotas and budgets still count them). */
#ifndef TOKMON_ROLLUP_H
#define TOKMON_ROLLUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cal.h"
#include "msg.h"
#include "snap.h"

typedef enum { RG_MINUTE, RG_HOUR, RG_DAY, RG_N } rgrain_t;

typedef struct rollup rollup_t;

typedef struct {
    const cal_t *cal; /* borrowed: day buckets */
    int64_t lateness_ns, close_delay_ns;
    bool users; /* the by-user dimension */
    uint32_t shard, shards;
    /* called for each record that goes out; r and its spans live during the call */
    void (*emit)(void *arg, rgrain_t g, const msg_rollup_t *r);
    void *arg;
} rollup_opts_t;

typedef struct {
    uint64_t late_dropped; /* events whose bucket was already gone */
    uint64_t closed;       /* buckets closed */
    uint64_t records;      /* records sent, first time */
    uint64_t amended;      /* records sent again with a new revision */
    uint64_t cells;        /* live */
    uint64_t buckets;      /* live */
} rollup_counters_t;

rollup_t *rollup_new(const rollup_opts_t *o);
void rollup_destroy(rollup_t **r);

/* Adds a call at its event time t (unix ns) given the watermark. */
void rollup_add(rollup_t *r, const msg_usage_t *u, int64_t t, int64_t watermark);

/* Closes what is due at watermark, sends amendments, frees expired
 * buckets. */
void rollup_advance(rollup_t *r, int64_t watermark);

/* Durable state: each cell as a record tagged "r". */
void rollup_save(const rollup_t *r, snapw_t *w);
int rollup_load_record(rollup_t *r, snap_rec_t *rec, char *err, size_t errcap);

size_t rollup_memory(const rollup_t *r);
const rollup_counters_t *rollup_counters(const rollup_t *r);

const char *rollup_grain_name(rgrain_t g); /* "m", "h", "d" */

#endif

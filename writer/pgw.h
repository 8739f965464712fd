/* pgw: tokmon-pgwriter's work without its sockets. It holds one PostgreSQL
 * connection; applies the schema migrations (writer/migrations, compiled
 * in) under an advisory lock; mirrors the configured budgets and quota
 * limits; turns bus messages into rows (calls into llm_events; rollup
 * buckets, budget statuses and crossings, quota changes into their tables)
 * kept in memory as binary COPY data; and writes a batch in one transaction
 * together with the bus positions it covers, so that a replayed message
 * never writes a row twice. A row PostgreSQL refuses goes to dead_letter
 * with the reason, and the rest of its batch is written. Partitions of
 * llm_events are made ahead of time and dropped after the retention. */
#ifndef TOKMON_PGW_H
#define TOKMON_PGW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "cfg.h"
#include "stats.h"

typedef struct pgw pgw_t;

typedef struct {
    const cfg_t *cfg;
    const char *consumer; /* bus_offsets.consumer: this writer's name */
    stats_t *stats;
} pgw_opts_t;

pgw_t *pgw_new(const pgw_opts_t *o);
void pgw_destroy(pgw_t **w);

/* Connects ([pgwriter] database, or libpq's PG* environment when empty),
 * applies the migrations not yet applied, mirrors budgets and quota limits,
 * and runs pgw_maintain. Returns 0, or -1 with a reason in err; a migration
 * released and then edited is refused (-2: no point in retrying). */
int pgw_connect(pgw_t *w, int64_t now_ns, char *err, size_t cap);
void pgw_disconnect(pgw_t *w);
bool pgw_connected(const pgw_t *w);

/* Calls fn for each bus position stored for this consumer. */
int pgw_offsets(pgw_t *w, void (*fn)(void *arg, const char *src, uint64_t seq), void *arg,
                char *err, size_t cap);

/* Turns one bus message into rows of the pending batch. Bad records are
 * counted and kept for dead_letter; never fails. now_ns: the wall clock,
 * for the partitions' range. */
void pgw_apply(pgw_t *w, const bus_msg_t *m, int64_t now_ns);

/* Rows (and dead letters) pending, and the monotonic ns the oldest came in
 * (0: none). */
size_t pgw_pending(const pgw_t *w);
int64_t pgw_pending_since(const pgw_t *w);

typedef struct {
    const char *src;
    uint64_t seq;
} pgw_pos_t;

/* Writes the pending batch and the positions in one transaction. Returns 0;
 * or -1 when the connection failed (the batch is dropped: the caller
 * reconnects and replays from the stored positions). */
int pgw_flush(pgw_t *w, const pgw_pos_t *pos, size_t npos, char *err, size_t cap);

/* Drops the pending batch. */
void pgw_drop(pgw_t *w);

/* Makes the partitions of llm_events from yesterday to partitions_ahead
 * days ahead, drops those older than raw_retention_days, and deletes minute
 * and hour rollups past their retention. One writer at a time does it. */
int pgw_maintain(pgw_t *w, int64_t now_ns, char *err, size_t cap);

/* The partition day range rows are taken for at now_ns: [*lo, *hi] in days
 * since 1970-01-01 (UTC). */
void pgw_day_range(const pgw_t *w, int64_t now_ns, int64_t *lo, int64_t *hi);

/* "llm_events_pYYYYMMDD" for a day since 1970-01-01; out >= 24 bytes. */
char *pgw_partition_name(int64_t day, char *out, size_t cap);
/* The day of a partition name, or -1 when it is not one of ours. */
int64_t pgw_partition_day(const char *name);

/* Appends s as a JSON string (quotes and escapes) to b; s must be valid
 * UTF-8. */
void pgw_json_str(mbuf_t *b, const char *s, size_t n);

#endif

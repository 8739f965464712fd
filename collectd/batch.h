/* batch: per-topic batching of records onto the bus. Records are packed as
 * they arrive into one buffer per topic (ev.00 .. ev.ff, metric) and sent as
 * one message whose body is an array of records, when the batch is full or
 * when its first record has waited flush_interval. */
#ifndef TOKMON_BATCH_H
#define TOKMON_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "msg.h"
#include "stats.h"

typedef struct batch batch_t;

/* Borrows pub and st. */
batch_t *batch_new(bus_pub_t *pub, stats_t *st);
void batch_destroy(batch_t **b);

/* Limits; changeable on reload. */
void batch_limits(batch_t *b, size_t max_records, int64_t interval_ns);

/* Adds a record; now is the wall clock (unix ns) of its arrival. */
void batch_usage(batch_t *b, unsigned shard, const msg_usage_t *u, int64_t now);
void batch_sample(batch_t *b, const msg_sample_t *s, int64_t now);

/* Sends every batch whose first record has waited the interval (now: wall
 * clock, unix ns; a clock that went back flushes at once). Returns the
 * nanoseconds until the next batch is due, or -1 when all are empty. */
int64_t batch_flush_due(batch_t *b, int64_t now);
/* Sends every non-empty batch. */
void batch_flush_all(batch_t *b);

#endif

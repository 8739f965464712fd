/* stats: a stage's own counters and gauges (received, accepted, rejected by
 * reason, ...). The hot path holds a pointer to its counter and increments
 * it directly; the registry packs them all into a `stats` message body and
 * prints them for SIGUSR1. Single-threaded: owned by one loop. */
#ifndef TOKMON_STATS_H
#define TOKMON_STATS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct stats stats_t;

/* daemon and src are copied. */
stats_t *stats_new(const char *daemon, const char *src);
void stats_destroy(stats_t **st);

/* Returns the slot of the counter name{labels}, creating it at 0. labels is
 * NULL or "k=v" pairs separated by commas ("reason=bad_value"); a label value
 * may not contain ',' or '='. The pointer stays valid until stats_destroy.
 * Beyond the registry's cap (4096 series) every new series shares one
 * overflow slot, counted under "stats_overflow_total". */
int64_t *stats_counter(stats_t *st, const char *name, const char *labels);
int64_t *stats_gauge(stats_t *st, const char *name, const char *labels);

/* Like stats_counter, with two label values that are arbitrary strings from
 * the outside (e.g. provider and model of an unpriced call): they are
 * sanitised and the family is capped at max_series distinct label sets, the
 * rest counted under the values "__other__". */
int64_t *stats_counter2(stats_t *st, const char *name, const char *k1, const char *v1, size_t v1len,
                        const char *k2, const char *v2, size_t v2len, size_t max_series);

/* Packs the body of a `stats` message. */
void stats_pack(const stats_t *st, msgpack_packer *pk, int64_t now_ns);

/* Calls fn for every series, in creation order. */
void stats_each(const stats_t *st,
                void (*fn)(const char *name, const char *labels, int64_t value, bool gauge, void *arg),
                void *arg);

#endif

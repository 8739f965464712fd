/* agg: the aggregator's state and its rules, without sockets: usage records
 * and StatsD samples go in (agg_apply, one bus message at a time), quota,
 * budget, rollup and flush records come out through a send callback, and
 * the whole state saves to and loads from a snapshot together with the bus
 * positions it reflects. main.c owns the sockets and the clock; tests drive
 * an agg_t directly. */
#ifndef TOKMON_AGG_H
#define TOKMON_AGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "budget.h"
#include "cal.h"
#include "cfg.h"
#include "quota.h"
#include "rollup.h"
#include "sflush.h"
#include "stats.h"

typedef struct agg agg_t;

/* Sends one message: body = head then tail (a msgpack array of records). */
typedef int (*agg_send_fn)(void *arg, const char *topic, const char *kind, const void *head,
                           size_t headlen, const void *tail, size_t taillen);

typedef struct {
    const cfg_t *cfg; /* read at agg_new; agg_reload takes a new one */
    uint32_t shard, shards;
    const char *src; /* the aggregator's publisher name */
    stats_t *stats;  /* borrowed: the stage's counters go here */
    agg_send_fn send;
    void *send_arg;
} agg_opts_t;

/* NULL with a reason in err (bad time zone, ...). */
agg_t *agg_new(const agg_opts_t *o, char *err, size_t errcap);
void agg_destroy(agg_t **a);

/* Takes the reloadable parts of a new config: limits, budgets, intervals. */
void agg_reload(agg_t *a, const cfg_t *cfg);

/* Applies one bus message (a usage batch on ev.*, samples on metric;
 * anything else is counted and skipped). Malformed records are counted and
 * skipped; the others of their message still count. */
void agg_apply(agg_t *a, const bus_msg_t *m);

/* Time goes on: now is the wall clock (unix ns); caught_up says the input
 * is live, so buckets may close by the clock and not only by the events'
 * receive times. Closes buckets and flush intervals, publishes budget
 * statuses and sweeps quotas when due. */
void agg_tick(agg_t *a, int64_t now, bool caught_up);

/* Sends the records gathered since the last call. Returns 0, or -1 when
 * the send callback failed (the records are kept for the next call). */
int agg_flush(agg_t *a);

/* The watermark: every event received before it has been applied. */
int64_t agg_watermark(const agg_t *a);

/* ---- durable state -------------------------------------------------------- */

typedef struct {
    const char *src;
    uint64_t seq;
} agg_position_t;

/* Writes the state and the given bus positions (what has been applied) and
 * the publisher's last seq (what has been sent) to path, atomically.
 * Returns 0, or -1 with a reason. */
int agg_save(agg_t *a, const char *path, const agg_position_t *pos, size_t npos,
             uint64_t pub_seq, char *err, size_t errcap);

/* Loads a snapshot written by agg_save into a fresh agg: calls position for
 * every bus position and returns the publisher's seq in *pub_seq. Returns 1
 * when loaded, 0 when there is no snapshot, -1 with a reason when it cannot
 * be used (damaged, another shard). */
int agg_load(agg_t *a, const char *path, void (*position)(void *arg, const char *src, uint64_t seq),
             void *arg, uint64_t *pub_seq, char *err, size_t errcap);

/* After agg_load: a message this aggregator itself published after the
 * snapshot (read back from its spool) so the restart does not announce
 * again what was already announced (quota states, budget crossings). */
void agg_recover_output(agg_t *a, const bus_msg_t *m);

/* ---- queries ---------------------------------------------------------------- */

quota_t *agg_quota(agg_t *a);
budget_t *agg_budget(agg_t *a);
const cal_t *agg_cal(const agg_t *a);
/* The recent usage of models and projects (per minute), for top queries:
 * like quota_usage. dim: "model" or "project". */
void agg_recent(const agg_t *a, const char *dim, int64_t from, int64_t to,
                void (*fn)(void *arg, span_t key, const win_sum_t *sum), void *arg);
/* How far back the per-minute usage goes (ns). */
int64_t agg_history(const agg_t *a);
uint32_t agg_shard(const agg_t *a);
uint32_t agg_shards(const agg_t *a);

/* Memory held by the state, in bytes (approximate), and a refresh of the
 * stage's gauges. */
size_t agg_memory(const agg_t *a);
void agg_update_gauges(agg_t *a);

#endif

/* quota: per-user and per-account usage against limits in tokens and in
 * dollars, over the calendar day and month of the configured zone and over
 * a sliding window kept as per-minute buckets, all at once. Each (window,
 * unit) pair has a state, ok, warning (at warn_pct of the limit) or
 * exceeded, and every change of a state is published as a `quota` record.
 * Usage is counted at the collector's receive time, which clients cannot
 * set. The same per-minute buckets answer the usage and top queries. */
#ifndef TOKMON_QUOTA_H
#define TOKMON_QUOTA_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cal.h"
#include "cfg.h"
#include "msg.h"
#include "snap.h"
#include "span.h"
#include "win.h"

typedef enum { QS_USER, QS_ACCOUNT, QS_N } qsubject_t;
typedef enum { QW_DAY, QW_MONTH, QW_WINDOW, QW_N } qwindow_t;
typedef enum { QU_TOKENS, QU_USD, QU_N } qunit_t;
typedef enum { QST_OK, QST_WARNING, QST_EXCEEDED } qstate_t;

typedef struct quota quota_t;

typedef struct {
    const cal_t *cal;   /* borrowed; outlives the quota */
    int64_t window_ns;  /* the sliding window: whole minutes */
    int64_t history_ns; /* per-minute usage kept for queries (at least the window) */
    uint32_t shard, shards;
    void (*emit)(void *arg, const msg_quota_t *q);
    void *arg;
} quota_opts_t;

typedef struct {
    uint64_t stale;     /* usage for a day or month already over when it arrived */
    uint64_t changes;   /* state changes published */
    uint64_t forgotten; /* idle subjects dropped by the sweep */
} quota_counters_t;

quota_t *quota_new(const quota_opts_t *o);
void quota_destroy(quota_t **q);

/* Takes the limits of cfg ([quota], [quota.account], [quota.user.ID],
 * [quota.account.ID]); at start and on reload. States are re-judged with the
 * new limits at the next usage or sweep. */
void quota_limits(quota_t *q, const cfg_t *cfg);

/* Counts usage of subject id at instant t (unix ns) and publishes the state
 * changes it causes. */
void quota_add(quota_t *q, qsubject_t s, span_t id, int64_t t, uint64_t tokens, int64_t nusd);

/* Re-judges the subjects not in state ok at now (a new day, usage leaving
 * the window), trims the per-minute history and forgets idle subjects. */
void quota_sweep(quota_t *q, int64_t now);

/* A subject's quota at now, for queries (an unknown subject has no usage
 * and its configured limits). */
typedef struct {
    bool known;
    qstate_t state; /* the worst */
    int64_t warn_pct;
    struct {
        int64_t start, reset; /* reset: when it starts again (sliding: the next expiry, 0 none) */
        int64_t used[QU_N], limit[QU_N];
        qstate_t st[QU_N];
    } w[QW_N];
    uint64_t window_requests;
} quota_view_t;

void quota_view(quota_t *q, qsubject_t s, span_t id, int64_t now, quota_view_t *v);

/* Calls fn for every subject with usage starting in [from, to). */
void quota_usage(const quota_t *q, qsubject_t s, int64_t from, int64_t to,
                 void (*fn)(void *arg, span_t id, const win_sum_t *sum), void *arg);

/* Marks a state as already published (recovered from the publisher's own
 * spool after a crash, so a restart does not announce it twice). */
void quota_set_published(quota_t *q, qsubject_t s, span_t id, qwindow_t w, qunit_t u,
                         qstate_t st);

/* Durable state: every subject as one record tagged "q". */
void quota_save(const quota_t *q, snapw_t *w);
int quota_load_record(quota_t *q, snap_rec_t *r, char *err, size_t errcap);

size_t quota_count(const quota_t *q, qsubject_t s);
size_t quota_memory(const quota_t *q);
const quota_counters_t *quota_counters(const quota_t *q);

const char *quota_state_name(qstate_t st);
const char *quota_subject_name(qsubject_t s);
const char *quota_unit_name(qunit_t u);
/* "day", "month", or the sliding window's length ("5h", "90m") */
const char *quota_window_name(const quota_t *q, qwindow_t w);
int quota_parse_state(span_t s); /* -1 when unknown */

#endif

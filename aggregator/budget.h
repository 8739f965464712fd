/* budget: spending against the [budget.NAME] sections. A budget has a scope
 * (global; provider, model, project, account, operation or user, each
 * either one named value, "account:acme", or every value apart, "account")
 * and a calendar period (day, ISO week, month) in the configured zone. Each
 * instance (budget and scope value) tracks what its current period spent,
 * the last hour's spending per minute for the burn rate, and which
 * thresholds (warn_pct, 100 %) it crossed: each crossing is published once
 * per period, and the snapshot keeps it across restarts. Unspent budget may
 * roll over into the next period up to a cap. */
#ifndef TOKMON_BUDGET_H
#define TOKMON_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cal.h"
#include "cfg.h"
#include "msg.h"
#include "snap.h"

typedef struct budget budget_t;

typedef struct {
    const cal_t *cal; /* borrowed */
    uint32_t shard, shards;
    void (*emit)(void *arg, const msg_budget_t *b);
    void *arg;
} budget_opts_t;

typedef struct {
    uint64_t crossings; /* threshold crossings published */
    uint64_t stale;     /* spending for a period already over when it arrived */
    uint64_t instances; /* live */
    uint64_t dropped;   /* instances beyond the cap per budget */
} budget_counters_t;

budget_t *budget_new(const budget_opts_t *o);
void budget_destroy(budget_t **b);

/* Takes the [budget.*] sections: at start and on reload. A budget whose
 * name, scope and period did not change keeps its instances. */
void budget_configure(budget_t *b, const cfg_t *cfg);

/* Counts one priced call at instant t (the receive time). */
void budget_add(budget_t *b, const msg_usage_t *u, int64_t t);

/* Rolls periods that ended by now and publishes statuses: every instance
 * of the budgets with one instance (global, or one scope value), and of the
 * others (one instance per user, say) those that changed since the last
 * call, or all of them when all is set. */
void budget_publish(budget_t *b, int64_t now, bool all);

/* Calls fn with the status of every instance at now (queries). name may be
 * NULL (all budgets). */
void budget_each(budget_t *b, int64_t now, const char *name,
                 void (*fn)(void *arg, const msg_budget_t *st), void *arg);

/* Marks a crossing as published (recovered from the publisher's own spool
 * after a crash): crossing is "warning" or "exceeded". */
void budget_set_crossed(budget_t *b, span_t name, span_t scope_value, int64_t period_start,
                        span_t crossing, int64_t crossed_ts);

/* Durable state: each instance as a record tagged "b". */
void budget_save(const budget_t *b, snapw_t *w);
int budget_load_record(budget_t *b, snap_rec_t *r, char *err, size_t errcap);

size_t budget_memory(const budget_t *b);
const budget_counters_t *budget_counters(const budget_t *b);

#endif

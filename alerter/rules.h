/* rules: what tokmon-alerter watches, and the conditions that hold now.
 * It keeps windowed aggregates of the calls (per minute, by user, account,
 * model, provider, project and operation), the latest budget statuses and
 * quota states, when each stage last sent its stats and whether a stage
 * reports bus gaps it could not replay; rules_eval lists every condition
 * that holds at an instant. The engine (engine.c) turns conditions into
 * alerts with Prometheus semantics (for, pending, firing, resolved).
 *
 * Built-in rules, each with its thresholds in [alerter] (0 turns a
 * threshold rule off; budget, quota and bus_gap are booleans):
 *
 *   LLMBudgetWarning, LLMBudgetExceeded   a budget instance at or over its warn
 *       percentage / 100 % in its current period (labels budget, scope,
 *       scope_value, period; shards' parts summed); once per period
 *   LLMQuotaWarning, LLMQuotaExceeded     a user or account in that quota state
 *       (labels subject, id, window, unit)
 *   LLMExpensiveCall      one call over high_cost_call_usd (labels user, model,
 *       provider, request_id), held for high_cost_call_hold
 *   LLMErrorRatioHigh     errors / requests over error_pct % over error_window,
 *       with at least error_min_requests requests, for error_for (by provider, model)
 *   LLMTokenBurnRateHigh  tokens in the last hour over burn_tokens_per_hour, for burn_for
 *   LLMDailyCostHigh      today's cost ([global] timezone) over daily_cost_usd
 *   LLMCostRateHigh       the last hour's cost over cost_rate_usd
 *   LLMLatencyP95High     p95 latency over latency_p95 over 5 minutes, for
 *       latency_for (by provider, model)
 *   LLMNoEvents           no call for no_events
 *   TokmonStageSilent     a stage sent no stats for stage_silent (labels daemon, src)
 *   TokmonBusGapLost      a stage reports bus messages it could not replay
 *       (bus_messages_lost_total grew; labels daemon, src); held 15 minutes
 *   [rule.NAME]           user-defined: aggregate over window by a dimension,
 *       compared with threshold, for `for` (alertname NAME)
 *
 * Severities: the *Exceeded rules critical, their *Warning twins warning
 * (the engine inhibits a warning while its critical twin fires), the rest
 * warning unless configured. One thread owns a rules_t. */
#ifndef TOKMON_RULES_H
#define TOKMON_RULES_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "msg.h"
#include "stats.h"

typedef struct rules rules_t;

/* NULL with a reason in err (a bad zone, a rule that cannot be built). */
rules_t *rules_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap);
void rules_destroy(rules_t **r);

/* Inputs. now_ns: the wall clock when it arrived. */
void rules_usage(rules_t *r, const msg_usage_t *u, int64_t now_ns);
void rules_budget(rules_t *r, span_t src, const msg_budget_t *b);
void rules_quota(rules_t *r, const msg_quota_t *q);
void rules_stats(rules_t *r, const msg_stats_t *s, int64_t now_ns);

#define RULES_MAX_LABELS 8

/* One condition that holds now. Strings are valid during the callback. */
typedef struct {
    const char *alertname;
    const char *severity;              /* info, warning, critical */
    int64_t for_ms;                    /* how long it must hold before firing */
    msg_tag_t labels[RULES_MAX_LABELS]; /* besides alertname and severity */
    size_t nlabels;
    msg_tag_t annotations[MSG_MAX_ANNOTATIONS]; /* summary, description, value, threshold... */
    size_t nannotations;
    double value;
} rules_cond_t;

/* Calls fn for every condition holding at now_ns. */
void rules_eval(rules_t *r, int64_t now_ns, void (*fn)(void *arg, const rules_cond_t *c),
                void *arg);

/* For the daily digest: the cost, tokens and requests of [from, to), and
 * the top n users and models by cost then (fn gets each: kind "user" or
 * "model", its id, cost in nano-dollars, tokens). Covers what the rules
 * keep (at least 26 hours). */
typedef struct {
    int64_t cost_nusd;
    uint64_t tokens, requests, errors;
} rules_totals_t;
void rules_totals(const rules_t *r, int64_t from_ns, int64_t to_ns, rules_totals_t *t);
void rules_top(const rules_t *r, int64_t from_ns, int64_t to_ns, size_t n,
               void (*fn)(void *arg, const char *kind, span_t id, int64_t cost_nusd,
                          uint64_t tokens),
               void *arg);

/* Durable state (the windows, holds, last-seen times): one msgpack value;
 * rules_load returns 0, or -1 on a malformed value (r left empty). */
void rules_save(const rules_t *r, msgpack_packer *pk);
int rules_load(rules_t *r, const msgpack_object *o);

#endif

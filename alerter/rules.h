/* rules: what tokmon-alerter watches, and the conditions that hold now.
 * It keeps windowed aggregates of the calls (per minute, by user, account,
 * model, provider, project and operation), the latest budget statuses and
 * quota states, when each stage last sent its stats and whether a stage
 * reports bus gaps it could not replay; rules_eval lists every condition
 * that holds at an instant. The engine (engine.c) turns conditions into
 * alerts with Prometheus semantics (for, pending, firing, resolved).
 *
 * Built-in rules, each with its thresholds in [alerter] (0 turns a
 * threshold rule off; budget, quota and bus_gap are booleans). "Over" is
 * strictly greater; "at or over" is >=.
 *
 *   LLMBudgetWarning, LLMBudgetExceeded   a budget instance at or over its warn
 *       percentage (warn_pct of the newest record) / at or over its limit in
 *       its current period (labels budget, scope, scope_value when the scope
 *       has one, period). The parts of the newest period_start are summed over
 *       the publishing aggregators (src); nothing holds once now reaches the
 *       period's end or a newer period starts. At 100 % both hold (the engine's
 *       inhibition mutes the warning). Value: spent / limit.
 *   LLMQuotaWarning, LLMQuotaExceeded     the latest state of (subject, id,
 *       window, unit) is warning / exceeded (only Exceeded then), until an ok
 *       comes or a calendar window's reset passes (labels subject, id, window,
 *       unit). Value: used / limit.
 *   LLMExpensiveCall      one call over high_cost_call_usd (labels user when
 *       known, model, provider, request_id: the record's, or "h" and 16 hex
 *       digits of a hash of the record), held for high_cost_call_hold after
 *       the call's receive time and reported by one evaluation at least;
 *       1000 held at most (the rest counted). Value: dollars.
 *   LLMErrorRatioHigh     errors / requests over error_pct % over error_window,
 *       with at least error_min_requests requests, for error_for (labels
 *       provider, model). Value: the ratio.
 *   LLMTokenBurnRateHigh  input + output tokens in the last hour over
 *       burn_tokens_per_hour, for burn_for. Value: tokens.
 *   LLMDailyCostHigh      today's cost ([global] timezone) over daily_cost_usd.
 *   LLMCostRateHigh       the last hour's cost over cost_rate_usd. Value: dollars.
 *   LLMLatencyP95High     p95 latency over latency_p95 over 5 minutes, for
 *       latency_for (labels provider, model). Value: seconds.
 *   LLMNoEvents           no usage record arrived for no_events.
 *   TokmonStageSilent     a (daemon, src) seen on stats sent none for
 *       stage_silent (labels daemon, src). Value: seconds.
 *   TokmonBusGapLost      a stage's bus_messages_lost_total or
 *       bus_gaps_lost_total grew since its previous stats (from 0 when its
 *       `started` changed; the first stats seen are a baseline); held 15
 *       minutes after the last increase (labels daemon, src). Value: messages
 *       lost since the hold began.
 *   [rule.NAME]           user-defined: aggregate over window by a dimension,
 *       compared with threshold, for `for` (alertname NAME; labels: the
 *       dimension's, provider and model for by = model). Value in the
 *       threshold's unit: dollars, seconds, a ratio, a count. A series without
 *       a value (fewer requests than min_requests, no request for error_ratio,
 *       no latency) holds nothing; with op < or <= a value with no call in the
 *       window (0) holds while the value is still remembered (26 hours).
 *
 * Windows. Calls are counted in the minute of their recv_ts (the collector's
 * receive clock; one in the future counts now, one older than what is kept
 * is counted as stale and dropped). A window of W is the current minute and
 * the ceil(W / 1 min) - 1 minutes before it. Latency quantiles come from the
 * merged DDSketches of those minutes (1 % relative accuracy); for windows
 * over 10 minutes they are merged again at most every W/60 (1 minute at
 * most). "Since" for LLMNoEvents and TokmonStageSilent counts from the later
 * of the last arrival and the first rules_eval, so a restarted alerter does
 * not cry wolf over its own downtime.
 *
 * Annotations: summary (a sentence with the value and the threshold, money
 * as exact dollars from nano-dollars), description, value, threshold and,
 * per rule, limit, spent, forecast_usd (budgets: at the last hour's rate),
 * exhaust (RFC 3339), used, requests, errors. User rules: summary from the
 * template ({{ $value }}, {{ $threshold }}, {{ $labels.NAME }}; other
 * {{ ... }} left as written) or a default sentence.
 *
 * Severities: the *Exceeded rules critical, their *Warning twins warning
 * (the engine inhibits a warning while its critical twin fires), the rest
 * warning unless configured. Counters (rules_*) go to the stats registry.
 * One thread owns a rules_t; nothing in it blocks or logs. */
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

/* NULL with a reason in err (a bad zone, a rule that cannot be built).
 * Copies what it needs from cfg (cfg may go away after); st is borrowed and
 * must outlive r (NULL: no counters). To take a new config, make a new
 * rules_t and move the state across with rules_save/rules_load. */
rules_t *rules_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap);
/* Frees *r and sets it to NULL; nothing if r or *r is NULL. */
void rules_destroy(rules_t **r);

/* Inputs, borrowed for the call. now_ns: the wall clock when it arrived.
 * rules_budget: src is the publishing aggregator (the envelope's src);
 * statuses older (ts) than the one held for that src are ignored. */
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

/* Calls fn for every condition holding at now_ns, in no particular order;
 * fn must not call into r. Also trims what has left the kept time (once a
 * minute). Cost: a pass over the series of the dimensions the rules use,
 * the windows moved incrementally. */
void rules_eval(rules_t *r, int64_t now_ns, void (*fn)(void *arg, const rules_cond_t *c),
                void *arg);

/* For the daily digest: the cost, tokens and requests of the minutes that
 * start in [from, to), and the top n users and models by cost then (ties:
 * tokens, then id), users first (fn gets each: kind "user" or "model", its
 * id, "provider/model" for a model, cost in nano-dollars, tokens; id is
 * valid during the call). Covers what the rules keep (at least 26 hours). */
typedef struct {
    int64_t cost_nusd;
    uint64_t tokens, requests, errors;
} rules_totals_t;
void rules_totals(const rules_t *r, int64_t from_ns, int64_t to_ns, rules_totals_t *t);
void rules_top(const rules_t *r, int64_t from_ns, int64_t to_ns, size_t n,
               void (*fn)(void *arg, const char *kind, span_t id, int64_t cost_nusd,
                          uint64_t tokens),
               void *arg);

/* Every budget instance in its period at now_ns (shards' parts summed), for
 * the daily digest: name, scope, scope value ("" for global), period,
 * spent and limit in nano-dollars. */
void rules_budgets(const rules_t *r, int64_t now_ns,
                   void (*fn)(void *arg, span_t name, const char *scope, span_t value,
                              const char *period, int64_t spent_nusd, int64_t limit_nusd),
                   void *arg);

/* Durable state (the windows, holds, last-seen times): one msgpack value,
 * the same bytes for the same state; rules_load replaces what r holds and
 * returns 0, or -1 on a malformed value (r left empty, counted). Latency
 * sketches of dimensions that r's rules do not use are dropped on load. */
void rules_save(const rules_t *r, msgpack_packer *pk);
int rules_load(rules_t *r, const msgpack_object *o);

#endif

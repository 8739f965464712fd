/* model: tokmon-exporter's metric families, fed from the bus and rendered
 * as Prometheus text 0.0.4 or OpenMetrics 1.0 (and walked sample by sample
 * for remote write).
 *
 *   llm_requests_total{provider,model,operation,status}      counter
 *   llm_tokens_total{provider,model,operation,type}          counter; type is one of
 *       input (uncached input), cache_read, cache_write (5 m and 1 h), output
 *       (output other than reasoning), reasoning: disjoint, so that a sum over
 *       type is the calls' whole token count
 *   llm_cost_usd_total{provider,model,operation}             counter, exact decimal
 *   llm_request_duration_seconds{provider,model,operation}   histogram
 *   llm_time_to_first_token_seconds{provider,model,operation} histogram
 *       (the OpenTelemetry GenAI bucket boundaries, 0.01 s to 81.92 s)
 *   llm_budget_{limit_usd,spent_usd,spent_ratio,forecast_usd,exhaust_seconds}
 *       {budget,scope,scope_value,period[,method]}           gauges (shards summed)
 *   llm_quota_subjects{subject,state}                        gauge: users/accounts per state
 *   llm_user_cost_usd{user}, llm_user_tokens{user}           gauges, today; only with
 *       [exporter] user_labels = on, the top K by cost, the rest in user="__other__"
 *   llm_account_cost_usd{account}, llm_account_tokens{account}  the same for accounts
 *   llm_users_folded, llm_accounts_folded                    gauges: how many folded
 *   tokmon_<stat>{daemon,src,...}                            every stage's own counters
 *   <statsd name>{tags}                                      generic StatsD (metric.flush)
 *
 * A family has a cap on its series ([exporter] max_series); label sets
 * past it are folded into one series whose labels are all "__other__" and
 * counted. A StatsD or stats name that arrives with another type or label
 * names than it first had is counted and skipped. One thread owns a model. */
#ifndef TOKMON_MODEL_H
#define TOKMON_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "mbuf.h"
#include "msg.h"
#include "stats.h"

typedef struct model model_t;

/* Counters of its own go to st (tokmon_exporter_* when published). */
model_t *model_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap);
void model_destroy(model_t **m);

/* Inputs, one record each. src: the publishing instance. now_ns: the wall
 * clock. */
void model_usage(model_t *m, const msg_usage_t *u, int64_t now_ns);
void model_budget(model_t *m, span_t src, const msg_budget_t *b);
void model_quota(model_t *m, const msg_quota_t *q);
void model_flush(model_t *m, const msg_flush_t *f);
void model_stats(model_t *m, const msg_stats_t *s);

/* Brings the derived families up to now_ns: budget gauges (shards summed),
 * quota subjects, today's top users and accounts. model_render does it
 * itself; call it before model_each_sample. */
void model_refresh(model_t *m, int64_t now_ns);

/* The whole page into out (replacing it). openmetrics: OpenMetrics 1.0
 * (ends with "# EOF"), else text 0.0.4. */
void model_render(model_t *m, bool openmetrics, int64_t now_ns, mbuf_t *out);

/* Content types of the two formats. */
#define MODEL_CT_TEXT "text/plain; version=0.0.4; charset=utf-8"
#define MODEL_CT_OPENMETRICS "application/openmetrics-text; version=1.0.0; charset=utf-8"

/* One label of a sample. */
typedef struct {
    const char *name, *value;
} model_label_t;

/* Every sample as remote write wants it: the metric name (histograms as
 * their _bucket (with le), _sum and _count series; counters with _total),
 * its labels sorted by name (without __name__), and the value. */
typedef void (*model_sample_fn)(void *arg, const char *name, const model_label_t *labels,
                                size_t nlabels, double value);
void model_each_sample(const model_t *m, model_sample_fn fn, void *arg);

/* Totals since the exporter started, for the JSON API's /api/v1/usage. */
typedef struct {
    uint64_t requests, errors;
    uint64_t input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,
        reasoning_tokens, total_tokens;
    int64_t cost_nusd;
    int64_t first_ns, last_ns; /* first and last call seen (0: none) */
} model_totals_t;
void model_totals(const model_t *m, model_totals_t *t);

/* Series held, over all families. */
size_t model_series(const model_t *m);

#endif

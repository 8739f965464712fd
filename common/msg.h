/* msg: every message body that crosses the bus, defined once. Each kind has
 * a struct, a pack function (struct → msgpack) and an unpack function that
 * checks the shape, types, sizes and invariants of a received msgpack object
 * before any field is trusted. Unknown keys are ignored so a field can be
 * added without breaking older readers; breaking changes bump MSG_VERSION
 * (the envelope's v). Strings in unpacked structs borrow from the msgpack
 * object (or, when packing, from the caller's buffers). */
#ifndef TOKMON_MSG_H
#define TOKMON_MSG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "mbuf.h"
#include "span.h"

#define MSG_VERSION 1
#define MSG_MAX_TAGS 32
#define MSG_MAX_STR 1024             /* any one string field */
#define MSG_MAX_SKETCH 65536         /* an encoded sketch */
#define MSG_MAX_TOKENS (1ULL << 40)  /* any one token count */
#define MSG_MAX_BATCH 65536          /* records in one body */
#define MSG_MAX_STATS 4096           /* entries in one stats body */
#define MSG_STAT_LABELS 4

/* Kinds, as carried in the envelope's "kind". */
#define MSG_KIND_USAGE "usage"
#define MSG_KIND_SAMPLE "sample"
#define MSG_KIND_STATS "stats"

typedef struct {
    span_t key, value;
} msg_tag_t;

/* A priced usage record (topic ev.xx), with tokens in their normalised
 * meaning: input_tokens is all input (cache included) and output_tokens all
 * output (reasoning included); the cache and reasoning counts are parts. */
typedef struct {
    span_t provider, model, operation; /* required */
    span_t user, account, project;     /* absent: p == NULL */
    span_t status;                     /* "ok" or "error" */
    span_t error_type, request_id;
    span_t cost_source;   /* "reported", "priced", "default" or "unknown" */
    span_t price_version; /* absent for reported costs */
    span_t key_id;        /* present when is_signed */
    uint64_t input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens;
    uint64_t output_tokens, reasoning_tokens;
    uint64_t requests;   /* calls this record stands for: 1 for an event, 0 for a token counter line */
    int64_t ts, recv_ts; /* unix ns */
    int64_t latency_us;  /* -1: absent */
    int64_t ttft_us;     /* -1: absent */
    int64_t cost_nusd;
    int32_t http_status; /* 0: absent */
    int32_t retries;     /* -1: absent */
    bool is_signed;
    size_t ntags;
    msg_tag_t tags[MSG_MAX_TAGS];
} msg_usage_t;

/* Sets every field to "absent" / zero. */
void msg_usage_init(msg_usage_t *u);
void msg_usage_pack(msgpack_packer *pk, const msg_usage_t *u);
/* The same bytes appended straight to b: the collector's hot path. */
void msg_usage_encode(mbuf_t *b, const msg_usage_t *u);
/* Returns 0, or -1 with a short reason in err (at least 128 bytes). */
int msg_usage_unpack(const msgpack_object *o, msg_usage_t *u, char *err, size_t cap);

/* A generic StatsD sample (topic metric). */
typedef enum { MSG_ST_C, MSG_ST_G, MSG_ST_MS, MSG_ST_H, MSG_ST_D, MSG_ST_S } msg_stype_t;
typedef struct {
    span_t name;
    msg_stype_t type;
    double value;  /* numeric types, as sent */
    span_t member; /* sets */
    double rate;   /* 0 < rate <= 1 */
    bool delta;    /* gauges: relative */
    int64_t ts;    /* unix ns */
    size_t ntags;
    msg_tag_t tags[MSG_MAX_TAGS];
} msg_sample_t;

const char *msg_stype_name(msg_stype_t t);
void msg_sample_pack(msgpack_packer *pk, const msg_sample_t *s);
void msg_sample_encode(mbuf_t *b, const msg_sample_t *s);
int msg_sample_unpack(const msgpack_object *o, msg_sample_t *s, char *err, size_t cap);

/* One StatsD series aggregated over one flush interval (topic metric.flush),
 * as tokmon-aggregator's sflush writes it. A record is keyed by (name, type,
 * tags, start); a later record with the same key and a higher rev replaces
 * it (late samples amended the interval). Only the fields meaningful for the
 * type travel: c: value, rate; g: value; s: value, capped; ms/h/d: count,
 * sum, min, max, p50, p90, p95, p99; every type: name, type, start, end,
 * rev, tags, samples. */
#define MSG_KIND_FLUSH "flush"
#define MSG_FLUSH_NQ 4
/* The quantiles of q[], 0.5 0.9 0.95 0.99, and their keys p50 p90 p95 p99. */
extern const double msg_flush_q[MSG_FLUSH_NQ];
extern const char *const msg_flush_qname[MSG_FLUSH_NQ];

typedef struct {
    span_t name;
    msg_stype_t type;
    int64_t start, end; /* the interval [start, end), unix ns */
    uint32_t rev;       /* 0 first, +1 each time the record is sent again amended */
    size_t ntags;
    msg_tag_t tags[MSG_MAX_TAGS]; /* sorted by key, then value */
    double value; /* c: sum of value/rate; g: the value when the interval closed;
                     s: distinct members; ms/h/d: 0 */
    double rate;  /* c: value per second of the interval; else 0 */
    double count, sum, min, max; /* ms/h/d: count = sum of 1/rate, sum = sum of
                                    value/rate, min/max of the values; else 0 */
    double q[MSG_FLUSH_NQ];      /* ms/h/d: quantiles of the values (unweighted) */
    uint64_t samples;            /* samples received for the interval, unscaled */
    bool capped;                 /* s: the member cap was hit, value is a lower bound */
} msg_flush_t;

void msg_flush_pack(msgpack_packer *pk, const msg_flush_t *f);
/* Strict: the keys of the type present and well typed, numbers finite,
 * 0 <= start < end, at most MSG_MAX_TAGS tags, a set's value a whole number,
 * ms/h/d: count > 0 and min <= p50 <= p90 <= p95 <= p99 <= max. Keys of
 * other types and unknown keys are ignored. 0, or -1 with a reason in err. */
int msg_flush_unpack(const msgpack_object *o, msg_flush_t *f, char *err, size_t cap);

/* One counter or gauge of a stage's own (topic stats). */
typedef struct {
    span_t name; /* e.g. "ingest_rejected_total" */
    size_t nlabels;
    msg_tag_t labels[MSG_STAT_LABELS];
    int64_t value;
    bool gauge;
} msg_stat_t;

/* A stage's counters. entries points at caller memory when packing and at
 * an array the caller supplies (cap entries) when unpacking. */
typedef struct {
    span_t daemon; /* "tokmon-collectd" */
    span_t src;
    int64_t pid;
    int64_t started; /* unix ns */
    int64_t ts;      /* unix ns */
    size_t n;
    msg_stat_t *entries;
} msg_stats_t;

void msg_stats_pack(msgpack_packer *pk, const msg_stats_t *s);
/* entries must have room for cap entries; more than cap is an error. */
int msg_stats_unpack(const msgpack_object *o, msg_stats_t *s, msg_stat_t *entries, size_t cap,
                     char *err, size_t errcap);

/* Packs a span as a msgpack str. */
void msg_pack_span(msgpack_packer *pk, span_t s);

/* ---- the aggregator's outputs ------------------------------------------- */

#define MSG_KIND_ROLLUP "rollup"
#define MSG_KIND_QUOTA "quota"
#define MSG_KIND_BUDGET "budget"

/* One rollup bucket of one publisher (topics roll.m, roll.h, roll.d). Every
 * record carries the bucket's whole totals: a bucket sent again (an event
 * arrived late, rev + 1, or the aggregator restarted) replaces what the
 * reader holds for (src, grain, start, dimension values); readers sum over
 * srcs (shards). dim "model" is keyed by provider, model, operation and
 * status; "user", "account" and "project" by key. latency and ttft are
 * sketch encodings (common/sketch.h), empty when no call reported one. */
typedef struct {
    span_t grain; /* "m", "h" or "d" */
    span_t dim;   /* "model", "user", "account" or "project" */
    int64_t start, end; /* [start, end), unix ns */
    span_t provider, model, operation, status; /* dim model */
    span_t key;                                /* the other dims */
    uint64_t requests, errors;
    uint64_t input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens;
    uint64_t output_tokens, reasoning_tokens;
    int64_t cost_nusd;
    span_t latency, ttft; /* microseconds */
    uint32_t rev;
    uint32_t shard, shards;
} msg_rollup_t;

void msg_rollup_pack(msgpack_packer *pk, const msg_rollup_t *r);
int msg_rollup_unpack(const msgpack_object *o, msg_rollup_t *r, char *err, size_t cap);

/* A quota state change (topic quota): one subject, one window, one unit.
 * A state, not an event: receiving the same one twice is harmless. */
typedef struct {
    span_t subject;     /* "user" or "account" */
    span_t id;
    span_t window;      /* "day", "month", or a sliding window such as "5h" */
    span_t unit;        /* "tokens" or "usd" */
    span_t state, prev; /* "ok", "warning" or "exceeded" */
    int64_t used, limit; /* tokens, or nano-dollars */
    int64_t start;      /* the window's first instant, unix ns */
    int64_t reset;      /* calendar windows: when the next one starts; sliding: 0 */
    int64_t ts;         /* the moment the state changed */
    uint32_t shard, shards;
} msg_quota_t;

void msg_quota_pack(msgpack_packer *pk, const msg_quota_t *q);
int msg_quota_unpack(const msgpack_object *o, msg_quota_t *q, char *err, size_t cap);

/* A budget's status for its current period (topic budget). With several
 * shards a scope that spans them (anything but user, when shards > 1) is
 * reported by each shard for its part (partial): readers sum spent over the
 * shards and judge the thresholds themselves. A record with crossing set
 * announces a threshold crossing, sent once per budget, scope value, period
 * and threshold. */
typedef struct {
    span_t name;        /* the config section's name: [budget.NAME] */
    span_t scope;       /* "global", "provider", "model", "project", "account", "operation", "user" */
    span_t scope_value; /* absent for global */
    span_t period;      /* "day", "week" or "month" */
    int64_t period_start, period_end;
    int64_t limit_nusd;    /* in force: the configured limit plus rollover */
    int64_t rollover_nusd; /* carried from the previous period */
    int64_t spent_nusd, remaining_nusd;
    int64_t forecast_avg_nusd;  /* at the period's end, at the period's average rate */
    int64_t forecast_rate_nusd; /* at the period's end, at the last hour's rate */
    int64_t exhaust_ts;         /* when it runs out at the last hour's rate (0: not at that rate); when spent: the crossing */
    int64_t warn_pct;
    span_t state;    /* "ok", "warning" or "exceeded" */
    span_t crossing; /* absent, or "warning" / "exceeded": this record announces it */
    int64_t crossed_ts; /* with crossing: when it happened */
    int64_t ts;
    bool partial;
    uint32_t shard, shards;
} msg_budget_t;

void msg_budget_pack(msgpack_packer *pk, const msg_budget_t *b);
int msg_budget_unpack(const msgpack_object *o, msg_budget_t *b, char *err, size_t cap);

/* ---- the alerter's output ------------------------------------------------- */

#define MSG_KIND_ALERT "alert"
#define MSG_MAX_ANNOTATIONS 8

/* One alert transition (topic alert), as Prometheus and Alertmanager know
 * alerts: labels identify the alert (alertname and severity among them; the
 * fingerprint is a hash of the sorted labels), annotations describe it
 * (summary, description, value, limit...). state is "pending", "firing" or
 * "resolved"; starts_at is when it went firing (pending: when the condition
 * began), ends_at when it resolved (0 while it has not). */
typedef struct {
    span_t alertname, state, severity, fingerprint;
    size_t nlabels;
    msg_tag_t labels[MSG_MAX_TAGS]; /* sorted by key */
    size_t nannotations;
    msg_tag_t annotations[MSG_MAX_ANNOTATIONS];
    double value;       /* the rule's value when it changed state */
    int64_t starts_at, ends_at, ts; /* unix ns */
} msg_alert_t;

void msg_alert_pack(msgpack_packer *pk, const msg_alert_t *a);
/* Strict: alertname, state, fingerprint and ts present; state one of the
 * three; labels and annotations maps of strings within their caps; value
 * finite. */
int msg_alert_unpack(const msgpack_object *o, msg_alert_t *a, char *err, size_t cap);

#endif

#include "cfg.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dec.h"
#include "xalloc.h"

extern char **environ;

typedef enum {
    T_STR,      /* any text */
    T_INT,      /* integer within [min, max] */
    T_BOOL,     /* on/off, true/false, yes/no, 1/0 */
    T_ENUM,     /* one of choices, stored as its index */
    T_DURATION, /* number with unit ms/s/m/h/d (bare: seconds), stored as ms */
    T_SIZE,     /* bytes with K/M/G suffix (powers of 1024) */
    T_MONEY,    /* dollars, exact to the nano-dollar, stored as int64 nano-dollars */
    T_DECIMAL,  /* a price rate: exact at 1e-24 USD, kept as text */
    T_LIST,     /* comma-separated words */
    T_ENDPOINT, /* a ZeroMQ endpoint: tcp://host:port, ipc://path, inproc://name */
    T_LISTEN,   /* host:port, [v6]:port, or empty / "off" to disable */
} type_t;

typedef struct {
    const char *name;
    type_t type;
    size_t off;
    const char *def;
    int64_t min, max;
    const char *const *choices;
    bool reload; /* may change on SIGHUP */
} key_t_;

typedef struct section section_t;
typedef int (*validate_fn)(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap);

struct section {
    const char *name;
    bool pattern; /* "name.*" sections, each an element of an array in cfg_t */
    size_t size;
    size_t off;       /* static: the struct in cfg_t; pattern: the array pointer */
    size_t count_off; /* pattern: the count in cfg_t */
    const key_t_ *keys;
    validate_fn validate;
    bool optional_name_default; /* pattern sections whose NAME is "default" allowed */
};

typedef struct cfg_origin {
    char *section;
    char *key;
    char *where;
} origin_t;

static const char *const log_formats[] = { "kv", "json", NULL };
static const char *const log_levels[] = { "error", "warn", "info", "debug", NULL };
static const char *const auth_modes[] = { "off", "optional", "required", NULL };
static const char *const gauge_signs[] = { "auto", "delta", "absolute", NULL };
static const char *const periods[] = { "day", "week", "month", NULL };
static const char *const notify_types[] = { "webhook", "slack", "telegram", "email",
                                            "alertmanager", NULL };

#define K(st, f) offsetof(st, f)
#define END { NULL, 0, 0, NULL, 0, 0, NULL, false }

static const key_t_ global_keys[] = {
    { "instance", T_STR, K(cfg_global_t, instance), "local", 0, 0, NULL, false },
    { "state_dir", T_STR, K(cfg_global_t, state_dir), "/var/lib/tokmon", 0, 0, NULL, false },
    { "timezone", T_STR, K(cfg_global_t, timezone), "UTC", 0, 0, NULL, false },
    { "log_format", T_ENUM, K(cfg_global_t, log_format), "kv", 0, 0, log_formats, true },
    { "log_level", T_ENUM, K(cfg_global_t, log_level), "info", 0, 0, log_levels, true },
    { "stats_interval", T_DURATION, K(cfg_global_t, stats_interval), "5s", 100, 3600000, NULL, true },
    END,
};

static const key_t_ bus_keys[] = {
    { "collectd", T_ENDPOINT, K(cfg_bus_t, collectd), "tcp://127.0.0.1:7701", 0, 0, NULL, false },
    { "aggregator", T_ENDPOINT, K(cfg_bus_t, aggregator), "tcp://127.0.0.1:7702", 0, 0, NULL, false },
    { "alerter", T_ENDPOINT, K(cfg_bus_t, alerter), "tcp://127.0.0.1:7703", 0, 0, NULL, false },
    { "pgwriter", T_ENDPOINT, K(cfg_bus_t, pgwriter), "tcp://127.0.0.1:7704", 0, 0, NULL, false },
    { "collectd_replay", T_ENDPOINT, K(cfg_bus_t, collectd_replay), "", 0, 0, NULL, false },
    { "aggregator_replay", T_ENDPOINT, K(cfg_bus_t, aggregator_replay), "", 0, 0, NULL, false },
    { "alerter_replay", T_ENDPOINT, K(cfg_bus_t, alerter_replay), "", 0, 0, NULL, false },
    { "pgwriter_replay", T_ENDPOINT, K(cfg_bus_t, pgwriter_replay), "", 0, 0, NULL, false },
    { "curve", T_BOOL, K(cfg_bus_t, curve), "off", 0, 0, NULL, false },
    { "curve_server_key", T_STR, K(cfg_bus_t, curve_server_key), "", 0, 0, NULL, false },
    { "curve_server_public", T_STR, K(cfg_bus_t, curve_server_public), "", 0, 0, NULL, false },
    { "curve_client_key", T_STR, K(cfg_bus_t, curve_client_key), "", 0, 0, NULL, false },
    { "curve_allow", T_STR, K(cfg_bus_t, curve_allow), "", 0, 0, NULL, true },
    { "spool", T_BOOL, K(cfg_bus_t, spool), "on", 0, 0, NULL, false },
    { "spool_fsync", T_DURATION, K(cfg_bus_t, spool_fsync), "1s", -1, 3600000, NULL, false },
    { "spool_segment_size", T_SIZE, K(cfg_bus_t, spool_segment_size), "64M", 65536, INT64_MAX, NULL, false },
    { "spool_segment_age", T_DURATION, K(cfg_bus_t, spool_segment_age), "1h", 1000, INT64_MAX, NULL, false },
    { "spool_max_size", T_SIZE, K(cfg_bus_t, spool_max_size), "1G", 65536, INT64_MAX, NULL, false },
    { "spool_max_age", T_DURATION, K(cfg_bus_t, spool_max_age), "7d", 1000, INT64_MAX, NULL, false },
    { "sndhwm", T_INT, K(cfg_bus_t, sndhwm), "100000", 0, INT_MAX, NULL, false },
    { "rcvhwm", T_INT, K(cfg_bus_t, rcvhwm), "100000", 0, INT_MAX, NULL, false },
    END,
};

static const key_t_ collectd_keys[] = {
    { "udp", T_LISTEN, K(cfg_collectd_t, udp), "127.0.0.1:8125", 0, 0, NULL, false },
    { "tcp", T_LISTEN, K(cfg_collectd_t, tcp), "127.0.0.1:8125", 0, 0, NULL, false },
    { "unix", T_STR, K(cfg_collectd_t, unix_path), "", 0, 0, NULL, false },
    { "src", T_STR, K(cfg_collectd_t, src), "", 0, 0, NULL, false },
    { "prices", T_STR, K(cfg_collectd_t, prices), "/usr/share/tokmon/model_prices.json", 0, 0, NULL, true },
    { "auth", T_ENUM, K(cfg_collectd_t, auth), "off", 0, 0, auth_modes, true },
    { "auth_keys", T_STR, K(cfg_collectd_t, auth_keys), "", 0, 0, NULL, true },
    { "auth_skew", T_DURATION, K(cfg_collectd_t, auth_skew), "30s", 1, 86400000, NULL, true },
    { "replay_guard", T_INT, K(cfg_collectd_t, replay_guard), "1000000", 1000, 100000000, NULL, false },
    { "rcvbuf", T_SIZE, K(cfg_collectd_t, rcvbuf), "32M", 4096, INT_MAX, NULL, false },
    { "batch_max", T_INT, K(cfg_collectd_t, batch_max), "256", 1, 65536, NULL, true },
    { "flush_interval", T_DURATION, K(cfg_collectd_t, flush_interval), "2ms", 1, 1000, NULL, true },
    { "max_line", T_SIZE, K(cfg_collectd_t, max_line), "64K", 256, 16777216, NULL, false },
    { "tcp_max_clients", T_INT, K(cfg_collectd_t, tcp_max_clients), "1024", 1, 1000000, NULL, false },
    { "tcp_idle_timeout", T_DURATION, K(cfg_collectd_t, tcp_idle_timeout), "5m", 1000, 86400000, NULL, true },
    { "tcp_block_timeout", T_DURATION, K(cfg_collectd_t, tcp_block_timeout), "50ms", 1, 60000, NULL, true },
    { "gauge_sign", T_ENUM, K(cfg_collectd_t, gauge_sign), "auto", 0, 0, gauge_signs, true },
    { "provider_aliases", T_LIST, K(cfg_collectd_t, provider_aliases), "", 0, 0, NULL, true },
    { "max_tags", T_INT, K(cfg_collectd_t, max_tags), "16", 0, 32, NULL, true },
    { "max_tag_len", T_INT, K(cfg_collectd_t, max_tag_len), "128", 1, 1024, NULL, true },
    { "log_reject_every", T_INT, K(cfg_collectd_t, log_reject_every), "100", 1, 1000000000, NULL, true },
    END,
};

static const key_t_ aggregator_keys[] = {
    { "query", T_ENDPOINT, K(cfg_aggregator_t, query), "tcp://127.0.0.1:7720", 0, 0, NULL, false },
    { "src", T_STR, K(cfg_aggregator_t, src), "", 0, 0, NULL, false },
    { "snapshot_interval", T_DURATION, K(cfg_aggregator_t, snapshot_interval), "30s", 100, 86400000, NULL, true },
    { "lateness", T_DURATION, K(cfg_aggregator_t, lateness), "5m", 0, 7 * 86400000LL, NULL, false },
    { "close_delay", T_DURATION, K(cfg_aggregator_t, close_delay), "2s", 0, 3600000, NULL, false },
    { "history", T_DURATION, K(cfg_aggregator_t, history), "24h", 60000, 31 * 86400000LL, NULL, false },
    { "budget_interval", T_DURATION, K(cfg_aggregator_t, budget_interval), "5s", 100, 3600000, NULL, true },
    { "quota_sweep", T_DURATION, K(cfg_aggregator_t, quota_sweep), "10s", 100, 3600000, NULL, true },
    { "rollup_users", T_BOOL, K(cfg_aggregator_t, rollup_users), "on", 0, 0, NULL, false },
    { "statsd_interval", T_DURATION, K(cfg_aggregator_t, statsd_interval), "10s", 100, 3600000, NULL, false },
    { "statsd_max_series", T_INT, K(cfg_aggregator_t, statsd_max_series), "100000", 1, 100000000, NULL, true },
    { "statsd_max_set", T_INT, K(cfg_aggregator_t, statsd_max_set), "100000", 1, 100000000, NULL, true },
    { "statsd_idle", T_INT, K(cfg_aggregator_t, statsd_idle), "6", 1, 1000000, NULL, true },
    END,
};

#define LIMIT_KEYS(st, pre, dt, mt, wt, du, mu, wu, wp, lo)                                   \
    { "daily_tokens", T_INT, K(st, pre daily_tokens), dt, lo, INT64_MAX, NULL, true },         \
    { "monthly_tokens", T_INT, K(st, pre monthly_tokens), mt, lo, INT64_MAX, NULL, true },     \
    { "window_tokens", T_INT, K(st, pre window_tokens), wt, lo, INT64_MAX, NULL, true },       \
    { "daily_usd", T_MONEY, K(st, pre daily_nusd), du, 0, 0, NULL, true },                     \
    { "monthly_usd", T_MONEY, K(st, pre monthly_nusd), mu, 0, 0, NULL, true },                 \
    { "window_usd", T_MONEY, K(st, pre window_nusd), wu, 0, 0, NULL, true },                   \
    { "warn_pct", T_INT, K(st, pre warn_pct), wp, lo, 100, NULL, true }

static const key_t_ quota_keys[] = {
    { "window", T_DURATION, K(cfg_quota_t, window), "5h", 60000, 31 * 86400000LL, NULL, false },
    LIMIT_KEYS(cfg_quota_t, lim., "100000", "2000000", "0", "0", "0", "0", "80", 0),
    END,
};

static const key_t_ account_quota_keys[] = {
    LIMIT_KEYS(cfg_limits_t, , "0", "0", "0", "0", "0", "0", "80", 0),
    END,
};

/* overrides: -1 (and an empty dollar amount) inherit the defaults */
static const key_t_ quota_override_keys[] = {
    LIMIT_KEYS(cfg_quota_override_t, lim., "-1", "-1", "-1", "", "", "", "-1", -1),
    END,
};
#undef LIMIT_KEYS

static const key_t_ budget_keys[] = {
    { "scope", T_STR, K(cfg_budget_t, scope), "global", 0, 0, NULL, true },
    { "period", T_ENUM, K(cfg_budget_t, period), "day", 0, 0, periods, true },
    { "limit_usd", T_MONEY, K(cfg_budget_t, limit_nusd), "", 0, 0, NULL, true },
    { "warn_pct", T_INT, K(cfg_budget_t, warn_pct), "80", 1, 100, NULL, true },
    { "rollover", T_BOOL, K(cfg_budget_t, rollover), "off", 0, 0, NULL, true },
    { "rollover_cap_usd", T_MONEY, K(cfg_budget_t, rollover_cap_nusd), "", 0, 0, NULL, true },
    END,
};

static const key_t_ pgwriter_keys[] = {
    { "database", T_STR, K(cfg_pgwriter_t, database), "", 0, 0, NULL, false },
    { "src", T_STR, K(cfg_pgwriter_t, src), "", 0, 0, NULL, false },
    { "batch_rows", T_INT, K(cfg_pgwriter_t, batch_rows), "10000", 1, 1000000, NULL, false },
    { "batch_time", T_DURATION, K(cfg_pgwriter_t, batch_time), "500ms", 1, 60000, NULL, false },
    { "raw_retention_days", T_INT, K(cfg_pgwriter_t, raw_retention_days), "90", 1, 36500, NULL, false },
    { "partitions_ahead", T_INT, K(cfg_pgwriter_t, partitions_ahead), "7", 1, 366, NULL, false },
    { "rollup_minute_days", T_INT, K(cfg_pgwriter_t, rollup_minute_days), "7", 1, 36500, NULL, false },
    { "rollup_hour_days", T_INT, K(cfg_pgwriter_t, rollup_hour_days), "365", 1, 36500, NULL, false },
    { "reconnect_max", T_DURATION, K(cfg_pgwriter_t, reconnect_max), "30s", 100, 3600000, NULL, false },
    { "maintenance_interval", T_DURATION, K(cfg_pgwriter_t, maintenance_interval), "1h", 1000, 86400000, NULL, false },
    END,
};

static const key_t_ exporter_keys[] = {
    { "http", T_LISTEN, K(cfg_exporter_t, http), "127.0.0.1:9464", 0, 0, NULL, false },
    { "api_key_file", T_STR, K(cfg_exporter_t, api_key_file), "", 0, 0, NULL, false },
    { "database", T_STR, K(cfg_exporter_t, database), "", 0, 0, NULL, false },
    { "query_timeout", T_DURATION, K(cfg_exporter_t, query_timeout), "2s", 10, 60000, NULL, false },
    { "max_series", T_INT, K(cfg_exporter_t, max_series), "10000", 10, 10000000, NULL, false },
    { "user_labels", T_BOOL, K(cfg_exporter_t, user_labels), "off", 0, 0, NULL, false },
    { "account_labels", T_BOOL, K(cfg_exporter_t, account_labels), "off", 0, 0, NULL, false },
    { "top_k", T_INT, K(cfg_exporter_t, top_k), "20", 1, 10000, NULL, false },
    { "stream_buffer", T_INT, K(cfg_exporter_t, stream_buffer), "10000", 16, 10000000, NULL, false },
    { "env", T_STR, K(cfg_exporter_t, env), "", 0, 0, NULL, false },
    { "loki_url", T_STR, K(cfg_exporter_t, loki_url), "", 0, 0, NULL, false },
    { "loki_user", T_STR, K(cfg_exporter_t, loki_user), "", 0, 0, NULL, false },
    { "loki_password_file", T_STR, K(cfg_exporter_t, loki_password_file), "", 0, 0, NULL, false },
    { "loki_tenant", T_STR, K(cfg_exporter_t, loki_tenant), "", 0, 0, NULL, false },
    { "loki_batch_size", T_SIZE, K(cfg_exporter_t, loki_batch_size), "1M", 1024, 100000000, NULL, false },
    { "loki_batch_wait", T_DURATION, K(cfg_exporter_t, loki_batch_wait), "1s", 1, 600000, NULL, false },
    { "loki_queue", T_INT, K(cfg_exporter_t, loki_queue), "100000", 1, 100000000, NULL, false },
    { "loki_timeout", T_DURATION, K(cfg_exporter_t, loki_timeout), "10s", 100, 600000, NULL, false },
    { "loki_retries", T_INT, K(cfg_exporter_t, loki_retries), "10", 0, 1000, NULL, false },
    { "loki_backoff_max", T_DURATION, K(cfg_exporter_t, loki_backoff_max), "30s", 10, 3600000, NULL, false },
    { "remote_write_url", T_STR, K(cfg_exporter_t, remote_write_url), "", 0, 0, NULL, false },
    { "remote_write_user", T_STR, K(cfg_exporter_t, remote_write_user), "", 0, 0, NULL, false },
    { "remote_write_password_file", T_STR, K(cfg_exporter_t, remote_write_password_file), "", 0, 0, NULL, false },
    { "remote_write_bearer_file", T_STR, K(cfg_exporter_t, remote_write_bearer_file), "", 0, 0, NULL, false },
    { "remote_write_interval", T_DURATION, K(cfg_exporter_t, remote_write_interval), "15s", 100, 3600000, NULL, false },
    { "remote_write_timeout", T_DURATION, K(cfg_exporter_t, remote_write_timeout), "10s", 100, 600000, NULL, false },
    { "remote_write_retries", T_INT, K(cfg_exporter_t, remote_write_retries), "5", 0, 1000, NULL, false },
    { "remote_write_backoff_max", T_DURATION, K(cfg_exporter_t, remote_write_backoff_max), "30s", 10, 3600000, NULL, false },
    END,
};

static const key_t_ alerter_keys[] = {
    { "src", T_STR, K(cfg_alerter_t, src), "", 0, 0, NULL, false },
    { "control", T_ENDPOINT, K(cfg_alerter_t, control), "tcp://127.0.0.1:7730", 0, 0, NULL, false },
    { "snapshot_interval", T_DURATION, K(cfg_alerter_t, snapshot_interval), "30s", 100, 86400000, NULL, false },
    { "eval_interval", T_DURATION, K(cfg_alerter_t, eval_interval), "1s", 10, 600000, NULL, false },
    { "group_by", T_LIST, K(cfg_alerter_t, group_by), "alertname", 0, 0, NULL, false },
    { "group_wait", T_DURATION, K(cfg_alerter_t, group_wait), "30s", 0, 86400000, NULL, false },
    { "group_interval", T_DURATION, K(cfg_alerter_t, group_interval), "5m", 10, 86400000, NULL, false },
    { "repeat_interval", T_DURATION, K(cfg_alerter_t, repeat_interval), "4h", 10, 30 * 86400000LL, NULL, false },
    { "resend_interval", T_DURATION, K(cfg_alerter_t, resend_interval), "1m", 10, 86400000, NULL, false },
    { "receivers", T_LIST, K(cfg_alerter_t, receivers), "", 0, 0, NULL, false },
    { "budget", T_BOOL, K(cfg_alerter_t, budget), "on", 0, 0, NULL, false },
    { "quota", T_BOOL, K(cfg_alerter_t, quota), "on", 0, 0, NULL, false },
    { "bus_gap", T_BOOL, K(cfg_alerter_t, bus_gap), "on", 0, 0, NULL, false },
    { "high_cost_call_usd", T_MONEY, K(cfg_alerter_t, high_cost_call_nusd), "0.50", 0, 0, NULL, false },
    { "high_cost_call_hold", T_DURATION, K(cfg_alerter_t, high_cost_call_hold), "5m", 0, 86400000, NULL, false },
    { "error_pct", T_INT, K(cfg_alerter_t, error_pct), "5", 0, 100, NULL, false },
    { "error_window", T_DURATION, K(cfg_alerter_t, error_window), "5m", 60000, 86400000, NULL, false },
    { "error_for", T_DURATION, K(cfg_alerter_t, error_for), "5m", 0, 86400000, NULL, false },
    { "error_min_requests", T_INT, K(cfg_alerter_t, error_min_requests), "20", 0, 1000000000, NULL, false },
    { "burn_tokens_per_hour", T_INT, K(cfg_alerter_t, burn_tokens_per_hour), "500000", 0, INT64_MAX, NULL, false },
    { "burn_for", T_DURATION, K(cfg_alerter_t, burn_for), "15m", 0, 86400000, NULL, false },
    { "daily_cost_usd", T_MONEY, K(cfg_alerter_t, daily_cost_nusd), "0", 0, 0, NULL, false },
    { "cost_rate_usd", T_MONEY, K(cfg_alerter_t, cost_rate_nusd), "0", 0, 0, NULL, false },
    { "latency_p95", T_DURATION, K(cfg_alerter_t, latency_p95), "0", 0, 3600000, NULL, false },
    { "latency_for", T_DURATION, K(cfg_alerter_t, latency_for), "5m", 0, 86400000, NULL, false },
    { "no_events", T_DURATION, K(cfg_alerter_t, no_events), "0", 0, 30 * 86400000LL, NULL, false },
    { "stage_silent", T_DURATION, K(cfg_alerter_t, stage_silent), "2m", 0, 86400000, NULL, false },
    { "digest_hour", T_INT, K(cfg_alerter_t, digest_hour), "-1", -1, 23, NULL, false },
    { "digest_receivers", T_LIST, K(cfg_alerter_t, digest_receivers), "", 0, 0, NULL, false },
    END,
};

static const key_t_ notify_keys[] = {
    { "type", T_ENUM, K(cfg_notify_t, type), "webhook", 0, 0, notify_types, false },
    { "url", T_STR, K(cfg_notify_t, url), "", 0, 0, NULL, false },
    { "token_file", T_STR, K(cfg_notify_t, token_file), "", 0, 0, NULL, false },
    { "chat_id", T_STR, K(cfg_notify_t, chat_id), "", 0, 0, NULL, false },
    { "from", T_STR, K(cfg_notify_t, from), "", 0, 0, NULL, false },
    { "to", T_LIST, K(cfg_notify_t, to), "", 0, 0, NULL, false },
    { "user", T_STR, K(cfg_notify_t, user), "", 0, 0, NULL, false },
    { "password_file", T_STR, K(cfg_notify_t, password_file), "", 0, 0, NULL, false },
    { "starttls", T_BOOL, K(cfg_notify_t, starttls), "on", 0, 0, NULL, false },
    { "ca_file", T_STR, K(cfg_notify_t, ca_file), "", 0, 0, NULL, false },
    { "severity", T_STR, K(cfg_notify_t, severity), "info", 0, 0, NULL, false },
    { "send_resolved", T_BOOL, K(cfg_notify_t, send_resolved), "on", 0, 0, NULL, false },
    { "timeout", T_DURATION, K(cfg_notify_t, timeout), "10s", 100, 600000, NULL, false },
    { "retries", T_INT, K(cfg_notify_t, retries), "8", 0, 1000, NULL, false },
    { "backoff_max", T_DURATION, K(cfg_notify_t, backoff_max), "1m", 10, 3600000, NULL, false },
    END,
};

static const key_t_ rule_keys[] = {
    { "aggregate", T_STR, K(cfg_rule_t, aggregate), "", 0, 0, NULL, false },
    { "window", T_DURATION, K(cfg_rule_t, window), "5m", 60000, 31 * 86400000LL, NULL, false },
    { "by", T_STR, K(cfg_rule_t, by), "", 0, 0, NULL, false },
    { "op", T_STR, K(cfg_rule_t, op), ">", 0, 0, NULL, false },
    { "threshold", T_STR, K(cfg_rule_t, threshold), "", 0, 0, NULL, false },
    { "for", T_DURATION, K(cfg_rule_t, for_ms), "0", 0, 86400000, NULL, false },
    { "min_requests", T_INT, K(cfg_rule_t, min_requests), "0", 0, 1000000000, NULL, false },
    { "severity", T_STR, K(cfg_rule_t, severity), "warning", 0, 0, NULL, false },
    { "summary", T_STR, K(cfg_rule_t, summary), "", 0, 0, NULL, false },
    END,
};

#define PRICE_KEY(e, n) { n, T_DECIMAL, K(cfg_price_t, rate[PRICE_F_##e]), NULL, 0, 0, NULL, true },
static const key_t_ price_keys[] = {
    { "litellm_provider", T_STR, K(cfg_price_t, litellm_provider), NULL, 0, 0, NULL, true },
    PRICE_FIELDS(PRICE_KEY) END,
};
#undef PRICE_KEY

static void list_free(cfg_list_t *l);
static int validate_global(cfg_t *, void *, const char *, char *, size_t);
static int validate_bus(cfg_t *, void *, const char *, char *, size_t);
static int validate_collectd(cfg_t *, void *, const char *, char *, size_t);
static int validate_budget(cfg_t *, void *, const char *, char *, size_t);
static int validate_quota(cfg_t *, void *, const char *, char *, size_t);
static int validate_limits(cfg_t *, void *, const char *, char *, size_t);
static int validate_quota_override(cfg_t *, void *, const char *, char *, size_t);
static int validate_notify(cfg_t *, void *, const char *, char *, size_t);
static int validate_price(cfg_t *, void *, const char *, char *, size_t);
static int validate_rule(cfg_t *, void *, const char *, char *, size_t);

#define STATIC_SECTION(nm, st, field, keys, v) \
    { nm, false, sizeof(st), offsetof(cfg_t, field), 0, keys, v, false }
#define PATTERN_SECTION(nm, st, arr, cnt, keys, v) \
    { nm, true, sizeof(st), offsetof(cfg_t, arr), offsetof(cfg_t, cnt), keys, v, false }

static const section_t sections[] = {
    STATIC_SECTION("global", cfg_global_t, global, global_keys, validate_global),
    STATIC_SECTION("bus", cfg_bus_t, bus, bus_keys, validate_bus),
    STATIC_SECTION("collectd", cfg_collectd_t, collectd, collectd_keys, validate_collectd),
    STATIC_SECTION("aggregator", cfg_aggregator_t, aggregator, aggregator_keys, NULL),
    STATIC_SECTION("quota", cfg_quota_t, quota, quota_keys, validate_quota),
    STATIC_SECTION("quota.account", cfg_limits_t, account_quota, account_quota_keys, validate_limits),
    PATTERN_SECTION("quota.user", cfg_quota_override_t, user_quotas, nuser_quotas,
                    quota_override_keys, validate_quota_override),
    PATTERN_SECTION("quota.account", cfg_quota_override_t, account_quotas, naccount_quotas,
                    quota_override_keys, validate_quota_override),
    STATIC_SECTION("pgwriter", cfg_pgwriter_t, pgwriter, pgwriter_keys, NULL),
    STATIC_SECTION("exporter", cfg_exporter_t, exporter, exporter_keys, NULL),
    STATIC_SECTION("alerter", cfg_alerter_t, alerter, alerter_keys, NULL),
    PATTERN_SECTION("budget", cfg_budget_t, budgets, nbudgets, budget_keys, validate_budget),
    PATTERN_SECTION("notify", cfg_notify_t, notifies, nnotifies, notify_keys, validate_notify),
    PATTERN_SECTION("rule", cfg_rule_t, rules, nrules, rule_keys, validate_rule),
    PATTERN_SECTION("price", cfg_price_t, prices, nprices, price_keys, validate_price),
};
#define NSECTIONS (sizeof sections / sizeof sections[0])

/* ---- raw parse ---------------------------------------------------------- */

typedef struct {
    char *section;
    char *key;
    char *value;
    int line;
    bool used;
} entry_t;

typedef struct {
    char *name;
    int line;
} sect_seen_t;

typedef struct {
    const char *name; /* file name for messages */
    const char *text;
    size_t len, pos;
    int line;
    size_t line_start, line_len; /* the current line in text, for quoted values */
    entry_t *entries;
    size_t nentries;
    sect_seen_t *sects;
    size_t nsects;
    char *err;
    size_t errcap, errlen;
    int nerr;
} parse_t;

static void add_err(parse_t *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_err(parse_t *ps, const char *fmt, ...)
{
    ps->nerr++;
    if (!ps->err || ps->errlen + 1 >= ps->errcap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(ps->err + ps->errlen, ps->errcap - ps->errlen, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    ps->errlen += (size_t)n;
    if (ps->errlen >= ps->errcap - 1) {
        ps->errlen = ps->errcap - 1;
        return;
    }
    ps->err[ps->errlen++] = '\n';
    ps->err[ps->errlen] = '\0';
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* inih reads the text through this, so each handler call knows its line. */
static char *reader(char *str, int num, void *stream)
{
    parse_t *ps = stream;
    if (ps->pos >= ps->len)
        return NULL;
    size_t i = 0;
    ps->line++;
    /* leading blanks carry no meaning here: without this inih would take an
     * indented "key = value" for a continuation of the previous value */
    while (ps->pos < ps->len && (ps->text[ps->pos] == ' ' || ps->text[ps->pos] == '\t'))
        ps->pos++;
    const char *start = ps->text + ps->pos;
    ps->line_start = ps->pos;
    while (ps->pos < ps->len && i < (size_t)num - 1) {
        char c = ps->text[ps->pos++];
        if (c == '\0') {
            add_err(ps, "%s:%d: NUL byte in file", ps->name, ps->line);
            c = ' ';
        }
        str[i++] = c;
        if (c == '\n')
            break;
    }
    str[i] = '\0';
    ps->line_len = ps->pos - ps->line_start;
    if (i == (size_t)num - 1 && str[i - 1] != '\n' && ps->pos < ps->len) {
        add_err(ps, "%s:%d: line longer than %d bytes", ps->name, ps->line, num - 2);
        while (ps->pos < ps->len && ps->text[ps->pos++] != '\n') {
        }
        str[0] = '\0';
        return str;
    }
    /* note section headers ourselves: inih does not report empty sections */
    char tmp[256];
    size_t n = (size_t)(ps->text + ps->pos - start);
    if (n < sizeof tmp) {
        memcpy(tmp, start, n);
        tmp[n] = '\0';
        char *t = trim(tmp);
        if (t[0] == '[') {
            char *rb = strchr(t, ']');
            if (rb) {
                *rb = '\0';
                ps->sects = xreallocarray(ps->sects, ps->nsects + 1, sizeof *ps->sects);
                ps->sects[ps->nsects++] = (sect_seen_t){ xstrdup(trim(t + 1)), ps->line };
            }
        }
    }
    return str;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    parse_t *ps = user;
    if (!section[0]) {
        add_err(ps, "%s:%d: key '%s' outside of any [section]", ps->name, ps->line, name);
        return 1;
    }
    for (size_t i = 0; i < ps->nentries; i++) {
        entry_t *e = &ps->entries[i];
        if (!strcmp(e->section, section) && !strcmp(e->key, name)) {
            add_err(ps, "%s:%d: [%s] %s: set twice (first at line %d)", ps->name, ps->line,
                    section, name, e->line);
            return 1;
        }
    }
    char *v;
    if (value[0] == '"') {
        /* "quoted" keeps spaces and ';': inih has already cut the value at
         * " ;", so read it again from the raw line, up to the closing quote */
        const char *l = ps->text + ps->line_start, *le = l + ps->line_len;
        const char *q = l;
        while (q < le && *q != '=' && *q != ':')
            q++;
        while (q < le && *q != '"')
            q++;
        const char *close = q < le ? memchr(q + 1, '"', (size_t)(le - q - 1)) : NULL;
        const char *after = close ? close + 1 : le;
        while (after < le && isspace((unsigned char)*after))
            after++;
        if (!close || (after < le && *after != ';')) {
            add_err(ps, "%s:%d: [%s] %s: %s", ps->name, ps->line, section, name,
                    close ? "text after the closing quote" : "no closing quote");
            return 1;
        }
        v = xstrndup(q + 1, (size_t)(close - q - 1));
    } else {
        v = xstrdup(value);
    }
    ps->entries = xreallocarray(ps->entries, ps->nentries + 1, sizeof *ps->entries);
    ps->entries[ps->nentries++] =
        (entry_t){ xstrdup(section), xstrdup(name), v, ps->line, false };
    return 1;
}

/* ---- typed values ------------------------------------------------------- */

static int parse_int(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || isspace((unsigned char)*v))
        return -1;
    *out = x;
    return 0;
}

static int parse_scaled(const char *v, const char *const *units, const int64_t *mult,
                        int64_t bare, int64_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*v))
        return -1;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno)
        return -1;
    int64_t m = bare;
    if (*end) {
        m = 0;
        for (size_t i = 0; units[i]; i++)
            if (!strcasecmp(end, units[i]))
                m = mult[i];
        if (!m)
            return -1;
    }
    if (x > (unsigned long long)(INT64_MAX / m))
        return -1;
    *out = (int64_t)x * m;
    return 0;
}

static bool endpoint_one_ok(const char *v);

/* An endpoint, or several separated by commas. */
static bool endpoint_ok(const char *v)
{
    char *copy = xstrdup(v), *save = NULL;
    bool ok = true;
    int n = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        t = trim(t);
        ok &= endpoint_one_ok(t);
        n++;
    }
    free(copy);
    return ok && n > 0;
}

static bool endpoint_one_ok(const char *v)
{
    if (!strncmp(v, "tcp://", 6)) {
        const char *hp = v + 6;
        const char *colon = strrchr(hp, ':');
        if (!colon || colon == hp || !colon[1])
            return false;
        for (const char *p = colon + 1; *p; p++)
            if (!isdigit((unsigned char)*p) && !(*p == '*' && p == colon + 1 && !p[1]))
                return false;
        return colon[1] == '*' || strtol(colon + 1, NULL, 10) <= 65535;
    }
    if (!strncmp(v, "ipc://", 6) || !strncmp(v, "inproc://", 9))
        return strchr(v, '/')[2] != '\0';
    return false;
}

static bool listen_ok(const char *v)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v || !colon[1])
        return false;
    if (v[0] == '[' && colon[-1] != ']')
        return false;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    return !*end && p >= 0 && p <= 65535;
}

static int set_value(const key_t_ *k, void *sect, const char *val, char *err, size_t cap)
{
    void *f = (char *)sect + k->off;
    static const char *const dur_units[] = { "ms", "s", "m", "h", "d", NULL };
    static const int64_t dur_mult[] = { 1, 1000, 60000, 3600000, 86400000 };
    static const char *const size_units[] = { "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", NULL };
    static const int64_t size_mult[] = { 1, 1024, 1024, 1024, 1048576, 1048576, 1048576,
                                         1073741824, 1073741824, 1073741824 };
    int64_t x;
    switch (k->type) {
    case T_STR:
        free(*(char **)f);
        *(char **)f = xstrdup(val);
        return 0;
    case T_INT:
        if (parse_int(val, &x) < 0) {
            snprintf(err, cap, "'%s' is not an integer", val);
            return -1;
        }
        goto range;
    case T_DURATION:
        if (k->min < 0 && !strcmp(val, "off")) {
            x = -1;
            goto range;
        }
        if (parse_scaled(val, dur_units, dur_mult, 1000, &x) < 0) {
            snprintf(err, cap, "'%s' is not a duration (e.g. 500ms, 5s, 2m, 1h, 1d)", val);
            return -1;
        }
        goto range;
    case T_SIZE:
        if (parse_scaled(val, size_units, size_mult, 1, &x) < 0) {
            snprintf(err, cap, "'%s' is not a size (e.g. 65536, 64K, 32M, 1G)", val);
            return -1;
        }
        goto range;
    case T_BOOL: {
        static const char *const yes[] = { "on", "true", "yes", "1" };
        static const char *const no[] = { "off", "false", "no", "0" };
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(val, yes[i])) {
                *(bool *)f = true;
                return 0;
            }
            if (!strcasecmp(val, no[i])) {
                *(bool *)f = false;
                return 0;
            }
        }
        snprintf(err, cap, "'%s' is not on/off", val);
        return -1;
    }
    case T_ENUM:
        for (int i = 0; k->choices[i]; i++) {
            if (!strcmp(val, k->choices[i])) {
                *(int *)f = i;
                return 0;
            }
        }
        {
            size_t o = (size_t)snprintf(err, cap, "'%s' is not one of", val);
            for (int i = 0; k->choices[i] && o < cap; i++)
                o += (size_t)snprintf(err + o, cap - o, "%s%s", i ? ", " : " ", k->choices[i]);
        }
        return -1;
    case T_MONEY: {
        __int128 v;
        if (!*val) {
            *(int64_t *)f = -1; /* unset; validate() says whether that is allowed */
            return 0;
        }
        if (dec_parse(val, strlen(val), 9, DEC_EXACT, &v) < 0 || v < 0 || v > INT64_MAX) {
            snprintf(err, cap, "'%s' is not a non-negative dollar amount exact to the nano-dollar", val);
            return -1;
        }
        *(int64_t *)f = (int64_t)v;
        return 0;
    }
    case T_DECIMAL: {
        __int128 v;
        /* the cap of the price table (2^80 units of 1e-24 USD, about $1.2 a token) */
        if (dec_parse(val, strlen(val), 24, DEC_EXACT, &v) < 0 || v < 0 || (v >> 80) != 0) {
            snprintf(err, cap,
                     "'%s' is not a rate in USD per token from 0 to 1.2, exact to 1e-24", val);
            return -1;
        }
        free(*(char **)f);
        *(char **)f = xstrdup(val);
        return 0;
    }
    case T_LIST: {
        cfg_list_t *l = f;
        for (size_t i = 0; i < l->n; i++)
            free(l->v[i]);
        free(l->v);
        *l = (cfg_list_t){ 0 };
        char *copy = xstrdup(val);
        char *save = NULL;
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            char *t = trim(tok);
            if (!*t)
                continue;
            l->v = xreallocarray(l->v, l->n + 1, sizeof *l->v);
            l->v[l->n++] = xstrdup(t);
        }
        free(copy);
        return 0;
    }
    case T_ENDPOINT:
        if (*val && !endpoint_ok(val)) {
            snprintf(err, cap, "'%s' is not a bus endpoint (tcp://host:port, ipc://path)", val);
            return -1;
        }
        free(*(char **)f);
        *(char **)f = xstrdup(val);
        return 0;
    case T_LISTEN:
        if (!strcmp(val, "off"))
            val = "";
        if (*val && !listen_ok(val)) {
            snprintf(err, cap, "'%s' is not host:port (or off)", val);
            return -1;
        }
        free(*(char **)f);
        *(char **)f = xstrdup(val);
        return 0;
    }
    snprintf(err, cap, "internal: unknown type");
    return -1;
range:
    if (x < k->min || x > k->max) {
        snprintf(err, cap, "%s is out of range [%lld, %lld]", val, (long long)k->min,
                 (long long)k->max);
        return -1;
    }
    *(int64_t *)f = x;
    return 0;
}

static void free_value(const key_t_ *k, void *sect)
{
    void *f = (char *)sect + k->off;
    switch (k->type) {
    case T_STR:
    case T_DECIMAL:
    case T_ENDPOINT:
    case T_LISTEN:
        free(*(char **)f);
        *(char **)f = NULL;
        break;
    case T_LIST: {
        cfg_list_t *l = f;
        for (size_t i = 0; i < l->n; i++)
            free(l->v[i]);
        free(l->v);
        *l = (cfg_list_t){ 0 };
        break;
    }
    default:
        break;
    }
}

static bool value_equal(const key_t_ *k, const void *a, const void *b)
{
    const void *fa = (const char *)a + k->off, *fb = (const char *)b + k->off;
    switch (k->type) {
    case T_STR:
    case T_DECIMAL:
    case T_ENDPOINT:
    case T_LISTEN: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (!sa && !sb) || (sa && sb && !strcmp(sa, sb));
    }
    case T_LIST: {
        const cfg_list_t *la = fa, *lb = fb;
        if (la->n != lb->n)
            return false;
        for (size_t i = 0; i < la->n; i++)
            if (strcmp(la->v[i], lb->v[i]))
                return false;
        return true;
    }
    case T_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case T_ENUM:
        return *(const int *)fa == *(const int *)fb;
    default:
        return *(const int64_t *)fa == *(const int64_t *)fb;
    }
}

/* ---- environment -------------------------------------------------------- */

static void env_name(const char *section, const char *key, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "TOKMON_");
    for (const char *s = section; *s && o + 1 < cap; s++)
        out[o++] = isalnum((unsigned char)*s) ? (char)toupper((unsigned char)*s) : '_';
    if (o + 1 < cap)
        out[o++] = '_';
    for (const char *s = key; *s && o + 1 < cap; s++)
        out[o++] = isalnum((unsigned char)*s) ? (char)toupper((unsigned char)*s) : '_';
    out[o] = '\0';
}

static const char *env_get(char *const *envp, const char *name, bool *used, size_t nenv)
{
    if (!envp)
        return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < nenv; i++) {
        if (!strncmp(envp[i], name, n) && envp[i][n] == '=') {
            used[i] = true;
            return envp[i] + n + 1;
        }
    }
    return NULL;
}

/* ---- load --------------------------------------------------------------- */

static void add_origin(cfg_t *cfg, const char *section, const char *key, const char *where)
{
    cfg->origins = xreallocarray(cfg->origins, cfg->norigins + 1, sizeof *cfg->origins);
    cfg->origins[cfg->norigins++] = (origin_t){ xstrdup(section), xstrdup(key), xstrdup(where) };
}

static void add_warning(cfg_t *cfg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_warning(cfg_t *cfg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        return;
    cfg->warnings.v = xreallocarray(cfg->warnings.v, cfg->warnings.n + 1, sizeof(char *));
    cfg->warnings.v[cfg->warnings.n++] = s;
}

static const section_t *find_section(const char *name, const char **instance)
{
    for (size_t i = 0; i < NSECTIONS; i++) {
        const section_t *s = &sections[i];
        size_t n = strlen(s->name);
        if (!s->pattern && !strcmp(name, s->name)) {
            *instance = NULL;
            return s;
        }
        if (s->pattern && !strncmp(name, s->name, n) && name[n] == '.') {
            *instance = name + n + 1;
            return s;
        }
    }
    return NULL;
}

static int section_line(const parse_t *ps, const char *name)
{
    for (size_t i = 0; i < ps->nsects; i++)
        if (!strcmp(ps->sects[i].name, name))
            return ps->sects[i].line;
    return 0;
}

/* Fills one section instance: defaults, then the file, then the environment. */
static void fill_section(parse_t *ps, cfg_t *cfg, const section_t *s, void *sect,
                         const char *full, char *const *envp, bool *envused, size_t nenv)
{
    char err[256], where[512], ename[256];
    for (const key_t_ *k = s->keys; k->name; k++) {
        if (k->def && set_value(k, sect, k->def, err, sizeof err) < 0)
            add_err(ps, "internal: default of [%s] %s: %s", full, k->name, err);
        const char *val = NULL;
        env_name(full, k->name, ename, sizeof ename);
        const char *ev = env_get(envp, ename, envused, nenv);
        int line = 0;
        for (size_t i = 0; i < ps->nentries; i++) {
            entry_t *e = &ps->entries[i];
            if (!strcmp(e->section, full) && !strcmp(e->key, k->name)) {
                e->used = true;
                val = e->value;
                line = e->line;
            }
        }
        if (ev) {
            val = ev;
            snprintf(where, sizeof where, "env %s", ename);
        } else if (val) {
            snprintf(where, sizeof where, "%s:%d", ps->name, line);
        } else {
            continue;
        }
        add_origin(cfg, full, k->name, where);
        if (set_value(k, sect, val, err, sizeof err) < 0)
            add_err(ps, "%s: [%s] %s: %s", where, full, k->name, err);
    }
}

static void free_section(const section_t *s, void *sect)
{
    for (const key_t_ *k = s->keys; k->name; k++)
        free_value(k, sect);
}

static cfg_t *load(parse_t *ps, char *const *envp)
{
    cfg_t *cfg = xcalloc(1, sizeof *cfg);
    cfg->path = xstrdup(ps->name);

    int rc = ini_parse_stream(reader, ps, handler, ps);
    if (rc > 0)
        add_err(ps, "%s:%d: syntax error (expected [section] or key = value)", ps->name, rc);
    else if (rc < 0)
        add_err(ps, "%s: cannot parse", ps->name);

    size_t nenv = 0;
    while (envp && envp[nenv])
        nenv++;
    bool *envused = xcalloc(nenv + 1, sizeof *envused);

    /* unknown sections */
    for (size_t i = 0; i < ps->nsects; i++) {
        const char *inst;
        const section_t *s = find_section(ps->sects[i].name, &inst);
        if (!s)
            add_err(ps, "%s:%d: unknown section [%s]", ps->name, ps->sects[i].line,
                    ps->sects[i].name);
        else if (inst && !*inst)
            add_err(ps, "%s:%d: section [%s] needs a name after the dot", ps->name,
                    ps->sects[i].line, ps->sects[i].name);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(ps->sects[j].name, ps->sects[i].name))
                add_err(ps, "%s:%d: section [%s] appears twice (first at line %d)", ps->name,
                        ps->sects[i].line, ps->sects[i].name, ps->sects[j].line);
    }

    for (size_t si = 0; si < NSECTIONS; si++) {
        const section_t *s = &sections[si];
        if (!s->pattern) {
            void *sect = (char *)cfg + s->off;
            fill_section(ps, cfg, s, sect, s->name, envp, envused, nenv);
            continue;
        }
        void **arr = (void **)((char *)cfg + s->off);
        size_t *cnt = (size_t *)((char *)cfg + s->count_off);
        for (size_t i = 0; i < ps->nsects; i++) {
            const char *inst;
            if (find_section(ps->sects[i].name, &inst) != s || !inst || !*inst)
                continue;
            bool dup = false;
            for (size_t j = 0; j < i; j++)
                dup |= !strcmp(ps->sects[j].name, ps->sects[i].name);
            if (dup)
                continue;
            *arr = xreallocarray(*arr, *cnt + 1, s->size);
            void *sect = (char *)*arr + *cnt * s->size;
            memset(sect, 0, s->size);
            *(char **)sect = xstrdup(inst); /* every pattern struct starts with its name */
            (*cnt)++;
            fill_section(ps, cfg, s, sect, ps->sects[i].name, envp, envused, nenv);
        }
    }

    for (size_t i = 0; i < ps->nentries; i++) {
        const entry_t *e = &ps->entries[i];
        const char *inst;
        if (!e->used && find_section(e->section, &inst))
            add_err(ps, "%s:%d: [%s] unknown key '%s'", ps->name, e->line, e->section, e->key);
    }
    for (size_t i = 0; i < nenv; i++) {
        if (envused[i] || strncmp(envp[i], "TOKMON_", 7))
            continue;
        static const char *const known[] = { "TOKMON_CONFIG=", "TOKMON_BIN=", "TOKMON_REPO=" };
        bool skip = false;
        for (size_t j = 0; j < sizeof known / sizeof known[0]; j++)
            skip |= !strncmp(envp[i], known[j], strlen(known[j]));
        if (!skip) {
            const char *eq = strchr(envp[i], '=');
            add_warning(cfg, "environment variable %.*s matches no config key",
                        eq ? (int)(eq - envp[i]) : (int)strlen(envp[i]), envp[i]);
        }
    }
    free(envused);

    if (ps->nerr == 0) {
        char err[512];
        for (size_t si = 0; si < NSECTIONS; si++) {
            const section_t *s = &sections[si];
            if (!s->validate)
                continue;
            if (!s->pattern) {
                if (s->validate(cfg, (char *)cfg + s->off, s->name, err, sizeof err) < 0)
                    add_err(ps, "%s:%d: [%s] %s", ps->name, section_line(ps, s->name), s->name,
                            err);
                continue;
            }
            void *arr = *(void **)((char *)cfg + s->off);
            size_t cnt = *(size_t *)((char *)cfg + s->count_off);
            for (size_t i = 0; i < cnt; i++) {
                void *sect = (char *)arr + i * s->size;
                char full[300];
                snprintf(full, sizeof full, "%s.%s", s->name, *(char **)sect);
                if (s->validate(cfg, sect, *(char **)sect, err, sizeof err) < 0)
                    add_err(ps, "%s:%d: [%s] %s", ps->name, section_line(ps, full), full, err);
            }
        }
    }

    if (ps->nerr) {
        cfg_destroy(&cfg);
        return NULL;
    }
    return cfg;
}

static void parse_free(parse_t *ps)
{
    for (size_t i = 0; i < ps->nentries; i++) {
        free(ps->entries[i].section);
        free(ps->entries[i].key);
        free(ps->entries[i].value);
    }
    free(ps->entries);
    for (size_t i = 0; i < ps->nsects; i++)
        free(ps->sects[i].name);
    free(ps->sects);
}

cfg_t *cfg_load_string(const char *text, size_t len, const char *name, char *const *envp,
                       char *err, size_t errcap)
{
    parse_t ps = { .name = name, .text = text, .len = len, .err = err, .errcap = errcap };
    if (err && errcap)
        err[0] = '\0';
    cfg_t *cfg = load(&ps, envp);
    parse_free(&ps);
    if (err && ps.errlen && err[ps.errlen - 1] == '\n')
        err[ps.errlen - 1] = '\0';
    return cfg;
}

cfg_t *cfg_load(const char *path, char *err, size_t errcap)
{
    if (!path)
        path = cfg_default_path();
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) {
                fclose(f);
                free(text);
                snprintf(err, errcap, "%s: larger than 64 MiB", path);
                return NULL;
            }
            text = xrealloc(text, cap);
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    bool rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(text);
        snprintf(err, errcap, "%s: read error", path);
        return NULL;
    }
    cfg_t *cfg = cfg_load_string(text, len, path, environ, err, errcap);
    free(text);
    return cfg;
}

void cfg_destroy(cfg_t **pcfg)
{
    cfg_t *cfg = *pcfg;
    if (!cfg)
        return;
    for (size_t si = 0; si < NSECTIONS; si++) {
        const section_t *s = &sections[si];
        if (!s->pattern) {
            free_section(s, (char *)cfg + s->off);
            continue;
        }
        void **arr = (void **)((char *)cfg + s->off);
        size_t cnt = *(size_t *)((char *)cfg + s->count_off);
        for (size_t i = 0; i < cnt; i++) {
            void *sect = (char *)*arr + i * s->size;
            free(*(char **)sect);
            free_section(s, sect);
        }
        free(*arr);
    }
    for (int i = 0; i < CFG_NPEERS; i++) {
        list_free(&cfg->bus.peers[i].pub);
        list_free(&cfg->bus.peers[i].replay);
    }
    for (size_t i = 0; i < cfg->warnings.n; i++)
        free(cfg->warnings.v[i]);
    free(cfg->warnings.v);
    for (size_t i = 0; i < cfg->norigins; i++) {
        free(cfg->origins[i].section);
        free(cfg->origins[i].key);
        free(cfg->origins[i].where);
    }
    free(cfg->origins);
    free(cfg->path);
    free(cfg);
    *pcfg = NULL;
}

const char *cfg_default_path(void)
{
    const char *p = getenv("TOKMON_CONFIG");
    return p && *p ? p : CFG_DEFAULT_PATH;
}

const char *cfg_origin(const cfg_t *cfg, const char *section, const char *key, char *out,
                       size_t cap)
{
    for (size_t i = 0; i < cfg->norigins; i++) {
        if (!strcmp(cfg->origins[i].section, section) && !strcmp(cfg->origins[i].key, key)) {
            snprintf(out, cap, "%s", cfg->origins[i].where);
            return out;
        }
    }
    snprintf(out, cap, "default");
    return out;
}

size_t cfg_reload_conflicts(const cfg_t *old, const cfg_t *nw,
                            void (*fn)(const char *section, const char *key, void *arg), void *arg)
{
    size_t n = 0;
    for (size_t si = 0; si < NSECTIONS; si++) {
        const section_t *s = &sections[si];
        if (s->pattern)
            continue; /* named sections are reloadable as a whole */
        const void *a = (const char *)old + s->off, *b = (const char *)nw + s->off;
        for (const key_t_ *k = s->keys; k->name; k++) {
            if (k->reload || value_equal(k, a, b))
                continue;
            n++;
            if (fn)
                fn(s->name, k->name, arg);
        }
    }
    return n;
}

static size_t field_size(type_t t)
{
    switch (t) {
    case T_BOOL:
        return sizeof(bool);
    case T_ENUM:
        return sizeof(int);
    case T_LIST:
        return sizeof(cfg_list_t);
    case T_STR:
    case T_DECIMAL:
    case T_ENDPOINT:
    case T_LISTEN:
        return sizeof(char *);
    default:
        return sizeof(int64_t);
    }
}

void cfg_keep_restart_keys(cfg_t *nw, cfg_t *old)
{
    /* the bus endpoints take a restart, and so do the lists made of them */
    cfg_peers_t peers[CFG_NPEERS];
    memcpy(peers, nw->bus.peers, sizeof peers);
    memcpy(nw->bus.peers, old->bus.peers, sizeof peers);
    memcpy(old->bus.peers, peers, sizeof peers);
    for (size_t si = 0; si < NSECTIONS; si++) {
        const section_t *s = &sections[si];
        if (s->pattern)
            continue;
        char *a = (char *)nw + s->off, *b = (char *)old + s->off;
        for (const key_t_ *k = s->keys; k->name; k++) {
            if (k->reload)
                continue;
            unsigned char tmp[sizeof(cfg_list_t)];
            size_t n = field_size(k->type);
            memcpy(tmp, a + k->off, n);
            memcpy(a + k->off, b + k->off, n);
            memcpy(b + k->off, tmp, n);
        }
    }
}

char *cfg_format_usd(int64_t nusd, char *out, size_t cap)
{
    if (dec_format(nusd, 9, true, out, cap) < 0 && cap)
        out[0] = '\0';
    return out;
}

/* ---- semantic checks ---------------------------------------------------- */

static bool name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("_.-@", *s))
            return false;
    return true;
}

static int validate_global(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    (void)name;
    cfg_global_t *g = sect;
    if (!name_ok(g->instance, 63)) {
        snprintf(err, cap, "instance '%s': use 1 to 63 of A-Z a-z 0-9 _ . - @", g->instance);
        return -1;
    }
    if (!g->state_dir[0]) {
        snprintf(err, cap, "state_dir must not be empty");
        return -1;
    }
    if (strcmp(g->timezone, "UTC") != 0) {
        const char *dir = getenv("TZDIR");
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo",
                 g->timezone);
        struct stat st; /* a zone is a readable file: "Europe" is a directory */
        if (strstr(g->timezone, "..") || g->timezone[0] == '/' || access(path, R_OK) != 0 ||
            stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            snprintf(err, cap, "timezone '%s' is not a known zone (%s)", g->timezone, path);
            return -1;
        }
    }
    return 0;
}

static void list_free(cfg_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    *l = (cfg_list_t){ 0 };
}

static void list_split(cfg_list_t *l, const char *v)
{
    list_free(l);
    char *copy = xstrdup(v), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        t = trim(t);
        if (!*t)
            continue;
        l->v = xreallocarray(l->v, l->n + 1, sizeof *l->v);
        l->v[l->n++] = xstrdup(t);
    }
    free(copy);
}

/* A replay endpoint defaults to the PUB port + 10 (ipc: the path + ".replay"). */
static char *derive_replay(const char *pub, char *err, size_t cap)
{
    if (!strncmp(pub, "tcp://", 6)) {
        const char *colon = strrchr(pub, ':');
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || port <= 0 || port > 65535 - 10) { /* (port + 10 could overflow) */
            snprintf(err, cap, "cannot derive a replay port from '%s'; set it", pub);
            return NULL;
        }
        return xasprintf("%.*s:%ld", (int)(colon - pub), pub, port + 10);
    }
    return xasprintf("%s.replay", pub);
}

/* Splits one kind of publisher's endpoints, derives missing replay ones,
 * and leaves the first replay endpoint in *replay (what that publisher binds). */
static int peers_of(cfg_peers_t *p, const char *pubs, char **replay, const char *name, char *err,
                    size_t cap)
{
    list_split(&p->pub, pubs);
    list_split(&p->replay, *replay);
    if (p->pub.n == 0) {
        snprintf(err, cap, "%s: no publisher endpoint", name);
        return -1;
    }
    if (p->replay.n == 0) {
        for (size_t i = 0; i < p->pub.n; i++) {
            char *r = derive_replay(p->pub.v[i], err, cap);
            if (!r)
                return -1;
            p->replay.v = xreallocarray(p->replay.v, p->replay.n + 1, sizeof *p->replay.v);
            p->replay.v[p->replay.n++] = r;
        }
    } else if (p->replay.n != p->pub.n) {
        snprintf(err, cap, "%s_replay lists %zu endpoints for %zu publishers", name, p->replay.n,
                 p->pub.n);
        return -1;
    }
    free(*replay);
    *replay = xstrdup(p->replay.v[0]);
    return 0;
}

static int validate_bus(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    (void)name;
    cfg_bus_t *b = sect;
    if (peers_of(&b->peers[CFG_PEER_COLLECTD], b->collectd, &b->collectd_replay, "collectd", err,
                 cap) < 0 ||
        peers_of(&b->peers[CFG_PEER_AGGREGATOR], b->aggregator, &b->aggregator_replay, "aggregator",
                 err, cap) < 0 ||
        peers_of(&b->peers[CFG_PEER_ALERTER], b->alerter, &b->alerter_replay, "alerter", err, cap) < 0 ||
        peers_of(&b->peers[CFG_PEER_PGWRITER], b->pgwriter, &b->pgwriter_replay, "pgwriter", err,
                 cap) < 0)
        return -1;
    return 0; /* the CURVE keys are checked by whoever opens a socket with them */
}

static int validate_collectd(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    (void)name;
    cfg_collectd_t *c = sect;
    if (!c->udp[0] && !c->tcp[0] && !c->unix_path[0]) {
        snprintf(err, cap, "no listener: set udp, tcp or unix");
        return -1;
    }
    if (c->src[0] && !name_ok(c->src, 127)) {
        snprintf(err, cap, "src '%s': use 1 to 127 of A-Z a-z 0-9 _ . - @", c->src);
        return -1;
    }
    if (!c->src[0]) {
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        for (char *p = host; *p; p++)
            if (!isalnum((unsigned char)*p) && !strchr("_.-", *p))
                *p = '_';
        free(c->src);
        c->src = xasprintf("collectd@%s", host);
    }
    if (c->auth != CFG_AUTH_OFF && !c->auth_keys[0]) {
        snprintf(err, cap, "auth = %s needs auth_keys (a file from tokmonctl keygen)",
                 c->auth == CFG_AUTH_REQUIRED ? "required" : "optional");
        return -1;
    }
    for (size_t i = 0; i < c->provider_aliases.n; i++) {
        const char *a = c->provider_aliases.v[i];
        const char *eq = strchr(a, '=');
        if (!eq || eq == a || !eq[1] || strchr(eq + 1, '=')) {
            snprintf(err, cap, "provider_aliases entry '%s' is not from=to", a);
            return -1;
        }
    }
    return 0;
}

/* Dollar limits left empty in [quota] and [quota.account] mean no limit. */
static int validate_limits(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    (void)name;
    (void)err;
    (void)cap;
    cfg_limits_t *l = sect;
    int64_t *usd[] = { &l->daily_nusd, &l->monthly_nusd, &l->window_nusd };
    for (size_t i = 0; i < 3; i++)
        if (*usd[i] < 0)
            *usd[i] = 0;
    return 0;
}

static int validate_quota(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    cfg_quota_t *q = sect;
    if (q->window % 60000) {
        snprintf(err, cap, "window: must be whole minutes (it is kept as per-minute buckets)");
        return -1;
    }
    return validate_limits(cfg, &q->lim, name, err, cap);
}

static int validate_quota_override(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    cfg_quota_override_t *o = sect;
    if (!*name || strlen(name) > 256) {
        snprintf(err, cap, "the id after the dot must be 1 to 256 bytes");
        return -1;
    }
    if (o->lim.warn_pct == 0) {
        snprintf(err, cap, "warn_pct: must be 1 to 100 (or -1: as the defaults)");
        return -1;
    }
    return 0;
}

static int validate_budget(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    cfg_budget_t *b = sect;
    static const char *const scopes[] = { "global", "provider", "model", "project",
                                          "account", "operation", "user", NULL };
    if (!name_ok(name, 63)) {
        snprintf(err, cap, "budget name '%s': use 1 to 63 of A-Z a-z 0-9 _ . - @", name);
        return -1;
    }
    if (b->limit_nusd <= 0) {
        snprintf(err, cap, "limit_usd is required and must be above 0");
        return -1;
    }
    if (b->rollover_cap_nusd < 0)
        b->rollover_cap_nusd = b->limit_nusd;
    const char *colon = strchr(b->scope, ':');
    size_t kl = colon ? (size_t)(colon - b->scope) : strlen(b->scope);
    for (int i = 0; scopes[i]; i++)
        if (strlen(scopes[i]) == kl && !strncmp(scopes[i], b->scope, kl) &&
            (!colon || (colon[1] && i > 0)))
            return 0;
    snprintf(err, cap,
             "scope '%s' is not global, or one of provider, model, project, account, operation, "
             "user (optionally :value)",
             b->scope);
    return -1;
}

static int validate_notify(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    cfg_notify_t *n = sect;
    if (!name_ok(name, 63)) {
        snprintf(err, cap, "notifier name '%s': use 1 to 63 of A-Z a-z 0-9 _ . - @", name);
        return -1;
    }
    if (n->type != CFG_NOTIFY_TELEGRAM && !n->url[0]) {
        snprintf(err, cap, "url is required");
        return -1;
    }
    if (n->type == CFG_NOTIFY_TELEGRAM && (!n->token_file[0] || !n->chat_id[0])) {
        snprintf(err, cap, "telegram needs token_file and chat_id");
        return -1;
    }
    if (n->type == CFG_NOTIFY_EMAIL && (!n->from[0] || !n->to.n)) {
        snprintf(err, cap, "email needs from and to");
        return -1;
    }
    if (!!n->user[0] != !!n->password_file[0]) {
        snprintf(err, cap, "user and password_file go together");
        return -1;
    }
    if (strcmp(n->severity, "info") && strcmp(n->severity, "warning") &&
        strcmp(n->severity, "critical")) {
        snprintf(err, cap, "severity '%s': info, warning or critical", n->severity);
        return -1;
    }
    return 0;
}

static int validate_rule(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    cfg_rule_t *r = sect;
    static const char *const aggs[] = { "cost", "tokens", "requests", "errors", "error_ratio",
                                        "latency_p50", "latency_p90", "latency_p95", "latency_p99",
                                        NULL };
    static const char *const bys[] = { "", "user", "account", "model", "provider", "project",
                                       "operation", NULL };
    static const char *const ops[] = { ">", ">=", "<", "<=", NULL };
    static const char *const sev[] = { "info", "warning", "critical", NULL };
    if (!name_ok(name, 63)) {
        snprintf(err, cap, "rule name '%s': use 1 to 63 of A-Z a-z 0-9 _ . - @", name);
        return -1;
    }
    const struct {
        const char *key, *val;
        const char *const *allowed;
    } checks[] = { { "aggregate", r->aggregate, aggs }, { "by", r->by, bys },
                   { "op", r->op, ops }, { "severity", r->severity, sev } };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        bool ok = false;
        for (const char *const *a = checks[i].allowed; *a; a++)
            ok |= !strcmp(*a, checks[i].val);
        if (!ok) {
            snprintf(err, cap, "%s '%s' is not one of the allowed values", checks[i].key,
                     checks[i].val);
            return -1;
        }
    }
    char *end;
    errno = 0;
    double t = strtod(r->threshold, &end);
    if (!r->threshold[0] || *end || errno || t != t) {
        snprintf(err, cap, "threshold '%s' is not a number", r->threshold);
        return -1;
    }
    return 0;
}

static int validate_price(cfg_t *cfg, void *sect, const char *name, char *err, size_t cap)
{
    (void)cfg;
    cfg_price_t *p = sect;
    bool any = false;
    for (int i = 0; i < PRICE_NFIELDS; i++)
        any |= p->rate[i] != NULL;
    if (!any) {
        snprintf(err, cap, "price '%s' sets no rate", name);
        return -1;
    }
    return 0;
}

/* cfg: the one INI file every stage reads, a section per stage, with each
 * key overridable from the environment as TOKMON_<SECTION>_<KEY> (upper
 * case, dots and other punctuation as underscores; the environment wins).
 * Loading is three steps: defaults from the key tables in cfg.c, parse
 * (file, then environment), validate; any unknown section or key and any bad
 * value is an error that names its file:line (or environment variable). The
 * result is a plain read-only record that a daemon swaps whole on reload. */
#ifndef TOKMON_CFG_H
#define TOKMON_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "prices_fields.h"

#define CFG_DEFAULT_PATH "/etc/tokmon/tokmon.ini"

typedef struct {
    char **v;
    size_t n;
} cfg_list_t;

typedef enum { CFG_LOG_KV, CFG_LOG_JSON } cfg_log_format_t;
typedef enum { CFG_LVL_ERROR, CFG_LVL_WARN, CFG_LVL_INFO, CFG_LVL_DEBUG } cfg_log_level_t;
typedef enum { CFG_AUTH_OFF, CFG_AUTH_OPTIONAL, CFG_AUTH_REQUIRED } cfg_auth_t;
typedef enum { CFG_GAUGE_AUTO, CFG_GAUGE_DELTA, CFG_GAUGE_ABSOLUTE } cfg_gauge_sign_t;
typedef enum { CFG_PERIOD_DAY, CFG_PERIOD_WEEK, CFG_PERIOD_MONTH } cfg_period_t;
typedef enum {
    CFG_NOTIFY_WEBHOOK,
    CFG_NOTIFY_SLACK,
    CFG_NOTIFY_TELEGRAM,
    CFG_NOTIFY_EMAIL,
    CFG_NOTIFY_ALERTMANAGER
} cfg_notify_type_t;

typedef struct {
    char *instance;         /* names this deployment */
    char *state_dir;        /* spools and snapshots */
    char *timezone;         /* calendar periods */
    int log_format;         /* cfg_log_format_t */
    int log_level;          /* cfg_log_level_t */
    int64_t stats_interval; /* ms between `stats` messages */
} cfg_global_t;

/* The publishers of one kind: every PUB endpoint and its replay endpoint
 * (several collectors on one host, say). A publisher binds the first. */
typedef struct {
    cfg_list_t pub, replay;
} cfg_peers_t;

enum { CFG_PEER_COLLECTD, CFG_PEER_AGGREGATOR, CFG_PEER_ALERTER, CFG_PEER_PGWRITER, CFG_NPEERS };

typedef struct {
    /* as written: an endpoint, or several separated by commas */
    char *collectd, *aggregator, *alerter, *pgwriter; /* pgwriter: its stats only */
    char *collectd_replay, *aggregator_replay, *alerter_replay, *pgwriter_replay; /* default: each PUB port + 10 */
    bool curve;
    char *curve_server_key; /* publishers: the server key pair (tokmonctl keygen --curve) */
    char *curve_server_public; /* subscribers: the servers' public key (Z85) */
    char *curve_client_key; /* subscribers: this client's key pair */
    char *curve_allow;      /* publishers: a file of the client public keys allowed in */
    int64_t sndhwm; /* messages a PUB queues per subscriber before dropping */
    int64_t rcvhwm;
    bool spool;
    int64_t spool_fsync;         /* ms between group fsyncs; 0: every message; -1: never */
    int64_t spool_segment_size;  /* bytes */
    int64_t spool_segment_age;   /* ms */
    int64_t spool_max_size;      /* bytes */
    int64_t spool_max_age;       /* ms */
    cfg_peers_t peers[CFG_NPEERS]; /* derived from the endpoint keys */
} cfg_bus_t;

typedef struct {
    char *udp;  /* "" disables */
    char *tcp;  /* "" disables */
    char *unix_path;
    char *src;  /* bus publisher name; default collectd@<hostname> */
    char *prices;
    int auth; /* cfg_auth_t */
    char *auth_keys;
    int64_t auth_skew;         /* ms */
    int64_t replay_guard;      /* signatures remembered against replay */
    int64_t rcvbuf;            /* bytes */
    int64_t batch_max;         /* records per bus message */
    int64_t flush_interval;    /* ms */
    int64_t max_line;          /* bytes */
    int64_t tcp_max_clients;
    int64_t tcp_idle_timeout;  /* ms */
    int64_t tcp_block_timeout; /* ms an unsigned TCP block waits for its |sig line */
    int gauge_sign;            /* cfg_gauge_sign_t */
    cfg_list_t provider_aliases; /* "from=to" */
    int64_t max_tags;
    int64_t max_tag_len;
    int64_t log_reject_every;
} cfg_collectd_t;

typedef struct {
    char *query;             /* the query socket; several (commas): one per shard */
    char *src;               /* bus publisher name; default aggregator@<hostname> */
    int64_t snapshot_interval; /* ms */
    int64_t lateness;        /* ms a closed rollup bucket still takes late events */
    int64_t close_delay;     /* ms after a bucket's end before it is closed */
    int64_t history;         /* ms of per-minute usage kept for top and usage queries */
    int64_t budget_interval; /* ms between budget status messages */
    int64_t quota_sweep;     /* ms between re-evaluations of quota states by time alone */
    bool rollup_users;       /* rollups by user (off: model, account, project only) */
    int64_t statsd_interval; /* ms: the StatsD flush interval */
    int64_t statsd_max_series;
    int64_t statsd_max_set;  /* distinct members counted per set and interval */
    int64_t statsd_idle;     /* intervals without samples before a series is forgotten */
} cfg_aggregator_t;

/* Quota limits: tokens (input plus output) and nano-dollars per calendar day,
 * calendar month and sliding window; 0 means no limit. In an override
 * section -1 means "as the defaults". */
typedef struct {
    int64_t daily_tokens, monthly_tokens, window_tokens;
    int64_t daily_nusd, monthly_nusd, window_nusd;
    int64_t warn_pct;
} cfg_limits_t;

typedef struct {
    int64_t window; /* ms: the sliding window, kept as per-minute buckets */
    cfg_limits_t lim; /* [quota]: every user's */
} cfg_quota_t;

/* [quota.user.ID] and [quota.account.ID] */
typedef struct {
    char *name;
    cfg_limits_t lim;
} cfg_quota_override_t;

typedef struct {
    char *name; /* the part after "budget." */
    char *scope;
    int period; /* cfg_period_t */
    int64_t limit_nusd;
    int64_t warn_pct;
    bool rollover;            /* unspent budget carries into the next period ... */
    int64_t rollover_cap_nusd; /* ... up to this (default: the limit) */
} cfg_budget_t;

typedef struct {
    char *database;          /* libpq conninfo or URL; "": libpq's PG* environment */
    char *src;               /* consumer name in bus_offsets and bus publisher name;
                                default pgwriter@<hostname> */
    int64_t batch_rows;      /* rows in one COPY transaction at most */
    int64_t batch_time;      /* ms a row waits for its batch at most */
    int64_t raw_retention_days; /* llm_events partitions kept */
    int64_t partitions_ahead;   /* days of llm_events partitions made ahead */
    int64_t rollup_minute_days, rollup_hour_days; /* llm_rollup rows kept; day rows forever */
    int64_t reconnect_max;   /* ms: the backoff's cap */
    int64_t maintenance_interval; /* ms between partition and retention runs */
} cfg_pgwriter_t;

typedef struct {
    char *http;              /* host:port of /metrics and the JSON API */
    char *api_key_file;      /* the API key (one line); "" : the API answers 503 */
    char *database;          /* read-only libpq conninfo for /api/v1/history; "": off */
    int64_t query_timeout;   /* ms: asking the aggregator or PostgreSQL */
    int64_t max_series;      /* series per family before folding into __other__ */
    bool user_labels, account_labels; /* per-user / per-account gauges (top K) */
    int64_t top_k;
    int64_t stream_buffer;   /* calls kept for /api/v1/stream resumption */
    char *env;               /* Loki's env label; default [global] instance */
    char *loki_url;          /* base URL (…/loki/api/v1/push is added); "": off */
    char *loki_user, *loki_password_file, *loki_tenant;
    int64_t loki_batch_size; /* bytes of JSON before a push */
    int64_t loki_batch_wait; /* ms an entry waits for its batch at most */
    int64_t loki_queue;      /* entries queued at most (the oldest dropped) */
    int64_t loki_timeout;    /* ms for one push */
    int64_t loki_retries;    /* tries of one batch on 429/5xx */
    int64_t loki_backoff_max; /* ms */
    char *remote_write_url;  /* "": off */
    char *remote_write_user, *remote_write_password_file, *remote_write_bearer_file;
    int64_t remote_write_interval; /* ms */
    int64_t remote_write_timeout;  /* ms for one request */
    int64_t remote_write_retries;  /* tries of one request on 429/5xx */
    int64_t remote_write_backoff_max; /* ms */
} cfg_exporter_t;

/* [alerter]: the built-in rules (a threshold of 0 turns its rule off), the
 * notification policy (Alertmanager's route semantics) and the digest. */
typedef struct {
    char *src;               /* bus publisher name; default alerter@<hostname> */
    char *control;           /* ROUTER endpoint for tokmonctl (silences, alerts) */
    int64_t snapshot_interval, eval_interval; /* ms */
    cfg_list_t group_by;     /* label names; default alertname */
    int64_t group_wait, group_interval, repeat_interval, resend_interval; /* ms */
    cfg_list_t receivers;    /* [notify.NAME] names; empty: all */
    bool budget, quota, bus_gap; /* the state rules */
    int64_t high_cost_call_nusd;   /* one call over this; 0: off */
    int64_t high_cost_call_hold;   /* ms such an alert stays firing */
    int64_t error_pct;             /* error ratio over this percentage ... */
    int64_t error_window, error_for; /* ... over this window, for this long (ms) */
    int64_t error_min_requests;    /* ... with at least this many requests */
    int64_t burn_tokens_per_hour, burn_for; /* tokens an hour over the last hour */
    int64_t daily_cost_nusd;       /* today's cost over this */
    int64_t cost_rate_nusd;        /* the last hour's cost over this */
    int64_t latency_p95, latency_for; /* ms */
    int64_t no_events;             /* ms without any call */
    int64_t stage_silent;          /* ms without a stage's stats */
    int64_t digest_hour;           /* -1: no digest; 0-23 in [global] timezone */
    cfg_list_t digest_receivers;   /* empty: the receivers */
} cfg_alerter_t;

/* [rule.NAME]: a user-defined rule: aggregate over window, grouped by a
 * dimension, compared with a threshold, for a while. */
typedef struct {
    char *name;
    char *aggregate; /* cost, tokens, requests, errors, error_ratio, latency_p50/p90/p95/p99 */
    int64_t window;  /* ms */
    char *by;        /* "", user, account, model, provider, project, operation */
    char *op;        /* >, >=, <, <= */
    char *threshold; /* a number (dollars for cost, seconds for latency, a ratio 0-1) */
    int64_t for_ms;
    int64_t min_requests;
    char *severity;  /* info, warning, critical */
    char *summary;   /* a template: {{ $value }}, {{ $labels.user }}, {{ $threshold }} */
} cfg_rule_t;

typedef struct {
    char *name;
    int type; /* cfg_notify_type_t */
    char *url;          /* webhook, slack, alertmanager: the URL; email: smtp:// or smtps://
                           host:port; telegram: the API base (default https://api.telegram.org) */
    char *token_file;   /* telegram: the bot token */
    char *chat_id;      /* telegram */
    char *from;         /* email */
    cfg_list_t to;      /* email */
    char *user, *password_file; /* email (SMTP AUTH); webhook basic auth */
    bool starttls;      /* email over smtp://: require STARTTLS */
    char *ca_file;      /* PEM certificates to verify the server with ("": the system's) */
    char *severity;     /* the least severity sent: info, warning, critical */
    bool send_resolved;
    int64_t timeout;    /* ms, one delivery */
    int64_t retries;    /* tries after the first */
    int64_t backoff_max; /* ms */
} cfg_notify_t;

/* [price.NAME]: a local price that wins over the table. NAME is a table key
 * ("openai/gpt-4o", "my-finetune") or "default" (the price of calls the
 * table cannot price). Rates are kept as their decimal text (already checked
 * to be exact at 1e-24 USD); NULL when not set. */
typedef struct {
    char *name;
    char *litellm_provider;
    char *rate[PRICE_NFIELDS];
} cfg_price_t;

typedef struct cfg {
    char *path; /* the file loaded */
    cfg_global_t global;
    cfg_bus_t bus;
    cfg_collectd_t collectd;
    cfg_aggregator_t aggregator;
    cfg_quota_t quota;
    cfg_limits_t account_quota; /* [quota.account]: every account's (no limits by default) */
    cfg_quota_override_t *user_quotas, *account_quotas;
    size_t nuser_quotas, naccount_quotas;
    cfg_pgwriter_t pgwriter;
    cfg_exporter_t exporter;
    cfg_alerter_t alerter;
    cfg_budget_t *budgets;
    size_t nbudgets;
    cfg_notify_t *notifies;
    size_t nnotifies;
    cfg_rule_t *rules;
    size_t nrules;
    cfg_price_t *prices;
    size_t nprices;
    cfg_list_t warnings; /* things worth a log line that are not errors */
    struct cfg_origin *origins; /* where each set value came from */
    size_t norigins;
} cfg_t;

/* Loads path (NULL: cfg_default_path()) and the environment. Returns a new
 * config owned by the caller, or NULL with every problem found, one per line
 * as "file:line: [section] key: reason", in err (truncated to errcap). */
cfg_t *cfg_load(const char *path, char *err, size_t errcap);

/* The same from an in-memory INI text; name is used in messages. envp may be
 * NULL (no environment overrides) or an environ-style array. */
cfg_t *cfg_load_string(const char *text, size_t len, const char *name, char *const *envp,
                       char *err, size_t errcap);

void cfg_destroy(cfg_t **cfg);

/* $TOKMON_CONFIG when set, else CFG_DEFAULT_PATH. */
const char *cfg_default_path(void);

/* Where section/key got its value: "file:line", "env TOKMON_X_Y" or
 * "default". Returns out. */
const char *cfg_origin(const cfg_t *cfg, const char *section, const char *key, char *out,
                       size_t cap);

/* Calls fn for each key that differs between old and new but may not change
 * on reload (it takes effect on restart). Returns the number of such keys. */
size_t cfg_reload_conflicts(const cfg_t *old, const cfg_t *nw,
                            void (*fn)(const char *section, const char *key, void *arg),
                            void *arg);

/* For a reload: moves the values of keys that may not change on reload from
 * old into nw (and nw's into old), so the new config keeps what is in force
 * until a restart. */
void cfg_keep_restart_keys(cfg_t *nw, cfg_t *old);

/* Money helper: formats nano-dollars as a decimal dollar amount. */
char *cfg_format_usd(int64_t nusd, char *out, size_t cap);

#endif

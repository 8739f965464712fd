-- tokmon-pgwriter schema, version 1. Released: never edit this file; add
-- 002_*.sql instead. Applied by tokmon-pgwriter at start, in one transaction
-- under an advisory lock, and recorded in schema_migrations.
--
-- Money is exact: cost_nusd columns are nano-dollars (bigint); the views
-- show dollars as numeric. Times are timestamptz (microseconds: the bus's
-- nanoseconds are truncated). Calendar views use the session's TimeZone.

-- One row per call: the fields of the bus's usage record (DESIGN section
-- 4) under the same names. Partitioned by the call's UTC day; the writer
-- makes partitions ahead and drops them after raw_retention_days.
CREATE TABLE llm_events (
    ts                    timestamptz NOT NULL,
    recv_ts               timestamptz NOT NULL,
    provider              text NOT NULL,
    model                 text NOT NULL,
    operation             text NOT NULL,
    "user"                text,
    account               text,
    project               text,
    status                text NOT NULL,
    error_type            text,
    request_id            text,
    input_tokens          bigint NOT NULL DEFAULT 0,
    cache_read_tokens     bigint NOT NULL DEFAULT 0,
    cache_write_tokens    bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    output_tokens         bigint NOT NULL DEFAULT 0,
    reasoning_tokens      bigint NOT NULL DEFAULT 0,
    requests              bigint NOT NULL DEFAULT 1,
    latency_us            bigint,
    ttft_us               bigint,
    cost_nusd             bigint NOT NULL,
    cost_source           text NOT NULL,
    price_version         text,
    http_status           integer,
    retries               integer,
    signed                boolean NOT NULL DEFAULT false,
    key_id                text,
    tags                  jsonb
) PARTITION BY RANGE (ts);

CREATE INDEX llm_events_user_ts ON llm_events ("user", ts);
CREATE INDEX llm_events_account_ts ON llm_events (account, ts);
CREATE INDEX llm_events_project_ts ON llm_events (project, ts);
CREATE INDEX llm_events_ts ON llm_events (ts);

-- Closed rollup buckets from the aggregator (topics roll.m, roll.h, roll.d).
-- One row per publisher (src: an aggregator or one of its shards), grain,
-- bucket and dimension values. A bucket sent again replaces its row when its
-- revision is not lower, so a re-sent bucket is never counted twice; the
-- views sum over srcs. dim 'model' is keyed by provider, model, operation
-- and status; 'user', 'account' and 'project' by key. latency and ttft are
-- the aggregator's sketch encodings (microseconds).
CREATE TABLE llm_rollup (
    grain                 text NOT NULL CHECK (grain IN ('m', 'h', 'd')),
    dim                   text NOT NULL,
    bucket_start          timestamptz NOT NULL,
    bucket_end            timestamptz NOT NULL,
    provider              text NOT NULL DEFAULT '',
    model                 text NOT NULL DEFAULT '',
    operation             text NOT NULL DEFAULT '',
    status                text NOT NULL DEFAULT '',
    key                   text NOT NULL DEFAULT '',
    src                   text NOT NULL,
    shard                 integer NOT NULL DEFAULT 0,
    shards                integer NOT NULL DEFAULT 1,
    rev                   integer NOT NULL DEFAULT 0,
    requests              bigint NOT NULL DEFAULT 0,
    errors                bigint NOT NULL DEFAULT 0,
    input_tokens          bigint NOT NULL DEFAULT 0,
    cache_read_tokens     bigint NOT NULL DEFAULT 0,
    cache_write_tokens    bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    output_tokens         bigint NOT NULL DEFAULT 0,
    reasoning_tokens      bigint NOT NULL DEFAULT 0,
    cost_nusd             bigint NOT NULL DEFAULT 0,
    latency               bytea,
    ttft                  bytea,
    PRIMARY KEY (grain, dim, bucket_start, provider, model, operation, status, key, src)
);
CREATE INDEX llm_rollup_grain_start ON llm_rollup (grain, bucket_start);

-- The configured limits, mirrored from the config at each start.
CREATE TABLE budgets (
    name               text PRIMARY KEY,
    scope              text NOT NULL,
    scope_value        text,
    period             text NOT NULL,
    limit_nusd         bigint NOT NULL,
    warn_pct           integer NOT NULL,
    rollover           boolean NOT NULL,
    rollover_cap_nusd  bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- subject 'user' or 'account'; id '*' holds the defaults of that subject;
-- window 'day', 'month' or the sliding window's length ('5h'); a limit of 0
-- is none.
CREATE TABLE quota_limits (
    subject      text NOT NULL,
    id           text NOT NULL,
    "window"     text NOT NULL,
    tokens       bigint NOT NULL,
    nusd         bigint NOT NULL,
    warn_pct     integer NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, id, "window")
);

-- The latest status of each budget instance, per aggregator (shards report
-- their parts: partial).
CREATE TABLE budget_state (
    name                text NOT NULL,
    scope               text NOT NULL,
    scope_value         text NOT NULL DEFAULT '',
    period              text NOT NULL,
    src                 text NOT NULL,
    period_start        timestamptz NOT NULL,
    period_end          timestamptz NOT NULL,
    limit_nusd          bigint NOT NULL,
    rollover_nusd       bigint NOT NULL,
    spent_nusd          bigint NOT NULL,
    remaining_nusd      bigint NOT NULL,
    forecast_avg_nusd   bigint NOT NULL,
    forecast_rate_nusd  bigint NOT NULL,
    exhaust_ts          timestamptz,
    warn_pct            integer NOT NULL,
    state               text NOT NULL,
    partial             boolean NOT NULL,
    shard               integer NOT NULL,
    shards              integer NOT NULL,
    ts                  timestamptz NOT NULL,
    PRIMARY KEY (name, scope_value, src)
);

-- Every budget threshold crossing, once per budget, scope value, period and
-- threshold (the aggregator sends each once; a replay is ignored here).
CREATE TABLE budget_crossings (
    name          text NOT NULL,
    scope_value   text NOT NULL DEFAULT '',
    period_start  timestamptz NOT NULL,
    crossing      text NOT NULL,
    src           text NOT NULL,
    crossed_ts    timestamptz NOT NULL,
    spent_nusd    bigint NOT NULL,
    limit_nusd    bigint NOT NULL,
    PRIMARY KEY (name, scope_value, period_start, crossing, src)
);

-- Quota state changes (topic quota), and the latest state of each.
CREATE TABLE quota_history (
    ts         timestamptz NOT NULL,
    subject    text NOT NULL,
    id         text NOT NULL,
    "window"   text NOT NULL,
    unit       text NOT NULL,
    state      text NOT NULL,
    prev       text NOT NULL,
    used       bigint NOT NULL,
    "limit"    bigint NOT NULL,
    src        text NOT NULL,
    PRIMARY KEY (subject, id, "window", unit, ts, src)
);

-- Every alert transition (topic alert; tokmon-alerter).
CREATE TABLE alert_history (
    id           bigserial PRIMARY KEY,
    ts           timestamptz NOT NULL,
    alertname    text NOT NULL,
    state        text NOT NULL,
    severity     text,
    fingerprint  text,
    labels       jsonb NOT NULL DEFAULT '{}',
    annotations  jsonb NOT NULL DEFAULT '{}',
    value        double precision,
    src          text NOT NULL,
    seq          bigint NOT NULL,
    UNIQUE (src, seq, alertname, fingerprint, state, ts)
);
CREATE INDEX alert_history_ts ON alert_history (ts);

-- What a consumer has applied of each publisher: written in the same
-- transaction as the rows, read back at start to ask for replay from there.
CREATE TABLE bus_offsets (
    consumer    text NOT NULL,
    src         text NOT NULL,
    seq         bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, src)
);

-- Records PostgreSQL refused (a value out of range, a bad byte sequence),
-- with the reason; they never block the rest of their batch.
CREATE TABLE dead_letter (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    src       text NOT NULL,
    seq       bigint NOT NULL,
    topic     text NOT NULL,
    kind      text NOT NULL,
    reason    text NOT NULL,
    record    bytea NOT NULL            -- the record as it came, msgpack
);

-- ---- views --------------------------------------------------------------

CREATE VIEW daily_usage AS
SELECT date_trunc('day', ts) AS day,
       count(*) FILTER (WHERE requests > 0) AS calls,
       sum(requests) AS requests,
       sum(requests) FILTER (WHERE status = 'error') AS errors,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(input_tokens + output_tokens) AS total_tokens,
       sum(cost_nusd) AS cost_nusd,
       round(sum(cost_nusd) / 1e9, 9) AS cost_usd,
       count(DISTINCT "user") AS users
FROM llm_events
GROUP BY 1;

CREATE VIEW hourly_usage_24h AS
SELECT date_trunc('hour', ts) AS hour,
       sum(requests) AS requests,
       sum(requests) FILTER (WHERE status = 'error') AS errors,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(input_tokens + output_tokens) AS total_tokens,
       sum(cost_nusd) AS cost_nusd,
       round(sum(cost_nusd) / 1e9, 9) AS cost_usd
FROM llm_events
WHERE ts >= now() - interval '24 hours'
GROUP BY 1;

CREATE VIEW cost_by_operation AS
SELECT operation,
       sum(requests) AS requests,
       sum(input_tokens + output_tokens) AS total_tokens,
       sum(cost_nusd) AS cost_nusd,
       round(sum(cost_nusd) / 1e9, 9) AS cost_usd
FROM llm_events
GROUP BY 1;

CREATE VIEW cost_by_model AS
SELECT provider, model,
       sum(requests) AS requests,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(cost_nusd) AS cost_nusd,
       round(sum(cost_nusd) / 1e9, 9) AS cost_usd
FROM llm_events
GROUP BY 1, 2;

-- Users by cost over the last 30 days.
CREATE VIEW top_users AS
SELECT "user",
       sum(requests) AS requests,
       sum(input_tokens + output_tokens) AS total_tokens,
       sum(cost_nusd) AS cost_nusd,
       round(sum(cost_nusd) / 1e9, 9) AS cost_usd
FROM llm_events
WHERE ts >= now() - interval '30 days' AND "user" IS NOT NULL
GROUP BY 1
ORDER BY cost_nusd DESC;

-- Each budget instance's current period, shards' parts summed.
CREATE VIEW budget_status AS
SELECT name, scope, NULLIF(scope_value, '') AS scope_value, period,
       period_start, period_end,
       max(limit_nusd) AS limit_nusd,
       round(max(limit_nusd) / 1e9, 9) AS limit_usd,
       sum(spent_nusd) AS spent_nusd,
       round(sum(spent_nusd) / 1e9, 9) AS spent_usd,
       round(greatest(max(limit_nusd) - sum(spent_nusd), 0) / 1e9, 9) AS remaining_usd,
       round(sum(forecast_avg_nusd) / 1e9, 9) AS forecast_avg_usd,
       round(sum(forecast_rate_nusd) / 1e9, 9) AS forecast_rate_usd,
       CASE WHEN max(limit_nusd) > 0
            THEN round(100.0 * sum(spent_nusd) / max(limit_nusd), 2) END AS spent_pct,
       CASE WHEN sum(spent_nusd) >= max(limit_nusd) AND max(limit_nusd) > 0 THEN 'exceeded'
            WHEN max(limit_nusd) > 0
                 AND sum(spent_nusd) * 100 >= max(limit_nusd) * max(warn_pct) THEN 'warning'
            ELSE 'ok' END AS state,
       max(ts) AS ts
FROM budget_state b
WHERE period_start = (SELECT max(period_start) FROM budget_state c
                      WHERE c.name = b.name AND c.scope_value = b.scope_value)
GROUP BY name, scope, scope_value, period, period_start, period_end;

-- Rollups, shards summed, in dollars.
CREATE VIEW rollup_usage AS
SELECT grain, dim, bucket_start, bucket_end, provider, model, operation, status, key,
       sum(requests) AS requests, sum(errors) AS errors,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cost_nusd) AS cost_nusd, round(sum(cost_nusd) / 1e9, 9) AS cost_usd
FROM llm_rollup
GROUP BY grain, dim, bucket_start, bucket_end, provider, model, operation, status, key;

-- The read-only role for the JSON API's history queries: grant it to a login
-- role (GRANT tokmon_reader TO api_user).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tokmon_reader') THEN
        CREATE ROLE tokmon_reader NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO tokmon_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tokmon_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO tokmon_reader;

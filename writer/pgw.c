/* pgw: see pgw.h. */
#include "pgw.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "embed.h"
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "pgcopy.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define DAY_NS (86400LL * TMTIME_NS_PER_SEC)
/* advisory lock keys: migrations, partitions and retention */
#define LOCK_MIGRATE 0x746f6b6d6f6e0001LL
#define LOCK_PARTITIONS 0x746f6b6d6f6e0002LL
/* the mirror of the config: writers starting together take turns */
#define LOCK_MIRROR 0x746f6b6d6f6e0003LL

/* ---- the tables a batch writes ------------------------------------------ */

typedef enum { T_EVENTS, T_ROLLUP, T_BUDGET, T_CROSSING, T_QUOTA, T_ALERT, T_N } table_id_t;

typedef struct {
    const char *name;  /* for counters */
    const char *copy;  /* COPY ... FROM STDIN */
    const char *merge; /* after the COPY into a staging table; NULL: none */
    uint16_t nfields;
    const char *clear; /* empties the staging table (between parts of a careful write) */
} table_def_t;

static const table_def_t tables[T_N] = {
    [T_EVENTS] = { "llm_events",
                   "COPY llm_events (ts, recv_ts, provider, model, operation, \"user\", account, "
                   "project, status, error_type, request_id, input_tokens, cache_read_tokens, "
                   "cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, "
                   "requests, latency_us, ttft_us, cost_nusd, cost_source, price_version, "
                   "http_status, retries, signed, key_id, tags) FROM STDIN (FORMAT binary)",
                   NULL, 28, NULL },
    [T_ROLLUP] = { "llm_rollup",
                   "COPY pg_temp.rollup_in (grain, dim, bucket_start, bucket_end, provider, model, "
                   "operation, status, key, src, shard, shards, rev, requests, errors, "
                   "input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, "
                   "output_tokens, reasoning_tokens, cost_nusd, latency, ttft, ord) "
                   "FROM STDIN (FORMAT binary)",
                   "INSERT INTO llm_rollup (grain, dim, bucket_start, bucket_end, provider, model, "
                   "operation, status, key, src, shard, shards, rev, requests, errors, "
                   "input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, "
                   "output_tokens, reasoning_tokens, cost_nusd, latency, ttft) "
                   "SELECT DISTINCT ON (grain, dim, bucket_start, provider, model, operation, "
                   "status, key, src) grain, dim, bucket_start, bucket_end, provider, model, "
                   "operation, status, key, src, shard, shards, rev, requests, errors, "
                   "input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, "
                   "output_tokens, reasoning_tokens, cost_nusd, latency, ttft "
                   "FROM pg_temp.rollup_in ORDER BY grain, dim, bucket_start, provider, model, "
                   "operation, status, key, src, rev DESC, ord DESC "
                   "ON CONFLICT (grain, dim, bucket_start, provider, model, operation, status, key, "
                   "src) DO UPDATE SET bucket_end = excluded.bucket_end, shard = excluded.shard, "
                   "shards = excluded.shards, rev = excluded.rev, requests = excluded.requests, "
                   "errors = excluded.errors, input_tokens = excluded.input_tokens, "
                   "cache_read_tokens = excluded.cache_read_tokens, "
                   "cache_write_tokens = excluded.cache_write_tokens, "
                   "cache_write_1h_tokens = excluded.cache_write_1h_tokens, "
                   "output_tokens = excluded.output_tokens, "
                   "reasoning_tokens = excluded.reasoning_tokens, cost_nusd = excluded.cost_nusd, "
                   "latency = excluded.latency, ttft = excluded.ttft "
                   "WHERE llm_rollup.rev <= excluded.rev",
                   25, "DELETE FROM pg_temp.rollup_in" },
    [T_BUDGET] = { "budget_state",
                   "COPY pg_temp.budget_in (name, scope, scope_value, period, src, period_start, "
                   "period_end, limit_nusd, rollover_nusd, spent_nusd, remaining_nusd, "
                   "forecast_avg_nusd, forecast_rate_nusd, exhaust_ts, warn_pct, state, partial, "
                   "shard, shards, ts, ord) FROM STDIN (FORMAT binary)",
                   "INSERT INTO budget_state (name, scope, scope_value, period, src, period_start, "
                   "period_end, limit_nusd, rollover_nusd, spent_nusd, remaining_nusd, "
                   "forecast_avg_nusd, forecast_rate_nusd, exhaust_ts, warn_pct, state, partial, "
                   "shard, shards, ts) "
                   "SELECT DISTINCT ON (name, scope_value, src) name, scope, scope_value, period, "
                   "src, period_start, period_end, limit_nusd, rollover_nusd, spent_nusd, "
                   "remaining_nusd, forecast_avg_nusd, forecast_rate_nusd, exhaust_ts, warn_pct, "
                   "state, partial, shard, shards, ts FROM pg_temp.budget_in "
                   "ORDER BY name, scope_value, src, ts DESC, ord DESC "
                   "ON CONFLICT (name, scope_value, src) DO UPDATE SET scope = excluded.scope, "
                   "period = excluded.period, period_start = excluded.period_start, "
                   "period_end = excluded.period_end, limit_nusd = excluded.limit_nusd, "
                   "rollover_nusd = excluded.rollover_nusd, spent_nusd = excluded.spent_nusd, "
                   "remaining_nusd = excluded.remaining_nusd, "
                   "forecast_avg_nusd = excluded.forecast_avg_nusd, "
                   "forecast_rate_nusd = excluded.forecast_rate_nusd, "
                   "exhaust_ts = excluded.exhaust_ts, warn_pct = excluded.warn_pct, "
                   "state = excluded.state, partial = excluded.partial, shard = excluded.shard, "
                   "shards = excluded.shards, ts = excluded.ts WHERE budget_state.ts <= excluded.ts",
                   21, "DELETE FROM pg_temp.budget_in" },
    [T_CROSSING] = { "budget_crossings",
                     "COPY pg_temp.crossing_in (name, scope_value, period_start, crossing, src, "
                     "crossed_ts, spent_nusd, limit_nusd) FROM STDIN (FORMAT binary)",
                     "INSERT INTO budget_crossings SELECT * FROM pg_temp.crossing_in "
                     "ON CONFLICT DO NOTHING",
                     8, "DELETE FROM pg_temp.crossing_in" },
    [T_QUOTA] = { "quota_history",
                  "COPY pg_temp.quota_in (ts, subject, id, \"window\", unit, state, prev, used, "
                  "\"limit\", src) FROM STDIN (FORMAT binary)",
                  "INSERT INTO quota_history SELECT * FROM pg_temp.quota_in ON CONFLICT DO NOTHING",
                  10, "DELETE FROM pg_temp.quota_in" },
    [T_ALERT] = { "alert_history",
                  "COPY pg_temp.alert_in (ts, alertname, state, severity, fingerprint, labels, "
                  "annotations, value, src, seq) FROM STDIN (FORMAT binary)",
                  "INSERT INTO alert_history (ts, alertname, state, severity, fingerprint, labels, "
                  "annotations, value, src, seq) SELECT ts, alertname, state, severity, fingerprint, "
                  "labels, annotations, value, src, seq FROM pg_temp.alert_in ON CONFLICT DO NOTHING",
                  10, "DELETE FROM pg_temp.alert_in" },
};

static const char temp_tables_sql[] =
    "CREATE TEMP TABLE IF NOT EXISTS rollup_in (LIKE llm_rollup, ord bigint) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS budget_in (LIKE budget_state, ord bigint) "
    "ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS crossing_in (LIKE budget_crossings) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS quota_in (LIKE quota_history) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS alert_in (ts timestamptz, alertname text, state text, "
    "severity text, fingerprint text, labels jsonb, annotations jsonb, value double precision, "
    "src text, seq bigint) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS offsets_in (consumer text, src text, seq bigint) "
    "ON COMMIT DELETE ROWS;";

static const char dead_copy_sql[] =
    "COPY dead_letter (src, seq, topic, kind, reason, record) FROM STDIN (FORMAT binary)";
static const char offsets_copy_sql[] =
    "COPY pg_temp.offsets_in (consumer, src, seq) FROM STDIN (FORMAT binary)";
static const char offsets_merge_sql[] =
    "INSERT INTO bus_offsets (consumer, src, seq) SELECT consumer, src, seq FROM pg_temp.offsets_in "
    "ON CONFLICT (consumer, src) DO UPDATE SET seq = excluded.seq, updated_at = now()";

/* Where a row came from, for dead_letter when PostgreSQL refuses it. */
typedef struct {
    uint32_t src; /* index into the batch's srcs */
    uint64_t seq;
    char topic[24];
    uint32_t raw_off, raw_len; /* the record as it came (msgpack), in raw */
} rowinfo_t;

typedef struct {
    pgcopy_t rows;
    rowinfo_t *info;
    size_t icap;
    size_t refused; /* rows of this batch PostgreSQL refused (now in dead_letter) */
} table_t;

struct pgw {
    pgw_opts_t o;
    const cfg_pgwriter_t *c;
    PGconn *conn;
    table_t t[T_N];
    pgcopy_t dead; /* dead_letter rows */
    mbuf_t raw;    /* records as they came */
    char **srcs;   /* srcs of this batch */
    uint32_t msg_src;  /* the message being applied: its src's index ... */
    char msg_topic[24]; /* ... and its topic, printable */
    size_t nsrcs;
    int64_t ord;   /* rows of this batch, for last-wins */
    int64_t since; /* monotonic ns of the batch's first row */
    int64_t oldest_pub; /* the earliest publish time (wall ns) of the batch's messages */
    int64_t *days;  /* the partitions of llm_events that exist, ascending */
    size_t ndays, cdays;
    int64_t *want;  /* the days this batch needs */
    size_t nwant, cwant;
    mbuf_t json, sql;
    /* counters */
    int64_t *c_rows[T_N], *c_dead, *c_bad, *c_batches, *c_batch_errors, *c_connects,
        *c_connect_errors, *c_part_created, *c_part_dropped, *c_rollup_deleted, *c_unexpected;
    int64_t *g_connected, *g_lag_ms, *g_batch_rows, *g_batch_ms, *g_partitions;
};

/* ---- small helpers -------------------------------------------------------- */

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    /* days since 1970-01-01 to the proleptic Gregorian calendar, by eras of
     * 400 years starting on March 1st */
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

char *pgw_partition_name(int64_t day, char *out, size_t cap)
{
    int y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    snprintf(out, cap, "llm_events_p%04d%02u%02u", y, m, d);
    return out;
}

int64_t pgw_partition_day(const char *name)
{
    static const char prefix[] = "llm_events_p";
    if (strncmp(name, prefix, sizeof prefix - 1))
        return -1;
    const char *p = name + sizeof prefix - 1;
    if (strlen(p) != 8 || strspn(p, "0123456789") != 8)
        return -1;
    int y = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    unsigned m = (unsigned)((p[4] - '0') * 10 + (p[5] - '0'));
    unsigned d = (unsigned)((p[6] - '0') * 10 + (p[7] - '0'));
    if (m < 1 || m > 12 || d < 1 || d > 31)
        return -1;
    int64_t day = tmtime_days_from_civil(y, m, d);
    char back[32];
    return strcmp(pgw_partition_name(day, back, sizeof back), name) ? -1 : day;
}

static int64_t day_of(int64_t ns) { return ns / DAY_NS - (ns % DAY_NS < 0); }

void pgw_day_range(const pgw_t *w, int64_t now_ns, int64_t *lo, int64_t *hi)
{
    int64_t today = day_of(now_ns);
    *lo = today - w->c->raw_retention_days;
    *hi = today + w->c->partitions_ahead;
}

void pgw_json_str(mbuf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    mbuf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        mbuf_append(b, s + run, i - run);
        run = i + 1;
        if (ch == '"' || ch == '\\') {
            char e[2] = { '\\', (char)ch };
            mbuf_append(b, e, 2);
        } else {
            char e[6] = { '\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15] };
            mbuf_append(b, e, 6);
        }
    }
    mbuf_append(b, s + run, n - run);
    mbuf_append(b, "\"", 1);
}

/* Text PostgreSQL takes: valid UTF-8 without NUL. */
static bool text_ok(span_t s)
{
    return !s.p || (utf8_valid(s.p, s.len) && !memchr(s.p, '\0', s.len));
}

/* A copy of s fit for a text column: bytes that are not printable ASCII
 * become '?'. */
static void printable(char *out, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        out[k++] = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f ? s[i] : '?';
    out[k] = '\0';
}

static uint32_t src_index(pgw_t *w, span_t src)
{
    for (size_t i = w->nsrcs; i-- > 0;)
        if (strlen(w->srcs[i]) == src.len && !memcmp(w->srcs[i], src.p, src.len))
            return (uint32_t)i;
    w->srcs = xreallocarray(w->srcs, w->nsrcs + 1, sizeof *w->srcs);
    w->srcs[w->nsrcs] = xstrndup(src.p, src.len);
    return (uint32_t)w->nsrcs++;
}

/* ---- batch building ------------------------------------------------------- */

typedef struct {
    uint32_t src;
    uint64_t seq;
    char topic[24];
    uint32_t raw_off, raw_len;
} origin_t;

/* A record of the message pgw_apply is at (its src and topic looked up
 * once a message, in w->msg_src and w->msg_topic). */
static origin_t origin_of(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec)
{
    origin_t o = { w->msg_src, m->seq, "", (uint32_t)w->raw.len, 0 };
    memcpy(o.topic, w->msg_topic, sizeof o.topic);
    msgpack_packer pk;
    mbuf_packer(&w->raw, &pk);
    msgpack_pack_object(&pk, *rec);
    o.raw_len = (uint32_t)(w->raw.len - o.raw_off);
    return o;
}

static void dead_row(pgw_t *w, const char *src, uint64_t seq, const char *topic, const char *kind,
                     const char *reason, const void *rec, size_t reclen)
{
    char buf[1024];
    pgcopy_row(&w->dead, 6);
    pgcopy_text(&w->dead, span_cstr(src));
    pgcopy_i64(&w->dead, (int64_t)seq);
    pgcopy_text(&w->dead, span_cstr(topic));
    pgcopy_text(&w->dead, span_cstr(kind));
    /* PostgreSQL's messages are UTF-8; ours are ASCII: either way, no NUL
     * or invalid bytes reach the column */
    size_t rl = strlen(reason);
    if (!utf8_valid(reason, rl)) {
        printable(buf, sizeof buf, reason, rl);
        reason = buf;
    }
    pgcopy_text(&w->dead, span_cstr(reason));
    pgcopy_bytes(&w->dead, rec, reclen);
    (*w->c_dead)++;
}

static void dead_origin(pgw_t *w, const origin_t *o, const char *kind, const char *reason)
{
    dead_row(w, w->srcs[o->src], o->seq, o->topic, kind, reason, w->raw.data + o->raw_off,
             o->raw_len);
}

/* A refused record: counted, logged now and then, kept in dead_letter. */
static void refuse(pgw_t *w, const origin_t *o, const char *kind, const char *reason)
{
    (*w->c_bad)++;
    static log_complain_t lc;
    log_complain(&lc, tmtime_mono_ns(), LOG_LVL_WARN, "a record goes to dead_letter",
                 "src=%s seq=%" PRIu64 " topic=%s kind=%s reason=\"%s\"", w->srcs[o->src], o->seq,
                 o->topic, kind, reason);
    dead_origin(w, o, kind, reason);
}

static void add_info(pgw_t *w, table_id_t id, const origin_t *o)
{
    table_t *t = &w->t[id];
    if (t->rows.n > t->icap) {
        t->icap = t->rows.n * 2;
        t->info = xreallocarray(t->info, t->icap, sizeof *t->info);
    }
    rowinfo_t *ri = &t->info[t->rows.n - 1];
    ri->src = o->src;
    ri->seq = o->seq;
    memcpy(ri->topic, o->topic, sizeof ri->topic);
    ri->raw_off = o->raw_off;
    ri->raw_len = o->raw_len;
}

static void want_day(pgw_t *w, int64_t day)
{
    for (size_t i = 0; i < w->ndays; i++)
        if (w->days[i] == day)
            return;
    for (size_t i = 0; i < w->nwant; i++)
        if (w->want[i] == day)
            return;
    if (w->nwant == w->cwant) {
        w->cwant = w->cwant ? w->cwant * 2 : 8;
        w->want = xreallocarray(w->want, w->cwant, sizeof *w->want);
    }
    w->want[w->nwant++] = day;
}

static void add_usage(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec, int64_t now_ns)
{
    origin_t o = origin_of(w, m, rec);
    msg_usage_t u;
    char err[256];
    if (msg_usage_unpack(rec, &u, err, sizeof err) < 0) {
        refuse(w, &o, MSG_KIND_USAGE, err);
        return;
    }
    const span_t strs[] = { u.provider, u.model, u.operation, u.user, u.account, u.project,
                            u.status, u.error_type, u.request_id, u.cost_source, u.price_version,
                            u.key_id };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!text_ok(strs[i])) {
            refuse(w, &o, MSG_KIND_USAGE, "a string is not valid UTF-8 or holds a NUL byte");
            return;
        }
    for (size_t i = 0; i < u.ntags; i++)
        if (!text_ok(u.tags[i].key) || !text_ok(u.tags[i].value)) {
            refuse(w, &o, MSG_KIND_USAGE, "a tag is not valid UTF-8 or holds a NUL byte");
            return;
        }
    int64_t lo, hi, day = day_of(u.ts);
    pgw_day_range(w, now_ns, &lo, &hi);
    if (day < lo || day > hi) {
        snprintf(err, sizeof err, "ts is outside the days kept (raw_retention_days = %" PRId64
                                  ", partitions_ahead = %" PRId64 ")",
                 w->c->raw_retention_days, w->c->partitions_ahead);
        refuse(w, &o, MSG_KIND_USAGE, err);
        return;
    }
    want_day(w, day);
    pgcopy_t *c = &w->t[T_EVENTS].rows;
    pgcopy_row(c, tables[T_EVENTS].nfields);
    pgcopy_ts(c, u.ts);
    pgcopy_ts(c, u.recv_ts);
    pgcopy_text(c, u.provider);
    pgcopy_text(c, u.model);
    pgcopy_text(c, u.operation);
    pgcopy_text(c, u.user);
    pgcopy_text(c, u.account);
    pgcopy_text(c, u.project);
    pgcopy_text(c, u.status);
    pgcopy_text(c, u.error_type);
    pgcopy_text(c, u.request_id);
    pgcopy_i64(c, (int64_t)u.input_tokens);
    pgcopy_i64(c, (int64_t)u.cache_read_tokens);
    pgcopy_i64(c, (int64_t)u.cache_write_tokens);
    pgcopy_i64(c, (int64_t)u.cache_write_1h_tokens);
    pgcopy_i64(c, (int64_t)u.output_tokens);
    pgcopy_i64(c, (int64_t)u.reasoning_tokens);
    pgcopy_i64(c, (int64_t)u.requests);
    if (u.latency_us >= 0)
        pgcopy_i64(c, u.latency_us);
    else
        pgcopy_null(c);
    if (u.ttft_us >= 0)
        pgcopy_i64(c, u.ttft_us);
    else
        pgcopy_null(c);
    pgcopy_i64(c, u.cost_nusd);
    pgcopy_text(c, u.cost_source);
    pgcopy_text(c, u.price_version);
    if (u.http_status)
        pgcopy_i32(c, u.http_status);
    else
        pgcopy_null(c);
    if (u.retries >= 0)
        pgcopy_i32(c, u.retries);
    else
        pgcopy_null(c);
    pgcopy_bool(c, u.is_signed);
    pgcopy_text(c, u.key_id);
    if (u.ntags) {
        mbuf_reset(&w->json);
        mbuf_append(&w->json, "{", 1);
        for (size_t i = 0; i < u.ntags; i++) {
            if (i)
                mbuf_append(&w->json, ",", 1);
            pgw_json_str(&w->json, u.tags[i].key.p, u.tags[i].key.len);
            mbuf_append(&w->json, ":", 1);
            pgw_json_str(&w->json, u.tags[i].value.p ? u.tags[i].value.p : "", u.tags[i].value.len);
        }
        mbuf_append(&w->json, "}", 1);
        pgcopy_jsonb(c, w->json.data, w->json.len);
    } else {
        pgcopy_null(c);
    }
    add_info(w, T_EVENTS, &o);
}

static void add_rollup(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec)
{
    origin_t o = origin_of(w, m, rec);
    msg_rollup_t r;
    char err[256];
    if (msg_rollup_unpack(rec, &r, err, sizeof err) < 0) {
        refuse(w, &o, MSG_KIND_ROLLUP, err);
        return;
    }
    const span_t strs[] = { r.grain, r.dim, r.provider, r.model, r.operation, r.status, r.key };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!text_ok(strs[i])) {
            refuse(w, &o, MSG_KIND_ROLLUP, "a string is not valid UTF-8 or holds a NUL byte");
            return;
        }
    pgcopy_t *c = &w->t[T_ROLLUP].rows;
    pgcopy_row(c, tables[T_ROLLUP].nfields);
    pgcopy_text0(c, r.grain);
    pgcopy_text0(c, r.dim);
    pgcopy_ts(c, r.start);
    pgcopy_ts(c, r.end);
    pgcopy_text0(c, r.provider);
    pgcopy_text0(c, r.model);
    pgcopy_text0(c, r.operation);
    pgcopy_text0(c, r.status);
    pgcopy_text0(c, r.key);
    pgcopy_text(c, m->src);
    pgcopy_i32(c, (int32_t)r.shard);
    pgcopy_i32(c, (int32_t)r.shards);
    pgcopy_i32(c, (int32_t)r.rev);
    pgcopy_i64(c, (int64_t)r.requests);
    pgcopy_i64(c, (int64_t)r.errors);
    pgcopy_i64(c, (int64_t)r.input_tokens);
    pgcopy_i64(c, (int64_t)r.cache_read_tokens);
    pgcopy_i64(c, (int64_t)r.cache_write_tokens);
    pgcopy_i64(c, (int64_t)r.cache_write_1h_tokens);
    pgcopy_i64(c, (int64_t)r.output_tokens);
    pgcopy_i64(c, (int64_t)r.reasoning_tokens);
    pgcopy_i64(c, r.cost_nusd);
    if (r.latency.len)
        pgcopy_bytes(c, r.latency.p, r.latency.len);
    else
        pgcopy_null(c);
    if (r.ttft.len)
        pgcopy_bytes(c, r.ttft.p, r.ttft.len);
    else
        pgcopy_null(c);
    pgcopy_i64(c, w->ord++);
    add_info(w, T_ROLLUP, &o);
}

static void add_budget(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec)
{
    origin_t o = origin_of(w, m, rec);
    msg_budget_t b;
    char err[256];
    if (msg_budget_unpack(rec, &b, err, sizeof err) < 0) {
        refuse(w, &o, MSG_KIND_BUDGET, err);
        return;
    }
    const span_t strs[] = { b.name, b.scope, b.scope_value, b.period, b.state, b.crossing };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!text_ok(strs[i])) {
            refuse(w, &o, MSG_KIND_BUDGET, "a string is not valid UTF-8 or holds a NUL byte");
            return;
        }
    pgcopy_t *c = &w->t[T_BUDGET].rows;
    pgcopy_row(c, tables[T_BUDGET].nfields);
    pgcopy_text0(c, b.name);
    pgcopy_text0(c, b.scope);
    pgcopy_text0(c, b.scope_value);
    pgcopy_text0(c, b.period);
    pgcopy_text(c, m->src);
    pgcopy_ts(c, b.period_start);
    pgcopy_ts(c, b.period_end);
    pgcopy_i64(c, b.limit_nusd);
    pgcopy_i64(c, b.rollover_nusd);
    pgcopy_i64(c, b.spent_nusd);
    pgcopy_i64(c, b.remaining_nusd);
    pgcopy_i64(c, b.forecast_avg_nusd);
    pgcopy_i64(c, b.forecast_rate_nusd);
    if (b.exhaust_ts > 0)
        pgcopy_ts(c, b.exhaust_ts);
    else
        pgcopy_null(c);
    pgcopy_i32(c, (int32_t)b.warn_pct);
    pgcopy_text0(c, b.state);
    pgcopy_bool(c, b.partial);
    pgcopy_i32(c, (int32_t)b.shard);
    pgcopy_i32(c, (int32_t)b.shards);
    pgcopy_ts(c, b.ts);
    pgcopy_i64(c, w->ord++);
    add_info(w, T_BUDGET, &o);
    if (b.crossing.p && b.crossing.len) {
        c = &w->t[T_CROSSING].rows;
        pgcopy_row(c, tables[T_CROSSING].nfields);
        pgcopy_text0(c, b.name);
        pgcopy_text0(c, b.scope_value);
        pgcopy_ts(c, b.period_start);
        pgcopy_text0(c, b.crossing);
        pgcopy_text(c, m->src);
        pgcopy_ts(c, b.crossed_ts);
        pgcopy_i64(c, b.spent_nusd);
        pgcopy_i64(c, b.limit_nusd);
        add_info(w, T_CROSSING, &o);
    }
}

static void add_quota(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec)
{
    origin_t o = origin_of(w, m, rec);
    msg_quota_t q;
    char err[256];
    if (msg_quota_unpack(rec, &q, err, sizeof err) < 0) {
        refuse(w, &o, MSG_KIND_QUOTA, err);
        return;
    }
    const span_t strs[] = { q.subject, q.id, q.window, q.unit, q.state, q.prev };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (!text_ok(strs[i])) {
            refuse(w, &o, MSG_KIND_QUOTA, "a string is not valid UTF-8 or holds a NUL byte");
            return;
        }
    pgcopy_t *c = &w->t[T_QUOTA].rows;
    pgcopy_row(c, tables[T_QUOTA].nfields);
    pgcopy_ts(c, q.ts);
    pgcopy_text0(c, q.subject);
    pgcopy_text0(c, q.id);
    pgcopy_text0(c, q.window);
    pgcopy_text0(c, q.unit);
    pgcopy_text0(c, q.state);
    pgcopy_text0(c, q.prev);
    pgcopy_i64(c, q.used);
    pgcopy_i64(c, q.limit);
    pgcopy_text(c, m->src);
    add_info(w, T_QUOTA, &o);
}

/* labels or annotations as a JSON object into w->json */
static void json_object(pgw_t *w, const msg_tag_t *t, size_t n)
{
    mbuf_reset(&w->json);
    mbuf_append(&w->json, "{", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            mbuf_append(&w->json, ",", 1);
        pgw_json_str(&w->json, t[i].key.p ? t[i].key.p : "", t[i].key.len);
        mbuf_append(&w->json, ":", 1);
        pgw_json_str(&w->json, t[i].value.p ? t[i].value.p : "", t[i].value.len);
    }
    mbuf_append(&w->json, "}", 1);
}

static void add_alert(pgw_t *w, const bus_msg_t *m, const msgpack_object *rec)
{
    origin_t o = origin_of(w, m, rec);
    msg_alert_t a;
    char err[256];
    if (msg_alert_unpack(rec, &a, err, sizeof err) < 0) {
        refuse(w, &o, MSG_KIND_ALERT, err);
        return;
    }
    bool ok = text_ok(a.alertname) && text_ok(a.state) && text_ok(a.severity) &&
              text_ok(a.fingerprint);
    for (size_t i = 0; ok && i < a.nlabels; i++)
        ok = text_ok(a.labels[i].key) && text_ok(a.labels[i].value);
    for (size_t i = 0; ok && i < a.nannotations; i++)
        ok = text_ok(a.annotations[i].key) && text_ok(a.annotations[i].value);
    if (!ok) {
        refuse(w, &o, MSG_KIND_ALERT, "a string is not valid UTF-8 or holds a NUL byte");
        return;
    }
    pgcopy_t *c = &w->t[T_ALERT].rows;
    pgcopy_row(c, tables[T_ALERT].nfields);
    pgcopy_ts(c, a.ts);
    pgcopy_text0(c, a.alertname);
    pgcopy_text0(c, a.state);
    pgcopy_text(c, a.severity.len ? a.severity : SPAN_NULL);
    pgcopy_text0(c, a.fingerprint);
    json_object(w, a.labels, a.nlabels);
    pgcopy_jsonb(c, w->json.data, w->json.len);
    json_object(w, a.annotations, a.nannotations);
    pgcopy_jsonb(c, w->json.data, w->json.len);
    pgcopy_f64(c, a.value);
    pgcopy_text(c, m->src);
    pgcopy_i64(c, (int64_t)m->seq);
    add_info(w, T_ALERT, &o);
}

void pgw_apply(pgw_t *w, const bus_msg_t *m, int64_t now_ns)
{
    if (!pgw_pending(w)) {
        w->since = tmtime_mono_ns();
        w->oldest_pub = m->ts;
    } else if (m->ts < w->oldest_pub) {
        w->oldest_pub = m->ts;
    }
    w->msg_src = src_index(w, m->src);
    printable(w->msg_topic, sizeof w->msg_topic, m->topic.p, m->topic.len);
    void (*add)(pgw_t *, const bus_msg_t *, const msgpack_object *) = NULL;
    bool usage = false;
    if (span_eq_cstr(m->kind, MSG_KIND_USAGE) && span_starts_with(m->topic, "ev."))
        usage = true;
    else if (span_eq_cstr(m->kind, MSG_KIND_ROLLUP) && span_starts_with(m->topic, "roll."))
        add = add_rollup;
    else if (span_eq_cstr(m->kind, MSG_KIND_BUDGET) && span_eq_cstr(m->topic, "budget"))
        add = add_budget;
    else if (span_eq_cstr(m->kind, MSG_KIND_QUOTA) && span_eq_cstr(m->topic, "quota"))
        add = add_quota;
    else if (span_eq_cstr(m->kind, MSG_KIND_ALERT) && span_eq_cstr(m->topic, "alert"))
        add = add_alert;
    char kind[72];
    printable(kind, sizeof kind, m->kind.p, m->kind.len);
    if (!usage && !add) {
        (*w->c_unexpected)++;
        origin_t o = origin_of(w, m, m->body);
        refuse(w, &o, kind, "a kind of message this writer does not store on this topic");
        return;
    }
    const msgpack_object *b = m->body;
    if (b->type != MSGPACK_OBJECT_ARRAY) {
        origin_t o = origin_of(w, m, b);
        refuse(w, &o, kind, "the body is not an array of records");
        return;
    }
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        if (usage)
            add_usage(w, m, &b->via.array.ptr[i], now_ns);
        else
            add(w, m, &b->via.array.ptr[i]);
    }
}

size_t pgw_pending(const pgw_t *w)
{
    size_t n = w->dead.n;
    for (int i = 0; i < T_N; i++)
        n += w->t[i].rows.n;
    return n;
}

int64_t pgw_pending_since(const pgw_t *w) { return pgw_pending(w) ? w->since : 0; }

void pgw_drop(pgw_t *w)
{
    for (int i = 0; i < T_N; i++)
        pgcopy_reset(&w->t[i].rows);
    pgcopy_reset(&w->dead);
    mbuf_reset(&w->raw);
    for (size_t i = 0; i < w->nsrcs; i++)
        free(w->srcs[i]);
    w->nsrcs = 0;
    w->nwant = 0;
    w->ord = 0;
}

/* ---- PostgreSQL ------------------------------------------------------------- */

typedef enum { PG_OK = 0, PG_DATA = -1, PG_CONN = -2 } pgres_t;

/* A failure that a row caused (PostgreSQL refused a value) rather than the
 * connection or the server. */
static pgres_t classify(pgw_t *w, const PGresult *r)
{
    if (PQstatus(w->conn) != CONNECTION_OK)
        return PG_CONN;
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (!st)
        return PG_CONN;
    /* 22: data exception, 23: integrity constraint, 54: program limit */
    if (!strncmp(st, "22", 2) || !strncmp(st, "23", 2) || !strncmp(st, "54", 2))
        return PG_DATA;
    return PG_CONN;
}

static void set_err(pgw_t *w, const PGresult *r, const char *what, char *err, size_t cap)
{
    const char *m = r ? PQresultErrorMessage(r) : "";
    if (!m || !*m)
        m = PQerrorMessage(w->conn);
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    snprintf(err, cap, "%s: %.*s", what, (int)n, m);
    /* one line, no double quotes: it goes into log lines and dead_letter */
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
        else if (*p == '"')
            *p = '\'';
}

/* Runs sql (one or more statements) and returns PG_OK, or the failure. */
static pgres_t exec_as(pgw_t *w, const char *sql, const char *what, char *err, size_t cap)
{
    PGresult *r = PQexec(w->conn, sql);
    ExecStatusType s = PQresultStatus(r);
    pgres_t rc = PG_OK;
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
        rc = classify(w, r);
        set_err(w, r, what, err, cap);
    }
    PQclear(r);
    return rc;
}

static pgres_t exec(pgw_t *w, const char *sql, char *err, size_t cap)
{
    return exec_as(w, sql, sql, err, cap);
}

/* The merge of a staging table into its table (errors say which). */
static pgres_t merge(pgw_t *w, const table_def_t *def, char *err, size_t cap)
{
    char what[64];
    snprintf(what, sizeof what, "merge into %s", def->name);
    return exec_as(w, def->merge, what, err, cap);
}

/* COPY of rows [from, to) of c. */
static pgres_t copy_rows(pgw_t *w, const char *sql, const pgcopy_t *c, size_t from, size_t to,
                         char *err, size_t cap)
{
    PGresult *r = PQexec(w->conn, sql);
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        pgres_t rc = classify(w, r);
        set_err(w, r, "COPY", err, cap);
        PQclear(r);
        return rc;
    }
    PQclear(r);
    size_t a = c->off[from], b = pgcopy_end_of(c, to - 1);
    bool ok = PQputCopyData(w->conn, PGCOPY_HEADER, PGCOPY_HEADER_LEN) == 1 &&
              PQputCopyData(w->conn, c->tup.data + a, (int)(b - a)) == 1 &&
              PQputCopyData(w->conn, PGCOPY_TRAILER, PGCOPY_TRAILER_LEN) == 1;
    if (PQputCopyEnd(w->conn, ok ? NULL : "the writer could not send its rows") != 1)
        ok = false;
    pgres_t rc = ok ? PG_OK : PG_CONN;
    if (!ok)
        snprintf(err, cap, "COPY: %s", PQerrorMessage(w->conn));
    while ((r = PQgetResult(w->conn))) {
        if (rc == PG_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
            rc = classify(w, r);
            set_err(w, r, "COPY", err, cap);
        }
        PQclear(r);
    }
    return rc;
}

/* Sends rows [from, to) of table t, each half on its own after a refusal,
 * down to the single rows PostgreSQL refuses, which go to dead_letter. A
 * table written through a staging table is merged part by part, so a row
 * the merge refuses is found the same way. */
static pgres_t copy_careful(pgw_t *w, const table_def_t *def, table_t *t, const char *kind,
                            size_t from, size_t to, char *err, size_t cap)
{
    if (from >= to)
        return PG_OK;
    pgres_t rc = exec(w, "SAVEPOINT part", err, cap);
    if (rc)
        return PG_CONN;
    rc = copy_rows(w, def->copy, &t->rows, from, to, err, cap);
    if (rc == PG_OK && def->merge && (rc = merge(w, def, err, cap)) == PG_OK &&
        exec(w, def->clear, err, cap))
        return PG_CONN;
    if (rc == PG_OK)
        return exec(w, "RELEASE SAVEPOINT part", err, cap) ? PG_CONN : PG_OK;
    if (rc == PG_CONN)
        return PG_CONN;
    char why[1024];
    snprintf(why, sizeof why, "%s", err);
    if (exec(w, "ROLLBACK TO SAVEPOINT part", err, cap) || exec(w, "RELEASE SAVEPOINT part", err, cap))
        return PG_CONN;
    if (to - from == 1) {
        const rowinfo_t *ri = &t->info[from];
        const char *reason = strncmp(why, "COPY: ", 6) ? why : why + 6;
        (*w->c_bad)++;
        t->refused++;
        log_warn("PostgreSQL refused a record; it goes to dead_letter", "src=%s seq=%" PRIu64
                 " topic=%s reason=\"%s\"", w->srcs[ri->src], ri->seq, ri->topic, reason);
        dead_row(w, w->srcs[ri->src], ri->seq, ri->topic, kind, reason, w->raw.data + ri->raw_off,
                 ri->raw_len);
        return PG_OK;
    }
    size_t mid = from + (to - from) / 2;
    rc = copy_careful(w, def, t, kind, from, mid, err, cap);
    if (rc == PG_OK)
        rc = copy_careful(w, def, t, kind, mid, to, err, cap);
    return rc;
}

static int64_t *insert_day(int64_t **v, size_t *n, size_t *cap, int64_t day)
{
    size_t i = 0;
    while (i < *n && (*v)[i] < day)
        i++;
    if (i < *n && (*v)[i] == day)
        return *v;
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *v = xreallocarray(*v, *cap, sizeof **v);
    }
    memmove(*v + i + 1, *v + i, (*n - i) * sizeof **v);
    (*v)[i] = day;
    (*n)++;
    return *v;
}

static pgres_t create_partition(pgw_t *w, int64_t day, char *err, size_t cap)
{
    char name[32];
    int y0, y1;
    unsigned m0, d0, m1, d1;
    civil_from_days(day, &y0, &m0, &d0);
    civil_from_days(day + 1, &y1, &m1, &d1);
    mbuf_reset(&w->sql);
    char buf[512];
    snprintf(buf, sizeof buf,
             "CREATE TABLE IF NOT EXISTS %s PARTITION OF llm_events FOR VALUES FROM "
             "('%04d-%02u-%02u 00:00:00+00') TO ('%04d-%02u-%02u 00:00:00+00')",
             pgw_partition_name(day, name, sizeof name), y0, m0, d0, y1, m1, d1);
    pgres_t rc = exec(w, buf, err, cap);
    if (rc == PG_OK)
        (*w->c_part_created)++;
    return rc;
}

/* The partitions that exist, from the catalog. */
static int load_partitions(pgw_t *w, char *err, size_t cap)
{
    PGresult *r = PQexec(w->conn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                                  "c.oid = i.inhrelid WHERE i.inhparent = 'llm_events'::regclass");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(w, r, "listing the partitions of llm_events", err, cap);
        PQclear(r);
        return -1;
    }
    w->ndays = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t d = pgw_partition_day(PQgetvalue(r, i, 0));
        if (d >= 0)
            insert_day(&w->days, &w->ndays, &w->cdays, d);
    }
    PQclear(r);
    *w->g_partitions = (int64_t)w->ndays;
    return 0;
}

/* The whole batch in one transaction: partitions it needs, every table,
 * the dead letters and the positions. careful: each table's rows sent in
 * halves after a refusal. */
static pgres_t write_batch(pgw_t *w, const pgw_pos_t *pos, size_t npos, bool careful, char *err,
                           size_t cap)
{
    static const char *const kinds[T_N] = { MSG_KIND_USAGE, MSG_KIND_ROLLUP, MSG_KIND_BUDGET,
                                            MSG_KIND_BUDGET, MSG_KIND_QUOTA, MSG_KIND_ALERT };
    for (int i = 0; i < T_N; i++)
        w->t[i].refused = 0;
    pgres_t rc = exec(w, "BEGIN", err, cap);
    if (rc)
        return PG_CONN;
    if (w->nwant) {
        char lock[96];
        snprintf(lock, sizeof lock, "SELECT pg_advisory_xact_lock(%lld)", (long long)LOCK_PARTITIONS);
        if ((rc = exec(w, lock, err, cap)))
            goto fail;
        for (size_t i = 0; i < w->nwant; i++)
            if ((rc = create_partition(w, w->want[i], err, cap)))
                goto fail;
    }
    for (int i = 0; i < T_N; i++) {
        table_t *t = &w->t[i];
        if (!t->rows.n)
            continue;
        rc = careful ? copy_careful(w, &tables[i], t, kinds[i], 0, t->rows.n, err, cap)
                     : copy_rows(w, tables[i].copy, &t->rows, 0, t->rows.n, err, cap);
        if (rc)
            goto fail;
        /* (careful: merged part by part already) */
        if (!careful && tables[i].merge && (rc = merge(w, &tables[i], err, cap)))
            goto fail;
    }
    if (w->dead.n && (rc = copy_rows(w, dead_copy_sql, &w->dead, 0, w->dead.n, err, cap)))
        goto fail;
    if (npos) {
        pgcopy_t off = { 0 };
        for (size_t i = 0; i < npos; i++) {
            pgcopy_row(&off, 3);
            pgcopy_text(&off, span_cstr(w->o.consumer));
            pgcopy_text(&off, span_cstr(pos[i].src));
            pgcopy_i64(&off, (int64_t)pos[i].seq);
        }
        rc = copy_rows(w, offsets_copy_sql, &off, 0, off.n, err, cap);
        pgcopy_free(&off);
        if (rc || (rc = exec(w, offsets_merge_sql, err, cap)))
            goto fail;
    }
    if ((rc = exec(w, "COMMIT", err, cap)))
        return rc == PG_DATA ? PG_DATA : PG_CONN;
    return PG_OK;
fail:
    if (PQstatus(w->conn) == CONNECTION_OK) {
        char e2[256];
        exec(w, "ROLLBACK", e2, sizeof e2);
    }
    return rc;
}

int pgw_flush(pgw_t *w, const pgw_pos_t *pos, size_t npos, char *err, size_t cap)
{
    if (!w->conn)
        return -1;
    size_t rows[T_N], dead0 = w->dead.n;
    for (int i = 0; i < T_N; i++)
        rows[i] = w->t[i].rows.n;
    int64_t t0 = tmtime_mono_ns();
    pgres_t rc = write_batch(w, pos, npos, false, err, cap);
    if (rc == PG_DATA) {
        log_warn("PostgreSQL refused the batch; sending it again in parts", "error=\"%s\"", err);
        (*w->c_batch_errors)++;
        rc = write_batch(w, pos, npos, true, err, cap);
        if (rc == PG_DATA) /* not a row's fault after all: retry from the positions */
            rc = PG_CONN;
    }
    if (rc != PG_OK) {
        (*w->c_batch_errors)++;
        w->dead.n = dead0 <= w->dead.n ? dead0 : w->dead.n;
        pgw_drop(w);
        return -1;
    }
    for (size_t i = 0; i < w->nwant; i++)
        insert_day(&w->days, &w->ndays, &w->cdays, w->want[i]);
    *w->g_partitions = (int64_t)w->ndays;
    /* the rows stored: those refused went to dead_letter */
    for (int i = 0; i < T_N; i++)
        *w->c_rows[i] += (int64_t)(rows[i] - w->t[i].refused);
    int64_t now = tmtime_now_ns();
    (*w->c_batches)++;
    *w->g_batch_rows = (int64_t)pgw_pending(w);
    *w->g_batch_ms = (tmtime_mono_ns() - t0) / TMTIME_NS_PER_MS;
    if (w->oldest_pub > 0 && now > w->oldest_pub)
        *w->g_lag_ms = (now - w->oldest_pub) / TMTIME_NS_PER_MS;
    pgw_drop(w);
    return 0;
}

/* ---- migrations ------------------------------------------------------------- */

static int migrate(pgw_t *w, char *err, size_t cap)
{
    char sql[256];
    if (exec(w, "BEGIN", err, cap))
        return -1;
    snprintf(sql, sizeof sql, "SELECT pg_advisory_xact_lock(%lld)", (long long)LOCK_MIGRATE);
    if (exec(w, sql, err, cap) ||
        exec(w, "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL "
                "DEFAULT now())",
             err, cap))
        goto fail;
    PGresult *r = PQexec(w->conn, "SELECT version, name, checksum FROM schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(w, r, "reading schema_migrations", err, cap);
        PQclear(r);
        goto fail;
    }
    int applied = 0;
    for (size_t i = 0; i < pgw_migrations_n; i++) {
        const embed_file_t *f = &pgw_migrations[i];
        int version = atoi(f->name);
        char sum[17];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)XXH3_64bits(f->data, f->len));
        int found = -1;
        for (int k = 0; k < PQntuples(r); k++)
            if (atoi(PQgetvalue(r, k, 0)) == version)
                found = k;
        if (found >= 0) {
            if (strcmp(PQgetvalue(r, found, 2), sum)) {
                snprintf(err, cap,
                         "migration %s differs from the one applied to this database (checksum %s, "
                         "applied %s as %s): a released migration is never edited; add a new one",
                         f->name, sum, PQgetvalue(r, found, 2), PQgetvalue(r, found, 1));
                PQclear(r);
                exec(w, "ROLLBACK", sql, sizeof sql);
                return -2;
            }
            continue;
        }
        if (exec(w, f->data, err, cap)) {
            char e[1024];
            snprintf(e, sizeof e, "migration %s: %s", f->name, err);
            snprintf(err, cap, "%s", e);
            PQclear(r);
            goto fail;
        }
        const char *params[3];
        char v[16];
        snprintf(v, sizeof v, "%d", version);
        params[0] = v;
        params[1] = f->name;
        params[2] = sum;
        PGresult *ins = PQexecParams(w->conn,
                                     "INSERT INTO schema_migrations (version, name, checksum) "
                                     "VALUES ($1, $2, $3)",
                                     3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(ins) != PGRES_COMMAND_OK) {
            set_err(w, ins, "recording a migration", err, cap);
            PQclear(ins);
            PQclear(r);
            goto fail;
        }
        PQclear(ins);
        applied++;
        log_info("migration applied", "name=%s", f->name);
    }
    PQclear(r);
    if (exec(w, "COMMIT", err, cap))
        return -1;
    if (!applied)
        log_debug("schema up to date", "migrations=%zu", pgw_migrations_n);
    return 0;
fail:
    exec(w, "ROLLBACK", sql, sizeof sql);
    return -1;
}

/* ---- the config, mirrored ------------------------------------------------------- */

static int exec_params(pgw_t *w, const char *sql, int n, const char *const *v, char *err, size_t cap)
{
    PGresult *r = PQexecParams(w->conn, sql, n, NULL, v, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        set_err(w, r, sql, err, cap);
        rc = -1;
    }
    PQclear(r);
    return rc;
}

static int64_t pick(int64_t v, int64_t dflt) { return v < 0 ? dflt : v; }

static int mirror_limits(pgw_t *w, const char *subject, const char *id, const cfg_limits_t *l,
                         const cfg_limits_t *dflt, char *err, size_t cap)
{
    const cfg_t *cfg = w->o.cfg;
    int64_t mins = cfg->quota.window / 60000;
    char wname[24];
    if (mins % 60 == 0)
        snprintf(wname, sizeof wname, "%lldh", (long long)(mins / 60));
    else
        snprintf(wname, sizeof wname, "%lldm", (long long)mins);
    const char *windows[3] = { "day", "month", wname };
    int64_t tok[3] = { pick(l->daily_tokens, dflt->daily_tokens),
                       pick(l->monthly_tokens, dflt->monthly_tokens),
                       pick(l->window_tokens, dflt->window_tokens) };
    int64_t usd[3] = { pick(l->daily_nusd, dflt->daily_nusd), pick(l->monthly_nusd, dflt->monthly_nusd),
                       pick(l->window_nusd, dflt->window_nusd) };
    char t[24], u[24], p[24];
    snprintf(p, sizeof p, "%lld", (long long)pick(l->warn_pct, dflt->warn_pct));
    for (int i = 0; i < 3; i++) {
        snprintf(t, sizeof t, "%lld", (long long)tok[i]);
        snprintf(u, sizeof u, "%lld", (long long)usd[i]);
        const char *v[6] = { subject, id, windows[i], t, u, p };
        if (exec_params(w,
                        "INSERT INTO quota_limits (subject, id, \"window\", tokens, nusd, warn_pct) "
                        "VALUES ($1, $2, $3, $4, $5, $6)",
                        6, v, err, cap))
            return -1;
    }
    return 0;
}

static int mirror_config(pgw_t *w, char *err, size_t cap)
{
    const cfg_t *cfg = w->o.cfg;
    static const char *const periods[] = { "day", "week", "month" };
    char e2[256], lock[96];
    /* under a lock: without it, a writer's DELETE misses the rows another
     * is inserting, and its INSERTs then fail on their primary keys */
    snprintf(lock, sizeof lock, "SELECT pg_advisory_xact_lock(%lld)", (long long)LOCK_MIRROR);
    if (exec(w, "BEGIN", err, cap) || exec(w, lock, err, cap) ||
        exec(w, "DELETE FROM budgets", err, cap) || exec(w, "DELETE FROM quota_limits", err, cap))
        goto fail;
    for (size_t i = 0; i < cfg->nbudgets; i++) {
        const cfg_budget_t *b = &cfg->budgets[i];
        char kind[32], lim[24], warn[24], capv[24];
        const char *colon = strchr(b->scope, ':');
        snprintf(kind, sizeof kind, "%.*s", (int)(colon ? (size_t)(colon - b->scope) : strlen(b->scope)),
                 b->scope);
        snprintf(lim, sizeof lim, "%lld", (long long)b->limit_nusd);
        snprintf(warn, sizeof warn, "%lld", (long long)b->warn_pct);
        snprintf(capv, sizeof capv, "%lld", (long long)b->rollover_cap_nusd);
        const char *v[8] = { b->name, kind, colon ? colon + 1 : NULL,
                             periods[b->period >= 0 && b->period <= 2 ? b->period : 0],
                             lim, warn, b->rollover ? "true" : "false", capv };
        if (exec_params(w,
                        "INSERT INTO budgets (name, scope, scope_value, period, limit_nusd, warn_pct, "
                        "rollover, rollover_cap_nusd) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        8, v, err, cap))
            goto fail;
    }
    const cfg_limits_t *du = &cfg->quota.lim, *da = &cfg->account_quota;
    if (mirror_limits(w, "user", "*", du, du, err, cap) ||
        mirror_limits(w, "account", "*", da, da, err, cap))
        goto fail;
    for (size_t i = 0; i < cfg->nuser_quotas; i++)
        if (mirror_limits(w, "user", cfg->user_quotas[i].name, &cfg->user_quotas[i].lim, du, err,
                          cap))
            goto fail;
    for (size_t i = 0; i < cfg->naccount_quotas; i++)
        if (mirror_limits(w, "account", cfg->account_quotas[i].name, &cfg->account_quotas[i].lim,
                          da, err, cap))
            goto fail;
    if (exec(w, "COMMIT", err, cap))
        return -1;
    return 0;
fail:
    exec(w, "ROLLBACK", e2, sizeof e2);
    return -1;
}

/* ---- maintenance ---------------------------------------------------------------- */

int pgw_maintain(pgw_t *w, int64_t now_ns, char *err, size_t cap)
{
    if (!w->conn)
        return -1;
    char sql[256], e2[256];
    if (exec(w, "BEGIN", err, cap))
        return -1;
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_xact_lock(%lld)", (long long)LOCK_PARTITIONS);
    PGresult *r = PQexec(w->conn, sql);
    bool mine = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                !strcmp(PQgetvalue(r, 0, 0), "t");
    PQclear(r);
    if (!mine) { /* another writer is at it */
        exec(w, "ROLLBACK", e2, sizeof e2);
        return load_partitions(w, err, cap);
    }
    if (load_partitions(w, err, cap) < 0)
        goto fail;
    int64_t today = day_of(now_ns), created = 0, dropped = 0;
    for (int64_t d = today - 1; d <= today + w->c->partitions_ahead; d++) {
        bool have = false;
        for (size_t i = 0; i < w->ndays; i++)
            have |= w->days[i] == d;
        if (have)
            continue;
        if (create_partition(w, d, err, cap))
            goto fail;
        created++;
    }
    int64_t oldest = today - w->c->raw_retention_days;
    for (size_t i = 0; i < w->ndays; i++) {
        if (w->days[i] >= oldest)
            continue;
        char name[32];
        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s",
                 pgw_partition_name(w->days[i], name, sizeof name));
        if (exec(w, sql, err, cap))
            goto fail;
        (*w->c_part_dropped)++;
        dropped++;
    }
    int64_t deleted = 0;
    const struct {
        const char *grain;
        int64_t days;
    } keep[2] = { { "m", w->c->rollup_minute_days }, { "h", w->c->rollup_hour_days } };
    for (int i = 0; i < 2; i++) {
        snprintf(sql, sizeof sql,
                 "DELETE FROM llm_rollup WHERE grain = '%s' AND bucket_start < "
                 "to_timestamp(%lld) - interval '%lld days'",
                 keep[i].grain, (long long)(now_ns / TMTIME_NS_PER_SEC), (long long)keep[i].days);
        r = PQexec(w->conn, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            set_err(w, r, "rollup retention", err, cap);
            PQclear(r);
            goto fail;
        }
        deleted += atoll(PQcmdTuples(r));
        PQclear(r);
    }
    *w->c_rollup_deleted += deleted;
    if (exec(w, "COMMIT", err, cap))
        return -1;
    if (created || dropped || deleted)
        log_info("maintenance", "partitions_created=%lld partitions_dropped=%lld "
                                "rollup_rows_deleted=%lld",
                 (long long)created, (long long)dropped, (long long)deleted);
    return load_partitions(w, err, cap);
fail:
    exec(w, "ROLLBACK", e2, sizeof e2);
    return -1;
}

/* ---- life ------------------------------------------------------------------------ */

pgw_t *pgw_new(const pgw_opts_t *o)
{
    pgw_t *w = xcalloc(1, sizeof *w);
    w->o = *o;
    w->c = &o->cfg->pgwriter;
    stats_t *st = o->stats;
    for (int i = 0; i < T_N; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "table=%s", tables[i].name);
        w->c_rows[i] = stats_counter(st, "pgw_rows_total", labels);
    }
    w->c_dead = stats_counter(st, "pgw_dead_letter_total", NULL);
    w->c_bad = stats_counter(st, "pgw_refused_records_total", NULL);
    w->c_unexpected = stats_counter(st, "pgw_unexpected_messages_total", NULL);
    w->c_batches = stats_counter(st, "pgw_batches_total", NULL);
    w->c_batch_errors = stats_counter(st, "pgw_batch_errors_total", NULL);
    w->c_connects = stats_counter(st, "pgw_connects_total", NULL);
    w->c_connect_errors = stats_counter(st, "pgw_connect_errors_total", NULL);
    w->c_part_created = stats_counter(st, "pgw_partitions_created_total", NULL);
    w->c_part_dropped = stats_counter(st, "pgw_partitions_dropped_total", NULL);
    w->c_rollup_deleted = stats_counter(st, "pgw_rollup_rows_deleted_total", NULL);
    w->g_connected = stats_gauge(st, "pgw_connected", NULL);
    w->g_lag_ms = stats_gauge(st, "pgw_lag_ms", NULL);
    w->g_batch_rows = stats_gauge(st, "pgw_batch_rows", NULL);
    w->g_batch_ms = stats_gauge(st, "pgw_batch_duration_ms", NULL);
    w->g_partitions = stats_gauge(st, "pgw_partitions", NULL);
    return w;
}

void pgw_disconnect(pgw_t *w)
{
    if (w->conn)
        PQfinish(w->conn);
    w->conn = NULL;
    *w->g_connected = 0;
}

bool pgw_connected(const pgw_t *w) { return w->conn && PQstatus(w->conn) == CONNECTION_OK; }

int pgw_connect(pgw_t *w, int64_t now_ns, char *err, size_t cap)
{
    pgw_disconnect(w);
    (*w->c_connects)++;
    /* "" leaves everything to libpq's PG* environment */
    w->conn = PQconnectdb(w->c->database);
    if (PQstatus(w->conn) != CONNECTION_OK) {
        const char *m = PQerrorMessage(w->conn);
        size_t n = strlen(m);
        while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
            n--;
        snprintf(err, cap, "connecting to PostgreSQL: %.*s", (int)n, m);
        pgw_disconnect(w);
        (*w->c_connect_errors)++;
        return -1;
    }
    int rc = -1;
    if (exec(w, "SET client_min_messages = warning; SET client_encoding = 'UTF8'; "
                "SET TimeZone = 'UTC'",
             err, cap) == PG_OK &&
        (rc = migrate(w, err, cap)) == 0 && (rc = -1, mirror_config(w, err, cap) == 0) &&
        exec(w, temp_tables_sql, err, cap) == PG_OK && pgw_maintain(w, now_ns, err, cap) == 0)
        rc = 0;
    if (rc < 0) {
        pgw_disconnect(w);
        (*w->c_connect_errors)++;
        return rc;
    }
    *w->g_connected = 1;
    return 0;
}

int pgw_offsets(pgw_t *w, void (*fn)(void *arg, const char *src, uint64_t seq), void *arg,
                char *err, size_t cap)
{
    const char *v[1] = { w->o.consumer };
    PGresult *r = PQexecParams(w->conn, "SELECT src, seq FROM bus_offsets WHERE consumer = $1", 1,
                               NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        set_err(w, r, "reading bus_offsets", err, cap);
        PQclear(r);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++)
        fn(arg, PQgetvalue(r, i, 0), strtoull(PQgetvalue(r, i, 1), NULL, 10));
    PQclear(r);
    return 0;
}

void pgw_destroy(pgw_t **pw)
{
    pgw_t *w = *pw;
    if (!w)
        return;
    pgw_drop(w);
    pgw_disconnect(w);
    for (int i = 0; i < T_N; i++) {
        pgcopy_free(&w->t[i].rows);
        free(w->t[i].info);
    }
    pgcopy_free(&w->dead);
    mbuf_free(&w->raw);
    mbuf_free(&w->json);
    mbuf_free(&w->sql);
    free(w->srcs);
    free(w->days);
    free(w->want);
    free(w);
    *pw = NULL;
}

/* agg_test: the aggregator's rules driven directly, without sockets: usage
 * batches go in as bus messages, what it would publish is captured and
 * decoded. Totals against an independent recomputation, calendar edges in
 * non-UTC zones (midnight, month end, daylight saving, a leap day), quota
 * state changes, budget crossings once per period (also across a snapshot),
 * rollover, late events and revisions, snapshot equivalence, malformed
 * input, queries. Run one test alone with `agg_test NAME`. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <msgpack.h>

#include "agg.h"
#include "fnv.h"
#include "query.h"
#include "sketch.h"
#include "tmtime.h"
#include "xalloc.h"

#define S 1000000000LL
#define MIN (60 * S)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

/* ---- time --------------------------------------------------------------------- */

/* unix ns of a UTC civil time */
static int64_t utc(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                     .tm_min = mi, .tm_sec = s };
    return (int64_t)timegm(&tm) * S;
}

/* ---- what the aggregator publishes -------------------------------------------- */

typedef struct {
    char key[512]; /* grain|start|dim|values */
    msg_rollup_t r;
    uint64_t lat_count;
    int n; /* times sent */
} roll_t;

typedef struct {
    char subject[16], id[64], window[16], unit[16], state[16], prev[16];
    int64_t used, limit, ts;
} quota_rec_t;

typedef struct {
    char name[64], value[64], crossing[16], state[16];
    int64_t period_start, spent, limit, crossed_ts, remaining, forecast_avg, forecast_rate,
        exhaust;
    bool partial;
} budget_rec_t;

typedef struct {
    char name[64], type[4];
    double value, count, sum;
    uint32_t rev;
} flush_rec_t;

typedef struct {
    roll_t *rolls;
    size_t nrolls;
    quota_rec_t *quotas;
    size_t nquotas;
    budget_rec_t *budgets;
    size_t nbudgets;
    flush_rec_t *flushes;
    size_t nflushes;
    size_t messages;
    bool fail; /* the send callback refuses */
} out_t;

static void copy_span(char *dst, size_t cap, span_t s)
{
    size_t n = s.p ? (s.len < cap - 1 ? s.len : cap - 1) : 0;
    if (n)
        memcpy(dst, s.p, n);
    dst[n] = '\0';
}

static void keep_rollup(out_t *o, const msg_rollup_t *r)
{
    char key[512];
    snprintf(key, sizeof key, "%.*s|%lld|%.*s|%.*s|%.*s|%.*s|%.*s|%.*s", (int)r->grain.len,
             r->grain.p, (long long)r->start, (int)r->dim.len, r->dim.p, (int)r->provider.len,
             r->provider.p ? r->provider.p : "", (int)r->model.len, r->model.p ? r->model.p : "",
             (int)r->operation.len, r->operation.p ? r->operation.p : "", (int)r->status.len,
             r->status.p ? r->status.p : "", (int)r->key.len, r->key.p ? r->key.p : "");
    roll_t *slot = NULL;
    for (size_t i = 0; i < o->nrolls; i++)
        if (!strcmp(o->rolls[i].key, key))
            slot = &o->rolls[i];
    if (!slot) {
        o->rolls = xreallocarray(o->rolls, o->nrolls + 1, sizeof *o->rolls);
        slot = &o->rolls[o->nrolls++];
        memset(slot, 0, sizeof *slot);
        snprintf(slot->key, sizeof slot->key, "%s", key);
    }
    /* the last one sent wins, as readers do; strings are not kept */
    slot->r = *r;
    slot->r.provider = slot->r.model = slot->r.operation = slot->r.status = slot->r.key = SPAN_NULL;
    slot->r.grain = slot->r.dim = slot->r.latency = slot->r.ttft = SPAN_NULL;
    slot->lat_count = 0;
    if (r->latency.p && r->latency.len) {
        sketch_t *sk = sketch_decode(r->latency.p, r->latency.len, NULL, 0);
        assert_non_null(sk);
        slot->lat_count = sketch_count(sk);
        sketch_destroy(&sk);
    }
    slot->n++;
}

static int capture(void *arg, const char *topic, const char *kind, const void *head, size_t hl,
                   const void *tail, size_t tl)
{
    out_t *o = arg;
    if (o->fail)
        return -1;
    o->messages++;
    char *buf = xmalloc(hl + tl + 1);
    memcpy(buf, head, hl);
    memcpy(buf + hl, tail, tl);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, buf, hl + tl, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(up.data.type, MSGPACK_OBJECT_ARRAY);
    char err[256];
    for (uint32_t i = 0; i < up.data.via.array.size; i++) {
        const msgpack_object *r = &up.data.via.array.ptr[i];
        if (!strcmp(kind, MSG_KIND_ROLLUP)) {
            msg_rollup_t m;
            if (msg_rollup_unpack(r, &m, err, sizeof err) < 0)
                fail_msg("rollup record: %s", err);
            assert_true(!strncmp(topic, "roll.", 5) && topic[5] == m.grain.p[0]);
            keep_rollup(o, &m);
        } else if (!strcmp(kind, MSG_KIND_QUOTA)) {
            msg_quota_t m;
            if (msg_quota_unpack(r, &m, err, sizeof err) < 0)
                fail_msg("quota record: %s", err);
            o->quotas = xreallocarray(o->quotas, o->nquotas + 1, sizeof *o->quotas);
            quota_rec_t *q = &o->quotas[o->nquotas++];
            copy_span(q->subject, sizeof q->subject, m.subject);
            copy_span(q->id, sizeof q->id, m.id);
            copy_span(q->window, sizeof q->window, m.window);
            copy_span(q->unit, sizeof q->unit, m.unit);
            copy_span(q->state, sizeof q->state, m.state);
            copy_span(q->prev, sizeof q->prev, m.prev);
            q->used = m.used;
            q->limit = m.limit;
            q->ts = m.ts;
        } else if (!strcmp(kind, MSG_KIND_BUDGET)) {
            msg_budget_t m;
            if (msg_budget_unpack(r, &m, err, sizeof err) < 0)
                fail_msg("budget record: %s", err);
            o->budgets = xreallocarray(o->budgets, o->nbudgets + 1, sizeof *o->budgets);
            budget_rec_t *b = &o->budgets[o->nbudgets++];
            copy_span(b->name, sizeof b->name, m.name);
            copy_span(b->value, sizeof b->value, m.scope_value);
            copy_span(b->crossing, sizeof b->crossing, m.crossing);
            copy_span(b->state, sizeof b->state, m.state);
            b->period_start = m.period_start;
            b->spent = m.spent_nusd;
            b->limit = m.limit_nusd;
            b->crossed_ts = m.crossed_ts;
            b->remaining = m.remaining_nusd;
            b->forecast_avg = m.forecast_avg_nusd;
            b->forecast_rate = m.forecast_rate_nusd;
            b->exhaust = m.exhaust_ts;
            b->partial = m.partial;
        } else if (!strcmp(kind, MSG_KIND_FLUSH)) {
            msg_flush_t m;
            if (msg_flush_unpack(r, &m, err, sizeof err) < 0)
                fail_msg("flush record: %s", err);
            o->flushes = xreallocarray(o->flushes, o->nflushes + 1, sizeof *o->flushes);
            flush_rec_t *f = &o->flushes[o->nflushes++];
            copy_span(f->name, sizeof f->name, m.name);
            snprintf(f->type, sizeof f->type, "%s", msg_stype_name(m.type));
            f->value = m.value;
            f->count = m.count;
            f->sum = m.sum;
            f->rev = m.rev;
        } else {
            fail_msg("unexpected kind %s", kind);
        }
    }
    msgpack_unpacked_destroy(&up);
    free(buf);
    return 0;
}

static void out_free(out_t *o)
{
    free(o->rolls);
    free(o->quotas);
    free(o->budgets);
    free(o->flushes);
    memset(o, 0, sizeof *o);
}

static size_t crossings(const out_t *o, const char *name, const char *crossing)
{
    size_t n = 0;
    for (size_t i = 0; i < o->nbudgets; i++)
        n += !strcmp(o->budgets[i].name, name) && !strcmp(o->budgets[i].crossing, crossing);
    return n;
}

/* ---- the aggregator under test ------------------------------------------------ */

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    agg_t *a;
    out_t out;
} fix_t;

#define BASE_INI                                                                     \
    "[global]\ntimezone = %s\n"                                                          \
    "[aggregator]\nlateness = 5m\nclose_delay = 2s\nstatsd_interval = 10s\n"             \
    "%s"

static void fix_open(fix_t *f, const char *zone, const char *extra, uint32_t shard,
                     uint32_t shards)
{
    char ini[8192], err[4096];
    snprintf(ini, sizeof ini, BASE_INI, zone, extra ? extra : "");
    memset(f, 0, sizeof *f);
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-aggregator", "agg@test");
    agg_opts_t o = { f->cfg, shard, shards, "agg@test", f->st, capture, &f->out };
    f->a = agg_new(&o, err, sizeof err);
    if (!f->a)
        fail_msg("agg_new: %s", err);
}

static void fix_close(fix_t *f)
{
    agg_destroy(&f->a);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    out_free(&f->out);
}

static int64_t stat_of(fix_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->st, name, labels);
}

/* ---- input -------------------------------------------------------------------- */

typedef struct {
    const char *provider, *model, *operation, *user, *account, *project, *status;
    uint64_t in, cache_read, out, reasoning;
    int64_t cost, latency_us, ttft_us, ts, recv;
} ev_t;

static void fill_usage(msg_usage_t *u, const ev_t *e)
{
    msg_usage_init(u);
    u->provider = span_cstr(e->provider ? e->provider : "openai");
    u->model = span_cstr(e->model ? e->model : "gpt-4o");
    u->operation = span_cstr(e->operation ? e->operation : "chat");
    u->user = span_cstr(e->user);
    u->account = span_cstr(e->account);
    u->project = span_cstr(e->project);
    u->status = span_cstr(e->status ? e->status : "ok");
    u->cost_source = span_cstr("priced");
    u->input_tokens = e->in;
    u->cache_read_tokens = e->cache_read;
    u->output_tokens = e->out;
    u->reasoning_tokens = e->reasoning;
    u->requests = 1;
    u->ts = e->ts;
    u->recv_ts = e->recv ? e->recv : e->ts;
    u->cost_nusd = e->cost;
    u->latency_us = e->latency_us ? e->latency_us : -1;
    u->ttft_us = e->ttft_us ? e->ttft_us : -1;
}

static const char *topic_of(const ev_t *e, char *buf)
{
    const char *k = e->user ? e->user : e->account ? e->account : "";
    snprintf(buf, 8, "ev.%02x", (unsigned)(fnv1a64(k, strlen(k)) & 0xff));
    return buf;
}

/* Applies one message built from raw msgpack bytes. */
static void apply_raw(fix_t *f, const char *topic, const char *kind, const char *data, size_t len)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, data, len, &off), MSGPACK_UNPACK_SUCCESS);
    static uint64_t seq;
    bus_msg_t m = { .topic = span_cstr(topic), .src = span_cstr("c1"), .seq = ++seq,
                    .kind = span_cstr(kind), .body = &up.data };
    agg_apply(f->a, &m);
    msgpack_unpacked_destroy(&up);
}

/* Applies events as one message per event (each on its shard topic). */
static void apply_events(fix_t *f, const ev_t *evs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 1);
        msg_usage_t u;
        fill_usage(&u, &evs[i]);
        msg_usage_pack(&pk, &u);
        char topic[8];
        apply_raw(f, topic_of(&evs[i], topic), MSG_KIND_USAGE, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
    assert_int_equal(agg_flush(f->a), 0);
}

static void apply_one(fix_t *f, ev_t e)
{
    apply_events(f, &e, 1);
}

static void tick(fix_t *f, int64_t now)
{
    agg_tick(f->a, now, true);
    assert_int_equal(agg_flush(f->a), 0);
}

/* ---- totals ------------------------------------------------------------------- */

typedef struct {
    char key[512];
    uint64_t requests, errors, in, out;
    int64_t cost;
    uint64_t lat;
} want_t;

static void want_add(want_t **w, size_t *n, const char *key, const ev_t *e)
{
    want_t *slot = NULL;
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*w)[i].key, key))
            slot = &(*w)[i];
    if (!slot) {
        *w = xreallocarray(*w, *n + 1, sizeof **w);
        slot = &(*w)[(*n)++];
        memset(slot, 0, sizeof *slot);
        snprintf(slot->key, sizeof slot->key, "%s", key);
    }
    slot->requests++;
    slot->errors += e->status && !strcmp(e->status, "error");
    slot->in += e->in;
    slot->out += e->out;
    slot->cost += e->cost;
    slot->lat += e->latency_us > 0;
}

static void test_totals_match_recomputation(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "America/New_York", NULL, 0, 1);
    static const char *users[] = { "alice", "bob", "carol", "dave", "erin", NULL };
    static const char *accounts[] = { "acme", "globex", NULL };
    static const char *models[] = { "gpt-4o", "gpt-4o-mini", "claude-sonnet-4" };
    static const char *ops[] = { "chat", "embeddings" };
    enum { N = 3000 };
    ev_t *evs = xcalloc(N, sizeof *evs);
    int64_t t0 = utc(2026, 11, 22, 4, 58, 0); /* 23:58 in New York: the day ends inside */
    srand(7);
    for (int i = 0; i < N; i++) {
        ev_t *e = &evs[i];
        e->model = models[rand() % 3];
        e->provider = e->model[0] == 'c' ? "anthropic" : "openai";
        e->operation = ops[rand() % 2];
        e->user = users[rand() % 6];
        e->account = accounts[rand() % 3];
        e->project = rand() % 2 ? "search" : NULL;
        e->status = rand() % 10 ? "ok" : "error";
        e->in = (uint64_t)(rand() % 5000);
        e->out = (uint64_t)(rand() % 700);
        e->cost = rand() % 100000;
        e->latency_us = rand() % 3 ? 1 + rand() % 5000000 : 0;
        e->ts = t0 + (int64_t)i * (300 * S / N); /* 5 minutes, in order */
        e->recv = e->ts + 3 * MIN;               /* received later, still within lateness */
    }
    want_t *want = NULL;
    size_t nwant = 0;
    cal_t *ny = cal_new("America/New_York", NULL, 0);
    for (int i = 0; i < N; i++) {
        const ev_t *e = &evs[i];
        int64_t starts[3] = { e->ts - e->ts % MIN, e->ts - e->ts % HOUR,
                              cal_start(ny, CAL_DAY, e->ts) };
        const char *g = "mhd";
        for (int k = 0; k < 3; k++) {
            char key[512];
            snprintf(key, sizeof key, "%c|%lld|model|%s|%s|%s|%s|", g[k], (long long)starts[k],
                     e->provider, e->model, e->operation, e->status);
            want_add(&want, &nwant, key, e);
            if (e->user) {
                snprintf(key, sizeof key, "%c|%lld|user|||||%s", g[k], (long long)starts[k], e->user);
                want_add(&want, &nwant, key, e);
            }
            if (e->account) {
                snprintf(key, sizeof key, "%c|%lld|account|||||%s", g[k], (long long)starts[k],
                         e->account);
                want_add(&want, &nwant, key, e);
            }
            if (e->project) {
                snprintf(key, sizeof key, "%c|%lld|project|||||%s", g[k], (long long)starts[k],
                         e->project);
                want_add(&want, &nwant, key, e);
            }
        }
    }
    /* apply with the clock moving along the receive times */
    for (int i = 0; i < N; i += 100) {
        apply_events(&f, &evs[i], N - i < 100 ? (size_t)(N - i) : 100);
        tick(&f, evs[i].recv);
    }
    /* quotas: the users' day and month totals by receive time */
    for (int u = 0; users[u]; u++) {
        uint64_t tok_day = 0;
        int64_t cost_month = 0;
        int64_t now = evs[N - 1].recv;
        int64_t day0 = cal_start(ny, CAL_DAY, now);
        for (int i = 0; i < N; i++) {
            if (!evs[i].user || strcmp(evs[i].user, users[u]))
                continue;
            if (evs[i].recv >= day0)
                tok_day += evs[i].in + evs[i].out;
            cost_month += evs[i].cost;
        }
        quota_view_t v;
        quota_view(agg_quota(f.a), QS_USER, span_cstr(users[u]), now, &v);
        assert_true(v.known);
        assert_int_equal(v.w[QW_DAY].used[QU_TOKENS], (int64_t)tok_day);
        assert_int_equal(v.w[QW_MONTH].used[QU_USD], cost_month);
    }
    tick(&f, utc(2026, 11, 23, 12, 0, 0)); /* everything closed */
    assert_int_equal(f.out.nrolls, nwant);
    for (size_t i = 0; i < nwant; i++) {
        const roll_t *got = NULL;
        for (size_t j = 0; j < f.out.nrolls; j++)
            if (!strcmp(f.out.rolls[j].key, want[i].key))
                got = &f.out.rolls[j];
        if (!got)
            fail_msg("no rollup for %s", want[i].key);
        assert_int_equal(got->r.requests, want[i].requests);
        assert_int_equal(got->r.errors, want[i].errors);
        assert_int_equal(got->r.input_tokens, want[i].in);
        assert_int_equal(got->r.output_tokens, want[i].out);
        assert_int_equal(got->r.cost_nusd, want[i].cost);
        assert_int_equal(got->lat_count, want[i].lat);
        assert_int_equal(got->r.shards, 1);
    }
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=malformed_record"), 0);
    assert_int_equal(stat_of(&f, "agg_late_events_total", NULL), 0);
    cal_destroy(&ny);
    free(want);
    free(evs);
    fix_close(&f);
}

/* ---- calendar edges ----------------------------------------------------------- */

static int64_t used_tokens(fix_t *f, const char *user, qwindow_t w, int64_t now)
{
    quota_view_t v;
    quota_view(agg_quota(f->a), QS_USER, span_cstr(user), now, &v);
    return v.w[w].used[QU_TOKENS];
}

typedef struct {
    const char *name, *zone;
    int64_t a, b;   /* two instants */
    bool same_day, same_month;
} edge_t;

static void test_calendar_edges(void **state)
{
    (void)state;
    static const edge_t edges[] = {
        /* Berlin midnight is 23:00 UTC in winter */
        { "berlin midnight", "Europe/Berlin", 0, 0, false, true },
        /* New York month end: Jan 31 23:59:59 local is Feb 1 04:59:59 UTC */
        { "new york month end", "America/New_York", 0, 0, false, false },
        /* Berlin spring forward 2026-03-29: a 23-hour day */
        { "berlin dst day", "Europe/Berlin", 0, 0, true, true },
        /* leap day 2028-02-29 in Tokyo: Feb 29 and Mar 1 */
        { "leap day", "Asia/Tokyo", 0, 0, false, false },
        /* Kolkata +05:30: 18:29:59 UTC and 18:30 UTC are two days */
        { "kolkata half hour", "Asia/Kolkata", 0, 0, false, true },
    };
    int64_t inst[][2] = {
        { utc(2026, 11, 22, 22, 59, 59), utc(2026, 11, 22, 23, 0, 0) },
        { utc(2027, 2, 1, 4, 59, 59), utc(2027, 2, 1, 5, 0, 0) },
        { utc(2026, 3, 28, 23, 0, 0), utc(2026, 3, 29, 21, 59, 59) },
        { utc(2028, 2, 29, 14, 59, 59), utc(2028, 2, 29, 15, 0, 0) },
        { utc(2026, 11, 22, 18, 29, 59), utc(2026, 11, 22, 18, 30, 0) },
    };
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        fix_t f;
        fix_open(&f, edges[i].zone, "[quota]\ndaily_tokens = 0\nmonthly_tokens = 0\n", 0, 1);
        apply_one(&f, (ev_t){ .user = "u", .in = 100, .ts = inst[i][0] });
        apply_one(&f, (ev_t){ .user = "u", .in = 10, .ts = inst[i][1] });
        int64_t day = used_tokens(&f, "u", QW_DAY, inst[i][1]);
        int64_t month = used_tokens(&f, "u", QW_MONTH, inst[i][1]);
        if (day != (edges[i].same_day ? 110 : 10) || month != (edges[i].same_month ? 110 : 10))
            fail_msg("%s: day %lld month %lld", edges[i].name, (long long)day, (long long)month);
        /* the day rollup agrees */
        tick(&f, inst[i][1] + 2 * DAY);
        uint64_t d_buckets = 0;
        for (size_t j = 0; j < f.out.nrolls; j++)
            d_buckets += f.out.rolls[j].key[0] == 'd' && strstr(f.out.rolls[j].key, "|user|");
        assert_int_equal(d_buckets, edges[i].same_day ? 1 : 2);
        fix_close(&f);
    }
    /* the leap day is a 24-hour day of its own and February has 29 of them */
    cal_t *c = cal_new("Asia/Tokyo", NULL, 0);
    int64_t feb29 = utc(2028, 2, 29, 3, 0, 0);
    assert_int_equal(cal_next(c, CAL_DAY, feb29) - cal_start(c, CAL_DAY, feb29), DAY);
    assert_int_equal(cal_next(c, CAL_MONTH, feb29) - cal_start(c, CAL_MONTH, feb29), 29 * DAY);
    cal_destroy(&c);
}

/* ---- quota states ------------------------------------------------------------- */

static size_t quota_msgs(const out_t *o, const char *id, const char *window, const char *unit,
                         const char *state)
{
    size_t n = 0;
    for (size_t i = 0; i < o->nquotas; i++)
        n += !strcmp(o->quotas[i].id, id) && !strcmp(o->quotas[i].window, window) &&
             !strcmp(o->quotas[i].unit, unit) && !strcmp(o->quotas[i].state, state);
    return n;
}

static void test_quota_states(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC",
             "[quota]\ndaily_tokens = 1000\nmonthly_tokens = 0\nwindow = 1h\nwindow_tokens = 500\n"
             "warn_pct = 80\n"
             "[quota.user.vip]\ndaily_tokens = 100000\nwindow_tokens = -1\n"
             "[quota.account]\ndaily_usd = 1\n",
             0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 0);
    apply_one(&f, (ev_t){ .user = "u", .account = "acme", .in = 300, .cost = 500000000, .ts = t });
    assert_int_equal(f.out.nquotas, 0); /* 300 of 500: ok */
    apply_one(&f, (ev_t){ .user = "u", .in = 100, .ts = t + MIN });
    assert_int_equal(quota_msgs(&f.out, "u", "1h", "tokens", "warning"), 1);
    apply_one(&f, (ev_t){ .user = "u", .in = 50, .ts = t + 2 * MIN });
    assert_int_equal(quota_msgs(&f.out, "u", "1h", "tokens", "warning"), 1); /* no repeat */
    apply_one(&f, (ev_t){ .user = "u", .in = 60, .ts = t + 3 * MIN });
    assert_int_equal(quota_msgs(&f.out, "u", "1h", "tokens", "exceeded"), 1);
    /* the account's dollar limit: $0.50 + $0.40 = 90 % */
    apply_one(&f, (ev_t){ .account = "acme", .cost = 400000000, .ts = t + 3 * MIN });
    assert_int_equal(quota_msgs(&f.out, "acme", "day", "usd", "warning"), 1);
    tick(&f, t + 4 * MIN);
    /* the window slides: at 10:59 all 510 tokens are in it; at 11:00 the
     * minute 10:00 leaves it and 210 of 500 remain */
    tick(&f, t + HOUR - 30 * S);
    assert_int_equal(quota_msgs(&f.out, "u", "1h", "tokens", "ok"), 0);
    tick(&f, t + HOUR + 30 * S);
    assert_int_equal(quota_msgs(&f.out, "u", "1h", "tokens", "ok"), 1);
    /* the override: vip has a large daily limit and inherits the monthly one */
    apply_one(&f, (ev_t){ .user = "vip", .in = 5000, .ts = t });
    quota_view_t v;
    quota_view(agg_quota(f.a), QS_USER, span_cstr("vip"), t, &v);
    assert_int_equal(v.w[QW_DAY].limit[QU_TOKENS], 100000);
    assert_int_equal(v.w[QW_WINDOW].limit[QU_TOKENS], 500);
    assert_int_equal(v.w[QW_DAY].st[QU_TOKENS], QST_OK);
    assert_int_equal(v.w[QW_WINDOW].st[QU_TOKENS], QST_EXCEEDED);
    /* a new day resets the daily state of an exceeded user */
    apply_one(&f, (ev_t){ .user = "w", .in = 2000, .ts = t });
    assert_int_equal(quota_msgs(&f.out, "w", "day", "tokens", "exceeded"), 1);
    tick(&f, utc(2026, 11, 23, 0, 1, 0));
    assert_int_equal(quota_msgs(&f.out, "w", "day", "tokens", "ok"), 1);
    fix_close(&f);
}

/* ---- budgets ------------------------------------------------------------------ */

static const char *budget_ini =
    "[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 1\nwarn_pct = 80\n"
    "[budget.acme]\nscope = account:acme\nperiod = month\nlimit_usd = 2\n"
    "[budget.peruser]\nscope = user\nperiod = week\nlimit_usd = 0.5\n";

static void test_budget_crossings_once(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "Europe/Paris", budget_ini, 0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 0);
    for (int i = 0; i < 7; i++) /* $0.70 */
        apply_one(&f, (ev_t){ .user = "u1", .account = "acme", .cost = 100000000, .ts = t + i * S });
    assert_int_equal(crossings(&f.out, "daily", "warning"), 0);
    apply_one(&f, (ev_t){ .user = "u2", .cost = 100000000, .ts = t + 10 * S }); /* $0.80 */
    assert_int_equal(crossings(&f.out, "daily", "warning"), 1);
    assert_int_equal(crossings(&f.out, "peruser", "warning"), 1); /* u1: $0.70 of $0.50 */
    assert_int_equal(crossings(&f.out, "peruser", "exceeded"), 1);
    for (int i = 0; i < 5; i++)
        apply_one(&f, (ev_t){ .user = "u2", .cost = 100000000, .ts = t + (20 + i) * S });
    assert_int_equal(crossings(&f.out, "daily", "warning"), 1);
    assert_int_equal(crossings(&f.out, "daily", "exceeded"), 1);
    assert_int_equal(crossings(&f.out, "peruser", "exceeded"), 2); /* u2 too, once */
    assert_int_equal(crossings(&f.out, "acme", "warning"), 0);     /* $0.70 of $2 */

    fix_close(&f);
}

static void no_position(void *arg, const char *src, uint64_t seq)
{
    size_t *n = arg;
    assert_string_equal(src, "c1");
    assert_int_equal(seq, 42);
    (*n)++;
}

static void test_budget_survives_snapshot(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "Europe/Paris", budget_ini, 0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 0);
    for (int i = 0; i < 9; i++)
        apply_one(&f, (ev_t){ .user = "u1", .cost = 100000000, .ts = t + i * S });
    assert_int_equal(crossings(&f.out, "daily", "warning"), 1);
    char path[] = "/tmp/agg_test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[512];
    agg_position_t pos[] = { { "c1", 42 } };
    assert_int_equal(agg_save(f.a, path, pos, 1, 7, err, sizeof err), 0);

    fix_t g;
    fix_open(&g, "Europe/Paris", budget_ini, 0, 1);
    uint64_t pub_seq = 0;
    size_t npos = 0;
    if (agg_load(g.a, path, no_position, &npos, &pub_seq, err, sizeof err) != 1)
        fail_msg("load: %s", err);
    assert_int_equal(npos, 1);
    assert_int_equal(pub_seq, 7);
    /* more spending: 90 % crossed before the snapshot, 100 % now, once */
    for (int i = 0; i < 3; i++)
        apply_one(&g, (ev_t){ .user = "u1", .cost = 100000000, .ts = t + (20 + i) * S });
    assert_int_equal(crossings(&g.out, "daily", "warning"), 0);
    assert_int_equal(crossings(&g.out, "daily", "exceeded"), 1);
    /* the next day is a new period: it crosses again */
    int64_t t2 = utc(2026, 11, 23, 10, 0, 0);
    for (int i = 0; i < 10; i++)
        apply_one(&g, (ev_t){ .user = "u1", .cost = 100000000, .ts = t2 + i * S });
    assert_int_equal(crossings(&g.out, "daily", "warning"), 1);
    assert_int_equal(crossings(&g.out, "daily", "exceeded"), 2);

    /* a crossing read back from the publisher's spool is not announced again */
    fix_t h;
    fix_open(&h, "Europe/Paris", budget_ini, 0, 1);
    npos = 0;
    assert_int_equal(agg_load(h.a, path, no_position, &npos, &pub_seq, err, sizeof err), 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 1);
    int64_t p0 = utc(2026, 11, 21, 23, 0, 0); /* Paris midnight */
    msg_budget_t b = { .name = span_cstr("daily"), .scope = span_cstr("global"),
                       .period = span_cstr("day"), .period_start = p0, .period_end = p0 + DAY,
                       .limit_nusd = 1000000000, .spent_nusd = 1000000000, .warn_pct = 80,
                       .state = span_cstr("exceeded"), .crossing = span_cstr("exceeded"),
                       .crossed_ts = t + 20 * S, .ts = t + 20 * S, .shards = 1 };
    msg_budget_pack(&pk, &b);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    bus_msg_t m = { .topic = span_cstr("budget"), .kind = span_cstr(MSG_KIND_BUDGET), .body = &up.data };
    agg_recover_output(h.a, &m);
    for (int i = 0; i < 3; i++)
        apply_one(&h, (ev_t){ .user = "u1", .cost = 100000000, .ts = t + (20 + i) * S });
    assert_int_equal(crossings(&h.out, "daily", "exceeded"), 0);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    unlink(path);
    fix_close(&h);
    fix_close(&g);
    fix_close(&f);
}

static void test_budget_rollover_and_forecast(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC",
             "[budget.r]\nscope = project:p\nperiod = day\nlimit_usd = 10\nrollover = on\n"
             "rollover_cap_usd = 5\n",
             0, 1);
    int64_t d1 = utc(2026, 11, 20, 6, 0, 0);
    apply_one(&f, (ev_t){ .project = "p", .cost = 4000000000LL, .ts = d1 }); /* $4 of $10 */
    apply_one(&f, (ev_t){ .project = "q", .cost = 4000000000LL, .ts = d1 }); /* not in scope */
    /* day 2: $6 unspent, capped at $5 */
    int64_t d2 = utc(2026, 11, 21, 12, 0, 0);
    apply_one(&f, (ev_t){ .project = "p", .cost = 14000000000LL, .ts = d2 }); /* $14 of $15 */
    f.out.nbudgets = 0;
    tick(&f, d2 + 30 * MIN);
    assert_true(f.out.nbudgets >= 1);
    const budget_rec_t *b = &f.out.budgets[f.out.nbudgets - 1];
    assert_string_equal(b->name, "r");
    assert_string_equal(b->value, "p");
    assert_int_equal(b->limit, 15000000000LL);
    assert_int_equal(b->spent, 14000000000LL);
    assert_int_equal(b->remaining, 1000000000LL);
    assert_string_equal(b->state, "warning");
    /* average: $14 in 12.5 h of 24 h */
    assert_int_equal(b->forecast_avg, (int64_t)((__int128)14000000000LL * 24 * 60 / (12 * 60 + 30)));
    /* the last hour's rate: $14 an hour for the 11.5 h left */
    assert_int_equal(b->forecast_rate, 14000000000LL + (int64_t)((__int128)14000000000LL * 690 / 60));
    /* runs out: $1 at $14/h */
    assert_int_equal(b->exhaust, d2 + 30 * MIN + (int64_t)((__int128)1000000000LL * HOUR / 14000000000LL));
    /* day 4 after an idle day 3: day 3 carried min($15, $5) unspent... */
    int64_t d4 = utc(2026, 11, 23, 1, 0, 0);
    apply_one(&f, (ev_t){ .project = "p", .cost = 1, .ts = d4 });
    f.out.nbudgets = 0;
    tick(&f, d4 + MIN);
    b = &f.out.budgets[f.out.nbudgets - 1];
    assert_int_equal(b->limit, 15000000000LL);
    fix_close(&f);
}

/* ---- lateness ----------------------------------------------------------------- */

static void test_late_events_amend(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC", NULL, 0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 10);
    apply_one(&f, (ev_t){ .account = "a", .in = 10, .ts = t });
    tick(&f, t + MIN); /* 10:01:10: minute 10:00 closed */
    const roll_t *r = NULL;
    for (size_t i = 0; i < f.out.nrolls; i++)
        if (f.out.rolls[i].key[0] == 'm' && strstr(f.out.rolls[i].key, "|account|"))
            r = &f.out.rolls[i];
    assert_non_null(r);
    assert_int_equal(r->r.input_tokens, 10);
    assert_int_equal(r->r.rev, 0);
    /* a late event for 10:00 arrives at 10:03: amended, sent again as rev 1 */
    apply_one(&f, (ev_t){ .account = "a", .in = 5, .ts = t + 20 * S, .recv = t + 3 * MIN });
    tick(&f, t + 3 * MIN);
    assert_int_equal(r->r.input_tokens, 15);
    assert_int_equal(r->r.rev, 1);
    assert_int_equal(r->n, 2);
    /* beyond the lateness (5 min): counted, left out */
    apply_one(&f, (ev_t){ .account = "a", .in = 7, .ts = t, .recv = t + 10 * MIN });
    tick(&f, t + 10 * MIN);
    assert_int_equal(r->r.input_tokens, 15);
    assert_int_equal(stat_of(&f, "agg_late_events_total", NULL), 1);
    /* an event time far in the future is taken as its receive time */
    apply_one(&f, (ev_t){ .account = "a", .in = 1, .ts = t + 400 * DAY, .recv = t + 10 * MIN });
    assert_int_equal(stat_of(&f, "agg_future_events_total", NULL), 1);
    fix_close(&f);
}

/* ---- snapshot equivalence ----------------------------------------------------- */

static void run_stream(fix_t *f, const ev_t *evs, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        apply_events(f, &evs[i], 1);
        if (i % 50 == 49)
            tick(f, evs[i].recv);
    }
}

static void test_snapshot_equivalence(void **state)
{
    (void)state;
    enum { N = 1200 };
    ev_t *evs = xcalloc(N, sizeof *evs);
    int64_t t0 = utc(2026, 11, 22, 23, 50, 0);
    static const char *users[] = { "a", "b", "c", "d" };
    for (int i = 0; i < N; i++) {
        evs[i] = (ev_t){ .user = users[i % 4], .account = i % 3 ? "x" : "y",
                         .project = i % 5 ? NULL : "p", .in = (uint64_t)(i % 97) * 10,
                         .out = (uint64_t)(i % 13), .cost = 1000000 + i, .latency_us = 1000 + i,
                         .ts = t0 + (int64_t)i * S, .recv = t0 + (int64_t)i * S + 500000000 };
    }
    const char *ini = "[quota]\ndaily_tokens = 20000\nwindow = 10m\nwindow_tokens = 5000\n"
                      "[budget.d]\nscope = global\nperiod = day\nlimit_usd = 0.5\n";
    fix_t whole;
    fix_open(&whole, "Europe/Berlin", ini, 0, 1);
    run_stream(&whole, evs, 0, N);
    tick(&whole, t0 + 2 * DAY);

    char path[] = "/tmp/agg_test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[512];
    fix_t first;
    fix_open(&first, "Europe/Berlin", ini, 0, 1);
    run_stream(&first, evs, 0, N / 2);
    assert_int_equal(agg_save(first.a, path, NULL, 0, 0, err, sizeof err), 0);
    fix_t second;
    fix_open(&second, "Europe/Berlin", ini, 0, 1);
    uint64_t pub_seq;
    size_t npos = 0;
    if (agg_load(second.a, path, no_position, &npos, &pub_seq, err, sizeof err) != 1)
        fail_msg("load: %s", err);
    run_stream(&second, evs, N / 2, N);
    tick(&second, t0 + 2 * DAY);
    unlink(path);

    /* what the two halves published, read last-wins (the second half's
     * records replace the first's), equals what the whole run published */
    for (size_t i = 0; i < whole.out.nrolls; i++) {
        const roll_t *w = &whole.out.rolls[i];
        const roll_t *got = NULL;
        for (size_t j = 0; j < second.out.nrolls; j++)
            if (!strcmp(second.out.rolls[j].key, w->key))
                got = &second.out.rolls[j];
        for (size_t j = 0; !got && j < first.out.nrolls; j++)
            if (!strcmp(first.out.rolls[j].key, w->key))
                got = &first.out.rolls[j];
        if (!got)
            fail_msg("missing after restart: %s", w->key);
        assert_int_equal(got->r.requests, w->r.requests);
        assert_int_equal(got->r.input_tokens, w->r.input_tokens);
        assert_int_equal(got->r.cost_nusd, w->r.cost_nusd);
        assert_int_equal(got->lat_count, w->lat_count);
    }
    for (int u = 0; u < 4; u++) {
        quota_view_t a, b;
        int64_t now = evs[N - 1].recv;
        quota_view(agg_quota(whole.a), QS_USER, span_cstr(users[u]), now, &a);
        quota_view(agg_quota(second.a), QS_USER, span_cstr(users[u]), now, &b);
        assert_memory_equal(&a.w, &b.w, sizeof a.w);
    }
    assert_int_equal(crossings(&whole.out, "d", "exceeded"),
                     crossings(&first.out, "d", "exceeded") + crossings(&second.out, "d", "exceeded"));
    fix_close(&second);
    fix_close(&first);
    fix_close(&whole);
    free(evs);
}

static void test_snapshot_refusals(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC", NULL, 0, 1);
    apply_one(&f, (ev_t){ .user = "u", .in = 1, .ts = utc(2026, 1, 1, 0, 0, 0) });
    char path[] = "/tmp/agg_test.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[512];
    uint64_t pub_seq;
    size_t npos = 0;
    assert_int_equal(agg_save(f.a, path, NULL, 0, 0, err, sizeof err), 0);
    /* another shard's snapshot */
    fix_t g;
    fix_open(&g, "UTC", NULL, 1, 2);
    assert_int_equal(agg_load(g.a, path, no_position, &npos, &pub_seq, err, sizeof err), -1);
    assert_non_null(strstr(err, "shard"));
    fix_close(&g);
    /* every truncation and a flipped byte are refused, never loaded half */
    FILE *fp = fopen(path, "rb");
    char buf[65536];
    size_t len = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    for (size_t cut = 0; cut < len; cut += 1 + cut / 8) {
        fp = fopen(path, "wb");
        fwrite(buf, 1, cut, fp);
        fclose(fp);
        fix_open(&g, "UTC", NULL, 0, 1);
        assert_int_equal(agg_load(g.a, path, no_position, &npos, &pub_seq, err, sizeof err), -1);
        fix_close(&g);
    }
    buf[len / 2] ^= 0x40;
    fp = fopen(path, "wb");
    fwrite(buf, 1, len, fp);
    fclose(fp);
    fix_open(&g, "UTC", NULL, 0, 1);
    assert_int_equal(agg_load(g.a, path, no_position, &npos, &pub_seq, err, sizeof err), -1);
    assert_non_null(strstr(err, "checksum"));
    fix_close(&g);
    /* none at all: a fresh start */
    unlink(path);
    fix_open(&g, "UTC", NULL, 0, 1);
    assert_int_equal(agg_load(g.a, path, no_position, &npos, &pub_seq, err, sizeof err), 0);
    fix_close(&g);
    fix_close(&f);
}

/* ---- hostile input ------------------------------------------------------------ */

static void test_malformed_input_counted(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC", NULL, 0, 2);
    /* a body that is not an array */
    apply_raw(&f, "ev.00", MSG_KIND_USAGE, "\x81\xa1x\x01", 4);
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=malformed_message"), 1);
    /* an array holding a good record, a string and a record missing fields */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msg_usage_t u;
    ev_t e = { .user = "alice", .in = 5, .ts = utc(2026, 5, 5, 5, 5, 5) };
    fill_usage(&u, &e);
    msg_usage_pack(&pk, &u);
    msgpack_pack_str(&pk, 3);
    msgpack_pack_str_body(&pk, "bad", 3);
    msgpack_pack_map(&pk, 1);
    msgpack_pack_str(&pk, 8);
    msgpack_pack_str_body(&pk, "provider", 8);
    msgpack_pack_nil(&pk);
    u.reasoning_tokens = 10; /* more reasoning than output */
    msg_usage_pack(&pk, &u);
    char topic[8];
    const char *tp = topic_of(&e, topic);
    unsigned x = (unsigned)strtoul(tp + 3, NULL, 16);
    if (x % 2 != 0)
        tp = "ev.00"; /* this test's shard is 0 of 2: put it on a topic of ours */
    apply_raw(&f, tp, MSG_KIND_USAGE, sb.data, sb.size);
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=malformed_record"), 3);
    assert_int_equal(stat_of(&f, "agg_records_total", "kind=usage"), 1);
    /* another shard's topic, an unknown kind, a sample off shard 0's topic */
    apply_raw(&f, "ev.01", MSG_KIND_USAGE, sb.data, sb.size);
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=other_shard"), 1);
    apply_raw(&f, "ev.zz", MSG_KIND_USAGE, sb.data, sb.size);
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=other_shard"), 2);
    apply_raw(&f, "quota", "quota", sb.data, sb.size);
    assert_int_equal(stat_of(&f, "agg_rejected_total", "reason=unexpected_kind"), 1);
    msgpack_sbuffer_destroy(&sb);
    /* the good record counted */
    assert_int_equal(used_tokens(&f, "alice", QW_DAY, e.ts), 5);
    fix_close(&f);
}

/* ---- StatsD ------------------------------------------------------------------- */

static void test_statsd_flush(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC", NULL, 0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msg_sample_t s = { .name = span_cstr("hits"), .type = MSG_ST_C, .value = 1, .rate = 0.1, .ts = t };
    msg_sample_pack(&pk, &s);
    s.value = 2;
    s.rate = 1;
    msg_sample_pack(&pk, &s);
    msg_sample_t g = { .name = span_cstr("temp"), .type = MSG_ST_G, .value = 20, .rate = 1, .ts = t };
    msg_sample_pack(&pk, &g);
    apply_raw(&f, "metric", MSG_KIND_SAMPLE, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    tick(&f, t + 15 * S);
    assert_int_equal(f.out.nflushes, 2);
    for (size_t i = 0; i < f.out.nflushes; i++) {
        if (!strcmp(f.out.flushes[i].name, "hits"))
            assert_true(f.out.flushes[i].value == 12.0);
        else
            assert_true(f.out.flushes[i].value == 20.0);
    }
    fix_close(&f);
}

/* ---- queries ------------------------------------------------------------------ */

static msgpack_object *ask(fix_t *f, msgpack_unpacked *up, mbuf_t *ans, int64_t now,
                           const char *fmt_kv[], size_t n)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n / 2);
    for (size_t i = 0; i < n; i++) {
        const char *v = fmt_kv[i];
        if (i % 2 && v[0] == '#') {
            msgpack_pack_uint64(&pk, strtoull(v + 1, NULL, 10));
            continue;
        }
        msgpack_pack_str(&pk, strlen(v));
        msgpack_pack_str_body(&pk, v, strlen(v));
    }
    query_answer(f->a, sb.data, sb.size, now, ans);
    msgpack_sbuffer_destroy(&sb);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(up, ans->data, ans->len, &off), MSGPACK_UNPACK_SUCCESS);
    return &up->data;
}

static const msgpack_object *field(const msgpack_object *m, const char *k)
{
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (m->via.map.ptr[i].key.via.str.size == strlen(k) &&
            !memcmp(m->via.map.ptr[i].key.via.str.ptr, k, strlen(k)))
            return &m->via.map.ptr[i].val;
    return NULL;
}

static void test_queries(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "UTC", budget_ini, 0, 1);
    int64_t t = utc(2026, 11, 22, 10, 0, 0);
    apply_one(&f, (ev_t){ .user = "alice", .account = "acme", .model = "gpt-4o", .in = 900, .out = 100, .cost = 3000, .ts = t });
    apply_one(&f, (ev_t){ .user = "bob", .account = "acme", .model = "gpt-4o-mini", .in = 10, .cost = 5000, .ts = t + MIN });
    apply_one(&f, (ev_t){ .user = "bob", .model = "gpt-4o-mini", .in = 10, .cost = 5000, .ts = t - 2 * HOUR });
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    mbuf_t ans = { 0 };
    int64_t now = t + 2 * MIN;

    const char *q1[] = { "q", "quota", "id", "alice" };
    const msgpack_object *a = ask(&f, &up, &ans, now, q1, 4);
    assert_true(field(a, "ok")->via.boolean);
    const msgpack_object *w = field(a, "windows");
    assert_int_equal(w->via.array.size, 6);
    assert_int_equal(field(&w->via.array.ptr[0], "used")->via.u64, 1000); /* day tokens */
    assert_int_equal(field(&w->via.array.ptr[0], "limit")->via.u64, 100000);
    assert_int_equal(field(&w->via.array.ptr[0], "remaining")->via.u64, 99000);

    const char *q2[] = { "q", "top", "by", "user", "metric", "cost", "window", "#3600" };
    a = ask(&f, &up, &ans, now, q2, 8);
    const msgpack_object *rows = field(a, "rows");
    assert_int_equal(rows->via.array.size, 2);
    const msgpack_object *k0 = field(&rows->via.array.ptr[0], "key");
    assert_memory_equal(k0->via.str.ptr, "bob", 3); /* $5000 in the hour: the older call is out */
    assert_int_equal(field(&rows->via.array.ptr[0], "cost_nusd")->via.u64, 5000);

    const char *q3[] = { "q", "top", "by", "model", "metric", "tokens", "window", "#86400" };
    a = ask(&f, &up, &ans, now, q3, 8);
    rows = field(a, "rows");
    assert_int_equal(rows->via.array.size, 2);
    assert_memory_equal(field(&rows->via.array.ptr[0], "key")->via.str.ptr, "openai/gpt-4o", 13);

    const char *q4[] = { "q", "usage", "by", "account", "id", "acme", "window", "#300" };
    a = ask(&f, &up, &ans, now, q4, 8);
    rows = field(a, "rows");
    assert_int_equal(rows->via.array.size, 1);
    assert_int_equal(field(&rows->via.array.ptr[0], "requests")->via.u64, 2);

    const char *q5[] = { "q", "budgets" };
    a = ask(&f, &up, &ans, now, q5, 2);
    assert_true(field(a, "budgets")->via.array.size >= 2);

    static const char *bad[][8] = {
        { "q", "nonsense" },
        { "q", "quota" },
        { "q", "top", "by", "galaxy" },
        { "q", "top", "window", "#99999999" },
        { "nothing", "here" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t n = 0;
        while (n < 8 && bad[i][n])
            n++;
        a = ask(&f, &up, &ans, now, bad[i], n);
        assert_false(field(a, "ok")->via.boolean);
        assert_non_null(field(a, "error"));
    }
    query_answer(f.a, "\xc1", 1, now, &ans); /* not msgpack */
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, ans.data, ans.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_false(field(&up.data, "ok")->via.boolean);
    msgpack_unpacked_destroy(&up);
    mbuf_free(&ans);
    fix_close(&f);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_totals_match_recomputation),
        cmocka_unit_test(test_calendar_edges),
        cmocka_unit_test(test_quota_states),
        cmocka_unit_test(test_budget_crossings_once),
        cmocka_unit_test(test_budget_survives_snapshot),
        cmocka_unit_test(test_budget_rollover_and_forecast),
        cmocka_unit_test(test_late_events_amend),
        cmocka_unit_test(test_snapshot_equivalence),
        cmocka_unit_test(test_snapshot_refusals),
        cmocka_unit_test(test_malformed_input_counted),
        cmocka_unit_test(test_statsd_flush),
        cmocka_unit_test(test_queries),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("agg", tests, NULL, NULL);
}

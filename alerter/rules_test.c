/* rules_test: every built-in rule and the user-defined ones driven by crafted
 * bus records and clock steps: each holds exactly when it should (thresholds
 * at the edge, min_requests, windows sliding out, calendar days in a zone),
 * with its labels and annotations, and not before; budget parts summed over
 * shards, quota exceeded against warning, the expensive-call hold and cap,
 * stage silence, bus gaps, no events; the digest's totals and top; the
 * durable state round trip and refusal of malformed state. Run one test
 * alone with `rules_test NAME`. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "cfg.h"
#include "mbuf.h"
#include "msg.h"
#include "rules.h"
#include "sketch.h"
#include "stats.h"
#include "xalloc.h"

#define S 1000000000LL
#define MS 1000000LL
#define MIN (60 * S)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define USD 1000000000LL
#define T0 (1795305600LL * S + 12 * HOUR) /* 2026-11-22T12:00:00Z */

/* ---- capturing conditions ------------------------------------------------------ */

#define MAX_CAP 2048
#define ANN 8

typedef struct {
    char name[64], sev[16];
    int64_t for_ms;
    double value;
    char labels[640]; /* k=v,k=v in the order given */
    char ak[ANN][32], av[ANN][320];
    size_t nann;
} cap_t;

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    rules_t *r;
    cap_t *c;
    size_t n;
} fix_t;

static void capture(void *arg, const rules_cond_t *c)
{
    fix_t *f = arg;
    assert_true(f->n < MAX_CAP);
    cap_t *k = &f->c[f->n++];
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "%s", c->alertname);
    snprintf(k->sev, sizeof k->sev, "%s", c->severity);
    k->for_ms = c->for_ms;
    k->value = c->value;
    size_t len = 0;
    assert_true(c->nlabels <= RULES_MAX_LABELS);
    for (size_t i = 0; i < c->nlabels; i++)
        len += (size_t)snprintf(k->labels + len, sizeof k->labels - len, "%s%.*s=%.*s",
                                i ? "," : "", (int)c->labels[i].key.len, c->labels[i].key.p,
                                (int)c->labels[i].value.len, c->labels[i].value.p);
    assert_true(c->nannotations <= ANN);
    for (size_t i = 0; i < c->nannotations; i++) {
        snprintf(k->ak[i], sizeof k->ak[i], "%.*s", (int)c->annotations[i].key.len,
                 c->annotations[i].key.p);
        snprintf(k->av[i], sizeof k->av[i], "%.*s", (int)c->annotations[i].value.len,
                 c->annotations[i].value.p);
    }
    k->nann = c->nannotations;
}

static void fix_open(fix_t *f, const char *tz, const char *alerter, const char *extra)
{
    char ini[8192], err[2048];
    /* every rule off unless the test turns it on */
    static const char *const off[] = { "high_cost_call_usd", "error_pct", "burn_tokens_per_hour",
                                       "stage_silent",       "budget",    "quota",
                                       "bus_gap" };
    static const char *const offv[] = { "0", "0", "0", "0", "off", "off", "off" };
    size_t len = (size_t)snprintf(ini, sizeof ini, "[global]\ntimezone = %s\n[alerter]\n%s\n",
                                  tz ? tz : "UTC", alerter ? alerter : "");
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        char k[64];
        snprintf(k, sizeof k, "%s =", off[i]);
        if (!alerter || !strstr(alerter, k))
            len += (size_t)snprintf(ini + len, sizeof ini - len, "%s = %s\n", off[i], offv[i]);
    }
    snprintf(ini + len, sizeof ini - len, "%s", extra ? extra : "");
    memset(f, 0, sizeof *f);
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-alerter", "alerter@test");
    f->r = rules_new(f->cfg, f->st, err, sizeof err);
    if (!f->r)
        fail_msg("rules_new: %s", err);
    f->c = xcalloc(MAX_CAP, sizeof *f->c);
}

static void fix_close(fix_t *f)
{
    rules_destroy(&f->r);
    assert_null(f->r);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    free(f->c);
}

static void eval(fix_t *f, int64_t now)
{
    f->n = 0;
    rules_eval(f->r, now, capture, f);
}

/* The condition named name whose labels are exactly labels (NULL: any). */
static const cap_t *find(const fix_t *f, const char *name, const char *labels)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->c[i].name, name) && (!labels || !strcmp(f->c[i].labels, labels)))
            return &f->c[i];
    return NULL;
}

static size_t count(const fix_t *f, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < f->n; i++)
        n += !strcmp(f->c[i].name, name);
    return n;
}

static const char *ann(const cap_t *c, const char *key)
{
    for (size_t i = 0; i < c->nann; i++)
        if (!strcmp(c->ak[i], key))
            return c->av[i];
    return NULL;
}

typedef struct {
    const char *name, *labels;
    int64_t value;
} ctr_t;

static void find_ctr(const char *name, const char *labels, int64_t value, bool gauge, void *arg)
{
    (void)gauge;
    ctr_t *c = arg;
    if (!strcmp(name, c->name) && !strcmp(labels ? labels : "", c->labels ? c->labels : ""))
        c->value = value;
}

static int64_t ctr(const fix_t *f, const char *name, const char *labels)
{
    ctr_t c = { name, labels, -1 };
    stats_each(f->st, find_ctr, &c);
    return c.value;
}

/* ---- records ------------------------------------------------------------------- */

typedef struct {
    const char *user, *provider, *model, *status, *rid, *account, *project, *op;
    uint64_t in, out;
    int64_t cost;   /* nano-dollars */
    int64_t lat_ms; /* 0: absent */
    bool counter;   /* a token-counter line: requests 0 */
    int64_t recv;   /* recv_ts; 0: now */
} call_t;

static void call(fix_t *f, int64_t now, call_t c)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr(c.provider ? c.provider : "openai");
    u.model = span_cstr(c.model ? c.model : "gpt-4o");
    u.operation = span_cstr(c.op ? c.op : "chat");
    u.user = span_cstr(c.user);
    u.account = span_cstr(c.account);
    u.project = span_cstr(c.project);
    u.status = span_cstr(c.status ? c.status : "ok");
    u.request_id = span_cstr(c.rid);
    u.input_tokens = c.in;
    u.output_tokens = c.out;
    u.cost_nusd = c.cost;
    u.latency_us = c.lat_ms ? c.lat_ms * 1000 : -1;
    u.requests = c.counter ? 0 : 1;
    u.ts = c.recv ? c.recv : now;
    u.recv_ts = c.recv ? c.recv : now;
    rules_usage(f->r, &u, now);
}

typedef struct {
    const char *src, *name, *scope, *value, *period;
    int64_t start, end, limit, spent, warn, ts, f_rate, exhaust;
    bool partial;
} bud_t;

static void budget(fix_t *f, bud_t b)
{
    msg_budget_t m = { 0 };
    m.name = span_cstr(b.name ? b.name : "daily");
    m.scope = span_cstr(b.scope ? b.scope : "global");
    m.scope_value = span_cstr(b.value);
    m.period = span_cstr(b.period ? b.period : "day");
    m.period_start = b.start ? b.start : T0 - 12 * HOUR;
    m.period_end = b.end ? b.end : T0 + 12 * HOUR;
    m.limit_nusd = b.limit < 0 ? 0 : b.limit ? b.limit : 10 * USD; /* -1: none */
    m.spent_nusd = b.spent;
    m.remaining_nusd = m.limit_nusd - b.spent;
    m.forecast_rate_nusd = b.f_rate;
    m.forecast_avg_nusd = b.f_rate / 2;
    m.exhaust_ts = b.exhaust;
    m.warn_pct = b.warn ? b.warn : 80;
    m.state = span_cstr("ok");
    m.ts = b.ts ? b.ts : T0;
    m.partial = b.partial;
    rules_budget(f->r, span_cstr(b.src ? b.src : "agg@a"), &m);
}

static void quota(fix_t *f, const char *subject, const char *id, const char *window,
                  const char *unit, const char *state, int64_t used, int64_t limit, int64_t reset,
                  int64_t ts)
{
    msg_quota_t q = { 0 };
    q.subject = span_cstr(subject);
    q.id = span_cstr(id);
    q.window = span_cstr(window);
    q.unit = span_cstr(unit);
    q.state = span_cstr(state);
    q.prev = span_cstr("ok");
    q.used = used;
    q.limit = limit;
    q.reset = reset;
    q.ts = ts;
    rules_quota(f->r, &q);
}

static void stats(fix_t *f, int64_t now, const char *daemon, const char *src, int64_t started,
                  int64_t lost, int64_t gaps_lost)
{
    msg_stat_t e[3] = { 0 };
    e[0].name = span_cstr("bus_applied_total");
    e[0].value = 7;
    e[1].name = span_cstr("bus_messages_lost_total");
    e[1].value = lost;
    e[2].name = span_cstr("bus_gaps_lost_total");
    e[2].value = gaps_lost;
    msg_stats_t s = { .daemon = span_cstr(daemon), .src = span_cstr(src), .started = started,
                      .ts = now, .n = lost < 0 ? 1 : 3, .entries = e };
    rules_stats(f->r, &s, now);
}

/* ---- budgets and quotas ------------------------------------------------------------ */

static void test_budget(void **state)
{
    (void)state;
    /* each row: parts sent in order, then what holds at T0 */
    static const struct {
        const char *what;
        int n;
        bud_t parts[3];
        bool warning, exceeded;
    } rows[] = {
        { "79%", 1, { { .spent = 7999999999 } }, false, false },
        { "80% exactly", 1, { { .spent = 8 * USD } }, true, false },
        { "99.99%", 1, { { .spent = 10 * USD - 1 } }, true, false },
        { "100% holds both", 1, { { .spent = 10 * USD } }, true, true },
        { "warn_pct from the record", 1, { { .spent = 5 * USD, .warn = 50 } }, true, false },
        { "nothing spent", 1, { { .spent = 0 } }, false, false },
        { "shards summed", 2,
          { { .src = "agg@0", .spent = 5 * USD, .partial = true },
            { .src = "agg@1", .spent = 3 * USD, .partial = true } },
          true, false },
        { "shards summed past the limit", 2,
          { { .src = "agg@0", .spent = 6 * USD, .partial = true },
            { .src = "agg@1", .spent = 4 * USD, .partial = true } },
          true, true },
        { "a part of an older period is not summed", 2,
          { { .src = "agg@0", .spent = 5 * USD, .partial = true },
            { .src = "agg@1", .spent = 7 * USD, .partial = true, .start = T0 - 36 * HOUR,
              .end = T0 - 12 * HOUR } },
          false, false },
        { "a newer status of one part replaces it", 2,
          { { .spent = 9 * USD, .ts = T0 - 2 * S }, { .spent = 1 * USD, .ts = T0 - S } },
          false, false },
        { "an older status is ignored", 2,
          { { .spent = 9 * USD, .ts = T0 - S }, { .spent = 1 * USD, .ts = T0 - 2 * S } },
          true, false },
        { "a new period resolves", 2,
          { { .spent = 11 * USD, .start = T0 - 36 * HOUR, .end = T0 - 12 * HOUR },
            { .spent = 0, .ts = T0 + 1 } },
          false, false },
        { "the period is over", 1, { { .spent = 11 * USD, .end = T0 } }, false, false },
        { "no limit", 1, { { .spent = 11 * USD, .limit = -1 } }, false, false },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fix_t f;
        fix_open(&f, NULL, "budget = on", NULL);
        for (int k = 0; k < rows[i].n; k++)
            budget(&f, rows[i].parts[k]);
        eval(&f, T0);
        const char *l = "budget=daily,scope=global,period=day";
        if ((find(&f, "LLMBudgetWarning", l) != NULL) != rows[i].warning ||
            (find(&f, "LLMBudgetExceeded", l) != NULL) != rows[i].exceeded)
            fail_msg("%s: warning %d exceeded %d", rows[i].what,
                     find(&f, "LLMBudgetWarning", l) != NULL,
                     find(&f, "LLMBudgetExceeded", l) != NULL);
        assert_int_equal(f.n, (size_t)rows[i].warning + rows[i].exceeded);
        fix_close(&f);
    }

    /* labels and annotations */
    fix_t f;
    fix_open(&f, NULL, "budget = on", NULL);
    budget(&f, (bud_t){ .spent = 8200000000, .f_rate = 12300000000, .exhaust = T0 + 3 * HOUR });
    budget(&f, (bud_t){ .name = "models", .scope = "model", .value = "gpt-4o",
                        .period = "month", .limit = 100 * USD, .spent = 100 * USD + 1 });
    eval(&f, T0);
    const cap_t *c = find(&f, "LLMBudgetWarning", "budget=daily,scope=global,period=day");
    assert_non_null(c);
    assert_string_equal(c->sev, "warning");
    assert_int_equal(c->for_ms, 0);
    assert_string_equal(ann(c, "summary"), "Budget daily (global) is at 82% of $10.00 this day");
    assert_string_equal(ann(c, "threshold"), "8.00");
    assert_string_equal(ann(c, "limit"), "10.00");
    assert_string_equal(ann(c, "spent"), "8.20");
    assert_string_equal(ann(c, "forecast_usd"), "12.30");
    assert_string_equal(ann(c, "exhaust"), "2026-11-22T15:00:00.000Z");
    assert_non_null(ann(c, "description"));
    assert_float_equal(c->value, 0.82, 1e-12);
    c = find(&f, "LLMBudgetExceeded", "budget=models,scope=model,scope_value=gpt-4o,period=month");
    assert_non_null(c);
    assert_string_equal(c->sev, "critical");
    assert_string_equal(ann(c, "summary"),
                        "Budget models (model gpt-4o) is at 100% of $100.00 this month");
    assert_string_equal(ann(c, "spent"), "100.000000001");
    assert_null(ann(c, "exhaust"));
    assert_non_null(find(&f, "LLMBudgetWarning", "budget=models,scope=model,scope_value=gpt-4o,period=month"));
    assert_int_equal(f.n, 3);
    /* the period ends: nothing holds */
    eval(&f, T0 + 12 * HOUR);
    assert_null(find(&f, "LLMBudgetWarning", "budget=daily,scope=global,period=day"));
    fix_close(&f);

    /* budget = off: nothing */
    fix_open(&f, NULL, NULL, NULL);
    budget(&f, (bud_t){ .spent = 20 * USD });
    eval(&f, T0);
    assert_int_equal(f.n, 0);
    fix_close(&f);
}

static void test_quota(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "quota = on", NULL);
    quota(&f, "user", "alice", "day", "tokens", "warning", 850000, 1000000, T0 + 12 * HOUR, T0);
    quota(&f, "user", "bob", "5h", "usd", "exceeded", 11 * USD, 10 * USD, 0, T0);
    quota(&f, "account", "acme", "month", "usd", "ok", 1, 10 * USD, T0 + DAY, T0);
    eval(&f, T0);
    assert_int_equal(f.n, 2);
    const cap_t *c = find(&f, "LLMQuotaWarning", "subject=user,id=alice,window=day,unit=tokens");
    assert_non_null(c);
    assert_string_equal(c->sev, "warning");
    assert_string_equal(ann(c, "summary"),
                        "Quota of user alice nearly used: 850000 tokens of 1000000 tokens this "
                        "day (85%)");
    assert_float_equal(c->value, 0.85, 1e-12);
    c = find(&f, "LLMQuotaExceeded", "subject=user,id=bob,window=5h,unit=usd");
    assert_non_null(c);
    assert_string_equal(c->sev, "critical");
    assert_string_equal(ann(c, "used"), "$11.00");
    assert_string_equal(ann(c, "limit"), "$10.00");
    /* exceeded: only Exceeded, not both */
    assert_null(find(&f, "LLMQuotaWarning", "subject=user,id=bob,window=5h,unit=usd"));

    /* alice goes over, then an older warning arrives late: still exceeded */
    quota(&f, "user", "alice", "day", "tokens", "exceeded", 1000001, 1000000, T0 + 12 * HOUR,
          T0 + S);
    quota(&f, "user", "alice", "day", "tokens", "warning", 900000, 1000000, T0 + 12 * HOUR,
          T0 + S / 2);
    eval(&f, T0 + 2 * S);
    assert_non_null(find(&f, "LLMQuotaExceeded", "subject=user,id=alice,window=day,unit=tokens"));
    assert_null(find(&f, "LLMQuotaWarning", "subject=user,id=alice,window=day,unit=tokens"));
    assert_int_equal(ctr(&f, "rules_quota_stale_total", NULL), 1);
    /* bob back to ok */
    quota(&f, "user", "bob", "5h", "usd", "ok", 9 * USD, 10 * USD, 0, T0 + 3 * S);
    eval(&f, T0 + 4 * S);
    assert_null(find(&f, "LLMQuotaExceeded", "subject=user,id=bob,window=5h,unit=usd"));
    assert_int_equal(f.n, 1);
    /* the day is over: alice's day state lapses even without an ok */
    eval(&f, T0 + 12 * HOUR);
    assert_int_equal(f.n, 0);
    fix_close(&f);
}

/* ---- the expensive call ------------------------------------------------------------- */

static void test_expensive_call(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "high_cost_call_usd = 0.50\nhigh_cost_call_hold = 5m", NULL);
    call(&f, T0, (call_t){ .user = "alice", .rid = "r-edge", .cost = USD / 2 }); /* not over */
    call(&f, T0, (call_t){ .user = "alice", .rid = "r-1", .cost = USD / 2 + 1 });
    call(&f, T0, (call_t){ .provider = "anthropic", .model = "claude", .cost = 2 * USD });
    eval(&f, T0);
    assert_int_equal(f.n, 2);
    const cap_t *c = find(&f, "LLMExpensiveCall",
                          "user=alice,model=gpt-4o,provider=openai,request_id=r-1");
    assert_non_null(c);
    assert_int_equal(c->for_ms, 0);
    assert_string_equal(ann(c, "summary"), "A call to openai/gpt-4o cost $0.500000001, over $0.50");
    assert_string_equal(ann(c, "value"), "0.500000001");
    assert_string_equal(ann(c, "threshold"), "0.50");
    /* no request id: a hash of the record, no user label */
    c = NULL;
    for (size_t i = 0; i < f.n; i++)
        if (!strncmp(f.c[i].labels, "model=claude,provider=anthropic,request_id=h", 44))
            c = &f.c[i];
    assert_non_null(c);
    assert_int_equal(strlen(c->labels), 44 + 16);
    /* held for 5 minutes after the call */
    eval(&f, T0 + 5 * MIN - 1);
    assert_int_equal(count(&f, "LLMExpensiveCall"), 2);
    eval(&f, T0 + 5 * MIN);
    assert_int_equal(count(&f, "LLMExpensiveCall"), 0);
    /* a replayed call whose hold is over is not held */
    call(&f, T0 + 10 * MIN, (call_t){ .rid = "old", .cost = USD, .recv = T0 + 4 * MIN });
    eval(&f, T0 + 10 * MIN);
    assert_int_equal(f.n, 0);
    /* the cap: 1000 held, the rest counted */
    for (int i = 0; i < 1001; i++) {
        char rid[16];
        snprintf(rid, sizeof rid, "c%d", i);
        call(&f, T0 + 20 * MIN, (call_t){ .rid = rid, .cost = USD });
    }
    call(&f, T0 + 20 * MIN, (call_t){ .rid = "c5", .cost = USD }); /* held already */
    eval(&f, T0 + 20 * MIN);
    assert_int_equal(count(&f, "LLMExpensiveCall"), 1000);
    assert_int_equal(ctr(&f, "rules_expensive_dropped_total", NULL), 1);
    fix_close(&f);

    /* hold 0: reported at one evaluation at least */
    fix_open(&f, NULL, "high_cost_call_usd = 1\nhigh_cost_call_hold = 0", NULL);
    call(&f, T0, (call_t){ .rid = "z", .cost = 2 * USD });
    eval(&f, T0 + 3 * S);
    assert_int_equal(count(&f, "LLMExpensiveCall"), 1);
    eval(&f, T0 + 4 * S);
    assert_int_equal(count(&f, "LLMExpensiveCall"), 0);
    fix_close(&f);
}

/* ---- windowed rules ------------------------------------------------------------------- */

static void test_error_ratio(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        int ok, errors;
        bool holds;
    } rows[] = {
        { "under min_requests", 17, 2, false }, /* 19 requests */
        { "5% exactly is not over", 19, 1, false },
        { "over 5% with 20", 18, 2, true },
        { "all errors", 0, 20, true },
        { "none", 0, 0, false },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fix_t f;
        fix_open(&f, NULL, "error_pct = 5\nerror_window = 5m\nerror_for = 2m\nerror_min_requests = 20",
                 NULL);
        for (int k = 0; k < rows[i].ok; k++)
            call(&f, T0, (call_t){ .user = "u" });
        for (int k = 0; k < rows[i].errors; k++)
            call(&f, T0, (call_t){ .user = "u", .status = "error" });
        /* token-counter lines count no request */
        call(&f, T0, (call_t){ .status = "error", .counter = true, .in = 5 });
        /* another model, another series */
        call(&f, T0, (call_t){ .model = "gpt-4o-mini", .status = "error" });
        eval(&f, T0 + 30 * S);
        const cap_t *c = find(&f, "LLMErrorRatioHigh", "provider=openai,model=gpt-4o");
        if ((c != NULL) != rows[i].holds)
            fail_msg("%s", rows[i].what);
        assert_int_equal(f.n, rows[i].holds ? 1 : 0);
        if (c) {
            assert_int_equal(c->for_ms, 120000);
            assert_non_null(ann(c, "summary"));
        }
        fix_close(&f);
    }
    /* sliding: 18 ok at T0 and 2 errors at T0+1m; the window is the current minute and
     * the four before it */
    fix_t f;
    fix_open(&f, NULL, "error_pct = 5\nerror_window = 5m\nerror_min_requests = 20", NULL);
    for (int k = 0; k < 18; k++)
        call(&f, T0, (call_t){ 0 });
    call(&f, T0 + MIN, (call_t){ .status = "error" });
    call(&f, T0 + MIN, (call_t){ .status = "error" });
    eval(&f, T0 + MIN);
    const cap_t *c = find(&f, "LLMErrorRatioHigh", "provider=openai,model=gpt-4o");
    assert_non_null(c);
    assert_string_equal(ann(c, "summary"),
                        "Error ratio of openai/gpt-4o is 10.00% over the last 5m, over 5%");
    assert_string_equal(ann(c, "requests"), "20");
    assert_string_equal(ann(c, "errors"), "2");
    eval(&f, T0 + 5 * MIN - 1);
    assert_non_null(find(&f, "LLMErrorRatioHigh", NULL));
    eval(&f, T0 + 5 * MIN); /* T0's minute left: 2 requests */
    assert_null(find(&f, "LLMErrorRatioHigh", NULL));
    fix_close(&f);
}

static void test_burn_and_cost_rate(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "burn_tokens_per_hour = 1000\nburn_for = 10m\ncost_rate_usd = 2", NULL);
    call(&f, T0, (call_t){ .in = 600, .out = 400, .cost = 2 * USD });
    eval(&f, T0);
    assert_int_equal(f.n, 0); /* 1000 tokens and $2 are not over */
    call(&f, T0 + 30 * MIN, (call_t){ .out = 1, .cost = 1, .counter = true });
    eval(&f, T0 + 30 * MIN);
    const cap_t *c = find(&f, "LLMTokenBurnRateHigh", "");
    assert_non_null(c);
    assert_int_equal(c->for_ms, 600000);
    assert_string_equal(ann(c, "summary"), "1001 tokens used in the last hour, over 1000");
    c = find(&f, "LLMCostRateHigh", "");
    assert_non_null(c);
    assert_string_equal(ann(c, "summary"), "LLM cost in the last hour is $2.000000001, over $2.00");
    assert_float_equal(c->value, 2.000000001, 1e-12);
    eval(&f, T0 + 60 * MIN - 1);
    assert_int_equal(f.n, 2);
    eval(&f, T0 + 60 * MIN); /* T0's minute left the hour */
    assert_int_equal(f.n, 0);
    fix_close(&f);
}

static void test_daily_cost(void **state)
{
    (void)state;
    fix_t f;
    /* Paris is UTC+1 in November: its day starts at 23:00Z */
    fix_open(&f, "Europe/Paris", "daily_cost_usd = 10", NULL);
    int64_t midnight = T0 + 11 * HOUR; /* 2026-11-23T00:00+01:00 */
    call(&f, midnight - HOUR, (call_t){ .cost = 6 * USD });
    eval(&f, midnight - HOUR);
    call(&f, midnight - MIN, (call_t){ .cost = 4 * USD });
    eval(&f, midnight - MIN);
    assert_int_equal(f.n, 0); /* $10 is not over */
    call(&f, midnight - 1, (call_t){ .cost = 1 });
    eval(&f, midnight - 1);
    const cap_t *c = find(&f, "LLMDailyCostHigh", "");
    assert_non_null(c);
    assert_string_equal(ann(c, "summary"), "Today's LLM cost is $10.000000001, over $10.00");
    eval(&f, midnight);
    assert_int_equal(f.n, 0);
    call(&f, midnight + MIN, (call_t){ .cost = 10 * USD + 1 });
    /* a late call of yesterday does not count today */
    call(&f, midnight + MIN, (call_t){ .cost = 5 * USD, .recv = midnight - S });
    eval(&f, midnight + MIN);
    c = find(&f, "LLMDailyCostHigh", "");
    assert_non_null(c);
    assert_string_equal(ann(c, "value"), "10.000000001");
    fix_close(&f);
}

static void test_latency_p95(void **state)
{
    (void)state;
    static const struct {
        int fast, slow;
        bool holds;
    } rows[] = {
        { 95, 5, false }, /* rank 94 is a fast call */
        { 94, 6, true },
        { 0, 1, true },
        { 1, 0, false },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fix_t f;
        fix_open(&f, NULL, "latency_p95 = 2s\nlatency_for = 3m", NULL);
        /* all within the minute of T0 + 1m */
        for (int k = 0; k < rows[i].fast; k++)
            call(&f, T0 + MIN + k * S / 2, (call_t){ .lat_ms = 1000 });
        for (int k = 0; k < rows[i].slow; k++)
            call(&f, T0 + MIN + k * S / 2, (call_t){ .lat_ms = 3000 });
        call(&f, T0, (call_t){ .model = "other" }); /* no latency: no value */
        eval(&f, T0 + 2 * MIN);
        const cap_t *c = find(&f, "LLMLatencyP95High", "provider=openai,model=gpt-4o");
        assert_int_equal(c != NULL, rows[i].holds);
        assert_int_equal(f.n, rows[i].holds ? 1 : 0);
        if (c) {
            assert_int_equal(c->for_ms, 180000);
            assert_float_equal(c->value, 3.0, 0.03);
            assert_string_equal(ann(c, "threshold"), "2");
        }
        /* the window is 5 minutes: the slow calls leave at T0 + 6m */
        eval(&f, T0 + 6 * MIN - 1);
        assert_int_equal(find(&f, "LLMLatencyP95High", NULL) != NULL, rows[i].holds);
        eval(&f, T0 + 6 * MIN);
        assert_int_equal(f.n, 0);
        /* and a new slow call alone brings it back (the cache follows new data) */
        call(&f, T0 + 6 * MIN, (call_t){ .lat_ms = 2001 });
        eval(&f, T0 + 6 * MIN + S);
        assert_non_null(find(&f, "LLMLatencyP95High", NULL));
        fix_close(&f);
    }
}

/* ---- liveness ----------------------------------------------------------------------- */

static void test_no_events(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "no_events = 10m", NULL);
    eval(&f, T0); /* the start */
    eval(&f, T0 + 10 * MIN);
    assert_int_equal(f.n, 0);
    eval(&f, T0 + 10 * MIN + 1);
    const cap_t *c = find(&f, "LLMNoEvents", "");
    assert_non_null(c);
    assert_string_equal(ann(c, "summary"), "No LLM call received for 10m, over 10m");
    call(&f, T0 + 11 * MIN, (call_t){ .counter = true, .in = 1 });
    eval(&f, T0 + 11 * MIN);
    assert_int_equal(f.n, 0);
    eval(&f, T0 + 21 * MIN);
    assert_int_equal(f.n, 0);
    eval(&f, T0 + 21 * MIN + S);
    c = find(&f, "LLMNoEvents", "");
    assert_non_null(c);
    assert_float_equal(c->value, 601, 1e-9);
    assert_string_equal(ann(c, "summary"), "No LLM call received for 10m1s, over 10m");
    fix_close(&f);
}

static void test_stage_silent(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "stage_silent = 2m", NULL);
    eval(&f, T0);
    stats(&f, T0, "tokmon-collectd", "collectd@a", T0 - HOUR, -1, 0);
    stats(&f, T0 + MIN, "tokmon-aggregator", "agg@a", T0 - HOUR, 0, 0);
    eval(&f, T0 + 2 * MIN);
    assert_int_equal(f.n, 0);
    eval(&f, T0 + 2 * MIN + 1);
    assert_int_equal(f.n, 1);
    const cap_t *c = find(&f, "TokmonStageSilent", "daemon=tokmon-collectd,src=collectd@a");
    assert_non_null(c);
    assert_string_equal(ann(c, "summary"),
                        "tokmon-collectd (collectd@a) sent no stats for 2m, over 2m");
    stats(&f, T0 + 3 * MIN, "tokmon-collectd", "collectd@a", T0 - HOUR, -1, 0);
    eval(&f, T0 + 3 * MIN + 1);
    assert_non_null(find(&f, "TokmonStageSilent", "daemon=tokmon-aggregator,src=agg@a"));
    assert_int_equal(f.n, 1);
    fix_close(&f);

    /* after a start, a stage last seen long ago gets stage_silent to speak again */
    fix_open(&f, NULL, "stage_silent = 2m", NULL);
    stats(&f, T0 - HOUR, "tokmon-collectd", "collectd@a", 0, -1, 0);
    eval(&f, T0);
    assert_int_equal(f.n, 0);
    eval(&f, T0 + 2 * MIN + 1);
    assert_int_equal(f.n, 1);
    fix_close(&f);
}

static void test_bus_gap(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, "bus_gap = on", NULL);
    const char *l = "daemon=tokmon-pgwriter,src=pgw@a";
    int64_t st = T0 - HOUR;
    stats(&f, T0, "tokmon-pgwriter", "pgw@a", st, 4, 1); /* a baseline: no alert */
    eval(&f, T0);
    assert_int_equal(f.n, 0);
    stats(&f, T0 + MIN, "tokmon-pgwriter", "pgw@a", st, 4, 1);
    eval(&f, T0 + MIN);
    assert_int_equal(f.n, 0);
    stats(&f, T0 + 2 * MIN, "tokmon-pgwriter", "pgw@a", st, 7, 2);
    eval(&f, T0 + 2 * MIN);
    const cap_t *c = find(&f, "TokmonBusGapLost", l);
    assert_non_null(c);
    assert_float_equal(c->value, 3, 0);
    assert_string_equal(ann(c, "summary"),
                        "tokmon-pgwriter (pgw@a) lost 3 bus messages it could not replay");
    /* another increase within the hold adds up and extends it */
    stats(&f, T0 + 10 * MIN, "tokmon-pgwriter", "pgw@a", st, 9, 3);
    eval(&f, T0 + 24 * MIN);
    assert_float_equal(find(&f, "TokmonBusGapLost", l)->value, 5, 0);
    eval(&f, T0 + 25 * MIN - 1);
    assert_non_null(find(&f, "TokmonBusGapLost", l));
    eval(&f, T0 + 25 * MIN);
    assert_int_equal(f.n, 0);
    /* only the gap counter grows: held too */
    stats(&f, T0 + 30 * MIN, "tokmon-pgwriter", "pgw@a", st, 9, 4);
    eval(&f, T0 + 30 * MIN);
    assert_non_null(find(&f, "TokmonBusGapLost", l));
    /* the stage restarts: counting from 0, 2 lost is an increase */
    stats(&f, T0 + 50 * MIN, "tokmon-pgwriter", "pgw@a", T0 + 49 * MIN, 0, 0);
    eval(&f, T0 + 50 * MIN);
    assert_int_equal(f.n, 0);
    stats(&f, T0 + 51 * MIN, "tokmon-pgwriter", "pgw@a", T0 + 49 * MIN, 2, 1);
    eval(&f, T0 + 51 * MIN);
    assert_float_equal(find(&f, "TokmonBusGapLost", l)->value, 2, 0);
    stats(&f, T0 + 70 * MIN, "tokmon-pgwriter", "pgw@a", T0 + 69 * MIN, 1, 0);
    eval(&f, T0 + 70 * MIN);
    assert_float_equal(find(&f, "TokmonBusGapLost", l)->value, 1, 0);
    fix_close(&f);
}

/* ---- user-defined rules -------------------------------------------------------------- */

static void test_user_rules(void **state)
{
    (void)state;
    static const struct {
        const char *rule;      /* the [rule.r] body */
        const char *labels;    /* of the condition expected, NULL: none holds */
        const char *value;     /* its value annotation (latency: c->value within 1.1 %) */
        size_t n;              /* conditions */
    } rows[] = {
        { "aggregate = cost\nby = user\nthreshold = 1.5", NULL, NULL, 0 }, /* 1.50 is not over */
        { "aggregate = cost\nby = user\nop = >=\nthreshold = 1.5", "user=alice", "1.50", 1 },
        { "aggregate = cost\nby = user\nthreshold = 1.499999999", "user=alice", "1.50", 1 },
        { "aggregate = cost\nthreshold = 1.6", NULL, NULL, 0 },
        { "aggregate = cost\nthreshold = 1.59", "", "1.60", 1 },
        { "aggregate = tokens\nby = account\nop = >=\nthreshold = 300", "account=acme", "300", 1 },
        { "aggregate = tokens\nby = account\nthreshold = 300", NULL, NULL, 0 },
        { "aggregate = requests\nby = provider\nop = <\nthreshold = 2", "provider=anthropic", "1", 1 },
        { "aggregate = requests\nby = model\nop = <=\nthreshold = 1",
          "provider=anthropic,model=claude", "1", 1 },
        { "aggregate = errors\nby = project\nthreshold = 0", "project=p1", "2", 1 },
        { "aggregate = error_ratio\nby = operation\nthreshold = 0.5", NULL, NULL, 0 },
        { "aggregate = error_ratio\nby = operation\nop = >=\nthreshold = 0.5", "operation=embed",
          "0.5", 1 },
        { "aggregate = error_ratio\nby = operation\nop = >=\nthreshold = 0.5\nmin_requests = 5",
          NULL, NULL, 0 },
        /* latencies 1 s, 1 s, 4 s (alice, openai/gpt-4o): p50 to p99 are the middle one */
        { "aggregate = latency_p99\nby = model\nthreshold = 0.9", "provider=openai,model=gpt-4o",
          "1", 1 },
        { "aggregate = latency_p50\nby = model\nthreshold = 1.1", NULL, NULL, 0 },
        { "aggregate = latency_p50\nop = <\nthreshold = 1.5", "", "1", 1 },
        { "aggregate = latency_p90\nby = user\nop = >=\nthreshold = 0.1", "user=alice", "1", 1 },
        { "aggregate = latency_p95\nby = account\nthreshold = 0.1", "account=acme", "1", 1 },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fix_t f;
        char extra[512];
        snprintf(extra, sizeof extra, "[rule.r]\nwindow = 10m\nfor = 1m\nseverity = critical\n%s\n",
                 rows[i].rule);
        fix_open(&f, NULL, NULL, extra);
        /* alice: 3 calls of $0.50, 1 slow; bob (account acme too): one anthropic call with an
         * error; two embed calls, one failing */
        call(&f, T0, (call_t){ .user = "alice", .account = "acme", .cost = USD / 2, .in = 100,
                               .lat_ms = 1000, .op = "chat" });
        call(&f, T0 + MIN, (call_t){ .user = "alice", .account = "acme", .cost = USD / 2,
                                     .in = 50, .out = 50, .lat_ms = 1000 });
        call(&f, T0 + 2 * MIN, (call_t){ .user = "alice", .cost = USD / 2, .lat_ms = 4000,
                                         .project = "p1", .status = "error" });
        call(&f, T0 + 2 * MIN, (call_t){ .user = "bob", .account = "acme", .provider = "anthropic",
                                         .model = "claude", .in = 100, .cost = USD / 10,
                                         .project = "p1", .status = "error", .op = "embed" });
        call(&f, T0 + 2 * MIN, (call_t){ .op = "embed" });
        eval(&f, T0 + 3 * MIN);
        if (f.n != rows[i].n || (rows[i].labels && !find(&f, "r", rows[i].labels)))
            fail_msg("row %zu (%s): %zu conditions, first %s {%s}", i, rows[i].rule, f.n,
                     f.n ? f.c[0].name : "-", f.n ? f.c[0].labels : "");
        if (rows[i].labels) {
            const cap_t *c = find(&f, "r", rows[i].labels);
            assert_string_equal(c->sev, "critical");
            assert_int_equal(c->for_ms, 60000);
            const char *v = ann(c, "value");
            if (strstr(rows[i].rule, "latency"))
                assert_float_equal(c->value, atof(rows[i].value), 0.011);
            else if (strcmp(v, rows[i].value))
                fail_msg("row %zu: value %s, expected %s", i, v, rows[i].value);
            assert_non_null(ann(c, "summary"));
            assert_non_null(ann(c, "threshold"));
        }
        /* 10 minutes on, T0's minute has left the window (alice: $1.00) and at 13m all */
        eval(&f, T0 + 13 * MIN);
        for (size_t k = 0; k < f.n; k++)
            assert_true(strstr(rows[i].rule, "op = <") != NULL ||
                        strstr(rows[i].rule, "requests") != NULL);
        fix_close(&f);
    }

    /* a summary template */
    fix_t f;
    fix_open(&f, NULL, NULL,
             "[rule.UserSpend]\naggregate = cost\nby = user\nwindow = 1h\nthreshold = 1\n"
             "summary = {{ $labels.user }} spent ${{$value}} (> ${{ $threshold }}) {{ $nope }} "
             "{{ $labels.none }}.\n");
    call(&f, T0, (call_t){ .user = "alice", .cost = 3 * USD / 2 });
    eval(&f, T0);
    const cap_t *c = find(&f, "UserSpend", "user=alice");
    assert_non_null(c);
    assert_string_equal(c->sev, "warning");
    assert_string_equal(ann(c, "summary"), "alice spent $1.50 (> $1) {{ $nope }} .");
    assert_float_equal(c->value, 1.5, 0);
    /* the window slides out */
    eval(&f, T0 + HOUR - 1);
    assert_int_equal(f.n, 1);
    eval(&f, T0 + HOUR);
    assert_int_equal(f.n, 0);
    fix_close(&f);

    /* a latency window over 10 minutes: a first value at once, then merged again at
     * most every minute */
    fix_open(&f, NULL, NULL,
             "[rule.slow]\naggregate = latency_p95\nby = user\nwindow = 1h\nthreshold = 2\n");
    call(&f, T0, (call_t){ .user = "alice", .lat_ms = 3000 });
    eval(&f, T0 + S);
    assert_non_null(find(&f, "slow", "user=alice"));
    for (int i = 0; i < 100; i++)
        call(&f, T0 + 2 * S, (call_t){ .user = "alice", .lat_ms = 1000 });
    eval(&f, T0 + 3 * S);
    assert_non_null(find(&f, "slow", "user=alice")); /* not merged again yet */
    eval(&f, T0 + 61 * S);
    assert_int_equal(f.n, 0);
    fix_close(&f);

    /* a threshold that is not a number cannot be built */
    char err[256];
    const char *ini = "[rule.x]\naggregate = cost\nthreshold = 1\n";
    cfg_t *cfg = cfg_load_string(ini, strlen(ini), "t.ini", NULL, err, sizeof err);
    assert_non_null(cfg);
    free(cfg->rules[0].threshold);
    cfg->rules[0].threshold = xstrdup("1.5x");
    assert_null(rules_new(cfg, NULL, err, sizeof err));
    assert_non_null(strstr(err, "threshold"));
    cfg_destroy(&cfg);
}

/* ---- windows, caps, the digest ----------------------------------------------------------- */

static void test_window_edges(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, NULL, "[rule.r]\naggregate = requests\nwindow = 3m\nthreshold = 0\n");
    call(&f, T0 + 30 * S, (call_t){ 0 });
    call(&f, T0 + 2 * MIN, (call_t){ .recv = T0 + 3 * MIN }); /* future: now */
    assert_int_equal(ctr(&f, "rules_usage_future_total", NULL), 1);
    eval(&f, T0 + 2 * MIN + 59 * S);
    assert_string_equal(ann(find(&f, "r", ""), "value"), "2");
    eval(&f, T0 + 3 * MIN); /* the minute of T0 left */
    assert_string_equal(ann(find(&f, "r", ""), "value"), "1");
    /* a late call into a minute still in the window counts at once */
    call(&f, T0 + 3 * MIN + S, (call_t){ .recv = T0 + MIN + S });
    eval(&f, T0 + 3 * MIN + S);
    assert_string_equal(ann(find(&f, "r", ""), "value"), "2");
    /* the clock steps back: the window follows (what is now ahead of it still counts) */
    eval(&f, T0 + 30 * S);
    assert_string_equal(ann(find(&f, "r", ""), "value"), "3");
    eval(&f, T0 + 5 * MIN);
    assert_int_equal(f.n, 0);
    /* a call older than what is kept is refused and counted */
    call(&f, T0 + 5 * MIN, (call_t){ .recv = T0 + 5 * MIN - 27 * HOUR });
    assert_int_equal(ctr(&f, "rules_usage_stale_total", NULL), 1);
    fix_close(&f);

    /* the cap on distinct values */
    fix_open(&f, NULL, NULL, NULL);
    for (int i = 0; i <= 100000; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        call(&f, T0, (call_t){ .user = u });
    }
    assert_int_equal(ctr(&f, "rules_values_dropped_total", "dim=user"), 1);
    rules_totals_t t;
    rules_totals(f.r, T0, T0 + MIN, &t);
    assert_int_equal(t.requests, 100001); /* all counts every call */
    /* buckets leave after 26 hours; series without buckets are forgotten */
    eval(&f, T0);
    int64_t series = ctr(&f, "rules_series", NULL);
    assert_true(series > 100000);
    eval(&f, T0 + 26 * HOUR);
    assert_int_equal(ctr(&f, "rules_series", NULL), series);
    eval(&f, T0 + 26 * HOUR + MIN);
    assert_int_equal(ctr(&f, "rules_series", NULL), 1); /* the all series stays */
    assert_int_equal(ctr(&f, "rules_buckets", NULL), 0);
    rules_totals(f.r, 0, INT64_MAX, &t);
    assert_int_equal(t.requests, 0);
    fix_close(&f);
}

typedef struct {
    char rows[8][128];
    size_t n;
} top_rows_t;

static void top_fn(void *arg, const char *kind, span_t id, int64_t cost, uint64_t tokens)
{
    top_rows_t *t = arg;
    assert_true(t->n < 8);
    snprintf(t->rows[t->n++], 128, "%s %.*s %" PRId64 " %" PRIu64, kind, (int)id.len, id.p, cost,
             tokens);
}

static void test_totals_and_top(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL, NULL, NULL);
    call(&f, T0, (call_t){ .user = "alice", .cost = 3, .in = 10, .status = "error" });
    call(&f, T0 + MIN, (call_t){ .user = "bob", .cost = 5, .in = 1, .model = "o1" });
    call(&f, T0 + MIN, (call_t){ .user = "carol", .cost = 5, .in = 2, .provider = "azure" });
    call(&f, T0 + 2 * MIN, (call_t){ .user = "alice", .cost = 3, .out = 10, .counter = true });
    rules_totals_t t;
    rules_totals(f.r, T0, T0 + 3 * MIN, &t);
    assert_int_equal(t.cost_nusd, 16);
    assert_int_equal(t.tokens, 23);
    assert_int_equal(t.requests, 3);
    assert_int_equal(t.errors, 1);
    rules_totals(f.r, T0 + 1, T0 + 2 * MIN, &t); /* buckets that start within */
    assert_int_equal(t.cost_nusd, 10);
    top_rows_t top = { 0 };
    rules_top(f.r, T0, T0 + 3 * MIN, 2, top_fn, &top);
    assert_int_equal(top.n, 4);
    assert_string_equal(top.rows[0], "user alice 6 20");
    assert_string_equal(top.rows[1], "user carol 5 2"); /* ties: tokens, then id */
    assert_string_equal(top.rows[2], "model openai/gpt-4o 6 20");
    assert_string_equal(top.rows[3], "model azure/gpt-4o 5 2");
    fix_close(&f);
}

/* ---- durable state ----------------------------------------------------------------------- */

static const char *FULL =
    "high_cost_call_usd = 1\nerror_pct = 5\nerror_min_requests = 1\nlatency_p95 = 1s\n"
    "budget = on\nquota = on\nbus_gap = on\nstage_silent = 2m\nburn_tokens_per_hour = 10\n"
    "daily_cost_usd = 1\nno_events = 1h";
static const char *FULL_RULES =
    "[rule.p99]\naggregate = latency_p99\nby = user\nthreshold = 0.5\nwindow = 30m\n";

static void feed(fix_t *f)
{
    for (int i = 0; i < 50; i++) {
        char u[16];
        snprintf(u, sizeof u, "user%d", i % 7);
        call(f, T0 - HOUR + i * MIN, (call_t){ .user = u, .account = "acme", .project = "p",
                                               .cost = i * USD / 10, .in = (uint64_t)i,
                                               .lat_ms = 100 + i * 20,
                                               .status = i % 5 ? "ok" : "error" });
    }
    call(f, T0, (call_t){ .rid = "big", .cost = 3 * USD, .user = "zed" });
    budget(f, (bud_t){ .src = "agg@0", .spent = 9 * USD, .partial = true });
    budget(f, (bud_t){ .src = "agg@1", .spent = 2 * USD, .partial = true });
    quota(f, "user", "alice", "day", "usd", "exceeded", 2, 1, T0 + HOUR, T0);
    stats(f, T0 - MIN, "tokmon-writer", "w@1", 5, 1, 0);
    stats(f, T0, "tokmon-writer", "w@1", 5, 3, 0);
}

static void save(const rules_t *r, mbuf_t *b)
{
    msgpack_packer pk;
    mbuf_reset(b);
    mbuf_packer(b, &pk);
    rules_save(r, &pk);
}

static int load(rules_t *r, const mbuf_t *b)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int rc = -1;
    if (msgpack_unpack_next(&up, b->data, b->len, &off) == MSGPACK_UNPACK_SUCCESS)
        rc = rules_load(r, &up.data);
    msgpack_unpacked_destroy(&up);
    return rc;
}

/* the conditions as one sorted text, for comparing two evaluations */
static int cap_cmp(const void *a, const void *b)
{
    const cap_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

static void same_conditions(fix_t *a, fix_t *b, int64_t now)
{
    eval(a, now);
    eval(b, now);
    assert_int_equal(a->n, b->n);
    qsort(a->c, a->n, sizeof *a->c, cap_cmp);
    qsort(b->c, b->n, sizeof *b->c, cap_cmp);
    for (size_t i = 0; i < a->n; i++) {
        assert_string_equal(a->c[i].name, b->c[i].name);
        assert_string_equal(a->c[i].labels, b->c[i].labels);
        assert_int_equal(a->c[i].nann, b->c[i].nann);
        for (size_t k = 0; k < a->c[i].nann; k++)
            assert_string_equal(a->c[i].av[k], b->c[i].av[k]);
    }
}

static void test_save_load(void **state)
{
    (void)state;
    fix_t a, b;
    fix_open(&a, NULL, FULL, FULL_RULES);
    fix_open(&b, NULL, FULL, FULL_RULES);
    feed(&a);
    eval(&a, T0); /* reports the expensive calls whose hold is over once ... */
    eval(&a, T0); /* ... and forgets them */
    assert_true(a.n >= 8);
    mbuf_t s1 = { 0 }, s2 = { 0 };
    save(a.r, &s1);
    assert_int_equal(load(b.r, &s1), 0);
    eval(&b, T0); /* the same start as a's */
    save(b.r, &s2);
    assert_int_equal(s1.len, s2.len);
    assert_memory_equal(s1.data, s2.data, s1.len);
    same_conditions(&a, &b, T0 + S);
    same_conditions(&a, &b, T0 + 10 * MIN);
    rules_totals_t ta, tb;
    rules_totals(a.r, 0, INT64_MAX, &ta);
    rules_totals(b.r, 0, INT64_MAX, &tb);
    assert_memory_equal(&ta, &tb, sizeof ta);
    /* loading again replaces everything (no doubling) */
    assert_int_equal(load(b.r, &s1), 0);
    rules_totals(b.r, 0, INT64_MAX, &tb);
    assert_memory_equal(&ta, &tb, sizeof ta);
    /* a config without latency rules drops the sketches but keeps the rest */
    fix_t c;
    fix_open(&c, NULL, NULL, NULL);
    assert_int_equal(load(c.r, &s1), 0);
    rules_totals_t tc;
    rules_totals(c.r, 0, INT64_MAX, &tc);
    assert_memory_equal(&ta, &tc, sizeof ta);
    /* an empty one round-trips too */
    fix_t e;
    fix_open(&e, NULL, NULL, NULL);
    save(e.r, &s1);
    assert_int_equal(load(c.r, &s1), 0);
    save(c.r, &s2);
    assert_int_equal(s1.len, s2.len);
    assert_memory_equal(s1.data, s2.data, s1.len);
    mbuf_free(&s1);
    mbuf_free(&s2);
    fix_close(&a);
    fix_close(&b);
    fix_close(&c);
    fix_close(&e);
}

/* -- malformed state: a valid saved state with one element replaced -- */

/* Packs o, replacing the object at path (indices into maps' values and
 * arrays, -1 ends) by what repl packs. */
typedef void (*repl_fn)(msgpack_packer *pk);

static void pack_obj(msgpack_packer *pk, const msgpack_object *o, const int *path, repl_fn repl)
{
    if (path[0] == -1) {
        repl(pk);
        return;
    }
    if (o->type == MSGPACK_OBJECT_MAP) {
        msgpack_pack_map(pk, o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            msgpack_pack_object(pk, o->via.map.ptr[i].key);
            if ((int)i == path[0])
                pack_obj(pk, &o->via.map.ptr[i].val, path + 1, repl);
            else
                msgpack_pack_object(pk, o->via.map.ptr[i].val);
        }
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if ((int)i == path[0])
                pack_obj(pk, &o->via.array.ptr[i], path + 1, repl);
            else
                msgpack_pack_object(pk, o->via.array.ptr[i]);
        }
    } else {
        fail_msg("path leads nowhere");
    }
}

static void r_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void r_str(msgpack_packer *pk) { msgpack_pack_str_with_body(pk, "x", 1); }
static void r_neg(msgpack_packer *pk) { msgpack_pack_int64(pk, -5); }
static void r_zero(msgpack_packer *pk) { msgpack_pack_int64(pk, 0); }
static void r_big(msgpack_packer *pk) { msgpack_pack_uint64(pk, UINT64_MAX); }
static void r_v2(msgpack_packer *pk) { msgpack_pack_int64(pk, 2); }
static void r_empty_arr(msgpack_packer *pk) { msgpack_pack_array(pk, 0); }
static void r_bad_blob(msgpack_packer *pk) { msgpack_pack_bin_with_body(pk, "\x01\x01\x05", 3); }
static void r_key_nosep(msgpack_packer *pk) { msgpack_pack_bin_with_body(pk, "abc", 3); }
static void r_true(msgpack_packer *pk) { msgpack_pack_true(pk); }
static void r_sketch_acc(msgpack_packer *pk)
{
    /* a valid sketch of another accuracy */
    sketch_t *s = sketch_new(0.05);
    sketch_add(s, 1000);
    unsigned char buf[64];
    size_t n = sketch_encode(s, buf, sizeof buf);
    msgpack_pack_bin_with_body(pk, buf, n);
    sketch_destroy(&s);
}
static void r_dup_series(msgpack_packer *pk)
{
    /* the user dimension with one value twice */
    msgpack_pack_array(pk, 2);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_bin_with_body(pk, "u", 1);
        msgpack_pack_array(pk, 0);
    }
}
static void r_desc_buckets(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_array(pk, 6);
        msgpack_pack_int64(pk, 29921760 - i);
        for (int k = 0; k < 4; k++)
            msgpack_pack_int64(pk, 1);
        msgpack_pack_nil(pk);
    }
}
static void r_errors_over_calls(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 6);
    msgpack_pack_int64(pk, 29921760);
    msgpack_pack_int64(pk, 1);
    msgpack_pack_int64(pk, 2);
    msgpack_pack_int64(pk, 0);
    msgpack_pack_int64(pk, 0);
    msgpack_pack_nil(pk);
}

/* the index of key k in map o */
static int idx(const msgpack_object *o, const char *k)
{
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *key = &o->via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
            !memcmp(key->via.str.ptr, k, key->via.str.size))
            return (int)i;
    }
    fail_msg("no key %s", k);
    return -1;
}

static void test_load_malformed(void **state)
{
    (void)state;
    fix_t a;
    fix_open(&a, NULL, FULL, FULL_RULES);
    feed(&a);
    mbuf_t good = { 0 }, bad = { 0 };
    save(a.r, &good);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, good.data, good.len, &off), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *top = &up.data;
    int V = idx(top, "v"), LC = idx(top, "last_call"), D = idx(top, "dims"),
        X = idx(top, "expensive"), B = idx(top, "budgets"), Q = idx(top, "quotas"),
        G = idx(top, "stages");
    const msgpack_object *dims = &top->via.map.ptr[D].val;
    int DA = idx(dims, "all"), DU = idx(dims, "user"), DM = idx(dims, "model");
    /* the user dimension is sorted by key: user0 first; its first bucket */
    static const struct {
        const char *what;
        int path[8];
        repl_fn repl;
    } rows[] = {
        { "not a map", { -1 }, r_nil },
        { "version 2", { 0, -1 }, r_v2 },
        { "version a string", { 0, -1 }, r_str },
        { "last_call nil", { 1, -1 }, r_nil },
        { "dims an array", { 2, -1 }, r_empty_arr },
        { "all with a key", { 2, 0, 0, 0, -1 }, r_key_nosep },
        { "a series not a pair", { 2, 1, 0, -1 }, r_true },
        { "a key not bin", { 2, 1, 0, 0, -1 }, r_str },
        { "a duplicate value", { 2, 1, -1 }, r_dup_series },
        { "buckets descending", { 2, 1, 0, 1, -1 }, r_desc_buckets },
        { "errors over calls", { 2, 1, 0, 1, -1 }, r_errors_over_calls },
        { "a minute of 0", { 2, 1, 0, 1, 0, 0, -1 }, r_zero },
        { "calls negative", { 2, 1, 0, 1, 0, 1, -1 }, r_neg },
        { "cost negative", { 2, 1, 0, 1, 0, 4, -1 }, r_neg },
        { "tokens a string", { 2, 1, 0, 1, 0, 3, -1 }, r_str },
        { "a broken sketch", { 2, 1, 0, 1, 0, 5, -1 }, r_bad_blob },
        { "a sketch of another accuracy", { 2, 1, 0, 1, 0, 5, -1 }, r_sketch_acc },
        { "a model key without provider", { 2, 2, 0, 0, -1 }, r_key_nosep },
        { "expensive cost huge", { 3, 0, 4, -1 }, r_big },
        { "expensive not an array", { 3, -1 }, r_true },
        { "budget key without separator", { 4, 0, 0, -1 }, r_key_nosep },
        { "budget part short", { 4, 0, 4, 0, -1 }, r_empty_arr },
        { "budget partial not bool", { 4, 0, 4, 0, 10, -1 }, r_nil },
        { "quota state 0", { 5, 0, 1, -1 }, r_zero },
        { "quota key short", { 5, 0, 0, -1 }, r_key_nosep },
        { "stage counters not bool", { 6, 0, 7, -1 }, r_str },
        { "stage last_seen nil", { 6, 0, 1, -1 }, r_nil },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        int path[8];
        memcpy(path, rows[i].path, sizeof path);
        /* map the symbolic top-level and dims positions */
        const int topmap[] = { V, LC, D, X, B, Q, G };
        const int dimmap[] = { DA, DU, DM };
        if (path[0] != -1) {
            int t = path[0];
            path[0] = topmap[t];
            if (t == 2 && path[1] != -1)
                path[1] = dimmap[path[1]];
        }
        mbuf_reset(&bad);
        msgpack_packer pk;
        mbuf_packer(&bad, &pk);
        pack_obj(&pk, top, path, rows[i].repl);
        fix_t f;
        fix_open(&f, NULL, FULL, FULL_RULES);
        feed(&f);
        if (load(f.r, &bad) != -1)
            fail_msg("%s: accepted", rows[i].what);
        /* left empty */
        rules_totals_t t;
        rules_totals(f.r, 0, INT64_MAX, &t);
        assert_int_equal(t.requests, 0);
        eval(&f, T0);
        for (size_t k = 0; k < f.n; k++)
            if (strcmp(f.c[k].name, "LLMDailyCostHigh") && strcmp(f.c[k].name, "LLMNoEvents"))
                fail_msg("%s: %s still holds", rows[i].what, f.c[k].name);
        assert_int_equal(f.n, 0);
        assert_int_equal(ctr(&f, "rules_load_refused_total", NULL), 1);
        /* and usable */
        assert_int_equal(load(f.r, &good), 0);
        fix_close(&f);
    }
    msgpack_unpacked_destroy(&up);
    mbuf_free(&good);
    mbuf_free(&bad);
    fix_close(&a);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget),          cmocka_unit_test(test_quota),
        cmocka_unit_test(test_expensive_call),  cmocka_unit_test(test_error_ratio),
        cmocka_unit_test(test_burn_and_cost_rate), cmocka_unit_test(test_daily_cost),
        cmocka_unit_test(test_latency_p95),     cmocka_unit_test(test_no_events),
        cmocka_unit_test(test_stage_silent),    cmocka_unit_test(test_bus_gap),
        cmocka_unit_test(test_user_rules),      cmocka_unit_test(test_window_edges),
        cmocka_unit_test(test_totals_and_top),  cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_load_malformed),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("rules", tests, NULL, NULL);
}

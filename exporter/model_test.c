/* model_test: the exporter's metric families without sockets: what calls,
 * budgets, quota changes, StatsD flushes and stage counters become, both
 * exposition formats line by line, the series cap, conflicts, the top-K
 * fold, and the samples remote write takes. Run one test alone with
 * `model_test NAME`. (promtool and a real Prometheus check the pages in
 * tests/integration/cases_exporter.py.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cfg.h"
#include "log.h"
#include "mbuf.h"
#include "model.h"
#include "msg.h"
#include "stats.h"

#define S 1000000000LL
#define NOW (1795305600LL * S + 12 * 3600 * S) /* 2026-11-22T12:00:00Z */

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    model_t *m;
    mbuf_t page;
} fix_t;

static void fix_open(fix_t *f, const char *extra)
{
    char ini[1024], err[1024];
    snprintf(ini, sizeof ini, "[exporter]\n%s", extra ? extra : "");
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-exporter", "exp@test");
    f->m = model_new(f->cfg, f->st, err, sizeof err);
    assert_non_null(f->m);
    memset(&f->page, 0, sizeof f->page);
}

static void fix_close(fix_t *f)
{
    model_destroy(&f->m);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    mbuf_free(&f->page);
}

static const char *render(fix_t *f, bool om)
{
    model_render(f->m, om, NOW, &f->page);
    mbuf_append(&f->page, "", 1);
    f->page.len--;
    return f->page.data;
}

static void has_line(const char *page, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = page; (p = strstr(p, line)); p++)
        if ((p == page || p[-1] == '\n') && (p[n] == '\n'))
            return;
    fail_msg("line not on the page: %s\n--- page ---\n%s", line, page);
}

static void no_text(const char *page, const char *text)
{
    if (strstr(page, text))
        fail_msg("unexpected on the page: %s\n--- page ---\n%s", text, page);
}

static msg_usage_t call(const char *model, const char *user, uint64_t in, uint64_t cache_read,
                        uint64_t out, uint64_t reasoning, int64_t cost, int64_t lat_us)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr("openai");
    u.model = span_cstr(model);
    u.operation = span_cstr("chat");
    u.user = span_cstr(user);
    u.status = span_cstr("ok");
    u.cost_source = span_cstr("priced");
    u.input_tokens = in;
    u.cache_read_tokens = cache_read;
    u.output_tokens = out;
    u.reasoning_tokens = reasoning;
    u.requests = 1;
    u.ts = u.recv_ts = NOW;
    u.cost_nusd = cost;
    u.latency_us = lat_us;
    u.ttft_us = -1;
    return u;
}

/* ---- calls ------------------------------------------------------------------------- */

static void test_calls_text(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_usage_t u = call("gpt-4o", "alice", 1200, 1000, 300, 100, 4750000, 15000);
    model_usage(f.m, &u, NOW);
    u = call("gpt-4o", "bob", 10, 0, 5, 0, 1, 20000); /* exactly on a boundary: le="0.02" */
    model_usage(f.m, &u, NOW);
    u.status = span_cstr("error");
    u.latency_us = 100000000; /* above the last boundary */
    model_usage(f.m, &u, NOW);
    const char *p = render(&f, false);
    has_line(p, "# TYPE llm_requests_total counter");
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",status=\"ok\"} 2");
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",status=\"error\"} 1");
    /* disjoint token types: 200 uncached input, 1000 cache read, 200 output, 100 reasoning */
    has_line(p, "llm_tokens_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",type=\"input\"} 220");
    has_line(p, "llm_tokens_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",type=\"cache_read\"} 1000");
    has_line(p, "llm_tokens_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",type=\"output\"} 210");
    has_line(p, "llm_tokens_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",type=\"reasoning\"} 100");
    no_text(p, "type=\"cache_write\"");
    /* exact dollars: 4,750,000 + 1 + 1 nano-dollars */
    has_line(p, "llm_cost_usd_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\"} 0.004750002");
    has_line(p, "# TYPE llm_request_duration_seconds histogram");
    has_line(p, "llm_request_duration_seconds_bucket{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",le=\"0.01\"} 0");
    has_line(p, "llm_request_duration_seconds_bucket{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",le=\"0.02\"} 2");
    has_line(p, "llm_request_duration_seconds_bucket{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",le=\"81.92\"} 2");
    has_line(p, "llm_request_duration_seconds_bucket{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",le=\"+Inf\"} 3");
    has_line(p, "llm_request_duration_seconds_sum{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\"} 100.035");
    has_line(p, "llm_request_duration_seconds_count{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\"} 3");
    no_text(p, "llm_time_to_first_token_seconds"); /* no call reported one */
    no_text(p, "# EOF");
    assert_int_equal(p[f.page.len - 1], '\n');

    model_totals_t t;
    model_totals(f.m, &t);
    assert_int_equal(t.requests, 3);
    assert_int_equal(t.errors, 1);
    assert_int_equal(t.total_tokens, 1500 + 15 + 15);
    assert_int_equal(t.cost_nusd, 4750002);
    fix_close(&f);
}

static void test_openmetrics(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_usage_t u = call("gpt-4o", "alice", 100, 0, 10, 0, 1500, 5000);
    model_usage(f.m, &u, NOW);
    const char *p = render(&f, true);
    has_line(p, "# TYPE llm_requests counter");
    has_line(p, "# HELP llm_requests LLM calls, by provider, model, operation and status.");
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\",status=\"ok\"} 1");
    has_line(p, "# TYPE llm_cost_usd counter");
    has_line(p, "llm_cost_usd_total{provider=\"openai\",model=\"gpt-4o\",operation=\"chat\"} 0.0000015");
    has_line(p, "# TYPE llm_request_duration_seconds histogram");
    no_text(p, "# TYPE llm_requests_total");
    size_t n = strlen(p);
    assert_true(n > 6 && !strcmp(p + n - 6, "# EOF\n"));
    fix_close(&f);
}

static void test_label_escaping_and_bad_utf8(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_usage_t u = call("we\"ird\\mo\ndel", "x", 1, 0, 1, 0, 1, -1);
    model_usage(f.m, &u, NOW);
    u.model = span_make("bad\xffutf8", 8);
    model_usage(f.m, &u, NOW);
    const char *p = render(&f, false);
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"we\\\"ird\\\\mo\\ndel\",operation=\"chat\",status=\"ok\"} 1");
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"bad?utf8\",operation=\"chat\",status=\"ok\"} 1");
    fix_close(&f);
}

static void test_series_cap(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "max_series = 10\n");
    char model[32];
    for (int i = 0; i < 25; i++) {
        snprintf(model, sizeof model, "m%02d", i);
        msg_usage_t u = call(model, "a", 1, 0, 1, 0, 1, -1);
        model_usage(f.m, &u, NOW);
    }
    const char *p = render(&f, false);
    /* ten series, then one __other__ holding the rest */
    has_line(p, "llm_requests_total{provider=\"openai\",model=\"m09\",operation=\"chat\",status=\"ok\"} 1");
    no_text(p, "model=\"m10\"");
    has_line(p, "llm_requests_total{provider=\"__other__\",model=\"__other__\",operation=\"__other__\",status=\"__other__\"} 15");
    assert_true(*stats_counter(f.st, "exporter_folded_total", NULL) >= 15);
    fix_close(&f);
}

/* ---- budgets, quotas, users ------------------------------------------------------- */

static void budget(fix_t *f, const char *src, int64_t start, int64_t spent, int64_t exhaust)
{
    msg_budget_t b = { 0 };
    b.name = span_cstr("daily");
    b.scope = span_cstr("global");
    b.period = span_cstr("day");
    b.period_start = start;
    b.period_end = start + 86400 * S;
    b.limit_nusd = 10 * S;
    b.spent_nusd = spent;
    b.forecast_avg_nusd = spent * 2;
    b.forecast_rate_nusd = spent * 3;
    b.exhaust_ts = exhaust;
    b.warn_pct = 80;
    b.state = span_cstr("ok");
    b.ts = start + 1;
    b.partial = true;
    b.shards = 2;
    model_budget(f->m, span_cstr(src), &b);
}

static void test_budgets_summed_over_shards(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    int64_t today = 1795305600LL * S;
    budget(&f, "agg.shard0", today - 86400 * S, 9 * S, 0); /* yesterday: left out */
    budget(&f, "agg.shard0", today, 2 * S, NOW + 3600 * S);
    budget(&f, "agg.shard1", today, 3 * S, NOW + 1800 * S);
    const char *p = render(&f, false);
    const char *l = "{budget=\"daily\",scope=\"global\",scope_value=\"\",period=\"day\"}";
    char line[256];
    snprintf(line, sizeof line, "llm_budget_spent_usd%s 5", l);
    has_line(p, line);
    snprintf(line, sizeof line, "llm_budget_limit_usd%s 10", l);
    has_line(p, line);
    snprintf(line, sizeof line, "llm_budget_spent_ratio%s 0.5", l);
    has_line(p, line);
    snprintf(line, sizeof line, "llm_budget_exhaust_seconds%s 1800", l);
    has_line(p, line);
    has_line(p, "llm_budget_forecast_usd{budget=\"daily\",scope=\"global\",scope_value=\"\",period=\"day\",method=\"avg\"} 10");
    has_line(p, "llm_budget_forecast_usd{budget=\"daily\",scope=\"global\",scope_value=\"\",period=\"day\",method=\"rate\"} 15");
    fix_close(&f);
}

static void quota(fix_t *f, const char *id, const char *window, const char *state)
{
    msg_quota_t q = { 0 };
    q.subject = span_cstr("user");
    q.id = span_cstr(id);
    q.window = span_cstr(window);
    q.unit = span_cstr("tokens");
    q.state = span_cstr(state);
    q.prev = span_cstr("ok");
    q.ts = NOW;
    q.shards = 1;
    model_quota(f->m, &q);
}

static void test_quota_subjects(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    quota(&f, "alice", "day", "warning");
    quota(&f, "alice", "month", "exceeded"); /* alice's worst: exceeded */
    quota(&f, "bob", "day", "warning");
    quota(&f, "carol", "day", "exceeded");
    quota(&f, "carol", "day", "ok"); /* back to ok */
    const char *p = render(&f, false);
    has_line(p, "llm_quota_subjects{subject=\"user\",state=\"exceeded\"} 1");
    has_line(p, "llm_quota_subjects{subject=\"user\",state=\"warning\"} 1");
    has_line(p, "llm_quota_subjects{subject=\"account\",state=\"warning\"} 0");
    fix_close(&f);
}

static void test_top_users_folded(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "user_labels = on\ntop_k = 2\n");
    const char *users[] = { "u1", "u2", "u3", "u4" };
    for (int i = 0; i < 4; i++) {
        msg_usage_t u = call("gpt-4o", users[i], 10, 0, 0, 0, (i + 1) * 1000000000LL, -1);
        model_usage(f.m, &u, NOW);
    }
    const char *p = render(&f, false);
    has_line(p, "llm_user_cost_usd{user=\"u4\"} 4");
    has_line(p, "llm_user_cost_usd{user=\"u3\"} 3");
    has_line(p, "llm_user_cost_usd{user=\"__other__\"} 3");
    has_line(p, "llm_users_folded 2");
    no_text(p, "user=\"u1\"");
    fix_close(&f);
}

/* ---- StatsD and stage counters ----------------------------------------------------- */

static msg_flush_t flush_of(const char *name, msg_stype_t type, double value)
{
    msg_flush_t fl = { 0 };
    fl.name = span_cstr(name);
    fl.type = type;
    fl.value = value;
    fl.start = NOW - 10 * S;
    fl.end = NOW;
    return fl;
}

static void test_statsd_and_conflicts(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_flush_t fl = flush_of("app.requests", MSG_ST_C, 3);
    fl.ntags = 1;
    fl.tags[0] = (msg_tag_t){ span_cstr("env-name"), span_cstr("prod") };
    model_flush(f.m, &fl);
    model_flush(f.m, &fl);
    msg_flush_t g = flush_of("app.requests", MSG_ST_G, 1); /* another type: skipped */
    model_flush(f.m, &g);
    msg_flush_t other = flush_of("app.requests", MSG_ST_C, 1); /* other labels: skipped */
    model_flush(f.m, &other);
    msg_flush_t reserved = flush_of("llm_requests_total", MSG_ST_C, 1);
    model_flush(f.m, &reserved);
    msg_flush_t t = flush_of("9lat", MSG_ST_MS, 0);
    t.count = 4;
    t.sum = 100;
    t.q[0] = 20;
    t.q[3] = 40;
    model_flush(f.m, &t);
    /* names whose samples another family renders: skipped */
    msg_flush_t clash1 = flush_of("app.requests_total", MSG_ST_G, 5); /* app_requests_total */
    model_flush(f.m, &clash1);
    msg_flush_t clash2 = flush_of("9lat_count", MSG_ST_G, 5); /* the timer's _count */
    model_flush(f.m, &clash2);
    msg_flush_t g2 = flush_of("hits_total", MSG_ST_G, 2);
    model_flush(f.m, &g2);
    msg_flush_t clash3 = flush_of("hits", MSG_ST_C, 1); /* a counter hits renders hits_total */
    model_flush(f.m, &clash3);
    msg_flush_t g3 = flush_of("q_sum", MSG_ST_G, 2);
    model_flush(f.m, &g3);
    msg_flush_t clash4 = flush_of("q", MSG_ST_MS, 0); /* a summary q renders q_sum */
    clash4.count = 1;
    model_flush(f.m, &clash4);
    const char *p = render(&f, false);
    has_line(p, "# TYPE app_requests_total counter");
    has_line(p, "# TYPE hits_total gauge");
    has_line(p, "hits_total 2");
    assert_null(strstr(p, "# TYPE hits_total counter"));
    has_line(p, "q_sum 2");
    assert_null(strstr(p, "app_requests_total 5"));
    assert_null(strstr(p, "_9lat_count 5"));
    assert_null(strstr(p, "# TYPE q summary"));
    has_line(p, "app_requests_total{env_name=\"prod\"} 6");
    has_line(p, "# TYPE _9lat summary");
    has_line(p, "_9lat{quantile=\"0.5\"} 20");
    has_line(p, "_9lat_count 4");
    assert_int_equal(*stats_counter(f.st, "exporter_conflicts_total", NULL), 7);
    fix_close(&f);
}

static void test_stage_counters(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_stat_t e[2] = {
        { span_cstr("ingest_rejected_total"), 1, { { span_cstr("reason"), span_cstr("parse") } }, 7, false },
        { span_cstr("bus_spool_bytes"), 0, { { SPAN_NULL, SPAN_NULL } }, 4096, true },
    };
    msg_stats_t s = { span_cstr("tokmon-collectd"), span_cstr("collectd@a"), 1, NOW, NOW, 2, e };
    model_stats(f.m, &s);
    e[0].value = 9;
    model_stats(f.m, &s);
    const char *p = render(&f, true);
    has_line(p, "# TYPE tokmon_ingest_rejected counter");
    has_line(p, "tokmon_ingest_rejected_total{daemon=\"tokmon-collectd\",instance_src=\"collectd@a\",reason=\"parse\"} 9");
    has_line(p, "# TYPE tokmon_bus_spool_bytes gauge");
    has_line(p, "tokmon_bus_spool_bytes{daemon=\"tokmon-collectd\",instance_src=\"collectd@a\"} 4096");
    fix_close(&f);
}

/* ---- remote write's view ---------------------------------------------------------------- */

typedef struct {
    int samples;
    int sorted_bad;
    int le_seen;
    double requests, cost;
} walk_t;

static void walk(void *arg, const char *name, const model_label_t *l, size_t n, double v)
{
    walk_t *w = arg;
    w->samples++;
    for (size_t i = 1; i < n; i++)
        if (strcmp(l[i - 1].name, l[i].name) >= 0)
            w->sorted_bad++;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(l[i].name, "le"))
            w->le_seen++;
    if (!strcmp(name, "llm_requests_total"))
        w->requests += v;
    if (!strcmp(name, "llm_cost_usd_total"))
        w->cost += v;
}

static void test_samples_sorted(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, NULL);
    msg_usage_t u = call("gpt-4o", "alice", 100, 0, 10, 0, 1500, 5000);
    model_usage(f.m, &u, NOW);
    model_usage(f.m, &u, NOW);
    model_refresh(f.m, NOW);
    walk_t w = { 0 };
    model_each_sample(f.m, walk, &w);
    assert_int_equal(w.sorted_bad, 0);
    assert_int_equal(w.le_seen, 15); /* one histogram series */
    assert_true(w.requests == 2.0);
    /* 3000 nano-dollars: the double nearest 0.000003, as a scraper parses
     * the page's "0.000003" (not 3.0000000000000005e-06) */
    assert_true(w.cost == 0.000003);
    /* 1 requests + 2 token types + 1 cost + 15 buckets + sum + count, and
     * the four quota-subject gauges (user and account, warning and exceeded) */
    assert_int_equal(w.samples, 1 + 2 + 1 + 15 + 2 + 4);
    fix_close(&f);
}

int main(int argc, char **argv)
{
    log_setup("model_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls_text),
        cmocka_unit_test(test_openmetrics),
        cmocka_unit_test(test_label_escaping_and_bad_utf8),
        cmocka_unit_test(test_series_cap),
        cmocka_unit_test(test_budgets_summed_over_shards),
        cmocka_unit_test(test_quota_subjects),
        cmocka_unit_test(test_top_users_folded),
        cmocka_unit_test(test_statsd_and_conflicts),
        cmocka_unit_test(test_stage_counters),
        cmocka_unit_test(test_samples_sorted),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}

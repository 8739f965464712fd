/* fuzz_consumers: libFuzzer target for what the writer, the exporter and
 * the alerter make of bus messages, without sockets or PostgreSQL. Byte 0
 * picks the topic and kind (usage on ev.xx, rollup, budget, quota, flush,
 * stats, alert, or a mismatch), byte 1 moves the clock; the rest is the
 * body, checked with mpr_validate and unpacked as the bus does. Each input
 * goes to the writer's batch builder (pgw_apply), to the exporter's model
 * (the record decoders, then model_*) and to the alerter's rules, and an
 * alert engine round runs. Checked: no crash, leak or undefined behaviour;
 * the writer's batch only grows until dropped; every page the model renders
 * is well formed (each sample line "name[{labels}] value" with valid UTF-8
 * and a name Prometheus allows, OpenMetrics ending in "# EOF"); every
 * sample remote write would send has its labels sorted; the rules' state
 * saves and loads again (TOKMON_FUZZ_DUMP=FILE writes a state that does
 * not load there, to look at). */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "cfg.h"
#include "engine.h"
#include "fuzz_agg.h"
#include "log.h"
#include "mbuf.h"
#include "model.h"
#include "mpr.h"
#include "msg.h"
#include "pgw.h"
#include "rules.h"
#include "stats.h"
#include "utf8.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define S 1000000000LL
#define T0 (1795305600LL * S) /* 2026-11-22T00:00:00Z */

static const char ini[] =
    "[global]\ntimezone = Europe/Berlin\n"
    "[exporter]\nmax_series = 50\nuser_labels = on\naccount_labels = on\ntop_k = 3\n"
    "[pgwriter]\nraw_retention_days = 3\npartitions_ahead = 2\n"
    "[alerter]\nhigh_cost_call_usd = 0.01\nerror_pct = 5\nerror_window = 1m\nerror_for = 0\n"
    "error_min_requests = 1\nburn_tokens_per_hour = 1000\nburn_for = 0\ndaily_cost_usd = 1\n"
    "cost_rate_usd = 1\nlatency_p95 = 1s\nlatency_for = 0\nno_events = 1m\nstage_silent = 1m\n"
    "group_wait = 0\n"
    "[rule.u]\naggregate = latency_p99\nwindow = 5m\nby = user\nthreshold = 0.5\n"
    "summary = {{ $labels.user }} at {{ $value }} over {{ $threshold }}\n"
    "[rule.e]\naggregate = error_ratio\nwindow = 1h\nby = model\nop = >=\nthreshold = 0.1\n";

static cfg_t *cfg;
static stats_t *st;
static pgw_t *pgw;
static model_t *model;
static rules_t *rules;
static engine_t *engine;
static mbuf_t page;
static int64_t clock_ns = T0;
static uint64_t seq, inputs;

static void on_alert(void *arg, const msg_alert_t *a)
{
    (void)arg;
    CHECK(a->alertname.len && a->fingerprint.len == 16, "an alert without a name or fingerprint");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[4096];
    cfg = cfg_load_string(ini, sizeof ini - 1, "fuzz.ini", NULL, err, sizeof err);
    CHECK(cfg, "config: %s", err);
    log_setup("fuzz", "fuzz", LOG_FMT_KV, LOG_LVL_ERROR);
    st = stats_new("fuzz", "fuzz");
    pgw_opts_t po = { cfg, "fuzz", st };
    pgw = pgw_new(&po);
    model = model_new(cfg, st, err, sizeof err);
    CHECK(model, "model_new: %s", err);
    rules = rules_new(cfg, st, err, sizeof err);
    CHECK(rules, "rules_new: %s", err);
    engine_opts_t eo = { cfg, st, NULL, on_alert, NULL };
    engine = engine_new(&eo, err, sizeof err);
    CHECK(engine, "engine_new: %s", err);
    return 0;
}

/* ---- the exporter's and the alerter's reading of a record ------------------------ */

static void consume(const bus_msg_t *m, const msgpack_object *r)
{
    char err[256];
    if (span_eq_cstr(m->kind, MSG_KIND_USAGE)) {
        msg_usage_t u;
        if (msg_usage_unpack(r, &u, err, sizeof err) == 0) {
            model_usage(model, &u, clock_ns);
            rules_usage(rules, &u, clock_ns);
        }
    } else if (span_eq_cstr(m->kind, MSG_KIND_BUDGET)) {
        msg_budget_t b;
        if (msg_budget_unpack(r, &b, err, sizeof err) == 0) {
            model_budget(model, m->src, &b);
            rules_budget(rules, m->src, &b);
        }
    } else if (span_eq_cstr(m->kind, MSG_KIND_QUOTA)) {
        msg_quota_t q;
        if (msg_quota_unpack(r, &q, err, sizeof err) == 0) {
            model_quota(model, &q);
            rules_quota(rules, &q);
        }
    } else if (span_eq_cstr(m->kind, MSG_KIND_FLUSH)) {
        msg_flush_t f;
        if (msg_flush_unpack(r, &f, err, sizeof err) == 0)
            model_flush(model, &f);
    } else if (span_eq_cstr(m->kind, MSG_KIND_ALERT)) {
        msg_alert_t a;
        if (msg_alert_unpack(r, &a, err, sizeof err) == 0)
            CHECK(a.alertname.len, "an alert without a name unpacked");
    }
}

/* ---- checks ---------------------------------------------------------------------------- */

static bool name_ok(const char *p, size_t n)
{
    if (!n || (p[0] >= '0' && p[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':'))
            return false;
    }
    return true;
}

static void check_page(bool om)
{
    model_render(model, om, clock_ns, &page);
    CHECK(utf8_valid(page.data ? page.data : "", page.len), "the page is not UTF-8");
    CHECK(!page.len || page.data[page.len - 1] == '\n', "the page does not end with a newline");
    if (om)
        CHECK(page.len >= 6 && !memcmp(page.data + page.len - 6, "# EOF\n", 6), "no # EOF");
    const char *p = page.data, *end = page.data + page.len;
    while (p && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl, "a line without its newline");
        if (*p != '#') {
            size_t n = strcspn(p, "{ ");
            CHECK(p + n < nl && name_ok(p, n), "a sample with a bad name: %.*s", (int)(nl - p), p);
            const char *sp = memrchr(p, ' ', (size_t)(nl - p));
            CHECK(sp && sp + 1 < nl, "a sample without a value: %.*s", (int)(nl - p), p);
        }
        p = nl + 1;
    }
}

static void on_sample(void *arg, const char *name, const model_label_t *l, size_t n, double v)
{
    (void)arg;
    (void)v;
    CHECK(name_ok(name, strlen(name)), "remote write name %s", name);
    for (size_t i = 1; i < n; i++)
        CHECK(strcmp(l[i - 1].name, l[i].name) < 0, "labels of %s not sorted", name);
}

static void check_rules_state(void)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rules_save(rules, &pk);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS,
          "the rules' state does not unpack");
    char err[256];
    rules_t *again = rules_new(cfg, st, err, sizeof err);
    if (!again || rules_load(again, &up.data) != 0) {
        FILE *f = getenv("TOKMON_FUZZ_DUMP") ? fopen(getenv("TOKMON_FUZZ_DUMP"), "wb") : NULL;
        if (f) {
            fwrite(sb.data, 1, sb.size, f);
            fclose(f);
        }
        CHECK(0, "the rules' own state does not load");
    }
    rules_destroy(&again);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct {
        const char *topic, *kind;
    } sel[] = {
        { "ev.1f", MSG_KIND_USAGE },   { "roll.m", MSG_KIND_ROLLUP }, { "budget", MSG_KIND_BUDGET },
        { "quota", MSG_KIND_QUOTA },   { "metric.flush", MSG_KIND_FLUSH },
        { "stats", MSG_KIND_STATS },   { "alert", MSG_KIND_ALERT },   { "ev.00", MSG_KIND_BUDGET },
    };
    if (size < 2)
        return 0;
    size_t k = data[0] % (sizeof sel / sizeof sel[0]);
    clock_ns += (int64_t)data[1] * (data[1] > 200 ? 3600 : 1) * S;
    const uint8_t *body = data + 2;
    size_t blen = size - 2;
    if (mpr_validate(body, blen, BUS_MAX_DEPTH) != 0)
        return 0;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (msgpack_unpack_next(&up, (const char *)body, blen, &off) != MSGPACK_UNPACK_SUCCESS) {
        msgpack_unpacked_destroy(&up);
        return 0;
    }
    bus_msg_t m = { .topic = span_cstr(sel[k].topic), .src = span_cstr("c1"), .seq = ++seq,
                    .ts = clock_ns, .kind = span_cstr(sel[k].kind), .body = &up.data };
    size_t before = pgw_pending(pgw);
    pgw_apply(pgw, &m, clock_ns);
    CHECK(pgw_pending(pgw) >= before, "the writer's batch shrank");
    if (!strcmp(sel[k].kind, MSG_KIND_STATS)) {
        static msg_stat_t entries[MSG_MAX_STATS];
        msg_stats_t s;
        char err[256];
        if (msg_stats_unpack(&up.data, &s, entries, MSG_MAX_STATS, err, sizeof err) == 0) {
            model_stats(model, &s);
            rules_stats(rules, &s, clock_ns);
        }
    } else if (up.data.type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < up.data.via.array.size; i++)
            consume(&m, &up.data.via.array.ptr[i]);
    }
    msgpack_unpacked_destroy(&up);
    engine_round(engine, rules, clock_ns);
    if (++inputs % 32 == 0) {
        pgw_drop(pgw);
        check_page(inputs % 64 == 0);
        model_refresh(model, clock_ns);
        model_each_sample(model, on_sample, NULL);
        check_rules_state();
    }
    return 0;
}

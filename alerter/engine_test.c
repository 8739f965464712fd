/* engine_test: the alert state machine driven through real rules, without
 * sockets: pending for `for`, then firing, then resolved; once per period
 * across a saved and loaded state; inhibition of a warning by its critical
 * twin and silences, seen in the engine's counters; silence matchers.
 * (Receivers, grouping on the wire and Alertmanager are tested end to end in
 * tests/integration/cases_alerter.py.) Run one test alone with
 * `engine_test NAME`. */
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
#include "digest.h"
#include "engine.h"
#include "log.h"
#include "notify.h"
#include "rules.h"
#include "stats.h"

#define S 1000000000LL
#define DAY (86400 * S)
#define T0 (1795305600LL * S + 10 * 3600 * S) /* 2026-11-22T10:00:00Z */

typedef struct {
    char name[64], state[16], fp[17];
} pub_t;

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    rules_t *r;
    notify_t *n;
    engine_t *e;
    pub_t pub[64];
    size_t npub;
} fix_t;

static void on_publish(void *arg, const msg_alert_t *a)
{
    fix_t *f = arg;
    if (f->npub == 64)
        return;
    pub_t *p = &f->pub[f->npub++];
    snprintf(p->name, sizeof p->name, "%.*s", (int)a->alertname.len, a->alertname.p);
    snprintf(p->state, sizeof p->state, "%.*s", (int)a->state.len, a->state.p);
    snprintf(p->fp, sizeof p->fp, "%.*s", (int)a->fingerprint.len, a->fingerprint.p);
}

static const char base_ini[] =
    "[global]\ntimezone = UTC\n"
    "[alerter]\nhigh_cost_call_usd = 0\nerror_pct = 0\nburn_tokens_per_hour = 0\n"
    "stage_silent = 0\ngroup_wait = 0\ngroup_interval = 1s\nrepeat_interval = 10s\n"
    /* a receiver nobody listens to: deliveries fail, the engine's counting
     * of what it would send is what these tests look at */
    "[notify.hook]\ntype = webhook\nurl = http://127.0.0.1:9/hook\nretries = 0\ntimeout = 100ms\n"
    "[rule.busy]\naggregate = requests\nwindow = 1m\nop = >=\nthreshold = 3\nfor = 2s\n"
    "severity = warning\n";

static void fix_open(fix_t *f)
{
    memset(f, 0, sizeof *f);
    char err[1024];
    f->cfg = cfg_load_string(base_ini, sizeof base_ini - 1, "t.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-alerter", "alerter@test");
    f->r = rules_new(f->cfg, f->st, err, sizeof err);
    assert_non_null(f->r);
    f->n = notify_new(f->cfg, f->st, err, sizeof err);
    assert_non_null(f->n);
    engine_opts_t o = { f->cfg, f->st, f->n, on_publish, f };
    f->e = engine_new(&o, err, sizeof err);
    assert_non_null(f->e);
}

static void fix_close(fix_t *f)
{
    engine_destroy(&f->e);
    notify_destroy(&f->n);
    rules_destroy(&f->r);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
}

static int64_t counter(fix_t *f, const char *name)
{
    return *stats_counter(f->st, name, NULL);
}

static size_t count_pub(const fix_t *f, const char *name, const char *state)
{
    size_t n = 0;
    for (size_t i = 0; i < f->npub; i++)
        n += !strcmp(f->pub[i].name, name) && !strcmp(f->pub[i].state, state);
    return n;
}

static void call(fix_t *f, int64_t t)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr("openai");
    u.model = span_cstr("gpt-4o");
    u.operation = span_cstr("chat");
    u.status = span_cstr("ok");
    u.cost_source = span_cstr("priced");
    u.input_tokens = 10;
    u.output_tokens = 5;
    u.requests = 1;
    u.ts = u.recv_ts = t;
    u.cost_nusd = 1000;
    rules_usage(f->r, &u, t);
}

static void budget(fix_t *f, int64_t spent, int64_t start)
{
    msg_budget_t b = { 0 };
    b.name = span_cstr("daily");
    b.scope = span_cstr("global");
    b.period = span_cstr("day");
    b.period_start = start;
    b.period_end = start + DAY;
    b.limit_nusd = 10 * S;
    b.spent_nusd = spent;
    b.remaining_nusd = spent < 10 * S ? 10 * S - spent : 0;
    b.warn_pct = 80;
    b.state = span_cstr(spent >= 10 * S ? "exceeded" : spent >= 8 * S ? "warning" : "ok");
    b.ts = start + 3600 * S;
    b.shards = 1;
    rules_budget(f->r, span_cstr("agg"), &b);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_for_pending_firing_resolved(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    for (int i = 0; i < 3; i++)
        call(&f, T0 + i * S);
    engine_round(f.e, f.r, T0 + 3 * S);
    assert_int_equal(count_pub(&f, "busy", "pending"), 1);
    assert_int_equal(count_pub(&f, "busy", "firing"), 0);
    engine_round(f.e, f.r, T0 + 4 * S); /* held 1 s of its 2 */
    assert_int_equal(count_pub(&f, "busy", "firing"), 0);
    engine_round(f.e, f.r, T0 + 5 * S + 1); /* held 2 s */
    assert_int_equal(count_pub(&f, "busy", "firing"), 1);
    assert_int_equal(engine_firing(f.e), 1);
    engine_round(f.e, f.r, T0 + 6 * S); /* still: no new transition */
    assert_int_equal(count_pub(&f, "busy", "firing"), 1);
    /* the calls leave the one-minute window */
    engine_round(f.e, f.r, T0 + 3 * 60 * S);
    assert_int_equal(count_pub(&f, "busy", "resolved"), 1);
    assert_int_equal(engine_firing(f.e), 0);
    fix_close(&f);
}

static void test_pending_that_goes_is_not_firing(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    for (int i = 0; i < 3; i++)
        call(&f, T0 + i * S);
    engine_round(f.e, f.r, T0 + 3 * S);
    assert_int_equal(count_pub(&f, "busy", "pending"), 1);
    engine_round(f.e, f.r, T0 + 3 * 60 * S); /* gone before its `for` */
    assert_int_equal(count_pub(&f, "busy", "firing"), 0);
    assert_int_equal(count_pub(&f, "busy", "resolved"), 1);
    fix_close(&f);
}

/* Once per period: a firing budget alert survives a save and load without a
 * second firing transition; the next period's crossing fires again. */
static void test_once_per_period_across_restart(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    int64_t day = T0 - 10 * 3600 * S;
    budget(&f, 11 * S, day);
    engine_round(f.e, f.r, T0);
    assert_int_equal(count_pub(&f, "LLMBudgetExceeded", "firing"), 1);
    assert_int_equal(count_pub(&f, "LLMBudgetWarning", "firing"), 1);
    /* save both, load into a new alerter */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    rules_save(f.r, &pk);
    engine_save(f.e, &pk);
    fix_t g;
    fix_open(&g);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(rules_load(g.r, &up.data), 0);
    assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    char err[256];
    assert_int_equal(engine_load(g.e, &up.data, err, sizeof err), 0);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(engine_firing(g.e), 2);
    engine_round(g.e, g.r, T0 + S);
    assert_int_equal(g.npub, 0); /* nothing new: still firing */
    /* the next day: spent starts again, the alerts resolve; crossing again fires */
    budget(&g, 0, day + DAY);
    engine_round(g.e, g.r, day + DAY + 3600 * S);
    assert_int_equal(count_pub(&g, "LLMBudgetExceeded", "resolved"), 1);
    budget(&g, 12 * S, day + DAY);
    engine_round(g.e, g.r, day + DAY + 3601 * S);
    assert_int_equal(count_pub(&g, "LLMBudgetExceeded", "firing"), 1);
    fix_close(&g);
    fix_close(&f);
}

/* The warning twin of a firing critical is held back from notifications;
 * a silence keeps matching alerts out too. */
static void test_inhibition_and_silence(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    budget(&f, 11 * S, T0 - 10 * 3600 * S);
    engine_round(f.e, f.r, T0);
    engine_tick(f.e, T0 + 10 * S);
    assert_true(counter(&f, "alerter_inhibited_total") >= 1);
    assert_int_equal(counter(&f, "alerter_silenced_total"), 0);
    char id[17], err[256];
    assert_int_equal(engine_silence_add(f.e, "alertname=~LLMBudget.* budget=daily", T0 + 3600 * S,
                                        "maintenance", "test", T0, id, err, sizeof err),
                     0);
    /* a change in the group (a new firing alert routed) is told again: the
     * silence keeps the budget alerts out of it */
    for (int i = 0; i < 3; i++)
        call(&f, T0 + 18 * S + i * S);
    engine_round(f.e, f.r, T0 + 21 * S); /* busy: pending */
    engine_round(f.e, f.r, T0 + 24 * S); /* busy: firing, into the group */
    engine_tick(f.e, T0 + 40 * S);
    assert_true(counter(&f, "alerter_silenced_total") >= 1);
    assert_int_equal(engine_silence_expire(f.e, id, T0 + 41 * S), 0);
    assert_int_equal(engine_silence_expire(f.e, id, T0 + 42 * S), -1);
    fix_close(&f);
}

static void test_silence_matchers(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    static const struct {
        const char *m;
        bool ok;
    } rows[] = {
        { "alertname=X", true },        { "user!=bob", true },      { "user=~bo.*", true },
        { "user!~bo.*", true },         { "a=1, b=2 c=~x", true },  { "", false },
        { "=x", false },                { "user", false },          { "user=~(", false },
        { "a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 j=10 k=11 l=12 m=13 n=14 o=15 p=16 q=17", false },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char id[17], err[256] = "";
        int rc = engine_silence_add(f.e, rows[i].m, T0 + S, "", "", T0, id, err, sizeof err);
        if ((rc == 0) != rows[i].ok)
            fail_msg("'%s': %s (%s)", rows[i].m, rc ? "refused" : "accepted", err);
        if (rc)
            assert_true(err[0] != '\0');
    }
    char id[17], err[256];
    assert_int_equal(engine_silence_add(f.e, "a=1", T0 - 1, "", "", T0, id, err, sizeof err), -1);
    fix_close(&f);
}

static void test_malformed_state_refused(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 5);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 2); /* an alert record cut short */
    msgpack_pack_str_with_body(&pk, "0123456789abcdef", 16);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 0);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    char err[256] = "";
    assert_int_equal(engine_load(f.e, &up.data, err, sizeof err), -1);
    assert_non_null(strstr(err, "malformed"));
    assert_int_equal(engine_firing(f.e), 0);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    fix_close(&f);
}

/* The digest of a day: its totals, the budgets as they stand (shards'
 * parts of the current period summed), what fired. */
static void test_digest(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    int64_t day = T0 - 10 * 3600 * S;
    for (int i = 0; i < 3; i++)
        call(&f, T0 + i * S);
    budget(&f, 11 * S, day);
    engine_round(f.e, f.r, T0 + 10 * S);
    char subject[256];
    mbuf_t text = { 0 };
    digest_build(f.r, f.e, day, day + DAY, "2026-11-22", subject, sizeof subject, &text);
    mbuf_append(&text, "", 1);
    assert_string_equal(subject, "tokmon daily digest 2026-11-22: $0.00, 45 tokens");
    static const char *const want[] = {
        "LLM usage on 2026-11-22\n",
        "  requests  3\n",
        "Budgets at the end of the day:\n  daily (global, this day): $11.00 of $10.00, 110%\n",
        "Alerts that fired:\n",
        "  - LLMBudgetExceeded: ",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text.data, want[i]))
            fail_msg("the digest lacks '%s':\n%s", want[i], text.data);
    mbuf_free(&text);
    fix_close(&f);
}

int main(int argc, char **argv)
{
    log_setup("engine_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_for_pending_firing_resolved),
        cmocka_unit_test(test_pending_that_goes_is_not_firing),
        cmocka_unit_test(test_once_per_period_across_restart),
        cmocka_unit_test(test_inhibition_and_silence),
        cmocka_unit_test(test_silence_matchers),
        cmocka_unit_test(test_malformed_state_refused),
        cmocka_unit_test(test_digest),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}

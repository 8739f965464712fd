/* pgw_test: the writer's parts that need no PostgreSQL: partition names and
 * days, the binary COPY encoding, JSON strings for tags, and how bus
 * messages become rows or dead letters (the SQL side is tested against a
 * real PostgreSQL in tests/integration/cases_pgwriter.py). Run one test
 * alone with `pgw_test NAME`. */
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
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "pgcopy.h"
#include "pgw.h"
#include "stats.h"
#include "tmtime.h"

#define S 1000000000LL
#define DAY (86400 * S)
#define NOW (1795305600LL * S) /* 2026-11-22T00:00:00Z */

/* ---- partitions ------------------------------------------------------------------ */

static void test_partition_names(void **state)
{
    (void)state;
    char name[32];
    static const struct {
        int y;
        unsigned m, d;
        const char *name;
    } rows[] = {
        { 1970, 1, 1, "llm_events_p19700101" },  { 2000, 2, 29, "llm_events_p20000229" },
        { 2024, 2, 29, "llm_events_p20240229" },  { 2026, 11, 22, "llm_events_p20261122" },
        { 2026, 12, 31, "llm_events_p20261231" }, { 2100, 3, 1, "llm_events_p21000301" },
        { 1969, 12, 31, "llm_events_p19691231" },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        int64_t day = tmtime_days_from_civil(rows[i].y, rows[i].m, rows[i].d);
        assert_string_equal(pgw_partition_name(day, name, sizeof name), rows[i].name);
        if (day >= 0)
            assert_int_equal(pgw_partition_day(rows[i].name), day);
    }
    /* every day of 1999..2101 goes there and back */
    for (int64_t d = tmtime_days_from_civil(1999, 1, 1); d < tmtime_days_from_civil(2101, 1, 1); d++)
        assert_int_equal(pgw_partition_day(pgw_partition_name(d, name, sizeof name)), d);
    static const char *const bad[] = { "llm_events_p20240230", "llm_events_p2024022",
                                       "llm_events_p202402290", "llm_events_p2024-229",
                                       "llm_events_p20241301", "llm_events_p20240100",
                                       "llm_events", "other_p20240229", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(pgw_partition_day(bad[i]), -1);
}

/* ---- encodings -------------------------------------------------------------------- */

static void test_copy_encoding(void **state)
{
    (void)state;
    /* PostgreSQL's epoch, microseconds, rounded down */
    assert_int_equal(pgcopy_ts_value(PGCOPY_EPOCH_UNIX * S), 0);
    assert_int_equal(pgcopy_ts_value(0), -PGCOPY_EPOCH_UNIX * 1000000);
    assert_int_equal(pgcopy_ts_value(PGCOPY_EPOCH_UNIX * S + 1999), 1);
    assert_int_equal(pgcopy_ts_value(-1), -PGCOPY_EPOCH_UNIX * 1000000 - 1);
    assert_int_equal(pgcopy_ts_value(-1000), -PGCOPY_EPOCH_UNIX * 1000000 - 1);
    assert_int_equal(pgcopy_ts_value(-1001), -PGCOPY_EPOCH_UNIX * 1000000 - 2);

    pgcopy_t c = { 0 };
    pgcopy_row(&c, 5);
    pgcopy_i64(&c, 0x0102030405060708LL);
    pgcopy_i32(&c, -2);
    pgcopy_bool(&c, true);
    pgcopy_text(&c, SPAN_NULL);
    pgcopy_jsonb(&c, "{}", 2);
    static const unsigned char want[] = {
        0, 5,                                     /* fields */
        0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,       /* bigint */
        0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe,       /* integer */
        0, 0, 0, 1, 1,                            /* boolean */
        0xff, 0xff, 0xff, 0xff,                   /* NULL */
        0, 0, 0, 3, 1, '{', '}',                  /* jsonb */
    };
    assert_int_equal(c.tup.len, sizeof want);
    assert_memory_equal(c.tup.data, want, sizeof want);
    pgcopy_row(&c, 1);
    pgcopy_text0(&c, SPAN_NULL);
    assert_int_equal(c.n, 2);
    assert_int_equal(c.off[1], sizeof want);
    assert_int_equal(pgcopy_end_of(&c, 0), sizeof want);
    assert_int_equal(pgcopy_end_of(&c, 1), c.tup.len);
    pgcopy_unrow(&c);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.tup.len, sizeof want);
    assert_memory_equal(PGCOPY_HEADER, "PGCOPY\n\377\r\n\0", 11);
    pgcopy_free(&c);
}

static void test_json_strings(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } rows[] = {
        { "", "\"\"" },
        { "plain", "\"plain\"" },
        { "a\"b", "\"a\\\"b\"" },
        { "back\\slash", "\"back\\\\slash\"" },
        { "tab\there", "\"tab\\u0009here\"" },
        { "nl\n", "\"nl\\u000a\"" },
        { "\x1f", "\"\\u001f\"" },
        { "caf\xc3\xa9 \xe2\x82\xac", "\"caf\xc3\xa9 \xe2\x82\xac\"" },
        { "/<>&'", "\"/<>&'\"" },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        mbuf_t b = { 0 };
        pgw_json_str(&b, rows[i].in, strlen(rows[i].in));
        mbuf_append(&b, "", 1);
        assert_string_equal(b.data, rows[i].out);
        mbuf_free(&b);
    }
}

/* ---- messages into rows ------------------------------------------------------------- */

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    pgw_t *w;
} fix_t;

static void fix_open(fix_t *f)
{
    static const char ini[] = "[pgwriter]\nraw_retention_days = 10\npartitions_ahead = 2\n";
    char err[1024];
    f->cfg = cfg_load_string(ini, sizeof ini - 1, "test.ini", NULL, err, sizeof err);
    assert_non_null(f->cfg);
    f->st = stats_new("tokmon-pgwriter", "pgw@test");
    pgw_opts_t o = { f->cfg, "pgw@test", f->st };
    f->w = pgw_new(&o);
}

static void fix_close(fix_t *f)
{
    pgw_destroy(&f->w);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
}

static int64_t counter(fix_t *f, const char *name) { return *stats_counter(f->st, name, NULL); }

static void usage_of(msg_usage_t *u, const char *user, int64_t ts)
{
    msg_usage_init(u);
    u->provider = span_cstr("openai");
    u->model = span_cstr("gpt-4o");
    u->operation = span_cstr("chat");
    u->user = span_cstr(user);
    u->status = span_cstr("ok");
    u->cost_source = span_cstr("priced");
    u->input_tokens = 100;
    u->output_tokens = 20;
    u->requests = 1;
    u->ts = u->recv_ts = ts;
    u->cost_nusd = 12345;
}

/* Applies body (packed by fill) as one message of topic and kind. */
static void apply(fix_t *f, const char *topic, const char *kind,
                  void (*fill)(msgpack_packer *pk, void *arg), void *arg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    fill(&pk, arg);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, sb.data, sb.size, &off), MSGPACK_UNPACK_SUCCESS);
    static uint64_t seq;
    bus_msg_t m = { .topic = span_cstr(topic), .src = span_cstr("c1"), .seq = ++seq,
                    .ts = NOW, .kind = span_cstr(kind), .body = &up.data };
    pgw_apply(f->w, &m, NOW);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

static void fill_usage_mix(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msg_usage_t u;
    msgpack_pack_array(pk, 6);
    usage_of(&u, "alice", NOW + 3600 * S); /* good */
    msg_usage_pack(pk, &u);
    usage_of(&u, "bad\xff-utf8", NOW); /* invalid UTF-8 */
    msg_usage_pack(pk, &u);
    usage_of(&u, "nul\0user", NOW); /* a NUL byte: span_cstr stops there, so build it */
    u.user = span_make("nul\0user", 8);
    msg_usage_pack(pk, &u);
    usage_of(&u, "old", NOW - 11 * DAY); /* past the retention */
    msg_usage_pack(pk, &u);
    usage_of(&u, "ahead", NOW + 3 * DAY); /* past the partitions made ahead */
    msg_usage_pack(pk, &u);
    msgpack_pack_map(pk, 1); /* not a usage record */
    msgpack_pack_str_with_body(pk, "x", 1);
    msgpack_pack_int(pk, 1);
}

static void fill_not_array(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msgpack_pack_str_with_body(pk, "hello", 5);
}

static void fill_budget(msgpack_packer *pk, void *arg)
{
    (void)arg;
    msg_budget_t b = { 0 };
    b.name = span_cstr("daily");
    b.scope = span_cstr("global");
    b.period = span_cstr("day");
    b.period_start = NOW;
    b.period_end = NOW + DAY;
    b.limit_nusd = 1000;
    b.spent_nusd = 900;
    b.remaining_nusd = 100;
    b.warn_pct = 80;
    b.state = span_cstr("warning");
    b.crossing = span_cstr("warning");
    b.crossed_ts = NOW + S;
    b.ts = NOW + S;
    b.shards = 1;
    msgpack_pack_array(pk, 1);
    msg_budget_pack(pk, &b);
}

static void test_rows_and_dead_letters(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    assert_int_equal(pgw_pending(f.w), 0);
    assert_int_equal(pgw_pending_since(f.w), 0);

    apply(&f, "ev.1a", MSG_KIND_USAGE, fill_usage_mix, NULL);
    /* one row; five records for dead_letter, each counted */
    assert_int_equal(pgw_pending(f.w), 6);
    assert_int_equal(counter(&f, "pgw_refused_records_total"), 5);
    assert_int_equal(counter(&f, "pgw_dead_letter_total"), 5);
    assert_true(pgw_pending_since(f.w) > 0);

    /* a body that is not an array: the whole body to dead_letter */
    apply(&f, "ev.1a", MSG_KIND_USAGE, fill_not_array, NULL);
    assert_int_equal(pgw_pending(f.w), 7);
    /* a kind the writer does not store on that topic */
    apply(&f, "ev.1a", MSG_KIND_BUDGET, fill_budget, NULL);
    assert_int_equal(pgw_pending(f.w), 8);
    assert_int_equal(counter(&f, "pgw_unexpected_messages_total"), 1);
    /* a budget status with a crossing: a status row and a crossing row */
    apply(&f, "budget", MSG_KIND_BUDGET, fill_budget, NULL);
    assert_int_equal(pgw_pending(f.w), 10);
    assert_int_equal(counter(&f, "pgw_refused_records_total"), 7);

    /* no connection: a flush fails and drops the batch (replay brings it back) */
    char err[256];
    pgw_pos_t pos = { "c1", 4 };
    assert_int_equal(pgw_flush(f.w, &pos, 1, err, sizeof err), -1);
    pgw_drop(f.w);
    assert_int_equal(pgw_pending(f.w), 0);
    fix_close(&f);
}

static void test_day_range(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f);
    int64_t lo, hi;
    pgw_day_range(f.w, NOW + 5 * S, &lo, &hi);
    int64_t today = tmtime_days_from_civil(2026, 11, 22);
    assert_int_equal(lo, today - 10);
    assert_int_equal(hi, today + 2);
    pgw_day_range(f.w, NOW - 1, &lo, &hi); /* a nanosecond before midnight */
    assert_int_equal(hi, today - 1 + 2);
    fix_close(&f);
}

int main(int argc, char **argv)
{
    log_setup("pgw_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_names),
        cmocka_unit_test(test_copy_encoding),
        cmocka_unit_test(test_json_strings),
        cmocka_unit_test(test_rows_and_dead_letters),
        cmocka_unit_test(test_day_range),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("pgw", tests, NULL, NULL);
}

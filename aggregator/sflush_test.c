/* sflush_test: tests of aggregator/sflush, StatsD flush semantics. Tables of
 * sample sequences and watermarks with the flush records they must give
 * (counters with rates, gauges with deltas, persistence and expiry, timers,
 * histograms and distributions, sets and their cap, tag order, the series
 * cap, late samples, interval alignment and close delay, type conflicts);
 * quantile accuracy against exact ranks; save -> load -> go on giving the
 * bytes of an uninterrupted run; damaged snapshots refused cleanly. Every
 * emitted record is also packed and checked by msg_flush_unpack. Run one
 * test alone with `sflush_test NAME`. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mbuf.h"
#include "mpr.h"
#include "msg.h"
#include "sflush.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SEC(x) ((int64_t)((x) * 1e9))

/* ---- a recorder of emitted records ---------------------------------------- */

#define KEEP_RECS 16

typedef struct {
    char **line;                /* every record, rendered */
    msg_flush_t rec[KEEP_RECS]; /* the first ones; strings not kept */
    size_t n;
    mbuf_t bytes; /* every record, packed, in order */
} rec_t;

static void render(const msg_flush_t *r, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%.10g-%.10g r%u %s %.*s{", (double)r->start / 1e9,
                                (double)r->end / 1e9, r->rev, msg_stype_name(r->type),
                                (int)r->name.len, r->name.p);
    for (size_t i = 0; i < r->ntags && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%.*s=%.*s", i ? "," : "", (int)r->tags[i].key.len,
                              r->tags[i].key.p, (int)r->tags[i].value.len, r->tags[i].value.p);
    if (n >= cap)
        return;
    n += (size_t)snprintf(out + n, cap - n, "} n=%llu", (unsigned long long)r->samples);
    if (n >= cap)
        return;
    switch (r->type) {
    case MSG_ST_C:
        snprintf(out + n, cap - n, " v=%g rate=%g", r->value, r->rate);
        break;
    case MSG_ST_G:
        snprintf(out + n, cap - n, " v=%g", r->value);
        break;
    case MSG_ST_S:
        snprintf(out + n, cap - n, " v=%g%s", r->value, r->capped ? " capped" : "");
        break;
    default:
        snprintf(out + n, cap - n, " count=%g sum=%g min=%g max=%g", r->count, r->sum, r->min,
                 r->max);
        break;
    }
}

static void on_emit(void *arg, const msg_flush_t *r)
{
    rec_t *rc = arg;
    /* the wire form of every record passes the strict reader */
    mbuf_t b = { 0 };
    msgpack_packer pk;
    mbuf_packer(&b, &pk);
    msg_flush_pack(&pk, r);
    assert_int_equal(mpr_validate(b.data, b.len, 8), 0);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, b.data, b.len, &off), MSGPACK_UNPACK_SUCCESS);
    msg_flush_t back;
    char err[256];
    if (msg_flush_unpack(&up.data, &back, err, sizeof err) != 0)
        fail_msg("emitted record refused: %s", err);
    msgpack_unpacked_destroy(&up);
    mbuf_append(&rc->bytes, b.data, b.len);
    mbuf_free(&b);

    char line[512];
    render(r, line, sizeof line);
    rc->line = realloc(rc->line, (rc->n + 1) * sizeof *rc->line);
    assert_non_null(rc->line);
    rc->line[rc->n] = strdup(line);
    if (rc->n < KEEP_RECS) {
        rc->rec[rc->n] = *r;
        rc->rec[rc->n].name = SPAN_NULL;
        rc->rec[rc->n].ntags = 0;
    }
    rc->n++;
}

static void rec_clear(rec_t *rc)
{
    for (size_t i = 0; i < rc->n; i++)
        free(rc->line[i]);
    free(rc->line);
    rc->line = NULL;
    rc->n = 0;
    mbuf_free(&rc->bytes);
}

static sflush_opts_t opts_default(rec_t *rc)
{
    return (sflush_opts_t){ .interval_ns = SEC(10),
                            .max_series = 1000,
                            .max_set_members = 1000,
                            .idle_intervals = 5,
                            .emit = on_emit,
                            .arg = rc };
}

/* ---- a little language for sample sequences --------------------------------
 *   "<ts_s> name:value|type[|@rate][|#k:v,k2,...]"   a sample; a gauge value
 *                                                    with a sign is a delta
 *   "> <watermark_s>"                                sflush_advance
 *   "? <counter> <value>"                            a counter's value */

typedef struct {
    char buf[512];
    msg_sample_t s;
} psample_t;

static void parse_sample(const char *line, psample_t *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->buf, sizeof p->buf, "%s", line);
    char *sp = strchr(p->buf, ' ');
    assert_non_null(sp);
    *sp = '\0';
    p->s.ts = SEC(strtod(p->buf, NULL));
    char *name = sp + 1, *colon = strchr(name, ':');
    assert_non_null(colon);
    *colon = '\0';
    p->s.name = span_cstr(name);
    char *val = colon + 1, *bar = strchr(val, '|');
    assert_non_null(bar);
    *bar = '\0';
    char *type = bar + 1, *rest = strchr(type, '|');
    if (rest)
        *rest++ = '\0';
    static const char *const types[] = { "c", "g", "ms", "h", "d", "s" };
    bool found = false;
    for (int i = 0; i < 6; i++)
        if (!strcmp(type, types[i])) {
            p->s.type = (msg_stype_t)i;
            found = true;
        }
    if (!found)
        fail_msg("bad type in \"%s\"", line);
    p->s.rate = 1;
    if (p->s.type == MSG_ST_S) {
        p->s.member = span_cstr(val);
    } else {
        p->s.delta = p->s.type == MSG_ST_G && (val[0] == '+' || val[0] == '-');
        p->s.value = strtod(val, NULL);
    }
    while (rest) {
        char *next = strchr(rest, '|');
        if (next)
            *next++ = '\0';
        if (rest[0] == '@') {
            p->s.rate = strtod(rest + 1, NULL);
        } else if (rest[0] == '#') {
            char *t = rest + 1;
            while (*t) {
                char *comma = strchr(t, ',');
                if (comma)
                    *comma = '\0';
                char *c = strchr(t, ':');
                if (c)
                    *c = '\0';
                p->s.tags[p->s.ntags++] = (msg_tag_t){ span_cstr(t), span_cstr(c ? c + 1 : "") };
                if (!comma)
                    break;
                t = comma + 1;
            }
        }
        rest = next;
    }
}

static uint64_t counter(const sflush_t *f, const char *name)
{
    const sflush_counters_t *c = sflush_counters(f);
    static const struct {
        const char *name;
        size_t off;
    } names[] = {
#define C(x) { #x, offsetof(sflush_counters_t, x) }
        C(samples),        C(invalid),          C(late_dropped),    C(future_dropped),
        C(series_dropped), C(set_capped),       C(late_gauge),      C(intervals_closed),
        C(records_emitted), C(amended_emitted), C(series_forgotten), C(series_live),
#undef C
    };
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (!strcmp(names[i].name, name))
            return *(const uint64_t *)(const void *)((const char *)c + names[i].off);
    fail_msg("no counter %s", name);
    return 0;
}

static void run_op(sflush_t *f, const char *op, const char *case_name)
{
    if (op[0] == '>') {
        sflush_advance(f, SEC(strtod(op + 1, NULL)));
    } else if (op[0] == '?') {
        char name[64];
        unsigned long long want;
        assert_int_equal(sscanf(op + 1, "%63s %llu", name, &want), 2);
        uint64_t got = counter(f, name);
        if (got != want)
            fail_msg("%s: counter %s = %llu, want %llu", case_name, name,
                     (unsigned long long)got, want);
    } else {
        psample_t p;
        parse_sample(op, &p);
        sflush_sample(f, &p.s);
    }
}

/* ---- the flow table ------------------------------------------------------- */

typedef struct {
    const char *name;
    int64_t interval_s, delay_s, lateness_s; /* interval 0: 10 s */
    size_t max_series, max_members;          /* 0: 1000 */
    uint32_t idle;                           /* 0: 5 */
    const char *ops[48];
    const char *want[48];
} flow_case_t;

static const flow_case_t flows[] = {
    { "counter with sample rates",
      .ops = { "1 req:1|c|@0.1", "> 10" },
      .want = { "0-10 r0 c req{} n=1 v=10 rate=1" } },
    { "counter sums values over rates",
      .ops = { "1 req:1|c", "2 req:2|c|@0.5", "3 req:-0.5|c", "9.999 req:3|c|@0.25", "> 10" },
      .want = { "0-10 r0 c req{} n=4 v=16.5 rate=1.65" } },
    { "a counter is not emitted for an interval without samples",
      .ops = { "1 req:1|c", "> 10", "> 20", "21 req:2|c", "> 30" },
      .want = { "0-10 r0 c req{} n=1 v=1 rate=0.1", "20-30 r0 c req{} n=1 v=2 rate=0.2" } },
    { "gauge absolute and deltas, persisting across intervals",
      .ops = { "1 g:5|g", "2 g:+3|g", "> 10", "> 20", "21 g:-10|g", "22 g:-1|g", "> 30",
               "31 g:4|g", "32 g:+0.5|g", "> 40" },
      .want = { "0-10 r0 g g{} n=2 v=8", "10-20 r0 g g{} n=0 v=8", "20-30 r0 g g{} n=2 v=-3",
                "30-40 r0 g g{} n=2 v=4.5" } },
    { "gauge starting with a delta starts from 0",
      .ops = { "1 g:+5|g", "2 g:-7|g", "> 10" },
      .want = { "0-10 r0 g g{} n=2 v=-2" } },
    { "gauge expires after idle intervals, then starts afresh",
      .idle = 2,
      .ops = { "1 g:5|g", "> 10", "> 20", "> 30", "> 100", "? series_live 0",
               "? series_forgotten 1", "101 g:+1|g", "> 110" },
      .want = { "0-10 r0 g g{} n=1 v=5", "10-20 r0 g g{} n=0 v=5", "100-110 r0 g g{} n=1 v=1" } },
    { "gauge sample for an open later interval counts for the live value",
      .delay_s = 5,
      .ops = { "1 g:1|g", "12 g:2|g", "> 15", "> 25" },
      .want = { "0-10 r0 g g{} n=1 v=2", "10-20 r0 g g{} n=1 v=2" } },
    { "gauges and counters in creation order within an interval",
      .ops = { "1 b:1|g", "1 a:1|c", "1 c:1|ms", "> 10", "11 a:2|c", "> 20" },
      .want = { "0-10 r0 g b{} n=1 v=1", "0-10 r0 c a{} n=1 v=1 rate=0.1",
                "0-10 r0 ms c{} n=1 count=1 sum=1 min=1 max=1", "10-20 r0 g b{} n=0 v=1",
                "10-20 r0 c a{} n=1 v=2 rate=0.2" } },
    { "timer count, sum, min, max with rates",
      .ops = { "1 t:10|ms|@0.5", "2 t:20|ms", "3 t:5|ms|@0.25", "4 t:0|ms", "> 10" },
      .want = { "0-10 r0 ms t{} n=4 count=8 sum=60 min=0 max=20" } },
    { "histogram with negative values",
      .ops = { "1 h:-5|h", "2 h:3|h", "3 h:-1|h", "4 h:0|h", "> 10" },
      .want = { "0-10 r0 h h{} n=4 count=4 sum=-3 min=-5 max=3" } },
    { "distribution",
      .ops = { "1 d:1.5|d", "2 d:2.5|d", "12 d:7|d", "> 20" },
      .want = { "0-10 r0 d d{} n=2 count=2 sum=4 min=1.5 max=2.5",
                "10-20 r0 d d{} n=1 count=1 sum=7 min=7 max=7" } },
    { "set with duplicates",
      .ops = { "1 u:alice|s", "2 u:bob|s", "3 u:alice|s", "4 u:|s", "5 u:|s", "6 u:alic|s",
               "> 10", "11 u:alice|s", "> 20" },
      .want = { "0-10 r0 s u{} n=6 v=4", "10-20 r0 s u{} n=1 v=1" } },
    { "set member cap",
      .max_members = 2,
      .ops = { "1 u:a|s", "2 u:b|s", "3 u:c|s", "4 u:a|s", "5 u:d|s", "> 10", "? set_capped 2",
               "11 u:x|s", "> 20" },
      .want = { "0-10 r0 s u{} n=5 v=2 capped", "10-20 r0 s u{} n=1 v=1" } },
    { "tag order does not matter; tags come out sorted",
      .ops = { "1 req:1|c|#a:1,b:2", "2 req:1|c|#b:2,a:1", "3 req:1|c|#b:2,a:2", "4 req:1|c|#flag,a:1",
               "5 req:1|c|#a:1,a:0", "6 req:1|c|#a:0,a:1", "> 10", "? series_live 4" },
      .want = { "0-10 r0 c req{a=1,b=2} n=2 v=2 rate=0.2", "0-10 r0 c req{a=2,b=2} n=1 v=1 rate=0.1",
                "0-10 r0 c req{a=1,flag=} n=1 v=1 rate=0.1", "0-10 r0 c req{a=0,a=1} n=2 v=2 rate=0.2" } },
    { "same name, different types: different series",
      .ops = { "1 x:1|c", "2 x:1|g", "3 x:1|ms", "4 x:1|h", "5 x:1|s", "> 10" },
      .want = { "0-10 r0 c x{} n=1 v=1 rate=0.1", "0-10 r0 g x{} n=1 v=1",
                "0-10 r0 ms x{} n=1 count=1 sum=1 min=1 max=1",
                "0-10 r0 h x{} n=1 count=1 sum=1 min=1 max=1", "0-10 r0 s x{} n=1 v=1" } },
    { "series cap: new series dropped and counted, room again after expiry",
      .max_series = 2, .idle = 1,
      .ops = { "1 a:1|c", "2 b:1|c", "3 c:1|c", "4 a:1|c", "5 c:1|g", "? series_dropped 2",
               "> 10", "? series_live 2", "11 c:1|c", "? series_dropped 3", "> 20",
               "? series_live 0", "21 c:1|c", "> 30" },
      .want = { "0-10 r0 c a{} n=2 v=2 rate=0.2", "0-10 r0 c b{} n=1 v=1 rate=0.1",
                "20-30 r0 c c{} n=1 v=1 rate=0.1" } },
    { "late samples within lateness amend the interval (rev per interval)",
      .lateness_s = 20,
      .ops = { "1 req:1|c", "2 t:4|ms", "> 10", "5 req:2|c", "> 11", "6 req:1|c", "7 other:1|c",
               "8 t:1|ms", "> 12", "> 13", "? amended_emitted 4" },
      .want = { "0-10 r0 c req{} n=1 v=1 rate=0.1", "0-10 r0 ms t{} n=1 count=1 sum=4 min=4 max=4",
                "0-10 r1 c req{} n=2 v=3 rate=0.3", "0-10 r2 c req{} n=3 v=4 rate=0.4",
                "0-10 r2 ms t{} n=2 count=2 sum=5 min=1 max=4", "0-10 r2 c other{} n=1 v=1 rate=0.1" } },
    { "late samples beyond lateness are dropped and counted",
      .lateness_s = 20,
      .ops = { "1 req:1|c", "> 10", "> 29.999", "5 req:1|c", "> 30", "6 req:1|c", "? late_dropped 1",
               "> 40" },
      .want = { "0-10 r0 c req{} n=1 v=1 rate=0.1", "0-10 r1 c req{} n=2 v=2 rate=0.2" } },
    { "no lateness: any sample for a closed interval is late",
      .ops = { "1 req:1|c", "> 10", "9 req:1|c", "? late_dropped 1", "> 20" },
      .want = { "0-10 r0 c req{} n=1 v=1 rate=0.1" } },
    { "late gauge samples change the live value, not the closed interval",
      .lateness_s = 30,
      .ops = { "1 g:1|g", "> 10", "5 g:+5|g", "? late_gauge 1", "> 20" },
      .want = { "0-10 r0 g g{} n=1 v=1", "10-20 r0 g g{} n=0 v=6" } },
    { "late sample for an interval that had no data",
      .lateness_s = 100,
      .ops = { "15 req:1|c", "> 30", "3 req:1|c", "> 31" },
      .want = { "10-20 r0 c req{} n=1 v=1 rate=0.1", "0-10 r1 c req{} n=1 v=1 rate=0.1" } },
    { "alignment and close delay: an interval closes at end + delay",
      .delay_s = 2,
      .ops = { "0 a:1|c", "9.999999999 a:1|c", "10 a:5|c", "> 11.999", "11 a:1|c", "> 12",
               "> 21.999", "> 22" },
      .want = { "0-10 r0 c a{} n=2 v=2 rate=0.2", "10-20 r0 c a{} n=2 v=6 rate=0.6" } },
    { "a 60 s interval aligned on the epoch",
      .interval_s = 60,
      .ops = { "1763823249 a:1|c", "1763823299.5 a:1|c", "1763823300 a:1|c", "> 1763823359",
               "> 1763823360" },
      .want = { "1763823240-1763823300 r0 c a{} n=2 v=2 rate=0.0333333",
                "1763823300-1763823360 r0 c a{} n=1 v=1 rate=0.0166667" } },
    { "watermark going back is ignored; a jump closes several intervals",
      .ops = { "1 a:1|c", "> 10", "> 5", "15 a:1|c", "35 a:2|c", "> 9", "> 100" },
      .want = { "0-10 r0 c a{} n=1 v=1 rate=0.1", "10-20 r0 c a{} n=1 v=1 rate=0.1",
                "30-40 r0 c a{} n=1 v=2 rate=0.2" } },
    { "a watermark jump emits gauges only while they live",
      .idle = 3,
      .ops = { "1 g:2|g", "55 c:1|c", "> 1000000", "? series_live 0" },
      .want = { "0-10 r0 g g{} n=1 v=2", "10-20 r0 g g{} n=0 v=2", "20-30 r0 g g{} n=0 v=2",
                "50-60 r0 c c{} n=1 v=1 rate=0.1" } },
    { "idle series are forgotten after their kept data",
      .idle = 1, .lateness_s = 15,
      .ops = { "1 a:1|c", "> 10", "? series_live 1", "> 24", "? series_live 1", "> 25",
               "? series_live 0", "? series_forgotten 1" },
      .want = { "0-10 r0 c a{} n=1 v=1 rate=0.1" } },
    { "samples before the first advance are all open",
      .ops = { "100 a:1|c", "1 a:1|c", "> 0", "> 10", "> 110" },
      .want = { "0-10 r0 c a{} n=1 v=1 rate=0.1", "100-110 r0 c a{} n=1 v=1 rate=0.1" } },
    { "sums saturate at the largest double, never infinite",
      .ops = { "1 a:1e308|c", "2 a:1e308|c", "3 a:1|c|@1e-310", "1 g:1e308|g", "2 g:+1e308|g",
               "3 t:1e308|ms|@1e-300", "4 t:-1e308|ms", "> 10" },
      .want = { "0-10 r0 c a{} n=3 v=1.79769e+308 rate=1.79769e+307", "0-10 r0 g g{} n=2 v=1.79769e+308",
                "0-10 r0 ms t{} n=2 count=1e+300 sum=7.97693e+307 min=-1e+308 max=1e+308" } },
    { "invalid samples are counted",
      .ops = { "1 a:nan|c", "1 a:inf|ms", "1 a:1|c|@0", "1 a:1|c|@1.5", "-1 a:1|c", "1 a:1|c",
               "> 10", "? invalid 5", "? samples 6" },
      .want = { "0-10 r0 c a{} n=1 v=1 rate=0.1" } },
};

static void run_flow(const flow_case_t *c)
{
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    if (c->interval_s)
        o.interval_ns = SEC(c->interval_s);
    o.close_delay_ns = SEC(c->delay_s);
    o.lateness_ns = SEC(c->lateness_s);
    if (c->max_series)
        o.max_series = c->max_series;
    if (c->max_members)
        o.max_set_members = c->max_members;
    if (c->idle)
        o.idle_intervals = c->idle;
    sflush_t *f = sflush_new(&o);
    assert_non_null(f);
    for (size_t i = 0; i < ARRAY_LEN(c->ops) && c->ops[i]; i++)
        run_op(f, c->ops[i], c->name);
    size_t nwant = 0;
    while (nwant < ARRAY_LEN(c->want) && c->want[nwant])
        nwant++;
    bool ok = nwant == rc.n;
    for (size_t i = 0; ok && i < nwant; i++)
        ok = !strcmp(rc.line[i], c->want[i]);
    if (!ok) {
        print_message("case \"%s\":\n  got:\n", c->name);
        for (size_t i = 0; i < rc.n; i++)
            print_message("    %s\n", rc.line[i]);
        print_message("  want:\n");
        for (size_t i = 0; i < nwant; i++)
            print_message("    %s\n", c->want[i]);
        fail_msg("%s: records differ", c->name);
    }
    sflush_destroy(&f);
    assert_null(f);
    rec_clear(&rc);
}

static void test_flows(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(flows); i++)
        run_flow(&flows[i]);
}

/* ---- options -------------------------------------------------------------- */

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    rec_t rc = { 0 };
    const sflush_opts_t good = opts_default(&rc);
    sflush_opts_t bad[8];
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        bad[i] = good;
    bad[0].interval_ns = 0;
    bad[1].close_delay_ns = -1;
    bad[2].lateness_ns = -1;
    bad[3].max_series = 0;
    bad[4].max_set_members = 0;
    bad[5].idle_intervals = 0;
    bad[6].emit = NULL;
    bad[7].future_ns = -1;
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_null(sflush_new(&bad[i]));
    assert_null(sflush_new(NULL));
    sflush_t *f = sflush_new(&good);
    assert_non_null(f);
    sflush_destroy(&f);
    sflush_destroy(&f); /* NULL: nothing */
    sflush_destroy(NULL);
    /* the largest interval still works */
    sflush_opts_t big = good;
    big.interval_ns = INT64_MAX / 4;
    f = sflush_new(&big);
    assert_non_null(f);
    sflush_destroy(&f);
}

static void test_future_limit(void **state)
{
    (void)state;
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    o.future_ns = SEC(60);
    sflush_t *f = sflush_new(&o);
    psample_t p;
    parse_sample("1000 a:1|c", &p);
    sflush_sample(f, &p.s); /* no watermark yet: no limit */
    sflush_advance(f, SEC(10));
    sflush_sample(f, &p.s);
    assert_int_equal(sflush_counters(f)->future_dropped, 1);
    parse_sample("69 a:1|c", &p);
    sflush_sample(f, &p.s);
    assert_int_equal(sflush_counters(f)->future_dropped, 1);
    /* ts near INT64_MAX: refused, no overflow */
    p.s.ts = INT64_MAX;
    sflush_sample(f, &p.s);
    sflush_destroy(&f);
    o.future_ns = 0;
    f = sflush_new(&o);
    sflush_sample(f, &p.s);
    assert_int_equal(sflush_counters(f)->invalid, 1);
    sflush_advance(f, INT64_MAX);
    sflush_advance(f, INT64_MIN);
    sflush_destroy(&f);
    rec_clear(&rc);
}

static void test_sample_shapes(void **state)
{
    (void)state;
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    sflush_t *f = sflush_new(&o);
    psample_t p;
    parse_sample("1 a:1|c", &p);
    msg_sample_t s = p.s;
    s.ntags = MSG_MAX_TAGS + 1;
    sflush_sample(f, &s);
    s = p.s;
    s.name = SPAN_LIT("");
    sflush_sample(f, &s);
    s.name = SPAN_NULL;
    sflush_sample(f, &s);
    s = p.s;
    s.type = (msg_stype_t)9;
    sflush_sample(f, &s);
    s = p.s;
    s.type = MSG_ST_S;
    s.member = SPAN_NULL;
    sflush_sample(f, &s);
    static char big[MSG_MAX_STR + 1];
    memset(big, 'x', sizeof big);
    s = p.s;
    s.name = span_make(big, sizeof big);
    sflush_sample(f, &s);
    assert_int_equal(sflush_counters(f)->invalid, 6);
    /* the largest accepted: 32 tags, names of MSG_MAX_STR, in any order */
    s = p.s;
    s.name = span_make(big, MSG_MAX_STR);
    char keys[MSG_MAX_TAGS][8];
    s.ntags = MSG_MAX_TAGS;
    for (size_t i = 0; i < MSG_MAX_TAGS; i++) {
        snprintf(keys[i], sizeof keys[i], "k%02zu", (i * 7) % MSG_MAX_TAGS);
        s.tags[i] = (msg_tag_t){ span_cstr(keys[i]), span_make(big, MSG_MAX_STR) };
    }
    sflush_sample(f, &s);
    sflush_sample(f, &s);
    msg_sample_t r = s;
    for (size_t i = 0; i < MSG_MAX_TAGS; i++)
        r.tags[i] = s.tags[(i + 5) % MSG_MAX_TAGS];
    sflush_sample(f, &r);
    assert_int_equal(sflush_counters(f)->series_live, 1);
    sflush_advance(f, SEC(10));
    assert_int_equal(rc.n, 1);
    assert_true(rc.rec[0].value == 3);
    sflush_destroy(&f);
    rec_clear(&rc);
}

/* ---- quantiles ------------------------------------------------------------ */

static int dcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double urand(void)
{
    return (double)(rng() >> 11) / 9007199254740992.0;
}

static void check_quantiles(const char *what, double *vals, size_t n, msg_stype_t type)
{
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    sflush_t *f = sflush_new(&o);
    msg_sample_t s = { .name = SPAN_LIT("lat"), .type = type, .rate = 1, .ts = SEC(3) };
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        s.value = vals[i];
        sum += vals[i];
        sflush_sample(f, &s);
    }
    sflush_advance(f, SEC(10));
    assert_int_equal(rc.n, 1);
    const msg_flush_t *r = &rc.rec[0];
    qsort(vals, n, sizeof *vals, dcmp);
    assert_true(r->count == (double)n);
    assert_true(fabs(r->sum - sum) <= 1e-9 * fabs(sum) + 1e-9);
    assert_true(r->min == vals[0]);
    assert_true(r->max == vals[n - 1]);
    for (int i = 0; i < MSG_FLUSH_NQ; i++) {
        double exact = vals[(size_t)(msg_flush_q[i] * (double)(n - 1))];
        if (fabs(r->q[i] - exact) > 0.01 * fabs(exact) + 1e-12)
            fail_msg("%s: %s = %.9g, exact %.9g", what, msg_flush_qname[i], r->q[i], exact);
    }
    sflush_destroy(&f);
    rec_clear(&rc);
}

static void test_quantiles(void **state)
{
    (void)state;
    enum { N = 20000 };
    double *v = malloc(N * sizeof *v);
    assert_non_null(v);
    /* log-normal latencies in ms */
    for (size_t i = 0; i < N; i++)
        v[i] = exp(3 + 1.5 * sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()));
    check_quantiles("log-normal timer", v, N, MSG_ST_MS);
    /* 1..100 */
    for (size_t i = 0; i < 100; i++)
        v[i] = (double)(100 - i);
    check_quantiles("1..100 histogram", v, 100, MSG_ST_H);
    /* mixed signs, zeros among them */
    for (size_t i = 0; i < N; i++)
        v[i] = i % 10 == 0 ? 0 : (urand() - 0.3) * 1000;
    check_quantiles("mixed signs distribution", v, N, MSG_ST_D);
    /* all negative */
    for (size_t i = 0; i < 1000; i++)
        v[i] = -1 - (double)(i * i);
    check_quantiles("all negative", v, 1000, MSG_ST_H);
    /* one value, two values */
    v[0] = 42;
    check_quantiles("one value", v, 1, MSG_ST_MS);
    v[0] = -3;
    v[1] = 5;
    check_quantiles("two values", v, 2, MSG_ST_D);
    free(v);
}

/* ---- save / load ------------------------------------------------------------ */

/* A deterministic mixed stream: every type, tags in both orders, rates,
 * deltas, set duplicates, late samples, several watermarks per interval. */
typedef struct {
    bool advance;
    int64_t wm;
    psample_t p;
} step_t;

static size_t make_stream(step_t *st, size_t cap)
{
    static const char *const names[] = { "req", "lat", "g", "users", "size", "dist" };
    static const char *const types[] = { "c", "ms", "g", "s", "h", "d" };
    size_t n = 0;
    rng_state = 12345;
    double now = 0;
    while (n + 1 < cap) {
        now += 0.37;
        if (rng() % 7 == 0) {
            st[n].advance = true;
            st[n].wm = SEC(now - 1.5); /* watermark a little behind */
            n++;
            continue;
        }
        int t = (int)(rng() % 6);
        double ts = now - (rng() % 13 == 0 ? 12 + (double)(rng() % 20) : urand()); /* some late */
        if (ts < 0)
            ts = 0;
        char line[160], val[48];
        if (t == 3)
            snprintf(val, sizeof val, "u%llu", (unsigned long long)(rng() % 9));
        else if (t == 2)
            snprintf(val, sizeof val, "%s%g", rng() % 2 ? "+" : "", (double)(rng() % 100) / 4);
        else
            snprintf(val, sizeof val, "%g", (double)(rng() % 1000) / 8 - (t == 4 ? 40 : 0));
        const char *tags = rng() % 2 ? "|#env:prod,host:a" : "|#host:a,env:prod";
        if (rng() % 3 == 0)
            tags = rng() % 2 ? "|#env:dev" : "";
        snprintf(line, sizeof line, "%.9f %s:%s|%s%s%s", ts, names[t], val, types[t],
                 (t == 0 || t == 1) && rng() % 2 ? "|@0.5" : "", tags);
        st[n].advance = false;
        parse_sample(line, &st[n].p);
        n++;
    }
    st[n].advance = true;
    st[n].wm = SEC(now + 100);
    return n + 1;
}

static sflush_opts_t stream_opts(rec_t *rc)
{
    sflush_opts_t o = opts_default(rc);
    o.close_delay_ns = SEC(1);
    o.lateness_ns = SEC(25);
    o.idle_intervals = 2;
    o.max_set_members = 5;
    return o;
}

static void run_steps(sflush_t *f, const step_t *st, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        if (st[i].advance)
            sflush_advance(f, st[i].wm);
        else
            sflush_sample(f, &st[i].p.s);
    }
}

/* Saves f into b (reset first). */
static void save_to(const sflush_t *f, mbuf_t *b)
{
    mbuf_reset(b);
    msgpack_packer pk;
    mbuf_packer(b, &pk);
    assert_int_equal(sflush_save(f, &pk), 0);
    assert_int_equal(mpr_validate(b->data, b->len, 16), 0);
}

/* A new sflush loaded from b; fails the test if the load fails. */
static sflush_t *load_from(const sflush_opts_t *o, const mbuf_t *b)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, b->data, b->len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, b->len);
    sflush_t *f = sflush_new(o);
    char err[256];
    if (sflush_load(f, &up.data, err, sizeof err) != 0)
        fail_msg("load: %s", err);
    msgpack_unpacked_destroy(&up);
    return f;
}

static void test_save_load_equivalence(void **state)
{
    (void)state;
    enum { CAP = 3000 };
    step_t *st = calloc(CAP, sizeof *st);
    assert_non_null(st);
    size_t n = make_stream(st, CAP);

    /* the uninterrupted run */
    rec_t whole = { 0 };
    sflush_opts_t o = stream_opts(&whole);
    sflush_t *f = sflush_new(&o);
    run_steps(f, st, 0, n);
    const sflush_counters_t *c = sflush_counters(f);
    assert_true(c->late_dropped > 0 && c->amended_emitted > 0 && c->set_capped > 0);
    assert_true(c->series_forgotten > 0 && c->late_gauge > 0);
    assert_int_equal(c->series_live, 0);
    print_message("stream: %zu steps, %llu records (%llu re-sent), %llu late dropped\n", n,
                  (unsigned long long)c->records_emitted, (unsigned long long)c->amended_emitted,
                  (unsigned long long)c->late_dropped);
    sflush_destroy(&f);

    /* the same run again gives the same bytes */
    rec_t again = { 0 };
    o = stream_opts(&again);
    f = sflush_new(&o);
    run_steps(f, st, 0, n);
    assert_int_equal(again.bytes.len, whole.bytes.len);
    assert_memory_equal(again.bytes.data, whole.bytes.data, whole.bytes.len);
    sflush_destroy(&f);
    rec_clear(&again);

    /* cut anywhere: save, load into a new instance, go on */
    mbuf_t snap = { 0 }, snap2 = { 0 };
    for (size_t cut = 0; cut <= n; cut += cut < 40 ? 1 : 37) {
        rec_t part = { 0 };
        o = stream_opts(&part);
        f = sflush_new(&o);
        run_steps(f, st, 0, cut);
        save_to(f, &snap);
        size_t mem = sflush_memory(f);
        sflush_destroy(&f);
        f = load_from(&o, &snap);
        /* a loaded state saves to the same bytes */
        save_to(f, &snap2);
        assert_int_equal(snap2.len, snap.len);
        assert_memory_equal(snap2.data, snap.data, snap.len);
        assert_true(sflush_memory(f) > 0 && (mem > 0));
        run_steps(f, st, cut, n);
        if (part.bytes.len != whole.bytes.len ||
            memcmp(part.bytes.data, whole.bytes.data, whole.bytes.len) != 0)
            fail_msg("cut at step %zu: output differs from the uninterrupted run", cut);
        sflush_destroy(&f);
        rec_clear(&part);
    }
    /* loading over a used instance replaces its state */
    rec_t part = { 0 };
    o = stream_opts(&part);
    f = sflush_new(&o);
    run_steps(f, st, 0, n / 2);
    save_to(f, &snap);
    run_steps(f, st, n / 2, n / 2 + 50);
    {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        assert_int_equal(msgpack_unpack_next(&up, snap.data, snap.len, &off), MSGPACK_UNPACK_SUCCESS);
        char err[256];
        assert_int_equal(sflush_load(f, &up.data, err, sizeof err), 0);
        msgpack_unpacked_destroy(&up);
    }
    rec_clear(&part);
    run_steps(f, st, n / 2, n);
    sflush_destroy(&f);
    rec_clear(&part);
    mbuf_free(&snap);
    mbuf_free(&snap2);
    rec_clear(&whole);
    free(st);
}

/* ---- damaged snapshots ------------------------------------------------------ */

typedef void (*mutate_fn)(msgpack_object *o, int how);

/* Visits every object of the tree; returns how many there are. */
static size_t walk(msgpack_object *o, size_t *i, size_t target, int how, bool *done)
{
    size_t n = 1;
    if (*i == target && !*done) {
        *done = true;
        switch (o->type) {
        case MSGPACK_OBJECT_ARRAY:
            if (how == 0 && o->via.array.size) {
                o->via.array.size--; /* truncated */
                return n;
            }
            if (how == 1 && o->via.array.size > 1) {
                msgpack_object t = o->via.array.ptr[0]; /* reordered */
                o->via.array.ptr[0] = o->via.array.ptr[1];
                o->via.array.ptr[1] = t;
                return n;
            }
            break;
        case MSGPACK_OBJECT_MAP:
            if (how == 0 && o->via.map.size) {
                o->via.map.size--;
                return n;
            }
            break;
        case MSGPACK_OBJECT_BIN:
            if (how == 0 && o->via.bin.size) {
                o->via.bin.size--;
                return n;
            }
            break;
        default:
            break;
        }
        /* wrong types and values */
        static const msgpack_object subst[] = {
            { .type = MSGPACK_OBJECT_NIL },
            { .type = MSGPACK_OBJECT_STR, .via.str = { 1, "x" } },
            { .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = UINT64_MAX },
            { .type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = -2 },
            { .type = MSGPACK_OBJECT_FLOAT64, .via.f64 = NAN },
            { .type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = true },
            { .type = MSGPACK_OBJECT_ARRAY, .via.array = { 0, NULL } },
            { .type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 1 },
            { .type = MSGPACK_OBJECT_FLOAT64, .via.f64 = -1e300 },
        };
        if (how >= 2 && (size_t)(how - 2) < ARRAY_LEN(subst))
            *o = subst[how - 2];
        return n;
    }
    (*i)++;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t j = 0; j < o->via.array.size; j++)
            n += walk(&o->via.array.ptr[j], i, target, how, done);
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t j = 0; j < o->via.map.size; j++) {
            n += walk(&o->via.map.ptr[j].key, i, target, how, done);
            n += walk(&o->via.map.ptr[j].val, i, target, how, done);
        }
    }
    return n;
}

static void test_load_damaged(void **state)
{
    (void)state;
    /* a small state with every kind of data: open and kept intervals, a
     * dirty cell, every type, negative values, set members */
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    o.lateness_ns = SEC(30);
    o.close_delay_ns = SEC(1);
    static const char *const ops[] = {
        "1 req:2|c|@0.5|#a:1,b:2", "2 lat:3|ms", "3 lat:-1|h", "4 g:5|g", "5 u:x|s", "5 u:y|s",
        "6 d:2|d", "> 11", "7 req:1|c|#b:2,a:1", "8 lat:4|ms", "12 g:+1|g", "13 u:z|s",
        "14 h:-2|h", "14 h:6|h", "14 big:1e308|c|@0.1",
    };
    sflush_t *f = sflush_new(&o);
    for (size_t i = 0; i < ARRAY_LEN(ops); i++)
        run_op(f, ops[i], "setup");
    mbuf_t snap = { 0 };
    save_to(f, &snap);
    sflush_destroy(&f);

    /* specific damage, each with its reason */
    msgpack_object arr = { .type = MSGPACK_OBJECT_ARRAY };
    f = sflush_new(&o);
    char err[256];
    assert_int_equal(sflush_load(f, &arr, err, sizeof err), -1);
    assert_non_null(strstr(err, "snapshot: not a map"));
    /* another interval length */
    sflush_opts_t o2 = o;
    o2.interval_ns = SEC(60);
    sflush_t *g = sflush_new(&o2);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&up, snap.data, snap.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(sflush_load(g, &up.data, err, sizeof err), -1);
    assert_non_null(strstr(err, "interval"));
    sflush_destroy(&g);
    /* a tiny error buffer is still terminated */
    assert_int_equal(sflush_load(f, &arr, err, 4), -1);
    assert_int_equal(strlen(err), 3);
    assert_int_equal(sflush_load(f, &arr, NULL, 0), -1);

    /* every object of the tree, damaged every way: load fails with a reason
     * or succeeds into a state that saves, reloads and emits valid records */
    size_t count = 0;
    {
        size_t i = 0;
        bool done = true;
        count = walk(&up.data, &i, SIZE_MAX, 0, &done);
    }
    msgpack_unpacked_destroy(&up);
    size_t refused = 0, accepted = 0;
    for (size_t target = 0; target < count; target++) {
        for (int how = 0; how < 11; how++) {
            msgpack_unpacked u2;
            msgpack_unpacked_init(&u2);
            off = 0;
            assert_int_equal(msgpack_unpack_next(&u2, snap.data, snap.len, &off),
                             MSGPACK_UNPACK_SUCCESS);
            size_t i = 0;
            bool done = false;
            walk(&u2.data, &i, target, how, &done);
            memset(err, 'Z', sizeof err);
            int rc2 = sflush_load(f, &u2.data, err, sizeof err);
            msgpack_unpacked_destroy(&u2);
            if (rc2 < 0) {
                refused++;
                assert_non_null(memchr(err, '\0', sizeof err));
                assert_non_null(strstr(err, "snapshot: "));
                assert_int_equal(sflush_counters(f)->series_live, 0);
                mbuf_t s2 = { 0 };
                save_to(f, &s2); /* empty, as new */
                mbuf_free(&s2);
                continue;
            }
            accepted++;
            mbuf_t s2 = { 0 };
            save_to(f, &s2);
            sflush_t *h = load_from(&o, &s2);
            sflush_advance(h, SEC(12));
            sflush_advance(h, SEC(1000)); /* every record checked by on_emit */
            sflush_destroy(&h);
            mbuf_free(&s2);
        }
    }
    print_message("damaged snapshots: %zu objects, %zu refused, %zu accepted\n", count, refused,
                  accepted);
    assert_true(refused > count);
    assert_true(accepted > 0); /* e.g. an unknown key or an equivalent value */
    sflush_destroy(&f);
    mbuf_free(&snap);
    rec_clear(&rc);
}

/* ---- memory ----------------------------------------------------------------- */

static void test_memory(void **state)
{
    (void)state;
    rec_t rc = { 0 };
    sflush_opts_t o = opts_default(&rc);
    o.idle_intervals = 1;
    sflush_t *f = sflush_new(&o);
    size_t m0 = sflush_memory(f);
    char name[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "%d api.requests:1|c|#env:prod,host:h%d", 1 + i % 5, i);
        psample_t p;
        parse_sample(name, &p);
        sflush_sample(f, &p.s);
    }
    size_t m1 = sflush_memory(f);
    assert_true(m1 > m0 + 2000 * 64);
    assert_true(m1 < m0 + 2000 * 1000);
    print_message("memory: %zu bytes for 2000 counter series (%zu a series)\n", m1 - m0,
                  (m1 - m0) / 2000);
    sflush_advance(f, SEC(30));
    assert_int_equal(sflush_counters(f)->series_live, 0);
    assert_true(sflush_memory(f) < m1);
    sflush_destroy(&f);
    rec_clear(&rc);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flows),
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_future_limit),
        cmocka_unit_test(test_sample_shapes),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_save_load_equivalence),
        cmocka_unit_test(test_load_damaged),
        cmocka_unit_test(test_memory),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("sflush", tests, NULL, NULL);
}

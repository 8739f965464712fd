/* rsub_test: tests of common/rsub against real publishers (bus_pub with a
 * spool and a replay endpoint) over inproc:// in one ZeroMQ context: start
 * from the oldest or live, seeded positions, gaps made on purpose (a burst
 * past tiny high-water marks) healed by replay, GONE counted as lost,
 * duplicates, topic prefixes, apply refusing a message, and caught-up.
 * Every test drives one deterministic loop (poll, bus_pub_work, rsub_work)
 * with a deadline. Run one test alone with `rsub_test NAME`. */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>
#include <zmq.h>

#include "bus.h"
#include "rsub.h"
#include "spool.h"
#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define WAIT_MS 10000
#define MAX_PUBS 2
#define MAX_APPLIED 8192

static void *g_ctx;
static char g_root[64];
static int g_n;

/* Closed by the teardown, also after a failure: zmq_ctx_term would wait
 * forever on a socket left open. */
static bus_pub_t *g_pubs[4];
static rsub_t *g_rsubs[2];

static const char *const g_topics[] = { "ev.00", "ev.01", "metric", "stats" };
#define TOPIC_OF(seq) g_topics[(seq) % 4]

/* ---- fixtures ------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_up(void **state)
{
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/rsub_test.XXXXXX");
    if (!mkdtemp(g_root))
        return -1;
    g_ctx = zmq_ctx_new();
    return g_ctx ? 0 : -1;
}

static int close_all(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(g_rsubs); i++)
        rsub_destroy(&g_rsubs[i]);
    for (size_t i = 0; i < ARRAY_LEN(g_pubs); i++)
        bus_pub_destroy(&g_pubs[i]);
    return 0;
}

static int group_down(void **state)
{
    close_all(state);
    zmq_ctx_term(g_ctx);
    nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

static int64_t now_ms(void) { return tmtime_mono_ns() / TMTIME_NS_PER_MS; }

typedef struct {
    int64_t segment_bytes, max_bytes; /* 0: 1 MiB segments, no cap */
    int sndhwm;                       /* 0: ZeroMQ's default */
} pub_opts_t;

static bus_pub_t *pub_new(const char *src, pub_opts_t po)
{
    char dir[128], ep[96], rep[96], err[256];
    snprintf(dir, sizeof dir, "%s/%s-%d", g_root, src, ++g_n);
    snprintf(ep, sizeof ep, "inproc://rsub-%d", g_n);
    snprintf(rep, sizeof rep, "inproc://rsub-%d-replay", g_n);
    spool_opts_t so = { .dir = dir,
                        .segment_bytes = po.segment_bytes ? po.segment_bytes : 1 << 20,
                        .segment_age_ms = 3600 * 1000,
                        .max_bytes = po.max_bytes,
                        .fsync_ms = -1 };
    bus_pub_opts_t o = { .sndhwm = po.sndhwm, .spool = &so, .replay_endpoint = rep };
    bus_pub_t *p = bus_pub_new(g_ctx, ep, src, &o, err, sizeof err);
    if (!p)
        fail_msg("bus_pub_new: %s", err);
    int zero = 0;
    zmq_setsockopt(bus_pub_socket(p), ZMQ_LINGER, &zero, sizeof zero);
    for (size_t i = 0; i < ARRAY_LEN(g_pubs); i++)
        if (!g_pubs[i])
            return g_pubs[i] = p;
    fail_msg("too many publishers");
    return NULL;
}

static void publish(bus_pub_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t seq = bus_pub_last_seq(p) + 1;
        assert_int_equal(bus_pub_send(p, TOPIC_OF(seq), "test", "\xc0", 1, NULL, 0), 0);
    }
}

/* Runs the spool's retention now; returns the oldest seq it keeps. */
static uint64_t retain(bus_pub_t *p)
{
    bus_pub_work(p, now_ms());
    bus_pub_counters_t c;
    bus_pub_counters(p, &c);
    return c.spool_oldest;
}

/* ---- what apply sees ---------------------------------------------------------- */

typedef struct {
    const char *srcs[MAX_PUBS];
    int slow_us; /* apply takes this long */
    uint64_t seqs[MAX_PUBS][MAX_APPLIED];
    size_t n[MAX_PUBS];
    size_t total;
    uint64_t refuse_seq; /* apply says stop on this seq ... */
    int refuse_times;    /* ... this many times */
    int refused;
} sink_t;

static int apply(void *arg, const bus_msg_t *m)
{
    sink_t *k = arg;
    size_t i = 0;
    while (i < MAX_PUBS && k->srcs[i] && !span_eq_cstr(m->src, k->srcs[i]))
        i++;
    if (i == MAX_PUBS || !k->srcs[i])
        fail_msg("a message of an unknown src");
    if (!span_eq_cstr(m->topic, TOPIC_OF(m->seq)))
        fail_msg("seq %llu on the wrong topic", (unsigned long long)m->seq);
    if (k->slow_us) {
        struct timespec ts = { 0, (long)k->slow_us * 1000 };
        nanosleep(&ts, NULL);
    }
    if (m->seq == k->refuse_seq && k->refuse_times > 0) {
        k->refuse_times--;
        k->refused++;
        return -1;
    }
    assert_true(k->n[i] < MAX_APPLIED);
    k->seqs[i][k->n[i]++] = m->seq;
    k->total++;
    return 0;
}

/* One sink at a time, static so that a failed test leaks nothing. */
static sink_t g_sink;

static sink_t *sink_new(void)
{
    memset(&g_sink, 0, sizeof g_sink);
    return &g_sink;
}

/* Checks that src i got exactly first..last, once each and in order, with
 * nothing else. */
static void expect_applied(const sink_t *k, size_t i, uint64_t first, uint64_t last)
{
    size_t want = last >= first ? (size_t)(last - first + 1) : 0;
    for (size_t j = 0; j < k->n[i] && j < want; j++)
        if (k->seqs[i][j] != first + j)
            fail_msg("%s: message %zu is seq %llu, want %llu", k->srcs[i], j,
                     (unsigned long long)k->seqs[i][j], (unsigned long long)(first + j));
    if (k->n[i] != want)
        fail_msg("%s: %zu messages applied, want %zu (%llu..%llu)", k->srcs[i], k->n[i], want,
                 (unsigned long long)first, (unsigned long long)last);
}

/* Checks that src i got increasing seqs ending with last; returns how many
 * seqs of first..last it did not get. */
static uint64_t missing(const sink_t *k, size_t i, uint64_t first, uint64_t last)
{
    for (size_t j = 1; j < k->n[i]; j++)
        if (k->seqs[i][j] <= k->seqs[i][j - 1])
            fail_msg("%s: seq %llu after %llu", k->srcs[i], (unsigned long long)k->seqs[i][j],
                     (unsigned long long)k->seqs[i][j - 1]);
    assert_true(k->n[i] > 0);
    assert_int_equal(k->seqs[i][k->n[i] - 1], last);
    assert_true(k->seqs[i][0] >= first);
    return last - first + 1 - k->n[i];
}

/* ---- the subscriber and the loop ------------------------------------------------ */

typedef struct {
    rsub_start_t start;
    const char *const *prefixes;
    size_t nprefixes;
    int rcvhwm;
    int64_t retry_ms;
} sub_opts_t;

static void endpoint(void *sock, char *buf, size_t cap)
{
    assert_int_equal(zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &cap), 0);
}

/* An rsub on pubs, not started. */
static rsub_t *rsub_on(bus_pub_t *const *pubs, size_t n, sub_opts_t so, sink_t *k)
{
    char eps[MAX_PUBS][128], reps[MAX_PUBS][128];
    const char *pe[MAX_PUBS], *re[MAX_PUBS];
    for (size_t i = 0; i < n; i++) {
        endpoint(bus_pub_socket(pubs[i]), eps[i], sizeof eps[i]);
        endpoint(bus_pub_replay_socket(pubs[i]), reps[i], sizeof reps[i]);
        pe[i] = eps[i];
        re[i] = reps[i];
        k->srcs[i] = bus_pub_src(pubs[i]);
    }
    rsub_opts_t o = { .pubs = pe,
                      .replays = re,
                      .n = n,
                      .prefixes = so.prefixes,
                      .nprefixes = so.nprefixes,
                      .start = so.start,
                      .rcvhwm = so.rcvhwm,
                      .retry_ms = so.retry_ms };
    char err[256];
    rsub_t *r = rsub_new(g_ctx, &o, apply, k, err, sizeof err);
    if (!r)
        fail_msg("rsub_new: %s", err);
    for (size_t i = 0; i < ARRAY_LEN(g_rsubs); i++)
        if (!g_rsubs[i])
            return g_rsubs[i] = r;
    fail_msg("too many subscribers");
    return NULL;
}

/* Starts r and waits until every publisher sees its subscription, so that
 * what is published from now on reaches it. */
static void start(rsub_t *r, bus_pub_t *const *pubs, size_t n)
{
    char err[256];
    if (rsub_start(r, err, sizeof err) != 0)
        fail_msg("rsub_start: %s", err);
    for (size_t i = 0; i < n; i++) {
        int64_t end = now_ms() + WAIT_MS;
        for (;;) {
            zmq_pollitem_t it = { bus_pub_socket(pubs[i]), 0, ZMQ_POLLIN, 0 };
            zmq_poll(&it, 1, 10);
            if (bus_pub_poll_subscribed(pubs[i], "any"))
                break;
            if (now_ms() >= end)
                fail_msg("no subscription at publisher %zu", i);
        }
    }
}

typedef struct {
    rsub_t *r;
    bus_pub_t *const *pubs; /* the publishers driven (others stay silent) */
    size_t npubs;
    int stops; /* times rsub_work returned -1 */
} loop_t;

/* One turn: wait a little for something to read, let the publishers work,
 * then the subscriber. */
static void turn(loop_t *l)
{
    zmq_pollitem_t it[8];
    int n = rsub_poll_items(l->r, it, 8 - MAX_PUBS);
    for (size_t i = 0; i < l->npubs; i++)
        it[n++] = (zmq_pollitem_t){ bus_pub_replay_socket(l->pubs[i]), 0, ZMQ_POLLIN, 0 };
    zmq_poll(it, n, 5);
    for (size_t i = 0; i < l->npubs; i++)
        bus_pub_work(l->pubs[i], now_ms());
    if (rsub_work(l->r, now_ms()) < 0)
        l->stops++;
}

/* Turns until done says so, failing at the deadline. */
static void drive(loop_t *l, bool (*done)(loop_t *, void *), void *arg)
{
    int64_t end = now_ms() + WAIT_MS;
    while (!done(l, arg)) {
        if (now_ms() >= end) {
            const rsub_counters_t *c = rsub_counters(l->r);
            fail_msg("not done in %d ms: applied %llu replays %llu replayed %llu gaps %llu "
                     "busy %d caught up %d",
                     WAIT_MS, (unsigned long long)c->applied, (unsigned long long)c->replays,
                     (unsigned long long)c->replayed, (unsigned long long)c->gaps,
                     rsub_busy(l->r), rsub_caught_up(l->r));
        }
        turn(l);
    }
}

/* Done: caught up, with at least *arg messages applied. */
static bool applied_caught_up(loop_t *l, void *arg)
{
    return rsub_counters(l->r)->applied >= *(uint64_t *)arg && rsub_caught_up(l->r);
}

static void drive_to(loop_t *l, uint64_t applied)
{
    drive(l, applied_caught_up, &applied);
}

typedef struct {
    const char *src;
    uint64_t seq;
    int found;
} pos_t;

static void find_pos(const char *src, uint64_t seq, void *arg)
{
    pos_t *p = arg;
    if (!strcmp(src, p->src)) {
        p->seq = seq;
        p->found++;
    }
}

/* The position r reports for src; UINT64_MAX when it has none. */
static uint64_t position(const rsub_t *r, const char *src)
{
    pos_t p = { src, 0, 0 };
    rsub_each_position(r, find_pos, &p);
    assert_true(p.found <= 1);
    return p.found ? p.seq : UINT64_MAX;
}

static void expect_clean(const rsub_counters_t *c)
{
    if (c->gaps || c->gaps_lost || c->lost || c->malformed || c->overflow)
        fail_msg("gaps %llu lost %llu/%llu malformed %llu overflow %llu",
                 (unsigned long long)c->gaps, (unsigned long long)c->gaps_lost,
                 (unsigned long long)c->lost, (unsigned long long)c->malformed,
                 (unsigned long long)c->overflow);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_from_oldest(void **state)
{
    (void)state;
    /* everything published before the start, exactly once and in order per
     * src; then the live stream goes on from there */
    static const struct {
        uint64_t before[MAX_PUBS];
        size_t npubs;
        uint64_t live;
    } cases[] = {
        { { 100 }, 1, 20 },
        { { 0 }, 1, 20 },
        { { 1 }, 1, 1 },
        { { 3000 }, 1, 10 }, /* more than one replay turn, a few segments */
        { { 300, 0 }, 2, 30 },
        { { 250, 400 }, 2, 30 },
    };
    static const char *const srcs[MAX_PUBS] = { "collectd@a", "collectd@b" };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        bus_pub_t *pubs[MAX_PUBS];
        for (size_t p = 0; p < cases[i].npubs; p++) {
            pubs[p] = pub_new(srcs[p], (pub_opts_t){ 64 * 1024, 0, 0 });
            publish(pubs[p], cases[i].before[p]);
        }
        sink_t *k = sink_new();
        rsub_t *r = rsub_on(pubs, cases[i].npubs, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 0 }, k);
        assert_false(rsub_caught_up(r));
        start(r, pubs, cases[i].npubs);
        loop_t l = { r, pubs, cases[i].npubs, 0 };
        uint64_t total = 0;
        for (size_t p = 0; p < cases[i].npubs; p++)
            total += cases[i].before[p];
        drive_to(&l, total);
        for (size_t p = 0; p < cases[i].npubs; p++)
            expect_applied(k, p, 1, cases[i].before[p]);
        for (size_t p = 0; p < cases[i].npubs; p++)
            publish(pubs[p], cases[i].live);
        drive_to(&l, total + cases[i].npubs * cases[i].live);
        for (size_t p = 0; p < cases[i].npubs; p++) {
            expect_applied(k, p, 1, cases[i].before[p] + cases[i].live);
            assert_int_equal(position(r, srcs[p]), cases[i].before[p] + cases[i].live);
        }
        const rsub_counters_t *c = rsub_counters(r);
        expect_clean(c);
        assert_int_equal(c->applied, k->total);
        assert_int_equal(l.stops, 0);
        close_all(NULL);
    }
}

static void test_seeded_position(void **state)
{
    (void)state;
    static const struct {
        uint64_t seed;
        rsub_start_t start; /* a seeded src starts from its seed either way */
    } cases[] = {
        { 0, RSUB_FROM_OLDEST }, { 30, RSUB_FROM_OLDEST }, { 49, RSUB_FROM_OLDEST },
        { 50, RSUB_FROM_OLDEST }, { 30, RSUB_FROM_LIVE },  { 0, RSUB_FROM_LIVE },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        bus_pub_t *p = pub_new("agg@seed", (pub_opts_t){ 0 });
        publish(p, 50);
        sink_t *k = sink_new();
        rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ cases[i].start, NULL, 0, 0, 0 }, k);
        rsub_set_position(r, "agg@seed", cases[i].seed);
        assert_int_equal(position(r, "agg@seed"), cases[i].seed);
        start(r, &p, 1);
        loop_t l = { r, &p, 1, 0 };
        drive_to(&l, 50 - cases[i].seed);
        expect_applied(k, 0, cases[i].seed + 1, 50);
        assert_int_equal(position(r, "agg@seed"), 50);
        publish(p, 10);
        drive_to(&l, 60 - cases[i].seed);
        expect_applied(k, 0, cases[i].seed + 1, 60);
        assert_int_equal(position(r, "agg@seed"), 60);
        expect_clean(rsub_counters(r));
        close_all(NULL);
    }
}

/* Done once the subscriber asked for a replay beyond *arg: it saw the gap
 * that the tail, published each turn until then, made visible. */
static bool gap_seen(loop_t *l, void *arg)
{
    if (rsub_counters(l->r)->replays > *(uint64_t *)arg)
        return true;
    publish(l->pubs[0], 1);
    return false;
}

typedef struct {
    const sink_t *k;
    uint64_t last;
} last_t;

/* Done: caught up, with arg->last the last seq applied. */
static bool last_applied(loop_t *l, void *arg)
{
    const last_t *t = arg;
    return t->k->n[0] && t->k->seqs[0][t->k->n[0] - 1] == t->last && rsub_caught_up(l->r);
}

static void test_gap_healed(void **state)
{
    (void)state;
    /* a burst far past the high-water marks (4 at each end) while the
     * subscriber does not read: most of it is lost in flight, and replay
     * brings it back. The publisher had published before the subscriber
     * started, or not. */
    static const uint64_t before[] = { 5, 0 };
    for (size_t i = 0; i < ARRAY_LEN(before); i++) {
        bus_pub_t *p = pub_new("collectd@gap", (pub_opts_t){ 8192, 0, 4 });
        publish(p, before[i]);
        sink_t *k = sink_new();
        rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 4, 0 }, k);
        start(r, &p, 1);
        loop_t l = { r, &p, 1, 0 };
        drive_to(&l, before[i]);
        publish(p, 5); /* live, read as it comes */
        drive_to(&l, before[i] + 5);
        assert_int_equal(rsub_counters(r)->gaps, 0);
        publish(p, 500); /* nobody reads meanwhile */
        drive(&l, gap_seen, &(uint64_t){ rsub_counters(r)->replays });
        uint64_t last = bus_pub_last_seq(p);
        drive_to(&l, last);
        expect_applied(k, 0, 1, last);
        const rsub_counters_t *c = rsub_counters(r);
        if (c->gaps < 1 || c->gaps_healed != c->gaps || c->gaps_lost || c->lost)
            fail_msg("before %llu: gaps %llu healed %llu lost %llu/%llu",
                     (unsigned long long)before[i], (unsigned long long)c->gaps,
                     (unsigned long long)c->gaps_healed, (unsigned long long)c->gaps_lost,
                     (unsigned long long)c->lost);
        assert_true(c->replayed > 0);
        assert_int_equal(c->applied, last);
        close_all(NULL);
    }
}

static void test_gone_counts_lost(void **state)
{
    (void)state;
    /* the spool keeps about the last 40 of 200: a position before that
     * loses what lies between, counted, and goes on from the oldest */
    enum { NONE = -1, OLDEST_MINUS_1 = -2, OLDEST_PLUS_5 = -3 };
    static const struct {
        int seed; /* NONE: no position (from the oldest: nothing lost) */
        bool lost;
    } cases[] = {
        { NONE, false }, { 0, true }, { 10, true }, { OLDEST_MINUS_1, false },
        { OLDEST_PLUS_5, false },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        bus_pub_t *p = pub_new("agg@gone", (pub_opts_t){ 1024, 4096, 0 });
        publish(p, 200);
        uint64_t oldest = retain(p);
        assert_true(oldest > 12 && oldest < 200);
        uint64_t seed = cases[i].seed == OLDEST_MINUS_1  ? oldest - 1
                        : cases[i].seed == OLDEST_PLUS_5 ? oldest + 5
                                                         : (uint64_t)cases[i].seed;
        sink_t *k = sink_new();
        rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 0 }, k);
        if (cases[i].seed != NONE)
            rsub_set_position(r, "agg@gone", seed);
        start(r, &p, 1);
        loop_t l = { r, &p, 1, 0 };
        uint64_t first = cases[i].seed == NONE ? oldest : seed + 1 > oldest ? seed + 1 : oldest;
        drive_to(&l, 200 - first + 1);
        expect_applied(k, 0, first, 200);
        const rsub_counters_t *c = rsub_counters(r);
        uint64_t lost = cases[i].lost ? oldest - seed - 1 : 0;
        if (c->lost != lost || c->gaps_lost != (lost ? 1u : 0u))
            fail_msg("case %zu (seed %llu, oldest %llu): lost %llu in %llu, want %llu", i,
                     (unsigned long long)seed, (unsigned long long)oldest,
                     (unsigned long long)c->lost, (unsigned long long)c->gaps_lost,
                     (unsigned long long)lost);
        assert_int_equal(c->gaps, 0);
        publish(p, 10); /* and it goes on live */
        drive_to(&l, 210 - first + 1);
        expect_applied(k, 0, first, 210);
        close_all(NULL);
    }
}

static void test_lost_after_live(void **state)
{
    (void)state;
    /* the subscriber started on an empty publisher and has applied live
     * messages; then a burst is lost in flight and retention deletes it
     * before the gap is seen: the loss is counted, not hidden */
    bus_pub_t *p = pub_new("collectd@lost", (pub_opts_t){ 1024, 4096, 4 });
    sink_t *k = sink_new();
    rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 4, 0 }, k);
    start(r, &p, 1);
    loop_t l = { r, &p, 1, 0 };
    drive_to(&l, 0);
    publish(p, 5);
    drive_to(&l, 5);
    publish(p, 500);
    uint64_t oldest = retain(p);
    assert_true(oldest > 400);
    drive(&l, gap_seen, &(uint64_t){ rsub_counters(r)->replays });
    uint64_t last = bus_pub_last_seq(p);
    drive(&l, last_applied, &(last_t){ k, last });
    uint64_t gone = missing(k, 0, 1, last);
    const rsub_counters_t *c = rsub_counters(r);
    if (gone == 0 || c->lost != gone || c->gaps_lost != 1 || c->gaps != 1)
        fail_msg("missing %llu; lost %llu in %llu gaps lost, %llu gaps", (unsigned long long)gone,
                 (unsigned long long)c->lost, (unsigned long long)c->gaps_lost,
                 (unsigned long long)c->gaps);
    assert_int_equal(c->applied, k->total);
}

static void test_duplicates(void **state)
{
    (void)state;
    /* 11..15 reach the subscriber live before its replay from 1 answers
     * (the replay brings them too): each is applied once, and the live
     * copies count as duplicates */
    bus_pub_t *p = pub_new("agg@dup", (pub_opts_t){ 0 });
    publish(p, 10);
    sink_t *k = sink_new();
    rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 0 }, k);
    start(r, &p, 1);
    publish(p, 5); /* neither side has worked yet */
    loop_t l = { r, &p, 1, 0 };
    drive_to(&l, 15);
    expect_applied(k, 0, 1, 15);
    const rsub_counters_t *c = rsub_counters(r);
    assert_int_equal(c->duplicates, 5);
    assert_int_equal(c->replayed, 15);
    expect_clean(c);
    publish(p, 5);
    drive_to(&l, 20);
    expect_applied(k, 0, 1, 20);
    assert_int_equal(c->duplicates, 5);
}

static void test_prefixes(void **state)
{
    (void)state;
    /* apply sees only the wanted topics, by replay and live; the position
     * moves over the others all the same */
    static const struct {
        const char *prefixes[3];
        size_t n;
        const char *match[4]; /* NULL-terminated */
    } cases[] = {
        { { "ev." }, 1, { "ev.00", "ev.01" } },
        { { "metric", "stats" }, 2, { "metric", "stats" } },
        { { "ev.01" }, 1, { "ev.01" } },
        { { NULL }, 0, { "ev.00", "ev.01", "metric", "stats" } },
        { { "nomatch" }, 1, { NULL } },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        bus_pub_t *p = pub_new("agg@prefix", (pub_opts_t){ 0 });
        publish(p, 40);
        sink_t *k = sink_new();
        rsub_t *r = rsub_on(&p, 1,
                            (sub_opts_t){ RSUB_FROM_OLDEST, cases[i].prefixes, cases[i].n, 0, 0 },
                            k);
        start(r, &p, 1);
        loop_t l = { r, &p, 1, 0 };
        uint64_t want[80];
        size_t nwant = 0, live_unwanted = 0;
        for (uint64_t seq = 1; seq <= 80; seq++) {
            bool w = false;
            for (size_t m = 0; m < 4 && cases[i].match[m]; m++)
                w |= strcmp(TOPIC_OF(seq), cases[i].match[m]) == 0;
            if (w)
                want[nwant++] = seq;
            else if (seq > 40)
                live_unwanted++;
        }
        size_t before = 0;
        while (before < nwant && want[before] <= 40)
            before++;
        drive_to(&l, before);
        assert_int_equal(position(r, "agg@prefix"), 40);
        publish(p, 40);
        /* the position shows when the last message (wanted or not) is in */
        int64_t end = now_ms() + WAIT_MS;
        while (position(r, "agg@prefix") != 80 && now_ms() < end)
            turn(&l);
        drive_to(&l, nwant);
        assert_int_equal(position(r, "agg@prefix"), 80);
        assert_int_equal(k->n[0], nwant);
        for (size_t j = 0; j < nwant; j++)
            assert_int_equal(k->seqs[0][j], want[j]);
        const rsub_counters_t *c = rsub_counters(r);
        assert_int_equal(c->applied, nwant);
        assert_int_equal(c->skipped, live_unwanted);
        expect_clean(c);
        close_all(NULL);
    }
}

static bool replay_asked(loop_t *l, void *arg)
{
    (void)arg;
    return rsub_counters(l->r)->replays > 0;
}

static void test_apply_stops(void **state)
{
    (void)state;
    /* apply refuses a message: rsub_work returns -1, the message is not
     * applied, and the next turns bring it again, then the rest, in order */
    enum { REPLAY, LIVE, HELD };
    static const struct {
        const char *what;
        int path;
        uint64_t refuse; /* this seq of 1..10 */
        int times;
    } cases[] = {
        { "while replaying", REPLAY, 5, 1 },
        { "while replaying, three times", REPLAY, 5, 3 },
        { "the last one replayed", REPLAY, 10, 1 },
        { "live", LIVE, 5, 1 },
        { "the last one live", LIVE, 10, 1 },
        { "held while replaying", HELD, 5003, 1 },
        { "the last one held", HELD, 5005, 2 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        bus_pub_t *p = pub_new("agg@stop", (pub_opts_t){ 0 });
        uint64_t total = cases[i].path == HELD ? 5005 : 10;
        publish(p, cases[i].path == REPLAY ? 10 : cases[i].path == HELD ? 5000 : 0);
        sink_t *k = sink_new();
        k->refuse_seq = cases[i].refuse;
        k->refuse_times = cases[i].times;
        rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 20000, 0 }, k);
        start(r, &p, 1);
        loop_t l = { r, &p, 1, 0 };
        if (cases[i].path == LIVE) {
            drive_to(&l, 0);
            publish(p, 10);
        } else if (cases[i].path == HELD) {
            /* the whole replay and its END wait at the subscriber when
             * 5001..5005 come live; it reads at most 4096 replies a turn,
             * so it holds those five and applies them after the END */
            drive(&l, replay_asked, NULL);
            bus_pub_counters_t c;
            int64_t end = now_ms() + WAIT_MS;
            do {
                bus_pub_work(p, now_ms());
                bus_pub_counters(p, &c);
                assert_true(now_ms() < end);
            } while (c.replay.ends == 0);
            publish(p, 5);
        }
        /* up to the first refusal */
        int64_t end = now_ms() + WAIT_MS;
        while (!l.stops && now_ms() < end)
            turn(&l);
        if (l.stops != 1)
            fail_msg("%s: rsub_work never returned -1", cases[i].what);
        assert_int_equal(k->refused, 1);
        expect_applied(k, 0, 1, cases[i].refuse - 1);
        assert_int_equal(rsub_counters(r)->applied, cases[i].refuse - 1);
        assert_int_equal(position(r, "agg@stop"), cases[i].refuse - 1);
        /* the path it took: what had come by replay when apply refused */
        uint64_t replayed = rsub_counters(r)->replayed;
        if (cases[i].path == REPLAY ? replayed < cases[i].refuse
                                    : replayed != (cases[i].path == HELD ? 5000u : 0u))
            fail_msg("%s: %llu replayed at the refusal", cases[i].what,
                     (unsigned long long)replayed);
        /* the caller calls again */
        drive_to(&l, total);
        expect_applied(k, 0, 1, total);
        assert_int_equal(k->refused, cases[i].times);
        assert_int_equal(l.stops, cases[i].times);
        const rsub_counters_t *c = rsub_counters(r);
        assert_int_equal(c->applied, total);
        assert_int_equal(c->lost, 0);
        assert_int_equal(c->gaps_lost, 0);
        assert_int_equal(position(r, "agg@stop"), total);
        close_all(NULL);
    }
}

static void test_slow_replay_not_retried(void **state)
{
    (void)state;
    /* a replay that keeps sending is answered, however long it takes: it is
     * not asked again after retry_ms (which would send its messages twice) */
    bus_pub_t *p = pub_new("agg@slow", (pub_opts_t){ 0 });
    publish(p, 1500);
    sink_t *k = sink_new();
    k->slow_us = 200; /* 0.3 s in all, against a retry of 0.1 s */
    rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 100 }, k);
    start(r, &p, 1);
    loop_t l = { r, &p, 1, 0 };
    int64_t t0 = now_ms();
    drive_to(&l, 1500);
    assert_true(now_ms() - t0 >= 300);
    expect_applied(k, 0, 1, 1500);
    const rsub_counters_t *c = rsub_counters(r);
    if (c->replays != 1 || c->duplicates != 0)
        fail_msg("%llu replays, %llu duplicates", (unsigned long long)c->replays,
                 (unsigned long long)c->duplicates);
    expect_clean(c);
}

static void test_from_live(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("alerter@live", (pub_opts_t){ 0 });
    publish(p, 20);
    sink_t *k = sink_new();
    rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_LIVE, NULL, 0, 0, 0 }, k);
    start(r, &p, 1);
    loop_t l = { r, &p, 1, 0 };
    drive_to(&l, 0);
    /* the publisher answered; no position until the first live message */
    for (int i = 0; i < 20; i++)
        turn(&l);
    assert_int_equal(k->total, 0);
    assert_int_equal(position(r, "alerter@live"), UINT64_MAX);
    assert_int_equal(rsub_counters(r)->replays, 0);
    publish(p, 10);
    drive_to(&l, 10);
    expect_applied(k, 0, 21, 30);
    assert_int_equal(position(r, "alerter@live"), 30);
    expect_clean(rsub_counters(r));
}

static bool time_passed(loop_t *l, void *arg)
{
    (void)l;
    return now_ms() >= *(int64_t *)arg;
}

static void test_caught_up(void **state)
{
    (void)state;
    /* not before the publisher answered; not while replaying; then yes */
    bus_pub_t *p = pub_new("collectd@cu", (pub_opts_t){ 0 });
    publish(p, 2000);
    sink_t *k = sink_new();
    rsub_t *r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 0 }, k);
    assert_false(rsub_caught_up(r));
    start(r, &p, 1);
    assert_false(rsub_caught_up(r));
    loop_t l = { r, &p, 1, 0 };
    drive(&l, replay_asked, NULL);
    assert_false(rsub_caught_up(r));
    assert_true(rsub_busy(r));
    drive_to(&l, 2000);
    assert_true(rsub_caught_up(r));
    assert_false(rsub_busy(r));
    expect_applied(k, 0, 1, 2000);
    close_all(NULL);

    /* two publishers, one silent (never works): caught up once the other
     * is done and a retry period has passed */
    bus_pub_t *pubs[2] = { pub_new("collectd@talks", (pub_opts_t){ 0 }),
                           pub_new("collectd@silent", (pub_opts_t){ 0 }) };
    publish(pubs[0], 10);
    k = sink_new();
    r = rsub_on(pubs, 2, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 1000 }, k);
    start(r, pubs, 2);
    l = (loop_t){ r, pubs, 1, 0 };
    int64_t t0 = now_ms();
    turn(&l);
    while (k->total < 10) {
        assert_true(now_ms() - t0 < 900); /* ten messages take far less */
        turn(&l);
    }
    assert_false(rsub_caught_up(r)); /* the silent one may still answer */
    drive_to(&l, 10);
    assert_true(now_ms() - t0 >= 1000);
    expect_applied(k, 0, 1, 10);
    close_all(NULL);

    /* one publisher, silent: never caught up */
    p = pub_new("collectd@mute", (pub_opts_t){ 0 });
    k = sink_new();
    r = rsub_on(&p, 1, (sub_opts_t){ RSUB_FROM_OLDEST, NULL, 0, 0, 100 }, k);
    start(r, &p, 1);
    l = (loop_t){ r, &p, 0, 0 };
    int64_t until = now_ms() + 300;
    drive(&l, time_passed, &until);
    assert_false(rsub_caught_up(r));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_from_oldest, close_all),
        cmocka_unit_test_teardown(test_seeded_position, close_all),
        cmocka_unit_test_teardown(test_gap_healed, close_all),
        cmocka_unit_test_teardown(test_gone_counts_lost, close_all),
        cmocka_unit_test_teardown(test_lost_after_live, close_all),
        cmocka_unit_test_teardown(test_duplicates, close_all),
        cmocka_unit_test_teardown(test_prefixes, close_all),
        cmocka_unit_test_teardown(test_apply_stops, close_all),
        cmocka_unit_test_teardown(test_slow_replay_not_retried, close_all),
        cmocka_unit_test_teardown(test_from_live, close_all),
        cmocka_unit_test_teardown(test_caught_up, close_all),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("rsub", tests, group_up, group_down);
}

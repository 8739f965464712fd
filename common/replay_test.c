/* replay_test: tests of common/replay through a bus_pub with a spool and a
 * replay endpoint over inproc:// (one ZeroMQ context), with raw DEALER
 * sockets as clients: HELLO, REPLAY ranges and prefixes, UNKNOWN, GONE
 * (before and during a replay), a new request replacing the running one,
 * replays side by side while publishing goes on, a peer that goes away, and
 * malformed requests. Nothing is answered unless bus_pub_work runs. Run one
 * test alone with `replay_test NAME`. */
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

#include <cmocka.h>
#include <zmq.h>

#include "bus.h"
#include "replay.h"
#include "spool.h"
#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define WAIT_MS 5000
#define SRC "pub@test"
#define MAX_FRAMES 80

static void *g_ctx;
static char g_root[64];
static int g_n;

/* Everything a test opens is closed by its teardown, also when it failed
 * half-way: zmq_ctx_term would wait forever on a socket left open. */
static bus_pub_t *g_pubs[4];
static void *g_socks[8];

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
    snprintf(g_root, sizeof g_root, "/tmp/replay_test.XXXXXX");
    if (!mkdtemp(g_root))
        return -1;
    g_ctx = zmq_ctx_new();
    return g_ctx ? 0 : -1;
}

static int close_all(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(g_socks); i++) {
        if (g_socks[i])
            zmq_close(g_socks[i]);
        g_socks[i] = NULL;
    }
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
    int64_t segment_bytes, max_bytes;
} spool_size_t;

/* A publisher named SRC with a spool in a new directory and its replay
 * ROUTER; endpoints inproc://NAME and inproc://NAME-replay. */
static bus_pub_t *pub_new(const char *name, spool_size_t sz)
{
    char dir[128], ep[96], rep[96], err[256];
    snprintf(dir, sizeof dir, "%s/%s-%d", g_root, name, ++g_n);
    snprintf(ep, sizeof ep, "inproc://%s-%d", name, g_n);
    snprintf(rep, sizeof rep, "inproc://%s-%d-replay", name, g_n);
    spool_opts_t so = { .dir = dir,
                        .segment_bytes = sz.segment_bytes ? sz.segment_bytes : 1 << 20,
                        .segment_age_ms = 3600 * 1000,
                        .max_bytes = sz.max_bytes,
                        .fsync_ms = -1 };
    bus_pub_opts_t o = { .spool = &so, .replay_endpoint = rep };
    bus_pub_t *p = bus_pub_new(g_ctx, ep, SRC, &o, err, sizeof err);
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

/* The endpoint of p's replay ROUTER. */
static void *dealer_to(bus_pub_t *p, int rcvhwm)
{
    void *d = zmq_socket(g_ctx, ZMQ_DEALER);
    assert_non_null(d);
    size_t i = 0;
    while (i < ARRAY_LEN(g_socks) && g_socks[i])
        i++;
    assert_true(i < ARRAY_LEN(g_socks));
    g_socks[i] = d;
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    if (rcvhwm)
        zmq_setsockopt(d, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    char ep[256];
    size_t len = sizeof ep;
    assert_int_equal(zmq_getsockopt(bus_pub_replay_socket(p), ZMQ_LAST_ENDPOINT, ep, &len), 0);
    assert_int_equal(zmq_connect(d, ep), 0);
    return d;
}

static void close_sock(void *s)
{
    for (size_t i = 0; i < ARRAY_LEN(g_socks); i++)
        if (g_socks[i] == s)
            g_socks[i] = NULL;
    zmq_close(s);
}

/* Publishes n messages, each on the topic its seq gives. */
static void publish(bus_pub_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t seq = bus_pub_last_seq(p) + 1;
        assert_int_equal(bus_pub_send(p, TOPIC_OF(seq), "test", "\xc0", 1, NULL, 0), 0);
        assert_int_equal(bus_pub_last_seq(p), seq);
    }
}

/* ---- frames ------------------------------------------------------------------ */

static void send_strs(void *sock, const char *const *f, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = strlen(f[i]);
        assert_int_equal(zmq_send(sock, f[i], len, i + 1 < n ? ZMQ_SNDMORE : 0), (int)len);
    }
}

typedef struct {
    int n;
    char *f[MAX_FRAMES];
    size_t len[MAX_FRAMES];
} reply_t;

static void reply_free(reply_t *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->f[i]);
    r->n = 0;
}

/* Receives one whole reply without waiting; returns 1 or 0. */
static int try_recv(void *sock, reply_t *r)
{
    r->n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, r->n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&m);
            assert_int_equal(r->n, 0);
            return 0;
        }
        more = zmq_msg_more(&m);
        assert_true(r->n < MAX_FRAMES);
        r->len[r->n] = zmq_msg_size(&m);
        r->f[r->n] = malloc(r->len[r->n] + 1);
        memcpy(r->f[r->n], zmq_msg_data(&m), r->len[r->n]);
        r->f[r->n][r->len[r->n]] = '\0'; /* frames read as strings */
        r->n++;
        zmq_msg_close(&m);
    }
    return 1;
}

/* Drives the publisher until a reply reaches the dealer. */
static void next_reply(bus_pub_t *p, void *dealer, reply_t *r)
{
    int64_t end = now_ms() + WAIT_MS;
    while (now_ms() < end) {
        if (try_recv(dealer, r))
            return;
        bus_pub_work(p, now_ms());
        zmq_pollitem_t it[2] = { { dealer, 0, ZMQ_POLLIN, 0 },
                                 { bus_pub_replay_socket(p), 0, ZMQ_POLLIN, 0 } };
        zmq_poll(it, 2, 10);
    }
    fail_msg("no reply within %d ms", WAIT_MS);
}

static void expect_frames(const reply_t *r, const char *const *want, int n)
{
    if (r->n != n)
        fail_msg("reply of %d frames (%s ...), want %d (%s ...)", r->n, r->n ? r->f[0] : "",
                 n, want[0]);
    for (int i = 0; i < n; i++)
        if (strcmp(r->f[i], want[i]) != 0)
            fail_msg("frame %d: \"%s\", want \"%s\"", i, r->f[i], want[i]);
}

static uint64_t num(const char *s) { return strtoull(s, NULL, 10); }

/* Checks one MSG reply: the topic frame, and an envelope of SRC with the
 * topic's seq. Returns its seq. */
static uint64_t msg_seq(const reply_t *r)
{
    if (r->n != 3 || strcmp(r->f[0], "MSG") != 0)
        fail_msg("want MSG, got %s (%d frames)", r->n ? r->f[0] : "nothing", r->n);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bus_msg_t m;
    char err[128];
    if (bus_envelope_decode(r->f[2], r->len[2], &up, &m, err, sizeof err) != 0)
        fail_msg("MSG envelope: %s", err);
    assert_true(span_eq_cstr(m.src, SRC));
    uint64_t seq = m.seq;
    msgpack_unpacked_destroy(&up);
    if (strcmp(r->f[1], TOPIC_OF(seq)) != 0)
        fail_msg("seq %llu on topic %s, want %s", (unsigned long long)seq, r->f[1], TOPIC_OF(seq));
    return seq;
}

/* Reads a replay's MSGs into seqs (at most max) and its final reply into
 * term; returns how many MSGs came. */
static size_t collect(bus_pub_t *p, void *dealer, uint64_t *seqs, size_t max, reply_t *term)
{
    size_t n = 0;
    for (;;) {
        next_reply(p, dealer, term);
        if (strcmp(term->f[0], "MSG") != 0)
            return n;
        assert_true(n < max);
        seqs[n++] = msg_seq(term);
        reply_free(term);
    }
}

static void replay_req(void *dealer, const char *src, const char *from)
{
    const char *f[3] = { "REPLAY", src, from };
    send_strs(dealer, f, 3);
}

static const replay_counters_t *counters(bus_pub_t *p, bus_pub_counters_t *c)
{
    bus_pub_counters(p, c);
    return &c->replay;
}

/* Waits until the replay ROUTER has a request to read. */
static void wait_request(bus_pub_t *p)
{
    zmq_pollitem_t it = { bus_pub_replay_socket(p), 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_hello(void **state)
{
    (void)state;
    /* segments of about 1 KiB, at most 4 KiB kept: oldest moves on */
    bus_pub_t *p = pub_new("hello", (spool_size_t){ 1024, 4096 });
    void *d = dealer_to(p, 0);
    static const struct {
        uint64_t publish; /* before asking */
        bool retained;    /* oldest > 1 by then */
    } steps[] = { { 0, false }, { 1, false }, { 9, false }, { 200, true }, { 5, true } };
    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        publish(p, steps[i].publish);
        bus_pub_work(p, now_ms()); /* retention */
        bus_pub_counters_t c;
        bus_pub_counters(p, &c);
        const char *hello[1] = { "HELLO" };
        send_strs(d, hello, 1);
        reply_t r;
        next_reply(p, d, &r);
        char oldest[24], last[24];
        snprintf(oldest, sizeof oldest, "%llu", (unsigned long long)c.spool_oldest);
        snprintf(last, sizeof last, "%llu", (unsigned long long)bus_pub_last_seq(p));
        const char *want[4] = { "HELLO", SRC, oldest, last };
        expect_frames(&r, want, 4);
        reply_free(&r);
        assert_int_equal(c.spool_oldest > 1, steps[i].retained);
        assert_int_equal(c.spool_oldest == 0, bus_pub_last_seq(p) == 0);
        assert_int_equal(counters(p, &c)->hellos, i + 1);
    }
}

static void test_hello_needs_work(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("work", (spool_size_t){ 0, 0 });
    void *d = dealer_to(p, 0);
    const char *hello[1] = { "HELLO" };
    send_strs(d, hello, 1);
    zmq_pollitem_t it = { d, 0, ZMQ_POLLIN, 0 };
    assert_int_equal(zmq_poll(&it, 1, 100), 0); /* nobody answers by itself */
    reply_t r;
    next_reply(p, d, &r);
    const char *want[4] = { "HELLO", SRC, "0", "0" };
    expect_frames(&r, want, 4);
    reply_free(&r);
}

static void test_replay_ranges(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("ranges", (spool_size_t){ 2048, 0 }); /* many segments */
    publish(p, 50);
    void *d = dealer_to(p, 0);
    static const struct {
        const char *from;
        uint64_t first, last; /* the MSGs; last < first: none */
    } cases[] = {
        { "1", 1, 50 },  { "0", 1, 50 },   { "20", 20, 50 },  { "50", 50, 50 },
        { "51", 1, 0 },  { "1000", 1, 0 }, { "18446744073709551615", 1, 0 },
        { "00007", 7, 50 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        replay_req(d, SRC, cases[i].from);
        uint64_t seqs[64];
        reply_t term;
        size_t n = collect(p, d, seqs, ARRAY_LEN(seqs), &term);
        size_t want = cases[i].last >= cases[i].first ? cases[i].last - cases[i].first + 1 : 0;
        if (n != want)
            fail_msg("from %s: %zu messages, want %zu", cases[i].from, n, want);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(seqs[k], cases[i].first + k);
        const char *end[3] = { "END", SRC, "50" };
        expect_frames(&term, end, 3);
        reply_free(&term);
    }
    bus_pub_counters_t c;
    const replay_counters_t *rc = counters(p, &c);
    assert_int_equal(rc->requests, ARRAY_LEN(cases));
    assert_int_equal(rc->ends, ARRAY_LEN(cases));
    assert_int_equal(rc->messages, 50 + 50 + 31 + 1 + 44);
    assert_int_equal(rc->active, 0);
    assert_int_equal(rc->malformed, 0);
}

static void test_replay_prefixes(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("prefixes", (spool_size_t){ 0, 0 });
    publish(p, 40);
    void *d = dealer_to(p, 0);
    static const struct {
        const char *prefixes[4];
        int n;
        const char *match[4]; /* the topics that come: NULL-terminated */
    } cases[] = {
        { { "ev." }, 1, { "ev.00", "ev.01" } },
        { { "ev.01" }, 1, { "ev.01" } },
        { { "metric", "stats" }, 2, { "metric", "stats" } },
        { { "stats", "ev.00", "ev.0" }, 3, { "stats", "ev.00", "ev.01" } },
        { { "" }, 1, { "ev.00", "ev.01", "metric", "stats" } },
        { { "e", "m" }, 2, { "ev.00", "ev.01", "metric" } },
        { { "nomatch" }, 1, { NULL } },
        { { "ev.00x" }, 1, { NULL } }, /* longer than the topic */
        { { "EV." }, 1, { NULL } },    /* bytes, not case */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const char *f[8] = { "REPLAY", SRC, "3" };
        for (int k = 0; k < cases[i].n; k++)
            f[3 + k] = cases[i].prefixes[k];
        send_strs(d, f, 3 + cases[i].n);
        uint64_t seqs[64];
        reply_t term;
        size_t n = collect(p, d, seqs, ARRAY_LEN(seqs), &term);
        /* what should come: every seq from 3 whose topic matches, in order */
        size_t k = 0;
        for (uint64_t seq = 3; seq <= 40; seq++) {
            bool want = false;
            for (int m = 0; m < 4 && cases[i].match[m]; m++)
                want |= strcmp(TOPIC_OF(seq), cases[i].match[m]) == 0;
            if (!want)
                continue;
            if (k >= n || seqs[k] != seq)
                fail_msg("case %zu: message %zu is %llu, want %llu", i, k,
                         k < n ? (unsigned long long)seqs[k] : 0ULL, (unsigned long long)seq);
            k++;
        }
        if (k != n)
            fail_msg("case %zu: %zu messages, want %zu", i, n, k);
        const char *end[3] = { "END", SRC, "40" }; /* the last of all topics */
        expect_frames(&term, end, 3);
        reply_free(&term);
    }
}

static void test_unknown_src(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("unknown", (spool_size_t){ 0, 0 });
    publish(p, 5);
    void *d = dealer_to(p, 0);
    static const char *const srcs[] = { "other", "pub@tes", "pub@test2", "PUB@TEST", "pub" };
    for (size_t i = 0; i < ARRAY_LEN(srcs); i++) {
        replay_req(d, srcs[i], "1");
        reply_t r;
        next_reply(p, d, &r);
        if (r.n < 2 || strcmp(r.f[0], "UNKNOWN") != 0 || strcmp(r.f[1], srcs[i]) != 0)
            fail_msg("REPLAY %s: %s %s", srcs[i], r.n ? r.f[0] : "", r.n > 1 ? r.f[1] : "");
        reply_free(&r);
    }
    bus_pub_counters_t c;
    assert_int_equal(counters(p, &c)->unknowns, ARRAY_LEN(srcs));
    assert_int_equal(c.replay.active, 0);
    /* and its own src still replays */
    replay_req(d, SRC, "4");
    uint64_t seqs[8];
    reply_t term;
    assert_int_equal(collect(p, d, seqs, 8, &term), 2);
    const char *end[3] = { "END", SRC, "5" };
    expect_frames(&term, end, 3);
    reply_free(&term);
}

static void test_gone(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("gone", (spool_size_t){ 1024, 4096 });
    publish(p, 200);
    bus_pub_work(p, now_ms()); /* retention */
    bus_pub_counters_t c;
    bus_pub_counters(p, &c);
    uint64_t oldest = c.spool_oldest;
    assert_true(oldest > 1 && oldest < 200);
    char ob[24];
    snprintf(ob, sizeof ob, "%llu", (unsigned long long)oldest);
    void *d = dealer_to(p, 0);
    static const struct {
        uint64_t back; /* from = oldest - back; */
        bool gone;
    } cases[] = { { 1000, true }, { 2, true }, { 1, true }, { 0, false } };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint64_t from = cases[i].back >= oldest ? 1 : oldest - cases[i].back;
        char fb[24];
        snprintf(fb, sizeof fb, "%llu", (unsigned long long)from);
        replay_req(d, SRC, fb);
        uint64_t seqs[256];
        reply_t term;
        size_t n = collect(p, d, seqs, ARRAY_LEN(seqs), &term);
        if (cases[i].gone) {
            const char *want[3] = { "GONE", SRC, ob };
            assert_int_equal(n, 0);
            expect_frames(&term, want, 3);
        } else {
            const char *want[3] = { "END", SRC, "200" };
            assert_int_equal(n, 200 - oldest + 1);
            for (size_t k = 0; k < n; k++)
                assert_int_equal(seqs[k], oldest + k);
            expect_frames(&term, want, 3);
        }
        reply_free(&term);
    }
    assert_int_equal(counters(p, &c)->gones, 3);
    assert_int_equal(c.replay.ends, 1);
}

static void test_gone_during_replay(void **state)
{
    (void)state;
    /* the replay has sent one turn's worth (256) when the publisher goes on
     * and retention deletes what it still had to send: it ends with GONE */
    bus_pub_t *p = pub_new("gone-during", (spool_size_t){ 2048, 32 * 1024 });
    publish(p, 300);
    bus_pub_work(p, now_ms());
    bus_pub_counters_t c;
    bus_pub_counters(p, &c);
    assert_int_equal(c.spool_oldest, 1); /* all still there */
    void *d = dealer_to(p, 0);
    replay_req(d, SRC, "1");
    wait_request(p);
    bus_pub_work(p, now_ms()); /* reads the request, sends 256 */
    publish(p, 2000);
    uint64_t seqs[512];
    reply_t term;
    size_t n = collect(p, d, seqs, ARRAY_LEN(seqs), &term);
    bus_pub_counters(p, &c);
    uint64_t oldest = c.spool_oldest;
    assert_true(oldest > 300);
    assert_true(n >= 256 && n < 300); /* its segment read to the end, then nothing */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(seqs[k], k + 1);
    char ob[24];
    snprintf(ob, sizeof ob, "%llu", (unsigned long long)oldest);
    const char *want[3] = { "GONE", SRC, ob };
    expect_frames(&term, want, 3);
    reply_free(&term);
    assert_int_equal(c.replay.gones, 1);
    assert_int_equal(c.replay.active, 0);
}

static void test_new_request_replaces(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("replace", (spool_size_t){ 0, 0 });
    publish(p, 1000);
    void *d = dealer_to(p, 0);
    replay_req(d, SRC, "1");
    wait_request(p);
    bus_pub_work(p, now_ms()); /* one turn: 256 messages */
    bus_pub_counters_t c;
    assert_int_equal(counters(p, &c)->active, 1);
    assert_int_equal(c.replay.messages, 256);
    replay_req(d, SRC, "900");
    wait_request(p);
    uint64_t seqs[1024];
    reply_t term;
    size_t n = collect(p, d, seqs, ARRAY_LEN(seqs), &term);
    /* what the first had sent, then the second from its start; one END */
    assert_int_equal(n, 256 + 101);
    for (size_t k = 0; k < 256; k++)
        assert_int_equal(seqs[k], k + 1);
    for (size_t k = 256; k < n; k++)
        assert_int_equal(seqs[k], 900 + (k - 256));
    const char *end[3] = { "END", SRC, "1000" };
    expect_frames(&term, end, 3);
    reply_free(&term);
    assert_int_equal(counters(p, &c)->requests, 2);
    assert_int_equal(c.replay.ends, 1);
    assert_int_equal(c.replay.active, 0);
    zmq_pollitem_t it = { d, 0, ZMQ_POLLIN, 0 };
    bus_pub_work(p, now_ms());
    assert_int_equal(zmq_poll(&it, 1, 20), 0); /* nothing more */
}

typedef struct {
    void *d;
    uint64_t next; /* the seq it expects */
    uint64_t end;  /* END's last_seq; 0 while running */
} client_t;

static void test_replays_while_publishing(void **state)
{
    (void)state;
    bus_pub_t *p = pub_new("concurrent", (spool_size_t){ 4096, 0 });
    publish(p, 600);
    client_t cl[3] = { { dealer_to(p, 0), 1, 0 }, { dealer_to(p, 10), 1, 0 },
                       { dealer_to(p, 0), 100, 0 } };
    replay_req(cl[0].d, SRC, "1");
    replay_req(cl[1].d, SRC, "1");
    replay_req(cl[2].d, SRC, "100");
    void *h = dealer_to(p, 0); /* asks HELLO all along */
    const char *hello[1] = { "HELLO" };
    send_strs(h, hello, 1);
    int64_t end = now_ms() + WAIT_MS;
    uint64_t hellos = 0, active_seen = 0;
    while ((!cl[0].end || !cl[1].end || !cl[2].end) && now_ms() < end) {
        publish(p, 3);
        bus_pub_work(p, now_ms());
        bus_pub_counters_t c;
        if (counters(p, &c)->active > active_seen)
            active_seen = c.replay.active;
        for (size_t i = 0; i < ARRAY_LEN(cl); i++) {
            reply_t r;
            while (try_recv(cl[i].d, &r)) {
                assert_int_equal(cl[i].end, 0); /* nothing after END */
                if (strcmp(r.f[0], "END") == 0) {
                    assert_int_equal(r.n, 3);
                    cl[i].end = num(r.f[2]);
                    /* everything up to it came, nothing beyond */
                    assert_int_equal(cl[i].end, cl[i].next - 1);
                } else {
                    assert_int_equal(msg_seq(&r), cl[i].next);
                    cl[i].next++;
                }
                reply_free(&r);
            }
        }
        reply_t r;
        while (try_recv(h, &r)) {
            assert_int_equal(r.n, 4);
            assert_true(num(r.f[3]) >= 600);
            hellos++;
            send_strs(h, hello, 1);
            reply_free(&r);
        }
        zmq_pollitem_t it[4] = { { cl[0].d, 0, ZMQ_POLLIN, 0 }, { cl[1].d, 0, ZMQ_POLLIN, 0 },
                                 { cl[2].d, 0, ZMQ_POLLIN, 0 }, { h, 0, ZMQ_POLLIN, 0 } };
        zmq_poll(it, 4, 1);
    }
    for (size_t i = 0; i < ARRAY_LEN(cl); i++)
        if (cl[i].end < 600 || cl[i].end > bus_pub_last_seq(p))
            fail_msg("client %zu: END %llu (last %llu)", i, (unsigned long long)cl[i].end,
                     (unsigned long long)bus_pub_last_seq(p));
    assert_true(hellos > 0);
    assert_int_equal(active_seen, 3); /* side by side */
    bus_pub_counters_t c;
    assert_int_equal(counters(p, &c)->ends, 3);
    assert_int_equal(c.replay.active, 0);
    assert_int_equal(c.replay.dropped, 0);
}

static void test_peer_gone(void **state)
{
    (void)state;
    /* a peer that stops reading holds its replay; once it has gone, the
     * replay is dropped and counted */
    bus_pub_t *p = pub_new("peer-gone", (spool_size_t){ 0, 0 });
    publish(p, 6000);
    void *d = dealer_to(p, 1);
    replay_req(d, SRC, "1");
    wait_request(p);
    bus_pub_counters_t c;
    for (int i = 0; i < 40; i++)
        bus_pub_work(p, now_ms());
    assert_int_equal(counters(p, &c)->active, 1); /* paused: the peer is full */
    assert_true(c.replay.messages < 6000);
    close_sock(d);
    int64_t end = now_ms() + WAIT_MS;
    while (counters(p, &c)->active && now_ms() < end) {
        bus_pub_work(p, now_ms());
        zmq_poll(NULL, 0, 1);
    }
    assert_int_equal(c.replay.active, 0);
    assert_int_equal(c.replay.dropped, 1);
    assert_int_equal(c.replay.ends, 0);
}

#define F(...) { __VA_ARGS__ }

static void test_malformed(void **state)
{
    (void)state;
    static char long_src[257], many[REPLAY_MAX_PREFIXES + 2][16];
    memset(long_src, 's', 256);
    for (int i = 0; i < REPLAY_MAX_PREFIXES + 2; i++)
        snprintf(many[i], sizeof many[i], "zz%d", i);
    bus_pub_t *p = pub_new("malformed", (spool_size_t){ 0, 0 });
    publish(p, 5);
    void *d = dealer_to(p, 0);
    static const struct {
        const char *what;
        const char *f[6];
        int n;
        int prefixes;       /* then this many of many[] */
        const char *answer; /* the reply before the HELLO that follows, or NULL */
    } cases[] = {
        { "an empty verb", F(""), 1, 0, NULL },
        { "an unknown verb", F("BOGUS", SRC, "1"), 3, 0, NULL },
        { "a verb in lower case", F("hello"), 1, 0, NULL },
        { "REPLAY alone", F("REPLAY"), 1, 0, NULL },
        { "REPLAY without a seq", F("REPLAY", SRC), 2, 0, NULL },
        { "an empty seq", F("REPLAY", SRC, ""), 3, 0, NULL },
        { "a seq that is a word", F("REPLAY", SRC, "abc"), 3, 0, NULL },
        { "a seq with a tail", F("REPLAY", SRC, "12x"), 3, 0, NULL },
        { "a fraction", F("REPLAY", SRC, "1.5"), 3, 0, NULL },
        { "a negative seq", F("REPLAY", SRC, "-1"), 3, 0, NULL },
        { "a sign", F("REPLAY", SRC, "+1"), 3, 0, NULL },
        { "a blank before", F("REPLAY", SRC, " 1"), 3, 0, NULL },
        { "a seq beyond 64 bits", F("REPLAY", SRC, "18446744073709551616"), 3, 0, NULL },
        { "a seq of 24 digits", F("REPLAY", SRC, "123456789012345678901234"), 3, 0, NULL },
        { "a src of 256 bytes", F("REPLAY", long_src, "1"), 3, 0, NULL },
        { "one prefix too many", F("REPLAY", SRC, "1"), 3, REPLAY_MAX_PREFIXES + 1, NULL },
        { "two prefixes too many", F("REPLAY", SRC, "1"), 3, REPLAY_MAX_PREFIXES + 2, NULL },
        /* the limits, on the right side */
        { "as many prefixes as allowed", F("REPLAY", SRC, "1"), 3, REPLAY_MAX_PREFIXES, "END" },
        { "a src of 255 bytes", F("REPLAY", long_src + 1, "1"), 3, 0, "UNKNOWN" },
        { "HELLO with more frames", F("HELLO", "x"), 2, 0, "HELLO" },
    };
    uint64_t malformed = 0;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const char *f[REPLAY_MAX_PREFIXES + 8];
        int n = 0;
        for (; n < cases[i].n; n++)
            f[n] = cases[i].f[n];
        for (int k = 0; k < cases[i].prefixes; k++)
            f[n++] = many[k];
        send_strs(d, f, n);
        const char *hello[1] = { "HELLO" };
        send_strs(d, hello, 1);
        /* the HELLO's answer, and the request's if it has one (a replay
         * ends on a later turn than a HELLO read with it is answered) */
        bool hello_seen = false, answer_seen = !cases[i].answer;
        while (!hello_seen || !answer_seen) {
            reply_t r;
            next_reply(p, d, &r);
            char verb[16];
            snprintf(verb, sizeof verb, "%s", r.f[0]);
            reply_free(&r);
            if (!answer_seen && strcmp(verb, cases[i].answer) == 0)
                answer_seen = true;
            else if (!hello_seen && strcmp(verb, "HELLO") == 0)
                hello_seen = true;
            else
                fail_msg("%s: answered %s", cases[i].what, verb);
        }
        if (!cases[i].answer)
            malformed++;
        bus_pub_counters_t c;
        if (counters(p, &c)->malformed != malformed)
            fail_msg("%s: malformed %llu, want %llu", cases[i].what,
                     (unsigned long long)c.replay.malformed, (unsigned long long)malformed);
        assert_int_equal(c.replay.active, 0);
    }
    /* a request of more frames than any request has */
    {
        enum { NF = REPLAY_MAX_PREFIXES + 20 };
        static const char *f[NF];
        f[0] = "REPLAY";
        f[1] = SRC;
        f[2] = "1";
        for (int k = 3; k < NF; k++)
            f[k] = "p";
        send_strs(d, f, NF);
        malformed++;
    }
    /* and the service still works */
    replay_req(d, SRC, "1");
    uint64_t seqs[8];
    reply_t term;
    assert_int_equal(collect(p, d, seqs, 8, &term), 5);
    const char *end[3] = { "END", SRC, "5" };
    expect_frames(&term, end, 3);
    reply_free(&term);
    bus_pub_counters_t c;
    assert_int_equal(counters(p, &c)->malformed, malformed);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_hello, close_all),
        cmocka_unit_test_teardown(test_hello_needs_work, close_all),
        cmocka_unit_test_teardown(test_replay_ranges, close_all),
        cmocka_unit_test_teardown(test_replay_prefixes, close_all),
        cmocka_unit_test_teardown(test_unknown_src, close_all),
        cmocka_unit_test_teardown(test_gone, close_all),
        cmocka_unit_test_teardown(test_gone_during_replay, close_all),
        cmocka_unit_test_teardown(test_new_request_replaces, close_all),
        cmocka_unit_test_teardown(test_replays_while_publishing, close_all),
        cmocka_unit_test_teardown(test_peer_gone, close_all),
        cmocka_unit_test_teardown(test_malformed, close_all),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("replay", tests, group_up, group_down);
}

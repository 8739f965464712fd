/* bus_test: tests of common/bus over inproc:// (one ZeroMQ context for the
 * whole test): the envelope and its seq, XPUB subscription notices, the
 * before_send hook, and the subscriber's counters, driven with hand-built
 * frames through a raw socket. Run one test alone with `bus_test NAME`. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

#include "bus.h"
#include "msg.h"
#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define WAIT_MS 3000

static void *g_ctx;

/* Everything a test opens is noted here and closed by its teardown, also
 * when it fails half-way: zmq_ctx_term would wait forever on a socket left
 * open. */
static bus_pub_t *g_pubs[8];
static bus_sub_t *g_subs[16];
static void *g_raw[4];

static bus_pub_t *keep_pub(bus_pub_t *p)
{
    for (size_t i = 0; p && i < ARRAY_LEN(g_pubs); i++)
        if (!g_pubs[i])
            return g_pubs[i] = p;
    assert_null(p);
    return p;
}

static bus_sub_t *keep_sub(bus_sub_t *s)
{
    for (size_t i = 0; s && i < ARRAY_LEN(g_subs); i++)
        if (!g_subs[i])
            return g_subs[i] = s;
    assert_null(s);
    return s;
}

static void *keep_raw(void *r)
{
    for (size_t i = 0; r && i < ARRAY_LEN(g_raw); i++)
        if (!g_raw[i])
            return g_raw[i] = r;
    assert_null(r);
    return r;
}

/* Closes what the test has not closed itself. */
static int close_all(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(g_subs); i++)
        bus_sub_destroy(&g_subs[i]);
    for (size_t i = 0; i < ARRAY_LEN(g_pubs); i++)
        bus_pub_destroy(&g_pubs[i]);
    for (size_t i = 0; i < ARRAY_LEN(g_raw); i++) {
        if (g_raw[i])
            zmq_close(g_raw[i]);
        g_raw[i] = NULL;
    }
    return 0;
}

static int ctx_up(void **state)
{
    (void)state;
    g_ctx = zmq_ctx_new();
    return g_ctx ? 0 : -1;
}

static int ctx_down(void **state)
{
    (void)state;
    close_all(NULL);
    zmq_ctx_term(g_ctx);
    return 0;
}

static bus_pub_t *pub_at(const char *endpoint, const char *src, const bus_pub_opts_t *o)
{
    char err[256];
    bus_pub_t *p = bus_pub_new(g_ctx, endpoint, src, o, err, sizeof err);
    if (!p)
        fail_msg("%s", err);
    /* unsent messages must not hold up the end of the test */
    int zero = 0;
    zmq_setsockopt(bus_pub_socket(p), ZMQ_LINGER, &zero, sizeof zero);
    return keep_pub(p);
}

static bus_sub_t *sub_to(const char *endpoint, const char *prefix)
{
    char err[256];
    bus_sub_t *s = keep_sub(bus_sub_new(g_ctx, 0, err, sizeof err));
    if (!s)
        fail_msg("%s", err);
    int t = WAIT_MS;
    zmq_setsockopt(bus_sub_socket(s), ZMQ_RCVTIMEO, &t, sizeof t);
    assert_int_equal(bus_sub_connect(s, endpoint), 0);
    assert_int_equal(bus_sub_subscribe(s, prefix), 0);
    return s;
}

/* Waits until the publisher sees a subscription covering topic. */
static void wait_subscribed(bus_pub_t *p, const char *topic)
{
    int64_t end = tmtime_mono_ns() + (int64_t)WAIT_MS * TMTIME_NS_PER_MS;
    while (tmtime_mono_ns() < end) {
        zmq_pollitem_t it = { bus_pub_socket(p), 0, ZMQ_POLLIN, 0 };
        zmq_poll(&it, 1, 100);
        if (bus_pub_poll_subscribed(p, topic))
            return;
    }
    fail_msg("no subscription for %s", topic);
}

static void pack_body(msgpack_sbuffer *sb, uint64_t n)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, n);
    msgpack_pack_str(&pk, 5);
    msgpack_pack_str_body(&pk, "hello", 5);
}

/* ---- publisher and subscriber -------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    char err[256];
    bus_pub_t *p = pub_at("inproc://bus-rt", "collectd@test", NULL);
    assert_string_equal(bus_pub_src(p), "collectd@test");
    assert_int_equal(bus_pub_last_seq(p), 0);
    bus_sub_t *s = sub_to("inproc://bus-rt", "");
    wait_subscribed(p, "ev.00");

    static const char *const topics[] = { "ev.0a", "metric", "stats", "roll.m" };
    int64_t t0 = tmtime_now_ns();
    for (uint64_t i = 1; i <= 20; i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        pack_body(&sb, i);
        size_t cut = (size_t)(i % sb.size); /* head and tail form one value */
        assert_int_equal(bus_pub_send(p, topics[i % 4], MSG_KIND_USAGE, sb.data, cut,
                                      sb.data + cut, sb.size - cut),
                         0);
        assert_int_equal(bus_pub_last_seq(p), i);
        msgpack_sbuffer_destroy(&sb);
    }
    int64_t t1 = tmtime_now_ns();
    for (uint64_t i = 1; i <= 20; i++) {
        bus_msg_t m;
        int r = bus_sub_recv(s, &m, 0, err, sizeof err);
        if (r != 1)
            fail_msg("message %llu: %d (%s)", (unsigned long long)i, r, err);
        assert_int_equal(m.seq, i); /* from 1, without gaps, across topics */
        assert_true(span_eq_cstr(m.topic, topics[i % 4]));
        assert_true(span_eq_cstr(m.src, "collectd@test"));
        assert_true(span_eq_cstr(m.kind, "usage"));
        assert_true(m.ts >= t0 && m.ts <= t1);
        assert_int_equal(m.missed, 0);
        assert_non_null(m.body);
        assert_int_equal(m.body->type, MSGPACK_OBJECT_ARRAY);
        assert_int_equal(m.body->via.array.size, 2);
        assert_int_equal(m.body->via.array.ptr[0].via.u64, i);
        assert_int_equal(m.body->via.array.ptr[1].via.str.size, 5);
        assert_memory_equal(m.body->via.array.ptr[1].via.str.ptr, "hello", 5);
    }
    const bus_sub_counters_t *c = bus_sub_counters(s);
    assert_int_equal(c->received, 20);
    assert_int_equal(c->gaps, 0);
    assert_int_equal(c->missed, 0);
    assert_int_equal(c->malformed, 0);
    assert_int_equal(c->newer, 0);
    assert_int_equal(c->restarts, 0);
    /* nothing more waiting */
    bus_msg_t m;
    assert_int_equal(bus_sub_recv(s, &m, ZMQ_DONTWAIT, err, sizeof err), 0);
    assert_string_equal(err, "");

    /* a body that is not msgpack leaves the publisher, but no subscriber
     * takes it: the envelope is checked before anything is read */
    assert_int_equal(bus_pub_send(p, "stats", MSG_KIND_STATS, "\xc1", 1, NULL, 0), 0);
    assert_int_equal(bus_sub_recv(s, &m, 0, err, sizeof err), -1);
    assert_int_equal(bus_sub_counters(s)->malformed, 1);
    assert_non_null(strstr(err, "not one well-formed msgpack value"));
    /* destroy frees and clears; a second destroy is a no-op */
    bus_sub_t *s2 = sub_to("inproc://bus-rt", "x");
    for (size_t i = 0; i < ARRAY_LEN(g_subs); i++)
        if (g_subs[i] == s2)
            g_subs[i] = NULL;
    bus_sub_destroy(&s2);
    assert_null(s2);
    bus_sub_destroy(&s2);
}

static void test_poll_subscribed(void **state)
{
    (void)state;
    bus_pub_t *p = pub_at("inproc://bus-poll", "aggregator@test", NULL);
    assert_false(bus_pub_poll_subscribed(p, "stats")); /* nobody yet */

    bus_sub_t *a = sub_to("inproc://bus-poll", "stats");
    wait_subscribed(p, "stats");
    assert_false(bus_pub_poll_subscribed(p, "stats")); /* the notice was read */

    zmq_pollitem_t it = { bus_pub_socket(p), 0, ZMQ_POLLIN, 0 };
    /* a subscription to "ev." covers ev.1f, not stats */
    bus_sub_t *b = sub_to("inproc://bus-poll", "ev.");
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    assert_false(bus_pub_poll_subscribed(p, "stats"));
    bus_sub_t *b2 = sub_to("inproc://bus-poll", "ev.");
    wait_subscribed(p, "ev.1f");
    /* one longer than the topic does not cover it */
    bus_sub_t *c = sub_to("inproc://bus-poll", "stats.more");
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    assert_false(bus_pub_poll_subscribed(p, "stats"));
    /* a shorter prefix does; so does "" */
    bus_sub_t *d = sub_to("inproc://bus-poll", "st");
    wait_subscribed(p, "stats");
    bus_sub_t *e = sub_to("inproc://bus-poll", "");
    wait_subscribed(p, "anything");
    /* an unsubscription is not a subscription */
    zmq_setsockopt(bus_sub_socket(a), ZMQ_UNSUBSCRIBE, "stats", 5);
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    assert_false(bus_pub_poll_subscribed(p, "stats"));

    (void)b;
    (void)b2;
    (void)c;
    (void)d;
    (void)e;
}

typedef struct {
    int calls;
    int veto;
    uint64_t last_seq;
    char last_topic[32];
    uint64_t env_seq;
    char env_src[32];
} hook_t;

static int before_send(void *arg, const char *topic, uint64_t seq, const void *env, size_t len)
{
    hook_t *h = arg;
    h->calls++;
    h->last_seq = seq;
    snprintf(h->last_topic, sizeof h->last_topic, "%s", topic);
    /* the hook sees the whole encoded envelope (what a spool would keep) */
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bus_msg_t m;
    char err[128];
    if (bus_envelope_decode(env, len, &up, &m, err, sizeof err) == 0) {
        h->env_seq = m.seq;
        snprintf(h->env_src, sizeof h->env_src, "%.*s", (int)m.src.len, m.src.p);
    }
    msgpack_unpacked_destroy(&up);
    return h->veto;
}

static void test_before_send_and_next_seq(void **state)
{
    (void)state;
    char err[256];
    hook_t h = { 0 };
    bus_pub_opts_t o = { .sndhwm = 1000, .before_send = before_send, .arg = &h, .next_seq = 100 };
    bus_pub_t *p = pub_at("inproc://bus-hook", "alerter@test", &o);
    assert_int_equal(bus_pub_last_seq(p), 99);
    bus_sub_t *s = sub_to("inproc://bus-hook", "");
    wait_subscribed(p, "alert");

    assert_int_equal(bus_pub_send(p, "alert", "alert", "\x90", 1, NULL, 0), 0);
    assert_int_equal(h.calls, 1);
    assert_int_equal(h.last_seq, 100);
    assert_int_equal(h.env_seq, 100);
    assert_string_equal(h.env_src, "alerter@test");
    assert_string_equal(h.last_topic, "alert");

    /* a veto: nothing is sent and the seq is not used up */
    h.veto = 1;
    errno = 0;
    assert_int_equal(bus_pub_send(p, "alert", "alert", "\x90", 1, NULL, 0), -1);
    assert_int_equal(h.calls, 2);
    assert_int_equal(h.last_seq, 101);
    assert_int_equal(bus_pub_last_seq(p), 100);
    h.veto = 0;
    assert_int_equal(bus_pub_send(p, "alert", "alert", "\x90", 1, NULL, 0), 0);
    assert_int_equal(h.last_seq, 101);
    assert_int_equal(bus_pub_last_seq(p), 101);

    bus_msg_t m;
    assert_int_equal(bus_sub_recv(s, &m, 0, err, sizeof err), 1);
    assert_int_equal(m.seq, 100);
    assert_int_equal(bus_sub_recv(s, &m, 0, err, sizeof err), 1);
    assert_int_equal(m.seq, 101); /* no gap where the veto was */
    assert_int_equal(m.missed, 0);
    assert_int_equal(bus_sub_recv(s, &m, ZMQ_DONTWAIT, err, sizeof err), 0);
    assert_int_equal(bus_sub_counters(s)->gaps, 0);

    /* next_seq 0 means 1 */
    o = (bus_pub_opts_t){ 0 };
    p = pub_at("inproc://bus-hook0", "x", &o);
    assert_int_equal(bus_pub_send(p, "t", "k", "\xc0", 1, NULL, 0), 0); /* no subscriber: fine */
    assert_int_equal(bus_pub_last_seq(p), 1);
}

static void test_partial_subscription_sees_gaps(void **state)
{
    (void)state;
    /* seq counts a publisher's messages across all its topics, so a
     * subscriber to some topics sees the others as gaps (by design) */
    char err[256];
    bus_pub_t *p = pub_at("inproc://bus-part", "collectd@part", NULL);
    bus_sub_t *s = sub_to("inproc://bus-part", "stats");
    wait_subscribed(p, "stats");
    static const char *const topics[] = { "ev.00", "stats", "ev.01", "metric", "stats" };
    for (size_t i = 0; i < ARRAY_LEN(topics); i++)
        assert_int_equal(bus_pub_send(p, topics[i], "k", "\xc0", 1, NULL, 0), 0);
    bus_msg_t m;
    assert_int_equal(bus_sub_recv(s, &m, 0, err, sizeof err), 1);
    assert_int_equal(m.seq, 2);
    assert_int_equal(m.missed, 0); /* the first seen of a src sets its position */
    assert_int_equal(bus_sub_recv(s, &m, 0, err, sizeof err), 1);
    assert_int_equal(m.seq, 5);
    assert_int_equal(m.missed, 2);
    assert_int_equal(bus_sub_counters(s)->gaps, 1);
    assert_int_equal(bus_sub_counters(s)->missed, 2);
}

static void test_bind_errors(void **state)
{
    (void)state;
    char err[256];
    pub_at("inproc://bus-dup", "a", NULL);
    bus_pub_t *b = keep_pub(bus_pub_new(g_ctx, "inproc://bus-dup", "b", NULL, err, sizeof err));
    assert_null(b);
    assert_non_null(strstr(err, "cannot bind bus endpoint inproc://bus-dup"));
    assert_null(keep_pub(bus_pub_new(g_ctx, "nonsense", "c", NULL, err, sizeof err)));
    assert_non_null(strstr(err, "cannot bind bus endpoint nonsense"));
}

/* ---- hand-built envelopes ------------------------------------------------ */

enum {
    E_NO_V = 1 << 0,
    E_NO_SRC = 1 << 1,
    E_NO_SEQ = 1 << 2,
    E_NO_TS = 1 << 3,
    E_NO_KIND = 1 << 4,
    E_NO_BODY = 1 << 5,
    E_UNKNOWN = 1 << 6, /* an extra key */
    E_NEG_TS = 1 << 7,
    E_STR_SEQ = 1 << 8,
};

typedef struct {
    uint64_t v;
    const char *src;
    uint64_t seq;
    const char *kind;
    unsigned flags;
} env_t;

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void build_env(msgpack_sbuffer *sb, const env_t *e)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    unsigned f = e->flags;
    int n = 6 - !!(f & E_NO_V) - !!(f & E_NO_SRC) - !!(f & E_NO_SEQ) - !!(f & E_NO_TS) -
            !!(f & E_NO_KIND) - !!(f & E_NO_BODY) + !!(f & E_UNKNOWN);
    msgpack_pack_map(&pk, (size_t)n);
    if (f & E_UNKNOWN) {
        pack_cstr(&pk, "trace");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_nil(&pk);
        msgpack_pack_true(&pk);
    }
    if (!(f & E_NO_V)) {
        pack_cstr(&pk, "v");
        msgpack_pack_uint64(&pk, e->v);
    }
    if (!(f & E_NO_SRC)) {
        pack_cstr(&pk, "src");
        pack_cstr(&pk, e->src);
    }
    if (!(f & E_NO_SEQ)) {
        pack_cstr(&pk, "seq");
        if (f & E_STR_SEQ)
            pack_cstr(&pk, "1");
        else
            msgpack_pack_uint64(&pk, e->seq);
    }
    if (!(f & E_NO_TS)) {
        pack_cstr(&pk, "ts");
        msgpack_pack_int64(&pk, f & E_NEG_TS ? -1 : 1763823249000000000LL);
    }
    if (!(f & E_NO_KIND)) {
        pack_cstr(&pk, "kind");
        pack_cstr(&pk, e->kind);
    }
    if (!(f & E_NO_BODY)) {
        pack_cstr(&pk, "body");
        msgpack_pack_array(&pk, 1);
        msgpack_pack_uint64(&pk, e->seq);
    }
}

typedef struct {
    const char *name;
    env_t env;
    int want;       /* 0 or -1 */
    int want_errno; /* EPROTONOSUPPORT for another version */
} env_case_t;

static char long_src[258];
static char long_kind[66];

static void test_envelope_decode(void **state)
{
    (void)state;
    memset(long_src, 's', 257);
    memset(long_kind, 'k', 65);
    const env_case_t cases[] = {
        { "well formed", { 1, "c@h", 7, "usage", 0 }, 0, 0 },
        { "unknown keys ignored", { 1, "c@h", 7, "usage", E_UNKNOWN }, 0, 0 },
        { "empty kind", { 1, "c@h", 7, "", 0 }, 0, 0 },
        { "src of 256 bytes", { 1, long_src + 1, 7, "usage", 0 }, 0, 0 },
        { "kind of 64 bytes", { 1, "c@h", 7, long_kind + 1, 0 }, 0, 0 },
        { "no v", { 1, "c@h", 7, "usage", E_NO_V }, -1, 0 },
        { "no src", { 1, "c@h", 7, "usage", E_NO_SRC }, -1, 0 },
        { "no seq", { 1, "c@h", 7, "usage", E_NO_SEQ }, -1, 0 },
        { "no ts", { 1, "c@h", 7, "usage", E_NO_TS }, -1, 0 },
        { "no kind", { 1, "c@h", 7, "usage", E_NO_KIND }, -1, 0 },
        { "no body", { 1, "c@h", 7, "usage", E_NO_BODY }, -1, 0 },
        { "seq 0", { 1, "c@h", 0, "usage", 0 }, -1, 0 },
        { "seq a string", { 1, "c@h", 7, "usage", E_STR_SEQ }, -1, 0 },
        { "ts negative", { 1, "c@h", 7, "usage", E_NEG_TS }, -1, 0 },
        { "empty src", { 1, "", 7, "usage", 0 }, -1, 0 },
        { "src of 257 bytes", { 1, long_src, 7, "usage", 0 }, -1, 0 },
        { "kind of 65 bytes", { 1, "c@h", 7, long_kind, 0 }, -1, 0 },
        { "v 2", { 2, "c@h", 7, "usage", 0 }, -1, EPROTONOSUPPORT },
        { "v 2 with other fields", { 2, "c@h", 7, "usage", E_NO_SEQ | E_NO_BODY | E_UNKNOWN }, -1,
          EPROTONOSUPPORT },
        { "v 0", { 0, "c@h", 7, "usage", 0 }, -1, EPROTONOSUPPORT },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build_env(&sb, &cases[i].env);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        bus_msg_t m;
        char err[256] = "";
        errno = 0;
        int rc = bus_envelope_decode(sb.data, sb.size, &up, &m, err, sizeof err);
        if (rc != cases[i].want)
            fail_msg("%s: %d (%s), want %d", cases[i].name, rc, err, cases[i].want);
        if (rc == 0) {
            assert_int_equal(m.seq, cases[i].env.seq);
            assert_true(span_eq_cstr(m.src, cases[i].env.src));
            assert_true(span_eq_cstr(m.kind, cases[i].env.kind));
            assert_int_equal(m.ts, 1763823249000000000LL);
            assert_int_equal(m.body->type, MSGPACK_OBJECT_ARRAY);
            assert_int_equal(m.missed, 0);
        } else {
            assert_true(err[0] != '\0');
            if (cases[i].want_errno && errno != cases[i].want_errno)
                fail_msg("%s: errno %d, want %d", cases[i].name, errno, cases[i].want_errno);
            if (!cases[i].want_errno && errno == EPROTONOSUPPORT)
                fail_msg("%s: taken for another version", cases[i].name);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }

    /* bytes that are not one msgpack map */
    static const struct {
        const char *b;
        size_t len;
    } raw[] = {
        { "", 0 },
        { "\xc1", 1 },
        { "\x93\x01\x02\x03", 4 },               /* an array */
        { "\x80\x80", 2 },                       /* two values */
        { "\x81\xa1v\x01\x00", 5 },             /* a trailing byte */
        { "\xdf\xff\xff\xff\xff", 5 },           /* a map claiming 4G entries */
        { "\x81\xa4" "body\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x01",
          24 },                                  /* nested deeper than BUS_MAX_DEPTH */
    };
    for (size_t i = 0; i < ARRAY_LEN(raw); i++) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        bus_msg_t m;
        char err[256] = "";
        char *copy = malloc(raw[i].len + 1);
        memcpy(copy, raw[i].b, raw[i].len);
        if (bus_envelope_decode(copy, raw[i].len, &up, &m, err, sizeof err) != -1)
            fail_msg("raw case %zu: decoded", i);
        assert_true(err[0] != '\0');
        free(copy);
        msgpack_unpacked_destroy(&up);
    }
}

/* Sends frames through the raw socket: n frames, the last without MORE. */
static void send_frames(void *sock, const void *const *f, const size_t *len, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(zmq_send(sock, f[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0), (int)len[i]);
}

static void send_env(void *sock, const char *topic, const env_t *e)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    build_env(&sb, e);
    const void *f[2] = { topic, sb.data };
    size_t len[2] = { strlen(topic), sb.size };
    send_frames(sock, f, len, 2);
    msgpack_sbuffer_destroy(&sb);
}

typedef struct {
    const char *what;
    int rc;           /* what bus_sub_recv returns */
    uint64_t seq;     /* when rc == 1 */
    uint64_t missed;  /* msg.missed when rc == 1 */
    bus_sub_counters_t after;
} step_t;

static void expect(bus_sub_t *s, const step_t *st)
{
    bus_msg_t m;
    char err[256];
    int rc = bus_sub_recv(s, &m, 0, err, sizeof err);
    if (rc != st->rc)
        fail_msg("%s: recv %d (%s), want %d", st->what, rc, err, st->rc);
    if (rc == 1) {
        if (m.seq != st->seq || m.missed != st->missed)
            fail_msg("%s: seq %llu missed %llu, want %llu and %llu", st->what,
                     (unsigned long long)m.seq, (unsigned long long)m.missed,
                     (unsigned long long)st->seq, (unsigned long long)st->missed);
    } else if (rc == -1 && !err[0]) {
        fail_msg("%s: refused without a reason", st->what);
    }
    const bus_sub_counters_t *c = bus_sub_counters(s);
    if (memcmp(c, &st->after, sizeof *c) != 0)
        fail_msg("%s: counters received %llu malformed %llu newer %llu gaps %llu missed %llu "
                 "restarts %llu; want %llu %llu %llu %llu %llu %llu",
                 st->what, (unsigned long long)c->received, (unsigned long long)c->malformed,
                 (unsigned long long)c->newer, (unsigned long long)c->gaps,
                 (unsigned long long)c->missed, (unsigned long long)c->restarts,
                 (unsigned long long)st->after.received, (unsigned long long)st->after.malformed,
                 (unsigned long long)st->after.newer, (unsigned long long)st->after.gaps,
                 (unsigned long long)st->after.missed, (unsigned long long)st->after.restarts);
}

/* counters: received, malformed, newer, gaps, missed, restarts */
#define C(r, mf, nw, g, ms, rs) { r, mf, nw, g, ms, rs }

static void test_sub_counters_raw_frames(void **state)
{
    (void)state;
    void *raw = keep_raw(zmq_socket(g_ctx, ZMQ_XPUB));
    assert_non_null(raw);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(raw, "inproc://bus-raw"), 0);
    bus_sub_t *s = sub_to("inproc://bus-raw", "");
    char note[16];
    int t = WAIT_MS;
    zmq_setsockopt(raw, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_int_equal(zmq_recv(raw, note, sizeof note, 0), 1); /* "\x01": subscribed to "" */

    /* src A from 1 */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 1, "usage", 0 });
    expect(s, &(step_t){ "A 1", 1, 1, 0, C(1, 0, 0, 0, 0, 0) });
    send_env(raw, "ev.00", &(env_t){ 1, "A", 2, "usage", 0 });
    expect(s, &(step_t){ "A 2", 1, 2, 0, C(2, 0, 0, 0, 0, 0) });
    /* 3 and 4 lost */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 5, "usage", 0 });
    expect(s, &(step_t){ "A 5 after 2", 1, 5, 2, C(3, 0, 0, 1, 2, 0) });
    send_env(raw, "ev.00", &(env_t){ 1, "A", 6, "usage", 0 });
    expect(s, &(step_t){ "A 6", 1, 6, 0, C(4, 0, 0, 1, 2, 0) });
    /* back to 3: the publisher lost its state and restarted */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 3, "usage", 0 });
    expect(s, &(step_t){ "A 3 after 6", 1, 3, 0, C(5, 0, 0, 1, 2, 1) });
    send_env(raw, "ev.00", &(env_t){ 1, "A", 4, "usage", 0 });
    expect(s, &(step_t){ "A 4", 1, 4, 0, C(6, 0, 0, 1, 2, 1) });
    /* another src has its own position, starting where it is first seen */
    send_env(raw, "metric", &(env_t){ 1, "B", 10, "sample", 0 });
    expect(s, &(step_t){ "B 10", 1, 10, 0, C(7, 0, 0, 1, 2, 1) });
    send_env(raw, "metric", &(env_t){ 1, "B", 12, "sample", 0 });
    expect(s, &(step_t){ "B 12", 1, 12, 1, C(8, 0, 0, 2, 3, 1) });
    /* the same seq twice counts as going back */
    send_env(raw, "metric", &(env_t){ 1, "B", 12, "sample", 0 });
    expect(s, &(step_t){ "B 12 again", 1, 12, 0, C(9, 0, 0, 2, 3, 2) });

    /* a single frame */
    {
        const void *f[1] = { "ev.00" };
        size_t len[1] = { 5 };
        send_frames(raw, f, len, 1);
        expect(s, &(step_t){ "one frame", -1, 0, 0, C(9, 1, 0, 2, 3, 2) });
    }
    /* three frames */
    {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build_env(&sb, &(env_t){ 1, "A", 5, "usage", 0 });
        const void *f[3] = { "ev.00", sb.data, "extra" };
        size_t len[3] = { 5, sb.size, 5 };
        send_frames(raw, f, len, 3);
        msgpack_sbuffer_destroy(&sb);
        expect(s, &(step_t){ "three frames", -1, 0, 0, C(9, 2, 0, 2, 3, 2) });
    }
    /* and the stream goes on after them */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 5, "usage", 0 });
    expect(s, &(step_t){ "A 5 after the bad frames", 1, 5, 0, C(10, 2, 0, 2, 3, 2) });
    /* an envelope that is not msgpack */
    {
        const void *f[2] = { "ev.00", "\xc1" };
        size_t len[2] = { 5, 1 };
        send_frames(raw, f, len, 2);
        expect(s, &(step_t){ "0xc1", -1, 0, 0, C(10, 3, 0, 2, 3, 2) });
    }
    /* an envelope without a seq; with seq 0 */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 6, "usage", E_NO_SEQ });
    expect(s, &(step_t){ "no seq", -1, 0, 0, C(10, 4, 0, 2, 3, 2) });
    send_env(raw, "ev.00", &(env_t){ 1, "A", 0, "usage", 0 });
    expect(s, &(step_t){ "seq 0", -1, 0, 0, C(10, 5, 0, 2, 3, 2) });
    /* a newer version: counted apart, whatever its other fields */
    send_env(raw, "ev.00", &(env_t){ 2, "A", 6, "usage", 0 });
    expect(s, &(step_t){ "v 2", -1, 0, 0, C(10, 5, 1, 2, 3, 2) });
    send_env(raw, "ev.00", &(env_t){ 2, "A", 6, "usage", E_NO_SEQ | E_NO_TS | E_UNKNOWN });
    expect(s, &(step_t){ "v 2, other fields", -1, 0, 0, C(10, 5, 2, 2, 3, 2) });
    /* topics: empty, and longer than BUS_MAX_TOPIC */
    send_env(raw, "", &(env_t){ 1, "A", 6, "usage", 0 });
    expect(s, &(step_t){ "empty topic", -1, 0, 0, C(10, 6, 2, 2, 3, 2) });
    char topic[BUS_MAX_TOPIC + 2];
    memset(topic, 't', BUS_MAX_TOPIC + 1);
    topic[BUS_MAX_TOPIC + 1] = '\0';
    send_env(raw, topic, &(env_t){ 1, "A", 6, "usage", 0 });
    expect(s, &(step_t){ "long topic", -1, 0, 0, C(10, 7, 2, 2, 3, 2) });
    topic[BUS_MAX_TOPIC] = '\0';
    send_env(raw, topic, &(env_t){ 1, "A", 6, "usage", 0 });
    expect(s, &(step_t){ "64-byte topic", 1, 6, 0, C(11, 7, 2, 2, 3, 2) });
    /* refused envelopes do not move the position: 6 was the last applied */
    send_env(raw, "ev.00", &(env_t){ 1, "A", 9, "usage", 0 });
    expect(s, &(step_t){ "A 9", 1, 9, 2, C(12, 7, 2, 3, 5, 2) });

    bus_msg_t m;
    char err[64];
    assert_int_equal(bus_sub_recv(s, &m, ZMQ_DONTWAIT, err, sizeof err), 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_round_trip, close_all),
        cmocka_unit_test_teardown(test_poll_subscribed, close_all),
        cmocka_unit_test_teardown(test_before_send_and_next_seq, close_all),
        cmocka_unit_test_teardown(test_partial_subscription_sees_gaps, close_all),
        cmocka_unit_test_teardown(test_bind_errors, close_all),
        cmocka_unit_test_teardown(test_envelope_decode, close_all),
        cmocka_unit_test_teardown(test_sub_counters_raw_frames, close_all),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("bus", tests, ctx_up, ctx_down);
}

#include "rsub.h"

#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mbuf.h"
#include "xalloc.h"

#define MAX_SRCS 1024
#define TOPIC_MAX 64

typedef struct {
    uint64_t seq;
    char topic[TOPIC_MAX + 1];
    mbuf_t env;
} held_t;

typedef struct {
    char *src;
    uint64_t pos;     /* last seq applied (or known not wanted) */
    bool known;       /* pos is real: seeded, or established */
    bool fresh;       /* no position of ours before: a GONE is where we start, not a loss */
    int pub;          /* index of the publisher that serves it; -1: not known yet */
    bool want_replay; /* waiting to learn pub before asking */
    bool replaying;
    bool for_gap; /* the running replay fills a gap seen live */
    uint64_t refused; /* apply refused this seq: replies before its new replay are stale */
    int64_t sent_ms;
    held_t *buf;
    size_t nbuf, cap;
} src_t;

struct rsub {
    void *sub;
    void **dealers;
    bool *hello_ok;
    int64_t *hello_ms;
    size_t n;
    char **pubs, **replays;
    char **prefixes;
    size_t nprefixes;
    rsub_start_t start;
    int rcvhwm;
    int64_t retry_ms;
    size_t max_buffered;
    int (*sock_setup)(void *, void *);
    void *setup_arg;
    void *zctx;
    rsub_apply_fn apply;
    void *arg;
    src_t *srcs;
    size_t nsrcs;
    msgpack_unpacked up;
    int64_t now;
    int64_t started_ms; /* of the first rsub_work */
    rsub_counters_t c;
};

rsub_t *rsub_new(void *zctx, const rsub_opts_t *o, rsub_apply_fn apply, void *arg, char *err,
                 size_t errcap)
{
    if (o->n == 0) {
        snprintf(err, errcap, "no publisher to subscribe to");
        return NULL;
    }
    rsub_t *r = xcalloc(1, sizeof *r);
    r->zctx = zctx;
    r->n = o->n;
    r->pubs = xcalloc(o->n, sizeof *r->pubs);
    r->replays = xcalloc(o->n, sizeof *r->replays);
    for (size_t i = 0; i < o->n; i++) {
        r->pubs[i] = xstrdup(o->pubs[i]);
        r->replays[i] = xstrdup(o->replays[i]);
    }
    r->nprefixes = o->nprefixes;
    r->prefixes = xcalloc(o->nprefixes + 1, sizeof *r->prefixes);
    for (size_t i = 0; i < o->nprefixes; i++)
        r->prefixes[i] = xstrdup(o->prefixes[i]);
    r->start = o->start;
    r->rcvhwm = o->rcvhwm;
    r->retry_ms = o->retry_ms > 0 ? o->retry_ms : 2000;
    r->max_buffered = o->max_buffered ? o->max_buffered : 20000;
    r->sock_setup = o->sock_setup;
    r->setup_arg = o->setup_arg;
    r->apply = apply;
    r->arg = arg;
    msgpack_unpacked_init(&r->up);
    return r;
}

static void src_free(src_t *s)
{
    for (size_t i = 0; i < s->nbuf; i++)
        mbuf_free(&s->buf[i].env);
    free(s->buf);
    free(s->src);
}

void rsub_destroy(rsub_t **pr)
{
    rsub_t *r = *pr;
    if (!r)
        return;
    if (r->sub)
        zmq_close(r->sub);
    for (size_t i = 0; i < r->n; i++) {
        if (r->dealers && r->dealers[i])
            zmq_close(r->dealers[i]);
        free(r->pubs[i]);
        free(r->replays[i]);
    }
    free(r->dealers);
    free(r->hello_ok);
    free(r->hello_ms);
    free(r->pubs);
    free(r->replays);
    for (size_t i = 0; i < r->nprefixes; i++)
        free(r->prefixes[i]);
    free(r->prefixes);
    for (size_t i = 0; i < r->nsrcs; i++)
        src_free(&r->srcs[i]);
    free(r->srcs);
    msgpack_unpacked_destroy(&r->up);
    free(r);
    *pr = NULL;
}

static src_t *find_src(rsub_t *r, span_t src, bool create)
{
    for (size_t i = 0; i < r->nsrcs; i++)
        if (span_eq_cstr(src, r->srcs[i].src))
            return &r->srcs[i];
    if (!create || r->nsrcs >= MAX_SRCS)
        return NULL;
    r->srcs = xreallocarray(r->srcs, r->nsrcs + 1, sizeof *r->srcs);
    src_t *s = &r->srcs[r->nsrcs++];
    memset(s, 0, sizeof *s);
    s->src = xstrndup(src.p, src.len);
    s->pub = -1;
    return s;
}

void rsub_set_position(rsub_t *r, const char *src, uint64_t seq)
{
    src_t *s = find_src(r, span_cstr(src), true);
    if (s) {
        s->pos = seq;
        s->known = true;
    }
}

static bool wanted(const rsub_t *r, span_t topic)
{
    if (!r->nprefixes)
        return true;
    for (size_t i = 0; i < r->nprefixes; i++) {
        size_t n = strlen(r->prefixes[i]);
        if (topic.len >= n && !memcmp(topic.p, r->prefixes[i], n))
            return true;
    }
    return false;
}

static int setup_sock(rsub_t *r, void *s)
{
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (r->rcvhwm > 0)
        zmq_setsockopt(s, ZMQ_RCVHWM, &r->rcvhwm, sizeof r->rcvhwm);
    int64_t maxsz = BUS_MAX_MSG + 1024;
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxsz, sizeof maxsz);
    int ivl = 100, ivlmax = 2000;
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL_MAX, &ivlmax, sizeof ivlmax);
    return r->sock_setup ? r->sock_setup(s, r->setup_arg) : 0;
}

static void send_hello(rsub_t *r, size_t i)
{
    zmq_send(r->dealers[i], "HELLO", 5, ZMQ_DONTWAIT);
    r->hello_ms[i] = r->now;
}

int rsub_start(rsub_t *r, char *err, size_t errcap)
{
    r->sub = zmq_socket(r->zctx, ZMQ_SUB);
    if (!r->sub || setup_sock(r, r->sub) != 0) {
        snprintf(err, errcap, "subscriber socket: %s", zmq_strerror(zmq_errno()));
        return -1;
    }
    zmq_setsockopt(r->sub, ZMQ_SUBSCRIBE, "", 0); /* all topics: every seq is seen */
    r->dealers = xcalloc(r->n, sizeof *r->dealers);
    r->hello_ok = xcalloc(r->n, sizeof *r->hello_ok);
    r->hello_ms = xcalloc(r->n, sizeof *r->hello_ms);
    for (size_t i = 0; i < r->n; i++) {
        if (zmq_connect(r->sub, r->pubs[i]) != 0) {
            snprintf(err, errcap, "cannot connect to %s: %s", r->pubs[i], zmq_strerror(zmq_errno()));
            return -1;
        }
        r->dealers[i] = zmq_socket(r->zctx, ZMQ_DEALER);
        if (!r->dealers[i] || setup_sock(r, r->dealers[i]) != 0 ||
            zmq_connect(r->dealers[i], r->replays[i]) != 0) {
            snprintf(err, errcap, "cannot connect to %s: %s", r->replays[i],
                     zmq_strerror(zmq_errno()));
            return -1;
        }
        send_hello(r, i);
    }
    return 0;
}

int rsub_poll_items(rsub_t *r, zmq_pollitem_t *items, int max)
{
    int k = 0;
    if (k < max)
        items[k++] = (zmq_pollitem_t){ r->sub, 0, ZMQ_POLLIN, 0 };
    for (size_t i = 0; i < r->n && k < max; i++)
        items[k++] = (zmq_pollitem_t){ r->dealers[i], 0, ZMQ_POLLIN, 0 };
    return k;
}

bool rsub_busy(const rsub_t *r)
{
    for (size_t i = 0; i < r->nsrcs; i++)
        if (r->srcs[i].replaying || r->srcs[i].want_replay)
            return true;
    return false;
}

bool rsub_caught_up(const rsub_t *r)
{
    if (!r->hello_ok) /* not started */
        return false;
    /* a publisher silent for a whole retry period counts as not running */
    size_t answered = 0;
    for (size_t i = 0; i < r->n; i++)
        answered += r->hello_ok[i];
    bool heard = answered == r->n || (answered > 0 && r->now - r->started_ms >= r->retry_ms);
    return heard && !rsub_busy(r);
}

void rsub_each_position(const rsub_t *r, void (*fn)(const char *src, uint64_t seq, void *arg),
                        void *arg)
{
    for (size_t i = 0; i < r->nsrcs; i++)
        if (r->srcs[i].known)
            fn(r->srcs[i].src, r->srcs[i].pos, arg);
}

const rsub_counters_t *rsub_counters(const rsub_t *r) { return &r->c; }

/* ---- replay requests ------------------------------------------------------ */

static void request(rsub_t *r, src_t *s, uint64_t from)
{
    if (s->pub < 0) { /* ask every publisher who serves it */
        s->want_replay = true;
        for (size_t i = 0; i < r->n; i++)
            if (r->now - r->hello_ms[i] >= r->retry_ms / 4)
                send_hello(r, i);
        return;
    }
    void *d = r->dealers[s->pub];
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)from);
    zmq_send(d, "REPLAY", 6, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(d, s->src, strlen(s->src), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(d, num, strlen(num), r->nprefixes ? ZMQ_SNDMORE | ZMQ_DONTWAIT : ZMQ_DONTWAIT);
    for (size_t i = 0; i < r->nprefixes; i++)
        zmq_send(d, r->prefixes[i], strlen(r->prefixes[i]),
                 (i + 1 < r->nprefixes ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    s->want_replay = false;
    s->replaying = true;
    s->sent_ms = r->now;
    r->c.replays++;
}

/* ---- applying ------------------------------------------------------------- */

/* Hands over a message in order; pos moves on whether or not it is wanted.
 * Returns 1 when applied, 0 when not wanted, -1 when apply said stop. */
static int deliver(rsub_t *r, src_t *s, const bus_msg_t *m)
{
    int rc = 0;
    if (wanted(r, m->topic)) {
        if (r->apply(r->arg, m) != 0) {
            /* it comes again by replay, and what follows it after it: the
             * caller's next rsub_work must neither skip it nor wait for
             * more live traffic to notice the hole */
            s->refused = m->seq;
            request(r, s, s->pos + 1);
            return -1;
        }
        r->c.applied++;
        rc = 1;
    } else {
        r->c.skipped++;
    }
    s->pos = m->seq;
    s->known = true;
    s->fresh = false; /* a position of our own now: a later GONE is a loss */
    return rc;
}

static int decode(rsub_t *r, const void *env, size_t len, span_t topic, bus_msg_t *m)
{
    char err[160];
    if (bus_envelope_decode(env, len, &r->up, m, err, sizeof err) < 0) {
        r->c.malformed++;
        return -1;
    }
    m->topic = topic;
    return 0;
}

static void hold(rsub_t *r, src_t *s, uint64_t seq, span_t topic, const void *env, size_t len)
{
    if (s->nbuf >= r->max_buffered) {
        r->c.overflow++; /* the next replay brings it */
        return;
    }
    if (s->nbuf == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->buf = xreallocarray(s->buf, s->cap, sizeof *s->buf);
    }
    held_t *h = &s->buf[s->nbuf++];
    h->seq = seq;
    memcpy(h->topic, topic.p, topic.len);
    h->topic[topic.len] = '\0';
    h->env = (mbuf_t){ 0 };
    mbuf_append(&h->env, env, len);
}

/* After a replay ended: apply what came live meanwhile, in order. A hole in
 * it starts the next replay. */
static int drain(rsub_t *r, src_t *s)
{
    int applied = 0;
    size_t i = 0;
    for (; i < s->nbuf; i++) {
        held_t *h = &s->buf[i];
        if (h->seq <= s->pos) {
            r->c.duplicates++;
            continue;
        }
        if (h->seq != s->pos + 1) {
            r->c.gaps++;
            s->for_gap = true;
            request(r, s, s->pos + 1);
            break;
        }
        bus_msg_t m;
        if (decode(r, h->env.data, h->env.len, span_cstr(h->topic), &m) < 0) {
            s->pos = h->seq; /* unreadable: counted, passed over */
            continue;
        }
        int rc = deliver(r, s, &m);
        if (rc < 0) {
            applied = -1;
            break;
        }
        applied += rc;
    }
    if (i == 0)
        return applied;
    for (size_t k = 0; k < i; k++)
        mbuf_free(&s->buf[k].env);
    memmove(s->buf, s->buf + i, (s->nbuf - i) * sizeof *s->buf);
    s->nbuf -= i;
    return applied;
}

/* ---- live ----------------------------------------------------------------- */

static int on_live(rsub_t *r, span_t topic, const void *env, size_t len)
{
    bus_msg_t m;
    if (decode(r, env, len, topic, &m) < 0)
        return 0;
    src_t *s = find_src(r, m.src, true);
    if (!s)
        return 0;
    if (!s->known && !s->replaying && !s->want_replay) {
        if (r->start == RSUB_FROM_LIVE) {
            s->pos = m.seq - 1;
            s->known = true;
        } else {
            s->fresh = true; /* from the oldest the spool has */
            s->known = true;
            s->pos = 0;
        }
    }
    if (s->replaying || s->want_replay) {
        if (m.seq > s->pos)
            hold(r, s, m.seq, topic, env, len);
        else
            r->c.duplicates++;
        return 0;
    }
    if (m.seq <= s->pos) {
        r->c.duplicates++;
        return 0;
    }
    if (m.seq == s->pos + 1)
        return deliver(r, s, &m);
    /* a gap: keep this one and fetch what is missing */
    if (!s->fresh)
        r->c.gaps++;
    s->for_gap = !s->fresh;
    hold(r, s, m.seq, topic, env, len);
    request(r, s, s->pos + 1);
    return 0;
}

static int read_live(rsub_t *r)
{
    int applied = 0;
    for (int k = 0; k < 4096; k++) {
        zmq_msg_t t, e;
        zmq_msg_init(&t);
        if (zmq_msg_recv(&t, r->sub, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&t);
            break;
        }
        zmq_msg_init(&e);
        int rc = 0;
        if (!zmq_msg_more(&t) || zmq_msg_recv(&e, r->sub, 0) < 0 || zmq_msg_more(&e) ||
            zmq_msg_size(&t) == 0 || zmq_msg_size(&t) > TOPIC_MAX) {
            r->c.malformed++;
            while (zmq_msg_more(&e)) { /* drop what is left of a bad message */
                zmq_msg_close(&e);
                zmq_msg_init(&e);
                if (zmq_msg_recv(&e, r->sub, 0) < 0)
                    break;
            }
        } else {
            rc = on_live(r, span_make(zmq_msg_data(&t), zmq_msg_size(&t)), zmq_msg_data(&e),
                         zmq_msg_size(&e));
        }
        zmq_msg_close(&t);
        zmq_msg_close(&e);
        if (rc < 0)
            return -1;
        applied += rc;
    }
    return applied;
}

/* ---- replies -------------------------------------------------------------- */

static bool frame_is(zmq_msg_t *f, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(f) == n && !memcmp(zmq_msg_data(f), s, n);
}

static uint64_t frame_num(zmq_msg_t *f)
{
    char b[24];
    size_t n = zmq_msg_size(f);
    if (n == 0 || n >= sizeof b)
        return UINT64_MAX;
    memcpy(b, zmq_msg_data(f), n);
    b[n] = '\0';
    char *end;
    unsigned long long v = strtoull(b, &end, 10);
    return *end ? UINT64_MAX : v;
}

static int on_reply(rsub_t *r, size_t pub, zmq_msg_t *f, int n)
{
    if (n == 3 && frame_is(&f[0], "MSG")) {
        span_t topic = span_make(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]));
        bus_msg_t m;
        if (topic.len == 0 || topic.len > TOPIC_MAX ||
            decode(r, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]), topic, &m) < 0)
            return 0;
        r->c.replayed++;
        src_t *s = find_src(r, m.src, false);
        if (s && s->replaying) /* answered: a replay that sends is not retried */
            s->sent_ms = r->now;
        if (!s || !s->replaying || m.seq <= s->pos) {
            r->c.duplicates++;
            return 0;
        }
        /* after a refusal, the rest of the replay that brought it is
         * stale: the new one starts with the refused message */
        if (s->refused && m.seq != s->refused)
            return 0;
        s->refused = 0;
        /* a filtered replay skips what is not wanted: any seq above pos is next */
        return deliver(r, s, &m);
    }
    if (n < 3) {
        r->c.malformed++;
        return 0;
    }
    span_t srcname = span_make(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]));
    uint64_t num = frame_num(&f[n >= 4 ? 3 : 2]);
    if (frame_is(&f[0], "HELLO") && n == 4) {
        r->hello_ok[pub] = true;
        src_t *s = find_src(r, srcname, true);
        if (!s)
            return 0;
        s->pub = (int)pub;
        uint64_t last = frame_num(&f[3]);
        if (!s->known) {
            if (r->start == RSUB_FROM_LIVE)
                return 0; /* the first live message sets the start */
            s->known = true;
            s->fresh = true;
            s->pos = 0;
        }
        if (s->known && last != UINT64_MAX && last < s->pos) {
            /* the publisher is behind what we applied: it lost its spool and
             * counts from 1 again. Its messages are new: take them all */
            r->c.resets++;
            s->pos = 0;
            s->fresh = true;
            s->replaying = false;
        }
        if (s->want_replay || (!s->replaying && last != UINT64_MAX && s->pos < last))
            request(r, s, s->pos + 1);
        return 0;
    }
    src_t *s = find_src(r, srcname, false);
    if (!s || num == UINT64_MAX) {
        r->c.malformed++;
        return 0;
    }
    if (frame_is(&f[0], "END")) {
        if (!s->replaying || s->refused) /* refused: the stale replay's END */
            return 0;
        s->replaying = false;
        if (num > s->pos)
            s->pos = num; /* everything wanted up to here was sent */
        s->known = true;
        if (s->for_gap)
            r->c.gaps_healed++;
        s->for_gap = false;
        s->fresh = false;
        return drain(r, s);
    }
    if (frame_is(&f[0], "GONE")) {
        s->replaying = false;
        s->refused = 0;
        if (num == 0) { /* the publisher has nothing yet */
            s->fresh = false;
            return drain(r, s);
        }
        if (!s->fresh && num > s->pos + 1) {
            r->c.gaps_lost++;
            r->c.lost += num - s->pos - 1;
        }
        if (num <= s->pos + 1) {
            /* the publisher cannot read what follows pos (a damaged record):
             * count it lost and step over it, so the replays make progress */
            r->c.gaps_lost++;
            r->c.lost++;
            num = s->pos + 2;
        }
        s->fresh = false;
        s->for_gap = false;
        s->pos = num - 1;
        request(r, s, s->pos + 1);
        return 0;
    }
    if (frame_is(&f[0], "UNKNOWN")) { /* that publisher is not this src's: ask around */
        s->replaying = false;
        s->pub = -1;
        request(r, s, s->pos + 1);
        return 0;
    }
    r->c.malformed++;
    return 0;
}

static int read_replies(rsub_t *r, size_t pub)
{
    int applied = 0;
    for (int k = 0; k < 4096; k++) {
        zmq_msg_t f[5];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, r->dealers[pub], n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (n < 5) {
                zmq_msg_init(&f[n]);
                zmq_msg_move(&f[n++], &m);
            }
            zmq_msg_close(&m);
        }
        if (n == 0)
            break;
        int rc = on_reply(r, pub, f, n);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        if (rc < 0)
            return -1;
        applied += rc;
    }
    return applied;
}

int rsub_work(rsub_t *r, int64_t now_ms)
{
    if (!r->started_ms)
        r->started_ms = now_ms;
    r->now = now_ms;
    int applied = 0, rc;
    for (size_t i = 0; i < r->n; i++) {
        if ((rc = read_replies(r, i)) < 0)
            return -1;
        applied += rc;
    }
    if ((rc = read_live(r)) < 0)
        return -1;
    applied += rc;
    /* timers: unanswered requests and publishers not heard from yet */
    for (size_t i = 0; i < r->nsrcs; i++) {
        src_t *s = &r->srcs[i];
        if ((s->replaying && now_ms - s->sent_ms >= r->retry_ms) || (s->want_replay && s->pub < 0))
            request(r, s, s->pos + 1);
    }
    for (size_t i = 0; i < r->n; i++)
        if (!r->hello_ok[i] && now_ms - r->hello_ms[i] >= r->retry_ms)
            send_hello(r, i);
    return applied;
}

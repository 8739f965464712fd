#include "bus.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "mbuf.h"
#include "mpr.h"
#include "mpw.h"
#include "msg.h"
#include "tmtime.h"
#include "xalloc.h"

/* ---- publisher ---------------------------------------------------------- */

struct bus_pub {
    void *sock;
    char *src;
    uint64_t seq; /* last sent */
    bus_pub_opts_t opts;
    spool_t *spool;
    replay_srv_t *replay;
    uint64_t spool_errors;
    /* messages in the spool's write buffer, sent once it is written */
    struct queued {
        char topic[BUS_MAX_TOPIC + 1];
        zmq_msg_t msg;
    } *q;
    size_t nq, capq;
};

#define QUEUE_MAX 4096

/* Sends one message: topic frame, then the envelope (ZeroMQ takes it). */
static int send_now(bus_pub_t *p, const char *topic, zmq_msg_t *m)
{
    if (zmq_send(p->sock, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(m, p->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(m);
        return -1; /* the seq is spent: subscribers see a gap, which replay heals */
    }
    return 0;
}

int bus_pub_flush(bus_pub_t *p)
{
    if (!p->nq)
        return 0;
    if (p->spool && spool_flush(p->spool) < 0) {
        /* none of them may go out: nothing could replay them. Their seqs are
         * given back, so no subscriber ever sees them missing */
        for (size_t i = 0; i < p->nq; i++)
            zmq_msg_close(&p->q[i].msg);
        p->spool_errors += p->nq;
        p->nq = 0;
        p->seq = spool_last_seq(p->spool);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < p->nq; i++)
        if (send_now(p, p->q[i].topic, &p->q[i].msg) < 0)
            rc = -1;
    p->nq = 0;
    return rc;
}

bus_pub_t *bus_pub_new(void *zctx, const char *endpoint, const char *src,
                       const bus_pub_opts_t *opts, char *err, size_t errcap)
{
    void *s = zmq_socket(zctx, ZMQ_XPUB);
    if (!s) {
        snprintf(err, errcap, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int one = 1, linger = 2000;
    zmq_setsockopt(s, ZMQ_XPUB_VERBOSE, &one, sizeof one);
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (opts && opts->sndhwm != 0) {
        int hwm = opts->sndhwm < 0 ? 0 : opts->sndhwm; /* ZeroMQ's 0 is no limit */
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    }
    if (opts && opts->sock_setup && opts->sock_setup(s, opts->setup_arg) != 0) {
        snprintf(err, errcap, "bus socket setup failed: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    if (zmq_bind(s, endpoint) != 0) {
        snprintf(err, errcap, "cannot bind bus endpoint %s: %s", endpoint,
                 zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    bus_pub_t *p = xcalloc(1, sizeof *p);
    p->sock = s;
    p->src = xstrdup(src);
    if (opts)
        p->opts = *opts;
    p->seq = p->opts.next_seq ? p->opts.next_seq - 1 : 0;
    if (p->opts.spool) {
        p->spool = spool_open(p->opts.spool, err, errcap);
        if (!p->spool)
            goto fail;
        if (spool_last_seq(p->spool))
            p->seq = spool_last_seq(p->spool); /* a restart continues the seq */
    }
    if (p->opts.replay_endpoint) {
        if (!p->spool) {
            snprintf(err, errcap, "a replay endpoint needs a spool");
            goto fail;
        }
        p->replay = replay_srv_new(zctx, p->opts.replay_endpoint, src, p->spool,
                                   p->opts.sock_setup, p->opts.setup_arg, err, errcap);
        if (!p->replay)
            goto fail;
    }
    p->opts.spool = NULL; /* the caller's options need not outlive this call */
    p->opts.replay_endpoint = NULL;
    return p;
fail:
    bus_pub_destroy(&p);
    return NULL;
}

void *bus_pub_replay_socket(bus_pub_t *p) { return p->replay ? replay_srv_socket(p->replay) : NULL; }

bool bus_pub_work(bus_pub_t *p, int64_t now_ms)
{
    bus_pub_flush(p);
    if (p->spool)
        spool_tick(p->spool, now_ms);
    return p->replay ? replay_srv_work(p->replay, 256) : false;
}

void bus_pub_sync(bus_pub_t *p)
{
    bus_pub_flush(p);
    if (p->spool)
        spool_sync(p->spool);
}

void bus_pub_counters(const bus_pub_t *p, bus_pub_counters_t *c)
{
    memset(c, 0, sizeof *c);
    c->spool_errors = p->spool_errors;
    if (p->spool) {
        c->spool_bytes = spool_bytes(p->spool);
        c->spool_segments = spool_segments(p->spool);
        c->spool_oldest = spool_oldest_seq(p->spool);
        c->spool_repaired = spool_repaired(p->spool);
    }
    if (p->replay)
        c->replay = *replay_srv_counters(p->replay);
}

void bus_pub_destroy(bus_pub_t **pp)
{
    bus_pub_t *p = *pp;
    if (!p)
        return;
    bus_pub_flush(p);
    free(p->q);
    replay_srv_destroy(&p->replay);
    spool_close(&p->spool);
    if (p->sock)
        zmq_close(p->sock);
    free(p->src);
    free(p);
    *pp = NULL;
}

#define KIND_MAX 32

size_t bus_pub_headroom(const bus_pub_t *p)
{
    /* map, v, src, seq and ts as full-width integers, kind, "body" */
    return 1 + 2 + 1 + 4 + MPW_STR_HDR + strlen(p->src) + 4 + 9 + 3 + 9 + 5 + MPW_STR_HDR +
           KIND_MAX + 5;
}

static void free_base(void *data, void *hint)
{
    (void)data;
    free(hint);
}

int bus_pub_send_owned(bus_pub_t *p, const char *topic, const char *kind, mbuf_t *buf,
                       size_t body_off)
{
    size_t kl = strlen(kind);
    if (kl > KIND_MAX || body_off < bus_pub_headroom(p) || body_off > buf->len) {
        errno = EINVAL;
        return -1;
    }
    /* the header, written just before the body so the envelope is contiguous */
    char hdr[256 + 128];
    char *h = hdr;
    uint64_t seq = p->seq + 1;
    h = mpw_map(h, 6);
    h = MPW_KEY(h, "v");
    h = mpw_uint(h, MSG_VERSION);
    h = MPW_KEY(h, "src");
    h = mpw_str(h, p->src, strlen(p->src));
    h = MPW_KEY(h, "seq");
    *h++ = (char)0xcf;
    h = mpw_be64(h, seq);
    h = MPW_KEY(h, "ts");
    *h++ = (char)0xd3;
    h = mpw_be64(h, (uint64_t)tmtime_now_ns());
    h = MPW_KEY(h, "kind");
    h = mpw_str(h, kind, kl);
    h = MPW_KEY(h, "body");
    size_t hl = (size_t)(h - hdr);
    size_t start = body_off - hl;
    memcpy(buf->data + start, hdr, hl);
    size_t len = buf->len - start;
    if (len > BUS_MAX_MSG) {
        errno = EMSGSIZE;
        return -1;
    }
    if (p->opts.before_send &&
        p->opts.before_send(p->opts.arg, topic, seq, buf->data + start, len) != 0)
        return -1;
    size_t tl = strlen(topic);
    if (tl == 0 || tl > BUS_MAX_TOPIC) {
        errno = EINVAL;
        return -1;
    }
    if (p->spool && spool_append(p->spool, seq, topic, buf->data + start, len) < 0) {
        p->spool_errors++; /* not in the spool, so not sent: nobody could replay it */
        return -1;
    }
    p->seq = seq;
    /* ZeroMQ takes the buffer as it is and frees it when sent */
    zmq_msg_t m;
    char *base = buf->data;
    *buf = (mbuf_t){ 0 };
    if (zmq_msg_init_data(&m, base + start, len, free_base, base) != 0) {
        free(base);
        return -1;
    }
    if (!p->spool)
        return send_now(p, topic, &m);
    /* with a spool: sent once the spool's buffer is written (bus_pub_flush) */
    if (p->nq == p->capq) {
        p->capq = p->capq ? p->capq * 2 : 64;
        p->q = xreallocarray(p->q, p->capq, sizeof *p->q);
    }
    memcpy(p->q[p->nq].topic, topic, tl + 1);
    zmq_msg_init(&p->q[p->nq].msg);
    zmq_msg_move(&p->q[p->nq].msg, &m);
    zmq_msg_close(&m);
    p->nq++;
    if (!p->opts.defer || p->nq >= QUEUE_MAX)
        return bus_pub_flush(p);
    return 0;
}

int bus_pub_send(bus_pub_t *p, const char *topic, const char *kind, const void *head,
                 size_t headlen, const void *tail, size_t taillen)
{
    size_t room = bus_pub_headroom(p);
    mbuf_t b = { 0 };
    mbuf_reserve(&b, room + headlen + taillen);
    b.len = room;
    mbuf_append(&b, head, headlen);
    mbuf_append(&b, tail, taillen);
    int rc = bus_pub_send_owned(p, topic, kind, &b, room);
    mbuf_free(&b); /* still ours when the send was refused */
    return rc;
}

uint64_t bus_pub_last_seq(const bus_pub_t *p) { return p->seq; }
const char *bus_pub_src(const bus_pub_t *p) { return p->src; }
void *bus_pub_socket(bus_pub_t *p) { return p->sock; }

bool bus_pub_poll_subscribed(bus_pub_t *p, const char *topic)
{
    bool hit = false;
    size_t tl = strlen(topic);
    for (;;) {
        char buf[256];
        int n = zmq_recv(p->sock, buf, sizeof buf, ZMQ_DONTWAIT);
        if (n < 0)
            break;
        if (n > (int)sizeof buf)
            n = (int)sizeof buf;
        /* byte 1 = subscribe; the rest is the prefix */
        if (n >= 1 && buf[0] == 1 && (size_t)(n - 1) <= tl && memcmp(buf + 1, topic, (size_t)n - 1) == 0)
            hit = true;
    }
    return hit;
}

/* ---- envelope ----------------------------------------------------------- */

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

/* A publisher's name is printable ASCII without spaces: consumers keep it
 * as a key (file names, database rows). */
static bool src_printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e)
            return false;
    return true;
}

int bus_envelope_decode(const void *data, size_t len, msgpack_unpacked *up, bus_msg_t *m,
                        char *err, size_t errcap)
{
    if (len > BUS_MAX_MSG || mpr_validate(data, len, BUS_MAX_DEPTH) < 0) {
        snprintf(err, errcap, "envelope is not one well-formed msgpack value");
        return -1;
    }
    size_t off = 0;
    if (msgpack_unpack_next(up, data, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        snprintf(err, errcap, "envelope does not unpack");
        return -1;
    }
    const msgpack_object *o = &up->data;
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, errcap, "envelope is not a map");
        return -1;
    }
    bool have_v = false, have_seq = false, have_ts = false;
    uint64_t v = 0;
    m->src = m->kind = SPAN_NULL;
    m->body = NULL;
    m->missed = 0;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *val = &o->via.map.ptr[i].val;
        if (key_is(k, "v") && val->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            v = val->via.u64;
            have_v = true;
        } else if (key_is(k, "src") && val->type == MSGPACK_OBJECT_STR && val->via.str.size > 0 &&
                   val->via.str.size <= 256 && src_printable(val->via.str.ptr, val->via.str.size)) {
            m->src = span_make(val->via.str.ptr, val->via.str.size);
        } else if (key_is(k, "seq") && val->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                   val->via.u64 > 0) {
            m->seq = val->via.u64;
            have_seq = true;
        } else if (key_is(k, "ts") && val->type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
                   val->via.u64 <= (uint64_t)INT64_MAX) {
            m->ts = (int64_t)val->via.u64;
            have_ts = true;
        } else if (key_is(k, "kind") && val->type == MSGPACK_OBJECT_STR && val->via.str.size <= 64) {
            m->kind = span_make(val->via.str.size ? val->via.str.ptr : "", val->via.str.size);
        } else if (key_is(k, "body")) {
            m->body = val;
        }
    }
    /* the version first: another version may well have other fields */
    if (have_v && v != MSG_VERSION) {
        snprintf(err, errcap, "envelope version %llu is not %d", (unsigned long long)v, MSG_VERSION);
        errno = EPROTONOSUPPORT;
        return -1;
    }
    if (!have_v || !m->src.p || !have_seq || !have_ts || !m->kind.p || !m->body) {
        snprintf(err, errcap, "envelope lacks v, src, seq, ts, kind or body");
        return -1;
    }
    return 0;
}

/* ---- subscriber --------------------------------------------------------- */

typedef struct {
    char *src;
    uint64_t last;
} src_pos_t;

#define BUS_MAX_SRCS 4096

struct bus_sub {
    void *sock;
    zmq_msg_t topic, env;
    bool have_msgs;
    msgpack_unpacked up;
    src_pos_t *srcs;
    size_t nsrcs;
    bus_sub_counters_t c;
};

bus_sub_t *bus_sub_new(void *zctx, int rcvhwm, char *err, size_t errcap)
{
    void *s = zmq_socket(zctx, ZMQ_SUB);
    if (!s) {
        snprintf(err, errcap, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int64_t maxsz = BUS_MAX_MSG + BUS_MAX_TOPIC;
    int zero = 0, ivl = 100, ivlmax = 2000;
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxsz, sizeof maxsz);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(s, ZMQ_RECONNECT_IVL_MAX, &ivlmax, sizeof ivlmax);
    if (rcvhwm > 0)
        zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    bus_sub_t *b = xcalloc(1, sizeof *b);
    b->sock = s;
    zmq_msg_init(&b->topic);
    zmq_msg_init(&b->env);
    msgpack_unpacked_init(&b->up);
    return b;
}

void bus_sub_destroy(bus_sub_t **pb)
{
    bus_sub_t *b = *pb;
    if (!b)
        return;
    zmq_msg_close(&b->topic);
    zmq_msg_close(&b->env);
    msgpack_unpacked_destroy(&b->up);
    zmq_close(b->sock);
    for (size_t i = 0; i < b->nsrcs; i++)
        free(b->srcs[i].src);
    free(b->srcs);
    free(b);
    *pb = NULL;
}

int bus_sub_connect(bus_sub_t *b, const char *endpoint) { return zmq_connect(b->sock, endpoint); }

int bus_sub_subscribe(bus_sub_t *b, const char *prefix)
{
    return zmq_setsockopt(b->sock, ZMQ_SUBSCRIBE, prefix, strlen(prefix));
}

void *bus_sub_socket(bus_sub_t *b) { return b->sock; }
const bus_sub_counters_t *bus_sub_counters(const bus_sub_t *b) { return &b->c; }

static void track(bus_sub_t *b, bus_msg_t *m)
{
    src_pos_t *pos = NULL;
    for (size_t i = 0; i < b->nsrcs; i++) {
        if (span_eq_cstr(m->src, b->srcs[i].src)) {
            pos = &b->srcs[i];
            break;
        }
    }
    if (!pos) {
        if (b->nsrcs >= BUS_MAX_SRCS)
            return;
        b->srcs = xreallocarray(b->srcs, b->nsrcs + 1, sizeof *b->srcs);
        pos = &b->srcs[b->nsrcs++];
        pos->src = xstrndup(m->src.p, m->src.len);
        pos->last = m->seq; /* a subscriber joining late has missed nothing it asked for */
        return;
    }
    if (m->seq > pos->last + 1) {
        m->missed = m->seq - pos->last - 1;
        b->c.gaps++;
        b->c.missed += m->missed;
    } else if (m->seq <= pos->last) {
        b->c.restarts++;
    }
    pos->last = m->seq;
}

int bus_sub_recv(bus_sub_t *b, bus_msg_t *m, int flags, char *err, size_t errcap)
{
    err[0] = '\0';
    if (zmq_msg_recv(&b->topic, b->sock, flags) < 0)
        return 0;
    int more = zmq_msg_more(&b->topic);
    if (!more) {
        b->c.malformed++;
        snprintf(err, errcap, "single-frame message");
        return -1;
    }
    if (zmq_msg_recv(&b->env, b->sock, 0) < 0) {
        b->c.malformed++;
        snprintf(err, errcap, "lost second frame");
        return -1;
    }
    /* drain any unexpected further frames */
    while (zmq_msg_more(&b->env)) {
        zmq_msg_t extra;
        zmq_msg_init(&extra);
        zmq_msg_recv(&extra, b->sock, 0);
        more = zmq_msg_more(&extra);
        zmq_msg_close(&extra);
        if (!more) {
            b->c.malformed++;
            snprintf(err, errcap, "more than two frames");
            return -1;
        }
    }
    size_t tl = zmq_msg_size(&b->topic);
    if (tl == 0 || tl > BUS_MAX_TOPIC) {
        b->c.malformed++;
        snprintf(err, errcap, "topic of %zu bytes", tl);
        return -1;
    }
    errno = 0;
    if (bus_envelope_decode(zmq_msg_data(&b->env), zmq_msg_size(&b->env), &b->up, m, err,
                            errcap) < 0) {
        if (errno == EPROTONOSUPPORT)
            b->c.newer++;
        else
            b->c.malformed++;
        return -1;
    }
    m->topic = span_make(zmq_msg_data(&b->topic), tl);
    b->c.received++;
    track(b, m);
    return 1;
}

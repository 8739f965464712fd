/* bus: the pipeline's ZeroMQ pub/sub. Each message is two frames, the topic
 * and a msgpack envelope {v, src, seq, ts, kind, body}; seq counts one
 * publisher's messages from 1 without gaps. Publishers are XPUB sockets so a
 * stage can notice a new subscriber (to answer `stats` at once). Subscribers
 * check each envelope's shape before use and track the last seq per src to
 * count gaps. The spool and replay (DESIGN section 4) plug in through
 * bus_pub_opts_t.before_send and the gap information in bus_msg_t. */
#ifndef TOKMON_BUS_H
#define TOKMON_BUS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mbuf.h"
#include "replay.h"
#include "span.h"
#include "spool.h"

#define BUS_MAX_MSG (64u << 20) /* bytes in one envelope */
#define BUS_MAX_TOPIC 64
#define BUS_MAX_DEPTH 16

/* ---- envelope ----------------------------------------------------------- */

typedef struct {
    span_t topic;
    span_t src;
    uint64_t seq;
    int64_t ts; /* unix ns when published */
    span_t kind;
    const msgpack_object *body;
    uint64_t missed; /* seqs of this src skipped just before this one (0: none) */
} bus_msg_t;

/* ---- publisher ---------------------------------------------------------- */

typedef struct bus_pub bus_pub_t;

typedef struct {
    int sndhwm; /* 0: ZeroMQ's default; < 0: no limit */
    /* Called with each encoded envelope after its seq is assigned and before
     * it is sent; a non-zero return stops the send and bus_pub_send returns
     * -1 (the seq is not consumed). NULL: no hook. */
    int (*before_send)(void *arg, const char *topic, uint64_t seq, const void *env, size_t len);
    void *arg;
    uint64_t next_seq; /* first seq to use; 0 means 1 (a spool overrides it) */
    /* The spool (DESIGN section 4): when set, every message is appended to
     * it before it is sent, and seq continues from the spool's last. */
    const spool_opts_t *spool;
    /* The replay ROUTER beside the PUB (needs the spool); NULL: none. */
    const char *replay_endpoint;
    /* With a spool: keep messages until bus_pub_flush (or bus_pub_work),
     * so one write puts a whole loop turn's messages in the spool; false:
     * each message is written and sent at once. */
    bool defer;
    /* Called on each socket before it binds (CURVE); may be NULL. */
    int (*sock_setup)(void *sock, void *arg);
    void *setup_arg;
} bus_pub_opts_t;

typedef struct {
    uint64_t spool_errors;    /* messages not sent because the spool refused them */
    uint64_t spool_bytes, spool_segments, spool_oldest, spool_repaired;
    replay_counters_t replay;
} bus_pub_counters_t;

/* Binds an XPUB socket at endpoint. src names this publisher (stable across
 * its restarts). Returns NULL with a message in err on failure. */
bus_pub_t *bus_pub_new(void *zctx, const char *endpoint, const char *src,
                       const bus_pub_opts_t *opts, char *err, size_t errcap);
void bus_pub_destroy(bus_pub_t **pub);

/* Publishes body (head then tail, concatenated, forming one msgpack value)
 * on topic with the next seq. Never blocks: a subscriber past its high-water
 * mark loses the message (counted by the subscriber as a gap). Returns 0 or
 * -1 with errno. */
int bus_pub_send(bus_pub_t *pub, const char *topic, const char *kind, const void *head,
                 size_t headlen, const void *tail, size_t taillen);

/* Zero-copy publishing, for the collector's batches: buf holds the body
 * from body_off on, with at least bus_pub_headroom() free bytes before it,
 * where the envelope header is written. On success ZeroMQ owns the memory
 * and *buf is reset to empty; on failure *buf is unchanged (the caller
 * frees or reuses it). Returns 0 or -1 with errno. */
size_t bus_pub_headroom(const bus_pub_t *pub);
int bus_pub_send_owned(bus_pub_t *pub, const char *topic, const char *kind, mbuf_t *buf,
                       size_t body_off);

uint64_t bus_pub_last_seq(const bus_pub_t *pub);

/* The replay socket, for zmq_poll (ZMQ_POLLIN), or NULL when there is none. */
void *bus_pub_replay_socket(bus_pub_t *pub);

/* The publisher's own work, from its loop: replay requests and running
 * replays, the spool's group fsync and retention (now: monotonic ms).
 * Returns true while replays are running (call again soon). */
bool bus_pub_work(bus_pub_t *pub, int64_t now_ms);

/* Writes the spool's buffer and sends the messages waiting for it (defer).
 * Returns 0, or -1 when the spool refused them (counted; none is sent). */
int bus_pub_flush(bus_pub_t *pub);

/* Flushes the spool to disk (on shutdown). */
void bus_pub_sync(bus_pub_t *pub);

void bus_pub_counters(const bus_pub_t *pub, bus_pub_counters_t *c);
const char *bus_pub_src(const bus_pub_t *pub);

/* The ZeroMQ socket, for zmq_poll (ZMQ_POLLIN: subscription notices). */
void *bus_pub_socket(bus_pub_t *pub);

/* Reads pending subscription notices; returns true when a new subscription
 * covers topic (its prefix is a prefix of topic). */
bool bus_pub_poll_subscribed(bus_pub_t *pub, const char *topic);

/* ---- subscriber --------------------------------------------------------- */

typedef struct bus_sub bus_sub_t;

typedef struct {
    uint64_t received;  /* envelopes decoded */
    uint64_t malformed; /* frames or envelopes refused */
    uint64_t newer;     /* envelopes with a v this reader does not know */
    uint64_t gaps;      /* times a src skipped seqs */
    uint64_t missed;    /* seqs skipped in all */
    uint64_t restarts;  /* a src whose seq went back (a publisher lost its state) */
} bus_sub_counters_t;

bus_sub_t *bus_sub_new(void *zctx, int rcvhwm, char *err, size_t errcap);
void bus_sub_destroy(bus_sub_t **sub);
int bus_sub_connect(bus_sub_t *sub, const char *endpoint);
/* Subscribes to a topic prefix ("" for all). */
int bus_sub_subscribe(bus_sub_t *sub, const char *prefix);
void *bus_sub_socket(bus_sub_t *sub);

/* Receives one message. flags: 0 blocks, ZMQ_DONTWAIT does not. Returns 1
 * with *msg valid until the next call, 0 when nothing is waiting (or
 * interrupted), -1 when a message was refused (counted; reason in err). */
int bus_sub_recv(bus_sub_t *sub, bus_msg_t *msg, int flags, char *err, size_t errcap);

const bus_sub_counters_t *bus_sub_counters(const bus_sub_t *sub);

/* Decodes an envelope frame. The unpacked objects borrow from data and live
 * in up. Returns 0 or -1 with a reason in err. */
int bus_envelope_decode(const void *data, size_t len, msgpack_unpacked *up, bus_msg_t *msg,
                        char *err, size_t errcap);

#endif

/* rsub: the reliable subscriber of DESIGN section 4. It reads every
 * publisher of a list live (subscribed to all their topics, so a missing seq
 * is always seen), keeps per src the last seq applied, asks the publisher's
 * replay service for what is missing (on start, and on every gap), and hands
 * each wanted message to the caller exactly once and in seq order per src.
 * Where the position lives is the caller's business: it seeds positions
 * before starting and saves them (with its own durable state) as messages
 * are applied. Gaps healed by replay and gaps lost (the publisher's spool no
 * longer has them) are counted. One thread owns an rsub. */
#ifndef TOKMON_RSUB_H
#define TOKMON_RSUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "bus.h"

typedef struct rsub rsub_t;

typedef enum {
    RSUB_FROM_OLDEST, /* a src without a position: everything its spool still has */
    RSUB_FROM_LIVE,   /* a src without a position: from the first message seen */
} rsub_start_t;

typedef struct {
    const char *const *pubs;    /* PUB endpoints */
    const char *const *replays; /* the matching replay endpoints */
    size_t n;
    const char *const *prefixes; /* wanted topics (prefixes); none: all */
    size_t nprefixes;
    rsub_start_t start;
    int rcvhwm;
    int64_t retry_ms; /* resend an unanswered request after this long */
    size_t max_buffered; /* live messages kept while a replay runs */
    /* called on each socket before it connects (CURVE); may be NULL */
    int (*sock_setup)(void *sock, void *arg);
    void *setup_arg;
} rsub_opts_t;

/* Applies one message; m and its body are valid during the call. Return 0,
 * or -1 to stop (rsub_work then returns -1 and the message counts as not
 * applied). */
typedef int (*rsub_apply_fn)(void *arg, const bus_msg_t *m);

typedef struct {
    uint64_t applied;     /* messages handed to apply */
    uint64_t skipped;     /* not wanted (topic) */
    uint64_t duplicates;  /* seen again, ignored */
    uint64_t gaps;        /* times a src skipped seqs live */
    uint64_t gaps_healed; /* replays that filled a gap */
    uint64_t gaps_lost;   /* replays answered GONE */
    uint64_t lost;        /* seqs no replay could bring back */
    uint64_t replays;     /* REPLAY requests sent */
    uint64_t replayed;    /* messages received by replay */
    uint64_t malformed;   /* frames or envelopes refused */
    uint64_t overflow;    /* live messages dropped from a full buffer (replay fetches them) */
    uint64_t resets;      /* publishers found behind our position (they lost their spool) */
} rsub_counters_t;

rsub_t *rsub_new(void *zctx, const rsub_opts_t *o, rsub_apply_fn apply, void *arg, char *err,
                 size_t errcap);
void rsub_destroy(rsub_t **r);

/* Seeds the last applied seq of src (from the caller's durable state),
 * before rsub_start. */
void rsub_set_position(rsub_t *r, const char *src, uint64_t seq);

/* Connects, subscribes and asks every publisher where it stands. */
int rsub_start(rsub_t *r, char *err, size_t errcap);

/* Fills items with the sockets to poll (ZMQ_POLLIN); returns how many
 * (at most max). */
int rsub_poll_items(rsub_t *r, zmq_pollitem_t *items, int max);

/* Handles what is waiting on the sockets and the timers (now: monotonic
 * ms). Returns the number of messages applied, or -1 when apply said stop. */
int rsub_work(rsub_t *r, int64_t now_ms);

/* True while some src is being replayed or waits for an answer. */
bool rsub_busy(const rsub_t *r);

/* True once the publishers have answered (one silent for a retry period
 * counts as not running) and nothing is being replayed: what the subscriber
 * holds is complete up to the live stream. */
bool rsub_caught_up(const rsub_t *r);

void rsub_each_position(const rsub_t *r, void (*fn)(const char *src, uint64_t seq, void *arg),
                        void *arg);
const rsub_counters_t *rsub_counters(const rsub_t *r);

#endif

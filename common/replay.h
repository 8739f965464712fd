/* replay: the ROUTER socket beside each publisher that answers replay
 * requests from its spool (DESIGN section 4). Frames, after the ROUTER's
 * routing id:
 *
 *   request  HELLO                         → HELLO src oldest_seq last_seq
 *   request  REPLAY src from_seq [prefix...] → MSG topic envelope (each message
 *            from from_seq on whose topic starts with a prefix, none: all),
 *            then END src last_seq: every message up to last_seq was sent;
 *            or GONE src oldest_seq when the spool no longer holds from_seq;
 *            or UNKNOWN src when src is not this publisher's.
 *
 * Numbers are decimal text. Many replays run at once, a slice each turn,
 * while the publisher keeps publishing; a new request from a peer replaces
 * its running one. A peer that stops reading is paused (the ROUTER's
 * high-water mark), one that disconnects is dropped. */
#ifndef TOKMON_REPLAY_H
#define TOKMON_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

/* Prefixes one REPLAY may name (a shard of the aggregator asks for up to
 * 256 ev.xx and metric); a request with more is malformed. */
#define REPLAY_MAX_PREFIXES 300

typedef struct replay_srv replay_srv_t;

typedef struct {
    uint64_t requests, hellos, messages, ends, gones, unknowns, dropped, malformed;
    uint64_t active;
} replay_counters_t;

/* Binds a ROUTER at endpoint answering for src from spool (borrowed).
 * sock_setup, when not NULL, is called on the socket before it binds (CURVE).
 * Returns NULL with a reason in err. */
replay_srv_t *replay_srv_new(void *zctx, const char *endpoint, const char *src, spool_t *spool,
                             int (*sock_setup)(void *sock, void *arg), void *setup_arg, char *err,
                             size_t errcap);
void replay_srv_destroy(replay_srv_t **r);
void *replay_srv_socket(replay_srv_t *r);

/* Reads pending requests and sends up to budget messages of the running
 * replays. Returns true while replays remain (call again soon). */
bool replay_srv_work(replay_srv_t *r, int budget);

const replay_counters_t *replay_srv_counters(const replay_srv_t *r);

#endif

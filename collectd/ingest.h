/* ingest: one datagram (or one TCP block) in, records out. Checks the
 * signature, splits the records, parses StatsD lines, JSON and msgpack usage
 * events, normalises and prices usage, and hands each accepted record to the
 * sink; every refused record is counted by reason and one in N is logged with
 * its source. No sockets here, so tests and fuzzers drive it directly. */
#ifndef TOKMON_INGEST_H
#define TOKMON_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "auth.h"
#include "cfg.h"
#include "msg.h"
#include "prices.h"
#include "reason.h"
#include "stats.h"

typedef struct ingest ingest_t;

typedef struct {
    /* shard: the ev.xx byte; u->recv_ts is when its datagram arrived */
    void (*usage)(void *arg, unsigned shard, const msg_usage_t *u);
    /* recv_ns: when the sample's datagram arrived (unix ns) */
    void (*sample)(void *arg, const msg_sample_t *s, int64_t recv_ns);
    void *arg;
} ingest_sink_t;

/* Borrows cfg, prices, keys and stats (which must outlive it or be replaced
 * with ingest_reload). keys may be NULL when auth is off. */
ingest_t *ingest_new(const cfg_t *cfg, prices_t *prices, const auth_keys_t *keys, stats_t *stats,
                     const ingest_sink_t *sink);
void ingest_destroy(ingest_t **in);

/* Swaps in a reloaded config, price table and keys (the old ones may be
 * freed after this returns). The replay guard is kept. */
void ingest_reload(ingest_t *in, const cfg_t *cfg, prices_t *prices, const auth_keys_t *keys);

/* Handles one datagram received at recv_ns (unix ns) from the given peer
 * (NULL when unknown). */
void ingest_datagram(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                     socklen_t fromlen, int64_t recv_ns);

/* Handles newline-framed StatsD and JSON lines from a stream (TCP), without
 * signature checks or msgpack. */
void ingest_lines(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                  socklen_t fromlen, int64_t recv_ns);

/* Handles a TCP block: lines ending with a |sig line. On a stream the signed
 * part may start after some unsigned lines that arrived just before it, so
 * when the whole block does not verify, blocks starting at each of the next
 * few lines are tried; lines before the signed part are taken unsigned
 * (auth = optional) or refused (auth = required). */
void ingest_tcp_block(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                      socklen_t fromlen, int64_t recv_ns);

/* Counts one refused record that never reached the parsers (a TCP line over
 * max_line, say) and logs it like the others. */
void ingest_reject(ingest_t *in, reason_t reason, const struct sockaddr *from, socklen_t fromlen,
                   const char *data, size_t len);

/* The shard byte of a record: the low byte of FNV-1a 64 over the user id, or
 * the account id when there is no user. */
unsigned ingest_shard(const msg_usage_t *u);

#endif

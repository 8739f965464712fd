/* buscfg: a stage's bus as its config describes it: publishers with their
 * spool under state_dir/spool/<src> and their replay service, reliable
 * subscribers of a kind of publisher, and CURVE when curve = on. The glue
 * every daemon and tool would otherwise repeat. */
#ifndef TOKMON_BUSCFG_H
#define TOKMON_BUSCFG_H

#include <stdbool.h>
#include <stddef.h>

#include "bus.h"
#include "cfg.h"
#include "curve.h"
#include "mbuf.h"
#include "rsub.h"
#include "stats.h"

typedef struct {
    bool curve;
    curve_opts_t server, client;
    curve_zap_t *zap;
} buscfg_t;

/* Reads what curve = on needs for the roles asked (a publisher: the server
 * key pair and the allow-list, whose ZAP handler starts in zctx; a
 * subscriber: the server public key and the client key pair). Does nothing
 * when curve is off. Returns 0 or -1 with a reason in err. */
int buscfg_init(buscfg_t *b, void *zctx, const cfg_t *cfg, bool publisher, bool subscriber,
                char *err, size_t errcap);
/* Stops the ZAP handler; before zmq_ctx_term. */
void buscfg_close(buscfg_t *b);

/* The publisher of kind peer (CFG_PEER_*) named src: binds the first
 * endpoint of its kind, with the spool and replay service unless
 * [bus] spool = off. Messages wait for the stage's loop to call
 * bus_pub_work or bus_pub_flush (one spool write a turn). */
bus_pub_t *buscfg_publisher(buscfg_t *b, void *zctx, const cfg_t *cfg, int peer, const char *src,
                            char *err, size_t errcap);

/* The same for the index-th endpoint of its kind (one of several shards). */
bus_pub_t *buscfg_publisher_at(buscfg_t *b, void *zctx, const cfg_t *cfg, int peer, size_t index,
                               const char *src, char *err, size_t errcap);

/* Where the publisher src keeps its spool (a new string). */
char *buscfg_spool_dir(const cfg_t *cfg, const char *src);

/* A reliable subscriber of every publisher of the kinds in peers. */
rsub_t *buscfg_subscriber(buscfg_t *b, void *zctx, const cfg_t *cfg, const int *peers,
                          size_t npeers, const char *const *prefixes, size_t nprefixes,
                          rsub_start_t start, rsub_apply_fn apply, void *arg, char *err,
                          size_t errcap);

/* Sets a plain subscriber socket up as a CURVE client when curve is on
 * (before it connects). Returns 0 or -1. */
int buscfg_client_socket(buscfg_t *b, void *sock);

/* A stage's `stats` message: copies pub's counters (and rsub's, unless
 * NULL) into st, packs st into buf and sends it on pub. */
void buscfg_send_stats(bus_pub_t *pub, const rsub_t *rsub, stats_t *st, mbuf_t *buf);

/* Copies a publisher's or subscriber's counters into a stage's stats. */
void buscfg_pub_stats(const bus_pub_t *pub, stats_t *st);
void buscfg_rsub_stats(const rsub_t *r, stats_t *st);

#endif

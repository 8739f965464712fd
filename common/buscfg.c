#include "buscfg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "tmtime.h"
#include "xalloc.h"

int buscfg_init(buscfg_t *b, void *zctx, const cfg_t *cfg, bool publisher, bool subscriber,
                char *err, size_t errcap)
{
    memset(b, 0, sizeof *b);
    const cfg_bus_t *c = &cfg->bus;
    if (!c->curve)
        return 0;
    b->curve = true;
    if (publisher) {
        if (!c->curve_server_key[0] || !c->curve_allow[0]) {
            snprintf(err, errcap, "[bus] curve = on: a publisher needs curve_server_key and curve_allow");
            return -1;
        }
        b->server.server = true;
        if (curve_keypair_load(c->curve_server_key, b->server.public_key, b->server.secret_key, err,
                               errcap) < 0)
            return -1;
        b->zap = curve_zap_start(zctx, c->curve_allow, err, errcap);
        if (!b->zap)
            return -1;
    }
    if (subscriber) {
        if (!c->curve_client_key[0] || strlen(c->curve_server_public) != CURVE_KEY_Z85) {
            snprintf(err, errcap,
                     "[bus] curve = on: a subscriber needs curve_client_key and curve_server_public");
            buscfg_close(b);
            return -1;
        }
        memcpy(b->client.server_public, c->curve_server_public, CURVE_KEY_Z85 + 1);
        if (curve_keypair_load(c->curve_client_key, b->client.public_key, b->client.secret_key, err,
                               errcap) < 0) {
            buscfg_close(b);
            return -1;
        }
    }
    return 0;
}

void buscfg_close(buscfg_t *b)
{
    curve_zap_stop(&b->zap);
}

char *buscfg_spool_dir(const cfg_t *cfg, const char *src)
{
    return xasprintf("%s/spool/%s", cfg->global.state_dir, src);
}

bus_pub_t *buscfg_publisher(buscfg_t *b, void *zctx, const cfg_t *cfg, int peer, const char *src,
                            char *err, size_t errcap)
{
    return buscfg_publisher_at(b, zctx, cfg, peer, 0, src, err, errcap);
}

bus_pub_t *buscfg_publisher_at(buscfg_t *b, void *zctx, const cfg_t *cfg, int peer, size_t index,
                               const char *src, char *err, size_t errcap)
{
    static const char *const kinds[] = { "collectd", "aggregator", "alerter", "pgwriter" };
    const cfg_bus_t *c = &cfg->bus;
    const cfg_peers_t *p = &c->peers[peer];
    if (index >= p->pub.n) {
        snprintf(err, errcap, "[bus] %s lists %zu endpoint(s); publisher %zu needs its own",
                 kinds[peer], p->pub.n, index);
        return NULL;
    }
    char *dir = buscfg_spool_dir(cfg, src);
    spool_opts_t so = {
        .dir = dir,
        .segment_bytes = c->spool_segment_size,
        .segment_age_ms = c->spool_segment_age,
        .max_bytes = c->spool_max_size,
        .max_age_ms = c->spool_max_age,
        .fsync_ms = c->spool_fsync,
    };
    bus_pub_opts_t po = {
        .sndhwm = (int)c->sndhwm,
        .spool = c->spool ? &so : NULL,
        .replay_endpoint = c->spool ? p->replay.v[index] : NULL,
        .defer = true, /* the stage's loop flushes: bus_pub_work, bus_pub_flush */
        .sock_setup = b->curve ? curve_sock_setup : NULL,
        .setup_arg = b->curve ? &b->server : NULL,
    };
    bus_pub_t *pub = bus_pub_new(zctx, p->pub.v[index], src, &po, err, errcap);
    free(dir);
    return pub;
}

rsub_t *buscfg_subscriber(buscfg_t *b, void *zctx, const cfg_t *cfg, const int *peers,
                          size_t npeers, const char *const *prefixes, size_t nprefixes,
                          rsub_start_t start, rsub_apply_fn apply, void *arg, char *err,
                          size_t errcap)
{
    const char *pubs[64], *replays[64];
    size_t n = 0;
    for (size_t k = 0; k < npeers; k++) {
        const cfg_peers_t *p = &cfg->bus.peers[peers[k]];
        for (size_t i = 0; i < p->pub.n && n < 64; i++) {
            pubs[n] = p->pub.v[i];
            replays[n++] = p->replay.v[i];
        }
    }
    rsub_opts_t o = {
        .pubs = pubs,
        .replays = replays,
        .n = n,
        .prefixes = prefixes,
        .nprefixes = nprefixes,
        .start = start,
        .rcvhwm = (int)cfg->bus.rcvhwm,
        .sock_setup = b->curve ? curve_sock_setup : NULL,
        .setup_arg = b->curve ? &b->client : NULL,
    };
    return rsub_new(zctx, &o, apply, arg, err, errcap);
}

int buscfg_client_socket(buscfg_t *b, void *sock)
{
    return b->curve ? curve_sock_setup(sock, &b->client) : 0;
}

void buscfg_pub_stats(const bus_pub_t *pub, stats_t *st)
{
    bus_pub_counters_t c;
    bus_pub_counters(pub, &c);
    *stats_counter(st, "bus_spool_errors_total", NULL) = (int64_t)c.spool_errors;
    *stats_gauge(st, "bus_spool_bytes", NULL) = (int64_t)c.spool_bytes;
    *stats_gauge(st, "bus_spool_segments", NULL) = (int64_t)c.spool_segments;
    *stats_gauge(st, "bus_spool_oldest_seq", NULL) = (int64_t)c.spool_oldest;
    *stats_gauge(st, "bus_last_seq", NULL) = (int64_t)bus_pub_last_seq(pub);
    *stats_counter(st, "bus_spool_repaired_bytes_total", NULL) = (int64_t)c.spool_repaired;
    *stats_counter(st, "bus_replay_requests_total", NULL) = (int64_t)c.replay.requests;
    *stats_counter(st, "bus_replay_messages_total", NULL) = (int64_t)c.replay.messages;
    *stats_counter(st, "bus_replay_gone_total", NULL) = (int64_t)c.replay.gones;
    *stats_counter(st, "bus_replay_dropped_total", NULL) = (int64_t)c.replay.dropped;
    *stats_gauge(st, "bus_replay_active", NULL) = (int64_t)c.replay.active;
}

void buscfg_rsub_stats(const rsub_t *r, stats_t *st)
{
    const rsub_counters_t *c = rsub_counters(r);
    *stats_counter(st, "bus_applied_total", NULL) = (int64_t)c->applied;
    *stats_counter(st, "bus_duplicates_total", NULL) = (int64_t)c->duplicates;
    *stats_counter(st, "bus_gaps_total", NULL) = (int64_t)c->gaps;
    *stats_counter(st, "bus_gaps_healed_total", NULL) = (int64_t)c->gaps_healed;
    *stats_counter(st, "bus_gaps_lost_total", NULL) = (int64_t)c->gaps_lost;
    *stats_counter(st, "bus_messages_lost_total", NULL) = (int64_t)c->lost;
    *stats_counter(st, "bus_replays_total", NULL) = (int64_t)c->replays;
    *stats_counter(st, "bus_malformed_total", NULL) = (int64_t)c->malformed;
    *stats_counter(st, "bus_publisher_resets_total", NULL) = (int64_t)c->resets;
}

void buscfg_send_stats(bus_pub_t *pub, const rsub_t *rsub, stats_t *st, mbuf_t *buf)
{
    msgpack_packer pk;
    buscfg_pub_stats(pub, st);
    if (rsub)
        buscfg_rsub_stats(rsub, st);
    mbuf_reset(buf);
    mbuf_packer(buf, &pk);
    stats_pack(st, &pk, tmtime_now_ns());
    bus_pub_send(pub, "stats", MSG_KIND_STATS, buf->data, buf->len, NULL, 0);
}

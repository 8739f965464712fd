/* tokmon-collectd: lifecycle only. Loads the config, opens the listeners and
 * the bus, runs the loop, reloads on SIGHUP, prints its counters on SIGUSR1,
 * drains and flushes on SIGTERM. The work is in ingest.c, net.c, batch.c. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <zmq.h>

#include "auth.h"
#include "batch.h"
#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "ingest.h"
#include "log.h"
#include "mbuf.h"
#include "net.h"
#include "prices.h"
#include "sdnotify.h"
#include "sig.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define DAEMON "tokmon-collectd"
#define SWEEP_NS (10 * TMTIME_NS_PER_MS)
#define READ_BURST 4096

typedef struct {
    const char *cfg_path;
    const char *src_override;
    cfg_t *cfg;
    prices_t *prices;
    auth_keys_t *keys;
    stats_t *stats;
    void *zctx;
    buscfg_t bus;
    bus_pub_t *pub;
    bool replaying;
    uint64_t gones_logged;
    batch_t *batch;
    ingest_t *ingest;
    int epfd, sigfd;
    ep_item_t sig_item, bus_item;
    dgramd_t *udp, *unixd;
    tcpd_t *tcp;
    bool stop;
    int64_t next_stats, next_sweep, next_watchdog, watchdog_ns;
    int64_t *c_reloads, *c_reload_errors, *g_price_models;
    mbuf_t statsbuf;
} collectd_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " DAEMON " [-c FILE] [-n] [--src NAME]\n"
            "Receives LLM usage events and StatsD lines over UDP, TCP and a unix socket,\n"
            "verifies signatures, prices each call and publishes records on the bus.\n\n"
            "  -c, --config FILE  configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -n, --check        check the configuration, price table and keys, then exit\n"
            "      --src NAME     bus publisher name (default [collectd] src)\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n\n"
            "Signals: TERM/INT drain and exit, HUP reloads config, prices and keys,\n"
            "USR1 prints the counters.\n");
}

/* ---- sink --------------------------------------------------------------- */

/* Batches keep time by the receive clock the records already carry, so the
 * hot path reads no clock of its own. */
static void sink_usage(void *arg, unsigned shard, const msg_usage_t *u)
{
    collectd_t *c = arg;
    batch_usage(c->batch, shard, u, u->recv_ts);
}

static void sink_sample(void *arg, const msg_sample_t *s, int64_t recv_ns)
{
    collectd_t *c = arg;
    batch_sample(c->batch, s, recv_ns);
}

/* ---- config, prices, keys ----------------------------------------------- */

typedef struct {
    cfg_t *cfg;
    prices_t *prices;
    auth_keys_t *keys;
} loaded_t;

static void loaded_free(loaded_t *l)
{
    cfg_destroy(&l->cfg);
    prices_destroy(&l->prices);
    auth_keys_destroy(&l->keys);
}

static int load_all(const char *path, const char *src_override, loaded_t *l, char *err, size_t cap)
{
    memset(l, 0, sizeof *l);
    l->cfg = cfg_load(path, err, cap);
    if (!l->cfg)
        return -1;
    if (src_override) {
        free(l->cfg->collectd.src);
        l->cfg->collectd.src = xstrdup(src_override);
    }
    l->prices = prices_load(l->cfg->collectd.prices, l->cfg, err, cap);
    if (!l->prices)
        goto fail;
    if (l->cfg->collectd.auth != CFG_AUTH_OFF) {
        l->keys = auth_keys_load(l->cfg->collectd.auth_keys, err, cap);
        if (!l->keys)
            goto fail;
    }
    return 0;
fail:
    loaded_free(l);
    return -1;
}

static void setup_log(const cfg_t *cfg)
{
    log_setup(DAEMON, cfg->global.instance, (log_format_t)cfg->global.log_format,
              (log_level_t)cfg->global.log_level);
    for (size_t i = 0; i < cfg->warnings.n; i++)
        log_warn("config", "warning=%s", cfg->warnings.v[i]);
}

static void restart_key(const char *section, const char *key, void *arg)
{
    (void)arg;
    log_warn("config key changed; it takes effect on restart", "section=%s key=%s", section, key);
}

static void reload(collectd_t *c)
{
    char err[4096];
    loaded_t l;
    if (load_all(c->cfg_path, c->src_override, &l, err, sizeof err) < 0) {
        (*c->c_reload_errors)++;
        log_error("reload failed; keeping the running config", "error=\"%s\"", err);
        return;
    }
    cfg_reload_conflicts(c->cfg, l.cfg, restart_key, NULL);
    cfg_keep_restart_keys(l.cfg, c->cfg);
    ingest_reload(c->ingest, l.cfg, l.prices, l.keys);
    if (c->tcp)
        tcpd_reload(c->tcp, l.cfg);
    batch_limits(c->batch, (size_t)l.cfg->collectd.batch_max,
                 l.cfg->collectd.flush_interval * TMTIME_NS_PER_MS);
    loaded_t old = { c->cfg, c->prices, c->keys };
    c->cfg = l.cfg;
    c->prices = l.prices;
    c->keys = l.keys;
    loaded_free(&old);
    setup_log(c->cfg);
    *c->g_price_models = (int64_t)prices_count(c->prices);
    (*c->c_reloads)++;
    log_info("reloaded", "prices=%s models=%zu price_version=%s auth_keys=%zu", c->cfg->collectd.prices,
             prices_count(c->prices), prices_version(c->prices), c->keys ? auth_keys_count(c->keys) : 0);
}

/* ---- stats -------------------------------------------------------------- */

static void publish_stats(collectd_t *c)
{
    buscfg_send_stats(c->pub, NULL, c->stats, &c->statsbuf);
}

/* ---- loop --------------------------------------------------------------- */

static void on_signal(collectd_t *c)
{
    int s;
    while ((s = sig_next(c->sigfd)) > 0) {
        switch (s) {
        case SIGTERM:
        case SIGINT:
            log_info("stopping", "signal=%s", s == SIGTERM ? "TERM" : "INT");
            c->stop = true;
            break;
        case SIGHUP:
            reload(c);
            break;
        case SIGUSR1:
            log_stats(c->stats);
            break;
        default:
            break;
        }
    }
}

static int open_all(collectd_t *c, char *err, size_t cap)
{
    const cfg_collectd_t *cc = &c->cfg->collectd;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    c->sigfd = sig_open();
    if (c->epfd < 0 || c->sigfd < 0) {
        snprintf(err, cap, "epoll/signalfd: %s", strerror(errno));
        return -1;
    }
    c->sig_item.kind = EP_SIGNAL;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->sig_item };
    epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->sigfd, &ev);

    c->zctx = zmq_ctx_new();
    if (buscfg_init(&c->bus, c->zctx, c->cfg, true, false, err, cap) < 0)
        return -1;
    c->pub = buscfg_publisher(&c->bus, c->zctx, c->cfg, CFG_PEER_COLLECTD, cc->src, err, cap);
    if (!c->pub)
        return -1;
    /* the PUB (subscriptions) and the replay service wake the loop */
    void *zsocks[2] = { bus_pub_socket(c->pub), bus_pub_replay_socket(c->pub) };
    c->bus_item.kind = EP_BUS;
    for (int i = 0; i < 2; i++) {
        int zfd;
        size_t zl = sizeof zfd;
        if (!zsocks[i] || zmq_getsockopt(zsocks[i], ZMQ_FD, &zfd, &zl) != 0)
            continue;
        ev = (struct epoll_event){ .events = EPOLLIN, .data.ptr = &c->bus_item };
        epoll_ctl(c->epfd, EPOLL_CTL_ADD, zfd, &ev);
    }

    c->batch = batch_new(c->pub, c->stats);
    batch_limits(c->batch, (size_t)cc->batch_max, cc->flush_interval * TMTIME_NS_PER_MS);
    ingest_sink_t sink = { sink_usage, sink_sample, c };
    c->ingest = ingest_new(c->cfg, c->prices, c->keys, c->stats, &sink);

    if (cc->udp[0] && !(c->udp = dgramd_open_udp(c->epfd, cc->udp, cc->rcvbuf, c->stats, err, cap)))
        return -1;
    if (cc->tcp[0] && !(c->tcp = tcpd_open(c->epfd, cc->tcp, c->cfg, c->stats, err, cap)))
        return -1;
    if (cc->unix_path[0] &&
        !(c->unixd = dgramd_open_unix(c->epfd, cc->unix_path, cc->rcvbuf, c->stats, err, cap)))
        return -1;
    return 0;
}

static int timeout_ms(collectd_t *c, int64_t now, int64_t batch_due)
{
    int64_t t = c->next_stats - now;
    if (batch_due >= 0 && batch_due < t)
        t = batch_due;
    if (c->tcp && c->next_sweep - now < t)
        t = c->next_sweep - now;
    if (c->watchdog_ns && c->next_watchdog - now < t)
        t = c->next_watchdog - now;
    if (c->replaying && t > TMTIME_NS_PER_MS)
        t = TMTIME_NS_PER_MS; /* replays go on a slice at a time */
    if (t <= 0)
        return 0;
    return (int)((t + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
}

static void run(collectd_t *c)
{
    struct epoll_event evs[64];
    int64_t started = tmtime_mono_ns();
    int64_t batch_due = -1;
    c->next_stats = started + c->cfg->global.stats_interval * TMTIME_NS_PER_MS;
    c->next_sweep = started + SWEEP_NS;
    c->watchdog_ns = sdnotify_watchdog_usec() * 1000 / 2;
    c->next_watchdog = started;
    while (!c->stop) {
        int64_t now = tmtime_mono_ns();
        int n = epoll_wait(c->epfd, evs, 64, timeout_ms(c, now, batch_due));
        for (int i = 0; i < n; i++) {
            ep_item_t *it = evs[i].data.ptr;
            switch (it->kind) {
            case EP_DGRAM:
                dgramd_read((dgramd_t *)it, c->ingest, READ_BURST);
                break;
            case EP_TCP_LISTEN:
            case EP_TCP_CONN:
                tcpd_event(c->tcp, it, evs[i].events, c->ingest);
                break;
            case EP_SIGNAL:
                on_signal(c);
                break;
            default:
                break; /* EP_BUS: checked below on every turn */
            }
        }
        batch_due = batch_flush_due(c->batch, tmtime_now_ns());
        now = tmtime_mono_ns();
        c->replaying = bus_pub_work(c->pub, now / TMTIME_NS_PER_MS);
        bus_pub_counters_t bc;
        bus_pub_counters(c->pub, &bc);
        if (bc.replay.gones != c->gones_logged) { /* a subscriber asked for what is gone */
            log_warn("replay asked for messages the spool no longer holds", "oldest_seq=%llu gone_answers=%llu",
                     (unsigned long long)bc.spool_oldest, (unsigned long long)bc.replay.gones);
            c->gones_logged = bc.replay.gones;
        }
        if (bus_pub_poll_subscribed(c->pub, "stats"))
            publish_stats(c); /* a new reader gets the counters at once */
        if (now >= c->next_stats) {
            publish_stats(c);
            c->next_stats = now + c->cfg->global.stats_interval * TMTIME_NS_PER_MS;
        }
        if (c->tcp && now >= c->next_sweep) {
            tcpd_sweep(c->tcp, c->ingest, now);
            c->next_sweep = now + SWEEP_NS;
        }
        if (c->watchdog_ns && now >= c->next_watchdog) {
            sdnotify_send("WATCHDOG=1");
            c->next_watchdog = now + c->watchdog_ns;
        }
        bus_pub_flush(c->pub); /* this turn's messages: one spool write, then out */
    }
}

static void shutdown_all(collectd_t *c)
{
    sdnotify_send("STOPPING=1");
    /* stop input: take what the kernel already holds, then close */
    if (c->udp) {
        for (int i = 0; i < 64 && dgramd_read(c->udp, c->ingest, READ_BURST) > 0; i++) {
        }
        dgramd_close(&c->udp);
    }
    if (c->unixd) {
        for (int i = 0; i < 64 && dgramd_read(c->unixd, c->ingest, READ_BURST) > 0; i++) {
        }
        dgramd_close(&c->unixd);
    }
    tcpd_close(&c->tcp, c->ingest);
    batch_flush_all(c->batch);
    publish_stats(c);
    log_info("stopped", "last_seq=%llu", (unsigned long long)bus_pub_last_seq(c->pub));
    ingest_destroy(&c->ingest);
    batch_destroy(&c->batch);
    bus_pub_sync(c->pub);
    bus_pub_destroy(&c->pub); /* lingers to deliver what is queued */
    buscfg_close(&c->bus);
    zmq_ctx_term(c->zctx);
    close(c->sigfd);
    close(c->epfd);
    mbuf_free(&c->statsbuf);
    stats_destroy(&c->stats);
    loaded_t l = { c->cfg, c->prices, c->keys };
    loaded_free(&l);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 'n' },
        { "src", required_argument, NULL, 's' },    { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },      { NULL, 0, NULL, 0 },
    };
    collectd_t c = { .epfd = -1, .sigfd = -1 };
    bool check = false;
    int o;
    while ((o = getopt_long(argc, argv, "c:nhV", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            c.cfg_path = optarg;
            break;
        case 'n':
            check = true;
            break;
        case 's':
            c.src_override = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(DAEMON " %s\n", TOKMON_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, DAEMON ": unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!c.cfg_path)
        c.cfg_path = cfg_default_path();

    char err[8192];
    loaded_t l;
    if (load_all(c.cfg_path, c.src_override, &l, err, sizeof err) < 0) {
        fprintf(stderr, DAEMON ": %s\n", err);
        return 1;
    }
    c.cfg = l.cfg;
    c.prices = l.prices;
    c.keys = l.keys;
    if (check) {
        for (size_t i = 0; i < c.cfg->warnings.n; i++)
            fprintf(stderr, DAEMON ": warning: %s\n", c.cfg->warnings.v[i]);
        printf(DAEMON ": %s is valid (%zu priced models, price version %s, %zu auth keys)\n",
               c.cfg_path, prices_count(c.prices), prices_version(c.prices),
               c.keys ? auth_keys_count(c.keys) : 0);
        loaded_free(&l);
        return 0;
    }
    setup_log(c.cfg);
    c.stats = stats_new(DAEMON, c.cfg->collectd.src);
    c.c_reloads = stats_counter(c.stats, "reloads_total", NULL);
    c.c_reload_errors = stats_counter(c.stats, "reload_errors_total", NULL);
    c.g_price_models = stats_gauge(c.stats, "price_models", NULL);
    *c.g_price_models = (int64_t)prices_count(c.prices);
    if (open_all(&c, err, sizeof err) < 0) {
        log_error("cannot start", "error=\"%s\"", err);
        return 1;
    }
    log_info("started", "version=%s src=%s bus=%s udp=%s tcp=%s unix=%s prices=%s models=%zu "
             "skipped=%zu price_version=%s auth=%s",
             TOKMON_VERSION, c.cfg->collectd.src, c.cfg->bus.peers[CFG_PEER_COLLECTD].pub.v[0],
             c.udp ? dgramd_name(c.udp) : "off", c.tcp ? tcpd_name(c.tcp) : "off",
             c.unixd ? dgramd_name(c.unixd) : "off", c.cfg->collectd.prices,
             prices_count(c.prices), prices_skipped(c.prices), prices_version(c.prices),
             c.cfg->collectd.auth == CFG_AUTH_OFF ? "off"
             : c.cfg->collectd.auth == CFG_AUTH_OPTIONAL ? "optional" : "required");
    bus_pub_counters_t bc;
    bus_pub_counters(c.pub, &bc);
    if (c.cfg->bus.spool)
        log_info("spool", "last_seq=%llu oldest_seq=%llu bytes=%llu segments=%llu repaired_bytes=%llu",
                 (unsigned long long)bus_pub_last_seq(c.pub), (unsigned long long)bc.spool_oldest,
                 (unsigned long long)bc.spool_bytes, (unsigned long long)bc.spool_segments,
                 (unsigned long long)bc.spool_repaired);
    sdnotify_send("READY=1");
    run(&c);
    shutdown_all(&c);
    return 0;
}

/* tokmon-aggregator: lifecycle only. Loads the config and the snapshot,
 * reads back what it published after the snapshot, subscribes to the
 * collectors (its shard's ev.xx topics, and metric on shard 0), runs the
 * loop, answers queries, snapshots on an interval and on SIGTERM, reloads on
 * SIGHUP. The rules are in agg.c and the modules it drives. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "agg.h"
#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "daemon.h"
#include "log.h"
#include "mbuf.h"
#include "query.h"
#include "rsub.h"
#include "sdnotify.h"
#include "sig.h"
#include "spool.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define DAEMON "tokmon-aggregator"
#define TICK_MS 100
#define MAX_POLL 80

typedef struct {
    const char *cfg_path;
    const char *src_override;
    uint32_t shard, shards;
    cfg_t *cfg;
    char *src;
    char *snap_path;
    stats_t *stats;
    void *zctx;
    buscfg_t bus;
    bus_pub_t *pub;
    rsub_t *rsub;
    void *query;
    agg_t *agg;
    int sigfd;
    bool stop;
    int64_t next_stats, next_snapshot, next_watchdog, watchdog_ns;
    int64_t *c_reloads, *c_reload_errors, *c_snapshots, *c_snapshot_errors, *c_queries;
    int64_t *g_snapshot_bytes, *g_snapshot_ms;
    mbuf_t statsbuf, answer;
} aggd_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " DAEMON " [-c FILE] [-n] [--shard I/N] [--src NAME]\n"
            "Turns the collectors' priced calls into quotas, budgets and minute, hour and day\n"
            "rollups, aggregates generic StatsD metrics, and answers quota, budget, top and\n"
            "usage queries.\n\n"
            "  -c, --config FILE  configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -n, --check        check the configuration, then exit\n"
            "      --shard I/N    be shard I of N (0 <= I < N <= 256): read only the ev.xx\n"
            "                     topics with xx mod N == I (default 0/1)\n"
            "      --src NAME     bus publisher name (default [aggregator] src)\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n\n"
            "Signals: TERM/INT snapshot and exit, HUP reloads limits and budgets,\n"
            "USR1 prints the counters.\n");
}

/* ---- bus glue ------------------------------------------------------------- */

static int send_out(void *arg, const char *topic, const char *kind, const void *head,
                    size_t headlen, const void *tail, size_t taillen)
{
    aggd_t *d = arg;
    return bus_pub_send(d->pub, topic, kind, head, headlen, tail, taillen);
}

static int apply_msg(void *arg, const bus_msg_t *m)
{
    agg_apply(((aggd_t *)arg)->agg, m);
    return 0;
}

static void set_position(void *arg, const char *src, uint64_t seq)
{
    rsub_set_position(((aggd_t *)arg)->rsub, src, seq);
}

/* What this aggregator published after its snapshot is still in its spool:
 * reading it back keeps a restart from announcing a quota state or a budget
 * crossing twice. */
static int recover_output(aggd_t *d, uint64_t pub_seq, char *err, size_t cap)
{
    if (!d->cfg->bus.spool)
        return 0;
    char *dir = buscfg_spool_dir(d->cfg, d->src);
    struct stat st;
    if (stat(dir, &st) < 0) {
        free(dir);
        return 0;
    }
    spool_opts_t so = { .dir = dir,
                        .segment_bytes = d->cfg->bus.spool_segment_size,
                        .segment_age_ms = d->cfg->bus.spool_segment_age,
                        .max_bytes = d->cfg->bus.spool_max_size,
                        .max_age_ms = d->cfg->bus.spool_max_age,
                        .fsync_ms = -1 };
    spool_t *sp = spool_open(&so, err, cap);
    free(dir);
    if (!sp)
        return -1;
    uint64_t gone = 0, n = 0, seq;
    spool_cursor_t *c = spool_cursor_open(sp, pub_seq + 1, &gone);
    if (!c && gone) /* retention took some: read what is left */
        c = spool_cursor_open(sp, gone, &gone);
    if (c) {
        char topic[BUS_MAX_TOPIC + 1];
        mbuf_t env = { 0 };
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        while (spool_cursor_next(c, &seq, topic, &env) == 1) {
            bus_msg_t m;
            char why[256];
            if (bus_envelope_decode(env.data, env.len, &up, &m, why, sizeof why) == 0) {
                agg_recover_output(d->agg, &m);
                n++;
            }
        }
        msgpack_unpacked_destroy(&up);
        mbuf_free(&env);
        spool_cursor_close(&c);
    }
    if (n)
        log_info("read back what was published after the snapshot", "messages=%llu from_seq=%llu",
                 (unsigned long long)n, (unsigned long long)(pub_seq + 1));
    spool_close(&sp);
    return 0;
}

/* ---- snapshot --------------------------------------------------------------- */

typedef struct {
    agg_position_t *v;
    size_t n, cap;
} positions_t;

static void collect_position(const char *src, uint64_t seq, void *arg)
{
    positions_t *p = arg;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 8;
        p->v = xreallocarray(p->v, p->cap, sizeof *p->v);
    }
    p->v[p->n++] = (agg_position_t){ xstrdup(src), seq };
}

static void snapshot(aggd_t *d, const char *why)
{
    char err[512];
    /* everything derived from what is applied goes out first: the snapshot's
     * publisher seq then covers it */
    agg_flush(d->agg);
    bus_pub_flush(d->pub);
    positions_t p = { 0 };
    rsub_each_position(d->rsub, collect_position, &p);
    int64_t t0 = tmtime_mono_ns();
    int rc = agg_save(d->agg, d->snap_path, p.v, p.n, bus_pub_last_seq(d->pub), err, sizeof err);
    int64_t ms = (tmtime_mono_ns() - t0) / TMTIME_NS_PER_MS;
    for (size_t i = 0; i < p.n; i++)
        free((char *)(uintptr_t)p.v[i].src);
    free(p.v);
    if (rc < 0) {
        (*d->c_snapshot_errors)++;
        log_error("snapshot failed; the previous one stays", "error=\"%s\"", err);
        return;
    }
    (*d->c_snapshots)++;
    *d->g_snapshot_ms = ms;
    struct stat st;
    if (stat(d->snap_path, &st) == 0)
        *d->g_snapshot_bytes = st.st_size;
    log_debug("snapshot written", "why=%s ms=%lld bytes=%lld", why, (long long)ms,
              (long long)*d->g_snapshot_bytes);
}

/* ---- stats and queries ------------------------------------------------------ */

static void publish_stats(aggd_t *d)
{
    buscfg_send_stats(d->pub, d->rsub, d->stats, &d->statsbuf);
}

static void answer_query(void *arg, const void *req, size_t len, mbuf_t *out)
{
    aggd_t *d = arg;
    query_answer(d->agg, req, len, tmtime_now_ns(), out);
}

/* Answers every waiting query. */
static void serve_queries(aggd_t *d)
{
    *d->c_queries += daemon_serve_router(d->query, answer_query, d, &d->answer);
}

/* ---- loop ------------------------------------------------------------------- */

static void reload(aggd_t *d)
{
    char err[4096];
    cfg_t *nw = cfg_load(d->cfg_path, err, sizeof err);
    if (!nw) {
        (*d->c_reload_errors)++;
        log_error("reload failed; keeping the running config", "error=\"%s\"", err);
        return;
    }
    cfg_keep_restart_keys(nw, d->cfg);
    agg_reload(d->agg, nw);
    cfg_destroy(&d->cfg);
    d->cfg = nw;
    log_setup(DAEMON, d->cfg->global.instance, (log_format_t)d->cfg->global.log_format,
              (log_level_t)d->cfg->global.log_level);
    (*d->c_reloads)++;
    log_info("reloaded", "budgets=%zu user_overrides=%zu account_overrides=%zu", d->cfg->nbudgets,
             d->cfg->nuser_quotas, d->cfg->naccount_quotas);
}

static void on_signal(aggd_t *d)
{
    int s;
    while ((s = sig_next(d->sigfd)) > 0) {
        switch (s) {
        case SIGTERM:
        case SIGINT:
            log_info("stopping", "signal=%s", s == SIGTERM ? "TERM" : "INT");
            d->stop = true;
            break;
        case SIGHUP:
            reload(d);
            break;
        case SIGUSR1:
            agg_update_gauges(d->agg);
            log_stats(d->stats);
            break;
        default:
            break;
        }
    }
}

static void run(aggd_t *d)
{
    zmq_pollitem_t items[MAX_POLL];
    int64_t now = tmtime_mono_ns();
    d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
    d->next_snapshot = now + d->cfg->aggregator.snapshot_interval * TMTIME_NS_PER_MS;
    d->watchdog_ns = sdnotify_watchdog_usec() * 1000 / 2;
    d->next_watchdog = now;
    bool was_caught_up = false;
    while (!d->stop) {
        int n = rsub_poll_items(d->rsub, items, MAX_POLL - 4);
        items[n++] = (zmq_pollitem_t){ .fd = d->sigfd, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .socket = d->query, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .socket = bus_pub_socket(d->pub), .events = ZMQ_POLLIN };
        void *rs = bus_pub_replay_socket(d->pub);
        if (rs)
            items[n++] = (zmq_pollitem_t){ .socket = rs, .events = ZMQ_POLLIN };
        long timeout = rsub_busy(d->rsub) ? 1 : TICK_MS;
        if (zmq_poll(items, n, timeout) < 0 && errno != EINTR)
            log_error("zmq_poll", "error=\"%s\"", zmq_strerror(errno));
        on_signal(d);
        now = tmtime_mono_ns();
        if (rsub_work(d->rsub, now / TMTIME_NS_PER_MS) < 0)
            log_error("the subscriber stopped", "error=internal");
        serve_queries(d);
        bool caught_up = rsub_caught_up(d->rsub);
        if (caught_up && !was_caught_up)
            log_info("caught up with the collectors", "watermark=%lld",
                     (long long)agg_watermark(d->agg));
        was_caught_up = caught_up;
        agg_tick(d->agg, tmtime_now_ns(), caught_up);
        bool replaying = bus_pub_work(d->pub, now / TMTIME_NS_PER_MS);
        (void)replaying;
        if (bus_pub_poll_subscribed(d->pub, "stats"))
            publish_stats(d);
        if (now >= d->next_stats) {
            publish_stats(d);
            d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
        }
        agg_flush(d->agg);
        bus_pub_flush(d->pub);
        if (now >= d->next_snapshot) {
            snapshot(d, "interval");
            d->next_snapshot = tmtime_mono_ns() + d->cfg->aggregator.snapshot_interval * TMTIME_NS_PER_MS;
        }
        if (d->watchdog_ns && now >= d->next_watchdog) {
            sdnotify_send("WATCHDOG=1");
            d->next_watchdog = now + d->watchdog_ns;
        }
    }
}

/* ---- start and stop --------------------------------------------------------- */

static int parse_shard(const char *s, uint32_t *i, uint32_t *n)
{
    char *end;
    errno = 0;
    unsigned long a = strtoul(s, &end, 10);
    if (errno || end == s || *end != '/')
        return -1;
    const char *p = end + 1;
    unsigned long b = strtoul(p, &end, 10);
    if (errno || end == p || *end || b < 1 || b > 256 || a >= b)
        return -1;
    *i = (uint32_t)a;
    *n = (uint32_t)b;
    return 0;
}

static char *default_src(const aggd_t *d)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    const char *base = d->src_override ? d->src_override : d->cfg->aggregator.src;
    char *name = *base ? xstrdup(base) : xasprintf("aggregator@%s", host);
    if (d->shards > 1 && !d->src_override) {
        char *s = xasprintf("%s.shard%u", name, d->shard);
        free(name);
        name = s;
    }
    return name;
}

static const char *query_endpoint(const aggd_t *d, char *buf, size_t cap)
{
    /* a list names one endpoint per shard; one tcp endpoint: its port + shard */
    const char *q = d->cfg->aggregator.query;
    const char *p = q;
    for (uint32_t i = 0; i < d->shard && p; i++) {
        p = strchr(p, ',');
        if (p)
            p++;
    }
    if (p && p != q) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && p[0] == ' ')
            p++, n--;
        snprintf(buf, cap, "%.*s", (int)n, p);
        return buf;
    }
    const char *e = strchr(q, ',');
    size_t n = e ? (size_t)(e - q) : strlen(q);
    snprintf(buf, cap, "%.*s", (int)n, q);
    if (d->shard && !strchr(q, ',')) {
        char *colon = strrchr(buf, ':');
        if (colon && !strncmp(buf, "tcp://", 6)) {
            long port = strtol(colon + 1, NULL, 10) + (long)d->shard;
            snprintf(colon + 1, cap - (size_t)(colon + 1 - buf), "%ld", port);
        }
    }
    return buf;
}

static int open_all(aggd_t *d, char *err, size_t cap)
{
    d->sigfd = sig_open();
    if (d->sigfd < 0) {
        snprintf(err, cap, "signalfd: %s", strerror(errno));
        return -1;
    }
    d->src = default_src(d);
    d->stats = stats_new(DAEMON, d->src);
    d->c_reloads = stats_counter(d->stats, "reloads_total", NULL);
    d->c_reload_errors = stats_counter(d->stats, "reload_errors_total", NULL);
    d->c_snapshots = stats_counter(d->stats, "agg_snapshots_total", NULL);
    d->c_snapshot_errors = stats_counter(d->stats, "agg_snapshot_errors_total", NULL);
    d->c_queries = stats_counter(d->stats, "agg_queries_total", NULL);
    d->g_snapshot_bytes = stats_gauge(d->stats, "agg_snapshot_bytes", NULL);
    d->g_snapshot_ms = stats_gauge(d->stats, "agg_snapshot_duration_ms", NULL);

    char *dir = xasprintf("%s/aggregator", d->cfg->global.state_dir);
    if (daemon_mkdirs(dir) < 0) {
        snprintf(err, cap, "%s: %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    d->snap_path = xasprintf("%s/%s.snapshot", dir, d->src);
    free(dir);

    d->zctx = zmq_ctx_new();
    if (buscfg_init(&d->bus, d->zctx, d->cfg, true, true, err, cap) < 0)
        return -1;
    agg_opts_t ao = { d->cfg, d->shard, d->shards, d->src, d->stats, send_out, d };
    d->agg = agg_new(&ao, err, cap);
    if (!d->agg)
        return -1;

    /* this shard's topics: ev.xx with xx mod N == shard, and metric on shard 0 */
    char names[257][8];
    const char *prefixes[257];
    size_t np = 0;
    if (d->shards == 1) {
        prefixes[np++] = "ev.";
    } else {
        for (unsigned x = 0; x < 256; x++) {
            if (x % d->shards != d->shard)
                continue;
            snprintf(names[np], sizeof names[np], "ev.%02x", x);
            prefixes[np] = names[np];
            np++;
        }
    }
    if (d->shard == 0)
        prefixes[np++] = "metric";
    static const int peers[] = { CFG_PEER_COLLECTD };
    d->rsub = buscfg_subscriber(&d->bus, d->zctx, d->cfg, peers, 1, prefixes, np, RSUB_FROM_OLDEST,
                                apply_msg, d, err, cap);
    if (!d->rsub)
        return -1;
    uint64_t pub_seq = 0;
    int rc = agg_load(d->agg, d->snap_path, set_position, d, &pub_seq, err, cap);
    if (rc < 0)
        return -1;
    if (rc > 0)
        log_info("snapshot loaded", "path=%s watermark=%lld pub_seq=%llu", d->snap_path,
                 (long long)agg_watermark(d->agg), (unsigned long long)pub_seq);
    if (recover_output(d, pub_seq, err, cap) < 0)
        return -1;
    d->pub = buscfg_publisher_at(&d->bus, d->zctx, d->cfg, CFG_PEER_AGGREGATOR, d->shard, d->src,
                                 err, cap);
    if (!d->pub)
        return -1;

    char qep[512];
    query_endpoint(d, qep, sizeof qep);
    d->query = zmq_socket(d->zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(d->query, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(d->query, qep) != 0) {
        snprintf(err, cap, "query socket %s: %s", qep, zmq_strerror(errno));
        return -1;
    }
    if (rsub_start(d->rsub, err, cap) < 0)
        return -1;
    log_info("started", "src=%s shard=%u/%u query=%s snapshot=%s zone=%s", d->src, d->shard,
             d->shards, qep, d->snap_path, cal_zone(agg_cal(d->agg)));
    return 0;
}

static void shutdown_all(aggd_t *d)
{
    sdnotify_send("STOPPING=1");
    if (d->agg && d->pub && d->rsub) {
        snapshot(d, "stop");
        publish_stats(d);
        bus_pub_flush(d->pub);
        log_info("stopped", "last_seq=%llu snapshot=%s", (unsigned long long)bus_pub_last_seq(d->pub),
                 d->snap_path);
    }
    agg_destroy(&d->agg);
    rsub_destroy(&d->rsub);
    if (d->query)
        zmq_close(d->query);
    if (d->pub) {
        bus_pub_sync(d->pub);
        bus_pub_destroy(&d->pub);
    }
    buscfg_close(&d->bus);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    if (d->sigfd >= 0)
        close(d->sigfd);
    mbuf_free(&d->statsbuf);
    mbuf_free(&d->answer);
    stats_destroy(&d->stats);
    free(d->src);
    free(d->snap_path);
    cfg_destroy(&d->cfg);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 'n' },
        { "shard", required_argument, NULL, 'S' },  { "src", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    aggd_t d = { .sigfd = -1, .shards = 1 };
    bool check = false;
    int o;
    while ((o = getopt_long(argc, argv, "c:nhV", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            d.cfg_path = optarg;
            break;
        case 'n':
            check = true;
            break;
        case 'S':
            if (parse_shard(optarg, &d.shard, &d.shards) < 0) {
                fprintf(stderr, DAEMON ": --shard '%s': expected I/N with 0 <= I < N <= 256\n", optarg);
                return 2;
            }
            break;
        case 's':
            d.src_override = optarg;
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
    if (!d.cfg_path)
        d.cfg_path = cfg_default_path();
    char err[4096];
    d.cfg = cfg_load(d.cfg_path, err, sizeof err);
    if (!d.cfg) {
        fprintf(stderr, DAEMON ": %s\n", err);
        return 1;
    }
    log_setup(DAEMON, d.cfg->global.instance, (log_format_t)d.cfg->global.log_format,
              (log_level_t)d.cfg->global.log_level);
    for (size_t i = 0; i < d.cfg->warnings.n; i++)
        log_warn("config", "warning=%s", d.cfg->warnings.v[i]);
    if (check) {
        cal_t *cal = cal_new(d.cfg->global.timezone, err, sizeof err);
        if (!cal) {
            fprintf(stderr, DAEMON ": [global] timezone: %s\n", err);
            cfg_destroy(&d.cfg);
            return 1;
        }
        cal_destroy(&cal);
        printf(DAEMON ": %s is valid (%zu budgets, %zu user and %zu account quota overrides, "
               "zone %s)\n",
               d.cfg->path, d.cfg->nbudgets, d.cfg->nuser_quotas, d.cfg->naccount_quotas,
               d.cfg->global.timezone);
        cfg_destroy(&d.cfg);
        return 0;
    }
    if (open_all(&d, err, sizeof err) < 0) {
        log_error("cannot start", "error=\"%s\"", err);
        shutdown_all(&d);
        return 1;
    }
    sdnotify_send("READY=1");
    run(&d);
    shutdown_all(&d);
    return 0;
}

/* tokmon-pgwriter: lifecycle only. Connects to PostgreSQL (migrations,
 * config mirror, partitions), reads its bus positions from bus_offsets,
 * subscribes to the collectors (ev.*) and aggregators (roll.*, budget,
 * quota) from there, and writes batches bounded by rows and time. When
 * PostgreSQL fails it stops reading, reconnects with backoff and jitter,
 * and catches up by replay from the positions stored with the rows. The
 * rows and the SQL are in pgw.c. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "daemon.h"
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "pgw.h"
#include "rsub.h"
#include "sdnotify.h"
#include "sig.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define DAEMON "tokmon-pgwriter"
#define TICK_MS 100
#define MAX_POLL 80
#define BACKOFF_MIN_MS 250

typedef struct {
    const char *cfg_path;
    cfg_t *cfg;
    char *src;
    stats_t *stats;
    void *zctx;
    buscfg_t bus;
    bus_pub_t *pub;
    rsub_t *rsub;
    pgw_t *pgw;
    int sigfd;
    bool stop;
    int rc; /* the exit status */
    int64_t backoff_ms, next_connect, next_maintain, next_stats, next_watchdog, watchdog_ns;
    int64_t *c_reconnects, *c_reload_errors;
    pgw_pos_t *pos;
    size_t npos, cpos;
    mbuf_t statsbuf;
} writer_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " DAEMON " [-c FILE] [-n]\n"
            "Stores every priced call, rollup bucket, budget status and quota change from the\n"
            "bus in PostgreSQL, exactly once, in batched COPY transactions that also hold the\n"
            "bus positions. The schema is created and migrated at start.\n\n"
            "  -c, --config FILE  configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -n, --check        check the configuration, then exit (does not connect)\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n\n"
            "The database: [pgwriter] database (a libpq conninfo or URL; TLS options such as\n"
            "sslmode and sslrootcert pass through), or when empty libpq's PGHOST, PGPORT,\n"
            "PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE... environment.\n"
            "Signals: TERM/INT write what is pending and exit, USR1 prints the counters.\n");
}

/* ---- bus ----------------------------------------------------------------------- */

static int apply_msg(void *arg, const bus_msg_t *m)
{
    writer_t *d = arg;
    pgw_apply(d->pgw, m, tmtime_now_ns());
    return 0;
}

static void set_position(void *arg, const char *src, uint64_t seq)
{
    rsub_set_position(((writer_t *)arg)->rsub, src, seq);
    log_debug("position", "src=%s seq=%llu", src, (unsigned long long)seq);
}

static void collect_position(const char *src, uint64_t seq, void *arg)
{
    writer_t *d = arg;
    if (d->npos == d->cpos) {
        d->cpos = d->cpos ? d->cpos * 2 : 8;
        d->pos = xreallocarray(d->pos, d->cpos, sizeof *d->pos);
    }
    d->pos[d->npos++] = (pgw_pos_t){ xstrdup(src), seq };
}

static void free_positions(writer_t *d)
{
    for (size_t i = 0; i < d->npos; i++)
        free((char *)(uintptr_t)d->pos[i].src);
    d->npos = 0;
}

/* The subscriber, from the positions stored in PostgreSQL. */
static int subscribe(writer_t *d, char *err, size_t cap)
{
    static const char *const prefixes[] = { "ev.", "roll.", "budget", "quota", "alert" };
    static const int peers[] = { CFG_PEER_COLLECTD, CFG_PEER_AGGREGATOR, CFG_PEER_ALERTER };
    d->rsub = buscfg_subscriber(&d->bus, d->zctx, d->cfg, peers, 3, prefixes, 5, RSUB_FROM_OLDEST,
                                apply_msg, d, err, cap);
    if (!d->rsub)
        return -1;
    if (pgw_offsets(d->pgw, set_position, d, err, cap) < 0 || rsub_start(d->rsub, err, cap) < 0) {
        rsub_destroy(&d->rsub);
        return -1;
    }
    return 0;
}

/* ---- PostgreSQL up and down ---------------------------------------------------- */

static void schedule_reconnect(writer_t *d, int64_t now)
{
    int64_t cap = d->cfg->pgwriter.reconnect_max;
    d->backoff_ms = d->backoff_ms ? d->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (d->backoff_ms > cap)
        d->backoff_ms = cap;
    /* half the backoff, plus up to as much again at random: writers that
     * lost the same server do not come back in step */
    int64_t wait = d->backoff_ms / 2 + (int64_t)(random() % (d->backoff_ms / 2 + 1));
    d->next_connect = now + wait * TMTIME_NS_PER_MS;
}

/* Stops reading: the batch and the subscriber go; the stored positions say
 * where to start again. */
static void lost(writer_t *d, const char *err, int64_t now)
{
    pgw_drop(d->pgw);
    pgw_disconnect(d->pgw);
    rsub_destroy(&d->rsub);
    schedule_reconnect(d, now);
    log_error("PostgreSQL failed; reading stops until it is back", "error=\"%s\" retry_ms=%lld", err,
              (long long)((d->next_connect - now) / TMTIME_NS_PER_MS));
}

static int connect_all(writer_t *d, int64_t now, char *err, size_t cap)
{
    int rc = pgw_connect(d->pgw, tmtime_now_ns(), err, cap);
    if (rc < 0)
        return rc;
    if (subscribe(d, err, cap) < 0) {
        pgw_disconnect(d->pgw);
        return -1;
    }
    if (d->backoff_ms)
        (*d->c_reconnects)++;
    d->backoff_ms = 0;
    d->next_maintain = now + d->cfg->pgwriter.maintenance_interval * TMTIME_NS_PER_MS;
    log_info("connected to PostgreSQL; reading from the stored positions", NULL);
    return 0;
}

static void flush(writer_t *d, int64_t now)
{
    if (!pgw_pending(d->pgw) || !pgw_connected(d->pgw))
        return;
    char err[2048];
    free_positions(d);
    rsub_each_position(d->rsub, collect_position, d);
    if (pgw_flush(d->pgw, d->pos, d->npos, err, sizeof err) < 0)
        lost(d, err, now);
}

/* ---- stats and signals ------------------------------------------------------------ */

static void publish_stats(writer_t *d)
{
    buscfg_send_stats(d->pub, d->rsub, d->stats, &d->statsbuf);
}

static void on_signal(writer_t *d)
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
            /* nothing here changes without a restart: say so */
            log_info("SIGHUP: the writer's settings take effect on restart", NULL);
            break;
        case SIGUSR1:
            log_stats(d->stats);
            break;
        default:
            break;
        }
    }
}

/* ---- loop --------------------------------------------------------------------------- */

static void run(writer_t *d)
{
    zmq_pollitem_t items[MAX_POLL];
    const cfg_pgwriter_t *c = &d->cfg->pgwriter;
    int64_t now = tmtime_mono_ns();
    d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
    d->watchdog_ns = sdnotify_watchdog_usec() * 1000 / 2;
    d->next_watchdog = now;
    while (!d->stop) {
        now = tmtime_mono_ns();
        if (!pgw_connected(d->pgw) && now >= d->next_connect) {
            char err[2048];
            int rc = connect_all(d, now, err, sizeof err);
            if (rc == -2) {
                log_error("cannot go on", "error=\"%s\"", err);
                d->rc = 1;
                d->stop = true;
                break;
            }
            if (rc < 0) {
                schedule_reconnect(d, now);
                log_warn("PostgreSQL unreachable", "error=\"%s\" retry_ms=%lld", err,
                         (long long)((d->next_connect - now) / TMTIME_NS_PER_MS));
            }
        }
        int n = d->rsub ? rsub_poll_items(d->rsub, items, MAX_POLL - 3) : 0;
        items[n++] = (zmq_pollitem_t){ .fd = d->sigfd, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .socket = bus_pub_socket(d->pub), .events = ZMQ_POLLIN };
        void *rs = bus_pub_replay_socket(d->pub);
        if (rs)
            items[n++] = (zmq_pollitem_t){ .socket = rs, .events = ZMQ_POLLIN };
        long timeout = TICK_MS;
        int64_t since = pgw_pending_since(d->pgw);
        if (since) {
            int64_t left = (since + c->batch_time * TMTIME_NS_PER_MS - now) / TMTIME_NS_PER_MS;
            timeout = left < 0 ? 0 : left < timeout ? (long)left : timeout;
        }
        if (d->rsub && rsub_busy(d->rsub))
            timeout = timeout > 1 ? 1 : timeout;
        if (zmq_poll(items, n, timeout) < 0 && errno != EINTR)
            log_error("zmq_poll", "error=\"%s\"", zmq_strerror(errno));
        on_signal(d);
        now = tmtime_mono_ns();
        if (d->rsub && rsub_work(d->rsub, now / TMTIME_NS_PER_MS) < 0)
            log_error("the subscriber stopped", "error=internal");
        since = pgw_pending_since(d->pgw);
        if (since && ((int64_t)pgw_pending(d->pgw) >= c->batch_rows ||
                      now >= since + c->batch_time * TMTIME_NS_PER_MS))
            flush(d, now);
        if (pgw_connected(d->pgw) && now >= d->next_maintain) {
            char err[2048];
            flush(d, now);
            if (pgw_connected(d->pgw) && pgw_maintain(d->pgw, tmtime_now_ns(), err, sizeof err) < 0)
                log_error("maintenance failed; it runs again at the next interval", "error=\"%s\"",
                          err);
            d->next_maintain = now + c->maintenance_interval * TMTIME_NS_PER_MS;
        }
        bus_pub_work(d->pub, now / TMTIME_NS_PER_MS);
        if (bus_pub_poll_subscribed(d->pub, "stats") || now >= d->next_stats) {
            publish_stats(d);
            d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
        }
        bus_pub_flush(d->pub);
        if (d->watchdog_ns && now >= d->next_watchdog) {
            sdnotify_send("WATCHDOG=1");
            d->next_watchdog = now + d->watchdog_ns;
        }
    }
}

/* ---- start and stop ------------------------------------------------------------------ */

static char *default_src(const writer_t *d)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    const char *base = d->cfg->pgwriter.src;
    return *base ? xstrdup(base) : xasprintf("pgwriter@%s", host);
}

static int open_all(writer_t *d, char *err, size_t cap)
{
    d->sigfd = sig_open();
    if (d->sigfd < 0) {
        snprintf(err, cap, "signalfd: %s", strerror(errno));
        return -1;
    }
    d->src = default_src(d);
    d->stats = stats_new(DAEMON, d->src);
    d->c_reconnects = stats_counter(d->stats, "pgw_reconnects_total", NULL);
    d->zctx = zmq_ctx_new();
    if (buscfg_init(&d->bus, d->zctx, d->cfg, true, true, err, cap) < 0)
        return -1;
    d->pub = buscfg_publisher(&d->bus, d->zctx, d->cfg, CFG_PEER_PGWRITER, d->src, err, cap);
    if (!d->pub)
        return -1;
    pgw_opts_t po = { d->cfg, d->src, d->stats };
    d->pgw = pgw_new(&po);
    srandom((unsigned)(tmtime_now_ns() ^ getpid()));
    log_info("started", "src=%s batch_rows=%lld batch_time_ms=%lld", d->src,
             (long long)d->cfg->pgwriter.batch_rows, (long long)d->cfg->pgwriter.batch_time);
    return 0;
}

static void shutdown_all(writer_t *d)
{
    sdnotify_send("STOPPING=1");
    if (d->pgw && d->rsub) {
        flush(d, tmtime_mono_ns());
        if (pgw_pending(d->pgw))
            log_warn("stopped with rows not written; they come again by replay", "rows=%zu",
                     pgw_pending(d->pgw));
    }
    if (d->pub) {
        publish_stats(d);
        bus_pub_flush(d->pub);
    }
    rsub_destroy(&d->rsub);
    pgw_destroy(&d->pgw);
    if (d->pub) {
        bus_pub_sync(d->pub);
        bus_pub_destroy(&d->pub);
    }
    buscfg_close(&d->bus);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    if (d->sigfd >= 0)
        close(d->sigfd);
    free_positions(d);
    free(d->pos);
    mbuf_free(&d->statsbuf);
    stats_destroy(&d->stats);
    free(d->src);
    cfg_destroy(&d->cfg);
    log_info("stopped", NULL);
}

int main(int argc, char **argv)
{
    writer_t d = { .sigfd = -1 };
    bool check;
    int rc0 = daemon_options(argc, argv, DAEMON, usage, &d.cfg_path, &check);
    if (rc0 >= 0)
        return rc0;
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
        printf(DAEMON ": %s is valid (database %s, batches of %lld rows or %lld ms)\n", d.cfg->path,
               d.cfg->pgwriter.database[0] ? "from [pgwriter] database" : "from the PG* environment",
               (long long)d.cfg->pgwriter.batch_rows, (long long)d.cfg->pgwriter.batch_time);
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
    int rc = d.rc;
    shutdown_all(&d);
    return rc;
}

/* tokmon-exporter: lifecycle only. Subscribes to every publisher (calls,
 * budgets, quota changes, StatsD flushes, every stage's stats, alerts),
 * keeps the metric model, serves /metrics and the JSON API on one port,
 * and pushes to Loki and to a remote-write receiver when configured. One
 * thread: the bus, HTTP (libmicrohttpd without a thread of its own) and
 * the pushers (libcurl multi) all run from this loop. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "api.h"
#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "daemon.h"
#include "log.h"
#include "loki.h"
#include "mbuf.h"
#include "model.h"
#include "msg.h"
#include "rsub.h"
#include "rw.h"
#include "sdnotify.h"
#include "sig.h"
#include "stats.h"
#include "tmtime.h"
#include "web.h"
#include "xalloc.h"

#define DAEMON "tokmon-exporter"
#define TICK_MS 100
#define MAX_POLL 80

typedef struct {
    const char *cfg_path;
    cfg_t *cfg;
    char *src;
    stats_t *stats;
    void *zctx;
    buscfg_t bus;
    rsub_t *rsub;
    model_t *model;
    api_t *api;
    web_t *web;
    loki_t *loki;
    rw_t *rw;
    int sigfd;
    bool stop;
    int64_t next_own, next_refresh, next_watchdog, watchdog_ns;
    int64_t *c_records, *c_bad;
    mbuf_t ownbuf;
} exporter_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " DAEMON " [-c FILE] [-n]\n"
            "Serves Prometheus/OpenMetrics metrics and the JSON API on [exporter] http\n"
            "(default 127.0.0.1:9464), from every stage's bus messages; pushes calls and alerts\n"
            "to Loki and metrics by Prometheus remote write when configured.\n\n"
            "  -c, --config FILE  configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -n, --check        check the configuration, then exit\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n\n"
            "Endpoints: GET /metrics, /health, /health/ready, /api/v1/... (docs/EXPORTER.md).\n"
            "Signals: TERM/INT stop (pushing what is queued first), USR1 prints the counters.\n");
}

/* ---- the bus -------------------------------------------------------------------- */

static void complain(exporter_t *d, const bus_msg_t *m, uint32_t i, const char *why)
{
    (*d->c_bad)++;
    static log_complain_t lc;
    char src[64];
    snprintf(src, sizeof src, "%.*s", (int)(m->src.len < 60 ? m->src.len : 60), m->src.p);
    log_complain(&lc, tmtime_mono_ns(), LOG_LVL_WARN, "skipped a bus record",
                 "src=%s seq=%llu record=%u reason=\"%s\"", src, (unsigned long long)m->seq, i, why);
}

static json_t *json_map(const msg_tag_t *t, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++) {
        char *k = strndup(t[i].key.p ? t[i].key.p : "", t[i].key.len);
        json_object_set_new(o, k, json_stringn(t[i].value.p ? t[i].value.p : "", t[i].value.len));
        free(k);
    }
    return o;
}

/* An alert transition to Loki: its labels and annotations as one object. */
static void loki_alert_msg(exporter_t *d, const msg_alert_t *a)
{
    json_t *o = json_object();
    json_object_set_new(o, "labels", json_map(a->labels, a->nlabels));
    json_object_set_new(o, "annotations", json_map(a->annotations, a->nannotations));
    char *j = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    char name[128], state[16], sev[32];
    snprintf(name, sizeof name, "%.*s", (int)a->alertname.len, a->alertname.p);
    snprintf(state, sizeof state, "%.*s", (int)a->state.len, a->state.p);
    snprintf(sev, sizeof sev, "%.*s", (int)a->severity.len, a->severity.p ? a->severity.p : "");
    if (j)
        loki_alert(d->loki, name, state, sev, j, strlen(j), a->ts);
    free(j);
}

static int apply_msg(void *arg, const bus_msg_t *m)
{
    exporter_t *d = arg;
    int64_t now = tmtime_now_ns();
    api_bus_seen(d->api, now);
    const msgpack_object *b = m->body;
    char err[256];
    if (span_eq_cstr(m->kind, MSG_KIND_STATS)) {
        static msg_stat_t entries[MSG_MAX_STATS];
        msg_stats_t s;
        if (msg_stats_unpack(b, &s, entries, MSG_MAX_STATS, err, sizeof err) == 0)
            model_stats(d->model, &s);
        else
            complain(d, m, 0, err);
        return 0;
    }
    if (b->type != MSGPACK_OBJECT_ARRAY) {
        complain(d, m, 0, "the body is not an array of records");
        return 0;
    }
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        const msgpack_object *r = &b->via.array.ptr[i];
        (*d->c_records)++;
        if (span_eq_cstr(m->kind, MSG_KIND_USAGE) && span_starts_with(m->topic, "ev.")) {
            msg_usage_t u;
            if (msg_usage_unpack(r, &u, err, sizeof err) < 0) {
                complain(d, m, i, err);
                continue;
            }
            model_usage(d->model, &u, now);
            api_call(d->api, m->src, m->seq, i, &u, now);
            if (d->loki)
                loki_call(d->loki, &u, now);
        } else if (span_eq_cstr(m->kind, MSG_KIND_BUDGET)) {
            msg_budget_t bs;
            if (msg_budget_unpack(r, &bs, err, sizeof err) < 0) {
                complain(d, m, i, err);
                continue;
            }
            model_budget(d->model, m->src, &bs);
        } else if (span_eq_cstr(m->kind, MSG_KIND_QUOTA)) {
            msg_quota_t q;
            if (msg_quota_unpack(r, &q, err, sizeof err) < 0) {
                complain(d, m, i, err);
                continue;
            }
            model_quota(d->model, &q);
        } else if (span_eq_cstr(m->kind, MSG_KIND_ALERT)) {
            msg_alert_t a;
            if (msg_alert_unpack(r, &a, err, sizeof err) < 0) {
                complain(d, m, i, err);
                continue;
            }
            if (d->loki)
                loki_alert_msg(d, &a);
        } else if (span_eq_cstr(m->kind, MSG_KIND_FLUSH)) {
            msg_flush_t f;
            if (msg_flush_unpack(r, &f, err, sizeof err) < 0) {
                complain(d, m, i, err);
                continue;
            }
            model_flush(d->model, &f);
        } else {
            complain(d, m, i, "a kind of message the exporter does not read on this topic");
            break;
        }
    }
    return 0;
}

/* The exporter's own counters, as the model shows every stage's. */
static void own_stats(exporter_t *d)
{
    msgpack_packer pk;
    if (d->rsub)
        buscfg_rsub_stats(d->rsub, d->stats);
    mbuf_reset(&d->ownbuf);
    mbuf_packer(&d->ownbuf, &pk);
    stats_pack(d->stats, &pk, tmtime_now_ns());
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    if (msgpack_unpack_next(&up, d->ownbuf.data, d->ownbuf.len, &off) == MSGPACK_UNPACK_SUCCESS) {
        static msg_stat_t entries[MSG_MAX_STATS];
        msg_stats_t s;
        char err[256];
        if (msg_stats_unpack(&up.data, &s, entries, MSG_MAX_STATS, err, sizeof err) == 0)
            model_stats(d->model, &s);
    }
    msgpack_unpacked_destroy(&up);
}

/* ---- loop ------------------------------------------------------------------------- */

static void on_signal(exporter_t *d)
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
            log_info("SIGHUP: the exporter's settings take effect on restart", NULL);
            break;
        case SIGUSR1:
            log_stats(d->stats);
            break;
        default:
            break;
        }
    }
}

static long min_timeout(long a, long b) { return b >= 0 && b < a ? b : a; }

static void run(exporter_t *d)
{
    zmq_pollitem_t items[MAX_POLL];
    int64_t now = tmtime_mono_ns();
    d->watchdog_ns = sdnotify_watchdog_usec() * 1000 / 2;
    d->next_watchdog = now;
    int webfd = web_fd(d->web);
    while (!d->stop) {
        int n = rsub_poll_items(d->rsub, items, MAX_POLL - 2);
        items[n++] = (zmq_pollitem_t){ .fd = d->sigfd, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .fd = webfd, .events = ZMQ_POLLIN };
        long timeout = TICK_MS;
        timeout = min_timeout(timeout, web_timeout(d->web));
        if (rsub_busy(d->rsub))
            timeout = min_timeout(timeout, 1);
        int64_t wall = tmtime_now_ns();
        if (d->loki)
            timeout = min_timeout(timeout, loki_work(d->loki, wall));
        if (d->rw)
            timeout = min_timeout(timeout, rw_work(d->rw, d->model, wall));
        if (zmq_poll(items, n, timeout) < 0 && errno != EINTR)
            log_error("zmq_poll", "error=\"%s\"", zmq_strerror(errno));
        on_signal(d);
        now = tmtime_mono_ns();
        if (rsub_work(d->rsub, now / TMTIME_NS_PER_MS) < 0)
            log_error("the subscriber stopped", "error=internal");
        if (now >= d->next_own) {
            own_stats(d);
            d->next_own = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
        }
        if (now >= d->next_refresh) { /* derived gauges for remote write */
            model_refresh(d->model, tmtime_now_ns());
            d->next_refresh = now + TMTIME_NS_PER_SEC;
        }
        web_run(d->web);
        api_work(d->api, tmtime_now_ns());
        if (d->watchdog_ns && now >= d->next_watchdog) {
            sdnotify_send("WATCHDOG=1");
            d->next_watchdog = now + d->watchdog_ns;
        }
    }
}

/* ---- start and stop ---------------------------------------------------------------- */

static int open_all(exporter_t *d, char *err, size_t cap)
{
    d->sigfd = sig_open();
    if (d->sigfd < 0) {
        snprintf(err, cap, "signalfd: %s", strerror(errno));
        return -1;
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    d->src = xasprintf("exporter@%s", host);
    d->stats = stats_new(DAEMON, d->src);
    d->c_records = stats_counter(d->stats, "exporter_records_total", NULL);
    d->c_bad = stats_counter(d->stats, "exporter_bad_records_total", NULL);
    d->model = model_new(d->cfg, d->stats, err, cap);
    if (!d->model)
        return -1;
    d->api = api_new(d->cfg, d->model, d->stats, err, cap);
    if (!d->api)
        return -1;
    bool failed = false;
    d->loki = loki_new(d->cfg, d->stats, &failed, err, cap);
    if (failed)
        return -1;
    d->rw = rw_new(d->cfg, d->stats, &failed, err, cap);
    if (failed)
        return -1;
    d->web = web_new(d->cfg->exporter.http, d->model, d->api, d->stats, err, cap);
    if (!d->web)
        return -1;
    d->zctx = zmq_ctx_new();
    if (buscfg_init(&d->bus, d->zctx, d->cfg, false, true, err, cap) < 0)
        return -1;
    static const char *const prefixes[] = { "ev.", "budget", "quota", "metric.flush", "stats",
                                            "alert" };
    static const int peers[] = { CFG_PEER_COLLECTD, CFG_PEER_AGGREGATOR, CFG_PEER_ALERTER,
                                 CFG_PEER_PGWRITER };
    d->rsub = buscfg_subscriber(&d->bus, d->zctx, d->cfg, peers, 4, prefixes, 6, RSUB_FROM_LIVE,
                                apply_msg, d, err, cap);
    if (!d->rsub || rsub_start(d->rsub, err, cap) < 0)
        return -1;
    log_info("started", "http=%s port=%u loki=%s remote_write=%s", d->cfg->exporter.http,
             web_port(d->web), d->loki ? "on" : "off", d->rw ? "on" : "off");
    return 0;
}

static void shutdown_all(exporter_t *d)
{
    sdnotify_send("STOPPING=1");
    if (d->loki)
        loki_drain(d->loki, 3000);
    if (d->rw && d->model) {
        model_refresh(d->model, tmtime_now_ns());
        rw_drain(d->rw, d->model, 3000);
    }
    /* the API first: its stream connections are suspended in the HTTP
     * server, which refuses to stop while any is */
    api_destroy(&d->api);
    web_destroy(&d->web);
    rsub_destroy(&d->rsub);
    loki_destroy(&d->loki);
    rw_destroy(&d->rw);
    model_destroy(&d->model);
    buscfg_close(&d->bus);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    if (d->sigfd >= 0)
        close(d->sigfd);
    mbuf_free(&d->ownbuf);
    stats_destroy(&d->stats);
    free(d->src);
    cfg_destroy(&d->cfg);
    log_info("stopped", NULL);
}

int main(int argc, char **argv)
{
    exporter_t d = { .sigfd = -1 };
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
        const cfg_exporter_t *x = &d.cfg->exporter;
        printf(DAEMON ": %s is valid (http %s, api %s, loki %s, remote write %s)\n", d.cfg->path,
               x->http, x->api_key_file[0] ? "on" : "off (no api_key_file)",
               x->loki_url[0] ? "on" : "off", x->remote_write_url[0] ? "on" : "off");
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

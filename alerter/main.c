/* tokmon-alerter: lifecycle only. Loads its state (the rules' windows, the
 * alerts, groups and silences, the bus positions), subscribes to the
 * collectors (calls), the aggregators (budgets, quota changes) and every
 * stage's stats from those positions, evaluates the rules every
 * eval_interval, publishes transitions on `alert`, notifies the receivers,
 * sends the daily digest, answers tokmonctl on its control socket, and
 * saves its state after every transition, on an interval and on SIGTERM. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "buscfg.h"
#include "cal.h"
#include "cfg.h"
#include "daemon.h"
#include "digest.h"
#include "engine.h"
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "notify.h"
#include "rsub.h"
#include "rules.h"
#include "sdnotify.h"
#include "sig.h"
#include "snap.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define DAEMON "tokmon-alerter"
#define TICK_MS 100
#define MAX_POLL 80
#define STATE_KIND "tokmon-alerter"
#define STATE_VERSION 1

typedef struct {
    const char *cfg_path;
    cfg_t *cfg;
    char *src, *state_path, *alerts_path;
    stats_t *stats;
    void *zctx;
    buscfg_t bus;
    bus_pub_t *pub;
    rsub_t *rsub;
    void *control;
    rules_t *rules;
    notify_t *notify;
    engine_t *engine;
    cal_t *cal;
    int sigfd;
    bool stop, dirty;
    int64_t state_saved_at;
    int64_t next_eval, next_snapshot, next_stats, next_watchdog, watchdog_ns;
    int64_t digest_done; /* the day start of the last digest sent */
    int64_t *c_records, *c_bad, *c_snapshots, *c_snapshot_errors, *c_delivered, *c_failed,
        *c_digests, *c_control;
    mbuf_t out, statsbuf, answer;
    uint32_t nout;
} alerter_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " DAEMON " [-c FILE] [-n]\n"
            "Watches the priced calls, budgets, quotas and every stage's counters, raises\n"
            "alerts with Prometheus semantics (for, pending, firing, resolved; grouping,\n"
            "inhibition, silences) and notifies webhooks, Slack, Telegram, e-mail and\n"
            "Alertmanager; sends a daily digest.\n\n"
            "  -c, --config FILE  configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -n, --check        check the configuration, then exit\n"
            "  -h, --help         this text\n"
            "  -V, --version      print the version\n\n"
            "Silences and the alerts: tokmonctl silence add|list|expire, tokmonctl alerts.\n"
            "Signals: TERM/INT save and exit, USR1 prints the counters.\n");
}

/* ---- the bus ------------------------------------------------------------------------- */

static void publish_alert(void *arg, const msg_alert_t *a)
{
    alerter_t *d = arg;
    msgpack_packer pk;
    mbuf_packer(&d->out, &pk);
    msg_alert_pack(&pk, a);
    d->nout++;
    d->dirty = true;
}

/* The transitions of a round go out as one message. */
static void flush_alerts(alerter_t *d)
{
    if (!d->nout)
        return;
    mbuf_t head = { 0 };
    msgpack_packer pk;
    mbuf_packer(&head, &pk);
    msgpack_pack_array(&pk, d->nout);
    bus_pub_send(d->pub, "alert", MSG_KIND_ALERT, head.data, head.len, d->out.data, d->out.len);
    mbuf_free(&head);
    mbuf_reset(&d->out);
    d->nout = 0;
}

static void complain(alerter_t *d, const bus_msg_t *m, const char *why)
{
    (*d->c_bad)++;
    static log_complain_t lc;
    char src[64];
    snprintf(src, sizeof src, "%.*s", (int)(m->src.len < 60 ? m->src.len : 60), m->src.p);
    log_complain(&lc, tmtime_mono_ns(), LOG_LVL_WARN, "skipped a bus record",
                 "src=%s seq=%llu reason=\"%s\"", src, (unsigned long long)m->seq, why);
}

static int apply_msg(void *arg, const bus_msg_t *m)
{
    alerter_t *d = arg;
    int64_t now = tmtime_now_ns();
    char err[256];
    const msgpack_object *b = m->body;
    if (span_eq_cstr(m->kind, MSG_KIND_STATS)) {
        static msg_stat_t entries[MSG_MAX_STATS];
        msg_stats_t s;
        if (msg_stats_unpack(b, &s, entries, MSG_MAX_STATS, err, sizeof err) == 0)
            rules_stats(d->rules, &s, now);
        else
            complain(d, m, err);
        return 0;
    }
    if (b->type != MSGPACK_OBJECT_ARRAY) {
        complain(d, m, "the body is not an array of records");
        return 0;
    }
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        const msgpack_object *r = &b->via.array.ptr[i];
        (*d->c_records)++;
        if (span_eq_cstr(m->kind, MSG_KIND_USAGE) && span_starts_with(m->topic, "ev.")) {
            msg_usage_t u;
            if (msg_usage_unpack(r, &u, err, sizeof err) < 0)
                complain(d, m, err);
            else
                rules_usage(d->rules, &u, now);
        } else if (span_eq_cstr(m->kind, MSG_KIND_BUDGET)) {
            msg_budget_t bs;
            if (msg_budget_unpack(r, &bs, err, sizeof err) < 0)
                complain(d, m, err);
            else
                rules_budget(d->rules, m->src, &bs);
        } else if (span_eq_cstr(m->kind, MSG_KIND_QUOTA)) {
            msg_quota_t q;
            if (msg_quota_unpack(r, &q, err, sizeof err) < 0)
                complain(d, m, err);
            else
                rules_quota(d->rules, &q);
        } else {
            complain(d, m, "a kind of message the alerter does not read on this topic");
            break;
        }
    }
    return 0;
}

/* ---- state ------------------------------------------------------------------------------ */

typedef struct {
    alerter_t *d;
    msgpack_packer *pk;
} pos_ctx_t;

static void count_pos(const char *src, uint64_t seq, void *arg)
{
    (void)src;
    (void)seq;
    (*(uint32_t *)arg)++;
}

static void pack_pos(const char *src, uint64_t seq, void *arg)
{
    msgpack_packer *pk = arg;
    msgpack_pack_array(pk, 2);
    snap_pack_str(pk, src, strlen(src));
    msgpack_pack_uint64(pk, seq);
}

/* The alerts alone (small): after every transition, silence and digest,
 * so that nothing fires or is told twice after a restart, however large
 * the rules' windows are. [kind, version, saved_at, digest_done], then the
 * engine. */
#define ALERTS_KIND "tokmon-alerter-alerts"

static void save_alerts(alerter_t *d, const char *why)
{
    char err[512];
    flush_alerts(d);
    bus_pub_flush(d->pub);
    snapw_t *w = snapw_open(d->alerts_path, err, sizeof err);
    if (!w) {
        (*d->c_snapshot_errors)++;
        log_error("cannot save the alerts", "error=\"%s\"", err);
        return;
    }
    msgpack_packer *pk = snapw_packer(w);
    msgpack_pack_array(pk, 4);
    snap_pack_str(pk, ALERTS_KIND, strlen(ALERTS_KIND));
    msgpack_pack_int(pk, STATE_VERSION);
    msgpack_pack_int64(pk, tmtime_now_ns());
    msgpack_pack_int64(pk, d->digest_done);
    snapw_record(w);
    engine_save(d->engine, snapw_packer(w));
    snapw_record(w);
    if (snapw_commit(&w, err, sizeof err) < 0) {
        (*d->c_snapshot_errors)++;
        log_error("cannot save the alerts; the previous ones stay", "error=\"%s\"", err);
        return;
    }
    d->dirty = false;
    log_debug("alerts saved", "why=%s", why);
}

/* [kind, version, digest_done, [[src, seq]...], saved_at], then the rules,
 * then the engine */
static void save_state(alerter_t *d, const char *why)
{
    char err[512];
    flush_alerts(d);
    bus_pub_flush(d->pub);
    snapw_t *w = snapw_open(d->state_path, err, sizeof err);
    if (!w) {
        (*d->c_snapshot_errors)++;
        log_error("cannot save the state", "error=\"%s\"", err);
        return;
    }
    msgpack_packer *pk = snapw_packer(w);
    uint32_t npos = 0;
    rsub_each_position(d->rsub, count_pos, &npos);
    msgpack_pack_array(pk, 5);
    snap_pack_str(pk, STATE_KIND, strlen(STATE_KIND));
    msgpack_pack_int(pk, STATE_VERSION);
    msgpack_pack_int64(pk, d->digest_done);
    msgpack_pack_array(pk, npos);
    rsub_each_position(d->rsub, pack_pos, pk);
    msgpack_pack_int64(pk, tmtime_now_ns());
    snapw_record(w);
    rules_save(d->rules, snapw_packer(w));
    snapw_record(w);
    engine_save(d->engine, snapw_packer(w));
    snapw_record(w);
    if (snapw_commit(&w, err, sizeof err) < 0) {
        (*d->c_snapshot_errors)++;
        log_error("cannot save the state; the previous one stays", "error=\"%s\"", err);
        return;
    }
    (*d->c_snapshots)++;
    d->dirty = false;
    log_debug("state saved", "why=%s", why);
}

static int load_state(alerter_t *d, char *err, size_t cap)
{
    snapr_t *r = snapr_open(d->state_path, err, cap);
    if (!r)
        return errno == ENOENT ? 0 : -1;
    int rc = -1;
    const msgpack_object *o = snapr_next(r, err, cap);
    snap_rec_t h;
    if (!o)
        goto out;
    snap_rec_open(&h, o);
    span_t kind = snap_rec_str(&h);
    int64_t version = snap_rec_i64(&h), digest_done = snap_rec_i64(&h);
    const msgpack_object *pos = snap_rec_obj(&h);
    int64_t saved_at = snap_rec_i64(&h);
    d->state_saved_at = saved_at;
    if (!snap_rec_ok(&h) || !span_eq_cstr(kind, STATE_KIND) || version != STATE_VERSION || !pos ||
        pos->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(err, cap, "%s: not a state of this version of tokmon-alerter", d->state_path);
        goto out;
    }
    for (uint32_t i = 0; i < pos->via.array.size; i++) {
        snap_rec_t p;
        snap_rec_open(&p, &pos->via.array.ptr[i]);
        span_t src = snap_rec_str(&p);
        uint64_t seq = snap_rec_u64(&p);
        if (!snap_rec_ok(&p) || !src.len || src.len > 255 || memchr(src.p, '\0', src.len)) {
            snprintf(err, cap, "%s: malformed bus positions", d->state_path);
            goto out;
        }
        char *s = xstrndup(src.p, src.len);
        rsub_set_position(d->rsub, s, seq);
        free(s);
    }
    d->digest_done = digest_done;
    o = snapr_next(r, err, cap);
    if (!o || rules_load(d->rules, o) < 0) {
        snprintf(err, cap, "%s: the rules' state does not load", d->state_path);
        goto out;
    }
    o = snapr_next(r, err, cap);
    char e2[256];
    if (!o || engine_load(d->engine, o, e2, sizeof e2) < 0) {
        snprintf(err, cap, "%s: %s", d->state_path, o ? e2 : "the alerts are missing");
        goto out;
    }
    rc = 1;
out:
    snapr_close(&r);
    return rc;
}

/* The alerts saved after the last full state, if any: they win. */
static int load_alerts(alerter_t *d, char *err, size_t cap)
{
    snapr_t *r = snapr_open(d->alerts_path, err, cap);
    if (!r)
        return errno == ENOENT ? 0 : -1;
    int rc = -1;
    const msgpack_object *o = snapr_next(r, err, cap);
    snap_rec_t h;
    if (!o)
        goto out;
    snap_rec_open(&h, o);
    span_t kind = snap_rec_str(&h);
    int64_t version = snap_rec_i64(&h), saved_at = snap_rec_i64(&h),
            digest_done = snap_rec_i64(&h);
    if (!snap_rec_ok(&h) || !span_eq_cstr(kind, ALERTS_KIND) || version != STATE_VERSION) {
        snprintf(err, cap, "%s: not alerts of this version of tokmon-alerter", d->alerts_path);
        goto out;
    }
    if (saved_at <= d->state_saved_at) { /* the full state is newer */
        rc = 0;
        goto out;
    }
    o = snapr_next(r, err, cap);
    char e2[256];
    engine_opts_t eo = { d->cfg, d->stats, d->notify, publish_alert, d };
    engine_t *fresh = engine_new(&eo, e2, sizeof e2);
    if (!o || !fresh || engine_load(fresh, o, e2, sizeof e2) < 0) {
        snprintf(err, cap, "%s: %s", d->alerts_path, o ? e2 : "the alerts are missing");
        engine_destroy(&fresh);
        goto out;
    }
    engine_destroy(&d->engine);
    d->engine = fresh;
    if (digest_done > d->digest_done)
        d->digest_done = digest_done;
    rc = 1;
out:
    snapr_close(&r);
    return rc;
}

/* ---- control socket ------------------------------------------------------------------------ */

static void pack_str(msgpack_packer *pk, const char *s) { msg_pack_span(pk, span_cstr(s)); }

static void answer_error(mbuf_t *out, const char *why)
{
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "ok");
    msgpack_pack_false(&pk);
    pack_str(&pk, "error");
    pack_str(&pk, why);
}

static void answer_head(mbuf_t *out, msgpack_packer *pk, uint32_t extra)
{
    mbuf_reset(out);
    mbuf_packer(out, pk);
    msgpack_pack_map(pk, 3 + extra);
    pack_str(pk, "ok");
    msgpack_pack_true(pk);
    pack_str(pk, "shard");
    msgpack_pack_uint32(pk, 0);
    pack_str(pk, "shards");
    msgpack_pack_uint32(pk, 1);
}

static char *field_str(const msgpack_object *m, const char *k)
{
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
            !memcmp(key->via.str.ptr, k, key->via.str.size) && v->type == MSGPACK_OBJECT_STR &&
            v->via.str.size < 4096)
            return xstrndup(v->via.str.ptr ? v->via.str.ptr : "", v->via.str.size);
    }
    return NULL;
}

static int64_t field_int(const msgpack_object *m, const char *k, int64_t dflt)
{
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
            !memcmp(key->via.str.ptr, k, key->via.str.size) &&
            v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
            return (int64_t)v->via.u64;
    }
    return dflt;
}

static void answer(alerter_t *d, const void *req, size_t len)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    int64_t now = tmtime_now_ns();
    if (len > 65536 || msgpack_unpack_next(&up, req, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP) {
        answer_error(&d->answer, "a request is one msgpack map");
        msgpack_unpacked_destroy(&up);
        return;
    }
    const msgpack_object *m = &up.data;
    char *q = field_str(m, "q");
    msgpack_packer pk;
    if (!q) {
        answer_error(&d->answer, "the request has no q");
    } else if (!strcmp(q, "alerts")) {
        answer_head(&d->answer, &pk, 1);
        pack_str(&pk, "alerts");
        engine_pack_alerts(d->engine, &pk);
    } else if (!strcmp(q, "silences")) {
        answer_head(&d->answer, &pk, 1);
        pack_str(&pk, "silences");
        engine_pack_silences(d->engine, now, &pk);
    } else if (!strcmp(q, "silence_add")) {
        char *matchers = field_str(m, "matchers"), *comment = field_str(m, "comment"),
             *by = field_str(m, "by");
        int64_t secs = field_int(m, "duration", 0);
        char id[17], err[256];
        if (!matchers || secs <= 0 || secs > 366LL * 86400) {
            answer_error(&d->answer, "silence_add needs matchers and a duration in seconds "
                                     "(at most a year)");
        } else if (engine_silence_add(d->engine, matchers, now + secs * TMTIME_NS_PER_SEC, comment,
                                      by, now, id, err, sizeof err) < 0) {
            answer_error(&d->answer, err);
        } else {
            answer_head(&d->answer, &pk, 1);
            pack_str(&pk, "id");
            pack_str(&pk, id);
            d->dirty = true;
        }
        free(matchers);
        free(comment);
        free(by);
    } else if (!strcmp(q, "silence_expire")) {
        char *id = field_str(m, "id");
        if (!id || engine_silence_expire(d->engine, id, now) < 0) {
            answer_error(&d->answer, "no active silence with that id");
        } else {
            answer_head(&d->answer, &pk, 0);
            d->dirty = true;
        }
        free(id);
    } else {
        answer_error(&d->answer, "unknown q: alerts, silences, silence_add or silence_expire");
    }
    free(q);
    msgpack_unpacked_destroy(&up);
}

static void answer_control(void *arg, const void *req, size_t len, mbuf_t *out)
{
    (void)out; /* answer() writes d->answer, which out is */
    answer(arg, req, len);
}

/* Answers every waiting tokmonctl request. */
static void serve_control(alerter_t *d)
{
    *d->c_control += daemon_serve_router(d->control, answer_control, d, &d->answer);
}

/* ---- the digest and deliveries ------------------------------------------------------------- */

static void digest_due(alerter_t *d, int64_t now)
{
    int64_t hour = d->cfg->alerter.digest_hour;
    if (hour < 0 || !d->notify)
        return;
    int64_t today = cal_start(d->cal, CAL_DAY, now);
    if (d->digest_done >= today || now < today + hour * 3600 * TMTIME_NS_PER_SEC)
        return;
    int64_t yesterday = cal_start(d->cal, CAL_DAY, today - 1);
    struct tm tm;
    char day[32] = "yesterday";
    if (cal_civil(d->cal, yesterday, &tm) == 0)
        snprintf(day, sizeof day, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    char subject[256];
    mbuf_t text = { 0 };
    digest_build(d->rules, d->engine, yesterday, today, day, subject, sizeof subject, &text);
    mbuf_append(&text, "", 1);
    const cfg_list_t *to = &d->cfg->alerter.digest_receivers;
    for (size_t i = 0; i < d->cfg->nnotifies; i++) {
        const char *name = d->cfg->notifies[i].name;
        bool wanted = to->n == 0;
        for (size_t k = 0; k < to->n; k++)
            wanted |= !strcmp(to->v[k], name);
        if (wanted)
            notify_message(d->notify, name, subject, text.data, now);
    }
    mbuf_free(&text);
    d->digest_done = today;
    d->dirty = true;
    (*d->c_digests)++;
    log_info("daily digest sent", "day=%s", day);
}

static void on_result(void *arg, const notify_result_t *r)
{
    alerter_t *d = arg;
    if (r->ok) {
        (*d->c_delivered)++;
        log_info("notification delivered", "receiver=%s id=%lld attempts=%d", r->receiver,
                 (long long)r->id, r->attempts);
    } else {
        (*d->c_failed)++;
        log_error("notification given up", "receiver=%s id=%lld attempts=%d error=\"%s\"",
                  r->receiver, (long long)r->id, r->attempts, r->error);
    }
}

/* ---- loop -------------------------------------------------------------------------------- */

static void on_signal(alerter_t *d)
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
            log_info("SIGHUP: the alerter's settings take effect on restart", NULL);
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

static void run(alerter_t *d)
{
    zmq_pollitem_t items[MAX_POLL];
    const cfg_alerter_t *c = &d->cfg->alerter;
    int64_t now = tmtime_mono_ns();
    d->next_eval = now;
    d->next_snapshot = now + c->snapshot_interval * TMTIME_NS_PER_MS;
    d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
    d->watchdog_ns = sdnotify_watchdog_usec() * 1000 / 2;
    d->next_watchdog = now;
    while (!d->stop) {
        int n = rsub_poll_items(d->rsub, items, MAX_POLL - 4);
        items[n++] = (zmq_pollitem_t){ .fd = d->sigfd, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .socket = d->control, .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t){ .socket = bus_pub_socket(d->pub), .events = ZMQ_POLLIN };
        void *rs = bus_pub_replay_socket(d->pub);
        if (rs)
            items[n++] = (zmq_pollitem_t){ .socket = rs, .events = ZMQ_POLLIN };
        long timeout = TICK_MS;
        if (rsub_busy(d->rsub))
            timeout = 1;
        if (d->notify)
            timeout = min_timeout(timeout, notify_work(d->notify, tmtime_now_ns()));
        if (zmq_poll(items, n, timeout) < 0 && errno != EINTR)
            log_error("zmq_poll", "error=\"%s\"", zmq_strerror(errno));
        on_signal(d);
        now = tmtime_mono_ns();
        if (rsub_work(d->rsub, now / TMTIME_NS_PER_MS) < 0)
            log_error("the subscriber stopped", "error=internal");
        serve_control(d);
        int64_t wall = tmtime_now_ns();
        /* rules only once the backlog is read: a replay must not look like news */
        if (now >= d->next_eval && rsub_caught_up(d->rsub)) {
            size_t changes = engine_round(d->engine, d->rules, wall);
            flush_alerts(d);
            if (changes)
                save_alerts(d, "transition");
            d->next_eval = now + c->eval_interval * TMTIME_NS_PER_MS;
        } else {
            engine_tick(d->engine, wall);
        }
        digest_due(d, wall);
        if (d->notify)
            notify_results(d->notify, on_result, d);
        bus_pub_work(d->pub, now / TMTIME_NS_PER_MS);
        if (bus_pub_poll_subscribed(d->pub, "stats") || now >= d->next_stats) {
            buscfg_send_stats(d->pub, d->rsub, d->stats, &d->statsbuf);
            d->next_stats = now + d->cfg->global.stats_interval * TMTIME_NS_PER_MS;
        }
        bus_pub_flush(d->pub);
        if (now >= d->next_snapshot) {
            save_state(d, "interval");
            d->next_snapshot = tmtime_mono_ns() + c->snapshot_interval * TMTIME_NS_PER_MS;
        } else if (d->dirty) {
            save_alerts(d, "change");
        }
        if (d->watchdog_ns && now >= d->next_watchdog) {
            sdnotify_send("WATCHDOG=1");
            d->next_watchdog = now + d->watchdog_ns;
        }
    }
}

/* ---- start and stop ------------------------------------------------------------------------- */

static int open_all(alerter_t *d, char *err, size_t cap)
{
    d->sigfd = sig_open();
    if (d->sigfd < 0) {
        snprintf(err, cap, "signalfd: %s", strerror(errno));
        return -1;
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    d->src = d->cfg->alerter.src[0] ? xstrdup(d->cfg->alerter.src) : xasprintf("alerter@%s", host);
    d->stats = stats_new(DAEMON, d->src);
    d->c_records = stats_counter(d->stats, "alerter_records_total", NULL);
    d->c_bad = stats_counter(d->stats, "alerter_bad_records_total", NULL);
    d->c_snapshots = stats_counter(d->stats, "alerter_snapshots_total", NULL);
    d->c_snapshot_errors = stats_counter(d->stats, "alerter_snapshot_errors_total", NULL);
    d->c_delivered = stats_counter(d->stats, "alerter_deliveries_total", "outcome=ok");
    d->c_failed = stats_counter(d->stats, "alerter_deliveries_total", "outcome=failed");
    d->c_digests = stats_counter(d->stats, "alerter_digests_total", NULL);
    d->c_control = stats_counter(d->stats, "alerter_control_requests_total", NULL);
    d->cal = cal_new(d->cfg->global.timezone, err, cap);
    if (!d->cal)
        return -1;
    char *dir = xasprintf("%s/alerter", d->cfg->global.state_dir);
    if (daemon_mkdirs(dir) < 0) {
        snprintf(err, cap, "%s: %s", dir, strerror(errno));
        free(dir);
        return -1;
    }
    d->state_path = xasprintf("%s/%s.state", dir, d->src);
    d->alerts_path = xasprintf("%s/%s.alerts", dir, d->src);
    free(dir);
    d->rules = rules_new(d->cfg, d->stats, err, cap);
    if (!d->rules)
        return -1;
    if (d->cfg->nnotifies) {
        d->notify = notify_new(d->cfg, d->stats, err, cap);
        if (!d->notify)
            return -1;
    }
    engine_opts_t eo = { d->cfg, d->stats, d->notify, publish_alert, d };
    d->engine = engine_new(&eo, err, cap);
    if (!d->engine)
        return -1;
    d->zctx = zmq_ctx_new();
    if (buscfg_init(&d->bus, d->zctx, d->cfg, true, true, err, cap) < 0)
        return -1;
    static const char *const prefixes[] = { "ev.", "budget", "quota", "stats" };
    static const int peers[] = { CFG_PEER_COLLECTD, CFG_PEER_AGGREGATOR, CFG_PEER_PGWRITER };
    d->rsub = buscfg_subscriber(&d->bus, d->zctx, d->cfg, peers, 3, prefixes, 4, RSUB_FROM_LIVE,
                                apply_msg, d, err, cap);
    if (!d->rsub)
        return -1;
    int rc = load_state(d, err, cap);
    if (rc < 0)
        return -1;
    int ra = load_alerts(d, err, cap);
    if (ra < 0)
        return -1;
    rc |= ra;
    if (rc > 0)
        log_info("state loaded", "path=%s firing=%zu", d->state_path, engine_firing(d->engine));
    d->pub = buscfg_publisher(&d->bus, d->zctx, d->cfg, CFG_PEER_ALERTER, d->src, err, cap);
    if (!d->pub)
        return -1;
    d->control = zmq_socket(d->zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(d->control, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(d->control, d->cfg->alerter.control) != 0) {
        snprintf(err, cap, "[alerter] control %s: %s", d->cfg->alerter.control, zmq_strerror(errno));
        return -1;
    }
    if (rsub_start(d->rsub, err, cap) < 0)
        return -1;
    log_info("started", "src=%s control=%s receivers=%zu rules=%zu state=%s", d->src,
             d->cfg->alerter.control, d->cfg->nnotifies, d->cfg->nrules, d->state_path);
    return 0;
}

static void shutdown_all(alerter_t *d)
{
    sdnotify_send("STOPPING=1");
    if (d->engine && d->rules && d->pub && d->rsub)
        save_state(d, "stop");
    if (d->notify)
        notify_drain(d->notify, 3000);
    if (d->pub) {
        buscfg_send_stats(d->pub, d->rsub, d->stats, &d->statsbuf);
        bus_pub_flush(d->pub);
    }
    engine_destroy(&d->engine);
    notify_destroy(&d->notify);
    rules_destroy(&d->rules);
    rsub_destroy(&d->rsub);
    if (d->control)
        zmq_close(d->control);
    if (d->pub) {
        bus_pub_sync(d->pub);
        bus_pub_destroy(&d->pub);
    }
    buscfg_close(&d->bus);
    if (d->zctx)
        zmq_ctx_term(d->zctx);
    if (d->sigfd >= 0)
        close(d->sigfd);
    cal_destroy(&d->cal);
    mbuf_free(&d->out);
    mbuf_free(&d->statsbuf);
    mbuf_free(&d->answer);
    stats_destroy(&d->stats);
    free(d->src);
    free(d->state_path);
    free(d->alerts_path);
    cfg_destroy(&d->cfg);
    log_info("stopped", NULL);
}

int main(int argc, char **argv)
{
    alerter_t d = { .sigfd = -1 };
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
        stats_t *st = stats_new(DAEMON, "check");
        rules_t *r = rules_new(d.cfg, st, err, sizeof err);
        notify_t *nt = r && d.cfg->nnotifies ? notify_new(d.cfg, st, err, sizeof err) : NULL;
        bool ok = r && (!d.cfg->nnotifies || nt);
        if (ok)
            printf(DAEMON ": %s is valid (%zu receivers, %zu rules of your own)\n", d.cfg->path,
                   d.cfg->nnotifies, d.cfg->nrules);
        else
            fprintf(stderr, DAEMON ": %s\n", err);
        notify_destroy(&nt);
        rules_destroy(&r);
        stats_destroy(&st);
        cfg_destroy(&d.cfg);
        return ok ? 0 : 1;
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

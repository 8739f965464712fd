#include "agg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktab.h"
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "snap.h"
#include "tmtime.h"
#include "xalloc.h"

#define OUT_BATCH 1000                        /* records in one outgoing message */
#define FUTURE_NS (300 * TMTIME_NS_PER_SEC)   /* event times further ahead are the receive time */
#define BUDGET_FULL_EVERY 12                  /* every Nth budget status round sends all */
#define SNAP_VERSION 1
/* Receive times outside [2000, 2200) are refused: the calendar periods and
 * bucket bounds derived from them must stay within int64 and above 0, where
 * the bus formats want them. */
#define RECV_MIN (946684800LL * TMTIME_NS_PER_SEC)
#define RECV_MAX (7258118400LL * TMTIME_NS_PER_SEC)

typedef enum { OQ_ROLL_M, OQ_ROLL_H, OQ_ROLL_D, OQ_QUOTA, OQ_BUDGET, OQ_FLUSH, OQ_N } outq_id_t;

static const struct {
    const char *topic, *kind;
} outq_names[OQ_N] = {
    { "roll.m", MSG_KIND_ROLLUP }, { "roll.h", MSG_KIND_ROLLUP }, { "roll.d", MSG_KIND_ROLLUP },
    { "quota", MSG_KIND_QUOTA },   { "budget", MSG_KIND_BUDGET }, { "metric.flush", MSG_KIND_FLUSH },
};

typedef struct {
    mbuf_t body; /* packed records, without the array header */
    msgpack_packer pk;
    uint32_t n;
} outq_t;

enum { RC_MODEL, RC_PROJECT, RC_N };

struct agg {
    agg_opts_t o;
    char *src;
    cal_t *cal;
    quota_t *quota;
    budget_t *budget;
    rollup_t *rollup;
    sflush_t *sflush;
    ktab_t *recent[RC_N]; /* "provider/model", project -> win_t */
    int64_t history_ns;
    int64_t maxrecv, watermark;
    int64_t budget_interval, quota_sweep;
    int64_t next_budget, next_sweep;
    unsigned budget_rounds;
    bool want_shard[256];
    outq_t out[OQ_N];
    log_complain_t complain;
    /* counters */
    int64_t *c_msgs, *c_records, *c_samples, *c_bad_records, *c_bad_msgs, *c_other_kind;
    int64_t *c_wrong_shard, *c_future, *c_late, *c_quota_changes, *c_crossings, *c_send_errors;
    int64_t *g_users, *g_accounts, *g_cells, *g_series, *g_memory, *g_watermark;
};

/* ---- output --------------------------------------------------------------- */

static int send_queue(agg_t *a, outq_id_t q)
{
    outq_t *o = &a->out[q];
    if (!o->n)
        return 0;
    char head[5];
    head[0] = (char)0xdd;
    head[1] = (char)(o->n >> 24);
    head[2] = (char)(o->n >> 16);
    head[3] = (char)(o->n >> 8);
    head[4] = (char)o->n;
    if (a->o.send(a->o.send_arg, outq_names[q].topic, outq_names[q].kind, head, sizeof head,
                  o->body.data, o->body.len) < 0) {
        (*a->c_send_errors)++;
        return -1;
    }
    mbuf_reset(&o->body);
    o->n = 0;
    return 0;
}

int agg_flush(agg_t *a)
{
    int rc = 0;
    for (int q = 0; q < OQ_N; q++)
        rc |= send_queue(a, (outq_id_t)q);
    return rc;
}

static void queued(agg_t *a, outq_id_t q)
{
    if (++a->out[q].n >= OUT_BATCH)
        send_queue(a, q);
}

static void emit_quota(void *arg, const msg_quota_t *m)
{
    agg_t *a = arg;
    msg_quota_pack(&a->out[OQ_QUOTA].pk, m);
    (*a->c_quota_changes)++;
    queued(a, OQ_QUOTA);
}

static void emit_budget(void *arg, const msg_budget_t *m)
{
    agg_t *a = arg;
    msg_budget_pack(&a->out[OQ_BUDGET].pk, m);
    if (m->crossing.p)
        (*a->c_crossings)++;
    queued(a, OQ_BUDGET);
}

static void emit_rollup(void *arg, rgrain_t g, const msg_rollup_t *m)
{
    agg_t *a = arg;
    outq_id_t q = (outq_id_t)(OQ_ROLL_M + g);
    msg_rollup_pack(&a->out[q].pk, m);
    queued(a, q);
}

static void emit_flush(void *arg, const msg_flush_t *m)
{
    agg_t *a = arg;
    msg_flush_pack(&a->out[OQ_FLUSH].pk, m);
    queued(a, OQ_FLUSH);
}

/* ---- life ------------------------------------------------------------------- */

static void win_val_free(void *val)
{
    win_free(val);
}

static void set_intervals(agg_t *a, const cfg_t *cfg)
{
    a->budget_interval = cfg->aggregator.budget_interval * TMTIME_NS_PER_MS;
    a->quota_sweep = cfg->aggregator.quota_sweep * TMTIME_NS_PER_MS;
}

agg_t *agg_new(const agg_opts_t *o, char *err, size_t errcap)
{
    const cfg_t *cfg = o->cfg;
    cal_t *cal = cal_new(cfg->global.timezone, err, errcap);
    if (!cal)
        return NULL;
    agg_t *a = xcalloc(1, sizeof *a);
    a->o = *o;
    a->src = xstrdup(o->src);
    a->o.src = a->src;
    a->cal = cal;
    const cfg_aggregator_t *ac = &cfg->aggregator;
    a->history_ns = ac->history * TMTIME_NS_PER_MS;
    quota_opts_t qo = { cal, cfg->quota.window * TMTIME_NS_PER_MS, a->history_ns, o->shard,
                        o->shards, emit_quota, a };
    a->quota = quota_new(&qo);
    quota_limits(a->quota, cfg);
    budget_opts_t bo = { cal, o->shard, o->shards, emit_budget, a };
    a->budget = budget_new(&bo);
    budget_configure(a->budget, cfg);
    rollup_opts_t ro = { cal, ac->lateness * TMTIME_NS_PER_MS, ac->close_delay * TMTIME_NS_PER_MS,
                         ac->rollup_users, o->shard, o->shards, emit_rollup, a };
    a->rollup = rollup_new(&ro);
    sflush_opts_t so = {
        .interval_ns = ac->statsd_interval * TMTIME_NS_PER_MS,
        .close_delay_ns = ac->close_delay * TMTIME_NS_PER_MS,
        .lateness_ns = ac->lateness * TMTIME_NS_PER_MS,
        .future_ns = FUTURE_NS,
        .max_series = (size_t)ac->statsd_max_series,
        .max_set_members = (size_t)ac->statsd_max_set,
        .idle_intervals = (uint32_t)ac->statsd_idle,
        .emit = emit_flush,
        .arg = a,
    };
    a->sflush = sflush_new(&so);
    if (!a->sflush)
        abort(); /* the config's ranges keep every option valid */
    for (int i = 0; i < RC_N; i++)
        a->recent[i] = ktab_new(sizeof(win_t), win_val_free);
    for (int x = 0; x < 256; x++)
        a->want_shard[x] = (uint32_t)x % o->shards == o->shard;
    for (int q = 0; q < OQ_N; q++)
        mbuf_packer(&a->out[q].body, &a->out[q].pk);
    set_intervals(a, cfg);

    stats_t *st = o->stats;
    a->c_msgs = stats_counter(st, "agg_messages_total", NULL);
    a->c_records = stats_counter(st, "agg_records_total", "kind=usage");
    a->c_samples = stats_counter(st, "agg_records_total", "kind=sample");
    a->c_bad_records = stats_counter(st, "agg_rejected_total", "reason=malformed_record");
    a->c_bad_msgs = stats_counter(st, "agg_rejected_total", "reason=malformed_message");
    a->c_other_kind = stats_counter(st, "agg_rejected_total", "reason=unexpected_kind");
    a->c_wrong_shard = stats_counter(st, "agg_rejected_total", "reason=other_shard");
    a->c_future = stats_counter(st, "agg_future_events_total", NULL);
    a->c_late = stats_counter(st, "agg_late_events_total", NULL);
    a->c_quota_changes = stats_counter(st, "agg_quota_changes_total", NULL);
    a->c_crossings = stats_counter(st, "agg_budget_crossings_total", NULL);
    a->c_send_errors = stats_counter(st, "agg_send_errors_total", NULL);
    a->g_users = stats_gauge(st, "agg_users", NULL);
    a->g_accounts = stats_gauge(st, "agg_accounts", NULL);
    a->g_cells = stats_gauge(st, "agg_rollup_cells", NULL);
    a->g_series = stats_gauge(st, "agg_statsd_series", NULL);
    a->g_memory = stats_gauge(st, "agg_state_bytes", NULL);
    a->g_watermark = stats_gauge(st, "agg_watermark_ns", NULL);
    return a;
}

void agg_destroy(agg_t **pa)
{
    agg_t *a = *pa;
    if (!a)
        return;
    quota_destroy(&a->quota);
    budget_destroy(&a->budget);
    rollup_destroy(&a->rollup);
    sflush_destroy(&a->sflush);
    for (int i = 0; i < RC_N; i++)
        ktab_destroy(&a->recent[i]);
    for (int q = 0; q < OQ_N; q++)
        mbuf_free(&a->out[q].body);
    cal_destroy(&a->cal);
    free(a->src);
    free(a);
    *pa = NULL;
}

void agg_reload(agg_t *a, const cfg_t *cfg)
{
    a->o.cfg = cfg;
    quota_limits(a->quota, cfg);
    budget_configure(a->budget, cfg);
    set_intervals(a, cfg);
}

/* ---- input ------------------------------------------------------------------ */

static void recent_add(agg_t *a, int which, span_t key, int64_t t, const msg_usage_t *u,
                       uint64_t tokens)
{
    win_t *w = ktab_put(a->recent[which], key.p, key.len, ktab_hash(key.p, key.len), NULL);
    win_add(w, t, (uint32_t)u->requests, tokens, u->cost_nusd);
}

static void apply_usage(agg_t *a, const msg_usage_t *u)
{
    int64_t recv = u->recv_ts, t = u->ts;
    if (t > recv + FUTURE_NS) {
        (*a->c_future)++;
        t = recv;
    }
    if (recv > a->maxrecv)
        a->maxrecv = recv;
    uint64_t tokens = u->input_tokens + u->output_tokens;
    if (u->user.p)
        quota_add(a->quota, QS_USER, u->user, recv, tokens, u->cost_nusd);
    if (u->account.p)
        quota_add(a->quota, QS_ACCOUNT, u->account, recv, tokens, u->cost_nusd);
    budget_add(a->budget, u, recv);
    uint64_t late = rollup_counters(a->rollup)->late_dropped;
    /* an event is late by its own receive time too, whatever the watermark */
    rollup_add(a->rollup, u, t, recv > a->watermark ? recv : a->watermark);
    *a->c_late += (int64_t)(rollup_counters(a->rollup)->late_dropped - late);
    /* model keys as the price table writes them */
    char key[2 * MSG_MAX_STR + 2];
    size_t n = 0;
    memcpy(key, u->provider.p, u->provider.len);
    n += u->provider.len;
    key[n++] = '/';
    memcpy(key + n, u->model.p, u->model.len);
    n += u->model.len;
    recent_add(a, RC_MODEL, span_make(key, n), recv, u, tokens);
    if (u->project.p)
        recent_add(a, RC_PROJECT, u->project, recv, u, tokens);
}

static bool topic_wanted(const agg_t *a, span_t topic)
{
    if (topic.len != 5 || memcmp(topic.p, "ev.", 3))
        return false;
    int x = 0;
    for (int i = 3; i < 5; i++) {
        char c = topic.p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return false;
        x = x * 16 + d;
    }
    return a->want_shard[x];
}

static void complain(agg_t *a, const bus_msg_t *m, uint32_t index, const char *why)
{
    log_complain(&a->complain, tmtime_mono_ns(), LOG_LVL_WARN, "skipped a bus record",
                 "src=%.*s seq=%llu topic=%.*s record=%u reason=\"%s\"", (int)m->src.len, m->src.p,
                 (unsigned long long)m->seq, (int)m->topic.len, m->topic.p, index, why);
}

void agg_apply(agg_t *a, const bus_msg_t *m)
{
    char err[256];
    (*a->c_msgs)++;
    bool usage = span_eq_cstr(m->kind, MSG_KIND_USAGE);
    bool sample = span_eq_cstr(m->kind, MSG_KIND_SAMPLE);
    if (!usage && !sample) {
        (*a->c_other_kind)++;
        return;
    }
    if (usage && !topic_wanted(a, m->topic)) {
        (*a->c_wrong_shard)++;
        return;
    }
    if (sample && (!span_eq_cstr(m->topic, "metric") || a->o.shard != 0)) {
        (*a->c_wrong_shard)++;
        return;
    }
    const msgpack_object *b = m->body;
    if (b->type != MSGPACK_OBJECT_ARRAY || b->via.array.size > MSG_MAX_BATCH) {
        (*a->c_bad_msgs)++;
        complain(a, m, 0, "body is not an array of records");
        return;
    }
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        const msgpack_object *r = &b->via.array.ptr[i];
        if (usage) {
            msg_usage_t u;
            if (msg_usage_unpack(r, &u, err, sizeof err) < 0) {
                (*a->c_bad_records)++;
                complain(a, m, i, err);
                continue;
            }
            if (u.recv_ts < RECV_MIN || u.recv_ts >= RECV_MAX) {
                (*a->c_bad_records)++;
                complain(a, m, i, "recv_ts: not within the years 2000 to 2199");
                continue;
            }
            (*a->c_records)++;
            apply_usage(a, &u);
        } else {
            msg_sample_t s;
            if (msg_sample_unpack(r, &s, err, sizeof err) < 0) {
                (*a->c_bad_records)++;
                complain(a, m, i, err);
                continue;
            }
            (*a->c_samples)++;
            sflush_sample(a->sflush, &s);
        }
    }
}

/* ---- time ------------------------------------------------------------------- */

static bool trim_recent(void *val, void *arg)
{
    win_t *w = val;
    win_trim(w, *(const int64_t *)arg);
    return w->n == 0;
}

void agg_tick(agg_t *a, int64_t now, bool caught_up)
{
    int64_t wm = a->maxrecv;
    if (caught_up && now > wm)
        wm = now;
    if (wm > a->watermark)
        a->watermark = wm;
    rollup_advance(a->rollup, a->watermark);
    sflush_advance(a->sflush, a->watermark);
    if (now >= a->next_budget) {
        bool all = a->budget_rounds++ % BUDGET_FULL_EVERY == 0;
        budget_publish(a->budget, a->watermark, all);
        a->next_budget = now + a->budget_interval;
    }
    if (now >= a->next_sweep) {
        quota_sweep(a->quota, a->watermark);
        int64_t oldest = a->watermark - a->history_ns;
        for (int i = 0; i < RC_N; i++)
            ktab_sweep(a->recent[i], trim_recent, &oldest);
        a->next_sweep = now + a->quota_sweep;
        agg_update_gauges(a);
    }
}

int64_t agg_watermark(const agg_t *a)
{
    return a->watermark;
}

/* ---- durable state ---------------------------------------------------------- */

static void save_recent(const agg_t *a, snapw_t *w)
{
    msgpack_packer *pk = snapw_packer(w);
    for (int i = 0; i < RC_N; i++) {
        size_t it = 0;
        const win_t *wn;
        while ((wn = ktab_next(a->recent[i], &it))) {
            span_t key = ktab_key(wn);
            msgpack_pack_array(pk, 4);
            snap_pack_str(pk, "m", 1);
            msgpack_pack_int(pk, i);
            snap_pack_str(pk, key.p, key.len);
            win_save(wn, pk);
            snapw_record(w);
        }
    }
}

static int load_recent(agg_t *a, snap_rec_t *r, char *err, size_t errcap)
{
    int64_t i = snap_rec_i64(r);
    span_t key = snap_rec_str(r);
    const msgpack_object *b = snap_rec_obj(r);
    if (!snap_rec_ok(r) || i < 0 || i >= RC_N || !b) {
        snprintf(err, errcap, "recent-usage record malformed");
        return -1;
    }
    win_t *w = ktab_put(a->recent[i], key.p, key.len, ktab_hash(key.p, key.len), NULL);
    if (win_load(w, b) < 0) {
        snprintf(err, errcap, "recent-usage record: bad minute buckets");
        return -1;
    }
    return 0;
}

int agg_save(agg_t *a, const char *path, const agg_position_t *pos, size_t npos,
             uint64_t pub_seq, char *err, size_t errcap)
{
    snapw_t *w = snapw_open(path, err, errcap);
    if (!w)
        return -1;
    msgpack_packer *pk = snapw_packer(w);
    /* ["h", version, src, shard, shards, zone, watermark, maxrecv, pub_seq,
     *  [[src, seq], ...]] */
    msgpack_pack_array(pk, 10);
    snap_pack_str(pk, "h", 1);
    msgpack_pack_int(pk, SNAP_VERSION);
    snap_pack_str(pk, a->src, strlen(a->src));
    msgpack_pack_uint32(pk, a->o.shard);
    msgpack_pack_uint32(pk, a->o.shards);
    const char *zone = cal_zone(a->cal);
    snap_pack_str(pk, zone, strlen(zone));
    msgpack_pack_int64(pk, a->watermark);
    msgpack_pack_int64(pk, a->maxrecv);
    msgpack_pack_uint64(pk, pub_seq);
    msgpack_pack_array(pk, npos);
    for (size_t i = 0; i < npos; i++) {
        msgpack_pack_array(pk, 2);
        snap_pack_str(pk, pos[i].src, strlen(pos[i].src));
        msgpack_pack_uint64(pk, pos[i].seq);
    }
    snapw_record(w);
    quota_save(a->quota, w);
    budget_save(a->budget, w);
    rollup_save(a->rollup, w);
    save_recent(a, w);
    msgpack_pack_array(pk, 2);
    snap_pack_str(pk, "s", 1);
    sflush_save(a->sflush, pk);
    snapw_record(w);
    return snapw_commit(&w, err, errcap);
}

static int load_header(agg_t *a, const msgpack_object *o,
                       void (*position)(void *arg, const char *src, uint64_t seq), void *arg,
                       uint64_t *pub_seq, char *err, size_t errcap)
{
    snap_rec_t r;
    snap_rec_open(&r, o);
    span_t tag = snap_rec_str(&r);
    int64_t version = snap_rec_i64(&r);
    span_t src = snap_rec_str(&r);
    uint64_t shard = snap_rec_u64(&r), shards = snap_rec_u64(&r);
    span_t zone = snap_rec_str(&r);
    int64_t wm = snap_rec_i64(&r), maxrecv = snap_rec_i64(&r);
    uint64_t pseq = snap_rec_u64(&r);
    const msgpack_object *pos = snap_rec_obj(&r);
    if (!snap_rec_ok(&r) || !span_eq_cstr(tag, "h") || !pos || pos->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(err, errcap, "the snapshot's header is malformed");
        return -1;
    }
    if (version != SNAP_VERSION) {
        snprintf(err, errcap, "the snapshot is of version %lld, this aggregator writes %d",
                 (long long)version, SNAP_VERSION);
        return -1;
    }
    if (shard != a->o.shard || shards != a->o.shards) {
        snprintf(err, errcap,
                 "the snapshot is of shard %llu/%llu and this aggregator is shard %u/%u: "
                 "give each shard its own state, or remove the snapshot to start afresh",
                 (unsigned long long)shard, (unsigned long long)shards, a->o.shard, a->o.shards);
        return -1;
    }
    if (!span_eq_cstr(src, a->src))
        log_warn("the snapshot was written under another publisher name", "snapshot_src=%.*s src=%s",
                 (int)src.len, src.p, a->src);
    if (!span_eq_cstr(zone, cal_zone(a->cal)))
        log_warn("the time zone changed since the snapshot; current periods keep their counts",
                 "snapshot_zone=%.*s zone=%s", (int)zone.len, zone.p, cal_zone(a->cal));
    for (uint32_t i = 0; i < pos->via.array.size; i++) {
        snap_rec_t pr;
        snap_rec_open(&pr, &pos->via.array.ptr[i]);
        span_t s = snap_rec_str(&pr);
        uint64_t seq = snap_rec_u64(&pr);
        if (!snap_rec_ok(&pr) || s.len == 0 || s.len > 255 || memchr(s.p, '\0', s.len)) {
            snprintf(err, errcap, "the snapshot's bus positions are malformed");
            return -1;
        }
        char name[256];
        memcpy(name, s.p, s.len);
        name[s.len] = '\0';
        position(arg, name, seq);
    }
    a->watermark = wm;
    a->maxrecv = maxrecv;
    *pub_seq = pseq;
    return 0;
}

int agg_load(agg_t *a, const char *path, void (*position)(void *arg, const char *src, uint64_t seq),
             void *arg, uint64_t *pub_seq, char *err, size_t errcap)
{
    *pub_seq = 0;
    snapr_t *r = snapr_open(path, err, errcap);
    if (!r)
        return errno == ENOENT ? 0 : -1;
    char why[256];
    const msgpack_object *o = snapr_next(r, why, sizeof why);
    int rc = -1;
    if (!o) {
        snprintf(err, errcap, "%s: no header: %s", path, why);
        goto out;
    }
    if (load_header(a, o, position, arg, pub_seq, why, sizeof why) < 0) {
        snprintf(err, errcap, "%s: %s", path, why);
        goto out;
    }
    size_t n = 1;
    while ((o = snapr_next(r, why, sizeof why))) {
        n++;
        snap_rec_t rec;
        snap_rec_open(&rec, o);
        span_t tag = snap_rec_str(&rec);
        int lrc;
        if (span_eq_cstr(tag, "q"))
            lrc = quota_load_record(a->quota, &rec, why, sizeof why);
        else if (span_eq_cstr(tag, "b"))
            lrc = budget_load_record(a->budget, &rec, why, sizeof why);
        else if (span_eq_cstr(tag, "r"))
            lrc = rollup_load_record(a->rollup, &rec, why, sizeof why);
        else if (span_eq_cstr(tag, "m"))
            lrc = load_recent(a, &rec, why, sizeof why);
        else if (span_eq_cstr(tag, "s")) {
            const msgpack_object *so = snap_rec_obj(&rec);
            lrc = so && snap_rec_ok(&rec) ? sflush_load(a->sflush, so, why, sizeof why) : -1;
            if (lrc < 0 && !why[0])
                snprintf(why, sizeof why, "statsd record malformed");
        } else {
            snprintf(why, sizeof why, "unknown record");
            lrc = -1;
        }
        if (lrc < 0) {
            snprintf(err, errcap, "%s: record %zu: %s", path, n, why);
            goto out;
        }
    }
    if (why[0]) {
        snprintf(err, errcap, "%s: record %zu: %s", path, n + 1, why);
        goto out;
    }
    rc = 1;
out:
    snapr_close(&r);
    return rc;
}

void agg_recover_output(agg_t *a, const bus_msg_t *m)
{
    char err[256];
    const msgpack_object *b = m->body;
    bool quota = span_eq_cstr(m->kind, MSG_KIND_QUOTA), budget = span_eq_cstr(m->kind, MSG_KIND_BUDGET);
    if ((!quota && !budget) || b->type != MSGPACK_OBJECT_ARRAY)
        return;
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        if (quota) {
            msg_quota_t q;
            if (msg_quota_unpack(&b->via.array.ptr[i], &q, err, sizeof err) < 0)
                continue;
            qsubject_t s = span_eq_cstr(q.subject, "user") ? QS_USER : QS_ACCOUNT;
            qwindow_t w = span_eq_cstr(q.window, "day")     ? QW_DAY
                          : span_eq_cstr(q.window, "month") ? QW_MONTH
                                                            : QW_WINDOW;
            qunit_t u = span_eq_cstr(q.unit, "tokens") ? QU_TOKENS : QU_USD;
            quota_set_published(a->quota, s, q.id, w, u, (qstate_t)quota_parse_state(q.state));
        } else {
            msg_budget_t bs;
            if (msg_budget_unpack(&b->via.array.ptr[i], &bs, err, sizeof err) < 0 ||
                !bs.crossing.p)
                continue;
            budget_set_crossed(a->budget, bs.name, bs.scope_value, bs.period_start, bs.crossing,
                               bs.crossed_ts);
        }
    }
}

/* ---- queries ---------------------------------------------------------------- */

quota_t *agg_quota(agg_t *a)
{
    return a->quota;
}

budget_t *agg_budget(agg_t *a)
{
    return a->budget;
}

const cal_t *agg_cal(const agg_t *a)
{
    return a->cal;
}

int64_t agg_history(const agg_t *a)
{
    return a->history_ns;
}

uint32_t agg_shard(const agg_t *a)
{
    return a->o.shard;
}

uint32_t agg_shards(const agg_t *a)
{
    return a->o.shards;
}

void agg_recent(const agg_t *a, const char *dim, int64_t from, int64_t to,
                void (*fn)(void *arg, span_t key, const win_sum_t *sum), void *arg)
{
    int i = !strcmp(dim, "model") ? RC_MODEL : RC_PROJECT;
    size_t it = 0;
    const win_t *w;
    while ((w = ktab_next(a->recent[i], &it))) {
        win_sum_t s;
        win_sum(w, from, to, &s);
        if (s.requests || s.tokens || s.nusd)
            fn(arg, ktab_key(w), &s);
    }
}

size_t agg_memory(const agg_t *a)
{
    size_t n = quota_memory(a->quota) + budget_memory(a->budget) + rollup_memory(a->rollup) +
               sflush_memory(a->sflush);
    for (int i = 0; i < RC_N; i++) {
        n += ktab_memory(a->recent[i]);
        size_t it = 0;
        const win_t *w;
        while ((w = ktab_next(a->recent[i], &it)))
            n += win_memory(w);
    }
    return n;
}

void agg_update_gauges(agg_t *a)
{
    *a->g_users = (int64_t)quota_count(a->quota, QS_USER);
    *a->g_accounts = (int64_t)quota_count(a->quota, QS_ACCOUNT);
    *a->g_cells = (int64_t)rollup_counters(a->rollup)->cells;
    *a->g_series = (int64_t)sflush_counters(a->sflush)->series_live;
    *a->g_memory = (int64_t)agg_memory(a);
    *a->g_watermark = a->watermark;
}

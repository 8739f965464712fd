#include "quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktab.h"
#include "xalloc.h"

/* Limits with nothing left to inherit; 0 means no limit. */
typedef struct {
    int64_t lim[QW_N][QU_N];
    int64_t warn_pct;
} qlim_t;

typedef struct {
    const qlim_t *lim;
    int32_t day_id, month_id; /* cal_id of the periods the counters below are for */
    uint64_t tokens[2];       /* day, month */
    int64_t nusd[2];
    int64_t last;             /* latest usage */
    win_t win;
    uint8_t pub[QW_N];        /* published state: unit u in bits 2u..2u+1 */
} qsub_t;

typedef struct {
    qlim_t dflt[QS_N];
    ktab_t *over[QS_N]; /* id -> qlim_t */
} limits_t;

struct quota {
    quota_opts_t o;
    ktab_t *subs[QS_N];
    limits_t *limits;
    quota_counters_t c;
    char window_name[24];
};

static const char *const state_names[] = { "ok", "warning", "exceeded" };
static const char *const subject_names[] = { "user", "account" };
static const char *const unit_names[] = { "tokens", "usd" };

const char *quota_state_name(qstate_t st) { return state_names[st]; }
const char *quota_subject_name(qsubject_t s) { return subject_names[s]; }
const char *quota_unit_name(qunit_t u) { return unit_names[u]; }

int quota_parse_state(span_t s)
{
    for (int i = 0; i < 3; i++)
        if (span_eq_cstr(s, state_names[i]))
            return i;
    return -1;
}

const char *quota_window_name(const quota_t *q, qwindow_t w)
{
    return w == QW_DAY ? "day" : w == QW_MONTH ? "month" : q->window_name;
}

static void sub_free(void *val)
{
    win_free(&((qsub_t *)val)->win);
}

quota_t *quota_new(const quota_opts_t *o)
{
    quota_t *q = xcalloc(1, sizeof *q);
    q->o = *o;
    if (q->o.history_ns < q->o.window_ns)
        q->o.history_ns = q->o.window_ns;
    for (int s = 0; s < QS_N; s++)
        q->subs[s] = ktab_new(sizeof(qsub_t), sub_free);
    int64_t mins = o->window_ns / WIN_MINUTE_NS;
    if (mins % 60 == 0)
        snprintf(q->window_name, sizeof q->window_name, "%lldh", (long long)(mins / 60));
    else
        snprintf(q->window_name, sizeof q->window_name, "%lldm", (long long)mins);
    q->limits = xcalloc(1, sizeof *q->limits);
    for (int s = 0; s < QS_N; s++)
        q->limits->over[s] = ktab_new(sizeof(qlim_t), NULL);
    return q;
}

static void limits_free(limits_t **pl)
{
    limits_t *l = *pl;
    if (!l)
        return;
    for (int s = 0; s < QS_N; s++)
        ktab_destroy(&l->over[s]);
    free(l);
    *pl = NULL;
}

void quota_destroy(quota_t **pq)
{
    quota_t *q = *pq;
    if (!q)
        return;
    for (int s = 0; s < QS_N; s++)
        ktab_destroy(&q->subs[s]);
    limits_free(&q->limits);
    free(q);
    *pq = NULL;
}

static void lim_from_cfg(qlim_t *out, const cfg_limits_t *c, const qlim_t *inherit)
{
    const int64_t v[QW_N][QU_N] = {
        { c->daily_tokens, c->daily_nusd },
        { c->monthly_tokens, c->monthly_nusd },
        { c->window_tokens, c->window_nusd },
    };
    for (int w = 0; w < QW_N; w++)
        for (int u = 0; u < QU_N; u++)
            out->lim[w][u] = v[w][u] >= 0 || !inherit ? v[w][u] : inherit->lim[w][u];
    out->warn_pct = c->warn_pct >= 0 || !inherit ? c->warn_pct : inherit->warn_pct;
}

static const qlim_t *resolve(const limits_t *l, qsubject_t s, span_t id)
{
    const qlim_t *o = ktab_get(l->over[s], id.p, id.len, ktab_hash(id.p, id.len));
    return o ? o : &l->dflt[s];
}

void quota_limits(quota_t *q, const cfg_t *cfg)
{
    limits_t *l = xcalloc(1, sizeof *l);
    lim_from_cfg(&l->dflt[QS_USER], &cfg->quota.lim, NULL);
    lim_from_cfg(&l->dflt[QS_ACCOUNT], &cfg->account_quota, NULL);
    const cfg_quota_override_t *ov[QS_N] = { cfg->user_quotas, cfg->account_quotas };
    size_t nov[QS_N] = { cfg->nuser_quotas, cfg->naccount_quotas };
    for (int s = 0; s < QS_N; s++) {
        l->over[s] = ktab_new(sizeof(qlim_t), NULL);
        for (size_t i = 0; i < nov[s]; i++) {
            size_t n = strlen(ov[s][i].name);
            qlim_t *x = ktab_put(l->over[s], ov[s][i].name, n, ktab_hash(ov[s][i].name, n), NULL);
            lim_from_cfg(x, &ov[s][i].lim, &l->dflt[s]);
        }
    }
    for (int s = 0; s < QS_N; s++) {
        size_t it = 0;
        qsub_t *sub;
        while ((sub = ktab_next(q->subs[s], &it)))
            sub->lim = resolve(l, (qsubject_t)s, ktab_key(sub));
    }
    limits_free(&q->limits);
    q->limits = l;
}

static qstate_t judge(int64_t used, int64_t limit, int64_t warn_pct)
{
    if (limit <= 0)
        return QST_OK;
    if (used >= limit)
        return QST_EXCEEDED;
    if ((__int128)used * 100 >= (__int128)limit * warn_pct)
        return QST_WARNING;
    return QST_OK;
}

static int64_t sat64(uint64_t v)
{
    return v > INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* Brings the calendar counters to the periods holding t. */
static void roll_periods(const quota_t *q, qsub_t *sub, int64_t t)
{
    int32_t day = (int32_t)cal_id(q->o.cal, CAL_DAY, t);
    int32_t month = (int32_t)cal_id(q->o.cal, CAL_MONTH, t);
    if (day > sub->day_id) {
        sub->day_id = day;
        sub->tokens[0] = 0;
        sub->nusd[0] = 0;
    }
    if (month > sub->month_id) {
        sub->month_id = month;
        sub->tokens[1] = 0;
        sub->nusd[1] = 0;
    }
}

/* The usage of every window at t (the calendar counters rolled first). */
static void usage_at(const quota_t *q, const qsub_t *sub, int64_t t, int64_t used[QW_N][QU_N],
                     win_sum_t *ws)
{
    win_sum(&sub->win, win_start(t, q->o.window_ns), INT64_MAX, ws);
    for (int p = 0; p < 2; p++) {
        used[p][QU_TOKENS] = sat64(sub->tokens[p]);
        used[p][QU_USD] = sub->nusd[p];
    }
    used[QW_WINDOW][QU_TOKENS] = sat64(ws->tokens);
    used[QW_WINDOW][QU_USD] = ws->nusd;
}

static void window_bounds(const quota_t *q, const qsub_t *sub, qwindow_t w, int64_t t,
                          int64_t *start, int64_t *reset)
{
    if (w == QW_WINDOW) {
        *start = win_start(t, q->o.window_ns);
        *reset = sub ? win_next_expiry(&sub->win, t, q->o.window_ns) : 0;
        return;
    }
    cal_period_t p = w == QW_DAY ? CAL_DAY : CAL_MONTH;
    *start = cal_start(q->o.cal, p, t);
    *reset = cal_next(q->o.cal, p, t);
}

/* Judges every (window, unit) of sub at t and publishes what changed. */
static void judge_and_publish(quota_t *q, qsubject_t s, qsub_t *sub, span_t id, int64_t t)
{
    int64_t used[QW_N][QU_N];
    win_sum_t ws;
    usage_at(q, sub, t, used, &ws);
    const qlim_t *lim = sub->lim;
    for (int w = 0; w < QW_N; w++) {
        for (int u = 0; u < QU_N; u++) {
            qstate_t st = judge(used[w][u], lim->lim[w][u], lim->warn_pct);
            qstate_t prev = (qstate_t)((sub->pub[w] >> (2 * u)) & 3);
            if (st == prev)
                continue;
            sub->pub[w] = (uint8_t)((sub->pub[w] & ~(3 << (2 * u))) | (st << (2 * u)));
            q->c.changes++;
            if (!q->o.emit)
                continue;
            msg_quota_t m = {
                .subject = span_cstr(subject_names[s]),
                .id = id,
                .window = span_cstr(quota_window_name(q, (qwindow_t)w)),
                .unit = span_cstr(unit_names[u]),
                .state = span_cstr(state_names[st]),
                .prev = span_cstr(state_names[prev]),
                .used = used[w][u],
                .limit = lim->lim[w][u],
                .ts = t,
                .shard = q->o.shard,
                .shards = q->o.shards,
            };
            window_bounds(q, sub, (qwindow_t)w, t, &m.start, &m.reset);
            q->o.emit(q->o.arg, &m);
        }
    }
}

static qsub_t *get_sub(quota_t *q, qsubject_t s, span_t id, bool create)
{
    uint64_t h = ktab_hash(id.p, id.len);
    if (!create)
        return ktab_get(q->subs[s], id.p, id.len, h);
    bool created;
    qsub_t *sub = ktab_put(q->subs[s], id.p, id.len, h, &created);
    if (created)
        sub->lim = resolve(q->limits, s, id);
    return sub;
}

void quota_add(quota_t *q, qsubject_t s, span_t id, int64_t t, uint64_t tokens, int64_t nusd)
{
    qsub_t *sub = get_sub(q, s, id, true);
    roll_periods(q, sub, t);
    int32_t day = (int32_t)cal_id(q->o.cal, CAL_DAY, t);
    int32_t month = (int32_t)cal_id(q->o.cal, CAL_MONTH, t);
    if (day == sub->day_id) {
        sub->tokens[0] += tokens;
        sub->nusd[0] = win_sat_add(sub->nusd[0], nusd);
    } else {
        q->c.stale++;
    }
    if (month == sub->month_id) {
        sub->tokens[1] += tokens;
        sub->nusd[1] = win_sat_add(sub->nusd[1], nusd);
    }
    win_add(&sub->win, t, 1, tokens, nusd);
    if (t > sub->last)
        sub->last = t;
    judge_and_publish(q, s, sub, id, t);
}

typedef struct {
    quota_t *q;
    qsubject_t s;
    int64_t now;
    int32_t month;
} sweep_t;

static bool sweep_one(void *val, void *arg)
{
    sweep_t *sw = arg;
    qsub_t *sub = val;
    quota_t *q = sw->q;
    win_trim(&sub->win, sw->now - q->o.history_ns);
    bool published = sub->pub[0] | sub->pub[1] | sub->pub[2];
    if (published) {
        roll_periods(q, sub, sw->now);
        judge_and_publish(q, sw->s, sub, ktab_key(sub), sw->now);
        published = sub->pub[0] | sub->pub[1] | sub->pub[2];
    }
    /* nothing left to count or to say: a subject seen again starts afresh */
    bool idle = !published && sub->win.n == 0 && sub->month_id < sw->month;
    if (idle)
        q->c.forgotten++;
    return idle;
}

void quota_sweep(quota_t *q, int64_t now)
{
    for (int s = 0; s < QS_N; s++) {
        sweep_t sw = { q, (qsubject_t)s, now, (int32_t)cal_id(q->o.cal, CAL_MONTH, now) };
        ktab_sweep(q->subs[s], sweep_one, &sw);
    }
}

void quota_view(quota_t *q, qsubject_t s, span_t id, int64_t now, quota_view_t *v)
{
    memset(v, 0, sizeof *v);
    qsub_t *sub = get_sub(q, s, id, false);
    qsub_t blank = { .lim = resolve(q->limits, s, id) };
    v->known = sub != NULL;
    if (!sub)
        sub = &blank;
    else
        roll_periods(q, sub, now);
    int64_t used[QW_N][QU_N];
    win_sum_t ws;
    /* a subject whose counters are of a past period has used nothing yet */
    qsub_t cur = *sub;
    int32_t day = (int32_t)cal_id(q->o.cal, CAL_DAY, now);
    int32_t month = (int32_t)cal_id(q->o.cal, CAL_MONTH, now);
    if (cur.day_id != day)
        cur.tokens[0] = 0, cur.nusd[0] = 0;
    if (cur.month_id != month)
        cur.tokens[1] = 0, cur.nusd[1] = 0;
    usage_at(q, &cur, now, used, &ws);
    v->warn_pct = sub->lim->warn_pct;
    v->window_requests = ws.requests;
    for (int w = 0; w < QW_N; w++) {
        window_bounds(q, v->known ? sub : NULL, (qwindow_t)w, now, &v->w[w].start, &v->w[w].reset);
        for (int u = 0; u < QU_N; u++) {
            v->w[w].used[u] = used[w][u];
            v->w[w].limit[u] = sub->lim->lim[w][u];
            v->w[w].st[u] = judge(used[w][u], sub->lim->lim[w][u], sub->lim->warn_pct);
            if (v->w[w].st[u] > v->state)
                v->state = v->w[w].st[u];
        }
    }
}

void quota_usage(const quota_t *q, qsubject_t s, int64_t from, int64_t to,
                 void (*fn)(void *arg, span_t id, const win_sum_t *sum), void *arg)
{
    size_t it = 0;
    const qsub_t *sub;
    while ((sub = ktab_next(q->subs[s], &it))) {
        win_sum_t ws;
        win_sum(&sub->win, from, to, &ws);
        if (ws.requests || ws.tokens || ws.nusd)
            fn(arg, ktab_key(sub), &ws);
    }
}

void quota_set_published(quota_t *q, qsubject_t s, span_t id, qwindow_t w, qunit_t u,
                         qstate_t st)
{
    qsub_t *sub = get_sub(q, s, id, true);
    sub->pub[w] = (uint8_t)((sub->pub[w] & ~(3 << (2 * u))) | (st << (2 * u)));
}

/* ---- durable state -------------------------------------------------------- */

/* ["q", subject, id, day_id, month_id, day_tokens, month_tokens, day_nusd,
 *  month_nusd, last, published, [minute, requests, tokens, nusd, ...]] */
void quota_save(const quota_t *q, snapw_t *w)
{
    msgpack_packer *pk = snapw_packer(w);
    for (int s = 0; s < QS_N; s++) {
        size_t it = 0;
        const qsub_t *sub;
        while ((sub = ktab_next(q->subs[s], &it))) {
            span_t id = ktab_key(sub);
            msgpack_pack_array(pk, 12);
            snap_pack_str(pk, "q", 1);
            msgpack_pack_int(pk, s);
            snap_pack_str(pk, id.p, id.len);
            msgpack_pack_int32(pk, sub->day_id);
            msgpack_pack_int32(pk, sub->month_id);
            msgpack_pack_uint64(pk, sub->tokens[0]);
            msgpack_pack_uint64(pk, sub->tokens[1]);
            msgpack_pack_int64(pk, sub->nusd[0]);
            msgpack_pack_int64(pk, sub->nusd[1]);
            msgpack_pack_int64(pk, sub->last);
            msgpack_pack_uint32(pk, (uint32_t)sub->pub[0] | (uint32_t)sub->pub[1] << 8 |
                                        (uint32_t)sub->pub[2] << 16);
            win_save(&sub->win, pk);
            snapw_record(w);
        }
    }
}

int quota_load_record(quota_t *q, snap_rec_t *r, char *err, size_t errcap)
{
    int64_t s = snap_rec_i64(r);
    span_t id = snap_rec_str(r);
    int64_t day = snap_rec_i64(r), month = snap_rec_i64(r);
    uint64_t tok0 = snap_rec_u64(r), tok1 = snap_rec_u64(r);
    int64_t n0 = snap_rec_i64(r), n1 = snap_rec_i64(r), last = snap_rec_i64(r);
    uint64_t pub = snap_rec_u64(r);
    const msgpack_object *b = snap_rec_obj(r);
    if (!snap_rec_ok(r) || s < 0 || s >= QS_N || day < 0 || day > INT32_MAX || month < 0 ||
        month > INT32_MAX || pub > 0xffffff || !b || id.len > MSG_MAX_STR) {
        snprintf(err, errcap, "quota record malformed");
        return -1;
    }
    for (int w = 0; w < QW_N; w++)
        for (int u = 0; u < QU_N; u++)
            if (((pub >> (8 * w + 2 * u)) & 3) == 3) {
                snprintf(err, errcap, "quota record: bad state");
                return -1;
            }
    qsub_t *sub = get_sub(q, (qsubject_t)s, id, true);
    sub->day_id = (int32_t)day;
    sub->month_id = (int32_t)month;
    sub->tokens[0] = tok0;
    sub->tokens[1] = tok1;
    sub->nusd[0] = n0;
    sub->nusd[1] = n1;
    sub->last = last;
    for (int w = 0; w < QW_N; w++)
        sub->pub[w] = (uint8_t)(pub >> (8 * w));
    if (win_load(&sub->win, b) < 0) {
        snprintf(err, errcap, "quota record: bad minute buckets");
        return -1;
    }
    return 0;
}

size_t quota_count(const quota_t *q, qsubject_t s)
{
    return ktab_count(q->subs[s]);
}

size_t quota_memory(const quota_t *q)
{
    size_t n = 0;
    for (int s = 0; s < QS_N; s++) {
        n += ktab_memory(q->subs[s]);
        size_t it = 0;
        const qsub_t *sub;
        while ((sub = ktab_next(q->subs[s], &it)))
            n += win_memory(&sub->win);
    }
    return n;
}

const quota_counters_t *quota_counters(const quota_t *q)
{
    return &q->c;
}

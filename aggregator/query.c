#include "query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpr.h"
#include "snap.h"
#include "tmtime.h"
#include "xalloc.h"

#define MAX_DEPTH 4

typedef struct {
    span_t q, subject, id, by, metric, name;
    int64_t window, n;
    bool has_window, has_n;
} request_t;

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    snap_pack_str(pk, s, strlen(s));
}

static void pack_head(msgpack_packer *pk, const agg_t *a, uint32_t extra)
{
    msgpack_pack_map(pk, 3 + extra);
    pack_cstr(pk, "ok");
    msgpack_pack_true(pk);
    pack_cstr(pk, "shard");
    msgpack_pack_uint32(pk, agg_shard(a));
    pack_cstr(pk, "shards");
    msgpack_pack_uint32(pk, agg_shards(a));
}

/* msg, with arg (may be NULL) after it */
static void answer_error(mbuf_t *out, const char *what, const char *arg)
{
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    char msg[512];
    snprintf(msg, sizeof msg, "%s%s", what, arg ? arg : "");
    msgpack_pack_map(&pk, 2);
    pack_cstr(&pk, "ok");
    msgpack_pack_false(&pk);
    pack_cstr(&pk, "error");
    pack_cstr(&pk, msg);
}

static int parse_request(const msgpack_object *o, request_t *r, const char **why)
{
    memset(r, 0, sizeof *r);
    if (o->type != MSGPACK_OBJECT_MAP) {
        *why = "the request is not a map";
        return -1;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            *why = "a request key is not a string";
            return -1;
        }
        span_t key = span_make(k->via.str.ptr, k->via.str.size);
        span_t *str = span_eq_cstr(key, "q")         ? &r->q
                      : span_eq_cstr(key, "subject") ? &r->subject
                      : span_eq_cstr(key, "id")      ? &r->id
                      : span_eq_cstr(key, "by")      ? &r->by
                      : span_eq_cstr(key, "metric")  ? &r->metric
                      : span_eq_cstr(key, "name")    ? &r->name
                                                     : NULL;
        if (str) {
            if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > MSG_MAX_STR) {
                *why = "a request string is not a string of at most 1024 bytes";
                return -1;
            }
            *str = span_make(v->via.str.size ? v->via.str.ptr : "", v->via.str.size);
            continue;
        }
        int64_t *num = span_eq_cstr(key, "window") ? &r->window
                       : span_eq_cstr(key, "n")    ? &r->n
                                                   : NULL;
        if (num) {
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > INT32_MAX) {
                *why = "window and n are non-negative integers";
                return -1;
            }
            *num = (int64_t)v->via.u64;
            if (num == &r->window)
                r->has_window = true;
            else
                r->has_n = true;
        }
    }
    if (!r->q.p) {
        *why = "the request has no \"q\"";
        return -1;
    }
    return 0;
}

/* ---- quota ------------------------------------------------------------------ */

static void answer_quota(agg_t *a, const request_t *r, int64_t now, mbuf_t *out)
{
    qsubject_t s;
    if (!r->subject.p || span_eq_cstr(r->subject, "user"))
        s = QS_USER;
    else if (span_eq_cstr(r->subject, "account"))
        s = QS_ACCOUNT;
    else
        return answer_error(out, "subject must be user or account", NULL);
    if (!r->id.p || !r->id.len)
        return answer_error(out, "quota needs an id", NULL);
    quota_t *q = agg_quota(a);
    quota_view_t v;
    quota_view(q, s, r->id, now, &v);
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    pack_head(&pk, a, 8);
    pack_cstr(&pk, "subject");
    pack_cstr(&pk, quota_subject_name(s));
    pack_cstr(&pk, "id");
    snap_pack_str(&pk, r->id.p, r->id.len);
    pack_cstr(&pk, "known");
    if (v.known)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    pack_cstr(&pk, "state");
    pack_cstr(&pk, quota_state_name(v.state));
    pack_cstr(&pk, "warn_pct");
    msgpack_pack_int64(&pk, v.warn_pct);
    pack_cstr(&pk, "now");
    msgpack_pack_int64(&pk, now);
    pack_cstr(&pk, "window_requests");
    msgpack_pack_uint64(&pk, v.window_requests);
    pack_cstr(&pk, "windows");
    msgpack_pack_array(&pk, QW_N * QU_N);
    for (int w = 0; w < QW_N; w++) {
        for (int u = 0; u < QU_N; u++) {
            int64_t lim = v.w[w].limit[u], used = v.w[w].used[u];
            msgpack_pack_map(&pk, 8);
            pack_cstr(&pk, "window");
            pack_cstr(&pk, quota_window_name(q, (qwindow_t)w));
            pack_cstr(&pk, "unit");
            pack_cstr(&pk, quota_unit_name((qunit_t)u));
            pack_cstr(&pk, "used");
            msgpack_pack_int64(&pk, used);
            pack_cstr(&pk, "limit"); /* 0: no limit */
            msgpack_pack_int64(&pk, lim);
            pack_cstr(&pk, "remaining");
            if (lim > 0)
                msgpack_pack_int64(&pk, lim > used ? lim - used : 0);
            else
                msgpack_pack_nil(&pk);
            pack_cstr(&pk, "state");
            pack_cstr(&pk, quota_state_name(v.w[w].st[u]));
            pack_cstr(&pk, "start");
            msgpack_pack_int64(&pk, v.w[w].start);
            pack_cstr(&pk, "reset");
            msgpack_pack_int64(&pk, v.w[w].reset);
        }
    }
}

/* ---- budgets ---------------------------------------------------------------- */

typedef struct {
    msgpack_packer *pk;
    mbuf_t *body;
    uint32_t n;
} budget_rows_t;

static void budget_row(void *arg, const msg_budget_t *st)
{
    budget_rows_t *b = arg;
    msg_budget_pack(b->pk, st);
    b->n++;
}

static void answer_budgets(agg_t *a, const request_t *r, int64_t now, mbuf_t *out)
{
    char name[MSG_MAX_STR + 1] = "";
    if (r->name.p) {
        memcpy(name, r->name.p, r->name.len);
        name[r->name.len] = '\0';
    }
    mbuf_t rows = { 0 };
    msgpack_packer rpk;
    mbuf_packer(&rows, &rpk);
    budget_rows_t br = { &rpk, &rows, 0 };
    budget_each(agg_budget(a), now, r->name.p ? name : NULL, budget_row, &br);
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    pack_head(&pk, a, 2);
    pack_cstr(&pk, "now");
    msgpack_pack_int64(&pk, now);
    pack_cstr(&pk, "budgets");
    msgpack_pack_array(&pk, br.n);
    mbuf_append(out, rows.data, rows.len);
    mbuf_free(&rows);
}

/* ---- top and usage ---------------------------------------------------------- */

typedef struct {
    char *key;
    size_t klen;
    win_sum_t s;
} row_t;

typedef struct {
    row_t *v;
    size_t n, cap;
    span_t only; /* usage of one key */
} rows_t;

static void add_row(void *arg, span_t key, const win_sum_t *sum)
{
    rows_t *r = arg;
    if (r->only.p && !span_eq(key, r->only))
        return;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = xreallocarray(r->v, r->cap, sizeof *r->v);
    }
    r->v[r->n++] = (row_t){ xstrndup(key.p, key.len), key.len, *sum };
}

static int sort_metric; /* qsort has no argument: set just before the sort */

static uint64_t metric_of(const row_t *r)
{
    return sort_metric == 0 ? (uint64_t)r->s.nusd : sort_metric == 1 ? r->s.tokens : r->s.requests;
}

static int row_cmp(const void *x, const void *y)
{
    const row_t *a = x, *b = y;
    uint64_t ma = metric_of(a), mb = metric_of(b);
    if (ma != mb)
        return ma > mb ? -1 : 1;
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(a->key, b->key, n);
    return c ? c : (a->klen > b->klen) - (a->klen < b->klen);
}

static void answer_rows(agg_t *a, const request_t *r, int64_t now, mbuf_t *out, bool top)
{
    const char *by = !r->by.p                        ? "user"
                     : span_eq_cstr(r->by, "user")    ? "user"
                     : span_eq_cstr(r->by, "account") ? "account"
                     : span_eq_cstr(r->by, "model")   ? "model"
                     : span_eq_cstr(r->by, "project") ? "project"
                                                      : NULL;
    if (!by)
        return answer_error(out, "by must be user, account, model or project", NULL);
    int metric = !r->metric.p || span_eq_cstr(r->metric, "cost") ? 0
                 : span_eq_cstr(r->metric, "tokens")              ? 1
                 : span_eq_cstr(r->metric, "requests")            ? 2
                                                                  : -1;
    if (metric < 0)
        return answer_error(out, "metric must be cost, tokens or requests", NULL);
    int64_t window = r->has_window ? r->window : 3600;
    if (window <= 0)
        return answer_error(out, "window must be at least 1 second", NULL);
    if (window * TMTIME_NS_PER_SEC > agg_history(a)) {
        char h[32];
        snprintf(h, sizeof h, "%llds", (long long)(agg_history(a) / TMTIME_NS_PER_SEC));
        return answer_error(out, "window is longer than the history kept, [aggregator] history = ", h);
    }
    int64_t minutes = (window + 59) / 60;
    int64_t from = win_start(now, minutes * WIN_MINUTE_NS), to = INT64_MAX;
    rows_t rows = { 0 };
    if (!top && r->id.p)
        rows.only = r->id;
    if (!strcmp(by, "user"))
        quota_usage(agg_quota(a), QS_USER, from, to, add_row, &rows);
    else if (!strcmp(by, "account"))
        quota_usage(agg_quota(a), QS_ACCOUNT, from, to, add_row, &rows);
    else
        agg_recent(a, by, from, to, add_row, &rows);
    sort_metric = metric;
    if (rows.n > 1)
        qsort(rows.v, rows.n, sizeof *rows.v, row_cmp);
    size_t n = rows.n;
    int64_t limit = r->has_n ? r->n : (top ? 10 : 0);
    if (limit > 0 && (size_t)limit < n)
        n = (size_t)limit;
    if (n > QUERY_MAX_ROWS)
        n = QUERY_MAX_ROWS;
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    pack_head(&pk, a, 8);
    pack_cstr(&pk, "by");
    pack_cstr(&pk, by);
    pack_cstr(&pk, "metric");
    pack_cstr(&pk, metric == 0 ? "cost" : metric == 1 ? "tokens" : "requests");
    pack_cstr(&pk, "window");
    msgpack_pack_int64(&pk, window);
    pack_cstr(&pk, "from");
    msgpack_pack_int64(&pk, from);
    pack_cstr(&pk, "to");
    msgpack_pack_int64(&pk, now);
    pack_cstr(&pk, "keys");
    msgpack_pack_uint64(&pk, rows.n);
    pack_cstr(&pk, "truncated");
    if (n < rows.n)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
    pack_cstr(&pk, "rows");
    msgpack_pack_array(&pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const row_t *w = &rows.v[i];
        msgpack_pack_map(&pk, 4);
        pack_cstr(&pk, "key");
        snap_pack_str(&pk, w->key, w->klen);
        pack_cstr(&pk, "requests");
        msgpack_pack_uint64(&pk, w->s.requests);
        pack_cstr(&pk, "tokens");
        msgpack_pack_uint64(&pk, w->s.tokens);
        pack_cstr(&pk, "cost_nusd");
        msgpack_pack_int64(&pk, w->s.nusd);
    }
    for (size_t i = 0; i < rows.n; i++)
        free(rows.v[i].key);
    free(rows.v);
}

void query_answer(agg_t *a, const void *req, size_t len, int64_t now, mbuf_t *out)
{
    if (len > QUERY_MAX_REQUEST || mpr_validate(req, len, MAX_DEPTH) < 0)
        return answer_error(out, "the request is not one msgpack value of at most 64 KiB", NULL);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    const char *why = NULL;
    request_t r;
    if (msgpack_unpack_next(&up, req, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        answer_error(out, "the request is not msgpack", NULL);
    } else if (parse_request(&up.data, &r, &why) < 0) {
        answer_error(out, why, NULL);
    } else if (span_eq_cstr(r.q, "quota")) {
        answer_quota(a, &r, now, out);
    } else if (span_eq_cstr(r.q, "budgets")) {
        answer_budgets(a, &r, now, out);
    } else if (span_eq_cstr(r.q, "top")) {
        answer_rows(a, &r, now, out, true);
    } else if (span_eq_cstr(r.q, "usage")) {
        answer_rows(a, &r, now, out, false);
    } else {
        answer_error(out, "unknown question; ask quota, budgets, top or usage", NULL);
    }
    msgpack_unpacked_destroy(&up);
}

/* rules: tokmon-alerter's conditions. See rules.h for the rules themselves.
 *
 * The calls are kept as per-minute buckets (receive clock) per value of each
 * dimension: one sorted, sparse array of buckets per series, so an idle
 * user costs nothing and a busy one at most the retained minutes. Every
 * window length a rule asks of a dimension has running sums in each series
 * of that dimension: a call adds to them, and evaluation moves the window's
 * first minute forward, subtracting the buckets that left it, so each bucket
 * is added and subtracted once per window whatever the evaluation rate.
 * Latency quantiles cannot be subtracted: each series keeps the quantiles of
 * its window and merges the window's sketches again only when a latency
 * arrived or a bucket with latencies left the window. */
#include "rules.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cal.h"
#include "dec.h"
#include "fnv.h"
#include "ktab.h"
#include "mbuf.h"
#include "sketch.h"
#include "tmtime.h"
#include "xalloc.h"

#define NS_MIN (60 * TMTIME_NS_PER_SEC)
#define KEEP_MIN (26 * 60)        /* minutes kept at least: the digest's day and a margin */
#define MAX_VALUES 100000         /* distinct values held per dimension */
#define MAX_BUCKETS (46 * 24 * 60) /* buckets a loaded series may hold (31-day rules + margin) */
#define MAX_EXPENSIVE 1000        /* expensive calls held at once */
#define MAX_BUDGETS 100000        /* budget instances */
#define MAX_PARTS 256             /* a budget instance's parts (aggregator shards) */
#define MAX_QUOTAS 100000         /* quota states not ok */
#define MAX_STAGES 4096           /* (daemon, src) pairs */
#define GAP_HOLD_NS (15 * NS_MIN) /* TokmonBusGapLost holds this long after an increase */
#define LAT_MIN 5                 /* LLMLatencyP95High's window, minutes */
#define LAT_EXACT_MIN 10          /* latency windows up to this long follow every call */
#define HOUR_MIN 60
#define MIN_HOLD_NS TMTIME_NS_PER_SEC /* an expensive call is held at least this long */
#define FORGET_NS (7 * 24 * 60 * NS_MIN) /* budgets and quotas of periods long over */
#define ARENA 65536
#define SEP '\xff'
#define STATE_VERSION 1

enum { D_ALL, D_USER, D_ACCOUNT, D_MODEL, D_PROVIDER, D_PROJECT, D_OPERATION, D_N };
static const char *const dim_name[D_N] = { "all",      "user",    "account",  "model",
                                           "provider", "project", "operation" };

enum { A_COST, A_TOKENS, A_REQUESTS, A_ERRORS, A_ERROR_RATIO, A_P50, A_P90, A_P95, A_P99, A_N };
static const char *const agg_name[A_N] = { "cost",        "tokens",      "requests",
                                           "errors",      "error_ratio", "latency_p50",
                                           "latency_p90", "latency_p95", "latency_p99" };
#define NQ 4
static const double qval[NQ] = { 0.5, 0.9, 0.95, 0.99 };

enum { OP_GT, OP_GE, OP_LT, OP_LE };
static const char *const op_name[] = { ">", ">=", "<", "<=" };

enum { Q_OK, Q_WARNING, Q_EXCEEDED };

/* ---- state ------------------------------------------------------------------ */

/* 40 bytes: a busy user holds 1561 of them */
typedef struct {
    int32_t min;           /* unix minute */
    uint32_t calls, errors; /* saturate (4e9 calls a minute for one value: never) */
    uint32_t pad_;
    uint64_t tokens;
    int64_t cost;
    sketch_t *lat; /* microseconds; NULL: none kept for this minute */
} bucket_t;

/* One window length of one series: the sums of the buckets from start on,
 * and the latency quantiles of those buckets when lat_valid. */
typedef struct {
    int32_t start;
    uint32_t lat_gen; /* the series' lat_gen when q was computed */
    bool lat_valid, lat_have;
    int64_t lat_next; /* long windows: q is not computed again before this */
    uint64_t calls, errors, tokens;
    int64_t cost;
    double q[NQ]; /* microseconds */
} wstate_t;

typedef struct {
    bucket_t *b; /* ascending by min */
    uint32_t n, cap;
    uint32_t lat_gen;  /* bumped whenever a bucket's sketch changes */
    int32_t lat_from;  /* no bucket before this minute holds a sketch */
    uint32_t jit;      /* from the key's hash: spreads the refreshes of long windows */
    wstate_t w[];      /* one per window of the dimension */
} series_t;

typedef struct {
    ktab_t *t;
    size_t nw;
    int32_t *wmin; /* window lengths, minutes */
    bool lat;      /* keeps latency sketches ... */
    int32_t lat_keep; /* ... for this many minutes (the longest latency window) */
    int64_t *c_dropped;
} dim_t;

typedef struct {
    char *name, *severity, *summary, *thr_text;
    int agg, dim, op;
    size_t w;
    int32_t wmin;
    double thr;       /* the threshold in the value's unit */
    int64_t thr_nusd; /* cost */
    int64_t for_ms;
    uint64_t min_req;
} urule_t;

typedef struct {
    char *user, *model, *provider; /* user NULL when absent */
    int64_t cost, t, until;
    bool reported;
} xcall_t;

typedef struct {
    char src[128];
    int64_t period_start, period_end, limit, spent, f_avg, f_rate, exhaust, warn_pct, ts;
    bool partial;
} bpart_t;

/* A budget instance, keyed name SEP scope_value. */
typedef struct {
    char scope[16], period[8];
    bool has_value;
    uint32_t n, cap;
    bpart_t *p;
} binst_t;

/* A quota state not ok, keyed subject SEP id SEP window SEP unit. */
typedef struct {
    int state;
    int64_t used, limit, reset, ts;
} qst_t;

/* A stage, keyed daemon SEP src. */
typedef struct {
    int64_t last_seen, started;
    int64_t lost, gaps;    /* the counters at the last stats */
    int64_t last_inc, inc; /* the last increase, and messages lost since the hold began */
    bool counters;         /* lost and gaps are a baseline */
} stage_t;

struct rules {
    stats_t *st;
    cal_t *cal;
    dim_t dim[D_N];
    series_t *all;
    int32_t keep_min;
    bool budget_on, quota_on, gap_on;
    int64_t x_nusd, x_hold, err_pct, err_min, err_for, burn, burn_for, daily, rate;
    int64_t lat_ms, lat_for, no_events, silent;
    size_t w_err, w_lat, w_hour;
    urule_t *ur;
    size_t nur;
    ktab_t *xcalls, *budgets, *quotas, *stages;
    int64_t last_call, start_ns;
    int32_t trim_min, day_min;
    int64_t day_start, day_cost;
    sketch_t *tmp;
    mbuf_t key;
    size_t alen;
    int64_t zero[32]; /* counters when there is no registry */
    size_t nzero;
    int64_t *c_usage, *c_stale, *c_future, *c_x_dropped, *c_budget, *c_budget_stale,
        *c_budget_dropped, *c_quota, *c_quota_stale, *c_quota_dropped, *c_stats,
        *c_stages_dropped, *c_load_refused;
    int64_t *g_series, *g_buckets, *g_conds, *g_expensive;
    int64_t nbuckets;
    char arena[ARENA];
};

static int64_t *counter(rules_t *r, const char *name, const char *labels, bool gauge)
{
    if (r->st)
        return gauge ? stats_gauge(r->st, name, labels) : stats_counter(r->st, name, labels);
    assert(r->nzero < sizeof r->zero / sizeof r->zero[0]);
    return &r->zero[r->nzero++];
}

/* ---- helpers ---------------------------------------------------------------- */

static int32_t minute_of(int64_t ns)
{
    int64_t m = ns / NS_MIN;
    if (ns < 0 && m * NS_MIN != ns)
        m--;
    if (m > INT32_MAX)
        return INT32_MAX;
    if (m < INT32_MIN)
        return INT32_MIN;
    return (int32_t)m;
}

/* int64 sums wrap instead of overflowing (costs are bounded far below) */
static int64_t iadd(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static int64_t isub(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }

/* Dollars from nano-dollars, exactly, with at least two decimals: 10.00, 0.50, 0.000123. */
static char *fmt_usd(int64_t nusd, char *out, size_t cap)
{
    uint64_t a = nusd < 0 ? -(uint64_t)nusd : (uint64_t)nusd;
    char f[16];
    snprintf(f, sizeof f, "%09" PRIu64, a % 1000000000u);
    int n = 9;
    while (n > 2 && f[n - 1] == '0')
        n--;
    snprintf(out, cap, "%s%" PRIu64 ".%.*s", nusd < 0 ? "-" : "", a / 1000000000u, n, f);
    return out;
}

/* A duration for people: 90s -> 1m30s, 3600000 -> 1h, 250 -> 250ms. */
static char *fmt_dur(int64_t ms, char *out, size_t cap)
{
    if (ms < 0)
        ms = 0;
    if (ms < 1000) {
        snprintf(out, cap, "%" PRId64 "ms", ms);
        return out;
    }
    if (ms % 1000) {
        snprintf(out, cap, "%.3gs", (double)ms / 1000);
        return out;
    }
    int64_t s = ms / 1000, h = s / 3600, m = s / 60 % 60;
    s %= 60;
    size_t len = 0;
    out[0] = '\0';
    if (h)
        len += (size_t)snprintf(out + len, cap - len, "%" PRId64 "h", h);
    if (m && len < cap)
        len += (size_t)snprintf(out + len, cap - len, "%" PRId64 "m", m);
    if (s && len < cap)
        snprintf(out + len, cap - len, "%" PRId64 "s", s);
    return out;
}

static char *fmt_time(int64_t ns, char *out, size_t cap)
{
    return tmtime_rfc3339_format(ns, out, cap);
}

static char *copy_span(char *dst, size_t cap, span_t s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    if (n)
        memcpy(dst, s.p, n);
    dst[n] = '\0';
    return dst;
}

static void key_reset(rules_t *r) { mbuf_reset(&r->key); }
static void key_add(rules_t *r, span_t s, bool sep)
{
    if (sep)
        mbuf_append(&r->key, "\xff", 1);
    /* the separator cannot be part of a value (it is not UTF-8: only a
     * hostile publisher sends it): it becomes '?' */
    size_t run = 0;
    for (size_t i = 0; i < s.len; i++)
        if ((unsigned char)s.p[i] == 0xff) {
            mbuf_append(&r->key, s.p + run, i - run);
            mbuf_append(&r->key, "?", 1);
            run = i + 1;
        }
    if (s.len > run)
        mbuf_append(&r->key, s.p + run, s.len - run);
}

/* The n-th part (0-based) of a key joined by SEP. */
static span_t key_part(span_t k, int n)
{
    const char *p = k.p, *end = k.p + k.len;
    for (; n > 0; n--) {
        const char *s = p ? memchr(p, SEP, (size_t)(end - p)) : NULL;
        if (!s)
            return span_make("", 0);
        p = s + 1;
    }
    const char *s = memchr(p, SEP, (size_t)(end - p));
    return span_make(p, s ? (size_t)(s - p) : (size_t)(end - p));
}

static size_t key_seps(span_t k)
{
    size_t n = 0;
    for (size_t i = 0; i < k.len; i++)
        n += k.p[i] == SEP;
    return n;
}

/* ---- series ----------------------------------------------------------------- */

static void series_free(void *val)
{
    series_t *s = val;
    for (uint32_t i = 0; i < s->n; i++)
        sketch_destroy(&s->b[i].lat);
    free(s->b);
}

/* The index of the first bucket at or after minute m. */
static uint32_t lower_bound(const series_t *s, int32_t m)
{
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->b[mid].min < m)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bucket_t *bucket_at(rules_t *r, series_t *s, int32_t m)
{
    uint32_t i;
    if (s->n && s->b[s->n - 1].min == m)
        return &s->b[s->n - 1];
    if (!s->n || s->b[s->n - 1].min < m) {
        i = s->n;
    } else {
        i = lower_bound(s, m);
        if (s->b[i].min == m)
            return &s->b[i];
    }
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->b = xreallocarray(s->b, s->cap, sizeof *s->b);
    }
    memmove(&s->b[i + 1], &s->b[i], (s->n - i) * sizeof *s->b);
    s->n++;
    r->nbuckets++;
    s->b[i] = (bucket_t){ .min = m };
    return &s->b[i];
}

typedef struct {
    uint64_t calls, errors, tokens;
    int64_t cost;
    int64_t lat_us; /* -1: none */
} add_t;

static void series_add(rules_t *r, dim_t *d, series_t *s, int32_t m, int32_t now_min,
                       const add_t *a)
{
    bucket_t *b = bucket_at(r, s, m);
    /* what the bucket takes is what the windows take, so subtracting it later balances */
    uint32_t calls = a->calls < UINT32_MAX - b->calls ? (uint32_t)a->calls : UINT32_MAX - b->calls;
    uint32_t errors = a->errors < calls ? (uint32_t)a->errors : calls;
    if (errors > UINT32_MAX - b->errors)
        errors = UINT32_MAX - b->errors;
    b->calls += calls;
    b->errors += errors;
    b->tokens += a->tokens;
    b->cost = iadd(b->cost, a->cost);
    if (a->lat_us >= 0 && d->lat && m > now_min - d->lat_keep) {
        if (!b->lat)
            b->lat = sketch_new(0);
        sketch_add(b->lat, (double)a->lat_us);
        s->lat_gen++;
    }
    for (size_t w = 0; w < d->nw; w++) {
        wstate_t *ws = &s->w[w];
        if (m < ws->start)
            continue;
        ws->calls += calls;
        ws->errors += errors;
        ws->tokens += a->tokens;
        ws->cost = iadd(ws->cost, a->cost);
    }
}

static void wsub(wstate_t *ws, const bucket_t *b)
{
    ws->calls -= b->calls;
    ws->errors -= b->errors;
    ws->tokens -= b->tokens;
    ws->cost = isub(ws->cost, b->cost);
}

static void wadd(wstate_t *ws, const bucket_t *b)
{
    ws->calls += b->calls;
    ws->errors += b->errors;
    ws->tokens += b->tokens;
    ws->cost = iadd(ws->cost, b->cost);
}

/* Moves window w of s to start at minute start (backwards too, should the
 * clock step back). */
static wstate_t *win_at(series_t *s, size_t w, int32_t start)
{
    wstate_t *ws = &s->w[w];
    if (ws->start == start)
        return ws;
    bool lat = false;
    if (start > ws->start) {
        for (uint32_t i = lower_bound(s, ws->start); i < s->n && s->b[i].min < start; i++) {
            wsub(ws, &s->b[i]);
            lat |= s->b[i].lat != NULL;
        }
    } else {
        for (uint32_t i = lower_bound(s, start); i < s->n && s->b[i].min < ws->start; i++) {
            wadd(ws, &s->b[i]);
            lat |= s->b[i].lat != NULL;
        }
    }
    ws->start = start;
    if (lat)
        ws->lat_valid = false;
    return ws;
}

/* The quantiles of window w of s (moved already); false when it holds no
 * latency. They are merged again from the window's buckets when a latency
 * came or a bucket with latencies left; for windows over LAT_EXACT_MIN, whose
 * merge is longer and whose quantiles move slowly, at most every wmin seconds
 * (a 60th of the window, at most a minute), at a moment spread by the key's
 * hash so that the series do not all merge in the same evaluation. A window
 * without a value gets one as soon as a latency comes. */
static bool win_lat(rules_t *r, series_t *s, size_t w, int32_t wmin, int64_t now)
{
    wstate_t *ws = &s->w[w];
    bool fresh = ws->lat_valid && ws->lat_gen == s->lat_gen;
    if (!fresh && wmin > LAT_EXACT_MIN && ws->lat_valid && ws->lat_have && now < ws->lat_next)
        fresh = true; /* stale within the refresh period */
    if (!fresh) {
        sketch_reset(r->tmp);
        for (uint32_t i = lower_bound(s, ws->start); i < s->n; i++)
            if (s->b[i].lat)
                (void)sketch_merge(r->tmp, s->b[i].lat);
        ws->lat_have = sketch_count(r->tmp) > 0;
        for (int k = 0; k < NQ; k++)
            ws->q[k] = ws->lat_have ? sketch_quantile(r->tmp, qval[k]) : 0;
        ws->lat_valid = true;
        ws->lat_gen = s->lat_gen;
        if (wmin > LAT_EXACT_MIN) {
            int64_t half = (wmin < 60 ? wmin : 60) * TMTIME_NS_PER_SEC / 2;
            ws->lat_next = now + half + (int64_t)(s->jit % 1024) * half / 1024;
        }
    }
    return ws->lat_have;
}

static size_t dim_window(dim_t *d, int32_t wmin, bool lat)
{
    size_t w;
    for (w = 0; w < d->nw && d->wmin[w] != wmin; w++)
        ;
    if (w == d->nw) {
        d->wmin = xreallocarray(d->wmin, d->nw + 1, sizeof *d->wmin);
        d->wmin[d->nw++] = wmin;
    }
    if (lat) {
        d->lat = true;
        if (wmin > d->lat_keep)
            d->lat_keep = wmin;
    }
    return w;
}

/* The series of key in d, created unless the dimension is full. */
static series_t *series_get(dim_t *d, const void *key, size_t klen)
{
    uint64_t h = ktab_hash(key, klen);
    series_t *s = ktab_get(d->t, key, klen, h);
    if (s)
        return s;
    if (ktab_count(d->t) >= MAX_VALUES) {
        (*d->c_dropped)++;
        return NULL;
    }
    s = ktab_put(d->t, key, klen, h, NULL);
    s->jit = (uint32_t)(h >> 40);
    return s;
}

/* ---- trimming ----------------------------------------------------------------- */

typedef struct {
    rules_t *r;
    dim_t *d;
    int32_t cut, lat_cut;
} trim_t;

static bool trim_series(void *val, void *arg)
{
    trim_t *t = arg;
    series_t *s = val;
    uint32_t k = 0;
    while (k < s->n && s->b[k].min < t->cut) {
        bucket_t *b = &s->b[k];
        for (size_t w = 0; w < t->d->nw; w++)
            if (b->min >= s->w[w].start)
                wsub(&s->w[w], b);
        if (b->lat) {
            sketch_destroy(&b->lat);
            s->lat_gen++;
        }
        k++;
    }
    if (k) {
        memmove(s->b, s->b + k, (s->n - k) * sizeof *s->b);
        s->n -= k;
        t->r->nbuckets -= k;
    }
    if (t->d->lat && s->lat_from < t->lat_cut) {
        for (uint32_t i = lower_bound(s, s->lat_from); i < s->n && s->b[i].min < t->lat_cut;
             i++)
            if (s->b[i].lat) {
                sketch_destroy(&s->b[i].lat);
                s->lat_gen++;
            }
        s->lat_from = t->lat_cut;
    }
    if (s->n == 0 && s->cap > 16) {
        free(s->b);
        s->b = NULL;
        s->cap = 0;
    }
    return s->n == 0 && s != t->r->all;
}

/* budget instances whose period ended a week ago (their budget was removed) */
static bool budget_gone(void *val, void *arg)
{
    const binst_t *b = val;
    int64_t now = *(const int64_t *)arg, end = 0;
    for (uint32_t i = 0; i < b->n; i++)
        if (b->p[i].period_end > end)
            end = b->p[i].period_end;
    return end > 0 && now - end > FORGET_NS;
}

/* quota states of a calendar window that ended a week ago (no ok came) */
static bool quota_gone(void *val, void *arg)
{
    const qst_t *q = val;
    return q->reset > 0 && *(const int64_t *)arg - q->reset > FORGET_NS;
}

static void trim(rules_t *r, int64_t now)
{
    int32_t now_min = minute_of(now);
    for (int i = 0; i < D_N; i++) {
        dim_t *d = &r->dim[i];
        trim_t t = { r, d, now_min - r->keep_min, now_min - d->lat_keep + 1 };
        ktab_sweep(d->t, trim_series, &t);
    }
    ktab_sweep(r->budgets, budget_gone, &now);
    ktab_sweep(r->quotas, quota_gone, &now);
}

/* ---- construction ----------------------------------------------------------- */

static void urule_free(urule_t *u)
{
    free(u->name);
    free(u->severity);
    free(u->summary);
    free(u->thr_text);
}

static int lookup(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

static int urule_build(rules_t *r, const cfg_rule_t *c, urule_t *u, char *err, size_t cap)
{
    int by = strcmp(c->by, "") ? lookup(c->by, dim_name + 1, D_N - 1) : -1;
    u->agg = lookup(c->aggregate, agg_name, A_N);
    u->op = lookup(c->op, op_name, 4);
    if (u->agg < 0 || (c->by[0] && by < 0) || u->op < 0) {
        snprintf(err, cap, "rule.%s: aggregate '%s', by '%s' or op '%s' unknown", c->name,
                 c->aggregate, c->by, c->op);
        return -1;
    }
    u->dim = c->by[0] ? by + 1 : D_ALL;
    if (c->window < 1) {
        snprintf(err, cap, "rule.%s: window must be positive", c->name);
        return -1;
    }
    int64_t wmin = (c->window + NS_MIN / TMTIME_NS_PER_MS - 1) / (NS_MIN / TMTIME_NS_PER_MS);
    if (wmin > MAX_BUCKETS - KEEP_MIN) {
        snprintf(err, cap, "rule.%s: window too long", c->name);
        return -1;
    }
    u->wmin = (int32_t)wmin;
    const char *t = c->threshold;
    char *end;
    errno = 0;
    double v = strtod(t, &end);
    if (!t[0] || *end || errno || !isfinite(v)) {
        snprintf(err, cap, "rule.%s: threshold '%s' is not a number", c->name, t);
        return -1;
    }
    u->thr = v;
    if (u->agg == A_COST) {
        __int128 n;
        if (dec_parse_ex(t, strlen(t), 9, DEC_HALF_EVEN, DEC_ALLOW_PLUS, &n) < 0 &&
            dec_from_double(v, 9, &n) < 0) {
            snprintf(err, cap, "rule.%s: threshold '%s' is not an amount", c->name, t);
            return -1;
        }
        if (n > INT64_MAX || n < -INT64_MAX) {
            snprintf(err, cap, "rule.%s: threshold '%s' out of range", c->name, t);
            return -1;
        }
        u->thr_nusd = (int64_t)n;
    }
    u->name = xstrdup(c->name);
    u->severity = xstrdup(c->severity && c->severity[0] ? c->severity : "warning");
    u->summary = xstrdup(c->summary ? c->summary : "");
    u->thr_text = xstrdup(t);
    u->for_ms = c->for_ms;
    u->min_req = c->min_requests > 0 ? (uint64_t)c->min_requests : 0;
    u->w = dim_window(&r->dim[u->dim], u->wmin, u->agg >= A_P50);
    return 0;
}

static void xcall_free(void *val)
{
    xcall_t *x = val;
    free(x->user);
    free(x->model);
    free(x->provider);
}

static void binst_free(void *val)
{
    binst_t *b = val;
    free(b->p);
}

static void tables_new(rules_t *r)
{
    for (int i = 0; i < D_N; i++) {
        dim_t *d = &r->dim[i];
        d->t = ktab_new(sizeof(series_t) + d->nw * sizeof(wstate_t), series_free);
    }
    r->all = ktab_put(r->dim[D_ALL].t, "", 0, ktab_hash("", 0), NULL);
    r->xcalls = ktab_new(sizeof(xcall_t), xcall_free);
    r->budgets = ktab_new(sizeof(binst_t), binst_free);
    r->quotas = ktab_new(sizeof(qst_t), NULL);
    r->stages = ktab_new(sizeof(stage_t), NULL);
}

/* Back to nothing held, as after rules_new. */
static void clear(rules_t *r)
{
    for (int i = 0; i < D_N; i++)
        ktab_clear(r->dim[i].t);
    r->all = ktab_put(r->dim[D_ALL].t, "", 0, ktab_hash("", 0), NULL);
    ktab_clear(r->xcalls);
    ktab_clear(r->budgets);
    ktab_clear(r->quotas);
    ktab_clear(r->stages);
    r->nbuckets = 0;
    r->last_call = 0;
    r->start_ns = 0;
    r->trim_min = INT32_MIN;
    r->day_start = INT64_MIN;
    r->day_min = INT32_MAX;
    r->day_cost = 0;
}

rules_t *rules_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap)
{
    rules_t *r = xcalloc(1, sizeof *r);
    r->st = st;
    char cerr[256];
    r->cal = cal_new(cfg->global.timezone, cerr, sizeof cerr);
    if (!r->cal) {
        snprintf(err, cap, "timezone '%s': %s", cfg->global.timezone, cerr);
        free(r);
        return NULL;
    }
    const cfg_alerter_t *a = &cfg->alerter;
    r->budget_on = a->budget;
    r->quota_on = a->quota;
    r->gap_on = a->bus_gap;
    r->x_nusd = a->high_cost_call_nusd;
    r->x_hold = a->high_cost_call_hold;
    r->err_pct = a->error_pct;
    r->err_min = a->error_min_requests;
    r->err_for = a->error_for;
    r->burn = a->burn_tokens_per_hour;
    r->burn_for = a->burn_for;
    r->daily = a->daily_cost_nusd;
    r->rate = a->cost_rate_nusd;
    r->lat_ms = a->latency_p95;
    r->lat_for = a->latency_for;
    r->no_events = a->no_events;
    r->silent = a->stage_silent;
    if (r->err_pct > 0) {
        int64_t wmin = (a->error_window + 59999) / 60000;
        r->w_err = dim_window(&r->dim[D_MODEL], (int32_t)(wmin < 1 ? 1 : wmin), false);
    }
    if (r->lat_ms > 0)
        r->w_lat = dim_window(&r->dim[D_MODEL], LAT_MIN, true);
    if (r->burn > 0 || r->rate > 0)
        r->w_hour = dim_window(&r->dim[D_ALL], HOUR_MIN, false);
    r->ur = xcalloc(cfg->nrules ? cfg->nrules : 1, sizeof *r->ur);
    r->keep_min = KEEP_MIN;
    for (size_t i = 0; i < cfg->nrules; i++) {
        if (urule_build(r, &cfg->rules[i], &r->ur[r->nur], err, cap) < 0) {
            rules_destroy(&r);
            return NULL;
        }
        if (r->ur[r->nur].wmin + 1 > r->keep_min)
            r->keep_min = r->ur[r->nur].wmin + 1;
        r->nur++;
    }
    tables_new(r);
    r->tmp = sketch_new(0);
    clear(r);
    r->c_usage = counter(r, "rules_usage_total", NULL, false);
    r->c_stale = counter(r, "rules_usage_stale_total", NULL, false);
    r->c_future = counter(r, "rules_usage_future_total", NULL, false);
    for (int i = 0; i < D_N; i++) {
        char l[64];
        snprintf(l, sizeof l, "dim=%s", dim_name[i]);
        r->dim[i].c_dropped = counter(r, "rules_values_dropped_total", l, false);
    }
    r->c_x_dropped = counter(r, "rules_expensive_dropped_total", NULL, false);
    r->c_budget = counter(r, "rules_budget_total", NULL, false);
    r->c_budget_stale = counter(r, "rules_budget_stale_total", NULL, false);
    r->c_budget_dropped = counter(r, "rules_budget_dropped_total", NULL, false);
    r->c_quota = counter(r, "rules_quota_total", NULL, false);
    r->c_quota_stale = counter(r, "rules_quota_stale_total", NULL, false);
    r->c_quota_dropped = counter(r, "rules_quota_dropped_total", NULL, false);
    r->c_stats = counter(r, "rules_stats_total", NULL, false);
    r->c_stages_dropped = counter(r, "rules_stages_dropped_total", NULL, false);
    r->c_load_refused = counter(r, "rules_load_refused_total", NULL, false);
    r->g_series = counter(r, "rules_series", NULL, true);
    r->g_buckets = counter(r, "rules_buckets", NULL, true);
    r->g_conds = counter(r, "rules_conditions", NULL, true);
    r->g_expensive = counter(r, "rules_expensive_held", NULL, true);
    return r;
}

void rules_destroy(rules_t **pr)
{
    rules_t *r = *pr;
    if (!r)
        return;
    for (int i = 0; i < D_N; i++) {
        if (r->dim[i].t)
            ktab_destroy(&r->dim[i].t);
        free(r->dim[i].wmin);
    }
    if (r->xcalls) {
        ktab_destroy(&r->xcalls);
        ktab_destroy(&r->budgets);
        ktab_destroy(&r->quotas);
        ktab_destroy(&r->stages);
    }
    for (size_t i = 0; i < r->nur; i++)
        urule_free(&r->ur[i]);
    free(r->ur);
    sketch_destroy(&r->tmp);
    cal_destroy(&r->cal);
    mbuf_free(&r->key);
    free(r);
    *pr = NULL;
}

/* ---- inputs ------------------------------------------------------------------- */

static void expensive_add(rules_t *r, const msg_usage_t *u, int64_t t, int64_t now_ns)
{
    int64_t hold = r->x_hold * TMTIME_NS_PER_MS;
    if (hold < MIN_HOLD_NS)
        hold = MIN_HOLD_NS;
    if (t + hold <= now_ns)
        return; /* its hold is over already (a replayed call) */
    char hid[24];
    span_t id = u->request_id;
    if (!id.p || !id.len) {
        /* no request id: a hash of what identifies the record */
        uint64_t h = FNV64_OFFSET;
        const span_t parts[] = { u->provider, u->model, u->operation, u->user, u->account };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            h = fnv1a64_more(h, parts[i].p ? parts[i].p : "", parts[i].len);
            h = fnv1a64_more(h, "\xff", 1);
        }
        const int64_t nums[] = { u->ts, u->recv_ts, u->cost_nusd };
        h = fnv1a64_more(h, nums, sizeof nums);
        snprintf(hid, sizeof hid, "h%016" PRIx64, h);
        id = span_cstr(hid);
    }
    uint64_t kh = ktab_hash(id.p, id.len);
    xcall_t *x = ktab_get(r->xcalls, id.p, id.len, kh);
    if (!x) {
        if (ktab_count(r->xcalls) >= MAX_EXPENSIVE) {
            (*r->c_x_dropped)++;
            return;
        }
        x = ktab_put(r->xcalls, id.p, id.len, kh, NULL);
        x->user = u->user.p ? xstrndup(u->user.p, u->user.len) : NULL;
        x->model = xstrndup(u->model.p ? u->model.p : "", u->model.len);
        x->provider = xstrndup(u->provider.p ? u->provider.p : "", u->provider.len);
    }
    x->cost = u->cost_nusd;
    x->t = t;
    x->until = t + hold;
}

void rules_usage(rules_t *r, const msg_usage_t *u, int64_t now_ns)
{
    (*r->c_usage)++;
    int64_t t = u->recv_ts > 0 ? u->recv_ts : now_ns;
    if (t > now_ns) {
        t = now_ns;
        (*r->c_future)++;
    }
    if (now_ns > r->last_call)
        r->last_call = now_ns;
    int32_t m = minute_of(t), now_min = minute_of(now_ns);
    if (r->x_nusd > 0 && u->cost_nusd > r->x_nusd)
        expensive_add(r, u, t, now_ns);
    if (m < now_min - r->keep_min) {
        (*r->c_stale)++;
        return;
    }
    add_t a = { .calls = u->requests,
                .errors = span_eq_cstr(u->status, "error") ? u->requests : 0,
                .tokens = u->input_tokens + u->output_tokens,
                .cost = u->cost_nusd,
                .lat_us = u->latency_us };
    series_add(r, &r->dim[D_ALL], r->all, m, now_min, &a);
    if (m >= r->day_min)
        r->day_cost = iadd(r->day_cost, a.cost);
    const struct {
        int d;
        span_t v;
    } one[] = { { D_USER, u->user },         { D_ACCOUNT, u->account },
                { D_PROVIDER, u->provider }, { D_PROJECT, u->project },
                { D_OPERATION, u->operation } };
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        if (!one[i].v.p)
            continue;
        dim_t *d = &r->dim[one[i].d];
        series_t *s = series_get(d, one[i].v.p, one[i].v.len);
        if (s)
            series_add(r, d, s, m, now_min, &a);
    }
    key_reset(r);
    key_add(r, u->provider, false);
    key_add(r, u->model, true);
    series_t *s = series_get(&r->dim[D_MODEL], r->key.data, r->key.len);
    if (s)
        series_add(r, &r->dim[D_MODEL], s, m, now_min, &a);
}

void rules_budget(rules_t *r, span_t src, const msg_budget_t *b)
{
    (*r->c_budget)++;
    if (!r->budget_on)
        return;
    key_reset(r);
    key_add(r, b->name, false);
    key_add(r, b->scope_value, true);
    uint64_t h = ktab_hash(r->key.data, r->key.len);
    binst_t *bi = ktab_get(r->budgets, r->key.data, r->key.len, h);
    if (!bi) {
        if (ktab_count(r->budgets) >= MAX_BUDGETS) {
            (*r->c_budget_dropped)++;
            return;
        }
        bi = ktab_put(r->budgets, r->key.data, r->key.len, h, NULL);
    }
    copy_span(bi->scope, sizeof bi->scope, b->scope);
    copy_span(bi->period, sizeof bi->period, b->period);
    bi->has_value = b->scope_value.p != NULL;
    char s[sizeof bi->p->src];
    copy_span(s, sizeof s, src);
    bpart_t *p = NULL;
    for (uint32_t i = 0; i < bi->n && !p; i++)
        if (!strcmp(bi->p[i].src, s))
            p = &bi->p[i];
    if (!p) {
        if (bi->n >= MAX_PARTS) {
            (*r->c_budget_dropped)++;
            return;
        }
        if (bi->n == bi->cap) {
            bi->cap = bi->cap ? bi->cap * 2 : 2;
            bi->p = xreallocarray(bi->p, bi->cap, sizeof *bi->p);
        }
        p = &bi->p[bi->n++];
        *p = (bpart_t){ .ts = INT64_MIN };
        memcpy(p->src, s, sizeof s);
    }
    if (b->ts < p->ts) {
        (*r->c_budget_stale)++;
        return;
    }
    p->period_start = b->period_start;
    p->period_end = b->period_end;
    p->limit = b->limit_nusd;
    p->spent = b->spent_nusd;
    p->f_avg = b->forecast_avg_nusd;
    p->f_rate = b->forecast_rate_nusd;
    p->exhaust = b->exhaust_ts;
    p->warn_pct = b->warn_pct;
    p->ts = b->ts;
    p->partial = b->partial;
}

static int qstate_of(span_t s)
{
    return span_eq_cstr(s, "exceeded") ? Q_EXCEEDED : span_eq_cstr(s, "warning") ? Q_WARNING : Q_OK;
}

void rules_quota(rules_t *r, const msg_quota_t *q)
{
    (*r->c_quota)++;
    if (!r->quota_on)
        return;
    key_reset(r);
    key_add(r, q->subject, false);
    key_add(r, q->id, true);
    key_add(r, q->window, true);
    key_add(r, q->unit, true);
    uint64_t h = ktab_hash(r->key.data, r->key.len);
    qst_t *s = ktab_get(r->quotas, r->key.data, r->key.len, h);
    if (s && q->ts < s->ts) {
        (*r->c_quota_stale)++;
        return;
    }
    int state = qstate_of(q->state);
    if (state == Q_OK) {
        if (s)
            ktab_del(r->quotas, s);
        return;
    }
    if (!s) {
        if (ktab_count(r->quotas) >= MAX_QUOTAS) {
            (*r->c_quota_dropped)++;
            return;
        }
        s = ktab_put(r->quotas, r->key.data, r->key.len, h, NULL);
    }
    *s = (qst_t){ state, q->used, q->limit, q->reset, q->ts };
}

void rules_stats(rules_t *r, const msg_stats_t *s, int64_t now_ns)
{
    (*r->c_stats)++;
    key_reset(r);
    key_add(r, s->daemon, false);
    key_add(r, s->src, true);
    uint64_t h = ktab_hash(r->key.data, r->key.len);
    stage_t *g = ktab_get(r->stages, r->key.data, r->key.len, h);
    if (!g) {
        if (ktab_count(r->stages) >= MAX_STAGES) {
            (*r->c_stages_dropped)++;
            return;
        }
        g = ktab_put(r->stages, r->key.data, r->key.len, h, NULL);
    }
    int64_t lost = 0, gaps = 0;
    bool have = false;
    for (size_t i = 0; i < s->n; i++) {
        const msg_stat_t *e = &s->entries[i];
        if (span_eq_cstr(e->name, "bus_messages_lost_total")) {
            lost = iadd(lost, e->value);
            have = true;
        } else if (span_eq_cstr(e->name, "bus_gaps_lost_total")) {
            gaps = iadd(gaps, e->value);
            have = true;
        }
    }
    if (have) {
        if (g->counters) {
            /* a stage that restarted counts from 0 again */
            bool restarted = s->started != g->started;
            int64_t bl = restarted ? 0 : g->lost, bg = restarted ? 0 : g->gaps;
            if (lost > bl || gaps > bg) {
                if (now_ns - g->last_inc >= GAP_HOLD_NS)
                    g->inc = 0;
                g->inc = iadd(g->inc, lost > bl ? lost - bl : 0);
                g->last_inc = now_ns;
            }
        }
        g->lost = lost;
        g->gaps = gaps;
        g->counters = true;
    }
    g->started = s->started;
    if (now_ns > g->last_seen)
        g->last_seen = now_ns;
}

/* ---- conditions ------------------------------------------------------------- */

typedef struct {
    rules_t *r;
    rules_cond_t c;
    void (*fn)(void *arg, const rules_cond_t *c);
    void *arg;
    int64_t n;
} em_t;

static void c_begin(em_t *e, const char *name, const char *sev, int64_t for_ms, double value)
{
    e->r->alen = 0;
    memset(&e->c, 0, sizeof e->c);
    e->c.alertname = name;
    e->c.severity = sev;
    e->c.for_ms = for_ms;
    e->c.value = value;
}

static void c_label(em_t *e, const char *k, span_t v)
{
    if (!v.p || e->c.nlabels >= RULES_MAX_LABELS)
        return;
    e->c.labels[e->c.nlabels++] = (msg_tag_t){ span_cstr(k), v };
}

static span_t ar_vprintf(rules_t *r, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static span_t ar_vprintf(rules_t *r, const char *fmt, va_list ap)
{
    size_t room = ARENA - r->alen;
    if (room <= 1)
        return span_make("", 0);
    char *p = r->arena + r->alen;
    int n = vsnprintf(p, room, fmt, ap);
    if (n < 0)
        n = 0;
    size_t len = (size_t)n < room - 1 ? (size_t)n : room - 1;
    r->alen += len + 1;
    return span_make(p, len);
}

static void c_ann(em_t *e, const char *k, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void c_ann(em_t *e, const char *k, const char *fmt, ...)
{
    if (e->c.nannotations >= MSG_MAX_ANNOTATIONS)
        return;
    va_list ap;
    va_start(ap, fmt);
    span_t v = ar_vprintf(e->r, fmt, ap);
    va_end(ap);
    e->c.annotations[e->c.nannotations++] = (msg_tag_t){ span_cstr(k), v };
}

static void c_end(em_t *e)
{
    e->n++;
    e->fn(e->arg, &e->c);
}

static int span_len(span_t s) { return (int)s.len; }
static const char *span_ptr(span_t s) { return s.p ? s.p : ""; }

void rules_budgets(const rules_t *r, int64_t now,
                   void (*fn)(void *arg, span_t name, const char *scope, span_t value,
                              const char *period, int64_t spent_nusd, int64_t limit_nusd),
                   void *arg)
{
    size_t it = 0;
    const binst_t *bi;
    while ((bi = ktab_next(r->budgets, &it))) {
        int64_t ps = INT64_MIN, pe = 0, spent = 0, limit = 0;
        for (uint32_t i = 0; i < bi->n; i++)
            if (bi->p[i].period_start > ps)
                ps = bi->p[i].period_start;
        for (uint32_t i = 0; i < bi->n; i++) {
            const bpart_t *p = &bi->p[i];
            if (p->period_start != ps)
                continue;
            spent = iadd(spent, p->spent);
            if (p->limit > limit)
                limit = p->limit;
            if (p->period_end > pe)
                pe = p->period_end;
        }
        if (limit <= 0 || (pe > 0 && now >= pe))
            continue;
        span_t k = ktab_key(bi);
        fn(arg, key_part(k, 0), bi->scope, bi->has_value ? key_part(k, 1) : span_cstr(""),
           bi->period, spent, limit);
    }
}

static void eval_budgets(rules_t *r, em_t *e, int64_t now)
{
    size_t it = 0;
    binst_t *bi;
    while ((bi = ktab_next(r->budgets, &it))) {
        int64_t ps = INT64_MIN;
        for (uint32_t i = 0; i < bi->n; i++)
            if (bi->p[i].period_start > ps)
                ps = bi->p[i].period_start;
        int64_t pe = 0, spent = 0, limit = 0, f_avg = 0, f_rate = 0, exh = 0, warn = 0,
                wts = INT64_MIN;
        for (uint32_t i = 0; i < bi->n; i++) {
            const bpart_t *p = &bi->p[i];
            if (p->period_start != ps)
                continue;
            spent = iadd(spent, p->spent);
            f_avg = iadd(f_avg, p->f_avg);
            f_rate = iadd(f_rate, p->f_rate);
            if (p->limit > limit)
                limit = p->limit;
            if (p->period_end > pe)
                pe = p->period_end;
            if (p->exhaust > 0 && (!exh || p->exhaust < exh))
                exh = p->exhaust;
            if (p->ts >= wts) {
                wts = p->ts;
                warn = p->warn_pct;
            }
        }
        if (limit <= 0 || (pe > 0 && now >= pe))
            continue; /* no limit, or its period is over: a new one has begun */
        bool exceeded = spent >= limit;
        bool warning = warn > 0 && (__int128)spent * 100 >= (__int128)limit * warn;
        span_t k = ktab_key(bi), name = key_part(k, 0), value = key_part(k, 1);
        for (int lvl = 0; lvl < 2; lvl++) {
            if (!(lvl ? exceeded : warning))
                continue;
            int64_t thr = lvl ? limit : (int64_t)((__int128)limit * warn / 100);
            c_begin(e, lvl ? "LLMBudgetExceeded" : "LLMBudgetWarning",
                    lvl ? "critical" : "warning", 0, (double)spent / (double)limit);
            c_label(e, "budget", name);
            c_label(e, "scope", span_cstr(bi->scope));
            if (bi->has_value)
                c_label(e, "scope_value", value);
            c_label(e, "period", span_cstr(bi->period));
            char a[40], b[40], c[40], d[40], f[40], t1[40], t2[40];
            int64_t pct = (int64_t)((__int128)spent * 100 / limit);
            if (bi->has_value)
                c_ann(e, "summary", "Budget %.*s (%s %.*s) is at %" PRId64 "%% of $%s this %s",
                      span_len(name), span_ptr(name), bi->scope, span_len(value),
                      span_ptr(value), pct, fmt_usd(limit, a, sizeof a), bi->period);
            else
                c_ann(e, "summary", "Budget %.*s (%s) is at %" PRId64 "%% of $%s this %s",
                      span_len(name), span_ptr(name), bi->scope, pct,
                      fmt_usd(limit, a, sizeof a), bi->period);
            c_ann(e, "description",
                  "$%s spent of $%s in the %s from %s to %s (%s at $%s); at the last hour's "
                  "rate $%s by the period's end, at its average rate $%s",
                  fmt_usd(spent, b, sizeof b), a, bi->period, fmt_time(ps, t1, sizeof t1),
                  fmt_time(pe, t2, sizeof t2), lvl ? "exceeded" : "warning",
                  fmt_usd(thr, c, sizeof c), fmt_usd(f_rate, d, sizeof d),
                  fmt_usd(f_avg, f, sizeof f));
            c_ann(e, "value", "%.4g", e->c.value);
            c_ann(e, "threshold", "%s", fmt_usd(thr, c, sizeof c));
            c_ann(e, "limit", "%s", a);
            c_ann(e, "spent", "%s", b);
            c_ann(e, "forecast_usd", "%s", fmt_usd(f_rate, d, sizeof d));
            if (exh > 0)
                c_ann(e, "exhaust", "%s", fmt_time(exh, t1, sizeof t1));
            c_end(e);
        }
    }
}

static void eval_quotas(rules_t *r, em_t *e, int64_t now)
{
    size_t it = 0;
    qst_t *q;
    while ((q = ktab_next(r->quotas, &it))) {
        if (q->reset > 0 && now >= q->reset)
            continue; /* its calendar window is over (the aggregator will say ok) */
        span_t k = ktab_key(q), subj = key_part(k, 0), id = key_part(k, 1),
               win = key_part(k, 2), unit = key_part(k, 3);
        bool ex = q->state == Q_EXCEEDED;
        double ratio = q->limit > 0 ? (double)q->used / (double)q->limit : 0;
        c_begin(e, ex ? "LLMQuotaExceeded" : "LLMQuotaWarning", ex ? "critical" : "warning", 0,
                ratio);
        c_label(e, "subject", subj);
        c_label(e, "id", id);
        c_label(e, "window", win);
        c_label(e, "unit", unit);
        char used[48], lim[48];
        if (span_eq_cstr(unit, "usd")) {
            char a[40], b[40];
            snprintf(used, sizeof used, "$%s", fmt_usd(q->used, a, sizeof a));
            snprintf(lim, sizeof lim, "$%s", fmt_usd(q->limit, b, sizeof b));
        } else {
            snprintf(used, sizeof used, "%" PRId64 " %.*s", q->used, span_len(unit),
                     span_ptr(unit));
            snprintf(lim, sizeof lim, "%" PRId64 " %.*s", q->limit, span_len(unit),
                     span_ptr(unit));
        }
        int64_t pct = q->limit > 0 ? (int64_t)((__int128)q->used * 100 / q->limit) : 0;
        bool cal = span_eq_cstr(win, "day") || span_eq_cstr(win, "week") ||
                   span_eq_cstr(win, "month");
        c_ann(e, "summary", "Quota of %.*s %.*s %s: %s of %s %s %.*s (%" PRId64 "%%)",
              span_len(subj), span_ptr(subj), span_len(id), span_ptr(id),
              ex ? "exceeded" : "nearly used", used, lim, cal ? "this" : "in the last",
              span_len(win), span_ptr(win), pct);
        c_ann(e, "description",
              "The %.*s quota of %.*s %.*s in %.*s is in state %s: %s used of %s",
              span_len(win), span_ptr(win), span_len(subj), span_ptr(subj), span_len(id),
              span_ptr(id), span_len(unit), span_ptr(unit), ex ? "exceeded" : "warning", used,
              lim);
        c_ann(e, "value", "%.4g", ratio);
        c_ann(e, "used", "%s", used);
        c_ann(e, "limit", "%s", lim);
        c_end(e);
    }
}

static bool xcall_expired(void *val, void *arg)
{
    const xcall_t *x = val;
    return x->reported && *(const int64_t *)arg >= x->until;
}

static void eval_expensive(rules_t *r, em_t *e, int64_t now)
{
    ktab_sweep(r->xcalls, xcall_expired, &now);
    size_t it = 0;
    xcall_t *x;
    char a[40], b[40], t[40];
    while ((x = ktab_next(r->xcalls, &it))) {
        x->reported = true;
        span_t id = ktab_key(x);
        c_begin(e, "LLMExpensiveCall", "warning", 0, (double)x->cost / 1e9);
        if (x->user)
            c_label(e, "user", span_cstr(x->user));
        c_label(e, "model", span_cstr(x->model));
        c_label(e, "provider", span_cstr(x->provider));
        c_label(e, "request_id", id);
        c_ann(e, "summary", "A call to %s/%s cost $%s, over $%s", x->provider, x->model,
              fmt_usd(x->cost, a, sizeof a), fmt_usd(r->x_nusd, b, sizeof b));
        c_ann(e, "description", "Request %.*s%s%s to %s/%s at %s cost $%s (threshold $%s)",
              span_len(id), span_ptr(id), x->user ? " by " : "", x->user ? x->user : "",
              x->provider, x->model, fmt_time(x->t, t, sizeof t), a, b);
        c_ann(e, "value", "%s", a);
        c_ann(e, "threshold", "%s", b);
        c_end(e);
    }
    *r->g_expensive = (int64_t)ktab_count(r->xcalls);
}

static void model_labels(em_t *e, span_t k)
{
    c_label(e, "provider", key_part(k, 0));
    c_label(e, "model", key_part(k, 1));
}

static void eval_models(rules_t *r, em_t *e, int64_t now)
{
    int32_t now_min = minute_of(now);
    if (r->err_pct <= 0 && r->lat_ms <= 0)
        return;
    dim_t *d = &r->dim[D_MODEL];
    size_t it = 0;
    series_t *s;
    char w[32];
    while ((s = ktab_next(d->t, &it))) {
        span_t k = ktab_key(s), prov = key_part(k, 0), model = key_part(k, 1);
        if (r->err_pct > 0) {
            const wstate_t *ws = win_at(s, r->w_err, now_min - d->wmin[r->w_err] + 1);
            if (ws->calls > 0 && ws->calls >= (uint64_t)r->err_min &&
                (unsigned __int128)ws->errors * 100 > (unsigned __int128)ws->calls * (uint64_t)r->err_pct) {
                double ratio = (double)ws->errors / (double)ws->calls;
                fmt_dur((int64_t)d->wmin[r->w_err] * 60000, w, sizeof w);
                c_begin(e, "LLMErrorRatioHigh", "warning", r->err_for, ratio);
                model_labels(e, k);
                c_ann(e, "summary",
                      "Error ratio of %.*s/%.*s is %.2f%% over the last %s, over %" PRId64 "%%",
                      span_len(prov), span_ptr(prov), span_len(model), span_ptr(model),
                      ratio * 100, w, r->err_pct);
                c_ann(e, "description",
                      "%" PRIu64 " of %" PRIu64 " requests to %.*s/%.*s failed in the last %s",
                      ws->errors, ws->calls, span_len(prov), span_ptr(prov), span_len(model),
                      span_ptr(model), w);
                c_ann(e, "value", "%.4g", ratio);
                c_ann(e, "threshold", "%.4g", (double)r->err_pct / 100);
                c_ann(e, "requests", "%" PRIu64, ws->calls);
                c_ann(e, "errors", "%" PRIu64, ws->errors);
                c_end(e);
            }
        }
        if (r->lat_ms > 0) {
            win_at(s, r->w_lat, now_min - LAT_MIN + 1);
            if (win_lat(r, s, r->w_lat, LAT_MIN, now) &&
                s->w[r->w_lat].q[2] > (double)r->lat_ms * 1000) {
                double p95 = s->w[r->w_lat].q[2] / 1e6;
                char thr[32];
                fmt_dur(r->lat_ms, thr, sizeof thr);
                fmt_dur((int64_t)LAT_MIN * 60000, w, sizeof w);
                c_begin(e, "LLMLatencyP95High", "warning", r->lat_for, p95);
                model_labels(e, k);
                c_ann(e, "summary", "p95 latency of %.*s/%.*s is %.3gs over the last %s, over %s",
                      span_len(prov), span_ptr(prov), span_len(model), span_ptr(model), p95, w,
                      thr);
                c_ann(e, "description",
                      "95%% of the calls to %.*s/%.*s in the last %s took up to %.3gs (threshold %s)",
                      span_len(prov), span_ptr(prov), span_len(model), span_ptr(model), w, p95,
                      thr);
                c_ann(e, "value", "%.4g", p95);
                c_ann(e, "threshold", "%.4g", (double)r->lat_ms / 1000);
                c_end(e);
            }
        }
    }
}

static void eval_totals(rules_t *r, em_t *e, int32_t now_min)
{
    char a[40], b[40], t[40];
    if (r->burn > 0 || r->rate > 0) {
        const wstate_t *ws = win_at(r->all, r->w_hour, now_min - HOUR_MIN + 1);
        if (r->burn > 0 && ws->tokens > (uint64_t)r->burn) {
            c_begin(e, "LLMTokenBurnRateHigh", "warning", r->burn_for, (double)ws->tokens);
            c_ann(e, "summary", "%" PRIu64 " tokens used in the last hour, over %" PRId64,
                  ws->tokens, r->burn);
            c_ann(e, "description",
                  "Input and output tokens of every call in the last hour: %" PRIu64
                  " (threshold %" PRId64 " an hour)",
                  ws->tokens, r->burn);
            c_ann(e, "value", "%" PRIu64, ws->tokens);
            c_ann(e, "threshold", "%" PRId64, r->burn);
            c_end(e);
        }
        if (r->rate > 0 && ws->cost > r->rate) {
            c_begin(e, "LLMCostRateHigh", "warning", 0, (double)ws->cost / 1e9);
            c_ann(e, "summary", "LLM cost in the last hour is $%s, over $%s",
                  fmt_usd(ws->cost, a, sizeof a), fmt_usd(r->rate, b, sizeof b));
            c_ann(e, "description", "%" PRIu64 " calls cost $%s in the last hour (threshold $%s)",
                  ws->calls, a, b);
            c_ann(e, "value", "%s", a);
            c_ann(e, "threshold", "%s", b);
            c_end(e);
        }
    }
    if (r->daily > 0 && r->day_cost > r->daily) {
        c_begin(e, "LLMDailyCostHigh", "warning", 0, (double)r->day_cost / 1e9);
        c_ann(e, "summary", "Today's LLM cost is $%s, over $%s", fmt_usd(r->day_cost, a, sizeof a),
              fmt_usd(r->daily, b, sizeof b));
        c_ann(e, "description", "$%s spent since %s (%s), threshold $%s", a,
              fmt_time(r->day_start, t, sizeof t), cal_zone(r->cal), b);
        c_ann(e, "value", "%s", a);
        c_ann(e, "threshold", "%s", b);
        c_end(e);
    }
}

static void eval_liveness(rules_t *r, em_t *e, int64_t now)
{
    char a[32], b[32], t[40];
    if (r->no_events > 0) {
        int64_t since = r->last_call > r->start_ns ? r->last_call : r->start_ns;
        int64_t idle = now - since;
        if (idle > r->no_events * TMTIME_NS_PER_MS) {
            c_begin(e, "LLMNoEvents", "warning", 0, (double)idle / 1e9);
            fmt_dur(idle / TMTIME_NS_PER_MS, a, sizeof a);
            fmt_dur(r->no_events, b, sizeof b);
            c_ann(e, "summary", "No LLM call received for %s, over %s", a, b);
            if (r->last_call)
                c_ann(e, "description", "The last call arrived at %s",
                      fmt_time(r->last_call, t, sizeof t));
            else
                c_ann(e, "description", "No call arrived since the alerter started at %s",
                      fmt_time(r->start_ns, t, sizeof t));
            c_ann(e, "value", "%.0f", (double)idle / 1e9);
            c_ann(e, "threshold", "%.0f", (double)r->no_events / 1e3);
            c_end(e);
        }
    }
    if (r->silent <= 0 && !r->gap_on)
        return;
    size_t it = 0;
    stage_t *g;
    while ((g = ktab_next(r->stages, &it))) {
        span_t k = ktab_key(g), daemon = key_part(k, 0), src = key_part(k, 1);
        int64_t seen = g->last_seen > r->start_ns ? g->last_seen : r->start_ns;
        if (r->silent > 0 && now - seen > r->silent * TMTIME_NS_PER_MS) {
            c_begin(e, "TokmonStageSilent", "warning", 0, (double)(now - g->last_seen) / 1e9);
            c_label(e, "daemon", daemon);
            c_label(e, "src", src);
            fmt_dur((now - seen) / TMTIME_NS_PER_MS, a, sizeof a);
            fmt_dur(r->silent, b, sizeof b);
            c_ann(e, "summary", "%.*s (%.*s) sent no stats for %s, over %s", span_len(daemon),
                  span_ptr(daemon), span_len(src), span_ptr(src), a, b);
            c_ann(e, "description", "Its last stats arrived at %s; is it running?",
                  fmt_time(g->last_seen, t, sizeof t));
            c_ann(e, "value", "%.0f", (double)(now - g->last_seen) / 1e9);
            c_ann(e, "threshold", "%.0f", (double)r->silent / 1e3);
            c_end(e);
        }
        if (r->gap_on && g->last_inc > 0 && now - g->last_inc < GAP_HOLD_NS &&
            now >= g->last_inc) {
            c_begin(e, "TokmonBusGapLost", "warning", 0, (double)g->inc);
            c_label(e, "daemon", daemon);
            c_label(e, "src", src);
            c_ann(e, "summary", "%.*s (%.*s) lost %" PRId64 " bus messages it could not replay",
                  span_len(daemon), span_ptr(daemon), span_len(src), span_ptr(src), g->inc);
            c_ann(e, "description",
                  "A publisher's spool no longer held them (last at %s): bus_messages_lost_total "
                  "%" PRId64 ", bus_gaps_lost_total %" PRId64,
                  fmt_time(g->last_inc, t, sizeof t), g->lost, g->gaps);
            c_ann(e, "value", "%" PRId64, g->inc);
            c_end(e);
        }
    }
}

/* ---- user rules ------------------------------------------------------------- */

/* The value of u over its window in s (moved already) into *v, and whether
 * the comparison holds; false when there is no value (fewer requests than
 * min_requests, no request for a ratio, no latency). Cheap: nothing is
 * formatted here, as it runs for every series at every evaluation. */
static bool urule_value(rules_t *r, const urule_t *u, series_t *s, int64_t now, double *v,
                        bool *holds)
{
    const wstate_t *ws = &s->w[u->w];
    if (ws->calls < u->min_req)
        return false;
    int cmp; /* value against threshold: -1, 0, 1 */
    switch (u->agg) {
    case A_COST:
        *v = (double)ws->cost / 1e9;
        cmp = (ws->cost > u->thr_nusd) - (ws->cost < u->thr_nusd);
        break;
    case A_TOKENS:
        *v = (double)ws->tokens;
        cmp = (*v > u->thr) - (*v < u->thr);
        break;
    case A_REQUESTS:
        *v = (double)ws->calls;
        cmp = (*v > u->thr) - (*v < u->thr);
        break;
    case A_ERRORS:
        *v = (double)ws->errors;
        cmp = (*v > u->thr) - (*v < u->thr);
        break;
    case A_ERROR_RATIO:
        if (!ws->calls)
            return false;
        *v = (double)ws->errors / (double)ws->calls;
        cmp = (*v > u->thr) - (*v < u->thr);
        break;
    default:
        if (!win_lat(r, s, u->w, u->wmin, now))
            return false;
        *v = s->w[u->w].q[u->agg - A_P50] / 1e6;
        cmp = (*v > u->thr) - (*v < u->thr);
        break;
    }
    switch (u->op) {
    case OP_GT: *holds = cmp > 0; break;
    case OP_GE: *holds = cmp >= 0; break;
    case OP_LT: *holds = cmp < 0; break;
    default: *holds = cmp <= 0; break;
    }
    return true;
}

/* The value as {{ $value }} shows it: cost in exact dollars, counts whole. */
static void urule_text(const urule_t *u, const series_t *s, double v, char *txt, size_t cap)
{
    const wstate_t *ws = &s->w[u->w];
    switch (u->agg) {
    case A_COST: fmt_usd(ws->cost, txt, cap); break;
    case A_TOKENS: snprintf(txt, cap, "%" PRIu64, ws->tokens); break;
    case A_REQUESTS: snprintf(txt, cap, "%" PRIu64, ws->calls); break;
    case A_ERRORS: snprintf(txt, cap, "%" PRIu64, ws->errors); break;
    default: snprintf(txt, cap, "%.4g", v); break;
    }
}

/* Expands {{ $value }}, {{ $threshold }} and {{ $labels.NAME }} in tpl. */
static void render(em_t *e, const char *tpl, const char *value, const char *thr)
{
    rules_t *r = e->r;
    size_t room = ARENA - r->alen;
    if (room <= 1 || e->c.nannotations >= MSG_MAX_ANNOTATIONS)
        return;
    char *out = r->arena + r->alen;
    size_t n = 0;
#define PUT(p, l)                                                                                  \
    do {                                                                                           \
        size_t l_ = (l) < room - 1 - n ? (l) : room - 1 - n;                                       \
        memcpy(out + n, (p), l_);                                                                  \
        n += l_;                                                                                   \
    } while (0)
    const char *p = tpl;
    while (*p) {
        const char *open = strstr(p, "{{");
        if (!open) {
            PUT(p, strlen(p));
            break;
        }
        PUT(p, (size_t)(open - p));
        const char *q = open + 2, *close = strstr(q, "}}");
        if (!close) {
            PUT(open, strlen(open));
            break;
        }
        while (q < close && *q == ' ')
            q++;
        const char *qe = close;
        while (qe > q && qe[-1] == ' ')
            qe--;
        span_t name = span_make(q, (size_t)(qe - q));
        bool done = true;
        if (span_eq_cstr(name, "$value")) {
            PUT(value, strlen(value));
        } else if (span_eq_cstr(name, "$threshold")) {
            PUT(thr, strlen(thr));
        } else if (span_starts_with(name, "$labels.")) {
            span_t ln = span_make(name.p + 8, name.len - 8);
            for (size_t i = 0; i < e->c.nlabels; i++)
                if (span_eq(e->c.labels[i].key, ln))
                    PUT(e->c.labels[i].value.p, e->c.labels[i].value.len);
        } else {
            done = false;
        }
        if (!done)
            PUT(open, (size_t)(close + 2 - open));
        p = close + 2;
    }
#undef PUT
    out[n] = '\0';
    r->alen += n + 1;
    e->c.annotations[e->c.nannotations++] =
        (msg_tag_t){ span_cstr("summary"), span_make(out, n) };
}

static void eval_urules(rules_t *r, em_t *e, int64_t now)
{
    int32_t now_min = minute_of(now);
    for (size_t i = 0; i < r->nur; i++) {
        const urule_t *u = &r->ur[i];
        dim_t *d = &r->dim[u->dim];
        size_t it = 0;
        series_t *s;
        while ((s = ktab_next(d->t, &it))) {
            win_at(s, u->w, now_min - u->wmin + 1);
            double v;
            bool holds;
            if (!urule_value(r, u, s, now, &v, &holds) || !holds)
                continue;
            char txt[64];
            urule_text(u, s, v, txt, sizeof txt);
            c_begin(e, u->name, u->severity, u->for_ms, v);
            span_t k = ktab_key(s);
            if (u->dim == D_MODEL)
                model_labels(e, k);
            else if (u->dim != D_ALL)
                c_label(e, dim_name[u->dim], k);
            char w[32];
            fmt_dur((int64_t)u->wmin * 60000, w, sizeof w);
            if (u->summary[0])
                render(e, u->summary, txt, u->thr_text);
            else if (u->dim == D_ALL)
                c_ann(e, "summary", "%s: %s over the last %s is %s (%s %s)", u->name,
                      agg_name[u->agg], w, txt, op_name[u->op], u->thr_text);
            else
                c_ann(e, "summary", "%s: %s of %s %.*s over the last %s is %s (%s %s)", u->name,
                      agg_name[u->agg], dim_name[u->dim], span_len(k), span_ptr(k), w, txt,
                      op_name[u->op], u->thr_text);
            c_ann(e, "description", "%s over the last %s%s%s is %s, %s %s", agg_name[u->agg], w,
                  u->dim == D_ALL ? "" : " by ", u->dim == D_ALL ? "" : dim_name[u->dim], txt,
                  op_name[u->op], u->thr_text);
            c_ann(e, "value", "%s", txt);
            c_ann(e, "threshold", "%s", u->thr_text);
            c_end(e);
        }
    }
}

void rules_eval(rules_t *r, int64_t now_ns, void (*fn)(void *arg, const rules_cond_t *c),
                void *arg)
{
    if (!r->start_ns)
        r->start_ns = now_ns;
    int32_t now_min = minute_of(now_ns);
    if (now_min != r->trim_min) {
        trim(r, now_ns);
        r->trim_min = now_min;
    }
    int64_t ds = cal_start(r->cal, CAL_DAY, now_ns);
    if (ds != r->day_start) {
        r->day_start = ds;
        r->day_min = minute_of(ds);
        r->day_cost = 0;
        for (uint32_t i = lower_bound(r->all, r->day_min); i < r->all->n; i++)
            r->day_cost = iadd(r->day_cost, r->all->b[i].cost);
    }
    em_t e = { .r = r, .fn = fn, .arg = arg };
    if (r->budget_on)
        eval_budgets(r, &e, now_ns);
    if (r->quota_on)
        eval_quotas(r, &e, now_ns);
    if (r->x_nusd > 0)
        eval_expensive(r, &e, now_ns);
    eval_models(r, &e, now_ns);
    eval_totals(r, &e, now_min);
    eval_liveness(r, &e, now_ns);
    eval_urules(r, &e, now_ns);
    *r->g_conds = e.n;
    int64_t ns = 0;
    for (int i = 0; i < D_N; i++)
        ns += (int64_t)ktab_count(r->dim[i].t);
    *r->g_series = ns;
    *r->g_buckets = r->nbuckets;
}

/* ---- the digest ----------------------------------------------------------------- */

static void range_sum(const series_t *s, int64_t from, int64_t to, rules_totals_t *t)
{
    for (uint32_t i = lower_bound(s, minute_of(from) + (from % NS_MIN != 0)); i < s->n; i++) {
        const bucket_t *b = &s->b[i];
        if ((int64_t)b->min * NS_MIN >= to)
            break;
        t->cost_nusd = iadd(t->cost_nusd, b->cost);
        t->tokens += b->tokens;
        t->requests += b->calls;
        t->errors += b->errors;
    }
}

void rules_totals(const rules_t *r, int64_t from_ns, int64_t to_ns, rules_totals_t *t)
{
    memset(t, 0, sizeof *t);
    range_sum(r->all, from_ns, to_ns, t);
}

typedef struct {
    span_t key;
    int64_t cost;
    uint64_t tokens;
} top_t;

static int top_cmp(const void *a, const void *b)
{
    const top_t *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->tokens != y->tokens)
        return x->tokens > y->tokens ? -1 : 1;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = n ? memcmp(x->key.p, y->key.p, n) : 0;
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

void rules_top(const rules_t *r, int64_t from_ns, int64_t to_ns, size_t n,
               void (*fn)(void *arg, const char *kind, span_t id, int64_t cost_nusd,
                          uint64_t tokens),
               void *arg)
{
    static const int dims[2] = { D_USER, D_MODEL };
    for (int k = 0; k < 2; k++) {
        const ktab_t *t = r->dim[dims[k]].t;
        top_t *v = xcalloc(ktab_count(t) + 1, sizeof *v);
        size_t m = 0, it = 0;
        const series_t *s;
        while ((s = ktab_next(t, &it))) {
            rules_totals_t sum = { 0 };
            range_sum(s, from_ns, to_ns, &sum);
            if (sum.requests || sum.tokens || sum.cost_nusd)
                v[m++] = (top_t){ ktab_key(s), sum.cost_nusd, sum.tokens };
        }
        qsort(v, m, sizeof *v, top_cmp);
        for (size_t i = 0; i < m && i < n; i++) {
            if (dims[k] == D_MODEL) {
                char id[2 * MSG_MAX_STR + 2];
                span_t p = key_part(v[i].key, 0), md = key_part(v[i].key, 1);
                int len = snprintf(id, sizeof id, "%.*s/%.*s", span_len(p), span_ptr(p),
                                   span_len(md), span_ptr(md));
                size_t l = len < 0 ? 0 : (size_t)len < sizeof id ? (size_t)len : sizeof id - 1;
                fn(arg, "model", span_make(id, l), v[i].cost, v[i].tokens);
            } else {
                fn(arg, "user", v[i].key, v[i].cost, v[i].tokens);
            }
        }
        free(v);
    }
}

/* ---- durable state ---------------------------------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    span_t x = ktab_key(*(void *const *)a), y = ktab_key(*(void *const *)b);
    size_t n = x.len < y.len ? x.len : y.len;
    int c = n ? memcmp(x.p, y.p, n) : 0;
    return c ? c : (x.len > y.len) - (x.len < y.len);
}

/* The values of t in key order (so that equal states pack to equal bytes). */
static void **sorted(const ktab_t *t, size_t *n)
{
    void **v = xcalloc(ktab_count(t) + 1, sizeof *v);
    size_t it = 0, m = 0;
    void *p;
    while ((p = ktab_next(t, &it)))
        v[m++] = p;
    qsort(v, m, sizeof *v, key_cmp);
    *n = m;
    return v;
}

static void pack_bin(msgpack_packer *pk, span_t s)
{
    msgpack_pack_bin(pk, s.len);
    msgpack_pack_bin_body(pk, s.p ? s.p : "", s.len);
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_key(msgpack_packer *pk, const char *k) { pack_cstr(pk, k); }

void rules_save(const rules_t *r, msgpack_packer *pk)
{
    msgpack_pack_map(pk, 8);
    pack_key(pk, "v");
    msgpack_pack_int64(pk, STATE_VERSION);
    pack_key(pk, "last_call");
    msgpack_pack_int64(pk, r->last_call);

    pack_key(pk, "dims");
    msgpack_pack_map(pk, D_N);
    unsigned char *blob = xmalloc(SKETCH_ENCODED_MAX);
    for (int d = 0; d < D_N; d++) {
        pack_cstr(pk, dim_name[d]);
        size_t n;
        void **v = sorted(r->dim[d].t, &n);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
            const series_t *s = v[i];
            msgpack_pack_array(pk, 2);
            pack_bin(pk, ktab_key(s));
            msgpack_pack_array(pk, s->n);
            for (uint32_t j = 0; j < s->n; j++) {
                const bucket_t *b = &s->b[j];
                msgpack_pack_array(pk, 6);
                msgpack_pack_int64(pk, b->min);
                msgpack_pack_uint64(pk, b->calls);
                msgpack_pack_uint64(pk, b->errors);
                msgpack_pack_uint64(pk, b->tokens);
                msgpack_pack_int64(pk, b->cost);
                if (b->lat) {
                    size_t len = sketch_encode(b->lat, blob, SKETCH_ENCODED_MAX);
                    pack_bin(pk, span_make((const char *)blob, len));
                } else {
                    msgpack_pack_nil(pk);
                }
            }
        }
        free(v);
    }
    free(blob);

    size_t n;
    void **v = sorted(r->xcalls, &n);
    pack_key(pk, "expensive");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        const xcall_t *x = v[i];
        msgpack_pack_array(pk, 8);
        pack_bin(pk, ktab_key(x));
        if (x->user)
            pack_bin(pk, span_cstr(x->user));
        else
            msgpack_pack_nil(pk);
        pack_bin(pk, span_cstr(x->model));
        pack_bin(pk, span_cstr(x->provider));
        msgpack_pack_int64(pk, x->cost);
        msgpack_pack_int64(pk, x->t);
        msgpack_pack_int64(pk, x->until);
        if (x->reported)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
    }
    free(v);

    v = sorted(r->budgets, &n);
    pack_key(pk, "budgets");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        const binst_t *b = v[i];
        msgpack_pack_array(pk, 5);
        pack_bin(pk, ktab_key(b));
        pack_cstr(pk, b->scope);
        pack_cstr(pk, b->period);
        if (b->has_value)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        msgpack_pack_array(pk, b->n);
        for (uint32_t j = 0; j < b->n; j++) {
            const bpart_t *p = &b->p[j];
            msgpack_pack_array(pk, 11);
            pack_bin(pk, span_cstr(p->src));
            const int64_t f[] = { p->period_start, p->period_end, p->limit,   p->spent, p->f_avg,
                                  p->f_rate,       p->exhaust,    p->warn_pct, p->ts };
            for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
                msgpack_pack_int64(pk, f[k]);
            if (p->partial)
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
        }
    }
    free(v);

    v = sorted(r->quotas, &n);
    pack_key(pk, "quotas");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        const qst_t *q = v[i];
        msgpack_pack_array(pk, 6);
        pack_bin(pk, ktab_key(q));
        msgpack_pack_int64(pk, q->state);
        msgpack_pack_int64(pk, q->used);
        msgpack_pack_int64(pk, q->limit);
        msgpack_pack_int64(pk, q->reset);
        msgpack_pack_int64(pk, q->ts);
    }
    free(v);

    v = sorted(r->stages, &n);
    pack_key(pk, "stages");
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        const stage_t *g = v[i];
        msgpack_pack_array(pk, 8);
        pack_bin(pk, ktab_key(g));
        const int64_t f[] = { g->last_seen, g->started, g->lost, g->gaps, g->last_inc, g->inc };
        for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
            msgpack_pack_int64(pk, f[k]);
        if (g->counters)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
    }
    free(v);
    /* when the watch began: LLMNoEvents and TokmonStageSilent count from it
     * when nothing was heard, and a restart does not begin it again (an
     * alert firing before would resolve, then fire again) */
    pack_key(pk, "start");
    msgpack_pack_int64(pk, r->start_ns);
}

/* -- loading: every getter checks the type (and range) first -- */

static const msgpack_object *map_get(const msgpack_object *o, const char *k)
{
    size_t n = strlen(k);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *key = &o->via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
            !memcmp(key->via.str.ptr, k, n))
            return &o->via.map.ptr[i].val;
    }
    return NULL;
}

static bool get_i64(const msgpack_object *o, int64_t *v)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

static bool get_nn(const msgpack_object *o, int64_t *v) { return get_i64(o, v) && *v >= 0; }

static bool get_u64(const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *v = o->via.u64;
    return true;
}

static bool get_bin(const msgpack_object *o, span_t *s, size_t max)
{
    if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size > max)
        return false;
    *s = span_make(o->via.bin.ptr, o->via.bin.size);
    return true;
}

static bool get_str(const msgpack_object *o, char *out, size_t cap)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap)
        return false;
    copy_span(out, cap, span_make(o->via.str.ptr, o->via.str.size));
    return true;
}

static bool get_bool(const msgpack_object *o, bool *b)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return false;
    *b = o->via.boolean;
    return true;
}

/* an array of exactly n elements (n == 0: any length, up to max) */
static const msgpack_object *arr(const msgpack_object *o, uint32_t n, uint32_t max)
{
    if (!o || o->type != MSGPACK_OBJECT_ARRAY)
        return NULL;
    if (n ? o->via.array.size != n : o->via.array.size > max)
        return NULL;
    return o->via.array.size ? o->via.array.ptr : o; /* non-NULL when empty */
}

#define KEY_MAX (4 * MSG_MAX_STR + 4)

static int load_series(rules_t *r, dim_t *d, int di, const msgpack_object *o)
{
    const msgpack_object *e = arr(o, 2, 0), *bs;
    span_t key;
    if (!e || !get_bin(&e[0], &key, KEY_MAX) || !(bs = arr(&e[1], 0, MAX_BUCKETS)))
        return -1;
    if (di == D_ALL && key.len)
        return -1;
    if (di == D_MODEL && key_seps(key) != 1)
        return -1;
    bool created = false;
    series_t *s = di == D_ALL ? r->all
                              : ktab_put(d->t, key.p ? key.p : "", key.len,
                                         ktab_hash(key.p ? key.p : "", key.len), &created);
    if (di != D_ALL && !created)
        return -1; /* the same value twice */
    s->jit = (uint32_t)(ktab_hash(key.p ? key.p : "", key.len) >> 40);
    if (di == D_ALL && s->n)
        return -1;
    for (uint32_t j = 0; j < e[1].via.array.size; j++) {
        const msgpack_object *f = arr(&bs[j], 6, 0);
        int64_t min, cost;
        uint64_t calls, errors, tokens;
        if (!f || !get_i64(&f[0], &min) || min <= 0 || min > INT32_MAX ||
            (s->n && min <= s->b[s->n - 1].min) || !get_u64(&f[1], &calls) ||
            calls > UINT32_MAX || !get_u64(&f[2], &errors) || errors > calls ||
            !get_u64(&f[3], &tokens) ||
            !get_nn(&f[4], &cost))
            return -1;
        sketch_t *lat = NULL;
        if (f[5].type != MSGPACK_OBJECT_NIL) {
            span_t blob;
            if (!get_bin(&f[5], &blob, SKETCH_ENCODED_MAX))
                return -1;
            lat = sketch_decode(blob.p, blob.len, NULL, 0);
            if (!lat || sketch_rel_acc(lat) != sketch_rel_acc(r->tmp)) {
                sketch_destroy(&lat);
                return -1;
            }
            if (!d->lat)
                sketch_destroy(&lat); /* not needed by this configuration */
        }
        bucket_t *b = bucket_at(r, s, (int32_t)min);
        *b = (bucket_t){ .min = (int32_t)min, .calls = (uint32_t)calls, .errors = (uint32_t)errors,
                         .tokens = tokens, .cost = cost, .lat = lat };
        for (size_t w = 0; w < d->nw; w++)
            wadd(&s->w[w], b);
    }
    return 0;
}

static char *dup_bin(span_t s) { return xstrndup(s.p ? s.p : "", s.len); }

static bool no_nul(span_t s) { return !s.len || !memchr(s.p, '\0', s.len); }

static int load_expensive(rules_t *r, const msgpack_object *o)
{
    const msgpack_object *f = arr(o, 8, 0);
    span_t id, user = SPAN_NULL, model, prov;
    int64_t cost, t, until;
    bool rep;
    if (!f || !get_bin(&f[0], &id, MSG_MAX_STR + 24) || !id.len ||
        (f[1].type != MSGPACK_OBJECT_NIL && !get_bin(&f[1], &user, MSG_MAX_STR)) ||
        !get_bin(&f[2], &model, MSG_MAX_STR) || !get_bin(&f[3], &prov, MSG_MAX_STR) ||
        !get_nn(&f[4], &cost) || !get_i64(&f[5], &t) || !get_i64(&f[6], &until) ||
        !get_bool(&f[7], &rep) || !no_nul(user) || !no_nul(model) || !no_nul(prov))
        return -1;
    if (ktab_count(r->xcalls) >= MAX_EXPENSIVE)
        return -1;
    bool created;
    xcall_t *x = ktab_put(r->xcalls, id.p, id.len, ktab_hash(id.p, id.len), &created);
    if (!created)
        return -1;
    x->user = f[1].type == MSGPACK_OBJECT_NIL ? NULL : dup_bin(user);
    x->model = dup_bin(model);
    x->provider = dup_bin(prov);
    x->cost = cost;
    x->t = t;
    x->until = until;
    x->reported = rep;
    return 0;
}

static int load_budget(rules_t *r, const msgpack_object *o)
{
    const msgpack_object *f = arr(o, 5, 0), *ps;
    span_t key;
    char scope[16], period[8];
    bool hv;
    if (!f || !get_bin(&f[0], &key, KEY_MAX) || key_seps(key) != 1 ||
        !get_str(&f[1], scope, sizeof scope) || !get_str(&f[2], period, sizeof period) ||
        !get_bool(&f[3], &hv) || !(ps = arr(&f[4], 0, MAX_PARTS)))
        return -1;
    if (ktab_count(r->budgets) >= MAX_BUDGETS)
        return -1;
    bool created;
    binst_t *b = ktab_put(r->budgets, key.p, key.len, ktab_hash(key.p, key.len), &created);
    if (!created)
        return -1;
    memcpy(b->scope, scope, sizeof scope);
    memcpy(b->period, period, sizeof period);
    b->has_value = hv;
    uint32_t n = f[4].via.array.size;
    b->p = xcalloc(n ? n : 1, sizeof *b->p);
    b->cap = n ? n : 1;
    for (uint32_t j = 0; j < n; j++) {
        const msgpack_object *g = arr(&ps[j], 11, 0);
        bpart_t *p = &b->p[j];
        span_t src;
        if (!g || !get_bin(&g[0], &src, sizeof p->src - 1) || !no_nul(src))
            return -1;
        copy_span(p->src, sizeof p->src, src);
        for (uint32_t k = 0; k < j; k++)
            if (!strcmp(b->p[k].src, p->src))
                return -1;
        int64_t *dst[] = { &p->period_start, &p->period_end, &p->limit,   &p->spent, &p->f_avg,
                           &p->f_rate,       &p->exhaust,    &p->warn_pct, &p->ts };
        for (size_t k = 0; k < sizeof dst / sizeof dst[0]; k++)
            if (!get_i64(&g[1 + k], dst[k]))
                return -1;
        if (!get_bool(&g[10], &p->partial))
            return -1;
        b->n++;
    }
    return 0;
}

static int load_quota(rules_t *r, const msgpack_object *o)
{
    const msgpack_object *f = arr(o, 6, 0);
    span_t key;
    qst_t q;
    int64_t state;
    if (!f || !get_bin(&f[0], &key, KEY_MAX) || key_seps(key) != 3 || !get_i64(&f[1], &state) ||
        (state != Q_WARNING && state != Q_EXCEEDED) || !get_i64(&f[2], &q.used) ||
        !get_i64(&f[3], &q.limit) || !get_i64(&f[4], &q.reset) || !get_i64(&f[5], &q.ts))
        return -1;
    if (ktab_count(r->quotas) >= MAX_QUOTAS)
        return -1;
    q.state = (int)state;
    bool created;
    qst_t *s = ktab_put(r->quotas, key.p, key.len, ktab_hash(key.p, key.len), &created);
    if (!created)
        return -1;
    *s = q;
    return 0;
}

static int load_stage(rules_t *r, const msgpack_object *o)
{
    const msgpack_object *f = arr(o, 8, 0);
    span_t key;
    stage_t g;
    if (!f || !get_bin(&f[0], &key, KEY_MAX) || key_seps(key) != 1)
        return -1;
    int64_t *dst[] = { &g.last_seen, &g.started, &g.lost, &g.gaps, &g.last_inc, &g.inc };
    for (size_t k = 0; k < sizeof dst / sizeof dst[0]; k++)
        if (!get_i64(&f[1 + k], dst[k]))
            return -1;
    if (!get_bool(&f[7], &g.counters) || ktab_count(r->stages) >= MAX_STAGES)
        return -1;
    bool created;
    stage_t *s = ktab_put(r->stages, key.p, key.len, ktab_hash(key.p, key.len), &created);
    if (!created)
        return -1;
    *s = g;
    return 0;
}

static int load(rules_t *r, const msgpack_object *o)
{
    if (!o || o->type != MSGPACK_OBJECT_MAP)
        return -1;
    const msgpack_object *v = map_get(o, "v"), *lc = map_get(o, "last_call"),
                         *dims = map_get(o, "dims");
    int64_t ver;
    if (!v || !get_i64(v, &ver) || ver != STATE_VERSION || !lc || !get_i64(lc, &r->last_call) ||
        !dims || dims->type != MSGPACK_OBJECT_MAP || dims->via.map.size != D_N)
        return -1;
    const msgpack_object *st = map_get(o, "start"); /* absent in the first states */
    if (st && !get_nn(st, &r->start_ns))
        return -1;
    for (int d = 0; d < D_N; d++) {
        const msgpack_object *a = map_get(dims, dim_name[d]), *e;
        if (!(e = arr(a, 0, MAX_VALUES)))
            return -1;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (load_series(r, &r->dim[d], d, &e[i]) < 0)
                return -1;
    }
    const struct {
        const char *key;
        int (*fn)(rules_t *, const msgpack_object *);
        uint32_t max;
    } tabs[] = { { "expensive", load_expensive, MAX_EXPENSIVE },
                 { "budgets", load_budget, MAX_BUDGETS },
                 { "quotas", load_quota, MAX_QUOTAS },
                 { "stages", load_stage, MAX_STAGES } };
    for (size_t t = 0; t < sizeof tabs / sizeof tabs[0]; t++) {
        const msgpack_object *a = map_get(o, tabs[t].key), *e;
        if (!(e = arr(a, 0, tabs[t].max)))
            return -1;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (tabs[t].fn(r, &e[i]) < 0)
                return -1;
    }
    return 0;
}

int rules_load(rules_t *r, const msgpack_object *o)
{
    clear(r);
    if (load(r, o) < 0) {
        clear(r);
        (*r->c_load_refused)++;
        return -1;
    }
    return 0;
}

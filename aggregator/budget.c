#include "budget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktab.h"
#include "win.h"
#include "xalloc.h"

#define HOUR_NS (3600 * 1000000000LL)
#define MAX_INSTANCES 4000000 /* per budget: beyond, new scope values are counted, not tracked */

typedef enum { SC_GLOBAL, SC_PROVIDER, SC_MODEL, SC_PROJECT, SC_ACCOUNT, SC_OPERATION, SC_USER } scope_t;
static const char *const scope_names[] = { "global",  "provider",  "model", "project",
                                           "account", "operation", "user" };
static const char *const period_names[] = { "day", "week", "month" };

typedef struct {
    char *name;
    char *spec; /* the scope as configured, "account:acme" */
    scope_t scope;
    char *value; /* one scope value, or NULL: every value apart */
    cal_period_t period;
    int64_t limit, warn_pct, cap;
    bool rollover;
    bool partial; /* the scope spans shards: this shard holds a part */
    ktab_t *inst; /* scope value ("" for global) -> binst_t */
} bdef_t;

typedef struct {
    int64_t start, end; /* the current period */
    int64_t spent, carry;
    int64_t warn_ts, exc_ts; /* when the thresholds were crossed; 0: not */
    uint8_t fired;           /* published: 1 warning, 2 exceeded */
    bool dirty;
    win_t hour; /* the last hour's spending, per minute */
} binst_t;

struct budget {
    budget_opts_t o;
    bdef_t *defs;
    size_t ndefs;
    budget_counters_t c;
};

static void inst_free(void *val)
{
    win_free(&((binst_t *)val)->hour);
}

budget_t *budget_new(const budget_opts_t *o)
{
    budget_t *b = xcalloc(1, sizeof *b);
    b->o = *o;
    return b;
}

static void def_free(bdef_t *d)
{
    free(d->name);
    free(d->spec);
    free(d->value);
    ktab_destroy(&d->inst);
}

void budget_destroy(budget_t **pb)
{
    budget_t *b = *pb;
    if (!b)
        return;
    for (size_t i = 0; i < b->ndefs; i++)
        def_free(&b->defs[i]);
    free(b->defs);
    free(b);
    *pb = NULL;
}

static bool def_same(const bdef_t *a, const cfg_budget_t *c)
{
    return !strcmp(a->name, c->name) && !strcmp(a->spec, c->scope) &&
           a->period == (cal_period_t)c->period;
}

void budget_configure(budget_t *b, const cfg_t *cfg)
{
    bdef_t *defs = xcalloc(cfg->nbudgets ? cfg->nbudgets : 1, sizeof *defs);
    for (size_t i = 0; i < cfg->nbudgets; i++) {
        const cfg_budget_t *c = &cfg->budgets[i];
        bdef_t *d = &defs[i];
        d->name = xstrdup(c->name);
        d->spec = xstrdup(c->scope);
        const char *colon = strchr(c->scope, ':');
        size_t kl = colon ? (size_t)(colon - c->scope) : strlen(c->scope);
        for (int s = 0; s <= SC_USER; s++)
            if (strlen(scope_names[s]) == kl && !strncmp(scope_names[s], c->scope, kl))
                d->scope = (scope_t)s;
        d->value = colon ? xstrdup(colon + 1) : NULL;
        d->period = (cal_period_t)c->period;
        d->limit = c->limit_nusd;
        d->warn_pct = c->warn_pct;
        d->rollover = c->rollover;
        d->cap = c->rollover_cap_nusd;
        d->partial = b->o.shards > 1 && d->scope != SC_USER;
        for (size_t j = 0; j < b->ndefs && !d->inst; j++) {
            if (b->defs[j].inst && def_same(&b->defs[j], c)) {
                d->inst = b->defs[j].inst; /* keeps its spending across a reload */
                b->defs[j].inst = NULL;
            }
        }
        if (!d->inst)
            d->inst = ktab_new(sizeof(binst_t), inst_free);
    }
    for (size_t i = 0; i < b->ndefs; i++)
        def_free(&b->defs[i]);
    free(b->defs);
    b->defs = defs;
    b->ndefs = cfg->nbudgets;
}

static span_t scope_value_of(scope_t s, const msg_usage_t *u)
{
    switch (s) {
    case SC_GLOBAL:
        return span_make("", 0);
    case SC_PROVIDER:
        return u->provider;
    case SC_MODEL:
        return u->model;
    case SC_PROJECT:
        return u->project;
    case SC_ACCOUNT:
        return u->account;
    case SC_OPERATION:
        return u->operation;
    case SC_USER:
        return u->user;
    }
    return SPAN_NULL;
}

static int64_t limit_of(const bdef_t *d, const binst_t *in)
{
    return d->limit + in->carry;
}

/* Moves an instance into the period holding t, carrying unspent budget
 * forward period by period when rollover is on. */
static void roll(const budget_t *b, const bdef_t *d, binst_t *in, int64_t t)
{
    while (t >= in->end) {
        int64_t carry = 0;
        if (d->rollover) {
            int64_t unspent = limit_of(d, in) - in->spent;
            carry = unspent <= 0 ? 0 : unspent < d->cap ? unspent : d->cap;
        }
        bool idle = in->spent == 0 && carry == in->carry;
        in->carry = carry;
        in->spent = 0;
        in->fired = 0;
        in->warn_ts = in->exc_ts = 0;
        in->dirty = true;
        if (idle || !d->rollover) {
            /* nothing changes from one empty period to the next: jump */
            in->start = cal_start(b->o.cal, d->period, t);
            in->end = cal_next(b->o.cal, d->period, t);
            break;
        }
        in->start = in->end;
        in->end = cal_next(b->o.cal, d->period, in->start);
    }
}

static binst_t *instance(budget_t *b, bdef_t *d, span_t key, int64_t t, bool create)
{
    uint64_t h = ktab_hash(key.p, key.len);
    binst_t *in = ktab_get(d->inst, key.p, key.len, h);
    if (in || !create)
        return in;
    if (ktab_count(d->inst) >= MAX_INSTANCES) {
        b->c.dropped++;
        return NULL;
    }
    in = ktab_put(d->inst, key.p, key.len, h, NULL);
    in->start = cal_start(b->o.cal, d->period, t);
    in->end = cal_next(b->o.cal, d->period, t);
    b->c.instances++;
    return in;
}

static const char *state_of(const bdef_t *d, const binst_t *in)
{
    int64_t lim = limit_of(d, in);
    if (in->spent >= lim)
        return "exceeded";
    if ((__int128)in->spent * 100 >= (__int128)lim * d->warn_pct)
        return "warning";
    return "ok";
}

static int64_t clamp64(__int128 v)
{
    return v > INT64_MAX ? INT64_MAX : v < 0 ? 0 : (int64_t)v;
}

static void status(const budget_t *b, const bdef_t *d, const binst_t *in, span_t key, int64_t now,
                   msg_budget_t *m)
{
    int64_t lim = limit_of(d, in);
    if (now < in->start)
        now = in->start;
    win_sum_t hr;
    win_sum(&in->hour, win_start(now, HOUR_NS), INT64_MAX, &hr);
    *m = (msg_budget_t){
        .name = span_cstr(d->name),
        .scope = span_cstr(scope_names[d->scope]),
        .scope_value = d->scope == SC_GLOBAL ? SPAN_NULL : key,
        .period = span_cstr(period_names[d->period]),
        .period_start = in->start,
        .period_end = in->end,
        .limit_nusd = lim,
        .rollover_nusd = in->carry,
        .spent_nusd = in->spent,
        .remaining_nusd = lim - in->spent,
        .warn_pct = d->warn_pct,
        .state = span_cstr(state_of(d, in)),
        .ts = now,
        .partial = d->partial,
        .shard = b->o.shard,
        .shards = b->o.shards,
    };
    int64_t len = in->end - in->start, elapsed = now - in->start, left = in->end - now;
    if (left < 0)
        left = 0;
    /* at least a minute elapsed, so the first call of a period does not
     * project a month from a nanosecond */
    if (elapsed < WIN_MINUTE_NS)
        elapsed = WIN_MINUTE_NS;
    m->forecast_avg_nusd = elapsed >= len ? in->spent
                                          : clamp64((__int128)in->spent * len / elapsed);
    m->forecast_rate_nusd = clamp64(in->spent + (__int128)hr.nusd * left / HOUR_NS);
    if (in->spent >= lim)
        m->exhaust_ts = in->exc_ts ? in->exc_ts : now;
    else if (hr.nusd > 0)
        m->exhaust_ts = clamp64(now + (__int128)(lim - in->spent) * HOUR_NS / hr.nusd);
}

static void announce(budget_t *b, const bdef_t *d, const binst_t *in, span_t key, int64_t t,
                     const char *crossing, int64_t when)
{
    b->c.crossings++;
    if (!b->o.emit)
        return;
    msg_budget_t m;
    status(b, d, in, key, t, &m);
    m.crossing = span_cstr(crossing);
    m.crossed_ts = when;
    b->o.emit(b->o.arg, &m);
}

void budget_add(budget_t *b, const msg_usage_t *u, int64_t t)
{
    for (size_t i = 0; i < b->ndefs; i++) {
        bdef_t *d = &b->defs[i];
        span_t key = scope_value_of(d->scope, u);
        if (!key.p || (d->value && !span_eq_cstr(key, d->value)))
            continue;
        binst_t *in = instance(b, d, key, t, true);
        if (!in)
            continue;
        if (t >= in->end)
            roll(b, d, in, t);
        if (t < in->start) {
            b->c.stale++;
            continue;
        }
        in->spent = win_sat_add(in->spent, u->cost_nusd);
        win_trim(&in->hour, t - HOUR_NS);
        win_add(&in->hour, t, 1, 0, u->cost_nusd);
        in->dirty = true;
        int64_t lim = limit_of(d, in);
        if (!in->warn_ts && (__int128)in->spent * 100 >= (__int128)lim * d->warn_pct)
            in->warn_ts = t;
        if (!in->exc_ts && in->spent >= lim)
            in->exc_ts = t;
        if (d->partial)
            continue; /* the parts' sum decides, where they are read */
        if (in->warn_ts && !(in->fired & 1)) {
            in->fired |= 1;
            announce(b, d, in, key, t, "warning", in->warn_ts);
        }
        if (in->exc_ts && !(in->fired & 2)) {
            in->fired |= 2;
            announce(b, d, in, key, t, "exceeded", in->exc_ts);
        }
    }
}

typedef struct {
    budget_t *b;
    const bdef_t *d;
    int64_t now;
    bool all;
    bool many; /* an instance per scope value: those go out on change */
} pub_t;

/* Rolls, publishes, and forgets an instance whose new period holds nothing
 * (its status, spent 0, went out first). */
static bool publish_one(void *val, void *arg)
{
    pub_t *p = arg;
    binst_t *in = val;
    bool rolled = p->now >= in->end;
    if (rolled)
        roll(p->b, p->d, in, p->now);
    win_trim(&in->hour, p->now - HOUR_NS);
    if (in->dirty || p->all || !p->many) {
        in->dirty = false;
        if (p->b->o.emit) {
            msg_budget_t m;
            status(p->b, p->d, in, ktab_key(in), p->now, &m);
            p->b->o.emit(p->b->o.arg, &m);
        }
    }
    bool forget = rolled && in->spent == 0 && in->carry == 0 && in->hour.n == 0;
    if (forget)
        p->b->c.instances--;
    return forget;
}

void budget_publish(budget_t *b, int64_t now, bool all)
{
    for (size_t i = 0; i < b->ndefs; i++) {
        const bdef_t *d = &b->defs[i];
        pub_t p = { b, d, now, all, d->scope != SC_GLOBAL && !d->value };
        ktab_sweep(b->defs[i].inst, publish_one, &p);
    }
}

void budget_each(budget_t *b, int64_t now, const char *name,
                 void (*fn)(void *arg, const msg_budget_t *st), void *arg)
{
    for (size_t i = 0; i < b->ndefs; i++) {
        bdef_t *d = &b->defs[i];
        if (name && strcmp(name, d->name))
            continue;
        size_t it = 0;
        binst_t *in;
        while ((in = ktab_next(d->inst, &it))) {
            if (now >= in->end)
                roll(b, d, in, now);
            msg_budget_t m;
            status(b, d, in, ktab_key(in), now, &m);
            fn(arg, &m);
        }
    }
}

static bdef_t *def_named(budget_t *b, span_t name)
{
    for (size_t i = 0; i < b->ndefs; i++)
        if (span_eq_cstr(name, b->defs[i].name))
            return &b->defs[i];
    return NULL;
}

void budget_set_crossed(budget_t *b, span_t name, span_t scope_value, int64_t period_start,
                        span_t crossing, int64_t crossed_ts)
{
    bdef_t *d = def_named(b, name);
    if (!d)
        return;
    span_t key = d->scope == SC_GLOBAL ? span_make("", 0) : scope_value;
    binst_t *in = instance(b, d, key, period_start, true);
    if (!in || in->start != period_start)
        return; /* another period by now: nothing to keep from announcing */
    if (span_eq_cstr(crossing, "warning")) {
        in->fired |= 1;
        if (!in->warn_ts)
            in->warn_ts = crossed_ts;
    } else if (span_eq_cstr(crossing, "exceeded")) {
        in->fired |= 2;
        if (!in->exc_ts)
            in->exc_ts = crossed_ts;
    }
}

/* ---- durable state -------------------------------------------------------- */

/* ["b", name, scope spec, period, key, start, end, spent, carry, warn_ts,
 *  exc_ts, fired, [minute buckets as win_save writes them]] */
void budget_save(const budget_t *b, snapw_t *w)
{
    msgpack_packer *pk = snapw_packer(w);
    for (size_t i = 0; i < b->ndefs; i++) {
        const bdef_t *d = &b->defs[i];
        size_t it = 0;
        const binst_t *in;
        while ((in = ktab_next(d->inst, &it))) {
            span_t key = ktab_key(in);
            msgpack_pack_array(pk, 13);
            snap_pack_str(pk, "b", 1);
            snap_pack_str(pk, d->name, strlen(d->name));
            snap_pack_str(pk, d->spec, strlen(d->spec));
            msgpack_pack_int(pk, d->period);
            snap_pack_str(pk, key.p, key.len);
            msgpack_pack_int64(pk, in->start);
            msgpack_pack_int64(pk, in->end);
            msgpack_pack_int64(pk, in->spent);
            msgpack_pack_int64(pk, in->carry);
            msgpack_pack_int64(pk, in->warn_ts);
            msgpack_pack_int64(pk, in->exc_ts);
            msgpack_pack_uint8(pk, in->fired);
            win_save(&in->hour, pk);
            snapw_record(w);
        }
    }
}

int budget_load_record(budget_t *b, snap_rec_t *r, char *err, size_t errcap)
{
    span_t name = snap_rec_str(r), spec = snap_rec_str(r);
    int64_t period = snap_rec_i64(r);
    span_t key = snap_rec_str(r);
    int64_t start = snap_rec_i64(r), end = snap_rec_i64(r), spent = snap_rec_i64(r);
    int64_t carry = snap_rec_i64(r), warn_ts = snap_rec_i64(r), exc_ts = snap_rec_i64(r);
    uint64_t fired = snap_rec_u64(r);
    const msgpack_object *hb = snap_rec_obj(r);
    if (!snap_rec_ok(r) || period < 0 || period > 2 || start >= end || fired > 3 || !hb ||
        key.len > MSG_MAX_STR ||
        spent < 0 || carry < 0) {
        snprintf(err, errcap, "budget record malformed");
        return -1;
    }
    bdef_t *d = def_named(b, name);
    if (!d || !span_eq_cstr(spec, d->spec) || d->period != (cal_period_t)period)
        return 0; /* the budget was removed or redefined while we were down */
    binst_t *in = instance(b, d, key, start, true);
    if (!in)
        return 0;
    in->start = start;
    in->end = end;
    in->spent = spent;
    in->carry = carry;
    in->warn_ts = warn_ts;
    in->exc_ts = exc_ts;
    in->fired = (uint8_t)fired;
    if (win_load(&in->hour, hb) < 0) {
        snprintf(err, errcap, "budget record: bad minute buckets");
        return -1;
    }
    return 0;
}

size_t budget_memory(const budget_t *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->ndefs; i++) {
        n += ktab_memory(b->defs[i].inst);
        size_t it = 0;
        const binst_t *in;
        while ((in = ktab_next(b->defs[i].inst, &it)))
            n += win_memory(&in->hour);
    }
    return n;
}

const budget_counters_t *budget_counters(const budget_t *b)
{
    return &b->c;
}

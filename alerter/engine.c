/* engine: see engine.h. */
#include "engine.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ktab.h"
#include "log.h"
#include "mbuf.h"
#include "snap.h"
#include "tmtime.h"
#include "xalloc.h"

#define MAX_LABELS (RULES_MAX_LABELS + 2)
#define FIRED_RING 256
#define MAX_MATCHERS 16
#define STATE_VERSION 1

typedef enum { A_PENDING, A_FIRING, A_RESOLVED } astate_t;
static const char *const state_name[] = { "pending", "firing", "resolved" };

typedef struct {
    char *k, *v;
} kv_t;

typedef struct {
    char fp[17];
    kv_t lab[MAX_LABELS]; /* sorted by name; alertname and severity among them */
    size_t nl;
    kv_t ann[MSG_MAX_ANNOTATIONS];
    size_t na;
    double value;
    astate_t state;
    int64_t for_ms, active_since, fired_at, resolved_at;
    bool seen;
    bool held;     /* firing, and left out of its last notification (silenced or inhibited) */
    unsigned refs; /* groups that still have to notify it */
} alert_t;

typedef struct {
    char *receiver;
    kv_t lab[MAX_LABELS]; /* the group_by labels */
    size_t nl;
    bool am; /* an Alertmanager receiver */
    int64_t created, last_notify;
    bool dirty;
    char (*fps)[17];
    size_t nfps, cfps;
} group_t;

typedef enum { M_EQ, M_NE, M_RE, M_NRE } mop_t;

typedef struct {
    char *name, *value;
    mop_t op;
    regex_t re;
} matcher_t;

typedef struct {
    char id[17];
    char *text, *comment, *by;
    matcher_t m[MAX_MATCHERS];
    size_t nm;
    int64_t created, until;
} silence_t;

typedef struct {
    char alertname[64];
    char summary[192];
    int64_t at;
} fired_t;

struct engine {
    engine_opts_t o;
    const cfg_alerter_t *c;
    ktab_t *alerts; /* fp -> alert_t */
    ktab_t *groups; /* receiver \xff label values -> group_t */
    silence_t *sil;
    size_t nsil;
    char **receivers;
    bool *recv_am;
    size_t nrecv;
    fired_t fired[FIRED_RING];
    size_t nfired;
    uint64_t seq;
    bool lift;          /* a silence ended or an alert resolved: held alerts may be due */
    int64_t sil_checked; /* silences ending after this were still running at the last tick */
    mbuf_t key;
    int64_t *c_trans[3], *c_notifications, *c_silenced, *c_inhibited, *g_firing, *g_pending;
};

/* ---- small helpers ---------------------------------------------------------------- */

static void kv_free(kv_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].k);
        free(v[i].v);
    }
}

static int kv_cmp(const void *a, const void *b) { return strcmp(((const kv_t *)a)->k, ((const kv_t *)b)->k); }

static const char *label_of(const kv_t *lab, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(lab[i].k, name))
            return lab[i].v;
    return NULL;
}

static void alert_free(void *val)
{
    alert_t *a = val;
    kv_free(a->lab, a->nl);
    kv_free(a->ann, a->na);
}

static void group_free(void *val)
{
    group_t *g = val;
    free(g->receiver);
    kv_free(g->lab, g->nl);
    free(g->fps);
}

static void fingerprint(const kv_t *lab, size_t n, char out[17])
{
    XXH3_state_t *s = XXH3_createState();
    XXH3_64bits_reset(s);
    for (size_t i = 0; i < n; i++) {
        XXH3_64bits_update(s, lab[i].k, strlen(lab[i].k) + 1);
        XXH3_64bits_update(s, lab[i].v, strlen(lab[i].v) + 1);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)XXH3_64bits_digest(s));
    XXH3_freeState(s);
}

/* ---- life -------------------------------------------------------------------------- */

engine_t *engine_new(const engine_opts_t *o, char *err, size_t cap)
{
    const cfg_t *cfg = o->cfg;
    engine_t *e = xcalloc(1, sizeof *e);
    e->o = *o;
    e->c = &cfg->alerter;
    e->alerts = ktab_new(sizeof(alert_t), alert_free);
    e->groups = ktab_new(sizeof(group_t), group_free);
    /* the receivers: [alerter] receivers, or every [notify.NAME] */
    for (size_t i = 0; i < cfg->nnotifies; i++) {
        const cfg_notify_t *n = &cfg->notifies[i];
        bool wanted = e->c->receivers.n == 0;
        for (size_t k = 0; k < e->c->receivers.n; k++)
            wanted |= !strcmp(e->c->receivers.v[k], n->name);
        if (!wanted)
            continue;
        e->receivers = xreallocarray(e->receivers, e->nrecv + 1, sizeof *e->receivers);
        e->recv_am = xreallocarray(e->recv_am, e->nrecv + 1, sizeof *e->recv_am);
        e->receivers[e->nrecv] = xstrdup(n->name);
        e->recv_am[e->nrecv++] = n->type == CFG_NOTIFY_ALERTMANAGER;
    }
    for (size_t k = 0; k < e->c->receivers.n; k++) {
        bool found = false;
        for (size_t i = 0; i < e->nrecv; i++)
            found |= !strcmp(e->receivers[i], e->c->receivers.v[k]);
        if (!found) {
            snprintf(err, cap, "[alerter] receivers: no [notify.%s] section", e->c->receivers.v[k]);
            engine_destroy(&e);
            return NULL;
        }
    }
    for (int i = 0; i < 3; i++) {
        char lab[32];
        snprintf(lab, sizeof lab, "state=%s", state_name[i]);
        e->c_trans[i] = stats_counter(o->stats, "alerter_transitions_total", lab);
    }
    e->c_notifications = stats_counter(o->stats, "alerter_notifications_total", NULL);
    e->c_silenced = stats_counter(o->stats, "alerter_silenced_total", NULL);
    e->c_inhibited = stats_counter(o->stats, "alerter_inhibited_total", NULL);
    e->g_firing = stats_gauge(o->stats, "alerts_firing", NULL);
    e->g_pending = stats_gauge(o->stats, "alerts_pending", NULL);
    return e;
}

static void silence_free(silence_t *s)
{
    for (size_t i = 0; i < s->nm; i++) {
        free(s->m[i].name);
        free(s->m[i].value);
        if (s->m[i].op == M_RE || s->m[i].op == M_NRE)
            regfree(&s->m[i].re);
    }
    free(s->text);
    free(s->comment);
    free(s->by);
}

void engine_destroy(engine_t **pe)
{
    engine_t *e = *pe;
    if (!e)
        return;
    ktab_destroy(&e->alerts);
    ktab_destroy(&e->groups);
    for (size_t i = 0; i < e->nsil; i++)
        silence_free(&e->sil[i]);
    free(e->sil);
    for (size_t i = 0; i < e->nrecv; i++)
        free(e->receivers[i]);
    free(e->receivers);
    free(e->recv_am);
    mbuf_free(&e->key);
    free(e);
    *pe = NULL;
}

/* ---- transitions ---------------------------------------------------------------------- */

static void to_msg(const alert_t *a, msg_alert_t *m, int64_t now)
{
    memset(m, 0, offsetof(msg_alert_t, labels));
    m->alertname = span_cstr(label_of(a->lab, a->nl, "alertname"));
    const char *sev = label_of(a->lab, a->nl, "severity");
    m->severity = span_cstr(sev ? sev : "");
    m->state = span_cstr(state_name[a->state]);
    m->fingerprint = span_cstr(a->fp);
    m->nlabels = a->nl;
    for (size_t i = 0; i < a->nl; i++)
        m->labels[i] = (msg_tag_t){ span_cstr(a->lab[i].k), span_cstr(a->lab[i].v) };
    m->nannotations = a->na;
    for (size_t i = 0; i < a->na; i++)
        m->annotations[i] = (msg_tag_t){ span_cstr(a->ann[i].k), span_cstr(a->ann[i].v) };
    m->value = a->value;
    m->starts_at = a->state == A_PENDING ? a->active_since : a->fired_at;
    m->ends_at = a->state == A_RESOLVED ? a->resolved_at : 0;
    m->ts = now;
}

static void transition(engine_t *e, alert_t *a, astate_t to, int64_t now)
{
    a->state = to;
    (*e->c_trans[to])++;
    if (to == A_FIRING) {
        a->fired_at = now;
        fired_t *f = &e->fired[e->nfired++ % FIRED_RING];
        snprintf(f->alertname, sizeof f->alertname, "%s", label_of(a->lab, a->nl, "alertname"));
        const char *s = label_of(a->ann, a->na, "summary");
        snprintf(f->summary, sizeof f->summary, "%s", s ? s : "");
        f->at = now;
    }
    if (to == A_RESOLVED)
        a->resolved_at = now;
    msg_alert_t m;
    to_msg(a, &m, now);
    if (e->o.publish)
        e->o.publish(e->o.arg, &m);
    log_info("alert", "alertname=%s state=%s fingerprint=%s value=%g", label_of(a->lab, a->nl, "alertname"),
             state_name[to], a->fp, a->value);
}

static void set_annotations(alert_t *a, const rules_cond_t *c)
{
    kv_free(a->ann, a->na);
    a->na = 0;
    for (size_t i = 0; i < c->nannotations && i < MSG_MAX_ANNOTATIONS; i++) {
        a->ann[a->na].k = xstrndup(c->annotations[i].key.p, c->annotations[i].key.len);
        a->ann[a->na].v = xstrndup(c->annotations[i].value.p ? c->annotations[i].value.p : "",
                                   c->annotations[i].value.len);
        a->na++;
    }
}

typedef struct {
    engine_t *e;
    int64_t now;
    size_t changes;
} round_t;

static void on_cond(void *arg, const rules_cond_t *c)
{
    round_t *rd = arg;
    engine_t *e = rd->e;
    kv_t lab[MAX_LABELS];
    size_t n = 0;
    lab[n++] = (kv_t){ (char *)"alertname", (char *)(uintptr_t)c->alertname };
    lab[n++] = (kv_t){ (char *)"severity", (char *)(uintptr_t)c->severity };
    char *own[RULES_MAX_LABELS * 2];
    size_t nown = 0;
    for (size_t i = 0; i < c->nlabels && n < MAX_LABELS; i++) {
        char *k = xstrndup(c->labels[i].key.p, c->labels[i].key.len);
        char *v = xstrndup(c->labels[i].value.p ? c->labels[i].value.p : "", c->labels[i].value.len);
        own[nown++] = k;
        own[nown++] = v;
        lab[n++] = (kv_t){ k, v };
    }
    qsort(lab, n, sizeof *lab, kv_cmp);
    char fp[17];
    fingerprint(lab, n, fp);
    bool created;
    alert_t *a = ktab_put(e->alerts, fp, 16, ktab_hash(fp, 16), &created);
    if (created || a->state == A_RESOLVED) {
        if (!created)
            alert_free(a);
        memset(a, 0, sizeof *a);
        memcpy(a->fp, fp, 17);
        for (size_t i = 0; i < n; i++)
            a->lab[i] = (kv_t){ xstrdup(lab[i].k), xstrdup(lab[i].v) };
        a->nl = n;
        a->for_ms = c->for_ms;
        a->active_since = rd->now;
        a->value = c->value;
        set_annotations(a, c);
        transition(e, a, c->for_ms > 0 ? A_PENDING : A_FIRING, rd->now);
        rd->changes++;
    } else {
        a->value = c->value;
        a->for_ms = c->for_ms;
        set_annotations(a, c);
    }
    a->seen = true;
    if (a->state == A_PENDING && rd->now - a->active_since >= a->for_ms * TMTIME_NS_PER_MS) {
        transition(e, a, A_FIRING, rd->now);
        rd->changes++;
    }
    for (size_t i = 0; i < nown; i++)
        free(own[i]);
}

/* ---- silences and inhibition ------------------------------------------------------------ */

static bool silenced(const engine_t *e, const alert_t *a, int64_t now)
{
    for (size_t i = 0; i < e->nsil; i++) {
        const silence_t *s = &e->sil[i];
        if (s->until <= now)
            continue;
        bool all = true;
        for (size_t k = 0; all && k < s->nm; k++) {
            const matcher_t *m = &s->m[k];
            const char *v = label_of(a->lab, a->nl, m->name);
            v = v ? v : "";
            switch (m->op) {
            case M_EQ:
                all = !strcmp(v, m->value);
                break;
            case M_NE:
                all = strcmp(v, m->value) != 0;
                break;
            case M_RE:
                all = regexec(&m->re, v, 0, NULL, 0) == 0;
                break;
            case M_NRE:
                all = regexec(&m->re, v, 0, NULL, 0) != 0;
                break;
            }
        }
        if (all)
            return true;
    }
    return false;
}

/* The alertname without a Warning, Exceeded or Critical ending. */
static size_t stem(const char *name)
{
    static const char *const ends[] = { "Warning", "Exceeded", "Critical" };
    size_t n = strlen(name);
    for (size_t i = 0; i < 3; i++) {
        size_t k = strlen(ends[i]);
        if (n > k && !strcmp(name + n - k, ends[i]))
            return n - k;
    }
    return n;
}

/* A warning whose critical twin fires: the same labels but alertname and
 * severity, and the same alertname stem. */
static bool inhibited(const engine_t *e, const alert_t *a)
{
    const char *sev = label_of(a->lab, a->nl, "severity");
    if (!sev || strcmp(sev, "warning"))
        return false;
    const char *name = label_of(a->lab, a->nl, "alertname");
    size_t sn = stem(name);
    size_t it = 0;
    const alert_t *b;
    while ((b = ktab_next(e->alerts, &it))) {
        if (b == a || b->state != A_FIRING || b->nl != a->nl)
            continue;
        const char *bs = label_of(b->lab, b->nl, "severity");
        const char *bn = label_of(b->lab, b->nl, "alertname");
        if (!bs || strcmp(bs, "critical") || stem(bn) != sn || strncmp(bn, name, sn))
            continue;
        bool same = true;
        for (size_t i = 0; same && i < a->nl; i++) {
            if (!strcmp(a->lab[i].k, "alertname") || !strcmp(a->lab[i].k, "severity"))
                continue;
            same = !strcmp(a->lab[i].k, b->lab[i].k) && !strcmp(a->lab[i].v, b->lab[i].v);
        }
        if (same)
            return true;
    }
    return false;
}

/* ---- groups -------------------------------------------------------------------------- */

static group_t *group_of(engine_t *e, size_t r, const alert_t *a, int64_t now)
{
    mbuf_reset(&e->key);
    mbuf_append(&e->key, e->receivers[r], strlen(e->receivers[r]));
    kv_t lab[MAX_LABELS];
    size_t n = 0;
    for (size_t i = 0; i < e->c->group_by.n && n < MAX_LABELS; i++) {
        const char *k = e->c->group_by.v[i];
        const char *v = label_of(a->lab, a->nl, k);
        lab[n++] = (kv_t){ (char *)(uintptr_t)k, (char *)(uintptr_t)(v ? v : "") };
        mbuf_append(&e->key, "\xff", 1);
        mbuf_append(&e->key, v ? v : "", v ? strlen(v) : 0);
    }
    bool created;
    group_t *g = ktab_put(e->groups, e->key.data, e->key.len, ktab_hash(e->key.data, e->key.len),
                          &created);
    if (created) {
        g->receiver = xstrdup(e->receivers[r]);
        g->am = e->recv_am[r];
        for (size_t i = 0; i < n; i++)
            g->lab[i] = (kv_t){ xstrdup(lab[i].k), xstrdup(lab[i].v) };
        g->nl = n;
        g->created = now;
    }
    return g;
}

static bool group_has(const group_t *g, const char *fp)
{
    for (size_t i = 0; i < g->nfps; i++)
        if (!memcmp(g->fps[i], fp, 17))
            return true;
    return false;
}

static void group_add(group_t *g, alert_t *a)
{
    if (group_has(g, a->fp))
        return;
    if (g->nfps == g->cfps) {
        g->cfps = g->cfps ? g->cfps * 2 : 8;
        g->fps = xreallocarray(g->fps, g->cfps, sizeof *g->fps);
    }
    memcpy(g->fps[g->nfps++], a->fp, 17);
    a->refs++;
}

/* Puts a firing or resolved alert into its group of every receiver. */
static void route(engine_t *e, alert_t *a, int64_t now)
{
    for (size_t r = 0; r < e->nrecv; r++) {
        group_t *g = group_of(e, r, a, now);
        group_add(g, a);
        g->dirty = true;
    }
}

static int64_t group_due(const engine_t *e, const group_t *g)
{
    int64_t ms = TMTIME_NS_PER_MS;
    if (g->am) /* Alertmanager groups itself: changes at once, firing ones again on an interval */
        return g->dirty ? 0 : g->last_notify + e->c->resend_interval * ms;
    if (!g->last_notify)
        return g->created + e->c->group_wait * ms;
    if (g->dirty)
        return g->last_notify + e->c->group_interval * ms;
    return g->last_notify + e->c->repeat_interval * ms;
}

static alert_t *alert_at(const engine_t *e, const char *fp)
{
    return ktab_get(e->alerts, fp, 16, ktab_hash(fp, 16));
}

/* Sends g if anything in it is to be told; drops resolved alerts from it. */
static void flush_group(engine_t *e, group_t *g, int64_t now)
{
    msg_alert_t *v = xcalloc(g->nfps ? g->nfps : 1, sizeof *v);
    size_t n = 0;
    bool any_firing = false;
    for (size_t i = 0; i < g->nfps; i++) {
        alert_t *a = alert_at(e, g->fps[i]);
        if (!a || a->state == A_PENDING)
            continue;
        if (a->state == A_RESOLVED && a->held)
            continue; /* never told firing, as Alertmanager: nor resolved */
        if (silenced(e, a, now)) {
            (*e->c_silenced)++;
            a->held = a->state == A_FIRING;
            continue;
        }
        if (a->state == A_FIRING && inhibited(e, a)) {
            (*e->c_inhibited)++;
            a->held = true;
            continue;
        }
        a->held = false;
        to_msg(a, &v[n++], now);
        any_firing |= a->state == A_FIRING;
    }
    if (n && e->o.notify) {
        msg_tag_t gl[MAX_LABELS];
        for (size_t i = 0; i < g->nl; i++)
            gl[i] = (msg_tag_t){ span_cstr(g->lab[i].k), span_cstr(g->lab[i].v) };
        mbuf_reset(&e->key);
        mbuf_append(&e->key, "{}:{", 4);
        for (size_t i = 0; i < g->nl; i++) {
            char part[256];
            int k = snprintf(part, sizeof part, "%s%s=\"%s\"", i ? "," : "", g->lab[i].k, g->lab[i].v);
            mbuf_append(&e->key, part, (size_t)(k < (int)sizeof part ? k : (int)sizeof part - 1));
        }
        mbuf_append(&e->key, "}", 2); /* with the NUL */
        notify_group_t ng = { e->key.data, gl, g->nl, v, n, "" };
        if (notify_send(e->o.notify, g->receiver, &ng, now) > 0)
            (*e->c_notifications)++;
    }
    (void)any_firing;
    free(v);
    g->last_notify = now;
    g->dirty = false;
    /* resolved alerts have been told: out of the group */
    size_t k = 0;
    for (size_t i = 0; i < g->nfps; i++) {
        alert_t *a = alert_at(e, g->fps[i]);
        if (a && a->state == A_RESOLVED) {
            if (--a->refs == 0)
                ktab_del(e->alerts, a);
            continue;
        }
        if (!a)
            continue;
        memcpy(g->fps[k++], g->fps[i], 17);
    }
    g->nfps = k;
}

static bool sweep_group(void *val, void *arg)
{
    (void)arg;
    return ((group_t *)val)->nfps == 0;
}

/* A silence that ended, or an alert that resolved (a critical twin), may
 * let alerts held back from their groups' last notification out again: as
 * Alertmanager, which notifies a group whose firing alerts differ from what
 * it last told, their groups are due again (group_interval after the last
 * notification). */
static void release_held(engine_t *e, int64_t now)
{
    size_t it = 0;
    group_t *g;
    while ((g = ktab_next(e->groups, &it))) {
        for (size_t i = 0; i < g->nfps && !g->dirty; i++) {
            alert_t *a = alert_at(e, g->fps[i]);
            if (a && a->held && a->state == A_FIRING && !silenced(e, a, now) && !inhibited(e, a))
                g->dirty = true;
        }
    }
}

void engine_tick(engine_t *e, int64_t now)
{
    for (size_t i = 0; i < e->nsil; i++)
        if (e->sil[i].until > e->sil_checked && e->sil[i].until <= now)
            e->lift = true;
    e->sil_checked = now;
    if (e->lift) {
        e->lift = false;
        release_held(e, now);
    }
    size_t it = 0;
    group_t *g;
    while ((g = ktab_next(e->groups, &it)))
        if (g->nfps && now >= group_due(e, g))
            flush_group(e, g, now);
    ktab_sweep(e->groups, sweep_group, NULL);
}

/* After a round: routes new firing and resolved alerts, drops resolved
 * alerts no group holds. */
typedef struct {
    engine_t *e;
    int64_t now;
    size_t changes;
} end_t;

static bool end_alert(void *val, void *arg)
{
    end_t *x = arg;
    alert_t *a = val;
    if (!a->seen && a->state != A_RESOLVED) {
        bool was_firing = a->state == A_FIRING;
        transition(x->e, a, A_RESOLVED, x->now);
        x->changes++;
        x->e->lift |= was_firing; /* what it inhibited may be told now */
        if (!was_firing)
            return a->refs == 0; /* pending: never notified */
        if (x->e->nrecv)
            route(x->e, a, x->now);
    } else if (a->seen && a->state == A_FIRING && a->refs == 0 && x->e->nrecv) {
        route(x->e, a, x->now);
    }
    a->seen = false;
    return a->state == A_RESOLVED && a->refs == 0;
}

size_t engine_round(engine_t *e, rules_t *r, int64_t now)
{
    round_t rd = { e, now, 0 };
    rules_eval(r, now, on_cond, &rd);
    end_t x = { e, now, rd.changes };
    ktab_sweep(e->alerts, end_alert, &x);
    int64_t firing = 0, pending = 0;
    size_t it = 0;
    const alert_t *a;
    while ((a = ktab_next(e->alerts, &it))) {
        firing += a->state == A_FIRING;
        pending += a->state == A_PENDING;
    }
    *e->g_firing = firing;
    *e->g_pending = pending;
    engine_tick(e, now);
    return x.changes;
}

size_t engine_firing(const engine_t *e)
{
    size_t n = 0, it = 0;
    const alert_t *a;
    while ((a = ktab_next(e->alerts, &it)))
        n += a->state == A_FIRING;
    return n;
}

void engine_fired_between(const engine_t *e, int64_t from, int64_t to,
                          void (*fn)(void *arg, const char *alertname, const char *summary,
                                     int64_t at_ns),
                          void *arg)
{
    size_t n = e->nfired < FIRED_RING ? e->nfired : FIRED_RING;
    for (size_t i = 0; i < n; i++) {
        const fired_t *f = &e->fired[(e->nfired - n + i) % FIRED_RING];
        if (f->at >= from && f->at < to)
            fn(arg, f->alertname, f->summary, f->at);
    }
}

/* ---- silences ---------------------------------------------------------------------------- */

static int parse_matchers(silence_t *s, const char *text, char *err, size_t cap)
{
    char *copy = xstrdup(text), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, " ,", &save); tok; tok = strtok_r(NULL, " ,", &save)) {
        if (s->nm == MAX_MATCHERS) {
            snprintf(err, cap, "at most %d matchers", MAX_MATCHERS);
            rc = -1;
            break;
        }
        char *op = strpbrk(tok, "=!");
        if (!op || op == tok) {
            snprintf(err, cap, "matcher '%s': expected name=value, name!=value, name=~regex or "
                               "name!~regex", tok);
            rc = -1;
            break;
        }
        matcher_t *m = &s->m[s->nm];
        const char *val;
        if (op[0] == '!' && op[1] == '~')
            m->op = M_NRE, val = op + 2;
        else if (op[0] == '!' && op[1] == '=')
            m->op = M_NE, val = op + 2;
        else if (op[0] == '=' && op[1] == '~')
            m->op = M_RE, val = op + 2;
        else if (op[0] == '=')
            m->op = M_EQ, val = op + 1;
        else {
            snprintf(err, cap, "matcher '%s': expected name=value, name!=value or name=~regex", tok);
            rc = -1;
            break;
        }
        m->name = xstrndup(tok, (size_t)(op - tok));
        m->value = xstrdup(val);
        if (m->op == M_RE || m->op == M_NRE) {
            char *anchored = xasprintf("^(%s)$", val);
            int r = regcomp(&m->re, anchored, REG_EXTENDED | REG_NOSUB);
            free(anchored);
            if (r) {
                snprintf(err, cap, "matcher '%s': not a valid regular expression", tok);
                free(m->name);
                free(m->value);
                rc = -1;
                break;
            }
        }
        s->nm++;
    }
    free(copy);
    if (!rc && !s->nm) {
        snprintf(err, cap, "a silence needs at least one matcher");
        rc = -1;
    }
    return rc;
}

static int add_silence(engine_t *e, const char *id, const char *matchers, int64_t created,
                       int64_t until, const char *comment, const char *by, char *err, size_t cap)
{
    silence_t s = { 0 };
    if (parse_matchers(&s, matchers, err, cap) < 0) {
        silence_free(&s);
        return -1;
    }
    snprintf(s.id, sizeof s.id, "%s", id);
    s.text = xstrdup(matchers);
    s.comment = xstrdup(comment ? comment : "");
    s.by = xstrdup(by ? by : "");
    s.created = created;
    s.until = until;
    e->sil = xreallocarray(e->sil, e->nsil + 1, sizeof *e->sil);
    e->sil[e->nsil++] = s;
    return 0;
}

int engine_silence_add(engine_t *e, const char *matchers, int64_t until, const char *comment,
                       const char *by, int64_t now, char *id, char *err, size_t cap)
{
    if (until <= now) {
        snprintf(err, cap, "the silence would end before it starts");
        return -1;
    }
    char sid[17];
    snprintf(sid, sizeof sid, "%016llx",
             (unsigned long long)(XXH3_64bits(matchers, strlen(matchers)) ^ (uint64_t)now ^ ++e->seq));
    if (add_silence(e, sid, matchers, now, until, comment, by, err, cap) < 0)
        return -1;
    memcpy(id, sid, 17);
    log_info("silence added", "id=%s matchers=\"%s\" until_ns=%lld by=\"%s\"", sid, matchers,
             (long long)until, by ? by : "");
    return 0;
}

int engine_silence_expire(engine_t *e, const char *id, int64_t now)
{
    for (size_t i = 0; i < e->nsil; i++)
        if (!strcmp(e->sil[i].id, id) && e->sil[i].until > now) {
            e->sil[i].until = now;
            e->lift = true; /* what it held back is told at the next tick */
            log_info("silence expired", "id=%s", id);
            return 0;
        }
    return -1;
}

/* ---- listings -------------------------------------------------------------------------- */

static void pack_cstr(msgpack_packer *pk, const char *s) { msg_pack_span(pk, span_cstr(s)); }

void engine_pack_alerts(const engine_t *e, msgpack_packer *pk)
{
    msgpack_pack_array(pk, (uint32_t)ktab_count(e->alerts));
    size_t it = 0;
    const alert_t *a;
    while ((a = ktab_next(e->alerts, &it))) {
        msg_alert_t m;
        to_msg(a, &m, tmtime_now_ns());
        msg_alert_pack(pk, &m);
    }
}

void engine_pack_silences(const engine_t *e, int64_t now, msgpack_packer *pk)
{
    uint32_t n = 0;
    for (size_t i = 0; i < e->nsil; i++)
        n += e->sil[i].until > now;
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < e->nsil; i++) {
        const silence_t *s = &e->sil[i];
        if (s->until <= now)
            continue;
        msgpack_pack_map(pk, 6);
        pack_cstr(pk, "id");
        pack_cstr(pk, s->id);
        pack_cstr(pk, "matchers");
        pack_cstr(pk, s->text);
        pack_cstr(pk, "comment");
        pack_cstr(pk, s->comment);
        pack_cstr(pk, "by");
        pack_cstr(pk, s->by);
        pack_cstr(pk, "created");
        msgpack_pack_int64(pk, s->created);
        pack_cstr(pk, "until");
        msgpack_pack_int64(pk, s->until);
    }
}

/* ---- durable state ------------------------------------------------------------------------ */

static void pack_kv(msgpack_packer *pk, const kv_t *v, size_t n)
{
    msgpack_pack_array(pk, (uint32_t)(n * 2));
    for (size_t i = 0; i < n; i++) {
        pack_cstr(pk, v[i].k);
        pack_cstr(pk, v[i].v);
    }
}

/* [version, [alerts], [groups], [silences], [fired]] */
void engine_save(const engine_t *e, msgpack_packer *pk)
{
    msgpack_pack_array(pk, 5);
    msgpack_pack_int(pk, STATE_VERSION);
    msgpack_pack_array(pk, (uint32_t)ktab_count(e->alerts));
    size_t it = 0;
    const alert_t *a;
    while ((a = ktab_next(e->alerts, &it))) {
        msgpack_pack_array(pk, 10);
        pack_cstr(pk, a->fp);
        pack_kv(pk, a->lab, a->nl);
        pack_kv(pk, a->ann, a->na);
        msgpack_pack_double(pk, a->value);
        msgpack_pack_int(pk, a->state);
        msgpack_pack_int64(pk, a->for_ms);
        msgpack_pack_int64(pk, a->active_since);
        msgpack_pack_int64(pk, a->fired_at);
        msgpack_pack_int64(pk, a->resolved_at);
        msgpack_pack_unsigned_int(pk, a->refs);
    }
    msgpack_pack_array(pk, (uint32_t)ktab_count(e->groups));
    it = 0;
    const group_t *g;
    while ((g = ktab_next(e->groups, &it))) {
        msgpack_pack_array(pk, 7);
        span_t key = ktab_key(g);
        snap_pack_bin(pk, key.p, key.len);
        pack_cstr(pk, g->receiver);
        pack_kv(pk, g->lab, g->nl);
        msgpack_pack_int64(pk, g->created);
        msgpack_pack_int64(pk, g->last_notify);
        msgpack_pack_int(pk, g->dirty);
        msgpack_pack_array(pk, (uint32_t)g->nfps);
        for (size_t i = 0; i < g->nfps; i++)
            pack_cstr(pk, g->fps[i]);
    }
    msgpack_pack_array(pk, (uint32_t)e->nsil);
    for (size_t i = 0; i < e->nsil; i++) {
        const silence_t *s = &e->sil[i];
        msgpack_pack_array(pk, 6);
        pack_cstr(pk, s->id);
        pack_cstr(pk, s->text);
        pack_cstr(pk, s->comment);
        pack_cstr(pk, s->by);
        msgpack_pack_int64(pk, s->created);
        msgpack_pack_int64(pk, s->until);
    }
    size_t nf = e->nfired < FIRED_RING ? e->nfired : FIRED_RING;
    msgpack_pack_array(pk, (uint32_t)nf);
    for (size_t i = 0; i < nf; i++) {
        const fired_t *f = &e->fired[(e->nfired - nf + i) % FIRED_RING];
        msgpack_pack_array(pk, 3);
        pack_cstr(pk, f->alertname);
        pack_cstr(pk, f->summary);
        msgpack_pack_int64(pk, f->at);
    }
}

static int load_kv(const msgpack_object *o, kv_t *out, size_t max, size_t *n)
{
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size % 2 ||
        o->via.array.size / 2 > max)
        return -1;
    size_t k = 0;
    for (uint32_t i = 0; i < o->via.array.size; i += 2) {
        const msgpack_object *a = &o->via.array.ptr[i], *b = &o->via.array.ptr[i + 1];
        if (a->type != MSGPACK_OBJECT_STR || b->type != MSGPACK_OBJECT_STR)
            goto bad;
        out[k].k = xstrndup(a->via.str.ptr ? a->via.str.ptr : "", a->via.str.size);
        out[k].v = xstrndup(b->via.str.ptr ? b->via.str.ptr : "", b->via.str.size);
        k++;
    }
    *n = k;
    return 0;
bad:
    kv_free(out, k);
    return -1;
}

static bool str_is(span_t s, size_t len) { return s.p && s.len == len; }

int engine_load(engine_t *e, const msgpack_object *o, char *err, size_t cap)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5 ||
        o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
        o->via.array.ptr[0].via.u64 != STATE_VERSION) {
        snprintf(err, cap, "the alerter's state is not of version %d", STATE_VERSION);
        return -1;
    }
    const msgpack_object *al = &o->via.array.ptr[1], *gr = &o->via.array.ptr[2],
                         *si = &o->via.array.ptr[3], *fi = &o->via.array.ptr[4];
    if (al->type != MSGPACK_OBJECT_ARRAY || gr->type != MSGPACK_OBJECT_ARRAY ||
        si->type != MSGPACK_OBJECT_ARRAY || fi->type != MSGPACK_OBJECT_ARRAY)
        goto bad;
    for (uint32_t i = 0; i < al->via.array.size; i++) {
        snap_rec_t r;
        snap_rec_open(&r, &al->via.array.ptr[i]);
        span_t fp = snap_rec_str(&r);
        const msgpack_object *lab = snap_rec_obj(&r), *ann = snap_rec_obj(&r);
        const msgpack_object *val = snap_rec_obj(&r);
        int64_t state = snap_rec_i64(&r), for_ms = snap_rec_i64(&r), since = snap_rec_i64(&r),
                fired = snap_rec_i64(&r), resolved = snap_rec_i64(&r);
        uint64_t refs = snap_rec_u64(&r);
        if (!snap_rec_ok(&r) || !str_is(fp, 16) || state < 0 || state > 2 || !val ||
            (val->type != MSGPACK_OBJECT_FLOAT64 && val->type != MSGPACK_OBJECT_FLOAT32))
            goto bad;
        char key[17];
        memcpy(key, fp.p, 16);
        key[16] = '\0';
        bool created;
        alert_t *a = ktab_put(e->alerts, key, 16, ktab_hash(key, 16), &created);
        if (!created)
            goto bad;
        memcpy(a->fp, key, 17);
        if (load_kv(lab, a->lab, MAX_LABELS, &a->nl) < 0 ||
            load_kv(ann, a->ann, MSG_MAX_ANNOTATIONS, &a->na) < 0 ||
            !label_of(a->lab, a->nl, "alertname"))
            goto bad;
        a->value = val->via.f64;
        a->state = (astate_t)state;
        a->for_ms = for_ms;
        a->active_since = since;
        a->fired_at = fired;
        a->resolved_at = resolved;
        a->refs = 0; /* recounted from the groups */
        (void)refs;
    }
    for (uint32_t i = 0; i < gr->via.array.size; i++) {
        snap_rec_t r;
        snap_rec_open(&r, &gr->via.array.ptr[i]);
        span_t key = snap_rec_str(&r), recv = snap_rec_str(&r);
        const msgpack_object *lab = snap_rec_obj(&r);
        int64_t created = snap_rec_i64(&r), last = snap_rec_i64(&r), dirty = snap_rec_i64(&r);
        const msgpack_object *fps = snap_rec_obj(&r);
        if (!snap_rec_ok(&r) || !recv.len || !fps || fps->type != MSGPACK_OBJECT_ARRAY)
            goto bad;
        size_t ri = e->nrecv;
        for (size_t k = 0; k < e->nrecv; k++)
            if (strlen(e->receivers[k]) == recv.len && !memcmp(e->receivers[k], recv.p, recv.len))
                ri = k;
        if (ri == e->nrecv)
            continue; /* a receiver no longer configured */
        bool made;
        group_t *g = ktab_put(e->groups, key.p, key.len, ktab_hash(key.p, key.len), &made);
        if (!made)
            goto bad;
        g->receiver = xstrdup(e->receivers[ri]);
        g->am = e->recv_am[ri];
        if (load_kv(lab, g->lab, MAX_LABELS, &g->nl) < 0)
            goto bad;
        g->created = created;
        g->last_notify = last;
        g->dirty = dirty != 0;
        for (uint32_t k = 0; k < fps->via.array.size; k++) {
            const msgpack_object *f = &fps->via.array.ptr[k];
            if (f->type != MSGPACK_OBJECT_STR || f->via.str.size != 16)
                goto bad;
            char fk[17];
            memcpy(fk, f->via.str.ptr, 16);
            fk[16] = '\0';
            alert_t *a = alert_at(e, fk);
            if (a)
                group_add(g, a);
        }
    }
    for (uint32_t i = 0; i < si->via.array.size; i++) {
        snap_rec_t r;
        snap_rec_open(&r, &si->via.array.ptr[i]);
        span_t id = snap_rec_str(&r), text = snap_rec_str(&r), comment = snap_rec_str(&r),
               by = snap_rec_str(&r);
        int64_t created = snap_rec_i64(&r), until = snap_rec_i64(&r);
        if (!snap_rec_ok(&r) || !str_is(id, 16))
            goto bad;
        char *sid = xstrndup(id.p, id.len), *t = xstrndup(text.p, text.len),
             *c = xstrndup(comment.p ? comment.p : "", comment.len),
             *b = xstrndup(by.p ? by.p : "", by.len);
        char e2[256];
        int rc = add_silence(e, sid, t, created, until, c, b, e2, sizeof e2);
        free(sid);
        free(t);
        free(c);
        free(b);
        if (rc < 0)
            goto bad;
    }
    for (uint32_t i = 0; i < fi->via.array.size; i++) {
        snap_rec_t r;
        snap_rec_open(&r, &fi->via.array.ptr[i]);
        span_t name = snap_rec_str(&r), summary = snap_rec_str(&r);
        int64_t at = snap_rec_i64(&r);
        if (!snap_rec_ok(&r))
            goto bad;
        fired_t *f = &e->fired[e->nfired++ % FIRED_RING];
        snprintf(f->alertname, sizeof f->alertname, "%.*s", (int)name.len, name.p ? name.p : "");
        snprintf(f->summary, sizeof f->summary, "%.*s", (int)summary.len, summary.p ? summary.p : "");
        f->at = at;
    }
    /* firing alerts the groups do not hold yet (a receiver added) */
    size_t it = 0;
    alert_t *a;
    while ((a = ktab_next(e->alerts, &it)))
        if (a->state == A_FIRING && a->refs == 0 && e->nrecv) {
            for (size_t r = 0; r < e->nrecv; r++) {
                group_t *g = group_of(e, r, a, a->fired_at);
                group_add(g, a);
                g->dirty = true;
            }
        }
    /* which alerts the last notifications left out is not saved: the firing
     * ones silenced or inhibited now, most likely, so that they are told
     * when that ends */
    int64_t now = tmtime_now_ns();
    it = 0;
    while ((a = ktab_next(e->alerts, &it)))
        a->held = a->state == A_FIRING && (silenced(e, a, now) || inhibited(e, a));
    e->sil_checked = now;
    return 0;
bad:
    snprintf(err, cap, "the alerter's state is malformed");
    ktab_clear(e->alerts);
    ktab_clear(e->groups);
    for (size_t i = 0; i < e->nsil; i++)
        silence_free(&e->sil[i]);
    e->nsil = 0;
    e->nfired = 0;
    return -1;
}

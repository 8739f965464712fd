/* model: see model.h. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cal.h"
#include "ktab.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

/* a + b, saturating at the int64 bounds: a hostile record may carry any
 * int64, and a sum must not wrap (or, signed, be undefined) */
static inline int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

#define MAX_LABELS 24 /* label names of one family, le included */
#define OTHER "__other__"
#define KEY_SEP '\xff' /* never in UTF-8: joins label values into a key */

/* OpenTelemetry GenAI duration buckets: 0.01 s doubling to 81.92 s, in µs */
#define NB 14
static const int64_t bucket_us[NB] = { 10000,   20000,   40000,    80000,    160000,
                                       320000,  640000,  1280000,  2560000,  5120000,
                                       10240000, 20480000, 40960000, 81920000 };
static const char *const bucket_le[NB + 1] = { "0.01", "0.02", "0.04", "0.08", "0.16",
                                               "0.32", "0.64", "1.28", "2.56", "5.12",
                                               "10.24", "20.48", "40.96", "81.92", "+Inf" };
static const double quantiles[MSG_FLUSH_NQ] = { 0.5, 0.9, 0.95, 0.99 };
static const char *const quantile_s[MSG_FLUSH_NQ] = { "0.5", "0.9", "0.95", "0.99" };

typedef enum { F_COUNTER, F_GAUGE, F_HISTOGRAM, F_SUMMARY } ftype_t;

/* How a counter or gauge keeps its value: an integer shown divided by a
 * power of ten (exact), or a double. */
typedef enum { V_INT, V_DBL } vkind_t;

typedef struct {
    uint64_t b[NB + 1]; /* per bucket, not cumulative; [NB]: above the last */
    uint64_t count;
    int64_t sum_us;
} hist_t;

typedef struct {
    double q[MSG_FLUSH_NQ]; /* the last interval's */
    double sum, count;      /* since start */
} summ_t;

typedef struct {
    char *text;    /* k="v",k="v" (escaped), "" without labels */
    char **values; /* raw, nlabels of them */
    union {
        int64_t i;
        double d;
    } v;
    hist_t *h;
    summ_t *s;
} series_t;

typedef struct {
    char *name; /* counters: without _total */
    char *help;
    ftype_t type;
    vkind_t vk;
    int decimals;   /* V_INT: the value is i / 10^decimals */
    size_t nlabels;
    char *labels[MAX_LABELS];
    uint8_t order[MAX_LABELS]; /* label indices sorted by name */
    ktab_t *series;
    bool builtin, derived; /* derived: rebuilt at each refresh */
    int64_t *c_folded;
} family_t;

/* the latest status of one budget instance from one aggregator */
typedef struct {
    char name[64], scope[16], value[128], period[8];
    int64_t period_start, limit, spent, f_avg, f_rate, exhaust, ts;
    int64_t warn_pct;
} bstate_t;

/* one user's or account's usage today */
typedef struct {
    int64_t day; /* cal day start, unix ns */
    int64_t cost;
    uint64_t tokens;
} dayuse_t;

struct model {
    const cfg_t *cfg;
    stats_t *st;
    cal_t *cal;
    family_t **fam;
    size_t nfam, cfam;
    ktab_t *byname; /* family name -> index + 1 */
    family_t *req, *tok, *cost, *dur, *ttft;
    family_t *b_limit, *b_spent, *b_ratio, *b_fc, *b_exh, *q_subj;
    family_t *u_cost, *u_tok, *a_cost, *a_tok, *u_folded, *a_folded;
    ktab_t *budgets; /* name \xff value \xff src -> bstate_t */
    ktab_t *quotas;  /* subject \xff id \xff window \xff unit -> state (int) */
    ktab_t *users, *accounts; /* -> dayuse_t */
    model_totals_t tot;
    const stats_t *own;
    char *own_src;
    int64_t *c_conflicts, *c_folded_total, *c_bad_names;
    mbuf_t key, tmp;
};

/* ---- families and series -------------------------------------------------------- */

static void series_free(void *val)
{
    series_t *s = val;
    free(s->text);
    if (s->values) {
        for (size_t i = 0; s->values[i]; i++)
            free(s->values[i]);
        free(s->values);
    }
    free(s->h);
    free(s->s);
}

static int cmp_label(const void *a, const void *b, void *arg)
{
    char **names = arg;
    return strcmp(names[*(const uint8_t *)a], names[*(const uint8_t *)b]);
}

static family_t *family_add(model_t *m, const char *name, const char *help, ftype_t type,
                            vkind_t vk, int decimals, const char *const *labels, size_t n,
                            bool builtin)
{
    family_t *f = xcalloc(1, sizeof *f);
    f->name = xstrdup(name);
    f->help = xstrdup(help);
    f->type = type;
    f->vk = vk;
    f->decimals = decimals;
    f->nlabels = n;
    for (size_t i = 0; i < n; i++) {
        f->labels[i] = xstrdup(labels[i]);
        f->order[i] = (uint8_t)i;
    }
    qsort_r(f->order, n, 1, cmp_label, f->labels);
    f->series = ktab_new(sizeof(series_t), series_free);
    f->builtin = builtin;
    char lab[160];
    snprintf(lab, sizeof lab, "family=%.120s", name);
    f->c_folded = stats_counter(m->st, "exporter_series_folded_total", lab);
    if (m->nfam == m->cfam) {
        m->cfam = m->cfam ? m->cfam * 2 : 64;
        m->fam = xreallocarray(m->fam, m->cfam, sizeof *m->fam);
    }
    m->fam[m->nfam++] = f;
    size_t *idx = ktab_put(m->byname, name, strlen(name), ktab_hash(name, strlen(name)), NULL);
    *idx = m->nfam;
    return f;
}

static family_t *family_named(const model_t *m, const char *name)
{
    size_t *idx = ktab_get(m->byname, name, strlen(name), ktab_hash(name, strlen(name)));
    return idx ? m->fam[*idx - 1] : NULL;
}

static void family_free(family_t *f)
{
    free(f->name);
    free(f->help);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    ktab_destroy(&f->series);
    free(f);
}

/* Label values as Prometheus wants them: valid UTF-8 (bad bytes become
 * '?'), escaped \\ \" \n in text. */
static char *clean_value(span_t v)
{
    const char *p = v.p ? v.p : "";
    if (utf8_valid(p, v.len) && !memchr(p, '\0', v.len))
        return xstrndup(p, v.len);
    char *o = xmalloc(v.len + 1);
    size_t k = 0;
    for (size_t i = 0; i < v.len;) {
        size_t n = utf8_seq((const unsigned char *)p + i, v.len - i);
        if (n == 0 || (n == 1 && p[i] == '\0')) {
            o[k++] = '?';
            i++;
        } else {
            memcpy(o + k, p + i, n);
            k += n;
            i += n;
        }
    }
    o[k] = '\0';
    return o;
}

static void append_escaped(mbuf_t *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        if (*s != '\\' && *s != '"' && *s != '\n')
            continue;
        mbuf_append(b, run, (size_t)(s - run));
        mbuf_append(b, *s == '\n' ? "\\n" : *s == '\\' ? "\\\\" : "\\\"", 2);
        run = s + 1;
    }
    mbuf_append(b, run, (size_t)(s - run));
}

/* The series of f with label values vals (spans; n == f->nlabels), made
 * when new; past max_series, the family's "__other__" series. */
static series_t *series_at(model_t *m, family_t *f, const span_t *vals)
{
    mbuf_reset(&m->key);
    for (size_t i = 0; i < f->nlabels; i++) {
        if (i)
            mbuf_append(&m->key, "\xff", 1);
        if (vals[i].len)
            mbuf_append(&m->key, vals[i].p, vals[i].len);
    }
    uint64_t h = ktab_hash(m->key.data, m->key.len);
    series_t *s = ktab_get(f->series, m->key.data, m->key.len, h);
    if (s)
        return s;
    bool folded = false;
    span_t other[MAX_LABELS];
    if (!f->derived && (int64_t)ktab_count(f->series) >= m->cfg->exporter.max_series) {
        (*f->c_folded)++;
        (*m->c_folded_total)++;
        for (size_t i = 0; i < f->nlabels; i++)
            other[i] = span_cstr(OTHER);
        vals = other;
        folded = true;
        mbuf_reset(&m->key);
        for (size_t i = 0; i < f->nlabels; i++) {
            if (i)
                mbuf_append(&m->key, "\xff", 1);
            mbuf_append(&m->key, OTHER, strlen(OTHER));
        }
        h = ktab_hash(m->key.data, m->key.len);
        s = ktab_get(f->series, m->key.data, m->key.len, h);
        if (s)
            return s;
    }
    (void)folded;
    s = ktab_put(f->series, m->key.data, m->key.len, h, NULL);
    s->values = xcalloc(f->nlabels + 1, sizeof *s->values);
    mbuf_reset(&m->tmp);
    for (size_t i = 0; i < f->nlabels; i++) {
        s->values[i] = clean_value(vals[i]);
        if (i)
            mbuf_append(&m->tmp, ",", 1);
        mbuf_append(&m->tmp, f->labels[i], strlen(f->labels[i]));
        mbuf_append(&m->tmp, "=\"", 2);
        append_escaped(&m->tmp, s->values[i]);
        mbuf_append(&m->tmp, "\"", 1);
    }
    s->text = xstrndup(m->tmp.data ? m->tmp.data : "", m->tmp.len);
    if (f->type == F_HISTOGRAM)
        s->h = xcalloc(1, sizeof *s->h);
    if (f->type == F_SUMMARY)
        s->s = xcalloc(1, sizeof *s->s);
    return s;
}

/* ---- new ------------------------------------------------------------------------- */

model_t *model_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap)
{
    cal_t *cal = cal_new(cfg->global.timezone, err, cap);
    if (!cal)
        return NULL;
    model_t *m = xcalloc(1, sizeof *m);
    m->cfg = cfg;
    m->st = st;
    m->cal = cal;
    m->byname = ktab_new(sizeof(size_t), NULL);
    m->budgets = ktab_new(sizeof(bstate_t), NULL);
    m->quotas = ktab_new(sizeof(int), NULL);
    m->users = ktab_new(sizeof(dayuse_t), NULL);
    m->accounts = ktab_new(sizeof(dayuse_t), NULL);
    m->c_conflicts = stats_counter(st, "exporter_conflicts_total", NULL);
    m->c_folded_total = stats_counter(st, "exporter_folded_total", NULL);
    m->c_bad_names = stats_counter(st, "exporter_bad_names_total", NULL);

    static const char *const pmos[] = { "provider", "model", "operation", "status" };
    static const char *const pmot[] = { "provider", "model", "operation", "type" };
    static const char *const pmo[] = { "provider", "model", "operation" };
    static const char *const bud[] = { "budget", "scope", "scope_value", "period" };
    static const char *const budm[] = { "budget", "scope", "scope_value", "period", "method" };
    static const char *const subj[] = { "subject", "state" };
    static const char *const user[] = { "user" };
    static const char *const account[] = { "account" };
    m->req = family_add(m, "llm_requests", "LLM calls, by provider, model, operation and status.",
                        F_COUNTER, V_INT, 0, pmos, 4, true);
    m->tok = family_add(m, "llm_tokens",
                        "LLM tokens by type: input (uncached), cache_read, cache_write, output "
                        "(other than reasoning), reasoning. The types are disjoint.",
                        F_COUNTER, V_INT, 0, pmot, 4, true);
    m->cost = family_add(m, "llm_cost_usd", "Cost of LLM calls in US dollars.", F_COUNTER, V_INT,
                         9, pmo, 3, true);
    m->dur = family_add(m, "llm_request_duration_seconds", "Duration of LLM calls.", F_HISTOGRAM,
                        V_INT, 6, pmo, 3, true);
    m->ttft = family_add(m, "llm_time_to_first_token_seconds",
                         "Time to the first token of streamed LLM calls.", F_HISTOGRAM, V_INT, 6,
                         pmo, 3, true);
    m->b_limit = family_add(m, "llm_budget_limit_usd", "A budget's limit in force, rollover included.",
                            F_GAUGE, V_INT, 9, bud, 4, true);
    m->b_spent = family_add(m, "llm_budget_spent_usd",
                            "Spent of a budget in its current period (shards summed).", F_GAUGE,
                            V_INT, 9, bud, 4, true);
    m->b_ratio = family_add(m, "llm_budget_spent_ratio", "Spent over limit (1 is 100 %).", F_GAUGE,
                            V_DBL, 0, bud, 4, true);
    m->b_fc = family_add(m, "llm_budget_forecast_usd",
                         "Forecast spend at the period's end: method avg (the period's average) "
                         "or rate (the last hour's rate).",
                         F_GAUGE, V_INT, 9, budm, 5, true);
    m->b_exh = family_add(m, "llm_budget_exhaust_seconds",
                          "Seconds until the budget runs out at the last hour's rate (0: spent); "
                          "absent when it does not at that rate.",
                          F_GAUGE, V_DBL, 0, bud, 4, true);
    m->q_subj = family_add(m, "llm_quota_subjects",
                           "Users and accounts in the warning or exceeded quota state.", F_GAUGE,
                           V_INT, 0, subj, 2, true);
    m->b_limit->derived = m->b_spent->derived = m->b_ratio->derived = m->b_fc->derived =
        m->b_exh->derived = m->q_subj->derived = true;
    if (cfg->exporter.user_labels) {
        m->u_cost = family_add(m, "llm_user_cost_usd",
                               "Cost today of the top users (the rest folded into user __other__).",
                               F_GAUGE, V_INT, 9, user, 1, true);
        m->u_tok = family_add(m, "llm_user_tokens", "Tokens today of the top users.", F_GAUGE, V_INT,
                              0, user, 1, true);
        m->u_folded = family_add(m, "llm_users_folded", "Users folded into user __other__.",
                                 F_GAUGE, V_INT, 0, NULL, 0, true);
        m->u_cost->derived = m->u_tok->derived = m->u_folded->derived = true;
    }
    if (cfg->exporter.account_labels) {
        m->a_cost = family_add(m, "llm_account_cost_usd",
                               "Cost today of the top accounts (the rest folded into account __other__).",
                               F_GAUGE, V_INT, 9, account, 1, true);
        m->a_tok = family_add(m, "llm_account_tokens", "Tokens today of the top accounts.", F_GAUGE,
                              V_INT, 0, account, 1, true);
        m->a_folded = family_add(m, "llm_accounts_folded",
                                 "Accounts folded into account __other__.", F_GAUGE, V_INT, 0,
                                 NULL, 0, true);
        m->a_cost->derived = m->a_tok->derived = m->a_folded->derived = true;
    }
    return m;
}

void model_destroy(model_t **pm)
{
    model_t *m = *pm;
    if (!m)
        return;
    for (size_t i = 0; i < m->nfam; i++)
        family_free(m->fam[i]);
    free(m->fam);
    ktab_destroy(&m->byname);
    ktab_destroy(&m->budgets);
    ktab_destroy(&m->quotas);
    ktab_destroy(&m->users);
    ktab_destroy(&m->accounts);
    cal_destroy(&m->cal);
    free(m->own_src);
    mbuf_free(&m->key);
    mbuf_free(&m->tmp);
    free(m);
    *pm = NULL;
}

/* ---- inputs ---------------------------------------------------------------------- */

static void hist_add(hist_t *h, int64_t us)
{
    size_t i = 0;
    while (i < NB && us > bucket_us[i])
        i++;
    h->b[i]++;
    h->count++;
    h->sum_us = sat_add(h->sum_us, us);
}

static void day_add(model_t *m, ktab_t *t, span_t id, int64_t day, int64_t cost, uint64_t tokens)
{
    if (!id.p)
        return;
    dayuse_t *d = ktab_put(t, id.p, id.len, ktab_hash(id.p, id.len), NULL);
    (void)m;
    if (d->day != day) {
        if (d->day > day)
            return; /* a late call of yesterday */
        d->day = day;
        d->cost = 0;
        d->tokens = 0;
    }
    d->cost = sat_add(d->cost, cost);
    d->tokens += tokens;
}

static uint64_t sub0(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

void model_usage(model_t *m, const msg_usage_t *u, int64_t now_ns)
{
    (void)now_ns;
    span_t v[4] = { u->provider, u->model, u->operation, u->status };
    {
        series_t *rq = series_at(m, m->req, v);
        rq->v.i = sat_add(rq->v.i, (int64_t)u->requests);
    }
    uint64_t cw = u->cache_write_tokens + u->cache_write_1h_tokens;
    uint64_t input = sub0(u->input_tokens, u->cache_read_tokens + cw);
    uint64_t output = sub0(u->output_tokens, u->reasoning_tokens);
    uint64_t reasoning = u->reasoning_tokens < u->output_tokens ? u->reasoning_tokens : u->output_tokens;
    const struct {
        const char *type;
        uint64_t n;
    } types[5] = { { "input", input },
                   { "cache_read", u->cache_read_tokens },
                   { "cache_write", cw },
                   { "output", output },
                   { "reasoning", reasoning } };
    for (int i = 0; i < 5; i++) {
        if (!types[i].n)
            continue;
        v[3] = span_cstr(types[i].type);
        series_t *tk = series_at(m, m->tok, v);
        tk->v.i = sat_add(tk->v.i, (int64_t)types[i].n);
    }
    series_t *c = series_at(m, m->cost, v);
    c->v.i = sat_add(c->v.i, u->cost_nusd);
    if (u->latency_us >= 0)
        hist_add(series_at(m, m->dur, v)->h, u->latency_us);
    if (u->ttft_us >= 0)
        hist_add(series_at(m, m->ttft, v)->h, u->ttft_us);

    model_totals_t *t = &m->tot;
    t->requests += u->requests;
    if (span_eq_cstr(u->status, "error"))
        t->errors += u->requests;
    t->input_tokens += u->input_tokens;
    t->cache_read_tokens += u->cache_read_tokens;
    t->cache_write_tokens += cw;
    t->output_tokens += u->output_tokens;
    t->reasoning_tokens += u->reasoning_tokens;
    t->total_tokens += u->input_tokens + u->output_tokens;
    t->cost_nusd = sat_add(t->cost_nusd, u->cost_nusd);
    int64_t ts = u->recv_ts;
    if (!t->first_ns || ts < t->first_ns)
        t->first_ns = ts;
    if (ts > t->last_ns)
        t->last_ns = ts;

    if (m->u_cost || m->a_cost) {
        int64_t day = cal_start(m->cal, CAL_DAY, u->recv_ts);
        uint64_t tokens = u->input_tokens + u->output_tokens;
        if (m->u_cost)
            day_add(m, m->users, u->user, day, u->cost_nusd, tokens);
        if (m->a_cost)
            day_add(m, m->accounts, u->account, day, u->cost_nusd, tokens);
    }
}

void model_budget(model_t *m, span_t src, const msg_budget_t *b)
{
    mbuf_reset(&m->key);
    mbuf_append(&m->key, b->name.p, b->name.len);
    mbuf_append(&m->key, "\xff", 1);
    if (b->scope_value.len)
        mbuf_append(&m->key, b->scope_value.p, b->scope_value.len);
    mbuf_append(&m->key, "\xff", 1);
    mbuf_append(&m->key, src.p, src.len);
    bstate_t *s = ktab_put(m->budgets, m->key.data, m->key.len,
                           ktab_hash(m->key.data, m->key.len), NULL);
    if (s->ts > b->ts)
        return; /* an older status than the one held */
    snprintf(s->name, sizeof s->name, "%.*s", (int)b->name.len, b->name.p);
    snprintf(s->scope, sizeof s->scope, "%.*s", (int)b->scope.len, b->scope.p);
    snprintf(s->value, sizeof s->value, "%.*s", (int)b->scope_value.len,
             b->scope_value.p ? b->scope_value.p : "");
    snprintf(s->period, sizeof s->period, "%.*s", (int)b->period.len, b->period.p);
    s->period_start = b->period_start;
    s->limit = b->limit_nusd;
    s->spent = b->spent_nusd;
    s->f_avg = b->forecast_avg_nusd;
    s->f_rate = b->forecast_rate_nusd;
    s->exhaust = b->exhaust_ts;
    s->warn_pct = b->warn_pct;
    s->ts = b->ts;
}

static int state_rank(span_t s)
{
    return span_eq_cstr(s, "exceeded") ? 2 : span_eq_cstr(s, "warning") ? 1 : 0;
}

void model_quota(model_t *m, const msg_quota_t *q)
{
    mbuf_reset(&m->key);
    const span_t parts[4] = { q->subject, q->id, q->window, q->unit };
    for (int i = 0; i < 4; i++) {
        if (i)
            mbuf_append(&m->key, "\xff", 1);
        if (parts[i].len)
            mbuf_append(&m->key, parts[i].p, parts[i].len);
    }
    uint64_t h = ktab_hash(m->key.data, m->key.len);
    int rank = state_rank(q->state);
    if (!rank) { /* back to ok: forget it */
        int *old = ktab_get(m->quotas, m->key.data, m->key.len, h);
        if (old)
            ktab_del(m->quotas, old);
        return;
    }
    *(int *)ktab_put(m->quotas, m->key.data, m->key.len, h, NULL) = rank;
}

/* A metric or label name as Prometheus allows it: [a-zA-Z_:][a-zA-Z0-9_:]*
 * (labels: no colon), other bytes as '_', a leading digit prefixed. */
static void sanitize(char *out, size_t cap, span_t in, bool colon)
{
    size_t k = 0;
    if (in.len && in.p[0] >= '0' && in.p[0] <= '9' && k + 1 < cap)
        out[k++] = '_';
    for (size_t i = 0; i < in.len && k + 1 < cap; i++) {
        char c = in.p[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || (colon && c == ':');
        out[k++] = ok ? c : '_';
    }
    out[k] = '\0';
}

/* Whether an existing family renders a sample named s: a gauge or summary
 * named s, a counter named s without _total, a summary or histogram named
 * s without _sum or _count, a histogram named s without _bucket. */
static bool sample_taken(const model_t *m, const char *s)
{
    const family_t *g = family_named(m, s);
    if (g && (g->type == F_GAUGE || g->type == F_SUMMARY))
        return true;
    static const struct {
        const char *suffix;
        unsigned types;
    } sfx[] = { { "_total", 1u << F_COUNTER },
                { "_sum", (1u << F_SUMMARY) | (1u << F_HISTOGRAM) },
                { "_count", (1u << F_SUMMARY) | (1u << F_HISTOGRAM) },
                { "_bucket", 1u << F_HISTOGRAM } };
    size_t n = strlen(s);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i].suffix);
        char base[256];
        if (n <= k || n - k >= sizeof base || strcmp(s + n - k, sfx[i].suffix))
            continue;
        memcpy(base, s, n - k);
        base[n - k] = '\0';
        g = family_named(m, base);
        if (g && (sfx[i].types & (1u << g->type)))
            return true;
    }
    return false;
}

/* Whether a new family name of type type would render a sample name that
 * another family already renders (StatsD "x" as a counter and "x_total"
 * as a gauge, a timer "x" and a gauge "x_count"): two families with one
 * sample name make the page invalid in both formats. */
static bool samples_clash(const model_t *m, const char *name, ftype_t type)
{
    char s[256];
    switch (type) {
    case F_COUNTER:
        snprintf(s, sizeof s, "%s_total", name);
        return sample_taken(m, s);
    case F_SUMMARY:
        snprintf(s, sizeof s, "%s_sum", name);
        if (sample_taken(m, s))
            return true;
        snprintf(s, sizeof s, "%s_count", name);
        if (sample_taken(m, s))
            return true;
        return sample_taken(m, name);
    case F_HISTOGRAM:
        return false; /* no dynamic histograms */
    default:
        return sample_taken(m, name);
    }
}

/* The family name (counters without _total) for a dynamic metric: new, or
 * the existing one when type and label names match; NULL (counted) when
 * they do not, the name is taken by a built-in family, or a new family
 * would render a sample name another family renders. */
static family_t *dynamic_family(model_t *m, const char *name, const char *help, ftype_t type,
                                vkind_t vk, int decimals, char names[][128], size_t n)
{
    family_t *f = family_named(m, name);
    if (!f) {
        if (samples_clash(m, name, type)) {
            (*m->c_conflicts)++;
            return NULL;
        }
        const char *ln[MAX_LABELS];
        for (size_t i = 0; i < n; i++)
            ln[i] = names[i];
        return family_add(m, name, help, type, vk, decimals, ln, n, false);
    }
    bool same = !f->builtin && f->type == type && f->nlabels == n && f->decimals == decimals;
    for (size_t i = 0; same && i < n; i++)
        same = !strcmp(f->labels[i], names[i]);
    if (!same) {
        (*m->c_conflicts)++;
        return NULL;
    }
    return f;
}

static int cmp_str128(const void *a, const void *b) { return strcmp(a, b); }

void model_flush(model_t *m, const msg_flush_t *fl)
{
    char name[200];
    sanitize(name, sizeof name - 8, fl->name, true);
    if (!name[0]) {
        (*m->c_bad_names)++;
        return;
    }
    size_t nl = strlen(name);
    ftype_t type = F_GAUGE;
    switch (fl->type) {
    case MSG_ST_C:
        type = F_COUNTER;
        if (nl > 6 && !strcmp(name + nl - 6, "_total"))
            name[nl - 6] = '\0';
        break;
    case MSG_ST_MS:
    case MSG_ST_H:
    case MSG_ST_D:
        type = F_SUMMARY;
        break;
    default:
        break;
    }
    /* reserved for tokmon's own families */
    if (!strncmp(name, "llm_", 4) || !strncmp(name, "tokmon_", 7)) {
        (*m->c_conflicts)++;
        return;
    }
    if (fl->ntags > MAX_LABELS - 1) {
        (*m->c_conflicts)++;
        return;
    }
    /* tags sorted by key already (msg.h); sanitized names must stay unique */
    char keys[MAX_LABELS][128];
    span_t vals[MAX_LABELS];
    for (size_t i = 0; i < fl->ntags; i++) {
        sanitize(keys[i], sizeof keys[i], fl->tags[i].key, false);
        if (!keys[i][0] || !strncmp(keys[i], "__", 2) || !strcmp(keys[i], "quantile") ||
            !strcmp(keys[i], "le")) {
            char t[128];
            snprintf(t, sizeof t, "tag_%.120s", keys[i]);
            snprintf(keys[i], sizeof keys[i], "%s", t);
        }
        vals[i] = fl->tags[i].value;
    }
    /* sort the (key, value) pairs by sanitized key, and refuse duplicates */
    for (size_t i = 1; i < fl->ntags; i++)
        for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
            char t[128];
            memcpy(t, keys[j], sizeof t);
            memcpy(keys[j], keys[j - 1], sizeof t);
            memcpy(keys[j - 1], t, sizeof t);
            span_t sv = vals[j];
            vals[j] = vals[j - 1];
            vals[j - 1] = sv;
        }
    for (size_t i = 1; i < fl->ntags; i++)
        if (!strcmp(keys[i - 1], keys[i])) {
            (*m->c_conflicts)++;
            return;
        }
    (void)cmp_str128;
    family_t *f = dynamic_family(m, name, "A StatsD metric, aggregated by tokmon-aggregator.", type,
                                 V_DBL, 0, keys, fl->ntags);
    if (!f)
        return;
    series_t *s = series_at(m, f, vals);
    switch (type) {
    case F_COUNTER:
        s->v.d += fl->value;
        break;
    case F_SUMMARY:
        for (int i = 0; i < MSG_FLUSH_NQ; i++)
            s->s->q[i] = fl->q[i];
        s->s->sum += fl->sum;
        s->s->count += fl->count;
        break;
    default:
        s->v.d = fl->value;
        break;
    }
}

/* Stage counters in ms, us or ns become seconds (exactly: the integer is
 * shown with decimals), as Prometheus names want base units. */
static int base_unit(char *name)
{
    static const struct {
        const char *suffix;
        int decimals;
    } units[] = { { "_nanoseconds", 9 }, { "_microseconds", 6 }, { "_milliseconds", 3 },
                  { "_ns", 9 },          { "_us", 6 },           { "_ms", 3 } };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        size_t k = strlen(units[i].suffix);
        if (n > k && !strcmp(name + n - k, units[i].suffix)) {
            snprintf(name + n - k, 9, "_seconds");
            return units[i].decimals;
        }
    }
    return 0;
}

void model_stats(model_t *m, const msg_stats_t *st)
{
    for (size_t k = 0; k < st->n; k++) {
        const msg_stat_t *e = &st->entries[k];
        char name[220];
        char base[160];
        sanitize(base, sizeof base, e->name, true);
        snprintf(name, 200, "tokmon_%s", base);
        size_t nl = strlen(name);
        if (nl > 6 && !strcmp(name + nl - 6, "_total"))
            name[nl - 6] = '\0'; /* counters get it back; a gauge must not have it */
        int decimals = base_unit(name);
        char keys[MAX_LABELS][128];
        span_t vals[MAX_LABELS];
        snprintf(keys[0], sizeof keys[0], "daemon");
        vals[0] = st->daemon;
        snprintf(keys[1], sizeof keys[1], "instance_src");
        vals[1] = st->src;
        size_t n = 2;
        for (size_t i = 0; i < e->nlabels && n < MAX_LABELS; i++, n++) {
            sanitize(keys[n], sizeof keys[n], e->labels[i].key, false);
            if (!keys[n][0] || !strcmp(keys[n], "daemon") || !strcmp(keys[n], "instance_src"))
                snprintf(keys[n], sizeof keys[n], "label_%zu", i);
            vals[n] = e->labels[i].value;
        }
        family_t *f = dynamic_family(m, name, "A tokmon stage's own counter.",
                                     e->gauge ? F_GAUGE : F_COUNTER, V_INT, decimals, keys, n);
        if (!f)
            continue;
        series_at(m, f, vals)->v.i = e->value;
    }
}

/* ---- derived families --------------------------------------------------------------- */

typedef struct {
    span_t id;
    int64_t cost;
    uint64_t tokens;
} top_t;

static int cmp_top(const void *a, const void *b)
{
    const top_t *x = a, *y = b;
    return x->cost < y->cost ? 1 : x->cost > y->cost ? -1 : 0;
}

static void refresh_top(model_t *m, ktab_t *t, family_t *fc, family_t *ft, family_t *ff,
                        int64_t today)
{
    ktab_clear(fc->series);
    ktab_clear(ft->series);
    ktab_clear(ff->series);
    size_t n = 0, cap = ktab_count(t) + 1;
    top_t *v = xmalloc(cap * sizeof *v);
    size_t it = 0;
    dayuse_t *d;
    while ((d = ktab_next(t, &it))) {
        if (d->day != today)
            continue;
        v[n++] = (top_t){ ktab_key(d), d->cost, d->tokens };
    }
    qsort(v, n, sizeof *v, cmp_top);
    size_t k = (size_t)m->cfg->exporter.top_k;
    int64_t ocost = 0;
    uint64_t otok = 0;
    for (size_t i = 0; i < n; i++) {
        if (i < k) {
            series_at(m, fc, &v[i].id)->v.i = v[i].cost;
            series_at(m, ft, &v[i].id)->v.i = (int64_t)v[i].tokens;
        } else {
            ocost = sat_add(ocost, v[i].cost);
            otok += v[i].tokens;
        }
    }
    span_t other = span_cstr(OTHER);
    if (n > k) {
        series_at(m, fc, &other)->v.i = ocost;
        series_at(m, ft, &other)->v.i = (int64_t)otok;
    }
    series_at(m, ff, NULL)->v.i = n > k ? (int64_t)(n - k) : 0;
    free(v);
}

/* The key name \xff scope value of a budget instance, in m->key. */
static void budget_key(model_t *m, const bstate_t *b)
{
    mbuf_reset(&m->key);
    mbuf_append(&m->key, b->name, strlen(b->name));
    mbuf_append(&m->key, "\xff", 1);
    mbuf_append(&m->key, b->value, strlen(b->value));
}

void model_refresh(model_t *m, int64_t now_ns)
{
    family_t *bf[] = { m->b_limit, m->b_spent, m->b_ratio, m->b_fc, m->b_exh, m->q_subj };
    for (size_t i = 0; i < sizeof bf / sizeof bf[0]; i++)
        ktab_clear(bf[i]->series);
    /* each budget instance's newest period; then its parts (one per
     * aggregator shard) of that period summed */
    typedef struct {
        int64_t start, exhaust;
    } inst_t;
    ktab_t *inst = ktab_new(sizeof(inst_t), NULL);
    size_t it = 0;
    bstate_t *b;
    while ((b = ktab_next(m->budgets, &it))) {
        budget_key(m, b);
        inst_t *p = ktab_put(inst, m->key.data, m->key.len, ktab_hash(m->key.data, m->key.len), NULL);
        if (b->period_start > p->start) {
            p->start = b->period_start;
            p->exhaust = 0;
        }
    }
    it = 0;
    while ((b = ktab_next(m->budgets, &it))) {
        budget_key(m, b);
        inst_t *p = ktab_get(inst, m->key.data, m->key.len, ktab_hash(m->key.data, m->key.len));
        if (p->start != b->period_start)
            continue;
        span_t v[5] = { span_cstr(b->name), span_cstr(b->scope), span_cstr(b->value),
                        span_cstr(b->period), span_cstr("avg") };
        series_t *sp = series_at(m, m->b_spent, v);
        sp->v.i = sat_add(sp->v.i, b->spent);
        series_t *l = series_at(m, m->b_limit, v);
        if (b->limit > l->v.i)
            l->v.i = b->limit;
        series_t *fa = series_at(m, m->b_fc, v);
        fa->v.i = sat_add(fa->v.i, b->f_avg);
        v[4] = span_cstr("rate");
        series_t *fr = series_at(m, m->b_fc, v);
        fr->v.i = sat_add(fr->v.i, b->f_rate);
        /* with shards, the earliest part to run out stands for the whole */
        if (b->exhaust > 0 && (!p->exhaust || b->exhaust < p->exhaust))
            p->exhaust = b->exhaust;
    }
    it = 0;
    series_t *s;
    while ((s = ktab_next(m->b_spent->series, &it))) {
        span_t v[4] = { span_cstr(s->values[0]), span_cstr(s->values[1]), span_cstr(s->values[2]),
                        span_cstr(s->values[3]) };
        series_t *l = series_at(m, m->b_limit, v);
        series_at(m, m->b_ratio, v)->v.d = l->v.i > 0 ? (double)s->v.i / (double)l->v.i : 0;
        mbuf_reset(&m->key);
        mbuf_append(&m->key, s->values[0], strlen(s->values[0]));
        mbuf_append(&m->key, "\xff", 1);
        mbuf_append(&m->key, s->values[2], strlen(s->values[2]));
        inst_t *p = ktab_get(inst, m->key.data, m->key.len, ktab_hash(m->key.data, m->key.len));
        if (p && p->exhaust > 0) {
            double secs = (double)(p->exhaust - now_ns) / 1e9;
            series_at(m, m->b_exh, v)->v.d = secs > 0 ? secs : 0;
        }
    }
    ktab_destroy(&inst);
    /* quota subjects per state: a subject's worst state over its windows */
    ktab_t *worst = ktab_new(sizeof(int), NULL);
    it = 0;
    int *st;
    while ((st = ktab_next(m->quotas, &it))) {
        span_t k = ktab_key(st);
        const char *sep1 = memchr(k.p, KEY_SEP, k.len);
        const char *sep2 = sep1 ? memchr(sep1 + 1, KEY_SEP, (size_t)(k.p + k.len - sep1 - 1)) : NULL;
        size_t klen = sep2 ? (size_t)(sep2 - k.p) : k.len;
        int *w = ktab_put(worst, k.p, klen, ktab_hash(k.p, klen), NULL);
        if (*st > *w)
            *w = *st;
    }
    static const char *const sname[3] = { "ok", "warning", "exceeded" };
    static const char *const subjects[2] = { "user", "account" };
    for (int sj = 0; sj < 2; sj++)
        for (int r = 1; r <= 2; r++) {
            span_t v[2] = { span_cstr(subjects[sj]), span_cstr(sname[r]) };
            series_at(m, m->q_subj, v)->v.i = 0;
        }
    it = 0;
    while ((st = ktab_next(worst, &it))) {
        span_t k = ktab_key(st);
        const char *sep = memchr(k.p, KEY_SEP, k.len);
        span_t v[2] = { span_make(k.p, sep ? (size_t)(sep - k.p) : k.len), span_cstr(sname[*st]) };
        series_at(m, m->q_subj, v)->v.i++;
    }
    ktab_destroy(&worst);
    int64_t today = cal_start(m->cal, CAL_DAY, now_ns);
    if (m->u_cost)
        refresh_top(m, m->users, m->u_cost, m->u_tok, m->u_folded, today);
    if (m->a_cost)
        refresh_top(m, m->accounts, m->a_cost, m->a_tok, m->a_folded, today);
}

/* ---- rendering --------------------------------------------------------------------- */

static void put_u64(mbuf_t *b, uint64_t v)
{
    char buf[24];
    int i = (int)sizeof buf;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    mbuf_append(b, buf + i, sizeof buf - (size_t)i);
}

/* v / 10^decimals, exactly, without trailing zeros */
static void put_scaled(mbuf_t *b, int64_t v, int decimals)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (v < 0)
        mbuf_append(b, "-", 1);
    if (!decimals) {
        put_u64(b, a);
        return;
    }
    uint64_t p = 1;
    for (int i = 0; i < decimals; i++)
        p *= 10;
    put_u64(b, a / p);
    uint64_t frac = a % p;
    if (!frac)
        return;
    char d[24];
    int n = decimals;
    for (int i = n - 1; i >= 0; i--) {
        d[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    while (n > 0 && d[n - 1] == '0')
        n--;
    mbuf_append(b, ".", 1);
    mbuf_append(b, d, (size_t)n);
}

static void put_double(mbuf_t *b, double d)
{
    if (isnan(d)) {
        mbuf_append(b, "NaN", 3);
    } else if (isinf(d)) {
        mbuf_append(b, d > 0 ? "+Inf" : "-Inf", 4);
    } else if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        put_scaled(b, (int64_t)d, 0);
    } else {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%.17g", d);
        mbuf_append(b, buf, (size_t)n);
    }
}

static void put_str(mbuf_t *b, const char *s) { mbuf_append(b, s, strlen(s)); }

static void put_help(mbuf_t *b, const char *name, const char *help, bool om)
{
    put_str(b, "# HELP ");
    put_str(b, name);
    mbuf_append(b, " ", 1);
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            put_str(b, "\\\\");
        else if (*p == '\n')
            put_str(b, "\\n");
        else if (*p == '"' && om)
            put_str(b, "\\\"");
        else
            mbuf_append(b, p, 1);
    }
    mbuf_append(b, "\n", 1);
}

/* name{labels[,extra]} */
static void put_series(mbuf_t *b, const char *name, const char *suffix, const series_t *s,
                       const char *extra_name, const char *extra_value)
{
    put_str(b, name);
    if (suffix)
        put_str(b, suffix);
    bool any = s->text[0] != '\0';
    if (any || extra_name) {
        mbuf_append(b, "{", 1);
        put_str(b, s->text);
        if (extra_name) {
            if (any)
                mbuf_append(b, ",", 1);
            put_str(b, extra_name);
            put_str(b, "=\"");
            put_str(b, extra_value);
            mbuf_append(b, "\"", 1);
        }
        mbuf_append(b, "}", 1);
    }
    mbuf_append(b, " ", 1);
}

static void put_value(mbuf_t *b, const family_t *f, const series_t *s)
{
    if (f->vk == V_INT)
        put_scaled(b, s->v.i, f->decimals);
    else
        put_double(b, s->v.d);
    mbuf_append(b, "\n", 1);
}

static void render_family(const family_t *f, bool om, mbuf_t *b)
{
    if (!ktab_count(f->series))
        return;
    static const char *const tname[] = { "counter", "gauge", "histogram", "summary" };
    char total[256];
    snprintf(total, sizeof total, "%s_total", f->name);
    const char *head = f->type == F_COUNTER && !om ? total : f->name;
    put_help(b, head, f->help, om);
    put_str(b, "# TYPE ");
    put_str(b, head);
    mbuf_append(b, " ", 1);
    put_str(b, tname[f->type]);
    mbuf_append(b, "\n", 1);
    size_t it = 0;
    const series_t *s;
    while ((s = ktab_next(f->series, &it))) {
        switch (f->type) {
        case F_COUNTER:
        case F_GAUGE:
            put_series(b, f->name, f->type == F_COUNTER ? "_total" : NULL, s, NULL, NULL);
            put_value(b, f, s);
            break;
        case F_HISTOGRAM: {
            uint64_t cum = 0;
            for (int i = 0; i <= NB; i++) {
                cum += s->h->b[i];
                put_series(b, f->name, "_bucket", s, "le", bucket_le[i]);
                put_u64(b, cum);
                mbuf_append(b, "\n", 1);
            }
            put_series(b, f->name, "_sum", s, NULL, NULL);
            put_scaled(b, s->h->sum_us, 6);
            mbuf_append(b, "\n", 1);
            put_series(b, f->name, "_count", s, NULL, NULL);
            put_u64(b, s->h->count);
            mbuf_append(b, "\n", 1);
            break;
        }
        case F_SUMMARY:
            for (int i = 0; i < MSG_FLUSH_NQ; i++) {
                put_series(b, f->name, NULL, s, "quantile", quantile_s[i]);
                put_double(b, s->s->q[i]);
                mbuf_append(b, "\n", 1);
            }
            put_series(b, f->name, "_sum", s, NULL, NULL);
            put_double(b, s->s->sum);
            mbuf_append(b, "\n", 1);
            put_series(b, f->name, "_count", s, NULL, NULL);
            put_double(b, s->s->count);
            mbuf_append(b, "\n", 1);
            break;
        }
    }
}

void model_render(model_t *m, bool openmetrics, int64_t now_ns, mbuf_t *out)
{
    model_refresh(m, now_ns);
    mbuf_reset(out);
    for (size_t i = 0; i < m->nfam; i++)
        render_family(m->fam[i], openmetrics, out);
    if (openmetrics)
        put_str(out, "# EOF\n");
}

/* ---- samples for remote write -------------------------------------------------------- */

/* labels of s sorted by name, with one extra (le, quantile) in its place */
static size_t sorted_labels(const family_t *f, const series_t *s, const char *xn, const char *xv,
                            model_label_t *out)
{
    size_t n = 0;
    bool put = xn == NULL;
    for (size_t i = 0; i < f->nlabels; i++) {
        size_t k = f->order[i];
        if (!put && strcmp(xn, f->labels[k]) < 0) {
            out[n++] = (model_label_t){ xn, xv };
            put = true;
        }
        out[n++] = (model_label_t){ f->labels[k], s->values[k] };
    }
    if (!put)
        out[n++] = (model_label_t){ xn, xv };
    return n;
}

static double value_of(const family_t *f, const series_t *s)
{
    if (f->vk == V_DBL)
        return s->v.d;
    /* one division by an exact power of ten: correctly rounded, the same
     * double a scraper parses from the page's exact decimal (dividing by
     * 10 nine times drifts by an ulp in about half the cases) */
    double p = 1;
    for (int i = 0; i < f->decimals; i++)
        p *= 10;
    return (double)s->v.i / p;
}

void model_each_sample(const model_t *m, model_sample_fn fn, void *arg)
{
    model_label_t lab[MAX_LABELS + 1];
    char name[300];
    for (size_t i = 0; i < m->nfam; i++) {
        const family_t *f = m->fam[i];
        size_t it = 0;
        const series_t *s;
        while ((s = ktab_next(f->series, &it))) {
            size_t n;
            switch (f->type) {
            case F_COUNTER:
                snprintf(name, sizeof name, "%s_total", f->name);
                n = sorted_labels(f, s, NULL, NULL, lab);
                fn(arg, name, lab, n, value_of(f, s));
                break;
            case F_GAUGE:
                n = sorted_labels(f, s, NULL, NULL, lab);
                fn(arg, f->name, lab, n, value_of(f, s));
                break;
            case F_HISTOGRAM: {
                uint64_t cum = 0;
                snprintf(name, sizeof name, "%s_bucket", f->name);
                for (int b = 0; b <= NB; b++) {
                    cum += s->h->b[b];
                    n = sorted_labels(f, s, "le", bucket_le[b], lab);
                    fn(arg, name, lab, n, (double)cum);
                }
                n = sorted_labels(f, s, NULL, NULL, lab);
                snprintf(name, sizeof name, "%s_sum", f->name);
                fn(arg, name, lab, n, (double)s->h->sum_us / 1e6);
                snprintf(name, sizeof name, "%s_count", f->name);
                fn(arg, name, lab, n, (double)s->h->count);
                break;
            }
            case F_SUMMARY:
                for (int q = 0; q < MSG_FLUSH_NQ; q++) {
                    n = sorted_labels(f, s, "quantile", quantile_s[q], lab);
                    fn(arg, f->name, lab, n, s->s->q[q]);
                }
                n = sorted_labels(f, s, NULL, NULL, lab);
                snprintf(name, sizeof name, "%s_sum", f->name);
                fn(arg, name, lab, n, s->s->sum);
                snprintf(name, sizeof name, "%s_count", f->name);
                fn(arg, name, lab, n, s->s->count);
                break;
            }
        }
    }
    (void)quantiles;
}

void model_totals(const model_t *m, model_totals_t *t) { *t = m->tot; }

size_t model_series(const model_t *m)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nfam; i++)
        n += ktab_count(m->fam[i]->series);
    return n;
}

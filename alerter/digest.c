/* digest: see digest.h. */
#include "digest.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static void put(mbuf_t *b, const char *s) { mbuf_append(b, s, strlen(s)); }

static void usd(char *out, size_t cap, int64_t nusd)
{
    int64_t a = nusd < 0 ? -nusd : nusd;
    snprintf(out, cap, "%s$%" PRId64 ".%02" PRId64, nusd < 0 ? "-" : "", a / 1000000000,
             (a % 1000000000) / 10000000);
}

typedef struct {
    mbuf_t *b;
    const char *kind;
    int n;
} top_ctx_t;

static void top_line(void *arg, const char *kind, span_t id, int64_t cost, uint64_t tokens)
{
    top_ctx_t *t = arg;
    if (strcmp(kind, t->kind))
        return;
    char line[512], money[48];
    usd(money, sizeof money, cost);
    snprintf(line, sizeof line, "  %d. %.*s  %s  %" PRIu64 " tokens\n", ++t->n, (int)id.len,
             id.p ? id.p : "", money, tokens);
    put(t->b, line);
}

typedef struct {
    mbuf_t *b;
    int n;
} fired_ctx_t;

typedef fired_ctx_t budget_ctx_t;

static void budget_line(void *arg, span_t name, const char *scope, span_t value, const char *period,
                        int64_t spent, int64_t limit)
{
    budget_ctx_t *c = arg;
    char line[512], s[48], l[48];
    usd(s, sizeof s, spent);
    usd(l, sizeof l, limit);
    snprintf(line, sizeof line, "  %.*s (%s%s%.*s, this %s): %s of %s, %d%%\n", (int)name.len,
             name.p ? name.p : "", scope, value.len ? " " : "", (int)value.len, value.p ? value.p : "",
             period, s, l, limit > 0 ? (int)((__int128)spent * 100 / limit) : 0);
    put(c->b, line);
    c->n++;
}

static void fired_line(void *arg, const char *alertname, const char *summary, int64_t at)
{
    fired_ctx_t *f = arg;
    (void)at;
    char line[512];
    snprintf(line, sizeof line, "  - %s: %s\n", alertname, summary);
    put(f->b, line);
    f->n++;
}

void digest_build(const rules_t *r, const engine_t *e, int64_t from, int64_t to, const char *day,
                  char *subject, size_t subjcap, mbuf_t *b)
{
    rules_totals_t t;
    rules_totals(r, from, to, &t);
    char money[48], line[512];
    usd(money, sizeof money, t.cost_nusd);
    snprintf(subject, subjcap, "tokmon daily digest %s: %s, %" PRIu64 " tokens", day, money, t.tokens);
    mbuf_reset(b);
    snprintf(line, sizeof line,
             "LLM usage on %s\n\n  cost      %s\n  tokens    %" PRIu64 "\n  requests  %" PRIu64
             "\n  errors    %" PRIu64 "\n\n",
             day, money, t.tokens, t.requests, t.errors);
    put(b, line);
    static const char *const kinds[2] = { "user", "model" };
    static const char *const titles[2] = { "Top users by cost:\n", "Top models by cost:\n" };
    for (int k = 0; k < 2; k++) {
        put(b, titles[k]);
        top_ctx_t tc = { b, kinds[k], 0 };
        rules_top(r, from, to, 5, top_line, &tc);
        if (!tc.n)
            put(b, "  (none)\n");
        put(b, "\n");
    }
    put(b, "Budgets at the end of the day:\n");
    budget_ctx_t bc = { b, 0 };
    rules_budgets(r, to - 1, budget_line, &bc); /* as the day ended */
    if (!bc.n)
        put(b, "  (none)\n");
    put(b, "\n");
    put(b, "Alerts that fired:\n");
    fired_ctx_t fc = { b, 0 };
    engine_fired_between(e, from, to, fired_line, &fc);
    if (!fc.n)
        put(b, "  (none)\n");
    snprintf(line, sizeof line, "\nFiring now: %zu\n", engine_firing(e));
    put(b, line);
}

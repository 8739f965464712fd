/* tokmonctl: the operator's command line. keygen makes UDP signing keys and
 * CURVE key pairs; stats prints every stage's own counters from the bus;
 * quota, budgets, top and usage ask the aggregator (every shard when the
 * answer is spread over them, see query_client.h), alerts and silence ask
 * the alerter's control socket; each prints a table or JSON. */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "auth.h"
#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "mp2json.h"
#include "msg.h"
#include "query_client.h"
#include "tmtime.h"
#include "xalloc.h"

#define NAME "tokmonctl"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " [-c FILE] COMMAND [options]\n\n"
            "Commands:\n"
            "  keygen [--id ID]        a key for signed datagrams, as a line for the\n"
            "                          [collectd] auth_keys file (give the same line to\n"
            "                          tokmon-emit --key-file); ID defaults to k1\n"
            "  keygen --curve          a CURVE key pair for the bus (curve = on)\n"
            "  stats [--json] [--timeout SEC]\n"
            "                          every running stage's own counters, from `stats`\n"
            "  quota USER | quota --account ACCOUNT\n"
            "                          a user's or an account's quota, per window and unit\n"
            "  budgets [NAME]          every budget's status in its current period\n"
            "  top --by user|account|model|project [--metric M] [--window DURATION] [-n N]\n"
            "                          the keys that used the most\n"
            "  usage --by user|account|model|project [--id KEY] [--window DURATION]\n"
            "                          usage per key, or of one key\n"
            "  (the aggregator answers these four; each takes --json, --timeout SECONDS,\n"
            "  --endpoint EP and --help)\n"
            "  alerts [--state firing|pending]\n"
            "                          the alerts the alerter holds\n"
            "  silence add MATCHER... --duration DURATION [--comment TEXT] [--by NAME]\n"
            "                          keep the matching alerts out of notifications\n"
            "  silence list            the active silences\n"
            "  silence expire ID       end a silence now\n"
            "  (the alerter answers these; each takes --json, --timeout SECONDS,\n"
            "  --endpoint EP and --help)\n\n"
            "  -c, --config FILE       configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -h, --help              this text\n"
            "  -V, --version           print the version\n");
}

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {
        { "id", required_argument, NULL, 'i' }, { "curve", no_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },     { NULL, 0, NULL, 0 },
    };
    const char *id = "k1";
    bool curve = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "i:h", opts, NULL)) != -1) {
        switch (o) {
        case 'i':
            id = optarg;
            break;
        case 'C':
            curve = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (curve) {
        char pub[41], sec[41];
        if (zmq_curve_keypair(pub, sec) != 0) {
            fprintf(stderr, NAME ": this libzmq has no CURVE support: %s\n", zmq_strerror(zmq_errno()));
            return 1;
        }
        printf("public = %s\nsecret = %s\n", pub, sec);
        return 0;
    }
    char line[256];
    if (auth_keygen(id, line, sizeof line) < 0) {
        fprintf(stderr, NAME ": key id '%s': use 1 to %d of A-Z a-z 0-9 _ . -\n", id, AUTH_MAX_KEY_ID);
        return 2;
    }
    fputs(line, stdout);
    return 0;
}

typedef struct {
    char *src;
    json_t *stats;
} seen_t;

static int cmd_stats(cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'j' }, { "timeout", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    bool as_json = false;
    double timeout = 2.0;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "jt:h", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 'j':
            as_json = true;
            break;
        case 't':
            timeout = strtod(optarg, &end);
            if (*end || timeout <= 0) {
                fprintf(stderr, NAME ": --timeout wants seconds\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    char err[512];
    void *ctx = zmq_ctx_new();
    bus_sub_t *sub = bus_sub_new(ctx, 1000, err, sizeof err);
    buscfg_t bus;
    if (!sub || buscfg_init(&bus, ctx, cfg, false, true, err, sizeof err) < 0 ||
        buscfg_client_socket(&bus, bus_sub_socket(sub)) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    size_t neps = 0;
    for (int k = 0; k < CFG_NPEERS; k++)
        for (size_t i = 0; i < cfg->bus.peers[k].pub.n; i++, neps++)
            bus_sub_connect(sub, cfg->bus.peers[k].pub.v[i]);
    bus_sub_subscribe(sub, "stats");

    /* each publisher answers a new stats subscription at once; wait for the
     * answers until the timeout */
    seen_t seen[64];
    size_t nseen = 0;
    int64_t deadline = tmtime_mono_ns() + (int64_t)(timeout * 1e9);
    static msg_stat_t entries[MSG_MAX_STATS];
    for (;;) {
        int64_t left = deadline - tmtime_mono_ns();
        if (left <= 0)
            break;
        zmq_pollitem_t it = { bus_sub_socket(sub), 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, (long)(left / 1000000) + 1) <= 0)
            continue;
        bus_msg_t m;
        int r;
        while ((r = bus_sub_recv(sub, &m, ZMQ_DONTWAIT, err, sizeof err)) != 0) {
            msg_stats_t s;
            if (r < 0 || msg_stats_unpack(m.body, &s, entries, MSG_MAX_STATS, err, sizeof err) < 0)
                continue;
            size_t i;
            for (i = 0; i < nseen; i++)
                if (span_eq_cstr(m.src, seen[i].src))
                    break;
            if (i == nseen) {
                if (nseen == 64)
                    continue;
                seen[nseen].src = xstrndup(m.src.p, m.src.len);
                seen[nseen++].stats = NULL;
            }
            json_decref(seen[i].stats);
            seen[i].stats = mp2json_stats(&s);
        }
        if (nseen == neps)
            break; /* every publisher of [bus] answered */
    }
    bus_sub_destroy(&sub);
    buscfg_close(&bus);
    zmq_ctx_term(ctx);
    if (nseen == 0) {
        fprintf(stderr, NAME ": no stage answered on the %zu publishers of [bus] within %.1f s\n",
                neps, timeout);
        return 1;
    }
    if (as_json) {
        json_t *a = json_array();
        for (size_t i = 0; i < nseen; i++)
            json_array_append(a, seen[i].stats);
        char *s = json_dumps(a, JSON_COMPACT);
        puts(s);
        free(s);
        json_decref(a);
    } else {
        for (size_t i = 0; i < nseen; i++) {
            json_t *st = seen[i].stats;
            printf("%s (%s, pid %lld)\n", json_string_value(json_object_get(st, "daemon")),
                   seen[i].src, (long long)json_integer_value(json_object_get(st, "pid")));
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(st, "counters"), k, c)
            {
                char name[300];
                int n = snprintf(name, sizeof name, "%s", json_string_value(json_object_get(c, "name")));
                const char *lk;
                json_t *lv;
                bool first = true;
                json_object_foreach(json_object_get(c, "labels"), lk, lv)
                {
                    n += snprintf(name + n, sizeof name - (size_t)n, "%s%s=\"%s\"", first ? "{" : ",",
                                  lk, json_string_value(lv));
                    first = false;
                    if ((size_t)n >= sizeof name)
                        break;
                }
                if (!first && (size_t)n < sizeof name - 1)
                    snprintf(name + n, sizeof name - (size_t)n, "}");
                printf("  %-64s %lld\n", name, (long long)json_integer_value(json_object_get(c, "value")));
            }
        }
    }
    for (size_t i = 0; i < nseen; i++) {
        free(seen[i].src);
        json_decref(seen[i].stats);
    }
    return 0;
}

/* ---- questions to the aggregator: quota, budgets, top, usage ------------- */

/* The options every question takes. */
typedef struct {
    const char *cfg_path;
    bool json;
    double timeout; /* seconds */
    const char *endpoint;
    bool alerter; /* ask [alerter] control, not [aggregator] query */
} qopts_t;

#define QOPTS_LONG                                                                                 \
    { "json", no_argument, NULL, 'j' }, { "timeout", required_argument, NULL, 't' },               \
        { "endpoint", required_argument, NULL, 'e' }, { "help", no_argument, NULL, 'h' }

#define QOPTS_HELP                                                                                 \
    "  --json              print the answer as one JSON object (keys below)\n"                     \
    "  --timeout SECONDS   wait this long for the aggregator (default 5)\n"                        \
    "  --endpoint EP       ask EP instead of [aggregator] query (the config is then not\n"         \
    "                      read); as there, one endpoint per shard separated by commas,\n"         \
    "                      or one tcp endpoint whose port + i serves shard i\n"                    \
    "  -h, --help          this text\n"

#define QJSON_HELP                                                                                 \
    "Every answer has \"ok\" (true), \"shards\" (how many shards were merged) and\n"               \
    "\"shard\" (the one shard that answered, or null when the answer sums several).\n"             \
    "Money is in nano-dollars (integers) and, in the key with _usd in place of _nusd\n"            \
    "(or with _usd appended), in dollars. Times are unix nanoseconds.\n"

/* 1: one of the common options, handled; 0: not one; -1: a bad value */
static int qopt(int o, qopts_t *q)
{
    char *end;
    switch (o) {
    case 'j':
        q->json = true;
        return 1;
    case 'e':
        q->endpoint = optarg;
        return 1;
    case 't':
        errno = 0;
        q->timeout = strtod(optarg, &end);
        if (end == optarg || *end || errno || !(q->timeout > 0 && q->timeout <= 86400)) {
            fprintf(stderr, NAME ": --timeout wants seconds, more than 0 and at most 86400\n");
            return -1;
        }
        return 1;
    default:
        return 0;
    }
}

/* "300", "300s", "5m", "1h", "1d" in seconds, from 1 s to INT32_MAX; -1 when bad */
static int64_t parse_duration(const char *s)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    int64_t mul = !*end || !strcmp(end, "s") ? 1
                  : !strcmp(end, "m")        ? 60
                  : !strcmp(end, "h")        ? 3600
                  : !strcmp(end, "d")        ? 86400
                                             : 0;
    if (errno || !mul || v == 0 || v > INT32_MAX / (unsigned long long)mul)
        return -1;
    return (int64_t)v * mul;
}

static int parse_count(const char *s, int64_t *n)
{
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > INT32_MAX)
        return -1;
    *n = (int64_t)v;
    return 0;
}

static bool by_ok(const char *by)
{
    return !strcmp(by, "user") || !strcmp(by, "account") || !strcmp(by, "model") ||
           !strcmp(by, "project");
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* query_client words its errors for the aggregator; the alerter's
 * control socket speaks the same protocol, so name the peer asked. */
static void say_alerter(char *err)
{
    static const char was[] = "the aggregator", now[] = "the alerter";
    char *p = strstr(err, was);
    if (!p)
        return;
    memcpy(p, now, sizeof now - 1);
    memmove(p + sizeof now - 1, p + sizeof was - 1, strlen(p + sizeof was - 1) + 1);
}

/* Asks the aggregator req: every shard, or the shard owning user when
 * owner is set; or the alerter (q->alerter), which has one endpoint. 0, or
 * the exit status after saying what went wrong. */
static int ask(const qopts_t *q, const mbuf_t *req, const char *owner, query_client_answers_t *ans)
{
    char err[4096];
    *ans = (query_client_answers_t){ 0 };
    cfg_t *cfg = NULL;
    const char *eps = q->endpoint;
    if (!eps) {
        if (!(cfg = cfg_load(q->cfg_path, err, sizeof err))) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        eps = q->alerter ? cfg->alerter.control : cfg->aggregator.query;
    }
    if (q->alerter && (!*eps || strchr(eps, ','))) {
        fprintf(stderr, NAME ": %s: the alerter answers on one endpoint%s\n",
                q->endpoint ? "--endpoint" : "[alerter] control",
                *eps ? ", not a list" : ", and it is empty");
        cfg_destroy(&cfg);
        return q->endpoint ? 2 : 1;
    }
    query_client_t *c = query_client_new(eps, (int64_t)(q->timeout * 1e9), err, sizeof err);
    cfg_destroy(&cfg);
    if (!c) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    int rc = owner ? query_client_ask_owner(c, req->data, req->len, span_cstr(owner), ans, err,
                                            sizeof err)
                   : query_client_ask_all(c, req->data, req->len, ans, err, sizeof err);
    query_client_destroy(&c);
    if (rc < 0) {
        if (q->alerter)
            say_alerter(err);
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    return 0;
}

static int bad_answer(const query_client_answer_t *a, const char *err)
{
    fprintf(stderr, NAME ": the answer from %s: %s\n", a->endpoint, err);
    return 1;
}

/* ---- output --------------------------------------------------------------- */

/* "$1.25", "-$0.000000001", "$10" */
static const char *fmt_usd(int64_t nusd, char *buf, size_t cap)
{
    uint64_t a = nusd < 0 ? -(uint64_t)nusd : (uint64_t)nusd;
    int n =
        snprintf(buf, cap, "%s$%llu", nusd < 0 ? "-" : "", (unsigned long long)(a / 1000000000u));
    uint64_t frac = a % 1000000000u;
    if (frac && n > 0 && (size_t)n < cap) {
        int digits = 9;
        while (frac % 10 == 0)
            frac /= 10, digits--;
        snprintf(buf + n, cap - (size_t)n, ".%0*llu", digits, (unsigned long long)frac);
    }
    return buf;
}

/* RFC 3339 UTC to the second, "-" for 0 */
static const char *fmt_time(int64_t ns, char *buf, size_t cap)
{
    if (ns <= 0)
        return "-";
    time_t t = (time_t)(ns / TMTIME_NS_PER_SEC);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

static json_t *usd_json(int64_t nusd)
{
    return json_real((double)nusd / 1e9);
}

static void print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15));
    puts(s);
    free(s);
    json_decref(j);
}

/* The head every JSON answer starts with. */
static json_t *json_head(const query_client_answers_t *ans, size_t used)
{
    json_t *j = json_object();
    json_object_set_new(j, "ok", json_true());
    json_object_set_new(j, "shard", used == 1 ? json_integer(ans->v[0].shard) : json_null());
    json_object_set_new(j, "shards", json_integer(ans->v[0].shards));
    return j;
}

/* A table with columns aligned; align holds 'l' or 'r' per column. Cells
 * are added row by row, the header first. */
typedef struct {
    const char *align;
    size_t ncol;
    char **cells;
    size_t n, cap;
} table_t;

static void table_add(table_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void table_add(table_t *t, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert(n >= 0);
    char *s = xmalloc((size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?'; /* keys come from the network */
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->cells = xreallocarray(t->cells, t->cap, sizeof *t->cells);
    }
    t->cells[t->n++] = s;
}

/* display width: UTF-8 lead bytes */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80;
    return w;
}

static void table_print(table_t *t)
{
    size_t w[16] = { 0 };
    assert(t->ncol <= 16 && t->n % t->ncol == 0);
    for (size_t i = 0; i < t->n; i++) {
        size_t k = width(t->cells[i]);
        if (k > w[i % t->ncol])
            w[i % t->ncol] = k;
    }
    for (size_t i = 0; i < t->n; i++) {
        size_t c = i % t->ncol, pad = w[c] - width(t->cells[i]);
        bool last = c == t->ncol - 1;
        if (t->align[c] == 'r')
            printf("%*s%s", (int)pad, "", t->cells[i]);
        else
            printf("%s%*s", t->cells[i], last ? 0 : (int)pad, "");
        fputs(last ? "\n" : "  ", stdout);
        free(t->cells[i]);
    }
    free(t->cells);
    t->cells = NULL;
    t->n = t->cap = 0;
}

/* ---- quota ---------------------------------------------------------------- */

static void quota_help(FILE *f)
{
    fprintf(f, "Usage: " NAME " [-c FILE] quota [options] USER\n"
               "       " NAME " [-c FILE] quota [options] --account ACCOUNT\n\n"
               "A user's or an account's quota: usage against the limits of [quota] per\n"
               "window (day, month, the sliding window) and unit (tokens, usd). A user is\n"
               "asked of the shard that reads its events; an account of every shard, its\n"
               "usage summed and its states judged again from the sums.\n\n"
               "  --account ACCOUNT   an account instead of a user\n" QOPTS_HELP "\n"
               "JSON: {ok, shard, shards, subject, id, known, state, warn_pct, now,\n"
               "window_requests, windows: [{window, unit, used, limit, remaining, state,\n"
               "start, reset}, ...]}; limit 0 is no limit (remaining is then null); for the\n"
               "unit usd the window also has used_usd, limit_usd and remaining_usd. reset is\n"
               "when the window starts again (the sliding window: the next expiry, 0: "
               "none).\n" QJSON_HELP);
}

static json_t *quota_json(const query_client_answers_t *ans, const query_client_quota_t *q)
{
    json_t *j = json_head(ans, ans->n);
    json_object_set_new(j, "subject", mp2json_str(q->subject));
    json_object_set_new(j, "id", mp2json_str(q->id));
    json_object_set_new(j, "known", json_boolean(q->known));
    json_object_set_new(j, "state", json_string(query_client_state_name(q->state)));
    json_object_set_new(j, "warn_pct", json_integer(q->warn_pct));
    json_object_set_new(j, "now", json_integer(q->now));
    json_object_set_new(j, "window_requests", json_integer((json_int_t)q->window_requests));
    json_t *a = json_array();
    for (size_t i = 0; i < q->nw; i++) {
        const query_client_qwin_t *w = &q->w[i];
        bool usd = span_eq_cstr(w->unit, "usd");
        int64_t rem = w->limit > w->used ? w->limit - w->used : 0;
        json_t *o = json_object();
        json_object_set_new(o, "window", mp2json_str(w->window));
        json_object_set_new(o, "unit", mp2json_str(w->unit));
        json_object_set_new(o, "used", json_integer(w->used));
        json_object_set_new(o, "limit", json_integer(w->limit));
        json_object_set_new(o, "remaining", w->limit > 0 ? json_integer(rem) : json_null());
        json_object_set_new(o, "state", json_string(query_client_state_name(w->state)));
        json_object_set_new(o, "start", json_integer(w->start));
        json_object_set_new(o, "reset", json_integer(w->reset));
        if (usd) {
            json_object_set_new(o, "used_usd", usd_json(w->used));
            json_object_set_new(o, "limit_usd", usd_json(w->limit));
            json_object_set_new(o, "remaining_usd", w->limit > 0 ? usd_json(rem) : json_null());
        }
        json_array_append_new(a, o);
    }
    json_object_set_new(j, "windows", a);
    return j;
}

/* a quantity of unit: tokens as an integer, usd as dollars */
static const char *fmt_amount(span_t unit, int64_t v, char *buf, size_t cap)
{
    if (span_eq_cstr(unit, "usd"))
        return fmt_usd(v, buf, cap);
    snprintf(buf, cap, "%lld", (long long)v);
    return buf;
}

static void quota_table(const query_client_quota_t *q)
{
    printf("%.*s %.*s: %s (warn at %lld%%)\n", (int)q->subject.len, q->subject.p, (int)q->id.len,
           q->id.p, query_client_state_name(q->state), (long long)q->warn_pct);
    table_t t = { .align = "llrrrll", .ncol = 7 };
    const char *head[] = { "WINDOW", "UNIT", "USED", "LIMIT", "REMAINING", "STATE", "RESETS" };
    for (size_t i = 0; i < 7; i++)
        table_add(&t, "%s", head[i]);
    for (size_t i = 0; i < q->nw; i++) {
        const query_client_qwin_t *w = &q->w[i];
        char a[64], b[64], c[64], d[64];
        int64_t rem = w->limit > w->used ? w->limit - w->used : 0;
        table_add(&t, "%.*s", (int)w->window.len, w->window.p);
        table_add(&t, "%.*s", (int)w->unit.len, w->unit.p);
        table_add(&t, "%s", fmt_amount(w->unit, w->used, a, sizeof a));
        table_add(&t, "%s", w->limit > 0 ? fmt_amount(w->unit, w->limit, b, sizeof b) : "-");
        table_add(&t, "%s", w->limit > 0 ? fmt_amount(w->unit, rem, c, sizeof c) : "-");
        table_add(&t, "%s", query_client_state_name(w->state));
        table_add(&t, "%s", fmt_time(w->reset, d, sizeof d));
    }
    table_print(&t);
}

static int cmd_quota(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = { QOPTS_LONG,
                                          { "account", required_argument, NULL, 'a' },
                                          { NULL, 0, NULL, 0 } };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5 };
    const char *account = NULL;
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        if (o == 'a') {
            account = optarg;
        } else if (o == 'h') {
            quota_help(stdout);
            return 0;
        } else {
            return 2;
        }
    }
    const char *user = optind < argc ? argv[optind] : NULL;
    if (!user == !account || argc - optind > (user ? 1 : 0)) {
        fprintf(stderr, NAME " quota: name one USER or one --account ACCOUNT\n");
        quota_help(stderr);
        return 2;
    }
    const char *id = user ? user : account;
    if (!*id || strlen(id) > MSG_MAX_STR) {
        fprintf(stderr, NAME " quota: the id must have 1 to %d bytes\n", MSG_MAX_STR);
        return 2;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "q"), pack_str(&pk, "quota");
    pack_str(&pk, "subject"), pack_str(&pk, user ? "user" : "account");
    pack_str(&pk, "id"), pack_str(&pk, id);
    query_client_answers_t ans;
    int rc = ask(&q, &req, user, &ans);
    mbuf_free(&req);
    query_client_quota_t sum, part;
    char err[512];
    for (size_t i = 0; rc == 0 && i < ans.n; i++) {
        if (query_client_quota_decode(&ans.v[i].up.data, i ? &part : &sum, err, sizeof err) < 0)
            rc = bad_answer(&ans.v[i], err);
        else if (i)
            query_client_quota_add(&sum, &part);
    }
    if (rc == 0 && q.json)
        print_json(quota_json(&ans, &sum));
    else if (rc == 0)
        quota_table(&sum);
    query_client_answers_free(&ans);
    return rc;
}

/* ---- budgets -------------------------------------------------------------- */

static void budgets_help(FILE *f)
{
    fprintf(f, "Usage: " NAME " [-c FILE] budgets [options] [NAME]\n\n"
               "Every budget's status in its current period ([budget.NAME] sections; NAME:\n"
               "that budget only), one row per budget and scope value. Every shard is asked;\n"
               "a budget whose scope spans shards is summed over their parts and judged\n"
               "again from the sum.\n\n" QOPTS_HELP "\n"
               "JSON: {ok, shard, shards, now, budgets: [{name, scope, scope_value, period,\n"
               "period_start, period_end, limit_nusd, rollover_nusd, spent_nusd,\n"
               "remaining_nusd, forecast_avg_nusd, forecast_rate_nusd, exhaust_ts, warn_pct,\n"
               "state, ts, partial, parts, shard}, ...]}, sorted by name, scope value and\n"
               "period; scope_value is null for global; parts counts the shards summed (shard\n"
               "is then null); exhaust_ts is when the budget runs out at the last hour's rate\n"
               "(0: not at that rate), or when spent, when it ran out (a summed budget: the\n"
               "time of the answer).\n" QJSON_HELP);
}

static void set_usd(json_t *o, const char *key, int64_t nusd)
{
    char k[64];
    json_object_set_new(o, key, json_integer(nusd));
    snprintf(k, sizeof k, "%.*s_usd", (int)(strlen(key) - 5), key);
    json_object_set_new(o, k, usd_json(nusd));
}

static json_t *budget_json(const query_client_budget_t *x)
{
    const msg_budget_t *b = &x->b;
    json_t *o = json_object();
    json_object_set_new(o, "name", mp2json_str(b->name));
    json_object_set_new(o, "scope", mp2json_str(b->scope));
    json_object_set_new(o, "scope_value", mp2json_str(b->scope_value));
    json_object_set_new(o, "period", mp2json_str(b->period));
    json_object_set_new(o, "period_start", json_integer(b->period_start));
    json_object_set_new(o, "period_end", json_integer(b->period_end));
    set_usd(o, "limit_nusd", b->limit_nusd);
    set_usd(o, "rollover_nusd", b->rollover_nusd);
    set_usd(o, "spent_nusd", b->spent_nusd);
    set_usd(o, "remaining_nusd", b->remaining_nusd);
    set_usd(o, "forecast_avg_nusd", b->forecast_avg_nusd);
    set_usd(o, "forecast_rate_nusd", b->forecast_rate_nusd);
    json_object_set_new(o, "exhaust_ts", json_integer(b->exhaust_ts));
    json_object_set_new(o, "warn_pct", json_integer(b->warn_pct));
    json_object_set_new(o, "state", mp2json_str(b->state));
    json_object_set_new(o, "ts", json_integer(b->ts));
    json_object_set_new(o, "partial", json_boolean(b->partial));
    json_object_set_new(o, "parts", json_integer(x->parts));
    json_object_set_new(o, "shard", x->parts == 1 ? json_integer(b->shard) : json_null());
    return o;
}

static void budgets_table(const query_client_budgets_t *all)
{
    table_t t = { .align = "lllrrrrlrrl", .ncol = 11 };
    const char *head[] = { "NAME",          "SCOPE",          "PERIOD",      "SPENT",
                           "LIMIT",         "REMAINING",      "USED%",       "STATE",
                           "FORECAST(avg)", "FORECAST(rate)", "EXHAUSTED-AT" };
    for (size_t i = 0; i < 11; i++)
        table_add(&t, "%s", head[i]);
    for (size_t i = 0; i < all->n; i++) {
        const msg_budget_t *b = &all->v[i].b;
        char s[5][64];
        table_add(&t, "%.*s", (int)b->name.len, b->name.p);
        if (b->scope_value.p)
            table_add(&t, "%.*s:%.*s", (int)b->scope.len, b->scope.p, (int)b->scope_value.len,
                      b->scope_value.p);
        else
            table_add(&t, "%.*s", (int)b->scope.len, b->scope.p);
        table_add(&t, "%.*s", (int)b->period.len, b->period.p);
        table_add(&t, "%s", fmt_usd(b->spent_nusd, s[0], sizeof s[0]));
        table_add(&t, "%s", fmt_usd(b->limit_nusd, s[1], sizeof s[1]));
        table_add(&t, "%s", fmt_usd(b->remaining_nusd, s[2], sizeof s[2]));
        if (b->limit_nusd > 0)
            table_add(&t, "%.1f%%", (double)b->spent_nusd * 100 / (double)b->limit_nusd);
        else
            table_add(&t, "-");
        table_add(&t, "%.*s", (int)b->state.len, b->state.p);
        table_add(&t, "%s", fmt_usd(b->forecast_avg_nusd, s[3], sizeof s[3]));
        table_add(&t, "%s", fmt_usd(b->forecast_rate_nusd, s[4], sizeof s[4]));
        char ts[64];
        table_add(&t, "%s", fmt_time(b->exhaust_ts, ts, sizeof ts));
    }
    table_print(&t);
}

static int cmd_budgets(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = { QOPTS_LONG, { NULL, 0, NULL, 0 } };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5 };
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        if (o == 'h') {
            budgets_help(stdout);
            return 0;
        }
        return 2;
    }
    const char *name = optind < argc ? argv[optind] : NULL;
    if (argc - optind > 1 || (name && strlen(name) > MSG_MAX_STR)) {
        budgets_help(stderr);
        return 2;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, name ? 2 : 1);
    pack_str(&pk, "q"), pack_str(&pk, "budgets");
    if (name)
        pack_str(&pk, "name"), pack_str(&pk, name);
    query_client_answers_t ans;
    int rc = ask(&q, &req, NULL, &ans);
    mbuf_free(&req);
    query_client_budgets_t *parts = xcalloc(ans.n ? ans.n : 1, sizeof *parts), all = { 0 };
    char err[512];
    size_t n = 0;
    for (; rc == 0 && n < ans.n; n++)
        if (query_client_budgets_decode(&ans.v[n].up.data, &parts[n], err, sizeof err) < 0)
            rc = bad_answer(&ans.v[n], err);
    if (rc == 0) {
        query_client_budgets_merge(parts, n, &all);
        if (q.json) {
            json_t *j = json_head(&ans, ans.n);
            json_object_set_new(j, "now", json_integer(all.now));
            json_t *a = json_array();
            for (size_t i = 0; i < all.n; i++)
                json_array_append_new(a, budget_json(&all.v[i]));
            json_object_set_new(j, "budgets", a);
            print_json(j);
        } else {
            budgets_table(&all);
        }
    }
    for (size_t i = 0; i < n; i++)
        query_client_budgets_free(&parts[i]);
    free(parts);
    query_client_budgets_free(&all);
    query_client_answers_free(&ans);
    return rc;
}

/* ---- top and usage -------------------------------------------------------- */

static void rows_help(FILE *f, bool top)
{
    if (top)
        fprintf(
            f, "Usage: " NAME " [-c FILE] top [--by user|account|model|project]\n"
               "           [--metric cost|tokens|requests] [--window DURATION] [-n N] [options]\n\n"
               "The keys that used the most over the last DURATION (whole minutes, from\n"
               "the aggregator's per-minute history), one row each: RANK KEY REQUESTS\n"
               "TOKENS COST, by the metric, largest first, then by key.\n\n"
               "  --by DIM            user (default), account, model or project; a model's\n"
               "                      key is provider/model\n"
               "  --metric M          cost (default), tokens or requests\n"
               "  --window DURATION   300, 300s, 5m, 1h, 1d (default 1h)\n"
               "  -n N                rows (default 10; 0: all)\n");
    else
        fprintf(f, "Usage: " NAME " [-c FILE] usage [--by user|account|model|project] [--id KEY]\n"
                   "           [--window DURATION] [--metric cost|tokens|requests] [options]\n\n"
                   "Usage over the last DURATION (whole minutes) of every key of a dimension,\n"
                   "or of one key: KEY REQUESTS TOKENS COST, ordered by the metric, largest\n"
                   "first.\n\n"
                   "  --by DIM            user (default), account, model or project; a model's\n"
                   "                      key is provider/model\n"
                   "  --id KEY            only this key (a row of zeros when it used nothing)\n"
                   "  --window DURATION   300, 300s, 5m, 1h, 1d (default 1h)\n"
                   "  --metric M          the order: cost (default), tokens or requests\n");
    fprintf(
        f, QOPTS_HELP
        "\n"
        "JSON: {ok, shard, shards, by, metric, window, from, to, keys, truncated,\n"
        "rows: [{key, requests, tokens, cost_nusd, cost_usd}, ...]}: window in seconds,\n"
        "[from, to) the minutes summed, keys how many keys had usage (summed over the\n"
        "shards), truncated whether rows leaves some out. Shards are asked for all their\n"
        "rows and summed per key, except by user, whose keys live on one shard each.\n" QJSON_HELP);
}

typedef struct {
    const char *by, *metric, *id;
    int64_t window, n;
} rowq_t;

static json_t *rows_json(const query_client_answers_t *ans, size_t used,
                         const query_client_rows_t *r)
{
    json_t *j = json_head(ans, used);
    json_object_set_new(j, "by", mp2json_str(r->by));
    json_object_set_new(j, "metric", mp2json_str(r->metric));
    json_object_set_new(j, "window", json_integer(r->window));
    json_object_set_new(j, "from", json_integer(r->from));
    json_object_set_new(j, "to", json_integer(r->to));
    json_object_set_new(j, "keys", json_integer((json_int_t)r->keys));
    json_object_set_new(j, "truncated", json_boolean(r->truncated));
    json_t *a = json_array();
    for (size_t i = 0; i < r->n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "key", mp2json_str(r->rows[i].key));
        json_object_set_new(o, "requests", json_integer((json_int_t)r->rows[i].requests));
        json_object_set_new(o, "tokens", json_integer((json_int_t)r->rows[i].tokens));
        set_usd(o, "cost_nusd", r->rows[i].cost_nusd);
        json_array_append_new(a, o);
    }
    json_object_set_new(j, "rows", a);
    return j;
}

static void rows_table(const query_client_rows_t *r, bool top)
{
    table_t t = { .align = top ? "rlrrr" : "lrrr", .ncol = top ? 5 : 4 };
    if (top)
        table_add(&t, "RANK");
    table_add(&t, "KEY"), table_add(&t, "REQUESTS"), table_add(&t, "TOKENS"), table_add(&t, "COST");
    for (size_t i = 0; i < r->n; i++) {
        const query_client_row_t *w = &r->rows[i];
        char c[64];
        if (top)
            table_add(&t, "%zu", i + 1);
        table_add(&t, "%.*s", (int)w->key.len, w->key.p);
        table_add(&t, "%llu", (unsigned long long)w->requests);
        table_add(&t, "%llu", (unsigned long long)w->tokens);
        table_add(&t, "%s", fmt_usd(w->cost_nusd, c, sizeof c));
    }
    table_print(&t);
}

static void pack_rows_request(mbuf_t *req, bool top, const rowq_t *rq, int64_t n)
{
    msgpack_packer pk;
    mbuf_packer(req, &pk);
    msgpack_pack_map(&pk, 4 + (top ? 1 : 0) + (rq->id ? 1 : 0));
    pack_str(&pk, "q"), pack_str(&pk, top ? "top" : "usage");
    pack_str(&pk, "by"), pack_str(&pk, rq->by);
    pack_str(&pk, "metric"), pack_str(&pk, rq->metric);
    pack_str(&pk, "window"), msgpack_pack_int64(&pk, rq->window);
    if (top)
        pack_str(&pk, "n"), msgpack_pack_int64(&pk, n);
    if (rq->id)
        pack_str(&pk, "id"), pack_str(&pk, rq->id);
}

/* Asks, merges and prints a top or usage question. */
static int rows_run(const qopts_t *q, const rowq_t *rq, bool top)
{
    bool by_user = !strcmp(rq->by, "user");
    mbuf_t req = { 0 };
    /* users live on one shard each: a shard's first n are candidates enough;
     * other keys are spread, so every shard gives all its rows */
    pack_rows_request(&req, top, rq, by_user ? rq->n : 0);
    query_client_answers_t ans;
    int rc = ask(q, &req, by_user && rq->id ? rq->id : NULL, &ans);
    mbuf_free(&req);
    query_client_rows_t *parts = xcalloc(ans.n ? ans.n : 1, sizeof *parts), all = { 0 };
    query_client_row_t zero = { .key = span_cstr(rq->id) };
    char err[512];
    size_t n = 0;
    for (; rc == 0 && n < ans.n; n++)
        if (query_client_rows_decode(&ans.v[n].up.data, &parts[n], err, sizeof err) < 0)
            rc = bad_answer(&ans.v[n], err);
    if (rc == 0) {
        query_client_rows_merge(parts, n, by_user, top ? rq->n : 0, &all);
        query_client_row_t *merged = all.rows;
        if (rq->id && all.n == 0)
            all.rows = &zero, all.n = 1;
        if (q->json)
            print_json(rows_json(&ans, ans.n, &all));
        else
            rows_table(&all, top);
        all.rows = merged;
    }
    for (size_t i = 0; i < n; i++)
        query_client_rows_free(&parts[i]);
    free(parts);
    query_client_rows_free(&all);
    query_client_answers_free(&ans);
    return rc;
}

static int cmd_rows(const char *cfg_path, int argc, char **argv, bool top)
{
    static const struct option opts[] = {
        QOPTS_LONG,
        { "by", required_argument, NULL, 'b' },
        { "metric", required_argument, NULL, 'm' },
        { "window", required_argument, NULL, 'w' },
        { "id", required_argument, NULL, 'i' },
        { NULL, 0, NULL, 0 },
    };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5 };
    rowq_t rq = { .by = "user", .metric = "cost", .window = 3600, .n = 10 };
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, top ? "hn:" : "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        const char *bad = NULL;
        switch (o) {
        case 'b':
            rq.by = optarg;
            bad = by_ok(optarg) ? NULL : "--by: user, account, model or project";
            break;
        case 'm':
            rq.metric = optarg;
            bad =
                !strcmp(optarg, "cost") || !strcmp(optarg, "tokens") || !strcmp(optarg, "requests")
                    ? NULL
                    : "--metric: cost, tokens or requests";
            break;
        case 'w':
            rq.window = parse_duration(optarg);
            bad = rq.window > 0 ? NULL : "--window: a duration such as 300, 300s, 5m, 1h or 1d";
            break;
        case 'i':
            rq.id = optarg;
            bad = top                                        ? "--id is for usage"
                  : *optarg && strlen(optarg) <= MSG_MAX_STR ? NULL
                                                             : "--id: 1 to 1024 bytes";
            break;
        case 'n':
            bad = parse_count(optarg, &rq.n) == 0 ? NULL : "-n: a count, 0 for all";
            break;
        case 'h':
            rows_help(stdout, top);
            return 0;
        default:
            return 2;
        }
        if (bad) {
            fprintf(stderr, NAME " %s: %s\n", top ? "top" : "usage", bad);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, NAME " %s: unexpected '%s'\n", top ? "top" : "usage", argv[optind]);
        rows_help(stderr, top);
        return 2;
    }
    return rows_run(&q, &rq, top);
}

/* ---- questions to the alerter: alerts and silences ----------------------- */

#define AOPTS_HELP                                                                                 \
    "  --json              print the answer as one JSON object (keys below)\n"                     \
    "  --timeout SECONDS   wait this long for the alerter (default 5)\n"                           \
    "  --endpoint EP       ask EP instead of [alerter] control (the config is then not\n"          \
    "                      read)\n"                                                                \
    "  -h, --help          this text\n"

#define AJSON_HELP                                                                                 \
    "Every answer has \"ok\" (true), \"shard\" (0) and \"shards\" (1): the alerter is one\n"       \
    "process. Times are unix nanoseconds.\n"

#define SILENCE_MAX_SECONDS (366 * 86400) /* the alerter's limit */

/* The value of key in the map m when it has type t (an integer: either
 * sign, asked as POSITIVE_INTEGER), else NULL. */
static const msgpack_object *mp_get(const msgpack_object *m, const char *key, msgpack_object_type t)
{
    size_t kl = strlen(key);
    for (uint32_t i = 0; m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || k->via.str.size != kl ||
            memcmp(k->via.str.ptr, key, kl))
            continue;
        bool is_int = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                      v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
        return v->type == t || (t == MSGPACK_OBJECT_POSITIVE_INTEGER && is_int) ? v : NULL;
    }
    return NULL;
}

static bool mp_str(const msgpack_object *m, const char *key, span_t *s)
{
    const msgpack_object *o = mp_get(m, key, MSGPACK_OBJECT_STR);
    if (o)
        *s = span_make(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    return o != NULL;
}

static bool mp_i64(const msgpack_object *m, const char *key, int64_t *v)
{
    const msgpack_object *o = mp_get(m, key, MSGPACK_OBJECT_POSITIVE_INTEGER);
    if (!o || (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 > INT64_MAX))
        return false;
    *v = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : o->via.i64;
    return true;
}

static int span_cmp(span_t a, span_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.p, b.p, n) : 0;
    return c ? c : (a.len > b.len) - (a.len < b.len);
}

static json_t *tags_json(const msg_tag_t *t, size_t n)
{
    json_t *m = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *k = mp2json_str(t[i].key);
        if (json_is_string(k))
            json_object_set_new(m, json_string_value(k), mp2json_str(t[i].value));
        json_decref(k);
    }
    return m;
}

/* ---- alerts --------------------------------------------------------------- */

static void alerts_help(FILE *f)
{
    fprintf(f, "Usage: " NAME " [-c FILE] alerts [--state firing|pending] [options]\n\n"
               "The alerts the alerter holds, one row each: STATE ALERTNAME SEVERITY SINCE\n"
               "LABELS SUMMARY; firing first, then pending (then resolved ones not yet\n"
               "notified), each by name and start. SINCE is when the alert went firing\n"
               "(pending: when its condition began); LABELS are its other labels, written\n"
               "as silence matchers.\n\n"
               "  --state S           only the alerts in state S: firing or pending\n" AOPTS_HELP "\n"
               "JSON: {ok, shard, shards, alerts: [{alertname, state, severity, fingerprint,\n"
               "labels, annotations, value, starts_at, ends_at, ts}, ...]} in the order of\n"
               "the table: labels and annotations are objects of strings, value is the\n"
               "rule's value when the alert changed state, ends_at 0 while not resolved.\n" AJSON_HELP);
}

/* The alerts of an answer, each checked by msg_alert_unpack, into *out (an
 * array of *n to free; its spans borrow from the answer). 0, or -1 with a
 * reason in err. */
static int alerts_decode(const msgpack_object *m, msg_alert_t **out, size_t *n, char *err,
                         size_t cap)
{
    const msgpack_object *a = mp_get(m, "alerts", MSGPACK_OBJECT_ARRAY);
    *out = NULL;
    *n = 0;
    if (!a) {
        snprintf(err, cap, "the answer's \"alerts\" is missing or not an array");
        return -1;
    }
    *out = xcalloc(a->via.array.size ? a->via.array.size : 1, sizeof **out);
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        char why[256];
        if (msg_alert_unpack(&a->via.array.ptr[i], &(*out)[i], why, sizeof why) < 0) {
            snprintf(err, cap, "alert %u of the answer: %s", i + 1, why);
            free(*out);
            *out = NULL;
            *n = 0;
            return -1;
        }
        (*n)++;
    }
    return 0;
}

static int state_rank(span_t s)
{
    return span_eq_cstr(s, "firing") ? 0 : span_eq_cstr(s, "pending") ? 1 : 2;
}

static int alert_cmp(const void *x, const void *y)
{
    const msg_alert_t *a = *(const msg_alert_t *const *)x, *b = *(const msg_alert_t *const *)y;
    int c = state_rank(a->state) - state_rank(b->state);
    if (!c)
        c = span_cmp(a->alertname, b->alertname);
    if (!c)
        c = (a->starts_at > b->starts_at) - (a->starts_at < b->starts_at);
    return c ? c : span_cmp(a->fingerprint, b->fingerprint);
}

static json_t *alert_json(const msg_alert_t *a)
{
    json_t *o = json_object();
    json_object_set_new(o, "alertname", mp2json_str(a->alertname));
    json_object_set_new(o, "state", mp2json_str(a->state));
    json_object_set_new(o, "severity", mp2json_str(a->severity));
    json_object_set_new(o, "fingerprint", mp2json_str(a->fingerprint));
    json_object_set_new(o, "labels", tags_json(a->labels, a->nlabels));
    json_object_set_new(o, "annotations", tags_json(a->annotations, a->nannotations));
    json_object_set_new(o, "value", json_real(a->value));
    json_object_set_new(o, "starts_at", json_integer(a->starts_at));
    json_object_set_new(o, "ends_at", json_integer(a->ends_at));
    json_object_set_new(o, "ts", json_integer(a->ts));
    return o;
}

/* An alert's labels but alertname and severity (columns of their own), as
 * "name=value name=value" so that they can be pasted as silence matchers;
 * "-" when none. Free it. */
static char *alert_labels(const msg_alert_t *a)
{
    size_t cap = 2;
    for (size_t i = 0; i < a->nlabels; i++)
        cap += a->labels[i].key.len + a->labels[i].value.len + 2;
    char *s = xmalloc(cap);
    size_t n = 0;
    for (size_t i = 0; i < a->nlabels; i++) {
        const msg_tag_t *l = &a->labels[i];
        if (span_eq_cstr(l->key, "alertname") || span_eq_cstr(l->key, "severity"))
            continue;
        n += (size_t)snprintf(s + n, cap - n, "%s%.*s=%.*s", n ? " " : "", (int)l->key.len,
                              l->key.p, (int)l->value.len, l->value.p);
    }
    if (!n)
        snprintf(s, cap, "-");
    return s;
}

static void alerts_table(const msg_alert_t *const *v, size_t n)
{
    table_t t = { .align = "llllll", .ncol = 6 };
    const char *head[] = { "STATE", "ALERTNAME", "SEVERITY", "SINCE", "LABELS", "SUMMARY" };
    for (size_t i = 0; i < 6; i++)
        table_add(&t, "%s", head[i]);
    for (size_t i = 0; i < n; i++) {
        const msg_alert_t *a = v[i];
        span_t summary = SPAN_NULL;
        for (size_t k = 0; k < a->nannotations; k++)
            if (span_eq_cstr(a->annotations[k].key, "summary"))
                summary = a->annotations[k].value;
        char ts[64], *labels = alert_labels(a);
        table_add(&t, "%.*s", (int)a->state.len, a->state.p);
        table_add(&t, "%.*s", (int)a->alertname.len, a->alertname.p);
        if (a->severity.len)
            table_add(&t, "%.*s", (int)a->severity.len, a->severity.p);
        else
            table_add(&t, "-");
        table_add(&t, "%s", fmt_time(a->starts_at, ts, sizeof ts));
        table_add(&t, "%s", labels);
        if (summary.len)
            table_add(&t, "%.*s", (int)summary.len, summary.p);
        else
            table_add(&t, "-");
        free(labels);
    }
    table_print(&t);
}

static int cmd_alerts(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = { QOPTS_LONG,
                                          { "state", required_argument, NULL, 's' },
                                          { NULL, 0, NULL, 0 } };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5, .alerter = true };
    const char *state = NULL;
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        if (o == 's') {
            state = optarg;
            if (strcmp(state, "firing") && strcmp(state, "pending")) {
                fprintf(stderr, NAME " alerts: --state: firing or pending\n");
                return 2;
            }
        } else if (o == 'h') {
            alerts_help(stdout);
            return 0;
        } else {
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, NAME " alerts: unexpected '%s'\n", argv[optind]);
        alerts_help(stderr);
        return 2;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 1);
    pack_str(&pk, "q"), pack_str(&pk, "alerts");
    query_client_answers_t ans;
    int rc = ask(&q, &req, NULL, &ans);
    mbuf_free(&req);
    msg_alert_t *all = NULL;
    size_t n = 0;
    char err[512];
    if (rc == 0 && alerts_decode(&ans.v[0].up.data, &all, &n, err, sizeof err) < 0)
        rc = bad_answer(&ans.v[0], err);
    if (rc == 0) {
        const msg_alert_t **v = xcalloc(n ? n : 1, sizeof *v);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (!state || span_eq_cstr(all[i].state, state))
                v[k++] = &all[i];
        qsort(v, k, sizeof *v, alert_cmp);
        if (q.json) {
            json_t *j = json_head(&ans, ans.n), *a = json_array();
            for (size_t i = 0; i < k; i++)
                json_array_append_new(a, alert_json(v[i]));
            json_object_set_new(j, "alerts", a);
            print_json(j);
        } else {
            alerts_table(v, k);
        }
        free(v);
    }
    free(all);
    query_client_answers_free(&ans);
    return rc;
}

/* ---- silences ------------------------------------------------------------- */

static void silence_help(FILE *f)
{
    fprintf(f, "Usage: " NAME " [-c FILE] silence add MATCHER... --duration DURATION\n"
               "           [--comment TEXT] [--by NAME] [options]\n"
               "       " NAME " [-c FILE] silence list [options]\n"
               "       " NAME " [-c FILE] silence expire ID [options]\n\n"
               "A silence keeps the alerts it matches out of notifications for a while;\n"
               "they still fire and `" NAME " alerts` still lists them. It matches an\n"
               "alert when all its matchers match the alert's labels (alertname, severity\n"
               "and the LABELS of `" NAME " alerts`): name=value, name!=value,\n"
               "name=~regex, name!~regex (anchored POSIX extended regexes). Spaces and\n"
               "commas separate matchers, as the alerter reads them, so a value holds\n"
               "neither; the alerter judges the values.\n\n"
               "add prints the new silence's ID; list prints the active silences, one row\n"
               "each: ID MATCHERS CREATED UNTIL BY COMMENT; expire ends one now.\n\n"
               "  --duration DURATION how long from now: 90s, 30m, 2h, 1d (at most 366d)\n"
               "  --comment TEXT      why (default empty)\n"
               "  --by NAME           who (default $USER@hostname)\n" AOPTS_HELP "\n"
               "JSON: add {ok, shard, shards, id}; list {ok, shard, shards, silences: [{id,\n"
               "matchers, comment, by, created, until}, ...]}; expire {ok, shard, shards,\n"
               "id}.\n" AJSON_HELP);
}

/* as the alerter reads a label name: [A-Za-z_][A-Za-z0-9_]* */
static bool name_char(char c, bool first)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (!first && c >= '0' && c <= '9');
}

/* p[0..len) is a label name, an operator (=, !=, =~, !~) and a value; the
 * value (a regex, say) is the alerter's to judge. */
static bool matcher_ok(const char *p, size_t len)
{
    size_t n = 0;
    while (n < len && name_char(p[n], n == 0))
        n++;
    if (n == 0 || n == len)
        return false;
    return p[n] == '=' || (n + 1 < len && p[n] == '!' && (p[n + 1] == '=' || p[n + 1] == '~'));
}

#define MATCHER_SYNTAX "expected NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX"

/* The MATCHER arguments checked and joined by single spaces (free it), or
 * NULL with a reason in err. An argument may hold several matchers, split
 * at spaces and commas as the alerter splits them. */
static char *silence_matchers(int n, char *const *args, char *err, size_t cap)
{
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += strlen(args[i]) + 1;
    char *out = xmalloc(len), *o = out;
    for (int i = 0; i < n; i++) {
        const char *p = args[i];
        bool any = false;
        while (*p) {
            size_t k = strcspn(p, " ,");
            if (k && !matcher_ok(p, k)) {
                snprintf(err, cap, "matcher '%.*s': " MATCHER_SYNTAX, (int)k, p);
                free(out);
                return NULL;
            }
            if (k) {
                if (o != out)
                    *o++ = ' ';
                memcpy(o, p, k);
                o += k;
                any = true;
            }
            p += k ? k : 1;
        }
        if (!any) {
            snprintf(err, cap, "matcher '%s': " MATCHER_SYNTAX, args[i]);
            free(out);
            return NULL;
        }
    }
    *o = '\0';
    if (o == out || o - out > MSG_MAX_STR) {
        snprintf(err, cap, "%s",
                 o == out ? "name at least one MATCHER, such as alertname=NAME or user=~bob.*"
                          : "the matchers have more than 1024 bytes");
        free(out);
        return NULL;
    }
    return out;
}

/* $USER@hostname, as who made a silence */
static void default_by(char *buf, size_t cap)
{
    const char *user = getenv("USER");
    if (!user || !*user) {
        const struct passwd *pw = getpwuid(getuid());
        user = pw && *pw->pw_name ? pw->pw_name : "unknown";
    }
    char host[256];
    if (gethostname(host, sizeof host) != 0 || !*host)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    snprintf(buf, cap, "%s@%s", user, host);
}

/* An id from the network as one can type it again: 1 to 64 printable
 * characters, no space. */
static bool id_ok(span_t id)
{
    if (!id.len || id.len > 64)
        return false;
    for (size_t i = 0; i < id.len; i++)
        if (id.p[i] <= ' ' || id.p[i] > '~')
            return false;
    return true;
}

static int cmd_silence_add(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = {
        QOPTS_LONG,
        { "duration", required_argument, NULL, 'd' },
        { "comment", required_argument, NULL, 'm' },
        { "by", required_argument, NULL, 'b' },
        { NULL, 0, NULL, 0 },
    };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5, .alerter = true };
    int64_t duration = 0;
    const char *comment = "", *by = NULL;
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        const char *bad = NULL;
        switch (o) {
        case 'd':
            duration = parse_duration(optarg);
            bad = duration > 0 && duration <= SILENCE_MAX_SECONDS
                      ? NULL
                      : "--duration: a duration such as 90s, 30m, 2h or 1d, more than 0 and at "
                        "most 366d";
            break;
        case 'm':
            comment = optarg;
            bad = strlen(optarg) <= MSG_MAX_STR ? NULL : "--comment: at most 1024 bytes";
            break;
        case 'b':
            by = optarg;
            bad = *optarg && strlen(optarg) <= MSG_MAX_STR ? NULL : "--by: 1 to 1024 bytes";
            break;
        case 'h':
            silence_help(stdout);
            return 0;
        default:
            return 2;
        }
        if (bad) {
            fprintf(stderr, NAME " silence add: %s\n", bad);
            return 2;
        }
    }
    if (!duration) {
        fprintf(stderr, NAME " silence add: --duration is required (such as 30m, 2h or 1d)\n");
        return 2;
    }
    char err[512], who[MSG_MAX_STR + 1];
    char *matchers = silence_matchers(argc - optind, argv + optind, err, sizeof err);
    if (!matchers) {
        fprintf(stderr, NAME " silence add: %s\n", err);
        return 2;
    }
    if (!by) {
        default_by(who, sizeof who);
        by = who;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "q"), pack_str(&pk, "silence_add");
    pack_str(&pk, "matchers"), pack_str(&pk, matchers);
    pack_str(&pk, "duration"), msgpack_pack_int64(&pk, duration);
    pack_str(&pk, "comment"), pack_str(&pk, comment);
    pack_str(&pk, "by"), pack_str(&pk, by);
    free(matchers);
    query_client_answers_t ans;
    int rc = ask(&q, &req, NULL, &ans);
    mbuf_free(&req);
    span_t id = SPAN_NULL;
    if (rc == 0 && (!mp_str(&ans.v[0].up.data, "id", &id) || !id_ok(id)))
        rc = bad_answer(&ans.v[0], "the answer's \"id\" is missing or not 1 to 64 printable "
                                   "characters");
    if (rc == 0 && q.json) {
        json_t *j = json_head(&ans, ans.n);
        json_object_set_new(j, "id", mp2json_str(id));
        print_json(j);
    } else if (rc == 0) {
        printf("%.*s\n", (int)id.len, id.p);
    }
    query_client_answers_free(&ans);
    return rc;
}

typedef struct {
    span_t id, matchers, comment, by;
    int64_t created, until;
} silence_t;

/* The silences of an answer into *out (an array of *n to free; its spans
 * borrow from the answer). 0, or -1 with a reason in err. */
static int silences_decode(const msgpack_object *m, silence_t **out, size_t *n, char *err,
                           size_t cap)
{
    const msgpack_object *a = mp_get(m, "silences", MSGPACK_OBJECT_ARRAY);
    *out = NULL;
    *n = 0;
    if (!a) {
        snprintf(err, cap, "the answer's \"silences\" is missing or not an array");
        return -1;
    }
    *out = xcalloc(a->via.array.size ? a->via.array.size : 1, sizeof **out);
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        silence_t *s = &(*out)[i];
        if (!mp_str(o, "id", &s->id) || !mp_str(o, "matchers", &s->matchers) ||
            !mp_str(o, "comment", &s->comment) || !mp_str(o, "by", &s->by) ||
            !mp_i64(o, "created", &s->created) || !mp_i64(o, "until", &s->until)) {
            snprintf(err, cap,
                     "silence %u of the answer lacks a string id, matchers, comment or by, or "
                     "an integer created or until",
                     i + 1);
            free(*out);
            *out = NULL;
            *n = 0;
            return -1;
        }
        (*n)++;
    }
    return 0;
}

static json_t *silence_json(const silence_t *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", mp2json_str(s->id));
    json_object_set_new(o, "matchers", mp2json_str(s->matchers));
    json_object_set_new(o, "comment", mp2json_str(s->comment));
    json_object_set_new(o, "by", mp2json_str(s->by));
    json_object_set_new(o, "created", json_integer(s->created));
    json_object_set_new(o, "until", json_integer(s->until));
    return o;
}

static void silences_table(const silence_t *v, size_t n)
{
    table_t t = { .align = "llllll", .ncol = 6 };
    const char *head[] = { "ID", "MATCHERS", "CREATED", "UNTIL", "BY", "COMMENT" };
    for (size_t i = 0; i < 6; i++)
        table_add(&t, "%s", head[i]);
    for (size_t i = 0; i < n; i++) {
        const silence_t *s = &v[i];
        char c[64], u[64];
        table_add(&t, "%.*s", (int)s->id.len, s->id.p);
        table_add(&t, "%.*s", (int)s->matchers.len, s->matchers.p);
        table_add(&t, "%s", fmt_time(s->created, c, sizeof c));
        table_add(&t, "%s", fmt_time(s->until, u, sizeof u));
        if (s->by.len)
            table_add(&t, "%.*s", (int)s->by.len, s->by.p);
        else
            table_add(&t, "-");
        if (s->comment.len)
            table_add(&t, "%.*s", (int)s->comment.len, s->comment.p);
        else
            table_add(&t, "-");
    }
    table_print(&t);
}

static int cmd_silence_list(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = { QOPTS_LONG, { NULL, 0, NULL, 0 } };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5, .alerter = true };
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        if (o == 'h') {
            silence_help(stdout);
            return 0;
        }
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, NAME " silence list: unexpected '%s'\n", argv[optind]);
        silence_help(stderr);
        return 2;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 1);
    pack_str(&pk, "q"), pack_str(&pk, "silences");
    query_client_answers_t ans;
    int rc = ask(&q, &req, NULL, &ans);
    mbuf_free(&req);
    silence_t *v = NULL;
    size_t n = 0;
    char err[512];
    if (rc == 0 && silences_decode(&ans.v[0].up.data, &v, &n, err, sizeof err) < 0)
        rc = bad_answer(&ans.v[0], err);
    if (rc == 0 && q.json) {
        json_t *j = json_head(&ans, ans.n), *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, silence_json(&v[i]));
        json_object_set_new(j, "silences", a);
        print_json(j);
    } else if (rc == 0) {
        silences_table(v, n);
    }
    free(v);
    query_client_answers_free(&ans);
    return rc;
}

static int cmd_silence_expire(const char *cfg_path, int argc, char **argv)
{
    static const struct option opts[] = { QOPTS_LONG, { NULL, 0, NULL, 0 } };
    qopts_t q = { .cfg_path = cfg_path, .timeout = 5, .alerter = true };
    int o, r;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = qopt(o, &q)) < 0)
            return 2;
        if (r)
            continue;
        if (o == 'h') {
            silence_help(stdout);
            return 0;
        }
        return 2;
    }
    const char *id = optind < argc ? argv[optind] : NULL;
    if (!id || argc - optind > 1 || !*id || strlen(id) > MSG_MAX_STR) {
        fprintf(stderr,
                NAME " silence expire: name one silence ID (`" NAME " silence list` shows them)\n");
        silence_help(stderr);
        return 2;
    }
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "q"), pack_str(&pk, "silence_expire");
    pack_str(&pk, "id"), pack_str(&pk, id);
    query_client_answers_t ans;
    int rc = ask(&q, &req, NULL, &ans);
    mbuf_free(&req);
    if (rc == 0 && q.json) {
        json_t *j = json_head(&ans, ans.n);
        json_object_set_new(j, "id", json_string(id));
        print_json(j);
    }
    query_client_answers_free(&ans);
    return rc;
}

static int cmd_silence(const char *cfg_path, int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : "";
    if (!strcmp(sub, "add"))
        return cmd_silence_add(cfg_path, argc - 1, argv + 1);
    if (!strcmp(sub, "list"))
        return cmd_silence_list(cfg_path, argc - 1, argv + 1);
    if (!strcmp(sub, "expire"))
        return cmd_silence_expire(cfg_path, argc - 1, argv + 1);
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help")) {
        silence_help(stdout);
        return 0;
    }
    if (*sub)
        fprintf(stderr, NAME " silence: unknown command '%s': add, list or expire\n", sub);
    silence_help(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            cfg_path = argv[i + 1];
            i += 2;
        } else if (!strncmp(argv[i], "--config=", 9)) {
            cfg_path = argv[i] + 9;
            i++;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf(NAME " %s\n", TOKMON_VERSION);
            return 0;
        } else {
            fprintf(stderr, NAME ": unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sargc = argc - i;
    char **sargv = argv + i;
    if (!strcmp(cmd, "keygen"))
        return cmd_keygen(sargc, sargv);
    if (!strcmp(cmd, "stats")) {
        char err[4096];
        cfg_t *cfg = cfg_load(cfg_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        int rc = cmd_stats(cfg, sargc, sargv);
        cfg_destroy(&cfg);
        return rc;
    }
    if (!strcmp(cmd, "quota"))
        return cmd_quota(cfg_path, sargc, sargv);
    if (!strcmp(cmd, "budgets"))
        return cmd_budgets(cfg_path, sargc, sargv);
    if (!strcmp(cmd, "top") || !strcmp(cmd, "usage"))
        return cmd_rows(cfg_path, sargc, sargv, !strcmp(cmd, "top"));
    if (!strcmp(cmd, "alerts"))
        return cmd_alerts(cfg_path, sargc, sargv);
    if (!strcmp(cmd, "silence"))
        return cmd_silence(cfg_path, sargc, sargv);
    fprintf(stderr, NAME ": unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}

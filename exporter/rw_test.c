/* rw_test: remote write without a Prometheus: name rules, label order, the
 * encoding (protobuf-c unpack and snappy uncompress of what rw_enc makes),
 * and the sender against an HTTP server in a thread of this test (headers,
 * auth, retries of 5xx and 429 with backoff, never of 400, the cap on tries
 * and on the age of the data, the last send at shutdown, config errors).
 * Run one test alone with `rw_test NAME`.
 *
 * With TOKMON_RW_TEST_URL set, rw_test runs only test_live, which sends the samples of a small model
 * (three calls of openai/gpt-4o "chat": llm_requests_total 3, input tokens
 * 3000, output 600) to that URL once, as the exporter does at shutdown, and
 * fails unless the receiver took them: tests/integration/rw_receiver.py and
 * a Prometheus with --web.enable-remote-write-receiver use it. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <snappy-c.h>

#include "cfg.h"
#include "log.h"
#include "mbuf.h"
#include "model.h"
#include "msg.h"
#include "remote.pb-c.h"
#include "rw.h"
#include "stats.h"
#include "tmtime.h"

#define MS TMTIME_NS_PER_MS

/* ---- names ------------------------------------------------------------------ */

static void test_names(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool metric, label;
    } rows[] = {
        { "llm_tokens_total", true, true },
        { "__name__", true, true },
        { "_", true, true },
        { "a", true, true },
        { "Z9", true, true },
        { "job:rate5m", true, false },
        { ":x", true, false },
        { "9lives", false, false },
        { "", false, false },
        { "a-b", false, false },
        { "a b", false, false },
        { "a.b", false, false },
        { "caf\xc3\xa9", false, false },
        { "x\n", false, false },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (rw_metric_name_ok(rows[i].s) != rows[i].metric || rw_label_name_ok(rows[i].s) != rows[i].label)
            fail_msg("name %zu \"%s\"", i, rows[i].s);
    }
    assert_false(rw_metric_name_ok(NULL));
    assert_false(rw_label_name_ok(NULL));
}

/* ---- encoding ------------------------------------------------------------------ */

static Prometheus__WriteRequest *decode(const void *p, size_t n)
{
    size_t len = 0;
    assert_int_equal(snappy_uncompressed_length(p, n, &len), SNAPPY_OK);
    char *raw = malloc(len + 1);
    assert_int_equal(snappy_uncompress(p, n, raw, &len), SNAPPY_OK);
    Prometheus__WriteRequest *wr = prometheus__write_request__unpack(NULL, len, (uint8_t *)raw);
    free(raw);
    assert_non_null(wr);
    return wr;
}

/* Labels strictly ascending by bytes, __name__ among them; returns its value. */
static const char *check_series(const Prometheus__TimeSeries *ts)
{
    const char *name = NULL;
    for (size_t j = 0; j < ts->n_labels; j++) {
        if (j > 0)
            assert_true(strcmp(ts->labels[j - 1]->name, ts->labels[j]->name) < 0);
        assert_true(ts->labels[j]->value[0] != '\0');
        if (strcmp(ts->labels[j]->name, "__name__") == 0)
            name = ts->labels[j]->value;
    }
    assert_non_null(name);
    assert_int_equal(ts->n_samples, 1);
    return name;
}

#define L(n, v) { n, v }
#define MAXL 6

static void test_encode(void **state)
{
    (void)state;
    /* the added ones: labels in, then the labels out, __name__ included */
    static const struct {
        const char *name;
        model_label_t in[MAXL];
        size_t nin;
        const char *out[2 * MAXL + 2];
        double value;
        int64_t ts;
    } good[] = {
        { "llm_tokens_total",
          { L("provider", "openai"), L("model", "gpt-4o"), L("type", "input") }, 3,
          { "__name__", "llm_tokens_total", "model", "gpt-4o", "provider", "openai", "type", "input" },
          1027, 1795305600123 },
        /* capitals sort before '_' */
        { "up", { L("a", "1"), L("Zone", "eu") }, 2, { "Zone", "eu", "__name__", "up", "a", "1" }, 1, 0 },
        /* an empty value is no label */
        { "job:rate5m", { L("job", "x"), L("empty", ""), L("nul", NULL) }, 3,
          { "__name__", "job:rate5m", "job", "x" }, -0.5, -1 },
        { "x", { L("x", "x") }, 0, { "__name__", "x" }, INFINITY, INT64_MAX },
        { "y", { L("v", "caf\xc3\xa9 \"q\" \\ \n\xf0\x9f\x92\xb8") }, 1,
          { "__name__", "y", "v", "caf\xc3\xa9 \"q\" \\ \n\xf0\x9f\x92\xb8" }, NAN, 1 },
    };
    static const struct {
        const char *name;
        model_label_t in[MAXL];
        size_t nin;
        const char *why;
    } bad[] = {
        { "9bad", { L("a", "1") }, 1, "metric_name" },
        { "", { L("a", "1") }, 0, "metric_name" },
        { NULL, { L("a", "1") }, 0, "metric_name" },
        { "a-b", { L("a", "1") }, 0, "metric_name" },
        { "m", { L("bad-name", "1") }, 1, "label_name" },
        { "m", { L("0x", "1") }, 1, "label_name" },
        { "m", { L(":x", "1") }, 1, "label_name" },
        { "m", { L(NULL, "1") }, 1, "label_name" },
        { "m", { L("a", "1"), L("a", "2") }, 2, "duplicate_label" },
        { "m", { L("b", "1"), L("a", "2"), L("b", "3") }, 3, "duplicate_label" },
        { "m", { L("__name__", "n") }, 1, "duplicate_label" },
        { "m", { L("a", "\xff") }, 1, "utf8" },
        { "m", { L("a", "\xed\xa0\x80") }, 1, "utf8" },
    };
    rw_enc_t *e = rw_enc_new();
    size_t empty = 0;
    for (int round = 0; round < 2; round++) { /* the encoder is reused after finish */
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            const char *why = rw_enc_add(e, bad[i].name, bad[i].in, bad[i].nin, 1, 1, &empty);
            if (!why || strcmp(why, bad[i].why) != 0)
                fail_msg("bad %zu: %s, not %s", i, why ? why : "added", bad[i].why);
        }
        for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
            assert_null(rw_enc_add(e, good[i].name, good[i].in, good[i].nin, good[i].value,
                                   good[i].ts, &empty));
        assert_int_equal(empty, 2 * (size_t)(round + 1));
        assert_int_equal(rw_enc_series(e), sizeof good / sizeof good[0]);
        mbuf_t out = { 0 };
        char err[128];
        assert_int_equal(rw_enc_finish(e, &out, err, sizeof err), 0);
        assert_int_equal(rw_enc_series(e), 0);

        Prometheus__WriteRequest *wr = decode(out.data, out.len);
        assert_int_equal(wr->n_timeseries, sizeof good / sizeof good[0]);
        for (size_t i = 0; i < wr->n_timeseries; i++) {
            const Prometheus__TimeSeries *ts = wr->timeseries[i];
            assert_string_equal(check_series(ts), good[i].name);
            size_t n = 0;
            while (good[i].out[2 * n])
                n++;
            assert_int_equal(ts->n_labels, n);
            for (size_t j = 0; j < n; j++) {
                assert_string_equal(ts->labels[j]->name, good[i].out[2 * j]);
                assert_string_equal(ts->labels[j]->value, good[i].out[2 * j + 1]);
            }
            double v = ts->samples[0]->value;
            if (isnan(good[i].value))
                assert_true(isnan(v));
            else
                assert_true(v == good[i].value);
            assert_true(ts->samples[0]->timestamp == good[i].ts);
        }
        prometheus__write_request__free_unpacked(wr, NULL);
        mbuf_free(&out);
    }
    /* nothing added: an empty request, still valid */
    mbuf_t out = { 0 };
    char err[128];
    assert_int_equal(rw_enc_finish(e, &out, err, sizeof err), 0);
    Prometheus__WriteRequest *wr = decode(out.data, out.len);
    assert_int_equal(wr->n_timeseries, 0);
    prometheus__write_request__free_unpacked(wr, NULL);
    mbuf_free(&out);
    rw_enc_destroy(&e);
    assert_null(e);
    rw_enc_destroy(&e);
}

/* many series, long strings: packed sizes beyond one-byte varints */
static void test_encode_large(void **state)
{
    (void)state;
    rw_enc_t *e = rw_enc_new();
    char big[3000];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char nm[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(nm, sizeof nm, "n%d", i);
        model_label_t l[2] = { { "big", i % 100 == 0 ? big : "s" }, { "i", nm } };
        assert_null(rw_enc_add(e, "m", l, 2, i, 1000 + i, NULL));
    }
    mbuf_t out = { 0 };
    char err[128];
    assert_int_equal(rw_enc_finish(e, &out, err, sizeof err), 0);
    Prometheus__WriteRequest *wr = decode(out.data, out.len);
    assert_int_equal(wr->n_timeseries, 5000);
    for (size_t i = 0; i < 5000; i++) {
        check_series(wr->timeseries[i]);
        assert_true(wr->timeseries[i]->samples[0]->value == (double)i);
        assert_string_equal(wr->timeseries[i]->labels[1]->value, i % 100 == 0 ? big : "s");
    }
    prometheus__write_request__free_unpacked(wr, NULL);
    mbuf_free(&out);
    rw_enc_destroy(&e);
}

/* ---- an HTTP server in a thread ---------------------------------------------- */

#define MAXREQ 256

typedef struct {
    int status;
    int64_t at, wall; /* monotonic and wall-clock ns of its arrival */
    char head[4096];
    char *body;
    size_t len;
} hreq_t;

typedef struct {
    int lfd;
    unsigned port;
    pthread_t th;
    pthread_mutex_t mu;
    atomic_int stop;
    int script[16]; /* answers in order, then dflt */
    size_t nscript;
    int dflt;
    hreq_t req[MAXREQ];
    size_t n;
} srv_t;

static bool read_more(int fd, char **buf, size_t *len, size_t *cap, srv_t *s)
{
    while (!atomic_load(&s->stop)) {
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 20) <= 0)
            continue;
        if (*len == *cap) {
            *cap = *cap ? 2 * *cap : 8192;
            *buf = realloc(*buf, *cap + 1);
        }
        ssize_t k = read(fd, *buf + *len, *cap - *len);
        if (k <= 0)
            return false;
        *len += (size_t)k;
        (*buf)[*len] = '\0';
        return true;
    }
    return false;
}

static void serve_one(srv_t *s, int fd)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    char *end;
    while (!(buf && (end = strstr(buf, "\r\n\r\n"))))
        if (!read_more(fd, &buf, &len, &cap, s))
            goto out;
    size_t hlen = (size_t)(end - buf) + 4, clen = 0;
    for (char *p = buf; p && p < end; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL)
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            clen = strtoul(p + 15, NULL, 10);
    while (len < hlen + clen)
        if (!read_more(fd, &buf, &len, &cap, s))
            goto out;
    pthread_mutex_lock(&s->mu);
    int status = s->n < s->nscript ? s->script[s->n] : s->dflt;
    if (s->n < MAXREQ) {
        hreq_t *r = &s->req[s->n];
        r->status = status;
        r->at = tmtime_mono_ns();
        r->wall = tmtime_now_ns();
        snprintf(r->head, sizeof r->head, "%.*s", (int)(hlen - 2), buf);
        r->body = malloc(clen + 1);
        memcpy(r->body, buf + hlen, clen);
        r->len = clen;
    }
    s->n++;
    pthread_mutex_unlock(&s->mu);
    const char *text = status == 400 ? "out of order sample\n" : status >= 300 ? "try later\n" : "";
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, strlen(text), text);
    if (write(fd, resp, (size_t)n) != n)
        fprintf(stderr, "rw_test: short write\n");
out:
    free(buf);
}

static void *srv_main(void *arg)
{
    srv_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = { s->lfd, POLLIN, 0 };
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        serve_one(s, fd);
        close(fd);
    }
    return NULL;
}

static srv_t *srv_start(int dflt, const int *script, size_t nscript)
{
    srv_t *s = calloc(1, sizeof *s);
    s->dflt = dflt;
    if (nscript)
        memcpy(s->script, script, nscript * sizeof *script);
    s->nscript = nscript;
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
    return s;
}

static size_t srv_count(srv_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void srv_stop(srv_t **ps)
{
    srv_t *s = *ps;
    atomic_store(&s->stop, 1);
    pthread_join(s->th, NULL);
    close(s->lfd);
    for (size_t i = 0; i < s->n && i < MAXREQ; i++)
        free(s->req[i].body);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *ps = NULL;
}

/* The value of header name in r ("" when absent). */
static const char *hdr(const hreq_t *r, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            snprintf(out, cap, "%.*s", (int)(e ? (size_t)(e - v) : strlen(v)), v);
            break;
        }
    }
    return out;
}

/* ---- fixtures -------------------------------------------------------------------- */

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    model_t *m;
    rw_t *r;
    char dir[64];
} fix_t;

static void put_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* s with every @DIR@ replaced by dir, into out. */
static char *subst(const char *s, const char *dir, char *out, size_t cap)
{
    size_t n = 0;
    while (*s && n + 1 < cap) {
        if (strncmp(s, "@DIR@", 5) == 0) {
            n += (size_t)snprintf(out + n, cap - n, "%s", dir);
            if (n >= cap)
                n = cap - 1;
            s += 5;
        } else
            out[n++] = *s++;
    }
    out[n] = '\0';
    return out;
}

static void usage(model_t *m, const char *model, uint64_t in, uint64_t out)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr("openai");
    u.model = span_cstr(model);
    u.operation = span_cstr("chat");
    u.status = span_cstr("ok");
    u.input_tokens = in;
    u.output_tokens = out;
    u.requests = 1;
    u.cost_nusd = 2500000;
    u.latency_us = 1200000;
    u.ttft_us = 300000;
    u.ts = u.recv_ts = tmtime_now_ns();
    model_usage(m, &u, u.ts);
}

/* A rw and a model with three calls of openai/gpt-4o, from an [exporter]
 * section whose remote_write_url points at port, and extra (@DIR@: a
 * temporary directory with files token and password). */
static void fix_open(fix_t *f, unsigned port, const char *extra)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/rw_test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char path[128];
    snprintf(path, sizeof path, "%s/token", f->dir);
    put_file(path, "tok-123\n");
    snprintf(path, sizeof path, "%s/password", f->dir);
    put_file(path, "s3cret\r\n");
    char err[1024], more[1024], ini[2048];
    snprintf(ini, sizeof ini, "[exporter]\nremote_write_url = http://127.0.0.1:%u/api/v1/write\n%s\n",
             port, subst(extra, f->dir, more, sizeof more));
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-exporter", "exporter@test");
    f->m = model_new(f->cfg, f->st, err, sizeof err);
    if (!f->m)
        fail_msg("model: %s", err);
    for (int i = 0; i < 3; i++)
        usage(f->m, "gpt-4o", 1000, 200);
    model_refresh(f->m, tmtime_now_ns());
    bool failed = true;
    f->r = rw_new(f->cfg, f->st, &failed, err, sizeof err);
    if (!f->r)
        fail_msg("rw_new: %s", err);
    assert_false(failed);
}

static void fix_close(fix_t *f)
{
    rw_destroy(&f->r);
    assert_null(f->r);
    model_destroy(&f->m);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "rw_test: %s failed\n", cmd);
}

static int64_t counter(fix_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->st, name, labels);
}

/* Runs rw_work as the exporter's loop does until cond holds or max_ms pass. */
typedef bool (*cond_fn)(fix_t *f, void *arg);
static bool drive(fix_t *f, cond_fn cond, void *arg, int max_ms)
{
    int64_t end = tmtime_mono_ns() + max_ms * MS;
    while (tmtime_mono_ns() < end) {
        if (cond && cond(f, arg))
            return true;
        long t = rw_work(f->r, f->m, tmtime_now_ns());
        assert_true(t >= 0);
        if (t > 2)
            t = 2;
        if (t > 0)
            nanosleep(&(struct timespec){ 0, t * MS }, NULL);
    }
    return cond && cond(f, arg);
}

typedef struct {
    const char *name, *labels;
    int64_t want;
} want_t;

static bool counter_at_least(fix_t *f, void *arg)
{
    const want_t *w = arg;
    return counter(f, w->name, w->labels) >= w->want;
}

typedef struct {
    srv_t *s;
    size_t want;
} srv_want_t;

static bool srv_at_least(fix_t *f, void *arg)
{
    (void)f;
    const srv_want_t *w = arg;
    return srv_count(w->s) >= w->want;
}

static void check_headers(const hreq_t *r, const char *auth)
{
    char v[512];
    assert_true(strncmp(r->head, "POST /api/v1/write HTTP/1.1\r\n", 29) == 0);
    assert_string_equal(hdr(r, "Content-Encoding", v, sizeof v), "snappy");
    assert_string_equal(hdr(r, "Content-Type", v, sizeof v), "application/x-protobuf");
    assert_string_equal(hdr(r, "X-Prometheus-Remote-Write-Version", v, sizeof v), "0.1.0");
    assert_string_equal(hdr(r, "User-Agent", v, sizeof v), "tokmon-exporter/" TOKMON_VERSION);
    assert_string_equal(hdr(r, "Authorization", v, sizeof v), auth);
}

/* Every series sorted and named, one timestamp for all; returns how many
 * series, and the value of llm_requests_total{...,model=gpt-4o} in *req. */
static size_t check_body(const hreq_t *r, int64_t *ts, double *req)
{
    Prometheus__WriteRequest *wr = decode(r->body, r->len);
    *ts = wr->n_timeseries ? wr->timeseries[0]->samples[0]->timestamp : 0;
    for (size_t i = 0; i < wr->n_timeseries; i++) {
        const Prometheus__TimeSeries *t = wr->timeseries[i];
        const char *name = check_series(t);
        assert_true(t->samples[0]->timestamp == *ts);
        if (strcmp(name, "llm_requests_total") == 0 && req)
            *req = t->samples[0]->value;
    }
    size_t n = wr->n_timeseries;
    prometheus__write_request__free_unpacked(wr, NULL);
    return n;
}

/* ---- the sender ------------------------------------------------------------------ */

/* 500, 429, 204 for the first interval's request; 400 for the next (not
 * sent again), 204 for the third. Bearer token from a file. */
static void test_retry_policy(void **state)
{
    (void)state;
    static const int script[] = { 500, 429, 204, 400 };
    srv_t *s = srv_start(204, script, 4);
    fix_t f;
    fix_open(&f, s->port,
             "remote_write_interval = 400ms\nremote_write_backoff_max = 40ms\n"
             "remote_write_retries = 5\nremote_write_bearer_file = @DIR@/token");

    int64_t t0 = tmtime_mono_ns();
    srv_want_t w = { s, 5 };
    assert_true(drive(&f, srv_at_least, &w, 5000));
    drive(&f, NULL, NULL, 20); /* the fifth answer taken in */
    assert_int_equal(srv_count(s), 5);
    /* nothing before the first interval */
    assert_true(s->req[0].at - t0 >= 390 * MS);

    int64_t ts[5];
    double req = 0;
    size_t nseries = 0;
    for (size_t i = 0; i < 5; i++) {
        check_headers(&s->req[i], "Bearer tok-123");
        size_t n = check_body(&s->req[i], &ts[i], &req);
        assert_true(n > 0);
        if (i == 0)
            nseries = n;
        assert_int_equal(n, nseries);
        assert_true(req == 3);
    }
    /* the same request three times, the first retry after 50 to 100 ms
     * (100 ms capped at 40, jittered down to half at most), then new data */
    assert_memory_equal(s->req[0].body, s->req[1].body, s->req[0].len);
    assert_memory_equal(s->req[0].body, s->req[2].body, s->req[0].len);
    for (size_t i = 1; i < 3; i++) {
        int64_t gap = s->req[i].at - s->req[i - 1].at;
        assert_true(gap >= 20 * MS);
        assert_true(gap < 300 * MS);
    }
    /* the 400 is not sent again: the fifth is the next interval's */
    assert_true(ts[3] > ts[0]);
    assert_true(ts[4] > ts[3]);
    assert_true(s->req[4].at - s->req[3].at >= 300 * MS);

    assert_int_equal(counter(&f, "rw_retries_total", NULL), 2);
    assert_int_equal(counter(&f, "rw_errors_total", "reason=http_5xx"), 1);
    assert_int_equal(counter(&f, "rw_errors_total", "reason=http_429"), 1);
    assert_int_equal(counter(&f, "rw_errors_total", "reason=http_4xx"), 1);
    assert_int_equal(counter(&f, "rw_dropped_total", "reason=rejected"), (int64_t)nseries);
    assert_int_equal(counter(&f, "rw_dropped_total", "reason=retries"), 0);
    assert_int_equal(counter(&f, "rw_dropped_total", "reason=superseded"), 0);
    assert_int_equal(counter(&f, "rw_samples_total", NULL), 2 * (int64_t)nseries);
    int64_t bytes = 0;
    for (size_t i = 0; i < 5; i++)
        bytes += (int64_t)s->req[i].len;
    assert_int_equal(counter(&f, "rw_bytes_total", NULL), bytes);
    assert_true(*stats_gauge(f.st, "rw_last_ms", NULL) / 1000 >= ts[4] / 1000);
    assert_int_equal(*stats_gauge(f.st, "rw_series", NULL), (int64_t)nseries);
    fix_close(&f);
    srv_stop(&s);
}

/* Always 500, two retries allowed: three tries, then the request is
 * dropped, and nothing more until the next interval. Basic auth. */
static void test_retry_cap(void **state)
{
    (void)state;
    srv_t *s = srv_start(500, NULL, 0);
    fix_t f;
    fix_open(&f, s->port,
             "remote_write_interval = 1s\nremote_write_backoff_max = 10ms\n"
             "remote_write_retries = 2\nremote_write_user = 12345\n"
             "remote_write_password_file = @DIR@/password");
    want_t w = { "rw_dropped_total", "reason=retries", 1 };
    assert_true(drive(&f, counter_at_least, &w, 3000));
    int64_t dropped = counter(&f, "rw_dropped_total", "reason=retries");
    drive(&f, NULL, NULL, 200);
    assert_int_equal(srv_count(s), 3);
    for (size_t i = 0; i < 3; i++)
        check_headers(&s->req[i], "Basic MTIzNDU6czNjcmV0");
    int64_t ts;
    assert_int_equal(check_body(&s->req[0], &ts, NULL), (size_t)dropped);
    assert_int_equal(counter(&f, "rw_errors_total", "reason=http_5xx"), 3);
    assert_int_equal(counter(&f, "rw_retries_total", NULL), 2);
    assert_int_equal(counter(&f, "rw_samples_total", NULL), 0);
    assert_int_equal(*stats_gauge(f.st, "rw_last_ms", NULL), 0);
    fix_close(&f);
    srv_stop(&s);
}

/* Always 503 with retries to spare: a request is given up when its next
 * try would come after the next interval's data (superseded), never later. */
static void test_superseded(void **state)
{
    (void)state;
    srv_t *s = srv_start(503, NULL, 0);
    fix_t f;
    fix_open(&f, s->port,
             "remote_write_interval = 200ms\nremote_write_backoff_max = 60ms\n"
             "remote_write_retries = 1000");
    want_t w = { "rw_dropped_total", "reason=superseded", 2 };
    assert_true(drive(&f, counter_at_least, &w, 3000));
    size_t n = srv_count(s);
    assert_true(n >= 4);
    /* in order, and no try of a request comes after the next interval's
     * data is due (200 ms after its own, plus slack for a loaded machine) */
    int64_t last_ts = 0, retried = 0;
    for (size_t i = 0; i < n && i < MAXREQ; i++) {
        int64_t ts;
        check_body(&s->req[i], &ts, NULL);
        assert_true(ts >= last_ts);
        retried += ts == last_ts;
        last_ts = ts;
        assert_true(s->req[i].wall / MS - ts < 200 + 50);
    }
    assert_true(retried > 0);
    assert_int_equal(counter(&f, "rw_dropped_total", "reason=retries"), 0);
    assert_true(counter(&f, "rw_retries_total", NULL) > 0);
    fix_close(&f);
    srv_stop(&s);
}

/* Nobody listens: transport errors, retried like 5xx. */
static void test_transport(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd); /* a port nobody listens on */
    fix_t f;
    fix_open(&f, ntohs(a.sin_port),
             "remote_write_interval = 100ms\nremote_write_backoff_max = 10ms\nremote_write_retries = 1");
    want_t w = { "rw_dropped_total", "reason=retries", 1 };
    assert_true(drive(&f, counter_at_least, &w, 3000));
    assert_true(counter(&f, "rw_errors_total", "reason=transport") >= 2);
    assert_int_equal(counter(&f, "rw_retries_total", NULL), 1);
    fix_close(&f);
}

/* Shutdown: one last send (split in requests of 2000 series, all with one
 * timestamp); then with a receiver that always fails, drain gives
 * up at its deadline. */
static void test_drain(void **state)
{
    (void)state;
    srv_t *s = srv_start(204, NULL, 0);
    fix_t f;
    fix_open(&f, s->port, "remote_write_interval = 1h\nmax_series = 100000");
    for (int i = 0; i < 150; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "model-%03d", i);
        usage(f.m, nm, 10, 1);
    }
    model_refresh(f.m, tmtime_now_ns());
    assert_true(rw_work(f.r, f.m, tmtime_now_ns()) > 1000);
    rw_drain(f.r, f.m, 5000);
    size_t nreq = srv_count(s), total = 0;
    assert_true(nreq >= 2); /* 150 models x 38 series */
    int64_t ts0 = 0;
    for (size_t i = 0; i < nreq; i++) {
        int64_t ts;
        size_t n = check_body(&s->req[i], &ts, NULL);
        if (i + 1 < nreq)
            assert_int_equal(n, 2000);
        assert_true(n > 0 && n <= 2000);
        if (i == 0)
            ts0 = ts;
        assert_true(ts == ts0);
        total += n;
    }
    assert_int_equal(counter(&f, "rw_samples_total", NULL), (int64_t)total);
    assert_int_equal(*stats_gauge(f.st, "rw_series", NULL), (int64_t)total);
    assert_int_equal(counter(&f, "rw_requests_total", NULL), (int64_t)nreq);
    fix_close(&f);
    srv_stop(&s);

    s = srv_start(503, NULL, 0);
    fix_open(&f, s->port, "remote_write_interval = 1h\nremote_write_backoff_max = 10ms\nremote_write_retries = 1000");
    int64_t t0 = tmtime_mono_ns();
    rw_drain(f.r, f.m, 300);
    int64_t took = tmtime_mono_ns() - t0;
    assert_true(took >= 290 * MS && took < 1000 * MS);
    assert_true(srv_count(s) >= 2);
    assert_true(counter(&f, "rw_dropped_total", "reason=shutdown") > 0);
    rw_drain(f.r, f.m, 0); /* no time: nothing sent, nothing left behind */
    fix_close(&f);
    srv_stop(&s);
    rw_drain(NULL, NULL, 10);
    assert_true(rw_work(NULL, NULL, 0) > 0);
}

/* ---- configuration ---------------------------------------------------------------- */

static void test_config(void **state)
{
    (void)state;
    char dir[] = "/tmp/rw_cfg.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[256];
    snprintf(p, sizeof p, "%s/ok", dir);
    put_file(p, "tok\n");
    snprintf(p, sizeof p, "%s/empty", dir);
    put_file(p, "\n\n");
    snprintf(p, sizeof p, "%s/two", dir);
    put_file(p, "a\nb\n");
    static const struct {
        const char *ini;
        const char *err; /* NULL: fine */
    } rows[] = {
        { "", NULL }, /* off */
        { "remote_write_url = http://h/api/v1/write\nremote_write_bearer_file = @DIR@/ok", NULL },
        { "remote_write_url = https://h/push\nremote_write_user = 1\nremote_write_password_file = @DIR@/ok", NULL },
        { "remote_write_url = ftp://h/", "remote_write_url: not an http" },
        { "remote_write_url = h:9090", "remote_write_url: not an http" },
        { "remote_write_url = http://h/\nremote_write_bearer_file = @DIR@/ok\nremote_write_user = u\n"
          "remote_write_password_file = @DIR@/ok", "not both" },
        { "remote_write_url = http://h/\nremote_write_bearer_file = @DIR@/ok\nremote_write_user = u", "not both" },
        { "remote_write_url = http://h/\nremote_write_user = u", "remote_write_user: basic auth needs both" },
        { "remote_write_url = http://h/\nremote_write_password_file = @DIR@/ok",
          "remote_write_password_file: basic auth needs both" },
        { "remote_write_url = http://h/\nremote_write_bearer_file = @DIR@/missing", "No such file" },
        { "remote_write_url = http://h/\nremote_write_bearer_file = @DIR@/empty", "empty" },
        { "remote_write_url = http://h/\nremote_write_bearer_file = @DIR@/two", "more than one line" },
        { "remote_write_url = http://h/\nremote_write_user = u\nremote_write_password_file = @DIR@/empty", "empty" },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char body[1024], ini[1200], err[1024] = "";
        subst(rows[i].ini, dir, body, sizeof body);
        snprintf(ini, sizeof ini, "[exporter]\n%s\n", body);
        cfg_t *cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
        if (!cfg)
            fail_msg("row %zu: config: %s", i, err);
        stats_t *st = stats_new("tokmon-exporter", "exporter@test");
        bool failed = !rows[i].err;
        rw_t *r = rw_new(cfg, st, &failed, err, sizeof err);
        if (rows[i].err) {
            if (r || !failed || !strstr(err, rows[i].err))
                fail_msg("row %zu: wanted \"%s\", got \"%s\"", i, rows[i].err, err);
            assert_true(strstr(err, "test.ini:") != NULL); /* names where */
        } else {
            assert_false(failed);
            assert_true((r != NULL) == (i > 0));
            if (r)
                assert_true(strstr(err, "tok") == NULL);
        }
        rw_destroy(&r);
        stats_destroy(&st);
        cfg_destroy(&cfg);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- a real receiver, when one is named ------------------------------------------- */

static void test_live(void **state)
{
    (void)state;
    const char *url = getenv("TOKMON_RW_TEST_URL");
    assert_non_null(url);
    char ini[1024], err[1024];
    snprintf(ini, sizeof ini, "[exporter]\nremote_write_url = %s\nremote_write_retries = 2\n", url);
    cfg_t *cfg = cfg_load_string(ini, strlen(ini), "live.ini", NULL, err, sizeof err);
    if (!cfg)
        fail_msg("config: %s", err);
    stats_t *st = stats_new("tokmon-exporter", "exporter@test");
    model_t *m = model_new(cfg, st, err, sizeof err);
    assert_non_null(m);
    for (int i = 0; i < 3; i++)
        usage(m, "gpt-4o", 1000, 200);
    model_refresh(m, tmtime_now_ns());
    bool failed;
    rw_t *r = rw_new(cfg, st, &failed, err, sizeof err);
    if (!r)
        fail_msg("rw_new: %s", err);
    rw_drain(r, m, 10000);
    int64_t sent = *stats_counter(st, "rw_samples_total", NULL);
    fprintf(stderr, "rw_test: live: %" PRId64 " samples sent to %s, %" PRId64 " requests\n", sent,
            url, *stats_counter(st, "rw_requests_total", NULL));
    assert_true(sent > 0);
    assert_int_equal(*stats_counter(st, "rw_dropped_total", "reason=rejected"), 0);
    rw_destroy(&r);
    model_destroy(&m);
    stats_destroy(&st);
    cfg_destroy(&cfg);
}

int main(int argc, char **argv)
{
    log_setup("rw_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_encode_large), cmocka_unit_test(test_retry_policy),
        cmocka_unit_test(test_retry_cap),    cmocka_unit_test(test_superseded),
        cmocka_unit_test(test_transport),    cmocka_unit_test(test_drain),
        cmocka_unit_test(test_config),
    };
    /* test_live needs a receiver: run only when one is named */
    const char *live = getenv("TOKMON_RW_TEST_URL");
    if (live && *live) {
        const struct CMUnitTest one[] = { cmocka_unit_test(test_live) };
        return cmocka_run_group_tests_name("rw_live", one, NULL, NULL);
    }
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("rw", tests, NULL, NULL);
}

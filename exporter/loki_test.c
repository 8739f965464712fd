/* loki_test: Loki push against a tiny HTTP server run in this process (a
 * thread on 127.0.0.1, port 0) that answers from a plan (500, 429, 204,
 * 400, or no answer at all) and keeps every request: headers and the
 * gunzipped body, which is checked against the push API's rules and
 * against tables of calls and alerts (labels, structured metadata, the
 * line, escaping, timestamps). Also batching by size and by time (with a
 * made-up clock), the bounded queue, the retry policy, drain and settings.
 * Run one test alone with `loki_test NAME`. */
#include <arpa/inet.h>
#include <errno.h>
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
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zlib.h>

#include "cfg.h"
#include "log.h"
#include "loki.h"
#include "msg.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MS TMTIME_NS_PER_MS
#define NOW (1795305600LL * TMTIME_NS_PER_SEC) /* 2026-11-22T00:00:00Z */
#define SP(s) ((span_t){ (s), sizeof(s) - 1 })
#define NONE ((span_t){ NULL, 0 })

/* ---- the HTTP server ----------------------------------------------------------- */

typedef struct {
    int status;        /* 0: read the request, never answer */
    const char *extra; /* more header lines, each ending in \r\n */
    const char *body;
} act_t;

typedef struct {
    char method[16], path[256];
    char ctype[128], cenc[64], auth[256], org[128], expect[64];
    bool has_auth, has_org, has_expect, gunzip_ok;
    char *raw;  /* the body as received */
    size_t rawlen;
    char *body; /* gunzipped, NUL-terminated */
    size_t len;
    int64_t at; /* monotonic ns */
} req_t;

#define MAX_REQS 64

typedef struct {
    int lfd, port;
    pthread_t th;
    pthread_mutex_t mu;
    atomic_bool stop;
    act_t plan[16];
    size_t nplan;
    req_t reqs[MAX_REQS];
    size_t nreq;
    int dflt; /* the answer once the plan is through */
    int hung[16];
    size_t nhung;
} srv_t;

static bool gunzip(const char *in, size_t n, char **out, size_t *outlen)
{
    z_stream z = { 0 };
    if (inflateInit2(&z, 15 + 16) != Z_OK)
        return false;
    size_t cap = n * 4 + 256, len = 0;
    char *buf = xmalloc(cap + 1);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    int rc;
    do {
        if (len == cap) {
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        z.next_out = (Bytef *)buf + len;
        z.avail_out = (uInt)(cap - len);
        rc = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&z);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return rc == Z_STREAM_END && z.avail_in == 0;
}

static void header(const char *line, const char *name, char *out, size_t cap, bool *has)
{
    size_t n = strlen(name);
    if (strncasecmp(line, name, n) || line[n] != ':')
        return;
    const char *v = line + n + 1;
    while (*v == ' ')
        v++;
    snprintf(out, cap, "%s", v);
    if (has)
        *has = true;
}

/* Reads one request from fd into r; false on a broken one. */
static bool read_request(int fd, req_t *r)
{
    size_t cap = 65536, len = 0;
    char *buf = xmalloc(cap + 1);
    char *end = NULL;
    while (!end) {
        if (len == cap) {
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k <= 0) {
            free(buf);
            return false;
        }
        len += (size_t)k;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t hlen = (size_t)(end - buf) + 4;
    end[2] = '\0';
    size_t clen = 0;
    char *save = NULL;
    char *line = strtok_r(buf, "\r\n", &save);
    if (!line || sscanf(line, "%15s %255s", r->method, r->path) != 2) {
        free(buf);
        return false;
    }
    while ((line = strtok_r(NULL, "\r\n", &save))) {
        char cl[32] = "";
        header(line, "Content-Length", cl, sizeof cl, NULL);
        if (cl[0])
            clen = strtoul(cl, NULL, 10);
        header(line, "Content-Type", r->ctype, sizeof r->ctype, NULL);
        header(line, "Content-Encoding", r->cenc, sizeof r->cenc, NULL);
        header(line, "Authorization", r->auth, sizeof r->auth, &r->has_auth);
        header(line, "X-Scope-OrgID", r->org, sizeof r->org, &r->has_org);
        header(line, "Expect", r->expect, sizeof r->expect, &r->has_expect);
    }
    r->raw = xmalloc(clen + 1);
    size_t have = len - hlen < clen ? len - hlen : clen;
    memcpy(r->raw, buf + hlen, have);
    free(buf);
    while (have < clen) {
        ssize_t k = recv(fd, r->raw + have, clen - have, 0);
        if (k <= 0)
            return false;
        have += (size_t)k;
    }
    r->rawlen = clen;
    r->gunzip_ok = gunzip(r->raw, r->rawlen, &r->body, &r->len);
    r->at = tmtime_mono_ns();
    return true;
}

static void *serve(void *arg)
{
    srv_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = { .fd = s->lfd, .events = POLLIN };
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        struct timeval tv = { .tv_sec = 3 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        req_t r = { 0 };
        if (!read_request(fd, &r)) {
            free(r.raw);
            close(fd);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        size_t i = s->nreq;
        act_t a = i < s->nplan ? s->plan[i] : (act_t){ s->dflt, NULL, NULL };
        if (i < MAX_REQS)
            s->reqs[s->nreq++] = r;
        else
            free(r.raw), free(r.body);
        pthread_mutex_unlock(&s->mu);
        if (a.status == 0 && s->nhung < ARRAY_LEN(s->hung)) {
            s->hung[s->nhung++] = fd; /* closed when the server stops */
            continue;
        }
        const char *body = a.body ? a.body : "";
        char resp[1024];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n%s",
                         a.status, strlen(body), a.extra ? a.extra : "", body);
        if (send(fd, resp, (size_t)n, MSG_NOSIGNAL) < 0) { /* the client gave up */
        }
        close(fd);
    }
    return NULL;
}

/* Answers from plan, then dflt (0: 204). */
static srv_t *srv_start2(const act_t *plan, size_t nplan, int dflt)
{
    srv_t *s = xcalloc(1, sizeof *s);
    s->dflt = dflt ? dflt : 204;
    assert_true(nplan <= ARRAY_LEN(s->plan));
    if (nplan)
        memcpy(s->plan, plan, nplan * sizeof *plan);
    s->nplan = nplan;
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->lfd, 16), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    s->port = ntohs(a.sin_port);
    pthread_mutex_init(&s->mu, NULL);
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
    return s;
}

static srv_t *srv_start(const act_t *plan, size_t nplan) { return srv_start2(plan, nplan, 0); }

static size_t srv_count(srv_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->nreq;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void srv_stop(srv_t **sp)
{
    srv_t *s = *sp;
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->lfd);
    for (size_t i = 0; i < s->nhung; i++)
        close(s->hung[i]);
    for (size_t i = 0; i < s->nreq; i++) {
        free(s->reqs[i].raw);
        free(s->reqs[i].body);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
    *sp = NULL;
}

/* ---- the exporter's side --------------------------------------------------------- */

typedef struct {
    srv_t *srv;
    cfg_t *cfg;
    stats_t *st;
    loki_t *l;
    char pwfile[64];
} fix_t;

/* A loki pushing to srv (or to url when given) with these [exporter] lines. */
static void fix_open(fix_t *f, srv_t *srv, const char *url, const char *lines)
{
    memset(f, 0, sizeof *f);
    f->srv = srv;
    char text[2048], err[1024];
    char u[128];
    if (!url) {
        snprintf(u, sizeof u, "http://127.0.0.1:%d", srv->port);
        url = u;
    }
    snprintf(text, sizeof text, "[global]\ninstance = test-inst\n[exporter]\nloki_url = %s\n%s\n", url,
             lines ? lines : "");
    f->cfg = cfg_load_string(text, strlen(text), "t.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-exporter", "test");
    bool failed = true;
    f->l = loki_new(f->cfg, f->st, &failed, err, sizeof err);
    if (!f->l)
        fail_msg("loki_new: %s", err);
    assert_false(failed);
}

static void fix_close(fix_t *f)
{
    loki_destroy(&f->l);
    assert_null(f->l);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    if (f->pwfile[0])
        unlink(f->pwfile);
}

static int64_t ctr(fix_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->st, name, labels);
}

static int64_t gauge(fix_t *f, const char *name)
{
    return *stats_gauge(f->st, name, NULL);
}

/* Runs loki_work on the real clock (or at the fixed time `at` when not 0)
 * until counter name{labels} reaches want; fails after 10 s. */
static void pump_until(fix_t *f, int64_t at, const char *name, const char *labels, int64_t want)
{
    int64_t end = tmtime_mono_ns() + 10000 * MS;
    int64_t *c = stats_counter(f->st, name, labels);
    while (*c < want) {
        if (tmtime_mono_ns() > end)
            fail_msg("%s{%s} is %lld after 10 s, want %lld", name, labels ? labels : "",
                     (long long)*c, (long long)want);
        long ms = loki_work(f->l, at ? at : tmtime_now_ns());
        assert_true(ms >= 0 && ms <= 1000);
        usleep((useconds_t)((ms < 2 ? ms : 2) * 1000 + 200));
    }
}

static msg_usage_t usage(const char *request_id)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = SP("openai");
    u.model = SP("gpt-4o");
    u.operation = SP("chat");
    u.user = SP("u1");
    u.status = SP("ok");
    u.request_id = span_cstr(request_id);
    u.requests = 1;
    u.input_tokens = 100;
    u.output_tokens = 20;
    u.cost_nusd = 450000;
    u.cost_source = SP("priced");
    u.ts = NOW - 5 * MS;
    u.recv_ts = NOW - 4 * MS;
    return u;
}

/* ---- the push API's rules, checked on every body ------------------------------- */

static bool label_name_ok(const char *s)
{
    if (!*s || !(s[0] == '_' || ((s[0] | 0x20) >= 'a' && (s[0] | 0x20) <= 'z')))
        return false;
    for (; *s; s++)
        if (!(*s == '_' || (*s >= '0' && *s <= '9') || ((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z')))
            return false;
    return true;
}

/* A decoded push body, checked: the streams, each value's ts, and the order
 * of timestamps within each stream. Returns the root (caller decrefs). */
static json_t *check_push(const req_t *r)
{
    assert_string_equal(r->method, "POST");
    assert_string_equal(r->path, "/loki/api/v1/push");
    assert_string_equal(r->ctype, "application/json");
    assert_string_equal(r->cenc, "gzip");
    assert_false(r->has_expect && r->expect[0]);
    assert_true(r->gunzip_ok);
    json_error_t je;
    json_t *root = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!root)
        fail_msg("body is not JSON: %s: %.200s", je.text, r->body);
    assert_int_equal(json_object_size(root), 1);
    json_t *streams = json_object_get(root, "streams");
    assert_true(json_is_array(streams) && json_array_size(streams) > 0);
    size_t i, j;
    json_t *s, *v;
    json_array_foreach(streams, i, s) {
        json_t *labels = json_object_get(s, "stream");
        json_t *values = json_object_get(s, "values");
        assert_true(json_is_object(labels) && json_object_size(labels) > 0);
        assert_true(json_is_array(values) && json_array_size(values) > 0);
        const char *k;
        json_t *lv;
        json_object_foreach(labels, k, lv) {
            assert_true(label_name_ok(k));
            assert_true(json_is_string(lv));
            assert_true(json_string_length(lv) > 0);
        }
        /* no two streams with the same labels */
        for (size_t i2 = 0; i2 < i; i2++)
            assert_false(json_equal(labels, json_object_get(json_array_get(streams, i2), "stream")));
        long long prev = 0;
        json_array_foreach(values, j, v) {
            assert_true(json_is_array(v));
            assert_true(json_array_size(v) == 2 || json_array_size(v) == 3);
            json_t *ts = json_array_get(v, 0);
            assert_true(json_is_string(ts));
            const char *t = json_string_value(ts);
            assert_true(t[0] >= '1' && t[0] <= '9');
            assert_int_equal(strspn(t, "0123456789"), strlen(t));
            long long tv = strtoll(t, NULL, 10);
            assert_true(tv > prev); /* time order within a stream */
            prev = tv;
            assert_true(json_is_string(json_array_get(v, 1)));
            if (json_array_size(v) == 3) {
                json_t *md = json_array_get(v, 2), *mv;
                const char *mk;
                assert_true(json_is_object(md));
                json_object_foreach(md, mk, mv) {
                    assert_true(label_name_ok(mk));
                    assert_true(json_is_string(mv));
                    assert_true(json_string_length(mv) > 0); /* absent, not empty */
                }
            }
        }
    }
    return root;
}

/* The entry of the body whose Loki timestamp is ts: its stream's labels,
 * its line (parsed) and its metadata. NULL when absent. */
static json_t *find_entry(json_t *root, long long ts, json_t **labels, json_t **line, json_t **md)
{
    size_t i, j;
    json_t *s, *v;
    json_array_foreach(json_object_get(root, "streams"), i, s) {
        json_array_foreach(json_object_get(s, "values"), j, v) {
            if (strtoll(json_string_value(json_array_get(v, 0)), NULL, 10) != ts)
                continue;
            *labels = json_object_get(s, "stream");
            json_error_t je;
            *line = json_loadb(json_string_value(json_array_get(v, 1)),
                               json_string_length(json_array_get(v, 1)),
                               JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
            if (!*line)
                fail_msg("line is not JSON: %s: %s", je.text, json_string_value(json_array_get(v, 1)));
            *md = json_array_get(v, 2);
            return v;
        }
    }
    return NULL;
}

static void assert_json(json_t *got, const char *want, const char *what, const char *row)
{
    json_error_t je;
    json_t *w = json_loads(want, JSON_ALLOW_NUL, &je);
    if (!w)
        fail_msg("%s: bad expectation %s: %s", row, want, je.text);
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        char *x = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        print_error("%s: %s\n  got  %s\n  want %s\n", row, what, g, x);
        free(g);
        free(x);
        json_decref(w);
        fail();
    }
    json_decref(w);
}

/* ---- calls: labels, metadata, the line, escaping ------------------------------- */

typedef struct {
    const char *name;
    span_t provider, model, operation, user, account, project, status, error_type, request_id;
    int64_t cost_nusd, latency_us, ttft_us;
    int32_t http_status, retries;
    bool is_signed;
    span_t tagk, tagv;
    const char *stream, *meta, *line; /* expected, as JSON */
} call_row_t;

#define BASE_LINE "\"kind\":\"call\",\"ts\":1795305599995000000,\"recv_ts\":1795305599996000000," \
                  "\"requests\":1,\"input_tokens\":100,\"cache_read_tokens\":0,"             \
                  "\"cache_write_tokens\":0,\"cache_write_1h_tokens\":0,\"output_tokens\":20," \
                  "\"reasoning_tokens\":0"

static const call_row_t call_rows[] = {
    { "plain", SP("openai"), SP("gpt-4o"), SP("chat"), SP("u1"), SP("acct"), SP("proj"), SP("ok"),
      NONE, SP("req-1"), 450000, 1250000, 300000, 200, 0, false, NONE, NONE,
      "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"info\",\"provider\":\"openai\"}",
      "{\"kind\":\"call\",\"user\":\"u1\",\"account\":\"acct\",\"project\":\"proj\","
      "\"model\":\"gpt-4o\",\"operation\":\"chat\",\"request_id\":\"req-1\"}",
      "{" BASE_LINE ",\"provider\":\"openai\",\"model\":\"gpt-4o\",\"operation\":\"chat\","
      "\"user\":\"u1\",\"account\":\"acct\",\"project\":\"proj\",\"status\":\"ok\","
      "\"http_status\":200,\"request_id\":\"req-1\",\"latency_us\":1250000,\"ttft_us\":300000,"
      "\"cost_usd\":\"0.00045\",\"cost_nusd\":450000,\"cost_source\":\"priced\",\"retries\":0}" },
    { "error_level_absent_fields", SP("anthropic"), SP("claude-sonnet-4"), SP("chat"), NONE, NONE,
      NONE, SP("error"), SP("rate_limit"), NONE, 0, -1, -1, 429, -1, false, NONE, NONE,
      "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"error\",\"provider\":\"anthropic\"}",
      "{\"kind\":\"call\",\"model\":\"claude-sonnet-4\",\"operation\":\"chat\"}",
      "{" BASE_LINE ",\"provider\":\"anthropic\",\"model\":\"claude-sonnet-4\",\"operation\":\"chat\","
      "\"status\":\"error\",\"http_status\":429,\"error_type\":\"rate_limit\",\"cost_usd\":\"0\","
      "\"cost_nusd\":0,\"cost_source\":\"priced\"}" },
    { "empty_provider_no_label", SP(""), SP("m"), SP("chat"), SP("u2"), SP(""), NONE, SP("ok"), NONE,
      SP("r2"), 1234567891234, -1, -1, 0, -1, true, SP("team"), SP("ml"),
      "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"info\"}",
      "{\"kind\":\"call\",\"user\":\"u2\",\"model\":\"m\",\"operation\":\"chat\",\"request_id\":\"r2\"}",
      "{" BASE_LINE ",\"provider\":\"\",\"model\":\"m\",\"operation\":\"chat\",\"user\":\"u2\",\"account\":\"\","
      "\"status\":\"ok\",\"request_id\":\"r2\",\"cost_usd\":\"1234.567891234\",\"cost_nusd\":1234567891234,"
      "\"cost_source\":\"priced\",\"signed\":true,\"key_id\":\"k1\",\"tags\":{\"team\":\"ml\"}}" },
    { "escapes", SP("open\"ai"), SP("m\\1"), SP("chat"), SP("a\"b\\c\nd\te\x01" "f\x7f/"), NONE, NONE,
      SP("ok"), NONE, SP("line1\r\nline2\0nul"), 1, -1, -1, 0, -1, false, SP("k\"ey"), SP("v\nal"),
      "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"info\",\"provider\":\"open\\\"ai\"}",
      "{\"kind\":\"call\",\"user\":\"a\\\"b\\\\c\\nd\\te\\u0001f\\u007f/\",\"model\":\"m\\\\1\","
      "\"operation\":\"chat\",\"request_id\":\"line1\\r\\nline2\\u0000nul\"}",
      "{" BASE_LINE ",\"provider\":\"open\\\"ai\",\"model\":\"m\\\\1\",\"operation\":\"chat\","
      "\"user\":\"a\\\"b\\\\c\\nd\\te\\u0001f\\u007f/\",\"status\":\"ok\","
      "\"request_id\":\"line1\\r\\nline2\\u0000nul\",\"cost_usd\":\"0.000000001\",\"cost_nusd\":1,"
      "\"cost_source\":\"priced\",\"tags\":{\"k\\\"ey\":\"v\\nal\"}}" },
    { "utf8_kept_invalid_replaced", SP("gemini"), SP("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
      SP("chat"), SP("bad\xff\xfe"), SP("over\xc0\xaflong"), SP("sur\xed\xa0\x80r"), SP("ok"), NONE,
      SP("cut\xe2\x82"), 2000000000, -1, -1, 0, 3, false, NONE, NONE,
      "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"info\",\"provider\":\"gemini\"}",
      "{\"kind\":\"call\",\"user\":\"bad\\ufffd\\ufffd\",\"account\":\"over\\ufffd\\ufffdlong\","
      "\"project\":\"sur\\ufffd\\ufffd\\ufffdr\",\"model\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\","
      "\"operation\":\"chat\",\"request_id\":\"cut\\ufffd\\ufffd\"}",
      "{" BASE_LINE ",\"provider\":\"gemini\",\"model\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\","
      "\"operation\":\"chat\",\"user\":\"bad\\ufffd\\ufffd\",\"account\":\"over\\ufffd\\ufffdlong\","
      "\"project\":\"sur\\ufffd\\ufffd\\ufffdr\",\"status\":\"ok\",\"request_id\":\"cut\\ufffd\\ufffd\","
      "\"cost_usd\":\"2\",\"cost_nusd\":2000000000,\"cost_source\":\"priced\",\"retries\":3}" },
};

static void test_call_body(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "env = prod\n");
    for (size_t i = 0; i < ARRAY_LEN(call_rows); i++) {
        const call_row_t *r = &call_rows[i];
        msg_usage_t u = usage("x");
        u.provider = r->provider;
        u.model = r->model;
        u.operation = r->operation;
        u.user = r->user;
        u.account = r->account;
        u.project = r->project;
        u.status = r->status;
        u.error_type = r->error_type;
        u.request_id = r->request_id;
        u.cost_nusd = r->cost_nusd;
        u.latency_us = r->latency_us;
        u.ttft_us = r->ttft_us;
        u.http_status = r->http_status;
        u.retries = r->retries;
        u.is_signed = r->is_signed;
        if (r->is_signed)
            u.key_id = SP("k1");
        if (r->tagk.p) {
            u.ntags = 1;
            u.tags[0].key = r->tagk;
            u.tags[0].value = r->tagv;
        }
        loki_call(f.l, &u, NOW + (int64_t)i * MS);
    }
    assert_int_equal(ctr(&f, "loki_entries_total", "kind=call"), ARRAY_LEN(call_rows));
    assert_int_equal(gauge(&f, "loki_queue"), ARRAY_LEN(call_rows));
    loki_drain(f.l, 5000);
    assert_int_equal(ctr(&f, "loki_entries_sent_total", NULL), ARRAY_LEN(call_rows));
    assert_int_equal(srv_count(srv), 1);
    assert_int_equal(gauge(&f, "loki_queue"), 0);
    /* the strings with invalid UTF-8: user, account, project and request id of one row */
    assert_int_equal(ctr(&f, "loki_invalid_utf8_total", NULL), 4);

    const req_t *q = &srv->reqs[0];
    assert_false(q->has_auth);
    assert_false(q->has_org);
    json_t *root = check_push(q);
    /* three providers at info, one at error, one without provider */
    assert_int_equal(json_array_size(json_object_get(root, "streams")), 5);
    for (size_t i = 0; i < ARRAY_LEN(call_rows); i++) {
        json_t *labels, *line, *md;
        if (!find_entry(root, NOW + (long long)i * MS, &labels, &line, &md))
            fail_msg("%s: no entry at its timestamp", call_rows[i].name);
        assert_json(labels, call_rows[i].stream, "stream labels", call_rows[i].name);
        assert_json(md, call_rows[i].meta, "structured metadata", call_rows[i].name);
        assert_json(line, call_rows[i].line, "line", call_rows[i].name);
        json_decref(line);
    }
    json_decref(root);
    fix_close(&f);
    srv_stop(&srv);
}

/* Loki timestamps: strictly increasing whatever the caller's clock does. */
static void test_timestamps(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, NULL);
    static const struct {
        int64_t now, want;
    } rows[] = {
        { NOW, NOW },
        { NOW, NOW + 1 },          /* the same instant: one ns later */
        { NOW - 5 * MS, NOW + 2 }, /* the clock stepped back */
        { NOW + 10, NOW + 10 },
        { NOW + 1000 * MS, NOW + 1000 * MS },
        { 1, NOW + 1000 * MS + 1 },
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char id[16];
        snprintf(id, sizeof id, "r%zu", i);
        msg_usage_t u = usage(id);
        loki_call(f.l, &u, rows[i].now);
    }
    loki_drain(f.l, 5000);
    assert_int_equal(srv_count(srv), 1);
    json_t *root = check_push(&srv->reqs[0]);
    json_t *values = json_object_get(json_array_get(json_object_get(root, "streams"), 0), "values");
    assert_int_equal(json_array_size(values), ARRAY_LEN(rows));
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char want[32];
        snprintf(want, sizeof want, "%lld", (long long)rows[i].want);
        assert_string_equal(json_string_value(json_array_get(json_array_get(values, i), 0)), want);
    }
    /* the env label defaults to [global] instance */
    assert_json(json_object_get(json_array_get(json_object_get(root, "streams"), 0), "stream"),
                "{\"service\":\"tokmon\",\"env\":\"test-inst\",\"level\":\"info\",\"provider\":\"openai\"}",
                "labels", "default env");
    json_decref(root);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- alerts -------------------------------------------------------------------- */

static const struct {
    const char *name, *alertname, *state, *severity, *json;
    const char *level, *meta, *line;
    int bad_json;
} alert_rows[] = {
    { "firing_critical", "BudgetExceeded", "firing", "critical",
      "{ \"labels\": {\"budget\": \"daily\", \"scope\": \"global\"},\n  \"annotations\": {\"summary\": \"a b\"} }",
      "error", "{\"kind\":\"alert\",\"alertname\":\"BudgetExceeded\",\"state\":\"firing\",\"severity\":\"critical\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600000000000,\"alertname\":\"BudgetExceeded\",\"state\":\"firing\","
      "\"severity\":\"critical\",\"alert\":{\"labels\":{\"budget\":\"daily\",\"scope\":\"global\"},"
      "\"annotations\":{\"summary\":\"a b\"}}}", 0 },
    { "pending_warning", "BudgetWarning", "pending", "warning", NULL, "warn",
      "{\"kind\":\"alert\",\"alertname\":\"BudgetWarning\",\"state\":\"pending\",\"severity\":\"warning\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600001000000,\"alertname\":\"BudgetWarning\",\"state\":\"pending\","
      "\"severity\":\"warning\"}", 0 },
    { "resolved_is_info", "BudgetExceeded", "resolved", "critical", "{}", "info",
      "{\"kind\":\"alert\",\"alertname\":\"BudgetExceeded\",\"state\":\"resolved\",\"severity\":\"critical\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600002000000,\"alertname\":\"BudgetExceeded\",\"state\":\"resolved\","
      "\"severity\":\"critical\",\"alert\":{}}", 0 },
    { "info_severity", "StageSilent", "firing", "info", "[1,2]", "info",
      "{\"kind\":\"alert\",\"alertname\":\"StageSilent\",\"state\":\"firing\",\"severity\":\"info\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600003000000,\"alertname\":\"StageSilent\",\"state\":\"firing\","
      "\"severity\":\"info\",\"alert_text\":\"[1,2]\"}", 1 },
    { "broken_json_kept_as_text", "X\"y", "firing", "warning", "{\"a\": \xff", "warn",
      "{\"kind\":\"alert\",\"alertname\":\"X\\\"y\",\"state\":\"firing\",\"severity\":\"warning\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600004000000,\"alertname\":\"X\\\"y\",\"state\":\"firing\","
      "\"severity\":\"warning\",\"alert_text\":\"{\\\"a\\\": \\ufffd\"}", 1 },
    { "string_with_spaces_kept", "A", "firing", "critical", "{\"s\": \"x  \\\" y\\n\" }", "error",
      "{\"kind\":\"alert\",\"alertname\":\"A\",\"state\":\"firing\",\"severity\":\"critical\"}",
      "{\"kind\":\"alert\",\"ts\":1795305600005000000,\"alertname\":\"A\",\"state\":\"firing\","
      "\"severity\":\"critical\",\"alert\":{\"s\":\"x  \\\" y\\n\"}}", 0 },
};

static void test_alert_body(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "env = prod\n");
    int bad = 0;
    for (size_t i = 0; i < ARRAY_LEN(alert_rows); i++) {
        const char *j = alert_rows[i].json;
        loki_alert(f.l, alert_rows[i].alertname, alert_rows[i].state, alert_rows[i].severity, j,
                   j ? strlen(j) : 0, NOW + (int64_t)i * MS);
        bad += alert_rows[i].bad_json;
    }
    loki_drain(f.l, 5000);
    assert_int_equal(ctr(&f, "loki_entries_total", "kind=alert"), ARRAY_LEN(alert_rows));
    assert_int_equal(ctr(&f, "loki_alert_bad_json_total", NULL), bad);
    assert_int_equal(srv_count(srv), 1);
    json_t *root = check_push(&srv->reqs[0]);
    for (size_t i = 0; i < ARRAY_LEN(alert_rows); i++) {
        json_t *labels, *line, *md;
        if (!find_entry(root, NOW + (long long)i * MS, &labels, &line, &md))
            fail_msg("%s: no entry at its timestamp", alert_rows[i].name);
        char want[256];
        snprintf(want, sizeof want, "{\"service\":\"tokmon\",\"env\":\"prod\",\"level\":\"%s\"}",
                 alert_rows[i].level);
        assert_json(labels, want, "stream labels", alert_rows[i].name);
        assert_json(md, alert_rows[i].meta, "structured metadata", alert_rows[i].name);
        assert_json(line, alert_rows[i].line, "line", alert_rows[i].name);
        json_decref(line);
    }
    json_decref(root);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- batching ------------------------------------------------------------------ */

/* The bytes of one value in a body holding n identical-size values in one
 * stream. */
static size_t value_len(const req_t *r, size_t n)
{
    const char *a = strstr(r->body, "\"values\":[");
    assert_non_null(a);
    a += strlen("\"values\":[");
    size_t vtext = (size_t)(r->body + r->len - a) - strlen("]}]}");
    assert_int_equal((vtext + 1) % n, 0);
    return (vtext + 1) / n - 1;
}

static void test_batch_size(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "loki_batch_size = 1024\nloki_batch_wait = 60s\n");
    int64_t *pushes = stats_counter(f.st, "loki_pushes_total", NULL);
    size_t k = 0; /* calls queued when the first push started */
    for (size_t i = 0; i < 100 && !*pushes; i++) {
        char id[16];
        snprintf(id, sizeof id, "req-%03zu", i); /* every value the same size */
        msg_usage_t u = usage(id);
        loki_call(f.l, &u, NOW + 1000 + (int64_t)i);
        long ms = loki_work(f.l, NOW + 1000 + (int64_t)i);
        if (!*pushes)
            assert_int_equal(ms, 1000); /* 60 s away, capped at 1 s */
        k = i + 1;
    }
    assert_int_equal(*pushes, 1);
    pump_until(&f, NOW + 2000, "loki_batches_sent_total", NULL, 1);
    size_t sent = (size_t)ctr(&f, "loki_entries_sent_total", NULL);
    size_t len = value_len(&srv->reqs[0], sent);
    /* the push started with the first call that made the queue reach the size;
     * it took as many entries as fit in it */
    assert_true((k - 1) * (len + 1) < 1024 && k * (len + 1) >= 1024);
    assert_int_equal(sent, 1024 / (len + 1));
    assert_int_equal(gauge(&f, "loki_queue"), (int64_t)(k - sent));
    json_decref(check_push(&srv->reqs[0]));
    /* the rest waits for the batch wait */
    assert_true(loki_work(f.l, NOW + 2000) > 0);
    assert_int_equal(*pushes, 1);
    pump_until(&f, NOW + 1000 + 100 + 60000 * MS, "loki_batches_sent_total", NULL, 2);
    assert_int_equal(ctr(&f, "loki_entries_sent_total", NULL), (int64_t)k);
    fix_close(&f);
    srv_stop(&srv);
}

static void test_batch_wait(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "loki_batch_wait = 500ms\n");
    int64_t *pushes = stats_counter(f.st, "loki_pushes_total", NULL);
    assert_int_equal(loki_work(f.l, NOW), 1000); /* idle */
    msg_usage_t u = usage("a");
    loki_call(f.l, &u, NOW);
    u = usage("b");
    loki_call(f.l, &u, NOW + 300 * MS); /* the oldest entry decides */
    static const struct {
        int64_t at;
        long want_ms; /* -1: a push starts */
    } rows[] = {
        { NOW, 500 },
        { NOW + 1, 500 },            /* rounded up */
        { NOW + 200 * MS, 300 },
        { NOW + 499 * MS, 1 },
        { NOW + 499 * MS + 999999, 1 },
        { NOW + 500 * MS, -1 },
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        long ms = loki_work(f.l, rows[i].at);
        if (rows[i].want_ms < 0) {
            assert_int_equal(*pushes, 1);
        } else {
            assert_int_equal(*pushes, 0);
            assert_int_equal(ms, rows[i].want_ms);
        }
    }
    pump_until(&f, NOW + 500 * MS, "loki_entries_sent_total", NULL, 2);

    /* a clock that stepped back further than the wait does not hold a batch */
    u = usage("c");
    loki_call(f.l, &u, NOW + 10000 * MS);
    assert_int_equal(loki_work(f.l, NOW + 10000 * MS), 500);
    loki_work(f.l, NOW);
    assert_int_equal(*pushes, 2);
    pump_until(&f, NOW, "loki_entries_sent_total", NULL, 3);
    fix_close(&f);
    srv_stop(&srv);
}

static void test_queue_overflow(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "loki_queue = 5\n");
    for (int i = 0; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        msg_usage_t u = usage(id);
        loki_call(f.l, &u, NOW + i);
        assert_int_equal(gauge(&f, "loki_queue"), i < 5 ? i + 1 : 5);
    }
    assert_int_equal(ctr(&f, "loki_dropped_total", "reason=queue_full"), 3);
    assert_int_equal(ctr(&f, "loki_entries_total", "kind=call"), 8);
    loki_drain(f.l, 5000);
    assert_int_equal(gauge(&f, "loki_queue"), 0);
    assert_int_equal(srv_count(srv), 1);
    json_t *root = check_push(&srv->reqs[0]);
    json_t *values = json_object_get(json_array_get(json_object_get(root, "streams"), 0), "values");
    assert_int_equal(json_array_size(values), 5);
    for (size_t i = 0; i < 5; i++) {
        json_error_t je;
        json_t *line = json_loads(json_string_value(json_array_get(json_array_get(values, i), 1)), 0, &je);
        char want[16];
        snprintf(want, sizeof want, "r%zu", i + 3); /* the oldest three went */
        assert_string_equal(json_string_value(json_object_get(line, "request_id")), want);
        json_decref(line);
    }
    json_decref(root);
    assert_int_equal(ctr(&f, "loki_dropped_total", "reason=shutdown"), 0);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- the retry policy ---------------------------------------------------------- */

static void write_file(char *path, size_t cap, const char *text)
{
    snprintf(path, cap, "/tmp/loki_test_pw.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_retry_policy(void **state)
{
    (void)state;
    static const act_t plan[] = {
        { 500, NULL, "boom" },
        { 429, "Retry-After: 3600\r\n", "slow down" }, /* capped at loki_backoff_max */
        { 204, NULL, NULL },
        { 400, NULL, "entry for stream '{service=\"tokmon\"}' has timestamp too old" },
        { 503, "Retry-After: 0\r\n", NULL },
        { 502, NULL, NULL },
        { 504, NULL, NULL },
    };
    srv_t *srv = srv_start(plan, ARRAY_LEN(plan));
    fix_t f;
    char pw[64], lines[512];
    write_file(pw, sizeof pw, "glc_eyJr+/=tok\n");
    snprintf(lines, sizeof lines,
             "loki_user = 123456\nloki_password_file = %s\nloki_tenant = team-a\n"
             "loki_retries = 2\nloki_backoff_max = 50ms\nloki_batch_wait = 1ms\n", pw);
    fix_open(&f, srv, NULL, lines);
    snprintf(f.pwfile, sizeof f.pwfile, "%s", pw);

    /* batch A: 500, 429, then 204 */
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof id, "a%d", i);
        msg_usage_t u = usage(id);
        loki_call(f.l, &u, tmtime_now_ns());
    }
    int64_t t0 = tmtime_mono_ns();
    pump_until(&f, 0, "loki_batches_sent_total", NULL, 1);
    assert_true(tmtime_mono_ns() - t0 < 2000 * MS); /* Retry-After: 3600 was capped */
    assert_int_equal(srv_count(srv), 3);
    assert_int_equal(ctr(&f, "loki_pushes_total", NULL), 3);
    assert_int_equal(ctr(&f, "loki_retries_total", NULL), 2);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=http_5xx"), 1);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=http_429"), 1);
    assert_int_equal(ctr(&f, "loki_entries_sent_total", NULL), 3);
    for (size_t i = 0; i < 3; i++) {
        const req_t *q = &srv->reqs[i];
        json_decref(check_push(q));
        assert_string_equal(q->auth, "Basic MTIzNDU2OmdsY19leUpyKy89dG9r");
        assert_string_equal(q->org, "team-a");
        /* every try sends the same bytes */
        assert_int_equal(q->rawlen, srv->reqs[0].rawlen);
        assert_memory_equal(q->raw, srv->reqs[0].raw, q->rawlen);
        if (i)
            assert_true(q->at - srv->reqs[i - 1].at < 1000 * MS);
    }

    /* batch B: 400, dropped at once, not retried */
    msg_usage_t u = usage("b0");
    loki_call(f.l, &u, tmtime_now_ns());
    u = usage("b1");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_dropped_total", "reason=rejected", 2);
    assert_int_equal(srv_count(srv), 4);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=http_4xx"), 1);
    assert_int_equal(ctr(&f, "loki_retries_total", NULL), 2);

    /* batch C: 503, 502, 504: out of tries (1 + loki_retries), dropped */
    u = usage("c0");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_dropped_total", "reason=retries_exhausted", 1);
    assert_int_equal(srv_count(srv), 7);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=http_5xx"), 4);
    assert_int_equal(ctr(&f, "loki_retries_total", NULL), 4);
    assert_int_equal(ctr(&f, "loki_pushes_total", NULL), 7);

    /* and the next batch goes through again */
    u = usage("d0");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_batches_sent_total", NULL, 2);
    assert_int_equal(ctr(&f, "loki_entries_sent_total", NULL), 4);
    assert_true(gauge(&f, "loki_last_push_ms") >= 0);
    assert_true(gauge(&f, "loki_last_success_seconds") > 0);
    fix_close(&f);
    srv_stop(&srv);
}

/* The waits between tries grow, are jittered and capped. */
static void test_backoff(void **state)
{
    (void)state;
    static const act_t plan[] = { { 500, NULL, NULL }, { 500, NULL, NULL }, { 500, NULL, NULL },
                                  { 500, NULL, NULL }, { 500, NULL, NULL } };
    srv_t *srv = srv_start(plan, ARRAY_LEN(plan));
    fix_t f;
    fix_open(&f, srv, NULL, "loki_retries = 4\nloki_backoff_max = 300ms\nloki_batch_wait = 1ms\n");
    msg_usage_t u = usage("x");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_dropped_total", "reason=retries_exhausted", 1);
    assert_int_equal(srv_count(srv), 5);
    /* 200 ms base with equal jitter: [100, 200], then [150, 300] capped */
    static const int64_t lo[] = { 90, 140, 140, 140 }, hi[] = { 350, 450, 450, 450 };
    for (size_t i = 1; i < 5; i++) {
        int64_t d = (srv->reqs[i].at - srv->reqs[i - 1].at) / MS;
        if (d < lo[i - 1] || d > hi[i - 1])
            fail_msg("wait %zu: %lld ms, want %lld..%lld", i, (long long)d, (long long)lo[i - 1],
                     (long long)hi[i - 1]);
    }
    fix_close(&f);
    srv_stop(&srv);
}

static void test_transport_errors(void **state)
{
    (void)state;
    /* a port nobody listens on */
    srv_t *srv = srv_start(NULL, 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv->port);
    srv_stop(&srv);
    fix_t f;
    fix_open(&f, NULL, url, "loki_retries = 1\nloki_backoff_max = 10ms\nloki_batch_wait = 1ms\n");
    msg_usage_t u = usage("x");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_dropped_total", "reason=retries_exhausted", 1);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=transport"), 2);
    assert_int_equal(ctr(&f, "loki_pushes_total", NULL), 2);
    fix_close(&f);

    /* no answer: the timeout, then a try that works */
    static const act_t plan[] = { { 0, NULL, NULL }, { 204, NULL, NULL } };
    srv = srv_start(plan, ARRAY_LEN(plan));
    fix_open(&f, srv, NULL, "loki_timeout = 200ms\nloki_backoff_max = 10ms\nloki_batch_wait = 1ms\n");
    u = usage("y");
    loki_call(f.l, &u, tmtime_now_ns());
    pump_until(&f, 0, "loki_entries_sent_total", NULL, 1);
    assert_int_equal(ctr(&f, "loki_push_errors_total", "reason=timeout"), 1);
    assert_int_equal(srv_count(srv), 2);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- drain --------------------------------------------------------------------- */

static void test_drain(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0);
    fix_t f;
    fix_open(&f, srv, NULL, "loki_batch_size = 1024\nloki_batch_wait = 10m\n");
    for (int i = 0; i < 40; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%02d", i);
        msg_usage_t u = usage(id);
        loki_call(f.l, &u, NOW + i);
    }
    assert_int_equal(ctr(&f, "loki_pushes_total", NULL), 0);
    loki_drain(f.l, 5000); /* several batches, one after the other */
    assert_int_equal(ctr(&f, "loki_entries_sent_total", NULL), 40);
    assert_true(srv_count(srv) > 1);
    for (size_t i = 0; i < srv_count(srv); i++)
        json_decref(check_push(&srv->reqs[i]));
    fix_close(&f);
    srv_stop(&srv);

    /* a Loki that never takes it: drain gives up on time, counted */
    srv = srv_start2(NULL, 0, 500);
    fix_open(&f, srv, NULL, "loki_backoff_max = 50ms\nloki_retries = 1000\n");
    for (int i = 0; i < 3; i++) {
        msg_usage_t u = usage("z");
        loki_call(f.l, &u, NOW + i);
    }
    int64_t t0 = tmtime_mono_ns();
    loki_drain(f.l, 300);
    int64_t took = (tmtime_mono_ns() - t0) / MS;
    assert_true(took >= 290 && took < 1500);
    assert_true(srv_count(srv) >= 2);
    assert_int_equal(ctr(&f, "loki_dropped_total", "reason=shutdown"), 3);
    assert_int_equal(gauge(&f, "loki_queue"), 0);
    fix_close(&f);
    srv_stop(&srv);

    /* entries left at destroy are counted too */
    srv = srv_start(NULL, 0);
    fix_open(&f, srv, NULL, NULL);
    msg_usage_t u = usage("w");
    loki_call(f.l, &u, NOW);
    int64_t *shut = stats_counter(f.st, "loki_dropped_total", "reason=shutdown");
    loki_destroy(&f.l);
    assert_int_equal(*shut, 1);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- settings ------------------------------------------------------------------ */

static void test_settings(void **state)
{
    (void)state;
    char pw_ok[64], pw_empty[64], pw_two[64];
    write_file(pw_ok, sizeof pw_ok, "secret\r\n");
    write_file(pw_empty, sizeof pw_empty, "\n");
    write_file(pw_two, sizeof pw_two, "a\nb\n");
    struct {
        const char *name;
        const char *lines;
        const char *pw; /* loki_password_file */
        bool off, failed;
        const char *err;
    } rows[] = {
        { "off", "loki_url =\n", NULL, true, false, "" },
        { "bad_scheme", "loki_url = ftp://x/\n", NULL, false, true, "loki_url" },
        { "no_scheme", "loki_url = 127.0.0.1:3100\n", NULL, false, true, "loki_url" },
        { "user_without_password", "loki_url = http://h\nloki_user = 1\n", NULL, false, true, "loki_user" },
        { "password_without_user", "loki_url = http://h\n", pw_ok, false, true,
          "loki_password_file" },
        { "missing_password_file", "loki_url = http://h\nloki_user = 1\n",
          "/nonexistent/pw", false, true, "No such file" },
        { "empty_password", "loki_url = http://h\nloki_user = 1\n", pw_empty,
          false, true, "empty" },
        { "two_lines", "loki_url = http://h\nloki_user = 1\n", pw_two, false,
          true, "more than one line" },
        { "ok", "loki_url = https://logs.example/\nloki_user = 1\n", pw_ok,
          false, false, "" },
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char text[512], err[512] = "";
        snprintf(text, sizeof text, "[exporter]\n%sloki_password_file = %s\n", rows[i].lines,
                 rows[i].pw ? rows[i].pw : "");
        cfg_t *cfg = cfg_load_string(text, strlen(text), "t.ini", NULL, err, sizeof err);
        if (!cfg)
            fail_msg("%s: config: %s", rows[i].name, err);
        stats_t *st = stats_new("t", "t");
        bool failed = !rows[i].failed;
        loki_t *l = loki_new(cfg, st, &failed, err, sizeof err);
        if (failed != rows[i].failed || (!l) != (rows[i].off || rows[i].failed))
            fail_msg("%s: failed=%d l=%p err=%s", rows[i].name, failed, (void *)l, err);
        if (rows[i].failed && !strstr(err, rows[i].err))
            fail_msg("%s: err %s, want %s", rows[i].name, err, rows[i].err);
        loki_destroy(&l);
        stats_destroy(&st);
        cfg_destroy(&cfg);
    }
    unlink(pw_ok);
    unlink(pw_empty);
    unlink(pw_two);

    /* NULL (Loki off) is accepted everywhere */
    msg_usage_t u = usage("x");
    loki_call(NULL, &u, NOW);
    loki_alert(NULL, "a", "firing", "critical", NULL, 0, NOW);
    assert_int_equal(loki_work(NULL, NOW), 1000);
    loki_drain(NULL, 10);
    loki_t *none = NULL;
    loki_destroy(&none);
}

/* Base URL forms: the push path is added once; no tenant, no auth. */
static void test_urls(void **state)
{
    (void)state;
    static const char *const forms[] = { "", "/", "//", "/loki/api/v1/push" };
    for (size_t i = 0; i < ARRAY_LEN(forms); i++) {
        srv_t *srv = srv_start(NULL, 0);
        char url[128];
        snprintf(url, sizeof url, "http://127.0.0.1:%d%s", srv->port, forms[i]);
        fix_t f;
        fix_open(&f, srv, url, NULL);
        msg_usage_t u = usage("x");
        loki_call(f.l, &u, NOW);
        loki_drain(f.l, 5000);
        assert_int_equal(srv_count(srv), 1);
        json_decref(check_push(&srv->reqs[0]));
        assert_false(srv->reqs[0].has_auth);
        assert_false(srv->reqs[0].has_org);
        fix_close(&f);
        srv_stop(&srv);
    }
}

int main(int argc, char **argv)
{
    log_setup("loki_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_body),   cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_alert_body),  cmocka_unit_test(test_batch_size),
        cmocka_unit_test(test_batch_wait),  cmocka_unit_test(test_queue_overflow),
        cmocka_unit_test(test_retry_policy), cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_transport_errors), cmocka_unit_test(test_drain),
        cmocka_unit_test(test_settings),    cmocka_unit_test(test_urls),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("loki", tests, NULL, NULL);
}

/* api_test: the exporter's JSON API through a real web_t on 127.0.0.1:0,
 * driven from this one thread with libcurl's multi interface (the test
 * pumps web_run and api_work while a request is in flight) and with plain
 * sockets: the key (missing, wrong, right, both headers, no key file, bad
 * key files), 404/405/400, /api/v1/usage after model_usage, the
 * aggregator's endpoints against a fake aggregator (a ROUTER thread with
 * canned answers: normal, refused, garbage, silent), /api/v1/history
 * without a PostgreSQL, health and readiness, and the stream (ids,
 * Last-Event-ID, the gap event, keepalive, the stream limit, a client that
 * does not read, stopping with a stream waiting). Run one test alone with
 * `api_test NAME`. Real aggregator and PostgreSQL answers are checked in
 * tests/integration/cases_exporter_api.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "api.h"
#include "cfg.h"
#include "log.h"
#include "mbuf.h"
#include "model.h"
#include "msg.h"
#include "stats.h"
#include "tmtime.h"
#include "web.h"

#define S 1000000000LL
#define KEY "test-key-0123456789abcdef"
#define RING 16 /* [exporter] stream_buffer in these tests */

/* ---- a fake aggregator ------------------------------------------------------------ */

typedef struct {
    void *ctx, *sock;
    pthread_t th;
    atomic_bool stop, silent;
    char endpoint[128];
    pthread_mutex_t mu;
    /* the last request, as the fake read it */
    char q[32], id[2048], by[32], metric[32];
    int64_t window, n;
    bool has_n;
    int nreq;
} fagg_t;

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void pk_head(msgpack_packer *pk, uint32_t extra)
{
    msgpack_pack_map(pk, 3 + extra);
    pk_str(pk, "ok"), msgpack_pack_true(pk);
    pk_str(pk, "shard"), msgpack_pack_uint32(pk, 0);
    pk_str(pk, "shards"), msgpack_pack_uint32(pk, 1);
}

static void copy_str(char *dst, size_t cap, const msgpack_object *v)
{
    size_t n = v->via.str.size < cap - 1 ? v->via.str.size : cap - 1;
    memcpy(dst, v->via.str.ptr, n);
    dst[n] = '\0';
}

static void fake_read(fagg_t *g, const char *data, size_t len)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    pthread_mutex_lock(&g->mu);
    g->q[0] = g->id[0] = g->by[0] = g->metric[0] = '\0';
    g->window = -1;
    g->has_n = false;
    g->nreq++;
    if (msgpack_unpack_next(&up, data, len, &off) == MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
            const msgpack_object *k = &up.data.via.map.ptr[i].key, *v = &up.data.via.map.ptr[i].val;
            char key[32];
            copy_str(key, sizeof key, k);
            if (v->type == MSGPACK_OBJECT_STR && !strcmp(key, "q"))
                copy_str(g->q, sizeof g->q, v);
            else if (v->type == MSGPACK_OBJECT_STR && (!strcmp(key, "id") || !strcmp(key, "name")))
                copy_str(g->id, sizeof g->id, v);
            else if (v->type == MSGPACK_OBJECT_STR && !strcmp(key, "by"))
                copy_str(g->by, sizeof g->by, v);
            else if (v->type == MSGPACK_OBJECT_STR && !strcmp(key, "metric"))
                copy_str(g->metric, sizeof g->metric, v);
            else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && !strcmp(key, "window"))
                g->window = (int64_t)v->via.u64;
            else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && !strcmp(key, "n"))
                g->n = (int64_t)v->via.u64, g->has_n = true;
        }
    }
    pthread_mutex_unlock(&g->mu);
    msgpack_unpacked_destroy(&up);
}

/* The canned answer to the request just read; false: no answer. */
static bool fake_answer(fagg_t *g, mbuf_t *out)
{
    msgpack_packer pk;
    mbuf_packer(out, &pk);
    int64_t now = tmtime_now_ns();
    pthread_mutex_lock(&g->mu);
    char q[32], id[2048], by[32], metric[32];
    memcpy(q, g->q, sizeof q);
    memcpy(metric, g->metric, sizeof metric);
    memcpy(id, g->id, sizeof id);
    memcpy(by, g->by, sizeof by);
    int64_t window = g->window;
    pthread_mutex_unlock(&g->mu);
    if (!strcmp(id, "slow"))
        return false;
    if (!strcmp(id, "garbage")) {
        mbuf_append(out, "\xc1 not msgpack", 13);
        return true;
    }
    if (!strcmp(id, "nope")) {
        msgpack_pack_map(&pk, 2);
        pk_str(&pk, "ok"), msgpack_pack_false(&pk);
        pk_str(&pk, "error"), pk_str(&pk, "window is longer than the history kept");
        return true;
    }
    if (!strcmp(q, "budgets")) {
        pk_head(&pk, 2);
        pk_str(&pk, "now"), msgpack_pack_int64(&pk, now);
        pk_str(&pk, "budgets");
        if (!strcmp(id, "none")) {
            msgpack_pack_array(&pk, 0);
            return true;
        }
        msgpack_pack_array(&pk, 1);
        msg_budget_t b = { 0 };
        b.name = span_cstr("daily");
        b.scope = span_cstr("global");
        b.period = span_cstr("day");
        b.period_start = 1795305600LL * S;
        b.period_end = b.period_start + 86400 * S;
        b.limit_nusd = 10 * S;
        b.spent_nusd = 4750000;
        b.remaining_nusd = b.limit_nusd - b.spent_nusd;
        b.forecast_avg_nusd = 9500000;
        b.forecast_rate_nusd = 1;
        b.warn_pct = 80;
        b.state = span_cstr("ok");
        b.ts = now;
        b.shards = 1;
        msg_budget_pack(&pk, &b);
        return true;
    }
    if (!strcmp(q, "quota")) {
        pk_head(&pk, 8);
        pk_str(&pk, "subject"), pk_str(&pk, "user");
        pk_str(&pk, "id"), pk_str(&pk, id);
        pk_str(&pk, "known"), msgpack_pack_true(&pk);
        pk_str(&pk, "state"), pk_str(&pk, "warning");
        pk_str(&pk, "warn_pct"), msgpack_pack_int64(&pk, 80);
        pk_str(&pk, "now"), msgpack_pack_int64(&pk, now);
        pk_str(&pk, "window_requests"), msgpack_pack_uint64(&pk, 3);
        pk_str(&pk, "windows"), msgpack_pack_array(&pk, 2);
        for (int u = 0; u < 2; u++) {
            msgpack_pack_map(&pk, 8);
            pk_str(&pk, "window"), pk_str(&pk, "day");
            pk_str(&pk, "unit"), pk_str(&pk, u ? "usd" : "tokens");
            pk_str(&pk, "used"), msgpack_pack_int64(&pk, u ? 4750000 : 900);
            pk_str(&pk, "limit"), msgpack_pack_int64(&pk, u ? 0 : 1000);
            pk_str(&pk, "remaining");
            if (u)
                msgpack_pack_nil(&pk);
            else
                msgpack_pack_int64(&pk, 100);
            pk_str(&pk, "state"), pk_str(&pk, u ? "ok" : "warning");
            pk_str(&pk, "start"), msgpack_pack_int64(&pk, 1795305600LL * S);
            pk_str(&pk, "reset"), msgpack_pack_int64(&pk, 1795392000LL * S);
        }
        return true;
    }
    if (!strcmp(q, "top") || !strcmp(q, "usage")) {
        static const struct {
            const char *key;
            uint64_t req, tok;
            int64_t nusd;
        } rows[] = { { "alice", 3, 300, 4750000 },
                     { "bob", 1, 900, 1000 },
                     { "carol", 1, 50, 2000 } };
        pk_head(&pk, 8);
        pk_str(&pk, "by"), pk_str(&pk, by[0] ? by : "user");
        pk_str(&pk, "metric"), pk_str(&pk, metric[0] ? metric : "cost");
        pk_str(&pk, "window"), msgpack_pack_int64(&pk, window);
        pk_str(&pk, "from"), msgpack_pack_int64(&pk, now - window * S);
        pk_str(&pk, "to"), msgpack_pack_int64(&pk, now);
        pk_str(&pk, "keys"), msgpack_pack_uint64(&pk, 3);
        pk_str(&pk, "truncated"), msgpack_pack_false(&pk);
        pk_str(&pk, "rows"), msgpack_pack_array(&pk, 3);
        for (int i = 0; i < 3; i++) {
            msgpack_pack_map(&pk, 4);
            pk_str(&pk, "key"), pk_str(&pk, rows[i].key);
            pk_str(&pk, "requests"), msgpack_pack_uint64(&pk, rows[i].req);
            pk_str(&pk, "tokens"), msgpack_pack_uint64(&pk, rows[i].tok);
            pk_str(&pk, "cost_nusd"), msgpack_pack_int64(&pk, rows[i].nusd);
        }
        return true;
    }
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "ok"), msgpack_pack_false(&pk);
    pk_str(&pk, "error"), pk_str(&pk, "unknown question");
    return true;
}

static void *fake_run(void *arg)
{
    fagg_t *g = arg;
    mbuf_t out = { 0 };
    while (!atomic_load(&g->stop)) {
        zmq_pollitem_t it = { g->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        zmq_msg_t part[4];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, g->sock, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (n < 4)
                part[n++] = m;
            else
                zmq_msg_close(&m);
        }
        if (n == 3) { /* identity, empty delimiter, request */
            fake_read(g, zmq_msg_data(&part[2]), zmq_msg_size(&part[2]));
            mbuf_reset(&out);
            if (!atomic_load(&g->silent) && fake_answer(g, &out)) {
                zmq_send(g->sock, zmq_msg_data(&part[0]), zmq_msg_size(&part[0]), ZMQ_SNDMORE);
                zmq_send(g->sock, "", 0, ZMQ_SNDMORE);
                zmq_send(g->sock, out.data, out.len, 0);
            }
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&part[i]);
    }
    mbuf_free(&out);
    return NULL;
}

static void fake_start(fagg_t *g)
{
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    g->ctx = zmq_ctx_new();
    g->sock = zmq_socket(g->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(g->sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(g->sock, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof g->endpoint;
    zmq_getsockopt(g->sock, ZMQ_LAST_ENDPOINT, g->endpoint, &len);
    pthread_create(&g->th, NULL, fake_run, g);
}

static void fake_stop(fagg_t *g)
{
    atomic_store(&g->stop, true);
    pthread_join(g->th, NULL);
    zmq_close(g->sock);
    zmq_ctx_term(g->ctx);
    pthread_mutex_destroy(&g->mu);
}

/* ---- the fixture ------------------------------------------------------------------ */

typedef struct {
    fagg_t agg;
    char dir[64], keyfile[96];
    cfg_t *cfg;
    stats_t *st;
    model_t *m;
    api_t *a;
    web_t *w;
    CURLM *cm;
    int64_t skew; /* added to the wall clock given to the api */
} fix_t;

static fix_t *g_fix; /* for teardown */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* lines: more [exporter] keys; key_line false: no api_key_file */
static fix_t *fix_open(const char *lines, bool key)
{
    fix_t *f = calloc(1, sizeof *f);
    fake_start(&f->agg);
    snprintf(f->dir, sizeof f->dir, "/tmp/api_test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->keyfile, sizeof f->keyfile, "%s/key", f->dir);
    write_file(f->keyfile, KEY "\n");
    chmod(f->keyfile, 0600);
    char ini[2048], err[2048];
    snprintf(ini, sizeof ini,
             "[global]\ninstance = test\n"
             "[aggregator]\nquery = %s\nhistory = 1h\n"
             "[exporter]\napi_key_file = %s\nquery_timeout = 300ms\nstream_buffer = %d\n%s\n",
             f->agg.endpoint, key ? f->keyfile : "", RING, lines ? lines : "");
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    f->st = stats_new("tokmon-exporter", "exp@test");
    f->m = model_new(f->cfg, f->st, err, sizeof err);
    assert_non_null(f->m);
    f->a = api_new(f->cfg, f->m, f->st, err, sizeof err);
    if (!f->a)
        fail_msg("api_new: %s", err);
    f->w = web_new("127.0.0.1:0", f->m, f->a, f->st, err, sizeof err);
    if (!f->w)
        fail_msg("web_new: %s", err);
    f->cm = curl_multi_init();
    g_fix = f;
    return f;
}

static void fix_close(fix_t *f)
{
    curl_multi_cleanup(f->cm);
    api_destroy(&f->a); /* before the web server: it resumes waiting streams */
    assert_null(f->a);
    web_destroy(&f->w);
    model_destroy(&f->m);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
    fake_stop(&f->agg);
    unlink(f->keyfile);
    rmdir(f->dir);
    free(f);
    g_fix = NULL;
}

static int teardown(void **state)
{
    (void)state;
    if (g_fix)
        fix_close(g_fix);
    return 0;
}

static int64_t now_ns(const fix_t *f) { return tmtime_now_ns() + f->skew; }

static int64_t ctr(fix_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->st, name, labels);
}

/* ---- HTTP from the test ----------------------------------------------------------- */

typedef struct {
    CURL *e;
    struct curl_slist *hdrs;
    mbuf_t body, head;
    bool done;
    CURLcode rc;
    long status;
} req_t;

static size_t on_data(char *p, size_t sz, size_t n, void *arg)
{
    mbuf_append(arg, p, sz * n);
    return sz * n;
}

/* One turn of both sides: curl, the web server, the api's clock. */
static void pump(fix_t *f)
{
    int running;
    curl_multi_perform(f->cm, &running);
    CURLMsg *m;
    int q;
    while ((m = curl_multi_info_read(f->cm, &q))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        req_t *r;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->done = true;
        r->rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &r->status);
    }
    web_run(f->w);
    api_work(f->a, now_ns(f));
    curl_multi_poll(f->cm, NULL, 0, 2, NULL);
}

static void pump_ms(fix_t *f, int ms)
{
    int64_t end = tmtime_mono_ns() + ms * 1000000LL;
    while (tmtime_mono_ns() < end)
        pump(f);
}

static void req_start(fix_t *f, req_t *r, const char *method, const char *path, const char *h1,
                      const char *h2)
{
    memset(r, 0, sizeof *r);
    r->e = curl_easy_init();
    char url[2048];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", web_port(f->w), path);
    curl_easy_setopt(r->e, CURLOPT_URL, url);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(r->e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET"))
        curl_easy_setopt(r->e, CURLOPT_CUSTOMREQUEST, method);
    if (h1)
        r->hdrs = curl_slist_append(r->hdrs, h1);
    if (h2)
        r->hdrs = curl_slist_append(r->hdrs, h2);
    if (r->hdrs)
        curl_easy_setopt(r->e, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(r->e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->e, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(r->e, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(r->e, CURLOPT_HEADERDATA, &r->head);
    curl_easy_setopt(r->e, CURLOPT_PRIVATE, (char *)r);
    curl_multi_add_handle(f->cm, r->e);
}

static const char *text_of(mbuf_t *b)
{
    mbuf_append(b, "", 1);
    b->len--;
    return b->data;
}

static void req_wait(fix_t *f, req_t *r)
{
    int64_t end = tmtime_mono_ns() + 10 * S;
    while (!r->done) {
        if (tmtime_mono_ns() > end)
            fail_msg("no answer within 10 s");
        pump(f);
    }
    assert_int_equal(r->rc, CURLE_OK);
    text_of(&r->body);
    text_of(&r->head);
}

static void req_free(fix_t *f, req_t *r)
{
    curl_multi_remove_handle(f->cm, r->e);
    curl_easy_cleanup(r->e);
    curl_slist_free_all(r->hdrs);
    mbuf_free(&r->body);
    mbuf_free(&r->head);
}

/* One whole request: its status, and its body as JSON in *out (NULL: not
 * wanted; the test decrefs it). */
static long call2(fix_t *f, const char *method, const char *path, const char *h1, const char *h2,
                  json_t **out)
{
    req_t r;
    req_start(f, &r, method, path, h1, h2);
    req_wait(f, &r);
    long st = r.status;
    if (out) {
        json_error_t je;
        *out = json_loads(text_of(&r.body), 0, &je);
        if (!*out)
            fail_msg("%s %s: not JSON (%s): %s", method, path, je.text, r.body.data);
    }
    req_free(f, &r);
    return st;
}

static long get(fix_t *f, const char *path, json_t **out)
{
    return call2(f, "GET", path, "X-Api-Key: " KEY, NULL, out);
}

static const char *jget_s(const json_t *j, const char *key)
{
    const json_t *v = json_object_get(j, key);
    if (!json_is_string(v))
        fail_msg("\"%s\" is not a string in %s", key, json_dumps(j, JSON_COMPACT));
    return json_string_value(v);
}

static json_int_t jget_i(const json_t *j, const char *key)
{
    const json_t *v = json_object_get(j, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer in %s", key, json_dumps(j, JSON_COMPACT));
    return json_integer_value(v);
}

/* the status and that the body is {"error": "...<want>..."} */
static void expect_error(fix_t *f, const char *method, const char *path, const char *hdr,
                         long status, const char *want)
{
    json_t *j;
    long st = call2(f, method, path, hdr, NULL, &j);
    const char *e = jget_s(j, "error");
    if (st != status || (want && !strstr(e, want)))
        fail_msg("%s %s: %ld %s, want %ld and \"%s\"", method, path, st, e, status,
                 want ? want : "");
    json_decref(j);
}

/* ---- calls ------------------------------------------------------------------------ */

static msg_usage_t a_call(const char *user, uint64_t in, uint64_t out, int64_t nusd, bool error)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr("openai");
    u.model = span_cstr("gpt-4o");
    u.operation = span_cstr("chat");
    u.user = span_cstr(user);
    u.account = span_cstr("acme");
    u.status = span_cstr(error ? "error" : "ok");
    u.cost_source = span_cstr("priced");
    u.price_version = span_cstr("v1");
    u.request_id = span_cstr("req-1");
    u.input_tokens = in;
    u.output_tokens = out;
    u.cache_read_tokens = in / 2;
    u.cost_nusd = nusd;
    u.ts = u.recv_ts = tmtime_now_ns();
    u.latency_us = 1500;
    return u;
}

static void push_calls(fix_t *f, int n)
{
    static uint64_t seq;
    for (int i = 0; i < n; i++) {
        msg_usage_t u = a_call("alice", 100, 20, 4750000, false);
        api_call(f->a, span_cstr("collectd@t"), ++seq, (uint32_t)i, &u, now_ns(f));
    }
}

/* ---- health ----------------------------------------------------------------------- */

static void test_health(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    json_t *j;
    assert_int_equal(call2(f, "GET", "/health", NULL, NULL, &j), 200);
    assert_string_equal(jget_s(j, "status"), "ok");
    json_decref(j);
    assert_int_equal(call2(f, "HEAD", "/health", NULL, NULL, NULL), 200);
    expect_error(f, "DELETE", "/health", NULL, 405, "GET");

    /* no bus yet */
    assert_int_equal(call2(f, "GET", "/health/ready", NULL, NULL, &j), 503);
    assert_string_equal(jget_s(j, "status"), "not ready");
    assert_non_null(strstr(jget_s(j, "reason"), "no bus message"));
    json_decref(j);
    /* the bus is fresh and the aggregator answers */
    api_bus_seen(f->a, now_ns(f));
    assert_int_equal(call2(f, "GET", "/health/ready", NULL, NULL, &j), 200);
    assert_string_equal(jget_s(j, "status"), "ready");
    json_decref(j);
    pthread_mutex_lock(&f->agg.mu);
    int asked = f->agg.nreq;
    assert_string_equal(f->agg.q, "budgets");
    pthread_mutex_unlock(&f->agg.mu);
    /* cached: not asked again at once */
    assert_int_equal(call2(f, "GET", "/health/ready", NULL, NULL, NULL), 200);
    pthread_mutex_lock(&f->agg.mu);
    assert_int_equal(f->agg.nreq, asked);
    pthread_mutex_unlock(&f->agg.mu);
    /* the last message 31 s ago */
    api_bus_seen(f->a, now_ns(f) - 31 * S);
    api_work(f->a, now_ns(f));
    assert_int_equal(call2(f, "GET", "/health/ready", NULL, NULL, &j), 503);
    assert_non_null(strstr(jget_s(j, "reason"), "last 30 s"));
    json_decref(j);
    fix_close(f);
}

static void test_ready_aggregator_down(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    atomic_store(&f->agg.silent, true);
    api_bus_seen(f->a, now_ns(f));
    json_t *j;
    assert_int_equal(call2(f, "GET", "/health/ready", NULL, NULL, &j), 503);
    assert_string_equal(jget_s(j, "status"), "not ready");
    assert_non_null(strstr(jget_s(j, "reason"), "the aggregator does not answer: no answer"));
    json_decref(j);
    assert_int_equal(ctr(f, "api_aggregator_errors_total", "reason=timeout"), 1);
    fix_close(f);
}

/* ---- the key ---------------------------------------------------------------------- */

static void test_key(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    static const struct {
        const char *h1, *h2;
        long status;
    } rows[] = {
        { NULL, NULL, 401 },
        { "X-Api-Key: wrong", NULL, 401 },
        { "X-Api-Key: " KEY "x", NULL, 401 },
        { "X-Api-Key: test-key-0123456789abcdeF", NULL, 401 },
        { "X-Api-Key:", NULL, 401 },
        { "Authorization: Bearer", NULL, 401 },
        { "Authorization: Bearer wrong", NULL, 401 },
        { "Authorization: Basic " KEY, NULL, 401 },
        { "Authorization: " KEY, NULL, 401 },
        { "X-Api-Key: " KEY, NULL, 200 },
        { "X-Api-Key:   " KEY "  ", NULL, 200 },
        { "x-api-key: " KEY, NULL, 200 },
        { "Authorization: Bearer " KEY, NULL, 200 },
        { "Authorization: bearer " KEY, NULL, 200 },
        /* X-Api-Key, when there, decides */
        { "X-Api-Key: wrong", "Authorization: Bearer " KEY, 401 },
        { "X-Api-Key: " KEY, "Authorization: Bearer wrong", 200 },
    };
    int64_t unauth = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        req_t r;
        req_start(f, &r, "GET", "/api/v1/usage", rows[i].h1, rows[i].h2);
        req_wait(f, &r);
        if (r.status != rows[i].status)
            fail_msg("row %zu (%s | %s): %ld, want %ld", i, rows[i].h1 ? rows[i].h1 : "-",
                     rows[i].h2 ? rows[i].h2 : "-", r.status, rows[i].status);
        if (r.status == 401) {
            unauth++;
            assert_non_null(strstr(r.head.data, "WWW-Authenticate: Bearer"));
            assert_non_null(strstr(r.body.data, "{\"error\":"));
            assert_null(strstr(r.body.data, KEY));
        }
        assert_non_null(strstr(r.head.data, "Content-Type: application/json"));
        req_free(f, &r);
    }
    assert_int_equal(ctr(f, "api_unauthorized_total", NULL), unauth);
    assert_int_equal(ctr(f, "api_requests_total", "status=401"), unauth);
    assert_int_equal(ctr(f, "api_requests_total", "status=200"),
                     (int64_t)(sizeof rows / sizeof rows[0]) - unauth);
    /* the key guards every /api path, also unknown ones */
    expect_error(f, "GET", "/api/v1/nope", NULL, 401, "API key");
    expect_error(f, "GET", "/api/v1/stream", NULL, 401, "API key");
    fix_close(f);
}

static void test_no_key_file(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, false);
    json_t *j;
    assert_int_equal(get(f, "/api/v1/usage", &j), 503);
    assert_string_equal(jget_s(j, "error"), "no api_key_file configured");
    json_decref(j);
    assert_int_equal(call2(f, "GET", "/api/v1/stream", NULL, NULL, NULL), 503);
    assert_int_equal(call2(f, "GET", "/health", NULL, NULL, NULL), 200);
    fix_close(f);
}

static void test_key_files(void **state)
{
    (void)state;
    static const struct {
        const char *text; /* NULL: no such file */
        const char *err;  /* NULL: fine */
    } rows[] = {
        { KEY, NULL },
        { KEY "\n", NULL },
        { KEY "\r\n", NULL },
        { KEY "\n\n", NULL },
        { NULL, "No such file" },
        { "", "is empty" },
        { "\n", "is empty" },
        { KEY "\nsecond\n", "more than one line" },
        { "two words\n", "printable ASCII" },
        { "caf\xc3\xa9\n", "printable ASCII" },
    };
    char dir[] = "/tmp/api_test_keys.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], ini[512], err[1024];
    snprintf(path, sizeof path, "%s/key", dir);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        unlink(path);
        if (rows[i].text)
            write_file(path, rows[i].text);
        snprintf(ini, sizeof ini, "[exporter]\napi_key_file = %s\n", path);
        cfg_t *cfg = cfg_load_string(ini, strlen(ini), "t.ini", NULL, err, sizeof err);
        assert_non_null(cfg);
        stats_t *st = stats_new("tokmon-exporter", "t");
        err[0] = '\0';
        api_t *a = api_new(cfg, NULL, st, err, sizeof err);
        if (rows[i].err) {
            if (a || !strstr(err, rows[i].err) || !strstr(err, path))
                fail_msg("row %zu: %s, want an error with \"%s\"", i, a ? "accepted" : err,
                         rows[i].err);
            assert_null(strstr(err, KEY));
        } else if (!a) {
            fail_msg("row %zu: %s", i, err);
        }
        api_destroy(&a);
        stats_destroy(&st);
        cfg_destroy(&cfg);
    }
    unlink(path);
    rmdir(dir);
}

/* ---- routes and parameters -------------------------------------------------------- */

static void test_routes(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    const char *k = "X-Api-Key: " KEY;
    expect_error(f, "GET", "/nope", NULL, 404, "/nope");
    expect_error(f, "GET", "/", NULL, 404, NULL);
    expect_error(f, "GET", "/api/v1/nope", k, 404, "/api/v1/nope");
    expect_error(f, "GET", "/api/v1/usage/", k, 404, NULL);
    expect_error(f, "GET", "/api/v1/quota/", k, 404, NULL);
    expect_error(f, "POST", "/api/v1/usage", k, 405, "use GET");
    expect_error(f, "PUT", "/api/v1/budgets", k, 405, NULL);
    expect_error(f, "DELETE", "/api/v1/stream", k, 405, NULL);
    assert_int_equal(call2(f, "HEAD", "/api/v1/stream", k, NULL, NULL), 405);
    req_t r;
    req_start(f, &r, "POST", "/api/v1/top", k, NULL);
    req_wait(f, &r);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head.data, "Allow: GET, HEAD"));
    req_free(f, &r);
    req_start(f, &r, "POST", "/api/v1/stream", k, NULL);
    req_wait(f, &r);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head.data, "Allow: GET\r\n"));
    req_free(f, &r);
    assert_int_equal(call2(f, "HEAD", "/api/v1/usage", k, NULL, NULL), 200);

    static const struct {
        const char *path, *want;
    } bad[] = {
        { "/api/v1/top?window=abc", "window must be" },
        { "/api/v1/top?window=0", "window must be" },
        { "/api/v1/top?window=-5", "window must be" },
        { "/api/v1/top?window=", "window must be" },
        { "/api/v1/top?window=1w", "window must be" },
        { "/api/v1/top?window=99999999999999999999", "window must be" },
        { "/api/v1/top?window=2h", "longer than the aggregator's history" },
        { "/api/v1/top?window=3601", "longer than the aggregator's history" },
        { "/api/v1/top?by=planet", "by must be" },
        { "/api/v1/top?metric=joules", "metric must be" },
        { "/api/v1/top?n=0", "n must be" },
        { "/api/v1/top?n=10001", "n must be" },
        { "/api/v1/top?n=ten", "n must be" },
        { "/api/v1/usage/window?window=x", "window must be" },
        { "/api/v1/usage/window?by=planet", "by must be" },
        { "/api/v1/usage/window?id=", "id must have" },
        { "/api/v1/quota/alice?subject=team", "subject must be" },
        { "/api/v1/budgets?name=", "name must have" },
        { "/api/v1/stream?last_event_id=abc", "Last-Event-ID" },
        { "/api/v1/stream?last_event_id=-1", "Last-Event-ID" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_error(f, "GET", bad[i].path, k, 400, bad[i].want);
    pthread_mutex_lock(&f->agg.mu);
    assert_int_equal(f->agg.nreq, 0); /* nothing bad reached the aggregator */
    pthread_mutex_unlock(&f->agg.mu);
    assert_int_equal(ctr(f, "api_requests_total", "status=400"), sizeof bad / sizeof bad[0]);
    fix_close(f);
}

/* ---- /api/v1/usage ---------------------------------------------------------------- */

static void test_usage(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    json_t *j;
    assert_int_equal(get(f, "/api/v1/usage", &j), 200);
    assert_int_equal(jget_i(j, "requests"), 0);
    assert_string_equal(jget_s(j, "cost_usd"), "0.000000000");
    assert_true(json_is_null(json_object_get(j, "first_ts")));
    json_decref(j);

    msg_usage_t u1 = a_call("alice", 1000, 200, 4750000, false);
    u1.reasoning_tokens = 50;
    msg_usage_t u2 = a_call("bob", 10, 5, 1234567890123LL, true);
    model_usage(f->m, &u1, now_ns(f));
    model_usage(f->m, &u2, now_ns(f));
    assert_int_equal(get(f, "/api/v1/usage", &j), 200);
    assert_int_equal(jget_i(j, "requests"), 2);
    assert_int_equal(jget_i(j, "errors"), 1);
    assert_int_equal(jget_i(j, "input_tokens"), 1010);
    assert_int_equal(jget_i(j, "cache_read_tokens"), 505);
    assert_int_equal(jget_i(j, "output_tokens"), 205);
    assert_int_equal(jget_i(j, "reasoning_tokens"), 50);
    assert_int_equal(jget_i(j, "total_tokens"), 1215);
    assert_int_equal(jget_i(j, "cost_nusd"), 1234567890123LL + 4750000);
    assert_string_equal(jget_s(j, "cost_usd"), "1234.572640123");
    assert_int_equal(jget_i(j, "first_ts"), u1.recv_ts);
    assert_int_equal(jget_i(j, "last_ts"), u2.recv_ts);
    assert_true(jget_i(j, "since") > 0);
    json_decref(j);
    fix_close(f);
}

/* ---- the aggregator's endpoints --------------------------------------------------- */

static void test_aggregator(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    json_t *j;

    long st = get(f, "/api/v1/budgets", &j);
    if (st != 200)
        fail_msg("budgets: %ld %s", st, json_dumps(j, 0));
    assert_int_equal(jget_i(j, "shards"), 1);
    assert_int_equal(jget_i(j, "shard"), 0);
    json_t *b = json_array_get(json_object_get(j, "budgets"), 0);
    assert_non_null(b);
    assert_string_equal(jget_s(b, "name"), "daily");
    assert_true(json_is_null(json_object_get(b, "scope_value")));
    assert_int_equal(jget_i(b, "spent_nusd"), 4750000);
    assert_string_equal(jget_s(b, "spent_usd"), "0.004750000");
    assert_string_equal(jget_s(b, "limit_usd"), "10.000000000");
    assert_string_equal(jget_s(b, "remaining_usd"), "9.995250000");
    assert_string_equal(jget_s(b, "forecast_rate_usd"), "0.000000001");
    assert_int_equal(jget_i(b, "parts"), 1);
    json_decref(j);
    assert_int_equal(get(f, "/api/v1/budgets?name=none", &j), 200);
    assert_int_equal(json_array_size(json_object_get(j, "budgets")), 0);
    json_decref(j);

    assert_int_equal(get(f, "/api/v1/quota/alice", &j), 200);
    assert_string_equal(jget_s(j, "id"), "alice");
    assert_string_equal(jget_s(j, "state"), "warning");
    json_t *w0 = json_array_get(json_object_get(j, "windows"), 0),
           *w1 = json_array_get(json_object_get(j, "windows"), 1);
    assert_int_equal(jget_i(w0, "used"), 900);
    assert_int_equal(jget_i(w0, "remaining"), 100);
    assert_null(json_object_get(w0, "used_usd"));
    assert_string_equal(jget_s(w1, "used_usd"), "0.004750000");
    assert_true(json_is_null(json_object_get(w1, "remaining")));
    assert_true(json_is_null(json_object_get(w1, "remaining_usd")));
    json_decref(j);
    /* the id from the path, decoded */
    assert_int_equal(get(f, "/api/v1/quota/a%40b%2Fc", &j), 200);
    assert_string_equal(jget_s(j, "id"), "a@b/c");
    json_decref(j);
    assert_int_equal(get(f, "/api/v1/quota/acme?subject=account", &j), 200);
    json_decref(j);

    /* top: by user asks the shards for n rows; other keys for all, cut here */
    assert_int_equal(get(f, "/api/v1/top?by=user&n=2&window=5m", &j), 200);
    pthread_mutex_lock(&f->agg.mu);
    assert_string_equal(f->agg.q, "top");
    assert_int_equal(f->agg.window, 300);
    assert_true(f->agg.has_n);
    assert_int_equal(f->agg.n, 2);
    pthread_mutex_unlock(&f->agg.mu);
    json_t *rows = json_object_get(j, "rows");
    assert_int_equal(json_array_size(rows), 2);
    assert_string_equal(jget_s(json_array_get(rows, 0), "key"), "alice");
    assert_string_equal(jget_s(json_array_get(rows, 0), "cost_usd"), "0.004750000");
    assert_string_equal(jget_s(json_array_get(rows, 1), "key"), "carol");
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
    assert_int_equal(get(f, "/api/v1/top?by=model&metric=tokens&window=1h&n=1", &j), 200);
    pthread_mutex_lock(&f->agg.mu);
    assert_int_equal(f->agg.window, 3600);
    assert_int_equal(f->agg.n, 0);
    assert_string_equal(f->agg.by, "model");
    pthread_mutex_unlock(&f->agg.mu);
    rows = json_object_get(j, "rows");
    assert_int_equal(json_array_size(rows), 1);
    assert_string_equal(jget_s(json_array_get(rows, 0), "key"), "bob"); /* the most tokens */
    json_decref(j);
    assert_int_equal(get(f, "/api/v1/top", &j), 200); /* defaults: user, 1h, 10 */
    pthread_mutex_lock(&f->agg.mu);
    assert_int_equal(f->agg.window, 3600);
    assert_int_equal(f->agg.n, 10);
    assert_string_equal(f->agg.by, "user");
    pthread_mutex_unlock(&f->agg.mu);
    json_decref(j);

    assert_int_equal(get(f, "/api/v1/usage/window?window=300&by=account", &j), 200);
    pthread_mutex_lock(&f->agg.mu);
    assert_string_equal(f->agg.q, "usage");
    assert_int_equal(f->agg.window, 300);
    assert_false(f->agg.has_n);
    pthread_mutex_unlock(&f->agg.mu);
    assert_int_equal(json_array_size(json_object_get(j, "rows")), 3);
    assert_int_equal(jget_i(j, "keys"), 3);
    assert_int_equal(jget_i(j, "window"), 300);
    json_decref(j);
    assert_int_equal(get(f, "/api/v1/usage/window", &j), 200); /* 300 s by user */
    pthread_mutex_lock(&f->agg.mu);
    assert_int_equal(f->agg.window, 300);
    assert_string_equal(f->agg.by, "user");
    pthread_mutex_unlock(&f->agg.mu);
    json_decref(j);

    /* the aggregator refuses (400), answers garbage (502), or is silent (504) */
    expect_error(f, "GET", "/api/v1/quota/nope", "X-Api-Key: " KEY, 400, "the aggregator says");
    expect_error(f, "GET", "/api/v1/quota/garbage", "X-Api-Key: " KEY, 502, "not one msgpack map");
    int64_t t0 = tmtime_mono_ns();
    expect_error(f, "GET", "/api/v1/quota/slow", "X-Api-Key: " KEY, 504, "no answer");
    assert_true(tmtime_mono_ns() - t0 < 2 * S); /* bounded by query_timeout */
    assert_int_equal(ctr(f, "api_aggregator_errors_total", "reason=timeout"), 1);
    assert_int_equal(ctr(f, "api_aggregator_errors_total", "reason=bad_answer"), 1);
    /* and answers again afterwards */
    assert_int_equal(get(f, "/api/v1/budgets", NULL), 200);
    fix_close(f);
}

/* ---- history without a PostgreSQL ------------------------------------------------- */

static void test_history_off(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    expect_error(f, "GET", "/api/v1/history/daily?user=alice", "X-Api-Key: " KEY, 503,
                 "no [exporter] database configured");
    fix_close(f);
}

static void test_history_unavailable(void **state)
{
    (void)state;
    fix_t *f = fix_open("database = host=127.0.0.1 port=1 dbname=nothing user=nobody", true);
    const char *k = "X-Api-Key: " KEY;
    expect_error(f, "GET", "/api/v1/history/daily", k, 400, "user must have");
    expect_error(f, "GET", "/api/v1/history/daily?user=", k, 400, "user must have");
    expect_error(f, "GET", "/api/v1/history/daily?user=alice&days=0", k, 400, "days must be");
    expect_error(f, "GET", "/api/v1/history/daily?user=alice&days=367", k, 400, "days must be");
    expect_error(f, "GET", "/api/v1/history/daily?user=alice&days=x", k, 400, "days must be");
    expect_error(f, "GET", "/api/v1/history/daily?user=alice&days=30", k, 503,
                 "PostgreSQL unavailable");
    /* within the retry pause: at once, with the same reason */
    int64_t t0 = tmtime_mono_ns();
    expect_error(f, "GET", "/api/v1/history/daily?user=alice", k, 503, "PostgreSQL unavailable");
    assert_true(tmtime_mono_ns() - t0 < S / 2);
    assert_int_equal(ctr(f, "api_database_errors_total", "reason=unavailable"), 2);
    fix_close(f);
}

/* ---- the stream ------------------------------------------------------------------- */

/* Pumps until body holds want (or fails after 5 s). */
static void pump_until_text(fix_t *f, mbuf_t *body, const char *want)
{
    int64_t end = tmtime_mono_ns() + 5 * S;
    while (!strstr(text_of(body), want)) {
        if (tmtime_mono_ns() > end)
            fail_msg("no \"%s\" after 5 s in:\n%s", want, body->data);
        pump(f);
    }
}

static void pump_until_streams(fix_t *f, size_t n)
{
    int64_t end = tmtime_mono_ns() + 5 * S;
    while (api_streams(f->a) != n) {
        if (tmtime_mono_ns() > end)
            fail_msg("%zu streams after 5 s, want %zu", api_streams(f->a), n);
        pump(f);
    }
}

static size_t count_of(const char *text, const char *what)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}

/* The ids of the call events in text, in order (at most max). One pass
 * over the text: bodies reach megabytes, and strstr from each match (which
 * ASan's interceptor makes measure the whole rest) would be quadratic. */
static size_t ids_of(const char *text, uint64_t *ids, size_t max)
{
    static const char after[] = "\nevent: call\ndata: {";
    size_t n = 0;
    for (const char *p = text; *p && n < max;) {
        if (p[0] == 'i' && p[1] == 'd' && p[2] == ':' && p[3] == ' ') {
            uint64_t v = 0;
            const char *q = p + 4;
            while (*q >= '0' && *q <= '9')
                v = v * 10 + (uint64_t)(*q++ - '0');
            ids[n++] = v;
            assert_true(!strncmp(q, after, sizeof after - 1));
        }
        while (*p && *p != '\n')
            p++;
        if (*p)
            p++;
    }
    return n;
}

static void test_stream_live(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    req_t r;
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, NULL);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    assert_non_null(strstr(text_of(&r.head), "Content-Type: text/event-stream"));
    assert_int_equal(api_streams(f->a), 1);
    assert_int_equal(*stats_gauge(f->st, "api_streams", NULL), 1);
    pump_ms(f, 50); /* it waits, suspended */

    push_calls(f, 3);
    pump_until_text(f, &r.body, "\"idx\":2");
    uint64_t ids[8];
    assert_int_equal(ids_of(text_of(&r.body), ids, 8), 3);
    assert_true(ids[0] > (uint64_t)1700000000000000ULL); /* from the wall clock in µs */
    assert_int_equal(ids[1], ids[0] + 1);
    assert_int_equal(ids[2], ids[0] + 2);
    /* the data of the first is the call */
    const char *d = strstr(r.body.data, "data: ") + 6;
    json_error_t je;
    json_t *j = json_loadb(d, strcspn(d, "\n"), 0, &je);
    assert_non_null(j);
    assert_string_equal(jget_s(j, "user"), "alice");
    assert_string_equal(jget_s(j, "provider"), "openai");
    assert_int_equal(jget_i(j, "cost_nusd"), 4750000);
    assert_string_equal(jget_s(j, "cost_usd"), "0.004750000");
    assert_int_equal(jget_i(j, "input_tokens"), 100);
    assert_int_equal(jget_i(j, "latency_us"), 1500);
    assert_true(json_is_null(json_object_get(j, "ttft_us")));
    assert_string_equal(jget_s(j, "src"), "collectd@t");
    assert_int_equal(jget_i(j, "idx"), 0);
    json_decref(j);

    /* nothing for 15 s: a keepalive comment */
    assert_int_equal(count_of(r.body.data, ": keepalive\n\n"), 0);
    f->skew += 16 * S;
    pump_until_text(f, &r.body, ": keepalive\n\n");
    pump_ms(f, 50);
    assert_int_equal(count_of(r.body.data, ": keepalive\n\n"), 1); /* one per 15 s */
    f->skew += 16 * S;
    pump_until_text(f, &r.body, ": keepalive\n\n: keepalive\n\n");

    /* the client goes: noticed at the next wake-up */
    req_free(f, &r);
    pump_ms(f, 20);
    push_calls(f, 1);
    pump_until_streams(f, 0);
    assert_int_equal(*stats_gauge(f->st, "api_streams", NULL), 0);
    assert_int_equal(ctr(f, "api_stream_dropped_total", NULL), 0);
    fix_close(f);
}

static void test_stream_resume(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    req_t r;
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, NULL);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    push_calls(f, 5);
    pump_until_text(f, &r.body, "\"idx\":4");
    uint64_t ids[64];
    assert_int_equal(ids_of(r.body.data, ids, 64), 5);
    uint64_t first = ids[0];
    req_free(f, &r);

    /* from the header: the calls after it, then live ones */
    char h[64], path[128];
    snprintf(h, sizeof h, "Last-Event-ID: %llu", (unsigned long long)(first + 1));
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, h);
    pump_until_text(f, &r.body, "\"idx\":4");
    assert_int_equal(ids_of(r.body.data, ids, 64), 3);
    assert_int_equal(ids[0], first + 2);
    assert_int_equal(ids[2], first + 4);
    assert_null(strstr(r.body.data, "event: gap"));
    push_calls(f, 1);
    pump_until_text(f, &r.body, "\"idx\":0");
    assert_int_equal(ids_of(r.body.data, ids, 64), 4);
    assert_int_equal(ids[3], first + 5);
    req_free(f, &r);

    /* from the query, the newest id: live only */
    snprintf(path, sizeof path, "/api/v1/stream?last_event_id=%llu",
             (unsigned long long)(first + 5));
    req_start(f, &r, "GET", path, "X-Api-Key: " KEY, NULL);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    pump_ms(f, 30);
    assert_int_equal(ids_of(r.body.data, ids, 64), 0);
    push_calls(f, 1);
    pump_until_text(f, &r.body, "event: call");
    assert_int_equal(ids_of(r.body.data, ids, 64), 1);
    assert_int_equal(ids[0], first + 6);
    req_free(f, &r);

    /* an id from the future: live only */
    snprintf(h, sizeof h, "Last-Event-ID: %llu", (unsigned long long)(first + 1000));
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, h);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    pump_ms(f, 30);
    assert_int_equal(ids_of(r.body.data, ids, 64), 0);
    req_free(f, &r);
    push_calls(f, 1); /* wakes the streams whose clients left: they go */
    pump_until_streams(f, 0);

    /* 40 more calls: the ring (16) lost the older ones; a gap, then the 16 */
    push_calls(f, 40);
    uint64_t newest = first + 47, oldest = newest - RING + 1;
    snprintf(h, sizeof h, "Last-Event-ID: %llu", (unsigned long long)(first + 2));
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, h);
    char want[64];
    snprintf(want, sizeof want, "id: %llu\n", (unsigned long long)newest);
    pump_until_text(f, &r.body, want);
    char gap[256];
    snprintf(gap, sizeof gap,
             "event: gap\ndata: {\"last_event_id\":%llu,\"next_id\":%llu,\"missed\":%llu}\n\n",
             (unsigned long long)(first + 2), (unsigned long long)oldest,
             (unsigned long long)(oldest - first - 3));
    const char *g = strstr(r.body.data, gap);
    if (!g)
        fail_msg("no %s in %s", gap, r.body.data);
    assert_int_equal(ids_of(g, ids, 64), RING);
    assert_int_equal(ids[0], oldest);
    assert_int_equal(ids[RING - 1], newest);
    req_free(f, &r);
    assert_int_equal(ctr(f, "api_stream_gaps_total", NULL), 1);

    /* an id from before this exporter started: how many were missed is unknown */
    req_start(f, &r, "GET", "/api/v1/stream?last_event_id=12", "X-Api-Key: " KEY, NULL);
    pump_until_text(f, &r.body, want);
    snprintf(gap, sizeof gap,
             "event: gap\ndata: {\"last_event_id\":12,\"next_id\":%llu,\"missed\":null}\n\n",
             (unsigned long long)oldest);
    assert_non_null(strstr(r.body.data, gap));
    req_free(f, &r);
    assert_int_equal(ctr(f, "api_stream_dropped_total", NULL), 0);
    push_calls(f, 1);
    pump_until_streams(f, 0);
    fix_close(f);
}

/* A stream request on a plain socket (rcvbuf > 0: that receive buffer). */
static int raw_stream(fix_t *f, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)web_port(f->w)) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    static const char req[] =
        "GET /api/v1/stream HTTP/1.1\r\nHost: t\r\nX-Api-Key: " KEY "\r\n\r\n";
    assert_int_equal(send(fd, req, sizeof req - 1, 0), (ssize_t)(sizeof req - 1));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void test_stream_limit(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    int fds[64];
    for (int i = 0; i < 64; i++)
        fds[i] = raw_stream(f, 0);
    pump_until_streams(f, 64);
    expect_error(f, "GET", "/api/v1/stream", "X-Api-Key: " KEY, 503, "too many streams");
    assert_int_equal(api_streams(f->a), 64);
    /* they all get a call */
    push_calls(f, 1);
    pump_ms(f, 50);
    for (int i = 0; i < 64; i++) {
        char buf[4096];
        ssize_t n = recv(fds[i], buf, sizeof buf - 1, 0);
        assert_true(n > 0);
        buf[n] = '\0';
        assert_non_null(strstr(buf, "200 OK"));
        assert_non_null(strstr(buf, "event: call"));
        close(fds[i]);
    }
    push_calls(f, 1);
    pump_until_streams(f, 0);
    assert_int_equal(ctr(f, "api_stream_dropped_total", NULL), 0);
    fix_close(f);
}

static void test_stream_slow_client(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    int fd = raw_stream(f, 4096); /* and never read */
    req_t r;                      /* a client that reads, beside it */
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, NULL);
    pump_until_streams(f, 2);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    int64_t *dropped = stats_counter(f->st, "api_stream_dropped_total", NULL);
    int pushed = 0;
    while (*dropped == 0) {
        if (pushed > 200000)
            fail_msg("no drop after %d calls", pushed);
        push_calls(f, 8); /* fewer than the ring between two turns */
        pushed += 8;
        pump(f);
    }
    assert_int_equal(*dropped, 1);
    /* MHD closes it within its 1 s timeout; the reader stays */
    pump_until_streams(f, 1);
    char buf[65536];
    ssize_t n;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    do /* its connection is closed: reading reaches the end */
        n = recv(fd, buf, sizeof buf, 0);
    while (n > 0 || (n < 0 && errno == EINTR));
    assert_true(n == 0 || (n < 0 && errno == ECONNRESET));
    close(fd);
    /* the reader got every call, in order */
    push_calls(f, 1);
    int64_t end = tmtime_mono_ns() + 10 * S;
    size_t cnt;
    for (;;) {
        static uint64_t ids[300000];
        cnt = ids_of(text_of(&r.body), ids, 300000);
        if (cnt == (size_t)pushed + 1) {
            for (size_t i = 1; i < cnt; i++)
                assert_int_equal(ids[i], ids[i - 1] + 1);
            break;
        }
        if (tmtime_mono_ns() > end)
            fail_msg("the reading client has %zu of %d calls", cnt, pushed + 1);
        pump(f);
    }
    assert_int_equal(*dropped, 1);
    assert_null(strstr(r.body.data, "event: gap"));
    req_free(f, &r);
    fix_close(f);
}

/* Stopping with a stream waiting (suspended): api_destroy resumes it, so
 * MHD stops cleanly (it aborts on a suspended connection). */
static void test_stream_stop(void **state)
{
    (void)state;
    fix_t *f = fix_open(NULL, true);
    req_t r;
    req_start(f, &r, "GET", "/api/v1/stream", "X-Api-Key: " KEY, NULL);
    pump_until_text(f, &r.body, ": tokmon calls\n");
    int fd = raw_stream(f, 0);
    pump_until_streams(f, 2);
    pump_ms(f, 50);
    fix_close(f); /* the client handle goes with the multi handle */
    curl_easy_cleanup(r.e);
    curl_slist_free_all(r.hdrs);
    mbuf_free(&r.body);
    mbuf_free(&r.head);
    close(fd);
}

int main(int argc, char **argv)
{
    log_setup("api_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_health, teardown),
        cmocka_unit_test_teardown(test_ready_aggregator_down, teardown),
        cmocka_unit_test_teardown(test_key, teardown),
        cmocka_unit_test_teardown(test_no_key_file, teardown),
        cmocka_unit_test(test_key_files),
        cmocka_unit_test_teardown(test_routes, teardown),
        cmocka_unit_test_teardown(test_usage, teardown),
        cmocka_unit_test_teardown(test_aggregator, teardown),
        cmocka_unit_test_teardown(test_history_off, teardown),
        cmocka_unit_test_teardown(test_history_unavailable, teardown),
        cmocka_unit_test_teardown(test_stream_live, teardown),
        cmocka_unit_test_teardown(test_stream_resume, teardown),
        cmocka_unit_test_teardown(test_stream_limit, teardown),
        cmocka_unit_test_teardown(test_stream_slow_client, teardown),
        cmocka_unit_test_teardown(test_stream_stop, teardown),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    int rc = cmocka_run_group_tests_name("api", tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}

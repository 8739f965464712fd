/* query_client_test: tests of tools/query_client, tokmonctl's side of the
 * aggregator's query protocol: shard ownership, endpoint lists, the checks
 * on an answer from the network (malformed, ok false, wrong shard), the
 * merges of quota, top/usage and budget answers, and asking real sockets
 * (a ROUTER thread, timeouts). Run one test alone with
 * `query_client_test NAME`.
 *
 * The unit test rule links the stages' code and libtokmon but not tools/,
 * so the module is included whole (which also reaches its static helpers). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "query_client.c"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- JSON text as msgpack, so that tables stay readable ----------------- */

static void pack_json(msgpack_packer *pk, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        msgpack_pack_map(pk, json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)(uintptr_t)j, k, v)
        {
            msgpack_pack_str(pk, strlen(k));
            msgpack_pack_str_body(pk, k, strlen(k));
            pack_json(pk, v);
        }
        break;
    }
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            pack_json(pk, json_array_get(j, i));
        break;
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(j));
        msgpack_pack_str_body(pk, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        msgpack_pack_int64(pk, json_integer_value(j));
        break;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(j));
        break;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        msgpack_pack_nil(pk);
        break;
    }
}

static void json2mp(const char *text, mbuf_t *out)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        fail_msg("bad JSON in a test table: %s: %s", e.text, text);
    msgpack_packer pk;
    mbuf_reset(out);
    mbuf_packer(out, &pk);
    pack_json(&pk, j);
    json_decref(j);
}

/* An answer as ask_set leaves it after receiving frame[0..len) */
static void make_answer(query_client_answer_t *a, uint32_t shard, const void *frame, size_t len)
{
    *a = (query_client_answer_t){ .shard = shard, .endpoint = xstrdup("tcp://test:1") };
    msgpack_unpacked_init(&a->up);
    a->frame = xmalloc(len ? len : 1);
    memcpy(a->frame, frame, len);
    a->len = len;
}

static void free_answer(query_client_answer_t *a)
{
    free(a->endpoint);
    free(a->frame);
    msgpack_unpacked_destroy(&a->up);
}

/* ---- shards and endpoints ------------------------------------------------ */

static void test_shard_of(void **state)
{
    (void)state;
    static const struct {
        const char *user;
        uint32_t n, want;
    } cases[] = {
        /* low bytes: alice 0x07, bob 0x54, dave 0xbf, "" 0x25 */
        { "alice", 2, 1 }, { "bob", 2, 0 },     { "dave", 2, 1 },     { "alice", 3, 1 },
        { "dave", 3, 2 },  { "alice", 256, 7 }, { "dave", 256, 191 }, { "", 2, 1 },
        { "alice", 1, 0 }, { "bob", 0, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        assert_int_equal(query_client_shard_of(span_cstr(cases[i].user), cases[i].n),
                         cases[i].want);
}

static void test_endpoints(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        uint32_t shard;
        const char *want; /* NULL: an error */
    } cases[] = {
        { "tcp://127.0.0.1:7720", 0, "tcp://127.0.0.1:7720" },
        { "tcp://127.0.0.1:7720", 3, "tcp://127.0.0.1:7723" },
        { "tcp://[::1]:7720", 1, "tcp://[::1]:7721" },
        { " tcp://a:1 , tcp://b:2 ", 0, "tcp://a:1" },
        { " tcp://a:1 , tcp://b:2 ", 1, "tcp://b:2" },
        { "ipc:///run/q", 0, "ipc:///run/q" },
        { "ipc:///run/q", 1, NULL },          /* no port to count from */
        { "tcp://127.0.0.1:65535", 1, NULL }, /* beyond the last port */
        { "tcp://127.0.0.1:77x", 1, NULL },   /* not a port */
        { "tcp://127.0.0.1", 1, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char err[512], buf[EP_MAX + 8];
        query_client_t *c = query_client_new(cases[i].list, TMTIME_NS_PER_SEC, err, sizeof err);
        assert_non_null(c);
        int rc = endpoint_of(c, cases[i].shard, buf, sizeof buf, err, sizeof err);
        if (cases[i].want) {
            assert_int_equal(rc, 0);
            assert_string_equal(buf, cases[i].want);
        } else {
            assert_int_equal(rc, -1);
            assert_non_null(strstr(err, "one endpoint per shard"));
        }
        query_client_destroy(&c);
        assert_null(c);
    }
    static const char *const bad[] = { "", ",", "tcp://a:1,,tcp://b:2", " , tcp://a:1",
                                       "tcp://a:1," };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        char err[512];
        assert_null(query_client_new(bad[i], TMTIME_NS_PER_SEC, err, sizeof err));
        assert_non_null(strstr(err, "empty"));
    }
}

/* ---- the checks on an answer --------------------------------------------- */

static void test_check_answer(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *json; /* NULL: raw bytes */
        const char *raw;
        size_t rawlen;
        uint32_t shard, want_shards;
        const char *err; /* NULL: accepted; else a part of the error */
    } cases[] = {
        { "one shard", "{\"ok\":true,\"shard\":0,\"shards\":1}", NULL, 0, 0, 0, NULL },
        { "shard 1 of 2", "{\"ok\":true,\"shard\":1,\"shards\":2}", NULL, 0, 1, 2, NULL },
        { "any count", "{\"ok\":true,\"shard\":0,\"shards\":7}", NULL, 0, 0, 0, NULL },
        { "ok false", "{\"ok\":false,\"error\":\"quota needs an id\"}", NULL, 0, 0, 0,
          "the aggregator says: quota needs an id" },
        { "ok false without a reason", "{\"ok\":false}", NULL, 0, 0, 0, "(no reason given)" },
        { "control bytes in the reason", "{\"ok\":false,\"error\":\"a\\nb\"}", NULL, 0, 0, 0,
          "says: a?b" },
        { "no ok", "{\"shard\":0,\"shards\":1}", NULL, 0, 0, 0, "has no \"ok\"" },
        { "ok not a bool", "{\"ok\":1,\"shard\":0,\"shards\":1}", NULL, 0, 0, 0, "has no \"ok\"" },
        { "not a map", "[1,2,3]", NULL, 0, 0, 0, "not one msgpack map" },
        { "a string", "\"ok\"", NULL, 0, 0, 0, "not one msgpack map" },
        { "no shards", "{\"ok\":true}", NULL, 0, 0, 0, "no valid \"shard\"" },
        { "shards 0", "{\"ok\":true,\"shard\":0,\"shards\":0}", NULL, 0, 0, 0, "no valid" },
        { "shards 257", "{\"ok\":true,\"shard\":0,\"shards\":257}", NULL, 0, 0, 0, "no valid" },
        { "shard beyond", "{\"ok\":true,\"shard\":2,\"shards\":2}", NULL, 0, 0, 0, "no valid" },
        { "shard negative", "{\"ok\":true,\"shard\":-1,\"shards\":2}", NULL, 0, 0, 0, "no valid" },
        { "another shard", "{\"ok\":true,\"shard\":1,\"shards\":2}", NULL, 0, 0, 2,
          "says it is shard 1 of 2, where shard 0 of 2 was expected" },
        { "another count", "{\"ok\":true,\"shard\":1,\"shards\":3}", NULL, 0, 1, 2,
          "shard 1 of 3, where shard 1 of 2" },
        { "too deep", "{\"ok\":true,\"shard\":0,\"shards\":1,\"x\":[[[[1]]]]}", NULL, 0, 0, 0,
          "not one msgpack map" },
        { "empty frame", NULL, "", 0, 0, 0, "not one msgpack map" },
        { "truncated map", NULL, "\x83\xa2ok\xc3", 5, 0, 0, "not one msgpack map" },
        { "a map of a billion", NULL, "\xdf\x40\x00\x00\x00", 5, 0, 0, "not one msgpack map" },
        { "trailing bytes", NULL, "\x81\xa2ok\xc3\xc0", 6, 0, 0, "not one msgpack map" },
        { "reserved byte", NULL, "\xc1", 1, 0, 0, "not one msgpack map" },
        /* tokmonctl asks the alerter's control socket through this client
         * too: an alert's labels are the deepest answer (map, array, map,
         * map), which ANSWER_DEPTH must let through */
        { "the alerter's alerts",
          "{\"ok\":true,\"shard\":0,\"shards\":1,\"alerts\":[{\"alertname\":\"X\","
          "\"labels\":{\"alertname\":\"X\",\"user\":\"bob\"},\"annotations\":{}}]}",
          NULL, 0, 0, 1, NULL },
        { "the alerter's silences",
          "{\"ok\":true,\"shard\":0,\"shards\":1,\"silences\":[{\"id\":\"a1\",\"until\":9}]}",
          NULL, 0, 0, 1, NULL },
        { "the alerter says no", "{\"ok\":false,\"error\":\"no active silence with that id\"}",
          NULL, 0, 0, 1, "says: no active silence with that id" },
    };
    mbuf_t b = { 0 };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const void *p = cases[i].raw;
        size_t len = cases[i].rawlen;
        if (cases[i].json) {
            json2mp(cases[i].json, &b);
            p = b.data, len = b.len;
        }
        query_client_answer_t a;
        make_answer(&a, cases[i].shard, p, len);
        char err[512] = "";
        int rc = check_answer(&a, cases[i].want_shards, err, sizeof err);
        if (!cases[i].err) {
            if (rc != 0)
                fail_msg("%s: refused: %s", cases[i].name, err);
        } else if (rc != -1 || !strstr(err, cases[i].err)) {
            fail_msg("%s: want an error with \"%s\", got %d \"%s\"", cases[i].name, cases[i].err,
                     rc, err);
        }
        free_answer(&a);
    }
    mbuf_free(&b);
}

/* ---- decoding and merging ------------------------------------------------ */

static int decode_quota(const char *json, query_client_quota_t *q, query_client_answer_t *keep)
{
    mbuf_t b = { 0 };
    json2mp(json, &b);
    make_answer(keep, 0, b.data, b.len);
    mbuf_free(&b);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&keep->up, keep->frame, keep->len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    char err[256];
    return query_client_quota_decode(&keep->up.data, q, err, sizeof err);
}

#define QWIN(w, u, used, lim, st, reset)                                                           \
    "{\"window\":\"" w "\",\"unit\":\"" u "\",\"used\":" #used ",\"limit\":" #lim                  \
    ",\"remaining\":null,\"state\":\"" st "\",\"start\":1,\"reset\":" #reset "}"
#define QUOTA(known, st, reqs, wins)                                                               \
    "{\"ok\":true,\"shard\":0,\"shards\":2,\"subject\":\"account\",\"id\":\"acme\","               \
    "\"known\":" known ",\"state\":\"" st "\",\"warn_pct\":80,\"now\":5,"                          \
    "\"window_requests\":" #reqs ",\"windows\":[" wins "]}"

static void test_quota_merge(void **state)
{
    (void)state;
    query_client_answer_t ka, kb;
    query_client_quota_t a, b;
    /* each part is under its limits, the sum is not */
    assert_int_equal(decode_quota(QUOTA("true", "ok", 3,
                                        QWIN("day", "tokens", 700, 1000, "ok", 100) "," QWIN(
                                            "day", "usd", 10, 0, "ok",
                                            100) "," QWIN("5h", "tokens", 100, 1000, "ok", 900)),
                                  &a, &ka),
                     0);
    assert_int_equal(
        decode_quota(QUOTA("false", "ok", 2,
                           QWIN("day", "tokens", 200, 1000, "ok", 100) "," QWIN(
                               "day", "usd", 5, 0, "ok", 100) "," QWIN("5h", "tokens", 1000, 1000,
                                                                       "exceeded", 400)),
                     &b, &kb),
        0);
    query_client_quota_add(&a, &b);
    assert_true(a.known);
    assert_int_equal(a.window_requests, 5);
    assert_int_equal(a.nw, 3);
    assert_int_equal(a.w[0].used, 900);
    assert_int_equal(a.w[0].state, 1); /* 90% of 1000, warn at 80 */
    assert_int_equal(a.w[1].used, 15);
    assert_int_equal(a.w[1].state, 0); /* no limit */
    assert_int_equal(a.w[2].used, 1100);
    assert_int_equal(a.w[2].state, 2);
    assert_int_equal(a.w[2].reset, 400); /* the earliest expiry */
    assert_int_equal(a.w[0].reset, 100);
    assert_int_equal(a.state, 2);
    free_answer(&ka);
    free_answer(&kb);

    /* a sliding window empty on one shard (reset 0) keeps the other's */
    assert_int_equal(
        decode_quota(QUOTA("true", "ok", 0, QWIN("5h", "tokens", 0, 0, "ok", 0)), &a, &ka), 0);
    assert_int_equal(
        decode_quota(QUOTA("true", "ok", 0, QWIN("5h", "tokens", 1, 0, "ok", 70)), &b, &kb), 0);
    query_client_quota_add(&a, &b);
    assert_int_equal(a.w[0].reset, 70);
    free_answer(&ka);
    free_answer(&kb);

    static const char *const bad[] = {
        QUOTA("true", "fine", 0, ""), /* unknown state */
        QUOTA("1", "ok", 0, ""),      /* known not a bool */
        QUOTA("true", "ok", -1, ""),  /* negative count */
        QUOTA("true", "ok", 0, QWIN("day", "tokens", 1, 1, "bad", 0)),
        QUOTA("true", "ok", 0, "1"),              /* a window not a map */
        "{\"ok\":true,\"shard\":0,\"shards\":1}", /* nothing */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        if (decode_quota(bad[i], &a, &ka) != -1)
            fail_msg("accepted bad quota %zu", i);
        free_answer(&ka);
    }

    /* more windows than a quota has room for */
    char many[4096] = QUOTA("true", "ok", 0, "");
    size_t n = strlen(many) - 2; /* before "]}" */
    for (int w = 0; w <= QUERY_CLIENT_MAX_WINDOWS; w++)
        n += (size_t)snprintf(many + n, sizeof many - n, "%s" QWIN("d", "t", 1, 1, "ok", 0),
                              w ? "," : "");
    snprintf(many + n, sizeof many - n, "]}");
    assert_int_equal(decode_quota(many, &a, &ka), -1);
    free_answer(&ka);
}

typedef struct {
    query_client_answer_t keep;
    query_client_rows_t rows;
} rows_part_t;

static void decode_rows(const char *json, rows_part_t *p)
{
    mbuf_t b = { 0 };
    json2mp(json, &b);
    make_answer(&p->keep, 0, b.data, b.len);
    mbuf_free(&b);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&p->keep.up, p->keep.frame, p->keep.len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    char err[256];
    if (query_client_rows_decode(&p->keep.up.data, &p->rows, err, sizeof err) < 0)
        fail_msg("%s: %s", err, json);
}

#define ROW(k, r, t, c)                                                                            \
    "{\"key\":\"" k "\",\"requests\":" #r ",\"tokens\":" #t ",\"cost_nusd\":" #c "}"
#define ROWS(metric, from, keys, trunc, rows)                                                      \
    "{\"ok\":true,\"shard\":0,\"shards\":2,\"by\":\"model\",\"metric\":\"" metric "\","            \
    "\"window\":3600,\"from\":" #from ",\"to\":" #from "9,\"keys\":" #keys ",\"truncated\":" trunc \
    ",\"rows\":[" rows "]}"

static void check_rows(const query_client_rows_t *r, const char *want)
{
    char got[1024] = "";
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++)
        n += (size_t)snprintf(
            got + n, sizeof got - n, "%s%.*s=%llu/%llu/%lld", i ? " " : "", (int)r->rows[i].key.len,
            r->rows[i].key.p, (unsigned long long)r->rows[i].requests,
            (unsigned long long)r->rows[i].tokens, (long long)r->rows[i].cost_nusd);
    assert_string_equal(got, want);
}

static void test_rows_merge(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *a, *b;
        bool disjoint;
        int64_t limit;
        const char *want;
        uint64_t keys;
        bool truncated;
    } cases[] = {
        { "summed per key, by cost then key",
          ROWS("cost", 10, 2, "false", ROW("m1", 1, 10, 5) "," ROW("m2", 1, 10, 3)),
          ROWS("cost", 20, 2, "false", ROW("m2", 2, 20, 4) "," ROW("m3", 1, 1, 5)), false, 0,
          "m2=3/30/7 m1=1/10/5 m3=1/1/5", 3, false },
        { "by tokens, cut to 2",
          ROWS("tokens", 10, 2, "false", ROW("m1", 1, 10, 5) "," ROW("m2", 1, 10, 3)),
          ROWS("tokens", 20, 1, "false", ROW("m3", 9, 15, 0)), false, 2, "m3=9/15/0 m1=1/10/5", 3,
          true },
        { "by requests", ROWS("requests", 10, 1, "false", ROW("b", 2, 1, 1)),
          ROWS("requests", 20, 2, "false", ROW("a", 2, 1, 1) "," ROW("c", 3, 0, 0)), false, 0,
          "c=3/0/0 a=2/1/1 b=2/1/1", 3, false },
        { "disjoint: keys summed over shards, rows cut",
          ROWS("cost", 10, 5, "true", ROW("u1", 1, 1, 9) "," ROW("u2", 1, 1, 2)),
          ROWS("cost", 20, 4, "true", ROW("u3", 1, 1, 7) "," ROW("u4", 1, 1, 1)), true, 3,
          "u1=1/1/9 u3=1/1/7 u2=1/1/2", 9, true },
        { "one part empty", ROWS("cost", 10, 0, "false", ""),
          ROWS("cost", 20, 1, "false", ROW("x", 1, 2, 3)), false, 10, "x=1/2/3", 1, false },
        { "both empty", ROWS("cost", 10, 0, "false", ""), ROWS("cost", 20, 0, "false", ""), false,
          10, "", 0, false },
        { "a part cut by the aggregator", ROWS("cost", 10, 200000, "true", ROW("x", 1, 2, 3)),
          ROWS("cost", 20, 0, "false", ""), false, 0, "x=1/2/3", 1, true },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        rows_part_t p[2];
        decode_rows(cases[i].a, &p[0]);
        decode_rows(cases[i].b, &p[1]);
        query_client_rows_t parts[2] = { p[0].rows, p[1].rows }, out;
        query_client_rows_merge(parts, 2, cases[i].disjoint, cases[i].limit, &out);
        check_rows(&out, cases[i].want);
        assert_int_equal(out.keys, cases[i].keys);
        assert_int_equal(out.truncated, cases[i].truncated);
        assert_int_equal(out.from, 10);
        assert_int_equal(out.to, 209);
        query_client_rows_free(&out);
        for (int k = 0; k < 2; k++) {
            query_client_rows_free(&p[k].rows);
            free_answer(&p[k].keep);
        }
    }
}

#define BUDGET(name, scope, value, start, spent, limit, frate, partial, shard)                     \
    "{\"name\":\"" name "\",\"scope\":\"" scope "\"" value ",\"period\":\"day\","                  \
    "\"period_start\":" #start ",\"period_end\":" #start "00,\"limit_nusd\":" #limit ","           \
    "\"spent_nusd\":" #spent ",\"remaining_nusd\":0,\"forecast_avg_nusd\":" #spent ","             \
    "\"forecast_rate_nusd\":" #frate ",\"exhaust_ts\":0,\"warn_pct\":80,\"state\":\"ok\","         \
    "\"ts\":1000,\"partial\":" partial ",\"shard\":" #shard ",\"shards\":2}"
#define BUDGETS(list) "{\"ok\":true,\"shard\":0,\"shards\":2,\"now\":1000,\"budgets\":[" list "]}"

static void decode_budgets(const char *json, query_client_answer_t *keep, query_client_budgets_t *b)
{
    mbuf_t m = { 0 };
    json2mp(json, &m);
    make_answer(keep, 0, m.data, m.len);
    mbuf_free(&m);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&keep->up, keep->frame, keep->len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    char err[256];
    if (query_client_budgets_decode(&keep->up.data, b, err, sizeof err) < 0)
        fail_msg("%s", err);
}

static void test_budgets_merge(void **state)
{
    (void)state;
    query_client_answer_t ka, kb;
    query_client_budgets_t a, b, out;
    /* period 10..1000 (ts 1000 is its end: no rate left), 1000..100000 */
    decode_budgets(
        BUDGETS(BUDGET("g", "global", "", 1000, 300, 1000, 400, "true", 0) "," BUDGET(
            "acct", "account", ",\"scope_value\":\"x\"", 1000, 500, 1000, 500, "true",
            0) "," BUDGET("u", "user", ",\"scope_value\":\"alice\"", 1000, 7, 10, 7, "false", 0)),
        &ka, &a);
    decode_budgets(BUDGETS(BUDGET("g", "global", "", 1000, 600, 1000, 900, "true", 1) "," BUDGET(
                       "acct", "account", ",\"scope_value\":\"x\"", 1000, 600, 1000, 600, "true",
                       1) "," BUDGET("acct", "account", ",\"scope_value\":\"y\"", 1000, 1, 1000, 1,
                                     "true", 1)),
                   &kb, &b);
    query_client_budgets_t parts[2] = { a, b };
    query_client_budgets_merge(parts, 2, &out);
    assert_int_equal(out.n, 4);
    assert_int_equal(out.now, 1000);
    /* sorted by name then scope value: acct/x, acct/y, g, u */
    const msg_budget_t *x = &out.v[0].b, *y = &out.v[1].b, *g = &out.v[2].b, *u = &out.v[3].b;
    assert_true(span_eq_cstr(x->scope_value, "x"));
    assert_int_equal(out.v[0].parts, 2);
    assert_int_equal(x->spent_nusd, 1100);
    assert_int_equal(x->remaining_nusd, -100);
    assert_true(span_eq_cstr(x->state, "exceeded"));
    assert_int_equal(x->exhaust_ts, 1000);
    assert_true(span_eq_cstr(y->scope_value, "y"));
    assert_int_equal(out.v[1].parts, 1);
    assert_int_equal(y->spent_nusd, 1);
    assert_true(span_eq_cstr(y->state, "ok"));
    assert_int_equal(y->exhaust_ts, 0); /* no rate */
    /* global: 900 of 1000 spent, warning; the rate adds 400 over the 99000
     * ns left, so the 100 left go in 99000 * 100 / 400 */
    assert_int_equal(out.v[2].parts, 2);
    assert_null(g->scope_value.p);
    assert_int_equal(g->spent_nusd, 900);
    assert_int_equal(g->remaining_nusd, 100);
    assert_int_equal(g->forecast_rate_nusd, 1300);
    assert_true(span_eq_cstr(g->state, "warning"));
    assert_int_equal(g->exhaust_ts, 1000 + 99000 * 100 / 400);
    /* not partial: as answered */
    assert_int_equal(out.v[3].parts, 1);
    assert_int_equal(u->spent_nusd, 7);
    assert_int_equal(u->remaining_nusd, 0);
    assert_true(span_eq_cstr(u->state, "ok"));
    query_client_budgets_free(&out);
    query_client_budgets_free(&a);
    query_client_budgets_free(&b);
    free_answer(&ka);
    free_answer(&kb);

    /* a record msg_budget_unpack refuses fails the whole answer */
    mbuf_t m = { 0 };
    json2mp(BUDGETS(BUDGET("g", "galaxy", "", 1000, 1, 1, 1, "true", 0)), &m);
    make_answer(&ka, 0, m.data, m.len);
    mbuf_free(&m);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&ka.up, ka.frame, ka.len, &off), MSGPACK_UNPACK_SUCCESS);
    char err[256];
    assert_int_equal(query_client_budgets_decode(&ka.up.data, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "a budget in the answer"));
    free_answer(&ka);
}

/* ---- real sockets --------------------------------------------------------- */

typedef struct {
    void *ctx, *sock;
    char endpoint[128];
    mbuf_t answer;
    int requests; /* to answer before the thread ends */
    char last[256];
} server_t;

static void server_open(server_t *s, void *ctx, const char *answer_json)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->sock = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(s->sock, "tcp://127.0.0.1:*"), 0);
    size_t n = sizeof s->endpoint;
    zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &n);
    json2mp(answer_json, &s->answer);
    s->requests = 1;
}

/* Answers as aggregator/main.c: [identity, empty, request] -> [identity, empty, answer]. */
static void *server_run(void *arg)
{
    server_t *s = arg;
    for (int k = 0; k < s->requests; k++) {
        zmq_msg_t f[3];
        for (int i = 0; i < 3; i++) {
            zmq_msg_init(&f[i]);
            if (zmq_msg_recv(&f[i], s->sock, 0) < 0)
                return NULL;
        }
        size_t n =
            zmq_msg_size(&f[2]) < sizeof s->last - 1 ? zmq_msg_size(&f[2]) : sizeof s->last - 1;
        memcpy(s->last, zmq_msg_data(&f[2]), n);
        zmq_send(s->sock, zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), ZMQ_SNDMORE);
        zmq_send(s->sock, "", 0, ZMQ_SNDMORE);
        zmq_send(s->sock, s->answer.data, s->answer.len, 0);
        for (int i = 0; i < 3; i++)
            zmq_msg_close(&f[i]);
    }
    return NULL;
}

static void server_close(server_t *s)
{
    zmq_close(s->sock);
    mbuf_free(&s->answer);
}

static void test_ask(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    server_t s[2];
    server_open(&s[0], ctx, "{\"ok\":true,\"shard\":0,\"shards\":2,\"n\":0}");
    server_open(&s[1], ctx, "{\"ok\":true,\"shard\":1,\"shards\":2,\"n\":1}");
    s[1].requests = 2;
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, server_run, &s[i]);
    char list[300], err[512];
    snprintf(list, sizeof list, "%s,%s", s[0].endpoint, s[1].endpoint);
    query_client_t *c = query_client_new(list, 5 * TMTIME_NS_PER_SEC, err, sizeof err);
    assert_non_null(c);
    query_client_answers_t ans;
    if (query_client_ask_all(c, "\x81\xa1q\xa3top", 7, &ans, err, sizeof err) < 0)
        fail_msg("%s", err);
    assert_int_equal(ans.n, 2);
    for (uint32_t i = 0; i < 2; i++) {
        assert_int_equal(ans.v[i].shard, i);
        assert_int_equal(ans.v[i].shards, 2);
        assert_string_equal(ans.v[i].endpoint, s[i].endpoint);
        assert_memory_equal(s[i].last, "\x81\xa1q\xa3top", 7);
    }
    query_client_answers_free(&ans);
    /* alice is shard 1's */
    if (query_client_ask_owner(c, "\x80", 1, span_cstr("alice"), &ans, err, sizeof err) < 0)
        fail_msg("%s", err);
    assert_int_equal(ans.n, 1);
    assert_int_equal(ans.v[0].shard, 1);
    query_client_answers_free(&ans);
    query_client_destroy(&c);
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        server_close(&s[i]);
    }

    /* one shard says ok false */
    server_open(&s[0], ctx, "{\"ok\":false,\"error\":\"window must be at least 1 second\"}");
    pthread_create(&t[0], NULL, server_run, &s[0]);
    c = query_client_new(s[0].endpoint, 5 * TMTIME_NS_PER_SEC, err, sizeof err);
    assert_int_equal(query_client_ask_all(c, "\x80", 1, &ans, err, sizeof err), -1);
    assert_string_equal(err, "the aggregator says: window must be at least 1 second");
    query_client_answers_free(&ans);
    query_client_destroy(&c);
    pthread_join(t[0], NULL);
    server_close(&s[0]);

    /* nobody answers: the endpoint bound but silent, within the timeout */
    server_open(&s[0], ctx, "{}");
    snprintf(list, sizeof list, "%s", s[0].endpoint);
    c = query_client_new(list, 200 * TMTIME_NS_PER_MS, err, sizeof err);
    int64_t t0 = tmtime_mono_ns();
    assert_int_equal(query_client_ask_all(c, "\x80", 1, &ans, err, sizeof err), -1);
    int64_t took = tmtime_mono_ns() - t0;
    assert_true(took >= 190 * TMTIME_NS_PER_MS && took < 3 * TMTIME_NS_PER_SEC);
    char want[300];
    snprintf(want, sizeof want, "no answer from the aggregator at %s within 0.2s", s[0].endpoint);
    assert_string_equal(err, want);
    query_client_answers_free(&ans);
    query_client_destroy(&c);
    server_close(&s[0]);
    zmq_ctx_term(ctx);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shard_of),     cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_check_answer), cmocka_unit_test(test_quota_merge),
        cmocka_unit_test(test_rows_merge),   cmocka_unit_test(test_budgets_merge),
        cmocka_unit_test(test_ask),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("query_client", tests, NULL, NULL);
}

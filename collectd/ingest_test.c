/* ingest_test: whole datagrams through ingest_datagram with a capturing
 * sink and the real price table: what comes out, what is refused and how it
 * is counted. Run one test: ingest_test test_statsd_token_types. */
#include "ingest.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"
#include "fnv.h"
#include "mbuf.h"
#include "xalloc.h"

#define MAXREC 64

typedef struct {
    msg_usage_t u[MAXREC];
    unsigned shard[MAXREC];
    char strs[MAXREC][8][64]; /* copies: the record's spans die with the datagram */
    size_t nu;
    msg_sample_t s[MAXREC];
    char snames[MAXREC][64];
    size_t ns;
} sink_t;

typedef struct {
    cfg_t *cfg;
    prices_t *prices;
    auth_keys_t *keys;
    stats_t *stats;
    ingest_t *in;
    sink_t sink;
    unsigned char key[AUTH_KEY_BYTES];
} fx_t;

static span_t keep(char *dst, span_t s)
{
    if (!s.p)
        return SPAN_NULL;
    size_t n = s.len < 63 ? s.len : 63;
    memcpy(dst, s.p, n);
    dst[n] = '\0';
    return span_make(dst, n);
}

static void on_usage(void *arg, unsigned shard, const msg_usage_t *u)
{
    sink_t *s = arg;
    assert_true(s->nu < MAXREC);
    size_t i = s->nu++;
    s->u[i] = *u;
    s->shard[i] = shard;
    s->u[i].provider = keep(s->strs[i][0], u->provider);
    s->u[i].model = keep(s->strs[i][1], u->model);
    s->u[i].user = keep(s->strs[i][2], u->user);
    s->u[i].cost_source = keep(s->strs[i][3], u->cost_source);
    s->u[i].price_version = keep(s->strs[i][4], u->price_version);
    s->u[i].key_id = keep(s->strs[i][5], u->key_id);
    s->u[i].status = keep(s->strs[i][6], u->status);
    s->u[i].account = keep(s->strs[i][7], u->account);
    s->u[i].ntags = 0;
}

static void on_sample(void *arg, const msg_sample_t *m, int64_t recv_ns)
{
    (void)recv_ns;
    sink_t *s = arg;
    assert_true(s->ns < MAXREC);
    size_t i = s->ns++;
    s->s[i] = *m;
    s->s[i].name = keep(s->snames[i], m->name);
    s->s[i].ntags = 0;
    s->s[i].member = SPAN_NULL;
}

static const char *key_b64 = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";

static fx_t *make(const char *extra_ini)
{
    fx_t *f = xcalloc(1, sizeof *f);
    char ini[2048], err[2048];
    snprintf(ini, sizeof ini,
             "[global]\nstate_dir = /tmp\n[collectd]\nprices = x\nmax_line = 512\nmax_tags = 4\n"
             "log_reject_every = 1000000\n%s\n[price.default]\ninput_cost_per_token = 0.000001\n"
             "output_cost_per_token = 0.000002\n",
             extra_ini ? extra_ini : "");
    f->cfg = cfg_load_string(ini, strlen(ini), "test.ini", NULL, err, sizeof err);
    if (!f->cfg)
        fail_msg("config: %s", err);
    const char *repo = getenv("TOKMON_REPO");
    char path[1024];
    snprintf(path, sizeof path, "%s/data/model_prices.json", repo ? repo : ".");
    f->prices = prices_load(path, f->cfg, err, sizeof err);
    if (!f->prices)
        fail_msg("prices: %s", err);
    f->keys = auth_keys_parse(key_b64, strlen(key_b64), "keys", err, sizeof err);
    assert_non_null(f->keys);
    for (unsigned i = 0; i < AUTH_KEY_BYTES; i++)
        f->key[i] = (unsigned char)i;
    f->stats = stats_new("tokmon-collectd", "test");
    ingest_sink_t sink = { on_usage, on_sample, &f->sink };
    f->in = ingest_new(f->cfg, f->prices, f->keys, f->stats, &sink);
    return f;
}

static void destroy(fx_t *f)
{
    ingest_destroy(&f->in);
    stats_destroy(&f->stats);
    auth_keys_destroy(&f->keys);
    prices_destroy(&f->prices);
    cfg_destroy(&f->cfg);
    free(f);
}

static int64_t counter(fx_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->stats, name, labels);
}

static int64_t rejected(fx_t *f, const char *reason)
{
    char l[64];
    snprintf(l, sizeof l, "reason=%s", reason);
    return counter(f, "ingest_rejected_total", l);
}

typedef struct {
    int64_t total;
} sum_t;

static void add_rejects(const char *name, const char *labels, int64_t v, bool gauge, void *arg)
{
    (void)labels;
    (void)gauge;
    if (!strcmp(name, "ingest_rejected_total") || !strcmp(name, "ingest_dropped_total"))
        ((sum_t *)arg)->total += v;
}

/* every record received is accepted, rejected or dropped */
static void check_invariant(fx_t *f)
{
    sum_t s = { 0 };
    stats_each(f->stats, add_rejects, &s);
    assert_int_equal(counter(f, "ingest_received_total", NULL),
                     counter(f, "ingest_accepted_total", NULL) + s.total);
}

static void feed(fx_t *f, const char *dgram)
{
    size_t n = strlen(dgram);
    char *copy = xmalloc(n ? n : 1); /* exact size: ASan catches overreads */
    memcpy(copy, dgram, n);
    ingest_datagram(f->in, copy, n, NULL, 0, 1795000000000000000LL);
    free(copy);
}

/* ---- StatsD ------------------------------------------------------------- */

static void test_statsd_token_types(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "llm.tokens:1000|c|#provider:openai,model:gpt-4o,user:u1,type:input\n"
            "llm.tokens:200|c|#provider:openai,model:gpt-4o,user:u1,type:cache_read\n"
            "llm.tokens:300|c|#provider:openai,model:gpt-4o,user:u1,type:output\n"
            "llm.tokens:100|c|#provider:openai,model:gpt-4o,user:u1,type:reasoning\n"
            "llm.tokens:10|c|#provider:anthropic,model:claude-opus-4-1,type:cache_write\n"
            "llm.tokens:10|c|#provider:anthropic,model:claude-opus-4-1,type:cache_write_1h\n");
    assert_int_equal(f->sink.nu, 6);
    msg_usage_t *u = f->sink.u;
    /* gpt-4o: input $2.50/M, cache read $1.25/M, output $10/M (no reasoning rate: output) */
    assert_int_equal(u[0].input_tokens, 1000);
    assert_int_equal(u[0].cost_nusd, 2500000); /* 1000 x 2.5e-6 = $0.0025 */
    assert_int_equal(u[1].input_tokens, 200);
    assert_int_equal(u[1].cache_read_tokens, 200);
    assert_int_equal(u[1].cost_nusd, 250000); /* 200 x 1.25e-6 */
    assert_int_equal(u[2].output_tokens, 300);
    assert_int_equal(u[2].cost_nusd, 3000000); /* 300 x 1e-5 */
    assert_int_equal(u[3].output_tokens, 100);
    assert_int_equal(u[3].reasoning_tokens, 100);
    assert_int_equal(u[3].cost_nusd, 1000000);
    /* opus 4.1: cache write 1.875e-5, 1h 3e-5 */
    assert_int_equal(u[4].cache_write_tokens, 10);
    assert_int_equal(u[4].cost_nusd, 187500);
    assert_int_equal(u[5].cache_write_1h_tokens, 10);
    assert_int_equal(u[5].cost_nusd, 300000);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(u[i].requests, 0);
        assert_true(span_eq_cstr(u[i].cost_source, "priced"));
        assert_true(span_eq_cstr(u[i].price_version, prices_version(f->prices)));
        assert_int_equal(u[i].ts, 1795000000000000000LL);
        assert_int_equal(u[i].recv_ts, 1795000000000000000LL);
    }
    assert_int_equal(counter(f, "ingest_accepted_total", NULL), 6);
    check_invariant(f);
    destroy(f);
}

static void test_statsd_requests_latency_rate(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "llm.requests:1|c|#provider:openai,model:gpt-4o,status:error\n"
            "llm.tokens:450|c|@0.5|#provider:openai,model:gpt-4o,type:input\n"
            "llm.latency:1250:980.5|ms|#provider:openai,model:gpt-4o\n"
            "llm.ttft:80|ms|#gen_ai.system:openai,gen_ai.request.model:gpt-4o|T1700000000\n");
    assert_int_equal(f->sink.nu, 5);
    msg_usage_t *u = f->sink.u;
    assert_int_equal(u[0].requests, 1);
    assert_true(span_eq_cstr(u[0].status, "error"));
    assert_int_equal(u[0].cost_nusd, 0);
    assert_int_equal(u[1].input_tokens, 900); /* 450 sampled at one in two */
    assert_int_equal(u[2].latency_us, 1250000);
    assert_int_equal(u[3].latency_us, 980500);
    assert_int_equal(u[4].ttft_us, 80000);
    assert_int_equal(u[4].ts, 1700000000LL * 1000000000LL);
    assert_int_equal(counter(f, "ingest_received_total", NULL), 4);
    assert_int_equal(counter(f, "ingest_usage_records_total", NULL), 5);
    check_invariant(f);
    destroy(f);
}

static void test_statsd_llm_errors(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "llm.tokens:10|c|#provider:openai,model:gpt-4o\n"              /* no type */
            "llm.tokens:10|c|#provider:openai,model:gpt-4o,type:audio\n"   /* unknown type */
            "llm.tokens:10|g|#provider:openai,model:gpt-4o,type:input\n"   /* not a counter */
            "llm.tokens:-10|c|#provider:openai,model:gpt-4o,type:input\n"  /* negative */
            "llm.tokens:10|c|#model:gpt-4o,type:input\n"                   /* no provider */
            "llm.requests:1|c|#provider:openai,model:gpt-4o,status:meh\n"  /* bad status */
            "llm.latency:5|c|#provider:openai,model:gpt-4o\n"              /* not a timer */
            "llm.tokens:1e13|c|#provider:openai,model:gpt-4o,type:input\n" /* beyond 2^40 */
            "llm.tokens:5|c|#provider:openai,model:gpt-4o,type:output\n");  /* good */
    assert_int_equal(f->sink.nu, 1);
    assert_int_equal(rejected(f, "missing_field"), 2);
    assert_int_equal(rejected(f, "bad_tags"), 1);
    assert_int_equal(rejected(f, "bad_type"), 2);
    assert_int_equal(rejected(f, "bad_value"), 1);
    assert_int_equal(rejected(f, "bad_field"), 1);
    assert_int_equal(rejected(f, "token_overflow"), 1);
    check_invariant(f);
    destroy(f);
}

static void test_statsd_generic_samples(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "page.views:3|c|@0.1|#env:prod\n"
            "queue.depth:+4|g\n"
            "temp:-3|g|#dc:1\n"
            "users:alice|s\n"
            "t:1:2:3|d\n"
            "_e{5,4}:title|text\n"
            "_sc|svc|0\n"
            "\n\r\n"
            "bad line without colon\n");
    assert_int_equal(f->sink.ns, 7);
    assert_true(span_eq_cstr(f->sink.s[0].name, "page.views"));
    assert_int_equal(f->sink.s[0].type, MSG_ST_C);
    assert_true(f->sink.s[0].rate == 0.1);
    assert_true(f->sink.s[1].delta);             /* '+' is always a delta */
    assert_false(f->sink.s[2].delta);            /* '-' with DogStatsD tags: absolute */
    assert_true(f->sink.s[2].value == -3.0);
    assert_int_equal(f->sink.s[3].type, MSG_ST_S);
    assert_true(f->sink.s[4].value == 1.0);      /* packed: one sample per value */
    assert_true(f->sink.s[6].value == 3.0);
    assert_int_equal(counter(f, "ingest_dropped_total", "kind=event"), 1);
    assert_int_equal(counter(f, "ingest_dropped_total", "kind=service_check"), 1);
    assert_int_equal(rejected(f, "bad_name") + rejected(f, "bad_value") + rejected(f, "bad_type"), 1);
    assert_int_equal(counter(f, "ingest_received_total", NULL), 8); /* blank lines are not records */
    check_invariant(f);
    destroy(f);
}

static void test_gauge_rule_delta(void **state)
{
    (void)state;
    fx_t *f = make("gauge_sign = delta");
    feed(f, "temp:-3|g|#dc:1");
    assert_int_equal(f->sink.ns, 1);
    assert_true(f->sink.s[0].delta);
    destroy(f);
}

/* ---- events, pricing, shards -------------------------------------------- */

static void test_good_records_survive_bad_neighbours(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"user\":\"u1\",\"input_tokens\":10}\n"
            "{\"provider\":\"openai\"\n"
            "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"input_tokens\":-1}\n"
            "x:nan|c\n"
            "y:1|c|@1.5\n"
            "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"user\":\"u2\",\"output_tokens\":7}\r\n");
    assert_int_equal(f->sink.nu, 2);
    assert_int_equal(f->sink.u[0].input_tokens, 10);
    assert_int_equal(f->sink.u[1].output_tokens, 7);
    assert_int_equal(rejected(f, "bad_json"), 1);
    assert_int_equal(rejected(f, "bad_value"), 2);
    assert_int_equal(rejected(f, "bad_rate"), 1);
    check_invariant(f);
    destroy(f);
}

static void test_provider_alias_and_sources(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "{\"provider\":\"GCP.Gemini\",\"model\":\"gemini-2.5-pro\",\"input_tokens\":1000,\"output_tokens\":10}\n"
            "{\"provider\":\"acme\",\"model\":\"unknown-model\",\"input_tokens\":1000,\"output_tokens\":1000}\n"
            "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"cost_usd\":1.5,\"input_tokens\":1}\n");
    assert_int_equal(f->sink.nu, 3);
    msg_usage_t *u = f->sink.u;
    assert_true(span_eq_cstr(u[0].provider, "gemini"));
    assert_true(span_eq_cstr(u[0].cost_source, "priced"));
    /* 1000 x 1.25e-6 + 10 x 1e-5 = 0.00125 + 0.0001 */
    assert_int_equal(u[0].cost_nusd, 1350000);
    assert_true(span_eq_cstr(u[1].cost_source, "default"));
    /* [price.default]: 1000 x 1e-6 + 1000 x 2e-6 */
    assert_int_equal(u[1].cost_nusd, 3000000);
    assert_int_equal(counter(f, "unpriced_requests_total", "provider=acme,model=unknown-model"), 1);
    assert_true(span_eq_cstr(u[2].cost_source, "reported"));
    assert_null(u[2].price_version.p);
    assert_int_equal(u[2].cost_nusd, 1500000000);
    destroy(f);
}

static void test_unknown_without_default(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    /* a second table without [price.default] */
    char err[256];
    const char *ini = "[global]\nstate_dir=/tmp\n";
    cfg_t *c2 = cfg_load_string(ini, strlen(ini), "t", NULL, err, sizeof err);
    assert_non_null(c2);
    const char *repo = getenv("TOKMON_REPO");
    char path[1024];
    snprintf(path, sizeof path, "%s/data/model_prices.json", repo ? repo : ".");
    prices_t *p2 = prices_load(path, c2, err, sizeof err);
    assert_non_null(p2);
    ingest_reload(f->in, f->cfg, p2, f->keys);
    feed(f, "{\"provider\":\"acme\",\"model\":\"nope\",\"input_tokens\":5}");
    assert_int_equal(f->sink.nu, 1);
    assert_true(span_eq_cstr(f->sink.u[0].cost_source, "unknown"));
    assert_int_equal(f->sink.u[0].cost_nusd, 0);
    ingest_reload(f->in, f->cfg, f->prices, f->keys);
    prices_destroy(&p2);
    cfg_destroy(&c2);
    destroy(f);
}

static void test_shard_key(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    feed(f, "{\"provider\":\"p\",\"model\":\"m\",\"user\":\"alice\",\"account\":\"acme\"}\n"
            "{\"provider\":\"p\",\"model\":\"m\",\"account\":\"acme\"}\n"
            "{\"provider\":\"p\",\"model\":\"m\"}\n");
    assert_int_equal(f->sink.nu, 3);
    assert_int_equal(f->sink.shard[0], fnv1a64("alice", 5) & 0xff);
    assert_int_equal(f->sink.shard[1], fnv1a64("acme", 4) & 0xff);
    assert_int_equal(f->sink.shard[2], fnv1a64("", 0) & 0xff);
    destroy(f);
}

static void test_msgpack_datagram(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    mbuf_t mb = { 0 };
    msgpack_packer pk;
    mbuf_packer(&mb, &pk);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_map(&pk, 3);
        msgpack_pack_str_with_body(&pk, "provider", 8);
        msgpack_pack_str_with_body(&pk, "openai", 6);
        msgpack_pack_str_with_body(&pk, "model", 5);
        msgpack_pack_str_with_body(&pk, "gpt-4o", 6);
        msgpack_pack_str_with_body(&pk, "output_tokens", 13);
        msgpack_pack_uint32(&pk, 100u + (unsigned)i);
    }
    mbuf_append(&mb, "\x83\xa1", 2); /* a third map, cut short */
    char *copy = xmalloc(mb.len);
    memcpy(copy, mb.data, mb.len);
    ingest_datagram(f->in, copy, mb.len, NULL, 0, 1);
    free(copy);
    assert_int_equal(f->sink.nu, 2);
    assert_int_equal(f->sink.u[1].output_tokens, 101);
    assert_int_equal(f->sink.u[1].cost_nusd, 1010000);
    assert_int_equal(rejected(f, "bad_msgpack"), 1);
    check_invariant(f);
    mbuf_free(&mb);
    destroy(f);
}

static void test_empty_and_long(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    ingest_datagram(f->in, "", 0, NULL, 0, 1);
    char line[700];
    memset(line, 'a', sizeof line - 1);
    line[sizeof line - 1] = '\0';
    memcpy(line, "x:1|c", 5);
    line[5] = '|'; /* a StatsD line over max_line (512) */
    feed(f, line);
    assert_int_equal(rejected(f, "empty"), 1);
    assert_int_equal(rejected(f, "line_too_long"), 1);
    check_invariant(f);
    destroy(f);
}

/* ---- signatures --------------------------------------------------------- */

static size_t sign(fx_t *f, char *buf, size_t len, size_t cap, int64_t ms)
{
    ssize_t n = auth_sign(buf, len, cap, f->key, "k1", ms);
    assert_true(n > 0);
    return (size_t)n;
}

static void test_auth_required(void **state)
{
    (void)state;
    fx_t *f = make("auth = required\nauth_keys = k\nauth_skew = 30s");
    const int64_t now = 1795000000000000000LL, ms = now / 1000000;
    char buf[1024];
    const char *ev = "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"input_tokens\":1}";

    strcpy(buf, ev);
    ingest_datagram(f->in, buf, strlen(buf), NULL, 0, now);
    assert_int_equal(rejected(f, "unsigned"), 1);

    strcpy(buf, ev);
    size_t n = sign(f, buf, strlen(buf), sizeof buf, ms);
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    assert_int_equal(f->sink.nu, 1);
    assert_true(f->sink.u[0].is_signed);
    assert_true(span_eq_cstr(f->sink.u[0].key_id, "k1"));

    ingest_datagram(f->in, buf, n, NULL, 0, now + 1000000); /* the same bytes again */
    assert_int_equal(rejected(f, "replay"), 1);

    buf[20] ^= 1; /* tampered */
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    assert_int_equal(rejected(f, "bad_signature"), 1);

    strcpy(buf, ev);
    n = sign(f, buf, strlen(buf), sizeof buf, ms - 31000); /* outside the skew */
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    assert_int_equal(rejected(f, "stale"), 1);

    strcpy(buf, ev);
    n = strlen(buf);
    n += (size_t)sprintf(buf + n, "\n|sig:k2:%lld:AAAA", (long long)ms);
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    assert_int_equal(rejected(f, "bad_sig_line") + rejected(f, "unknown_key"), 1);

    assert_int_equal(counter(f, "ingest_auth_failures_total", "reason=replay"), 1);
    assert_int_equal(f->sink.nu, 1);
    check_invariant(f);
    destroy(f);
}

static void test_auth_optional_and_off(void **state)
{
    (void)state;
    fx_t *f = make("auth = optional\nauth_keys = k");
    const int64_t now = 1795000000000000000LL;
    char buf[1024];
    strcpy(buf, "a:1|c\nb:2|c");
    size_t n = sign(f, buf, strlen(buf), sizeof buf, now / 1000000);
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    feed(f, "c:3|c");
    assert_int_equal(f->sink.ns, 3);
    assert_int_equal(counter(f, "ingest_signed_total", NULL), 1);
    destroy(f);

    f = make(NULL); /* auth off: a sig line is ignored, the records stay unsigned */
    strcpy(buf, "a:1|c");
    n = sign(f, buf, strlen(buf), sizeof buf, 1);
    ingest_datagram(f->in, buf, n, NULL, 0, now);
    assert_int_equal(f->sink.ns, 1);
    assert_int_equal(counter(f, "ingest_signatures_ignored_total", NULL), 1);
    assert_int_equal(counter(f, "ingest_received_total", NULL), 1);
    destroy(f);
}

static void test_tcp_lines(void **state)
{
    (void)state;
    fx_t *f = make(NULL);
    const char *t = "a:1|c\n{\"provider\":\"p\",\"model\":\"m\"}\n";
    ingest_lines(f->in, t, strlen(t), NULL, 0, 5);
    assert_int_equal(f->sink.ns, 1);
    assert_int_equal(f->sink.nu, 1);
    assert_int_equal(counter(f, "ingest_datagrams_total", NULL), 0);
    check_invariant(f);
    destroy(f);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_statsd_token_types),
        cmocka_unit_test(test_statsd_requests_latency_rate),
        cmocka_unit_test(test_statsd_llm_errors),
        cmocka_unit_test(test_statsd_generic_samples),
        cmocka_unit_test(test_gauge_rule_delta),
        cmocka_unit_test(test_good_records_survive_bad_neighbours),
        cmocka_unit_test(test_provider_alias_and_sources),
        cmocka_unit_test(test_unknown_without_default),
        cmocka_unit_test(test_shard_key),
        cmocka_unit_test(test_msgpack_datagram),
        cmocka_unit_test(test_empty_and_long),
        cmocka_unit_test(test_auth_required),
        cmocka_unit_test(test_auth_optional_and_off),
        cmocka_unit_test(test_tcp_lines),
    };
    if (argc == 2)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("ingest", tests, NULL, NULL);
}

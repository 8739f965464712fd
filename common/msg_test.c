/* msg_test: tests of common/msg, the bus message bodies: pack -> unpack
 * round trips of usage records, StatsD samples and stats, and tables of
 * malformed bodies that unpack must refuse (types, sizes, invariants,
 * missing keys) or accept (unknown keys). Run one test alone with
 * `msg_test NAME`. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mbuf.h"
#include "mpr.h"
#include "msg.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- building msgpack maps from a description ---------------------------- */

typedef enum {
    V_END = 0,
    V_STR,    /* s */
    V_STRN,   /* a string of u bytes of 'a' */
    V_UINT,   /* u */
    V_INT,    /* i (packed as signed: negative values are msgpack negative ints) */
    V_F64,    /* f */
    V_F32,    /* f, as a float32 */
    V_TRUE,
    V_FALSE,
    V_NIL,
    V_ARR,    /* an array of u small integers */
    V_TAGS,   /* a map of u string pairs "kN": "vN" */
    V_BADTAG, /* a map {"k": 1} */
    V_NILTAG, /* a map {"k": nil} */
    V_BIN,    /* 3 bytes of bin */
    V_DEL,    /* (override) remove the key */
    V_INTKEY, /* (override) an extra pair with the integer key 7 */
} vkind_t;

typedef struct {
    const char *key;
    vkind_t kind;
    const char *s;
    uint64_t u;
    int64_t i;
    double f;
} kv_t;

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_value(msgpack_packer *pk, const kv_t *kv)
{
    switch (kv->kind) {
    case V_STR:
        pack_str(pk, kv->s, strlen(kv->s));
        break;
    case V_STRN: {
        char *b = malloc(kv->u + 1);
        assert_non_null(b);
        memset(b, 'a', kv->u);
        pack_str(pk, b, kv->u);
        free(b);
        break;
    }
    case V_UINT:
        msgpack_pack_uint64(pk, kv->u);
        break;
    case V_INT:
        msgpack_pack_int64(pk, kv->i);
        break;
    case V_F64:
        msgpack_pack_double(pk, kv->f);
        break;
    case V_F32:
        msgpack_pack_float(pk, (float)kv->f);
        break;
    case V_TRUE:
        msgpack_pack_true(pk);
        break;
    case V_FALSE:
        msgpack_pack_false(pk);
        break;
    case V_NIL:
        msgpack_pack_nil(pk);
        break;
    case V_ARR:
        msgpack_pack_array(pk, kv->u);
        for (uint64_t j = 0; j < kv->u; j++)
            msgpack_pack_uint64(pk, j);
        break;
    case V_TAGS:
        msgpack_pack_map(pk, kv->u);
        for (uint64_t j = 0; j < kv->u; j++) {
            char k[24], v[24];
            snprintf(k, sizeof k, "k%llu", (unsigned long long)j);
            snprintf(v, sizeof v, "v%llu", (unsigned long long)j);
            pack_str(pk, k, strlen(k));
            pack_str(pk, v, strlen(v));
        }
        break;
    case V_BADTAG:
        msgpack_pack_map(pk, 1);
        pack_str(pk, "k", 1);
        msgpack_pack_int(pk, 1);
        break;
    case V_NILTAG:
        msgpack_pack_map(pk, 1);
        pack_str(pk, "k", 1);
        msgpack_pack_nil(pk);
        break;
    case V_BIN:
        msgpack_pack_bin(pk, 3);
        msgpack_pack_bin_body(pk, "abc", 3);
        break;
    default:
        fail_msg("pack_value: kind %d", (int)kv->kind);
    }
}

static size_t kv_len(const kv_t *kv)
{
    size_t n = 0;
    while (kv && kv[n].kind != V_END)
        n++;
    return n;
}

static const kv_t *find_kv(const kv_t *kv, const char *key)
{
    for (size_t i = 0; kv && kv[i].kind != V_END; i++)
        if (kv[i].key && !strcmp(kv[i].key, key))
            return &kv[i];
    return NULL;
}

/* base with over applied: a key in over replaces (or with V_DEL removes) the
 * base's, new keys are appended. */
static void build(msgpack_sbuffer *sb, const kv_t *base, const kv_t *over)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    size_t n = 0, nb = kv_len(base), no = kv_len(over);
    for (size_t i = 0; i < nb; i++) {
        const kv_t *o = find_kv(over, base[i].key);
        n += !(o && o->kind == V_DEL);
    }
    for (size_t i = 0; i < no; i++)
        n += over[i].kind == V_INTKEY || (over[i].kind != V_DEL && !find_kv(base, over[i].key));
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < nb; i++) {
        const kv_t *o = find_kv(over, base[i].key);
        if (o && o->kind == V_DEL)
            continue;
        pack_str(&pk, base[i].key, strlen(base[i].key));
        pack_value(&pk, o ? o : &base[i]);
    }
    for (size_t i = 0; i < no; i++) {
        if (over[i].kind == V_INTKEY) {
            msgpack_pack_int(&pk, 7);
            msgpack_pack_int(&pk, 1);
        } else if (over[i].kind != V_DEL && !find_kv(base, over[i].key)) {
            pack_str(&pk, over[i].key, strlen(over[i].key));
            pack_value(&pk, &over[i]);
        }
    }
}

/* Unpacks data[0..len) as one msgpack object into up; checks mpr agrees. */
static const msgpack_object *unpack(msgpack_unpacked *up, const char *data, size_t len)
{
    size_t off = 0;
    assert_int_equal(mpr_validate(data, len, 16), 0);
    assert_int_equal(msgpack_unpack_next(up, data, len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, len);
    return &up->data;
}

#define S(k, v) { k, V_STR, v, 0, 0, 0 }
#define U(k, v) { k, V_UINT, NULL, v, 0, 0 }
#define I(k, v) { k, V_INT, NULL, 0, v, 0 }
#define F(k, v) { k, V_F64, NULL, 0, 0, v }
#define K(k, kind, u) { k, kind, NULL, u, 0, 0 }
#define END { NULL, V_END, NULL, 0, 0, 0 }

/* ---- usage --------------------------------------------------------------- */

static void fill_usage(msg_usage_t *u)
{
    msg_usage_init(u);
    u->provider = SPAN_LIT("anthropic");
    u->model = SPAN_LIT("claude-opus-4-1");
    u->operation = SPAN_LIT("chat");
    u->user = SPAN_LIT("u-42");
    u->account = SPAN_LIT("acct-7");
    u->project = SPAN_LIT("search");
    u->status = SPAN_LIT("error");
    u->error_type = SPAN_LIT("rate_limited");
    u->request_id = SPAN_LIT("req_0123456789abcdef0123456789abcdef"); /* str8 (> 31 bytes) */
    u->cost_source = SPAN_LIT("priced");
    u->price_version = SPAN_LIT("0123456789ab");
    u->key_id = SPAN_LIT("k1");
    u->input_tokens = 1ULL << 40; /* the largest allowed */
    u->cache_read_tokens = 20000;
    u->cache_write_tokens = 3000;
    u->cache_write_1h_tokens = 4000;
    u->output_tokens = 70000;
    u->reasoning_tokens = 65536;
    u->requests = 1;
    u->ts = 1763823249123456789LL;
    u->recv_ts = 1763823249223456789LL;
    u->latency_us = 1250000;
    u->ttft_us = 0;
    u->cost_nusd = 288750000;
    u->http_status = 429;
    u->retries = 2;
    u->is_signed = true;
    u->ntags = 2;
    u->tags[0] = (msg_tag_t){ SPAN_LIT("team"), SPAN_LIT("core") };
    u->tags[1] = (msg_tag_t){ SPAN_LIT("empty"), SPAN_LIT("") };
}

static void assert_span(span_t got, span_t want, const char *what)
{
    if (!want.p) {
        if (got.p)
            fail_msg("%s: present, want absent", what);
        return;
    }
    if (!got.p || !span_eq(got, want))
        fail_msg("%s: \"%.*s\", want \"%.*s\"", what, (int)got.len, got.p ? got.p : "",
                 (int)want.len, want.p);
}

static void assert_usage_equal(const msg_usage_t *a, const msg_usage_t *b)
{
    assert_span(a->provider, b->provider, "provider");
    assert_span(a->model, b->model, "model");
    assert_span(a->operation, b->operation, "operation");
    assert_span(a->user, b->user, "user");
    assert_span(a->account, b->account, "account");
    assert_span(a->project, b->project, "project");
    assert_span(a->status, b->status, "status");
    assert_span(a->error_type, b->error_type, "error_type");
    assert_span(a->request_id, b->request_id, "request_id");
    assert_span(a->cost_source, b->cost_source, "cost_source");
    assert_span(a->price_version, b->price_version, "price_version");
    assert_span(a->key_id, b->key_id, "key_id");
    assert_int_equal(a->input_tokens, b->input_tokens);
    assert_int_equal(a->cache_read_tokens, b->cache_read_tokens);
    assert_int_equal(a->cache_write_tokens, b->cache_write_tokens);
    assert_int_equal(a->cache_write_1h_tokens, b->cache_write_1h_tokens);
    assert_int_equal(a->output_tokens, b->output_tokens);
    assert_int_equal(a->reasoning_tokens, b->reasoning_tokens);
    assert_int_equal(a->requests, b->requests);
    assert_int_equal(a->ts, b->ts);
    assert_int_equal(a->recv_ts, b->recv_ts);
    assert_int_equal(a->latency_us, b->latency_us);
    assert_int_equal(a->ttft_us, b->ttft_us);
    assert_int_equal(a->cost_nusd, b->cost_nusd);
    assert_int_equal(a->http_status, b->http_status);
    assert_int_equal(a->retries, b->retries);
    assert_int_equal(a->is_signed, b->is_signed);
    assert_int_equal(a->ntags, b->ntags);
    for (size_t i = 0; i < a->ntags; i++) {
        assert_span(a->tags[i].key, b->tags[i].key, "tag key");
        assert_span(a->tags[i].value, b->tags[i].value, "tag value");
    }
}

static void round_trip_usage(const msg_usage_t *in)
{
    /* both writers give the same bytes */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msg_usage_pack(&pk, in);
    mbuf_t b = { 0 };
    mbuf_append(&b, "prefix", 6); /* encode appends */
    msg_usage_encode(&b, in);
    assert_int_equal(b.len, 6 + sb.size);
    assert_memory_equal(b.data + 6, sb.data, sb.size);

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    const msgpack_object *o = unpack(&up, sb.data, sb.size);
    msg_usage_t out;
    char err[256];
    if (msg_usage_unpack(o, &out, err, sizeof err) != 0)
        fail_msg("unpack: %s", err);
    assert_usage_equal(&out, in);
    /* strings borrow from the buffer */
    assert_true(out.provider.p >= sb.data && out.provider.p < sb.data + sb.size);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    mbuf_free(&b);
}

static void test_usage_round_trip(void **state)
{
    (void)state;
    msg_usage_t u;
    fill_usage(&u);
    round_trip_usage(&u);

    /* the least a record can carry: absent stays absent */
    msg_usage_init(&u);
    u.provider = SPAN_LIT("openai");
    u.model = SPAN_LIT("gpt-4o");
    u.operation = SPAN_LIT("chat");
    u.status = SPAN_LIT("ok");
    u.cost_source = SPAN_LIT("unknown");
    u.requests = 0; /* a token counter line */
    round_trip_usage(&u);

    /* empty strings are present, not absent */
    u.user = SPAN_LIT("");
    u.model = SPAN_LIT("");
    round_trip_usage(&u);

    /* the largest values of each field */
    fill_usage(&u);
    u.cache_read_tokens = u.input_tokens;
    u.cache_write_tokens = 0;
    u.cache_write_1h_tokens = 0;
    u.output_tokens = u.reasoning_tokens = 1ULL << 40;
    u.ts = u.recv_ts = u.cost_nusd = u.latency_us = u.ttft_us = INT64_MAX;
    u.http_status = 999;
    u.retries = INT32_MAX;
    u.ntags = MSG_MAX_TAGS;
    char keys[MSG_MAX_TAGS][8];
    for (size_t i = 0; i < MSG_MAX_TAGS; i++) {
        snprintf(keys[i], sizeof keys[i], "t%zu", i);
        u.tags[i] = (msg_tag_t){ span_cstr(keys[i]), span_cstr(keys[i]) };
    }
    static char big[MSG_MAX_STR];
    memset(big, 'x', sizeof big);
    u.request_id = span_make(big, sizeof big);
    round_trip_usage(&u);
}

static const kv_t usage_base[] = {
    S("provider", "openai"), S("model", "gpt-4o"), S("operation", "chat"), S("status", "ok"),
    S("cost_source", "priced"), U("ts", 1), U("recv_ts", 2), U("cost_nusd", 3),
    U("input_tokens", 10), U("output_tokens", 5), END,
};

typedef struct {
    const char *name;
    kv_t over[4];
    const char *want_err; /* NULL: accepted */
} body_case_t;

static const body_case_t usage_cases[] = {
    { "the base record", { END }, NULL },
    /* wrong types */
    { "provider an integer", { U("provider", 5), END }, "provider: not a string" },
    { "model binary", { K("model", V_BIN, 0), END }, "model: not a string" },
    { "user an array", { K("user", V_ARR, 1), END }, "user: not a string" },
    { "tokens a string", { S("input_tokens", "10"), END }, "input_tokens: not an integer" },
    { "tokens a float", { F("input_tokens", 10.0), END }, "input_tokens: not an integer" },
    { "tokens negative", { I("output_tokens", -1), END }, "output_tokens: not an integer" },
    { "tokens nil", { K("cache_read_tokens", V_NIL, 0), END }, "cache_read_tokens: not an integer" },
    { "ts a float", { F("ts", 1.5), END }, "ts: not an integer" },
    { "ts negative", { I("ts", -5), END }, "ts: not an integer" },
    { "ts beyond int64", { U("ts", (uint64_t)INT64_MAX + 1), END }, "ts: not an integer" },
    { "cost negative", { I("cost_nusd", -1), END }, "cost_nusd: not an integer" },
    { "latency negative", { I("latency_us", -1), END }, "latency_us: not an integer" },
    { "http_status 1000", { U("http_status", 1000), END }, "http_status: not an integer in [0, 999]" },
    { "retries beyond int32", { U("retries", 2147483648ULL), END }, "retries: not an integer" },
    { "signed an integer", { U("signed", 1), END }, "signed: not a boolean" },
    { "tags an array", { K("tags", V_ARR, 2), END }, "tags: not a map" },
    { "33 tags", { K("tags", V_TAGS, 33), END }, "tags: not a map of at most 32" },
    { "a tag value an integer", { K("tags", V_BADTAG, 0), END }, "tags: entries must be strings" },
    { "a tag value nil", { K("tags", V_NILTAG, 0), END }, "tags: entries must be strings" },
    { "a key that is not a string", { K(NULL, V_INTKEY, 0), END }, "key is not a string" },
    /* sizes */
    { "a string of MSG_MAX_STR bytes", { K("model", V_STRN, MSG_MAX_STR), END }, NULL },
    { "a string over MSG_MAX_STR", { K("model", V_STRN, MSG_MAX_STR + 1), END },
      "model: not a string of at most 1024 bytes" },
    { "an optional string over MSG_MAX_STR", { K("request_id", V_STRN, MSG_MAX_STR + 1), END },
      "request_id: not a string" },
    { "tokens 2^40", { U("input_tokens", 1ULL << 40), END }, NULL },
    { "tokens over 2^40", { U("input_tokens", (1ULL << 40) + 1), END },
      "input_tokens: not an integer in [0, 1099511627776]" },
    { "reasoning over 2^40", { U("output_tokens", 1ULL << 40), U("reasoning_tokens", (1ULL << 40) + 1), END },
      "reasoning_tokens: not an integer" },
    { "32 tags", { K("tags", V_TAGS, 32), END }, NULL },
    /* invariants */
    { "cache read over input", { U("cache_read_tokens", 11), END }, "token parts exceed their whole" },
    { "cache write over input", { U("cache_write_tokens", 11), END }, "token parts exceed" },
    { "1h write over input", { U("cache_write_1h_tokens", 11), END }, "token parts exceed" },
    { "cache parts together over input",
      { U("cache_read_tokens", 4), U("cache_write_tokens", 4), U("cache_write_1h_tokens", 3), END },
      "token parts exceed" },
    { "cache parts equal to input",
      { U("cache_read_tokens", 4), U("cache_write_tokens", 4), U("cache_write_1h_tokens", 2), END },
      NULL },
    { "reasoning over output", { U("reasoning_tokens", 6), END }, "token parts exceed" },
    { "reasoning equal to output", { U("reasoning_tokens", 5), END }, NULL },
    { "status other", { S("status", "timeout"), END }, "status: neither ok nor error" },
    { "status upper case", { S("status", "OK"), END }, "status: neither ok nor error" },
    { "status empty", { S("status", ""), END }, "status: neither ok nor error" },
    { "status error", { S("status", "error"), END }, NULL },
    /* required keys */
    { "no provider", { K("provider", V_DEL, 0), END }, "lacks one of" },
    { "provider nil", { K("provider", V_NIL, 0), END }, "lacks one of" },
    { "no model", { K("model", V_DEL, 0), END }, "lacks one of" },
    { "no operation", { K("operation", V_DEL, 0), END }, "lacks one of" },
    { "no status", { K("status", V_DEL, 0), END }, "lacks one of" },
    { "no cost_source", { K("cost_source", V_DEL, 0), END }, "lacks one of" },
    { "no ts", { K("ts", V_DEL, 0), END }, "lacks one of" },
    { "no recv_ts", { K("recv_ts", V_DEL, 0), END }, "lacks one of" },
    { "no cost_nusd", { K("cost_nusd", V_DEL, 0), END }, "lacks one of" },
    { "no tokens at all", { K("input_tokens", V_DEL, 0), K("output_tokens", V_DEL, 0), END }, NULL },
    /* unknown keys are ignored, whatever their value */
    { "an unknown key", { S("future_field", "x"), END }, NULL },
    { "an unknown key with a map", { K("future_map", V_TAGS, 3), K("future_arr", V_ARR, 4), END }, NULL },
    { "an unknown key with nil", { K("z", V_NIL, 0), F("zz", 1.5), END }, NULL },
    { "optional strings nil", { K("user", V_NIL, 0), K("price_version", V_NIL, 0), END }, NULL },
    { "tags nil", { K("tags", V_NIL, 0), END }, NULL },
};

static void test_usage_unpack_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(usage_cases); i++) {
        const body_case_t *c = &usage_cases[i];
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build(&sb, usage_base, c->over);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        const msgpack_object *o = unpack(&up, sb.data, sb.size);
        msg_usage_t u;
        char err[256];
        memset(err, 'Z', sizeof err);
        int rc = msg_usage_unpack(o, &u, err, sizeof err);
        if (c->want_err) {
            if (rc != -1)
                fail_msg("%s: accepted", c->name);
            assert_non_null(memchr(err, '\0', sizeof err));
            if (!strstr(err, c->want_err))
                fail_msg("%s: \"%s\", want \"%s\"", c->name, err, c->want_err);
        } else if (rc != 0) {
            fail_msg("%s: refused: %s", c->name, err);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

static void test_usage_unpack_details(void **state)
{
    (void)state;
    /* defaults of what a record does not say */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    build(&sb, usage_base, (const kv_t[]){ K("tags", V_TAGS, 2), END });
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    msg_usage_t u;
    char err[256];
    assert_int_equal(msg_usage_unpack(unpack(&up, sb.data, sb.size), &u, err, sizeof err), 0);
    assert_int_equal(u.requests, 1);
    assert_int_equal(u.latency_us, -1);
    assert_int_equal(u.ttft_us, -1);
    assert_int_equal(u.retries, -1);
    assert_int_equal(u.http_status, 0);
    assert_false(u.is_signed);
    assert_null(u.user.p);
    assert_null(u.key_id.p);
    assert_int_equal(u.input_tokens, 10);
    assert_int_equal(u.ntags, 2);
    assert_true(span_eq_cstr(u.tags[1].key, "k1"));
    assert_true(span_eq_cstr(u.tags[1].value, "v1"));
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);

    /* not a map at all */
    static const char *const notmaps[] = { "\x93\x01\x02\x03", "\xc0", "\xa2ok", "\x05" };
    for (size_t i = 0; i < ARRAY_LEN(notmaps); i++) {
        msgpack_unpacked_init(&up);
        const msgpack_object *o = unpack(&up, notmaps[i], strlen(notmaps[i]));
        assert_int_equal(msg_usage_unpack(o, &u, err, sizeof err), -1);
        assert_string_equal(err, "usage record is not a map");
        msg_sample_t s;
        assert_int_equal(msg_sample_unpack(o, &s, err, sizeof err), -1);
        assert_string_equal(err, "sample is not a map");
        msg_stats_t st;
        msg_stat_t e[4];
        assert_int_equal(msg_stats_unpack(o, &st, e, 4, err, sizeof err), -1);
        assert_string_equal(err, "stats is not a map");
        msgpack_unpacked_destroy(&up);
    }
}

/* ---- samples ------------------------------------------------------------- */

static void round_trip_sample(const msg_sample_t *in)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msg_sample_pack(&pk, in);
    mbuf_t b = { 0 };
    msg_sample_encode(&b, in);
    assert_int_equal(b.len, sb.size);
    assert_memory_equal(b.data, sb.data, sb.size);

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    msg_sample_t out;
    char err[256];
    if (msg_sample_unpack(unpack(&up, sb.data, sb.size), &out, err, sizeof err) != 0)
        fail_msg("unpack: %s", err);
    assert_span(out.name, in->name, "name");
    assert_int_equal(out.type, in->type);
    if (in->type == MSG_ST_S)
        assert_span(out.member, in->member, "member");
    else
        assert_memory_equal(&out.value, &in->value, sizeof out.value); /* bit for bit */
    assert_true(out.rate == in->rate);
    assert_int_equal(out.delta, in->delta);
    assert_int_equal(out.ts, in->ts);
    assert_int_equal(out.ntags, in->ntags);
    for (size_t i = 0; i < in->ntags; i++) {
        assert_span(out.tags[i].key, in->tags[i].key, "tag key");
        assert_span(out.tags[i].value, in->tags[i].value, "tag value");
    }
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    mbuf_free(&b);
}

static void test_sample_round_trip(void **state)
{
    (void)state;
    static const double values[] = { 0.0, -0.0, 1.0, -42.5, 1e300, -1e-300, 0.1, 5e-324,
                                     9007199254740993.0 };
    for (int t = MSG_ST_C; t <= MSG_ST_S; t++) {
        for (size_t v = 0; v < ARRAY_LEN(values); v++) {
            msg_sample_t s = { 0 };
            s.name = SPAN_LIT("api.requests");
            s.type = (msg_stype_t)t;
            s.value = values[v];
            s.member = SPAN_LIT("user-17");
            s.rate = v % 2 ? 0.25 : 1.0;
            s.delta = t == MSG_ST_G && v % 2;
            s.ts = 1763823249123456789LL;
            s.ntags = v % 3;
            s.tags[0] = (msg_tag_t){ SPAN_LIT("env"), SPAN_LIT("prod") };
            s.tags[1] = (msg_tag_t){ SPAN_LIT("flag"), SPAN_LIT("") }; /* a tag without a value */
            round_trip_sample(&s);
        }
    }
    assert_string_equal(msg_stype_name(MSG_ST_MS), "ms");
    assert_string_equal(msg_stype_name((msg_stype_t)17), "?");
}

static const kv_t sample_base[] = {
    S("name", "api.latency"), S("type", "ms"), F("value", 12.5), F("rate", 0.5),
    K("delta", V_FALSE, 0), K("tags", V_TAGS, 1), U("ts", 7), END,
};

static const body_case_t sample_cases[] = {
    { "the base sample", { END }, NULL },
    { "an integer value", { U("value", 3), END }, NULL },
    { "a negative integer value", { I("value", -3), END }, NULL },
    { "a float32 value", { { "value", V_F32, NULL, 0, 0, 0.25 }, END }, NULL },
    { "no rate: 1", { K("rate", V_DEL, 0), END }, NULL },
    { "rate 1", { F("rate", 1.0), END }, NULL },
    { "rate 0", { F("rate", 0.0), END }, "rate: not in (0, 1]" },
    { "rate above 1", { F("rate", 1.5), END }, "rate: not in (0, 1]" },
    { "rate negative", { F("rate", -0.5), END }, "rate: not in (0, 1]" },
    { "rate NaN", { F("rate", NAN), END }, "rate: not a finite number" },
    { "rate a string", { S("rate", "0.5"), END }, "rate: not a finite number" },
    { "value infinite", { F("value", INFINITY), END }, "value: not a finite number" },
    { "value NaN", { F("value", NAN), END }, "value: not a finite number" },
    { "value a string", { S("value", "12"), END }, "value: not a finite number" },
    { "value nil", { K("value", V_NIL, 0), END }, "value: not a finite number" },
    { "no value", { K("value", V_DEL, 0), END }, "sample lacks name, type or value" },
    { "no name", { K("name", V_DEL, 0), END }, "sample lacks" },
    { "empty name", { S("name", ""), END }, "sample lacks" },
    { "name nil", { K("name", V_NIL, 0), END }, "sample lacks" },
    { "name over MSG_MAX_STR", { K("name", V_STRN, MSG_MAX_STR + 1), END }, "name: not a string" },
    { "no type", { K("type", V_DEL, 0), END }, "sample lacks" },
    { "unknown type", { S("type", "x"), END }, "type: unknown" },
    { "type upper case", { S("type", "MS"), END }, "type: unknown" },
    { "type an integer", { U("type", 1), END }, "type: not a string" },
    { "type nil", { K("type", V_NIL, 0), END }, "type: unknown" },
    { "a set with a string member", { S("type", "s"), S("value", "u1"), END }, NULL },
    { "a set with a number", { S("type", "s"), F("value", 1.0), END }, "value: not a string" },
    { "a set with nil", { S("type", "s"), K("value", V_NIL, 0), END },
      "value: a set member must be a string" },
    { "delta an integer", { U("delta", 1), END }, "delta: not a boolean" },
    { "ts negative", { I("ts", -1), END }, "ts: not an integer" },
    { "tags not strings", { K("tags", V_BADTAG, 0), END }, "tags: entries must be strings" },
    { "33 tags", { K("tags", V_TAGS, 33), END }, "tags: not a map of at most 32" },
    { "unknown keys", { S("unit", "ms"), K("more", V_TAGS, 2), END }, NULL },
};

static void test_sample_unpack_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(sample_cases); i++) {
        const body_case_t *c = &sample_cases[i];
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build(&sb, sample_base, c->over);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_sample_t s;
        char err[256];
        memset(err, 'Z', sizeof err);
        int rc = msg_sample_unpack(unpack(&up, sb.data, sb.size), &s, err, sizeof err);
        if (c->want_err) {
            if (rc != -1)
                fail_msg("%s: accepted", c->name);
            if (!memchr(err, '\0', sizeof err))
                fail_msg("%s: refused without a reason", c->name);
            if (!strstr(err, c->want_err))
                fail_msg("%s: \"%s\", want \"%s\"", c->name, err, c->want_err);
        } else if (rc != 0) {
            fail_msg("%s: refused: %s", c->name, err);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* ---- stats --------------------------------------------------------------- */

static void test_stats_round_trip(void **state)
{
    (void)state;
    msg_stat_t in[4] = {
        { .name = SPAN_LIT("ingest_received_total"), .value = 123456789012LL },
        { .name = SPAN_LIT("ingest_rejected_total"),
          .nlabels = 1,
          .labels = { { SPAN_LIT("reason"), SPAN_LIT("bad_value") } },
          .value = 7 },
        { .name = SPAN_LIT("queue_depth"), .value = -3, .gauge = true },
        { .name = SPAN_LIT("unpriced_requests_total"),
          .nlabels = 4,
          .labels = { { SPAN_LIT("provider"), SPAN_LIT("acme") },
                      { SPAN_LIT("model"), SPAN_LIT("x") },
                      { SPAN_LIT("a"), SPAN_LIT("") },
                      { SPAN_LIT("b"), SPAN_LIT("2") } },
          .value = INT64_MIN },
    };
    msg_stats_t s = { .daemon = SPAN_LIT("tokmon-collectd"), .src = SPAN_LIT("collectd@h1"),
                      .pid = 4242, .started = 1763823249000000000LL,
                      .ts = 1763823259000000000LL, .n = 4, .entries = in };
    for (size_t n = 0; n <= 4; n++) {
        s.n = n;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msg_stats_pack(&pk, &s);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_stats_t out;
        msg_stat_t e[4];
        char err[256];
        if (msg_stats_unpack(unpack(&up, sb.data, sb.size), &out, e, 4, err, sizeof err) != 0)
            fail_msg("unpack: %s", err);
        assert_span(out.daemon, s.daemon, "daemon");
        assert_span(out.src, s.src, "src");
        assert_int_equal(out.pid, s.pid);
        assert_int_equal(out.started, s.started);
        assert_int_equal(out.ts, s.ts);
        assert_int_equal(out.n, n);
        assert_ptr_equal(out.entries, e);
        for (size_t i = 0; i < n; i++) {
            assert_span(e[i].name, in[i].name, "counter name");
            assert_int_equal(e[i].value, in[i].value);
            assert_int_equal(e[i].gauge, in[i].gauge);
            assert_int_equal(e[i].nlabels, in[i].nlabels);
            for (size_t l = 0; l < in[i].nlabels; l++) {
                assert_span(e[i].labels[l].key, in[i].labels[l].key, "label key");
                assert_span(e[i].labels[l].value, in[i].labels[l].value, "label value");
            }
        }
        /* more counters than the caller has room for */
        if (n > 2) {
            memset(err, 'Z', sizeof err);
            assert_int_equal(msg_stats_unpack(&up.data, &out, e, 2, err, sizeof err), -1);
            assert_non_null(strstr(err, "too many counters"));
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* A stats body with one counter entry given as raw msgpack. */
static void stats_with_entry(msgpack_sbuffer *sb, const char *entry, size_t len)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "daemon", 6);
    pack_str(&pk, "d", 1);
    pack_str(&pk, "counters", 8);
    msgpack_pack_array(&pk, 1);
    msgpack_sbuffer_write(sb, entry, len);
}

typedef struct {
    const char *name;
    const char *entry; /* msgpack bytes of one counter entry */
    size_t len;
    const char *want_err; /* NULL: accepted */
} entry_case_t;

#define E(s) s, sizeof(s) - 1

static void test_stats_unpack_table(void **state)
{
    (void)state;
    static const entry_case_t entries[] = {
        { "a counter", E("\x94\xa1n\x80\x05\xa1" "c"), NULL },
        { "a gauge with a negative value", E("\x94\xa1n\x80\xff\xa1g"), NULL },
        { "labels nil", E("\x94\xa1n\xc0\x05\xa1" "c"), NULL },
        { "extra elements ignored", E("\x95\xa1n\x80\x05\xa1" "c\x01"), NULL },
        { "not an array", E("\x81\xa1n\x01"), "stats: malformed counter" },
        { "three elements", E("\x93\xa1n\x80\x05"), "stats: malformed counter" },
        { "name nil", E("\x94\xc0\x80\x05\xa1" "c"), "stats: malformed counter" },
        { "name an integer", E("\x94\x01\x80\x05\xa1" "c"), "counter name: not a string" },
        { "labels an array", E("\x94\xa1n\x90\x05\xa1" "c"), "labels: not a map" },
        { "five labels", E("\x94\xa1n\x85\xa1" "a\xa0\xa1" "b\xa0\xa1" "c\xa0\xa1" "d\xa0\xa1" "e\xa0\x05\xa1" "c"),
          "labels: not a map of at most 4" },
        { "a label value an integer", E("\x94\xa1n\x81\xa1k\x01\x05\xa1" "c"), "labels: entries must be strings" },
        { "value a float", E("\x94\xa1n\x80\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1" "c"),
          "counter value: not an integer" },
        { "value above int64", E("\x94\xa1n\x80\xcf\x80\x00\x00\x00\x00\x00\x00\x00\xa1" "c"),
          "counter value: not an integer" },
        { "type x", E("\x94\xa1n\x80\x05\xa1x"), "stats: malformed counter" },
        { "type nil", E("\x94\xa1n\x80\x05\xc0"), "stats: malformed counter" },
        { "type an integer", E("\x94\xa1n\x80\x05\x01"), "counter type: not a string" },
    };
    for (size_t i = 0; i < ARRAY_LEN(entries); i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        stats_with_entry(&sb, entries[i].entry, entries[i].len);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_stats_t s;
        msg_stat_t e[2];
        char err[128];
        memset(err, 'Z', sizeof err); /* a reason must be written, not left over */
        int rc = msg_stats_unpack(unpack(&up, sb.data, sb.size), &s, e, 2, err, sizeof err);
        if (!entries[i].want_err) {
            if (rc != 0)
                fail_msg("%s: refused: %s", entries[i].name, err);
            assert_int_equal(s.n, 1);
        } else {
            if (rc != -1)
                fail_msg("%s: accepted", entries[i].name);
            if (!memchr(err, '\0', sizeof err))
                fail_msg("%s: refused without a terminated reason", entries[i].name);
            if (!strstr(err, entries[i].want_err))
                fail_msg("%s: \"%s\", want \"%s\"", entries[i].name, err, entries[i].want_err);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }

    static const kv_t stats_base[] = {
        S("daemon", "tokmon-collectd"), S("src", "c@h"), U("pid", 1), U("started", 2), U("ts", 3),
        K("counters", V_ARR, 0), END,
    };
    static const body_case_t bodies[] = {
        { "the base body", { END }, NULL },
        { "no daemon", { K("daemon", V_DEL, 0), END }, "stats lacks daemon or counters" },
        { "daemon nil", { K("daemon", V_NIL, 0), END }, "stats lacks daemon or counters" },
        { "no counters", { K("counters", V_DEL, 0), END }, "stats lacks daemon or counters" },
        { "counters a map", { K("counters", V_TAGS, 1), END }, "stats lacks daemon or counters" },
        { "pid beyond int32", { U("pid", 2147483648ULL), END }, "pid: not an integer" },
        { "pid negative", { I("pid", -1), END }, "pid: not an integer" },
        { "ts a string", { S("ts", "now"), END }, "ts: not an integer" },
        { "src an integer", { U("src", 1), END }, "src: not a string" },
        { "unknown keys", { S("host", "h1"), K("extra", V_ARR, 3), END }, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(bodies); i++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build(&sb, stats_base, bodies[i].over);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_stats_t s;
        msg_stat_t e[2];
        char err[128];
        memset(err, 'Z', sizeof err);
        int rc = msg_stats_unpack(unpack(&up, sb.data, sb.size), &s, e, 2, err, sizeof err);
        if (!bodies[i].want_err) {
            if (rc != 0)
                fail_msg("%s: refused: %s", bodies[i].name, err);
        } else {
            if (rc != -1)
                fail_msg("%s: accepted", bodies[i].name);
            if (!strstr(err, bodies[i].want_err))
                fail_msg("%s: \"%s\", want \"%s\"", bodies[i].name, err, bodies[i].want_err);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

static void test_pack_span(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msg_pack_span(&pk, SPAN_LIT("abc"));
    msg_pack_span(&pk, SPAN_LIT(""));
    assert_int_equal(sb.size, 5);
    assert_memory_equal(sb.data, "\xa3" "abc\xa0", 5);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- flush records ------------------------------------------------------- */

static void round_trip_flush(const msg_flush_t *in)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msg_flush_pack(&pk, in);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    msg_flush_t out;
    char err[256];
    if (msg_flush_unpack(unpack(&up, sb.data, sb.size), &out, err, sizeof err) != 0)
        fail_msg("%s: unpack: %s", msg_stype_name(in->type), err);
    assert_span(out.name, in->name, "name");
    assert_int_equal(out.type, in->type);
    assert_int_equal(out.start, in->start);
    assert_int_equal(out.end, in->end);
    assert_int_equal(out.rev, in->rev);
    assert_int_equal(out.samples, in->samples);
    assert_int_equal(out.ntags, in->ntags);
    for (size_t i = 0; i < in->ntags; i++) {
        assert_span(out.tags[i].key, in->tags[i].key, "tag key");
        assert_span(out.tags[i].value, in->tags[i].value, "tag value");
    }
    /* only the fields of the type travel; the others read back as 0 */
    bool dist = in->type == MSG_ST_MS || in->type == MSG_ST_H || in->type == MSG_ST_D;
    assert_true(out.value == (dist ? 0 : in->value));
    assert_true(out.rate == (in->type == MSG_ST_C ? in->rate : 0));
    assert_int_equal(out.capped, in->type == MSG_ST_S && in->capped);
    assert_true(out.count == (dist ? in->count : 0));
    assert_true(out.sum == (dist ? in->sum : 0));
    assert_true(out.min == (dist ? in->min : 0));
    assert_true(out.max == (dist ? in->max : 0));
    for (int i = 0; i < MSG_FLUSH_NQ; i++)
        assert_true(out.q[i] == (dist ? in->q[i] : 0));
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
}

static void test_flush_round_trip(void **state)
{
    (void)state;
    assert_string_equal(MSG_KIND_FLUSH, "flush");
    assert_true(msg_flush_q[0] == 0.5 && msg_flush_q[3] == 0.99);
    assert_string_equal(msg_flush_qname[2], "p95");
    for (int t = MSG_ST_C; t <= MSG_ST_S; t++) {
        for (int variant = 0; variant < 3; variant++) {
            msg_flush_t f = { 0 };
            f.name = SPAN_LIT("api.latency");
            f.type = (msg_stype_t)t;
            f.start = 1763823240000000000LL;
            f.end = f.start + 10000000000LL;
            f.rev = variant == 2 ? UINT32_MAX : (uint32_t)variant;
            f.samples = variant == 2 ? UINT64_MAX : 17;
            f.ntags = variant == 2 ? MSG_MAX_TAGS : (size_t)variant;
            static char keys[MSG_MAX_TAGS][8];
            for (size_t i = 0; i < MSG_MAX_TAGS; i++) {
                snprintf(keys[i], sizeof keys[i], "t%02zu", i);
                f.tags[i] = (msg_tag_t){ span_cstr(keys[i]), i == 1 ? SPAN_LIT("") : span_cstr(keys[i]) };
            }
            f.value = t == MSG_ST_S ? (variant == 2 ? 0 : 12345) : variant == 1 ? -2.5 : 1e300;
            f.rate = t == MSG_ST_C ? 0.25 : 0;
            f.capped = variant == 1;
            if (t == MSG_ST_MS || t == MSG_ST_H || t == MSG_ST_D) {
                f.value = f.rate = 0;
                f.count = variant == 2 ? 5e-324 : 40.0;
                f.sum = -1.5;
                f.min = variant == 1 ? -7 : 0.5;
                f.q[0] = 1;
                f.q[1] = 2;
                f.q[2] = 2;
                f.q[3] = 9.75;
                f.max = variant == 0 ? 9.75 : 100;
            }
            round_trip_flush(&f);
        }
    }
}

static const kv_t flush_c_base[] = {
    S("name", "api.requests"), S("type", "c"), U("start", 10), U("end", 20), U("rev", 0),
    K("tags", V_TAGS, 2), U("samples", 3), F("value", 30.0), F("rate", 3.0), END,
};
static const kv_t flush_ms_base[] = {
    S("name", "api.latency"), S("type", "ms"), U("start", 10), U("end", 20), U("rev", 1),
    K("tags", V_TAGS, 0), U("samples", 3), F("count", 3), F("sum", 6), F("min", 1),
    F("max", 3), F("p50", 2), F("p90", 3), F("p95", 3), F("p99", 3), END,
};
static const kv_t flush_s_base[] = {
    S("name", "users"), S("type", "s"), U("start", 0), U("end", 1), U("rev", 0),
    K("tags", V_NIL, 0), U("samples", 9), U("value", 4), K("capped", V_FALSE, 0), END,
};

typedef struct {
    const kv_t *base;
    body_case_t c;
} flush_case_t;

static const flush_case_t flush_cases[] = {
    { flush_c_base, { "a counter", { END }, NULL } },
    { flush_ms_base, { "a timer", { END }, NULL } },
    { flush_s_base, { "a set", { END }, NULL } },
    { flush_c_base, { "a gauge (rate ignored)", { S("type", "g"), END }, NULL } },
    { flush_c_base, { "a gauge without rate", { S("type", "g"), K("rate", V_DEL, 0), END }, NULL } },
    { flush_ms_base, { "a histogram", { S("type", "h"), END }, NULL } },
    { flush_ms_base, { "a distribution", { S("type", "d"), END }, NULL } },
    { flush_c_base, { "integer value", { I("value", -4), END }, NULL } },
    { flush_c_base, { "unknown keys", { S("unit", "ms"), K("more", V_ARR, 2), END }, NULL } },
    { flush_c_base, { "keys of other types ignored", { S("p50", "x"), S("capped", "x"), END }, NULL } },
    { flush_s_base, { "set value as a float", { F("value", 4.0), END }, NULL } },
    { flush_ms_base, { "quantiles all equal to max", { F("p50", 3), F("p90", 3), F("p95", 3), END }, NULL } },
    { flush_ms_base, { "min equal to max", { F("min", 3), F("p50", 3), F("p90", 3), END }, NULL } },
    /* not a record */
    { flush_c_base, { "a key not a string", { K(NULL, V_INTKEY, 0), END }, "key is not a string" } },
    /* required keys */
    { flush_c_base, { "no name", { K("name", V_DEL, 0), END }, "lacks name" } },
    { flush_c_base, { "empty name", { S("name", ""), END }, "name: empty" } },
    { flush_c_base, { "name nil", { K("name", V_NIL, 0), END }, "name: empty" } },
    { flush_c_base, { "name too long", { K("name", V_STRN, MSG_MAX_STR + 1), END }, "name: not a string" } },
    { flush_c_base, { "no type", { K("type", V_DEL, 0), END }, "lacks type" } },
    { flush_c_base, { "no start", { K("start", V_DEL, 0), END }, "lacks start" } },
    { flush_c_base, { "no end", { K("end", V_DEL, 0), END }, "lacks end" } },
    { flush_c_base, { "no rev", { K("rev", V_DEL, 0), END }, "lacks rev" } },
    { flush_c_base, { "no tags", { K("tags", V_DEL, 0), END }, "lacks tags" } },
    { flush_c_base, { "no samples", { K("samples", V_DEL, 0), END }, "lacks samples" } },
    { flush_c_base, { "counter without value", { K("value", V_DEL, 0), END }, "lacks value" } },
    { flush_c_base, { "counter without rate", { K("rate", V_DEL, 0), END }, "lacks rate" } },
    { flush_s_base, { "set without capped", { K("capped", V_DEL, 0), END }, "lacks capped" } },
    { flush_ms_base, { "timer without p95", { K("p95", V_DEL, 0), END }, "lacks p95" } },
    { flush_ms_base, { "timer without count", { K("count", V_DEL, 0), END }, "lacks count" } },
    { flush_ms_base, { "timer without max", { K("max", V_DEL, 0), END }, "lacks max" } },
    /* types */
    { flush_c_base, { "type unknown", { S("type", "x"), END }, "type: unknown" } },
    { flush_c_base, { "type an integer", { U("type", 0), END }, "type: not a string" } },
    { flush_c_base, { "start negative", { I("start", -1), END }, "start: not an integer" } },
    { flush_c_base, { "start a float", { F("start", 10.0), END }, "start: not an integer" } },
    { flush_c_base, { "end a string", { S("end", "20"), END }, "end: not an integer" } },
    { flush_c_base, { "rev negative", { I("rev", -1), END }, "rev: not an integer" } },
    { flush_c_base, { "rev over 32 bits", { U("rev", 1ULL << 32), END }, "rev: not an integer" } },
    { flush_c_base, { "samples negative", { I("samples", -1), END }, "samples: not an integer" } },
    { flush_c_base, { "samples a float", { F("samples", 3.0), END }, "samples: not an integer" } },
    { flush_c_base, { "tags an array", { K("tags", V_ARR, 1), END }, "tags: not a map" } },
    { flush_c_base, { "33 tags", { K("tags", V_TAGS, 33), END }, "tags: not a map of at most 32" } },
    { flush_c_base, { "a tag value nil", { K("tags", V_NILTAG, 0), END }, "tags: entries must be strings" } },
    { flush_c_base, { "value NaN", { F("value", NAN), END }, "value: not a finite number" } },
    { flush_c_base, { "value infinite", { F("value", -INFINITY), END }, "value: not a finite number" } },
    { flush_c_base, { "value a string", { S("value", "1"), END }, "value: not a finite number" } },
    { flush_c_base, { "rate NaN", { F("rate", NAN), END }, "rate: not a finite number" } },
    { flush_s_base, { "set value negative", { I("value", -1), END }, "value: not a count" } },
    { flush_s_base, { "set value fractional", { F("value", 1.5), END }, "value: not a count" } },
    { flush_s_base, { "capped an integer", { U("capped", 1), END }, "capped: not a boolean" } },
    { flush_ms_base, { "timer sum infinite", { F("sum", INFINITY), END }, "sum: not a finite number" } },
    { flush_ms_base, { "timer p99 nil", { K("p99", V_NIL, 0), END }, "p99: not a finite number" } },
    /* invariants */
    { flush_c_base, { "start equal to end", { U("start", 20), END }, "start: not before end" } },
    { flush_c_base, { "start after end", { U("start", 21), END }, "start: not before end" } },
    { flush_ms_base, { "count zero", { F("count", 0), END }, "count: not positive" } },
    { flush_ms_base, { "count negative", { F("count", -1), END }, "count: not positive" } },
    { flush_ms_base, { "p50 below min", { F("p50", 0.5), END }, "p50: out of order" } },
    { flush_ms_base, { "p90 below p50", { F("p90", 1.5), END }, "p90: out of order" } },
    { flush_ms_base, { "max below p99", { F("max", 2.5), END }, "max: out of order" } },
    { flush_ms_base, { "min above max", { F("min", 4), END }, "out of order" } },
};

static void test_flush_unpack_table(void **state)
{
    (void)state;
    /* not a map at all */
    msgpack_object arr = { .type = MSGPACK_OBJECT_ARRAY };
    msg_flush_t f;
    char err[256];
    assert_int_equal(msg_flush_unpack(&arr, &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a map"));

    for (size_t i = 0; i < ARRAY_LEN(flush_cases); i++) {
        const body_case_t *c = &flush_cases[i].c;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        build(&sb, flush_cases[i].base, c->over);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        memset(err, 'Z', sizeof err);
        int rc = msg_flush_unpack(unpack(&up, sb.data, sb.size), &f, err, sizeof err);
        if (c->want_err) {
            if (rc != -1)
                fail_msg("%s: accepted", c->name);
            if (!memchr(err, '\0', sizeof err))
                fail_msg("%s: refused without a reason", c->name);
            if (!strstr(err, c->want_err))
                fail_msg("%s: \"%s\", want \"%s\"", c->name, err, c->want_err);
        } else if (rc != 0) {
            fail_msg("%s: refused: %s", c->name, err);
        }
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* An alert transition goes there and back whole; malformed ones are refused
 * with a reason. */
static void test_alert_round_trip(void **state)
{
    (void)state;
    msg_alert_t a = { 0 };
    a.alertname = span_cstr("LLMBudgetExceeded");
    a.state = span_cstr("firing");
    a.severity = span_cstr("critical");
    a.fingerprint = span_cstr("00112233aabbccdd");
    a.nlabels = 3;
    a.labels[0] = (msg_tag_t){ span_cstr("alertname"), span_cstr("LLMBudgetExceeded") };
    a.labels[1] = (msg_tag_t){ span_cstr("budget"), span_cstr("daily") };
    a.labels[2] = (msg_tag_t){ span_cstr("severity"), span_cstr("critical") };
    a.nannotations = 1;
    a.annotations[0] = (msg_tag_t){ span_cstr("summary"), span_cstr("Budget daily is at 101% of $10") };
    a.value = 1.01;
    a.starts_at = 1795305600LL * 1000000000LL;
    a.ts = a.starts_at + 5;
    for (int resolved = 0; resolved < 2; resolved++) {
        if (resolved) {
            a.state = span_cstr("resolved");
            a.ends_at = a.ts + 60;
        }
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msg_alert_pack(&pk, &a);
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_alert_t b;
        char err[256];
        assert_int_equal(msg_alert_unpack(unpack(&up, sb.data, sb.size), &b, err, sizeof err), 0);
        assert_true(span_eq(b.alertname, a.alertname) && span_eq(b.state, a.state) &&
                    span_eq(b.severity, a.severity) && span_eq(b.fingerprint, a.fingerprint));
        assert_int_equal(b.nlabels, 3);
        assert_true(span_eq(b.labels[1].value, span_cstr("daily")));
        assert_int_equal(b.nannotations, 1);
        assert_true(b.value == 1.01);
        assert_int_equal(b.starts_at, a.starts_at);
        assert_int_equal(b.ends_at, a.ends_at);
        assert_int_equal(b.ts, a.ts);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
    /* refusals: an unknown state, no fingerprint, labels not strings, not a map */
    for (int k = 0; k < 4; k++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (k == 3) {
            msgpack_pack_array(&pk, 1);
            msgpack_pack_int(&pk, 1);
        } else {
            msgpack_pack_map(&pk, k == 1 ? 3 : k == 2 ? 5 : 4);
            msgpack_pack_str_with_body(&pk, "alertname", 9);
            msgpack_pack_str_with_body(&pk, "x", 1);
            msgpack_pack_str_with_body(&pk, "state", 5);
            if (k == 0)
                msgpack_pack_str_with_body(&pk, "gone", 4);
            else
                msgpack_pack_str_with_body(&pk, "firing", 6);
            if (k != 1) {
                msgpack_pack_str_with_body(&pk, "fingerprint", 11);
                msgpack_pack_str_with_body(&pk, "f", 1);
            }
            msgpack_pack_str_with_body(&pk, "ts", 2);
            msgpack_pack_int(&pk, 1);
            if (k == 2) {
                msgpack_pack_str_with_body(&pk, "labels", 6);
                msgpack_pack_map(&pk, 1);
                msgpack_pack_str_with_body(&pk, "k", 1);
                msgpack_pack_int(&pk, 1);
            }
        }
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        msg_alert_t b;
        char err[256] = "";
        if (msg_alert_unpack(unpack(&up, sb.data, sb.size), &b, err, sizeof err) != -1 || !err[0])
            fail_msg("bad alert %d accepted or refused without a reason", k);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_round_trip),
        cmocka_unit_test(test_usage_unpack_table),
        cmocka_unit_test(test_usage_unpack_details),
        cmocka_unit_test(test_sample_round_trip),
        cmocka_unit_test(test_sample_unpack_table),
        cmocka_unit_test(test_stats_round_trip),
        cmocka_unit_test(test_stats_unpack_table),
        cmocka_unit_test(test_pack_span),
        cmocka_unit_test(test_flush_round_trip),
        cmocka_unit_test(test_flush_unpack_table),
        cmocka_unit_test(test_alert_round_trip),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("msg", tests, NULL, NULL);
}

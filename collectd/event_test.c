/* event_test: table-driven tests of JSON and msgpack usage events. Each row
 * is a JSON line; unless marked json_only it also runs as msgpack, converted
 * by this test (integers stay integers, other numbers become doubles), so
 * both decoders answer the same table. Run one row: event_test 'openai_*'. */
#include "event.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* rows set a few expectations over "do not check" defaults */
#pragma GCC diagnostic ignored "-Woverride-init"

#include "mbuf.h"
#include "xalloc.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define NONE ((int64_t)-7) /* "do not check" */

typedef struct {
    const char *id;
    const char *in;
    reason_t res;
    bool json_only;
    /* checked when res is REASON_NONE; NONE skips a field */
    int64_t in_t, cr, cw, cw1, out_t, rs;
    const char *provider, *model, *operation, *user, *status;
    int64_t latency_us, ttft_us, cost_nusd, ts, http_status;
    int ntags;
    unsigned tags_dropped;
} case_t;

#define TOK(a, b, c, d, e, f) .in_t = a, .cr = b, .cw = c, .cw1 = d, .out_t = e, .rs = f
#define OK(id_, s, ...) { .id = id_, .in = s, .res = REASON_NONE, .latency_us = NONE, .ttft_us = NONE, \
                          .cost_nusd = NONE, .ts = NONE, .http_status = NONE, .ntags = -1, __VA_ARGS__ }
#define BAD(id_, s, r) { .id = id_, .in = s, .res = r }
#define BADJ(id_, s, r) { .id = id_, .in = s, .res = r, .json_only = true }
#define PM "\"provider\":\"openai\",\"model\":\"gpt-4o\""

#define A64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
static case_t cases[] = {
    /* top-level fields in their normalised meaning */
    OK("top_level", "{" PM ",\"input_tokens\":1000,\"cache_read_tokens\":200,\"output_tokens\":300,\"reasoning_tokens\":100}",
       TOK(1000, 200, 0, 0, 300, 100), .provider = "openai", .model = "gpt-4o", .operation = "chat", .status = "ok"),
    OK("all_buckets", "{" PM ",\"input_tokens\":1000,\"cache_read_tokens\":100,\"cache_write_tokens\":200,\"cache_write_1h_tokens\":300,\"output_tokens\":50,\"reasoning_tokens\":50}",
       TOK(1000, 100, 200, 300, 50, 50)),
    OK("no_tokens", "{" PM "}", TOK(0, 0, 0, 0, 0, 0)),
    OK("aliases_openai_names", "{" PM ",\"prompt_tokens\":10,\"completion_tokens\":20,\"cached_tokens\":5}", TOK(10, 5, 0, 0, 20, 0)),
    OK("aliases_otel", "{\"gen_ai.system\":\"openai\",\"gen_ai.request.model\":\"gpt-4o\",\"gen_ai.operation.name\":\"embeddings\",\"gen_ai.usage.input_tokens\":7,\"gen_ai.usage.output_tokens\":0}",
       TOK(7, 0, 0, 0, 0, 0), .provider = "openai", .model = "gpt-4o", .operation = "embeddings"),
    OK("alias_priority_model", "{\"provider\":\"openai\",\"gen_ai.request.model\":\"req\",\"gen_ai.response.model\":\"resp\",\"model\":\"m\"}", .model = "m"),
    OK("alias_priority_response_over_request", "{\"provider\":\"openai\",\"gen_ai.request.model\":\"req\",\"gen_ai.response.model\":\"resp\"}", .model = "resp"),
    OK("alias_priority_provider", "{\"gen_ai.system\":\"old\",\"gen_ai.provider.name\":\"new\",\"model\":\"m\"}", .provider = "new"),
    OK("user_aliases", "{" PM ",\"user_id\":\"u9\",\"api_key_id\":\"k\",\"feature\":\"f\",\"op\":\"rerank\"}", .user = "u9", .operation = "rerank"),
    OK("numeric_user_id", "{" PM ",\"user\":12345}", .user = "12345"),
    OK("unknown_fields_ignored", "{" PM ",\"foo\":{\"bar\":[1,2,{\"x\":null}]},\"baz\":true}", TOK(0, 0, 0, 0, 0, 0)),
    OK("escaped_strings", "{\"provider\":\"open\\u0061i\",\"model\":\"gpt\\u002d4o\",\"user\":\"a\\\"b\"}", .provider = "openai", .model = "gpt-4o", .user = "a\"b"),
    OK("exponent_tokens", "{" PM ",\"input_tokens\":1e3,\"output_tokens\":2.0}", TOK(1000, 0, 0, 0, 2, 0)),
    OK("null_counts_absent", "{" PM ",\"input_tokens\":null,\"output_tokens\":3}", TOK(0, 0, 0, 0, 3, 0)),
    OK("max_tokens", "{" PM ",\"input_tokens\":1099511627776}", TOK(1099511627776LL, 0, 0, 0, 0, 0)),

    /* provider usage objects, each in its provider's meaning */
    OK("openai_chat_usage", "{" PM ",\"usage\":{\"prompt_tokens\":2000,\"completion_tokens\":900,\"total_tokens\":2900,"
       "\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":600}}}",
       TOK(2000, 1024, 0, 0, 900, 600)),
    OK("openai_responses_usage", "{" PM ",\"usage\":{\"input_tokens\":500,\"output_tokens\":80,"
       "\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens_details\":{\"reasoning_tokens\":30}}}",
       TOK(500, 100, 0, 0, 80, 30)),
    OK("deepseek_cache_hit", "{\"provider\":\"deepseek\",\"model\":\"deepseek-chat\",\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":10,"
       "\"prompt_cache_hit_tokens\":60,\"prompt_cache_miss_tokens\":40}}", TOK(100, 60, 0, 0, 10, 0)),
    OK("anthropic_usage", "{\"provider\":\"anthropic\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":50,\"output_tokens\":400,"
       "\"cache_read_input_tokens\":3000,\"cache_creation_input_tokens\":1200}}", TOK(4250, 3000, 1200, 0, 400, 0)),
    OK("anthropic_usage_5m_1h", "{\"provider\":\"anthropic\",\"model\":\"claude-opus-4-1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":20,"
       "\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":700,\"cache_creation\":{\"ephemeral_5m_input_tokens\":300,\"ephemeral_1h_input_tokens\":400}}}",
       TOK(810, 100, 300, 400, 20, 0)),
    OK("anthropic_usage_no_cache", "{\"provider\":\"anthropic\",\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"output_tokens\":20}}", TOK(10, 0, 0, 0, 20, 0)),
    BAD("anthropic_cache_creation_contradicts", "{\"provider\":\"anthropic\",\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"output_tokens\":20,"
        "\"cache_creation_input_tokens\":701,\"cache_creation\":{\"ephemeral_5m_input_tokens\":300,\"ephemeral_1h_input_tokens\":400}}}", REASON_BAD_TOKENS),
    OK("gemini_usage", "{\"provider\":\"gcp.gemini\",\"model\":\"gemini-2.5-pro\",\"usage\":{\"promptTokenCount\":1000,\"candidatesTokenCount\":200,"
       "\"cachedContentTokenCount\":400,\"thoughtsTokenCount\":300,\"totalTokenCount\":1500}}", TOK(1000, 400, 0, 0, 500, 300)),
    OK("gemini_usage_snake", "{\"provider\":\"gemini\",\"model\":\"gemini-2.5-flash\",\"usage\":{\"prompt_token_count\":10,\"candidates_token_count\":2,"
       "\"thoughts_token_count\":3,\"tool_use_prompt_token_count\":5}}", TOK(15, 0, 0, 0, 5, 3)),
    OK("usage_and_top_level_agree", "{" PM ",\"input_tokens\":2000,\"usage\":{\"prompt_tokens\":2000,\"completion_tokens\":5}}", TOK(2000, 0, 0, 0, 5, 0)),
    BAD("usage_and_top_level_disagree", "{" PM ",\"input_tokens\":1999,\"usage\":{\"prompt_tokens\":2000,\"completion_tokens\":5}}", REASON_BAD_TOKENS),
    OK("usage_empty", "{" PM ",\"usage\":{}}", TOK(0, 0, 0, 0, 0, 0)),
    BAD("usage_not_object", "{" PM ",\"usage\":[1]}", REASON_BAD_FIELD),
    BAD("usage_negative", "{" PM ",\"usage\":{\"prompt_tokens\":-1}}", REASON_BAD_VALUE),
    BAD("usage_duplicate", "{" PM ",\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2}}", REASON_BAD_FIELD),

    /* contradictions and bounds */
    BAD("cache_over_input", "{" PM ",\"input_tokens\":10,\"cache_read_tokens\":11}", REASON_BAD_TOKENS),
    BAD("cache_parts_over_input", "{" PM ",\"input_tokens\":10,\"cache_read_tokens\":5,\"cache_write_tokens\":6}", REASON_BAD_TOKENS),
    BAD("reasoning_over_output", "{" PM ",\"output_tokens\":10,\"reasoning_tokens\":11}", REASON_BAD_TOKENS),
    BAD("negative_tokens", "{" PM ",\"input_tokens\":-5}", REASON_BAD_VALUE),
    BAD("fractional_tokens", "{" PM ",\"input_tokens\":1.5}", REASON_BAD_VALUE),
    BAD("tokens_beyond_2_40", "{" PM ",\"input_tokens\":1099511627777}", REASON_TOKEN_OVERFLOW),
    BADJ("tokens_huge_exponent", "{" PM ",\"input_tokens\":1e400}", REASON_TOKEN_OVERFLOW),
    BADJ("tokens_u64_max", "{" PM ",\"output_tokens\":18446744073709551615}", REASON_TOKEN_OVERFLOW),
    BAD("tokens_string", "{" PM ",\"input_tokens\":\"100\"}", REASON_BAD_FIELD),
    BAD("tokens_bool", "{" PM ",\"input_tokens\":true}", REASON_BAD_FIELD),

    /* required and typed fields */
    BAD("missing_provider", "{\"model\":\"m\"}", REASON_MISSING_FIELD),
    BAD("missing_model", "{\"provider\":\"p\"}", REASON_MISSING_FIELD),
    BAD("empty_model", "{\"provider\":\"p\",\"model\":\"\"}", REASON_MISSING_FIELD),
    BAD("null_model", "{\"provider\":\"p\",\"model\":null}", REASON_MISSING_FIELD),
    BAD("provider_number", "{\"provider\":5,\"model\":\"m\"}", REASON_BAD_FIELD),
    BAD("provider_too_long", "{\"provider\":\"" A64 A64 A64 A64 "a\",\"model\":\"m\"}", REASON_BAD_FIELD),
    OK("provider_longest", "{\"provider\":\"" A64 A64 A64 A64 "\",\"model\":\"m\"}", .model = "m"),
    BAD("duplicate_key", "{" PM ",\"model\":\"other\"}", REASON_BAD_FIELD),
    BAD("fractional_user_id", "{" PM ",\"user\":1.5}", REASON_BAD_FIELD),
    BADJ("nul_in_user", "{" PM ",\"user\":\"a\\u0000b\"}", REASON_BAD_FIELD),
    OK("empty_user_absent", "{" PM ",\"user\":\"\"}", .user = NULL),

    /* status */
    OK("status_error", "{" PM ",\"status\":\"error\"}", .status = "error"),
    OK("status_from_http", "{" PM ",\"http_status\":503}", .status = "error", .http_status = 503),
    OK("status_from_error_type", "{" PM ",\"error_type\":\"timeout\"}", .status = "error"),
    OK("status_ok_despite_http", "{" PM ",\"status\":\"ok\",\"http_status\":429}", .status = "ok", .http_status = 429),
    BAD("status_unknown", "{" PM ",\"status\":\"failed\"}", REASON_BAD_FIELD),
    BAD("http_status_out_of_range", "{" PM ",\"http_status\":42}", REASON_BAD_FIELD),
    BAD("retries_negative", "{" PM ",\"retries\":-1}", REASON_BAD_FIELD),

    /* times and money */
    OK("latency_fraction", "{" PM ",\"latency_ms\":1250.5,\"ttft_ms\":80}", .latency_us = 1250500, .ttft_us = 80000),
    OK("duration_alias", "{" PM ",\"duration_ms\":7}", .latency_us = 7000),
    OK("latency_rounds_half_even", "{" PM ",\"latency_ms\":0.0005}", .latency_us = 0, .json_only = true),
    BAD("latency_negative", "{" PM ",\"latency_ms\":-1}", REASON_BAD_VALUE),
    BAD("latency_string", "{" PM ",\"latency_ms\":\"fast\"}", REASON_BAD_FIELD),
    OK("cost_reported", "{" PM ",\"cost_usd\":0.0123}", .cost_nusd = 12300000),
    OK("cost_half_even_down", "{" PM ",\"cost_usd\":0.0000000025}", .cost_nusd = 2, .json_only = true),
    OK("cost_half_even_up", "{" PM ",\"cost_usd\":0.0000000035}", .cost_nusd = 4, .json_only = true),
    BAD("cost_negative", "{" PM ",\"cost_usd\":-0.01}", REASON_BAD_VALUE),
    BADJ("cost_overflow", "{" PM ",\"cost_usd\":1e12}", REASON_BAD_VALUE),
    OK("ts_seconds_fraction", "{" PM ",\"ts\":1700000000.25}", .ts = 1700000000250000000LL),
    OK("ts_rfc3339", "{" PM ",\"ts\":\"2026-11-22T14:54:09.5+01:00\"}", .ts = 1795355649500000000LL),
    BAD("ts_garbage", "{" PM ",\"ts\":\"yesterday\"}", REASON_BAD_TIMESTAMP),
    BAD("ts_negative", "{" PM ",\"ts\":-1}", REASON_BAD_TIMESTAMP),
    BAD("ts_zero", "{" PM ",\"ts\":0}", REASON_BAD_TIMESTAMP),
    BAD("ts_milliseconds_by_mistake", "{" PM ",\"ts\":1700000000000000}", REASON_BAD_TIMESTAMP),

    /* tags */
    OK("tags_kept", "{" PM ",\"tags\":{\"env\":\"prod\",\"n\":5,\"b\":true}}", .ntags = 3),
    OK("tags_bad_values_dropped", "{" PM ",\"tags\":{\"env\":\"prod\",\"o\":{\"x\":1},\"a\":[1],\"z\":null}}", .ntags = 1, .tags_dropped = 3),
    OK("tags_too_many_dropped", "{" PM ",\"tags\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\",\"e\":\"5\"}}", .ntags = 4, .tags_dropped = 1),
    OK("tags_too_long_dropped", "{" PM ",\"tags\":{\"k\":\"0123456789abcdefg\"}}", .ntags = 0, .tags_dropped = 1),
    BAD("tags_not_object", "{" PM ",\"tags\":\"env=prod\"}", REASON_BAD_FIELD),

    /* not an event */
    BADJ("not_json", "{provider:openai}", REASON_BAD_JSON),
    BADJ("truncated", "{" PM ",\"input_tokens\":", REASON_BAD_JSON),
    BADJ("trailing_garbage", "{" PM "} x", REASON_BAD_JSON),
    BADJ("array_not_object", "[1,2]", REASON_BAD_JSON),
    BADJ("deep_nesting", "{" PM ",\"x\":[[[[[[[[[[[[]]]]]]]]]]]]}", REASON_BAD_JSON),
    BADJ("invalid_utf8", "{\"provider\":\"\xff\",\"model\":\"m\"}", REASON_BAD_UTF8),
    BADJ("nan_literal", "{" PM ",\"latency_ms\":NaN}", REASON_BAD_JSON),
};

static const event_limits_t LIM = { .max_tags = 4, .max_tag_len = 16 };

/* ---- JSON → msgpack, for the msgpack side of each row -------------------- */

static int to_msgpack(const char *buf, const jtok_t *t, int i, msgpack_packer *pk, char *tmp)
{
    const jtok_t *k = &t[i];
    switch (k->type) {
    case JTOK_OBJECT: {
        msgpack_pack_map(pk, k->size);
        int j = i + 1;
        for (uint32_t n = 0; n < k->size; n++) {
            to_msgpack(buf, t, j, pk, tmp);
            j = to_msgpack(buf, t, j + 1, pk, tmp);
        }
        return (int)k->next;
    }
    case JTOK_ARRAY: {
        msgpack_pack_array(pk, k->size);
        int j = i + 1;
        for (uint32_t n = 0; n < k->size; n++)
            j = to_msgpack(buf, t, j, pk, tmp);
        return (int)k->next;
    }
    case JTOK_STRING: {
        ssize_t n = jtok_str_decode(buf, k, tmp, 4096);
        msgpack_pack_str(pk, (size_t)n);
        msgpack_pack_str_body(pk, tmp, (size_t)n);
        return i + 1;
    }
    case JTOK_NUMBER: {
        char num[64];
        snprintf(num, sizeof num, "%.*s", (int)k->len, buf + k->start);
        char *end;
        long long v = strtoll(num, &end, 10);
        if (!*end)
            msgpack_pack_int64(pk, v);
        else
            msgpack_pack_double(pk, strtod(num, NULL));
        return i + 1;
    }
    case JTOK_TRUE:
        msgpack_pack_true(pk);
        return i + 1;
    case JTOK_FALSE:
        msgpack_pack_false(pk);
        return i + 1;
    case JTOK_NULL:
        msgpack_pack_nil(pk);
        return i + 1;
    }
    return i + 1;
}

typedef struct {
    jtok_t *toks;
    scratch_t sc;
} fx_t;

static fx_t fx;

static int group_setup(void **state)
{
    (void)state;
    fx.toks = xmalloc(EVENT_MAX_TOKENS * sizeof *fx.toks);
    fx.sc.cap = 65536;
    fx.sc.p = xmalloc(fx.sc.cap);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(fx.toks);
    free(fx.sc.p);
    return 0;
}

static void expect_str(const char *field, span_t got, const char *want)
{
    if (!want)
        return;
    if (!got.p)
        fail_msg("%s: absent, want '%s'", field, want);
    if (!span_eq_cstr(got, want))
        fail_msg("%s: got '%.*s', want '%s'", field, (int)got.len, got.p, want);
}

static void check(const case_t *c, reason_t r, const event_t *ev, const char *which)
{
    if (r != c->res)
        fail_msg("%s %s: reason %s, want %s", c->id, which, reason_name(r), reason_name(c->res));
    if (r != REASON_NONE)
        return;
    const msg_usage_t *u = &ev->u;
    if (c->in_t || c->cr || c->cw || c->cw1 || c->out_t || c->rs || strstr(c->id, "tokens")) {
        assert_int_equal(u->input_tokens, c->in_t);
        assert_int_equal(u->cache_read_tokens, c->cr);
        assert_int_equal(u->cache_write_tokens, c->cw);
        assert_int_equal(u->cache_write_1h_tokens, c->cw1);
        assert_int_equal(u->output_tokens, c->out_t);
        assert_int_equal(u->reasoning_tokens, c->rs);
    }
    expect_str("provider", u->provider, c->provider);
    expect_str("model", u->model, c->model);
    expect_str("operation", u->operation, c->operation);
    expect_str("user", u->user, c->user);
    expect_str("status", u->status, c->status);
    if (!strcmp(c->id, "empty_user_absent"))
        assert_null(u->user.p);
    if (c->latency_us != NONE)
        assert_int_equal(u->latency_us, c->latency_us);
    if (c->ttft_us != NONE)
        assert_int_equal(u->ttft_us, c->ttft_us);
    if (c->cost_nusd != NONE) {
        assert_true(ev->has_cost);
        assert_int_equal(u->cost_nusd, c->cost_nusd);
    } else {
        assert_false(ev->has_cost);
    }
    if (c->ts != NONE)
        assert_int_equal(u->ts, c->ts);
    if (c->http_status != NONE)
        assert_int_equal(u->http_status, c->http_status);
    if (c->ntags >= 0)
        assert_int_equal(u->ntags, c->ntags);
    assert_int_equal(ev->tags_dropped, c->tags_dropped);
    assert_int_equal(u->requests, 1);
}

static void test_case(void **state)
{
    const case_t *c = *state;
    fx_t *f = &fx;
    /* exact-size copy so ASan sees any read past the end */
    size_t len = strlen(c->in);
    char *line = xmalloc(len ? len : 1);
    memcpy(line, c->in, len);
    event_t ev;
    f->sc.len = 0;
    check(c, event_parse_json(line, len, &LIM, f->toks, &f->sc, &ev), &ev, "json");

    if (!c->json_only) {
        jtok_err_t je;
        int nt = jtok_parse(line, len, f->toks, EVENT_MAX_TOKENS, 64, &je);
        assert_true(nt > 0);
        mbuf_t mb = { 0 };
        msgpack_packer pk;
        mbuf_packer(&mb, &pk);
        char tmp[4096];
        to_msgpack(line, f->toks, 0, &pk, tmp);
        char *bin = xmalloc(mb.len);
        memcpy(bin, mb.data, mb.len);
        mpr_t r;
        mpr_init(&r, bin, mb.len);
        bool resync;
        f->sc.len = 0;
        check(c, event_parse_msgpack(&r, &LIM, &f->sc, &ev, &resync), &ev, "msgpack");
        assert_true(resync);
        assert_ptr_equal(r.p, r.end); /* the whole map was consumed */
        free(bin);
        mbuf_free(&mb);
    }
    free(line);
}

/* ---- msgpack-only cases -------------------------------------------------- */

static reason_t parse_bytes(const void *p, size_t n, event_t *ev, bool *resync, size_t *used)
{
    char *bin = xmalloc(n ? n : 1);
    memcpy(bin, p, n);
    mpr_t r;
    mpr_init(&r, bin, n);
    fx.sc.len = 0;
    reason_t res = event_parse_msgpack(&r, &LIM, &fx.sc, ev, resync);
    *used = (size_t)((const char *)r.p - bin);
    free(bin);
    return res;
}

static void test_msgpack_invalid_utf8(void **state)
{
    (void)state;
    /* {"provider": "\xff", "model": "m"} */
    static const unsigned char b[] = { 0x82, 0xa8, 'p', 'r', 'o', 'v', 'i', 'd', 'e', 'r', 0xa1, 0xff,
                                       0xa5, 'm', 'o', 'd', 'e', 'l', 0xa1, 'm' };
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(b, sizeof b, &ev, &resync, &used), REASON_BAD_UTF8);
}

static void test_msgpack_bin_provider(void **state)
{
    (void)state;
    static const unsigned char b[] = { 0x82, 0xa8, 'p', 'r', 'o', 'v', 'i', 'd', 'e', 'r', 0xc4, 1, 'x',
                                       0xa5, 'm', 'o', 'd', 'e', 'l', 0xa1, 'm' };
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(b, sizeof b, &ev, &resync, &used), REASON_BAD_FIELD);
    assert_true(resync);
    assert_int_equal(used, sizeof b);
}

static void test_msgpack_truncated_every_length(void **state)
{
    (void)state;
    mbuf_t mb = { 0 };
    msgpack_packer pk;
    mbuf_packer(&mb, &pk);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "provider", 8);
    msgpack_pack_str_with_body(&pk, "openai", 6);
    msgpack_pack_str_with_body(&pk, "model", 5);
    msgpack_pack_str_with_body(&pk, "gpt-4o", 6);
    msgpack_pack_str_with_body(&pk, "input_tokens", 12);
    msgpack_pack_uint64(&pk, 1ULL << 33);
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(mb.data, mb.len, &ev, &resync, &used), REASON_NONE);
    assert_int_equal(ev.u.input_tokens, 1ULL << 33);
    for (size_t n = 0; n < mb.len; n++) {
        reason_t r = parse_bytes(mb.data, n, &ev, &resync, &used);
        assert_int_equal(r, REASON_BAD_MSGPACK);
        assert_false(resync);
    }
    mbuf_free(&mb);
}

static void test_msgpack_hostile_sizes(void **state)
{
    (void)state;
    /* a map claiming 2^32-1 entries, an array claiming 2^32-1 elements */
    static const unsigned char m[] = { 0xdf, 0xff, 0xff, 0xff, 0xff };
    static const unsigned char a[] = { 0x81, 0xa4, 't', 'a', 'g', 's', 0xdd, 0xff, 0xff, 0xff, 0xff };
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(m, sizeof m, &ev, &resync, &used), REASON_BAD_MSGPACK);
    assert_int_equal(parse_bytes(a, sizeof a, &ev, &resync, &used), REASON_BAD_MSGPACK);
}

static void test_msgpack_non_string_key_ignored(void **state)
{
    (void)state;
    static const unsigned char b[] = { 0x83, 0x01, 0x02, 0xa8, 'p', 'r', 'o', 'v', 'i', 'd', 'e', 'r', 0xa1, 'p',
                                       0xa5, 'm', 'o', 'd', 'e', 'l', 0xa1, 'm' };
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(b, sizeof b, &ev, &resync, &used), REASON_NONE);
}

static void test_msgpack_float_values(void **state)
{
    (void)state;
    mbuf_t mb = { 0 };
    msgpack_packer pk;
    mbuf_packer(&mb, &pk);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "provider", 8);
    msgpack_pack_str_with_body(&pk, "p", 1);
    msgpack_pack_str_with_body(&pk, "model", 5);
    msgpack_pack_str_with_body(&pk, "m", 1);
    msgpack_pack_str_with_body(&pk, "latency_ms", 10);
    msgpack_pack_double(&pk, NAN);
    msgpack_pack_str_with_body(&pk, "input_tokens", 12);
    msgpack_pack_float(&pk, 100.0f);
    event_t ev;
    bool resync;
    size_t used;
    assert_int_equal(parse_bytes(mb.data, mb.len, &ev, &resync, &used), REASON_BAD_VALUE);
    mbuf_free(&mb);
}

static void test_dimension_names(void **state)
{
    (void)state;
    assert_int_equal(event_dimension(SPAN_LIT("provider")), DIM_PROVIDER);
    assert_int_equal(event_dimension(SPAN_LIT("gen_ai.system")), DIM_PROVIDER);
    assert_int_equal(event_dimension(SPAN_LIT("user_id")), DIM_USER);
    assert_int_equal(event_dimension(SPAN_LIT("customer_id")), DIM_ACCOUNT);
    assert_int_equal(event_dimension(SPAN_LIT("feature")), DIM_PROJECT);
    assert_int_equal(event_dimension(SPAN_LIT("correlation_id")), DIM_REQUEST_ID);
    assert_int_equal(event_dimension(SPAN_LIT("input_tokens")), -1);
    assert_int_equal(event_dimension(SPAN_LIT("type")), -1);
    assert_int_equal(event_dimension(SPAN_LIT("")), -1);
}

int main(int argc, char **argv)
{
    static const struct CMUnitTest extra[] = {
        cmocka_unit_test(test_msgpack_invalid_utf8),
        cmocka_unit_test(test_msgpack_bin_provider),
        cmocka_unit_test(test_msgpack_truncated_every_length),
        cmocka_unit_test(test_msgpack_hostile_sizes),
        cmocka_unit_test(test_msgpack_non_string_key_ignored),
        cmocka_unit_test(test_msgpack_float_values),
        cmocka_unit_test(test_dimension_names),
    };
    struct CMUnitTest tests[N(cases) + N(extra)];
    size_t n = 0;
    for (size_t i = 0; i < N(cases); i++)
        tests[n++] = (struct CMUnitTest){ .name = cases[i].id, .test_func = test_case,
                                          .initial_state = &cases[i] };
    for (size_t i = 0; i < N(extra); i++)
        tests[n++] = extra[i];
    if (argc == 2)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("event", tests, group_setup, group_teardown);
}

#include "wire.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void wire_event_init(wire_event_t *e)
{
    memset(e, 0, sizeof *e);
    e->input = e->cache_read = e->cache_write = e->cache_write_1h = e->output = e->reasoning = -1;
    e->retries = -1;
}

typedef struct {
    char *p;
    size_t cap, len;
    bool overflow;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(out_t *o, const char *s) { put(o, s, strlen(s)); }

static void put_json_str(out_t *o, const char *s)
{
    put(o, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            put(o, esc, 2);
        } else if (*p < 0x20) {
            int n = snprintf(esc, sizeof esc, "\\u%04x", *p);
            put(o, esc, (size_t)n);
        } else {
            put(o, (const char *)p, 1);
        }
    }
    put(o, "\"", 1);
}

static void json_field(out_t *o, bool *first, const char *k)
{
    puts_(o, *first ? "" : ",");
    *first = false;
    put_json_str(o, k);
    put(o, ":", 1);
}

static bool is_number(const char *s)
{
    /* cheap check that s is JSON number text; full checking is the collector's job */
    if (!*s)
        return false;
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789+-.eE", *p))
            return false;
    return true;
}

static void encode_json(const wire_event_t *e, out_t *o)
{
    bool first = true;
    char num[32];
    put(o, "{", 1);
    const struct {
        const char *k, *v;
    } strs[] = { { "provider", e->provider }, { "model", e->model }, { "operation", e->operation },
                 { "user", e->user },         { "account", e->account }, { "project", e->project },
                 { "status", e->status },     { "error_type", e->error_type },
                 { "request_id", e->request_id } };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (!strs[i].v)
            continue;
        json_field(o, &first, strs[i].k);
        put_json_str(o, strs[i].v);
    }
    const struct {
        const char *k;
        int64_t v;
    } toks[] = { { "input_tokens", e->input },
                 { "cache_read_tokens", e->cache_read },
                 { "cache_write_tokens", e->cache_write },
                 { "cache_write_1h_tokens", e->cache_write_1h },
                 { "output_tokens", e->output },
                 { "reasoning_tokens", e->reasoning } };
    for (size_t i = 0; i < sizeof toks / sizeof toks[0]; i++) {
        if (toks[i].v < 0)
            continue;
        json_field(o, &first, toks[i].k);
        snprintf(num, sizeof num, "%lld", (long long)toks[i].v);
        puts_(o, num);
    }
    const struct {
        const char *k, *v;
    } nums[] = { { "latency_ms", e->latency_ms }, { "ttft_ms", e->ttft_ms }, { "cost_usd", e->cost_usd } };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (!nums[i].v)
            continue;
        json_field(o, &first, nums[i].k);
        puts_(o, nums[i].v);
    }
    if (e->ts) {
        json_field(o, &first, "ts");
        if (is_number(e->ts))
            puts_(o, e->ts);
        else
            put_json_str(o, e->ts);
    }
    if (e->http_status) {
        json_field(o, &first, "http_status");
        snprintf(num, sizeof num, "%d", e->http_status);
        puts_(o, num);
    }
    if (e->retries >= 0) {
        json_field(o, &first, "retries");
        snprintf(num, sizeof num, "%d", e->retries);
        puts_(o, num);
    }
    if (e->usage) {
        json_field(o, &first, "usage");
        puts_(o, e->usage);
    }
    if (e->ntags) {
        json_field(o, &first, "tags");
        put(o, "{", 1);
        for (int i = 0; i < e->ntags; i++) {
            if (i)
                put(o, ",", 1);
            put_json_str(o, e->tag_k[i]);
            put(o, ":", 1);
            put_json_str(o, e->tag_v[i]);
        }
        put(o, "}", 1);
    }
    put(o, "}", 1);
}

static int out_write(void *data, const char *buf, size_t len)
{
    put(data, buf, len);
    return 0;
}

static void mp_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void mp_number(msgpack_packer *pk, const char *s)
{
    /* integers stay integers; anything else goes as a double */
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*end)
        msgpack_pack_int64(pk, v);
    else
        msgpack_pack_double(pk, strtod(s, NULL));
}

static void encode_msgpack(const wire_event_t *e, out_t *o)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, o, out_write);
    const char *sk[] = { "provider", "model", "operation", "user", "account", "project", "status",
                         "error_type", "request_id" };
    const char *sv[] = { e->provider, e->model, e->operation, e->user, e->account, e->project,
                         e->status, e->error_type, e->request_id };
    const char *tk[] = { "input_tokens", "cache_read_tokens", "cache_write_tokens",
                         "cache_write_1h_tokens", "output_tokens", "reasoning_tokens" };
    const int64_t tv[] = { e->input, e->cache_read, e->cache_write, e->cache_write_1h, e->output,
                           e->reasoning };
    const char *nk[] = { "latency_ms", "ttft_ms", "cost_usd" };
    const char *nv[] = { e->latency_ms, e->ttft_ms, e->cost_usd };
    size_t n = 0;
    for (size_t i = 0; i < 9; i++)
        n += sv[i] != NULL;
    for (size_t i = 0; i < 6; i++)
        n += tv[i] >= 0;
    for (size_t i = 0; i < 3; i++)
        n += nv[i] != NULL;
    n += (e->ts != NULL) + (e->http_status != 0) + (e->retries >= 0) + (e->ntags > 0);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < 9; i++) {
        if (!sv[i])
            continue;
        mp_str(&pk, sk[i]);
        mp_str(&pk, sv[i]);
    }
    for (size_t i = 0; i < 6; i++) {
        if (tv[i] < 0)
            continue;
        mp_str(&pk, tk[i]);
        msgpack_pack_uint64(&pk, (uint64_t)tv[i]);
    }
    for (size_t i = 0; i < 3; i++) {
        if (!nv[i])
            continue;
        mp_str(&pk, nk[i]);
        mp_number(&pk, nv[i]);
    }
    if (e->ts) {
        mp_str(&pk, "ts");
        if (is_number(e->ts))
            mp_number(&pk, e->ts);
        else
            mp_str(&pk, e->ts);
    }
    if (e->http_status) {
        mp_str(&pk, "http_status");
        msgpack_pack_int(&pk, e->http_status);
    }
    if (e->retries >= 0) {
        mp_str(&pk, "retries");
        msgpack_pack_int(&pk, e->retries);
    }
    if (e->ntags) {
        mp_str(&pk, "tags");
        msgpack_pack_map(&pk, (size_t)e->ntags);
        for (int i = 0; i < e->ntags; i++) {
            mp_str(&pk, e->tag_k[i]);
            mp_str(&pk, e->tag_v[i]);
        }
    }
}

static void statsd_tags(out_t *o, const wire_event_t *e)
{
    const char *k[] = { "provider", "model", "operation", "user", "account", "project" };
    const char *v[] = { e->provider, e->model, e->operation, e->user, e->account, e->project };
    bool first = true;
    put(o, "|#", 2);
    for (int i = 0; i < 6; i++) {
        if (!v[i])
            continue;
        if (!first)
            put(o, ",", 1);
        first = false;
        puts_(o, k[i]);
        put(o, ":", 1);
        puts_(o, v[i]);
    }
    for (int i = 0; i < e->ntags; i++) {
        put(o, ",", 1);
        puts_(o, e->tag_k[i]);
        put(o, ":", 1);
        puts_(o, e->tag_v[i]);
    }
}

static void statsd_line(out_t *o, const wire_event_t *e, bool *first, const char *name,
                        const char *value, const char *type, const char *extra)
{
    if (!*first)
        put(o, "\n", 1);
    *first = false;
    puts_(o, name);
    put(o, ":", 1);
    puts_(o, value);
    put(o, "|", 1);
    puts_(o, type);
    statsd_tags(o, e);
    if (extra)
        puts_(o, extra);
}

/* DogStatsD: a token counter per disjoint bucket, a request counter and the
 * latency timers. */
static void encode_statsd(const wire_event_t *e, out_t *o)
{
    int64_t in = e->input > 0 ? e->input : 0, cr = e->cache_read > 0 ? e->cache_read : 0;
    int64_t cw = e->cache_write > 0 ? e->cache_write : 0;
    int64_t cw1 = e->cache_write_1h > 0 ? e->cache_write_1h : 0;
    int64_t out = e->output > 0 ? e->output : 0, rs = e->reasoning > 0 ? e->reasoning : 0;
    const struct {
        const char *type;
        int64_t n;
    } b[] = { { "input", in - cr - cw - cw1 }, { "cache_read", cr }, { "cache_write", cw },
              { "cache_write_1h", cw1 },       { "output", out - rs }, { "reasoning", rs } };
    bool first = true;
    char num[32], extra[64];
    for (size_t i = 0; i < 6; i++) {
        if (b[i].n <= 0)
            continue;
        snprintf(num, sizeof num, "%lld", (long long)b[i].n);
        snprintf(extra, sizeof extra, ",type:%s", b[i].type);
        statsd_line(o, e, &first, "llm.tokens", num, "c", extra);
    }
    snprintf(extra, sizeof extra, ",status:%s", e->status ? e->status : "ok");
    statsd_line(o, e, &first, "llm.requests", "1", "c", extra);
    if (e->latency_ms)
        statsd_line(o, e, &first, "llm.latency", e->latency_ms, "ms", NULL);
    if (e->ttft_ms)
        statsd_line(o, e, &first, "llm.ttft", e->ttft_ms, "ms", NULL);
}

int wire_encode(const wire_event_t *e, wire_format_t f, char *buf, size_t cap, size_t *len)
{
    out_t o = { buf, cap, *len, false };
    if (f == WIRE_JSON)
        encode_json(e, &o);
    else if (f == WIRE_MSGPACK)
        encode_msgpack(e, &o);
    else
        encode_statsd(e, &o);
    if (o.overflow)
        return -1;
    *len = o.len;
    return 0;
}

#include "msg.h"

#include "mpw.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

void msg_pack_span(msgpack_packer *pk, span_t s)
{
    msgpack_pack_str(pk, s.len);
    msgpack_pack_str_body(pk, s.p, s.len);
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    size_t n = strlen(k);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, k, n);
}

static void pack_tags(msgpack_packer *pk, const msg_tag_t *tags, size_t n)
{
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < n; i++) {
        msg_pack_span(pk, tags[i].key);
        msg_pack_span(pk, tags[i].value);
    }
}

/* ---- unpack helpers ----------------------------------------------------- */

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

static int get_str(const msgpack_object *v, span_t *out, const char *name, char *err, size_t cap)
{
    if (v->type == MSGPACK_OBJECT_NIL) {
        *out = SPAN_NULL;
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > MSG_MAX_STR) {
        snprintf(err, cap, "%s: not a string of at most %d bytes", name, MSG_MAX_STR);
        return -1;
    }
    /* a zero-length msgpack str may carry a NULL pointer; keep "present" */
    *out = span_make(v->via.str.size ? v->via.str.ptr : "", v->via.str.size);
    return 0;
}

static int get_i64(const msgpack_object *v, int64_t *out, int64_t lo, int64_t hi, const char *name,
                   char *err, size_t cap)
{
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > (uint64_t)INT64_MAX)
            goto bad;
        x = (int64_t)v->via.u64;
    } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        x = v->via.i64;
    } else {
        goto bad;
    }
    if (x < lo || x > hi)
        goto bad;
    *out = x;
    return 0;
bad:
    snprintf(err, cap, "%s: not an integer in [%lld, %lld]", name, (long long)lo, (long long)hi);
    return -1;
}

static int get_u64(const msgpack_object *v, uint64_t *out, uint64_t hi, const char *name, char *err,
                   size_t cap)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > hi) {
        snprintf(err, cap, "%s: not an integer in [0, %llu]", name, (unsigned long long)hi);
        return -1;
    }
    *out = v->via.u64;
    return 0;
}

static int get_f64(const msgpack_object *v, double *out, const char *name, char *err, size_t cap)
{
    double x;
    if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32)
        x = v->via.f64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        x = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        x = (double)v->via.i64;
    else
        goto bad;
    if (!isfinite(x))
        goto bad;
    *out = x;
    return 0;
bad:
    snprintf(err, cap, "%s: not a finite number", name);
    return -1;
}

static int get_tags(const msgpack_object *v, msg_tag_t *tags, size_t *n, size_t max,
                    const char *name, char *err, size_t cap)
{
    if (v->type == MSGPACK_OBJECT_NIL) {
        *n = 0;
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_MAP || v->via.map.size > max) {
        snprintf(err, cap, "%s: not a map of at most %zu strings", name, max);
        return -1;
    }
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        if (get_str(&kv->key, &tags[i].key, name, err, cap) < 0 ||
            get_str(&kv->val, &tags[i].value, name, err, cap) < 0 || !tags[i].key.p ||
            !tags[i].value.p) {
            snprintf(err, cap, "%s: entries must be strings", name);
            return -1;
        }
    }
    *n = v->via.map.size;
    return 0;
}

/* ---- usage -------------------------------------------------------------- */

void msg_usage_init(msg_usage_t *u)
{
    /* everything but the tag array, which ntags = 0 makes unread */
    memset(u, 0, offsetof(msg_usage_t, tags));
    u->latency_us = -1;
    u->ttft_us = -1;
    u->retries = -1;
    u->requests = 1;
}

/* Worst-case bytes of a record, for the writer's one reservation. */
static size_t usage_bound(const msg_usage_t *u)
{
    size_t n = 512; /* keys and numbers */
    const span_t s[] = { u->provider, u->model, u->operation, u->user, u->account, u->project,
                         u->status, u->error_type, u->request_id, u->cost_source,
                         u->price_version, u->key_id };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        n += s[i].len + MPW_STR_HDR;
    for (size_t i = 0; i < u->ntags; i++)
        n += u->tags[i].key.len + u->tags[i].value.len + 2 * MPW_STR_HDR;
    return n;
}

#define PUT_STR(p, key, v)                                                                      \
    do {                                                                                        \
        if ((v).p) {                                                                            \
            p = MPW_KEY(p, key);                                                                \
            p = mpw_str(p, (v).p, (v).len);                                                     \
        }                                                                                       \
    } while (0)

void msg_usage_encode(mbuf_t *b, const msg_usage_t *u)
{
    mbuf_reserve(b, usage_bound(u));
    char *p = b->data + b->len;
    /* counts that are zero, requests = 1 and signed = false are left out:
     * readers take an absent count as 0, absent requests as 1, absent signed
     * as false, and a record is a third smaller on the bus and in spools */
    uint32_t n = 3; /* ts, recv_ts, cost_nusd */
    n += (u->input_tokens != 0) + (u->cache_read_tokens != 0) + (u->cache_write_tokens != 0) +
         (u->cache_write_1h_tokens != 0) + (u->output_tokens != 0) + (u->reasoning_tokens != 0) +
         (u->requests != 1) + u->is_signed;
    n += (u->provider.p != NULL) + (u->model.p != NULL) + (u->operation.p != NULL) +
         (u->user.p != NULL) + (u->account.p != NULL) + (u->project.p != NULL) +
         (u->status.p != NULL) + (u->error_type.p != NULL) + (u->request_id.p != NULL) +
         (u->cost_source.p != NULL) + (u->price_version.p != NULL) + (u->key_id.p != NULL);
    n += (u->latency_us >= 0) + (u->ttft_us >= 0) + (u->http_status != 0) + (u->retries >= 0) +
         (u->ntags > 0);
    p = mpw_map(p, n);
    PUT_STR(p, "provider", u->provider);
    PUT_STR(p, "model", u->model);
    PUT_STR(p, "operation", u->operation);
    PUT_STR(p, "user", u->user);
    PUT_STR(p, "account", u->account);
    PUT_STR(p, "project", u->project);
    PUT_STR(p, "status", u->status);
    PUT_STR(p, "error_type", u->error_type);
    PUT_STR(p, "request_id", u->request_id);
    PUT_STR(p, "cost_source", u->cost_source);
    PUT_STR(p, "price_version", u->price_version);
    PUT_STR(p, "key_id", u->key_id);
#define PUT_COUNT(p, key, v, skip)                                                              \
    do {                                                                                        \
        if ((v) != (skip)) {                                                                    \
            p = MPW_KEY(p, key);                                                                \
            p = mpw_uint(p, v);                                                                 \
        }                                                                                       \
    } while (0)
    PUT_COUNT(p, "input_tokens", u->input_tokens, 0);
    PUT_COUNT(p, "cache_read_tokens", u->cache_read_tokens, 0);
    PUT_COUNT(p, "cache_write_tokens", u->cache_write_tokens, 0);
    PUT_COUNT(p, "cache_write_1h_tokens", u->cache_write_1h_tokens, 0);
    PUT_COUNT(p, "output_tokens", u->output_tokens, 0);
    PUT_COUNT(p, "reasoning_tokens", u->reasoning_tokens, 0);
    PUT_COUNT(p, "requests", u->requests, 1);
#undef PUT_COUNT
    p = MPW_KEY(p, "ts");
    p = mpw_int(p, u->ts);
    p = MPW_KEY(p, "recv_ts");
    p = mpw_int(p, u->recv_ts);
    p = MPW_KEY(p, "cost_nusd");
    p = mpw_int(p, u->cost_nusd);
    if (u->is_signed) {
        p = MPW_KEY(p, "signed");
        p = mpw_bool(p, true);
    }
    if (u->latency_us >= 0) {
        p = MPW_KEY(p, "latency_us");
        p = mpw_int(p, u->latency_us);
    }
    if (u->ttft_us >= 0) {
        p = MPW_KEY(p, "ttft_us");
        p = mpw_int(p, u->ttft_us);
    }
    if (u->http_status != 0) {
        p = MPW_KEY(p, "http_status");
        p = mpw_int(p, u->http_status);
    }
    if (u->retries >= 0) {
        p = MPW_KEY(p, "retries");
        p = mpw_int(p, u->retries);
    }
    if (u->ntags > 0) {
        p = MPW_KEY(p, "tags");
        p = mpw_map(p, (uint32_t)u->ntags);
        for (size_t i = 0; i < u->ntags; i++) {
            p = mpw_str(p, u->tags[i].key.p, u->tags[i].key.len);
            p = mpw_str(p, u->tags[i].value.p, u->tags[i].value.len);
        }
    }
    b->len = (size_t)(p - b->data);
}

/* The packer form writes the same bytes through the packer's callback. */
static void through_packer(msgpack_packer *pk, const mbuf_t *b)
{
    pk->callback(pk->data, b->data, b->len);
}

void msg_usage_pack(msgpack_packer *pk, const msg_usage_t *u)
{
    mbuf_t b = { 0 };
    msg_usage_encode(&b, u);
    through_packer(pk, &b);
    mbuf_free(&b);
}

int msg_usage_unpack(const msgpack_object *o, msg_usage_t *u, char *err, size_t cap)
{
    msg_usage_init(u);
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "usage record is not a map");
        return -1;
    }
    bool have_ts = false, have_recv = false, have_cost = false;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        int64_t x;
        int rc = 0;
        if (k->type != MSGPACK_OBJECT_STR) {
            snprintf(err, cap, "usage record key is not a string");
            return -1;
        }
#define STR(name, field) else if (key_is(k, name)) rc = get_str(v, &u->field, name, err, cap)
#define TOK(name, field) else if (key_is(k, name)) rc = get_u64(v, &u->field, MSG_MAX_TOKENS, name, err, cap)
        if (0) {
        }
        STR("provider", provider);
        STR("model", model);
        STR("operation", operation);
        STR("user", user);
        STR("account", account);
        STR("project", project);
        STR("status", status);
        STR("error_type", error_type);
        STR("request_id", request_id);
        STR("cost_source", cost_source);
        STR("price_version", price_version);
        STR("key_id", key_id);
        TOK("input_tokens", input_tokens);
        TOK("cache_read_tokens", cache_read_tokens);
        TOK("cache_write_tokens", cache_write_tokens);
        TOK("cache_write_1h_tokens", cache_write_1h_tokens);
        TOK("output_tokens", output_tokens);
        TOK("reasoning_tokens", reasoning_tokens);
        TOK("requests", requests);
#undef STR
#undef TOK
        else if (key_is(k, "ts")) {
            rc = get_i64(v, &u->ts, 0, INT64_MAX, "ts", err, cap);
            have_ts = true;
        } else if (key_is(k, "recv_ts")) {
            rc = get_i64(v, &u->recv_ts, 0, INT64_MAX, "recv_ts", err, cap);
            have_recv = true;
        } else if (key_is(k, "cost_nusd")) {
            rc = get_i64(v, &u->cost_nusd, 0, INT64_MAX, "cost_nusd", err, cap);
            have_cost = true;
        } else if (key_is(k, "latency_us")) {
            rc = get_i64(v, &u->latency_us, 0, INT64_MAX, "latency_us", err, cap);
        } else if (key_is(k, "ttft_us")) {
            rc = get_i64(v, &u->ttft_us, 0, INT64_MAX, "ttft_us", err, cap);
        } else if (key_is(k, "http_status")) {
            rc = get_i64(v, &x, 0, 999, "http_status", err, cap);
            u->http_status = (int32_t)x;
        } else if (key_is(k, "retries")) {
            rc = get_i64(v, &x, 0, INT32_MAX, "retries", err, cap);
            u->retries = (int32_t)x;
        } else if (key_is(k, "signed")) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                snprintf(err, cap, "signed: not a boolean");
                return -1;
            }
            u->is_signed = v->via.boolean;
        } else if (key_is(k, "tags")) {
            rc = get_tags(v, u->tags, &u->ntags, MSG_MAX_TAGS, "tags", err, cap);
        }
        if (rc < 0)
            return -1;
    }
    if (!u->provider.p || !u->model.p || !u->operation.p || !u->status.p || !u->cost_source.p ||
        !have_ts || !have_recv || !have_cost) {
        snprintf(err, cap,
                 "usage record lacks one of provider, model, operation, status, cost_source, "
                 "ts, recv_ts, cost_nusd");
        return -1;
    }
    if (!span_eq_cstr(u->status, "ok") && !span_eq_cstr(u->status, "error")) {
        snprintf(err, cap, "status: neither ok nor error");
        return -1;
    }
    if (u->cache_read_tokens + u->cache_write_tokens + u->cache_write_1h_tokens > u->input_tokens ||
        u->reasoning_tokens > u->output_tokens) {
        snprintf(err, cap, "token parts exceed their whole");
        return -1;
    }
    return 0;
}

/* ---- samples ------------------------------------------------------------ */

static const char *const stype_names[] = { "c", "g", "ms", "h", "d", "s" };

const char *msg_stype_name(msg_stype_t t)
{
    return (unsigned)t < 6 ? stype_names[t] : "?";
}

void msg_sample_encode(mbuf_t *b, const msg_sample_t *s)
{
    size_t bound = 160 + s->name.len + s->member.len + MPW_STR_HDR * 2;
    for (size_t i = 0; i < s->ntags; i++)
        bound += s->tags[i].key.len + s->tags[i].value.len + 2 * MPW_STR_HDR;
    mbuf_reserve(b, bound);
    char *p = b->data + b->len;
    p = mpw_map(p, 7);
    p = MPW_KEY(p, "name");
    p = mpw_str(p, s->name.p, s->name.len);
    p = MPW_KEY(p, "type");
    const char *t = msg_stype_name(s->type);
    p = mpw_str(p, t, strlen(t));
    p = MPW_KEY(p, "value");
    if (s->type == MSG_ST_S)
        p = mpw_str(p, s->member.p, s->member.len);
    else
        p = mpw_double(p, s->value);
    p = MPW_KEY(p, "rate");
    p = mpw_double(p, s->rate);
    p = MPW_KEY(p, "delta");
    p = mpw_bool(p, s->delta);
    p = MPW_KEY(p, "tags");
    p = mpw_map(p, (uint32_t)s->ntags);
    for (size_t i = 0; i < s->ntags; i++) {
        p = mpw_str(p, s->tags[i].key.p, s->tags[i].key.len);
        p = mpw_str(p, s->tags[i].value.p, s->tags[i].value.len);
    }
    p = MPW_KEY(p, "ts");
    p = mpw_int(p, s->ts);
    b->len = (size_t)(p - b->data);
}

void msg_sample_pack(msgpack_packer *pk, const msg_sample_t *s)
{
    mbuf_t b = { 0 };
    msg_sample_encode(&b, s);
    through_packer(pk, &b);
    mbuf_free(&b);
}

int msg_sample_unpack(const msgpack_object *o, msg_sample_t *s, char *err, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->rate = 1.0;
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "sample is not a map");
        return -1;
    }
    const msgpack_object *value = NULL;
    bool have_type = false;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        int rc = 0;
        if (key_is(k, "name")) {
            rc = get_str(v, &s->name, "name", err, cap);
        } else if (key_is(k, "type")) {
            span_t t;
            rc = get_str(v, &t, "type", err, cap);
            have_type = false;
            for (int j = 0; rc == 0 && j < 6; j++) {
                if (t.p && span_eq_cstr(t, stype_names[j])) {
                    s->type = (msg_stype_t)j;
                    have_type = true;
                }
            }
            if (rc == 0 && !have_type) {
                snprintf(err, cap, "type: unknown");
                return -1;
            }
        } else if (key_is(k, "value")) {
            value = v;
        } else if (key_is(k, "rate")) {
            rc = get_f64(v, &s->rate, "rate", err, cap);
            if (rc == 0 && !(s->rate > 0 && s->rate <= 1)) {
                snprintf(err, cap, "rate: not in (0, 1]");
                return -1;
            }
        } else if (key_is(k, "delta")) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                snprintf(err, cap, "delta: not a boolean");
                return -1;
            }
            s->delta = v->via.boolean;
        } else if (key_is(k, "ts")) {
            rc = get_i64(v, &s->ts, 0, INT64_MAX, "ts", err, cap);
        } else if (key_is(k, "tags")) {
            rc = get_tags(v, s->tags, &s->ntags, MSG_MAX_TAGS, "tags", err, cap);
        }
        if (rc < 0)
            return -1;
    }
    if (!s->name.p || s->name.len == 0 || !have_type || !value) {
        snprintf(err, cap, "sample lacks name, type or value");
        return -1;
    }
    if (s->type == MSG_ST_S) {
        if (get_str(value, &s->member, "value", err, cap) < 0)
            return -1;
        if (!s->member.p) {
            snprintf(err, cap, "value: a set member must be a string");
            return -1;
        }
    } else if (get_f64(value, &s->value, "value", err, cap) < 0) {
        return -1;
    }
    return 0;
}

/* ---- flush records ------------------------------------------------------ */

const double msg_flush_q[MSG_FLUSH_NQ] = { 0.5, 0.9, 0.95, 0.99 };
const char *const msg_flush_qname[MSG_FLUSH_NQ] = { "p50", "p90", "p95", "p99" };

void msg_flush_pack(msgpack_packer *pk, const msg_flush_t *f)
{
    size_t n = 7; /* name type start end rev tags samples */
    if (f->type == MSG_ST_C)
        n += 2;
    else if (f->type == MSG_ST_G)
        n += 1;
    else if (f->type == MSG_ST_S)
        n += 2;
    else
        n += 4 + MSG_FLUSH_NQ;
    msgpack_pack_map(pk, n);
    pack_key(pk, "name");
    msg_pack_span(pk, f->name);
    pack_key(pk, "type");
    pack_key(pk, msg_stype_name(f->type));
    pack_key(pk, "start");
    msgpack_pack_int64(pk, f->start);
    pack_key(pk, "end");
    msgpack_pack_int64(pk, f->end);
    pack_key(pk, "rev");
    msgpack_pack_uint32(pk, f->rev);
    pack_key(pk, "tags");
    pack_tags(pk, f->tags, f->ntags);
    pack_key(pk, "samples");
    msgpack_pack_uint64(pk, f->samples);
    switch (f->type) {
    case MSG_ST_C:
        pack_key(pk, "value");
        msgpack_pack_double(pk, f->value);
        pack_key(pk, "rate");
        msgpack_pack_double(pk, f->rate);
        break;
    case MSG_ST_G:
        pack_key(pk, "value");
        msgpack_pack_double(pk, f->value);
        break;
    case MSG_ST_S:
        /* a count of members: an integer on the wire */
        pack_key(pk, "value");
        msgpack_pack_uint64(pk, f->value >= 0x1p64 ? UINT64_MAX
                                : f->value > 0 ? (uint64_t)f->value : 0);
        pack_key(pk, "capped");
        if (f->capped)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    default:
        pack_key(pk, "count");
        msgpack_pack_double(pk, f->count);
        pack_key(pk, "sum");
        msgpack_pack_double(pk, f->sum);
        pack_key(pk, "min");
        msgpack_pack_double(pk, f->min);
        pack_key(pk, "max");
        msgpack_pack_double(pk, f->max);
        for (int i = 0; i < MSG_FLUSH_NQ; i++) {
            pack_key(pk, msg_flush_qname[i]);
            msgpack_pack_double(pk, f->q[i]);
        }
        break;
    }
}

/* The keys a flush record may carry, in the order of fkeys[]. */
enum { FK_NAME, FK_TYPE, FK_START, FK_END, FK_REV, FK_TAGS, FK_SAMPLES, FK_VALUE, FK_RATE,
       FK_CAPPED, FK_COUNT, FK_SUM, FK_MIN, FK_MAX, FK_Q, FK_N = FK_Q + MSG_FLUSH_NQ };
static const char *const fkeys[FK_N] = { "name", "type", "start", "end", "rev", "tags",
                                         "samples", "value", "rate", "capped", "count",
                                         "sum", "min", "max", "p50", "p90", "p95", "p99" };

static int need(const msgpack_object *v, const char *name, char *err, size_t cap)
{
    if (v)
        return 0;
    snprintf(err, cap, "flush record lacks %s", name);
    return -1;
}

int msg_flush_unpack(const msgpack_object *o, msg_flush_t *f, char *err, size_t cap)
{
    memset(f, 0, sizeof *f);
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "flush record is not a map");
        return -1;
    }
    /* collect first: which keys matter depends on the type, wherever it is */
    const msgpack_object *v[FK_N] = { 0 };
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            snprintf(err, cap, "flush record key is not a string");
            return -1;
        }
        for (int j = 0; j < FK_N; j++) {
            if (key_is(k, fkeys[j])) {
                v[j] = &o->via.map.ptr[i].val;
                break;
            }
        }
    }
    for (int j = FK_NAME; j <= FK_SAMPLES; j++)
        if (need(v[j], fkeys[j], err, cap) < 0)
            return -1;
    span_t t;
    if (get_str(v[FK_NAME], &f->name, "name", err, cap) < 0 ||
        get_str(v[FK_TYPE], &t, "type", err, cap) < 0)
        return -1;
    if (!f->name.p || f->name.len == 0) {
        snprintf(err, cap, "name: empty");
        return -1;
    }
    int type = -1;
    for (int j = 0; t.p && j < 6; j++)
        if (span_eq_cstr(t, stype_names[j]))
            type = j;
    if (type < 0) {
        snprintf(err, cap, "type: unknown");
        return -1;
    }
    f->type = (msg_stype_t)type;
    int64_t rev;
    if (get_i64(v[FK_START], &f->start, 0, INT64_MAX, "start", err, cap) < 0 ||
        get_i64(v[FK_END], &f->end, 0, INT64_MAX, "end", err, cap) < 0 ||
        get_i64(v[FK_REV], &rev, 0, UINT32_MAX, "rev", err, cap) < 0 ||
        get_tags(v[FK_TAGS], f->tags, &f->ntags, MSG_MAX_TAGS, "tags", err, cap) < 0 ||
        get_u64(v[FK_SAMPLES], &f->samples, UINT64_MAX, "samples", err, cap) < 0)
        return -1;
    f->rev = (uint32_t)rev;
    if (f->start >= f->end) {
        snprintf(err, cap, "start: not before end");
        return -1;
    }
    switch (f->type) {
    case MSG_ST_C:
        if (need(v[FK_VALUE], "value", err, cap) < 0 || need(v[FK_RATE], "rate", err, cap) < 0 ||
            get_f64(v[FK_VALUE], &f->value, "value", err, cap) < 0 ||
            get_f64(v[FK_RATE], &f->rate, "rate", err, cap) < 0)
            return -1;
        break;
    case MSG_ST_G:
        if (need(v[FK_VALUE], "value", err, cap) < 0 ||
            get_f64(v[FK_VALUE], &f->value, "value", err, cap) < 0)
            return -1;
        break;
    case MSG_ST_S:
        if (need(v[FK_VALUE], "value", err, cap) < 0 || need(v[FK_CAPPED], "capped", err, cap) < 0 ||
            get_f64(v[FK_VALUE], &f->value, "value", err, cap) < 0)
            return -1;
        if (f->value < 0 || f->value != floor(f->value)) {
            snprintf(err, cap, "value: not a count");
            return -1;
        }
        if (v[FK_CAPPED]->type != MSGPACK_OBJECT_BOOLEAN) {
            snprintf(err, cap, "capped: not a boolean");
            return -1;
        }
        f->capped = v[FK_CAPPED]->via.boolean;
        break;
    default: {
        double *dst[4 + MSG_FLUSH_NQ] = { &f->count, &f->sum, &f->min, &f->max };
        for (int j = 0; j < MSG_FLUSH_NQ; j++)
            dst[4 + j] = &f->q[j];
        for (int j = 0; j < 4 + MSG_FLUSH_NQ; j++)
            if (need(v[FK_COUNT + j], fkeys[FK_COUNT + j], err, cap) < 0 ||
                get_f64(v[FK_COUNT + j], dst[j], fkeys[FK_COUNT + j], err, cap) < 0)
                return -1;
        if (!(f->count > 0)) {
            snprintf(err, cap, "count: not positive");
            return -1;
        }
        double prev = f->min;
        for (int j = 0; j <= MSG_FLUSH_NQ; j++) {
            double x = j < MSG_FLUSH_NQ ? f->q[j] : f->max;
            if (x < prev) {
                snprintf(err, cap, "%s: out of order (min <= p50 <= ... <= p99 <= max)",
                         j < MSG_FLUSH_NQ ? msg_flush_qname[j] : "max");
                return -1;
            }
            prev = x;
        }
        break;
    }
    }
    return 0;
}

/* ---- stats -------------------------------------------------------------- */

void msg_stats_pack(msgpack_packer *pk, const msg_stats_t *s)
{
    msgpack_pack_map(pk, 6);
    pack_key(pk, "daemon");
    msg_pack_span(pk, s->daemon);
    pack_key(pk, "src");
    msg_pack_span(pk, s->src);
    pack_key(pk, "pid");
    msgpack_pack_int64(pk, s->pid);
    pack_key(pk, "started");
    msgpack_pack_int64(pk, s->started);
    pack_key(pk, "ts");
    msgpack_pack_int64(pk, s->ts);
    pack_key(pk, "counters");
    msgpack_pack_array(pk, s->n);
    for (size_t i = 0; i < s->n; i++) {
        const msg_stat_t *e = &s->entries[i];
        msgpack_pack_array(pk, 4);
        msg_pack_span(pk, e->name);
        pack_tags(pk, e->labels, e->nlabels);
        msgpack_pack_int64(pk, e->value);
        pack_key(pk, e->gauge ? "g" : "c");
    }
}

int msg_stats_unpack(const msgpack_object *o, msg_stats_t *s, msg_stat_t *entries, size_t cap,
                     char *err, size_t errcap)
{
    memset(s, 0, sizeof *s);
    s->entries = entries;
    if (errcap)
        err[0] = '\0'; /* a malformed counter below may leave no reason of its own */
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, errcap, "stats is not a map");
        return -1;
    }
    const msgpack_object *counters = NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        int rc = 0;
        if (key_is(k, "daemon"))
            rc = get_str(v, &s->daemon, "daemon", err, errcap);
        else if (key_is(k, "src"))
            rc = get_str(v, &s->src, "src", err, errcap);
        else if (key_is(k, "pid"))
            rc = get_i64(v, &s->pid, 0, INT32_MAX, "pid", err, errcap);
        else if (key_is(k, "started"))
            rc = get_i64(v, &s->started, 0, INT64_MAX, "started", err, errcap);
        else if (key_is(k, "ts"))
            rc = get_i64(v, &s->ts, 0, INT64_MAX, "ts", err, errcap);
        else if (key_is(k, "counters"))
            counters = v;
        if (rc < 0)
            return -1;
    }
    if (!s->daemon.p || !counters || counters->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(err, errcap, "stats lacks daemon or counters");
        return -1;
    }
    if (counters->via.array.size > cap || counters->via.array.size > MSG_MAX_STATS) {
        snprintf(err, errcap, "stats: too many counters (%u)", counters->via.array.size);
        return -1;
    }
    for (uint32_t i = 0; i < counters->via.array.size; i++) {
        const msgpack_object *e = &counters->via.array.ptr[i];
        msg_stat_t *st = &entries[i];
        span_t t;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size < 4 ||
            get_str(&e->via.array.ptr[0], &st->name, "counter name", err, errcap) < 0 ||
            !st->name.p ||
            get_tags(&e->via.array.ptr[1], st->labels, &st->nlabels, MSG_STAT_LABELS, "labels", err,
                     errcap) < 0 ||
            get_i64(&e->via.array.ptr[2], &st->value, INT64_MIN, INT64_MAX, "counter value", err,
                    errcap) < 0 ||
            get_str(&e->via.array.ptr[3], &t, "counter type", err, errcap) < 0 || !t.p ||
            !(span_eq_cstr(t, "c") || span_eq_cstr(t, "g"))) {
            if (!err[0])
                snprintf(err, errcap, "stats: malformed counter");
            return -1;
        }
        st->gauge = span_eq_cstr(t, "g");
    }
    s->n = counters->via.array.size;
    return 0;
}

/* ---- the aggregator's outputs ------------------------------------------- */

/* These records are flat maps of strings and integers, so one table per
 * kind drives both packing and the strict unpacking. */
typedef enum { F_STR, F_BIN, F_I64, F_U64, F_U32, F_BOOL } ftype_t;

typedef struct {
    const char *name;
    ftype_t type;
    size_t off;
    int64_t lo, hi; /* F_I64; F_U64 and F_U32 use hi only */
    bool required;
} field_t;

#define FLD(st, n, t, f, lo, hi, req) { n, t, offsetof(st, f), lo, hi, req }

/* Strings and binaries are absent when NULL; optional numbers and flags
 * are left out when zero (a reader takes absent as zero). */
static bool field_present(const void *rec, const field_t *f)
{
    const char *v = (const char *)rec + f->off;
    switch (f->type) {
    case F_STR:
    case F_BIN:
        return ((const span_t *)v)->p != NULL;
    case F_I64:
        return f->required || *(const int64_t *)v != 0;
    case F_U64:
        return f->required || *(const uint64_t *)v != 0;
    case F_U32:
        return f->required || *(const uint32_t *)v != 0;
    case F_BOOL:
        return f->required || *(const bool *)v;
    }
    return true;
}

static void pack_fields(msgpack_packer *pk, const void *rec, const field_t *fs)
{
    const char *base = rec;
    uint32_t n = 0;
    for (const field_t *f = fs; f->name; f++)
        n += field_present(rec, f);
    msgpack_pack_map(pk, n);
    for (const field_t *f = fs; f->name; f++) {
        if (!field_present(rec, f))
            continue;
        const void *v = base + f->off;
        pack_key(pk, f->name);
        switch (f->type) {
        case F_STR:
            msg_pack_span(pk, *(const span_t *)v);
            break;
        case F_BIN: {
            const span_t *s = v;
            msgpack_pack_bin(pk, s->len);
            msgpack_pack_bin_body(pk, s->p, s->len);
            break;
        }
        case F_I64:
            msgpack_pack_int64(pk, *(const int64_t *)v);
            break;
        case F_U64:
            msgpack_pack_uint64(pk, *(const uint64_t *)v);
            break;
        case F_U32:
            msgpack_pack_uint32(pk, *(const uint32_t *)v);
            break;
        case F_BOOL:
            if (*(const bool *)v)
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
            break;
        }
    }
}

#define MAX_FIELDS 40

static int unpack_fields(const msgpack_object *o, void *rec, size_t size, const field_t *fs,
                         const char *what, char *err, size_t cap)
{
    char *base = rec;
    bool seen[MAX_FIELDS] = { false };
    memset(rec, 0, size);
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "%s record is not a map", what);
        return -1;
    }
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            snprintf(err, cap, "%s record key is not a string", what);
            return -1;
        }
        const field_t *f = fs;
        while (f->name && !key_is(k, f->name))
            f++;
        if (!f->name)
            continue; /* a field added later */
        void *dst = base + f->off;
        uint64_t u = 0;
        int rc = 0;
        switch (f->type) {
        case F_STR:
            rc = get_str(v, dst, f->name, err, cap);
            break;
        case F_BIN:
            if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size > MSG_MAX_SKETCH) {
                snprintf(err, cap, "%s: not a binary of at most %d bytes", f->name, MSG_MAX_SKETCH);
                return -1;
            }
            *(span_t *)dst = span_make(v->via.bin.size ? v->via.bin.ptr : "", v->via.bin.size);
            break;
        case F_I64:
            rc = get_i64(v, dst, f->lo, f->hi, f->name, err, cap);
            break;
        case F_U64:
            rc = get_u64(v, dst, (uint64_t)f->hi, f->name, err, cap);
            break;
        case F_U32:
            rc = get_u64(v, &u, (uint64_t)f->hi, f->name, err, cap);
            *(uint32_t *)dst = (uint32_t)u;
            break;
        case F_BOOL:
            if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                snprintf(err, cap, "%s: not a boolean", f->name);
                return -1;
            }
            *(bool *)dst = v->via.boolean;
            break;
        }
        if (rc < 0)
            return -1;
        assert(f - fs < MAX_FIELDS);
        seen[f - fs] = true;
    }
    for (const field_t *f = fs; f->name; f++) {
        if (f->required && (!seen[f - fs] || !field_present(rec, f))) {
            snprintf(err, cap, "%s record lacks %s", what, f->name);
            return -1;
        }
    }
    return 0;
}

static bool span_in(span_t s, const char *const *set)
{
    for (; *set; set++)
        if (span_eq_cstr(s, *set))
            return true;
    return false;
}

static const char *const grains[] = { "m", "h", "d", NULL };
static const char *const dims[] = { "model", "user", "account", "project", NULL };
static const char *const qstates[] = { "ok", "warning", "exceeded", NULL };
static const char *const scopes[] = { "global", "provider", "model", "project",
                                      "account", "operation", "user", NULL };
static const char *const periods[] = { "day", "week", "month", NULL };

#define R(n, t, f, lo, hi, req) FLD(msg_rollup_t, n, t, f, lo, hi, req)
static const field_t rollup_fields[] = {
    R("grain", F_STR, grain, 0, 0, true),
    R("dim", F_STR, dim, 0, 0, true),
    R("start", F_I64, start, 0, INT64_MAX, true),
    R("end", F_I64, end, 0, INT64_MAX, true),
    R("provider", F_STR, provider, 0, 0, false),
    R("model", F_STR, model, 0, 0, false),
    R("operation", F_STR, operation, 0, 0, false),
    R("status", F_STR, status, 0, 0, false),
    R("key", F_STR, key, 0, 0, false),
    R("requests", F_U64, requests, 0, INT64_MAX, true),
    R("errors", F_U64, errors, 0, INT64_MAX, true),
    R("input_tokens", F_U64, input_tokens, 0, INT64_MAX, false),
    R("cache_read_tokens", F_U64, cache_read_tokens, 0, INT64_MAX, false),
    R("cache_write_tokens", F_U64, cache_write_tokens, 0, INT64_MAX, false),
    R("cache_write_1h_tokens", F_U64, cache_write_1h_tokens, 0, INT64_MAX, false),
    R("output_tokens", F_U64, output_tokens, 0, INT64_MAX, false),
    R("reasoning_tokens", F_U64, reasoning_tokens, 0, INT64_MAX, false),
    R("cost_nusd", F_I64, cost_nusd, 0, INT64_MAX, true),
    R("latency", F_BIN, latency, 0, 0, false),
    R("ttft", F_BIN, ttft, 0, 0, false),
    R("rev", F_U32, rev, 0, UINT32_MAX, false),
    R("shard", F_U32, shard, 0, 255, false),
    R("shards", F_U32, shards, 1, 256, true),
    { NULL, 0, 0, 0, 0, false },
};
#undef R

void msg_rollup_pack(msgpack_packer *pk, const msg_rollup_t *r)
{
    pack_fields(pk, r, rollup_fields);
}

int msg_rollup_unpack(const msgpack_object *o, msg_rollup_t *r, char *err, size_t cap)
{
    if (unpack_fields(o, r, sizeof *r, rollup_fields, "rollup", err, cap) < 0)
        return -1;
    if (!span_in(r->grain, grains) || !span_in(r->dim, dims)) {
        snprintf(err, cap, "rollup: unknown grain or dim");
        return -1;
    }
    bool model = span_eq_cstr(r->dim, "model");
    if (model ? !(r->provider.p && r->model.p && r->operation.p && r->status.p) : !r->key.p) {
        snprintf(err, cap, "rollup: dimension values missing for dim %.*s", (int)r->dim.len,
                 r->dim.p);
        return -1;
    }
    if (r->start >= r->end || r->errors > r->requests || r->shards < 1 || r->shard >= r->shards ||
        r->cache_read_tokens + r->cache_write_tokens + r->cache_write_1h_tokens > r->input_tokens ||
        r->reasoning_tokens > r->output_tokens) {
        snprintf(err, cap, "rollup: inconsistent counts or bounds");
        return -1;
    }
    return 0;
}

#define Q(n, t, f, lo, hi, req) FLD(msg_quota_t, n, t, f, lo, hi, req)
static const field_t quota_fields[] = {
    Q("subject", F_STR, subject, 0, 0, true),
    Q("id", F_STR, id, 0, 0, true),
    Q("window", F_STR, window, 0, 0, true),
    Q("unit", F_STR, unit, 0, 0, true),
    Q("state", F_STR, state, 0, 0, true),
    Q("prev", F_STR, prev, 0, 0, true),
    Q("used", F_I64, used, 0, INT64_MAX, true),
    Q("limit", F_I64, limit, 0, INT64_MAX, true),
    Q("start", F_I64, start, 0, INT64_MAX, true),
    Q("reset", F_I64, reset, 0, INT64_MAX, false),
    Q("ts", F_I64, ts, 0, INT64_MAX, true),
    Q("shard", F_U32, shard, 0, 255, false),
    Q("shards", F_U32, shards, 1, 256, true),
    { NULL, 0, 0, 0, 0, false },
};
#undef Q

void msg_quota_pack(msgpack_packer *pk, const msg_quota_t *q)
{
    pack_fields(pk, q, quota_fields);
}

int msg_quota_unpack(const msgpack_object *o, msg_quota_t *q, char *err, size_t cap)
{
    static const char *const subjects[] = { "user", "account", NULL };
    static const char *const units[] = { "tokens", "usd", NULL };
    if (unpack_fields(o, q, sizeof *q, quota_fields, "quota", err, cap) < 0)
        return -1;
    if (!span_in(q->subject, subjects) || !span_in(q->unit, units) ||
        !span_in(q->state, qstates) || !span_in(q->prev, qstates) || q->window.len == 0 ||
        q->shard >= q->shards) {
        snprintf(err, cap, "quota: unknown subject, unit, state or window");
        return -1;
    }
    return 0;
}

#define B(n, t, f, lo, hi, req) FLD(msg_budget_t, n, t, f, lo, hi, req)
static const field_t budget_fields[] = {
    B("name", F_STR, name, 0, 0, true),
    B("scope", F_STR, scope, 0, 0, true),
    B("scope_value", F_STR, scope_value, 0, 0, false),
    B("period", F_STR, period, 0, 0, true),
    B("period_start", F_I64, period_start, 0, INT64_MAX, true),
    B("period_end", F_I64, period_end, 0, INT64_MAX, true),
    B("limit_nusd", F_I64, limit_nusd, 0, INT64_MAX, true),
    B("rollover_nusd", F_I64, rollover_nusd, 0, INT64_MAX, false),
    B("spent_nusd", F_I64, spent_nusd, 0, INT64_MAX, true),
    B("remaining_nusd", F_I64, remaining_nusd, INT64_MIN, INT64_MAX, true),
    B("forecast_avg_nusd", F_I64, forecast_avg_nusd, 0, INT64_MAX, false),
    B("forecast_rate_nusd", F_I64, forecast_rate_nusd, 0, INT64_MAX, false),
    B("exhaust_ts", F_I64, exhaust_ts, 0, INT64_MAX, false),
    B("warn_pct", F_I64, warn_pct, 1, 100, true),
    B("state", F_STR, state, 0, 0, true),
    B("crossing", F_STR, crossing, 0, 0, false),
    B("crossed_ts", F_I64, crossed_ts, 0, INT64_MAX, false),
    B("ts", F_I64, ts, 0, INT64_MAX, true),
    B("partial", F_BOOL, partial, 0, 0, false),
    B("shard", F_U32, shard, 0, 255, false),
    B("shards", F_U32, shards, 1, 256, true),
    { NULL, 0, 0, 0, 0, false },
};
#undef B

void msg_budget_pack(msgpack_packer *pk, const msg_budget_t *b)
{
    pack_fields(pk, b, budget_fields);
}

int msg_budget_unpack(const msgpack_object *o, msg_budget_t *b, char *err, size_t cap)
{
    if (unpack_fields(o, b, sizeof *b, budget_fields, "budget", err, cap) < 0)
        return -1;
    if (!span_in(b->scope, scopes) || !span_in(b->period, periods) ||
        !span_in(b->state, qstates) || (b->crossing.p && !span_eq_cstr(b->crossing, "warning") &&
                                         !span_eq_cstr(b->crossing, "exceeded")) ||
        b->period_start >= b->period_end || b->shard >= b->shards ||
        (span_eq_cstr(b->scope, "global") != !b->scope_value.p)) {
        snprintf(err, cap, "budget: unknown scope, period, state or crossing, or bad bounds");
        return -1;
    }
    return 0;
}

/* ---- alert -------------------------------------------------------------------- */

void msg_alert_pack(msgpack_packer *pk, const msg_alert_t *a)
{
    uint32_t n = 9 + (a->ends_at > 0);
    msgpack_pack_map(pk, n);
    msgpack_pack_str_with_body(pk, "alertname", 9);
    msg_pack_span(pk, a->alertname);
    msgpack_pack_str_with_body(pk, "state", 5);
    msg_pack_span(pk, a->state);
    msgpack_pack_str_with_body(pk, "severity", 8);
    msg_pack_span(pk, a->severity.p ? a->severity : span_cstr(""));
    msgpack_pack_str_with_body(pk, "fingerprint", 11);
    msg_pack_span(pk, a->fingerprint);
    msgpack_pack_str_with_body(pk, "labels", 6);
    pack_tags(pk, a->labels, a->nlabels);
    msgpack_pack_str_with_body(pk, "annotations", 11);
    pack_tags(pk, a->annotations, a->nannotations);
    msgpack_pack_str_with_body(pk, "value", 5);
    msgpack_pack_double(pk, a->value);
    msgpack_pack_str_with_body(pk, "starts_at", 9);
    msgpack_pack_int64(pk, a->starts_at);
    msgpack_pack_str_with_body(pk, "ts", 2);
    msgpack_pack_int64(pk, a->ts);
    if (a->ends_at > 0) {
        msgpack_pack_str_with_body(pk, "ends_at", 7);
        msgpack_pack_int64(pk, a->ends_at);
    }
}

int msg_alert_unpack(const msgpack_object *o, msg_alert_t *a, char *err, size_t cap)
{
    static const char *const states[] = { "pending", "firing", "resolved", NULL };
    memset(a, 0, offsetof(msg_alert_t, labels));
    a->nannotations = 0;
    a->value = 0;
    a->starts_at = a->ends_at = a->ts = 0;
    if (o->type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "alert record is not a map");
        return -1;
    }
    bool have_ts = false;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR) {
            snprintf(err, cap, "alert record key is not a string");
            return -1;
        }
        int rc = 0;
        if (key_is(k, "alertname"))
            rc = get_str(v, &a->alertname, "alertname", err, cap);
        else if (key_is(k, "state"))
            rc = get_str(v, &a->state, "state", err, cap);
        else if (key_is(k, "severity"))
            rc = get_str(v, &a->severity, "severity", err, cap);
        else if (key_is(k, "fingerprint"))
            rc = get_str(v, &a->fingerprint, "fingerprint", err, cap);
        else if (key_is(k, "labels"))
            rc = get_tags(v, a->labels, &a->nlabels, MSG_MAX_TAGS, "labels", err, cap);
        else if (key_is(k, "annotations"))
            rc = get_tags(v, a->annotations, &a->nannotations, MSG_MAX_ANNOTATIONS, "annotations",
                          err, cap);
        else if (key_is(k, "value"))
            rc = get_f64(v, &a->value, "value", err, cap);
        else if (key_is(k, "starts_at"))
            rc = get_i64(v, &a->starts_at, 0, INT64_MAX, "starts_at", err, cap);
        else if (key_is(k, "ends_at"))
            rc = get_i64(v, &a->ends_at, 0, INT64_MAX, "ends_at", err, cap);
        else if (key_is(k, "ts")) {
            rc = get_i64(v, &a->ts, 0, INT64_MAX, "ts", err, cap);
            have_ts = true;
        }
        if (rc < 0)
            return -1;
    }
    if (!a->alertname.len || !a->fingerprint.len || !have_ts || !span_in(a->state, states)) {
        snprintf(err, cap, "alert record lacks alertname, fingerprint or ts, or has an unknown state");
        return -1;
    }
    return 0;
}

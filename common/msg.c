#include "msg.h"

#include "mpw.h"

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

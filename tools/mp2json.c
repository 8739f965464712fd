#include "mp2json.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "xalloc.h"

json_t *mp2json_str(span_t s)
{
    if (!s.p)
        return json_null();
    if (utf8_valid(s.p, s.len) && !memchr(s.p, '\0', s.len))
        return json_stringn(s.p, s.len);
    /* replace what is not UTF-8 so the line stays valid JSON */
    char *out = xmalloc(s.len * 3 + 1);
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)s.p;
    for (size_t i = 0; i < s.len;) {
        size_t k = p[i] ? utf8_seq(p + i, s.len - i) : 0;
        if (k) {
            memcpy(out + o, p + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    json_t *j = json_stringn(out, o);
    free(out);
    return j;
}

static span_t mspan(const msgpack_object *o)
{
    return span_make(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
}

json_t *mp2json_any(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return mp2json_str(mspan(o));
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT: {
        const void *p = o->type == MSGPACK_OBJECT_BIN ? (const void *)o->via.bin.ptr
                                                      : (const void *)o->via.ext.ptr;
        size_t n = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.size : o->via.ext.size;
        size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
        char *b = xmalloc(cap);
        sodium_bin2base64(b, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
        json_t *j = json_string(b);
        free(b);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; i < o->via.array.size; i++)
            json_array_append_new(a, mp2json_any(&o->via.array.ptr[i]));
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            json_t *ks = k->type == MSGPACK_OBJECT_STR ? mp2json_str(mspan(k)) : NULL;
            if (ks && json_is_string(ks))
                json_object_set_new(m, json_string_value(ks), mp2json_any(&o->via.map.ptr[i].val));
            json_decref(ks);
        }
        return m;
    }
    }
    return json_null();
}

static json_t *tags(const msg_tag_t *t, size_t n)
{
    json_t *m = json_object();
    for (size_t i = 0; i < n; i++) {
        json_t *k = mp2json_str(t[i].key);
        if (json_is_string(k))
            json_object_set_new(m, json_string_value(k), mp2json_str(t[i].value));
        json_decref(k);
    }
    return m;
}

static json_t *opt_int(int64_t v, bool present) { return present ? json_integer(v) : json_null(); }

json_t *mp2json_usage(const msg_usage_t *u)
{
    json_t *o = json_object();
    json_object_set_new(o, "provider", mp2json_str(u->provider));
    json_object_set_new(o, "model", mp2json_str(u->model));
    json_object_set_new(o, "operation", mp2json_str(u->operation));
    json_object_set_new(o, "user", mp2json_str(u->user));
    json_object_set_new(o, "account", mp2json_str(u->account));
    json_object_set_new(o, "project", mp2json_str(u->project));
    json_object_set_new(o, "input_tokens", json_integer((json_int_t)u->input_tokens));
    json_object_set_new(o, "cache_read_tokens", json_integer((json_int_t)u->cache_read_tokens));
    json_object_set_new(o, "cache_write_tokens", json_integer((json_int_t)u->cache_write_tokens));
    json_object_set_new(o, "cache_write_1h_tokens", json_integer((json_int_t)u->cache_write_1h_tokens));
    json_object_set_new(o, "output_tokens", json_integer((json_int_t)u->output_tokens));
    json_object_set_new(o, "reasoning_tokens", json_integer((json_int_t)u->reasoning_tokens));
    json_object_set_new(o, "requests", json_integer((json_int_t)u->requests));
    json_object_set_new(o, "latency_us", opt_int(u->latency_us, u->latency_us >= 0));
    json_object_set_new(o, "ttft_us", opt_int(u->ttft_us, u->ttft_us >= 0));
    json_object_set_new(o, "status", mp2json_str(u->status));
    json_object_set_new(o, "http_status", opt_int(u->http_status, u->http_status != 0));
    json_object_set_new(o, "error_type", mp2json_str(u->error_type));
    json_object_set_new(o, "cost_nusd", json_integer(u->cost_nusd));
    json_object_set_new(o, "cost_source", mp2json_str(u->cost_source));
    json_object_set_new(o, "price_version", mp2json_str(u->price_version));
    json_object_set_new(o, "request_id", mp2json_str(u->request_id));
    json_object_set_new(o, "retries", opt_int(u->retries, u->retries >= 0));
    json_object_set_new(o, "ts", json_integer(u->ts));
    json_object_set_new(o, "recv_ts", json_integer(u->recv_ts));
    json_object_set_new(o, "tags", tags(u->tags, u->ntags));
    json_object_set_new(o, "signed", json_boolean(u->is_signed));
    if (u->is_signed)
        json_object_set_new(o, "key_id", mp2json_str(u->key_id));
    return o;
}

json_t *mp2json_sample(const msg_sample_t *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", mp2json_str(s->name));
    json_object_set_new(o, "type", json_string(msg_stype_name(s->type)));
    json_object_set_new(o, "value", s->type == MSG_ST_S ? mp2json_str(s->member) : json_real(s->value));
    json_object_set_new(o, "rate", json_real(s->rate));
    json_object_set_new(o, "delta", json_boolean(s->delta));
    json_object_set_new(o, "tags", tags(s->tags, s->ntags));
    json_object_set_new(o, "ts", json_integer(s->ts));
    return o;
}

json_t *mp2json_stats(const msg_stats_t *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "daemon", mp2json_str(s->daemon));
    json_object_set_new(o, "src", mp2json_str(s->src));
    json_object_set_new(o, "pid", json_integer(s->pid));
    json_object_set_new(o, "started", json_integer(s->started));
    json_object_set_new(o, "ts", json_integer(s->ts));
    json_t *a = json_array();
    for (size_t i = 0; i < s->n; i++) {
        const msg_stat_t *e = &s->entries[i];
        json_t *c = json_object();
        json_object_set_new(c, "name", mp2json_str(e->name));
        json_object_set_new(c, "labels", tags(e->labels, e->nlabels));
        json_object_set_new(c, "value", json_integer(e->value));
        json_object_set_new(c, "type", json_string(e->gauge ? "gauge" : "counter"));
        json_array_append_new(a, c);
    }
    json_object_set_new(o, "counters", a);
    return o;
}

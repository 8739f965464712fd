#include "rollup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ktab.h"
#include "mbuf.h"
#include "sketch.h"
#include "win.h"
#include "xalloc.h"

#define MINUTE_NS 60000000000LL
#define HOUR_NS (60 * MINUTE_NS)
#define NTOK 6
#define MAX_KEY (1 + 4 * (2 + MSG_MAX_STR))

typedef enum { D_MODEL, D_USER, D_ACCOUNT, D_PROJECT, D_N } dim_t;
static const char *const dim_names[] = { "model", "user", "account", "project" };
static const char *const grain_names[] = { "m", "h", "d" };

typedef struct {
    uint64_t requests, errors;
    uint64_t tok[NTOK];
    int64_t cost;
    sketch_t *lat, *ttft;
    uint32_t rev;
    bool sent;  /* went out at least once */
    bool dirty; /* changed since it last went out */
} rcell_t;

typedef struct bucket {
    int64_t start, end;
    bool closed;
    size_t ndirty; /* closed buckets: cells to send again */
    ktab_t *cells; /* dim byte + length-prefixed strings -> rcell_t */
    struct bucket *next;
} bucket_t;

struct rollup {
    rollup_opts_t o;
    bucket_t *buckets[RG_N]; /* ascending by start */
    rollup_counters_t c;
    mbuf_t lat, ttft; /* scratch for encoding */
};

const char *rollup_grain_name(rgrain_t g)
{
    return grain_names[g];
}

static void cell_free(void *val)
{
    rcell_t *c = val;
    sketch_destroy(&c->lat);
    sketch_destroy(&c->ttft);
}

rollup_t *rollup_new(const rollup_opts_t *o)
{
    rollup_t *r = xcalloc(1, sizeof *r);
    r->o = *o;
    return r;
}

static void bucket_free(rollup_t *r, bucket_t *b)
{
    r->c.cells -= ktab_count(b->cells);
    r->c.buckets--;
    ktab_destroy(&b->cells);
    free(b);
}

void rollup_destroy(rollup_t **pr)
{
    rollup_t *r = *pr;
    if (!r)
        return;
    for (int g = 0; g < RG_N; g++) {
        while (r->buckets[g]) {
            bucket_t *b = r->buckets[g];
            r->buckets[g] = b->next;
            bucket_free(r, b);
        }
    }
    mbuf_free(&r->lat);
    mbuf_free(&r->ttft);
    free(r);
    *pr = NULL;
}

static void bucket_bounds(const rollup_t *r, rgrain_t g, int64_t t, int64_t *start, int64_t *end)
{
    switch (g) {
    case RG_MINUTE:
        *start = t - t % MINUTE_NS;
        *end = *start + MINUTE_NS;
        break;
    case RG_HOUR:
        *start = t - t % HOUR_NS;
        *end = *start + HOUR_NS;
        break;
    default:
        *start = cal_start(r->o.cal, CAL_DAY, t);
        *end = cal_next(r->o.cal, CAL_DAY, t);
        break;
    }
}

/* The bucket of grain g starting at start (created unless it expired), or
 * NULL when events for it come too late. */
static bucket_t *bucket_at(rollup_t *r, rgrain_t g, int64_t start, int64_t end, int64_t watermark)
{
    if (end + r->o.lateness_ns <= watermark)
        return NULL;
    bucket_t **pp = &r->buckets[g];
    while (*pp && (*pp)->start < start)
        pp = &(*pp)->next;
    if (*pp && (*pp)->start == start)
        return *pp;
    bucket_t *b = xcalloc(1, sizeof *b);
    b->start = start;
    b->end = end;
    b->cells = ktab_new(sizeof(rcell_t), cell_free);
    b->next = *pp;
    *pp = b;
    r->c.buckets++;
    return b;
}

static char *put_str(char *p, span_t s)
{
    size_t n = s.len > MSG_MAX_STR ? MSG_MAX_STR : s.len;
    p[0] = (char)(n >> 8);
    p[1] = (char)n;
    if (n)
        memcpy(p + 2, s.p, n);
    return p + 2 + n;
}

static size_t make_key(char *key, dim_t d, const msg_usage_t *u)
{
    char *p = key;
    *p++ = (char)d;
    switch (d) {
    case D_MODEL:
        p = put_str(p, u->provider);
        p = put_str(p, u->model);
        p = put_str(p, u->operation);
        p = put_str(p, u->status);
        break;
    case D_USER:
        p = put_str(p, u->user);
        break;
    case D_ACCOUNT:
        p = put_str(p, u->account);
        break;
    case D_PROJECT:
        p = put_str(p, u->project);
        break;
    default:
        break;
    }
    return (size_t)(p - key);
}

static void cell_add(rcell_t *c, const msg_usage_t *u, bool error)
{
    c->requests += u->requests;
    c->errors += error ? u->requests : 0;
    c->tok[0] += u->input_tokens;
    c->tok[1] += u->cache_read_tokens;
    c->tok[2] += u->cache_write_tokens;
    c->tok[3] += u->cache_write_1h_tokens;
    c->tok[4] += u->output_tokens;
    c->tok[5] += u->reasoning_tokens;
    c->cost = win_sat_add(c->cost, u->cost_nusd);
    if (u->latency_us >= 0) {
        if (!c->lat)
            c->lat = sketch_new(0);
        sketch_add(c->lat, (double)u->latency_us);
    }
    if (u->ttft_us >= 0) {
        if (!c->ttft)
            c->ttft = sketch_new(0);
        sketch_add(c->ttft, (double)u->ttft_us);
    }
}

void rollup_add(rollup_t *r, const msg_usage_t *u, int64_t t, int64_t watermark)
{
    bucket_t *bk[RG_N];
    bool any = false;
    for (int g = 0; g < RG_N; g++) {
        int64_t start, end;
        bucket_bounds(r, (rgrain_t)g, t, &start, &end);
        bk[g] = bucket_at(r, (rgrain_t)g, start, end, watermark);
        any |= bk[g] != NULL;
    }
    if (!bk[RG_MINUTE])
        r->c.late_dropped++;
    if (!any)
        return;
    bool error = span_eq_cstr(u->status, "error");
    const span_t has[D_N] = { u->model, u->user, u->account, u->project };
    char key[MAX_KEY];
    for (int d = 0; d < D_N; d++) {
        if (!has[d].p || (d == D_USER && !r->o.users))
            continue;
        size_t klen = make_key(key, (dim_t)d, u);
        uint64_t h = ktab_hash(key, klen);
        for (int g = 0; g < RG_N; g++) {
            bucket_t *b = bk[g];
            if (!b)
                continue;
            bool created;
            rcell_t *c = ktab_put(b->cells, key, klen, h, &created);
            r->c.cells += created;
            cell_add(c, u, error);
            if (b->closed && !c->dirty)
                b->ndirty++;
            c->dirty = true;
        }
    }
}

static span_t get_str(const char **p)
{
    size_t n = (size_t)(unsigned char)(*p)[0] << 8 | (unsigned char)(*p)[1];
    span_t s = span_make(*p + 2, n);
    *p += 2 + n;
    return s;
}

static span_t encode_sketch(mbuf_t *buf, const sketch_t *s)
{
    if (!s)
        return SPAN_NULL;
    size_t n = sketch_encoded_size(s);
    mbuf_reset(buf);
    mbuf_reserve(buf, n);
    buf->len = sketch_encode(s, buf->data, n);
    return span_make(buf->data, buf->len);
}

static void send_cell(rollup_t *r, rgrain_t g, const bucket_t *b, rcell_t *c)
{
    span_t key = ktab_key(c);
    const char *p = key.p + 1;
    msg_rollup_t m = {
        .grain = span_cstr(grain_names[g]),
        .dim = span_cstr(dim_names[(unsigned char)key.p[0]]),
        .start = b->start,
        .end = b->end,
        .requests = c->requests,
        .errors = c->errors,
        .input_tokens = c->tok[0],
        .cache_read_tokens = c->tok[1],
        .cache_write_tokens = c->tok[2],
        .cache_write_1h_tokens = c->tok[3],
        .output_tokens = c->tok[4],
        .reasoning_tokens = c->tok[5],
        .cost_nusd = c->cost,
        .rev = c->rev,
        .shard = r->o.shard,
        .shards = r->o.shards,
    };
    if (key.p[0] == D_MODEL) {
        m.provider = get_str(&p);
        m.model = get_str(&p);
        m.operation = get_str(&p);
        m.status = get_str(&p);
    } else {
        m.key = get_str(&p);
    }
    m.latency = encode_sketch(&r->lat, c->lat);
    m.ttft = encode_sketch(&r->ttft, c->ttft);
    if (r->o.emit)
        r->o.emit(r->o.arg, g, &m);
}

/* Sends every cell (closing) or the dirty ones (amending). */
static void send_bucket(rollup_t *r, rgrain_t g, bucket_t *b, bool all)
{
    size_t it = 0;
    rcell_t *c;
    while ((c = ktab_next(b->cells, &it))) {
        if (!all && !c->dirty)
            continue;
        if (c->sent) {
            c->rev++;
            r->c.amended++;
        } else {
            r->c.records++;
        }
        send_cell(r, g, b, c);
        c->sent = true;
        c->dirty = false;
    }
    b->ndirty = 0;
}

void rollup_advance(rollup_t *r, int64_t watermark)
{
    for (int g = 0; g < RG_N; g++) {
        bucket_t **pp = &r->buckets[g];
        while (*pp) {
            bucket_t *b = *pp;
            if (!b->closed && watermark >= b->end + r->o.close_delay_ns) {
                send_bucket(r, (rgrain_t)g, b, true);
                b->closed = true;
                r->c.closed++;
            } else if (b->closed && b->ndirty) {
                send_bucket(r, (rgrain_t)g, b, false);
            }
            if (b->closed && watermark >= b->end + r->o.lateness_ns) {
                *pp = b->next;
                bucket_free(r, b);
                continue;
            }
            pp = &b->next;
        }
    }
}

/* ---- durable state -------------------------------------------------------- */

static void pack_sketch(msgpack_packer *pk, mbuf_t *buf, const sketch_t *s)
{
    if (!s) {
        msgpack_pack_nil(pk);
        return;
    }
    span_t e = encode_sketch(buf, s);
    snap_pack_bin(pk, e.p, e.len);
}

/* ["r", grain, start, end, closed, key, requests, errors, [tokens x6], cost,
 *  latency, ttft, rev, sent, dirty] */
void rollup_save(const rollup_t *r, snapw_t *w)
{
    msgpack_packer *pk = snapw_packer(w);
    mbuf_t buf = { 0 };
    for (int g = 0; g < RG_N; g++) {
        for (const bucket_t *b = r->buckets[g]; b; b = b->next) {
            size_t it = 0;
            const rcell_t *c;
            while ((c = ktab_next(b->cells, &it))) {
                span_t key = ktab_key(c);
                msgpack_pack_array(pk, 15);
                snap_pack_str(pk, "r", 1);
                msgpack_pack_int(pk, g);
                msgpack_pack_int64(pk, b->start);
                msgpack_pack_int64(pk, b->end);
                msgpack_pack_uint8(pk, b->closed);
                snap_pack_bin(pk, key.p, key.len);
                msgpack_pack_uint64(pk, c->requests);
                msgpack_pack_uint64(pk, c->errors);
                msgpack_pack_array(pk, NTOK);
                for (int i = 0; i < NTOK; i++)
                    msgpack_pack_uint64(pk, c->tok[i]);
                msgpack_pack_int64(pk, c->cost);
                pack_sketch(pk, &buf, c->lat);
                pack_sketch(pk, &buf, c->ttft);
                msgpack_pack_uint32(pk, c->rev);
                msgpack_pack_uint8(pk, c->sent);
                msgpack_pack_uint8(pk, c->dirty);
                snapw_record(w);
            }
        }
    }
    mbuf_free(&buf);
}

/* A key as make_key writes them: a known dim and exactly its strings. */
static bool key_ok(span_t key)
{
    if (key.len < 1 || (unsigned char)key.p[0] >= D_N)
        return false;
    int want = key.p[0] == D_MODEL ? 4 : 1;
    size_t off = 1;
    for (int i = 0; i < want; i++) {
        if (off + 2 > key.len)
            return false;
        size_t n = (size_t)(unsigned char)key.p[off] << 8 | (unsigned char)key.p[off + 1];
        if (n > MSG_MAX_STR || off + 2 + n > key.len)
            return false;
        off += 2 + n;
    }
    return off == key.len;
}

static int load_sketch(const msgpack_object *o, sketch_t **out)
{
    *out = NULL;
    if (!o || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_BIN)
        return -1;
    *out = sketch_decode(o->via.bin.ptr, o->via.bin.size, NULL, 0);
    return *out ? 0 : -1;
}

int rollup_load_record(rollup_t *r, snap_rec_t *rec, char *err, size_t errcap)
{
    int64_t g = snap_rec_i64(rec), start = snap_rec_i64(rec), end = snap_rec_i64(rec);
    uint64_t closed = snap_rec_u64(rec);
    span_t key = snap_rec_str(rec);
    uint64_t requests = snap_rec_u64(rec), errors = snap_rec_u64(rec);
    const msgpack_object *tok = snap_rec_obj(rec);
    int64_t cost = snap_rec_i64(rec);
    const msgpack_object *lat = snap_rec_obj(rec), *ttft = snap_rec_obj(rec);
    uint64_t rev = snap_rec_u64(rec), sent = snap_rec_u64(rec), dirty = snap_rec_u64(rec);
    if (!snap_rec_ok(rec) || g < 0 || g >= RG_N || start >= end || closed > 1 || !key_ok(key) ||
        errors > requests || !tok || tok->type != MSGPACK_OBJECT_ARRAY ||
        tok->via.array.size != NTOK || rev > UINT32_MAX || sent > 1 || dirty > 1 || cost < 0) {
        snprintf(err, errcap, "rollup record malformed");
        return -1;
    }
    snap_rec_t tr;
    snap_rec_open(&tr, tok);
    uint64_t t[NTOK];
    for (int i = 0; i < NTOK; i++)
        t[i] = snap_rec_u64(&tr);
    sketch_t *sl, *st;
    if (tr.bad || load_sketch(lat, &sl) < 0) {
        snprintf(err, errcap, "rollup record: bad tokens or latency sketch");
        return -1;
    }
    if (load_sketch(ttft, &st) < 0) {
        sketch_destroy(&sl);
        snprintf(err, errcap, "rollup record: bad ttft sketch");
        return -1;
    }
    /* INT64_MIN: a bucket from the snapshot is never "too late" */
    bucket_t *b = bucket_at(r, (rgrain_t)g, start, end, INT64_MIN);
    b->closed = closed;
    bool created;
    rcell_t *c = ktab_put(b->cells, key.p, key.len, ktab_hash(key.p, key.len), &created);
    if (!created) {
        sketch_destroy(&sl);
        sketch_destroy(&st);
        snprintf(err, errcap, "rollup record: a cell appears twice");
        return -1;
    }
    r->c.cells++;
    c->requests = requests;
    c->errors = errors;
    memcpy(c->tok, t, sizeof t);
    c->cost = cost;
    c->lat = sl;
    c->ttft = st;
    c->rev = (uint32_t)rev;
    c->sent = sent;
    c->dirty = dirty;
    if (closed && dirty)
        b->ndirty++;
    return 0;
}

size_t rollup_memory(const rollup_t *r)
{
    size_t n = 0;
    for (int g = 0; g < RG_N; g++) {
        for (const bucket_t *b = r->buckets[g]; b; b = b->next) {
            n += sizeof *b + ktab_memory(b->cells);
            size_t it = 0;
            const rcell_t *c;
            while ((c = ktab_next(b->cells, &it)))
                n += (c->lat ? sketch_memory(c->lat) : 0) + (c->ttft ? sketch_memory(c->ttft) : 0);
        }
    }
    return n;
}

const rollup_counters_t *rollup_counters(const rollup_t *r)
{
    return &r->c;
}

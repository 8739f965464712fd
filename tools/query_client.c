#include "query_client.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "fnv.h"
#include "mpr.h"
#include "tmtime.h"
#include "xalloc.h"

#define ANSWER_DEPTH 4 /* map -> windows/rows/budgets array -> map -> value */
#define EP_MAX       1024

struct query_client {
    void *ctx;
    char **eps; /* as listed */
    size_t neps;
    int64_t timeout_ns;
};

static const char *const state_names[] = { "ok", "warning", "exceeded" };

const char *query_client_state_name(int st)
{
    return st >= 0 && st <= 2 ? state_names[st] : "?";
}

static int parse_state(span_t s)
{
    for (int i = 0; i < 3; i++)
        if (span_eq_cstr(s, state_names[i]))
            return i;
    return -1;
}

uint32_t query_client_shard_of(span_t user, uint32_t n)
{
    if (n <= 1)
        return 0;
    return (uint32_t)(fnv1a64(user.p, user.len) & 0xff) % n;
}

/* ---- the client --------------------------------------------------------- */

query_client_t *query_client_new(const char *endpoints, int64_t timeout_ns, char *err, size_t cap)
{
    query_client_t *c = xcalloc(1, sizeof *c);
    c->timeout_ns = timeout_ns;
    const char *p = endpoints;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (!n || n >= EP_MAX || c->neps == QUERY_CLIENT_MAX_SHARDS) {
            snprintf(err, cap, "query endpoints '%s': %s", endpoints,
                     !n            ? "an endpoint is empty"
                     : n >= EP_MAX ? "an endpoint is too long"
                                   : "more than 256");
            query_client_destroy(&c);
            return NULL;
        }
        c->eps = xreallocarray(c->eps, c->neps + 1, sizeof *c->eps);
        c->eps[c->neps++] = xstrndup(p, n);
        if (!e)
            break;
        p = e + 1;
    }
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        snprintf(err, cap, "zmq_ctx_new: %s", zmq_strerror(errno));
        query_client_destroy(&c);
    }
    return c;
}

void query_client_destroy(query_client_t **pc)
{
    query_client_t *c = *pc;
    if (!c)
        return;
    for (size_t i = 0; i < c->neps; i++)
        free(c->eps[i]);
    free(c->eps);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c);
    *pc = NULL;
}

void query_client_answers_free(query_client_answers_t *a)
{
    for (size_t i = 0; i < a->n; i++) {
        free(a->v[i].endpoint);
        free(a->v[i].frame);
        msgpack_unpacked_destroy(&a->v[i].up);
    }
    free(a->v);
    *a = (query_client_answers_t){ 0 };
}

/* Where shard lives: the i-th of a list, or the one tcp endpoint's port + i. */
static int endpoint_of(const query_client_t *c, uint32_t shard, char *buf, size_t cap, char *err,
                       size_t errcap)
{
    if (c->neps > 1 || shard == 0) {
        assert(shard < c->neps);
        snprintf(buf, cap, "%s", c->eps[shard]);
        return 0;
    }
    const char *ep = c->eps[0];
    const char *colon = strrchr(ep, ':');
    char *end;
    errno = 0;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (strncmp(ep, "tcp://", 6) || !colon || errno || *end || port <= 0 ||
        port + (long)shard > 65535) {
        snprintf(err, errcap,
                 "the aggregator has several shards, and %s is not a tcp endpoint with a port to "
                 "count on from: list one endpoint per shard, separated by commas",
                 ep);
        return -1;
    }
    snprintf(buf, cap, "%.*s%ld", (int)(colon + 1 - ep), ep, port + (long)shard);
    return 0;
}

/* A printable copy of an error text from the network. */
static void clean_copy(char *dst, size_t cap, span_t s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)s.p[i] < 0x20 || s.p[i] == 0x7f ? '?' : s.p[i];
    dst[n] = '\0';
}

static const msgpack_object *field(const msgpack_object *m, const char *key)
{
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl && kl &&
            !memcmp(k->via.str.ptr, key, kl))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

static bool get_u32(const msgpack_object *m, const char *key, uint32_t lo, uint32_t hi, uint32_t *v)
{
    const msgpack_object *o = field(m, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 < lo || o->via.u64 > hi)
        return false;
    *v = (uint32_t)o->via.u64;
    return true;
}

/* Checks one received answer: one msgpack map, "ok" true, and the shard
 * numbers expected (want_shards 0: any). */
static int check_answer(query_client_answer_t *a, uint32_t want_shards, char *err, size_t cap)
{
    size_t off = 0;
    if (!a->len || mpr_validate(a->frame, a->len, ANSWER_DEPTH) < 0 ||
        msgpack_unpack_next(&a->up, a->frame, a->len, &off) != MSGPACK_UNPACK_SUCCESS ||
        a->up.data.type != MSGPACK_OBJECT_MAP) {
        snprintf(err, cap, "the answer from %s is not one msgpack map", a->endpoint);
        return -1;
    }
    const msgpack_object *m = &a->up.data, *ok = field(m, "ok");
    if (!ok || ok->type != MSGPACK_OBJECT_BOOLEAN) {
        snprintf(err, cap, "the answer from %s has no \"ok\"", a->endpoint);
        return -1;
    }
    if (!ok->via.boolean) {
        const msgpack_object *e = field(m, "error");
        char why[512] = "(no reason given)";
        if (e && e->type == MSGPACK_OBJECT_STR && e->via.str.size)
            clean_copy(why, sizeof why, span_make(e->via.str.ptr, e->via.str.size));
        snprintf(err, cap, "the aggregator says: %s", why);
        return -1;
    }
    uint32_t shard, shards;
    if (!get_u32(m, "shards", 1, QUERY_CLIENT_MAX_SHARDS, &shards) ||
        !get_u32(m, "shard", 0, shards - 1, &shard)) {
        snprintf(err, cap, "the answer from %s has no valid \"shard\" and \"shards\"", a->endpoint);
        return -1;
    }
    if (shard != a->shard || (want_shards && shards != want_shards)) {
        char want[64] = "";
        if (want_shards)
            snprintf(want, sizeof want, " of %u", want_shards);
        snprintf(err, cap,
                 "the aggregator at %s says it is shard %u of %u, where shard %u%s was expected: "
                 "check [aggregator] query (or --endpoint) against the shards running",
                 a->endpoint, shard, shards, a->shard, want);
        return -1;
    }
    a->shards = shards;
    return 0;
}

static int recv_answer(void *sock, query_client_answer_t *a)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    bool more = zmq_msg_more(&m);
    a->len = zmq_msg_size(&m);
    a->frame = xmalloc(a->len ? a->len : 1);
    memcpy(a->frame, zmq_msg_data(&m), a->len);
    zmq_msg_close(&m);
    if (more)
        a->len = 0; /* not the one frame of the protocol: rejected as not msgpack */
    return 0;
}

static void *open_socket(query_client_t *c, const query_client_answer_t *a, const void *req,
                         size_t len, char *err, size_t cap)
{
    void *s = zmq_socket(c->ctx, ZMQ_REQ);
    if (!s) {
        snprintf(err, cap, "zmq_socket: %s", zmq_strerror(errno));
        return NULL;
    }
    int linger = 0;
    int64_t max = QUERY_CLIENT_MAX_ANSWER;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (zmq_connect(s, a->endpoint) != 0 || zmq_send(s, req, len, ZMQ_DONTWAIT) < 0) {
        snprintf(err, cap, "query endpoint %s: %s", a->endpoint, zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    return s;
}

static void timeout_error(const query_client_t *c, const query_client_answer_t *a, size_t n,
                          const bool *done, char *err, size_t cap)
{
    char eps[2048];
    size_t k = 0;
    eps[0] = '\0';
    for (size_t i = 0; i < n && k < sizeof eps; i++)
        if (!done[i])
            k += (size_t)snprintf(eps + k, sizeof eps - k, "%s%s", k ? ", " : "", a[i].endpoint);
    snprintf(err, cap, "no answer from the aggregator at %s within %gs", eps,
             (double)c->timeout_ns / 1e9);
}

/* Asks the shards shards[0..n) at once and appends their answers to out
 * (also on failure, so that the caller frees them). */
static int ask_set(query_client_t *c, const void *req, size_t len, const uint32_t *shards, size_t n,
                   uint32_t want_shards, int64_t deadline, query_client_answers_t *out, char *err,
                   size_t cap)
{
    out->v = xreallocarray(out->v, out->n + n, sizeof *out->v);
    query_client_answer_t *a = out->v + out->n;
    for (size_t i = 0; i < n; i++) {
        a[i] = (query_client_answer_t){ .shard = shards[i] };
        msgpack_unpacked_init(&a[i].up);
    }
    out->n += n;
    void **socks = xcalloc(n, sizeof *socks);
    bool *done = xcalloc(n, sizeof *done);
    zmq_pollitem_t *items = xcalloc(n, sizeof *items);
    size_t *which = xcalloc(n, sizeof *which);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char ep[EP_MAX + 8];
        rc = endpoint_of(c, shards[i], ep, sizeof ep, err, cap);
        a[i].endpoint = xstrdup(rc == 0 ? ep : "?");
        if (rc == 0 && !(socks[i] = open_socket(c, &a[i], req, len, err, cap)))
            rc = -1;
    }
    size_t left = rc == 0 ? n : 0;
    while (left && rc == 0) {
        int64_t wait = deadline - tmtime_mono_ns();
        if (wait <= 0)
            break;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (!done[i]) {
                items[k] = (zmq_pollitem_t){ .socket = socks[i], .events = ZMQ_POLLIN };
                which[k++] = i;
            }
        int r = zmq_poll(items, (int)k, (long)(wait / TMTIME_NS_PER_MS) + 1);
        if (r < 0 && errno != EINTR) {
            snprintf(err, cap, "zmq_poll: %s", zmq_strerror(errno));
            rc = -1;
        }
        for (size_t j = 0; r > 0 && j < k && rc == 0; j++) {
            size_t i = which[j];
            if (!(items[j].revents & ZMQ_POLLIN) || recv_answer(socks[i], &a[i]) < 0)
                continue;
            done[i] = true;
            left--;
            rc = check_answer(&a[i], want_shards, err, cap);
        }
    }
    if (left && rc == 0) {
        timeout_error(c, a, n, done, err, cap);
        rc = -1;
    }
    for (size_t i = 0; i < n; i++)
        if (socks[i])
            zmq_close(socks[i]);
    free(socks);
    free(done);
    free(items);
    free(which);
    return rc;
}

static int ask_range(query_client_t *c, const void *req, size_t len, uint32_t from, uint32_t to,
                     uint32_t want_shards, int64_t deadline, query_client_answers_t *out, char *err,
                     size_t cap)
{
    uint32_t idx[QUERY_CLIENT_MAX_SHARDS];
    for (uint32_t i = from; i < to; i++)
        idx[i - from] = i;
    return ask_set(c, req, len, idx, to - from, want_shards, deadline, out, err, cap);
}

int query_client_ask_all(query_client_t *c, const void *req, size_t len,
                         query_client_answers_t *out, char *err, size_t cap)
{
    *out = (query_client_answers_t){ 0 };
    int64_t deadline = tmtime_mono_ns() + c->timeout_ns;
    if (c->neps > 1)
        return ask_range(c, req, len, 0, (uint32_t)c->neps, (uint32_t)c->neps, deadline, out, err,
                         cap);
    /* one endpoint: shard 0 tells how many there are */
    if (ask_range(c, req, len, 0, 1, 0, deadline, out, err, cap) < 0)
        return -1;
    uint32_t n = out->v[0].shards;
    return n > 1 ? ask_range(c, req, len, 1, n, n, deadline, out, err, cap) : 0;
}

int query_client_ask_owner(query_client_t *c, const void *req, size_t len, span_t user,
                           query_client_answers_t *out, char *err, size_t cap)
{
    *out = (query_client_answers_t){ 0 };
    int64_t deadline = tmtime_mono_ns() + c->timeout_ns;
    uint32_t s;
    if (c->neps > 1) {
        s = query_client_shard_of(user, (uint32_t)c->neps);
        return ask_range(c, req, len, s, s + 1, (uint32_t)c->neps, deadline, out, err, cap);
    }
    if (ask_range(c, req, len, 0, 1, 0, deadline, out, err, cap) < 0)
        return -1;
    uint32_t n = out->v[0].shards;
    s = query_client_shard_of(user, n);
    if (s == 0)
        return 0;
    query_client_answers_free(out);
    return ask_range(c, req, len, s, s + 1, n, deadline, out, err, cap);
}

/* ---- reading answers ---------------------------------------------------- */

/* Field readers with a sticky error: the first failure is reported. */
typedef struct {
    char *err;
    size_t cap;
    bool bad;
} rd_t;

static const msgpack_object *rd_get(rd_t *r, const msgpack_object *m, const char *key,
                                    msgpack_object_type t, const char *what)
{
    const msgpack_object *o = field(m, key);
    if (o && (o->type == t ||
              (t == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)))
        return o;
    if (!r->bad)
        snprintf(r->err, r->cap, "the answer's \"%s\" is missing or not %s", key, what);
    r->bad = true;
    return NULL;
}

static int64_t rd_i64(rd_t *r, const msgpack_object *m, const char *key)
{
    const msgpack_object *o = rd_get(r, m, key, MSGPACK_OBJECT_NEGATIVE_INTEGER, "an integer");
    if (!o)
        return 0;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    if (o->via.u64 <= INT64_MAX)
        return (int64_t)o->via.u64;
    if (!r->bad)
        snprintf(r->err, r->cap, "the answer's \"%s\" is too large", key);
    r->bad = true;
    return 0;
}

static uint64_t rd_u64(rd_t *r, const msgpack_object *m, const char *key)
{
    const msgpack_object *o =
        rd_get(r, m, key, MSGPACK_OBJECT_POSITIVE_INTEGER, "a non-negative integer");
    return o ? o->via.u64 : 0;
}

static span_t rd_str(rd_t *r, const msgpack_object *m, const char *key)
{
    const msgpack_object *o = rd_get(r, m, key, MSGPACK_OBJECT_STR, "a string");
    if (!o)
        return span_make("", 0);
    return span_make(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
}

static bool rd_bool(rd_t *r, const msgpack_object *m, const char *key)
{
    const msgpack_object *o = rd_get(r, m, key, MSGPACK_OBJECT_BOOLEAN, "a boolean");
    return o && o->via.boolean;
}

static const msgpack_object_array *rd_array(rd_t *r, const msgpack_object *m, const char *key)
{
    const msgpack_object *o = rd_get(r, m, key, MSGPACK_OBJECT_ARRAY, "an array");
    return o ? &o->via.array : NULL;
}

static int rd_state(rd_t *r, const msgpack_object *m)
{
    int st = parse_state(rd_str(r, m, "state"));
    if (st < 0 && !r->bad) {
        snprintf(r->err, r->cap, "the answer's \"state\" is not ok, warning or exceeded");
        r->bad = true;
    }
    return st;
}

static bool rd_map(rd_t *r, const msgpack_object *o, const char *what)
{
    if (o->type == MSGPACK_OBJECT_MAP)
        return true;
    if (!r->bad)
        snprintf(r->err, r->cap, "the answer's %s is not a map", what);
    r->bad = true;
    return false;
}

static int64_t add_sat(int64_t a, int64_t b)
{
    int64_t s;
    return __builtin_add_overflow(a, b, &s) ? (b > 0 ? INT64_MAX : INT64_MIN) : s;
}

/* ---- quota -------------------------------------------------------------- */

int query_client_quota_decode(const msgpack_object *o, query_client_quota_t *q, char *err,
                              size_t cap)
{
    rd_t r = { err, cap, false };
    memset(q, 0, sizeof *q);
    if (!rd_map(&r, o, "quota"))
        return -1;
    q->subject = rd_str(&r, o, "subject");
    q->id = rd_str(&r, o, "id");
    q->known = rd_bool(&r, o, "known");
    q->state = rd_state(&r, o);
    q->warn_pct = rd_i64(&r, o, "warn_pct");
    q->now = rd_i64(&r, o, "now");
    q->window_requests = rd_u64(&r, o, "window_requests");
    const msgpack_object_array *w = rd_array(&r, o, "windows");
    if (w && w->size > QUERY_CLIENT_MAX_WINDOWS) {
        snprintf(err, cap, "the answer has more than %d quota windows", QUERY_CLIENT_MAX_WINDOWS);
        return -1;
    }
    for (uint32_t i = 0; w && i < w->size && rd_map(&r, &w->ptr[i], "window"); i++) {
        query_client_qwin_t *x = &q->w[q->nw++];
        const msgpack_object *m = &w->ptr[i];
        x->window = rd_str(&r, m, "window");
        x->unit = rd_str(&r, m, "unit");
        x->used = rd_i64(&r, m, "used");
        x->limit = rd_i64(&r, m, "limit");
        x->state = rd_state(&r, m);
        x->start = rd_i64(&r, m, "start");
        x->reset = rd_i64(&r, m, "reset");
    }
    return r.bad ? -1 : 0;
}

/* as the aggregator's quota judge */
static int judge(int64_t used, int64_t limit, int64_t warn_pct)
{
    if (limit <= 0)
        return 0;
    if (used >= limit)
        return 2;
    return (__int128)used * 100 >= (__int128)limit * warn_pct ? 1 : 0;
}

void query_client_quota_add(query_client_quota_t *q, const query_client_quota_t *part)
{
    q->known = q->known || part->known;
    q->window_requests += part->window_requests;
    if (part->now > q->now)
        q->now = part->now;
    for (size_t i = 0; i < part->nw; i++) {
        const query_client_qwin_t *p = &part->w[i];
        for (size_t j = 0; j < q->nw; j++) {
            query_client_qwin_t *w = &q->w[j];
            if (!span_eq(w->window, p->window) || !span_eq(w->unit, p->unit))
                continue;
            w->used = add_sat(w->used, p->used);
            if (p->reset && (!w->reset || p->reset < w->reset))
                w->reset = p->reset; /* the sliding window: the next expiry anywhere */
            break;
        }
    }
    q->state = 0;
    for (size_t j = 0; j < q->nw; j++) {
        q->w[j].state = judge(q->w[j].used, q->w[j].limit, q->warn_pct);
        if (q->w[j].state > q->state)
            q->state = q->w[j].state;
    }
}

/* ---- top and usage ------------------------------------------------------ */

int query_client_rows_decode(const msgpack_object *o, query_client_rows_t *rw, char *err,
                             size_t cap)
{
    rd_t r = { err, cap, false };
    memset(rw, 0, sizeof *rw);
    if (!rd_map(&r, o, "rows answer"))
        return -1;
    rw->by = rd_str(&r, o, "by");
    rw->metric = rd_str(&r, o, "metric");
    rw->window = rd_i64(&r, o, "window");
    rw->from = rd_i64(&r, o, "from");
    rw->to = rd_i64(&r, o, "to");
    rw->keys = rd_u64(&r, o, "keys");
    rw->truncated = rd_bool(&r, o, "truncated");
    const msgpack_object_array *a = rd_array(&r, o, "rows");
    if (a && a->size)
        rw->rows = xcalloc(a->size, sizeof *rw->rows);
    for (uint32_t i = 0; a && i < a->size && rd_map(&r, &a->ptr[i], "row"); i++) {
        query_client_row_t *x = &rw->rows[rw->n++];
        x->key = rd_str(&r, &a->ptr[i], "key");
        x->requests = rd_u64(&r, &a->ptr[i], "requests");
        x->tokens = rd_u64(&r, &a->ptr[i], "tokens");
        x->cost_nusd = rd_i64(&r, &a->ptr[i], "cost_nusd");
    }
    if (r.bad)
        query_client_rows_free(rw);
    return r.bad ? -1 : 0;
}

void query_client_rows_free(query_client_rows_t *r)
{
    free(r->rows);
    r->rows = NULL;
    r->n = 0;
}

static int key_cmp(span_t a, span_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.p, b.p, n) : 0;
    return c ? c : (a.len > b.len) - (a.len < b.len);
}

static int row_key_cmp(const void *x, const void *y)
{
    return key_cmp(((const query_client_row_t *)x)->key, ((const query_client_row_t *)y)->key);
}

/* metric: 0 cost, 1 tokens, 2 requests */
static int row_metric_cmp(const void *x, const void *y, void *arg)
{
    const query_client_row_t *a = x, *b = y;
    int metric = *(const int *)arg;
    if (metric == 0 && a->cost_nusd != b->cost_nusd)
        return a->cost_nusd > b->cost_nusd ? -1 : 1;
    uint64_t ma = metric == 1 ? a->tokens : a->requests, mb = metric == 1 ? b->tokens : b->requests;
    if (metric != 0 && ma != mb)
        return ma > mb ? -1 : 1;
    return key_cmp(a->key, b->key);
}

void query_client_rows_merge(const query_client_rows_t *parts, size_t n, bool disjoint,
                             int64_t limit, query_client_rows_t *out)
{
    assert(n > 0);
    *out = parts[0];
    out->rows = NULL;
    out->n = 0;
    out->keys = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i].n;
    out->rows = xcalloc(total ? total : 1, sizeof *out->rows);
    for (size_t i = 0; i < n; i++) {
        if (parts[i].n)
            memcpy(out->rows + out->n, parts[i].rows, parts[i].n * sizeof *out->rows);
        out->n += parts[i].n;
        out->truncated = out->truncated || parts[i].truncated;
        out->keys += parts[i].keys;
        out->from = parts[i].from < out->from ? parts[i].from : out->from;
        out->to = parts[i].to > out->to ? parts[i].to : out->to;
    }
    if (!disjoint && out->n > 1) {
        qsort(out->rows, out->n, sizeof *out->rows, row_key_cmp);
        size_t k = 0;
        for (size_t i = 1; i < out->n; i++) {
            query_client_row_t *d = &out->rows[k], *s = &out->rows[i];
            if (span_eq(d->key, s->key)) {
                d->requests += s->requests;
                d->tokens += s->tokens;
                d->cost_nusd = add_sat(d->cost_nusd, s->cost_nusd);
            } else {
                out->rows[++k] = *s;
            }
        }
        out->n = k + 1;
    }
    if (!disjoint)
        out->keys = out->n; /* a lower bound when a part was cut */
    int metric = span_eq_cstr(out->metric, "tokens")     ? 1
                 : span_eq_cstr(out->metric, "requests") ? 2
                                                         : 0;
    qsort_r(out->rows, out->n, sizeof *out->rows, row_metric_cmp, &metric);
    if (limit > 0 && out->n > (uint64_t)limit) {
        out->n = (size_t)limit;
        out->truncated = true;
    }
    if (out->keys > out->n)
        out->truncated = true;
}

/* ---- budgets ------------------------------------------------------------ */

int query_client_budgets_decode(const msgpack_object *o, query_client_budgets_t *b, char *err,
                                size_t cap)
{
    rd_t r = { err, cap, false };
    memset(b, 0, sizeof *b);
    if (!rd_map(&r, o, "budgets answer"))
        return -1;
    b->now = rd_i64(&r, o, "now");
    const msgpack_object_array *a = rd_array(&r, o, "budgets");
    if (r.bad)
        return -1;
    b->v = xcalloc(a->size ? a->size : 1, sizeof *b->v);
    for (uint32_t i = 0; i < a->size; i++) {
        char why[256];
        if (msg_budget_unpack(&a->ptr[i], &b->v[i].b, why, sizeof why) < 0) {
            snprintf(err, cap, "a budget in the answer: %s", why);
            query_client_budgets_free(b);
            return -1;
        }
        b->v[i].parts = 1;
        b->n++;
    }
    return 0;
}

void query_client_budgets_free(query_client_budgets_t *b)
{
    free(b->v);
    b->v = NULL;
    b->n = 0;
}

static int budget_cmp(const void *x, const void *y)
{
    const msg_budget_t *a = &((const query_client_budget_t *)x)->b,
                       *b = &((const query_client_budget_t *)y)->b;
    int c = key_cmp(a->name, b->name);
    if (!c && !a->scope_value.p != !b->scope_value.p)
        c = a->scope_value.p ? 1 : -1;
    if (!c)
        c = key_cmp(a->scope_value, b->scope_value);
    if (!c)
        c = (a->period_start > b->period_start) - (a->period_start < b->period_start);
    if (!c)
        c = (int)b->partial - (int)a->partial;
    return c;
}

static bool same_part(const msg_budget_t *a, const msg_budget_t *b)
{
    return a->partial && b->partial && span_eq(a->name, b->name) &&
           !a->scope_value.p == !b->scope_value.p && span_eq(a->scope_value, b->scope_value) &&
           a->period_start == b->period_start;
}

static int64_t clamp64(__int128 v)
{
    return v > INT64_MAX ? INT64_MAX : v < 0 ? 0 : (int64_t)v;
}

/* Judges a summed budget as the aggregator judges one of its own. The
 * last hour's rate is what the rate forecast adds over the rest of the
 * period, so the parts' forecasts give the whole's rate. */
static void budget_rejudge(msg_budget_t *m)
{
    int64_t lim = m->limit_nusd, now = m->ts;
    m->remaining_nusd = lim - m->spent_nusd;
    if (m->spent_nusd >= lim)
        m->state = span_cstr("exceeded");
    else if ((__int128)m->spent_nusd * 100 >= (__int128)lim * m->warn_pct)
        m->state = span_cstr("warning");
    else
        m->state = span_cstr("ok");
    int64_t left = m->period_end - now, more = m->forecast_rate_nusd - m->spent_nusd;
    if (m->spent_nusd >= lim)
        m->exhaust_ts = now; /* when the parts crossed together is not in the answers */
    else if (left > 0 && more > 0)
        m->exhaust_ts = clamp64(now + (__int128)(lim - m->spent_nusd) * left / more);
    else
        m->exhaust_ts = 0;
}

void query_client_budgets_merge(const query_client_budgets_t *parts, size_t n,
                                query_client_budgets_t *out)
{
    size_t total = 0;
    *out = (query_client_budgets_t){ 0 };
    for (size_t i = 0; i < n; i++) {
        total += parts[i].n;
        if (parts[i].now > out->now)
            out->now = parts[i].now;
    }
    out->v = xcalloc(total ? total : 1, sizeof *out->v);
    for (size_t i = 0; i < n; i++) {
        if (parts[i].n)
            memcpy(out->v + out->n, parts[i].v, parts[i].n * sizeof *out->v);
        out->n += parts[i].n;
    }
    if (out->n > 1)
        qsort(out->v, out->n, sizeof *out->v, budget_cmp);
    size_t k = 0;
    for (size_t i = 0; i < out->n; i++) {
        query_client_budget_t *d = &out->v[k ? k - 1 : 0], *s = &out->v[i];
        if (k && same_part(&d->b, &s->b)) {
            d->b.spent_nusd = add_sat(d->b.spent_nusd, s->b.spent_nusd);
            d->b.forecast_avg_nusd = add_sat(d->b.forecast_avg_nusd, s->b.forecast_avg_nusd);
            d->b.forecast_rate_nusd = add_sat(d->b.forecast_rate_nusd, s->b.forecast_rate_nusd);
            d->b.ts = s->b.ts > d->b.ts ? s->b.ts : d->b.ts;
            d->parts++;
        } else {
            out->v[k++] = *s;
        }
    }
    out->n = k;
    for (size_t i = 0; i < out->n; i++)
        if (out->v[i].b.partial)
            budget_rejudge(&out->v[i].b);
}

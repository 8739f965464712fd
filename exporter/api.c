/* api: see api.h.
 *
 * Everything runs on the exporter's one thread, from MHD's callbacks
 * (web_run), the bus (api_call) and the loop (api_work); questions to the
 * aggregator and PostgreSQL are synchronous, bounded by [exporter]
 * query_timeout.
 *
 * The key is never kept: api_new hashes it with BLAKE2b under a random key
 * of this process and wipes it; a request's key is hashed the same way and
 * the two digests compared with sodium_memcmp, so neither the time taken
 * nor the length of what was sent tells anything about the key.
 *
 * The stream. Each call gets an id and goes, as its msgpack record, into
 * a ring of the last [exporter] stream_buffer calls; its event text
 * ("id: N\nevent: call\ndata: {...}\n\n") is made when a stream first
 * sends it (so calls nobody watches cost a copy, not JSON). Ids start at
 * the wall clock in microseconds when the exporter starts and count up by
 * one per call, so they keep increasing across restarts and a client
 * resuming with an id from before a restart is told about the gap. A stream connection keeps
 * only the id of the next call it owes and a buffer of at most one read's
 * worth (MHD's max, plus the one event that crosses it); with nothing to
 * send its connection is suspended, and api_call (a new call) or api_work
 * (a keepalive due) resumes it. A client that stops reading leaves its
 * connection unsuspended while the ring moves on; once the next call it
 * owes has left the ring it is dropped (counted) and its connection given
 * a 1 s timeout so MHD closes it. A client that was merely waiting when a
 * burst overran the ring gets a gap event instead and carries on. */
#include "api.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "dec.h"
#include "log.h"
#include "mbuf.h"
#include "query_client.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define MAX_STREAMS 64
#define STREAM_BLOCK 16384                      /* MHD's read size for a stream */
#define KEEPALIVE_NS (15 * TMTIME_NS_PER_SEC)   /* a comment line this often */
#define BUS_FRESH_NS (30 * TMTIME_NS_PER_SEC)   /* /health/ready: bus seen this recently */
#define READY_CACHE_NS (5 * TMTIME_NS_PER_SEC)  /* the aggregator check, cached */
#define PG_RETRY_NS (2 * TMTIME_NS_PER_SEC)     /* after a failed connect */
#define MAX_KEY_FILE 4096
#define MAX_DAYS 366
#define MAX_TOP 10000
#define NSTATUS 16

/* A call in the ring: as msgpack (the bus record) until a stream wants it,
 * then also as its event text, rendered once. Slots keep their buffers. */
typedef struct {
    uint64_t id;
    uint64_t seq;
    uint32_t idx;
    size_t src_len; /* rec: src, then the record */
    mbuf_t rec, text;
} event_t;

typedef struct stream {
    api_t *api; /* NULL once api_destroy let it go */
    struct MHD_Connection *conn;
    struct stream *prev, *next;
    uint64_t next_id;  /* the next call it owes */
    bool suspended;    /* by us, not yet resumed */
    bool resumed;      /* since its last read: look whether the client left first */
    bool waiting;      /* caught up when suspended: a burst past the ring is a gap, not a drop */
    bool dropped;      /* fell out of the ring while not reading: ends at the next read */
    bool hello;        /* the opening comment is owed */
    int64_t last_send; /* when bytes last went out (the api's clock) */
    mbuf_t out;        /* bounded: one read's worth and one event */
    size_t off;
} stream_t;

struct api {
    model_t *model;
    stats_t *st;
    bool has_key;
    unsigned char hkey[crypto_generichash_KEYBYTES]; /* this process's hash key */
    unsigned char khash[crypto_generichash_BYTES];   /* the API key's hash */
    query_client_t *qc;
    int64_t query_timeout_ns, history_ns;
    char *database, *timezone;
    PGconn *pg;
    int64_t pg_retry_at; /* monotonic */
    char pg_err[256];
    log_complain_t lc_auth, lc_agg, lc_pg, lc_stream;

    event_t *ring;
    size_t ring_cap;
    uint64_t first_id, next_id;
    stream_t *streams;
    size_t nstreams;

    int64_t now, bus_seen, started;
    int64_t ready_until; /* monotonic: the cached aggregator check holds until then */
    bool ready_agg;
    char ready_why[256];

    struct {
        unsigned status;
        int64_t *c;
    } status[NSTATUS];
    int64_t *c_unauthorized, *c_stream_dropped, *c_stream_calls, *c_stream_gaps, *g_streams;
    int64_t *c_stream_render_errors;
    int64_t *c_agg_timeout, *c_agg_error, *c_pg_unavailable, *c_pg_timeout, *c_pg_error;
};

static int64_t clock_now(const api_t *a) { return a->now ? a->now : tmtime_now_ns(); }

/* ---- JSON ------------------------------------------------------------------------- */

/* A span as a JSON string (bytes that are not UTF-8 become U+FFFD), or null. */
static json_t *jstr(span_t s)
{
    if (!s.p)
        return json_null();
    if (utf8_valid(s.p, s.len) && !memchr(s.p, '\0', s.len))
        return json_stringn(s.p, s.len);
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

static json_t *jcstr(const char *s) { return jstr(span_cstr(s)); }

static json_t *jint(int64_t v) { return json_integer((json_int_t)v); }

/* Counts above INT64_MAX do not happen (tokens per record are capped at
 * 2^40); clamp rather than wrap if they ever did. */
static json_t *juint(uint64_t v) { return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v); }

/* Dollars as an exact decimal with nine places: "0.004750000". */
static json_t *jusd(int64_t nusd)
{
    char buf[DEC_FMT_MAX];
    if (dec_format(nusd, 9, false, buf, sizeof buf) < 0)
        return json_null();
    return json_string(buf);
}

/* key_nusd (an integer) and key_usd (the decimal string) from "key_nusd";
 * a key without _nusd gets _nusd and _usd appended. */
static void set_money(json_t *o, const char *key, int64_t nusd)
{
    char k[64];
    size_t n = strlen(key);
    if (n > 5 && !strcmp(key + n - 5, "_nusd"))
        n -= 5;
    snprintf(k, sizeof k, "%.*s_nusd", (int)n, key);
    json_object_set_new(o, k, jint(nusd));
    snprintf(k, sizeof k, "%.*s_usd", (int)n, key);
    json_object_set_new(o, k, jusd(nusd));
}

/* ---- replies ---------------------------------------------------------------------- */

static void count_status(api_t *a, unsigned status)
{
    for (size_t i = 0; i < NSTATUS; i++) {
        if (a->status[i].status == status) {
            (*a->status[i].c)++;
            return;
        }
        if (!a->status[i].status) {
            char label[32];
            snprintf(label, sizeof label, "status=%u", status);
            a->status[i].status = status;
            a->status[i].c = stats_counter(a->st, "api_requests_total", label);
            (*a->status[i].c)++;
            return;
        }
    }
    (*stats_counter(a->st, "api_requests_total", "status=other"))++;
}

/* Queues j (consumed) as the answer; allow: the Allow header of a 405. */
static enum MHD_Result reply_allow(api_t *a, struct MHD_Connection *c, unsigned status, json_t *j,
                                   const char *allow)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s)
        s = xstrdup("{\"error\":\"the answer could not be written as JSON\"}");
    size_t n = strlen(s);
    char *body = xmalloc(n + 1);
    memcpy(body, s, n);
    body[n] = '\n';
    free(s);
    struct MHD_Response *r = MHD_create_response_from_buffer(n + 1, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"tokmon\"");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow ? allow : "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    count_status(a, status);
    return rc;
}

static enum MHD_Result reply(api_t *a, struct MHD_Connection *c, unsigned status, json_t *j)
{
    return reply_allow(a, c, status, j, NULL);
}

static enum MHD_Result reply_error(api_t *a, struct MHD_Connection *c, unsigned status,
                                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result reply_error(api_t *a, struct MHD_Connection *c, unsigned status,
                                   const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_object();
    json_object_set_new(j, "error", jcstr(msg));
    return reply(a, c, status, j);
}

/* ---- parameters ------------------------------------------------------------------- */

static const char *arg(struct MHD_Connection *c, const char *name)
{
    return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

/* A decimal integer in [lo, hi]; 0, or -1 when it is anything else. */
static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *v)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end || x > (unsigned long long)hi || (int64_t)x < lo)
        return -1;
    *v = (int64_t)x;
    return 0;
}

/* "300", "300s", "5m", "1h", "1d" as seconds (1 to INT32_MAX), as tokmonctl
 * takes them; -1 when bad. */
static int64_t parse_duration(const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    int64_t mul = !*end || !strcmp(end, "s") ? 1
                  : !strcmp(end, "m")        ? 60
                  : !strcmp(end, "h")        ? 3600
                  : !strcmp(end, "d")        ? 86400
                                             : 0;
    if (errno || !mul || v == 0 || v > INT32_MAX / (unsigned long long)mul)
        return -1;
    return (int64_t)v * mul;
}

/* An id or name from the request: 1 to 1024 bytes of UTF-8. */
static bool id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    return n && n <= MSG_MAX_STR && utf8_valid(s, n);
}

static const char *const dims[] = { "user", "account", "model", "project" };

static const char *dim_of(const char *s)
{
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (!strcmp(s, dims[i]))
            return dims[i];
    return NULL;
}

/* ---- the key ---------------------------------------------------------------------- */

static int read_key(api_t *a, const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "[exporter] api_key_file %s: %s", path, strerror(errno));
        return -1;
    }
    char buf[MAX_KEY_FILE + 1];
    size_t n = fread(buf, 1, sizeof buf, f);
    bool bad = ferror(f);
    struct stat sb;
    bool loose = fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077);
    fclose(f);
    int rc = -1;
    if (bad) {
        snprintf(err, cap, "[exporter] api_key_file %s: cannot read it", path);
        goto out;
    }
    if (n > MAX_KEY_FILE) {
        snprintf(err, cap, "[exporter] api_key_file %s: longer than %d bytes", path, MAX_KEY_FILE);
        goto out;
    }
    /* one line: the key, then a newline (or \r\n) at most */
    size_t len = 0;
    while (len < n && buf[len] != '\n' && buf[len] != '\r')
        len++;
    for (size_t i = len; i < n; i++) {
        if (buf[i] != '\n' && buf[i] != '\r') {
            snprintf(err, cap, "[exporter] api_key_file %s: more than one line; put only the key "
                               "in it", path);
            goto out;
        }
    }
    if (len == 0) {
        snprintf(err, cap, "[exporter] api_key_file %s is empty: put the API key on its first line",
                 path);
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)buf[i] <= 0x20 || (unsigned char)buf[i] >= 0x7f) {
            snprintf(err, cap, "[exporter] api_key_file %s: the key must be printable ASCII "
                               "without spaces (it travels in an HTTP header)", path);
            goto out;
        }
    }
    if (len < 16)
        log_warn("the API key is short: use 32 random characters or more",
                 "api_key_file=%s length=%zu", path, len);
    if (loose)
        log_warn("the API key file is readable by others than its owner", "api_key_file=%s", path);
    randombytes_buf(a->hkey, sizeof a->hkey);
    crypto_generichash(a->khash, sizeof a->khash, (const unsigned char *)buf, len, a->hkey,
                       sizeof a->hkey);
    a->has_key = true;
    rc = 0;
out:
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* The key a request presents: X-Api-Key, else Authorization: Bearer. */
static bool authorized(const api_t *a, struct MHD_Connection *c)
{
    const char *k = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Api-Key");
    if (!k) {
        const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_AUTHORIZATION);
        if (!h || strncasecmp(h, "Bearer ", 7))
            return false;
        k = h + 7;
    }
    while (*k == ' ' || *k == '\t')
        k++;
    size_t n = strlen(k);
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t'))
        n--;
    unsigned char h[crypto_generichash_BYTES];
    crypto_generichash(h, sizeof h, (const unsigned char *)k, n, a->hkey, sizeof a->hkey);
    return sodium_memcmp(h, a->khash, sizeof h) == 0;
}

/* ---- the aggregator ----------------------------------------------------------------- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Asks every shard (or the one owning user owner). 0, or -1 with the HTTP
 * status and the reason: no answer in time 504, the aggregator refusing the
 * question 400 (it judges what the exporter passed on), anything else 502. */
static int ask(api_t *a, const mbuf_t *req, const char *owner, query_client_answers_t *ans,
               unsigned *status, char *err, size_t cap)
{
    int rc = owner ? query_client_ask_owner(a->qc, req->data, req->len, span_cstr(owner), ans, err,
                                            cap)
                   : query_client_ask_all(a->qc, req->data, req->len, ans, err, cap);
    if (rc == 0) {
        log_release(&a->lc_agg, "the aggregator answers again", NULL);
        return 0;
    }
    if (!strncmp(err, "the aggregator says: ", 21)) {
        *status = MHD_HTTP_BAD_REQUEST;
        return -1;
    }
    bool timeout = !strncmp(err, "no answer", 9);
    *status = timeout ? MHD_HTTP_GATEWAY_TIMEOUT : MHD_HTTP_BAD_GATEWAY;
    (*(timeout ? a->c_agg_timeout : a->c_agg_error))++;
    log_complain(&a->lc_agg, tmtime_mono_ns(), LOG_LVL_WARN, "asking the aggregator failed",
                 "error=\"%s\"", err);
    return -1;
}

static enum MHD_Result bad_answer(api_t *a, struct MHD_Connection *c,
                                  const query_client_answer_t *x, const char *err)
{
    (*a->c_agg_error)++;
    log_complain(&a->lc_agg, tmtime_mono_ns(), LOG_LVL_WARN, "a bad answer from the aggregator",
                 "endpoint=%s error=\"%s\"", x->endpoint, err);
    return reply_error(a, c, MHD_HTTP_BAD_GATEWAY, "the answer from %s: %s", x->endpoint, err);
}

/* shards, and shard when one shard answered alone (as tokmonctl --json) */
static json_t *answer_head(const query_client_answers_t *ans)
{
    json_t *j = json_object();
    json_object_set_new(j, "shards", jint(ans->v[0].shards));
    json_object_set_new(j, "shard", ans->n == 1 ? jint(ans->v[0].shard) : json_null());
    return j;
}

/* ---- /api/v1/usage ---------------------------------------------------------------- */

static enum MHD_Result usage_totals(api_t *a, struct MHD_Connection *c)
{
    model_totals_t t;
    model_totals(a->model, &t);
    json_t *j = json_object();
    json_object_set_new(j, "since", jint(a->started));
    json_object_set_new(j, "requests", juint(t.requests));
    json_object_set_new(j, "errors", juint(t.errors));
    json_object_set_new(j, "input_tokens", juint(t.input_tokens));
    json_object_set_new(j, "cache_read_tokens", juint(t.cache_read_tokens));
    json_object_set_new(j, "cache_write_tokens", juint(t.cache_write_tokens));
    json_object_set_new(j, "output_tokens", juint(t.output_tokens));
    json_object_set_new(j, "reasoning_tokens", juint(t.reasoning_tokens));
    json_object_set_new(j, "total_tokens", juint(t.total_tokens));
    set_money(j, "cost_nusd", t.cost_nusd);
    json_object_set_new(j, "first_ts", t.first_ns ? jint(t.first_ns) : json_null());
    json_object_set_new(j, "last_ts", t.last_ns ? jint(t.last_ns) : json_null());
    return reply(a, c, MHD_HTTP_OK, j);
}

/* ---- /api/v1/usage/window and /api/v1/top ----------------------------------------- */

typedef struct {
    const char *by, *metric, *id;
    int64_t window, n;
    bool top;
} rowq_t;

static enum MHD_Result rows_answer(api_t *a, struct MHD_Connection *c, const rowq_t *rq)
{
    bool by_user = !strcmp(rq->by, "user");
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 4 + (rq->top ? 1 : 0) + (rq->id ? 1 : 0));
    pack_str(&pk, "q"), pack_str(&pk, rq->top ? "top" : "usage");
    pack_str(&pk, "by"), pack_str(&pk, rq->by);
    pack_str(&pk, "metric"), pack_str(&pk, rq->metric);
    pack_str(&pk, "window"), msgpack_pack_int64(&pk, rq->window);
    /* users live on one shard each: a shard's first n are candidates
     * enough; other keys are spread, so every shard gives all its rows */
    if (rq->top)
        pack_str(&pk, "n"), msgpack_pack_int64(&pk, by_user ? rq->n : 0);
    if (rq->id)
        pack_str(&pk, "id"), pack_str(&pk, rq->id);
    query_client_answers_t ans = { 0 };
    unsigned status;
    char err[1024];
    int rc = ask(a, &req, by_user && rq->id ? rq->id : NULL, &ans, &status, err, sizeof err);
    mbuf_free(&req);
    if (rc < 0) {
        query_client_answers_free(&ans);
        return reply_error(a, c, status, "%s", err);
    }
    query_client_rows_t *parts = xcalloc(ans.n, sizeof *parts), all = { 0 };
    enum MHD_Result res = MHD_YES;
    size_t n = 0;
    for (; n < ans.n; n++) {
        if (query_client_rows_decode(&ans.v[n].up.data, &parts[n], err, sizeof err) < 0) {
            res = bad_answer(a, c, &ans.v[n], err);
            break;
        }
    }
    if (n == ans.n) {
        query_client_rows_merge(parts, n, by_user, rq->top ? rq->n : 0, &all);
        json_t *j = answer_head(&ans);
        json_object_set_new(j, "by", jstr(all.by));
        json_object_set_new(j, "metric", jstr(all.metric));
        json_object_set_new(j, "window", jint(all.window));
        json_object_set_new(j, "from", jint(all.from));
        json_object_set_new(j, "to", jint(all.to));
        json_object_set_new(j, "keys", juint(all.keys));
        json_object_set_new(j, "truncated", json_boolean(all.truncated));
        json_t *rows = json_array();
        for (size_t i = 0; i < all.n; i++) {
            const query_client_row_t *w = &all.rows[i];
            json_t *o = json_object();
            json_object_set_new(o, "key", jstr(w->key));
            json_object_set_new(o, "requests", juint(w->requests));
            json_object_set_new(o, "tokens", juint(w->tokens));
            set_money(o, "cost_nusd", w->cost_nusd);
            json_array_append_new(rows, o);
        }
        if (rq->id && all.n == 0) { /* one key that used nothing: a row of zeros */
            json_t *o = json_object();
            json_object_set_new(o, "key", jcstr(rq->id));
            json_object_set_new(o, "requests", jint(0));
            json_object_set_new(o, "tokens", jint(0));
            set_money(o, "cost_nusd", 0);
            json_array_append_new(rows, o);
        }
        json_object_set_new(j, "rows", rows);
        res = reply(a, c, MHD_HTTP_OK, j);
    }
    for (size_t i = 0; i < n; i++)
        query_client_rows_free(&parts[i]);
    free(parts);
    query_client_rows_free(&all);
    query_client_answers_free(&ans);
    return res;
}

/* window (seconds or a duration), by and metric, checked as the aggregator
 * would; NULL, or the reason of a 400 in err */
static int rows_params(api_t *a, struct MHD_Connection *c, rowq_t *rq, int64_t def_window,
                       char *err, size_t cap)
{
    const char *w = arg(c, "window"), *by = arg(c, "by"), *m = arg(c, "metric");
    rq->window = w ? parse_duration(w) : def_window;
    if (rq->window <= 0) {
        snprintf(err, cap, "window must be a positive number of seconds (300) or a duration "
                           "(5m, 1h, 1d)");
        return -1;
    }
    if (rq->window * TMTIME_NS_PER_SEC > a->history_ns) {
        snprintf(err, cap, "window %llds is longer than the aggregator's history "
                           "([aggregator] history = %llds)",
                 (long long)rq->window, (long long)(a->history_ns / TMTIME_NS_PER_SEC));
        return -1;
    }
    rq->by = by ? dim_of(by) : "user";
    if (!rq->by) {
        snprintf(err, cap, "by must be user, account, model or project");
        return -1;
    }
    rq->metric = !m || !strcmp(m, "cost") ? "cost"
                 : !strcmp(m, "tokens")   ? "tokens"
                 : !strcmp(m, "requests") ? "requests"
                                          : NULL;
    if (!rq->metric) {
        snprintf(err, cap, "metric must be cost, tokens or requests");
        return -1;
    }
    return 0;
}

static enum MHD_Result usage_window(api_t *a, struct MHD_Connection *c)
{
    rowq_t rq = { 0 };
    char err[256];
    if (rows_params(a, c, &rq, 300, err, sizeof err) < 0)
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "%s", err);
    rq.id = arg(c, "id");
    if (rq.id && !id_ok(rq.id))
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "id must have 1 to %d bytes of UTF-8",
                           MSG_MAX_STR);
    return rows_answer(a, c, &rq);
}

static enum MHD_Result top(api_t *a, struct MHD_Connection *c)
{
    rowq_t rq = { .top = true, .n = 10 };
    char err[256];
    if (rows_params(a, c, &rq, 3600, err, sizeof err) < 0)
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "%s", err);
    const char *n = arg(c, "n");
    if (n && parse_int(n, 1, MAX_TOP, &rq.n) < 0)
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "n must be a count from 1 to %d", MAX_TOP);
    return rows_answer(a, c, &rq);
}

/* ---- /api/v1/quota/{id} ----------------------------------------------------------- */

static enum MHD_Result quota(api_t *a, struct MHD_Connection *c, const char *id)
{
    const char *subject = arg(c, "subject");
    bool user = !subject || !strcmp(subject, "user");
    if (!user && strcmp(subject, "account"))
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "subject must be user or account");
    if (!id_ok(id))
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "the id must have 1 to %d bytes of UTF-8",
                           MSG_MAX_STR);
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "q"), pack_str(&pk, "quota");
    pack_str(&pk, "subject"), pack_str(&pk, user ? "user" : "account");
    pack_str(&pk, "id"), pack_str(&pk, id);
    query_client_answers_t ans = { 0 };
    unsigned status;
    char err[1024];
    int rc = ask(a, &req, user ? id : NULL, &ans, &status, err, sizeof err);
    mbuf_free(&req);
    if (rc < 0) {
        query_client_answers_free(&ans);
        return reply_error(a, c, status, "%s", err);
    }
    /* a user from its shard; an account summed over every shard */
    query_client_quota_t sum, part;
    for (size_t i = 0; i < ans.n; i++) {
        if (query_client_quota_decode(&ans.v[i].up.data, i ? &part : &sum, err, sizeof err) < 0) {
            enum MHD_Result res = bad_answer(a, c, &ans.v[i], err);
            query_client_answers_free(&ans);
            return res;
        }
        if (i)
            query_client_quota_add(&sum, &part);
    }
    json_t *j = answer_head(&ans);
    json_object_set_new(j, "subject", jstr(sum.subject));
    json_object_set_new(j, "id", jstr(sum.id));
    json_object_set_new(j, "known", json_boolean(sum.known));
    json_object_set_new(j, "state", json_string(query_client_state_name(sum.state)));
    json_object_set_new(j, "warn_pct", jint(sum.warn_pct));
    json_object_set_new(j, "now", jint(sum.now));
    json_object_set_new(j, "window_requests", juint(sum.window_requests));
    json_t *ws = json_array();
    for (size_t i = 0; i < sum.nw; i++) {
        const query_client_qwin_t *w = &sum.w[i];
        int64_t rem = w->limit > w->used ? w->limit - w->used : 0;
        json_t *o = json_object();
        json_object_set_new(o, "window", jstr(w->window));
        json_object_set_new(o, "unit", jstr(w->unit));
        json_object_set_new(o, "used", jint(w->used));
        json_object_set_new(o, "limit", jint(w->limit));
        json_object_set_new(o, "remaining", w->limit > 0 ? jint(rem) : json_null());
        json_object_set_new(o, "state", json_string(query_client_state_name(w->state)));
        json_object_set_new(o, "start", jint(w->start));
        json_object_set_new(o, "reset", jint(w->reset));
        if (span_eq_cstr(w->unit, "usd")) {
            json_object_set_new(o, "used_usd", jusd(w->used));
            json_object_set_new(o, "limit_usd", jusd(w->limit));
            json_object_set_new(o, "remaining_usd", w->limit > 0 ? jusd(rem) : json_null());
        }
        json_array_append_new(ws, o);
    }
    json_object_set_new(j, "windows", ws);
    query_client_answers_free(&ans);
    return reply(a, c, MHD_HTTP_OK, j);
}

/* ---- /api/v1/budgets -------------------------------------------------------------- */

static json_t *budget_json(const query_client_budget_t *x)
{
    const msg_budget_t *b = &x->b;
    json_t *o = json_object();
    json_object_set_new(o, "name", jstr(b->name));
    json_object_set_new(o, "scope", jstr(b->scope));
    json_object_set_new(o, "scope_value", jstr(b->scope_value));
    json_object_set_new(o, "period", jstr(b->period));
    json_object_set_new(o, "period_start", jint(b->period_start));
    json_object_set_new(o, "period_end", jint(b->period_end));
    set_money(o, "limit_nusd", b->limit_nusd);
    set_money(o, "rollover_nusd", b->rollover_nusd);
    set_money(o, "spent_nusd", b->spent_nusd);
    set_money(o, "remaining_nusd", b->remaining_nusd);
    set_money(o, "forecast_avg_nusd", b->forecast_avg_nusd);
    set_money(o, "forecast_rate_nusd", b->forecast_rate_nusd);
    json_object_set_new(o, "exhaust_ts", jint(b->exhaust_ts));
    json_object_set_new(o, "warn_pct", jint(b->warn_pct));
    json_object_set_new(o, "state", jstr(b->state));
    json_object_set_new(o, "ts", jint(b->ts));
    json_object_set_new(o, "partial", json_boolean(b->partial));
    json_object_set_new(o, "parts", jint(x->parts));
    json_object_set_new(o, "shard", x->parts == 1 ? jint(b->shard) : json_null());
    return o;
}

static enum MHD_Result budgets(api_t *a, struct MHD_Connection *c)
{
    const char *name = arg(c, "name");
    if (name && !id_ok(name))
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "name must have 1 to %d bytes of UTF-8",
                           MSG_MAX_STR);
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, name ? 2 : 1);
    pack_str(&pk, "q"), pack_str(&pk, "budgets");
    if (name)
        pack_str(&pk, "name"), pack_str(&pk, name);
    query_client_answers_t ans = { 0 };
    unsigned status;
    char err[1024];
    int rc = ask(a, &req, NULL, &ans, &status, err, sizeof err);
    mbuf_free(&req);
    if (rc < 0) {
        query_client_answers_free(&ans);
        return reply_error(a, c, status, "%s", err);
    }
    query_client_budgets_t *parts = xcalloc(ans.n, sizeof *parts), all = { 0 };
    enum MHD_Result res = MHD_YES;
    size_t n = 0;
    for (; n < ans.n; n++) {
        if (query_client_budgets_decode(&ans.v[n].up.data, &parts[n], err, sizeof err) < 0) {
            res = bad_answer(a, c, &ans.v[n], err);
            break;
        }
    }
    if (n == ans.n) {
        query_client_budgets_merge(parts, n, &all);
        json_t *j = answer_head(&ans);
        json_object_set_new(j, "now", jint(all.now));
        json_t *arr = json_array();
        for (size_t i = 0; i < all.n; i++)
            json_array_append_new(arr, budget_json(&all.v[i]));
        json_object_set_new(j, "budgets", arr);
        res = reply(a, c, MHD_HTTP_OK, j);
    }
    for (size_t i = 0; i < n; i++)
        query_client_budgets_free(&parts[i]);
    free(parts);
    query_client_budgets_free(&all);
    query_client_answers_free(&ans);
    return res;
}

/* ---- PostgreSQL ------------------------------------------------------------------- */

/* Per day (in [global] timezone) of the last $2 days, today included, the
 * user $1's requests, errors, tokens and cost; days without calls as zeros.
 * ts >= the first day's start uses the index on ("user", ts) and prunes
 * the partitions. */
static const char history_sql[] =
    "WITH days AS ("
    " SELECT generate_series(date_trunc('day', now() AT TIME ZONE $3::text)"
    " - ($2::int - 1) * interval '1 day',"
    " date_trunc('day', now() AT TIME ZONE $3::text), interval '1 day') AS day),"
    " ev AS ("
    " SELECT date_trunc('day', ts AT TIME ZONE $3::text) AS day,"
    " sum(requests) AS requests,"
    " sum(requests) FILTER (WHERE status = 'error') AS errors,"
    " sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,"
    " sum(cost_nusd) AS cost_nusd"
    " FROM llm_events"
    " WHERE \"user\" = $1::text"
    " AND ts >= (date_trunc('day', now() AT TIME ZONE $3::text)"
    " - ($2::int - 1) * interval '1 day') AT TIME ZONE $3::text"
    " GROUP BY 1)"
    " SELECT to_char(days.day, 'YYYY-MM-DD'), coalesce(ev.requests, 0), coalesce(ev.errors, 0),"
    " coalesce(ev.input_tokens, 0), coalesce(ev.output_tokens, 0), coalesce(ev.cost_nusd, 0)"
    " FROM days LEFT JOIN ev USING (day) ORDER BY days.day";

static const char session_sql[] =
    "SELECT set_config('statement_timeout', $1::text, false),"
    " set_config('default_transaction_read_only', 'on', false)";

static void no_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* The first line of a libpq message, without its trailing newline. */
static void first_line(char *dst, size_t cap, const char *msg)
{
    size_t n = strcspn(msg ? msg : "", "\n");
    snprintf(dst, cap, "%.*s", (int)n, msg ? msg : "");
}

static void pg_close(api_t *a)
{
    if (a->pg)
        PQfinish(a->pg);
    a->pg = NULL;
}

/* Waits for the connection's socket until the monotonic deadline: 1 ready,
 * 0 timed out, -1 failed. */
static int pg_wait(PGconn *pg, bool write, int64_t deadline)
{
    struct pollfd p = { .fd = PQsocket(pg), .events = write ? POLLOUT : POLLIN };
    if (p.fd < 0)
        return -1;
    for (;;) {
        int64_t left = deadline - tmtime_mono_ns();
        if (left <= 0)
            return 0;
        int r = poll(&p, 1, (int)((left + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS));
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Sends sql with its parameters and reads the result, under the deadline.
 * The result, or NULL with the status and reason; *lost when the
 * connection can no longer be used. */
static PGresult *pg_exec(api_t *a, const char *sql, int n, const char *const *vals,
                         int64_t deadline, unsigned *status, char *err, size_t cap, bool *lost)
{
    PGconn *pg = a->pg;
    char why[256];
    *lost = true;
    if (!PQsendQueryParams(pg, sql, n, NULL, vals, NULL, NULL, 0))
        goto broken;
    int f;
    while ((f = PQflush(pg)) == 1)
        if (pg_wait(pg, true, deadline) <= 0)
            goto timeout;
    if (f < 0)
        goto broken;
    PGresult *keep = NULL, *res;
    for (;;) {
        while (PQisBusy(pg)) {
            int w = pg_wait(pg, false, deadline);
            if (w == 0) {
                PQclear(keep);
                goto timeout;
            }
            if (w < 0 || !PQconsumeInput(pg)) {
                PQclear(keep);
                goto broken;
            }
        }
        if (!(res = PQgetResult(pg)))
            break;
        if (!keep)
            keep = res;
        else
            PQclear(res);
    }
    if (!keep)
        goto broken;
    ExecStatusType st = PQresultStatus(keep);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        *lost = false;
        return keep;
    }
    const char *state = PQresultErrorField(keep, PG_DIAG_SQLSTATE);
    first_line(why, sizeof why, PQresultErrorField(keep, PG_DIAG_MESSAGE_PRIMARY));
    state = state ? state : "";
    *lost = PQstatus(pg) == CONNECTION_BAD || !strncmp(state, "08", 2) ||
            !strncmp(state, "57P", 3);
    if (!strcmp(state, "57014")) {
        *status = MHD_HTTP_GATEWAY_TIMEOUT;
        (*a->c_pg_timeout)++;
        snprintf(err, cap, "PostgreSQL: the query ran longer than [exporter] query_timeout "
                           "(%lld ms)", (long long)(a->query_timeout_ns / TMTIME_NS_PER_MS));
    } else if (*lost) {
        *status = MHD_HTTP_SERVICE_UNAVAILABLE;
        (*a->c_pg_unavailable)++;
        snprintf(err, cap, "PostgreSQL unavailable: %s", why);
    } else {
        *status = MHD_HTTP_BAD_GATEWAY;
        (*a->c_pg_error)++;
        snprintf(err, cap, "PostgreSQL: %s%s", why,
                 !strcmp(state, "42501") ? " (grant tokmon_reader to the exporter's login role)"
                                         : "");
    }
    PQclear(keep);
    return NULL;
timeout:
    *status = MHD_HTTP_GATEWAY_TIMEOUT;
    (*a->c_pg_timeout)++;
    snprintf(err, cap, "PostgreSQL did not answer within [exporter] query_timeout (%lld ms)",
             (long long)(a->query_timeout_ns / TMTIME_NS_PER_MS));
    return NULL;
broken:
    first_line(why, sizeof why, PQerrorMessage(pg));
    *status = MHD_HTTP_SERVICE_UNAVAILABLE;
    (*a->c_pg_unavailable)++;
    snprintf(err, cap, "PostgreSQL unavailable: %s", why);
    return NULL;
}

/* Connects without blocking past the deadline, then sets the session up:
 * statement_timeout = query_timeout, read-only transactions. */
static int pg_connect(api_t *a, int64_t deadline, unsigned *status, char *err, size_t cap)
{
    *status = MHD_HTTP_SERVICE_UNAVAILABLE;
    if (tmtime_mono_ns() < a->pg_retry_at) {
        (*a->c_pg_unavailable)++;
        snprintf(err, cap, "PostgreSQL unavailable: %s", a->pg_err);
        return -1;
    }
    static const char *const keys[] = { "dbname", "fallback_application_name", NULL };
    const char *const vals[] = { a->database, "tokmon-exporter", NULL };
    PGconn *pg = PQconnectStartParams(keys, vals, 1);
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    const char *why = NULL;
    if (!pg || PQstatus(pg) == CONNECTION_BAD)
        ps = PGRES_POLLING_FAILED;
    while (ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        int w = pg_wait(pg, ps == PGRES_POLLING_WRITING, deadline);
        if (w <= 0) {
            why = w == 0 ? "no connection within [exporter] query_timeout" : "poll failed";
            break;
        }
        ps = PQconnectPoll(pg);
    }
    if (ps == PGRES_POLLING_OK) {
        PQsetNoticeProcessor(pg, no_notice, NULL);
        a->pg = pg;
        char ms[32];
        snprintf(ms, sizeof ms, "%lld", (long long)(a->query_timeout_ns / TMTIME_NS_PER_MS));
        const char *const sv[] = { ms };
        bool lost;
        PGresult *r = pg_exec(a, session_sql, 1, sv, deadline, status, err, cap, &lost);
        if (r) {
            PQclear(r);
            log_release(&a->lc_pg, "connected to PostgreSQL", NULL);
            a->pg_retry_at = 0;
            return 0;
        }
        pg_close(a);
        snprintf(a->pg_err, sizeof a->pg_err, "%.250s", err);
    } else {
        if (why)
            snprintf(a->pg_err, sizeof a->pg_err, "%.250s", why);
        else if (pg)
            first_line(a->pg_err, sizeof a->pg_err, PQerrorMessage(pg));
        else
            snprintf(a->pg_err, sizeof a->pg_err, "out of memory");
        if (pg)
            PQfinish(pg);
        (*a->c_pg_unavailable)++;
        snprintf(err, cap, "PostgreSQL unavailable: %s", a->pg_err);
    }
    a->pg_retry_at = tmtime_mono_ns() + PG_RETRY_NS;
    log_complain(&a->lc_pg, tmtime_mono_ns(), LOG_LVL_WARN, "cannot use PostgreSQL",
                 "error=\"%s\"", a->pg_err);
    return -1;
}

/* Runs one query on the (lazily made) connection; a connection found
 * broken that was made before this request is made again once, within the
 * same deadline (PostgreSQL restarted since). */
static PGresult *pg_query(api_t *a, const char *sql, int n, const char *const *vals,
                          unsigned *status, char *err, size_t cap)
{
    int64_t deadline = tmtime_mono_ns() + a->query_timeout_ns;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = !a->pg, lost;
        if (!a->pg && pg_connect(a, deadline, status, err, cap) < 0)
            return NULL;
        PGresult *r = pg_exec(a, sql, n, vals, deadline, status, err, cap, &lost);
        if (r)
            return r;
        if (lost)
            pg_close(a);
        if (!lost || fresh)
            break;
    }
    log_complain(&a->lc_pg, tmtime_mono_ns(), LOG_LVL_WARN, "a PostgreSQL query failed",
                 "error=\"%s\"", err);
    return NULL;
}

static bool cell_i64(const PGresult *r, int row, int col, int64_t *v)
{
    const char *s = PQgetvalue(r, row, col);
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *v = x;
    return true;
}

static enum MHD_Result history(api_t *a, struct MHD_Connection *c)
{
    if (!a->database[0])
        return reply_error(a, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                           "no [exporter] database configured: the history comes from "
                           "PostgreSQL (a read-only conninfo)");
    const char *user = arg(c, "user");
    if (!id_ok(user))
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "user must have 1 to %d bytes of UTF-8",
                           MSG_MAX_STR);
    int64_t days = 30;
    const char *d = arg(c, "days");
    if (d && parse_int(d, 1, MAX_DAYS, &days) < 0)
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST, "days must be a count from 1 to %d",
                           MAX_DAYS);
    char ds[16];
    snprintf(ds, sizeof ds, "%lld", (long long)days);
    const char *const vals[] = { user, ds, a->timezone };
    unsigned status;
    char err[512];
    PGresult *r = pg_query(a, history_sql, 3, vals, &status, err, sizeof err);
    if (!r)
        return reply_error(a, c, status, "%s", err);
    if (PQnfields(r) != 6) {
        PQclear(r);
        return reply_error(a, c, MHD_HTTP_BAD_GATEWAY, "PostgreSQL: an unexpected answer");
    }
    json_t *rows = json_array();
    int64_t tot[5] = { 0 };
    bool ok = true;
    for (int i = 0; i < PQntuples(r) && ok; i++) {
        int64_t v[5];
        for (int k = 0; k < 5 && ok; k++)
            ok = cell_i64(r, i, k + 1, &v[k]);
        if (!ok)
            break;
        json_t *o = json_object();
        json_object_set_new(o, "day", jcstr(PQgetvalue(r, i, 0)));
        json_object_set_new(o, "requests", jint(v[0]));
        json_object_set_new(o, "errors", jint(v[1]));
        json_object_set_new(o, "input_tokens", jint(v[2]));
        json_object_set_new(o, "output_tokens", jint(v[3]));
        json_object_set_new(o, "total_tokens", jint(v[2] + v[3]));
        set_money(o, "cost_nusd", v[4]);
        json_array_append_new(rows, o);
        for (int k = 0; k < 5; k++)
            tot[k] += v[k];
    }
    int nrows = PQntuples(r);
    json_t *j = json_object();
    json_object_set_new(j, "user", jcstr(user));
    json_object_set_new(j, "days", jint(days));
    json_object_set_new(j, "timezone", jcstr(a->timezone));
    json_object_set_new(j, "from", nrows ? jcstr(PQgetvalue(r, 0, 0)) : json_null());
    json_object_set_new(j, "to", nrows ? jcstr(PQgetvalue(r, nrows - 1, 0)) : json_null());
    PQclear(r);
    if (!ok) {
        json_decref(rows);
        json_decref(j);
        (*a->c_pg_error)++;
        return reply_error(a, c, MHD_HTTP_BAD_GATEWAY,
                           "PostgreSQL: a sum that does not fit in 64 bits");
    }
    json_t *t = json_object();
    json_object_set_new(t, "requests", jint(tot[0]));
    json_object_set_new(t, "errors", jint(tot[1]));
    json_object_set_new(t, "input_tokens", jint(tot[2]));
    json_object_set_new(t, "output_tokens", jint(tot[3]));
    json_object_set_new(t, "total_tokens", jint(tot[2] + tot[3]));
    set_money(t, "cost_nusd", tot[4]);
    json_object_set_new(j, "total", t);
    json_object_set_new(j, "rows", rows);
    return reply(a, c, MHD_HTTP_OK, j);
}

/* ---- health ----------------------------------------------------------------------- */

static enum MHD_Result health(api_t *a, struct MHD_Connection *c)
{
    json_t *j = json_object();
    json_object_set_new(j, "status", json_string("ok"));
    return reply(a, c, MHD_HTTP_OK, j);
}

/* Whether every aggregator shard answers a cheap question (a budget that
 * does not exist), asked at most every READY_CACHE_NS. */
static bool aggregator_ready(api_t *a)
{
    int64_t mono = tmtime_mono_ns();
    if (mono < a->ready_until)
        return a->ready_agg;
    mbuf_t req = { 0 };
    msgpack_packer pk;
    mbuf_packer(&req, &pk);
    msgpack_pack_map(&pk, 2);
    pack_str(&pk, "q"), pack_str(&pk, "budgets");
    pack_str(&pk, "name"), pack_str(&pk, "");
    query_client_answers_t ans = { 0 };
    char err[1024];
    unsigned status;
    a->ready_agg = ask(a, &req, NULL, &ans, &status, err, sizeof err) == 0;
    if (!a->ready_agg)
        snprintf(a->ready_why, sizeof a->ready_why, "%.250s", err);
    query_client_answers_free(&ans);
    mbuf_free(&req);
    a->ready_until = tmtime_mono_ns() + READY_CACHE_NS;
    return a->ready_agg;
}

static enum MHD_Result ready(api_t *a, struct MHD_Connection *c)
{
    int64_t now = clock_now(a);
    char why[512] = "";
    if (!a->bus_seen)
        snprintf(why, sizeof why, "no bus message since the exporter started");
    else if (now - a->bus_seen > BUS_FRESH_NS)
        snprintf(why, sizeof why, "no bus message in the last %lld s (the last %lld s ago)",
                 (long long)(BUS_FRESH_NS / TMTIME_NS_PER_SEC),
                 (long long)((now - a->bus_seen) / TMTIME_NS_PER_SEC));
    else if (!aggregator_ready(a))
        snprintf(why, sizeof why, "the aggregator does not answer: %s", a->ready_why);
    json_t *j = json_object();
    json_object_set_new(j, "status", json_string(why[0] ? "not ready" : "ready"));
    if (why[0])
        json_object_set_new(j, "reason", jcstr(why));
    return reply(a, c, why[0] ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, j);
}

/* ---- the stream ------------------------------------------------------------------- */

static uint64_t ring_oldest(const api_t *a)
{
    return a->next_id - a->first_id > a->ring_cap ? a->next_id - a->ring_cap : a->first_id;
}

static void stream_unlink(api_t *a, stream_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        a->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    a->nstreams--;
    *a->g_streams = (int64_t)a->nstreams;
}

static void stream_resume(stream_t *s)
{
    if (s->suspended) {
        s->suspended = false;
        s->resumed = true;
        MHD_resume_connection(s->conn);
    }
}

static void stream_free(void *cls)
{
    stream_t *s = cls;
    if (s->api)
        stream_unlink(s->api, s);
    mbuf_free(&s->out);
    free(s);
}

static void stream_drop(api_t *a, stream_t *s)
{
    s->dropped = true;
    (*a->c_stream_dropped)++;
    log_complain(&a->lc_stream, tmtime_mono_ns(), LOG_LVL_WARN,
                 "dropped a stream client that does not read",
                 "behind=%llu ring=%zu", (unsigned long long)(a->next_id - s->next_id),
                 a->ring_cap);
    /* it may never be writable again: let MHD close it soon */
    MHD_set_connection_option(s->conn, MHD_CONNECTION_OPTION_TIMEOUT, 1u);
}

static void render(api_t *a, event_t *e);

/* Fills s->out with what is owed, up to about max bytes. */
static void stream_fill(api_t *a, stream_t *s, size_t max)
{
    if (s->hello) {
        static const char hello[] = ": tokmon calls\nretry: 3000\n\n";
        mbuf_append(&s->out, hello, sizeof hello - 1);
        s->hello = false;
    }
    uint64_t oldest = ring_oldest(a);
    if (s->next_id < oldest) {
        if (!s->waiting) {
            stream_drop(a, s);
            return;
        }
        /* calls it never saw are gone: say so, then go on from the oldest */
        char buf[256];
        uint64_t last = s->next_id - 1;
        int n;
        if (s->next_id >= a->first_id)
            n = snprintf(buf, sizeof buf,
                         "event: gap\ndata: {\"last_event_id\":%llu,\"next_id\":%llu,"
                         "\"missed\":%llu}\n\n",
                         (unsigned long long)last, (unsigned long long)oldest,
                         (unsigned long long)(oldest - s->next_id));
        else /* an id from before this exporter started: how many is unknown */
            n = snprintf(buf, sizeof buf,
                         "event: gap\ndata: {\"last_event_id\":%llu,\"next_id\":%llu,"
                         "\"missed\":null}\n\n",
                         (unsigned long long)last, (unsigned long long)oldest);
        mbuf_append(&s->out, buf, (size_t)n);
        (*a->c_stream_gaps)++;
        s->next_id = oldest;
    }
    while (s->next_id < a->next_id && s->out.len < max) {
        event_t *e = &a->ring[s->next_id % a->ring_cap];
        assert(e->id == s->next_id);
        if (!e->text.len)
            render(a, e);
        mbuf_append(&s->out, e->text.data, e->text.len);
        s->next_id++;
    }
    if (s->out.len)
        s->waiting = false;
    else if (clock_now(a) - s->last_send >= KEEPALIVE_NS)
        mbuf_append(&s->out, ": keepalive\n\n", 13);
}

static bool peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_t *s = cls;
    api_t *a = s->api;
    if (!a || s->dropped)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (s->resumed) {
        /* a client that left while it waited: end without writing to it */
        s->resumed = false;
        if (peer_gone(s->conn))
            return MHD_CONTENT_READER_END_OF_STREAM;
    }
    if (s->off == s->out.len) {
        mbuf_reset(&s->out);
        s->off = 0;
        stream_fill(a, s, max);
        if (s->dropped)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (s->off == s->out.len) {
        /* nothing owed: wait for api_call or the keepalive in api_work. A
         * suspended connection does not notice its client leaving, so look
         * first: an event-stream client sends nothing after its request,
         * and end of file means it has gone. */
        if (peer_gone(s->conn))
            return MHD_CONTENT_READER_END_OF_STREAM;
        s->waiting = true;
        s->suspended = true;
        MHD_suspend_connection(s->conn);
        return 0;
    }
    size_t n = s->out.len - s->off < max ? s->out.len - s->off : max;
    memcpy(buf, s->out.data + s->off, n);
    s->off += n;
    s->last_send = clock_now(a);
    if (s->off == s->out.len && s->out.cap > 4 * STREAM_BLOCK) {
        mbuf_free(&s->out); /* an outsized event passed: give the memory back */
        s->off = 0;
    }
    return (ssize_t)n;
}

static enum MHD_Result stream_open(api_t *a, struct MHD_Connection *c)
{
    const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
    if (!last)
        last = arg(c, "last_event_id");
    int64_t n = 0;
    if (last && parse_int(last, 0, INT64_MAX, &n) < 0)
        return reply_error(a, c, MHD_HTTP_BAD_REQUEST,
                           "Last-Event-ID must be the id of a call (a decimal integer)");
    if (a->nstreams >= MAX_STREAMS)
        return reply_error(a, c, MHD_HTTP_SERVICE_UNAVAILABLE,
                           "too many streams open (%d): try again later", MAX_STREAMS);
    stream_t *s = xcalloc(1, sizeof *s);
    s->api = a;
    s->conn = c;
    s->hello = true;
    s->waiting = true; /* what it asks for and is gone is a gap, not its fault */
    s->last_send = clock_now(a);
    s->next_id = last && (uint64_t)n < a->next_id ? (uint64_t)n + 1 : a->next_id;
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK,
                                                               stream_read, s, stream_free);
    if (!r) {
        free(s);
        return reply_error(a, c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot open a stream");
    }
    s->next = a->streams;
    if (a->streams)
        a->streams->prev = s;
    a->streams = s;
    a->nstreams++;
    *a->g_streams = (int64_t)a->nstreams;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* stream_free runs when the connection lets it go */
    count_status(a, MHD_HTTP_OK);
    return rc;
}

/* The call as its event's data: the keys of a usage record as tokmon-tap
 * prints them, cost_usd exact, and where it came from. */
static json_t *call_json(span_t src, uint64_t seq, uint32_t idx, const msg_usage_t *u)
{
    json_t *o = json_object();
    json_object_set_new(o, "provider", jstr(u->provider));
    json_object_set_new(o, "model", jstr(u->model));
    json_object_set_new(o, "operation", jstr(u->operation));
    json_object_set_new(o, "user", jstr(u->user));
    json_object_set_new(o, "account", jstr(u->account));
    json_object_set_new(o, "project", jstr(u->project));
    json_object_set_new(o, "input_tokens", juint(u->input_tokens));
    json_object_set_new(o, "cache_read_tokens", juint(u->cache_read_tokens));
    json_object_set_new(o, "cache_write_tokens", juint(u->cache_write_tokens));
    json_object_set_new(o, "cache_write_1h_tokens", juint(u->cache_write_1h_tokens));
    json_object_set_new(o, "output_tokens", juint(u->output_tokens));
    json_object_set_new(o, "reasoning_tokens", juint(u->reasoning_tokens));
    json_object_set_new(o, "requests", juint(u->requests));
    json_object_set_new(o, "latency_us", u->latency_us >= 0 ? jint(u->latency_us) : json_null());
    json_object_set_new(o, "ttft_us", u->ttft_us >= 0 ? jint(u->ttft_us) : json_null());
    json_object_set_new(o, "status", jstr(u->status));
    json_object_set_new(o, "http_status", u->http_status ? jint(u->http_status) : json_null());
    json_object_set_new(o, "error_type", jstr(u->error_type));
    set_money(o, "cost_nusd", u->cost_nusd);
    json_object_set_new(o, "cost_source", jstr(u->cost_source));
    json_object_set_new(o, "price_version", jstr(u->price_version));
    json_object_set_new(o, "request_id", jstr(u->request_id));
    json_object_set_new(o, "retries", u->retries >= 0 ? jint(u->retries) : json_null());
    json_object_set_new(o, "ts", jint(u->ts));
    json_object_set_new(o, "recv_ts", jint(u->recv_ts));
    json_t *tags = json_object();
    for (size_t i = 0; i < u->ntags; i++) {
        json_t *k = jstr(u->tags[i].key);
        if (json_is_string(k))
            json_object_set_new(tags, json_string_value(k), jstr(u->tags[i].value));
        json_decref(k);
    }
    json_object_set_new(o, "tags", tags);
    json_object_set_new(o, "signed", json_boolean(u->is_signed));
    if (u->is_signed)
        json_object_set_new(o, "key_id", jstr(u->key_id));
    json_object_set_new(o, "src", jstr(src));
    json_object_set_new(o, "seq", juint(seq));
    json_object_set_new(o, "idx", jint(idx));
    return o;
}

/* The event text of a ring slot, from its record. */
static void render(api_t *a, event_t *e)
{
    char err[256];
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msg_usage_t u;
    json_t *j = NULL;
    if (msgpack_unpack_next(&up, e->rec.data + e->src_len, e->rec.len - e->src_len, &off) ==
            MSGPACK_UNPACK_SUCCESS &&
        msg_usage_unpack(&up.data, &u, err, sizeof err) == 0)
        j = call_json(span_make(e->rec.data, e->src_len), e->seq, e->idx, &u);
    else /* it was packed here a moment ago: never expected */
        (*a->c_stream_render_errors)++;
    char *data = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char head[64];
    int n = snprintf(head, sizeof head, "id: %llu\nevent: call\ndata: ", (unsigned long long)e->id);
    mbuf_reset(&e->text);
    mbuf_append(&e->text, head, (size_t)n);
    mbuf_append(&e->text, data ? data : "{}", data ? strlen(data) : 2);
    mbuf_append(&e->text, "\n\n", 2);
    free(data);
    msgpack_unpacked_destroy(&up);
}

void api_call(api_t *a, span_t src, uint64_t seq, uint32_t idx, const msg_usage_t *u,
              int64_t now_ns)
{
    a->now = now_ns;
    a->bus_seen = now_ns;
    /* only the record is kept (cheap); the JSON is made when a stream
     * sends it, once per call however many streams do */
    uint64_t id = a->next_id++;
    event_t *e = &a->ring[id % a->ring_cap];
    e->id = id;
    e->seq = seq;
    e->idx = idx;
    mbuf_reset(&e->rec);
    mbuf_reset(&e->text);
    e->src_len = src.len;
    mbuf_append(&e->rec, src.p, src.len);
    msg_usage_encode(&e->rec, u);
    if (e->rec.cap > 4 * STREAM_BLOCK && e->rec.len < STREAM_BLOCK) {
        /* an outsized call passed through this slot: give the memory back */
        mbuf_t small = { 0 };
        mbuf_append(&small, e->rec.data, e->rec.len);
        mbuf_free(&e->rec);
        e->rec = small;
    }
    if (e->text.cap > 4 * STREAM_BLOCK)
        mbuf_free(&e->text);
    (*a->c_stream_calls)++;
    uint64_t oldest = ring_oldest(a);
    for (stream_t *s = a->streams; s; s = s->next) {
        if (s->suspended)
            stream_resume(s);
        else if (!s->dropped && !s->waiting && s->next_id < oldest)
            stream_drop(a, s); /* its socket has not taken a byte while the ring went round */
    }
}

void api_bus_seen(api_t *a, int64_t now_ns)
{
    a->now = now_ns;
    a->bus_seen = now_ns;
}

void api_work(api_t *a, int64_t now_ns)
{
    a->now = now_ns;
    for (stream_t *s = a->streams; s; s = s->next)
        if (s->suspended && now_ns - s->last_send >= KEEPALIVE_NS)
            stream_resume(s);
}

size_t api_streams(const api_t *a) { return a->nstreams; }

/* ---- routing ---------------------------------------------------------------------- */

#define QUOTA_PREFIX "/api/v1/quota/"

/* The client's address, for a log line. */
static void peer_name(struct MHD_Connection *c, char *buf, size_t cap)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf,
                  (socklen_t)cap);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf,
                  (socklen_t)cap);
}

enum MHD_Result api_handle(api_t *a, struct MHD_Connection *c, const char *method, const char *url)
{
    bool get = !strcmp(method, "GET"), head = !strcmp(method, "HEAD");
    if (!strcmp(url, "/health") || !strcmp(url, "/health/ready")) {
        if (!get && !head)
            return reply_error(a, c, MHD_HTTP_METHOD_NOT_ALLOWED, "%s: use GET", url);
        return url[7] ? ready(a, c) : health(a, c);
    }
    if (strncmp(url, "/api/", 5) && strcmp(url, "/api"))
        return reply_error(a, c, MHD_HTTP_NOT_FOUND, "no such path: %s", url);
    if (!a->has_key)
        return reply_error(a, c, MHD_HTTP_SERVICE_UNAVAILABLE, "no api_key_file configured");
    if (!authorized(a, c)) {
        (*a->c_unauthorized)++;
        char peer[INET6_ADDRSTRLEN] = "?";
        peer_name(c, peer, sizeof peer);
        log_complain(&a->lc_auth, tmtime_mono_ns(), LOG_LVL_WARN,
                     "an API request without a valid key", "peer=%s", peer);
        return reply_error(a, c, MHD_HTTP_UNAUTHORIZED,
                           "a valid API key is required (X-Api-Key: KEY or Authorization: Bearer "
                           "KEY)");
    }
    enum { R_USAGE, R_WINDOW, R_QUOTA, R_BUDGETS, R_TOP, R_HISTORY, R_STREAM, R_NONE } route;
    route = !strcmp(url, "/api/v1/usage")                              ? R_USAGE
            : !strcmp(url, "/api/v1/usage/window")                     ? R_WINDOW
            : !strncmp(url, QUOTA_PREFIX, strlen(QUOTA_PREFIX)) && url[strlen(QUOTA_PREFIX)]
                ? R_QUOTA
            : !strcmp(url, "/api/v1/budgets")       ? R_BUDGETS
            : !strcmp(url, "/api/v1/top")           ? R_TOP
            : !strcmp(url, "/api/v1/history/daily") ? R_HISTORY
            : !strcmp(url, "/api/v1/stream")        ? R_STREAM
                                                    : R_NONE;
    if (route == R_NONE)
        return reply_error(a, c, MHD_HTTP_NOT_FOUND, "no such endpoint: %s", url);
    if (!get && !(head && route != R_STREAM)) {
        json_t *j = json_object();
        char msg[300];
        snprintf(msg, sizeof msg, "%.250s: use GET", url);
        json_object_set_new(j, "error", jcstr(msg));
        return reply_allow(a, c, MHD_HTTP_METHOD_NOT_ALLOWED, j,
                           route == R_STREAM ? "GET" : "GET, HEAD");
    }
    switch (route) {
    case R_USAGE:
        return usage_totals(a, c);
    case R_WINDOW:
        return usage_window(a, c);
    case R_QUOTA:
        return quota(a, c, url + strlen(QUOTA_PREFIX));
    case R_BUDGETS:
        return budgets(a, c);
    case R_TOP:
        return top(a, c);
    case R_HISTORY:
        return history(a, c);
    case R_STREAM:
        return stream_open(a, c);
    case R_NONE:
        break;
    }
    return MHD_NO;
}

/* ---- life ------------------------------------------------------------------------- */

api_t *api_new(const cfg_t *cfg, model_t *m, stats_t *st, char *err, size_t cap)
{
    if (sodium_init() < 0) {
        snprintf(err, cap, "libsodium cannot start");
        return NULL;
    }
    const cfg_exporter_t *x = &cfg->exporter;
    api_t *a = xcalloc(1, sizeof *a);
    a->model = m;
    a->st = st;
    if (x->api_key_file[0] && read_key(a, x->api_key_file, err, cap) < 0) {
        free(a);
        return NULL;
    }
    a->query_timeout_ns = x->query_timeout * TMTIME_NS_PER_MS;
    a->history_ns = cfg->aggregator.history * TMTIME_NS_PER_MS;
    char why[512];
    a->qc = query_client_new(cfg->aggregator.query, a->query_timeout_ns, why, sizeof why);
    if (!a->qc) {
        snprintf(err, cap, "[aggregator] query: %s", why);
        sodium_memzero(a, sizeof *a);
        free(a);
        return NULL;
    }
    a->database = xstrdup(x->database);
    a->timezone = xstrdup(cfg->global.timezone);
    a->ring_cap = (size_t)x->stream_buffer;
    a->ring = xcalloc(a->ring_cap, sizeof *a->ring);
    a->started = tmtime_now_ns();
    a->first_id = a->next_id = (uint64_t)(a->started / 1000) + 1;
    a->c_unauthorized = stats_counter(st, "api_unauthorized_total", NULL);
    a->c_stream_dropped = stats_counter(st, "api_stream_dropped_total", NULL);
    a->c_stream_calls = stats_counter(st, "api_stream_calls_total", NULL);
    a->c_stream_gaps = stats_counter(st, "api_stream_gaps_total", NULL);
    a->g_streams = stats_gauge(st, "api_streams", NULL);
    a->c_stream_render_errors = stats_counter(st, "api_stream_render_errors_total", NULL);
    a->c_agg_timeout = stats_counter(st, "api_aggregator_errors_total", "reason=timeout");
    a->c_agg_error = stats_counter(st, "api_aggregator_errors_total", "reason=bad_answer");
    a->c_pg_unavailable = stats_counter(st, "api_database_errors_total", "reason=unavailable");
    a->c_pg_timeout = stats_counter(st, "api_database_errors_total", "reason=timeout");
    a->c_pg_error = stats_counter(st, "api_database_errors_total", "reason=query");
    return a;
}

void api_destroy(api_t **pa)
{
    api_t *a = *pa;
    if (!a)
        return;
    /* MHD must not stop with a connection suspended: resume every stream
     * and let it go (its reader ends it, its free callback frees it) */
    for (stream_t *s = a->streams, *n; s; s = n) {
        n = s->next;
        stream_resume(s);
        s->api = NULL;
        s->dropped = true;
        s->prev = s->next = NULL;
    }
    for (size_t i = 0; i < a->ring_cap; i++)
        mbuf_free(&a->ring[i].rec), mbuf_free(&a->ring[i].text);
    free(a->ring);
    query_client_destroy(&a->qc);
    pg_close(a);
    free(a->database);
    free(a->timezone);
    sodium_memzero(a->khash, sizeof a->khash);
    sodium_memzero(a->hkey, sizeof a->hkey);
    free(a);
    *pa = NULL;
}

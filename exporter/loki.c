/* loki: Loki push for tokmon-exporter (see loki.h).
 *
 * Entries are turned into their final JSON value (["ts", "line", {meta}])
 * when they are queued, so a batch is only a concatenation, grouped by
 * stream. Loki's timestamp of an entry is the time the exporter queued it
 * (a call's own ts and recv_ts travel in the line), made strictly increasing
 * over all entries: entries of every stream then reach Loki in time order,
 * batch after batch, whatever the age of the calls, and two entries never
 * share a timestamp (Loki would drop an identical line at the same ts).
 *
 * One batch at a time: it is taken from the head of the queue when due,
 * encoded and gzipped once, and sent (again, on 429/5xx/transport errors)
 * until it is accepted, refused or out of tries; meanwhile new entries wait
 * in the queue, which drops its oldest when full. */
#include "loki.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <zlib.h>

#include "dec.h"
#include "jtok.h"
#include "log.h"
#include "mbuf.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define PUSH_PATH "/loki/api/v1/push"
#define RESP_MAX 4096          /* bytes of a response body kept (for the log) */
#define BACKOFF_BASE_MS 200    /* the first retry's wait, before jitter */
#define IDLE_MS 1000           /* loki_work's answer when nothing is pending */
#define INFLIGHT_MS 5          /* ... while a request is in flight */
#define PASSWORD_MAX 4096
#define ALERT_JSON_DEPTH 32

enum { LV_INFO, LV_WARN, LV_ERROR };
static const char *const level_name[] = { "info", "warn", "error" };

typedef struct {
    int64_t ts;     /* Loki's timestamp, ns */
    int64_t enq;    /* when queued, on the caller's clock: for loki_batch_wait */
    uint8_t level;
    uint32_t plen;  /* bytes of the provider label value as a JSON string; 0: no label */
    size_t vlen;    /* bytes of the value */
    char *mem;      /* provider (plen bytes), then the value (vlen bytes) */
} entry_t;

enum { ERR_429, ERR_5XX, ERR_4XX, ERR_OTHER, ERR_TRANSPORT, ERR_TIMEOUT, NERR };
static const char *const err_label[NERR] = { "reason=http_429", "reason=http_5xx",
                                             "reason=http_4xx", "reason=http_other",
                                             "reason=transport", "reason=timeout" };
enum { DROP_QUEUE, DROP_RETRIES, DROP_REJECTED, DROP_SHUTDOWN, NDROP };
static const char *const drop_label[NDROP] = { "reason=queue_full", "reason=retries_exhausted",
                                               "reason=rejected", "reason=shutdown" };

struct loki {
    char *url;
    char *env_json;  /* the env label's value as a JSON string; NULL: no label */
    int64_t batch_size, batch_wait_ns, queue_max, timeout_ms, retries, backoff_max_ms;

    /* the queue: a ring of entries, grown up to queue_max */
    entry_t *q;
    size_t qcap, qhead, qlen, qbytes;

    /* the batch being sent (taken from the queue's head) */
    entry_t *b;
    size_t bn, bcap;
    mbuf_t body, gz;
    int64_t tries;        /* requests made for this batch */
    int64_t next_try;     /* caller's clock: no request before */
    bool in_flight;
    int64_t sent_mono;    /* when the request in flight started */

    int64_t now;          /* the caller's clock, as last seen */
    int64_t last_ts;      /* the last Loki timestamp handed out */
    bool force;           /* draining: the queue is due whatever its size and age */
    uint64_t rng;

    CURLM *multi;
    CURL *easy;
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
    mbuf_t resp;
    size_t resp_seen;     /* bytes of the response, kept or not */

    z_stream zs;
    bool zs_ok, curl_ok;

    mbuf_t line, scratch; /* reused while encoding an entry */
    size_t *order;        /* a batch's entries sorted by stream */
    size_t ordercap;

    log_complain_t lc_push, lc_reject, lc_queue;

    int64_t *c_entries_call, *c_entries_alert, *c_sent, *c_pushes, *c_retries;
    int64_t *c_err[NERR], *c_drop[NDROP];
    int64_t *c_batches, *c_json_bytes, *c_gzip_bytes, *c_bad_utf8, *c_alert_bad_json;
    int64_t *g_queue, *g_last_push_ms, *g_batch, *g_last_ok;
};

/* ---- JSON ---------------------------------------------------------------------- */

/* s[0..n) as a JSON string (quotes included): ", \ and control bytes escaped,
 * invalid UTF-8 bytes replaced with U+FFFD (one per byte). Returns whether
 * something was replaced. */
static bool json_str(mbuf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    bool replaced = false;
    mbuf_reserve(b, n + 2);
    mbuf_append(b, "\"", 1);
    size_t run = 0, i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(p + i, n - i);
            if (k) {
                i += k;
                continue;
            }
        }
        mbuf_append(b, s + run, i - run);
        switch (c) {
        case '"': mbuf_append(b, "\\\"", 2); break;
        case '\\': mbuf_append(b, "\\\\", 2); break;
        case '\n': mbuf_append(b, "\\n", 2); break;
        case '\r': mbuf_append(b, "\\r", 2); break;
        case '\t': mbuf_append(b, "\\t", 2); break;
        default:
            if (c < 0x20) {
                char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
                mbuf_append(b, e, 6);
            } else {
                mbuf_append(b, "\\ufffd", 6);
                replaced = true;
            }
        }
        i++;
        run = i;
    }
    mbuf_append(b, s + run, n - run);
    mbuf_append(b, "\"", 1);
    return replaced;
}

static void lit(mbuf_t *b, const char *s) { mbuf_append(b, s, strlen(s)); }

/* ,"key":"value" (or without the comma for the first member); nothing
 * when v is absent. l: where to count invalid UTF-8 (NULL: not counted,
 * the same string was counted in the line). */
static void member_str(loki_t *l, mbuf_t *b, bool *first, const char *key, span_t v)
{
    if (!v.p)
        return;
    mbuf_append(b, *first ? "\"" : ",\"", *first ? 1 : 2);
    *first = false;
    lit(b, key);
    mbuf_append(b, "\":", 2);
    if (json_str(b, v.p, v.len) && l)
        (*l->c_bad_utf8)++;
}

/* A structured metadata member: absent and empty values are left out. */
static void meta_str(mbuf_t *b, bool *first, const char *key, span_t v)
{
    if (v.p && v.len)
        member_str(NULL, b, first, key, v);
}

static void member_int(mbuf_t *b, bool *first, const char *key, int64_t v)
{
    char num[32];
    int n = snprintf(num, sizeof num, "%lld", (long long)v);
    mbuf_append(b, *first ? "\"" : ",\"", *first ? 1 : 2);
    *first = false;
    lit(b, key);
    mbuf_append(b, "\":", 2);
    mbuf_append(b, num, (size_t)n);
}

static void member_uint(mbuf_t *b, bool *first, const char *key, uint64_t v)
{
    char num[32];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    mbuf_append(b, *first ? "\"" : ",\"", *first ? 1 : 2);
    *first = false;
    lit(b, key);
    mbuf_append(b, "\":", 2);
    mbuf_append(b, num, (size_t)n);
}

/* A valid JSON text without the whitespace between its tokens. */
static void json_compact(mbuf_t *b, const char *s, size_t n)
{
    bool in_str = false, esc = false;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            mbuf_append(b, s + run, i - run);
            run = i + 1;
        }
    }
    mbuf_append(b, s + run, n - run);
}

/* ---- the queue ----------------------------------------------------------------- */

static entry_t *qat(loki_t *l, size_t i) { return &l->q[(l->qhead + i) % l->qcap]; }

static void entry_free(entry_t *e)
{
    free(e->mem);
    e->mem = NULL;
}

static void qpop(loki_t *l, entry_t *out)
{
    assert(l->qlen > 0);
    *out = l->q[l->qhead];
    l->qhead = (l->qhead + 1) % l->qcap;
    l->qlen--;
    l->qbytes -= out->vlen + 1;
}

static void qpush(loki_t *l, const entry_t *e)
{
    if (l->qlen == (size_t)l->queue_max) {
        entry_t old;
        qpop(l, &old);
        entry_free(&old);
        (*l->c_drop[DROP_QUEUE])++;
        log_complain(&l->lc_queue, tmtime_mono_ns(), LOG_LVL_WARN,
                     "loki queue full: dropping the oldest entries", "queue=%lld",
                     (long long)l->queue_max);
    }
    if (l->qlen == l->qcap) { /* grow, unrolling the ring */
        size_t ncap = l->qcap ? l->qcap * 2 : 64;
        if (ncap > (size_t)l->queue_max)
            ncap = (size_t)l->queue_max;
        entry_t *nq = xreallocarray(NULL, ncap, sizeof *nq);
        for (size_t i = 0; i < l->qlen; i++)
            nq[i] = *qat(l, i);
        free(l->q);
        l->q = nq;
        l->qcap = ncap;
        l->qhead = 0;
    }
    l->q[(l->qhead + l->qlen) % l->qcap] = *e;
    l->qlen++;
    l->qbytes += e->vlen + 1;
    *l->g_queue = (int64_t)l->qlen;
}

/* Queues the entry made of l->line (the log line), l->scratch (the
 * structured metadata object), a level and a provider (NULL: no label). */
static void enqueue(loki_t *l, int64_t ts, int64_t enq, int level, span_t provider)
{
    if (ts <= l->last_ts)
        ts = l->last_ts + 1;
    l->last_ts = ts;

    mbuf_t v = { 0 };
    if (provider.p && provider.len)
        json_str(&v, provider.p, provider.len); /* counted in the line if replaced */
    size_t plen = v.len;
    char num[32];
    int n = snprintf(num, sizeof num, "[\"%lld\",", (long long)ts);
    mbuf_reserve(&v, (size_t)n + l->line.len + l->line.len / 8 + l->scratch.len + 8);
    mbuf_append(&v, num, (size_t)n);
    json_str(&v, l->line.data, l->line.len); /* the line is valid UTF-8 by construction */
    mbuf_append(&v, ",", 1);
    mbuf_append(&v, l->scratch.data, l->scratch.len);
    mbuf_append(&v, "]", 1);

    entry_t e = { .ts = ts, .enq = enq, .level = (uint8_t)level, .plen = (uint32_t)plen,
                  .vlen = v.len - plen, .mem = v.data };
    qpush(l, &e);
}

/* ---- setup --------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    loki_t *l = arg;
    size_t n = size * nmemb;
    l->resp_seen += n;
    if (l->resp.len < RESP_MAX)
        mbuf_append(&l->resp, p, n < RESP_MAX - l->resp.len ? n : RESP_MAX - l->resp.len);
    return n;
}

/* The first line of path, without its line end; NULL with err on failure. */
static char *read_secret(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(err, cap, "loki_password_file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = xmalloc(PASSWORD_MAX + 1);
    size_t n = fread(buf, 1, PASSWORD_MAX + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || n > PASSWORD_MAX) {
        snprintf(err, cap, "loki_password_file %s: %s", path,
                 bad ? "cannot read it" : "longer than 4096 bytes");
        explicit_bzero(buf, PASSWORD_MAX + 1);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (n == 0 || memchr(buf, '\n', n) || strlen(buf) != n) {
        snprintf(err, cap, "loki_password_file %s: %s", path,
                 n == 0 ? "empty" : "holds more than one line");
        explicit_bzero(buf, PASSWORD_MAX + 1);
        free(buf);
        return NULL;
    }
    return buf;
}

static bool header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

#define SETOPT(opt, val)                                                                      \
    do {                                                                                      \
        if (curl_easy_setopt(l->easy, opt, val) != CURLE_OK) {                                \
            snprintf(err, cap, "libcurl refused %s", #opt);                                   \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

loki_t *loki_new(const cfg_t *cfg, stats_t *st, bool *failed, char *err, size_t cap)
{
    const cfg_exporter_t *x = &cfg->exporter;
    *failed = false;
    if (!x->loki_url || !x->loki_url[0])
        return NULL;
    char *password = NULL;

    size_t ulen = strlen(x->loki_url);
    if (strncmp(x->loki_url, "http://", 7) && strncmp(x->loki_url, "https://", 8)) {
        snprintf(err, cap, "loki_url %s: not an http:// or https:// URL", x->loki_url);
        *failed = true;
        return NULL;
    }
    if (!header_value_ok(x->loki_tenant) || !header_value_ok(x->loki_url)) {
        snprintf(err, cap, "loki_url or loki_tenant: control characters");
        *failed = true;
        return NULL;
    }
    if (x->loki_password_file[0] && !x->loki_user[0]) {
        snprintf(err, cap, "loki_password_file set without loki_user");
        *failed = true;
        return NULL;
    }
    if (x->loki_user[0] && !x->loki_password_file[0]) {
        snprintf(err, cap, "loki_user set without loki_password_file");
        *failed = true;
        return NULL;
    }
    if (x->loki_password_file[0] && !(password = read_secret(x->loki_password_file, err, cap))) {
        *failed = true;
        return NULL;
    }

    loki_t *l = xcalloc(1, sizeof *l);
    /* the base URL, or the push URL itself (what Grafana Cloud shows) */
    size_t plen = strlen(PUSH_PATH);
    if (ulen >= plen && !strcmp(x->loki_url + ulen - plen, PUSH_PATH)) {
        l->url = xstrdup(x->loki_url);
    } else {
        while (ulen > 0 && x->loki_url[ulen - 1] == '/')
            ulen--;
        l->url = xasprintf("%.*s%s", (int)ulen, x->loki_url, PUSH_PATH);
    }
    const char *env = x->env && x->env[0] ? x->env : cfg->global.instance;
    if (env && env[0]) {
        mbuf_t b = { 0 };
        json_str(&b, env, strlen(env));
        mbuf_append(&b, "", 1);
        l->env_json = b.data;
    }
    l->batch_size = x->loki_batch_size;
    l->batch_wait_ns = x->loki_batch_wait * TMTIME_NS_PER_MS;
    l->queue_max = x->loki_queue > 0 ? x->loki_queue : 1;
    l->timeout_ms = x->loki_timeout;
    l->retries = x->loki_retries;
    l->backoff_max_ms = x->loki_backoff_max > 0 ? x->loki_backoff_max : 1;
    l->rng = (uint64_t)tmtime_mono_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
    if (!l->rng)
        l->rng = 1;

    l->c_entries_call = stats_counter(st, "loki_entries_total", "kind=call");
    l->c_entries_alert = stats_counter(st, "loki_entries_total", "kind=alert");
    l->c_sent = stats_counter(st, "loki_entries_sent_total", NULL);
    l->c_pushes = stats_counter(st, "loki_pushes_total", NULL);
    l->c_batches = stats_counter(st, "loki_batches_sent_total", NULL);
    l->c_retries = stats_counter(st, "loki_retries_total", NULL);
    for (int i = 0; i < NERR; i++)
        l->c_err[i] = stats_counter(st, "loki_push_errors_total", err_label[i]);
    for (int i = 0; i < NDROP; i++)
        l->c_drop[i] = stats_counter(st, "loki_dropped_total", drop_label[i]);
    l->c_json_bytes = stats_counter(st, "loki_json_bytes_total", NULL);
    l->c_gzip_bytes = stats_counter(st, "loki_sent_bytes_total", NULL);
    l->c_bad_utf8 = stats_counter(st, "loki_invalid_utf8_total", NULL);
    l->c_alert_bad_json = stats_counter(st, "loki_alert_bad_json_total", NULL);
    l->g_queue = stats_gauge(st, "loki_queue", NULL);
    l->g_batch = stats_gauge(st, "loki_batch_entries", NULL);
    l->g_last_push_ms = stats_gauge(st, "loki_last_push_ms", NULL);
    l->g_last_ok = stats_gauge(st, "loki_last_success_seconds", NULL);

    if (deflateInit2(&l->zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
        snprintf(err, cap, "zlib: deflateInit2 failed");
        goto fail;
    }
    l->zs_ok = true;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, cap, "libcurl: curl_global_init failed");
        goto fail;
    }
    l->curl_ok = true;
    l->multi = curl_multi_init();
    l->easy = curl_easy_init();
    if (!l->multi || !l->easy) {
        snprintf(err, cap, "libcurl: cannot make a handle");
        goto fail;
    }
    l->headers = curl_slist_append(l->headers, "Content-Type: application/json");
    l->headers = curl_slist_append(l->headers, "Content-Encoding: gzip");
    l->headers = curl_slist_append(l->headers, "Expect:"); /* no 100-continue round trip */
    if (x->loki_tenant[0]) {
        char *h = xasprintf("X-Scope-OrgID: %s", x->loki_tenant);
        l->headers = curl_slist_append(l->headers, h);
        free(h);
    }
    if (!l->headers) {
        snprintf(err, cap, "libcurl: cannot make the header list");
        goto fail;
    }
    SETOPT(CURLOPT_URL, l->url);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_POST, 1L);
    SETOPT(CURLOPT_HTTPHEADER, l->headers);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)l->timeout_ms);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_USERAGENT, "tokmon-exporter/" TOKMON_VERSION);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, l);
    SETOPT(CURLOPT_ERRORBUFFER, l->curl_err);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    if (password) {
        SETOPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SETOPT(CURLOPT_USERNAME, x->loki_user);
        SETOPT(CURLOPT_PASSWORD, password); /* libcurl keeps its own copy */
        explicit_bzero(password, PASSWORD_MAX + 1);
        free(password);
        password = NULL;
    }
    return l;

fail:
    if (password) {
        explicit_bzero(password, PASSWORD_MAX + 1);
        free(password);
    }
    *failed = true;
    loki_destroy(&l);
    return NULL;
}

static void batch_clear(loki_t *l)
{
    for (size_t i = 0; i < l->bn; i++)
        entry_free(&l->b[i]);
    l->bn = 0;
    l->tries = 0;
    l->next_try = 0;
    mbuf_reset(&l->body);
    mbuf_reset(&l->gz);
    *l->g_batch = 0;
}

/* Drops everything not yet accepted, counted under reason. */
static void drop_all(loki_t *l, int reason)
{
    if (l->in_flight) {
        curl_multi_remove_handle(l->multi, l->easy);
        l->in_flight = false;
    }
    *l->c_drop[reason] += (int64_t)l->bn;
    batch_clear(l);
    while (l->qlen) {
        entry_t e;
        qpop(l, &e);
        entry_free(&e);
        (*l->c_drop[reason])++;
    }
    *l->g_queue = 0;
}

void loki_destroy(loki_t **lp)
{
    loki_t *l = *lp;
    if (!l)
        return;
    if (l->g_queue) /* the counters exist once past the start */
        drop_all(l, DROP_SHUTDOWN);
    if (l->easy)
        curl_easy_cleanup(l->easy);
    if (l->multi)
        curl_multi_cleanup(l->multi);
    if (l->curl_ok)
        curl_global_cleanup();
    curl_slist_free_all(l->headers);
    if (l->zs_ok)
        deflateEnd(&l->zs);
    free(l->q);
    free(l->b);
    free(l->order);
    mbuf_free(&l->body);
    mbuf_free(&l->gz);
    mbuf_free(&l->resp);
    mbuf_free(&l->line);
    mbuf_free(&l->scratch);
    free(l->url);
    free(l->env_json);
    free(l);
    *lp = NULL;
}

/* ---- entries ------------------------------------------------------------------- */

void loki_call(loki_t *l, const msg_usage_t *u, int64_t now_ns)
{
    if (!l)
        return;
    l->now = now_ns;
    (*l->c_entries_call)++;

    /* the line: the bus record's fields, absent ones left out */
    mbuf_t *b = &l->line;
    mbuf_reset(b);
    bool first = true;
    mbuf_append(b, "{", 1);
    member_str(l, b, &first, "kind", SPAN_LIT("call"));
    member_int(b, &first, "ts", u->ts);
    member_int(b, &first, "recv_ts", u->recv_ts);
    member_str(l, b, &first, "provider", u->provider);
    member_str(l, b, &first, "model", u->model);
    member_str(l, b, &first, "operation", u->operation);
    member_str(l, b, &first, "user", u->user);
    member_str(l, b, &first, "account", u->account);
    member_str(l, b, &first, "project", u->project);
    member_str(l, b, &first, "status", u->status);
    if (u->http_status)
        member_int(b, &first, "http_status", u->http_status);
    member_str(l, b, &first, "error_type", u->error_type);
    member_str(l, b, &first, "request_id", u->request_id);
    member_uint(b, &first, "requests", u->requests);
    member_uint(b, &first, "input_tokens", u->input_tokens);
    member_uint(b, &first, "cache_read_tokens", u->cache_read_tokens);
    member_uint(b, &first, "cache_write_tokens", u->cache_write_tokens);
    member_uint(b, &first, "cache_write_1h_tokens", u->cache_write_1h_tokens);
    member_uint(b, &first, "output_tokens", u->output_tokens);
    member_uint(b, &first, "reasoning_tokens", u->reasoning_tokens);
    if (u->latency_us >= 0)
        member_int(b, &first, "latency_us", u->latency_us);
    if (u->ttft_us >= 0)
        member_int(b, &first, "ttft_us", u->ttft_us);
    char cost[DEC_FMT_MAX];
    if (dec_format((__int128)u->cost_nusd, 9, true, cost, sizeof cost) < 0)
        snprintf(cost, sizeof cost, "0");
    member_str(l, b, &first, "cost_usd", span_cstr(cost));
    member_int(b, &first, "cost_nusd", u->cost_nusd);
    member_str(l, b, &first, "cost_source", u->cost_source);
    member_str(l, b, &first, "price_version", u->price_version);
    if (u->retries >= 0)
        member_int(b, &first, "retries", u->retries);
    if (u->is_signed) {
        mbuf_append(b, ",\"signed\":true", 14);
        member_str(l, b, &first, "key_id", u->key_id);
    }
    if (u->ntags) {
        mbuf_append(b, ",\"tags\":{", 9);
        for (size_t i = 0; i < u->ntags && i < MSG_MAX_TAGS; i++) {
            if (i)
                mbuf_append(b, ",", 1);
            span_t k = u->tags[i].key, v = u->tags[i].value;
            if (json_str(b, k.p ? k.p : "", k.len))
                (*l->c_bad_utf8)++;
            mbuf_append(b, ":", 1);
            if (json_str(b, v.p ? v.p : "", v.p ? v.len : 0))
                (*l->c_bad_utf8)++;
        }
        mbuf_append(b, "}", 1);
    }
    mbuf_append(b, "}", 1);

    /* structured metadata: string values, absent ones left out */
    b = &l->scratch;
    mbuf_reset(b);
    first = true;
    mbuf_append(b, "{", 1);
    meta_str(b, &first, "kind", SPAN_LIT("call"));
    meta_str(b, &first, "user", u->user);
    meta_str(b, &first, "account", u->account);
    meta_str(b, &first, "project", u->project);
    meta_str(b, &first, "model", u->model);
    meta_str(b, &first, "operation", u->operation);
    meta_str(b, &first, "request_id", u->request_id);
    mbuf_append(b, "}", 1);

    int level = span_eq_cstr(u->status, "error") ? LV_ERROR : LV_INFO;
    enqueue(l, now_ns, now_ns, level, u->provider);
}

void loki_alert(loki_t *l, const char *alertname, const char *state, const char *severity,
                const char *json, size_t jsonlen, int64_t ts_ns)
{
    if (!l)
        return;
    (*l->c_entries_alert)++;
    span_t name = span_cstr(alertname), st = span_cstr(state), sev = span_cstr(severity);

    mbuf_t *b = &l->line;
    mbuf_reset(b);
    bool first = true;
    mbuf_append(b, "{", 1);
    member_str(l, b, &first, "kind", SPAN_LIT("alert"));
    member_int(b, &first, "ts", ts_ns);
    member_str(l, b, &first, "alertname", name);
    member_str(l, b, &first, "state", st);
    member_str(l, b, &first, "severity", sev);
    if (json && jsonlen) {
        jtok_err_t je;
        size_t i = 0;
        while (i < jsonlen && (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r'))
            i++;
        if (i < jsonlen && json[i] == '{' &&
            jtok_parse(json, jsonlen, NULL, 0, ALERT_JSON_DEPTH, &je) > 0) {
            mbuf_append(b, ",\"alert\":", 9);
            json_compact(b, json, jsonlen);
        } else {
            (*l->c_alert_bad_json)++;
            member_str(l, b, &first, "alert_text", span_make(json, jsonlen));
        }
    }
    mbuf_append(b, "}", 1);

    b = &l->scratch;
    mbuf_reset(b);
    first = true;
    mbuf_append(b, "{", 1);
    meta_str(b, &first, "kind", SPAN_LIT("alert"));
    meta_str(b, &first, "alertname", name);
    meta_str(b, &first, "state", st);
    meta_str(b, &first, "severity", sev);
    mbuf_append(b, "}", 1);

    /* a resolution is news, not trouble: info whatever the severity */
    int level = LV_INFO;
    if (!span_eq_cstr(st, "resolved")) {
        if (span_eq_cstr(sev, "critical") || span_eq_cstr(sev, "error"))
            level = LV_ERROR;
        else if (span_eq_cstr(sev, "warning") || span_eq_cstr(sev, "warn"))
            level = LV_WARN;
    }
    enqueue(l, ts_ns, l->now ? l->now : ts_ns, level, SPAN_NULL);
}

/* ---- batches ------------------------------------------------------------------- */

static int by_stream(const void *a, const void *b, void *arg)
{
    const entry_t *es = arg;
    const entry_t *x = &es[*(const size_t *)a], *y = &es[*(const size_t *)b];
    if (x->level != y->level)
        return x->level < y->level ? -1 : 1;
    if (x->plen != y->plen)
        return x->plen < y->plen ? -1 : 1;
    int c = memcmp(x->mem, y->mem, x->plen);
    if (c)
        return c;
    /* arrival order (= time order) within a stream */
    return *(const size_t *)a < *(const size_t *)b ? -1 : 1;
}

static bool same_stream(const entry_t *x, const entry_t *y)
{
    return x->level == y->level && x->plen == y->plen && !memcmp(x->mem, y->mem, x->plen);
}

static void stream_head(loki_t *l, const entry_t *e)
{
    mbuf_t *b = &l->body;
    lit(b, "{\"stream\":{\"service\":\"tokmon\"");
    if (l->env_json) {
        lit(b, ",\"env\":");
        lit(b, l->env_json);
    }
    lit(b, ",\"level\":\"");
    lit(b, level_name[e->level]);
    mbuf_append(b, "\"", 1);
    if (e->plen) {
        lit(b, ",\"provider\":");
        mbuf_append(b, e->mem, e->plen);
    }
    lit(b, "},\"values\":[");
}

/* Takes entries from the queue's head (at least one, then as long as the
 * batch stays within batch_size), encodes and gzips them. */
static int batch_fill(loki_t *l)
{
    size_t bytes = 0;
    while (l->qlen) {
        size_t size = qat(l, 0)->vlen + 1;
        if (l->bn && bytes + size > (size_t)l->batch_size)
            break;
        if (l->bn == l->bcap) {
            l->bcap = l->bcap ? l->bcap * 2 : 64;
            l->b = xreallocarray(l->b, l->bcap, sizeof *l->b);
        }
        qpop(l, &l->b[l->bn++]);
        bytes += size;
    }
    *l->g_queue = (int64_t)l->qlen;
    *l->g_batch = (int64_t)l->bn;

    if (l->bn > l->ordercap) {
        l->ordercap = l->bn;
        l->order = xreallocarray(l->order, l->ordercap, sizeof *l->order);
    }
    for (size_t i = 0; i < l->bn; i++)
        l->order[i] = i;
    qsort_r(l->order, l->bn, sizeof *l->order, by_stream, l->b);

    mbuf_t *b = &l->body;
    mbuf_reset(b);
    mbuf_reserve(b, bytes + 256);
    lit(b, "{\"streams\":[");
    for (size_t i = 0; i < l->bn; i++) {
        const entry_t *e = &l->b[l->order[i]];
        if (i == 0 || !same_stream(e, &l->b[l->order[i - 1]])) {
            if (i)
                lit(b, "]},");
            stream_head(l, e);
        } else {
            mbuf_append(b, ",", 1);
        }
        mbuf_append(b, e->mem + e->plen, e->vlen);
    }
    if (l->bn)
        lit(b, "]}");
    lit(b, "]}");
    *l->c_json_bytes += (int64_t)b->len;

    /* gzip, once for every try */
    if (deflateReset(&l->zs) != Z_OK)
        return -1;
    mbuf_reset(&l->gz);
    mbuf_reserve(&l->gz, deflateBound(&l->zs, b->len));
    l->zs.next_in = (Bytef *)b->data;
    l->zs.avail_in = (uInt)b->len;
    l->zs.next_out = (Bytef *)l->gz.data;
    l->zs.avail_out = (uInt)l->gz.cap;
    int rc = deflate(&l->zs, Z_FINISH);
    if (rc != Z_STREAM_END)
        return -1;
    l->gz.len = l->gz.cap - l->zs.avail_out;
    l->tries = 0;
    l->next_try = 0;
    return 0;
}

static uint64_t rnd(loki_t *l)
{
    uint64_t x = l->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return l->rng = x;
}

/* The wait before the next try, ms: exponential from BACKOFF_BASE_MS with
 * "equal jitter" (half fixed, half random), capped; or what Retry-After
 * asked for (capped too). */
static int64_t backoff_ms(loki_t *l, int64_t retry_after_ms)
{
    int64_t cap = l->backoff_max_ms;
    if (retry_after_ms > 0)
        return retry_after_ms < cap ? retry_after_ms : cap;
    int64_t d = BACKOFF_BASE_MS < cap ? BACKOFF_BASE_MS : cap;
    for (int64_t i = 1; i < l->tries && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    return d / 2 + (int64_t)(rnd(l) % (uint64_t)(d - d / 2 + 1));
}

static void start_push(loki_t *l)
{
    mbuf_reset(&l->resp);
    l->resp_seen = 0;
    l->curl_err[0] = '\0';
    curl_easy_setopt(l->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)l->gz.len);
    curl_easy_setopt(l->easy, CURLOPT_POSTFIELDS, l->gz.data);
    if (curl_multi_add_handle(l->multi, l->easy) != CURLM_OK) {
        /* cannot happen with a handle not already added; count it as a transport error */
        (*l->c_err[ERR_TRANSPORT])++;
        l->next_try = l->now + 1000 * TMTIME_NS_PER_MS;
        return;
    }
    l->tries++;
    (*l->c_pushes)++;
    *l->c_gzip_bytes += (int64_t)l->gz.len;
    l->in_flight = true;
    l->sent_mono = tmtime_mono_ns();
}

/* One request is over: curl's result and, with an answer, its status. */
static void push_done(loki_t *l, CURLcode res)
{
    curl_multi_remove_handle(l->multi, l->easy);
    l->in_flight = false;
    *l->g_last_push_ms = (tmtime_mono_ns() - l->sent_mono) / TMTIME_NS_PER_MS;
    int64_t now_mono = tmtime_mono_ns();

    long status = 0;
    int kind;
    if (res == CURLE_OK) {
        curl_easy_getinfo(l->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200 && status < 300) {
            *l->c_sent += (int64_t)l->bn;
            (*l->c_batches)++;
            *l->g_last_ok = l->now / TMTIME_NS_PER_SEC;
            batch_clear(l);
            log_release(&l->lc_push, "loki push works again", NULL);
            if (l->qlen < (size_t)l->queue_max)
                log_release(&l->lc_queue, "loki queue has room again", NULL);
            return;
        }
        kind = status == 429 ? ERR_429
             : status >= 500 && status < 600 ? ERR_5XX
             : status >= 400 && status < 500 ? ERR_4XX
             : ERR_OTHER;
    } else {
        kind = res == CURLE_OPERATION_TIMEDOUT ? ERR_TIMEOUT : ERR_TRANSPORT;
    }
    (*l->c_err[kind])++;

    if (kind == ERR_4XX || kind == ERR_OTHER) {
        /* Loki will not take this batch however often it is sent */
        char q[600];
        log_quote(q, sizeof q, l->resp.data ? l->resp.data : "", l->resp.len);
        log_complain(&l->lc_reject, now_mono, LOG_LVL_ERROR, "loki refused a batch; dropped",
                     "status=%ld entries=%zu body=%s", status, l->bn, q);
        *l->c_drop[DROP_REJECTED] += (int64_t)l->bn;
        batch_clear(l);
        return;
    }
    if (l->tries > l->retries) {
        log_complain(&l->lc_push, now_mono, LOG_LVL_ERROR, "loki push failed; batch dropped",
                     "status=%ld error=\"%s\" tries=%lld entries=%zu", status,
                     kind == ERR_TIMEOUT ? "timeout"
                     : kind == ERR_TRANSPORT ? curl_easy_strerror(res) : "http",
                     (long long)l->tries, l->bn);
        *l->c_drop[DROP_RETRIES] += (int64_t)l->bn;
        batch_clear(l);
        return;
    }
    curl_off_t ra = 0;
    if ((kind == ERR_429 || kind == ERR_5XX) &&
        curl_easy_getinfo(l->easy, CURLINFO_RETRY_AFTER, &ra) != CURLE_OK)
        ra = 0;
    int64_t wait = backoff_ms(l, ra > 0 ? (int64_t)ra * 1000 : 0);
    l->next_try = l->now + wait * TMTIME_NS_PER_MS;
    (*l->c_retries)++;
    log_complain(&l->lc_push, now_mono, LOG_LVL_WARN, "loki push failed; retrying",
                 "status=%ld error=\"%s\" try=%lld wait_ms=%lld", status,
                 kind == ERR_TIMEOUT ? "timeout"
                 : kind == ERR_TRANSPORT ? curl_easy_strerror(res) : "http",
                 (long long)l->tries, (long long)wait);
}

static bool queue_due(const loki_t *l, int64_t now)
{
    if (!l->qlen)
        return false;
    if (l->force || l->qbytes >= (size_t)l->batch_size)
        return true;
    int64_t oldest = l->q[l->qhead].enq;
    /* a clock stepped far back must not hold the batch */
    return now - oldest >= l->batch_wait_ns || oldest - now > l->batch_wait_ns;
}

static void poll_curl(loki_t *l)
{
    if (!l->in_flight)
        return;
    int running = 0;
    curl_multi_perform(l->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(l->multi, &left)))
        if (m->msg == CURLMSG_DONE && m->easy_handle == l->easy)
            push_done(l, m->data.result);
}

long loki_work(loki_t *l, int64_t now_ns)
{
    if (!l)
        return IDLE_MS;
    l->now = now_ns;
    for (int turn = 0; turn < 4; turn++) {
        poll_curl(l);
        if (l->in_flight)
            break;
        if (!l->bn) {
            if (!queue_due(l, now_ns))
                break;
            if (batch_fill(l) < 0) { /* zlib failed: nothing to do but drop */
                (*l->c_drop[DROP_REJECTED]) += (int64_t)l->bn;
                batch_clear(l);
                continue;
            }
        }
        if (now_ns < l->next_try)
            break;
        start_push(l);
    }

    long ms = IDLE_MS;
    if (l->in_flight) {
        long t = -1;
        curl_multi_timeout(l->multi, &t);
        ms = t >= 0 && t < INFLIGHT_MS ? t : INFLIGHT_MS;
    } else if (l->bn) {
        int64_t d = l->next_try - now_ns;
        ms = d <= 0 ? 0 : (long)((d + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
    } else if (l->qlen) {
        int64_t d = l->q[l->qhead].enq + l->batch_wait_ns - now_ns;
        ms = d <= 0 ? 0 : (long)((d + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
    }
    return ms < IDLE_MS ? ms : IDLE_MS;
}

void loki_drain(loki_t *l, long timeout_ms)
{
    if (!l)
        return;
    int64_t start = tmtime_mono_ns(), end = start + (int64_t)timeout_ms * TMTIME_NS_PER_MS;
    int64_t base = l->now; /* the caller's clock, carried on by the monotonic one */
    l->force = true;
    for (;;) {
        int64_t mono = tmtime_mono_ns();
        long ms = loki_work(l, base + (mono - start));
        if (!l->in_flight && !l->bn && !l->qlen)
            break;
        mono = tmtime_mono_ns();
        if (mono >= end)
            break;
        long left = (long)((end - mono + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
        if (ms > left)
            ms = left;
        if (ms < 1)
            ms = 1;
        int n;
        curl_multi_poll(l->multi, NULL, 0, (int)ms, &n);
    }
    l->force = false;
    if (l->in_flight || l->bn || l->qlen) {
        size_t n = l->bn + l->qlen;
        drop_all(l, DROP_SHUTDOWN);
        log_warn("loki: entries not sent at shutdown", "dropped=%zu", n);
    }
}

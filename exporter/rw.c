/* rw: see rw.h. One request at a time, in order: a WriteRequest holds at
 * most RW_BATCH series, and an interval with more sends several, one after
 * the other, so a receiver never sees an older sample after a newer one. */
#include "rw.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <snappy-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "remote.pb-c.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define RW_BATCH 2000          /* series per request, as Prometheus' max_samples_per_send */
#define RW_BACKOFF_MIN_MS 100  /* the first retry's wait (before jitter and the cap) */
#define RW_ANSWER_MAX 256      /* bytes of a refusal's body kept for the log */
#define RW_SECRET_MAX 4096     /* a password or token file */
#define RW_POLL_MS 10          /* loop period while a request is in flight */
#define RW_OFF_MS 3600000L     /* what rw_work(NULL) asks for */

/* ---- names ------------------------------------------------------------------- */

static bool name_ok(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (p > s && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

bool rw_metric_name_ok(const char *s) { return name_ok(s, true); }
bool rw_label_name_ok(const char *s) { return name_ok(s, false); }

/* ---- encoding ---------------------------------------------------------------- */

typedef struct {
    size_t name, value; /* offsets of NUL-terminated strings in the pool */
} enc_label_t;

typedef struct {
    size_t label0, nlabels;
    double value;
    int64_t ts_ms;
} enc_series_t;

struct rw_enc {
    mbuf_t pool;
    enc_label_t *labels;
    size_t nlabels, labels_cap;
    enc_series_t *series;
    size_t nseries, series_cap;
    model_label_t *sort; /* one series' labels while it is checked */
    size_t sort_cap;
    mbuf_t packed;
};

rw_enc_t *rw_enc_new(void) { return xcalloc(1, sizeof(rw_enc_t)); }

void rw_enc_destroy(rw_enc_t **pe)
{
    rw_enc_t *e = *pe;
    if (!e)
        return;
    mbuf_free(&e->pool);
    mbuf_free(&e->packed);
    free(e->labels);
    free(e->series);
    free(e->sort);
    free(e);
    *pe = NULL;
}

size_t rw_enc_series(const rw_enc_t *e) { return e->nseries; }

static size_t pool_add(rw_enc_t *e, const char *s)
{
    size_t off = e->pool.len;
    mbuf_append(&e->pool, s, strlen(s) + 1);
    return off;
}

static int label_cmp(const void *a, const void *b)
{
    /* strcmp compares as unsigned char: the byte order the spec asks for */
    return strcmp(((const model_label_t *)a)->name, ((const model_label_t *)b)->name);
}

const char *rw_enc_add(rw_enc_t *e, const char *name, const model_label_t *labels,
                       size_t nlabels, double value, int64_t ts_ms, size_t *empty)
{
    if (!rw_metric_name_ok(name))
        return "metric_name";
    if (e->sort_cap < nlabels + 1) {
        e->sort_cap = nlabels + 1;
        e->sort = xreallocarray(e->sort, e->sort_cap, sizeof *e->sort);
    }
    size_t n = 0, dropped = 0;
    e->sort[n++] = (model_label_t){ "__name__", name };
    for (size_t i = 0; i < nlabels; i++) {
        const model_label_t *l = &labels[i];
        if (!l->value || !*l->value) {
            dropped++;
            continue;
        }
        if (!rw_label_name_ok(l->name))
            return "label_name";
        if (!utf8_valid(l->value, strlen(l->value)))
            return "utf8";
        e->sort[n++] = *l;
    }
    qsort(e->sort, n, sizeof *e->sort, label_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(e->sort[i - 1].name, e->sort[i].name) == 0)
            return "duplicate_label";

    if (e->nseries == e->series_cap) {
        e->series_cap = e->series_cap ? 2 * e->series_cap : 64;
        e->series = xreallocarray(e->series, e->series_cap, sizeof *e->series);
    }
    if (e->nlabels + n > e->labels_cap) {
        while (e->nlabels + n > e->labels_cap)
            e->labels_cap = e->labels_cap ? 2 * e->labels_cap : 256;
        e->labels = xreallocarray(e->labels, e->labels_cap, sizeof *e->labels);
    }
    e->series[e->nseries++] = (enc_series_t){ e->nlabels, n, value, ts_ms };
    for (size_t i = 0; i < n; i++) {
        size_t k = pool_add(e, e->sort[i].name);
        size_t v = pool_add(e, e->sort[i].value);
        e->labels[e->nlabels++] = (enc_label_t){ k, v };
    }
    if (empty)
        *empty += dropped;
    return NULL;
}

static void enc_clear(rw_enc_t *e)
{
    mbuf_reset(&e->pool);
    e->nlabels = e->nseries = 0;
}

int rw_enc_finish(rw_enc_t *e, mbuf_t *out, char *err, size_t cap)
{
    size_t ns = e->nseries, nl = e->nlabels;
    /* protobuf-c wants arrays of pointers to messages */
    Prometheus__TimeSeries *ts = xcalloc(ns + 1, sizeof *ts);
    Prometheus__TimeSeries **tsp = xcalloc(ns + 1, sizeof *tsp);
    Prometheus__Sample *sm = xcalloc(ns + 1, sizeof *sm);
    Prometheus__Sample **smp = xcalloc(ns + 1, sizeof *smp);
    Prometheus__Label *lb = xcalloc(nl + 1, sizeof *lb);
    Prometheus__Label **lbp = xcalloc(nl + 1, sizeof *lbp);
    for (size_t j = 0; j < nl; j++) {
        prometheus__label__init(&lb[j]);
        lb[j].name = e->pool.data + e->labels[j].name;
        lb[j].value = e->pool.data + e->labels[j].value;
        lbp[j] = &lb[j];
    }
    for (size_t i = 0; i < ns; i++) {
        const enc_series_t *s = &e->series[i];
        prometheus__sample__init(&sm[i]);
        sm[i].value = s->value;
        sm[i].timestamp = s->ts_ms;
        smp[i] = &sm[i];
        prometheus__time_series__init(&ts[i]);
        ts[i].n_labels = s->nlabels;
        ts[i].labels = &lbp[s->label0];
        ts[i].n_samples = 1;
        ts[i].samples = &smp[i];
        tsp[i] = &ts[i];
    }
    Prometheus__WriteRequest wr;
    prometheus__write_request__init(&wr);
    wr.n_timeseries = ns;
    wr.timeseries = tsp;

    size_t n = prometheus__write_request__get_packed_size(&wr);
    mbuf_reset(&e->packed);
    mbuf_reserve(&e->packed, n + 1);
    size_t w = prometheus__write_request__pack(&wr, (uint8_t *)e->packed.data);
    assert(w == n);
    e->packed.len = w;
    free(ts);
    free(tsp);
    free(sm);
    free(smp);
    free(lb);
    free(lbp);
    enc_clear(e);

    size_t max = snappy_max_compressed_length(n);
    mbuf_reset(out);
    mbuf_reserve(out, max);
    size_t clen = max;
    snappy_status st = snappy_compress(e->packed.data, n, out->data, &clen);
    if (st != SNAPPY_OK || clen > max) {
        snprintf(err, cap, "snappy_compress failed (status %d, %zu bytes in)", (int)st, n);
        return -1;
    }
    out->len = clen;
    return 0;
}

/* ---- the sender -------------------------------------------------------------- */

/* why a series is skipped, as rw_enc_add says it */
static const char *const invalid_reasons[] = { "metric_name", "label_name", "duplicate_label",
                                               "utf8" };
#define NINVALID (sizeof invalid_reasons / sizeof invalid_reasons[0])

enum { E_5XX, E_429, E_4XX, E_OTHER, E_TRANSPORT, E_ENCODE, NERR };
static const char *const err_reasons[NERR] = { "http_5xx", "http_429", "http_4xx",
                                               "http_other", "transport", "encode" };
enum { D_SUPERSEDED, D_RETRIES, D_REJECTED, D_SHUTDOWN, D_ENCODE, NDROP };
static const char *const drop_reasons[NDROP] = { "superseded", "retries", "rejected", "shutdown",
                                                 "encode" };

typedef struct {
    mbuf_t body; /* snappy-compressed WriteRequest */
    size_t samples;
} req_t;

struct rw {
    stats_t *st;
    char *url;
    char *user, *password;      /* basic auth, or NULL */
    struct curl_slist *headers; /* a bearer token among them, when set */
    int64_t interval_ns, timeout_ms, retries, backoff_max_ms;

    bool curl_global; /* curl_global_init done: undone in rw_destroy */
    CURLM *multi;
    CURL *easy;
    bool inflight;
    int64_t sent_mono;
    char curl_err[CURL_ERROR_SIZE];
    char answer[RW_ANSWER_MAX];
    size_t answer_len;

    rw_enc_t *enc;
    /* this interval's requests, sent in order; q[qhead] is the current one */
    req_t *q;
    size_t qhead, qn, qcap;
    int64_t tries;    /* attempts of q[qhead] so far */
    int64_t retry_ns; /* q[qhead] goes (again) at or after this */
    int64_t next_ns;  /* the next interval's snapshot; 0: not yet scheduled */
    uint64_t rng;

    int64_t *c_requests, *c_samples, *c_retries, *c_bytes, *c_empty;
    int64_t *c_errors[NERR], *c_dropped[NDROP], *c_invalid[NINVALID];
    int64_t *g_last_ms, *g_duration_ms, *g_series;
    log_complain_t lc_fail, lc_reject, lc_invalid;
};

static char *origin(const cfg_t *cfg, const char *key, char *out, size_t cap)
{
    cfg_origin(cfg, "exporter", key, out, cap);
    return out;
}

/* The first line of a secret file, its line end stripped. */
static char *read_secret(const cfg_t *cfg, const char *key, const char *path, char *err,
                         size_t cap)
{
    char where[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, cap, "%s: [exporter] %s: %s: %s", origin(cfg, key, where, sizeof where),
                 key, path, strerror(errno));
        return NULL;
    }
    char buf[RW_SECRET_MAX + 1];
    size_t n = 0;
    for (;;) {
        ssize_t k = read(fd, buf + n, sizeof buf - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            snprintf(err, cap, "%s: [exporter] %s: %s: %s",
                     origin(cfg, key, where, sizeof where), key, path, strerror(errno));
            close(fd);
            return NULL;
        }
        if (k == 0 || (n += (size_t)k) == sizeof buf)
            break;
    }
    close(fd);
    const char *why = NULL;
    if (n > RW_SECRET_MAX)
        why = "longer than 4096 bytes";
    while (!why && n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (!why && n == 0)
        why = "empty";
    if (!why && (memchr(buf, '\n', n) || memchr(buf, '\r', n) || memchr(buf, '\0', n)))
        why = "more than one line";
    char *s = why ? NULL : xstrndup(buf, n);
    explicit_bzero(buf, sizeof buf);
    if (why)
        snprintf(err, cap, "%s: [exporter] %s: %s: %s", origin(cfg, key, where, sizeof where),
                 key, path, why);
    return s;
}

static void free_secret(char **s)
{
    if (*s) {
        explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

static size_t on_answer(char *p, size_t size, size_t n, void *arg)
{
    rw_t *r = arg;
    size_t len = size * n;
    size_t room = sizeof r->answer - r->answer_len;
    size_t k = len < room ? len : room;
    memcpy(r->answer + r->answer_len, p, k);
    r->answer_len += k;
    return len; /* the rest is read and forgotten */
}

static bool setup_curl(rw_t *r, char *err, size_t cap)
{
    r->multi = curl_multi_init();
    r->easy = curl_easy_init();
    if (!r->multi || !r->easy) {
        snprintf(err, cap, "remote write: libcurl failed to start");
        return false;
    }
    static const char *const hdrs[] = { "Content-Encoding: snappy",
                                        "Content-Type: application/x-protobuf",
                                        "X-Prometheus-Remote-Write-Version: 0.1.0",
                                        "Expect:" /* no 100-continue round trip */ };
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++)
        r->headers = curl_slist_append(r->headers, hdrs[i]);
    CURL *c = r->easy;
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "tokmon-exporter/" TOKMON_VERSION);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)r->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    if (r->user) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, r->user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, r->password);
    }
    return true;
}

rw_t *rw_new(const cfg_t *cfg, stats_t *st, bool *failed, char *err, size_t cap)
{
    const cfg_exporter_t *x = &cfg->exporter;
    *failed = false;
    if (!x->remote_write_url || !*x->remote_write_url)
        return NULL;
    char where[256];
    *failed = true;
    if (strncmp(x->remote_write_url, "http://", 7) != 0 &&
        strncmp(x->remote_write_url, "https://", 8) != 0) {
        snprintf(err, cap, "%s: [exporter] remote_write_url: not an http:// or https:// URL",
                 origin(cfg, "remote_write_url", where, sizeof where));
        return NULL;
    }
    bool user = *x->remote_write_user, pass = *x->remote_write_password_file,
         bearer = *x->remote_write_bearer_file;
    if (bearer && (user || pass)) {
        snprintf(err, cap,
                 "%s: [exporter] remote_write_bearer_file: set either it or "
                 "remote_write_user and remote_write_password_file, not both",
                 origin(cfg, "remote_write_bearer_file", where, sizeof where));
        return NULL;
    }
    if (user != pass) {
        const char *key = user ? "remote_write_user" : "remote_write_password_file";
        snprintf(err, cap,
                 "%s: [exporter] %s: basic auth needs both remote_write_user and "
                 "remote_write_password_file",
                 origin(cfg, key, where, sizeof where), key);
        return NULL;
    }

    rw_t *r = xcalloc(1, sizeof *r);
    r->st = st;
    r->url = xstrdup(x->remote_write_url);
    r->interval_ns = x->remote_write_interval * TMTIME_NS_PER_MS;
    r->timeout_ms = x->remote_write_timeout;
    r->retries = x->remote_write_retries;
    r->backoff_max_ms = x->remote_write_backoff_max;
    r->rng = (uint64_t)tmtime_mono_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
    if (user) {
        r->password = read_secret(cfg, "remote_write_password_file",
                                  x->remote_write_password_file, err, cap);
        if (!r->password)
            goto fail;
        r->user = xstrdup(x->remote_write_user);
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    r->curl_global = true;
    if (!setup_curl(r, err, cap))
        goto fail;
    if (bearer) {
        char *tok = read_secret(cfg, "remote_write_bearer_file", x->remote_write_bearer_file,
                                err, cap);
        if (!tok)
            goto fail;
        char *h = xasprintf("Authorization: Bearer %s", tok);
        r->headers = curl_slist_append(r->headers, h); /* copies */
        free_secret(&tok);
        free_secret(&h);
        curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
    }
    r->enc = rw_enc_new();

    r->c_requests = stats_counter(st, "rw_requests_total", NULL);
    r->c_samples = stats_counter(st, "rw_samples_total", NULL);
    r->c_retries = stats_counter(st, "rw_retries_total", NULL);
    r->c_bytes = stats_counter(st, "rw_bytes_total", NULL);
    r->c_empty = stats_counter(st, "rw_empty_labels_total", NULL);
    char labels[64];
    for (size_t i = 0; i < NERR; i++) {
        snprintf(labels, sizeof labels, "reason=%s", err_reasons[i]);
        r->c_errors[i] = stats_counter(st, "rw_errors_total", labels);
    }
    for (size_t i = 0; i < NDROP; i++) {
        snprintf(labels, sizeof labels, "reason=%s", drop_reasons[i]);
        r->c_dropped[i] = stats_counter(st, "rw_dropped_total", labels);
    }
    for (size_t i = 0; i < NINVALID; i++) {
        snprintf(labels, sizeof labels, "reason=%s", invalid_reasons[i]);
        r->c_invalid[i] = stats_counter(st, "rw_invalid_series_total", labels);
    }
    r->g_last_ms = stats_gauge(st, "rw_last_ms", NULL);
    r->g_duration_ms = stats_gauge(st, "rw_request_duration_ms", NULL);
    r->g_series = stats_gauge(st, "rw_series", NULL);
    *failed = false;
    return r;
fail:
    rw_destroy(&r);
    *failed = true;
    return NULL;
}

void rw_destroy(rw_t **pr)
{
    rw_t *r = *pr;
    if (!r)
        return;
    if (r->multi && r->easy && r->inflight)
        curl_multi_remove_handle(r->multi, r->easy);
    if (r->easy)
        curl_easy_cleanup(r->easy);
    if (r->multi)
        curl_multi_cleanup(r->multi);
    if (r->curl_global)
        curl_global_cleanup();
    for (struct curl_slist *h = r->headers; h; h = h->next)
        explicit_bzero(h->data, strlen(h->data)); /* the bearer token */
    curl_slist_free_all(r->headers);
    free_secret(&r->password);
    free(r->user);
    free(r->url);
    rw_enc_destroy(&r->enc);
    for (size_t i = 0; i < r->qcap; i++)
        mbuf_free(&r->q[i].body);
    free(r->q);
    free(r);
    *pr = NULL;
}

/* ---- the queue of one interval ------------------------------------------------ */

static size_t pending_samples(const rw_t *r)
{
    size_t n = 0;
    for (size_t i = r->qhead; i < r->qn; i++)
        n += r->q[i].samples;
    return n;
}

static void next_request(rw_t *r)
{
    r->qhead++;
    r->tries = 0;
    r->retry_ns = 0;
    if (r->qhead >= r->qn)
        r->qhead = r->qn = 0;
}

/* Gives up on every request not yet sent (the in-flight one is the
 * caller's business). */
static void drop_queue(rw_t *r, int why)
{
    size_t n = pending_samples(r);
    if (r->qhead < r->qn)
        *r->c_dropped[why] += (int64_t)n;
    r->qhead = r->qn = 0;
    r->tries = 0;
    r->retry_ns = 0;
}

static void seal(rw_t *r)
{
    size_t n = rw_enc_series(r->enc);
    if (!n)
        return;
    if (r->qn == r->qcap) {
        size_t ncap = r->qcap ? 2 * r->qcap : 4;
        r->q = xreallocarray(r->q, ncap, sizeof *r->q);
        memset(r->q + r->qcap, 0, (ncap - r->qcap) * sizeof *r->q);
        r->qcap = ncap;
    }
    req_t *q = &r->q[r->qn];
    char err[128];
    if (rw_enc_finish(r->enc, &q->body, err, sizeof err) < 0) {
        (*r->c_errors[E_ENCODE])++;
        *r->c_dropped[D_ENCODE] += (int64_t)n;
        log_error("remote write: a request could not be encoded", "error=\"%s\"", err);
        return;
    }
    q->samples = n;
    r->qn++;
}

typedef struct {
    rw_t *r;
    int64_t ts_ms;
    size_t empty, series;
} snap_t;

static void on_sample(void *arg, const char *name, const model_label_t *labels, size_t nlabels,
                      double value)
{
    snap_t *s = arg;
    rw_t *r = s->r;
    const char *why = rw_enc_add(r->enc, name, labels, nlabels, value, s->ts_ms, &s->empty);
    if (why) {
        for (size_t i = 0; i < NINVALID; i++)
            if (strcmp(why, invalid_reasons[i]) == 0)
                (*r->c_invalid[i])++;
        char q[160];
        log_complain(&r->lc_invalid, tmtime_mono_ns(), LOG_LVL_WARN,
                     "remote write: a series is left out", "name=%s reason=%s",
                     log_quote(q, sizeof q, name ? name : "", name ? strlen(name) : 0), why);
        return;
    }
    s->series++;
    if (rw_enc_series(r->enc) >= RW_BATCH)
        seal(r);
}

/* This interval's requests from m's samples, stamped now. */
static void snapshot(rw_t *r, const model_t *m, int64_t now_ns)
{
    if (!m)
        return;
    snap_t s = { r, now_ns / TMTIME_NS_PER_MS, 0, 0 };
    model_each_sample(m, on_sample, &s);
    seal(r);
    *r->c_empty += (int64_t)s.empty;
    *r->g_series = (int64_t)s.series;
}

/* ---- HTTP -------------------------------------------------------------------- */

static void start(rw_t *r)
{
    req_t *q = &r->q[r->qhead];
    r->answer_len = 0;
    r->curl_err[0] = '\0';
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, q->body.data);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body.len);
    CURLMcode mc = curl_multi_add_handle(r->multi, r->easy);
    assert(mc == CURLM_OK);
    (void)mc;
    r->inflight = true;
    r->sent_mono = tmtime_mono_ns();
    if (r->tries++ > 0)
        (*r->c_retries)++;
    (*r->c_requests)++;
    *r->c_bytes += (int64_t)q->body.len;
}

static uint64_t rnd(rw_t *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return r->rng;
}

/* Exponential from RW_BACKOFF_MIN_MS, capped, with "equal jitter": a
 * uniform wait in [d/2, d]. */
static int64_t backoff_ms(rw_t *r)
{
    int64_t d = RW_BACKOFF_MIN_MS;
    for (int64_t i = 1; i < r->tries && d < r->backoff_max_ms; i++)
        d *= 2;
    if (d > r->backoff_max_ms)
        d = r->backoff_max_ms;
    int64_t half = d / 2;
    return half + (int64_t)(rnd(r) % (uint64_t)(d - half + 1));
}

static void retry_or_drop(rw_t *r, int64_t now_ns, int err, const char *what)
{
    (*r->c_errors[err])++;
    if (r->tries > r->retries) {
        log_complain(&r->lc_fail, tmtime_mono_ns(), LOG_LVL_WARN,
                     "remote write: giving up on a request", "error=\"%s\" tries=%" PRId64, what,
                     r->tries);
        drop_queue(r, D_RETRIES);
        return;
    }
    int64_t at = now_ns + backoff_ms(r) * TMTIME_NS_PER_MS;
    if (at >= r->next_ns) {
        /* the next interval's samples are newer: they go instead */
        log_complain(&r->lc_fail, tmtime_mono_ns(), LOG_LVL_WARN,
                     "remote write: a request failed; the next interval's data replaces it",
                     "error=\"%s\" tries=%" PRId64, what, r->tries);
        drop_queue(r, D_SUPERSEDED);
        return;
    }
    log_complain(&r->lc_fail, tmtime_mono_ns(), LOG_LVL_WARN,
                 "remote write: a request failed; retrying", "error=\"%s\" tries=%" PRId64, what,
                 r->tries);
    r->retry_ns = at;
}

static void done(rw_t *r, CURLcode res, int64_t now_ns)
{
    curl_multi_remove_handle(r->multi, r->easy);
    r->inflight = false;
    *r->g_duration_ms = (tmtime_mono_ns() - r->sent_mono) / TMTIME_NS_PER_MS;
    if (res != CURLE_OK) {
        char what[CURL_ERROR_SIZE + 64];
        snprintf(what, sizeof what, "%s", r->curl_err[0] ? r->curl_err : curl_easy_strerror(res));
        for (char *p = what; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
                *p = ' ';
        retry_or_drop(r, now_ns, E_TRANSPORT, what);
        return;
    }
    long code = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && code < 300) {
        *r->c_samples += (int64_t)r->q[r->qhead].samples;
        *r->g_last_ms = now_ns / TMTIME_NS_PER_MS;
        log_release(&r->lc_fail, "remote write: requests go through again", NULL);
        next_request(r);
        return;
    }
    char what[32];
    snprintf(what, sizeof what, "HTTP %ld", code);
    if (code == 429 || (code >= 500 && code < 600)) {
        retry_or_drop(r, now_ns, code == 429 ? E_429 : E_5XX, what);
        return;
    }
    /* the receiver refuses this request as it is: sending it again would not help */
    (*r->c_errors[code >= 400 && code < 500 ? E_4XX : E_OTHER])++;
    *r->c_dropped[D_REJECTED] += (int64_t)r->q[r->qhead].samples;
    char body[RW_ANSWER_MAX * 4 + 8];
    log_complain(&r->lc_reject, tmtime_mono_ns(), LOG_LVL_WARN,
                 "remote write: the receiver refused a request", "status=%ld body=%s", code,
                 log_quote(body, sizeof body, r->answer, r->answer_len));
    next_request(r);
}

/* Moves curl along and takes in its answers. */
static void pump(rw_t *r, int64_t now_ns)
{
    if (!r->inflight)
        return;
    int running = 0;
    curl_multi_perform(r->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(r->multi, &left)))
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == r->easy) {
            done(r, msg->data.result, now_ns);
            break; /* msg is gone with the handle */
        }
}

long rw_work(rw_t *r, const model_t *m, int64_t now_ns)
{
    if (!r)
        return RW_OFF_MS;
    if (r->next_ns == 0 || r->next_ns - now_ns > r->interval_ns) /* first turn, clock set back */
        r->next_ns = now_ns + r->interval_ns;
    pump(r, now_ns);
    if (now_ns >= r->next_ns && !r->inflight) {
        /* an in-flight request is waited for (its timeout bounds it), so
         * requests never overlap and samples reach the receiver in order */
        drop_queue(r, D_SUPERSEDED);
        snapshot(r, m, now_ns);
        r->next_ns += r->interval_ns;
        if (r->next_ns <= now_ns) /* intervals missed: none made up */
            r->next_ns = now_ns + r->interval_ns;
    }
    if (!r->inflight && r->qhead < r->qn && now_ns >= r->retry_ns) {
        start(r);
        pump(r, now_ns);
    }

    if (r->inflight) {
        long t = -1;
        curl_multi_timeout(r->multi, &t);
        return t >= 0 && t < RW_POLL_MS ? t : RW_POLL_MS;
    }
    int64_t due = r->next_ns;
    if (r->qhead < r->qn && r->retry_ns < due)
        due = r->retry_ns;
    if (due <= now_ns)
        return 0;
    int64_t ms = (due - now_ns + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS;
    return ms > RW_OFF_MS ? RW_OFF_MS : (long)ms;
}

/* Waits for curl up to the deadline (monotonic). */
static void wait_curl(rw_t *r, int64_t deadline_mono)
{
    int64_t left = (deadline_mono - tmtime_mono_ns()) / TMTIME_NS_PER_MS;
    if (left <= 0)
        return;
    int ms = left < 100 ? (int)left : 100;
    curl_multi_poll(r->multi, NULL, 0, ms, NULL);
    pump(r, tmtime_now_ns());
}

void rw_drain(rw_t *r, const model_t *m, long timeout_ms)
{
    if (!r)
        return;
    int64_t deadline = tmtime_mono_ns() + (int64_t)timeout_ms * TMTIME_NS_PER_MS;
    while (r->inflight && tmtime_mono_ns() < deadline)
        wait_curl(r, deadline);
    if (!r->inflight) {
        drop_queue(r, D_SUPERSEDED); /* the last snapshot is newer */
        snapshot(r, m, tmtime_now_ns());
        r->next_ns = INT64_MAX; /* no next interval: retries until the deadline */
        while (r->qhead < r->qn && tmtime_mono_ns() < deadline) {
            if (!r->inflight && tmtime_now_ns() >= r->retry_ns)
                start(r);
            if (r->inflight) {
                wait_curl(r, deadline);
                continue;
            }
            int64_t wake = r->retry_ns - tmtime_now_ns(), left = deadline - tmtime_mono_ns();
            if (wake > left)
                wake = left;
            if (wake > 0)
                nanosleep(&(struct timespec){ wake / TMTIME_NS_PER_SEC, wake % TMTIME_NS_PER_SEC },
                          NULL);
        }
    }
    if (r->inflight) {
        curl_multi_remove_handle(r->multi, r->easy);
        r->inflight = false;
        *r->c_dropped[D_SHUTDOWN] += (int64_t)r->q[r->qhead].samples;
        next_request(r);
    }
    if (r->qhead < r->qn) {
        log_warn("remote write: samples left unsent at shutdown", "samples=%zu",
                 pending_samples(r));
        drop_queue(r, D_SHUTDOWN);
    }
}

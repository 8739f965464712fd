/* notify: tokmon-alerter's deliveries (see notify.h).
 *
 * Each receiver has a FIFO of deliveries and its own libcurl easy and multi
 * handles; at most one delivery per receiver is in flight, so a receiver
 * sees its notifications in the order they were queued, while different
 * receivers are served at once. A multi handle per receiver, not one for
 * all, because a multi handle's connections are shared by its transfers:
 * one receiver's plain SMTP connection would otherwise carry the mail of
 * another that requires STARTTLS to the same server. A delivery's payload (the
 * HTTP body, or the whole mail with its headers) is made when it is
 * queued: everything is copied then, and every try sends the same bytes.
 *
 * All text that goes out is made valid UTF-8 first (invalid bytes become
 * U+FFFD, counted), so JSON encoding never fails and mail is what its
 * Content-Type says. Secrets (the bot token, passwords, a Slack webhook's
 * path) are scrubbed out of anything that is logged or reported. */
#include "notify.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "log.h"
#include "mbuf.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define QUEUE_MAX 10000        /* deliveries queued or in flight, all receivers */
#define RESULTS_MAX 10000      /* ended deliveries kept for notify_results */
#define RESP_MAX 4096          /* bytes of a response body kept */
#define LOG_BODY_MAX 300       /* bytes of a response body in a log line or an error */
#define ERR_MAX 400            /* a delivery's last error */
#define BACKOFF_BASE_MS 500    /* the first retry's wait, before jitter */
#define SERVER_WAIT_MAX_MS 3600000 /* a wait the server asked for is honoured up to this */
#define IDLE_MS 1000
#define INFLIGHT_MS 5          /* libcurl's sockets are not in the caller's poll set */
#define SECRET_MAX 4096
#define TELEGRAM_API "https://api.telegram.org"
#define TELEGRAM_TEXT_MAX 4096 /* sendMessage's limit (characters; bytes are safe) */
#define SLACK_TEXT_MAX 38000   /* Slack truncates messages past 40,000 characters */
#define SUBJECT_MAX 200        /* bytes of a mail subject before encoding */
#define MAIL_LINE_MAX 900      /* RFC 5322: a line is at most 998 bytes */
#define NSECRETS 3
#define MAX_KV (MSG_MAX_TAGS + 2)

static const char ZERO_TIME[] = "0001-01-01T00:00:00Z"; /* Go's zero time.Time */

enum { SEV_INFO, SEV_WARNING, SEV_CRITICAL };

enum { FILT_SEVERITY, FILT_RESOLVED, FILT_PENDING, NFILT };
static const char *const filt_reason[NFILT] = { "severity", "resolved", "pending" };

enum { ERR_4XX, ERR_429, ERR_5XX, ERR_OTHER, ERR_TRANSPORT, ERR_TIMEOUT, ERR_SMTP, ERR_REFUSED, NERR };
static const char *const err_reason[NERR] = { "http_4xx",  "http_429", "http_5xx", "http_other",
                                              "transport", "timeout",  "smtp",     "refused" };

enum { DROP_QUEUE, DROP_SHUTDOWN, NDROP };
static const char *const drop_reason[NDROP] = { "queue_full", "shutdown" };

typedef struct delivery {
    struct delivery *next; /* in its receiver's FIFO */
    int64_t id;
    char *body;            /* HTTP body, or the mail (headers and text, CRLF) */
    size_t len;
    char *what;            /* the title, for log lines */
    int attempts;
    int64_t next_try;      /* caller's clock: no try before */
    int64_t scheduled;     /* caller's clock when next_try was set */
    char err[ERR_MAX];     /* the last failure, scrubbed */
} delivery_t;

typedef struct {
    char *name;
    int type;              /* cfg_notify_type_t */
    char *url;             /* what is requested (telegram: with the token) */
    char *log_url;         /* the same without secrets */
    char *user;            /* NULL: no auth */
    char *secret[NSECRETS]; /* scrubbed from logs: token, password, Slack path */
    char *chat_id;
    char *from_hdr, *to_hdr, *domain;
    int min_sev;
    bool send_resolved;
    int64_t timeout_ms, retries, backoff_max_ms;

    CURLM *multi;
    CURL *easy;
    struct curl_slist *headers, *rcpts;
    char curl_err[CURL_ERROR_SIZE];
    mbuf_t resp;
    size_t read_off;       /* email: the upload's position in the mail */

    delivery_t *head, *tail;
    size_t qlen;
    bool in_flight;
    log_complain_t lc_retry, lc_fail;

    int64_t *c_queued, *c_ok, *c_failed, *c_attempts, *c_retries;
    int64_t *c_filtered[NFILT], *c_err[NERR], *c_drop[NDROP];
    int64_t *g_queue, *g_last_ok;
} recv_t;

typedef struct {
    int64_t id;
    size_t recv;
    bool ok;
    int attempts;
    char *error;
} result_t;

struct notify {
    recv_t *r;
    size_t nr;
    bool curl_ok;
    size_t queued;         /* every receiver's, in flight included */
    int64_t last_id;
    int64_t now;           /* the caller's clock, as last seen */
    uint64_t rng;
    result_t *res;
    size_t nres, rescap;
    log_complain_t lc_queue;
    int64_t *g_queue, *c_bad_utf8, *c_results_dropped;
};

/* ---- text ---------------------------------------------------------------------- */

static void lit(mbuf_t *b, const char *s) { mbuf_append(b, s, strlen(s)); }

/* Appends p[0..len) as clean UTF-8: invalid bytes become U+FFFD (counted in
 * *bad when not NULL); in one-line text CR, LF and tab become spaces; other
 * control bytes (and CR in multi-line text) are left out. */
static void text_append(mbuf_t *b, const char *p, size_t len, bool oneline, int64_t *bad)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0, run = 0;
    mbuf_reserve(b, len);
    while (i < len) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != 0x7f && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = utf8_seq(s + i, len - i);
            if (k) {
                i += k;
                continue;
            }
        }
        mbuf_append(b, p + run, i - run);
        if (c >= 0x80) {
            lit(b, "\xef\xbf\xbd");
            if (bad)
                (*bad)++;
        } else if (c == '\n' || c == '\t') {
            mbuf_append(b, oneline ? " " : (const char *)&c, 1);
        } else if (c == '\r' && oneline) {
            mbuf_append(b, " ", 1);
        }
        i++;
        run = i;
    }
    mbuf_append(b, p + run, len - run);
}

/* The length of s[0..len) cut to at most max bytes at a character boundary. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    return max;
}

static void span_append(notify_t *n, mbuf_t *b, span_t s, bool oneline)
{
    if (s.p)
        text_append(b, s.p, s.len, oneline, n->c_bad_utf8);
}

/* Cuts b to at most max bytes at a character boundary, marking the cut. */
static void truncate_utf8(mbuf_t *b, size_t max)
{
    static const char mark[] = "\n[…]";
    if (b->len <= max)
        return;
    b->len = utf8_cut(b->data, b->len, max - (sizeof mark - 1));
    lit(b, mark);
}

/* A JSON string of a span, made clean first. */
static json_t *jspan(notify_t *n, span_t s)
{
    mbuf_t b = { 0 };
    span_append(n, &b, s, false);
    json_t *j = json_stringn_nocheck(b.data ? b.data : "", b.len);
    mbuf_free(&b);
    return j;
}

static json_t *jcstr(const char *s) { return json_stringn_nocheck(s ? s : "", s ? strlen(s) : 0); }

static void jset_span(notify_t *n, json_t *o, span_t k, json_t *v)
{
    mbuf_t b = { 0 };
    span_append(n, &b, k, true);
    json_object_setn_new_nocheck(o, b.data ? b.data : "", b.len, v);
    mbuf_free(&b);
}

static char *json_take(json_t *j, size_t *len)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) /* only out of memory: every string was made valid */
        abort();
    *len = strlen(s);
    return s;
}

/* s[0..len) as one clean line with every secret of r replaced by
 * "<secret>", then cut to LOG_BODY_MAX bytes (after the replacing, so that
 * no cut leaves part of a secret), into out. */
static void excerpt(const recv_t *r, const char *s, size_t len, char *out, size_t cap)
{
    mbuf_t clean = { 0 }, b = { 0 };
    text_append(&clean, s ? s : "", s ? len : 0, true, NULL);
    for (size_t i = 0; i < clean.len;) {
        size_t best = 0;
        for (size_t k = 0; k < NSECRETS; k++) {
            const char *sec = r->secret[k];
            size_t sl = sec ? strlen(sec) : 0;
            if (sl > best && sl <= clean.len - i && !memcmp(clean.data + i, sec, sl))
                best = sl;
        }
        if (best) {
            lit(&b, "<secret>");
            i += best;
        } else {
            mbuf_append(&b, clean.data + i, 1);
            i++;
        }
    }
    size_t n = utf8_cut(b.data, b.len, LOG_BODY_MAX);
    snprintf(out, cap, "%.*s%s", (int)n, b.data ? b.data : "", n < b.len ? "..." : "");
    mbuf_free(&clean);
    mbuf_free(&b);
}

/* ---- alerts -------------------------------------------------------------------- */

typedef struct {
    span_t k, v;
} kv_t;

static int span_cmp(span_t a, span_t b)
{
    size_t m = a.len < b.len ? a.len : b.len;
    int c = m ? memcmp(a.p, b.p, m) : 0;
    return c ? c : a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
}

static bool kv_has(const kv_t *kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (span_eq_cstr(kv[i].k, key))
            return true;
    return false;
}

/* Sorts by key (stable: n is small) and keeps the first of equal keys. */
static size_t kv_sort(kv_t *kv, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        kv_t x = kv[i];
        size_t j = i;
        while (j > 0 && span_cmp(kv[j - 1].k, x.k) > 0) {
            kv[j] = kv[j - 1];
            j--;
        }
        kv[j] = x;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!m || span_cmp(kv[m - 1].k, kv[i].k))
            kv[m++] = kv[i];
    return m;
}

/* An alert's labels, alertname and severity included, sorted by name. */
static size_t alert_labels(const msg_alert_t *a, kv_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < a->nlabels && i < MSG_MAX_TAGS; i++)
        if (a->labels[i].key.p && a->labels[i].key.len)
            out[n++] = (kv_t){ a->labels[i].key, a->labels[i].value };
    if (a->alertname.p && !kv_has(out, n, "alertname"))
        out[n++] = (kv_t){ SPAN_LIT("alertname"), a->alertname };
    if (a->severity.p && a->severity.len && !kv_has(out, n, "severity"))
        out[n++] = (kv_t){ SPAN_LIT("severity"), a->severity };
    return kv_sort(out, n);
}

static size_t alert_annotations(const msg_alert_t *a, kv_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < a->nannotations && i < MSG_MAX_ANNOTATIONS; i++)
        if (a->annotations[i].key.p && a->annotations[i].key.len)
            out[n++] = (kv_t){ a->annotations[i].key, a->annotations[i].value };
    return kv_sort(out, n);
}

static span_t kv_get(const kv_t *kv, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (span_eq_cstr(kv[i].k, key))
            return kv[i].v;
    return SPAN_NULL;
}

/* Keeps the pairs of common that b has with the same value. */
static size_t kv_intersect(kv_t *common, size_t n, const kv_t *b, size_t nb)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        bool keep = false;
        for (size_t j = 0; j < nb && !keep; j++)
            keep = span_eq(common[i].k, b[j].k) && span_eq(common[i].v, b[j].v);
        if (keep)
            common[m++] = common[i];
    }
    return m;
}

static int severity_rank(span_t s)
{
    if (span_eq_cstr(s, "info") || span_eq_cstr(s, "none") || !s.len)
        return SEV_INFO;
    if (span_eq_cstr(s, "warning"))
        return SEV_WARNING;
    return SEV_CRITICAL; /* critical, and anything not understood: never held back */
}

static span_t alert_severity(const msg_alert_t *a)
{
    if (a->severity.p && a->severity.len)
        return a->severity;
    for (size_t i = 0; i < a->nlabels && i < MSG_MAX_TAGS; i++)
        if (span_eq_cstr(a->labels[i].key, "severity"))
            return a->labels[i].value;
    return SPAN_NULL;
}

static bool is_firing(const msg_alert_t *a) { return span_eq_cstr(a->state, "firing"); }
static bool is_resolved(const msg_alert_t *a) { return span_eq_cstr(a->state, "resolved"); }

/* One notification's alerts after the receiver's filters, and what they share. */
typedef struct {
    const notify_group_t *g;
    const msg_alert_t **al;
    size_t n, nfiring;
    kv_t common[MAX_KV];
    size_t ncommon;
    kv_t common_ann[MSG_MAX_ANNOTATIONS];
    size_t ncommon_ann;
} grp_t;

static void grp_free(grp_t *gr)
{
    free(gr->al);
    gr->al = NULL;
}

/* Applies r's filters to g; false when nothing is left. */
static bool grp_make(recv_t *r, const notify_group_t *g, grp_t *gr)
{
    memset(gr, 0, sizeof *gr);
    gr->g = g;
    gr->al = xreallocarray(NULL, g->nalerts ? g->nalerts : 1, sizeof *gr->al);
    for (size_t i = 0; i < g->nalerts; i++) {
        const msg_alert_t *a = &g->alerts[i];
        int why = -1;
        if (!is_firing(a) && !is_resolved(a))
            why = FILT_PENDING; /* Alertmanager knows no pending alerts */
        else if (severity_rank(alert_severity(a)) < r->min_sev)
            why = FILT_SEVERITY;
        else if (is_resolved(a) && !r->send_resolved)
            why = FILT_RESOLVED;
        if (why >= 0) {
            (*r->c_filtered[why])++;
            continue;
        }
        gr->al[gr->n++] = a;
        gr->nfiring += is_firing(a);
    }
    if (!gr->n) {
        grp_free(gr);
        return false;
    }
    kv_t tmp[MAX_KV];
    gr->ncommon = alert_labels(gr->al[0], gr->common);
    gr->ncommon_ann = alert_annotations(gr->al[0], gr->common_ann);
    for (size_t i = 1; i < gr->n; i++) {
        size_t k = alert_labels(gr->al[i], tmp);
        gr->ncommon = kv_intersect(gr->common, gr->ncommon, tmp, k);
        k = alert_annotations(gr->al[i], tmp);
        gr->ncommon_ann = kv_intersect(gr->common_ann, gr->ncommon_ann, tmp, k);
    }
    return true;
}

static bool in_group_labels(const notify_group_t *g, span_t k)
{
    for (size_t i = 0; i < g->ngroup_labels; i++)
        if (span_eq(g->group_labels[i].key, k))
            return true;
    return false;
}

/* "[FIRING:2] LLMBudgetExceeded (budget=daily)": the status and the number
 * firing, the group's label values, then the labels the alerts share
 * besides those (alertname and severity left out), as Alertmanager's
 * default titles do. One line, clean UTF-8. */
static void title(notify_t *n, mbuf_t *b, const grp_t *gr)
{
    char head[48];
    if (gr->nfiring)
        snprintf(head, sizeof head, "[FIRING:%zu] ", gr->nfiring);
    else
        snprintf(head, sizeof head, "[RESOLVED] ");
    lit(b, head);
    const notify_group_t *g = gr->g;
    size_t start = b->len;
    for (size_t i = 0; i < g->ngroup_labels; i++) {
        if (!g->group_labels[i].value.len)
            continue;
        if (b->len > start)
            lit(b, " ");
        span_append(n, b, g->group_labels[i].value, true);
    }
    if (b->len == start) {
        span_t an = kv_get(gr->common, gr->ncommon, "alertname");
        if (an.len)
            span_append(n, b, an, true);
        else
            lit(b, "alerts");
    }
    bool open = false;
    for (size_t i = 0; i < gr->ncommon; i++) {
        span_t k = gr->common[i].k;
        if (span_eq_cstr(k, "alertname") || span_eq_cstr(k, "severity") || in_group_labels(g, k))
            continue;
        lit(b, open ? " " : " (");
        open = true;
        span_append(n, b, k, true);
        lit(b, "=");
        span_append(n, b, gr->common[i].v, true);
    }
    if (open)
        lit(b, ")");
}

/* What one alert says in one line: its summary, else its description, else
 * its name and labels. */
static void alert_line(notify_t *n, mbuf_t *b, const msg_alert_t *a)
{
    kv_t ann[MSG_MAX_ANNOTATIONS];
    size_t na = alert_annotations(a, ann);
    span_t s = kv_get(ann, na, "summary");
    if (!s.len)
        s = kv_get(ann, na, "description");
    if (s.len) {
        span_append(n, b, s, true);
        return;
    }
    kv_t lab[MAX_KV];
    size_t nl = alert_labels(a, lab);
    span_append(n, b, a->alertname, true);
    for (size_t i = 0; i < nl; i++) {
        if (span_eq_cstr(lab[i].k, "alertname"))
            continue;
        lit(b, " ");
        span_append(n, b, lab[i].k, true);
        lit(b, "=");
        span_append(n, b, lab[i].v, true);
    }
}

/* The chat text: the title, then a line per alert, then the external URL. */
static void chat_text(notify_t *n, mbuf_t *b, const grp_t *gr)
{
    title(n, b, gr);
    for (size_t i = 0; i < gr->n; i++) {
        lit(b, "\n- ");
        if (gr->nfiring && is_resolved(gr->al[i]))
            lit(b, "[resolved] ");
        alert_line(n, b, gr->al[i]);
    }
    if (gr->g->external_url && gr->g->external_url[0]) {
        lit(b, "\n");
        text_append(b, gr->g->external_url, strlen(gr->g->external_url), true, n->c_bad_utf8);
    }
}

static void rfc3339(int64_t ns, char *out, size_t cap)
{
    if (ns <= 0)
        snprintf(out, cap, "%s", ZERO_TIME);
    else
        tmtime_rfc3339_format(ns, out, cap);
}

static json_t *kv_object(notify_t *n, const kv_t *kv, size_t k)
{
    json_t *o = json_object();
    for (size_t i = 0; i < k; i++)
        jset_span(n, o, kv[i].k, jspan(n, kv[i].v));
    return o;
}

/* ---- payloads ------------------------------------------------------------------ */

/* Alertmanager's webhook message, version 4 (notify/webhook in Alertmanager:
 * template.Data plus version, groupKey and truncatedAlerts). */
static char *webhook_body(notify_t *n, const recv_t *r, const grp_t *gr, size_t *len)
{
    const notify_group_t *g = gr->g;
    json_t *root = json_object();
    json_object_set_new(root, "version", json_string("4"));
    json_object_set_new(root, "groupKey", jcstr(g->group_key));
    json_object_set_new(root, "truncatedAlerts", json_integer(0));
    json_object_set_new(root, "status", json_string(gr->nfiring ? "firing" : "resolved"));
    json_object_set_new(root, "receiver", jcstr(r->name));
    json_t *gl = json_object();
    for (size_t i = 0; i < g->ngroup_labels; i++)
        jset_span(n, gl, g->group_labels[i].key, jspan(n, g->group_labels[i].value));
    json_object_set_new(root, "groupLabels", gl);
    json_object_set_new(root, "commonLabels", kv_object(n, gr->common, gr->ncommon));
    json_object_set_new(root, "commonAnnotations", kv_object(n, gr->common_ann, gr->ncommon_ann));
    json_object_set_new(root, "externalURL", jcstr(g->external_url));
    json_t *arr = json_array();
    for (size_t i = 0; i < gr->n; i++) {
        const msg_alert_t *a = gr->al[i];
        kv_t kv[MAX_KV];
        char ts[40];
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string(is_firing(a) ? "firing" : "resolved"));
        json_object_set_new(o, "labels", kv_object(n, kv, alert_labels(a, kv)));
        json_object_set_new(o, "annotations", kv_object(n, kv, alert_annotations(a, kv)));
        rfc3339(a->starts_at ? a->starts_at : a->ts, ts, sizeof ts);
        json_object_set_new(o, "startsAt", json_string(ts));
        rfc3339(is_resolved(a) ? (a->ends_at ? a->ends_at : a->ts) : 0, ts, sizeof ts);
        json_object_set_new(o, "endsAt", json_string(ts));
        json_object_set_new(o, "generatorURL", json_string(""));
        json_object_set_new(o, "fingerprint", jspan(n, a->fingerprint));
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "alerts", arr);
    return json_take(root, len);
}

/* Slack's text escaping: &, < and > only. */
static void slack_escape(mbuf_t *out, const mbuf_t *in)
{
    for (size_t i = 0; i < in->len; i++) {
        char c = in->data[i];
        if (c == '&')
            lit(out, "&amp;");
        else if (c == '<')
            lit(out, "&lt;");
        else if (c == '>')
            lit(out, "&gt;");
        else
            mbuf_append(out, &c, 1);
    }
}

static char *slack_body(const mbuf_t *text, size_t *len)
{
    mbuf_t e = { 0 };
    slack_escape(&e, text);
    truncate_utf8(&e, SLACK_TEXT_MAX);
    json_t *root = json_object();
    json_object_set_new(root, "text", json_stringn_nocheck(e.data ? e.data : "", e.len));
    mbuf_free(&e);
    return json_take(root, len);
}

static char *telegram_body(const recv_t *r, mbuf_t *text, size_t *len)
{
    truncate_utf8(text, TELEGRAM_TEXT_MAX);
    json_t *root = json_object();
    json_object_set_new(root, "chat_id", jcstr(r->chat_id));
    json_object_set_new(root, "text", json_stringn_nocheck(text->data ? text->data : "", text->len));
    json_object_set_new(root, "disable_web_page_preview", json_true());
    return json_take(root, len);
}

static bool label_name_char(char c, bool first)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (!first && c >= '0' && c <= '9');
}

/* POST /api/v2/alerts: postable alerts. Alertmanager 0.25 takes label names
 * [a-zA-Z_][a-zA-Z0-9_]* only (others become '_'), and an empty value is no
 * label (left out). A firing alert has no endsAt, so Alertmanager holds it
 * for resolve_timeout; a resolved one ends when it ended. */
static char *am_body(notify_t *n, const grp_t *gr, int64_t now_ns, size_t *len)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < gr->n; i++) {
        const msg_alert_t *a = gr->al[i];
        kv_t kv[MAX_KV];
        size_t k = alert_labels(a, kv);
        json_t *o = json_object();
        json_t *labels = json_object();
        for (size_t j = 0; j < k; j++) {
            if (!kv[j].v.len)
                continue;
            char name[MSG_MAX_STR + 1];
            size_t nl = kv[j].k.len < MSG_MAX_STR ? kv[j].k.len : MSG_MAX_STR;
            for (size_t c = 0; c < nl; c++)
                name[c] = label_name_char(kv[j].k.p[c], c == 0) ? kv[j].k.p[c] : '_';
            name[nl] = '\0';
            json_object_set_new_nocheck(labels, name, jspan(n, kv[j].v));
        }
        json_object_set_new(o, "labels", labels);
        json_object_set_new(o, "annotations", kv_object(n, kv, alert_annotations(a, kv)));
        char ts[40];
        rfc3339(a->starts_at ? a->starts_at : a->ts ? a->ts : now_ns, ts, sizeof ts);
        json_object_set_new(o, "startsAt", json_string(ts));
        if (is_resolved(a)) {
            int64_t end = a->ends_at ? a->ends_at : a->ts ? a->ts : now_ns;
            rfc3339(end, ts, sizeof ts);
            json_object_set_new(o, "endsAt", json_string(ts));
        }
        if (gr->g->external_url && gr->g->external_url[0])
            json_object_set_new(o, "generatorURL", jcstr(gr->g->external_url));
        json_array_append_new(arr, o);
    }
    return json_take(arr, len);
}

/* ---- mail ---------------------------------------------------------------------- */

static void base64(mbuf_t *b, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char o[4] = { tab[(v >> 18) & 63], tab[(v >> 12) & 63],
                      i + 1 < n ? tab[(v >> 6) & 63] : '=', i + 2 < n ? tab[v & 63] : '=' };
        mbuf_append(b, o, 4);
    }
}

/* "Subject: " and s (clean one-line UTF-8): as is when printable ASCII,
 * else as RFC 2047 encoded words of whole characters, folded. */
static void subject_header(mbuf_t *b, const char *s, size_t n)
{
    lit(b, "Subject: ");
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++)
        ascii = (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f;
    if (ascii) {
        mbuf_append(b, s, n);
    } else {
        size_t i = 0;
        while (i < n) {
            size_t j = i;
            while (j < n) { /* 45 bytes: 60 of base64, a word within 75 */
                size_t k = utf8_seq((const unsigned char *)s + j, n - j);
                if (!k)
                    k = 1;
                if (j + k - i > 45)
                    break;
                j += k;
            }
            if (j == i)
                j = i + 1;
            if (i)
                lit(b, "\r\n ");
            lit(b, "=?UTF-8?B?");
            base64(b, (const unsigned char *)s + i, j - i);
            lit(b, "?=");
            i = j;
        }
    }
    lit(b, "\r\n");
}

/* Appends text (clean UTF-8, \n line ends) as mail body lines: CRLF, and
 * lines longer than MAIL_LINE_MAX broken at a character boundary. libcurl
 * does the dot-stuffing. */
static void mail_text(mbuf_t *b, const char *s, size_t n)
{
    size_t col = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '\n') {
            lit(b, "\r\n");
            col = 0;
            i++;
            continue;
        }
        size_t k = utf8_seq((const unsigned char *)s + i, n - i);
        if (!k)
            k = 1;
        if (col + k > MAIL_LINE_MAX) {
            lit(b, "\r\n");
            col = 0;
        }
        mbuf_append(b, s + i, k);
        col += k;
        i += k;
    }
    if (!n || s[n - 1] != '\n')
        lit(b, "\r\n");
}

static char *mail_make(notify_t *n, const recv_t *r, int64_t id, const char *subj, size_t slen,
                       const mbuf_t *text, int64_t now_ns, size_t *len)
{
    mbuf_t b = { 0 };
    char date[64];
    time_t t = (time_t)(now_ns / TMTIME_NS_PER_SEC);
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    snprintf(date, sizeof date, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", wd[tm.tm_wday % 7],
             tm.tm_mday, mo[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    lit(&b, date);
    lit(&b, "From: ");
    lit(&b, r->from_hdr);
    lit(&b, "\r\nTo: ");
    lit(&b, r->to_hdr);
    lit(&b, "\r\n");
    subject_header(&b, subj, slen);
    char mid[160];
    snprintf(mid, sizeof mid, "Message-ID: <tokmon.%lld.%lld.%llx@%s>\r\n", (long long)id,
             (long long)now_ns, (unsigned long long)(n->rng & 0xffffffffu), r->domain);
    lit(&b, mid);
    lit(&b, "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "Auto-Submitted: auto-generated\r\n"
            "\r\n");
    mail_text(&b, text->data ? text->data : "", text->len);
    *len = b.len;
    mbuf_append(&b, "", 1);
    return b.data;
}

/* The mail's text: the title, then each alert in full. */
static void mail_alerts_text(notify_t *n, mbuf_t *b, const mbuf_t *ttl, const grp_t *gr)
{
    mbuf_append(b, ttl->data, ttl->len);
    lit(b, "\n");
    for (size_t i = 0; i < gr->n; i++) {
        const msg_alert_t *a = gr->al[i];
        kv_t lab[MAX_KV], ann[MSG_MAX_ANNOTATIONS];
        size_t nl = alert_labels(a, lab), na = alert_annotations(a, ann);
        lit(b, is_firing(a) ? "\n[FIRING] " : "\n[RESOLVED] ");
        span_append(n, b, a->alertname, true);
        span_t sev = alert_severity(a);
        if (sev.len) {
            lit(b, " (");
            span_append(n, b, sev, true);
            lit(b, ")");
        }
        lit(b, "\n");
        static const char *const first[] = { "summary", "description" };
        for (size_t f = 0; f < 2; f++) {
            span_t v = kv_get(ann, na, first[f]);
            if (!v.len)
                continue;
            lit(b, f ? "Description: " : "Summary: ");
            span_append(n, b, v, false);
            lit(b, "\n");
        }
        for (size_t j = 0; j < na; j++) {
            if (span_eq_cstr(ann[j].k, "summary") || span_eq_cstr(ann[j].k, "description"))
                continue;
            span_append(n, b, ann[j].k, true);
            lit(b, ": ");
            span_append(n, b, ann[j].v, false);
            lit(b, "\n");
        }
        lit(b, "Labels:");
        for (size_t j = 0; j < nl; j++) {
            lit(b, " ");
            span_append(n, b, lab[j].k, true);
            lit(b, "=");
            span_append(n, b, lab[j].v, true);
        }
        char ts[40], num[64];
        rfc3339(a->starts_at ? a->starts_at : a->ts, ts, sizeof ts);
        lit(b, "\nStarted: ");
        lit(b, ts);
        if (is_resolved(a)) {
            rfc3339(a->ends_at ? a->ends_at : a->ts, ts, sizeof ts);
            lit(b, "\nEnded: ");
            lit(b, ts);
        }
        snprintf(num, sizeof num, "\nValue: %.15g\n", a->value);
        lit(b, num);
    }
    const char *url = gr->g->external_url;
    if (url && url[0]) {
        lit(b, "\nSource: ");
        text_append(b, url, strlen(url), true, n->c_bad_utf8);
        lit(b, "\n");
    }
}

/* ---- the queue ----------------------------------------------------------------- */

static void delivery_free(delivery_t *d)
{
    if (!d)
        return;
    free(d->body);
    free(d->what);
    free(d);
}

static void result_add(notify_t *n, size_t ri, const delivery_t *d, bool ok)
{
    if (n->nres == RESULTS_MAX) { /* nobody collects them: keep the newest */
        free(n->res[0].error);
        memmove(n->res, n->res + 1, (n->nres - 1) * sizeof *n->res);
        n->nres--;
        (*n->c_results_dropped)++;
    }
    if (n->nres == n->rescap) {
        n->rescap = n->rescap ? n->rescap * 2 : 16;
        n->res = xreallocarray(n->res, n->rescap, sizeof *n->res);
    }
    n->res[n->nres++] = (result_t){ .id = d->id, .recv = ri, .ok = ok, .attempts = d->attempts,
                                    .error = xstrdup(ok ? "" : d->err) };
}

static void set_gauges(notify_t *n, recv_t *r)
{
    *n->g_queue = (int64_t)n->queued;
    *r->g_queue = (int64_t)r->qlen;
}

/* Takes the head of r's FIFO out (it must not be in flight). */
static delivery_t *pop_head(notify_t *n, recv_t *r)
{
    delivery_t *d = r->head;
    assert(d && !r->in_flight);
    r->head = d->next;
    if (!r->head)
        r->tail = NULL;
    r->qlen--;
    n->queued--;
    set_gauges(n, r);
    return d;
}

/* Drops the oldest delivery not in flight, of any receiver. */
static void drop_oldest(notify_t *n)
{
    recv_t *best = NULL;
    delivery_t **bestp = NULL;
    for (size_t i = 0; i < n->nr; i++) {
        recv_t *r = &n->r[i];
        delivery_t **pp = &r->head;
        if (*pp && r->in_flight)
            pp = &(*pp)->next;
        if (*pp && (!bestp || (*pp)->id < (*bestp)->id)) {
            best = r;
            bestp = pp;
        }
    }
    if (!bestp) /* all in flight: cannot happen with QUEUE_MAX >> receivers */
        return;
    delivery_t *d = *bestp;
    *bestp = d->next;
    if (best->tail == d) {
        best->tail = NULL;
        for (delivery_t *x = best->head; x; x = x->next)
            best->tail = x;
    }
    best->qlen--;
    n->queued--;
    (*best->c_drop[DROP_QUEUE])++;
    snprintf(d->err, sizeof d->err, "dropped: the queue was full (%d deliveries)", QUEUE_MAX);
    result_add(n, (size_t)(best - n->r), d, false);
    log_complain(&n->lc_queue, tmtime_mono_ns(), LOG_LVL_WARN,
                 "notify queue full: dropping the oldest notification", "receiver=%s id=%lld",
                 best->name, (long long)d->id);
    set_gauges(n, best);
    delivery_free(d);
}

static int64_t enqueue(notify_t *n, recv_t *r, char *body, size_t len, const mbuf_t *what,
                       int64_t now_ns)
{
    if (n->queued >= QUEUE_MAX)
        drop_oldest(n);
    delivery_t *d = xcalloc(1, sizeof *d);
    d->id = ++n->last_id;
    d->body = body;
    d->len = len;
    d->what = xstrndup(what->data ? what->data : "", what->len < 200 ? what->len : 200);
    d->next_try = now_ns;
    d->scheduled = now_ns;
    if (r->tail)
        r->tail->next = d;
    else
        r->head = d;
    r->tail = d;
    r->qlen++;
    n->queued++;
    (*r->c_queued)++;
    set_gauges(n, r);
    return d->id;
}

static recv_t *find(const notify_t *n, const char *name)
{
    for (size_t i = 0; i < n->nr; i++)
        if (!strcmp(n->r[i].name, name))
            return &n->r[i];
    return NULL;
}

bool notify_has(const notify_t *n, const char *receiver)
{
    return n && receiver && find(n, receiver) != NULL;
}

size_t notify_pending(const notify_t *n) { return n ? n->queued : 0; }

static uint64_t rnd(notify_t *n)
{
    uint64_t x = n->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return n->rng = x;
}

int64_t notify_send(notify_t *n, const char *receiver, const notify_group_t *g, int64_t now_ns)
{
    recv_t *r = n && receiver ? find(n, receiver) : NULL;
    if (!r)
        return -1;
    n->now = now_ns;
    grp_t gr;
    if (!g->nalerts || !grp_make(r, g, &gr))
        return 0;
    rnd(n);
    mbuf_t ttl = { 0 }, text = { 0 };
    title(n, &ttl, &gr);
    char *body = NULL;
    size_t len = 0;
    switch (r->type) {
    case CFG_NOTIFY_WEBHOOK:
        body = webhook_body(n, r, &gr, &len);
        break;
    case CFG_NOTIFY_SLACK:
        chat_text(n, &text, &gr);
        body = slack_body(&text, &len);
        break;
    case CFG_NOTIFY_TELEGRAM:
        chat_text(n, &text, &gr);
        body = telegram_body(r, &text, &len);
        break;
    case CFG_NOTIFY_EMAIL: {
        mail_alerts_text(n, &text, &ttl, &gr);
        body = mail_make(n, r, n->last_id + 1, ttl.data, utf8_cut(ttl.data, ttl.len, SUBJECT_MAX),
                         &text, now_ns, &len);
        break;
    }
    case CFG_NOTIFY_ALERTMANAGER:
        body = am_body(n, &gr, now_ns, &len);
        break;
    default:
        abort();
    }
    int64_t id = enqueue(n, r, body, len, &ttl, now_ns);
    mbuf_free(&ttl);
    mbuf_free(&text);
    grp_free(&gr);
    return id;
}

int64_t notify_message(notify_t *n, const char *receiver, const char *subject, const char *text,
                       int64_t now_ns)
{
    recv_t *r = n && receiver ? find(n, receiver) : NULL;
    if (!r)
        return -1;
    if (r->type == CFG_NOTIFY_ALERTMANAGER)
        return 0;
    n->now = now_ns;
    rnd(n);
    subject = subject ? subject : "";
    text = text ? text : "";
    mbuf_t subj = { 0 }, body_text = { 0 }, chat = { 0 };
    text_append(&subj, subject, strlen(subject), true, n->c_bad_utf8);
    text_append(&body_text, text, strlen(text), false, n->c_bad_utf8);
    char *body = NULL;
    size_t len = 0;
    switch (r->type) {
    case CFG_NOTIFY_WEBHOOK: {
        json_t *root = json_object();
        json_object_set_new(root, "subject", json_stringn_nocheck(subj.data ? subj.data : "", subj.len));
        json_object_set_new(root, "text",
                            json_stringn_nocheck(body_text.data ? body_text.data : "", body_text.len));
        body = json_take(root, &len);
        break;
    }
    case CFG_NOTIFY_SLACK:
    case CFG_NOTIFY_TELEGRAM:
        if (subj.len) {
            mbuf_append(&chat, subj.data, subj.len);
            lit(&chat, "\n\n");
        }
        if (body_text.len)
            mbuf_append(&chat, body_text.data, body_text.len);
        body = r->type == CFG_NOTIFY_SLACK ? slack_body(&chat, &len) : telegram_body(r, &chat, &len);
        break;
    case CFG_NOTIFY_EMAIL: {
        body = mail_make(n, r, n->last_id + 1, subj.data ? subj.data : "",
                         utf8_cut(subj.data, subj.len, SUBJECT_MAX), &body_text, now_ns, &len);
        break;
    }
    default:
        abort();
    }
    int64_t id = enqueue(n, r, body, len, &subj, now_ns);
    mbuf_free(&subj);
    mbuf_free(&body_text);
    mbuf_free(&chat);
    return id;
}

/* ---- setup --------------------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    recv_t *r = arg;
    size_t k = size * nmemb;
    if (r->resp.len < RESP_MAX)
        mbuf_append(&r->resp, p, k < RESP_MAX - r->resp.len ? k : RESP_MAX - r->resp.len);
    return k;
}

static size_t on_read(char *buf, size_t size, size_t nmemb, void *arg)
{
    recv_t *r = arg;
    const delivery_t *d = r->head;
    size_t want = size * nmemb;
    if (!d || r->read_off >= d->len)
        return 0;
    size_t k = d->len - r->read_off < want ? d->len - r->read_off : want;
    memcpy(buf, d->body + r->read_off, k);
    r->read_off += k;
    return k;
}

/* A secret: "env:NAME" is the environment variable NAME, anything else a
 * file whose first line it is (line end stripped; one line only). NULL with
 * err on failure; what key names the setting in messages. */
static char *read_secret(const char *name, const char *key, const char *spec, char *err, size_t cap)
{
    if (!strncmp(spec, "env:", 4)) {
        const char *v = getenv(spec + 4);
        if (!v || !v[0]) {
            snprintf(err, cap, "[notify.%s] %s: environment variable %s is not set or empty", name,
                     key, spec + 4);
            return NULL;
        }
        if (strchr(v, '\n') || strchr(v, '\r')) {
            snprintf(err, cap, "[notify.%s] %s: environment variable %s has a line break", name,
                     key, spec + 4);
            return NULL;
        }
        return xstrdup(v);
    }
    FILE *f = fopen(spec, "re");
    if (!f) {
        snprintf(err, cap, "[notify.%s] %s %s: %s", name, key, spec, strerror(errno));
        return NULL;
    }
    char *buf = xmalloc(SECRET_MAX + 2);
    size_t k = fread(buf, 1, SECRET_MAX + 1, f);
    bool bad = ferror(f);
    fclose(f);
    if (bad || k > SECRET_MAX) {
        snprintf(err, cap, "[notify.%s] %s %s: %s", name, key, spec,
                 bad ? "cannot read it" : "longer than 4096 bytes");
        goto fail;
    }
    buf[k] = '\0';
    size_t line = strcspn(buf, "\r\n");
    size_t rest = line + strspn(buf + line, "\r\n");
    if (rest < k) {
        snprintf(err, cap, "[notify.%s] %s %s: more than one line", name, key, spec);
        goto fail;
    }
    buf[line] = '\0';
    if (!line) {
        snprintf(err, cap, "[notify.%s] %s %s: empty", name, key, spec);
        goto fail;
    }
    return buf;
fail:
    explicit_bzero(buf, SECRET_MAX + 2);
    free(buf);
    return NULL;
}

static void secret_free(char **s)
{
    if (*s) {
        explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

static bool has_prefix(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

/* url without a trailing '/'; NULL unless its scheme is one of a and b. */
static char *base_url(const char *url, const char *a, const char *b)
{
    if (!has_prefix(url, a) && !has_prefix(url, b))
        return NULL;
    const char *host = strstr(url, "://") + 3;
    if (!*host || *host == '/' || strpbrk(url, " \t\r\n"))
        return NULL;
    size_t len = strlen(url);
    while (len > 0 && url[len - 1] == '/')
        len--;
    return xstrndup(url, len);
}

/* What a log line may show of url: scheme, host and port; the path unless
 * hide_path (a Slack webhook's path is its secret); never user info or the
 * query. */
static char *loggable_url(const char *url, bool hide_path)
{
    const char *s = strstr(url, "://");
    if (!s)
        return xstrdup("?");
    const char *host = s + 3;
    size_t hl = strcspn(host, "/?#");
    const char *at = memchr(host, '@', hl);
    if (at) {
        hl -= (size_t)(at + 1 - host);
        host = at + 1;
    }
    const char *path = host + hl;
    size_t pl = hide_path ? 0 : strcspn(path, "?#");
    return xasprintf("%.*s%.*s%.*s%s", (int)(s + 3 - url), url, (int)hl, host, (int)pl, path,
                     hide_path && *path == '/' ? "/<secret>" : "");
}

/* The address of "Name <a@b>" or "a@b", or NULL when it does not look like one. */
static char *mail_address(const char *s)
{
    if (strpbrk(s, "\r\n"))
        return NULL;
    const char *lt = strrchr(s, '<');
    size_t len;
    if (lt) {
        const char *gt = strchr(lt, '>');
        if (!gt || gt[1])
            return NULL;
        s = lt + 1;
        len = (size_t)(gt - s);
    } else {
        len = strlen(s);
    }
    const char *at = memchr(s, '@', len);
    if (!at || at == s || at == s + len - 1 || memchr(s, ' ', len) || memchr(s, '<', len))
        return NULL;
    return xstrndup(s, len);
}

#define SETOPT(opt, val)                                                                         \
    do {                                                                                         \
        if (curl_easy_setopt(r->easy, opt, val) != CURLE_OK) {                                   \
            snprintf(err, cap, "[notify.%s] libcurl: cannot set %s", r->name, #opt);             \
            return -1;                                                                           \
        }                                                                                        \
    } while (0)

static void counters(recv_t *r, stats_t *st)
{
    char l[160];
    snprintf(l, sizeof l, "receiver=%s", r->name);
    r->c_queued = stats_counter(st, "notify_queued_total", l);
    r->c_attempts = stats_counter(st, "notify_attempts_total", l);
    r->c_retries = stats_counter(st, "notify_retries_total", l);
    r->g_queue = stats_gauge(st, "notify_receiver_queue", l);
    r->g_last_ok = stats_gauge(st, "notify_last_success_seconds", l);
    snprintf(l, sizeof l, "receiver=%s,outcome=ok", r->name);
    r->c_ok = stats_counter(st, "notify_deliveries_total", l);
    snprintf(l, sizeof l, "receiver=%s,outcome=failed", r->name);
    r->c_failed = stats_counter(st, "notify_deliveries_total", l);
    for (int i = 0; i < NFILT; i++) {
        snprintf(l, sizeof l, "receiver=%s,reason=%s", r->name, filt_reason[i]);
        r->c_filtered[i] = stats_counter(st, "notify_filtered_total", l);
    }
    for (int i = 0; i < NERR; i++) {
        snprintf(l, sizeof l, "receiver=%s,reason=%s", r->name, err_reason[i]);
        r->c_err[i] = stats_counter(st, "notify_errors_total", l);
    }
    for (int i = 0; i < NDROP; i++) {
        snprintf(l, sizeof l, "receiver=%s,reason=%s", r->name, drop_reason[i]);
        r->c_drop[i] = stats_counter(st, "notify_dropped_total", l);
    }
}

static int recv_setup(notify_t *n, recv_t *r, const cfg_notify_t *c, char *err, size_t cap)
{
    r->name = xstrdup(c->name);
    r->type = c->type;
    r->min_sev = severity_rank(span_cstr(c->severity));
    r->send_resolved = c->send_resolved;
    r->timeout_ms = c->timeout > 0 ? c->timeout : 10000;
    r->retries = c->retries >= 0 ? c->retries : 0;
    r->backoff_max_ms = c->backoff_max > 0 ? c->backoff_max : 1;
    char *password = NULL;
    if (c->password_file && c->password_file[0]) {
        if (!(password = read_secret(r->name, "password_file", c->password_file, err, cap)))
            return -1;
        r->secret[1] = password;
    }
    if (c->user && c->user[0])
        r->user = xstrdup(c->user);
    if ((r->user != NULL) != (password != NULL)) {
        snprintf(err, cap, "[notify.%s] user and password_file go together", r->name);
        return -1;
    }

    char *base = NULL;
    const char *protocols = "http,https";
    switch (r->type) {
    case CFG_NOTIFY_WEBHOOK:
    case CFG_NOTIFY_SLACK:
        if (!(base = base_url(c->url, "http://", "https://"))) {
            snprintf(err, cap, "[notify.%s] url '%s': http:// or https:// and a host", r->name,
                     r->type == CFG_NOTIFY_SLACK ? "<hidden>" : c->url);
            return -1;
        }
        r->url = xstrdup(c->url); /* as given: a webhook's path may matter to the letter */
        free(base);
        r->log_url = loggable_url(r->url, r->type == CFG_NOTIFY_SLACK);
        if (r->type == CFG_NOTIFY_SLACK) {
            const char *p = strchr(strstr(r->url, "://") + 3, '/');
            if (p && strlen(p) > 8)
                r->secret[2] = xstrdup(p + 1);
        }
        break;
    case CFG_NOTIFY_ALERTMANAGER: {
        if (!(base = base_url(c->url, "http://", "https://"))) {
            snprintf(err, cap, "[notify.%s] url '%s': http:// or https:// and a host", r->name,
                     c->url);
            return -1;
        }
        static const char path[] = "/api/v2/alerts";
        size_t bl = strlen(base);
        if (bl >= sizeof path - 1 && !strcmp(base + bl - (sizeof path - 1), path))
            r->url = xstrdup(base);
        else
            r->url = xasprintf("%s%s", base, path);
        free(base);
        r->log_url = loggable_url(r->url, false);
        break;
    }
    case CFG_NOTIFY_TELEGRAM: {
        const char *u = c->url && c->url[0] ? c->url : TELEGRAM_API;
        if (!(base = base_url(u, "http://", "https://"))) {
            snprintf(err, cap, "[notify.%s] url '%s': http:// or https:// and a host", r->name, u);
            return -1;
        }
        if (!c->token_file || !c->token_file[0] || !c->chat_id || !c->chat_id[0]) {
            free(base);
            snprintf(err, cap, "[notify.%s] telegram needs token_file and chat_id", r->name);
            return -1;
        }
        char *token = read_secret(r->name, "token_file", c->token_file, err, cap);
        if (!token) {
            free(base);
            return -1;
        }
        r->secret[0] = token;
        if (strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-") !=
            strlen(token)) {
            free(base);
            snprintf(err, cap, "[notify.%s] token_file %s: not a bot token (A-Z a-z 0-9 : _ -)",
                     r->name, c->token_file);
            return -1;
        }
        r->url = xasprintf("%s/bot%s/sendMessage", base, token);
        char *lb = loggable_url(base, false);
        r->log_url = xasprintf("%s/bot<secret>/sendMessage", lb);
        free(lb);
        free(base);
        r->chat_id = xstrdup(c->chat_id);
        break;
    }
    case CFG_NOTIFY_EMAIL: {
        if (!(base = base_url(c->url, "smtp://", "smtps://"))) {
            snprintf(err, cap, "[notify.%s] url '%s': smtp:// or smtps:// and a host", r->name,
                     c->url);
            return -1;
        }
        r->url = base;
        r->log_url = loggable_url(r->url, false);
        protocols = "smtp,smtps";
        char *from = c->from ? mail_address(c->from) : NULL;
        if (!from) {
            snprintf(err, cap, "[notify.%s] from '%s' is not a mail address", r->name,
                     c->from ? c->from : "");
            return -1;
        }
        const char *at = strrchr(from, '@') + 1;
        r->domain = xstrndup(at, strspn(at, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                            "0123456789.-"));
        if (!r->domain[0]) {
            free(r->domain);
            r->domain = xstrdup("tokmon.invalid");
        }
        char *env = xasprintf("<%s>", from);
        free(from);
        CURLcode rc = curl_easy_setopt(r->easy, CURLOPT_MAIL_FROM, env); /* libcurl copies it */
        free(env);
        if (rc != CURLE_OK) {
            snprintf(err, cap, "[notify.%s] libcurl: cannot set CURLOPT_MAIL_FROM", r->name);
            return -1;
        }
        r->from_hdr = xstrdup(c->from);
        mbuf_t to = { 0 };
        for (size_t i = 0; i < c->to.n; i++) {
            char *a = mail_address(c->to.v[i]);
            if (!a) {
                mbuf_free(&to);
                snprintf(err, cap, "[notify.%s] to '%s' is not a mail address", r->name, c->to.v[i]);
                return -1;
            }
            char *e = xasprintf("<%s>", a);
            free(a);
            struct curl_slist *l = curl_slist_append(r->rcpts, e);
            free(e);
            if (!l) {
                mbuf_free(&to);
                snprintf(err, cap, "[notify.%s] libcurl: cannot make the recipient list", r->name);
                return -1;
            }
            r->rcpts = l;
            if (i)
                lit(&to, ", ");
            lit(&to, c->to.v[i]);
        }
        if (!c->to.n) {
            snprintf(err, cap, "[notify.%s] email needs from and to", r->name);
            return -1;
        }
        mbuf_append(&to, "", 1);
        r->to_hdr = to.data;
        SETOPT(CURLOPT_MAIL_RCPT, r->rcpts);
        SETOPT(CURLOPT_UPLOAD, 1L);
        SETOPT(CURLOPT_READFUNCTION, on_read);
        SETOPT(CURLOPT_READDATA, r);
        /* smtps:// is TLS from the start; smtp:// upgrades with STARTTLS,
         * required unless starttls = off (then plain, never upgraded) */
        SETOPT(CURLOPT_USE_SSL, (long)(has_prefix(r->url, "smtps://") || c->starttls
                                           ? CURLUSESSL_ALL
                                           : CURLUSESSL_NONE));
        break;
    }
    default:
        snprintf(err, cap, "[notify.%s] unknown type", r->name);
        return -1;
    }
    (void)n;

    SETOPT(CURLOPT_URL, r->url);
    SETOPT(CURLOPT_PROTOCOLS_STR, protocols);
    if (c->ca_file[0]) /* a private CA: verification stays on */
        SETOPT(CURLOPT_CAINFO, c->ca_file);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_ERRORBUFFER, r->curl_err);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, r);
    if (r->type != CFG_NOTIFY_EMAIL) {
        r->headers = curl_slist_append(NULL, "Content-Type: application/json");
        struct curl_slist *l = r->headers ? curl_slist_append(r->headers, "Expect:") : NULL;
        if (!l) {
            snprintf(err, cap, "[notify.%s] libcurl: cannot make the header list", r->name);
            return -1;
        }
        r->headers = l;
        SETOPT(CURLOPT_POST, 1L);
        SETOPT(CURLOPT_HTTPHEADER, r->headers);
        SETOPT(CURLOPT_USERAGENT, "tokmon-alerter/" TOKMON_VERSION);
        SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
        if (r->user) {
            if (r->type == CFG_NOTIFY_SLACK || r->type == CFG_NOTIFY_TELEGRAM) {
                snprintf(err, cap, "[notify.%s] user and password_file: not for this type", r->name);
                return -1;
            }
            SETOPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        }
    }
    if (r->user) {
        SETOPT(CURLOPT_USERNAME, r->user);
        SETOPT(CURLOPT_PASSWORD, password); /* libcurl keeps its own copy */
    }
    return 0;
}

notify_t *notify_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap)
{
    notify_t *n = xcalloc(1, sizeof *n);
    n->rng = (uint64_t)tmtime_mono_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
    if (!n->rng)
        n->rng = 1;
    n->g_queue = stats_gauge(st, "notify_queue", NULL);
    n->c_bad_utf8 = stats_counter(st, "notify_invalid_utf8_total", NULL);
    n->c_results_dropped = stats_counter(st, "notify_results_dropped_total", NULL);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, cap, "libcurl: curl_global_init failed");
        goto fail;
    }
    n->curl_ok = true;
    n->r = xcalloc(cfg->nnotifies ? cfg->nnotifies : 1, sizeof *n->r);
    for (size_t i = 0; i < cfg->nnotifies; i++) {
        recv_t *r = &n->r[n->nr++];
        if (!(r->easy = curl_easy_init()) || !(r->multi = curl_multi_init())) {
            r->name = xstrdup(cfg->notifies[i].name);
            snprintf(err, cap, "libcurl: cannot make a handle");
            goto fail;
        }
        if (recv_setup(n, r, &cfg->notifies[i], err, cap) < 0)
            goto fail;
        counters(r, st);
    }
    return n;
fail:
    notify_destroy(&n);
    return NULL;
}

/* Drops every delivery, in flight or not, counted and reported. */
static void drop_all(notify_t *n, int reason)
{
    for (size_t i = 0; i < n->nr; i++) {
        recv_t *r = &n->r[i];
        if (r->in_flight) {
            curl_multi_remove_handle(r->multi, r->easy);
            r->in_flight = false;
        }
        while (r->head) {
            delivery_t *d = pop_head(n, r);
            if (r->c_drop[reason])
                (*r->c_drop[reason])++;
            size_t el = strlen(d->err);
            snprintf(d->err + el, sizeof d->err - el, "%sdropped: %s", el ? "; " : "",
                     reason == DROP_SHUTDOWN ? "shut down before it was delivered" : "queue full");
            result_add(n, i, d, false);
            delivery_free(d);
        }
    }
}

void notify_destroy(notify_t **np)
{
    notify_t *n = *np;
    if (!n)
        return;
    drop_all(n, DROP_SHUTDOWN);
    for (size_t i = 0; i < n->nr; i++) {
        recv_t *r = &n->r[i];
        if (r->easy)
            curl_easy_cleanup(r->easy);
        if (r->multi)
            curl_multi_cleanup(r->multi);
        curl_slist_free_all(r->headers);
        curl_slist_free_all(r->rcpts);
        mbuf_free(&r->resp);
        for (size_t s = 0; s < NSECRETS; s++)
            secret_free(&r->secret[s]);
        secret_free(&r->url); /* telegram's holds the token */
        free(r->name);
        free(r->log_url);
        free(r->user);
        free(r->chat_id);
        free(r->from_hdr);
        free(r->to_hdr);
        free(r->domain);
    }
    free(n->r);
    for (size_t i = 0; i < n->nres; i++)
        free(n->res[i].error);
    free(n->res);
    if (n->curl_ok)
        curl_global_cleanup();
    free(n);
    *np = NULL;
}

/* ---- sending ------------------------------------------------------------------- */

static void start(notify_t *n, recv_t *r)
{
    delivery_t *d = r->head;
    mbuf_reset(&r->resp);
    r->curl_err[0] = '\0';
    r->read_off = 0;
    if (r->type == CFG_NOTIFY_EMAIL) {
        curl_easy_setopt(r->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)d->len);
    } else {
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)d->len);
        curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, d->body);
    }
    if (curl_multi_add_handle(r->multi, r->easy) != CURLM_OK) {
        /* not for a handle that is not added already; try again in a second */
        snprintf(d->err, sizeof d->err, "libcurl: cannot start a transfer");
        d->next_try = n->now + 1000 * TMTIME_NS_PER_MS;
        d->scheduled = n->now;
        return;
    }
    r->in_flight = true;
    d->attempts++;
    (*r->c_attempts)++;
    if (d->attempts > 1)
        (*r->c_retries)++;
}

/* The wait before the next try, ms: exponential from BACKOFF_BASE_MS with
 * "equal jitter" (half fixed, half random), capped at backoff_max; what the
 * server asked for instead when it did (Telegram's retry_after, a
 * Retry-After header), up to an hour. */
static int64_t backoff_ms(notify_t *n, const recv_t *r, int attempts, int64_t server_ms)
{
    if (server_ms > 0)
        return server_ms < SERVER_WAIT_MAX_MS ? server_ms : SERVER_WAIT_MAX_MS;
    int64_t cap = r->backoff_max_ms;
    int64_t d = BACKOFF_BASE_MS < cap ? BACKOFF_BASE_MS : cap;
    for (int i = 1; i < attempts && d < cap; i++)
        d *= 2;
    if (d > cap)
        d = cap;
    return d / 2 + (int64_t)(rnd(n) % (uint64_t)(d - d / 2 + 1));
}

/* Telegram's answer: {"ok":false,"error_code":429,"description":"...",
 * "parameters":{"retry_after":5}}. */
static void telegram_answer(const recv_t *r, bool *ok, int64_t *retry_ms, char *desc, size_t cap)
{
    json_t *j = json_loadb(r->resp.data ? r->resp.data : "", r->resp.len, 0, NULL);
    if (!j)
        return;
    json_t *v = json_object_get(j, "ok");
    if (json_is_boolean(v))
        *ok = json_is_true(v);
    json_t *ra = json_object_get(json_object_get(j, "parameters"), "retry_after");
    if (json_is_integer(ra) && json_integer_value(ra) > 0 && json_integer_value(ra) < 86400)
        *retry_ms = (int64_t)json_integer_value(ra) * 1000;
    const char *d = json_string_value(json_object_get(j, "description"));
    if (d)
        excerpt(r, d, json_string_length(json_object_get(j, "description")), desc, cap);
    json_decref(j);
}

static bool permanent_curl_error(CURLcode res)
{
    switch (res) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_REMOTE_ACCESS_DENIED:
    case CURLE_LOGIN_DENIED:
    case CURLE_USE_SSL_FAILED:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
        return true;
    default:
        return false;
    }
}

static void done(notify_t *n, recv_t *r, CURLcode res)
{
    curl_multi_remove_handle(r->multi, r->easy);
    r->in_flight = false;
    delivery_t *d = r->head;
    size_t ri = (size_t)(r - n->r);
    int64_t now_mono = tmtime_mono_ns();
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);

    int kind;
    bool retry;
    int64_t server_ms = 0;
    char body[LOG_BODY_MAX + 8] = "";
    if (res == CURLE_OK && r->type == CFG_NOTIFY_EMAIL) {
        kind = -1;
        retry = false;
    } else if (res == CURLE_OK) {
        bool ok = status >= 200 && status < 300;
        char desc[LOG_BODY_MAX + 8] = "";
        if (r->type == CFG_NOTIFY_TELEGRAM)
            telegram_answer(r, &ok, &server_ms, desc, sizeof desc);
        if (ok) {
            kind = -1;
            retry = false;
        } else {
            kind = status == 429                    ? ERR_429
                   : status >= 500 && status < 600  ? ERR_5XX
                   : status >= 400 && status < 500  ? ERR_4XX
                   : status >= 200 && status < 300 ? ERR_REFUSED /* Telegram's ok: false */
                                                    : ERR_OTHER;
            retry = kind == ERR_429 || kind == ERR_5XX;
            if (retry && !server_ms) {
                curl_off_t ra = 0;
                if (curl_easy_getinfo(r->easy, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
                    server_ms = (int64_t)ra * 1000;
            }
            if (desc[0])
                snprintf(body, sizeof body, "%s", desc);
            else
                excerpt(r, r->resp.data, r->resp.len, body, sizeof body);
            snprintf(d->err, sizeof d->err, "HTTP %ld%s%s", status, body[0] ? ": " : "", body);
        }
    } else {
        char cerr[LOG_BODY_MAX + 8];
        const char *ce = r->curl_err[0] ? r->curl_err : curl_easy_strerror(res);
        excerpt(r, ce, strlen(ce), cerr, sizeof cerr);
        if (res == CURLE_OPERATION_TIMEDOUT) {
            kind = ERR_TIMEOUT;
            retry = true;
        } else if (r->type == CFG_NOTIFY_EMAIL && status >= 400 && status < 600) {
            /* SMTP's codes: 4xx is "try again later", 5xx is "no" */
            kind = ERR_SMTP;
            retry = status < 500;
        } else {
            kind = ERR_TRANSPORT;
            retry = !permanent_curl_error(res);
        }
        if (kind == ERR_SMTP)
            snprintf(d->err, sizeof d->err, "SMTP %ld: %s", status, cerr);
        else
            snprintf(d->err, sizeof d->err, "%s", cerr);
    }

    if (kind < 0) {
        (*r->c_ok)++;
        *r->g_last_ok = n->now / TMTIME_NS_PER_SEC;
        d->err[0] = '\0';
        log_release(&r->lc_fail, "notifications are delivered again", "receiver=%s", r->name);
        log_release(&r->lc_retry, "notifications go through again", "receiver=%s", r->name);
        log_debug("notification delivered", "receiver=%s id=%lld attempts=%d", r->name,
                  (long long)d->id, d->attempts);
        result_add(n, ri, pop_head(n, r), true);
        delivery_free(d);
        return;
    }
    (*r->c_err[kind])++;
    char q_err[ERR_MAX + 64], q_what[256];
    log_quote(q_err, sizeof q_err, d->err, strlen(d->err));
    log_quote(q_what, sizeof q_what, d->what, strlen(d->what));
    if (retry && d->attempts <= r->retries) {
        int64_t wait = backoff_ms(n, r, d->attempts, server_ms);
        d->next_try = n->now + wait * TMTIME_NS_PER_MS;
        d->scheduled = n->now;
        log_complain(&r->lc_retry, now_mono, LOG_LVL_WARN, "notification failed; retrying",
                     "receiver=%s url=%s id=%lld attempt=%d wait_ms=%lld error=%s what=%s", r->name,
                     r->log_url, (long long)d->id, d->attempts, (long long)wait, q_err, q_what);
        return;
    }
    (*r->c_failed)++;
    log_complain(&r->lc_fail, now_mono, LOG_LVL_ERROR, "notification failed; given up",
                 "receiver=%s url=%s id=%lld attempts=%d reason=%s error=%s what=%s", r->name,
                 r->log_url, (long long)d->id, d->attempts,
                 retry ? "retries_exhausted" : "refused", q_err, q_what);
    result_add(n, ri, pop_head(n, r), false);
    delivery_free(d);
}

static void poll_curl(notify_t *n, recv_t *r)
{
    int running = 0;
    curl_multi_perform(r->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(r->multi, &left)))
        if (m->msg == CURLMSG_DONE && m->easy_handle == r->easy && r->in_flight)
            done(n, r, m->data.result);
}

/* A clock stepped back past the time a wait was set must not hold it. */
static bool due(const delivery_t *d, int64_t now) { return now >= d->next_try || now < d->scheduled; }

long notify_work(notify_t *n, int64_t now_ns)
{
    if (!n)
        return IDLE_MS;
    n->now = now_ns;
    for (size_t i = 0; i < n->nr; i++) {
        recv_t *r = &n->r[i];
        if (r->in_flight)
            poll_curl(n, r);
        if (!r->in_flight && r->head && due(r->head, now_ns)) {
            start(n, r);
            if (r->in_flight)
                poll_curl(n, r); /* under way now, not on the next turn */
        }
    }

    long ms = IDLE_MS;
    for (size_t i = 0; i < n->nr; i++) {
        recv_t *r = &n->r[i];
        long t = IDLE_MS;
        if (r->in_flight) {
            long c = -1;
            curl_multi_timeout(r->multi, &c);
            t = c >= 0 && c < INFLIGHT_MS ? c : INFLIGHT_MS;
        } else if (r->head) {
            int64_t d = due(r->head, now_ns) ? 0 : r->head->next_try - now_ns;
            t = d <= 0 ? 0 : d >= (int64_t)IDLE_MS * TMTIME_NS_PER_MS ? IDLE_MS
                : (long)((d + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
        }
        if (t < ms)
            ms = t;
    }
    return ms;
}

void notify_results(notify_t *n, void (*fn)(void *arg, const notify_result_t *r), void *arg)
{
    if (!n)
        return;
    /* fn may queue (and so drop and report) more: take the list first */
    result_t *res = n->res;
    size_t nres = n->nres;
    n->res = NULL;
    n->nres = n->rescap = 0;
    for (size_t i = 0; i < nres; i++) {
        notify_result_t r = { .id = res[i].id, .receiver = n->r[res[i].recv].name,
                              .ok = res[i].ok, .attempts = res[i].attempts,
                              .error = res[i].error };
        fn(arg, &r);
        free(res[i].error);
    }
    free(res);
}

void notify_drain(notify_t *n, long timeout_ms)
{
    if (!n)
        return;
    int64_t start_mono = tmtime_mono_ns();
    int64_t end = start_mono + (int64_t)timeout_ms * TMTIME_NS_PER_MS;
    int64_t base = n->now ? n->now : tmtime_now_ns(); /* the caller's clock, carried on */
    for (;;) {
        int64_t mono = tmtime_mono_ns();
        long ms = notify_work(n, base + (mono - start_mono));
        if (!n->queued)
            break;
        mono = tmtime_mono_ns();
        if (mono >= end)
            break;
        long left = (long)((end - mono + TMTIME_NS_PER_MS - 1) / TMTIME_NS_PER_MS);
        if (ms > left)
            ms = left;
        if (ms < 1)
            ms = 1;
        poll(NULL, 0, (int)ms); /* in flight: at most INFLIGHT_MS */
    }
    if (n->queued) {
        size_t k = n->queued;
        drop_all(n, DROP_SHUTDOWN);
        log_warn("notifications not delivered at shutdown", "dropped=%zu", k);
    }
}

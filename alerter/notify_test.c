/* notify_test: the alerter's deliveries against servers run in this process:
 * an HTTP server thread (127.0.0.1, port 0) that answers from a plan and
 * keeps every request, and an SMTP server thread that speaks enough SMTP
 * (EHLO, AUTH PLAIN and LOGIN, MAIL, RCPT, DATA, RSET, QUIT) and keeps
 * every message. Checked: each payload's JSON shape (Alertmanager's webhook
 * version 4, Slack, Telegram, Alertmanager's v2 API), the mail's envelope,
 * headers and body, the severity filter and send_resolved, retries and
 * their limits, Telegram's retry_after, order per receiver and concurrency
 * between receivers, the bounded queue, drain, settings, and that secrets
 * never reach a log line. Run one test alone with `notify_test NAME`. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cfg.h"
#include "log.h"
#include "msg.h"
#include "notify.h"
#include "stats.h"
#include "tmtime.h"
#include "xalloc.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MS TMTIME_NS_PER_MS
#define SEC TMTIME_NS_PER_SEC
#define NOW (1795305600LL * SEC) /* 2026-11-22T00:00:00Z */

/* ---- the HTTP server ----------------------------------------------------------- */

typedef struct {
    int status;        /* 0: read the request, never answer */
    const char *extra; /* more header lines, each ending in \r\n */
    const char *body;
} act_t;

typedef struct {
    char method[16], path[512];
    char ctype[128], auth[256], ua[128];
    char *body; /* NUL-terminated */
    size_t len;
    int64_t at; /* monotonic ns */
} req_t;

#define MAX_REQS 64

typedef struct {
    int lfd, port;
    pthread_t th;
    pthread_mutex_t mu;
    atomic_bool stop;
    act_t plan[16];
    size_t nplan;
    act_t dflt;
    req_t reqs[MAX_REQS];
    size_t nreq;
    int hung[16];
    size_t nhung;
} srv_t;

static void hdr(const char *line, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    if (strncasecmp(line, name, n) || line[n] != ':')
        return;
    const char *v = line + n + 1;
    while (*v == ' ')
        v++;
    snprintf(out, cap, "%s", v);
}

static bool http_read(int fd, req_t *r)
{
    size_t cap = 65536, len = 0;
    char *buf = xmalloc(cap + 1);
    char *end = NULL;
    while (!end) {
        if (len == cap) {
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k <= 0) {
            free(buf);
            return false;
        }
        len += (size_t)k;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t hlen = (size_t)(end - buf) + 4, clen = 0;
    end[2] = '\0';
    char *save = NULL, *line = strtok_r(buf, "\r\n", &save);
    if (!line || sscanf(line, "%15s %511s", r->method, r->path) != 2) {
        free(buf);
        return false;
    }
    while ((line = strtok_r(NULL, "\r\n", &save))) {
        char cl[32] = "";
        hdr(line, "Content-Length", cl, sizeof cl);
        if (cl[0])
            clen = strtoul(cl, NULL, 10);
        hdr(line, "Content-Type", r->ctype, sizeof r->ctype);
        hdr(line, "Authorization", r->auth, sizeof r->auth);
        hdr(line, "User-Agent", r->ua, sizeof r->ua);
    }
    r->body = xmalloc(clen + 1);
    size_t have = len - hlen < clen ? len - hlen : clen;
    memcpy(r->body, buf + hlen, have);
    free(buf);
    while (have < clen) {
        ssize_t k = recv(fd, r->body + have, clen - have, 0);
        if (k <= 0)
            return false;
        have += (size_t)k;
    }
    r->body[clen] = '\0';
    r->len = clen;
    r->at = tmtime_mono_ns();
    return true;
}

static void *http_serve(void *arg)
{
    srv_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = { .fd = s->lfd, .events = POLLIN };
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        struct timeval tv = { .tv_sec = 3 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        req_t r = { 0 };
        if (!http_read(fd, &r)) {
            free(r.body);
            close(fd);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        size_t i = s->nreq;
        act_t a = i < s->nplan ? s->plan[i] : s->dflt;
        if (i < MAX_REQS)
            s->reqs[s->nreq++] = r;
        else
            free(r.body);
        pthread_mutex_unlock(&s->mu);
        if (a.status == 0 && s->nhung < ARRAY_LEN(s->hung)) {
            s->hung[s->nhung++] = fd; /* closed when the server stops */
            continue;
        }
        const char *body = a.body ? a.body : "";
        char resp[2048];
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n%s",
                         a.status, strlen(body), a.extra ? a.extra : "", body);
        if (send(fd, resp, (size_t)n, MSG_NOSIGNAL) < 0) { /* the client gave up */
        }
        close(fd);
    }
    return NULL;
}

static int listen_loopback(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Answers from plan, then dflt (status 0 there: 200 with an empty body;
 * -1: never answer). */
static srv_t *srv_start(const act_t *plan, size_t nplan, act_t dflt)
{
    srv_t *s = xcalloc(1, sizeof *s);
    s->dflt = dflt.status > 0 ? dflt : dflt.status < 0 ? (act_t){ 0 } : (act_t){ 200, NULL, "" };
    assert_true(nplan <= ARRAY_LEN(s->plan));
    if (nplan)
        memcpy(s->plan, plan, nplan * sizeof *plan);
    s->nplan = nplan;
    s->lfd = listen_loopback(&s->port);
    pthread_mutex_init(&s->mu, NULL);
    assert_int_equal(pthread_create(&s->th, NULL, http_serve, s), 0);
    return s;
}

static srv_t *srv_ok(void) { return srv_start(NULL, 0, (act_t){ 0 }); }

static size_t srv_count(srv_t *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->nreq;
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void srv_stop(srv_t **sp)
{
    srv_t *s = *sp;
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->lfd);
    for (size_t i = 0; i < s->nhung; i++)
        close(s->hung[i]);
    for (size_t i = 0; i < s->nreq; i++)
        free(s->reqs[i].body);
    pthread_mutex_destroy(&s->mu);
    free(s);
    *sp = NULL;
}

/* ---- the SMTP server ----------------------------------------------------------- */

typedef struct {
    char mech[16], user[64], pass[64];
    char from[256];
    char rcpt[4][256];
    size_t nrcpt;
    char *raw;  /* DATA as received (dot-stuffed), up to the final "." line */
    char *data; /* the same un-stuffed */
} mail_t;

typedef struct {
    int lfd, port;
    pthread_t th;
    pthread_mutex_t mu;
    atomic_bool stop;
    /* the plan */
    const char *auth;   /* mechanisms advertised: "" none, "PLAIN", "LOGIN" */
    const char *user, *pass;
    int rcpt_codes[8];  /* answers to RCPT in arrival order, then 250 */
    size_t nrcpt_codes;
    /* what happened */
    mail_t mails[16];
    size_t nmail;
    size_t nrcpt_seen, nauth, nauth_ok, nconn;
    char last_mech[16];
    pthread_t conn_th[16];
    size_t nconn_th;
} smtp_t;

typedef struct {
    smtp_t *s;
    int fd;
    char buf[8192];
    size_t len;
} sconn_t;

/* One line without its CRLF into out; -1 on EOF, error or stop. */
static int sline(sconn_t *c, char *out, size_t cap)
{
    for (;;) {
        char *e = memmem(c->buf, c->len, "\r\n", 2);
        if (e) {
            size_t n = (size_t)(e - c->buf);
            size_t k = n < cap - 1 ? n : cap - 1;
            memcpy(out, c->buf, k);
            out[k] = '\0';
            memmove(c->buf, e + 2, c->len - n - 2);
            c->len -= n + 2;
            return (int)k;
        }
        if (c->len == sizeof c->buf)
            return -1;
        struct pollfd p = { .fd = c->fd, .events = POLLIN };
        int pr = poll(&p, 1, 20);
        if (atomic_load(&c->s->stop))
            return -1;
        if (pr <= 0)
            continue;
        ssize_t k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (k <= 0)
            return -1;
        c->len += (size_t)k;
    }
}

static void say(sconn_t *c, const char *s)
{
    if (send(c->fd, s, strlen(s), MSG_NOSIGNAL) < 0) { /* the client went away */
    }
}

static size_t b64dec(const char *in, char *out, size_t cap)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *in && *in != '='; in++) {
        const char *p = strchr(tab, *in);
        if (!p)
            continue;
        acc = (acc << 6) | (uint32_t)(p - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n < cap)
                out[n++] = (char)((acc >> bits) & 0xff);
        }
    }
    return n;
}

/* AUTH PLAIN [resp] / AUTH LOGIN [user]: 235 or 535. */
static bool smtp_auth(sconn_t *c, const char *args, mail_t *m)
{
    smtp_t *s = c->s;
    char mech[16] = "", arg[512] = "", line[512];
    sscanf(args, "%15s %511s", mech, arg);
    char user[128] = "", pass[128] = "";
    if (!strcasecmp(mech, "PLAIN")) {
        if (!arg[0]) {
            say(c, "334 \r\n");
            if (sline(c, arg, sizeof arg) < 0)
                return false;
        }
        char dec[512];
        size_t n = b64dec(arg, dec, sizeof dec - 1);
        dec[n] = '\0';
        /* authzid NUL authcid NUL passwd */
        const char *a = memchr(dec, '\0', n);
        if (a) {
            snprintf(user, sizeof user, "%s", a + 1);
            const char *b = a + 1 + strlen(a + 1);
            if ((size_t)(b - dec) < n)
                snprintf(pass, sizeof pass, "%.*s", (int)(n - (size_t)(b + 1 - dec)), b + 1);
        }
    } else if (!strcasecmp(mech, "LOGIN")) {
        if (!arg[0]) {
            say(c, "334 VXNlcm5hbWU6\r\n");
            if (sline(c, arg, sizeof arg) < 0)
                return false;
        }
        size_t n = b64dec(arg, user, sizeof user - 1);
        user[n] = '\0';
        say(c, "334 UGFzc3dvcmQ6\r\n");
        if (sline(c, line, sizeof line) < 0)
            return false;
        n = b64dec(line, pass, sizeof pass - 1);
        pass[n] = '\0';
    } else {
        say(c, "504 5.5.4 unknown mechanism\r\n");
        return true;
    }
    pthread_mutex_lock(&s->mu);
    s->nauth++;
    snprintf(s->last_mech, sizeof s->last_mech, "%s", mech);
    bool ok = s->user && !strcmp(user, s->user) && !strcmp(pass, s->pass);
    s->nauth_ok += ok;
    pthread_mutex_unlock(&s->mu);
    snprintf(m->mech, sizeof m->mech, "%s", mech);
    snprintf(m->user, sizeof m->user, "%.63s", user);
    snprintf(m->pass, sizeof m->pass, "%.63s", pass);
    say(c, ok ? "235 2.7.0 ok\r\n" : "535 5.7.8 authentication failed\r\n");
    return true;
}

static void *smtp_session(void *arg)
{
    sconn_t *c = arg;
    smtp_t *s = c->s;
    mail_t m = { 0 };
    char line[2048];
    say(c, "220 test ESMTP\r\n");
    while (sline(c, line, sizeof line) >= 0) {
        if (!strncasecmp(line, "EHLO", 4)) {
            char r[256];
            if (s->auth && s->auth[0])
                snprintf(r, sizeof r, "250-test\r\n250-AUTH %s\r\n250 8BITMIME\r\n", s->auth);
            else
                snprintf(r, sizeof r, "250-test\r\n250 8BITMIME\r\n");
            say(c, r);
        } else if (!strncasecmp(line, "HELO", 4)) {
            say(c, "250 test\r\n");
        } else if (!strncasecmp(line, "AUTH ", 5)) {
            if (!smtp_auth(c, line + 5, &m))
                break;
        } else if (!strncasecmp(line, "MAIL FROM:", 10)) {
            free(m.raw);
            free(m.data);
            char mech[16], user[64], pass[64];
            memcpy(mech, m.mech, sizeof mech);
            memcpy(user, m.user, sizeof user);
            memcpy(pass, m.pass, sizeof pass);
            m = (mail_t){ 0 };
            memcpy(m.mech, mech, sizeof mech); /* AUTH holds for the connection */
            memcpy(m.user, user, sizeof user);
            memcpy(m.pass, pass, sizeof pass);
            snprintf(m.from, sizeof m.from, "%.255s", line + 10);
            say(c, "250 2.1.0 ok\r\n");
        } else if (!strncasecmp(line, "RCPT TO:", 8)) {
            pthread_mutex_lock(&s->mu);
            size_t i = s->nrcpt_seen++;
            int code = i < s->nrcpt_codes ? s->rcpt_codes[i] : 250;
            pthread_mutex_unlock(&s->mu);
            char r[64];
            snprintf(r, sizeof r, "%d rcpt\r\n", code);
            if (code == 250 && m.nrcpt < ARRAY_LEN(m.rcpt))
                snprintf(m.rcpt[m.nrcpt++], sizeof m.rcpt[0], "%.255s", line + 8);
            say(c, r);
        } else if (!strcasecmp(line, "DATA")) {
            say(c, "354 go ahead\r\n");
            size_t cap = 1 << 16, rl = 0, dl = 0;
            char *raw = xmalloc(cap), *data = xmalloc(cap);
            bool ended = false;
            while (sline(c, line, sizeof line) >= 0) {
                if (!strcmp(line, ".")) {
                    ended = true;
                    break;
                }
                size_t n = strlen(line);
                if (rl + n + 3 > cap || dl + n + 3 > cap)
                    break;
                memcpy(raw + rl, line, n);
                rl += n;
                memcpy(raw + rl, "\r\n", 2);
                rl += 2;
                const char *u = line[0] == '.' ? line + 1 : line; /* un-stuff */
                size_t un = strlen(u);
                memcpy(data + dl, u, un);
                dl += un;
                memcpy(data + dl, "\r\n", 2);
                dl += 2;
            }
            raw[rl] = '\0';
            data[dl] = '\0';
            if (!ended) {
                free(raw);
                free(data);
                break;
            }
            m.raw = raw;
            m.data = data;
            pthread_mutex_lock(&s->mu);
            if (s->nmail < ARRAY_LEN(s->mails)) {
                s->mails[s->nmail++] = m;
                m.raw = m.data = NULL;
            }
            pthread_mutex_unlock(&s->mu);
            say(c, "250 2.0.0 queued\r\n");
        } else if (!strcasecmp(line, "RSET") || !strcasecmp(line, "NOOP")) {
            say(c, "250 ok\r\n");
        } else if (!strcasecmp(line, "QUIT")) {
            say(c, "221 bye\r\n");
            break;
        } else if (!strcasecmp(line, "STARTTLS")) {
            say(c, "454 4.7.0 TLS not available\r\n");
        } else {
            say(c, "502 5.5.2 unknown command\r\n");
        }
    }
    free(m.raw);
    free(m.data);
    close(c->fd);
    free(c);
    return NULL;
}

static void *smtp_serve(void *arg)
{
    smtp_t *s = arg;
    while (!atomic_load(&s->stop)) {
        struct pollfd p = { .fd = s->lfd, .events = POLLIN };
        if (poll(&p, 1, 20) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (s->nconn_th == ARRAY_LEN(s->conn_th)) {
            close(fd);
            continue;
        }
        sconn_t *c = xcalloc(1, sizeof *c);
        c->s = s;
        c->fd = fd;
        pthread_mutex_lock(&s->mu);
        s->nconn++;
        pthread_mutex_unlock(&s->mu);
        assert_int_equal(pthread_create(&s->conn_th[s->nconn_th++], NULL, smtp_session, c), 0);
    }
    for (size_t i = 0; i < s->nconn_th; i++)
        pthread_join(s->conn_th[i], NULL);
    return NULL;
}

static smtp_t *smtp_start(const char *auth, const char *user, const char *pass, const int *codes,
                          size_t ncodes)
{
    smtp_t *s = xcalloc(1, sizeof *s);
    s->auth = auth;
    s->user = user;
    s->pass = pass;
    assert_true(ncodes <= ARRAY_LEN(s->rcpt_codes));
    if (ncodes)
        memcpy(s->rcpt_codes, codes, ncodes * sizeof *codes);
    s->nrcpt_codes = ncodes;
    s->lfd = listen_loopback(&s->port);
    pthread_mutex_init(&s->mu, NULL);
    assert_int_equal(pthread_create(&s->th, NULL, smtp_serve, s), 0);
    return s;
}

static void smtp_stop(smtp_t **sp)
{
    smtp_t *s = *sp;
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    close(s->lfd);
    for (size_t i = 0; i < s->nmail; i++) {
        free(s->mails[i].raw);
        free(s->mails[i].data);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
    *sp = NULL;
}

/* ---- the alerter's side -------------------------------------------------------- */

typedef struct {
    int64_t id;
    char receiver[64];
    bool ok;
    int attempts;
    char error[512];
} got_t;

typedef struct {
    cfg_t *cfg;
    stats_t *st;
    notify_t *n;
    got_t got[64];
    size_t ngot;
    size_t nresults; /* all reported, kept or not */
} fix_t;

static void on_result(void *arg, const notify_result_t *r)
{
    fix_t *f = arg;
    f->nresults++;
    if (f->ngot == ARRAY_LEN(f->got))
        return;
    got_t *g = &f->got[f->ngot++];
    g->id = r->id;
    snprintf(g->receiver, sizeof g->receiver, "%s", r->receiver);
    g->ok = r->ok;
    g->attempts = r->attempts;
    snprintf(g->error, sizeof g->error, "%s", r->error);
    assert_true(r->ok == !r->error[0]);
}

/* A notify_t of these [notify.X] sections; NULL and err when notify_new fails. */
static notify_t *fix_try(fix_t *f, const char *ini, char *err, size_t cap)
{
    memset(f, 0, sizeof *f);
    char cerr[1024];
    f->cfg = cfg_load_string(ini, strlen(ini), "t.ini", NULL, cerr, sizeof cerr);
    if (!f->cfg)
        fail_msg("config: %s\n%s", cerr, ini);
    f->st = stats_new("tokmon-alerter", "test");
    f->n = notify_new(f->cfg, f->st, err, cap);
    return f->n;
}

static void fix_open(fix_t *f, const char *ini)
{
    char err[1024] = "";
    if (!fix_try(f, ini, err, sizeof err))
        fail_msg("notify_new: %s", err);
}

static void fix_close(fix_t *f)
{
    notify_destroy(&f->n);
    assert_null(f->n);
    stats_destroy(&f->st);
    cfg_destroy(&f->cfg);
}

static int64_t ctr(fix_t *f, const char *name, const char *labels)
{
    return *stats_counter(f->st, name, labels);
}

static int64_t gauge(fix_t *f, const char *name, const char *labels)
{
    return *stats_gauge(f->st, name, labels);
}

/* Runs notify_work on the real clock until want results have come in;
 * fails after limit_ms. */
static void pump(fix_t *f, size_t want, long limit_ms)
{
    int64_t end = tmtime_mono_ns() + limit_ms * MS;
    for (;;) {
        notify_results(f->n, on_result, f);
        if (f->nresults >= want)
            return;
        if (tmtime_mono_ns() > end)
            fail_msg("%zu results after %ld ms, want %zu", f->nresults, limit_ms, want);
        long ms = notify_work(f->n, tmtime_now_ns());
        assert_true(ms >= 0 && ms <= 1000);
        usleep((useconds_t)((ms < 2 ? ms : 2) * 1000 + 200));
    }
}

/* Runs notify_work for ms milliseconds. */
static void pump_for(fix_t *f, long ms)
{
    int64_t end = tmtime_mono_ns() + ms * MS;
    while (tmtime_mono_ns() < end) {
        notify_work(f->n, tmtime_now_ns());
        notify_results(f->n, on_result, f);
        usleep(1000);
    }
}

static char *write_tmp(char *path, size_t cap, const char *text)
{
    snprintf(path, cap, "/tmp/notify_test.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

typedef struct {
    const char *k, *v;
} kvs_t;

/* An alert: labels and annotations as given (alertname and severity are
 * not added to the labels unless listed). */
static msg_alert_t mk_alert(const char *name, const char *state, const char *sev, const char *fp,
                            const kvs_t *lab, size_t nl, const kvs_t *ann, size_t na)
{
    msg_alert_t a;
    memset(&a, 0, sizeof a);
    a.alertname = span_cstr(name);
    a.state = span_cstr(state);
    a.severity = span_cstr(sev);
    a.fingerprint = span_cstr(fp);
    for (size_t i = 0; i < nl; i++)
        a.labels[a.nlabels++] = (msg_tag_t){ span_cstr(lab[i].k), span_cstr(lab[i].v) };
    for (size_t i = 0; i < na; i++)
        a.annotations[a.nannotations++] = (msg_tag_t){ span_cstr(ann[i].k), span_cstr(ann[i].v) };
    a.value = 12.5;
    a.starts_at = NOW - 600 * SEC;
    a.ts = NOW;
    if (!strcmp(state, "resolved"))
        a.ends_at = NOW - 60 * SEC;
    return a;
}

static const msg_tag_t GL_NAME[] = { { SPAN_LIT("alertname"), SPAN_LIT("LLMBudgetExceeded") } };

static notify_group_t group(const msg_alert_t *al, size_t n)
{
    return (notify_group_t){ .group_key = "{}:{alertname=\"LLMBudgetExceeded\"}",
                             .group_labels = GL_NAME,
                             .ngroup_labels = 1,
                             .alerts = al,
                             .nalerts = n,
                             .external_url = "http://alerter.example:9099/" };
}

/* Two budget alerts that share alertname, severity, budget and the
 * description: one firing, one resolved (or both firing). */
static void budget_alerts(msg_alert_t out[2], bool second_resolved)
{
    static const kvs_t l1[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                { "scope", "global" }, { "severity", "critical" } };
    static const kvs_t l2[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                { "scope", "user:u1" }, { "severity", "critical" } };
    static const kvs_t a1[] = { { "description", "spent $12" },
                                { "summary", "Budget daily is over its limit" } };
    static const kvs_t a2[] = { { "description", "spent $12" },
                                { "summary", "Budget <daily> & u1 over" } };
    out[0] = mk_alert("LLMBudgetExceeded", "firing", "critical", "fp000001", l1, 4, a1, 2);
    out[1] = mk_alert("LLMBudgetExceeded", second_resolved ? "resolved" : "firing", "critical",
                      "fp000002", l2, 4, a2, 2);
}

static json_t *parse(const req_t *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        fail_msg("not JSON: %s: %.300s", je.text, r->body);
    return j;
}

static void expect_str(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("%s: not a string", key);
    if (strcmp(json_string_value(v), want))
        fail_msg("%s: '%s', want '%s'", key, json_string_value(v), want);
}

/* o is exactly the object of these string pairs. */
static void expect_map(json_t *o, const kvs_t *kv, size_t n)
{
    assert_true(json_is_object(o));
    if (json_object_size(o) != n) {
        char *s = json_dumps(o, 0);
        fail_msg("%zu keys, want %zu: %s", json_object_size(o), n, s);
    }
    for (size_t i = 0; i < n; i++)
        expect_str(o, kv[i].k, kv[i].v);
}

/* ---- webhook ------------------------------------------------------------------- */

static void test_webhook_body(void **state)
{
    (void)state;
    srv_t *srv = srv_ok();
    char pw[64], ini[1024];
    write_tmp(pw, sizeof pw, "pw\n");
    snprintf(ini, sizeof ini,
             "[notify.hook]\nurl = http://127.0.0.1:%d/hook?x=1\nuser = u\npassword_file = %s\n",
             srv->port, pw);
    fix_t f;
    fix_open(&f, ini);
    assert_true(notify_has(f.n, "hook"));
    assert_false(notify_has(f.n, "nope"));

    msg_alert_t al[3];
    budget_alerts(al, true);
    /* no alertname or severity among its labels: they are added */
    static const kvs_t l3[] = { { "budget", "daily" }, { "zone", "eu" } };
    static const kvs_t a3[] = { { "description", "spent $12" } };
    al[2] = mk_alert("LLMBudgetExceeded", "firing", "warning", "fp000003", l3, 2, a3, 1);
    notify_group_t g = group(al, 3);
    int64_t id = notify_send(f.n, "hook", &g, NOW);
    assert_true(id > 0);
    assert_int_equal(notify_pending(f.n), 1);
    assert_int_equal(gauge(&f, "notify_queue", NULL), 1);
    pump(&f, 1, 5000);
    assert_int_equal(f.got[0].id, id);
    assert_true(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 1);
    assert_string_equal(f.got[0].receiver, "hook");
    assert_int_equal(notify_pending(f.n), 0);
    assert_int_equal(gauge(&f, "notify_queue", NULL), 0);
    assert_int_equal(ctr(&f, "notify_deliveries_total", "receiver=hook,outcome=ok"), 1);
    assert_true(gauge(&f, "notify_last_success_seconds", "receiver=hook") > 0);

    assert_int_equal(srv_count(srv), 1);
    req_t *r = &srv->reqs[0];
    assert_string_equal(r->method, "POST");
    assert_string_equal(r->path, "/hook?x=1");
    assert_string_equal(r->ctype, "application/json");
    assert_string_equal(r->auth, "Basic dTpwdw=="); /* u:pw */
    assert_true(!strncmp(r->ua, "tokmon-alerter/", 15));

    json_t *j = parse(r);
    assert_int_equal(json_object_size(j), 10);
    expect_str(j, "version", "4");
    expect_str(j, "groupKey", "{}:{alertname=\"LLMBudgetExceeded\"}");
    assert_true(json_is_integer(json_object_get(j, "truncatedAlerts")));
    assert_int_equal(json_integer_value(json_object_get(j, "truncatedAlerts")), 0);
    expect_str(j, "status", "firing");
    expect_str(j, "receiver", "hook");
    expect_str(j, "externalURL", "http://alerter.example:9099/");
    static const kvs_t gl[] = { { "alertname", "LLMBudgetExceeded" } };
    expect_map(json_object_get(j, "groupLabels"), gl, 1);
    static const kvs_t cl[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" } };
    expect_map(json_object_get(j, "commonLabels"), cl, 2);
    static const kvs_t ca[] = { { "description", "spent $12" } };
    expect_map(json_object_get(j, "commonAnnotations"), ca, 1);
    json_t *alerts = json_object_get(j, "alerts");
    assert_int_equal(json_array_size(alerts), 3);

    json_t *a = json_array_get(alerts, 0);
    assert_int_equal(json_object_size(a), 7);
    expect_str(a, "status", "firing");
    static const kvs_t al0[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                 { "scope", "global" }, { "severity", "critical" } };
    expect_map(json_object_get(a, "labels"), al0, 4);
    static const kvs_t an0[] = { { "description", "spent $12" },
                                 { "summary", "Budget daily is over its limit" } };
    expect_map(json_object_get(a, "annotations"), an0, 2);
    expect_str(a, "startsAt", "2026-11-21T23:50:00.000Z");
    expect_str(a, "endsAt", "0001-01-01T00:00:00Z");
    expect_str(a, "generatorURL", "");
    expect_str(a, "fingerprint", "fp000001");

    a = json_array_get(alerts, 1);
    expect_str(a, "status", "resolved");
    expect_str(a, "endsAt", "2026-11-21T23:59:00.000Z");
    expect_str(a, "fingerprint", "fp000002");

    a = json_array_get(alerts, 2);
    static const kvs_t al2[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                 { "severity", "warning" }, { "zone", "eu" } };
    expect_map(json_object_get(a, "labels"), al2, 4);
    /* the labels' keys are in order, as Alertmanager's Go maps encode */
    const char *prev = "";
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(a, "labels"), k, v) {
        assert_true(strcmp(prev, k) < 0);
        prev = k;
    }
    json_decref(j);

    /* only resolved ones: the group is resolved */
    budget_alerts(al, true);
    g = group(&al[1], 1);
    assert_true(notify_send(f.n, "hook", &g, NOW) > id);
    pump(&f, 2, 5000);
    j = parse(&srv->reqs[1]);
    expect_str(j, "status", "resolved");
    json_decref(j);

    fix_close(&f);
    srv_stop(&srv);
    unlink(pw);
}

/* ---- slack and telegram -------------------------------------------------------- */

static void test_slack_body(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0, (act_t){ 200, NULL, "ok" });
    char ini[512];
    snprintf(ini, sizeof ini,
             "[notify.chat]\ntype = slack\nurl = http://127.0.0.1:%d/services/T0/B0/XYZ\n",
             srv->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "chat", &g, NOW) > 0);
    budget_alerts(al, true); /* one resolved in a firing group */
    assert_true(notify_send(f.n, "chat", &g, NOW) > 0);
    g = group(&al[1], 1); /* resolved alone */
    assert_true(notify_send(f.n, "chat", &g, NOW) > 0);
    pump(&f, 3, 5000);
    assert_int_equal(srv_count(srv), 3);
    static const char *const want[] = {
        "[FIRING:2] LLMBudgetExceeded (budget=daily)\n"
        "- Budget daily is over its limit\n"
        "- Budget &lt;daily&gt; &amp; u1 over\n"
        "http://alerter.example:9099/",
        "[FIRING:1] LLMBudgetExceeded (budget=daily)\n"
        "- Budget daily is over its limit\n"
        "- [resolved] Budget &lt;daily&gt; &amp; u1 over\n"
        "http://alerter.example:9099/",
        "[RESOLVED] LLMBudgetExceeded (budget=daily scope=user:u1)\n"
        "- Budget &lt;daily&gt; &amp; u1 over\n"
        "http://alerter.example:9099/",
    };
    for (size_t i = 0; i < 3; i++) {
        req_t *r = &srv->reqs[i];
        assert_string_equal(r->path, "/services/T0/B0/XYZ");
        assert_string_equal(r->ctype, "application/json");
        assert_string_equal(r->auth, "");
        json_t *j = parse(r);
        assert_int_equal(json_object_size(j), 1);
        expect_str(j, "text", want[i]);
        json_decref(j);
    }
    fix_close(&f);
    srv_stop(&srv);
}

static void test_telegram_body(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0, (act_t){ 200, NULL, "{\"ok\":true,\"result\":{\"message_id\":7}}" });
    char tok[64], ini[512];
    write_tmp(tok, sizeof tok, "123456:ABC-def_9\n");
    snprintf(ini, sizeof ini,
             "[notify.tg]\ntype = telegram\nurl = http://127.0.0.1:%d/\ntoken_file = %s\n"
             "chat_id = -100123\n"
             "[notify.tgenv]\ntype = telegram\nurl = http://127.0.0.1:%d\n"
             "token_file = env:NOTIFY_TEST_TG_TOKEN\nchat_id = @ops\n",
             srv->port, tok, srv->port);
    setenv("NOTIFY_TEST_TG_TOKEN", "42:fromTheEnv", 1);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_true(notify_send(f.n, "tgenv", &g, NOW) > 0);
    pump(&f, 2, 5000);
    assert_true(f.got[0].ok && f.got[1].ok);
    assert_int_equal(srv_count(srv), 2);
    assert_string_equal(srv->reqs[0].path, "/bot123456:ABC-def_9/sendMessage");
    assert_string_equal(srv->reqs[1].path, "/bot42:fromTheEnv/sendMessage");
    json_t *j = parse(&srv->reqs[0]);
    assert_int_equal(json_object_size(j), 3);
    expect_str(j, "chat_id", "-100123");
    expect_str(j, "text", "[FIRING:2] LLMBudgetExceeded (budget=daily)\n"
                          "- Budget daily is over its limit\n"
                          "- Budget <daily> & u1 over\n"
                          "http://alerter.example:9099/");
    assert_true(json_is_true(json_object_get(j, "disable_web_page_preview")));
    json_decref(j);
    j = parse(&srv->reqs[1]);
    expect_str(j, "chat_id", "@ops");
    json_decref(j);
    fix_close(&f);
    srv_stop(&srv);
    unlink(tok);
    unsetenv("NOTIFY_TEST_TG_TOKEN");
}

/* A 429 with parameters.retry_after: the next try waits that long, however
 * short backoff_max is; a 400 ("chat not found") ends the delivery. */
static void test_telegram_429(void **state)
{
    (void)state;
    const act_t plan[] = {
        { 429, NULL,
          "{\"ok\":false,\"error_code\":429,\"description\":\"Too Many Requests: retry after 1\","
          "\"parameters\":{\"retry_after\":1}}" },
        { 200, NULL, "{\"ok\":true,\"result\":{}}" },
        { 400, NULL, "{\"ok\":false,\"error_code\":400,\"description\":\"Bad Request: chat not found\"}" },
        { 200, NULL, "{\"ok\":false,\"error_code\":403,\"description\":\"odd\"}" },
    };
    srv_t *srv = srv_start(plan, ARRAY_LEN(plan), (act_t){ 0 });
    char tok[64], ini[512];
    write_tmp(tok, sizeof tok, "1:x\n");
    snprintf(ini, sizeof ini,
             "[notify.tg]\ntype = telegram\nurl = http://127.0.0.1:%d\ntoken_file = %s\n"
             "chat_id = 5\nbackoff_max = 20ms\n",
             srv->port, tok);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 1);
    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_true(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 2);
    assert_int_equal(srv_count(srv), 2);
    int64_t gap = (srv->reqs[1].at - srv->reqs[0].at) / MS;
    if (gap < 950 || gap > 2500)
        fail_msg("the retry came after %lld ms, want about 1000", (long long)gap);
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=tg,reason=http_429"), 1);
    assert_int_equal(ctr(&f, "notify_retries_total", "receiver=tg"), 1);

    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 2, 5000);
    assert_false(f.got[1].ok);
    assert_int_equal(f.got[1].attempts, 1);
    assert_non_null(strstr(f.got[1].error, "HTTP 400"));
    assert_non_null(strstr(f.got[1].error, "chat not found"));

    /* 200 with ok: false is a refusal too */
    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 3, 5000);
    assert_false(f.got[2].ok);
    assert_int_equal(f.got[2].attempts, 1);
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=tg,reason=refused"), 1);
    assert_int_equal(srv_count(srv), 4);
    fix_close(&f);
    srv_stop(&srv);
    unlink(tok);
}

/* ---- alertmanager -------------------------------------------------------------- */

static void test_alertmanager_body(void **state)
{
    (void)state;
    srv_t *srv = srv_ok();
    char ini[512];
    snprintf(ini, sizeof ini, "[notify.am]\ntype = alertmanager\nurl = http://127.0.0.1:%d/\n",
             srv->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[3];
    budget_alerts(al, true);
    static const kvs_t l3[] = { { "a-b", "x" }, { "empty", "" }, { "severity", "info" } };
    al[2] = mk_alert("Odd", "firing", "", "fp3", l3, 3, NULL, 0);
    notify_group_t g = group(al, 3);
    assert_true(notify_send(f.n, "am", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_true(f.got[0].ok);
    assert_int_equal(srv_count(srv), 1);
    req_t *r = &srv->reqs[0];
    assert_string_equal(r->path, "/api/v2/alerts");
    assert_string_equal(r->ctype, "application/json");
    json_t *j = parse(r);
    assert_true(json_is_array(j));
    assert_int_equal(json_array_size(j), 3);

    json_t *a = json_array_get(j, 0);
    assert_int_equal(json_object_size(a), 4); /* no endsAt while firing */
    static const kvs_t l0[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                { "scope", "global" }, { "severity", "critical" } };
    expect_map(json_object_get(a, "labels"), l0, 4);
    static const kvs_t an0[] = { { "description", "spent $12" },
                                 { "summary", "Budget daily is over its limit" } };
    expect_map(json_object_get(a, "annotations"), an0, 2);
    expect_str(a, "startsAt", "2026-11-21T23:50:00.000Z");
    expect_str(a, "generatorURL", "http://alerter.example:9099/");
    assert_null(json_object_get(a, "endsAt"));

    a = json_array_get(j, 1);
    assert_int_equal(json_object_size(a), 5);
    expect_str(a, "endsAt", "2026-11-21T23:59:00.000Z");

    /* label names made valid for Alertmanager 0.25, empty values left out */
    a = json_array_get(j, 2);
    static const kvs_t l2[] = { { "a_b", "x" }, { "alertname", "Odd" }, { "severity", "info" } };
    expect_map(json_object_get(a, "labels"), l2, 3);
    json_decref(j);

    /* url given as the API's own path */
    fix_close(&f);
    snprintf(ini, sizeof ini,
             "[notify.am]\ntype = alertmanager\nurl = http://127.0.0.1:%d/api/v2/alerts\n", srv->port);
    fix_open(&f, ini);
    assert_true(notify_send(f.n, "am", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_string_equal(srv->reqs[1].path, "/api/v2/alerts");
    /* no digest for Alertmanager */
    assert_int_equal(notify_message(f.n, "am", "s", "t", NOW), 0);
    assert_int_equal(notify_pending(f.n), 0);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- filters ------------------------------------------------------------------- */

static void test_filters(void **state)
{
    (void)state;
    srv_t *srv = srv_ok();
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[notify.warn]\nurl = http://127.0.0.1:%d/warn\nseverity = warning\n"
             "[notify.nores]\nurl = http://127.0.0.1:%d/nores\nsend_resolved = off\n"
             "[notify.crit]\nurl = http://127.0.0.1:%d/crit\nseverity = critical\n",
             srv->port, srv->port, srv->port);
    fix_t f;
    fix_open(&f, ini);
    static const kvs_t none[] = { { "k", "v" } };
    msg_alert_t al[6] = {
        mk_alert("A", "firing", "info", "f1", none, 1, NULL, 0),
        mk_alert("A", "firing", "warning", "f2", none, 1, NULL, 0),
        mk_alert("A", "firing", "critical", "f3", none, 1, NULL, 0),
        mk_alert("A", "resolved", "critical", "f4", none, 1, NULL, 0),
        mk_alert("A", "pending", "critical", "f5", none, 1, NULL, 0),
        mk_alert("A", "firing", "page", "f6", none, 1, NULL, 0), /* not understood: sent */
    };
    notify_group_t g = group(al, 6);
    assert_true(notify_send(f.n, "warn", &g, NOW) > 0);
    assert_true(notify_send(f.n, "nores", &g, NOW) > 0);
    assert_true(notify_send(f.n, "crit", &g, NOW) > 0);
    /* nothing left after filtering: nothing queued */
    notify_group_t only_info = group(al, 1);
    assert_int_equal(notify_send(f.n, "warn", &only_info, NOW), 0);
    assert_int_equal(notify_send(f.n, "crit", &only_info, NOW), 0);
    notify_group_t only_resolved = group(&al[3], 1);
    assert_int_equal(notify_send(f.n, "nores", &only_resolved, NOW), 0);
    notify_group_t only_pending = group(&al[4], 1);
    assert_int_equal(notify_send(f.n, "warn", &only_pending, NOW), 0);
    notify_group_t empty = group(al, 0);
    assert_int_equal(notify_send(f.n, "warn", &empty, NOW), 0);
    assert_int_equal(notify_send(f.n, "nope", &g, NOW), -1);
    assert_int_equal(notify_message(f.n, "nope", "s", "t", NOW), -1);
    assert_int_equal(notify_pending(f.n), 3);
    pump(&f, 3, 5000);
    assert_int_equal(srv_count(srv), 3);

    struct {
        const char *path;
        const char *fps;
        const char *status;
    } want[] = {
        { "/warn", "f2 f3 f4 f6", "firing" },
        { "/nores", "f1 f2 f3 f6", "firing" },
        { "/crit", "f3 f4 f6", "firing" },
    };
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        req_t *r = NULL;
        for (size_t k = 0; k < srv_count(srv); k++)
            if (!strcmp(srv->reqs[k].path, want[i].path))
                r = &srv->reqs[k];
        assert_non_null(r);
        json_t *j = parse(r);
        expect_str(j, "status", want[i].status);
        char fps[64] = "";
        size_t idx;
        json_t *a;
        json_array_foreach(json_object_get(j, "alerts"), idx, a) {
            if (idx)
                strcat(fps, " ");
            strcat(fps, json_string_value(json_object_get(a, "fingerprint")));
        }
        assert_string_equal(fps, want[i].fps);
        json_decref(j);
    }
    assert_int_equal(ctr(&f, "notify_filtered_total", "receiver=warn,reason=severity"), 2);
    assert_int_equal(ctr(&f, "notify_filtered_total", "receiver=warn,reason=pending"), 2);
    assert_int_equal(ctr(&f, "notify_filtered_total", "receiver=nores,reason=resolved"), 2);
    assert_int_equal(ctr(&f, "notify_filtered_total", "receiver=crit,reason=severity"), 3);
    assert_int_equal(ctr(&f, "notify_queued_total", "receiver=warn"), 1);
    fix_close(&f);
    srv_stop(&srv);
}

/* ---- retries ------------------------------------------------------------------- */

static void test_retries(void **state)
{
    (void)state;
    const act_t plan[] = { { 500, NULL, "boom" }, { 500, NULL, "boom" }, { 500, NULL, "boom" },
                           { 500, NULL, "boom" }, { 500, NULL, "boom" } };
    srv_t *srv = srv_start(plan, ARRAY_LEN(plan), (act_t){ 0 });
    char ini[512];
    snprintf(ini, sizeof ini, "[notify.hook]\nurl = http://127.0.0.1:%d/\nbackoff_max = 40ms\n",
             srv->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    pump(&f, 1, 10000);
    pump_for(&f, 100); /* nothing more comes */
    assert_int_equal(f.nresults, 1);
    assert_true(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 6);
    assert_int_equal(srv_count(srv), 6);
    assert_int_equal(ctr(&f, "notify_deliveries_total", "receiver=hook,outcome=ok"), 1);
    assert_int_equal(ctr(&f, "notify_deliveries_total", "receiver=hook,outcome=failed"), 0);
    assert_int_equal(ctr(&f, "notify_attempts_total", "receiver=hook"), 6);
    assert_int_equal(ctr(&f, "notify_retries_total", "receiver=hook"), 5);
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=hook,reason=http_5xx"), 5);
    /* every try sends the same bytes; the waits stay within backoff_max, with jitter from half */
    for (size_t i = 1; i < 6; i++) {
        assert_string_equal(srv->reqs[i].body, srv->reqs[0].body);
        int64_t gap = (srv->reqs[i].at - srv->reqs[i - 1].at) / MS;
        if (gap < 19 || gap > 400)
            fail_msg("wait %zu was %lld ms, want 20..40 (and some slack)", i, (long long)gap);
    }
    fix_close(&f);
    srv_stop(&srv);

    /* out of tries: retries = 2 means 3 attempts, then failed */
    srv = srv_start(NULL, 0, (act_t){ 503, NULL, "unavailable" });
    snprintf(ini, sizeof ini,
             "[notify.hook]\nurl = http://127.0.0.1:%d/\nbackoff_max = 10ms\nretries = 2\n",
             srv->port);
    fix_open(&f, ini);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    pump(&f, 1, 10000);
    assert_false(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 3);
    assert_non_null(strstr(f.got[0].error, "HTTP 503: unavailable"));
    assert_int_equal(srv_count(srv), 3);
    assert_int_equal(ctr(&f, "notify_deliveries_total", "receiver=hook,outcome=failed"), 1);
    fix_close(&f);
    srv_stop(&srv);

    /* a 429 without Retry-After is retried with the backoff */
    const act_t plan429[] = { { 429, NULL, "slow down" } };
    srv = srv_start(plan429, 1, (act_t){ 0 });
    snprintf(ini, sizeof ini, "[notify.hook]\nurl = http://127.0.0.1:%d/\nbackoff_max = 10ms\n",
             srv->port);
    fix_open(&f, ini);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_true(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 2);
    fix_close(&f);
    srv_stop(&srv);
}

static void test_no_retry_on_400(void **state)
{
    (void)state;
    static const act_t codes[] = { { 400, NULL, "bad payload: alerts missing" },
                                   { 404, NULL, "no such hook" },
                                   { 301, "Location: http://elsewhere/\r\n", "" } };
    for (size_t i = 0; i < ARRAY_LEN(codes); i++) {
        srv_t *srv = srv_start(&codes[i], 1, (act_t){ 0 });
        char ini[512];
        snprintf(ini, sizeof ini,
                 "[notify.hook]\nurl = http://127.0.0.1:%d/\nbackoff_max = 10ms\nretries = 5\n",
                 srv->port);
        fix_t f;
        fix_open(&f, ini);
        msg_alert_t al[2];
        budget_alerts(al, false);
        notify_group_t g = group(al, 2);
        assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
        pump(&f, 1, 5000);
        pump_for(&f, 60);
        assert_false(f.got[0].ok);
        assert_int_equal(f.got[0].attempts, 1);
        assert_int_equal(srv_count(srv), 1);
        char want[64];
        snprintf(want, sizeof want, "HTTP %d", codes[i].status);
        assert_non_null(strstr(f.got[0].error, want));
        if (codes[i].body[0])
            assert_non_null(strstr(f.got[0].error, codes[i].body));
        assert_int_equal(ctr(&f, "notify_deliveries_total", "receiver=hook,outcome=failed"), 1);
        assert_int_equal(ctr(&f, "notify_retries_total", "receiver=hook"), 0);
        fix_close(&f);
        srv_stop(&srv);
    }
}

/* Transport errors: a port nobody listens on is retried; a server that
 * never answers times out. */
static void test_transport_errors(void **state)
{
    (void)state;
    int port;
    int fd = listen_loopback(&port);
    close(fd); /* now nothing listens there */
    char ini[512];
    snprintf(ini, sizeof ini,
             "[notify.hook]\nurl = http://127.0.0.1:%d/\nbackoff_max = 10ms\nretries = 2\n", port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_false(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 3);
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=hook,reason=transport"), 3);
    fix_close(&f);
}

/* One delivery per receiver at a time, in order; receivers in parallel. */
static void test_order_and_concurrency(void **state)
{
    (void)state;
    const act_t plan[] = { { 500, NULL, "" } };
    srv_t *srv = srv_start(plan, 1, (act_t){ 0 });
    srv_t *hang = srv_start(NULL, 0, (act_t){ -1, NULL, NULL });
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[notify.a]\nurl = http://127.0.0.1:%d/a\nbackoff_max = 30ms\n"
             "[notify.slow]\nurl = http://127.0.0.1:%d/slow\ntimeout = 800ms\nretries = 0\n",
             srv->port, hang->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    static const char *const keys[] = { "g1", "g2", "g3" };
    assert_true(notify_send(f.n, "slow", &g, NOW) > 0);
    for (size_t i = 0; i < 3; i++) {
        g.group_key = keys[i];
        assert_int_equal(notify_send(f.n, "a", &g, NOW), (int64_t)i + 2);
    }
    pump(&f, 3, 5000);
    /* the slow receiver's delivery is still in flight while a's went through */
    assert_int_equal(notify_pending(f.n), 1);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(f.got[i].receiver, "a");
        assert_int_equal(f.got[i].id, (int64_t)i + 2);
        assert_true(f.got[i].ok);
    }
    assert_int_equal(f.got[0].attempts, 2);
    assert_int_equal(srv_count(srv), 4);
    static const char *const order[] = { "g1", "g1", "g2", "g3" };
    for (size_t i = 0; i < 4; i++) {
        json_t *j = parse(&srv->reqs[i]);
        expect_str(j, "groupKey", order[i]);
        json_decref(j);
    }
    pump(&f, 4, 5000);
    assert_string_equal(f.got[3].receiver, "slow");
    assert_false(f.got[3].ok);
    assert_int_equal(f.got[3].attempts, 1);
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=slow,reason=timeout"), 1);
    fix_close(&f);
    srv_stop(&srv);
    srv_stop(&hang);
}

/* ---- the queue, drain, digest messages ----------------------------------------- */

static void test_queue_overflow(void **state)
{
    (void)state;
    fix_t f;
    fix_open(&f, "[notify.hook]\nurl = http://127.0.0.1:9/\n");
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    for (int i = 0; i < 10001; i++)
        assert_int_equal(notify_send(f.n, "hook", &g, NOW), (int64_t)i + 1);
    assert_int_equal(notify_pending(f.n), 10000);
    assert_int_equal(gauge(&f, "notify_queue", NULL), 10000);
    assert_int_equal(ctr(&f, "notify_dropped_total", "receiver=hook,reason=queue_full"), 1);
    notify_results(f.n, on_result, &f);
    assert_int_equal(f.ngot, 1);
    assert_int_equal(f.got[0].id, 1);
    assert_false(f.got[0].ok);
    assert_non_null(strstr(f.got[0].error, "queue"));
    int64_t *shut = stats_counter(f.st, "notify_dropped_total", "receiver=hook,reason=shutdown");
    notify_destroy(&f.n);
    assert_int_equal(*shut, 10000);
    fix_close(&f);
}

static void test_drain(void **state)
{
    (void)state;
    srv_t *srv = srv_ok();
    char ini[512];
    snprintf(ini, sizeof ini, "[notify.hook]\nurl = http://127.0.0.1:%d/\n", srv->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    for (int i = 0; i < 3; i++)
        assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    notify_drain(f.n, 5000);
    assert_int_equal(notify_pending(f.n), 0);
    notify_results(f.n, on_result, &f);
    assert_int_equal(f.ngot, 3);
    for (int i = 0; i < 3; i++)
        assert_true(f.got[i].ok);
    assert_int_equal(srv_count(srv), 3);
    fix_close(&f);
    srv_stop(&srv);

    /* a receiver that never answers: drain gives up on time */
    srv = srv_start(NULL, 0, (act_t){ -1, NULL, NULL });
    snprintf(ini, sizeof ini, "[notify.hook]\nurl = http://127.0.0.1:%d/\ntimeout = 10s\n",
             srv->port);
    fix_open(&f, ini);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    int64_t t0 = tmtime_mono_ns();
    notify_drain(f.n, 300);
    int64_t took = (tmtime_mono_ns() - t0) / MS;
    assert_true(took >= 290 && took < 1500);
    assert_int_equal(notify_pending(f.n), 0);
    assert_int_equal(ctr(&f, "notify_dropped_total", "receiver=hook,reason=shutdown"), 1);
    notify_results(f.n, on_result, &f);
    assert_int_equal(f.ngot, 1);
    assert_false(f.got[0].ok);
    assert_non_null(strstr(f.got[0].error, "shut down"));
    fix_close(&f);
    srv_stop(&srv);

    /* NULL is accepted where the header says so */
    assert_int_equal(notify_work(NULL, NOW), 1000);
    notify_drain(NULL, 10);
    assert_int_equal(notify_pending(NULL), 0);
    notify_t *none = NULL;
    notify_destroy(&none);
}

static void test_message(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0, (act_t){ 200, NULL, "{\"ok\":true}" });
    char tok[64], ini[1024];
    write_tmp(tok, sizeof tok, "1:x");
    snprintf(ini, sizeof ini,
             "[notify.hook]\nurl = http://127.0.0.1:%d/hook\nseverity = critical\n"
             "[notify.chat]\ntype = slack\nurl = http://127.0.0.1:%d/slack\n"
             "[notify.tg]\ntype = telegram\nurl = http://127.0.0.1:%d\ntoken_file = %s\nchat_id = 1\n",
             srv->port, srv->port, srv->port, tok);
    fix_t f;
    fix_open(&f, ini);
    const char *subj = "Daily digest 2026-11-21";
    const char *text = "Cost: $12.50 <total>\nTop user: u1\tand \"quotes\"\n";
    assert_int_equal(notify_message(f.n, "hook", subj, text, NOW), 1);
    assert_int_equal(notify_message(f.n, "chat", subj, text, NOW), 2);
    assert_int_equal(notify_message(f.n, "tg", subj, text, NOW), 3);
    pump(&f, 3, 5000);
    json_t *j = parse(&srv->reqs[0]);
    assert_int_equal(json_object_size(j), 2);
    expect_str(j, "subject", subj);
    expect_str(j, "text", text);
    json_decref(j);
    j = parse(&srv->reqs[1]);
    expect_str(j, "text", "Daily digest 2026-11-21\n\nCost: $12.50 &lt;total&gt;\nTop user: u1\tand "
                          "\"quotes\"\n");
    json_decref(j);
    j = parse(&srv->reqs[2]);
    expect_str(j, "text", "Daily digest 2026-11-21\n\nCost: $12.50 <total>\nTop user: u1\tand "
                          "\"quotes\"\n");
    json_decref(j);
    fix_close(&f);
    srv_stop(&srv);
    unlink(tok);
}

/* Invalid UTF-8 in labels becomes U+FFFD (counted); long Telegram texts are cut. */
static void test_text_hygiene(void **state)
{
    (void)state;
    srv_t *srv = srv_start(NULL, 0, (act_t){ 200, NULL, "{\"ok\":true}" });
    char tok[64], ini[1024];
    write_tmp(tok, sizeof tok, "1:x");
    snprintf(ini, sizeof ini,
             "[notify.hook]\nurl = http://127.0.0.1:%d/hook\n"
             "[notify.tg]\ntype = telegram\nurl = http://127.0.0.1:%d\ntoken_file = %s\nchat_id = 1\n",
             srv->port, srv->port, tok);
    fix_t f;
    fix_open(&f, ini);
    static char longsum[1001];
    memset(longsum, 'x', 1000);
    static const kvs_t lab[] = { { "user", "b\xff" "d\xc3" } };
    kvs_t ann[] = { { "summary", longsum } };
    msg_alert_t al[8];
    for (size_t i = 0; i < 8; i++)
        al[i] = mk_alert("Bad", "firing", "warning", "fp", lab, 1, ann, 1);
    notify_group_t g = group(al, 8);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 2, 5000);
    assert_true(ctr(&f, "notify_invalid_utf8_total", NULL) > 0);
    json_t *j = parse(&srv->reqs[0]);
    json_t *a = json_array_get(json_object_get(j, "alerts"), 0);
    expect_str(json_object_get(a, "labels"), "user", "b\xef\xbf\xbd" "d\xef\xbf\xbd");
    json_decref(j);
    j = parse(&srv->reqs[1]);
    const char *t = json_string_value(json_object_get(j, "text"));
    assert_non_null(t);
    assert_true(strlen(t) <= 4096);
    assert_non_null(strstr(t, "[…]"));
    json_decref(j);
    fix_close(&f);
    srv_stop(&srv);
    unlink(tok);
}

/* ---- email --------------------------------------------------------------------- */

static const char *mail_header(const mail_t *m, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t n = strlen(name);
    for (const char *p = m->data; p && *p;) {
        const char *e = strstr(p, "\r\n");
        if (!e || e == p)
            break; /* end of the headers */
        if (!strncasecmp(p, name, n) && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            /* unfold continuation lines */
            size_t k = 0;
            for (;;) {
                while (v < e && k + 1 < cap)
                    out[k++] = *v++;
                if (e[2] == ' ' || e[2] == '\t') {
                    v = e + 3;
                    e = strstr(v, "\r\n");
                    if (k + 1 < cap)
                        out[k++] = ' ';
                    continue;
                }
                break;
            }
            out[k] = '\0';
            return out;
        }
        p = e + 2;
    }
    return out;
}

static const char *mail_body(const mail_t *m)
{
    const char *b = strstr(m->data, "\r\n\r\n");
    return b ? b + 4 : "";
}

static void test_email_plain(void **state)
{
    (void)state;
    smtp_t *s = smtp_start("", NULL, NULL, NULL, 0);
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[notify.mail]\ntype = email\nurl = smtp://127.0.0.1:%d\nstarttls = off\n"
             "from = Tokmon <alerts@example.org>\nto = ops@example.org, Second <two@example.org>\n",
             s->port);
    fix_t f;
    fix_open(&f, ini);
    static const kvs_t lab[] = { { "alertname", "LLMBudgetExceeded" }, { "budget", "daily" },
                                 { "severity", "critical" } };
    static const kvs_t ann[] = { { "description", "first line\n.dotted line\nlast" },
                                 { "limit", "$10" },
                                 { "summary", "Budget daily is over its limit" } };
    msg_alert_t al[1] = { mk_alert("LLMBudgetExceeded", "firing", "critical", "fp1", lab, 3, ann, 3) };
    notify_group_t g = group(al, 1);
    int64_t id = notify_send(f.n, "mail", &g, NOW);
    assert_true(id > 0);
    pump(&f, 1, 5000);
    if (!f.got[0].ok)
        fail_msg("mail failed: %s", f.got[0].error);
    assert_int_equal(f.got[0].attempts, 1);
    assert_int_equal(s->nmail, 1);
    assert_int_equal(s->nauth, 0);
    mail_t *m = &s->mails[0];
    assert_string_equal(m->from, "<alerts@example.org>");
    assert_int_equal(m->nrcpt, 2);
    assert_string_equal(m->rcpt[0], "<ops@example.org>");
    assert_string_equal(m->rcpt[1], "<two@example.org>");

    char h[512];
    assert_string_equal(mail_header(m, "Date", h, sizeof h), "Sun, 22 Nov 2026 00:00:00 +0000");
    assert_string_equal(mail_header(m, "From", h, sizeof h), "Tokmon <alerts@example.org>");
    assert_string_equal(mail_header(m, "To", h, sizeof h),
                        "ops@example.org, Second <two@example.org>");
    assert_string_equal(mail_header(m, "Subject", h, sizeof h),
                        "[FIRING:1] LLMBudgetExceeded (budget=daily)");
    mail_header(m, "Message-ID", h, sizeof h);
    char want_mid[64];
    snprintf(want_mid, sizeof want_mid, "<tokmon.%lld.", (long long)id);
    assert_true(!strncmp(h, want_mid, strlen(want_mid)));
    assert_non_null(strstr(h, "@example.org>"));
    assert_string_equal(mail_header(m, "MIME-Version", h, sizeof h), "1.0");
    assert_string_equal(mail_header(m, "Content-Type", h, sizeof h), "text/plain; charset=utf-8");
    assert_string_equal(mail_header(m, "Content-Transfer-Encoding", h, sizeof h), "8bit");

    const char *body = mail_body(m);
    static const char *const parts[] = {
        "[FIRING:1] LLMBudgetExceeded (budget=daily)\r\n",
        "[FIRING] LLMBudgetExceeded (critical)\r\n",
        "Summary: Budget daily is over its limit\r\n",
        "Description: first line\r\n.dotted line\r\nlast\r\n",
        "limit: $10\r\n",
        "Labels: alertname=LLMBudgetExceeded budget=daily severity=critical\r\n",
        "Started: 2026-11-21T23:50:00.000Z\r\n",
        "Value: 12.5\r\n",
        "Source: http://alerter.example:9099/\r\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(parts); i++)
        if (!strstr(body, parts[i]))
            fail_msg("body lacks %s:\n%s", parts[i], body);
    /* the dot was stuffed on the wire; no bare LF anywhere */
    assert_non_null(strstr(m->raw, "\r\n..dotted line\r\n"));
    for (const char *p = m->data; (p = strchr(p, '\n')); p++)
        assert_true(p > m->data && p[-1] == '\r');

    /* a digest with a non-ASCII subject: RFC 2047 words */
    assert_true(notify_message(f.n, "mail", "Tägliche Übersicht: 12 € bei 3 Nutzern, und noch "
                                            "viel mehr Text als in eine Zeile passt",
                               "Kosten: 12 €\n", NOW) > 0);
    pump(&f, 2, 5000);
    assert_true(f.got[1].ok);
    assert_int_equal(s->nmail, 2);
    m = &s->mails[1];
    mail_header(m, "Subject", h, sizeof h);
    assert_true(!strncmp(h, "=?UTF-8?B?", 10));
    assert_non_null(strstr(h, "?= =?UTF-8?B?")); /* folded over several words */
    assert_non_null(strstr(mail_body(m), "Kosten: 12 \xe2\x82\xac\r\n"));
    fix_close(&f);
    smtp_stop(&s);
}

static void test_email_auth(void **state)
{
    (void)state;
    static const char *const mechs[] = { "PLAIN", "LOGIN" };
    char pw[64];
    write_tmp(pw, sizeof pw, "s3cret\n");
    for (size_t i = 0; i < ARRAY_LEN(mechs); i++) {
        smtp_t *s = smtp_start(mechs[i], "alerts", "s3cret", NULL, 0);
        char ini[1024];
        snprintf(ini, sizeof ini,
                 "[notify.mail]\ntype = email\nurl = smtp://127.0.0.1:%d\nstarttls = off\n"
                 "from = alerts@example.org\nto = ops@example.org\nuser = alerts\n"
                 "password_file = %s\n",
                 s->port, pw);
        fix_t f;
        fix_open(&f, ini);
        msg_alert_t al[2];
        budget_alerts(al, false);
        notify_group_t g = group(al, 2);
        assert_true(notify_send(f.n, "mail", &g, NOW) > 0);
        pump(&f, 1, 5000);
        if (!f.got[0].ok)
            fail_msg("%s: %s", mechs[i], f.got[0].error);
        assert_int_equal(s->nauth_ok, 1);
        assert_int_equal(s->nmail, 1);
        assert_string_equal(s->mails[0].mech, mechs[i]);
        assert_string_equal(s->mails[0].user, "alerts");
        assert_string_equal(s->mails[0].pass, "s3cret");
        fix_close(&f);
        smtp_stop(&s);
    }

    /* a refused login is not retried */
    smtp_t *s = smtp_start("PLAIN", "alerts", "other", NULL, 0);
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[notify.mail]\ntype = email\nurl = smtp://127.0.0.1:%d\nstarttls = off\n"
             "from = alerts@example.org\nto = ops@example.org\nuser = alerts\npassword_file = %s\n"
             "retries = 3\nbackoff_max = 10ms\n",
             s->port, pw);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "mail", &g, NOW) > 0);
    pump(&f, 1, 5000);
    pump_for(&f, 50);
    assert_false(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 1);
    assert_int_equal(s->nauth, 1);
    assert_int_equal(s->nmail, 0);
    assert_null(strstr(f.got[0].error, "s3cret"));
    fix_close(&f);
    smtp_stop(&s);
    unlink(pw);
}

/* SMTP's answers: 4xx is retried, 5xx is not; STARTTLS required but not
 * offered ends the delivery. */
static void test_email_codes(void **state)
{
    (void)state;
    const int codes[] = { 451, 550 };
    smtp_t *s = smtp_start("", NULL, NULL, codes, 2);
    char ini[1024];
    snprintf(ini, sizeof ini,
             "[notify.mail]\ntype = email\nurl = smtp://127.0.0.1:%d\nstarttls = off\n"
             "from = alerts@example.org\nto = ops@example.org\nretries = 3\nbackoff_max = 10ms\n"
             "[notify.tls]\ntype = email\nurl = smtp://127.0.0.1:%d\n"
             "from = alerts@example.org\nto = ops@example.org\nretries = 3\nbackoff_max = 10ms\n",
             s->port, s->port);
    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    /* the first try meets 451, the second 550: two tries, failed */
    assert_true(notify_send(f.n, "mail", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_false(f.got[0].ok);
    assert_int_equal(f.got[0].attempts, 2);
    assert_non_null(strstr(f.got[0].error, "SMTP 550"));
    assert_int_equal(ctr(&f, "notify_errors_total", "receiver=mail,reason=smtp"), 2);
    /* then it goes through */
    assert_true(notify_send(f.n, "mail", &g, NOW) > 0);
    pump(&f, 2, 5000);
    assert_true(f.got[1].ok);
    assert_int_equal(s->nmail, 1);

    assert_true(notify_send(f.n, "tls", &g, NOW) > 0);
    pump(&f, 3, 5000);
    pump_for(&f, 50);
    assert_false(f.got[2].ok);
    assert_int_equal(f.got[2].attempts, 1);
    assert_non_null(strstr(f.got[2].error, "STARTTLS"));
    /* not even over the plain connection the other receiver left open */
    assert_int_equal(s->nmail, 1);
    fix_close(&f);
    smtp_stop(&s);
}

/* ---- settings and secrets ------------------------------------------------------ */

static void test_settings(void **state)
{
    (void)state;
    char tok_ok[64], tok_empty[64], tok_two[64], tok_bad[64], pw[64];
    write_tmp(tok_ok, sizeof tok_ok, "1:abc\n");
    write_tmp(tok_empty, sizeof tok_empty, "\n");
    write_tmp(tok_two, sizeof tok_two, "1:abc\n2:def\n");
    write_tmp(tok_bad, sizeof tok_bad, "1:a/b?c\n");
    write_tmp(pw, sizeof pw, "pw");
    unsetenv("NOTIFY_TEST_UNSET");
    struct {
        const char *name;
        const char *section;
        const char *err; /* NULL: fine */
    } rows[] = {
        { "telegram ok", "type = telegram\ntoken_file = %1$s\nchat_id = 1\n", NULL },
        { "telegram missing file", "type = telegram\ntoken_file = /nonexistent/t\nchat_id = 1\n",
          "No such file" },
        { "telegram empty", "type = telegram\ntoken_file = %2$s\nchat_id = 1\n", "empty" },
        { "telegram two lines", "type = telegram\ntoken_file = %3$s\nchat_id = 1\n",
          "more than one line" },
        { "telegram bad token", "type = telegram\ntoken_file = %4$s\nchat_id = 1\n",
          "not a bot token" },
        { "telegram env unset", "type = telegram\ntoken_file = env:NOTIFY_TEST_UNSET\nchat_id = 1\n",
          "NOTIFY_TEST_UNSET is not set" },
        { "telegram bad base", "type = telegram\nurl = api.telegram.org\ntoken_file = %1$s\nchat_id = 1\n",
          "http:// or https://" },
        { "webhook bad scheme", "url = ftp://h/x\n", "http:// or https://" },
        { "webhook no host", "url = http:///x\n", "http:// or https://" },
        { "webhook auth", "url = http://h/x\nuser = u\npassword_file = %5$s\n", NULL },
        { "slack secret url", "type = slack\nurl = hooks.slack.com/services/T/B/SECRET\n",
          "<hidden>" },
        { "slack auth", "type = slack\nurl = https://h/x\nuser = u\npassword_file = %5$s\n",
          "not for this type" },
        { "email http", "type = email\nurl = http://h\nfrom = a@b.c\nto = d@e.f\n", "smtp://" },
        { "email from", "type = email\nurl = smtp://h\nfrom = nobody\nto = d@e.f\n",
          "not a mail address" },
        { "email to", "type = email\nurl = smtps://h:465\nfrom = a@b.c\nto = d@e.f, x y@z\n",
          "not a mail address" },
        { "email ok", "type = email\nurl = smtps://h:465\nfrom = A <a@b.c>\nto = d@e.f, G <g@h.i>\n"
                      "user = a\npassword_file = %5$s\n", NULL },
        { "alertmanager ok", "type = alertmanager\nurl = http://am:9093\n", NULL },
        { "alertmanager bad", "type = alertmanager\nurl = am:9093\n", "http:// or https://" },
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char sect[512], ini[1024], err[512] = "";
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(sect, sizeof sect, rows[i].section, tok_ok, tok_empty, tok_two, tok_bad, pw);
#pragma GCC diagnostic pop
        snprintf(ini, sizeof ini, "[notify.r]\n%s", sect);
        fix_t f;
        notify_t *n = fix_try(&f, ini, err, sizeof err);
        if (!rows[i].err && !n)
            fail_msg("%s: %s", rows[i].name, err);
        if (rows[i].err && n)
            fail_msg("%s: accepted", rows[i].name);
        if (rows[i].err && !strstr(err, rows[i].err))
            fail_msg("%s: error '%s', want '%s'", rows[i].name, err, rows[i].err);
        if (rows[i].err && !strstr(err, "[notify.r]"))
            fail_msg("%s: error '%s' does not name the section", rows[i].name, err);
        assert_null(strstr(err, "SECRET"));
        fix_close(&f);
    }
    /* no receivers at all is fine */
    fix_t f;
    fix_open(&f, "[global]\ninstance = x\n");
    assert_false(notify_has(f.n, "x"));
    assert_int_equal(notify_work(f.n, NOW), 1000);
    fix_close(&f);
    unlink(tok_ok);
    unlink(tok_empty);
    unlink(tok_two);
    unlink(tok_bad);
    unlink(pw);
}

/* Log lines and reported errors never carry the bot token, a password or a
 * Slack webhook's path, even when the server echoes them. */
static void test_secrets_not_logged(void **state)
{
    (void)state;
    /* a password that straddles where a logged body is cut (300 bytes) */
    static char straddle[400];
    memset(straddle, 'x', 296);
    strcpy(straddle + 296, "SECRETpw and more");
    const act_t plan[] = {
        { 400, NULL, "{\"ok\":false,\"description\":\"bad token 999:SECRETtoken in "
                     "/bot999:SECRETtoken/sendMessage\"}" },
        { 500, NULL, "no_service for services/T0/B0/SECRETslack" },
        { 404, NULL, "no_service for services/T0/B0/SECRETslack" },
        { 401, NULL, straddle },
    };
    srv_t *srv = srv_start(plan, ARRAY_LEN(plan), (act_t){ 0 });
    char tok[64], pw[64], logf[64], ini[1024];
    write_tmp(tok, sizeof tok, "999:SECRETtoken\n");
    write_tmp(pw, sizeof pw, "SECRETpw\n");
    write_tmp(logf, sizeof logf, "");
    snprintf(ini, sizeof ini,
             "[notify.tg]\ntype = telegram\nurl = http://127.0.0.1:%d\ntoken_file = %s\nchat_id = 1\n"
             "[notify.chat]\ntype = slack\nurl = http://127.0.0.1:%d/services/T0/B0/SECRETslack\n"
             "backoff_max = 10ms\n"
             "[notify.hook]\nurl = http://user:SECRETpw@127.0.0.1:%d/h?token=SECRETq\n"
             "user = user\npassword_file = %s\n",
             srv->port, tok, srv->port, srv->port, pw);

    fflush(stderr);
    int saved = dup(2);
    int lfd = open(logf, O_WRONLY | O_TRUNC);
    assert_true(saved >= 0 && lfd >= 0);
    dup2(lfd, 2);
    close(lfd);
    log_set_level(LOG_LVL_DEBUG);

    fix_t f;
    fix_open(&f, ini);
    msg_alert_t al[2];
    budget_alerts(al, false);
    notify_group_t g = group(al, 2);
    assert_true(notify_send(f.n, "tg", &g, NOW) > 0);
    pump(&f, 1, 5000);
    assert_true(notify_send(f.n, "chat", &g, NOW) > 0);
    pump(&f, 2, 5000);
    assert_true(notify_send(f.n, "hook", &g, NOW) > 0);
    pump(&f, 3, 5000);
    fix_close(&f);

    log_set_level(LOG_LVL_ERROR);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);

    FILE *fp = fopen(logf, "r");
    assert_non_null(fp);
    char text[16384];
    size_t k = fread(text, 1, sizeof text - 1, fp);
    text[k] = '\0';
    fclose(fp);
    if (strstr(text, "SECR"))
        fail_msg("a secret (or part of one) in the log:\n%s", text);
    assert_non_null(strstr(text, "receiver=tg"));
    assert_non_null(strstr(text, "/bot<secret>/sendMessage"));
    assert_non_null(strstr(text, "receiver=chat"));
    assert_non_null(strstr(text, "receiver=hook"));
    for (size_t i = 0; i < f.ngot; i++) {
        assert_false(f.got[i].ok);
        if (strstr(f.got[i].error, "SECR"))
            fail_msg("a secret in a result: %s", f.got[i].error);
    }
    /* the requests did carry them, of course */
    assert_string_equal(srv->reqs[0].path, "/bot999:SECRETtoken/sendMessage");
    srv_stop(&srv);
    unlink(tok);
    unlink(pw);
    unlink(logf);
}

int main(int argc, char **argv)
{
    log_setup("notify_test", "test", LOG_FMT_KV, LOG_LVL_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_webhook_body),
        cmocka_unit_test(test_slack_body),
        cmocka_unit_test(test_telegram_body),
        cmocka_unit_test(test_telegram_429),
        cmocka_unit_test(test_alertmanager_body),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_retries),
        cmocka_unit_test(test_no_retry_on_400),
        cmocka_unit_test(test_transport_errors),
        cmocka_unit_test(test_order_and_concurrency),
        cmocka_unit_test(test_queue_overflow),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_message),
        cmocka_unit_test(test_text_hygiene),
        cmocka_unit_test(test_email_plain),
        cmocka_unit_test(test_email_auth),
        cmocka_unit_test(test_email_codes),
        cmocka_unit_test(test_settings),
        cmocka_unit_test(test_secrets_not_logged),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("notify", tests, NULL, NULL);
}

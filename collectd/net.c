#include "net.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "addr.h"
#include "auth.h"
#include "tmtime.h"
#include "xalloc.h"

#define VLEN 64
#define DGRAM_MAX 65536
#define TCP_READ_BUDGET (256 * 1024)
#define TCP_INITIAL_BUF 4096

/* ---- datagram sockets --------------------------------------------------- */

/* A non-blocking socket bound at a, with SO_REUSEPORT (so a new collector
 * can start before the old one stops); -1 with err on failure. */
static int bound_socket(const addr_t *a, int type, const char *what, char *err, size_t errcap)
{
    int fd = socket(a->ss.ss_family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errcap, "%s socket: %s", what, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (type == SOCK_STREAM)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    else if (a->ss.ss_family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
        (type == SOCK_STREAM && listen(fd, 512) < 0)) {
        char name[160];
        snprintf(err, errcap, "cannot bind %s %s: %s", what,
                 addr_format((const struct sockaddr *)&a->ss, a->len, name, sizeof name),
                 strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

struct dgramd {
    ep_item_t item;
    int fd;
    int epfd;
    char name[160];
    char *unix_path;
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    struct sockaddr_storage addrs[VLEN];
    char *mem;
    char *bufs[VLEN];
    char ctrl[VLEN][CMSG_SPACE(sizeof(uint32_t))];
    uint32_t last_drops;
    int64_t *c_drops, *c_truncated, *c_rcvbuf;
};

static void set_rcvbuf(int fd, int64_t want, int64_t *gauge)
{
    int v = want > 0x7fffffff / 2 ? 0x7fffffff / 2 : (int)want;
    /* root may exceed net.core.rmem_max; others get what the limit allows */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    int got = 0;
    socklen_t gl = sizeof got;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &gl);
    *gauge = got;
}

static dgramd_t *dgramd_new(int epfd, int fd, stats_t *st, const char *name, char *err,
                            size_t errcap)
{
    dgramd_t *d = xcalloc(1, sizeof *d);
    d->item.kind = EP_DGRAM;
    d->fd = fd;
    d->epfd = epfd;
    snprintf(d->name, sizeof d->name, "%s", name);
    /* each slot starts at a different cache-line offset: 64 KiB-aligned
     * slots would all map to the same cache sets, and the small datagrams
     * that are the common case would evict each other */
    d->mem = xmalloc((size_t)VLEN * (DGRAM_MAX + 64 * 17));
    for (int i = 0; i < VLEN; i++) {
        d->bufs[i] = d->mem + (size_t)i * (DGRAM_MAX + 64 * 17);
        d->iov[i].iov_base = d->bufs[i];
        d->iov[i].iov_len = DGRAM_MAX;
        d->msgs[i].msg_hdr.msg_iov = &d->iov[i];
        d->msgs[i].msg_hdr.msg_iovlen = 1;
        d->msgs[i].msg_hdr.msg_name = &d->addrs[i];
        d->msgs[i].msg_hdr.msg_control = d->ctrl[i];
    }
    char labels[200];
    snprintf(labels, sizeof labels, "listener=%s", name);
    d->c_drops = stats_counter(st, "ingest_kernel_drops_total", labels);
    d->c_truncated = stats_counter(st, "ingest_truncated_datagrams_total", labels);
    d->c_rcvbuf = stats_gauge(st, "ingest_receive_buffer_bytes", labels);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = d };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        snprintf(err, errcap, "epoll_ctl: %s", strerror(errno));
        close(fd);
        free(d->mem);
        free(d);
        return NULL;
    }
    return d;
}

dgramd_t *dgramd_open_udp(int epfd, const char *spec, int64_t rcvbuf, stats_t *st, char *err,
                          size_t errcap)
{
    addr_t a;
    if (addr_parse(spec, SOCK_DGRAM, &a, err, errcap) < 0)
        return NULL;
    int fd = bound_socket(&a, SOCK_DGRAM, "udp", err, errcap);
    if (fd < 0)
        return NULL;
    int64_t got = 0;
    set_rcvbuf(fd, rcvbuf, &got);
    char name[160];
    addr_format((struct sockaddr *)&a.ss, a.len, name, sizeof name);
    dgramd_t *d = dgramd_new(epfd, fd, st, name, err, errcap);
    if (d)
        *d->c_rcvbuf = got;
    return d;
}

dgramd_t *dgramd_open_unix(int epfd, const char *path, int64_t rcvbuf, stats_t *st, char *err,
                           size_t errcap)
{
    addr_t a;
    if (addr_unix(path, &a, err, errcap) < 0)
        return NULL;
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        if (!S_ISSOCK(sb.st_mode)) {
            snprintf(err, errcap, "%s exists and is not a socket", path);
            return NULL;
        }
        unlink(path); /* a stale socket from an earlier run */
    }
    int fd = bound_socket(&a, SOCK_DGRAM, "unix socket", err, errcap);
    if (fd < 0)
        return NULL;
    int64_t got = 0;
    set_rcvbuf(fd, rcvbuf, &got);
    chmod(path, 0666); /* applications of any user may send */
    char name[160];
    snprintf(name, sizeof name, "unix:%s", path);
    dgramd_t *d = dgramd_new(epfd, fd, st, name, err, errcap);
    if (d) {
        d->unix_path = xstrdup(path);
        *d->c_rcvbuf = got;
    }
    return d;
}

void dgramd_close(dgramd_t **pd)
{
    dgramd_t *d = *pd;
    if (!d)
        return;
    epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->fd, NULL);
    close(d->fd);
    if (d->unix_path) {
        unlink(d->unix_path);
        free(d->unix_path);
    }
    free(d->mem);
    free(d);
    *pd = NULL;
}

const char *dgramd_name(const dgramd_t *d) { return d->name; }

static void note_drops(dgramd_t *d, struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL &&
            c->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            uint32_t v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            /* the kernel reports a running total per socket; count the growth */
            *d->c_drops += (int64_t)(uint32_t)(v - d->last_drops);
            d->last_drops = v;
        }
    }
}

size_t dgramd_read(dgramd_t *d, ingest_t *in, size_t max)
{
    size_t total = 0;
    while (total < max) {
        for (int i = 0; i < VLEN; i++) {
            d->msgs[i].msg_hdr.msg_namelen = sizeof d->addrs[i];
            d->msgs[i].msg_hdr.msg_controllen = sizeof d->ctrl[i];
            d->msgs[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(d->fd, d->msgs, VLEN, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        int64_t now = tmtime_now_ns();
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &d->msgs[i].msg_hdr;
            if (h->msg_controllen)
                note_drops(d, h);
            const struct sockaddr *from = h->msg_namelen ? (struct sockaddr *)&d->addrs[i] : NULL;
            if (h->msg_flags & MSG_TRUNC) {
                (*d->c_truncated)++;
                ingest_reject(in, REASON_LINE_TOO_LONG, from, h->msg_namelen, d->bufs[i], 64);
                continue;
            }
            ingest_datagram(in, d->bufs[i], d->msgs[i].msg_len, from, h->msg_namelen, now);
        }
        total += (size_t)n;
        if (n < VLEN)
            break;
    }
    return total;
}

/* ---- TCP ---------------------------------------------------------------- */

typedef struct conn {
    ep_item_t item;
    int fd;
    char *buf;
    size_t len, cap;
    bool discarding;     /* skipping the rest of an over-long line */
    int64_t last_rx;     /* monotonic ns */
    int64_t block_start; /* monotonic ns the pending block began waiting for |sig, 0: none */
    size_t scanned;      /* bytes already searched for newlines */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    struct conn *prev, *next;
} conn_t;

struct tcpd {
    ep_item_t item;
    int fd, epfd;
    char name[160];
    const cfg_t *cfg;
    conn_t *conns;
    size_t nconns;
    int64_t *c_accepted, *c_refused, *c_idle, *c_clients;
};

tcpd_t *tcpd_open(int epfd, const char *spec, const cfg_t *cfg, stats_t *st, char *err,
                  size_t errcap)
{
    addr_t a;
    if (addr_parse(spec, SOCK_STREAM, &a, err, errcap) < 0)
        return NULL;
    int fd = bound_socket(&a, SOCK_STREAM, "tcp", err, errcap);
    if (fd < 0)
        return NULL;
    tcpd_t *t = xcalloc(1, sizeof *t);
    t->item.kind = EP_TCP_LISTEN;
    t->fd = fd;
    t->epfd = epfd;
    t->cfg = cfg;
    addr_format((struct sockaddr *)&a.ss, a.len, t->name, sizeof t->name);
    t->c_accepted = stats_counter(st, "tcp_connections_total", NULL);
    t->c_refused = stats_counter(st, "tcp_refused_total", NULL);
    t->c_idle = stats_counter(st, "tcp_idle_closed_total", NULL);
    t->c_clients = stats_gauge(st, "tcp_clients", NULL);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = t };
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        snprintf(err, errcap, "epoll_ctl: %s", strerror(errno));
        close(fd);
        free(t);
        return NULL;
    }
    return t;
}

const char *tcpd_name(const tcpd_t *t) { return t->name; }
void tcpd_reload(tcpd_t *t, const cfg_t *cfg) { t->cfg = cfg; }

static size_t max_buf(const tcpd_t *t)
{
    return (size_t)t->cfg->collectd.max_line + AUTH_SIG_MAX + 2;
}

static void conn_close(tcpd_t *t, conn_t *c)
{
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        t->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->buf);
    free(c);
    t->nconns--;
    *t->c_clients = (int64_t)t->nconns;
}

static void consume(conn_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->scanned = 0;
}

static int64_t wall(void) { return tmtime_now_ns(); }

/* Releases the lines of a block that has no |sig line: unsigned under
 * auth = optional, refused under auth = required. */
static void release_block(tcpd_t *t, conn_t *c, ingest_t *in, size_t upto)
{
    if (upto == 0)
        return;
    if (t->cfg->collectd.auth == CFG_AUTH_REQUIRED)
        ingest_reject(in, REASON_UNSIGNED, (struct sockaddr *)&c->peer, c->peerlen, c->buf, upto);
    else
        ingest_lines(in, c->buf, upto, (struct sockaddr *)&c->peer, c->peerlen, wall());
    consume(c, upto);
    c->block_start = 0;
}

/* Hands every complete line (or signed block) in the buffer to ingest. */
static void conn_process(tcpd_t *t, conn_t *c, ingest_t *in, int64_t now)
{
    if (c->len == 0)
        return;
    if (c->discarding) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (!nl) {
            c->len = 0;
            c->scanned = 0;
            return;
        }
        consume(c, (size_t)(nl - c->buf) + 1);
        c->discarding = false;
    }
    if (t->cfg->collectd.auth == CFG_AUTH_OFF) {
        char *last = memrchr(c->buf, '\n', c->len);
        if (last) {
            size_t n = (size_t)(last - c->buf) + 1;
            ingest_lines(in, c->buf, n, (struct sockaddr *)&c->peer, c->peerlen, wall());
            consume(c, n);
        }
    } else {
        /* a block runs up to and including a |sig line */
        size_t pos = c->scanned;
        while (pos < c->len) {
            char *nl = memchr(c->buf + pos, '\n', c->len - pos);
            if (!nl)
                break;
            size_t start = pos;
            pos = (size_t)(nl - c->buf) + 1;
            if (pos - start > 5 && !memcmp(c->buf + start, "|sig:", 5)) {
                ingest_tcp_block(in, c->buf, pos, (struct sockaddr *)&c->peer, c->peerlen, wall());
                consume(c, pos);
                c->block_start = 0;
                pos = 0;
                continue;
            }
            if (!c->block_start)
                c->block_start = now;
        }
        c->scanned = pos;
    }
    if (c->len == max_buf(t)) {
        char *last = memrchr(c->buf, '\n', c->len);
        if (!last) {
            ingest_reject(in, REASON_LINE_TOO_LONG, (struct sockaddr *)&c->peer, c->peerlen, c->buf,
                          c->len);
            c->len = 0;
            c->scanned = 0;
            c->discarding = true;
        } else {
            release_block(t, c, in, (size_t)(last - c->buf) + 1);
        }
    }
}

static void conn_eof(tcpd_t *t, conn_t *c, ingest_t *in)
{
    if (c->len && !c->discarding) { /* a last line without its newline */
        if (t->cfg->collectd.auth == CFG_AUTH_OFF) {
            ingest_lines(in, c->buf, c->len, (struct sockaddr *)&c->peer, c->peerlen, wall());
        } else {
            size_t n = c->len;
            if (n > 5 && !memcmp(c->buf, "|sig:", 5))
                n = 0;
            char *nl = memrchr(c->buf, '\n', c->len);
            /* a block whose |sig line lacks its newline is still a block */
            const char *lastline = nl ? nl + 1 : c->buf;
            if ((size_t)(c->buf + c->len - lastline) > 5 && !memcmp(lastline, "|sig:", 5))
                ingest_tcp_block(in, c->buf, c->len, (struct sockaddr *)&c->peer, c->peerlen, wall());
            else if (n)
                release_block(t, c, in, c->len);
        }
    }
    conn_close(t, c);
}

static void conn_read(tcpd_t *t, conn_t *c, ingest_t *in)
{
    size_t budget = TCP_READ_BUDGET;
    int64_t now = tmtime_mono_ns();
    while (budget) {
        if (c->len == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : TCP_INITIAL_BUF;
            if (cap > max_buf(t))
                cap = max_buf(t);
            c->buf = xrealloc(c->buf, cap);
            c->cap = cap;
        }
        size_t room = c->cap - c->len;
        if (room > budget)
            room = budget;
        ssize_t n = read(c->fd, c->buf + c->len, room);
        if (n > 0) {
            c->len += (size_t)n;
            budget -= (size_t)n;
            c->last_rx = now;
            conn_process(t, c, in, now);
            continue;
        }
        if (n == 0) {
            conn_eof(t, c, in);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        conn_close(t, c); /* reset by peer and the like */
        return;
    }
}

static void accept_all(tcpd_t *t)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(t->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a transient error such as EMFILE */
        if (t->nconns >= (size_t)t->cfg->collectd.tcp_max_clients) {
            close(fd);
            (*t->c_refused)++;
            continue;
        }
        conn_t *c = xcalloc(1, sizeof *c);
        c->item.kind = EP_TCP_CONN;
        c->fd = fd;
        c->peer = ss;
        c->peerlen = sl;
        c->last_rx = tmtime_mono_ns();
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
        if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->next = t->conns;
        if (t->conns)
            t->conns->prev = c;
        t->conns = c;
        t->nconns++;
        (*t->c_accepted)++;
        *t->c_clients = (int64_t)t->nconns;
    }
}

void tcpd_event(tcpd_t *t, ep_item_t *item, uint32_t events, ingest_t *in)
{
    if (item->kind == EP_TCP_LISTEN) {
        accept_all(t);
        return;
    }
    conn_t *c = (conn_t *)item;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        conn_read(t, c, in);
}

void tcpd_sweep(tcpd_t *t, ingest_t *in, int64_t now)
{
    int64_t idle = t->cfg->collectd.tcp_idle_timeout * TMTIME_NS_PER_MS;
    int64_t wait = t->cfg->collectd.tcp_block_timeout * TMTIME_NS_PER_MS;
    for (conn_t *c = t->conns, *next; c; c = next) {
        next = c->next;
        if (c->block_start && now - c->block_start >= wait) {
            char *last = memrchr(c->buf, '\n', c->len);
            if (last)
                release_block(t, c, in, (size_t)(last - c->buf) + 1);
            c->block_start = 0;
        }
        if (now - c->last_rx >= idle) {
            (*t->c_idle)++;
            conn_eof(t, c, in);
        }
    }
}

void tcpd_close(tcpd_t **pt, ingest_t *in)
{
    tcpd_t *t = *pt;
    if (!t)
        return;
    /* drain: clients still in the backlog and bytes not yet read count too */
    accept_all(t);
    while (t->conns) {
        conn_t *c = t->conns;
        for (int i = 0; i < 64; i++) { /* bounded: a client that keeps sending is cut off */
            if (c->len == c->cap) {
                size_t cap = c->cap ? c->cap * 2 : TCP_INITIAL_BUF;
                if (cap > max_buf(t))
                    cap = max_buf(t);
                c->buf = xrealloc(c->buf, cap);
                c->cap = cap;
            }
            ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
            if (n <= 0)
                break;
            c->len += (size_t)n;
            conn_process(t, c, in, tmtime_mono_ns());
        }
        conn_process(t, c, in, tmtime_mono_ns());
        conn_eof(t, c, in);
    }
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, t->fd, NULL);
    close(t->fd);
    free(t);
    *pt = NULL;
}

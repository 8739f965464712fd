/* udpcount: the baseline of the ingest benchmark. A UDP receiver that opens
 * and reads its socket exactly as tokmon-collectd does (net.c: the same
 * receive buffer, SO_REUSEPORT, SO_RXQ_OVFL, epoll, recvmmsg of 64 x 64 KiB
 * with addresses and control data, bursts of 4096) and only counts the
 * non-empty lines, so a rate against it measures tokmon's own work. */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "udpcount"
#define VLEN 64          /* as collectd/net.c */
#define DGRAM_MAX 65536  /* as collectd/net.c */
#define READ_BURST 4096  /* as collectd/main.c */
#define TICK_MS 100

typedef struct {
    int fd;
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    struct sockaddr_storage addrs[VLEN];
    char *mem;
    char *bufs[VLEN]; /* staggered by cache line, as collectd/net.c */
    char ctrl[VLEN][CMSG_SPACE(sizeof(uint32_t))];
    uint32_t last_drops;
    uint64_t lines, datagrams, bytes, drops, truncated;
    int64_t first_ns, last_ns;
} counter_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " --port PORT [options]\n"
            "Receives UDP datagrams on 127.0.0.1:PORT as tokmon-collectd does, counts their\n"
            "non-empty lines, and on SIGTERM/SIGINT (or when idle) prints one line of\n"
            "key=value pairs.\n\n"
            "  -p, --port PORT     port to bind on 127.0.0.1 (0: any; the port goes to stderr)\n"
            "  -b, --rcvbuf BYTES  receive buffer to ask for (default 32M, collectd's default)\n"
            "  -i, --idle S        exit after S seconds without data (default: never)\n"
            "  -h, --help          this text\n");
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* as set_rcvbuf in collectd/net.c */
static int set_rcvbuf(int fd, long want)
{
    int v = want > 0x7fffffff / 2 ? 0x7fffffff / 2 : (int)want;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
    int got = 0;
    socklen_t gl = sizeof got;
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &gl);
    return got;
}

static void note_drops(counter_t *c, struct msghdr *h)
{
    for (struct cmsghdr *m = CMSG_FIRSTHDR(h); m; m = CMSG_NXTHDR(h, m)) {
        if (m->cmsg_level == SOL_SOCKET && m->cmsg_type == SO_RXQ_OVFL &&
            m->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
            uint32_t v;
            memcpy(&v, CMSG_DATA(m), sizeof v);
            c->drops += (uint32_t)(v - c->last_drops);
            c->last_drops = v;
        }
    }
}

/* What ingest's line splitter would see as records, without parsing them. */
static uint64_t count_lines(const char *buf, size_t len)
{
    uint64_t n = 0;
    size_t pos = 0;
    while (pos < len) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - line) : len - pos;
        pos += l + (nl ? 1 : 0);
        if (l && line[l - 1] == '\r')
            l--;
        n += l != 0;
    }
    return n;
}

/* as dgramd_read in collectd/net.c, with counting for ingest_datagram */
static size_t read_burst(counter_t *c, size_t max)
{
    size_t total = 0;
    while (total < max) {
        for (int i = 0; i < VLEN; i++) {
            c->msgs[i].msg_hdr.msg_namelen = sizeof c->addrs[i];
            c->msgs[i].msg_hdr.msg_controllen = sizeof c->ctrl[i];
            c->msgs[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(c->fd, c->msgs, VLEN, MSG_DONTWAIT, NULL);
        if (n <= 0)
            break;
        int64_t now = wall_ns();
        if (!c->first_ns)
            c->first_ns = now;
        c->last_ns = now;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &c->msgs[i].msg_hdr;
            if (h->msg_controllen)
                note_drops(c, h);
            c->datagrams++;
            if (h->msg_flags & MSG_TRUNC) {
                c->truncated++;
                continue;
            }
            c->bytes += c->msgs[i].msg_len;
            c->lines += count_lines(c->bufs[i], c->msgs[i].msg_len);
        }
        total += (size_t)n;
        if (n < VLEN)
            break;
    }
    return total;
}

static int parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s)
        return -1;
    if (*end == 'K' || *end == 'M') { /* a size: 32M */
        long mul = *end == 'K' ? 1024 : 1024 * 1024;
        if (end[1] || v > max / mul)
            return -1;
        v *= mul;
    } else if (*end) {
        return -1;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int bad_value(const char *opt, const char *val)
{
    fprintf(stderr, NAME ": bad value for --%s: '%s'\n", opt, val);
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        { "port", required_argument, NULL, 'p' }, { "rcvbuf", required_argument, NULL, 'b' },
        { "idle", required_argument, NULL, 'i' }, { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    long port = -1, rcvbuf = 32L << 20, idle = 0;
    int o;
    while ((o = getopt_long(argc, argv, "p:b:i:h", lopts, NULL)) != -1) {
        switch (o) {
        case 'p':
            if (parse_long(optarg, 0, 65535, &port) < 0)
                return bad_value("port", optarg);
            break;
        case 'b':
            if (parse_long(optarg, 4096, 0x7fffffff, &rcvbuf) < 0)
                return bad_value("rcvbuf", optarg);
            break;
        case 'i':
            if (parse_long(optarg, 0, 86400, &idle) < 0)
                return bad_value("idle", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc || port < 0) {
        usage(stderr);
        return 2;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    counter_t *c = calloc(1, sizeof *c);
    if (sfd < 0 || epfd < 0 || !c || !(c->mem = malloc((size_t)VLEN * (DGRAM_MAX + 64 * 17)))) {
        fprintf(stderr, NAME ": setup: %s\n", strerror(errno));
        return 1;
    }
    for (int i = 0; i < VLEN; i++) {
        c->bufs[i] = c->mem + (size_t)i * (DGRAM_MAX + 64 * 17);
        c->iov[i].iov_base = c->bufs[i];
        c->iov[i].iov_len = DGRAM_MAX;
        c->msgs[i].msg_hdr.msg_iov = &c->iov[i];
        c->msgs[i].msg_hdr.msg_iovlen = 1;
        c->msgs[i].msg_hdr.msg_name = &c->addrs[i];
        c->msgs[i].msg_hdr.msg_control = c->ctrl[i];
    }

    /* the socket as dgramd_open_udp makes it */
    c->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, NAME ": udp socket: %s\n", strerror(errno));
        return 1;
    }
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    int got = set_rcvbuf(c->fd, rcvbuf);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(c->fd, (struct sockaddr *)&sa, &sl) < 0) {
        fprintf(stderr, NAME ": cannot bind udp 127.0.0.1:%ld: %s\n", port, strerror(errno));
        return 1;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = c->fd };
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    ev = (struct epoll_event){ .events = EPOLLIN, .data.fd = sfd };
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    fprintf(stderr, NAME ": ready port=%u rcvbuf=%d\n", ntohs(sa.sin_port), got);

    struct epoll_event evs[64];
    bool stop = false;
    int64_t last_rx = mono_ns();
    while (!stop) {
        int n = epoll_wait(epfd, evs, 64, TICK_MS);
        int64_t now = mono_ns();
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd == c->fd) {
                if (read_burst(c, READ_BURST) > 0)
                    last_rx = now;
            } else {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                    stop = true;
            }
        }
        if (idle && mono_ns() - last_rx >= idle * 1000000000LL)
            stop = true;
    }
    /* as collectd's shutdown: take what the kernel already holds */
    for (int i = 0; i < 64 && read_burst(c, READ_BURST) > 0; i++) {
    }
    double secs = c->last_ns > c->first_ns ? (double)(c->last_ns - c->first_ns) / 1e9 : 0;
    printf("udpcount lines=%llu datagrams=%llu bytes=%llu drops=%llu truncated=%llu rcvbuf=%d "
           "seconds=%.3f\n",
           (unsigned long long)c->lines, (unsigned long long)c->datagrams,
           (unsigned long long)c->bytes, (unsigned long long)c->drops,
           (unsigned long long)c->truncated, got, secs);
    fflush(stdout);
    close(c->fd);
    free(c->mem);
    free(c);
    return 0;
}

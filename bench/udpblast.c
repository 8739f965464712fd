/* udpblast: a paced UDP load generator for the ingest benchmark. Sends
 * DogStatsD token counters (or JSON usage events) to 127.0.0.1:PORT at a set
 * rate of lines per second, packed L lines to a datagram, with U distinct
 * users. The datagrams are built before the clock starts, so only the sending
 * (sendmmsg on a connected socket, every 1 ms slice) can limit the rate. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME "udpblast"
#define SLICE_NS 1000000LL   /* pacing slice: 1 ms */
#define MAX_VLEN 1024        /* UIO_MAXIOV: the most one sendmmsg takes */
#define DGRAM_MAX 65507      /* the largest UDP payload over IPv4 */
#define MIN_POOL_LINES 65536 /* so that a small --users still gives varied data */
#define MAX_ERRORS 100000

typedef struct {
    const char *provider, *model;
} model_t;

static const model_t models[] = {
    { "openai", "gpt-4o" },
    { "openai", "gpt-4o-mini" },
    { "anthropic", "claude-sonnet-4-5" },
    { "gemini", "gemini-2.5-flash" },
};
#define NMODELS (sizeof models / sizeof models[0])

static const char *const types[] = { "input", "output", "cache_read" };
#define NTYPES (sizeof types / sizeof types[0])

typedef enum { FMT_STATSD, FMT_JSON } format_t;

typedef struct {
    unsigned port;
    double rate;         /* lines/s; 0: as fast as possible */
    double seconds;      /* with rate: how long to send */
    uint64_t lines;      /* or: how many lines to send */
    unsigned per_dgram;  /* lines per datagram */
    unsigned users;
    format_t format;
    uint64_t seed;
    int sndbuf;
    unsigned gso;        /* datagrams per send with UDP GSO; 0: off */
} opts_t;

typedef struct {
    char *data;
    struct iovec *iov;     /* one per message */
    struct mmsghdr *msgs;  /* one per message: a datagram, or a GSO train of them */
    unsigned *segs;        /* datagrams in each message */
    char (*ctrl)[CMSG_SPACE(sizeof(uint16_t))];
    size_t n;              /* messages */
    size_t dgrams;         /* datagrams in the pool */
} pool_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " --port PORT [options]\n"
            "Sends LLM token counters to 127.0.0.1:PORT over UDP at a steady rate and\n"
            "prints what it sent as one line of key=value pairs.\n\n"
            "  -p, --port PORT              destination port on 127.0.0.1 (required)\n"
            "  -r, --rate LINES             lines per second (default 100000; 0: unpaced)\n"
            "  -s, --seconds S              send for S seconds (default 3)\n"
            "  -n, --lines N                send N lines instead (rounded up to whole datagrams)\n"
            "  -L, --lines-per-datagram L   lines in each datagram (default 1)\n"
            "  -u, --users U                distinct user ids (default 1000)\n"
            "  -f, --format statsd|json     DogStatsD counters (default) or JSON usage events\n"
            "      --seed N                 seed of the pseudo-random data (default 1)\n"
            "      --sndbuf BYTES           socket send buffer (default 16M)\n"
            "      --gso N                  send up to N equal-length datagrams per\n"
            "                               system call with UDP GSO (default 0: off);\n"
            "                               the receiver still gets single datagrams\n"
            "  -h, --help                   this text\n");
}

static uint64_t rnd(uint64_t *s)
{
    /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* One usage line for user u into p (room for at least 256 bytes); returns its length. */
static size_t make_line(char *p, format_t fmt, unsigned u, uint64_t *rs)
{
    const model_t *m = &models[rnd(rs) % NMODELS];
    const char *type = types[rnd(rs) % NTYPES];
    /* roughly log-uniform counts from 10 to 20000, as real calls vary */
    double x = (double)(rnd(rs) >> 11) / 9007199254740992.0;
    unsigned count = (unsigned)(10.0 * pow(2000.0, x));
    int n;
    if (fmt == FMT_STATSD)
        n = snprintf(p, 256, "llm.tokens:%u|c|#provider:%s,model:%s,user:user-%06u,type:%s", count,
                     m->provider, m->model, u, type);
    else
        n = snprintf(p, 256,
                     "{\"provider\":\"%s\",\"model\":\"%s\",\"user\":\"user-%06u\","
                     "\"input_tokens\":%u,\"output_tokens\":%u}",
                     m->provider, m->model, u, count, count / 4 + 1);
    return (size_t)n;
}

/* Builds enough distinct datagrams that every user appears, in an order
 * that visits the users pseudo-randomly (x -> a*x+b mod U is a bijection).
 * With GSO the datagrams are grouped by length, since one GSO send cuts its
 * payload into equal segments: each run of equal-length datagrams becomes one
 * message, so no datagram is padded or changed. */
static int pool_build(pool_t *pl, const opts_t *o, uint64_t total_dgrams)
{
    uint64_t want_lines = o->users > MIN_POOL_LINES ? o->users : MIN_POOL_LINES;
    uint64_t n = (want_lines + o->per_dgram - 1) / o->per_dgram;
    if (n > total_dgrams)
        n = total_dgrams;
    if (n == 0)
        n = 1;
    size_t cap = (size_t)n * o->per_dgram * 257;
    char *tmp = malloc(cap);
    size_t *doff = calloc(n, sizeof *doff), *dlen = calloc(n, sizeof *dlen);
    pl->data = malloc(cap);
    pl->iov = calloc(n, sizeof *pl->iov);
    pl->msgs = calloc(n, sizeof *pl->msgs);
    pl->segs = calloc(n, sizeof *pl->segs);
    pl->ctrl = calloc(n, sizeof *pl->ctrl);
    if (!tmp || !doff || !dlen || !pl->data || !pl->iov || !pl->msgs || !pl->segs || !pl->ctrl)
        return -1;
    uint64_t rs = o->seed ? o->seed : 1;
    uint64_t a = 2654435761u % o->users;
    while (a == 0 || gcd(a, o->users) != 1)
        a = (a + 1) % o->users == 0 ? 1 : a + 1;
    uint64_t b = rnd(&rs) % o->users, j = 0;
    size_t off = 0;
    for (uint64_t d = 0; d < n; d++) {
        doff[d] = off;
        for (unsigned l = 0; l < o->per_dgram; l++, j++) {
            if (l)
                tmp[off++] = '\n';
            unsigned u = (unsigned)((a * (j % o->users) + b) % o->users);
            off += make_line(tmp + off, o->format, u, &rs);
        }
        dlen[d] = off - doff[d];
        if (dlen[d] > DGRAM_MAX) {
            fprintf(stderr, NAME ": %u lines do not fit in one datagram\n", o->per_dgram);
            return -1;
        }
    }
    /* order: as generated, or (GSO) stably sorted by length */
    size_t *order = calloc(n, sizeof *order);
    if (!order)
        return -1;
    if (o->gso > 1) {
        size_t *count = calloc(DGRAM_MAX + 2, sizeof *count);
        if (!count)
            return -1;
        for (uint64_t d = 0; d < n; d++)
            count[dlen[d] + 1]++;
        for (size_t k = 1; k <= DGRAM_MAX + 1; k++)
            count[k] += count[k - 1];
        for (uint64_t d = 0; d < n; d++)
            order[count[dlen[d]]++] = (size_t)d;
        free(count);
    } else {
        for (uint64_t d = 0; d < n; d++)
            order[d] = (size_t)d;
    }
    off = 0;
    size_t m = 0;
    for (uint64_t k = 0; k < n; k++) {
        size_t d = order[k];
        memcpy(pl->data + off, tmp + doff[d], dlen[d]);
        bool join = m > 0 && o->gso > 1 && pl->iov[m - 1].iov_len / pl->segs[m - 1] == dlen[d] &&
                    pl->segs[m - 1] < o->gso && pl->iov[m - 1].iov_len + dlen[d] <= DGRAM_MAX;
        if (join) {
            pl->iov[m - 1].iov_len += dlen[d];
            pl->segs[m - 1]++;
        } else {
            pl->iov[m].iov_base = pl->data + off;
            pl->iov[m].iov_len = dlen[d];
            pl->segs[m] = 1;
            m++;
        }
        off += dlen[d];
    }
    for (size_t i = 0; i < m; i++) {
        struct msghdr *h = &pl->msgs[i].msg_hdr;
        h->msg_iov = &pl->iov[i];
        h->msg_iovlen = 1;
        if (pl->segs[i] > 1) {
            h->msg_control = pl->ctrl[i];
            h->msg_controllen = sizeof pl->ctrl[i];
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)(pl->iov[i].iov_len / pl->segs[i]);
            memcpy(CMSG_DATA(c), &seg, sizeof seg);
        }
    }
    pl->n = m;
    pl->dgrams = (size_t)n;
    free(order);
    free(tmp);
    free(doff);
    free(dlen);
    return 0;
}

static int open_socket(const opts_t *o)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, NAME ": socket: %s\n", strerror(errno));
        return -1;
    }
    /* root may exceed net.core.wmem_max; others get what the limit allows */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &o->sndbuf, sizeof o->sndbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &o->sndbuf, sizeof o->sndbuf);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)o->port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, NAME ": connect 127.0.0.1:%u: %s\n", o->port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    static const struct option lopts[] = {
        { "port", required_argument, NULL, 'p' },
        { "rate", required_argument, NULL, 'r' },
        { "seconds", required_argument, NULL, 's' },
        { "lines", required_argument, NULL, 'n' },
        { "lines-per-datagram", required_argument, NULL, 'L' },
        { "users", required_argument, NULL, 'u' },
        { "format", required_argument, NULL, 'f' },
        { "seed", required_argument, NULL, 'S' },
        { "sndbuf", required_argument, NULL, 'B' },
        { "gso", required_argument, NULL, 'G' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    *o = (opts_t){ .rate = 100000, .seconds = 3, .per_dgram = 1, .users = 1000, .seed = 1,
                   .sndbuf = 16 << 20 };
    int c;
    uint64_t v;
    while ((c = getopt_long(argc, argv, "p:r:s:n:L:u:f:h", lopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (parse_u64(optarg, 1, 65535, &v) < 0)
                goto bad;
            o->port = (unsigned)v;
            break;
        case 'r':
            if (parse_double(optarg, 0, 1e9, &o->rate) < 0)
                goto bad;
            break;
        case 's':
            if (parse_double(optarg, 0.001, 3600, &o->seconds) < 0)
                goto bad;
            o->lines = 0;
            break;
        case 'n':
            if (parse_u64(optarg, 1, UINT64_C(1) << 40, &o->lines) < 0)
                goto bad;
            break;
        case 'L':
            if (parse_u64(optarg, 1, 4096, &v) < 0)
                goto bad;
            o->per_dgram = (unsigned)v;
            break;
        case 'u':
            if (parse_u64(optarg, 1, 999999, &v) < 0)
                goto bad;
            o->users = (unsigned)v;
            break;
        case 'f':
            if (!strcmp(optarg, "statsd"))
                o->format = FMT_STATSD;
            else if (!strcmp(optarg, "json"))
                o->format = FMT_JSON;
            else
                goto bad;
            break;
        case 'S':
            if (parse_u64(optarg, 0, UINT64_MAX, &o->seed) < 0)
                goto bad;
            break;
        case 'B':
            if (parse_u64(optarg, 4096, 1 << 30, &v) < 0)
                goto bad;
            o->sndbuf = (int)v;
            break;
        case 'G':
            if (parse_u64(optarg, 0, 64, &v) < 0)
                goto bad;
            o->gso = (unsigned)v;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc || !o->port) {
        usage(stderr);
        return -1;
    }
    if (!o->lines && o->rate == 0) {
        fprintf(stderr, NAME ": an unpaced run (--rate 0) needs --lines\n");
        return -1;
    }
    return 0;
bad:
    fprintf(stderr, NAME ": bad value for --%s: '%s'\n",
            c == 'p' ? "port" : c == 'r' ? "rate" : c == 's' ? "seconds" : c == 'n' ? "lines"
            : c == 'L' ? "lines-per-datagram" : c == 'u' ? "users" : c == 'f' ? "format"
            : c == 'S' ? "seed" : c == 'B' ? "sndbuf" : "gso", optarg);
    return -1;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_args(argc, argv, &o) < 0)
        return 2;
    uint64_t lines = o.lines ? o.lines : (uint64_t)llround(o.rate * o.seconds);
    uint64_t total = (lines + o.per_dgram - 1) / o.per_dgram; /* datagrams */
    if (total == 0)
        total = 1;
    double dgram_rate = o.rate / o.per_dgram; /* per second; 0: unpaced */
    double planned_s = dgram_rate > 0 ? (double)total / dgram_rate : 0;
    /* a sender that cannot keep up stops at twice the planned time */
    int64_t limit_ns = dgram_rate > 0 ? (int64_t)((planned_s * 2 + 1) * 1e9) : INT64_MAX;

    pool_t pl = { 0 };
    if (pool_build(&pl, &o, total) < 0) {
        fprintf(stderr, NAME ": cannot build %llu datagrams\n", (unsigned long long)total);
        return 1;
    }
    int fd = open_socket(&o);
    if (fd < 0)
        return 1;

    uint64_t sent = 0, bytes = 0, errors = 0;
    size_t pos = 0; /* next message of the pool */
    bool truncated = false;
    int64_t t0 = mono_ns(), now = t0;
    for (uint64_t slice = 1; sent < total; slice++) {
        now = mono_ns();
        if (now - t0 > limit_ns) {
            truncated = true;
            break;
        }
        uint64_t due = total;
        if (dgram_rate > 0) {
            double d = (double)(now - t0) * dgram_rate / 1e9;
            due = d < (double)total ? (uint64_t)d : total;
        }
        while (sent < due) {
            /* whole messages, up to the first that reaches the due count */
            uint64_t want = due - sent, cover = 0;
            unsigned n = 0;
            while (n < MAX_VLEN && pos + n < pl.n && cover < want)
                cover += pl.segs[pos + n++];
            int r = sendmmsg(fd, &pl.msgs[pos], n, 0);
            if (r < 0) {
                /* ECONNREFUSED: an ICMP error for an earlier datagram (no
                 * receiver yet); ENOBUFS: a full queue. Both: try again. */
                if (errno != EINTR && errno != ECONNREFUSED && errno != ENOBUFS &&
                    errno != EAGAIN) {
                    fprintf(stderr, NAME ": sendmmsg: %s\n", strerror(errno));
                    return 1;
                }
                if (++errors > MAX_ERRORS) {
                    fprintf(stderr, NAME ": too many send errors, last: %s\n", strerror(errno));
                    return 1;
                }
                continue;
            }
            for (int i = 0; i < r; i++, pos++) {
                bytes += pl.iov[pos].iov_len;
                sent += pl.segs[pos];
            }
            if (pos == pl.n)
                pos = 0;
        }
        if (dgram_rate > 0 && sent < total) {
            int64_t next = t0 + (int64_t)slice * SLICE_NS;
            if (next > mono_ns()) {
                struct timespec ts = { (time_t)(next / 1000000000LL), (long)(next % 1000000000LL) };
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
                }
            } else {
                slice = (uint64_t)((mono_ns() - t0) / SLICE_NS); /* behind: no sleep, resync the slices */
            }
        }
    }
    double secs = (double)(mono_ns() - t0) / 1e9;
    uint64_t sent_lines = sent * o.per_dgram;
    printf("udpblast lines=%llu datagrams=%llu bytes=%llu seconds=%.3f rate=%.0f offered=%.0f "
           "lines_per_datagram=%u users=%u format=%s errors=%llu truncated=%d\n",
           (unsigned long long)sent_lines, (unsigned long long)sent, (unsigned long long)bytes, secs,
           secs > 0 ? (double)sent_lines / secs : 0.0, o.rate, o.per_dgram, o.users,
           o.format == FMT_STATSD ? "statsd" : "json", (unsigned long long)errors, truncated);
    close(fd);
    free(pl.data);
    free(pl.iov);
    free(pl.msgs);
    free(pl.segs);
    free(pl.ctrl);
    return 0;
}

/* tokmon-emit: sends usage events to tokmon-collectd: one event built from
 * flags, the events or lines of a file, or realistic demo traffic at a given
 * rate, as JSON, msgpack or DogStatsD, optionally signed. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "auth.h"
#include "cfg.h"
#include "demo.h"
#include "sig.h"
#include "tmtime.h"
#include "wire.h"
#include "xalloc.h"

#define NAME "tokmon-emit"
#define DGRAM_CAP 65000 /* payload bytes per datagram, a |sig line included */
#define SIG_ROOM (AUTH_SIG_MAX + 64)

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " [-c FILE] [TARGET] [EVENT FLAGS | --file F | --rate N --count M] [options]\n"
            "Sends LLM usage events to tokmon-collectd.\n\n"
            "Target (default: [collectd] udp of the config, else 127.0.0.1:8125):\n"
            "  --udp HOST:PORT | --tcp HOST:PORT | --unix PATH\n\n"
            "One event from flags (--provider and --model are required):\n"
            "  --provider P --model M --operation O --user U --account A --project P\n"
            "  --input-tokens N (all input, cache included) --cache-read-tokens N\n"
            "  --cache-write-tokens N --cache-write-1h-tokens N\n"
            "  --output-tokens N (all output, reasoning included) --reasoning-tokens N\n"
            "  --latency-ms X --ttft-ms X --status ok|error --http-status N --error-type T\n"
            "  --cost-usd X --request-id ID --retries N --ts UNIX_SECONDS|RFC3339\n"
            "  --tag K=V (repeatable) --usage JSON (a provider's own usage object)\n\n"
            "Other sources:\n"
            "  --file F              the JSON events of F (one object, several, or an array;\n"
            "                        - for stdin), or its lines as they are (StatsD)\n"
            "  --rate N --count M    M demo events at N a second (M 0: until interrupted)\n"
            "  --users U             distinct demo users (default 1000)\n"
            "  --seed S              demo random seed (default 1)\n\n"
            "Options:\n"
            "  --format json|msgpack|statsd  encoding of flag and demo events (default json)\n"
            "  --lines-per-datagram L        records packed in one datagram (default 1)\n"
            "  --key-file F [--key-id ID]    sign each datagram with this key (a line of\n"
            "                                tokmonctl keygen; ID picks one of several)\n"
            "  --dry-run                     print the datagrams instead of sending them\n"
            "  -c, --config FILE  -h, --help  -V, --version\n");
}

/* ---- sending ------------------------------------------------------------ */

typedef struct {
    int fd;
    bool stream; /* TCP: records are newline framed */
    bool dry;
    const unsigned char *key;
    const char *key_id;
    char *buf;
    size_t len;
    int records;    /* in buf */
    int per_dgram;
    wire_format_t fmt; /* for the separator */
    uint64_t sent_records, sent_dgrams, send_errors;
} sender_t;

static int open_target(sender_t *s, const char *udp, const char *tcp, const char *unixp, char *err,
                       size_t cap)
{
    addr_t a;
    int type = SOCK_DGRAM;
    if (unixp) {
        if (addr_unix(unixp, &a, err, cap) < 0)
            return -1;
    } else if (tcp) {
        if (addr_parse(tcp, SOCK_STREAM, &a, err, cap) < 0)
            return -1;
        type = SOCK_STREAM;
        s->stream = true;
    } else if (addr_parse(udp, SOCK_DGRAM, &a, err, cap) < 0) {
        return -1;
    }
    if (s->dry)
        return 0;
    s->fd = socket(a.ss.ss_family, type | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&a.ss, a.len) < 0) {
        snprintf(err, cap, "cannot reach %s: %s", unixp ? unixp : tcp ? tcp : udp, strerror(errno));
        return -1;
    }
    if (!s->stream) {
        int v = 4 << 20;
        setsockopt(s->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
    }
    return 0;
}

static void write_all(sender_t *s, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(s->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            s->send_errors++;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void flush_dgram(sender_t *s)
{
    if (!s->records)
        return;
    if (s->key) {
        ssize_t n = auth_sign(s->buf, s->len, DGRAM_CAP + SIG_ROOM, s->key, s->key_id,
                              tmtime_now_ns() / TMTIME_NS_PER_MS);
        if (n > 0)
            s->len = (size_t)n;
    }
    if (s->dry) {
        fwrite(s->buf, 1, s->len, stdout);
        fputc('\n', stdout);
    } else if (s->stream) {
        s->buf[s->len++] = '\n';
        write_all(s, s->buf, s->len);
    } else {
        for (;;) {
            ssize_t w = send(s->fd, s->buf, s->len, 0);
            if (w >= 0)
                break;
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS || errno == EAGAIN) { /* the kernel's queue is full: wait a moment */
                struct timespec ts = { 0, 50000 };
                nanosleep(&ts, NULL);
                continue;
            }
            s->send_errors++; /* e.g. ECONNREFUSED: nobody listens */
            break;
        }
    }
    s->sent_records += (uint64_t)s->records;
    s->sent_dgrams++;
    s->records = 0;
    s->len = 0;
}

/* Adds one record (already encoded in rec) to the current datagram. */
static void add_record(sender_t *s, const char *rec, size_t n)
{
    size_t sep = s->records && s->fmt != WIRE_MSGPACK ? 1 : 0;
    if (s->records && (s->records >= s->per_dgram || s->len + sep + n > DGRAM_CAP))
        flush_dgram(s);
    if (n > DGRAM_CAP) {
        fprintf(stderr, NAME ": a record of %zu bytes does not fit a datagram; skipped\n", n);
        return;
    }
    if (s->records && s->fmt != WIRE_MSGPACK)
        s->buf[s->len++] = '\n';
    memcpy(s->buf + s->len, rec, n);
    s->len += n;
    s->records++;
    if (s->records >= s->per_dgram)
        flush_dgram(s);
}

/* ---- files -------------------------------------------------------------- */

/* Splits text into its top-level JSON values, whitespace outside strings
 * removed and every number kept as written. Returns the count, or -1 when
 * the text is not a sequence of JSON objects and arrays. */
static int json_values(const char *t, size_t n, char ***out)
{
    char **v = NULL;
    int nv = 0;
    char *cur = xmalloc(n + 1);
    size_t cl = 0;
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char c = t[i];
        if (in_str) {
            cur[cl++] = c;
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            continue;
        if (depth == 0 && c != '{' && c != '[')
            goto bad;
        cur[cl++] = c;
        if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (--depth == 0) {
                v = xreallocarray(v, (size_t)nv + 1, sizeof *v);
                v[nv++] = xstrndup(cur, cl);
                cl = 0;
            }
        }
    }
    if (depth || in_str)
        goto bad;
    free(cur);
    *out = v;
    return nv;
bad:
    free(cur);
    for (int i = 0; i < nv; i++)
        free(v[i]);
    free(v);
    return -1;
}

/* The elements of a top-level array "[a,b]" (already minified). */
static void send_array(sender_t *s, const char *a)
{
    size_t n = strlen(a);
    int depth = 0;
    bool in_str = false, esc = false;
    size_t start = 1;
    for (size_t i = 1; i + 1 < n; i++) {
        char c = a[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        if (c == '"')
            in_str = true;
        else if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']')
            depth--;
        else if (c == ',' && depth == 0) {
            add_record(s, a + start, i - start);
            start = i + 1;
        }
    }
    if (n > start + 1)
        add_record(s, a + start, n - 1 - start);
}

static int send_file(sender_t *s, const char *path)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, NAME ": %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *t = xmalloc(cap);
    size_t r;
    while ((r = fread(t + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap)
            t = xrealloc(t, cap *= 2);
    }
    if (f != stdin)
        fclose(f);
    size_t i = 0;
    while (i < n && strchr(" \t\r\n", t[i]))
        i++;
    char **vals;
    int nv = i < n && (t[i] == '{' || t[i] == '[') ? json_values(t, n, &vals) : -1;
    if (nv >= 0) {
        for (int k = 0; k < nv; k++) {
            if (vals[k][0] == '[')
                send_array(s, vals[k]);
            else
                add_record(s, vals[k], strlen(vals[k]));
            free(vals[k]);
        }
        free(vals);
    } else { /* lines as they are */
        size_t pos = 0;
        while (pos < n) {
            char *nl = memchr(t + pos, '\n', n - pos);
            size_t len = nl ? (size_t)(nl - t - pos) : n - pos;
            if (len && t[pos + len - 1] == '\r')
                len--;
            if (len)
                add_record(s, t + pos, len);
            pos += (nl ? (size_t)(nl - t - pos) + 1 : n - pos);
        }
    }
    free(t);
    return 0;
}

/* ---- keys --------------------------------------------------------------- */

static unsigned char g_key[AUTH_KEY_BYTES];
static char g_key_id[AUTH_MAX_KEY_ID + 1];

static int load_key(const char *path, const char *want, char *err, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[512];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char id[128], b64[256];
        if (line[0] == '#' || sscanf(line, "%127s %255s", id, b64) != 2)
            continue;
        if (want && strcmp(want, id))
            continue;
        if (strlen(id) > AUTH_MAX_KEY_ID || auth_key_decode(b64, strlen(b64), g_key) < 0) {
            snprintf(err, cap, "%s:%d: not 'key-id base64-key'", path, ln);
            fclose(f);
            return -1;
        }
        snprintf(g_key_id, sizeof g_key_id, "%.*s", AUTH_MAX_KEY_ID, id); /* fits: checked above */
        fclose(f);
        return 0;
    }
    fclose(f);
    snprintf(err, cap, "%s: no key%s%s", path, want ? " with id " : "", want ? want : "");
    return -1;
}

/* ---- main --------------------------------------------------------------- */

enum {
    O_UDP = 256, O_TCP, O_UNIX, O_PROVIDER, O_MODEL, O_OPERATION, O_USER, O_ACCOUNT, O_PROJECT,
    O_IN, O_CR, O_CW, O_CW1, O_OUT, O_RS, O_LAT, O_TTFT, O_STATUS, O_HTTP, O_ERRT, O_COST, O_REQ,
    O_RETRIES, O_TS, O_TAG, O_USAGE, O_FILE, O_RATE, O_COUNT, O_USERS, O_SEED, O_FORMAT, O_LPD,
    O_KEYFILE, O_KEYID, O_DRY,
};

static int64_t num_arg(const char *name, const char *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < 0) {
        fprintf(stderr, NAME ": --%s wants a non-negative integer, not '%s'\n", name, v);
        exit(2);
    }
    return x;
}

static const char *decimal_arg(const char *name, const char *v)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || !*v || x < 0 || strpbrk(v, "xXnNiI")) {
        fprintf(stderr, NAME ": --%s wants a non-negative decimal number, not '%s'\n", name, v);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "udp", required_argument, NULL, O_UDP },
        { "tcp", required_argument, NULL, O_TCP },
        { "unix", required_argument, NULL, O_UNIX },
        { "provider", required_argument, NULL, O_PROVIDER },
        { "model", required_argument, NULL, O_MODEL },
        { "operation", required_argument, NULL, O_OPERATION },
        { "user", required_argument, NULL, O_USER },
        { "account", required_argument, NULL, O_ACCOUNT },
        { "project", required_argument, NULL, O_PROJECT },
        { "input-tokens", required_argument, NULL, O_IN },
        { "cache-read-tokens", required_argument, NULL, O_CR },
        { "cache-write-tokens", required_argument, NULL, O_CW },
        { "cache-write-1h-tokens", required_argument, NULL, O_CW1 },
        { "output-tokens", required_argument, NULL, O_OUT },
        { "reasoning-tokens", required_argument, NULL, O_RS },
        { "latency-ms", required_argument, NULL, O_LAT },
        { "ttft-ms", required_argument, NULL, O_TTFT },
        { "status", required_argument, NULL, O_STATUS },
        { "http-status", required_argument, NULL, O_HTTP },
        { "error-type", required_argument, NULL, O_ERRT },
        { "cost-usd", required_argument, NULL, O_COST },
        { "request-id", required_argument, NULL, O_REQ },
        { "retries", required_argument, NULL, O_RETRIES },
        { "ts", required_argument, NULL, O_TS },
        { "tag", required_argument, NULL, O_TAG },
        { "usage", required_argument, NULL, O_USAGE },
        { "file", required_argument, NULL, O_FILE },
        { "rate", required_argument, NULL, O_RATE },
        { "count", required_argument, NULL, O_COUNT },
        { "users", required_argument, NULL, O_USERS },
        { "seed", required_argument, NULL, O_SEED },
        { "format", required_argument, NULL, O_FORMAT },
        { "lines-per-datagram", required_argument, NULL, O_LPD },
        { "key-file", required_argument, NULL, O_KEYFILE },
        { "key-id", required_argument, NULL, O_KEYID },
        { "dry-run", no_argument, NULL, O_DRY },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    wire_event_t ev;
    wire_event_init(&ev);
    const char *cfg_path = NULL, *udp = NULL, *tcp = NULL, *unixp = NULL, *file = NULL;
    const char *key_file = NULL, *key_id = NULL;
    double rate = 0;
    int64_t count = -1, users = 1000, seed = 1;
    sender_t s = { .fd = -1, .per_dgram = 1, .fmt = WIRE_JSON };
    bool any_event_flag = false;
    int o;
    while ((o = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        if (o >= O_PROVIDER && o <= O_USAGE)
            any_event_flag = true;
        switch (o) {
        case 'c': cfg_path = optarg; break;
        case O_UDP: udp = optarg; break;
        case O_TCP: tcp = optarg; break;
        case O_UNIX: unixp = optarg; break;
        case O_PROVIDER: ev.provider = optarg; break;
        case O_MODEL: ev.model = optarg; break;
        case O_OPERATION: ev.operation = optarg; break;
        case O_USER: ev.user = optarg; break;
        case O_ACCOUNT: ev.account = optarg; break;
        case O_PROJECT: ev.project = optarg; break;
        case O_IN: ev.input = num_arg("input-tokens", optarg); break;
        case O_CR: ev.cache_read = num_arg("cache-read-tokens", optarg); break;
        case O_CW: ev.cache_write = num_arg("cache-write-tokens", optarg); break;
        case O_CW1: ev.cache_write_1h = num_arg("cache-write-1h-tokens", optarg); break;
        case O_OUT: ev.output = num_arg("output-tokens", optarg); break;
        case O_RS: ev.reasoning = num_arg("reasoning-tokens", optarg); break;
        case O_LAT: ev.latency_ms = decimal_arg("latency-ms", optarg); break;
        case O_TTFT: ev.ttft_ms = decimal_arg("ttft-ms", optarg); break;
        case O_STATUS: ev.status = optarg; break;
        case O_HTTP: ev.http_status = (int)num_arg("http-status", optarg); break;
        case O_ERRT: ev.error_type = optarg; break;
        case O_COST: ev.cost_usd = decimal_arg("cost-usd", optarg); break;
        case O_REQ: ev.request_id = optarg; break;
        case O_RETRIES: ev.retries = (int)num_arg("retries", optarg); break;
        case O_TS: ev.ts = optarg; break;
        case O_TAG: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || ev.ntags == WIRE_MAX_TAGS) {
                fprintf(stderr, NAME ": --tag wants K=V (at most %d)\n", WIRE_MAX_TAGS);
                return 2;
            }
            *eq = '\0';
            ev.tag_k[ev.ntags] = optarg;
            ev.tag_v[ev.ntags++] = eq + 1;
            break;
        }
        case O_USAGE: ev.usage = optarg; break;
        case O_FILE: file = optarg; break;
        case O_RATE: rate = atof(optarg); break;
        case O_COUNT: count = num_arg("count", optarg); break;
        case O_USERS: users = num_arg("users", optarg); break;
        case O_SEED: seed = num_arg("seed", optarg); break;
        case O_FORMAT:
            if (!strcmp(optarg, "json"))
                s.fmt = WIRE_JSON;
            else if (!strcmp(optarg, "msgpack"))
                s.fmt = WIRE_MSGPACK;
            else if (!strcmp(optarg, "statsd"))
                s.fmt = WIRE_STATSD;
            else {
                fprintf(stderr, NAME ": --format is json, msgpack or statsd\n");
                return 2;
            }
            break;
        case O_LPD: s.per_dgram = (int)num_arg("lines-per-datagram", optarg); break;
        case O_KEYFILE: key_file = optarg; break;
        case O_KEYID: key_id = optarg; break;
        case O_DRY: s.dry = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf(NAME " %s\n", TOKMON_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, NAME ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    bool demo_mode = rate > 0 || count >= 0;
    if ((demo_mode + (file != NULL) + any_event_flag) != 1) {
        fprintf(stderr, NAME ": give event flags, --file, or --rate/--count (one of them)\n");
        usage(stderr);
        return 2;
    }
    if (!demo_mode && !file && (!ev.provider || !ev.model)) {
        fprintf(stderr, NAME ": --provider and --model are required\n");
        return 2;
    }
    if (s.per_dgram < 1)
        s.per_dgram = 1;
    /* --format encodes flag and demo events; a file's records go as they are
     * (JSON text or StatsD lines), so they are joined by newlines */
    if (file)
        s.fmt = WIRE_JSON;
    if (s.fmt == WIRE_MSGPACK && tcp) {
        fprintf(stderr, NAME ": msgpack travels in datagrams (UDP or unix), not over TCP\n");
        return 2;
    }

    char err[4096];
    cfg_t *cfg = NULL;
    if (!udp && !tcp && !unixp) {
        cfg = cfg_load(cfg_path, err, sizeof err);
        if (cfg && cfg->collectd.udp[0])
            udp = cfg->collectd.udp;
        else if (cfg_path) {
            fprintf(stderr, NAME ": %s\n", cfg ? "the config has no [collectd] udp" : err);
            return 1;
        } else
            udp = "127.0.0.1:8125";
    }
    if (key_file) {
        if (load_key(key_file, key_id, err, sizeof err) < 0) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        s.key = g_key;
        s.key_id = g_key_id;
    }
    if (open_target(&s, udp, tcp, unixp, err, sizeof err) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    s.buf = xmalloc(DGRAM_CAP + SIG_ROOM);
    char *rec = xmalloc(DGRAM_CAP);
    int sigfd = sig_open();
    int64_t t0 = tmtime_mono_ns();
    int rc = 0;

    if (file) {
        rc = send_file(&s, file) < 0 ? 1 : 0;
    } else if (!demo_mode) {
        size_t n = 0;
        if (wire_encode(&ev, s.fmt, rec, DGRAM_CAP, &n) < 0) {
            fprintf(stderr, NAME ": the event does not fit a datagram\n");
            return 1;
        }
        add_record(&s, rec, n);
    } else {
        demo_t *d = demo_new((uint64_t)seed, (unsigned)users);
        double interval = rate > 0 ? 1e9 / rate : 0;
        for (int64_t i = 0; count <= 0 || i < count; i++) {
            if ((i & 255) == 0 && sig_next(sigfd) > 0)
                break;
            if (interval > 0) { /* pace: wait while more than a millisecond ahead */
                int64_t due = t0 + (int64_t)((double)i * interval);
                int64_t ahead = due - tmtime_mono_ns();
                if (ahead > 1000000) {
                    flush_dgram(&s);
                    struct pollfd pfd = { .fd = sigfd, .events = POLLIN };
                    if (poll(&pfd, 1, (int)(ahead / 1000000)) > 0 && sig_next(sigfd) > 0)
                        break; /* TERM or INT while waiting */
                }
            }
            wire_event_t de;
            demo_next(d, &de, s.fmt);
            size_t n = 0;
            if (wire_encode(&de, s.fmt, rec, DGRAM_CAP, &n) == 0)
                add_record(&s, rec, n);
        }
        demo_destroy(&d);
    }
    flush_dgram(&s);
    double secs = (double)(tmtime_mono_ns() - t0) / 1e9;
    if (!s.dry)
        fprintf(stderr, NAME ": sent %llu records in %llu datagrams in %.3f s (%.0f records/s)%s\n",
                (unsigned long long)s.sent_records, (unsigned long long)s.sent_dgrams, secs,
                secs > 0 ? (double)s.sent_records / secs : 0.0,
                s.send_errors ? " with send errors" : "");
    if (s.send_errors) {
        fprintf(stderr, NAME ": %llu sends failed (is tokmon-collectd listening?)\n",
                (unsigned long long)s.send_errors);
        rc = 1;
    }
    if (s.fd >= 0)
        close(s.fd);
    free(s.buf);
    free(rec);
    cfg_destroy(&cfg);
    return rc;
}

/* tokmon-tap: subscribes to bus topic prefixes and prints one JSON object per
 * record, a line each, so scripts and tests can read the bus with jq. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "mp2json.h"
#include "msg.h"
#include "sig.h"
#include "tmtime.h"

#define NAME "tokmon-tap"
#define MAX_EP 32

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " [-c FILE] [options] [TOPIC...]\n"
            "Prints the records of the bus topics whose names start with TOPIC (all when\n"
            "none is given) as one JSON object per line.\n\n"
            "  -c, --config FILE    configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -e, --envelope       add topic, src and seq to each object\n"
            "      --endpoint EP    read this publisher instead of those in [bus] (repeatable)\n"
            "  -n, --count N        exit after N records\n"
            "  -t, --timeout SEC    exit after SEC seconds (status 3 if --count was not reached)\n"
            "      --sync           wait until a publisher answers before reading (prints\n"
            "                       'ready' on stderr), so nothing sent after that is missed\n"
            "      --state FILE     an exactly-once consumer: keeps its bus positions in FILE,\n"
            "                       replays what it missed on start and on every gap, and\n"
            "                       appends to --output FILE, which it cuts back to the last\n"
            "                       saved position after a crash ('ready' on stderr once\n"
            "                       caught up)\n"
            "      --output FILE    where records go (with --state: required)\n"
            "      --from oldest|live  with --state, where a publisher without a saved\n"
            "                       position starts (default oldest: all its spool still has)\n"
            "      --fsync          with --state, fsync the output and the state each time\n"
            "      --exit-idle SEC  with --state, exit once caught up and nothing came for SEC\n"
            "  -h, --help           this text\n"
            "  -V, --version        print the version\n");
}

typedef struct {
    bool envelope;
    long count, printed;
    char **prefixes;
    int nprefixes;
    unsigned long bad;
    FILE *out;
} tap_t;

static bool wanted(const tap_t *t, span_t topic)
{
    if (t->nprefixes == 0)
        return true;
    for (int i = 0; i < t->nprefixes; i++) {
        size_t n = strlen(t->prefixes[i]);
        if (topic.len >= n && !memcmp(topic.p, t->prefixes[i], n))
            return true;
    }
    return false;
}

static bool emit(tap_t *t, json_t *o, const bus_msg_t *m)
{
    if (t->envelope) {
        json_object_set_new(o, "topic", json_stringn(m->topic.p, m->topic.len));
        json_object_set_new(o, "src", mp2json_str(m->src));
        json_object_set_new(o, "seq", json_integer((json_int_t)m->seq));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return true;
    bool ok = fputs(s, t->out) >= 0 && fputc('\n', t->out) != EOF;
    if (t->out == stdout)
        ok = ok && fflush(stdout) == 0;
    free(s);
    t->printed++;
    return ok;
}

static void skipped(tap_t *t, const bus_msg_t *m, uint32_t index, const char *err)
{
    t->bad++;
    fprintf(stderr, NAME ": skipped a malformed %.*s record (#%u) from %.*s seq %llu: %s\n",
            (int)m->kind.len, m->kind.p, index, (int)m->src.len, m->src.p,
            (unsigned long long)m->seq, err);
}

/* Prints the records of one message; false when stdout is gone. A malformed
 * record is reported and skipped; the others of its message still print. */
static bool print_msg(tap_t *t, const bus_msg_t *m)
{
    char err[256];
    const msgpack_object *b = m->body;
    if (span_eq_cstr(m->kind, MSG_KIND_STATS)) {
        static msg_stat_t entries[MSG_MAX_STATS];
        msg_stats_t s;
        if (msg_stats_unpack(b, &s, entries, MSG_MAX_STATS, err, sizeof err) < 0) {
            skipped(t, m, 0, err);
            return true;
        }
        return emit(t, mp2json_stats(&s), m);
    }
    bool usage = span_eq_cstr(m->kind, MSG_KIND_USAGE), sample = span_eq_cstr(m->kind, MSG_KIND_SAMPLE);
    if (b->type != MSGPACK_OBJECT_ARRAY)
        return emit(t, mp2json_any(b), m);
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        const msgpack_object *r = &b->via.array.ptr[i];
        json_t *o;
        if (usage) {
            msg_usage_t u;
            if (msg_usage_unpack(r, &u, err, sizeof err) < 0) {
                skipped(t, m, i, err);
                continue;
            }
            o = mp2json_usage(&u);
        } else if (sample) {
            msg_sample_t s;
            if (msg_sample_unpack(r, &s, err, sizeof err) < 0) {
                skipped(t, m, i, err);
                continue;
            }
            o = mp2json_sample(&s);
        } else {
            o = mp2json_any(r);
        }
        if (!emit(t, o, m))
            return false;
        if (t->count && t->printed >= t->count)
            return true;
    }
    return true;
}

/* ---- the exactly-once consumer (--state) ----------------------------------- */

typedef struct {
    tap_t *t;
    const char *state_path, *out_path;
    bool fsync;
    int outfd;
    FILE *state_tmp;
} durable_t;

static int apply_msg(void *arg, const bus_msg_t *m)
{
    durable_t *d = arg;
    return print_msg(d->t, m) ? 0 : -1;
}

/* Reads the state: the output's length and a position per src. Missing
 * file: a fresh start. Returns 0, or -1 with a reason. */
static int state_load(const char *path, rsub_t *r, long long *out_len, char *err, size_t cap)
{
    *out_len = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0 : (snprintf(err, cap, "%s: %s", path, strerror(errno)), -1);
    char line[512];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char src[300];
        unsigned long long seq;
        long long n;
        if (ln == 1 && !strncmp(line, "tokmon-tap-state 1", 18))
            continue;
        if (sscanf(line, "output_bytes %lld", &n) == 1 && n >= 0)
            *out_len = n;
        else if (sscanf(line, "src %299s %llu", src, &seq) == 2)
            rsub_set_position(r, src, seq);
        else {
            snprintf(err, cap, "%s:%d: not a tokmon-tap state line", path, ln);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    return 0;
}

static void put_position(const char *src, uint64_t seq, void *arg)
{
    fprintf(((durable_t *)arg)->state_tmp, "src %s %llu\n", src, (unsigned long long)seq);
}

/* Output first, then the state that points at its end, replaced whole by a
 * rename: a crash anywhere leaves a state whose output is all there. */
static int state_save(durable_t *d, rsub_t *r)
{
    if (fflush(d->t->out) != 0 || (d->fsync && fdatasync(d->outfd) < 0))
        return -1;
    off_t len = lseek(d->outfd, 0, SEEK_END);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", d->state_path);
    d->state_tmp = fopen(tmp, "w");
    if (!d->state_tmp)
        return -1;
    fprintf(d->state_tmp, "tokmon-tap-state 1\noutput_bytes %lld\n", (long long)len);
    rsub_each_position(r, put_position, d);
    bool ok = fflush(d->state_tmp) == 0 && (!d->fsync || fsync(fileno(d->state_tmp)) == 0);
    ok &= fclose(d->state_tmp) == 0;
    return ok && rename(tmp, d->state_path) == 0 ? 0 : -1;
}

static int run_durable(tap_t *t, cfg_t *cfg, const char *state_path, const char *out_path,
                       rsub_start_t from, bool fsync_each, double timeout, double exit_idle,
                       int sigfd)
{
    char err[4096];
    void *ctx = zmq_ctx_new();
    buscfg_t bus;
    if (buscfg_init(&bus, ctx, cfg, false, true, err, sizeof err) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    durable_t d = { .t = t, .state_path = state_path, .out_path = out_path, .fsync = fsync_each };
    static const int kinds[] = { CFG_PEER_COLLECTD, CFG_PEER_AGGREGATOR, CFG_PEER_ALERTER };
    rsub_t *r = buscfg_subscriber(&bus, ctx, cfg, kinds, 3, (const char *const *)t->prefixes,
                                  (size_t)t->nprefixes, from, apply_msg, &d, err, sizeof err);
    long long out_len;
    if (!r || state_load(state_path, r, &out_len, err, sizeof err) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    /* what was written after the last saved state is written again */
    d.outfd = open(out_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (d.outfd < 0 || ftruncate(d.outfd, out_len) < 0 || lseek(d.outfd, 0, SEEK_END) < 0 ||
        !(t->out = fdopen(d.outfd, "a"))) {
        fprintf(stderr, NAME ": %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    if (rsub_start(r, err, sizeof err) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    int64_t deadline = timeout > 0 ? tmtime_mono_ns() + (int64_t)(timeout * 1e9) : 0;
    bool ready = false;
    int rc = 0;
    int64_t last_news = tmtime_mono_ns();
    uint64_t lost_seen = 0, gaps_seen = 0;
    for (;;) {
        if (t->count && t->printed >= t->count)
            break;
        if (deadline && tmtime_mono_ns() >= deadline) {
            rc = t->count ? 3 : 0;
            break;
        }
        zmq_pollitem_t items[40];
        int n = rsub_poll_items(r, items, 39);
        items[n++] = (zmq_pollitem_t){ NULL, sigfd, ZMQ_POLLIN, 0 };
        if (zmq_poll(items, n, 100) < 0 && zmq_errno() != EINTR)
            break;
        if (items[n - 1].revents && sig_next(sigfd) > 0)
            break;
        int got = rsub_work(r, tmtime_mono_ns() / 1000000);
        if (got < 0) {
            rc = 1; /* the output is gone */
            break;
        }
        if (got > 0)
            last_news = tmtime_mono_ns();
        const rsub_counters_t *rc_ = rsub_counters(r);
        if (rc_->lost != lost_seen) { /* never silent: a gap the spool could not fill */
            fprintf(stderr, NAME ": LOST %llu messages: the publisher's spool no longer holds them "
                            "(gaps lost so far: %llu)\n",
                    (unsigned long long)(rc_->lost - lost_seen), (unsigned long long)rc_->gaps_lost);
            lost_seen = rc_->lost;
        }
        if (rc_->gaps != gaps_seen) {
            fprintf(stderr, NAME ": %llu gaps seen so far, %llu healed by replay\n",
                    (unsigned long long)rc_->gaps, (unsigned long long)rc_->gaps_healed);
            gaps_seen = rc_->gaps;
        }
        if (exit_idle > 0 && rsub_caught_up(r) &&
            tmtime_mono_ns() - last_news >= (int64_t)(exit_idle * 1e9))
            break;
        if (got > 0 && state_save(&d, r) < 0) {
            fprintf(stderr, NAME ": cannot save %s: %s\n", state_path, strerror(errno));
            rc = 1;
            break;
        }
        if (!ready && rsub_caught_up(r)) {
            ready = true;
            fprintf(stderr, NAME ": ready\n");
        }
    }
    state_save(&d, r);
    const rsub_counters_t *c = rsub_counters(r);
    fprintf(stderr,
            NAME ": applied %llu, duplicates %llu, gaps %llu (healed %llu, lost %llu: %llu messages), "
                 "replays %llu, malformed %llu, publisher resets %llu\n",
            (unsigned long long)c->applied, (unsigned long long)c->duplicates,
            (unsigned long long)c->gaps, (unsigned long long)c->gaps_healed,
            (unsigned long long)c->gaps_lost, (unsigned long long)c->lost,
            (unsigned long long)c->replays, (unsigned long long)c->malformed,
            (unsigned long long)c->resets);
    fclose(t->out);
    rsub_destroy(&r);
    buscfg_close(&bus);
    zmq_ctx_term(ctx);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "envelope", no_argument, NULL, 'e' },
        { "endpoint", required_argument, NULL, 'E' }, { "count", required_argument, NULL, 'n' },
        { "timeout", required_argument, NULL, 't' }, { "sync", no_argument, NULL, 'S' },
        { "state", required_argument, NULL, 's' },   { "output", required_argument, NULL, 'o' },
        { "from", required_argument, NULL, 'f' },    { "fsync", no_argument, NULL, 'F' },
        { "exit-idle", required_argument, NULL, 'I' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    tap_t t = { .out = stdout };
    const char *state_path = NULL, *out_path = NULL;
    rsub_start_t from = RSUB_FROM_OLDEST;
    bool fsync_each = false;
    double exit_idle = 0;
    const char *cfg_path = NULL;
    const char *eps[MAX_EP];
    int neps = 0;
    double timeout = 0;
    bool sync = false;
    int o;
    while ((o = getopt_long(argc, argv, "c:en:t:hV", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 'c':
            cfg_path = optarg;
            break;
        case 'e':
            t.envelope = true;
            break;
        case 'E':
            if (neps == MAX_EP) {
                fprintf(stderr, NAME ": at most %d endpoints\n", MAX_EP);
                return 2;
            }
            eps[neps++] = optarg;
            break;
        case 'n':
            t.count = strtol(optarg, &end, 10);
            if (*end || t.count <= 0) {
                fprintf(stderr, NAME ": --count wants a positive number\n");
                return 2;
            }
            break;
        case 't':
            timeout = strtod(optarg, &end);
            if (*end || timeout <= 0) {
                fprintf(stderr, NAME ": --timeout wants a positive number of seconds\n");
                return 2;
            }
            break;
        case 'S':
            sync = true;
            break;
        case 's':
            state_path = optarg;
            break;
        case 'o':
            out_path = optarg;
            break;
        case 'f':
            if (!strcmp(optarg, "oldest"))
                from = RSUB_FROM_OLDEST;
            else if (!strcmp(optarg, "live"))
                from = RSUB_FROM_LIVE;
            else {
                fprintf(stderr, NAME ": --from is oldest or live\n");
                return 2;
            }
            break;
        case 'F':
            fsync_each = true;
            break;
        case 'I':
            exit_idle = strtod(optarg, &end);
            if (*end || exit_idle <= 0) {
                fprintf(stderr, NAME ": --exit-idle wants a positive number of seconds\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf(NAME " %s\n", TOKMON_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    t.prefixes = argv + optind;
    t.nprefixes = argc - optind;
    for (int i = 0; i < t.nprefixes; i++) {
        if (strlen(t.prefixes[i]) > BUS_MAX_TOPIC) {
            fprintf(stderr, NAME ": topic prefix '%s' is longer than %d bytes\n", t.prefixes[i],
                    BUS_MAX_TOPIC);
            return 2;
        }
    }

    char err[4096];
    cfg_t *cfg = NULL;
    if (state_path) {
        if (!out_path || neps) {
            fprintf(stderr, NAME ": --state needs --output FILE (and the publishers of the config, "
                            "not --endpoint)\n");
            return 2;
        }
        cfg = cfg_load(cfg_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        int sfd = sig_open();
        int rc = run_durable(&t, cfg, state_path, out_path, from, fsync_each, timeout, exit_idle, sfd);
        cfg_destroy(&cfg);
        return rc;
    }
    if (out_path && !(t.out = fopen(out_path, "a"))) {
        fprintf(stderr, NAME ": %s: %s\n", out_path, strerror(errno));
        return 1;
    }
    if (neps == 0) {
        cfg = cfg_load(cfg_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        for (int k = 0; k < CFG_NPEERS; k++)
            for (size_t i = 0; i < cfg->bus.peers[k].pub.n && neps < MAX_EP; i++)
                eps[neps++] = cfg->bus.peers[k].pub.v[i];
    }
    int sigfd = sig_open();
    void *ctx = zmq_ctx_new();
    bus_sub_t *sub = bus_sub_new(ctx, cfg ? (int)cfg->bus.rcvhwm : 100000, err, sizeof err);
    buscfg_t bus = { 0 };
    if (!sub || (cfg && (buscfg_init(&bus, ctx, cfg, false, true, err, sizeof err) < 0 ||
                         buscfg_client_socket(&bus, bus_sub_socket(sub)) < 0))) {
        fprintf(stderr, NAME ": %s\n", sub ? err : "cannot make a subscriber");
        return 1;
    }
    for (int i = 0; i < neps; i++) {
        if (bus_sub_connect(sub, eps[i]) != 0) {
            fprintf(stderr, NAME ": cannot connect to %s: %s\n", eps[i], zmq_strerror(zmq_errno()));
            return 1;
        }
    }
    if (t.nprefixes == 0)
        bus_sub_subscribe(sub, "");
    for (int i = 0; i < t.nprefixes; i++)
        bus_sub_subscribe(sub, t.prefixes[i]);
    if (sync)
        bus_sub_subscribe(sub, "stats"); /* publishers answer a stats subscription at once */

    int64_t deadline = timeout > 0 ? tmtime_mono_ns() + (int64_t)(timeout * 1e9) : 0;
    int rc = 0;
    bool ready = !sync;
    for (;;) {
        if (t.count && t.printed >= t.count)
            break;
        long wait = -1;
        if (deadline) {
            int64_t left = deadline - tmtime_mono_ns();
            if (left <= 0) {
                rc = t.count ? 3 : 0;
                break;
            }
            wait = (long)(left / 1000000) + 1;
        }
        zmq_pollitem_t items[2] = { { bus_sub_socket(sub), 0, ZMQ_POLLIN, 0 },
                                    { NULL, sigfd, ZMQ_POLLIN, 0 } };
        if (zmq_poll(items, 2, wait) < 0 && zmq_errno() != EINTR)
            break;
        if (items[1].revents && sig_next(sigfd) > 0)
            break;
        bus_msg_t m;
        int r;
        bool gone = false;
        while ((r = bus_sub_recv(sub, &m, ZMQ_DONTWAIT, err, sizeof err)) != 0) {
            if (r < 0) {
                fprintf(stderr, NAME ": skipped a message: %s\n", err);
                continue;
            }
            if (!ready) {
                ready = true;
                fprintf(stderr, NAME ": ready\n");
            }
            if (m.missed)
                fprintf(stderr, NAME ": %llu messages of %.*s missed before seq %llu\n",
                        (unsigned long long)m.missed, (int)m.src.len, m.src.p,
                        (unsigned long long)m.seq);
            if (!wanted(&t, m.topic))
                continue;
            if (!print_msg(&t, &m)) {
                gone = true;
                break;
            }
            if (t.count && t.printed >= t.count)
                break;
        }
        if (gone)
            break;
    }
    bus_sub_destroy(&sub);
    buscfg_close(&bus);
    zmq_ctx_term(ctx);
    cfg_destroy(&cfg);
    return rc;
}

/* tokmon-tap: subscribes to bus topic prefixes and prints one JSON object per
 * record, a line each, so scripts and tests can read the bus with jq. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "bus.h"
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
            "  -h, --help           this text\n"
            "  -V, --version        print the version\n");
}

typedef struct {
    bool envelope;
    long count, printed;
    char **prefixes;
    int nprefixes;
    unsigned long bad;
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
    bool ok = puts(s) >= 0 && fflush(stdout) == 0;
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

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "envelope", no_argument, NULL, 'e' },
        { "endpoint", required_argument, NULL, 'E' }, { "count", required_argument, NULL, 'n' },
        { "timeout", required_argument, NULL, 't' }, { "sync", no_argument, NULL, 'S' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    tap_t t = { 0 };
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
    if (neps == 0) {
        cfg = cfg_load(cfg_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        eps[neps++] = cfg->bus.collectd;
        eps[neps++] = cfg->bus.aggregator;
        eps[neps++] = cfg->bus.alerter;
    }
    int sigfd = sig_open();
    void *ctx = zmq_ctx_new();
    bus_sub_t *sub = bus_sub_new(ctx, cfg ? (int)cfg->bus.rcvhwm : 100000, err, sizeof err);
    if (!sub) {
        fprintf(stderr, NAME ": %s\n", err);
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
    zmq_ctx_term(ctx);
    cfg_destroy(&cfg);
    return rc;
}

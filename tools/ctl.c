/* tokmonctl: the operator's command line. keygen makes UDP signing keys and
 * CURVE key pairs; stats prints every stage's own counters from the bus. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "auth.h"
#include "bus.h"
#include "buscfg.h"
#include "cfg.h"
#include "mp2json.h"
#include "msg.h"
#include "tmtime.h"
#include "xalloc.h"

#define NAME "tokmonctl"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: " NAME " [-c FILE] COMMAND [options]\n\n"
            "Commands:\n"
            "  keygen [--id ID]        a key for signed datagrams, as a line for the\n"
            "                          [collectd] auth_keys file (give the same line to\n"
            "                          tokmon-emit --key-file); ID defaults to k1\n"
            "  keygen --curve          a CURVE key pair for the bus (curve = on)\n"
            "  stats [--json] [--timeout SEC]\n"
            "                          every running stage's own counters, from `stats`\n\n"
            "  -c, --config FILE       configuration file (default $TOKMON_CONFIG or " CFG_DEFAULT_PATH ")\n"
            "  -h, --help              this text\n"
            "  -V, --version           print the version\n");
}

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {
        { "id", required_argument, NULL, 'i' }, { "curve", no_argument, NULL, 'C' },
        { "help", no_argument, NULL, 'h' },     { NULL, 0, NULL, 0 },
    };
    const char *id = "k1";
    bool curve = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "i:h", opts, NULL)) != -1) {
        switch (o) {
        case 'i':
            id = optarg;
            break;
        case 'C':
            curve = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    if (curve) {
        char pub[41], sec[41];
        if (zmq_curve_keypair(pub, sec) != 0) {
            fprintf(stderr, NAME ": this libzmq has no CURVE support: %s\n", zmq_strerror(zmq_errno()));
            return 1;
        }
        printf("public = %s\nsecret = %s\n", pub, sec);
        return 0;
    }
    char line[256];
    if (auth_keygen(id, line, sizeof line) < 0) {
        fprintf(stderr, NAME ": key id '%s': use 1 to %d of A-Z a-z 0-9 _ . -\n", id, AUTH_MAX_KEY_ID);
        return 2;
    }
    fputs(line, stdout);
    return 0;
}

typedef struct {
    char *src;
    json_t *stats;
} seen_t;

static int cmd_stats(cfg_t *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        { "json", no_argument, NULL, 'j' }, { "timeout", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    bool as_json = false;
    double timeout = 2.0;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "jt:h", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case 'j':
            as_json = true;
            break;
        case 't':
            timeout = strtod(optarg, &end);
            if (*end || timeout <= 0) {
                fprintf(stderr, NAME ": --timeout wants seconds\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return 2;
        }
    }
    char err[512];
    void *ctx = zmq_ctx_new();
    bus_sub_t *sub = bus_sub_new(ctx, 1000, err, sizeof err);
    buscfg_t bus;
    if (!sub || buscfg_init(&bus, ctx, cfg, false, true, err, sizeof err) < 0 ||
        buscfg_client_socket(&bus, bus_sub_socket(sub)) < 0) {
        fprintf(stderr, NAME ": %s\n", err);
        return 1;
    }
    size_t neps = 0;
    for (int k = 0; k < CFG_NPEERS; k++)
        for (size_t i = 0; i < cfg->bus.peers[k].pub.n; i++, neps++)
            bus_sub_connect(sub, cfg->bus.peers[k].pub.v[i]);
    bus_sub_subscribe(sub, "stats");

    /* each publisher answers a new stats subscription at once; wait for the
     * answers until the timeout */
    seen_t seen[64];
    size_t nseen = 0;
    int64_t deadline = tmtime_mono_ns() + (int64_t)(timeout * 1e9);
    static msg_stat_t entries[MSG_MAX_STATS];
    for (;;) {
        int64_t left = deadline - tmtime_mono_ns();
        if (left <= 0)
            break;
        zmq_pollitem_t it = { bus_sub_socket(sub), 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, (long)(left / 1000000) + 1) <= 0)
            continue;
        bus_msg_t m;
        int r;
        while ((r = bus_sub_recv(sub, &m, ZMQ_DONTWAIT, err, sizeof err)) != 0) {
            msg_stats_t s;
            if (r < 0 || msg_stats_unpack(m.body, &s, entries, MSG_MAX_STATS, err, sizeof err) < 0)
                continue;
            size_t i;
            for (i = 0; i < nseen; i++)
                if (span_eq_cstr(m.src, seen[i].src))
                    break;
            if (i == nseen) {
                if (nseen == 64)
                    continue;
                seen[nseen].src = xstrndup(m.src.p, m.src.len);
                seen[nseen++].stats = NULL;
            }
            json_decref(seen[i].stats);
            seen[i].stats = mp2json_stats(&s);
        }
        if (nseen == neps)
            break; /* every publisher of [bus] answered */
    }
    bus_sub_destroy(&sub);
    buscfg_close(&bus);
    zmq_ctx_term(ctx);
    if (nseen == 0) {
        fprintf(stderr, NAME ": no stage answered on the %zu publishers of [bus] within %.1f s\n",
                neps, timeout);
        return 1;
    }
    if (as_json) {
        json_t *a = json_array();
        for (size_t i = 0; i < nseen; i++)
            json_array_append(a, seen[i].stats);
        char *s = json_dumps(a, JSON_COMPACT);
        puts(s);
        free(s);
        json_decref(a);
    } else {
        for (size_t i = 0; i < nseen; i++) {
            json_t *st = seen[i].stats;
            printf("%s (%s, pid %lld)\n", json_string_value(json_object_get(st, "daemon")),
                   seen[i].src, (long long)json_integer_value(json_object_get(st, "pid")));
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(st, "counters"), k, c)
            {
                char name[300];
                int n = snprintf(name, sizeof name, "%s", json_string_value(json_object_get(c, "name")));
                const char *lk;
                json_t *lv;
                bool first = true;
                json_object_foreach(json_object_get(c, "labels"), lk, lv)
                {
                    n += snprintf(name + n, sizeof name - (size_t)n, "%s%s=\"%s\"", first ? "{" : ",",
                                  lk, json_string_value(lv));
                    first = false;
                    if ((size_t)n >= sizeof name)
                        break;
                }
                if (!first && (size_t)n < sizeof name - 1)
                    snprintf(name + n, sizeof name - (size_t)n, "}");
                printf("  %-64s %lld\n", name, (long long)json_integer_value(json_object_get(c, "value")));
            }
        }
    }
    for (size_t i = 0; i < nseen; i++) {
        free(seen[i].src);
        json_decref(seen[i].stats);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfg_path = NULL;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            cfg_path = argv[i + 1];
            i += 2;
        } else if (!strncmp(argv[i], "--config=", 9)) {
            cfg_path = argv[i] + 9;
            i++;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf(NAME " %s\n", TOKMON_VERSION);
            return 0;
        } else {
            fprintf(stderr, NAME ": unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sargc = argc - i;
    char **sargv = argv + i;
    if (!strcmp(cmd, "keygen"))
        return cmd_keygen(sargc, sargv);
    if (!strcmp(cmd, "stats")) {
        char err[4096];
        cfg_t *cfg = cfg_load(cfg_path, err, sizeof err);
        if (!cfg) {
            fprintf(stderr, NAME ": %s\n", err);
            return 1;
        }
        int rc = cmd_stats(cfg, sargc, sargv);
        cfg_destroy(&cfg);
        return rc;
    }
    fprintf(stderr, NAME ": unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}

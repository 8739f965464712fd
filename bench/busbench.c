/* busbench: how fast a publisher puts messages on the bus, with the spool
 * off, on with group fsync every 1 s or 10 ms, or fsync after every message;
 * one subscriber in another thread receives everything (so ZeroMQ really
 * sends). Prints one parsable line. The spool goes to a directory of its own
 * under --dir, removed after.
 *   busbench --mode off|1s|10ms|each --messages N --records R [--dir /tmp] */
#include <dirent.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "bus.h"
#include "mbuf.h"
#include "msg.h"
#include "tmtime.h"

static void *zctx;
static long want;
static long got;

static void *reader(void *arg)
{
    const char *ep = arg;
    void *s = zmq_socket(zctx, ZMQ_SUB);
    int hwm = 0; /* unbounded: count every message */
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    zmq_connect(s, ep);
    int timeout = 10000;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (got < want) {
        if (zmq_msg_recv(&m, s, 0) < 0)
            break;
        if (!zmq_msg_more(&m))
            __atomic_add_fetch(&got, 1, __ATOMIC_RELAXED);
    }
    zmq_msg_close(&m);
    zmq_close(s);
    return NULL;
}

static void rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[8192];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *mode = "off", *base = "/tmp";
    long n = 20000, records = 64;
    static const struct option opts[] = {
        { "mode", required_argument, NULL, 'm' },   { "messages", required_argument, NULL, 'n' },
        { "records", required_argument, NULL, 'r' }, { "dir", required_argument, NULL, 'd' },
        { NULL, 0, NULL, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "m:n:r:d:", opts, NULL)) != -1) {
        if (o == 'm')
            mode = optarg;
        else if (o == 'n')
            n = atol(optarg);
        else if (o == 'r')
            records = atol(optarg);
        else if (o == 'd')
            base = optarg;
        else
            return 2;
    }
    /* a realistic body: records as the collector makes them */
    mbuf_t body = { 0 };
    unsigned char hdr[5] = { 0xdd, (unsigned char)(records >> 24), (unsigned char)(records >> 16),
                             (unsigned char)(records >> 8), (unsigned char)records };
    mbuf_append(&body, hdr, 5);
    for (long i = 0; i < records; i++) {
        msg_usage_t u;
        msg_usage_init(&u);
        char user[32];
        snprintf(user, sizeof user, "user-%06ld", i * 7919 % 100000);
        u.provider = SPAN_LIT("openai");
        u.model = SPAN_LIT("gpt-4o");
        u.operation = SPAN_LIT("chat");
        u.user = span_cstr(user);
        u.status = SPAN_LIT("ok");
        u.cost_source = SPAN_LIT("priced");
        u.price_version = SPAN_LIT("df73b642c7a6");
        u.input_tokens = 1200;
        u.cache_read_tokens = 1000;
        u.output_tokens = 300;
        u.ts = u.recv_ts = tmtime_now_ns();
        u.cost_nusd = 4750000;
        u.latency_us = 812500;
        msg_usage_encode(&body, &u);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/busbench.%d", base, (int)getpid());
    spool_opts_t so = { .dir = dir, .segment_bytes = 64 << 20, .segment_age_ms = 3600000,
                        .max_bytes = 4LL << 30, .max_age_ms = 86400000 };
    bool spool = strcmp(mode, "off") != 0;
    so.fsync_ms = !strcmp(mode, "each") ? 0 : !strcmp(mode, "10ms") ? 10 : 1000;
    zctx = zmq_ctx_new();
    char ep[4200], err[512];
    snprintf(ep, sizeof ep, "ipc://%s.sock", dir);
    /* defer: as the stages publish, one spool write per turn of 64 messages */
    bus_pub_opts_t po = { .sndhwm = -1, .spool = spool ? &so : NULL, .defer = true };
    bus_pub_t *pub = bus_pub_new(zctx, ep, "busbench", &po, err, sizeof err);
    if (!pub) {
        fprintf(stderr, "busbench: %s\n", err);
        return 1;
    }
    want = n;
    pthread_t th;
    pthread_create(&th, NULL, reader, ep);
    /* wait for the subscription to arrive */
    bool subscribed = false;
    for (int i = 0; i < 2500 && !subscribed; i++) {
        subscribed = bus_pub_poll_subscribed(pub, "ev.");
        if (!subscribed)
            usleep(2000);
    }
    if (!subscribed) {
        fprintf(stderr, "busbench: the subscriber did not subscribe\n");
        return 1;
    }
    int64_t t0 = tmtime_mono_ns();
    long errs = 0;
    for (long i = 0; i < n; i++) {
        if (bus_pub_send(pub, "ev.2a", MSG_KIND_USAGE, body.data, body.len, NULL, 0) < 0)
            errs++;
        if ((i & 63) == 0)
            bus_pub_work(pub, tmtime_mono_ns() / 1000000); /* group fsync, as a daemon's loop does */
    }
    bus_pub_flush(pub);
    int64_t t_pub = tmtime_mono_ns();
    pthread_join(th, NULL);
    int64_t t1 = tmtime_mono_ns();
    double secs = (double)(t1 - t0) / 1e9;
    printf("mode=%s messages=%ld records=%ld bytes=%zu received=%ld errors=%ld publish_s=%.3f "
           "total_s=%.3f msgs_per_s=%.0f records_per_s=%.0f mb_per_s=%.1f\n",
           mode, n, records, body.len, got, errs, (double)(t_pub - t0) / 1e9, secs, (double)got / secs,
           (double)got * (double)records / secs, (double)got * (double)body.len / secs / 1e6);
    bus_pub_destroy(&pub);
    zmq_ctx_term(zctx);
    rmtree(dir);
    char sock[4200];
    snprintf(sock, sizeof sock, "%s.sock", dir);
    unlink(sock);
    mbuf_free(&body);
    return got == n ? 0 : 1;
}

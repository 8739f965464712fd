/* fuzz_aggbus: libFuzzer target for the aggregator's bus input. One agg_t
 * (Europe/Paris, quotas with a 10-minute window, three budgets, a per-user
 * one with rollover; small lateness so buckets close) takes each input as a
 * bus message: byte 0 picks the topic (0xff: the rest is a whole envelope
 * for bus_envelope_decode), byte 1 the kind, how far the clock moves, whether
 * the input is live and whether the message is delivered twice; the rest is
 * the body, checked with mpr_validate and unpacked with msgpack-c as the bus
 * does. Then agg_tick and agg_flush. Checked: every record the aggregator
 * sends decodes with its own msg_*_unpack, on the topic of its kind; and
 * every 64 inputs its snapshot loads into a fresh agg_t with the same bus
 * positions, and saves again to the same records. The agg_t is recreated
 * every 2048 inputs or when its state passes 32 MiB.
 *
 * TOKMON_FUZZ_SEEDS=DIR fuzz_aggbus writes the seed corpus into DIR and
 * exits. */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agg.h"
#include "fuzz_agg.h"
#include "bus.h"
#include "log.h"
#include "mbuf.h"
#include "mpr.h"
#include "msg.h"
#include "snap.h"
#include "xalloc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#define S 1000000000LL
#define MIN (60 * S)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define T0 (1774699200LL * S) /* 2026-03-28 12:00 UTC: Paris changes its clocks that night */
#define SPAN_NS (400 * DAY)   /* the fuzzer's clock stays in [T0, T0 + SPAN_NS) */
#define RECREATE_EVERY 2048
#define SNAPSHOT_EVERY 64
#define MAX_STATE (32u << 20)

static const char ini[] = FUZZ_AGG_INI;

static cfg_t *cfg;
static stats_t *stats;
static agg_t *agg;
static unsigned runs;     /* inputs given to this agg */
static int64_t clock_ns;  /* the fuzzer's wall clock */
static uint64_t seq, sent; /* bus seq of the inputs, messages the agg sent */
static char snap_path[64], snap_path2[72];

/* ---- what the aggregator sends ------------------------------------------------- */

static int check_send(void *arg, const char *topic, const char *kind, const void *head,
                      size_t hl, const void *tail, size_t tl)
{
    (void)arg;
    char *buf = xmalloc(hl + tl + 1);
    memcpy(buf, head, hl);
    if (tl)
        memcpy(buf + hl, tail, tl);
    CHECK(mpr_validate(buf, hl + tl, BUS_MAX_DEPTH) == 0, "%s body is not one msgpack value", topic);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, buf, hl + tl, &off) == MSGPACK_UNPACK_SUCCESS && off == hl + tl,
          "%s body does not unpack", topic);
    const msgpack_object *b = &up.data;
    CHECK(b->type == MSGPACK_OBJECT_ARRAY && b->via.array.size > 0, "%s body is not an array", topic);
    char err[256];
    for (uint32_t i = 0; i < b->via.array.size; i++) {
        const msgpack_object *r = &b->via.array.ptr[i];
        if (!strcmp(kind, MSG_KIND_ROLLUP)) {
            msg_rollup_t m;
            CHECK(msg_rollup_unpack(r, &m, err, sizeof err) == 0, "rollup record: %s", err);
            CHECK(!strncmp(topic, "roll.", 5) && m.grain.len == 1 && topic[5] == m.grain.p[0] &&
                      !topic[6],
                  "rollup of grain %.*s on %s", (int)m.grain.len, m.grain.p, topic);
            CHECK(m.shard == 0 && m.shards == 1, "rollup of shard %u/%u", m.shard, m.shards);
        } else if (!strcmp(kind, MSG_KIND_QUOTA)) {
            msg_quota_t m;
            CHECK(msg_quota_unpack(r, &m, err, sizeof err) == 0, "quota record: %s", err);
            CHECK(!strcmp(topic, "quota"), "quota record on %s", topic);
        } else if (!strcmp(kind, MSG_KIND_BUDGET)) {
            msg_budget_t m;
            CHECK(msg_budget_unpack(r, &m, err, sizeof err) == 0, "budget record: %s", err);
            CHECK(!strcmp(topic, "budget"), "budget record on %s", topic);
        } else if (!strcmp(kind, MSG_KIND_FLUSH)) {
            msg_flush_t m;
            CHECK(msg_flush_unpack(r, &m, err, sizeof err) == 0, "flush record: %s", err);
            CHECK(!strcmp(topic, "metric.flush"), "flush record on %s", topic);
        } else {
            CHECK(0, "unexpected kind %s on %s", kind, topic);
        }
    }
    msgpack_unpacked_destroy(&up);
    free(buf);
    sent++;
    return 0;
}

/* ---- life ------------------------------------------------------------------------ */

static agg_t *new_agg(stats_t *st)
{
    char err[512];
    agg_opts_t o = { cfg, 0, 1, "agg@fuzz", st, check_send, NULL };
    agg_t *a = agg_new(&o, err, sizeof err);
    CHECK(a, "agg_new: %s", err);
    return a;
}

static void fresh(void)
{
    agg_destroy(&agg);
    stats_destroy(&stats);
    stats = stats_new("tokmon-aggregator", "agg@fuzz");
    agg = new_agg(stats);
    runs = 0;
    clock_ns = T0;
}

static void write_seeds(const char *dir);

static void init(void)
{
    char err[4096];
    cfg = cfg_load_string(ini, sizeof ini - 1, "fuzz.ini", NULL, err, sizeof err);
    CHECK(cfg, "config: %s", err);
    log_setup("fuzz", "fuzz", LOG_FMT_KV, LOG_LVL_ERROR); /* bad records are expected: keep quiet */
    snprintf(snap_path, sizeof snap_path, "/tmp/tokmon-fuzz-aggbus.%ld", (long)getpid());
    snprintf(snap_path2, sizeof snap_path2, "%s.again", snap_path);
    fresh();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("TOKMON_FUZZ_SEEDS");
    if (dir) {
        write_seeds(dir);
        exit(0);
    }
    return 0;
}

/* ---- snapshots --------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t n;
} rec_t;

static int rec_cmp(const void *x, const void *y)
{
    const rec_t *a = x, *b = y;
    if (a->n != b->n)
        return a->n < b->n ? -1 : 1;
    return memcmp(a->p, b->p, a->n);
}

/* The snapshot's values (between the magic line and the trailer), sorted:
 * two saves of the same state hold the same ones, maybe in another order. */
static rec_t *read_records(const char *path, char **data, size_t *nrec)
{
    FILE *f = fopen(path, "rb");
    CHECK(f, "%s: cannot open", path);
    mbuf_t b = { 0 };
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        mbuf_append(&b, chunk, n);
    fclose(f);
    const char *nl = memchr(b.data, '\n', b.len);
    CHECK(nl && b.len >= 16, "%s: no magic line", path);
    mpr_t r;
    mpr_init(&r, nl + 1, (size_t)(b.data + b.len - 16 - (nl + 1)));
    rec_t *v = NULL;
    size_t cnt = 0;
    while (r.p < r.end) {
        const uint8_t *at = r.p;
        CHECK(mpr_skip(&r, 32) == 0, "%s: a value does not parse", path);
        v = xreallocarray(v, cnt + 1, sizeof *v);
        v[cnt++] = (rec_t){ (const char *)at, (size_t)(r.p - at) };
    }
    if (cnt > 1) /* the header stays first */
        qsort(v + 1, cnt - 1, sizeof *v, rec_cmp);
    *data = b.data;
    *nrec = cnt;
    return v;
}

typedef struct {
    unsigned n;
    bool ok;
} positions_t;

static void position(void *arg, const char *src, uint64_t s)
{
    positions_t *p = arg;
    if ((p->n == 0 && !strcmp(src, "c1") && s == seq) || (p->n == 1 && !strcmp(src, "c2") && s == 7))
        p->n++;
    else
        p->ok = false;
}

static void snapshot_round_trip(void)
{
    char err[512];
    agg_position_t pos[2] = { { "c1", seq }, { "c2", 7 } };
    CHECK(agg_save(agg, snap_path, pos, 2, sent, err, sizeof err) == 0, "agg_save: %s", err);
    stats_t *st = stats_new("tokmon-aggregator", "agg@fuzz");
    agg_t *b = new_agg(st);
    positions_t p = { 0, true };
    uint64_t pub = 0;
    int rc = agg_load(b, snap_path, position, &p, &pub, err, sizeof err);
    CHECK(rc == 1, "the aggregator's own snapshot does not load (%d): %s", rc, err);
    CHECK(p.ok && p.n == 2 && pub == sent, "positions or publisher seq changed across the snapshot");
    CHECK(agg_save(b, snap_path2, pos, 2, sent, err, sizeof err) == 0, "agg_save: %s", err);
    agg_destroy(&b);
    stats_destroy(&st);
    char *d1, *d2;
    size_t n1, n2;
    rec_t *r1 = read_records(snap_path, &d1, &n1), *r2 = read_records(snap_path2, &d2, &n2);
    CHECK(n1 == n2, "the reloaded state saves %zu records, the original %zu", n2, n1);
    for (size_t i = 0; i < n1; i++)
        CHECK(!rec_cmp(&r1[i], &r2[i]), "the reloaded state saves record %zu differently", i);
    free(r1);
    free(r2);
    free(d1);
    free(d2);
    unlink(snap_path);
    unlink(snap_path2);
}

/* ---- one input --------------------------------------------------------------- */

static const int64_t steps[16] = { 0,        1 * S,    5 * S,     30 * S,  MIN,      2 * MIN,
                                   5 * MIN,  15 * MIN, HOUR,      3 * HOUR, 12 * HOUR, DAY,
                                   3 * DAY,  7 * DAY,  31 * DAY,  -MIN };

static void topic_of(uint8_t sel, char *topic, size_t cap)
{
    static const char *const odd[] = { "ev.XY", "ev.0", "metric.flush", "ev.0g",
                                       "",      "ev.",  "quota",        "ev.000" };
    if (sel < 0xf0)
        snprintf(topic, cap, "ev.%02x", sel);
    else if (sel < 0xf7)
        snprintf(topic, cap, "metric");
    else if (sel < 0xff)
        snprintf(topic, cap, "%s", odd[sel - 0xf7]);
    else
        snprintf(topic, cap, "ev.2a");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!agg)
        init();
    if (size < 2)
        return 0;
    uint8_t tsel = data[0], ksel = data[1];
    const uint8_t *body = data + 2;
    size_t blen = size - 2;
    static const char *const kinds[4] = { MSG_KIND_USAGE, MSG_KIND_SAMPLE, MSG_KIND_QUOTA, "stats" };
    char topic[16];
    topic_of(tsel, topic, sizeof topic);

    /* a private copy: the fuzzer's buffer must not be read past its end */
    uint8_t *copy = xmalloc(blen ? blen : 1);
    memcpy(copy, body, blen);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bus_msg_t m;
    bool ok;
    if (tsel == 0xff) {
        char err[256];
        ok = bus_envelope_decode(copy, blen, &up, &m, err, sizeof err) == 0;
        if (ok)
            m.topic = span_cstr(span_eq_cstr(m.kind, MSG_KIND_SAMPLE) ? "metric" : "ev.2a");
    } else {
        size_t off = 0;
        ok = blen <= BUS_MAX_MSG && mpr_validate(copy, blen, BUS_MAX_DEPTH) == 0 &&
             msgpack_unpack_next(&up, (const char *)copy, blen, &off) == MSGPACK_UNPACK_SUCCESS;
        m = (bus_msg_t){ .topic = span_cstr(topic), .src = span_cstr("c1"), .seq = seq + 1,
                         .ts = clock_ns, .kind = span_cstr(kinds[ksel & 3]), .body = &up.data };
    }
    if (ok) {
        seq++;
        agg_apply(agg, &m);
        if (ksel & 0x80)
            agg_apply(agg, &m); /* delivered twice (a replay overlapping the live stream) */
    }
    msgpack_unpacked_destroy(&up);
    free(copy);

    /* time goes on, bounded: a long run wraps back to T0 (the clock may go back) */
    int64_t t = clock_ns - T0 + steps[(ksel >> 2) & 15];
    t %= SPAN_NS;
    if (t < 0)
        t += SPAN_NS;
    clock_ns = T0 + t;
    agg_tick(agg, clock_ns, ksel & 0x40);
    CHECK(agg_flush(agg) == 0, "agg_flush failed");

    if (++runs % SNAPSHOT_EVERY == 0)
        snapshot_round_trip();
    if (runs >= RECREATE_EVERY || agg_memory(agg) > MAX_STATE)
        fresh();
    return 0;
}

/* ---- seeds ------------------------------------------------------------------- */

typedef struct {
    const char *user, *account, *project, *model, *status;
    uint64_t in, out;
    int64_t cost, ts, recv, latency_us;
} ev_t;

static void pack_usage(msgpack_packer *pk, const ev_t *e)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr(e->model && !strncmp(e->model, "claude", 6) ? "anthropic" : "openai");
    u.model = span_cstr(e->model ? e->model : "gpt-4o");
    u.operation = span_cstr("chat");
    u.user = span_cstr(e->user);
    u.account = span_cstr(e->account);
    u.project = span_cstr(e->project);
    u.status = span_cstr(e->status ? e->status : "ok");
    u.cost_source = span_cstr("priced");
    u.price_version = span_cstr("2026-03-01");
    u.input_tokens = e->in;
    u.output_tokens = e->out;
    u.requests = 1;
    u.ts = e->ts;
    u.recv_ts = e->recv ? e->recv : e->ts;
    u.cost_nusd = e->cost;
    u.latency_us = e->latency_us ? e->latency_us : -1;
    msg_usage_pack(pk, &u);
}

static void pack_sample(msgpack_packer *pk, const char *name, msg_stype_t type, double v,
                        const char *member, int64_t ts)
{
    msg_sample_t s = { .name = span_cstr(name), .type = type, .value = v,
                       .member = span_cstr(member), .rate = 1.0, .ts = ts };
    if (type == MSG_ST_C) {
        s.ntags = 1;
        s.tags[0] = (msg_tag_t){ span_cstr("env"), span_cstr("prod") };
    }
    msg_sample_pack(pk, &s);
}

static void write_seed(const char *dir, const char *name, uint8_t tsel, uint8_t ksel,
                       const mbuf_t *body)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f, "%s: cannot write", path);
    fputc(tsel, f);
    fputc(ksel, f);
    fwrite(body->data, 1, body->len, f);
    fclose(f);
}

static void write_seeds(const char *dir)
{
    mbuf_t b = { 0 };
    msgpack_packer pk;
    mbuf_packer(&b, &pk);
    int64_t t = T0 + 13 * HOUR; /* 2026-03-29 01:00 UTC: 03:00 in Paris, just after the change */

    /* a batch of calls: users, accounts, a project, the quota's vip, an error */
    const ev_t evs[] = {
        { .user = "alice", .account = "acme", .in = 900, .out = 100, .cost = 3000000, .ts = t,
          .latency_us = 120000 },
        { .user = "bob", .account = "globex", .project = "search", .model = "claude-sonnet-4",
          .in = 4000, .out = 700, .cost = 40000000, .ts = t + 10 * S, .latency_us = 800000 },
        { .user = "vip", .in = 60000, .out = 2000, .cost = 90000000, .ts = t + 20 * S },
        { .user = "alice", .status = "error", .ts = t + 30 * S, .recv = t + 31 * S },
    };
    msgpack_pack_array(&pk, 4);
    for (size_t i = 0; i < 4; i++)
        pack_usage(&pk, &evs[i]);
    write_seed(dir, "usage_batch", 0x2a, 0x00 | 4 << 2 | 0x40, &b);

    /* spending that crosses the budgets (and the per-user one's rollover) */
    mbuf_reset(&b);
    msgpack_pack_array(&pk, 3);
    const ev_t big[] = {
        { .user = "carol", .account = "acme", .in = 100, .out = 10, .cost = 450000000, .ts = t },
        { .user = "carol", .account = "acme", .in = 100, .out = 10, .cost = 600000000, .ts = t + MIN },
        { .user = "dave", .project = "search", .in = 5000, .out = 10, .cost = 10000000, .ts = t + 2 * MIN },
    };
    for (size_t i = 0; i < 3; i++)
        pack_usage(&pk, &big[i]);
    write_seed(dir, "usage_budget_crossing", 0x07, 0x00 | 11 << 2 | 0x40, &b);

    /* a late event, one from the future, and a malformed record between them */
    mbuf_reset(&b);
    msgpack_pack_array(&pk, 3);
    const ev_t odd[] = {
        { .user = "erin", .in = 10, .out = 1, .cost = 1000, .ts = t - 2 * HOUR, .recv = t },
        { .user = "erin", .in = 10, .out = 1, .cost = 1000, .ts = t + DAY, .recv = t },
    };
    pack_usage(&pk, &odd[0]);
    msgpack_pack_map(&pk, 1);
    snap_pack_str(&pk, "provider", 8);
    msgpack_pack_nil(&pk);
    pack_usage(&pk, &odd[1]);
    write_seed(dir, "usage_late_future_bad", 0xc3, 0x80 | 8 << 2, &b);

    /* the largest values the record format allows */
    mbuf_reset(&b);
    msgpack_pack_array(&pk, 3);
    const ev_t huge[] = {
        { .user = "max", .account = "acme", .in = MSG_MAX_TOKENS, .out = MSG_MAX_TOKENS,
          .cost = INT64_MAX, .ts = INT64_MAX, .recv = t, .latency_us = INT64_MAX },
        { .user = "max", .account = "acme", .in = MSG_MAX_TOKENS, .out = MSG_MAX_TOKENS,
          .cost = INT64_MAX, .ts = t, .latency_us = INT64_MAX },
        { .user = "max", .in = 1, .out = 1, .cost = 1, .ts = 1, .recv = 1 },
    };
    for (size_t i = 0; i < 3; i++)
        pack_usage(&pk, &huge[i]);
    write_seed(dir, "usage_extremes", 0x11, 0x00 | 1 << 2 | 0x40, &b);

    /* StatsD samples of every type */
    mbuf_reset(&b);
    msgpack_pack_array(&pk, 6);
    pack_sample(&pk, "api.calls", MSG_ST_C, 3, NULL, t);
    pack_sample(&pk, "queue.depth", MSG_ST_G, 17, NULL, t + S);
    pack_sample(&pk, "api.latency", MSG_ST_MS, 120.5, NULL, t + 2 * S);
    pack_sample(&pk, "payload", MSG_ST_H, 4096, NULL, t + 2 * S);
    pack_sample(&pk, "rtt", MSG_ST_D, 0.25, NULL, t + 3 * S);
    pack_sample(&pk, "users.seen", MSG_ST_S, 0, "alice", t + 3 * S);
    write_seed(dir, "samples", 0xf0, 0x01 | 3 << 2 | 0x40, &b);

    /* a whole envelope */
    mbuf_reset(&b);
    msgpack_pack_map(&pk, 6);
    snap_pack_str(&pk, "v", 1);
    msgpack_pack_int(&pk, MSG_VERSION);
    snap_pack_str(&pk, "src", 3);
    snap_pack_str(&pk, "collectd@a", 10);
    snap_pack_str(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, 42);
    snap_pack_str(&pk, "ts", 2);
    msgpack_pack_int64(&pk, t);
    snap_pack_str(&pk, "kind", 4);
    snap_pack_str(&pk, MSG_KIND_USAGE, strlen(MSG_KIND_USAGE));
    snap_pack_str(&pk, "body", 4);
    msgpack_pack_array(&pk, 1);
    pack_usage(&pk, &evs[1]);
    write_seed(dir, "envelope", 0xff, 0x00 | 5 << 2 | 0x40, &b);

    /* a body that is not an array, on the wrong topic for its kind */
    mbuf_reset(&b);
    msgpack_pack_map(&pk, 1);
    snap_pack_str(&pk, "x", 1);
    msgpack_pack_int(&pk, 1);
    write_seed(dir, "not_an_array", 0xf0, 0x00, &b);
    mbuf_free(&b);
}

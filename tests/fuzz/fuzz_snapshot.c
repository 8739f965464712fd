/* fuzz_snapshot: libFuzzer target for the aggregator's snapshot loader
 * (agg_load). Each input is loaded twice into a fresh agg_t: as a whole file,
 * and as the stream of msgpack values between the magic line and a correct
 * trailer (magic + input + "TKSNAPND" + XXH3-64), so the record loaders
 * behind the checksum (header, quota, budget, rollup, recent usage, StatsD)
 * see the input. Any result is fine (1 loaded, 0 none, -1 refused); no crash,
 * leak or undefined behaviour; a refusal says why. A snapshot that loads
 * must keep working: the agg_t answers queries, ticks a minute and a day on,
 * and saves a snapshot that loads again.
 *
 * TOKMON_FUZZ_SEEDS=DIR fuzz_snapshot writes the seed corpus into DIR (whole
 * snapshots and their bodies, from a small scenario) and exits. */
#include <fcntl.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "agg.h"
#include "fuzz_agg.h"
#include "log.h"
#include "mbuf.h"
#include "mpr.h"
#include "msg.h"
#include "query.h"
#include "snap.h"
#include "xalloc.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


#define MAGIC "tokmon-aggregator-snapshot 1\n"
#define MAGIC_LEN (sizeof MAGIC - 1)
#define S 1000000000LL
#define MIN (60 * S)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define T0 (1774699200LL * S) /* 2026-03-28 12:00 UTC */

static const char ini[] = FUZZ_AGG_INI;

static cfg_t *cfg;
static char path[64], path2[72];
static mbuf_t file, answer;

static int quiet_send(void *arg, const char *topic, const char *kind, const void *head,
                      size_t hl, const void *tail, size_t tl)
{
    (void)arg;
    (void)topic;
    (void)kind;
    (void)head;
    (void)tail;
    CHECK(hl + tl > 0, "an empty message");
    return 0;
}

static agg_t *new_agg(stats_t *st, agg_send_fn send, void *arg)
{
    char err[512];
    agg_opts_t o = { cfg, 0, 1, "agg@fuzz", st, send, arg };
    agg_t *a = agg_new(&o, err, sizeof err);
    CHECK(a, "agg_new: %s", err);
    return a;
}

static void write_file(const char *p, const void *data, size_t len)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0, "%s: cannot open", p);
    const char *d = data;
    while (len) {
        ssize_t n = write(fd, d, len);
        CHECK(n > 0, "%s: cannot write", p);
        d += n;
        len -= (size_t)n;
    }
    close(fd);
}

static void position(void *arg, const char *src, uint64_t seq)
{
    (void)seq;
    size_t n = strlen(src);
    CHECK(n >= 1 && n <= 255, "a bus position with a name of %zu bytes", n);
    (*(unsigned *)arg)++;
}

static void write_seeds(const char *dir);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[4096];
    cfg = cfg_load_string(ini, sizeof ini - 1, "fuzz.ini", NULL, err, sizeof err);
    CHECK(cfg, "config: %s", err);
    log_setup("fuzz", "fuzz", LOG_FMT_KV, LOG_LVL_ERROR); /* zone and name warnings: keep quiet */
    snprintf(path, sizeof path, "/tmp/tokmon-fuzz-snapshot.%ld", (long)getpid());
    snprintf(path2, sizeof path2, "%s.again", path);
    const char *dir = getenv("TOKMON_FUZZ_SEEDS");
    if (dir) {
        write_seeds(dir);
        exit(0);
    }
    return 0;
}

/* A loaded state keeps working: time goes on, queries are answered, and its
 * snapshot loads again. */
static void exercise(agg_t *a, stats_t *st)
{
    static const char *const queries[] = {
        "\x82\xa1q\xa5quota\xa2id\xa5" "alice",
        "\x83\xa1q\xa5quota\xa7subject\xa7" "account\xa2id\xa4" "acme",
        "\x81\xa1q\xa7" "budgets",
        "\x83\xa1q\xa3top\xa2" "by\xa4user\xa6window\xcd\x0e\x10",
        "\x82\xa1q\xa3top\xa2" "by\xa5model",
        "\x82\xa1q\xa5usage\xa2" "by\xa7project",
    };
    int64_t wm = agg_watermark(a);
    int64_t now = wm > T0 && wm < T0 + 3650 * DAY ? wm + 90 * S : T0;
    for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
        query_answer(a, queries[i], strlen(queries[i]), now, &answer);
        CHECK(mpr_validate(answer.data, answer.len, 16) == 0, "query %zu: not one value", i);
    }
    agg_tick(a, now, true);
    agg_flush(a);
    agg_tick(a, now + DAY, true);
    agg_flush(a);
    char err[512];
    agg_position_t pos = { "c1", 1 };
    CHECK(agg_save(a, path2, &pos, 1, 3, err, sizeof err) == 0, "agg_save: %s", err);
    agg_t *b = new_agg(st, quiet_send, NULL);
    unsigned npos = 0;
    uint64_t pub = 0;
    int rc = agg_load(b, path2, position, &npos, &pub, err, sizeof err);
    CHECK(rc == 1 && npos == 1 && pub == 3, "a loaded state saves a snapshot that does not load "
                                            "(%d): %s", rc, err);
    agg_destroy(&b);
    unlink(path2);
}

/* The input file is created once and rewritten in place: a truncation to
 * zero would make ext4 flush it at every close. */
static int input_fd = -1;

static void load(const void *data, size_t len)
{
    if (input_fd < 0) {
        input_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHECK(input_fd >= 0, "%s: cannot open", path);
    }
    CHECK(pwrite(input_fd, data, len, 0) == (ssize_t)len, "%s: cannot write", path);
    CHECK(ftruncate(input_fd, (off_t)len) == 0, "%s: cannot truncate", path);
    stats_t *st = stats_new("tokmon-aggregator", "agg@fuzz");
    agg_t *a = new_agg(st, quiet_send, NULL);
    char err[1024];
    unsigned npos = 0;
    uint64_t pub = 7;
    int rc = agg_load(a, path, position, &npos, &pub, err, sizeof err);
    CHECK(rc >= -1 && rc <= 1, "agg_load returned %d", rc);
    if (rc == 1)
        exercise(a, st);
    else
        CHECK(err[0] || rc == 0, "a refusal without a reason");
    agg_destroy(&a);
    stats_destroy(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the input as the whole file */
    load(data, size);

    /* the input as the values between the magic line and a good trailer */
    mbuf_reset(&file);
    mbuf_append(&file, MAGIC, MAGIC_LEN);
    mbuf_append(&file, data, size);
    uint64_t h = XXH3_64bits(file.data, file.len);
    char trailer[16];
    memcpy(trailer, "TKSNAPND", 8);
    for (int i = 0; i < 8; i++)
        trailer[8 + i] = (char)(h >> (56 - 8 * i));
    mbuf_append(&file, trailer, sizeof trailer);
    load(file.data, file.len);
    return 0;
}

/* ---- seeds ------------------------------------------------------------------- */

static void apply_usage(agg_t *a, const char *user, const char *account, const char *project,
                        const char *model, uint64_t in, int64_t cost, int64_t ts, int64_t recv)
{
    mbuf_t b = { 0 };
    msgpack_packer pk;
    mbuf_packer(&b, &pk);
    msgpack_pack_array(&pk, 1);
    msg_usage_t u;
    msg_usage_init(&u);
    u.provider = span_cstr("openai");
    u.model = span_cstr(model);
    u.operation = span_cstr("chat");
    u.user = span_cstr(user);
    u.account = span_cstr(account);
    u.project = span_cstr(project);
    u.status = span_cstr("ok");
    u.cost_source = span_cstr("priced");
    u.input_tokens = in;
    u.output_tokens = in / 10;
    u.requests = 1;
    u.ts = ts;
    u.recv_ts = recv;
    u.cost_nusd = cost;
    u.latency_us = 1000 + (int64_t)in;
    msg_usage_pack(&pk, &u);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, b.data, b.len, &off) == MSGPACK_UNPACK_SUCCESS, "unpack");
    bus_msg_t m = { .topic = span_cstr("ev.00"), .src = span_cstr("c1"), .seq = 1,
                    .kind = span_cstr(MSG_KIND_USAGE), .body = &up.data };
    agg_apply(a, &m);
    msgpack_unpacked_destroy(&up);
    mbuf_free(&b);
}

static void apply_samples(agg_t *a, int64_t ts)
{
    mbuf_t b = { 0 };
    msgpack_packer pk;
    mbuf_packer(&b, &pk);
    msgpack_pack_array(&pk, 4);
    const msg_sample_t s[4] = {
        { .name = span_cstr("api.calls"), .type = MSG_ST_C, .value = 2, .rate = 0.5, .ts = ts },
        { .name = span_cstr("queue"), .type = MSG_ST_G, .value = 9, .rate = 1, .ts = ts },
        { .name = span_cstr("lat"), .type = MSG_ST_MS, .value = 12.5, .rate = 1, .ts = ts },
        { .name = span_cstr("seen"), .type = MSG_ST_S, .member = span_cstr("bob"), .rate = 1,
          .ts = ts },
    };
    for (int i = 0; i < 4; i++)
        msg_sample_pack(&pk, &s[i]);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, b.data, b.len, &off) == MSGPACK_UNPACK_SUCCESS, "unpack");
    bus_msg_t m = { .topic = span_cstr("metric"), .src = span_cstr("c1"), .seq = 2,
                    .kind = span_cstr(MSG_KIND_SAMPLE), .body = &up.data };
    agg_apply(a, &m);
    msgpack_unpacked_destroy(&up);
    mbuf_free(&b);
}

/* Saves a's state as two seeds: the whole file, and the body between the
 * magic line and the trailer. */
static void save_seed(agg_t *a, const char *dir, const char *name)
{
    char err[512], p[4096];
    agg_position_t pos[2] = { { "collectd@a", 1234 }, { "collectd@b", 99 } };
    CHECK(agg_save(a, path, pos, 2, 17, err, sizeof err) == 0, "agg_save: %s", err);
    FILE *f = fopen(path, "rb");
    CHECK(f, "%s", path);
    mbuf_reset(&file);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        mbuf_append(&file, chunk, n);
    fclose(f);
    unlink(path);
    CHECK(file.len >= MAGIC_LEN + 16, "a short snapshot");
    snprintf(p, sizeof p, "%s/full_%s", dir, name);
    write_file(p, file.data, file.len);
    snprintf(p, sizeof p, "%s/body_%s", dir, name);
    write_file(p, file.data + MAGIC_LEN, file.len - MAGIC_LEN - 16);
}

static void write_seeds(const char *dir)
{
    stats_t *st = stats_new("tokmon-aggregator", "agg@fuzz");
    agg_t *a = new_agg(st, quiet_send, NULL);
    save_seed(a, dir, "empty");

    int64_t t = T0 + 13 * HOUR; /* just after Paris changed its clocks */
    apply_usage(a, "alice", "acme", "search", "gpt-4o", 900, 3000000, t, t);
    apply_usage(a, "bob", "globex", NULL, "gpt-4o-mini", 4000, 400000000, t + 10 * S, t + 11 * S);
    apply_usage(a, "bob", NULL, "search", "gpt-4o-mini", 800, 300000000, t + MIN, t + MIN);
    apply_usage(a, "vip", "acme", NULL, "gpt-4o", 70000, 2100000000, t + 2 * MIN, t + 2 * MIN);
    apply_samples(a, t + 5 * S);
    agg_tick(a, t + 30 * S, true);
    agg_flush(a);
    save_seed(a, dir, "open_buckets");

    /* buckets closed, a late event amending one, the rollover week past */
    agg_tick(a, t + 3 * MIN, true);
    apply_usage(a, "alice", "acme", NULL, "gpt-4o", 50, 1000, t + 2 * MIN + 5 * S, t + 3 * MIN);
    apply_samples(a, t + 3 * MIN);
    agg_tick(a, t + 3 * MIN + 2 * S, true);
    agg_flush(a);
    save_seed(a, dir, "closed_amended");
    apply_usage(a, "bob", NULL, NULL, "gpt-4o", 10, 1000, t + 8 * DAY, t + 8 * DAY);
    agg_tick(a, t + 8 * DAY + MIN, true);
    agg_flush(a);
    save_seed(a, dir, "next_week");
    agg_destroy(&a);
    stats_destroy(&st);
}

/* fuzz_query: libFuzzer target for the aggregator's query socket
 * (query_answer). One agg_t holds a small, fixed state (users, accounts,
 * projects and models over two hours, quotas and budgets, some over their
 * limits). Each input is one request; an input that starts with 0xfe and 8
 * more bytes moves the clock the question is asked at, anywhere within five
 * years either side. Checked: every answer is exactly one msgpack map with a
 * boolean "ok"; a false one carries a non-empty string "error", a true one
 * no "error"; no crash, leak or undefined behaviour. A question asked within
 * the state's day (New York) leaves the state as it was (its snapshot is the
 * same bytes); one asked later may roll periods over, as agg_tick would, so
 * the state is loaded again from its snapshot after it. */
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agg.h"
#include "fuzz_agg.h"
#include "log.h"
#include "mbuf.h"
#include "mpr.h"
#include "msg.h"
#include "query.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define S 1000000000LL
#define MIN (60 * S)
#define T0 (1774699200LL * S) /* 2026-03-28 12:00 UTC, 08:00 in New York */
#define CHECK_STATE_EVERY 256

static const char ini[] =
    "[global]\ntimezone = America/New_York\n"
    "[aggregator]\nlateness = 1m\nclose_delay = 1s\nhistory = 3h\n"
    "[quota]\nwindow = 30m\ndaily_tokens = 4000\nmonthly_tokens = 100000\nwindow_tokens = 2000\n"
    "daily_usd = 0.5\nwarn_pct = 60\n"
    "[quota.user.u7]\ndaily_tokens = 1000000\n"
    "[quota.account]\ndaily_usd = 2\n"
    "[budget.all]\nscope = global\nperiod = day\nlimit_usd = 1\n"
    "[budget.month]\nscope = global\nperiod = month\nlimit_usd = 20\n"
    "[budget.peruser]\nscope = user\nperiod = week\nlimit_usd = 0.2\nrollover = on\n"
    "rollover_cap_usd = 0.1\n"
    "[budget.gpt]\nscope = model:gpt-4o\nperiod = day\nlimit_usd = 0.3\n";

static cfg_t *cfg;
static stats_t *stats;
static agg_t *agg;
static mbuf_t answer, file_a, file_b;
static uint64_t inputs;
static char snap_a[64], snap_b[72];

static int drop_send(void *arg, const char *topic, const char *kind, const void *head, size_t hl,
                     const void *tail, size_t tl)
{
    (void)arg;
    (void)topic;
    (void)kind;
    (void)head;
    (void)tail;
    (void)hl;
    (void)tl;
    return 0;
}

/* The fixed state: 40 users in 6 accounts and 3 projects, one call a
 * minute each for two hours, on two models, a few of them errors. */
static void build_state(void)
{
    static const char *const models[] = { "gpt-4o", "claude-sonnet-4-5" };
    static const char *const providers[] = { "openai", "anthropic" };
    uint64_t seq = 0;
    for (int minute = 0; minute < 120; minute++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 40);
        for (int i = 0; i < 40; i++) {
            char user[8], account[8], project[8];
            snprintf(user, sizeof user, "u%d", i);
            snprintf(account, sizeof account, "a%d", i % 6);
            snprintf(project, sizeof project, "p%d", i % 3);
            msg_usage_t u;
            msg_usage_init(&u);
            u.provider = span_cstr(providers[i % 2]);
            u.model = span_cstr(models[i % 2]);
            u.operation = span_cstr(i % 5 ? "chat" : "embeddings");
            u.user = span_cstr(user);
            u.account = span_cstr(account);
            u.project = span_cstr(project);
            u.status = span_cstr((minute + i) % 17 ? "ok" : "error");
            u.cost_source = span_cstr("priced");
            u.input_tokens = 10u + (uint64_t)i * 3;
            u.output_tokens = 5u + (uint64_t)minute;
            u.requests = 1;
            u.ts = u.recv_ts = T0 + minute * MIN + i * S;
            u.cost_nusd = 100000LL * (1 + i % 7);
            u.latency_us = 1000 + 37 * i;
            u.ttft_us = 200 + 11 * i;
            msg_usage_pack(&pk, &u);
        }
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        CHECK(msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS,
              "the fixed state does not unpack");
        bus_msg_t m = { .topic = span_cstr("ev.00"), .src = span_cstr("c1"), .seq = ++seq,
                        .kind = span_cstr(MSG_KIND_USAGE), .body = &up.data };
        agg_apply(agg, &m);
        msgpack_unpacked_destroy(&up);
        msgpack_sbuffer_destroy(&sb);
        agg_tick(agg, T0 + (minute + 1) * MIN, true);
        CHECK(agg_flush(agg) == 0, "agg_flush");
    }
}

/* A new, empty agg_t in place of the old one. */
static void new_agg(void)
{
    char err[512];
    agg_destroy(&agg);
    stats_destroy(&stats);
    stats = stats_new("tokmon-aggregator", "agg@fuzz");
    agg_opts_t o = { cfg, 0, 1, "agg@fuzz", stats, drop_send, NULL };
    agg = agg_new(&o, err, sizeof err);
    CHECK(agg, "agg_new: %s", err);
}

static void no_position(void *arg, const char *src, uint64_t seq)
{
    (void)arg;
    (void)src;
    (void)seq;
}

/* The fixed state again, from its snapshot (20 times faster than building
 * it), and saved again. */
static void fresh_state(void)
{
    char err[512];
    new_agg();
    uint64_t pub;
    CHECK(agg_load(agg, snap_a, no_position, NULL, &pub, err, sizeof err) == 1,
          "the fixed state's snapshot does not load: %s", err);
    /* what check_state_unchanged compares with: a loaded state may save its
     * records in another order */
    agg_position_t pos = { "c1", 120 };
    CHECK(agg_save(agg, snap_a, &pos, 1, 0, err, sizeof err) == 0, "agg_save: %s", err);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[4096];
    cfg = cfg_load_string(ini, sizeof ini - 1, "fuzz.ini", NULL, err, sizeof err);
    CHECK(cfg, "config: %s", err);
    log_setup("fuzz", "fuzz", LOG_FMT_KV, LOG_LVL_ERROR);
    new_agg();
    build_state();
    snprintf(snap_a, sizeof snap_a, "/tmp/tokmon-fuzz-query.%ld", (long)getpid());
    snprintf(snap_b, sizeof snap_b, "%s.after", snap_a);
    agg_position_t pos = { "c1", 120 };
    CHECK(agg_save(agg, snap_a, &pos, 1, 0, err, sizeof err) == 0, "agg_save: %s", err);
    return 0;
}

static void slurp(const char *p, mbuf_t *b)
{
    FILE *f = fopen(p, "rb");
    CHECK(f, "%s: cannot open", p);
    b->len = 0;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        mbuf_append(b, chunk, n);
    fclose(f);
}

/* Questions leave the state as it was: its snapshot is the same bytes. */
static void check_state_unchanged(void)
{
    char err[512];
    agg_position_t pos = { "c1", 120 };
    CHECK(agg_save(agg, snap_b, &pos, 1, 0, err, sizeof err) == 0, "agg_save: %s", err);
    slurp(snap_a, &file_a);
    slurp(snap_b, &file_b);
    CHECK(file_a.len == file_b.len && !memcmp(file_a.data, file_b.data, file_a.len),
          "a question changed the aggregator's state");
    unlink(snap_b);
}

static const msgpack_object *field(const msgpack_object *m, const char *k)
{
    size_t kl = strlen(k);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *key = &m->via.map.ptr[i].key;
        if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == kl &&
            !memcmp(key->via.str.ptr, k, kl))
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t now = T0 + 130 * MIN;
    if (size > 8 && data[0] == 0xfe) { /* a clock of the input's choosing */
        int64_t d;
        memcpy(&d, data + 1, sizeof d);
        now += d % (5 * 366 * 24 * 60 * MIN);
        data += 9;
        size -= 9;
    }
    /* until 18:00 UTC the day, week and month of T0 hold in New York */
    bool same_day = now >= T0 - 6 * 60 * MIN && now < T0 + 6 * 60 * MIN;
    query_answer(agg, data, size, now, &answer);
    CHECK(mpr_validate(answer.data, answer.len, 16) == 0, "the answer is not one msgpack value");
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    CHECK(msgpack_unpack_next(&up, answer.data, answer.len, &off) == MSGPACK_UNPACK_SUCCESS &&
              off == answer.len,
          "the answer does not unpack");
    const msgpack_object *m = &up.data;
    CHECK(m->type == MSGPACK_OBJECT_MAP, "the answer is not a map");
    const msgpack_object *ok = field(m, "ok"), *error = field(m, "error");
    CHECK(ok && ok->type == MSGPACK_OBJECT_BOOLEAN, "the answer has no boolean ok");
    if (ok->via.boolean)
        CHECK(!error, "an answer both ok and with an error");
    else
        CHECK(error && error->type == MSGPACK_OBJECT_STR && error->via.str.size > 0,
              "a refusal without a reason");
    msgpack_unpacked_destroy(&up);
    if (!same_day)
        fresh_state();
    else if (++inputs % CHECK_STATE_EVERY == 0)
        check_state_unchanged();
    return 0;
}

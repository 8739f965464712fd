/* fuzz_ingest: libFuzzer target for the whole collector path short of the
 * sockets: a datagram through ingest_datagram (signatures optional, with a
 * known key so signed inputs can be built), every emitted record packed and
 * checked back with the bus codec, and the counters' invariant: every record
 * received is accepted, rejected with a reason, or dropped. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "ingest.h"
#include "log.h"
#include "mbuf.h"
#include "msg.h"
#include "xalloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cfg_t *cfg;
static prices_t *prices;
static auth_keys_t *keys;
static stats_t *stats;
static ingest_t *in;
static mbuf_t mb;

static void check_usage(void *arg, unsigned shard, const msg_usage_t *u)
{
    (void)arg;
    if (shard > 255)
        abort();
    mbuf_reset(&mb);
    msgpack_packer pk;
    mbuf_packer(&mb, &pk);
    msg_usage_pack(&pk, u);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    char err[256];
    msg_usage_t back;
    if (msgpack_unpack_next(&up, mb.data, mb.len, &off) != MSGPACK_UNPACK_SUCCESS ||
        msg_usage_unpack(&up.data, &back, err, sizeof err) < 0) {
        fprintf(stderr, "emitted a record the bus codec refuses: %s\n", err);
        abort();
    }
    if (back.cost_nusd != u->cost_nusd || back.input_tokens != u->input_tokens)
        abort();
    msgpack_unpacked_destroy(&up);
}

static void check_sample(void *arg, const msg_sample_t *s, int64_t recv_ns)
{
    (void)recv_ns;
    (void)arg;
    mbuf_reset(&mb);
    msgpack_packer pk;
    mbuf_packer(&mb, &pk);
    msg_sample_pack(&pk, s);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    char err[256];
    msg_sample_t back;
    if (msgpack_unpack_next(&up, mb.data, mb.len, &off) != MSGPACK_UNPACK_SUCCESS ||
        msg_sample_unpack(&up.data, &back, err, sizeof err) < 0) {
        fprintf(stderr, "emitted a sample the bus codec refuses: %s\n", err);
        abort();
    }
    msgpack_unpacked_destroy(&up);
}

static int64_t sum;
static void add(const char *name, const char *labels, int64_t v, bool gauge, void *arg)
{
    (void)labels;
    (void)gauge;
    (void)arg;
    if (!strcmp(name, "ingest_rejected_total") || !strcmp(name, "ingest_dropped_total") ||
        !strcmp(name, "ingest_accepted_total"))
        sum += v;
}

static void init(void)
{
    char err[1024];
    static const char ini[] = "[global]\nstate_dir=/tmp\n[collectd]\nprices=x\nauth=optional\n"
                              "auth_keys=k\nmax_line=4096\n[price.default]\ninput_cost_per_token=0.000001\n"
                              "output_cost_per_token=0.000002\n";
    cfg = cfg_load_string(ini, sizeof ini - 1, "fuzz.ini", NULL, err, sizeof err);
    /* a small table: the real one is exercised by the tests; this keeps the fuzzer fast */
    static const char table[] =
        "{\"gpt-4o\":{\"litellm_provider\":\"openai\",\"input_cost_per_token\":2.5e-06,"
        "\"output_cost_per_token\":1e-05,\"cache_read_input_token_cost\":1.25e-06},"
        "\"gemini/gemini-2.5-pro\":{\"litellm_provider\":\"gemini\",\"input_cost_per_token\":1.25e-06,"
        "\"output_cost_per_token\":1e-05,\"input_cost_per_token_above_200k_tokens\":2.5e-06,"
        "\"output_cost_per_token_above_200k_tokens\":1.5e-05}}";
    prices = prices_load_buf(table, sizeof table - 1, "table", cfg, err, sizeof err);
    static const char k[] = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
    keys = auth_keys_parse(k, sizeof k - 1, "keys", err, sizeof err);
    if (!cfg || !prices || !keys)
        abort();
    stats = stats_new("fuzz", "fuzz");
    ingest_sink_t sink = { check_usage, check_sample, NULL };
    in = ingest_new(cfg, prices, keys, stats, &sink);
    log_setup("fuzz", "fuzz", LOG_FMT_KV, LOG_LVL_ERROR); /* rejections are expected: keep quiet */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!in)
        init();
    char *copy = xmalloc(size ? size : 1);
    memcpy(copy, data, size);
    ingest_datagram(in, copy, size, NULL, 0, 1795000000000000000LL);
    free(copy);
    sum = 0;
    stats_each(stats, add, NULL);
    if (sum != *stats_counter(stats, "ingest_received_total", NULL)) {
        fprintf(stderr, "counters: received %lld but accepted+rejected+dropped %lld\n",
                (long long)*stats_counter(stats, "ingest_received_total", NULL), (long long)sum);
        abort();
    }
    return 0;
}

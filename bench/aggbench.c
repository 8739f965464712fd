/* aggbench: the aggregator's state without sockets, for make bench-aggregator.
 *
 *   aggbench memory N [--rollup-users on|off] [--dir /tmp]
 *       one agg_t with a default-like config takes 3 calls from each of N
 *       distinct users; prints its RSS, agg_memory() and the split between
 *       quotas, budgets and rollups, then the time and size of a snapshot
 *       and the RSS after loading it into a fresh agg_t.
 *   aggbench rate SECONDS [--rounds R] [--users U] [--records M]
 *       the same pre-built bus messages (256 usage records each) decoded
 *       only (bus_envelope_decode + msg_usage_unpack: what any consumer
 *       pays) and applied by an agg_t, alternately, R rounds of SECONDS
 *       each; prints the rate of each round and the medians.
 *
 * Output: one `key=value ...` line per figure, for bench/aggregator.sh. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agg.h"
#include "bus.h"
#include "fnv.h"
#include "mbuf.h"
#include "msg.h"
#include "tmtime.h"
#include "xalloc.h"

#define S 1000000000LL
#define MIN (60 * S)
#define BATCH 256 /* records in one bus message */

/* ---- measuring ------------------------------------------------------------- */

/* VmRSS or VmHWM of this process, in KiB */
static long proc_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') {
            v = atol(line + n + 1);
            break;
        }
    fclose(f);
    return v;
}

static double secs(int64_t ns)
{
    return (double)ns / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- the records ----------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng01(void)
{
    return (double)(rng() >> 11) / 9007199254740992.0;
}

/* roughly log-uniform in [lo, hi] */
static uint64_t log_uniform(double lo, double hi)
{
    return (uint64_t)exp(log(lo) + rng01() * (log(hi) - log(lo)));
}

static const struct {
    const char *provider, *model;
    int64_t in_nusd, out_nusd; /* per token */
} models[] = {
    { "openai", "gpt-4o", 2500, 10000 },
    { "openai", "gpt-4o-mini", 150, 600 },
    { "anthropic", "claude-sonnet-4-5", 3000, 15000 },
    { "anthropic", "claude-haiku-4-5", 1000, 5000 },
    { "gemini", "gemini-2.5-flash", 300, 2500 },
};
#define NMODELS (sizeof models / sizeof models[0])
#define NPROJECTS 10

/* One call of user u (account a of na, project of the user), received at
 * recv: what the collector would publish for it. Strings live in buf. */
typedef struct {
    char user[24], account[24], project[24], request_id[40];
} strs_t;

static void make_usage(msg_usage_t *x, strs_t *s, uint32_t user, uint32_t naccounts, uint32_t nusers,
                       int64_t recv)
{
    msg_usage_init(x);
    snprintf(s->user, sizeof s->user, "user-%06u", user);
    snprintf(s->account, sizeof s->account, "acct-%04u",
             (uint32_t)((uint64_t)user * naccounts / nusers));
    snprintf(s->project, sizeof s->project, "proj-%02u", user % NPROJECTS);
    snprintf(s->request_id, sizeof s->request_id, "req-%016llx", (unsigned long long)rng());
    unsigned m = (unsigned)(rng() % NMODELS);
    x->provider = span_cstr(models[m].provider);
    x->model = span_cstr(models[m].model);
    x->operation = SPAN_LIT("chat");
    x->user = span_cstr(s->user);
    x->account = span_cstr(s->account);
    x->project = span_cstr(s->project);
    x->request_id = span_cstr(s->request_id);
    x->cost_source = SPAN_LIT("priced");
    x->price_version = SPAN_LIT("df73b642c7a6");
    bool error = rng() % 50 == 0;
    x->status = error ? SPAN_LIT("error") : SPAN_LIT("ok");
    if (error) {
        x->error_type = SPAN_LIT("rate_limit");
        x->http_status = 429;
    } else {
        x->http_status = 200;
        x->input_tokens = log_uniform(100, 20000);
        x->cache_read_tokens = rng() % 2 ? x->input_tokens / 2 : 0;
        x->output_tokens = log_uniform(20, 2000);
        x->cost_nusd = (int64_t)x->input_tokens * models[m].in_nusd +
                       (int64_t)x->output_tokens * models[m].out_nusd;
        x->ttft_us = (int64_t)log_uniform(100000, 2000000);
    }
    x->latency_us = (int64_t)log_uniform(200000, 20000000);
    x->requests = 1;
    x->recv_ts = recv;
    x->ts = recv - 20 * 1000000LL; /* sent 20 ms before it arrived */
}

/* ---- bus messages ------------------------------------------------------------ */

/* A bus envelope as the collector sends it, with where its records' ts and
 * recv_ts sit (8 bytes big-endian each) so a later pass can move them on. */
typedef struct {
    char *data;
    size_t len;
    char topic[8];
    int64_t now; /* the latest receive time in the stream once this message is out */
    uint32_t *toff;
    uint32_t ntoff;
} bmsg_t;

typedef struct {
    mbuf_t body; /* records */
    uint32_t n;
    char topic[8];
    uint32_t *toff; /* offsets in body */
    uint32_t ntoff, captoff;
    uint64_t seq;
    int64_t now;
} batcher_t;

static void put_be64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (char)(v & 0xff);
}

static uint64_t get_be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (unsigned char)p[i];
    return v;
}

/* Notes where the value of key (an int64 field written as 0xcf + 8 bytes)
 * sits in the record just encoded: the key, the tag and the value itself
 * are searched for, so other bytes cannot match by chance. */
static void note_time(batcher_t *b, const char *rec, size_t reclen, size_t off, const char *key,
                      size_t keylen, int64_t value)
{
    char pat[24];
    memcpy(pat, key, keylen);
    pat[keylen] = (char)0xcf;
    put_be64(pat + keylen + 1, (uint64_t)value);
    const char *k = memmem(rec, reclen, pat, keylen + 9);
    if (!k) {
        fprintf(stderr, "aggbench: cannot find the %.*s field of a record\n", (int)keylen - 1, key + 1);
        exit(1);
    }
    if (b->ntoff == b->captoff) {
        b->captoff = b->captoff ? b->captoff * 2 : 2 * BATCH;
        b->toff = xreallocarray(b->toff, b->captoff, sizeof *b->toff);
    }
    b->toff[b->ntoff++] = (uint32_t)(off + (size_t)(k - rec) + keylen + 1);
}

static void batch_add(batcher_t *b, const msg_usage_t *u)
{
    if (!b->n)
        snprintf(b->topic, sizeof b->topic, "ev.%02x",
                 (unsigned)(fnv1a64(u->user.p, u->user.len) & 0xff));
    size_t off = b->body.len;
    msg_usage_encode(&b->body, u);
    note_time(b, b->body.data + off, b->body.len - off, off, "\xa2ts", 3, u->ts);
    note_time(b, b->body.data + off, b->body.len - off, off, "\xa7recv_ts", 8, u->recv_ts);
    b->n++;
    if (u->recv_ts > b->now)
        b->now = u->recv_ts;
}

/* The batch as one envelope {v, src, seq, ts, kind, body}; the batcher is
 * empty after. */
static void batch_take(batcher_t *b, bmsg_t *out)
{
    mbuf_t env = { 0 };
    msgpack_packer pk;
    mbuf_packer(&env, &pk);
    msgpack_pack_map(&pk, 6);
    msgpack_pack_str_with_body(&pk, "v", 1);
    msgpack_pack_uint32(&pk, MSG_VERSION);
    msgpack_pack_str_with_body(&pk, "src", 3);
    msgpack_pack_str_with_body(&pk, "collectd@bench", 14);
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, ++b->seq);
    msgpack_pack_str_with_body(&pk, "ts", 2);
    msgpack_pack_int64(&pk, b->now);
    msgpack_pack_str_with_body(&pk, "kind", 4);
    msgpack_pack_str_with_body(&pk, MSG_KIND_USAGE, strlen(MSG_KIND_USAGE));
    msgpack_pack_str_with_body(&pk, "body", 4);
    unsigned char hdr[5] = { 0xdd, (unsigned char)(b->n >> 24), (unsigned char)(b->n >> 16),
                             (unsigned char)(b->n >> 8), (unsigned char)b->n };
    mbuf_append(&env, hdr, sizeof hdr);
    size_t base = env.len;
    mbuf_append(&env, b->body.data, b->body.len);
    out->data = env.data;
    out->len = env.len;
    memcpy(out->topic, b->topic, sizeof out->topic);
    out->now = b->now;
    out->ntoff = b->ntoff;
    out->toff = xmalloc((b->ntoff ? b->ntoff : 1) * sizeof *out->toff);
    for (uint32_t i = 0; i < b->ntoff; i++)
        out->toff[i] = b->toff[i] + (uint32_t)base;
    mbuf_reset(&b->body);
    b->n = b->ntoff = 0;
}

static void bmsg_free(bmsg_t *m)
{
    free(m->data);
    free(m->toff);
}

/* Moves every time of m on by delta. */
static void bmsg_shift(bmsg_t *m, int64_t delta)
{
    for (uint32_t i = 0; i < m->ntoff; i++) {
        char *p = m->data + m->toff[i];
        put_be64(p, get_be64(p) + (uint64_t)delta);
    }
    m->now += delta;
}

/* ---- the aggregator ------------------------------------------------------------ */

typedef struct {
    uint64_t messages, records, bytes;
} sent_t;

static int count_send(void *arg, const char *topic, const char *kind, const void *head,
                      size_t headlen, const void *tail, size_t taillen)
{
    (void)topic, (void)kind, (void)tail;
    sent_t *s = arg;
    s->messages++;
    const unsigned char *h = head;
    if (headlen == 5 && h[0] == 0xdd)
        s->records += (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    s->bytes += headlen + taillen;
    return 0;
}

/* A default-like config (the [quota] and budgets of deploy/local plus a
 * 5-hour window and a per-user monthly budget). */
static cfg_t *bench_cfg(bool rollup_users)
{
    char ini[2048], err[1024];
    snprintf(ini, sizeof ini,
             "[global]\ntimezone = UTC\n"
             "[aggregator]\nhistory = 24h\nrollup_users = %s\n"
             "[quota]\nwindow = 5h\ndaily_tokens = 100000\nmonthly_tokens = 2000000\n"
             "window_tokens = 60000\n"
             "[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 5000\n"
             "[budget.user_monthly]\nscope = user\nperiod = month\nlimit_usd = 50\n",
             rollup_users ? "on" : "off");
    cfg_t *cfg = cfg_load_string(ini, strlen(ini), "aggbench.ini", NULL, err, sizeof err);
    if (!cfg) {
        fprintf(stderr, "aggbench: config: %s\n", err);
        exit(1);
    }
    return cfg;
}

static agg_t *bench_agg(const cfg_t *cfg, stats_t *st, sent_t *sent)
{
    char err[512];
    agg_opts_t o = { cfg, 0, 1, "aggregator@bench", st, count_send, sent };
    agg_t *a = agg_new(&o, err, sizeof err);
    if (!a) {
        fprintf(stderr, "aggbench: agg_new: %s\n", err);
        exit(1);
    }
    return a;
}

/* Decodes m as a subscriber does; the objects live in up. */
static void decode(const bmsg_t *m, msgpack_unpacked *up, bus_msg_t *bm)
{
    char err[256];
    if (bus_envelope_decode(m->data, m->len, up, bm, err, sizeof err) < 0) {
        fprintf(stderr, "aggbench: envelope: %s\n", err);
        exit(1);
    }
    bm->topic = span_cstr(m->topic);
}

static int64_t t0_ns(void)
{
    struct tm tm = { .tm_year = 2026 - 1900, .tm_mon = 2, .tm_mday = 10, .tm_hour = 10 };
    return (int64_t)timegm(&tm) * S; /* 2026-03-10 10:00 UTC, a Tuesday */
}

/* ---- memory N -------------------------------------------------------------------- */

static void nop_position(void *arg, const char *src, uint64_t seq)
{
    (void)arg, (void)src, (void)seq;
}

static void rmtree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "aggbench: could not remove %s\n", dir);
}

static void print_split(const char *when, agg_t *a, stats_t *st, uint32_t n)
{
    agg_update_gauges(a);
    size_t total = agg_memory(a), q = quota_memory(agg_quota(a)), b = budget_memory(agg_budget(a));
    size_t rest = total - q - b;
    printf("split when=%s agg_memory=%zu per_user=%.0f quota=%zu quota_per_user=%.0f budget=%zu "
           "budget_per_user=%.0f rollup_etc=%zu rollup_per_user=%.0f rollup_cells=%lld "
           "users=%zu accounts=%zu budget_instances=%llu\n",
           when, total, (double)total / n, q, (double)q / n, b, (double)b / n, rest,
           (double)rest / n, (long long)*stats_gauge(st, "agg_rollup_cells", NULL),
           quota_count(agg_quota(a), QS_USER), quota_count(agg_quota(a), QS_ACCOUNT),
           (unsigned long long)budget_counters(agg_budget(a))->instances);
}

static int run_memory(uint32_t n, bool rollup_users, const char *base)
{
    cfg_t *cfg = bench_cfg(rollup_users);
    stats_t *st = stats_new("tokmon-aggregator", "aggregator@bench");
    sent_t sent = { 0 };
    long rss_start = proc_kib("VmRSS");
    agg_t *a = bench_agg(cfg, st, &sent);
    uint32_t naccounts = n * 3 / 1000 ? n * 3 / 1000 : 1;
    /* user i starts at T0 + i * 50 min / n and calls at +0, +90 s and
     * +210 s: three sorted streams, merged into one in receive order */
    const int64_t T0 = t0_ns(), span = 50 * MIN, offs[3] = { 0, 90 * S, 210 * S };
    uint32_t next[3] = { 0, 0, 0 };
    batcher_t b = { 0 };
    bmsg_t m;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    int64_t apply_ns = 0, tick_ns = 0, max_tick_ns = 0;
    uint64_t records = 0, messages = 0;
    for (;;) {
        int k = -1;
        int64_t best = INT64_MAX;
        for (int s = 0; s < 3; s++) {
            if (next[s] >= n)
                continue;
            int64_t t = T0 + (int64_t)((__int128)next[s] * span / n) + offs[s];
            if (t < best)
                best = t, k = s;
        }
        if (k >= 0) {
            msg_usage_t u;
            strs_t s;
            make_usage(&u, &s, next[k]++, naccounts, n, best);
            batch_add(&b, &u);
            records++;
        }
        if (b.n == BATCH || (k < 0 && b.n)) {
            batch_take(&b, &m);
            bus_msg_t bm;
            decode(&m, &up, &bm);
            int64_t c0 = tmtime_mono_ns();
            agg_apply(a, &bm);
            int64_t c1 = tmtime_mono_ns();
            /* as the daemon's loop while it catches up: the wall clock
             * schedules the periodic work, the events move the watermark */
            agg_tick(a, tmtime_now_ns(), false);
            agg_flush(a);
            int64_t c2 = tmtime_mono_ns();
            apply_ns += c1 - c0;
            tick_ns += c2 - c1;
            if (c2 - c1 > max_tick_ns)
                max_tick_ns = c2 - c1;
            messages++;
            bmsg_free(&m);
        }
        if (k < 0)
            break;
    }
    msgpack_unpacked_destroy(&up);
    free(b.toff);
    mbuf_free(&b.body);
    long rss_applied = proc_kib("VmRSS");
    printf("memory users=%u rollup_users=%s records=%llu messages=%llu apply_s=%.2f "
           "apply_ns_per_record=%.0f tick_s=%.2f max_tick_ms=%.1f\n",
           n, rollup_users ? "on" : "off", (unsigned long long)records,
           (unsigned long long)messages, secs(apply_ns), (double)apply_ns / (double)records,
           secs(tick_ns), (double)max_tick_ns / 1e6);
    printf("rss when=start kib=%ld\n", rss_start);
    printf("rss when=applied kib=%ld per_user=%.0f\n", rss_applied,
           (double)(rss_applied - rss_start) * 1024 / n);
    print_split("applied", a, st, n);
    /* twelve minutes on, live: the minute and hour buckets close and go
     * (lateness 5 min); the day's, the quotas' and the budgets' stay */
    int64_t last = T0 + span + offs[2];
    int64_t s0 = tmtime_mono_ns();
    static const int steps[] = { 1, 6, 12 };
    for (int i = 0; i < 3; i++) {
        agg_tick(a, last + steps[i] * MIN, true);
        agg_flush(a);
    }
    int64_t settle_ns = tmtime_mono_ns() - s0;
    long rss_settled = proc_kib("VmRSS");
    printf("rss when=settled kib=%ld per_user=%.0f settle_s=%.2f\n", rss_settled,
           (double)(rss_settled - rss_start) * 1024 / n, secs(settle_ns));
    print_split("settled", a, st, n);
    printf("sent messages=%llu records=%llu bytes=%llu\n", (unsigned long long)sent.messages,
           (unsigned long long)sent.records, (unsigned long long)sent.bytes);
    /* what the periodic work of agg_tick costs with this many users: the
     * gauges (agg_memory walks the state) and the quota sweep every
     * quota_sweep (10 s), the budget statuses every budget_interval (5 s),
     * all of them every 12th time */
    int64_t now = last + 12 * MIN;
    int64_t p0 = tmtime_mono_ns();
    size_t mem = agg_memory(a);
    int64_t p1 = tmtime_mono_ns();
    quota_sweep(agg_quota(a), now);
    int64_t p2 = tmtime_mono_ns();
    uint64_t before = sent.records, before_bytes = sent.bytes;
    budget_publish(agg_budget(a), now, true);
    agg_flush(a);
    int64_t p3 = tmtime_mono_ns();
    uint64_t all_records = sent.records - before, all_bytes = sent.bytes - before_bytes;
    budget_publish(agg_budget(a), now, false);
    agg_flush(a);
    int64_t p4 = tmtime_mono_ns();
    printf("periodic agg_memory_ms=%.1f quota_sweep_ms=%.1f budget_all_ms=%.1f "
           "budget_all_records=%llu budget_all_bytes=%llu budget_changed_ms=%.1f (agg_memory=%zu)\n",
           (double)(p1 - p0) / 1e6, (double)(p2 - p1) / 1e6, (double)(p3 - p2) / 1e6,
           (unsigned long long)all_records, (unsigned long long)all_bytes, (double)(p4 - p3) / 1e6,
           mem);

    /* the snapshot */
    char dir[4096], path[4200], err[512];
    snprintf(dir, sizeof dir, "%s/aggbench.XXXXXX", base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "aggbench: mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/state.snap", dir);
    agg_position_t pos = { "collectd@bench", b.seq };
    s0 = tmtime_mono_ns();
    if (agg_save(a, path, &pos, 1, sent.messages, err, sizeof err) < 0) {
        fprintf(stderr, "aggbench: agg_save: %s\n", err);
        rmtree(dir);
        return 1;
    }
    int64_t save_ns = tmtime_mono_ns() - s0;
    struct stat sb;
    stat(path, &sb);
    size_t mem_before = agg_memory(a);
    agg_destroy(&a);
    malloc_trim(0);
    long rss_freed = proc_kib("VmRSS");
    stats_t *st2 = stats_new("tokmon-aggregator", "aggregator@bench");
    agg_t *a2 = bench_agg(cfg, st2, &sent);
    uint64_t pub_seq;
    s0 = tmtime_mono_ns();
    int rc = agg_load(a2, path, nop_position, NULL, &pub_seq, err, sizeof err);
    int64_t load_ns = tmtime_mono_ns() - s0;
    if (rc != 1) {
        fprintf(stderr, "aggbench: agg_load: %s\n", rc < 0 ? err : "no snapshot");
        rmtree(dir);
        return 1;
    }
    long rss_loaded = proc_kib("VmRSS");
    printf("snapshot bytes=%lld bytes_per_user=%.0f save_s=%.2f load_s=%.2f\n",
           (long long)sb.st_size, (double)sb.st_size / n, secs(save_ns), secs(load_ns));
    printf("rss when=freed kib=%ld\n", rss_freed);
    printf("rss when=loaded kib=%ld per_user=%.0f agg_memory=%zu agg_memory_before=%zu "
           "users=%zu\n",
           rss_loaded, (double)(rss_loaded - rss_freed) * 1024 / n, agg_memory(a2), mem_before,
           quota_count(agg_quota(a2), QS_USER));
    printf("rss when=peak kib=%ld\n", proc_kib("VmHWM"));
    rmtree(dir);
    agg_destroy(&a2);
    stats_destroy(&st2);
    stats_destroy(&st);
    cfg_destroy(&cfg);
    return 0;
}

/* ---- rate SECONDS --------------------------------------------------------------- */

/* A Zipf-like choice among n users: rank r with weight 1/(r+1)^0.9. */
typedef struct {
    double *cdf;
    uint32_t n;
    uint32_t *perm; /* rank -> user number, so hot users are scattered */
} zipf_t;

static void zipf_init(zipf_t *z, uint32_t n)
{
    z->n = n;
    z->cdf = xmalloc(n * sizeof *z->cdf);
    z->perm = xmalloc(n * sizeof *z->perm);
    double sum = 0;
    for (uint32_t r = 0; r < n; r++) {
        sum += 1.0 / pow(r + 1, 0.9);
        z->cdf[r] = sum;
        z->perm[r] = r;
    }
    for (uint32_t r = 0; r < n; r++)
        z->cdf[r] /= sum;
    for (uint32_t r = n - 1; r > 0; r--) {
        uint32_t j = (uint32_t)(rng() % (r + 1)), t = z->perm[r];
        z->perm[r] = z->perm[j];
        z->perm[j] = t;
    }
}

static uint32_t zipf_next(const zipf_t *z)
{
    double x = rng01();
    uint32_t lo = 0, hi = z->n - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (z->cdf[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return z->perm[lo];
}

static volatile uint64_t sink;

/* One round: decode-only or the aggregator over the messages for about
 * seconds; passes after the first move every time on by span so time goes
 * on. Returns records per second. */
static double rate_round(bmsg_t *msgs, size_t nmsgs, uint64_t nrecords, int64_t span,
                         int64_t *shifted, double seconds, bool aggregate, const cfg_t *cfg,
                         double *tick_share)
{
    stats_t *st = stats_new("tokmon-aggregator", "aggregator@bench");
    sent_t sent = { 0 };
    agg_t *a = aggregate ? bench_agg(cfg, st, &sent) : NULL;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    char err[256];
    int64_t busy = 0, ticks = 0, limit = (int64_t)(seconds * 1e9);
    uint64_t records = 0;
    bool first = true;
    while (busy < limit) {
        /* the next pass starts where the last left off in time (clock stopped) */
        if (!first) {
            for (size_t i = 0; i < nmsgs; i++)
                bmsg_shift(&msgs[i], span);
            *shifted += span;
        }
        first = false;
        int64_t t0 = tmtime_mono_ns();
        size_t i;
        for (i = 0; i < nmsgs; i++) {
            bus_msg_t bm;
            decode(&msgs[i], &up, &bm);
            const msgpack_object *body = bm.body;
            if (aggregate) {
                agg_apply(a, &bm);
                int64_t k0 = tmtime_mono_ns();
                /* catching up: the wall clock schedules the periodic work */
                agg_tick(a, tmtime_now_ns(), false);
                agg_flush(a);
                ticks += tmtime_mono_ns() - k0;
            } else {
                for (uint32_t r = 0; r < body->via.array.size; r++) {
                    msg_usage_t u;
                    if (msg_usage_unpack(&body->via.array.ptr[r], &u, err, sizeof err) < 0) {
                        fprintf(stderr, "aggbench: record: %s\n", err);
                        exit(1);
                    }
                    sink += u.input_tokens;
                }
            }
            records += body->via.array.size;
            if ((i & 7) == 7 && busy + tmtime_mono_ns() - t0 >= limit)
                break;
        }
        busy += tmtime_mono_ns() - t0;
        (void)nrecords;
    }
    msgpack_unpacked_destroy(&up);
    if (tick_share)
        *tick_share = (double)ticks / (double)busy;
    if (a) {
        agg_update_gauges(a);
        printf("agg_state users=%zu agg_memory=%zu rollup_cells=%lld sent_records=%llu "
               "sent_bytes=%llu\n",
               quota_count(agg_quota(a), QS_USER), agg_memory(a),
               (long long)*stats_gauge(st, "agg_rollup_cells", NULL),
               (unsigned long long)sent.records, (unsigned long long)sent.bytes);
    }
    agg_destroy(&a);
    stats_destroy(&st);
    return (double)records / secs(busy);
}

static int run_rate(double seconds, int rounds, uint32_t nusers, uint64_t nrecords, double sim_rate)
{
    cfg_t *cfg = bench_cfg(true);
    zipf_t z;
    zipf_init(&z, nusers);
    uint32_t naccounts = nusers * 3 / 1000 ? nusers * 3 / 1000 : 1;
    /* receive times: sim_rate calls a second on average (exponential gaps) */
    int64_t t = t0_ns();
    size_t nmsgs = 0, cap = (size_t)(nrecords / BATCH + 2);
    bmsg_t *msgs = xcalloc(cap, sizeof *msgs);
    batcher_t b = { 0 };
    int64_t g0 = tmtime_mono_ns();
    for (uint64_t i = 0; i < nrecords; i++) {
        t += (int64_t)(-log(1.0 - rng01()) * 1e9 / sim_rate) + 1;
        msg_usage_t u;
        strs_t s;
        make_usage(&u, &s, zipf_next(&z), naccounts, nusers, t);
        batch_add(&b, &u);
        if (b.n == BATCH || i + 1 == nrecords)
            batch_take(&b, &msgs[nmsgs++]);
    }
    free(b.toff);
    mbuf_free(&b.body);
    size_t bytes = 0;
    for (size_t i = 0; i < nmsgs; i++)
        bytes += msgs[i].len;
    int64_t span = t - t0_ns() + 1000000; /* one pass of simulated time */
    printf("rate_setup users=%u records=%llu messages=%zu bytes_per_record=%.0f "
           "simulated_s_per_pass=%.0f build_s=%.2f\n",
           nusers, (unsigned long long)nrecords, nmsgs, (double)bytes / (double)nrecords,
           secs(span), secs(tmtime_mono_ns() - g0));
    double *dec = xcalloc((size_t)rounds, sizeof *dec), *agg = xcalloc((size_t)rounds, sizeof *agg);
    int64_t shifted = 0;
    for (int r = 0; r < rounds; r++) {
        dec[r] = rate_round(msgs, nmsgs, nrecords, span, &shifted, seconds, false, cfg, NULL);
        double tick_share;
        agg[r] = rate_round(msgs, nmsgs, nrecords, span, &shifted, seconds, true, cfg, &tick_share);
        printf("rate round=%d decode_per_s=%.0f agg_per_s=%.0f ratio=%.3f tick_share=%.3f\n", r + 1,
               dec[r], agg[r], agg[r] / dec[r], tick_share);
        fflush(stdout);
    }
    double md = median(dec, rounds), ma = median(agg, rounds);
    printf("rate_median decode_per_s=%.0f agg_per_s=%.0f ratio=%.3f decode_ns=%.0f agg_ns=%.0f "
           "agg_own_ns=%.0f\n",
           md, ma, ma / md, 1e9 / md, 1e9 / ma, 1e9 / ma - 1e9 / md);
    for (size_t i = 0; i < nmsgs; i++)
        bmsg_free(&msgs[i]);
    free(msgs);
    free(dec);
    free(agg);
    free(z.cdf);
    free(z.perm);
    cfg_destroy(&cfg);
    return 0;
}

/* ---- main --------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: aggbench memory N [--rollup-users on|off] [--dir /tmp]\n"
                    "       aggbench rate SECONDS [--rounds 3] [--users 10000] [--records 1000000]\n"
                    "                             [--sim-rate 10000]\n");
    exit(2);
}

static double num(const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "aggbench: '%s' is not a number in [%g, %g]\n", s, lo, hi);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        usage();
    const char *mode = argv[1];
    double arg = num(argv[2], 0.001, 1e8);
    bool rollup_users = true;
    const char *dir = "/tmp";
    int rounds = 3;
    uint32_t users = 10000;
    uint64_t records = 1000000;
    double sim_rate = 10000;
    static const struct option opts[] = {
        { "rollup-users", required_argument, NULL, 'u' }, { "dir", required_argument, NULL, 'd' },
        { "rounds", required_argument, NULL, 'r' },       { "users", required_argument, NULL, 'n' },
        { "records", required_argument, NULL, 'm' },      { "sim-rate", required_argument, NULL, 's' },
        { NULL, 0, NULL, 0 },
    };
    optind = 3;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            rollup_users = strcmp(optarg, "off") != 0;
            break;
        case 'd':
            dir = optarg;
            break;
        case 'r':
            rounds = (int)num(optarg, 1, 100);
            break;
        case 'n':
            users = (uint32_t)num(optarg, 1, 1e7);
            break;
        case 'm':
            records = (uint64_t)num(optarg, BATCH, 1e8);
            break;
        case 's':
            sim_rate = num(optarg, 1, 1e9);
            break;
        default:
            usage();
        }
    }
    if (!strcmp(mode, "memory"))
        return run_memory((uint32_t)arg, rollup_users, dir);
    if (!strcmp(mode, "rate"))
        return run_rate(arg, rounds, users, records, sim_rate);
    usage();
    return 2;
}

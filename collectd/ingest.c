#include "ingest.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"
#include "event.h"
#include "fnv.h"
#include "jtok.h"
#include "log.h"
#include "mpr.h"
#include "statsd.h"
#include "tmtime.h"
#include "utf8.h"
#include "xalloc.h"

#define LOG_EXCERPT 120
#define REJECT_LOGS_PER_SEC 10

struct ingest {
    const cfg_t *cfg;
    prices_t *prices;
    const auth_keys_t *keys;
    span_t price_version; /* of prices, kept to spare a strlen per record */
    auth_guard_t *guard;
    stats_t *stats;
    ingest_sink_t sink;
    event_limits_t lim;
    jtok_t *toks;
    scratch_t scratch;
    uint64_t rejects_seen;
    int64_t log_window_ns;
    int log_in_window;
    /* counters: pointers into stats */
    int64_t *c_datagrams, *c_bytes, *c_records, *c_accepted, *c_usage, *c_samples;
    int64_t *c_rejected[REASON_COUNT];
    int64_t *c_auth_fail[REASON_COUNT];
    int64_t *c_signed, *c_events, *c_checks, *c_tags_dropped, *c_sig_ignored, *c_guard;
};

const char *reason_name(reason_t r)
{
    static const char *const names[] = {
        "none",
#define NAME(e, n) n,
        REASONS(NAME)
#undef NAME
    };
    return (unsigned)r < REASON_COUNT ? names[r] : "unknown";
}

static bool is_auth_reason(reason_t r)
{
    return r == REASON_UNSIGNED || r == REASON_BAD_SIGNATURE || r == REASON_UNKNOWN_KEY ||
           r == REASON_STALE || r == REASON_REPLAY || r == REASON_BAD_SIG_LINE;
}

static void apply_cfg(ingest_t *in)
{
    in->price_version = span_cstr(prices_version(in->prices));
    in->lim.max_tags = (size_t)in->cfg->collectd.max_tags;
    in->lim.max_tag_len = (size_t)in->cfg->collectd.max_tag_len;
    size_t cap = (size_t)in->cfg->collectd.max_line + 4096;
    if (cap > in->scratch.cap) {
        in->scratch.p = xrealloc(in->scratch.p, cap);
        in->scratch.cap = cap;
    }
}

ingest_t *ingest_new(const cfg_t *cfg, prices_t *prices, const auth_keys_t *keys, stats_t *stats,
                     const ingest_sink_t *sink)
{
    ingest_t *in = xcalloc(1, sizeof *in);
    in->cfg = cfg;
    in->prices = prices;
    in->keys = keys;
    in->stats = stats;
    in->sink = *sink;
    in->toks = xmalloc(EVENT_MAX_TOKENS * sizeof *in->toks);
    in->guard = auth_guard_new((size_t)cfg->collectd.replay_guard, cfg->collectd.auth_skew);
    apply_cfg(in);

    in->c_datagrams = stats_counter(stats, "ingest_datagrams_total", NULL);
    in->c_bytes = stats_counter(stats, "ingest_bytes_total", NULL);
    in->c_records = stats_counter(stats, "ingest_received_total", NULL);
    in->c_accepted = stats_counter(stats, "ingest_accepted_total", NULL);
    in->c_usage = stats_counter(stats, "ingest_usage_records_total", NULL);
    in->c_samples = stats_counter(stats, "ingest_samples_total", NULL);
    for (int r = 1; r < REASON_COUNT; r++) {
        char labels[64];
        snprintf(labels, sizeof labels, "reason=%s", reason_name((reason_t)r));
        in->c_rejected[r] = stats_counter(stats, "ingest_rejected_total", labels);
        if (is_auth_reason((reason_t)r))
            in->c_auth_fail[r] = stats_counter(stats, "ingest_auth_failures_total", labels);
    }
    in->c_signed = stats_counter(stats, "ingest_signed_total", NULL);
    in->c_events = stats_counter(stats, "ingest_dropped_total", "kind=event");
    in->c_checks = stats_counter(stats, "ingest_dropped_total", "kind=service_check");
    in->c_tags_dropped = stats_counter(stats, "ingest_tags_dropped_total", NULL);
    in->c_sig_ignored = stats_counter(stats, "ingest_signatures_ignored_total", NULL);
    in->c_guard = stats_gauge(stats, "ingest_replay_guard_entries", NULL);
    return in;
}

void ingest_destroy(ingest_t **pin)
{
    ingest_t *in = *pin;
    if (!in)
        return;
    auth_guard_destroy(&in->guard);
    free(in->toks);
    free(in->scratch.p);
    free(in);
    *pin = NULL;
}

void ingest_reload(ingest_t *in, const cfg_t *cfg, prices_t *prices, const auth_keys_t *keys)
{
    in->cfg = cfg;
    in->prices = prices;
    in->keys = keys;
    apply_cfg(in);
}

unsigned ingest_shard(const msg_usage_t *u)
{
    span_t k = u->user.p ? u->user : u->account.p ? u->account : SPAN_LIT("");
    return (unsigned)(fnv1a64(k.p, k.len) & 0xff);
}

/* ---- rejections --------------------------------------------------------- */

/* Counts and maybe logs a refused record (already counted as received). */
static void refuse(ingest_t *in, reason_t reason, const struct sockaddr *from, socklen_t fromlen,
                   const char *data, size_t len)
{
    (*in->c_rejected[reason])++;
    if (in->c_auth_fail[reason])
        (*in->c_auth_fail[reason])++;
    uint64_t every = (uint64_t)in->cfg->collectd.log_reject_every;
    if (in->rejects_seen++ % every != 0)
        return;
    int64_t now = tmtime_mono_ns();
    if (now - in->log_window_ns >= TMTIME_NS_PER_SEC) {
        in->log_window_ns = now;
        in->log_in_window = 0;
    }
    if (in->log_in_window++ >= REJECT_LOGS_PER_SEC)
        return;
    char peer[128] = "(unknown)", q[LOG_EXCERPT * 4 + 16];
    if (from)
        addr_format(from, fromlen, peer, sizeof peer);
    log_warn("record rejected", "reason=%s from=%s seen=%llu data=%s", reason_name(reason), peer,
             (unsigned long long)in->rejects_seen,
             log_quote(q, sizeof q, data, len < LOG_EXCERPT ? len : LOG_EXCERPT));
}

void ingest_reject(ingest_t *in, reason_t reason, const struct sockaddr *from, socklen_t fromlen,
                   const char *data, size_t len)
{
    (*in->c_records)++;
    refuse(in, reason, from, fromlen, data, len);
}

/* ---- usage records ------------------------------------------------------ */

typedef struct {
    const struct sockaddr *from;
    socklen_t fromlen;
    int64_t recv_ns;
    bool is_signed;
    span_t key_id;
} dgram_t;

/* Prices a record and hands it on. Returns why it was refused, if it was. */
static reason_t emit_usage(ingest_t *in, msg_usage_t *u, bool has_cost, const dgram_t *d)
{
    span_t sent = u->provider, canon;
    const price_t *p;
    int m = prices_resolve(in->prices, u->provider, u->model, &canon, &p);
    if (m < 0)
        return REASON_BAD_FIELD;
    u->provider = canon; /* valid until the next resolve: the sink packs it first */
    u->recv_ts = d->recv_ns;
    if (u->ts == 0)
        u->ts = d->recv_ns;
    u->is_signed = d->is_signed;
    u->key_id = d->is_signed ? d->key_id : SPAN_NULL;
    if (has_cost) {
        u->cost_source = SPAN_LIT("reported");
        u->price_version = SPAN_NULL;
    } else {
        u->price_version = in->price_version;
        if (m != PRICES_FOUND)
            (*stats_counter2(in->stats, "unpriced_requests_total", "provider", u->provider.p,
                             u->provider.len, "model", u->model.p, u->model.len, 200)) +=
                u->requests ? (int64_t)u->requests : 1;
        if (m == PRICES_UNKNOWN) {
            u->cost_source = SPAN_LIT("unknown");
            u->cost_nusd = 0;
        } else {
            u->cost_source = m == PRICES_FOUND ? SPAN_LIT("priced") : SPAN_LIT("default");
            prices_tokens_t t = { u->input_tokens, u->cache_read_tokens, u->cache_write_tokens,
                                  u->cache_write_1h_tokens, u->output_tokens, u->reasoning_tokens };
            if (prices_cost(p, &t, &u->cost_nusd) < 0) {
                u->provider = sent;
                return REASON_COST_OVERFLOW;
            }
        }
    }
    (*in->c_usage)++;
    in->sink.usage(in->sink.arg, ingest_shard(u), u);
    u->provider = sent;
    return REASON_NONE;
}

/* ---- StatsD ------------------------------------------------------------- */

static reason_t statsd_reason(statsd_result_t r)
{
    switch (r) {
    case STATSD_ERR_EMPTY:
        return REASON_EMPTY;
    case STATSD_ERR_NAME:
        return REASON_BAD_NAME;
    case STATSD_ERR_VALUE:
        return REASON_BAD_VALUE;
    case STATSD_ERR_TYPE:
        return REASON_BAD_TYPE;
    case STATSD_ERR_RATE:
        return REASON_BAD_RATE;
    case STATSD_ERR_TAGS:
        return REASON_BAD_TAGS;
    case STATSD_ERR_TOO_MANY_VALUES:
        return REASON_TOO_MANY_VALUES;
    case STATSD_ERR_TIMESTAMP:
        return REASON_BAD_TIMESTAMP;
    case STATSD_ERR_TOO_LONG:
        return REASON_LINE_TOO_LONG;
    default:
        return REASON_BAD_VALUE;
    }
}

typedef enum { LLM_NONE, LLM_TOKENS, LLM_REQUESTS, LLM_LATENCY, LLM_TTFT } llm_metric_t;

static llm_metric_t llm_metric(span_t name)
{
    if (!span_starts_with(name, "llm."))
        return LLM_NONE;
    if (span_eq_cstr(name, "llm.tokens"))
        return LLM_TOKENS;
    if (span_eq_cstr(name, "llm.requests"))
        return LLM_REQUESTS;
    if (span_eq_cstr(name, "llm.latency"))
        return LLM_LATENCY;
    if (span_eq_cstr(name, "llm.ttft"))
        return LLM_TTFT;
    return LLM_NONE;
}

/* A DogStatsD token counter, request counter or latency timer → usage
 * records (DESIGN section 2). */
static reason_t statsd_usage(ingest_t *in, llm_metric_t kind, const statsd_line_t *sl,
                             const dgram_t *d)
{
    msg_usage_t u;
    msg_usage_init(&u);
    u.requests = 0;
    span_t dims[DIM_COUNT] = { { 0 } };
    span_t type = SPAN_NULL;
    unsigned dropped = 0;
    for (size_t i = 0; i < sl->ntags; i++) {
        const statsd_tag_t *t = &sl->tags[i];
        /* statsd_parse has refused invalid UTF-8 and control bytes in tags */
        int dim = event_dimension(t->key);
        if (dim >= 0) {
            if (t->value.len > EVENT_MAX_STR)
                return REASON_BAD_FIELD;
            if (!dims[dim].p && t->value.len)
                dims[dim] = t->value;
            continue;
        }
        if (span_eq_cstr(t->key, "type")) {
            type = t->value;
            continue;
        }
        if (u.ntags >= in->lim.max_tags || t->key.len > in->lim.max_tag_len ||
            t->value.len > in->lim.max_tag_len) {
            dropped++;
            continue;
        }
        u.tags[u.ntags].key = t->key;
        u.tags[u.ntags].value = t->value.p ? t->value : SPAN_LIT("");
        u.ntags++;
    }
    *in->c_tags_dropped += dropped;
    u.provider = dims[DIM_PROVIDER];
    u.model = dims[DIM_MODEL];
    if (!u.provider.p || !u.model.p)
        return REASON_MISSING_FIELD;
    u.operation = dims[DIM_OPERATION].p ? dims[DIM_OPERATION] : SPAN_LIT("chat");
    u.user = dims[DIM_USER];
    u.account = dims[DIM_ACCOUNT];
    u.project = dims[DIM_PROJECT];
    u.request_id = dims[DIM_REQUEST_ID];
    u.error_type = dims[DIM_ERROR_TYPE];
    if (!dims[DIM_STATUS].p || span_eq_cstr(dims[DIM_STATUS], "ok"))
        u.status = SPAN_LIT("ok");
    else if (span_eq_cstr(dims[DIM_STATUS], "error"))
        u.status = SPAN_LIT("error");
    else
        return REASON_BAD_FIELD;
    if (sl->has_ts) {
        if (sl->ts <= 0 || sl->ts > INT64_MAX / TMTIME_NS_PER_SEC)
            return REASON_BAD_TIMESTAMP;
        u.ts = sl->ts * TMTIME_NS_PER_SEC;
    }

    if (kind == LLM_TOKENS || kind == LLM_REQUESTS) {
        if (sl->type != STATSD_COUNTER)
            return REASON_BAD_TYPE;
        double sum = 0;
        for (size_t i = 0; i < sl->nvalues; i++) {
            if (sl->values[i] < 0)
                return REASON_BAD_VALUE;
            sum += sl->values[i];
        }
        double n = nearbyint(sum / sl->rate);
        if (!isfinite(n) || n > (double)MSG_MAX_TOKENS)
            return REASON_TOKEN_OVERFLOW;
        uint64_t v = (uint64_t)n;
        if (kind == LLM_REQUESTS) {
            u.requests = v;
        } else if (span_eq_cstr(type, "input")) {
            u.input_tokens = v;
        } else if (span_eq_cstr(type, "cache_read")) {
            u.input_tokens = u.cache_read_tokens = v;
        } else if (span_eq_cstr(type, "cache_write")) {
            u.input_tokens = u.cache_write_tokens = v;
        } else if (span_eq_cstr(type, "cache_write_1h")) {
            u.input_tokens = u.cache_write_1h_tokens = v;
        } else if (span_eq_cstr(type, "output")) {
            u.output_tokens = v;
        } else if (span_eq_cstr(type, "reasoning")) {
            u.output_tokens = u.reasoning_tokens = v;
        } else {
            return type.p ? REASON_BAD_TAGS : REASON_MISSING_FIELD;
        }
        return emit_usage(in, &u, false, d);
    }
    /* latency and time to first token: one record per value, in ms */
    if (sl->type != STATSD_TIMER && sl->type != STATSD_HISTOGRAM &&
        sl->type != STATSD_DISTRIBUTION)
        return REASON_BAD_TYPE;
    for (size_t i = 0; i < sl->nvalues; i++)
        if (sl->values[i] < 0 || sl->values[i] > 1e12)
            return REASON_BAD_VALUE;
    for (size_t i = 0; i < sl->nvalues; i++) {
        int64_t us = (int64_t)nearbyint(sl->values[i] * 1000.0);
        if (kind == LLM_LATENCY)
            u.latency_us = us;
        else
            u.ttft_us = us;
        reason_t r = emit_usage(in, &u, false, d);
        if (r != REASON_NONE)
            return r;
    }
    return REASON_NONE;
}

/* Generic samples. Returns why the line is refused: a set member longer
 * than the bus allows; tags beyond the limits are dropped and counted. */
static reason_t statsd_samples(ingest_t *in, const statsd_line_t *sl, const dgram_t *d)
{
    static const msg_stype_t types[] = {
        [STATSD_COUNTER] = MSG_ST_C,   [STATSD_GAUGE] = MSG_ST_G,
        [STATSD_TIMER] = MSG_ST_MS,    [STATSD_HISTOGRAM] = MSG_ST_H,
        [STATSD_DISTRIBUTION] = MSG_ST_D, [STATSD_SET] = MSG_ST_S,
    };
    if (sl->type == STATSD_SET && sl->member.len > MSG_MAX_STR)
        return REASON_BAD_VALUE;
    msg_sample_t s;
    s.name = sl->name;
    s.type = types[sl->type];
    s.rate = sl->rate;
    s.delta = sl->delta;
    s.ts = sl->has_ts && sl->ts > 0 && sl->ts <= INT64_MAX / TMTIME_NS_PER_SEC
               ? sl->ts * TMTIME_NS_PER_SEC : d->recv_ns;
    s.member = sl->member;
    s.ntags = 0;
    for (size_t i = 0; i < sl->ntags; i++) {
        const statsd_tag_t *t = &sl->tags[i];
        if (s.ntags >= in->lim.max_tags || t->key.len > in->lim.max_tag_len ||
            t->value.len > in->lim.max_tag_len) {
            (*in->c_tags_dropped)++;
            continue;
        }
        s.tags[s.ntags].key = t->key;
        s.tags[s.ntags].value = t->value.p ? t->value : SPAN_LIT("");
        s.ntags++;
    }
    size_t n = sl->type == STATSD_SET ? 1 : sl->nvalues;
    for (size_t i = 0; i < n; i++) {
        s.value = sl->type == STATSD_SET ? 0 : sl->values[i];
        in->sink.sample(in->sink.arg, &s, d->recv_ns);
    }
    (*in->c_samples) += (int64_t)n;
    return REASON_NONE;
}

static void handle_statsd(ingest_t *in, const char *line, size_t len, const dgram_t *d)
{
    statsd_line_t sl;
    static const statsd_gauge_sign_t rules[] = { STATSD_GAUGE_AUTO, STATSD_GAUGE_DELTA,
                                                 STATSD_GAUGE_ABSOLUTE };
    statsd_result_t r = statsd_parse(line, len, rules[in->cfg->collectd.gauge_sign], &sl);
    if (r == STATSD_EVENT || r == STATSD_SERVICE_CHECK) {
        (*(r == STATSD_EVENT ? in->c_events : in->c_checks))++;
        return;
    }
    if (r != STATSD_OK) {
        refuse(in, statsd_reason(r), d->from, d->fromlen, line, len);
        return;
    }
    llm_metric_t kind = llm_metric(sl.name);
    reason_t rr = REASON_NONE;
    if (kind == LLM_NONE)
        rr = statsd_samples(in, &sl, d);
    else
        rr = statsd_usage(in, kind, &sl, d);
    if (rr != REASON_NONE)
        refuse(in, rr, d->from, d->fromlen, line, len);
    else
        (*in->c_accepted)++;
}

/* ---- events ------------------------------------------------------------- */

static void handle_event(ingest_t *in, event_t *ev, reason_t r, const char *data, size_t len,
                         const dgram_t *d)
{
    if (r == REASON_NONE) {
        *in->c_tags_dropped += ev->tags_dropped;
        r = emit_usage(in, &ev->u, ev->has_cost, d);
    }
    if (r != REASON_NONE)
        refuse(in, r, d->from, d->fromlen, data, len);
    else
        (*in->c_accepted)++;
}

static void handle_lines(ingest_t *in, const char *buf, size_t len, const dgram_t *d)
{
    size_t pos = 0;
    size_t max = (size_t)in->cfg->collectd.max_line;
    while (pos < len) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (n && line[n - 1] == '\r')
            n--;
        if (n == 0)
            continue; /* blank lines separate nothing */
        if (line[0] == '|' && n > 5 && !memcmp(line, "|sig:", 5) &&
            in->cfg->collectd.auth == CFG_AUTH_OFF) {
            (*in->c_sig_ignored)++; /* a signed datagram while auth is off: taken unsigned */
            continue;
        }
        (*in->c_records)++;
        if (n > max) {
            refuse(in, REASON_LINE_TOO_LONG, d->from, d->fromlen, line, n);
            continue;
        }
        if (line[0] == '{') {
            event_t ev;
            in->scratch.len = 0;
            reason_t r = event_parse_json(line, n, &in->lim, in->toks, &in->scratch, &ev);
            handle_event(in, &ev, r, line, n, d);
        } else {
            handle_statsd(in, line, n, d);
        }
    }
}

static bool is_msgpack_map(unsigned char c) { return (c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf; }

static void handle_msgpack(ingest_t *in, const char *buf, size_t len, const dgram_t *d)
{
    mpr_t r;
    mpr_init(&r, buf, len);
    while (r.p < r.end) {
        if (*r.p == '\n' || *r.p == '\r') { /* separators between maps are allowed */
            r.p++;
            continue;
        }
        const char *start = (const char *)r.p;
        (*in->c_records)++;
        event_t ev;
        bool resync;
        in->scratch.len = 0;
        reason_t rr = event_parse_msgpack(&r, &in->lim, &in->scratch, &ev, &resync);
        handle_event(in, &ev, rr, start, (size_t)((const char *)r.p - start), d);
        if (!resync)
            return; /* the rest of the datagram cannot be framed */
    }
}

static reason_t auth_reason(auth_result_t r)
{
    switch (r) {
    case AUTH_NONE:
        return REASON_UNSIGNED;
    case AUTH_MALFORMED:
        return REASON_BAD_SIG_LINE;
    case AUTH_UNKNOWN_KEY:
        return REASON_UNKNOWN_KEY;
    case AUTH_BAD_MAC:
        return REASON_BAD_SIGNATURE;
    case AUTH_STALE:
        return REASON_STALE;
    case AUTH_REPLAY:
        return REASON_REPLAY;
    default:
        return REASON_BAD_SIGNATURE;
    }
}

/* Checks the trailing |sig line of buf (payload of plen bytes); on success
 * marks d signed. */
static auth_result_t verify(ingest_t *in, const char *buf, size_t len, size_t plen, dgram_t *d)
{
    auth_result_t ar = in->keys ? auth_verify(in->keys, in->guard, buf, len, plen,
                                              d->recv_ns / TMTIME_NS_PER_MS,
                                              in->cfg->collectd.auth_skew, &d->key_id)
                                : AUTH_UNKNOWN_KEY;
    *in->c_guard = (int64_t)auth_guard_size(in->guard);
    if (ar == AUTH_OK) {
        d->is_signed = true;
        (*in->c_signed)++;
    }
    return ar;
}

void ingest_datagram(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                     socklen_t fromlen, int64_t recv_ns)
{
    dgram_t d = { from, fromlen, recv_ns, false, SPAN_NULL };
    (*in->c_datagrams)++;
    *in->c_bytes += (int64_t)len;
    if (len == 0) {
        ingest_reject(in, REASON_EMPTY, from, fromlen, buf, 0);
        return;
    }
    size_t plen = len;
    int mode = in->cfg->collectd.auth;
    /* with auth off, a sig line is skipped (and counted) by handle_lines */
    bool has_sig = mode != CFG_AUTH_OFF && auth_find(buf, len, &plen);
    if (mode == CFG_AUTH_OFF) {
        plen = len;
    } else if (has_sig) {
        auth_result_t ar = verify(in, buf, len, plen, &d);
        if (ar != AUTH_OK) {
            ingest_reject(in, auth_reason(ar), from, fromlen, buf, len);
            return;
        }
    } else if (mode == CFG_AUTH_REQUIRED) {
        ingest_reject(in, REASON_UNSIGNED, from, fromlen, buf, len);
        return;
    } else {
        plen = len;
    }
    if (plen == 0) {
        ingest_reject(in, REASON_EMPTY, from, fromlen, buf, 0);
        return;
    }
    if (is_msgpack_map((unsigned char)buf[0]))
        handle_msgpack(in, buf, plen, &d);
    else
        handle_lines(in, buf, plen, &d);
}

void ingest_lines(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                  socklen_t fromlen, int64_t recv_ns)
{
    dgram_t d = { from, fromlen, recv_ns, false, SPAN_NULL };
    *in->c_bytes += (int64_t)len;
    handle_lines(in, buf, len, &d);
}

#define TCP_SIG_STARTS 8 /* bounds the MACs one block can cost */

void ingest_tcp_block(ingest_t *in, const char *buf, size_t len, const struct sockaddr *from,
                      socklen_t fromlen, int64_t recv_ns)
{
    size_t plen;
    int mode = in->cfg->collectd.auth;
    if (mode == CFG_AUTH_OFF || !auth_find(buf, len, &plen)) {
        if (mode == CFG_AUTH_OFF && auth_find(buf, len, &plen)) {
            (*in->c_sig_ignored)++;
            len = plen;
        }
        ingest_lines(in, buf, len, from, fromlen, recv_ns);
        return;
    }
    *in->c_bytes += (int64_t)len;
    size_t start = 0;
    for (int tries = 0;; tries++) {
        dgram_t d = { from, fromlen, recv_ns, false, SPAN_NULL };
        auth_result_t ar = verify(in, buf + start, len - start, plen - start, &d);
        if (ar == AUTH_OK) {
            if (start && mode == CFG_AUTH_REQUIRED)
                ingest_reject(in, REASON_UNSIGNED, from, fromlen, buf, start);
            else if (start)
                handle_lines(in, buf, start, &(dgram_t){ from, fromlen, recv_ns, false, SPAN_NULL });
            handle_lines(in, buf + start, plen - start, &d);
            return;
        }
        const char *nl = start < plen ? memchr(buf + start, '\n', plen - start) : NULL;
        if (ar != AUTH_BAD_MAC || tries >= TCP_SIG_STARTS || !nl || (size_t)(nl - buf) + 1 >= plen) {
            ingest_reject(in, auth_reason(ar), from, fromlen, buf, len);
            return;
        }
        start = (size_t)(nl - buf) + 1;
    }
}

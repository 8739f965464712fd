/* msg: every message body that crosses the bus, defined once. Each kind has
 * a struct, a pack function (struct → msgpack) and an unpack function that
 * checks the shape, types, sizes and invariants of a received msgpack object
 * before any field is trusted. Unknown keys are ignored so a field can be
 * added without breaking older readers; breaking changes bump MSG_VERSION
 * (the envelope's v). Strings in unpacked structs borrow from the msgpack
 * object (or, when packing, from the caller's buffers). */
#ifndef TOKMON_MSG_H
#define TOKMON_MSG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "mbuf.h"
#include "span.h"

#define MSG_VERSION 1
#define MSG_MAX_TAGS 32
#define MSG_MAX_STR 1024             /* any one string field */
#define MSG_MAX_TOKENS (1ULL << 40)  /* any one token count */
#define MSG_MAX_BATCH 65536          /* records in one body */
#define MSG_MAX_STATS 4096           /* entries in one stats body */
#define MSG_STAT_LABELS 4

/* Kinds, as carried in the envelope's "kind". */
#define MSG_KIND_USAGE "usage"
#define MSG_KIND_SAMPLE "sample"
#define MSG_KIND_STATS "stats"

typedef struct {
    span_t key, value;
} msg_tag_t;

/* A priced usage record (topic ev.xx), with tokens in their normalised
 * meaning: input_tokens is all input (cache included) and output_tokens all
 * output (reasoning included); the cache and reasoning counts are parts. */
typedef struct {
    span_t provider, model, operation; /* required */
    span_t user, account, project;     /* absent: p == NULL */
    span_t status;                     /* "ok" or "error" */
    span_t error_type, request_id;
    span_t cost_source;   /* "reported", "priced", "default" or "unknown" */
    span_t price_version; /* absent for reported costs */
    span_t key_id;        /* present when is_signed */
    uint64_t input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens;
    uint64_t output_tokens, reasoning_tokens;
    uint64_t requests;   /* calls this record stands for: 1 for an event, 0 for a token counter line */
    int64_t ts, recv_ts; /* unix ns */
    int64_t latency_us;  /* -1: absent */
    int64_t ttft_us;     /* -1: absent */
    int64_t cost_nusd;
    int32_t http_status; /* 0: absent */
    int32_t retries;     /* -1: absent */
    bool is_signed;
    size_t ntags;
    msg_tag_t tags[MSG_MAX_TAGS];
} msg_usage_t;

/* Sets every field to "absent" / zero. */
void msg_usage_init(msg_usage_t *u);
void msg_usage_pack(msgpack_packer *pk, const msg_usage_t *u);
/* The same bytes appended straight to b: the collector's hot path. */
void msg_usage_encode(mbuf_t *b, const msg_usage_t *u);
/* Returns 0, or -1 with a short reason in err (at least 128 bytes). */
int msg_usage_unpack(const msgpack_object *o, msg_usage_t *u, char *err, size_t cap);

/* A generic StatsD sample (topic metric). */
typedef enum { MSG_ST_C, MSG_ST_G, MSG_ST_MS, MSG_ST_H, MSG_ST_D, MSG_ST_S } msg_stype_t;
typedef struct {
    span_t name;
    msg_stype_t type;
    double value;  /* numeric types, as sent */
    span_t member; /* sets */
    double rate;   /* 0 < rate <= 1 */
    bool delta;    /* gauges: relative */
    int64_t ts;    /* unix ns */
    size_t ntags;
    msg_tag_t tags[MSG_MAX_TAGS];
} msg_sample_t;

const char *msg_stype_name(msg_stype_t t);
void msg_sample_pack(msgpack_packer *pk, const msg_sample_t *s);
void msg_sample_encode(mbuf_t *b, const msg_sample_t *s);
int msg_sample_unpack(const msgpack_object *o, msg_sample_t *s, char *err, size_t cap);

/* One counter or gauge of a stage's own (topic stats). */
typedef struct {
    span_t name; /* e.g. "ingest_rejected_total" */
    size_t nlabels;
    msg_tag_t labels[MSG_STAT_LABELS];
    int64_t value;
    bool gauge;
} msg_stat_t;

/* A stage's counters. entries points at caller memory when packing and at
 * an array the caller supplies (cap entries) when unpacking. */
typedef struct {
    span_t daemon; /* "tokmon-collectd" */
    span_t src;
    int64_t pid;
    int64_t started; /* unix ns */
    int64_t ts;      /* unix ns */
    size_t n;
    msg_stat_t *entries;
} msg_stats_t;

void msg_stats_pack(msgpack_packer *pk, const msg_stats_t *s);
/* entries must have room for cap entries; more than cap is an error. */
int msg_stats_unpack(const msgpack_object *o, msg_stats_t *s, msg_stat_t *entries, size_t cap,
                     char *err, size_t errcap);

/* Packs a span as a msgpack str. */
void msg_pack_span(msgpack_packer *pk, span_t s);

#endif

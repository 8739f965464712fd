/* wire: how tokmon-emit writes one usage event on the wire, as a JSON line,
 * a msgpack map or DogStatsD token counter lines (DESIGN section 2). Numbers
 * that must stay exact (cost_usd, ts, latency) are carried as decimal text. */
#ifndef TOKMON_WIRE_H
#define TOKMON_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_MAX_TAGS 16

typedef enum { WIRE_JSON, WIRE_MSGPACK, WIRE_STATSD } wire_format_t;

typedef struct {
    const char *provider, *model, *operation, *user, *account, *project;
    /* normalised meaning: input includes the cache parts, output the reasoning */
    int64_t input, cache_read, cache_write, cache_write_1h, output, reasoning; /* -1: absent */
    const char *latency_ms, *ttft_ms; /* decimal text or NULL */
    const char *status;               /* "ok", "error" or NULL */
    int http_status;                  /* 0: absent */
    const char *error_type, *request_id;
    const char *cost_usd; /* decimal text or NULL */
    const char *ts;       /* unix seconds as decimal text, or RFC 3339, or NULL */
    int retries;          /* -1: absent */
    const char *usage;    /* a provider usage object as JSON text (JSON only), or NULL */
    const char *tag_k[WIRE_MAX_TAGS], *tag_v[WIRE_MAX_TAGS];
    int ntags;
} wire_event_t;

void wire_event_init(wire_event_t *e);

/* Appends the event to out (cap bytes, *len used) in the given format; JSON
 * and StatsD end without a newline (StatsD: several lines joined by '\n').
 * Returns 0, or -1 when it does not fit. */
int wire_encode(const wire_event_t *e, wire_format_t f, char *out, size_t cap, size_t *len);

#endif

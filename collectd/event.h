/* event: JSON and msgpack usage events (DESIGN section 2) → a usage record
 * with its token counts normalised into disjoint buckets. Field aliases and a
 * provider's own `usage` object (OpenAI, Anthropic, Gemini) are read here;
 * pricing, provider aliases and the shard key are the caller's. Strings in
 * the result point into the input line or into the scratch buffer. */
#ifndef TOKMON_EVENT_H
#define TOKMON_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jtok.h"
#include "mpr.h"
#include "msg.h"
#include "reason.h"

#define EVENT_MAX_STR 256  /* provider, model, ids */
#define EVENT_MAX_TOKENS 4096 /* JSON tokens in one event */

typedef struct {
    size_t max_tags;    /* tags kept; the rest dropped and counted */
    size_t max_tag_len; /* longer tag keys or values are dropped and counted */
} event_limits_t;

/* Room for decoded strings; one per parser, reset for each record. */
typedef struct {
    char *p;
    size_t len, cap;
} scratch_t;

typedef struct {
    msg_usage_t u;       /* ts is 0 when the event had none */
    bool has_cost;       /* cost_usd was sent: u.cost_nusd holds it */
    unsigned tags_dropped;
} event_t;

/* Parses one JSON object (a line beginning with '{'). toks must hold
 * EVENT_MAX_TOKENS. Returns REASON_NONE or why the record is refused. */
reason_t event_parse_json(const char *line, size_t len, const event_limits_t *lim,
                          jtok_t *toks, scratch_t *scratch, event_t *ev);

/* Parses one msgpack map at r, advancing r past it (also on most errors, so
 * the next record of a datagram can be read; *resync is false when the
 * reader is lost, or the value is not a map, and the rest of the datagram
 * must be dropped). */
reason_t event_parse_msgpack(mpr_t *r, const event_limits_t *lim, scratch_t *scratch,
                             event_t *ev, bool *resync);

/* Token bucket fields, shared by StatsD token counters: checks parts against
 * wholes and the 2^40 bound. */
reason_t event_check_tokens(const msg_usage_t *u);


/* The usage-record dimensions that StatsD tags may also carry. */
typedef enum {
    DIM_PROVIDER, DIM_MODEL, DIM_OPERATION, DIM_USER, DIM_ACCOUNT, DIM_PROJECT,
    DIM_STATUS, DIM_REQUEST_ID, DIM_ERROR_TYPE, DIM_COUNT
} event_dim_t;

/* Maps a tag or field name (with the aliases of DESIGN section 2) to a
 * dimension; returns -1 for any other name. */
int event_dimension(span_t key);

#endif

/* query_client: tokmonctl's side of the aggregator's query protocol
 * (aggregator/query.c). Asks one shard or every shard over REQ sockets under
 * one deadline, checks each answer before reading it (it comes from the
 * network), decodes the quota, budgets and top/usage answers, and merges the
 * shards' parts into what one aggregator would have answered. */
#ifndef TOKMON_QUERY_CLIENT_H
#define TOKMON_QUERY_CLIENT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg.h"
#include "span.h"

#define QUERY_CLIENT_MAX_SHARDS  256
#define QUERY_CLIENT_MAX_ANSWER  (256u << 20) /* bytes in one answer frame */
#define QUERY_CLIENT_MAX_WINDOWS 16           /* (window, unit) pairs in a quota answer */

typedef struct query_client query_client_t;

/* One shard's answer. The decoders' spans borrow from frame. */
typedef struct {
    uint32_t shard, shards;
    char *endpoint;
    char *frame;
    size_t len;
    msgpack_unpacked up; /* up.data: the answer map */
} query_client_answer_t;

typedef struct {
    query_client_answer_t *v; /* in shard order */
    size_t n;
} query_client_answers_t;

void query_client_answers_free(query_client_answers_t *a);

/* endpoints is [aggregator] query as configured: one endpoint per shard,
 * separated by commas, or a single endpoint (a tcp one serves shard i at its
 * port + i, as the aggregator binds it). timeout_ns bounds each ask. Returns
 * a new client (destroy it), or NULL with a reason in err on a bad list. Not
 * thread-safe. */
query_client_t *query_client_new(const char *endpoints, int64_t timeout_ns, char *err, size_t cap);
void query_client_destroy(query_client_t **c);

/* Asks every shard the msgpack request req[0..len) and fills out (the
 * caller frees it with query_client_answers_free, also after a failure).
 * Returns 0, or -1 with a reason in err: no answer within the timeout, an
 * answer that is not a msgpack map, "ok": false ("the aggregator says:
 * ..."), or shard numbers that do not match the endpoints. */
int query_client_ask_all(query_client_t *c, const void *req, size_t len,
                         query_client_answers_t *out, char *err, size_t cap);

/* As query_client_ask_all, but asks only the shard that owns user id
 * (out->n is 1 on success). */
int query_client_ask_owner(query_client_t *c, const void *req, size_t len, span_t user,
                           query_client_answers_t *out, char *err, size_t cap);

/* The shard of n that reads a user's events: the low byte of the 64-bit
 * FNV-1a of the id, mod n (the ev.xx topic of DESIGN section 4). */
uint32_t query_client_shard_of(span_t user, uint32_t n);

/* States: 0 ok, 1 warning, 2 exceeded. */
const char *query_client_state_name(int st);

/* ---- quota -------------------------------------------------------------- */

typedef struct {
    span_t window, unit;  /* "day", "month", "5h"; "tokens" or "usd" */
    int64_t used, limit;  /* tokens or nano-dollars; limit 0: none */
    int64_t start, reset; /* unix ns; reset 0: none (an empty sliding window) */
    int state;
} query_client_qwin_t;

typedef struct {
    span_t subject, id;
    bool known;
    int state; /* the worst of the windows */
    int64_t warn_pct, now;
    uint64_t window_requests;
    size_t nw;
    query_client_qwin_t w[QUERY_CLIENT_MAX_WINDOWS];
} query_client_quota_t;

/* Decodes a quota answer map. 0, or -1 with a reason in err. */
int query_client_quota_decode(const msgpack_object *o, query_client_quota_t *q, char *err,
                              size_t cap);
/* Adds part (another shard's answer on the same subject) into q: used and
 * requests summed per window and unit, the sliding reset the earliest, the
 * states judged again from the sums with q's limits and warn_pct. */
void query_client_quota_add(query_client_quota_t *q, const query_client_quota_t *part);

/* ---- top and usage ------------------------------------------------------ */

typedef struct {
    span_t key;
    uint64_t requests, tokens;
    int64_t cost_nusd;
} query_client_row_t;

typedef struct {
    span_t by, metric;
    int64_t window, from, to;
    uint64_t keys; /* keys with usage in the window, before the cut */
    bool truncated;
    query_client_row_t *rows; /* owned */
    size_t n;
} query_client_rows_t;

int query_client_rows_decode(const msgpack_object *o, query_client_rows_t *r, char *err,
                             size_t cap);
void query_client_rows_free(query_client_rows_t *r);
/* Merges the answers parts[0..n) into out (free it): when disjoint (by
 * user: every key lives on one shard) the rows are concatenated, else the
 * rows of one key are summed; then sorted by the metric, descending, and the
 * key, and cut to limit rows (0: all). out borrows the parts' keys. */
void query_client_rows_merge(const query_client_rows_t *parts, size_t n, bool disjoint,
                             int64_t limit, query_client_rows_t *out);

/* ---- budgets ------------------------------------------------------------ */

typedef struct {
    msg_budget_t b;
    uint32_t parts; /* shards summed into it (1: as answered) */
} query_client_budget_t;

typedef struct {
    int64_t now;
    query_client_budget_t *v; /* owned */
    size_t n;
} query_client_budgets_t;

/* Decodes a budgets answer (each record checked with msg_budget_unpack). */
int query_client_budgets_decode(const msgpack_object *o, query_client_budgets_t *b, char *err,
                                size_t cap);
void query_client_budgets_free(query_client_budgets_t *b);
/* Merges the answers parts[0..n) into out (free it): partial records of
 * the same (name, scope_value, period_start) become one with spent and the
 * forecasts summed and remaining, state and exhaust_ts judged again; other
 * records are kept as they are. Sorted by name, scope value, period. */
void query_client_budgets_merge(const query_client_budgets_t *parts, size_t n,
                                query_client_budgets_t *out);

#endif

/* query: the aggregator's question-and-answer protocol (DESIGN section 9),
 * served on a ZeroMQ ROUTER socket at [aggregator] query and asked by
 * tokmonctl (and the exporter's JSON API). A request is one msgpack map,
 * {"q": "quota" | "budgets" | "top" | "usage", ...}; the answer is one
 * msgpack map with "ok" true and the data, or "ok" false and "error".
 * docs/AGGREGATOR.md lists every request and answer field. */
#ifndef TOKMON_QUERY_H
#define TOKMON_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "agg.h"
#include "mbuf.h"

#define QUERY_MAX_REQUEST 65536
#define QUERY_MAX_ROWS 100000

/* Answers the request req[0..len) about a at instant now (unix ns) into out
 * (replacing its contents). Never fails: a bad request gets an error
 * answer. */
void query_answer(agg_t *a, const void *req, size_t len, int64_t now, mbuf_t *out);

#endif

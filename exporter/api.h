/* api: tokmon-exporter's JSON API, on the same port as /metrics, behind an
 * API key ([exporter] api_key_file; X-Api-Key: KEY or Authorization:
 * Bearer KEY, compared in constant time; 401 otherwise):
 *
 *   GET /health                 200 {"status":"ok"} (no key needed)
 *   GET /health/ready           200 when the bus is fresh and the aggregator
 *                               answers, else 503 with the reason (no key)
 *   GET /api/v1/usage           totals since the exporter started (input,
 *                               output and all tokens, requests, cost)
 *   GET /api/v1/usage/window?window=300&by=account|user   sliding window
 *                               (also by=model|project, &id=KEY for one key)
 *   GET /api/v1/quota/{user}    a user's quota (?subject=account for accounts)
 *   GET /api/v1/budgets         (?name=NAME for one budget)
 *   GET /api/v1/top?by=user|account|model|project&window=1h&n=10&metric=cost|tokens
 *   GET /api/v1/history/daily?user=ID&days=30   from PostgreSQL, read-only:
 *                               [exporter] database is a libpq conninfo whose
 *                               login role is granted tokmon_reader (made by
 *                               writer/migrations/001_schema.sql:
 *                               GRANT tokmon_reader TO the_exporter_login)
 *   GET /api/v1/stream          server-sent events: one `call` event per
 *                               priced call, with an id; Last-Event-ID (or
 *                               ?last_event_id=) resumes after it (an `event:
 *                               gap` says what the ring, [exporter]
 *                               stream_buffer calls, no longer had); a
 *                               `: keepalive` comment every 15 s; at most 64
 *
 * Windows are seconds or 300s/5m/1h/1d, at most [aggregator] history. Money
 * is integer nano-dollars (x_nusd) and an exact decimal string of dollars
 * (x_usd, "0.004750000"). Errors are JSON {"error": "..."}: 400 a bad
 * parameter, 401 no valid key, 404, 405, 502 a bad answer upstream, 503
 * PostgreSQL unavailable or no key file, 504 no answer within [exporter]
 * query_timeout. Answers about quotas, budgets, top and windows come from
 * the aggregator's query socket ([aggregator] query, every shard merged,
 * tools/query_client.c) and keep tokmonctl --json's keys. Not thread-safe:
 * the exporter's one loop calls all of it. */
#ifndef TOKMON_API_H
#define TOKMON_API_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "cfg.h"
#include "model.h"
#include "msg.h"
#include "stats.h"

typedef struct api api_t;

/* Reads the key file; NULL with a reason in err on a bad setting. m and st
 * are borrowed (counters api_* go to st). */
api_t *api_new(const cfg_t *cfg, model_t *m, stats_t *st, char *err, size_t cap);
/* Resumes and lets go of every stream connection. Call it BEFORE
 * web_destroy: libmicrohttpd aborts when stopped with a connection still
 * suspended (a stream waiting for calls); the connections then close with
 * the web server. */
void api_destroy(api_t **a);

/* Every priced call from the bus (src, seq, its index in the message), for
 * the stream; now_ns also marks the bus as fresh. */
void api_call(api_t *a, span_t src, uint64_t seq, uint32_t idx, const msg_usage_t *u,
              int64_t now_ns);
/* Any message from the bus: the bus is alive. */
void api_bus_seen(api_t *a, int64_t now_ns);

/* Answers a request for anything but /metrics (web.c routes here). */
enum MHD_Result api_handle(api_t *a, struct MHD_Connection *c, const char *method,
                           const char *url);

/* From the loop: wakes stream connections waiting for calls. */
void api_work(api_t *a, int64_t now_ns);

/* Streams open now. */
size_t api_streams(const api_t *a);

#endif

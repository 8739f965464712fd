/* loki: pushes call records and alert transitions to Loki's push API
 * (POST /loki/api/v1/push, JSON, gzip) for tokmon-exporter. Entries are
 * queued in memory (bounded: the oldest are dropped and counted when the
 * queue is full), batched by size and time, and sent with libcurl's multi
 * interface from the exporter's loop, never blocking it. 429 and 5xx are
 * retried with backoff and jitter (a cap on the wait and on the tries); any
 * other 4xx drops the batch (counted, logged). A few stream labels only
 * (service, env, level, provider); user, model, request id and the rest go
 * in each line's structured metadata. Basic auth (Grafana Cloud: the
 * numeric instance id and a token) and X-Scope-OrgID (a multi-tenant Loki)
 * when configured. */
#ifndef TOKMON_LOKI_H
#define TOKMON_LOKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "msg.h"
#include "stats.h"

typedef struct loki loki_t;

/* One thread owns a loki (the exporter's loop); nothing here is
 * thread-safe. Every function accepts l == NULL (Loki push off) and then
 * does nothing, so the caller need not test for it.
 *
 * Times: now_ns and ts_ns are unix ns on the caller's clock; the batch wait
 * and the retry backoff are measured on it too. Loki's timestamp of an
 * entry is the time it was queued (a call's now_ns, an alert's ts_ns), made
 * strictly increasing over all entries so that every stream reaches Loki in
 * time order; the call's own ts and recv_ts are in the line. */

/* NULL when [exporter] loki_url is empty (Loki push off: *failed false) or
 * on a bad setting (*failed true, err says which). loki_url is the base URL
 * (/loki/api/v1/push is added) or the push URL itself. The password is read
 * from loki_password_file here (its first line, line end stripped) and is
 * never logged. Calls curl_global_init (reference-counted by libcurl).
 * Counters and gauges (loki_*) are registered in st, which must outlive l. */
loki_t *loki_new(const cfg_t *cfg, stats_t *st, bool *failed, char *err, size_t cap);
/* Frees l and sets *l to NULL; entries not yet accepted by Loki are counted
 * as loki_dropped_total{reason="shutdown"} (call loki_drain first). */
void loki_destroy(loki_t **l);

/* Queues one priced call (an ev.* record) seen at now_ns. u is borrowed:
 * everything needed is copied. Level error for status "error", else info;
 * stream labels service, env, level, provider (left out when empty);
 * structured metadata kind=call, user, account, project, model, operation,
 * request_id (absent or empty ones left out). */
void loki_call(loki_t *l, const msg_usage_t *u, int64_t now_ns);

/* Queues one alert transition: its name, state (pending, firing,
 * resolved), severity, and a JSON object of its labels and annotations
 * (may be NULL; text that is not a JSON object goes in the line as a
 * string, counted). All borrowed. Level: critical -> error, warning -> warn,
 * else info; a resolution is always info. No provider label; structured
 * metadata kind=alert, alertname, state, severity. */
void loki_alert(loki_t *l, const char *alertname, const char *state, const char *severity,
                const char *json, size_t jsonlen, int64_t ts_ns);

/* Sends what is due and handles answers; call it every loop turn. Never
 * blocks. Returns the milliseconds until it next wants to run (a poll
 * timeout): 0 to 1000, at most 5 while a request is in flight (libcurl's
 * sockets are not in the caller's poll set), 1000 when idle. */
long loki_work(loki_t *l, int64_t now_ns);

/* On shutdown: closes the batch and sends what is queued (several batches
 * if need be, retries included), blocking for up to timeout_ms; what is
 * still not accepted then is dropped and counted (reason "shutdown"). */
void loki_drain(loki_t *l, long timeout_ms);

#endif

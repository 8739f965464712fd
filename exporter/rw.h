/* rw: Prometheus remote write 1.0 from tokmon-exporter: every interval the
 * samples of the exporter's model (model_each_sample) go out as one
 * protobuf WriteRequest (exporter/remote.proto, protobuf-c), compressed with
 * snappy's block format, POSTed with Content-Encoding: snappy,
 * Content-Type: application/x-protobuf and
 * X-Prometheus-Remote-Write-Version: 0.1.0, labels sorted by name and
 * checked (valid names, no empty values; __name__ where it sorts, which is
 * after any name starting with a capital letter). 5xx and 429 are retried
 * with backoff and a cap (on the tries and the age of the data), never
 * other 4xx. Basic auth or a bearer token. libcurl multi, from the
 * exporter's loop, never blocking it. Any receiver: Grafana Cloud, Mimir,
 * a Prometheus with --web.enable-remote-write-receiver. */
#ifndef TOKMON_RW_H
#define TOKMON_RW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "mbuf.h"
#include "model.h"
#include "stats.h"

typedef struct rw rw_t;

/* NULL when [exporter] remote_write_url is empty (off; *failed false) or on
 * a bad setting (*failed set, err says which, with its file:line): a URL
 * that is not http(s), both a bearer file and basic auth, a user without a
 * password file or the reverse, a secret file that cannot be read, is empty
 * or has more than one line. The secret files are read here, once (their
 * line end stripped); secrets are never logged. remote_write_url is the
 * whole endpoint (Prometheus: http://host:9090/api/v1/write). Counters go
 * to st, which must outlive r:
 *   rw_requests_total          POSTs made, retries included
 *   rw_retries_total           of which retries
 *   rw_bytes_total             compressed bytes POSTed
 *   rw_samples_total           samples the receiver took (2xx)
 *   rw_errors_total{reason}    failed tries: http_5xx, http_429, http_4xx,
 *                              http_other (1xx/3xx), transport, encode
 *   rw_dropped_total{reason}   samples given up: superseded (newer data was
 *                              due), retries (tries used up), rejected (4xx
 *                              other than 429), shutdown, encode
 *   rw_invalid_series_total{reason}  series left out: metric_name,
 *                              label_name, duplicate_label, utf8
 *   rw_empty_labels_total      empty-valued labels left out (series kept)
 *   rw_last_ms                 gauge: unix ms of the last accepted request
 *   rw_request_duration_ms     gauge: the last try's duration
 *   rw_series                  gauge: series in the last snapshot */
rw_t *rw_new(const cfg_t *cfg, stats_t *st, bool *failed, char *err, size_t cap);
void rw_destroy(rw_t **r);

/* Call every loop turn, now_ns the wall clock. The first snapshot comes one
 * remote_write_interval after the first call, then one per interval: m's
 * samples, all stamped now, in requests of at most 2000 series sent one
 * after the other. A 5xx, 429 or transport error is tried again after
 * 100 ms doubling up to remote_write_backoff_max, with jitter (a wait in
 * [d/2, d]), up to remote_write_retries times after the first try; never
 * past the next interval: a retry that would come at or after it drops
 * the rest of its interval (superseded), since the next snapshot carries
 * the same series with newer values. Other 4xx drop that request (counted,
 * its answer logged, truncated). A request in flight when the interval
 * falls due is waited for (remote_write_timeout bounds it) and the
 * snapshot taken when it ends, so requests never overlap and samples
 * arrive in order. Never blocks. Returns the ms until it next wants to run
 * (10 at most while a request is in flight; a long wait when r is NULL).
 * Single-threaded: the exporter's loop. */
long rw_work(rw_t *r, const model_t *m, int64_t now_ns);

/* On shutdown: waits for a request in flight, then one last snapshot of m
 * (m may be NULL: none) sent with retries, all within timeout_ms; what is
 * left then is dropped (shutdown). Blocks up to timeout_ms. r may be NULL. */
void rw_drain(rw_t *r, const model_t *m, long timeout_ms);

/* ---- the encoding rw_work uses, open for its unit test ---------------- */

/* Prometheus' names: a metric [a-zA-Z_:][a-zA-Z0-9_:]*, a label
 * [a-zA-Z_][a-zA-Z0-9_]*. NULL is not a name. */
bool rw_metric_name_ok(const char *s);
bool rw_label_name_ok(const char *s);

/* The series of one WriteRequest being built. Single-threaded. */
typedef struct rw_enc rw_enc_t;
rw_enc_t *rw_enc_new(void);
void rw_enc_destroy(rw_enc_t **e);

/* Adds one series with one sample (ts_ms: unix ms); the strings are
 * copied. __name__ = name joins the labels, all sorted by name (byte
 * order). A label with an empty value is left out (in Prometheus an empty
 * label is no label: the series stays the one /metrics shows) and counted
 * into *empty (may be NULL). Returns NULL when added, else why the series
 * was skipped: "metric_name", "label_name", "duplicate_label" (__name__
 * among labels too) or "utf8" (a value that is not UTF-8). */
const char *rw_enc_add(rw_enc_t *e, const char *name, const model_label_t *labels,
                       size_t nlabels, double value, int64_t ts_ms, size_t *empty);

/* Series added since the last rw_enc_finish. */
size_t rw_enc_series(const rw_enc_t *e);

/* Packs those series into a WriteRequest (protobuf), compresses it with
 * snappy's block format into out (replacing its contents) and empties e.
 * Returns 0, or -1 with err (e emptied all the same). */
int rw_enc_finish(rw_enc_t *e, mbuf_t *out, char *err, size_t cap);

#endif

/* notify: tokmon-alerter's deliveries to the receivers of [notify.NAME]:
 *
 *   webhook       POST the JSON of Alertmanager's webhook (version 4), so
 *                 that existing receivers work; basic auth with user and
 *                 password_file
 *   slack         POST {"text": ...} to an incoming-webhook URL
 *   telegram      POST {url}/bot<token>/sendMessage {"chat_id", "text",
 *                 "disable_web_page_preview": true}; a 429 waits what its
 *                 parameters.retry_after says
 *   email         SMTP with libcurl (smtp:// with STARTTLS required unless
 *                 starttls = off, then plain; or smtps:// implicit TLS; AUTH
 *                 with user and password_file), one text/plain UTF-8 message
 *                 per group
 *   alertmanager  POST {url}/api/v2/alerts, a JSON array of alerts (firing
 *                 ones without endsAt, resolved ones with endsAt); basic auth
 *                 as webhook
 *
 * Chat texts and mail subjects start with a title in Alertmanager's manner:
 * "[FIRING:2] LLMBudgetExceeded (budget=daily)" (the group's label values,
 * then the labels all alerts share besides those, alertname and severity),
 * then one line per alert (its summary, else description, else labels).
 *
 * A delivery is retried with exponential backoff and jitter (from 0.5 s, up
 * to backoff_max, at most `retries` more tries) on transport errors,
 * timeouts, 429, 5xx and SMTP 4xx; a wait the server asks for (Retry-After,
 * Telegram's retry_after) is honoured instead, up to an hour. Other answers
 * (HTTP 4xx, SMTP 5xx, a refused login, STARTTLS missing) end it as failed.
 * One delivery per receiver is in flight at a time, so each receiver gets
 * its notifications in order; receivers are served concurrently. At most
 * 10,000 deliveries wait in all; beyond that the oldest is dropped
 * (counted, and reported as failed).
 *
 * Counters (st): notify_deliveries_total{receiver,outcome=ok|failed},
 * notify_attempts_total{receiver}, notify_retries_total{receiver},
 * notify_queued_total{receiver}, notify_errors_total{receiver,reason},
 * notify_filtered_total{receiver,reason=severity|resolved|pending} (alerts),
 * notify_dropped_total{receiver,reason=queue_full|shutdown},
 * notify_invalid_utf8_total, notify_results_dropped_total; gauges
 * notify_queue, notify_receiver_queue{receiver},
 * notify_last_success_seconds{receiver}.
 *
 * Secrets (token_file, password_file) are read once in notify_new: a file's
 * first and only line, or with "env:NAME" the environment variable NAME.
 * They are never logged: log lines show URLs without user info, query, bot
 * token or a Slack webhook's path, and secrets are scrubbed from response
 * bodies and errors before they are logged or reported. Everything runs from
 * the alerter's loop over libcurl's multi interface; nothing blocks but
 * notify_drain. One thread owns a notify_t; nothing here is thread-safe.
 *
 * Times: now_ns is the caller's clock (unix ns, the wall clock); backoff
 * waits are measured on it (a clock stepped back does not hold them). */
#ifndef TOKMON_NOTIFY_H
#define TOKMON_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "msg.h"
#include "stats.h"

typedef struct notify notify_t;

/* A group of alerts for one receiver: what one notification carries, in
 * Alertmanager's terms. Everything is copied by notify_send. Alerts in
 * state "pending" are never sent (Alertmanager knows none); an alert's
 * labels are sent with alertname and severity added when missing. */
typedef struct {
    const char *group_key;           /* stable id of the group */
    const msg_tag_t *group_labels;   /* the group_by labels and their values */
    size_t ngroup_labels;
    const msg_alert_t *alerts;       /* firing and resolved ones */
    size_t nalerts;
    const char *external_url;        /* where people look (may be "") */
} notify_group_t;

/* Every [notify.NAME] of cfg (none is fine); NULL with a reason naming the
 * section in err (a secret file missing, empty or of several lines, a bad
 * URL or mail address). Calls curl_global_init (reference-counted). Counters
 * are registered in st, which must outlive the notify_t; cfg is not kept. */
notify_t *notify_new(const cfg_t *cfg, stats_t *st, char *err, size_t cap);
/* Frees *n and sets it to NULL; deliveries not yet made are counted as
 * dropped (reason shutdown): call notify_drain first. */
void notify_destroy(notify_t **n);

/* Whether a receiver of that name exists. */
bool notify_has(const notify_t *n, const char *receiver);

/* Queues a notification of g to receiver (its severity filter and
 * send_resolved applied: a receiver with severity = warning takes warning
 * and critical alerts; an unknown severity always passes). Returns a
 * delivery id (> 0, increasing), 0 when no alert was left to send (nothing
 * queued), or -1 for an unknown receiver. The payload is made here: g is
 * not referenced after the call. */
int64_t notify_send(notify_t *n, const char *receiver, const notify_group_t *g, int64_t now_ns);

/* Queues a plain message (the daily digest): subject and text (UTF-8, \n
 * line ends), sent as the receiver's type sends text (webhook:
 * {"subject","text"} JSON; slack and telegram: subject, a blank line, text;
 * email: the subject as Subject). No severity filter. Alertmanager receivers
 * do not take messages: returns 0. Ids and -1 as notify_send. */
int64_t notify_message(notify_t *n, const char *receiver, const char *subject, const char *text,
                       int64_t now_ns);

/* Sends what is due, handles answers and retries; call it every loop turn
 * (n may be NULL). Never blocks. Returns the ms until it next wants to run
 * (0..1000; at most 5 while a request is in flight, as libcurl's sockets
 * are not in the caller's poll set). */
long notify_work(notify_t *n, int64_t now_ns);

/* Deliveries queued or in flight. */
size_t notify_pending(const notify_t *n);

/* Each delivery that ended since the last call: delivered, given up, or
 * dropped (queue full, shutdown), in the order they ended. The strings are
 * valid during the callback; fn may call notify_send. Up to 10,000 are kept
 * between calls (the oldest then go, counted). */
typedef struct {
    int64_t id;
    const char *receiver;
    bool ok;
    int attempts;
    const char *error; /* the last failure, "" when ok */
} notify_result_t;
void notify_results(notify_t *n, void (*fn)(void *arg, const notify_result_t *r), void *arg);

/* On shutdown: keeps sending (retries and their waits included), blocking
 * for up to timeout_ms; what is still not delivered then is dropped
 * (counted as shutdown, reported by notify_results). */
void notify_drain(notify_t *n, long timeout_ms);

#endif

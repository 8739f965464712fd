/* engine: tokmon-alerter's alerts, with Prometheus and Alertmanager
 * semantics. Each evaluation round the rules' conditions (rules.h) come in;
 * an alert is identified by its labels (alertname, severity and the rule's
 * labels; the fingerprint is a hash of them):
 *
 *   a new condition       pending (firing at once when its `for` is 0)
 *   held for `for`        firing
 *   gone while firing     resolved
 *   gone while pending    dropped (published as resolved, never notified)
 *
 * Every transition is published (topic alert). Firing and resolved alerts
 * are notified by group: a group is a receiver and the values of
 * [alerter] group_by; its first notification waits group_wait, a change
 * waits group_interval after the last notification, and firing alerts are
 * notified again after repeat_interval. Alertmanager receivers get every
 * change at once and firing alerts again every resend_interval (so that
 * they do not expire there), resolved ones with endsAt. A warning is
 * inhibited while its critical twin fires (the same labels but alertname
 * and severity, alertnames differing only in a Warning/Exceeded/Critical
 * ending). Silences (label matchers, for a while) keep matching alerts out
 * of notifications. The whole state (alerts, groups, what was notified,
 * silences) is saved with the rules' and survives a restart: an alert that
 * fired stays firing, pending timers go on, nothing fires twice. */
#ifndef TOKMON_ENGINE_H
#define TOKMON_ENGINE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "msg.h"
#include "notify.h"
#include "rules.h"
#include "stats.h"

typedef struct engine engine_t;

typedef struct {
    const cfg_t *cfg;
    stats_t *stats;
    notify_t *notify; /* NULL: no receivers */
    /* publishes one transition on the alert topic */
    void (*publish)(void *arg, const msg_alert_t *a);
    void *arg;
} engine_opts_t;

engine_t *engine_new(const engine_opts_t *o, char *err, size_t cap);
void engine_destroy(engine_t **e);

/* One round: the conditions holding at now_ns, then the transitions,
 * publications and notifications that follow. Returns the number of
 * transitions (the caller saves the state when there were any). */
size_t engine_round(engine_t *e, rules_t *r, int64_t now_ns);

/* Notifications due by time alone (group timers, repeats, resends). */
void engine_tick(engine_t *e, int64_t now_ns);

/* Silences. matchers: "name=value", "name!=value", "name=~regex"
 * or "name!~regex" (anchored, POSIX extended), separated by spaces or commas. Returns 0 and
 * the new silence's id in id (>= 17 bytes), or -1 with a reason. */
int engine_silence_add(engine_t *e, const char *matchers, int64_t until_ns, const char *comment,
                       const char *by, int64_t now_ns, char *id, char *err, size_t cap);
int engine_silence_expire(engine_t *e, const char *id, int64_t now_ns);

/* Listings for tokmonctl, as msgpack arrays of maps. */
void engine_pack_alerts(const engine_t *e, msgpack_packer *pk);
void engine_pack_silences(const engine_t *e, int64_t now_ns, msgpack_packer *pk);

/* Alerts firing now (for the daily digest and counters). */
size_t engine_firing(const engine_t *e);
/* Transitions to firing in [from, to), for the digest: fn per alert. */
void engine_fired_between(const engine_t *e, int64_t from_ns, int64_t to_ns,
                          void (*fn)(void *arg, const char *alertname, const char *summary,
                                     int64_t at_ns),
                          void *arg);

/* Durable state: one msgpack value; engine_load returns 0 or -1
 * (malformed: e left empty, with a reason in err). */
void engine_save(const engine_t *e, msgpack_packer *pk);
int engine_load(engine_t *e, const msgpack_object *o, char *err, size_t cap);

#endif

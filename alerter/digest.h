/* digest: the daily summary tokmon-alerter sends at [alerter] digest_hour
 * (in [global] timezone): the previous day's cost, tokens, requests and
 * errors, its top users and models by cost, the budgets as they stand, the
 * alerts that fired, and what fires now. Plain text, for every kind of receiver. */
#ifndef TOKMON_DIGEST_H
#define TOKMON_DIGEST_H

#include <stdint.h>

#include "engine.h"
#include "mbuf.h"
#include "rules.h"

/* The digest of [from, to) (unix ns) into subject (>= 128 bytes) and text.
 * day: the day's name for people ("2026-11-21"). */
void digest_build(const rules_t *r, const engine_t *e, int64_t from, int64_t to, const char *day,
                  char *subject, size_t subjcap, mbuf_t *text);

#endif

/* What the aggregator's fuzzers (fuzz_aggbus, fuzz_snapshot, fuzz_query)
 * share: a check that says why it failed, and the aggregator they run. */
#ifndef TOKMON_FUZZ_AGG_H
#define TOKMON_FUZZ_AGG_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(c, ...)                                                                           \
    do {                                                                                        \
        if (!(c)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #c);               \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fputc('\n', stderr);                                                                \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

/* Europe/Paris, quotas with a 10-minute window and overrides, three budgets
 * (one per user, with rollover), small lateness so that buckets close. The
 * snapshot seeds (tests/fuzz/corpus/snapshot) are written by an aggregator
 * of this config, so their budgets match. */
#define FUZZ_AGG_INI                                                                            \
    "[global]\ntimezone = Europe/Paris\n"                                                       \
    "[aggregator]\nlateness = 1m\nclose_delay = 1s\nstatsd_interval = 1s\nhistory = 2h\n"       \
    "budget_interval = 100ms\nquota_sweep = 100ms\nstatsd_max_series = 512\n"                   \
    "statsd_max_set = 64\nstatsd_idle = 3\n"                                                    \
    "[quota]\nwindow = 10m\ndaily_tokens = 5000\nmonthly_tokens = 100000\nwindow_tokens = 1000\n" \
    "daily_usd = 1\nwindow_usd = 0.1\nwarn_pct = 50\n"                                          \
    "[quota.user.vip]\ndaily_tokens = 1000000\nwindow_tokens = -1\n"                            \
    "[quota.account]\ndaily_usd = 2\nmonthly_tokens = 50000\n"                                  \
    "[quota.account.acme]\nmonthly_tokens = 10\n"                                               \
    "[budget.daily]\nscope = global\nperiod = day\nlimit_usd = 1\nwarn_pct = 80\n"              \
    "[budget.peruser]\nscope = user\nperiod = week\nlimit_usd = 0.5\nrollover = on\n"           \
    "rollover_cap_usd = 0.25\n"                                                                 \
    "[budget.acme]\nscope = account:acme\nperiod = month\nlimit_usd = 2\n"

#endif

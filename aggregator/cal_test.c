/* cal_test: tests of aggregator/cal: tables of {zone, period, instant,
 * expected start, next, id} (daylight-saving days, midnights that do not
 * exist, half-hour and extreme offsets, leap days, month ends, ISO weeks
 * across years, the footer rule past the TZif table), local times, refused
 * zones and files, synthetic TZif files that exercise the footer's POSIX
 * rules, and properties over random instants checked against the C
 * library's localtime_r. Expected values were computed apart (Python's
 * zoneinfo and zdump). Run one test alone with `cal_test NAME`. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "cal.h"
#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NS ((int64_t)TMTIME_NS_PER_SEC)
#define HOUR_NS (3600 * NS)
#define DAY_NS (24 * HOUR_NS)

static const char *const period_names[] = { "day", "week", "month" };

static int64_t ts(const char *s)
{
    int64_t v = 0;
    if (tmtime_rfc3339_parse(s, strlen(s), &v) != 0)
        fail_msg("bad RFC 3339 stamp in the table: %s", s);
    return v;
}

static cal_t *open_zone(const char *zone)
{
    char err[256];
    cal_t *c = cal_new(zone, err, sizeof err);
    if (c == NULL)
        fail_msg("cal_new(%s): %s", zone, err);
    return c;
}

/* ---- periods: the table ----------------------------------------------- */

typedef struct {
    const char *group; /* the test that runs the row */
    const char *zone;
    cal_period_t p;
    const char *at, *start, *next;
    int64_t id;
} row_t;

static const row_t rows[] = {
    /* UTC; the instant that starts a period belongs to it */
    { "utc", "UTC", CAL_DAY, "2026-11-22T14:54:09Z", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z", 20261122 },
    { "utc", "UTC", CAL_WEEK, "2026-11-22T14:54:09Z", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z", 202647 },
    { "utc", "UTC", CAL_MONTH, "2026-11-22T14:54:09Z", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", 202611 },
    { "utc", "UTC", CAL_DAY, "2026-11-22T00:00:00Z", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z", 20261122 },
    { "utc", "UTC", CAL_DAY, "2026-11-22T23:59:59.999999999Z", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z", 20261122 },
    { "utc", "UTC", CAL_DAY, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1970-01-02T00:00:00Z", 19700101 },
    { "utc", "UTC", CAL_MONTH, "1970-01-31T23:59:59.999999999Z", "1970-01-01T00:00:00Z", "1970-02-01T00:00:00Z", 197001 },
    { "utc", "Etc/UTC", CAL_MONTH, "2026-12-31T23:59:59.999999999Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z", 202612 },

    /* Europe/Paris: 2026-03-29 02:00 CET -> 03:00 CEST (23 h),
     * 2026-10-25 03:00 CEST -> 02:00 CET (25 h) */
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-28T23:59:59.999999999+01:00", "2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00", 20260328 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-29T00:00:00+01:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 20260329 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-29T01:59:59.999999999+01:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 20260329 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-29T03:00:00+02:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 20260329 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-29T23:59:59.999999999+02:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 20260329 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-03-30T00:00:00+02:00", "2026-03-30T00:00:00+02:00", "2026-03-31T00:00:00+02:00", 20260330 },
    { "paris_dst", "Europe/Paris", CAL_WEEK, "2026-03-29T12:00:00+02:00", "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 202613 },
    { "paris_dst", "Europe/Paris", CAL_MONTH, "2026-03-29T12:00:00+02:00", "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00", 202603 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-10-25T00:00:00+02:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 20261025 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-10-25T02:59:59.999999999+02:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 20261025 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-10-25T02:00:00+01:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 20261025 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-10-25T23:59:59.999999999+01:00", "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 20261025 },
    { "paris_dst", "Europe/Paris", CAL_DAY, "2026-10-26T00:00:00+01:00", "2026-10-26T00:00:00+01:00", "2026-10-27T00:00:00+01:00", 20261026 },
    { "paris_dst", "Europe/Paris", CAL_WEEK, "2026-10-25T02:30:00+01:00", "2026-10-19T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 202643 },
    { "paris_dst", "Europe/Paris", CAL_MONTH, "2026-10-31T23:59:59.999999999+01:00", "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00", 202610 },

    /* America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT,
     * 2026-11-01 02:00 EDT -> 01:00 EST; a negative offset moves the date */
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-03-08T01:59:59.999999999-05:00", "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", 20260308 },
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-03-08T03:00:00-04:00", "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", 20260308 },
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-11-01T01:30:00-04:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 20261101 },
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-11-01T01:30:00-05:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 20261101 },
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-11-01T23:59:59.999999999-05:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 20261101 },
    { "new_york_dst", "America/New_York", CAL_DAY, "2026-11-22T03:00:00Z", "2026-11-21T00:00:00-05:00", "2026-11-22T00:00:00-05:00", 20261121 },
    { "new_york_dst", "America/New_York", CAL_WEEK, "2026-11-01T12:00:00-05:00", "2026-10-26T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 202644 },
    { "new_york_dst", "America/New_York", CAL_MONTH, "2026-03-15T12:00:00-04:00", "2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00", 202603 },

    /* America/Sao_Paulo: 2018-11-04 00:00 -03 did not exist (-> 01:00 -02),
     * so the day began at 01:00; 2019-02-16 was 25 h */
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2018-11-03T23:59:59.999999999-03:00", "2018-11-03T00:00:00-03:00", "2018-11-04T01:00:00-02:00", 20181103 },
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2018-11-04T01:00:00-02:00", "2018-11-04T01:00:00-02:00", "2018-11-05T00:00:00-02:00", 20181104 },
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2018-11-04T12:00:00-02:00", "2018-11-04T01:00:00-02:00", "2018-11-05T00:00:00-02:00", 20181104 },
    { "sao_paulo", "America/Sao_Paulo", CAL_WEEK, "2018-11-04T12:00:00-02:00", "2018-10-29T00:00:00-03:00", "2018-11-05T00:00:00-02:00", 201844 },
    { "sao_paulo", "America/Sao_Paulo", CAL_MONTH, "2018-11-04T01:00:00-02:00", "2018-11-01T00:00:00-03:00", "2018-12-01T00:00:00-02:00", 201811 },
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2019-02-16T23:30:00-02:00", "2019-02-16T00:00:00-02:00", "2019-02-17T00:00:00-03:00", 20190216 },
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2019-02-16T23:30:00-03:00", "2019-02-16T00:00:00-02:00", "2019-02-17T00:00:00-03:00", 20190216 },
    { "sao_paulo", "America/Sao_Paulo", CAL_DAY, "2026-11-22T12:00:00-03:00", "2026-11-22T00:00:00-03:00", "2026-11-23T00:00:00-03:00", 20261122 },

    /* other midnights that did not exist: Asia/Beirut 2019-03-31 and
     * America/Havana 2026-03-08 (00:00 -> 01:00); Beirut's 2019-10-26 ran
     * to 24:00 EEST, then 23:00-24:00 EET again (25 h) */
    { "midnight_gap", "Asia/Beirut", CAL_DAY, "2019-03-30T23:59:59.999999999+02:00", "2019-03-30T00:00:00+02:00", "2019-03-31T01:00:00+03:00", 20190330 },
    { "midnight_gap", "Asia/Beirut", CAL_DAY, "2019-03-31T01:00:00+03:00", "2019-03-31T01:00:00+03:00", "2019-04-01T00:00:00+03:00", 20190331 },
    { "midnight_gap", "Asia/Beirut", CAL_MONTH, "2019-03-31T01:00:00+03:00", "2019-03-01T00:00:00+02:00", "2019-04-01T00:00:00+03:00", 201903 },
    { "midnight_gap", "Asia/Beirut", CAL_DAY, "2019-10-26T23:30:00+02:00", "2019-10-26T00:00:00+03:00", "2019-10-27T00:00:00+02:00", 20191026 },
    { "midnight_gap", "America/Havana", CAL_DAY, "2026-03-07T23:59:59.999999999-05:00", "2026-03-07T00:00:00-05:00", "2026-03-08T01:00:00-04:00", 20260307 },
    { "midnight_gap", "America/Havana", CAL_DAY, "2026-03-08T01:00:00-04:00", "2026-03-08T01:00:00-04:00", "2026-03-09T00:00:00-04:00", 20260308 },
    { "midnight_gap", "America/Havana", CAL_WEEK, "2026-03-08T01:00:00-04:00", "2026-03-02T00:00:00-05:00", "2026-03-09T00:00:00-04:00", 202610 },
    { "midnight_gap", "America/Havana", CAL_DAY, "2026-11-01T00:30:00-05:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 20261101 },

    /* America/St_Johns 2010-11-07 00:01 NDT -> 2010-11-06 23:01 NST: the
     * repeated hour of the 6th belongs to the 7th, which had begun */
    { "fallback_midnight", "America/St_Johns", CAL_DAY, "2010-11-06T23:30:00-02:30", "2010-11-06T00:00:00-02:30", "2010-11-07T00:00:00-02:30", 20101106 },
    { "fallback_midnight", "America/St_Johns", CAL_DAY, "2010-11-07T00:00:30-02:30", "2010-11-07T00:00:00-02:30", "2010-11-08T00:00:00-03:30", 20101107 },
    { "fallback_midnight", "America/St_Johns", CAL_DAY, "2010-11-06T23:30:00-03:30", "2010-11-07T00:00:00-02:30", "2010-11-08T00:00:00-03:30", 20101107 },
    { "fallback_midnight", "America/St_Johns", CAL_DAY, "2010-11-07T00:00:00-03:30", "2010-11-07T00:00:00-02:30", "2010-11-08T00:00:00-03:30", 20101107 },

    /* half-hour offsets: Asia/Kolkata +05:30, Australia/Adelaide +09:30
     * and +10:30 (DST ends 2026-04-05 03:00, starts 2026-10-04 02:00),
     * Australia/Lord_Howe's half-hour DST */
    { "half_hour", "Asia/Kolkata", CAL_DAY, "2026-11-21T18:29:59.999999999Z", "2026-11-21T00:00:00+05:30", "2026-11-22T00:00:00+05:30", 20261121 },
    { "half_hour", "Asia/Kolkata", CAL_DAY, "2026-11-21T18:30:00Z", "2026-11-22T00:00:00+05:30", "2026-11-23T00:00:00+05:30", 20261122 },
    { "half_hour", "Asia/Kolkata", CAL_WEEK, "2026-11-22T12:00:00+05:30", "2026-11-16T00:00:00+05:30", "2026-11-23T00:00:00+05:30", 202647 },
    { "half_hour", "Asia/Kolkata", CAL_MONTH, "2026-11-30T18:30:00Z", "2026-12-01T00:00:00+05:30", "2027-01-01T00:00:00+05:30", 202612 },
    { "half_hour", "Australia/Adelaide", CAL_DAY, "2026-04-05T02:30:00+10:30", "2026-04-05T00:00:00+10:30", "2026-04-06T00:00:00+09:30", 20260405 },
    { "half_hour", "Australia/Adelaide", CAL_DAY, "2026-04-05T02:30:00+09:30", "2026-04-05T00:00:00+10:30", "2026-04-06T00:00:00+09:30", 20260405 },
    { "half_hour", "Australia/Adelaide", CAL_DAY, "2026-10-04T01:59:59.999999999+09:30", "2026-10-04T00:00:00+09:30", "2026-10-05T00:00:00+10:30", 20261004 },
    { "half_hour", "Australia/Adelaide", CAL_DAY, "2026-10-04T03:00:00+10:30", "2026-10-04T00:00:00+09:30", "2026-10-05T00:00:00+10:30", 20261004 },
    { "half_hour", "Australia/Adelaide", CAL_MONTH, "2026-04-01T00:00:00+10:30", "2026-04-01T00:00:00+10:30", "2026-05-01T00:00:00+09:30", 202604 },
    { "half_hour", "Australia/Adelaide", CAL_MONTH, "2026-10-31T23:59:59.999999999+10:30", "2026-10-01T00:00:00+09:30", "2026-11-01T00:00:00+10:30", 202610 },
    { "half_hour", "Australia/Lord_Howe", CAL_DAY, "2026-10-04T12:00:00+11:00", "2026-10-04T00:00:00+10:30", "2026-10-05T00:00:00+11:00", 20261004 },

    /* the extremes: Pacific/Kiritimati +14 (it skipped 1994-12-31) and
     * Pacific/Pago_Pago -11; Pacific/Apia skipped 2011-12-30 */
    { "extreme_offsets", "Pacific/Kiritimati", CAL_DAY, "2026-11-22T09:59:59.999999999Z", "2026-11-22T00:00:00+14:00", "2026-11-23T00:00:00+14:00", 20261122 },
    { "extreme_offsets", "Pacific/Kiritimati", CAL_DAY, "2026-11-22T10:00:00Z", "2026-11-23T00:00:00+14:00", "2026-11-24T00:00:00+14:00", 20261123 },
    { "extreme_offsets", "Pacific/Kiritimati", CAL_MONTH, "2026-12-31T10:00:00Z", "2027-01-01T00:00:00+14:00", "2027-02-01T00:00:00+14:00", 202701 },
    { "extreme_offsets", "Pacific/Kiritimati", CAL_WEEK, "2026-12-31T10:00:00Z", "2026-12-28T00:00:00+14:00", "2027-01-04T00:00:00+14:00", 202653 },
    { "extreme_offsets", "Pacific/Kiritimati", CAL_DAY, "1994-12-30T23:59:59-10:00", "1994-12-30T00:00:00-10:00", "1995-01-01T00:00:00+14:00", 19941230 },
    { "extreme_offsets", "Pacific/Kiritimati", CAL_DAY, "1995-01-01T00:00:00+14:00", "1995-01-01T00:00:00+14:00", "1995-01-02T00:00:00+14:00", 19950101 },
    { "extreme_offsets", "Pacific/Pago_Pago", CAL_DAY, "2026-11-22T10:59:59.999999999Z", "2026-11-21T00:00:00-11:00", "2026-11-22T00:00:00-11:00", 20261121 },
    { "extreme_offsets", "Pacific/Pago_Pago", CAL_DAY, "2026-11-22T11:00:00Z", "2026-11-22T00:00:00-11:00", "2026-11-23T00:00:00-11:00", 20261122 },
    { "extreme_offsets", "Pacific/Pago_Pago", CAL_MONTH, "2026-01-01T10:59:59.999999999Z", "2025-12-01T00:00:00-11:00", "2026-01-01T00:00:00-11:00", 202512 },
    { "extreme_offsets", "Pacific/Pago_Pago", CAL_WEEK, "2027-01-04T10:59:59Z", "2026-12-28T00:00:00-11:00", "2027-01-04T00:00:00-11:00", 202653 },
    { "extreme_offsets", "Pacific/Apia", CAL_DAY, "2011-12-29T23:59:59.999999999-10:00", "2011-12-29T00:00:00-10:00", "2011-12-31T00:00:00+14:00", 20111229 },
    { "extreme_offsets", "Pacific/Apia", CAL_DAY, "2011-12-31T00:00:00+14:00", "2011-12-31T00:00:00+14:00", "2012-01-01T00:00:00+14:00", 20111231 },
    { "extreme_offsets", "Pacific/Apia", CAL_WEEK, "2011-12-31T00:00:00+14:00", "2011-12-26T00:00:00-10:00", "2012-01-02T00:00:00+14:00", 201152 },

    /* leap day */
    { "leap_day", "UTC", CAL_DAY, "2024-02-29T12:00:00Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z", 20240229 },
    { "leap_day", "Europe/Paris", CAL_DAY, "2024-02-28T23:59:59.999999999+01:00", "2024-02-28T00:00:00+01:00", "2024-02-29T00:00:00+01:00", 20240228 },
    { "leap_day", "Europe/Paris", CAL_DAY, "2024-02-29T00:00:00+01:00", "2024-02-29T00:00:00+01:00", "2024-03-01T00:00:00+01:00", 20240229 },
    { "leap_day", "Europe/Paris", CAL_WEEK, "2024-02-29T12:00:00+01:00", "2024-02-26T00:00:00+01:00", "2024-03-04T00:00:00+01:00", 202409 },
    { "leap_day", "Europe/Paris", CAL_MONTH, "2024-02-29T23:59:59.999999999+01:00", "2024-02-01T00:00:00+01:00", "2024-03-01T00:00:00+01:00", 202402 },
    { "leap_day", "Asia/Kolkata", CAL_MONTH, "2024-02-15T12:00:00+05:30", "2024-02-01T00:00:00+05:30", "2024-03-01T00:00:00+05:30", 202402 },
    { "leap_day", "America/New_York", CAL_MONTH, "2023-02-28T23:59:59.999999999-05:00", "2023-02-01T00:00:00-05:00", "2023-03-01T00:00:00-05:00", 202302 },

    /* month ends in zones other than UTC */
    { "month_ends", "America/New_York", CAL_MONTH, "2026-01-31T23:59:59.999999999-05:00", "2026-01-01T00:00:00-05:00", "2026-02-01T00:00:00-05:00", 202601 },
    { "month_ends", "America/New_York", CAL_MONTH, "2026-02-01T00:00:00-05:00", "2026-02-01T00:00:00-05:00", "2026-03-01T00:00:00-05:00", 202602 },
    { "month_ends", "America/New_York", CAL_DAY, "2026-01-31T23:59:59.999999999-05:00", "2026-01-31T00:00:00-05:00", "2026-02-01T00:00:00-05:00", 20260131 },
    { "month_ends", "America/New_York", CAL_MONTH, "2026-04-30T23:59:59.999999999-04:00", "2026-04-01T00:00:00-04:00", "2026-05-01T00:00:00-04:00", 202604 },
    { "month_ends", "Asia/Kolkata", CAL_MONTH, "2026-01-31T23:59:59.999999999+05:30", "2026-01-01T00:00:00+05:30", "2026-02-01T00:00:00+05:30", 202601 },
    { "month_ends", "Asia/Kolkata", CAL_MONTH, "2026-02-01T00:00:00+05:30", "2026-02-01T00:00:00+05:30", "2026-03-01T00:00:00+05:30", 202602 },
    { "month_ends", "Europe/Paris", CAL_MONTH, "2026-12-31T23:59:59.999999999+01:00", "2026-12-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00", 202612 },
    { "month_ends", "Europe/Paris", CAL_MONTH, "2027-01-01T00:00:00+01:00", "2027-01-01T00:00:00+01:00", "2027-02-01T00:00:00+01:00", 202701 },

    /* ISO weeks across years: 2026 has 53 weeks, 2024-12-30 is in 2025-W01,
     * 2021-01-01 in 2020-W53 */
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2026-12-27T23:59:59.999999999+01:00", "2026-12-21T00:00:00+01:00", "2026-12-28T00:00:00+01:00", 202652 },
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2026-12-28T00:00:00+01:00", "2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00", 202653 },
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2026-12-31T12:00:00+01:00", "2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00", 202653 },
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2027-01-01T00:00:00+01:00", "2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00", 202653 },
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2027-01-03T23:59:59.999999999+01:00", "2026-12-28T00:00:00+01:00", "2027-01-04T00:00:00+01:00", 202653 },
    { "iso_weeks", "Europe/Paris", CAL_WEEK, "2027-01-04T00:00:00+01:00", "2027-01-04T00:00:00+01:00", "2027-01-11T00:00:00+01:00", 202701 },
    { "iso_weeks", "America/New_York", CAL_WEEK, "2027-01-04T04:59:59Z", "2026-12-28T00:00:00-05:00", "2027-01-04T00:00:00-05:00", 202653 },
    { "iso_weeks", "UTC", CAL_WEEK, "2024-12-29T23:59:59Z", "2024-12-23T00:00:00Z", "2024-12-30T00:00:00Z", 202452 },
    { "iso_weeks", "UTC", CAL_WEEK, "2024-12-30T00:00:00Z", "2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z", 202501 },
    { "iso_weeks", "UTC", CAL_WEEK, "2025-01-01T12:00:00Z", "2024-12-30T00:00:00Z", "2025-01-06T00:00:00Z", 202501 },
    { "iso_weeks", "UTC", CAL_WEEK, "2021-01-01T12:00:00Z", "2020-12-28T00:00:00Z", "2021-01-04T00:00:00Z", 202053 },
    { "iso_weeks", "UTC", CAL_WEEK, "2026-01-01T00:00:00Z", "2025-12-29T00:00:00Z", "2026-01-05T00:00:00Z", 202601 },

    /* past the last transition of the TZif table (2037): the footer rule */
    { "footer_rule", "Europe/Paris", CAL_DAY, "2038-03-28T03:00:00+02:00", "2038-03-28T00:00:00+01:00", "2038-03-29T00:00:00+02:00", 20380328 },
    { "footer_rule", "Europe/Paris", CAL_DAY, "2050-03-27T03:00:00+02:00", "2050-03-27T00:00:00+01:00", "2050-03-28T00:00:00+02:00", 20500327 },
    { "footer_rule", "Europe/Paris", CAL_DAY, "2050-10-30T02:30:00+01:00", "2050-10-30T00:00:00+02:00", "2050-10-31T00:00:00+01:00", 20501030 },
    { "footer_rule", "Europe/Paris", CAL_MONTH, "2100-02-28T23:59:59.999999999+01:00", "2100-02-01T00:00:00+01:00", "2100-03-01T00:00:00+01:00", 210002 },
    { "footer_rule", "America/New_York", CAL_DAY, "2045-11-05T01:30:00-05:00", "2045-11-05T00:00:00-04:00", "2045-11-06T00:00:00-05:00", 20451105 },
    { "footer_rule", "Australia/Adelaide", CAL_DAY, "2060-04-04T02:30:00+09:30", "2060-04-04T00:00:00+10:30", "2060-04-05T00:00:00+09:30", 20600404 },
    { "footer_rule", "Australia/Adelaide", CAL_DAY, "2060-10-03T03:00:00+10:30", "2060-10-03T00:00:00+09:30", "2060-10-04T00:00:00+10:30", 20601003 },
    { "footer_rule", "America/Nuuk", CAL_DAY, "2040-03-24T22:59:59-02:00", "2040-03-24T00:00:00-02:00", "2040-03-25T00:00:00-01:00", 20400324 },
    { "footer_rule", "America/Havana", CAL_DAY, "2045-03-12T01:00:00-04:00", "2045-03-12T01:00:00-04:00", "2045-03-13T00:00:00-04:00", 20450312 },
};

typedef struct {
    int64_t start, next, id;
} span_t;

static void query(const cal_t *c, cal_period_t p, int64_t t, span_t *out)
{
    out->start = cal_start(c, p, t);
    out->next = cal_next(c, p, t);
    out->id = cal_id(c, p, t);
}

/* The same question to a new cal_t, so that nothing comes from the cache. */
static void query_fresh(const char *zone, cal_period_t p, int64_t t, span_t *out)
{
    cal_t *c = open_zone(zone);
    query(c, p, t, out);
    cal_destroy(&c);
    assert_null(c);
}

static void expect_span(const row_t *r, const char *what, int64_t t, const span_t *got,
                        int64_t start, int64_t next, int64_t id)
{
    if (got->start != start || got->next != next || got->id != id) {
        char a[40], b[40];
        fail_msg("%s %s %s: %s at %" PRId64 ": start %" PRId64 " (%s) next %" PRId64
                 " id %" PRId64 "; want start %" PRId64 " (%s) next %" PRId64 " id %" PRId64,
                 r->zone, period_names[r->p], r->at, what, t, got->start,
                 tmtime_rfc3339_format(got->start, a, sizeof a), got->next, got->id, start,
                 tmtime_rfc3339_format(start, b, sizeof b), next, id);
    }
}

static void test_rows(void **state)
{
    const char *group = *state;
    size_t ran = 0;
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        const row_t *r = &rows[i];
        if (strcmp(r->group, group) != 0)
            continue;
        ran++;
        const int64_t t = ts(r->at), s = ts(r->start), n = ts(r->next);
        span_t got;
        cal_t *c = open_zone(r->zone);
        query(c, r->p, t, &got); /* computed */
        expect_span(r, "instant", t, &got, s, n, r->id);
        query(c, r->p, t, &got); /* from the cache */
        expect_span(r, "instant, cached", t, &got, s, n, r->id);
        query(c, r->p, s, &got);
        expect_span(r, "start, cached", s, &got, s, n, r->id);
        query(c, r->p, n - 1, &got);
        expect_span(r, "next - 1 ns, cached", n - 1, &got, s, n, r->id);
        query_fresh(r->zone, r->p, s, &got);
        expect_span(r, "start", s, &got, s, n, r->id);
        query_fresh(r->zone, r->p, n - 1, &got);
        expect_span(r, "next - 1 ns", n - 1, &got, s, n, r->id);
        query(c, r->p, n, &got); /* the following period starts at next */
        assert_int_equal(got.start, n);
        assert_true(got.next > n);
        assert_true(got.id > r->id);
        query(c, r->p, s - 1, &got); /* the previous one ends at start */
        assert_int_equal(got.next, s);
        assert_true(got.id < r->id);
        cal_destroy(&c);
    }
    assert_true(ran > 0);
}

/* ---- local time ------------------------------------------------------- */

typedef struct {
    const char *zone, *at;
    const char *want; /* "YYYY-MM-DD HH:MM:SS" */
    int wday, yday, isdst;
    long gmtoff;
    const char *abbr;
} civil_row_t;

static const civil_row_t civil_rows[] = {
    { "UTC", "2026-11-22T14:54:09.999Z", "2026-11-22 14:54:09", 0, 325, 0, 0, "UTC" },
    { "Europe/Paris", "2026-03-29T00:59:59Z", "2026-03-29 01:59:59", 0, 87, 0, 3600, "CET" },
    { "Europe/Paris", "2026-03-29T01:00:00Z", "2026-03-29 03:00:00", 0, 87, 1, 7200, "CEST" },
    { "Europe/Paris", "2026-10-25T00:30:00Z", "2026-10-25 02:30:00", 0, 297, 1, 7200, "CEST" },
    { "Europe/Paris", "2026-10-25T01:30:00Z", "2026-10-25 02:30:00", 0, 297, 0, 3600, "CET" },
    { "Europe/Paris", "2050-07-01T12:00:00Z", "2050-07-01 14:00:00", 5, 181, 1, 7200, "CEST" },
    { "America/Sao_Paulo", "2018-11-04T03:00:00Z", "2018-11-04 01:00:00", 0, 307, 1, -7200, "-02" },
    { "America/Sao_Paulo", "2018-11-04T02:59:59Z", "2018-11-03 23:59:59", 6, 306, 0, -10800, "-03" },
    { "Asia/Kolkata", "2026-11-21T18:30:00Z", "2026-11-22 00:00:00", 0, 325, 0, 19800, "IST" },
    { "Australia/Adelaide", "2026-01-01T00:00:00Z", "2026-01-01 10:30:00", 4, 0, 1, 37800, "ACDT" },
    { "Pacific/Kiritimati", "2026-12-31T10:00:00Z", "2027-01-01 00:00:00", 5, 0, 0, 50400, "+14" },
    { "Pacific/Pago_Pago", "2026-01-01T10:59:59Z", "2025-12-31 23:59:59", 3, 364, 0, -39600, "SST" },
    { "America/St_Johns", "2010-11-07T03:00:00Z", "2010-11-06 23:30:00", 6, 309, 0, -12600, "NST" },
    { "UTC", "2024-12-31T23:59:59Z", "2024-12-31 23:59:59", 2, 365, 0, 0, "UTC" },
};

static void test_civil(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(civil_rows); i++) {
        const civil_row_t *r = &civil_rows[i];
        cal_t *c = open_zone(r->zone);
        struct tm tm;
        assert_int_equal(cal_civil(c, ts(r->at), &tm), 0);
        char got[80];
        snprintf(got, sizeof got, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (strcmp(got, r->want) != 0)
            fail_msg("%s %s: %s, want %s", r->zone, r->at, got, r->want);
        assert_int_equal(tm.tm_wday, r->wday);
        assert_int_equal(tm.tm_yday, r->yday);
        assert_int_equal(tm.tm_isdst, r->isdst);
        assert_int_equal(tm.tm_gmtoff, r->gmtoff);
        assert_string_equal(tm.tm_zone, r->abbr);
        assert_string_equal(cal_zone(c), r->zone);
        cal_destroy(&c);
    }
    cal_destroy(NULL);
}

/* ---- refused zones ---------------------------------------------------- */

typedef struct {
    const char *zone;
    int want_errno;
} bad_zone_t;

static const bad_zone_t bad_zones[] = {
    { "Mars/Olympus_Mons", ENOENT },
    { "europe/paris", ENOENT }, /* names are case-sensitive */
    { "UTC/Paris", ENOENT },    /* UTC is a file, not a folder */
    { "", EINVAL },
    { "/etc/passwd", EINVAL },
    { "../../../etc/passwd", EINVAL },
    { "Europe/../Europe/Paris", EINVAL },
    { "Europe/./Paris", EINVAL },
    { "Europe//Paris", EINVAL },
    { "Europe/Paris/", EINVAL },
    { "Europe/Paris ", EINVAL },
    { "CET-1CEST,M3.5.0,M10.5.0/3", EINVAL }, /* a POSIX TZ string, not a zone name */
    { "America", EINVAL },                    /* a folder */
    { "zone.tab", EINVAL },                   /* not a TZif file */
    { NULL, EINVAL },
};

static void test_unknown_zone(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(bad_zones); i++) {
        char err[256] = "x";
        errno = 0;
        cal_t *c = cal_new(bad_zones[i].zone, err, sizeof err);
        if (c != NULL)
            fail_msg("zone \"%s\" was accepted", bad_zones[i].zone);
        if (errno != bad_zones[i].want_errno)
            fail_msg("zone \"%s\": errno %d (%s), want %d", bad_zones[i].zone, errno, err,
                     bad_zones[i].want_errno);
        assert_true(strlen(err) > 10);
        assert_null(cal_new(bad_zones[i].zone, NULL, 0)); /* no buffer is fine */
        char tiny[8];
        assert_null(cal_new(bad_zones[i].zone, tiny, sizeof tiny));
        assert_true(strlen(tiny) < sizeof tiny);
    }
    char err[256];
    assert_null(cal_new("Mars/Olympus_Mons", err, sizeof err));
    assert_non_null(strstr(err, "unknown time zone \"Mars/Olympus_Mons\""));
}

/* ---- synthetic and damaged TZif files --------------------------------- */

static char tzdir[64];
static char *saved_tzdir;

static void tzdir_enter(void)
{
    const char *old = getenv("TZDIR");
    saved_tzdir = old ? strdup(old) : NULL;
    snprintf(tzdir, sizeof tzdir, "/tmp/cal_test.XXXXXX");
    assert_non_null(mkdtemp(tzdir));
    assert_int_equal(setenv("TZDIR", tzdir, 1), 0);
}

static void tzdir_leave(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tzdir);
    assert_int_equal(system(cmd), 0);
    if (saved_tzdir) {
        setenv("TZDIR", saved_tzdir, 1);
        free(saved_tzdir);
        saved_tzdir = NULL;
    } else {
        unsetenv("TZDIR");
    }
}

static void put_file(const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tzdir, name);
    char *slash = strrchr(path, '/');
    if (slash > path + strlen(tzdir)) {
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *b = malloc(1 << 20);
    assert_non_null(b);
    *len = fread(b, 1, 1 << 20, f);
    fclose(f);
    return b;
}

static void put_be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* A version 2 TZif file with no transitions: one type and the footer. */
static size_t make_rule_only(uint8_t *out, int32_t utoff, const char *abbr, const char *footer)
{
    const size_t charcnt = strlen(abbr) + 1;
    size_t n = 0;
    for (int block = 0; block < 2; block++) {
        memset(out + n, 0, 44);
        memcpy(out + n, "TZif2", 5);
        put_be32(out + n + 36, 1);
        put_be32(out + n + 40, (uint32_t)charcnt);
        n += 44;
        put_be32(out + n, (uint32_t)utoff);
        out[n + 4] = 0;
        out[n + 5] = 0;
        n += 6;
        memcpy(out + n, abbr, charcnt);
        n += charcnt;
    }
    n += (size_t)sprintf((char *)out + n, "\n%s\n", footer);
    return n;
}

typedef struct {
    const char *zone, *footer, *abbr0;
    int32_t utoff0;
} synth_t;

static const synth_t synths[] = {
    { "Test/Paris", "CET-1CEST,M3.5.0,M10.5.0/3", "CET", 3600 },
    { "Test/New_York", "EST5EDT,M3.2.0,M11.1.0", "EST", -18000 },
    { "Test/Adelaide", "ACST-9:30ACDT,M10.1.0,M4.1.0/3", "ACST", 34200 },
    { "Test/Lord_Howe", "<+1030>-10:30<+11>-11,M10.1.0,M4.1.0", "+1030", 37800 },
    { "Test/Jerusalem", "IST-2IDT,M3.4.4/26,M10.5.0", "IST", 7200 },
    { "Test/Nuuk", "<-02>2<-01>,M3.5.0/-1,M10.5.0/0", "-02", -7200 },
    { "Test/Beirut", "EET-2EEST,M3.5.0/0,M10.5.0/0", "EET", 7200 },
    { "Test/Havana", "CST5CDT,M3.2.0/0,M11.1.0/1", "CST", -18000 },
    { "Test/Julian", "AAA3BBB,J60,J300", "AAA", -10800 },
    { "Test/Zero", "AAA3BBB,59,299", "AAA", -10800 },
    { "Test/AllDst", "EST5EDT,0/0,J365/25", "EDT", -14400 },
    { "Test/Fixed", "<+0545>-5:45", "+0545", 20700 },
    { "Test/DefaultRules", "EST5EDT", "EST", -18000 },
    { "Test/NoRule", "", "XYZ", -3600 },
};

/* rule-only zones against the real ones, since each rule took effect */
static const struct {
    const char *synth, *real;
    int from_year;
} same_as[] = {
    { "Test/Paris", "Europe/Paris", 1996 },
    { "Test/New_York", "America/New_York", 2007 },
    { "Test/Adelaide", "Australia/Adelaide", 2008 },
    { "Test/Lord_Howe", "Australia/Lord_Howe", 2008 },
    { "Test/Jerusalem", "Asia/Jerusalem", 2013 },
    { "Test/Nuuk", "America/Nuuk", 2024 },
    { "Test/Beirut", "Asia/Beirut", 2024 },
    { "Test/Havana", "America/Havana", 2013 },
};

static const civil_row_t synth_rows[] = {
    /* J60 is March 1 and J300 October 27 in every year */
    { "Test/Julian", "2024-03-01T01:59:59-03:00", "2024-03-01 01:59:59", 5, 60, 0, -10800, "AAA" },
    { "Test/Julian", "2024-03-01T05:00:00Z", "2024-03-01 03:00:00", 5, 60, 1, -7200, "BBB" },
    { "Test/Julian", "2025-03-01T01:59:59-03:00", "2025-03-01 01:59:59", 6, 59, 0, -10800, "AAA" },
    { "Test/Julian", "2025-03-01T05:00:00Z", "2025-03-01 03:00:00", 6, 59, 1, -7200, "BBB" },
    { "Test/Julian", "2024-10-27T03:59:59Z", "2024-10-27 01:59:59", 0, 300, 1, -7200, "BBB" },
    { "Test/Julian", "2024-10-27T04:00:00Z", "2024-10-27 01:00:00", 0, 300, 0, -10800, "AAA" },
    /* zero-based n counts February 29 */
    { "Test/Zero", "2024-02-29T04:59:59Z", "2024-02-29 01:59:59", 4, 59, 0, -10800, "AAA" },
    { "Test/Zero", "2024-02-29T05:00:00Z", "2024-02-29 03:00:00", 4, 59, 1, -7200, "BBB" },
    { "Test/Zero", "2025-03-01T05:00:00Z", "2025-03-01 03:00:00", 6, 59, 1, -7200, "BBB" },
    { "Test/Zero", "2024-10-26T04:00:00Z", "2024-10-26 01:00:00", 6, 299, 0, -10800, "AAA" },
    { "Test/Zero", "2025-10-27T03:59:59Z", "2025-10-27 01:59:59", 1, 299, 1, -7200, "BBB" },
    { "Test/Zero", "2025-10-27T04:00:00Z", "2025-10-27 01:00:00", 1, 299, 0, -10800, "AAA" },
    /* DST all year: the end of one year's meets the start of the next's */
    { "Test/AllDst", "2026-01-01T04:00:00Z", "2026-01-01 00:00:00", 4, 0, 1, -14400, "EDT" },
    { "Test/AllDst", "2026-12-31T23:59:59-04:00", "2026-12-31 23:59:59", 4, 364, 1, -14400, "EDT" },
    { "Test/AllDst", "2027-01-01T00:00:00-04:00", "2027-01-01 00:00:00", 5, 0, 1, -14400, "EDT" },
    { "Test/AllDst", "2024-12-31T23:00:00-04:00", "2024-12-31 23:00:00", 2, 365, 1, -14400, "EDT" },
    { "Test/Fixed", "2026-06-01T00:00:00+05:45", "2026-06-01 00:00:00", 1, 151, 0, 20700, "+0545" },
    /* no rules given: the US ones */
    { "Test/DefaultRules", "2026-03-08T06:59:59Z", "2026-03-08 01:59:59", 0, 66, 0, -18000, "EST" },
    { "Test/DefaultRules", "2026-03-08T07:00:00Z", "2026-03-08 03:00:00", 0, 66, 1, -14400, "EDT" },
    /* an empty footer: the last type holds */
    { "Test/NoRule", "2026-06-01T00:00:00-01:00", "2026-06-01 00:00:00", 1, 151, 0, -3600, "XYZ" },
};

static uint64_t rng_state;

static uint64_t rnd(void) /* splitmix64: the same instants on every run */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int64_t rnd_between(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo)); }

static int64_t year_ns(int y) { return tmtime_days_from_civil(y, 1, 1) * DAY_NS; }

static void same_tm(const struct tm *a, const struct tm *b, const char *what, int64_t t)
{
    if (a->tm_year != b->tm_year || a->tm_mon != b->tm_mon || a->tm_mday != b->tm_mday ||
        a->tm_hour != b->tm_hour || a->tm_min != b->tm_min || a->tm_sec != b->tm_sec ||
        a->tm_wday != b->tm_wday || a->tm_yday != b->tm_yday || a->tm_isdst != b->tm_isdst ||
        a->tm_gmtoff != b->tm_gmtoff || strcmp(a->tm_zone, b->tm_zone) != 0)
        fail_msg("%s at %" PRId64 ": %04d-%02d-%02d %02d:%02d:%02d wday %d yday %d dst %d %ld %s"
                 " vs %04d-%02d-%02d %02d:%02d:%02d wday %d yday %d dst %d %ld %s",
                 what, t, a->tm_year + 1900, a->tm_mon + 1, a->tm_mday, a->tm_hour, a->tm_min,
                 a->tm_sec, a->tm_wday, a->tm_yday, a->tm_isdst, a->tm_gmtoff, a->tm_zone,
                 b->tm_year + 1900, b->tm_mon + 1, b->tm_mday, b->tm_hour, b->tm_min, b->tm_sec,
                 b->tm_wday, b->tm_yday, b->tm_isdst, b->tm_gmtoff, b->tm_zone);
}

static void test_footer_rules(void **state)
{
    (void)state;
    cal_t *real[ARRAY_LEN(same_as)];
    for (size_t i = 0; i < ARRAY_LEN(same_as); i++)
        real[i] = open_zone(same_as[i].real); /* before TZDIR moves */
    tzdir_enter();
    uint8_t buf[512];
    for (size_t i = 0; i < ARRAY_LEN(synths); i++)
        put_file(synths[i].zone, buf,
                 make_rule_only(buf, synths[i].utoff0, synths[i].abbr0, synths[i].footer));
    for (size_t i = 0; i < ARRAY_LEN(synth_rows); i++) {
        const civil_row_t *r = &synth_rows[i];
        cal_t *c = open_zone(r->zone);
        struct tm tm;
        assert_int_equal(cal_civil(c, ts(r->at), &tm), 0);
        char got[80];
        snprintf(got, sizeof got, "%04d-%02d-%02d %02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (strcmp(got, r->want) != 0 || tm.tm_isdst != r->isdst || tm.tm_gmtoff != r->gmtoff)
            fail_msg("%s %s: %s dst %d off %ld, want %s dst %d off %ld", r->zone, r->at, got,
                     tm.tm_isdst, tm.tm_gmtoff, r->want, r->isdst, r->gmtoff);
        assert_int_equal(tm.tm_wday, r->wday);
        assert_int_equal(tm.tm_yday, r->yday);
        assert_string_equal(tm.tm_zone, r->abbr);
        cal_destroy(&c);
    }
    rng_state = 7;
    for (size_t i = 0; i < ARRAY_LEN(same_as); i++) {
        cal_t *c = open_zone(same_as[i].synth);
        for (int k = 0; k < 3000; k++) {
            const int64_t t = rnd_between(year_ns(same_as[i].from_year), year_ns(2100));
            struct tm a, b;
            assert_int_equal(cal_civil(c, t, &a), 0);
            assert_int_equal(cal_civil(real[i], t, &b), 0);
            same_tm(&a, &b, same_as[i].synth, t);
            for (int p = CAL_DAY; p <= CAL_MONTH; p++) {
                span_t x, y;
                query(c, (cal_period_t)p, t, &x);
                query(real[i], (cal_period_t)p, t, &y);
                if (y.start < year_ns(same_as[i].from_year))
                    continue; /* the period began under older rules */
                if (x.start != y.start || x.next != y.next || x.id != y.id)
                    fail_msg("%s %s at %" PRId64 ": %" PRId64 " %" PRId64 " %" PRId64
                             " vs %" PRId64 " %" PRId64 " %" PRId64,
                             same_as[i].synth, period_names[p], t, x.start, x.next, x.id,
                             y.start, y.next, y.id);
            }
        }
        cal_destroy(&c);
        cal_destroy(&real[i]);
    }
    tzdir_leave();
}

static void test_tzif_versions_and_damage(void **state)
{
    (void)state;
    size_t len;
    char path[256];
    const char *dir = getenv("TZDIR");
    snprintf(path, sizeof path, "%s/Europe/Paris", dir && *dir ? dir : "/usr/share/zoneinfo");
    uint8_t *paris = read_whole(path, &len);
    cal_t *real = open_zone("Europe/Paris");
    tzdir_enter();

    /* version 1 only: the 32-bit block, no footer (its table ends in 2037;
     * a "slim" file's is empty, and then there is nothing to compare) */
    const uint32_t timecnt = (uint32_t)paris[32] << 24 | (uint32_t)paris[33] << 16 |
                             (uint32_t)paris[34] << 8 | paris[35];
    const uint32_t typecnt = (uint32_t)paris[36] << 24 | (uint32_t)paris[37] << 16 |
                             (uint32_t)paris[38] << 8 | paris[39];
    const uint32_t charcnt = (uint32_t)paris[40] << 24 | (uint32_t)paris[41] << 16 |
                             (uint32_t)paris[42] << 8 | paris[43];
    const uint32_t isstd = (uint32_t)paris[27], isut = (uint32_t)paris[23];
    const size_t v1len = 44 + timecnt * 5 + typecnt * 6 + charcnt + isstd + isut;
    uint8_t *v1 = malloc(v1len);
    assert_non_null(v1);
    memcpy(v1, paris, v1len);
    v1[4] = 0;
    put_file("Old/Paris", v1, v1len);
    free(v1);
    cal_t *old = open_zone("Old/Paris");
    rng_state = 11;
    for (int k = 0; timecnt > 100 && k < 2000; k++) {
        const int64_t t = rnd_between(0, year_ns(2037));
        assert_int_equal(cal_start(old, CAL_DAY, t), cal_start(real, CAL_DAY, t));
        assert_int_equal(cal_next(old, CAL_MONTH, t), cal_next(real, CAL_MONTH, t));
    }
    cal_destroy(&old);

    /* every shorter prefix is refused */
    for (size_t n = 0; n < len; n++) {
        put_file("Cut/Paris", paris, n);
        errno = 0;
        char err[256];
        cal_t *c = cal_new("Cut/Paris", err, sizeof err);
        if (c != NULL)
            fail_msg("a TZif file cut to %zu of %zu bytes was accepted", n, len);
        assert_int_equal(errno, EINVAL);
    }
    put_file("Cut/Paris", paris, len);
    cal_t *whole = open_zone("Cut/Paris");
    cal_destroy(&whole);

    /* any byte damaged: refused, or a zone whose periods still hold */
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, paris, len);
        bad[i] ^= (uint8_t)(1u << (i % 8));
        put_file("Bad/Paris", bad, len);
        cal_t *c = cal_new("Bad/Paris", NULL, 0);
        if (c == NULL)
            continue;
        for (int k = 0; k < 20; k++) {
            const int64_t t = rnd_between(0, year_ns(2200));
            for (int p = CAL_DAY; p <= CAL_MONTH; p++) {
                const int64_t s = cal_start(c, (cal_period_t)p, t);
                const int64_t n = cal_next(c, (cal_period_t)p, t);
                assert_true(s <= t && t < n);
            }
            struct tm tm;
            assert_int_equal(cal_civil(c, t, &tm), 0);
        }
        cal_destroy(&c);
    }
    free(bad);
    free(paris);
    cal_destroy(&real);

    /* UTC needs no tzdata; the rest does */
    cal_t *utc = open_zone("UTC");
    assert_int_equal(cal_start(utc, CAL_DAY, ts("2026-11-22T14:54:09Z")),
                     ts("2026-11-22T00:00:00Z"));
    struct tm tm;
    assert_int_equal(cal_civil(utc, 0, &tm), 0);
    assert_string_equal(tm.tm_zone, "UTC");
    cal_destroy(&utc);
    errno = 0;
    assert_null(cal_new("Europe/Paris", NULL, 0));
    assert_int_equal(errno, ENOENT);
    tzdir_leave();
}

/* ---- properties over random instants, against the C library ----------- */

typedef struct {
    const char *zone;
    int day_min_h, day_max_h; /* how long a day may be */
} prop_zone_t;

static const prop_zone_t prop_zones[] = {
    { "UTC", 24, 24 },
    { "Europe/Paris", 23, 25 },
    { "America/New_York", 23, 25 },
    { "America/Sao_Paulo", 23, 25 },
    { "Asia/Kolkata", 23, 25 },
    { "Asia/Kathmandu", 23, 25 },
    { "Australia/Adelaide", 23, 25 },
    { "Australia/Lord_Howe", 23, 25 },
    { "Pacific/Kiritimati", 23, 25 },
    { "Pacific/Pago_Pago", 23, 25 },
    { "Pacific/Apia", 23, 25 },
    { "Pacific/Chatham", 23, 25 },
    { "Asia/Beirut", 23, 25 },
    { "America/Havana", 23, 25 },
    { "America/St_Johns", 22, 26 }, /* double daylight time in 1988 */
    { "America/Nuuk", 23, 25 },
    { "Africa/Casablanca", 23, 25 },
    { "Antarctica/Troll", 22, 26 }, /* two-hour DST */
};

/* The first day of a period named by its id, by separate arithmetic. */
static int64_t id_first_day(cal_period_t p, int64_t id)
{
    switch (p) {
    case CAL_DAY:
        return tmtime_days_from_civil(id / 10000, (unsigned)(id / 100 % 100), (unsigned)(id % 100));
    case CAL_WEEK: { /* week 1 holds January 4 */
        const int64_t jan4 = tmtime_days_from_civil(id / 100, 1, 4);
        const int64_t mon = jan4 - ((jan4 + 3) % 7 + 7) % 7;
        return mon + 7 * (id % 100 - 1);
    }
    default:
        return tmtime_days_from_civil(id / 100, (unsigned)(id % 100), 1);
    }
}

/* Local wall-clock seconds of unix second s, by the C library. */
static int64_t libc_wall(int64_t s, struct tm *tm)
{
    const time_t tt = (time_t)s;
    assert_non_null(localtime_r(&tt, tm));
    return s + tm->tm_gmtoff;
}

static void check_instant(const cal_t *c, const prop_zone_t *z, int64_t t)
{
    struct tm mine, libc;
    assert_int_equal(cal_civil(c, t, &mine), 0);
    libc_wall(t / NS, &libc);
    same_tm(&mine, &libc, z->zone, t);
    for (int pi = CAL_DAY; pi <= CAL_MONTH; pi++) {
        const cal_period_t p = (cal_period_t)pi;
        const int64_t s = cal_start(c, p, t), n = cal_next(c, p, t), id = cal_id(c, p, t);
        if (!(s <= t && t < n))
            fail_msg("%s %s at %" PRId64 ": [%" PRId64 ", %" PRId64 ")", z->zone,
                     period_names[p], t, s, n);
        assert_true(s % NS == 0 && n % NS == 0);
        assert_int_equal(cal_start(c, p, s), s);
        assert_int_equal(cal_next(c, p, s), n);
        assert_int_equal(cal_id(c, p, s), id);
        assert_int_equal(cal_start(c, p, n - 1), s);
        assert_int_equal(cal_start(c, p, n), n);
        assert_true(cal_id(c, p, n) > id);
        assert_int_equal(cal_next(c, p, s - 1), s);
        const int64_t len = n - s;
        if (p == CAL_DAY && (len < z->day_min_h * HOUR_NS || len > z->day_max_h * HOUR_NS))
            fail_msg("%s: day %" PRId64 " lasts %" PRId64 " s", z->zone, id, len / NS);
        if (p == CAL_WEEK)
            assert_true(len >= 6 * DAY_NS && len <= 8 * DAY_NS);
        if (p == CAL_MONTH)
            assert_true(len >= 27 * DAY_NS && len <= 32 * DAY_NS);
        /* the start is where the local clock first reads the period's
         * first day: just before it, it read an earlier time */
        const int64_t first = id_first_day(p, id) * 86400;
        struct tm tm;
        if (libc_wall(s / NS, &tm) < first || libc_wall(s / NS - 1, &tm) >= first)
            fail_msg("%s %s %" PRId64 ": the local clock does not reach it at %" PRId64,
                     z->zone, period_names[p], id, s);
        /* the period is that of the local date, or the next one after a
         * fall-back across midnight */
        const int64_t wall = libc_wall(t / NS, &tm);
        const int64_t local_day = wall / 86400 - (wall % 86400 < 0);
        const int64_t first_next = id_first_day(p, cal_id(c, p, n));
        if (!(id_first_day(p, id) <= local_day + 1 && local_day < first_next))
            fail_msg("%s %s at %" PRId64 ": period %" PRId64 " (first day %" PRId64
                     "), local day %" PRId64 ", next first day %" PRId64,
                     z->zone, period_names[p], t, id, id_first_day(p, id), local_day, first_next);
    }
}

static void test_properties(void **state)
{
    (void)state;
    rng_state = 42;
    for (size_t zi = 0; zi < ARRAY_LEN(prop_zones); zi++) {
        const prop_zone_t *z = &prop_zones[zi];
        assert_int_equal(setenv("TZ", z->zone, 1), 0);
        tzset();
        cal_t *c = open_zone(z->zone);
        for (int k = 0; k < 10000; k++) {
            const int64_t t = rnd_between(0, year_ns(2100));
            check_instant(c, z, t);
            /* and an instant within two hours of that day's start */
            const int64_t near = cal_start(c, CAL_DAY, t) + rnd_between(-2 * HOUR_NS, 2 * HOUR_NS);
            if (near >= NS)
                check_instant(c, z, near);
        }
        cal_destroy(&c);
    }
    unsetenv("TZ");
    tzset();
}

/* every day, week and month boundary from 1970 to 2100, one after another */
static void test_walk(void **state)
{
    (void)state;
    for (size_t zi = 0; zi < ARRAY_LEN(prop_zones); zi++) {
        const prop_zone_t *z = &prop_zones[zi];
        assert_int_equal(setenv("TZ", z->zone, 1), 0);
        tzset();
        cal_t *c = open_zone(z->zone);
        for (int pi = CAL_DAY; pi <= CAL_MONTH; pi++) {
            const cal_period_t p = (cal_period_t)pi;
            int64_t s = cal_next(c, p, 0), id = cal_id(c, p, s);
            while (s < year_ns(2100)) {
                const int64_t n = cal_next(c, p, s), nid = cal_id(c, p, n);
                assert_int_equal(cal_start(c, p, n), n);
                assert_int_equal(cal_start(c, p, n - 1), s);
                assert_true(nid > id);
                if (p == CAL_DAY && (n - s < z->day_min_h * HOUR_NS || n - s > z->day_max_h * HOUR_NS))
                    fail_msg("%s: day %" PRId64 " lasts %" PRId64 " s", z->zone, id, (n - s) / NS);
                const int64_t first = id_first_day(p, nid) * 86400;
                struct tm tm;
                if (libc_wall(n / NS, &tm) < first || libc_wall(n / NS - 1, &tm) >= first)
                    fail_msg("%s %s %" PRId64 ": the local clock does not reach it at %" PRId64,
                             z->zone, period_names[p], nid, n);
                s = n;
                id = nid;
            }
        }
        cal_destroy(&c);
    }
    unsetenv("TZ");
    tzset();
}

/* the ends of int64 nanoseconds: results saturate, nothing overflows */
static void test_extremes(void **state)
{
    (void)state;
    static const char *const zones[] = { "UTC", "Europe/Paris", "Pacific/Kiritimati",
                                         "Pacific/Pago_Pago" };
    static const int64_t at[] = { INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX };
    for (size_t zi = 0; zi < ARRAY_LEN(zones); zi++) {
        cal_t *c = open_zone(zones[zi]);
        for (size_t i = 0; i < ARRAY_LEN(at); i++) {
            for (int p = CAL_DAY; p <= CAL_MONTH; p++) {
                const int64_t s = cal_start(c, (cal_period_t)p, at[i]);
                const int64_t n = cal_next(c, (cal_period_t)p, at[i]);
                assert_true(s <= at[i]);
                assert_true(at[i] < n || n == INT64_MAX);
                assert_true(cal_id(c, (cal_period_t)p, at[i]) > 0);
            }
            struct tm tm;
            assert_int_equal(cal_civil(c, at[i], &tm), 0);
        }
        struct tm tm;
        assert_int_equal(cal_civil(c, INT64_MAX, &tm), 0);
        assert_int_equal(tm.tm_year + 1900, 2262);
        cal_destroy(&c);
    }
}

/* ---- threads sharing one cal_t ---------------------------------------- */

#define THREADS 4
#define THREAD_N 50000

static int64_t thread_t[THREAD_N];
static span_t thread_want[THREAD_N][3];

typedef struct {
    const cal_t *c;
    int offset;
    size_t bad;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = arg;
    for (int k = 0; k < THREAD_N; k++) {
        const int i = (k + w->offset) % THREAD_N;
        for (int p = CAL_DAY; p <= CAL_MONTH; p++) {
            span_t got;
            query(w->c, (cal_period_t)p, thread_t[i], &got);
            if (got.start != thread_want[i][p].start || got.next != thread_want[i][p].next ||
                got.id != thread_want[i][p].id)
                w->bad++;
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    rng_state = 99;
    /* runs within a few days, so that the threads both hit the cache and
     * replace each other's entries */
    cal_t *alone = open_zone("America/Sao_Paulo");
    int64_t t = ts("2018-10-20T00:00:00Z");
    for (int i = 0; i < THREAD_N; i++) {
        t += rnd_between(0, 600 * NS);
        if (i % 1000 == 0)
            t = ts("2018-10-20T00:00:00Z") + rnd_between(0, 40 * DAY_NS);
        thread_t[i] = t;
        for (int p = CAL_DAY; p <= CAL_MONTH; p++)
            query(alone, (cal_period_t)p, t, &thread_want[i][p]);
    }
    cal_destroy(&alone);
    cal_t *c = open_zone("America/Sao_Paulo");
    pthread_t th[THREADS];
    worker_t w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker_t){ c, i * 777, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].bad, 0);
    }
    cal_destroy(&c);
}

int main(int argc, char **argv)
{
#define ROWS(g) { "test_rows_" g, test_rows, NULL, NULL, (void *)(g) }
    const struct CMUnitTest tests[] = {
        ROWS("utc"),
        ROWS("paris_dst"),
        ROWS("new_york_dst"),
        ROWS("sao_paulo"),
        ROWS("midnight_gap"),
        ROWS("fallback_midnight"),
        ROWS("half_hour"),
        ROWS("extreme_offsets"),
        ROWS("leap_day"),
        ROWS("month_ends"),
        ROWS("iso_weeks"),
        ROWS("footer_rule"),
        cmocka_unit_test(test_civil),
        cmocka_unit_test(test_unknown_zone),
        cmocka_unit_test(test_footer_rules),
        cmocka_unit_test(test_tzif_versions_and_damage),
        cmocka_unit_test(test_properties),
        cmocka_unit_test(test_walk),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_threads),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("cal", tests, NULL, NULL);
}

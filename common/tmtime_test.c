/* tmtime_test: tests of common/tmtime: the RFC 3339 parser (a table of
 * valid, invalid and out-of-range stamps), the formatter, days_from_civil
 * against known dates, and the clocks. Expected values were computed apart
 * (Python's datetime). Run one test alone with `tmtime_test NAME`. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define T_2026 1795359249000000000LL /* 2026-11-22T14:54:09Z */

typedef struct {
    const char *in;
    int want_errno; /* 0: parses */
    int64_t want;
} parse_case_t;

static const parse_case_t parse_cases[] = {
    { "1970-01-01T00:00:00Z", 0, 0 },
    { "1970-01-01T00:00:00.000000001Z", 0, 1 },
    { "2026-11-22T14:54:09Z", 0, T_2026 },
    /* fractions of 1 to 12 digits; beyond nanoseconds they are cut, not rounded */
    { "2026-11-22T14:54:09.1Z", 0, T_2026 + 100000000 },
    { "2026-11-22T14:54:09.12Z", 0, T_2026 + 120000000 },
    { "2026-11-22T14:54:09.123Z", 0, T_2026 + 123000000 },
    { "2026-11-22T14:54:09.1234Z", 0, T_2026 + 123400000 },
    { "2026-11-22T14:54:09.12345Z", 0, T_2026 + 123450000 },
    { "2026-11-22T14:54:09.123456Z", 0, T_2026 + 123456000 },
    { "2026-11-22T14:54:09.1234567Z", 0, T_2026 + 123456700 },
    { "2026-11-22T14:54:09.12345678Z", 0, T_2026 + 123456780 },
    { "2026-11-22T14:54:09.123456789Z", 0, T_2026 + 123456789 },
    { "2026-11-22T14:54:09.1234567899Z", 0, T_2026 + 123456789 },
    { "2026-11-22T14:54:09.12345678999Z", 0, T_2026 + 123456789 },
    { "2026-11-22T14:54:09.999999999999Z", 0, T_2026 + 999999999 },
    { "2026-11-22T14:54:09.000Z", 0, T_2026 },
    /* offsets: local time minus the offset */
    { "2026-11-22T14:54:09+00:00", 0, T_2026 },
    { "2026-11-22T14:54:09-00:00", 0, T_2026 },
    { "2026-11-22T15:54:09+01:00", 0, T_2026 },
    { "2026-11-22T09:24:09-05:30", 0, T_2026 },
    { "2026-11-23T04:39:09+13:45", 0, T_2026 },
    { "2026-11-22T15:54:09.123456789+01:00", 0, T_2026 + 123456789 },
    { "2026-11-22T14:54:09+23:59", 0, T_2026 - (23 * 3600 + 59 * 60) * 1000000000LL },
    /* lower-case t and z, a space for T */
    { "2026-11-22t14:54:09z", 0, T_2026 },
    { "2026-11-22 14:54:09Z", 0, T_2026 },
    { "2026-11-22 14:54:09.5+00:00", 0, T_2026 + 500000000 },
    /* leap days */
    { "2024-02-29T00:00:00Z", 0, 1709164800000000000LL },
    { "2000-02-29T12:00:00Z", 0, 951825600000000000LL },
    { "2023-02-29T00:00:00Z", EINVAL, 0 },
    { "2100-02-29T00:00:00Z", EINVAL, 0 },
    { "2024-02-30T00:00:00Z", EINVAL, 0 },
    { "2026-04-31T00:00:00Z", EINVAL, 0 },
    { "2026-12-31T23:59:59Z", 0, 1798761599000000000LL },
    /* a leap second folds onto the start of the next second */
    { "2016-12-31T23:59:60Z", 0, 1483228800000000000LL },
    { "2016-12-31T23:59:60.999Z", 0, 1483228800000000000LL },
    { "2016-12-31T23:59:59.999Z", 0, 1483228799999000000LL },
    /* field ranges */
    { "2026-13-01T00:00:00Z", EINVAL, 0 },
    { "2026-00-10T00:00:00Z", EINVAL, 0 },
    { "2026-11-00T00:00:00Z", EINVAL, 0 },
    { "2026-11-31T00:00:00Z", EINVAL, 0 },
    { "2026-11-22T24:00:00Z", EINVAL, 0 },
    { "2026-11-22T14:60:00Z", EINVAL, 0 },
    { "2026-11-22T14:54:61Z", EINVAL, 0 },
    { "2026-11-22T14:54:09+24:00", EINVAL, 0 },
    { "2026-11-22T14:54:09+01:60", EINVAL, 0 },
    /* syntax */
    { "", EINVAL, 0 },
    { "garbage", EINVAL, 0 },
    { "2026-11-22", EINVAL, 0 },
    { "2026-11-22T14:54", EINVAL, 0 },
    { "2026-11-22T14:54:09", EINVAL, 0 },        /* no zone */
    { "2026-11-22T14:54:09.Z", EINVAL, 0 },      /* a point without digits */
    { "2026-11-22T14:54:09.", EINVAL, 0 },
    { "2026-11-22T14:54:09,5Z", EINVAL, 0 },
    { "2026-11-22T14:54:09ZZ", EINVAL, 0 },
    { "2026-11-22T14:54:09Z ", EINVAL, 0 },
    { " 2026-11-22T14:54:09Z", EINVAL, 0 },
    { "2026-11-22T14:54:09+01", EINVAL, 0 },
    { "2026-11-22T14:54:09+0100", EINVAL, 0 },
    { "2026-11-22T14:54:09+1:00", EINVAL, 0 },
    { "2026-11-22T14:54:09+01:00:00", EINVAL, 0 },
    { "2026-11-22T14:54:09 +01:00", EINVAL, 0 },
    { "2026-11-22T14:54:09UTC", EINVAL, 0 },
    { "2026-11-22X14:54:09Z", EINVAL, 0 },
    { "2026/11/22T14:54:09Z", EINVAL, 0 },
    { "2026-11-22T14.54.09Z", EINVAL, 0 },
    { "26-11-22T14:54:09Z", EINVAL, 0 },
    { "+2026-11-22T14:54:09Z", EINVAL, 0 },
    { "2026-1-22T14:54:09Z", EINVAL, 0 },
    { "2026-11-22T4:54:09Z", EINVAL, 0 },
    { "2O26-11-22T14:54:09Z", EINVAL, 0 },       /* a letter O */
    { "2026-11-22T14:54:-9Z", EINVAL, 0 },
    { "1969-02-30T00:00:00Z", EINVAL, 0 },       /* syntax before range */
    /* before 1970 and beyond int64 nanoseconds */
    { "1969-12-31T23:59:59Z", ERANGE, 0 },
    { "1969-12-31T23:59:59.999999999Z", ERANGE, 0 },
    { "0000-01-01T00:00:00Z", ERANGE, 0 },
    { "1970-01-01T00:00:00+00:01", ERANGE, 0 },  /* 1969-12-31T23:59:00Z */
    { "1970-01-01T00:00:00-00:01", 0, 60000000000LL },
    { "2262-04-11T23:47:15Z", 0, 9223372035000000000LL },
    { "2262-04-11T23:47:15.999999999Z", 0, 9223372035999999999LL },
    { "2262-04-11T23:47:17Z", ERANGE, 0 },
    { "2263-01-01T00:00:00Z", ERANGE, 0 },
    { "9999-12-31T23:59:59Z", ERANGE, 0 },
};

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
        const parse_case_t *c = &parse_cases[i];
        size_t len = strlen(c->in);
        char *buf = malloc(len ? len : 1); /* not NUL-terminated, exact size */
        assert_non_null(buf);
        memcpy(buf, c->in, len);
        int64_t ns = -777;
        errno = 0;
        int rc = tmtime_rfc3339_parse(buf, len, &ns);
        int e = errno;
        free(buf);
        if (c->want_errno) {
            if (rc != -1 || e != c->want_errno)
                fail_msg("\"%s\": rc %d errno %d, want -1 errno %d", c->in, rc, e, c->want_errno);
            if (ns != -777)
                fail_msg("\"%s\": wrote a result on failure", c->in);
        } else {
            if (rc != 0)
                fail_msg("\"%s\": rc %d errno %d", c->in, rc, e);
            if (ns != c->want)
                fail_msg("\"%s\": %lld, want %lld", c->in, (long long)ns, (long long)c->want);
        }
    }
}

static void test_parse_prefix_lengths(void **state)
{
    (void)state;
    /* every strict prefix of a valid stamp is refused */
    const char *s = "2026-11-22T15:54:09.123456789+01:00";
    for (size_t k = 0; k < strlen(s); k++) {
        int64_t ns;
        errno = 0;
        if (tmtime_rfc3339_parse(s, k, &ns) != -1 || errno != EINVAL) {
            /* a prefix ending right after a fraction digit is not a stamp either */
            fail_msg("prefix of %zu bytes accepted", k);
        }
    }
    int64_t ns;
    assert_int_equal(tmtime_rfc3339_parse(s, strlen(s), &ns), 0);
    assert_int_equal(ns, T_2026 + 123456789);
}

typedef struct {
    int64_t ns;
    const char *want;
} format_case_t;

static void test_format(void **state)
{
    (void)state;
    static const format_case_t cases[] = {
        { 0, "1970-01-01T00:00:00.000Z" },
        { 1, "1970-01-01T00:00:00.000Z" },
        { 999999, "1970-01-01T00:00:00.000Z" },
        { 1000000, "1970-01-01T00:00:00.001Z" },
        { T_2026 + 123456789, "2026-11-22T14:54:09.123Z" }, /* cut to ms, not rounded */
        { T_2026 + 999999999, "2026-11-22T14:54:09.999Z" },
        { 1709164800000000000LL, "2024-02-29T00:00:00.000Z" },
        { -1, "1969-12-31T23:59:59.999Z" },
        { -1000000000LL, "1969-12-31T23:59:59.000Z" },
        { INT64_MAX, "2262-04-11T23:47:16.854Z" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char buf[32];
        memset(buf, 'X', sizeof buf);
        char *r = tmtime_rfc3339_format(cases[i].ns, buf, sizeof buf);
        assert_ptr_equal(r, buf);
        if (strcmp(buf, cases[i].want) != 0)
            fail_msg("%lld: \"%s\", want \"%s\"", (long long)cases[i].ns, buf, cases[i].want);
    }
    /* format then parse gives the time back, to the millisecond */
    for (int64_t ns = 0; ns < INT64_MAX / 4; ns = ns * 3 + 1234567891) {
        char buf[32];
        tmtime_rfc3339_format(ns, buf, sizeof buf);
        int64_t back;
        assert_int_equal(tmtime_rfc3339_parse(buf, strlen(buf), &back), 0);
        assert_int_equal(back, ns - ns % 1000000);
    }
}

typedef struct {
    int64_t y;
    unsigned m, d;
    int64_t days;
} civil_case_t;

static void test_days_from_civil(void **state)
{
    (void)state;
    static const civil_case_t cases[] = {
        { 1970, 1, 1, 0 },       { 1970, 1, 2, 1 },         { 1969, 12, 31, -1 },
        { 2000, 2, 29, 11016 },  { 2000, 3, 1, 11017 },     { 2024, 2, 29, 19782 },
        { 1900, 3, 1, -25508 },  { 1600, 1, 1, -135140 },   { 2262, 4, 11, 106751 },
        { 9999, 12, 31, 2932896 }, { 1, 1, 1, -719162 },    { 0, 3, 1, -719468 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int64_t d = tmtime_days_from_civil(cases[i].y, cases[i].m, cases[i].d);
        if (d != cases[i].days)
            fail_msg("%lld-%02u-%02u: %lld, want %lld", (long long)cases[i].y, cases[i].m,
                     cases[i].d, (long long)d, (long long)cases[i].days);
    }
    /* consecutive days, through leap and non-leap years */
    int64_t prev = tmtime_days_from_civil(1899, 12, 31);
    static const unsigned mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    for (int64_t y = 1900; y <= 2400; y++) {
        bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for (unsigned m = 1; m <= 12; m++) {
            unsigned n = mdays[m - 1] + (m == 2 && leap);
            for (unsigned d = 1; d <= n; d++) {
                int64_t x = tmtime_days_from_civil(y, m, d);
                if (x != prev + 1)
                    fail_msg("%lld-%02u-%02u follows %lld with %lld", (long long)y, m, d,
                             (long long)prev, (long long)x);
                prev = x;
            }
        }
    }
}

static void test_clocks(void **state)
{
    (void)state;
    int64_t now = tmtime_now_ns();
    assert_true(now > 1700000000LL * TMTIME_NS_PER_SEC); /* after 2023 */
    int64_t a = tmtime_mono_ns();
    int64_t b = tmtime_mono_ns();
    assert_true(b >= a);
    assert_true(a > 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_prefix_lengths),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_days_from_civil),
        cmocka_unit_test(test_clocks),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("tmtime", tests, NULL, NULL);
}

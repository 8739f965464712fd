/* dec_test: table-driven tests of common/dec. Run one test alone with
 * `dec_test NAME` (a cmocka filter pattern, e.g. `dec_test test_parse*`). */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dec.h"

typedef __int128 i128;
typedef unsigned __int128 u128;

/* Test data in decimal text, converted by code independent of dec.c. */
static i128 i128_from_str(const char *s)
{
    bool neg = *s == '-';
    if (neg)
        s++;
    u128 m = 0;
    for (; *s; s++) {
        assert_true(*s >= '0' && *s <= '9');
        m = m * 10 + (unsigned)(*s - '0');
    }
    return neg ? (i128)((u128)0 - m) : (i128)m;
}

static const char *i128_str(i128 v, char *buf, size_t cap)
{
    char tmp[64];
    int n = 0;
    u128 m = v < 0 ? (u128)0 - (u128)v : (u128)v;
    do {
        tmp[n++] = (char)('0' + (int)(m % 10));
        m /= 10;
    } while (m);
    size_t o = 0;
    if (v < 0)
        buf[o++] = '-';
    while (n > 0 && o + 1 < cap)
        buf[o++] = tmp[--n];
    buf[o] = '\0';
    return buf;
}

#define MAXS "170141183460469231731687303715884105727"
#define MINS "-170141183460469231731687303715884105728"

static const char *errname(int e)
{
    switch (e) {
    case 0: return "ok";
    case EINVAL: return "EINVAL";
    case ERANGE: return "ERANGE";
    case EDOM: return "EDOM";
    default: return "other";
    }
}

/* ---- dec_parse ---------------------------------------------------------- */

typedef struct {
    const char *in;
    size_t len; /* bytes of in (embedded NULs allowed) */
    int scale;
    dec_round_t mode;
    unsigned flags;
    int err;          /* 0 or the errno */
    const char *want; /* units, when err == 0 */
} parse_case_t;

#define S(x) x, sizeof(x) - 1
#define EX DEC_EXACT
#define HE DEC_HALF_EVEN

static const parse_case_t parse_cases[] = {
    /* zeros, however written */
    { S("0"), 0, EX, 0, 0, "0" },
    { S("-0"), 9, EX, 0, 0, "0" },
    { S("0.0"), 38, EX, 0, 0, "0" },
    { S("-0.000e-5"), 24, EX, 0, 0, "0" },
    { S("0.000e999"), 0, EX, 0, 0, "0" },
    { S("0e99999999999999999999"), 38, EX, 0, 0, "0" },
    { S("0e-99999999999999999999"), 0, EX, 0, 0, "0" },
    /* the price table: exact at scale 24 */
    { S("2.5e-06"), 24, EX, 0, 0, "2500000000000000000" },
    { S("3.0001999999999996e-07"), 24, EX, 0, 0, "300019999999999960" },
    { S("4.5003000000000007e-07"), 24, EX, 0, 0, "450030000000000070" },
    { S("1e-24"), 24, EX, 0, 0, "1" },
    { S("1e-25"), 24, EX, 0, EDOM, NULL },
    { S("1e-25"), 24, HE, 0, 0, "0" },
    { S("0.0"), 24, EX, 0, 0, "0" },
    { S("3.0001999999999996e-07"), 9, EX, 0, EDOM, NULL },
    { S("3.0001999999999996e-07"), 9, HE, 0, 0, "300" },
    /* plain numbers, exponent forms */
    { S("1.5E+3"), 0, EX, 0, 0, "1500" },
    { S("-1.5E+3"), 2, EX, 0, 0, "-150000" },
    { S("1.5e3"), 0, EX, 0, 0, "1500" },
    { S("15e-1"), 1, EX, 0, 0, "15" },
    { S("12.000000345"), 9, EX, 0, 0, "12000000345" },
    { S("-12.000000345"), 9, EX, 0, 0, "-12000000345" },
    { S("1700000000.123456789"), 9, EX, 0, 0, "1700000000123456789" },
    { S("1.500000000000000000000000000000"), 1, EX, 0, 0, "15" }, /* zeros below the unit are exact */
    { S("1.50000001"), 1, EX, 0, EDOM, NULL },
    { S("1e-1"), 0, EX, 0, EDOM, NULL },
    { S("123456789012345678901234567890"), 0, EX, 0, 0, "123456789012345678901234567890" },
    /* leading zeros in the exponent */
    { S("1e0005"), 0, EX, 0, 0, "100000" },
    { S("1E+00"), 0, EX, 0, 0, "1" },
    { S("1e-0001"), 1, EX, 0, 0, "1" },
    { S("1e00000000000000000000000000000000000000005"), 0, EX, 0, 0, "100000" },
    { S("5e-00000000000000000000000000000000000000001"), 0, HE, 0, 0, "0" },
    /* huge and tiny exponents, never expanded */
    { S("1e-400"), 24, HE, 0, 0, "0" },
    { S("-1e-400"), 24, HE, 0, 0, "0" },
    { S("1e-400"), 24, EX, 0, EDOM, NULL },
    { S("9.9e-400"), 38, HE, 0, 0, "0" },
    { S("1e99999999999999999999"), 0, HE, 0, ERANGE, NULL },
    { S("-1e99999999999999999999"), 38, EX, 0, ERANGE, NULL },
    { S("1e-99999999999999999999"), 0, HE, 0, 0, "0" },
    { S("1e-99999999999999999999"), 38, EX, 0, EDOM, NULL },
    { S("1e9223372036854775807"), 0, EX, 0, ERANGE, NULL },
    { S("1e9223372036854775808"), 0, EX, 0, ERANGE, NULL },
    { S("1e-9223372036854775809"), 0, HE, 0, 0, "0" },
    { S("1e40"), 0, EX, 0, ERANGE, NULL },
    { S("1e39"), 0, EX, 0, ERANGE, NULL },
    { S("1e38"), 0, EX, 0, 0, "100000000000000000000000000000000000000" },
    { S("1e14"), 24, EX, 0, 0, "100000000000000000000000000000000000000" },
    { S("1e15"), 24, EX, 0, ERANGE, NULL },
    { S("1.5e39"), 0, EX, 0, ERANGE, NULL }, /* range is checked before exactness */
    { S("0.00000000000000000000000000000000000000000000000001e50"), 0, EX, 0, 0, "1" },
    { S("100000000000000000000000000000000000000000000000000e-50"), 0, EX, 0, 0, "1" },
    /* half to even, both directions, both signs */
    { S("0.5"), 0, HE, 0, 0, "0" },
    { S("1.5"), 0, HE, 0, 0, "2" },
    { S("2.5"), 0, HE, 0, 0, "2" },
    { S("3.5"), 0, HE, 0, 0, "4" },
    { S("-0.5"), 0, HE, 0, 0, "0" },
    { S("-1.5"), 0, HE, 0, 0, "-2" },
    { S("-2.5"), 0, HE, 0, 0, "-2" },
    { S("-3.5"), 0, HE, 0, 0, "-4" },
    { S("2.50000000000000000000000000000000000000000001"), 0, HE, 0, 0, "3" },
    { S("2.49999999999999999999999999999999999999999999"), 0, HE, 0, 0, "2" },
    { S("-2.5000001"), 0, HE, 0, 0, "-3" },
    { S("-2.4999999"), 0, HE, 0, 0, "-2" },
    { S("0.4999999999"), 0, HE, 0, 0, "0" },
    { S("0.9"), 0, HE, 0, 0, "1" },
    { S("9.5"), 0, HE, 0, 0, "10" },
    { S("99.5"), 0, HE, 0, 0, "100" },
    { S("25e-1"), 0, HE, 0, 0, "2" },
    { S("35e-1"), 0, HE, 0, 0, "4" },
    { S("0.05e1"), 0, HE, 0, 0, "0" },
    { S("0.0000000005"), 9, HE, 0, 0, "0" },
    { S("0.0000000015"), 9, HE, 0, 0, "2" },
    { S("0.0000000025"), 9, HE, 0, 0, "2" },
    { S("0.00000000050000000001"), 9, HE, 0, 0, "1" },
    { S("0.00000000049999999999"), 9, HE, 0, 0, "0" },
    { S("0.00000000005"), 9, HE, 0, 0, "0" }, /* rounding digit is an implicit zero */
    { S("1700000000.1234567895"), 9, HE, 0, 0, "1700000000123456790" },
    { S("1700000000.1234567885"), 9, HE, 0, 0, "1700000000123456788" },
    { S("0.5"), 0, EX, 0, EDOM, NULL },
    /* __int128 edges */
    { S(MAXS), 0, EX, 0, 0, MAXS },
    { S("170141183460469231731687303715884105728"), 0, EX, 0, ERANGE, NULL },
    { S(MINS), 0, EX, 0, 0, MINS },
    { S("-170141183460469231731687303715884105729"), 0, EX, 0, ERANGE, NULL },
    { S("1.70141183460469231731687303715884105727e38"), 0, EX, 0, 0, MAXS },
    { S("17014118346046923173168730371588410572.7"), 1, EX, 0, 0, MAXS },
    { S("-1.70141183460469231731687303715884105728"), 38, EX, 0, 0, MINS },
    { S("1.70141183460469231731687303715884105728"), 38, EX, 0, ERANGE, NULL },
    { S("170141183460469231731687303715884105727.4"), 0, HE, 0, 0, MAXS },
    { S("170141183460469231731687303715884105727.5"), 0, HE, 0, ERANGE, NULL }, /* odd: rounds up, out */
    { S("170141183460469231731687303715884105726.5"), 0, HE, 0, 0, "170141183460469231731687303715884105726" },
    { S("-170141183460469231731687303715884105728.5"), 0, HE, 0, 0, MINS }, /* even: stays */
    { S("-170141183460469231731687303715884105728.50001"), 0, HE, 0, ERANGE, NULL },
    { S("1"), 38, EX, 0, 0, "100000000000000000000000000000000000000" },
    { S("1.7"), 38, EX, 0, 0, "170000000000000000000000000000000000000" },
    { S("1.8"), 38, EX, 0, ERANGE, NULL },
    { S("1000000000000000000000000000000000000000"), 0, EX, 0, ERANGE, NULL },
    /* the '+' flag */
    { S("+1"), 0, EX, 0, EINVAL, NULL },
    { S("+1"), 0, EX, DEC_ALLOW_PLUS, 0, "1" },
    { S("+2.5"), 0, HE, DEC_ALLOW_PLUS, 0, "2" },
    { S("-1"), 0, EX, DEC_ALLOW_PLUS, 0, "-1" },
    { S("++1"), 0, EX, DEC_ALLOW_PLUS, EINVAL, NULL },
    { S("+-1"), 0, EX, DEC_ALLOW_PLUS, EINVAL, NULL },
    { S("+"), 0, EX, DEC_ALLOW_PLUS, EINVAL, NULL },
    { S("+.5"), 0, EX, DEC_ALLOW_PLUS, EINVAL, NULL },
    /* syntax */
    { S(""), 0, EX, 0, EINVAL, NULL },
    { S("-"), 0, EX, 0, EINVAL, NULL },
    { S("-+1"), 0, EX, 0, EINVAL, NULL },
    { S(".5"), 0, EX, 0, EINVAL, NULL },
    { S("-.5"), 0, EX, 0, EINVAL, NULL },
    { S("1."), 0, EX, 0, EINVAL, NULL },
    { S("01"), 0, EX, 0, EINVAL, NULL },
    { S("00"), 0, EX, 0, EINVAL, NULL },
    { S("-01"), 0, EX, 0, EINVAL, NULL },
    { S("00.5"), 0, EX, 0, EINVAL, NULL },
    { S("1e"), 0, EX, 0, EINVAL, NULL },
    { S("1e+"), 0, EX, 0, EINVAL, NULL },
    { S("1E-"), 0, EX, 0, EINVAL, NULL },
    { S("1.e5"), 0, EX, 0, EINVAL, NULL },
    { S("e5"), 0, EX, 0, EINVAL, NULL },
    { S("0x10"), 0, EX, 0, EINVAL, NULL },
    { S("NaN"), 0, EX, 0, EINVAL, NULL },
    { S("nan"), 0, EX, 0, EINVAL, NULL },
    { S("Infinity"), 0, EX, 0, EINVAL, NULL },
    { S("-Infinity"), 0, EX, 0, EINVAL, NULL },
    { S("inf"), 0, EX, 0, EINVAL, NULL },
    { S(" 1"), 0, EX, 0, EINVAL, NULL },
    { S("1 "), 0, EX, 0, EINVAL, NULL },
    { S("1\n"), 0, EX, 0, EINVAL, NULL },
    { S("1,5"), 0, EX, 0, EINVAL, NULL },
    { S("1_000"), 0, EX, 0, EINVAL, NULL },
    { S("1.5.2"), 0, EX, 0, EINVAL, NULL },
    { S("1e5.5"), 0, EX, 0, EINVAL, NULL },
    { S("1ee5"), 0, EX, 0, EINVAL, NULL },
    { S("1e5e5"), 0, EX, 0, EINVAL, NULL },
    { S("1e--5"), 0, EX, 0, EINVAL, NULL },
    { S("1\0"), 0, EX, 0, EINVAL, NULL },
    { S("\0" "1"), 0, EX, 0, EINVAL, NULL },
    { S("\"1\""), 0, EX, 0, EINVAL, NULL },
    { S("１"), 0, EX, 0, EINVAL, NULL }, /* fullwidth digit */
    /* bad arguments */
    { S("1"), -1, EX, 0, EINVAL, NULL },
    { S("1"), 39, EX, 0, EINVAL, NULL },
    { S("1"), 0, (dec_round_t)7, 0, EINVAL, NULL },
    { S("1"), 0, EX, 1u << 5, EINVAL, NULL },
    { S("x"), 39, EX, 0, EINVAL, NULL },
};

static void test_parse_table(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
        const parse_case_t *c = &parse_cases[i];
        i128 got = 12345;
        errno = 0;
        int rc = dec_parse_ex(c->in, c->len, c->scale, c->mode, c->flags, &got);
        int err = rc < 0 ? errno : 0;
        char a[64], b[64];
        if (rc != (c->err ? -1 : 0) || err != c->err ||
            (c->err == 0 && got != i128_from_str(c->want)) || (c->err != 0 && got != 12345)) {
            print_error("row %zu: dec_parse(\"%.*s\", scale %d, %s): rc %d %s %s, want %s %s\n", i,
                        (int)c->len, c->in, c->scale, c->mode == EX ? "exact" : "half-even", rc,
                        errname(err), rc == 0 ? i128_str(got, a, sizeof a) : "",
                        errname(c->err), c->want ? c->want : "");
            failures++;
        }
        /* dec_parse is dec_parse_ex without flags */
        if (c->flags == 0) {
            i128 got2 = 0;
            int rc2 = dec_parse(c->in, c->len, c->scale, c->mode, &got2);
            if (rc2 != rc || (rc == 0 && got2 != got)) {
                print_error("row %zu: dec_parse and dec_parse_ex disagree (%s)\n", i,
                            i128_str(got2, b, sizeof b));
                failures++;
            }
        }
    }
    assert_int_equal(failures, 0);
}

/* Long texts, built at run time: prefix + fill x count + suffix. */
typedef struct {
    const char *prefix;
    char fill;
    size_t count;
    const char *suffix;
    int scale;
    dec_round_t mode;
    int err;
    const char *want;
} long_case_t;

static const long_case_t long_cases[] = {
    { "0.", '0', 100000, "1", 38, HE, 0, "0" },
    { "0.", '0', 100000, "1", 38, EX, EDOM, NULL },
    { "0.", '0', 100000, "5e100001", 0, EX, 0, "5" },
    { "0.", '0', 100000, "25e100001", 0, HE, 0, "2" },
    { "0.", '0', 100000, "35e100001", 0, HE, 0, "4" },
    { "1", '0', 38, "", 0, EX, 0, "100000000000000000000000000000000000000" },
    { "1", '0', 39, "", 0, EX, ERANGE, NULL },
    { "1", '0', 100000, "e-100000", 0, EX, 0, "1" },
    { "1", '0', 100000, "e-99962", 0, EX, 0, "100000000000000000000000000000000000000" },
    { "1", '0', 100000, "e-99961", 0, EX, ERANGE, NULL },
    { "2.", '0', 100000, "1", 0, EX, EDOM, NULL },
    { "2.5", '0', 100000, "", 0, HE, 0, "2" },
    { "2.5", '0', 100000, "1", 0, HE, 0, "3" },
    { "-2.5", '0', 100000, "1", 0, HE, 0, "-3" },
    { "0.", '9', 100000, "", 0, HE, 0, "1" },
    { "0.", '9', 100000, "", 9, EX, EDOM, NULL },
    { "1e", '0', 100000, "7", 0, EX, 0, "10000000" },
    { "1e-", '9', 100000, "", 0, HE, 0, "0" },
    { "1e", '9', 100000, "", 0, HE, ERANGE, NULL },
    { "0e", '9', 100000, "", 0, EX, 0, "0" },
    { "0.", '0', 100000, "", 38, EX, 0, "0" },
    { "0.", '0', 100000, "x", 0, HE, EINVAL, NULL },
    { "01", '0', 100000, "", 0, HE, EINVAL, NULL },
};

static void test_parse_long(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof long_cases / sizeof long_cases[0]; i++) {
        const long_case_t *c = &long_cases[i];
        size_t pl = strlen(c->prefix), sl = strlen(c->suffix), n = pl + c->count + sl;
        char *s = malloc(n);
        assert_non_null(s);
        memcpy(s, c->prefix, pl);
        memset(s + pl, c->fill, c->count);
        memcpy(s + pl + c->count, c->suffix, sl);
        i128 got = 0;
        errno = 0;
        int rc = dec_parse(s, n, c->scale, c->mode, &got);
        int err = rc < 0 ? errno : 0;
        char a[64];
        if (err != c->err || (c->err == 0 && got != i128_from_str(c->want))) {
            print_error("long row %zu (%s + '%c' x %zu + %s): %s %s, want %s %s\n", i, c->prefix,
                        c->fill, c->count, c->suffix, errname(err), rc == 0 ? i128_str(got, a, sizeof a) : "",
                        errname(c->err), c->want ? c->want : "");
            failures++;
        }
        free(s);
    }
    assert_int_equal(failures, 0);
}

/* Every scale, against the same digits: "123.456" is 123456 * 10^(scale - 3). */
static void test_parse_every_scale(void **state)
{
    (void)state;
    for (int scale = 0; scale <= DEC_SCALE_MAX; scale++) {
        i128 got = 0;
        int rc = dec_parse("123.456", 7, scale, DEC_HALF_EVEN, &got);
        if (scale <= 36) {
            assert_int_equal(rc, 0);
            i128 want = scale >= 3 ? 123456 * dec_pow10(scale - 3)
                                   : dec_div_pow10_half_even(123456, 3 - scale);
            assert_true(got == want);
            assert_int_equal(dec_parse("123.456", 7, scale, DEC_EXACT, &got), scale >= 3 ? 0 : -1);
        } else {
            assert_int_equal(rc, -1);
            assert_int_equal(errno, ERANGE);
        }
    }
}

/* ---- dec_div_pow10_half_even -------------------------------------------- */

typedef struct {
    const char *v;
    int k;
    const char *want;
} div_case_t;

static const div_case_t div_cases[] = {
    { "0", 5, "0" },
    { "12345", 0, "12345" },
    { "25", 1, "2" },
    { "35", 1, "4" },
    { "-25", 1, "-2" },
    { "-35", 1, "-4" },
    { "24", 1, "2" },
    { "26", 1, "3" },
    { "-24", 1, "-2" },
    { "-26", 1, "-3" },
    { "5", 1, "0" },
    { "15", 1, "2" },
    { "-5", 1, "0" },
    { "-15", 1, "-2" },
    { "4", 1, "0" },
    { "6", 1, "1" },
    { "1", 38, "0" },
    { "-1", 38, "0" },
    { "49999999999999999999999999999999999999", 38, "0" },
    { "50000000000000000000000000000000000000", 38, "0" },
    { "50000000000000000000000000000000000001", 38, "1" },
    { "150000000000000000000000000000000000000", 38, "2" },
    { "-50000000000000000000000000000000000000", 38, "0" },
    { "-150000000000000000000000000000000000000", 38, "-2" },
    { "99999999999999999999999999999999999999", 38, "1" },
    { MAXS, 38, "2" },
    { MINS, 38, "-2" },
    { MAXS, 1, "17014118346046923173168730371588410573" },
    { MINS, 1, "-17014118346046923173168730371588410573" },
    { MAXS, 37, "17" },
    { MINS, 0, MINS },
    /* pricing: 1000 tokens at 3.0001999999999996e-07 $/token, 1e-24 units -> nano-dollars */
    { "300019999999999960000", 15, "300020" },
    { "2500000000000000000", 15, "2500" },
    { "500000000000000", 15, "0" },
    { "1500000000000000", 15, "2" },
    { "-2500000000000000", 15, "-2" },
};

static void test_div_table(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof div_cases / sizeof div_cases[0]; i++) {
        const div_case_t *c = &div_cases[i];
        i128 got = dec_div_pow10_half_even(i128_from_str(c->v), c->k);
        char a[64];
        if (got != i128_from_str(c->want)) {
            print_error("row %zu: %s / 10^%d = %s, want %s\n", i, c->v, c->k, i128_str(got, a, sizeof a),
                        c->want);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* dec_div agrees with dec_parse of the same value written with a point. */
static void test_div_matches_parse(void **state)
{
    (void)state;
    static const char *const vals[] = { "0", "1", "5", "15", "25", "-25", "12345678901234567890125",
                                        MAXS, MINS, "-999999999999999999999999999999999999995" };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        i128 v = i128_from_str(vals[i]);
        for (int k = 0; k <= DEC_SCALE_MAX; k++) {
            char text[DEC_FMT_MAX];
            int n = dec_format(v, k, false, text, sizeof text);
            assert_true(n > 0);
            i128 want = 0;
            assert_int_equal(dec_parse(text, (size_t)n, 0, DEC_HALF_EVEN, &want), 0);
            assert_true(dec_div_pow10_half_even(v, k) == want);
        }
    }
}

/* ---- dec_format --------------------------------------------------------- */

typedef struct {
    const char *v;
    int scale;
    bool trim;
    const char *want;
} fmt_case_t;

static const fmt_case_t fmt_cases[] = {
    { "0", 0, false, "0" },
    { "0", 0, true, "0" },
    { "0", 9, false, "0.000000000" },
    { "0", 9, true, "0" },
    { "-12000000345", 9, false, "-12.000000345" },
    { "-12000000345", 9, true, "-12.000000345" },
    { "1500", 3, false, "1.500" },
    { "1500", 3, true, "1.5" },
    { "2000", 3, true, "2" },
    { "-2000", 3, true, "-2" },
    { "5", 2, false, "0.05" },
    { "-5", 2, false, "-0.05" },
    { "-50", 2, true, "-0.5" },
    { "7", 0, false, "7" },
    { "-7", 0, true, "-7" },
    { "1000000000", 9, true, "1" },
    { "300019999999999960", 24, true, "0.00000030001999999999996" },
    { "2500000000000000000", 24, false, "0.000002500000000000000000" },
    { MAXS, 0, false, MAXS },
    { MINS, 0, false, MINS },
    { MAXS, 38, false, "1.70141183460469231731687303715884105727" },
    { MINS, 38, false, "-1.70141183460469231731687303715884105728" },
    { MINS, 38, true, "-1.70141183460469231731687303715884105728" },
    { "1", 38, false, "0.00000000000000000000000000000000000001" },
    { "-1", 38, false, "-0.00000000000000000000000000000000000001" },
    { "-1", 38, true, "-0.00000000000000000000000000000000000001" },
    { "100000000000000000000000000000000000000", 38, false, "1.00000000000000000000000000000000000000" },
    { "100000000000000000000000000000000000000", 38, true, "1" },
    { "10000000000000000000", 0, false, "10000000000000000000" }, /* 64-bit chunk edges */
    { "9999999999999999999", 0, false, "9999999999999999999" },
    { "100000000000000000000000000000000000000", 0, false, "100000000000000000000000000000000000000" },
    { "100000000000000000010000000000000000001", 19, false, "10000000000000000001.0000000000000000001" },
    { "18446744073709551616", 10, false, "1844674407.3709551616" },
};

static void test_format_table(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof fmt_cases / sizeof fmt_cases[0]; i++) {
        const fmt_case_t *c = &fmt_cases[i];
        i128 v = i128_from_str(c->v);
        char out[DEC_FMT_MAX];
        int n = dec_format(v, c->scale, c->trim, out, sizeof out);
        size_t wl = strlen(c->want);
        if (n != (int)wl || strcmp(out, c->want) != 0) {
            print_error("row %zu: format(%s, %d, %d) = %d \"%s\", want \"%s\"\n", i, c->v, c->scale, c->trim,
                        n, out, c->want);
            failures++;
            continue;
        }
        /* exact capacity works, one less fails cleanly */
        char small[DEC_FMT_MAX];
        memset(small, 'x', sizeof small);
        if (dec_format(v, c->scale, c->trim, small, wl + 1) != n || strcmp(small, c->want) != 0) {
            print_error("row %zu: fails with cap = len + 1\n", i);
            failures++;
        }
        errno = 0;
        memset(small, 'x', sizeof small);
        if (dec_format(v, c->scale, c->trim, small, wl) != -1 || errno != ERANGE || small[0] != '\0') {
            print_error("row %zu: cap = len does not fail with ERANGE\n", i);
            failures++;
        }
        /* and the text reads back as the same value */
        i128 back = 0;
        if (dec_parse(out, (size_t)n, c->scale, DEC_EXACT, &back) != 0 || back != v) {
            print_error("row %zu: \"%s\" does not parse back\n", i, out);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void test_format_degenerate(void **state)
{
    (void)state;
    char out[DEC_FMT_MAX] = "x";
    assert_int_equal(dec_format(1, 0, false, out, 0), -1);
    assert_int_equal(errno, ERANGE);
    assert_string_equal(out, "x"); /* cap 0: nothing written */
    assert_int_equal(dec_format(1, 0, false, out, 1), -1);
    assert_string_equal(out, "");
    assert_int_equal(dec_format(1, -1, false, out, sizeof out), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(dec_format(1, 39, false, out, sizeof out), -1);
    assert_int_equal(errno, EINVAL);
    /* DEC_FMT_MAX suffices for the longest value */
    assert_true(dec_format(DEC_INT128_MIN, 38, false, out, sizeof out) < DEC_FMT_MAX);
    assert_true(dec_format(-1, 38, false, out, sizeof out) < DEC_FMT_MAX);
}

/* ---- dec_from_double ---------------------------------------------------- */

typedef struct {
    double x;
    int scale;
    int err;
    const char *want;
} dbl_case_t;

static const dbl_case_t dbl_cases[] = {
    { 0.0, 0, 0, "0" },
    { -0.0, 9, 0, "0" },
    { 1.0, 9, 0, "1000000000" },
    { -1.0, 9, 0, "-1000000000" },
    { 0.1, 9, 0, "100000000" },
    { 0.1, 22, 0, "1000000000000000055511" },
    { 0.1, 30, 0, "100000000000000005551115123126" }, /* printf path */
    { 0.125, 2, 0, "12" },  /* exact tie, to even */
    { 0.375, 2, 0, "38" },
    { -0.125, 2, 0, "-12" },
    { -0.375, 2, 0, "-38" },
    { 2.5, 0, 0, "2" },
    { 3.5, 0, 0, "4" },
    { -2.5, 0, 0, "-2" },
    { -3.5, 0, 0, "-4" },
    { 0.5, 0, 0, "0" },
    { 1.5, 0, 0, "2" },
    { 2.675, 2, 0, "267" },   /* 2.67499999... in binary */
    { 1e-10, 9, 0, "0" },
    { 5e-10, 9, 0, "1" },     /* 5.0000000000000003e-10 */
    { 1.5e-9, 9, 0, "1" },    /* 1.4999999999999999e-09 */
    { 2.5e-9, 9, 0, "3" },
    { 2.5e-06, 24, 0, "2500000000000000205" }, /* why prices are read as text */
    { 3.0001999999999996e-07, 24, 0, "300019999999999956" },
    { 0.3, 23, 0, "29999999999999998889777" },
    { 123.456, 22, 0, "1234560000000000030695446" },
    { 1e-24, 24, 0, "1" },
    { 1e-38, 38, 0, "1" },
    { 9.87654321e-5, 38, 0, "9876543209999999375220403052821894" },
    { 0x1p60, 0, 0, "1152921504606846976" },
    { 0x1p126, 0, 0, "85070591730234615865843651857942052864" },
    { -0x1p127, 0, 0, MINS },
    { 0x1p127, 0, ERANGE, NULL },
    { -0x1p127, 1, ERANGE, NULL },
    { 1.7e38, 0, 0, "169999999999999998061923293023115935744" },
    { 1e38, 0, 0, "99999999999999997748809823456034029568" },
    { 1.7e16, 22, 0, "170000000000000000000000000000000000000" },
    { 1.7014118346046924e16, 22, ERANGE, NULL },
    { 1.7e14, 24, 0, "170000000000000000000000000000000000000" },
    { 1.71e14, 24, ERANGE, NULL },
    { -1.71e14, 24, ERANGE, NULL },
    { DBL_MAX, 0, ERANGE, NULL },
    { -DBL_MAX, 38, ERANGE, NULL },
    { DBL_MIN, 38, 0, "0" },
    { 0x1p-1074, 38, 0, "0" },
    { 0x1p-1074, 9, 0, "0" },
    { -0x1p-1074, 0, 0, "0" },
    { 1.0, -1, EINVAL, NULL },
    { 1.0, 39, EINVAL, NULL },
};

static void test_from_double_table(void **state)
{
    (void)state;
    int failures = 0;
    const dbl_case_t extra[] = { { NAN, 0, EINVAL, NULL }, { INFINITY, 9, EINVAL, NULL },
                                 { -INFINITY, 9, EINVAL, NULL } };
    size_t n1 = sizeof dbl_cases / sizeof dbl_cases[0], n2 = sizeof extra / sizeof extra[0];
    for (size_t i = 0; i < n1 + n2; i++) {
        const dbl_case_t *c = i < n1 ? &dbl_cases[i] : &extra[i - n1];
        i128 got = 777;
        errno = 0;
        int rc = dec_from_double(c->x, c->scale, &got);
        int err = rc < 0 ? errno : 0;
        char a[64];
        if (err != c->err || (c->err == 0 && got != i128_from_str(c->want)) || (c->err && got != 777)) {
            print_error("row %zu: from_double(%a, %d) = %s %s, want %s %s\n", i, c->x, c->scale, errname(err),
                        rc == 0 ? i128_str(got, a, sizeof a) : "", errname(c->err), c->want ? c->want : "");
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* The integer path (scale <= 22) against glibc's correctly rounded printf. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;
static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void test_from_double_matches_printf(void **state)
{
    (void)state;
    for (int i = 0; i < 200000; i++) {
        uint64_t bits = rng();
        double x;
        if (i % 2) {
            /* decimal-looking values: k / 10^d */
            x = (double)(int64_t)(bits % 2000000001u - 1000000000) / pow(10, (double)(bits >> 40 & 15));
        } else {
            /* any bit pattern in a useful exponent range */
            bits = (bits & 0x800FFFFFFFFFFFFFu) | (uint64_t)((bits >> 52 & 0xFF) + 1023 - 140) << 52;
            memcpy(&x, &bits, sizeof x);
        }
        int scale = (int)(rng() % (DEC_SCALE_MAX + 1));
        char text[512];
        int n = snprintf(text, sizeof text, "%.*f", scale, x);
        assert_true(n > 0 && (size_t)n < sizeof text);
        i128 want = 0, got = 0;
        /* printf already rounded to `scale` places: parse exactly */
        int rc_want = dec_parse(text, (size_t)n, scale, DEC_EXACT, &want);
        int rc = dec_from_double(x, scale, &got);
        if (rc != rc_want || (rc == 0 && got != want)) {
            char a[64], b[64];
            fail_msg("from_double(%a, %d): rc %d %s, printf gives rc %d %s (%s)", x, scale, rc,
                     i128_str(got, a, sizeof a), rc_want, i128_str(want, b, sizeof b), text);
        }
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_long),
        cmocka_unit_test(test_parse_every_scale),
        cmocka_unit_test(test_div_table),
        cmocka_unit_test(test_div_matches_parse),
        cmocka_unit_test(test_format_table),
        cmocka_unit_test(test_format_degenerate),
        cmocka_unit_test(test_from_double_table),
        cmocka_unit_test(test_from_double_matches_printf),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("dec", tests, NULL, NULL);
}

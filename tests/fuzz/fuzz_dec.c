/* fuzz_dec: libFuzzer target for common/dec. The first byte picks the scale,
 * mode and flags; the rest is the text for dec_parse, and its first 8 and 16
 * bytes are also read as a double (dec_from_double) and an __int128
 * (dec_format, dec_div_pow10_half_even). Each result is checked against an
 * independent route to the same value. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                \
    do {                                                                                        \
        if (!(c)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

/* Parsing at a finer scale and dividing must equal parsing at the coarse one. */
static void check_text(const char *s, size_t n, int scale, unsigned flags)
{
    __int128 ex = 0, he = 0;
    errno = 0;
    int rc_ex = dec_parse_ex(s, n, scale, DEC_EXACT, flags, &ex);
    int e_ex = rc_ex ? errno : 0;
    errno = 0;
    int rc_he = dec_parse_ex(s, n, scale, DEC_HALF_EVEN, flags, &he);
    int e_he = rc_he ? errno : 0;
    CHECK(rc_ex == 0 || e_ex == EINVAL || e_ex == ERANGE || e_ex == EDOM);
    CHECK(rc_he == 0 || e_he == EINVAL || e_he == ERANGE);
    CHECK((e_ex == EINVAL) == (e_he == EINVAL));
    if (rc_ex == 0)
        CHECK(rc_he == 0 && ex == he);
    if (e_ex == EDOM)
        CHECK(rc_he == 0 || e_he == ERANGE);
    if (e_ex == EINVAL)
        return;

    /* the finest scale at which the value is exact and fits */
    for (int fine = DEC_SCALE_MAX; fine > scale; fine--) {
        __int128 v = 0;
        if (dec_parse_ex(s, n, fine, DEC_EXACT, flags, &v) != 0)
            continue;
        __int128 q = dec_div_pow10_half_even(v, fine - scale);
        CHECK(rc_he == 0 && he == q);
        bool exact = v % dec_pow10(fine - scale) == 0;
        CHECK(exact == (rc_ex == 0));
        break;
    }
    if (rc_he == 0) {
        char out[DEC_FMT_MAX];
        for (int trim = 0; trim < 2; trim++) {
            int len = dec_format(he, scale, trim, out, sizeof out);
            CHECK(len > 0 && (size_t)len == strlen(out));
            __int128 back = 0;
            CHECK(dec_parse(out, (size_t)len, scale, DEC_EXACT, &back) == 0 && back == he);
        }
    }
}

static void check_double(double x, int scale)
{
    __int128 got = 0;
    errno = 0;
    int rc = dec_from_double(x, scale, &got);
    if (!isfinite(x)) {
        CHECK(rc == -1 && errno == EINVAL);
        return;
    }
    CHECK(rc == 0 || errno == ERANGE);
    /* glibc printf rounds the exact binary value; skip what it would print at length */
    if (fabs(x) > 1e40)
        return;
    char text[512];
    int n = snprintf(text, sizeof text, "%.*f", scale, x);
    CHECK(n > 0 && (size_t)n < sizeof text);
    __int128 want = 0;
    int rc_want = dec_parse(text, (size_t)n, scale, DEC_EXACT, &want);
    CHECK(rc == rc_want && (rc != 0 || got == want));
}

static void check_int(__int128 v, int k)
{
    char out[DEC_FMT_MAX];
    int len = dec_format(v, k, false, out, sizeof out);
    CHECK(len > 0);
    __int128 back = 0, q = 0;
    CHECK(dec_parse(out, (size_t)len, k, DEC_EXACT, &back) == 0 && back == v);
    /* v / 10^k rounded = the text read at scale 0, rounded */
    CHECK(dec_parse(out, (size_t)len, 0, DEC_HALF_EVEN, &q) == 0);
    CHECK(dec_div_pow10_half_even(v, k) == q);
    char small[DEC_FMT_MAX];
    CHECK(dec_format(v, k, true, small, (size_t)len + 1) > 0);
    CHECK(dec_format(v, k, false, small, (size_t)len) == -1 && small[0] == '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int scale = data[0] % (DEC_SCALE_MAX + 1);
    unsigned flags = data[0] & 0x80 ? DEC_ALLOW_PLUS : 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    check_text(s, n, scale, flags);
    if (n >= sizeof(double)) {
        double x;
        memcpy(&x, s, sizeof x);
        check_double(x, scale);
    }
    if (n >= sizeof(__int128)) {
        __int128 v;
        memcpy(&v, s, sizeof v);
        check_int(v, scale);
    }
    return 0;
}

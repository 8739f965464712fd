#include "dec.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef __int128 i128;

#define E19 ((u128)10000000000000000000u)
static const u128 p10[DEC_SCALE_MAX + 1] = {
    1u,
    10u,
    100u,
    1000u,
    10000u,
    100000u,
    1000000u,
    10000000u,
    100000000u,
    1000000000u,
    10000000000u,
    100000000000u,
    1000000000000u,
    10000000000000u,
    100000000000000u,
    1000000000000000u,
    10000000000000000u,
    100000000000000000u,
    1000000000000000000u,
    10000000000000000000u,
    E19 * 10u,
    E19 * 100u,
    E19 * 1000u,
    E19 * 10000u,
    E19 * 100000u,
    E19 * 1000000u,
    E19 * 10000000u,
    E19 * 100000000u,
    E19 * 1000000000u,
    E19 * 10000000000u,
    E19 * 100000000000u,
    E19 * 1000000000000u,
    E19 * 10000000000000u,
    E19 * 100000000000000u,
    E19 * 1000000000000000u,
    E19 * 10000000000000000u,
    E19 * 100000000000000000u,
    E19 * 1000000000000000000u,
    E19 * 10000000000000000000u,
};

/* Exponents beyond this are all alike for a text shorter than DEC_LEN_MAX: the
 * first digit lands either above 10^38 units or far below the rounding digit. */
#define EXP_SAT ((int64_t)100000000000000000) /* 1e17 */
#define DEC_LEN_MAX ((size_t)1 << 56)

/* The largest magnitude a result of this sign may have. */
static inline u128 mag_limit(bool neg)
{
    return neg ? (u128)1 << 127 : ((u128)1 << 127) - 1;
}

static inline i128 apply_sign(u128 m, bool neg)
{
    /* Two's complement wrap (GCC and clang define the conversion so); also
     * gives INT128_MIN for m == 2^127 without a signed overflow. */
    return neg ? (i128)((u128)0 - m) : (i128)m;
}

static inline bool is_digit(char c) { return (unsigned)(c - '0') < 10; }

i128 dec_pow10(int k)
{
    assert(k >= 0 && k <= DEC_SCALE_MAX);
    return (i128)p10[k];
}

/* The digit walk: the state shared by the integer and the fraction digits. */
typedef struct {
    int64_t w;       /* weight of the next digit: it counts 10^w units */
    u128 acc;        /* units so far (magnitude) */
    u128 lim10;      /* limit / 10 */
    unsigned limd;   /* limit % 10 */
    unsigned round;  /* the digit of weight -1 (0 when there is none) */
    bool sticky;     /* a non-zero digit below weight -1 */
} walk_t;

static int walk(walk_t *st, const char *s, size_t a, size_t b)
{
    size_t i = a;
    /* Most numbers have few digits: accumulate in 64 bits while that cannot overflow. */
    if (st->acc < 100000000000000000u) {
        uint64_t acc = (uint64_t)st->acc;
        for (; i < b && st->w >= 0 && acc < 100000000000000000u; i++, st->w--)
            acc = acc * 10 + (unsigned)(s[i] - '0');
        st->acc = acc;
    }
    for (; i < b; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (st->w >= 0) {
            if (st->acc > st->lim10 || (st->acc == st->lim10 && d > st->limd))
                return -1;
            st->acc = st->acc * 10 + d;
        } else if (st->w == -1) {
            st->round = d;
        } else {
            /* Everything further down only decides the sticky bit; w stays
             * below -1 for the rest of the walk. */
            for (; i < b && !st->sticky; i++)
                st->sticky = s[i] != '0';
            return 0;
        }
        st->w--;
    }
    return 0;
}

int dec_parse_ex(const char *s, size_t n, int scale, dec_round_t mode, unsigned flags, i128 *out)
{
    if (scale < 0 || scale > DEC_SCALE_MAX || (mode != DEC_EXACT && mode != DEC_HALF_EVEN) ||
        (flags & ~(unsigned)DEC_ALLOW_PLUS) || n >= DEC_LEN_MAX)
        goto einval;

    /* Pass 1: syntax, and where the parts are. */
    size_t i = 0;
    bool neg = false;
    if (i < n && s[i] == '-') {
        neg = true;
        i++;
    } else if (i < n && s[i] == '+' && (flags & DEC_ALLOW_PLUS)) {
        i++;
    }
    size_t is = i;
    if (i < n && s[i] == '0') {
        i++;
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (++i < n && is_digit(s[i]))
            ;
    } else {
        goto einval;
    }
    size_t ie = i, fs = i, fe = i;
    if (i < n && s[i] == '.') {
        fs = ++i;
        if (i >= n || !is_digit(s[i]))
            goto einval;
        while (++i < n && is_digit(s[i]))
            ;
        fe = i;
    }
    int64_t e = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        bool eneg = false;
        if (++i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= n || !is_digit(s[i]))
            goto einval;
        do {
            if (e <= EXP_SAT)
                e = e * 10 + (s[i] - '0');
        } while (++i < n && is_digit(s[i]));
        if (e > EXP_SAT)
            e = EXP_SAT;
        if (eneg)
            e = -e;
    }
    if (i != n)
        goto einval;

    /* Pass 2: place each digit against the unit. The first digit weighs
     * 10^(intlen - 1 + e + scale) units. */
    u128 lim = mag_limit(neg);
    walk_t st = {
        .w = (int64_t)(ie - is) - 1 + e + scale,
        .lim10 = ((u128)1 << 127) / 10, /* the same for both signs */
        .limd = neg ? 8 : 7,            /* 2^127 ends in ...728 */
    };
    if (walk(&st, s, is, ie) < 0 || walk(&st, s, fs, fe) < 0)
        goto erange;
    if (st.w >= 0 && st.acc != 0) {
        /* Implicit zeros between the last digit and the unit (1e5, 2.5e-6 at scale 24). */
        int64_t z = st.w + 1;
        if (z > DEC_SCALE_MAX || __builtin_mul_overflow(st.acc, p10[z], &st.acc) || st.acc > lim)
            goto erange;
    }
    if (st.round != 0 || st.sticky) {
        if (mode == DEC_EXACT) {
            errno = EDOM;
            return -1;
        }
        if (st.round > 5 || (st.round == 5 && (st.sticky || (st.acc & 1)))) {
            if (st.acc == lim)
                goto erange;
            st.acc++;
        }
    }
    *out = apply_sign(st.acc, neg);
    return 0;
einval:
    errno = EINVAL;
    return -1;
erange:
    errno = ERANGE;
    return -1;
}

int dec_parse(const char *s, size_t n, int scale, dec_round_t mode, i128 *out)
{
    return dec_parse_ex(s, n, scale, mode, 0, out);
}

i128 dec_div_pow10_half_even(i128 v, int k)
{
    assert(k >= 0 && k <= DEC_SCALE_MAX);
    if (k == 0)
        return v;
    i128 p = (i128)p10[k];
    i128 q = v / p, r = v % p; /* truncates toward zero; r has v's sign */
    u128 ar = r < 0 ? (u128)0 - (u128)r : (u128)r;
    u128 rest = (u128)p - ar; /* compare ar with p/2 without 2*ar overflowing */
    if (ar > rest || (ar == rest && (q & 1)))
        q += v < 0 ? -1 : 1;
    return q;
}

int dec_format(i128 v, int scale, bool trim, char *out, size_t cap)
{
    if (scale < 0 || scale > DEC_SCALE_MAX) {
        errno = EINVAL;
        goto fail;
    }
    bool neg = v < 0;
    u128 m = neg ? (u128)0 - (u128)v : (u128)v;

    /* Digits, least significant first, in 64-bit chunks of 19. */
    char dig[64];
    int nd = 0;
    do {
        uint64_t chunk = (uint64_t)(m % E19);
        m /= E19;
        for (int k = 0; k < 19 && (m != 0 || chunk != 0); k++) {
            dig[nd++] = (char)('0' + chunk % 10);
            chunk /= 10;
        }
    } while (m != 0);
    while (nd < scale + 1) /* at least one integer digit: 0.05 */
        dig[nd++] = '0';

    int frac = scale;
    if (trim)
        while (frac > 0 && dig[scale - frac] == '0')
            frac--;
    size_t len = (size_t)neg + (size_t)(nd - scale) + (frac ? 1 + (size_t)frac : 0);
    if (cap <= len) {
        errno = ERANGE;
        goto fail;
    }
    char *o = out;
    if (neg)
        *o++ = '-';
    for (int k = nd - 1; k >= scale; k--)
        *o++ = dig[k];
    if (frac) {
        *o++ = '.';
        for (int k = scale - 1; k >= scale - frac; k--)
            *o++ = dig[k];
    }
    *o = '\0';
    return (int)len;
fail:
    if (cap > 0)
        out[0] = '\0';
    return -1;
}

/* printf path for scale 23..38, where m * 10^scale outgrows 128 bits; a < 2^127. */
static int from_double_printf(double a, int scale, bool neg, u128 *q)
{
    char buf[128];
    int len = snprintf(buf, sizeof buf, "%.*f", scale, a);
    if (len < 0 || (size_t)len >= sizeof buf || len < scale + 2)
        return -1;
    /* Integer digits, then the locale's decimal point, then exactly `scale` digits. */
    u128 lim = mag_limit(neg), acc = 0;
    int i = 0;
    for (; is_digit(buf[i]); i++) {
        if (acc > (lim - (unsigned)(buf[i] - '0')) / 10)
            return -1;
        acc = acc * 10 + (unsigned)(buf[i] - '0');
    }
    if (i == 0 || i > len - scale - 1)
        return -1;
    for (int k = len - scale; k < len; k++) {
        if (!is_digit(buf[k]) || acc > (lim - (unsigned)(buf[k] - '0')) / 10)
            return -1;
        acc = acc * 10 + (unsigned)(buf[k] - '0');
    }
    *q = acc;
    return 0;
}

int dec_from_double(double x, int scale, i128 *out)
{
    if (scale < 0 || scale > DEC_SCALE_MAX || !isfinite(x)) {
        errno = EINVAL;
        return -1;
    }
    bool neg = signbit(x);
    double a = fabs(x);
    if (a == 0) {
        *out = 0;
        return 0;
    }
    u128 lim = mag_limit(neg), q;
    if (a >= 0x1p127) {
        /* Only -2^127 at scale 0 fits. */
        if (!(neg && a == 0x1p127 && scale == 0))
            goto erange;
        q = (u128)1 << 127;
    } else if (scale <= 22) {
        /* a = m * 2^e exactly, m < 2^53; m * 10^scale < 2^53 * 10^22 < 2^127. */
        int ex;
        double f = frexp(a, &ex);
        uint64_t m = (uint64_t)ldexp(f, 53);
        int e = ex - 53;
        u128 pm = (u128)m * p10[scale];
        if (e >= 0) {
            if (e >= 128 || pm > lim >> e)
                goto erange;
            q = pm << e;
        } else if (-e >= 128) {
            q = 0; /* pm < 2^127 <= half of 2^-e */
        } else {
            int t = -e;
            u128 rem = pm & (((u128)1 << t) - 1), half = (u128)1 << (t - 1);
            q = pm >> t;
            if (rem > half || (rem == half && (q & 1)))
                q++;
            if (q > lim)
                goto erange;
        }
    } else if (from_double_printf(a, scale, neg, &q) < 0) {
        goto erange;
    }
    *out = apply_sign(q, neg);
    return 0;
erange:
    errno = ERANGE;
    return -1;
}

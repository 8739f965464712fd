/* dec: exact decimal arithmetic for money and time. A value is a signed 128-bit
 * count of units of 10^-scale (scale 0..38): $1 at scale 9 is 1000000000
 * nano-dollars, a rate of 3e-07 USD/token at scale 24 is 300000000000000000.
 * Parsing reads the decimal text itself, never a double, and rounds at most once.
 * All functions are pure (no state, no allocation): thread-safe. */
#ifndef TOKMON_DEC_H
#define TOKMON_DEC_H

#include <stdbool.h>
#include <stddef.h>

#define DEC_SCALE_MAX 38
/* Bytes enough for dec_format() of any value at any scale, NUL included. */
#define DEC_FMT_MAX 48

#define DEC_INT128_MAX ((__int128)(((unsigned __int128)1 << 127) - 1))
#define DEC_INT128_MIN (-DEC_INT128_MAX - 1)

typedef enum { DEC_EXACT, DEC_HALF_EVEN } dec_round_t;

/* Flags for dec_parse_ex(). */
enum {
    DEC_ALLOW_PLUS = 1 << 0, /* accept a leading '+' (not JSON) */
};

/* Parses s[0..n) (not NUL-terminated; n < 2^56), a decimal number in JSON number
 * syntax: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, nothing before or after
 * (no whitespace), into *out = value * 10^scale. Exact for any exponent: the
 * digits are walked once against the unit's position, never expanded.
 *   DEC_EXACT:     fails with EDOM when a non-zero digit falls below the unit;
 *   DEC_HALF_EVEN: rounds once, on the exact value, half to even ("-2.5" -> -2).
 * Returns 0, or -1 with errno: EINVAL bad syntax or scale outside 0..38 or bad
 * mode, ERANGE the result does not fit in __int128, EDOM inexact (DEC_EXACT).
 * Syntax is checked before range, range before exactness. *out is only written
 * on success. -0 gives 0. */
int dec_parse(const char *s, size_t n, int scale, dec_round_t mode, __int128 *out);

/* dec_parse() with flags (DEC_ALLOW_PLUS). */
int dec_parse_ex(const char *s, size_t n, int scale, dec_round_t mode, unsigned flags, __int128 *out);

/* 10^k for k in 0..38 (asserted). */
__int128 dec_pow10(int k);

/* v / 10^k rounded half to even (k 0..38, asserted); exact for every v,
 * symmetric for negative v (-25 / 10 -> -2, -35 / 10 -> -4). */
__int128 dec_div_pow10_half_even(__int128 v, int k);

/* Writes v units of 10^-scale (scale 0..38) as a plain decimal, NUL-terminated:
 * "-12.000000345". trim == false keeps exactly `scale` fraction digits ("1.500"
 * at scale 3), trim == true drops trailing zeros and a bare point ("1.5", "2").
 * Never an exponent, a '+' or "-0". Returns the length without the NUL, or -1
 * with errno ERANGE when cap is too small (DEC_FMT_MAX always suffices) or
 * EINVAL for a bad scale; out then holds "" if cap > 0. */
int dec_format(__int128 v, int scale, bool trim, char *out, size_t cap);

/* Converts a finite double to units of 10^-scale (scale 0..38), rounding its
 * EXACT binary value half to even (0.125 -> 0.12 at scale 2, 0.1 at scale 30 ->
 * 100000000000000005551115123126). Integer arithmetic for scale <= 22, glibc
 * printf("%.*f") above (correctly rounded in the default rounding mode; its
 * locale's decimal point is not relied on). Returns 0, or -1 with errno EINVAL
 * (NaN, Inf, bad scale) or ERANGE (does not fit); *out is written on success only. */
int dec_from_double(double x, int scale, __int128 *out);

#endif

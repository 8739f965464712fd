#include "tmtime.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <time.h>

int64_t tmtime_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * TMTIME_NS_PER_SEC + ts.tv_nsec;
}

int64_t tmtime_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * TMTIME_NS_PER_SEC + ts.tv_nsec;
}

/* Howard Hinnant's days_from_civil: exact for the proleptic Gregorian calendar. */
int64_t tmtime_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, size_t n, unsigned *out)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    *out = v;
    return true;
}

static bool leap(unsigned y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int tmtime_rfc3339_parse(const char *s, size_t len, int64_t *ns)
{
    unsigned y, mo, d, h, mi, se;
    if (len < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
        !digits(s + 17, 2, &se))
        goto bad;
    static const unsigned mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap(y)) || h > 23 ||
        mi > 59 || se > 60)
        goto bad;
    /* a leap second folds onto the next second's start (23:59:60.5 is
     * 00:00:00.000), so that times never run backwards across it */
    const bool leap_second = se == 60;
    size_t i = 19;
    int64_t frac = 0;
    if (i < len && s[i] == '.') {
        i++;
        size_t nd = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            if (nd < 9)
                frac = frac * 10 + (s[i] - '0');
            nd++;
            i++;
        }
        if (nd == 0)
            goto bad;
        for (size_t k = nd; k < 9; k++)
            frac *= 10;
    }
    if (leap_second)
        frac = 0;
    if (i >= len)
        goto bad;
    int64_t off = 0;
    if (s[i] == 'Z' || s[i] == 'z') {
        i++;
    } else if (s[i] == '+' || s[i] == '-') {
        unsigned oh, om;
        if (len - i != 6 || !digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
            !digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            goto bad;
        off = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        goto bad;
    }
    if (i != len)
        goto bad;
    if (y < 1970 || y > 9999) {
        errno = ERANGE;
        return -1;
    }
    int64_t secs = tmtime_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - off;
    if (secs < 0 || secs > INT64_MAX / TMTIME_NS_PER_SEC - 1) {
        errno = ERANGE;
        return -1;
    }
    *ns = secs * TMTIME_NS_PER_SEC + frac;
    return 0;
bad:
    errno = EINVAL;
    return -1;
}

char *tmtime_rfc3339_format(int64_t ns, char *out, size_t cap)
{
    time_t secs = (time_t)(ns / TMTIME_NS_PER_SEC);
    int64_t rem = ns % TMTIME_NS_PER_SEC;
    if (rem < 0) {
        rem += TMTIME_NS_PER_SEC;
        secs--;
    }
    struct tm tmv;
    gmtime_r(&secs, &tmv);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tmv.tm_year + 1900, tmv.tm_mon + 1,
             tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec, (int)(rem / TMTIME_NS_PER_MS));
    return out;
}

/* tmtime: the clocks and time formats of the pipeline. Time on the bus is
 * int64 unix nanoseconds; RFC 3339 is what people and JSON events use. */
#ifndef TOKMON_TMTIME_H
#define TOKMON_TMTIME_H

#include <stddef.h>
#include <stdint.h>

#define TMTIME_NS_PER_SEC 1000000000LL
#define TMTIME_NS_PER_MS 1000000LL

/* Wall clock, unix nanoseconds. */
int64_t tmtime_now_ns(void);
/* Monotonic clock in nanoseconds, for intervals and timers. */
int64_t tmtime_mono_ns(void);

/* Parses an RFC 3339 timestamp ("2026-11-22T14:54:09Z",
 * "2026-11-22T14:54:09.123456789+01:00", lower-case t/z and a space instead
 * of T accepted) into unix ns. Returns 0, or -1 with errno EINVAL on bad
 * syntax or out-of-range fields, ERANGE before 1970 or beyond int64 nanoseconds (2262). */
int tmtime_rfc3339_parse(const char *s, size_t len, int64_t *ns);

/* Formats unix ns as RFC 3339 UTC with millisecond precision
 * ("2026-11-22T14:54:09.123Z") into out (at least 32 bytes). Returns out. */
char *tmtime_rfc3339_format(int64_t ns, char *out, size_t cap);

/* Days since 1970-01-01 of a proleptic Gregorian date (no time zone). */
int64_t tmtime_days_from_civil(int64_t y, unsigned m, unsigned d);

#endif

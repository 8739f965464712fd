/* cal: calendar periods (day, ISO week, month) in one IANA time zone, for the
 * aggregator's quotas and budgets. Instants are int64 unix nanoseconds, as on
 * the bus; a period is the half-open interval [start, next) of the instants
 * that belong to it, and the periods of one kind tile the time line.
 *
 * The zone is read from its TZif file ($TZDIR/<name>, else
 * /usr/share/zoneinfo/<name>): the 64-bit transition table, then the footer's
 * POSIX TZ rule past the last transition. Nothing here reads or sets the
 * process's TZ or calls tzset/localtime/mktime, so several zones can live in
 * one process and other code may change TZ freely.
 *
 * Where a period starts. A period of local date D starts at the first instant
 * whose local wall clock reads D 00:00 or later: 00:00 local when that exists,
 * else the end of the gap that swallowed midnight (America/Sao_Paulo
 * 2018-11-04 began at 01:00 -02:00). Days are therefore 23, 24 or 25 hours
 * long around daylight-saving changes (other lengths where a zone changed its
 * offset by other amounts; Pacific/Apia skipped 2011-12-30 altogether, so no
 * instant ever falls in that day and 2011-12-29 ends where 2011-12-31 starts).
 * When a zone sets its clock back across midnight (America/St_Johns,
 * 2010-11-07 00:01 -> 2010-11-06 23:01) the repeated hour of the previous
 * date belongs to the new day, which has already begun: a period never ends
 * and then resumes. ISO weeks start on Monday, months on the 1st, both at the
 * start of that day. */
#ifndef TOKMON_CAL_H
#define TOKMON_CAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum { CAL_DAY, CAL_WEEK, CAL_MONTH } cal_period_t;

typedef struct cal cal_t;

/* Loads the zone named tz ("UTC", "Europe/Paris", "America/Sao_Paulo", ...;
 * an IANA name, i.e. a path under the zoneinfo directory without "." or ".."
 * components). "UTC" and "Etc/UTC" work even when tzdata is not installed.
 * Returns a new calendar owned by the caller (free with cal_destroy), or NULL
 * with errno set (ENOENT unknown zone, EINVAL bad name or not a usable TZif
 * file, else the errno of open or read) and, when err is not NULL, a
 * one-line reason in err (at most errcap bytes, NUL-terminated). Reads
 * $TZDIR with getenv: do not call while another thread changes the
 * environment. */
cal_t *cal_new(const char *tz, char *err, size_t errcap);

/* Frees *c and sets *c to NULL; does nothing if c or *c is NULL. */
void cal_destroy(cal_t **c);

/* Unix ns of the start of the period of kind p holding the instant t_ns
 * (see above for the definition); start <= t_ns always. */
int64_t cal_start(const cal_t *c, cal_period_t p, int64_t t_ns);

/* Unix ns of the start of the following period, i.e. the end (exclusive) of
 * the period holding t_ns: t_ns < next, and cal_start(c, p, next) == next. */
int64_t cal_next(const cal_t *c, cal_period_t p, int64_t t_ns);

/* A stable number naming the period holding t_ns, increasing with time:
 * yyyymmdd for a day (20261122), ISO year * 100 + ISO week for a week
 * (202647; 2027-01-01 is in 202653), yyyymm for a month (202611). */
int64_t cal_id(const cal_t *c, cal_period_t p, int64_t t_ns);

/* Local broken-down time of t_ns into *out: every standard field (tm_wday
 * 0 = Sunday, tm_yday 0-based, tm_isdst 0 or 1) and, where the C library has
 * them (glibc with _DEFAULT_SOURCE or _GNU_SOURCE), tm_gmtoff and tm_zone;
 * tm_zone points into c and is valid until cal_destroy. Seconds are whole
 * (the fraction of t_ns is dropped, rounding toward the past). The local
 * date may differ from the period's in the repeated hour described above.
 * Returns 0 (-1 with EOVERFLOW only if the year does not fit an int). */
int cal_civil(const cal_t *c, int64_t t_ns, struct tm *out);

/* The zone name given to cal_new; owned by c. */
const char *cal_zone(const cal_t *c);

/* Results that would not fit int64 nanoseconds (past 2262-04-11) saturate to
 * INT64_MAX (INT64_MIN for the far past).
 *
 * Cost and threads. Each cal_t keeps the last period computed per kind, so a
 * call for an instant in that period is a few loads and two comparisons
 * (about 3 ns); any other instant recomputes it and replaces the cached one
 * (15 ns in UTC, 50-80 ns within the TZif table, about 350 ns under the
 * footer's daylight-saving rule).
 * The cache is a sequence lock of C11 atomics: all the functions above,
 * except cal_destroy, may be called on the same cal_t from several threads at
 * once without a lock; readers never wait, and a writer that loses a race
 * just leaves the cache to the other one. Threads working on different
 * periods of the same kind take the slow path in turn; give each its own
 * cal_t if that matters. */

#endif

/* statsd: parser for one StatsD / DogStatsD line, as the collector receives
 * them (docs DESIGN.md section 2). It validates the whole line and hands
 * back spans into the caller's buffer: no allocation, no global state, no
 * locale-dependent call on the common path, one pass over the bytes. */
#ifndef TOKMON_STATSD_H
#define TOKMON_STATSD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "span.h"

#define STATSD_MAX_LINE   8192 /* bytes, after an optional trailing '\r' */
#define STATSD_MAX_NAME   256  /* bytes of the name once tag syntax is removed */
#define STATSD_MAX_TAGS   32   /* all tag styles of one line together */
#define STATSD_MAX_VALUES 64   /* packed values, name:1:2:3|d */
#define STATSD_MAX_NUMBER 400  /* bytes of one number; "%f" of DBL_MAX is 316 */

/*
 * Grammar (one line, no '\n'; one trailing '\r' is ignored):
 *
 *   name[tags]:value[:value...]|type[|@rate][|#tag,...][|T<unix>][|c:<id>][|e:<x>][|<other>]
 *
 *   type     c (counter), g (gauge), ms (timer, milliseconds), h (histogram),
 *            d (distribution), s (set). Case-sensitive.
 *   value    decimal number: [+-] digits [. digits] [(e|E) [+-] digits], or
 *            [+-] . digits [...], at most STATSD_MAX_NUMBER bytes. No hex, inf,
 *            nan, blanks; the value must be finite and in range: what
 *            strtod flags ERANGE is rejected (1e400, 1e-400, and with glibc
 *            any subnormal such as 1e-310). The result is the correctly
 *            rounded double, bit for bit what strtod returns.
 *            Up to STATSD_MAX_VALUES values separated by ':' for every
 *            numeric type (DogStatsD 1.1). Negative counters are accepted;
 *            the caller decides what they mean.
 *   set      name:member|s : the member is everything between the first ':'
 *            and the next '|', ':' included; sets are never packed.
 *   @rate    0 < rate <= 1, any type; kept as sent, the caller applies it.
 *   |#tags   DogStatsD: k:v,k2:v2,flag. The key ends at the first ':', the
 *            value may contain ':'.
 *   |T<unix> DogStatsD timestamp in seconds: digits only, fits int64.
 *   |c:<id>  DogStatsD container id, kept in `container`.
 *   |e:<x>   DogStatsD external data, ignored.
 *   other    a section after the type that starts with any other byte, or
 *            an empty section, is ignored (future extensions). '@' and 'T'
 *            may appear once each; '#' sections are merged.
 *
 * Tags in the name (removed from `name`, merged with |# tags, in the order
 * they appear; key and value are separated by '='):
 *   InfluxDB  name,k=v,k2=v2:1|c       (from the first ',' to the ':')
 *   Librato   name#k=v,k2=v2:1|c       (from the first '#' to the ':')
 *   SignalFX  name[k=v,k2=v2]:1|c  or  my.[k=v]metric:1|c -> "my.metric"
 *             A bracket group must be closed before the ':', may not nest,
 *             and may appear more than once; it must come before a ',' or
 *             '#' tag list (inside one, '[' is an ordinary byte).
 * In every style a tag without separator is a tag without value
 * (value.len == 0), empty elements (a,,b  or  a trailing ',') are skipped,
 * an empty key is an error. Keys may not contain blanks; keys and values
 * may not contain control bytes or invalid UTF-8.
 *
 * Name: at least one byte, at most STATSD_MAX_NAME, valid UTF-8, no control
 * byte, no blank, no ':', '|', or ']' outside a bracket group.
 *
 * Gauge signs (docs: "Gauge deltas"). Clients disagree on what a signed
 * gauge means: Etsy StatsD, statsd_exporter and python3-statsd send "+3" and
 * "-2" as changes to the current value (python3-statsd sends an absolute
 * negative value as "x:0|g" then "x:-5|g"), while DogStatsD clients such as
 * hot-shots send "x:-3|g|#..." meaning the value is -3. The rule is:
 *   STATSD_GAUGE_DELTA     a leading '+' or '-' makes the value a delta.
 *   STATSD_GAUGE_ABSOLUTE  the sign belongs to an absolute value; never a delta.
 *   STATSD_GAUGE_AUTO      (collector default) '+' is always a delta; '-' is
 *                          a delta unless the line uses a DogStatsD extension
 *                          (|#, |T, |c:, |e:), in which case it is absolute.
 * A delta carries its sign in values[] ("-2" -> delta, -2.0). In a packed
 * gauge every value must be of the same kind (all deltas or none), otherwise
 * the line is rejected with STATSD_ERR_VALUE.
 */

typedef enum {
    STATSD_COUNTER,
    STATSD_GAUGE,
    STATSD_TIMER, /* milliseconds */
    STATSD_HISTOGRAM,
    STATSD_DISTRIBUTION,
    STATSD_SET,
} statsd_type_t;

typedef enum {
    STATSD_GAUGE_AUTO,
    STATSD_GAUGE_DELTA,
    STATSD_GAUGE_ABSOLUTE,
} statsd_gauge_sign_t;

/* value.len == 0 (p may be non-NULL) for a tag without value. */
typedef struct {
    span_t key;
    span_t value;
} statsd_tag_t;

typedef struct {
    /* Metric name with the tag syntax removed; never empty. Points into the
     * line, except when a SignalFX bracket group split it in two (my.[k=v]x):
     * then it points at namebuf below. Copy the struct with statsd_line_copy,
     * not by assignment. */
    span_t name;
    statsd_type_t type;
    size_t nvalues;                   /* numeric types: 1..STATSD_MAX_VALUES; sets: 0 */
    double values[STATSD_MAX_VALUES]; /* finite only */
    span_t member;                    /* STATSD_SET: the member string as sent */
    bool delta;                       /* gauges only: values are relative */
    double rate;                      /* 1.0 when absent; 0 < rate <= 1 */
    size_t ntags;
    statsd_tag_t tags[STATSD_MAX_TAGS];
    bool has_ts;
    int64_t ts;                       /* DogStatsD |T<unix seconds> */
    bool dogstatsd;                   /* the line used |#, |T, |c: or |e: (or is _e / _sc) */
    span_t container;                 /* DogStatsD |c:<id>; SPAN_NULL when absent */
    char namebuf[STATSD_MAX_NAME];    /* storage for a name split by [tags] */
} statsd_line_t;

typedef enum {
    STATSD_OK = 0,
    STATSD_EVENT,           /* "_e{...": a DogStatsD event: counted and dropped by the caller, not an error */
    STATSD_SERVICE_CHECK,   /* "_sc|...": likewise */
    STATSD_ERR_EMPTY,       /* empty or whitespace-only line */
    STATSD_ERR_NAME,        /* missing/empty/too long/invalid name (control bytes, blanks, invalid UTF-8...) */
    STATSD_ERR_VALUE,       /* missing value (no ':'), not a number, NaN/Inf, hex, out of range,
                               empty packed value, empty or invalid set member, mixed packed gauge */
    STATSD_ERR_TYPE,        /* missing or unknown type */
    STATSD_ERR_RATE,        /* empty, unparsable, <= 0, > 1, repeated */
    STATSD_ERR_TAGS,        /* malformed tag section, or more than STATSD_MAX_TAGS */
    STATSD_ERR_TOO_MANY_VALUES, /* more than STATSD_MAX_VALUES packed values */
    STATSD_ERR_TIMESTAMP,   /* |T not a non-negative integer fitting int64, or repeated */
    STATSD_ERR_TOO_LONG,    /* longer than STATSD_MAX_LINE */
    STATSD_RESULT_COUNT     /* number of results, to size counter arrays; never returned */
} statsd_result_t;

/* Parses one line of len bytes (no trailing '\n'; one trailing '\r' is
 * tolerated). line need not be NUL-terminated and may be NULL when len is 0.
 * Never allocates; the spans in *out point into line (or into out->namebuf)
 * and are valid as long as both are. Fills *out completely on STATSD_OK;
 * on STATSD_EVENT and STATSD_SERVICE_CHECK only `dogstatsd` is meaningful;
 * on an error *out holds no meaningful data. Returns the first problem met
 * from left to right, with two exceptions: the type is checked before the
 * values, as their syntax depends on it, and a packed gauge mixing deltas
 * and absolute values is reported last, as that depends on the sections.
 * Reentrant: no global state, so any number of threads may parse at once
 * into distinct *out. The rare slow path for numbers uses strtod, so
 * LC_NUMERIC must stay "C" (never call setlocale(LC_NUMERIC, ...) in the
 * daemon). */
statsd_result_t statsd_parse(const char *line, size_t len, statsd_gauge_sign_t sign_rule,
                             statsd_line_t *out);

/* Copies a parsed line, re-pointing name at dst->namebuf when it pointed at
 * src->namebuf. Other spans still point into the original line. */
void statsd_line_copy(statsd_line_t *dst, const statsd_line_t *src);

/* A short snake_case reason for counters and logs ("ok", "bad_value", ...);
 * the error names are those of collectd/reason.h ("line_too_long" for
 * STATSD_ERR_TOO_LONG). A static string, never NULL ("unknown" for an
 * out-of-range value). */
const char *statsd_result_name(statsd_result_t r);

#endif

/* reason: why the collector refused a record. Each reason is a label value of
 * tokmon_ingest_rejected_total{reason}, so the names are part of the
 * interface: add new ones at the end, never rename. */
#ifndef TOKMON_REASON_H
#define TOKMON_REASON_H

#define REASONS(X)                                                                   \
    X(EMPTY, "empty")                   /* an empty datagram */                      \
    X(LINE_TOO_LONG, "line_too_long")   /* a line or TCP block over max_line */      \
    X(BAD_NAME, "bad_name")             /* StatsD: missing or invalid name */        \
    X(BAD_VALUE, "bad_value")           /* a number that is not one, NaN, Inf, negative where it may not be */ \
    X(BAD_TYPE, "bad_type")             /* StatsD: missing or unknown type */        \
    X(BAD_RATE, "bad_rate")             /* StatsD: sample rate not in (0, 1] */      \
    X(BAD_TAGS, "bad_tags")             /* malformed tags, or too many */            \
    X(TOO_MANY_VALUES, "too_many_values") /* StatsD: packed values beyond the limit */ \
    X(BAD_TIMESTAMP, "bad_timestamp")   /* ts not a time */                          \
    X(BAD_JSON, "bad_json")             /* not one JSON object */                    \
    X(BAD_MSGPACK, "bad_msgpack")       /* not a msgpack map */                      \
    X(MISSING_FIELD, "missing_field")   /* provider or model absent */               \
    X(BAD_FIELD, "bad_field")           /* wrong type, bad value, duplicate, too long */ \
    X(BAD_UTF8, "bad_utf8")             /* a string that is not UTF-8 */             \
    X(BAD_TOKENS, "bad_tokens")         /* token counts that contradict each other */ \
    X(TOKEN_OVERFLOW, "token_overflow") /* a count beyond 2^40 */                    \
    X(COST_OVERFLOW, "cost_overflow")   /* a cost beyond int64 nano-dollars */       \
    X(UNSIGNED, "unsigned")             /* auth = required and no |sig line */       \
    X(BAD_SIGNATURE, "bad_signature")   /* a |sig line that does not verify */       \
    X(UNKNOWN_KEY, "unknown_key")       /* a key id not in auth_keys */              \
    X(STALE, "stale")                   /* signed outside the allowed clock skew */  \
    X(REPLAY, "replay")                 /* a signature seen before */                \
    X(BAD_SIG_LINE, "bad_sig_line")     /* a malformed |sig line */

#define REASON_ENUM(e, n) REASON_##e,
typedef enum { REASON_NONE = 0, REASONS(REASON_ENUM) REASON_COUNT } reason_t;
#undef REASON_ENUM

const char *reason_name(reason_t r);

#endif

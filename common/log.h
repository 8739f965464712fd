/* log: one line per event on stderr, as logfmt (key=value) or JSON lines,
 * each carrying the time, level, daemon and instance. Also the rate-limited
 * "complain" helper that daemons use for run-time trouble (bad input, a flaky
 * peer): the first occurrence is logged, repeats are counted and logged with
 * a growing interval, and recovery is logged once. Only daemons and tools
 * call these; library code in common/ reports errors to its caller instead. */
#ifndef TOKMON_LOG_H
#define TOKMON_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG } log_level_t;
typedef enum { LOG_FMT_KV, LOG_FMT_JSON } log_format_t;

/* Sets the process-wide identity and format. daemon and instance are copied.
 * Not thread-safe against concurrent log_msg calls; call it at start and on
 * reload from the main thread. */
void log_setup(const char *daemon, const char *instance, log_format_t fmt, log_level_t level);
void log_set_level(log_level_t level);
bool log_enabled(log_level_t level);

/* Writes one line: msg is the human message; kvfmt formats further fields as
 * logfmt ("key=value key2=value2"), where any value that may hold spaces,
 * quotes or bytes outside printable ASCII must be produced with log_quote().
 * kvfmt may be NULL. One write(2) per line, so lines from threads do not mix. */
void log_msg(log_level_t level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(msg, ...) log_msg(LOG_LVL_ERROR, msg, __VA_ARGS__)
#define log_warn(msg, ...)  log_msg(LOG_LVL_WARN, msg, __VA_ARGS__)
#define log_info(msg, ...)  log_msg(LOG_LVL_INFO, msg, __VA_ARGS__)
#define log_debug(msg, ...) log_msg(LOG_LVL_DEBUG, msg, __VA_ARGS__)

/* Writes s[0..len) as a logfmt quoted value ("..." with \" \\ \n \t and \xNN
 * for other non-printable bytes) into out, truncating to fit cap (adding "..."
 * inside the quotes when truncated). Returns out. */
char *log_quote(char *out, size_t cap, const void *s, size_t len);

/* Rate-limited complaints for one recurring condition. Zero-initialise. */
typedef struct {
    int64_t next_ns;      /* earliest time of the next line */
    int64_t interval_ns;  /* current back-off; doubles up to the maximum */
    uint64_t suppressed;  /* occurrences not logged since the last line */
    bool active;          /* the condition is ongoing */
} log_complain_t;

/* Records one occurrence at now_ns (monotonic); logs it (with
 * suppressed=N) when the back-off allows. The interval starts at 1 s and
 * doubles up to 5 minutes. Returns true when a line was written. */
bool log_complain(log_complain_t *c, int64_t now_ns, log_level_t level, const char *msg,
                  const char *kvfmt, ...) __attribute__((format(printf, 5, 6)));
/* Marks the condition over: logs msg once (at info) if it was active, and
 * resets the back-off. */
void log_release(log_complain_t *c, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

const char *log_level_name(log_level_t level);

/* Logs every series of a stage's counters at info, one line each (what a
 * daemon does on SIGUSR1). */
struct stats;
void log_stats(const struct stats *st);

#endif

/* win: a sliding record of usage in per-minute buckets, kept sparse (only
 * minutes with usage take room), for quota windows ("the last 5 hours"),
 * budget burn rates ("the last hour") and the usage and top queries. A
 * million idle users cost 16 bytes each; an active minute 24 more. */
#ifndef TOKMON_WIN_H
#define TOKMON_WIN_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define WIN_MINUTE_NS 60000000000LL

typedef struct {
    uint32_t minute;   /* unix minutes */
    uint32_t requests;
    uint64_t tokens;
    int64_t nusd;
} win_bucket_t;

typedef struct {
    win_bucket_t *b; /* ascending by minute */
    uint32_t n, cap;
} win_t;

typedef struct {
    uint64_t requests, tokens;
    int64_t nusd;
} win_sum_t;

/* Adds usage at instant t (unix ns) to its minute. Minutes arrive mostly in
 * order; an older one is inserted in place. */
void win_add(win_t *w, int64_t t, uint32_t requests, uint64_t tokens, int64_t nusd);

/* Drops the minutes that end at or before t. */
void win_trim(win_t *w, int64_t t);

/* Sums the minutes that start in [from, to). */
void win_sum(const win_t *w, int64_t from, int64_t to, win_sum_t *out);

/* The minutes of the window of length len (whole minutes) that holds t: the
 * minute of t and the len/60s - 1 before it. Returns its first instant. */
int64_t win_start(int64_t t, int64_t len);

/* When the oldest minute still counted at t leaves a window of length len:
 * the next instant the window's sum can fall without new usage. 0 when
 * empty. */
int64_t win_next_expiry(const win_t *w, int64_t t, int64_t len);

/* Durable state: the buckets as one flat msgpack array [minute, requests,
 * tokens, nusd, ...]; win_load replaces w's buckets and returns 0, or -1 on
 * a malformed array (w left empty). */
void win_save(const win_t *w, msgpack_packer *pk);
int win_load(win_t *w, const msgpack_object *o);

void win_free(win_t *w);
size_t win_memory(const win_t *w);

/* a + b, saturating at the int64 bounds. Nano-dollar sums go through it: a
 * record may carry up to INT64_MAX, and a sum must not wrap (or, signed,
 * be undefined). */
static inline int64_t win_sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

#endif

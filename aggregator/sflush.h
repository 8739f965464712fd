/* sflush: StatsD flush semantics for tokmon-aggregator. Generic samples from
 * the bus topic `metric` are assigned, by their own timestamp, to intervals
 * aligned on multiples of interval_ns since the epoch, aggregated per series
 * (name, type, tag set) and, when an interval closes, emitted as one
 * msg_flush_t per series (topic `metric.flush`): counters summed with sample
 * rates applied, gauges with deltas, timers/histograms/distributions as
 * count, sum, min, max and quantiles, sets as unique counts. Late samples
 * amend a closed interval for a while and it is sent again with a higher rev.
 *
 * Time is the caller's: sflush_advance(watermark) closes, re-sends and
 * forgets intervals; nothing here reads a clock, so the same samples and
 * watermarks always give the same records in the same order. The whole state
 * saves to one msgpack value and loads back exactly (sflush_save/load).
 *
 * Thread-safety: none; one instance belongs to one loop. Distinct instances
 * are independent. */
#ifndef TOKMON_SFLUSH_H
#define TOKMON_SFLUSH_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "msg.h"

typedef struct sflush sflush_t;

typedef struct {
    /* Interval length (> 0). Interval k is [k * interval_ns, (k+1) * interval_ns). */
    int64_t interval_ns;
    /* An interval closes (is emitted) once the watermark >= its end + close_delay_ns. */
    int64_t close_delay_ns;
    /* A closed interval is kept until the watermark >= its end + lateness_ns;
     * a sample for a kept interval amends it (sent again with rev + 1); a
     * sample for an interval closed and no longer kept is dropped as late. */
    int64_t lateness_ns;
    /* Samples with ts >= watermark + future_ns are dropped (0: no limit).
     * Bounds the intervals a skewed clock can open ahead. */
    int64_t future_ns;
    /* Distinct series (name, type, tag set) held at once (> 0); samples of
     * new series beyond it are dropped. */
    size_t max_series;
    /* Distinct members a set series records per interval (> 0); beyond it the
     * record says capped and its value is a lower bound. */
    size_t max_set_members;
    /* A series that received no sample for this many intervals (>= 1) is
     * forgotten, gauges included; until then a gauge keeps its value and is
     * emitted at every interval close. */
    uint32_t idle_intervals;
    /* Called once per record from sflush_advance(); f and its strings are
     * valid during the call only. Must not call back into this sflush_t. */
    void (*emit)(void *arg, const msg_flush_t *f);
    void *arg;
} sflush_opts_t;

/* The stage's own counters (monotonic, except series_live). Not saved. */
typedef struct {
    uint64_t samples;          /* every sample given to sflush_sample */
    uint64_t invalid;          /* refused: empty or > MSG_MAX_STR name/tag/member,
                                  > MSG_MAX_TAGS tags, bad type, rate not in (0, 1],
                                  value not finite, ts < 0 or out of range */
    uint64_t late_dropped;     /* for an interval closed and no longer kept */
    uint64_t future_dropped;   /* ts beyond watermark + future_ns */
    uint64_t series_dropped;   /* of a new series beyond max_series */
    uint64_t set_capped;       /* set members not recorded: max_set_members */
    uint64_t late_gauge;       /* gauge samples for closed intervals: applied
                                  to the live value only */
    uint64_t intervals_closed; /* intervals closed that emitted records */
    uint64_t records_emitted;  /* every record, re-sent ones included */
    uint64_t amended_emitted;  /* records re-sent for a closed interval (rev > 0) */
    uint64_t series_forgotten; /* series dropped after idle_intervals */
    uint64_t series_live;      /* series held now */
} sflush_counters_t;

/* A new, empty aggregator owned by the caller (sflush_destroy). o is copied.
 * Returns NULL with errno EINVAL when an option is out of range or emit is
 * NULL. */
sflush_t *sflush_new(const sflush_opts_t *o);

/* Frees *f and sets it to NULL; does nothing when f or *f is NULL. */
void sflush_destroy(sflush_t **f);

/* Adds one sample (borrowed) to the interval of s->ts. Gauges: an absolute
 * value sets, a delta adds, in arrival order, to the live value. Counters add
 * value / rate. ms/h/d: count += 1 / rate, sum += value / rate, min, max,
 * and the value (unweighted) into a quantile sketch. Sets record distinct
 * members (bytes compared, not only hashes). Bad, late or capped samples are
 * counted (sflush_counters) and dropped. Allocates only for a new series, a
 * series' first sample in an interval, and amortised growth of set and
 * sketch storage. */
void sflush_sample(sflush_t *f, const msg_sample_t *s);

/* Moves the watermark (unix ns; a lower value than before is ignored) and
 * emits, in this order: records of kept intervals amended since they were
 * last sent (only the series that changed, with the interval's rev + 1);
 * every interval whose end + close_delay the watermark reached, oldest first,
 * one record per series with samples in it plus every live gauge (rev 0);
 * then forgets expired intervals and idle series. Within an interval records
 * come in series creation order. */
void sflush_advance(sflush_t *f, int64_t watermark_ns);

const sflush_counters_t *sflush_counters(const sflush_t *f);

/* Approximate heap bytes held (series, intervals, sketches, set members,
 * hash table); O(series). */
size_t sflush_memory(const sflush_t *f);

/* Writes the whole state (watermark, last closed interval, open and kept
 * intervals with their revs, every series with its gauge value and interval
 * data: sums, sketches, set members) as ONE msgpack value. Deterministic.
 * Returns 0. */
int sflush_save(const sflush_t *f, msgpack_packer *pk);

/* Replaces f's state by the one saved in o (borrowed). Strict: any type,
 * shape or invariant error (another interval_ns included) returns -1 with a
 * reason in err (cap bytes) and leaves f empty, as new. save, load and going
 * on emit exactly what an uninterrupted run would. Counters are not restored
 * except series_live. */
int sflush_load(sflush_t *f, const msgpack_object *o, char *err, size_t cap);

#endif

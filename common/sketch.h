/* sketch: a mergeable quantile sketch with bounded relative error (DDSketch,
 * Masson et al., VLDB 2019), for the aggregator's latency and time-to-first-
 * token distributions in its minute/hour/day rollups. Sketches merge exactly
 * (bin for bin, in any order and grouping) and travel on the bus as the
 * compact, deterministic blob described at sketch_encode().
 *
 * A positive value v goes to bin i = ceil(log_gamma(v)), gamma = (1+a)/(1-a)
 * for the relative accuracy a, and a quantile answers with (1-a)*gamma^i, the
 * point of bin i within a of every value in it. (Internally gamma is built
 * from a*(1 - 2^-20), a hair under a, so that rounding in log() and exp() can
 * never carry an answer past a.) Zeros are counted apart; count, sum, min and
 * max are tracked exactly (sum as a double, see sketch_sum()).
 *
 * Bins are kept sparse: a sorted array of (index, count), 12 bytes a bin,
 * grown on demand, so memory follows the number of distinct bins touched.
 * At most SKETCH_MAX_BINS bins: when one more is needed the two LOWEST bins
 * are merged (the lower into the upper). High quantiles keep the accuracy a;
 * quantiles whose rank falls in the lowest bin then only have an upper bound
 * (the answer can be far above the true value); min stays exact. At a = 0.01
 * 2048 bins span a ratio of 1e17, so microsecond latencies (1 us .. 1e12 us
 * = 1382 bins) never collapse; at a = 0.001 they can.
 *
 * Thread-safety: none inside a sketch. Distinct sketches may be used from
 * distinct threads; const functions may run concurrently on one sketch while
 * nothing modifies it. */
#ifndef TOKMON_SKETCH_H
#define TOKMON_SKETCH_H

#include <stddef.h>
#include <stdint.h>

#define SKETCH_REL_ACC_DEFAULT 0.01
#define SKETCH_REL_ACC_MIN 1e-4
#define SKETCH_REL_ACC_MAX 0.5
/* Bins held at most; the lowest collapse beyond (see above). */
#define SKETCH_MAX_BINS 2048
/* The encoding's version byte. */
#define SKETCH_VERSION 1
/* An upper bound on sketch_encoded_size() of any sketch. */
#define SKETCH_ENCODED_MAX (64 + 15 * SKETCH_MAX_BINS)

typedef struct sketch sketch_t;

/* A new empty sketch with relative accuracy rel_acc, in [SKETCH_REL_ACC_MIN,
 * SKETCH_REL_ACC_MAX], or 0 for SKETCH_REL_ACC_DEFAULT. Owned by the caller:
 * free with sketch_destroy(). Returns NULL with errno EINVAL for any other
 * rel_acc (NaN included). Holds no bins until the first positive value. */
sketch_t *sketch_new(double rel_acc);

/* Frees *s and sets *s to NULL; does nothing if s or *s is NULL. */
void sketch_destroy(sketch_t **s);

/* Empties s (count, sum, min, max, zeros, bins and the rejected count) and
 * frees its bins, so it is back to the size of a new sketch; the accuracy
 * stays. */
void sketch_reset(sketch_t *s);

/* Adds the value v once, or n times (n == 0: nothing). v must be finite and
 * >= 0 (-0 is 0); NaN, +-Inf and negative values are ignored and counted (n
 * of them) in sketch_rejected(), as is an add that would overflow the 64-bit
 * count. Never fails otherwise (allocation failure aborts). */
void sketch_add(sketch_t *s, double v);
void sketch_add_n(sketch_t *s, double v, uint64_t n);

/* Adds everything in src to dst (src is borrowed, unchanged; src == dst
 * doubles dst). Exact: the bins, count, zero count, min, max and rejected
 * count of the result are those of one sketch fed every value of both, in
 * any order of adds and merges, collapsed bins included (see sketch_sum()
 * for the sum). Returns 0, or -1 with dst unchanged and errno EINVAL when
 * the accuracies differ (compared exactly) or EOVERFLOW when the count
 * would pass 2^64-1. */
int sketch_merge(sketch_t *dst, const sketch_t *src);

/* The value at rank floor(q * (count - 1)) (0-based, in ascending order) to
 * within the relative accuracy: |answer - x| <= rel_acc * x for the true
 * value x (exactly 0 for a zero), unless that rank falls in a collapsed
 * lowest bin. q == 0 gives the exact min, q == 1 the exact max; answers are
 * clamped to [min, max] and non-decreasing in q. For subnormal values (below
 * 2.2e-308) the bound holds only up to the spacing of subnormals. Returns NaN
 * when s is empty or q is not in [0, 1]. O(bins). */
double sketch_quantile(const sketch_t *s, double q);

/* Accessors, O(1). count: values added (zeros included, rejected ones not).
 * sum: their sum, a double: exact (so independent of the order of adds and
 * merges) while the values are integers (microseconds) and the total stays
 * under 2^53; otherwise it carries the rounding of its order of additions.
 * 0 when empty, +Inf past DBL_MAX. min, max: exact; NaN when empty. */
uint64_t sketch_count(const sketch_t *s);
double sketch_sum(const sketch_t *s);
double sketch_min(const sketch_t *s);
double sketch_max(const sketch_t *s);
/* Values refused by sketch_add/sketch_add_n (saturates at 2^64-1); merged
 * and encoded with the sketch. */
uint64_t sketch_rejected(const sketch_t *s);
/* The accuracy as given to sketch_new() (the default filled in). */
double sketch_rel_acc(const sketch_t *s);
/* Bins in use (the zero count not included), at most SKETCH_MAX_BINS. */
size_t sketch_bins(const sketch_t *s);

/* Bytes held by s, its struct and bin arrays (malloc's own overhead not
 * counted), for the aggregator's memory accounting. */
size_t sketch_memory(const sketch_t *s);

/* The exact size of sketch_encode()'s output, <= SKETCH_ENCODED_MAX. O(bins). */
size_t sketch_encoded_size(const sketch_t *s);

/* Writes s to out[0..cap) and returns the bytes written, or 0 (nothing
 * written) when cap < sketch_encoded_size(s). Deterministic: sketches equal
 * field for field encode to the same bytes. Format, version 1 (varint =
 * unsigned LEB128, minimal; f64 = IEEE 754 binary64, little-endian):
 *   u8      version (1)
 *   u8      accuracy code: 1..6 = 0.01, 0.005, 0.001, 0.02, 0.05, 0.1;
 *           0 = another accuracy, as an f64 after this byte
 *   varint  count
 *   varint  rejected
 *   -- the rest only when count > 0:
 *   f64     sum, min, max
 *   varint  zero count
 *   varint  number of bins, 0..SKETCH_MAX_BINS
 *   bins, ascending by index, each: varint index step, varint count (>= 1);
 *           the first step is the index itself, zigzag-encoded; each later
 *           one the (>= 1) difference from the previous index.
 * The blob of an empty sketch is 4 bytes, of one value 33. */
size_t sketch_encode(const sketch_t *s, void *out, size_t cap);

/* Reads a blob written by sketch_encode() from p[0..n) into a new sketch,
 * owned by the caller (sketch_destroy()). Strict: it accepts only canonical
 * blobs, so encode(decode(b)) == b for every accepted b (the fuzzer checks).
 * It refuses another version, an unknown or non-canonical accuracy, varints
 * longer than needed or than 64 bits, truncation, trailing bytes, more bins
 * than SKETCH_MAX_BINS or than the bytes left could hold (checked before any
 * allocation), indices out of order or out of the range of finite doubles,
 * empty bins, counts that overflow or do not add up to the count, -0, NaN,
 * negative or infinite min or max, min > max, a sum below max, and a min or
 * max more than one bin away from the bins. Returns NULL with errno EINVAL
 * and a reason in err (truncated to errcap; err may be NULL). Thread-safe. */
sketch_t *sketch_decode(const void *p, size_t n, char *err, size_t errcap);

#endif

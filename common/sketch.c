/* sketch: DDSketch-style quantile sketch; see sketch.h. */
#include "sketch.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

struct sketch {
    double rel_acc; /* as given: what merge compares and encode writes */
    double mult;    /* 1 / ln(gamma), for the index of a value */
    uint64_t count, zero, rejected;
    double sum, min, max; /* min, max are 0 while count == 0 */
    uint32_t n, cap;      /* bins in use, bins allocated */
    /* One block: cap uint64_t counts, then cap int32_t indices (ascending in
     * [0, n)). NULL while cap == 0, so an empty sketch is the struct alone. */
    uint64_t *cnt;
};

/* The accuracy codes of the encoding; code = position + 1. */
static const double known_acc[] = { 0.01, 0.005, 0.001, 0.02, 0.05, 0.1 };
#define N_KNOWN (sizeof known_acc / sizeof known_acc[0])

/* Shrinking a by 2^-20 leaves room for the rounding of log(), the product
 * with mult, and exp(): together under 1e-12 relative at any index, against
 * a margin of at least 1e-4 * 2^-20 ~ 1e-10. */
static double inner_acc(double rel_acc) { return rel_acc * (1.0 - 0x1p-20); }

/* ln(gamma) = ln((1+a)/(1-a)) = log1p(2a / (1-a)), accurate for small a. */
static double ln_gamma(double rel_acc)
{
    double a = inner_acc(rel_acc);
    return log1p(2.0 * a / (1.0 - a));
}

static int32_t *idx_of(const sketch_t *s)
{
    return s->cnt ? (int32_t *)(void *)(s->cnt + s->cap) : NULL;
}

static int32_t index_of(double mult, double v) { return (int32_t)ceil(log(v) * mult); }

/* The representative of bin i, (1-a) * gamma^i, in one exp() (one rounding). */
static double bin_value(double rel_acc, int32_t i)
{
    return exp((double)i * ln_gamma(rel_acc) + log1p(-inner_acc(rel_acc)));
}

/* The bin indices a finite positive double can have, with a bin of slack for
 * another libm's rounding: anything outside did not come from sketch_add. */
static void index_range(double mult, int64_t *lo, int64_t *hi)
{
    *lo = (int64_t)index_of(mult, DBL_TRUE_MIN) - 1;
    *hi = (int64_t)index_of(mult, DBL_MAX) + 1;
}

static bool acc_ok(double a) { return a >= SKETCH_REL_ACC_MIN && a <= SKETCH_REL_ACC_MAX; }

static sketch_t *make(double rel_acc)
{
    sketch_t *s = xcalloc(1, sizeof *s);
    s->rel_acc = rel_acc;
    s->mult = 1.0 / ln_gamma(rel_acc);
    return s;
}

sketch_t *sketch_new(double rel_acc)
{
    if (rel_acc == 0)
        rel_acc = SKETCH_REL_ACC_DEFAULT;
    if (!acc_ok(rel_acc)) {
        errno = EINVAL;
        return NULL;
    }
    return make(rel_acc);
}

void sketch_destroy(sketch_t **s)
{
    if (!s || !*s)
        return;
    free((*s)->cnt);
    free(*s);
    *s = NULL;
}

void sketch_reset(sketch_t *s)
{
    double rel_acc = s->rel_acc, mult = s->mult;
    free(s->cnt);
    *s = (sketch_t){ .rel_acc = rel_acc, .mult = mult };
}

/* Moves the n bins into a block of cap (>= n) bins. */
static void set_cap(sketch_t *s, uint32_t cap)
{
    uint64_t *blk = xmalloc((size_t)cap * (sizeof(uint64_t) + sizeof(int32_t)));
    if (s->n) {
        memcpy(blk, s->cnt, s->n * sizeof(uint64_t));
        memcpy(blk + cap, idx_of(s), s->n * sizeof(int32_t));
    }
    free(s->cnt);
    s->cnt = blk;
    s->cap = cap;
}

/* The first position whose index is >= k (n if none), without branches on
 * the data: the bins of a latency distribution give a mispredicted branch a
 * step otherwise. */
static uint32_t lower_bound(const int32_t *a, uint32_t n, int32_t k)
{
    if (n == 0)
        return 0;
    const int32_t *b = a;
    while (n > 1) {
        uint32_t half = n / 2;
        b = b[half] < k ? b + half : b;
        n -= half;
    }
    return (uint32_t)(b - a) + (*b < k);
}

static void bin_add(sketch_t *s, int32_t k, uint64_t c)
{
    int32_t *idx = idx_of(s);
    uint32_t pos = lower_bound(idx, s->n, k);
    if (pos < s->n && idx[pos] == k) {
        s->cnt[pos] += c;
        return;
    }
    if (s->n == SKETCH_MAX_BINS) {
        /* Full: of the distinct indices, now one too many, the lowest two
         * become one bin at the upper of them. The result depends only on
         * the multiset of indices ever added (everything at or below the
         * SKETCH_MAX_BINS-th highest distinct index sits in that bin),
         * which is what keeps merges exact after a collapse. */
        if (pos == 0) { /* below the lowest bin: into it */
            s->cnt[0] += c;
        } else if (pos == 1) { /* between the lowest two: k takes bin 0 */
            idx[0] = k;
            s->cnt[0] += c;
        } else {
            s->cnt[1] += s->cnt[0];
            memmove(idx, idx + 1, (pos - 1) * sizeof *idx);
            memmove(s->cnt, s->cnt + 1, (pos - 1) * sizeof *s->cnt);
            idx[pos - 1] = k;
            s->cnt[pos - 1] = c;
        }
        return;
    }
    if (s->n == s->cap) {
        uint32_t cap = s->cap + s->cap / 2 + 4;
        set_cap(s, cap < SKETCH_MAX_BINS ? cap : SKETCH_MAX_BINS);
        idx = idx_of(s);
    }
    memmove(idx + pos + 1, idx + pos, (s->n - pos) * sizeof *idx);
    memmove(s->cnt + pos + 1, s->cnt + pos, (s->n - pos) * sizeof *s->cnt);
    idx[pos] = k;
    s->cnt[pos] = c;
    s->n++;
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

void sketch_add_n(sketch_t *s, double v, uint64_t n)
{
    if (n == 0)
        return;
    if (!(v >= 0 && v <= DBL_MAX) || n > UINT64_MAX - s->count) {
        s->rejected = sat_add(s->rejected, n);
        return;
    }
    if (v == 0) {
        v = 0; /* -0 */
        s->zero += n;
    } else {
        bin_add(s, index_of(s->mult, v), n);
        s->sum += n == 1 ? v : v * (double)n;
    }
    if (s->count == 0) {
        s->min = s->max = v;
    } else {
        s->min = v < s->min ? v : s->min;
        s->max = v > s->max ? v : s->max;
    }
    s->count += n;
}

void sketch_add(sketch_t *s, double v) { sketch_add_n(s, v, 1); }

/* dst's bins plus sn bins (scnt, sidx) into a new block, walking down from
 * the highest index so that once SKETCH_MAX_BINS bins are written, the rest
 * pile into the lowest: the same collapse as bin_add's. */
static void bins_merge(sketch_t *dst, const uint64_t *scnt, const int32_t *sidx, uint32_t sn)
{
    const int32_t *didx = idx_of(dst);
    const uint64_t *dcnt = dst->cnt;
    uint32_t dn = dst->n, u = 0;
    for (uint32_t i = 0, j = 0; i < dn || j < sn; u++) {
        if (j == sn || (i < dn && didx[i] < sidx[j]))
            i++;
        else if (i == dn || sidx[j] < didx[i])
            j++;
        else
            i++, j++;
    }
    uint32_t cap = u < SKETCH_MAX_BINS ? u : SKETCH_MAX_BINS;
    uint64_t *blk = xmalloc((size_t)cap * (sizeof(uint64_t) + sizeof(int32_t)));
    int32_t *oidx = (int32_t *)(void *)(blk + cap);
    uint32_t w = cap; /* bins still to fill, from the top */
    for (uint32_t i = dn, j = sn; i > 0 || j > 0;) {
        int32_t k;
        uint64_t c;
        if (j == 0 || (i > 0 && didx[i - 1] > sidx[j - 1])) {
            k = didx[i - 1], c = dcnt[i - 1], i--;
        } else if (i == 0 || sidx[j - 1] > didx[i - 1]) {
            k = sidx[j - 1], c = scnt[j - 1], j--;
        } else {
            k = didx[i - 1], c = dcnt[i - 1] + scnt[j - 1], i--, j--;
        }
        if (w > 0) {
            w--;
            oidx[w] = k;
            blk[w] = c;
        } else { /* below the SKETCH_MAX_BINS-th highest index */
            blk[0] += c;
        }
    }
    free(dst->cnt);
    dst->cnt = blk;
    dst->cap = dst->n = cap;
}

int sketch_merge(sketch_t *dst, const sketch_t *src)
{
    if (dst->rel_acc != src->rel_acc) {
        errno = EINVAL;
        return -1;
    }
    /* src may be dst: read it all before writing */
    uint64_t count = src->count, zero = src->zero, rejected = src->rejected;
    double sum = src->sum, mn = src->min, mx = src->max;
    if (count > UINT64_MAX - dst->count) {
        errno = EOVERFLOW;
        return -1;
    }
    dst->rejected = sat_add(dst->rejected, rejected);
    if (count == 0)
        return 0;
    if (src->n > 0) {
        if (dst->n == 0) {
            set_cap(dst, src->n);
            memcpy(dst->cnt, src->cnt, src->n * sizeof(uint64_t));
            memcpy(idx_of(dst), idx_of(src), src->n * sizeof(int32_t));
            dst->n = src->n;
        } else {
            bins_merge(dst, src->cnt, idx_of(src), src->n);
        }
    }
    if (dst->count == 0) {
        dst->min = mn;
        dst->max = mx;
    } else {
        dst->min = mn < dst->min ? mn : dst->min;
        dst->max = mx > dst->max ? mx : dst->max;
    }
    dst->count += count;
    dst->zero += zero;
    dst->sum += sum;
    return 0;
}

double sketch_quantile(const sketch_t *s, double q)
{
    if (s->count == 0 || !(q >= 0 && q <= 1))
        return NAN;
    if (q == 0)
        return s->min;
    if (q == 1)
        return s->max;
    uint64_t last = s->count - 1;
    double x = floor(q * (double)last);
    uint64_t rank = x >= (double)last ? last : (uint64_t)x;
    if (rank < s->zero)
        return 0;
    uint64_t seen = s->zero;
    assert(s->n > 0);
    const int32_t *idx = idx_of(s);
    uint32_t i = 0;
    for (; i + 1 < s->n; i++) {
        seen += s->cnt[i];
        if (rank < seen)
            break;
    }
    /* Every value of the bin lies in [min, max], so clamping only moves the
     * answer closer (and turns an exp() overflow at the top into max). */
    double v = bin_value(s->rel_acc, idx[i]);
    return v < s->min ? s->min : v > s->max ? s->max : v;
}

uint64_t sketch_count(const sketch_t *s) { return s->count; }
double sketch_sum(const sketch_t *s) { return s->sum; }
double sketch_min(const sketch_t *s) { return s->count ? s->min : NAN; }
double sketch_max(const sketch_t *s) { return s->count ? s->max : NAN; }
uint64_t sketch_rejected(const sketch_t *s) { return s->rejected; }
double sketch_rel_acc(const sketch_t *s) { return s->rel_acc; }
size_t sketch_bins(const sketch_t *s) { return s->n; }

size_t sketch_memory(const sketch_t *s)
{
    return sizeof *s + (size_t)s->cap * (sizeof(uint64_t) + sizeof(int32_t));
}

/* ---- encoding --------------------------------------------------------------- */

static int acc_code(double a)
{
    for (size_t i = 0; i < N_KNOWN; i++)
        if (known_acc[i] == a)
            return (int)i + 1;
    return 0;
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t u) { return (int64_t)(u >> 1) ^ -(int64_t)(u & 1); }

size_t sketch_encoded_size(const sketch_t *s)
{
    size_t n = 2 + (acc_code(s->rel_acc) ? 0 : 8) + varint_len(s->count) + varint_len(s->rejected);
    if (s->count == 0)
        return n;
    n += 24 + varint_len(s->zero) + varint_len(s->n);
    const int32_t *idx = idx_of(s);
    for (uint32_t i = 0; i < s->n; i++) {
        uint64_t step = i ? (uint64_t)((int64_t)idx[i] - idx[i - 1]) : zigzag(idx[0]);
        n += varint_len(step) + varint_len(s->cnt[i]);
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static uint8_t *put_f64(uint8_t *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(u >> (8 * i));
    return p;
}

size_t sketch_encode(const sketch_t *s, void *out, size_t cap)
{
    size_t size = sketch_encoded_size(s);
    if (cap < size)
        return 0;
    uint8_t *p = out;
    *p++ = SKETCH_VERSION;
    int code = acc_code(s->rel_acc);
    *p++ = (uint8_t)code;
    if (!code)
        p = put_f64(p, s->rel_acc);
    p = put_varint(p, s->count);
    p = put_varint(p, s->rejected);
    if (s->count > 0) {
        p = put_f64(p, s->sum);
        p = put_f64(p, s->min);
        p = put_f64(p, s->max);
        p = put_varint(p, s->zero);
        p = put_varint(p, s->n);
        const int32_t *idx = idx_of(s);
        for (uint32_t i = 0; i < s->n; i++) {
            p = put_varint(p, i ? (uint64_t)((int64_t)idx[i] - idx[i - 1]) : zigzag(idx[0]));
            p = put_varint(p, s->cnt[i]);
        }
    }
    assert((size_t)(p - (uint8_t *)out) == size);
    return size;
}

/* ---- decoding --------------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t n, off;
    char *err;
    size_t errcap;
} rd_t;

__attribute__((format(printf, 2, 3))) static int rd_fail(rd_t *r, const char *fmt, ...)
{
    if (r->err && r->errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errcap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int rd_varint(rd_t *r, const char *what, uint64_t *out)
{
    size_t start = r->off;
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        if (r->off >= r->n)
            return rd_fail(r, "truncated in %s at byte %zu", what, r->off);
        uint8_t b = r->p[r->off++];
        if (shift == 63 && b > 1)
            return rd_fail(r, "%s at byte %zu: varint over 64 bits", what, start);
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift > 0)
                return rd_fail(r, "%s at byte %zu: varint longer than needed", what, start);
            *out = v;
            return 0;
        }
    }
}

static int rd_f64(rd_t *r, const char *what, double *out)
{
    if (r->n - r->off < 8)
        return rd_fail(r, "truncated in %s at byte %zu", what, r->off);
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u |= (uint64_t)r->p[r->off + (size_t)i] << (8 * i);
    r->off += 8;
    memcpy(out, &u, sizeof *out);
    return 0;
}

/* The checks of a decoded sketch's scalars against its bins. */
static int check_shape(rd_t *r, const sketch_t *s)
{
    if (!isfinite(s->min) || s->min < 0 || signbit(s->min))
        return rd_fail(r, "bad min %g", s->min);
    if (!isfinite(s->max) || s->max < s->min || signbit(s->max))
        return rd_fail(r, "bad max %g (min %g)", s->max, s->min);
    if ((s->n > 0) != (s->max > 0))
        return rd_fail(r, "max %g %s bins", s->max, s->n ? "with" : "without");
    /* a sum of non-negative doubles rounds to no less than any of them */
    if (isnan(s->sum) || s->sum < s->max || signbit(s->sum) || (s->n == 0 && s->sum != 0))
        return rd_fail(r, "bad sum %g (max %g)", s->sum, s->max);
    if ((s->zero > 0) != (s->min == 0))
        return rd_fail(r, "min %g disagrees with zero count %llu", s->min,
                       (unsigned long long)s->zero);
    if (s->n == 0)
        return 0;
    const int32_t *idx = idx_of(s);
    int64_t top = idx[s->n - 1], low = idx[0];
    int64_t imax = index_of(s->mult, s->max);
    if (imax < top - 1 || imax > top + 1)
        return rd_fail(r, "max %g is not in the top bin %lld", s->max, (long long)top);
    if (s->zero == 0) {
        /* a full sketch may have collapsed bins below its lowest */
        int64_t imin = index_of(s->mult, s->min);
        if (imin > low + 1 || (s->n < SKETCH_MAX_BINS && imin < low - 1))
            return rd_fail(r, "min %g is not in the lowest bin %lld", s->min, (long long)low);
    }
    return 0;
}

static int decode_body(rd_t *r, sketch_t **out)
{
    if (r->n < 1)
        return rd_fail(r, "empty");
    if (r->p[0] != SKETCH_VERSION)
        return rd_fail(r, "bad version %u (want %d)", r->p[0], SKETCH_VERSION);
    if (r->n < 2)
        return rd_fail(r, "truncated in accuracy at byte 1");
    uint8_t code = r->p[1];
    r->off = 2;
    double acc;
    if (code == 0) {
        if (rd_f64(r, "accuracy", &acc) < 0)
            return -1;
        if (!acc_ok(acc))
            return rd_fail(r, "accuracy %g out of range", acc);
        if (acc_code(acc))
            return rd_fail(r, "accuracy %g written as a double, not its code", acc);
    } else if (code <= N_KNOWN) {
        acc = known_acc[code - 1];
    } else {
        return rd_fail(r, "unknown accuracy code %u", code);
    }
    sketch_t *s = make(acc);
    *out = s;
    if (rd_varint(r, "count", &s->count) < 0 || rd_varint(r, "rejected", &s->rejected) < 0)
        return -1;
    if (s->count > 0) {
        uint64_t nbins;
        if (rd_f64(r, "sum", &s->sum) < 0 || rd_f64(r, "min", &s->min) < 0 ||
            rd_f64(r, "max", &s->max) < 0 || rd_varint(r, "zero count", &s->zero) < 0 ||
            rd_varint(r, "bin count", &nbins) < 0)
            return -1;
        if (s->zero > s->count)
            return rd_fail(r, "zero count %llu over count %llu", (unsigned long long)s->zero,
                           (unsigned long long)s->count);
        if (nbins > SKETCH_MAX_BINS)
            return rd_fail(r, "%llu bins, over %d", (unsigned long long)nbins, SKETCH_MAX_BINS);
        if (nbins > (r->n - r->off) / 2)
            return rd_fail(r, "%llu bins in %zu bytes", (unsigned long long)nbins, r->n - r->off);
        if (nbins)
            set_cap(s, (uint32_t)nbins);
        int32_t *idx = idx_of(s);
        int64_t lo, hi, k = 0;
        index_range(s->mult, &lo, &hi);
        uint64_t total = s->zero;
        for (uint32_t i = 0; i < nbins; i++) {
            uint64_t step, c;
            if (rd_varint(r, "bin index", &step) < 0)
                return -1;
            if (i == 0) {
                k = unzigzag(step);
                if (k < lo || k > hi)
                    return rd_fail(r, "bin index %lld out of range", (long long)k);
            } else {
                if (step == 0)
                    return rd_fail(r, "bin %u: index not above the previous", i);
                if (step > (uint64_t)(hi - k))
                    return rd_fail(r, "bin %u: index out of range", i);
                k += (int64_t)step;
            }
            if (rd_varint(r, "bin count", &c) < 0)
                return -1;
            if (c == 0)
                return rd_fail(r, "bin %u: empty", i);
            if (c > UINT64_MAX - total)
                return rd_fail(r, "bin %u: counts overflow", i);
            total += c;
            idx[i] = (int32_t)k;
            s->cnt[i] = c;
            s->n = i + 1;
        }
        if (total != s->count)
            return rd_fail(r, "bins and zeros hold %llu, count says %llu",
                           (unsigned long long)total, (unsigned long long)s->count);
        if (check_shape(r, s) < 0)
            return -1;
    }
    if (r->off != r->n)
        return rd_fail(r, "%zu trailing bytes", r->n - r->off);
    return 0;
}

sketch_t *sketch_decode(const void *p, size_t n, char *err, size_t errcap)
{
    rd_t r = { .p = p, .n = n, .err = err, .errcap = errcap };
    sketch_t *s = NULL;
    if (err && errcap)
        err[0] = '\0';
    if (decode_body(&r, &s) < 0) {
        sketch_destroy(&s);
        errno = EINVAL;
        return NULL;
    }
    return s;
}

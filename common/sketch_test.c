/* sketch_test: tests of common/sketch. Quantiles against exact sorted arrays
 * (uniform, log-normal, bimodal, constant, heavy-tailed; 1e5 values), merge
 * exactness and associativity (checked on the blob, read back by a reader of
 * the format written here, independent of sketch.c), zeros and tiny values,
 * the bin cap, the encoding's round trip, and a decoder that refuses every
 * truncation and each kind of malformed blob. Run one test alone with
 * `sketch_test NAME` (a cmocka filter pattern, e.g. `sketch_test test_decode*`). */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sketch.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define NVALS 100000

/* ---- data ------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unif(uint64_t *st) { return (double)(splitmix(st) >> 11) * 0x1p-53; }

static double normal(uint64_t *st)
{
    double u = unif(st), v = unif(st);
    return sqrt(-2.0 * log(u > 0 ? u : 0x1p-53)) * cos(2 * M_PI * v);
}

typedef enum { D_UNIFORM, D_LOGNORMAL, D_BIMODAL, D_CONSTANT, D_PARETO, D_WIDE, D_NARROW } dist_t;
static const char *const dist_name[] = { "uniform", "lognormal", "bimodal", "constant",
                                         "pareto",  "wide",      "narrow" };

/* Latency-like values in microseconds; rounded to whole microseconds when
 * integer is set (as the aggregator receives them), which keeps sums exact. */
static double draw(dist_t d, uint64_t *st, int integer)
{
    double v = 0;
    switch (d) {
    case D_UNIFORM: v = unif(st) * 1e6; break;                     /* 0 .. 1 s */
    case D_LOGNORMAL: v = exp(log(200000.0) + normal(st)); break;  /* ~200 ms */
    case D_BIMODAL: /* cache hits ~0.5 ms and full calls ~2 s */
        v = unif(st) < 0.5 ? exp(log(500.0) + 0.3 * normal(st)) : exp(log(2e6) + 0.5 * normal(st));
        break;
    case D_CONSTANT: v = 123456.5; break;
    case D_PARETO: v = 1000.0 * pow(1.0 - unif(st), -1.0 / 1.1); break; /* alpha 1.1 */
    case D_WIDE: v = pow(10.0, unif(st) * 12.0); break;                /* 1 us .. 1e12 us */
    case D_NARROW: v = 100000.0 + 10000.0 * unif(st); break;
    }
    return integer ? floor(v) : v;
}

static double *gen(dist_t d, size_t n, uint64_t seed, int integer)
{
    double *v = malloc(n * sizeof *v);
    assert_non_null(v);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++)
        v[i] = draw(d, &st, integer);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static sketch_t *sketch_of(double acc, const double *v, size_t n)
{
    sketch_t *s = sketch_new(acc);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        sketch_add(s, v[i]);
    return s;
}

/* ---- an independent reader and writer of the blob --------------------------- */

typedef struct {
    int version, code;
    double acc;
    uint64_t count, rejected;
    double sum, min, max;
    uint64_t zero, nbins;
    uint64_t step[SKETCH_MAX_BINS + 8], cnt[SKETCH_MAX_BINS + 8]; /* raw steps */
    int64_t idx[SKETCH_MAX_BINS + 8];                            /* absolute */
    size_t tail;                                                 /* junk bytes after */
} blob_t;

static uint64_t get_varint(const uint8_t *p, size_t n, size_t *off)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        assert_true(*off < n);
        uint8_t b = p[(*off)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return v;
    }
    fail_msg("varint too long");
    return 0;
}

static double get_f64(const uint8_t *p, size_t n, size_t *off)
{
    assert_true(*off + 8 <= n);
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = u << 8 | p[*off + (size_t)i];
    *off += 8;
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static const double codes[] = { 0.01, 0.005, 0.001, 0.02, 0.05, 0.1 };

static void blob_read(const uint8_t *p, size_t n, blob_t *b)
{
    memset(b, 0, sizeof *b);
    size_t off = 0;
    assert_true(n >= 2);
    b->version = p[off++];
    b->code = p[off++];
    b->acc = b->code ? codes[b->code - 1] : get_f64(p, n, &off);
    b->count = get_varint(p, n, &off);
    b->rejected = get_varint(p, n, &off);
    if (b->count) {
        b->sum = get_f64(p, n, &off);
        b->min = get_f64(p, n, &off);
        b->max = get_f64(p, n, &off);
        b->zero = get_varint(p, n, &off);
        b->nbins = get_varint(p, n, &off);
        assert_true(b->nbins <= SKETCH_MAX_BINS);
        for (uint64_t i = 0; i < b->nbins; i++) {
            b->step[i] = get_varint(p, n, &off);
            b->cnt[i] = get_varint(p, n, &off);
            b->idx[i] = i ? b->idx[i - 1] + (int64_t)b->step[i]
                          : (int64_t)(b->step[0] >> 1) ^ -(int64_t)(b->step[0] & 1);
        }
    }
    assert_int_equal(off, n);
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    for (; v >= 0x80; v >>= 7)
        *p++ = (uint8_t)(v | 0x80);
    *p++ = (uint8_t)v;
    return p;
}

static uint8_t *put_f64(uint8_t *p, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    for (int i = 0; i < 8; i++, u >>= 8)
        *p++ = (uint8_t)u;
    return p;
}

/* Writes b's fields as they are (steps raw, nbins as declared but only the
 * bins there are), for building malformed blobs. */
static size_t blob_write(const blob_t *b, uint8_t *out)
{
    uint8_t *p = out;
    *p++ = (uint8_t)b->version;
    *p++ = (uint8_t)b->code;
    if (!b->code)
        p = put_f64(p, b->acc);
    p = put_varint(p, b->count);
    p = put_varint(p, b->rejected);
    if (b->count) {
        p = put_f64(p, b->sum);
        p = put_f64(p, b->min);
        p = put_f64(p, b->max);
        p = put_varint(p, b->zero);
        p = put_varint(p, b->nbins);
        for (uint64_t i = 0; i < b->nbins && i < 4; i++) {
            p = put_varint(p, b->step[i]);
            p = put_varint(p, b->cnt[i]);
        }
    }
    for (size_t i = 0; i < b->tail; i++)
        *p++ = 0;
    return (size_t)(p - out);
}

static uint8_t g_buf[SKETCH_ENCODED_MAX], g_buf2[SKETCH_ENCODED_MAX];
static blob_t g_b1, g_b2;

static size_t enc(const sketch_t *s, uint8_t *buf)
{
    size_t want = sketch_encoded_size(s);
    assert_true(want <= SKETCH_ENCODED_MAX);
    size_t n = sketch_encode(s, buf, SKETCH_ENCODED_MAX);
    assert_int_equal(n, want);
    return n;
}

/* a and b hold the same bins, count, zeros, min, max, rejected; and, when
 * same_sum, the same sum and so the same bytes. */
static void assert_same(const sketch_t *a, const sketch_t *b, int same_sum)
{
    size_t na = enc(a, g_buf), nb = enc(b, g_buf2);
    blob_read(g_buf, na, &g_b1);
    blob_read(g_buf2, nb, &g_b2);
    assert_int_equal(g_b1.count, g_b2.count);
    assert_int_equal(g_b1.rejected, g_b2.rejected);
    assert_int_equal(g_b1.zero, g_b2.zero);
    assert_true(g_b1.min == g_b2.min && g_b1.max == g_b2.max);
    assert_int_equal(g_b1.nbins, g_b2.nbins);
    for (uint64_t i = 0; i < g_b1.nbins; i++) {
        assert_int_equal(g_b1.idx[i], g_b2.idx[i]);
        assert_int_equal(g_b1.cnt[i], g_b2.cnt[i]);
    }
    if (same_sum) {
        assert_true(g_b1.sum == g_b2.sum);
        assert_int_equal(na, nb);
        assert_memory_equal(g_buf, g_buf2, na);
    } else {
        assert_true(fabs(g_b1.sum - g_b2.sum) <= 1e-9 * g_b1.sum);
    }
    for (int i = 0; i <= 1000; i++)
        assert_true(sketch_quantile(a, i / 1000.0) == sketch_quantile(b, i / 1000.0) ||
                    (isnan(sketch_quantile(a, 0.5)) && isnan(sketch_quantile(b, 0.5))));
}

/* ---- quantile accuracy --------------------------------------------------------- */

static const double some_q[] = { 0, 1e-5, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75,
                                 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 0.99999, 1 };

static size_t rank_of(double q, size_t n) { return q >= 1 ? n - 1 : (size_t)floor(q * (double)(n - 1)); }

/* The worst relative error over some_q and q = i/2000; also checks that
 * answers do not decrease in q. Ranks at or below skip_below are skipped (the
 * collapsed bin). */
static double worst_error(const sketch_t *s, const double *sorted, size_t n, size_t skip_below,
                          double *at_q)
{
    double worst = 0, prev = -1;
    *at_q = -1;
    for (size_t k = 0; k < ARRAY_LEN(some_q) + 2001; k++) {
        double q = k < ARRAY_LEN(some_q) ? some_q[k] : (double)(k - ARRAY_LEN(some_q)) / 2000.0;
        size_t r = rank_of(q, n);
        double got = sketch_quantile(s, q), want = sorted[r];
        if (k >= ARRAY_LEN(some_q)) {
            assert_true(got >= prev);
            prev = got;
        }
        if (q > 0 && r <= skip_below)
            continue;
        double err = want == 0 ? (got == 0 ? 0 : INFINITY) : fabs(got - want) / want;
        if (err > worst) {
            worst = err;
            *at_q = q;
        }
    }
    return worst;
}

typedef struct {
    dist_t dist;
    double acc;
} qcase_t;

static const qcase_t qcases[] = {
    { D_UNIFORM, 0.01 },   { D_LOGNORMAL, 0.01 }, { D_BIMODAL, 0.01 },   { D_CONSTANT, 0.01 },
    { D_PARETO, 0.01 },    { D_WIDE, 0.01 },      { D_UNIFORM, 0.05 },   { D_LOGNORMAL, 0.05 },
    { D_BIMODAL, 0.05 },   { D_PARETO, 0.05 },    { D_LOGNORMAL, 0.003 }, { D_CONSTANT, 0.001 },
    { D_BIMODAL, 0.002 },  { D_LOGNORMAL, 0.0123 }, { D_WIDE, 0.5 },     { D_NARROW, 1e-4 },
};

static void test_quantiles(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(qcases); c++) {
        const qcase_t *t = &qcases[c];
        double *v = gen(t->dist, NVALS, 1000 + c, 0);
        sketch_t *s = sketch_of(t->acc, v, NVALS);
        qsort(v, NVALS, sizeof *v, cmp_double);
        assert_int_equal(sketch_count(s), NVALS);
        assert_true(sketch_min(s) == v[0]);
        assert_true(sketch_max(s) == v[NVALS - 1]);
        double sum = 0;
        for (size_t i = 0; i < NVALS; i++)
            sum += v[i];
        assert_true(fabs(sketch_sum(s) - sum) <= 1e-9 * sum);
        /* no case may reach the cap, or low ranks would lose their bound */
        if (sketch_bins(s) >= SKETCH_MAX_BINS)
            fail_msg("%s at %g: collapsed", dist_name[t->dist], t->acc);
        double at_q, worst = worst_error(s, v, NVALS, 0, &at_q);
        if (worst > t->acc)
            fail_msg("%s at %g: relative error %.9g at q=%g over %g", dist_name[t->dist], t->acc,
                     worst, at_q, t->acc);
        /* and the bound is not vacuous: the error is of the order of acc */
        if (t->dist != D_CONSTANT)
            assert_true(worst > t->acc / 10);
        free(v);
        sketch_destroy(&s);
        assert_null(s);
    }
}

/* Every value in one sketch, rank for rank (small n: all ranks). */
static void check_all_ranks(sketch_t *s, double *v, size_t n, double acc)
{
    qsort(v, n, sizeof *v, cmp_double);
    for (size_t r = 0; r < n; r++) {
        double q = n > 1 ? (double)r / (double)(n - 1) : 0;
        size_t rr = rank_of(q, n);
        double got = sketch_quantile(s, q), want = v[rr];
        if (want == 0 ? got != 0 : !(fabs(got - want) <= acc * want))
            fail_msg("rank %zu: got %a want %a", rr, got, want);
    }
}

typedef struct {
    const char *name;
    double v[8];
    size_t n;
} tiny_case_t;

static const tiny_case_t tiny_cases[] = {
    { "zeros", { 0, 0, 0 }, 3 },
    { "negative zero", { -0.0, 0 }, 2 },
    { "zero and one", { 0, 1 }, 2 },
    { "tiny", { 1e-300, 2e-300, 1e-200, 1e-100 }, 4 },
    { "around DBL_MIN", { DBL_MIN, DBL_MIN * 1.5, DBL_MIN * 0.75, 1e-310 }, 4 },
    { "subnormal min only", { DBL_TRUE_MIN }, 1 },
    { "subnormal extremes", { DBL_TRUE_MIN, DBL_MAX }, 2 },
    { "all scales", { 0, 1e-300, 1e-9, 1, 1e6, 1e12, 1e300, DBL_MAX }, 8 },
    { "one", { 1 }, 1 },
    { "sub-microsecond", { 0.5, 0.25, 0.001, 1e-6 }, 4 },
};

static void test_zero_and_tiny(void **state)
{
    (void)state;
    const double accs[] = { 0.01, 1e-4, 0.5 };
    for (size_t c = 0; c < ARRAY_LEN(tiny_cases); c++) {
        for (size_t a = 0; a < ARRAY_LEN(accs); a++) {
            const tiny_case_t *t = &tiny_cases[c];
            double v[8];
            memcpy(v, t->v, sizeof v);
            sketch_t *s = sketch_of(accs[a], v, t->n);
            assert_int_equal(sketch_count(s), t->n);
            assert_int_equal(sketch_rejected(s), 0);
            check_all_ranks(s, v, t->n, accs[a]);
            assert_false(signbit(sketch_min(s)));
            /* and it survives the wire */
            size_t n = enc(s, g_buf);
            char err[128];
            sketch_t *d = sketch_decode(g_buf, n, err, sizeof err);
            if (!d)
                fail_msg("%s: %s", t->name, err);
            assert_same(s, d, 1);
            sketch_destroy(&d);
            sketch_destroy(&s);
        }
    }
}

/* Values on and a few ulps either side of bin edges, where the rounding of
 * log() decides the bin: the answer must still be within the accuracy. The
 * edges are found in long double, apart from sketch.c's arithmetic. */
static void test_bin_edges(void **state)
{
    (void)state;
    const double accs[] = { 1e-4, 0.001, 0.01, 0.0123, 0.1, 0.5 };
    for (size_t a = 0; a < ARRAY_LEN(accs); a++) {
        long double lg = logl((1.0L + accs[a]) / (1.0L - accs[a]));
        for (double e = -300; e < 300; e += 0.731) {
            long i = lroundl((long double)e * 2.302585092994045684L / lg);
            double v = (double)expl((long double)i * lg);
            for (int k = 0; k < 8; k++)
                v = nextafter(v, 0);
            for (int k = 0; k < 16; k++, v = nextafter(v, INFINITY)) {
                sketch_t *s = sketch_new(accs[a]);
                sketch_add(s, DBL_TRUE_MIN); /* so that clamping hides nothing */
                sketch_add(s, v);
                sketch_add(s, DBL_MAX);
                double got = sketch_quantile(s, 0.5);
                if (!(fabs(got - v) <= accs[a] * v))
                    fail_msg("acc %g: %a answers %a, error %.17g", accs[a], v, got,
                             fabs(got - v) / v);
                sketch_destroy(&s);
            }
        }
    }
}

/* ---- adding ----------------------------------------------------------------- */

typedef struct {
    double v;
    uint64_t n;
    uint64_t count, rejected, zero;
} add_case_t;

static const add_case_t add_cases[] = {
    { 1.0, 1, 1, 0, 0 },
    { 1.0, 0, 0, 0, 0 },
    { 0.0, 5, 5, 0, 5 },
    { -0.0, 1, 1, 0, 1 },
    { -1.0, 1, 0, 1, 0 },
    { -DBL_TRUE_MIN, 2, 0, 2, 0 },
    { NAN, 3, 0, 3, 0 },
    { INFINITY, 1, 0, 1, 0 },
    { -INFINITY, 1, 0, 1, 0 },
    { DBL_MAX, 1, 1, 0, 0 },
    { DBL_TRUE_MIN, 1, 1, 0, 0 },
    { 1e6, UINT64_MAX, UINT64_MAX, 0, 0 },
    { NAN, UINT64_MAX, 0, UINT64_MAX, 0 },
};

static void test_add_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(add_cases); c++) {
        const add_case_t *t = &add_cases[c];
        sketch_t *s = sketch_new(0);
        sketch_add_n(s, t->v, t->n);
        assert_int_equal(sketch_count(s), t->count);
        assert_int_equal(sketch_rejected(s), t->rejected);
        if (t->count == 0) {
            assert_true(isnan(sketch_quantile(s, 0.5)) && isnan(sketch_min(s)));
            assert_true(sketch_sum(s) == 0);
        } else {
            assert_true(sketch_min(s) == t->v && sketch_max(s) == t->v);
            assert_false(signbit(sketch_min(s)));
        }
        assert_int_equal(sketch_bins(s), t->count > 0 && t->zero == 0 ? 1 : 0);
        size_t n = enc(s, g_buf);
        blob_read(g_buf, n, &g_b1);
        assert_int_equal(g_b1.zero, t->zero);
        sketch_t *d = sketch_decode(g_buf, n, NULL, 0);
        assert_non_null(d);
        assert_same(s, d, 1);
        sketch_destroy(&d);
        sketch_destroy(&s);
    }
}

/* An add that would overflow the count is refused; rejected saturates. */
static void test_add_overflow(void **state)
{
    (void)state;
    sketch_t *s = sketch_new(0);
    sketch_add_n(s, 5, UINT64_MAX - 1);
    sketch_add(s, 6);
    assert_int_equal(sketch_count(s), UINT64_MAX);
    sketch_add(s, 7);
    assert_int_equal(sketch_rejected(s), 1);
    sketch_add_n(s, NAN, UINT64_MAX);
    assert_int_equal(sketch_rejected(s), UINT64_MAX);
    assert_true(sketch_max(s) == 6);
    assert_true(sketch_quantile(s, 0.999) <= 5 * 1.01);
    sketch_destroy(&s);
    sketch_destroy(&s); /* NULL: nothing */
    sketch_destroy(NULL);
}

/* add_n(v, k) is k adds of v, bin for bin and byte for byte. */
static void test_add_n_is_repeat(void **state)
{
    (void)state;
    uint64_t st = 7;
    sketch_t *a = sketch_new(0), *b = sketch_new(0);
    for (int i = 0; i < 2000; i++) {
        double v = floor(draw(D_BIMODAL, &st, 1));
        uint64_t k = splitmix(&st) % 5;
        sketch_add_n(a, v, k);
        for (uint64_t j = 0; j < k; j++)
            sketch_add(b, v);
    }
    assert_same(a, b, 1);
    sketch_destroy(&a);
    sketch_destroy(&b);
}

typedef struct {
    double acc;
    int ok;
} new_case_t;

static const new_case_t new_cases[] = {
    { 0, 1 },       { 0.01, 1 },     { 1e-4, 1 },     { 0.5, 1 },       { 0.0123, 1 },
    { 0.6, 0 },     { -0.01, 0 },    { 9.9e-5, 0 },   { 1, 0 },         { NAN, 0 },
    { INFINITY, 0 }, { -INFINITY, 0 }, { -0.0, 1 },   { DBL_TRUE_MIN, 0 },
};

static void test_new_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(new_cases); c++) {
        errno = 0;
        sketch_t *s = sketch_new(new_cases[c].acc);
        if (!new_cases[c].ok) {
            assert_null(s);
            assert_int_equal(errno, EINVAL);
            continue;
        }
        assert_non_null(s);
        double want = new_cases[c].acc == 0 ? SKETCH_REL_ACC_DEFAULT : new_cases[c].acc;
        assert_true(sketch_rel_acc(s) == want);
        sketch_destroy(&s);
    }
}

static void test_empty_and_reset(void **state)
{
    (void)state;
    sketch_t *s = sketch_new(0);
    size_t empty_mem = sketch_memory(s);
    assert_true(empty_mem <= 96);
    assert_int_equal(sketch_count(s), 0);
    assert_true(sketch_sum(s) == 0);
    assert_true(isnan(sketch_min(s)) && isnan(sketch_max(s)));
    assert_true(isnan(sketch_quantile(s, 0)) && isnan(sketch_quantile(s, 1)));
    assert_int_equal(sketch_encoded_size(s), 4);
    double *v = gen(D_LOGNORMAL, 1000, 3, 1);
    for (size_t i = 0; i < 1000; i++)
        sketch_add(s, v[i]);
    sketch_add(s, -1);
    assert_true(isnan(sketch_quantile(s, -0.1)) && isnan(sketch_quantile(s, 1.1)) &&
                isnan(sketch_quantile(s, NAN)));
    assert_true(sketch_memory(s) > empty_mem);
    sketch_reset(s);
    assert_int_equal(sketch_memory(s), empty_mem);
    sketch_t *fresh = sketch_new(0);
    assert_same(s, fresh, 1);
    /* the accuracy stays: it still merges with its kind */
    assert_int_equal(sketch_merge(s, fresh), 0);
    sketch_destroy(&fresh);
    sketch_destroy(&s);
    free(v);
}

/* ---- merging ---------------------------------------------------------------- */

typedef struct {
    dist_t dist;
    double acc;
    int integer; /* whole microseconds: sums exact, so bytes equal */
    size_t shards;
} mcase_t;

static const mcase_t mcases[] = {
    { D_UNIFORM, 0.01, 1, 2 },   { D_LOGNORMAL, 0.01, 1, 7 }, { D_BIMODAL, 0.01, 1, 16 },
    { D_CONSTANT, 0.01, 1, 3 },  { D_PARETO, 0.01, 1, 5 },    { D_WIDE, 0.01, 1, 64 },
    { D_LOGNORMAL, 0.001, 1, 4 }, { D_WIDE, 0.0123, 1, 9 },   { D_LOGNORMAL, 0.01, 0, 7 },
    { D_PARETO, 0.05, 0, 3 },    { D_WIDE, 1e-4, 1, 8 },  /* collapses */
};

/* Shards fed by a random assignment, merged in a random order into an empty
 * sketch, against one sketch fed every value. */
static void test_merge_shards(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(mcases); c++) {
        const mcase_t *t = &mcases[c];
        uint64_t st = 99 + c;
        double *v = gen(t->dist, NVALS, 2000 + c, t->integer);
        sketch_t *whole = sketch_of(t->acc, v, NVALS);
        sketch_t *sh[64];
        for (size_t k = 0; k < t->shards; k++)
            sh[k] = sketch_new(t->acc);
        for (size_t i = 0; i < NVALS; i++)
            sketch_add(sh[splitmix(&st) % t->shards], v[i]);
        sketch_add(sh[0], -5); /* rejected counts merge too */
        sketch_add(whole, -5);
        sketch_t *m = sketch_new(t->acc);
        for (size_t k = t->shards; k-- > 0;) {
            size_t j = splitmix(&st) % (k + 1); /* shuffle the order */
            sketch_t *tmp = sh[j];
            sh[j] = sh[k];
            sh[k] = tmp;
            assert_int_equal(sketch_merge(m, sh[k]), 0);
            sketch_destroy(&sh[k]);
        }
        assert_same(m, whole, t->integer);
        free(v);
        sketch_destroy(&m);
        sketch_destroy(&whole);
    }
}

/* (a + b) + c == a + (b + c) == c + a + b, and shards merged through decoded
 * blobs, as the aggregator receives them. */
static void test_merge_associative(void **state)
{
    (void)state;
    const dist_t dists[] = { D_BIMODAL, D_WIDE, D_PARETO };
    for (size_t c = 0; c < ARRAY_LEN(dists); c++) {
        double *v = gen(dists[c], 30000, 50 + c, 1);
        sketch_t *a = sketch_of(0.01, v, 10000), *b = sketch_of(0.01, v + 10000, 10000),
                 *cc = sketch_of(0.01, v + 20000, 10000);
        sketch_add_n(a, 0, 3);
        sketch_t *ab_c = sketch_new(0.01), *a_bc = sketch_new(0.01), *c_a_b = sketch_new(0.01),
                 *bc = sketch_new(0.01);
        assert_int_equal(sketch_merge(ab_c, a), 0);
        assert_int_equal(sketch_merge(ab_c, b), 0);
        assert_int_equal(sketch_merge(ab_c, cc), 0);
        assert_int_equal(sketch_merge(bc, b), 0);
        assert_int_equal(sketch_merge(bc, cc), 0);
        assert_int_equal(sketch_merge(a_bc, a), 0);
        assert_int_equal(sketch_merge(a_bc, bc), 0);
        /* c, then a and b through the wire */
        assert_int_equal(sketch_merge(c_a_b, cc), 0);
        sketch_t *parts[] = { a, b };
        for (int i = 0; i < 2; i++) {
            size_t n = enc(parts[i], g_buf);
            sketch_t *d = sketch_decode(g_buf, n, NULL, 0);
            assert_non_null(d);
            assert_int_equal(sketch_merge(c_a_b, d), 0);
            sketch_destroy(&d);
        }
        assert_same(ab_c, a_bc, 1);
        assert_same(ab_c, c_a_b, 1);
        sketch_t *all = sketch_of(0.01, v, 30000);
        sketch_add_n(all, 0, 3);
        assert_same(ab_c, all, 1);
        sketch_t *ss[] = { a, b, cc, ab_c, a_bc, c_a_b, bc, all };
        for (size_t i = 0; i < ARRAY_LEN(ss); i++)
            sketch_destroy(&ss[i]);
        free(v);
    }
}

static void test_merge_self_and_empty(void **state)
{
    (void)state;
    double *v = gen(D_LOGNORMAL, 5000, 11, 1);
    sketch_t *s = sketch_of(0.01, v, 5000), *twice = sketch_new(0.01);
    for (size_t i = 0; i < 5000; i++)
        sketch_add_n(twice, v[i], 2);
    assert_int_equal(sketch_merge(s, s), 0);
    assert_same(s, twice, 1);
    /* merging an empty sketch, or into one, changes nothing but what it adds */
    sketch_t *e = sketch_new(0.01), *copy = sketch_new(0.01);
    assert_int_equal(sketch_merge(s, e), 0);
    assert_same(s, twice, 1);
    assert_int_equal(sketch_merge(copy, s), 0);
    assert_same(copy, s, 1);
    assert_int_equal(sketch_merge(e, e), 0);
    assert_int_equal(sketch_count(e), 0);
    sketch_destroy(&e);
    sketch_destroy(&copy);
    sketch_destroy(&s);
    sketch_destroy(&twice);
    free(v);
}

static void test_merge_refused(void **state)
{
    (void)state;
    sketch_t *a = sketch_new(0.01), *b = sketch_new(0.02), *c = sketch_new(0.0100000001);
    sketch_add(a, 10);
    sketch_add(b, 20);
    sketch_add(c, 30);
    size_t n = enc(a, g_buf2);
    errno = 0;
    assert_int_equal(sketch_merge(a, b), -1);
    assert_int_equal(errno, EINVAL);
    assert_int_equal(sketch_merge(a, c), -1);
    assert_int_equal(errno, EINVAL);
    /* overflow of the count: -1, dst unchanged */
    sketch_t *big = sketch_new(0.01);
    sketch_add_n(big, 1000, UINT64_MAX);
    errno = 0;
    assert_int_equal(sketch_merge(a, big), -1);
    assert_int_equal(errno, EOVERFLOW);
    assert_int_equal(enc(a, g_buf), n);
    assert_memory_equal(g_buf, g_buf2, n);
    assert_int_equal(sketch_merge(big, big), -1);
    sketch_destroy(&a);
    sketch_destroy(&b);
    sketch_destroy(&c);
    sketch_destroy(&big);
}

/* ---- the bin cap ------------------------------------------------------------ */

/* 6000 values, each in a bin of its own, at 0.01: far past the cap. */
static double *spread(size_t n)
{
    double *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = 1e-30 * pow(1.03, (double)i);
    return v;
}

static void test_collapse(void **state)
{
    (void)state;
    const size_t n = 6000;
    double *v = spread(n);
    sketch_t *s = sketch_of(0.01, v, n);
    assert_int_equal(sketch_bins(s), SKETCH_MAX_BINS);
    assert_true(sketch_memory(s) <= 96 + SKETCH_MAX_BINS * 12);
    assert_int_equal(sketch_count(s), n);
    assert_true(sketch_min(s) == v[0] && sketch_max(s) == v[n - 1]);
    /* the lowest bin holds everything below the 2048 highest distinct bins */
    size_t len = enc(s, g_buf);
    assert_true(len <= SKETCH_ENCODED_MAX);
    blob_read(g_buf, len, &g_b1);
    size_t folded = n - SKETCH_MAX_BINS + 1;
    assert_int_equal(g_b1.cnt[0], folded);
    for (size_t i = 1; i < SKETCH_MAX_BINS; i++)
        assert_int_equal(g_b1.cnt[i], 1);
    /* high quantiles keep their bound; low ones are only bounded above */
    double at_q, worst = worst_error(s, v, n, folded - 1, &at_q);
    if (worst > 0.01)
        fail_msg("above the collapsed bin: error %g at q=%g", worst, at_q);
    assert_true(sketch_quantile(s, 0) == v[0]);
    double low = sketch_quantile(s, 0.1);
    assert_true(low > v[rank_of(0.1, n)] * 1.01);
    assert_true(low <= v[folded - 1] * 1.01);
    assert_true(sketch_quantile(s, 0.99) > 0);
    free(v);
    sketch_destroy(&s);
}

/* After collapsing, the result is still that of the multiset: any order of
 * adds, any sharding, merges of collapsed sketches. */
static void test_collapse_merge(void **state)
{
    (void)state;
    const size_t n = 6000;
    double *v = spread(n);
    sketch_t *up = sketch_of(0.01, v, n), *down = sketch_new(0.01), *shuf = sketch_new(0.01);
    for (size_t i = n; i-- > 0;)
        sketch_add(down, v[i]);
    uint64_t st = 5;
    double *w = malloc(n * sizeof *w);
    memcpy(w, v, n * sizeof *w);
    for (size_t i = n; i-- > 1;) {
        size_t j = splitmix(&st) % (i + 1);
        double t = w[i];
        w[i] = w[j];
        w[j] = t;
    }
    for (size_t i = 0; i < n; i++)
        sketch_add(shuf, w[i]);
    assert_same(up, down, 0);
    assert_same(up, shuf, 0);
    /* shards that each collapse, and a shard of only low values */
    const size_t cuts[][2] = { { 0, 3000 }, { 2500, 6000 }, { 0, 100 }, { 3000, 3100 } };
    for (size_t k = 0; k < 2; k++) {
        sketch_t *m = sketch_new(0.01), *acc_whole = sketch_new(0.01);
        for (size_t c = 0; c < ARRAY_LEN(cuts); c++) {
            sketch_t *part = sketch_of(0.01, w + cuts[c][0], cuts[c][1] - cuts[c][0]);
            for (size_t i = cuts[c][0]; i < cuts[c][1]; i++)
                sketch_add(acc_whole, w[i]);
            assert_int_equal(sketch_merge(k ? part : m, k ? m : part), 0);
            if (k) { /* merge into the part, and carry the part on */
                sketch_destroy(&m);
                m = part;
            } else {
                sketch_destroy(&part);
            }
        }
        assert_same(m, acc_whole, 0);
        sketch_destroy(&m);
        sketch_destroy(&acc_whole);
    }
    free(w);
    free(v);
    sketch_destroy(&up);
    sketch_destroy(&down);
    sketch_destroy(&shuf);
}

/* ---- encoding --------------------------------------------------------------- */

/* The sketches the round-trip and truncation tests walk through. */
static sketch_t *sample(int which)
{
    sketch_t *s = NULL;
    double *v;
    switch (which) {
    case 0: return sketch_new(0);
    case 1: s = sketch_new(0); sketch_add_n(s, NAN, 300); return s;
    case 2: s = sketch_new(0.005); sketch_add_n(s, 0, 7); return s;
    case 3: s = sketch_new(0); sketch_add(s, 150000); return s;
    case 4: s = sketch_new(0.0123); sketch_add(s, 0); sketch_add(s, 3.5); sketch_add(s, 1e12); return s;
    case 5:
        v = gen(D_BIMODAL, 20000, 8, 0);
        s = sketch_of(0.02, v, 20000);
        free(v);
        sketch_add_n(s, 0, 1ull << 40);
        return s;
    case 6:
        v = spread(3000);
        s = sketch_of(0.01, v, 3000);
        free(v);
        return s;
    case 7: s = sketch_new(0.5); sketch_add(s, DBL_MAX); sketch_add(s, DBL_TRUE_MIN); return s;
    case 8: s = sketch_new(1e-4); sketch_add_n(s, 1, UINT64_MAX); return s;
    default: return NULL;
    }
}

static void test_round_trip(void **state)
{
    (void)state;
    sketch_t *s;
    for (int w = 0; (s = sample(w)) != NULL; w++) {
        size_t n = enc(s, g_buf);
        char err[128] = "x";
        sketch_t *d = sketch_decode(g_buf, n, err, sizeof err);
        if (!d)
            fail_msg("sample %d: %s", w, err);
        assert_string_equal(err, "");
        assert_same(s, d, 1);
        assert_true(sketch_rel_acc(d) == sketch_rel_acc(s));
        assert_true(sketch_sum(d) == sketch_sum(s));
        assert_true(sketch_memory(d) <= sketch_memory(s));
        /* a decoded sketch is a whole sketch: it keeps growing and merging */
        sketch_add(d, 42);
        int overflow = sketch_count(d) > UINT64_MAX - sketch_count(s);
        assert_int_equal(sketch_merge(s, d), overflow ? -1 : 0);
        sketch_destroy(&d);
        /* cap too small: 0, nothing written */
        memset(g_buf2, 0xee, 8);
        assert_int_equal(sketch_encode(s, g_buf2, sketch_encoded_size(s) - 1), 0);
        assert_int_equal(sketch_encode(s, g_buf2, 0), 0);
        assert_int_equal(g_buf2[0], 0xee);
        sketch_destroy(&s);
    }
}

static void test_decode_truncated(void **state)
{
    (void)state;
    sketch_t *s;
    for (int w = 0; (s = sample(w)) != NULL; w++) {
        size_t n = enc(s, g_buf);
        for (size_t len = 0; len < n; len++) {
            char err[128] = "";
            /* a copy of exactly len bytes, so ASan sees any read past it */
            uint8_t *p = malloc(len ? len : 1);
            memcpy(p, g_buf, len);
            errno = 0;
            sketch_t *d = sketch_decode(p, len, err, sizeof err);
            if (d)
                fail_msg("sample %d: prefix of %zu/%zu bytes accepted", w, len, n);
            assert_int_equal(errno, EINVAL);
            assert_true(err[0] != '\0');
            free(p);
        }
        sketch_destroy(&s);
    }
}

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = 0;
    while (*h) {
        if (*h == ' ') {
            h++;
            continue;
        }
        unsigned b;
        assert_int_equal(sscanf(h, "%2x", &b), 1);
        out[n++] = (uint8_t)b;
        h += 2;
    }
    return n;
}

typedef struct {
    const char *hex;
    const char *want; /* a piece of the reason, or NULL: accepted */
} raw_case_t;

/* 0.01 = 7b14ae47e17a843f, 0.9 = cdccccccccccec3f, NaN = 000000000000f87f,
 * 0.0123 = 8d28ed0dbe30893f (little-endian doubles) */
static const raw_case_t raw_cases[] = {
    { "", "empty" },
    { "01 01 00 00", NULL },
    { "01 01 00 05", NULL },
    { "01 00 8d28ed0dbe30893f 00 00", NULL },
    { "01", "truncated" },
    { "01 01 00", "truncated" },
    { "02 01 00 00", "bad version" },
    { "00 01 00 00", "bad version" },
    { "ff", "bad version" },
    { "01 07 00 00", "unknown accuracy" },
    { "01 ff 00 00", "unknown accuracy" },
    { "01 00 7b14ae47e17a843f 00 00", "not its code" },
    { "01 00 cdccccccccccec3f 00 00", "out of range" },
    { "01 00 000000000000f87f 00 00", "out of range" },
    { "01 00 8d28ed0dbe3089", "truncated" },
    { "01 01 80 00 00", "longer than needed" },
    { "01 01 00 80 00", "longer than needed" },
    { "01 01 00 ff ff ff ff ff ff ff ff ff 00", "longer than needed" },
    { "01 01 00 ff ff ff ff ff ff ff ff ff 01", NULL },
    { "01 01 00 ff ff ff ff ff ff ff ff ff 02", "over 64 bits" },
    { "01 01 00 ff ff ff ff ff ff ff ff ff 81 00", "over 64 bits" },
    { "01 01 00 ff ff ff ff ff ff ff ff ff ff ff ff ff ff", "over 64 bits" },
    { "01 01 00 ff ff ff ff ff ff ff ff", "truncated" },
    { "01 01 ff ff ff ff ff ff ff ff ff 01 00", "truncated in sum" },
    { "01 01 00 00 00", "1 trailing" },
    { "01 01 00 00 0000", "2 trailing" },
};

static void test_decode_raw(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_LEN(raw_cases); c++) {
        uint8_t buf[256];
        size_t n = unhex(raw_cases[c].hex, buf);
        char err[128] = "";
        sketch_t *d = sketch_decode(buf, n, err, sizeof err);
        if (!raw_cases[c].want) {
            if (!d)
                fail_msg("case %zu '%s': refused: %s", c, raw_cases[c].hex, err);
            assert_int_equal(enc(d, g_buf), n);
            assert_memory_equal(g_buf, buf, n);
            sketch_destroy(&d);
        } else if (d || !strstr(err, raw_cases[c].want)) {
            fail_msg("case %zu '%s': want '%s', got %s '%s'", c, raw_cases[c].hex,
                     raw_cases[c].want, d ? "accepted" : "refused", err);
        }
    }
}

/* Malformed blobs made by changing fields of a good one: 0 once, 1000 once,
 * 2000 three times, at 0.01, no rejected. */
typedef void (*mutate_fn)(blob_t *b);

static void m_none(blob_t *b) { (void)b; }
static void m_zero_over(blob_t *b) { b->zero = b->count + 1; }
static void m_too_many_bins(blob_t *b) { b->nbins = SKETCH_MAX_BINS + 1; }
static void m_bins_past_end(blob_t *b) { b->nbins = 50; }
static void m_bins_2048(blob_t *b) { b->nbins = SKETCH_MAX_BINS; }
static void m_dup_index(blob_t *b) { b->step[1] = 0; }
static void m_empty_bin(blob_t *b) { b->cnt[1] = 0; b->count -= 3; }
static void m_overflow(blob_t *b)
{
    b->cnt[0] = 1ull << 63;
    b->cnt[1] = 1ull << 63;
    b->count = 1;
}
static void m_overflow_zero(blob_t *b) { b->zero = UINT64_MAX; b->count = UINT64_MAX; }
static void m_count_more(blob_t *b) { b->count++; }
static void m_count_less(blob_t *b) { b->count--; }
static void m_index_high(blob_t *b) { b->step[0] = 2 * 40000; }
static void m_index_low(blob_t *b) { b->step[0] = 2 * 40000 - 1; }
static void m_step_huge(blob_t *b) { b->step[1] = 1ull << 40; }
static void m_step_wrap(blob_t *b) { b->step[1] = UINT64_MAX; }
static void m_min_neg(blob_t *b) { b->min = -1; }
static void m_min_nan(blob_t *b) { b->min = NAN; }
static void m_min_negzero(blob_t *b) { b->min = -0.0; }
static void m_max_below(blob_t *b) { b->max = -1; }
static void m_max_inf(blob_t *b) { b->max = INFINITY; }
static void m_max_far(blob_t *b) { b->max = b->sum = 1e6; }
static void m_max_next(blob_t *b) { b->max = 2000 * 1.0201; } /* one bin up: tolerated */
static void m_sum_nan(blob_t *b) { b->sum = NAN; }
static void m_sum_low(blob_t *b) { b->sum = 1999; }
static void m_sum_inf(blob_t *b) { b->sum = INFINITY; }
static void m_min_not_zero(blob_t *b) { b->min = 500; }
static void m_min_far(blob_t *b)
{
    b->zero = 0;
    b->count--;
    b->min = 10;
}
static void m_zero_no_min(blob_t *b)
{
    b->zero = 0;
    b->count--;
}
static void m_no_bins_max(blob_t *b)
{
    b->nbins = 0;
    b->count = b->zero;
}
static void m_only_zeros(blob_t *b)
{
    m_no_bins_max(b);
    b->max = b->sum = 0;
}
static void m_only_zeros_sum(blob_t *b)
{
    m_only_zeros(b);
    b->sum = 1;
}
static void m_trailing(blob_t *b) { b->tail = 1; }
static void m_version(blob_t *b) { b->version = 2; }

typedef struct {
    const char *name;
    mutate_fn fn;
    const char *want; /* NULL: accepted */
} field_case_t;

static const field_case_t field_cases[] = {
    { "unchanged", m_none, NULL },
    { "zero count over count", m_zero_over, "zero count" },
    { "2049 bins", m_too_many_bins, "over 2048" },
    { "bins past the end", m_bins_past_end, "bins in" },
    { "2048 bins declared, 2 there", m_bins_2048, "bins in" },
    { "duplicate index", m_dup_index, "not above" },
    { "empty bin", m_empty_bin, "empty" },
    { "bin counts overflow", m_overflow, "overflow" },
    { "zeros at the limit, bins overflow", m_overflow_zero, "overflow" },
    { "count above the bins", m_count_more, "count says" },
    { "count below the bins", m_count_less, "count says" },
    { "index above doubles", m_index_high, "out of range" },
    { "index below doubles", m_index_low, "out of range" },
    { "step out of range", m_step_huge, "out of range" },
    { "step wraps", m_step_wrap, "out of range" },
    { "negative min", m_min_neg, "bad min" },
    { "NaN min", m_min_nan, "bad min" },
    { "-0 min", m_min_negzero, "bad min" },
    { "max below min", m_max_below, "bad max" },
    { "infinite max", m_max_inf, "bad max" },
    { "max far from the top bin", m_max_far, "top bin" },
    { "max one bin up", m_max_next, NULL },
    { "NaN sum", m_sum_nan, "bad sum" },
    { "sum below max", m_sum_low, "bad sum" },
    { "infinite sum", m_sum_inf, NULL },
    { "min not 0 with zeros", m_min_not_zero, "disagrees" },
    { "min 0 without zeros", m_zero_no_min, "disagrees" },
    { "min far from the lowest bin", m_min_far, "lowest bin" },
    { "max without bins", m_no_bins_max, "without bins" },
    { "only zeros", m_only_zeros, NULL },
    { "only zeros, sum 1", m_only_zeros_sum, "bad sum" },
    { "trailing byte", m_trailing, "trailing" },
    { "version 2", m_version, "bad version" },
};

static void test_decode_fields(void **state)
{
    (void)state;
    sketch_t *good = sketch_new(0.01);
    sketch_add(good, 0);
    sketch_add(good, 1000);
    sketch_add_n(good, 2000, 3);
    size_t n = enc(good, g_buf);
    static blob_t base;
    blob_read(g_buf, n, &base);
    assert_int_equal(base.nbins, 2);
    for (size_t c = 0; c < ARRAY_LEN(field_cases); c++) {
        const field_case_t *t = &field_cases[c];
        g_b1 = base;
        t->fn(&g_b1);
        uint8_t buf[512];
        size_t len = blob_write(&g_b1, buf);
        char err[128] = "";
        sketch_t *d = sketch_decode(buf, len, err, sizeof err);
        if (!t->want) {
            if (!d)
                fail_msg("%s: refused: %s", t->name, err);
            assert_int_equal(enc(d, g_buf2), len);
            assert_memory_equal(g_buf2, buf, len);
            sketch_destroy(&d);
        } else if (d || !strstr(err, t->want)) {
            fail_msg("%s: want '%s', got %s '%s'", t->name, t->want, d ? "accepted" : "refused",
                     err);
        }
    }
    /* a short err buffer is truncated, a NULL one is fine */
    char tiny[4];
    assert_null(sketch_decode("\x02", 1, tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), 3);
    assert_null(sketch_decode("\x02", 1, NULL, 0));
    sketch_destroy(&good);
}

/* ---- sizes ------------------------------------------------------------------ */

/* Memory and blob size for 1, 100 and 10,000 distinct latencies (log-normal
 * around 200 ms, each made distinct by a thousandth of a microsecond), and
 * for the worst case: every value in a bin of its own. */
static void test_sizes(void **state)
{
    (void)state;
    const size_t ns[] = { 1, 100, 10000 };
    for (size_t i = 0; i < ARRAY_LEN(ns); i++) {
        uint64_t st = 77;
        sketch_t *s = sketch_new(0);
        size_t distinct = 0;
        while (distinct < ns[i]) { /* values distinct by construction: a counter */
            double v = floor(draw(D_LOGNORMAL, &st, 0)) + (double)distinct * 1e-3;
            sketch_add(s, v);
            distinct++;
        }
        print_message("sizes: %5zu distinct values: %4zu bins, memory %6zu B, encoded %5zu B\n",
                      ns[i], sketch_bins(s), sketch_memory(s), sketch_encoded_size(s));
        assert_true(sketch_memory(s) <= 96 + 12 * (sketch_bins(s) * 3 / 2 + 4));
        sketch_destroy(&s);
    }
    double *v = spread(10000);
    sketch_t *s = sketch_of(0.01, v, 10000);
    print_message("sizes: worst case, 10000 values 3%% apart: %zu bins, memory %zu B, encoded %zu B\n",
                  sketch_bins(s), sketch_memory(s), sketch_encoded_size(s));
    sketch_destroy(&s);
    free(v);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_table),
        cmocka_unit_test(test_empty_and_reset),
        cmocka_unit_test(test_add_table),
        cmocka_unit_test(test_add_overflow),
        cmocka_unit_test(test_add_n_is_repeat),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_zero_and_tiny),
        cmocka_unit_test(test_bin_edges),
        cmocka_unit_test(test_merge_shards),
        cmocka_unit_test(test_merge_associative),
        cmocka_unit_test(test_merge_self_and_empty),
        cmocka_unit_test(test_merge_refused),
        cmocka_unit_test(test_collapse),
        cmocka_unit_test(test_collapse_merge),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_decode_truncated),
        cmocka_unit_test(test_decode_raw),
        cmocka_unit_test(test_decode_fields),
        cmocka_unit_test(test_sizes),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("sketch", tests, NULL, NULL);
}

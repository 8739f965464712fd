/* fuzz_sketch: libFuzzer target for common/sketch. The input is decoded as a
 * blob; one that is accepted must encode back to the very same bytes, merge
 * with itself and with another sketch (both orders giving the same bytes),
 * and answer quantiles within [min, max], non-decreasing in q. The same bytes
 * are also read as a stream of doubles and of 16-bit microsecond values (at
 * the blob's accuracy, or one the first byte picks; the last byte picks a
 * shard count), added to one sketch and
 * spread over shards that are then merged: the two must agree bin for bin. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sketch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                \
    do {                                                                                        \
        if (!(c)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

static uint8_t g_a[SKETCH_ENCODED_MAX], g_b[SKETCH_ENCODED_MAX];

static size_t enc(const sketch_t *s, uint8_t *buf)
{
    size_t n = sketch_encoded_size(s);
    CHECK(n <= SKETCH_ENCODED_MAX);
    CHECK(sketch_encode(s, buf, n) == n);
    return n;
}

static sketch_t *copy(const sketch_t *s)
{
    sketch_t *c = sketch_new(sketch_rel_acc(s));
    CHECK(c && sketch_merge(c, s) == 0);
    return c;
}

static void check_quantiles(const sketch_t *s)
{
    if (sketch_count(s) == 0) {
        CHECK(isnan(sketch_quantile(s, 0.5)) && isnan(sketch_min(s)));
        return;
    }
    double mn = sketch_min(s), mx = sketch_max(s), prev = mn;
    CHECK(sketch_quantile(s, 0) == mn && sketch_quantile(s, 1) == mx);
    for (int i = 0; i <= 64; i++) {
        double v = sketch_quantile(s, i / 64.0);
        CHECK(v >= prev && v <= mx);
        prev = v;
    }
    CHECK(isnan(sketch_quantile(s, -0.5)) && isnan(sketch_quantile(s, NAN)));
}

/* Offset of the sum in a blob, whose rounding depends on the order of adds. */
static size_t sum_at(const uint8_t *p, size_t n)
{
    size_t off = 2 + (p[1] == 0 ? 8 : 0);
    for (int field = 0; field < 2; field++)
        while (off < n && (p[off++] & 0x80))
            ;
    return off;
}

/* Equal blobs but for the sum. */
static void check_same_but_sum(const sketch_t *x, const sketch_t *y)
{
    size_t nx = enc(x, g_a), ny = enc(y, g_b);
    CHECK(nx == ny);
    size_t at = sum_at(g_a, nx);
    CHECK(memcmp(g_a, g_b, at) == 0);
    if (at < nx) {
        CHECK(at + 8 <= nx);
        CHECK(memcmp(g_a + at + 8, g_b + at + 8, nx - at - 8) == 0);
    }
}

static void check_blob(const uint8_t *data, size_t size, sketch_t *other)
{
    char err[128];
    sketch_t *s = sketch_decode(data, size, err, sizeof err);
    if (!s) {
        CHECK(err[0] != '\0');
        return;
    }
    CHECK(sketch_encoded_size(s) == size);
    CHECK(enc(s, g_a) == size && memcmp(g_a, data, size) == 0);
    check_quantiles(s);

    /* with itself: counts double, or -1 and nothing changes */
    sketch_t *d = copy(s);
    uint64_t n = sketch_count(s);
    if (sketch_merge(d, d) == 0) {
        CHECK(n <= UINT64_MAX / 2 && sketch_count(d) == 2 * n);
        CHECK(sketch_bins(d) == sketch_bins(s));
        CHECK(n == 0 || (sketch_min(d) == sketch_min(s) && sketch_max(d) == sketch_max(s)));
        check_quantiles(d);
    } else {
        CHECK(n > UINT64_MAX / 2);
        CHECK(enc(d, g_a) == size && memcmp(g_a, data, size) == 0);
    }
    sketch_destroy(&d);

    /* with another: both orders give the same bytes (+ commutes exactly) */
    if (sketch_rel_acc(s) == sketch_rel_acc(other)) {
        sketch_t *x = copy(s), *y = copy(other);
        int rx = sketch_merge(x, other), ry = sketch_merge(y, s);
        CHECK(rx == ry);
        if (rx == 0) {
            size_t nx = enc(x, g_a), ny = enc(y, g_b);
            CHECK(nx == ny && memcmp(g_a, g_b, nx) == 0);
            check_quantiles(x);
            sketch_t *back = sketch_decode(g_a, nx, err, sizeof err);
            if (!back) {
                fprintf(stderr, "merged blob refused: %s\n", err);
                abort();
            }
            sketch_destroy(&back);
        }
        sketch_destroy(&x);
        sketch_destroy(&y);
    }
    sketch_destroy(&s);
}

static const double accs[] = { 0.01, 0.001, 1e-4, 0.5, 0.02, 0.0123, 0.05, 0.01 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an accepted blob's accuracy, so that it can merge with the stream */
    sketch_t *probe = sketch_decode(data, size, NULL, 0);
    double acc = probe ? sketch_rel_acc(probe) : accs[size ? data[0] & 7 : 0];
    sketch_destroy(&probe);
    size_t shards = size ? 1 + ((data[size - 1] >> 3) & 3) : 1;
    sketch_t *whole = sketch_new(acc), *part[4];
    for (size_t k = 0; k < shards; k++)
        part[k] = sketch_new(acc);
    size_t i = 0;
    for (size_t off = 1; off + 8 <= size; off += 8, i++) {
        double v;
        memcpy(&v, data + off, sizeof v);
        uint64_t times = (data[off] & 3) + (data[off] == 0xff ? UINT64_MAX / 8 : 0);
        sketch_add_n(whole, v, times);
        sketch_add_n(part[i % shards], v, times);
    }
    for (size_t off = 1; off + 2 <= size; off += 2, i++) {
        double v = (double)(data[off] | data[off + 1] << 8);
        sketch_add(whole, v);
        sketch_add(part[i % shards], v);
    }
    sketch_t *merged = sketch_new(acc);
    int failed = 0;
    for (size_t k = 0; k < shards; k++) {
        failed |= sketch_merge(merged, part[k]) != 0;
        sketch_destroy(&part[k]);
    }
    /* a shard's count can overflow only where the whole's add was refused */
    if (!failed && sketch_rejected(merged) == sketch_rejected(whole))
        check_same_but_sum(merged, whole);
    check_quantiles(whole);
    size_t n = enc(whole, g_a);
    sketch_t *back = sketch_decode(g_a, n, NULL, 0);
    CHECK(back != NULL);
    sketch_destroy(&back);

    check_blob(data, size, whole);
    sketch_destroy(&merged);
    sketch_destroy(&whole);
    return 0;
}

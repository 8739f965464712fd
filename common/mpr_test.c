/* mpr_test: tests of common/mpr, the strict allocation-free msgpack reader:
 * every type byte, every truncation of every encoding, containers that
 * claim more elements than bytes remain, the depth limit and trailing
 * bytes, and agreement with msgpack-c on well-formed input. Run one test
 * alone with `mpr_test NAME`. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "mpr.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct {
    const char *name;
    const char *bytes; /* one whole value, containers with their elements */
    size_t len;
    size_t hdr;        /* bytes mpr_next consumes */
    mpr_type_t type;
    uint64_t u;        /* UINT value, container count, str/bin/ext length */
    int64_t i;         /* INT value */
    double f;          /* FLOAT value */
    const char *s;     /* STR/BIN/EXT payload */
} next_case_t;

#define B(lit) lit, sizeof(lit) - 1

static const next_case_t next_cases[] = {
    { "positive fixint 0", B("\x00"), 1, MPR_UINT, 0, 0, 0, NULL },
    { "positive fixint 127", B("\x7f"), 1, MPR_UINT, 127, 0, 0, NULL },
    { "negative fixint -32", B("\xe0"), 1, MPR_INT, 0, -32, 0, NULL },
    { "negative fixint -1", B("\xff"), 1, MPR_INT, 0, -1, 0, NULL },
    { "uint8", B("\xcc\xff"), 2, MPR_UINT, 255, 0, 0, NULL },
    { "uint16", B("\xcd\x01\x00"), 3, MPR_UINT, 256, 0, 0, NULL },
    { "uint32", B("\xce\xde\xad\xbe\xef"), 5, MPR_UINT, 0xdeadbeef, 0, 0, NULL },
    { "uint64", B("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), 9, MPR_UINT, UINT64_MAX, 0, 0, NULL },
    { "int8 -128", B("\xd0\x80"), 2, MPR_INT, 0, -128, 0, NULL },
    { "int8 positive is a uint", B("\xd0\x7f"), 2, MPR_UINT, 127, 0, 0, NULL },
    { "int16", B("\xd1\x80\x00"), 3, MPR_INT, 0, INT16_MIN, 0, NULL },
    { "int16 -2", B("\xd1\xff\xfe"), 3, MPR_INT, 0, -2, 0, NULL },
    { "int32", B("\xd2\x80\x00\x00\x00"), 5, MPR_INT, 0, INT32_MIN, 0, NULL },
    { "int64", B("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"), 9, MPR_INT, 0, INT64_MIN, 0, NULL },
    { "int64 positive", B("\xd3\x00\x00\x00\x00\x00\x00\x00\x05"), 9, MPR_UINT, 5, 0, 0, NULL },
    { "float32", B("\xca\x3f\xc0\x00\x00"), 5, MPR_FLOAT, 0, 0, 1.5, NULL },
    { "float32 negative", B("\xca\xc1\x20\x00\x00"), 5, MPR_FLOAT, 0, 0, -10.0, NULL },
    { "float64", B("\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"), 9, MPR_FLOAT, 0, 0, 1.5, NULL },
    { "float64 tiny", B("\xcb\x00\x00\x00\x00\x00\x00\x00\x01"), 9, MPR_FLOAT, 0, 0, 5e-324, NULL },
    { "fixstr empty", B("\xa0"), 1, MPR_STR, 0, 0, 0, "" },
    { "fixstr", B("\xa3" "abc"), 4, MPR_STR, 3, 0, 0, "abc" },
    { "fixstr 31", B("\xbf" "0123456789012345678901234567890"), 32, MPR_STR, 31, 0, 0,
      "0123456789012345678901234567890" },
    { "str8", B("\xd9\x03" "abc"), 5, MPR_STR, 3, 0, 0, "abc" },
    { "str8 empty", B("\xd9\x00"), 2, MPR_STR, 0, 0, 0, "" },
    { "str16", B("\xda\x00\x03" "abc"), 6, MPR_STR, 3, 0, 0, "abc" },
    { "str32", B("\xdb\x00\x00\x00\x03" "abc"), 8, MPR_STR, 3, 0, 0, "abc" },
    { "bin8", B("\xc4\x02\x00\xff"), 4, MPR_BIN, 2, 0, 0, "\x00\xff" },
    { "bin16", B("\xc5\x00\x01\x07"), 4, MPR_BIN, 1, 0, 0, "\x07" },
    { "bin32", B("\xc6\x00\x00\x00\x01\x07"), 6, MPR_BIN, 1, 0, 0, "\x07" },
    { "ext8", B("\xc7\x02\x05xy"), 5, MPR_EXT, 2, 0, 0, "xy" },
    { "ext16", B("\xc8\x00\x02\x05xy"), 6, MPR_EXT, 2, 0, 0, "xy" },
    { "ext32", B("\xc9\x00\x00\x00\x02\x05xy"), 8, MPR_EXT, 2, 0, 0, "xy" },
    { "ext8 empty", B("\xc7\x00\x05"), 3, MPR_EXT, 0, 0, 0, "" },
    { "fixext1", B("\xd4\x01z"), 3, MPR_EXT, 1, 0, 0, "z" },
    { "fixext2", B("\xd5\x01zz"), 4, MPR_EXT, 2, 0, 0, "zz" },
    { "fixext4", B("\xd6\xffzzzz"), 6, MPR_EXT, 4, 0, 0, "zzzz" },
    { "fixext8", B("\xd7\x01zzzzzzzz"), 10, MPR_EXT, 8, 0, 0, "zzzzzzzz" },
    { "fixext16 (a timestamp type byte)", B("\xd8\xffzzzzzzzzzzzzzzzz"), 18, MPR_EXT, 16, 0, 0,
      "zzzzzzzzzzzzzzzz" },
    { "nil", B("\xc0"), 1, MPR_NIL, 0, 0, 0, NULL },
    { "false", B("\xc2"), 1, MPR_BOOL, 0, 0, 0, NULL },
    { "true", B("\xc3"), 1, MPR_BOOL, 1, 0, 0, NULL },
    { "fixarray empty", B("\x90"), 1, MPR_ARRAY, 0, 0, 0, NULL },
    { "fixarray", B("\x92\x01\x02"), 1, MPR_ARRAY, 2, 0, 0, NULL },
    { "array16", B("\xdc\x00\x02\x01\x02"), 3, MPR_ARRAY, 2, 0, 0, NULL },
    { "array32", B("\xdd\x00\x00\x00\x02\x01\x02"), 5, MPR_ARRAY, 2, 0, 0, NULL },
    { "fixmap empty", B("\x80"), 1, MPR_MAP, 0, 0, 0, NULL },
    { "fixmap", B("\x81\x01\x02"), 1, MPR_MAP, 1, 0, 0, NULL },
    { "map16", B("\xde\x00\x01\x01\x02"), 3, MPR_MAP, 1, 0, 0, NULL },
    { "map32", B("\xdf\x00\x00\x00\x01\x01\x02"), 5, MPR_MAP, 1, 0, 0, NULL },
};

static void check_value(const next_case_t *c, const mpr_val_t *v)
{
    if (v->type != c->type)
        fail_msg("%s: type %d, want %d", c->name, (int)v->type, (int)c->type);
    switch (c->type) {
    case MPR_UINT:
        if (v->u != c->u)
            fail_msg("%s: %llu, want %llu", c->name, (unsigned long long)v->u,
                     (unsigned long long)c->u);
        break;
    case MPR_INT:
        if (v->i != c->i)
            fail_msg("%s: %lld, want %lld", c->name, (long long)v->i, (long long)c->i);
        break;
    case MPR_FLOAT:
        if (v->f != c->f)
            fail_msg("%s: %a, want %a", c->name, v->f, c->f);
        break;
    case MPR_BOOL:
        assert_int_equal(v->b, c->u != 0);
        break;
    case MPR_STR:
    case MPR_BIN:
    case MPR_EXT:
        assert_int_equal(v->s.len, c->u);
        assert_memory_equal(v->s.p, c->s, c->u);
        break;
    case MPR_ARRAY:
    case MPR_MAP:
        assert_int_equal(v->n, c->u);
        break;
    case MPR_NIL:
        break;
    }
}

static void test_next_every_type(void **state)
{
    (void)state;
    bool seen[256] = { false };
    for (size_t i = 0; i < ARRAY_LEN(next_cases); i++) {
        const next_case_t *c = &next_cases[i];
        uint8_t *buf = malloc(c->len); /* exact size: ASan sees any overread */
        assert_non_null(buf);
        memcpy(buf, c->bytes, c->len);
        mpr_t r;
        mpr_init(&r, buf, c->len);
        mpr_val_t v;
        if (mpr_next(&r, &v) != 0)
            fail_msg("%s: refused", c->name);
        check_value(c, &v);
        if ((size_t)(r.p - buf) != c->hdr)
            fail_msg("%s: consumed %zu bytes, want %zu", c->name, (size_t)(r.p - buf), c->hdr);
        if (c->type == MPR_STR || c->type == MPR_BIN || c->type == MPR_EXT)
            assert_ptr_equal(v.s.p, buf + c->hdr - c->u); /* the payload, in place */
        /* the whole value is one well-formed value */
        assert_int_equal(mpr_validate(buf, c->len, 4), 0);
        seen[buf[0]] = true;
        free(buf);
    }
    /* every kind of type byte is in the table */
    static const uint8_t kinds[] = { 0x00, 0x7f, 0x80, 0x81, 0x90, 0x92, 0xa0, 0xa3, 0xbf,
                                     0xc0, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9,
                                     0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2,
                                     0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb,
                                     0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff };
    for (size_t i = 0; i < ARRAY_LEN(kinds); i++)
        if (!seen[kinds[i]])
            fail_msg("type byte 0x%02x has no case", kinds[i]);
}

static void test_next_c1_invalid(void **state)
{
    (void)state;
    uint8_t b[4] = { 0xc1, 0x00, 0x00, 0x00 };
    mpr_t r;
    mpr_init(&r, b, sizeof b);
    mpr_val_t v;
    assert_int_equal(mpr_next(&r, &v), -1);
    assert_int_equal(mpr_validate(b, 1, 4), -1);
    /* also inside a container */
    uint8_t a[] = { 0x92, 0x01, 0xc1 };
    assert_int_equal(mpr_validate(a, sizeof a, 4), -1);
    /* and the empty buffer */
    mpr_init(&r, b, 0);
    assert_int_equal(mpr_next(&r, &v), -1);
    assert_int_equal(mpr_validate(b, 0, 4), -1);
}

/* Every type byte: whatever mpr_next says about it with plenty of zero bytes
 * after, it agrees with msgpack-c on whether it is valid at all. */
static void test_next_every_byte(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        uint8_t buf[64] = { 0 };
        buf[0] = (uint8_t)c;
        mpr_t r;
        mpr_init(&r, buf, sizeof buf);
        mpr_val_t v;
        int rc = mpr_next(&r, &v);
        if (c == 0xc1) {
            assert_int_equal(rc, -1);
            continue;
        }
        if (rc != 0)
            fail_msg("type byte 0x%02x followed by zeros: refused", c);
        assert_true(r.p > buf && r.p <= buf + sizeof buf);
        /* msgpack-c reads the same value from the same bytes */
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        int mrc = msgpack_unpack_next(&up, (const char *)buf, sizeof buf, &off);
        if (mrc != MSGPACK_UNPACK_SUCCESS)
            fail_msg("0x%02x: msgpack-c says %d", c, mrc);
        if (v.type != MPR_ARRAY && v.type != MPR_MAP && off != (size_t)(r.p - buf))
            fail_msg("0x%02x: mpr consumed %zu, msgpack-c %zu", c, (size_t)(r.p - buf), off);
        msgpack_unpacked_destroy(&up);
    }
}

static void test_truncated_at_every_length(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(next_cases); i++) {
        const next_case_t *c = &next_cases[i];
        /* bytes mpr_next needs: the header, the payload, and for a container
         * at least one byte per element (two per map entry) */
        size_t need = c->len;
        for (size_t k = 0; k < c->len; k++) {
            uint8_t *buf = malloc(k ? k : 1);
            assert_non_null(buf);
            memcpy(buf, c->bytes, k);
            mpr_t r;
            mpr_init(&r, buf, k);
            mpr_val_t v;
            int rc = mpr_next(&r, &v);
            if (k < need && rc != -1)
                fail_msg("%s cut to %zu of %zu bytes: accepted", c->name, k, c->len);
            if (mpr_validate(buf, k, 4) != -1)
                fail_msg("%s cut to %zu bytes: validated", c->name, k);
            free(buf);
        }
    }
}

typedef struct {
    const char *name;
    const char *bytes;
    size_t len;
} bytes_case_t;

static void test_hostile_sizes(void **state)
{
    (void)state;
    /* headers claiming far more than the buffer holds: refused at once,
     * without reading past the end or allocating */
    static const bytes_case_t cases[] = {
        { "array32 of 4G", B("\xdd\xff\xff\xff\xff") },
        { "array32 of 4G, some bytes", B("\xdd\xff\xff\xff\xff\x01\x02\x03") },
        { "map32 of 4G", B("\xdf\xff\xff\xff\xff") },
        { "map32 of 2G, 2G+1 bytes needed", B("\xdf\x80\x00\x00\x00") },
        { "array16 of 65535", B("\xdc\xff\xff\x01") },
        { "map16 of 65535", B("\xde\xff\xff\x01\x01") },
        { "fixarray of 15, 14 elements", B("\x9f\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01\x01") },
        { "fixmap of 2, 3 bytes", B("\x82\x01\x01\x01") },
        { "str32 of 4G", B("\xdb\xff\xff\xff\xff" "abc") },
        { "bin32 of 4G", B("\xc6\xff\xff\xff\xff" "abc") },
        { "ext32 of 4G", B("\xc9\xff\xff\xff\xff\x01" "abc") },
        { "str16 one short", B("\xda\x00\x04" "abc") },
        { "nested claims", B("\x91\x91\x91\xdd\xff\xff\xff\xff") },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint8_t *buf = malloc(cases[i].len);
        assert_non_null(buf);
        memcpy(buf, cases[i].bytes, cases[i].len);
        if (mpr_validate(buf, cases[i].len, 16) != -1)
            fail_msg("%s: validated", cases[i].name);
        free(buf);
    }
    /* a container's elements may each be a single byte: exactly enough is fine */
    assert_int_equal(mpr_validate("\x93\x01\x02\x03", 4, 1), 0);
    assert_int_equal(mpr_validate("\x82\x01\x02\x03\x04", 5, 1), 0);
    /* the same hostile bytes mpr refuses, msgpack-c would have to size first:
     * that is why every bus message passes mpr_validate before msgpack-c */
}

typedef struct {
    const char *name;
    const char *bytes;
    size_t len;
    unsigned depth;
    int want;
} validate_case_t;

static void test_validate_depth_and_trailing(void **state)
{
    (void)state;
    static const validate_case_t cases[] = {
        { "scalar at depth 0", B("\x01"), 0, 0 },
        { "empty array at depth 0", B("\x90"), 0, 0 },
        { "empty map at depth 0", B("\x80"), 0, 0 },
        { "[1] at depth 0", B("\x91\x01"), 0, -1 },
        { "[1] at depth 1", B("\x91\x01"), 1, 0 },
        { "[[[1]]] at depth 3", B("\x91\x91\x91\x01"), 3, 0 },
        { "[[[1]]] at depth 2", B("\x91\x91\x91\x01"), 2, -1 },
        { "[[[]]] at depth 2", B("\x91\x91\x90"), 2, 0 }, /* an empty one is not descended */
        { "{1: [2]} at depth 2", B("\x81\x01\x91\x02"), 2, 0 },
        { "{1: [2]} at depth 1", B("\x81\x01\x91\x02"), 1, -1 },
        { "{[1]: 2} at depth 1", B("\x81\x91\x01\x02"), 1, -1 },
        { "[1, [2, [3]], 4] at depth 3", B("\x93\x01\x92\x02\x91\x03\x04"), 3, 0 },
        { "[1, [2, [3]], 4] at depth 2", B("\x93\x01\x92\x02\x91\x03\x04"), 2, -1 },
        { "a trailing byte", B("\x01\x02"), 4, -1 },
        { "a trailing nil", B("\x91\x01\xc0"), 4, -1 },
        { "two maps", B("\x80\x80"), 4, -1 },
        { "an array short of an element", B("\x92\x01"), 4, -1 },
        { "a map short of a value", B("\x82\x01\x02\x03"), 4, -1 },
        { "a map short of a key and value", B("\x82\x01\x02"), 4, -1 },
        { "str with a trailing byte", B("\xa1" "ab"), 4, -1 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc = mpr_validate(cases[i].bytes, cases[i].len, cases[i].depth);
        if (rc != cases[i].want)
            fail_msg("%s: %d, want %d", cases[i].name, rc, cases[i].want);
    }
    /* depths beyond 63 are clamped to 63 */
    uint8_t deep[80];
    for (int n = 60; n <= 66; n++) {
        memset(deep, 0x91, (size_t)n);
        deep[n] = 0x01;
        int want_big = n <= 63 ? 0 : -1;
        if (mpr_validate(deep, (size_t)n + 1, 1000) != want_big)
            fail_msg("%d nested arrays, max_depth 1000: not %d", n, want_big);
        assert_int_equal(mpr_validate(deep, (size_t)n + 1, (unsigned)n), n <= 63 ? 0 : -1);
        assert_int_equal(mpr_validate(deep, (size_t)n + 1, (unsigned)n - 1), -1);
    }
}

static void test_skip(void **state)
{
    (void)state;
    /* [1, {"a": [2, 3]}, "x"] then 7: skip the array, read the 7 */
    static const uint8_t b[] = { 0x93, 0x01, 0x81, 0xa1, 'a', 0x92, 0x02, 0x03, 0xa1, 'x', 0x07 };
    mpr_t r;
    mpr_init(&r, b, sizeof b);
    assert_int_equal(mpr_skip(&r, 4), 0);
    assert_ptr_equal(r.p, b + 10);
    mpr_val_t v;
    assert_int_equal(mpr_next(&r, &v), 0);
    assert_int_equal(v.type, MPR_UINT);
    assert_int_equal(v.u, 7);
    assert_int_equal(mpr_next(&r, &v), -1); /* nothing left */
    /* the same with too little depth */
    mpr_init(&r, b, sizeof b);
    assert_int_equal(mpr_skip(&r, 2), -1);
    /* skipping over a map's values one by one */
    static const uint8_t m[] = { 0x82, 0xa1, 'k', 0x91, 0xc0, 0xa1, 'l', 0xcb, 0, 0, 0, 0, 0, 0, 0, 0 };
    mpr_init(&r, m, sizeof m);
    assert_int_equal(mpr_next(&r, &v), 0);
    assert_int_equal(v.type, MPR_MAP);
    for (uint32_t i = 0; i < v.n; i++) {
        mpr_val_t k;
        assert_int_equal(mpr_next(&r, &k), 0);
        assert_int_equal(k.type, MPR_STR);
        assert_int_equal(mpr_skip(&r, 4), 0);
    }
    assert_ptr_equal(r.p, m + sizeof m);
}

/* Random well-formed documents from msgpack-c's packer all validate, and
 * every strict prefix of each does not. */
static void pack_random(msgpack_packer *pk, unsigned *seed, int depth)
{
    int kind = (int)(rand_r(seed) % (depth < 5 ? 12 : 9));
    char str[300];
    size_t n;
    switch (kind) {
    case 0:
        msgpack_pack_uint64(pk, (uint64_t)rand_r(seed) << (rand_r(seed) % 40));
        break;
    case 1:
        msgpack_pack_int64(pk, -(int64_t)rand_r(seed) * (rand_r(seed) % 3 ? 1 : 100000));
        break;
    case 2:
        msgpack_pack_double(pk, (double)rand_r(seed) / 7.0);
        break;
    case 3:
        msgpack_pack_float(pk, (float)rand_r(seed));
        break;
    case 4:
        n = (size_t)rand_r(seed) % sizeof str;
        memset(str, 's', n);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, str, n);
        break;
    case 5:
        n = (size_t)rand_r(seed) % 40;
        memset(str, 0xee, n);
        msgpack_pack_bin(pk, n);
        msgpack_pack_bin_body(pk, str, n);
        break;
    case 6:
        n = (size_t)rand_r(seed) % 20;
        memset(str, 1, n);
        msgpack_pack_ext(pk, n, 5);
        msgpack_pack_ext_body(pk, str, n);
        break;
    case 7:
        msgpack_pack_nil(pk);
        break;
    case 8:
        if (rand_r(seed) % 2)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    case 9:
    case 10:
        n = (size_t)rand_r(seed) % (rand_r(seed) % 8 ? 5 : 20);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            pack_random(pk, seed, depth + 1);
        break;
    default:
        n = (size_t)rand_r(seed) % 5;
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < 2 * n; i++)
            pack_random(pk, seed, depth + 1);
        break;
    }
}

static void test_agrees_with_msgpack_c(void **state)
{
    (void)state;
    unsigned seed = 12345;
    for (int doc = 0; doc < 500; doc++) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        pack_random(&pk, &seed, 0);
        if (mpr_validate(sb.data, sb.size, 16) != 0)
            fail_msg("document %d (%zu bytes): not valid", doc, sb.size);
        /* every strict prefix is short of something */
        for (size_t k = 0; k < sb.size; k += 1 + sb.size / 64)
            if (mpr_validate(sb.data, k, 16) != -1)
                fail_msg("document %d cut to %zu of %zu bytes: valid", doc, k, sb.size);
        msgpack_sbuffer_destroy(&sb);
    }
}

/* Random bytes never crash the reader (ASan watches the reads). */
static void test_random_bytes(void **state)
{
    (void)state;
    unsigned seed = 777;
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t)(rand_r(&seed) % 24);
        uint8_t *buf = malloc(n ? n : 1);
        assert_non_null(buf);
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)rand_r(&seed);
        int rc = mpr_validate(buf, n, 16);
        assert_true(rc == 0 || rc == -1);
        mpr_t r;
        mpr_init(&r, buf, n);
        mpr_val_t v;
        while (mpr_next(&r, &v) == 0)
            assert_true(r.p <= buf + n);
        free(buf);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_every_type),
        cmocka_unit_test(test_next_c1_invalid),
        cmocka_unit_test(test_next_every_byte),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_hostile_sizes),
        cmocka_unit_test(test_validate_depth_and_trailing),
        cmocka_unit_test(test_skip),
        cmocka_unit_test(test_agrees_with_msgpack_c),
        cmocka_unit_test(test_random_bytes),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("mpr", tests, NULL, NULL);
}

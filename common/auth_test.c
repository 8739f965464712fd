/* auth_test: tests of common/auth: key files, signing, verifying (MAC, key,
 * clock skew, replay guard) and the sig-line grammar. Run one test alone
 * with `auth_test NAME`. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define NOW 1700000000000LL /* ms */
#define SKEW 30000LL

/* key id "k1": bytes 0..31; "k2": 32 bytes of 0xff; "k3": 32 bytes of 0x42 */
static const char keyfile[] = "# tokmon keys\n"
                              "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                              "k2 //////////////////////////////////////////8=\n"
                              "\n"
                              "  k3\tQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=  \r\n";

static auth_keys_t *keys(void)
{
    char err[256];
    auth_keys_t *k = auth_keys_parse(keyfile, strlen(keyfile), "keys", err, sizeof err);
    if (!k)
        fail_msg("%s", err);
    return k;
}

static const unsigned char *key_of(const auth_keys_t *k, const char *id)
{
    const unsigned char *key = auth_keys_find(k, span_cstr(id));
    assert_non_null(key);
    return key;
}

/* Signs payload with key id at ms into buf; returns the length. */
static size_t sign(char *buf, size_t cap, const char *payload, const auth_keys_t *k,
                   const char *id, int64_t ms)
{
    size_t len = strlen(payload);
    assert_true(len < cap);
    memcpy(buf, payload, len);
    ssize_t n = auth_sign(buf, len, cap, key_of(k, id), id, ms);
    assert_true(n > 0);
    return (size_t)n;
}

static auth_result_t verify(const auth_keys_t *k, auth_guard_t *g, const char *buf, size_t len,
                            int64_t now, int64_t skew)
{
    size_t pl = 0;
    if (!auth_find(buf, len, &pl))
        return AUTH_NONE;
    span_t id = SPAN_NULL;
    auth_result_t r = auth_verify(k, g, buf, len, pl, now, skew, &id);
    if (r == AUTH_OK) {
        assert_non_null(id.p);
        assert_true(id.p > buf + pl && id.p < buf + len); /* points into the sig line */
    }
    return r;
}

/* ---- keys ---------------------------------------------------------------- */

static void test_keygen_round_trip(void **state)
{
    (void)state;
    char a[128], b[128];
    assert_int_equal(auth_keygen("collector-1.prod_eu", a, sizeof a), 0);
    assert_int_equal(auth_keygen("collector-2", b, sizeof b), 0);
    /* "id base64\n", 32 bytes of key in 44 characters */
    assert_memory_equal(a, "collector-1.prod_eu ", 20);
    assert_int_equal(strlen(a), 20 + 44 + 1);
    assert_int_equal(a[strlen(a) - 1], '\n');

    char both[256];
    snprintf(both, sizeof both, "%s%s", a, b);
    char err[256];
    auth_keys_t *k = auth_keys_parse(both, strlen(both), "gen", err, sizeof err);
    if (!k)
        fail_msg("%s", err);
    assert_int_equal(auth_keys_count(k), 2);
    const unsigned char *k1 = auth_keys_find(k, SPAN_LIT("collector-1.prod_eu"));
    const unsigned char *k2 = auth_keys_find(k, SPAN_LIT("collector-2"));
    assert_non_null(k1);
    assert_non_null(k2);
    assert_memory_not_equal(k1, k2, AUTH_KEY_BYTES); /* random, not a constant */
    assert_null(auth_keys_find(k, SPAN_LIT("collector-1")));
    assert_null(auth_keys_find(k, SPAN_LIT("collector-2x")));
    assert_null(auth_keys_find(k, SPAN_LIT("")));

    /* a sender holding one key line decodes the same key */
    unsigned char dk[AUTH_KEY_BYTES];
    assert_int_equal(auth_key_decode(a + 20, 44, dk), 0);
    assert_memory_equal(dk, k1, AUTH_KEY_BYTES);
    assert_int_equal(auth_key_decode(a + 20, 43, dk), -1);
    assert_int_equal(auth_key_decode(a + 20, 45, dk), -1); /* the newline */
    assert_int_equal(auth_key_decode("AAAA", 4, dk), -1);

    /* and a datagram signed by the sender verifies at the receiver (decoded
     * again: a failed decode may have written into dk) */
    assert_int_equal(auth_key_decode(a + 20, 44, dk), 0);
    char buf[256];
    memcpy(buf, "x:1|c", 5);
    ssize_t n = auth_sign(buf, 5, sizeof buf, dk, "collector-1.prod_eu", NOW);
    assert_true(n > 0);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_OK);
    auth_keys_destroy(&k);
    assert_null(k);
    auth_keys_destroy(&k);

    /* ids keygen refuses, and a buffer too small */
    static const char *const bad[] = { "", "a b", "a/b", "k:1", "é",
        "x123456789012345678901234567890123456789012345678901234567890abcd" /* 65 */ };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (auth_keygen(bad[i], a, sizeof a) != -1)
            fail_msg("keygen accepted id '%s'", bad[i]);
    assert_int_equal(auth_keygen("k", a, 20), -1);
    assert_int_equal(auth_keygen("x12345678901234567890123456789012345678901234567890123456789abcd",
                                 both, sizeof both), 0); /* 64 is the longest */
}

typedef struct {
    const char *text;
    const char *want; /* the message, or NULL when it loads */
    size_t count;
} keyfile_case_t;

static void test_key_file_errors(void **state)
{
    (void)state;
    static const keyfile_case_t cases[] = {
        { keyfile, NULL, 3 },
        { "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", NULL, 1 }, /* no final newline */
        { "# only\n# comments\n\n", "f: no keys", 0 },
        { "", "f: no keys", 0 },
        { "k1\n", "f:1: expected 'key-id base64-key'", 0 },
        { "# c\n\nk1   \n", "f:3: expected 'key-id base64-key'", 0 },
        { "k1 notbase64!\n", "f:1: key 'k1' is not 32 bytes of base64", 0 },
        { "k1 AAECAwQFBgcICQoLDA0ODw==\n", "f:1: key 'k1' is not 32 bytes of base64", 0 }, /* 16 */
        { "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8fHw==\n",
          "f:1: key 'k1' is not 32 bytes of base64", 0 }, /* 34 */
        { "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= extra\n",
          "f:1: key 'k1' is not 32 bytes of base64", 0 },
        { "k/1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", "f:1: expected 'key-id", 0 },
        { "x123456789012345678901234567890123456789012345678901234567890abcd "
          "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", "f:1: expected 'key-id", 0 },
        { "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
          "k2 //////////////////////////////////////////8=\n"
          "k1 //////////////////////////////////////////8=\n",
          "f:3: key id 'k1' appears twice", 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char err[256] = "";
        auth_keys_t *k = auth_keys_parse(cases[i].text, strlen(cases[i].text), "f", err, sizeof err);
        if (!cases[i].want) {
            if (!k)
                fail_msg("case %zu: %s", i, err);
            assert_int_equal(auth_keys_count(k), cases[i].count);
            auth_keys_destroy(&k);
            continue;
        }
        if (k) {
            auth_keys_destroy(&k);
            fail_msg("case %zu: loaded, want \"%s\"", i, cases[i].want);
        }
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: \"%s\", want \"%s\"", i, err, cases[i].want);
    }
    /* the k3 line had leading blanks, a tab and CRLF */
    auth_keys_t *k = keys();
    unsigned char want[AUTH_KEY_BYTES];
    memset(want, 0x42, sizeof want);
    assert_memory_equal(key_of(k, "k3"), want, AUTH_KEY_BYTES);
    auth_keys_destroy(&k);
}

static void test_key_file_load(void **state)
{
    (void)state;
    char path[] = "/tmp/auth_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, keyfile, strlen(keyfile)), (ssize_t)strlen(keyfile));
    close(fd);
    char err[256];
    auth_keys_t *k = auth_keys_load(path, err, sizeof err);
    if (!k)
        fail_msg("%s", err);
    assert_int_equal(auth_keys_count(k), 3);
    auth_keys_destroy(&k);

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nbad\n", f);
    fclose(f);
    assert_null(auth_keys_load(path, err, sizeof err));
    char want[128];
    snprintf(want, sizeof want, "%s:2: expected", path);
    assert_non_null(strstr(err, want));

    f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 70000; i++)
        fputc('#', f);
    fclose(f);
    assert_null(auth_keys_load(path, err, sizeof err));
    assert_non_null(strstr(err, "larger than 64 KiB"));
    unlink(path);

    assert_null(auth_keys_load("/nonexistent/keys", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/keys"));
}

/* ---- signing and verifying ----------------------------------------------- */

static void test_sign_known_answer(void **state)
{
    (void)state;
    /* HMAC-SHA-512 truncated to 32 bytes, computed apart (Python hmac) over
     * "llm.tokens:450|c|#provider:openai\n|sig:k1:1700000000000:" with key
     * bytes 0..31: the key id and time are inside the MAC */
    auth_keys_t *k = keys();
    char buf[256];
    size_t n = sign(buf, sizeof buf, "llm.tokens:450|c|#provider:openai", k, "k1", NOW);
    const char *want = "llm.tokens:450|c|#provider:openai\n|sig:k1:1700000000000:"
                       "V2nCAyv9dT+T2hS/LAHxN3/EWUDiyZVGg07rTJpRIS4=";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(buf, want, n);
    assert_true(n <= strlen("llm.tokens:450|c|#provider:openai") + AUTH_SIG_MAX);
    auth_keys_destroy(&k);
}

static void test_sign_errors(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    char buf[256] = "payload";
    assert_int_equal(auth_sign(buf, 7, sizeof buf, key_of(k, "k1"), "bad id", NOW), -1);
    assert_int_equal(auth_sign(buf, 7, sizeof buf, key_of(k, "k1"), "", NOW), -1);
    assert_int_equal(auth_sign(buf, 7, sizeof buf, key_of(k, "k1"), "k1", -1), -1);
    /* room: payload 7 + "\n|sig:k1:1700000000000:" 23 + 44 of base64 + NUL */
    assert_int_equal(auth_sign(buf, 7, 7 + 23 + 44, key_of(k, "k1"), "k1", NOW), -1);
    assert_int_equal(auth_sign(buf, 7, 7 + 23 + 45, key_of(k, "k1"), "k1", NOW), 7 + 23 + 44);
    /* the longest key id and time fit in AUTH_SIG_MAX */
    char id[AUTH_MAX_KEY_ID + 1];
    memset(id, 'a', AUTH_MAX_KEY_ID);
    id[AUTH_MAX_KEY_ID] = '\0';
    char big[512];
    ssize_t n = auth_sign(big, 0, sizeof big, key_of(k, "k1"), id, INT64_MAX);
    assert_true(n > 0);
    assert_true((size_t)n <= AUTH_SIG_MAX);
    auth_keys_destroy(&k);
}

static void test_sign_verify_ok(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    static const char *const payloads[] = {
        "llm.tokens:450|c|#provider:openai,model:gpt-4o,user:u1,type:input",
        "{\"provider\":\"openai\",\"model\":\"gpt-4o\",\"input_tokens\":10}",
        "r1:1|c\nr2:2|c\nr3:3|g", /* several records, one signature */
        "",                       /* an empty payload is still signed */
    };
    for (size_t i = 0; i < ARRAY_LEN(payloads); i++) {
        char buf[512];
        size_t n = sign(buf, sizeof buf, payloads[i], k, "k2", NOW);
        size_t pl = 99;
        assert_true(auth_find(buf, n, &pl));
        assert_int_equal(pl, strlen(payloads[i]));
        span_t id = SPAN_NULL;
        assert_int_equal(auth_verify(k, NULL, buf, n, pl, NOW, SKEW, &id), AUTH_OK);
        assert_true(span_eq_cstr(id, "k2"));
    }
    auth_keys_destroy(&k);
}

static void test_tampering(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    char orig[256], buf[256];
    const char *payload = "llm.tokens:450|c|#user:u1";
    size_t n = sign(orig, sizeof orig, payload, k, "k1", NOW);
    size_t sig = strlen(payload) + 1; /* the '|' of the sig line */

    /* a payload byte */
    memcpy(buf, orig, n);
    buf[12] = '9';
    assert_int_equal(verify(k, NULL, buf, n, NOW, SKEW), AUTH_BAD_MAC);
    /* the key id, to another known key */
    memcpy(buf, orig, n);
    buf[sig + 6] = '2'; /* |sig:k1 -> |sig:k2 */
    assert_int_equal(verify(k, NULL, buf, n, NOW, SKEW), AUTH_BAD_MAC);
    /* the time, still within the skew */
    memcpy(buf, orig, n);
    assert_int_equal(buf[sig + 8 + 12], '0'); /* the last digit of 1700000000000 */
    buf[sig + 8 + 12] = '1';
    assert_int_equal(verify(k, NULL, buf, n, NOW, SKEW), AUTH_BAD_MAC);
    /* the MAC itself */
    memcpy(buf, orig, n);
    buf[n - 44] = buf[n - 44] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(k, NULL, buf, n, NOW, SKEW), AUTH_BAD_MAC);
    /* a byte dropped from, or added to, the payload */
    memcpy(buf, orig + 1, n - 1);
    assert_int_equal(verify(k, NULL, buf, n - 1, NOW, SKEW), AUTH_BAD_MAC);
    buf[0] = ' ';
    memcpy(buf + 1, orig, n);
    assert_int_equal(verify(k, NULL, buf, n + 1, NOW, SKEW), AUTH_BAD_MAC);
    /* the untouched datagram still verifies */
    assert_int_equal(verify(k, NULL, orig, n, NOW, SKEW), AUTH_OK);
    auth_keys_destroy(&k);
}

static void test_unknown_key(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    char buf[256];
    memcpy(buf, "x:1|c", 5);
    unsigned char other[AUTH_KEY_BYTES] = { 7 };
    ssize_t n = auth_sign(buf, 5, sizeof buf, other, "k9", NOW);
    assert_true(n > 0);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_UNKNOWN_KEY);
    /* ids are exact: not a prefix, not case-folded */
    n = auth_sign(buf, 5, sizeof buf, key_of(k, "k1"), "K1", NOW);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_UNKNOWN_KEY);
    n = auth_sign(buf, 5, sizeof buf, key_of(k, "k1"), "k10", NOW);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_UNKNOWN_KEY);
    auth_keys_destroy(&k);
}

typedef struct {
    int64_t signed_at; /* relative to NOW */
    auth_result_t want;
} skew_case_t;

static void test_skew(void **state)
{
    (void)state;
    static const skew_case_t cases[] = {
        { 0, AUTH_OK },
        { -SKEW, AUTH_OK },          /* the oldest accepted */
        { -SKEW - 1, AUTH_STALE },   /* too old */
        { -86400000, AUTH_STALE },
        { +SKEW, AUTH_OK },          /* the furthest ahead accepted */
        { +SKEW + 1, AUTH_STALE },   /* too far in the future */
        { +86400000, AUTH_STALE },
        { -NOW, AUTH_STALE },        /* time 0 */
    };
    auth_keys_t *k = keys();
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char buf[256];
        size_t n = sign(buf, sizeof buf, "x:1|c", k, "k1", NOW + cases[i].signed_at);
        auth_result_t r = verify(k, NULL, buf, n, NOW, SKEW);
        if (r != cases[i].want)
            fail_msg("signed at now%+lld ms: %d, want %d", (long long)cases[i].signed_at, (int)r,
                     (int)cases[i].want);
    }
    /* a stale datagram with a bad MAC is a bad MAC: the MAC is checked first */
    char buf[256];
    size_t n = sign(buf, sizeof buf, "x:1|c", k, "k1", NOW - 10 * SKEW);
    buf[0] = 'y';
    assert_int_equal(verify(k, NULL, buf, n, NOW, SKEW), AUTH_BAD_MAC);
    auth_keys_destroy(&k);
}

static void test_replay(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    auth_guard_t *g = auth_guard_new(1000, SKEW);
    char a[256], b[256];
    size_t na = sign(a, sizeof a, "x:1|c", k, "k1", NOW);
    size_t nb = sign(b, sizeof b, "x:1|c", k, "k1", NOW + 1); /* same payload, new time */
    assert_int_equal(auth_guard_size(g), 0);
    assert_int_equal(verify(k, g, a, na, NOW, SKEW), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 1);
    assert_int_equal(verify(k, g, a, na, NOW, SKEW), AUTH_REPLAY);
    assert_int_equal(verify(k, g, a, na, NOW + 1000, SKEW), AUTH_REPLAY);
    assert_int_equal(verify(k, g, b, nb, NOW, SKEW), AUTH_OK);
    assert_int_equal(verify(k, g, b, nb, NOW + 5, SKEW), AUTH_REPLAY);
    /* the same datagram with a trailing newline is the same MAC */
    a[na] = '\n';
    assert_int_equal(verify(k, g, a, na + 1, NOW, SKEW), AUTH_REPLAY);
    assert_int_equal(auth_guard_size(g), 2);
    /* a datagram that fails is not remembered */
    char c[256];
    size_t nc = sign(c, sizeof c, "x:2|c", k, "k1", NOW);
    c[0] = 'y';
    assert_int_equal(verify(k, g, c, nc, NOW, SKEW), AUTH_BAD_MAC);
    assert_int_equal(auth_guard_size(g), 2);
    /* without a guard there is no replay check */
    assert_int_equal(verify(k, NULL, b, nb, NOW, SKEW), AUTH_OK);
    assert_int_equal(verify(k, NULL, b, nb, NOW, SKEW), AUTH_OK);
    auth_guard_destroy(&g);
    assert_null(g);
    auth_guard_destroy(&g);
    auth_keys_destroy(&k);
}

static void test_guard_rotation(void **state)
{
    (void)state;
    auth_keys_t *k = keys();
    const int64_t skew = 1000; /* the guard rotates every 2 x skew = 2 s */
    auth_guard_t *g = auth_guard_new(1000, skew);
    char d[4][256];
    size_t n[4];
    for (int i = 0; i < 4; i++) {
        char p[32];
        snprintf(p, sizeof p, "x:%d|c", i);
        n[i] = sign(d[i], sizeof d[i], p, k, "k1", NOW);
    }
    assert_int_equal(verify(k, g, d[0], n[0], NOW, skew), AUTH_OK);
    assert_int_equal(verify(k, g, d[1], n[1], NOW, skew), AUTH_OK);
    assert_int_equal(verify(k, g, d[2], n[2], NOW + 1999, skew), AUTH_STALE); /* 1999 ms old */
    assert_int_equal(auth_guard_size(g), 2);
    /* while a MAC can still pass the skew check, the guard remembers it: here
     * the receiver's skew is wider than the guard's, to see what it holds */
    const int64_t wide = 1000000;
    assert_int_equal(verify(k, g, d[0], n[0], NOW + 1999, wide), AUTH_REPLAY);
    /* first rotation (2 x skew after the first check): still held */
    assert_int_equal(verify(k, g, d[0], n[0], NOW + 2000, wide), AUTH_REPLAY);
    assert_int_equal(verify(k, g, d[2], n[2], NOW + 2000, wide), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 3);
    assert_int_equal(verify(k, g, d[1], n[1], NOW + 3999, wide), AUTH_REPLAY);
    /* second rotation: MACs from before the first are forgotten, newer kept */
    assert_int_equal(verify(k, g, d[3], n[3], NOW + 4000, wide), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 2);
    assert_int_equal(verify(k, g, d[2], n[2], NOW + 4000, wide), AUTH_REPLAY);
    assert_int_equal(verify(k, g, d[0], n[0], NOW + 4000, wide), AUTH_OK); /* forgotten */
    /* with the guard's own skew those forgotten MACs are long stale anyway */
    assert_int_equal(verify(k, g, d[1], n[1], NOW + 4000, skew), AUTH_STALE);
    /* after a long quiet spell one check rotates once: what the current
     * generation held (d3, d0) is kept one more window, the rest goes */
    assert_int_equal(verify(k, g, d[1], n[1], NOW + 100000, wide), AUTH_OK);
    assert_int_equal(verify(k, g, d[3], n[3], NOW + 100000, wide), AUTH_REPLAY);
    assert_int_equal(verify(k, g, d[0], n[0], NOW + 100000, wide), AUTH_REPLAY);
    assert_int_equal(verify(k, g, d[2], n[2], NOW + 100000, wide), AUTH_OK);
    assert_int_equal(verify(k, g, d[1], n[1], NOW + 100001, wide), AUTH_REPLAY);
    auth_guard_destroy(&g);
    auth_keys_destroy(&k);
}

static void test_guard_capacity(void **state)
{
    (void)state;
    /* cap 16 MACs per generation (the minimum; 4 is raised to it). Skew an
     * hour, so no rotation by time: only by capacity. */
    auth_keys_t *k = keys();
    const int64_t skew = 3600000;
    auth_guard_t *g = auth_guard_new(4, skew);
    enum { N = 40 };
    static char d[N][128];
    size_t n[N];
    for (int i = 0; i < N; i++) {
        char p[32];
        snprintf(p, sizeof p, "x:%d|c", i);
        n[i] = sign(d[i], sizeof d[i], p, k, "k1", NOW + i); /* signed at NOW+i */
    }
    const int64_t now = NOW + 100;
    /* generation A: 0..15 */
    for (int i = 0; i < 16; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 16);
    /* A is full: the next goes into generation B (nothing forgotten yet) */
    for (int i = 16; i < 32; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 32);
    for (int i = 0; i < 32; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_REPLAY);
    /* B is full too: making room forgets A while its MACs are still within
     * the skew. So A's newest signed time (NOW+15) becomes a floor, and
     * nothing signed at or before it passes any more: a replay of A is
     * refused as stale rather than accepted. */
    assert_int_equal(verify(k, g, d[32], n[32], now, skew), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 17);
    for (int i = 0; i < 16; i++)
        if (verify(k, g, d[i], n[i], now, skew) != AUTH_STALE)
            fail_msg("a replay of datagram %d was not refused", i);
    /* B is still remembered */
    for (int i = 16; i < 33; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_REPLAY);
    /* an unseen datagram signed before the floor is refused too */
    char late[128];
    size_t nl = sign(late, sizeof late, "x:late|c", k, "k1", NOW + 15);
    assert_int_equal(verify(k, g, late, nl, now, skew), AUTH_STALE);
    nl = sign(late, sizeof late, "x:late|c", k, "k1", NOW + 16);
    assert_int_equal(verify(k, g, late, nl, now, skew), AUTH_OK);
    /* the rest fit in the new generation */
    for (int i = 33; i < 40; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    assert_int_equal(auth_guard_size(g), 16 + 9);
    auth_guard_destroy(&g);

    /* the datagram that triggers the forgetting can itself be below the new
     * floor: it is refused, not accepted */
    g = auth_guard_new(16, skew);
    for (int i = 10; i < 26; i++) /* A: NOW+10..NOW+25 */
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    for (int i = 26; i < 40; i++) /* B: NOW+26..NOW+39 */
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    for (int i = 0; i < 2; i++)   /* B: NOW+0, NOW+1: B is full */
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_OK);
    /* NOW+5 was never seen, but making room forgets A (newest NOW+25) */
    assert_int_equal(verify(k, g, d[5], n[5], now, skew), AUTH_STALE);
    for (int i = 10; i < 26; i++)
        assert_int_equal(verify(k, g, d[i], n[i], now, skew), AUTH_STALE);
    auth_guard_destroy(&g);
    auth_keys_destroy(&k);
}

/* ---- the sig line -------------------------------------------------------- */

#define GOOD_MAC "V2nCAyv9dT+T2hS/LAHxN3/EWUDiyZVGg07rTJpRIS4="

static void test_malformed_sig_lines(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "|sig:",
        "|sig:k1",
        "|sig:k1:",
        "|sig:k1:1700000000000",
        "|sig:k1::" GOOD_MAC,                          /* no time */
        "|sig::1700000000000:" GOOD_MAC,               /* empty id */
        "|sig:k 1:1700000000000:" GOOD_MAC,            /* id with a space */
        "|sig:k/1:1700000000000:" GOOD_MAC,
        "|sig:x123456789012345678901234567890123456789012345678901234567890abcd:1:" GOOD_MAC,
        "|sig:k1:1700000000000000:" GOOD_MAC,          /* 16 digits */
        "|sig:k1:17000000000x0:" GOOD_MAC,
        "|sig:k1:-1700000000000:" GOOD_MAC,
        "|sig:k1:+1700000000000:" GOOD_MAC,
        "|sig:k1: 1700000000000:" GOOD_MAC,
        "|sig:k1:1700000000000:",                      /* no MAC */
        "|sig:k1:1700000000000:!!!!",                  /* not base64 */
        "|sig:k1:1700000000000:V2nCAyv9dT+T2hS/LAHxN3/EWUDiyZVGg07rTJpRIQ==", /* 31 bytes */
        "|sig:k1:1700000000000:" GOOD_MAC "AAAA",       /* 35 bytes */
        "|sig:k1:1700000000000:" GOOD_MAC " ",          /* trailing blank */
        "|sig:k1:1700000000000:" GOOD_MAC ":x",
        "|sig:k1:1700000000000:V2nCAyv9dT-T2hS_LAHxN3_EWUDiyZVGg07rTJpRIS4=", /* URL-safe */
        "|sig:k1:1700000000000:V2nCAyv9dT+T2hS/LAHxN3/EWUDiyZVGg07rTJpRIS4",  /* no padding */
    };
    auth_keys_t *k = keys();
    for (size_t i = 0; i < ARRAY_LEN(lines); i++) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "llm.tokens:450|c|#provider:openai\n%s", lines[i]);
        size_t pl = 0;
        if (!auth_find(buf, (size_t)n, &pl))
            fail_msg("%s: not found", lines[i]);
        assert_int_equal(pl, 33);
        span_t id = SPAN_NULL;
        auth_result_t r = auth_verify(k, NULL, buf, (size_t)n, pl, NOW, SKEW, &id);
        if (r != AUTH_MALFORMED)
            fail_msg("%s: %d, want AUTH_MALFORMED", lines[i], (int)r);
        assert_null(id.p);
    }
    /* the well-formed line these were made from */
    char buf[256];
    int n = snprintf(buf, sizeof buf, "llm.tokens:450|c|#provider:openai\n|sig:k1:1700000000000:"
                     GOOD_MAC);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_OK);
    /* 15 digits of time parse (and are then far in the future) */
    n = snprintf(buf, sizeof buf, "x\n|sig:k1:999999999999999:" GOOD_MAC);
    assert_int_equal(verify(k, NULL, buf, (size_t)n, NOW, SKEW), AUTH_BAD_MAC);
    auth_keys_destroy(&k);
}

static void test_trailing_newlines(void **state)
{
    (void)state;
    static const char *const tails[] = { "\n", "\r\n", "\n\n", "\r\n\r\n" };
    auth_keys_t *k = keys();
    for (size_t i = 0; i < ARRAY_LEN(tails); i++) {
        char buf[256];
        size_t n = sign(buf, sizeof buf, "a:1|c\nb:2|c", k, "k3", NOW);
        size_t t = strlen(tails[i]);
        memcpy(buf + n, tails[i], t);
        size_t pl = 0;
        assert_true(auth_find(buf, n + t, &pl));
        assert_int_equal(pl, 11);
        span_t id = SPAN_NULL;
        assert_int_equal(auth_verify(k, NULL, buf, n + t, pl, NOW, SKEW, &id), AUTH_OK);
        assert_true(span_eq_cstr(id, "k3"));
    }
    auth_keys_destroy(&k);
}

typedef struct {
    const char *dgram;
    bool found;
    size_t payload_len;
} find_case_t;

static void test_find(void **state)
{
    (void)state;
    static const find_case_t cases[] = {
        { "", false, 0 },
        { "\n", false, 0 },
        { "llm.tokens:1|c", false, 0 },
        { "llm.tokens:1|c\n", false, 0 },
        { "a:1|c\nb:1|c\n", false, 0 },
        { "|sig:k1:1:" GOOD_MAC, false, 0 },     /* only a sig line: nothing signed */
        { "|sig:k1:1:" GOOD_MAC "\n", false, 0 },
        { "x\n|si", false, 0 },
        { "x\n|sig", false, 0 },
        { "x\n|SIG:k1:1:" GOOD_MAC, false, 0 },
        { "x\n |sig:k1:1:" GOOD_MAC, false, 0 },
        { "x\n|sig:k1:1:" GOOD_MAC "\nmore", false, 0 }, /* not the last line */
        { "x|sig:k1:1:" GOOD_MAC, false, 0 },             /* not on its own line */
        { "x\n|sig:", true, 1 },
        { "x\n|sig:anything", true, 1 },
        { "\n|sig:k1:1:" GOOD_MAC, true, 0 },             /* an empty payload */
        { "a:1|c\nb:2|c\n|sig:k1:1:" GOOD_MAC, true, 11 },
        { "a:1|c\r\n|sig:k1:1:" GOOD_MAC "\r\n", true, 6 }, /* the payload keeps its \r */
        { "a\n|sig:k1:1:x\n|sig:k1:1:" GOOD_MAC, true, 13 }, /* only the last one counts */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t len = strlen(cases[i].dgram);
        char *copy = malloc(len ? len : 1); /* exact size: ASan sees any overread */
        assert_non_null(copy);
        memcpy(copy, cases[i].dgram, len);
        size_t pl = 12345;
        bool found = auth_find(copy, len, &pl);
        free(copy);
        if (found != cases[i].found)
            fail_msg("case %zu: found %d, want %d", i, found, cases[i].found);
        if (found && pl != cases[i].payload_len)
            fail_msg("case %zu: payload %zu, want %zu", i, pl, cases[i].payload_len);
        if (!found)
            assert_int_equal(pl, 12345);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keygen_round_trip),
        cmocka_unit_test(test_key_file_errors),
        cmocka_unit_test(test_key_file_load),
        cmocka_unit_test(test_sign_known_answer),
        cmocka_unit_test(test_sign_errors),
        cmocka_unit_test(test_sign_verify_ok),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_skew),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_guard_rotation),
        cmocka_unit_test(test_guard_capacity),
        cmocka_unit_test(test_malformed_sig_lines),
        cmocka_unit_test(test_trailing_newlines),
        cmocka_unit_test(test_find),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}

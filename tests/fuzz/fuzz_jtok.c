/* fuzz_jtok: libFuzzer target for common/json (and dec_parse on every number
 * it finds). Checks that counting and real parses agree, that every success
 * has sound structure, that strings decode to valid UTF-8 no longer than
 * their raw text, and that every JSON number is valid dec syntax.
 * Build: clang -fsanitize=fuzzer,address,undefined (see docs or the Makefile). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dec.h"
#include "jtok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                \
    do {                                                                                        \
        if (!(c)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (i + (size_t)len > n)
            return false;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += (size_t)len;
    }
    return true;
}

static void check_number(const char *buf, const jtok_t *t)
{
    static const int scales[] = { 0, 9, 24, 38 };
    for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++) {
        __int128 ex = 0, he = 0;
        errno = 0;
        int rc_he = dec_parse(buf + t->start, t->len, scales[i], DEC_HALF_EVEN, &he);
        CHECK(rc_he == 0 || errno == ERANGE); /* every JSON number is dec syntax */
        errno = 0;
        int rc_ex = dec_parse(buf + t->start, t->len, scales[i], DEC_EXACT, &ex);
        CHECK(rc_ex == 0 || errno == ERANGE || errno == EDOM);
        if (rc_ex == 0)
            CHECK(rc_he == 0 && ex == he);
    }
}

static void check_string(const char *buf, const jtok_t *t)
{
    char *out = malloc((size_t)t->len + 1);
    CHECK(out);
    ssize_t n = jtok_str_decode(buf, t, out, (size_t)t->len + 1);
    CHECK(n >= 0 && (size_t)n <= t->len && out[n] == '\0');
    CHECK(t->escaped || ((size_t)n == t->len && memcmp(out, buf + t->start, t->len) == 0));
    CHECK(utf8_valid((const unsigned char *)out, (size_t)n));
    if (memchr(out, '\0', (size_t)n) == NULL)
        CHECK(jtok_str_eq(buf, t, out));
    /* one byte too few always fails cleanly */
    if (n > 0) {
        errno = 0;
        CHECK(jtok_str_decode(buf, t, out, (size_t)n) == -1 && errno == ERANGE && out[0] == '\0');
    }
    free(out);
}

static void check_tokens(const char *buf, size_t len, const jtok_t *t, int n)
{
    CHECK(t[0].next == (uint32_t)n);
    for (int i = 0; i < n; i++) {
        const jtok_t *k = &t[i];
        CHECK((size_t)k->start + k->len <= len);
        switch (k->type) {
        case JTOK_OBJECT:
        case JTOK_ARRAY: {
            CHECK(k->next > (uint32_t)i && k->next <= (uint32_t)n);
            CHECK(buf[k->start] == (k->type == JTOK_OBJECT ? '{' : '['));
            CHECK(buf[k->start + k->len - 1] == (k->type == JTOK_OBJECT ? '}' : ']'));
            uint32_t c = (uint32_t)i + 1, count = 0;
            while (c < k->next) {
                if (k->type == JTOK_OBJECT) {
                    CHECK(t[c].type == JTOK_STRING);
                    /* lookup by this key finds this pair or an earlier duplicate
                     * (first 64 pairs only: the check is quadratic) */
                    char key[64];
                    if (count < 64 && t[c].len < sizeof key && jtok_str_decode(buf, &t[c], key, sizeof key) >= 0 &&
                        memchr(key, '\0', t[c].len) == NULL) {
                        int v = jtok_obj_get(buf, t, i, key);
                        CHECK(v > i && (uint32_t)v <= c + 1 && jtok_str_eq(buf, &t[v - 1], key));
                    }
                    c++;
                }
                CHECK(c < k->next && t[c].next > c);
                c = t[c].next;
                count++;
            }
            CHECK(c == k->next && count == k->size);
            break;
        }
        case JTOK_STRING:
            CHECK(k->start > 0 && buf[k->start - 1] == '"' && buf[k->start + k->len] == '"');
            CHECK(k->next == (uint32_t)i + 1 && k->size == 0);
            check_string(buf, k);
            break;
        case JTOK_NUMBER:
            CHECK(k->next == (uint32_t)i + 1 && k->size == 0 && k->len > 0);
            check_number(buf, k);
            break;
        default:
            CHECK(k->next == (uint32_t)i + 1 && k->size == 0);
            CHECK(k->len == (k->type == JTOK_FALSE ? 5u : 4u));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    /* the depth limit varies with the input so that EDEPTH is reached often */
    unsigned depth = size ? 1 + data[size - 1] % 48 : 8;
    jtok_err_t cerr, err;
    int count = jtok_parse(buf, size, NULL, 0, depth, &cerr);
    CHECK(count == -1 || count >= 1);
    CHECK(cerr.code >= 0 && cerr.code < JTOK_ECOUNT_ && (count < 0) == (cerr.code != JTOK_OK));
    CHECK(cerr.offset <= size);

    size_t cap = size + 1;
    jtok_t *toks = malloc(cap * sizeof *toks);
    CHECK(toks);
    int n = jtok_parse(buf, size, toks, cap, depth, &err);
    CHECK(n == count && err.code == cerr.code && err.offset == cerr.offset);
    if (n > 0) {
        check_tokens(buf, size, toks, n);
        /* too small an array fails with JTOK_ETOKENS or an earlier error */
        jtok_err_t e2;
        CHECK(jtok_parse(buf, size, toks, (size_t)n - 1, depth, &e2) == -1 && e2.code == JTOK_ETOKENS);
    } else if (size > 0) {
        jtok_err_t e2;
        int n2 = jtok_parse(buf, size, toks, 1, depth, &e2);
        CHECK(n2 == -1 && (e2.code == JTOK_ETOKENS || (e2.code == err.code && e2.offset == err.offset)));
    }
    free(toks);
    return 0;
}

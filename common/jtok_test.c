/* jtok_test: table-driven tests of common/json, plus a real-data test reading
 * the price table. Usage: jtok_test [FILTER [PRICES]] where FILTER is a cmocka
 * test-name pattern ("*" or "" for all) and PRICES the price table (else
 * $TOKMON_PRICES, else $TOKMON_REPO/data/model_prices.json, else
 * data/model_prices.json relative to the directory the test was built from). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dec.h"
#include "jtok.h"

static const char *prices_path;

/* Renders tokens compactly for comparison with a table: one item per token,
 * space-separated: o<size>><next> / a<size>><next> for containers, s:<raw>
 * (e:<raw> when escaped) for strings, n:<raw> for numbers, t f z for
 * true false null. A scalar's next is always checked to be its index + 1. */
static void dump(const char *buf, const jtok_t *t, int n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < n && o < cap; i++) {
        int w = 0;
        const char *sep = i ? " " : "";
        switch (t[i].type) {
        case JTOK_OBJECT:
        case JTOK_ARRAY:
            w = snprintf(out + o, cap - o, "%s%c%u>%u", sep, t[i].type == JTOK_OBJECT ? 'o' : 'a', t[i].size,
                         t[i].next);
            break;
        case JTOK_STRING:
        case JTOK_NUMBER:
            w = snprintf(out + o, cap - o, "%s%c:%.*s", sep,
                         t[i].type == JTOK_NUMBER ? 'n' : t[i].escaped ? 'e' : 's', (int)t[i].len,
                         buf + t[i].start);
            break;
        case JTOK_TRUE: w = snprintf(out + o, cap - o, "%st", sep); break;
        case JTOK_FALSE: w = snprintf(out + o, cap - o, "%sf", sep); break;
        case JTOK_NULL: w = snprintf(out + o, cap - o, "%sz", sep); break;
        }
        o += (size_t)w;
    }
}

/* Structural invariants every successful parse must have. Returns a
 * description of the first broken one, or NULL. */
static const char *check_invariants(const char *buf, size_t len, const jtok_t *t, int n)
{
    for (int i = 0; i < n; i++) {
        const jtok_t *k = &t[i];
        if ((size_t)k->start + k->len > len)
            return "span outside the buffer";
        switch (k->type) {
        case JTOK_OBJECT:
        case JTOK_ARRAY: {
            char open = k->type == JTOK_OBJECT ? '{' : '[', close = k->type == JTOK_OBJECT ? '}' : ']';
            if (k->len < 2 || buf[k->start] != open || buf[k->start + k->len - 1] != close)
                return "container span is not its brackets";
            if (k->next <= (uint32_t)i || k->next > (uint32_t)n)
                return "container next out of range";
            /* walk the children with next: they must end exactly at next */
            uint32_t c = (uint32_t)i + 1, count = 0;
            while (c < k->next) {
                if (k->type == JTOK_OBJECT) {
                    if (t[c].type != JTOK_STRING || t[c].next != c + 1)
                        return "object key is not a string";
                    c++;
                }
                if (c >= k->next || t[c].next <= c)
                    return "child next broken";
                if (t[c].start < k->start || t[c].start + t[c].len > k->start + k->len)
                    return "child outside its parent";
                c = t[c].next;
                count++;
            }
            if (c != k->next || count != k->size)
                return "size does not match the children";
            break;
        }
        case JTOK_STRING:
            if (k->start == 0 || buf[k->start - 1] != '"' || buf[k->start + k->len] != '"')
                return "string span is not inside quotes";
            if (k->escaped != (memchr(buf + k->start, '\\', k->len) != NULL))
                return "escaped flag wrong";
            /* fall through */
        default:
            if (k->type != JTOK_STRING && k->size != 0)
                return "scalar with a size";
            if (k->next != (uint32_t)i + 1)
                return "scalar next is not i + 1";
        }
    }
    return NULL;
}

/* ---- jtok_parse: the big table ----------------------------------------- */

typedef struct {
    const char *in;
    size_t len;
    unsigned depth;
    int code;          /* JTOK_OK or the error */
    size_t off;        /* error offset */
    const char *dump;  /* expected tokens when JTOK_OK */
} parse_case_t;

#define S(x) x, sizeof(x) - 1
#define OK(x, d, dumped) { S(x), d, JTOK_OK, 0, dumped }
#define BAD(x, code, off) { S(x), 64, code, off, NULL }

static const parse_case_t parse_cases[] = {
    /* scalars at the top */
    OK("0", 64, "n:0"),
    OK("  -0.5e+10 ", 64, "n:-0.5e+10"),
    OK("\"abc\"", 64, "s:abc"),
    OK("\"\"", 64, "s:"),
    OK("true", 64, "t"),
    OK("false", 0, "f"),
    OK("null", 0, "z"),
    OK("\t\r\n null \n", 64, "z"),
    /* numbers the grammar allows */
    OK("-0", 64, "n:-0"),
    OK("0.0", 64, "n:0.0"),
    OK("1E5", 64, "n:1E5"),
    OK("1e-5", 64, "n:1e-5"),
    OK("1E+05", 64, "n:1E+05"),
    OK("-1.5e-300", 64, "n:-1.5e-300"),
    OK("123456789012345678901234567890", 64, "n:123456789012345678901234567890"),
    OK("[0,-0,0e0,0.5E-0]", 64, "a4>5 n:0 n:-0 n:0e0 n:0.5E-0"),
    OK("[1e1,2]", 64, "a2>3 n:1e1 n:2"),
    /* containers */
    OK("[]", 64, "a0>1"),
    OK("{}", 64, "o0>1"),
    OK("[ ]", 64, "a0>1"),
    OK("{ \n}", 64, "o0>1"),
    OK("[[]]", 64, "a1>2 a0>2"),
    OK("[1,[2,[3]],{\"a\":[]},4]", 64, "a4>10 n:1 a2>6 n:2 a1>6 n:3 o1>9 s:a a0>9 n:4"),
    OK(" \t\r\n{ \"a\" : 1 , \"b\" :[ true , null ] }\n", 64, "o2>7 s:a n:1 s:b a2>7 t z"),
    OK("{\"a\":{\"b\":{}},\"c\":[{},[]]}", 64, "o2>9 s:a o1>5 s:b o0>5 s:c a2>9 o0>8 a0>9"),
    OK("{\"a\":1,\"a\":2}", 64, "o2>5 s:a n:1 s:a n:2"), /* duplicates kept */
    OK("{\"\":\"\"}", 64, "o1>3 s: s:"),
    OK("[\"a\",true,false,null,{},[],0]", 64, "a7>8 s:a t f z o0>6 a0>7 n:0"),
    /* strings: escapes and UTF-8 */
    OK("\"a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti\"", 64, "e:a\\\"b\\\\c\\/d\\be\\ff\\ng\\rh\\ti"),
    OK("\"\\u00e9\\uD83D\\uDE00\"", 64, "e:\\u00e9\\uD83D\\uDE00"),
    OK("\"\\ud83d\\ude00\"", 64, "e:\\ud83d\\ude00"),
    OK("\"\\uD800\\uDC00\"", 64, "e:\\uD800\\uDC00"),  /* U+10000 */
    OK("\"\\uDBFF\\uDFFF\"", 64, "e:\\uDBFF\\uDFFF"),  /* U+10FFFF */
    OK("\"\\u0000\"", 64, "e:\\u0000"),
    OK("\"\\uFFFF\\uFFFE\\uD7FF\\uE000\"", 64, "e:\\uFFFF\\uFFFE\\uD7FF\\uE000"),
    OK("\"\xC3\xA9\"", 64, "s:\xC3\xA9"),                   /* é */
    OK("\"\xC2\x80\xDF\xBF\"", 64, "s:\xC2\x80\xDF\xBF"),   /* U+0080, U+07FF */
    OK("\"\xE0\xA0\x80\xE2\x82\xAC\"", 64, "s:\xE0\xA0\x80\xE2\x82\xAC"), /* U+0800, € */
    OK("\"\xED\x9F\xBF\xEE\x80\x80\"", 64, "s:\xED\x9F\xBF\xEE\x80\x80"), /* U+D7FF, U+E000 */
    OK("\"\xEF\xBF\xBF\"", 64, "s:\xEF\xBF\xBF"),           /* U+FFFF */
    OK("\"\xF0\x90\x80\x80\xF0\x9F\x98\x80\"", 64, "s:\xF0\x90\x80\x80\xF0\x9F\x98\x80"), /* U+10000, 😀 */
    OK("\"\xF4\x8F\xBF\xBF\"", 64, "s:\xF4\x8F\xBF\xBF"),   /* U+10FFFF */
    OK("\"\x7F\"", 64, "s:\x7F"),                           /* DEL is not a control here */
    OK("\"a b'c\"", 64, "s:a b'c"),
    OK("{\"k\\u0065y\":\"v\\n\"}", 64, "o1>3 e:k\\u0065y e:v\\n"),
    /* depth */
    OK("[[[1]]]", 3, "a1>4 a1>4 a1>4 n:1"),
    OK("{\"a\":{\"b\":{\"c\":1}}}", 3, "o1>7 s:a o1>7 s:b o1>7 s:c n:1"),
    OK("[[],[],[[]]]", 3, "a3>5 a0>2 a0>3 a1>5 a0>5"),
    OK("1", 0, "n:1"),
    /* EDEPTH rows run with max_depth 3 */
    BAD("[[[[1]]]]", JTOK_EDEPTH, 3),
    BAD("{\"a\":{\"b\":{\"c\":{}}}}", JTOK_EDEPTH, 15),
    BAD("[{\"a\":[[]]}]", JTOK_EDEPTH, 7),
    /* empty */
    BAD("", JTOK_EEMPTY, 0),
    BAD("   \n\t", JTOK_EEMPTY, 5),
    /* syntax */
    BAD("\xEF\xBB\xBF{}", JTOK_ESYNTAX, 0), /* BOM */
    BAD("\xC3\xA9", JTOK_ESYNTAX, 0),       /* UTF-8 outside a string */
    BAD("nulx", JTOK_ESYNTAX, 3),
    BAD("nullx", JTOK_ESYNTAX, 4),
    BAD("true1", JTOK_ESYNTAX, 4),
    BAD("True", JTOK_ESYNTAX, 0),
    BAD("NULL", JTOK_ESYNTAX, 0),
    BAD("NaN", JTOK_ESYNTAX, 0),
    BAD("Infinity", JTOK_ESYNTAX, 0),
    BAD("undefined", JTOK_ESYNTAX, 0),
    BAD("'a'", JTOK_ESYNTAX, 0),
    BAD("]", JTOK_ESYNTAX, 0),
    BAD("}", JTOK_ESYNTAX, 0),
    BAD(":", JTOK_ESYNTAX, 0),
    BAD(",", JTOK_ESYNTAX, 0),
    BAD("[1,]", JTOK_ESYNTAX, 3),
    BAD("[,1]", JTOK_ESYNTAX, 1),
    BAD("[1 2]", JTOK_ESYNTAX, 3),
    BAD("[1:2]", JTOK_ESYNTAX, 2),
    BAD("[1}", JTOK_ESYNTAX, 2),
    BAD("{\"a\":1]", JTOK_ESYNTAX, 6),
    BAD("{\"a\" 1}", JTOK_ESYNTAX, 5),
    BAD("{\"a\"}", JTOK_ESYNTAX, 4),
    BAD("{\"a\":}", JTOK_ESYNTAX, 5),
    BAD("{\"a\":1,}", JTOK_ESYNTAX, 7),
    BAD("{\"a\":1 \"b\":2}", JTOK_ESYNTAX, 7),
    BAD("{,}", JTOK_ESYNTAX, 1),
    BAD("{1:2}", JTOK_ESYNTAX, 1),
    BAD("{'a':1}", JTOK_ESYNTAX, 1),
    BAD("{a:1}", JTOK_ESYNTAX, 1),
    BAD("{\"a\"::1}", JTOK_ESYNTAX, 5),
    BAD("{\"a\":1,,\"b\":2}", JTOK_ESYNTAX, 7),
    BAD("[\"a\":1]", JTOK_ESYNTAX, 4),
    BAD("[1,2,]", JTOK_ESYNTAX, 5),
    BAD("[/* c */]", JTOK_ESYNTAX, 1),
    BAD("[\v]", JTOK_ESYNTAX, 1),            /* only 4 whitespace bytes */
    BAD("[\xC2\xA0]", JTOK_ESYNTAX, 1),      /* NBSP is not whitespace */
    BAD("[\0]", JTOK_ESYNTAX, 1),
    /* truncated */
    BAD("[", JTOK_ETRUNC, 1),
    BAD("{", JTOK_ETRUNC, 1),
    BAD("[1", JTOK_ETRUNC, 2),
    BAD("[1,", JTOK_ETRUNC, 3),
    BAD("[1,2", JTOK_ETRUNC, 4),
    BAD("[[]", JTOK_ETRUNC, 3),
    BAD("{\"a\"", JTOK_ETRUNC, 4),
    BAD("{\"a\" ", JTOK_ETRUNC, 5),
    BAD("{\"a\":", JTOK_ETRUNC, 5),
    BAD("{\"a\":1", JTOK_ETRUNC, 6),
    BAD("{\"a\":1,", JTOK_ETRUNC, 7),
    BAD("{\"a", JTOK_ETRUNC, 3),
    BAD("\"abc", JTOK_ETRUNC, 4),
    BAD("\"", JTOK_ETRUNC, 1),
    BAD("\"\\", JTOK_ETRUNC, 2),
    BAD("\"\\u12", JTOK_ETRUNC, 5),
    BAD("\"\\uD83D", JTOK_ETRUNC, 7),
    BAD("\"\\uD83D\\", JTOK_ETRUNC, 8),
    BAD("\"\\uD83D\\u", JTOK_ETRUNC, 9),
    BAD("\"\\uD83D\\uDE0", JTOK_ETRUNC, 12),
    BAD("\"\xC3", JTOK_ETRUNC, 2),
    BAD("\"\xE2\x82", JTOK_ETRUNC, 3),
    BAD("\"\xF0\x9F\x98", JTOK_ETRUNC, 4),
    BAD("t", JTOK_ETRUNC, 1),
    BAD("tru", JTOK_ETRUNC, 3),
    BAD("fals", JTOK_ETRUNC, 4),
    BAD("nul", JTOK_ETRUNC, 3),
    BAD("[tru", JTOK_ETRUNC, 4),
    /* trailing */
    BAD("1 2", JTOK_ETRAILING, 2),
    BAD("{}x", JTOK_ETRAILING, 2),
    BAD("[]]", JTOK_ETRAILING, 2),
    BAD("{}}", JTOK_ETRAILING, 2),
    BAD("[] []", JTOK_ETRAILING, 3),
    BAD("\"a\"\"b\"", JTOK_ETRAILING, 3),
    BAD("{} ,", JTOK_ETRAILING, 3),
    BAD("1\0", JTOK_ETRAILING, 1),
    BAD("{} \0", JTOK_ETRAILING, 3),
    BAD("null null", JTOK_ETRAILING, 5),
    BAD("{\"a\":1}\n{\"a\":2}", JTOK_ETRAILING, 8),
    /* numbers */
    BAD("01", JTOK_ENUMBER, 1),
    BAD("00", JTOK_ENUMBER, 1),
    BAD("-01", JTOK_ENUMBER, 2),
    BAD("[01]", JTOK_ENUMBER, 2),
    BAD("+1", JTOK_ENUMBER, 0),
    BAD("[+1]", JTOK_ENUMBER, 1),
    BAD(".5", JTOK_ENUMBER, 0),
    BAD("-.5", JTOK_ENUMBER, 1),
    BAD("1.", JTOK_ENUMBER, 2),
    BAD("[2.]", JTOK_ENUMBER, 3),
    BAD("1.e5", JTOK_ENUMBER, 2),
    BAD("-", JTOK_ENUMBER, 1),
    BAD("-a", JTOK_ENUMBER, 1),
    BAD("- 1", JTOK_ENUMBER, 1),
    BAD("--1", JTOK_ENUMBER, 1),
    BAD("-Infinity", JTOK_ENUMBER, 1),
    BAD("-NaN", JTOK_ENUMBER, 1),
    BAD("1e", JTOK_ENUMBER, 2),
    BAD("1e+", JTOK_ENUMBER, 3),
    BAD("1E-x", JTOK_ENUMBER, 3),
    BAD("1.0e", JTOK_ENUMBER, 4),
    BAD("1ee5", JTOK_ENUMBER, 2),
    BAD("0x1F", JTOK_ENUMBER, 1),
    BAD("1f", JTOK_ENUMBER, 1),
    BAD("1.5.2", JTOK_ENUMBER, 3),
    BAD("1e5e5", JTOK_ENUMBER, 3),
    BAD("1e5.5", JTOK_ENUMBER, 3),
    BAD("1-2", JTOK_ENUMBER, 1),
    BAD("1+2", JTOK_ENUMBER, 1),
    BAD("{\"a\":01}", JTOK_ENUMBER, 6),
    /* control characters */
    BAD("\"a\tb\"", JTOK_ECTRL, 2),
    BAD("\"\n\"", JTOK_ECTRL, 1),
    BAD("\"\x1F\"", JTOK_ECTRL, 1),
    BAD("\"\x01\"", JTOK_ECTRL, 1),
    BAD("\"\0\"", JTOK_ECTRL, 1),
    BAD("{\"a\rb\":1}", JTOK_ECTRL, 3),
    /* escapes */
    BAD("\"\\x\"", JTOK_EESCAPE, 1),
    BAD("\"\\U0041\"", JTOK_EESCAPE, 1),
    BAD("\"\\u00G0\"", JTOK_EESCAPE, 1),
    BAD("\"\\u 123\"", JTOK_EESCAPE, 1),
    BAD("\"a\\'\"", JTOK_EESCAPE, 2),
    BAD("\"\\0\"", JTOK_EESCAPE, 1),
    BAD("\"\\\n\"", JTOK_EESCAPE, 1),
    BAD("\"\\uDC00\"", JTOK_EESCAPE, 1),             /* lone low surrogate */
    BAD("\"\\uDFFF\\uD800\"", JTOK_EESCAPE, 1),      /* pair in the wrong order */
    BAD("\"\\uD800\"", JTOK_EESCAPE, 1),             /* lone high surrogate */
    BAD("\"\\uD800x\"", JTOK_EESCAPE, 1),
    BAD("\"\\uD800\\n\"", JTOK_EESCAPE, 1),
    BAD("\"\\uD800\\uD800\"", JTOK_EESCAPE, 1),
    BAD("\"\\uD800\\u0041\"", JTOK_EESCAPE, 1),
    BAD("\"\\uD800\\uE000\"", JTOK_EESCAPE, 1),
    BAD("\"\\uD800\\uDC0G\"", JTOK_EESCAPE, 7),
    BAD("\"ok\\uDBFF\\uDFFF\\uDBFF\"", JTOK_EESCAPE, 15),
    /* UTF-8 */
    BAD("\"\x80\"", JTOK_EUTF8, 1),                  /* stray continuation */
    BAD("\"\xBF\"", JTOK_EUTF8, 1),
    BAD("\"\xC0\x80\"", JTOK_EUTF8, 1),              /* overlong NUL */
    BAD("\"\xC1\xBF\"", JTOK_EUTF8, 1),              /* overlong U+007F */
    BAD("\"\xE0\x80\xAF\"", JTOK_EUTF8, 1),          /* overlong '/' */
    BAD("\"\xE0\x9F\xBF\"", JTOK_EUTF8, 1),          /* overlong U+07FF */
    BAD("\"\xED\xA0\x80\"", JTOK_EUTF8, 1),          /* U+D800 */
    BAD("\"\xED\xBF\xBF\"", JTOK_EUTF8, 1),          /* U+DFFF */
    BAD("\"\xED\xA0\xBD\xED\xB8\x80\"", JTOK_EUTF8, 1), /* CESU-8 pair */
    BAD("\"\xF0\x80\x80\x80\"", JTOK_EUTF8, 1),      /* overlong 4-byte */
    BAD("\"\xF0\x8F\xBF\xBF\"", JTOK_EUTF8, 1),      /* overlong U+FFFF */
    BAD("\"\xF4\x90\x80\x80\"", JTOK_EUTF8, 1),      /* U+110000 */
    BAD("\"\xF5\x80\x80\x80\"", JTOK_EUTF8, 1),
    BAD("\"\xF8\x88\x80\x80\x80\"", JTOK_EUTF8, 1),  /* 5-byte form */
    BAD("\"\xFC\x84\x80\x80\x80\x80\"", JTOK_EUTF8, 1),
    BAD("\"\xFE\"", JTOK_EUTF8, 1),
    BAD("\"\xFF\"", JTOK_EUTF8, 1),
    BAD("\"\xC3\x28\"", JTOK_EUTF8, 1),              /* bad continuation */
    BAD("\"\xC3\"\"", JTOK_EUTF8, 1),                /* the quote is not a continuation */
    BAD("\"\xE2\x82\"", JTOK_EUTF8, 1),
    BAD("\"\xE2\x28\xA1\"", JTOK_EUTF8, 1),
    BAD("\"\xF0\x9F\x98\x28\"", JTOK_EUTF8, 1),
    BAD("\"\xC3\xA9\xC3\"", JTOK_EUTF8, 3),
    BAD("\"abcdefgh\x80\"", JTOK_EUTF8, 9),          /* after the 4-byte fast scan */
    BAD("{\"k\xFF\":1}", JTOK_EUTF8, 3),
};

/* The depth limit, at and beyond, on generated inputs. */
typedef struct {
    unsigned levels; /* nested arrays (or objects) */
    bool objects;
    unsigned max_depth;
    int code;
    size_t off;
} depth_case_t;

static const depth_case_t depth_cases[] = {
    { 1, false, 1, JTOK_OK, 0 },
    { 2, false, 1, JTOK_EDEPTH, 1 },
    { 1, false, 0, JTOK_EDEPTH, 0 },
    { 64, false, 64, JTOK_OK, 0 },
    { 65, false, 64, JTOK_EDEPTH, 64 },
    { 64, true, 64, JTOK_OK, 0 },
    { 65, true, 64, JTOK_EDEPTH, 64 * 5 }, /* {"a": is 5 bytes */
    { 1024, false, JTOK_DEPTH_MAX, JTOK_OK, 0 },
    { 1025, false, JTOK_DEPTH_MAX, JTOK_EDEPTH, 1024 },
    { 1024, false, 100000, JTOK_OK, 0 }, /* clamped */
    { 1025, false, 100000, JTOK_EDEPTH, 1024 },
    { 1024, true, UINT32_MAX, JTOK_OK, 0 },
    { 1025, true, UINT32_MAX, JTOK_EDEPTH, 1024 * 5 },
    { 200, false, 199, JTOK_EDEPTH, 199 },
    { 129, true, 129, JTOK_OK, 0 }, /* crosses a 64-level word of the level bits */
};

static int parse_and_check_modes(const char *in, size_t len, unsigned depth, jtok_t **toks_out,
                                 jtok_err_t *err)
{
    /* count-only first: it must agree with the real parse on result and error */
    jtok_err_t cerr = { -1, 0 };
    int count = jtok_parse(in, len, NULL, 0, depth, &cerr);
    size_t cap = len + 1;
    jtok_t *toks = calloc(cap, sizeof *toks);
    assert_non_null(toks);
    int n = jtok_parse(in, len, toks, cap, depth, err);
    assert_int_equal(n, count);
    assert_int_equal(err->code, cerr.code);
    assert_int_equal(err->offset, cerr.offset);
    if (n > 0) {
        /* exact capacity is enough; one less is JTOK_ETOKENS */
        jtok_err_t e2;
        jtok_t *exact = calloc((size_t)n, sizeof *exact);
        assert_non_null(exact);
        assert_int_equal(jtok_parse(in, len, exact, (size_t)n, depth, &e2), n);
        assert_memory_equal(exact, toks, (size_t)n * sizeof *exact);
        assert_int_equal(jtok_parse(in, len, exact, (size_t)n - 1, depth, &e2), -1);
        assert_int_equal(e2.code, JTOK_ETOKENS);
        free(exact);
    }
    *toks_out = toks;
    return n;
}

static void test_parse_table(void **state)
{
    (void)state;
    int failures = 0;
    char got[4096];
    for (size_t i = 0; i < sizeof parse_cases / sizeof parse_cases[0]; i++) {
        const parse_case_t *c = &parse_cases[i];
        jtok_t *toks;
        jtok_err_t err;
        unsigned depth = c->depth;
        if (c->code == JTOK_EDEPTH)
            depth = 3;
        int n = parse_and_check_modes(c->in, c->len, depth, &toks, &err);
        if (c->code != JTOK_OK) {
            if (n != -1 || err.code != c->code || err.offset != c->off) {
                print_error("row %zu: parse(\"%.*s\"): n %d, %s at %zu; want %s at %zu\n", i, (int)c->len, c->in,
                            n, jtok_strerror(err.code), err.offset, jtok_strerror(c->code), c->off);
                failures++;
            }
        } else if (n < 0) {
            print_error("row %zu: parse(\"%.*s\") failed: %s at %zu\n", i, (int)c->len, c->in,
                        jtok_strerror(err.code), err.offset);
            failures++;
        } else {
            dump(c->in, toks, n, got, sizeof got);
            const char *why = check_invariants(c->in, c->len, toks, n);
            if (strcmp(got, c->dump) != 0 || why || err.code != JTOK_OK) {
                print_error("row %zu: parse(\"%.*s\") gives \"%s\", want \"%s\" (%s)\n", i, (int)c->len, c->in,
                            got, c->dump, why ? why : "invariants ok");
                failures++;
            }
        }
        free(toks);
    }
    assert_int_equal(failures, 0);
}

static void test_parse_depth(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof depth_cases / sizeof depth_cases[0]; i++) {
        const depth_case_t *c = &depth_cases[i];
        size_t unit = c->objects ? 5 : 1, len = c->levels * (unit + 1) + 1;
        char *s = malloc(len + 1), *p = s;
        assert_non_null(s);
        for (unsigned k = 0; k < c->levels; k++) {
            memcpy(p, c->objects ? "{\"a\":" : "[", unit);
            p += unit;
        }
        *p++ = '0';
        for (unsigned k = 0; k < c->levels; k++)
            *p++ = c->objects ? '}' : ']';
        jtok_t *toks;
        jtok_err_t err;
        int n = parse_and_check_modes(s, (size_t)(p - s), c->max_depth, &toks, &err);
        if (c->code == JTOK_OK) {
            assert_int_equal(n, (int)(c->levels * (c->objects ? 2 : 1) + 1));
            assert_null(check_invariants(s, (size_t)(p - s), toks, n));
            assert_int_equal(toks[0].next, n);
            assert_int_equal(toks[0].len, p - s);
        } else {
            if (n != -1 || err.code != c->code || err.offset != c->off)
                fail_msg("depth row %zu: n %d %s at %zu", i, n, jtok_strerror(err.code), err.offset);
        }
        free(toks);
        free(s);
    }
}

/* Every ASCII byte alone in a string. */
static void test_parse_ascii_in_string(void **state)
{
    (void)state;
    for (int c = 0; c < 0x80; c++) {
        char s[3] = { '"', (char)c, '"' };
        jtok_err_t err;
        int n = jtok_parse(s, 3, NULL, 0, 8, &err);
        int want = c < 0x20 ? JTOK_ECTRL : c == '"' ? JTOK_ETRAILING : c == '\\' ? JTOK_ETRUNC : JTOK_OK;
        if ((want == JTOK_OK) != (n == 1) || err.code != want)
            fail_msg("byte 0x%02x: %s, want %s", c, jtok_strerror(err.code), jtok_strerror(want));
    }
}

/* Every byte as a \u hex digit, in each of the four places. */
static void test_parse_hex_digits(void **state)
{
    (void)state;
    for (int pos = 0; pos < 4; pos++) {
        for (int c = 0; c < 256; c++) {
            char s[] = "\"\\u0041\"";
            s[3 + pos] = (char)c;
            jtok_err_t err;
            int n = jtok_parse(s, sizeof s - 1, NULL, 0, 8, &err);
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
            if (hex) { /* \uD041 etc. are not surrogates */
                assert_int_equal(n, 1);
            } else {
                assert_int_equal(n, -1);
                assert_int_equal(err.code, JTOK_EESCAPE);
                assert_int_equal(err.offset, 1);
            }
        }
    }
}

/* A reference UTF-8 check, written from the definition (decode, then reject
 * overlong forms, surrogates and > U+10FFFF) rather than from a table. */
static bool ref_utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c < 0x20 || c == '"' || c == '\\')
                return false;
            i++;
            continue;
        }
        int len;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
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

static void test_parse_utf8_exhaustive(void **state)
{
    (void)state;
    static const unsigned char tail[] = { 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC3, 0xF4, 0xFF };
    size_t nt = sizeof tail;
    for (unsigned b0 = 0x80; b0 < 0x100; b0++)
        for (unsigned b1 = 0; b1 < 0x100; b1++)
            for (size_t t2 = 0; t2 < nt; t2++)
                for (size_t t3 = 0; t3 < nt; t3++) {
                    unsigned char s[6] = { '"', (unsigned char)b0, (unsigned char)b1, tail[t2], tail[t3], '"' };
                    jtok_err_t err;
                    int n = jtok_parse((const char *)s, sizeof s, NULL, 0, 8, &err);
                    bool ok = ref_utf8_ok(s + 1, 4);
                    /* the closing quote ends every sequence, so a bad one is never ETRUNC */
                    if (ok != (n == 1) || (!ok && err.code != JTOK_EUTF8))
                        fail_msg("%02x %02x %02x %02x: parse %d (%s), reference %d", b0, b1, tail[t2], tail[t3],
                                 n, jtok_strerror(err.code), ok);
                }
}

static void test_parse_degenerate(void **state)
{
    (void)state;
    jtok_err_t err = { -1, 0 };
    jtok_t toks[4];
    /* longer than 4 GiB - 1: refused before a byte is read */
    assert_int_equal(jtok_parse("1", (size_t)UINT32_MAX + 1, toks, 4, 8, &err), -1);
    assert_int_equal(err.code, JTOK_ETOOBIG);
    assert_int_equal(jtok_parse("1", (size_t)UINT32_MAX + 1, NULL, 0, 8, &err), -1);
    assert_int_equal(err.code, JTOK_ETOOBIG);
    /* NULL buffer with length 0 */
    assert_int_equal(jtok_parse(NULL, 0, toks, 4, 8, &err), -1);
    assert_int_equal(err.code, JTOK_EEMPTY);
    /* err may be NULL */
    assert_int_equal(jtok_parse("[1]", 3, toks, 4, 8, NULL), 2);
    assert_int_equal(jtok_parse("[1", 2, toks, 4, 8, NULL), -1);
    /* cap 0 with an array is too few tokens; error at the first token */
    assert_int_equal(jtok_parse(" [1]", 4, toks, 0, 8, &err), -1);
    assert_int_equal(err.code, JTOK_ETOKENS);
    assert_int_equal(err.offset, 1);
    assert_int_equal(jtok_parse("[1,2,3]", 7, toks, 3, 8, &err), -1);
    assert_int_equal(err.code, JTOK_ETOKENS);
    assert_int_equal(err.offset, 5);
    /* success clears err */
    assert_int_equal(jtok_parse("{\"a\":[true]}", 12, toks, 4, 8, &err), 4);
    assert_int_equal(err.code, JTOK_OK);
    /* strerror covers every code and never returns NULL */
    for (int c = -1; c <= JTOK_ECOUNT_; c++)
        assert_non_null(jtok_strerror(c));
    assert_string_equal(jtok_strerror(JTOK_EUTF8), "invalid UTF-8");
    assert_string_equal(jtok_strerror(1000), "unknown error");
}

/* ---- jtok_str_decode / jtok_str_eq -------------------------------------- */

typedef struct {
    const char *json; /* a JSON string value */
    size_t jlen;
    const char *want;
    size_t wlen;
} decode_case_t;

#define D(j, w) { S(j), S(w) }

static const decode_case_t decode_cases[] = {
    D("\"abc\"", "abc"),
    D("\"\"", ""),
    D("\"a\\\"b\"", "a\"b"),
    D("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t"),
    D("\"\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\"", "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"),
    D("\"\\u0000x\"", "\0x"),
    D("\"x\\u0000\"", "x\0"),
    D("\"\\u007f\\u0080\\u07FF\\u0800\\uFFFF\\uDBFF\\uDFFF\"",
      "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF4\x8F\xBF\xBF"),
    D("\"\\uD800\\uDC00\"", "\xF0\x90\x80\x80"),
    D("\"\xC3\xA9t\xC3\xA9\"", "\xC3\xA9t\xC3\xA9"),
    D("\"caf\xC3\xA9 \\u00e9\"", "caf\xC3\xA9 \xC3\xA9"),
    D("\"\\/\"", "/"),
    D("\"\\\\u0041\"", "\\u0041"),
    D("\"line1\\nline2\\n\"", "line1\nline2\n"),
    D("\"\\\\\\\\\"", "\\\\"),
};

static void test_str_decode_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof decode_cases / sizeof decode_cases[0]; i++) {
        const decode_case_t *c = &decode_cases[i];
        jtok_t t;
        assert_int_equal(jtok_parse(c->json, c->jlen, &t, 1, 1, NULL), 1);
        assert_int_equal(t.type, JTOK_STRING);
        assert_true(c->wlen <= t.len); /* the documented bound */
        char out[256];
        memset(out, 'x', sizeof out);
        ssize_t n = jtok_str_decode(c->json, &t, out, t.len + 1);
        if (n != (ssize_t)c->wlen || memcmp(out, c->want, c->wlen) != 0 || out[n] != '\0')
            fail_msg("row %zu: decode(%s) = %zd", i, c->json, n);
        /* exact capacity; one less; none */
        assert_int_equal(jtok_str_decode(c->json, &t, out, c->wlen + 1), (ssize_t)c->wlen);
        errno = 0;
        memset(out, 'x', sizeof out);
        assert_int_equal(jtok_str_decode(c->json, &t, out, c->wlen), -1);
        assert_int_equal(errno, ERANGE);
        if (c->wlen > 0)
            assert_int_equal(out[0], '\0');
        assert_int_equal(jtok_str_decode(c->json, &t, NULL, 0), -1);
        /* jtok_str_eq agrees when the decoded text has no NUL */
        if (memchr(c->want, '\0', c->wlen) == NULL)
            assert_true(jtok_str_eq(c->json, &t, c->want));
    }
}

typedef struct {
    const char *json;
    const char *s;
    bool want;
} eq_case_t;

static const eq_case_t eq_cases[] = {
    { "\"abc\"", "abc", true },
    { "\"abc\"", "ab", false },
    { "\"abc\"", "abcd", false },
    { "\"abc\"", "abd", false },
    { "\"abc\"", "", false },
    { "\"\"", "", true },
    { "\"\"", "a", false },
    { "\"a\\u0062c\"", "abc", true },
    { "\"a\\u0062c\"", "abd", false },
    { "\"a\\u0062c\"", "ab", false },
    { "\"a\\u0062\"", "abc", false },
    { "\"a\\u0062\"", "a\\u0062", false },
    { "\"\\u0000\"", "", false },
    { "\"x\\u0000\"", "x", false },
    { "\"\\uD83D\\uDE00\"", "\xF0\x9F\x98\x80", true },
    { "\"\\uD83D\\uDE00\"", "\xF0\x9F\x98", false },
    { "\"\\u00e9\"", "\xC3\xA9", true },
    { "\"\\u00e9\"", "e", false },
    { "\"\\n\"", "\n", true },
    { "\"\\\\\"", "\\", true },
    { "\"\\\\\"", "\\\\", false },
    { "\"\\\"q\\\"\"", "\"q\"", true },
    { "1", "1", false },   /* not a string */
    { "null", "null", false },
};

static void test_str_eq_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof eq_cases / sizeof eq_cases[0]; i++) {
        const eq_case_t *c = &eq_cases[i];
        jtok_t t;
        assert_int_equal(jtok_parse(c->json, strlen(c->json), &t, 1, 1, NULL), 1);
        if (jtok_str_eq(c->json, &t, c->s) != c->want)
            fail_msg("row %zu: eq(%s, \"%s\") != %d", i, c->json, c->s, c->want);
    }
}

/* ---- jtok_obj_get and next ---------------------------------------------- */

static const char obj_doc[] =
    "{\"model\":\"gpt-4o\",\"usage\":{\"prompt_tokens\":10,\"details\":{\"cached_tokens\":3,\"deep\":[[1],[2]]},"
    "\"completion_tokens\":5},\"tags\":{},\"arr\":[{\"k\":1},{\"k\":2}],\"dup\":1,\"dup\":2,"
    "\"k\\u0065y\":\"v\",\"\":\"empty\",\"usage2\":{\"usage\":{\"x\":1}},\"last\":null}";

typedef struct {
    const char *path; /* keys separated by '/' */
    const char *want; /* raw text of the value, NULL when not found */
} get_case_t;

static const get_case_t get_cases[] = {
    { "model", "gpt-4o" },
    { "usage/prompt_tokens", "10" },
    { "usage/details/cached_tokens", "3" },
    { "usage/details/deep", "[[1],[2]]" },
    { "usage/completion_tokens", "5" }, /* found by skipping a nested subtree */
    { "usage/cached_tokens", NULL },    /* exists only one level deeper */
    { "usage/details/prompt_tokens", NULL },
    { "tags", "{}" },
    { "tags/x", NULL },
    { "arr", "[{\"k\":1},{\"k\":2}]" },
    { "k", NULL },
    { "arr/k", NULL },                  /* not an object */
    { "dup", "1" },                     /* the first of duplicates */
    { "key", "v" },                     /* escaped key */
    { "k\\u0065y", NULL },
    { "", "empty" },
    { "usage2/usage/x", "1" },
    { "usage2/x", NULL },
    { "last", "null" },
    { "model/x", NULL },                /* a string is not an object */
    { "missing", NULL },
    { "Model", NULL },
};

static void test_obj_get_table(void **state)
{
    (void)state;
    jtok_t toks[64];
    int n = jtok_parse(obj_doc, sizeof obj_doc - 1, toks, 64, 8, NULL);
    assert_true(n > 0);
    for (size_t i = 0; i < sizeof get_cases / sizeof get_cases[0]; i++) {
        const get_case_t *c = &get_cases[i];
        char path[64];
        snprintf(path, sizeof path, "%s", c->path);
        int at = 0;
        char *rest = path;
        for (;;) {
            char *slash = strchr(rest, '/');
            if (slash)
                *slash = '\0';
            at = jtok_obj_get(obj_doc, toks, at, rest);
            if (at < 0 || !slash)
                break;
            rest = slash + 1;
        }
        if (c->want == NULL) {
            if (at != -1)
                fail_msg("row %zu: %s found at %d", i, c->path, at);
            continue;
        }
        if (at < 0)
            fail_msg("row %zu: %s not found", i, c->path);
        span_t sp = jtok_span(obj_doc, &toks[at]);
        if (!span_eq_cstr(sp, c->want))
            fail_msg("row %zu: %s = %.*s, want %s", i, c->path, (int)sp.len, sp.p, c->want);
    }
}

/* Walking an object's pairs and an array's elements with next. */
static void test_next_skips_subtrees(void **state)
{
    (void)state;
    jtok_t toks[64];
    int n = jtok_parse(obj_doc, sizeof obj_doc - 1, toks, 64, 8, NULL);
    assert_true(n > 0);
    assert_null(check_invariants(obj_doc, sizeof obj_doc - 1, toks, n));
    char keys[256] = "";
    uint32_t k = 1;
    for (uint32_t pair = 0; pair < toks[0].size; pair++) {
        strncat(keys, obj_doc + toks[k].start, toks[k].len);
        strcat(keys, ",");
        k = toks[toks[k].next].next;
    }
    assert_string_equal(keys, "model,usage,tags,arr,dup,dup,k\\u0065y,,usage2,last,");
    assert_int_equal(k, (uint32_t)n);
    assert_int_equal(toks[0].next, (uint32_t)n);
    /* the array's elements */
    int arr = jtok_obj_get(obj_doc, toks, 0, "arr");
    assert_int_equal(toks[arr].size, 2);
    uint32_t e = (uint32_t)arr + 1;
    for (int v = 1; v <= 2; v++) {
        assert_int_equal(toks[e].type, JTOK_OBJECT);
        int kv = jtok_obj_get(obj_doc, toks, (int)e, "k");
        assert_true(kv > 0);
        assert_true(span_eq_cstr(jtok_span(obj_doc, &toks[kv]), v == 1 ? "1" : "2"));
        e = toks[e].next;
    }
    assert_int_equal(e, toks[arr].next);
    /* a non-object token */
    assert_int_equal(jtok_obj_get(obj_doc, toks, arr, "k"), -1);
}

/* ---- real data: the price table ----------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    assert_false(ferror(f));
    fclose(f);
    *len = n;
    return buf;
}

static bool is_rate_key(const char *buf, const jtok_t *t)
{
    char key[256];
    if (t->len >= sizeof key || jtok_str_decode(buf, t, key, sizeof key) < 0)
        return false;
    return strstr(key, "cost_per_token") || strstr(key, "token_cost");
}

static void test_real_price_table(void **state)
{
    (void)state;
    size_t len = 0;
    char *buf = slurp(prices_path, &len);
    if (!buf)
        fail_msg("cannot read the price table %s: %s (set TOKMON_PRICES or pass it as argv[2])", prices_path,
                 strerror(errno));
    jtok_err_t err;
    int count = jtok_parse(buf, len, NULL, 0, 32, &err);
    if (count < 0)
        fail_msg("%s: %s at byte %zu", prices_path, jtok_strerror(err.code), err.offset);
    jtok_t *toks = malloc((size_t)count * sizeof *toks);
    assert_non_null(toks);
    assert_int_equal(jtok_parse(buf, len, toks, (size_t)count, 32, &err), count);
    assert_null(check_invariants(buf, len, toks, count));
    assert_int_equal(toks[0].type, JTOK_OBJECT);
    assert_true(toks[0].size > 2000);

    /* every rate, at every depth, read exactly at 1e-24 USD per token */
    int rates = 0, not_numbers = 0, failures = 0;
    for (int i = 0; i < count; i++) {
        if (toks[i].type != JTOK_OBJECT)
            continue;
        uint32_t k = (uint32_t)i + 1;
        for (uint32_t pair = 0; pair < toks[i].size; pair++) {
            const jtok_t *v = &toks[k + 1];
            if (is_rate_key(buf, &toks[k])) {
                if (v->type != JTOK_NUMBER) {
                    not_numbers++;
                } else {
                    __int128 units;
                    if (dec_parse(buf + v->start, v->len, 24, DEC_EXACT, &units) < 0) {
                        print_error("%.*s = %.*s: %s\n", (int)toks[k].len, buf + toks[k].start, (int)v->len,
                                    buf + v->start, strerror(errno));
                        failures++;
                    }
                    rates++;
                }
            }
            k = v->next;
        }
    }
    print_message("%s: %d tokens, %d rates parsed exactly, %d rate fields not numbers\n", prices_path, count,
                  rates, not_numbers);
    assert_int_equal(failures, 0);
    assert_true(rates > 5000);

    /* a few known values */
    int m = jtok_obj_get(buf, toks, 0, "gpt-4o");
    assert_true(m > 0);
    int r = jtok_obj_get(buf, toks, m, "input_cost_per_token");
    assert_true(r > 0);
    __int128 units = 0;
    assert_int_equal(dec_parse(buf + toks[r].start, toks[r].len, 24, DEC_EXACT, &units), 0);
    assert_true(units == (__int128)2500000000000000000);
    assert_true(jtok_str_eq(buf, &toks[jtok_obj_get(buf, toks, m, "litellm_provider")], "openai"));
    /* the worst rate in the table: 23 decimal places */
    const char *worst = "3.0001999999999996e-07";
    char *hit = strstr(buf, worst);
    assert_non_null(hit);
    assert_int_equal(dec_parse(hit, strlen(worst), 24, DEC_EXACT, &units), 0);
    assert_true(units == (__int128)300019999999999960);
    free(toks);
    free(buf);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_parse_depth),
        cmocka_unit_test(test_parse_ascii_in_string),
        cmocka_unit_test(test_parse_hex_digits),
        cmocka_unit_test(test_parse_utf8_exhaustive),
        cmocka_unit_test(test_parse_degenerate),
        cmocka_unit_test(test_str_decode_table),
        cmocka_unit_test(test_str_eq_table),
        cmocka_unit_test(test_obj_get_table),
        cmocka_unit_test(test_next_skips_subtrees),
        cmocka_unit_test(test_real_price_table),
    };
    /* default: data/model_prices.json in the repository ($TOKMON_REPO, set by
     * the Makefile, else where this file was compiled from) */
    static char def[4096];
    const char *repo = getenv("TOKMON_REPO");
    if (repo && *repo) {
        snprintf(def, sizeof def, "%s/data/model_prices.json", repo);
    } else {
        const char *me = __FILE__, *tail = strstr(me, "common/jtok_test.c");
        snprintf(def, sizeof def, "%.*sdata/model_prices.json", tail ? (int)(tail - me) : 0, me);
    }
    prices_path = def;
    if (getenv("TOKMON_PRICES") && *getenv("TOKMON_PRICES"))
        prices_path = getenv("TOKMON_PRICES");
    if (argc > 2)
        prices_path = argv[2];
    if (argc > 1 && strcmp(argv[1], "") != 0)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("json", tests, NULL, NULL);
}

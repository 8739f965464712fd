#include "jtok.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <string.h>

/* Byte classes inside a string. Everything that is not plain ASCII stops the
 * fast scan; UTF-8 lead bytes carry the range their first continuation byte
 * must fall in (RFC 3629 table 4), which rules out overlong forms, UTF-16
 * surrogates and code points above U+10FFFF. */
enum {
    C_PLAIN = 0,
    C_QUOTE,
    C_BSLASH,
    C_CTRL,
    C_U2,     /* C2..DF: 1 continuation */
    C_U3_E0,  /* E0: A0..BF, then 1 */
    C_U3,     /* E1..EC, EE..EF: 80..BF, then 1 */
    C_U3_ED,  /* ED: 80..9F (no surrogates), then 1 */
    C_U4_F0,  /* F0: 90..BF, then 2 */
    C_U4,     /* F1..F3: 80..BF, then 2 */
    C_U4_F4,  /* F4: 80..8F (<= U+10FFFF), then 2 */
    C_BAD     /* 80..C1 (stray continuation, overlong lead), F5..FF */
};

#define R4(x) x, x, x, x
#define R16(x) R4(x), R4(x), R4(x), R4(x)
static const unsigned char str_class[256] = {
    R16(C_CTRL), R16(C_CTRL),                                      /* 00..1F */
    C_PLAIN, C_PLAIN, C_QUOTE, C_PLAIN, R4(C_PLAIN), R4(C_PLAIN), R4(C_PLAIN), /* 20..2F */
    R16(C_PLAIN),                                                  /* 30..3F */
    R16(C_PLAIN),                                                  /* 40..4F */
    R4(C_PLAIN), R4(C_PLAIN), R4(C_PLAIN),                         /* 50..5B */
    C_BSLASH, C_PLAIN, C_PLAIN, C_PLAIN,                           /* 5C..5F */
    R16(C_PLAIN), R16(C_PLAIN),                                    /* 60..7F */
    R16(C_BAD), R16(C_BAD), R16(C_BAD), R16(C_BAD),                /* 80..BF */
    C_BAD, C_BAD, C_U2, C_U2, R4(C_U2), R4(C_U2), R4(C_U2), R16(C_U2), /* C0..DF */
    C_U3_E0, R4(C_U3), R4(C_U3), R4(C_U3),                         /* E0..EC */
    C_U3_ED, C_U3, C_U3,                                           /* ED..EF */
    C_U4_F0, C_U4, C_U4, C_U4, C_U4_F4, C_BAD, C_BAD, C_BAD, R4(C_BAD), R4(C_BAD), /* F0..FF */
};

/* Hex digit values; 0xFF for anything else. */
#define X16(x) R16(x)
static const unsigned char hex_val[256] = {
    X16(0xFF), X16(0xFF), X16(0xFF),
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, /* 30..3F */
    0xFF, 10, 11, 12, 13, 14, 15, 0xFF, R4(0xFF), R4(0xFF),           /* 40..4F */
    X16(0xFF),
    0xFF, 10, 11, 12, 13, 14, 15, 0xFF, R4(0xFF), R4(0xFF),           /* 60..6F */
    X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF), X16(0xFF),
};

static const char *const errstr[JTOK_ECOUNT_] = {
    [JTOK_OK] = "ok",
    [JTOK_EEMPTY] = "empty input",
    [JTOK_ESYNTAX] = "syntax error",
    [JTOK_ETRUNC] = "unexpected end of input",
    [JTOK_ETRAILING] = "trailing data after value",
    [JTOK_ENUMBER] = "invalid number",
    [JTOK_ECTRL] = "control character in string",
    [JTOK_EESCAPE] = "invalid escape",
    [JTOK_EUTF8] = "invalid UTF-8",
    [JTOK_EDEPTH] = "nesting too deep",
    [JTOK_ETOKENS] = "too many tokens",
    [JTOK_ETOOBIG] = "input too large",
};

const char *jtok_strerror(int code)
{
    if (code < 0 || code >= JTOK_ECOUNT_)
        return "unknown error";
    return errstr[code];
}

typedef struct {
    const unsigned char *s;
    uint32_t len;
    uint32_t pos;
    jtok_t *toks;
    uint32_t n;     /* tokens so far */
    uint32_t limit; /* most tokens allowed */
    uint32_t cur;   /* innermost open container (real mode), NO_PARENT at top */
    unsigned depth, max_depth;
    uint64_t is_obj[JTOK_DEPTH_MAX / 64]; /* bit per open level: object (1) or array (0) */
    int code;
    uint32_t off;
} parser_t;

#define NO_PARENT UINT32_MAX

static inline bool is_digit(unsigned char c) { return (unsigned)(c - '0') < 10; }
static inline bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
static inline bool is_alnum(unsigned char c)
{
    return is_digit(c) || (unsigned)((c | 0x20) - 'a') < 26;
}

static inline int fail(parser_t *p, int code, uint32_t off)
{
    p->code = code;
    p->off = off;
    return -1;
}

static inline void skip_ws(parser_t *p)
{
    while (p->pos < p->len && is_ws(p->s[p->pos]))
        p->pos++;
}

/* Checks the UTF-8 sequence whose lead byte (class cls) is at s[i]; returns its length or -1. */
static inline int utf8_seq(parser_t *p, uint32_t i, unsigned cls)
{
    unsigned char lo = 0x80, hi = 0xBF;
    int n;
    switch (cls) {
    case C_U2: n = 2; break;
    case C_U3_E0: n = 3; lo = 0xA0; break;
    case C_U3: n = 3; break;
    case C_U3_ED: n = 3; hi = 0x9F; break;
    case C_U4_F0: n = 4; lo = 0x90; break;
    case C_U4: n = 4; break;
    case C_U4_F4: n = 4; hi = 0x8F; break;
    default: return fail(p, JTOK_EUTF8, i);
    }
    for (uint32_t k = 1; k < (uint32_t)n; k++) {
        if (k >= p->len - i) /* i + k >= len, without wrapping near 4 GiB */
            return fail(p, JTOK_ETRUNC, p->len);
        unsigned char c = p->s[i + k];
        if (c < lo || c > hi)
            return fail(p, JTOK_EUTF8, i);
        lo = 0x80;
        hi = 0xBF;
    }
    return n;
}

/* Reads 4 hex digits at s[i..i+4); returns the value or -1 (error set; esc = the backslash). */
static inline int32_t hex4(parser_t *p, uint32_t i, uint32_t esc)
{
    int32_t v = 0;
    for (uint32_t k = 0; k < 4; k++) {
        if (k >= p->len - i) /* i <= len here */
            return fail(p, JTOK_ETRUNC, p->len);
        unsigned char h = hex_val[p->s[i + k]];
        if (h == 0xFF)
            return fail(p, JTOK_EESCAPE, esc);
        v = v << 4 | h;
    }
    return v;
}

/* Validates the escape at s[i] == '\\'; returns its length in bytes or -1. */
static int escape(parser_t *p, uint32_t i)
{
    if (i + 1 >= p->len)
        return fail(p, JTOK_ETRUNC, p->len);
    switch (p->s[i + 1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        return 2;
    case 'u':
        break;
    default:
        return fail(p, JTOK_EESCAPE, i);
    }
    int32_t u = hex4(p, i + 2, i);
    if (u < 0)
        return -1;
    if (u >= 0xDC00 && u <= 0xDFFF)
        return fail(p, JTOK_EESCAPE, i); /* low surrogate first */
    if (u < 0xD800 || u > 0xDBFF)
        return 6;
    /* A high surrogate must be followed at once by an escaped low one. */
    uint32_t j = i + 6;
    if (j >= p->len || (p->s[j] == '\\' && j + 1 >= p->len))
        return fail(p, JTOK_ETRUNC, p->len);
    if (p->s[j] != '\\' || p->s[j + 1] != 'u')
        return fail(p, JTOK_EESCAPE, i);
    int32_t l = hex4(p, j + 2, j);
    if (l < 0)
        return -1;
    if (l < 0xDC00 || l > 0xDFFF)
        return fail(p, JTOK_EESCAPE, i);
    return 12;
}

/* Scans the string whose opening quote is at pos; on success pos is past the
 * closing quote and *end / *escaped describe it. */
static inline int scan_string(parser_t *p, uint32_t *end, bool *escaped)
{
    const unsigned char *s = p->s;
    uint32_t len = p->len, i = p->pos + 1;
    bool esc = false;
    for (;;) {
        while (len - i >= 4 && !(str_class[s[i]] | str_class[s[i + 1]] | str_class[s[i + 2]] |
                                 str_class[s[i + 3]]))
            i += 4;
        while (i < len && str_class[s[i]] == C_PLAIN)
            i++;
        if (i >= len)
            return fail(p, JTOK_ETRUNC, len);
        unsigned cls = str_class[s[i]];
        if (cls == C_QUOTE)
            break;
        int n;
        if (cls == C_BSLASH) {
            esc = true;
            n = escape(p, i);
        } else if (cls == C_CTRL) {
            return fail(p, JTOK_ECTRL, i);
        } else {
            n = utf8_seq(p, i, cls);
        }
        if (n < 0)
            return -1;
        i += (uint32_t)n;
    }
    *end = i;
    *escaped = esc;
    p->pos = i + 1;
    return 0;
}

/* Scans a number starting at pos ('-' or a digit); pos ends past it. */
static inline int scan_number(parser_t *p)
{
    const unsigned char *s = p->s;
    uint32_t len = p->len, i = p->pos;
    if (s[i] == '-')
        i++;
    if (i < len && s[i] == '0') {
        i++;
    } else if (i < len && is_digit(s[i])) {
        while (++i < len && is_digit(s[i]))
            ;
    } else {
        return fail(p, JTOK_ENUMBER, i);
    }
    if (i < len && s[i] == '.') {
        if (++i >= len || !is_digit(s[i]))
            return fail(p, JTOK_ENUMBER, i);
        while (++i < len && is_digit(s[i]))
            ;
    }
    if (i < len && (s[i] | 0x20) == 'e') {
        if (++i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= len || !is_digit(s[i]))
            return fail(p, JTOK_ENUMBER, i);
        while (++i < len && is_digit(s[i]))
            ;
    }
    /* "01", "1.5.2", "1e5e", "0x1F", "1-2": the number must end at a delimiter. */
    if (i < len && (is_alnum(s[i]) || s[i] == '.' || s[i] == '+' || s[i] == '-'))
        return fail(p, JTOK_ENUMBER, i);
    p->pos = i;
    return 0;
}

static inline int scan_literal(parser_t *p, const char *word, uint32_t n)
{
    uint32_t avail = p->len - p->pos;
    if (avail < n) {
        if (memcmp(p->s + p->pos, word, avail) == 0)
            return fail(p, JTOK_ETRUNC, p->len);
        n = avail;
    }
    for (uint32_t k = 0; k < n; k++)
        if (p->s[p->pos + k] != (unsigned char)word[k])
            return fail(p, JTOK_ESYNTAX, p->pos + k);
    if (p->pos + n < p->len && is_alnum(p->s[p->pos + n]))
        return fail(p, JTOK_ESYNTAX, p->pos + n);
    p->pos += n;
    return 0;
}

/* Appends a token; in counting mode (real == false) only counts it. */
static inline int emit(parser_t *p, bool real, jtok_type_t type, uint32_t start, uint32_t len)
{
    if (p->n >= p->limit)
        return fail(p, JTOK_ETOKENS, start);
    if (real)
        p->toks[p->n] = (jtok_t){ .type = type, .start = start, .len = len, .next = p->n + 1 };
    p->n++;
    return 0;
}

static inline bool level_is_obj(const parser_t *p)
{
    unsigned d = p->depth - 1;
    return p->is_obj[d / 64] >> (d % 64) & 1;
}

/* Closes the innermost container at the bracket at pos. */
static inline void close_container(parser_t *p, bool real)
{
    if (real) {
        jtok_t *t = &p->toks[p->cur];
        uint32_t parent = t->next; /* the parent link, kept here while open */
        t->next = p->n;
        t->len = p->pos + 1 - t->start;
        p->cur = parent;
    }
    p->depth--;
    p->pos++;
}

/* The grammar as a small goto machine: "value" expects any value, "key" an
 * object key, "after" what may follow a complete value. Specialised by the
 * compiler for real and counting mode. */
static inline __attribute__((always_inline)) int parse(parser_t *p, const bool real)
{
    const unsigned char *s = p->s;
    uint32_t end;
    bool esc;

    skip_ws(p);
    if (p->pos == p->len)
        return fail(p, JTOK_EEMPTY, p->pos);

value:
    if (p->pos >= p->len)
        return fail(p, JTOK_ETRUNC, p->len);
    if (real && p->depth > 0 && !level_is_obj(p))
        p->toks[p->cur].size++;
    switch (s[p->pos]) {
    case '{':
    case '[': {
        bool obj = s[p->pos] == '{';
        if (p->depth >= p->max_depth)
            return fail(p, JTOK_EDEPTH, p->pos);
        if (emit(p, real, obj ? JTOK_OBJECT : JTOK_ARRAY, p->pos, 1) < 0)
            return -1;
        if (real) {
            p->toks[p->n - 1].next = p->cur;
            p->cur = p->n - 1;
        }
        unsigned d = p->depth++;
        if (obj)
            p->is_obj[d / 64] |= (uint64_t)1 << (d % 64);
        else
            p->is_obj[d / 64] &= ~((uint64_t)1 << (d % 64));
        p->pos++;
        skip_ws(p);
        if (p->pos >= p->len)
            return fail(p, JTOK_ETRUNC, p->len);
        if (s[p->pos] == (obj ? '}' : ']')) {
            close_container(p, real);
            goto after;
        }
        if (obj)
            goto key;
        goto value;
    }
    case '"': {
        uint32_t start = p->pos + 1;
        if (scan_string(p, &end, &esc) < 0 || emit(p, real, JTOK_STRING, start, end - start) < 0)
            return -1;
        if (real)
            p->toks[p->n - 1].escaped = esc;
        goto after;
    }
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': {
        uint32_t start = p->pos;
        if (scan_number(p) < 0)
            return -1;
        if (emit(p, real, JTOK_NUMBER, start, p->pos - start) < 0)
            return -1;
        goto after;
    }
    case 't':
        if (scan_literal(p, "true", 4) < 0 || emit(p, real, JTOK_TRUE, p->pos - 4, 4) < 0)
            return -1;
        goto after;
    case 'f':
        if (scan_literal(p, "false", 5) < 0 || emit(p, real, JTOK_FALSE, p->pos - 5, 5) < 0)
            return -1;
        goto after;
    case 'n':
        if (scan_literal(p, "null", 4) < 0 || emit(p, real, JTOK_NULL, p->pos - 4, 4) < 0)
            return -1;
        goto after;
    case '+':
    case '.':
        return fail(p, JTOK_ENUMBER, p->pos);
    default:
        return fail(p, JTOK_ESYNTAX, p->pos);
    }

key:
    /* pos is at a non-whitespace byte inside an object */
    if (s[p->pos] != '"')
        return fail(p, JTOK_ESYNTAX, p->pos);
    if (real)
        p->toks[p->cur].size++;
    {
        uint32_t start = p->pos + 1;
        if (scan_string(p, &end, &esc) < 0 || emit(p, real, JTOK_STRING, start, end - start) < 0)
            return -1;
        if (real)
            p->toks[p->n - 1].escaped = esc;
    }
    skip_ws(p);
    if (p->pos >= p->len)
        return fail(p, JTOK_ETRUNC, p->len);
    if (s[p->pos] != ':')
        return fail(p, JTOK_ESYNTAX, p->pos);
    p->pos++;
    skip_ws(p);
    goto value;

after:
    skip_ws(p);
    if (p->depth == 0) {
        if (p->pos != p->len)
            return fail(p, JTOK_ETRAILING, p->pos);
        return 0;
    }
    if (p->pos >= p->len)
        return fail(p, JTOK_ETRUNC, p->len);
    if (level_is_obj(p)) {
        if (s[p->pos] == ',') {
            p->pos++;
            skip_ws(p);
            if (p->pos >= p->len)
                return fail(p, JTOK_ETRUNC, p->len);
            goto key;
        }
        if (s[p->pos] == '}') {
            close_container(p, real);
            goto after;
        }
    } else {
        if (s[p->pos] == ',') {
            p->pos++;
            skip_ws(p);
            goto value;
        }
        if (s[p->pos] == ']') {
            close_container(p, real);
            goto after;
        }
    }
    return fail(p, JTOK_ESYNTAX, p->pos);
}

int jtok_parse(const char *buf, size_t len, jtok_t *toks, size_t cap, unsigned max_depth,
               jtok_err_t *err)
{
    parser_t p;
    if (len > UINT32_MAX) {
        if (err)
            *err = (jtok_err_t){ JTOK_ETOOBIG, (size_t)UINT32_MAX };
        return -1;
    }
    p.s = (const unsigned char *)buf;
    p.len = (uint32_t)len;
    p.pos = 0;
    p.toks = toks;
    p.n = 0;
    p.limit = INT_MAX;
    if (toks && cap < INT_MAX)
        p.limit = (uint32_t)cap;
    p.cur = NO_PARENT;
    p.depth = 0;
    p.max_depth = max_depth < JTOK_DEPTH_MAX ? max_depth : JTOK_DEPTH_MAX;
    p.code = JTOK_OK;
    p.off = 0;

    int rc = toks ? parse(&p, true) : parse(&p, false);
    if (rc < 0) {
        if (err)
            *err = (jtok_err_t){ p.code, p.off };
        return -1;
    }
    if (err)
        *err = (jtok_err_t){ JTOK_OK, 0 };
    return (int)p.n;
}

/* Decodes one escape at raw[i] == '\\' (already validated by jtok_parse) into
 * u8; returns the number of bytes written and advances *i. */
static int decode_escape(const unsigned char *raw, uint32_t *i, unsigned char u8[4])
{
    unsigned char c = raw[*i + 1];
    uint32_t cp;
    switch (c) {
    case 'b': u8[0] = '\b'; *i += 2; return 1;
    case 'f': u8[0] = '\f'; *i += 2; return 1;
    case 'n': u8[0] = '\n'; *i += 2; return 1;
    case 'r': u8[0] = '\r'; *i += 2; return 1;
    case 't': u8[0] = '\t'; *i += 2; return 1;
    case 'u': break;
    default: u8[0] = c; *i += 2; return 1; /* " \ / */
    }
    const unsigned char *h = raw + *i + 2;
    cp = (uint32_t)hex_val[h[0]] << 12 | (uint32_t)hex_val[h[1]] << 8 | (uint32_t)hex_val[h[2]] << 4 |
         hex_val[h[3]];
    *i += 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        h = raw + *i + 2;
        uint32_t lo = (uint32_t)hex_val[h[0]] << 12 | (uint32_t)hex_val[h[1]] << 8 |
                      (uint32_t)hex_val[h[2]] << 4 | hex_val[h[3]];
        assert(raw[*i] == '\\' && lo >= 0xDC00 && lo <= 0xDFFF);
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        *i += 6;
    }
    if (cp < 0x80) {
        u8[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u8[0] = (unsigned char)(0xC0 | cp >> 6);
        u8[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u8[0] = (unsigned char)(0xE0 | cp >> 12);
        u8[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        u8[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u8[0] = (unsigned char)(0xF0 | cp >> 18);
    u8[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    u8[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    u8[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

ssize_t jtok_str_decode(const char *buf, const jtok_t *t, char *out, size_t cap)
{
    assert(t->type == JTOK_STRING);
    const unsigned char *raw = (const unsigned char *)buf + t->start;
    uint32_t n = t->len;
    if (!t->escaped) {
        if (cap <= n)
            goto too_small;
        memcpy(out, raw, n);
        out[n] = '\0';
        return (ssize_t)n;
    }
    size_t o = 0;
    uint32_t i = 0;
    while (i < n) {
        const unsigned char *bs = memchr(raw + i, '\\', n - i);
        uint32_t run = bs ? (uint32_t)(bs - (raw + i)) : n - i;
        if (cap - o <= run)
            goto too_small;
        memcpy(out + o, raw + i, run);
        o += run;
        i += run;
        if (i == n)
            break;
        unsigned char u8[4];
        int k = decode_escape(raw, &i, u8);
        if (cap - o <= (size_t)k)
            goto too_small;
        memcpy(out + o, u8, (size_t)k);
        o += (size_t)k;
    }
    out[o] = '\0';
    return (ssize_t)o;
too_small:
    if (cap > 0)
        out[0] = '\0';
    errno = ERANGE;
    return -1;
}

bool jtok_str_eq(const char *buf, const jtok_t *t, const char *s)
{
    if (t->type != JTOK_STRING)
        return false;
    const unsigned char *raw = (const unsigned char *)buf + t->start;
    uint32_t n = t->len;
    size_t slen = strlen(s);
    if (!t->escaped)
        return slen == n && memcmp(raw, s, n) == 0;
    if (slen > n) /* decoding never grows a string */
        return false;
    size_t o = 0;
    uint32_t i = 0;
    while (i < n) {
        const unsigned char *bs = memchr(raw + i, '\\', n - i);
        uint32_t run = bs ? (uint32_t)(bs - (raw + i)) : n - i;
        if (slen - o < run || memcmp(s + o, raw + i, run) != 0)
            return false;
        o += run;
        i += run;
        if (i == n)
            break;
        unsigned char u8[4];
        int k = decode_escape(raw, &i, u8);
        if (slen - o < (size_t)k || memcmp(s + o, u8, (size_t)k) != 0)
            return false;
        o += (size_t)k;
    }
    return o == slen;
}

int jtok_obj_get(const char *buf, const jtok_t *toks, int obj, const char *key)
{
    assert(obj >= 0);
    const jtok_t *o = &toks[obj];
    if (o->type != JTOK_OBJECT)
        return -1;
    uint32_t k = (uint32_t)obj + 1;
    for (uint32_t pair = 0; pair < o->size; pair++) {
        uint32_t v = k + 1;
        if (jtok_str_eq(buf, &toks[k], key))
            return (int)v;
        k = toks[v].next;
    }
    return -1;
}

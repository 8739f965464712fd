/* statsd: StatsD / DogStatsD line parser. See statsd.h for the grammar. */
#include "statsd.h"

#include "utf8.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


/* ASCII bytes that end or split a name section or a tag. */
enum {
    C_COLON = 1,
    C_PIPE,
    C_COMMA,
    C_HASH,
    C_LBRACKET,
    C_RBRACKET,
    C_EQUAL,
};

static const unsigned char special[128] = {
    [':'] = C_COLON,    ['|'] = C_PIPE,      [','] = C_COMMA, ['#'] = C_HASH,
    ['['] = C_LBRACKET, [']'] = C_RBRACKET,  ['='] = C_EQUAL,
};

static inline bool is_ctrl(unsigned char c) { return c < 0x20 || c == 0x7f; }

/* Bytes that need no decision inside a tag list: printable ASCII other than
 * the separators. Tag lists are most of a DogStatsD line, so they are skipped
 * over in a tight loop and only the rest goes through the checks. */
#define P16(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x
static const unsigned char tag_plain[256] = {
    P16(0), P16(0),
    /* 0x20 ' ' ! " # $ % & ' ( ) * + , - . / */
    0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    /* 0x30 0-9 : ; < = > ? */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1,
    /* 0x40 @ A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 P-Z [ \ ] ^ _ */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1,
    /* 0x60 ` a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 p-z { | } ~ DEL */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0,
    P16(0), P16(0), P16(0), P16(0), P16(0), P16(0), P16(0), P16(0),
};
#undef P16


/* Exact powers of ten representable as doubles (Clinger's fast path). */
static const double pow10_exact[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* Parses a whole decimal token p[0..n) into a finite double; 0 or -1.
 * The grammar is checked here byte by byte, so strtod never sees what it
 * would accept and we do not (blanks, hex, inf, nan). When the mantissa
 * fits 53 bits and the exponent is within +-22, one IEEE multiplication or
 * division of two exact values is correctly rounded, the same result as
 * strtod; every other token goes to strtod on a bounded NUL-terminated copy. */
static int parse_number(const char *p, size_t n, double *out)
{
    size_t i = 0;
    bool neg = false, digits = false, slow = false;
    uint64_t m = 0;
    int ndig = 0;
    long exp10 = 0;

    if (n == 0 || n > STATSD_MAX_NUMBER)
        return -1;
    if (p[0] == '+' || p[0] == '-') {
        neg = p[0] == '-';
        i++;
    }
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        digits = true;
        if (m == 0 && d == 0)
            continue;
        if (ndig < 19) {
            m = m * 10 + d;
            ndig++;
        } else
            slow = true;
    }
    if (i < n && p[i] == '.') {
        for (i++; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
            unsigned d = (unsigned)(p[i] - '0');
            digits = true;
            exp10--;
            if (m == 0 && d == 0)
                continue;
            if (ndig < 19) {
                m = m * 10 + d;
                ndig++;
            } else
                slow = true;
        }
    }
    if (!digits)
        return -1;
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        bool eneg = false, edigits = false;
        long e = 0;
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) {
            eneg = p[i] == '-';
            i++;
        }
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
            edigits = true;
            if (e < 100000)
                e = e * 10 + (p[i] - '0');
        }
        if (!edigits)
            return -1;
        exp10 += eneg ? -e : e;
    }
    if (i != n)
        return -1;

    if (!slow && m == 0) {
        *out = neg ? -0.0 : 0.0;
        return 0;
    }
    if (!slow && m <= (UINT64_C(1) << 53) && exp10 >= -22 && exp10 <= 22) {
        double d = (double)m;
        d = exp10 < 0 ? d / pow10_exact[-exp10] : d * pow10_exact[exp10];
        *out = neg ? -d : d;
        return 0;
    }

    char buf[STATSD_MAX_NUMBER + 1];
    char *end;
    double d;
    memcpy(buf, p, n);
    buf[n] = '\0';
    errno = 0;
    d = strtod(buf, &end);
    if (end != buf + n || errno == ERANGE || !isfinite(d))
        return -1;
    *out = d;
    return 0;
}

/* Where a tag list sits, which decides what ends it and what separates a
 * key from its value. */
typedef enum {
    TAGS_BRACKET, /* SignalFX [k=v,...]: ends at ']'; ':' '|' '[' or the end are errors */
    TAGS_NAME,    /* InfluxDB ,k=v / Librato #k=v: ends at ':' or '|' or the end */
    TAGS_DOG,     /* DogStatsD |#k:v: ends at '|' or the end */
} tags_where_t;

/* Parses a comma-separated tag list starting at s[*pos]; leaves *pos on the
 * byte that ended it (for TAGS_BRACKET, the ']'). */
static statsd_result_t parse_tags(const unsigned char *s, size_t len, size_t *pos,
                                  tags_where_t where, statsd_line_t *out)
{
    const unsigned char kvsep = where == TAGS_DOG ? ':' : '=';
    size_t i = *pos;

    for (;;) {
        size_t start = i, sep = 0;
        bool has_sep = false;

        for (; i < len; i++) {
            while (i < len && tag_plain[s[i]])
                i++;
            if (i == len)
                break;
            unsigned char c = s[i];
            if (c >= 0x80) {
                size_t n = utf8_seq(s + i, len - i);
                if (n == 0)
                    return STATSD_ERR_TAGS;
                i += n - 1;
                continue;
            }
            if (is_ctrl(c))
                return STATSD_ERR_TAGS;
            if (c == ' ') {
                if (!has_sep)
                    return STATSD_ERR_TAGS;
                continue;
            }
            if (!special[c])
                continue;
            if (c == ',' || c == '|')
                break;
            if (c == kvsep) {
                if (!has_sep) {
                    has_sep = true;
                    sep = i;
                }
                continue;
            }
            if (where == TAGS_NAME && c == ':')
                break;
            if (where == TAGS_BRACKET) {
                if (c == ']')
                    break;
                if (c == ':' || c == '[')
                    return STATSD_ERR_TAGS;
            }
        }

        if (i > start) {
            size_t klen = (has_sep ? sep : i) - start;
            statsd_tag_t *t;
            if (klen == 0 || out->ntags == STATSD_MAX_TAGS)
                return STATSD_ERR_TAGS;
            t = &out->tags[out->ntags++];
            t->key = span_make((const char *)s + start, klen);
            if (has_sep)
                t->value = span_make((const char *)s + sep + 1, i - sep - 1);
            else
                t->value = span_make((const char *)s + i, 0);
        }
        if (i == len || s[i] != ',')
            break;
        i++;
    }
    if (where == TAGS_BRACKET && (i == len || s[i] != ']'))
        return STATSD_ERR_TAGS;
    *pos = i;
    return STATSD_OK;
}

/* Appends a piece of the name; the first piece stays in the line, later
 * ones move the whole name into namebuf. */
static statsd_result_t add_name_piece(statsd_line_t *out, const char *p, size_t n)
{
    if (n == 0)
        return STATSD_OK;
    if (n > STATSD_MAX_NAME - out->name.len)
        return STATSD_ERR_NAME;
    if (out->name.len == 0) {
        out->name = span_make(p, n);
        return STATSD_OK;
    }
    if (out->name.p != out->namebuf) {
        memmove(out->namebuf, out->name.p, out->name.len);
        out->name.p = out->namebuf;
    }
    memcpy(out->namebuf + out->name.len, p, n);
    out->name.len += n;
    return STATSD_OK;
}

/* Name section: from the start to the first ':' (or a '|', meaning the
 * value is missing). Returns with *pos on that byte or at len. */
static statsd_result_t parse_name(const unsigned char *s, size_t len, size_t *pos,
                                  statsd_line_t *out)
{
    size_t i = 0, piece = 0;
    statsd_result_t r;

    for (; i < len; i++) {
        unsigned char c = s[i];
        if (c >= 0x80) {
            size_t n = utf8_seq(s + i, len - i);
            if (n == 0)
                return STATSD_ERR_NAME;
            i += n - 1;
            continue;
        }
        if (c <= ' ' || c == 0x7f)
            return STATSD_ERR_NAME;
        switch (special[c]) {
        case C_COLON:
        case C_PIPE:
            goto end;
        case C_LBRACKET:
            if ((r = add_name_piece(out, (const char *)s + piece, i - piece)) != STATSD_OK)
                return r;
            i++;
            if ((r = parse_tags(s, len, &i, TAGS_BRACKET, out)) != STATSD_OK)
                return r;
            piece = i + 1; /* after the ']' */
            break;
        case C_RBRACKET:
            return STATSD_ERR_TAGS;
        case C_COMMA:
        case C_HASH:
            if ((r = add_name_piece(out, (const char *)s + piece, i - piece)) != STATSD_OK)
                return r;
            i++;
            if ((r = parse_tags(s, len, &i, TAGS_NAME, out)) != STATSD_OK)
                return r;
            piece = i;
            goto end;
        default:
            break;
        }
    }
end:
    if ((r = add_name_piece(out, (const char *)s + piece, i - piece)) != STATSD_OK)
        return r;
    if (out->name.len == 0)
        return STATSD_ERR_NAME;
    *pos = i;
    return STATSD_OK;
}

static bool parse_type(const char *p, size_t n, statsd_type_t *type)
{
    if (n == 1) {
        switch (p[0]) {
        case 'c': *type = STATSD_COUNTER; return true;
        case 'g': *type = STATSD_GAUGE; return true;
        case 'h': *type = STATSD_HISTOGRAM; return true;
        case 'd': *type = STATSD_DISTRIBUTION; return true;
        case 's': *type = STATSD_SET; return true;
        default: return false;
        }
    }
    if (n == 2 && p[0] == 'm' && p[1] == 's') {
        *type = STATSD_TIMER;
        return true;
    }
    return false;
}

static bool parse_timestamp(const char *p, size_t n, int64_t *ts)
{
    int64_t v = 0;

    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        int d = p[i] - '0';
        if (v > (INT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *ts = v;
    return true;
}

/* Set members: anything but control bytes and invalid UTF-8. */
static bool valid_member(const unsigned char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0x80) {
            size_t k = utf8_seq(s + i, n - i);
            if (k == 0)
                return false;
            i += k - 1;
        } else if (is_ctrl(s[i]))
            return false;
    }
    return true;
}

/* Sign kinds of a gauge value, for the delta rule. */
enum { SIGN_NONE, SIGN_PLUS, SIGN_MINUS };

statsd_result_t statsd_parse(const char *line, size_t len, statsd_gauge_sign_t sign_rule,
                             statsd_line_t *out)
{
    const unsigned char *s = (const unsigned char *)line;
    size_t i, vstart, vend, tend;
    bool seen_rate = false, seen_ts = false;
    statsd_result_t r;

    assert(out != NULL);
    assert(line != NULL || len == 0);

    out->name = SPAN_NULL;
    out->type = STATSD_COUNTER;
    out->nvalues = 0;
    out->member = SPAN_NULL;
    out->delta = false;
    out->rate = 1.0;
    out->ntags = 0;
    out->has_ts = false;
    out->ts = 0;
    out->dogstatsd = false;
    out->container = SPAN_NULL;

    if (len > 0 && s[len - 1] == '\r')
        len--;
    if (len > STATSD_MAX_LINE)
        return STATSD_ERR_TOO_LONG;
    if (len == 0)
        return STATSD_ERR_EMPTY;
    if (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')) {
        for (i = 1; i < len && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')); i++)
            ;
        if (i == len)
            return STATSD_ERR_EMPTY;
        return STATSD_ERR_NAME;
    }
    if (s[0] == '_') {
        if (len >= 3 && s[1] == 'e' && s[2] == '{') {
            out->dogstatsd = true;
            return STATSD_EVENT;
        }
        if (len >= 4 && s[1] == 's' && s[2] == 'c' && s[3] == '|') {
            out->dogstatsd = true;
            return STATSD_SERVICE_CHECK;
        }
    }

    if ((r = parse_name(s, len, &i, out)) != STATSD_OK)
        return r;
    if (i == len || s[i] != ':')
        return STATSD_ERR_VALUE; /* "name" or "name|c": no value */

    /* Value section up to the first '|', then the type. */
    vstart = i + 1;
    {
        const unsigned char *bar = memchr(s + vstart, '|', len - vstart);
        vend = bar ? (size_t)(bar - s) : len;
    }
    if (vend == vstart)
        return STATSD_ERR_VALUE;
    if (vend == len)
        return STATSD_ERR_TYPE;
    {
        const unsigned char *bar = memchr(s + vend + 1, '|', len - vend - 1);
        tend = bar ? (size_t)(bar - s) : len;
    }
    if (!parse_type(line + vend + 1, tend - vend - 1, &out->type))
        return STATSD_ERR_TYPE;

    /* Values. Which signs the values carry is kept for the gauge delta
     * rule, which also depends on the DogStatsD sections that follow. */
    bool seen_sign[3] = { false, false, false };
    if (out->type == STATSD_SET) {
        if (!valid_member(s + vstart, vend - vstart))
            return STATSD_ERR_VALUE;
        out->member = span_make(line + vstart, vend - vstart);
    } else {
        size_t j = vstart;
        for (;;) {
            const unsigned char *colon = memchr(s + j, ':', vend - j);
            size_t k = colon ? (size_t)(colon - s) : vend;
            if (out->nvalues == STATSD_MAX_VALUES)
                return STATSD_ERR_TOO_MANY_VALUES;
            if (parse_number(line + j, k - j, &out->values[out->nvalues]) != 0)
                return STATSD_ERR_VALUE;
            seen_sign[s[j] == '+' ? SIGN_PLUS : s[j] == '-' ? SIGN_MINUS : SIGN_NONE] = true;
            out->nvalues++;
            if (k == vend)
                break;
            j = k + 1;
        }
    }

    /* Sections after the type. */
    for (i = tend; i < len;) {
        size_t start = i + 1, end;
        const unsigned char *bar;

        if (start < len && s[start] == '#') {
            out->dogstatsd = true;
            i = start + 1;
            if ((r = parse_tags(s, len, &i, TAGS_DOG, out)) != STATSD_OK)
                return r;
            continue;
        }
        bar = memchr(s + start, '|', len - start);
        end = bar ? (size_t)(bar - s) : len;
        if (end > start) {
            const char *p = line + start;
            size_t n = end - start;
            switch (p[0]) {
            case '@':
                if (seen_rate || parse_number(p + 1, n - 1, &out->rate) != 0 ||
                    !(out->rate > 0.0 && out->rate <= 1.0))
                    return STATSD_ERR_RATE;
                seen_rate = true;
                break;
            case 'T':
                if (seen_ts || !parse_timestamp(p + 1, n - 1, &out->ts))
                    return STATSD_ERR_TIMESTAMP;
                seen_ts = out->has_ts = true;
                out->dogstatsd = true;
                break;
            case 'c':
                if (n >= 2 && p[1] == ':') {
                    out->container = span_make(p + 2, n - 2);
                    out->dogstatsd = true;
                }
                break;
            case 'e':
                if (n >= 2 && p[1] == ':')
                    out->dogstatsd = true;
                break;
            default:
                break; /* unknown extension: ignored */
            }
        }
        i = end;
    }

    if (out->type == STATSD_GAUGE) {
        bool plus_delta = sign_rule != STATSD_GAUGE_ABSOLUTE;
        bool minus_delta = sign_rule == STATSD_GAUGE_DELTA ||
                           (sign_rule == STATSD_GAUGE_AUTO && !out->dogstatsd);
        bool any_delta = (seen_sign[SIGN_PLUS] && plus_delta) ||
                         (seen_sign[SIGN_MINUS] && minus_delta);
        bool any_absolute = seen_sign[SIGN_NONE] || (seen_sign[SIGN_PLUS] && !plus_delta) ||
                            (seen_sign[SIGN_MINUS] && !minus_delta);
        if (any_delta && any_absolute)
            return STATSD_ERR_VALUE; /* packed gauge mixing deltas and absolute values */
        out->delta = any_delta;
    }
    return STATSD_OK;
}

void statsd_line_copy(statsd_line_t *dst, const statsd_line_t *src)
{
    assert(dst != NULL && src != NULL);
    if (dst == src)
        return;
    *dst = *src;
    if (src->name.p == src->namebuf)
        dst->name.p = dst->namebuf;
}

const char *statsd_result_name(statsd_result_t r)
{
    switch (r) {
    case STATSD_OK: return "ok";
    case STATSD_EVENT: return "event";
    case STATSD_SERVICE_CHECK: return "service_check";
    case STATSD_ERR_EMPTY: return "empty";
    case STATSD_ERR_NAME: return "bad_name";
    case STATSD_ERR_VALUE: return "bad_value";
    case STATSD_ERR_TYPE: return "bad_type";
    case STATSD_ERR_RATE: return "bad_rate";
    case STATSD_ERR_TAGS: return "bad_tags";
    case STATSD_ERR_TOO_MANY_VALUES: return "too_many_values";
    case STATSD_ERR_TIMESTAMP: return "bad_timestamp";
    case STATSD_ERR_TOO_LONG: return "line_too_long";
    case STATSD_RESULT_COUNT: break;
    }
    return "unknown";
}

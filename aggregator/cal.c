#include "cal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tmtime.h"
#include "xalloc.h"

#define DAY_S 86400
/* RFC 8536 asks UT offsets to stay within (-25 h, +26 h); anything beyond
 * 26 h is refused, which bounds how far a local date is from its instant. */
#define MAX_UTOFF (26 * 3600)
#define TZIF_MAX (1 << 20) /* the largest file in tzdata is a few KiB */
#define TZIF_MAX_TIMES 100000
#define FOOTER_MAX 256
#define NAME_MAX_LEN 255

typedef struct {
    int32_t utoff; /* seconds east of UT */
    int isdst;
    const char *abbr; /* into the cal_t */
} ztype_t;

/* One change of the footer's POSIX TZ rule: a day of the year and a local
 * time of day (in the time in force before the change). */
typedef struct {
    char kind; /* 'J': Jn (1..365, no Feb 29), 'D': n (0..365), 'M': Mm.w.d */
    int n, m, w, d;
    int32_t secs; /* -167 h .. 167 h (RFC 8536 version 3) */
} zrule_t;

/* The last period computed for one kind, as a sequence lock: seq is odd
 * while a writer fills the fields. All fields are atomics so that a reader
 * racing a writer is not a data race; it sees a changed seq and ignores
 * what it read. */
typedef struct {
    _Atomic uint32_t seq;
    _Atomic int64_t start, next, id; /* ns, ns, id */
} slot_t;

struct cal {
    char *zone;
    int64_t *trans; /* unix seconds, strictly ascending */
    uint8_t *tidx;  /* type index of each transition */
    size_t ntrans;
    ztype_t *types;
    size_t ntypes;
    char *chars; /* abbreviations, NUL-terminated */
    bool has_rule; /* footer TZ string: rules past the last transition */
    bool rule_dst;
    ztype_t rstd, rdst;
    zrule_t rstart, rend;
    char rnames[2][16];
    /* Written through a const cal_t: the cache changes no result. */
    slot_t *cache; /* [CAL_MONTH + 1] */
};

typedef struct {
    int64_t start, next, id; /* seconds, seconds, id */
} span_t;

/* ---- arithmetic ------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

static bool is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* Howard Hinnant's civil_from_days, the inverse of tmtime_days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* 0 = Monday .. 6 = Sunday; day 0 (1970-01-01) was a Thursday. */
static int64_t iso_wday(int64_t day) { return floor_mod(day + 3, 7); }

static int64_t ns_of(int64_t s)
{
    if (s > INT64_MAX / TMTIME_NS_PER_SEC)
        return INT64_MAX;
    if (s < INT64_MIN / TMTIME_NS_PER_SEC)
        return INT64_MIN;
    return s * TMTIME_NS_PER_SEC;
}

/* ---- the zone as a function of time ----------------------------------- */

/* Local day (days since 1970-01-01) and local seconds of a rule's change in
 * year y. */
static int64_t rule_local(const zrule_t *r, int64_t y)
{
    const int64_t jan1 = tmtime_days_from_civil(y, 1, 1);
    int64_t day;
    switch (r->kind) {
    case 'J':
        day = jan1 + r->n - 1 + (r->n >= 60 && is_leap(y));
        break;
    case 'D':
        day = jan1 + r->n;
        break;
    default: {
        const int64_t first = tmtime_days_from_civil(y, (unsigned)r->m, 1);
        const int64_t after = r->m == 12 ? tmtime_days_from_civil(y + 1, 1, 1)
                                         : tmtime_days_from_civil(y, (unsigned)r->m + 1, 1);
        const int64_t wd = floor_mod(first + 4, 7); /* 0 = Sunday */
        day = first + (r->d - wd + 7) % 7 + 7 * (r->w - 1);
        while (day >= after) /* week 5 means the last such weekday */
            day -= 7;
        break;
    }
    }
    return day * DAY_S + r->secs;
}

/* The footer rule's type at unix second u and the next change after u. */
static const ztype_t *rule_at(const cal_t *c, int64_t u, int64_t *until)
{
    if (!c->rule_dst) {
        *until = INT64_MAX;
        return &c->rstd;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(floor_div(u, DAY_S), &y, &m, &d);
    /* The changes of the years around u, in time order. A rule time may be
     * up to a week off its date, hence a year either side; at equal times
     * the end of one year's DST comes before the start of the next's, so
     * all-year DST ("J365/25" meets "0/0") stays DST. */
    struct {
        int64_t t;
        bool dst;
    } ev[8];
    size_t k = 0;
    for (int64_t yy = y - 1; yy <= y + 2; yy++) {
        ev[k].t = rule_local(&c->rend, yy) - c->rdst.utoff;
        ev[k++].dst = false;
        ev[k].t = rule_local(&c->rstart, yy) - c->rstd.utoff;
        ev[k++].dst = true;
    }
    for (size_t i = 1; i < k; i++) /* stable insertion sort */
        for (size_t j = i; j > 0 && ev[j - 1].t > ev[j].t; j--) {
            const int64_t t = ev[j].t;
            const bool dst = ev[j].dst;
            ev[j] = ev[j - 1];
            ev[j - 1].t = t;
            ev[j - 1].dst = dst;
        }
    size_t i = 0;
    while (i < k && ev[i].t <= u)
        i++;
    const bool dst = i > 0 ? ev[i - 1].dst : !ev[0].dst;
    *until = i < k ? ev[i].t : INT64_MAX;
    return dst ? &c->rdst : &c->rstd;
}

/* The local time type in force at unix second u, and in *until a second
 * after u before which it does not change. */
static const ztype_t *zone_at(const cal_t *c, int64_t u, int64_t *until)
{
    const size_t n = c->ntrans;
    if (n == 0) {
        if (c->has_rule)
            return rule_at(c, u, until);
        *until = INT64_MAX;
        return &c->types[0];
    }
    if (u < c->trans[0]) { /* RFC 8536: type 0 before the first transition */
        *until = c->trans[0];
        return &c->types[0];
    }
    size_t lo = 0, hi = n; /* trans[lo] <= u < trans[hi] */
    while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        if (c->trans[mid] <= u)
            lo = mid;
        else
            hi = mid;
    }
    if (lo + 1 < n) {
        *until = c->trans[lo + 1];
        return &c->types[c->tidx[lo]];
    }
    if (c->has_rule)
        return rule_at(c, u, until);
    *until = INT64_MAX;
    return &c->types[c->tidx[lo]];
}

/* The first unix second at which the local wall clock reads local second L
 * or later. Offsets are within 26 h, so before L - 2 days the clock is
 * behind L; walk the stretches of constant offset from there: in each, the
 * clock reaches L at L - utoff, or at the stretch's start if a gap jumped
 * over L. */
static int64_t first_at(const cal_t *c, int64_t L)
{
    int64_t u = L - 2 * DAY_S;
    for (;;) {
        int64_t until;
        const ztype_t *ty = zone_at(c, u, &until);
        int64_t cand = L - ty->utoff;
        if (cand < u)
            cand = u;
        if (cand < until)
            return cand;
        u = until;
    }
}

static int64_t day_start(const cal_t *c, int64_t day) { return first_at(c, day * DAY_S); }

/* ---- periods ---------------------------------------------------------- */

static int64_t period_first(cal_period_t p, int64_t day)
{
    int64_t y;
    unsigned m, d;
    switch (p) {
    case CAL_DAY:
        return day;
    case CAL_WEEK:
        return day - iso_wday(day);
    default:
        civil_from_days(day, &y, &m, &d);
        return day - (d - 1);
    }
}

static int64_t period_after(cal_period_t p, int64_t first)
{
    int64_t y;
    unsigned m, d;
    switch (p) {
    case CAL_DAY:
        return first + 1;
    case CAL_WEEK:
        return first + 7;
    default:
        civil_from_days(first, &y, &m, &d);
        return m == 12 ? tmtime_days_from_civil(y + 1, 1, 1) : tmtime_days_from_civil(y, m + 1, 1);
    }
}

static int64_t period_id(cal_period_t p, int64_t first)
{
    int64_t y;
    unsigned m, d;
    switch (p) {
    case CAL_DAY:
        civil_from_days(first, &y, &m, &d);
        return y * 10000 + m * 100 + d;
    case CAL_WEEK: /* the ISO year is the Thursday's */
        civil_from_days(first + 3, &y, &m, &d);
        return y * 100 + (first + 3 - tmtime_days_from_civil(y, 1, 1)) / 7 + 1;
    default:
        civil_from_days(first, &y, &m, &d);
        return y * 100 + m;
    }
}

/* Starts are nondecreasing in the local date, so the period holding t is
 * the last one starting at or before t: usually that of t's local date,
 * later after a fall-back across midnight (the loop) or a skipped date. */
static void period_of(const cal_t *c, cal_period_t p, int64_t t, span_t *out)
{
    int64_t until;
    const ztype_t *ty = zone_at(c, t, &until);
    int64_t first = period_first(p, floor_div(t + ty->utoff, DAY_S));
    int64_t start = day_start(c, first);
    int64_t nfirst = period_after(p, first);
    int64_t next = day_start(c, nfirst);
    assert(start <= t);
    while (next <= t) {
        first = nfirst;
        start = next;
        nfirst = period_after(p, first);
        next = day_start(c, nfirst);
    }
    out->start = start;
    out->next = next;
    out->id = period_id(p, first);
}

/* ---- the cache -------------------------------------------------------- */

static bool cache_get(const slot_t *sl, int64_t t_ns, span_t *out)
{
    const uint32_t s0 = atomic_load_explicit(&sl->seq, memory_order_acquire);
    const int64_t start = atomic_load_explicit(&sl->start, memory_order_relaxed);
    const int64_t next = atomic_load_explicit(&sl->next, memory_order_relaxed);
    const int64_t id = atomic_load_explicit(&sl->id, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    const uint32_t s1 = atomic_load_explicit(&sl->seq, memory_order_relaxed);
    if ((s0 & 1) || s0 != s1 || t_ns < start || t_ns >= next)
        return false;
    out->start = start;
    out->next = next;
    out->id = id;
    return true;
}

static void cache_put(slot_t *sl, const span_t *v)
{
    uint32_t s = atomic_load_explicit(&sl->seq, memory_order_relaxed);
    if ((s & 1) || !atomic_compare_exchange_strong_explicit(&sl->seq, &s, s + 1,
                                                            memory_order_relaxed,
                                                            memory_order_relaxed))
        return; /* another writer is at it: leave the cache to it */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&sl->start, v->start, memory_order_relaxed);
    atomic_store_explicit(&sl->next, v->next, memory_order_relaxed);
    atomic_store_explicit(&sl->id, v->id, memory_order_relaxed);
    atomic_store_explicit(&sl->seq, s + 2, memory_order_release);
}

/* The period holding t_ns, with start and next in ns. */
static void lookup(const cal_t *c, cal_period_t p, int64_t t_ns, span_t *out)
{
    assert(c != NULL && (unsigned)p <= CAL_MONTH);
    slot_t *sl = &c->cache[p];
    if (cache_get(sl, t_ns, out))
        return;
    span_t s;
    period_of(c, p, floor_div(t_ns, TMTIME_NS_PER_SEC), &s);
    out->start = ns_of(s.start);
    out->next = ns_of(s.next);
    out->id = s.id;
    cache_put(sl, out);
}

int64_t cal_start(const cal_t *c, cal_period_t p, int64_t t_ns)
{
    span_t s;
    lookup(c, p, t_ns, &s);
    return s.start;
}

int64_t cal_next(const cal_t *c, cal_period_t p, int64_t t_ns)
{
    span_t s;
    lookup(c, p, t_ns, &s);
    return s.next;
}

int64_t cal_id(const cal_t *c, cal_period_t p, int64_t t_ns)
{
    span_t s;
    lookup(c, p, t_ns, &s);
    return s.id;
}

int cal_civil(const cal_t *c, int64_t t_ns, struct tm *out)
{
    assert(c != NULL && out != NULL);
    const int64_t t = floor_div(t_ns, TMTIME_NS_PER_SEC);
    int64_t until;
    const ztype_t *ty = zone_at(c, t, &until);
    const int64_t local = t + ty->utoff;
    const int64_t day = floor_div(local, DAY_S);
    const int64_t sod = local - day * DAY_S;
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    if (y - 1900 > INT_MAX || y - 1900 < INT_MIN) {
        errno = EOVERFLOW;
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->tm_year = (int)(y - 1900);
    out->tm_mon = (int)m - 1;
    out->tm_mday = (int)d;
    out->tm_hour = (int)(sod / 3600);
    out->tm_min = (int)(sod / 60 % 60);
    out->tm_sec = (int)(sod % 60);
    out->tm_wday = (int)floor_mod(day + 4, 7);
    out->tm_yday = (int)(day - tmtime_days_from_civil(y, 1, 1));
    out->tm_isdst = ty->isdst;
#if defined(_DEFAULT_SOURCE) || defined(_BSD_SOURCE) || defined(_GNU_SOURCE)
    out->tm_gmtoff = ty->utoff;
    out->tm_zone = ty->abbr;
#endif
    return 0;
}

const char *cal_zone(const cal_t *c)
{
    assert(c != NULL);
    return c->zone;
}

/* ---- loading ---------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static void say(char *err, size_t cap, const char *fmt,
                                                       ...)
{
    if (err == NULL || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

static bool is_digit(char ch) { return ch >= '0' && ch <= '9'; }
static bool is_alpha(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'); }

/* An IANA name is a relative path of [A-Za-z0-9._+-] components; "." and
 * ".." are refused so the name cannot leave the zoneinfo directory. */
static bool name_ok(const char *tz)
{
    const size_t n = strlen(tz);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    const char *comp = tz;
    for (const char *p = tz;; p++) {
        if (*p == '/' || *p == '\0') {
            const size_t len = (size_t)(p - comp);
            if (len == 0 || (len == 1 && comp[0] == '.') ||
                (len == 2 && comp[0] == '.' && comp[1] == '.'))
                return false;
            if (*p == '\0')
                return true;
            comp = p + 1;
        } else if (!is_alpha(*p) && !is_digit(*p) && *p != '.' && *p != '_' && *p != '+' &&
                   *p != '-') {
            return false;
        }
    }
}

/* Reads a whole regular file; returns 0 or an errno value. */
static int slurp(const char *path, uint8_t **buf, size_t *len)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > TZIF_MAX) {
        close(fd);
        return S_ISDIR(st.st_mode) ? EISDIR : EFBIG;
    }
    const size_t n = (size_t)st.st_size;
    uint8_t *b = xmalloc(n + 1);
    size_t got = 0;
    while (got < n) {
        const ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            const int e = r < 0 ? errno : EIO;
            free(b);
            close(fd);
            return e;
        }
        got += (size_t)r;
    }
    close(fd);
    *buf = b;
    *len = n;
    return 0;
}

typedef struct {
    const uint8_t *p;
    size_t len, off;
} rd_t;

static const uint8_t *take(rd_t *r, size_t n)
{
    if (n > r->len - r->off)
        return NULL;
    const uint8_t *at = r->p + r->off;
    r->off += n;
    return at;
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static int64_t be64(const uint8_t *b)
{
    return (int64_t)((uint64_t)be32(b) << 32 | be32(b + 4));
}

typedef struct {
    int version; /* 0 for version 1, else the version character */
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
} hdr_t;

static const char *read_header(rd_t *r, hdr_t *h)
{
    const uint8_t *b = take(r, 44);
    if (b == NULL || memcmp(b, "TZif", 4) != 0)
        return "not a TZif file";
    if (b[4] != 0 && b[4] < '2')
        return "unknown TZif version";
    h->version = b[4];
    h->isutcnt = be32(b + 20);
    h->isstdcnt = be32(b + 24);
    h->leapcnt = be32(b + 28);
    h->timecnt = be32(b + 32);
    h->typecnt = be32(b + 36);
    h->charcnt = be32(b + 40);
    if (h->typecnt == 0 || h->typecnt > 256 || h->charcnt == 0 || h->charcnt > 65536 ||
        h->timecnt > TZIF_MAX_TIMES || h->leapcnt > TZIF_MAX_TIMES ||
        (h->isutcnt != 0 && h->isutcnt != h->typecnt) ||
        (h->isstdcnt != 0 && h->isstdcnt != h->typecnt))
        return "bad TZif header counts";
    return NULL;
}

static size_t block_size(const hdr_t *h, size_t tsize)
{
    return h->timecnt * (tsize + 1) + h->typecnt * 6 + h->charcnt + h->leapcnt * (tsize + 4) +
           h->isstdcnt + h->isutcnt;
}

/* Copies one data block (tsize 4 for version 1, 8 for the second). */
static const char *read_block(cal_t *c, rd_t *r, const hdr_t *h, size_t tsize)
{
    if (h->leapcnt != 0)
        return "zones with leap seconds (right/...) are not supported";
    const uint8_t *times = take(r, h->timecnt * tsize);
    const uint8_t *idx = take(r, h->timecnt);
    const uint8_t *types = take(r, h->typecnt * 6);
    const uint8_t *chars = take(r, h->charcnt);
    if (times == NULL || idx == NULL || types == NULL || chars == NULL ||
        take(r, h->isstdcnt + h->isutcnt) == NULL)
        return "truncated TZif file";
    c->ntrans = h->timecnt;
    c->ntypes = h->typecnt;
    c->trans = xcalloc(c->ntrans + 1, sizeof *c->trans);
    c->tidx = xcalloc(c->ntrans + 1, 1);
    c->types = xcalloc(c->ntypes, sizeof *c->types);
    c->chars = xcalloc(h->charcnt + 1, 1);
    memcpy(c->chars, chars, h->charcnt);
    for (size_t i = 0; i < c->ntrans; i++) {
        c->trans[i] = tsize == 8 ? be64(times + 8 * i) : (int32_t)be32(times + 4 * i);
        c->tidx[i] = idx[i];
        if (idx[i] >= c->ntypes)
            return "TZif transition with a bad type index";
        if (i > 0 && c->trans[i] <= c->trans[i - 1])
            return "TZif transitions out of order";
    }
    for (size_t i = 0; i < c->ntypes; i++) {
        const uint8_t *t = types + 6 * i;
        const int32_t off = (int32_t)be32(t);
        if (off <= -MAX_UTOFF || off >= MAX_UTOFF || t[4] > 1 || t[5] >= h->charcnt)
            return "bad TZif local time type";
        c->types[i].utoff = off;
        c->types[i].isdst = t[4];
        c->types[i].abbr = c->chars + t[5];
    }
    return NULL;
}

/* ---- the footer's POSIX TZ string ------------------------------------- */

static bool tz_name(const char **s, char *out, size_t cap)
{
    const char *p = *s;
    size_t n = 0;
    if (*p == '<') {
        for (p++; *p != '>'; p++) {
            if ((!is_alpha(*p) && !is_digit(*p) && *p != '+' && *p != '-') || n + 1 >= cap)
                return false;
            out[n++] = *p;
        }
        p++;
    } else {
        for (; is_alpha(*p); p++) {
            if (n + 1 >= cap)
                return false;
            out[n++] = *p;
        }
    }
    if (n < 3) /* POSIX: at least three characters */
        return false;
    out[n] = '\0';
    *s = p;
    return true;
}

static bool tz_num(const char **s, int lo, int hi, int *out)
{
    const char *p = *s;
    int v = 0, nd = 0;
    for (; is_digit(*p); p++) {
        if (++nd > 3)
            return false;
        v = v * 10 + (*p - '0');
    }
    if (nd == 0 || v < lo || v > hi)
        return false;
    *out = v;
    *s = p;
    return true;
}

/* [+-]hh[:mm[:ss]] in seconds, hours up to maxh. */
static bool tz_hms(const char **s, int maxh, int32_t *out)
{
    const char *p = *s;
    int sign = 1, h, mi = 0, se = 0;
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    if (!tz_num(&p, 0, maxh, &h))
        return false;
    if (*p == ':') {
        p++;
        if (!tz_num(&p, 0, 59, &mi))
            return false;
        if (*p == ':') {
            p++;
            if (!tz_num(&p, 0, 59, &se))
                return false;
        }
    }
    *out = sign * (h * 3600 + mi * 60 + se);
    *s = p;
    return true;
}

static bool tz_rule(const char **s, zrule_t *r)
{
    const char *p = *s;
    memset(r, 0, sizeof *r);
    if (*p == 'J') {
        p++;
        r->kind = 'J';
        if (!tz_num(&p, 1, 365, &r->n))
            return false;
    } else if (*p == 'M') {
        p++;
        r->kind = 'M';
        if (!tz_num(&p, 1, 12, &r->m) || *p++ != '.' || !tz_num(&p, 1, 5, &r->w) ||
            *p++ != '.' || !tz_num(&p, 0, 6, &r->d))
            return false;
    } else {
        r->kind = 'D';
        if (!tz_num(&p, 0, 365, &r->n))
            return false;
    }
    r->secs = 2 * 3600;
    if (*p == '/') {
        p++;
        if (!tz_hms(&p, 167, &r->secs))
            return false;
    }
    *s = p;
    return true;
}

static bool parse_footer(cal_t *c, const char *s)
{
    if (*s == '\0')
        return true; /* no rule: the last transition's type holds */
    int32_t off;
    if (!tz_name(&s, c->rnames[0], sizeof c->rnames[0]) || !tz_hms(&s, 24, &off))
        return false;
    c->rstd.utoff = -off; /* POSIX offsets count west */
    c->rstd.isdst = 0;
    c->rstd.abbr = c->rnames[0];
    c->has_rule = true;
    if (*s == '\0')
        return -off > -MAX_UTOFF && -off < MAX_UTOFF;
    if (!tz_name(&s, c->rnames[1], sizeof c->rnames[1]))
        return false;
    int32_t doff = off - 3600;
    if (*s != ',' && *s != '\0' && !tz_hms(&s, 24, &doff))
        return false;
    c->rdst.utoff = -doff;
    c->rdst.isdst = 1;
    c->rdst.abbr = c->rnames[1];
    c->rule_dst = true;
    const char *rules = *s == '\0' ? ",M3.2.0,M11.1.0" : s; /* POSIX leaves it open; glibc's */
    if (*rules++ != ',' || !tz_rule(&rules, &c->rstart) || *rules++ != ',' ||
        !tz_rule(&rules, &c->rend) || *rules != '\0')
        return false;
    return c->rstd.utoff > -MAX_UTOFF && c->rstd.utoff < MAX_UTOFF &&
           c->rdst.utoff > -MAX_UTOFF && c->rdst.utoff < MAX_UTOFF;
}

static const char *parse_tzif(cal_t *c, const uint8_t *buf, size_t len)
{
    rd_t r = { buf, len, 0 };
    hdr_t h;
    const char *why = read_header(&r, &h);
    if (why != NULL)
        return why;
    if (h.version == 0)
        return read_block(c, &r, &h, 4);
    if (h.leapcnt != 0)
        return "zones with leap seconds (right/...) are not supported";
    if (take(&r, block_size(&h, 4)) == NULL)
        return "truncated TZif file";
    if ((why = read_header(&r, &h)) != NULL || (why = read_block(c, &r, &h, 8)) != NULL)
        return why;
    const uint8_t *nl = take(&r, 1);
    if (nl == NULL || *nl != '\n')
        return "TZif footer missing";
    const uint8_t *s = r.p + r.off;
    const uint8_t *end = memchr(s, '\n', r.len - r.off);
    if (end == NULL || end - s >= FOOTER_MAX || memchr(s, '\0', (size_t)(end - s)) != NULL)
        return "bad TZif footer";
    char footer[FOOTER_MAX];
    memcpy(footer, s, (size_t)(end - s));
    footer[end - s] = '\0';
    if (!parse_footer(c, footer))
        return "unsupported TZ string in the TZif footer";
    return NULL;
}

static void free_fields(cal_t *c)
{
    free(c->zone);
    free(c->trans);
    free(c->tidx);
    free(c->types);
    free(c->chars);
    free(c->cache);
}

cal_t *cal_new(const char *tz, char *err, size_t errcap)
{
    if (err != NULL && errcap > 0)
        err[0] = '\0';
    if (tz == NULL || !name_ok(tz)) {
        say(err, errcap, "bad time zone name \"%s\"", tz ? tz : "(null)");
        errno = EINVAL;
        return NULL;
    }
    const char *dir = getenv("TZDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = "/usr/share/zoneinfo";
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, tz) >= sizeof path) {
        say(err, errcap, "time zone path too long: %s/%s", dir, tz);
        errno = EINVAL;
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int e = slurp(path, &buf, &len);
    const bool utc = strcmp(tz, "UTC") == 0 || strcmp(tz, "Etc/UTC") == 0;
    if (e != 0 && !(utc && e == ENOENT)) {
        if (e == ENOENT || e == ENOTDIR)
            say(err, errcap, "unknown time zone \"%s\" (no %s)", tz, path);
        else if (e == EISDIR || e == EFBIG)
            say(err, errcap, "time zone \"%s\": %s is not a zone file", tz, path);
        else
            say(err, errcap, "time zone \"%s\": %s: %s", tz, path, strerror(e));
        errno = e == ENOTDIR ? ENOENT : (e == EISDIR || e == EFBIG) ? EINVAL : e;
        return NULL;
    }
    cal_t *c = xcalloc(1, sizeof *c);
    c->zone = xstrdup(tz);
    c->cache = xcalloc(CAL_MONTH + 1, sizeof *c->cache);
    for (int i = 0; i <= CAL_MONTH; i++) {
        atomic_init(&c->cache[i].seq, 0);
        atomic_init(&c->cache[i].start, 0);
        atomic_init(&c->cache[i].next, 0); /* an empty interval: the first call misses */
        atomic_init(&c->cache[i].id, 0);
    }
    if (e != 0) { /* UTC without tzdata */
        c->ntypes = 1;
        c->types = xcalloc(1, sizeof *c->types);
        c->chars = xstrdup("UTC");
        c->types[0].abbr = c->chars;
        return c;
    }
    const char *why = parse_tzif(c, buf, len);
    free(buf);
    if (why != NULL) {
        say(err, errcap, "time zone \"%s\": %s: %s", tz, path, why);
        free_fields(c);
        free(c);
        errno = EINVAL;
        return NULL;
    }
    return c;
}

void cal_destroy(cal_t **c)
{
    if (c == NULL || *c == NULL)
        return;
    free_fields(*c);
    free(*c);
    *c = NULL;
}

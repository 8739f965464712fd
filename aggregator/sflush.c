#include "sflush.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "mbuf.h"
#include "sketch.h"
#include "xalloc.h"

/* How the state is laid out.
 *
 * A series (name, type, sorted tags) is one allocation: the struct and its
 * canonical key bytes, which emission reads the name and tags from. Series sit
 * in an open-addressing hash table (linear probing, backward-shift delete)
 * keyed by the hash of the key bytes, and in a list in creation order, which
 * is the order records are emitted in: independent of hashing, and restored
 * by load, so output is deterministic across a save and load.
 *
 * Each series holds one cell per interval it has data in (open intervals,
 * and closed ones still kept for amendment), newest first: a sample mostly
 * hits the first cell. Gauges' cells only count samples and go at close.
 *
 * ivals lists, ascending, the intervals that have cells, with their rev and
 * whether a cell was amended since the interval was last sent. Closing,
 * re-sending and expiring walk the series list once per interval touched;
 * intervals without cells and without live gauges are skipped, so a jump of
 * the watermark costs nothing per empty interval. */

#define SNAP_VERSION 1

/* A set member: its hash and its bytes in the cell's arena. */
typedef struct {
    uint64_t h;
    uint32_t off, len;
} member_t;

/* Allocated to the size its type needs (cell_size): a counter's is 40 bytes. */
typedef struct cell {
    struct cell *next; /* older interval */
    int64_t idx;
    uint64_t samples;
    bool dirty; /* closed interval amended since last sent */
    union {
        double sum; /* c */
        struct {
            double count, sum, min, max;
            sketch_t *pos, *neg; /* values >= 0; -values of values < 0 */
        } d;
        struct {
            member_t *mem; /* arrival order */
            uint32_t n, mcap;
            uint32_t *tab; /* member index + 1, 0: empty */
            uint32_t cap;  /* power of 2 */
            char *arena;
            uint32_t alen, acap;
            bool capped;
        } s;
    } u;
} cell_t;

/* 64 bytes, then the key, which holds the name and tags (key_spans). */
typedef struct series {
    uint64_t hash;
    uint32_t keylen;
    msg_stype_t type;
    cell_t *cells; /* newest first */
    int64_t born, last; /* lowest and highest interval of its samples */
    double gauge;
    struct series *prev, *next; /* creation order */
    char key[];
} series_t;

typedef struct {
    uint64_t h;
    series_t *s; /* NULL: empty */
} hslot_t;

typedef struct {
    int64_t idx;
    uint32_t rev;
    uint32_t ncells;
    bool dirty;
} ival_t;

struct sflush {
    sflush_opts_t o;
    int64_t max_idx; /* the highest interval whose end + delays fit in int64 */
    int64_t wm;
    bool have_wm;
    int64_t closed; /* every interval <= closed is closed */
    bool have_closed;
    hslot_t *tab;
    size_t tcap, nseries; /* tcap: power of 2 */
    series_t *head, *tail;
    size_t ngauges;
    ival_t *ivals;
    size_t nivals, civals;
    mbuf_t kbuf; /* the key of the sample at hand */
    sflush_counters_t c;
};

/* ---- small helpers ------------------------------------------------------ */

static int span_cmp(span_t a, span_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.p, b.p, n) : 0;
    if (c)
        return c;
    return (a.len > b.len) - (a.len < b.len);
}

static int tag_cmp(const msg_tag_t *a, const msg_tag_t *b)
{
    int c = span_cmp(a->key, b->key);
    return c ? c : span_cmp(a->value, b->value);
}

/* floor(a / b) for b > 0, without overflow */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : (a + 1) / b - 1;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* Sums saturate at +-DBL_MAX: a record and a snapshot never carry an
 * infinity (readers refuse them), whatever values and rates arrive. */
static double fsat(double x)
{
    return x > DBL_MAX ? DBL_MAX : x < -DBL_MAX ? -DBL_MAX : x;
}

static bool is_dist(msg_stype_t t)
{
    return t == MSG_ST_MS || t == MSG_ST_H || t == MSG_ST_D;
}

static int64_t ival_end(const sflush_t *f, int64_t k)
{
    return (k + 1) * f->o.interval_ns;
}

/* ---- intervals ---------------------------------------------------------- */

static ival_t *ival_find(sflush_t *f, int64_t k)
{
    /* samples mostly hit the newest intervals */
    for (size_t i = f->nivals; i-- > 0;) {
        if (f->ivals[i].idx == k)
            return &f->ivals[i];
        if (f->ivals[i].idx < k)
            break;
    }
    return NULL;
}

static ival_t *ival_get(sflush_t *f, int64_t k)
{
    ival_t *v = ival_find(f, k);
    if (v)
        return v;
    if (f->nivals == f->civals) {
        f->civals = f->civals ? 2 * f->civals : 8;
        f->ivals = xreallocarray(f->ivals, f->civals, sizeof *f->ivals);
    }
    size_t i = f->nivals;
    while (i > 0 && f->ivals[i - 1].idx > k)
        i--;
    memmove(&f->ivals[i + 1], &f->ivals[i], (f->nivals - i) * sizeof *f->ivals);
    f->nivals++;
    f->ivals[i] = (ival_t){ .idx = k };
    return &f->ivals[i];
}

/* Drops intervals without cells (their rev is 0 or they expired). */
static void ivals_compact(sflush_t *f)
{
    size_t j = 0;
    for (size_t i = 0; i < f->nivals; i++)
        if (f->ivals[i].ncells > 0)
            f->ivals[j++] = f->ivals[i];
    f->nivals = j;
}

/* ---- cells -------------------------------------------------------------- */

static void cell_free(const series_t *s, cell_t *c)
{
    if (is_dist(s->type)) {
        sketch_destroy(&c->u.d.pos);
        sketch_destroy(&c->u.d.neg);
    } else if (s->type == MSG_ST_S) {
        free(c->u.s.mem);
        free(c->u.s.tab);
        free(c->u.s.arena);
    }
    free(c);
}

static size_t cell_size(msg_stype_t t)
{
    size_t head = offsetof(cell_t, u);
    if (t == MSG_ST_C)
        return head + sizeof(((cell_t *)0)->u.sum);
    if (t == MSG_ST_G)
        return head;
    if (t == MSG_ST_S)
        return head + sizeof(((cell_t *)0)->u.s);
    return head + sizeof(((cell_t *)0)->u.d);
}

static size_t cell_memory(const series_t *s, const cell_t *c)
{
    size_t n = cell_size(s->type);
    if (is_dist(s->type)) {
        n += c->u.d.pos ? sketch_memory(c->u.d.pos) : 0;
        n += c->u.d.neg ? sketch_memory(c->u.d.neg) : 0;
    } else if (s->type == MSG_ST_S) {
        n += (size_t)c->u.s.mcap * sizeof(member_t) + (size_t)c->u.s.cap * sizeof(uint32_t) +
             c->u.s.acap;
    }
    return n;
}

/* The cell of interval k, created (counted in its ival) when absent. */
static cell_t *cell_get(sflush_t *f, series_t *s, int64_t k)
{
    cell_t **pp = &s->cells;
    while (*pp && (*pp)->idx > k)
        pp = &(*pp)->next;
    if (*pp && (*pp)->idx == k)
        return *pp;
    cell_t *c = xcalloc(1, cell_size(s->type));
    c->idx = k;
    if (is_dist(s->type)) {
        c->u.d.min = INFINITY;
        c->u.d.max = -INFINITY;
    }
    c->next = *pp;
    *pp = c;
    ival_get(f, k)->ncells++;
    return c;
}

static void cell_unlink(sflush_t *f, series_t *s, cell_t **pp)
{
    cell_t *c = *pp;
    *pp = c->next;
    ival_t *v = ival_find(f, c->idx);
    assert(v && v->ncells > 0);
    v->ncells--;
    cell_free(s, c);
}

/* Set members: an open-addressing table of indices into the members, which
 * sit in arrival order (that order is what a snapshot saves). */
static void set_grow(cell_t *c)
{
    uint32_t cap = c->u.s.cap ? 2 * c->u.s.cap : 8;
    uint32_t *tab = xcalloc(cap, sizeof *tab);
    for (uint32_t i = 0; i < c->u.s.n; i++) {
        uint32_t j = (uint32_t)c->u.s.mem[i].h & (cap - 1);
        while (tab[j])
            j = (j + 1) & (cap - 1);
        tab[j] = i + 1;
    }
    free(c->u.s.tab);
    c->u.s.tab = tab;
    c->u.s.cap = cap;
}

/* 1: added, 0: already there, -1: not added (cap) */
static int set_add(cell_t *c, const char *p, size_t len, size_t max_members)
{
    uint64_t h = XXH3_64bits(p, len);
    if (c->u.s.cap) {
        uint32_t j = (uint32_t)h & (c->u.s.cap - 1);
        while (c->u.s.tab[j]) {
            const member_t *m = &c->u.s.mem[c->u.s.tab[j] - 1];
            if (m->h == h && m->len == len && (len == 0 || !memcmp(c->u.s.arena + m->off, p, len)))
                return 0;
            j = (j + 1) & (c->u.s.cap - 1);
        }
    }
    if (c->u.s.n >= max_members || c->u.s.n >= UINT32_MAX / 4 ||
        len > UINT32_MAX / 2 - c->u.s.alen) {
        c->u.s.capped = true;
        return -1;
    }
    if ((uint64_t)(c->u.s.n + 1) * 4 > (uint64_t)c->u.s.cap * 3)
        set_grow(c);
    if (c->u.s.n == c->u.s.mcap) {
        c->u.s.mcap = c->u.s.mcap ? 2 * c->u.s.mcap : 4;
        c->u.s.mem = xreallocarray(c->u.s.mem, c->u.s.mcap, sizeof *c->u.s.mem);
    }
    if (c->u.s.alen + len > c->u.s.acap) {
        uint32_t acap = c->u.s.acap ? c->u.s.acap : 64;
        while (acap < c->u.s.alen + len)
            acap *= 2; /* alen + len < 2^31: no overflow */
        c->u.s.arena = xrealloc(c->u.s.arena, acap);
        c->u.s.acap = acap;
    }
    if (len)
        memcpy(c->u.s.arena + c->u.s.alen, p, len);
    c->u.s.mem[c->u.s.n] = (member_t){ h, c->u.s.alen, (uint32_t)len };
    c->u.s.alen += (uint32_t)len;
    uint32_t j = (uint32_t)h & (c->u.s.cap - 1);
    while (c->u.s.tab[j])
        j = (j + 1) & (c->u.s.cap - 1);
    c->u.s.tab[j] = ++c->u.s.n;
    return 1;
}

static void dist_add(cell_t *c, double v, double rate)
{
    c->u.d.count = fsat(c->u.d.count + fsat(1.0 / rate));
    c->u.d.sum = fsat(c->u.d.sum + fsat(v / rate));
    if (v < c->u.d.min)
        c->u.d.min = v;
    if (v > c->u.d.max)
        c->u.d.max = v;
    sketch_t **sk = v < 0 ? &c->u.d.neg : &c->u.d.pos;
    if (!*sk)
        *sk = sketch_new(0);
    sketch_add(*sk, v < 0 ? -v : v);
}

/* The q that makes sketch_quantile() answer rank r of n values. */
static double rank_q(uint64_t r, uint64_t n)
{
    if (n <= 1)
        return 0;
    if (r >= n - 1)
        return 1;
    return ((double)r + 0.5) / (double)(n - 1);
}

/* The value at rank floor(q * (n - 1)) of both halves, as sketch_quantile()
 * ranks one sketch. */
static double dist_quantile(const cell_t *c, double q)
{
    uint64_t np = c->u.d.pos ? sketch_count(c->u.d.pos) : 0;
    uint64_t nn = c->u.d.neg ? sketch_count(c->u.d.neg) : 0;
    if (np + nn == 0)
        return 0;
    uint64_t r = (uint64_t)(q * (double)(np + nn - 1));
    if (r >= np + nn)
        r = np + nn - 1;
    if (r < nn)
        return -sketch_quantile(c->u.d.neg, rank_q(nn - 1 - r, nn));
    return sketch_quantile(c->u.d.pos, rank_q(r - nn, np));
}

/* ---- series ------------------------------------------------------------- */

static void key_put32(mbuf_t *b, size_t n)
{
    uint32_t v = (uint32_t)n;
    mbuf_append(b, &v, sizeof v);
}

/* The canonical key of (name, type, tags in ord order) into f->kbuf. */
static void key_build(sflush_t *f, span_t name, msg_stype_t type, const msg_tag_t *tags,
                      const uint8_t *ord, size_t ntags)
{
    mbuf_t *b = &f->kbuf;
    mbuf_reset(b);
    unsigned char t = (unsigned char)type;
    mbuf_append(b, &t, 1);
    key_put32(b, name.len);
    mbuf_append(b, name.p, name.len);
    key_put32(b, ntags);
    for (size_t i = 0; i < ntags; i++) {
        const msg_tag_t *g = &tags[ord[i]];
        key_put32(b, g->key.len);
        mbuf_append(b, g->key.p, g->key.len);
        key_put32(b, g->value.len);
        mbuf_append(b, g->value.p, g->value.len);
    }
}

static size_t tab_find_slot(const sflush_t *f, uint64_t h, const char *key, size_t keylen)
{
    size_t mask = f->tcap - 1, j = (size_t)h & mask;
    for (;;) {
        const hslot_t *e = &f->tab[j];
        if (!e->s || (e->h == h && e->s->keylen == keylen && !memcmp(e->s->key, key, keylen)))
            return j;
        j = (j + 1) & mask;
    }
}

static void tab_grow(sflush_t *f)
{
    size_t cap = f->tcap ? 2 * f->tcap : 64;
    hslot_t *tab = xcalloc(cap, sizeof *tab);
    for (size_t i = 0; i < f->tcap; i++) {
        if (!f->tab[i].s)
            continue;
        size_t j = (size_t)f->tab[i].h & (cap - 1);
        while (tab[j].s)
            j = (j + 1) & (cap - 1);
        tab[j] = f->tab[i];
    }
    free(f->tab);
    f->tab = tab;
    f->tcap = cap;
}

static void tab_remove(sflush_t *f, const series_t *s)
{
    size_t mask = f->tcap - 1, i = (size_t)s->hash & mask;
    while (f->tab[i].s != s)
        i = (i + 1) & mask;
    /* backward shift: move later entries of the probe run into the hole */
    size_t j = i;
    for (;;) {
        f->tab[i].s = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!f->tab[j].s)
                return;
            size_t home = (size_t)f->tab[j].h & mask;
            /* j's entry may fill i unless its home lies cyclically in (i, j] */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        f->tab[i] = f->tab[j];
        i = j;
    }
}

/* A new series from the key in f->kbuf. */
static series_t *series_add(sflush_t *f, uint64_t h, msg_stype_t type)
{
    if ((f->nseries + 1) * 4 > f->tcap * 3)
        tab_grow(f);
    size_t keylen = f->kbuf.len;
    series_t *s = xmalloc(sizeof *s + keylen);
    memset(s, 0, sizeof *s);
    s->hash = h;
    s->type = type;
    s->keylen = (uint32_t)keylen;
    memcpy(s->key, f->kbuf.data, keylen);
    size_t j = tab_find_slot(f, h, s->key, keylen);
    assert(!f->tab[j].s);
    f->tab[j] = (hslot_t){ h, s };
    s->prev = f->tail;
    if (f->tail)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    f->nseries++;
    f->ngauges += type == MSG_ST_G;
    f->c.series_live = f->nseries;
    return s;
}

static uint32_t get32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The name and tags of s, borrowed from its key: type, len, name, n, then
 * (len, key, len, value) per tag. Returns the number of tags. */
static size_t key_spans(const series_t *s, span_t *name, msg_tag_t *tags)
{
    const char *p = s->key + 1;
    *name = span_make(p + 4, get32(p));
    p += 4 + name->len;
    size_t n = get32(p);
    p += 4;
    for (size_t i = 0; i < n; i++) {
        tags[i].key = span_make(p + 4, get32(p));
        p += 4 + tags[i].key.len;
        tags[i].value = span_make(p + 4, get32(p));
        p += 4 + tags[i].value.len;
    }
    return n;
}

static void series_free(sflush_t *f, series_t *s)
{
    while (s->cells)
        cell_unlink(f, s, &s->cells);
    tab_remove(f, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        f->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        f->tail = s->prev;
    f->nseries--;
    f->ngauges -= s->type == MSG_ST_G;
    f->c.series_live = f->nseries;
    free(s);
}

/* Sorts tags by key then value into ord (insertion sort: a handful). */
static void tags_order(const msg_tag_t *tags, size_t n, uint8_t *ord)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t x = (uint8_t)i;
        size_t j = i;
        while (j > 0 && tag_cmp(&tags[ord[j - 1]], &tags[x]) > 0) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = x;
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

sflush_t *sflush_new(const sflush_opts_t *o)
{
    if (!o || o->interval_ns <= 0 || o->close_delay_ns < 0 || o->lateness_ns < 0 ||
        o->future_ns < 0 || o->max_series == 0 || o->max_set_members == 0 ||
        o->idle_intervals == 0 || !o->emit) {
        errno = EINVAL;
        return NULL;
    }
    sflush_t *f = xcalloc(1, sizeof *f);
    f->o = *o;
    int64_t d = o->close_delay_ns > o->lateness_ns ? o->close_delay_ns : o->lateness_ns;
    f->max_idx = (INT64_MAX - d) / o->interval_ns - 2;
    if (f->max_idx < 0) {
        free(f);
        errno = EINVAL;
        return NULL;
    }
    f->wm = INT64_MIN;
    return f;
}

static void clear(sflush_t *f)
{
    while (f->head)
        series_free(f, f->head);
    free(f->tab);
    f->tab = NULL;
    f->tcap = 0;
    f->nivals = 0;
    f->wm = INT64_MIN;
    f->have_wm = false;
    f->closed = 0;
    f->have_closed = false;
}

void sflush_destroy(sflush_t **pf)
{
    if (!pf || !*pf)
        return;
    sflush_t *f = *pf;
    clear(f);
    free(f->ivals);
    mbuf_free(&f->kbuf);
    free(f);
    *pf = NULL;
}

const sflush_counters_t *sflush_counters(const sflush_t *f)
{
    return &f->c;
}

size_t sflush_memory(const sflush_t *f)
{
    size_t n = sizeof *f + f->tcap * sizeof(hslot_t) + f->civals * sizeof(ival_t) + f->kbuf.cap;
    for (const series_t *s = f->head; s; s = s->next) {
        n += sizeof *s + s->keylen;
        for (const cell_t *c = s->cells; c; c = c->next)
            n += cell_memory(s, c);
    }
    return n;
}

/* ---- samples ------------------------------------------------------------ */

static bool sample_ok(const msg_sample_t *s)
{
    if ((unsigned)s->type > MSG_ST_S || !s->name.p || s->name.len == 0 ||
        s->name.len > MSG_MAX_STR || s->ntags > MSG_MAX_TAGS || s->ts < 0)
        return false;
    if (s->type == MSG_ST_S) {
        if (!s->member.p || s->member.len > MSG_MAX_STR)
            return false;
    } else if (!isfinite(s->value) || !(s->rate > 0 && s->rate <= 1)) {
        return false;
    }
    for (size_t i = 0; i < s->ntags; i++) {
        const msg_tag_t *t = &s->tags[i];
        if ((!t->key.p && t->key.len) || (!t->value.p && t->value.len) ||
            t->key.len > MSG_MAX_STR || t->value.len > MSG_MAX_STR)
            return false;
    }
    return true;
}

void sflush_sample(sflush_t *f, const msg_sample_t *smp)
{
    f->c.samples++;
    if (!sample_ok(smp)) {
        f->c.invalid++;
        return;
    }
    int64_t k = smp->ts / f->o.interval_ns;
    if (k > f->max_idx) {
        f->c.invalid++;
        return;
    }
    bool closed = f->have_closed && k <= f->closed;
    if (closed && sat_add(ival_end(f, k), f->o.lateness_ns) <= f->wm) {
        f->c.late_dropped++;
        return;
    }
    if (f->o.future_ns > 0 && f->have_wm && smp->ts >= sat_add(f->wm, f->o.future_ns)) {
        f->c.future_dropped++;
        return;
    }

    uint8_t ord[MSG_MAX_TAGS];
    tags_order(smp->tags, smp->ntags, ord);
    key_build(f, smp->name, smp->type, smp->tags, ord, smp->ntags);
    uint64_t h = XXH3_64bits(f->kbuf.data, f->kbuf.len);
    series_t *s = NULL;
    if (f->tcap) {
        size_t j = tab_find_slot(f, h, f->kbuf.data, f->kbuf.len);
        s = f->tab[j].s;
    }
    if (!s) {
        if (f->nseries >= f->o.max_series) {
            f->c.series_dropped++;
            return;
        }
        s = series_add(f, h, smp->type);
        s->born = s->last = k;
    } else if (k > s->last) {
        s->last = k;
    } else if (k < s->born) {
        s->born = k;
    }

    if (s->type == MSG_ST_G) {
        /* arrival order on the live value; a closed interval keeps what it sent */
        s->gauge = smp->delta ? fsat(s->gauge + smp->value) : smp->value;
        if (closed)
            f->c.late_gauge++;
        else
            cell_get(f, s, k)->samples++;
        return;
    }
    cell_t *c = cell_get(f, s, k);
    c->samples++;
    if (closed && !c->dirty) {
        c->dirty = true;
        ival_find(f, k)->dirty = true;
    }
    switch (s->type) {
    case MSG_ST_C:
        c->u.sum = fsat(c->u.sum + fsat(smp->value / smp->rate));
        break;
    case MSG_ST_S:
        if (set_add(c, smp->member.p, smp->member.len, f->o.max_set_members) < 0)
            f->c.set_capped++;
        break;
    default:
        dist_add(c, smp->value, smp->rate);
        break;
    }
}

/* ---- emission ----------------------------------------------------------- */

static void emit_cell(sflush_t *f, const series_t *s, const cell_t *c, int64_t k, uint32_t rev)
{
    msg_flush_t r;
    memset(&r, 0, offsetof(msg_flush_t, tags));
    r.ntags = key_spans(s, &r.name, r.tags);
    r.type = s->type;
    r.start = k * f->o.interval_ns;
    r.end = ival_end(f, k);
    r.rev = rev;
    r.samples = c ? c->samples : 0;
    r.value = r.rate = r.count = r.sum = r.min = r.max = 0;
    for (int i = 0; i < MSG_FLUSH_NQ; i++)
        r.q[i] = 0;
    r.capped = false;
    switch (s->type) {
    case MSG_ST_C:
        r.value = c->u.sum;
        r.rate = fsat(c->u.sum / ((double)f->o.interval_ns / 1e9));
        break;
    case MSG_ST_G:
        r.value = s->gauge;
        break;
    case MSG_ST_S:
        r.value = (double)c->u.s.n;
        r.capped = c->u.s.capped;
        break;
    default:
        r.count = c->u.d.count;
        r.sum = c->u.d.sum;
        r.min = c->u.d.min;
        r.max = c->u.d.max;
        for (int i = 0; i < MSG_FLUSH_NQ; i++)
            r.q[i] = dist_quantile(c, msg_flush_q[i]);
        break;
    }
    f->c.records_emitted++;
    f->c.amended_emitted += rev > 0;
    f->o.emit(f->o.arg, &r);
}

static bool gauge_live(const sflush_t *f, const series_t *s, int64_t k)
{
    return s->born <= k && k - s->last < (int64_t)f->o.idle_intervals;
}

/* Closes interval k: every series with a cell in k, and every live gauge. */
static void close_interval(sflush_t *f, int64_t k)
{
    for (series_t *s = f->head; s; s = s->next) {
        cell_t **pp = &s->cells;
        while (*pp && (*pp)->idx > k)
            pp = &(*pp)->next;
        cell_t *c = *pp && (*pp)->idx == k ? *pp : NULL;
        if (s->type == MSG_ST_G) {
            if (gauge_live(f, s, k))
                emit_cell(f, s, c, k, 0);
            if (c)
                cell_unlink(f, s, pp);
        } else if (c) {
            emit_cell(f, s, c, k, 0);
        }
    }
    f->c.intervals_closed++;
}

/* Re-sends the cells of closed interval v amended since it was last sent. */
static void resend_interval(sflush_t *f, ival_t *v)
{
    v->rev++;
    v->dirty = false;
    int64_t k = v->idx;
    uint32_t rev = v->rev;
    for (series_t *s = f->head; s; s = s->next) {
        cell_t *c = s->cells;
        while (c && c->idx > k)
            c = c->next;
        if (c && c->idx == k && c->dirty) {
            c->dirty = false;
            emit_cell(f, s, c, k, rev);
        }
    }
}

/* The first interval >= k0 some gauge would be emitted in (INT64_MAX: none). */
static int64_t next_gauge_interval(const sflush_t *f, int64_t k0)
{
    int64_t best = INT64_MAX;
    if (f->ngauges == 0)
        return best;
    for (const series_t *s = f->head; s; s = s->next) {
        if (s->type != MSG_ST_G)
            continue;
        int64_t k = s->born > k0 ? s->born : k0;
        if (k - s->last < (int64_t)f->o.idle_intervals && k < best)
            best = k;
    }
    return best;
}

/* The first interval >= k0 with cells (INT64_MAX: none). */
static int64_t next_data_interval(const sflush_t *f, int64_t k0)
{
    for (size_t i = 0; i < f->nivals; i++)
        if (f->ivals[i].idx >= k0)
            return f->ivals[i].idx;
    return INT64_MAX;
}

void sflush_advance(sflush_t *f, int64_t wm)
{
    if (f->have_wm && wm <= f->wm)
        wm = f->wm;
    f->wm = wm;
    f->have_wm = true;

    /* 1. amended kept intervals, oldest first */
    for (size_t i = 0; i < f->nivals; i++)
        if (f->ivals[i].dirty)
            resend_interval(f, &f->ivals[i]);

    /* 2. intervals due: (k + 1) * interval + close_delay <= wm */
    int64_t K = floor_div(sat_add(wm, -f->o.close_delay_ns), f->o.interval_ns) - 1;
    if (K > f->max_idx)
        K = f->max_idx;
    if (K < -1)
        K = -1; /* ts >= 0: no interval below 0 holds data */
    bool moved = false;
    if (!f->have_closed || K > f->closed) {
        int64_t k = f->have_closed ? f->closed + 1 : next_data_interval(f, INT64_MIN);
        while (k <= K) {
            int64_t nd = next_data_interval(f, k);
            if (nd != k) {
                int64_t ng = next_gauge_interval(f, k);
                k = nd < ng ? nd : ng;
                if (k > K)
                    break;
            }
            close_interval(f, k);
            k++;
        }
        f->closed = f->have_closed && f->closed > K ? f->closed : K;
        f->have_closed = true;
        moved = true;
    }

    /* 3. expired intervals (closed, end + lateness <= wm) and idle series */
    int64_t E = INT64_MIN;
    for (size_t i = 0; i < f->nivals && f->ivals[i].idx <= f->closed; i++)
        if (sat_add(ival_end(f, f->ivals[i].idx), f->o.lateness_ns) <= wm)
            E = f->ivals[i].idx;
    if (!moved && E == INT64_MIN)
        return;
    for (series_t *s = f->head, *next; s; s = next) {
        next = s->next;
        cell_t **pp = &s->cells;
        while (*pp && (*pp)->idx > E)
            pp = &(*pp)->next;
        while (*pp)
            cell_unlink(f, s, pp);
        if (!s->cells && f->closed - s->last >= (int64_t)f->o.idle_intervals) {
            series_free(f, s);
            f->c.series_forgotten++;
        }
    }
    ivals_compact(f);
}

/* ---- save --------------------------------------------------------------- */

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    msg_pack_span(pk, span_cstr(s));
}

static void pack_sketch(msgpack_packer *pk, const sketch_t *sk, mbuf_t *tmp)
{
    if (!sk) {
        msgpack_pack_nil(pk);
        return;
    }
    size_t n = sketch_encoded_size(sk);
    mbuf_reset(tmp);
    mbuf_reserve(tmp, n);
    size_t w = sketch_encode(sk, tmp->data, n);
    assert(w == n);
    (void)n;
    msgpack_pack_bin(pk, w);
    msgpack_pack_bin_body(pk, tmp->data, w);
}

static void pack_bool(msgpack_packer *pk, bool b)
{
    if (b)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

static void pack_cell(msgpack_packer *pk, const series_t *s, const cell_t *c, mbuf_t *tmp)
{
    size_t n = s->type == MSG_ST_C ? 4 : s->type == MSG_ST_G ? 3 : s->type == MSG_ST_S ? 5 : 9;
    msgpack_pack_array(pk, n);
    msgpack_pack_int64(pk, c->idx);
    msgpack_pack_uint64(pk, c->samples);
    pack_bool(pk, c->dirty);
    switch (s->type) {
    case MSG_ST_C:
        msgpack_pack_double(pk, c->u.sum);
        break;
    case MSG_ST_G:
        break;
    case MSG_ST_S:
        pack_bool(pk, c->u.s.capped);
        msgpack_pack_array(pk, c->u.s.n);
        for (uint32_t i = 0; i < c->u.s.n; i++)
            msg_pack_span(pk, span_make(c->u.s.arena + c->u.s.mem[i].off, c->u.s.mem[i].len));
        break;
    default:
        msgpack_pack_double(pk, c->u.d.count);
        msgpack_pack_double(pk, c->u.d.sum);
        msgpack_pack_double(pk, c->u.d.min);
        msgpack_pack_double(pk, c->u.d.max);
        pack_sketch(pk, c->u.d.pos, tmp);
        pack_sketch(pk, c->u.d.neg, tmp);
        break;
    }
}

/* {v, interval, wm, closed, ivals: [[idx, rev]...], series: [[name, type,
 * tags, born, last, gauge, cells: [[idx, samples, dirty, ...]...]]...]} */
int sflush_save(const sflush_t *f, msgpack_packer *pk)
{
    mbuf_t tmp = { 0 };
    msgpack_pack_map(pk, 6);
    pack_cstr(pk, "v");
    msgpack_pack_int(pk, SNAP_VERSION);
    pack_cstr(pk, "interval");
    msgpack_pack_int64(pk, f->o.interval_ns);
    pack_cstr(pk, "wm");
    if (f->have_wm)
        msgpack_pack_int64(pk, f->wm);
    else
        msgpack_pack_nil(pk);
    pack_cstr(pk, "closed");
    if (f->have_closed)
        msgpack_pack_int64(pk, f->closed);
    else
        msgpack_pack_nil(pk);
    pack_cstr(pk, "ivals");
    msgpack_pack_array(pk, f->nivals);
    for (size_t i = 0; i < f->nivals; i++) {
        msgpack_pack_array(pk, 2);
        msgpack_pack_int64(pk, f->ivals[i].idx);
        msgpack_pack_uint32(pk, f->ivals[i].rev);
    }
    pack_cstr(pk, "series");
    msgpack_pack_array(pk, f->nseries);
    for (const series_t *s = f->head; s; s = s->next) {
        msgpack_pack_array(pk, 7);
        span_t name;
        msg_tag_t tags[MSG_MAX_TAGS];
        size_t ntags = key_spans(s, &name, tags);
        msg_pack_span(pk, name);
        pack_cstr(pk, msg_stype_name(s->type));
        msgpack_pack_map(pk, ntags);
        for (size_t i = 0; i < ntags; i++) {
            msg_pack_span(pk, tags[i].key);
            msg_pack_span(pk, tags[i].value);
        }
        msgpack_pack_int64(pk, s->born);
        msgpack_pack_int64(pk, s->last);
        msgpack_pack_double(pk, s->gauge);
        size_t n = 0;
        for (const cell_t *c = s->cells; c; c = c->next)
            n++;
        msgpack_pack_array(pk, n);
        for (const cell_t *c = s->cells; c; c = c->next)
            pack_cell(pk, s, c, &tmp);
    }
    mbuf_free(&tmp);
    return 0;
}

/* ---- load --------------------------------------------------------------- */

typedef struct {
    char *err;
    size_t cap;
} lerr_t;

static int lfail(lerr_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int lfail(lerr_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->cap) {
        int n = snprintf(e->err, e->cap, "snapshot: ");
        if (n >= 0 && (size_t)n < e->cap)
            vsnprintf(e->err + n, e->cap - (size_t)n, fmt, ap);
    }
    va_end(ap);
    return -1;
}

static bool obj_int(const msgpack_object *o, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t x;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return false;
        x = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        x = o->via.i64;
    } else {
        return false;
    }
    if (x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

static bool obj_f64(const msgpack_object *o, double *out)
{
    if (o->type != MSGPACK_OBJECT_FLOAT64 || !isfinite(o->via.f64))
        return false;
    *out = o->via.f64;
    return true;
}

static bool obj_bool(const msgpack_object *o, bool *out)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return false;
    *out = o->via.boolean;
    return true;
}

static bool obj_str(const msgpack_object *o, span_t *out)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size > MSG_MAX_STR)
        return false;
    *out = span_make(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    return true;
}

static bool obj_key(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, s, n) == 0;
}

static int load_sketch(const msgpack_object *o, sketch_t **out, bool neg, lerr_t *e)
{
    *out = NULL;
    if (o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_BIN)
        return lfail(e, "sketch: not bin or nil");
    char why[96];
    sketch_t *sk = sketch_decode(o->via.bin.ptr, o->via.bin.size, why, sizeof why);
    if (!sk)
        return lfail(e, "sketch: %s", why);
    *out = sk;
    if (sketch_rel_acc(sk) != SKETCH_REL_ACC_DEFAULT || sketch_count(sk) == 0 ||
        sketch_rejected(sk) != 0 || (neg && !(sketch_min(sk) > 0)))
        return lfail(e, "sketch: not one this module writes");
    return 0;
}

/* One cell; *prev: the interval of the cell before (newer), updated. */
static int load_cell(sflush_t *f, series_t *s, const msgpack_object *o, int64_t *prev, lerr_t *e)
{
    size_t want = s->type == MSG_ST_C ? 4 : s->type == MSG_ST_G ? 3 : s->type == MSG_ST_S ? 5 : 9;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != want)
        return lfail(e, "cell: not an array of %zu", want);
    const msgpack_object *a = o->via.array.ptr;
    int64_t k, samples;
    bool dirty;
    if (!obj_int(&a[0], 0, f->max_idx, &k) || k >= *prev || k > s->last || k < s->born)
        return lfail(e, "cell: interval not an integer below the previous one, in [born, last]");
    if (!obj_int(&a[1], 1, INT64_MAX, &samples) || !obj_bool(&a[2], &dirty))
        return lfail(e, "cell: samples or dirty of the wrong type");
    ival_t *v = ival_find(f, k);
    if (!v)
        return lfail(e, "cell: interval %lld not listed", (long long)k);
    bool closed = f->have_closed && k <= f->closed;
    if ((dirty && !closed) || (s->type == MSG_ST_G && (closed || dirty)))
        return lfail(e, "cell: dirty or gauge flags do not fit the interval");

    cell_t *c = cell_get(f, s, k); /* goes last: the cells come newest first */
    *prev = k;
    c->samples = (uint64_t)samples;
    c->dirty = dirty;
    v->dirty |= dirty;
    switch (s->type) {
    case MSG_ST_C:
        if (!obj_f64(&a[3], &c->u.sum))
            return lfail(e, "counter cell: sum not a finite float");
        break;
    case MSG_ST_G:
        break;
    case MSG_ST_S: {
        if (!obj_bool(&a[3], &c->u.s.capped) || a[4].type != MSGPACK_OBJECT_ARRAY)
            return lfail(e, "set cell: capped or members of the wrong type");
        const msgpack_object_array *m = &a[4].via.array;
        for (uint32_t i = 0; i < m->size; i++) {
            span_t x;
            if (!obj_str(&m->ptr[i], &x))
                return lfail(e, "set cell: a member not a string");
            bool cap = c->u.s.capped;
            if (set_add(c, x.p, x.len, SIZE_MAX) != 1)
                return lfail(e, "set cell: a member repeated or too many");
            c->u.s.capped = cap;
        }
        break;
    }
    default: {
        double *d[4] = { &c->u.d.count, &c->u.d.sum, &c->u.d.min, &c->u.d.max };
        for (int i = 0; i < 4; i++)
            if (!obj_f64(&a[3 + i], d[i]))
                return lfail(e, "distribution cell: count, sum, min, max not finite floats");
        if (load_sketch(&a[7], &c->u.d.pos, false, e) < 0 ||
            load_sketch(&a[8], &c->u.d.neg, true, e) < 0)
            return -1;
        const sketch_t *p = c->u.d.pos, *n = c->u.d.neg;
        uint64_t np = p ? sketch_count(p) : 0, nn = n ? sketch_count(n) : 0;
        double mn = n ? -sketch_max(n) : p ? sketch_min(p) : 0;
        double mx = p ? sketch_max(p) : n ? -sketch_min(n) : 0;
        if (!(c->u.d.count > 0) || np + nn != (uint64_t)samples || c->u.d.min != mn ||
            c->u.d.max != mx)
            return lfail(e, "distribution cell: count, min, max and sketches disagree");
        break;
    }
    }
    return 0;
}

static int load_series(sflush_t *f, const msgpack_object *o, lerr_t *e)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 7)
        return lfail(e, "series: not an array of 7");
    const msgpack_object *a = o->via.array.ptr;
    span_t name, t;
    if (!obj_str(&a[0], &name) || name.len == 0)
        return lfail(e, "series: name not a non-empty string");
    int type = -1;
    if (obj_str(&a[1], &t))
        for (int j = MSG_ST_C; j <= MSG_ST_S; j++)
            if (span_eq_cstr(t, msg_stype_name((msg_stype_t)j)))
                type = j;
    if (type < 0)
        return lfail(e, "series: unknown type");
    if (a[2].type != MSGPACK_OBJECT_MAP || a[2].via.map.size > MSG_MAX_TAGS)
        return lfail(e, "series: tags not a map of at most %d", MSG_MAX_TAGS);
    msg_tag_t tags[MSG_MAX_TAGS];
    size_t ntags = a[2].via.map.size;
    for (size_t i = 0; i < ntags; i++)
        if (!obj_str(&a[2].via.map.ptr[i].key, &tags[i].key) ||
            !obj_str(&a[2].via.map.ptr[i].val, &tags[i].value))
            return lfail(e, "series: a tag not a string");
    int64_t born, last;
    double gauge;
    if (!obj_int(&a[3], 0, f->max_idx, &born) || !obj_int(&a[4], born, f->max_idx, &last) ||
        !obj_f64(&a[5], &gauge) || a[6].type != MSGPACK_OBJECT_ARRAY)
        return lfail(e, "series: born, last, gauge or cells of the wrong type or range");

    uint8_t ord[MSG_MAX_TAGS];
    tags_order(tags, ntags, ord);
    key_build(f, name, (msg_stype_t)type, tags, ord, ntags);
    uint64_t h = XXH3_64bits(f->kbuf.data, f->kbuf.len);
    if (f->tcap && f->tab[tab_find_slot(f, h, f->kbuf.data, f->kbuf.len)].s)
        return lfail(e, "series: repeated");
    series_t *s = series_add(f, h, (msg_stype_t)type);
    s->born = born;
    s->last = last;
    s->gauge = gauge;
    const msgpack_object_array *cells = &a[6].via.array;
    int64_t prev = INT64_MAX;
    for (uint32_t i = 0; i < cells->size; i++) {
        if (load_cell(f, s, &cells->ptr[i], &prev, e) < 0)
            return -1;
    }
    return 0;
}

static int load(sflush_t *f, const msgpack_object *o, lerr_t *e)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return lfail(e, "not a map");
    const msgpack_object *v = NULL, *interval = NULL, *wm = NULL, *closed = NULL, *ivals = NULL,
                         *series = NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *x = &o->via.map.ptr[i].val;
        if (obj_key(k, "v"))
            v = x;
        else if (obj_key(k, "interval"))
            interval = x;
        else if (obj_key(k, "wm"))
            wm = x;
        else if (obj_key(k, "closed"))
            closed = x;
        else if (obj_key(k, "ivals"))
            ivals = x;
        else if (obj_key(k, "series"))
            series = x;
    }
    int64_t n;
    if (!v || !interval || !wm || !closed || !ivals || !series)
        return lfail(e, "lacks one of v, interval, wm, closed, ivals, series");
    if (!obj_int(v, SNAP_VERSION, SNAP_VERSION, &n))
        return lfail(e, "v: not %d", SNAP_VERSION);
    if (!obj_int(interval, 1, INT64_MAX, &n) || n != f->o.interval_ns)
        return lfail(e, "interval: not this interval_ns (%lld)", (long long)f->o.interval_ns);
    if (wm->type != MSGPACK_OBJECT_NIL) {
        if (!obj_int(wm, INT64_MIN, INT64_MAX, &f->wm))
            return lfail(e, "wm: not an integer or nil");
        f->have_wm = true;
    }
    if (closed->type != MSGPACK_OBJECT_NIL) {
        if (!obj_int(closed, -1, f->max_idx, &f->closed) || !f->have_wm)
            return lfail(e, "closed: not an interval or nil, or without wm");
        f->have_closed = true;
    }
    if (ivals->type != MSGPACK_OBJECT_ARRAY || series->type != MSGPACK_OBJECT_ARRAY)
        return lfail(e, "ivals or series: not an array");
    for (uint32_t i = 0; i < ivals->via.array.size; i++) {
        const msgpack_object *x = &ivals->via.array.ptr[i];
        int64_t k, rev;
        if (x->type != MSGPACK_OBJECT_ARRAY || x->via.array.size != 2 ||
            !obj_int(&x->via.array.ptr[0], 0, f->max_idx, &k) ||
            !obj_int(&x->via.array.ptr[1], 0, UINT32_MAX, &rev))
            return lfail(e, "ivals: an entry not [interval, rev]");
        if (f->nivals && k <= f->ivals[f->nivals - 1].idx)
            return lfail(e, "ivals: not ascending");
        if (rev && !(f->have_closed && k <= f->closed))
            return lfail(e, "ivals: an open interval with a rev");
        ival_get(f, k)->rev = (uint32_t)rev;
    }
    for (uint32_t i = 0; i < series->via.array.size; i++)
        if (load_series(f, &series->via.array.ptr[i], e) < 0)
            return -1;
    for (size_t i = 0; i < f->nivals; i++)
        if (f->ivals[i].ncells == 0)
            return lfail(e, "ivals: interval %lld without data", (long long)f->ivals[i].idx);
    return 0;
}

int sflush_load(sflush_t *f, const msgpack_object *o, char *err, size_t cap)
{
    clear(f);
    lerr_t e = { err, cap };
    if (load(f, o, &e) < 0) {
        clear(f);
        return -1;
    }
    return 0;
}

#include "spool.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "xalloc.h"

/* A record: header, topic, envelope, then a check of everything before it:
 * the low 32 bits of XXH3-64 (xxhash), which runs at memory speed where a
 * CRC-32 cost more than all the rest of publishing.
 *   u32 magic   'T' 'K' 'S' '1'
 *   u32 total   bytes of the whole record
 *   u64 seq
 *   u8  topic length, 3 bytes zero
 *   u32 envelope length
 * all little-endian. */
#define MAGIC 0x31534b54u
#define HDR 24
#define TOPIC_MAX 64
#define ENV_MAX (64u << 20)
#define INDEX_EVERY (256 * 1024) /* a sparse index point every so many bytes */

typedef struct {
    uint64_t seq;
    uint64_t off;
} ipoint_t;

typedef struct {
    uint64_t first, last; /* seqs; last < first when empty */
    uint64_t bytes;       /* committed (fully written) size */
    int64_t mtime_ms;     /* wall clock of the last write */
    ipoint_t *index;      /* sparse: (seq, offset) */
    size_t nindex;
    bool indexed; /* index covers the whole segment */
} seg_t;

/* Group fsync runs in a thread of its own: fdatasync of a second's worth of
 * messages can take longer than the publisher may stop reading its input.
 * It gets file descriptors (dup'd, or a rolled segment's) and closes them
 * once synced. */
#define SYNC_QUEUE 8

typedef struct {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv, idle;
    int fds[SYNC_QUEUE];
    size_t n;
    bool busy, stop, started;
    int errors;
} syncer_t;

static void *syncer_main(void *arg)
{
    syncer_t *y = arg;
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (!y->n && !y->stop)
            pthread_cond_wait(&y->cv, &y->mu);
        if (!y->n && y->stop)
            break;
        int fd = y->fds[0];
        memmove(y->fds, y->fds + 1, (y->n - 1) * sizeof *y->fds);
        y->n--;
        y->busy = true;
        pthread_mutex_unlock(&y->mu);
        int rc = fdatasync(fd);
        close(fd);
        pthread_mutex_lock(&y->mu);
        y->busy = false;
        if (rc < 0)
            y->errors++;
        if (!y->n)
            pthread_cond_broadcast(&y->idle);
    }
    pthread_mutex_unlock(&y->mu);
    return NULL;
}

/* Hands fd over (it is closed after the sync). Returns false when the queue
 * is full: the caller keeps fd. */
static bool syncer_post(syncer_t *y, int fd)
{
    if (!y->started) {
        pthread_mutex_init(&y->mu, NULL);
        pthread_cond_init(&y->cv, NULL);
        pthread_cond_init(&y->idle, NULL);
        if (pthread_create(&y->th, NULL, syncer_main, y) != 0)
            return false;
        y->started = true;
    }
    pthread_mutex_lock(&y->mu);
    bool ok = y->n < SYNC_QUEUE;
    if (ok) {
        y->fds[y->n++] = fd;
        pthread_cond_signal(&y->cv);
    }
    pthread_mutex_unlock(&y->mu);
    return ok;
}

/* Waits until everything handed over is synced; true when all went well. */
static bool syncer_drain(syncer_t *y)
{
    if (!y->started)
        return true;
    pthread_mutex_lock(&y->mu);
    while (y->n || y->busy)
        pthread_cond_wait(&y->idle, &y->mu);
    bool ok = y->errors == 0;
    y->errors = 0;
    pthread_mutex_unlock(&y->mu);
    return ok;
}

static void syncer_stop(syncer_t *y)
{
    if (!y->started)
        return;
    pthread_mutex_lock(&y->mu);
    y->stop = true;
    pthread_cond_signal(&y->cv);
    pthread_mutex_unlock(&y->mu);
    pthread_join(y->th, NULL);
    pthread_mutex_destroy(&y->mu);
    pthread_cond_destroy(&y->cv);
    pthread_cond_destroy(&y->idle);
    y->started = false;
}

struct spool {
    char *dir;
    spool_opts_t o;
    seg_t *segs;
    size_t nsegs;
    int fd;                /* the active (last) segment, opened for append */
    int64_t active_since;  /* monotonic ms the active segment was opened */
    bool dirty;
    int64_t last_sync_ms;
    uint64_t total;
    uint64_t repaired;
    /* records appended but not yet written: one write per flush, not one
     * per message */
    mbuf_t wbuf;
    uint64_t pend_last; /* seq of the last record in wbuf; 0: none */
    syncer_t syncer;
};

#define WBUF_MAX (1u << 20)

struct spool_cursor {
    spool_t *s;
    uint64_t seg_first; /* the segment being read, by its first seq */
    int fd;
    uint64_t off;
    uint64_t next; /* the seq it reads next */
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static char *seg_path(const spool_t *s, uint64_t first)
{
    return xasprintf("%s/%020llu.seg", s->dir, (unsigned long long)first);
}

static void index_add(seg_t *g, uint64_t seq, uint64_t off)
{
    if (g->nindex && off - g->index[g->nindex - 1].off < INDEX_EVERY)
        return;
    g->index = xreallocarray(g->index, g->nindex + 1, sizeof *g->index);
    g->index[g->nindex++] = (ipoint_t){ seq, off };
}

/* Reads the header at off; returns the record's total size, or 0 when
 * there is no whole, sane header there. */
static uint32_t read_header(int fd, uint64_t off, uint64_t limit, uint64_t *seq, uint32_t *tlen,
                            uint32_t *elen)
{
    unsigned char h[HDR];
    if (off + HDR > limit || pread(fd, h, HDR, (off_t)off) != HDR)
        return 0;
    uint32_t total = get32(h + 4);
    *seq = get64(h + 8);
    *tlen = h[16];
    *elen = get32(h + 20);
    if (get32(h) != MAGIC || *tlen == 0 || *tlen > TOPIC_MAX || *elen > ENV_MAX ||
        total != HDR + *tlen + *elen + 4 || off + total > limit)
        return 0;
    return total;
}

/* Reads and checks a whole record; its topic and envelope land in buf. */
static uint32_t read_record(int fd, uint64_t off, uint64_t limit, uint64_t *seq, mbuf_t *buf,
                            uint32_t *tlen, uint32_t *elen)
{
    uint32_t total = read_header(fd, off, limit, seq, tlen, elen);
    if (!total)
        return 0;
    mbuf_reset(buf);
    mbuf_reserve(buf, total);
    if (pread(fd, buf->data, total, (off_t)off) != (ssize_t)total)
        return 0;
    uint32_t want = get32((unsigned char *)buf->data + total - 4);
    uint32_t got = (uint32_t)XXH3_64bits(buf->data, total - 4);
    if (want != got)
        return 0;
    buf->len = total;
    return total;
}

/* ---- open --------------------------------------------------------------- */

static int cmp_seg(const void *a, const void *b)
{
    const seg_t *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

static int mkdirs(const char *dir)
{
    char *p = xstrdup(dir);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = '\0';
        if (mkdir(p, 0750) < 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *q = '/';
    }
    int rc = mkdir(p, 0750) < 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

/* Scans the last segment record by record; cuts off what follows the last
 * good one. */
static int repair_last(spool_t *s, char *err, size_t errcap)
{
    seg_t *g = &s->segs[s->nsegs - 1];
    char *path = seg_path(s, g->first);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "spool %s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    struct stat st;
    fstat(fd, &st);
    uint64_t size = (uint64_t)st.st_size, off = 0, expect = g->first;
    mbuf_t b = { 0 };
    for (;;) {
        uint64_t seq;
        uint32_t tl, el;
        uint32_t n = read_record(fd, off, size, &seq, &b, &tl, &el);
        if (!n || seq != expect)
            break;
        index_add(g, seq, off);
        off += n;
        expect++;
    }
    mbuf_free(&b);
    if (off < size) {
        s->repaired += size - off;
        if (ftruncate(fd, (off_t)off) < 0) {
            snprintf(err, errcap, "spool %s: cannot cut a torn tail: %s", path, strerror(errno));
            close(fd);
            free(path);
            return -1;
        }
    }
    close(fd);
    g->bytes = off;
    g->last = expect - 1;
    g->indexed = true;
    if (off == 0 && s->nsegs > 1) { /* an empty last segment: drop it */
        unlink(path);
        free(g->index);
        s->nsegs--;
    }
    free(path);
    return 0;
}

spool_t *spool_open(const spool_opts_t *o, char *err, size_t errcap)
{
    if (mkdirs(o->dir) < 0) {
        snprintf(err, errcap, "spool directory %s: %s", o->dir, strerror(errno));
        return NULL;
    }
    DIR *d = opendir(o->dir);
    if (!d) {
        snprintf(err, errcap, "spool directory %s: %s", o->dir, strerror(errno));
        return NULL;
    }
    spool_t *s = xcalloc(1, sizeof *s);
    s->dir = xstrdup(o->dir);
    s->o = *o;
    s->fd = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long first;
        char tail[8];
        if (strlen(e->d_name) != 24 || sscanf(e->d_name, "%20llu%7s", &first, tail) != 2 ||
            strcmp(tail, ".seg") || first == 0)
            continue;
        char *path = seg_path(s, first);
        struct stat st;
        if (stat(path, &st) == 0) {
            s->segs = xreallocarray(s->segs, s->nsegs + 1, sizeof *s->segs);
            s->segs[s->nsegs++] = (seg_t){ .first = first, .bytes = (uint64_t)st.st_size,
                                           .mtime_ms = (int64_t)st.st_mtime * 1000 };
        }
        free(path);
    }
    closedir(d);
    if (s->nsegs > 1)
        qsort(s->segs, s->nsegs, sizeof *s->segs, cmp_seg);
    for (size_t i = 0; i + 1 < s->nsegs; i++)
        s->segs[i].last = s->segs[i + 1].first - 1;
    if (s->nsegs && repair_last(s, err, errcap) < 0) {
        spool_close(&s);
        return NULL;
    }
    for (size_t i = 0; i < s->nsegs; i++)
        s->total += s->segs[i].bytes;
    if (s->nsegs) { /* append to the last segment */
        seg_t *g = &s->segs[s->nsegs - 1];
        char *path = seg_path(s, g->first);
        s->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        free(path);
        if (s->fd < 0) {
            snprintf(err, errcap, "spool %s: %s", o->dir, strerror(errno));
            spool_close(&s);
            return NULL;
        }
        s->active_since = mono_ms();
    }
    s->last_sync_ms = mono_ms();
    return s;
}

int spool_sync(spool_t *s)
{
    bool ok = syncer_drain(&s->syncer); /* what was handed over, then the rest */
    if (s->fd >= 0 && s->dirty && fdatasync(s->fd) < 0)
        return -1;
    s->dirty = false;
    if (!ok) {
        errno = EIO;
        return -1;
    }
    return 0;
}

void spool_close(spool_t **ps)
{
    spool_t *s = *ps;
    if (!s)
        return;
    if (s->fd >= 0) {
        spool_flush(s);
        if (s->o.fsync_ms >= 0)
            spool_sync(s);
        close(s->fd);
    }
    syncer_stop(&s->syncer);
    mbuf_free(&s->wbuf);
    for (size_t i = 0; i < s->nsegs; i++)
        free(s->segs[i].index);
    free(s->segs);
    free(s->dir);
    free(s);
    *ps = NULL;
}

uint64_t spool_last_seq(const spool_t *s)
{
    return s->nsegs ? s->segs[s->nsegs - 1].last : 0;
}

uint64_t spool_oldest_seq(const spool_t *s)
{
    if (!s->nsegs || spool_last_seq(s) < s->segs[0].first)
        return 0;
    return s->segs[0].first;
}

uint64_t spool_bytes(const spool_t *s) { return s->total; }
size_t spool_segments(const spool_t *s) { return s->nsegs; }
uint64_t spool_repaired(const spool_t *s) { return s->repaired; }

/* ---- writing ------------------------------------------------------------ */

static int new_segment(spool_t *s, uint64_t first)
{
    if (s->fd >= 0) {
        /* the finished segment is synced in the background (or here, when
         * every write must be synced before it is sent, or the queue is full) */
        bool handed = s->o.fsync_ms > 0 && s->dirty && syncer_post(&s->syncer, s->fd);
        if (!handed) {
            if (s->o.fsync_ms >= 0 && s->dirty && fdatasync(s->fd) < 0)
                return -1;
            close(s->fd);
        }
        s->fd = -1;
        s->dirty = false;
    }
    char *path = seg_path(s, first);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    free(path);
    if (fd < 0)
        return -1;
    s->fd = fd;
    s->segs = xreallocarray(s->segs, s->nsegs + 1, sizeof *s->segs);
    s->segs[s->nsegs++] = (seg_t){ .first = first, .last = first - 1, .mtime_ms = wall_ms(),
                                   .indexed = true };
    s->active_since = mono_ms();
    return 0;
}

int spool_flush(spool_t *s)
{
    if (!s->wbuf.len)
        return 0;
    seg_t *g = &s->segs[s->nsegs - 1];
    size_t done = 0;
    while (done < s->wbuf.len) {
        ssize_t n = write(s->fd, s->wbuf.data + done, s->wbuf.len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : EIO;
            /* no part of the batch may stay: the next append would follow it */
            if (done && ftruncate(s->fd, (off_t)g->bytes) < 0)
                saved = errno;
            mbuf_reset(&s->wbuf);
            s->pend_last = 0;
            errno = saved;
            return -1;
        }
        done += (size_t)n;
    }
    /* the sparse index points of what was written */
    for (size_t off = 0; off < s->wbuf.len;) {
        const unsigned char *h = (const unsigned char *)s->wbuf.data + off;
        index_add(g, get64(h + 8), g->bytes + off);
        off += get32(h + 4);
    }
    g->bytes += s->wbuf.len;
    g->last = s->pend_last;
    g->mtime_ms = wall_ms();
    s->total += s->wbuf.len;
    s->dirty = true;
    mbuf_reset(&s->wbuf);
    s->pend_last = 0;
    if (s->o.fsync_ms == 0)
        return spool_sync(s);
    return 0;
}

uint64_t spool_appended_seq(const spool_t *s)
{
    return s->pend_last ? s->pend_last : spool_last_seq(s);
}

int spool_append(spool_t *s, uint64_t seq, const char *topic, const void *env, size_t len)
{
    size_t tl = strlen(topic);
    uint64_t prev = spool_appended_seq(s);
    if (tl == 0 || tl > TOPIC_MAX || len > ENV_MAX || (prev && seq != prev + 1)) {
        errno = EINVAL;
        return -1;
    }
    seg_t *g = s->nsegs ? &s->segs[s->nsegs - 1] : NULL;
    uint32_t total = (uint32_t)(HDR + tl + len + 4);
    uint64_t size = g ? g->bytes + s->wbuf.len : 0;
    if (!g || (size > 0 && (size + total > (uint64_t)s->o.segment_bytes ||
                            mono_ms() - s->active_since >= s->o.segment_age_ms))) {
        if (spool_flush(s) < 0 || new_segment(s, seq) < 0)
            return -1;
    }
    unsigned char h[HDR] = { 0 }, c[4];
    put32(h, MAGIC);
    put32(h + 4, total);
    put64(h + 8, seq);
    h[16] = (unsigned char)tl;
    put32(h + 20, (uint32_t)len);
    size_t start = s->wbuf.len;
    mbuf_reserve(&s->wbuf, total);
    mbuf_append(&s->wbuf, h, HDR);
    mbuf_append(&s->wbuf, topic, tl);
    mbuf_append(&s->wbuf, env, len);
    put32(c, (uint32_t)XXH3_64bits(s->wbuf.data + start, total - 4));
    mbuf_append(&s->wbuf, c, 4);
    s->pend_last = seq;
    if (s->wbuf.len >= WBUF_MAX)
        return spool_flush(s);
    return 0;
}

/* Deletes the oldest segments past the size or age cap (never the active). */
static void retain(spool_t *s)
{
    int64_t now = wall_ms();
    size_t drop = 0;
    uint64_t total = s->total;
    while (drop + 1 < s->nsegs) {
        seg_t *g = &s->segs[drop];
        bool too_big = s->o.max_bytes > 0 && total > (uint64_t)s->o.max_bytes;
        bool too_old = s->o.max_age_ms > 0 && now - g->mtime_ms > s->o.max_age_ms;
        if (!too_big && !too_old)
            break;
        char *path = seg_path(s, g->first);
        unlink(path); /* open cursors keep reading it until they close */
        free(path);
        total -= g->bytes;
        free(g->index);
        drop++;
    }
    if (drop) {
        memmove(s->segs, s->segs + drop, (s->nsegs - drop) * sizeof *s->segs);
        s->nsegs -= drop;
        s->total = total;
    }
}

int spool_tick(spool_t *s, int64_t now_ms)
{
    int rc = 0;
    /* an idle publisher's segment rolls by age too, so retention can take it;
     * the new, empty segment keeps the last seq known across a restart */
    if (s->nsegs && s->fd >= 0 && !s->wbuf.len) {
        seg_t *g = &s->segs[s->nsegs - 1];
        if (g->bytes > 0 && now_ms - s->active_since >= s->o.segment_age_ms &&
            new_segment(s, g->last + 1) < 0)
            rc = -1;
    }
    if (s->o.fsync_ms > 0 && s->dirty && now_ms - s->last_sync_ms >= s->o.fsync_ms) {
        int fd = dup(s->fd); /* the syncer closes its copy when done */
        if (fd >= 0 && !syncer_post(&s->syncer, fd))
            close(fd); /* it is still busy with the last one: next time */
        else if (fd >= 0)
            s->dirty = false;
        s->last_sync_ms = now_ms;
    }
    retain(s);
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

static seg_t *find_seg(spool_t *s, uint64_t first)
{
    size_t lo = 0, hi = s->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->segs[mid].first < first)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nsegs && s->segs[lo].first == first ? &s->segs[lo] : NULL;
}

/* The segment holding seq, or NULL. */
static seg_t *seg_of(spool_t *s, uint64_t seq)
{
    size_t lo = 0, hi = s->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->segs[mid].first <= seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    seg_t *g = &s->segs[lo - 1];
    return seq <= g->last ? g : NULL;
}

static int open_seg(spool_cursor_t *c, uint64_t first)
{
    if (c->fd >= 0)
        close(c->fd);
    char *path = seg_path(c->s, first);
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    c->seg_first = first;
    c->off = 0;
    return c->fd < 0 ? -1 : 0;
}

/* Builds a closed segment's sparse index by walking its headers. */
static void index_seg(spool_t *s, seg_t *g, int fd)
{
    uint64_t off = 0, seq;
    uint32_t tl, el;
    g->nindex = 0;
    for (;;) {
        uint32_t n = read_header(fd, off, g->bytes, &seq, &tl, &el);
        if (!n)
            break;
        index_add(g, seq, off);
        off += n;
    }
    (void)s;
    g->indexed = true;
}

spool_cursor_t *spool_cursor_open(spool_t *s, uint64_t from, uint64_t *gone)
{
    *gone = 0;
    spool_cursor_t *c = xcalloc(1, sizeof *c);
    c->s = s;
    c->fd = -1;
    uint64_t oldest = spool_oldest_seq(s), last = spool_last_seq(s);
    if (from == 0)
        from = 1;
    c->next = last && from > last ? last + 1 : from;
    if (oldest && from < oldest) {
        *gone = oldest;
        free(c);
        return NULL;
    }
    if (!last || from > last) { /* at the end: it will see what comes next */
        c->seg_first = s->nsegs ? s->segs[s->nsegs - 1].first : 0;
        if (s->nsegs && open_seg(c, c->seg_first) < 0)
            goto fail;
        if (s->nsegs)
            c->off = s->segs[s->nsegs - 1].bytes;
        return c;
    }
    seg_t *g = seg_of(s, from);
    if (!g || open_seg(c, g->first) < 0)
        goto fail;
    if (!g->indexed)
        index_seg(s, g, c->fd);
    for (size_t i = 0; i < g->nindex && g->index[i].seq <= from; i++)
        c->off = g->index[i].off;
    /* walk the headers to the record itself */
    for (;;) {
        uint64_t seq;
        uint32_t tl, el;
        uint32_t n = read_header(c->fd, c->off, g->bytes, &seq, &tl, &el);
        if (!n)
            goto fail;
        if (seq >= from)
            break;
        c->off += n;
    }
    return c;
fail:
    spool_cursor_close(&c);
    return NULL;
}

uint64_t spool_cursor_resume(const spool_cursor_t *c, const spool_t *s)
{
    if (c->next < spool_oldest_seq(s))
        return spool_oldest_seq(s);
    for (size_t i = 0; i < s->nsegs; i++)
        if (s->segs[i].first > c->next)
            return s->segs[i].first;
    return spool_last_seq(s) + 1;
}

void spool_cursor_close(spool_cursor_t **pc)
{
    spool_cursor_t *c = *pc;
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
    *pc = NULL;
}

int spool_cursor_next(spool_cursor_t *c, uint64_t *seq, char *topic, mbuf_t *env)
{
    spool_t *s = c->s;
    for (;;) {
        if (c->fd < 0) { /* opened on an empty spool, or between segments */
            seg_t *n = find_seg(s, c->next);
            if (!n)
                return c->next <= spool_last_seq(s) ? -1 : 0;
            if (open_seg(c, n->first) < 0)
                return -1;
        }
        seg_t *g = find_seg(s, c->seg_first);
        /* a segment retention removed is still readable through our fd;
         * its size is the file's */
        uint64_t limit;
        if (g) {
            limit = g->bytes;
        } else {
            struct stat st;
            if (fstat(c->fd, &st) < 0)
                return -1;
            limit = (uint64_t)st.st_size;
        }
        if (c->off < limit) {
            uint32_t tl, el;
            uint32_t n = read_record(c->fd, c->off, limit, seq, env, &tl, &el);
            if (!n || *seq != c->next)
                return -1;
            memcpy(topic, env->data + HDR, tl);
            topic[tl] = '\0';
            memmove(env->data, env->data + HDR + tl, el);
            env->len = el;
            c->off += n;
            c->next++;
            return 1;
        }
        /* the end of this segment: the next one starts at the next seq */
        seg_t *n = find_seg(s, c->next);
        if (!n) {
            if (c->next <= spool_last_seq(s) && c->next < spool_oldest_seq(s))
                return -1; /* retention took what follows */
            return 0;      /* nothing newer yet */
        }
        /* that is the one being read: an empty last segment (a torn first
         * record cut at open, a failed write after a roll), not a next one */
        if (n->first == c->seg_first)
            return 0;
        if (open_seg(c, n->first) < 0)
            return -1;
    }
}

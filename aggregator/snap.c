#include "snap.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "mbuf.h"
#include "mpr.h"
#include "xalloc.h"

#define MAGIC "tokmon-aggregator-snapshot 1\n"
#define MAGIC_LEN (sizeof MAGIC - 1)
#define TRAILER_TAG "TKSNAPND"
#define TRAILER_LEN 16 /* tag + XXH3-64, big-endian */
#define FLUSH_AT (1u << 20)
#define MAX_DEPTH 16

struct snapw {
    char *path, *tmp;
    int fd;
    mbuf_t buf;
    msgpack_packer pk;
    XXH3_state_t *hash;
    uint64_t bytes;
    int err; /* first write error */
};

snapw_t *snapw_open(const char *path, char *err, size_t errcap)
{
    snapw_t *w = xcalloc(1, sizeof *w);
    w->path = xstrdup(path);
    w->tmp = xasprintf("%s.tmp", path);
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        snprintf(err, errcap, "%s: %s", w->tmp, strerror(errno));
        free(w->path);
        free(w->tmp);
        free(w);
        return NULL;
    }
    w->hash = XXH3_createState();
    if (!w->hash)
        abort();
    XXH3_64bits_reset(w->hash);
    mbuf_packer(&w->buf, &w->pk);
    mbuf_append(&w->buf, MAGIC, MAGIC_LEN);
    return w;
}

static void write_buf(snapw_t *w)
{
    if (!w->buf.len)
        return;
    XXH3_64bits_update(w->hash, w->buf.data, w->buf.len);
    size_t off = 0;
    while (!w->err && off < w->buf.len) {
        ssize_t n = write(w->fd, w->buf.data + off, w->buf.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            w->err = errno;
            break;
        }
        off += (size_t)n;
    }
    w->bytes += w->buf.len;
    mbuf_reset(&w->buf);
}

msgpack_packer *snapw_packer(snapw_t *w)
{
    return &w->pk;
}

void snapw_record(snapw_t *w)
{
    if (w->buf.len >= FLUSH_AT)
        write_buf(w);
}

uint64_t snapw_bytes(const snapw_t *w)
{
    return w->bytes + w->buf.len;
}

static void snapw_free(snapw_t *w)
{
    if (w->fd >= 0)
        close(w->fd);
    XXH3_freeState(w->hash);
    mbuf_free(&w->buf);
    free(w->path);
    free(w->tmp);
    free(w);
}

void snapw_abort(snapw_t **pw)
{
    snapw_t *w = *pw;
    if (!w)
        return;
    unlink(w->tmp);
    snapw_free(w);
    *pw = NULL;
}

static int fsync_dir(const char *path)
{
    char *copy = xstrdup(path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int snapw_commit(snapw_t **pw, char *err, size_t errcap)
{
    snapw_t *w = *pw;
    write_buf(w);
    uint64_t h = XXH3_64bits_digest(w->hash);
    char trailer[TRAILER_LEN];
    memcpy(trailer, TRAILER_TAG, 8);
    for (int i = 0; i < 8; i++)
        trailer[8 + i] = (char)(h >> (56 - 8 * i));
    mbuf_append(&w->buf, trailer, TRAILER_LEN);
    write_buf(w);
    int rc = -1;
    if (w->err)
        snprintf(err, errcap, "%s: write: %s", w->tmp, strerror(w->err));
    else if (fsync(w->fd) < 0)
        snprintf(err, errcap, "%s: fsync: %s", w->tmp, strerror(errno));
    else if (rename(w->tmp, w->path) < 0)
        snprintf(err, errcap, "rename %s: %s", w->tmp, strerror(errno));
    else if (fsync_dir(w->path) < 0)
        snprintf(err, errcap, "fsync of the directory of %s: %s", w->path, strerror(errno));
    else
        rc = 0;
    if (rc < 0)
        unlink(w->tmp);
    snapw_free(w);
    *pw = NULL;
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

struct snapr {
    const char *data;
    size_t len;  /* mapped */
    size_t off, end; /* values lie in [MAGIC_LEN, end) */
    msgpack_unpacked up;
};

snapr_t *snapr_open(const char *path, char *err, size_t errcap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errcap, "%s: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < (off_t)(MAGIC_LEN + TRAILER_LEN)) {
        snprintf(err, errcap, "%s: too short to be a snapshot", path);
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        int e = errno;
        snprintf(err, errcap, "%s: mmap: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    const char *d = p;
    const char *tr = d + len - TRAILER_LEN;
    uint64_t want = 0;
    for (int i = 0; i < 8; i++)
        want = want << 8 | (unsigned char)tr[8 + i];
    const char *why = NULL;
    if (memcmp(d, MAGIC, MAGIC_LEN) != 0)
        why = "not a tokmon aggregator snapshot (or another version)";
    else if (memcmp(tr, TRAILER_TAG, 8) != 0)
        why = "the trailer is missing (an unfinished write)";
    else if (XXH3_64bits(d, len - TRAILER_LEN) != want)
        why = "the checksum does not match (damaged)";
    if (why) {
        snprintf(err, errcap, "%s: %s", path, why);
        munmap(p, len);
        errno = EINVAL;
        return NULL;
    }
    snapr_t *r = xcalloc(1, sizeof *r);
    r->data = d;
    r->len = len;
    r->off = MAGIC_LEN;
    r->end = len - TRAILER_LEN;
    msgpack_unpacked_init(&r->up);
    return r;
}

const msgpack_object *snapr_next(snapr_t *r, char *err, size_t errcap)
{
    err[0] = '\0';
    if (r->off >= r->end)
        return NULL;
    /* the value's extent first, checked without allocating, then msgpack-c */
    mpr_t m;
    mpr_init(&m, r->data + r->off, r->end - r->off);
    if (mpr_skip(&m, MAX_DEPTH) < 0) {
        snprintf(err, errcap, "malformed value at byte %zu", r->off);
        return NULL;
    }
    size_t n = (size_t)((const char *)m.p - (r->data + r->off)), off = 0;
    if (msgpack_unpack_next(&r->up, r->data + r->off, n, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != n) {
        snprintf(err, errcap, "malformed value at byte %zu", r->off);
        return NULL;
    }
    r->off += n;
    return &r->up.data;
}

void snapr_close(snapr_t **pr)
{
    snapr_t *r = *pr;
    if (!r)
        return;
    msgpack_unpacked_destroy(&r->up);
    munmap((void *)(uintptr_t)r->data, r->len);
    free(r);
    *pr = NULL;
}

/* ---- records ------------------------------------------------------------ */

void snap_rec_open(snap_rec_t *r, const msgpack_object *o)
{
    memset(r, 0, sizeof *r);
    if (o && o->type == MSGPACK_OBJECT_ARRAY) {
        r->a = o->via.array.ptr;
        r->n = o->via.array.size;
    } else {
        r->bad = true;
    }
}

static const msgpack_object *rec_take(snap_rec_t *r)
{
    if (r->bad || r->i >= r->n) {
        r->bad = true;
        return NULL;
    }
    return &r->a[r->i++];
}

int64_t snap_rec_i64(snap_rec_t *r)
{
    const msgpack_object *o = rec_take(r);
    if (!o)
        return 0;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        return (int64_t)o->via.u64;
    r->bad = true;
    return 0;
}

uint64_t snap_rec_u64(snap_rec_t *r)
{
    const msgpack_object *o = rec_take(r);
    if (!o)
        return 0;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return o->via.u64;
    r->bad = true;
    return 0;
}

span_t snap_rec_str(snap_rec_t *r)
{
    const msgpack_object *o = rec_take(r);
    if (o && o->type == MSGPACK_OBJECT_STR)
        return span_make(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    if (o && o->type == MSGPACK_OBJECT_BIN)
        return span_make(o->via.bin.size ? o->via.bin.ptr : "", o->via.bin.size);
    r->bad = true;
    return span_make("", 0);
}

const msgpack_object *snap_rec_obj(snap_rec_t *r)
{
    return rec_take(r);
}

bool snap_rec_ok(const snap_rec_t *r)
{
    return !r->bad && r->i == r->n;
}

void snap_pack_str(msgpack_packer *pk, const char *p, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, p, n);
}

void snap_pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, p, n);
}

/* spool_test: tests of common/spool in a temporary directory: appending and
 * reading back through cursors, seq continuity, reopening, torn-tail and CRC
 * repair at every byte of the last record, rolling by size and age,
 * retention by size and age (never the active segment), cursors that outlive
 * the segment they read, fsync modes, and the limits on topics and
 * envelopes. Run one test alone with `spool_test NAME`. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "mbuf.h"
#include "spool.h"
#include "tmtime.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The standard message: topic "ev.00" and a 67-byte envelope make a
 * 100-byte record (24 header + 5 + 67 + 4 check), so segment_bytes 300 holds
 * exactly three. The tests that need this check it through spool_bytes. */
#define STD_TOPIC "ev.00"
#define STD_LEN 67
#define STD_REC 100

static char g_root[64];
static int g_dirs;
static spool_t *g_spools[4];
static spool_cursor_t *g_curs[8];

/* ---- fixtures ------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int root_up(void **state)
{
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/spool_test.XXXXXX");
    return mkdtemp(g_root) ? 0 : -1;
}

/* Closes what a test left open, also when it failed half-way. */
static int close_all(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(g_curs); i++)
        spool_cursor_close(&g_curs[i]);
    for (size_t i = 0; i < ARRAY_LEN(g_spools); i++)
        spool_close(&g_spools[i]);
    return 0;
}

static int root_down(void **state)
{
    close_all(state);
    rm_rf(g_root);
    return 0;
}

/* A new, not yet existing directory under the root (spool_open creates it). */
static const char *fresh_dir(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/d%d", g_root, ++g_dirs);
    return buf;
}

static spool_opts_t opts(const char *dir)
{
    return (spool_opts_t){ .dir = dir,
                           .segment_bytes = 1 << 20,
                           .segment_age_ms = 3600 * 1000,
                           .max_bytes = 0,
                           .max_age_ms = 0,
                           .fsync_ms = -1 };
}

static spool_t *keep_spool(spool_t *s)
{
    for (size_t i = 0; s && i < ARRAY_LEN(g_spools); i++)
        if (!g_spools[i])
            return g_spools[i] = s;
    assert_null(s);
    return s;
}

static void forget_spool(spool_t *s)
{
    for (size_t i = 0; i < ARRAY_LEN(g_spools); i++)
        if (g_spools[i] == s)
            g_spools[i] = NULL;
}

static spool_t *open_ok(const spool_opts_t *o)
{
    char err[256] = "";
    spool_t *s = spool_open(o, err, sizeof err);
    if (!s)
        fail_msg("spool_open %s: %s", o->dir, err);
    return keep_spool(s);
}

static void close_spool(spool_t **s)
{
    forget_spool(*s);
    spool_close(s);
    assert_null(*s);
}

static spool_cursor_t *keep_cur(spool_cursor_t *c)
{
    for (size_t i = 0; c && i < ARRAY_LEN(g_curs); i++)
        if (!g_curs[i])
            return g_curs[i] = c;
    assert_null(c);
    return c;
}

static void close_cur(spool_cursor_t **c)
{
    for (size_t i = 0; i < ARRAY_LEN(g_curs); i++)
        if (g_curs[i] == *c)
            g_curs[i] = NULL;
    spool_cursor_close(c);
    assert_null(*c);
}

static spool_cursor_t *cur_ok(spool_t *s, uint64_t from)
{
    uint64_t gone = 12345;
    spool_cursor_t *c = spool_cursor_open(s, from, &gone);
    if (!c)
        fail_msg("cursor from %llu: NULL, gone %llu", (unsigned long long)from,
                 (unsigned long long)gone);
    assert_int_equal(gone, 0);
    return keep_cur(c);
}

/* ---- messages ------------------------------------------------------------- */

/* The envelope bytes of seq: a pattern that differs between seqs. */
/* Appends and writes at once: what a publisher does before it sends. */
static int append_flush(spool_t *s, uint64_t seq, const char *topic, const void *env, size_t len)
{
    int rc = spool_append(s, seq, topic, env, len);
    return rc == 0 ? spool_flush(s) : rc;
}

static void fill_env(unsigned char *p, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(seq * 131 + i * 7 + (i >> 8));
}

static void append_ok(spool_t *s, uint64_t seq, const char *topic, size_t len)
{
    unsigned char *env = malloc(len ? len : 1);
    fill_env(env, len, seq);
    if (append_flush(s, seq, topic, env, len) != 0)
        fail_msg("append %llu (%s, %zu bytes): %s", (unsigned long long)seq, topic, len,
                 strerror(errno));
    assert_int_equal(spool_last_seq(s), seq);
    free(env);
}

/* Appends the standard message with seqs first..last. */
static void append_std(spool_t *s, uint64_t first, uint64_t last)
{
    for (uint64_t q = first; q <= last; q++)
        append_ok(s, q, STD_TOPIC, STD_LEN);
}

/* Reads one message and checks it is seq with topic and len envelope bytes. */
static void expect_msg(spool_cursor_t *c, uint64_t seq, const char *topic, size_t len)
{
    uint64_t got = 0;
    char t[65];
    mbuf_t env = { 0 };
    int rc = spool_cursor_next(c, &got, t, &env);
    if (rc != 1)
        fail_msg("want seq %llu, read %d", (unsigned long long)seq, rc);
    if (got != seq)
        fail_msg("want seq %llu, read seq %llu", (unsigned long long)seq, (unsigned long long)got);
    assert_string_equal(t, topic);
    assert_int_equal(env.len, len);
    unsigned char *want = malloc(len ? len : 1);
    fill_env(want, len, seq);
    if (len && memcmp(env.data, want, len) != 0)
        fail_msg("seq %llu: envelope differs", (unsigned long long)seq);
    free(want);
    mbuf_free(&env);
}

static void expect_std(spool_cursor_t *c, uint64_t first, uint64_t last)
{
    for (uint64_t q = first; q <= last; q++)
        expect_msg(c, q, STD_TOPIC, STD_LEN);
}

/* The next read returns rc (0: at the end, -1: damaged or gone). */
static void expect_rc(spool_cursor_t *c, int want)
{
    uint64_t seq = 0;
    char t[65];
    mbuf_t env = { 0 };
    int rc = spool_cursor_next(c, &seq, t, &env);
    mbuf_free(&env);
    if (rc != want)
        fail_msg("read %d (seq %llu), want %d", rc, (unsigned long long)seq, want);
}

/* The first seqs of the segment files in dir, sorted; returns how many. */
static size_t seg_files(const char *dir, uint64_t *firsts, size_t max)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l != 24 || strcmp(e->d_name + 20, ".seg") != 0)
            continue;
        assert_true(n < max);
        firsts[n++] = strtoull(e->d_name, NULL, 10);
    }
    closedir(d);
    for (size_t i = 1; i < n; i++) /* insertion sort: a handful of names */
        for (size_t j = i; j > 0 && firsts[j - 1] > firsts[j]; j--) {
            uint64_t t = firsts[j];
            firsts[j] = firsts[j - 1];
            firsts[j - 1] = t;
        }
    return n;
}

static void seg_path(char *buf, size_t cap, const char *dir, uint64_t first)
{
    snprintf(buf, cap, "%s/%020llu.seg", dir, (unsigned long long)first);
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int64_t now_ms(void) { return tmtime_mono_ns() / TMTIME_NS_PER_MS; }

/* ---- reading back --------------------------------------------------------- */

typedef struct {
    const char *name;
    uint64_t from;
    uint64_t first, last; /* what it reads before its end; last < first: nothing */
} read_case_t;

static void test_append_read_back(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 3 * STD_REC; /* three a segment: cursors cross segments */
    spool_t *s = open_ok(&o);
    append_std(s, 1, 20);
    assert_int_equal(spool_bytes(s), 20 * STD_REC);
    assert_int_equal(spool_segments(s), 7);
    assert_int_equal(spool_oldest_seq(s), 1);

    static const read_case_t cases[] = {
        { "from 0 is from 1", 0, 1, 20 },
        { "from 1", 1, 1, 20 },
        { "from the middle of a segment", 8, 8, 20 },
        { "from a segment's first", 10, 10, 20 },
        { "from a segment's last", 12, 12, 20 },
        { "from the last", 20, 20, 20 },
        { "from just beyond the end", 21, 1, 0 },
        { "from far beyond the end", 1000, 1, 0 },
        { "from UINT64_MAX", UINT64_MAX, 1, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        spool_cursor_t *c = cur_ok(s, cases[i].from);
        if (cases[i].last >= cases[i].first)
            expect_std(c, cases[i].first, cases[i].last);
        expect_rc(c, 0);
        expect_rc(c, 0); /* the end stays the end */
        close_cur(&c);
    }

    /* cursors at their end read what is appended after they got there, also
     * across a roll; one beyond the end is at the end (the next seq) */
    spool_cursor_t *at_end = cur_ok(s, 1);
    expect_std(at_end, 1, 20);
    expect_rc(at_end, 0);
    spool_cursor_t *beyond = cur_ok(s, 500);
    expect_rc(beyond, 0);
    spool_cursor_t *next = cur_ok(s, 21);
    append_std(s, 21, 21); /* the active segment (19..21) fills up */
    expect_std(at_end, 21, 21);
    expect_rc(at_end, 0);
    append_std(s, 22, 26); /* rolls twice */
    assert_int_equal(spool_segments(s), 9);
    expect_std(at_end, 22, 26);
    expect_rc(at_end, 0);
    expect_std(beyond, 21, 26);
    expect_rc(beyond, 0);
    expect_std(next, 21, 26);
    expect_rc(next, 0);
    close_cur(&at_end);
    close_cur(&beyond);
    close_cur(&next);
}

static void test_sparse_index(void **state)
{
    (void)state;
    /* 2000 records of about 1 KiB in one segment: the index has a point
     * every 256 KiB, so most cursors start between two points */
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 64 << 20;
    spool_t *s = open_ok(&o);
    for (uint64_t q = 1; q <= 2000; q++)
        append_ok(s, q, "metric", 1000 + q % 50);
    static const uint64_t froms[] = { 1, 2, 255, 256, 257, 258, 1000, 1023, 1024, 1999, 2000 };
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < ARRAY_LEN(froms); i++) {
            spool_cursor_t *c = cur_ok(s, froms[i]);
            for (uint64_t q = froms[i]; q < froms[i] + 3 && q <= 2000; q++)
                expect_msg(c, q, "metric", 1000 + q % 50);
            close_cur(&c);
        }
        /* again once the big segment is closed, reopened and not the last:
         * its index is built on demand */
        close_spool(&s);
        o.segment_bytes = 1024;
        s = open_ok(&o);
        if (round == 0) {
            assert_int_equal(spool_last_seq(s), 2000);
            append_ok(s, 2001, "metric", 10);
        }
        assert_int_equal(spool_segments(s), 2);
    }
}

/* ---- seq continuity and reopening ------------------------------------------ */

typedef struct {
    uint64_t seq;
    int rc; /* 0, or -1 with EINVAL */
} seq_case_t;

static void test_seq_continuity(void **state)
{
    (void)state;
    static const seq_case_t cases[] = {
        { 1, 0 },  { 1, -1 }, { 3, -1 }, { 0, -1 }, { 2, 0 },  { 2, -1 },
        { 4, -1 }, { UINT64_MAX, -1 }, { 3, 0 }, { 4, 0 },
    };
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    spool_t *s = open_ok(&o);
    uint64_t last = 0, bytes = 0;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        unsigned char env[STD_LEN];
        fill_env(env, sizeof env, cases[i].seq);
        errno = 0;
        int rc = append_flush(s, cases[i].seq, STD_TOPIC, env, sizeof env);
        if (rc != cases[i].rc)
            fail_msg("case %zu: append %llu after %llu: %d, want %d", i,
                     (unsigned long long)cases[i].seq, (unsigned long long)last, rc,
                     cases[i].rc);
        if (rc == 0) {
            last = cases[i].seq;
            bytes += STD_REC;
        } else {
            assert_int_equal(errno, EINVAL);
        }
        /* a refused append leaves no trace */
        assert_int_equal(spool_last_seq(s), last);
        assert_int_equal(spool_bytes(s), bytes);
    }
    spool_cursor_t *c = cur_ok(s, 1);
    expect_std(c, 1, 4);
    expect_rc(c, 0);
    close_cur(&c);

    /* an empty spool takes any first seq (a publisher that starts elsewhere) */
    static const uint64_t firsts[] = { 7, 1000000, UINT64_MAX - 2 };
    for (size_t i = 0; i < ARRAY_LEN(firsts); i++) {
        spool_opts_t o2 = opts(fresh_dir(dir, sizeof dir));
        spool_t *e = open_ok(&o2);
        append_std(e, firsts[i], firsts[i] + 1);
        assert_int_equal(spool_oldest_seq(e), firsts[i]);
        c = cur_ok(e, firsts[i]);
        expect_std(c, firsts[i], firsts[i] + 1);
        close_cur(&c);
        close_spool(&e);
        e = open_ok(&o2);
        assert_int_equal(spool_oldest_seq(e), firsts[i]);
        assert_int_equal(spool_last_seq(e), firsts[i] + 1);
        close_spool(&e);
    }
}

static void test_reopen_continues(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 3 * STD_REC;
    o.max_bytes = 9 * STD_REC;
    static const struct {
        uint64_t append_to; /* appended in this round */
        uint64_t oldest;    /* after the round's tick */
        size_t segments;
    } rounds[] = {
        { 7, 1, 3 },   /* 1-3 4-6 7 */
        { 10, 4, 3 },  /* 1-3 deleted at 10 */
        { 11, 4, 3 },  /* 4-6 7-9 10-11 */
        { 30, 22, 3 },
    };
    uint64_t last = 0;
    for (size_t i = 0; i < ARRAY_LEN(rounds); i++) {
        spool_t *s = open_ok(&o);
        assert_int_equal(spool_last_seq(s), last);
        assert_int_equal(spool_repaired(s), 0);
        /* it continues: the next seq, nothing else */
        if (last) {
            errno = 0;
            assert_int_equal(spool_append(s, last, STD_TOPIC, "x", 1), -1);
            assert_int_equal(errno, EINVAL);
            assert_int_equal(spool_append(s, last + 2, STD_TOPIC, "x", 1), -1);
        }
        append_std(s, last + 1, rounds[i].append_to);
        last = rounds[i].append_to;
        assert_int_equal(spool_tick(s, now_ms()), 0);
        assert_int_equal(spool_oldest_seq(s), rounds[i].oldest);
        assert_int_equal(spool_segments(s), rounds[i].segments);
        uint64_t bytes = spool_bytes(s);
        close_spool(&s);

        s = open_ok(&o);
        if (spool_last_seq(s) != last || spool_oldest_seq(s) != rounds[i].oldest)
            fail_msg("round %zu reopened: last %llu oldest %llu, want %llu %llu", i,
                     (unsigned long long)spool_last_seq(s),
                     (unsigned long long)spool_oldest_seq(s), (unsigned long long)last,
                     (unsigned long long)rounds[i].oldest);
        assert_int_equal(spool_segments(s), rounds[i].segments);
        assert_int_equal(spool_bytes(s), bytes);
        spool_cursor_t *c = cur_ok(s, rounds[i].oldest);
        expect_std(c, rounds[i].oldest, last);
        expect_rc(c, 0);
        close_cur(&c);
        close_spool(&s);
    }
}

/* ---- repair ------------------------------------------------------------------ */

/* Builds a spool of n standard records, three a segment, and closes it.
 * Returns the path of the last segment in seg. */
static void build_closed(const char *dir, uint64_t n, char *seg, size_t cap)
{
    spool_opts_t o = opts(dir);
    o.segment_bytes = 3 * STD_REC;
    spool_t *s = open_ok(&o);
    append_std(s, 1, n);
    assert_int_equal(spool_bytes(s), n * STD_REC);
    close_spool(&s);
    seg_path(seg, cap, dir, (n - 1) / 3 * 3 + 1);
}

static void append_bytes(const char *path, const unsigned char *b, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, n), (ssize_t)n);
    close(fd);
}

/* Opens the damaged spool and checks it was cut to seq want_last with
 * want_repaired bytes gone, then that it goes on: two appends, read back
 * from 1, and a clean reopen. */
static void check_repaired(const char *dir, const char *what, uint64_t want_last,
                           uint64_t want_repaired, size_t want_segments)
{
    spool_opts_t o = opts(dir);
    o.segment_bytes = 3 * STD_REC;
    spool_t *s = open_ok(&o);
    if (spool_last_seq(s) != want_last || spool_repaired(s) != want_repaired ||
        spool_segments(s) != want_segments)
        fail_msg("%s: last %llu repaired %llu segments %zu; want %llu %llu %zu", what,
                 (unsigned long long)spool_last_seq(s), (unsigned long long)spool_repaired(s),
                 spool_segments(s), (unsigned long long)want_last,
                 (unsigned long long)want_repaired, want_segments);
    assert_int_equal(spool_bytes(s), want_last * STD_REC);
    assert_int_equal(spool_oldest_seq(s), want_last ? 1 : 0); /* 0: empty */
    /* what is left reads to its end, and the cursor follows the appends */
    spool_cursor_t *c = cur_ok(s, 1);
    expect_std(c, 1, want_last);
    expect_rc(c, 0);
    spool_cursor_t *end = cur_ok(s, want_last + 1);
    expect_rc(end, 0);
    append_std(s, want_last + 1, want_last + 2);
    expect_std(c, want_last + 1, want_last + 2);
    expect_rc(c, 0);
    expect_std(end, want_last + 1, want_last + 2);
    close_cur(&end);
    close_cur(&c);
    c = cur_ok(s, 1);
    expect_std(c, 1, want_last + 2);
    expect_rc(c, 0);
    close_cur(&c);
    close_spool(&s);
    s = open_ok(&o);
    if (spool_repaired(s) != 0 || spool_last_seq(s) != want_last + 2)
        fail_msg("%s: reopened after repair: repaired %llu last %llu", what,
                 (unsigned long long)spool_repaired(s), (unsigned long long)spool_last_seq(s));
    close_spool(&s);
}

static void test_torn_tail(void **state)
{
    (void)state;
    /* n records, three a segment: 8 leaves two in the last segment, 7 one
     * (cutting that one empties the segment, which then goes), 1 a single
     * segment (which stays, empty: the spool is empty) */
    static const struct {
        uint64_t n;
        size_t segments;       /* before the cut */
        size_t segments_after; /* when the whole last record goes */
    } layouts[] = { { 8, 3, 3 }, { 7, 3, 2 }, { 1, 1, 1 } };
    static const size_t garbage[] = { 0, 1, 13, STD_REC + 5 };
    unsigned char junk[STD_REC + 5];
    memset(junk, 0xa5, sizeof junk);
    for (size_t l = 0; l < ARRAY_LEN(layouts); l++) {
        for (size_t g = 0; g < ARRAY_LEN(garbage); g++) {
            /* keep = bytes of the last record left: 0 (cut at its start) to
             * all of it (only the garbage is torn) */
            for (size_t keep = 0; keep <= STD_REC; keep++) {
                if (keep == STD_REC && garbage[g] == 0)
                    continue; /* nothing torn */
                char dir[128], seg[256], what[128];
                fresh_dir(dir, sizeof dir);
                build_closed(dir, layouts[l].n, seg, sizeof seg);
                off_t size = file_size(seg);
                assert_int_equal(truncate(seg, size - STD_REC + (off_t)keep), 0);
                append_bytes(seg, junk, garbage[g]);
                snprintf(what, sizeof what, "%llu records, %zu of the last kept, %zu garbage",
                         (unsigned long long)layouts[l].n, keep, garbage[g]);
                bool whole = keep == STD_REC;
                bool empty = !whole && layouts[l].segments_after < layouts[l].segments;
                check_repaired(dir, what, whole ? layouts[l].n : layouts[l].n - 1,
                               keep % STD_REC + garbage[g],
                               empty ? layouts[l].segments_after : layouts[l].segments);
                rm_rf(dir);
            }
        }
    }
}

static void test_crc_damage(void **state)
{
    (void)state;
    /* a byte flipped in a record of the last segment: the spool is cut at
     * that record. Offsets into the record: the header fields, the topic, the
     * envelope, the CRC. */
    static const struct {
        const char *what;
        int record;  /* counted back from the last: 0 the last */
        size_t byte; /* inside that record */
    } cases[] = {
        { "magic", 0, 0 },          { "total", 0, 5 },        { "seq", 0, 9 },
        { "seq high byte", 0, 15 }, { "topic length", 0, 16 }, { "padding", 0, 17 },
        { "envelope length", 0, 21 }, { "topic", 0, 26 },     { "envelope", 0, 60 },
        { "last envelope byte", 0, 95 }, { "crc", 0, 97 },
        { "the middle record's envelope", 1, 50 },
        { "the first record of the segment", 2, 40 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char dir[128], seg[256];
        fresh_dir(dir, sizeof dir);
        build_closed(dir, 9, seg, sizeof seg); /* 1-3 4-6 7-9 */
        off_t at = file_size(seg) - (off_t)(cases[i].record + 1) * STD_REC + (off_t)cases[i].byte;
        int fd = open(seg, O_RDWR);
        assert_true(fd >= 0);
        unsigned char b;
        assert_int_equal(pread(fd, &b, 1, at), 1);
        b ^= 0x40;
        assert_int_equal(pwrite(fd, &b, 1, at), 1);
        close(fd);
        /* the whole segment cut: it goes, and the previous one is the last */
        size_t segments = cases[i].record == 2 ? 2 : 3;
        check_repaired(dir, cases[i].what, 9 - (uint64_t)cases[i].record - 1,
                       (uint64_t)(cases[i].record + 1) * STD_REC, segments);
        rm_rf(dir);
    }

    /* damage in a closed segment is not looked for at open; a cursor stops
     * there with -1 */
    char dir[128], seg[256];
    fresh_dir(dir, sizeof dir);
    build_closed(dir, 9, seg, sizeof seg);
    seg_path(seg, sizeof seg, dir, 4);
    int fd = open(seg, O_RDWR);
    assert_true(fd >= 0);
    unsigned char b;
    assert_int_equal(pread(fd, &b, 1, STD_REC + 50), 1); /* seq 5's envelope */
    b ^= 0x01;
    assert_int_equal(pwrite(fd, &b, 1, STD_REC + 50), 1);
    close(fd);
    spool_opts_t o = opts(dir);
    spool_t *s = open_ok(&o);
    assert_int_equal(spool_repaired(s), 0);
    assert_int_equal(spool_last_seq(s), 9);
    spool_cursor_t *c = cur_ok(s, 1);
    expect_std(c, 1, 4);
    expect_rc(c, -1);
    close_cur(&c);
    c = cur_ok(s, 6); /* past it, the segment reads on */
    expect_std(c, 6, 9);
    expect_rc(c, 0);
    close_cur(&c);
}

/* Appends with the file size limit at limit bytes (a full disk, as far as
 * write is concerned); returns what spool_append returned, errno kept. */
static int append_limited(spool_t *s, uint64_t seq, rlim_t limit)
{
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = limit;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    unsigned char env[STD_LEN];
    fill_env(env, sizeof env, seq);
    errno = 0;
    int rc = append_flush(s, seq, STD_TOPIC, env, sizeof env);
    int saved = errno;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    errno = saved;
    return rc;
}

static void test_failed_write(void **state)
{
    (void)state;
    /* a write cut short leaves no partial record, in the active segment or
     * in one just rolled to (which stays, empty); readers and the next
     * append carry on */
    static const struct {
        const char *what;
        int64_t segment_bytes;
        rlim_t limit;    /* bytes a file may have during the failing append */
        size_t segments; /* after it */
    } cases[] = {
        { "in the active segment", 1 << 20, 2 * STD_REC + 50, 1 },
        { "in a new segment", 2 * STD_REC, 50, 2 },
        { "in a new segment, nothing written", 2 * STD_REC, 0, 2 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char dir[128];
        spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
        o.segment_bytes = cases[i].segment_bytes;
        o.fsync_ms = 0;
        spool_t *s = open_ok(&o);
        append_std(s, 1, 2);
        spool_cursor_t *c = cur_ok(s, 1), *end = cur_ok(s, 3);
        if (append_limited(s, 3, cases[i].limit) != -1)
            fail_msg("%s: the append did not fail", cases[i].what);
        assert_true(errno != 0);
        assert_int_equal(spool_last_seq(s), 2);
        assert_int_equal(spool_bytes(s), 2 * STD_REC);
        assert_int_equal(spool_segments(s), cases[i].segments);
        expect_std(c, 1, 2);
        expect_rc(c, 0);
        expect_rc(end, 0);
        spool_cursor_t *late = cur_ok(s, 3);
        expect_rc(late, 0);
        append_std(s, 3, 4);
        expect_std(c, 3, 4);
        expect_std(end, 3, 4);
        expect_std(late, 3, 4);
        close_cur(&late);
        close_cur(&end);
        close_cur(&c);
        close_spool(&s);
        s = open_ok(&o);
        assert_int_equal(spool_repaired(s), 0);
        assert_int_equal(spool_last_seq(s), 4);
        c = cur_ok(s, 1);
        expect_std(c, 1, 4);
        expect_rc(c, 0);
        close_cur(&c);
        close_spool(&s);
    }
}

/* ---- rolling --------------------------------------------------------------- */

static void test_roll_by_size(void **state)
{
    (void)state;
    static const struct {
        int64_t segment_bytes;
        size_t segments;     /* for 9 standard records */
        uint64_t firsts[10]; /* the segment files */
    } cases[] = {
        { 1 << 20, 1, { 1 } },
        { 3 * STD_REC, 3, { 1, 4, 7 } },
        { 3 * STD_REC - 1, 5, { 1, 3, 5, 7, 9 } },
        { STD_REC, 9, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } },
        { 1, 9, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } }, /* a record larger than a segment: alone */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char dir[128];
        spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
        o.segment_bytes = cases[i].segment_bytes;
        spool_t *s = open_ok(&o);
        append_std(s, 1, 9);
        assert_int_equal(spool_segments(s), cases[i].segments);
        assert_int_equal(spool_bytes(s), 9 * STD_REC);
        uint64_t firsts[16];
        size_t n = seg_files(dir, firsts, ARRAY_LEN(firsts));
        assert_int_equal(n, cases[i].segments);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(firsts[k], cases[i].firsts[k]);
        spool_cursor_t *c = cur_ok(s, 1);
        expect_std(c, 1, 9);
        expect_rc(c, 0);
        close_cur(&c);
        close_spool(&s);
        s = open_ok(&o); /* and it reads the same from disk */
        assert_int_equal(spool_segments(s), cases[i].segments);
        c = cur_ok(s, 2);
        expect_std(c, 2, 9);
        close_cur(&c);
        close_spool(&s);
    }
}

static void test_roll_by_age(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_age_ms = 40;
    spool_t *s = open_ok(&o);
    /* steps: sleep, then append; segments after */
    static const struct {
        int sleep_ms;
        uint64_t seq;
        size_t segments;
    } steps[] = {
        { 0, 1, 1 }, { 0, 2, 1 }, { 60, 3, 2 }, { 0, 4, 2 }, { 60, 5, 3 }, { 60, 6, 4 },
    };
    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        sleep_ms(steps[i].sleep_ms);
        append_std(s, steps[i].seq, steps[i].seq);
        assert_int_equal(spool_segments(s), steps[i].segments);
    }
    uint64_t firsts[8];
    assert_int_equal(seg_files(dir, firsts, 8), 4);
    assert_int_equal(firsts[1], 3);
    assert_int_equal(firsts[2], 5);
    assert_int_equal(firsts[3], 6);
    /* an idle segment rolls by age on a tick too (so retention can take it):
     * a new, empty one starts at the next seq */
    sleep_ms(60);
    assert_int_equal(spool_tick(s, now_ms()), 0);
    assert_int_equal(spool_segments(s), 5);
    assert_int_equal(spool_last_seq(s), 6);
    assert_int_equal(seg_files(dir, firsts, 8), 5);
    assert_int_equal(firsts[4], 7);
    spool_cursor_t *c = cur_ok(s, 1);
    expect_std(c, 1, 6);
    expect_rc(c, 0);
    close_cur(&c);
}

/* ---- retention --------------------------------------------------------------- */

static void test_retention_by_size(void **state)
{
    (void)state;
    /* 12 records, three a segment: 1-3 4-6 7-9 10-12 */
    static const struct {
        int64_t max_bytes;
        uint64_t oldest;
        size_t segments;
    } cases[] = {
        { 0, 1, 4 },                  /* no cap */
        { 12 * STD_REC, 1, 4 },       /* at the cap */
        { 12 * STD_REC - 1, 4, 3 },   /* one byte over: the oldest goes */
        { 9 * STD_REC, 4, 3 },
        { 6 * STD_REC, 7, 2 },
        { 3 * STD_REC, 10, 1 },
        { 1, 10, 1 },                 /* never the active one */
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char dir[128];
        spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
        o.segment_bytes = 3 * STD_REC;
        o.max_bytes = cases[i].max_bytes;
        spool_t *s = open_ok(&o);
        append_std(s, 1, 12);
        assert_int_equal(spool_segments(s), 4); /* only a tick deletes */
        assert_int_equal(spool_tick(s, now_ms()), 0);
        if (spool_oldest_seq(s) != cases[i].oldest || spool_segments(s) != cases[i].segments)
            fail_msg("max_bytes %lld: oldest %llu segments %zu, want %llu %zu",
                     (long long)cases[i].max_bytes, (unsigned long long)spool_oldest_seq(s),
                     spool_segments(s), (unsigned long long)cases[i].oldest, cases[i].segments);
        assert_int_equal(spool_bytes(s), (13 - cases[i].oldest) * STD_REC);
        assert_int_equal(spool_last_seq(s), 12);
        uint64_t firsts[8];
        assert_int_equal(seg_files(dir, firsts, 8), cases[i].segments);
        assert_int_equal(firsts[0], cases[i].oldest);
        spool_cursor_t *c = cur_ok(s, cases[i].oldest);
        expect_std(c, cases[i].oldest, 12);
        expect_rc(c, 0);
        close_cur(&c);
        /* appending goes on; the next tick holds to the cap again */
        append_std(s, 13, 15);
        assert_int_equal(spool_tick(s, now_ms()), 0);
        assert_true(cases[i].max_bytes == 0 || spool_segments(s) == 1 ||
                    spool_bytes(s) <= (uint64_t)cases[i].max_bytes);
        close_spool(&s);
    }
}

static void test_retention_by_age(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 3 * STD_REC;
    o.max_age_ms = 50;
    spool_t *s = open_ok(&o);
    append_std(s, 1, 7); /* 1-3 4-6 7 */
    assert_int_equal(spool_tick(s, now_ms()), 0);
    assert_int_equal(spool_segments(s), 3); /* young */
    sleep_ms(80);
    append_std(s, 8, 8); /* the active segment is written again: young */
    assert_int_equal(spool_tick(s, now_ms()), 0);
    assert_int_equal(spool_segments(s), 1);
    assert_int_equal(spool_oldest_seq(s), 7);
    assert_int_equal(spool_bytes(s), 2 * STD_REC);
    /* everything old: the active segment stays all the same */
    append_std(s, 9, 12); /* 7-9 10-12 */
    sleep_ms(80);
    assert_int_equal(spool_tick(s, now_ms()), 0);
    assert_int_equal(spool_segments(s), 1);
    assert_int_equal(spool_oldest_seq(s), 10);
    assert_int_equal(spool_last_seq(s), 12);
    uint64_t firsts[8];
    assert_int_equal(seg_files(dir, firsts, 8), 1);
    assert_int_equal(firsts[0], 10);
    uint64_t gone = 0;
    assert_null(spool_cursor_open(s, 9, &gone));
    assert_int_equal(gone, 10);
    spool_cursor_t *c = cur_ok(s, 10);
    expect_std(c, 10, 12);
    expect_rc(c, 0);
    close_cur(&c);
}

static void test_cursor_outlives_its_segment(void **state)
{
    (void)state;
    /* 1-3 4-6 7-9 10-12; a cursor opened at from has read some messages
     * when retention deletes the oldest segments; it reads its segment to
     * the end and goes on when the next one is there */
    static const struct {
        const char *what;
        uint64_t from;
        uint64_t read_before; /* messages read before the tick */
        int64_t max_bytes;    /* 9 recs: 1 segment deleted, 6: 2, 3: 3 */
        uint64_t reads_to;    /* the last seq it reads */
        int end;              /* then: 0 (the end) or -1 (gone) */
    } cases[] = {
        { "its segment deleted, the next kept", 2, 0, 9 * STD_REC, 12, 0 },
        { "read partly, its segment deleted", 2, 1, 9 * STD_REC, 12, 0 },
        { "its segment and the next deleted", 2, 0, 6 * STD_REC, 3, -1 },
        { "read partly, three deleted", 1, 2, 3 * STD_REC, 3, -1 },
        { "at its segment's end, the next deleted", 1, 3, 6 * STD_REC, 3, -1 },
        { "in the second, two deleted", 5, 0, 6 * STD_REC, 12, 0 },
        { "in the second, three deleted", 5, 1, 3 * STD_REC, 6, -1 },
        { "in the active, all others deleted", 11, 0, 1, 12, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char dir[128];
        spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
        o.segment_bytes = 3 * STD_REC;
        o.max_bytes = cases[i].max_bytes;
        spool_t *s = open_ok(&o);
        append_std(s, 1, 12);
        spool_cursor_t *c = cur_ok(s, cases[i].from);
        uint64_t q = cases[i].from;
        for (; q < cases[i].from + cases[i].read_before; q++)
            expect_msg(c, q, STD_TOPIC, STD_LEN);
        assert_int_equal(spool_tick(s, now_ms()), 0);
        for (; q <= cases[i].reads_to; q++)
            expect_msg(c, q, STD_TOPIC, STD_LEN);
        uint64_t seq = 0;
        char t[65];
        mbuf_t env = { 0 };
        int rc = spool_cursor_next(c, &seq, t, &env);
        mbuf_free(&env);
        if (rc != cases[i].end)
            fail_msg("%s: after %llu read %d, want %d", cases[i].what,
                     (unsigned long long)cases[i].reads_to, rc, cases[i].end);
        if (rc == 0) { /* it still follows the appends */
            append_std(s, 13, 13);
            expect_std(c, 13, 13);
        }
        close_cur(&c);
        close_spool(&s);
    }
}

static void test_cursor_gone(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 3 * STD_REC;
    o.max_bytes = 6 * STD_REC;
    spool_t *s = open_ok(&o);
    append_std(s, 1, 12);
    assert_int_equal(spool_tick(s, now_ms()), 0);
    assert_int_equal(spool_oldest_seq(s), 7);
    static const struct {
        uint64_t from;
        uint64_t gone;  /* non-zero: NULL with this */
        uint64_t first; /* else: it reads from here (13: at the end) */
    } cases[] = {
        { 0, 7, 0 }, { 1, 7, 0 }, { 4, 7, 0 }, { 6, 7, 0 },
        { 7, 0, 7 }, { 9, 0, 9 }, { 12, 0, 12 }, { 13, 0, 13 }, { 99, 0, 13 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        uint64_t gone = 77;
        spool_cursor_t *c = keep_cur(spool_cursor_open(s, cases[i].from, &gone));
        if (cases[i].gone) {
            if (c || gone != cases[i].gone)
                fail_msg("from %llu: cursor %p gone %llu, want NULL and %llu",
                         (unsigned long long)cases[i].from, (void *)c, (unsigned long long)gone,
                         (unsigned long long)cases[i].gone);
            continue;
        }
        assert_non_null(c);
        assert_int_equal(gone, 0);
        if (cases[i].first <= 12)
            expect_std(c, cases[i].first, 12);
        expect_rc(c, 0);
        close_cur(&c);
    }
}

/* ---- fsync, empty spools, limits ------------------------------------------------ */

static void test_fsync_modes(void **state)
{
    (void)state;
    static const int64_t modes[] = { 0, 1, 20, -1 };
    for (size_t i = 0; i < ARRAY_LEN(modes); i++) {
        char dir[128];
        spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
        o.segment_bytes = 5 * STD_REC;
        o.fsync_ms = modes[i];
        spool_t *s = open_ok(&o);
        int64_t t = now_ms();
        for (uint64_t q = 1; q <= 30; q++) {
            append_std(s, q, q);
            if (q % 4 == 0) /* ticks before, at and after the interval */
                assert_int_equal(spool_tick(s, t + (int64_t)q), 0);
        }
        assert_int_equal(spool_tick(s, t + 1000), 0);
        assert_int_equal(spool_tick(s, t + 1000), 0);
        assert_int_equal(spool_sync(s), 0);
        assert_int_equal(spool_sync(s), 0);
        close_spool(&s);
        s = open_ok(&o);
        assert_int_equal(spool_last_seq(s), 30);
        assert_int_equal(spool_repaired(s), 0);
        assert_int_equal(spool_segments(s), 6);
        spool_cursor_t *c = cur_ok(s, 1);
        expect_std(c, 1, 30);
        expect_rc(c, 0);
        close_cur(&c);
        close_spool(&s);
    }
}

static void test_empty_spool(void **state)
{
    (void)state;
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    for (int round = 0; round < 2; round++) { /* new, then reopened while still empty */
        spool_t *s = open_ok(&o);
        assert_int_equal(spool_last_seq(s), 0);
        assert_int_equal(spool_oldest_seq(s), 0);
        assert_int_equal(spool_bytes(s), 0);
        assert_int_equal(spool_segments(s), 0);
        assert_int_equal(spool_repaired(s), 0);
        assert_int_equal(spool_tick(s, now_ms()), 0);
        assert_int_equal(spool_sync(s), 0);
        close_spool(&s);
    }
    spool_t *s = open_ok(&o);
    spool_cursor_t *c0 = cur_ok(s, 0), *c1 = cur_ok(s, 1);
    expect_rc(c0, 0);
    expect_rc(c1, 0);
    append_std(s, 1, 3);
    expect_std(c0, 1, 3);
    expect_std(c1, 1, 3);
    expect_rc(c0, 0);
    append_std(s, 4, 4);
    expect_std(c0, 4, 4);
    expect_std(c1, 4, 4);
    expect_rc(c1, 0);
    close_cur(&c0);
    close_cur(&c1);

    /* a directory that is not there yet, several levels deep */
    char deep[256];
    snprintf(deep, sizeof deep, "%s/a/b/c", fresh_dir(dir, sizeof dir));
    spool_opts_t od = opts(deep);
    spool_t *d = open_ok(&od);
    append_std(d, 1, 1);
    close_spool(&d);
}

static void test_open_dir(void **state)
{
    (void)state;
    /* files that are not segments are left alone */
    char dir[128], path[256];
    fresh_dir(dir, sizeof dir);
    char seg[256];
    build_closed(dir, 2, seg, sizeof seg);
    static const char *const others[] = {
        "notes.txt", "00000000000000000000.seg", "0000000000000000001.seg",
        "00000000000000000001.segx", "0000000000000000000x.seg", "00000000000000000009.seg~",
    };
    for (size_t i = 0; i < ARRAY_LEN(others); i++) {
        snprintf(path, sizeof path, "%s/%s", dir, others[i]);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs("not a segment", f);
        fclose(f);
    }
    spool_opts_t o = opts(dir);
    spool_t *s = open_ok(&o);
    assert_int_equal(spool_segments(s), 1);
    assert_int_equal(spool_last_seq(s), 2);
    assert_int_equal(spool_repaired(s), 0);
    close_spool(&s);

    /* a directory that cannot be one */
    static const char *const bad[] = { "notes.txt", "notes.txt/sub" };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        snprintf(path, sizeof path, "%s/%s", dir, bad[i]);
        spool_opts_t ob = opts(path);
        char err[256] = "";
        assert_null(spool_open(&ob, err, sizeof err));
        assert_non_null(strstr(err, path));
    }
}

static void test_topic_lengths(void **state)
{
    (void)state;
    char t64[65], t65[66];
    memset(t64, 'a', 64);
    t64[64] = '\0';
    memset(t65, 'b', 65);
    t65[65] = '\0';
    const struct {
        const char *topic;
        int rc;
    } cases[] = { { "x", 0 }, { t64, 0 }, { "", -1 }, { t65, -1 }, { "ev.ff", 0 } };
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    spool_t *s = open_ok(&o);
    uint64_t seq = 1;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        errno = 0;
        int rc = spool_append(s, seq, cases[i].topic, "env", 3);
        if (rc != cases[i].rc)
            fail_msg("topic of %zu bytes: %d, want %d", strlen(cases[i].topic), rc, cases[i].rc);
        if (rc == 0)
            seq++;
        else
            assert_int_equal(errno, EINVAL);
    }
    assert_int_equal(spool_last_seq(s), 0); /* appended, not yet written */
    assert_int_equal(spool_appended_seq(s), 3);
    assert_int_equal(spool_flush(s), 0);
    assert_int_equal(spool_last_seq(s), 3);
    for (int round = 0; round < 2; round++) {
        spool_cursor_t *c = cur_ok(s, 1);
        seq = 1;
        for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
            if (cases[i].rc != 0)
                continue;
            uint64_t got;
            char t[65];
            mbuf_t env = { 0 };
            assert_int_equal(spool_cursor_next(c, &got, t, &env), 1);
            assert_int_equal(got, seq++);
            assert_string_equal(t, cases[i].topic);
            assert_int_equal(env.len, 3);
            assert_memory_equal(env.data, "env", 3);
            mbuf_free(&env);
        }
        expect_rc(c, 0);
        close_cur(&c);
        close_spool(&s);
        s = open_ok(&o);
    }
}

static void test_envelope_sizes(void **state)
{
    (void)state;
    static const size_t lens[] = { 0, 1, 255, 256 * 1024 + 3, 1 << 20, (1 << 20) + 1, 7 };
    char dir[128];
    spool_opts_t o = opts(fresh_dir(dir, sizeof dir));
    o.segment_bytes = 512 * 1024; /* the big ones each get a segment of their own */
    spool_t *s = open_ok(&o);
    for (size_t i = 0; i < ARRAY_LEN(lens); i++)
        append_ok(s, i + 1, "roll.m", lens[i]);
    /* over the 64 MiB limit: refused before a byte is read */
    unsigned char one = 0;
    errno = 0;
    assert_int_equal(spool_append(s, ARRAY_LEN(lens) + 1, "roll.m", &one, (64u << 20) + 1), -1);
    assert_int_equal(errno, EINVAL);
    for (int round = 0; round < 2; round++) {
        for (size_t from = 1; from <= ARRAY_LEN(lens); from++) {
            spool_cursor_t *c = cur_ok(s, from);
            for (size_t i = from - 1; i < ARRAY_LEN(lens); i++)
                expect_msg(c, i + 1, "roll.m", lens[i]);
            expect_rc(c, 0);
            close_cur(&c);
        }
        close_spool(&s);
        s = open_ok(&o);
        assert_int_equal(spool_last_seq(s), ARRAY_LEN(lens));
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_append_read_back, close_all),
        cmocka_unit_test_teardown(test_sparse_index, close_all),
        cmocka_unit_test_teardown(test_seq_continuity, close_all),
        cmocka_unit_test_teardown(test_reopen_continues, close_all),
        cmocka_unit_test_teardown(test_torn_tail, close_all),
        cmocka_unit_test_teardown(test_crc_damage, close_all),
        cmocka_unit_test_teardown(test_failed_write, close_all),
        cmocka_unit_test_teardown(test_roll_by_size, close_all),
        cmocka_unit_test_teardown(test_roll_by_age, close_all),
        cmocka_unit_test_teardown(test_retention_by_size, close_all),
        cmocka_unit_test_teardown(test_retention_by_age, close_all),
        cmocka_unit_test_teardown(test_cursor_outlives_its_segment, close_all),
        cmocka_unit_test_teardown(test_cursor_gone, close_all),
        cmocka_unit_test_teardown(test_fsync_modes, close_all),
        cmocka_unit_test_teardown(test_empty_spool, close_all),
        cmocka_unit_test_teardown(test_open_dir, close_all),
        cmocka_unit_test_teardown(test_topic_lengths, close_all),
        cmocka_unit_test_teardown(test_envelope_sizes, close_all),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("spool", tests, root_up, root_down);
}

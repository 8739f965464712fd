/* log_test: tests of common/log: log_quote (escaping, truncation), the
 * key=value and JSON line formats (every JSON line is parsed with jansson),
 * level filtering, and the log_complain back-off. stderr is redirected to
 * a temporary file with dup2 to read back what was written. Run one test
 * alone with `log_test NAME`. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SEC 1000000000LL

/* ---- capturing stderr ---------------------------------------------------- */

static int g_saved = -1, g_fd = -1;
static char g_out[1 << 16];

static void capture_begin(void)
{
    char path[] = "/tmp/log_test_XXXXXX";
    g_fd = mkstemp(path);
    assert_true(g_fd >= 0);
    unlink(path);
    fflush(stderr);
    g_saved = dup(STDERR_FILENO);
    assert_true(g_saved >= 0);
    assert_int_equal(dup2(g_fd, STDERR_FILENO), STDERR_FILENO);
}

/* Everything written since the last call (or capture_begin), in g_out. */
static const char *captured(void)
{
    off_t end = lseek(g_fd, 0, SEEK_END);
    assert_true(end >= 0 && (size_t)end < sizeof g_out);
    assert_int_equal(pread(g_fd, g_out, (size_t)end, 0), end);
    g_out[end] = '\0';
    assert_int_equal(ftruncate(g_fd, 0), 0);
    lseek(g_fd, 0, SEEK_SET);
    return g_out;
}

static int capture_end(void **state)
{
    (void)state;
    if (g_fd >= 0 && g_saved >= 0) {
        /* what was not read back (a failing test's report) goes to the real stderr */
        char buf[4096];
        ssize_t n;
        lseek(g_fd, 0, SEEK_SET);
        while ((n = read(g_fd, buf, sizeof buf)) > 0)
            (void)!write(g_saved, buf, (size_t)n);
    }
    if (g_saved >= 0) {
        dup2(g_saved, STDERR_FILENO);
        close(g_saved);
        g_saved = -1;
    }
    if (g_fd >= 0) {
        close(g_fd);
        g_fd = -1;
    }
    log_setup("tokmon", "local", LOG_FMT_KV, LOG_LVL_INFO);
    return 0;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* ---- log_quote ----------------------------------------------------------- */

typedef struct {
    const char *in;
    size_t len; /* 0: strlen */
    size_t cap;
    const char *want;
} quote_case_t;

static void test_quote_table(void **state)
{
    (void)state;
    static const quote_case_t cases[] = {
        { "", 0, 64, "\"\"" },
        { "abc", 0, 64, "\"abc\"" },
        { "a b=c", 0, 64, "\"a b=c\"" },
        { "say \"hi\"", 0, 64, "\"say \\\"hi\\\"\"" },
        { "C:\\dir", 0, 64, "\"C:\\\\dir\"" },
        { "a\nb\tc", 0, 64, "\"a\\nb\\tc\"" },
        { "\r", 0, 64, "\"\\x0d\"" },
        { "\x01\x1f\x7f\x80\xff", 0, 64, "\"\\x01\\x1f\\x7f\\x80\\xff\"" },
        { "a\0b", 3, 64, "\"a\\x00b\"" },
        { "\xc3\xa9t\xc3\xa9", 0, 64, "\"\\xc3\\xa9t\\xc3\\xa9\"" }, /* bytes, not characters */
        { "~ !#$%&'()*+,-./", 0, 64, "\"~ !#$%&'()*+,-./\"" },
        /* truncation: the cut keeps room for ..." and the NUL */
        { "abcdefghij", 0, 10, "\"abcd...\"" },
        { "abcdefghij", 0, 8, "\"ab...\"" },
        { "abcdefghij", 0, 13, "\"abcdefghij\"" }, /* exactly fits: 12 and the NUL */
        { "abcdefghij", 0, 12, "\"abcdef...\"" },
        { "abc", 0, 8, "\"abc\"" },                /* fits: not cut */
        { "abcdef", 0, 9, "\"abcdef\"" },
        { "abcdefg", 0, 9, "\"abc...\"" },
        { "\n\n\n\n\n", 0, 12, "\"\\n\\n\\n...\"" }, /* an escape is never cut in two */
        { "\xff\xff\xff", 0, 12, "\"\\xff...\"" },
        { "\xff\xff", 0, 11, "\"\\xff\\xff\"" },
        /* below 8 bytes nothing useful fits */
        { "abc", 0, 7, "" },
        { "", 0, 1, "" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const quote_case_t *c = &cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        char out[128];
        memset(out, 'X', sizeof out);
        char *r = log_quote(out, c->cap, c->in, len);
        assert_ptr_equal(r, out);
        if (strcmp(out, c->want) != 0)
            fail_msg("case %zu (cap %zu): [%s], want [%s]", i, c->cap, out, c->want);
        assert_int_equal(out[c->cap], 'X'); /* nothing written past cap */
    }
    char none = 'X';
    log_quote(&none, 0, "abc", 3); /* cap 0 writes nothing */
    assert_int_equal(none, 'X');
}

static void test_quote_every_cap(void **state)
{
    (void)state;
    const char in[] = "a\"b\\c\nd\te\x01\xff fin";
    size_t len = sizeof in - 1;
    char full[128];
    log_quote(full, sizeof full, in, len);
    size_t flen = strlen(full);
    /* where each byte's escape starts in the whole: a cut may only fall there */
    size_t start[64], o = 1;
    for (size_t i = 0; i < len; i++) {
        start[i] = o;
        unsigned char c = (unsigned char)in[i];
        o += (c == '"' || c == '\\' || c == '\n' || c == '\t') ? 2 : (c < 0x20 || c >= 0x7f) ? 4 : 1;
    }
    start[len] = o;
    assert_int_equal(o + 1, flen);
    for (size_t cap = 0; cap <= flen + 2; cap++) {
        char out[160];
        memset(out, 'X', sizeof out);
        log_quote(out, cap, in, len);
        if (cap == 0) {
            assert_int_equal(out[0], 'X');
            continue;
        }
        size_t n = strlen(out);
        if (n >= cap)
            fail_msg("cap %zu: %zu bytes", cap, n);
        assert_int_equal(out[cap], 'X');
        if (cap < 8) {
            assert_int_equal(n, 0);
            continue;
        }
        if (cap > flen) {
            assert_string_equal(out, full); /* fits whole */
            continue;
        }
        /* cut: a prefix of the whole up to an escape boundary, then ..." */
        if (n < 5 || strcmp(out + n - 4, "...\"") != 0)
            fail_msg("cap %zu: [%s] does not end with ...\"", cap, out);
        size_t body = n - 4, k = 0;
        while (k < len && start[k] < body)
            k++;
        if (memcmp(out, full, body) != 0 || start[k] != body)
            fail_msg("cap %zu: [%s] is not a clean cut of [%s]", cap, out, full);
        /* and the next escape would not have fitted with ..." and the NUL */
        if (k < len && start[k + 1] + 4 + 1 <= cap)
            fail_msg("cap %zu: [%s] cut more than it had to", cap, out);
    }
}

/* ---- lines --------------------------------------------------------------- */

static void test_kv_lines(void **state)
{
    (void)state;
    capture_begin();
    log_setup("tokmon-test", "unit", LOG_FMT_KV, LOG_LVL_INFO);
    char q[64];
    log_info("hello world", "k=%d q=%s", 5, log_quote(q, sizeof q, "a \"b\"", 5));
    const char *out = captured();
    assert_int_equal(count_lines(out), 1);
    assert_memory_equal(out, "ts=", 3);
    /* ts=2026-11-22T14:54:09.123Z */
    assert_int_equal(out[13], 'T');
    assert_int_equal(out[26], 'Z');
    assert_string_equal(out + 27, " level=info daemon=tokmon-test instance=unit msg=\"hello world\" "
                                  "k=5 q=\"a \\\"b\\\"\"\n");

    /* no fields: nothing after msg */
    log_warn("just this", NULL);
    out = captured();
    assert_string_equal(out + 27, " level=warn daemon=tokmon-test instance=unit msg=\"just this\"\n");
    /* the message is quoted, whatever it holds */
    log_error("two\nlines \"q\"", NULL);
    out = captured();
    assert_string_equal(out + 27,
                        " level=error daemon=tokmon-test instance=unit msg=\"two\\nlines \\\"q\\\"\"\n");

    /* levels */
    log_set_level(LOG_LVL_WARN);
    assert_false(log_enabled(LOG_LVL_INFO));
    assert_true(log_enabled(LOG_LVL_WARN));
    assert_true(log_enabled(LOG_LVL_ERROR));
    log_info("hidden", NULL);
    log_debug("hidden", "x=%d", 1);
    assert_string_equal(captured(), "");
    log_warn("shown", NULL);
    assert_int_equal(count_lines(captured()), 1);
    log_set_level(LOG_LVL_DEBUG);
    log_debug("now shown", NULL);
    assert_non_null(strstr(captured(), "level=debug"));
    assert_string_equal(log_level_name(LOG_LVL_ERROR), "error");
    assert_string_equal(log_level_name(LOG_LVL_DEBUG), "debug");
    assert_string_equal(log_level_name((log_level_t)9), "info");

    /* a long line is cut, and is still one line */
    static char big[10000];
    memset(big, 'v', sizeof big - 1);
    log_info("long", "big=%s", big);
    out = captured();
    assert_int_equal(count_lines(out), 1);
    assert_true(strlen(out) <= 4096);
    /* daemon and instance names are copied, and cut to fit */
    char name[100];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    log_setup(name, NULL, LOG_FMT_KV, LOG_LVL_INFO);
    name[0] = 'Z';
    log_info("m", NULL);
    out = captured();
    char want[100];
    memset(want, 'n', 63); /* 63 and the NUL */
    want[63] = '\0';
    char *d = strstr(out, " daemon=");
    assert_non_null(d);
    assert_memory_equal(d + 8, want, 63);
    assert_memory_equal(d + 8 + 63, " instance=local ", 16);
}

/* Parses each line of out as a JSON object; returns how many. */
static size_t parse_json_lines(const char *out, json_t **objs, size_t max)
{
    size_t n = 0;
    const char *p = out;
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* every line ends with a newline */
        json_error_t je;
        json_t *o = json_loadb(p, (size_t)(nl - p), JSON_REJECT_DUPLICATES, &je);
        if (!o)
            fail_msg("line %zu is not JSON (%s at %d): %.*s", n + 1, je.text, je.position,
                     (int)(nl - p), p);
        assert_true(json_is_object(o));
        assert_true(n < max);
        objs[n++] = o;
        p = nl + 1;
    }
    return n;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!v || !json_is_string(v))
        fail_msg("no string \"%s\"", key);
    return json_string_value(v);
}

static void test_json_lines(void **state)
{
    (void)state;
    capture_begin();
    log_setup("tokmon-test", "unit", LOG_FMT_JSON, LOG_LVL_DEBUG);
    char q1[128], q2[128], q3[128], q4[128];
    /* 1: plain */
    log_info("started", "port=%d addr=%s", 8125, "127.0.0.1:8125");
    /* 2: quoted values with every escape log_quote makes */
    log_warn("bad datagram", "from=%s data=%s", log_quote(q1, sizeof q1, "10.0.0.1:5", 10),
             log_quote(q2, sizeof q2, "a\"b\\c\nd\te\x01", 10));
    /* 3: UTF-8 survives; a byte that is not UTF-8 shows as the text \xNN */
    log_error("names", "user=%s raw=%s", log_quote(q3, sizeof q3, "Zo\xc3\xab \xe2\x82\xac", 8),
              log_quote(q4, sizeof q4, "x\xff\xc3y", 4));
    /* 4: a message with quotes, control bytes and invalid UTF-8 */
    log_debug("msg \"q\" \\ \x02 \xc3\x28 end", NULL);
    /* 5: a bare key, an empty value, a value that is just a quote */
    log_info("odd fields", "flag empty= x=\"\" n=-1.5");
    /* 6 and 7: too long for a line: cut, still valid JSON */
    static char big[6000];
    memset(big, 'v', sizeof big - 1);
    log_info("long value", "a=1 big=%s z=2", big);
    static char bigq[6000];
    char bq[5000];
    memset(bigq, '\n', sizeof bigq - 1); /* escapes all the way */
    log_info("long quoted", "big=%s", log_quote(bq, sizeof bq, bigq, sizeof bigq - 1));
    static char bigmsg[6000];
    for (size_t i = 0; i + 2 < sizeof bigmsg; i += 2) {
        bigmsg[i] = '\xc3'; /* é, é, ... : a cut must not split one */
        bigmsg[i + 1] = '\xa9';
    }
    /* 8 */
    log_info(bigmsg, "after=1");
    /* 9: through log_complain */
    log_complain_t c = { 0 };
    log_complain(&c, 1, LOG_LVL_WARN, "peer down", "peer=%s", "db");

    json_t *o[16];
    size_t n = parse_json_lines(captured(), o, 16);
    assert_int_equal(n, 9);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(jstr(o[i], "daemon"), "tokmon-test");
        assert_string_equal(jstr(o[i], "instance"), "unit");
        assert_int_equal(strlen(jstr(o[i], "ts")), 24);
    }
    assert_string_equal(jstr(o[0], "level"), "info");
    assert_string_equal(jstr(o[0], "msg"), "started");
    assert_string_equal(jstr(o[0], "port"), "8125");
    assert_string_equal(jstr(o[0], "addr"), "127.0.0.1:8125");

    assert_string_equal(jstr(o[1], "level"), "warn");
    assert_string_equal(jstr(o[1], "from"), "10.0.0.1:5");
    assert_string_equal(jstr(o[1], "data"), "a\"b\\c\nd\te\x01");

    assert_string_equal(jstr(o[2], "level"), "error");
    assert_string_equal(jstr(o[2], "user"), "Zo\xc3\xab \xe2\x82\xac");
    assert_string_equal(jstr(o[2], "raw"), "x\\xff\\xc3y");

    assert_string_equal(jstr(o[3], "level"), "debug");
    assert_string_equal(jstr(o[3], "msg"), "msg \"q\" \\ \x02 \\xc3( end");

    assert_string_equal(jstr(o[4], "flag"), "");
    assert_string_equal(jstr(o[4], "empty"), "");
    assert_string_equal(jstr(o[4], "x"), "");
    assert_string_equal(jstr(o[4], "n"), "-1.5");

    assert_string_equal(jstr(o[5], "a"), "1");
    const char *b = jstr(o[5], "big");
    assert_true(strlen(b) > 3000);
    assert_string_equal(b + strlen(b) - 3, "...");
    assert_null(json_object_get(o[5], "z")); /* no room left for it */

    const char *bq2 = jstr(o[6], "big");
    assert_true(strlen(bq2) > 500);
    for (size_t i = 0; i + 3 < strlen(bq2); i++)
        assert_int_equal(bq2[i], '\n');

    const char *m = jstr(o[7], "msg");
    assert_true(strlen(m) > 3000);
    assert_string_equal(m + strlen(m) - 3, "...");
    assert_int_equal((strlen(m) - 3) % 2, 0); /* whole characters only */

    assert_string_equal(jstr(o[8], "msg"), "peer down");
    assert_string_equal(jstr(o[8], "peer"), "db");
    assert_string_equal(jstr(o[8], "suppressed"), "0");
    for (size_t i = 0; i < n; i++)
        json_decref(o[i]);
}

/* ---- log_complain -------------------------------------------------------- */

static const char *suppressed_of(const char *line)
{
    const char *s = strstr(line, "suppressed=");
    assert_non_null(s);
    return s + 11;
}

static void test_complain_backoff(void **state)
{
    (void)state;
    capture_begin();
    log_setup("tokmon-test", "unit", LOG_FMT_KV, LOG_LVL_INFO);
    log_complain_t c = { 0 };
    const int64_t t0 = 1000 * SEC;

    /* the first occurrence is logged at once */
    assert_true(log_complain(&c, t0, LOG_LVL_WARN, "peer unreachable", "peer=%s", "db:5432"));
    const char *out = captured();
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "level=warn"));
    assert_non_null(strstr(out, "msg=\"peer unreachable\" peer=db:5432 suppressed=0\n"));
    assert_true(c.active);

    /* repeats within the interval (1 s) are counted, not logged */
    for (int i = 0; i < 3; i++)
        assert_false(log_complain(&c, t0 + SEC / 2, LOG_LVL_WARN, "peer unreachable", NULL));
    assert_false(log_complain(&c, t0 + SEC - 1, LOG_LVL_WARN, "peer unreachable", NULL));
    assert_string_equal(captured(), "");
    assert_int_equal(c.suppressed, 4);

    /* after it, the next one is logged with the count */
    assert_true(log_complain(&c, t0 + SEC, LOG_LVL_WARN, "peer unreachable", NULL));
    out = captured();
    assert_int_equal(count_lines(out), 1);
    assert_string_equal(suppressed_of(out), "4\n");
    assert_int_equal(c.suppressed, 0);

    /* the interval doubles with each line: 2 s, 4 s, ... up to 5 minutes */
    int64_t now = t0 + SEC;
    static const int64_t steps[] = { 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300 };
    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        assert_int_equal(c.interval_ns, steps[i] * SEC);
        assert_false(log_complain(&c, now + steps[i] * SEC - 1, LOG_LVL_WARN, "x", NULL));
        now += steps[i] * SEC;
        assert_true(log_complain(&c, now, LOG_LVL_WARN, "x", NULL));
        out = captured();
        assert_int_equal(count_lines(out), 1);
        assert_string_equal(suppressed_of(out), "1\n");
    }
    assert_int_equal(c.interval_ns, 300 * SEC);

    /* recovery: logged once at info with what was suppressed, then reset */
    assert_false(log_complain(&c, now + 1, LOG_LVL_WARN, "x", NULL));
    assert_false(log_complain(&c, now + 2, LOG_LVL_WARN, "x", NULL));
    log_release(&c, "peer back", "peer=%s", "db:5432");
    out = captured();
    assert_int_equal(count_lines(out), 1);
    assert_non_null(strstr(out, "level=info"));
    assert_non_null(strstr(out, "msg=\"peer back\" peer=db:5432 suppressed=2\n"));
    assert_false(c.active);
    assert_int_equal(c.interval_ns, 0);
    assert_int_equal(c.next_ns, 0);
    log_release(&c, "peer back", NULL); /* not active: nothing */
    assert_string_equal(captured(), "");

    /* and the next trouble starts over at 1 s */
    assert_true(log_complain(&c, now + 5, LOG_LVL_WARN, "again", NULL));
    assert_int_equal(c.interval_ns, SEC);
    assert_false(log_complain(&c, now + 5 + SEC - 1, LOG_LVL_WARN, "again", NULL));
    assert_true(log_complain(&c, now + 5 + SEC, LOG_LVL_WARN, "again", NULL));
    assert_int_equal(count_lines(captured()), 2);

    /* a level that is not logged writes nothing and drops its count */
    log_complain_t d = { 0 };
    log_set_level(LOG_LVL_ERROR);
    assert_false(log_complain(&d, t0, LOG_LVL_WARN, "quiet", NULL));
    assert_false(log_complain(&d, t0 + 1, LOG_LVL_WARN, "quiet", NULL));
    assert_int_equal(d.suppressed, 1);
    assert_false(log_complain(&d, t0 + 2 * SEC, LOG_LVL_WARN, "quiet", NULL));
    assert_int_equal(d.suppressed, 0);
    assert_true(d.active);
    assert_string_equal(captured(), "");
    log_release(&d, "quiet over", NULL); /* info is not logged either */
    assert_string_equal(captured(), "");
    log_set_level(LOG_LVL_INFO);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quote_table),
        cmocka_unit_test(test_quote_every_cap),
        cmocka_unit_test_teardown(test_kv_lines, capture_end),
        cmocka_unit_test_teardown(test_json_lines, capture_end),
        cmocka_unit_test_teardown(test_complain_backoff, capture_end),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}

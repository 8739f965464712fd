#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "stats.h"
#include "utf8.h"

#define LOG_LINE_MAX 4096
/* JSON lines stop adding text here, so that closing quotes and braces always
 * fit and every line stays one valid JSON object */
#define JSON_ROOM (LOG_LINE_MAX - 32)
#define COMPLAIN_FIRST_NS 1000000000LL
#define COMPLAIN_MAX_NS (300LL * 1000000000LL)

static struct {
    char daemon[64];
    char instance[64];
    log_format_t fmt;
    log_level_t level;
} g_log = { "tokmon", "local", LOG_FMT_KV, LOG_LVL_INFO };

static const char *const level_names[] = { "error", "warn", "info", "debug" };

const char *log_level_name(log_level_t level)
{
    return (unsigned)level < 4 ? level_names[level] : "info";
}

void log_setup(const char *daemon, const char *instance, log_format_t fmt, log_level_t level)
{
    snprintf(g_log.daemon, sizeof g_log.daemon, "%s", daemon ? daemon : "tokmon");
    snprintf(g_log.instance, sizeof g_log.instance, "%s", instance ? instance : "local");
    g_log.fmt = fmt;
    g_log.level = level;
}

void log_set_level(log_level_t level) { g_log.level = level; }

bool log_enabled(log_level_t level) { return level <= g_log.level; }

static size_t quoted_len(unsigned char c)
{
    if (c == '"' || c == '\\' || c == '\n' || c == '\t')
        return 2;
    return c < 0x20 || c >= 0x7f ? 4 : 1;
}

char *log_quote(char *out, size_t cap, const void *src, size_t len)
{
    const unsigned char *s = src;
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            out[0] = '\0';
        return out;
    }
    /* cut only what does not fit with its quotes and NUL */
    size_t whole = 2 + 1;
    for (size_t i = 0; i < len && whole <= cap; i++)
        whole += quoted_len(s[i]);
    const size_t keep = whole <= cap ? cap : cap - 3; /* else room for "..." */
    out[o++] = '"';
    size_t i;
    for (i = 0; i < len; i++) {
        char tmp[5];
        size_t n;
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            memcpy(tmp, "\\n", 2);
            n = 2;
        } else if (c == '\t') {
            memcpy(tmp, "\\t", 2);
            n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            n = 4;
        } else {
            tmp[0] = (char)c;
            n = 1;
        }
        if (o + n + 1 + 1 > keep) /* the closing quote and NUL */
            break;
        memcpy(out + o, tmp, n);
        o += n;
    }
    if (i < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

static size_t put(char *buf, size_t o, const char *s, size_t n)
{
    if (o >= LOG_LINE_MAX - 2)
        return o;
    if (n > LOG_LINE_MAX - 2 - o)
        n = LOG_LINE_MAX - 2 - o;
    memcpy(buf + o, s, n);
    return o + n;
}

/* Writes s[0..n) as a JSON string: valid UTF-8 as it is, any other byte as
 * the text \xNN (as log_quote() shows it). Stops, with "...", before
 * JSON_ROOM rather than cut an escape or a character in two. */
static size_t put_json_str(char *buf, size_t o, const char *s, size_t n)
{
    o = put(buf, o, "\"", 1);
    for (size_t i = 0; i < n;) {
        const unsigned char *c = (const unsigned char *)s + i;
        char tmp[8];
        const char *t = tmp;
        size_t k = 1, tl;
        if (*c == '"' || *c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*c;
            tl = 2;
        } else if (*c < 0x20 || *c == 0x7f) {
            tl = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", *c);
        } else if (*c < 0x80 || (k = utf8_seq(c, n - i)) > 0) {
            t = (const char *)c;
            tl = k;
        } else {
            k = 1;
            tl = (size_t)snprintf(tmp, sizeof tmp, "\\\\x%02x", *c);
        }
        if (o + tl > JSON_ROOM) {
            o = put(buf, o, "...", 3);
            break;
        }
        o = put(buf, o, t, tl);
        i += k;
    }
    return put(buf, o, "\"", 1);
}

/* Unquotes a logfmt value produced by log_quote() into a JSON string. */
static size_t put_json_from_logfmt(char *buf, size_t o, const char *v, size_t n)
{
    if (n < 2 || v[0] != '"')
        return put_json_str(buf, o, v, n);
    char tmp[LOG_LINE_MAX];
    size_t t = 0;
    for (size_t i = 1; i + 1 < n && t < sizeof tmp - 1; i++) {
        if (v[i] == '\\' && i + 2 < n) {
            char e = v[++i];
            if (e == 'n')
                tmp[t++] = '\n';
            else if (e == 't')
                tmp[t++] = '\t';
            else if (e == 'x' && i + 2 < n) {
                unsigned x = 0;
                sscanf(v + i + 1, "%2x", &x);
                tmp[t++] = (char)x;
                i += 2;
            } else
                tmp[t++] = e;
        } else {
            tmp[t++] = v[i];
        }
    }
    return put_json_str(buf, o, tmp, t);
}

static size_t kv_to_json(char *buf, size_t o, const char *kv)
{
    const char *p = kv;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p || o + 16 > JSON_ROOM) /* no room for another pair */
            break;
        const char *k = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        size_t klen = (size_t)(p - k);
        const char *v = p;
        size_t vlen = 0;
        if (*p == '=') {
            v = ++p;
            if (*p == '"') {
                p++;
                while (*p && *p != '"') {
                    if (*p == '\\' && p[1])
                        p++;
                    p++;
                }
                if (*p == '"')
                    p++;
            } else {
                while (*p && *p != ' ')
                    p++;
            }
            vlen = (size_t)(p - v);
        }
        o = put(buf, o, ",", 1);
        o = put_json_str(buf, o, k, klen);
        o = put(buf, o, ":", 1);
        o = put_json_from_logfmt(buf, o, v, vlen);
    }
    return o;
}

__attribute__((format(printf, 3, 0)))
static void vlog(log_level_t level, const char *msg, const char *kvfmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    char kv[LOG_LINE_MAX];
    char ts[40];
    struct timespec now;
    struct tm tmv;

    kv[0] = '\0';
    if (kvfmt)
        vsnprintf(kv, sizeof kv, kvfmt, ap);
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tmv);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tmv);
    snprintf(ts + tl, sizeof ts - tl, ".%03ldZ", now.tv_nsec / 1000000L);

    size_t o = 0;
    const char *lvl = log_level_name(level);
    if (g_log.fmt == LOG_FMT_JSON) {
        o = put(line, o, "{\"ts\":", 6);
        o = put_json_str(line, o, ts, strlen(ts));
        o = put(line, o, ",\"level\":", 9);
        o = put_json_str(line, o, lvl, strlen(lvl));
        o = put(line, o, ",\"daemon\":", 10);
        o = put_json_str(line, o, g_log.daemon, strlen(g_log.daemon));
        o = put(line, o, ",\"instance\":", 12);
        o = put_json_str(line, o, g_log.instance, strlen(g_log.instance));
        o = put(line, o, ",\"msg\":", 7);
        o = put_json_str(line, o, msg, strlen(msg));
        o = kv_to_json(line, o, kv);
        o = put(line, o, "}", 1);
    } else {
        char qmsg[512];
        int n = snprintf(line, sizeof line, "ts=%s level=%s daemon=%s instance=%s msg=%s", ts, lvl,
                         g_log.daemon, g_log.instance, log_quote(qmsg, sizeof qmsg, msg, strlen(msg)));
        o = n > 0 ? (size_t)n : 0;
        if (o > LOG_LINE_MAX - 2)
            o = LOG_LINE_MAX - 2;
        if (kv[0]) {
            o = put(line, o, " ", 1);
            o = put(line, o, kv, strlen(kv));
        }
    }
    line[o++] = '\n';
    (void)!write(STDERR_FILENO, line, o);
}

void log_msg(log_level_t level, const char *msg, const char *kvfmt, ...)
{
    if (!log_enabled(level))
        return;
    va_list ap;
    va_start(ap, kvfmt);
    vlog(level, msg, kvfmt, ap);
    va_end(ap);
}

/* One line with the caller's fields and how many occurrences it stands for. */
__attribute__((format(printf, 4, 0)))
static void log_suppressed(log_level_t level, const char *msg, uint64_t suppressed,
                           const char *kvfmt, va_list ap)
{
    char kv[LOG_LINE_MAX - 64];
    kv[0] = '\0';
    if (kvfmt)
        vsnprintf(kv, sizeof kv, kvfmt, ap);
    log_msg(level, msg, "%s%ssuppressed=%llu", kv, kv[0] ? " " : "",
            (unsigned long long)suppressed);
}

bool log_complain(log_complain_t *c, int64_t now_ns, log_level_t level, const char *msg,
                  const char *kvfmt, ...)
{
    c->active = true;
    if (c->next_ns != 0 && now_ns < c->next_ns) {
        c->suppressed++;
        return false;
    }
    c->interval_ns = c->interval_ns ? c->interval_ns * 2 : COMPLAIN_FIRST_NS;
    if (c->interval_ns > COMPLAIN_MAX_NS)
        c->interval_ns = COMPLAIN_MAX_NS;
    c->next_ns = now_ns + c->interval_ns;
    if (!log_enabled(level)) {
        c->suppressed = 0;
        return false;
    }
    va_list ap;
    va_start(ap, kvfmt);
    log_suppressed(level, msg, c->suppressed, kvfmt, ap);
    va_end(ap);
    c->suppressed = 0;
    return true;
}

void log_release(log_complain_t *c, const char *msg, const char *kvfmt, ...)
{
    if (!c->active)
        return;
    va_list ap;
    va_start(ap, kvfmt);
    log_suppressed(LOG_LVL_INFO, msg, c->suppressed, kvfmt, ap);
    va_end(ap);
    *c = (log_complain_t){ 0 };
}

static void log_one_stat(const char *name, const char *labels, int64_t value, bool gauge, void *arg)
{
    (void)arg;
    log_info("stat", "name=%s labels=\"%s\" value=%lld type=%s", name, labels, (long long)value,
             gauge ? "gauge" : "counter");
}

void log_stats(const struct stats *st) { stats_each(st, log_one_stat, NULL); }

#include "stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "msg.h"
#include "xalloc.h"

#define STATS_MAX 4096
#define CHUNK 256

typedef struct {
    char *name;
    char *labels; /* canonical "k=v,k=v" or "" */
    int64_t value;
    bool gauge;
} series_t;

struct stats {
    char *daemon, *src;
    int64_t started;
    series_t *chunks[STATS_MAX / CHUNK + 1]; /* chunks never move, so slots stay put */
    size_t n;
    int64_t overflow;
};

stats_t *stats_new(const char *daemon, const char *src)
{
    stats_t *st = xcalloc(1, sizeof *st);
    st->daemon = xstrdup(daemon);
    st->src = xstrdup(src);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    st->started = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return st;
}

void stats_destroy(stats_t **pst)
{
    stats_t *st = *pst;
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++) {
        series_t *s = &st->chunks[i / CHUNK][i % CHUNK];
        free(s->name);
        free(s->labels);
    }
    for (size_t i = 0; i < sizeof st->chunks / sizeof st->chunks[0]; i++)
        free(st->chunks[i]);
    free(st->daemon);
    free(st->src);
    free(st);
    *pst = NULL;
}

static series_t *at(const stats_t *st, size_t i) { return &st->chunks[i / CHUNK][i % CHUNK]; }

static int64_t *get(stats_t *st, const char *name, const char *labels, bool gauge)
{
    if (!labels)
        labels = "";
    for (size_t i = 0; i < st->n; i++) {
        series_t *s = at(st, i);
        if (!strcmp(s->name, name) && !strcmp(s->labels, labels))
            return &s->value;
    }
    if (st->n >= STATS_MAX)
        return &st->overflow;
    if (!st->chunks[st->n / CHUNK])
        st->chunks[st->n / CHUNK] = xcalloc(CHUNK, sizeof(series_t));
    series_t *s = at(st, st->n++);
    s->name = xstrdup(name);
    s->labels = xstrdup(labels);
    s->gauge = gauge;
    return &s->value;
}

int64_t *stats_counter(stats_t *st, const char *name, const char *labels)
{
    return get(st, name, labels, false);
}

int64_t *stats_gauge(stats_t *st, const char *name, const char *labels)
{
    return get(st, name, labels, true);
}

static void sanitize(char *out, size_t cap, const char *v, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)v[i];
        out[o++] = (c < 0x20 || c >= 0x7f || c == ',' || c == '=' || c == '"' || c == '\\') ? '_' : (char)c;
    }
    out[o] = '\0';
}

int64_t *stats_counter2(stats_t *st, const char *name, const char *k1, const char *v1, size_t v1len,
                        const char *k2, const char *v2, size_t v2len, size_t max_series)
{
    char a[128], b[128], labels[300];
    sanitize(a, sizeof a, v1, v1len);
    sanitize(b, sizeof b, v2, v2len);
    snprintf(labels, sizeof labels, "%s=%s,%s=%s", k1, a, k2, b);
    size_t have = 0;
    for (size_t i = 0; i < st->n; i++) {
        series_t *s = at(st, i);
        if (strcmp(s->name, name))
            continue;
        if (!strcmp(s->labels, labels))
            return &s->value;
        have++;
    }
    if (have >= max_series)
        snprintf(labels, sizeof labels, "%s=__other__,%s=__other__", k1, k2);
    return get(st, name, labels, false);
}

static size_t split_labels(const char *labels, msg_tag_t *out, size_t max)
{
    size_t n = 0;
    const char *p = labels;
    while (*p && n < max) {
        const char *eq = strchr(p, '=');
        if (!eq)
            break;
        const char *end = strchr(eq, ',');
        if (!end)
            end = eq + strlen(eq);
        out[n].key = span_make(p, (size_t)(eq - p));
        out[n].value = span_make(eq + 1, (size_t)(end - eq - 1));
        n++;
        p = *end ? end + 1 : end;
    }
    return n;
}

void stats_pack(const stats_t *st, msgpack_packer *pk, int64_t now_ns)
{
    size_t n = st->n + (st->overflow ? 1 : 0);
    msg_stat_t *e = xcalloc(n ? n : 1, sizeof *e);
    for (size_t i = 0; i < st->n; i++) {
        const series_t *s = at(st, i);
        e[i].name = span_cstr(s->name);
        e[i].nlabels = split_labels(s->labels, e[i].labels, MSG_STAT_LABELS);
        e[i].value = s->value;
        e[i].gauge = s->gauge;
    }
    if (st->overflow)
        e[st->n] = (msg_stat_t){ .name = SPAN_LIT("stats_overflow_total"), .value = st->overflow };
    msg_stats_t m = {
        .daemon = span_cstr(st->daemon),
        .src = span_cstr(st->src),
        .pid = getpid(),
        .started = st->started,
        .ts = now_ns,
        .n = n,
        .entries = e,
    };
    msg_stats_pack(pk, &m);
    free(e);
}

void stats_each(const stats_t *st,
                void (*fn)(const char *name, const char *labels, int64_t value, bool gauge, void *arg),
                void *arg)
{
    for (size_t i = 0; i < st->n; i++) {
        const series_t *s = at(st, i);
        fn(s->name, s->labels, s->value, s->gauge, arg);
    }
    if (st->overflow)
        fn("stats_overflow_total", "", st->overflow, false, arg);
}

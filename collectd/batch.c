#include "batch.h"

#include <stdio.h>
#include <stdlib.h>

#include "mbuf.h"
#include "tmtime.h"
#include "xalloc.h"

#define NTOPICS 257 /* ev.00 .. ev.ff, then metric */
#define METRIC 256
#define MAX_BYTES (1u << 20)

typedef struct {
    mbuf_t buf;
    size_t count;
    int64_t first;
    int dirty_next; /* index in the dirty list, -1 when clean */
} topic_t;

struct batch {
    bus_pub_t *pub;
    topic_t t[NTOPICS];
    int dirty[NTOPICS];
    int ndirty;
    size_t max_records;
    int64_t interval;
    int64_t *c_msgs, *c_records, *c_errors, *c_flush_ns;
};

batch_t *batch_new(bus_pub_t *pub, stats_t *st)
{
    batch_t *b = xcalloc(1, sizeof *b);
    b->pub = pub;
    b->max_records = 256;
    b->interval = 2 * TMTIME_NS_PER_MS;
    for (int i = 0; i < NTOPICS; i++)
        b->t[i].dirty_next = -1;
    b->c_msgs = stats_counter(st, "bus_messages_total", NULL);
    b->c_records = stats_counter(st, "bus_records_total", NULL);
    b->c_errors = stats_counter(st, "bus_send_errors_total", NULL);
    b->c_flush_ns = stats_counter(st, "bus_flush_nanoseconds_total", NULL);
    return b;
}

void batch_destroy(batch_t **pb)
{
    batch_t *b = *pb;
    if (!b)
        return;
    for (int i = 0; i < NTOPICS; i++)
        mbuf_free(&b->t[i].buf);
    free(b);
    *pb = NULL;
}

void batch_limits(batch_t *b, size_t max_records, int64_t interval_ns)
{
    b->max_records = max_records;
    b->interval = interval_ns;
}

static void send_topic(batch_t *b, int i)
{
    topic_t *t = &b->t[i];
    if (!t->count)
        return;
    int64_t t0 = tmtime_mono_ns();
    char name[8];
    if (i == METRIC)
        snprintf(name, sizeof name, "metric");
    else
        snprintf(name, sizeof name, "ev.%02x", i);
    unsigned char hdr[5];
    size_t hl;
    if (t->count < 16) {
        hdr[0] = (unsigned char)(0x90 | t->count);
        hl = 1;
    } else if (t->count <= 0xffff) {
        hdr[0] = 0xdc;
        hdr[1] = (unsigned char)(t->count >> 8);
        hdr[2] = (unsigned char)t->count;
        hl = 3;
    } else {
        hdr[0] = 0xdd;
        hdr[1] = (unsigned char)(t->count >> 24);
        hdr[2] = (unsigned char)(t->count >> 16);
        hdr[3] = (unsigned char)(t->count >> 8);
        hdr[4] = (unsigned char)t->count;
        hl = 5;
    }
    if (bus_pub_send(b->pub, name, i == METRIC ? MSG_KIND_SAMPLE : MSG_KIND_USAGE, hdr, hl,
                     t->buf.data, t->buf.len) < 0)
        (*b->c_errors)++;
    (*b->c_msgs)++;
    *b->c_records += (int64_t)t->count;
    t->count = 0;
    mbuf_reset(&t->buf);
    if (t->buf.cap > 4 * MAX_BYTES) /* let a burst's memory go */
        mbuf_free(&t->buf);
    *b->c_flush_ns += tmtime_mono_ns() - t0;
}

static topic_t *begin(batch_t *b, int i, int64_t now)
{
    topic_t *t = &b->t[i];
    if (t->count == 0) {
        t->first = now;
        if (t->dirty_next < 0) {
            t->dirty_next = b->ndirty;
            b->dirty[b->ndirty++] = i;
        }
    }
    return t;
}

static void end(batch_t *b, int i, topic_t *t)
{
    t->count++;
    if (t->count >= b->max_records || t->buf.len >= MAX_BYTES)
        send_topic(b, i);
}

void batch_usage(batch_t *b, unsigned shard, const msg_usage_t *u, int64_t now)
{
    int i = (int)(shard & 0xff);
    topic_t *t = begin(b, i, now);
    msg_usage_encode(&t->buf, u);
    end(b, i, t);
}

void batch_sample(batch_t *b, const msg_sample_t *s, int64_t now)
{
    topic_t *t = begin(b, METRIC, now);
    msg_sample_encode(&t->buf, s);
    end(b, METRIC, t);
}

int64_t batch_flush_due(batch_t *b, int64_t now)
{
    int64_t next = -1;
    for (int k = 0; k < b->ndirty;) {
        int i = b->dirty[k];
        topic_t *t = &b->t[i];
        if (t->count && (now - t->first >= b->interval || now < t->first))
            send_topic(b, i);
        if (!t->count) { /* drop it from the dirty list */
            t->dirty_next = -1;
            b->dirty[k] = b->dirty[--b->ndirty];
            if (k < b->ndirty)
                b->t[b->dirty[k]].dirty_next = k;
            continue;
        }
        int64_t due = t->first + b->interval - now;
        if (next < 0 || due < next)
            next = due;
        k++;
    }
    return next;
}

void batch_flush_all(batch_t *b)
{
    for (int k = 0; k < b->ndirty; k++) {
        send_topic(b, b->dirty[k]);
        b->t[b->dirty[k]].dirty_next = -1;
    }
    b->ndirty = 0;
}

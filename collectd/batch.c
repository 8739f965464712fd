#include "batch.h"

#include <stdio.h>
#include <stdlib.h>

#include "mbuf.h"
#include "mpw.h"
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
    size_t room; /* free bytes before the records: envelope header and array header */
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
    b->room = bus_pub_headroom(pub) + 5;
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

/* Sends a topic's batch without copying it: the array header and then the
 * envelope header go into the room left before the records. */
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
    char *hdr = t->buf.data + b->room - 5;
    hdr[0] = (char)0xdd; /* array32: the room has a fixed size */
    mpw_be32(hdr + 1, (uint32_t)t->count);
    size_t records = t->count;
    if (bus_pub_send_owned(b->pub, name, i == METRIC ? MSG_KIND_SAMPLE : MSG_KIND_USAGE, &t->buf,
                           b->room - 5) < 0) {
        (*b->c_errors)++;
        mbuf_free(&t->buf); /* not sent: the records are lost, and counted */
    }
    (*b->c_msgs)++;
    *b->c_records += (int64_t)records;
    t->count = 0;
    *b->c_flush_ns += tmtime_mono_ns() - t0;
}

static topic_t *begin(batch_t *b, int i, int64_t now)
{
    topic_t *t = &b->t[i];
    if (t->count == 0) {
        t->first = now;
        if (t->buf.len < b->room) { /* a fresh buffer: leave the room for the headers */
            mbuf_reserve(&t->buf, b->room + 65536);
            t->buf.len = b->room;
        }
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
    if (t->count >= b->max_records || t->buf.len - b->room >= MAX_BYTES)
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

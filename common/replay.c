#include "replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "mbuf.h"
#include "xalloc.h"

#define MAX_PREFIXES REPLAY_MAX_PREFIXES
#define MAX_PEER_ID 256

typedef struct {
    unsigned char id[MAX_PEER_ID];
    size_t idlen;
    spool_cursor_t *cur;
    char *prefixes[MAX_PREFIXES];
    size_t nprefixes;
    /* a message read from the spool but not yet sent (the peer was full) */
    bool held;
    uint64_t held_seq;
    char held_topic[72];
    mbuf_t held_env;
} job_t;

struct replay_srv {
    void *sock;
    char *src;
    spool_t *spool;
    job_t *jobs;
    size_t njobs;
    replay_counters_t c;
};

replay_srv_t *replay_srv_new(void *zctx, const char *endpoint, const char *src, spool_t *spool,
                             int (*sock_setup)(void *sock, void *arg), void *setup_arg, char *err,
                             size_t errcap)
{
    void *s = zmq_socket(zctx, ZMQ_ROUTER);
    if (!s) {
        snprintf(err, errcap, "zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    int one = 1, zero = 0, hwm = 2000;
    zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (sock_setup && sock_setup(s, setup_arg) != 0) {
        snprintf(err, errcap, "replay socket setup failed: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    if (zmq_bind(s, endpoint) != 0) {
        snprintf(err, errcap, "cannot bind replay endpoint %s: %s", endpoint,
                 zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    replay_srv_t *r = xcalloc(1, sizeof *r);
    r->sock = s;
    r->src = xstrdup(src);
    r->spool = spool;
    return r;
}

static void job_free(job_t *j)
{
    spool_cursor_close(&j->cur);
    for (size_t i = 0; i < j->nprefixes; i++)
        free(j->prefixes[i]);
    mbuf_free(&j->held_env);
}

static void drop_job(replay_srv_t *r, size_t i)
{
    job_free(&r->jobs[i]);
    r->jobs[i] = r->jobs[--r->njobs];
    r->c.active = r->njobs;
}

void replay_srv_destroy(replay_srv_t **pr)
{
    replay_srv_t *r = *pr;
    if (!r)
        return;
    while (r->njobs)
        drop_job(r, 0);
    free(r->jobs);
    zmq_close(r->sock);
    free(r->src);
    free(r);
    *pr = NULL;
}

void *replay_srv_socket(replay_srv_t *r) { return r->sock; }
const replay_counters_t *replay_srv_counters(const replay_srv_t *r) { return &r->c; }

/* Sends id + frames; returns 0, or -1 with errno EAGAIN (peer full) or
 * EHOSTUNREACH (peer gone). */
static int sendv(replay_srv_t *r, const void *id, size_t idlen, const void *const *parts,
                 const size_t *lens, int n)
{
    if (zmq_send(r->sock, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (zmq_send(r->sock, parts[i], lens[i], (i + 1 < n ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
            return -1;
    return 0;
}

static int send3(replay_srv_t *r, const void *id, size_t idlen, const char *a, const char *b,
                 uint64_t num)
{
    char nb[24];
    snprintf(nb, sizeof nb, "%llu", (unsigned long long)num);
    const void *parts[3] = { a, b, nb };
    size_t lens[3] = { strlen(a), strlen(b), strlen(nb) };
    return sendv(r, id, idlen, parts, lens, 3);
}

static bool wanted(const job_t *j, const char *topic)
{
    if (!j->nprefixes)
        return true;
    for (size_t i = 0; i < j->nprefixes; i++)
        if (!strncmp(topic, j->prefixes[i], strlen(j->prefixes[i])))
            return true;
    return false;
}

static job_t *job_for(replay_srv_t *r, const void *id, size_t idlen)
{
    for (size_t i = 0; i < r->njobs; i++)
        if (r->jobs[i].idlen == idlen && !memcmp(r->jobs[i].id, id, idlen))
            return &r->jobs[i];
    return NULL;
}

static void handle_request(replay_srv_t *r, zmq_msg_t *frames, int n)
{
    const void *id = zmq_msg_data(&frames[0]);
    size_t idlen = zmq_msg_size(&frames[0]);
    if (n < 2 || idlen > MAX_PEER_ID) {
        r->c.malformed++;
        return;
    }
    const char *verb = zmq_msg_data(&frames[1]);
    size_t vl = zmq_msg_size(&frames[1]);
    if (vl == 5 && !memcmp(verb, "HELLO", 5)) {
        char ob[24], lb[24];
        snprintf(ob, sizeof ob, "%llu", (unsigned long long)spool_oldest_seq(r->spool));
        snprintf(lb, sizeof lb, "%llu", (unsigned long long)spool_last_seq(r->spool));
        const void *parts[4] = { "HELLO", r->src, ob, lb };
        size_t lens[4] = { 5, strlen(r->src), strlen(ob), strlen(lb) };
        sendv(r, id, idlen, parts, lens, 4);
        r->c.hellos++;
        return;
    }
    if (!(vl == 6 && !memcmp(verb, "REPLAY", 6)) || n < 4) {
        r->c.malformed++;
        return;
    }
    r->c.requests++;
    char src[256], num[24];
    size_t sl = zmq_msg_size(&frames[2]), nl = zmq_msg_size(&frames[3]);
    if (sl >= sizeof src || nl == 0 || nl >= sizeof num) {
        r->c.malformed++;
        return;
    }
    memcpy(src, zmq_msg_data(&frames[2]), sl);
    src[sl] = '\0';
    memcpy(num, zmq_msg_data(&frames[3]), nl);
    num[nl] = '\0';
    /* digits only: strtoull takes a sign and blanks, and says ERANGE only
     * through errno */
    char *end;
    errno = 0;
    unsigned long long from = strtoull(num, &end, 10);
    if (*end || errno || num[0] < '0' || num[0] > '9' || n - 4 > MAX_PREFIXES) {
        r->c.malformed++;
        return;
    }
    if (sl && strcmp(src, r->src)) {
        send3(r, id, idlen, "UNKNOWN", src, 0);
        r->c.unknowns++;
        return;
    }
    job_t *j = job_for(r, id, idlen);
    if (j) /* a new request replaces the running one */
        drop_job(r, (size_t)(j - r->jobs));
    uint64_t gone;
    spool_cursor_t *cur = spool_cursor_open(r->spool, from, &gone);
    if (!cur) {
        send3(r, id, idlen, "GONE", r->src, gone ? gone : spool_oldest_seq(r->spool));
        r->c.gones++;
        return;
    }
    r->jobs = xreallocarray(r->jobs, r->njobs + 1, sizeof *r->jobs);
    j = &r->jobs[r->njobs++];
    memset(j, 0, sizeof *j);
    memcpy(j->id, id, idlen);
    j->idlen = idlen;
    j->cur = cur;
    for (int i = 4; i < n; i++)
        j->prefixes[j->nprefixes++] =
            xstrndup(zmq_msg_data(&frames[i]), zmq_msg_size(&frames[i]));
    r->c.active = r->njobs;
}

static void read_requests(replay_srv_t *r)
{
    for (;;) {
        zmq_msg_t frames[MAX_PREFIXES + 5];
        int n = 0;
        int more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, r->sock, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(&m);
                if (n == 0)
                    return;
                break;
            }
            more = zmq_msg_more(&m);
            if (n < (int)(sizeof frames / sizeof frames[0])) {
                zmq_msg_init(&frames[n]);
                zmq_msg_move(&frames[n++], &m);
            }
            zmq_msg_close(&m); /* beyond the frames kept: dropped */
        }
        handle_request(r, frames, n);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
    }
}

/* Sends up to budget messages of one job. Returns 1 while it has more to
 * send, 0 when done (END sent), -1 when the peer is gone. */
static int run_job(replay_srv_t *r, job_t *j, int budget)
{
    while (budget-- > 0) {
        if (!j->held) {
            int rc = spool_cursor_next(j->cur, &j->held_seq, j->held_topic, &j->held_env);
            if (rc < 0) { /* the spool lost, or cannot read, what this replay needs */
                send3(r, j->id, j->idlen, "GONE", r->src,
                      spool_cursor_resume(j->cur, r->spool));
                r->c.gones++;
                return 0;
            }
            if (rc == 0) { /* caught up */
                if (send3(r, j->id, j->idlen, "END", r->src, spool_last_seq(r->spool)) < 0)
                    return errno == EAGAIN ? 1 : -1;
                r->c.ends++;
                return 0;
            }
            if (!wanted(j, j->held_topic))
                continue;
            j->held = true;
        }
        const void *parts[3] = { "MSG", j->held_topic, j->held_env.data };
        size_t lens[3] = { 3, strlen(j->held_topic), j->held_env.len };
        if (sendv(r, j->id, j->idlen, parts, lens, 3) < 0)
            return errno == EAGAIN ? 1 : -1;
        j->held = false;
        r->c.messages++;
    }
    return 1;
}

bool replay_srv_work(replay_srv_t *r, int budget)
{
    read_requests(r);
    for (size_t i = 0; i < r->njobs;) {
        int rc = run_job(r, &r->jobs[i], budget);
        if (rc <= 0) {
            if (rc < 0)
                r->c.dropped++;
            drop_job(r, i);
            continue;
        }
        i++;
    }
    return r->njobs > 0;
}

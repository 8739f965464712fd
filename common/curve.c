#include "curve.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "xalloc.h"

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static bool z85_key_ok(const char *k)
{
    uint8_t bin[32];
    return strlen(k) == CURVE_KEY_Z85 && zmq_z85_decode(bin, k) != NULL;
}

int curve_keypair_load(const char *path, char *pub, char *sec, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errcap, "CURVE key file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[256];
    int ln = 0;
    pub[0] = sec[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *t = trim(line);
        if (!*t || *t == '#')
            continue;
        char *eq = strchr(t, '=');
        if (!eq) {
            snprintf(err, errcap, "%s:%d: expected 'public = KEY' or 'secret = KEY'", path, ln);
            fclose(f);
            return -1;
        }
        *eq = '\0';
        char *k = trim(t), *v = trim(eq + 1);
        char *dst = !strcmp(k, "public") ? pub : !strcmp(k, "secret") ? sec : NULL;
        if (!dst || !z85_key_ok(v)) {
            snprintf(err, errcap, "%s:%d: '%s' is not a Z85 CURVE %s key", path, ln, v,
                     dst ? k : "public or secret");
            fclose(f);
            return -1;
        }
        memcpy(dst, v, CURVE_KEY_Z85 + 1);
    }
    fclose(f);
    if (!pub[0] || !sec[0]) {
        snprintf(err, errcap, "%s: needs both a public and a secret key", path);
        return -1;
    }
    return 0;
}

int curve_sock_setup(void *sock, void *arg)
{
    const curve_opts_t *o = arg;
    if (o->server) {
        int one = 1;
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
            zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, o->secret_key, CURVE_KEY_Z85) != 0 ||
            zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "tokmon", 6) != 0)
            return -1;
        return 0;
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, o->server_public, CURVE_KEY_Z85) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, o->public_key, CURVE_KEY_Z85) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, o->secret_key, CURVE_KEY_Z85) != 0)
        return -1;
    return 0;
}

/* ---- ZAP ------------------------------------------------------------------ */

struct curve_zap {
    void *zctx;
    pthread_t thread;
    uint8_t (*keys)[32];
    size_t nkeys;
    atomic_ulong allowed, denied;
    char stop_ep[64];
    void *ctl; /* the owner's end of the stop channel */
};

static void reply(void *rep, zmq_msg_t *req_id, const char *code, const char *text)
{
    zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(rep, zmq_msg_data(req_id), zmq_msg_size(req_id), ZMQ_SNDMORE);
    zmq_send(rep, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(rep, "", 0, ZMQ_SNDMORE); /* user id */
    zmq_send(rep, "", 0, 0);           /* metadata */
}

static void *zap_main(void *arg)
{
    curve_zap_t *z = arg;
    void *rep = zmq_socket(z->zctx, ZMQ_REP);
    void *ctl = zmq_socket(z->zctx, ZMQ_PAIR);
    int zero = 0;
    zmq_setsockopt(rep, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(ctl, ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(rep, "inproc://zeromq.zap.01");
    zmq_connect(ctl, z->stop_ep);
    for (;;) {
        zmq_pollitem_t it[2] = { { rep, 0, ZMQ_POLLIN, 0 }, { ctl, 0, ZMQ_POLLIN, 0 } };
        if (zmq_poll(it, 2, -1) < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (it[1].revents)
            break;
        if (!it[0].revents)
            continue;
        /* version, request id, domain, address, identity, mechanism, credentials... */
        zmq_msg_t f[8];
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, rep, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (n < 8) {
                zmq_msg_init(&f[n]);
                zmq_msg_move(&f[n++], &m);
            }
            zmq_msg_close(&m);
        }
        bool ok = false;
        if (n >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
            zmq_msg_size(&f[6]) == 32) {
            for (size_t i = 0; i < z->nkeys && !ok; i++)
                ok = !memcmp(zmq_msg_data(&f[6]), z->keys[i], 32);
        }
        if (n >= 2) {
            if (ok)
                atomic_fetch_add(&z->allowed, 1);
            else
                atomic_fetch_add(&z->denied, 1);
            reply(rep, &f[1], ok ? "200" : "400", ok ? "OK" : "client key not allowed");
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
    }
    zmq_close(rep);
    zmq_close(ctl);
    return NULL;
}

curve_zap_t *curve_zap_start(void *zctx, const char *allow_file, char *err, size_t errcap)
{
    if (!zmq_has("curve")) {
        snprintf(err, errcap, "this libzmq has no CURVE support");
        return NULL;
    }
    FILE *f = fopen(allow_file, "r");
    if (!f) {
        snprintf(err, errcap, "CURVE allow-list %s: %s", allow_file, strerror(errno));
        return NULL;
    }
    curve_zap_t *z = xcalloc(1, sizeof *z);
    z->zctx = zctx;
    char line[256];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *t = trim(line);
        if (!*t || *t == '#')
            continue;
        if (!strncmp(t, "public", 6)) { /* a whole `keygen --curve` output is fine too */
            char *eq = strchr(t, '=');
            t = eq ? trim(eq + 1) : t;
        } else if (!strncmp(t, "secret", 6)) {
            continue;
        }
        z->keys = xreallocarray(z->keys, z->nkeys + 1, sizeof *z->keys);
        if (!z85_key_ok(t) || !zmq_z85_decode(z->keys[z->nkeys], t)) {
            snprintf(err, errcap, "%s:%d: '%s' is not a Z85 CURVE public key", allow_file, ln, t);
            fclose(f);
            free(z->keys);
            free(z);
            return NULL;
        }
        z->nkeys++;
    }
    fclose(f);
    snprintf(z->stop_ep, sizeof z->stop_ep, "inproc://tokmon-zap-stop-%p", (void *)z);
    z->ctl = zmq_socket(zctx, ZMQ_PAIR);
    int zero = 0;
    zmq_setsockopt(z->ctl, ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(z->ctl, z->stop_ep);
    if (pthread_create(&z->thread, NULL, zap_main, z) != 0) {
        zmq_close(z->ctl);
        snprintf(err, errcap, "cannot start the ZAP thread");
        free(z->keys);
        free(z);
        return NULL;
    }
    return z;
}

void curve_zap_stop(curve_zap_t **pz)
{
    curve_zap_t *z = *pz;
    if (!z)
        return;
    zmq_send(z->ctl, "", 0, 0);
    pthread_join(z->thread, NULL);
    zmq_close(z->ctl);
    free(z->keys);
    free(z);
    *pz = NULL;
}

void curve_zap_counts(const curve_zap_t *z, unsigned long *allowed, unsigned long *denied)
{
    *allowed = atomic_load(&z->allowed);
    *denied = atomic_load(&z->denied);
}

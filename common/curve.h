/* curve: ZeroMQ CURVE for the bus (curve = on). Publishers are CURVE servers
 * with one server key pair; subscribers are clients with their own key pair
 * and the servers' public key; a ZAP handler in each publisher lets in only
 * the client public keys of an allow-list, so a subscriber without an
 * allowed key gets nothing. Keys are Z85 text as `tokmonctl keygen --curve`
 * prints them ("public = ...", "secret = ..."). */
#ifndef TOKMON_CURVE_H
#define TOKMON_CURVE_H

#include <stdbool.h>
#include <stddef.h>

#define CURVE_KEY_Z85 40

typedef struct {
    bool server;
    char server_public[CURVE_KEY_Z85 + 1]; /* clients: the server's public key */
    char public_key[CURVE_KEY_Z85 + 1];    /* own pair */
    char secret_key[CURVE_KEY_Z85 + 1];
} curve_opts_t;

/* Reads a key pair file. Returns 0 or -1 with "file:line: reason". */
int curve_keypair_load(const char *path, char *pub, char *sec, char *err, size_t errcap);

/* A zmq socket setup hook (bus_pub_opts_t.sock_setup, rsub_opts_t): arg is
 * a curve_opts_t. Returns 0 or -1 (errno from zmq). */
int curve_sock_setup(void *sock, void *arg);

typedef struct curve_zap curve_zap_t;

/* Starts the ZAP handler of zctx (a thread answering on
 * inproc://zeromq.zap.01) with the public keys listed in allow_file (one
 * Z85 key a line, '#' comments). Returns NULL with a reason in err. */
curve_zap_t *curve_zap_start(void *zctx, const char *allow_file, char *err, size_t errcap);
/* Stops the thread; call before zmq_ctx_term. */
void curve_zap_stop(curve_zap_t **z);
/* Connections let in and refused so far. */
void curve_zap_counts(const curve_zap_t *z, unsigned long *allowed, unsigned long *denied);

#endif

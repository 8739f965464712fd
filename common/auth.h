/* auth: signed datagrams (DESIGN section 2). A signed datagram ends with a
 * line "|sig:<key-id>:<unix-ms>:<base64 MAC>", where the MAC is libsodium's
 * crypto_auth (HMAC-SHA-512-256) with the key named by key-id over every byte
 * before the base64 text: the payload, the newline, and "|sig:<key-id>:
 * <unix-ms>:", so the key id and the time are authenticated too. A receiver
 * checks the key, the MAC, the clock skew, and a replay guard that remembers
 * each accepted MAC for as long as its time stays within the skew. */
#ifndef TOKMON_AUTH_H
#define TOKMON_AUTH_H

#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "span.h"

#define AUTH_KEY_BYTES crypto_auth_KEYBYTES /* 32 */
#define AUTH_MAC_BYTES crypto_auth_BYTES    /* 32 */
#define AUTH_MAX_KEY_ID 64
#define AUTH_SIG_MAX (6 + AUTH_MAX_KEY_ID + 1 + 20 + 1 + 48) /* longest sig line */

typedef enum {
    AUTH_OK,
    AUTH_NONE,        /* no |sig line */
    AUTH_MALFORMED,   /* a |sig line that does not parse */
    AUTH_UNKNOWN_KEY, /* key id not known */
    AUTH_BAD_MAC,     /* does not verify */
    AUTH_STALE,       /* outside the skew window (or older than the guard remembers) */
    AUTH_REPLAY,      /* this MAC was accepted before */
} auth_result_t;

/* ---- keys --------------------------------------------------------------- */

typedef struct auth_keys auth_keys_t;

/* Loads a key file: one "key-id base64-key" per line, '#' comments, key ids
 * of 1 to 64 of [A-Za-z0-9_.-]. Returns NULL with "file:line: reason" in err. */
auth_keys_t *auth_keys_load(const char *path, char *err, size_t errcap);
auth_keys_t *auth_keys_parse(const char *text, size_t len, const char *name, char *err,
                             size_t errcap);
void auth_keys_destroy(auth_keys_t **k);
size_t auth_keys_count(const auth_keys_t *k);
/* The key for id, or NULL. */
const unsigned char *auth_keys_find(const auth_keys_t *k, span_t id);

/* Makes a new random key and writes its key-file line "id base64\n". Returns
 * 0 or -1 (bad id, small buffer). */
int auth_keygen(const char *id, char *line, size_t cap);

/* Reads a key-file line's key (for senders holding one key). */
int auth_key_decode(const char *b64, size_t len, unsigned char key[AUTH_KEY_BYTES]);

/* ---- signing ------------------------------------------------------------ */

/* Appends "\n|sig:id:ms:mac" to payload[0..len) in buf (payload must already
 * be at buf, with cap bytes of room in all). Returns the new length, or -1. */
ssize_t auth_sign(char *buf, size_t len, size_t cap, const unsigned char key[AUTH_KEY_BYTES],
                  const char *key_id, int64_t unix_ms);

/* ---- verifying ---------------------------------------------------------- */

typedef struct auth_guard auth_guard_t;

/* A replay guard remembering at most cap MACs per generation, for a skew of
 * skew_ms. */
auth_guard_t *auth_guard_new(size_t cap, int64_t skew_ms);
void auth_guard_destroy(auth_guard_t **g);
/* Entries held now (both generations), for the collector's gauges. */
size_t auth_guard_size(const auth_guard_t *g);

/* Finds a trailing sig line: on success *payload_len is the length of the
 * payload before it (without the separating newline). Returns false when the
 * datagram has no "\n|sig:" last line (or is only a sig line). */
bool auth_find(const char *buf, size_t len, size_t *payload_len);

/* Verifies a datagram that auth_find() accepted. On AUTH_OK, *key_id points
 * into buf. now_ms is the receiver's clock. The guard may be NULL (no replay
 * check). */
auth_result_t auth_verify(const auth_keys_t *keys, auth_guard_t *guard, const char *buf,
                          size_t len, size_t payload_len, int64_t now_ms, int64_t skew_ms,
                          span_t *key_id);

#endif

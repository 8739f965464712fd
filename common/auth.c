#include "auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

/* ---- keys --------------------------------------------------------------- */

typedef struct {
    char id[AUTH_MAX_KEY_ID + 1];
    size_t idlen;
    unsigned char key[AUTH_KEY_BYTES];
} key_t_;

struct auth_keys {
    key_t_ *v;
    size_t n;
};

static bool id_ok(const char *s, size_t n)
{
    if (n == 0 || n > AUTH_MAX_KEY_ID)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return false;
    return true;
}

int auth_key_decode(const char *b64, size_t len, unsigned char key[AUTH_KEY_BYTES])
{
    size_t got = 0;
    const char *end;
    unsigned char tmp[AUTH_KEY_BYTES];
    int rc = sodium_base642bin(tmp, sizeof tmp, b64, len, NULL, &got, &end,
                               sodium_base64_VARIANT_ORIGINAL) != 0 ||
                     got != AUTH_KEY_BYTES || end != b64 + len
                 ? -1
                 : 0;
    if (rc == 0) /* the caller's key is untouched on failure */
        memcpy(key, tmp, sizeof tmp);
    sodium_memzero(tmp, sizeof tmp);
    return rc;
}

auth_keys_t *auth_keys_parse(const char *text, size_t len, const char *name, char *err,
                             size_t errcap)
{
    if (sodium_init() < 0) {
        snprintf(err, errcap, "libsodium failed to initialise");
        return NULL;
    }
    auth_keys_t *k = xcalloc(1, sizeof *k);
    size_t pos = 0;
    int line = 0;
    while (pos < len) {
        line++;
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        while (n && (s[n - 1] == '\r' || isspace((unsigned char)s[n - 1])))
            n--;
        while (n && isspace((unsigned char)*s)) {
            s++;
            n--;
        }
        if (n == 0 || s[0] == '#')
            continue;
        size_t il = 0;
        while (il < n && !isspace((unsigned char)s[il]))
            il++;
        size_t ks = il;
        while (ks < n && isspace((unsigned char)s[ks]))
            ks++;
        if (!id_ok(s, il) || ks == n) {
            snprintf(err, errcap, "%s:%d: expected 'key-id base64-key' (key id of 1 to %d of A-Z a-z 0-9 _ . -)",
                     name, line, AUTH_MAX_KEY_ID);
            goto fail;
        }
        key_t_ e = { .idlen = il };
        memcpy(e.id, s, il);
        if (auth_key_decode(s + ks, n - ks, e.key) < 0) {
            snprintf(err, errcap, "%s:%d: key '%.*s' is not %d bytes of base64", name, line, (int)il,
                     s, AUTH_KEY_BYTES);
            goto fail;
        }
        for (size_t i = 0; i < k->n; i++) {
            if (k->v[i].idlen == il && !memcmp(k->v[i].id, s, il)) {
                snprintf(err, errcap, "%s:%d: key id '%.*s' appears twice", name, line, (int)il, s);
                goto fail;
            }
        }
        k->v = xreallocarray(k->v, k->n + 1, sizeof *k->v);
        k->v[k->n++] = e;
        sodium_memzero(&e, sizeof e);
    }
    if (k->n == 0) {
        snprintf(err, errcap, "%s: no keys", name);
        goto fail;
    }
    return k;
fail:
    auth_keys_destroy(&k);
    return NULL;
}

auth_keys_t *auth_keys_load(const char *path, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "auth key file %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    bool more = !feof(f);
    fclose(f);
    if (more) {
        snprintf(err, errcap, "auth key file %s: larger than 64 KiB", path);
        return NULL;
    }
    auth_keys_t *k = auth_keys_parse(buf, n, path, err, errcap);
    sodium_memzero(buf, sizeof buf);
    return k;
}

void auth_keys_destroy(auth_keys_t **pk)
{
    auth_keys_t *k = *pk;
    if (!k)
        return;
    if (k->v)
        sodium_memzero(k->v, k->n * sizeof *k->v);
    free(k->v);
    free(k);
    *pk = NULL;
}

size_t auth_keys_count(const auth_keys_t *k) { return k->n; }

const unsigned char *auth_keys_find(const auth_keys_t *k, span_t id)
{
    for (size_t i = 0; i < k->n; i++)
        if (k->v[i].idlen == id.len && !memcmp(k->v[i].id, id.p, id.len))
            return k->v[i].key;
    return NULL;
}

int auth_keygen(const char *id, char *line, size_t cap)
{
    if (sodium_init() < 0 || !id_ok(id, strlen(id)))
        return -1;
    unsigned char key[AUTH_KEY_BYTES];
    char b64[sodium_base64_ENCODED_LEN(AUTH_KEY_BYTES, sodium_base64_VARIANT_ORIGINAL)];
    crypto_auth_keygen(key);
    sodium_bin2base64(b64, sizeof b64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(key, sizeof key);
    int n = snprintf(line, cap, "%s %s\n", id, b64);
    sodium_memzero(b64, sizeof b64);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* ---- signing ------------------------------------------------------------ */

ssize_t auth_sign(char *buf, size_t len, size_t cap, const unsigned char key[AUTH_KEY_BYTES],
                  const char *key_id, int64_t unix_ms)
{
    if (!id_ok(key_id, strlen(key_id)) || unix_ms < 0)
        return -1;
    char head[AUTH_SIG_MAX];
    int hl = snprintf(head, sizeof head, "\n|sig:%s:%lld:", key_id, (long long)unix_ms);
    size_t b64len = sodium_base64_ENCODED_LEN(AUTH_MAC_BYTES, sodium_base64_VARIANT_ORIGINAL);
    if (hl < 0 || len + (size_t)hl + b64len > cap)
        return -1;
    memcpy(buf + len, head, (size_t)hl);
    unsigned char mac[AUTH_MAC_BYTES];
    crypto_auth(mac, (const unsigned char *)buf, len + (size_t)hl, key);
    sodium_bin2base64(buf + len + hl, b64len, mac, sizeof mac, sodium_base64_VARIANT_ORIGINAL);
    return (ssize_t)(len + (size_t)hl + b64len - 1); /* without the NUL */
}

/* ---- replay guard ------------------------------------------------------- */

typedef struct {
    unsigned char (*slots)[16];
    size_t nslots; /* power of two, or 0 */
    size_t used;
    int64_t max_ms; /* newest signed time held */
} gen_t;

struct auth_guard {
    gen_t g[2];
    int cur;
    size_t cap;
    int64_t window_ms; /* twice the skew: how long a MAC can be replayed */
    int64_t rotated_ms;
    int64_t floor_ms; /* signed times at or below this are no longer covered */
};

auth_guard_t *auth_guard_new(size_t cap, int64_t skew_ms)
{
    auth_guard_t *g = xcalloc(1, sizeof *g);
    g->cap = cap < 16 ? 16 : cap;
    g->window_ms = 2 * skew_ms;
    g->rotated_ms = -1;
    g->floor_ms = -1;
    return g;
}

static void gen_free(gen_t *x)
{
    free(x->slots);
    *x = (gen_t){ .max_ms = -1 };
}

void auth_guard_destroy(auth_guard_t **pg)
{
    auth_guard_t *g = *pg;
    if (!g)
        return;
    gen_free(&g->g[0]);
    gen_free(&g->g[1]);
    free(g);
    *pg = NULL;
}

size_t auth_guard_size(const auth_guard_t *g) { return g->g[0].used + g->g[1].used; }

static uint64_t slot_hash(const unsigned char k[16])
{
    uint64_t h;
    memcpy(&h, k, sizeof h); /* the MAC is uniformly random already */
    return h;
}

static bool is_empty(const unsigned char k[16])
{
    static const unsigned char zero[16];
    return memcmp(k, zero, 16) == 0;
}

static bool gen_has(const gen_t *x, const unsigned char k[16])
{
    if (!x->nslots)
        return false;
    for (size_t i = slot_hash(k) & (x->nslots - 1);; i = (i + 1) & (x->nslots - 1)) {
        if (is_empty(x->slots[i]))
            return false;
        if (!memcmp(x->slots[i], k, 16))
            return true;
    }
}

static void gen_put(gen_t *x, const unsigned char k[16])
{
    if (2 * (x->used + 1) > x->nslots) {
        size_t n = x->nslots ? x->nslots * 2 : 1024;
        unsigned char(*s)[16] = xcalloc(n, 16);
        for (size_t i = 0; i < x->nslots; i++) {
            if (is_empty(x->slots[i]))
                continue;
            size_t j = slot_hash(x->slots[i]) & (n - 1);
            while (!is_empty(s[j]))
                j = (j + 1) & (n - 1);
            memcpy(s[j], x->slots[i], 16);
        }
        free(x->slots);
        x->slots = s;
        x->nslots = n;
    }
    size_t j = slot_hash(k) & (x->nslots - 1);
    while (!is_empty(x->slots[j]))
        j = (j + 1) & (x->nslots - 1);
    memcpy(x->slots[j], k, 16);
    x->used++;
}

static void rotate(auth_guard_t *g, bool early)
{
    gen_t *old = &g->g[1 - g->cur];
    if (early && old->used && old->max_ms > g->floor_ms)
        g->floor_ms = old->max_ms; /* its MACs are forgotten before their time is up */
    gen_free(old);
    g->cur = 1 - g->cur;
}

/* Returns AUTH_OK and remembers the MAC, or AUTH_REPLAY / AUTH_STALE. */
static auth_result_t guard_check(auth_guard_t *g, const unsigned char mac[AUTH_MAC_BYTES],
                                 int64_t signed_ms, int64_t now_ms)
{
    unsigned char k[16];
    memcpy(k, mac, 16);
    if (is_empty(k))
        k[0] = 1;
    if (g->rotated_ms < 0)
        g->rotated_ms = now_ms;
    if (now_ms - g->rotated_ms >= g->window_ms) {
        rotate(g, false);
        g->rotated_ms = now_ms;
    }
    if (signed_ms <= g->floor_ms)
        return AUTH_STALE;
    if (gen_has(&g->g[0], k) || gen_has(&g->g[1], k))
        return AUTH_REPLAY;
    gen_t *cur = &g->g[g->cur];
    if (cur->used >= g->cap) {
        rotate(g, true);
        g->rotated_ms = now_ms;
        cur = &g->g[g->cur];
        if (signed_ms <= g->floor_ms)
            return AUTH_STALE;
    }
    gen_put(cur, k);
    if (signed_ms > cur->max_ms)
        cur->max_ms = signed_ms;
    return AUTH_OK;
}

/* ---- verifying ---------------------------------------------------------- */

bool auth_find(const char *buf, size_t len, size_t *payload_len)
{
    size_t end = len;
    while (end && (buf[end - 1] == '\n' || buf[end - 1] == '\r'))
        end--;
    const char *nl = end ? memrchr(buf, '\n', end) : NULL;
    size_t i = nl ? (size_t)(nl - buf) + 1 : 0;
    if (i == 0 || end - i < 5 || memcmp(buf + i, "|sig:", 5) != 0)
        return false;
    *payload_len = i - 1;
    return true;
}

auth_result_t auth_verify(const auth_keys_t *keys, auth_guard_t *guard, const char *buf,
                          size_t len, size_t payload_len, int64_t now_ms, int64_t skew_ms,
                          span_t *key_id)
{
    size_t end = len;
    while (end && (buf[end - 1] == '\n' || buf[end - 1] == '\r'))
        end--;
    const char *s = buf + payload_len + 1 + 5; /* after "\n|sig:" */
    const char *e = buf + end;
    if (s > e)
        return AUTH_MALFORMED;
    const char *c1 = memchr(s, ':', (size_t)(e - s));
    if (!c1 || !id_ok(s, (size_t)(c1 - s)))
        return AUTH_MALFORMED;
    const char *ms = c1 + 1;
    const char *c2 = memchr(ms, ':', (size_t)(e - ms));
    if (!c2 || c2 == ms || c2 - ms > 15)
        return AUTH_MALFORMED;
    int64_t signed_ms = 0;
    for (const char *p = ms; p < c2; p++) {
        if (*p < '0' || *p > '9')
            return AUTH_MALFORMED;
        signed_ms = signed_ms * 10 + (*p - '0');
    }
    const char *b64 = c2 + 1;
    unsigned char mac[AUTH_MAC_BYTES];
    size_t got = 0;
    const char *b64end;
    if (sodium_base642bin(mac, sizeof mac, b64, (size_t)(e - b64), NULL, &got, &b64end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        got != sizeof mac || b64end != e)
        return AUTH_MALFORMED;
    span_t id = span_make(s, (size_t)(c1 - s));
    const unsigned char *key = auth_keys_find(keys, id);
    if (!key)
        return AUTH_UNKNOWN_KEY;
    if (crypto_auth_verify(mac, (const unsigned char *)buf, (size_t)(b64 - buf), key) != 0)
        return AUTH_BAD_MAC;
    if (signed_ms > now_ms + skew_ms || signed_ms < now_ms - skew_ms)
        return AUTH_STALE;
    if (guard) {
        auth_result_t r = guard_check(guard, mac, signed_ms, now_ms);
        if (r != AUTH_OK)
            return r;
    }
    *key_id = id;
    return AUTH_OK;
}

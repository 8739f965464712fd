#include "ktab.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "xalloc.h"

typedef struct {
    uint64_t hash;
    uint32_t klen;
    uint32_t koff; /* the key's offset from the value: ktab_key needs no table */
} kent_t;

struct ktab {
    kent_t **slots;
    size_t cap, count; /* cap: a power of two */
    size_t vsz;        /* valsize rounded up to 8 */
    size_t bytes;      /* entries, as malloc rounds them */
    void (*free_val)(void *);
};

#define MIN_CAP 16

static inline void *val_of(kent_t *e) { return e + 1; }
static inline kent_t *ent_of(const void *val) { return (kent_t *)(uintptr_t)val - 1; }
static inline char *key_of(const ktab_t *t, kent_t *e) { return (char *)(e + 1) + t->vsz; }

/* what malloc takes for n bytes: 8 bytes of header, 16-byte granules */
static size_t alloc_size(size_t n) { return (n + 8 + 15) & ~(size_t)15; }

ktab_t *ktab_new(size_t valsize, void (*free_val)(void *val))
{
    ktab_t *t = xcalloc(1, sizeof *t);
    t->vsz = (valsize + 7) & ~(size_t)7;
    t->free_val = free_val;
    return t;
}

static void free_entry(ktab_t *t, kent_t *e)
{
    if (t->free_val)
        t->free_val(val_of(e));
    t->bytes -= alloc_size(sizeof *e + t->vsz + e->klen);
    free(e);
}

void ktab_clear(ktab_t *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i]) {
            free_entry(t, t->slots[i]);
            t->slots[i] = NULL;
        }
    }
    t->count = 0;
}

void ktab_destroy(ktab_t **pt)
{
    ktab_t *t = *pt;
    if (!t)
        return;
    ktab_clear(t);
    free(t->slots);
    free(t);
    *pt = NULL;
}

uint64_t ktab_hash(const void *key, size_t klen)
{
    return XXH3_64bits(key, klen);
}

static size_t find_slot(const ktab_t *t, const void *key, size_t klen, uint64_t hash, bool *found)
{
    size_t mask = t->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        kent_t *e = t->slots[i];
        if (!e) {
            *found = false;
            return i;
        }
        if (e->hash == hash && e->klen == klen && !memcmp(key_of(t, e), key, klen)) {
            *found = true;
            return i;
        }
    }
}

void *ktab_get(const ktab_t *t, const void *key, size_t klen, uint64_t hash)
{
    if (!t->count)
        return NULL;
    bool found;
    size_t i = find_slot(t, key, klen, hash, &found);
    return found ? val_of(t->slots[i]) : NULL;
}

static void grow(ktab_t *t)
{
    size_t ncap = t->cap ? t->cap * 2 : MIN_CAP;
    kent_t **ns = xcalloc(ncap, sizeof *ns);
    for (size_t i = 0; i < t->cap; i++) {
        kent_t *e = t->slots[i];
        if (!e)
            continue;
        size_t j = e->hash & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = e;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
}

void *ktab_put(ktab_t *t, const void *key, size_t klen, uint64_t hash, bool *created)
{
    assert(klen <= UINT32_MAX);
    if ((t->count + 1) * 4 > t->cap * 3)
        grow(t);
    bool found;
    size_t i = find_slot(t, key, klen, hash, &found);
    if (created)
        *created = !found;
    if (found)
        return val_of(t->slots[i]);
    size_t n = sizeof(kent_t) + t->vsz + klen;
    kent_t *e = xmalloc(n);
    e->hash = hash;
    e->klen = (uint32_t)klen;
    e->koff = (uint32_t)t->vsz;
    memset(val_of(e), 0, t->vsz);
    if (klen)
        memcpy(key_of(t, e), key, klen);
    t->slots[i] = e;
    t->count++;
    t->bytes += alloc_size(n);
    return val_of(e);
}

/* Removes slot i and shifts the entries after it that probed past it back,
 * so every entry stays reachable from its home slot. */
static void remove_slot(ktab_t *t, size_t i)
{
    size_t mask = t->cap - 1;
    size_t j = i;
    t->slots[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        kent_t *e = t->slots[j];
        if (!e)
            break;
        size_t home = e->hash & mask;
        /* e may move to i when i lies cyclically in [home, j) */
        bool movable = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            t->slots[i] = e;
            t->slots[j] = NULL;
            i = j;
        }
    }
    t->count--;
}

void ktab_del(ktab_t *t, void *val)
{
    kent_t *e = ent_of(val);
    bool found;
    size_t i = find_slot(t, key_of(t, e), e->klen, e->hash, &found);
    assert(found && t->slots[i] == e);
    remove_slot(t, i);
    free_entry(t, e);
}

span_t ktab_key(const void *val)
{
    const kent_t *e = ent_of(val);
    return span_make((const char *)val + e->koff, e->klen);
}

size_t ktab_count(const ktab_t *t)
{
    return t->count;
}

void *ktab_next(const ktab_t *t, size_t *it)
{
    while (*it < t->cap) {
        kent_t *e = t->slots[(*it)++];
        if (e)
            return val_of(e);
    }
    return NULL;
}

size_t ktab_sweep(ktab_t *t, bool (*fn)(void *val, void *arg), void *arg)
{
    kent_t **victims = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < t->cap; i++) {
        kent_t *e = t->slots[i];
        if (!e || !fn(val_of(e), arg))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            victims = xreallocarray(victims, cap, sizeof *victims);
        }
        victims[n++] = e;
    }
    for (size_t k = 0; k < n; k++)
        ktab_del(t, val_of(victims[k]));
    free(victims);
    return n;
}

size_t ktab_memory(const ktab_t *t)
{
    return t->cap * sizeof(kent_t *) + t->bytes;
}

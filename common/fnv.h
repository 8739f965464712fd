/* fnv: the 64-bit FNV-1a hash. The bus shard key is its low byte over the
 * user id (the account id when there is no user), as "ev.%02x". */
#ifndef TOKMON_FNV_H
#define TOKMON_FNV_H

#include <stddef.h>
#include <stdint.h>

#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

/* Continues hash h over p[0..n), so a key in pieces needs no copy. */
static inline uint64_t fnv1a64_more(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= FNV64_PRIME;
    }
    return h;
}

static inline uint64_t fnv1a64(const void *p, size_t n)
{
    return fnv1a64_more(FNV64_OFFSET, p, n);
}

#endif

/* ktab: a hash table from byte-string keys to fixed-size values, the
 * aggregator's one container for users, accounts, budget scopes and rollup
 * cells. Each entry is one allocation holding its value and a copy of its
 * key; the table itself is an open-addressed array of entry pointers with
 * linear probing and backward-shift deletion, so a million entries cost the
 * entries plus 16 bytes each. Values are 8-byte aligned and stay at the same
 * address until deleted. One thread owns a table. */
#ifndef TOKMON_KTAB_H
#define TOKMON_KTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "span.h"

typedef struct ktab ktab_t;

/* A table of values of valsize bytes. free_val (may be NULL) releases what a
 * value owns (not the value itself) when it is deleted or the table is
 * destroyed. */
ktab_t *ktab_new(size_t valsize, void (*free_val)(void *val));
void ktab_destroy(ktab_t **t);

/* The hash every call takes: compute it once per key. */
uint64_t ktab_hash(const void *key, size_t klen);

/* The value of key, or NULL. */
void *ktab_get(const ktab_t *t, const void *key, size_t klen, uint64_t hash);

/* The value of key, created zero-filled when absent (*created says which;
 * created may be NULL). */
void *ktab_put(ktab_t *t, const void *key, size_t klen, uint64_t hash, bool *created);

/* Deletes the entry whose value is val (from ktab_get/ktab_put). Not during
 * ktab_next iteration: use ktab_sweep. */
void ktab_del(ktab_t *t, void *val);

/* The key of a value (valid while the entry lives). */
span_t ktab_key(const void *val);

size_t ktab_count(const ktab_t *t);

/* Iteration in table order: *it starts at 0; returns NULL at the end. The
 * table must not change meanwhile (values may). */
void *ktab_next(const ktab_t *t, size_t *it);

/* Calls fn for every value; the entries for which it returns true are
 * deleted. Returns how many were. */
size_t ktab_sweep(ktab_t *t, bool (*fn)(void *val, void *arg), void *arg);

/* Deletes every entry. */
void ktab_clear(ktab_t *t);

/* Bytes held: the slot array and the entries (without what values own). */
size_t ktab_memory(const ktab_t *t);

#endif

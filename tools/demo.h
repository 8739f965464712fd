/* demo: realistic made-up LLM traffic for `tokmon-emit --rate N`: many users
 * (a few heavy, most light), accounts and projects, a spread of providers and
 * models with their own token shapes (cache reads and writes, reasoning,
 * Gemini thoughts, the odd call over 200,000 input tokens), errors, latency,
 * and some events carrying the provider's own usage object. Deterministic for
 * a given seed. */
#ifndef TOKMON_DEMO_H
#define TOKMON_DEMO_H

#include <stdint.h>

#include "wire.h"

typedef struct demo demo_t;

demo_t *demo_new(uint64_t seed, unsigned users);
void demo_destroy(demo_t **d);

/* Fills e with the next event; its strings live in d until the next call. */
void demo_next(demo_t *d, wire_event_t *e, wire_format_t f);

#endif

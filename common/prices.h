/* prices: the model price table (DESIGN section 3). Loads the LiteLLM-style
 * JSON table with every rate read exactly from its decimal text (integer
 * units of 1e-24 USD per token), merges [price.NAME] overrides from the
 * config, canonicalises provider names through aliases, finds a model's
 * price (provider/model, then model of the same provider, then without a
 * date or version suffix, then the configured default) and computes a call's
 * cost in whole nano-dollars, rounded once, half to even. A loaded table is
 * immutable but for its lookup cache; one thread owns it. */
#ifndef TOKMON_PRICES_H
#define TOKMON_PRICES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "prices_fields.h"
#include "span.h"

#define PRICES_UNIT_SCALE 24 /* rates are integers of 1e-24 USD per token */
#define PRICES_TIER_TOKENS 200000

typedef struct prices prices_t;

typedef struct {
    char *key;            /* table key, e.g. "gpt-4o" or "gemini/gemini-2.5-pro" */
    char *provider;       /* canonical provider of the entry ("" for any) */
    unsigned __int128 rate[PRICE_NFIELDS];
    bool has[PRICE_NFIELDS];
} price_t;

typedef enum {
    PRICES_FOUND,   /* a table or override entry */
    PRICES_DEFAULT, /* [price.default] */
    PRICES_UNKNOWN, /* nothing: cost 0, counted as unpriced */
} prices_match_t;

/* Tokens of one call in their normalised meaning: input is all input (the
 * cache parts included), output all output (reasoning included). */
typedef struct {
    uint64_t input, cache_read, cache_write, cache_write_1h, output, reasoning;
} prices_tokens_t;

/* Loads the table at path and applies the overrides and provider aliases of
 * cfg (cfg->prices, cfg->collectd.provider_aliases). Returns NULL with a
 * reason in err. Entries of the table whose rates are not valid numbers are
 * skipped and counted (prices_skipped). */
prices_t *prices_load(const char *path, const cfg_t *cfg, char *err, size_t errcap);
/* The same from an in-memory table (name for messages). */
prices_t *prices_load_buf(const char *json, size_t len, const char *name, const cfg_t *cfg,
                          char *err, size_t errcap);
void prices_destroy(prices_t **p);

/* A short version of the table and overrides in force: a hash of their
 * bytes, 12 hex digits. */
const char *prices_version(const prices_t *p);
size_t prices_count(const prices_t *p);
size_t prices_skipped(const prices_t *p);

/* Canonical provider name: lower case, with the table's aliases applied
 * (the built-in ones, gcp.gemini → gemini, aws.bedrock → bedrock, x_ai → xai,
 * ..., and the config's provider_aliases); p NULL only lower-cases. Writes
 * into out; returns the length, or -1 when out is too small or the name
 * empty or too long. */
int prices_canon_provider(const prices_t *p, span_t provider, char *out, size_t cap);

/* Finds the price of model for canonical provider. *price is NULL for
 * PRICES_UNKNOWN. Results are cached. */
prices_match_t prices_lookup(prices_t *p, span_t provider, span_t model, const price_t **price);

/* The hot path's one step: the canonical provider and the price of
 * (provider as sent, model), from a bounded cache. *canon points into the
 * table and stays valid until the next call on it. Returns the match, or -1
 * when the provider name is empty or longer than 256 bytes. */
int prices_resolve(prices_t *p, span_t provider, span_t model, span_t *canon,
                   const price_t **price);

/* Cost of a call in nano-dollars (DESIGN section 3). Returns 0, or -1 when
 * the tokens are inconsistent (parts above their whole) or the cost does not
 * fit in int64. */
int prices_cost(const price_t *price, const prices_tokens_t *t, int64_t *nusd);

#endif

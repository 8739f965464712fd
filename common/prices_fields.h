/* prices_fields: the per-token rate fields tokmon reads from a price table
 * entry or a [price.NAME] config section, in the LiteLLM table's names.
 * X(enum suffix, field name). Included by prices.h and cfg.c so that the
 * list exists once. */
#ifndef TOKMON_PRICES_FIELDS_H
#define TOKMON_PRICES_FIELDS_H

#define PRICE_FIELDS(X)                                                              \
    X(INPUT, "input_cost_per_token")                                                 \
    X(OUTPUT, "output_cost_per_token")                                               \
    X(CACHE_READ, "cache_read_input_token_cost")                                     \
    X(CACHE_WRITE, "cache_creation_input_token_cost")                                \
    X(CACHE_WRITE_1H, "cache_creation_input_token_cost_above_1hr")                   \
    X(REASONING, "output_cost_per_reasoning_token")                                  \
    X(INPUT_200K, "input_cost_per_token_above_200k_tokens")                          \
    X(OUTPUT_200K, "output_cost_per_token_above_200k_tokens")                        \
    X(CACHE_READ_200K, "cache_read_input_token_cost_above_200k_tokens")              \
    X(CACHE_WRITE_200K, "cache_creation_input_token_cost_above_200k_tokens")         \
    X(CACHE_WRITE_1H_200K, "cache_creation_input_token_cost_above_1hr_above_200k_tokens") \
    X(REASONING_200K, "output_cost_per_reasoning_token_above_200k_tokens")

#define PRICE_FIELD_ENUM(e, n) PRICE_F_##e,
typedef enum { PRICE_FIELDS(PRICE_FIELD_ENUM) PRICE_NFIELDS } price_field_t;
#undef PRICE_FIELD_ENUM

#endif

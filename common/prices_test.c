/* prices_test: tests of common/prices against the real price table
 * (data/model_prices.json under $TOKMON_REPO, default "."; the Makefile
 * exports TOKMON_REPO as the repository root). Every expected cost below is
 * worked out by hand in its comment, from the table's rates, to the
 * nano-dollar: tokens x rate per bucket, the sum, then the one rounding.
 * Rates are quoted in nano-dollars per token (USD rate x 1e9: 2.5e-06 USD is
 * 2500 n$). Run one test alone with `prices_test NAME`. */
#include <errno.h>
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#if defined(__SANITIZE_ADDRESS__)
/* from the ASan runtime (its header, sanitizer/allocator_interface.h, is not
 * always installed) */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#include "cfg.h"
#include "prices.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static prices_t *g_table; /* the real table, no config */
static char g_path[4096];

static int load_real_table(void **state)
{
    (void)state;
    const char *repo = getenv("TOKMON_REPO");
    snprintf(g_path, sizeof g_path, "%s/data/model_prices.json", repo && *repo ? repo : ".");
    char err[512];
    g_table = prices_load(g_path, NULL, err, sizeof err);
    if (!g_table) {
        fprintf(stderr, "prices_test: %s\n", err);
        return -1;
    }
    return 0;
}

static int free_real_table(void **state)
{
    (void)state;
    prices_destroy(&g_table);
    return 0;
}

static cfg_t *cfg_from(const char *text)
{
    char err[2048];
    cfg_t *c = cfg_load_string(text, strlen(text), "test.ini", NULL, err, sizeof err);
    if (!c)
        fail_msg("config: %s", err);
    return c;
}

static prices_t *table_with(const char *cfgtext)
{
    cfg_t *c = cfg_from(cfgtext);
    char err[512];
    prices_t *p = prices_load(g_path, c, err, sizeof err);
    cfg_destroy(&c);
    if (!p)
        fail_msg("prices_load: %s", err);
    return p;
}

/* Canonicalises provider as a daemon does, then looks the model up. */
static prices_match_t lookup(prices_t *p, const char *provider, const char *model,
                             const price_t **price)
{
    char canon[300];
    int n = prices_canon_provider(p, span_cstr(provider), canon, sizeof canon);
    if (n < 0)
        fail_msg("provider '%s' does not canonicalise", provider);
    return prices_lookup(p, span_make(canon, (size_t)n), span_cstr(model), price);
}

static const price_t *must_find(prices_t *p, const char *provider, const char *model,
                                const char *want_key)
{
    const price_t *e = NULL;
    prices_match_t m = lookup(p, provider, model, &e);
    if (m != PRICES_FOUND || !e)
        fail_msg("%s / %s: not found (match %d)", provider, model, (int)m);
    if (strcmp(e->key, want_key) != 0)
        fail_msg("%s / %s: found '%s', want '%s'", provider, model, e->key, want_key);
    return e;
}

/* ---- the table itself ---------------------------------------------------- */

static void test_real_table_loads(void **state)
{
    (void)state;
    assert_true(prices_count(g_table) > 2000);
    assert_int_equal(prices_skipped(g_table), 0); /* every token rate in it is exact */
    const char *v = prices_version(g_table);
    assert_int_equal(strlen(v), 12);
    assert_int_equal(strspn(v, "0123456789abcdef"), 12);
    /* the same bytes give the same version */
    char err[256];
    prices_t *again = prices_load(g_path, NULL, err, sizeof err);
    assert_non_null(again);
    assert_string_equal(prices_version(again), v);
    assert_int_equal(prices_count(again), prices_count(g_table));
    prices_destroy(&again);
    assert_null(again);
    prices_destroy(&again);
}

static void test_real_rates_exact(void **state)
{
    (void)state;
    /* rates in units of 1e-24 USD per token, read from the decimal text */
    const price_t *e = must_find(g_table, "databricks", "databricks-gemini-2-5-flash",
                                 "databricks/databricks-gemini-2-5-flash");
    assert_true(e->rate[PRICE_F_INPUT] == (unsigned __int128)300019999999999960ULL); /* 3.0001999999999996e-07 */
    assert_true(e->rate[PRICE_F_OUTPUT] == (unsigned __int128)2499980000000000000ULL); /* 2.49998e-06 */
    assert_false(e->has[PRICE_F_CACHE_READ]);
    assert_string_equal(e->provider, "databricks");

    e = must_find(g_table, "anthropic", "claude-opus-4-1", "claude-opus-4-1");
    assert_true(e->has[PRICE_F_CACHE_WRITE_1H]);
    assert_true(e->rate[PRICE_F_CACHE_WRITE_1H] == (unsigned __int128)30000000000ULL * 1000000000ULL); /* 3e-05 */
    assert_true(e->rate[PRICE_F_CACHE_WRITE] == (unsigned __int128)18750000000ULL * 1000000000ULL); /* 1.875e-05 */

    e = must_find(g_table, "anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5");
    assert_false(e->has[PRICE_F_CACHE_WRITE_1H]); /* so 1 h writes fall back to input */
    assert_true(e->has[PRICE_F_INPUT_200K]);

    e = must_find(g_table, "gemini", "gemini-2.5-pro", "gemini/gemini-2.5-pro");
    assert_string_equal(e->provider, "gemini");
    e = must_find(g_table, "vertex_ai", "gemini-2.5-pro", "gemini-2.5-pro");
    assert_string_equal(e->provider, "vertex_ai"); /* "vertex_ai-language-models" */
}

/* ---- cost of real calls -------------------------------------------------- */

typedef struct {
    const char *name;
    const char *provider, *model, *key; /* key: the entry the lookup must find */
    prices_tokens_t t; /* normalised: input all input, output all output */
    int64_t want;      /* nano-dollars; -1: prices_cost must refuse */
} cost_case_t;

static const cost_case_t cost_cases[] = {
    /* OpenAI gpt-4o: input 2500, cache read 1250, output 10000 n$/token; no
     * cache-write or reasoning rate. usage: prompt_tokens 12345 (cached_tokens
     * 10240 of them), completion_tokens 678.
     *   uncached 12345 - 10240 = 2105 x 2500  =  5,262,500
     *   cache read         10240 x 1250       = 12,800,000
     *   output               678 x 10000      =  6,780,000
     *   sum                                   = 24,842,500 n$ ($0.0248425), exact */
    { "openai gpt-4o cached", "openai", "gpt-4o", "gpt-4o",
      { .input = 12345, .cache_read = 10240, .output = 678 }, 24842500 },
    /* OpenAI o3: input 2000, cache read 500, output 8000; no reasoning rate,
     * so reasoning is priced at the output rate. prompt 3000 (1024 cached),
     * completion 5000 of which reasoning_tokens 4200.
     *   uncached 3000 - 1024 = 1976 x 2000 =  3,952,000
     *   cache read      1024 x 500         =    512,000
     *   output 5000 - 4200 = 800 x 8000    =  6,400,000
     *   reasoning       4200 x 8000        = 33,600,000
     *   sum                                = 44,464,000 n$ */
    { "openai o3 reasoning", "openai", "o3", "o3",
      { .input = 3000, .cache_read = 1024, .output = 5000, .reasoning = 4200 }, 44464000 },
    /* OpenAI gpt-5: input 1250, cache read 125, output 10000. prompt 50000
     * (40000 cached), completion 2000 (1500 reasoning).
     *   uncached 10000 x 1250  = 12,500,000
     *   cache read 40000 x 125 =  5,000,000
     *   output 500 x 10000     =  5,000,000
     *   reasoning 1500 x 10000 = 15,000,000
     *   sum                    = 37,500,000 n$ */
    { "openai gpt-5 reasoning", "openai", "gpt-5", "gpt-5",
      { .input = 50000, .cache_read = 40000, .output = 2000, .reasoning = 1500 }, 37500000 },
    /* Anthropic claude-sonnet-4-5: input 3000, output 15000, cache read 300,
     * cache write (5 min) 3750, no 1 h rate: 1 h writes fall back to the
     * INPUT rate 3000 (DESIGN section 3). Anthropic usage: input_tokens 1200
     * (cache excluded), cache_read_input_tokens 30000, ephemeral_5m 2000,
     * ephemeral_1h 1000, output 800; normalised input = 1200 + 30000 + 2000 +
     * 1000 = 34200.
     *   uncached 1200 x 3000   =  3,600,000
     *   cache read 30000 x 300 =  9,000,000
     *   write 5m 2000 x 3750   =  7,500,000
     *   write 1h 1000 x 3000   =  3,000,000
     *   output 800 x 15000     = 12,000,000
     *   sum                    = 35,100,000 n$ */
    { "anthropic sonnet 4.5 cache 5m and 1h", "anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5",
      { .input = 34200, .cache_read = 30000, .cache_write = 2000, .cache_write_1h = 1000,
        .output = 800 }, 35100000 },
    /* Anthropic claude-opus-4-1: input 15000, output 75000, cache read 1500,
     * write 5m 18750, write 1h 30000 (cache_creation_input_token_cost_above_1hr).
     * input_tokens 500, cache read 20000, 5m 3000, 1h 4000 -> input 27500;
     * output 1000.
     *   uncached 500 x 15000     =   7,500,000
     *   cache read 20000 x 1500  =  30,000,000
     *   write 5m 3000 x 18750    =  56,250,000
     *   write 1h 4000 x 30000    = 120,000,000
     *   output 1000 x 75000      =  75,000,000
     *   sum                      = 288,750,000 n$ */
    { "anthropic opus 4.1 cache 5m and 1h", "anthropic", "claude-opus-4-1", "claude-opus-4-1",
      { .input = 27500, .cache_read = 20000, .cache_write = 3000, .cache_write_1h = 4000,
        .output = 1000 }, 288750000 },
    /* Gemini gemini-2.5-pro (gemini/): input 1250, output 10000, cache read
     * 125; no reasoning rate. usageMetadata: promptTokenCount 10000
     * (cachedContentTokenCount 4000 of them), candidatesTokenCount 1000,
     * thoughtsTokenCount 3000; thoughts are not in candidates, so normalised
     * output = 1000 + 3000 = 4000 with reasoning 3000.
     *   uncached 6000 x 1250    =  7,500,000
     *   cache read 4000 x 125   =    500,000
     *   output 1000 x 10000     = 10,000,000
     *   reasoning 3000 x 10000  = 30,000,000
     *   sum                     = 48,000,000 n$ */
    { "gemini 2.5 pro thoughts", "gemini", "gemini-2.5-pro", "gemini/gemini-2.5-pro",
      { .input = 10000, .cache_read = 4000, .output = 4000, .reasoning = 3000 }, 48000000 },
    /* Gemini gemini-2.5-flash (gemini/): input 300, output 2500, cache read
     * 30, output_cost_per_reasoning_token 2500. prompt 7777 (1111 cached),
     * candidates 333, thoughts 2222 -> output 2555, reasoning 2222.
     *   uncached 6666 x 300    = 1,999,800
     *   cache read 1111 x 30   =    33,330
     *   output 333 x 2500      =   832,500
     *   reasoning 2222 x 2500  = 5,555,000
     *   sum                    = 8,420,630 n$ */
    { "gemini 2.5 flash thoughts", "gemini", "gemini-2.5-flash", "gemini/gemini-2.5-flash",
      { .input = 7777, .cache_read = 1111, .output = 2555, .reasoning = 2222 }, 8420630 },
    /* Above 200,000 input tokens the _above_200k rates price the whole call.
     * gemini/gemini-2.5-pro tier: input 2500, output 15000, cache read 250;
     * reasoning falls back to the tier's output rate 15000. input 250000
     * (50000 cached), output 2000 (1000 reasoning).
     *   uncached 200000 x 2500  = 500,000,000
     *   cache read 50000 x 250  =  12,500,000
     *   output 1000 x 15000     =  15,000,000
     *   reasoning 1000 x 15000  =  15,000,000
     *   sum                     = 542,500,000 n$ */
    { "gemini 2.5 pro above 200k", "gemini", "gemini-2.5-pro", "gemini/gemini-2.5-pro",
      { .input = 250000, .cache_read = 50000, .output = 2000, .reasoning = 1000 }, 542500000 },
    /* Exactly 200,000 is not above: base rates.
     *   uncached 150000 x 1250  = 187,500,000
     *   cache read 50000 x 125  =   6,250,000
     *   output 1000 x 10000     =  10,000,000
     *   reasoning 1000 x 10000  =  10,000,000
     *   sum                     = 213,750,000 n$ */
    { "gemini 2.5 pro exactly 200k", "gemini", "gemini-2.5-pro", "gemini/gemini-2.5-pro",
      { .input = 200000, .cache_read = 50000, .output = 2000, .reasoning = 1000 }, 213750000 },
    /* One more token and the whole call moves to the tier.
     *   uncached 150001 x 2500  = 375,002,500
     *   cache read 50000 x 250  =  12,500,000
     *   output 1000 x 15000     =  15,000,000
     *   reasoning 1000 x 15000  =  15,000,000
     *   sum                     = 417,502,500 n$ */
    { "gemini 2.5 pro 200001", "gemini", "gemini-2.5-pro", "gemini/gemini-2.5-pro",
      { .input = 200001, .cache_read = 50000, .output = 2000, .reasoning = 1000 }, 417502500 },
    /* claude-sonnet-4-5 above 200k: input 6000, output 22500, cache read 600,
     * write 5m 7500; no 1 h rate at either tier: the tier's input rate 6000.
     * input_tokens 10000 + cache read 180000 + 5m 5000 + 1h 6000 = 201000.
     *   uncached 10000 x 6000    =  60,000,000
     *   cache read 180000 x 600  = 108,000,000
     *   write 5m 5000 x 7500     =  37,500,000
     *   write 1h 6000 x 6000     =  36,000,000
     *   output 1000 x 22500      =  22,500,000
     *   sum                      = 264,000,000 n$ */
    { "anthropic sonnet 4.5 above 200k", "anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5",
      { .input = 201000, .cache_read = 180000, .cache_write = 5000, .cache_write_1h = 6000,
        .output = 1000 }, 264000000 },
    /* ... and at exactly 200000 (cache included) the base rates:
     *   uncached 25000 x 3000    =  75,000,000
     *   cache read 100000 x 300  =  30,000,000
     *   write 5m 50000 x 3750    = 187,500,000
     *   write 1h 25000 x 3000    =  75,000,000
     *   output 10 x 15000        =     150,000
     *   sum                      = 367,650,000 n$ */
    { "anthropic sonnet 4.5 exactly 200k", "anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5",
      { .input = 200000, .cache_read = 100000, .cache_write = 50000, .cache_write_1h = 25000,
        .output = 10 }, 367650000 },
    /* Vertex gemini-2.5-pro has a cache-write rate only in its tier (2.5e-07
     * = 250). Above 200k: input 2500; 300000 input, 100000 written.
     *   uncached 200000 x 2500  = 500,000,000
     *   write 100000 x 250      =  25,000,000
     *   sum                     = 525,000,000 n$ */
    { "vertex gemini 2.5 pro tier-only cache write, above", "vertex_ai", "gemini-2.5-pro",
      "gemini-2.5-pro", { .input = 300000, .cache_write = 100000 }, 525000000 },
    /* Below the tier the write falls back to the base input rate 1250.
     *   uncached 50000 x 1250  = 62,500,000
     *   write 50000 x 1250     = 62,500,000
     *   sum                    = 125,000,000 n$ */
    { "vertex gemini 2.5 pro tier-only cache write, below", "vertex_ai", "gemini-2.5-pro",
      "gemini-2.5-pro", { .input = 100000, .cache_write = 50000 }, 125000000 },
    /* Rounding, once, half to even. cohere command-r7b-12-2024: input 150,
     * output 37.5 n$/token (3.75e-08).
     *   1 output token: 37.5 -> 38 (37 is odd: up to even) */
    { "half up to even", "cohere", "command-r7b-12-2024", "command-r7b-12-2024",
      { .output = 1 }, 38 },
    /*   3 output tokens: 3 x 37.5 = 112.5 -> 112 (even: down) */
    { "half down to even", "cohere", "command-r7b-12-2024", "command-r7b-12-2024",
      { .output = 3 }, 112 },
    /*   1 in + 1 out: 150 + 37.5 = 187.5 -> 188 */
    { "half up, two buckets", "cohere_chat", "command-r7b-12-2024", "command-r7b-12-2024",
      { .input = 1, .output = 1 }, 188 },
    /*   1 in + 3 out: 150 + 112.5 = 262.5 -> 262 */
    { "half down, two buckets", "cohere", "command-r7b-12-2024", "command-r7b-12-2024",
      { .input = 1, .output = 3 }, 262 },
    /* vertex gemini-2.0-flash-001: input 150, cache read 37.5.
     *   2 input, 1 of them cached: 1 x 150 + 1 x 37.5 = 187.5 -> 188 */
    { "half in a cache read", "vertex_ai", "gemini-2.0-flash-001", "gemini-2.0-flash-001",
      { .input = 2, .cache_read = 1 }, 188 },
    /* fireworks flux-1-dev-fp8: input 0.5 n$/token (5e-10).
     *   1 token: 0.5 -> 0 (even); 3 tokens: 1.5 -> 2 (even) */
    { "half to zero", "fireworks_ai", "accounts/fireworks/models/flux-1-dev-fp8",
      "fireworks_ai/accounts/fireworks/models/flux-1-dev-fp8", { .input = 1 }, 0 },
    { "one and a half to two", "fireworks_ai", "accounts/fireworks/models/flux-1-dev-fp8",
      "fireworks_ai/accounts/fireworks/models/flux-1-dev-fp8", { .input = 3 }, 2 },
    /* A rate with many digits: databricks-gemini-2-5-flash input
     * 3.0001999999999996e-07 = 300.01999999999996 n$/token, output 2.49998e-06
     * = 2499.98 n$/token.
     *   1 token:   300.01999999999996          -> 300
     *   75 tokens: 22501.49999999999700 (just below the half) -> 22501
     *              (the rounded rate 3.0002e-07 would give 22501.5 -> 22502)
     *   1e6 tokens: 300019999.99999996         -> 300,020,000
     *   75 in + 1 out: 22501.499999999997 + 2499.98 = 25001.479999999997 -> 25001 */
    { "many digits, 1", "databricks", "databricks-gemini-2-5-flash",
      "databricks/databricks-gemini-2-5-flash", { .input = 1 }, 300 },
    { "many digits, 75", "databricks", "databricks-gemini-2-5-flash",
      "databricks/databricks-gemini-2-5-flash", { .input = 75 }, 22501 },
    { "many digits, 1e6", "databricks", "databricks-gemini-2-5-flash",
      "databricks/databricks-gemini-2-5-flash", { .input = 1000000 }, 300020000 },
    { "many digits, in and out", "databricks", "databricks-gemini-2-5-flash",
      "databricks/databricks-gemini-2-5-flash", { .input = 75, .output = 1 }, 25001 },
    /* nothing used costs nothing */
    { "zero tokens", "openai", "gpt-4o", "gpt-4o", { 0 }, 0 },
    /* all input from cache: 1000 x 1250 = 1,250,000 */
    { "all cached", "openai", "gpt-4o", "gpt-4o", { .input = 1000, .cache_read = 1000 }, 1250000 },
    /* all output is reasoning: 100 x 8000 = 800,000 */
    { "all reasoning", "openai", "o3", "o3", { .output = 100, .reasoning = 100 }, 800000 },
    /* Inconsistent tokens are refused, not priced. */
    { "cache read above input", "openai", "gpt-4o", "gpt-4o",
      { .input = 10, .cache_read = 11 }, -1 },
    { "cache write above input", "anthropic", "claude-opus-4-1", "claude-opus-4-1",
      { .input = 10, .cache_write = 11 }, -1 },
    { "1h write above input", "anthropic", "claude-opus-4-1", "claude-opus-4-1",
      { .input = 10, .cache_write_1h = 11 }, -1 },
    { "cache parts together above input", "anthropic", "claude-opus-4-1", "claude-opus-4-1",
      { .input = 10, .cache_read = 4, .cache_write = 4, .cache_write_1h = 3 }, -1 },
    { "reasoning above output", "openai", "o3", "o3", { .output = 5, .reasoning = 6 }, -1 },
    { "input beyond 2^40", "openai", "gpt-4o", "gpt-4o", { .input = (1ULL << 40) + 1 }, -1 },
    { "output beyond 2^40", "openai", "gpt-4o", "gpt-4o", { .output = (1ULL << 40) + 1 }, -1 },
    { "wrapping cache parts", "openai", "gpt-4o", "gpt-4o",
      { .input = 1ULL << 63, .cache_read = 1ULL << 63, .cache_write = 1ULL << 63,
        .cache_write_1h = 1ULL << 63 }, -1 },
    /* 2^40 tokens each way at opus rates still fits in int64:
     *   1099511627776 x 15000 = 16,492,674,416,640,000
     *   1099511627776 x 75000 = 82,463,372,083,200,000
     *   sum                   = 98,956,046,499,840,000 n$ */
    { "2^40 tokens fit", "anthropic", "claude-opus-4-1", "claude-opus-4-1",
      { .input = 1ULL << 40, .output = 1ULL << 40 }, 98956046499840000LL },
};

static void test_cost_real_calls(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(cost_cases); i++) {
        const cost_case_t *c = &cost_cases[i];
        const price_t *e = must_find(g_table, c->provider, c->model, c->key);
        int64_t got = -12345;
        int rc = prices_cost(e, &c->t, &got);
        if (c->want < 0) {
            if (rc != -1)
                fail_msg("%s: priced at %lld, want a refusal", c->name, (long long)got);
            assert_int_equal(got, -12345); /* not written */
            continue;
        }
        if (rc != 0)
            fail_msg("%s: refused, want %lld", c->name, (long long)c->want);
        if (got != c->want)
            fail_msg("%s: %lld n$, want %lld", c->name, (long long)got, (long long)c->want);
    }
}

/* ---- overrides and config ------------------------------------------------ */

static const char override_cfg[] =
    "[collectd]\n"
    "provider_aliases = corp-openai=openai, Google=Vertex_AI\n"
    "[price.gpt-4o]\n"                       /* one rate over the table entry */
    "output_cost_per_token = 1.2e-05\n"
    "[price.gemini/gemini-2.5-flash]\n"
    "output_cost_per_reasoning_token = 3.5e-06\n"
    "[price.acme/x]\n"                       /* a model the table does not have */
    "litellm_provider = acme\n"
    "input_cost_per_token = 0.000001\n"
    "output_cost_per_token = 0.000004\n"
    "[price.default]\n"
    "input_cost_per_token = 1e-06\n"
    "output_cost_per_token = 3e-06\n";

static void test_overrides(void **state)
{
    (void)state;
    prices_t *p = table_with(override_cfg);
    assert_int_equal(prices_count(p), prices_count(g_table) + 1);
    assert_string_not_equal(prices_version(p), prices_version(g_table));

    /* gpt-4o: output 12000 from the override; input 2500 and cache read 1250
     * stay from the table. The first call of test_cost_real_calls:
     *   5,262,500 + 12,800,000 + 678 x 12000 (8,136,000) = 26,198,500 n$ */
    const price_t *e = must_find(p, "openai", "gpt-4o", "gpt-4o");
    prices_tokens_t t = { .input = 12345, .cache_read = 10240, .output = 678 };
    int64_t n;
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 26198500);
    assert_string_equal(e->provider, "openai");

    /* gemini-2.5-flash with reasoning at 3500 instead of 2500:
     *   1,999,800 + 33,330 + 832,500 + 2222 x 3500 (7,777,000) = 10,642,630 n$ */
    e = must_find(p, "gemini", "gemini-2.5-flash", "gemini/gemini-2.5-flash");
    t = (prices_tokens_t){ .input = 7777, .cache_read = 1111, .output = 2555, .reasoning = 2222 };
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 10642630);

    /* the new entry: 1000 x 1000 + 500 x 4000 = 3,000,000 n$ */
    e = must_find(p, "acme", "x", "acme/x");
    assert_string_equal(e->provider, "acme");
    t = (prices_tokens_t){ .input = 1000, .output = 500 };
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 3000000);

    /* anything else: the default, 100 x 1000 + 10 x 3000 = 130,000 n$ */
    const price_t *d = NULL;
    assert_int_equal(lookup(p, "nobody", "nothing", &d), PRICES_DEFAULT);
    assert_non_null(d);
    assert_string_equal(d->key, "default");
    t = (prices_tokens_t){ .input = 100, .output = 10 };
    assert_int_equal(prices_cost(d, &t, &n), 0);
    assert_int_equal(n, 130000);
    /* the default also answers names too long to look up */
    char longname[400];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(prices_lookup(p, SPAN_LIT("openai"), span_cstr(longname), &d), PRICES_DEFAULT);
    assert_ptr_not_equal(d, NULL);
    assert_int_equal(prices_lookup(p, SPAN_LIT("openai"), SPAN_LIT(""), &d), PRICES_DEFAULT);

    /* config aliases, lower-cased, and winning over the built-in ones */
    char canon[64];
    assert_int_equal(prices_canon_provider(p, SPAN_LIT("corp-openai"), canon, sizeof canon), 6);
    assert_string_equal(canon, "openai");
    assert_int_equal(prices_canon_provider(p, SPAN_LIT("GOOGLE"), canon, sizeof canon), 9);
    assert_string_equal(canon, "vertex_ai");
    assert_int_equal(prices_canon_provider(g_table, SPAN_LIT("google"), canon, sizeof canon), 6);
    assert_string_equal(canon, "gemini");
    must_find(p, "corp-openai", "gpt-4o", "gpt-4o");
    prices_destroy(&p);

    /* the unchanged table keeps its own rates */
    e = must_find(g_table, "openai", "gpt-4o", "gpt-4o");
    t = (prices_tokens_t){ .input = 12345, .cache_read = 10240, .output = 678 };
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 24842500);
}

static void test_version_follows_overrides(void **state)
{
    (void)state;
    prices_t *a = table_with("[price.gpt-4o]\noutput_cost_per_token = 1.2e-05\n");
    prices_t *a2 = table_with("[price.gpt-4o]\noutput_cost_per_token = 1.2e-05\n");
    prices_t *b = table_with("[price.gpt-4o]\noutput_cost_per_token = 1.3e-05\n");
    prices_t *c = table_with("[price.gpt-4o]\ninput_cost_per_token = 1.2e-05\n");
    prices_t *d = table_with("[price.gpt-4o]\noutput_cost_per_token = 1.2e-05\n"
                             "litellm_provider = openai\n");
    prices_t *none = table_with("");
    assert_string_equal(prices_version(a), prices_version(a2));
    assert_string_not_equal(prices_version(a), prices_version(b));
    assert_string_not_equal(prices_version(a), prices_version(c));
    assert_string_not_equal(prices_version(a), prices_version(d));
    assert_string_not_equal(prices_version(a), prices_version(g_table));
    assert_string_equal(prices_version(none), prices_version(g_table));
    /* and a different table gives a different version */
    const char *t1 = "{\"m\": {\"input_cost_per_token\": 1e-06, \"output_cost_per_token\": 2e-06}}";
    const char *t2 = "{\"m\": {\"input_cost_per_token\": 1e-06, \"output_cost_per_token\": 3e-06}}";
    char err[256];
    prices_t *x = prices_load_buf(t1, strlen(t1), "t1", NULL, err, sizeof err);
    prices_t *y = prices_load_buf(t2, strlen(t2), "t2", NULL, err, sizeof err);
    assert_non_null(x);
    assert_non_null(y);
    assert_string_not_equal(prices_version(x), prices_version(y));
    prices_destroy(&x);
    prices_destroy(&y);
    prices_destroy(&a);
    prices_destroy(&a2);
    prices_destroy(&b);
    prices_destroy(&c);
    prices_destroy(&d);
    prices_destroy(&none);
}

typedef struct {
    const char *cfg;
    const char *want_err;
} bad_override_t;

static void test_bad_overrides(void **state)
{
    (void)state;
    static const bad_override_t cases[] = {
        { "[price.acme/y]\ninput_cost_per_token = 1e-06\n",
          "[price.acme/y] is not in the price table, so it needs input_cost_per_token and "
          "output_cost_per_token" },
        { "[price.default]\ncache_read_input_token_cost = 1e-06\n",
          "[price.default] needs input_cost_per_token or output_cost_per_token" },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        cfg_t *c = cfg_from(cases[i].cfg);
        char err[512];
        prices_t *p = prices_load(g_path, c, err, sizeof err);
        cfg_destroy(&c);
        if (p) {
            prices_destroy(&p);
            fail_msg("%s: loaded, want an error", cases[i].cfg);
        }
        if (!strstr(err, cases[i].want_err))
            fail_msg("%s: error \"%s\", want \"%s\"", cases[i].cfg, err, cases[i].want_err);
    }
}

static void test_cost_overflow(void **state)
{
    (void)state;
    /* $1 a token, in the range of rates; INT64_MAX n$ is 9,223,372,036.854775807
     * dollars, so 9,223,372,036 tokens fit and one more does not */
    prices_t *p = table_with("[price.dear]\ninput_cost_per_token = 1\noutput_cost_per_token = 1\n");
    const price_t *e = must_find(p, "anyone", "dear", "dear"); /* no provider: any matches */
    int64_t n = 0;
    prices_tokens_t t = { .input = 9223372036ULL };
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 9223372036000000000LL);
    t.input = 9223372037ULL;
    assert_int_equal(prices_cost(e, &t, &n), -1);
    t = (prices_tokens_t){ .input = 1ULL << 40, .output = 1ULL << 40 };
    assert_int_equal(prices_cost(e, &t, &n), -1);
    prices_destroy(&p);
}

/* ---- lookup -------------------------------------------------------------- */

typedef struct {
    const char *provider, *model;
    prices_match_t want;
    const char *key; /* the entry found */
} lookup_case_t;

static const lookup_case_t real_lookups[] = {
    /* provider/model first */
    { "gemini", "gemini-2.5-pro", PRICES_FOUND, "gemini/gemini-2.5-pro" },
    { "gemini", "gemini-2.0-flash-001", PRICES_FOUND, "gemini/gemini-2.0-flash-001" },
    { "azure", "gpt-4o", PRICES_FOUND, "azure/gpt-4o" },
    { "xai", "grok-4", PRICES_FOUND, "xai/grok-4" },
    /* then the model, when its provider matches */
    { "openai", "gpt-4o", PRICES_FOUND, "gpt-4o" },
    { "anthropic", "claude-sonnet-4-5", PRICES_FOUND, "claude-sonnet-4-5" },
    { "vertex_ai", "gemini-2.5-pro", PRICES_FOUND, "gemini-2.5-pro" },
    { "bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0", PRICES_FOUND,
      "anthropic.claude-sonnet-4-5-20250929-v1:0" }, /* table provider bedrock_converse */
    { "anthropic", "gpt-4o", PRICES_UNKNOWN, NULL },      /* another provider's model */
    { "openai", "claude-sonnet-4-5", PRICES_UNKNOWN, NULL },
    /* a model name already carrying its provider */
    { "gemini", "gemini/gemini-2.5-pro", PRICES_FOUND, "gemini/gemini-2.5-pro" },
    /* provider aliases: OpenTelemetry names and the like */
    { "gcp.gemini", "gemini-2.5-pro", PRICES_FOUND, "gemini/gemini-2.5-pro" },
    { "GCP.Gemini", "gemini-2.5-pro", PRICES_FOUND, "gemini/gemini-2.5-pro" },
    { "aws.bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0", PRICES_FOUND,
      "anthropic.claude-sonnet-4-5-20250929-v1:0" },
    { "x_ai", "grok-4", PRICES_FOUND, "xai/grok-4" },
    { "azure.ai.openai", "gpt-4o", PRICES_FOUND, "azure/gpt-4o" },
    { "OpenAI", "gpt-4o", PRICES_FOUND, "gpt-4o" },
    /* date and version suffixes */
    { "openai", "gpt-4o-2099-01-01", PRICES_FOUND, "gpt-4o" },
    { "openai", "gpt-4o-2024-08-06", PRICES_FOUND, "gpt-4o-2024-08-06" }, /* its own entry first */
    { "anthropic", "claude-sonnet-4-5@20990101", PRICES_FOUND, "claude-sonnet-4-5" },
    { "anthropic", "claude-opus-4-1-20990101", PRICES_FOUND, "claude-opus-4-1" },
    { "openai", "o3-latest", PRICES_FOUND, "o3" },
    { "gemini", "gemini-2.5-pro-001", PRICES_FOUND, "gemini/gemini-2.5-pro" },
    { "xai", "grok-4-latest", PRICES_FOUND, "xai/grok-4-latest" },
    { "anthropic", "gpt-4o-2099-01-01", PRICES_UNKNOWN, NULL },
    /* unknown */
    { "openai", "gpt-17-ultra", PRICES_UNKNOWN, NULL },
    { "acme", "x", PRICES_UNKNOWN, NULL },
    { "openai", "GPT-4O", PRICES_UNKNOWN, NULL }, /* model names are case-sensitive */
};

static void run_lookups(prices_t *p, const lookup_case_t *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const lookup_case_t *c = &cases[i];
        const price_t *e = (const price_t *)&e; /* must be overwritten */
        prices_match_t m = lookup(p, c->provider, c->model, &e);
        if (m != c->want)
            fail_msg("%s / %s: match %d, want %d", c->provider, c->model, (int)m, (int)c->want);
        if (c->key) {
            if (!e || strcmp(e->key, c->key) != 0)
                fail_msg("%s / %s: found '%s', want '%s'", c->provider, c->model,
                         e ? e->key : "(null)", c->key);
        } else if (m == PRICES_UNKNOWN && e != NULL) {
            fail_msg("%s / %s: unknown but price set", c->provider, c->model);
        }
    }
}

static void test_lookup_real(void **state)
{
    (void)state;
    run_lookups(g_table, real_lookups, ARRAY_LEN(real_lookups));
    /* and again, from the cache */
    run_lookups(g_table, real_lookups, ARRAY_LEN(real_lookups));
}

static const char synthetic[] =
    "{\n"
    "  \"sample_spec\": {\"litellm_provider\": \"x\", \"input_cost_per_token\": 0},\n"
    "  \"m\": {\"litellm_provider\": \"openai\", \"input_cost_per_token\": 1e-06,"
    " \"output_cost_per_token\": 2e-06},\n"
    "  \"llama\": {\"litellm_provider\": \"together_ai\", \"input_cost_per_token\": 1e-07,"
    " \"output_cost_per_token\": 1e-07},\n"
    "  \"llama-3\": {\"litellm_provider\": \"together_ai\", \"input_cost_per_token\": 2e-07,"
    " \"output_cost_per_token\": 2e-07},\n"
    "  \"nova\": {\"litellm_provider\": \"bedrock_converse\", \"input_cost_per_token\": 1e-07},\n"
    "  \"palm\": {\"litellm_provider\": \"vertex_ai-text-models\", \"output_cost_per_token\": 1e-07},\n"
    "  \"davinci\": {\"litellm_provider\": \"text-completion-openai\", \"input_cost_per_token\": 2e-06,"
    " \"output_cost_per_token\": 2e-06},\n"
    "  \"command\": {\"litellm_provider\": \"cohere_chat\", \"input_cost_per_token\": 1e-06,"
    " \"output_cost_per_token\": 2e-06},\n"
    "  \"anyone\": {\"input_cost_per_token\": 1e-06, \"output_cost_per_token\": 1e-06},\n"
    "  \"Mixed\": {\"litellm_provider\": \"OpenAI\", \"input_cost_per_token\": 1e-06,"
    " \"output_cost_per_token\": 1e-06},\n"
    "  \"image-only\": {\"litellm_provider\": \"openai\", \"input_cost_per_image\": 0.04},\n"
    "  \"nulls\": {\"litellm_provider\": \"openai\", \"input_cost_per_token\": 1e-06,"
    " \"output_cost_per_token\": null}\n"
    "}\n";

static const lookup_case_t suffix_lookups[] = {
    { "openai", "m", PRICES_FOUND, "m" },
    { "openai", "m-2024-08-06", PRICES_FOUND, "m" },
    { "openai", "m-20241022", PRICES_FOUND, "m" },
    { "openai", "m@20240620", PRICES_FOUND, "m" },
    { "openai", "m-latest", PRICES_FOUND, "m" },
    { "openai", "m@latest", PRICES_FOUND, "m" },
    { "openai", "m:0", PRICES_FOUND, "m" },
    { "openai", "m:12", PRICES_FOUND, "m" },
    { "openai", "m-v1", PRICES_FOUND, "m" },
    { "openai", "m-v2.1", PRICES_FOUND, "m" },
    { "openai", "m-001", PRICES_FOUND, "m" },
    { "openai", "m-0613", PRICES_FOUND, "m" },
    { "openai", "m-2024-08-06-v1:0", PRICES_FOUND, "m" }, /* several, one at a time */
    { "openai", "m-2", PRICES_UNKNOWN, NULL },             /* a model number, not a version */
    { "openai", "m-70", PRICES_UNKNOWN, NULL },
    { "openai", "m-70b", PRICES_UNKNOWN, NULL },
    { "openai", "m-v", PRICES_UNKNOWN, NULL },
    { "openai", "m-vx", PRICES_UNKNOWN, NULL },
    { "openai", "m-v1x", PRICES_UNKNOWN, NULL },
    { "openai", "m:latest", PRICES_UNKNOWN, NULL },
    { "openai", "m:abc", PRICES_UNKNOWN, NULL },
    { "openai", "m@v1", PRICES_UNKNOWN, NULL },
    { "openai", "m-2024-8-6", PRICES_UNKNOWN, NULL },
    { "openai", "m-latest-2", PRICES_UNKNOWN, NULL },
    { "openai", "mm-001", PRICES_UNKNOWN, NULL },
    { "openai", "-001", PRICES_UNKNOWN, NULL },
    { "openai", "001", PRICES_UNKNOWN, NULL },
    { "openai", ":0", PRICES_UNKNOWN, NULL },
    { "anthropic", "m-001", PRICES_UNKNOWN, NULL }, /* suffix or not, the provider must match */
    /* "llama-3-2" strips nothing ("-2" is a model number), "llama-3-001" → llama-3 */
    { "together_ai", "llama-3-2", PRICES_UNKNOWN, NULL },
    { "together", "llama-3-001", PRICES_FOUND, "llama-3" },
    { "together_ai", "llama-3-70b", PRICES_UNKNOWN, NULL },
    /* the table's provider names, canonicalised */
    { "bedrock", "nova", PRICES_FOUND, "nova" },
    { "amazon_bedrock", "nova-v1:0", PRICES_FOUND, "nova" },
    { "vertex_ai", "palm", PRICES_FOUND, "palm" },
    { "openai", "davinci", PRICES_FOUND, "davinci" },
    { "cohere", "command", PRICES_FOUND, "command" },
    { "cohere_chat", "command", PRICES_FOUND, "command" },
    { "openai", "Mixed", PRICES_FOUND, "Mixed" },
    /* an entry without a provider matches any */
    { "whoever", "anyone", PRICES_FOUND, "anyone" },
    { "whoever", "anyone-2099-01-01", PRICES_FOUND, "anyone" },
    /* entries without a token rate are not loaded; null rates are absent */
    { "openai", "image-only", PRICES_UNKNOWN, NULL },
    { "openai", "nulls", PRICES_FOUND, "nulls" },
    { "x", "sample_spec", PRICES_UNKNOWN, NULL },
};

static void test_lookup_suffixes(void **state)
{
    (void)state;
    char err[256];
    prices_t *p = prices_load_buf(synthetic, strlen(synthetic), "synthetic", NULL, err, sizeof err);
    if (!p)
        fail_msg("%s", err);
    assert_int_equal(prices_count(p), 10);
    assert_int_equal(prices_skipped(p), 0);
    run_lookups(p, suffix_lookups, ARRAY_LEN(suffix_lookups));
    run_lookups(p, suffix_lookups, ARRAY_LEN(suffix_lookups)); /* cached */
    const price_t *e = must_find(p, "openai", "nulls", "nulls");
    assert_true(e->has[PRICE_F_INPUT]);
    assert_false(e->has[PRICE_F_OUTPUT]);
    /* a missing output rate prices output at zero: 10 x 1000 + 10 x 0 */
    prices_tokens_t t = { .input = 10, .output = 10, .reasoning = 5 };
    int64_t n;
    assert_int_equal(prices_cost(e, &t, &n), 0);
    assert_int_equal(n, 10000);
    prices_destroy(&p);
}

typedef struct {
    const char *in;
    int want; /* length, or -1 */
    const char *out;
} canon_case_t;

static void test_canon_provider(void **state)
{
    (void)state;
    static const canon_case_t cases[] = {
        { "openai", 6, "openai" },
        { "OpenAI", 6, "openai" },
        { "gcp.gemini", 6, "gemini" },
        { "gcp.gen_ai", 6, "gemini" },
        { "gcp.vertex_ai", 9, "vertex_ai" },
        { "aws.bedrock", 7, "bedrock" },
        { "x_ai", 3, "xai" },
        { "azure.ai.openai", 5, "azure" },
        { "azure.ai.inference", 8, "azure_ai" },
        { "mistral_ai", 7, "mistral" },
        { "ibm.watsonx.ai", 7, "watsonx" },
        { "anthropic", 9, "anthropic" },
        { "", -1, NULL },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char out[64] = "untouched";
        int n = prices_canon_provider(g_table, span_cstr(cases[i].in), out, sizeof out);
        if (n != cases[i].want)
            fail_msg("canon(%s) = %d, want %d", cases[i].in, n, cases[i].want);
        if (n >= 0)
            assert_string_equal(out, cases[i].out);
    }
    /* without a table: lower case only (the aliases live in the table) */
    char low[64];
    assert_int_equal(prices_canon_provider(NULL, SPAN_LIT("OpenAI"), low, sizeof low), 6);
    assert_string_equal(low, "openai");
    char out[8];
    assert_int_equal(prices_canon_provider(g_table, SPAN_LIT("anthropic"), out, sizeof out), -1);
    assert_int_equal(prices_canon_provider(g_table, SPAN_LIT("aws.bedrock"), out, 7), -1);
    char big[300], wide[400];
    memset(big, 'a', 257);
    assert_int_equal(prices_canon_provider(g_table, span_make(big, 257), wide, sizeof wide), -1);
    assert_int_equal(prices_canon_provider(g_table, span_make(big, 256), wide, sizeof wide), 256);
}

/* Bytes the process has allocated now. */
static size_t heap_in_use(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().uordblks;
#endif
}

static void test_lookup_cache(void **state)
{
    (void)state;
    char err[256];
    prices_t *p = prices_load(g_path, NULL, err, sizeof err);
    assert_non_null(p);
    const price_t *a = NULL, *b = NULL;
    assert_int_equal(lookup(p, "openai", "gpt-4o-2099-01-01", &a), PRICES_FOUND);
    assert_int_equal(lookup(p, "openai", "gpt-4o-2099-01-01", &b), PRICES_FOUND);
    assert_ptr_equal(a, b);
    assert_string_equal(a->key, "gpt-4o");
    assert_int_equal(lookup(p, "openai", "nope", &a), PRICES_UNKNOWN);
    assert_null(a);
    assert_int_equal(lookup(p, "openai", "nope", &a), PRICES_UNKNOWN);
    assert_null(a);

    /* 100,000 distinct names: hostile traffic cannot grow the cache. Half
     * resolve through a suffix, half are unknown; every answer stays right. */
    size_t before = heap_in_use();
    const price_t *gpt4o = NULL;
    lookup(p, "openai", "gpt-4o", &gpt4o);
    for (int i = 0; i < 100000; i++) {
        char model[64];
        const price_t *e = NULL;
        if (i % 2) {
            snprintf(model, sizeof model, "gpt-4o-%08d", i); /* an 8-digit date-like suffix */
            if (lookup(p, "openai", model, &e) != PRICES_FOUND || e != gpt4o)
                fail_msg("%s: not gpt-4o", model);
        } else {
            snprintf(model, sizeof model, "unknown-model-%d-x", i);
            if (lookup(p, "openai", model, &e) != PRICES_UNKNOWN || e)
                fail_msg("%s: not unknown", model);
        }
    }
    size_t after = heap_in_use();
    /* unbounded, 100,000 keys of ~30 bytes would be 3 MB and more */
    if (after > before && after - before > (512u << 10))
        fail_msg("the lookup cache grew by %zu bytes over 100,000 names", after - before);
    /* earlier answers are still right after the cache has been cleared */
    run_lookups(p, real_lookups, ARRAY_LEN(real_lookups));
    assert_int_equal(lookup(p, "openai", "gpt-4o-2099-01-01", &b), PRICES_FOUND);
    assert_ptr_equal(b, gpt4o);
    prices_destroy(&p);
}

/* ---- broken tables ------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *json;
    const char *want_err; /* NULL: loads */
    size_t count, skipped;
} table_case_t;

static void test_broken_tables(void **state)
{
    (void)state;
    static const table_case_t cases[] = {
        { "empty", "", "not JSON", 0, 0 },
        { "not JSON", "{\"m\": {", "not JSON", 0, 0 },
        { "garbage", "model,price\ngpt-4o,1\n", "not JSON", 0, 0 },
        { "an array", "[{\"input_cost_per_token\": 1e-06}]", "is not a JSON object", 0, 0 },
        { "a string", "\"prices\"", "is not a JSON object", 0, 0 },
        { "a number", "42", "is not a JSON object", 0, 0 },
        { "too deep", "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
          "not JSON", 0, 0 },
        { "empty object", "{}", NULL, 0, 0 },
        { "a string rate",
          "{\"a\": {\"input_cost_per_token\": \"0.1\", \"output_cost_per_token\": 1e-06},"
          " \"b\": {\"input_cost_per_token\": 1e-06, \"output_cost_per_token\": 1e-06}}",
          NULL, 1, 1 },
        { "a boolean rate",
          "{\"a\": {\"input_cost_per_token\": true}, \"b\": {\"input_cost_per_token\": 1e-06}}",
          NULL, 1, 1 },
        { "a negative rate",
          "{\"a\": {\"input_cost_per_token\": -1e-06}, \"b\": {\"input_cost_per_token\": 1e-06}}",
          NULL, 1, 1 },
        { "a rate finer than 1e-24",
          "{\"a\": {\"output_cost_per_token\": 1e-25}, \"b\": {\"output_cost_per_token\": 1e-24}}",
          NULL, 1, 1 },
        { "a rate above $1.2 a token",
          "{\"a\": {\"input_cost_per_token\": 2}, \"b\": {\"input_cost_per_token\": 1.2}}",
          NULL, 1, 1 },
        { "a bad rate in a tier field",
          "{\"a\": {\"input_cost_per_token\": 1e-06,"
          " \"input_cost_per_token_above_200k_tokens\": [1]}}",
          NULL, 0, 1 },
        { "an entry that is not an object",
          "{\"a\": 5, \"b\": [1], \"c\": {\"input_cost_per_token\": 1e-06}}", NULL, 1, 2 },
        { "an empty key", "{\"\": {\"input_cost_per_token\": 1e-06}}", NULL, 0, 1 },
        { "no token rates (image, audio)",
          "{\"a\": {\"input_cost_per_image\": 0.04}, \"b\": {\"cache_read_input_token_cost\": 1e-07}}",
          NULL, 0, 0 },
        { "sample_spec is not an entry",
          "{\"sample_spec\": {\"input_cost_per_token\": \"text\"}}", NULL, 0, 0 },
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const table_case_t *c = &cases[i];
        char err[256] = "";
        prices_t *p = prices_load_buf(c->json, strlen(c->json), "t.json", NULL, err, sizeof err);
        if (c->want_err) {
            if (p) {
                prices_destroy(&p);
                fail_msg("%s: loaded, want an error", c->name);
            }
            if (!strstr(err, c->want_err) || strncmp(err, "t.json: ", 8) != 0)
                fail_msg("%s: error \"%s\", want \"t.json: ...%s\"", c->name, err, c->want_err);
            continue;
        }
        if (!p)
            fail_msg("%s: %s", c->name, err);
        if (prices_count(p) != c->count || prices_skipped(p) != c->skipped)
            fail_msg("%s: %zu loaded, %zu skipped; want %zu and %zu", c->name, prices_count(p),
                     prices_skipped(p), c->count, c->skipped);
        prices_destroy(&p);
    }
    char err[256];
    assert_null(prices_load("/nonexistent/model_prices.json", NULL, err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/model_prices.json"));
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_table_loads),
        cmocka_unit_test(test_real_rates_exact),
        cmocka_unit_test(test_cost_real_calls),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_version_follows_overrides),
        cmocka_unit_test(test_bad_overrides),
        cmocka_unit_test(test_cost_overflow),
        cmocka_unit_test(test_lookup_real),
        cmocka_unit_test(test_lookup_suffixes),
        cmocka_unit_test(test_canon_provider),
        cmocka_unit_test(test_lookup_cache),
        cmocka_unit_test(test_broken_tables),
    };
    if (argc > 1 && argv[1][0])
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("prices", tests, load_real_table, free_real_table);
}

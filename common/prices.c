#include "prices.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dec.h"
#include "fnv.h"
#include "jtok.h"
#include "xalloc.h"

#define MAX_NAME 256
#define CACHE_SLOTS 4096

typedef struct {
    char *from, *to;
} alias_t;

typedef struct {
    char *key; /* provider '\0' model, NULL when free */
    size_t keylen;
    uint64_t hash;
    prices_match_t match;
    const price_t *price;
} cache_slot_t;

typedef struct {
    char *provider, *model; /* as sent; NULL when free */
    uint32_t plen, mlen;
    uint64_t hash;
    char *canon;
    uint32_t canon_len;
    prices_match_t match;
    const price_t *price;
} resolve_slot_t;

struct prices {
    price_t *entries;
    size_t n, cap;
    size_t *index; /* open addressing over entries by key; SIZE_MAX = empty */
    size_t index_cap;
    price_t def;
    bool has_def;
    alias_t *aliases;
    size_t naliases;
    size_t *alias_index; /* open addressing over aliases by from; SIZE_MAX = empty */
    size_t alias_cap;
    char version[16];
    size_t skipped;
    cache_slot_t *cache;
    size_t cache_used;
    resolve_slot_t *rcache; /* (provider as sent, model) -> canonical provider, price */
    size_t rcache_used;
};

static const char *const field_names[] = {
#define NAME(e, n) n,
    PRICE_FIELDS(NAME)
#undef NAME
};

/* Provider names applications send (OpenTelemetry gen_ai.provider.name and
 * gen_ai.system values among them) → the table's provider names. */
static const char *const builtin_aliases[][2] = {
    { "gcp.gemini", "gemini" },        { "gcp.gen_ai", "gemini" },
    { "google", "gemini" },            { "google_ai_studio", "gemini" },
    { "gcp.vertex_ai", "vertex_ai" },  { "vertex", "vertex_ai" },
    { "aws.bedrock", "bedrock" },      { "aws_bedrock", "bedrock" },
    { "amazon_bedrock", "bedrock" },   { "azure.ai.openai", "azure" },
    { "az.ai.openai", "azure" },       { "azure_openai", "azure" },
    { "azure.ai.inference", "azure_ai" }, { "az.ai.inference", "azure_ai" },
    { "x_ai", "xai" },                 { "x.ai", "xai" },
    { "mistral_ai", "mistral" },       { "mistralai", "mistral" },
    { "ibm.watsonx.ai", "watsonx" },   { "cohere_chat", "cohere" },
    { "together", "together_ai" },     { "fireworks", "fireworks_ai" },
};

/* The table's provider field → canonical: "vertex_ai-language-models" →
 * "vertex_ai", "bedrock_converse" → "bedrock", "text-completion-openai" →
 * "openai". */
static char *table_provider(const char *s)
{
    if (!strncmp(s, "text-completion-", 16))
        s += 16;
    size_t n = strcspn(s, "-");
    char *out = xstrndup(s, n);
    if (!strcmp(out, "bedrock_converse") || !strcmp(out, "cohere_chat")) {
        out[strchr(out, '_') - out] = '\0';
    }
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

int prices_canon_provider(const prices_t *p, span_t in, char *out, size_t cap)
{
    if (in.len == 0 || in.len >= cap || in.len > MAX_NAME)
        return -1;
    for (size_t i = 0; i < in.len; i++) {
        char c = in.p[i];
        out[i] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    out[in.len] = '\0';
    if (p && p->alias_cap) {
        size_t h = (size_t)fnv1a64(out, in.len) & (p->alias_cap - 1);
        for (; p->alias_index[h] != SIZE_MAX; h = (h + 1) & (p->alias_cap - 1)) {
            const alias_t *a = &p->aliases[p->alias_index[h]];
            if (!strcmp(a->from, out)) {
                size_t n = strlen(a->to);
                if (n >= cap)
                    return -1;
                memcpy(out, a->to, n + 1);
                return (int)n;
            }
        }
    }
    return (int)in.len;
}

static void add_alias(prices_t *p, const char *from, size_t fromlen, const char *to)
{
    for (size_t i = 0; i < p->naliases; i++)
        if (strlen(p->aliases[i].from) == fromlen && !strncmp(p->aliases[i].from, from, fromlen))
            return; /* the first one wins: config aliases are added before the built-in ones */
    p->aliases = xreallocarray(p->aliases, p->naliases + 1, sizeof *p->aliases);
    alias_t *al = &p->aliases[p->naliases++];
    al->from = xstrndup(from, fromlen);
    al->to = xstrdup(to);
    for (char *c = al->from; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    for (char *c = al->to; *c; c++)
        *c = (char)tolower((unsigned char)*c);
}

/* An open-addressing index over the aliases, so that canonicalising a
 * provider costs one hash per record. */
static void alias_index_build(prices_t *p)
{
    for (size_t i = 0; i < sizeof builtin_aliases / sizeof builtin_aliases[0]; i++)
        add_alias(p, builtin_aliases[i][0], strlen(builtin_aliases[i][0]), builtin_aliases[i][1]);
    p->alias_cap = 16;
    while (p->alias_cap < p->naliases * 2)
        p->alias_cap *= 2;
    p->alias_index = xmalloc(p->alias_cap * sizeof *p->alias_index);
    memset(p->alias_index, 0xff, p->alias_cap * sizeof *p->alias_index);
    for (size_t i = 0; i < p->naliases; i++) {
        size_t h = (size_t)fnv1a64(p->aliases[i].from, strlen(p->aliases[i].from)) & (p->alias_cap - 1);
        while (p->alias_index[h] != SIZE_MAX)
            h = (h + 1) & (p->alias_cap - 1);
        p->alias_index[h] = i;
    }
}

/* ---- index -------------------------------------------------------------- */

static void index_build(prices_t *p)
{
    free(p->index);
    p->index_cap = 16;
    while (p->index_cap < p->n * 2)
        p->index_cap *= 2;
    p->index = xmalloc(p->index_cap * sizeof *p->index);
    memset(p->index, 0xff, p->index_cap * sizeof *p->index);
    for (size_t i = 0; i < p->n; i++) {
        const char *k = p->entries[i].key;
        size_t h = (size_t)fnv1a64(k, strlen(k)) & (p->index_cap - 1);
        while (p->index[h] != SIZE_MAX)
            h = (h + 1) & (p->index_cap - 1);
        p->index[h] = i;
    }
}

static price_t *find(const prices_t *p, const char *key, size_t len)
{
    if (!p->index_cap)
        return NULL;
    size_t h = (size_t)fnv1a64(key, len) & (p->index_cap - 1);
    while (p->index[h] != SIZE_MAX) {
        price_t *e = &p->entries[p->index[h]];
        if (strlen(e->key) == len && !memcmp(e->key, key, len))
            return e;
        h = (h + 1) & (p->index_cap - 1);
    }
    return NULL;
}

static price_t *find_linear(prices_t *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->entries[i].key, key))
            return &p->entries[i];
    return NULL;
}

static price_t *add_entry(prices_t *p, const char *key, const char *provider)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 1024;
        p->entries = xreallocarray(p->entries, p->cap, sizeof *p->entries);
    }
    price_t *e = &p->entries[p->n++];
    memset(e, 0, sizeof *e);
    e->key = xstrdup(key);
    e->provider = provider ? table_provider(provider) : xstrdup("");
    return e;
}

/* ---- loading ------------------------------------------------------------ */

static int parse_rate(const char *s, size_t n, unsigned __int128 *out)
{
    __int128 v;
    /* at most 2^80 units (about $1.21 a token) keeps every cost sum in 128 bits */
    if (dec_parse(s, n, PRICES_UNIT_SCALE, DEC_EXACT, &v) < 0 || v < 0 || (v >> 80) != 0)
        return -1;
    *out = (unsigned __int128)v;
    return 0;
}

static int load_table(prices_t *p, const char *json, size_t len, const char *name, char *err,
                       size_t errcap)
{
    jtok_err_t je;
    int ntok = jtok_parse(json, len, NULL, 0, 32, &je);
    if (ntok < 0) {
        snprintf(err, errcap, "%s: not JSON (%s at byte %zu)", name, jtok_strerror(je.code),
                 je.offset);
        return -1;
    }
    jtok_t *t = xmalloc((size_t)ntok * sizeof *t);
    if (jtok_parse(json, len, t, (size_t)ntok, 32, &je) < 0 || t[0].type != JTOK_OBJECT) {
        snprintf(err, errcap, "%s: the table is not a JSON object", name);
        free(t);
        return -1;
    }
    char key[MAX_NAME * 2], prov[MAX_NAME];
    int i = 1;
    for (uint32_t k = 0; k < t[0].size; k++) {
        int ki = i, vi = i + 1;
        i = (int)t[vi].next;
        if (jtok_str_decode(json, &t[ki], key, sizeof key) < 0 || t[vi].type != JTOK_OBJECT ||
            !strcmp(key, "sample_spec") || !key[0]) {
            if (strcmp(key, "sample_spec") != 0)
                p->skipped++;
            continue;
        }
        int pi = jtok_obj_get(json, t, vi, "litellm_provider");
        prov[0] = '\0';
        if (pi >= 0 && t[pi].type == JTOK_STRING)
            jtok_str_decode(json, &t[pi], prov, sizeof prov);
        price_t tmp = { 0 };
        bool ok = true, any = false;
        for (int f = 0; f < PRICE_NFIELDS; f++) {
            int fi = jtok_obj_get(json, t, vi, field_names[f]);
            if (fi < 0 || t[fi].type == JTOK_NULL)
                continue;
            if (t[fi].type != JTOK_NUMBER ||
                parse_rate(json + t[fi].start, t[fi].len, &tmp.rate[f]) < 0) {
                ok = false;
                break;
            }
            tmp.has[f] = true;
            any = true;
        }
        /* entries priced per image, second or character carry no token rate */
        if (!ok || !any || (!tmp.has[PRICE_F_INPUT] && !tmp.has[PRICE_F_OUTPUT])) {
            p->skipped += !ok;
            continue;
        }
        price_t *e = add_entry(p, key, prov);
        memcpy(e->rate, tmp.rate, sizeof e->rate);
        memcpy(e->has, tmp.has, sizeof e->has);
    }
    free(t);
    return 0;
}

static int apply_overrides(prices_t *p, const cfg_t *cfg, char *err, size_t errcap)
{
    for (size_t i = 0; i < cfg->nprices; i++) {
        const cfg_price_t *o = &cfg->prices[i];
        price_t *e;
        if (!strcmp(o->name, "default")) {
            e = &p->def;
            p->has_def = true;
            if (!e->key) {
                e->key = xstrdup("default");
                e->provider = xstrdup("");
            }
        } else if (!(e = find_linear(p, o->name))) {
            if (!o->rate[PRICE_F_INPUT] || !o->rate[PRICE_F_OUTPUT]) {
                snprintf(err, errcap,
                         "[price.%s] is not in the price table, so it needs input_cost_per_token "
                         "and output_cost_per_token",
                         o->name);
                return -1;
            }
            e = add_entry(p, o->name, o->litellm_provider);
        } else if (o->litellm_provider) {
            free(e->provider);
            e->provider = table_provider(o->litellm_provider);
        }
        for (int f = 0; f < PRICE_NFIELDS; f++) {
            if (!o->rate[f])
                continue;
            if (parse_rate(o->rate[f], strlen(o->rate[f]), &e->rate[f]) < 0) {
                snprintf(err, errcap, "[price.%s] %s: bad rate", o->name, field_names[f]);
                return -1;
            }
            e->has[f] = true;
        }
    }
    if (p->has_def && !p->def.has[PRICE_F_INPUT] && !p->def.has[PRICE_F_OUTPUT]) {
        snprintf(err, errcap, "[price.default] needs input_cost_per_token or output_cost_per_token");
        return -1;
    }
    return 0;
}

static void set_version(prices_t *p, const char *json, size_t len, const cfg_t *cfg)
{
    crypto_generichash_state st;
    unsigned char h[16];
    crypto_generichash_init(&st, NULL, 0, sizeof h);
    crypto_generichash_update(&st, (const unsigned char *)json, len);
    for (size_t i = 0; cfg && i < cfg->nprices; i++) {
        const cfg_price_t *o = &cfg->prices[i];
        crypto_generichash_update(&st, (const unsigned char *)o->name, strlen(o->name) + 1);
        for (int f = 0; f < PRICE_NFIELDS; f++) {
            const char *v = o->rate[f] ? o->rate[f] : "";
            crypto_generichash_update(&st, (const unsigned char *)v, strlen(v) + 1);
        }
        const char *lp = o->litellm_provider ? o->litellm_provider : "";
        crypto_generichash_update(&st, (const unsigned char *)lp, strlen(lp) + 1);
    }
    /* aliases decide which entry prices a call, so they are part of the version */
    for (size_t i = 0; cfg && i < cfg->collectd.provider_aliases.n; i++) {
        const char *a = cfg->collectd.provider_aliases.v[i];
        crypto_generichash_update(&st, (const unsigned char *)a, strlen(a) + 1);
    }
    crypto_generichash_final(&st, h, sizeof h);
    for (int i = 0; i < 6; i++)
        snprintf(p->version + 2 * i, 3, "%02x", h[i]);
}

prices_t *prices_load_buf(const char *json, size_t len, const char *name, const cfg_t *cfg,
                          char *err, size_t errcap)
{
    if (sodium_init() < 0) {
        snprintf(err, errcap, "libsodium failed to initialise");
        return NULL;
    }
    prices_t *p = xcalloc(1, sizeof *p);
    if (load_table(p, json, len, name, err, errcap) < 0)
        goto fail;
    if (cfg) {
        for (size_t i = 0; i < cfg->collectd.provider_aliases.n; i++) {
            const char *a = cfg->collectd.provider_aliases.v[i];
            const char *eq = strchr(a, '=');
            if (eq)
                add_alias(p, a, (size_t)(eq - a), eq + 1);
        }
        if (apply_overrides(p, cfg, err, errcap) < 0)
            goto fail;
    }
    index_build(p);
    alias_index_build(p);
    set_version(p, json, len, cfg);
    p->cache = xcalloc(CACHE_SLOTS, sizeof *p->cache);
    p->rcache = xcalloc(CACHE_SLOTS, sizeof *p->rcache);
    return p;
fail:
    prices_destroy(&p);
    return NULL;
}

prices_t *prices_load(const char *path, const cfg_t *cfg, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "price table %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            if (cap > (256u << 20)) {
                fclose(f);
                free(buf);
                snprintf(err, errcap, "price table %s: larger than 256 MiB", path);
                return NULL;
            }
            buf = xrealloc(buf, cap);
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        snprintf(err, errcap, "price table %s: read error", path);
        return NULL;
    }
    prices_t *p = prices_load_buf(buf, len, path, cfg, err, errcap);
    free(buf);
    return p;
}

static void rcache_clear(prices_t *p)
{
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        resolve_slot_t *r = &p->rcache[i];
        free(r->provider);
        free(r->model);
        free(r->canon);
        *r = (resolve_slot_t){ 0 };
    }
    p->rcache_used = 0;
}

static void cache_clear(prices_t *p)
{
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(p->cache[i].key);
        p->cache[i].key = NULL;
    }
    p->cache_used = 0;
}

void prices_destroy(prices_t **pp)
{
    prices_t *p = *pp;
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->entries[i].key);
        free(p->entries[i].provider);
    }
    free(p->entries);
    free(p->index);
    free(p->def.key);
    free(p->def.provider);
    for (size_t i = 0; i < p->naliases; i++) {
        free(p->aliases[i].from);
        free(p->aliases[i].to);
    }
    free(p->aliases);
    free(p->alias_index);
    if (p->cache)
        cache_clear(p);
    free(p->cache);
    if (p->rcache)
        rcache_clear(p);
    free(p->rcache);
    free(p);
    *pp = NULL;
}

const char *prices_version(const prices_t *p) { return p->version; }
size_t prices_count(const prices_t *p) { return p->n; }
size_t prices_skipped(const prices_t *p) { return p->skipped; }

/* ---- lookup ------------------------------------------------------------- */

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Removes one trailing date or version suffix from m[0..*len): ":0",
 * "-2024-08-06", "-20241022", "@20240620", "-v1", "-v2.1", "-latest",
 * "@latest", "-001", "-0613". Returns false when there is none. */
static bool strip_suffix(const char *m, size_t *len)
{
    size_t n = *len;
    /* -YYYY-MM-DD */
    if (n > 11 && m[n - 11] == '-' && all_digits(m + n - 10, 4) && m[n - 6] == '-' &&
        all_digits(m + n - 5, 2) && m[n - 3] == '-' && all_digits(m + n - 2, 2)) {
        *len = n - 11;
        return true;
    }
    size_t i = n;
    while (i > 0 && m[i - 1] != '-' && m[i - 1] != '@' && m[i - 1] != ':')
        i--;
    if (i == 0 || i == 1)
        return false;
    const char *seg = m + i;
    size_t sl = n - i;
    char sep = m[i - 1];
    bool strip = false;
    if (sep == ':')
        strip = all_digits(seg, sl);
    else if (sl == 6 && !strncmp(seg, "latest", 6))
        strip = true;
    else if (all_digits(seg, sl))
        strip = sl >= 3; /* -001, -0613, -20241022, @20240620; not -2 or -70 */
    else if (sep == '-' && sl >= 2 && seg[0] == 'v' && isdigit((unsigned char)seg[1])) {
        strip = true;
        for (size_t k = 1; k < sl; k++)
            if (!isdigit((unsigned char)seg[k]) && seg[k] != '.')
                strip = false;
    }
    if (!strip)
        return false;
    *len = i - 1;
    return true;
}

static bool provider_matches(const price_t *e, const char *prov)
{
    return !e->provider[0] || !strcmp(e->provider, prov);
}

static const price_t *lookup_uncached(const prices_t *p, const char *prov, size_t plen,
                                      const char *model, size_t mlen)
{
    char key[MAX_NAME * 2 + 2];
    size_t len = mlen;
    for (;;) {
        if (plen + 1 + len < sizeof key) {
            memcpy(key, prov, plen);
            key[plen] = '/';
            memcpy(key + plen + 1, model, len);
            const price_t *e = find(p, key, plen + 1 + len);
            if (e)
                return e;
        }
        const price_t *e = find(p, model, len);
        if (e && provider_matches(e, prov))
            return e;
        if (!strip_suffix(model, &len))
            return NULL;
    }
}

prices_match_t prices_lookup(prices_t *p, span_t provider, span_t model, const price_t **price)
{
    *price = NULL;
    if (provider.len == 0 || model.len == 0 || provider.len > MAX_NAME || model.len > MAX_NAME)
        goto miss;
    char key[MAX_NAME * 2 + 2];
    memcpy(key, provider.p, provider.len);
    key[provider.len] = '\0';
    memcpy(key + provider.len + 1, model.p, model.len);
    size_t klen = provider.len + 1 + model.len;
    uint64_t h = fnv1a64(key, klen);
    size_t slot = (size_t)h & (CACHE_SLOTS - 1);
    for (size_t probe = 0; probe < CACHE_SLOTS; probe++) {
        cache_slot_t *c = &p->cache[(slot + probe) & (CACHE_SLOTS - 1)];
        if (!c->key) {
            const price_t *e = lookup_uncached(p, key, provider.len, model.p, model.len);
            prices_match_t m = e ? PRICES_FOUND : p->has_def ? PRICES_DEFAULT : PRICES_UNKNOWN;
            if (!e && p->has_def)
                e = &p->def;
            if (p->cache_used >= CACHE_SLOTS / 2) {
                cache_clear(p); /* bounded: hostile model names cannot grow it */
                c = &p->cache[slot];
            }
            c->key = xstrndup(key, klen);
            c->keylen = klen;
            c->hash = h;
            c->match = m;
            c->price = e;
            p->cache_used++;
            *price = e;
            return m;
        }
        if (c->hash == h && c->keylen == klen && !memcmp(c->key, key, klen)) {
            *price = c->price;
            return c->match;
        }
    }
miss:
    if (p->has_def) {
        *price = &p->def;
        return PRICES_DEFAULT;
    }
    return PRICES_UNKNOWN;
}

int prices_resolve(prices_t *p, span_t provider, span_t model, span_t *canon,
                   const price_t **price)
{
    if (provider.len == 0 || provider.len > MAX_NAME || model.len > MAX_NAME)
        return -1;
    uint64_t h = fnv1a64_more(fnv1a64(provider.p, provider.len), "", 1);
    h = fnv1a64_more(h, model.p, model.len);
    size_t slot = (size_t)h & (CACHE_SLOTS - 1);
    for (size_t probe = 0; probe < CACHE_SLOTS; probe++) {
        resolve_slot_t *r = &p->rcache[(slot + probe) & (CACHE_SLOTS - 1)];
        if (!r->provider) {
            char c[MAX_NAME + 1];
            int cl = prices_canon_provider(p, provider, c, sizeof c);
            if (cl < 0)
                return -1;
            const price_t *e;
            prices_match_t m = prices_lookup(p, span_make(c, (size_t)cl), model, &e);
            if (p->rcache_used >= CACHE_SLOTS / 2) {
                rcache_clear(p); /* bounded: hostile names cannot grow it */
                r = &p->rcache[slot];
            }
            r->provider = xstrndup(provider.p, provider.len);
            r->plen = (uint32_t)provider.len;
            r->model = xstrndup(model.p, model.len);
            r->mlen = (uint32_t)model.len;
            r->hash = h;
            r->canon = xstrndup(c, (size_t)cl);
            r->canon_len = (uint32_t)cl;
            r->match = m;
            r->price = e;
            p->rcache_used++;
            *canon = span_make(r->canon, r->canon_len);
            *price = e;
            return (int)m;
        }
        if (r->hash == h && r->plen == provider.len && r->mlen == model.len &&
            !memcmp(r->provider, provider.p, provider.len) && !memcmp(r->model, model.p, model.len)) {
            *canon = span_make(r->canon, r->canon_len);
            *price = r->price;
            return (int)r->match;
        }
    }
    return -1; /* not reached: the cache is never more than half full */
}

/* ---- cost --------------------------------------------------------------- */

static bool has_rate(const price_t *e, price_field_t f) { return e->has[f]; }

/* The rate of one bucket: the >200k tier's own when the call is in it, else
 * the bucket's base rate, else the rate it falls back to (input for cache
 * writes and reads, output for reasoning), resolved the same way. */
static unsigned __int128 rate_of(const price_t *e, price_field_t base, price_field_t tier,
                                 bool above, price_field_t fb_base, price_field_t fb_tier)
{
    if (above && has_rate(e, tier))
        return e->rate[tier];
    if (has_rate(e, base))
        return e->rate[base];
    if (fb_base == base)
        return 0;
    return rate_of(e, fb_base, fb_tier, above, fb_base, fb_tier);
}

int prices_cost(const price_t *e, const prices_tokens_t *t, int64_t *nusd)
{
    if (t->cache_read > t->input || t->cache_write > t->input || t->cache_write_1h > t->input ||
        t->cache_read + t->cache_write + t->cache_write_1h > t->input || t->reasoning > t->output)
        return -1;
    bool tiered = false;
    for (int f = PRICE_F_INPUT_200K; f <= PRICE_F_REASONING_200K; f++)
        tiered |= e->has[f];
    bool above = tiered && t->input > PRICES_TIER_TOKENS;

    const unsigned __int128 in = rate_of(e, PRICE_F_INPUT, PRICE_F_INPUT_200K, above, PRICE_F_INPUT,
                                         PRICE_F_INPUT_200K);
    const unsigned __int128 out = rate_of(e, PRICE_F_OUTPUT, PRICE_F_OUTPUT_200K, above,
                                          PRICE_F_OUTPUT, PRICE_F_OUTPUT_200K);
    const unsigned __int128 cr = rate_of(e, PRICE_F_CACHE_READ, PRICE_F_CACHE_READ_200K, above,
                                         PRICE_F_INPUT, PRICE_F_INPUT_200K);
    const unsigned __int128 cw = rate_of(e, PRICE_F_CACHE_WRITE, PRICE_F_CACHE_WRITE_200K, above,
                                         PRICE_F_INPUT, PRICE_F_INPUT_200K);
    const unsigned __int128 cw1 = rate_of(e, PRICE_F_CACHE_WRITE_1H, PRICE_F_CACHE_WRITE_1H_200K,
                                          above, PRICE_F_INPUT, PRICE_F_INPUT_200K);
    const unsigned __int128 rs = rate_of(e, PRICE_F_REASONING, PRICE_F_REASONING_200K, above,
                                         PRICE_F_OUTPUT, PRICE_F_OUTPUT_200K);

    const uint64_t uncached = t->input - t->cache_read - t->cache_write - t->cache_write_1h;
    const uint64_t plain_out = t->output - t->reasoning;
    /* each product is below 2^40 tokens x 2^80 units; six fit in 128 bits */
    const uint64_t lim = 1ULL << 40;
    if (t->input > lim || t->output > lim)
        return -1;
    unsigned __int128 sum = (unsigned __int128)uncached * in + (unsigned __int128)t->cache_read * cr +
                            (unsigned __int128)t->cache_write * cw +
                            (unsigned __int128)t->cache_write_1h * cw1 +
                            (unsigned __int128)plain_out * out + (unsigned __int128)t->reasoning * rs;
    if (sum >> 126)
        return -1;
    __int128 n = dec_div_pow10_half_even((__int128)sum, PRICES_UNIT_SCALE - 9);
    if (n > INT64_MAX)
        return -1;
    *nusd = (int64_t)n;
    return 0;
}

#include "event.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "dec.h"
#include "tmtime.h"
#include "utf8.h"

/* ---- a value from either encoding --------------------------------------- */

typedef enum { V_ABSENT, V_NULL, V_BOOL, V_STR, V_NUM, V_UINT, V_INT, V_FLOAT, V_OBJ, V_ARR, V_OTHER } vkind_t;

typedef struct {
    vkind_t k;
    span_t s; /* V_STR: decoded text; V_NUM: a JSON number's text */
    uint64_t u;
    int64_t i;
    double f;
    bool b;
    int tok;    /* JSON containers: token index */
    mpr_t mp;   /* msgpack containers: reader at the first entry */
    uint32_t n; /* msgpack containers: entries */
} val_t;

typedef struct {
    bool json;
    const char *buf;
    const jtok_t *toks;
    scratch_t *scratch;
    reason_t err;
} src_t;

static char *scratch_alloc(scratch_t *s, size_t n)
{
    if (s->cap - s->len < n)
        return NULL;
    char *p = s->p + s->len;
    s->len += n;
    return p;
}

static bool str_ok(span_t s) { return memchr(s.p, '\0', s.len) == NULL; }

static reason_t json_val(src_t *src, int ti, val_t *v)
{
    const jtok_t *t = &src->toks[ti];
    memset(v, 0, sizeof *v);
    switch (t->type) {
    case JTOK_STRING:
        v->k = V_STR;
        if (!t->escaped) {
            v->s = span_make(src->buf + t->start, t->len);
        } else {
            char *out = scratch_alloc(src->scratch, (size_t)t->len + 1);
            if (!out)
                return REASON_BAD_FIELD;
            ssize_t n = jtok_str_decode(src->buf, t, out, (size_t)t->len + 1);
            if (n < 0)
                return REASON_BAD_JSON;
            src->scratch->len = (size_t)(out - src->scratch->p) + (size_t)n + 1;
            v->s = span_make(out, (size_t)n);
        }
        return REASON_NONE;
    case JTOK_NUMBER:
        v->k = V_NUM;
        v->s = span_make(src->buf + t->start, t->len);
        return REASON_NONE;
    case JTOK_TRUE:
    case JTOK_FALSE:
        v->k = V_BOOL;
        v->b = t->type == JTOK_TRUE;
        return REASON_NONE;
    case JTOK_NULL:
        v->k = V_NULL;
        return REASON_NONE;
    case JTOK_OBJECT:
        v->k = V_OBJ;
        v->tok = ti;
        return REASON_NONE;
    case JTOK_ARRAY:
        v->k = V_ARR;
        v->tok = ti;
        return REASON_NONE;
    }
    return REASON_BAD_JSON;
}

/* Skips count values at r. */
static int mp_skip_n(mpr_t *r, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++)
        if (mpr_skip(r, 8) < 0)
            return -1;
    return 0;
}

/* Reads one value at r into v; containers are skipped over, v keeps a reader
 * at their first entry. */
static reason_t mp_val(mpr_t *r, val_t *v)
{
    mpr_val_t m;
    memset(v, 0, sizeof *v);
    if (mpr_next(r, &m) < 0)
        return REASON_BAD_MSGPACK;
    switch (m.type) {
    case MPR_NIL:
        v->k = V_NULL;
        break;
    case MPR_BOOL:
        v->k = V_BOOL;
        v->b = m.b;
        break;
    case MPR_UINT:
        v->k = V_UINT;
        v->u = m.u;
        break;
    case MPR_INT:
        v->k = V_INT;
        v->i = m.i;
        break;
    case MPR_FLOAT:
        v->k = V_FLOAT;
        v->f = m.f;
        break;
    case MPR_STR:
        v->k = V_STR;
        v->s = span_make(m.s.len ? m.s.p : "", m.s.len);
        if (!utf8_valid(v->s.p, v->s.len))
            return REASON_BAD_UTF8;
        break;
    case MPR_MAP:
    case MPR_ARRAY:
        v->k = m.type == MPR_MAP ? V_OBJ : V_ARR;
        v->mp = *r;
        v->n = m.n;
        if (mp_skip_n(r, m.type == MPR_MAP ? (uint64_t)m.n * 2 : m.n) < 0)
            return REASON_BAD_MSGPACK;
        break;
    default:
        v->k = V_OTHER;
        break;
    }
    return REASON_NONE;
}

typedef reason_t (*member_fn)(src_t *src, span_t key, val_t *v, void *arg);

static reason_t obj_each(src_t *src, const val_t *obj, member_fn fn, void *arg)
{
    reason_t r;
    if (src->json) {
        const jtok_t *t = &src->toks[obj->tok];
        int i = obj->tok + 1;
        for (uint32_t k = 0; k < t->size; k++) {
            val_t kv, vv;
            if ((r = json_val(src, i, &kv)) != REASON_NONE)
                return r;
            if ((r = json_val(src, i + 1, &vv)) != REASON_NONE)
                return r;
            if ((r = fn(src, kv.s, &vv, arg)) != REASON_NONE)
                return r;
            i = (int)src->toks[i + 1].next;
        }
        return REASON_NONE;
    }
    mpr_t rd = obj->mp;
    for (uint32_t k = 0; k < obj->n; k++) {
        mpr_val_t key;
        val_t vv;
        if (mpr_next(&rd, &key) < 0)
            return REASON_BAD_MSGPACK;
        if (key.type != MPR_STR) {
            if (mpr_skip(&rd, 8) < 0)
                return REASON_BAD_MSGPACK;
            continue; /* a non-string key names no field */
        }
        if ((r = mp_val(&rd, &vv)) != REASON_NONE)
            return r;
        if ((r = fn(src, span_make(key.s.p, key.s.len), &vv, arg)) != REASON_NONE)
            return r;
    }
    return REASON_NONE;
}

/* ---- conversions -------------------------------------------------------- */

static reason_t as_tokens(const val_t *v, uint64_t *out, bool *set)
{
    __int128 x;
    switch (v->k) {
    case V_NULL:
        return REASON_NONE; /* null: not reported */
    case V_UINT:
        if (v->u > MSG_MAX_TOKENS)
            return REASON_TOKEN_OVERFLOW;
        *out = v->u;
        break;
    case V_INT:
        return REASON_BAD_VALUE;
    case V_FLOAT:
        if (!isfinite(v->f) || v->f < 0 || v->f != floor(v->f))
            return REASON_BAD_VALUE;
        if (v->f > (double)MSG_MAX_TOKENS)
            return REASON_TOKEN_OVERFLOW;
        *out = (uint64_t)v->f;
        break;
    case V_NUM:
        if (v->s.len && v->s.p[0] == '-')
            return REASON_BAD_VALUE;
        if (dec_parse(v->s.p, v->s.len, 0, DEC_EXACT, &x) < 0) /* fractional or huge */
            return errno == ERANGE ? REASON_TOKEN_OVERFLOW : REASON_BAD_VALUE;
        if (x < 0)
            return REASON_BAD_VALUE;
        if (x > (__int128)MSG_MAX_TOKENS)
            return REASON_TOKEN_OVERFLOW;
        *out = (uint64_t)x;
        break;
    default:
        return REASON_BAD_FIELD;
    }
    *set = true;
    return REASON_NONE;
}

/* A non-negative decimal in units of 10^-scale, at most max. */
static reason_t as_scaled(const val_t *v, int scale, int64_t max, int64_t *out)
{
    __int128 x;
    switch (v->k) {
    case V_UINT: {
        __int128 m = 1;
        for (int i = 0; i < scale; i++)
            m *= 10;
        if (v->u > (uint64_t)(max / m))
            return REASON_BAD_VALUE;
        x = (__int128)v->u * m;
        break;
    }
    case V_INT:
        return REASON_BAD_VALUE;
    case V_FLOAT:
        if (dec_from_double(v->f, scale, &x) < 0)
            return REASON_BAD_VALUE;
        break;
    case V_NUM:
        if (dec_parse(v->s.p, v->s.len, scale, DEC_HALF_EVEN, &x) < 0)
            return REASON_BAD_VALUE;
        break;
    default:
        return REASON_BAD_FIELD;
    }
    if (x < 0 || x > max)
        return REASON_BAD_VALUE;
    *out = (int64_t)x;
    return REASON_NONE;
}

/* A string field; integers are accepted for ids and kept as their digits. */
static reason_t as_str(src_t *src, const val_t *v, bool ids, span_t *out)
{
    switch (v->k) {
    case V_ABSENT:
    case V_NULL:
        *out = SPAN_NULL;
        return REASON_NONE;
    case V_STR:
        if (v->s.len > EVENT_MAX_STR || !str_ok(v->s))
            return REASON_BAD_FIELD;
        *out = v->s.len ? v->s : SPAN_NULL; /* "" is absent */
        return REASON_NONE;
    case V_NUM:
        if (!ids || memchr(v->s.p, '.', v->s.len) || memchr(v->s.p, 'e', v->s.len) ||
            memchr(v->s.p, 'E', v->s.len))
            return REASON_BAD_FIELD;
        *out = v->s;
        return REASON_NONE;
    case V_UINT:
    case V_INT: {
        if (!ids)
            return REASON_BAD_FIELD;
        char *p = scratch_alloc(src->scratch, 24);
        if (!p)
            return REASON_BAD_FIELD;
        int n = v->k == V_UINT ? snprintf(p, 24, "%llu", (unsigned long long)v->u)
                               : snprintf(p, 24, "%lld", (long long)v->i);
        *out = span_make(p, (size_t)n);
        return REASON_NONE;
    }
    default:
        return REASON_BAD_FIELD;
    }
}

/* ---- fields ------------------------------------------------------------- */

typedef enum {
    F_PROVIDER, F_MODEL, F_OPERATION, F_USER, F_ACCOUNT, F_PROJECT,
    F_INPUT, F_CACHE_READ, F_CACHE_WRITE, F_CACHE_WRITE_1H, F_OUTPUT, F_REASONING,
    F_LATENCY, F_TTFT, F_STATUS, F_HTTP_STATUS, F_ERROR_TYPE, F_COST, F_REQUEST_ID,
    F_RETRIES, F_TS, F_TAGS, F_USAGE, F_COUNT
} field_t;

typedef struct {
    const char *name;
    unsigned char len;
    unsigned char field;
    unsigned char prio; /* lower wins when several aliases are sent */
} alias_t;

#define A(n, f, p) { n, sizeof(n) - 1, f, p }
static const alias_t aliases[] = {
    A("provider", F_PROVIDER, 0), A("gen_ai.provider.name", F_PROVIDER, 1), A("gen_ai.system", F_PROVIDER, 2),
    A("model", F_MODEL, 0), A("gen_ai.response.model", F_MODEL, 1), A("gen_ai.request.model", F_MODEL, 2),
    A("operation", F_OPERATION, 0), A("op", F_OPERATION, 1), A("intent", F_OPERATION, 2),
    A("gen_ai.operation.name", F_OPERATION, 3),
    A("user", F_USER, 0), A("user_id", F_USER, 1),
    A("account", F_ACCOUNT, 0), A("api_key_id", F_ACCOUNT, 1), A("customer_id", F_ACCOUNT, 2),
    A("project", F_PROJECT, 0), A("project_id", F_PROJECT, 1), A("feature", F_PROJECT, 2),
    A("input_tokens", F_INPUT, 0), A("prompt_tokens", F_INPUT, 1), A("gen_ai.usage.input_tokens", F_INPUT, 2),
    A("cache_read_tokens", F_CACHE_READ, 0), A("cached_tokens", F_CACHE_READ, 1),
    A("cache_write_tokens", F_CACHE_WRITE, 0),
    A("cache_write_1h_tokens", F_CACHE_WRITE_1H, 0),
    A("output_tokens", F_OUTPUT, 0), A("completion_tokens", F_OUTPUT, 1),
    A("gen_ai.usage.output_tokens", F_OUTPUT, 2),
    A("reasoning_tokens", F_REASONING, 0),
    A("latency_ms", F_LATENCY, 0), A("duration_ms", F_LATENCY, 1),
    A("ttft_ms", F_TTFT, 0),
    A("status", F_STATUS, 0),
    A("http_status", F_HTTP_STATUS, 0),
    A("error_type", F_ERROR_TYPE, 0),
    A("cost_usd", F_COST, 0),
    A("request_id", F_REQUEST_ID, 0), A("correlation_id", F_REQUEST_ID, 1),
    A("retries", F_RETRIES, 0),
    A("ts", F_TS, 0),
    A("tags", F_TAGS, 0),
    A("usage", F_USAGE, 0),
};
#undef A
#define NALIASES (sizeof aliases / sizeof aliases[0])

/* Aliases grouped by length: a name is compared only with those of its
 * length (two or three), since this runs for every field and every tag. */
static unsigned char by_len[34][8]; /* alias indexes + 1, 0 ends a list */

static void by_len_init(void)
{
    for (size_t i = 0; i < NALIASES; i++) {
        unsigned char *slot = by_len[aliases[i].len];
        size_t k = 0;
        while (slot[k])
            k++;
        assert(k < 7);
        slot[k] = (unsigned char)(i + 1);
    }
}

static int find_alias(span_t key)
{
    if (key.len == 0 || key.len > 33)
        return -1;
    if (!by_len[8][0]) /* "provider" is always there once initialised */
        by_len_init();
    for (const unsigned char *slot = by_len[key.len]; *slot; slot++) {
        const alias_t *a = &aliases[*slot - 1];
        size_t k = 0; /* short names: an inline compare beats a call to memcmp */
        while (k < key.len && a->name[k] == key.p[k])
            k++;
        if (k == key.len)
            return *slot - 1;
    }
    return -1;
}

int event_dimension(span_t key)
{
    static const signed char dims[F_COUNT] = {
        [F_PROVIDER] = DIM_PROVIDER,   [F_MODEL] = DIM_MODEL,     [F_OPERATION] = DIM_OPERATION,
        [F_USER] = DIM_USER,           [F_ACCOUNT] = DIM_ACCOUNT, [F_PROJECT] = DIM_PROJECT,
        [F_STATUS] = DIM_STATUS,       [F_REQUEST_ID] = DIM_REQUEST_ID,
        [F_ERROR_TYPE] = DIM_ERROR_TYPE,
        [F_INPUT] = -1, [F_CACHE_READ] = -1, [F_CACHE_WRITE] = -1, [F_CACHE_WRITE_1H] = -1,
        [F_OUTPUT] = -1, [F_REASONING] = -1, [F_LATENCY] = -1, [F_TTFT] = -1,
        [F_HTTP_STATUS] = -1, [F_COST] = -1, [F_RETRIES] = -1, [F_TS] = -1, [F_TAGS] = -1,
        [F_USAGE] = -1,
    };
    int a = find_alias(key);
    return a < 0 ? -1 : dims[aliases[a].field];
}

typedef struct {
    val_t v[F_COUNT];
    int prio[F_COUNT]; /* -1: not sent */
    bool seen[NALIASES];
} fields_t;

static reason_t top_member(src_t *src, span_t key, val_t *v, void *arg)
{
    (void)src;
    fields_t *fs = arg;
    int a = find_alias(key);
    if (a < 0)
        return REASON_NONE; /* unknown fields are ignored */
    if (fs->seen[a])
        return REASON_BAD_FIELD; /* the same key twice */
    fs->seen[a] = true;
    int f = aliases[a].field;
    if (fs->prio[f] < 0 || aliases[a].prio < fs->prio[f]) {
        fs->prio[f] = aliases[a].prio;
        fs->v[f] = *v;
    }
    return REASON_NONE;
}

/* ---- provider usage objects --------------------------------------------- */

typedef enum {
    U_PROMPT, U_COMPLETION, U_PROMPT_CACHED, U_COMPLETION_REASONING, U_DEEPSEEK_HIT,
    U_INPUT, U_OUTPUT, U_INPUT_CACHED, U_OUTPUT_REASONING,
    U_CACHE_READ, U_CACHE_CREATION, U_EPH_5M, U_EPH_1H,
    U_G_PROMPT, U_G_CANDIDATES, U_G_CACHED, U_G_THOUGHTS, U_G_TOOL,
    U_COUNT
} ufield_t;

typedef struct {
    uint64_t v[U_COUNT];
    bool set[U_COUNT];
    int nested; /* which nested object is being read: 0 none */
} usage_t;

typedef struct {
    const char *name;
    int nest; /* 0 top, 1 prompt_tokens_details, 2 completion_tokens_details,
                 3 input_tokens_details, 4 output_tokens_details, 5 cache_creation */
    ufield_t f;
} ukey_t;

static const ukey_t ukeys[] = {
    { "prompt_tokens", 0, U_PROMPT },
    { "completion_tokens", 0, U_COMPLETION },
    { "prompt_cache_hit_tokens", 0, U_DEEPSEEK_HIT },
    { "cached_tokens", 1, U_PROMPT_CACHED },
    { "reasoning_tokens", 2, U_COMPLETION_REASONING },
    { "input_tokens", 0, U_INPUT },
    { "output_tokens", 0, U_OUTPUT },
    { "cached_tokens", 3, U_INPUT_CACHED },
    { "reasoning_tokens", 4, U_OUTPUT_REASONING },
    { "cache_read_input_tokens", 0, U_CACHE_READ },
    { "cache_creation_input_tokens", 0, U_CACHE_CREATION },
    { "ephemeral_5m_input_tokens", 5, U_EPH_5M },
    { "ephemeral_1h_input_tokens", 5, U_EPH_1H },
    { "promptTokenCount", 0, U_G_PROMPT },
    { "prompt_token_count", 0, U_G_PROMPT },
    { "candidatesTokenCount", 0, U_G_CANDIDATES },
    { "candidates_token_count", 0, U_G_CANDIDATES },
    { "cachedContentTokenCount", 0, U_G_CACHED },
    { "cached_content_token_count", 0, U_G_CACHED },
    { "thoughtsTokenCount", 0, U_G_THOUGHTS },
    { "thoughts_token_count", 0, U_G_THOUGHTS },
    { "toolUsePromptTokenCount", 0, U_G_TOOL },
    { "tool_use_prompt_token_count", 0, U_G_TOOL },
};

static const char *const nest_names[] = { NULL, "prompt_tokens_details", "completion_tokens_details",
                                          "input_tokens_details", "output_tokens_details",
                                          "cache_creation" };

static reason_t usage_member(src_t *src, span_t key, val_t *v, void *arg)
{
    usage_t *u = arg;
    if (u->nested == 0 && v->k == V_OBJ) {
        for (int n = 1; n <= 5; n++) {
            if (span_eq_cstr(key, nest_names[n])) {
                u->nested = n;
                reason_t r = obj_each(src, v, usage_member, u);
                u->nested = 0;
                return r;
            }
        }
        return REASON_NONE;
    }
    for (size_t i = 0; i < sizeof ukeys / sizeof ukeys[0]; i++) {
        if (ukeys[i].nest != u->nested || !span_eq_cstr(key, ukeys[i].name))
            continue;
        if (u->set[ukeys[i].f])
            return REASON_BAD_FIELD;
        bool set = false;
        reason_t r = as_tokens(v, &u->v[ukeys[i].f], &set);
        if (r != REASON_NONE)
            return r;
        u->set[ukeys[i].f] = set;
        return REASON_NONE;
    }
    return REASON_NONE;
}

typedef struct {
    uint64_t v[6]; /* input, cache_read, cache_write, cache_write_1h, output, reasoning */
    bool set[6];
} toks_t;

static void put(toks_t *t, int i, uint64_t v)
{
    t->v[i] = v;
    t->set[i] = true;
}

/* The provider's own counts in their own meaning → normalised buckets. */
static reason_t usage_normalise(const usage_t *u, toks_t *t)
{
    const uint64_t *v = u->v;
    const bool *s = u->set;
    uint64_t lim = MSG_MAX_TOKENS;
    if (s[U_G_PROMPT] || s[U_G_CANDIDATES] || s[U_G_THOUGHTS] || s[U_G_CACHED]) {
        /* Gemini: prompt includes cached content; candidates exclude thoughts */
        uint64_t in = v[U_G_PROMPT] + v[U_G_TOOL];
        uint64_t out = v[U_G_CANDIDATES] + v[U_G_THOUGHTS];
        if (in > lim || out > lim)
            return REASON_TOKEN_OVERFLOW;
        put(t, 0, in);
        put(t, 1, v[U_G_CACHED]);
        put(t, 4, out);
        put(t, 5, v[U_G_THOUGHTS]);
        return REASON_NONE;
    }
    if (s[U_CACHE_READ] || s[U_CACHE_CREATION] || s[U_EPH_5M] || s[U_EPH_1H]) {
        /* Anthropic: input_tokens excludes cache reads and writes */
        uint64_t cw5 = v[U_CACHE_CREATION], cw1 = 0;
        if (s[U_EPH_5M] || s[U_EPH_1H]) {
            cw5 = v[U_EPH_5M];
            cw1 = v[U_EPH_1H];
            if (s[U_CACHE_CREATION] && v[U_CACHE_CREATION] != cw5 + cw1)
                return REASON_BAD_TOKENS;
        }
        uint64_t in = v[U_INPUT] + v[U_CACHE_READ] + cw5 + cw1;
        if (in > lim)
            return REASON_TOKEN_OVERFLOW;
        put(t, 0, in);
        put(t, 1, v[U_CACHE_READ]);
        put(t, 2, cw5);
        put(t, 3, cw1);
        put(t, 4, v[U_OUTPUT]);
        put(t, 5, 0);
        return REASON_NONE;
    }
    if (s[U_PROMPT] || s[U_COMPLETION]) {
        /* OpenAI Chat Completions: prompt includes cached, completion includes reasoning */
        put(t, 0, v[U_PROMPT]);
        put(t, 1, s[U_PROMPT_CACHED] ? v[U_PROMPT_CACHED] : v[U_DEEPSEEK_HIT]);
        put(t, 4, v[U_COMPLETION]);
        put(t, 5, v[U_COMPLETION_REASONING]);
        return REASON_NONE;
    }
    if (s[U_INPUT] || s[U_OUTPUT]) {
        /* OpenAI Responses (and Anthropic without cache: the meanings agree) */
        put(t, 0, v[U_INPUT]);
        put(t, 1, v[U_INPUT_CACHED]);
        put(t, 4, v[U_OUTPUT]);
        put(t, 5, v[U_OUTPUT_REASONING]);
        return REASON_NONE;
    }
    return REASON_NONE; /* an empty usage object says nothing */
}

/* ---- tags --------------------------------------------------------------- */

typedef struct {
    event_t *ev;
    const event_limits_t *lim;
} tagctx_t;

static reason_t tag_member(src_t *src, span_t key, val_t *v, void *arg)
{
    tagctx_t *tc = arg;
    msg_usage_t *u = &tc->ev->u;
    span_t val;
    switch (v->k) {
    case V_STR:
    case V_NUM:
        val = v->s;
        break;
    case V_BOOL:
        val = v->b ? SPAN_LIT("true") : SPAN_LIT("false");
        break;
    case V_UINT:
    case V_INT:
        if (as_str(src, v, true, &val) != REASON_NONE) {
            tc->ev->tags_dropped++;
            return REASON_NONE;
        }
        break;
    default:
        tc->ev->tags_dropped++;
        return REASON_NONE;
    }
    if (key.len == 0 || key.len > tc->lim->max_tag_len || val.len > tc->lim->max_tag_len ||
        u->ntags >= tc->lim->max_tags || u->ntags >= MSG_MAX_TAGS || !str_ok(key) || !str_ok(val) ||
        (!src->json && !utf8_valid(key.p, key.len))) {
        tc->ev->tags_dropped++;
        return REASON_NONE;
    }
    u->tags[u->ntags].key = key;
    u->tags[u->ntags].value = val.p ? val : SPAN_LIT("");
    u->ntags++;
    return REASON_NONE;
}

/* ---- the event ---------------------------------------------------------- */

reason_t event_check_tokens(const msg_usage_t *u)
{
    const uint64_t lim = MSG_MAX_TOKENS;
    if (u->input_tokens > lim || u->output_tokens > lim || u->cache_read_tokens > lim ||
        u->cache_write_tokens > lim || u->cache_write_1h_tokens > lim || u->reasoning_tokens > lim)
        return REASON_TOKEN_OVERFLOW;
    if (u->cache_read_tokens + u->cache_write_tokens + u->cache_write_1h_tokens > u->input_tokens ||
        u->reasoning_tokens > u->output_tokens)
        return REASON_BAD_TOKENS;
    return REASON_NONE;
}

static reason_t build(src_t *src, const val_t *root, const event_limits_t *lim, event_t *ev)
{
    fields_t fs;
    reason_t r;
    memset(&fs, 0, sizeof fs);
    for (int i = 0; i < F_COUNT; i++)
        fs.prio[i] = -1;
    msg_usage_init(&ev->u);
    ev->has_cost = false;
    ev->tags_dropped = 0;
    msg_usage_t *u = &ev->u;

    if ((r = obj_each(src, root, top_member, &fs)) != REASON_NONE)
        return r;
#define GOT(f) (fs.prio[f] >= 0 && fs.v[f].k != V_NULL)

    if ((r = as_str(src, &fs.v[F_PROVIDER], false, &u->provider)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_MODEL], false, &u->model)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_OPERATION], false, &u->operation)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_USER], true, &u->user)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_ACCOUNT], true, &u->account)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_PROJECT], true, &u->project)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_ERROR_TYPE], false, &u->error_type)) != REASON_NONE ||
        (r = as_str(src, &fs.v[F_REQUEST_ID], true, &u->request_id)) != REASON_NONE)
        return r;
    if (!u->provider.p || !u->model.p)
        return REASON_MISSING_FIELD;
    if (!u->operation.p)
        u->operation = SPAN_LIT("chat");

    /* tokens: top-level fields (normalised meaning) and the usage object must agree */
    toks_t top = { 0 }, prov = { 0 };
    static const field_t tf[6] = { F_INPUT, F_CACHE_READ, F_CACHE_WRITE, F_CACHE_WRITE_1H,
                                   F_OUTPUT, F_REASONING };
    for (int i = 0; i < 6; i++)
        if (fs.prio[tf[i]] >= 0 && (r = as_tokens(&fs.v[tf[i]], &top.v[i], &top.set[i])) != REASON_NONE)
            return r;
    if (GOT(F_USAGE)) {
        if (fs.v[F_USAGE].k != V_OBJ)
            return REASON_BAD_FIELD;
        usage_t us;
        memset(&us, 0, sizeof us);
        if ((r = obj_each(src, &fs.v[F_USAGE], usage_member, &us)) != REASON_NONE)
            return r;
        if ((r = usage_normalise(&us, &prov)) != REASON_NONE)
            return r;
    }
    uint64_t tv[6];
    for (int i = 0; i < 6; i++) {
        if (top.set[i] && prov.set[i] && top.v[i] != prov.v[i])
            return REASON_BAD_TOKENS;
        tv[i] = top.set[i] ? top.v[i] : prov.set[i] ? prov.v[i] : 0;
    }
    u->input_tokens = tv[0];
    u->cache_read_tokens = tv[1];
    u->cache_write_tokens = tv[2];
    u->cache_write_1h_tokens = tv[3];
    u->output_tokens = tv[4];
    u->reasoning_tokens = tv[5];
    if ((r = event_check_tokens(u)) != REASON_NONE)
        return r;

    int64_t x;
    if (GOT(F_LATENCY)) {
        if ((r = as_scaled(&fs.v[F_LATENCY], 3, 1000000000000LL, &x)) != REASON_NONE)
            return r;
        u->latency_us = x;
    }
    if (GOT(F_TTFT)) {
        if ((r = as_scaled(&fs.v[F_TTFT], 3, 1000000000000LL, &x)) != REASON_NONE)
            return r;
        u->ttft_us = x;
    }
    if (GOT(F_HTTP_STATUS)) {
        uint64_t hs;
        bool set = false;
        if (as_tokens(&fs.v[F_HTTP_STATUS], &hs, &set) != REASON_NONE || hs < 100 || hs > 999)
            return REASON_BAD_FIELD;
        u->http_status = (int32_t)hs;
    }
    if (GOT(F_RETRIES)) {
        uint64_t rt;
        bool set = false;
        if (as_tokens(&fs.v[F_RETRIES], &rt, &set) != REASON_NONE || rt > 1000000)
            return REASON_BAD_FIELD;
        u->retries = (int32_t)rt;
    }
    if (GOT(F_STATUS)) {
        span_t st;
        if (as_str(src, &fs.v[F_STATUS], false, &st) != REASON_NONE || !st.p)
            return REASON_BAD_FIELD;
        if (span_eq_cstr(st, "ok"))
            u->status = SPAN_LIT("ok");
        else if (span_eq_cstr(st, "error"))
            u->status = SPAN_LIT("error");
        else
            return REASON_BAD_FIELD;
    } else {
        bool failed = u->http_status >= 400 || u->error_type.p;
        u->status = failed ? SPAN_LIT("error") : SPAN_LIT("ok");
    }
    if (GOT(F_COST)) {
        if ((r = as_scaled(&fs.v[F_COST], 9, INT64_MAX, &x)) != REASON_NONE)
            return r == REASON_BAD_VALUE ? REASON_BAD_VALUE : r;
        u->cost_nusd = x;
        ev->has_cost = true;
    }
    if (GOT(F_TS)) {
        const val_t *t = &fs.v[F_TS];
        if (t->k == V_STR) {
            if (tmtime_rfc3339_parse(t->s.p, t->s.len, &x) < 0)
                return REASON_BAD_TIMESTAMP;
        } else if (as_scaled(t, 9, INT64_MAX, &x) != REASON_NONE) {
            return REASON_BAD_TIMESTAMP;
        }
        if (x <= 0)
            return REASON_BAD_TIMESTAMP;
        u->ts = x;
    }
    if (GOT(F_TAGS)) {
        if (fs.v[F_TAGS].k != V_OBJ)
            return REASON_BAD_FIELD;
        tagctx_t tc = { ev, lim };
        if ((r = obj_each(src, &fs.v[F_TAGS], tag_member, &tc)) != REASON_NONE)
            return r;
    }
#undef GOT
    return REASON_NONE;
}

reason_t event_parse_json(const char *line, size_t len, const event_limits_t *lim,
                          jtok_t *toks, scratch_t *scratch, event_t *ev)
{
    jtok_err_t je;
    int n = jtok_parse(line, len, toks, EVENT_MAX_TOKENS, 8, &je);
    if (n < 0)
        return je.code == JTOK_EUTF8 ? REASON_BAD_UTF8 : REASON_BAD_JSON;
    if (toks[0].type != JTOK_OBJECT)
        return REASON_BAD_JSON;
    src_t src = { .json = true, .buf = line, .toks = toks, .scratch = scratch };
    val_t root = { .k = V_OBJ, .tok = 0 };
    return build(&src, &root, lim, ev);
}

reason_t event_parse_msgpack(mpr_t *r, const event_limits_t *lim, scratch_t *scratch,
                             event_t *ev, bool *resync)
{
    val_t root;
    *resync = true;
    reason_t rr = mp_val(r, &root);
    if (rr == REASON_BAD_MSGPACK) {
        *resync = false;
        return rr;
    }
    if (rr != REASON_NONE)
        return rr;
    if (root.k != V_OBJ) {
        *resync = false; /* not a sequence of maps: the rest is one bad record */
        return REASON_BAD_MSGPACK;
    }
    src_t src = { .json = false, .scratch = scratch };
    return build(&src, &root, lim, ev);
}

#include "demo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

typedef enum { SHAPE_PLAIN, SHAPE_OPENAI, SHAPE_REASONING, SHAPE_ANTHROPIC, SHAPE_GEMINI, SHAPE_EMBED } shape_t;

typedef struct {
    const char *provider, *model;
    shape_t shape;
    unsigned weight;
} model_t;

static const model_t models[] = {
    { "openai", "gpt-4o", SHAPE_OPENAI, 16 },
    { "openai", "gpt-4o-mini", SHAPE_OPENAI, 22 },
    { "openai", "gpt-4o-2024-08-06", SHAPE_OPENAI, 3 },
    { "openai", "o3", SHAPE_REASONING, 4 },
    { "openai", "gpt-5", SHAPE_REASONING, 6 },
    { "openai", "text-embedding-3-small", SHAPE_EMBED, 8 },
    { "anthropic", "claude-sonnet-4-5", SHAPE_ANTHROPIC, 14 },
    { "anthropic", "claude-haiku-4-5", SHAPE_ANTHROPIC, 8 },
    { "anthropic", "claude-opus-4-1", SHAPE_ANTHROPIC, 2 },
    { "gcp.gemini", "gemini-2.5-pro", SHAPE_GEMINI, 6 },
    { "gemini", "gemini-2.5-flash", SHAPE_GEMINI, 7 },
    { "mistral", "mistral-large-latest", SHAPE_PLAIN, 2 },
    { "x_ai", "grok-4", SHAPE_PLAIN, 1 },
    { "acme", "acme-internal-llm", SHAPE_PLAIN, 1 }, /* not in the price table */
};
#define NMODELS (sizeof models / sizeof models[0])

static const char *const projects[] = { "search", "support-bot", "summarizer", "codegen", "rag" };

struct demo {
    uint64_t s;
    unsigned users;
    unsigned total_weight;
    char user[32], account[32], request_id[40], latency[32], ttft[32], usage[512];
};

static uint64_t rnd(demo_t *d)
{
    /* xorshift64* */
    d->s ^= d->s >> 12;
    d->s ^= d->s << 25;
    d->s ^= d->s >> 27;
    return d->s * 0x2545F4914F6CDD1DULL;
}

static double unif(demo_t *d) { return (double)(rnd(d) >> 11) / 9007199254740992.0; }

/* Roughly log-normal counts between lo and hi. */
static int64_t span_(demo_t *d, double lo, double hi)
{
    double u = (unif(d) + unif(d) + unif(d)) / 3.0;
    return (int64_t)(lo * pow(hi / lo, u));
}

demo_t *demo_new(uint64_t seed, unsigned users)
{
    demo_t *d = xcalloc(1, sizeof *d);
    d->s = seed ? seed : 0x9E3779B97F4A7C15ULL;
    d->users = users ? users : 1;
    for (size_t i = 0; i < NMODELS; i++)
        d->total_weight += models[i].weight;
    return d;
}

void demo_destroy(demo_t **pd)
{
    free(*pd);
    *pd = NULL;
}

void demo_next(demo_t *d, wire_event_t *e, wire_format_t f)
{
    wire_event_init(e);
    unsigned w = (unsigned)(rnd(d) % d->total_weight);
    const model_t *m = &models[0];
    for (size_t i = 0; i < NMODELS; i++) {
        if (w < models[i].weight) {
            m = &models[i];
            break;
        }
        w -= models[i].weight;
    }
    /* a few users make most of the calls */
    unsigned u = (unsigned)(pow(unif(d), 3.0) * d->users);
    if (u >= d->users)
        u = d->users - 1;
    snprintf(d->user, sizeof d->user, "user-%06u", u);
    snprintf(d->account, sizeof d->account, "acct-%02u", u % 25);
    snprintf(d->request_id, sizeof d->request_id, "req-%016llx", (unsigned long long)rnd(d));
    e->provider = m->provider;
    e->model = m->model;
    e->user = d->user;
    e->account = d->account;
    e->project = projects[u % 5];
    e->request_id = d->request_id;
    e->operation = m->shape == SHAPE_EMBED ? "embeddings" : "chat";

    bool failed = unif(d) < 0.03;
    int64_t in = m->shape == SHAPE_EMBED ? span_(d, 20, 2000) : span_(d, 150, 12000);
    if (m->shape == SHAPE_GEMINI && unif(d) < 0.02)
        in = span_(d, 200001, 600000); /* long context: the higher tier */
    int64_t out = m->shape == SHAPE_EMBED || failed ? 0 : span_(d, 20, 1800);
    int64_t cr = 0, cw = 0, cw1 = 0, rs = 0;
    switch (m->shape) {
    case SHAPE_OPENAI:
        if (unif(d) < 0.35)
            cr = (in / 1024) * 1024 * (int64_t)(unif(d) * 0.9 * 100) / 100;
        break;
    case SHAPE_REASONING: /* hidden reasoning, one to four times the visible answer */
        if (!failed)
            rs = (int64_t)((double)out * (1.0 + 3.0 * unif(d)));
        out += rs;
        break;
    case SHAPE_ANTHROPIC:
        if (unif(d) < 0.5)
            cr = (int64_t)(in * 0.8);
        else if (unif(d) < 0.3)
            cw = (int64_t)(in * 0.7);
        else if (unif(d) < 0.1)
            cw1 = (int64_t)(in * 0.6);
        break;
    case SHAPE_GEMINI:
        if (!failed)
            rs = span_(d, 50, 3000);
        out += rs;
        if (unif(d) < 0.2)
            cr = in / 2;
        break;
    default:
        break;
    }
    double lat = 150 + (double)out * (4 + 10 * unif(d)) + 300 * unif(d);
    snprintf(d->latency, sizeof d->latency, "%.1f", lat);
    snprintf(d->ttft, sizeof d->ttft, "%.1f", 80 + 600 * unif(d));
    e->latency_ms = d->latency;
    if (m->shape != SHAPE_EMBED)
        e->ttft_ms = d->ttft;
    if (failed) {
        bool limited = unif(d) < 0.6;
        e->status = "error";
        e->http_status = limited ? 429 : 500;
        e->error_type = limited ? "rate_limit" : "server_error";
        e->ttft_ms = NULL;
    }

    /* half the events carry the provider's own usage object (JSON only) */
    if (f == WIRE_JSON && unif(d) < 0.5 && m->shape != SHAPE_PLAIN && m->shape != SHAPE_EMBED) {
        if (m->shape == SHAPE_ANTHROPIC)
            snprintf(d->usage, sizeof d->usage,
                     "{\"input_tokens\":%lld,\"output_tokens\":%lld,\"cache_read_input_tokens\":%lld,"
                     "\"cache_creation_input_tokens\":%lld,\"cache_creation\":{\"ephemeral_5m_input_tokens\":%lld,"
                     "\"ephemeral_1h_input_tokens\":%lld}}",
                     (long long)(in - cr - cw - cw1), (long long)out, (long long)cr, (long long)(cw + cw1),
                     (long long)cw, (long long)cw1);
        else if (m->shape == SHAPE_GEMINI)
            snprintf(d->usage, sizeof d->usage,
                     "{\"promptTokenCount\":%lld,\"candidatesTokenCount\":%lld,\"cachedContentTokenCount\":%lld,"
                     "\"thoughtsTokenCount\":%lld,\"totalTokenCount\":%lld}",
                     (long long)in, (long long)(out - rs), (long long)cr, (long long)rs,
                     (long long)(in + out));
        else
            snprintf(d->usage, sizeof d->usage,
                     "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                     "\"prompt_tokens_details\":{\"cached_tokens\":%lld},"
                     "\"completion_tokens_details\":{\"reasoning_tokens\":%lld}}",
                     (long long)in, (long long)out, (long long)(in + out), (long long)cr, (long long)rs);
        e->usage = d->usage;
        return;
    }
    e->input = in;
    e->output = out;
    if (cr)
        e->cache_read = cr;
    if (cw)
        e->cache_write = cw;
    if (cw1)
        e->cache_write_1h = cw1;
    if (rs)
        e->reasoning = rs;
}

#include "win.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static uint32_t minute_of(int64_t t)
{
    return t <= 0 ? 0 : (uint32_t)(t / WIN_MINUTE_NS);
}

void win_add(win_t *w, int64_t t, uint32_t requests, uint64_t tokens, int64_t nusd)
{
    uint32_t m = minute_of(t);
    uint32_t i = w->n;
    while (i > 0 && w->b[i - 1].minute > m)
        i--;
    if (i > 0 && w->b[i - 1].minute == m) {
        win_bucket_t *b = &w->b[i - 1];
        b->requests += requests;
        b->tokens += tokens;
        b->nusd = win_sat_add(b->nusd, nusd);
        return;
    }
    if (w->n == w->cap) {
        /* small steps first: most users have a handful of active minutes */
        uint32_t ncap = w->cap < 4 ? w->cap + 2 : w->cap + w->cap / 2;
        w->b = xreallocarray(w->b, ncap, sizeof *w->b);
        w->cap = ncap;
    }
    memmove(&w->b[i + 1], &w->b[i], (w->n - i) * sizeof *w->b);
    w->b[i] = (win_bucket_t){ m, requests, tokens, nusd };
    w->n++;
}

void win_trim(win_t *w, int64_t t)
{
    /* minute m ends at (m + 1) * 60 s */
    uint32_t k = 0;
    while (k < w->n && ((int64_t)w->b[k].minute + 1) * WIN_MINUTE_NS <= t)
        k++;
    if (!k)
        return;
    w->n -= k;
    if (!w->n) {
        win_free(w);
        return;
    }
    memmove(w->b, &w->b[k], w->n * sizeof *w->b);
    if (w->cap > 8 && w->n < w->cap / 4) {
        w->cap = w->n * 2;
        w->b = xreallocarray(w->b, w->cap, sizeof *w->b);
    }
}

void win_sum(const win_t *w, int64_t from, int64_t to, win_sum_t *out)
{
    memset(out, 0, sizeof *out);
    for (uint32_t i = w->n; i > 0; i--) {
        const win_bucket_t *b = &w->b[i - 1];
        int64_t start = (int64_t)b->minute * WIN_MINUTE_NS;
        if (start < from)
            break;
        if (start >= to)
            continue;
        out->requests += b->requests;
        out->tokens += b->tokens;
        out->nusd = win_sat_add(out->nusd, b->nusd);
    }
}

int64_t win_start(int64_t t, int64_t len)
{
    int64_t m = t / WIN_MINUTE_NS;
    return (m + 1) * WIN_MINUTE_NS - len;
}

int64_t win_next_expiry(const win_t *w, int64_t t, int64_t len)
{
    int64_t from = win_start(t, len);
    for (uint32_t i = 0; i < w->n; i++) {
        int64_t start = (int64_t)w->b[i].minute * WIN_MINUTE_NS;
        if (start >= from)
            return start + len;
    }
    return 0;
}

void win_save(const win_t *w, msgpack_packer *pk)
{
    msgpack_pack_array(pk, w->n * 4);
    for (uint32_t i = 0; i < w->n; i++) {
        const win_bucket_t *b = &w->b[i];
        msgpack_pack_uint32(pk, b->minute);
        msgpack_pack_uint32(pk, b->requests);
        msgpack_pack_uint64(pk, b->tokens);
        msgpack_pack_int64(pk, b->nusd);
    }
}

static bool get_u(const msgpack_object *o, uint64_t max, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > max)
        return false;
    *v = o->via.u64;
    return true;
}

int win_load(win_t *w, const msgpack_object *o)
{
    win_free(w);
    if (!o || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size % 4)
        return -1;
    const msgpack_object *a = o->via.array.ptr;
    int64_t prev = -1;
    for (uint32_t i = 0; i < o->via.array.size; i += 4) {
        uint64_t m, rq, tk;
        int64_t nusd;
        /* a minute whose start fits int64 ns, as win_add makes them */
        if (!get_u(&a[i], INT64_MAX / WIN_MINUTE_NS, &m) || !get_u(&a[i + 1], UINT32_MAX, &rq) ||
            !get_u(&a[i + 2], UINT64_MAX, &tk) || (int64_t)m <= prev)
            goto bad;
        if (a[i + 3].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[i + 3].via.u64 <= INT64_MAX)
            nusd = (int64_t)a[i + 3].via.u64;
        else if (a[i + 3].type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            nusd = a[i + 3].via.i64;
        else
            goto bad;
        prev = (int64_t)m;
        win_add(w, (int64_t)m * WIN_MINUTE_NS, (uint32_t)rq, tk, nusd);
    }
    return 0;
bad:
    win_free(w);
    return -1;
}

void win_free(win_t *w)
{
    free(w->b);
    w->b = NULL;
    w->n = w->cap = 0;
}

size_t win_memory(const win_t *w)
{
    return w->cap ? ((w->cap * sizeof *w->b + 8 + 15) & ~(size_t)15) : 0;
}

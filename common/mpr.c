#include "mpr.h"

#include <string.h>

static inline uint64_t be(const uint8_t *p, int n)
{
    uint64_t x = 0;
    for (int i = 0; i < n; i++)
        x = (x << 8) | p[i];
    return x;
}

static int need(const mpr_t *r, size_t n) { return (size_t)(r->end - r->p) >= n ? 0 : -1; }

static int take_raw(mpr_t *r, mpr_val_t *v, mpr_type_t t, int lenbytes, int ext)
{
    if (need(r, (size_t)lenbytes) < 0)
        return -1;
    uint64_t len = be(r->p, lenbytes);
    r->p += lenbytes;
    if (ext) {
        if (need(r, 1) < 0)
            return -1;
        r->p++;
    }
    if (need(r, len) < 0)
        return -1;
    v->type = t;
    v->s.p = (const char *)r->p;
    v->s.len = (uint32_t)len;
    r->p += len;
    return 0;
}

static int take_fixext(mpr_t *r, mpr_val_t *v, uint32_t len)
{
    if (need(r, 1 + (size_t)len) < 0)
        return -1;
    r->p++;
    v->type = MPR_EXT;
    v->s.p = (const char *)r->p;
    v->s.len = len;
    r->p += len;
    return 0;
}

static int take_container(mpr_t *r, mpr_val_t *v, mpr_type_t t, uint64_t n)
{
    /* every element needs at least one byte, a map entry two */
    uint64_t min = t == MPR_MAP ? n * 2 : n;
    if (n > UINT32_MAX || need(r, min) < 0)
        return -1;
    v->type = t;
    v->n = (uint32_t)n;
    return 0;
}

int mpr_next(mpr_t *r, mpr_val_t *v)
{
    if (need(r, 1) < 0)
        return -1;
    uint8_t c = *r->p++;
    if (c <= 0x7f) {
        v->type = MPR_UINT;
        v->u = c;
        return 0;
    }
    if (c >= 0xe0) {
        v->type = MPR_INT;
        v->i = (int8_t)c;
        return 0;
    }
    if ((c & 0xf0) == 0x80)
        return take_container(r, v, MPR_MAP, c & 0x0f);
    if ((c & 0xf0) == 0x90)
        return take_container(r, v, MPR_ARRAY, c & 0x0f);
    if ((c & 0xe0) == 0xa0) {
        uint32_t len = c & 0x1f;
        if (need(r, len) < 0)
            return -1;
        v->type = MPR_STR;
        v->s.p = (const char *)r->p;
        v->s.len = len;
        r->p += len;
        return 0;
    }
    uint64_t x;
    switch (c) {
    case 0xc0:
        v->type = MPR_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        v->type = MPR_BOOL;
        v->b = c == 0xc3;
        return 0;
    case 0xc4:
        return take_raw(r, v, MPR_BIN, 1, 0);
    case 0xc5:
        return take_raw(r, v, MPR_BIN, 2, 0);
    case 0xc6:
        return take_raw(r, v, MPR_BIN, 4, 0);
    case 0xc7:
        return take_raw(r, v, MPR_EXT, 1, 1);
    case 0xc8:
        return take_raw(r, v, MPR_EXT, 2, 1);
    case 0xc9:
        return take_raw(r, v, MPR_EXT, 4, 1);
    case 0xca: {
        if (need(r, 4) < 0)
            return -1;
        uint32_t b = (uint32_t)be(r->p, 4);
        float f;
        memcpy(&f, &b, 4);
        r->p += 4;
        v->type = MPR_FLOAT;
        v->f = f;
        return 0;
    }
    case 0xcb: {
        if (need(r, 8) < 0)
            return -1;
        uint64_t b = be(r->p, 8);
        double d;
        memcpy(&d, &b, 8);
        r->p += 8;
        v->type = MPR_FLOAT;
        v->f = d;
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        int n = 1 << (c - 0xcc);
        if (need(r, (size_t)n) < 0)
            return -1;
        v->type = MPR_UINT;
        v->u = be(r->p, n);
        r->p += n;
        return 0;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        int n = 1 << (c - 0xd0);
        if (need(r, (size_t)n) < 0)
            return -1;
        x = be(r->p, n);
        r->p += n;
        int64_t s;
        if (n == 1)
            s = (int8_t)x;
        else if (n == 2)
            s = (int16_t)x;
        else if (n == 4)
            s = (int32_t)x;
        else
            s = (int64_t)x;
        if (s >= 0) {
            v->type = MPR_UINT;
            v->u = (uint64_t)s;
        } else {
            v->type = MPR_INT;
            v->i = s;
        }
        return 0;
    }
    case 0xd4:
        return take_fixext(r, v, 1);
    case 0xd5:
        return take_fixext(r, v, 2);
    case 0xd6:
        return take_fixext(r, v, 4);
    case 0xd7:
        return take_fixext(r, v, 8);
    case 0xd8:
        return take_fixext(r, v, 16);
    case 0xd9:
        return take_raw(r, v, MPR_STR, 1, 0);
    case 0xda:
        return take_raw(r, v, MPR_STR, 2, 0);
    case 0xdb:
        return take_raw(r, v, MPR_STR, 4, 0);
    case 0xdc:
    case 0xdd:
        if (need(r, c == 0xdc ? 2 : 4) < 0)
            return -1;
        x = be(r->p, c == 0xdc ? 2 : 4);
        r->p += c == 0xdc ? 2 : 4;
        return take_container(r, v, MPR_ARRAY, x);
    case 0xde:
    case 0xdf:
        if (need(r, c == 0xde ? 2 : 4) < 0)
            return -1;
        x = be(r->p, c == 0xde ? 2 : 4);
        r->p += c == 0xde ? 2 : 4;
        return take_container(r, v, MPR_MAP, x);
    default: /* 0xc1 is never used */
        return -1;
    }
}

int mpr_skip(mpr_t *r, unsigned max_depth)
{
    /* iterative: count how many values are still owed at each depth */
    uint64_t owed[64];
    unsigned depth = 0;
    if (max_depth > 63)
        max_depth = 63;
    owed[0] = 1;
    for (;;) {
        while (owed[depth] == 0) {
            if (depth == 0)
                return 0;
            depth--;
        }
        owed[depth]--;
        mpr_val_t v;
        if (mpr_next(r, &v) < 0)
            return -1;
        if (v.type == MPR_ARRAY || v.type == MPR_MAP) {
            uint64_t n = v.type == MPR_MAP ? (uint64_t)v.n * 2 : v.n;
            if (n == 0)
                continue;
            if (depth + 1 > max_depth)
                return -1;
            owed[++depth] = n;
        }
    }
}

int mpr_validate(const void *buf, size_t len, unsigned max_depth)
{
    mpr_t r;
    mpr_init(&r, buf, len);
    if (mpr_skip(&r, max_depth) < 0)
        return -1;
    return r.p == r.end ? 0 : -1;
}

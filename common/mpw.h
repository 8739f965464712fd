/* mpw: a minimal msgpack writer for the hot path. The caller reserves room
 * for a worst case first (mbuf_reserve), then writes with these inline
 * functions through a plain cursor: no callback and no bounds check per
 * byte, which is most of what packing one record costs with msgpack-c's
 * packer. Output is the same canonical msgpack msgpack-c writes. */
#ifndef TOKMON_MPW_H
#define TOKMON_MPW_H

#include <stdint.h>
#include <string.h>

/* Worst-case bytes of a str header, and of any integer. */
#define MPW_STR_HDR 5
#define MPW_INT_MAX 9

static inline char *mpw_be16(char *p, uint16_t v)
{
    p[0] = (char)(v >> 8);
    p[1] = (char)v;
    return p + 2;
}

static inline char *mpw_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
    return p + 4;
}

static inline char *mpw_be64(char *p, uint64_t v)
{
    p = mpw_be32(p, (uint32_t)(v >> 32));
    return mpw_be32(p, (uint32_t)v);
}

static inline char *mpw_map(char *p, uint32_t n)
{
    if (n < 16) {
        *p++ = (char)(0x80 | n);
        return p;
    }
    if (n <= 0xffff) {
        *p++ = (char)0xde;
        return mpw_be16(p, (uint16_t)n);
    }
    *p++ = (char)0xdf;
    return mpw_be32(p, n);
}

static inline char *mpw_str(char *p, const char *s, size_t n)
{
    if (n < 32) {
        *p++ = (char)(0xa0 | n);
    } else if (n <= 0xff) {
        *p++ = (char)0xd9;
        *p++ = (char)n;
    } else if (n <= 0xffff) {
        *p++ = (char)0xda;
        p = mpw_be16(p, (uint16_t)n);
    } else {
        *p++ = (char)0xdb;
        p = mpw_be32(p, (uint32_t)n);
    }
    memcpy(p, s, n);
    return p + n;
}

/* A constant key written as a fixstr (keys are shorter than 32 bytes). */
#define MPW_KEY(p, lit) mpw_str((p), (lit), sizeof(lit) - 1)

static inline char *mpw_uint(char *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (char)v;
    } else if (v <= 0xff) {
        *p++ = (char)0xcc;
        *p++ = (char)v;
    } else if (v <= 0xffff) {
        *p++ = (char)0xcd;
        p = mpw_be16(p, (uint16_t)v);
    } else if (v <= 0xffffffffu) {
        *p++ = (char)0xce;
        p = mpw_be32(p, (uint32_t)v);
    } else {
        *p++ = (char)0xcf;
        p = mpw_be64(p, v);
    }
    return p;
}

static inline char *mpw_int(char *p, int64_t v)
{
    if (v >= 0)
        return mpw_uint(p, (uint64_t)v);
    if (v >= -32) {
        *p++ = (char)(int8_t)v;
    } else if (v >= INT8_MIN) {
        *p++ = (char)0xd0;
        *p++ = (char)(int8_t)v;
    } else if (v >= INT16_MIN) {
        *p++ = (char)0xd1;
        p = mpw_be16(p, (uint16_t)(int16_t)v);
    } else if (v >= INT32_MIN) {
        *p++ = (char)0xd2;
        p = mpw_be32(p, (uint32_t)(int32_t)v);
    } else {
        *p++ = (char)0xd3;
        p = mpw_be64(p, (uint64_t)v);
    }
    return p;
}

static inline char *mpw_bool(char *p, int b)
{
    *p++ = b ? (char)0xc3 : (char)0xc2;
    return p;
}

static inline char *mpw_double(char *p, double d)
{
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    *p++ = (char)0xcb;
    return mpw_be64(p, v);
}

#endif

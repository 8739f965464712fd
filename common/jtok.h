/* jtok: a strict RFC 8259 tokenizer in the style of jsmn. jtok_parse() reads one
 * whole buffer in a single pass into a flat, caller-supplied array of tokens that
 * point into the buffer: no allocation, no copy. Numbers stay as their decimal
 * text, to be read exactly with dec_parse(); strings are decoded on demand.
 * All functions are reentrant and keep no state: thread-safe on distinct data. */
#ifndef TOKMON_JTOK_H
#define TOKMON_JTOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "span.h"

/* Hard cap on nesting; a larger max_depth given to jtok_parse() is clamped to it. */
#define JTOK_DEPTH_MAX 1024u

typedef enum { JTOK_OBJECT, JTOK_ARRAY, JTOK_STRING, JTOK_NUMBER, JTOK_TRUE, JTOK_FALSE, JTOK_NULL } jtok_type_t;

/* One value (or object key). Tokens are in document order: a container is
 * followed by its children; an object's children alternate key, value. */
typedef struct {
    jtok_type_t type;
    uint32_t start, len; /* raw text span in the buffer: strings WITHOUT the quotes (escapes not
                            decoded), numbers the literal, containers from the bracket to the
                            closing bracket included, true/false/null the word */
    uint32_t size;       /* object: number of key/value pairs; array: number of elements; else 0 */
    uint32_t next;       /* index of the token after this one's whole subtree (to skip a value);
                            for a key: the index of its value */
    bool escaped;        /* string contains backslash escapes */
} jtok_t;

/* Error codes, stable (rejection counters may be labelled with jtok_strerror()). */
enum {
    JTOK_OK = 0,
    JTOK_EEMPTY,    /* input empty or only whitespace */
    JTOK_ESYNTAX,   /* unexpected byte (bad literal, missing ':' or ',', stray bracket, BOM...) */
    JTOK_ETRUNC,    /* input ends inside a value */
    JTOK_ETRAILING, /* something other than whitespace after the value */
    JTOK_ENUMBER,   /* number grammar: 01, +1, .5, 1., 1e, -, 0x10, NaN-like tails */
    JTOK_ECTRL,     /* raw control character (< 0x20) in a string */
    JTOK_EESCAPE,   /* unknown escape, bad \u hex digits, lone or misordered surrogate */
    JTOK_EUTF8,     /* invalid UTF-8 in a string: stray/overlong/surrogate/> U+10FFFF */
    JTOK_EDEPTH,    /* containers nested deeper than max_depth */
    JTOK_ETOKENS,   /* more tokens than cap (or than INT_MAX) */
    JTOK_ETOOBIG,   /* buffer longer than UINT32_MAX bytes */
    JTOK_ECOUNT_    /* number of codes, not an error */
};

typedef struct {
    int code;      /* JTOK_E* */
    size_t offset; /* byte offset of the offending byte (len when the input ends too early) */
} jtok_err_t;

/* Parses buf[0..len) as exactly one JSON value surrounded by optional whitespace
 * (space, tab, CR, LF; a UTF-8 BOM is a syntax error). Containers may nest
 * max_depth deep ("[]" is depth 1, a scalar depth 0; max_depth is clamped to
 * JTOK_DEPTH_MAX). Tokens are written to toks[0..cap); with toks == NULL nothing
 * is written and only the count is returned, after the same validation, so a
 * caller can size the array (a real parse then never fails with JTOK_ETOKENS).
 * Returns the number of tokens (>= 1), or -1 with *err set when err is not NULL;
 * on failure the contents of toks are unspecified. Duplicate keys are kept.
 * Borrows everything; tokens refer into buf and are valid as long as it is. */
int jtok_parse(const char *buf, size_t len, jtok_t *toks, size_t cap, unsigned max_depth,
               jtok_err_t *err);

/* A short static English text for a JTOK_E* code ("syntax error"); never NULL. */
const char *jtok_strerror(int code);

/* The raw text of a token (see jtok_t.start/len), pointing into buf. */
static inline span_t jtok_span(const char *buf, const jtok_t *t)
{
    return span_make(buf + t->start, t->len);
}

/* Decodes string token t (from jtok_parse() of this buf) into out as UTF-8 with
 * escapes resolved (\uXXXX surrogate pairs joined) and a NUL appended. A \u0000
 * escape decodes to a NUL byte inside the result: use the returned length.
 * The decoded length never exceeds t->len, so cap = t->len + 1 always suffices.
 * Returns the decoded length without the NUL, or -1 with errno = ERANGE when
 * cap is too small (out then holds "" if cap > 0). */
ssize_t jtok_str_decode(const char *buf, const jtok_t *t, char *out, size_t cap);

/* Whether string token t, decoded, equals the NUL-terminated s. Never allocates.
 * False for a token that is not a string. */
bool jtok_str_eq(const char *buf, const jtok_t *t, const char *s);

/* Looks up key (compared with the decoded key, see jtok_str_eq) in the object
 * token at index obj; returns the index of the value token of the first pair
 * whose key matches, or -1 when there is none or toks[obj] is not an object. */
int jtok_obj_get(const char *buf, const jtok_t *toks, int obj, const char *key);

#endif

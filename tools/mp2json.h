/* mp2json: bus bodies as JSON (jansson) for tokmon-tap and tokmonctl. Usage
 * records print with exactly the keys of DESIGN section 4; other bodies are
 * converted field by field. */
#ifndef TOKMON_MP2JSON_H
#define TOKMON_MP2JSON_H

#include <jansson.h>
#include <msgpack.h>

#include "msg.h"
#include "span.h"

/* A span as a JSON string (invalid UTF-8 bytes become U+FFFD), or null. */
json_t *mp2json_str(span_t s);
/* Any msgpack object, recursively (binary as base64 strings). */
json_t *mp2json_any(const msgpack_object *o);
/* A usage record with every key of the record (absent values as null;
 * key_id only when signed). */
json_t *mp2json_usage(const msg_usage_t *u);
json_t *mp2json_sample(const msg_sample_t *s);
json_t *mp2json_stats(const msg_stats_t *s);

#endif

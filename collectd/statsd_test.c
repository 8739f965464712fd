/* statsd_test: table-driven tests of the StatsD line parser. Every table row
 * is its own cmocka test, named by its id; run one (or a glob of them) with
 *   statsd_test 'hotshots_*'
 * Inputs are copied into buffers of their exact size, so ASan catches any
 * read past the end of a line. */
#include "statsd.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef struct {
    const char *k;
    const char *v; /* NULL or "": a tag without value */
} kv_t;

typedef struct {
    const char *id;
    const char *in;
    size_t inlen;
    statsd_gauge_sign_t rule;
    statsd_result_t res;
    /* Checked only when res is STATSD_OK. */
    const char *name;
    statsd_type_t type;
    size_t nvalues;
    double values[8];
    const char *member; /* sets */
    bool delta;
    double rate; /* 0 here means 1.0 expected */
    size_t ntags;
    kv_t tags[8];
    bool has_ts;
    int64_t ts;
    bool dog;
    const char *container;
    bool in_namebuf; /* name expected in out->namebuf */
} case_t;

#define IN(s) .in = (s), .inlen = sizeof(s) - 1
#define V(...) .nvalues = ARRAY_LEN(((double[]){ __VA_ARGS__ })), .values = { __VA_ARGS__ }
#define TAGS(...) .ntags = ARRAY_LEN(((kv_t[]){ __VA_ARGS__ })), .tags = { __VA_ARGS__ }
#define ERR(id_, s, r) { .id = (id_), IN(s), .res = (r) }
#define ERR_RULE(id_, s, rule_, r) { .id = (id_), IN(s), .rule = (rule_), .res = (r) }

#define AUTO STATSD_GAUGE_AUTO
#define DELTA STATSD_GAUGE_DELTA
#define ABS STATSD_GAUGE_ABSOLUTE

/* Not const: rows are handed to cmocka as a test's initial state (void *). */
static case_t cases[] = {
    /* --- Real client datagrams (docs PEERS.md), one line each. --- */
    /* python3-statsd */
    { .id = "python_gauge_plus", IN("gauge:+3|g"), .name = "gauge", .type = STATSD_GAUGE, V(3), .delta = true },
    { .id = "python_gauge_minus", IN("gauge:-2|g"), .name = "gauge", .type = STATSD_GAUGE, V(-2), .delta = true },
    { .id = "python_gauge_zero", IN("x:0|g"), .name = "x", .type = STATSD_GAUGE, V(0) },
    { .id = "python_gauge_neg_after_zero", IN("x:-5|g"), .name = "x", .type = STATSD_GAUGE, V(-5), .delta = true },
    { .id = "python_timer", IN("t:320.000000|ms"), .name = "t", .type = STATSD_TIMER, V(320) },
    { .id = "python_rate", IN("c:1|c|@0.99"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 0.99 },
    /* hot-shots */
    { .id = "hotshots_counter_tags", IN("llm.tokens:1027|c|#env:test,model:gpt-4o"), .name = "llm.tokens",
      .type = STATSD_COUNTER, V(1027), TAGS({ "env", "test" }, { "model", "gpt-4o" }), .dog = true },
    { .id = "hotshots_negative_gauge", IN("x:-3|g|#env:test"), .name = "x", .type = STATSD_GAUGE, V(-3),
      TAGS({ "env", "test" }), .dog = true },
    { .id = "hotshots_event", IN("_e{5,4}:title|text|#t:1"), .res = STATSD_EVENT, .dog = true },
    { .id = "hotshots_service_check", IN("_sc|svc|0|#t:1"), .res = STATSD_SERVICE_CHECK, .dog = true },
    { .id = "hotshots_telegraf", IN("llm.tokens,env=test,model=gpt-4o:1027|c"), .name = "llm.tokens",
      .type = STATSD_COUNTER, V(1027), TAGS({ "env", "test" }, { "model", "gpt-4o" }) },
    { .id = "dogstatsd_all_fields", IN("h:1:2:3|h|@0.5|#a:b|T1656581400|c:abc123"), .name = "h",
      .type = STATSD_HISTOGRAM, V(1, 2, 3), .rate = 0.5, TAGS({ "a", "b" }), .has_ts = true,
      .ts = 1656581400, .dog = true, .container = "abc123" },
    /* DESIGN.md section 2 examples */
    { .id = "design_tokens", IN("llm.tokens:450|c|#provider:openai,model:gpt-4o,user:u1,type:input"),
      .name = "llm.tokens", .type = STATSD_COUNTER, V(450),
      TAGS({ "provider", "openai" }, { "model", "gpt-4o" }, { "user", "u1" }, { "type", "input" }), .dog = true },
    { .id = "design_latency", IN("llm.latency:1250|ms|#status:error"), .name = "llm.latency",
      .type = STATSD_TIMER, V(1250), TAGS({ "status", "error" }), .dog = true },

    /* --- Types --- */
    { .id = "type_counter", IN("x:1|c"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "type_gauge", IN("x:1|g"), .name = "x", .type = STATSD_GAUGE, V(1) },
    { .id = "type_timer", IN("x:1.5|ms"), .name = "x", .type = STATSD_TIMER, V(1.5) },
    { .id = "type_histogram", IN("x:1|h"), .name = "x", .type = STATSD_HISTOGRAM, V(1) },
    { .id = "type_distribution", IN("x:1|d"), .name = "x", .type = STATSD_DISTRIBUTION, V(1) },
    { .id = "type_set", IN("users:alice|s"), .name = "users", .type = STATSD_SET, .member = "alice" },
    ERR("type_empty", "name:1|", STATSD_ERR_TYPE),
    ERR("type_missing", "name:1", STATSD_ERR_TYPE),
    ERR("type_missing_garbage_value", "name:abc", STATSD_ERR_TYPE),
    ERR("type_uppercase", "x:1|C", STATSD_ERR_TYPE),
    ERR("type_unknown", "x:1|x", STATSD_ERR_TYPE),
    ERR("type_m", "x:1|m", STATSD_ERR_TYPE),
    ERR("type_msx", "x:1|msx", STATSD_ERR_TYPE),
    ERR("type_cc", "x:1|cc", STATSD_ERR_TYPE),
    ERR("type_trailing_space", "x:1|c ", STATSD_ERR_TYPE),
    ERR("type_empty_then_c", "x:1||c", STATSD_ERR_TYPE),
    ERR("type_etsy_multi", "x:1|c:2|ms", STATSD_ERR_TYPE),
    ERR("type_nul", "x:1|c\0", STATSD_ERR_TYPE),

    /* --- Numbers --- */
    { .id = "num_negative_counter", IN("c:-1|c"), .name = "c", .type = STATSD_COUNTER, V(-1) },
    { .id = "num_plus_counter", IN("c:+1|c"), .name = "c", .type = STATSD_COUNTER, V(1) },
    { .id = "num_trailing_dot", IN("x:1.|c"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "num_leading_dot", IN("x:.5|c"), .name = "x", .type = STATSD_COUNTER, V(0.5) },
    { .id = "num_exp", IN("x:1e3|c"), .name = "x", .type = STATSD_COUNTER, V(1000) },
    { .id = "num_exp_neg_upper", IN("x:1E-3|ms"), .name = "x", .type = STATSD_TIMER, V(0.001) },
    { .id = "num_exp_plus", IN("x:2.5e+2|ms"), .name = "x", .type = STATSD_TIMER, V(250) },
    { .id = "num_dot_exp", IN("x:1.e2|c"), .name = "x", .type = STATSD_COUNTER, V(100) },
    { .id = "num_leading_zeros", IN("x:00012|c"), .name = "x", .type = STATSD_COUNTER, V(12) },
    { .id = "num_neg_zero", IN("x:-0|c"), .name = "x", .type = STATSD_COUNTER, V(-0.0) },
    { .id = "num_zero_huge_exp", IN("x:0e999|c"), .name = "x", .type = STATSD_COUNTER, V(0) },
    { .id = "num_point_one", IN("x:0.1|c"), .name = "x", .type = STATSD_COUNTER, V(0.1) },
    { .id = "num_0_30000000000000004", IN("x:0.30000000000000004|c"), .name = "x", .type = STATSD_COUNTER,
      V(0.30000000000000004) },
    { .id = "num_many_digits", IN("x:123456789012345678901234567890|c"), .name = "x", .type = STATSD_COUNTER,
      V(123456789012345678901234567890.0) },
    { .id = "num_2p53_plus_1", IN("x:9007199254740993|c"), .name = "x", .type = STATSD_COUNTER,
      V(9007199254740992.0) },
    { .id = "num_1e23", IN("x:1e23|c"), .name = "x", .type = STATSD_COUNTER, V(1e23) },
    { .id = "num_dbl_max", IN("x:1.7976931348623157e308|g"), .name = "x", .type = STATSD_GAUGE, V(DBL_MAX) },
    { .id = "num_dbl_min", IN("x:2.2250738585072014e-308|g"), .name = "x", .type = STATSD_GAUGE, V(DBL_MIN) },
    { .id = "num_fraction_zeros", IN("x:0.000000000000000000000000001|c"), .name = "x",
      .type = STATSD_COUNTER, V(1e-27) },
    ERR("num_empty", "x:|c", STATSD_ERR_VALUE),
    ERR("num_alpha", "x:abc|c", STATSD_ERR_VALUE),
    ERR("num_hex", "x:0x10|c", STATSD_ERR_VALUE),
    ERR("num_hex_float", "x:0x1p3|c", STATSD_ERR_VALUE),
    ERR("num_inf", "x:inf|c", STATSD_ERR_VALUE),
    ERR("num_neg_inf", "x:-inf|g", STATSD_ERR_VALUE),
    ERR("num_infinity", "x:Infinity|c", STATSD_ERR_VALUE),
    ERR("num_nan", "x:nan|c", STATSD_ERR_VALUE),
    ERR("num_nan_upper", "x:NaN|g", STATSD_ERR_VALUE),
    ERR("num_overflow", "x:1e400|c", STATSD_ERR_VALUE),
    ERR("num_neg_overflow", "x:-1e400|g", STATSD_ERR_VALUE),
    ERR("num_underflow", "x:1e-400|c", STATSD_ERR_VALUE),
    ERR("num_two_dots", "x:1.5.5|c", STATSD_ERR_VALUE),
    ERR("num_exp_no_digits", "x:1e|c", STATSD_ERR_VALUE),
    ERR("num_exp_sign_only", "x:1e+|c", STATSD_ERR_VALUE),
    ERR("num_dot_only", "x:.|c", STATSD_ERR_VALUE),
    ERR("num_minus_only", "x:-|c", STATSD_ERR_VALUE),
    ERR("num_plus_only", "x:+|c", STATSD_ERR_VALUE),
    ERR("num_double_sign", "x:+-1|c", STATSD_ERR_VALUE),
    ERR("num_exp_only", "x:e5|c", STATSD_ERR_VALUE),
    ERR("num_leading_space", "x: 1|c", STATSD_ERR_VALUE),
    ERR("num_trailing_space", "x:1 |c", STATSD_ERR_VALUE),
    ERR("num_leading_tab", "x:\t1|c", STATSD_ERR_VALUE),
    ERR("num_comma_decimal", "x:1,5|c", STATSD_ERR_VALUE),
    ERR("num_underscore", "x:1_000|c", STATSD_ERR_VALUE),
    ERR("num_trailing_garbage", "x:12abc|c", STATSD_ERR_VALUE),
    ERR("num_suffix_f", "x:1.5f|c", STATSD_ERR_VALUE),
    ERR("num_arabic_digit", "x:\xd9\xa1|c", STATSD_ERR_VALUE),
    ERR("num_embedded_nul", "x:1\0002|c", STATSD_ERR_VALUE),
    ERR("num_high_byte", "x:1\xff|c", STATSD_ERR_VALUE),

    /* --- Packed values (DogStatsD 1.1) --- */
    { .id = "packed_distribution", IN("x:1:2.5:-3|d"), .name = "x", .type = STATSD_DISTRIBUTION, V(1, 2.5, -3) },
    { .id = "packed_timer", IN("x:10:20|ms|@0.1"), .name = "x", .type = STATSD_TIMER, V(10, 20), .rate = 0.1 },
    { .id = "packed_counter", IN("x:1:1:1|c"), .name = "x", .type = STATSD_COUNTER, V(1, 1, 1) },
    { .id = "packed_gauge", IN("x:1:2|g"), .name = "x", .type = STATSD_GAUGE, V(1, 2) },
    ERR("packed_empty_middle", "x:1::2|d", STATSD_ERR_VALUE),
    ERR("packed_empty_last", "x:1:|d", STATSD_ERR_VALUE),
    ERR("packed_empty_first", "x::1|d", STATSD_ERR_VALUE),
    ERR("packed_bad_second", "x:1:nan|d", STATSD_ERR_VALUE),

    /* --- Gauge sign rules (statsd.h, PEERS.md trap 6) --- */
    { .id = "gauge_delta_rule_plus", IN("g:+3|g"), .rule = DELTA, .name = "g", .type = STATSD_GAUGE, V(3), .delta = true },
    { .id = "gauge_delta_rule_minus", IN("g:-2|g"), .rule = DELTA, .name = "g", .type = STATSD_GAUGE, V(-2), .delta = true },
    { .id = "gauge_delta_rule_minus_dog", IN("g:-2|g|#a:b"), .rule = DELTA, .name = "g", .type = STATSD_GAUGE,
      V(-2), .delta = true, TAGS({ "a", "b" }), .dog = true },
    { .id = "gauge_delta_rule_unsigned", IN("g:5|g"), .rule = DELTA, .name = "g", .type = STATSD_GAUGE, V(5) },
    { .id = "gauge_abs_rule_plus", IN("g:+3|g"), .rule = ABS, .name = "g", .type = STATSD_GAUGE, V(3) },
    { .id = "gauge_abs_rule_minus", IN("g:-2|g"), .rule = ABS, .name = "g", .type = STATSD_GAUGE, V(-2) },
    { .id = "gauge_auto_plus_dog", IN("g:+3|g|#a:b"), .name = "g", .type = STATSD_GAUGE, V(3), .delta = true,
      TAGS({ "a", "b" }), .dog = true },
    { .id = "gauge_auto_minus_ts", IN("g:-2|g|T5"), .name = "g", .type = STATSD_GAUGE, V(-2), .has_ts = true,
      .ts = 5, .dog = true },
    { .id = "gauge_auto_minus_container", IN("g:-2|g|c:abc"), .name = "g", .type = STATSD_GAUGE, V(-2),
      .dog = true, .container = "abc" },
    { .id = "gauge_auto_minus_external", IN("g:-2|g|e:it-false,cn-x"), .name = "g", .type = STATSD_GAUGE,
      V(-2), .dog = true },
    { .id = "gauge_auto_minus_empty_tags", IN("x:-3|g|#"), .name = "x", .type = STATSD_GAUGE, V(-3), .dog = true },
    { .id = "gauge_auto_minus_unknown_ext", IN("g:-2|g|x:y"), .name = "g", .type = STATSD_GAUGE, V(-2), .delta = true },
    { .id = "gauge_auto_minus_rate", IN("g:-2|g|@0.5"), .name = "g", .type = STATSD_GAUGE, V(-2), .delta = true,
      .rate = 0.5 },
    { .id = "gauge_auto_plus_zero", IN("g:+0|g"), .name = "g", .type = STATSD_GAUGE, V(0), .delta = true },
    { .id = "gauge_auto_packed_plus", IN("g:+1:+2|g"), .name = "g", .type = STATSD_GAUGE, V(1, 2), .delta = true },
    { .id = "gauge_auto_packed_both_signs", IN("g:-1:+2|g"), .name = "g", .type = STATSD_GAUGE, V(-1, 2), .delta = true },
    { .id = "gauge_delta_packed_both_signs", IN("g:-1:+2|g"), .rule = DELTA, .name = "g", .type = STATSD_GAUGE,
      V(-1, 2), .delta = true },
    { .id = "gauge_abs_packed_mixed", IN("g:-1:+2:3|g"), .rule = ABS, .name = "g", .type = STATSD_GAUGE, V(-1, 2, 3) },
    { .id = "gauge_auto_packed_minus_dog", IN("g:-1:3|g|#a"), .name = "g", .type = STATSD_GAUGE, V(-1, 3),
      TAGS({ "a", NULL }), .dog = true },
    ERR("gauge_auto_packed_mixed", "g:1:+2|g", STATSD_ERR_VALUE),
    ERR("gauge_auto_packed_mixed_dog", "g:-1:+2|g|#a", STATSD_ERR_VALUE),
    ERR_RULE("gauge_delta_packed_mixed", "g:-1:2|g", DELTA, STATSD_ERR_VALUE),
    { .id = "counter_sign_not_delta", IN("c:+1|c"), .rule = DELTA, .name = "c", .type = STATSD_COUNTER, V(1) },

    /* --- Sample rates --- */
    { .id = "rate_one", IN("c:1|c|@1"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 1 },
    { .id = "rate_one_point_zero", IN("c:1|c|@1.0"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 1 },
    { .id = "rate_leading_dot", IN("c:1|c|@.5"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 0.5 },
    { .id = "rate_exp", IN("c:1|c|@1e-3"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 0.001 },
    { .id = "rate_on_set", IN("u:bob|s|@0.1"), .name = "u", .type = STATSD_SET, .member = "bob", .rate = 0.1 },
    { .id = "rate_on_gauge", IN("g:1|g|@0.25"), .name = "g", .type = STATSD_GAUGE, V(1), .rate = 0.25 },
    { .id = "rate_after_tags", IN("c:1|c|#a:b|@0.5"), .name = "c", .type = STATSD_COUNTER, V(1), .rate = 0.5,
      TAGS({ "a", "b" }), .dog = true },
    ERR("rate_empty", "name:1|c|@", STATSD_ERR_RATE),
    ERR("rate_zero", "c:1|c|@0", STATSD_ERR_RATE),
    ERR("rate_neg_zero", "c:1|c|@-0", STATSD_ERR_RATE),
    ERR("rate_above_one", "c:1|c|@1.5", STATSD_ERR_RATE),
    ERR("rate_negative", "c:1|c|@-1", STATSD_ERR_RATE),
    ERR("rate_alpha", "c:1|c|@abc", STATSD_ERR_RATE),
    ERR("rate_nan", "c:1|c|@nan", STATSD_ERR_RATE),
    ERR("rate_inf", "c:1|c|@inf", STATSD_ERR_RATE),
    ERR("rate_hex", "c:1|c|@0x1p-1", STATSD_ERR_RATE),
    ERR("rate_space", "c:1|c|@ 0.5", STATSD_ERR_RATE),
    ERR("rate_underflow", "c:1|c|@1e-400", STATSD_ERR_RATE),
    ERR("rate_repeated", "c:1|c|@0.5|@0.5", STATSD_ERR_RATE),

    /* --- Timestamps --- */
    { .id = "ts_zero", IN("x:1|c|T0"), .name = "x", .type = STATSD_COUNTER, V(1), .has_ts = true, .ts = 0, .dog = true },
    { .id = "ts_int64_max", IN("x:1|c|T9223372036854775807"), .name = "x", .type = STATSD_COUNTER, V(1),
      .has_ts = true, .ts = INT64_MAX, .dog = true },
    ERR("ts_empty", "x:1|c|T", STATSD_ERR_TIMESTAMP),
    ERR("ts_negative", "x:1|c|T-1", STATSD_ERR_TIMESTAMP),
    ERR("ts_plus", "x:1|c|T+1", STATSD_ERR_TIMESTAMP),
    ERR("ts_fraction", "x:1|c|T1.5", STATSD_ERR_TIMESTAMP),
    ERR("ts_alpha", "x:1|c|Tabc", STATSD_ERR_TIMESTAMP),
    ERR("ts_space", "x:1|c|T 1", STATSD_ERR_TIMESTAMP),
    ERR("ts_overflow_by_one", "x:1|c|T9223372036854775808", STATSD_ERR_TIMESTAMP),
    ERR("ts_overflow", "x:1|c|T99999999999999999999", STATSD_ERR_TIMESTAMP),
    ERR("ts_repeated", "x:1|c|T1|T2", STATSD_ERR_TIMESTAMP),

    /* --- Sets --- */
    { .id = "set_member_with_colon", IN("u:a:b|s"), .name = "u", .type = STATSD_SET, .member = "a:b" },
    { .id = "set_member_numeric", IN("u:1|s"), .name = "u", .type = STATSD_SET, .member = "1" },
    { .id = "set_member_utf8", IN("u:caf\xc3\xa9|s"), .name = "u", .type = STATSD_SET, .member = "caf\xc3\xa9" },
    { .id = "set_member_space", IN("u:a b|s"), .name = "u", .type = STATSD_SET, .member = "a b" },
    { .id = "set_tags", IN("u:alice|s|#env:prod"), .name = "u", .type = STATSD_SET, .member = "alice",
      TAGS({ "env", "prod" }), .dog = true },
    ERR("set_empty", "u:|s", STATSD_ERR_VALUE),
    ERR("set_invalid_utf8", "u:\xff|s", STATSD_ERR_VALUE),
    ERR("set_control", "u:a\tb|s", STATSD_ERR_VALUE),
    ERR("set_nul", "u:a\0b|s", STATSD_ERR_VALUE),

    /* --- Names --- */
    { .id = "name_utf8", IN("caf\xc3\xa9.latency:1|ms"), .name = "caf\xc3\xa9.latency", .type = STATSD_TIMER, V(1) },
    { .id = "name_emoji", IN("\xf0\x9f\x98\x80:1|c"), .name = "\xf0\x9f\x98\x80", .type = STATSD_COUNTER, V(1) },
    { .id = "name_punctuation", IN("a-b_c.d/e@f=g:1|c"), .name = "a-b_c.d/e@f=g", .type = STATSD_COUNTER, V(1) },
    ERR("name_empty", ":1|c", STATSD_ERR_NAME),
    ERR("name_space", "a b:1|c", STATSD_ERR_NAME),
    ERR("name_trailing_space", "x :1|c", STATSD_ERR_NAME),
    ERR("name_leading_space", " x:1|c", STATSD_ERR_NAME),
    ERR("name_tab", "a\tb:1|c", STATSD_ERR_NAME),
    ERR("name_control", "a\x01:1|c", STATSD_ERR_NAME),
    ERR("name_del", "a\x7f:1|c", STATSD_ERR_NAME),
    ERR("name_nul", "a\0b:1|c", STATSD_ERR_NAME),
    ERR("name_invalid_byte", "\xff:1|c", STATSD_ERR_NAME),
    ERR("name_latin1", "caf\xe9:1|c", STATSD_ERR_NAME),
    ERR("name_truncated_utf8", "caf\xc3:1|c", STATSD_ERR_NAME),
    ERR("name_truncated_utf8_at_end", "caf\xe2\x82", STATSD_ERR_NAME),
    ERR("name_stray_continuation", "\x80:1|c", STATSD_ERR_NAME),
    ERR("name_overlong", "\xc0\xaf:1|c", STATSD_ERR_NAME),
    ERR("name_overlong_3", "\xe0\x80\xaf:1|c", STATSD_ERR_NAME),
    ERR("name_surrogate", "\xed\xa0\x80:1|c", STATSD_ERR_NAME),
    ERR("name_above_max", "\xf4\x90\x80\x80:1|c", STATSD_ERR_NAME),
    ERR("name_f5", "\xf5\x80\x80\x80:1|c", STATSD_ERR_NAME),
    ERR("name_only", "name", STATSD_ERR_VALUE),
    ERR("name_pipe_no_value", "x|c", STATSD_ERR_VALUE),
    ERR("name_pipe_before_colon", "a|b:1|c", STATSD_ERR_VALUE),
    ERR("name_colon_only", ":", STATSD_ERR_NAME),
    ERR("name_pipe_only", "|", STATSD_ERR_NAME),

    /* --- Empty, blank, CRLF, truncated --- */
    ERR("empty", "", STATSD_ERR_EMPTY),
    ERR("empty_cr", "\r", STATSD_ERR_EMPTY),
    ERR("empty_spaces", "   ", STATSD_ERR_EMPTY),
    ERR("empty_tabs", "\t \t", STATSD_ERR_EMPTY),
    ERR("empty_space_cr", " \r", STATSD_ERR_EMPTY),
    ERR("empty_newline", "\n", STATSD_ERR_EMPTY),
    ERR("empty_nul", "\0", STATSD_ERR_NAME),
    { .id = "crlf", IN("x:1|c\r"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "crlf_after_tags", IN("x:1|c|#a:b\r"), .name = "x", .type = STATSD_COUNTER, V(1), TAGS({ "a", "b" }),
      .dog = true },
    { .id = "crlf_after_ts", IN("x:1|c|T7\r"), .name = "x", .type = STATSD_COUNTER, V(1), .has_ts = true, .ts = 7,
      .dog = true },
    ERR("crlf_two_cr", "x:1|c\r\r", STATSD_ERR_TYPE),
    ERR("crlf_lf_kept", "x:1|c\n", STATSD_ERR_TYPE),
    ERR("cr_in_name", "a\rb:1|c", STATSD_ERR_NAME),
    ERR("truncated_colon", "name:", STATSD_ERR_VALUE),
    ERR("truncated_pipe", "name:1|", STATSD_ERR_TYPE),
    ERR("truncated_rate", "name:1|c|@", STATSD_ERR_RATE),
    ERR("truncated_ts", "name:1|c|T", STATSD_ERR_TIMESTAMP),
    ERR("truncated_bracket", "name[k=v", STATSD_ERR_TAGS),
    { .id = "truncated_tags", IN("name:1|c|#"), .name = "name", .type = STATSD_COUNTER, V(1), .dog = true },
    { .id = "truncated_tags_comma", IN("name:1|c|#a:b,"), .name = "name", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }), .dog = true },
    { .id = "trailing_empty_section", IN("name:1|c|"), .name = "name", .type = STATSD_COUNTER, V(1) },

    /* --- Events and service checks --- */
    { .id = "event_minimal", IN("_e{"), .res = STATSD_EVENT, .dog = true },
    { .id = "event_plain", IN("_e{5,4}:title|text"), .res = STATSD_EVENT, .dog = true },
    { .id = "service_check_minimal", IN("_sc|"), .res = STATSD_SERVICE_CHECK, .dog = true },
    ERR("event_prefix_only", "_e", STATSD_ERR_VALUE),
    ERR("service_check_prefix_only", "_sc", STATSD_ERR_VALUE),
    { .id = "underscore_metric", IN("_e:1|c"), .name = "_e", .type = STATSD_COUNTER, V(1) },

    /* --- DogStatsD tags --- */
    { .id = "dog_value_with_colon", IN("m:1|c|#a:b:c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b:c" }), .dog = true },
    { .id = "dog_flag", IN("m:1|c|#flag"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "flag", NULL }), .dog = true },
    { .id = "dog_empty_value", IN("m:1|c|#k:"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "k", NULL }), .dog = true },
    { .id = "dog_empty_elements", IN("m:1|c|#a:b,,c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }, { "c", NULL }), .dog = true },
    { .id = "dog_equal_in_key", IN("m:1|c|#a=b"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "a=b", NULL }), .dog = true },
    { .id = "dog_space_in_value", IN("m:1|c|#a:b c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b c" }), .dog = true },
    { .id = "dog_utf8", IN("m:1|c|#caf\xc3\xa9:\xe2\x82\xac"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "caf\xc3\xa9", "\xe2\x82\xac" }), .dog = true },
    { .id = "dog_brackets_hash", IN("m:1|c|#a[1]:#x"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a[1]", "#x" }), .dog = true },
    { .id = "dog_two_sections", IN("m:1|c|#a:1|#b:2"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "1" }, { "b", "2" }), .dog = true },
    { .id = "dog_duplicate_keys", IN("m:1|c|#a:1,a:2"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "1" }, { "a", "2" }), .dog = true },
    ERR("dog_empty_key", "m:1|c|#:v", STATSD_ERR_TAGS),
    ERR("dog_space_in_key", "m:1|c|#a b:c", STATSD_ERR_TAGS),
    ERR("dog_invalid_utf8", "m:1|c|#a:b,\xff", STATSD_ERR_TAGS),
    ERR("dog_control", "m:1|c|#a\x01:b", STATSD_ERR_TAGS),
    ERR("dog_tab_in_value", "m:1|c|#a:b\tc", STATSD_ERR_TAGS),
    ERR("dog_nul", "m:1|c|#a:\0", STATSD_ERR_TAGS),

    /* --- InfluxDB, Librato, SignalFX tags, merged --- */
    { .id = "influx_tags", IN("m,a=b,c=d:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }, { "c", "d" }) },
    { .id = "influx_value_with_equal", IN("m,a=b=c:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b=c" }) },
    { .id = "influx_flag", IN("m,flag:1|c"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "flag", NULL }) },
    { .id = "influx_empty_elements", IN("m,a=b,,c=d,:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }, { "c", "d" }) },
    { .id = "influx_empty_list", IN("m,:1|c"), .name = "m", .type = STATSD_COUNTER, V(1) },
    { .id = "influx_space_in_value", IN("m,a=b c:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b c" }) },
    { .id = "influx_hash_in_value", IN("m,a=b#c=d:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b#c=d" }) },
    { .id = "influx_bracket_in_value", IN("m,a=[x]:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "[x]" }) },
    { .id = "influx_set", IN("u,env=prod:alice|s"), .name = "u", .type = STATSD_SET, .member = "alice",
      TAGS({ "env", "prod" }) },
    ERR("influx_empty_key", "m,=v:1|c", STATSD_ERR_TAGS),
    ERR("influx_space_in_key", "m,a b=c:1|c", STATSD_ERR_TAGS),
    ERR("influx_invalid_utf8", "m,a=\xc3:1|c", STATSD_ERR_TAGS),
    ERR("influx_no_name", ",a=b:1|c", STATSD_ERR_NAME),
    ERR("influx_no_value", "m,a=b", STATSD_ERR_VALUE),
    ERR("influx_pipe_no_value", "m,a=b|c", STATSD_ERR_VALUE),
    { .id = "librato_tags", IN("m#a=b,c=d:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }, { "c", "d" }) },
    { .id = "librato_flag", IN("m#foo:1|c"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "foo", NULL }) },
    ERR("librato_empty_key", "m#=b:1|c", STATSD_ERR_TAGS),
    { .id = "signalfx_suffix", IN("m[a=b,c=d]:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "b" }, { "c", "d" }) },
    { .id = "signalfx_inside", IN("my.[k=v]metric:1|c"), .name = "my.metric", .type = STATSD_COUNTER, V(1),
      TAGS({ "k", "v" }), .in_namebuf = true },
    { .id = "signalfx_prefix", IN("[k=v]m:1|c"), .name = "m", .type = STATSD_COUNTER, V(1), TAGS({ "k", "v" }) },
    { .id = "signalfx_two_groups", IN("a[k=v]b[x=y]c:1|c"), .name = "abc", .type = STATSD_COUNTER, V(1),
      TAGS({ "k", "v" }, { "x", "y" }), .in_namebuf = true },
    { .id = "signalfx_empty_group", IN("m[]:1|c"), .name = "m", .type = STATSD_COUNTER, V(1) },
    { .id = "signalfx_hash_comma_in_group", IN("m[a=#,b=c]:1|c"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "#" }, { "b", "c" }) },
    { .id = "signalfx_then_influx", IN("m[a=1]x,b=2:1|c"), .name = "mx", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "1" }, { "b", "2" }), .in_namebuf = true },
    { .id = "merged_styles", IN("m[a=1],b=2:1|c|#c:3"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "1" }, { "b", "2" }, { "c", "3" }), .dog = true },
    { .id = "merged_librato_dog", IN("m#a=1:1|c|#b:2|#c:3"), .name = "m", .type = STATSD_COUNTER, V(1),
      TAGS({ "a", "1" }, { "b", "2" }, { "c", "3" }), .dog = true },
    { .id = "signalfx_utf8_around", IN("caf\xc3\xa9[k=v].x:1|c"), .name = "caf\xc3\xa9.x", .type = STATSD_COUNTER,
      V(1), TAGS({ "k", "v" }), .in_namebuf = true },
    ERR("signalfx_only_group", "[k=v]:1|c", STATSD_ERR_NAME),
    ERR("signalfx_unclosed", "m[k=v:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_unclosed_pipe", "m[k=v|c", STATSD_ERR_TAGS),
    ERR("signalfx_nested", "m[k=[v]]:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_stray_close", "m]k:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_extra_close", "m[k=v]]:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_colon_inside", "m[k:v]:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_empty_key", "m[=v]:1|c", STATSD_ERR_TAGS),
    ERR("signalfx_split_utf8", "caf\xc3[k=v]\xa9:1|c", STATSD_ERR_NAME),

    /* --- Unknown extensions are ignored --- */
    { .id = "ext_unknown", IN("x:1|c|zzz"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "ext_c_without_colon", IN("x:1|c|c"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "ext_e_without_colon", IN("x:1|c|e"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "ext_binary_ignored", IN("x:1|c|x\xff\x01\0"), .name = "x", .type = STATSD_COUNTER, V(1) },
    { .id = "ext_empty_middle", IN("x:1|c||@0.5"), .name = "x", .type = STATSD_COUNTER, V(1), .rate = 0.5 },
    { .id = "ext_empty_container", IN("x:1|c|c:"), .name = "x", .type = STATSD_COUNTER, V(1), .dog = true,
      .container = "" },
    { .id = "ext_card", IN("x:1|c|card:high|#a:b"), .name = "x", .type = STATSD_COUNTER, V(1), TAGS({ "a", "b" }),
      .dog = true },
};

/* Copies s into a heap buffer of exactly n bytes (NULL for n == 0) so that
 * ASan reports any read past the end. */
static char *exact_copy(const char *s, size_t n)
{
    char *p;
    if (n == 0)
        return NULL;
    p = malloc(n);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

static void assert_span_eq(span_t got, const char *want, size_t want_len)
{
    char g[STATSD_MAX_LINE + 1], w[STATSD_MAX_LINE + 1];
    assert_true(got.len <= STATSD_MAX_LINE && want_len <= STATSD_MAX_LINE);
    assert_true(got.len == 0 || got.p != NULL);
    if (got.len)
        memcpy(g, got.p, got.len);
    g[got.len] = '\0';
    memcpy(w, want, want_len);
    w[want_len] = '\0';
    assert_string_equal(g, w);
    assert_int_equal(got.len, want_len);
}

/* Every span lies in the input buffer (or, for the name, in namebuf). */
static void assert_in(span_t s, const char *buf, size_t len)
{
    if (s.len == 0)
        return;
    assert_true(s.p >= buf && s.p + s.len <= buf + len);
}

static void assert_same_double(double got, double want)
{
    if (memcmp(&got, &want, sizeof got) != 0)
        fail_msg("got %.17g, want %.17g", got, want);
}

static void check_line(const case_t *c, const char *buf, const statsd_line_t *out)
{
    size_t n = c->inlen;

    assert_span_eq(out->name, c->name, strlen(c->name));
    assert_true(out->name.len > 0 && out->name.len <= STATSD_MAX_NAME);
    if (c->in_namebuf)
        assert_ptr_equal(out->name.p, out->namebuf);
    else
        assert_in(out->name, buf, n);
    assert_int_equal(out->type, c->type);
    assert_int_equal(out->nvalues, c->nvalues);
    for (size_t i = 0; i < c->nvalues; i++)
        assert_same_double(out->values[i], c->values[i]);
    if (c->type == STATSD_SET) {
        assert_span_eq(out->member, c->member, strlen(c->member));
        assert_in(out->member, buf, n);
    } else
        assert_int_equal(out->member.len, 0);
    assert_int_equal(out->delta, c->delta);
    assert_same_double(out->rate, c->rate == 0 ? 1.0 : c->rate);
    assert_int_equal(out->ntags, c->ntags);
    for (size_t i = 0; i < c->ntags; i++) {
        const char *v = c->tags[i].v ? c->tags[i].v : "";
        assert_span_eq(out->tags[i].key, c->tags[i].k, strlen(c->tags[i].k));
        assert_span_eq(out->tags[i].value, v, strlen(v));
        assert_in(out->tags[i].key, buf, n);
        assert_in(out->tags[i].value, buf, n);
    }
    assert_int_equal(out->has_ts, c->has_ts);
    if (c->has_ts)
        assert_int_equal(out->ts, c->ts);
    assert_int_equal(out->dogstatsd, c->dog);
    if (c->container) {
        assert_non_null(out->container.p);
        assert_span_eq(out->container, c->container, strlen(c->container));
        assert_in(out->container, buf, n);
    } else
        assert_null(out->container.p);
}

static void test_case(void **state)
{
    const case_t *c = *state;
    char *buf = exact_copy(c->in, c->inlen);
    statsd_line_t *out = malloc(sizeof *out);
    statsd_result_t r;

    assert_non_null(out);
    memset(out, 0xa5, sizeof *out); /* no field may be left over from before */
    r = statsd_parse(buf, c->inlen, c->rule, out);
    assert_string_equal(statsd_result_name(r), statsd_result_name(c->res));
    if (r == STATSD_OK)
        check_line(c, buf, out);
    else if (r == STATSD_EVENT || r == STATSD_SERVICE_CHECK)
        assert_true(out->dogstatsd);
    free(out);
    free(buf);
}

/* --- Generated inputs: sizes at and past each limit. --- */

/* Parses an exact-size copy of s, which stays alive (for the spans in
 * *out) until the next call. */
static statsd_result_t parse_exact(const char *s, size_t n, statsd_line_t *out)
{
    static char *buf;
    free(buf);
    buf = exact_copy(s, n);
    return statsd_parse(buf, n, STATSD_GAUGE_AUTO, out);
}

static statsd_line_t g_out; /* big; keep it off the test stack */

static void test_line_length_limit(void **state)
{
    static char line[STATSD_MAX_LINE + 2];
    size_t n;
    (void)state;

    /* "x:1|c|" then filler in an ignored extension, exactly MAX bytes. */
    memset(line, 'z', sizeof line);
    memcpy(line, "x:1|c|", 6);
    n = STATSD_MAX_LINE;
    assert_int_equal(parse_exact(line, n, &g_out), STATSD_OK);
    line[n] = '\r';
    assert_int_equal(parse_exact(line, n + 1, &g_out), STATSD_OK);
    line[n] = 'z';
    assert_int_equal(parse_exact(line, n + 1, &g_out), STATSD_ERR_TOO_LONG);
    assert_int_equal(parse_exact(line, n + 2, &g_out), STATSD_ERR_TOO_LONG);
    /* Oversized garbage or blanks are too long before anything else. */
    memset(line, ' ', sizeof line);
    assert_int_equal(parse_exact(line, n + 1, &g_out), STATSD_ERR_TOO_LONG);
    assert_int_equal(parse_exact(line, n, &g_out), STATSD_ERR_EMPTY);
}

static void test_name_length_limit(void **state)
{
    char line[STATSD_MAX_NAME + 64];
    size_t n;
    (void)state;

    memset(line, 'a', STATSD_MAX_NAME);
    memcpy(line + STATSD_MAX_NAME, ":1|c", 4);
    assert_int_equal(parse_exact(line, STATSD_MAX_NAME + 4, &g_out), STATSD_OK);
    assert_int_equal(g_out.name.len, STATSD_MAX_NAME);

    memset(line, 'a', STATSD_MAX_NAME + 1);
    memcpy(line + STATSD_MAX_NAME + 1, ":1|c", 4);
    assert_int_equal(parse_exact(line, STATSD_MAX_NAME + 5, &g_out), STATSD_ERR_NAME);

    /* A name split by a bracket group fills namebuf exactly, then overflows. */
    n = 0;
    memset(line, 'a', 10);
    n += 10;
    memcpy(line + n, "[k=v]", 5);
    n += 5;
    memset(line + n, 'b', STATSD_MAX_NAME - 10);
    n += STATSD_MAX_NAME - 10;
    memcpy(line + n, ":1|c", 4);
    assert_int_equal(parse_exact(line, n + 4, &g_out), STATSD_OK);
    assert_int_equal(g_out.name.len, STATSD_MAX_NAME);
    assert_ptr_equal(g_out.name.p, g_out.namebuf);
    assert_memory_equal(g_out.namebuf, "aaaaaaaaaabbb", 13);
    assert_int_equal(g_out.namebuf[STATSD_MAX_NAME - 1], 'b');

    memmove(line + n + 1, line + n, 4);
    line[n] = 'b';
    assert_int_equal(parse_exact(line, n + 5, &g_out), STATSD_ERR_NAME);

    /* Influx tags do not count towards the name. */
    memset(line, 'a', STATSD_MAX_NAME);
    memcpy(line + STATSD_MAX_NAME, ",k=v:1|c", 8);
    assert_int_equal(parse_exact(line, STATSD_MAX_NAME + 8, &g_out), STATSD_OK);
    assert_int_equal(g_out.name.len, STATSD_MAX_NAME);
    assert_int_equal(g_out.ntags, 1);
}

static void test_tags_limit(void **state)
{
    char line[1024];
    int n;
    (void)state;

    n = snprintf(line, sizeof line, "m:1|c|#");
    for (int i = 0; i < STATSD_MAX_TAGS; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, "%sk%d:v%d", i ? "," : "", i, i);
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_OK);
    assert_int_equal(g_out.ntags, STATSD_MAX_TAGS);
    assert_span_eq(g_out.tags[STATSD_MAX_TAGS - 1].value, "v31", 3);
    n += snprintf(line + n, sizeof line - (size_t)n, ",extra");
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_ERR_TAGS);

    /* The limit counts every style together: 16 Influx + 16 DogStatsD. */
    n = snprintf(line, sizeof line, "m");
    for (int i = 0; i < STATSD_MAX_TAGS / 2; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, ",i%d=v", i);
    n += snprintf(line + n, sizeof line - (size_t)n, ":1|c|#");
    for (int i = 0; i < STATSD_MAX_TAGS / 2; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, "%sd%d:v", i ? "," : "", i);
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_OK);
    assert_int_equal(g_out.ntags, STATSD_MAX_TAGS);
    n += snprintf(line + n, sizeof line - (size_t)n, "|#one_more");
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_ERR_TAGS);

    /* Empty elements do not count. */
    n = snprintf(line, sizeof line, "m:1|c|#");
    for (int i = 0; i < STATSD_MAX_TAGS; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, "t,,");
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_OK);
    assert_int_equal(g_out.ntags, STATSD_MAX_TAGS);
}

static void test_values_limit(void **state)
{
    char line[1024];
    int n;
    (void)state;

    n = snprintf(line, sizeof line, "d");
    for (int i = 0; i < STATSD_MAX_VALUES; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, ":%d", i);
    n += snprintf(line + n, sizeof line - (size_t)n, "|d");
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_OK);
    assert_int_equal(g_out.nvalues, STATSD_MAX_VALUES);
    assert_same_double(g_out.values[STATSD_MAX_VALUES - 1], STATSD_MAX_VALUES - 1);

    n = snprintf(line, sizeof line, "d");
    for (int i = 0; i <= STATSD_MAX_VALUES; i++)
        n += snprintf(line + n, sizeof line - (size_t)n, ":%d", i);
    n += snprintf(line + n, sizeof line - (size_t)n, "|d");
    assert_int_equal(parse_exact(line, (size_t)n, &g_out), STATSD_ERR_TOO_MANY_VALUES);
}

static void test_number_length_limit(void **state)
{
    char line[STATSD_MAX_NUMBER + 16];
    size_t n;
    (void)state;

    /* 1e299 written out in full: 300 digits, '.', 99 zeros = 400 bytes. */
    memcpy(line, "x:", 2);
    n = 2;
    line[n++] = '1';
    memset(line + n, '0', 299);
    n += 299;
    line[n++] = '.';
    memset(line + n, '0', 99);
    n += 99;
    memcpy(line + n, "|g", 2);
    assert_int_equal(parse_exact(line, n + 2, &g_out), STATSD_OK);
    assert_same_double(g_out.values[0], 1e299);

    memmove(line + n + 1, line + n, 2);
    line[n] = '0';
    assert_int_equal(parse_exact(line, n + 3, &g_out), STATSD_ERR_VALUE);

    /* Written out in full, 1e309 overflows: 310 digits. */
    n = 2;
    line[n++] = '1';
    memset(line + n, '0', 309);
    n += 309;
    memcpy(line + n, "|g", 2);
    assert_int_equal(parse_exact(line, n + 2, &g_out), STATSD_ERR_VALUE);
    line[2] = '0'; /* 0 followed by 309 zeros: fine */
    assert_int_equal(parse_exact(line, n + 2, &g_out), STATSD_OK);
    assert_same_double(g_out.values[0], 0.0);
}

/* The parsed double is bit for bit what strtod gives, over generated
 * tokens that exercise both the fast path and the strtod fallback. */
static void test_numbers_match_strtod(void **state)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    char tok[128], line[160];
    unsigned long ok = 0;
    (void)state;

#define RND(k) ((x ^= x << 13, x ^= x >> 7, x ^= x << 17), (size_t)(x % (k)))
    for (int iter = 0; iter < 300000; iter++) {
        size_t n = 0, nint = RND(22), nfrac = RND(3) ? RND(22) : 0;
        if (RND(4) == 0)
            tok[n++] = RND(2) ? '-' : '+';
        for (size_t i = 0; i < nint; i++)
            tok[n++] = (char)('0' + (i == 0 && RND(3) ? 1 + RND(9) : RND(10)));
        if (nfrac || RND(3) == 0) {
            tok[n++] = '.';
            for (size_t i = 0; i < nfrac; i++)
                tok[n++] = (char)('0' + RND(10));
        }
        if (RND(3) == 0) {
            tok[n++] = RND(2) ? 'e' : 'E';
            if (RND(2))
                tok[n++] = RND(2) ? '-' : '+';
            n += (size_t)snprintf(tok + n, sizeof tok - n, "%zu", RND(5) ? RND(30) : RND(340));
        }
        tok[n] = '\0';

        errno = 0;
        char *end;
        double want = strtod(tok, &end);
        bool valid = n > 0 && end == tok + n && errno != ERANGE && isfinite(want);
        int len = snprintf(line, sizeof line, "x:%s|ms", tok);
        statsd_result_t r = parse_exact(line, (size_t)len, &g_out);
        if (!valid) {
            if (r != STATSD_ERR_VALUE)
                fail_msg("%s: strtod rejects it, parser says %s", tok, statsd_result_name(r));
            continue;
        }
        if (r != STATSD_OK)
            fail_msg("%s: strtod gives %.17g, parser says %s", tok, want, statsd_result_name(r));
        if (memcmp(&g_out.values[0], &want, sizeof want) != 0)
            fail_msg("%s: got %.17g, strtod %.17g", tok, g_out.values[0], want);
        ok++;
    }
#undef RND
    assert_true(ok > 100000);

    /* Hard cases for correct rounding. */
    static const char *const hard[] = {
        "9007199254740993", "9007199254740992", "9007199254740991", "4503599627370497.5",
        "2.2250738585072011e-308", "2.2250738585072012e-308", "1e22", "1e23", "8.9884656743115795e307",
        "0.1", "0.2", "0.3", "123456789012345.6789", "1.00000000000000011102230246251565404236316680908203125",
        "1.00000000000000011102230246251565404236316680908203124", "7.2057594037927933e16",
        "4.9406564584124654e-324", "5e-324", "1e-310", "3.0517578125e-05", "100000000000000000000000",
        "0.000000000000000000000000000000000000000001", "18446744073709551615", "18446744073709551616",
    };
    for (size_t i = 0; i < ARRAY_LEN(hard); i++) {
        errno = 0;
        char *end;
        double want = strtod(hard[i], &end);
        bool valid = errno != ERANGE && isfinite(want);
        int len = snprintf(line, sizeof line, "x:%s|ms", hard[i]);
        statsd_result_t r = parse_exact(line, (size_t)len, &g_out);
        assert_int_equal(r, valid ? STATSD_OK : STATSD_ERR_VALUE);
        if (valid)
            assert_same_double(g_out.values[0], want);
    }
}

static void test_line_copy(void **state)
{
    static statsd_line_t a, b;
    const char *in = "my.[k=v]metric:1|c";
    (void)state;

    assert_int_equal(statsd_parse(in, strlen(in), STATSD_GAUGE_AUTO, &a), STATSD_OK);
    assert_ptr_equal(a.name.p, a.namebuf);
    statsd_line_copy(&b, &a);
    assert_ptr_equal(b.name.p, b.namebuf);
    memset(&a, 0, sizeof a);
    assert_span_eq(b.name, "my.metric", 9);
    assert_span_eq(b.tags[0].key, "k", 1);

    in = "plain:1|c";
    assert_int_equal(statsd_parse(in, strlen(in), STATSD_GAUGE_AUTO, &a), STATSD_OK);
    statsd_line_copy(&b, &a);
    assert_ptr_equal(b.name.p, in);
}

/* A second parse into the same struct leaves nothing from the first. */
static void test_reuse_out(void **state)
{
    static statsd_line_t o;
    const char *a = "h:1:2:3|h|@0.5|#a:b|T1656581400|c:abc123";
    const char *b = "x:-4|g";
    (void)state;

    assert_int_equal(statsd_parse(a, strlen(a), STATSD_GAUGE_AUTO, &o), STATSD_OK);
    assert_int_equal(statsd_parse(b, strlen(b), STATSD_GAUGE_AUTO, &o), STATSD_OK);
    assert_int_equal(o.nvalues, 1);
    assert_int_equal(o.ntags, 0);
    assert_false(o.has_ts);
    assert_false(o.dogstatsd);
    assert_null(o.container.p);
    assert_true(o.rate == 1.0);
    assert_true(o.delta);
}

static void test_null_empty(void **state)
{
    (void)state;
    assert_int_equal(statsd_parse(NULL, 0, STATSD_GAUGE_AUTO, &g_out), STATSD_ERR_EMPTY);
}

static void test_result_names(void **state)
{
    (void)state;
    for (int i = 0; i < STATSD_RESULT_COUNT; i++) {
        const char *a = statsd_result_name((statsd_result_t)i);
        assert_string_not_equal(a, "unknown");
        for (const char *p = a; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a, statsd_result_name((statsd_result_t)j));
    }
    assert_string_equal(statsd_result_name(STATSD_OK), "ok");
    assert_string_equal(statsd_result_name(STATSD_ERR_VALUE), "bad_value");
    assert_string_equal(statsd_result_name(STATSD_ERR_TOO_LONG), "line_too_long");
    assert_string_equal(statsd_result_name(STATSD_RESULT_COUNT), "unknown");
}

static void test_table_ids_unique(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(cases[i].id, cases[j].id) == 0)
                fail_msg("duplicate case id %s", cases[i].id);
}

static const struct CMUnitTest extra_tests[] = {
    cmocka_unit_test(test_line_length_limit),
    cmocka_unit_test(test_name_length_limit),
    cmocka_unit_test(test_tags_limit),
    cmocka_unit_test(test_values_limit),
    cmocka_unit_test(test_number_length_limit),
    cmocka_unit_test(test_numbers_match_strtod),
    cmocka_unit_test(test_line_copy),
    cmocka_unit_test(test_reuse_out),
    cmocka_unit_test(test_null_empty),
    cmocka_unit_test(test_result_names),
    cmocka_unit_test(test_table_ids_unique),
};

int main(int argc, char **argv)
{
    struct CMUnitTest tests[ARRAY_LEN(cases) + ARRAY_LEN(extra_tests)];
    size_t n = 0;

    if (argc > 2) {
        fprintf(stderr, "usage: %s [test-name-glob]\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        tests[n++] = (struct CMUnitTest){ .name = cases[i].id, .test_func = test_case,
                                          .initial_state = &cases[i] };
    for (size_t i = 0; i < ARRAY_LEN(extra_tests); i++)
        tests[n++] = extra_tests[i];
    if (argc == 2)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests_name("statsd", tests, NULL, NULL);
}

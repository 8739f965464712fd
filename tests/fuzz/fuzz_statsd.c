/* fuzz_statsd: libFuzzer target for the StatsD line parser. The input is
 * a datagram: it is split on '\n' and every line is parsed under each
 * gauge rule, from an exact-size heap copy so that ASan sees any read past
 * the end. Accepted lines are checked against the contract in statsd.h,
 * and a short input made only of number bytes is also checked bit for bit
 * against strtod.
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -Icommon -Icollectd collectd/statsd.c tests/fuzz/fuzz_statsd.c -o fuzz_statsd
 *   ./fuzz_statsd -max_total_time=60 tests/fuzz/corpus/statsd */
#include "statsd.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static statsd_line_t out; /* large: off the stack */

static void in_line(span_t s, const char *line, size_t len)
{
    if (s.len > 0 && (s.p < line || s.p + s.len > line + len))
        abort();
}

static void check(const char *line, size_t len, statsd_result_t r)
{
    if (r < STATSD_OK || r >= STATSD_RESULT_COUNT || statsd_result_name(r) == NULL)
        abort();
    if (r != STATSD_OK)
        return;
    if (out.name.len == 0 || out.name.len > STATSD_MAX_NAME)
        abort();
    if (out.name.p != out.namebuf)
        in_line(out.name, line, len);
    if (memchr(out.name.p, ':', out.name.len) || memchr(out.name.p, '|', out.name.len))
        abort();
    if (out.type == STATSD_SET) {
        if (out.nvalues != 0 || out.member.len == 0)
            abort();
        in_line(out.member, line, len);
    } else if (out.nvalues == 0 || out.nvalues > STATSD_MAX_VALUES)
        abort();
    for (size_t i = 0; i < out.nvalues; i++)
        if (!isfinite(out.values[i]))
            abort();
    if (out.delta && out.type != STATSD_GAUGE)
        abort();
    if (!(out.rate > 0.0 && out.rate <= 1.0))
        abort();
    if (out.ntags > STATSD_MAX_TAGS)
        abort();
    for (size_t i = 0; i < out.ntags; i++) {
        if (out.tags[i].key.len == 0)
            abort();
        in_line(out.tags[i].key, line, len);
        in_line(out.tags[i].value, line, len);
    }
    if (out.has_ts && out.ts < 0)
        abort();
    if ((out.has_ts || out.container.p) && !out.dogstatsd)
        abort();
    in_line(out.container, line, len);
}

static void parse_all_rules(const uint8_t *p, size_t n)
{
    static const statsd_gauge_sign_t rules[] = { STATSD_GAUGE_AUTO, STATSD_GAUGE_DELTA,
                                                 STATSD_GAUGE_ABSOLUTE };
    char *line = n ? malloc(n) : NULL;
    if (n && !line)
        abort();
    if (n)
        memcpy(line, p, n);
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        check(line, n, statsd_parse(line, n, rules[i], &out));
    free(line);
}

/* Numbers: for a token of [0-9+-.eE] bytes, the parser accepts it exactly
 * when strtod consumes all of it without ERANGE, with the same bits. */
static void number_differential(const uint8_t *data, size_t size)
{
    char tok[80], line[96];
    char *end;
    double want;
    bool valid;

    if (size == 0 || size >= sizeof tok)
        return;
    for (size_t i = 0; i < size; i++)
        if (!strchr("0123456789+-.eE", data[i]) || data[i] == '\0')
            return;
    memcpy(tok, data, size);
    tok[size] = '\0';
    errno = 0;
    want = strtod(tok, &end);
    valid = end == tok + size && errno != ERANGE && isfinite(want);
    memcpy(line, "x:", 2);
    memcpy(line + 2, tok, size);
    memcpy(line + 2 + size, "|ms", 3);
    statsd_result_t r = statsd_parse(line, size + 5, STATSD_GAUGE_AUTO, &out);
    if (r != (valid ? STATSD_OK : STATSD_ERR_VALUE))
        abort();
    if (valid && memcmp(&out.values[0], &want, sizeof want) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t start = 0;

    for (;;) {
        const uint8_t *nl = size > start ? memchr(data + start, '\n', size - start) : NULL;
        size_t end = nl ? (size_t)(nl - data) : size;
        parse_all_rules(data + start, end - start);
        if (!nl)
            break;
        start = end + 1;
    }
    number_differential(data, size);
    return 0;
}

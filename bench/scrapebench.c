/* scrapebench: the cost of one /metrics scrape of tokmon-exporter's model,
 * for make bench-exporter.
 *
 *   scrapebench SERIES [--rounds R]
 *       builds a model exposing about SERIES time series, as Prometheus
 *       counts them (one per sample line: a histogram's buckets, _sum and
 *       _count are 17): calls of SERIES/42 provider/model/operation triples,
 *       each giving 2 request series (ok, error), 5 token types, 1 cost and
 *       2 histograms (duration, time to first token). Then renders it R times in
 *       each format, alternating with the baseline: copying the same number
 *       of bytes (memcpy of the rendered page into a fresh buffer, what any
 *       exporter must at least do to hand a page to the kernel), and gzips
 *       it (level 1, as web.c does). Prints medians.
 *
 * Output: key=value lines, for bench/exporter.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cfg.h"
#include "log.h"
#include "mbuf.h"
#include "model.h"
#include "msg.h"
#include "stats.h"
#include "tmtime.h"

#define S 1000000000LL

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t median(int64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_i64);
    return v[n / 2];
}

static size_t gzip_len(const mbuf_t *in)
{
    z_stream z = { 0 };
    deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    size_t cap = deflateBound(&z, in->len);
    unsigned char *out = malloc(cap);
    z.next_in = (Bytef *)in->data;
    z.avail_in = (uInt)in->len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t n = cap - z.avail_out;
    deflateEnd(&z);
    free(out);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: scrapebench SERIES [--rounds R]\n");
        return 2;
    }
    long want = atol(argv[1]);
    int rounds = argc > 3 && !strcmp(argv[2], "--rounds") ? atoi(argv[3]) : 9;
    if (want < 100 || rounds < 1 || rounds > 1000) {
        fprintf(stderr, "scrapebench: SERIES >= 100, 1 <= R <= 1000\n");
        return 2;
    }
    log_setup("scrapebench", "bench", LOG_FMT_KV, LOG_LVL_ERROR);
    char ini[256], err[512];
    snprintf(ini, sizeof ini, "[exporter]\nmax_series = %ld\n", want * 2);
    cfg_t *cfg = cfg_load_string(ini, strlen(ini), "bench.ini", NULL, err, sizeof err);
    stats_t *st = stats_new("tokmon-exporter", "bench");
    model_t *m = cfg ? model_new(cfg, st, err, sizeof err) : NULL;
    if (!m) {
        fprintf(stderr, "scrapebench: %s\n", err);
        return 1;
    }
    /* each triple: requests ok + error, 5 token types, cost, 2 histograms */
    const long per = 2 + 5 + 1 + 2 * 17;
    long triples = want / per;
    int64_t now = tmtime_now_ns();
    char model[32], op[16];
    for (long t = 0; t < triples; t++) {
        snprintf(model, sizeof model, "model-%ld", t / 4);
        snprintf(op, sizeof op, "op%ld", t % 4);
        msg_usage_t u;
        msg_usage_init(&u);
        u.provider = span_cstr(t % 3 == 0 ? "openai" : t % 3 == 1 ? "anthropic" : "google");
        u.model = span_cstr(model);
        u.operation = span_cstr(op);
        u.cost_source = span_cstr("priced");
        u.input_tokens = 1000 + (uint64_t)t;
        u.cache_read_tokens = 100;
        u.cache_write_tokens = 50;
        u.output_tokens = 300;
        u.reasoning_tokens = 20;
        u.requests = 1;
        u.ts = u.recv_ts = now;
        u.cost_nusd = 1234567 + t;
        u.latency_us = 100000 + t % 5000000;
        u.ttft_us = 20000 + t % 100000;
        for (int k = 0; k < 2; k++) {
            u.status = span_cstr(k ? "error" : "ok");
            model_usage(m, &u, now);
        }
    }
    size_t families_series = model_series(m);
    mbuf_t page = { 0 };
    int64_t *t_text = calloc((size_t)rounds, sizeof *t_text), *t_om = calloc((size_t)rounds, 8),
            *t_copy = calloc((size_t)rounds, 8), *t_gz = calloc((size_t)rounds, 8);
    size_t text_bytes = 0, om_bytes = 0, gz_bytes = 0;
    size_t lines = 0;
    for (int r = 0; r < rounds; r++) {
        int64_t t0 = tmtime_mono_ns();
        model_render(m, false, now, &page);
        t_text[r] = tmtime_mono_ns() - t0;
        text_bytes = page.len;
        /* the baseline: the same bytes copied once */
        char *copy = malloc(page.len);
        t0 = tmtime_mono_ns();
        memcpy(copy, page.data, page.len);
        t_copy[r] = tmtime_mono_ns() - t0;
        if (copy[page.len / 2] == 0x7f)
            putchar(' ');
        free(copy);
        t0 = tmtime_mono_ns();
        gz_bytes = gzip_len(&page);
        t_gz[r] = tmtime_mono_ns() - t0;
        t0 = tmtime_mono_ns();
        model_render(m, true, now, &page);
        t_om[r] = tmtime_mono_ns() - t0;
        om_bytes = page.len;
    }
    for (size_t i = 0; i < page.len; i++)
        lines += page.data[i] == '\n';
    int64_t mt = median(t_text, rounds), mo = median(t_om, rounds), mc = median(t_copy, rounds),
            mg = median(t_gz, rounds);
    printf("scrape series=%zu label_sets=%zu rounds=%d text_ms=%.2f openmetrics_ms=%.2f "
           "gzip_ms=%.2f copy_ms=%.3f text_bytes=%zu openmetrics_bytes=%zu gzip_bytes=%zu "
           "ns_per_sample=%.0f\n",
           lines, families_series, rounds, (double)mt / 1e6, (double)mo / 1e6, (double)mg / 1e6,
           (double)mc / 1e6, text_bytes, om_bytes, gz_bytes, (double)mt / (double)lines);
    free(t_text);
    free(t_om);
    free(t_copy);
    free(t_gz);
    mbuf_free(&page);
    model_destroy(&m);
    stats_destroy(&st);
    cfg_destroy(&cfg);
    return 0;
}

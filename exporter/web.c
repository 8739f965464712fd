/* web: see web.h. */
#include "web.h"

#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "addr.h"
#include "log.h"
#include "mbuf.h"
#include "tmtime.h"
#include "xalloc.h"

struct web {
    struct MHD_Daemon *d;
    model_t *model;
    api_t *api;
    mbuf_t page;
    unsigned port;
    int64_t *c_scrapes, *c_scrape_errors, *g_scrape_ms, *g_scrape_bytes, *g_series;
};

/* Whether an Accept-Encoding value allows gzip (not with q=0). */
static bool wants_gzip(const char *ae)
{
    if (!ae)
        return false;
    const char *p = ae;
    while ((p = strcasestr(p, "gzip"))) {
        const char *e = p + 4;
        bool word = (p == ae || p[-1] == ' ' || p[-1] == ',') && (!*e || *e == ',' || *e == ';' ||
                                                                  *e == ' ');
        if (word) {
            const char *q = strchr(e, ',');
            const char *semi = strstr(e, ";q=");
            if (semi && (!q || semi < q)) {
                double v = strtod(semi + 3, NULL);
                return v > 0;
            }
            return true;
        }
        p = e;
    }
    return false;
}

/* gzip of in into a new buffer (level 1: a scrape is on the clock). */
static int gzip_buf(const mbuf_t *in, mbuf_t *out)
{
    z_stream z = { 0 };
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return -1;
    size_t cap = deflateBound(&z, in->len) + 64;
    mbuf_reset(out);
    mbuf_reserve(out, cap);
    z.next_in = (Bytef *)(uintptr_t)in->data;
    z.avail_in = (uInt)in->len;
    z.next_out = (Bytef *)out->data;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    out->len = cap - z.avail_out;
    deflateEnd(&z);
    return rc == Z_STREAM_END ? 0 : -1;
}

static enum MHD_Result plain(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result metrics(web_t *w, struct MHD_Connection *c, const char *method)
{
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, r);
        MHD_destroy_response(r);
        return rc;
    }
    const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    bool om = accept && strstr(accept, "application/openmetrics-text");
    int64_t t0 = tmtime_mono_ns();
    model_render(w->model, om, tmtime_now_ns(), &w->page);
    const mbuf_t *body = &w->page;
    mbuf_t gz = { 0 };
    bool zipped = false;
    if (wants_gzip(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING))) {
        if (gzip_buf(&w->page, &gz) == 0) {
            body = &gz;
            zipped = true;
        } else {
            (*w->c_scrape_errors)++;
        }
    }
    /* the response owns its copy: MHD sends it at its pace */
    struct MHD_Response *r = MHD_create_response_from_buffer(body->len, body->data ? body->data : "",
                                                             MHD_RESPMEM_MUST_COPY);
    mbuf_free(&gz);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            om ? MODEL_CT_OPENMETRICS : MODEL_CT_TEXT);
    MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Accept, Accept-Encoding");
    if (zipped)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
    enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    (*w->c_scrapes)++;
    *w->g_scrape_ms = (tmtime_mono_ns() - t0) / TMTIME_NS_PER_MS;
    *w->g_scrape_bytes = (int64_t)w->page.len;
    *w->g_series = (int64_t)model_series(w->model);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    web_t *w = cls;
    /* the first call is for the headers only: answer on the second, once
     * any body has gone by (none is read: every route is a GET) */
    if (!*con_cls) {
        *con_cls = w;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (!strcmp(url, "/metrics"))
        return metrics(w, c, method);
    if (w->api)
        return api_handle(w->api, c, method, url);
    return plain(c, MHD_HTTP_NOT_FOUND, "not found\n");
}

__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fm, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fm, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    static log_complain_t lc;
    log_complain(&lc, tmtime_mono_ns(), LOG_LVL_WARN, "http", "error=\"%s\"", buf);
}

web_t *web_new(const char *listen, model_t *m, api_t *a, stats_t *st, char *err, size_t cap)
{
    addr_t ad;
    if (addr_parse(listen, SOCK_STREAM, &ad, err, cap) < 0)
        return NULL;
    web_t *w = xcalloc(1, sizeof *w);
    w->model = m;
    w->api = a;
    w->c_scrapes = stats_counter(st, "exporter_scrapes_total", NULL);
    w->c_scrape_errors = stats_counter(st, "exporter_scrape_errors_total", NULL);
    w->g_scrape_ms = stats_gauge(st, "exporter_scrape_duration_ms", NULL);
    w->g_scrape_bytes = stats_gauge(st, "exporter_scrape_bytes", NULL);
    w->g_series = stats_gauge(st, "exporter_series", NULL);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ad.ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    w->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, w, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                            NULL, MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&ad.ss,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)512, MHD_OPTION_END);
    if (!w->d) {
        snprintf(err, cap, "[exporter] http %s: cannot listen (in use, or not an address of this "
                           "host)", listen);
        free(w);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->d, MHD_DAEMON_INFO_BIND_PORT);
    w->port = di ? di->port : 0;
    return w;
}

void web_destroy(web_t **pw)
{
    web_t *w = *pw;
    if (!w)
        return;
    if (w->d)
        MHD_stop_daemon(w->d);
    mbuf_free(&w->page);
    free(w);
    *pw = NULL;
}

int web_fd(const web_t *w)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->d, MHD_DAEMON_INFO_EPOLL_FD);
    return di ? di->epoll_fd : -1;
}

long web_timeout(const web_t *w)
{
    MHD_UNSIGNED_LONG_LONG t;
    if (MHD_get_timeout(w->d, &t) != MHD_YES)
        return -1;
    return t > 1000 ? 1000 : (long)t;
}

void web_run(web_t *w) { MHD_run(w->d); }

unsigned web_port(const web_t *w) { return w->port; }

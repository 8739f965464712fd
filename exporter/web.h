/* web: tokmon-exporter's HTTP server (libmicrohttpd), run from the
 * exporter's own loop: MHD with epoll and no thread of its own, so that the
 * model and the API are only ever touched by one thread. GET /metrics
 * renders the model as Prometheus text 0.0.4, or OpenMetrics 1.0 when the
 * Accept header asks for application/openmetrics-text, gzip-compressed when
 * Accept-Encoding allows it; every other path goes to the API. */
#ifndef TOKMON_WEB_H
#define TOKMON_WEB_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "model.h"
#include "stats.h"

typedef struct web web_t;

/* Listens on listen ("host:port"). NULL with a reason in err. */
web_t *web_new(const char *listen, model_t *m, api_t *a, stats_t *st, char *err, size_t cap);
void web_destroy(web_t **w);

/* The fd to poll for input (epoll), and how long the loop may sleep
 * before web_run is due anyway (ms, -1: no limit). */
int web_fd(const web_t *w);
long web_timeout(const web_t *w);

/* Handles what is ready. */
void web_run(web_t *w);

/* The port it listens on (useful with port 0). */
unsigned web_port(const web_t *w);

#endif

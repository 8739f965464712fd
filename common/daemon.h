/* daemon: what every tokmon daemon does the same way around its own work:
 * the command line (-c FILE, -n, -h, -V, and no other argument), the
 * directories of its state, a ROUTER socket answered. Nothing here logs:
 * the daemon's own layer reports what goes wrong. */
#ifndef TOKMON_DAEMON_H
#define TOKMON_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "mbuf.h"

/* Parses argv. Returns -1 to go on (with *cfg_path, default
 * cfg_default_path(), and *check set), or the status to exit with: 0 after
 * --help or --version, 2 after a usage error (usage printed to stderr). */
int daemon_options(int argc, char **argv, const char *name, void (*usage)(FILE *f),
                   const char **cfg_path, bool *check);

/* Answers every request waiting on a ROUTER socket (up to 64 a call):
 * [identity frames..., empty, request] in, the same envelope and answer's
 * bytes out. Messages of more than 8 frames or without a request are
 * dropped. answer fills out (replacing it). Returns the requests answered. */
int daemon_serve_router(void *sock, void (*answer)(void *arg, const void *req, size_t len,
                                                   mbuf_t *out),
                        void *arg, mbuf_t *out);

/* mkdir -p: 0, or -1 with errno. */
int daemon_mkdirs(const char *path);

#endif

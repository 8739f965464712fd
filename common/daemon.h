/* daemon: what every tokmon daemon does the same way before its own work:
 * the command line (-c FILE, -n, -h, -V, and no other argument), and the
 * directories of its state. Nothing here logs: the daemon's own layer
 * reports what goes wrong. */
#ifndef TOKMON_DAEMON_H
#define TOKMON_DAEMON_H

#include <stdbool.h>
#include <stdio.h>

/* Parses argv. Returns -1 to go on (with *cfg_path, default
 * cfg_default_path(), and *check set), or the status to exit with: 0 after
 * --help or --version, 2 after a usage error (usage printed to stderr). */
int daemon_options(int argc, char **argv, const char *name, void (*usage)(FILE *f),
                   const char **cfg_path, bool *check);

/* mkdir -p: 0, or -1 with errno. */
int daemon_mkdirs(const char *path);

#endif

/* sdnotify: the systemd readiness and watchdog protocol (sd_notify(3)), a
 * datagram of "KEY=VALUE" lines to $NOTIFY_SOCKET. Without that variable
 * every call is a no-op, so daemons call these unconditionally. */
#ifndef TOKMON_SDNOTIFY_H
#define TOKMON_SDNOTIFY_H

#include <stdint.h>

/* Sends state (e.g. "READY=1", "STOPPING=1", "WATCHDOG=1",
 * "STATUS=..."). Returns 0 (also when not under systemd) or -1 with errno. */
int sdnotify_send(const char *state);

/* The watchdog interval asked for by systemd in microseconds ($WATCHDOG_USEC,
 * when $WATCHDOG_PID is unset or ours), or 0 when there is no watchdog. */
int64_t sdnotify_watchdog_usec(void);

#endif

/* net: the collector's listeners. Datagram sockets (UDP with a large
 * receive buffer, SO_REUSEPORT and kernel drop counting through
 * SO_RXQ_OVFL; a unix datagram socket) read with recvmmsg, and a TCP server
 * for newline-framed lines where each client has its own buffer and a read
 * budget per turn, so a slow or hostile client cannot stall the others. Each
 * socket sits in the caller's epoll set with an ep_item_t as its data. */
#ifndef TOKMON_NET_H
#define TOKMON_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "ingest.h"
#include "stats.h"

typedef enum { EP_DGRAM, EP_TCP_LISTEN, EP_TCP_CONN, EP_SIGNAL, EP_BUS, EP_TIMER } ep_kind_t;

/* First member of everything registered with epoll. */
typedef struct {
    ep_kind_t kind;
} ep_item_t;

typedef struct dgramd dgramd_t;

/* Binds a UDP socket at addr ("host:port") or a unix datagram socket at
 * path, and adds it to epfd. Returns NULL with a reason in err. */
dgramd_t *dgramd_open_udp(int epfd, const char *addr, int64_t rcvbuf, stats_t *st, char *err,
                          size_t errcap);
dgramd_t *dgramd_open_unix(int epfd, const char *path, int64_t rcvbuf, stats_t *st, char *err,
                           size_t errcap);
void dgramd_close(dgramd_t **d);
/* The bound address, for logs ("127.0.0.1:8125", "unix:/run/x.sock"). */
const char *dgramd_name(const dgramd_t *d);

/* Reads at most max datagrams into ingest. Returns how many were read (0:
 * the socket is empty). */
size_t dgramd_read(dgramd_t *d, ingest_t *in, size_t max);

typedef struct tcpd tcpd_t;

tcpd_t *tcpd_open(int epfd, const char *addr, const cfg_t *cfg, stats_t *st, char *err,
                  size_t errcap);
/* Stops accepting and closes every client after handing its complete lines
 * to ingest. */
void tcpd_close(tcpd_t **t, ingest_t *in);
void tcpd_reload(tcpd_t *t, const cfg_t *cfg);
const char *tcpd_name(const tcpd_t *t);

/* Handles an epoll event on the listening socket or a client. */
void tcpd_event(tcpd_t *t, ep_item_t *item, uint32_t events, ingest_t *in);
/* Closes idle clients and releases TCP blocks that waited too long for
 * their |sig line. Call now and then (monotonic ns). */
void tcpd_sweep(tcpd_t *t, ingest_t *in, int64_t now);

#endif

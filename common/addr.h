/* addr: socket addresses as operators write them in the config
 * ("127.0.0.1:8125", "[::1]:8125", "localhost:8125", a unix path), and
 * printing them back for logs. */
#ifndef TOKMON_ADDR_H
#define TOKMON_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} addr_t;

/* Parses "host:port" or "[v6host]:port" (numeric or a name resolved with
 * getaddrinfo, first result) for the given socket type (SOCK_DGRAM or
 * SOCK_STREAM). Returns 0, or -1 with a reason in err. */
int addr_parse(const char *s, int socktype, addr_t *out, char *err, size_t errcap);

/* Fills a unix socket address for path. Returns 0, or -1 (path too long). */
int addr_unix(const char *path, addr_t *out, char *err, size_t errcap);

/* Writes a printable form ("127.0.0.1:8125", "[::1]:8125", "unix:/path",
 * "unix:(unnamed)") into out. Returns out. */
char *addr_format(const struct sockaddr *sa, socklen_t len, char *out, size_t cap);

/* Port number of an inet address, or 0. */
int addr_port(const addr_t *a);

#endif

/* daemon: see daemon.h. */
#include "daemon.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <zmq.h>

#include "cfg.h"
#include "xalloc.h"

int daemon_options(int argc, char **argv, const char *name, void (*usage)(FILE *f),
                   const char **cfg_path, bool *check)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },         { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    *cfg_path = NULL;
    *check = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:nhV", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            *cfg_path = optarg;
            break;
        case 'n':
            *check = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("%s %s\n", name, TOKMON_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", name, argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!*cfg_path)
        *cfg_path = cfg_default_path();
    return -1;
}

int daemon_mkdirs(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = mkdir(p, 0755) < 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

int daemon_serve_router(void *sock, void (*answer)(void *arg, const void *req, size_t len,
                                                   mbuf_t *out),
                        void *arg, mbuf_t *out)
{
    int served = 0;
    for (int k = 0; k < 64; k++) {
        zmq_msg_t parts[8];
        int n = 0;
        bool more = true, bad = false;
        while (more) {
            zmq_msg_t *p = &parts[n < 8 ? n : 7];
            if (n >= 8)
                zmq_msg_close(p);
            zmq_msg_init(p);
            if (zmq_msg_recv(p, sock, n ? 0 : ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(p);
                if (!n)
                    return served;
                bad = true;
                break;
            }
            more = zmq_msg_more(p);
            if (n < 8)
                n++;
            else
                bad = true;
        }
        if (!bad && n >= 2) {
            served++;
            zmq_msg_t *req = &parts[n - 1];
            answer(arg, zmq_msg_data(req), zmq_msg_size(req), out);
            for (int i = 0; i < n - 1; i++)
                zmq_send(sock, zmq_msg_data(&parts[i]), zmq_msg_size(&parts[i]), ZMQ_SNDMORE);
            zmq_send(sock, out->data, out->len, 0);
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&parts[i]);
    }
    return served;
}

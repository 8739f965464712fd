/* sig: signals delivered as readable events on a file descriptor
 * (signalfd), so each daemon's loop sees TERM, INT, HUP, USR1 and USR2 in
 * order with its other inputs and no work is done in a signal handler. */
#ifndef TOKMON_SIG_H
#define TOKMON_SIG_H

/* Blocks TERM, INT, HUP, USR1, USR2 and CHLD in the calling thread (call it
 * before creating threads, including the ZeroMQ context, so they inherit the
 * mask), ignores PIPE, and returns a non-blocking signalfd for the blocked
 * set, or -1 with errno set. */
int sig_open(void);

/* Reads the next pending signal from fd: returns its number, or 0 when none
 * is pending. */
int sig_next(int fd);

/* Restores the default mask and dispositions (for a child about to exec). */
void sig_reset_child(void);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Zero-downtime upgrade: a running shuntd hands its listening sockets to a
 * new one over a Unix socket (SCM_RIGHTS), so the kernel's accept queues
 * outlive the process that made them and no connection attempt is refused.
 *
 * The running shuntd serves the upgrade socket (upgrade.socket, mode 0600).
 * `shuntd --takeover` connects and the two speak, one SOCK_SEQPACKET
 * message each:
 *
 *   new -> old  HELLO
 *   old -> new  OFFER      capture mode, pin root, number of listeners
 *   old -> new  LISTENERS  up to HANDOVER_FDS_PER_MSG descriptions + fds (repeated)
 *   new -> old  READY      everything adopted, workers running, not yet accepting
 *   old -> new  COMMIT     the old one stops accepting and drains; the new
 *                          one accepts and owns the capture from now on
 *
 * Node mode adds each meshed pod's listeners (opened in the pod's network
 * namespace), when the new one's HELLO says it takes them ("pods"): after
 * the LISTENERS, one POD message per pod (its uid, up to
 * HANDOVER_FDS_PER_MSG listeners with their fds), then an empty POD. An
 * older new shuntd does not ask and gets none (it opens its own).
 *
 * Both ends check the other's credentials (SO_PEERCRED: root or the same
 * uid). Until COMMIT the old one owns everything and keeps accepting: a new
 * one that dies or gives up loses nothing, because the sockets it held stay
 * open in the old process. */
#ifndef SHUNT_PROXY_HANDOVER_H
#define SHUNT_PROXY_HANDOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

struct loop;

enum handover_role {
        HANDOVER_INBOUND,
        HANDOVER_OUTBOUND,
        HANDOVER_ADMIN,
        HANDOVER_METRICS, /* the read-only metrics listener */
        HANDOVER__ROLES,
};

struct handover_listener {
        int fd;
        enum handover_role role;
        int worker; /* the worker that accepted on it (-1: main thread) */
        struct sockaddr_storage addr;
};

/* Bounds: every listener of WORKERS_MAX workers (four each) and a few more. */
#define HANDOVER_MAX_LISTENERS 1040
#define HANDOVER_FDS_PER_MSG   64
/* The new shuntd has this long from HELLO to READY (it loads certificates,
 * starts discovery and adopts the capture in between); each reply of the
 * old one must come within HANDOVER_REPLY_MS. */
#define HANDOVER_TIMEOUT_MS 30000
#define HANDOVER_REPLY_MS   5000
#define HANDOVER_TEXT_MAX   256
#define HANDOVER_MAX_PODS   4096 /* NODE_MAX_PODS_LIMIT */
#define HANDOVER_POD_UID    64

/* A node-mode pod's listeners (role inbound or outbound). */
struct handover_pod {
        char uid[HANDOVER_POD_UID];
        struct handover_listener *ls;
        size_t n;
};

const char *handover_role_name(enum handover_role r);

/* ---- the running shuntd ----------------------------------------------------- */

struct handover_server;

struct handover_server_ops {
        /* The listeners to hand over (fds stay the caller's; they are
         * duplicated into the peer), the capture mode and pin root. Number of
         * listeners, or negative errno with why. */
        int (*offer)(void *ctx, struct handover_listener *out, size_t max, char *capture,
                     size_t caplen, char *pin_root, size_t pinlen);
        /* A handover started (stop repairing the capture: the new one installs
         * its own rules); ended by abort or commit. */
        void (*begin)(void *ctx, pid_t peer);
        void (*abort)(void *ctx, pid_t peer, const char *why);
        /* COMMIT was sent: stop accepting, drain, leave the capture. */
        void (*commit)(void *ctx, pid_t peer);
        /* Optional (node mode): the listeners of the index-th pod into out
         * (at most max) and its uid; their number, or -ENOENT past the last
         * pod. Called after offer. */
        int (*offer_pod)(void *ctx, size_t index, char *uid, size_t uidlen,
                         struct handover_listener *out, size_t max);
};

/* Serves path on loop (its directory is made 0700 when missing). A live
 * server already at path (another shuntd) is left alone, -EADDRINUSE,
 * unless replace (the shuntd that just took over from it). A stale socket
 * file is replaced. 0 or negative errno with err. */
int handover_server_open(struct loop *loop, const char *path, bool replace,
                         const struct handover_server_ops *ops, void *ctx,
                         struct handover_server **out, char *err, size_t errlen);
/* Handovers: completed, failed (peer gone, timeout, bad message), refused
 * (wrong uid, one already running, draining). */
struct handover_counts {
        unsigned long long completed, failed, refused;
};
void handover_server_counts(const struct handover_server *s, struct handover_counts *out);
/* Refuses new handovers from now on (draining). */
void handover_server_close_listener(struct handover_server *s);
/* Stops serving. unlink: remove the socket file (not after a handover: the
 * path belongs to the new shuntd then). */
void handover_server_free(struct handover_server *s, bool unlink_path);

/* ---- the new shuntd (blocking, before its event loop runs) ------------------ */

struct handover_client;

/* Connects to path, checks who serves it, receives and validates every
 * listener (SO_TYPE, SO_ACCEPTCONN, getsockname). -ENOENT or -ECONNREFUSED
 * when no shuntd serves path; other negative errno on failure. err says
 * what in one line either way. */
int handover_client_connect(const char *path, struct handover_client **out, char *err,
                            size_t errlen);
pid_t handover_client_peer(const struct handover_client *c);
const char *handover_client_capture(const struct handover_client *c);
const char *handover_client_pin_root(const struct handover_client *c);
/* The listeners received; the caller may take an fd (and set it to -1). */
struct handover_listener *handover_client_listeners(struct handover_client *c, size_t *n);
/* The pods' listeners received (node mode); the caller may take an fd. */
struct handover_pod *handover_client_pods(struct handover_client *c, size_t *n);
/* Sends READY and waits for COMMIT. 0, or negative errno with err (the old
 * shuntd is still the owner then). */
int handover_client_ready(struct handover_client *c, char *err, size_t errlen);
/* Closes the connection and every fd not taken. */
void handover_client_free(struct handover_client *c);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* A pod's listening sockets, made in the pod's cgroup.
 *
 * A socket belongs to the cgroup of the task that called socket() (and an
 * accepted socket to its listener's), and the programs attached to a pod's
 * cgroup see only the pod's sockets. For the sk_msg shortcut to pair the
 * application's end with node shuntd's accepted end, the pod's listeners
 * must be the pod's: a child process joins a cgroup of the pod, makes the
 * sockets there (in the network namespace of the thread that started it)
 * and passes them back over a socketpair, until it is stopped. The child
 * joins the pod's own directory, or where kubelet's controllers forbid
 * processes there, the first of its container directories that takes it.
 * The sockets' memory is then charged to the pod. */
#ifndef SHUNT_NODE_PODSOCK_H
#define SHUNT_NODE_PODSOCK_H

#include <stddef.h>
#include <sys/types.h>

/* Container directories tried below the pod's own, at most. */
#define PODSOCK_MAX_DIRS 16

struct podsock {
        pid_t pid;
        int fd;
        char joined[512]; /* the directory the child joined, below cgroup_dir ("" itself) */
};

/* Starts the child in the calling thread's network namespace and a cgroup
 * at or below cgroup_dir (a full path). 0, or -errno with err one line
 * (nothing left running). */
int podsock_start(struct podsock *m, const char *cgroup_dir, char *err, size_t errlen);

/* A proxy_socket_fn: one TCP socket of family from the child (non-blocking,
 * close-on-exec), or -errno. */
int podsock_socket(void *m, int family);

/* Ends the child and reaps it. */
void podsock_stop(struct podsock *m);

#endif

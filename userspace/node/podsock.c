// SPDX-License-Identifier: Apache-2.0
/* A child process in a pod's cgroup that makes its listening sockets: why
 * in podsock.h. */
#include "node/podsock.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* How long the parent waits for any one answer of the child. */
#define PODSOCK_REPLY_MS 5000

struct podsock_dirs {
        int procs[PODSOCK_MAX_DIRS + 1]; /* cgroup.procs, opened for writing: the pod's first */
        char name[PODSOCK_MAX_DIRS + 1][256];
        int n;
};

static void dirs_close(struct podsock_dirs *d)
{
        for (int i = 0; i < d->n; i++)
                close(d->procs[i]);
        d->n = 0;
}

/* The pod's directory and its container directories, opened by the parent:
 * the child then only writes. */
static int dirs_open(struct podsock_dirs *d, const char *dir)
{
        char path[1024];
        d->n = 0;
        snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d->procs[d->n] = fd;
        d->name[d->n++][0] = '\0';
        DIR *dp = opendir(dir);
        if (!dp)
                return 0;
        struct dirent *e;
        while (d->n <= PODSOCK_MAX_DIRS && (e = readdir(dp))) {
                if (e->d_type != DT_DIR || e->d_name[0] == '.' ||
                    snprintf(path, sizeof(path), "%s/%s/cgroup.procs", dir, e->d_name) >=
                        (int)sizeof(path) ||
                    strlen(e->d_name) >= sizeof(d->name[0]))
                        continue;
                if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
                        continue;
                d->procs[d->n] = fd;
                snprintf(d->name[d->n++], sizeof(d->name[0]), "%s", e->d_name);
        }
        closedir(dp);
        return 0;
}

/* One int32 and, when fd >= 0, the descriptor with it. */
static int send_reply(int s, int32_t v, int fd)
{
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = &v, .iov_len = sizeof(v)};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        if (fd >= 0) {
                memset(&u, 0, sizeof(u));
                m.msg_control = u.buf;
                m.msg_controllen = sizeof(u.buf);
                struct cmsghdr *c = CMSG_FIRSTHDR(&m);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        return sendmsg(s, &m, MSG_NOSIGNAL) == (ssize_t)sizeof(v) ? 0 : -1;
}

/* The child: only async-signal-safe calls (the parent has other threads). */
_Noreturn static void child(int s, const struct podsock_dirs *d)
{
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* The pod's own directory first; where controllers are enabled
         * below it (kubelet's), it takes no process (EBUSY) and a container
         * directory does. The first error is the one reported. */
        int32_t joined = -ENOENT, first = 0;
        for (int i = 0; i < d->n && joined < 0; i++) {
                if (write(d->procs[i], "0", 1) == 1)
                        joined = i;
                else if (!first)
                        first = -errno;
        }
        if (joined < 0 && first)
                joined = first;
        if (send_reply(s, joined, -1) < 0 || joined < 0)
                _exit(1);
        for (;;) {
                int32_t family;
                ssize_t n = recv(s, &family, sizeof(family), 0);
                if (n != (ssize_t)sizeof(family))
                        _exit(0);
                int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (send_reply(s, fd < 0 ? errno : 0, fd) < 0)
                        _exit(1);
                if (fd >= 0)
                        close(fd);
        }
}

/* The child's answer: its int32, and the descriptor that came with it (-1). */
static int recv_reply(int s, int32_t *v, int *fd)
{
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = v, .iov_len = sizeof(*v)};
        struct msghdr m = {.msg_iov = &iov,
                           .msg_iovlen = 1,
                           .msg_control = u.buf,
                           .msg_controllen = sizeof(u.buf)};
        *fd = -1;
        ssize_t n;
        do
                n = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return errno == EAGAIN ? -ETIMEDOUT : -errno;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                        memcpy(fd, CMSG_DATA(c), sizeof(int));
        if (n != (ssize_t)sizeof(*v)) {
                if (*fd >= 0)
                        close(*fd);
                *fd = -1;
                return -EPIPE; /* the child is gone */
        }
        return 0;
}

int podsock_start(struct podsock *m, const char *cgroup_dir, char *err, size_t errlen)
{
        m->pid = -1;
        m->fd = -1;
        m->joined[0] = '\0';
        struct podsock_dirs d;
        int rc = dirs_open(&d, cgroup_dir);
        if (rc < 0) {
                snprintf(err, errlen, "%s/cgroup.procs: %s", cgroup_dir, strerror(-rc));
                return rc;
        }
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
                rc = -errno;
                snprintf(err, errlen, "socketpair: %s", strerror(-rc));
                dirs_close(&d);
                return rc;
        }
        pid_t pid = fork();
        if (pid == 0) {
                close(sv[0]);
                child(sv[1], &d);
        }
        rc = pid < 0 ? -errno : 0;
        int n_dirs = d.n;
        close(sv[1]);
        dirs_close(&d);
        if (pid < 0) {
                snprintf(err, errlen, "fork: %s", strerror(-rc));
                close(sv[0]);
                return rc;
        }
        m->pid = pid;
        m->fd = sv[0];
        struct timeval tv = {.tv_sec = PODSOCK_REPLY_MS / 1000,
                             .tv_usec = (PODSOCK_REPLY_MS % 1000) * 1000};
        setsockopt(m->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        int32_t joined;
        int fd;
        rc = recv_reply(m->fd, &joined, &fd);
        if (fd >= 0)
                close(fd);
        if (rc == 0 && (joined < 0 || joined >= n_dirs))
                rc = joined < 0 ? joined : -EPROTO;
        if (rc < 0) {
                snprintf(err, errlen, "joining cgroup %s or one of its containers': %s", cgroup_dir,
                         strerror(-rc));
                podsock_stop(m);
                return rc;
        }
        snprintf(m->joined, sizeof(m->joined), "%s", d.name[joined]);
        return 0;
}

int podsock_socket(void *arg, int family)
{
        struct podsock *m = arg;
        int32_t f = family, e;
        int fd;
        if (m->fd < 0)
                return -EBADF;
        if (send(m->fd, &f, sizeof(f), MSG_NOSIGNAL) != (ssize_t)sizeof(f))
                return -errno;
        int rc = recv_reply(m->fd, &e, &fd);
        if (rc < 0)
                return rc;
        if (e != 0 || fd < 0) {
                if (fd >= 0)
                        close(fd);
                return e > 0 ? -e : -EPROTO;
        }
        return fd;
}

void podsock_stop(struct podsock *m)
{
        if (m->fd >= 0)
                close(m->fd);
        m->fd = -1;
        if (m->pid > 0) {
                kill(m->pid, SIGKILL);
                while (waitpid(m->pid, NULL, 0) < 0 && errno == EINTR)
                        ;
        }
        m->pid = -1;
}

// SPDX-License-Identifier: Apache-2.0
/* The upgrade handover protocol, both ends. See handover.h. */
#include "proxy/handover.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/sockaddr.h"

#define COMP             "upgrade"
#define HANDOVER_MAGIC   0x73687576u /* "shuv" */
#define HANDOVER_VERSION 1

enum msg_type {
        MSG_HELLO = 1,
        MSG_OFFER,
        MSG_LISTENERS,
        MSG_READY,
        MSG_COMMIT,
        MSG_REFUSE,
        MSG_POD, /* text: the pod's uid ("" and no items: the last one was sent) */
};

#define HELLO_PODS "pods" /* HELLO's text: the new shuntd takes pods' listeners */

/* Both ends run the same build or a compatible one: the version says which
 * layout follows. Fixed-size fields only; sockaddr_storage is local ABI,
 * which is all a Unix socket ever connects. */
struct wire_listener {
        uint32_t role;
        int32_t worker;
        struct sockaddr_storage addr;
};

struct wire_msg {
        uint32_t magic;
        uint16_t version;
        uint16_t type;
        int32_t pid;
        uint32_t count;               /* OFFER: listeners to come; LISTENERS: in this message */
        char capture[16];             /* OFFER: the capture mode the old shuntd runs */
        char text[HANDOVER_TEXT_MAX]; /* OFFER: the pin root; REFUSE: why */
        struct wire_listener items[HANDOVER_FDS_PER_MSG];
};

#define MSG_HEAD_LEN offsetof(struct wire_msg, items)

const char *handover_role_name(enum handover_role r)
{
        static const char *const names[HANDOVER__ROLES] = {"inbound", "outbound", "admin",
                                                           "metrics"};
        return (unsigned)r < HANDOVER__ROLES ? names[r] : "unknown";
}

static void msg_init(struct wire_msg *m, enum msg_type type)
{
        memset(m, 0, MSG_HEAD_LEN);
        m->magic = HANDOVER_MAGIC;
        m->version = HANDOVER_VERSION;
        m->type = (uint16_t)type;
        m->pid = (int32_t)getpid();
}

/* One message with n fds. 0 or negative errno. */
static int msg_send(int fd, const struct wire_msg *m, const int *fds, size_t n)
{
        size_t len = MSG_HEAD_LEN + (size_t)m->count * sizeof(m->items[0]);
        if (m->type != MSG_LISTENERS && m->type != MSG_POD)
                len = MSG_HEAD_LEN;
        struct iovec iov = {.iov_base = (void *)m, .iov_len = len};
        union {
                char buf[CMSG_SPACE(sizeof(int) * HANDOVER_FDS_PER_MSG)];
                struct cmsghdr align;
        } u;
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (n) {
                memset(&u, 0, sizeof(u));
                mh.msg_control = u.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
        }
        ssize_t w;
        /* A full socket buffer (many listeners) waits for the reader, bounded. */
        while ((w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EAGAIN) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                if (poll(&p, 1, HANDOVER_REPLY_MS) <= 0)
                        return -ETIMEDOUT;
        }
        if (w < 0)
                return -errno;
        return (size_t)w == len ? 0 : -EMSGSIZE;
}

/* One message (and its fds, at most HANDOVER_FDS_PER_MSG, into fds/nfds).
 * 0, -ECONNRESET at end of stream, -EPROTO for anything malformed. */
static int msg_recv(int fd, struct wire_msg *m, int *fds, size_t *nfds)
{
        union {
                char buf[CMSG_SPACE(sizeof(int) * HANDOVER_FDS_PER_MSG)];
                struct cmsghdr align;
        } u;
        struct iovec iov = {.iov_base = m, .iov_len = sizeof(*m)};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = u.buf,
                            .msg_controllen = sizeof(u.buf)};
        *nfds = 0;
        ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (r < 0)
                return -errno;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++) {
                        int f;
                        memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                        if (*nfds < HANDOVER_FDS_PER_MSG)
                                fds[(*nfds)++] = f;
                        else
                                close(f);
                }
        }
        if (r == 0)
                return -ECONNRESET;
        bool bad = (size_t)r < MSG_HEAD_LEN || m->magic != HANDOVER_MAGIC ||
                   m->version != HANDOVER_VERSION || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC));
        if (!bad && (m->type == MSG_LISTENERS || m->type == MSG_POD))
                bad = m->count > HANDOVER_FDS_PER_MSG ||
                      (size_t)r != MSG_HEAD_LEN + m->count * sizeof(m->items[0]) ||
                      *nfds != m->count;
        if (bad) {
                while (*nfds)
                        close(fds[--*nfds]);
                return -EPROTO;
        }
        m->capture[sizeof(m->capture) - 1] = '\0';
        m->text[sizeof(m->text) - 1] = '\0';
        return 0;
}

/* Root or our own uid: nobody else may take or hand over our sockets. */
static int peer_check(int fd, struct ucred *cred)
{
        socklen_t len = sizeof(*cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cred, &len) < 0)
                return -errno;
        return cred->uid == 0 || cred->uid == geteuid() ? 0 : -EPERM;
}

static int unix_addr(const char *path, struct sockaddr_un *sun, char *err, size_t errlen)
{
        memset(sun, 0, sizeof(*sun));
        sun->sun_family = AF_UNIX;
        if (strlen(path) >= sizeof(sun->sun_path)) {
                snprintf(err, errlen, "upgrade.socket %s: longer than %zu bytes", path,
                         sizeof(sun->sun_path) - 1);
                return -ENAMETOOLONG;
        }
        memcpy(sun->sun_path, path, strlen(path));
        return 0;
}

/* ---- the running shuntd -------------------------------------------------------- */

struct handover_server {
        struct loop *loop;
        struct loop_io lio;  /* the upgrade socket */
        struct loop_io conn; /* the handover in progress (fd -1: none) */
        struct loop_timer timer;
        pid_t peer;
        bool began; /* HELLO answered: ops->begin ran */
        bool pods;  /* the new one takes the pods' listeners (HELLO_PODS) */
        const struct handover_server_ops *ops;
        void *ctx;
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct handover_counts counts;
};

static void conn_end(struct handover_server *s, const char *why)
{
        if (s->conn.fd < 0)
                return;
        loop_timer_cancel(s->loop, &s->timer);
        loop_io_del(s->loop, &s->conn);
        close(s->conn.fd);
        s->conn.fd = -1;
        if (!why)
                return;
        if (!s->began) {
                /* A probe of another shuntd's start, or a client gone early. */
                log_debug(COMP, 0, "upgrade socket: pid %d left before HELLO: %s", (int)s->peer,
                          why);
                return;
        }
        s->began = false;
        s->counts.failed++;
        log_warn(COMP, 0,
                 "handover to pid %d failed: %s; this shuntd keeps serving and owns the capture",
                 (int)s->peer, why);
        s->ops->abort(s->ctx, s->peer, why);
}

static void refuse(int fd, const char *why)
{
        struct wire_msg m;
        msg_init(&m, MSG_REFUSE);
        snprintf(m.text, sizeof(m.text), "%s", why);
        msg_send(fd, &m, NULL, 0);
}

/* One POD message per pod that has listeners, then an empty one. */
static int send_pods(struct handover_server *s, struct wire_msg *m, struct handover_listener *ls,
                     size_t *pods, size_t *sent)
{
        int rc = 0;
        for (size_t i = 0; s->ops->offer_pod && rc == 0 && i < HANDOVER_MAX_PODS; i++) {
                char uid[HANDOVER_POD_UID] = "";
                int k = s->ops->offer_pod(s->ctx, i, uid, sizeof(uid), ls, HANDOVER_FDS_PER_MSG);
                if (k == -ENOENT)
                        break;
                if (k <= 0 || !uid[0])
                        continue; /* a pod without listeners (failed): its own are made */
                int fds[HANDOVER_FDS_PER_MSG];
                msg_init(m, MSG_POD);
                snprintf(m->text, sizeof(m->text), "%s", uid);
                m->count = (uint32_t)k;
                for (int j = 0; j < k; j++) {
                        m->items[j].role = ls[j].role;
                        m->items[j].worker = ls[j].worker;
                        m->items[j].addr = ls[j].addr;
                        fds[j] = ls[j].fd;
                }
                rc = msg_send(s->conn.fd, m, fds, (size_t)k);
                (*pods)++;
                *sent += (size_t)k;
        }
        if (rc == 0) {
                msg_init(m, MSG_POD);
                rc = msg_send(s->conn.fd, m, NULL, 0);
        }
        return rc;
}

static int send_offer(struct handover_server *s, char *why, size_t whylen)
{
        struct handover_listener *ls = calloc(HANDOVER_MAX_LISTENERS, sizeof(*ls));
        struct wire_msg *m = calloc(1, sizeof(*m));
        int rc = -ENOMEM;
        if (!ls || !m) {
                snprintf(why, whylen, "out of memory");
                goto out;
        }
        msg_init(m, MSG_OFFER);
        rc = s->ops->offer(s->ctx, ls, HANDOVER_MAX_LISTENERS, m->capture, sizeof(m->capture),
                           m->text, sizeof(m->text));
        if (rc < 0) {
                snprintf(why, whylen, "no listeners to offer: %s", strerror(-rc));
                goto out;
        }
        size_t n = (size_t)rc;
        m->count = (uint32_t)n;
        char capture[sizeof(m->capture)];
        memcpy(capture, m->capture, sizeof(capture));
        rc = msg_send(s->conn.fd, m, NULL, 0);
        for (size_t i = 0; rc == 0 && i < n; i += HANDOVER_FDS_PER_MSG) {
                size_t k = n - i < HANDOVER_FDS_PER_MSG ? n - i : HANDOVER_FDS_PER_MSG;
                int fds[HANDOVER_FDS_PER_MSG];
                msg_init(m, MSG_LISTENERS);
                m->count = (uint32_t)k;
                for (size_t j = 0; j < k; j++) {
                        m->items[j].role = ls[i + j].role;
                        m->items[j].worker = ls[i + j].worker;
                        m->items[j].addr = ls[i + j].addr;
                        fds[j] = ls[i + j].fd;
                }
                rc = msg_send(s->conn.fd, m, fds, k);
        }
        if (rc < 0) {
                snprintf(why, whylen, "sending the listeners: %s", strerror(-rc));
                goto out;
        }
        size_t pods = 0, pod_ls = 0;
        if (s->pods) { /* asked for: at least the empty POD that ends them */
                rc = send_pods(s, m, ls, &pods, &pod_ls);
                if (rc < 0) {
                        snprintf(why, whylen, "sending the pods' listeners: %s", strerror(-rc));
                        goto out;
                }
        }
        log_info(COMP, 0,
                 "handover to pid %d: sent %zu listening sockets (capture %s) and the %zu of "
                 "%zu pods; still serving until it is ready",
                 (int)s->peer, n, capture, pod_ls, pods);
out:
        free(ls);
        free(m);
        return rc;
}

static void on_conn(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        (void)events;
        struct handover_server *s = io->data;
        struct wire_msg *m = malloc(sizeof(*m));
        if (!m) {
                conn_end(s, "out of memory");
                return;
        }
        int fds[HANDOVER_FDS_PER_MSG];
        size_t nfds;
        int rc = msg_recv(io->fd, m, fds, &nfds);
        while (nfds)
                close(fds[--nfds]); /* the new one sends none */
        char why[HANDOVER_TEXT_MAX + 64];
        if (rc == -EAGAIN) {
                free(m);
                return;
        }
        if (rc < 0) {
                conn_end(s, rc == -ECONNRESET ? "it closed the connection (exited or gave up)"
                                              : "malformed message");
                free(m);
                return;
        }
        if (m->type == MSG_HELLO && !s->began) {
                s->began = true;
                s->pods = !strncmp(m->text, HELLO_PODS, sizeof(m->text));
                s->ops->begin(s->ctx, s->peer);
                if (send_offer(s, why, sizeof(why)) < 0) {
                        conn_end(s, why);
                        free(m);
                        return;
                }
                loop_timer_arm(s->loop, &s->timer, HANDOVER_TIMEOUT_MS);
        } else if (m->type == MSG_READY && s->began) {
                struct wire_msg c;
                msg_init(&c, MSG_COMMIT);
                rc = msg_send(io->fd, &c, NULL, 0);
                if (rc < 0) {
                        snprintf(why, sizeof(why), "sending COMMIT: %s", strerror(-rc));
                        conn_end(s, why);
                        free(m);
                        return;
                }
                pid_t peer = s->peer;
                s->began = false;
                conn_end(s, NULL);
                s->counts.completed++;
                log_info(COMP, 0,
                         "handover to pid %d complete: it serves and owns the capture; this "
                         "shuntd stops accepting and drains",
                         (int)peer);
                s->ops->commit(s->ctx, peer);
        } else {
                snprintf(why, sizeof(why), "unexpected message type %u", m->type);
                conn_end(s, why);
        }
        free(m);
}

static void on_timeout(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct handover_server *s = t->data;
        char why[96];
        snprintf(why, sizeof(why), "not ready within %d ms",
                 s->began ? HANDOVER_TIMEOUT_MS : HANDOVER_REPLY_MS);
        conn_end(s, why);
}

static void on_accept(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)events;
        struct handover_server *s = io->data;
        for (int i = 0; i < 8; i++) {
                int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                        return;
                struct ucred cred = {.pid = 0, .uid = (uid_t)-1};
                int rc = peer_check(fd, &cred);
                const char *why = rc == -EPERM      ? "its uid is neither root nor ours"
                                  : rc < 0          ? "its credentials are unreadable"
                                  : s->conn.fd >= 0 ? "a handover is already in progress"
                                                    : NULL;
                if (why) {
                        s->counts.refused++;
                        log_warn(COMP, 0, "upgrade socket: refused pid %d uid %d: %s",
                                 (int)cred.pid, (int)cred.uid, why);
                        refuse(fd, why);
                        close(fd);
                        continue;
                }
                s->peer = cred.pid;
                s->began = false;
                loop_io_init(&s->conn, fd, on_conn, s);
                if (loop_io_add(loop, &s->conn, EPOLLIN) < 0) {
                        close(fd);
                        s->conn.fd = -1;
                        continue;
                }
                loop_timer_arm(loop, &s->timer, HANDOVER_REPLY_MS);
        }
}

/* A socket file answered by a live listener at path: the pid behind it. */
static bool path_served(const struct sockaddr_un *sun, pid_t *pid)
{
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        bool live = connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) == 0 ||
                    errno == EAGAIN; /* a full backlog is alive too */
        struct ucred cred = {.pid = 0};
        socklen_t len = sizeof(cred);
        if (live && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
                *pid = cred.pid;
        close(fd);
        return live;
}

/* Bound under a temporary name, made 0600, then renamed over path: the
 * socket is never reachable with looser permissions, and a stale file is
 * replaced in one step. */
static int bind_private(int fd, const char *path, char *err, size_t errlen)
{
        char tmp[sizeof(((struct sockaddr_un *)0)->sun_path) + 32];
        snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid());
        struct sockaddr_un sun;
        if (unix_addr(tmp, &sun, err, errlen) < 0)
                return -ENAMETOOLONG;
        unlink(tmp);
        mode_t old = umask(0177);
        int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
        umask(old);
        if (rc == 0 && chmod(tmp, 0600) == 0 && rename(tmp, path) == 0)
                return 0;
        int e = errno;
        unlink(tmp);
        snprintf(err, errlen, "upgrade.socket %s: cannot create it: %s", path, strerror(e));
        return -e;
}

int handover_server_open(struct loop *loop, const char *path, bool replace,
                         const struct handover_server_ops *ops, void *ctx,
                         struct handover_server **out, char *err, size_t errlen)
{
        *out = NULL;
        struct sockaddr_un sun;
        if (unix_addr(path, &sun, err, errlen) < 0)
                return -ENAMETOOLONG;
        char dir[sizeof(sun.sun_path)];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = '\0';
                if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                        snprintf(err, errlen, "upgrade.socket %s: cannot create %s: %s", path, dir,
                                 strerror(errno));
                        return -errno;
                }
        }
        pid_t other = 0;
        if (!replace && path_served(&sun, &other)) {
                snprintf(err, errlen,
                         "upgrade.socket %s is served by another shuntd (pid %d): give each "
                         "shuntd a path of its own",
                         path, (int)other);
                return -EADDRINUSE;
        }
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                snprintf(err, errlen, "upgrade.socket: %s", strerror(errno));
                return -errno;
        }
        int rc = bind_private(fd, path, err, errlen);
        if (rc == 0 && listen(fd, 4) < 0) {
                rc = -errno;
                snprintf(err, errlen, "upgrade.socket %s: listen: %s", path, strerror(errno));
        }
        struct handover_server *s = rc == 0 ? calloc(1, sizeof(*s)) : NULL;
        if (!s) {
                if (rc == 0) {
                        rc = -ENOMEM;
                        snprintf(err, errlen, "upgrade.socket: out of memory");
                }
                close(fd);
                return rc;
        }
        s->loop = loop;
        s->ops = ops;
        s->ctx = ctx;
        snprintf(s->path, sizeof(s->path), "%s", path);
        loop_io_init(&s->lio, fd, on_accept, s);
        loop_io_init(&s->conn, -1, on_conn, s);
        loop_timer_init(&s->timer, on_timeout, s);
        rc = loop_io_add(loop, &s->lio, EPOLLIN);
        if (rc < 0) {
                snprintf(err, errlen, "upgrade.socket: epoll: %s", strerror(-rc));
                handover_server_free(s, true);
                return rc;
        }
        *out = s;
        log_info(COMP, 0, "upgrade socket %s: `shuntd --takeover` replaces this shuntd", path);
        return 0;
}

void handover_server_counts(const struct handover_server *s, struct handover_counts *out)
{
        memset(out, 0, sizeof(*out));
        if (s)
                *out = s->counts;
}

void handover_server_close_listener(struct handover_server *s)
{
        if (!s || s->lio.fd < 0)
                return;
        loop_io_del(s->loop, &s->lio);
        close(s->lio.fd);
        s->lio.fd = -1;
        conn_end(s, "this shuntd is stopping");
}

void handover_server_free(struct handover_server *s, bool unlink_path)
{
        if (!s)
                return;
        handover_server_close_listener(s);
        if (unlink_path)
                unlink(s->path);
        free(s);
}

/* ---- the new shuntd -------------------------------------------------------------- */

struct handover_client {
        int fd;
        pid_t peer;
        char capture[16];
        char pin_root[HANDOVER_TEXT_MAX];
        struct handover_listener *ls;
        size_t n;
        struct handover_pod *pods;
        size_t n_pods;
};

/* One message within timeout_ms. */
static int recv_wait(struct handover_client *c, struct wire_msg *m, int *fds, size_t *nfds,
                     int timeout_ms)
{
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r == 0)
                return -ETIMEDOUT;
        if (r < 0)
                return -errno;
        int rc = msg_recv(c->fd, m, fds, nfds);
        /* A peer that closed with our message unread makes the first read
         * report ECONNRESET even when its last message (a refusal) waits:
         * the error is reported once, the message is read next. */
        if (rc == -ECONNRESET && msg_recv(c->fd, m, fds, nfds) == 0)
                rc = 0;
        return rc;
}

static const char *recv_error(int rc)
{
        return rc == -ETIMEDOUT    ? "no answer in time"
               : rc == -ECONNRESET ? "it closed the connection"
               : rc == -EPROTO     ? "malformed message (another version of shuntd?)"
                                   : strerror(-rc);
}

/* The socket the old shuntd says it is: a listening TCP socket of the
 * family and address described. */
static int listener_check(const struct handover_listener *l, char *err, size_t errlen)
{
        int type = 0, acc = 0, dom = 0;
        socklen_t len = sizeof(int);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        memset(&ss, 0, sizeof(ss));
        char want[SOCKADDR_STRLEN], got[SOCKADDR_STRLEN];
        sockaddr_format(&l->addr, want, sizeof(want));
        if ((unsigned)l->role >= HANDOVER__ROLES) {
                snprintf(err, errlen, "listener %s: unknown role %u", want, (unsigned)l->role);
                return -EPROTO;
        }
        if (getsockopt(l->fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
            getsockopt(l->fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc ||
            getsockopt(l->fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) < 0 || dom != l->addr.ss_family) {
                snprintf(err, errlen, "%s listener %s: not a listening TCP socket of that family",
                         handover_role_name(l->role), want);
                return -EPROTO;
        }
        if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0 || !sockaddr_equal(&ss, &l->addr)) {
                sockaddr_format(&ss, got, sizeof(got));
                snprintf(err, errlen, "%s listener: said %s, is bound to %s",
                         handover_role_name(l->role), want, got);
                return -EPROTO;
        }
        return 0;
}

static void from_wire(struct handover_listener *l, int fd, const struct wire_listener *w)
{
        l->fd = fd;
        l->role = (enum handover_role)w->role;
        l->worker = w->worker;
        l->addr = w->addr;
}

static int receive_offer(struct handover_client *c, char *err, size_t errlen)
{
        struct wire_msg *m = malloc(sizeof(*m));
        if (!m) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        int fds[HANDOVER_FDS_PER_MSG];
        size_t nfds;
        int rc = recv_wait(c, m, fds, &nfds, HANDOVER_REPLY_MS);
        while (rc == 0 && nfds)
                close(fds[--nfds]);
        if (rc == 0 && m->type == MSG_REFUSE) {
                snprintf(err, errlen, "pid %d refused: %s", (int)c->peer, m->text);
                rc = -EPERM;
        } else if (rc == 0 && (m->type != MSG_OFFER || m->count > HANDOVER_MAX_LISTENERS)) {
                snprintf(err, errlen, "pid %d: bad offer (type %u, %u listeners, at most %d)",
                         (int)c->peer, m->type, m->count, HANDOVER_MAX_LISTENERS);
                rc = -EPROTO;
        } else if (rc < 0) {
                snprintf(err, errlen, "pid %d: waiting for its listeners: %s", (int)c->peer,
                         recv_error(rc));
        }
        if (rc < 0) {
                free(m);
                return rc;
        }
        snprintf(c->capture, sizeof(c->capture), "%s", m->capture);
        snprintf(c->pin_root, sizeof(c->pin_root), "%s", m->text);
        size_t want = m->count;
        c->ls = calloc(want ? want : 1, sizeof(*c->ls));
        if (!c->ls) {
                free(m);
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        while (rc == 0 && c->n < want) {
                rc = recv_wait(c, m, fds, &nfds, HANDOVER_REPLY_MS);
                if (rc == 0 && (m->type != MSG_LISTENERS || c->n + m->count > want)) {
                        while (nfds)
                                close(fds[--nfds]);
                        rc = -EPROTO;
                }
                if (rc < 0) {
                        snprintf(err, errlen, "pid %d: receiving listeners (%zu of %zu): %s",
                                 (int)c->peer, c->n, want, recv_error(rc));
                        break;
                }
                for (size_t i = 0; i < nfds; i++) {
                        struct handover_listener *l = &c->ls[c->n++];
                        from_wire(l, fds[i], &m->items[i]);
                        if (rc == 0)
                                rc = listener_check(l, err, errlen);
                }
        }
        free(m);
        return rc;
}

/* The POD messages up to the empty one (bounded by HANDOVER_MAX_PODS). */
static int receive_pods(struct handover_client *c, char *err, size_t errlen)
{
        struct wire_msg *m = malloc(sizeof(*m));
        c->pods = calloc(16, sizeof(*c->pods));
        size_t cap = 16;
        if (!m || !c->pods) {
                free(m);
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        int fds[HANDOVER_FDS_PER_MSG];
        size_t nfds;
        int rc;
        for (;;) {
                rc = recv_wait(c, m, fds, &nfds, HANDOVER_REPLY_MS);
                bool bad = rc == 0 && (m->type != MSG_POD || m->count != nfds ||
                                       (nfds && c->n_pods == HANDOVER_MAX_PODS) ||
                                       strnlen(m->text, sizeof(m->text)) >= HANDOVER_POD_UID);
                if (rc < 0 || bad) {
                        while (rc == 0 && nfds)
                                close(fds[--nfds]);
                        rc = rc < 0 ? rc : -EPROTO;
                        snprintf(err, errlen,
                                 "pid %d: receiving the pods' listeners (%zu pods): %s",
                                 (int)c->peer, c->n_pods, recv_error(rc));
                        break;
                }
                if (!nfds && !m->text[0])
                        break; /* the last one */
                if (c->n_pods == cap) {
                        struct handover_pod *np = realloc(c->pods, cap * 2 * sizeof(*np));
                        if (np) {
                                memset(np + cap, 0, cap * sizeof(*np));
                                c->pods = np;
                                cap *= 2;
                        }
                }
                struct handover_pod *pod = &c->pods[c->n_pods];
                pod->ls = c->n_pods < cap ? calloc(nfds ? nfds : 1, sizeof(*pod->ls)) : NULL;
                if (!pod->ls) {
                        while (nfds)
                                close(fds[--nfds]);
                        snprintf(err, errlen, "out of memory");
                        rc = -ENOMEM;
                        break;
                }
                c->n_pods++;
                memcpy(pod->uid, m->text, sizeof(pod->uid)); /* NUL-terminated: checked */
                pod->uid[sizeof(pod->uid) - 1] = '\0';
                for (size_t i = 0; i < nfds; i++) {
                        struct handover_listener *l = &pod->ls[pod->n++];
                        from_wire(l, fds[i], &m->items[i]);
                        if (rc == 0 &&
                            (l->role > HANDOVER_OUTBOUND || listener_check(l, err, errlen) < 0)) {
                                if (l->role > HANDOVER_OUTBOUND)
                                        snprintf(err, errlen, "pod %s: a listener of role %s",
                                                 pod->uid, handover_role_name(l->role));
                                rc = -EPROTO;
                        }
                }
                if (rc < 0)
                        break;
        }
        free(m);
        return rc;
}

int handover_client_connect(const char *path, struct handover_client **out, char *err,
                            size_t errlen)
{
        *out = NULL;
        struct sockaddr_un sun;
        if (unix_addr(path, &sun, err, errlen) < 0)
                return -ENAMETOOLONG;
        /* The file's owner first: a socket planted by another user would
         * otherwise receive our HELLO and feed us its sockets. */
        struct stat st;
        if (lstat(path, &st) < 0) {
                int e = errno;
                snprintf(err, errlen, "upgrade.socket %s: %s", path, strerror(e));
                return -e;
        }
        if (!S_ISSOCK(st.st_mode) || (st.st_uid != 0 && st.st_uid != geteuid())) {
                snprintf(err, errlen,
                         "upgrade.socket %s: %s owned by uid %u (must be a socket of root or uid "
                         "%u): refused",
                         path, S_ISSOCK(st.st_mode) ? "a socket" : "not a socket",
                         (unsigned)st.st_uid, (unsigned)geteuid());
                return -EPERM;
        }
        struct handover_client *c = calloc(1, sizeof(*c));
        if (!c) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        int rc = 0;
        c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
                rc = -errno;
                snprintf(err, errlen, "upgrade.socket %s: %s", path, strerror(errno));
                goto fail;
        }
        struct ucred cred = {.pid = 0, .uid = (uid_t)-1};
        rc = peer_check(c->fd, &cred);
        if (rc < 0) {
                snprintf(err, errlen,
                         "upgrade.socket %s: served by pid %d uid %u, neither root nor "
                         "our uid: refused",
                         path, (int)cred.pid, (unsigned)cred.uid);
                goto fail;
        }
        c->peer = cred.pid;
        struct wire_msg hello;
        msg_init(&hello, MSG_HELLO);
        snprintf(hello.text, sizeof(hello.text), "%s", HELLO_PODS);
        rc = msg_send(c->fd, &hello, NULL, 0);
        /* Refused at once: the refusal waits in our queue (read below). */
        if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET) {
                snprintf(err, errlen, "upgrade.socket %s: HELLO: %s", path, strerror(-rc));
                goto fail;
        }
        rc = receive_offer(c, err, errlen);
        if (rc == 0)
                rc = receive_pods(c, err, errlen);
        if (rc < 0)
                goto fail;
        log_info(COMP, 0,
                 "takeover: %zu listening sockets received from pid %d (capture %s), and the "
                 "listeners of %zu pods",
                 c->n, (int)c->peer, c->capture, c->n_pods);
        *out = c;
        return 0;
fail:
        handover_client_free(c);
        return rc;
}

pid_t handover_client_peer(const struct handover_client *c)
{
        return c->peer;
}

const char *handover_client_capture(const struct handover_client *c)
{
        return c->capture;
}

const char *handover_client_pin_root(const struct handover_client *c)
{
        return c->pin_root;
}

struct handover_listener *handover_client_listeners(struct handover_client *c, size_t *n)
{
        *n = c->n;
        return c->ls;
}

struct handover_pod *handover_client_pods(struct handover_client *c, size_t *n)
{
        *n = c->n_pods;
        return c->pods;
}

int handover_client_ready(struct handover_client *c, char *err, size_t errlen)
{
        struct wire_msg *m = malloc(sizeof(*m));
        if (!m) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        msg_init(m, MSG_READY);
        int rc = msg_send(c->fd, m, NULL, 0);
        if (rc < 0) {
                snprintf(err, errlen, "telling pid %d we are ready: %s", (int)c->peer,
                         strerror(-rc));
                free(m);
                return rc;
        }
        int fds[HANDOVER_FDS_PER_MSG];
        size_t nfds;
        rc = recv_wait(c, m, fds, &nfds, HANDOVER_REPLY_MS);
        while (rc == 0 && nfds)
                close(fds[--nfds]);
        const char *why = rc < 0                  ? recv_error(rc)
                          : m->type == MSG_REFUSE ? m->text
                          : m->type != MSG_COMMIT ? "unexpected message"
                                                  : NULL;
        if (why) {
                snprintf(err, errlen, "pid %d did not commit the handover: %s", (int)c->peer, why);
                rc = rc < 0 ? rc : -EPROTO;
        }
        free(m);
        return rc;
}

void handover_client_free(struct handover_client *c)
{
        if (!c)
                return;
        for (size_t i = 0; i < c->n; i++)
                if (c->ls[i].fd >= 0)
                        close(c->ls[i].fd);
        free(c->ls);
        for (size_t i = 0; i < c->n_pods; i++) {
                for (size_t j = 0; j < c->pods[i].n; j++)
                        if (c->pods[i].ls[j].fd >= 0)
                                close(c->pods[i].ls[j].fd);
                free(c->pods[i].ls);
        }
        free(c->pods);
        if (c->fd >= 0)
                close(c->fd);
        free(c);
}

// SPDX-License-Identifier: Apache-2.0
/* Upstream connections and the per-worker idle pool; see upstream.h. */
#include "proxy/upstream.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "lb/lb.h"
#include "proxy/proxy-int.h"
#include "tls/conn.h"

#define UPSTREAM_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
#define POOL_BUCKETS    256 /* power of two */

/* The transitions of upstream.h's table, one bit per next state. */
#define TO(x) (1u << (x))
static const unsigned upstream_next[UPSTREAM__COUNT] = {
    [UPSTREAM_CONNECTING] = TO(UPSTREAM_HANDSHAKE) | TO(UPSTREAM_OPEN) | TO(UPSTREAM_DEAD),
    [UPSTREAM_HANDSHAKE] = TO(UPSTREAM_OPEN) | TO(UPSTREAM_DEAD),
    [UPSTREAM_OPEN] = TO(UPSTREAM_DEAD),
    [UPSTREAM_DEAD] = TO(UPSTREAM_DEAD), /* failed, then closed by upstream_put */
};

bool upstream_transition_ok(enum upstream_state from, enum upstream_state to)
{
        return (unsigned)from < UPSTREAM__COUNT && (unsigned)to < UPSTREAM__COUNT &&
               (upstream_next[from] & TO(to));
}

static void upstream_set_state(struct upstream *u, enum upstream_state next)
{
        assert(upstream_transition_ok(u->state, next));
        u->state = next;
}

struct upstream_pool {
        struct upstream *bucket[POOL_BUCKETS]; /* idle connections, most recently used first */
};

/* ---- building blocks ------------------------------------------------------------- */

int upstream_socket(const struct sockaddr_storage *addr, uint32_t mark, const char **what)
{
        int one = 1;
        int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
        if (fd < 0) {
                *what = "socket";
                return -errno;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* The mark keeps our own connection out of the capture rules. */
        if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
                int err = errno;
                close(fd);
                *what = "SO_MARK (needs CAP_NET_ADMIN)";
                return -err;
        }
        if (connect(fd, (const struct sockaddr *)addr, sockaddr_len(addr)) < 0 &&
            errno != EINPROGRESS) {
                int err = errno;
                close(fd);
                *what = "connect";
                return -err;
        }
        return fd;
}

struct tls_snapshot *upstream_worker_tls(struct worker *w)
{
        if (!w->proxy->tls_slot)
                return NULL;
        struct snapshot *s = snapshot_reader_get(&w->tls_reader, w->proxy->tls_slot);
        return s ? tls_snapshot_get(s) : NULL;
}

bool warn_limit_allow(struct warn_limit *wl, uint64_t now_ms, const char *component)
{
        if (wl->last_ms && now_ms - wl->last_ms < 1000) {
                wl->suppressed++;
                return false;
        }
        if (wl->suppressed)
                log_warn(component, 0, "%llu similar warnings left out in the last second",
                         (unsigned long long)wl->suppressed);
        wl->last_ms = now_ms;
        wl->suppressed = 0;
        return true;
}

int upstream_connect_result(int fd, uint32_t events)
{
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                return 1;
        int err = 0;
        socklen_t len = sizeof(err);
        if ((events & (EPOLLERR | EPOLLHUP)) &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
        return err;
}

int upstream_tls_start(struct worker *w, int fd, uint64_t conn_id, const char *identity,
                       const struct sockaddr_storage *addr, struct tls_conn **tls)
{
        struct tls_snapshot *ts = upstream_worker_tls(w);
        if (!ts || tls_conn_client_new(ts, fd, conn_id, identity, sockaddr_port(addr), tls) < 0)
                return -1;
        tls_conn_set_peer(*tls, addr);
        return 0;
}

ssize_t upstream_io_recv(int fd, struct tls_conn *tls, void *buf, size_t len)
{
        if (!tls)
                return recv(fd, buf, len, 0);
        ssize_t n = tls_conn_read(tls, buf, len);
        if (n < 0) {
                errno = (int)-n;
                return -1;
        }
        return n;
}

ssize_t upstream_io_send(int fd, struct tls_conn *tls, const void *buf, size_t len)
{
        if (!tls)
                return send(fd, buf, len, MSG_NOSIGNAL);
        ssize_t n = tls_conn_write(tls, buf, len);
        if (n < 0) {
                errno = (int)-n;
                return -1;
        }
        return n;
}

int upstream_io_shutdown(int fd, struct tls_conn *tls)
{
        if (tls && tls_conn_shutdown(tls) == -EAGAIN)
                return -EAGAIN;
        shutdown(fd, SHUT_WR);
        return 0;
}

ssize_t upstream_recv(struct upstream *u, void *buf, size_t len)
{
        return upstream_io_recv(u->io.fd, u->tls, buf, len);
}

/* ---- pool ------------------------------------------------------------------------ */

uint64_t upstream_key_hash(const struct sockaddr_storage *addr, const char *identity)
{
        uint64_t h = lb_hash(identity, strlen(identity)) ^ sockaddr_port(addr);
        if (addr->ss_family == AF_INET)
                h ^= lb_hash(&((const struct sockaddr_in *)(const void *)addr)->sin_addr, 4);
        else
                h ^= lb_hash(&((const struct sockaddr_in6 *)(const void *)addr)->sin6_addr, 16);
        return h;
}

static uint32_t key_bucket(const struct sockaddr_storage *addr, const char *identity)
{
        return (uint32_t)(upstream_key_hash(addr, identity) & (POOL_BUCKETS - 1));
}

static bool same_key(const struct upstream *u, const struct sockaddr_storage *addr,
                     const char *identity)
{
        return sockaddr_equal(&u->addr, addr) && strcmp(u->identity, identity) == 0;
}

static void pool_unlink(struct upstream *u)
{
        struct upstream_pool *p = u->w->upstreams;
        if (u->pool_prev)
                u->pool_prev->pool_next = u->pool_next;
        else
                p->bucket[u->bucket] = u->pool_next;
        if (u->pool_next)
                u->pool_next->pool_prev = u->pool_prev;
        u->pool_prev = u->pool_next = NULL;
        u->in_pool = false;
        stat_sub(&u->w->stats, ST_UPSTREAM_IDLE, 1);
}

static void upstream_close(struct upstream *u)
{
        struct loop *loop = u->w->loop;
        loop_timer_cancel(loop, &u->timer);
        if (u->in_pool)
                pool_unlink(u);
        tls_conn_free(u->tls);
        u->tls = NULL;
        if (u->io.fd >= 0) {
                loop_io_del(loop, &u->io);
                close(u->io.fd);
                u->io.fd = -1;
        }
        upstream_set_state(u, UPSTREAM_DEAD);
        /* An event for it may still be pending in this epoll batch. */
        loop_defer_free(loop, u);
}

static void fail(struct upstream *u, int reason, const char *what)
{
        loop_timer_cancel(u->w->loop, &u->timer);
        tls_conn_free(u->tls);
        u->tls = NULL;
        if (u->io.fd >= 0) {
                loop_io_del(u->w->loop, &u->io);
                close(u->io.fd);
                u->io.fd = -1;
        }
        upstream_set_state(u, UPSTREAM_DEAD);
        u->fail_reason = reason;
        u->fail_what = what;
        u->fn(u, UPSTREAM_FAILED, u->owner);
}

static void ready(struct upstream *u)
{
        upstream_set_state(u, UPSTREAM_OPEN);
        loop_timer_cancel(u->w->loop, &u->timer);
        u->readable = u->writable = true;
        u->fn(u, UPSTREAM_READY, u->owner);
}

static void handshake(struct upstream *u)
{
        int r = tls_conn_handshake(u->tls);
        if (r == 0) {
                log_debug("tls", u->conn_id, "outbound handshake done: peer %s serial %s",
                          tls_conn_peer_id(u->tls), tls_conn_peer_serial(u->tls));
                ready(u);
        } else if (r != -EAGAIN) {
                fail(u, REASON_TLS_HANDSHAKE, "TLS handshake failed");
        }
}

/* An idle connection became readable: the server closed it, or sent bytes
 * nobody asked for; either way it cannot carry a request. On TLS the record
 * may also be a post-handshake message (a session ticket), which the TLS
 * layer consumes: the connection stays. */
static bool idle_broken(struct upstream *u)
{
        char b;
        ssize_t n;
        if (u->tls)
                n = tls_conn_read(u->tls, &b, 1);
        else
                n = recv(u->io.fd, &b, 1, MSG_PEEK);
        if (n < 0 && (n == -EAGAIN || (!u->tls && errno == EAGAIN)))
                return false;
        return true;
}

static void on_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct upstream *u = io->data;
        (void)loop;
        if (u->state == UPSTREAM_DEAD)
                return;
        upstream_io_mark(events, u->tls, &u->readable, &u->writable, &u->rdhup);
        if (u->in_pool) {
                if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && idle_broken(u)) {
                        stat_add(&u->w->stats, ST_UPSTREAM_IDLE_PEER, 1);
                        upstream_close(u);
                }
                return;
        }
        if (u->state == UPSTREAM_CONNECTING) {
                int err = upstream_connect_result(io->fd, events);
                if (err == 1)
                        return;
                if (err) {
                        fail(u, REASON_CONNECT_REFUSED, strerror(err));
                        return;
                }
                if (u->identity[0]) {
                        if (upstream_tls_start(u->w, io->fd, u->conn_id, u->identity, &u->addr,
                                               &u->tls) < 0) {
                                fail(u, REASON_NO_MEMORY, "cannot start TLS");
                                return;
                        }
                        upstream_set_state(u, UPSTREAM_HANDSHAKE);
                        loop_timer_arm(u->w->loop, &u->timer,
                                       worker_cfg(u->w)->mtls_handshake_timeout_ms);
                        handshake(u);
                        return;
                }
                ready(u);
                return;
        }
        if (u->state == UPSTREAM_HANDSHAKE) {
                handshake(u);
                return;
        }
        u->fn(u, UPSTREAM_IO, u->owner);
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        struct upstream *u = t->data;
        (void)loop;
        if (u->in_pool) {
                stat_add(&u->w->stats, ST_UPSTREAM_IDLE_EXPIRED, 1);
                upstream_close(u);
        } else if (u->state == UPSTREAM_CONNECTING) {
                fail(u, REASON_CONNECT_TIMEOUT, "connect timed out");
        } else if (u->state == UPSTREAM_HANDSHAKE) {
                tls_conn_timeout(u->tls);
                fail(u, REASON_TLS_HANDSHAKE, "TLS handshake timed out");
        }
}

static struct upstream *pool_take(struct worker *w, const struct sockaddr_storage *addr,
                                  const char *identity)
{
        if (!w->upstreams)
                return NULL;
        for (struct upstream *u = w->upstreams->bucket[key_bucket(addr, identity)]; u;
             u = u->pool_next) {
                if (!same_key(u, addr, identity))
                        continue;
                pool_unlink(u);
                loop_timer_cancel(w->loop, &u->timer);
                return u;
        }
        return NULL;
}

struct upstream *upstream_get(struct worker *w, const struct sockaddr_storage *addr,
                              const char *identity, bool fresh, uint64_t conn_id, upstream_fn fn,
                              void *owner, int *err, const char **what)
{
        const struct shunt_config *cfg = worker_cfg(w);
        struct upstream *u = fresh ? NULL : pool_take(w, addr, identity);
        if (u) {
                stat_add(&w->stats, ST_UPSTREAM_REUSED, 1);
                u->reused = true;
                u->fn = fn;
                u->owner = owner;
                u->conn_id = conn_id;
                /* Edge-triggered: assume both ways until a call says otherwise. */
                u->readable = u->writable = true;
                return u;
        }
        if (strlen(identity) >= sizeof(u->identity)) {
                *err = -ENAMETOOLONG;
                *what = "identity too long";
                return NULL;
        }
        u = calloc(1, sizeof(*u));
        if (!u) {
                *err = -ENOMEM;
                *what = "out of memory";
                return NULL;
        }
        int fd = upstream_socket(addr, config_socket_mark(cfg), what);
        if (fd < 0) {
                free(u);
                *err = fd;
                return NULL;
        }
        u->w = w;
        u->addr = *addr;
        snprintf(u->identity, sizeof(u->identity), "%s", identity);
        u->fn = fn;
        u->owner = owner;
        u->conn_id = conn_id;
        u->state = UPSTREAM_CONNECTING;
        loop_io_init(&u->io, fd, on_io, u);
        loop_timer_init(&u->timer, on_timer, u);
        if (loop_io_add(w->loop, &u->io, UPSTREAM_EVENTS) < 0) {
                *err = -errno;
                *what = "epoll_ctl";
                close(fd);
                free(u);
                return NULL;
        }
        loop_timer_arm(w->loop, &u->timer, cfg->connect_timeout_ms);
        stat_add(&w->stats, ST_UPSTREAM_OPENED, 1);
        return u;
}

void upstream_connect_timeout(struct upstream *u, uint32_t ms)
{
        if (u->state == UPSTREAM_CONNECTING)
                loop_timer_arm(u->w->loop, &u->timer, ms);
}

void upstream_put(struct upstream *u, bool reusable)
{
        struct worker *w = u->w;
        const struct shunt_config *cfg = worker_cfg(w);
        u->fn = NULL;
        u->owner = NULL;
        /* The server's FIN already came (with the last response, say): the
         * edge is spent, so the pool would never notice, and the next request
         * would go out on a closed connection. */
        if (!reusable || u->rdhup || u->state != UPSTREAM_OPEN ||
            cfg->http_upstream_max_idle == 0) {
                upstream_close(u);
                return;
        }
        if (!w->upstreams) {
                w->upstreams = calloc(1, sizeof(*w->upstreams));
                if (!w->upstreams) {
                        upstream_close(u);
                        return;
                }
        }
        uint32_t b = key_bucket(&u->addr, u->identity);
        uint32_t same = 0;
        for (struct upstream *o = w->upstreams->bucket[b]; o; o = o->pool_next)
                same += same_key(o, &u->addr, u->identity);
        if (same >= cfg->http_upstream_max_idle) {
                stat_add(&w->stats, ST_UPSTREAM_POOL_FULL, 1);
                upstream_close(u);
                return;
        }
        u->bucket = b;
        u->pool_prev = NULL;
        u->pool_next = w->upstreams->bucket[b];
        if (u->pool_next)
                u->pool_next->pool_prev = u;
        w->upstreams->bucket[b] = u;
        u->in_pool = true;
        u->readable = false; /* a later EPOLLIN edge means the server spoke or closed */
        stat_add(&w->stats, ST_UPSTREAM_IDLE, 1);
        loop_timer_arm(w->loop, &u->timer, cfg->http_upstream_idle_timeout_ms);
}

void upstream_adopt(struct worker *w, int fd, struct tls_conn *tls,
                    const struct sockaddr_storage *addr, const char *identity)
{
        struct upstream *u = strlen(identity) < sizeof(u->identity) ? calloc(1, sizeof(*u)) : NULL;
        if (!u) {
                tls_conn_free(tls);
                close(fd);
                return;
        }
        u->w = w;
        u->addr = *addr;
        snprintf(u->identity, sizeof(u->identity), "%s", identity);
        u->tls = tls;
        u->state = UPSTREAM_OPEN;
        loop_io_init(&u->io, fd, on_io, u);
        loop_timer_init(&u->timer, on_timer, u);
        if (loop_io_add(w->loop, &u->io, UPSTREAM_EVENTS) < 0) {
                tls_conn_free(tls);
                close(fd);
                free(u);
                return;
        }
        stat_add(&w->stats, ST_UPSTREAM_OPENED, 1);
        upstream_put(u, true);
}

void upstream_pool_free(struct worker *w)
{
        struct upstream_pool *p = w->upstreams;
        if (!p)
                return;
        for (uint32_t b = 0; b < POOL_BUCKETS; b++)
                while (p->bucket[b])
                        upstream_close(p->bucket[b]);
        free(p);
        w->upstreams = NULL;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* A worker without threads, listeners or namespaces, for the unit tests of
 * the proxy's engines (test_h1proxy.c, test_h2proxy.c): the test runs the
 * worker's loop itself until a condition holds (run_until, bounded in
 * iterations), hands connections over from one end of a socketpair and
 * plays the application on a loopback listener of its own. */
#ifndef SHUNT_TESTS_PROXY_HARNESS_H
#define SHUNT_TESTS_PROXY_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "proxy/proxy-int.h"
#include "proxy/proxy.h"

#define RUN_UNTIL_ROUNDS 5000 /* 1 ms ticks: the bound of a wait (a failure, never a pass) */

struct harness {
        struct shunt_config *cfg;
        struct proxy *p;
        struct worker *w;
        uint64_t next_id;
};

static inline struct shunt_config *harness_defaults(void)
{
        char *argv[] = {"shuntd", NULL};
        char *envp[] = {NULL};
        struct shunt_config *cfg;
        char err[256];
        if (config_load(1, argv, envp, &cfg, err, sizeof(err)))
                fail_msg("%s", err);
        cfg->workers = 1;
        cfg->proxy_mark = 0; /* no SO_MARK: no privilege needed */
        return cfg;
}

/* One worker of a proxy that has no listener and no thread; the caller may
 * change h->cfg before and after (the worker reads it live). */
static inline void harness_init(struct harness *h)
{
        memset(h, 0, sizeof(*h));
        h->cfg = harness_defaults();
        struct proxy *p = calloc(1, sizeof(*p));
        assert_non_null(p);
        snapshot_slot_init(&p->cfg_slot);
        snapshot_slot_init(&p->route_slot);
        snapshot_slot_init(&p->authz_slot);
        snapshot_ref(&h->cfg->snap);
        snapshot_publish(&p->cfg_slot, &h->cfg->snap);
        p->n_workers = 1;
        p->fd_conn_limit = 1024;
        p->workers = calloc(1, sizeof(*p->workers));
        assert_non_null(p->workers);
        struct worker *w = &p->workers[0];
        w->proxy = p;
        w->loop = loop_new();
        assert_non_null(w->loop);
        w->spare_fd = -1;
        h->p = p;
        h->w = w;
        h->next_id = 1;
}

static inline void harness_free(struct harness *h)
{
        proxy_free(h->p);
        snapshot_unref(&h->cfg->snap);
}

static inline uint64_t harness_stat(struct harness *h, enum stat_id id)
{
        return atomic_load_explicit(&h->w->stats.v[id], memory_order_relaxed);
}

typedef bool (*harness_pred)(void *arg);

struct until {
        struct loop_timer t;
        harness_pred pred;
        void *arg;
        int left;
        bool ok;
};

static inline void until_tick(struct loop *loop, struct loop_timer *t)
{
        struct until *u = t->data;
        if (u->pred(u->arg)) {
                u->ok = true;
                loop_stop(loop);
        } else if (--u->left <= 0) {
                loop_stop(loop);
        } else {
                loop_timer_arm(loop, t, 1);
        }
}

/* Runs the worker's loop until pred(arg) holds (checked every millisecond
 * of loop time); fails the test when it never does. */
static inline void run_until(struct harness *h, harness_pred pred, void *arg, const char *what)
{
        struct until u = {.pred = pred, .arg = arg, .left = RUN_UNTIL_ROUNDS};
        loop_timer_init(&u.t, until_tick, &u);
        if (!pred(arg)) {
                loop_timer_arm(h->w->loop, &u.t, 0);
                loop_run(h->w->loop);
                loop_timer_cancel(h->w->loop, &u.t);
        } else {
                u.ok = true;
        }
        if (!u.ok)
                fail_msg("gave up waiting for: %s", what);
}

static inline void sa_loopback(uint16_t port, struct sockaddr_storage *ss)
{
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        memset(ss, 0, sizeof(*ss));
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A non-blocking loopback listener (the application); its address in *ss. */
static inline int app_listen(struct sockaddr_storage *ss)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        sa_loopback(0, ss);
        assert_int_equal(bind(fd, (struct sockaddr *)ss, sizeof(struct sockaddr_in)), 0);
        assert_int_equal(listen(fd, 16), 0);
        socklen_t sl = sizeof(*ss);
        assert_int_equal(getsockname(fd, (struct sockaddr *)ss, &sl), 0);
        return fd;
}

/* A loopback address nothing listens on (bound, then closed). */
static inline void dead_port(struct sockaddr_storage *ss)
{
        int fd = app_listen(ss);
        close(fd);
}

/* Hands a connection over to engine e as the relay does: returns the
 * test's end of the client socketpair (non-blocking). first (len bytes)
 * is what the client sent before the hand-off. */
static inline int harness_handoff(struct harness *h, const struct proto_engine *e, enum proto proto,
                                  enum conn_dir dir, const struct sockaddr_storage *upstream,
                                  const void *first, uint32_t len)
{
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
        struct handoff ho;
        memset(&ho, 0, sizeof(ho));
        ho.id = h->next_id++;
        ho.dir = dir;
        ho.fd = sv[0];
        ho.proto = proto;
        sa_loopback(40000, &ho.client_addr);
        ho.orig_dst = *upstream;
        ho.upstream = *upstream;
        ho.created_ms = loop_now_ms(h->w->loop);
        if (len) {
                ho.buf = worker_buf_take(h->w, &ho.cap);
                assert_non_null(ho.buf);
                assert_true(len <= ho.cap);
                memcpy(ho.buf, first, len);
                ho.len = len;
        }
        /* Counted as the relay counts an accepted connection. */
        stat_add(&h->w->stats, dir == DIR_INBOUND ? ST_ACTIVE_IN : ST_ACTIVE_OUT, 1);
        atomic_fetch_add(&h->p->active, 1);
        e->start(h->w, &ho);
        return sv[1];
}

/* A client connection through the relay, as a listener of direction dir
 * accepted it: the test's client connects to front (a loopback listener
 * the test holds, at front_addr), and the accepted end goes to
 * relay_accept. Returns the client's socket (non-blocking). */
static inline int harness_relay_connect(struct harness *h, int front,
                                        const struct sockaddr_storage *front_addr,
                                        enum conn_dir dir)
{
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(c >= 0);
        assert_int_equal(
            connect(c, (const struct sockaddr *)front_addr, sizeof(struct sockaddr_in)), 0);
        assert_int_equal(fcntl(c, F_SETFL, O_NONBLOCK), 0);
        struct sockaddr_storage peer;
        socklen_t sl = sizeof(peer);
        int fd = -1;
        for (int i = 0; i < RUN_UNTIL_ROUNDS && fd < 0; i++)
                fd = accept4(front, (struct sockaddr *)&peer, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        assert_true(fd >= 0);
        struct listener l;
        memset(&l, 0, sizeof(l));
        l.dir = dir;
        relay_accept(h->w, &l, fd, &peer);
        return c;
}

/* The worker's /connections items of engine e, or (e NULL) all of them:
 * the relay's connections, then every engine's sessions. */
static inline void harness_render(struct harness *h, const struct proto_engine *e,
                                  struct strbuf *out)
{
        bool first = true;
        strbuf_reset(out);
        if (e)
                e->render(h->w, out, &first);
        else
                relay_render(h->w, out, &first);
}

/* The one connection of engine e (NULL: the relay) shows state want in
 * /connections. */
static inline void harness_assert_state(struct harness *h, const struct proto_engine *e,
                                        struct strbuf *sb, const char *want)
{
        harness_render(h, e, sb);
        char needle[64];
        snprintf(needle, sizeof(needle), "\"state\":\"%s\"", want);
        if (!sb->data || !strstr(sb->data, needle))
                fail_msg("want state %s, /connections has: %s", want,
                         sb->data ? sb->data : "(nothing)");
}

/* A byte stream the test reads without blocking. */
struct sink {
        int fd;
        char buf[65536];
        size_t len;
        bool eof;
        bool reset;
};

/* Reads what is there; true when more came or the peer closed. */
static inline void sink_read(struct sink *s)
{
        while (!s->eof && s->len < sizeof(s->buf) - 1) {
                ssize_t n = recv(s->fd, s->buf + s->len, sizeof(s->buf) - 1 - s->len, 0);
                if (n > 0) {
                        s->len += (size_t)n;
                } else if (n == 0) {
                        s->eof = true;
                } else {
                        if (errno != EAGAIN && errno != EINTR)
                                s->eof = s->reset = true;
                        break;
                }
        }
        s->buf[s->len] = '\0';
}

static inline void sink_consume(struct sink *s, size_t n)
{
        memmove(s->buf, s->buf + n, s->len - n);
        s->len -= n;
        s->buf[s->len] = '\0';
}

static inline void send_all(int fd, const char *p)
{
        size_t n = strlen(p);
        while (n) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                assert_true(k > 0);
                p += k;
                n -= (size_t)k;
        }
}

#endif

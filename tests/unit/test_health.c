// SPDX-License-Identifier: Apache-2.0
/* Active health checks against real listeners on 127.0.0.1, driving the
 * event loop from the test: a TCP endpoint whose listener goes away (and
 * comes back), an HTTP endpoint answering 200 then 500 then 302, a response
 * that never sends a status line, endpoints added and removed while the
 * checker runs, and the in-flight bound. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/log.h"
#include "core/loop.h"
#include "discovery/health.h"
#include "discovery/registry.h"

/* ---- a tiny HTTP server on the test's loop ---------------------------------- */

struct http_srv {
        struct loop_io lio;
        int status; /* answered to every request; 0: send junk without a newline;
                       -1: a 200 whose head is malformed (a field line without ':') */
        unsigned requests;
        char last_host[128];
        char last_path[128];
};

struct http_conn {
        struct loop_io io;
        struct http_srv *srv;
        char buf[2048];
        size_t len;
};

static void conn_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)events;
        struct http_conn *c = io->data;
        ssize_t r = recv(io->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
        if (r > 0) {
                c->len += (size_t)r;
                c->buf[c->len] = '\0';
                if (!strstr(c->buf, "\r\n\r\n"))
                        return;
                c->srv->requests++;
                sscanf(c->buf, "GET %127s", c->srv->last_path);
                const char *host = strstr(c->buf, "\r\nHost: ");
                if (host)
                        sscanf(host + 8, "%127[^\r]", c->srv->last_host);
                char resp[2048];
                int n;
                if (c->srv->status < 0) {
                        n = snprintf(resp, sizeof(resp),
                                     "HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n");
                } else if (c->srv->status) {
                        n = snprintf(
                            resp, sizeof(resp),
                            "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            c->srv->status);
                } else {
                        memset(resp, 'x', sizeof(resp));
                        n = (int)sizeof(resp);
                }
                ssize_t w = send(io->fd, resp, (size_t)n, MSG_NOSIGNAL);
                (void)w;
        } else if (r < 0 && errno == EAGAIN) {
                return;
        }
        loop_io_del(loop, io);
        close(io->fd);
        loop_defer_free(loop, c);
}

static void srv_accept(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)events;
        struct http_srv *s = io->data;
        int fd;
        while ((fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                struct http_conn *c = calloc(1, sizeof(*c));
                assert_non_null(c);
                c->srv = s;
                loop_io_init(&c->io, fd, conn_io, c);
                assert_int_equal(loop_io_add(loop, &c->io, EPOLLIN), 0);
        }
}

/* A listener on 127.0.0.1; port 0 picks one. */
static int listener(uint16_t *port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(*port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 64), 0);
        socklen_t l = sizeof(sa);
        getsockname(fd, (struct sockaddr *)&sa, &l);
        *port = ntohs(sa.sin_port);
        return fd;
}

/* A port nothing listens on (bound, never listening, so nobody else gets it). */
static int dead_port(uint16_t *port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        socklen_t l = sizeof(sa);
        getsockname(fd, (struct sockaddr *)&sa, &l);
        *port = ntohs(sa.sin_port);
        return fd;
}

static struct disc_addr A(uint16_t port);

/* ---- driving the loop ------------------------------------------------------- */

struct drive {
        struct disc_registry *r;
        const char *ns, *name;
        struct disc_addr addr;
        enum disc_health want;
        unsigned ticks, max_ticks;
        bool met;
        struct loop_timer t;
};

static enum disc_health health_of(struct disc_registry *r, const char *name,
                                  const struct disc_addr *a)
{
        const struct disc_snapshot *s = disc_registry_acquire(r);
        enum disc_health h = DISC_HEALTH__COUNT; /* absent */
        const struct disc_endpoint *ep = disc_find_endpoint(s, a);
        for (; ep; ep = ep->next_same_addr == UINT32_MAX
                            ? NULL
                            : disc_snapshot_endpoint(s, ep->next_same_addr)) {
                if (strcmp(disc_endpoint_service(s, ep)->name, name) == 0) {
                        h = ep->health;
                        break;
                }
        }
        disc_snapshot_release(s);
        return h;
}

static void drive_cb(struct loop *loop, struct loop_timer *t)
{
        struct drive *d = t->data;
        d->ticks++;
        if (health_of(d->r, d->name, &d->addr) == d->want) {
                d->met = true;
                loop_stop(loop);
                return;
        }
        if (d->ticks >= d->max_ticks) {
                loop_stop(loop);
                return;
        }
        loop_timer_arm(loop, t, 10);
}

/* Runs the loop until the endpoint's published health is want, at most
 * max_ticks timer ticks of 10 ms; returns the ticks it took. */
static unsigned run_until(struct loop *loop, struct disc_registry *r, const char *name,
                          struct disc_addr a, enum disc_health want, unsigned max_ticks)
{
        struct drive d = {.r = r, .name = name, .addr = a, .want = want, .max_ticks = max_ticks};
        loop_timer_init(&d.t, drive_cb, &d);
        loop_timer_arm(loop, &d.t, 0);
        assert_int_equal(loop_run(loop), 0);
        loop_timer_cancel(loop, &d.t);
        if (!d.met)
                fail_msg("%s: health %s not reached in %u ticks (is %s)", name,
                         disc_health_name(want), max_ticks,
                         health_of(r, name, &a) < DISC_HEALTH__COUNT
                             ? disc_health_name(health_of(r, name, &a))
                             : "absent");
        return d.ticks;
}

/* Runs the loop for n ticks of 10 ms whatever happens. */
static void run_ticks(struct loop *loop, struct disc_registry *r, unsigned n)
{
        struct drive d = {.r = r, .name = "", .want = DISC_HEALTH__COUNT + 1, .max_ticks = n};
        d.addr = A(1);
        loop_timer_init(&d.t, drive_cb, &d);
        loop_timer_arm(loop, &d.t, 0);
        assert_int_equal(loop_run(loop), 0);
        loop_timer_cancel(loop, &d.t);
        assert_false(d.met);
}

static struct disc_addr A(uint16_t port) {
        struct disc_addr a;
        assert_int_equal(disc_addr_parse("127.0.0.1", port, &a), 0);
        return a;
}

static void
service(struct disc_service_spec *s, const char *name, enum disc_hc_type type, const char *path,
        struct disc_endpoint_spec *eps, uint32_t n)
{
        disc_service_spec_init(s);
        snprintf(s->name, sizeof(s->name), "%s", name);
        s->n_ports = 1;
        s->ports[0].port = 80;
        s->ports[0].proto = PROTO_TCP;
        s->hc.type = type;
        s->hc.interval_ms = 100;
        s->hc.timeout_ms = 100;
        s->hc.healthy_threshold = 1;
        s->hc.unhealthy_threshold = 1;
        if (path)
                snprintf(s->hc.path, sizeof(s->hc.path), "%s", path);
        s->endpoints = eps;
        s->n_endpoints = n;
}

static void ep(struct disc_endpoint_spec *e, uint16_t port)
{
        memset(e, 0, sizeof(*e));
        e->addr = A(port);
        e->weight = 1;
        e->health = DISC_HEALTH_UNKNOWN;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_tcp_listener_goes_away(void **state)
{
        (void)state;
        struct loop *loop = loop_new();
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "test", DISC_SOURCE_FILE);
        uint16_t port = 0;
        int lfd = listener(&port);
        struct disc_endpoint_spec eps[1];
        ep(&eps[0], port);
        struct disc_service_spec s;
        service(&s, "tcpsvc", DISC_HC_TCP, NULL, eps, 1);
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        struct disc_checker *h = disc_health_start(r, loop, 0);
        assert_non_null(h);

        run_until(loop, r, "tcpsvc", A(port), DISC_HEALTH_HEALTHY, 300);
        /* the listener goes away: out within one interval (100 ms = 10 ticks)
         * plus a scan, measured in loop ticks, not wall time */
        close(lfd);
        unsigned t = run_until(loop, r, "tcpsvc", A(port), DISC_HEALTH_UNHEALTHY, 300);
        assert_true(t <= 10 + 5 + 5);
        /* it comes back */
        lfd = listener(&port);
        run_until(loop, r, "tcpsvc", A(port), DISC_HEALTH_HEALTHY, 300);

        struct disc_health_stats st;
        disc_health_get_stats(h, &st);
        assert_int_equal(st.targets, 1);
        assert_true(st.passed >= 2);
        assert_true(st.failed >= 1);
        assert_int_equal(st.shed, 0);
        disc_health_stop(h);
        close(lfd);
        disc_registry_free(r);
        loop_free(loop);
}

static void test_http_status(void **state)
{
        (void)state;
        struct loop *loop = loop_new();
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "test", DISC_SOURCE_FILE);
        uint16_t port = 0;
        struct http_srv srv = {.status = 200};
        int lfd = listener(&port);
        loop_io_init(&srv.lio, lfd, srv_accept, &srv);
        assert_int_equal(loop_io_add(loop, &srv.lio, EPOLLIN), 0);
        struct disc_endpoint_spec eps[1];
        ep(&eps[0], port);
        struct disc_service_spec s;
        service(&s, "web", DISC_HC_HTTP, "/healthz", eps, 1);
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        struct disc_checker *h = disc_health_start(r, loop, 0);
        assert_non_null(h);

        run_until(loop, r, "web", A(port), DISC_HEALTH_HEALTHY, 300);
        assert_string_equal(srv.last_path, "/healthz");
        assert_string_equal(srv.last_host, "web");
        srv.status = 500;
        unsigned t = run_until(loop, r, "web", A(port), DISC_HEALTH_UNHEALTHY, 300);
        assert_true(t <= 10 + 5 + 5);
        srv.status = 302; /* a redirect passes */
        run_until(loop, r, "web", A(port), DISC_HEALTH_HEALTHY, 300);
        srv.status = 0; /* junk, no status line, then close */
        run_until(loop, r, "web", A(port), DISC_HEALTH_UNHEALTHY, 300);
        srv.status = 204;
        run_until(loop, r, "web", A(port), DISC_HEALTH_HEALTHY, 300);
        srv.status = -1; /* a 200 status line over a malformed head: not a pass */
        run_until(loop, r, "web", A(port), DISC_HEALTH_UNHEALTHY, 300);
        srv.status = 204;
        run_until(loop, r, "web", A(port), DISC_HEALTH_HEALTHY, 300);
        assert_true(srv.requests >= 5);

        disc_health_stop(h);
        loop_io_del(loop, &srv.lio);
        close(lfd);
        disc_registry_free(r);
        loop_free(loop);
}

static void test_follows_registry(void **state)
{
        (void)state;
        struct loop *loop = loop_new();
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "test", DISC_SOURCE_FILE);
        uint16_t p1 = 0, p2 = 0, p3 = 0;
        int l1 = listener(&p1), l2 = listener(&p2);
        int d3 = dead_port(&p3);
        struct disc_endpoint_spec eps[3];
        ep(&eps[0], p1);
        struct disc_service_spec s;
        service(&s, "svc", DISC_HC_TCP, NULL, eps, 1);
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        struct disc_checker *h = disc_health_start(r, loop, 0);
        run_until(loop, r, "svc", A(p1), DISC_HEALTH_HEALTHY, 300);

        /* two endpoints added (one alive, one dead): both checked */
        ep(&eps[1], p2);
        ep(&eps[2], p3);
        assert_int_equal(disc_registry_set_endpoints(r, src, "default", "svc", eps, 3), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        run_until(loop, r, "svc", A(p2), DISC_HEALTH_HEALTHY, 300);
        run_until(loop, r, "svc", A(p3), DISC_HEALTH_UNHEALTHY, 300);
        struct disc_health_stats st;
        disc_health_get_stats(h, &st);
        assert_int_equal(st.targets, 3);

        /* the dead one is removed: no longer checked */
        assert_int_equal(disc_registry_set_endpoints(r, src, "default", "svc", eps, 2), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        run_until(loop, r, "svc", A(p3), DISC_HEALTH__COUNT, 300);
        run_ticks(loop, r, 10); /* the checker sees the new version, a probe may end */
        disc_health_get_stats(h, &st);
        assert_int_equal(st.targets, 2);
        uint64_t failed = st.failed, probes = st.probes;
        /* several intervals: the removed dead endpoint is not probed any more */
        run_ticks(loop, r, 50);
        disc_health_get_stats(h, &st);
        assert_int_equal(st.failed, failed);
        assert_true(st.probes > probes);
        close(l1);
        run_until(loop, r, "svc", A(p1), DISC_HEALTH_UNHEALTHY, 300);

        /* a service whose check is turned off is not checked */
        service(&s, "svc", DISC_HC_NONE, NULL, eps, 2);
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        run_until(loop, r, "svc", A(p1), DISC_HEALTH_UNKNOWN, 300);

        disc_health_stop(h);
        close(l2);
        close(d3);
        disc_registry_free(r);
        loop_free(loop);
}

/* More due probes than the in-flight bound: at most
 * DISC_HEALTH_MAX_INFLIGHT run at once, the rest are shed (counted) and run
 * later. 300 endpoints (distinct loopback addresses) point at a listener
 * that never accepts, so every HTTP probe waits for its timeout. */
static void test_inflight_bound(void **state)
{
        (void)state;
        enum { N = 300 };
        struct loop *loop = loop_new();
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "test", DISC_SOURCE_FILE);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET};
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(fd, 1024), 0);
        socklen_t l = sizeof(sa);
        getsockname(fd, (struct sockaddr *)&sa, &l);
        uint16_t port = ntohs(sa.sin_port);
        struct disc_endpoint_spec *eps = calloc(N, sizeof(*eps));
        for (int i = 0; i < N; i++) {
                char ip[32];
                snprintf(ip, sizeof(ip), "127.0.%d.%d", 1 + i / 200, 1 + i % 200);
                assert_int_equal(disc_addr_parse(ip, port, &eps[i].addr), 0);
                eps[i].weight = 1;
        }
        struct disc_service_spec s;
        service(&s, "many", DISC_HC_HTTP, "/h", eps, N);
        s.hc.interval_ms = 3000;
        s.hc.timeout_ms = 1000;
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        struct disc_checker *h = disc_health_start(r, loop, 0);
        struct disc_health_stats st;
        run_ticks(loop, r, 8); /* < the timeout: nothing has finished */
        disc_health_get_stats(h, &st);
        assert_int_equal(st.targets, N);
        assert_int_equal(st.in_flight, DISC_HEALTH_MAX_INFLIGHT);
        assert_int_equal(st.probes, DISC_HEALTH_MAX_INFLIGHT);
        assert_true(st.shed >= N - DISC_HEALTH_MAX_INFLIGHT);
        /* after the timeouts the shed ones run */
        run_ticks(loop, r, 150);
        disc_health_get_stats(h, &st);
        assert_true(st.probes >= N);
        assert_true(st.failed >= DISC_HEALTH_MAX_INFLIGHT);
        assert_true(st.in_flight <= DISC_HEALTH_MAX_INFLIGHT);
        disc_health_stop(h);
        close(fd);
        free(eps);
        disc_registry_free(r);
        loop_free(loop);
}

int main(void)
{
        log_set_level(LOG_WARN);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_tcp_listener_goes_away),
            cmocka_unit_test(test_http_status),
            cmocka_unit_test(test_follows_registry),
            cmocka_unit_test(test_inflight_bound),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

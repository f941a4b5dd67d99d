// SPDX-License-Identifier: Apache-2.0
/* The relayed connection's state machine (relay.c, states-int.h) and route
 * admission through it, without namespaces: the client is a loopback TCP
 * connection the test opens, relay_accept gets its accepted end, and the
 * kernel's original-destination lookup is faked at its edge (origdst_get is
 * wrapped at link time, tests/CMakeLists.txt): the test says where each
 * connection was going. The application is a loopback listener of the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "discovery/registry.h"
#include "intercept/origdst.h"
#include "proxy/states-int.h"
#include "proxy_harness.h"
#include "route/route.h"

/* The fake: every connection was going to fake_dst. */
static struct sockaddr_storage fake_dst;

enum origdst_result __wrap_origdst_get(int fd, const struct sockaddr_storage *local,
                                       const struct sockaddr_storage *peer,
                                       struct sockaddr_storage *out);
enum origdst_result __wrap_origdst_get(int fd, const struct sockaddr_storage *local,
                                       const struct sockaddr_storage *peer,
                                       struct sockaddr_storage *out)
{
        (void)fd;
        (void)local;
        (void)peer;
        *out = fake_dst;
        return ORIGDST_OK;
}

struct t {
        struct harness h;
        int front; /* where the test's clients connect */
        struct sockaddr_storage front_addr;
        int lfd; /* the application */
        struct sockaddr_storage app_addr;
        struct sink cli, app;
        int accepted;
        struct strbuf sb;
        struct disc_registry *reg;
};

static int setup(void **state)
{
        struct t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        harness_init(&t->h);
        t->h.cfg->protocol_detection_timeout_ms = 20;
        t->front = app_listen(&t->front_addr);
        t->lfd = app_listen(&t->app_addr);
        t->cli.fd = t->app.fd = -1;
        strbuf_init(&t->sb);
        fake_dst = t->app_addr;
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        struct t *t = *state;
        harness_free(&t->h);
        if (t->reg)
                disc_registry_free(t->reg);
        if (t->cli.fd >= 0)
                close(t->cli.fd);
        if (t->app.fd >= 0)
                close(t->app.fd);
        close(t->front);
        close(t->lfd);
        strbuf_free(&t->sb);
        free(t);
        return 0;
}

/* A client connection through the relay, as a listener of direction dir
 * accepted it. */
static void client_connect(struct t *t, enum conn_dir dir)
{
        int c = harness_relay_connect(&t->h, t->front, &t->front_addr, dir);
        if (t->cli.fd >= 0)
                close(t->cli.fd);
        memset(&t->cli, 0, sizeof(t->cli));
        t->cli.fd = c;
}

static void render(struct t *t)
{
        harness_render(&t->h, NULL, &t->sb);
}

static void assert_state(struct t *t, const char *want)
{
        harness_assert_state(&t->h, NULL, &t->sb, want);
}

static bool app_accept(void *arg)
{
        struct t *t = arg;
        int fd = accept4(t->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
                if (t->app.fd >= 0)
                        close(t->app.fd);
                memset(&t->app, 0, sizeof(t->app));
                t->app.fd = fd;
                t->accepted++;
        }
        return t->app.fd >= 0;
}

static bool state_is(struct t *t, const char *want)
{
        render(t);
        char needle[64];
        snprintf(needle, sizeof(needle), "\"state\":\"%s\"", want);
        return t->sb.data && strstr(t->sb.data, needle);
}

static bool sniffing(void *arg)
{
        struct t *t = arg;
        app_accept(t);
        return t->app.fd >= 0 && state_is(t, "sniffing");
}

static bool app_has_ping(void *arg)
{
        struct t *t = arg;
        app_accept(t);
        if (t->app.fd < 0)
                return false;
        sink_read(&t->app);
        return strstr(t->app.buf, "ping") != NULL;
}

static bool app_has_get(void *arg)
{
        struct t *t = arg;
        app_accept(t);
        if (t->app.fd < 0)
                return false;
        sink_read(&t->app);
        return strstr(t->app.buf, "\r\n\r\n") != NULL;
}

static bool cli_has_pong(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return strstr(t->cli.buf, "pong") != NULL;
}

static bool app_eof(void *arg)
{
        struct t *t = arg;
        sink_read(&t->app);
        return t->app.eof;
}

static bool cli_eof(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return t->cli.eof;
}

static bool half_closed(void *arg)
{
        return state_is(arg, "half_closed");
}

static bool no_conn(void *arg)
{
        struct t *t = arg;
        render(t);
        return t->sb.len == 0;
}

static void test_transition_table(void **state)
{
        (void)state;
        static const struct {
                enum conn_state from, to;
                bool ok;
        } cases[] = {
            {CONN_PEEKING, CONN_TLS_ACCEPT, true},     {CONN_PEEKING, CONN_CONNECTING, true},
            {CONN_TLS_ACCEPT, CONN_TLS_SNIFF, true},   {CONN_TLS_SNIFF, CONN_CONNECTING, true},
            {CONN_CONNECTING, CONN_CONNECTING, true},  {CONN_CONNECTING, CONN_HANDSHAKE, true},
            {CONN_CONNECTING, CONN_SNIFFING, true},    {CONN_CONNECTING, CONN_RELAYING, true},
            {CONN_HANDSHAKE, CONN_RELAYING, true},     {CONN_SNIFFING, CONN_RELAYING, true},
            {CONN_RELAYING, CONN_HALF_CLOSED, true},   {CONN_HALF_CLOSED, CONN_CLOSED, true},
            {CONN_PEEKING, CONN_RELAYING, false},      {CONN_PEEKING, CONN_TLS_SNIFF, false},
            {CONN_TLS_ACCEPT, CONN_CONNECTING, false}, {CONN_TLS_SNIFF, CONN_RELAYING, false},
            {CONN_HANDSHAKE, CONN_CONNECTING, false},  {CONN_SNIFFING, CONN_CONNECTING, false},
            {CONN_RELAYING, CONN_SNIFFING, false},     {CONN_RELAYING, CONN_CONNECTING, false},
            {CONN_HALF_CLOSED, CONN_RELAYING, false},  {CONN_CLOSED, CONN_CONNECTING, false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                if (conn_transition_ok(cases[i].from, cases[i].to) != cases[i].ok)
                        fail_msg("%s -> %s: want %s", conn_state_name(cases[i].from),
                                 conn_state_name(cases[i].to), cases[i].ok ? "legal" : "illegal");
        for (int s = 0; s < CONN__COUNT; s++)
                assert_int_equal(conn_transition_ok((enum conn_state)s, CONN_CLOSED),
                                 s != CONN_CLOSED);
}

/* Outbound: CONNECTING -> SNIFFING (connected, the client silent) ->
 * RELAYING (the client's first bytes: TCP) -> HALF_CLOSED (the client's
 * FIN) -> CLOSED (the application's): a clean end, every byte through. */
static void test_relay_and_half_close(void **state)
{
        struct t *t = *state;
        t->h.cfg->protocol_detection_timeout_ms = 60000; /* seen sniffing, however slow */
        client_connect(t, DIR_OUTBOUND);
        run_until(&t->h, sniffing, t, "connected, sniffing");
        send_all(t->cli.fd, "\x01ping"); /* no protocol starts so: TCP at once */
        run_until(&t->h, app_has_ping, t, "the client's bytes at the application");
        assert_state(t, "relaying");
        assert_int_equal(harness_stat(&t->h, ST_PROTO_FIRST + PROTO_TCP), 1);
        send_all(t->app.fd, "pong");
        run_until(&t->h, cli_has_pong, t, "the application's bytes at the client");
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, app_eof, t, "the client's FIN at the application");
        run_until(&t->h, half_closed, t, "half closed");
        send_all(t->app.fd, "late");
        shutdown(t->app.fd, SHUT_WR);
        run_until(&t->h, cli_eof, t, "the application's bytes and FIN at the client");
        assert_non_null(strstr(t->cli.buf, "pong"));
        assert_non_null(strstr(t->cli.buf, "late"));
        assert_false(t->cli.reset);
        run_until(&t->h, no_conn, t, "the connection to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(harness_stat(&t->h, ST_ACTIVE_OUT), 0);
        assert_int_equal(atomic_load(&t->h.p->active), 0);
}

static bool peeking(void *arg)
{
        return state_is(arg, "peeking");
}

/* Inbound, whatever mtls.mode: PEEKING until the client's first bytes say
 * what they are (an HTTP client's requests would go to an engine), and only
 * then is the application connected: CONNECTING -> RELAYING. */
static void test_inbound_connects_after_first_bytes(void **state)
{
        struct t *t = *state;
        t->h.cfg->protocol_detection_timeout_ms = 60000;
        client_connect(t, DIR_INBOUND);
        run_until(&t->h, peeking, t, "peeking at the client's first bytes");
        assert_false(app_accept(t));
        assert_int_equal(t->accepted, 0);
        send_all(t->cli.fd, "\x01ping"); /* no protocol starts so: TCP at once */
        run_until(&t->h, app_has_ping, t, "the client's bytes at the application");
        assert_state(t, "relaying");
        assert_int_equal(t->accepted, 1);
        assert_int_equal(harness_stat(&t->h, ST_PROTO_FIRST + PROTO_TCP), 1);
        send_all(t->app.fd, "pong");
        run_until(&t->h, cli_has_pong, t, "the application's bytes at the client");
}

/* Outbound to an address no service has: relayed as it is (passthrough),
 * an HTTP request sent at once. */
static void test_outbound_passthrough(void **state)
{
        struct t *t = *state;
        client_connect(t, DIR_OUTBOUND);
        send_all(t->cli.fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        run_until(&t->h, app_has_get, t, "the request at the application");
        assert_state(t, "relaying");
        assert_int_equal(harness_stat(&t->h, ST_ROUTE_PASSTHROUGH), 1);
        send_all(t->app.fd, "pong");
        run_until(&t->h, cli_has_pong, t, "the answer at the client");
}

/* Nothing listens there: CONNECTING -> CLOSED, the client reset. */
static void test_connect_refused(void **state)
{
        struct t *t = *state;
        dead_port(&fake_dst);
        client_connect(t, DIR_INBOUND);
        run_until(&t->h, cli_eof, t, "the client reset");
        assert_true(t->cli.reset);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_CONNECT_REFUSED), 1);
        assert_true(no_conn(t));
}

/* The application resets mid-stream: RELAYING -> CLOSED, and the client
 * sees a reset, not a clean end. */
static void test_upstream_reset(void **state)
{
        struct t *t = *state;
        client_connect(t, DIR_INBOUND);
        send_all(t->cli.fd, "ping");
        run_until(&t->h, app_has_ping, t, "the client's bytes at the application");
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        assert_int_equal(setsockopt(t->app.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
        close(t->app.fd);
        t->app.fd = -1;
        run_until(&t->h, cli_eof, t, "the client reset");
        assert_true(t->cli.reset);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_UPSTREAM_RESET), 1);
}

/* Quiet for timeouts.idle_timeout: RELAYING -> CLOSED. */
static void test_idle_timeout(void **state)
{
        struct t *t = *state;
        t->h.cfg->idle_timeout_ms = 50;
        client_connect(t, DIR_INBOUND);
        send_all(t->cli.fd, "ping");
        run_until(&t->h, app_has_ping, t, "the client's bytes at the application");
        run_until(&t->h, no_conn, t, "the idle timeout");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_IDLE_TIMEOUT), 1);
}

/* ---- route admission, through outbound connections ---------------------------- */

/* Service web at 10.96.0.1:80 with two endpoints on loopback, on the
 * application's port: 127.0.0.2 (dead: nothing listens there) and the
 * test's application on 127.0.0.1. */
static void publish_web(struct t *t, struct sockaddr_storage *dead)
{
        *dead = t->app_addr;
        ((struct sockaddr_in *)dead)->sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1);
        struct sockaddr_storage eps_sa[2] = {*dead, t->app_addr};
        struct disc_endpoint_spec eps[2];
        memset(eps, 0, sizeof(eps));
        for (int i = 0; i < 2; i++) {
                assert_int_equal(disc_addr_from_sockaddr(&eps_sa[i], &eps[i].addr), 0);
                eps[i].weight = 1;
                eps[i].health = DISC_HEALTH_HEALTHY;
        }
        struct disc_service_spec s;
        disc_service_spec_init(&s);
        snprintf(s.name, sizeof(s.name), "web");
        assert_int_equal(disc_addr_parse("10.96.0.1", 0, &s.vips[0]), 0);
        s.n_vips = 1;
        s.ports[0].port = 80;
        s.ports[0].target_port = ntohs(((struct sockaddr_in *)&t->app_addr)->sin_port);
        s.n_ports = 1;
        s.endpoints = eps;
        s.n_endpoints = 2;
        t->reg = disc_registry_new(NULL);
        assert_non_null(t->reg);
        int src = disc_source_add(t->reg, "file", DISC_SOURCE_FILE);
        assert_int_equal(disc_registry_replace(t->reg, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(t->reg), 0);
        const struct disc_snapshot *snap = disc_registry_acquire(t->reg);
        proxy_set_registry(t->h.p, snap);
        disc_snapshot_release(snap);
        assert_non_null(t->h.p->routes);
        struct disc_addr vip;
        assert_int_equal(disc_addr_parse("10.96.0.1", 80, &vip), 0);
        disc_addr_to_sockaddr(&vip, &fake_dst);
}

/* One outbound connection to web: it must reach the application. */
static void outbound_reaches_app(struct t *t)
{
        int before = t->accepted;
        client_connect(t, DIR_OUTBOUND);
        send_all(t->cli.fd, "ping");
        run_until(&t->h, app_has_ping, t, "the client's bytes at the application");
        assert_int_equal(t->accepted, before + 1);
        assert_state(t, "relaying");
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, app_eof, t, "the client's FIN at the application");
        close(t->app.fd);
        t->app.fd = -1;
        run_until(&t->h, cli_eof, t, "the application's FIN at the client");
        run_until(&t->h, no_conn, t, "the connection to end");
}

/* A refused endpoint: the connect is retried on the other one (CONNECTING
 * -> CONNECTING after the backoff), never surfacing to the client. */
static void test_connect_retried_on_another_endpoint(void **state)
{
        struct t *t = *state;
        struct sockaddr_storage dead;
        publish_web(t, &dead);
        for (int i = 0; i < 4; i++)
                outbound_reaches_app(t);
        assert_int_equal(harness_stat(&t->h, ST_ROUTE_SERVICE), 4);
        /* Round robin over two: at least one pick landed on the dead one. */
        assert_true(harness_stat(&t->h, ST_CONNECT_RETRIES) >= 1);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_CONNECT_REFUSED), 0);
}

/* Admission: an endpoint whose breaker is held open is not picked; with
 * both open, nothing is admitted and the client is refused. */
static void test_open_breaker_not_admitted(void **state)
{
        struct t *t = *state;
        struct sockaddr_storage dead;
        publish_web(t, &dead);
        assert_int_equal(proxy_force_open(t->h.p, "web", &dead, true), 0);
        for (int i = 0; i < 3; i++)
                outbound_reaches_app(t);
        assert_int_equal(harness_stat(&t->h, ST_CONNECT_RETRIES), 0);
        assert_int_equal(proxy_force_open(t->h.p, "web", &t->app_addr, true), 0);
        client_connect(t, DIR_OUTBOUND);
        run_until(&t->h, cli_eof, t, "the refusal");
        assert_true(t->cli.reset);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_NO_ENDPOINT), 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_transition_table),
            cmocka_unit_test_setup_teardown(test_relay_and_half_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_inbound_connects_after_first_bytes, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_outbound_passthrough, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_upstream_reset, setup, teardown),
            cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connect_retried_on_another_endpoint, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_open_breaker_not_admitted, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

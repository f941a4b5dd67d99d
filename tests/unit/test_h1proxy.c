// SPDX-License-Identifier: Apache-2.0
/* The HTTP/1.1 session's state machine (h1proxy.c, states-int.h), driven
 * through the engine without namespaces: the client is a socketpair, the
 * application a loopback listener the test answers by hand, the worker's
 * loop runs in the test (proxy_harness.h). Each test walks one path of the
 * transition table and checks the state /connections shows at each step,
 * the bytes both ends saw, and the counters; the upstream pool's reuse is
 * checked on the way. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "proxy/states-int.h"
#include "proxy_harness.h"

struct app {
        int lfd;
        struct sockaddr_storage addr;
        int accepted;
        struct sink in; /* what the application received, on its latest connection */
};

struct t {
        struct harness h;
        struct app app;
        struct sink cli; /* what the client received */
        struct strbuf sb;
};

static void app_accept(struct app *a)
{
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
                return;
        if (a->in.fd >= 0)
                close(a->in.fd);
        a->in.fd = fd;
        a->in.len = 0;
        a->in.eof = a->in.reset = false;
        a->accepted++;
}

static bool app_has_head(void *arg)
{
        struct t *t = arg;
        app_accept(&t->app);
        if (t->app.in.fd < 0)
                return false;
        sink_read(&t->app.in);
        return strstr(t->app.in.buf, "\r\n\r\n") != NULL;
}

static bool app_eof(void *arg)
{
        struct t *t = arg;
        sink_read(&t->app.in);
        return t->app.in.eof;
}

static bool cli_has(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return strstr(t->cli.buf, "\r\n\r\n") != NULL && strstr(t->cli.buf, "hello") != NULL;
}

static bool cli_has_head(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return strstr(t->cli.buf, "\r\n\r\n") != NULL;
}

static bool cli_eof(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return t->cli.eof;
}

static bool no_session(void *arg)
{
        struct t *t = arg;
        harness_render(&t->h, &h1_engine, &t->sb);
        return t->sb.len == 0;
}

static int setup(void **state)
{
        struct t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        harness_init(&t->h);
        t->app.lfd = app_listen(&t->app.addr);
        t->app.in.fd = -1;
        t->cli.fd = -1;
        strbuf_init(&t->sb);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        struct t *t = *state;
        harness_free(&t->h);
        if (t->cli.fd >= 0)
                close(t->cli.fd);
        if (t->app.in.fd >= 0)
                close(t->app.in.fd);
        close(t->app.lfd);
        strbuf_free(&t->sb);
        free(t);
        return 0;
}

/* The state /connections shows for the one session. */
static void assert_state(struct t *t, const char *want)
{
        harness_assert_state(&t->h, &h1_engine, &t->sb, want);
}

static void start(struct t *t, const struct sockaddr_storage *app, const char *first)
{
        t->cli.fd = harness_handoff(&t->h, &h1_engine, PROTO_HTTP1, DIR_INBOUND, app, first,
                                    first ? (uint32_t)strlen(first) : 0);
}

static const char RESP[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/* Every legal transition of the table, and the ones that must not be. */
static void test_transition_table(void **state)
{
        (void)state;
        static const struct {
                enum h1_state from, to;
                bool ok;
        } cases[] = {
            {H1_IDLE, H1_HEAD, true},       {H1_HEAD, H1_AWAIT, true},
            {H1_AWAIT, H1_STREAM, true},    {H1_STREAM, H1_IDLE, true},
            {H1_STREAM, H1_HEAD, true},     {H1_STREAM, H1_CLOSING, true},
            {H1_AWAIT, H1_TUNNEL, true},    {H1_AWAIT, H1_BACKOFF, true},
            {H1_AWAIT, H1_AWAIT, true},     {H1_BACKOFF, H1_AWAIT, true},
            {H1_HEAD, H1_CLOSING, true},    {H1_CLOSING, H1_LINGER, true},
            {H1_HEAD, H1_DELAY, true},      {H1_DELAY, H1_AWAIT, true},
            {H1_DELAY, H1_CLOSING, true},   {H1_DELAY, H1_STREAM, false},
            {H1_AWAIT, H1_DELAY, false},    {H1_LINGER, H1_CLOSED, true},
            {H1_TUNNEL, H1_CLOSED, true},   {H1_IDLE, H1_STREAM, false},
            {H1_IDLE, H1_CLOSING, false},   {H1_HEAD, H1_STREAM, false},
            {H1_STREAM, H1_AWAIT, false},   {H1_STREAM, H1_TUNNEL, false},
            {H1_BACKOFF, H1_STREAM, false}, {H1_CLOSING, H1_IDLE, false},
            {H1_LINGER, H1_CLOSING, false}, {H1_TUNNEL, H1_IDLE, false},
            {H1_CLOSED, H1_IDLE, false},    {H1_CLOSED, H1_CLOSED, false},
            {H1__COUNT, H1_IDLE, false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                if (h1_transition_ok(cases[i].from, cases[i].to) != cases[i].ok)
                        fail_msg("%s -> %s: want %s", h1_state_name(cases[i].from),
                                 h1_state_name(cases[i].to), cases[i].ok ? "legal" : "illegal");
        /* Every state but CLOSED can end, CLOSED is final. */
        for (int s = 0; s < H1__COUNT; s++)
                assert_int_equal(h1_transition_ok((enum h1_state)s, H1_CLOSED), s != H1_CLOSED);
}

/* IDLE -> HEAD -> AWAIT -> STREAM -> IDLE, twice on one client connection
 * and one pooled upstream connection, then the client's FIN: CLOSED. */
static void test_keep_alive(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr, NULL);
        assert_state(t, "idle");
        for (int i = 0; i < 2; i++) {
                send_all(t->cli.fd, "GET /a HTTP/1.1\r\nHost: app\r\n\r\n");
                run_until(&t->h, app_has_head, t, "the request at the application");
                assert_non_null(strstr(t->app.in.buf, "GET /a HTTP/1.1\r\n"));
                assert_state(t, "awaiting_response");
                sink_consume(&t->app.in, t->app.in.len);
                send_all(t->app.in.fd, RESP);
                run_until(&t->h, cli_has, t, "the response at the client");
                assert_non_null(strstr(t->cli.buf, "HTTP/1.1 200 OK\r\n"));
                assert_false(t->cli.eof);
                sink_consume(&t->cli, t->cli.len);
                assert_state(t, "idle");
        }
        assert_int_equal(t->app.accepted, 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_OPENED), 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_REUSED), 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_IDLE), 1);
        assert_int_equal(harness_stat(&t->h, ST_HTTP_STATUS_FIRST + 1), 2);
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(harness_stat(&t->h, ST_HTTP_ABORTED), 0);
        assert_int_equal(harness_stat(&t->h, ST_ACTIVE_IN), 0);
}

/* A second request already buffered behind the first: STREAM -> HEAD, and
 * it is answered in order. */
static void test_pipelined(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr,
              "GET /1 HTTP/1.1\r\nHost: app\r\n\r\nGET /2 HTTP/1.1\r\nHost: app\r\n\r\n");
        run_until(&t->h, app_has_head, t, "the first request");
        assert_non_null(strstr(t->app.in.buf, "GET /1 "));
        assert_null(strstr(t->app.in.buf, "GET /2 "));
        sink_consume(&t->app.in, t->app.in.len);
        send_all(t->app.in.fd, RESP);
        run_until(&t->h, app_has_head, t, "the second request");
        assert_non_null(strstr(t->app.in.buf, "GET /2 "));
        assert_state(t, "awaiting_response");
        send_all(t->app.in.fd, RESP);
        run_until(&t->h, cli_has, t, "the responses");
        sink_consume(&t->cli, strlen(RESP));
        run_until(&t->h, cli_has, t, "the second response");
        assert_state(t, "idle");
        assert_int_equal(harness_stat(&t->h, ST_HTTP_STATUS_FIRST + 1), 2);
}

/* Connection: close: STREAM -> CLOSING -> CLOSED at once, nothing of the
 * client left unread: a clean end. */
static void test_connection_close(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        run_until(&t->h, app_has_head, t, "the request");
        /* The body trickles in: the response head went out, the body not yet. */
        send_all(t->app.in.fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel");
        run_until(&t->h, cli_has_head, t, "the response head");
        assert_state(t, "streaming_response");
        send_all(t->app.in.fd, "lo");
        run_until(&t->h, cli_eof, t, "the response and the FIN");
        assert_non_null(strstr(t->cli.buf, "Connection: close\r\n"));
        assert_non_null(strstr(t->cli.buf, "\r\n\r\nhello"));
        assert_false(t->cli.reset);
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(harness_stat(&t->h, ST_HTTP_ABORTED), 0);
}

/* Connection: close with client bytes left unread: STREAM -> CLOSING ->
 * (FIN) LINGER, and CLOSED once the client closes too. */
static void test_linger(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr,
              "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\nGET /late HTTP/1.1\r\n");
        run_until(&t->h, app_has_head, t, "the request");
        send_all(t->app.in.fd, RESP);
        run_until(&t->h, cli_eof, t, "the response and the FIN");
        assert_non_null(strstr(t->cli.buf, "hello"));
        assert_state(t, "closing");
        send_all(t->cli.fd, "Host: app\r\n\r\n"); /* read and dropped */
        assert_state(t, "closing");
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(t->app.accepted, 1);
}

/* A head the parser refuses: HEAD -> CLOSING with our 400, then FIN. */
static void test_bad_head(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr, "GET / HTTP/1.1\r\nHost: app\r\nBad Header\r\n\r\n");
        run_until(&t->h, cli_eof, t, "the 400 and the FIN");
        assert_non_null(strstr(t->cli.buf, "HTTP/1.1 400 "));
        assert_int_equal(t->app.accepted, 0);
        assert_int_equal(harness_stat(&t->h, ST_HTTP_LOCAL_FIRST + HTTP_LOCAL_400), 1);
        assert_state(t, "closing");
        close(t->cli.fd);
        t->cli.fd = -1;
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_HTTP_ABORTED), 0);
}

/* Nothing listens at the application's address: AWAIT -> CLOSING with our
 * 503 (inbound has no other endpoint to retry on). */
static void test_connect_refused(void **state)
{
        struct t *t = *state;
        struct sockaddr_storage dead;
        dead_port(&dead);
        start(t, &dead, "GET / HTTP/1.1\r\nHost: app\r\n\r\n");
        run_until(&t->h, cli_eof, t, "the 503 and the FIN");
        assert_non_null(strstr(t->cli.buf, "HTTP/1.1 503 "));
        assert_int_equal(harness_stat(&t->h, ST_HTTP_LOCAL_FIRST + HTTP_LOCAL_503), 1);
        assert_state(t, "closing");
}

/* No response head within timeouts.request: AWAIT -> CLOSING with our 504. */
static void test_request_timeout(void **state)
{
        struct t *t = *state;
        t->h.cfg->request_timeout_ms = 20;
        start(t, &t->app.addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n");
        run_until(&t->h, app_has_head, t, "the request");
        assert_state(t, "awaiting_response");
        run_until(&t->h, cli_eof, t, "the 504 and the FIN");
        assert_non_null(strstr(t->cli.buf, "HTTP/1.1 504 "));
        assert_int_equal(harness_stat(&t->h, ST_HTTP_LOCAL_FIRST + HTTP_LOCAL_504), 1);
        /* The upstream connection is closed, not pooled. */
        run_until(&t->h, app_eof, t, "the upstream connection closed");
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_IDLE), 0);
}

/* The client leaves with the request in flight: AWAIT -> CLOSED, counted
 * as aborted. */
static void test_client_leaves_mid_request(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr, "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\n12345");
        run_until(&t->h, app_has_head, t, "the request");
        assert_state(t, "awaiting_response");
        close(t->cli.fd);
        t->cli.fd = -1;
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_HTTP_ABORTED), 1);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_CLIENT_RESET), 1);
        run_until(&t->h, app_eof, t, "the upstream connection closed");
}

static bool app_has_tunnel_bytes(void *arg)
{
        struct t *t = arg;
        sink_read(&t->app.in);
        return strstr(t->app.in.buf, "hello from client") != NULL;
}

static bool cli_has_tunnel_bytes(void *arg)
{
        struct t *t = arg;
        sink_read(&t->cli);
        return strstr(t->cli.buf, "from-app") != NULL;
}

/* An Upgrade answered with 101: AWAIT -> TUNNEL, bytes both ways, CLOSED
 * once both directions closed. */
static void test_tunnel_both_ways(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr,
              "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        run_until(&t->h, app_has_head, t, "the request");
        sink_consume(&t->app.in, t->app.in.len);
        send_all(t->app.in.fd, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                               "Upgrade: websocket\r\n\r\nfrom-app");
        run_until(&t->h, cli_has_tunnel_bytes, t, "the 101 and the application's bytes");
        assert_state(t, "tunnel");
        send_all(t->cli.fd, "hello from client");
        run_until(&t->h, app_has_tunnel_bytes, t, "the client's bytes at the application");
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, app_eof, t, "the client's FIN at the application");
        assert_state(t, "tunnel"); /* half-closed: the other way still flows */
        shutdown(t->app.in.fd, SHUT_WR);
        run_until(&t->h, cli_eof, t, "the application's FIN at the client");
        run_until(&t->h, no_session, t, "the session to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(harness_stat(&t->h, ST_HTTP_STATUS_FIRST + 0), 1);
}

/* Drain: an idle session ends at once, a busy one after its response. */
static void test_drain(void **state)
{
        struct t *t = *state;
        start(t, &t->app.addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n");
        int idle =
            harness_handoff(&t->h, &h1_engine, PROTO_HTTP1, DIR_INBOUND, &t->app.addr, NULL, 0);
        run_until(&t->h, app_has_head, t, "the request");
        h1_engine.drain(t->h.w);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_SHUTDOWN), 1);
        assert_state(t, "awaiting_response");
        send_all(t->app.in.fd, RESP);
        run_until(&t->h, cli_eof, t, "the response and the FIN");
        assert_non_null(strstr(t->cli.buf, "Connection: close\r\n"));
        assert_non_null(strstr(t->cli.buf, "hello"));
        close(idle);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_transition_table),
            cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
            cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connection_close, setup, teardown),
            cmocka_unit_test_setup_teardown(test_linger, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_head, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_request_timeout, setup, teardown),
            cmocka_unit_test_setup_teardown(test_client_leaves_mid_request, setup, teardown),
            cmocka_unit_test_setup_teardown(test_tunnel_both_ways, setup, teardown),
            cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

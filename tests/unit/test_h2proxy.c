// SPDX-License-Identifier: Apache-2.0
/* The HTTP/2 client connection's and upstream session's state machines
 * (h2proxy.c, states-int.h), driven through the engine without namespaces:
 * the client is an nghttp2 client session of the test on a socketpair, the
 * application an nghttp2 server session of the test on a loopback listener
 * (proxy_harness.h runs the worker's loop). */
#include <nghttp2/nghttp2.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "proxy/states-int.h"
#include "proxy_harness.h"

/* One HTTP/2 end the test plays. */
struct peer {
        nghttp2_session *ng;
        int fd;
        bool server; /* answers every request with 200 "hi" */
        bool eof;
        int status;         /* :status of the last response (client) */
        int requests;       /* request streams that ended (server) */
        int closed_streams; /* streams closed */
        int goaway_code;    /* -1: no GOAWAY received */
        bool hold;          /* server: do not answer yet */
        int32_t pending;    /* server: the stream held */
};

struct t {
        struct harness h;
        int lfd;
        struct sockaddr_storage app_addr;
        struct peer cli, app;
        struct strbuf sb;
};

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
        (void)ng;
        (void)f;
        (void)flags;
        (void)vl;
        struct peer *p = ud;
        if (!p->server && nl == 7 && !memcmp(name, ":status", 7))
                p->status = atoi((const char *)value);
        return 0;
}

static void answer(struct peer *p, int32_t sid)
{
        static const nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        };
        assert_int_equal(nghttp2_submit_response(p->ng, sid, nv, 1, NULL), 0);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        (void)ng;
        struct peer *p = ud;
        if (f->hd.type == NGHTTP2_GOAWAY)
                p->goaway_code = (int)f->goaway.error_code;
        if (p->server && (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
            (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
                p->requests++;
                if (p->hold)
                        p->pending = f->hd.stream_id;
                else
                        answer(p, f->hd.stream_id);
        }
        return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t code, void *ud)
{
        (void)ng;
        (void)sid;
        (void)code;
        ((struct peer *)ud)->closed_streams++;
        return 0;
}

static void peer_init(struct peer *p, int fd, bool server)
{
        memset(p, 0, sizeof(*p));
        p->fd = fd;
        p->server = server;
        p->goaway_code = -1;
        nghttp2_session_callbacks *cb;
        assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
        nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
        if (server)
                assert_int_equal(nghttp2_session_server_new(&p->ng, cb, p), 0);
        else
                assert_int_equal(nghttp2_session_client_new(&p->ng, cb, p), 0);
        nghttp2_session_callbacks_del(cb);
        assert_int_equal(nghttp2_submit_settings(p->ng, NGHTTP2_FLAG_NONE, NULL, 0), 0);
}

static void peer_free(struct peer *p)
{
        if (p->ng)
                nghttp2_session_del(p->ng);
        if (p->fd >= 0)
                close(p->fd);
        p->ng = NULL;
        p->fd = -1;
}

/* Sends what the session has, feeds it what arrived. */
static void peer_io(struct peer *p)
{
        if (!p->ng || p->fd < 0)
                return;
        const uint8_t *data;
        ssize_t n;
        while ((n = nghttp2_session_mem_send(p->ng, &data)) > 0)
                if (send(p->fd, data, (size_t)n, MSG_NOSIGNAL) != n)
                        break; /* the proxy closed: seen as EOF below */
        uint8_t buf[16384];
        while (!p->eof) {
                ssize_t k = recv(p->fd, buf, sizeof(buf), 0);
                if (k > 0)
                        nghttp2_session_mem_recv(p->ng, buf, (size_t)k);
                else if (k == 0 || (errno != EAGAIN && errno != EINTR))
                        p->eof = true;
                else
                        break;
        }
        while ((n = nghttp2_session_mem_send(p->ng, &data)) > 0)
                if (send(p->fd, data, (size_t)n, MSG_NOSIGNAL) != n)
                        break;
}

static void app_io(struct t *t)
{
        if (t->app.fd < 0) {
                int fd = accept4(t->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                        return;
                bool hold = t->app.hold;
                peer_init(&t->app, fd, true);
                t->app.hold = hold;
        }
        peer_io(&t->app);
}

static bool got_status(void *arg)
{
        struct t *t = arg;
        app_io(t);
        peer_io(&t->cli);
        return t->cli.status != 0;
}

static bool app_got_request(void *arg)
{
        struct t *t = arg;
        app_io(t);
        peer_io(&t->cli);
        return t->app.requests > 0;
}

static bool cli_goaway(void *arg)
{
        struct t *t = arg;
        app_io(t);
        peer_io(&t->cli);
        return t->cli.goaway_code >= 0;
}

static bool no_conn(void *arg)
{
        struct t *t = arg;
        app_io(t);
        peer_io(&t->cli);
        harness_render(&t->h, &h2_engine, &t->sb);
        return t->sb.len == 0;
}

static bool conn_open(void *arg)
{
        struct t *t = arg;
        peer_io(&t->cli);
        harness_render(&t->h, &h2_engine, &t->sb);
        return t->sb.data && strstr(t->sb.data, "\"state\":\"streams\"");
}

static int setup(void **state)
{
        struct t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        harness_init(&t->h);
        t->lfd = app_listen(&t->app_addr);
        t->cli.fd = t->app.fd = -1;
        strbuf_init(&t->sb);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        struct t *t = *state;
        harness_free(&t->h);
        peer_free(&t->cli);
        peer_free(&t->app);
        close(t->lfd);
        strbuf_free(&t->sb);
        free(t);
        return 0;
}

static void assert_state(struct t *t, const char *want)
{
        harness_assert_state(&t->h, &h2_engine, &t->sb, want);
}

/* A client connection to the application at app (inbound: every stream
 * goes there), with the client's preface and SETTINGS. */
static void connect_client(struct t *t, const struct sockaddr_storage *app)
{
        int fd = harness_handoff(&t->h, &h2_engine, PROTO_HTTP2, DIR_INBOUND, app, NULL, 0);
        peer_init(&t->cli, fd, false);
        run_until(&t->h, conn_open, t, "the connection open");
}

static int32_t get(struct t *t)
{
        static const nghttp2_nv nv[] = {
            {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":authority", (uint8_t *)"app", 10, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":path", (uint8_t *)"/", 5, 1, NGHTTP2_NV_FLAG_NONE},
        };
        t->cli.status = 0;
        int32_t id = nghttp2_submit_request(t->cli.ng, NULL, nv, 4, NULL, NULL);
        assert_true(id > 0);
        return id;
}

static void test_transition_tables(void **state)
{
        (void)state;
        assert_true(h2c_transition_ok(H2C_OPEN, H2C_DRAINING));
        assert_true(h2c_transition_ok(H2C_OPEN, H2C_DEAD));
        assert_true(h2c_transition_ok(H2C_DRAINING, H2C_CLOSED));
        assert_true(h2c_transition_ok(H2C_DEAD, H2C_CLOSED));
        assert_false(h2c_transition_ok(H2C_DRAINING, H2C_OPEN));
        assert_false(h2c_transition_ok(H2C_DEAD, H2C_OPEN));
        assert_false(h2c_transition_ok(H2C_DEAD, H2C_DRAINING));
        assert_false(h2c_transition_ok(H2C_CLOSED, H2C_OPEN));
        assert_false(h2c_transition_ok(H2C_CLOSED, H2C_CLOSED));
        assert_true(h2u_transition_ok(H2U_CONNECTING, H2U_READY));
        assert_true(h2u_transition_ok(H2U_CONNECTING, H2U_HANDSHAKE));
        assert_true(h2u_transition_ok(H2U_HANDSHAKE, H2U_READY));
        assert_true(h2u_transition_ok(H2U_READY, H2U_GOAWAY));
        assert_true(h2u_transition_ok(H2U_CONNECTING, H2U_DEAD));
        assert_false(h2u_transition_ok(H2U_GOAWAY, H2U_READY));
        assert_false(h2u_transition_ok(H2U_READY, H2U_CONNECTING));
        assert_false(h2u_transition_ok(H2U_READY, H2U_DEAD));
        assert_false(h2u_transition_ok(H2U_HANDSHAKE, H2U_GOAWAY));
        assert_false(h2u_transition_ok(H2U_DEAD, H2U_READY));
        assert_false(h2u_transition_ok(H2U_CLOSED, H2U_CONNECTING));
        for (int s = 0; s < H2U__COUNT; s++)
                assert_int_equal(h2u_transition_ok((enum h2u_state)s, H2U_CLOSED), s != H2U_CLOSED);
        for (int s = 0; s < H2C__COUNT; s++)
                assert_int_equal(h2c_transition_ok((enum h2c_state)s, H2C_CLOSED), s != H2C_CLOSED);
}

/* Two streams over one upstream session (CONNECTING -> READY, then reused),
 * then the client's FIN: OPEN -> CLOSED, a clean end. */
static void test_streams_share_a_session(void **state)
{
        struct t *t = *state;
        connect_client(t, &t->app_addr);
        for (int i = 0; i < 2; i++) {
                get(t);
                run_until(&t->h, got_status, t, "the response");
                assert_int_equal(t->cli.status, 200);
        }
        assert_int_equal(harness_stat(&t->h, ST_H2_UP_OPENED), 1);
        assert_int_equal(harness_stat(&t->h, ST_H2_UP_ACTIVE), 1);
        assert_int_equal(harness_stat(&t->h, ST_H2_STREAMS), 2);
        assert_state(t, "streams");
        shutdown(t->cli.fd, SHUT_WR);
        run_until(&t->h, no_conn, t, "the connection to end");
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
        assert_int_equal(harness_stat(&t->h, ST_ACTIVE_IN), 0);
}

/* The application's GOAWAY: READY -> GOAWAY, the next stream opens a new
 * session instead of going on the old one. */
static void test_upstream_goaway(void **state)
{
        struct t *t = *state;
        connect_client(t, &t->app_addr);
        get(t);
        run_until(&t->h, got_status, t, "the first response");
        int old = t->app.fd;
        assert_int_equal(
            nghttp2_submit_goaway(t->app.ng, NGHTTP2_FLAG_NONE, 1, NGHTTP2_NO_ERROR, NULL, 0), 0);
        peer_io(&t->app);
        /* The old session stays the test's to read; a new one is accepted. */
        struct peer first = t->app;
        t->app.fd = -1;
        t->app.ng = NULL;
        get(t);
        run_until(&t->h, got_status, t, "the second response, on a new session");
        assert_int_equal(t->cli.status, 200);
        assert_int_not_equal(t->app.fd, old);
        assert_int_equal(harness_stat(&t->h, ST_H2_UP_OPENED), 2);
        peer_free(&first);
}

/* Nothing listens at the application's address: the upstream session
 * fails (CONNECTING -> CLOSED, or DEAD -> CLOSED), the stream gets 503. */
static void test_upstream_refused(void **state)
{
        struct t *t = *state;
        struct sockaddr_storage dead;
        dead_port(&dead);
        connect_client(t, &dead);
        get(t);
        run_until(&t->h, got_status, t, "the 503");
        assert_int_equal(t->cli.status, 503);
        assert_int_equal(harness_stat(&t->h, ST_H2_UP_FAILED), 1);
        assert_int_equal(harness_stat(&t->h, ST_H2_UP_ACTIVE), 0);
        assert_int_equal(harness_stat(&t->h, ST_H2_REPLY_503), 1);
        assert_state(t, "streams"); /* the client connection goes on */
}

/* Drain with a stream in flight: OPEN -> DRAINING (GOAWAY NO_ERROR), the
 * stream completes, then CLOSED. */
static void test_drain(void **state)
{
        struct t *t = *state;
        t->app.hold = true;
        connect_client(t, &t->app_addr);
        get(t);
        run_until(&t->h, app_got_request, t, "the request at the application");
        h2_engine.drain(t->h.w);
        assert_state(t, "draining");
        run_until(&t->h, cli_goaway, t, "the GOAWAY");
        assert_int_equal(t->cli.goaway_code, NGHTTP2_NO_ERROR);
        assert_state(t, "draining");
        answer(&t->app, t->app.pending);
        run_until(&t->h, no_conn, t, "the connection to end after its stream");
        assert_int_equal(t->cli.status, 200);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_DONE), 1);
}

/* Not HTTP/2 at all: a protocol error, GOAWAY, CLOSED; counted. */
static void test_protocol_error(void **state)
{
        struct t *t = *state;
        static const char junk[] = "GET / HTTP/1.1\r\nHost: app\r\n\r\n";
        int fd = harness_handoff(&t->h, &h2_engine, PROTO_HTTP2, DIR_INBOUND, &t->app_addr, junk,
                                 sizeof(junk) - 1);
        t->cli.fd = fd;
        run_until(&t->h, no_conn, t, "the connection to end");
        assert_int_equal(harness_stat(&t->h, ST_H2_PROTOCOL_ERROR), 1);
        assert_int_equal(harness_stat(&t->h, ST_REASON_FIRST + REASON_CLIENT_RESET), 1);
}

/* A PING flood: GOAWAY ENHANCE_YOUR_CALM, CLOSED; counted as a flood,
 * whatever else went wrong after it. */
static void test_flood(void **state)
{
        struct t *t = *state;
        t->h.cfg->h2_max_control_frames = 10;
        connect_client(t, &t->app_addr);
        for (int i = 0; i < 50; i++)
                assert_int_equal(nghttp2_submit_ping(t->cli.ng, NGHTTP2_FLAG_NONE, NULL), 0);
        run_until(&t->h, no_conn, t, "the connection to end");
        assert_int_equal(harness_stat(&t->h, ST_H2_FLOOD), 1);
        assert_int_equal(harness_stat(&t->h, ST_H2_PROTOCOL_ERROR), 0);
        assert_int_equal(t->cli.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_transition_tables),
            cmocka_unit_test_setup_teardown(test_streams_share_a_session, setup, teardown),
            cmocka_unit_test_setup_teardown(test_upstream_goaway, setup, teardown),
            cmocka_unit_test_setup_teardown(test_upstream_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
            cmocka_unit_test_setup_teardown(test_protocol_error, setup, teardown),
            cmocka_unit_test_setup_teardown(test_flood, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* The request tap (proxy/tap.h): its filter, its JSON line, and a hub
 * served by a real admin server on a loop thread, with this thread as the
 * worker: nothing published without a tap, a full ring drops and counts,
 * max ends the stream with its summary, a client that leaves frees its
 * place, and a fifth tap at once is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin.h"
#include "core/log.h"
#include "core/loop.h"
#include "proxy/tap.h"

static void event(struct tap_event *ev, const char *path, int status)
{
        memset(ev, 0, sizeof(*ev));
        ev->unix_ns = 1700000000123456789ull;
        ev->duration_ns = 2500000;
        ev->status = status;
        ev->grpc_status = -1;
        snprintf(ev->direction, sizeof(ev->direction), "outbound");
        snprintf(ev->protocol, sizeof(ev->protocol), "http1");
        snprintf(ev->method, sizeof(ev->method), "GET");
        snprintf(ev->authority, sizeof(ev->authority), "web");
        snprintf(ev->path, sizeof(ev->path), "%s", path);
        snprintf(ev->source, sizeof(ev->source), "spiffe://td/ns/shop/sa/client");
        snprintf(ev->destination, sizeof(ev->destination), "spiffe://td/ns/shop/sa/web");
        snprintf(ev->service, sizeof(ev->service), "shop/web");
        snprintf(ev->endpoint, sizeof(ev->endpoint), "10.0.0.1:8080");
        snprintf(ev->request_id, sizeof(ev->request_id), "rid-1");
        snprintf(ev->trace_id, sizeof(ev->trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
}

static void test_filter_parse(void **state)
{
        struct tap_filter f;
        char why[200];
        assert_int_equal(tap_filter_parse("", &f, why, sizeof(why)), 0);
        assert_int_equal(f.max, TAP_DEFAULT_MAX);
        assert_int_equal(f.seconds, TAP_DEFAULT_SECONDS);
        assert_int_equal(tap_filter_parse("service=shop%2Fweb&direction=outbound&method=get&"
                                          "path=%2Fa&status=5xx&source=spiffe%3A%2F%2Ftd%2F&"
                                          "max=7&seconds=9&protocol=http1",
                                          &f, why, sizeof(why)),
                         0);
        assert_string_equal(f.service, "shop/web");
        assert_string_equal(f.path, "/a");
        assert_string_equal(f.source, "spiffe://td/");
        assert_int_equal(f.status_class, 5);
        assert_int_equal(f.status, -1);
        assert_int_equal(f.max, 7);
        assert_int_equal(f.seconds, 9);
        assert_int_equal(tap_filter_parse("status=503", &f, why, sizeof(why)), 0);
        assert_int_equal(f.status, 503);
        assert_int_equal(tap_filter_parse("status=none", &f, why, sizeof(why)), 0);
        assert_int_equal(f.status, 0);
        const char *bad[] = {"nope=1",
                             "status=6xx",
                             "status=50",
                             "max=0",
                             "max=100001",
                             "seconds=601",
                             "seconds=-1",
                             "max=1x",
                             "direction=up",
                             "protocol=spdy",
                             "method=" /* too long below */,
                             "&&x=1"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                if (strcmp(bad[i], "method=") == 0)
                        continue;
                why[0] = '\0';
                assert_int_equal(tap_filter_parse(bad[i], &f, why, sizeof(why)), -EINVAL);
                assert_non_null(strstr(why, "tap: "));
        }
        assert_int_equal(
            tap_filter_parse("method=ABCDEFGHIJKLMNOPQRSTUVWXYZ", &f, why, sizeof(why)), -EINVAL);
}

static void test_filter_match(void **state)
{
        struct tap_filter f;
        char why[200];
        struct tap_event ev;
        event(&ev, "/a/b", 503);
        const struct {
                const char *q;
                bool match;
        } cases[] = {
            {"", true},
            {"service=web", true},
            {"service=shop%2Fweb", true},
            {"service=other%2Fweb", false},
            {"service=we", false},
            {"direction=inbound", false},
            {"method=get", true},
            {"method=POST", false},
            {"path=%2Fa", true},
            {"path=%2Fb", false},
            {"status=5xx", true},
            {"status=503", true},
            {"status=500", false},
            {"status=2xx", false},
            {"status=none", false},
            {"source=spiffe%3A%2F%2Ftd%2Fns%2Fshop%2F", true},
            {"source=spiffe%3A%2F%2Ftd%2Fns%2Fother%2F", false},
            {"protocol=http1", true},
            {"protocol=grpc", false},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                assert_int_equal(tap_filter_parse(cases[i].q, &f, why, sizeof(why)), 0);
                if (tap_filter_match(&f, &ev) != cases[i].match)
                        fail_msg("%s: want %d", cases[i].q, cases[i].match);
        }
}

static void test_event_json(void **state)
{
        struct tap_event ev;
        event(&ev, "/q?x=\"1\"", 200);
        ev.grpc_status = 14;
        ev.endpoint[0] = '\0';
        struct strbuf sb;
        strbuf_init(&sb);
        tap_event_json(&ev, &sb);
        assert_int_equal(sb.data[sb.len - 1], '\n');
        cJSON *j = cJSON_ParseWithLength(sb.data, sb.len);
        assert_non_null(j);
        assert_string_equal(cJSON_GetObjectItem(j, "time")->valuestring,
                            "2023-11-14T22:13:20.123456Z");
        assert_string_equal(cJSON_GetObjectItem(j, "path")->valuestring, "/q?x=\"1\"");
        assert_string_equal(cJSON_GetObjectItem(j, "grpc_status")->valuestring, "UNAVAILABLE");
        assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "endpoint")));
        assert_int_equal(cJSON_GetObjectItem(j, "status")->valueint, 200);
        assert_true(cJSON_GetObjectItem(j, "duration_ms")->valuedouble == 2.5);
        assert_string_equal(cJSON_GetObjectItem(j, "service")->valuestring, "shop/web");
        assert_string_equal(cJSON_GetObjectItem(j, "request_id")->valuestring, "rid-1");
        assert_string_equal(cJSON_GetObjectItem(j, "trace_id")->valuestring,
                            "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "span_id"))); /* tracing off here */
        cJSON_Delete(j);
        strbuf_free(&sb);
}

/* ---- a hub behind a real admin server ------------------------------------------- */

static struct loop *g_loop;
static struct admin *g_admin;
static struct tap_hub *g_hub;
static uint16_t g_port;

static void h_tap(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        tap_serve(g_hub, req, resp);
}

static void *loop_main(void *arg)
{
        loop_run(g_loop);
        return NULL;
}

static int tap_open(const char *query)
{
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(g_port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char req[256];
        int n = snprintf(req, sizeof(req), "GET /tap%s HTTP/1.1\r\nHost: x\r\n\r\n", query);
        assert_int_equal(send(fd, req, (size_t)n, 0), n);
        return fd;
}

/* Reads from fd until what appears in what was read (kept in buf). */
static void read_until(int fd, char *buf, size_t cap, size_t *len, const char *what)
{
        while (!strstr(buf, what)) {
                assert_true(*len + 1 < cap);
                ssize_t n = recv(fd, buf + *len, cap - 1 - *len, 0);
                if (n <= 0)
                        fail_msg("connection ended (or 10 s passed) before '%s': %s", what, buf);
                *len += (size_t)n;
                buf[*len] = '\0';
        }
}

static void wait_attached(bool want)
{
        for (int i = 0; i < 1000 && tap_attached(g_hub) != want; i++)
                usleep(10000);
        assert_int_equal(tap_attached(g_hub), want);
}

static size_t count(const char *hay, const char *needle)
{
        size_t n = 0;
        for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
                n++;
        return n;
}

/* GET /tap with query is answered status_line, its error naming what. */
static void refused(const char *query, const char *status_line, const char *what)
{
        char buf[4096] = "";
        size_t len = 0;
        int fd = tap_open(query);
        read_until(fd, buf, sizeof(buf), &len, what);
        assert_non_null(strstr(buf, status_line));
        close(fd);
}

static void test_live(void **state)
{
        struct tap_event ev;
        event(&ev, "/a", 200);
        assert_false(tap_attached(g_hub));
        assert_false(tap_publish(g_hub, 0, &ev)); /* nobody listens: not even copied */

        static char buf[1 << 20];
        size_t len = 0;
        buf[0] = '\0';
        int fd = tap_open("?path=%2Fa&max=3");
        read_until(fd, buf, sizeof(buf), &len, "{\"tap\":{\"max\":3");
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK"));
        assert_non_null(strstr(buf, "Transfer-Encoding: chunked"));
        assert_non_null(strstr(buf, "application/x-ndjson"));
        wait_attached(true);

        /* Fill the ring with requests the filter does not keep: the
         * drainer runs every 20 ms, this thread does not wait for it. */
        struct tap_event other;
        event(&other, "/b", 200);
        bool full = false;
        for (int i = 0; i < 1000000 && !full; i++)
                full = !tap_publish(g_hub, 0, &other);
        assert_true(full);
        for (int sent = 0, tries = 0; sent < 3 && tries < 1000; tries++) {
                if (tap_publish(g_hub, 0, &ev))
                        sent++;
                else
                        usleep(10000);
        }
        read_until(fd, buf, sizeof(buf), &len, "\"end\":\"max\"");
        assert_int_equal(count(buf, "\"path\":\"/a\""), 4); /* the hello's filter too */
        assert_int_equal(count(buf, "{\"time\":"), 3);
        assert_int_equal(count(buf, "\"path\":\"/b\""), 0);
        assert_non_null(strstr(buf, "\"events\":3,\"dropped\":0,\"ring_dropped\":"));
        assert_null(strstr(buf, "\"ring_dropped\":0}"));
        read_until(fd, buf, sizeof(buf), &len, "\r\n0\r\n\r\n");
        close(fd);
        wait_attached(false);

        /* A client that leaves ends its tap. */
        len = 0;
        buf[0] = '\0';
        fd = tap_open("?seconds=600");
        read_until(fd, buf, sizeof(buf), &len, "{\"tap\"");
        wait_attached(true);
        close(fd);
        wait_attached(false);

        /* Four at once; the fifth is refused; the metrics say so. */
        int fds[TAP_MAX_SESSIONS];
        for (int i = 0; i < TAP_MAX_SESSIONS; i++) {
                len = 0;
                buf[0] = '\0';
                fds[i] = tap_open("");
                read_until(fds[i], buf, sizeof(buf), &len, "{\"tap\"");
        }
        refused("", "HTTP/1.1 429", "attached already");
        refused("?bogus=1", "HTTP/1.1 400", "unknown parameter");
        for (int i = 0; i < TAP_MAX_SESSIONS; i++)
                close(fds[i]);
        wait_attached(false);
}

static void stop_loop(void *arg)
{
        loop_stop(g_loop);
}

static void test_render(void **state)
{
        struct strbuf sb;
        strbuf_init(&sb);
        tap_render(g_hub, &sb);
        assert_non_null(strstr(sb.data, "shunt_tap_sessions 0\n"));
        assert_non_null(strstr(sb.data, "shunt_tap_sessions_total{result=\"attached\"} 6\n"));
        assert_non_null(strstr(sb.data, "shunt_tap_sessions_total{result=\"refused\"} 1\n"));
        assert_null(strstr(sb.data, "shunt_tap_dropped_total{reason=\"ring\"} 0\n"));
        strbuf_free(&sb);
}

int main(void)
{
        log_set_level(LOG_WARN);
        g_loop = loop_new();
        char err[256];
        g_admin = admin_new(g_loop, "127.0.0.1", 0, err, sizeof(err));
        g_hub = tap_hub_new(1);
        if (!g_loop || !g_admin || !g_hub)
                return 1;
        g_port = admin_port(g_admin);
        admin_route(g_admin, "GET", "/tap", h_tap, NULL);
        pthread_t t;
        pthread_create(&t, NULL, loop_main, NULL);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_filter_parse), cmocka_unit_test(test_filter_match),
            cmocka_unit_test(test_event_json),   cmocka_unit_test(test_live),
            cmocka_unit_test(test_render),
        };
        int rc = cmocka_run_group_tests(tests, NULL, NULL);
        loop_post(g_loop, stop_loop, NULL);
        pthread_join(t, NULL);
        tap_hub_free(g_hub);
        admin_free(g_admin);
        loop_free(g_loop);
        return rc;
}

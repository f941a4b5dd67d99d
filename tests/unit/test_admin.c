// SPDX-License-Identifier: Apache-2.0
/* Admin HTTP server and shuntctl.
 *
 * Group 1 runs an admin server on 127.0.0.1 (port 0) in an event loop on a
 * thread and drives it with real curl and raw sockets: routing, bodies,
 * every limit (head, body, chunked, timeout, connection count) and that the
 * server keeps serving after each bad input.
 *
 * Group 2 forks a child process serving fixed JSON shaped like shuntd's admin
 * API and runs the real build/shuntctl against it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "admin/admin.h"
#include "core/log.h"
#include "core/loop.h"
#include "require.h"

static struct loop *g_loop;
static struct admin *g_admin;
static pthread_t g_thread;
static uint16_t g_port;

#define BIG_LEN (4u * 1024 * 1024)
/* Requests that change the server carry it (admin_set_token). */
#define TOKEN "0123456789abcdef0123456789abcdef"
#define AUTH  "Authorization: Bearer " TOKEN "\r\n"

static uint64_t now_ms(void)
{
        return clock_mono_ms();
}

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* ---- handlers ----------------------------------------------------------------- */

static void h_hello(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        strbuf_append(&resp->body, "{\"hello\":\"world\"}\n");
}

static void h_echo(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        resp->content_type = "text/plain";
        strbuf_appendn(&resp->body, req->body, req->body_len);
}

static void h_sum(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        uint32_t sum = 0;
        for (size_t i = 0; i < req->body_len; i++)
                sum = sum * 31 + (unsigned char)req->body[i];
        strbuf_appendf(&resp->body, "{\"len\":%zu,\"sum\":%u}", req->body_len, sum);
}

static void h_query(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        char name[64];
        if (admin_query_get(req->query, "name", name, sizeof(name)) < 0) {
                admin_respond_error(resp, 400, "missing query parameter 'name'");
                return;
        }
        strbuf_append(&resp->body, "{\"name\":");
        strbuf_append_json_string(&resp->body, name);
        strbuf_append(&resp->body, "}");
}

static void h_big(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        resp->content_type = "application/octet-stream";
        char chunk[26 * 64];
        for (size_t i = 0; i < sizeof(chunk); i++)
                chunk[i] = (char)('a' + i % 26);
        for (size_t off = 0; off < BIG_LEN; off += sizeof(chunk)) {
                size_t n = BIG_LEN - off < sizeof(chunk) ? BIG_LEN - off : sizeof(chunk);
                strbuf_appendn(&resp->body, chunk, n);
        }
}

static void h_teapot(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        resp->status = 418;
        strbuf_append(&resp->body, "{\"tea\":true}");
}

/* ---- loop thread ---------------------------------------------------------------- */

static void *loop_main(void *arg)
{
        loop_run(g_loop);
        return NULL;
}

static int setup_server(void **state)
{
        log_set_level(LOG_WARN);
        g_loop = loop_new();
        if (!g_loop)
                return -1;
        char err[256];
        g_admin = admin_new(g_loop, "127.0.0.1", 0, err, sizeof(err));
        if (!g_admin) {
                fprintf(stderr, "%s\n", err);
                return -1;
        }
        g_port = admin_port(g_admin);
        if (!g_port || admin_set_token(g_admin, TOKEN) < 0)
                return -1;
        int rc = 0;
        rc |= admin_route(g_admin, "GET", "/hello", h_hello, NULL);
        rc |= admin_route(g_admin, "POST", "/echo", h_echo, NULL);
        rc |= admin_route(g_admin, "POST", "/sum", h_sum, NULL);
        rc |= admin_route(g_admin, "GET", "/query", h_query, NULL);
        rc |= admin_route(g_admin, "GET", "/big", h_big, NULL);
        rc |= admin_route(g_admin, "GET", "/both", h_hello, NULL);
        rc |= admin_route(g_admin, "POST", "/both", h_echo, NULL);
        rc |= admin_route(g_admin, "GET", "/teapot", h_teapot, NULL);
        if (rc)
                return -1;
        return pthread_create(&g_thread, NULL, loop_main, NULL) == 0 ? 0 : -1;
}

static void free_task(void *arg)
{
        admin_free(arg);
}

static int teardown_server(void **state)
{
        loop_call(g_loop, free_task, g_admin, 5000);
        loop_stop(g_loop);
        pthread_join(g_thread, NULL);
        loop_free(g_loop);
        return 0;
}

struct timeout_task {
        struct admin *a;
        unsigned ms;
};

static void set_timeout_task(void *arg)
{
        struct timeout_task *t = arg;
        admin_set_read_timeout_ms(t->a, t->ms);
}

static void set_read_timeout(unsigned ms)
{
        struct timeout_task t = {g_admin, ms};
        assert_int_equal(loop_call(g_loop, set_timeout_task, &t, 5000), 0);
}

/* ---- clients ---------------------------------------------------------------------- */

static int raw_connect_port(uint16_t port)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        return fd;
}

static int raw_connect(void)
{
        return raw_connect_port(g_port);
}

static void send_all(int fd, const char *p, size_t len)
{
        while (len) {
                ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return; /* the server may have answered and closed early */
                p += w;
                len -= (size_t)w;
        }
}

/* Reads until EOF (or error/timeout) into out (NUL-terminated); returns length. */
static size_t read_all(int fd, char *out, size_t outlen)
{
        size_t len = 0;
        while (len + 1 < outlen) {
                ssize_t n = recv(fd, out + len, outlen - 1 - len, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        out[len] = '\0';
        return len;
}

static size_t raw_exchange(const char *req, size_t reqlen, char *out, size_t outlen)
{
        int fd = raw_connect();
        send_all(fd, req, reqlen);
        size_t n = read_all(fd, out, outlen);
        close(fd);
        return n;
}

/* Runs curl with extra arguments against path; returns the HTTP code and
 * puts the body (or, with -i, head and body) into out. */
static int curl_port(const char *host, uint16_t port, const char *extra, const char *path,
                     char *out, size_t outlen)
{
        struct strbuf cmd;
        strbuf_init(&cmd);
        strbuf_append(&cmd, "curl -g -s -S --noproxy '*' --max-time 10 -w '\\n%{http_code}' "
                            "-H 'Authorization: Bearer " TOKEN "' ");
        strbuf_append(&cmd, extra);
        strbuf_appendf(&cmd, " 'http://%s:%u%s'", host, port, path);
        FILE *p = popen(cmd.data, "r");
        assert_non_null(p);
        size_t n = fread(out, 1, outlen - 1, p);
        out[n] = '\0';
        pclose(p);
        char *nl = strrchr(out, '\n');
        if (!nl)
                fail_msg("curl printed no status code: '%s' (%.200s)", out, cmd.data);
        strbuf_free(&cmd);
        int code = atoi(nl + 1);
        *nl = '\0';
        return code;
}

static int curl(const char *extra, const char *path, char *out, size_t outlen)
{
        return curl_port("127.0.0.1", g_port, extra, path, out, outlen);
}

static void assert_alive(void)
{
        char out[256];
        int code = curl("", "/hello", out, sizeof(out));
        if (code != 200 || !strstr(out, "\"world\""))
                fail_msg("server no longer serving /hello: code %d body '%s'", code, out);
}

static int status_of(const char *resp)
{
        int major, minor, code;
        if (sscanf(resp, "HTTP/%d.%d %d", &major, &minor, &code) != 3)
                return -1;
        return code;
}

/* ---- group 1: the server ---------------------------------------------------------- */

static void test_get_200(void **state)
{
        char out[256];
        assert_int_equal(curl("", "/hello", out, sizeof(out)), 200);
        assert_string_equal(out, "{\"hello\":\"world\"}\n");
        /* headers */
        assert_int_equal(curl("-i", "/hello", out, sizeof(out)), 200);
        assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
        assert_non_null(strstr(out, "Content-Type: application/json\r\n"));
        assert_non_null(strstr(out, "Content-Length: 18\r\n"));
        assert_non_null(strstr(out, "Connection: close\r\n"));
        /* a handler-set status */
        assert_int_equal(curl("", "/teapot", out, sizeof(out)), 418);
}

static void test_head(void **state)
{
        char out[512];
        const char req[] = "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n";
        raw_exchange(req, sizeof(req) - 1, out, sizeof(out));
        assert_int_equal(status_of(out), 200);
        assert_non_null(strstr(out, "Content-Length: 18\r\n"));
        char *end = strstr(out, "\r\n\r\n");
        assert_non_null(end);
        assert_string_equal(end, "\r\n\r\n"); /* no body */
}

static void test_404_405(void **state)
{
        char out[512];
        assert_int_equal(curl("", "/nope", out, sizeof(out)), 404);
        cJSON *j = cJSON_Parse(out);
        assert_non_null(j);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(j, "error")),
                            "no such admin endpoint: /nope");
        cJSON_Delete(j);
        /* the query string is not part of the path */
        assert_int_equal(curl("", "/hello?x=1", out, sizeof(out)), 200);
        assert_int_equal(curl("", "/hello/", out, sizeof(out)), 404);

        assert_int_equal(curl("-i -X PUT", "/hello", out, sizeof(out)), 405);
        assert_non_null(strstr(out, "\r\nAllow: GET, HEAD\r\n"));
        assert_non_null(strstr(out, "\"error\":"));
        assert_int_equal(curl("-i -X POST", "/hello", out, sizeof(out)), 405);
        assert_int_equal(curl("-i -X DELETE", "/both", out, sizeof(out)), 405);
        assert_non_null(strstr(out, "\r\nAllow: GET, HEAD, POST\r\n"));
        assert_int_equal(curl("-i", "/echo", out, sizeof(out)), 405);
        assert_non_null(strstr(out, "\r\nAllow: POST\r\n"));
        assert_alive();
}

static void test_post_body(void **state)
{
        char out[512];
        assert_int_equal(curl("--data-binary 'hello body'", "/echo", out, sizeof(out)), 200);
        assert_string_equal(out, "hello body");
        assert_int_equal(curl("-X POST", "/echo", out, sizeof(out)), 200);
        assert_string_equal(out, "");
        assert_int_equal(curl("--data-binary 'same path'", "/both", out, sizeof(out)), 200);
        assert_string_equal(out, "same path");

        /* exactly 1 MiB, written by curl (with Expect: 100-continue) */
        char path[] = "/tmp/shunt-admin-body-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        char *buf = malloc(ADMIN_MAX_BODY + 1);
        assert_non_null(buf);
        uint32_t sum = 0;
        for (size_t i = 0; i < ADMIN_MAX_BODY; i++) {
                buf[i] = (char)(i * 7 + i / 1000);
                sum = sum * 31 + (unsigned char)buf[i];
        }
        assert_int_equal(write(fd, buf, ADMIN_MAX_BODY), ADMIN_MAX_BODY);
        char arg[128], want[128];
        snprintf(arg, sizeof(arg), "--data-binary @%s", path);
        assert_int_equal(curl(arg, "/sum", out, sizeof(out)), 200);
        snprintf(want, sizeof(want), "{\"len\":%d,\"sum\":%u}", ADMIN_MAX_BODY, sum);
        assert_string_equal(out, want);

        /* one byte more: 413, and the server is fine afterwards */
        assert_int_equal(write(fd, "x", 1), 1);
        close(fd);
        assert_int_equal(curl(arg, "/sum", out, sizeof(out)), 413);
        assert_non_null(strstr(out, "exceeds the limit"));
        unlink(path);
        free(buf);
        assert_alive();

        /* body arriving in pieces, after the head */
        int s = raw_connect();
        const char head[] =
            "POST /echo HTTP/1.1\r\nHost: x\r\n" AUTH "Content-Length: 11\r\n\r\nhel";
        send_all(s, head, sizeof(head) - 1);
        sleep_ms(50); /* pieces apart in time, so the server reads them apart: the test */
        send_all(s, "lo ", 3);
        sleep_ms(50);
        send_all(s, "world", 5);
        char resp[512];
        read_all(s, resp, sizeof(resp));
        close(s);
        assert_int_equal(status_of(resp), 200);
        assert_non_null(strstr(resp, "\r\n\r\nhello world"));
}

static void set_token_task(void *arg)
{
        admin_set_token(g_admin, arg);
}

/* Requests that change shuntd need the token; reading does not. Without a
 * token (admin.mutations off) they are refused. */
static void test_mutations_need_token(void **state)
{
        (void)state;
        char out[1024];
        static const char *const refused[] = {
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
            "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " TOKEN "x\r\n"
            "Content-Length: 2\r\n\r\nok",
            "POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " TOKEN "\r\n"
            "Content-Length: 2\r\n\r\nok",
        };
        for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
                raw_exchange(refused[i], strlen(refused[i]), out, sizeof(out));
                if (status_of(out) != 401 || !strstr(out, "WWW-Authenticate: Bearer\r\n") ||
                    !strstr(out, "needs Authorization: Bearer"))
                        fail_msg("request %zu: want 401, got '%.200s'", i, out);
        }
        const char ok[] = "POST /echo HTTP/1.1\r\nHost: x\r\nauthorization: bearer " TOKEN
                          "\r\nContent-Length: 2\r\n\r\nok";
        raw_exchange(ok, sizeof(ok) - 1, out, sizeof(out));
        assert_int_equal(status_of(out), 200);
        /* Mutations off: refused whatever the request carries; GET still served. */
        assert_int_equal(loop_call(g_loop, set_token_task, NULL, 2000), 0);
        raw_exchange(ok, sizeof(ok) - 1, out, sizeof(out));
        assert_int_equal(status_of(out), 403);
        assert_non_null(strstr(out, "admin mutations are off (admin.mutations)"));
        assert_alive();
        assert_int_equal(loop_call(g_loop, set_token_task, (void *)TOKEN, 2000), 0);
        /* A short or odd token is refused by the setter. */
        struct loop *l = loop_new();
        char err[256];
        struct admin *a = l ? admin_new(l, "127.0.0.1", 0, err, sizeof(err)) : NULL;
        assert_non_null(a);
        assert_int_equal(admin_set_token(a, "short"), -EINVAL);
        assert_int_equal(admin_set_token(a, "0123456789abcdef 123"), -EINVAL);
        admin_free(a);
        loop_free(l);
}

static void test_query(void **state)
{
        char out[256];
        assert_int_equal(curl("", "/query?x=1&name=a%20b+c%2F", out, sizeof(out)), 200);
        assert_string_equal(out, "{\"name\":\"a b c/\"}");
        assert_int_equal(curl("", "/query?x=1", out, sizeof(out)), 400);
        assert_non_null(strstr(out, "missing query parameter"));

        char v[8];
        assert_int_equal(admin_query_get("a=1&b=22", "b", v, sizeof(v)), 2);
        assert_string_equal(v, "22");
        assert_int_equal(admin_query_get("a=1&flag&b=2", "flag", v, sizeof(v)), 0);
        assert_string_equal(v, "");
        assert_int_equal(admin_query_get("a=1", "b", v, sizeof(v)), -ENOENT);
        assert_int_equal(admin_query_get("", "b", v, sizeof(v)), -ENOENT);
        assert_int_equal(admin_query_get("a=12345678", "a", v, sizeof(v)), -ENOSPC);
        assert_int_equal(admin_query_get("a=%4", "a", v, sizeof(v)), 2); /* kept literally */
        assert_string_equal(v, "%4");
}

static void test_bad_requests(void **state)
{
        static const struct {
                const char *req;
                int status;
        } cases[] = {
            {"GARBAGE\r\n\r\n", 400},
            {"GET /hello\r\nHost: x\r\n\r\n", 400},
            {"GET  /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400},
            {"GET hello HTTP/1.1\r\nHost: x\r\n\r\n", 400},
            {"GET /hello HTTP/1.1\r\n\r\n", 400}, /* no Host */
            {"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505},
            {"GET /hello FTP/1.1\r\nHost: x\r\n\r\n", 400},
            {"GET /hello HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400},
            {"GET /hello HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400},
            {"GET /hello HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
             400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n0\r\n\r\n",
             411},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n", 413},
            {"VERYLONGMETHODNAME /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501},
            /* the one strict parser (http1.h): bare LF, absolute form, a
             * transfer coding other than chunked */
            {"GET /hello HTTP/1.1\nHost: x\n\n", 400},
            {"GET http://x/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400},
            {"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
            {"GET /hello HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400},
            /* accepted variants */
            {"GET /hello HTTP/1.0\r\n\r\n", 200},
            {"GET /hello HTTP/1.1\r\nhost:x\r\nX-Empty:\r\n\r\n", 200},
            {"POST /echo HTTP/1.1\r\nHost: x\r\n" AUTH
             "Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
             200},
        };
        char out[1024];
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                raw_exchange(cases[i].req, strlen(cases[i].req), out, sizeof(out));
                if (status_of(out) != cases[i].status)
                        fail_msg("request %zu %.40s...: want %d, got '%.60s'", i, cases[i].req,
                                 cases[i].status, out);
                if (cases[i].status >= 400 && !strstr(out, "{\"error\":"))
                        fail_msg("request %zu: no JSON error body: %s", i, out);
                assert_alive();
        }
        /* a NUL byte inside the head */
        const char nul[] = "GET /hello HTTP/1.1\r\nHost: x\0y\r\n\r\n";
        raw_exchange(nul, sizeof(nul) - 1, out, sizeof(out));
        assert_int_equal(status_of(out), 400);
        /* a client that connects and leaves */
        close(raw_connect());
        assert_alive();
}

static void test_head_limit(void **state)
{
        size_t cap = ADMIN_MAX_HEAD + 4096;
        char *req = malloc(cap);
        char out[1024];
        assert_non_null(req);
        /* just below the limit: served */
        int n = snprintf(req, cap, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: ");
        size_t fill = ADMIN_MAX_HEAD - (size_t)n - 4 - 1;
        memset(req + n, 'a', fill);
        memcpy(req + n + fill, "\r\n\r\n", 4);
        raw_exchange(req, (size_t)n + fill + 4, out, sizeof(out));
        assert_int_equal(status_of(out), 200);
        /* over it: 431 */
        fill = ADMIN_MAX_HEAD + 100;
        memset(req + n, 'a', cap - (size_t)n);
        memcpy(req + n + fill, "\r\n\r\n", 4);
        raw_exchange(req, (size_t)n + fill + 4, out, sizeof(out));
        assert_int_equal(status_of(out), 431);
        assert_non_null(strstr(out, "exceeds the limit of 16384 bytes"));
        free(req);
        assert_alive();
        /* same through curl */
        char hdr[ADMIN_MAX_HEAD + 64];
        int m = snprintf(hdr, sizeof(hdr), "-H 'X-Big: ");
        memset(hdr + m, 'b', ADMIN_MAX_HEAD);
        snprintf(hdr + m + ADMIN_MAX_HEAD, sizeof(hdr) - (size_t)m - ADMIN_MAX_HEAD, "'");
        assert_int_equal(curl(hdr, "/hello", out, sizeof(out)), 431);
        assert_alive();
}

static void test_slow_client_timeout(void **state)
{
        set_read_timeout(200);
        /* a partial head, then silence */
        int fd = raw_connect();
        const char part[] = "GET /hello HTTP/1.1\r\nHost: x\r\n";
        send_all(fd, part, sizeof(part) - 1);
        uint64_t t0 = now_ms();
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        uint64_t dt = now_ms() - t0;
        close(fd);
        if (n != 0 && !(n < 0 && errno == ECONNRESET))
                fail_msg("expected the server to close, recv returned %zd (%s)", n,
                         n < 0 ? strerror(errno) : "data");
        /* Not before the timeout; no upper bound (a loaded machine may be
         * slow): SO_RCVTIMEO (5 s) would show as n < 0 with EAGAIN above. */
        if (dt < 150)
                fail_msg("closed after %llu ms, before the 200 ms timeout", (unsigned long long)dt);

        /* one byte every 40 ms: the timeout covers the whole request, it is not
         * renewed by each byte */
        fd = raw_connect();
        const char *req =
            "GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            "aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        bool closed = false;
        for (const char *p = req; *p && !closed; p++) {
                if (send(fd, p, 1, MSG_NOSIGNAL) < 0)
                        closed = true;
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                if (poll(&pfd, 1, 40) > 0) {
                        n = recv(fd, buf, sizeof(buf), 0);
                        if (n <= 0)
                                closed = true;
                        else
                                fail_msg("server answered a request that took too long: %.*s",
                                         (int)n, buf);
                }
        }
        close(fd);
        /* Closed before the last of the ~90 bytes (at least 3.6 s of
         * dribbling): the timeout was not renewed by each byte. */
        assert_true(closed);
        set_read_timeout(ADMIN_DEFAULT_READ_TIMEOUT_MS);
        assert_alive();
}

struct own_task {
        struct admin *a;
        char err[256];
};

static void own_new_task(void *arg)
{
        struct own_task *t = arg;
        t->a = admin_new(g_loop, "127.0.0.1", 0, t->err, sizeof(t->err));
        if (t->a)
                admin_route(t->a, "GET", "/hello", h_hello, NULL);
}

/* On a server of its own: the shared one may still hold the connections of
 * earlier tests, which would count against the limit. */
static void test_connection_limit(void **state)
{
        struct own_task t = {0};
        assert_int_equal(loop_call(g_loop, own_new_task, &t, 5000), 0);
        if (!t.a)
                fail_msg("admin_new: %s", t.err);
        uint16_t port = admin_port(t.a);
        int holders[ADMIN_MAX_CONNS];
        const char part[] = "GET /hello HTTP/1.1\r\n";
        for (int i = 0; i < ADMIN_MAX_CONNS; i++) {
                holders[i] = raw_connect_port(port);
                send_all(holders[i], part, sizeof(part) - 1);
        }
        /* The server accepts in connection order: an extra connection is
         * answered only after every holder was accepted and counted. */
        char out[1024];
        for (int i = 0; i < 3; i++) {
                const char req[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
                int fd = raw_connect_port(port);
                send_all(fd, req, sizeof(req) - 1);
                read_all(fd, out, sizeof(out));
                close(fd);
                if (status_of(out) != 503)
                        fail_msg("extra connection %d: want 503, got '%.80s'", i, out);
                assert_non_null(strstr(out, "too many admin connections"));
                assert_non_null(strstr(out, "Retry-After: 1\r\n"));
        }
        assert_int_equal(curl_port("127.0.0.1", port, "", "/hello", out, sizeof(out)), 503);
        for (int i = 0; i < ADMIN_MAX_CONNS; i++) {
                struct pollfd pfd = {.fd = holders[i], .events = POLLIN};
                if (poll(&pfd, 1, 0) != 0)
                        fail_msg("holder %d was answered or closed early", i);
        }
        /* a held connection still completes its request */
        const char rest[] = "Host: x\r\n\r\n";
        send_all(holders[0], rest, sizeof(rest) - 1);
        read_all(holders[0], out, sizeof(out));
        assert_int_equal(status_of(out), 200);
        for (int i = 0; i < ADMIN_MAX_CONNS; i++)
                close(holders[i]);
        assert_int_equal(loop_call(g_loop, free_task, t.a, 5000), 0);
        assert_alive();
}

static void test_big_response_slow_reader(void **state)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int small = 4096;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(g_port)};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        const char req[] = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
        send_all(fd, req, sizeof(req) - 1);
        /* Once the first bytes are here the server has started the response,
         * which does not fit the socket buffers: it must go on serving others
         * while this one waits for EPOLLOUT. */
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&pfd, 1, 5000), 1);
        assert_alive();
        assert_alive();

        size_t cap = BIG_LEN + 4096;
        char *buf = malloc(cap);
        assert_non_null(buf);
        size_t len = read_all(fd, buf, cap);
        close(fd);
        assert_int_equal(status_of(buf), 200);
        assert_non_null(strstr(buf, "Content-Length: 4194304\r\n"));
        char *body = strstr(buf, "\r\n\r\n");
        assert_non_null(body);
        body += 4;
        assert_int_equal(len - (size_t)(body - buf), BIG_LEN);
        for (size_t i = 0; i < BIG_LEN; i++)
                if (body[i] != (char)('a' + i % 1664 % 26))
                        fail_msg("byte %zu of the body is wrong", i);
        free(buf);
}

struct v6_task {
        struct admin *a;
        char err[256];
};

static void v6_new_task(void *arg)
{
        struct v6_task *t = arg;
        t->a = admin_new(g_loop, "[::1]", 0, t->err, sizeof(t->err));
        if (t->a)
                admin_route(t->a, "GET", "/hello", h_hello, NULL);
}

static void test_new_errors_and_ipv6(void **state)
{
        char err[256];
        assert_null(admin_new(g_loop, "not-an-ip", 0, err, sizeof(err)));
        assert_non_null(strstr(err, "'not-an-ip' is not an IPv4 or IPv6 literal"));
        assert_null(admin_new(g_loop, "127.0.0.1", g_port, err, sizeof(err)));
        char want[64];
        snprintf(want, sizeof(want), "cannot bind 127.0.0.1:%u: Address already in use", g_port);
        assert_string_equal(strstr(err, "cannot bind"), want);
        assert_int_equal(admin_route(g_admin, "PATCH", "/x", h_hello, NULL), -EINVAL);
        assert_int_equal(admin_route(g_admin, "GET", "x", h_hello, NULL), -EINVAL);

        struct v6_task t = {0};
        assert_int_equal(loop_call(g_loop, v6_new_task, &t, 5000), 0);
        if (!t.a) {
                if (strstr(t.err, "Cannot assign requested address"))
                        require_missing("ipv6", "no IPv6 loopback here");
                fail_msg("admin_new on [::1]: %s", t.err);
        }
        char out[256];
        int code = curl_port("[::1]", admin_port(t.a), "", "/hello", out, sizeof(out));
        assert_int_equal(loop_call(g_loop, free_task, t.a, 5000), 0);
        assert_int_equal(code, 200);
        assert_string_equal(out, "{\"hello\":\"world\"}\n");
}

struct ro_task {
        struct admin *a;
        int route_get, route_post, token;
        char err[256];
};

static void ro_new_task(void *arg)
{
        struct ro_task *t = arg;
        t->a = admin_new_read_only(g_loop, "metrics", "::", 0, t->err, sizeof(t->err));
        if (!t->a)
                return;
        t->route_get = admin_route(t->a, "GET", "/hello", h_hello, NULL);
        t->route_post = admin_route(t->a, "POST", "/echo", h_echo, NULL);
        t->token = admin_set_token(t->a, TOKEN);
}

/* The metrics listener: GET routes only, no token, so no request can change
 * anything; on "::" it answers IPv4 clients too. */
static void test_read_only_listener(void **state)
{
        struct ro_task t = {0};
        assert_int_equal(loop_call(g_loop, ro_new_task, &t, 5000), 0);
        if (!t.a) {
                if (strstr(t.err, "Address family not supported"))
                        require_missing("ipv6", "no IPv6 here (admin_new_read_only on [::])");
                fail_msg("admin_new_read_only on [::]: %s", t.err);
        }
        assert_int_equal(t.route_get, 0);
        assert_int_equal(t.route_post, -EPERM);
        assert_int_equal(t.token, -EPERM);
        uint16_t port = admin_port(t.a);
        char out[1024];
        assert_int_equal(curl_port("127.0.0.1", port, "", "/hello", out, sizeof(out)), 200);
        assert_string_equal(out, "{\"hello\":\"world\"}\n");
        assert_int_equal(
            curl_port("127.0.0.1", port, "-i -X POST -d ok", "/hello", out, sizeof(out)), 405);
        assert_non_null(strstr(out, "Allow: GET, HEAD\r\n"));
        /* A path it does not serve is 404 whatever the method: POST /echo was
         * never routed, and the admin listener's routes are not its. */
        assert_int_equal(curl_port("127.0.0.1", port, "-X POST -d ok", "/echo", out, sizeof(out)),
                         404);
        assert_int_equal(curl_port("127.0.0.1", port, "", "/both", out, sizeof(out)), 404);
        int code = curl_port("[::1]", port, "", "/hello", out, sizeof(out));
        assert_int_equal(loop_call(g_loop, free_task, t.a, 5000), 0);
        assert_true(code == 200 || code == 0); /* 0: no IPv6 loopback address */
}

/* ---- group 2: shuntctl against a fixed-JSON admin ------------------------------- */

static pid_t g_child = -1;
static uint16_t g_child_port;
static char g_ctl[PATH_MAX];

static const char STATUS_JSON[] =
    "{\"version\":\"0.1.0\",\"pid\":4242,\"uptime_s\":3725,\"redirect_mode\":\"iptables\","
    "\"redirect_reason\":\"--redirect=iptables\",\"ready\":true,\"workers\":2,"
    "\"listeners\":[{\"name\":\"inbound\",\"address\":\"0.0.0.0:15001\"},"
    "{\"name\":\"outbound\",\"address\":\"0.0.0.0:15002\"}],"
    "\"rules\":{\"installed\":true,\"ipv6\":true},"
    "\"connections\":{\"active\":3,\"accepted\":120,\"rejected\":2},"
    "\"config\":{\"path\":\"/etc/shunt/shunt.json\",\"generation\":4},\"log_level\":\"info\"}";

static const char RULES_JSON[] =
    "{\"ipv4\":[{\"chain\":\"SIDECAR_PROXY_OUTBOUND\",\"rule\":\"-p tcp -j REDIRECT "
    "--to-ports 15002\",\"packets\":17,\"bytes\":1020},"
    "{\"chain\":\"SIDECAR_PROXY_INBOUND\",\"rule\":\"-p tcp -j REDIRECT --to-ports 15001\","
    "\"packets\":123456,\"bytes\":98765432}],"
    "\"ipv6\":[{\"chain\":\"SIDECAR_PROXY_OUTBOUND\",\"rule\":\"-p tcp -j REDIRECT "
    "--to-ports 15002\",\"packets\":0,\"bytes\":0}]}";

static const char CONNS_JSON[] =
    "{\"connections\":[{\"id\":7,\"worker\":0,\"direction\":\"outbound\",\"client\":"
    "\"10.0.0.1:5555\",\"original_dst\":\"10.0.0.2:80\",\"upstream\":\"10.0.0.2:80\","
    "\"protocol\":\"http1\",\"state\":\"relaying\",\"bytes_in\":1536,\"bytes_out\":3145728,"
    "\"age_ms\":65000,\"sni\":\"\"},"
    "{\"id\":12,\"worker\":1,\"direction\":\"inbound\",\"client\":\"[fd00::1]:40000\","
    "\"original_dst\":\"[fd00::2]:8443\",\"upstream\":\"[fd00::2]:8443\",\"protocol\":\"tls\","
    "\"state\":\"sniffing\",\"bytes_in\":0,\"bytes_out\":0,\"age_ms\":12,"
    "\"sni\":\"api.example\"}]}";

static const char CONFIG_JSON[] =
    "{\"inbound_port\":{\"value\":15001,\"source\":\"default\"},"
    "\"service_discovery.type\":{\"value\":\"file\",\"source\":\"file\"},"
    "\"mtls.trust_domain\":{\"value\":\"cluster.local\",\"source\":\"env\"},"
    "\"exclude_ports\":{\"value\":[22,15003],\"source\":\"flag\"}}";

static void h_fixed(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        strbuf_append(&resp->body, ctx);
}

static void h_log_level(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        enum log_level lv;
        if (strcmp(req->body, "warn") == 0) {
                admin_respond_error(resp, 503, "log level is locked");
                return;
        }
        if (log_level_parse(req->body, &lv) < 0) {
                admin_respond_error(resp, 400, "invalid log level");
                return;
        }
        strbuf_append(&resp->body, "{\"log_level\":");
        strbuf_append_json_string(&resp->body, log_level_name(lv));
        strbuf_append(&resp->body, "}");
}

static void child_server(int wfd)
{
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct loop *loop = loop_new();
        char err[256];
        struct admin *a = loop ? admin_new(loop, "127.0.0.1", 0, err, sizeof(err)) : NULL;
        if (!a)
                _exit(1);
        admin_route(a, "GET", "/status", h_fixed, (void *)STATUS_JSON);
        admin_route(a, "GET", "/rules", h_fixed, (void *)RULES_JSON);
        admin_route(a, "GET", "/connections", h_fixed, (void *)CONNS_JSON);
        admin_route(a, "GET", "/config", h_fixed, (void *)CONFIG_JSON);
        admin_route(a, "POST", "/admin/log-level", h_log_level, NULL);
        if (admin_set_token(a, TOKEN) < 0)
                _exit(1);
        uint16_t port = admin_port(a);
        if (write(wfd, &port, sizeof(port)) != sizeof(port))
                _exit(1);
        close(wfd);
        loop_run(loop);
        _exit(0);
}

static int setup_ctl(void **state)
{
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n < 0)
                return -1;
        self[n] = '\0';
        *strrchr(self, '/') = '\0';
        const char *cands[] = {"%s/shuntctl", "%s/../shuntctl"};
        g_ctl[0] = '\0';
        for (int i = 0; i < 2; i++) {
                char p[PATH_MAX + 16];
                snprintf(p, sizeof(p), cands[i], self);
                if (access(p, X_OK) == 0 && realpath(p, g_ctl))
                        break;
                g_ctl[0] = '\0';
        }
        if (!g_ctl[0]) {
                fprintf(stderr, "shuntctl not found next to %s: build the 'shuntctl' target\n",
                        self);
                return -1;
        }
        int p[2];
        if (pipe(p) < 0)
                return -1;
        fflush(NULL);
        g_child = fork();
        if (g_child < 0)
                return -1;
        if (g_child == 0) {
                close(p[0]);
                child_server(p[1]);
        }
        close(p[1]);
        ssize_t r = read(p[0], &g_child_port, sizeof(g_child_port));
        close(p[0]);
        /* shuntctl's token for POST: the file shuntd would have written. */
        static char tf[] = "/tmp/shunt-admin-token-XXXXXX";
        int fd = mkstemp(tf);
        if (fd < 0 || write(fd, TOKEN "\n", sizeof(TOKEN)) != (ssize_t)sizeof(TOKEN))
                return -1;
        close(fd);
        setenv("SHUNTCTL_ADMIN_TOKEN_FILE", tf, 1);
        return r == sizeof(g_child_port) ? 0 : -1;
}

static int teardown_ctl(void **state)
{
        if (g_child > 0) {
                kill(g_child, SIGTERM);
                waitpid(g_child, NULL, 0);
        }
        return 0;
}

/* Runs shuntctl with args (NULL-terminated); env_admin sets SHUNTCTL_ADMIN
 * (NULL unsets it). Returns the exit code; stdout and stderr go to out/err. */
static int run_ctl(const char *env_admin, char *out, size_t outlen, char *err, size_t errlen, ...)
{
        const char *argv[16] = {g_ctl};
        int argc = 1;
        va_list ap;
        va_start(ap, errlen);
        const char *a;
        while ((a = va_arg(ap, const char *)) && argc < 15)
                argv[argc++] = a;
        va_end(ap);
        argv[argc] = NULL;

        int po[2], pe[2];
        assert_int_equal(pipe(po), 0);
        assert_int_equal(pipe(pe), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(po[1], 1);
                dup2(pe[1], 2);
                close(po[0]);
                close(po[1]);
                close(pe[0]);
                close(pe[1]);
                if (env_admin)
                        setenv("SHUNTCTL_ADMIN", env_admin, 1);
                else
                        unsetenv("SHUNTCTL_ADMIN");
                execv(g_ctl, (char *const *)argv);
                _exit(127);
        }
        close(po[1]);
        close(pe[1]);
        size_t ol = 0, el = 0;
        ssize_t n;
        while (ol + 1 < outlen && (n = read(po[0], out + ol, outlen - 1 - ol)) > 0)
                ol += (size_t)n;
        out[ol] = '\0';
        while (el + 1 < errlen && (n = read(pe[0], err + el, errlen - 1 - el)) > 0)
                el += (size_t)n;
        err[el] = '\0';
        close(po[0]);
        close(pe[0]);
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char g_addr[64];

static void assert_contains(const char *out, const char *needle)
{
        if (!strstr(out, needle))
                fail_msg("missing '%s' in:\n%s", needle, out);
}

static const char *child_addr(void)
{
        snprintf(g_addr, sizeof(g_addr), "127.0.0.1:%u", g_child_port);
        return g_addr;
}

/* The column at which header word col starts in the header line must be
 * where that column's text starts in a data line containing needle. */
static void assert_aligned(const char *out, const char *header_word, const char *needle,
                           const char *cell)
{
        const char *hdr = strstr(out, header_word);
        assert_non_null(hdr);
        const char *hline = hdr;
        while (hline > out && hline[-1] != '\n')
                hline--;
        const char *row = strstr(out, needle);
        assert_non_null(row);
        while (row > out && row[-1] != '\n')
                row--;
        const char *c = strstr(row, cell);
        assert_non_null(c);
        if (c - row != hdr - hline)
                fail_msg("column %s at %td but '%s' at %td:\n%s", header_word, hdr - hline, cell,
                         c - row, out);
}

static void test_ctl_status(void **state)
{
        char out[4096], err[1024];
        int rc = run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--admin", child_addr(),
                         "status", NULL);
        if (rc != 0)
                fail_msg("shuntctl status exited %d: %s", rc, err);
        const char *want[] = {"shuntd 0.1.0, pid 4242, up 1h02m",
                              "ready:       yes\n",
                              "redirect:    iptables (--redirect=iptables)\n",
                              "workers:     2\n",
                              "listeners:   inbound   0.0.0.0:15001\n",
                              "             outbound  0.0.0.0:15002\n",
                              "rules:       installed (IPv4 and IPv6)\n",
                              "connections: 3 active, 120 accepted, 2 rejected\n",
                              "config:      /etc/shunt/shunt.json (generation 4)\n",
                              "log level:   info\n"};
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
                if (!strstr(out, want[i]))
                        fail_msg("missing '%s' in:\n%s", want[i], out);
        assert_string_equal(err, "");

        /* --json prints the daemon's JSON unchanged (plus a newline) */
        rc = run_ctl(NULL, out, sizeof(out), err, sizeof(err), "status", "--json", "--admin",
                     child_addr(), NULL);
        assert_int_equal(rc, 0);
        char want_json[sizeof(STATUS_JSON) + 1];
        snprintf(want_json, sizeof(want_json), "%s\n", STATUS_JSON);
        assert_string_equal(out, want_json);

        /* the address from the environment */
        rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "status", NULL);
        assert_int_equal(rc, 0);
        assert_contains(out, "ready:       yes");
}

static void test_ctl_rules(void **state)
{
        char out[4096], err[1024];
        int rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "rules", NULL);
        if (rc != 0)
                fail_msg("shuntctl rules exited %d: %s", rc, err);
        assert_contains(out, "FAMILY  CHAIN                   PACKETS     BYTES  RULE\n");
        assert_contains(out, "ipv4    SIDECAR_PROXY_INBOUND    123456  98765432  -p tcp -j "
                             "REDIRECT --to-ports 15001\n");
        assert_contains(out, "ipv6    SIDECAR_PROXY_OUTBOUND        0         0  -p tcp");
        assert_aligned(out, "RULE", "ipv4    SIDECAR_PROXY_OUTBOUND", "-p tcp");
        assert_aligned(out, "CHAIN", "ipv6", "SIDECAR_PROXY_OUTBOUND");
}

static void test_ctl_conns(void **state)
{
        char out[4096], err[1024];
        int rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "conns", NULL);
        if (rc != 0)
                fail_msg("shuntctl conns exited %d: %s", rc, err);
        const char *want[] = {"ID",       "ORIGINAL_DST",   "10.0.0.1:5555", "10.0.0.2:80",
                              "http1",    "relaying",       "1.5 KiB",       "3.0 MiB",
                              "1m05s",    "[fd00::2]:8443", "sniffing",      "12ms",
                              "outbound", "inbound"};
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
                if (!strstr(out, want[i]))
                        fail_msg("missing '%s' in:\n%s", want[i], out);
        assert_aligned(out, "CLIENT", "relaying", "10.0.0.1:5555");
        assert_aligned(out, "CLIENT", "sniffing", "[fd00::1]:40000");
        assert_aligned(out, "PROTO", "sniffing", "tls");
        assert_aligned(out, "DIR", "relaying", "outbound");
        /* three lines: header and two connections */
        int lines = 0;
        for (const char *p = out; *p; p++)
                lines += *p == '\n';
        assert_int_equal(lines, 3);
}

static void test_ctl_config(void **state)
{
        char out[4096], err[1024];
        int rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "config", NULL);
        if (rc != 0)
                fail_msg("shuntctl config exited %d: %s", rc, err);
        assert_contains(out, "KEY                     VALUE          SOURCE\n");
        assert_contains(out, "inbound_port            15001          default\n");
        assert_contains(out, "mtls.trust_domain       cluster.local  env\n");
        assert_contains(out, "exclude_ports           [22,15003]     flag\n");
}

static void test_ctl_log_level(void **state)
{
        char out[1024], err[1024];
        int rc =
            run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "log-level", "debug", NULL);
        if (rc != 0)
                fail_msg("shuntctl log-level exited %d: %s", rc, err);
        assert_string_equal(out, "log level: debug\n");

        rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "log-level", "loud", NULL);
        assert_int_equal(rc, 2);
        assert_contains(err, "invalid log level 'loud'");

        /* the daemon refusing: its error message, exit 1 */
        rc = run_ctl(child_addr(), out, sizeof(out), err, sizeof(err), "log-level", "warn", NULL);
        assert_int_equal(rc, 1);
        char want[256];
        snprintf(want, sizeof(want),
                 "shuntctl: shuntd admin at %s answered 503 to POST /admin/log-level: log level "
                 "is locked\n",
                 child_addr());
        assert_string_equal(err, want);
}

static void test_ctl_usage(void **state)
{
        char out[4096], err[1024];
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), NULL), 2);
        assert_contains(err, "no command given");
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "frobnicate", NULL), 2);
        assert_contains(err, "unknown command 'frobnicate'");
        assert_int_equal(
            run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--bogus", "status", NULL), 2);
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "status", "extra", NULL),
                         2);
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "log-level", NULL), 2);
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--admin", "host:99999",
                                 "status", NULL),
                         2);
        assert_contains(err, "invalid admin address 'host:99999'");
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--admin", NULL), 2);
        assert_int_equal(run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--help", NULL), 0);
        assert_contains(out, "usage: shuntctl");
        assert_contains(out, "log-level LEVEL");
}

static void test_ctl_unreachable(void **state)
{
        /* a port nobody listens on */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof(sin);
        assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        getsockname(fd, (struct sockaddr *)&sin, &sl);
        close(fd);
        char addr[64], want[160], out[1024], err[1024];
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
        int rc = run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--admin", addr, "status", NULL);
        assert_int_equal(rc, 1);
        snprintf(want, sizeof(want),
                 "shuntctl: cannot reach shuntd admin at %s: Connection refused\n", addr);
        assert_string_equal(err, want);
        assert_string_equal(out, "");
}

static void test_ctl_timeout(void **state)
{
        /* listening but never answering: the 5 s deadline ends the wait */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET};
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t sl = sizeof(sin);
        assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(listen(fd, 4), 0);
        getsockname(fd, (struct sockaddr *)&sin, &sl);
        char addr[64], out[1024], err[1024];
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
        uint64_t t0 = now_ms();
        int rc = run_ctl(NULL, out, sizeof(out), err, sizeof(err), "--admin", addr, "rules", NULL);
        uint64_t dt = now_ms() - t0;
        close(fd);
        assert_int_equal(rc, 1);
        assert_contains(err, "Connection timed out");
        if (dt < 4500) /* not before the deadline; ctest's timeout bounds a hang */
                fail_msg("gave up after %llu ms, before the 5 s deadline", (unsigned long long)dt);
}

int main(void)
{
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest server_tests[] = {
            cmocka_unit_test(test_get_200),
            cmocka_unit_test(test_head),
            cmocka_unit_test(test_404_405),
            cmocka_unit_test(test_post_body),
            cmocka_unit_test(test_mutations_need_token),
            cmocka_unit_test(test_query),
            cmocka_unit_test(test_bad_requests),
            cmocka_unit_test(test_head_limit),
            cmocka_unit_test(test_slow_client_timeout),
            cmocka_unit_test(test_connection_limit),
            cmocka_unit_test(test_big_response_slow_reader),
            cmocka_unit_test(test_new_errors_and_ipv6),
            cmocka_unit_test(test_read_only_listener),
        };
        const struct CMUnitTest ctl_tests[] = {
            cmocka_unit_test(test_ctl_status),      cmocka_unit_test(test_ctl_rules),
            cmocka_unit_test(test_ctl_conns),       cmocka_unit_test(test_ctl_config),
            cmocka_unit_test(test_ctl_log_level),   cmocka_unit_test(test_ctl_usage),
            cmocka_unit_test(test_ctl_unreachable), cmocka_unit_test(test_ctl_timeout),
        };
        int failed = cmocka_run_group_tests_name("admin server", server_tests, setup_server,
                                                 teardown_server);
        /* The shuntctl group forks: it runs after the loop thread is gone. */
        failed += cmocka_run_group_tests_name("shuntctl", ctl_tests, setup_ctl, teardown_ctl);
        return failed;
}

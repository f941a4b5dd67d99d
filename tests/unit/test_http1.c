// SPDX-License-Identifier: Apache-2.0
/* HTTP/1.1 parser (http/http1.h): request and response heads, every error
 * reason, smuggling attempts, incremental feeding at every split point,
 * pipelining, bounds, the chunked decoder across arbitrary splits, header
 * helpers and the forwarding writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/strbuf.h"
#include "http/http1.h"

static struct http1_msg msg;

static int req(const char *s)
{
        http1_msg_reset(&msg);
        return http1_parse_request_head(s, strlen(s), NULL, &msg);
}

static int resp(const char *s, enum http1_method m)
{
        http1_msg_reset(&msg);
        return http1_parse_response_head(s, strlen(s), NULL, m, &msg);
}

static void expect_req_error(const char *s, enum http1_error e)
{
        int rc = req(s);
        if (rc != -EPROTO || msg.error != e)
                fail_msg("request %s: rc %d error %d (%s), want %d (%s)", s, rc, msg.error,
                         http1_error_str(msg.error), e, http1_error_str(e));
}

static void expect_resp_error(const char *s, enum http1_error e)
{
        int rc = resp(s, HTTP1_M_GET);
        if (rc != -EPROTO || msg.error != e)
                fail_msg("response %s: rc %d error %d (%s), want %d", s, rc, msg.error,
                         http1_error_str(msg.error), e);
}

static void assert_slice(struct http1_slice s, const char *want)
{
        if (!http1_slice_eq(s, want))
                fail_msg("slice '%.*s' != '%s'", (int)s.n, s.p, want);
}

/* ---- requests ---- */

static void test_simple_get(void **state)
{
        (void)state;
        const char *r = "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n";
        assert_int_equal(req(r), (int)strlen(r));
        assert_int_equal(msg.method, HTTP1_M_GET);
        assert_slice(msg.method_str, "GET");
        assert_slice(msg.target, "/a/b?c=d");
        assert_int_equal(msg.form, HTTP1_T_ORIGIN);
        assert_int_equal(msg.version_minor, 1);
        assert_slice(msg.host, "example.com");
        assert_int_equal(msg.nheaders, 2);
        assert_slice(msg.headers[1].name, "User-Agent");
        assert_slice(msg.headers[1].value, "x");
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(msg.keep_alive);
        assert_false(msg.expect_continue);
        assert_false(msg.upgrade);
}

static void test_all_methods(void **state)
{
        (void)state;
        static const struct {
                const char *name;
                enum http1_method m;
        } ms[] = {{"GET", HTTP1_M_GET},        {"HEAD", HTTP1_M_HEAD},
                  {"POST", HTTP1_M_POST},      {"PUT", HTTP1_M_PUT},
                  {"DELETE", HTTP1_M_DELETE},  {"OPTIONS", HTTP1_M_OPTIONS},
                  {"TRACE", HTTP1_M_TRACE},    {"PATCH", HTTP1_M_PATCH},
                  {"PROPFIND", HTTP1_M_OTHER}, {"M-SEARCH", HTTP1_M_OTHER}};
        for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
                char buf[128];
                snprintf(buf, sizeof(buf), "%s /x HTTP/1.1\r\nHost: h\r\n\r\n", ms[i].name);
                assert_int_equal(req(buf), (int)strlen(buf));
                assert_int_equal(msg.method, ms[i].m);
                assert_slice(msg.method_str, ms[i].name);
        }
        const char *c = "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n";
        assert_int_equal(req(c), (int)strlen(c));
        assert_int_equal(msg.method, HTTP1_M_CONNECT);
        assert_int_equal(msg.form, HTTP1_T_AUTHORITY);
        assert_slice(msg.authority, "db.internal:5432");
        const char *o = "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_int_equal(req(o), (int)strlen(o));
        assert_int_equal(msg.form, HTTP1_T_ASTERISK);
        /* lowercase is a different (extension) method: methods are case-sensitive */
        assert_int_equal(req("get / HTTP/1.1\r\nHost: h\r\n\r\n") > 0, 1);
        assert_int_equal(msg.method, HTTP1_M_OTHER);
}

static void test_absolute_form(void **state)
{
        (void)state;
        const char *r = "GET http://api.svc:8080/v1/x?y HTTP/1.1\r\nHost: api.svc:8080\r\n\r\n";
        assert_int_equal(req(r), (int)strlen(r));
        assert_int_equal(msg.form, HTTP1_T_ABSOLUTE);
        assert_slice(msg.authority, "api.svc:8080");
        assert_slice(msg.target, "http://api.svc:8080/v1/x?y");
        r = "GET https://a.b HTTP/1.1\r\nHost: a.b\r\n\r\n";
        assert_int_equal(req(r), (int)strlen(r));
        assert_slice(msg.authority, "a.b");
        expect_req_error("GET http:// HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET foo HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET * HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("CONNECT host HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("CONNECT host:x1 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
}

static void test_http10_and_keepalive(void **state)
{
        (void)state;
        assert_true(req("GET / HTTP/1.0\r\n\r\n") > 0);
        assert_int_equal(msg.version_minor, 0);
        assert_false(msg.keep_alive);
        assert_int_equal(msg.host.n, 0);
        assert_true(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") > 0);
        assert_true(msg.keep_alive);
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n") > 0);
        assert_false(msg.keep_alive);
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n") > 0);
        assert_true(msg.keep_alive);
        /* HTTP/1.2 is treated as 1.1 */
        assert_true(req("GET / HTTP/1.2\r\nHost: h\r\n\r\n") > 0);
        assert_int_equal(msg.version_minor, 1);
        /* Expect only counts in 1.1 */
        assert_true(req("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                        "Content-Length: 5\r\n\r\n") > 0);
        assert_true(msg.expect_continue);
        assert_int_equal(msg.body, HTTP1_BODY_LENGTH);
        assert_int_equal(msg.content_length, 5);
        assert_true(req("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n") > 0);
        assert_false(msg.expect_continue);
        /* Upgrade needs both headers */
        assert_true(req("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\n\r\n") > 0);
        assert_true(msg.upgrade);
        assert_true(req("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n") > 0);
        assert_false(msg.upgrade);
}

static void test_bodies(void **state)
{
        (void)state;
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n") > 0);
        assert_int_equal(msg.body, HTTP1_BODY_CHUNKED);
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n") > 0);
        assert_int_equal(msg.body, HTTP1_BODY_CHUNKED);
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n") > 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12, 12\r\n"
                        "Content-Length: 12\r\n\r\n") > 0);
        assert_int_equal(msg.body, HTTP1_BODY_LENGTH);
        assert_int_equal(msg.content_length, 12);
        assert_true(
            req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4611686018427387000\r\n\r\n") > 0);
        expect_req_error(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            HTTP1_E_CONTENT_LENGTH);
}

static void test_leading_crlf_and_pipelining(void **state)
{
        (void)state;
        const char *two = "\r\nGET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                          "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                          "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n";
        size_t len = strlen(two), off = 0;
        const char *targets[] = {"/1", "/2", "/3"};
        for (int i = 0; i < 3; i++) {
                http1_msg_reset(&msg);
                int rc = http1_parse_request_head(two + off, len - off, NULL, &msg);
                assert_true(rc > 0);
                assert_slice(msg.target, targets[i]);
                off += (size_t)rc;
                if (msg.body == HTTP1_BODY_LENGTH)
                        off += msg.content_length;
        }
        assert_int_equal(off, len);
}

/* Every prefix gives "need more" and the full buffer the same result as a
 * one-shot parse, whether fed byte by byte with one msg or from scratch. */
static void check_splits(const char *r)
{
        size_t len = strlen(r);
        static struct http1_msg whole, inc;
        http1_msg_reset(&whole);
        int want = http1_parse_request_head(r, len, NULL, &whole);
        char *copy = malloc(len);
        assert_non_null(copy);
        memcpy(copy, r, len);
        http1_msg_reset(&inc);
        int rc = 0;
        for (size_t k = 1; k <= len; k++) {
                rc = http1_parse_request_head(copy, k, NULL, &inc);
                if (rc != 0)
                        break;
                /* from scratch at this split point */
                http1_msg_reset(&msg);
                assert_int_equal(http1_parse_request_head(copy, k, NULL, &msg), 0);
        }
        assert_int_equal(rc, want);
        assert_int_equal(inc.error, whole.error);
        if (want > 0) {
                assert_int_equal(inc.nheaders, whole.nheaders);
                assert_int_equal(inc.body, whole.body);
                assert_int_equal(inc.content_length, whole.content_length);
                assert_int_equal(inc.keep_alive, whole.keep_alive);
                assert_true(inc.target.n == whole.target.n &&
                            memcmp(inc.target.p, whole.target.p, inc.target.n) == 0);
                for (size_t i = 0; i < inc.nheaders; i++) {
                        assert_int_equal(inc.headers[i].name.n, whole.headers[i].name.n);
                        assert_int_equal(inc.headers[i].value.n, whole.headers[i].value.n);
                }
        }
        free(copy);
}

static void test_every_split_point(void **state)
{
        (void)state;
        check_splits("POST http://x/y HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                     "Connection: close\r\nX-Request-ID: abc\r\nCookie: a=1; b=2\r\n\r\n");
        check_splits("\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        check_splits("PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        /* errors are also found at the same place whatever the split */
        check_splits("GET / HTTP/1.1\r\nHost: h\r\nBad\rHeader: x\r\n\r\n");
        check_splits("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n");
}

/* ---- error reasons ---- */

static void test_request_errors(void **state)
{
        (void)state;
        expect_req_error("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET / HTTP/1.1 \r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET /\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET / HTTP/2.0\r\nHost: h\r\n\r\n", HTTP1_E_VERSION);
        expect_req_error("GET / HTTP/1.x\r\nHost: h\r\n\r\n", HTTP1_E_VERSION);
        expect_req_error("GET / http/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        expect_req_error("GET / HTTP/1.1\nHost: h\r\n\r\n", HTTP1_E_LINE_ENDING);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\n\n", HTTP1_E_LINE_ENDING);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", HTTP1_E_LINE_ENDING);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\n Folded: y\r\n\r\n", HTTP1_E_OBS_FOLD);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", HTTP1_E_OBS_FOLD);
        expect_req_error("GET / HTTP/1.1\r\nHost : h\r\n\r\n", HTTP1_E_HEADER_NAME);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", HTTP1_E_HEADER_NAME);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", HTTP1_E_HEADER_NAME);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\nA(b: v\r\n\r\n", HTTP1_E_HEADER_NAME);
        {
                static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
                http1_msg_reset(&msg);
                assert_int_equal(http1_parse_request_head(nul, sizeof(nul) - 1, NULL, &msg),
                                 -EPROTO);
                assert_int_equal(msg.error, HTTP1_E_HEADER_VALUE);
        }
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n", HTTP1_E_HEADER_VALUE);
        expect_req_error("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fz\r\n\r\n", HTTP1_E_HEADER_VALUE);
        expect_req_error("GET / HTTP/1.1\r\n\r\n", HTTP1_E_MISSING_HOST);
        expect_req_error("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", HTTP1_E_BAD_HOST);
        expect_req_error("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTP1_E_BAD_HOST);
        expect_req_error("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", HTTP1_E_BAD_HOST);
        expect_req_error("GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n", HTTP1_E_REQUEST_LINE);
        /* a status line is not a request */
        expect_req_error("HTTP/1.1 200 OK\r\n\r\n", HTTP1_E_REQUEST_LINE);
}

static void test_smuggling(void **state)
{
        (void)state;
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n",
                         HTTP1_E_CL_AND_TE);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                         "Content-Length: 0\r\n\r\n",
                         HTTP1_E_CL_AND_TE);
        expect_req_error(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            HTTP1_E_TE_NOT_CHUNKED);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
                         HTTP1_E_TE_NOT_CHUNKED);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n",
                         HTTP1_E_TE_NOT_CHUNKED);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
                         HTTP1_E_TE_NOT_CHUNKED);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                         HTTP1_E_TE_UNSUPPORTED);
        assert_int_equal(http1_error_status(HTTP1_E_TE_UNSUPPORTED), 501);
        expect_req_error("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                         HTTP1_E_TE_HTTP10);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                         "Content-Length: 6\r\n\r\n",
                         HTTP1_E_CL_CONFLICT);
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
                         HTTP1_E_CL_CONFLICT);
        const char *bad_cl[] = {"+5", "-5", "5 5", "0x10", "", "5,", ",5", "5,,5", "1e3", "5;"};
        for (size_t i = 0; i < sizeof(bad_cl) / sizeof(bad_cl[0]); i++) {
                char buf[128];
                snprintf(buf, sizeof(buf),
                         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n", bad_cl[i]);
                expect_req_error(buf, HTTP1_E_CONTENT_LENGTH);
        }
        /* whitespace around the value is OWS and fine */
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:  7 \r\n\r\n") > 0);
        assert_int_equal(msg.content_length, 7);
        /* space before the colon on Transfer-Encoding must not be ignored */
        expect_req_error("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
                         HTTP1_E_HEADER_NAME);
        for (int e = 1; e < HTTP1_E_COUNT; e++) {
                assert_true(strlen(http1_error_str((enum http1_error)e)) > 0);
                int st = http1_error_status((enum http1_error)e);
                assert_true(st >= 400 && st <= 505);
        }
}

static void test_bounds(void **state)
{
        (void)state;
        struct http1_limits lim;
        http1_limits_default(&lim);
        assert_int_equal(lim.max_head, 65536);
        assert_int_equal(lim.max_headers, 100);
        lim.max_head = 200;
        lim.max_line = 64;
        lim.max_headers = 3;
        char buf[1024];

        /* request line over max_line: 414, found before the CRLF arrives */
        memset(buf, 'a', sizeof(buf));
        memcpy(buf, "GET /", 5);
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head(buf, 64, &lim, &msg), 0);
        assert_int_equal(http1_parse_request_head(buf, 65, &lim, &msg), -EPROTO);
        assert_int_equal(msg.error, HTTP1_E_LINE_TOO_LONG);
        assert_int_equal(http1_error_status(msg.error), 414);

        /* a field line over max_line: 431 */
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nX: %070d\r\n\r\n", 1);
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head(buf, (size_t)n, &lim, &msg), -EPROTO);
        assert_int_equal(msg.error, HTTP1_E_HEAD_TOO_LARGE);
        assert_int_equal(http1_error_status(msg.error), 431);

        /* exactly max_headers fields is fine, one more is not */
        n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n");
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head(buf, (size_t)n, &lim, &msg), n);
        n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head(buf, (size_t)n, &lim, &msg), -EPROTO);
        assert_int_equal(msg.error, HTTP1_E_TOO_MANY_HEADERS);

        /* whole head over max_head: 431 even while lines are short and no end seen */
        lim.max_headers = 100;
        size_t len = 0;
        len += (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\n");
        while (len < 300)
                len += (size_t)snprintf(buf + len, sizeof(buf) - len, "X-Pad: %08zu\r\n", len);
        http1_msg_reset(&msg);
        int rc = 0;
        size_t k;
        for (k = 1; k <= len && rc == 0; k++)
                rc = http1_parse_request_head(buf, k, &lim, &msg);
        assert_int_equal(rc, -EPROTO);
        assert_int_equal(msg.error, HTTP1_E_HEAD_TOO_LARGE);
        assert_true(k - 1 <= lim.max_head + 1);
        /* a head of exactly max_head bytes passes */
        memset(buf, 0, sizeof(buf));
        n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\nX: ");
        while (n < 196)
                buf[n++] = 'v';
        memcpy(buf + n, "\r\n\r\n", 4);
        lim.max_line = 200;
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head(buf, 200, &lim, &msg), 200);
        http1_msg_reset(&msg);
        lim.max_head = 199;
        assert_int_equal(http1_parse_request_head(buf, 200, &lim, &msg), -EPROTO);
        /* once failed, stays failed */
        assert_int_equal(http1_parse_request_head(buf, 200, &lim, &msg), -EPROTO);

        /* limits over the table capacity are refused */
        lim.max_headers = HTTP1_HEADERS_CAP + 1;
        http1_msg_reset(&msg);
        assert_int_equal(http1_parse_request_head("GET / HTTP/1.0\r\n\r\n", 18, &lim, &msg),
                         -EPROTO);
}

/* ---- responses ---- */

static void test_responses(void **state)
{
        (void)state;
        const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nServer: s\r\n\r\n";
        assert_int_equal(resp(r, HTTP1_M_GET), (int)strlen(r));
        assert_int_equal(msg.status, 200);
        assert_slice(msg.reason, "OK");
        assert_int_equal(msg.body, HTTP1_BODY_LENGTH);
        assert_int_equal(msg.content_length, 42);
        assert_true(msg.keep_alive);
        /* HEAD: no body whatever the headers say */
        assert_true(resp(r, HTTP1_M_HEAD) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(resp("HTTP/1.1 204 No Content\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(msg.keep_alive);
        assert_true(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", HTTP1_M_GET) >
                    0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(resp("HTTP/1.1 100 Continue\r\n\r\n", HTTP1_M_PUT) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: upgrade\r\n\r\n",
                         HTTP1_M_GET) > 0);
        assert_true(msg.upgrade);
        assert_true(resp("HTTP/1.1 200 Connection established\r\n\r\n", HTTP1_M_CONNECT) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_CHUNKED);
        assert_true(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_UNTIL_CLOSE);
        assert_false(msg.keep_alive);
        assert_true(resp("HTTP/1.1 200 OK\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.body, HTTP1_BODY_UNTIL_CLOSE);
        assert_false(msg.keep_alive);
        assert_true(resp("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", HTTP1_M_GET) > 0);
        assert_false(msg.keep_alive);
        assert_true(resp("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.reason.n, 0);
        assert_int_equal(msg.body, HTTP1_BODY_NONE);
        assert_true(resp("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n", HTTP1_M_GET) > 0);
        assert_int_equal(msg.status, 503);

        expect_resp_error("HTTP/1.1 20 OK\r\n\r\n", HTTP1_E_STATUS_LINE);
        expect_resp_error("HTTP/1.1 2000 OK\r\n\r\n", HTTP1_E_STATUS_LINE);
        expect_resp_error("HTTP/1.1 099 X\r\n\r\n", HTTP1_E_STATUS_LINE);
        expect_resp_error("HTTP/1.1 abc OK\r\n\r\n", HTTP1_E_STATUS_LINE);
        expect_resp_error("HTTP/2.0 200 OK\r\n\r\n", HTTP1_E_VERSION);
        expect_resp_error("GET / HTTP/1.1\r\n\r\n", HTTP1_E_STATUS_LINE);
        expect_resp_error(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            HTTP1_E_CL_AND_TE);
        expect_resp_error("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                          HTTP1_E_CL_CONFLICT);
        expect_resp_error("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", HTTP1_E_OBS_FOLD);
}

/* ---- chunked ---- */

struct decoded {
        char data[4096];
        size_t len;
        size_t consumed;
        int rc;
        bool done;
        enum http1_error error;
};

/* Feeds body in pieces at the given cut points. */
static void decode(const char *body, size_t len, const size_t *cuts, size_t ncuts,
                   struct decoded *out)
{
        struct http1_chunked c;
        http1_chunked_init(&c, NULL);
        memset(out, 0, sizeof(*out));
        size_t start = 0;
        for (size_t p = 0; p <= ncuts && !out->done; p++) {
                size_t end = p < ncuts ? cuts[p] : len;
                /* each piece in its own allocation so overreads trip ASan */
                char *piece = malloc(end - start + 1);
                assert_non_null(piece);
                memcpy(piece, body + start, end - start);
                size_t off = 0;
                while (off < end - start) {
                        size_t doff, dlen;
                        ssize_t n =
                            http1_chunked_feed(&c, piece + off, end - start - off, &doff, &dlen);
                        if (n < 0) {
                                out->rc = (int)n;
                                out->error = c.error;
                                free(piece);
                                return;
                        }
                        assert_true(doff + dlen <= (size_t)n);
                        assert_true(out->len + dlen <= sizeof(out->data));
                        memcpy(out->data + out->len, piece + off + doff, dlen);
                        out->len += dlen;
                        off += (size_t)n;
                        out->consumed += (size_t)n;
                        if (http1_chunked_done(&c)) {
                                out->done = true;
                                break;
                        }
                        if (n == 0)
                                fail_msg("no progress at %zu", start + off);
                }
                free(piece);
                start = end;
        }
}

static void test_chunked_basic(void **state)
{
        (void)state;
        const char *b = "5\r\nhello\r\n1;ext=\"v\"\r\n \r\nA \t;x\r\n0123456789\r\n0\r\n"
                        "Trailer-A: 1\r\n\r\nGET /next";
        struct decoded d;
        decode(b, strlen(b), NULL, 0, &d);
        assert_true(d.done);
        assert_int_equal(d.rc, 0);
        assert_int_equal(d.len, 16);
        assert_memory_equal(d.data, "hello 0123456789", 16);
        assert_int_equal(d.consumed, strlen(b) - strlen("GET /next"));

        decode("0\r\n\r\n", 5, NULL, 0, &d);
        assert_true(d.done);
        assert_int_equal(d.len, 0);
        decode("00000000000000010\r\n", 20, NULL, 0, &d); /* leading zeros are fine */
        assert_false(d.done);
        assert_int_equal(d.rc, 0);
}

static void test_chunked_every_split(void **state)
{
        (void)state;
        const char *b = "3\r\nabc\r\n10\r\n0123456789abcdef\r\n1\r\nZ\r\n0\r\nX: y\r\nZ: w\r\n\r\n";
        size_t len = strlen(b);
        struct decoded d;
        for (size_t i = 0; i <= len; i++) {
                for (size_t j = i; j <= len; j += 3) {
                        size_t cuts[2] = {i, j};
                        decode(b, len, cuts, 2, &d);
                        assert_true(d.done);
                        assert_int_equal(d.consumed, len);
                        assert_int_equal(d.len, 20);
                        assert_memory_equal(d.data, "abc0123456789abcdefZ", 20);
                }
        }
        /* byte by byte */
        size_t cuts[256];
        for (size_t i = 0; i < len; i++)
                cuts[i] = i + 1;
        decode(b, len, cuts, len - 1, &d);
        assert_true(d.done);
        assert_int_equal(d.len, 20);
}

static void expect_chunk_error(const char *b, enum http1_error e)
{
        struct decoded d;
        size_t len = strlen(b);
        decode(b, len, NULL, 0, &d);
        if (d.rc != -EPROTO || d.error != e)
                fail_msg("chunked '%s': rc %d error %d (%s), want %d (%s)", b, d.rc, d.error,
                         http1_error_str(d.error), e, http1_error_str(e));
        /* the same byte by byte */
        size_t cuts[512];
        for (size_t i = 0; i + 1 < len && i < 512; i++)
                cuts[i] = i + 1;
        decode(b, len, cuts, len > 1 ? len - 1 : 0, &d);
        assert_int_equal(d.rc, -EPROTO);
        assert_int_equal(d.error, e);
}

static void test_chunked_errors(void **state)
{
        (void)state;
        expect_chunk_error("\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("g\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("-1\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("+1\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("0x10\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error(" 5\r\nhello\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("5 \r\nhello\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("5 5\r\n", HTTP1_E_CHUNK_SIZE);
        /* 2^64 + 5 would wrap to 5: overflow must be an error */
        expect_chunk_error("10000000000000005\r\nhello\r\n0\r\n\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("ffffffffffffffff\r\n", HTTP1_E_CHUNK_SIZE);
        expect_chunk_error("5\nhello\r\n", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("5\rhello\r\n", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("5\r\nhelloX\r\n", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("5\r\nhello\n0\r\n\r\n", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("5\r\nhello\r0\r\n\r\n", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("0\r\n\r\r", HTTP1_E_CHUNK_CRLF);
        expect_chunk_error("1;a\x01\r\nx\r\n", HTTP1_E_CHUNK_EXT);
        expect_chunk_error("0\r\nBad Name: x\r\n\r\n", HTTP1_E_TRAILER);
        expect_chunk_error("0\r\nNoColon\r\n\r\n", HTTP1_E_TRAILER);
        expect_chunk_error("0\r\n: v\r\n\r\n", HTTP1_E_TRAILER);
        expect_chunk_error("0\r\nA: b\r\n folded\r\n\r\n", HTTP1_E_TRAILER);
        expect_chunk_error("0\r\nA: b\x01x\r\n\r\n", HTTP1_E_TRAILER);
        /* fields that frame, route or authorize a message never come as trailers */
        expect_chunk_error("0\r\nContent-Length: 5\r\n\r\n", HTTP1_E_TRAILER_FORBIDDEN);
        expect_chunk_error("0\r\nA: b\r\ntransfer-encoding: chunked\r\n\r\n",
                           HTTP1_E_TRAILER_FORBIDDEN);
        expect_chunk_error("0\r\nHOST: evil\r\n\r\n", HTTP1_E_TRAILER_FORBIDDEN);
        expect_chunk_error("0\r\nAuthorization: x\r\n\r\n", HTTP1_E_TRAILER_FORBIDDEN);
        expect_chunk_error("0\r\nX-Forwarded-Client-Cert: By=x\r\n\r\n", HTTP1_E_TRAILER_FORBIDDEN);

        /* bounded extension and trailer */
        struct http1_limits lim;
        http1_limits_default(&lim);
        lim.max_chunk_ext = 8;
        lim.max_trailer = 16;
        struct http1_chunked c;
        size_t doff, dlen;
        http1_chunked_init(&c, &lim);
        const char *ok = "1;abcdefg\r\n";
        assert_int_equal(http1_chunked_feed(&c, ok, strlen(ok), &doff, &dlen), (ssize_t)strlen(ok));
        http1_chunked_init(&c, &lim);
        const char *bad = "1;abcdefgh\r\n";
        assert_int_equal(http1_chunked_feed(&c, bad, strlen(bad), &doff, &dlen), -EPROTO);
        assert_int_equal(c.error, HTTP1_E_CHUNK_EXT);
        http1_chunked_init(&c, &lim);
        const char *t = "0\r\nA: 0123456789abc\r\n\r\n";
        assert_int_equal(http1_chunked_feed(&c, t, strlen(t), &doff, &dlen), -EPROTO);
        assert_int_equal(c.error, HTTP1_E_TRAILER_TOO_LARGE);
        /* after an error, further input is refused */
        assert_int_equal(http1_chunked_feed(&c, "0\r\n\r\n", 5, &doff, &dlen), -EPROTO);
        /* a long run of spaces between size and ';' counts against the bound */
        http1_chunked_init(&c, &lim);
        const char *ws = "1          ;x\r\n";
        assert_int_equal(http1_chunked_feed(&c, ws, strlen(ws), &doff, &dlen), -EPROTO);
        assert_int_equal(c.error, HTTP1_E_CHUNK_EXT);
}

static void test_chunked_large_sizes(void **state)
{
        (void)state;
        /* A big chunk is streamed: the decoder reports each piece as it comes. */
        struct http1_chunked c;
        size_t doff, dlen;
        http1_chunked_init(&c, NULL);
        const char *hdr = "3fffffffffffffff\r\n";
        assert_int_equal(http1_chunked_feed(&c, hdr, strlen(hdr), &doff, &dlen),
                         (ssize_t)strlen(hdr));
        char data[1000];
        memset(data, 'x', sizeof(data));
        for (int i = 0; i < 100; i++) {
                assert_int_equal(http1_chunked_feed(&c, data, sizeof(data), &doff, &dlen),
                                 (ssize_t)sizeof(data));
                assert_int_equal(doff, 0);
                assert_int_equal(dlen, sizeof(data));
        }
        assert_int_equal(c.remaining, 0x3fffffffffffffffull - 100000);
        http1_chunked_init(&c, NULL);
        assert_int_equal(http1_chunked_feed(&c, "4000000000000000\r\n", 18, &doff, &dlen), -EPROTO);
}

/* ---- helpers and writer ---- */

static void test_helpers(void **state)
{
        (void)state;
        const char *r = "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Key: user-7\r\n"
                        "Cookie: a=1; session=\"s-9\"\r\ncookie: other=2;b=3\r\n"
                        "Accept: x\r\naccept: y\r\nX-Request-ID:\r\n\r\n";
        assert_true(req(r) > 0);
        struct http1_slice v;
        assert_int_equal(http1_header_get(&msg, "x-request-key", &v), 0);
        assert_slice(v, "user-7");
        assert_int_equal(http1_header_get(&msg, "missing", &v), -ENOENT);
        int i = http1_header_find(&msg, "ACCEPT", 0);
        assert_true(i >= 0);
        assert_slice(msg.headers[i].value, "x");
        i = http1_header_find(&msg, "accept", (size_t)i + 1);
        assert_true(i >= 0);
        assert_slice(msg.headers[i].value, "y");
        assert_int_equal(http1_header_find(&msg, "accept", (size_t)i + 1), -1);
        assert_false(http1_has_request_id(&msg)); /* empty value does not count */
        assert_int_equal(http1_cookie_get(&msg, "session", &v), 0);
        assert_slice(v, "s-9");
        assert_int_equal(http1_cookie_get(&msg, "b", &v), 0);
        assert_slice(v, "3");
        assert_int_equal(http1_cookie_get(&msg, "Session", &v), -ENOENT);
        assert_int_equal(http1_cookie_get(&msg, "ses", &v), -ENOENT);
        assert_int_equal(http1_hash_key(&msg, HTTP1_KEY_HEADER, NULL, &v), 0);
        assert_slice(v, "user-7");
        assert_int_equal(http1_hash_key(&msg, HTTP1_KEY_HEADER, "Accept", &v), 0);
        assert_slice(v, "x");
        assert_int_equal(http1_hash_key(&msg, HTTP1_KEY_COOKIE, "other", &v), 0);
        assert_slice(v, "2");
        assert_int_equal(http1_hash_key(&msg, HTTP1_KEY_HEADER, "X-Request-ID", &v), -ENOENT);
        assert_int_equal(http1_hash_key(&msg, HTTP1_KEY_COOKIE, "nope", &v), -ENOENT);
        struct http1_slice list = {"a, b ,,C", 8};
        assert_true(http1_list_has(list, "c"));
        assert_true(http1_list_has(list, "b"));
        assert_false(http1_list_has(list, "d"));
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nx-request-id: r1\r\n\r\n") > 0);
        assert_true(http1_has_request_id(&msg));
}

/* Issue 14 D11: what is normalised or refused instead of forwarded as sent. */
static void test_forward_normalised(void **state)
{
        (void)state;
        struct strbuf sb;
        strbuf_init(&sb);
        /* An absolute-form target whose authority differs from Host: origin
         * form, Host from the target (RFC 9112 3.2.2). */
        assert_true(
            req("GET http://real.svc:8080/a?b=1 HTTP/1.1\r\nHost: other\r\nAccept: x\r\n\r\n") > 0);
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data,
                            "GET /a?b=1 HTTP/1.1\r\nHost: real.svc:8080\r\nAccept: x\r\n\r\n");
        strbuf_reset(&sb);
        assert_true(req("OPTIONS http://real.svc HTTP/1.1\r\nHost: real.svc\r\n\r\n") > 0);
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data, "OPTIONS / HTTP/1.1\r\nHost: real.svc\r\n\r\n");
        /* A Content-Length list of equal values goes out as one value. */
        strbuf_reset(&sb);
        assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n"
                        "Content-Length: 5\r\n\r\n") > 0);
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n");
        /* An X-Request-ID that Connection nominates does not go out: ours does. */
        strbuf_reset(&sb);
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Request-ID\r\n"
                        "X-Request-ID: theirs\r\n\r\n") > 0);
        struct http1_forward fw = {.request_id = "ours"};
        assert_int_equal(http1_write_request_head(&msg, &fw, &sb), 0);
        assert_string_equal(sb.data, "GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: ours\r\n\r\n");
        /* Dropped fields, whatever their case. */
        strbuf_reset(&sb);
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nx-forwarded-client-cert: By=spiffe://x\r\n"
                        "A: b\r\n\r\n") > 0);
        static const char *const drop[] = {"X-Forwarded-Client-Cert"};
        struct http1_forward fd = {.drop = drop, .ndrop = 1};
        assert_int_equal(http1_write_request_head(&msg, &fd, &sb), 0);
        assert_string_equal(sb.data, "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n");
        strbuf_free(&sb);
        /* Userinfo, paths or spaces in Host are refused. */
        expect_req_error("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", HTTP1_E_BAD_HOST);
        expect_req_error("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", HTTP1_E_BAD_HOST);
        expect_req_error("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", HTTP1_E_BAD_HOST);
        assert_true(req("GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n") > 0);
}

static void test_write_request(void **state)
{
        (void)state;
        const char *r = "GET http://h/p HTTP/1.0\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
                        "Keep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: T\r\n"
                        "X-Secret: s\r\nUpgrade: h2c\r\ntraceparent: 00-abc-01\r\n"
                        "Transfer-Encoding: chunked\r\nAccept: */*\r\n\r\n";
        /* 1.0 with TE is refused; use 1.1 */
        char buf[512];
        snprintf(buf, sizeof(buf), "%s", r);
        memcpy(strstr(buf, "HTTP/1.0"), "HTTP/1.1", 8);
        assert_true(req(buf) > 0);
        struct strbuf sb;
        strbuf_init(&sb);
        struct http1_header add[] = {{{"X-Forwarded-For", 15}, {"10.0.0.1", 8}}};
        struct http1_forward fw = {.request_id = "rid-1", .add = add, .nadd = 1};
        assert_int_equal(http1_write_request_head(&msg, &fw, &sb), 0);
        assert_string_equal(sb.data, "GET /p HTTP/1.1\r\nHost: h\r\n"
                                     "traceparent: 00-abc-01\r\nTransfer-Encoding: chunked\r\n"
                                     "Accept: */*\r\nX-Request-ID: rid-1\r\n"
                                     "X-Forwarded-For: 10.0.0.1\r\n\r\n");
        /* the written head parses back to the same framing */
        static struct http1_msg back;
        http1_msg_reset(&back);
        assert_int_equal(http1_parse_request_head(sb.data, sb.len, NULL, &back), (int)sb.len);
        assert_int_equal(back.body, HTTP1_BODY_CHUNKED);
        assert_true(http1_has_request_id(&back));

        /* an existing id is kept, not duplicated; close and upgrade */
        assert_true(req("GET /ws HTTP/1.1\r\nHost: h\r\nX-Request-ID: orig\r\n"
                        "Upgrade: websocket\r\nConnection: upgrade\r\n\r\n") > 0);
        strbuf_reset(&sb);
        struct http1_forward fw2 = {.request_id = "new", .keep_upgrade = true, .close = true};
        assert_int_equal(http1_write_request_head(&msg, &fw2, &sb), 0);
        assert_string_equal(sb.data, "GET /ws HTTP/1.1\r\nHost: h\r\nX-Request-ID: orig\r\n"
                                     "Upgrade: websocket\r\nConnection: upgrade, close\r\n\r\n");
        strbuf_reset(&sb);
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data, "GET /ws HTTP/1.1\r\nHost: h\r\nX-Request-ID: orig\r\n\r\n");
        /* header injection through the id is refused */
        strbuf_reset(&sb);
        assert_true(req("GET / HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
        struct http1_forward evil = {.request_id = "a\r\nX-Evil: 1"};
        assert_int_equal(http1_write_request_head(&msg, &evil, &sb), -EINVAL);

        /* 1.0 without Host goes out as 1.1 with one; Connection cannot drop framing */
        assert_true(req("POST /p HTTP/1.0\r\nConnection: Content-Length, Host, X-A\r\n"
                        "X-A: 1\r\nContent-Length: 2\r\n\r\n") > 0);
        strbuf_reset(&sb);
        struct http1_forward fw3 = {.default_host = "backend:8080"};
        assert_int_equal(http1_write_request_head(&msg, &fw3, &sb), 0);
        assert_string_equal(sb.data, "POST /p HTTP/1.1\r\nContent-Length: 2\r\n"
                                     "Host: backend:8080\r\n\r\n");
        strbuf_reset(&sb);
        assert_true(req("GET http://a.b:1/x HTTP/1.0\r\n\r\n") > 0);
        assert_int_equal(http1_write_request_head(&msg, &fw3, &sb), 0);
        assert_string_equal(sb.data, "GET /x HTTP/1.1\r\nHost: a.b:1\r\n\r\n");
        strbuf_reset(&sb);
        assert_true(req("GET / HTTP/1.0\r\n\r\n") > 0);
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data, "GET / HTTP/1.1\r\nHost: \r\n\r\n");
        strbuf_free(&sb);

        /* fixed storage too small */
        char small[16];
        strbuf_init_static(&sb, small, sizeof(small));
        assert_int_equal(http1_write_request_head(&msg, NULL, &sb), -ENOSPC);
}

static void test_write_response(void **state)
{
        (void)state;
        assert_true(resp("HTTP/1.0 200 Fine\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                         "Content-Length: 2\r\n\r\n",
                         HTTP1_M_GET) > 0);
        struct strbuf sb;
        strbuf_init(&sb);
        assert_int_equal(http1_write_response_head(&msg, NULL, &sb), 0);
        assert_string_equal(sb.data, "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\n");
        strbuf_reset(&sb);
        assert_int_equal(http1_write_error_response(&sb, 503, "no healthy endpoint\r\nX: y", 2), 0);
        static struct http1_msg back;
        http1_msg_reset(&back);
        int rc = http1_parse_response_head(sb.data, sb.len, NULL, HTTP1_M_GET, &back);
        assert_true(rc > 0);
        assert_int_equal(back.status, 503);
        assert_false(back.keep_alive);
        struct http1_slice v;
        assert_int_equal(http1_header_get(&back, "Retry-After", &v), 0);
        assert_slice(v, "2");
        assert_int_equal(http1_header_get(&back, "X-Shunt-Reason", &v), 0);
        assert_slice(v, "no healthy endpoint  X: y");
        assert_int_equal(http1_header_get(&back, "X", &v), -ENOENT);
        assert_int_equal(back.body, HTTP1_BODY_LENGTH);
        assert_int_equal(sb.len - (size_t)rc, back.content_length);
        strbuf_reset(&sb);
        assert_int_equal(http1_write_error_response(&sb, 431, "header too large", 0), 0);
        assert_non_null(strstr(sb.data, "431 Request Header Fields Too Large\r\n"));
        assert_null(strstr(sb.data, "Retry-After"));
        assert_int_equal(http1_write_error_response(&sb, 42, "x", 0), -EINVAL);
        strbuf_reset(&sb);
        assert_int_equal(http1_write_error_response_id(&sb, 504, "slow", 0, "req-1"), 0);
        assert_non_null(strstr(sb.data, "\r\nX-Request-ID: req-1\r\n"));
        strbuf_reset(&sb);
        assert_int_equal(http1_write_error_response_id(&sb, 504, "slow", 0, "a\r\nX: y"), 0);
        assert_null(strstr(sb.data, "X-Request-ID"));
        strbuf_free(&sb);
}

/* The decimal writer of the heads (Content-Length, status) against printf. */
static void test_append_u64(void **state)
{
        (void)state;
        const uint64_t vs[] = {0, 7, 10, 200, 65535, 1000000007ull, UINT64_MAX};
        for (size_t i = 0; i < sizeof(vs) / sizeof(vs[0]); i++) {
                char want[32], got[32];
                snprintf(want, sizeof(want), "x%llu", (unsigned long long)vs[i]);
                struct strbuf sb;
                strbuf_init_static(&sb, got, sizeof(got));
                strbuf_append(&sb, "x");
                strbuf_append_u64(&sb, vs[i]);
                assert_int_equal(sb.len, strlen(want));
                assert_memory_equal(got, want, sb.len);
        }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_append_u64),
            cmocka_unit_test(test_simple_get),
            cmocka_unit_test(test_all_methods),
            cmocka_unit_test(test_absolute_form),
            cmocka_unit_test(test_http10_and_keepalive),
            cmocka_unit_test(test_bodies),
            cmocka_unit_test(test_leading_crlf_and_pipelining),
            cmocka_unit_test(test_every_split_point),
            cmocka_unit_test(test_request_errors),
            cmocka_unit_test(test_smuggling),
            cmocka_unit_test(test_bounds),
            cmocka_unit_test(test_responses),
            cmocka_unit_test(test_chunked_basic),
            cmocka_unit_test(test_chunked_every_split),
            cmocka_unit_test(test_chunked_errors),
            cmocka_unit_test(test_chunked_large_sizes),
            cmocka_unit_test(test_helpers),
            cmocka_unit_test(test_write_request),
            cmocka_unit_test(test_forward_normalised),
            cmocka_unit_test(test_write_response),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

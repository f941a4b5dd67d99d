// SPDX-License-Identifier: Apache-2.0
/* The client side of the HTTP/1.1 module (http/client.h), as the health
 * checks and shuntctl use it: the request writer refuses what would break
 * the head; the response reader gives the same answer fed at once or byte by
 * byte, skips interim responses, decodes chunked bodies, reads until close,
 * and stops at its head and body bounds with one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "http/client.h"

static void test_write(void **state)
{
        (void)state;
        struct strbuf sb;
        strbuf_init(&sb);
        assert_int_equal(http_request_write(&sb, "POST", "/log/level?x=1", "[::1]:15003",
                                            "Authorization: Bearer t\r\n", "debug", 5),
                         0);
        assert_string_equal(sb.data, "POST /log/level?x=1 HTTP/1.1\r\nHost: [::1]:15003\r\n"
                                     "Authorization: Bearer t\r\nConnection: close\r\n"
                                     "Content-Length: 5\r\n\r\ndebug");
        /* what the parser makes of it is the same request */
        struct http1_msg m;
        http1_msg_reset(&m);
        assert_true(http1_parse_request_head(sb.data, sb.len, NULL, &m) > 0);
        assert_int_equal(m.content_length, 5);
        strbuf_reset(&sb);
        static const struct {
                const char *method, *target, *host, *extra;
        } bad[] = {
            {"GET", "/a b", "h", NULL},                          /* blank in the target */
            {"GET", "/a\r\nX: y", "h", NULL},                    /* a header smuggled in */
            {"GET", "a", "h", NULL},                             /* not origin form */
            {"CONNECT", "/", "h", NULL},                         /* needs authority form */
            {"G T", "/", "h", NULL},                             /* not a token */
            {"GET", "/", "h\r\nX: y", NULL},                     /* in the Host */
            {"GET", "/", "user@h", NULL},                        /* userinfo */
            {"GET", "/", "h", "X: y"},                           /* unterminated line */
            {"GET", "/", "h", "X: y\r\n\r\nGET / HTTP/1.1\r\n"}, /* a second request */
            {"GET", "/", "h", "X: a\rb\r\n"},                    /* bare CR */
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (http_request_write(&sb, bad[i].method, bad[i].target, bad[i].host, bad[i].extra,
                                       NULL, 0) != -EINVAL)
                        fail_msg("case %zu written", i);
        /* a fixed buffer too small */
        char small[16];
        struct strbuf fixed;
        strbuf_init_static(&fixed, small, sizeof(small));
        assert_int_equal(http_request_write(&fixed, "GET", "/", "host", NULL, NULL, 0), -ENOSPC);
        strbuf_free(&sb);
}

struct outcome {
        int rc;
        int status;
        char body[256];
        char why[96];
};

/* Feeds s whole (step 0) or step bytes at a time, then the close when eof. */
static struct outcome read_resp(const char *s, size_t len, size_t max_head, size_t max_body,
                                bool head_only, size_t step, bool eof)
{
        struct http_reader r;
        struct outcome o = {0};
        http_reader_init(&r, HTTP1_M_GET, max_head, max_body, head_only);
        if (!step)
                step = len ? len : 1;
        int rc = 0;
        for (size_t off = 0; off < len && rc == 0; off += step)
                rc = http_reader_feed(&r, s + off, len - off < step ? len - off : step);
        if (rc == 0 && eof)
                rc = http_reader_eof(&r);
        o.rc = rc;
        if (r.state >= HTTP_R_BODY)
                o.status = r.head.status;
        snprintf(o.body, sizeof(o.body), "%.*s", (int)r.body.len, r.body.data ? r.body.data : "");
        snprintf(o.why, sizeof(o.why), "%s", r.why);
        http_reader_free(&r);
        return o;
}

/* The same outcome at every step size. */
static struct outcome read_all_ways(const char *s, size_t max_head, size_t max_body, bool eof)
{
        size_t len = strlen(s);
        struct outcome a = read_resp(s, len, max_head, max_body, false, 0, eof);
        for (size_t step = 1; step < len; step++) {
                struct outcome b = read_resp(s, len, max_head, max_body, false, step, eof);
                /* a body cut short by an error depends on where it was cut */
                if (a.rc != b.rc || a.status != b.status || (a.rc == 1 && strcmp(a.body, b.body)))
                        fail_msg("step %zu: rc %d/%d status %d/%d body '%s'/'%s' (%s)", step, a.rc,
                                 b.rc, a.status, b.status, a.body, b.body, b.why);
        }
        return a;
}

static void test_read(void **state)
{
        (void)state;
        struct outcome o = read_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
                                         1024, 64, false);
        assert_int_equal(o.rc, 1);
        assert_int_equal(o.status, 200);
        assert_string_equal(o.body, "hello");
        o = read_all_ways(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            1024, 64, false);
        assert_int_equal(o.rc, 1);
        assert_int_equal(o.status, 404);
        assert_string_equal(o.body, "abcde");
        o = read_all_ways("HTTP/1.0 503 Service Unavailable\r\n\r\nuntil close", 1024, 64, true);
        assert_int_equal(o.rc, 1);
        assert_int_equal(o.status, 503);
        assert_string_equal(o.body, "until close");
        o = read_all_ways("HTTP/1.1 204 No Content\r\n\r\n", 1024, 64, false);
        assert_int_equal(o.rc, 1);
        assert_string_equal(o.body, "");
}

static void test_read_errors(void **state)
{
        (void)state;
        struct outcome o;
        /* bounds: head, Content-Length, chunked and until-close bodies */
        o = read_all_ways(
            "HTTP/1.1 200 OK\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n", 32, 64,
            false);
        assert_int_equal(o.rc, -EMSGSIZE);
        assert_string_equal(o.why, "header section too large");
        o = read_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n", 1024, 64, false);
        assert_int_equal(o.rc, -EMSGSIZE);
        assert_string_equal(o.why, "response body of 65 bytes over the limit of 64");
        o = read_all_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                          "0\r\n\r\n",
                          1024, 4, false);
        assert_int_equal(o.rc, -EMSGSIZE);
        o = read_all_ways("HTTP/1.1 200 OK\r\n\r\nfive!", 1024, 4, true);
        assert_int_equal(o.rc, -EMSGSIZE);
        assert_string_equal(o.why, "response body over the limit of 4 bytes");
        /* malformed */
        o = read_all_ways("SMTP ready\r\n\r\n", 1024, 64, true);
        assert_int_equal(o.rc, -EPROTO);
        o = read_all_ways("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", 1024, 64, true);
        assert_int_equal(o.rc, -EPROTO);
        assert_string_equal(o.why, "invalid header field name");
        o = read_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                          1024, 64, true);
        assert_int_equal(o.rc, -EPROTO);
        o = read_all_ways("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1024, 64,
                          true);
        assert_int_equal(o.rc, -EPROTO);
        assert_string_equal(o.why, "malformed chunked body: invalid chunk size");
        /* cut short */
        o = read_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 1024, 64, true);
        assert_int_equal(o.rc, -EPROTO);
        assert_string_equal(o.why, "connection closed in the middle of the body");
        o = read_all_ways("HTTP/1.1 200 OK\r\nX: y", 1024, 64, true);
        assert_string_equal(o.why, "connection closed in the middle of the response head");
        o = read_resp("", 0, 1024, 64, false, 1, true);
        assert_int_equal(o.rc, -EPROTO);
        assert_string_equal(o.why, "connection closed without a response");
}

static void test_head_only(void **state)
{
        (void)state;
        /* a health check: the head decides, however large the body */
        const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\nxx";
        struct outcome o = read_resp(s, strlen(s), 1024, 0, true, 1, false);
        assert_int_equal(o.rc, 1);
        assert_int_equal(o.status, 200);
        assert_string_equal(o.body, "");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_write),
            cmocka_unit_test(test_read),
            cmocka_unit_test(test_read_errors),
            cmocka_unit_test(test_head_only),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

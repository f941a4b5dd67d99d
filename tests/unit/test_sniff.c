// SPDX-License-Identifier: Apache-2.0
/* Protocol sniffing: whole, split and truncated inputs, real captures
 * (tests/fixtures/sniff/, made by capture.py with curl, openssl s_client and
 * python grpcio) and hand-built near misses. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nghttp2/nghttp2.h>

#include "intercept/sniff.h"

#define BIG 40000

struct bytes {
        uint8_t b[BIG];
        size_t n;
};

static void put(struct bytes *o, const void *p, size_t n)
{
        assert_true(o->n + n <= sizeof(o->b));
        memcpy(o->b + o->n, p, n);
        o->n += n;
}

static void put8(struct bytes *o, unsigned v)
{
        uint8_t c = (uint8_t)v;
        put(o, &c, 1);
}

static void put16(struct bytes *o, unsigned v)
{
        put8(o, v >> 8);
        put8(o, v);
}

static void put24(struct bytes *o, unsigned v)
{
        put8(o, v >> 16);
        put16(o, v & 0xffff);
}

static void puts_(struct bytes *o, const char *s)
{
        put(o, s, strlen(s));
}

static void load(const char *name, struct bytes *o)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/sniff/%s", SHUNT_FIXTURES, name);
        FILE *f = fopen(path, "rb");
        if (!f)
                fail_msg("cannot open fixture %s", path);
        o->n = fread(o->b, 1, sizeof(o->b), f);
        fclose(f);
        assert_true(o->n > 0);
}

static struct sniff_result run(const void *p, size_t n, int eof, enum sniff_status want)
{
        struct sniff_result r;
        memset(&r, 0xa5, sizeof(r)); /* sniff must overwrite everything */
        enum sniff_status st = sniff(p, n, eof, &r);
        assert_int_equal(st, want);
        if (st == SNIFF_NEED_MORE)
                assert_int_equal(r.proto, PROTO_UNKNOWN);
        return r;
}

static void assert_same(const struct sniff_result *a, const struct sniff_result *b)
{
        assert_int_equal(a->proto, b->proto);
        assert_string_equal(a->http_method, b->http_method);
        assert_string_equal(a->sni, b->sni);
        assert_string_equal(a->alpn, b->alpn);
        assert_string_equal(a->grpc_content_type, b->grpc_content_type);
}

/* Feeds every prefix (a copy of exactly that many bytes, so ASan catches any
 * read past len) with eof unset: NEED_MORE until the decision, then always the
 * same answer as the whole input with eof set. Every prefix with eof set is
 * decided. Returns the number of bytes the decision needed (n + 1 if none). */
static size_t check_splits(const uint8_t *in, size_t n, const struct sniff_result *whole)
{
        size_t decided = n + 1;
        for (size_t k = 0; k <= n; k++) {
                uint8_t *copy = malloc(k ? k : 1);
                assert_non_null(copy);
                memcpy(copy, in, k);
                struct sniff_result r;
                enum sniff_status st = sniff(copy, k, 0, &r);
                if (st == SNIFF_DONE) {
                        if (decided > n)
                                decided = k;
                        assert_same(&r, whole);
                } else {
                        assert_int_equal(st, SNIFF_NEED_MORE);
                        if (decided <= n)
                                fail_msg("prefix %zu asks for more after deciding at %zu", k,
                                         decided);
                }
                st = sniff(copy, k, 1, &r);
                assert_int_equal(st, SNIFF_DONE);
                assert_true(r.proto > PROTO_UNKNOWN && r.proto < PROTO__COUNT);
                free(copy);
        }
        return decided;
}

static struct sniff_result whole(const struct bytes *in)
{
        return run(in->b, in->n, 1, SNIFF_DONE);
}

/* ---- HTTP/1 -------------------------------------------------------------- */

static void test_http1_captures(void **state)
{
        struct bytes in;
        load("http1_get.bin", &in);
        struct sniff_result r = whole(&in);
        assert_int_equal(r.proto, PROTO_HTTP1);
        assert_string_equal(r.http_method, "GET");
        assert_string_equal(r.sni, "");
        /* decided right after "GET /index.html?q=1 HTTP/1." */
        assert_int_equal(check_splits(in.b, in.n, &r), strlen("GET /index.html?q=1 HTTP/1."));

        load("http1_post.bin", &in);
        r = whole(&in);
        assert_int_equal(r.proto, PROTO_HTTP1);
        assert_string_equal(r.http_method, "POST");
        assert_int_equal(check_splits(in.b, in.n, &r), strlen("POST /submit HTTP/1."));
}

static void expect_http1(const char *s, const char *method)
{
        struct sniff_result r = run(s, strlen(s), 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP1);
        assert_string_equal(r.http_method, method);
        check_splits((const uint8_t *)s, strlen(s), &r);
}

static void expect_tcp_early_n(const char *s, size_t n, size_t decided_at)
{
        struct sniff_result r = run(s, n, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        size_t at = check_splits((const uint8_t *)s, n, &r);
        if (at != decided_at)
                fail_msg("\"%s\": decided TCP after %zu bytes, expected %zu", s, at, decided_at);
}

/* string literals only: the length includes embedded NULs */
#define expect_tcp_early(lit, at) expect_tcp_early_n(lit, sizeof(lit) - 1, at)

static void test_http1_methods(void **state)
{
        expect_http1("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET");
        expect_http1("HEAD /x HTTP/1.0\r\n\r\n", "HEAD");
        expect_http1("PUT /x HTTP/1.1\r\n", "PUT");
        expect_http1("DELETE /x HTTP/1.1\r\n", "DELETE");
        expect_http1("OPTIONS * HTTP/1.1\r\n", "OPTIONS");
        expect_http1("PATCH /x HTTP/1.1\r\n", "PATCH");
        expect_http1("CONNECT example.com:443 HTTP/1.1\r\n", "CONNECT");
        expect_http1("TRACE / HTTP/1.1\r\n", "TRACE");
        expect_http1("PROPFIND /dav HTTP/1.1\r\n", "PROPFIND");
        expect_http1("M-SEARCH * HTTP/1.1\r\n", "M-SEARCH");
        expect_http1("GET http://example.com/a?b=c#d HTTP/1.1\r\n", "GET");
        expect_http1("ABCDEFGHIJKLMNO / HTTP/1.1\r\n", "ABCDEFGHIJKLMNO"); /* 15: the limit */
        /* syntactically an HTTP/1 request, not the HTTP/2 preface */
        expect_http1("PRI * HTTP/1.1\r\n", "PRI");
}

static void test_http1_near_misses(void **state)
{
        /* each decided TCP at the first byte that cannot be HTTP/1 */
        expect_tcp_early("ABCDEFGHIJKLMNOP / HTTP/1.1\r\n", 16); /* 16-char method */
        expect_tcp_early(" GET / HTTP/1.1\r\n", 1);              /* no method */
        expect_tcp_early("GET  / HTTP/1.1\r\n", 5);              /* empty target */
        expect_tcp_early("GET /\x01 HTTP/1.1\r\n", 6);           /* control in target */
        expect_tcp_early("GET / HTTP/2.0\r\n", 12);              /* not 1.x */
        expect_tcp_early("GET / http/1.1\r\n", 7);               /* case-sensitive */
        expect_tcp_early("GET /\r\n", 6);                        /* HTTP/0.9 */
        expect_tcp_early("GET\t/ HTTP/1.1\r\n", 4);
        expect_tcp_early("G(T / HTTP/1.1\r\n", 2);
        /* client-first binary and text protocols that are not HTTP */
        expect_tcp_early("\x00\x00\x00\x08\x04\xd2\x16\x2f", 1); /* postgres SSLRequest */
        expect_tcp_early("*1\r\n$4\r\nPING\r\n", 3);             /* redis */
        expect_tcp_early("SSH-2.0-OpenSSH_9.2p1 Debian\r\n", 16);
        expect_tcp_early("EHLO client.example\r\n", 20);
        expect_tcp_early("set k 0 0 5\r\nhello\r\n", 7); /* memcached */
}

static void test_http1_long_line(void **state)
{
        static uint8_t line[9000];
        /* "GET /aaaa... HTTP/1." ending exactly at 8192 bytes: HTTP/1 */
        size_t total = 8192;
        memcpy(line, "GET /", 5);
        size_t tlen = total - 4 - 8; /* "GET ", " HTTP/1." */
        memset(line + 5, 'a', tlen - 1);
        memcpy(line + 4 + tlen, " HTTP/1.1\r\n", 11);
        struct sniff_result r = run(line, total, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP1);
        run(line, total - 1, 0, SNIFF_NEED_MORE);

        /* one byte longer target: TCP, decided without waiting for more */
        memset(line + 5, 'a', sizeof(line) - 5);
        r = run(line, 8200, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        r = run(line, 8192, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        run(line, 8000, 0, SNIFF_NEED_MORE);
        r = run(line, 8000, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
}

static void test_http1_truncated(void **state)
{
        const char *s = "GET /index.html HTTP/1.1\r\n";
        /* a partial request line with eof: TCP (nothing to route on) */
        struct sniff_result r = run(s, 10, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        r = run(s, strlen("GET /index.html HTTP/1"), 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        r = run(s, strlen("GET /index.html HTTP/1."), 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP1);
        run(s, 3, 0, SNIFF_NEED_MORE);
}

/* ---- empty and server-first ---------------------------------------------- */

static void test_empty(void **state)
{
        /* the server talks first: nothing from the client yet */
        run("", 0, 0, SNIFF_NEED_MORE);
        run(NULL, 0, 0, SNIFF_NEED_MORE);
        struct sniff_result r = run("", 0, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
        assert_string_equal(r.http_method, "");
        /* a client that answers a server greeting (MySQL login packet) */
        static const uint8_t mysql[] = {0x55, 0x00, 0x00, 0x01, 0x85, 0xa6, 0xff, 0x01};
        r = run(mysql, sizeof(mysql), 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
}

static void test_garbage(void **state)
{
        uint64_t x = 0x123456789abcdefull;
        static uint8_t buf[4096];
        for (int round = 0; round < 200; round++) {
                size_t n = 1 + (size_t)(x % sizeof(buf));
                for (size_t k = 0; k < n; k++) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        buf[k] = (uint8_t)x;
                }
                struct sniff_result r;
                assert_int_equal(sniff(buf, n, 1, &r), SNIFF_DONE);
                assert_true(r.proto > PROTO_UNKNOWN && r.proto < PROTO__COUNT);
                /* random bytes almost never start like a protocol we know */
                if (buf[0] != 0x16 && buf[0] != 'P' && !(buf[0] >= 'A' && buf[0] <= 'z'))
                        assert_int_equal(r.proto, PROTO_TCP);
        }
}

/* ---- HTTP/2 and gRPC ----------------------------------------------------- */

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

static void frame(struct bytes *o, unsigned len, unsigned type, unsigned flags, unsigned stream)
{
        put24(o, len);
        put8(o, type);
        put8(o, flags);
        put16(o, stream >> 16);
        put16(o, stream & 0xffff);
}

static void settings(struct bytes *o)
{
        frame(o, 6, 0x4, 0, 0);
        put16(o, 0x3); /* MAX_CONCURRENT_STREAMS */
        put16(o, 0);
        put16(o, 100);
}

/* HPACK-encodes the headers with nghttp2's deflater (which Huffman-codes a
 * string whenever that is shorter). */
static size_t hpack(uint8_t *out, size_t cap, const char *const *hdrs, size_t n)
{
        nghttp2_nv nv[16];
        assert_true(n <= 16);
        for (size_t k = 0; k < n; k++) {
                const char *colon = strchr(hdrs[k] + 1, '=');
                nv[k].name = (uint8_t *)hdrs[k];
                nv[k].namelen = (size_t)(colon - hdrs[k]);
                nv[k].value = (uint8_t *)colon + 1;
                nv[k].valuelen = strlen(colon + 1);
                nv[k].flags = NGHTTP2_NV_FLAG_NONE;
        }
        nghttp2_hd_deflater *d;
        assert_int_equal(nghttp2_hd_deflate_new(&d, 4096), 0);
        ssize_t len = nghttp2_hd_deflate_hd(d, out, cap, nv, n);
        nghttp2_hd_deflate_del(d);
        assert_true(len > 0);
        return (size_t)len;
}

static const char *const grpc_headers[] = {
    "content-type=application/grpc+proto",
    ":method=POST",
    ":scheme=http",
    ":path=/pkg.Svc/Call",
    ":authority=svc:50051",
    "te=trailers",
};

static void test_h2_captures(void **state)
{
        struct bytes in;
        load("h2_prior_knowledge.bin", &in);
        struct sniff_result r = whole(&in);
        assert_int_equal(r.proto, PROTO_HTTP2);
        assert_string_equal(r.grpc_content_type, "");
        size_t at = check_splits(in.b, in.n, &r);
        /* decided once curl's first HEADERS frame is complete, not at the preface */
        assert_true(at > 24 + 9);
        assert_true(at <= in.n);

        load("grpc_unary.bin", &in);
        r = whole(&in);
        assert_int_equal(r.proto, PROTO_GRPC);
        assert_string_equal(r.grpc_content_type, "application/grpc");
        at = check_splits(in.b, in.n, &r);
        assert_true(at < in.n); /* before the DATA frame */
        /* with eof before the HEADERS frame is complete: plain HTTP/2 */
        r = run(in.b, at - 1, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);
        /* the preface alone: wait */
        run(in.b, 24, 0, SNIFF_NEED_MORE);
        r = run(in.b, 24, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);
        /* a partial preface with eof is not HTTP/2 */
        r = run(in.b, 23, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
}

/* Finds the first HEADERS frame of a capture: offset of its header. */
static size_t find_headers(const struct bytes *in)
{
        size_t off = 24;
        while (off + 9 <= in->n) {
                size_t len = (size_t)in->b[off] << 16 | in->b[off + 1] << 8 | in->b[off + 2];
                if (in->b[off + 3] == 0x1)
                        return off;
                off += 9 + len;
        }
        fail_msg("no HEADERS frame in capture");
        return 0;
}

static void test_grpc_continuation(void **state)
{
        /* the real grpcio HEADERS frame, re-split into HEADERS + 2 CONTINUATION */
        struct bytes in, out = {.n = 0};
        load("grpc_unary.bin", &in);
        size_t h = find_headers(&in);
        size_t len = (size_t)in.b[h] << 16 | in.b[h + 1] << 8 | in.b[h + 2];
        uint8_t flags = in.b[h + 4];
        assert_false(flags & 0x8 || flags & 0x20); /* grpcio sends neither */
        unsigned stream =
            (unsigned)in.b[h + 5] << 24 | in.b[h + 6] << 16 | in.b[h + 7] << 8 | in.b[h + 8];
        const uint8_t *block = in.b + h + 9;
        size_t a = len / 3, b = len / 3;
        put(&out, in.b, h); /* preface and the frames before */
        frame(&out, (unsigned)a, 0x1, flags & ~0x4u, stream);
        put(&out, block, a);
        frame(&out, (unsigned)b, 0x9, 0, stream);
        put(&out, block + a, b);
        frame(&out, (unsigned)(len - a - b), 0x9, 0x4, stream);
        put(&out, block + a + b, len - a - b);
        put(&out, in.b + h + 9 + len, in.n - (h + 9 + len)); /* the rest (DATA) */
        struct sniff_result r = whole(&out);
        assert_int_equal(r.proto, PROTO_GRPC);
        assert_string_equal(r.grpc_content_type, "application/grpc");
        size_t at = check_splits(out.b, out.n, &r);
        assert_int_equal(at, h + 3 * 9 + len); /* the end of the last CONTINUATION */

        /* a CONTINUATION on another stream breaks the block: plain HTTP/2 */
        out.n = 0;
        put(&out, in.b, h);
        frame(&out, (unsigned)a, 0x1, flags & ~0x4u, stream);
        put(&out, block, a);
        frame(&out, (unsigned)(len - a), 0x9, 0x4, stream + 2);
        put(&out, block + a, len - a);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);
        check_splits(out.b, out.n, &r);

        /* a DATA frame where the CONTINUATION should be: plain HTTP/2 */
        out.n = 0;
        put(&out, in.b, h);
        frame(&out, (unsigned)a, 0x1, flags & ~0x4u, stream);
        put(&out, block, a);
        frame(&out, 0, 0x0, 0, stream);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);
}

static void test_grpc_huffman_padded_priority(void **state)
{
        uint8_t block[512];
        size_t blen = hpack(block, sizeof(block), grpc_headers, 6);
        /* content-type is static entry 31: literal with incremental indexing
         * (0x40 | 31), then the value's length with the Huffman bit set */
        assert_int_equal(block[0], 0x5f);
        assert_true(block[1] & 0x80);
        assert_true((size_t)(block[1] & 0x7f) < strlen("application/grpc+proto"));

        struct bytes out = {.n = 0};
        puts_(&out, PREFACE);
        settings(&out);
        frame(&out, 4, 0x8, 0, 0); /* WINDOW_UPDATE */
        put16(&out, 0);
        put16(&out, 0xffff);
        frame(&out, 8, 0x6, 0, 0); /* PING */
        put(&out, "12345678", 8);
        /* HEADERS with PADDED (7 bytes of padding) and PRIORITY */
        frame(&out, (unsigned)(1 + 5 + blen + 7), 0x1, 0x4 | 0x8 | 0x20 | 0x1, 1);
        put8(&out, 7);
        put16(&out, 0x8000);
        put16(&out, 0x0000);
        put8(&out, 200);
        put(&out, block, blen);
        put(&out, "\0\0\0\0\0\0\0", 7);
        struct sniff_result r = whole(&out);
        assert_int_equal(r.proto, PROTO_GRPC);
        assert_string_equal(r.grpc_content_type, "application/grpc+proto");
        assert_int_equal(check_splits(out.b, out.n, &r), out.n);

        /* padding longer than the payload: malformed, plain HTTP/2 */
        out.n = 0;
        puts_(&out, PREFACE);
        frame(&out, (unsigned)(1 + blen), 0x1, 0x4 | 0x8, 1);
        put8(&out, 250);
        put(&out, block, blen);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);

        /* PRIORITY flag on a frame too short to hold the priority fields */
        out.n = 0;
        puts_(&out, PREFACE);
        frame(&out, 3, 0x1, 0x4 | 0x20, 1);
        put(&out, "\0\0\0", 3);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);
}

static void h2_with_headers(struct bytes *out, const char *const *hdrs, size_t n)
{
        uint8_t block[2048];
        size_t blen = hpack(block, sizeof(block), hdrs, n);
        out->n = 0;
        puts_(out, PREFACE);
        settings(out);
        frame(out, (unsigned)blen, 0x1, 0x4, 1);
        put(out, block, blen);
}

static void test_h2_not_grpc(void **state)
{
        struct bytes out;
        const char *const json[] = {":method=POST", ":path=/api", "content-type=application/json"};
        h2_with_headers(&out, json, 3);
        struct sniff_result r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);
        assert_string_equal(r.grpc_content_type, "");
        check_splits(out.b, out.n, &r);

        const char *const almost[] = {":method=POST", "content-type=application/grpcx"};
        h2_with_headers(&out, almost, 2);
        assert_int_equal(whole(&out).proto, PROTO_HTTP2);

        const char *const none[] = {":method=GET", ":path=/", "x-content-type=application/grpc"};
        h2_with_headers(&out, none, 3);
        assert_int_equal(whole(&out).proto, PROTO_HTTP2);

        /* media types are case-insensitive; parameters are allowed */
        const char *const upper[] = {":method=POST", "content-type=Application/GRPC; charset=x"};
        h2_with_headers(&out, upper, 2);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_GRPC);
        assert_string_equal(r.grpc_content_type, "Application/GRPC; charset=x");

        /* a content-type too long for the result field: still gRPC, value dropped */
        char longct[200] = "content-type=application/grpc+";
        memset(longct + strlen(longct), 'x', 100);
        const char *const lng[] = {":method=POST", longct};
        h2_with_headers(&out, lng, 2);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_GRPC);
        assert_string_equal(r.grpc_content_type, "");

        /* a header block that is not valid HPACK (index 0 is an error) */
        out.n = 0;
        puts_(&out, PREFACE);
        frame(&out, 2, 0x1, 0x4, 1);
        put8(&out, 0x80);
        put8(&out, 0x80);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_HTTP2);
        check_splits(out.b, out.n, &r);

        /* HEADERS on stream 0 is a protocol error */
        h2_with_headers(&out, grpc_headers, 6);
        out.b[24 + 15 + 8] = 0;
        assert_int_equal(whole(&out).proto, PROTO_HTTP2);
}

static void test_h2_bounds(void **state)
{
        struct bytes out = {.n = 0};
        puts_(&out, PREFACE);
        /* a SETTINGS frame that claims more than the sniff bound: decided at
         * its frame header, no waiting */
        frame(&out, 20000, 0x4, 0, 0);
        struct sniff_result r = run(out.b, out.n, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);
        run(out.b, out.n - 1, 0, SNIFF_NEED_MORE);

        /* a huge HEADERS frame: same */
        out.n = 0;
        puts_(&out, PREFACE);
        frame(&out, SNIFF_MAX_BYTES, 0x1, 0x4, 1);
        r = run(out.b, out.n, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);

        /* many small frames before any HEADERS fill the bound: HTTP/2 */
        out.n = 0;
        puts_(&out, PREFACE);
        while (out.n < SNIFF_MAX_BYTES + 100) {
                frame(&out, 8, 0x6, 0, 0);
                put(&out, "pingping", 8);
        }
        r = run(out.b, out.n, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);
        run(out.b, SNIFF_MAX_BYTES - 1, 0, SNIFF_NEED_MORE);
        r = run(out.b, SNIFF_MAX_BYTES, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_HTTP2);

        /* the preface with one byte wrong, at each position: TCP or HTTP/1 */
        for (size_t k = 0; k < 24; k++) {
                uint8_t p[24];
                memcpy(p, PREFACE, 24);
                p[k] ^= 0x40;
                r = run(p, 24, 1, SNIFF_DONE);
                assert_true(r.proto == PROTO_TCP);
        }
}

/* ---- TLS ----------------------------------------------------------------- */

static void test_tls_captures(void **state)
{
        struct bytes in;
        load("tls_openssl.bin", &in);
        struct sniff_result r = whole(&in);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "api.example.internal");
        assert_string_equal(r.alpn, "h2,http/1.1");
        assert_string_equal(r.http_method, "");
        size_t rec = (size_t)in.b[3] << 8 | in.b[4];
        assert_int_equal(check_splits(in.b, in.n, &r), 5 + rec);

        load("tls_curl.bin", &in);
        r = whole(&in);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "web.shunt.test");
        assert_string_equal(r.alpn, "h2,http/1.1");
        check_splits(in.b, in.n, &r);

        /* truncated hello with eof: TLS, fields unknown */
        r = run(in.b, 100, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "");
        r = run(in.b, 6, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TLS);
        r = run(in.b, 5, 1, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TCP);
}

/* Re-frames one handshake message into records of at most rec bytes. */
static void records(struct bytes *out, const uint8_t *hs, size_t n, size_t rec)
{
        out->n = 0;
        for (size_t off = 0; off < n; off += rec) {
                size_t k = n - off < rec ? n - off : rec;
                put8(out, 0x16);
                put16(out, 0x0301);
                put16(out, (unsigned)k);
                put(out, hs + off, k);
        }
}

static void test_tls_multi_record(void **state)
{
        struct bytes in, out;
        load("tls_openssl.bin", &in);
        size_t rec = (size_t)in.b[3] << 8 | in.b[4];
        for (size_t size = 1; size <= rec; size += size < 8 ? 1 : 37) {
                records(&out, in.b + 5, rec, size);
                struct sniff_result r = whole(&out);
                assert_int_equal(r.proto, PROTO_TLS);
                assert_string_equal(r.sni, "api.example.internal");
                assert_string_equal(r.alpn, "h2,http/1.1");
                if (size == 1 || size == 100)
                        assert_int_equal(check_splits(out.b, out.n, &r), out.n);
        }
        /* a second record that is not handshake: TLS, the hello stops short */
        records(&out, in.b + 5, rec, 200);
        out.b[205] = 0x17;
        struct sniff_result r = whole(&out);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "");
        check_splits(out.b, out.n, &r);
        /* a second record with another (valid) record version: accepted */
        records(&out, in.b + 5, rec, 200);
        out.b[207] = 0x03;
        r = whole(&out);
        assert_string_equal(r.sni, "api.example.internal");
        /* ... but not an unknown one */
        out.b[207] = 0x09;
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "");
}

struct hello_opts {
        const char *sni;
        const char *const *alpn;
        size_t nalpn;
        int bad_ext_len;   /* an extension length past the end */
        int bad_sni_list;  /* a server_name list length that disagrees */
        int dup_sni;       /* server_name twice */
        int no_extensions; /* stop after compression methods */
        size_t pad;        /* a padding extension of this many bytes */
};

/* Builds a handshake message (type, length, body) of a ClientHello. */
static void hello(struct bytes *hs, const struct hello_opts *o)
{
        struct bytes body = {.n = 0}, ext = {.n = 0};
        put16(&body, 0x0303);
        for (int k = 0; k < 32; k++)
                put8(&body, k);
        put8(&body, 0);
        put16(&body, 4);
        put16(&body, 0x1301);
        put16(&body, 0xc02f);
        put8(&body, 1);
        put8(&body, 0);
        for (int k = 0; o->sni && k < 1 + o->dup_sni; k++) {
                size_t n = strlen(o->sni);
                put16(&ext, 0);
                put16(&ext, (unsigned)(n + 5));
                put16(&ext, (unsigned)(n + 3 + (o->bad_sni_list ? 1 : 0)));
                put8(&ext, 0);
                put16(&ext, (unsigned)n);
                puts_(&ext, o->sni);
        }
        if (o->nalpn) {
                size_t total = 0;
                for (size_t k = 0; k < o->nalpn; k++)
                        total += 1 + strlen(o->alpn[k]);
                put16(&ext, 16);
                put16(&ext, (unsigned)(total + 2));
                put16(&ext, (unsigned)total);
                for (size_t k = 0; k < o->nalpn; k++) {
                        put8(&ext, (unsigned)strlen(o->alpn[k]));
                        puts_(&ext, o->alpn[k]);
                }
        }
        put16(&ext, 0x002b); /* supported_versions */
        put16(&ext, 3);
        put8(&ext, 2);
        put16(&ext, 0x0304);
        if (o->pad) {
                put16(&ext, 21);
                put16(&ext, (unsigned)o->pad);
                for (size_t k = 0; k < o->pad; k++)
                        put8(&ext, 0);
        }
        if (o->bad_ext_len) {
                put16(&ext, 0x1234);
                put16(&ext, 50); /* but only 2 bytes follow */
                put16(&ext, 0);
        }
        if (!o->no_extensions) {
                put16(&body, (unsigned)ext.n);
                put(&body, ext.b, ext.n);
        }
        hs->n = 0;
        put8(hs, 1);
        put24(hs, (unsigned)body.n);
        put(hs, body.b, body.n);
}

static struct sniff_result tls_run(const struct hello_opts *o, size_t rec)
{
        static struct bytes hs, out;
        hello(&hs, o);
        records(&out, hs.b, hs.n, rec);
        struct sniff_result r = whole(&out);
        assert_int_equal(r.proto, PROTO_TLS);
        return r;
}

static void test_tls_fields(void **state)
{
        const char *const two[] = {"h2", "http/1.1"};
        struct hello_opts o = {.sni = "db.prod.svc.cluster.local", .alpn = two, .nalpn = 2};
        struct sniff_result r = tls_run(&o, 16384);
        assert_string_equal(r.sni, "db.prod.svc.cluster.local");
        assert_string_equal(r.alpn, "h2,http/1.1");

        struct hello_opts none = {0};
        r = tls_run(&none, 16384);
        assert_string_equal(r.sni, "");
        assert_string_equal(r.alpn, "");

        struct hello_opts noext = {.no_extensions = 1};
        r = tls_run(&noext, 16384);
        assert_string_equal(r.sni, "");

        /* more ALPN names than fit in 64 bytes: whole names only */
        const char *const many[] = {
            "h2", "http/1.1", "spdy/3.1", "a-rather-long-protocol-name-xxyy", "grpc-exp", "h3"};
        struct hello_opts m = {.alpn = many, .nalpn = 6};
        r = tls_run(&m, 16384);
        assert_string_equal(r.alpn,
                            "h2,http/1.1,spdy/3.1,a-rather-long-protocol-name-xxyy,grpc-exp");
        assert_true(strlen(r.alpn) < sizeof(r.alpn));

        /* a 255-char name does not fit sni[256] with its NUL... it does: 255 */
        char name[300];
        memset(name, 'a', 255);
        name[255] = '\0';
        struct hello_opts big = {.sni = name};
        r = tls_run(&big, 16384);
        assert_string_equal(r.sni, name);
        name[255] = 'b';
        name[256] = '\0';
        big.sni = name;
        r = tls_run(&big, 16384);
        assert_string_equal(r.sni, ""); /* 256: dropped rather than cut */

        /* malformed: TLS, both fields empty */
        struct hello_opts bad = {.sni = "x.example", .alpn = two, .nalpn = 2, .bad_ext_len = 1};
        r = tls_run(&bad, 16384);
        assert_string_equal(r.sni, "");
        assert_string_equal(r.alpn, "");
        struct hello_opts badsni = {.sni = "x.example", .bad_sni_list = 1};
        r = tls_run(&badsni, 16384);
        assert_string_equal(r.sni, "");
        struct hello_opts dup = {.sni = "x.example", .dup_sni = 1};
        r = tls_run(&dup, 16384);
        assert_string_equal(r.sni, "");
        /* a name with a control character is not copied */
        struct hello_opts ctl = {.sni = "evil\n.example"};
        r = tls_run(&ctl, 16384);
        assert_string_equal(r.sni, "");

        /* a large hello (padding) spread over records: still parsed */
        struct hello_opts padded = {.sni = "big.example", .alpn = two, .nalpn = 2, .pad = 9000};
        r = tls_run(&padded, 4000);
        assert_string_equal(r.sni, "big.example");
        assert_string_equal(r.alpn, "h2,http/1.1");
}

static void test_tls_bounds_and_near_misses(void **state)
{
        /* a hello larger than the sniff bound: TLS at once, fields empty */
        struct hello_opts huge = {.sni = "far.example", .pad = 20000};
        static struct bytes hs, out;
        hello(&hs, &huge);
        records(&out, hs.b, hs.n, 16384);
        struct sniff_result r = run(out.b, 9, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "");
        run(out.b, 8, 0, SNIFF_NEED_MORE);
        check_splits(out.b, 200, &r);
        /* a hello just under the bound that spans records past it: decided at
         * the bound with what is known */
        struct hello_opts edge = {.sni = "edge.example", .pad = SNIFF_MAX_BYTES - 200};
        hello(&hs, &edge);
        records(&out, hs.b, hs.n, 50);
        r = whole(&out);
        assert_int_equal(r.proto, PROTO_TLS);
        assert_string_equal(r.sni, "");
        run(out.b, SNIFF_MAX_BYTES - 1, 0, SNIFF_NEED_MORE);
        r = run(out.b, SNIFF_MAX_BYTES, 0, SNIFF_DONE);
        assert_int_equal(r.proto, PROTO_TLS);

        /* near misses decided TCP early */
        struct {
                const char *bytes;
                size_t n, at;
        } miss[] = {
            {"\x16\x02\x01\x00\x10\x01", 6, 2},     /* SSL 2 version */
            {"\x16\x03\x05\x00\x10\x01", 6, 3},     /* unknown minor */
            {"\x16\x03\x01\x00\x00\x01", 6, 5},     /* empty record */
            {"\x16\x03\x01\x40\x01\x01", 6, 5},     /* record over 2^14 */
            {"\x16\x03\x01\x00\x10\x02", 6, 6},     /* ServerHello */
            {"\x17\x03\x03\x00\x10\x01", 6, 1},     /* application data */
            {"\x80\x2e\x01\x03\x01\x00\x15", 7, 1}, /* SSLv2-format hello */
        };
        for (size_t k = 0; k < sizeof(miss) / sizeof(miss[0]); k++) {
                r = run(miss[k].bytes, miss[k].n, 0, SNIFF_DONE);
                assert_int_equal(r.proto, PROTO_TCP);
                size_t at = check_splits((const uint8_t *)miss[k].bytes, miss[k].n, &r);
                if (at != miss[k].at)
                        fail_msg("near miss %zu decided at %zu, expected %zu", k, at, miss[k].at);
        }
}

/* ---- names --------------------------------------------------------------- */

static void test_names(void **state)
{
        enum proto p;
        struct {
                const char *s;
                enum proto p;
        } ok[] = {
            {"HTTP", PROTO_HTTP1},  {"http", PROTO_HTTP1}, {"Http2", PROTO_HTTP2},
            {"GRPC", PROTO_GRPC},   {"tcp", PROTO_TCP},    {"TLS", PROTO_TLS},
            {"http1", PROTO_HTTP1},
        };
        for (size_t k = 0; k < sizeof(ok) / sizeof(ok[0]); k++) {
                p = PROTO_UNKNOWN;
                assert_int_equal(proto_parse(ok[k].s, &p), 0);
                assert_int_equal(p, ok[k].p);
        }
        const char *bad[] = {"", "udp", "HTTP/1.1", "https", "http3", " tcp", "tcp ", "unknown"};
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                p = PROTO_TLS;
                assert_int_equal(proto_parse(bad[k], &p), -EINVAL);
                assert_int_equal(p, PROTO_TLS);
        }
        assert_int_equal(proto_parse(NULL, &p), -EINVAL);
        /* every name reads back */
        for (int k = PROTO_TCP; k < PROTO__COUNT; k++) {
                assert_int_equal(proto_parse(proto_name((enum proto)k), &p), 0);
                assert_int_equal(p, k);
        }
        assert_string_equal(proto_name(PROTO_HTTP1), "http1");
        assert_string_equal(proto_name(PROTO_GRPC), "grpc");
        assert_string_equal(proto_name(PROTO_UNKNOWN), "unknown");
        assert_string_equal(proto_name((enum proto)99), "unknown");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_http1_captures),
            cmocka_unit_test(test_http1_methods),
            cmocka_unit_test(test_http1_near_misses),
            cmocka_unit_test(test_http1_long_line),
            cmocka_unit_test(test_http1_truncated),
            cmocka_unit_test(test_empty),
            cmocka_unit_test(test_garbage),
            cmocka_unit_test(test_h2_captures),
            cmocka_unit_test(test_grpc_continuation),
            cmocka_unit_test(test_grpc_huffman_padded_priority),
            cmocka_unit_test(test_h2_not_grpc),
            cmocka_unit_test(test_h2_bounds),
            cmocka_unit_test(test_tls_captures),
            cmocka_unit_test(test_tls_multi_record),
            cmocka_unit_test(test_tls_fields),
            cmocka_unit_test(test_tls_bounds_and_near_misses),
            cmocka_unit_test(test_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

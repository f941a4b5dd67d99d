// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for the HTTP/1.1 parser (http/http1.h).
 *
 * The input is parsed as a request head and as a response head (with the
 * default limits and with small ones), and as a chunked body. Checked for
 * any bytes:
 *  - a head parser returns need-more, a length within the input and within
 *    max_head, or -EPROTO with a known error; never anything else;
 *  - every view (method, target, names, values) lies inside the head, names
 *    are non-empty tokens and values hold no CR, LF or NUL;
 *  - framing is consistent: a length body has a Content-Length > 0 and no
 *    Transfer-Encoding, a chunked request has no Content-Length;
 *  - feeding the input in pieces (byte by byte and in uneven steps) gives the
 *    same answer as one call; a need-more answer for the whole input is also
 *    the answer for every prefix that was fed;
 *  - a parsed request written back out by the forwarding writer parses again
 *    with the same method, target and body framing;
 *  - the chunked decoder reports payload inside what it consumed, consumes
 *    nothing after the end, and gives the same payload, end and error
 *    whether fed at once or in pieces;
 *  - as the client reads a response (http/client.h: health checks,
 *    shuntctl): the same status, body and error fed at once or in pieces,
 *    the body never over its bound, a complete response only with a status;
 *  - as the admin server reads a request (admin_parse_head): a status it
 *    can send or a request with an origin-form path inside the buffer, the
 *    same answer for every prefix fed before the head completed;
 *  - a request the client writer accepts parses back with the same method
 *    and target. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/admin.h"
#include "core/strbuf.h"
#include "http/client.h"
#include "http/http1.h"

static void die(const char *what)
{
        fprintf(stderr, "fuzz_http1: %s\n", what);
        abort();
}

static bool is_tchar(unsigned char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void check_in(struct http1_slice s, const char *buf, size_t head_len, const char *what)
{
        if (s.n == 0)
                return;
        if (s.p < buf || s.p + s.n > buf + head_len)
                die(what);
}

static void check_msg(const struct http1_msg *m, const char *buf, size_t len, int rc,
                      const struct http1_limits *lim)
{
        if (rc == 0) {
                if (m->error != HTTP1_OK)
                        die("need-more with an error set");
                return;
        }
        if (rc < 0) {
                if (rc != -EPROTO || m->error <= HTTP1_OK || m->error >= HTTP1_E_COUNT)
                        die("bad error return");
                if (!http1_error_str(m->error)[0] || http1_error_status(m->error) < 400)
                        die("error without text or status");
                return;
        }
        size_t hl = (size_t)rc;
        if (hl > len || hl > lim->max_head || hl != m->head_len || m->error != HTTP1_OK)
                die("head length out of range");
        if (hl < 4 || memcmp(buf + hl - 4, "\r\n\r\n", 4) != 0)
                die("head does not end in CRLFCRLF");
        if (m->nheaders > lim->max_headers)
                die("more headers than max_headers");
        bool cl = false, te = false;
        for (size_t i = 0; i < m->nheaders; i++) {
                const struct http1_header *h = &m->headers[i];
                check_in(h->name, buf, hl, "name outside head");
                check_in(h->value, buf, hl, "value outside head");
                if (h->name.n == 0)
                        die("empty header name");
                for (size_t j = 0; j < h->name.n; j++)
                        if (!is_tchar((unsigned char)h->name.p[j]))
                                die("non-token header name");
                for (size_t j = 0; j < h->value.n; j++) {
                        char c = h->value.p[j];
                        if (c == '\r' || c == '\n' || c == '\0')
                                die("CR/LF/NUL in a value");
                }
                if (h->value.n && (h->value.p[0] == ' ' || h->value.p[h->value.n - 1] == ' '))
                        die("value not trimmed");
                cl |= http1_slice_eq_ci(h->name, "Content-Length");
                te |= http1_slice_eq_ci(h->name, "Transfer-Encoding");
        }
        if (cl && te)
                die("Content-Length and Transfer-Encoding accepted together");
        if (m->body == HTTP1_BODY_LENGTH && (!cl || m->content_length == 0))
                die("length body without Content-Length");
        if (m->body == HTTP1_BODY_CHUNKED && !te)
                die("chunked body without Transfer-Encoding");
        if (m->content_length >= (1ull << 62))
                die("content length too large");
        if (m->is_request) {
                check_in(m->method_str, buf, hl, "method outside head");
                check_in(m->target, buf, hl, "target outside head");
                check_in(m->host, buf, hl, "host outside head");
                check_in(m->authority, buf, hl, "authority outside head");
                if (m->method_str.n == 0 || m->target.n == 0)
                        die("empty method or target");
                if (m->body == HTTP1_BODY_UNTIL_CLOSE)
                        die("request body until close");
                if (m->version_minor == 1 && http1_header_find(m, "Host", 0) < 0)
                        die("1.1 request without Host accepted");
        } else {
                check_in(m->reason, buf, hl, "reason outside head");
                if (m->status < 100 || m->status > 599)
                        die("status out of range");
        }
}

static struct http1_msg one, inc, again;

static void incremental(const uint8_t *data, size_t size, const struct http1_limits *lim,
                        bool request, enum http1_method meth, size_t step, int want)
{
        const char *buf = (const char *)data;
        http1_msg_reset(&inc);
        int rc = 0;
        size_t k = 0;
        while (k < size) {
                k += step;
                if (k > size)
                        k = size;
                rc = request ? http1_parse_request_head(buf, k, lim, &inc)
                             : http1_parse_response_head(buf, k, lim, meth, &inc);
                if (rc != 0)
                        break;
        }
        if (size == 0)
                rc = request ? http1_parse_request_head(buf, 0, lim, &inc)
                             : http1_parse_response_head(buf, 0, lim, meth, &inc);
        if (rc != want)
                die("incremental result differs from one-shot");
        if (rc < 0 && inc.error != one.error)
                die("incremental error differs");
        if (rc > 0 && (inc.body != one.body || inc.content_length != one.content_length ||
                       inc.nheaders != one.nheaders || inc.keep_alive != one.keep_alive))
                die("incremental message differs");
}

static void heads(const uint8_t *data, size_t size, const struct http1_limits *lim)
{
        const char *buf = (const char *)data;
        for (int request = 0; request < 2; request++) {
                enum http1_method meth = (size && (data[0] & 1)) ? HTTP1_M_HEAD : HTTP1_M_GET;
                http1_msg_reset(&one);
                int rc = request ? http1_parse_request_head(buf, size, lim, &one)
                                 : http1_parse_response_head(buf, size, lim, meth, &one);
                check_msg(&one, buf, size, rc, lim);
                /* asking again gives the same answer */
                int rc2 = request ? http1_parse_request_head(buf, size, lim, &one)
                                  : http1_parse_response_head(buf, size, lim, meth, &one);
                if (rc2 != rc)
                        die("repeated call differs");
                incremental(data, size, lim, request, meth, 1, rc);
                incremental(data, size, lim, request, meth, 1 + (size ? data[size / 2] % 61 : 0),
                            rc);
                if (rc <= 0 || !request)
                        continue;

                /* write back and parse again */
                struct strbuf sb;
                strbuf_init(&sb);
                struct http1_forward fw = {.request_id = "fuzz-id", .close = (data[0] & 2) != 0};
                if (http1_write_request_head(&one, &fw, &sb) != 0)
                        die("writer failed");
                struct http1_limits big = *lim;
                big.max_head = sb.len + 1;
                big.max_line = sb.len + 1;
                big.max_headers = HTTP1_HEADERS_CAP;
                http1_msg_reset(&again);
                int rc3 = http1_parse_request_head(sb.data, sb.len, &big, &again);
                if (rc3 != (int)sb.len) {
                        fprintf(stderr, "rewritten head (rc %d, %s):\n%.*s\n", rc3,
                                http1_error_str(again.error), (int)sb.len, sb.data);
                        die("rewritten request does not parse");
                }
                /* An absolute-form target goes out in origin form, with Host
                 * its authority. */
                struct http1_slice want = one.target;
                bool absolute = one.form == HTTP1_T_ABSOLUTE && one.authority.n;
                if (absolute) {
                        want.p = one.authority.p + one.authority.n;
                        want.n = (size_t)(one.target.p + one.target.n - want.p);
                }
                size_t skip = absolute && (want.n == 0 || want.p[0] != '/') ? 1 : 0;
                if (again.body != one.body || again.content_length != one.content_length ||
                    again.method != one.method || !http1_has_request_id(&again) ||
                    again.target.n != want.n + skip ||
                    memcmp(again.target.p + skip, want.p, want.n) != 0 ||
                    (absolute && (again.host.n != one.authority.n ||
                                  memcmp(again.host.p, one.authority.p, again.host.n) != 0)))
                        die("rewritten request differs");
                strbuf_free(&sb);
        }
}

struct chunk_out {
        uint64_t hash;
        size_t payload;
        size_t consumed;
        bool done;
        int rc;
        enum http1_error error;
};

static void chunked(const uint8_t *data, size_t size, const struct http1_limits *lim, size_t step,
                    struct chunk_out *out)
{
        struct http1_chunked c;
        http1_chunked_init(&c, lim);
        memset(out, 0, sizeof(*out));
        out->hash = 1469598103934665603ull;
        size_t off = 0;
        while (off < size && !out->done) {
                size_t n = size - off < step ? size - off : step;
                size_t used = 0;
                while (used < n) {
                        size_t doff, dlen;
                        ssize_t r = http1_chunked_feed(&c, (const char *)data + off + used,
                                                       n - used, &doff, &dlen);
                        if (r < 0) {
                                if (r != -EPROTO || c.error <= HTTP1_OK || c.error >= HTTP1_E_COUNT)
                                        die("chunked: bad error");
                                out->rc = (int)r;
                                out->error = c.error;
                                return;
                        }
                        if ((size_t)r > n - used || doff + dlen > (size_t)r)
                                die("chunked: payload outside consumed bytes");
                        for (size_t i = 0; i < dlen; i++)
                                out->hash =
                                    (out->hash ^ data[off + used + doff + i]) * 1099511628211ull;
                        out->payload += dlen;
                        used += (size_t)r;
                        out->consumed += (size_t)r;
                        if (http1_chunked_done(&c)) {
                                out->done = true;
                                break;
                        }
                        if (r == 0)
                                die("chunked: no progress");
                }
                off += n;
        }
        if (out->payload > out->consumed)
                die("chunked: more payload than input");
}

struct client_out {
        int rc;
        int status;
        uint64_t hash;
        size_t body;
};

static void client(const uint8_t *data, size_t size, size_t max_head, size_t max_body,
                   bool head_only, size_t step, struct client_out *out)
{
        struct http_reader r;
        enum http1_method meth = (size && (data[0] & 4)) ? HTTP1_M_HEAD : HTTP1_M_GET;
        http_reader_init(&r, meth, max_head, max_body, head_only);
        int rc = 0;
        for (size_t off = 0; off < size && rc == 0; off += step) {
                size_t n = size - off < step ? size - off : step;
                rc = http_reader_feed(&r, (const char *)data + off, n);
        }
        if (rc == 0)
                rc = http_reader_eof(&r);
        if (rc != 1 && rc != -EPROTO && rc != -EMSGSIZE)
                die("client: bad return");
        if ((rc == 1) != (r.state == HTTP_R_DONE) || (rc < 0 && !r.why[0]))
                die("client: state and return disagree");
        if (r.body.len > max_body || (head_only && r.body.len))
                die("client: body over its bound");
        memset(out, 0, sizeof(*out));
        out->rc = rc;
        out->hash = 1469598103934665603ull;
        if (rc == 1) {
                if (r.head.status < 100 || r.head.status > 599 ||
                    (r.head.status < 200 && r.head.status != 101))
                        die("client: complete without a final status");
                out->status = r.head.status;
                out->body = r.body.len;
                for (size_t i = 0; i < r.body.len; i++)
                        out->hash = (out->hash ^ (uint8_t)r.body.data[i]) * 1099511628211ull;
        }
        http_reader_free(&r);
}

static void clients(const uint8_t *data, size_t size)
{
        static const struct {
                size_t head, body;
                bool head_only;
        } bounds[] = {{64 * 1024, 64 * 1024, false}, {256, 32, false}, {8192, 0, true}};
        for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++) {
                struct client_out a, x, y;
                client(data, size, bounds[b].head, bounds[b].body, bounds[b].head_only,
                       size ? size : 1, &a);
                client(data, size, bounds[b].head, bounds[b].body, bounds[b].head_only, 1, &x);
                client(data, size, bounds[b].head, bounds[b].body, bounds[b].head_only,
                       1 + (size ? data[size - 1] % 53 : 0), &y);
                if (memcmp(&a, &x, sizeof(a)) != 0 || memcmp(&a, &y, sizeof(a)) != 0)
                        die("client: result depends on how the input was split");
        }
}

/* The admin's answer for buf[0..len) (a copy: the parser writes into it). */
static int admin_once(const uint8_t *data, size_t len, size_t prefix_step)
{
        char *buf = malloc(len ? len : 1);
        if (!buf)
                die("oom");
        memcpy(buf, data, len);
        struct http1_msg *m = &again;
        http1_msg_reset(m);
        struct admin_head hd;
        char why[160] = "";
        int st = -EAGAIN;
        for (size_t k = prefix_step; st == -EAGAIN; k += prefix_step) {
                if (k > len)
                        k = len;
                st = admin_parse_head(buf, k, m, &hd, why, sizeof(why));
                if (k == len)
                        break;
        }
        if (st == 0) {
                if (hd.path < buf || hd.path >= buf + len || hd.path[0] != '/' ||
                    hd.query < hd.path || hd.query > buf + len || !hd.method[0] ||
                    hd.body_len > ADMIN_MAX_BODY || hd.head_len > len || hd.n_authorization > 4)
                        die("admin: accepted request out of bounds");
        } else if (st != -EAGAIN) {
                if (st < 400 || st > 505 || !why[0])
                        die("admin: bad refusal");
        }
        free(buf);
        return st;
}

static void admin(const uint8_t *data, size_t size)
{
        int a = admin_once(data, size, size ? size : 1);
        int b = admin_once(data, size, 1 + (size ? data[0] % 29 : 0));
        if (a != b)
                die("admin: result depends on how the input was split");
}

/* The client writer: what it accepts is one request head that parses back. */
static void writer(const uint8_t *data, size_t size)
{
        char part[3][64];
        size_t p = 0, k = 0;
        memset(part, 0, sizeof(part));
        for (size_t i = 0; i < size && p < 3; i++) {
                if (data[i] == '\n' || k == sizeof(part[0]) - 1) {
                        p++;
                        k = 0;
                        continue;
                }
                part[p][k++] = data[i] ? (char)data[i] : 'x';
        }
        struct strbuf sb;
        strbuf_init(&sb);
        if (http_request_write(&sb, part[0], part[1], part[2], "X-Fuzz: 1\r\n", "ab", 2) == 0) {
                http1_msg_reset(&again);
                int rc = http1_parse_request_head(sb.data, sb.len, NULL, &again);
                if (rc <= 0)
                        die("client writer: request does not parse");
                if (rc > 0 && (!http1_slice_eq(again.method_str, part[0]) ||
                               !http1_slice_eq(again.target, part[1]) ||
                               again.body != HTTP1_BODY_LENGTH || again.content_length != 2))
                        die("client writer: request parses differently");
        }
        strbuf_free(&sb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct http1_limits dflt, small;
        http1_limits_default(&dflt);
        small = dflt;
        small.max_head = 512;
        small.max_line = 128;
        small.max_headers = 8;
        small.max_chunk_ext = 16;
        small.max_trailer = 64;

        heads(data, size, &dflt);
        heads(data, size, &small);

        const struct http1_limits *lims[2] = {&dflt, &small};
        for (int l = 0; l < 2; l++) {
                struct chunk_out a, b, c;
                chunked(data, size, lims[l], size ? size : 1, &a);
                chunked(data, size, lims[l], 1, &b);
                chunked(data, size, lims[l], 1 + (size ? data[0] % 37 : 0), &c);
                const struct chunk_out *o[2] = {&b, &c};
                for (int j = 0; j < 2; j++)
                        if (a.hash != o[j]->hash || a.payload != o[j]->payload ||
                            a.done != o[j]->done || a.rc != o[j]->rc || a.error != o[j]->error ||
                            (a.rc == 0 && a.consumed != o[j]->consumed))
                                die("chunked: result depends on how the input was split");
        }
        clients(data, size);
        admin(data, size);
        writer(data, size);
        return 0;
}

// SPDX-License-Identifier: Apache-2.0
/* One bounded HTTP/1.1 request and response (see client.h). */
#include "http/client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Every extra line is "token: value CRLF" with no other CR or LF, so that
 * a caller's header cannot end the head or add a request. */
static bool extra_lines_ok(const char *s)
{
        while (*s) {
                const char *eol = strstr(s, "\r\n");
                if (!eol)
                        return false;
                const char *colon = memchr(s, ':', (size_t)(eol - s));
                if (!colon || !http1_is_token(s, (size_t)(colon - s)))
                        return false;
                for (const char *q = colon; q < eol; q++)
                        if (*q == '\r' || *q == '\n' || *q == '\0')
                                return false;
                s = eol + 2;
        }
        return true;
}

int http_request_write(struct strbuf *out, const char *method, const char *target, const char *host,
                       const char *extra_headers, const char *body, size_t body_len)
{
        /* Origin-form targets only, so no CONNECT (RFC 9112 3.2). */
        if (!http1_is_token(method, strlen(method)) || !strcmp(method, "CONNECT") ||
            target[0] != '/' || !http1_is_visible(target, strlen(target)) ||
            !http1_is_host(host, strlen(host)) || (extra_headers && !extra_lines_ok(extra_headers)))
                return -EINVAL;
        strbuf_appendf(out, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host);
        if (extra_headers)
                strbuf_append(out, extra_headers);
        strbuf_append(out, "Connection: close\r\n");
        if (body)
                strbuf_appendf(out, "Content-Length: %zu\r\n", body_len);
        strbuf_append(out, "\r\n");
        if (body)
                strbuf_appendn(out, body, body_len);
        if (out->truncated)
                return out->fixed ? -ENOSPC : -ENOMEM;
        return 0;
}

void http_reader_init(struct http_reader *r, enum http1_method method, size_t max_head,
                      size_t max_body, bool head_only)
{
        r->state = HTTP_R_HEAD;
        r->method = method;
        r->head_only = head_only;
        http1_limits_default(&r->lim);
        r->lim.max_head = max_head;
        if (r->lim.max_line > max_head)
                r->lim.max_line = max_head;
        r->max_body = max_body;
        http1_msg_reset(&r->head);
        r->body_left = 0;
        strbuf_init(&r->raw);
        strbuf_init(&r->body);
        r->why[0] = '\0';
}

void http_reader_free(struct http_reader *r)
{
        strbuf_free(&r->raw);
        strbuf_free(&r->body);
}

static int fail(struct http_reader *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct http_reader *r, int err, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof(r->why), fmt, ap);
        va_end(ap);
        r->state = HTTP_R_ERROR;
        return err;
}

static int body_append(struct http_reader *r, const char *p, size_t n)
{
        if (n > r->max_body - r->body.len)
                return fail(r, -EMSGSIZE, "response body over the limit of %zu bytes", r->max_body);
        strbuf_appendn(&r->body, p, n);
        if (r->body.truncated)
                return fail(r, -ENOMEM, "out of memory for the response body");
        return 0;
}

/* Body bytes; 1 when the body ended. */
static int feed_body(struct http_reader *r, const char *buf, size_t len)
{
        switch (r->head.body) {
        case HTTP1_BODY_NONE:
                return 1;
        case HTTP1_BODY_LENGTH: {
                size_t take = r->body_left < len ? (size_t)r->body_left : len;
                int rc = body_append(r, buf, take);
                if (rc < 0)
                        return rc;
                r->body_left -= take;
                return r->body_left == 0;
        }
        case HTTP1_BODY_CHUNKED:
                while (len) {
                        size_t off, n;
                        ssize_t used = http1_chunked_feed(&r->chunked, buf, len, &off, &n);
                        if (used < 0)
                                return fail(r, -EPROTO, "malformed chunked body: %s",
                                            http1_error_str(r->chunked.error));
                        int rc = body_append(r, buf + off, n);
                        if (rc < 0)
                                return rc;
                        if (http1_chunked_done(&r->chunked))
                                return 1;
                        buf += used;
                        len -= (size_t)used;
                }
                return 0;
        case HTTP1_BODY_UNTIL_CLOSE: {
                int rc = body_append(r, buf, len);
                return rc < 0 ? rc : 0;
        }
        }
        return fail(r, -EPROTO, "unknown body framing");
}

/* Parses the head in r->raw; 1 and the body bytes that followed it, 0 for more. */
static int parse_head(struct http_reader *r, size_t *rest_off)
{
        for (;;) {
                int rc = http1_parse_response_head(r->raw.data, r->raw.len, &r->lim, r->method,
                                                   &r->head);
                if (rc == 0)
                        return 0;
                if (rc < 0)
                        return fail(r,
                                    r->head.error == HTTP1_E_HEAD_TOO_LARGE ||
                                            r->head.error == HTTP1_E_TOO_MANY_HEADERS
                                        ? -EMSGSIZE
                                        : -EPROTO,
                                    "%s", http1_error_str(r->head.error));
                size_t head_len = (size_t)rc;
                if (r->head.status >= 200 || r->head.status == 101) {
                        *rest_off = head_len;
                        return 1;
                }
                /* An interim response (100 Continue, 103 Early Hints): the
                 * final one follows. */
                memmove(r->raw.data, r->raw.data + head_len, r->raw.len - head_len);
                r->raw.len -= head_len;
                http1_msg_reset(&r->head);
        }
}

int http_reader_feed(struct http_reader *r, const char *buf, size_t len)
{
        if (r->state == HTTP_R_ERROR)
                return -EPROTO;
        if (r->state == HTTP_R_DONE)
                return 1;
        if (r->state == HTTP_R_HEAD) {
                strbuf_appendn(&r->raw, buf, len);
                if (r->raw.truncated)
                        return fail(r, -ENOMEM, "out of memory for the response head");
                size_t rest = 0;
                int rc = parse_head(r, &rest);
                if (rc <= 0)
                        return rc;
                if (r->head_only) {
                        r->state = HTTP_R_DONE;
                        return 1;
                }
                r->state = HTTP_R_BODY;
                if (r->head.body == HTTP1_BODY_LENGTH) {
                        if (r->head.content_length > r->max_body)
                                return fail(r, -EMSGSIZE,
                                            "response body of %llu bytes over the limit of %zu",
                                            (unsigned long long)r->head.content_length,
                                            r->max_body);
                        r->body_left = r->head.content_length;
                } else if (r->head.body == HTTP1_BODY_CHUNKED) {
                        http1_chunked_init(&r->chunked, &r->lim);
                }
                /* The body bytes stay in raw past the head; raw is not
                 * changed again, so the head's views stay valid. */
                buf = r->raw.data + rest;
                len = r->raw.len - rest;
                r->raw.len = rest;
        }
        int rc = feed_body(r, buf, len);
        if (rc == 1)
                r->state = HTTP_R_DONE;
        return rc;
}

int http_reader_eof(struct http_reader *r)
{
        switch (r->state) {
        case HTTP_R_DONE:
                return 1;
        case HTTP_R_BODY:
                if (r->head.body == HTTP1_BODY_UNTIL_CLOSE) {
                        r->state = HTTP_R_DONE;
                        return 1;
                }
                return fail(r, -EPROTO, "connection closed in the middle of the body");
        case HTTP_R_HEAD:
                return fail(r, -EPROTO,
                            r->raw.len ? "connection closed in the middle of the response head"
                                       : "connection closed without a response");
        case HTTP_R_ERROR:
                break;
        }
        return -EPROTO;
}

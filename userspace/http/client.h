/* SPDX-License-Identifier: Apache-2.0 */
/* The client side of the HTTP/1.1 module: writes one request and reads one
 * response (head through http1.h's strict parser, body by Content-Length,
 * chunked or until close), every size bounded by the caller. No I/O: the
 * caller owns the socket and feeds what it receives, so the same code serves
 * the health checks (non-blocking, on the main loop) and shuntctl (blocking
 * with a deadline). One request per connection: requests say
 * "Connection: close". */
#ifndef SHUNT_HTTP_CLIENT_H
#define SHUNT_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/strbuf.h"
#include "http/http1.h"

/* Writes "METHOD target HTTP/1.1", Host, then extra_headers (complete
 * "Name: value\r\n" lines, or NULL), Connection: close, and with a body (not
 * NULL) Content-Length and the body. 0, -EINVAL when a part would break the
 * head (a method that is not a token, a target or host with blanks or
 * controls, an extra line that is not one field), -ENOSPC/-ENOMEM when out is
 * fixed and too small or could not grow. The target is in origin form
 * ("/path?query"), so CONNECT is refused too. */
int http_request_write(struct strbuf *out, const char *method, const char *target, const char *host,
                       const char *extra_headers, const char *body, size_t body_len);

enum http_reader_state { HTTP_R_HEAD = 0, HTTP_R_BODY, HTTP_R_DONE, HTTP_R_ERROR };

/* One response being read. head is valid from HTTP_R_BODY on (its views
 * point into raw, which is not changed after that); body holds the decoded
 * payload. */
struct http_reader {
        enum http_reader_state state;
        enum http1_method method; /* of the request: HEAD has no body */
        bool head_only;           /* done once the head is complete */
        struct http1_limits lim;
        size_t max_body;
        struct http1_msg head;
        struct http1_chunked chunked;
        uint64_t body_left; /* HTTP1_BODY_LENGTH */
        struct strbuf raw;  /* bytes up to the end of the head */
        struct strbuf body;
        char why[96]; /* one line when state is HTTP_R_ERROR */
};

/* max_head bounds the status line and header fields together, max_body the
 * decoded body. head_only: the caller wants the status and headers only (a
 * health check); the body is then neither read nor bounded. */
void http_reader_init(struct http_reader *r, enum http1_method method, size_t max_head,
                      size_t max_body, bool head_only);
void http_reader_free(struct http_reader *r);

/* Feeds received bytes. 1: the response is complete (bytes after it are
 * ignored); 0: more is needed; -EPROTO (malformed), -EMSGSIZE (over a bound)
 * or -ENOMEM, with r->why. Interim 1xx responses are skipped. */
int http_reader_feed(struct http_reader *r, const char *buf, size_t len);
/* The peer closed: 1 when that completes the response (a body read until
 * close, or one already complete), else -EPROTO with r->why. */
int http_reader_eof(struct http_reader *r);

#endif

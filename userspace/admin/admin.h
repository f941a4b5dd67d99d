/* SPDX-License-Identifier: Apache-2.0 */
/* Admin HTTP server: a small HTTP/1.1 server on the main thread's event loop.
 *
 * One request per connection; every response carries "Connection: close".
 * Bounds: 64 concurrent connections (more are answered 503 and closed),
 * 16 KiB request head (431), 1 MiB body with Content-Length (413; chunked
 * bodies get 411); heads are parsed by http/http1.h, strictly (bare LF,
 * obs-fold, conflicting lengths: 400), a read timeout per connection (5 s by default) after which
 * the connection is closed. Unknown paths get 404, a known path with another
 * method 405 with Allow; both with a JSON body {"error":"..."}. A GET route
 * also answers HEAD.
 *
 * All functions run on the loop's thread (or before the loop runs). Handlers
 * run on the loop's thread and must not block. */
#ifndef SHUNT_ADMIN_ADMIN_H
#define SHUNT_ADMIN_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/strbuf.h"
#include "http/http1.h"

#define ADMIN_MAX_CONNS               64
#define ADMIN_MAX_HEAD                (16 * 1024)
#define ADMIN_MAX_BODY                (1024 * 1024)
#define ADMIN_DEFAULT_READ_TIMEOUT_MS 5000

struct admin;

struct admin_request {
        const char *method;
        const char *path;
        const char *query; /* after '?', "" if none */
        const char *body;  /* NUL-terminated as a convenience; body_len excludes it */
        size_t body_len;
};

struct admin_conn;
struct admin_response {
        int status;               /* 200 unless the handler sets it */
        const char *content_type; /* default "application/json"; must be a static string */
        struct strbuf body;
        struct admin_conn *conn_; /* private to admin.c */
        bool stream_;             /* private: admin_respond_stream was called */
};

typedef void (*admin_handler_fn)(const struct admin_request *req, struct admin_response *resp,
                                 void *ctx);

/* Binds address (an IPv4 or IPv6 literal, "[::1]" accepted) and port (0 picks
 * a free port, see admin_port), listens and registers with loop. On failure
 * returns NULL with a message naming the address in err. */
struct admin *admin_new(struct loop *loop, const char *address, uint16_t port, char *err,
                        size_t errlen);
/* A read-only listener (the metrics port): the same server and bounds, but
 * admin_route takes GET routes only (-EPERM for others) and admin_set_token
 * refuses a token, so no request to it can change shuntd: a path it does
 * not serve is 404, another method on one it does is 405. address "::"
 * listens on every IPv6 and IPv4 address. name labels its log lines. */
struct admin *admin_new_read_only(struct loop *loop, const char *name, const char *address,
                                  uint16_t port, char *err, size_t errlen);
/* As admin_new or admin_new_read_only, serving on fd, a listening socket
 * made elsewhere (taken over from the shuntd being upgraded); fd is the
 * admin's, closed on failure too. */
struct admin *admin_new_fd(struct loop *loop, const char *name, bool read_only, int fd, char *err,
                           size_t errlen);
/* The listening socket, to hand over. */
int admin_listen_fd(const struct admin *a);
/* Exact path match; method "GET" or "POST". A second route for the same
 * method and path replaces the first. Returns 0, -EINVAL, -EPERM (not GET
 * on a read-only listener) or -ENOMEM. */
int admin_route(struct admin *a, const char *method, const char *path, admin_handler_fn fn,
                void *ctx);
/* The bound port (useful after binding port 0). */
uint16_t admin_port(const struct admin *a);
/* Time a client has to send a complete request (and to read the response)
 * before the connection is closed. Applies to connections accepted later. */
void admin_set_read_timeout_ms(struct admin *a, unsigned ms);
/* Requests that change shuntd (every method but GET and HEAD): with token
 * NULL they are refused with 403 (the default); with a token (16 to
 * ADMIN_TOKEN_MAX visible ASCII bytes) they must carry "Authorization:
 * Bearer <token>", else 401. Reading stays open. 0, -EINVAL, or -EPERM
 * (a token for a read-only listener). */
#define ADMIN_TOKEN_MAX 128
int admin_set_token(struct admin *a, const char *token);
/* A streamed response (a handler's answer whose end it does not know yet):
 * in the handler, admin_respond_stream turns the response into "200" with
 * Transfer-Encoding: chunked (resp's status is then ignored; what the
 * handler put in resp's body, if anything, is the first chunk) and
 * returns the stream, or NULL for a HEAD request or on a read-only listener
 * (answer as usual then). The handler keeps the stream and later writes
 * chunks, then ends it; the read timeout does not apply meanwhile (the
 * handler bounds the stream). on_close(ctx) is called once if the
 * connection goes (client closed, error, admin_free) before
 * admin_stream_end; the stream must not be used after either. */
struct admin_stream;
typedef void (*admin_stream_close_fn)(void *ctx);
struct admin_stream *admin_respond_stream(struct admin_response *resp, const char *content_type,
                                          admin_stream_close_fn on_close, void *ctx);
/* Queues one chunk and writes what the socket takes. 0, or -EPIPE/-ENOMEM
 * when the connection is gone (on_close has then been called). */
int admin_stream_write(struct admin_stream *st, const char *data, size_t len);
/* Bytes queued and not yet taken by the socket: the caller's bound. */
size_t admin_stream_pending(const struct admin_stream *st);
struct loop *admin_stream_loop(const struct admin_stream *st);
/* The last chunk; the connection closes once it is written (or after the
 * read timeout). on_close is not called. */
void admin_stream_end(struct admin_stream *st);
/* Closes the listener and every connection. */
void admin_free(struct admin *a);

/* A request head as the admin server reads it: http1.h's strict parser
 * with ADMIN_MAX_HEAD, then what the admin adds (origin-form targets only,
 * no chunked bodies, bodies up to ADMIN_MAX_BODY). */
struct admin_head {
        char method[16];
        char *path;  /* NUL-terminated inside the parsed buffer */
        char *query; /* after '?', "" if none; likewise */
        bool expect_continue;
        size_t body_len; /* Content-Length */
        size_t head_len;
        struct http1_slice authorization[4]; /* Authorization values (at most 4 looked at) */
        size_t n_authorization;
};
/* Parses buf[0..len), the bytes received so far (m carries the parser's
 * progress between calls: http1_msg_reset before the first). Returns 0 when
 * the head is complete and acceptable (out filled; buf is changed in place to
 * NUL-terminate path and query), -EAGAIN when more bytes are needed, or the
 * status to refuse it with (400, 411, 413, 414, 431, 501, 505) and one line
 * in why. */
int admin_parse_head(char *buf, size_t len, struct http1_msg *m, struct admin_head *out, char *why,
                     size_t whylen);

/* Helpers for handlers: sets status and a JSON body {"error":"msg"}. */
void admin_respond_error(struct admin_response *resp, int status, const char *msg);
/* Finds key in an application/x-www-form-urlencoded query string and copies
 * its decoded value into out. Returns the value's length, or -ENOENT when the
 * key is absent, -ENOSPC when the value does not fit. */
int admin_query_get(const char *query, const char *key, char *out, size_t outlen);

#endif

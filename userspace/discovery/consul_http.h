/* A small non-blocking HTTP/1.1 client for the Consul backend, driven by the
 * main loop: one GET per connection ("Connection: close"), plain TCP (no
 * TLS: Consul's HTTP API listens in clear text on 8500 by default), a
 * deadline per request, bounded headers and body. Content-Length, chunked
 * transfer coding and read-until-close bodies are understood. */
#ifndef SHUNT_DISCOVERY_CONSUL_HTTP_H
#define SHUNT_DISCOVERY_CONSUL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/loop.h"

#define CHTTP_HEADERS_MAX  (16 * 1024) /* status line and headers */
#define CHTTP_TARGET_MAX   1024        /* request target (path and query) */
#define CHTTP_REQ_HDRS_MAX 1024        /* extra request header bytes */

struct chttp_resp {
        int status;
        bool has_index;   /* an X-Consul-Index header was present */
        bool index_valid; /* ... and it was a decimal number */
        uint64_t index;   /* its value */
        const char *body; /* NUL-terminated, decoded (chunked removed) */
        size_t body_len;
};

/* Called exactly once per request unless it was cancelled. err is 0 with a
 * response, or a negative errno (-ECONNREFUSED, -ETIMEDOUT, -EMSGSIZE for a
 * response over the bounds, -EPROTO for a malformed one, ...) with resp NULL
 * and a message in why. The request is freed after the callback returns. */
typedef void (*chttp_done_fn)(void *ctx, int err, const struct chttp_resp *resp, const char *why);

struct chttp;

/* Starts GET target on to. host: the Host header value. extra_headers:
 * "Name: value\r\n" lines (may be NULL or ""). mark: SO_MARK (0 = none).
 * NULL (and err in why) if the request could not be started; the callback
 * is then not called. */
struct chttp *chttp_get(struct loop *loop, const struct sockaddr_storage *to, const char *host,
                        const char *target, const char *extra_headers, uint32_t timeout_ms,
                        size_t max_body, uint32_t mark, chttp_done_fn fn, void *ctx, char *why,
                        size_t whylen);
/* Aborts a request in flight; its callback is not called. */
void chttp_cancel(struct chttp *c);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* The Consul backend's HTTP client: GET requests to one agent over http or
 * https, on the libcurl multi machinery the Kubernetes client uses
 * (core/curlloop.h), driven by the main loop. https verifies the agent's
 * certificate against a CA file (or the system's CAs) and can present a
 * client certificate, as agents with verify_incoming on require. A deadline
 * per request, a bound on the body; SO_MARK on every socket. */
#ifndef SHUNT_DISCOVERY_CONSUL_HTTP_H
#define SHUNT_DISCOVERY_CONSUL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/loop.h"

#define CHTTP_TARGET_MAX   1024 /* request target (path and query) */
#define CHTTP_REQ_HDRS_MAX 1024 /* extra request header bytes */

struct chttp_resp {
        int status;
        bool has_index;   /* an X-Consul-Index header was present */
        bool index_valid; /* ... and it was a decimal number */
        uint64_t index;   /* its value */
        bool filtered;    /* X-Consul-Results-Filtered-By-ACLs: true */
        const char *body; /* NUL-terminated */
        size_t body_len;
};

/* Called exactly once per request unless it was cancelled. err is 0 with a
 * response, or a negative errno (-ECONNREFUSED, -ETIMEDOUT, -EMSGSIZE for a
 * body over the bound, -EPROTO for a malformed answer or a TLS failure, ...)
 * with resp NULL and one line in why. The request is freed after the
 * callback returns. */
typedef void (*chttp_done_fn)(void *ctx, int err, const struct chttp_resp *resp, const char *why);

struct chttp_client_config {
        const char *address;   /* host:port, http://host:port or https://host:port */
        const char *ca_file;   /* PEM CAs that sign the agent's certificate ("": system CAs) */
        const char *cert_file; /* PEM client certificate ("": none) ... */
        const char *key_file;  /* ... and its key */
        uint32_t mark;         /* SO_MARK (0 = none) */
};

struct chttp_client;
struct chttp;

/* Checks the address (scheme, host, port) and that the TLS files can be
 * read. NULL with one line naming the config key in err. */
struct chttp_client *chttp_client_new(const struct chttp_client_config *cfg, char *err,
                                      size_t errlen);
/* Requests run on loop from now on. 0 or -ENOMEM. */
int chttp_client_start(struct chttp_client *c, struct loop *loop);
/* Cancels what is in flight (no callbacks); NULL is fine. */
void chttp_client_free(struct chttp_client *c);
/* The base URL, "http://127.0.0.1:8500", for logs and the Host header. */
const char *chttp_client_url(const struct chttp_client *c);

/* Starts GET target (path and query). extra_headers: "Name: value\r\n"
 * lines (may be NULL or ""). NULL (and err in why) if the request could not
 * be started; the callback is then not called. */
struct chttp *chttp_get(struct chttp_client *c, const char *target, const char *extra_headers,
                        uint32_t timeout_ms, size_t max_body, chttp_done_fn fn, void *ctx,
                        char *why, size_t whylen);
/* Aborts a request in flight; its callback is not called. */
void chttp_cancel(struct chttp *r);

#endif

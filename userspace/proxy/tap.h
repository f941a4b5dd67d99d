/* SPDX-License-Identifier: Apache-2.0 */
/* The request tap: GET /tap on the admin API streams the requests that end
 * (every HTTP/1.1 request, HTTP/2 stream and gRPC call that ends in
 * reqmetrics_request) and match a filter, one JSON object per line
 * (chunked), for at most `max` requests and `seconds`.
 *
 * Workers never block or allocate for it: with no tap attached the hook is
 * one relaxed atomic load. While one is, each worker copies the requests it
 * ends into its own single-producer ring (TAP_RING_SLOTS); when the ring is
 * full the request is dropped and counted. The main thread drains the rings
 * every TAP_DRAIN_MS, matches each request against each tap's filter and
 * writes it to that tap's client, unless that client has TAP_MAX_PENDING
 * bytes unread (dropped and counted for that tap). At most TAP_MAX_SESSIONS
 * taps at once (more: 429). The rings are allocated when the first tap
 * attaches and kept. */
#ifndef SHUNT_PROXY_TAP_H
#define SHUNT_PROXY_TAP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "admin/admin.h"
#include "core/strbuf.h"

#define TAP_MAX_SESSIONS    4
#define TAP_RING_SLOTS      1024
#define TAP_DRAIN_MS        20
#define TAP_MAX_PENDING     (256 * 1024)
#define TAP_DEFAULT_MAX     100
#define TAP_MAX_MAX         100000
#define TAP_DEFAULT_SECONDS 30
#define TAP_MAX_SECONDS     600

struct tap_hub;

struct tap_hub *tap_hub_new(uint32_t workers);
/* Ends every tap ("end":"shutdown") and frees the hub (main thread). */
void tap_hub_free(struct tap_hub *h);

/* True while a tap is attached: the one load on the request path. */
static inline bool tap_attached(const struct tap_hub *h);

/* One request as the tap shows it; strings are truncated to fit. */
struct tap_event {
        uint64_t unix_ns, duration_ns;
        int status;      /* 0: none (aborted) */
        int grpc_status; /* -1: not gRPC */
        char direction[9], protocol[8], method[16];
        char authority[128], path[256];
        char source[256], destination[256]; /* SPIFFE IDs, "" when none */
        char service[128];                  /* destination "namespace/name" */
        char endpoint[64];                  /* the upstream address, "" when none */
        char request_id[64];                /* x-request-id (the client's or ours), "" when none */
        char trace_id[33], span_id[17];     /* this sidecar's span (hex), "" when tracing is off */
};

/* Worker index's ring takes ev (copied); false when it was full (counted). */
bool tap_publish(struct tap_hub *h, uint32_t worker, const struct tap_event *ev);

/* What a tap keeps: empty strings and -1 match everything. */
struct tap_filter {
        char service[128]; /* "namespace/name", or "name" in any namespace */
        char direction[9];
        char protocol[8];
        char method[16];
        char path[256];   /* a prefix */
        char source[256]; /* a prefix of the source's SPIFFE ID */
        int status;       /* an exact code, 0 for none (aborted), -1 any */
        int status_class; /* 1..5 (e.g. 5 for "5xx"), -1 any */
        uint32_t max, seconds;
};
/* The query of GET /tap: service, direction, protocol, method, path,
 * source, status (200, 5xx, none), max, seconds. 0, or -EINVAL with one
 * line in why (an unknown key, a bad value). */
int tap_filter_parse(const char *query, struct tap_filter *f, char *why, size_t whylen);
bool tap_filter_match(const struct tap_filter *f, const struct tap_event *ev);
/* One event as its JSON line (newline included). */
void tap_event_json(const struct tap_event *ev, struct strbuf *out);

/* The GET /tap handler (main thread, the admin loop). */
void tap_serve(struct tap_hub *h, const struct admin_request *req, struct admin_response *resp);

/* shunt_tap_* families. */
void tap_render(struct tap_hub *h, struct strbuf *out);

/* ---- inline ----------------------------------------------------------------- */

struct tap_hub_head {
        _Atomic uint32_t attached;
};

static inline bool tap_attached(const struct tap_hub *h)
{
        return h && atomic_load_explicit(&((const struct tap_hub_head *)(const void *)h)->attached,
                                         memory_order_relaxed) != 0;
}

#endif

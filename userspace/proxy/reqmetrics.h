/* SPDX-License-Identifier: Apache-2.0 */
/* Golden-signal metrics of proxied traffic: shunt_requests_total and
 * shunt_request_duration_seconds per HTTP/1.1 request, HTTP/2 stream and
 * gRPC call, both directions; shunt_tcp_* per byte-relayed connection.
 * Labelled by direction, source and destination workload / namespace /
 * service, response code and class, gRPC status and mTLS.
 *
 * Each worker updates its own cells (core/prom.h series sets: relaxed
 * single-writer stores, no lock); the admin thread sums them at scrape
 * time. The number of label sets per family is bounded by
 * metrics.max_series (the rest go to one "other" series, counted).
 * Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_REQMETRICS_H
#define SHUNT_PROXY_REQMETRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "proxy/proxy-int.h"

struct reqmetrics;
struct tls_conn;
struct span_ctx;

/* Sized by cfg (metrics.max_series, metrics.histogram_buckets: both taken
 * at start) for workers shards. NULL on allocation failure. */
struct reqmetrics *reqmetrics_new(const struct shunt_config *cfg, uint32_t workers);
void reqmetrics_free(struct reqmetrics *m);
/* Every family, also those with no series yet (admin thread). */
void reqmetrics_render(struct reqmetrics *m, struct strbuf *out);

/* One request, stream or call that ended (the response is out, it was
 * answered locally, or it was aborted). */
struct req_end {
        enum conn_dir dir;
        const char *protocol;      /* "http1", "http2", "grpc" */
        struct tls_conn *peer_tls; /* inbound: the client's mesh TLS, or NULL (plaintext) */
        /* Outbound: the service the destination is ("ns/name:port"; NULL or
         * "-" when none) and the request's route (the endpoint's identity and
         * whether mTLS went to it; may already be released). */
        const char *service;
        const struct route_use *route;
        /* Outbound, when neither names a service (answered locally before
         * a pick): the original destination, looked up in the route table. */
        const struct sockaddr_storage *orig_dst;
        int status;        /* HTTP status the client got; 0: none (aborted) */
        int grpc_status;   /* -1: not gRPC */
        uint64_t start_ns; /* clock_mono_ns() when the request began */
        /* The request as access logs, traces and `shuntctl tap` show it.
         * Every pointer may be NULL (unknown: a head that could not be
         * parsed), strings are NUL-terminated, valid only during the call
         * and may be truncated (path at 128 bytes). */
        uint64_t conn_id;            /* the client connection's id */
        uint32_t stream_id;          /* HTTP/2: the client's stream id; 0 for HTTP/1.1 */
        const char *method;          /* "GET" */
        const char *path;            /* the target as received ("/a?b"; gRPC "/pkg.Svc/M") */
        const char *authority;       /* Host or :authority */
        const char *request_id;      /* x-request-id, the client's or ours */
        const struct span_ctx *span; /* trace and span ids (proxy/obs.h); NULL: none */
        const struct sockaddr_storage *client;   /* the client's address */
        const struct sockaddr_storage *endpoint; /* the upstream picked; NULL/family 0: none */
        uint64_t bytes_received;                 /* from the client (forwarded upstream) */
        uint64_t bytes_sent;                     /* to the client */
        uint32_t attempts;                       /* upstream attempts */
        const char *end; /* how it ended: "done", "local", or a conn_reason_name */
};
/* The one per-request end hook: metrics, then access log and span
 * (proxy/obs.h). Every engine calls it once per request. */
void reqmetrics_request(struct worker *w, const struct req_end *r);

/* A byte-relayed (TCP) connection begins relaying: counted as opened; the
 * returned cells (NULL when there are no metrics) get its bytes as they
 * move and its end. */
_Atomic uint64_t *reqmetrics_tcp_open(struct worker *w, enum conn_dir dir,
                                      struct tls_conn *peer_tls, const struct route_use *route,
                                      bool mtls);
/* n bytes relayed: from the client (from_client) or to it. */
void reqmetrics_tcp_bytes(_Atomic uint64_t *cells, bool from_client, uint64_t n);
void reqmetrics_tcp_close(_Atomic uint64_t *cells);

#endif

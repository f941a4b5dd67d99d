/* SPDX-License-Identifier: Apache-2.0 */
/* Access logs and traces of proxied traffic (docs/observability.md).
 *
 * Both are fed from the per-request end hook (reqmetrics_request: every
 * HTTP/1.1 request, HTTP/2 stream and gRPC call, local answers included)
 * and from the end of each byte-relayed connection (obs_tcp_end).
 *
 * Workers never block on either: each worker formats its access line (a
 * fixed stack buffer) or fills its span record and pushes it into its own
 * bounded single-producer ring (core/spsc.h); a full ring drops the line
 * or span and counts it. Two threads of this module drain the rings:
 *  - the access-log writer writes lines to stdout, stderr or a file;
 *  - the span exporter batches spans and POSTs them as OTLP/HTTP JSON with
 *    a blocking libcurl easy handle (timeout tracing.timeout). Its own
 *    thread rather than the main loop's curl multi (core/curlloop): a slow
 *    or dead collector and the JSON encoding of a batch then cost the main
 *    loop (discovery, certificates, admin) nothing, and one batch in flight
 *    at a time is exactly the bound we want.
 * Private to userspace/proxy/ (and cmd/, which starts and stops it). */
#ifndef SHUNT_PROXY_OBS_H
#define SHUNT_PROXY_OBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "http/tracectx.h"

struct worker;
struct req_end;
struct tls_conn;
struct route_use;

/* Starts the writer (and, with tracing.enabled, the exporter) for the
 * process; version names the build in the spans' scope and resource.
 * Without it (unit tests) every hook below does nothing. */
int obs_start(const struct shunt_config *cfg, const char *version, char *err, size_t errlen);
/* Writes what is queued, sends the last batch (bounded by tracing.timeout)
 * and joins the threads. */
void obs_stop(void);
/* shunt_access_log_* and shunt_trace_* (admin thread). */
void obs_render_metrics(struct strbuf *out);

/* A worker's rings; obs_worker_detach when its thread has ended (the
 * writer drains what is left, then frees them). */
struct obs_worker;
void obs_worker_detach(struct obs_worker *ow);

/* The span of one request (a member of the engine's request state).
 * active: tracing is on for it (the trace headers going out are ours). */
struct span_ctx {
        uint8_t trace_id[16];
        uint8_t span_id[8];   /* ours: the next hop's parent */
        uint8_t parent_id[8]; /* all zero: a root span */
        bool sampled;         /* exported when it ends */
        bool active;
        uint8_t format; /* the B3 form (enum trace_format) forwarded besides traceparent */
};

/* Begins a request's span under in (NULL, or with a zero trace id: a new
 * trace); span->active false when tracing is off (nothing is changed).
 * b3: the B3 form the request carried (TRACE_FMT_B3_SINGLE or _MULTI, else
 * TRACE_FMT_NONE), forwarded in that form too, whichever context was used. */
void obs_trace_begin(struct worker *w, const struct trace_ctx *in, enum trace_format b3,
                     struct span_ctx *span);

/* The trace fields a request forwards: traceparent always, b3 or the
 * X-B3-* fields when the context came in that way. Fixed storage. */
#define OBS_TRACE_HDRS_MAX 5
struct obs_trace_hdrs {
        int n;
        const char *name[OBS_TRACE_HDRS_MAX];
        const char *value[OBS_TRACE_HDRS_MAX];
        size_t len[OBS_TRACE_HDRS_MAX];
        char tp[TRACEPARENT_LEN + 1], b3[B3_SINGLE_MAX_LEN + 1];
        char tid[TRACE_ID_HEX + 1], sid[SPAN_ID_HEX + 1], pid[SPAN_ID_HEX + 1];
};
void obs_trace_headers(const struct span_ctx *span, struct obs_trace_hdrs *out);
/* The incoming trace fields, lower case; they are not forwarded as
 * received when the span is active (tracestate is, untouched). */
#define OBS_TRACE_IN_FIELDS 7
extern const char *const obs_trace_in_fields[OBS_TRACE_IN_FIELDS];

/* The end hook's share (called by reqmetrics_request). */
void obs_request_end(struct worker *w, const struct req_end *r);

/* A byte-relayed connection ended (relay.c). */
struct obs_tcp_end {
        uint64_t conn_id;
        bool inbound;
        const char *protocol; /* sniffed: "tcp", "tls", ... */
        const struct sockaddr_storage *client, *orig_dst, *upstream;
        const char *service;  /* NULL or "-": none */
        const char *peer_id;  /* the client's (inbound) or endpoint's (outbound) SPIFFE ID */
        const char *locality; /* outbound: the endpoint's locality tier, NULL without tiers */
        uint64_t bytes_received, bytes_sent; /* from the client, to the client */
        uint64_t duration_ms;
        const char *end; /* conn_reason_name */
        bool error;
};
void obs_tcp_end(struct worker *w, const struct obs_tcp_end *t);

#endif

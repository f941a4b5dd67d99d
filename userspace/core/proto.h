/* SPDX-License-Identifier: Apache-2.0 */
/* Application protocols a connection can carry: declared for a service port
 * (discovery), decided by the sniffer (intercept), proxied by an engine
 * (proxy). A core type, so that none of these depends on another for it. */
#ifndef SHUNT_CORE_PROTO_H
#define SHUNT_CORE_PROTO_H

enum proto {
        PROTO_UNKNOWN = 0, /* not decided yet */
        PROTO_TCP,         /* opaque bytes */
        PROTO_HTTP1,       /* HTTP/1.0 or 1.1 request line */
        PROTO_HTTP2,       /* HTTP/2 connection preface (prior knowledge, h2c) */
        PROTO_GRPC,        /* HTTP/2 whose first request has content-type application/grpc* */
        PROTO_TLS,         /* TLS ClientHello */
        PROTO__COUNT,
};

const char *proto_name(enum proto p); /* "tcp", "http1", "http2", "grpc", "tls" */
/* Parses a declared port protocol: "HTTP"|"HTTP2"|"GRPC"|"TCP"|"TLS" (any case). */
int proto_parse(const char *s, enum proto *out);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* HTTP/2 and gRPC request-level proxying on the outbound side.
 *
 * A client connection to a service port that was sniffed (or declared) as
 * HTTP/2 or gRPC is handed over from the byte relay (relay.c, h2_engine in
 * proxy-int.h). It is then
 * served by an nghttp2 server session; every request stream gets its own
 * endpoint from the route table and goes out on an nghttp2 client session
 * to that endpoint, shared with other streams (h2c to a plain backend, or
 * h2 inside mutual TLS to the peer's shuntd). gRPC calls over one client
 * connection thus spread over the endpoints.
 *
 * Flow control is end to end: a DATA byte is consumed (its window reopened)
 * only when it has left towards the other side, so each stream buffers at
 * most one stream window and each session at most one connection window.
 *
 * Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_H2PROXY_H
#define SHUNT_PROXY_H2PROXY_H

/* The engine the relay hands such connections to (proxy-int.h: h2_engine). */

/* "OK", "CANCELLED", ... for gRPC status codes 0..16 (metrics labels). */
const char *h2proxy_grpc_code_name(int code);

#define GRPC_CODES 17

#endif

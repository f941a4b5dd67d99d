/* SPDX-License-Identifier: Apache-2.0 */
/* X-Forwarded-Client-Cert (the format Envoy writes) on the requests the
 * HTTP engines forward: one decision for HTTP/1.1 and HTTP/2.
 *
 * Only a sidecar that verified a certificate may tell an application who
 * called it. Outbound, whatever an application wrote never leaves the pod.
 * Inbound, mtls.forward_client_cert decides for a client that presented a
 * verified mesh certificate; a client without one (permissive plaintext)
 * never gets an identity set and what it sent is removed, whatever the
 * mode. Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_XFCC_H
#define SHUNT_PROXY_XFCC_H

#include <stdbool.h>
#include <stddef.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "proxy/proxy-int.h"

#define XFCC_NAME "x-forwarded-client-cert"

enum xfcc_action {
        XFCC_REMOVE, /* every XFCC field of the request is dropped */
        XFCC_KEEP,   /* forwarded as the client sent them */
        XFCC_SET,    /* dropped, then ours alone */
        XFCC_APPEND, /* one field: the client's elements, then ours */
};

/* What happens to a request's XFCC: dir of the connection, mode in force,
 * identified when the client's certificate was verified (inbound mTLS). */
enum xfcc_action xfcc_action(enum conn_dir dir, enum forward_client_cert mode, bool identified);

/* Our element for the client of tls (established, verified):
 * By=<our SPIFFE ID>;Hash=<hex SHA-256 of its certificate>;URI=<its SPIFFE
 * ID>. malloc'ed (free it), NULL when out of memory. SPIFFE IDs hold none
 * of , ; = " so no value needs quoting. */
char *xfcc_element(struct tls_conn *tls);

/* Appends one element of a comma-separated list (n bytes at v) to out. */
void xfcc_list_add(struct strbuf *out, const char *v, size_t n);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Request mirrors (a route rule's RequestMirror): a copy of a request sent
 * to another backend without waiting for it, its answer read and thrown
 * away. One set per worker (HTTP/1.1 and HTTP/2 share it), on the worker's
 * loop, bounded: at most max_in_flight copies at once, an HTTP/2 copy
 * still waiting for its request's end included (another is refused: the
 * caller counts it dropped), each holding one buffer of its head and body,
 * each gone timeout_ms after it began, answered or not. The primary
 * request never waits for a mirror and shares nothing with it after
 * mirror_send (HTTP/2: mirror_h2_send) returned. Private to
 * userspace/proxy/. */
#ifndef SHUNT_PROXY_MIRROR_INT_H
#define SHUNT_PROXY_MIRROR_INT_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct loop;
struct mirrors;
struct mirror;
struct worker;

struct mirrors *mirrors_new(struct loop *loop);
/* Closes every copy in flight. NULL is fine. */
void mirrors_free(struct mirrors *ms);
/* Sends head (a complete request head) then body to addr on a new
 * connection marked with mark. 0, or -ENOBUFS (max_in_flight copies in
 * flight), -ENOMEM, or the socket's -errno: nothing was sent. */
int mirror_send(struct mirrors *ms, const struct sockaddr_storage *addr, uint32_t mark,
                const char *head, size_t head_len, const uint8_t *body, size_t body_len,
                uint32_t max_in_flight, uint32_t timeout_ms);
uint32_t mirrors_in_flight(const struct mirrors *ms);
/* The worker's set, made on first use (NULL: out of memory); freed with
 * the worker's engines. */
struct mirrors *worker_mirrors(struct worker *w);

/* HTTP/2 (gRPC too): the copy is a stream of its own on a cleartext
 * HTTP/2 connection (prior knowledge) to addr, begun when the primary's
 * request head is routed (nv: its fields as they go upstream; body: false
 * when that head ended the request) and sent once the request is complete,
 * its body gathered meanwhile (at most max_body bytes). The connection
 * closes when the copy's stream ends (answered or reset), or timeout_ms
 * after the begin. A copy whose request is not complete by then is
 * dropped: expired(owner) says so (the owner forgets it, counts the drop).
 * NULL with *err: -ENOBUFS (max_in_flight copies), -ENOMEM. */
struct mirror *mirror_h2_begin(struct mirrors *ms, const struct sockaddr_storage *addr,
                               uint32_t mark, const nghttp2_nv *nv, size_t nvlen, bool body,
                               uint32_t max_in_flight, uint32_t max_body, uint32_t timeout_ms,
                               void (*expired)(void *owner), void *owner, int *err);
/* More of the request's body: 0, or -EMSGSIZE past max_body (then cancel). */
int mirror_h2_body(struct mirror *m, const uint8_t *p, size_t n);
/* The request is complete: connects and sends. 0, or the socket's -errno
 * (m is gone either way). */
int mirror_h2_send(struct mirror *m);
/* Not sent (the request ended short, or a bound): m is gone. */
void mirror_h2_cancel(struct mirror *m);

#endif

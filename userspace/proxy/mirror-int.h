/* SPDX-License-Identifier: Apache-2.0 */
/* Request mirrors (a route rule's RequestMirror): a copy of a request sent
 * to another backend without waiting for it, its answer read and thrown
 * away. One set per worker, on the worker's loop, bounded: at most
 * max_in_flight copies at once (another is refused: the caller counts it
 * dropped), each holding one buffer of its head and body, each closed
 * after timeout_ms answered or not. The primary request never waits for a
 * mirror and shares nothing with it after mirror_send returned. Private to
 * userspace/proxy/. */
#ifndef SHUNT_PROXY_MIRROR_INT_H
#define SHUNT_PROXY_MIRROR_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct loop;
struct mirrors;

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

#endif

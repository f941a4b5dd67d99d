/* SPDX-License-Identifier: Apache-2.0 */
/* Small helpers for IPv4/IPv6 socket addresses. */
#ifndef SHUNT_CORE_SOCKADDR_H
#define SHUNT_CORE_SOCKADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SOCKADDR_STRLEN 64 /* "[ffff:...:ffff]:65535" fits */

/* "10.0.0.1:80" or "[fd00::1]:80"; "-" for an empty address. */
const char *sockaddr_format(const struct sockaddr_storage *ss, char *buf, size_t len);
uint16_t sockaddr_port(const struct sockaddr_storage *ss);
socklen_t sockaddr_len(const struct sockaddr_storage *ss);
/* Builds an address from a literal ("0.0.0.0", "::1") and a port. 0 or -EINVAL. */
int sockaddr_from_string(const char *ip, uint16_t port, struct sockaddr_storage *out);
bool sockaddr_is_any(const struct sockaddr_storage *ss);
/* Same family, address and port (and IPv6 scope). */
bool sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

#endif

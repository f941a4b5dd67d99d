/* SPDX-License-Identifier: Apache-2.0 */
/* The DNS discovery backend (service_discovery.type dns), also the fallback
 * source of the other types (service_discovery.dns.fallback on).
 *
 * service_discovery.dns.services lists services in the file registry's
 * format, each with "dns": {"name", "type": A | AAAA | A+AAAA | SRV, "zone",
 * "region"} in place of "endpoints". Lookups go through c-ares (Debian 12's
 * 1.18: ares_query and its parsers only) on the main loop: c-ares' sockets
 * are watched by the loop's epoll (ARES_OPT_SOCK_STATE_CB), its timeouts by a
 * loop timer (ares_timeout); no thread. Each name is looked up again when the
 * smallest TTL of its answer (SRV records and their targets' addresses)
 * runs out, bounded by dns.min_ttl and dns.max_ttl.
 *
 * A and AAAA: one endpoint per address and service port (its target_port).
 * A+AAAA: both queries; a family with no records (NODATA) is fine while the
 * other has some. SRV: the records of the lowest priority value (RFC 2782),
 * weight as the endpoint's weight (0 counts as 1); their targets are looked
 * up with A and AAAA. An SRV service has one port, without target_port: its
 * target port is the records' port (when they differ, the most common one;
 * the others are left out, logged and counted).
 *
 * A lookup that fails (NXDOMAIN, no records, SERVFAIL, REFUSED, a timeout
 * after dns.attempts tries, a bad answer) is handled like a registry outage:
 * the name's last endpoints stay with their health, the source is stale while
 * any name fails, and the name is retried with the watches' backoff (1 s
 * doubling to 30 s, ±20 %).
 *
 * Fallback: next to type file, kubernetes or consul, the same lookups run
 * all the time, but their endpoints enter the registry only while another
 * source has been failing for dns.fallback_after (checked every second);
 * they are withdrawn when every source syncs again. */
#ifndef SHUNT_DISCOVERY_DNS_H
#define SHUNT_DISCOVERY_DNS_H

#include "discovery/backend.h"

#define DNS_MAX_SERVICES      256 /* entries of service_discovery.dns.services */
#define DNS_MAX_TARGETS       64  /* SRV targets used per name */
#define DNS_MAX_ADDRS         256 /* endpoints per name */
#define DNS_HOST_MAX          256 /* a name, with its NUL */
#define DNS_FALLBACK_CHECK_MS 1000

extern const struct disc_backend_ops disc_dns_ops;

/* The fallback source next to the backend of another type (backend.c): NULL
 * with *err empty when dns.fallback is off; NULL with err set on a bad
 * configuration. */
void *disc_dns_fallback_new(struct disc_registry *r, const struct shunt_config *cfg, char *err,
                            size_t errlen);

/* For tests: the smallest TTL of the answer records of type `type` in a DNS
 * message, or -1 when it has none or is malformed. */
long disc_dns_min_ttl(const unsigned char *msg, int len, int type);

#endif

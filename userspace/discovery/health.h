/* SPDX-License-Identifier: Apache-2.0 */
/* Active health checks: for every service whose health check is tcp or
 * http, each endpoint is probed every interval from the main loop, and each
 * result is fed to disc_registry_active_result (which applies the healthy
 * and unhealthy thresholds and merges the result with the source's health).
 *
 * TCP: a non-blocking connect that completes within the timeout.
 * HTTP: connect, "GET <path> HTTP/1.1" with "Host: <service name>" and
 * "Connection: close"; a well-formed response head (http/client.h, at most
 * DISC_HEALTH_RESP_MAX bytes) with a 2xx or 3xx status within the timeout
 * passes; the body is not read.
 *
 * The checker follows the registry: it compares the snapshot version on
 * every scan (every DISC_HEALTH_SCAN_MS while there are checks, every
 * DISC_HEALTH_IDLE_MS otherwise), starts probing new endpoints at once and
 * forgets removed ones. At most DISC_HEALTH_MAX_INFLIGHT probes run at a
 * time; probes that are due beyond that wait for the next scan (shedding is
 * logged at most once per DISC_HEALTH_SHED_LOG_MS and counted).
 *
 * Results are published (disc_registry_publish) at the end of the scan in
 * which they arrived, so an endpoint whose probe fails with an unhealthy
 * threshold of 1 is out of rotation within one interval plus one scan. */
#ifndef SHUNT_DISCOVERY_HEALTH_H
#define SHUNT_DISCOVERY_HEALTH_H

#include <stdint.h>

#include "core/loop.h"
#include "core/strbuf.h"
#include "discovery/registry.h"

#define DISC_HEALTH_MAX_INFLIGHT 256
#define DISC_HEALTH_SCAN_MS      50
#define DISC_HEALTH_IDLE_MS      500
#define DISC_HEALTH_SHED_LOG_MS  10000
#define DISC_HEALTH_RESP_MAX     8192 /* bytes of an HTTP check's response head */
#define DISC_HEALTH_MAX_TARGETS  DISC_DEFAULT_MAX_ENDPOINTS

struct disc_checker;

struct disc_health_stats {
        uint64_t probes;    /* started */
        uint64_t passed;    /* results ok */
        uint64_t failed;    /* results failed (refused, timeout, bad status) */
        uint64_t shed;      /* due probes postponed because of the in-flight bound */
        uint32_t targets;   /* endpoints currently checked */
        uint32_t in_flight; /* probes running now */
};

/* Starts checking on loop. mark: SO_MARK for the probes' sockets (0 = none),
 * so that they are not captured by shunt's own redirect rules. NULL with a
 * log message on failure. */
struct disc_checker *disc_health_start(struct disc_registry *r, struct loop *loop, uint32_t mark);
/* Cancels the probes and frees the checker (NULL is fine). Call before the
 * loop and the registry are freed. */
void disc_health_stop(struct disc_checker *h);
void disc_health_get_stats(const struct disc_checker *h, struct disc_health_stats *out);
/* {"targets":N,"in_flight":N,"probes":N,"passed":N,"failed":N,"shed":N} */
void disc_health_render(const struct disc_checker *h, struct strbuf *sb);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* The Consul discovery backend (service_discovery.type consul).
 *
 * A blocking query on /v1/catalog/services learns which services exist; each
 * service then has its own blocking query on /v1/health/service/<name>
 * (index and wait, dc from service_discovery.consul.datacenter, the ACL
 * token from ...consul.token sent as X-Consul-Token). X-Consul-Index is
 * handled as the Consul documentation asks: an index that goes backwards
 * resets the watch to 0 (a non-blocking query), an index of 0 is treated as
 * 1 (and logged), a query that returns with the same index (wait timeout)
 * changed nothing, queries of one watch are at least CONSUL_MIN_GAP_MS apart
 * and rate-limited after quick answers (below). Whether an answer changed
 * anything is decided by its body, not its index: an index that moves with
 * the same data (writes elsewhere, idempotent writes) applies nothing, and
 * data that changes under a stuck index (0) is still applied.
 *
 * The wait is 30 s (env SHUNT_CONSUL_WAIT, 1..600 seconds); a request is
 * given the wait plus Consul's jitter (wait/16) plus 5 s before it times out.
 *
 * Mapping: one registry service per Consul service (namespace "default");
 * one endpoint per instance at Service.Address (Node.Address when empty) and
 * Service.Port. Aggregated check status (node and service checks): passing →
 * healthy, weight 100 × Weights.Passing; warning → healthy, weight 100 ×
 * Weights.Warning (Consul's own proxies do the same; both default to 1); a
 * weight of 0 or critical → unhealthy (out of rotation). Virtual addresses come
 * from Service.TaggedAddresses "consul-virtual" (Consul 1.13+ transparent
 * proxy virtual IPs) and "virtual" (an address set by the operator, or the
 * ClusterIP consul-k8s stores there); its Port, when set and the instances
 * share one port, is the service port. A tag "protocol=http|http2|grpc|tcp"
 * declares the port protocol. Locality (Consul 1.17+) gives region and zone;
 * the region falls back to the node's datacenter.
 *
 * The agent is reached at service_discovery.consul.address: host:port or
 * http://host:port (plain HTTP, port 8500 by default), or https://host:port
 * (port 8501 by default) verified against ...consul.ca_file, presenting
 * ...consul.cert_file/key_file when set (consul_http.h). The ACL token comes
 * from ...consul.token or ...consul.token_file.
 *
 * Errors (connection refused or reset, timeouts, HTTP errors, 403 on a bad
 * token, invalid JSON) retry with backoff: 1 s doubling to 30 s, ±20 %
 * jitter, per watch. While any watch fails, the source is stale: the last
 * endpoints stay with their last health. */
#ifndef SHUNT_DISCOVERY_CONSUL_H
#define SHUNT_DISCOVERY_CONSUL_H

#include "discovery/backend.h"

#define CONSUL_DEFAULT_ADDRESS "127.0.0.1:8500"
#define CONSUL_WAIT_S          30 /* wait= of blocking queries */
#define CONSUL_MAX_WATCHES                                                                         \
        150 /* services watched (Consul's default per-client limit is 200 connections) */
#define CONSUL_MAX_INSTANCES  4096       /* instances used per service */
#define CONSUL_RESP_MAX       (8u << 20) /* bytes of one response body */
#define CONSUL_MIN_GAP_MS     100
#define CONSUL_BACKOFF_MIN_MS 1000
#define CONSUL_BACKOFF_MAX_MS 30000
#define CONSUL_WEIGHT_SCALE   100
/* Queries that follow an answer which came back before half the wait ran out
 * (a change, or churn: new index, same data) take a token from a bucket of
 * CONSUL_RATE_BURST refilled one per CONSUL_RATE_REFILL_MS, as Consul's
 * blocking-query guidance asks: a couple of quick deliveries at once, then
 * polling at a bounded rate instead of a busy loop. */
#define CONSUL_RATE_BURST     2
#define CONSUL_RATE_REFILL_MS 5000
#define CONSUL_WAIT_MAX_S     600 /* Consul's own cap on wait= */

extern const struct disc_backend_ops disc_consul_ops;

/* For tests: the backoff after `failures` consecutive failures (1, 2, ...),
 * with jitter drawn from r in [0, 1). */
uint32_t consul_backoff_ms(uint32_t failures, double r);

struct consul_bucket {
        bool init;
        uint64_t tokens_milli; /* thousandths of a token */
        uint64_t last_ms;      /* refilled up to this time */
};

/* For tests: takes a token at now_ms; the delay (ms) before the query may
 * go, 0 when a token was there. */
uint32_t consul_bucket_take(struct consul_bucket *b, uint64_t now_ms);

#endif

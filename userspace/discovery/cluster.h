/* SPDX-License-Identifier: Apache-2.0 */
/* Several registries at once: service_discovery.clusters.
 *
 * Each cluster (name, region, zone, priority, trust_domain, type file,
 * kubernetes or consul with that type's settings) runs its own backend,
 * unchanged, into a registry of its own that no worker reads. Every
 * CLUSTER_POLL_MS the federation looks at those registries; when one
 * published a new version or its staleness changed, it merges them into the
 * daemon's registry, one source per cluster ("cluster:<name>"):
 *
 *  - a service is "namespace/name" across clusters (the same service in each);
 *    its definition (ports, identity, mTLS, load balancing, health check) is
 *    that of the cluster with the lowest priority value (ties: the first
 *    listed); its virtual addresses are those of every cluster (at most
 *    DISC_MAX_VIPS); a cluster whose ports differ is a conflict, logged when
 *    it appears and counted, and its endpoints serve only the ports they
 *    match;
 *  - every cluster's endpoints stay its own: an endpoint's key carries the
 *    cluster (the same address in two clusters is two endpoints), its zone
 *    and region default to the cluster's;
 *  - a cluster whose registry fails (unreachable API, refused token, broken
 *    file) keeps its last endpoints, stale, while the others keep updating.
 *
 * /endpoints?service=name.namespace.cluster shows one cluster's endpoints. */
#ifndef SHUNT_DISCOVERY_CLUSTER_H
#define SHUNT_DISCOVERY_CLUSTER_H

#include "discovery/backend.h"

#define CLUSTER_MAX              8
#define CLUSTER_POLL_MS          200
#define CLUSTER_PRIORITY_DEFAULT 100

extern const struct disc_backend_ops disc_cluster_ops;

#endif

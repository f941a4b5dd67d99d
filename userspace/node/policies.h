/* SPDX-License-Identifier: Apache-2.0 */
/* Node mode: each meshed pod's own authorization policies.
 *
 * A sidecar applies the AuthorizationPolicy objects of its pod's namespace
 * whose selector matches its pod's labels (authz/authz.h). The node agent
 * serves pods of many namespaces, so it does the same per pod: one watch of
 * AuthorizationPolicy objects in every namespace (the sink below, replacing
 * the sidecar's watch of one namespace), the objects kept per namespace
 * (an authz_kube each), and for every READY pod (a node_pods observer) its
 * own built set:
 *
 *   the file's policies (mtls.allow, authorization.policies: the agent's
 *   configuration, for every pod it serves)
 *   + the objects of the pod's namespace that select the pod's labels.
 *
 * A pod's set is built once when something it depends on changes: the pod
 * becomes READY or its labels change, an object of its namespace is added,
 * changed or removed, a (re)list completes, the file is reloaded. changed()
 * then tells the capture, which publishes the set to the pod's own proxy:
 * a connection looks nothing up but its proxy's snapshot pointer.
 *
 * Each pod's decisions are counted in counters of its own (outliving the
 * pod's last set, authz_stats_new), summed into the daemon's too; each set
 * carries its pod as scope, named in the audit line of every refusal.
 *
 * Fail closed where the policies that apply are not all known:
 *   - before the first complete list, node_policies_get returns NULL: the
 *     capture keeps the pod's listeners from accepting (its connects wait,
 *     then are refused past node.accept_timeout), as it does without
 *     routes or a certificate;
 *   - a namespace that held more than AUTHZ_MAX_POLICIES objects (one
 *     refused), a namespace that found no room (more than
 *     NODE_POLICY_MAX_NAMESPACES with objects), a pod whose labels cannot be
 *     read, or a set that cannot be built: the pod's set refuses every
 *     connection (a deny-all policy "node/<why>"), logged, until a complete
 *     list fits again or the pod changes.
 *
 * All functions run on the main loop's thread. */
#ifndef SHUNT_NODE_POLICIES_H
#define SHUNT_NODE_POLICIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/strbuf.h"
#include "discovery/k8s.h"
#include "node/pods.h"

#define NODE_POLICY_MAX_NAMESPACES 1024 /* namespaces with objects held */

struct authz;
struct authz_stats;
struct node_policies;

struct node_policies_config {
        /* Kubernetes' objects are watched (authorization.kubernetes): until
         * their first complete list no pod has a set. false: the file's only. */
        bool kubernetes;
        struct authz_stats *total; /* the daemon's counters (outlive np), or NULL */
        /* Pod gen's set was built anew (node_policies_get gives it). */
        void (*changed)(void *ctx, uint64_t gen);
        void *ctx;
};

/* NULL without memory. */
struct node_policies *node_policies_new(const struct node_policies_config *c);
void node_policies_free(struct node_policies *np);
/* Registers np as an observer of pods (before the capture: a pod's set
 * exists when the capture hears of it). 0 or -errno. */
int node_policies_attach(struct node_policies *np, struct node_pods *pods);
/* The observer attach registers (unit tests call it directly). */
const struct node_pods_observer *node_policies_observer(struct node_policies *np);
/* The watch of AuthorizationPolicy objects in every namespace, for
 * k8s_backend_add_sink; it lives as long as np. */
const struct k8s_object_sink *node_policies_sink(struct node_policies *np);
/* The file's policies for every pod (a reference is taken; NULL: none). */
void node_policies_set_file(struct node_policies *np, struct authz *file);
/* The set of READY pod gen (borrowed: valid until the next change), NULL
 * when the pod is unknown or the first list has not completed. */
struct authz *node_policies_get(struct node_policies *np, uint64_t gen);

/* {"kubernetes":..,"listed":..,"namespaces":[authz_kube_render...],"counters":{..}} */
void node_policies_render(struct node_policies *np, struct strbuf *sb);
/* Prometheus: shunt_node_pod_authz_decisions_total{namespace,pod,decision},
 * shunt_node_authz_builds_total, shunt_node_authz_fail_closed_pods. */
void node_policies_render_metrics(struct node_policies *np, struct strbuf *sb);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Node mode, item 1: the meshed pods scheduled on this node, and for each
 * its identity (namespace, name, uid, service account), IPs, cgroup v2
 * directory and network namespace (held open as an fd).
 *
 * Fed by a Pods watch of the kubernetes backend (fieldSelector
 * spec.nodeName=<node>, labelSelector shunt.io/meshed=true; see
 * node_pods_sink), resolved on the node from kubelet's cgroup layout
 * (node_cgroup_candidates) and a process of the pod (cgroup.procs ->
 * /proc/<pid>/ns/net).
 *
 * Why a watch and not a CNI plugin (for now): the watch needs nothing on
 * the node but shuntd and gives identity (service account) and the meshed
 * label with the pod; its race is that the API can show a pod before its
 * sandbox exists (no cgroup, no netns yet: the pod is PENDING and retried
 * every NODE_RETRY_MS for at most node.resolve_timeout, counted) and keeps a
 * deleted pod until the kubelet has stopped it (we hold the netns fd, so the
 * namespace outlives the processes until DELETED). A CNI plugin is told at
 * the exact moment the sandbox's netns is created and removed, but knows no
 * labels or service account (it would still need the API, racing the other
 * way: netns first, identity later), must be installed into the node's CNI
 * chain and must not fail pod creation when shuntd is down.
 *
 * States: PENDING (no cgroup or no process yet) -> READY (netns held) ->
 * removed on DELETED; PENDING past the bound -> FAILED (retried again when
 * the pod object changes); HOST_NETWORK pods share the node's namespace and
 * are listed, never resolved. A READY pod is revalidated every
 * NODE_REVALIDATE_MS: a new sandbox (another netns inode) is taken, counted.
 * A name that comes back with another uid is a new pod: everything held for
 * the old one is released first.
 *
 * All functions run on the loop's thread. */
#ifndef SHUNT_NODE_PODS_H
#define SHUNT_NODE_PODS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/loop.h"
#include "core/strbuf.h"
#include "discovery/k8s.h"
#include "inject/inject.h"

#define NODE_MAX_PODS_LIMIT 4096 /* node.max_pods upper bound */
#define NODE_RETRY_MS       500  /* PENDING pods are looked at this often */
#define NODE_REVALIDATE_MS  5000 /* READY pods' netns checked this often */
#define NODE_MAX_CHILD_DIRS 64   /* container cgroups looked at per pod */
#define NODE_PATH_MAX       512
#define NODE_CGROUP_LAYOUTS 6 /* candidates of node_cgroup_candidates */

/* A pod the injector gave a sidecar (a container or init container of this
 * name) has its own proxy: node mode's capture and identities leave it
 * alone. With sidecar.captureFrom=node the injector adds no capture init
 * container and puts the capture's settings (a JSON object of the init
 * container's environment) in this annotation instead: the node agent
 * installs that capture in the pod's namespace (node/sidecar_capture.h). */
#define NODE_SIDECAR_CONTAINER      "shunt-proxy"
#define NODE_CAPTURE_ANNOTATION     "shunt.io/node-capture"
#define NODE_CAPTURE_ANNOTATION_MAX 4096 /* longer: the pod object is refused */

enum node_pod_state {
        NODE_POD_PENDING = 0,
        NODE_POD_READY,
        NODE_POD_FAILED,
        NODE_POD_HOST_NETWORK,
};

const char *node_pod_state_name(enum node_pod_state s);

/* The cgroup directories (relative to the cgroup v2 mount) kubelet may have
 * made for pod uid with QoS class qos ("Guaranteed", "Burstable",
 * "BestEffort"; NULL or unknown: every class), systemd driver first. Fills
 * out[0..n) and returns n, or -EINVAL (uid not a plain uid). */
int node_cgroup_candidates(const char *uid, const char *qos, char out[][NODE_PATH_MAX], int max);

struct node_pods;

struct node_pods_config {
        const char *node;        /* spec.nodeName to watch */
        uint32_t max_pods;       /* pods held at most; more are shed */
        uint32_t resolve_ms;     /* how long a PENDING pod is retried */
        const char *cgroup_root; /* NULL: cgroup2_mount() of /proc/self/mountinfo */
        const char *proc_root;   /* NULL: "/proc" */
};

/* What the node's other parts (capture, identities) are told of a pod: valid
 * during the call only (copy what is kept; dup netns_fd to keep it). */
struct node_pod_info {
        const char *ns, *name, *uid, *sa;
        const char (*ips)[48];
        uint32_t n_ips;
        const char *cgroup_root; /* the cgroup v2 mount */
        const char *cgroup;      /* the pod's directory, relative to cgroup_root */
        int netns_fd;            /* borrowed */
        uint64_t netns_ino;
        uint64_t gen;             /* new for every READY episode: the key of what is held for it */
        bool sidecar;             /* has its own proxy (NODE_SIDECAR_CONTAINER) */
        const char *node_capture; /* NODE_CAPTURE_ANNOTATION's value, NULL when absent */
        const char *labels;       /* metadata.labels as compact JSON, NULL when absent */
};

#define NODE_MAX_OBSERVERS 4

/* Told, on the loop's thread, when a pod becomes READY (ready) and when a
 * READY pod stops being one (gone: deleted, unmeshed, shed, replaced by a pod
 * of the same name, turned host-network, its sandbox replaced, or the table
 * freed). A new sandbox, or a change of sidecar or node_capture, is
 * gone(old) then ready(new), with a new gen. Every ready is followed by
 * exactly one gone with the same gen. render (may be NULL) appends
 * `,"key":value` members to each pod's object in node_pods_render (every
 * state; gen 0 when not READY). The callbacks must not call back into np. */
struct node_pods_observer {
        void (*ready)(void *ctx, const struct node_pod_info *pod);
        void (*gone)(void *ctx, const struct node_pod_info *pod);
        void (*render)(void *ctx, const struct node_pod_info *pod, struct strbuf *sb);
        /* Optional: a complete list of the node's pods was applied (after
         * every ready and gone it caused); shed: some were left out
         * (node.max_pods). node_pods_has_uid may be called from it. */
        void (*synced)(void *ctx, bool shed);
        /* Optional: a READY pod's labels changed (same gen: nothing else
         * of the pod is affected; authorization policies select by them). */
        void (*updated)(void *ctx, const struct node_pod_info *pod);
        void *ctx;
};

/* NULL with err on failure (no cgroup v2 mount, bad config, no memory). */
struct node_pods *node_pods_new(const struct node_pods_config *cfg, char *err, size_t errlen);
void node_pods_free(struct node_pods *np);
/* Adds an observer (copied); pods already READY are told at once.
 * 0, or -ENOSPC past NODE_MAX_OBSERVERS. */
int node_pods_observe(struct node_pods *np, const struct node_pods_observer *obs);
/* Arms the retry timer. */
int node_pods_start(struct node_pods *np, struct loop *loop);
/* The sink to add to the kubernetes backend (k8s_backend_add_sink); it
 * lives as long as np. */
const struct k8s_object_sink *node_pods_sink(struct node_pods *np);

/* Applies one Pod object (a list item or a watch event), as the sink does.
 * 0, or -EINVAL with err (the object is skipped). */
int node_pods_apply(struct node_pods *np, const cJSON *obj, bool deleted, char *err, size_t errlen);
/* Resolves PENDING pods and revalidates READY ones due at now_ms (the
 * timer calls it; tests call it directly). */
void node_pods_resolve(struct node_pods *np, uint64_t now_ms);

size_t node_pods_count(const struct node_pods *np);
/* Whether a pod of this uid is held (any state). */
bool node_pods_has_uid(const struct node_pods *np, const char *uid);
/* The state of pod ns/name, or -ENOENT. */
int node_pods_state(const struct node_pods *np, const char *ns, const char *name);
/* Opens a pod's object in a JSON array (a comma first unless first):
 * {"namespace":ns,"name":name,"uid":uid,"service_account":sa (left open). */
void node_pod_render_head(struct strbuf *sb, bool first, const char *ns, const char *name,
                          const char *uid, const char *sa);
/* {"node":..., "max_pods":..., "counters":{...}, "pods":[...]} */
void node_pods_render(const struct node_pods *np, struct strbuf *sb);
/* Prometheus: shunt_node_pods{state}, shunt_node_pods_shed_total,
 * _failed_total, _retries_total, _netns_changed_total. */
void node_pods_render_metrics(const struct node_pods *np, struct strbuf *sb);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Node-side capture for sidecar pods (chart value sidecar.captureFrom=node):
 * where Pod Security "baseline" refuses an init container with NET_ADMIN,
 * the injector adds none and writes the capture's settings into the pod's
 * shunt.io/node-capture annotation (the environment `shuntd init` would have
 * had). When such a pod becomes READY in the node's pod table, the node agent
 * enters its network namespace and installs the same iptables capture
 * `shuntd init` installs there (config_load of those settings,
 * ipt_options_from_config, ipt_install); the pod's proxy runs with
 * `--capture init` and finds it.
 *
 * Only pods with a sidecar and the annotation: node-mode pods (no sidecar)
 * are node/capture's, sidecar pods without the annotation have their own init
 * container. Only the keys INJECT_NODE_CAPTURE_KEYS are accepted and only
 * iptables capture (an eBPF capture would need the pod's own pins).
 *
 * The capture is removed when the pod leaves the table (deleted, unmeshed,
 * annotation removed, new sandbox) while its namespace is still held; when
 * the node agent exits (node_sidecar_capture_keep) nothing the pods rely on
 * is removed: a restarted agent finds its chains and replaces them in one
 * iptables-restore transaction.
 *
 * Runs on the loop's thread; ipt_install forks iptables-restore from that
 * thread while it is in the pod's namespace (setns affects this thread only),
 * bounded by iptables.c's command timeout. */
#ifndef SHUNT_NODE_SIDECAR_CAPTURE_H
#define SHUNT_NODE_SIDECAR_CAPTURE_H

#include "core/config.h"
#include "core/loop.h"
#include "core/strbuf.h"
#include "node/pods.h"

struct node_sidecar_capture;

/* The installer: 0, or negative errno with err. Replaceable for unit tests;
 * the default enters the namespace and runs ipt_install / ipt_remove. */
struct node_sidecar_ops {
        int (*install)(void *ctx, int netns_fd, const struct shunt_config *cfg, char *err,
                       size_t errlen);
        int (*remove)(void *ctx, int netns_fd, char *err, size_t errlen);
        void *ctx;
};

/* A failed install (not bad settings) is tried again this often (times the
 * attempts made), up to this many attempts in all. */
#define NODE_SIDECAR_RETRY_MS 1000
#define NODE_SIDECAR_ATTEMPTS 5

/* ops NULL: the real one. NULL when out of memory. */
struct node_sidecar_capture *node_sidecar_capture_new(const struct node_sidecar_ops *ops);
/* Registers as an observer of np (pods already READY are handled at once);
 * retries run on loop (NULL: a failed install is final). */
int node_sidecar_capture_attach(struct node_sidecar_capture *sc, struct node_pods *np,
                                struct loop *loop);
/* The node agent is exiting: what is installed stays (call before
 * node_pods_free, whose gone calls then remove nothing). */
void node_sidecar_capture_keep(struct node_sidecar_capture *sc);
/* After node_pods_free. */
void node_sidecar_capture_free(struct node_sidecar_capture *sc);

/* The settings of a shunt.io/node-capture annotation as a configuration:
 * 0, or -EINVAL with err (not a JSON object of strings, a key outside
 * INJECT_NODE_CAPTURE_KEYS, a redirect other than iptables, a value
 * config_load refuses). Release *out with snapshot_unref(&(*out)->snap). */
int node_sidecar_capture_config(const char *annotation, struct shunt_config **out, char *err,
                                size_t errlen);

/* Pods with node capture installed, and failures. */
size_t node_sidecar_capture_count(const struct node_sidecar_capture *sc);
/* Prometheus: shunt_node_sidecar_captures (gauge),
 * shunt_node_sidecar_capture_failures_total, _retries_total. */
void node_sidecar_capture_render_metrics(const struct node_sidecar_capture *sc, struct strbuf *sb);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Node mode, items 2 and 4: each READY pod's capture and proxy.
 *
 * For every pod node_pods reports READY (an observer), node shuntd builds,
 * without anything running in the pod:
 *
 *   listeners  a proxy of the pod's own (proxy/proxy.h) whose inbound and
 *              outbound listeners are bound INSIDE the pod's network
 *              namespace: the setup thread (below) enters it (setns),
 *              binds and listens, and comes back; a socket keeps the
 *              namespace it was made in. The listener that accepts a connection therefore
 *              says which pod speaks: nothing is looked up per connection.
 *   workers    that proxy's worker threads (node.pod_workers) enter the
 *              pod's namespace when they start (proxy_set_worker_init), so
 *              every socket they open, upstream connections included, is
 *              the pod's: an outbound connection leaves with the pod's IP and
 *              routes, an inbound one reaches the application on the pod's
 *              own loopback or address. Plaintext never leaves the pod's
 *              namespace; the node's own network namespace is untouched.
 *   outbound   eBPF (redirect ebpf, or auto when the kernel allows): the
 *              programs of bpf/capture.bpf.c, unchanged, attached to the
 *              pod's cgroup. They rewrite a connect to 127.0.0.1:outbound_port,
 *              which in the pod's namespace is the pod's listener. One loaded
 *              object per pod, pinned under <bpf_pin_root>/pods/<pod uid>,
 *              rather than one object with a link per cgroup: the maps are
 *              keyed by the application's view of the connection
 *              (127.0.0.1:port -> 127.0.0.1:15002), which is the same in every
 *              pod's namespace, so one shared map would let two pods' entries
 *              collide and a connection be given another pod's destination.
 *              Per pod they cannot, and a pod filling its maps (sized by
 *              node.pod_max_connections) cannot fill another's. The cost is
 *              a verifier run per pod at READY and the maps' kernel memory,
 *              reported per pod. redirect iptables (or auto without eBPF):
 *              the sidecar's OUTPUT rules (intercept/iptables.h) in the pod's
 *              namespace; node shuntd's sockets carry proxy_mark and pass.
 *   inbound    the sidecar's PREROUTING rules (intercept/iptables.h, as
 *              `shuntd init` installs them) in the pod's namespace: REDIRECT
 *              to the pod's inbound listener, whose proxy terminates mTLS
 *              with the destination pod's certificate.
 *   policies   the proxy's authorization policies are the pod's own
 *              (node/policies.h: its namespace's objects that select its
 *              labels, plus the file's), published to its proxy when they
 *              change; its listeners accept only once they are known.
 *   identity   the proxy's certificate slot is the pod's identity (namespace,
 *              service account) from node_capture_identity_fn; outbound mTLS
 *              presents the source pod's, inbound the destination pod's. No
 *              slot (no identity held), or a slot without a certificate yet:
 *              the pod's mesh connections fail the TLS step, are refused and
 *              counted (refused_tls): fail closed.
 *
 * Isolation and bounds: each pod has its own connection limit
 * (node.pod_max_connections, counted as refused_limit), its own event
 * loop(s) and accept queue, so a pod flooding connections only fills its own
 * listener's backlog and its own limit: the other pods' accepts run on their
 * own threads, which the kernel schedules fairly. Memory per pod is the
 * proxy's (bounded by the limit times two buffers) plus the kernel memory of
 * its BPF maps; both are reported (GET /pods "capture", metrics
 * shunt_node_pod_*). A thread per pod is the price: a node runs at most
 * node.max_pods of them (kubelet's default is 110 pods per node).
 *
 * Setup off the main loop: making a pod's listeners, rules and BPF capture
 * (setns, a verifier run, iptables-restore in the pod: ~0.5 s, seconds under
 * load) and undoing them run on one setup thread, one pod at a time in the
 * order the pods came and went (a replaced pod is undone before its
 * successor, which reuses its pin directory, is made). Its queue holds at
 * most one job per pod listed (node.max_pods, plus pods leaving). The main
 * loop queues the job and goes on serving the admin API and the other pods;
 * the finished job comes back through an eventfd, and the main thread gives
 * the proxy its identity, routes and policies and starts its workers. GET
 * /pods shows such a pod as setting_up or releasing meanwhile, and keeps a
 * leaving pod listed until everything it held is released.
 *
 * Pod gone (deleted, unmeshed, sandbox replaced): its proxy is freed first
 * (listeners closed, every connection closed, worker joined, buffers and TLS
 * state freed: the workers read the capture's maps until then), then its BPF
 * links are detached and pins removed (a connect in between is refused, not
 * relayed), then its rules are removed inside its namespace (held open until
 * then) and the namespace fd closed.
 *
 * Agent exit (SIGTERM, upgrade): the pods' listeners close at the drain's
 * start, their connections drain, and at exit every pod's pins and rules
 * stay (node_capture_keep): a pod's connects are refused, not sent in
 * plaintext, until the next agent's bpfcap_open reuses the pins (programs
 * swapped in place) and ipt_install replaces the rules in one restore. The
 * next agent removes the pins of pods that left meanwhile once it has
 * listed the node's pods (on_synced).
 *
 * The sk_msg shortcut: a socket belongs to the cgroup of the task that
 * created it (sk_cgrp_data, set at socket()), and an accepted socket copies
 * its listener's. The application's socket is the pod's, so its
 * ACTIVE_ESTABLISHED runs the pod's sockops; for the accepted end's
 * PASSIVE_ESTABLISHED to run them too (and join the pod's sockhash), the
 * pod's listening sockets are made in the pod's cgroup by a child process
 * (podsock.h). Where that child cannot join, the listeners are the agent's
 * and the pod's hop stays on loopback TCP (logged; GET /pods shows
 * shortcut.listeners_in_pod). Listeners taken over were made the same way
 * by the previous agent.
 *
 * All functions run on the main loop's thread; the setup thread only runs
 * the jobs they queue. */
#ifndef SHUNT_NODE_CAPTURE_H
#define SHUNT_NODE_CAPTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "node/pods.h"

struct snapshot_slot;
struct disc_snapshot;
struct loop;
struct authz;
struct node_capture;

/* The certificate slot of identity ns/sa (node_identity_slot's signature),
 * NULL when none is held. */
typedef struct snapshot_slot *(*node_capture_identity_fn)(void *ctx, const char *ns,
                                                          const char *sa);

/* The authorization policies of READY pod gen (node_policies_get's
 * signature): borrowed, NULL while they are not known (the pod's listeners
 * do not accept until they are: fail closed). */
typedef struct authz *(*node_capture_authz_fn)(void *ctx, uint64_t gen);

struct handover_pod;
struct handover_listener;

struct node_capture_config {
        struct shunt_config *cfg;          /* the daemon's; a reference is taken */
        node_capture_identity_fn identity; /* NULL: mTLS off (mtls.mode disabled) */
        void *identity_ctx;
        node_capture_authz_fn authz; /* each pod's own policies; NULL: none */
        void *authz_ctx;
        /* Taking over (shuntd --takeover): the pods' listeners of the agent
         * taken over, taken by node_capture_new (each pod's ls moved out).
         * A pod that becomes READY with listeners here (in its namespace)
         * adopts them instead of opening its own: the connects queued in
         * them are accepted, none is refused. Those of pods not on the node
         * any more are closed after the first complete Pods list. */
        struct handover_pod *inherited;
        size_t n_inherited;
        /* The main loop, which is told when the setup thread has finished
         * a pod (NULL: node_capture_tick looks). */
        struct loop *loop;
};

/* NULL with err (no memory, the node's own namespace cannot be opened). */
struct node_capture *node_capture_new(const struct node_capture_config *c, char *err,
                                      size_t errlen);
/* Releases every pod's capture (as if each were gone) and captures no pod
 * from now on (shutdown: before the certificate stores are freed). */
void node_capture_stop(struct node_capture *nc);
/* At exit, before node_capture_stop: every pod's capture stays (its eBPF
 * programs pinned on its cgroup, its rules in its namespace); only the
 * listeners close with this process, so a pod's connects are refused (fail
 * closed) until the next agent adopts the pins and rules in place. */
void node_capture_keep(struct node_capture *nc);
/* Drain (SIGTERM, handed over): every pod's listeners closed, no pod
 * captured from now on; open connections go on. */
void node_capture_stop_accepting(struct node_capture *nc);
/* Open connections over every pod. */
uint64_t node_capture_active(struct node_capture *nc);
/* Handing over (handover_server_ops.offer_pod): the listeners of the
 * index-th pod into out and its uid; their number (0: none), -ENOENT past
 * the last pod. */
int node_capture_offer_pod(struct node_capture *nc, size_t index, char *uid, size_t uidlen,
                           struct handover_listener *out, size_t max);
/* Stops, then frees (after the pod table, whose last gone calls may still
 * come). NULL is fine. */
void node_capture_free(struct node_capture *nc);
/* Registers nc as an observer of np (pods already READY are captured now). */
int node_capture_attach(struct node_capture *nc, struct node_pods *np);

/* What every pod's proxy is given, now and for pods that come later. */
void node_capture_set_registry(struct node_capture *nc, const struct disc_snapshot *disc);
/* Pod gen's policies changed: its proxy is given them (node_capture_authz_fn). */
void node_capture_pod_authz_changed(struct node_capture *nc, uint64_t gen);
void node_capture_set_config(struct node_capture *nc, struct shunt_config *cfg);
/* Every ~100 ms: each pod's proxy_tick. */
void node_capture_tick(struct node_capture *nc);

/* {"mode":..., "pod_max_connections":..., "counters":{...}, "pods":[{"namespace","name",
 * "uid","service_account","capture","identity","listeners","connections":{...},
 * "bytes":{...},"refused":{...},"memory":{...}}]} */
void node_capture_render(struct node_capture *nc, struct strbuf *sb);
/* shunt_node_pod_* families with namespace and pod labels. */
void node_capture_render_metrics(struct node_capture *nc, struct strbuf *sb);

#endif

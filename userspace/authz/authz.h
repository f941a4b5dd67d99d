/* SPDX-License-Identifier: Apache-2.0 */
/* Inbound authorization: per destination port, policies that deny and allow
 * mesh peers by SPIFFE identity, namespace, service account or trust domain.
 *
 * A policy (the same JSON in the config file's authorization.policies and
 * in the spec of a Kubernetes AuthorizationPolicy):
 *
 *   {"name": "web", "ports": [8080, "*"],
 *    "deny":  [{"namespace": "legacy"}],
 *    "allow": [{"identity": "spiffe://cluster.local/ns/shop/sa/frontend"},
 *              {"namespace": "shop", "service_account": "checkout"},
 *              {"trust_domain": "cluster.local"}]}
 *
 * A principal's fields must all match (identity exactly; namespace and
 * service account from the mesh form .../ns/<ns>/sa/<sa>; with a local
 * trust domain set, an allow principal without trust_domain means ours);
 * a list matches when one principal does. For a connection to port P every policy naming P
 * or "*" applies:
 *   1. a deny principal matches         -> refused, denied_by_policy
 *   2. an allow principal matches       -> admitted
 *   3. no policy applies to P           -> admitted (the TLS layer already
 *                                          requires our trust domain)
 *   4. the peer has no identity         -> refused, no_identity (plaintext
 *                                          on a port that has any rule)
 *   5. some policy of P has allow rules -> refused, not_allowed
 *   6. otherwise (deny rules only)      -> admitted
 *
 * A built struct authz is immutable and reference-counted (core/snapshot.h):
 * the main thread builds one from every source and publishes it; workers
 * check connections against it without locks. */
#ifndef SHUNT_AUTHZ_AUTHZ_H
#define SHUNT_AUTHZ_AUTHZ_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/snapshot.h"
#include "core/strbuf.h"

#define AUTHZ_MAX_POLICIES   128  /* per source (the file, Kubernetes) */
#define AUTHZ_MAX_PORTS      32   /* per policy */
#define AUTHZ_MAX_PRINCIPALS 64   /* per policy, in allow and in deny each */
#define AUTHZ_MAX_RULES      4096 /* (port x principal) pairs in one built set */
#define AUTHZ_NAME_MAX       254  /* policy name (incl. NUL) */

enum authz_reason {
        AUTHZ_OK = 0,
        AUTHZ_DENIED_BY_POLICY,
        AUTHZ_NOT_ALLOWED,
        AUTHZ_NO_IDENTITY,
        AUTHZ__REASONS
};

/* "allowed", "denied_by_policy", "not_allowed", "no_identity" (stable:
 * metrics labels and audit lines). */
const char *authz_reason_name(enum authz_reason r);

/* Counters shared by every built set: the caller's (refs 0, outlives them),
 * or reference-counted (authz_stats_new: each set built with it holds a
 * reference, so the counters live as long as the last set that counts into
 * them, e.g. one node-mode pod's). A decision is counted in parent too. */
struct authz_stats {
        _Atomic uint64_t decisions[AUTHZ__REASONS]; /* [AUTHZ_OK]: admitted by a rule */
        struct authz_stats *parent;                 /* NULL, or counted there too */
        _Atomic uint32_t refs;                      /* 0: not reference-counted */
};

/* Reference-counted counters (one reference, the caller's), NULL without
 * memory; parent (may be NULL) must outlive them. */
struct authz_stats *authz_stats_new(struct authz_stats *parent);
void authz_stats_unref(struct authz_stats *st);

struct authz_verdict {
        enum authz_reason reason;
        const char *policy; /* the deciding policy ("origin/name"), "" when none */
};

struct authz;

/* An empty set (admits everything) counting into stats (may be NULL; a
 * reference is taken when reference-counted). */
struct authz *authz_new(struct authz_stats *stats);
/* Before publishing (federation): an allow principal that names a
 * namespace or service account without a trust_domain then matches only
 * identities of td (another domain's namespaces are that domain's). Deny
 * principals keep matching every trust domain. NULL or "": any.
 * authz_merge carries it into a set that has none. */
void authz_set_local_trust_domain(struct authz *a, const char *td);
void authz_ref(struct authz *a);
void authz_unref(struct authz *a);
/* The struct authz behind a snapshot taken from a slot it was published to. */
struct authz *authz_from_snapshot(struct snapshot *s);
struct snapshot *authz_snapshot(struct authz *a);

/* Adds one policy (JSON object as above) from origin ("file",
 * "kubernetes"). name: the policy's name when the object has none (a
 * Kubernetes object's metadata.name), else NULL and "name" is required.
 * ignore: a key the object may carry that is not ours to read ("selector"),
 * or NULL. 0, or -EINVAL / -E2BIG / -ENOMEM with one line in err naming the
 * policy and what is wrong; the set is unchanged then. */
int authz_add_policy(struct authz *a, const cJSON *policy, const char *origin, const char *name,
                     const char *ignore, char *err, size_t errlen);
/* Adds every policy of a JSON array (the file's authorization.policies);
 * names must be unique. Same errors, with the policy's index. */
int authz_add_policies(struct authz *a, const cJSON *policies, const char *origin, char *err,
                       size_t errlen);
/* mtls.allow's entry: port (0 = every port) admits exactly id. Entries of
 * one port join one policy "mtls.allow:<port>". */
int authz_add_allow(struct authz *a, uint16_t port, const char *id, char *err, size_t errlen);
/* Copies every policy of src into a (merging sources). */
int authz_merge(struct authz *a, const struct authz *src, char *err, size_t errlen);
/* A policy name that refuses every connection to every port (a deny rule
 * that matches every identity; no identity is refused as on any protected
 * port): fail closed where the policies that apply are not all known. */
int authz_add_deny_all(struct authz *a, const char *name, char *err, size_t errlen);
/* Whose set this is ("shop/web-0": node mode's pod), named in the audit
 * lines of its refusals; NULL (the default) for the daemon's own. 0 or
 * -ENOMEM. */
int authz_set_scope(struct authz *a, const char *scope);
const char *authz_scope(const struct authz *a);

size_t authz_policy_count(const struct authz *a);
size_t authz_rule_count(const struct authz *a);

/* The decision for a connection to port from peer_id (NULL or "" when the
 * peer presented no identity); counted in the stats. true when admitted. */
bool authz_check(const struct authz *a, uint16_t port, const char *peer_id,
                 struct authz_verdict *v);
/* Whether any policy applies to port (then plaintext is refused). */
bool authz_port_protected(const struct authz *a, uint16_t port);
/* The protected ports as text for the start-up log: "8080, 9090" or
 * "every port" or "none". */
void authz_describe_ports(const struct authz *a, char *buf, size_t len);

/* JSON array of the policies for /authz. */
void authz_render_policies(const struct authz *a, struct strbuf *sb);
/* JSON array of the policies' names ("origin/name"), in their order. */
void authz_render_policy_names(const struct authz *a, struct strbuf *sb);
/* JSON array of {"port","id"}: each allow principal that is an exact
 * identity (the shape of mtls.allow, for /certs). */
void authz_render_allow_ids(const struct authz *a, struct strbuf *sb);
/* Prometheus family shunt_authz_decisions_total{decision}. */
void authz_render_metrics(const struct authz_stats *st, struct strbuf *sb);

/* ---- Kubernetes AuthorizationPolicy objects (shunt.io/v1alpha1) ------------ */

/* The objects of the sidecar's namespace as watched (list, then events; the
 * callbacks of a discovery/k8s.h struct k8s_object_sink), kept as their
 * spec: at most AUTHZ_MAX_POLICIES objects of at most AUTHZ_MAX_SPEC_BYTES
 * of JSON each. An object applies to this pod when every label of its
 * spec.selector.matchLabels is among the pod's labels; an object without a
 * selector applies to every pod of the namespace; with a selector and the
 * pod's labels unknown it does not apply (said in /authz). */
#define AUTHZ_MAX_SPEC_BYTES  65536
#define AUTHZ_MAX_LABELS      64 /* pod labels, selector labels */
#define AUTHZ_LABELS_FILE_MAX 65536

struct authz_labels; /* key/value pairs */

/* Reads a downward API labels file (lines key="value", the value quoted with
 * backslash escapes). 0, -ENOENT (no file), or -EINVAL/-E2BIG with err. */
int authz_labels_read(const char *path, struct authz_labels **out, char *err, size_t errlen);
void authz_labels_free(struct authz_labels *l);

struct authz_kube;

/* ns: the namespace whose objects are watched; changed(arg) is called after
 * each change that may alter the built policies. */
struct authz_kube *authz_kube_new(const char *ns, void (*changed)(void *arg), void *arg);
void authz_kube_free(struct authz_kube *k);
/* Replaces the pod's labels (taken; NULL: unknown). */
void authz_kube_set_labels(struct authz_kube *k, struct authz_labels *labels);
/* A pod's labels from its metadata.labels object (NULL or not an object:
 * none, an empty set). 0, -E2BIG (more than AUTHZ_MAX_LABELS), -EINVAL (a
 * value not a string), -ENOMEM. */
int authz_labels_from_json(const cJSON *labels, struct authz_labels **out);
/* The namespace watched. */
const char *authz_kube_namespace(const struct authz_kube *k);

/* The sink callbacks (arg is the struct authz_kube). */
void authz_kube_list_begin(void *k);
void authz_kube_list_end(void *k, bool complete);
int authz_kube_apply(void *k, bool listing, const cJSON *obj, bool deleted, char *err,
                     size_t errlen);
size_t authz_kube_count(void *k);

/* The policies of the objects that apply to this pod, in name order; an
 * object that cannot be added (a bound of the built set) is left out and
 * logged. A new reference, or NULL (out of memory). */
struct authz *authz_kube_build(struct authz_kube *k, struct authz_stats *stats);
/* The same for a pod of the namespace with these labels (NULL: unknown),
 * whatever authz_kube_set_labels holds (node mode: one set per pod). */
struct authz *authz_kube_build_for(struct authz_kube *k, const struct authz_labels *labels,
                                   struct authz_stats *stats);
/* {"namespace","listed","labels":{..}|null,"objects":[{"name","applies","why"}]} */
void authz_kube_render(const struct authz_kube *k, struct strbuf *sb);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Kubernetes backend: Services (v1), EndpointSlices (discovery.k8s.io/v1),
 * meshed Pods and Namespaces (v1) listed, then watched with resourceVersion
 * and bookmarks, over libcurl multi driven from the main loop.
 *
 * Two parts:
 *  - the cache (pure, unit-tested): Kubernetes objects as received from list
 *    responses and watch events, turned into registry service specs;
 *  - the watcher (k8s_backend_ops): credentials (in-cluster or a kubeconfig),
 *    paginated list (limit/continue) then watch per resource, 410 Gone ->
 *    relist, reconnect with backoff (1 s doubling to 30 s, +-20 % jitter,
 *    reset on success) on a dropped or silent stream, staleness reported to
 *    the registry. The label selector applies to Services; EndpointSlices
 *    are joined to them by kubernetes.io/service-name, their endpoints to
 *    Pods by targetRef (identities, below).
 *
 * Tuning from the environment (until config keys exist):
 *   SHUNT_K8S_WATCH_TIMEOUT   seconds asked of the server per watch
 *                             (timeoutSeconds, default 60, 1..3600); a
 *                             stream silent for twice that is reconnected
 *   SHUNT_K8S_SERVICEACCOUNT_DIR  in-cluster credentials directory (default
 *                             /var/run/secrets/kubernetes.io/serviceaccount) */
#ifndef SHUNT_DISCOVERY_K8S_H
#define SHUNT_DISCOVERY_K8S_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

#include "discovery/backend.h"
#include "discovery/registry.h"

#define K8S_MAX_OBJECT_NAME     254  /* metadata.name of a slice (incl. NUL) */
#define K8S_MAX_SLICE_ENDPOINTS 1000 /* the API's own limit per slice */
#define K8S_MAX_RV              128  /* resourceVersion (incl. NUL) */
#define K8S_MAX_CONTINUE        4096 /* continue token of a list page (incl. NUL) */
#define K8S_LIST_LIMIT          500  /* items asked per list page */
#define K8S_MAX_LIST_BYTES      (256u << 20)
#define K8S_MAX_EVENT_BYTES     (16u << 20)
#define K8S_DEFAULT_WATCH_S     60
#define K8S_BACKOFF_MIN_MS      1000
#define K8S_BACKOFF_MAX_MS      30000

extern const struct disc_backend_ops k8s_backend_ops;

/* ---- the cache ------------------------------------------------------------- */

enum k8s_kind {
        K8S_SERVICES = 0,
        K8S_SLICES,
        K8S_PODS,       /* only meshed pods: labelSelector shunt.io/meshed=true */
        K8S_NAMESPACES, /* for their shunt.io/mtls-mode annotation */
        K8S_HTTPROUTES, /* gateway.networking.k8s.io/v1 HTTPRoute (optional, below) */
        K8S_GRPCROUTES, /* gateway.networking.k8s.io/v1 GRPCRoute (optional, below) */
        K8S__KINDS,
};
/* The Gateway API kinds are optional: their CRDs may not be installed (404)
 * or the role may not grant them (403). Their failures are logged and shown
 * in /debug/cache but neither hold back the first build (once they have
 * failed once) nor make the source stale. */
static inline bool k8s_kind_optional(enum k8s_kind k)
{
        return k == K8S_HTTPROUTES || k == K8S_GRPCROUTES;
}

/* Mesh identity from Kubernetes (see docs/discovery.md, "Kubernetes"):
 *  - a pod is meshed when it carries the label shunt.io/meshed: "true";
 *  - an endpoint's identity is spiffe://<trust domain>/ns/<pod namespace>/
 *    sa/<pod spec.serviceAccountName>, its pod found through the slice
 *    endpoint's targetRef (kind Pod; uid checked when given), else by
 *    address;
 *  - the mTLS mode comes from the annotation shunt.io/mtls-mode (strict,
 *    permissive, disabled) on the Pod, else the Service, else the
 *    Namespace, else the daemon's mtls.mode.
 * Only what routing needs is kept of a pod (namespace, name, uid, service
 * account, meshed, mode, addresses), at most K8S_MAX_PODS of them. */
#define K8S_LABEL_MESHED         "shunt.io/meshed"
#define K8S_ANNOTATION_MODE      "shunt.io/mtls-mode"
#define K8S_MAX_UID              64
#define K8S_MAX_POD_IPS          2
#define K8S_MAX_PODS             65536
#define K8S_MAX_NAMESPACES       16384
#define K8S_DEFAULT_TRUST_DOMAIN "cluster.local"

/* What one watch event line did. */
enum k8s_event_result {
        K8S_EV_APPLIED = 0, /* ADDED/MODIFIED/DELETED applied; rv updated */
        K8S_EV_BOOKMARK,    /* rv updated, nothing else */
        K8S_EV_GONE,        /* ERROR event with code 410: relist */
        K8S_EV_ERROR,       /* ERROR event with another code: reconnect */
        K8S_EV_BAD,         /* unparsable or invalid: skipped (err says why) */
};

struct k8s_cache;

struct k8s_cache *k8s_cache_new(void);
void k8s_cache_free(struct k8s_cache *c);
/* The trust domain of the identities a build gives (default cluster.local).
 * 0 or -EINVAL (empty or too long). */
int k8s_cache_set_trust_domain(struct k8s_cache *c, const char *td);
/* Replaces every object of kind with the items of a list response body;
 * rv (K8S_MAX_RV bytes) receives metadata.resourceVersion. Items that are
 * invalid are skipped with a warning. 0 or -EINVAL (the body is not a list;
 * nothing changed; err says why). */
int k8s_cache_list(struct k8s_cache *c, enum k8s_kind kind, const char *body, size_t len, char *rv,
                   char *err, size_t errlen);
/* One page of a paginated list (limit/continue): its items are added to
 * staging (a cache used only for this list), rv receives the list's
 * resourceVersion and cont (K8S_MAX_CONTINUE bytes) the continue token, ""
 * on the last page. Then k8s_cache_take moves the kind from staging into c. */
int k8s_cache_list_page(struct k8s_cache *staging, enum k8s_kind kind, const char *body, size_t len,
                        char *rv, char *cont, char *err, size_t errlen);
void k8s_cache_take(struct k8s_cache *c, struct k8s_cache *staging, enum k8s_kind kind);
/* One watch event line ({"type":..., "object":...}). rv is updated from the
 * object's metadata.resourceVersion when the event is applied or a bookmark. */
enum k8s_event_result k8s_cache_event(struct k8s_cache *c, enum k8s_kind kind, const char *line,
                                      size_t len, char *rv, char *err, size_t errlen);
/* The registry specs for every cached Service with its slices' endpoints.
 * Free with k8s_specs_free. 0 or -ENOMEM. */
int k8s_cache_build(struct k8s_cache *c, struct disc_service_spec **svcs, size_t *n);
/* The routes that cannot be applied (k8s_route_store_render). */
void k8s_cache_render_routes(const struct k8s_cache *c, const char *service, struct strbuf *sb);
void k8s_specs_free(struct disc_service_spec *svcs, size_t n);
size_t k8s_cache_count(const struct k8s_cache *c, enum k8s_kind kind);
/* A counter bumped by every change a build would see (a pod event that
 * changes nothing routing reads, status churn, leaves it): no change, no
 * build. */
uint64_t k8s_cache_changes(const struct k8s_cache *c);
/* Pods not kept because K8S_MAX_PODS were held. */
uint64_t k8s_cache_pods_shed(const struct k8s_cache *c);

/* ---- envelopes of any resource ------------------------------------------------ */

/* Applies one object of a list or a watch event (deleted: a DELETED event).
 * 0; -EINVAL: this object is skipped (err says why); another -errno: the
 * list fails (out of memory, a bound of the consumer). */
typedef int (*k8s_apply_fn)(void *arg, const cJSON *obj, bool deleted, char *err, size_t errlen);
/* One list page: apply for each item; rv and cont as k8s_cache_list_page.
 * what names the resource in err. */
int k8s_list_page_parse(const char *what, const char *body, size_t len, k8s_apply_fn apply,
                        void *arg, char *rv, char *cont, char *err, size_t errlen);
/* One watch event line, ADDED/MODIFIED/DELETED going to apply. */
enum k8s_event_result k8s_event_parse(const char *line, size_t len, k8s_apply_fn apply, void *arg,
                                      char *rv, char *err, size_t errlen);

/* ---- other components' resources ------------------------------------------------- */

/* One more resource watched with the same machinery (paginated list, watch
 * from resourceVersion with bookmarks, 410 -> relist, backoff, silence
 * bound) for a component outside discovery. Its failures are logged and
 * shown in /debug/cache; they do not make the registry stale. */
struct k8s_object_sink {
        const char *kind; /* plural, for logs: "authorizationpolicies" */
        char path[512];   /* "/apis/<group>/<version>/namespaces/<ns>/<plural>" */
        void *arg;
        /* A list starts (first page) and ends (after the last page, or
         * complete == false when it failed: what was applied since begin is
         * dropped). */
        void (*list_begin)(void *arg);
        void (*list_end)(void *arg, bool complete);
        /* An object of the list in progress, or a watch event. */
        int (*apply)(void *arg, bool listing, const cJSON *obj, bool deleted, char *err,
                     size_t errlen);
        size_t (*count)(void *arg); /* objects held, for /debug/cache */
        /* Optional, unescaped: the list and watch ask only for these
         * ("shunt.io/meshed=true", "spec.nodeName=n1"); NULL: all. */
        const char *label_selector, *field_selector;
};

/* Adds the sink's watch to the kubernetes backend impl (disc_backend_impl()
 * of a "kubernetes" backend), before it starts. The sink must outlive it.
 * 0, -EBUSY (K8S_MAX_SINKS already, or started), -EINVAL, -ENOMEM. */
#define K8S_MAX_SINKS 2 /* AuthorizationPolicy objects, the node's pods */
int k8s_backend_add_sink(void *impl, const struct k8s_object_sink *sink);

/* ---- Gateway API routes (k8s_routes.c) ------------------------------------------
 *
 * HTTPRoute and GRPCRoute objects whose parentRefs name a Service (group ""
 * and kind Service: the GAMMA mesh profile; port and sectionName, a port's
 * name, optional) attach their rules to that Service (and port) in the
 * route model (routes.h). Routes of a Gateway are left alone. Only
 * producer routes (in the Service's namespace) and Service backends in the
 * route's namespace (no ReferenceGrant) are applied. A version that cannot
 * be applied is logged once with its reason and listed by
 * k8s_route_store_render; the last version that could stays in force. */
#define K8S_ROUTE_MAX_PARENTS 32 /* the API's own bound on parentRefs */
#define K8S_ROUTE_ERR_MAX     512

struct k8s_route_parent {
        char ns[DISC_NAME_MAX];
        char name[DISC_NAME_MAX];
        uint16_t port;               /* 0: not given */
        char section[DISC_NAME_MAX]; /* sectionName (a port's name), "" if not given */
};

/* A Gateway API Duration ("1h30m", "500ms") in ms. 0 or -EINVAL. */
int k8s_gateway_duration_ms(const char *s, uint64_t *ms);
/* One HTTPRoute (grpc false) or GRPCRoute object as a route of the model's
 * JSON form ({"name", "kind", "rules"}, no "port": each parent gives its
 * own), validated on its own: every check that depends on no other object
 * (regexes, weights, bounds, field names and types). 0 with *out (NULL
 * when no parentRef names a Service: nothing to do) and the Service
 * parents; -EINVAL with one line in err naming the field
 * ("spec.rules[1].matches[0].path.value: ..."). */
int k8s_route_translate(const cJSON *obj, bool grpc, cJSON **out, struct k8s_route_parent *parents,
                        uint32_t *n_parents, char *err, size_t errlen);

/* The route objects of a cache, with the version of each in force. */
struct k8s_route_store;
struct k8s_route_store *k8s_route_store_new(void);
void k8s_route_store_free(struct k8s_route_store *s);
/* One object of a list or watch event. An object that cannot be translated
 * is kept (its error recorded and logged once; its last good version stays
 * in force): 0. -EINVAL only for an object without a name; -ENOMEM. */
int k8s_route_store_apply(struct k8s_route_store *s, bool grpc, const cJSON *obj, bool deleted,
                          char *err, size_t errlen);
size_t k8s_route_store_count(const struct k8s_route_store *s, bool grpc);
/* After a complete list into staging: its objects of that kind replace s's
 * (an object refused now keeps the good version s had). */
void k8s_route_store_take(struct k8s_route_store *s, struct k8s_route_store *staging, bool grpc);
/* Sets svcs[i].routes (a new reference) for every Service with routes:
 * the routes attached to it in the Gateway API's order (oldest
 * creationTimestamp, then namespace/name), each first checked alone
 * against the Service (its ports, its backends among svcs), then all
 * together; one that fails is left out with its reason, the rest apply.
 * Matches that tie keep precedence order (the older route wins). */
int k8s_route_store_attach(struct k8s_route_store *s, struct disc_service_spec *svcs, size_t n);
/* [{"kind", "namespace", "name", "resource_version", "error", "in_force"}]
 * for every route with a problem (service: NULL, or "ns/name" / "name"
 * of a parent). */
void k8s_route_store_render(const struct k8s_route_store *s, const char *service,
                            struct strbuf *sb);

/* GET /routes' "rejected": k8s_route_store_render of the backend impl
 * (disc_backend_impl() of a "kubernetes" backend). */
void k8s_backend_render_routes(void *impl, const char *service, struct strbuf *sb);

/* Maps a Service port's appProtocol to a declared protocol (PROTO_UNKNOWN
 * when absent or not one we know: the proxy sniffs). */
enum proto k8s_app_protocol(const char *app_protocol);

#endif

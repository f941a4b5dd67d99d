/* SPDX-License-Identifier: Apache-2.0 */
/* Node mode, item 3: the identities of the node's meshed pods.
 *
 * One certificate store (tls/store.h) per (namespace, service account) with
 * at least one READY pod on the node, counted by those pods: it is made when
 * the first pod of that identity becomes READY (node_pods observer), and
 * dropped drain_s after the last one is gone (a pod of that identity coming
 * back within the drain takes the same store again). The certificate comes
 * from the store's source, which the daemon makes (node_identity_source_fn):
 * with shunt-ca, delegated issuance on the pod's behalf (the node agent's
 * own token, "for": {namespace, service_account}; ca/node.c checks that a pod
 * of that account runs on this node); with the built-in CA, issued locally.
 * The first certificate is fetched asynchronously (the main loop never
 * waits); a failure is retried with the store's backoff (1 s doubling to
 * 30 s, +-20 %), counted, and logged once per episode (the first failure and
 * the recovery). Rotation is the store's: a third of the lifetime left.
 *
 * Fail closed: until an identity holds a certificate, its slot holds no
 * snapshot (snapshot_reader_get returns NULL): the capture must refuse the
 * pod's connections then (outbound and inbound), and count them.
 *
 * Bounds: at most NODE_ID_MAX_FIRST_FETCHES identities wait for the outcome
 * of their first request at once (the others are queued, state fetching);
 * at most max_identities stores (draining ones included); a pod whose
 * identity finds no room has none (node_identity_slot NULL, logged and
 * counted) until room is made, when it is given one.
 *
 * The store of a dropped identity is freed once its drain is over and no
 * tls_conn uses its certificates any more (checked every second).
 *
 * All functions run on the main loop's thread. */
#ifndef SHUNT_NODE_IDENTITY_H
#define SHUNT_NODE_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "node/pods.h"
#include "tls/source.h"

struct tls_federation;

#define NODE_ID_SWEEP_MS 1000 /* how often ended drains are looked for */
/* Identities whose first certificate request is out (or due) at once; more
 * wait their turn, looked at every NODE_ID_PUMP_MS. */
#define NODE_ID_MAX_FIRST_FETCHES 16
#define NODE_ID_PUMP_MS           100

struct node_identities;

/* Makes the certificate source of identity ns/sa (its SPIFFE ID in
 * spiffe_id). 0, or -errno with a sentence in err. */
typedef int (*node_identity_source_fn)(void *ctx, const char *ns, const char *sa,
                                       const char *spiffe_id, struct tls_source **out, char *err,
                                       size_t errlen);

struct node_identities_config {
        const char *trust_domain;
        uint32_t max_identities; /* node.max_pods */
        uint32_t drain_s;        /* after the last pod: the store is kept this long */
        uint32_t clock_skew_s;
        node_identity_source_fn make_source;
        void *source_ctx;
        struct tls_federation *federation; /* borrowed, outlives ids; NULL: none */
};

/* NULL with err (bad config, no memory). loop: the main loop (the stores'
 * timers, the sweep); NULL in unit tests (then nothing is fetched until
 * node_identities_tick). */
struct node_identities *node_identities_new(const struct node_identities_config *cfg,
                                            struct loop *loop, char *err, size_t errlen);
void node_identities_free(struct node_identities *ids);

/* Registers ids as an observer of np (node_pods_observe); call it BEFORE the
 * capture registers its own, so that an identity exists when the capture
 * hears of the pod. 0 or -errno. */
int node_identities_attach(struct node_identities *ids, struct node_pods *np);
/* The observer attach registers (tests call it directly). */
const struct node_pods_observer *node_identities_observer(struct node_identities *ids);

/* The slot workers read (snapshot_reader_get + tls_snapshot_get, as with
 * tls_store_slot) for ns/sa's certificate, or NULL when no identity ns/sa is
 * held (no READY pod of it, or shed by the bound). The slot's snapshot is
 * NULL until the first certificate arrives: refuse the connection then (fail
 * closed). Main thread. The slot stays valid at least until drain_s after the
 * last pod of ns/sa is gone, and while a tls_conn uses its certificates. */
struct snapshot_slot *node_identity_slot(struct node_identities *ids, const char *ns,
                                         const char *sa);

enum node_identity_state {
        NODE_ID_NONE = 0, /* not held */
        NODE_ID_FETCHING, /* no certificate yet, the first request in flight or due */
        NODE_ID_RETRYING, /* no certificate yet, the last request failed */
        NODE_ID_READY,    /* a certificate (a renewal may be retrying) */
        NODE_ID_DRAINING, /* no pod left: kept until drain_s has passed */
        NODE_ID_SHED,     /* pods of it are READY, but max_identities were held */
};
const char *node_identity_state_name(enum node_identity_state s);
enum node_identity_state node_identity_state(struct node_identities *ids, const char *ns,
                                             const char *sa);
/* READY pods counted for ns/sa (0 when not held). */
uint32_t node_identity_pods(struct node_identities *ids, const char *ns, const char *sa);
/* Identities held (draining ones included). */
size_t node_identities_count(const struct node_identities *ids);

/* Drops identities whose drain ended at now_ms (monotonic) and frees those
 * no connection uses; the sweep timer calls it, unit tests too. */
void node_identities_sweep(struct node_identities *ids, uint64_t now_ms);
/* Runs every store's tick once (fetches due); for unit tests without a loop. */
void node_identities_tick(struct node_identities *ids);

/* {"max_identities":..,"drain_s":..,"counters":{..},"identities":[{"spiffe_id",
 * "namespace","service_account","pods","state", "store": tls_store JSON}]} */
void node_identities_render(struct node_identities *ids, struct strbuf *sb);
/* Prometheus: shunt_node_identities{state}, shunt_node_identity_cert_expiry_seconds
 * {namespace,service_account}, shunt_node_identity_fetch_failures_total,
 * _issued_total, _shed_total, _dropped_total. */
void node_identities_render_metrics(struct node_identities *ids, struct strbuf *sb);

#endif

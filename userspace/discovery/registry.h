/* SPDX-License-Identifier: Apache-2.0 */
/* Service registry: the one model every discovery backend feeds (file,
 * Kubernetes, Consul, manual registration), and the immutable snapshots the
 * workers read.
 *
 * The registry itself is owned by the main thread: backends call the update
 * functions below (full replacement of what a source provides, or incremental
 * per-service / per-endpoint changes), then disc_registry_publish() builds a
 * new snapshot (only when something changed) and publishes it through a
 * core/snapshot.h slot. A snapshot never changes after publication; workers
 * look services and endpoints up in it without locks.
 *
 * Health of an endpoint is merged from what its source declares, active
 * checks (results fed by the checker through disc_registry_active_result) and
 * passive outcomes reported by workers through disc_report() (lock-free
 * counters outside the snapshot, harvested by disc_registry_tick()). A change
 * of effective health publishes a new snapshot.
 *
 * Staleness: each source records its last successful sync. While a source is
 * failing, its services and endpoints keep their last health and are marked
 * stale; health is never invented. */
#ifndef SHUNT_DISCOVERY_REGISTRY_H
#define SHUNT_DISCOVERY_REGISTRY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/snapshot.h"
#include "core/strbuf.h"
#include "core/proto.h"
#include "discovery/routes.h"

/* ---- bounds ---------------------------------------------------------------- */
#define DISC_NAME_MAX              64  /* service/namespace/port name, zone, region (incl. NUL) */
#define DISC_IDENTITY_MAX          256 /* SPIFFE ID */
#define DISC_HASH_KEY_MAX          128
#define DISC_HC_PATH_MAX           256
#define DISC_SOURCE_NAME_MAX       64
#define DISC_ERROR_MAX             512
#define DISC_MAX_PORTS             32 /* per service */
#define DISC_MAX_VIPS              16 /* per service */
#define DISC_MAX_SOURCES           16
#define DISC_DEFAULT_MAX_SERVICES  4096
#define DISC_DEFAULT_MAX_ENDPOINTS 65536
#define DISC_WEIGHT_MAX            10000
#define DISC_DEFAULT_WEIGHT        1
#define DISC_DEFAULT_NAMESPACE     "default"

/* ---- values ---------------------------------------------------------------- */

enum disc_health {
        DISC_HEALTH_UNKNOWN =
            0, /* not determined yet: in rotation (reduced weight is the lb's call) */
        DISC_HEALTH_HEALTHY,
        DISC_HEALTH_UNHEALTHY, /* out of rotation, still checked */
        DISC_HEALTH_DRAINING,  /* existing connections stay, no new ones */
        DISC_HEALTH__COUNT,
};

enum disc_mtls {
        DISC_MTLS_DEFAULT = 0, /* not set by the registry: the daemon's mtls.mode applies */
        DISC_MTLS_STRICT,
        DISC_MTLS_PERMISSIVE,
        DISC_MTLS_DISABLED,
};

enum disc_lb_algorithm {
        DISC_LB_DEFAULT = 0, /* not set: the daemon's load_balancing.algorithm applies */
        DISC_LB_ROUND_ROBIN,
        DISC_LB_LEAST_CONNECTIONS,
        DISC_LB_WEIGHTED,
        DISC_LB_CONSISTENT_HASH,
        DISC_LB_MAGLEV,
};

enum disc_hc_type {
        DISC_HC_NONE = 0,
        DISC_HC_TCP,  /* a connect that completes within the timeout */
        DISC_HC_HTTP, /* GET path, 2xx or 3xx within the timeout */
};

enum disc_source_kind {
        DISC_SOURCE_FILE = 0,
        DISC_SOURCE_KUBERNETES,
        DISC_SOURCE_CONSUL,
        DISC_SOURCE_MANUAL, /* POST /admin/endpoints */
        DISC_SOURCE_DNS,
};

/* Outcome of one connection or request, reported by a worker. */
enum disc_outcome {
        DISC_OUTCOME_SUCCESS = 0,
        DISC_OUTCOME_FAILURE, /* connect refused/timed out, reset, 5xx */
};

const char *disc_health_name(enum disc_health h);            /* "healthy", ... */
int disc_health_parse(const char *s, enum disc_health *out); /* any case; 0 or -EINVAL */
const char *disc_mtls_name(enum disc_mtls m);                /* "default", "strict", ... */
/* "strict", "permissive" or "disabled" (exact); 0 or -EINVAL. */
int disc_mtls_parse(const char *s, enum disc_mtls *out);
const char *disc_lb_name(enum disc_lb_algorithm a);         /* "default", "round_robin", ... */
const char *disc_hc_type_name(enum disc_hc_type t);         /* "none", "tcp", "http" */
const char *disc_source_kind_name(enum disc_source_kind k); /* "file", ... */

/* An address and port in a fixed, comparable form: IPv4 uses the first four
 * bytes of addr, the rest and pad are zero. port is in host order. */
struct disc_addr {
        uint8_t family; /* AF_INET or AF_INET6 */
        uint8_t pad;
        uint16_t port;
        uint8_t addr[16];
};

/* 0 or -EINVAL (not AF_INET/AF_INET6). */
int disc_addr_from_sockaddr(const struct sockaddr_storage *ss, struct disc_addr *out);
void disc_addr_to_sockaddr(const struct disc_addr *a, struct sockaddr_storage *out);
/* Parses an IPv4 or IPv6 literal (no brackets) with the given port. 0 or -EINVAL. */
int disc_addr_parse(const char *ip, uint16_t port, struct disc_addr *out);
/* The address alone, "10.0.0.1" or "fd00::1". */
const char *disc_addr_ip(const struct disc_addr *a, char *buf, size_t len);

struct disc_health_check {
        enum disc_hc_type type;
        uint32_t interval_ms; /* 0 with DISC_HC_NONE */
        uint32_t timeout_ms;
        uint16_t port; /* 0: the endpoint's port */
        uint8_t healthy_threshold;
        uint8_t unhealthy_threshold;
        char path[DISC_HC_PATH_MAX]; /* DISC_HC_HTTP */
        /* Passive: this many consecutive failed outcomes take an endpoint out
         * of rotation for ejection_ms (0 = passive ejection off). */
        uint32_t passive_failures;
        uint32_t ejection_ms;
};

#define DISC_HC_DEFAULT_INTERVAL_MS   10000
#define DISC_HC_DEFAULT_TIMEOUT_MS    1000
#define DISC_HC_DEFAULT_HEALTHY       2
#define DISC_HC_DEFAULT_UNHEALTHY     3
#define DISC_HC_DEFAULT_PASSIVE_FAILS 5
#define DISC_HC_DEFAULT_EJECTION_MS   30000
/* Fills the defaults above (type NONE, passive ejection on). */
void disc_health_check_defaults(struct disc_health_check *hc);

/* ---- input: what a backend reports ------------------------------------------ */

struct disc_port_spec {
        char name[DISC_NAME_MAX]; /* "" if unnamed */
        uint16_t port;
        uint16_t target_port; /* 0: same as port */
        enum proto proto;     /* declared protocol; PROTO_UNKNOWN when not declared (sniffed) */
};

struct disc_endpoint_spec {
        struct disc_addr addr; /* port: the endpoint's port (never 0) */
        uint32_t weight;       /* 0..DISC_WEIGHT_MAX */
        enum disc_health health;
        char zone[DISC_NAME_MAX];
        char region[DISC_NAME_MAX];
        /* Mesh identity of this endpoint: its SPIFFE ID ("" = the service's).
         * An endpoint is meshed when its effective identity is not empty and
         * unmeshed is false; outbound mTLS to it then requires that identity. */
        char identity[DISC_IDENTITY_MAX];
        bool unmeshed;       /* no sidecar: never TLS, even when the service has an identity */
        enum disc_mtls mtls; /* this endpoint's own mode; DEFAULT: the service's */
        char labels[DR_LABELS_MAX]; /* "k=v,k=v" sorted by key; route backends select by them */
        /* The cluster it comes from (service_discovery.clusters), part of its
         * key: the same address in two clusters is two endpoints. "" alone. */
        char cluster[DISC_NAME_MAX];
};

struct disc_service_spec {
        char name[DISC_NAME_MAX];
        char ns[DISC_NAME_MAX];
        char identity[DISC_IDENTITY_MAX]; /* "" if none */
        enum disc_mtls mtls;
        enum disc_lb_algorithm lb;
        char hash_key[DISC_HASH_KEY_MAX];
        struct disc_health_check hc;
        struct disc_addr vips[DISC_MAX_VIPS]; /* port 0 */
        uint32_t n_vips;
        struct disc_port_spec ports[DISC_MAX_PORTS];
        uint32_t n_ports;
        struct disc_endpoint_spec *endpoints; /* owned by whoever built the spec */
        uint32_t n_endpoints;
        /* Traffic routes (discovery/routes.h), NULL for none: a reference
         * held by whoever built the spec; the registry takes its own. */
        struct dr_routes *routes;
};

/* Fills defaults: namespace "default", health check defaults, nothing else. */
void disc_service_spec_init(struct disc_service_spec *s);

/* ---- the snapshot workers read ----------------------------------------------- */

struct disc_port {
        const char *name; /* "" if unnamed */
        uint16_t port;
        uint16_t target_port;
        enum proto proto;
};

struct disc_endpoint {
        struct disc_addr addr; /* addr.port is the port to connect to */
        uint32_t weight;
        enum disc_health health; /* effective (merged) health */
        uint32_t service;        /* index of its service in the snapshot */
        uint32_t slot;           /* passive outcome slot, see disc_report */
        uint32_t slot_gen;
        uint16_t source; /* source id */
        bool stale;      /* its source is failing: data may be out of date */
        const char *zone;
        const char *region;
        const char *cluster;  /* "" outside service_discovery.clusters */
        const char *identity; /* effective SPIFFE ID to require; "" when not meshed */
        bool meshed;          /* identity[0] != 0 */
        enum disc_mtls
            mtls; /* effective: the endpoint's, else its service's (DEFAULT: mtls.mode) */
        uint32_t next_same_addr; /* index of the next endpoint with this address, or UINT32_MAX */
        const char *labels;      /* "k=v,k=v", "" when none */
};

struct disc_service {
        const char *name;
        const char *ns;
        const char *identity; /* "" if none */
        enum disc_mtls mtls;
        enum disc_lb_algorithm lb;
        const char *hash_key; /* "" if none */
        struct disc_health_check hc;
        const struct disc_addr *vips; /* port 0 */
        uint32_t n_vips;
        const struct disc_port *ports;
        uint32_t n_ports;
        /* Sorted by address; an endpoint serves the service port whose
         * target_port equals its addr.port (see disc_endpoint_serves). */
        const struct disc_endpoint *endpoints;
        uint32_t n_endpoints;
        uint32_t n_healthy; /* health HEALTHY or UNKNOWN */
        uint16_t source;
        bool stale;
        /* Traffic routes, NULL for none; the snapshot holds a reference. */
        const struct dr_routes *routes;
};

struct disc_snapshot; /* opaque; starts with a struct snapshot */

/* The slot's objects are disc_snapshots: */
static inline const struct disc_snapshot *disc_snapshot_cast(const struct snapshot *s)
{
        return (const struct disc_snapshot *)(const void *)s;
}

uint64_t disc_snapshot_version(const struct disc_snapshot *s);
uint32_t disc_snapshot_n_services(const struct disc_snapshot *s);
uint32_t disc_snapshot_n_endpoints(const struct disc_snapshot *s);
/* Services in (namespace, name) order. i < n_services. */
const struct disc_service *disc_snapshot_service(const struct disc_snapshot *s, uint32_t i);
const struct disc_endpoint *disc_snapshot_endpoint(const struct disc_snapshot *s, uint32_t i);
const struct disc_service *disc_endpoint_service(const struct disc_snapshot *s,
                                                 const struct disc_endpoint *ep);

/* Lookups: no locks, no allocation. NULL when absent. ns NULL means "default". */
const struct disc_service *disc_find_service(const struct disc_snapshot *s, const char *ns,
                                             const char *name);
/* By virtual address and port (the original destination of a connection);
 * *port_idx (may be NULL) receives the index of the matched service port. */
const struct disc_service *disc_find_vip(const struct disc_snapshot *s, const struct disc_addr *dst,
                                         uint32_t *port_idx);
const struct disc_service *disc_find_vip_sa(const struct disc_snapshot *s,
                                            const struct sockaddr_storage *dst, uint32_t *port_idx);
/* By endpoint address and port; further matches (the same address in other
 * services) through ep->next_same_addr and disc_snapshot_endpoint. */
const struct disc_endpoint *disc_find_endpoint(const struct disc_snapshot *s,
                                               const struct disc_addr *addr);

/* Whether ep should receive connections for svc->ports[port_idx]. */
static inline bool disc_endpoint_serves(const struct disc_service *svc, uint32_t port_idx,
                                        const struct disc_endpoint *ep)
{
        return port_idx < svc->n_ports && ep->addr.port == svc->ports[port_idx].target_port;
}

/* Whether new connections may go to ep. */
static inline bool disc_endpoint_routable(const struct disc_endpoint *ep)
{
        return ep->health == DISC_HEALTH_HEALTHY || ep->health == DISC_HEALTH_UNKNOWN;
}

/* Passive hook, any thread, lock-free: reports the outcome of a connection or
 * request to ep (an endpoint of snapshot s, which the caller holds). A report
 * against an endpoint that has since been removed is dropped. */
void disc_report(const struct disc_snapshot *s, const struct disc_endpoint *ep,
                 enum disc_outcome outcome);

/* ---- the registry (main thread) ---------------------------------------------- */

struct disc_registry;

struct disc_registry_opts {
        uint32_t max_services;  /* 0: DISC_DEFAULT_MAX_SERVICES */
        uint32_t max_endpoints; /* 0: DISC_DEFAULT_MAX_ENDPOINTS */
        /* Monotonic milliseconds; NULL: clock_mono_ms. Tests substitute it. */
        uint64_t (*clock_ms)(void *ctx);
        void *clock_ctx;
};

struct disc_registry *disc_registry_new(const struct disc_registry_opts *opts);
/* Snapshots still held by readers stay valid after this. */
void disc_registry_free(struct disc_registry *r);
/* The slot through which snapshots are published (readers: snapshot_reader_get
 * then disc_snapshot_cast). */
struct snapshot_slot *disc_registry_slot(struct disc_registry *r);
/* A new reference to the current snapshot (release with snapshot_unref on
 * its base, see disc_snapshot_release). Never NULL after disc_registry_new. */
const struct disc_snapshot *disc_registry_acquire(struct disc_registry *r);
void disc_snapshot_release(const struct disc_snapshot *s);

/* Sources: each backend registers one (names are unique). Returns the id
 * (>= 0) or -ENOSPC / -EEXIST / -EINVAL. */
int disc_source_add(struct disc_registry *r, const char *name, enum disc_source_kind kind);
/* A sync attempt succeeded: clears staleness, records the time. */
void disc_source_sync_ok(struct disc_registry *r, int src);
/* A sync attempt failed (unreachable, invalid data): the source's services
 * and endpoints keep their data and health and become stale. why is kept
 * for /debug/cache. */
void disc_source_sync_failed(struct disc_registry *r, int src, const char *why);
bool disc_source_stale(const struct disc_registry *r, int src);
/* The source's server refused a request for lack of permission (Kubernetes
 * 401/403) or filtered its answer (Consul ACLs): counted for
 * shunt_discovery_access_denied_total; the backend logs it. */
void disc_source_denied(struct disc_registry *r, int src);
/* Milliseconds since the last successful sync (0 if never synced). */
uint64_t disc_source_staleness_ms(const struct disc_registry *r, int src);

/* Full update: after this call the source provides exactly svcs[0..n)
 * (services and their endpoints); everything else it provided is removed.
 * Endpoints that stay keep their active and passive health state. Validates
 * first and changes nothing on error (-EINVAL, -ENOSPC, logged). */
int disc_registry_replace(struct disc_registry *r, int src, const struct disc_service_spec *svcs,
                          size_t n);
/* Incremental updates. upsert_service replaces the service's definition and,
 * when replace_endpoints, the endpoints this source provides for it. */
int disc_registry_upsert_service(struct disc_registry *r, int src,
                                 const struct disc_service_spec *svc, bool replace_endpoints);
int disc_registry_remove_service(struct disc_registry *r, int src, const char *ns,
                                 const char *name);
/* Adds or updates one endpoint of an existing service. -ENOENT if the
 * service is unknown. */
int disc_registry_upsert_endpoint(struct disc_registry *r, int src, const char *ns,
                                  const char *name, const struct disc_endpoint_spec *ep);
/* Sets exactly the endpoints src provides for an existing service; other
 * sources' endpoints stay. -ENOENT if the service is unknown. */
int disc_registry_set_endpoints(struct disc_registry *r, int src, const char *ns, const char *name,
                                const struct disc_endpoint_spec *eps, size_t n);
int disc_registry_remove_endpoint(struct disc_registry *r, int src, const char *ns,
                                  const char *name, const struct disc_addr *addr);

/* Active check result for the endpoint in snapshot slot `slot` (as in
 * disc_endpoint.slot, with its slot_gen); thresholds from the service's health
 * check. Ignored if the endpoint is gone. */
void disc_registry_active_result(struct disc_registry *r, uint32_t slot, uint32_t slot_gen,
                                 bool ok);

/* Harvests passive reports, ends expired ejections and publishes if anything
 * changed. Call every DISC_TICK_MS from the main loop (see disc_registry_attach). */
#define DISC_TICK_MS 200
void disc_registry_tick(struct disc_registry *r);

struct loop;
/* Arms a DISC_TICK_MS timer on loop that calls disc_registry_tick. */
int disc_registry_attach(struct disc_registry *r, struct loop *loop);
void disc_registry_detach(struct disc_registry *r);

/* Builds and publishes a snapshot if anything changed since the last one.
 * Returns 0 (also when nothing changed) or -ENOMEM (the old one stays). */
int disc_registry_publish(struct disc_registry *r);
/* The version of the last published snapshot (1 after disc_registry_new). */
uint64_t disc_registry_version(const struct disc_registry *r);

/* ---- admin ------------------------------------------------------------------ */

/* GET /endpoints: every service with its endpoints (health, declared health,
 * weight, zone, region, source, staleness, passive state). service may be
 * NULL (all) or "name" / "namespace/name". */
void disc_render_endpoints(struct disc_registry *r, struct strbuf *sb, const char *service);
/* Members other components add to /endpoints (cmd/ wires the proxy's
 * resilience state in): each hook appends ",\"key\":value" pairs to the
 * service's or the endpoint's object. Either may be NULL. */
struct disc_render_hooks {
        void (*service)(void *ctx, const struct disc_service *svc, struct strbuf *sb);
        void (*endpoint)(void *ctx, const struct disc_service *svc, const struct disc_endpoint *ep,
                         struct strbuf *sb);
        void *ctx;
};
void disc_render_endpoints_with(struct disc_registry *r, struct strbuf *sb, const char *service,
                                const struct disc_render_hooks *hooks);
/* GET /debug/cache: snapshot version and size, counts by health, sources
 * with last sync, staleness and last error. */
void disc_render_cache(struct disc_registry *r, struct strbuf *sb);
/* Prometheus families: endpoints by health, services, version, and per
 * source staleness seconds, up, sync failures. */
void disc_render_metrics(struct disc_registry *r, struct strbuf *sb);
/* POST /admin/endpoints: {"service": "name", "namespace": "ns",
 * "endpoints": [{"address", "port", "weight", "zone", "region", "health"} or
 * {"id": "10.0.0.1:8080", "weight"}]} sets the manually registered endpoints
 * of that service (creating a service with no virtual address when unknown;
 * an empty list removes them), then publishes. 0, or -EINVAL with a message
 * naming the JSON path in err. */
int disc_admin_apply(struct disc_registry *r, const char *body, size_t len, char *err,
                     size_t errlen);

#endif

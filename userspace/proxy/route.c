/* Outbound routing; see route.h. */
#include "proxy/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

/* route_use.held bits */
#define HELD_LIMIT(k) (1u << (k)) /* enum lb_limit_kind */
#define HELD_RETRY    (1u << 3)   /* a slot of the retry budget */
#define HELD_PROBE    (1u << 4)   /* a half-open probe slot of use->ep */

struct route_entry {
        struct lb_table *lb; /* NULL when the port has no endpoint at all */
        uint32_t service;    /* index in the discovery snapshot */
        uint32_t port_idx;
        bool hashed;                     /* consistent hash / maglev: picks take a key hash */
        char key[2 * DISC_NAME_MAX + 8]; /* "ns/name:port", to carry state over */
};

struct route_table {
        struct snapshot snap;
        const struct disc_snapshot *disc; /* a reference */
        uint32_t *first_entry;            /* per service: index of its port 0 entry */
        struct route_entry *entries;
        uint32_t n_entries;
        uint64_t serial; /* tells workers their cursors belong to another table */
        /* Resilience settings in force for requests picked from this table. */
        struct lb_retry_config retry;
        struct lb_limits_config limits;
};

struct route_workers {
        uint64_t serial;
        uint32_t n;
        struct lb_worker *w[]; /* created on first use */
};

static void table_destroy(struct snapshot *s)
{
        struct route_table *t = (struct route_table *)(void *)s;
        for (uint32_t i = 0; i < t->n_entries; i++)
                if (t->entries[i].lb)
                        lb_table_unref(t->entries[i].lb);
        if (t->disc)
                disc_snapshot_release(t->disc);
        free(t->entries);
        free(t->first_entry);
        free(t);
}

struct snapshot *route_table_snapshot(struct route_table *t)
{
        return &t->snap;
}

static enum lb_algorithm service_algorithm(const struct disc_service *svc,
                                           const struct shunt_config *cfg)
{
        switch (svc->lb) {
        case DISC_LB_ROUND_ROBIN:
                return LB_ROUND_ROBIN;
        case DISC_LB_LEAST_CONNECTIONS:
                return LB_LEAST_CONNECTIONS;
        case DISC_LB_WEIGHTED:
                return LB_WEIGHTED;
        case DISC_LB_CONSISTENT_HASH:
                return LB_CONSISTENT_HASH;
        case DISC_LB_DEFAULT:
                break;
        }
        enum lb_algorithm a = LB_ROUND_ROBIN;
        lb_algorithm_parse(cfg->lb_algorithm, &a); /* validated by config */
        return a;
}

static const struct route_entry *find_prev(const struct route_table *prev, const char *key)
{
        if (!prev)
                return NULL;
        for (uint32_t i = 0; i < prev->n_entries; i++)
                if (strcmp(prev->entries[i].key, key) == 0)
                        return &prev->entries[i];
        return NULL;
}

static int build_entry(struct route_entry *e, const struct disc_service *svc, uint32_t port_idx,
                       const struct shunt_config *cfg, const struct route_table *prev,
                       const struct lb_limits_config *limits, struct lb_endpoint_in *scratch)
{
        snprintf(e->key, sizeof(e->key), "%s/%s:%u", svc->ns, svc->name, svc->ports[port_idx].port);
        e->port_idx = port_idx;
        size_t n = 0;
        for (uint32_t i = 0; i < svc->n_endpoints; i++) {
                const struct disc_endpoint *ep = &svc->endpoints[i];
                if (!disc_endpoint_serves(svc, port_idx, ep))
                        continue;
                struct lb_endpoint_in *in = &scratch[n++];
                memset(in, 0, sizeof(*in));
                disc_addr_to_sockaddr(&ep->addr, &in->addr);
                in->weight = ep->weight;
                in->healthy = disc_endpoint_routable(ep);
                snprintf(in->zone, sizeof(in->zone), "%s", ep->zone ? ep->zone : "");
        }
        if (n == 0)
                return 0;
        struct lb_config lc;
        lb_config_default(&lc);
        lc.algorithm = service_algorithm(svc, cfg);
        e->hashed = lc.algorithm == LB_CONSISTENT_HASH || lc.algorithm == LB_MAGLEV;
        const struct route_entry *pe = find_prev(prev, e->key);
        int rc = lb_table_build(&lc, scratch, n, pe ? pe->lb : NULL, &e->lb);
        if (rc == 0)
                lb_limits_set(&lb_table_res(e->lb)->limits, limits);
        return rc;
}

struct route_table *route_table_build(const struct disc_snapshot *disc,
                                      const struct shunt_config *cfg,
                                      const struct route_table *prev)
{
        static uint64_t serial;
        struct route_table *t = calloc(1, sizeof(*t));
        uint32_t n_svc = disc_snapshot_n_services(disc);
        uint32_t n_entries = 0;
        size_t max_eps = 1;
        for (uint32_t s = 0; s < n_svc; s++) {
                const struct disc_service *svc = disc_snapshot_service(disc, s);
                n_entries += svc->n_ports;
                if (svc->n_endpoints > max_eps)
                        max_eps = svc->n_endpoints;
        }
        struct lb_endpoint_in *scratch = calloc(max_eps, sizeof(*scratch));
        if (!t || !scratch)
                goto fail;
        snapshot_init(&t->snap, table_destroy);
        snapshot_ref((struct snapshot *)(void *)disc);
        t->disc = disc;
        t->serial = ++serial;
        lb_retry_config_default(&t->retry);
        lb_limits_config_default(&t->limits);
        t->first_entry = calloc(n_svc ? n_svc : 1, sizeof(*t->first_entry));
        t->entries = calloc(n_entries ? n_entries : 1, sizeof(*t->entries));
        if (!t->first_entry || !t->entries)
                goto fail;
        for (uint32_t s = 0; s < n_svc; s++) {
                const struct disc_service *svc = disc_snapshot_service(disc, s);
                t->first_entry[s] = t->n_entries;
                for (uint32_t k = 0; k < svc->n_ports; k++) {
                        struct route_entry *e = &t->entries[t->n_entries++];
                        e->service = s;
                        int rc = build_entry(e, svc, k, cfg, prev, &t->limits, scratch);
                        if (rc < 0)
                                log_error("route", 0, "service %s: load-balancer table: %s", e->key,
                                          strerror(-rc));
                }
        }
        free(scratch);
        return t;
fail:
        free(scratch);
        if (t && t->snap.destroy)
                snapshot_unref(&t->snap);
        else
                free(t);
        log_error("route", 0, "out of memory building the route table");
        return NULL;
}

void route_workers_free(struct route_workers *rw)
{
        if (!rw)
                return;
        for (uint32_t i = 0; i < rw->n; i++)
                lb_worker_free(rw->w[i]);
        free(rw);
}

static struct lb_worker *entry_worker(struct route_table *t, struct route_workers **rwp,
                                      uint32_t entry, uint64_t seed)
{
        struct route_workers *rw = *rwp;
        if (!rw || rw->serial != t->serial) {
                route_workers_free(rw);
                rw = calloc(1, sizeof(*rw) + t->n_entries * sizeof(rw->w[0]));
                *rwp = rw;
                if (!rw)
                        return NULL;
                rw->serial = t->serial;
                rw->n = t->n_entries;
        }
        if (!rw->w[entry])
                rw->w[entry] = lb_worker_new(seed ^ entry);
        return rw->w[entry];
}

/* One pick on entry `entry` of t: not exclude unless nothing else is left. */
static int pick_on(struct route_table *t, struct route_workers **rw, uint64_t seed, uint32_t entry,
                   const struct sockaddr_storage *client, const uint64_t *key_hash,
                   const struct sockaddr_storage *exclude, struct lb_pick *pick)
{
        struct route_entry *e = &t->entries[entry];
        if (!e->lb)
                return LB_ENOENDPOINT;
        struct lb_worker *lw = entry_worker(t, rw, entry, seed);
        if (!lw)
                return LB_ENOENDPOINT;
        uint64_t h = 0;
        if (e->hashed)
                h = key_hash ? *key_hash : lb_hash_source_ip(client);
        /* A retry tries the other endpoints before the one that failed. */
        size_t tries = exclude ? lb_table_count(e->lb) : 1;
        for (size_t i = 0; i < tries; i++) {
                int rc = lb_pick(lw, e->lb, e->hashed ? &h : NULL, pick);
                if (rc < 0)
                        return rc;
                if (!exclude || memcmp(&pick->ep->addr, exclude, sizeof(*exclude)) != 0)
                        break;
                if (e->hashed)
                        h = lb_mix64(h);
        }
        return 0;
}

static void use_take(struct route_table *t, uint32_t entry, const struct lb_pick *pick,
                     struct route_use *use)
{
        lb_conn_begin(pick->state);
        snapshot_ref(&t->snap);
        use->table = t;
        use->ep = pick->state;
        use->entry = entry;
}

/* The entry of the service port at dst; false when dst is no service. */
static bool find_entry(struct route_table *t, const struct sockaddr_storage *dst,
                       struct route_use *use)
{
        uint32_t port_idx;
        const struct disc_service *svc = disc_find_vip_sa(t->disc, dst, &port_idx);
        if (!svc)
                return false;
        /* Services are one array in the snapshot: the offset is the index. */
        uint32_t s = (uint32_t)(svc - disc_snapshot_service(t->disc, 0));
        use->entry = t->first_entry[s] + port_idx;
        use->declared = svc->ports[port_idx].proto;
        return true;
}

static enum route_result pick_new(struct route_table *t, struct route_workers **rw, uint64_t seed,
                                  const struct sockaddr_storage *dst,
                                  const struct sockaddr_storage *client, const uint64_t *key_hash,
                                  const struct sockaddr_storage *exclude,
                                  struct sockaddr_storage *upstream, struct route_use *use)
{
        memset(use, 0, sizeof(*use));
        use->declared = PROTO_UNKNOWN;
        if (!t || !find_entry(t, dst, use))
                return ROUTE_PASSTHROUGH;
        uint32_t entry = use->entry;
        struct lb_pick pick;
        if (pick_on(t, rw, seed, entry, client, key_hash, exclude, &pick) < 0)
                return ROUTE_NO_ENDPOINT;
        *upstream = pick.ep->addr;
        use_take(t, entry, &pick, use);
        return ROUTE_ENDPOINT;
}

enum route_result route_lookup(struct route_table *t, const struct sockaddr_storage *dst,
                               enum proto *declared, const char **hash_key, const char **name)
{
        *declared = PROTO_UNKNOWN;
        if (!t)
                return ROUTE_PASSTHROUGH;
        uint32_t port_idx;
        const struct disc_service *svc = disc_find_vip_sa(t->disc, dst, &port_idx);
        if (!svc)
                return ROUTE_PASSTHROUGH;
        uint32_t s = (uint32_t)(svc - disc_snapshot_service(t->disc, 0));
        const struct route_entry *e = &t->entries[t->first_entry[s] + port_idx];
        *declared = svc->ports[port_idx].proto;
        if (hash_key)
                *hash_key = svc->hash_key ? svc->hash_key : "";
        if (name)
                *name = e->key;
        return e->lb ? ROUTE_ENDPOINT : ROUTE_NO_ENDPOINT;
}

enum route_result route_pick(struct route_table *t, struct route_workers **rw, uint64_t seed,
                             const struct sockaddr_storage *dst,
                             const struct sockaddr_storage *client,
                             const struct sockaddr_storage *exclude,
                             struct sockaddr_storage *upstream, struct route_use *use)
{
        return pick_new(t, rw, seed, dst, client, NULL, exclude, upstream, use);
}

enum route_result route_pick_request(struct route_table *t, struct route_workers **rw,
                                     uint64_t seed, const struct sockaddr_storage *dst,
                                     const struct sockaddr_storage *client,
                                     const uint64_t *key_hash, struct sockaddr_storage *upstream,
                                     struct route_use *use)
{
        return pick_new(t, rw, seed, dst, client, key_hash, NULL, upstream, use);
}

const char *route_hash_key(struct route_table *t, const struct sockaddr_storage *dst)
{
        uint32_t port_idx;
        const struct disc_service *svc = t ? disc_find_vip_sa(t->disc, dst, &port_idx) : NULL;
        return svc ? svc->hash_key : NULL;
}

static const char *const outcome_names[] = {"success", "http_5xx", "connect_failure",
                                            "timeout", "reset",    "cancelled"};

const char *route_outcome_name(enum route_outcome o)
{
        return (unsigned)o < sizeof(outcome_names) / sizeof(outcome_names[0]) ? outcome_names[o]
                                                                              : "unknown";
}

/* Discovery's passive health for the endpoint at upstream in use's service. */
static void passive_report(const struct route_use *use, const struct sockaddr_storage *upstream,
                           bool ok)
{
        const struct route_table *t = use->table;
        struct disc_addr a;
        if (disc_addr_from_sockaddr(upstream, &a))
                return;
        uint32_t svc = t->entries[use->entry].service;
        /* An address may serve several services: report for this one. */
        const struct disc_endpoint *ep = disc_find_endpoint(t->disc, &a);
        while (ep && ep->service != svc)
                ep = ep->next_same_addr == UINT32_MAX
                         ? NULL
                         : disc_snapshot_endpoint(t->disc, ep->next_same_addr);
        if (ep)
                disc_report(t->disc, ep, ok ? DISC_OUTCOME_SUCCESS : DISC_OUTCOME_FAILURE);
}

void route_request_done(struct route_use *use, const struct sockaddr_storage *upstream,
                        enum route_outcome o)
{
        if (!use->table || !use->ep)
                return;
        use->held &= (uint8_t)~HELD_PROBE;
        if (o == ROUTE_CANCELLED)
                return;
        passive_report(use, upstream, o == ROUTE_SUCCESS);
}

void route_report(struct route_use *use, const struct sockaddr_storage *upstream, bool ok)
{
        route_request_done(use, upstream, ok ? ROUTE_SUCCESS : ROUTE_CONNECT_FAILURE);
}

static struct lb_service_res *use_res(const struct route_use *use)
{
        struct lb_table *lb = use->table ? use->table->entries[use->entry].lb : NULL;
        return lb ? lb_table_res(lb) : NULL;
}

/* The service's load for the retry budget: requests in flight, or for
 * per-connection (TCP) traffic the upstream connections, whichever is more. */
static uint32_t service_active(struct lb_service_res *r)
{
        uint32_t req = lb_limits_current(&r->limits, LB_LIMIT_REQUESTS);
        uint32_t conns = lb_limits_current(&r->limits, LB_LIMIT_CONNECTIONS);
        return req > conns ? req : conns;
}

static _Thread_local uint64_t retry_rng;

bool route_retry_allowed(struct route_use *use, enum route_outcome o, int status, bool idempotent,
                         uint32_t *backoff_ms)
{
        struct lb_service_res *r = use_res(use);
        if (!r)
                return false;
        const struct lb_retry_config *c = &use->table->retry;
        enum lb_retry_cause cause;
        switch (o) {
        case ROUTE_CONNECT_FAILURE:
                cause = LB_RETRY_CONNECT_FAILURE;
                break;
        case ROUTE_RESET:
                cause = LB_RETRY_RESET;
                break;
        case ROUTE_HTTP_5XX:
                cause = LB_RETRY_STATUS;
                break;
        default:
                return false; /* success, cancelled, or a request timeout: never retried */
        }
        if (!lb_retry_should(c, (uint32_t)use->retries + 1, cause, status, idempotent)) {
                if ((uint32_t)use->retries >= c->max_retries)
                        atomic_fetch_add_explicit(&r->retries_exhausted, 1, memory_order_relaxed);
                return false;
        }
        if (!(use->held & HELD_RETRY)) {
                if (lb_retry_budget_acquire(&r->budget, c, service_active(r)) < 0)
                        return false; /* counted in budget.refused */
                use->held |= HELD_RETRY;
        }
        use->retries++;
        atomic_fetch_add_explicit(&r->retries, 1, memory_order_relaxed);
        if (!retry_rng)
                retry_rng = lb_mix64((uint64_t)(uintptr_t)&retry_rng) | 1;
        uint64_t ns = lb_retry_backoff(c, use->retries, &retry_rng);
        *backoff_ms = (uint32_t)((ns + 999999) / 1000000);
        return true;
}

enum route_result route_retry_pick(struct route_use *use, struct route_workers **rw, uint64_t seed,
                                   const struct sockaddr_storage *client, const uint64_t *key_hash,
                                   struct sockaddr_storage *upstream)
{
        if (!use->table || !use->ep)
                return ROUTE_NO_ENDPOINT;
        struct lb_pick pick;
        if (pick_on(use->table, rw, seed, use->entry, client, key_hash, upstream, &pick) < 0)
                return ROUTE_NO_ENDPOINT;
        *upstream = pick.ep->addr;
        lb_conn_begin(pick.state);
        lb_conn_end(use->ep);
        use->ep = pick.state;
        return ROUTE_ENDPOINT;
}

int route_limit_acquire(struct route_use *use, enum lb_limit_kind k)
{
        struct lb_service_res *r = use_res(use);
        if (!r || (unsigned)k >= LB_LIMIT_NKINDS)
                return -EINVAL;
        if (use->held & HELD_LIMIT(k))
                return 0;
        int rc = lb_limits_acquire(&r->limits, k);
        if (rc == 0)
                use->held |= (uint8_t)HELD_LIMIT(k);
        return rc;
}

void route_limit_release(struct route_use *use, enum lb_limit_kind k)
{
        struct lb_service_res *r = use_res(use);
        if (!r || (unsigned)k >= LB_LIMIT_NKINDS || !(use->held & HELD_LIMIT(k)))
                return;
        lb_limits_release(&r->limits, k);
        use->held &= (uint8_t)~HELD_LIMIT(k);
}

void route_release(struct route_use *use)
{
        struct lb_service_res *r = use_res(use);
        if (r) {
                for (int k = 0; k < LB_LIMIT_NKINDS; k++)
                        route_limit_release(use, (enum lb_limit_kind)k);
                if (use->held & HELD_RETRY)
                        lb_retry_budget_release(&r->budget);
        }
        use->held = 0;
        if (use->ep)
                lb_conn_end(use->ep);
        if (use->table)
                snapshot_unref(&use->table->snap);
        use->ep = NULL;
        use->table = NULL;
}

const char *route_service_name(const struct route_use *use)
{
        return use->table ? use->table->entries[use->entry].key : "-";
}

const char *route_identity(const struct route_use *use)
{
        if (!use->table)
                return "";
        const struct route_table *t = use->table;
        return disc_snapshot_service(t->disc, t->entries[use->entry].service)->identity;
}

enum disc_mtls route_mtls(const struct route_use *use)
{
        if (!use->table)
                return DISC_MTLS_DEFAULT;
        const struct route_table *t = use->table;
        return disc_snapshot_service(t->disc, t->entries[use->entry].service)->mtls;
}

// SPDX-License-Identifier: Apache-2.0
/* Outbound routing; see route.h. */
#include "route/route.h"

#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/sockaddr.h"

/* route_use.held bits */
#define HELD_LIMIT(k) (1u << (k)) /* enum lb_limit_kind */
#define HELD_RETRY    (1u << 3)   /* a slot of the retry budget */
#define HELD_PROBE    (1u << 4)   /* a half-open probe slot of use->ep */

struct route_entry {
        struct lb_table *lb; /* NULL when the port has no endpoint at all */
        uint32_t service;    /* index in the discovery snapshot */
        uint32_t port_idx;
        bool hashed; /* consistent hash / maglev: picks take a key hash */
        /* "ns/name:port", or "ns/name:port#k=v,..." for a subset, to carry
         * state over */
        char key[2 * DISC_NAME_MAX + 8 + DR_LABELS_MAX];
        /* The service port's traffic routes (NULL: none) and, per rule and
         * backendRef, the entry its backend resolved to (ENTRY_NONE when
         * that service or port is not in the registry now). */
        const struct dr_routes *routes;
        const struct dr_port_table *rt;
        uint32_t (*bmap)[DR_MAX_BACKENDS];
        uint32_t *mmap; /* per rule: its RequestMirror's entry, ENTRY_NONE */
};

#define ENTRY_NONE UINT32_MAX

struct route_table {
        struct snapshot snap;
        const struct disc_snapshot *disc; /* a reference */
        uint32_t *first_entry;            /* per service: index of its port 0 entry */
        struct route_entry *entries;
        uint32_t n_entries;
        uint32_t n_base;      /* entries of service ports; subsets follow */
        uint32_t cap_entries; /* allocated */
        uint64_t serial;      /* tells workers their cursors belong to another table */
        /* Resilience settings in force for requests picked from this table. */
        struct lb_retry_config retry;
        struct lb_limits_config limits;
        struct lb_breaker_config breaker;
        struct lb_outlier_config outlier;
        uint32_t connect_ms, request_ms, idle_ms; /* timeouts.*, shown in /endpoints */
        /* Locality tiers: the settings of each class (0 local, 1 region,
         * 2 remote: tier_class), class 0 being the global ones above. */
        struct lb_config tiers; /* local_zone, local_region, failover, factor */
        struct lb_breaker_config tier_breaker[3];
        uint32_t tier_connect_ms[3], tier_request_ms[3], tier_retries[3];
};

/* The settings class of locality tier k: local, region, or remote (the
 * failover regions and the rest). */
static unsigned tier_class(uint8_t k)
{
        return k < 2 ? k : 2;
}

static const struct lb_breaker_config *bc_of(const struct route_table *t, uint8_t tier)
{
        return &t->tier_breaker[tier_class(tier)];
}

struct route_workers {
        uint64_t serial;
        uint32_t n;
        struct lb_worker *w[]; /* created on first use */
};

static void table_destroy(struct snapshot *s)
{
        struct route_table *t = (struct route_table *)(void *)s;
        for (uint32_t i = 0; i < t->n_entries; i++) {
                if (t->entries[i].lb)
                        lb_table_unref(t->entries[i].lb);
                free(t->entries[i].bmap);
                free(t->entries[i].mmap);
        }
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

#define MS_NS 1000000ull

/* The configuration's resilience keys, as config.c validated them (its
 * table's bounds are the lb validators'): not checked again here. */
static void resilience_config(const struct shunt_config *cfg, struct route_table *t)
{
        struct lb_breaker_config *b = &t->breaker;
        lb_breaker_config_default(b);
        b->consecutive_failures = cfg->cb_consecutive_failures;
        b->failure_percent = cfg->cb_failure_percent;
        b->min_requests = cfg->cb_min_requests;
        b->window_ns = cfg->cb_window_ms * MS_NS;
        b->open_ns = cfg->cb_open_timeout_ms * MS_NS;
        b->jitter_percent = cfg->cb_jitter_percent;
        b->half_open_probes = cfg->cb_half_open_probes;
        b->success_threshold = cfg->cb_success_threshold;
        struct lb_outlier_config *o = &t->outlier;
        lb_outlier_config_default(o);
        o->consecutive_failures = cfg->od_consecutive_failures;
        o->base_ejection_ns = cfg->od_base_ejection_ms * MS_NS;
        o->max_ejection_ns = cfg->od_max_ejection_ms * MS_NS;
        o->max_ejection_percent = cfg->od_max_ejection_percent;
        lb_limits_config_default(&t->limits);
        t->limits.max[LB_LIMIT_CONNECTIONS] = cfg->limit_max_connections;
        t->limits.max[LB_LIMIT_PENDING] = cfg->limit_max_pending;
        t->limits.max[LB_LIMIT_REQUESTS] = cfg->limit_max_requests;
        struct lb_retry_config *r = &t->retry;
        lb_retry_config_default(r);
        r->max_retries = cfg->retry_max;
        r->backoff_base_ns = cfg->retry_backoff_base_ms * MS_NS;
        r->backoff_max_ns = cfg->retry_backoff_max_ms * MS_NS;
        r->budget_percent = cfg->retry_budget_percent;
        r->budget_min = cfg->retry_budget_min;
        t->connect_ms = cfg->connect_timeout_ms;
        t->request_ms = cfg->request_timeout_ms;
        t->idle_ms = cfg->idle_timeout_ms;
        struct lb_config *lc = &t->tiers;
        lb_config_default(lc);
        snprintf(lc->local_zone, sizeof(lc->local_zone), "%s", cfg->lb_local_zone);
        snprintf(lc->local_region, sizeof(lc->local_region), "%s", cfg->lb_local_region);
        lc->locality_min_percent = cfg->lb_locality_min_percent;
        lc->overprovisioning_percent = cfg->lb_overprovisioning_percent;
        /* config.c validated the list: at most LB_FAILOVER_MAX names */
        for (const char *p = cfg->lb_failover; *p && lc->n_failover < LB_FAILOVER_MAX;) {
                size_t len = strcspn(p, ",");
                snprintf(lc->failover[lc->n_failover++], LB_ZONE_MAX, "%.*s", (int)len, p);
                p += len + (p[len] == ',');
        }
        for (unsigned k = 0; k < 3; k++) {
                t->tier_breaker[k] = *b;
                t->tier_connect_ms[k] = 0; /* 0: not set, the global timeouts */
                t->tier_request_ms[k] = 0;
                t->tier_retries[k] = r->max_retries;
                if (k == 0)
                        continue;
                if (cfg->lb_tier[k - 1].consecutive_failures)
                        t->tier_breaker[k].consecutive_failures =
                            cfg->lb_tier[k - 1].consecutive_failures;
                if (cfg->lb_tier[k - 1].connect_ms)
                        t->tier_connect_ms[k] = cfg->lb_tier[k - 1].connect_ms;
                if (cfg->lb_tier[k - 1].request_ms)
                        t->tier_request_ms[k] = cfg->lb_tier[k - 1].request_ms;
                if (cfg->lb_tier[k - 1].max_retries >= 0)
                        t->tier_retries[k] = (uint32_t)cfg->lb_tier[k - 1].max_retries;
        }
}

/* An open breaker turned half-open (a worker's pick, a result or the main
 * thread's tick): one line. */
static void log_half_open(const struct route_table *t, const struct sockaddr_storage *addr,
                          const char *key)
{
        char ubuf[SOCKADDR_STRLEN];
        log_info("route", 0,
                 "circuit breaker of %s (service %s) half-open: up to %u probe requests",
                 sockaddr_format(addr, ubuf, sizeof(ubuf)), key, t->breaker.half_open_probes);
}

/* Admission of a picked endpoint (lb_ep_admit); *probe: as a half-open probe. */
static bool admit(const struct route_table *t, const struct route_entry *e,
                  const struct lb_endpoint *ep, uint64_t now, bool *probe)
{
        struct lb_ep_events ev;
        enum lb_admit a =
            lb_ep_admit(ep->state, lb_table_res(e->lb), bc_of(t, ep->tier), &t->outlier, now, &ev);
        if (ev.half_open)
                log_half_open(t, &ep->addr, e->key);
        *probe = a == LB_ADMIT_PROBE;
        return a != LB_ADMIT_REFUSED;
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
        case DISC_LB_MAGLEV:
                return LB_MAGLEV;
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

/* An endpoint's key in the load-balancer tables: its cluster (0 outside
 * service_discovery.clusters). */
static uint64_t cluster_key(const char *cluster)
{
        return cluster && cluster[0] ? lb_hash(cluster, strlen(cluster)) | 1 : 0;
}

/* The entry of svc's port port_idx, or of the subset of its endpoints that
 * selector ("k=v,...", "" for all) selects. */
static int build_entry(struct route_entry *e, const struct disc_snapshot *disc,
                       const struct disc_service *svc, uint32_t port_idx, const char *selector,
                       const struct shunt_config *cfg, const struct route_table *prev,
                       const struct lb_limits_config *limits, const struct lb_config *tiers,
                       struct lb_endpoint_in *scratch)
{
        snprintf(e->key, sizeof(e->key), "%s/%s:%u%s%s", svc->ns, svc->name,
                 svc->ports[port_idx].port, selector[0] ? "#" : "", selector);
        e->port_idx = port_idx;
        size_t n = 0;
        for (uint32_t i = 0; i < svc->n_endpoints; i++) {
                const struct disc_endpoint *ep = &svc->endpoints[i];
                if (!disc_endpoint_serves(svc, port_idx, ep) ||
                    !dr_labels_select(selector, ep->labels ? ep->labels : ""))
                        continue;
                struct lb_endpoint_in *in = &scratch[n++];
                memset(in, 0, sizeof(*in));
                disc_addr_to_sockaddr(&ep->addr, &in->addr);
                /* Two clusters may use the same pod address: the cluster is
                 * part of the endpoint's key, and ref finds the endpoint (its
                 * identity, its cluster) again after a pick. */
                in->key = cluster_key(ep->cluster);
                in->ref = (uint32_t)(ep - disc_snapshot_endpoint(disc, 0));
                in->weight = ep->weight;
                in->healthy = disc_endpoint_routable(ep);
                snprintf(in->zone, sizeof(in->zone), "%s", ep->zone ? ep->zone : "");
                snprintf(in->region, sizeof(in->region), "%s", ep->region ? ep->region : "");
        }
        if (n == 0)
                return 0;
        struct lb_config lc = *tiers;
        lc.algorithm = service_algorithm(svc, cfg);
        e->hashed = lc.algorithm == LB_CONSISTENT_HASH || lc.algorithm == LB_MAGLEV;
        const struct route_entry *pe = find_prev(prev, e->key);
        int rc = lb_table_build(&lc, scratch, n, pe ? pe->lb : NULL, &e->lb);
        if (rc == 0)
                lb_limits_set(&lb_table_res(e->lb)->limits, limits);
        return rc;
}

/* The index of port number `port` in svc, or -1. */
static int port_index(const struct disc_service *svc, uint16_t port)
{
        for (uint32_t i = 0; i < svc->n_ports; i++)
                if (svc->ports[i].port == port)
                        return (int)i;
        return -1;
}

/* The entry backendRef be of entry e's routes resolves to: a whole service
 * port is that port's entry, a selector gets an entry of its own (one per
 * distinct service, port and selector), appended at t->n_entries.
 * ENTRY_NONE when that service or port is not in the registry now. */
static uint32_t resolve_backend(struct route_table *t, const struct route_entry *e,
                                const struct dr_backend *be, const struct shunt_config *cfg,
                                const struct route_table *prev, struct lb_endpoint_in *scratch)
{
        const struct disc_service *svc = disc_snapshot_service(t->disc, e->service);
        const struct disc_service *to = disc_find_service(t->disc, be->ns, be->name);
        int pi = to ? port_index(to, be->port ? be->port : svc->ports[e->port_idx].port) : -1;
        if (pi < 0)
                return ENTRY_NONE;
        uint32_t s = (uint32_t)(to - disc_snapshot_service(t->disc, 0));
        if (!be->selector[0])
                return t->first_entry[s] + (uint32_t)pi;
        char key[sizeof(e->key)];
        snprintf(key, sizeof(key), "%s/%s:%u#%s", to->ns, to->name, to->ports[pi].port,
                 be->selector);
        uint32_t k = t->n_base;
        while (k < t->n_entries && strcmp(t->entries[k].key, key))
                k++;
        if (k == t->n_entries) {
                if (k == t->cap_entries)
                        return ENTRY_NONE; /* counted before the build: not reached */
                struct route_entry *se = &t->entries[t->n_entries++];
                se->service = s;
                int rc = build_entry(se, t->disc, to, (uint32_t)pi, be->selector, cfg, prev,
                                     &t->limits, &t->tiers, scratch);
                if (rc < 0)
                        log_error("route", 0, "subset %s: load-balancer table: %s", se->key,
                                  strerror(-rc));
        }
        return k;
}

/* Resolves the backendRefs (and mirrors) of entry e's routes to entries. */
static void resolve_backends(struct route_table *t, struct route_entry *e,
                             const struct shunt_config *cfg, const struct route_table *prev,
                             struct lb_endpoint_in *scratch)
{
        const struct disc_service *svc = disc_snapshot_service(t->disc, e->service);
        const struct dr_routes *r = svc->routes;
        e->routes = r;
        e->rt = dr_port_table(r, svc->ports[e->port_idx].port);
        if (!e->rt)
                return;
        e->bmap = calloc(r->n_rules, sizeof(*e->bmap));
        e->mmap = calloc(r->n_rules, sizeof(*e->mmap));
        if (!e->bmap || !e->mmap) {
                e->rt = NULL;
                log_error("route", 0, "service %s: out of memory for its routes", e->key);
                return;
        }
        for (uint32_t u = 0; u < r->n_rules; u++) {
                const struct dr_rule *rule = &r->rules[u];
                for (uint32_t b = 0; b < rule->n_backends; b++)
                        e->bmap[u][b] =
                            resolve_backend(t, e, &rule->backends[b], cfg, prev, scratch);
                e->mmap[u] = rule->has_mirror
                                 ? resolve_backend(t, e, &rule->mirror, cfg, prev, scratch)
                                 : ENTRY_NONE;
        }
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
        uint32_t n_base = n_entries;
        for (uint32_t s = 0; s < n_svc; s++) { /* room for every subset backend */
                const struct dr_routes *r = disc_snapshot_service(disc, s)->routes;
                for (uint32_t u = 0; r && u < r->n_rules; u++) {
                        for (uint32_t b = 0; b < r->rules[u].n_backends; b++)
                                n_entries += r->rules[u].backends[b].selector[0] ? 1 : 0;
                        n_entries += r->rules[u].has_mirror && r->rules[u].mirror.selector[0];
                }
        }
        struct lb_endpoint_in *scratch = calloc(max_eps, sizeof(*scratch));
        if (!t || !scratch)
                goto fail;
        snapshot_init(&t->snap, table_destroy);
        snapshot_ref((struct snapshot *)(void *)disc);
        t->disc = disc;
        t->serial = ++serial;
        resilience_config(cfg, t);
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
                        int rc = build_entry(e, t->disc, svc, k, "", cfg, prev, &t->limits,
                                             &t->tiers, scratch);
                        if (rc < 0)
                                log_error("route", 0, "service %s: load-balancer table: %s", e->key,
                                          strerror(-rc));
                }
        }
        t->n_base = n_base;
        t->cap_entries = n_entries;
        for (uint32_t i = 0; i < n_base; i++)
                if (disc_snapshot_service(disc, t->entries[i].service)->routes)
                        resolve_backends(t, &t->entries[i], cfg, prev, scratch);
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

/* One pick on entry `entry` of t: not exclude unless nothing else is left,
 * and only an endpoint the breaker and outlier detection admit (*probe:
 * it was admitted as a half-open probe). */
/* The index in lb of the endpoint whose state is st, else the first at
 * addr (st NULL): two clusters' copies of one address differ by state. */
static int find_excluded(const struct lb_table *lb, const struct lb_ep_state *st,
                         const struct sockaddr_storage *addr)
{
        for (size_t k = 0; st && k < lb_table_count(lb); k++)
                if (lb_table_endpoint(lb, k)->state == st)
                        return (int)k;
        return addr ? lb_table_find(lb, addr) : -1;
}

static int pick_on(struct route_table *t, struct route_workers **rw, uint64_t seed, uint32_t entry,
                   const struct sockaddr_storage *client, const uint64_t *key_hash,
                   const struct sockaddr_storage *exclude, const struct lb_ep_state *exclude_st,
                   struct lb_pick *pick, bool *probe)
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
        uint64_t now = clock_mono_ns();
        /* Bounded: a refused endpoint is made unavailable, so each further
         * try sees one fewer. A retry picks among the others (local zone
         * first, then all) and comes back to the one that failed only when
         * nothing else is left. */
        size_t n = lb_table_count(e->lb);
        int xi = find_excluded(e->lb, exclude_st, exclude);
        for (size_t i = 0; i <= n; i++) {
                int rc = xi >= 0 ? lb_pick_excluding(lw, e->lb, e->hashed ? &h : NULL, (uint32_t)xi,
                                                     pick)
                                 : lb_pick(lw, e->lb, e->hashed ? &h : NULL, pick);
                if (rc < 0)
                        break;
                if (admit(t, e, pick->ep, now, probe))
                        return 0;
                lb_ep_refresh(pick->state, bc_of(t, pick->ep->tier), now);
                if (e->hashed)
                        h = lb_mix64(h);
        }
        if (xi >= 0) {
                const struct lb_endpoint *x = lb_table_endpoint(e->lb, (size_t)xi);
                if (x->healthy && admit(t, e, x, now, probe)) {
                        pick->index = (uint32_t)xi; /* nothing else is left */
                        pick->ep = x;
                        pick->state = x->state;
                        return 0;
                }
        }
        return LB_ENOENDPOINT;
}

/* The locality tier of the endpoint use now holds, counted per tier. */
static void use_tier(const struct route_table *t, uint32_t entry, const struct lb_pick *pick,
                     struct route_use *use)
{
        const struct lb_table *lb = t->entries[entry].lb;
        use->tier = pick->ep->tier;
        use->locality = NULL;
        if (!lb_table_tiers(lb))
                return;
        use->locality = lb_tier_name(t->tiers.n_failover, use->tier);
        lb_table_tier_picked(lb, use->tier);
}

static void use_take(struct route_table *t, uint32_t entry, const struct lb_pick *pick,
                     struct route_use *use)
{
        lb_conn_begin(pick->state);
        snapshot_ref(&t->snap);
        use->table = t;
        use->ep = pick->state;
        use->entry = entry;
        use->disc_ep = pick->ep->ref; /* its cluster's, when clusters share the address */
        use_tier(t, entry, pick, use);
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

static _Thread_local uint64_t split_rng;

/* A uniform 64-bit number for a weighted split (splitmix64 per thread). */
static uint64_t split_random(uint64_t seed)
{
        if (!split_rng)
                split_rng = lb_mix64(seed ^ clock_mono_ns() ^ (uint64_t)(uintptr_t)&split_rng) | 1;
        split_rng += 0x9e3779b97f4a7c15ull;
        return lb_mix64(split_rng);
}

/* ---- local rate limits (dr_ratelimit) ----
 *
 * A bucket is GCRA's theoretical arrival time (tat): taking k tokens at
 * `now` moves it to max(tat, now) + k * interval, allowed while that stays
 * within burst * interval of now. One compare-and-swap, no lock. The
 * rule's bucket is shared by the workers; each thread takes `chunk` tokens
 * at a time into its own slot and spends those without touching the
 * shared word (at most chunk - 1 tokens per thread stay unspent). */

/* Takes k tokens from *tat. 0, or the ns until one token is back. */
static uint64_t gcra_take(_Atomic uint64_t *tat, const struct dr_ratelimit *rl, uint64_t k,
                          uint64_t now)
{
        uint64_t tau = (uint64_t)rl->burst * rl->interval_ns;
        uint64_t t = atomic_load_explicit(tat, memory_order_relaxed);
        for (;;) {
                uint64_t base = t > now ? t : now, next = base + k * rl->interval_ns;
                if (next - now > tau) {
                        uint64_t one = base + rl->interval_ns - now; /* a single token */
                        return one > tau ? one - tau : 1;
                }
                if (atomic_compare_exchange_weak_explicit(tat, &t, next, memory_order_relaxed,
                                                          memory_order_relaxed))
                        return 0;
        }
}

/* The bucket of source h (a hash) in a per-source limit: its slot, or the
 * most idle of the probed ones taken over (counted when it was not full). */
#define RL_PROBES 8
static _Atomic uint64_t *source_bucket(struct dr_ratelimit *rl, uint64_t h, uint64_t now)
{
        h |= 1;
        uint32_t mask = DR_RL_SOURCES - 1, i = (uint32_t)(h >> 32) & mask;
        struct dr_rl_source *idle = NULL;
        for (uint32_t n = 0; n < RL_PROBES; n++, i = (i + 1) & mask) {
                struct dr_rl_source *s = &rl->sources[i];
                uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
                if (k == h)
                        return &s->tat;
                if (k == 0 && atomic_compare_exchange_strong_explicit(
                                  &s->key, &k, h, memory_order_relaxed, memory_order_relaxed))
                        return &s->tat;
                if (k == h) /* another thread claimed it for the same source */
                        return &s->tat;
                if (!idle || atomic_load_explicit(&s->tat, memory_order_relaxed) <
                                 atomic_load_explicit(&idle->tat, memory_order_relaxed))
                        idle = s;
        }
        /* Every probed bucket is another source's: reuse the most idle one.
         * A bucket whose time has passed is full, so nothing is lost. */
        if (atomic_load_explicit(&idle->tat, memory_order_relaxed) > now)
                atomic_fetch_add_explicit(&rl->evictions, 1, memory_order_relaxed);
        atomic_store_explicit(&idle->key, h, memory_order_relaxed);
        atomic_store_explicit(&idle->tat, 0, memory_order_relaxed);
        return &idle->tat;
}

static _Thread_local int rl_slot = -1;
static _Atomic unsigned rl_next_slot;

/* Whether a request of rule may go now (0) or the seconds until it may. */
static uint32_t rate_limit(struct dr_ratelimit *rl, const struct sockaddr_storage *client)
{
        uint64_t now = clock_mono_ns(), wait;
        if (rl->per_source) {
                uint64_t h = client ? lb_hash_source_ip(client) : 0;
                wait = gcra_take(source_bucket(rl, h, now), rl, 1, now);
        } else {
                if (rl_slot < 0)
                        rl_slot = (int)(atomic_fetch_add(&rl_next_slot, 1) % DR_RL_SLOTS);
                struct dr_rl_slot *sl = &rl->slots[rl_slot];
                /* Threads beyond DR_RL_SLOTS share a slot: atomics keep it exact. */
                if (atomic_fetch_sub_explicit(&sl->tokens, 1, memory_order_relaxed) > 0)
                        return 0;
                atomic_fetch_add_explicit(&sl->tokens, 1, memory_order_relaxed);
                wait = rl->chunk > 1 ? gcra_take(&rl->tat, rl, rl->chunk, now) : 1;
                if (wait == 0) {
                        atomic_fetch_add_explicit(&sl->tokens, rl->chunk - 1, memory_order_relaxed);
                        return 0;
                }
                wait = gcra_take(&rl->tat, rl, 1, now);
        }
        if (wait == 0)
                return 0;
        atomic_fetch_add_explicit(&rl->limited, 1, memory_order_relaxed);
        uint64_t s = (wait + 999999999ull) / 1000000000ull;
        return s ? (uint32_t)(s > UINT32_MAX ? UINT32_MAX : s) : 1;
}

/* What a connection (no request: plain TCP, or before HTTP is seen)
 * offers to matching: only rules without conditions match it. */
static const struct dr_request no_request = {.method = -1, .path = "/", .path_len = 1};

/* Applies the routes of use->entry, if any, to req: sets use->rule and
 * use->match and moves use->entry to the picked backend's entry. */
static enum route_result apply_routes(struct route_table *t, uint64_t seed,
                                      const uint64_t *key_hash, const struct dr_request *req,
                                      const struct sockaddr_storage *client, struct route_use *use)
{
        const struct route_entry *e = &t->entries[use->entry];
        if (!e->rt)
                return ROUTE_ENDPOINT;
        use->routed = 1;
        const struct dr_match *m = dr_match_request(e->rt, req ? req : &no_request);
        if (!m) {
                struct dr_routes *r = (struct dr_routes *)(uintptr_t)e->routes;
                atomic_fetch_add_explicit(&r->misses, 1, memory_order_relaxed);
                /* A connection no rule takes goes to the service itself. */
                return req ? ROUTE_NO_ROUTE : ROUTE_ENDPOINT;
        }
        struct dr_rule *rule = &((struct dr_routes *)(uintptr_t)e->routes)->rules[m->rule];
        atomic_fetch_add_explicit(&rule->hits, 1, memory_order_relaxed);
        use->rule = rule;
        use->match = m;
        if (rule->redirect) /* a connection goes to the service itself */
                return req ? ROUTE_REDIRECT : ROUTE_ENDPOINT;
        if (req && rule->rl && (use->retry_after_s = rate_limit(rule->rl, client)))
                return ROUTE_RATE_LIMITED;
        if (req && rule->abort_ppm && split_random(seed) % 1000000 < rule->abort_ppm) {
                atomic_fetch_add_explicit(&rule->faults, 1, memory_order_relaxed);
                return ROUTE_ABORT;
        }
        if (req && rule->delay_ppm && split_random(seed) % 1000000 < rule->delay_ppm) {
                atomic_fetch_add_explicit(&rule->delays, 1, memory_order_relaxed);
                use->delay_ms = rule->delay_ms;
        }
        if (req && rule->has_mirror && split_random(seed) % 1000000 < rule->mirror_ppm) {
                use->mirror = 1;
                use->mirror_entry = e->mmap[m->rule];
        }
        int b = dr_pick_backend(rule, rule->sticky && key_hash ? lb_mix64(*key_hash)
                                                               : split_random(seed));
        if (b < 0)
                return ROUTE_ENDPOINT;
        atomic_fetch_add_explicit(&rule->backends[b].hits, 1, memory_order_relaxed);
        uint32_t to = e->bmap[m->rule][b];
        if (to == ENTRY_NONE)
                return ROUTE_NO_ENDPOINT;
        use->entry = to;
        return ROUTE_ENDPOINT;
}

static enum route_result pick_new(struct route_table *t, struct route_workers **rw, uint64_t seed,
                                  const struct sockaddr_storage *dst,
                                  const struct sockaddr_storage *client, const uint64_t *key_hash,
                                  const struct dr_request *req,
                                  const struct sockaddr_storage *exclude,
                                  struct sockaddr_storage *upstream, struct route_use *use)
{
        memset(use, 0, sizeof(*use));
        use->declared = PROTO_UNKNOWN;
        if (!t || !find_entry(t, dst, use))
                return ROUTE_PASSTHROUGH;
        enum route_result rr = apply_routes(t, seed, key_hash, req, client, use);
        if (rr != ROUTE_ENDPOINT)
                return rr;
        uint32_t entry = use->entry;
        struct lb_pick pick;
        bool probe;
        if (pick_on(t, rw, seed, entry, client, key_hash, exclude, NULL, &pick, &probe) < 0)
                return ROUTE_NO_ENDPOINT;
        *upstream = pick.ep->addr;
        use_take(t, entry, &pick, use);
        if (probe)
                use->held |= HELD_PROBE;
        return ROUTE_ENDPOINT;
}

enum disc_mtls route_inbound_mtls(struct route_table *t, const struct sockaddr_storage *local)
{
        struct disc_addr a;
        if (!t || disc_addr_from_sockaddr(local, &a) < 0)
                return DISC_MTLS_DEFAULT;
        /* Strictness order of the registry's values. */
        static const int rank[] = {[DISC_MTLS_DEFAULT] = 0,
                                   [DISC_MTLS_DISABLED] = 1,
                                   [DISC_MTLS_PERMISSIVE] = 2,
                                   [DISC_MTLS_STRICT] = 3};
        enum disc_mtls best = DISC_MTLS_DEFAULT;
        const struct disc_endpoint *ep = disc_find_endpoint(t->disc, &a);
        for (uint32_t n = 0; ep && n < disc_snapshot_n_endpoints(t->disc); n++) {
                if (rank[ep->mtls] > rank[best]) /* the endpoint's, else its service's */
                        best = ep->mtls;
                ep = ep->next_same_addr == UINT32_MAX
                         ? NULL
                         : disc_snapshot_endpoint(t->disc, ep->next_same_addr);
        }
        return best;
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
        return pick_new(t, rw, seed, dst, client, NULL, NULL, exclude, upstream, use);
}

enum route_result route_pick_request(struct route_table *t, struct route_workers **rw,
                                     uint64_t seed, const struct sockaddr_storage *dst,
                                     const struct sockaddr_storage *client,
                                     const uint64_t *key_hash, struct sockaddr_storage *upstream,
                                     struct route_use *use)
{
        return pick_new(t, rw, seed, dst, client, key_hash, NULL, NULL, upstream, use);
}

enum route_result route_pick_http(struct route_table *t, struct route_workers **rw, uint64_t seed,
                                  const struct sockaddr_storage *dst,
                                  const struct sockaddr_storage *client, const uint64_t *key_hash,
                                  const struct dr_request *req, struct sockaddr_storage *upstream,
                                  struct route_use *use)
{
        return pick_new(t, rw, seed, dst, client, key_hash, req, NULL, upstream, use);
}

static void header_edits(const struct dr_header_mod *h, struct route_edits *e)
{
        for (uint32_t i = 0; i < h->n_remove; i++)
                e->drop[e->ndrop++] = h->remove[i].name;
        for (uint32_t i = 0; i < h->n_set; i++) {
                e->drop[e->ndrop++] = h->set[i].name;
                e->add_name[e->nadd] = h->set[i].name;
                e->add_value[e->nadd++] = h->set[i].value;
        }
        for (uint32_t i = 0; i < h->n_add; i++) {
                e->add_name[e->nadd] = h->add[i].name;
                e->add_value[e->nadd++] = h->add[i].value;
        }
}

bool route_request_edits(const struct route_use *use, const char *path, size_t path_len,
                         struct route_edits *e)
{
        e->ndrop = e->nadd = 0;
        e->host = NULL;
        e->path_len = -1;
        const struct dr_rule *r = use->rule;
        if (!r)
                return false;
        if (r->has_req_hdr)
                header_edits(&r->req_hdr, e);
        e->host = r->rewrite_host;
        if (r->rewrite)
                e->path_len =
                    dr_rewrite_path(r, use->match, path, path_len, e->path, sizeof(e->path));
        return e->ndrop || e->nadd || e->host || e->path_len >= 0;
}

bool route_response_edits(const struct route_use *use, struct route_edits *e)
{
        e->ndrop = e->nadd = 0;
        e->host = NULL;
        e->path_len = -1;
        if (!use->rule || !use->rule->has_resp_hdr)
                return false;
        header_edits(&use->rule->resp_hdr, e);
        return true;
}

bool route_mirror_pick(struct route_use *use, struct route_workers **rw, uint64_t seed,
                       const struct sockaddr_storage *client, struct sockaddr_storage *addr)
{
        struct route_table *t = use->table;
        if (!use->mirror || !t || use->mirror_entry == ENTRY_NONE)
                return false;
        struct route_entry *e = &t->entries[use->mirror_entry];
        struct lb_worker *lw = e->lb ? entry_worker(t, rw, use->mirror_entry, seed) : NULL;
        if (!lw)
                return false;
        uint64_t h = lb_hash_source_ip(client);
        struct lb_pick pick;
        /* No admission, nothing held: a mirror's result feeds no breaker. */
        if (lb_pick(lw, e->lb, e->hashed ? &h : NULL, &pick) < 0)
                return false;
        *addr = pick.ep->addr;
        return true;
}

void route_mirror_count(const struct route_use *use, bool sent)
{
        struct dr_rule *r = (struct dr_rule *)(uintptr_t)use->rule;
        if (r && use->mirror)
                atomic_fetch_add_explicit(sent ? &r->mirrors : &r->mirror_drops, 1,
                                          memory_order_relaxed);
}

uint32_t route_timeout_ms(const struct route_use *use, uint32_t dflt)
{
        if (use->rule && use->rule->timeout_ms)
                return use->rule->timeout_ms;
        if (use->table && use->locality && use->table->tier_request_ms[tier_class(use->tier)])
                return use->table->tier_request_ms[tier_class(use->tier)];
        return dflt;
}

uint32_t route_try_timeout_ms(const struct route_use *use)
{
        return use->rule ? use->rule->backend_timeout_ms : 0;
}

uint32_t route_connect_timeout_ms(const struct route_use *use, uint32_t dflt)
{
        if (use->table && use->locality && use->table->tier_connect_ms[tier_class(use->tier)])
                return use->table->tier_connect_ms[tier_class(use->tier)];
        return dflt;
}

const char *route_locality(const struct route_use *use)
{
        return use->locality;
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

/* Outcomes as outlier detection counts them: a request timeout is a
 * gateway timeout (504) and a reset a bad gateway (502), both 5xx. */
static enum lb_outcome outlier_outcome(enum route_outcome o)
{
        switch (o) {
        case ROUTE_SUCCESS:
                return LB_OUTCOME_SUCCESS;
        case ROUTE_CONNECT_FAILURE:
                return LB_OUTCOME_CONNECT_FAILURE;
        case ROUTE_HTTP_5XX:
        case ROUTE_TIMEOUT:
        case ROUTE_RESET:
                return LB_OUTCOME_5XX;
        default:
                return LB_OUTCOME_OTHER_FAILURE;
        }
}

void route_request_done(struct route_use *use, const struct sockaddr_storage *upstream,
                        enum route_outcome o)
{
        if (!use->table || !use->ep)
                return;
        const struct route_table *t = use->table;
        struct lb_ep_state *st = use->ep;
        bool probe = use->held & HELD_PROBE;
        use->held &= (uint8_t)~HELD_PROBE;
        const struct lb_breaker_config *bc = bc_of(t, use->tier);
        if (o == ROUTE_CANCELLED) {
                if (probe)
                        lb_ep_cancel(st, bc, clock_mono_ns());
                return;
        }
        passive_report(use, upstream, o == ROUTE_SUCCESS);
        uint64_t now = clock_mono_ns();
        struct lb_table *lb = t->entries[use->entry].lb;
        struct lb_ep_events ev;
        lb_ep_result(st, lb ? lb_table_res(lb) : NULL, lb ? (uint32_t)lb_table_count(lb) : 0, bc,
                     &t->outlier, outlier_outcome(o), probe, now, &ev);
        char ubuf[SOCKADDR_STRLEN];
        if (ev.half_open)
                log_half_open(t, upstream, route_service_name(use));
        if (ev.before != ev.after && ev.after == LB_BREAKER_OPEN)
                log_warn("route", 0,
                         "circuit breaker of %s (service %s) opened after a %s: no requests for "
                         "%llu ms",
                         sockaddr_format(upstream, ubuf, sizeof(ubuf)), route_service_name(use),
                         route_outcome_name(o),
                         (unsigned long long)((lb_breaker_open_until(&st->breaker) - now) / MS_NS));
        else if (ev.before != ev.after && ev.after == LB_BREAKER_CLOSED)
                log_info("route", 0, "circuit breaker of %s (service %s) closed: probes succeeded",
                         sockaddr_format(upstream, ubuf, sizeof(ubuf)), route_service_name(use));
        if (ev.ejected)
                log_warn("route", 0,
                         "%s (service %s) ejected for %llu ms after %u consecutive "
                         "failures (ejection %u)",
                         sockaddr_format(upstream, ubuf, sizeof(ubuf)), route_service_name(use),
                         (unsigned long long)((lb_outlier_ep_until(&st->outlier) - now) / MS_NS),
                         t->outlier.consecutive_failures,
                         atomic_load_explicit(&st->outlier.count, memory_order_relaxed));
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
        struct lb_retry_config rc = use->table->retry;
        const struct lb_retry_config *c = &rc;
        rc.max_retries = use->table->tier_retries[tier_class(use->tier)];
        const struct dr_rule *rule = use->rule;
        if (rule && rule->retry_attempts >= 0) /* the route's retry policy */
                rc.max_retries = (uint32_t)rule->retry_attempts;
        if (rule && rule->retry_backoff_ms)
                rc.backoff_base_ns = rule->retry_backoff_ms * MS_NS;
        if (rule && (rule->retry_codes[0] | rule->retry_codes[1]) && o == ROUTE_HTTP_5XX) {
                /* Its codes say which statuses are safe to retry. */
                int code = status - 500;
                if (code < 0 || code > 99 || !(rule->retry_codes[code / 64] >> (code % 64) & 1))
                        return false;
                idempotent = true;
                rc.retry_5xx = true;
                status = 503;
        }
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
        case ROUTE_TIMEOUT:
                /* A try that passed its rule's timeouts.backendRequest: as a
                 * reset (the endpoint may have acted on it), any method when
                 * the rule has its own retry policy (asked for with it, as
                 * the Gateway API has it). The request's own timeout is
                 * never retried (it is not reported here). */
                if (!rule || !rule->backend_timeout_ms)
                        return false;
                if (rule->retry_attempts >= 0)
                        idempotent = true;
                cause = LB_RETRY_RESET;
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
        bool probe;
        if (use->held & HELD_PROBE) { /* route_request_done was not called */
                lb_breaker_cancel(&use->ep->breaker);
                use->held &= (uint8_t)~HELD_PROBE;
        }
        if (pick_on(use->table, rw, seed, use->entry, client, key_hash, upstream, use->ep, &pick,
                    &probe) < 0)
                return ROUTE_NO_ENDPOINT;
        *upstream = pick.ep->addr;
        lb_conn_begin(pick.state);
        lb_conn_end(use->ep);
        use->ep = pick.state;
        use->disc_ep = pick.ep->ref;
        use_tier(use->table, use->entry, &pick, use);
        if (probe)
                use->held |= HELD_PROBE;
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
        if ((use->held & HELD_PROBE) && use->ep)
                lb_breaker_cancel(&use->ep->breaker); /* a probe that never reported */
        use->held = 0;
        if (use->ep)
                lb_conn_end(use->ep);
        if (use->table)
                snapshot_unref(&use->table->snap);
        use->ep = NULL;
        use->table = NULL;
        use->rule = NULL;
        use->match = NULL;
}

const char *route_service_name(const struct route_use *use)
{
        return use->table ? use->table->entries[use->entry].key : "-";
}

static const struct disc_endpoint *use_endpoint(const struct route_use *use)
{
        const struct route_table *t = use->table;
        if (!t || use->disc_ep >= disc_snapshot_n_endpoints(t->disc))
                return NULL;
        return disc_snapshot_endpoint(t->disc, use->disc_ep);
}

const char *route_identity(const struct route_use *use)
{
        const struct disc_endpoint *ep = use_endpoint(use);
        return ep ? ep->identity : "";
}

enum disc_mtls route_mtls(const struct route_use *use)
{
        const struct disc_endpoint *ep = use_endpoint(use);
        return ep ? ep->mtls : DISC_MTLS_DEFAULT;
}

const char *route_security_name(enum route_security s)
{
        return s == ROUTE_MTLS ? "mtls" : s == ROUTE_REFUSED ? "refused" : "plaintext";
}

enum route_security route_endpoint_security(const struct disc_endpoint *ep, enum mtls_mode daemon,
                                            bool have_tls)
{
        /* mtls.mode is this sidecar's own (inbound) mode: it can turn mTLS
         * off, but only the destination's declared mode refuses plaintext
         * (a mesh-wide strict must not cut off what is not in the mesh:
         * the API server, a database without a sidecar). */
        if (ep->mtls == DISC_MTLS_DISABLED ||
            (ep->mtls == DISC_MTLS_DEFAULT && daemon == MTLS_DISABLED))
                return ROUTE_PLAINTEXT;
        if (ep->meshed && have_tls)
                return ROUTE_MTLS;
        return ep->mtls == DISC_MTLS_STRICT ? ROUTE_REFUSED : ROUTE_PLAINTEXT;
}

enum route_security route_security(const struct route_use *use, enum mtls_mode daemon,
                                   bool have_tls)
{
        const struct disc_endpoint *ep = use_endpoint(use);
        return ep ? route_endpoint_security(ep, daemon, have_tls) : ROUTE_PLAINTEXT;
}

void route_refusal(const struct route_use *use, const struct sockaddr_storage *upstream, char *buf,
                   size_t len)
{
        const struct disc_endpoint *ep = use_endpoint(use);
        char abuf[SOCKADDR_STRLEN];
        snprintf(buf, len, "%s endpoint %s %s and its mTLS mode is strict", route_service_name(use),
                 sockaddr_format(upstream, abuf, sizeof(abuf)),
                 ep && ep->meshed ? "is meshed but this proxy has no certificate"
                                  : "is not meshed");
}

/* ---- main thread: time-driven transitions, rendering ---------------------- */

const struct disc_snapshot *route_table_disc(const struct route_table *t)
{
        return t ? t->disc : NULL;
}

void route_table_tick(struct route_table *t)
{
        if (!t)
                return;
        uint64_t now = clock_mono_ns();
        char ubuf[SOCKADDR_STRLEN];
        for (uint32_t i = 0; i < t->n_entries; i++) {
                struct route_entry *e = &t->entries[i];
                if (!e->lb)
                        continue;
                struct lb_service_res *r = lb_table_res(e->lb);
                for (size_t k = 0; k < lb_table_count(e->lb); k++) {
                        const struct lb_endpoint *ep = lb_table_endpoint(e->lb, k);
                        struct lb_ep_events ev;
                        lb_ep_tick(ep->state, r, bc_of(t, ep->tier), &t->outlier, now, &ev);
                        if (ev.returned)
                                log_info("route", 0, "%s (service %s) back from ejection",
                                         sockaddr_format(&ep->addr, ubuf, sizeof(ubuf)), e->key);
                        if (ev.half_open)
                                log_half_open(t, &ep->addr, e->key);
                }
        }
}

static void render_route_metrics(const struct route_table *t, struct strbuf *out);
static void render_locality_metrics(const struct route_table *t, struct strbuf *out);

static void labels_svc(struct strbuf *lb, const struct route_entry *e, const char *ep)
{
        strbuf_reset(lb);
        prom_label(lb, "service", e->key);
        if (ep)
                prom_label(lb, "endpoint", ep);
}

void route_render_metrics(struct route_table *t, struct strbuf *out)
{
        static const char *const fam[][3] = {
            {"shunt_circuit_breaker_state", "gauge",
             "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half_open, 3 forced_open."},
            {"shunt_circuit_breaker_opened_total", "counter",
             "Times an endpoint's circuit breaker opened (forced open included)."},
            {"shunt_circuit_breaker_endpoints", "gauge",
             "Endpoints of a service per circuit breaker state."},
            {"shunt_outlier_ejected", "gauge",
             "1 while an endpoint is ejected by outlier detection."},
            {"shunt_outlier_ejections_total", "counter", "Endpoints ejected by outlier detection."},
            {"shunt_outlier_ejections_skipped_total", "counter",
             "Ejections refused because max_ejection_percent was reached."},
            {"shunt_endpoint_active", "gauge", "Connections or requests in flight per endpoint."},
            {"shunt_retries_total", "counter",
             "Retries granted (connect failures, idempotent requests)."},
            {"shunt_retry_budget_exhausted_total", "counter",
             "Retries refused because the service's retry budget was used up."},
            {"shunt_retries_exhausted_total", "counter",
             "Failed requests not retried because retries.max_retries were used."},
            {"shunt_limit_current", "gauge",
             "Per-service upstream connections, pending requests and requests in flight."},
            {"shunt_limit_overflows_total", "counter",
             "Requests or connections refused because a per-service limit was reached."},
        };
        enum {
                F_STATE,
                F_OPENED,
                F_ENDPOINTS,
                F_EJECTED,
                F_EJECTIONS,
                F_SKIPPED,
                F_ACTIVE,
                F_RETRIES,
                F_BUDGET,
                F_EXHAUSTED,
                F_LIMIT,
                F_OVERFLOW,
                F__COUNT
        };
        static const char *const limit_label[LB_LIMIT_NKINDS] = {"connections", "pending_requests",
                                                                 "requests"};
        struct strbuf lb;
        strbuf_init(&lb);
        char ubuf[SOCKADDR_STRLEN];
        uint64_t now = clock_mono_ns();
        for (int f = 0; f < F__COUNT; f++) {
                prom_family(out, fam[f][0], fam[f][1], fam[f][2]);
                for (uint32_t i = 0; t && i < t->n_base; i++) {
                        const struct route_entry *e = &t->entries[i];
                        if (!e->lb)
                                continue;
                        struct lb_service_res *r = lb_table_res(e->lb);
                        size_t n = lb_table_count(e->lb);
                        switch (f) {
                        case F_STATE:
                        case F_OPENED:
                        case F_EJECTED:
                        case F_ACTIVE:
                                for (size_t k = 0; k < n; k++) {
                                        const struct lb_endpoint *ep = lb_table_endpoint(e->lb, k);
                                        labels_svc(&lb, e,
                                                   sockaddr_format(&ep->addr, ubuf, sizeof(ubuf)));
                                        uint64_t v =
                                            f == F_STATE
                                                ? (uint64_t)lb_breaker_peek(&ep->state->breaker)
                                            : f == F_OPENED ? lb_breaker_opens(&ep->state->breaker)
                                            : f == F_EJECTED
                                                ? lb_outlier_ep_until(&ep->state->outlier) != 0
                                                : (uint64_t)(lb_ep_active(ep->state) > 0
                                                                 ? lb_ep_active(ep->state)
                                                                 : 0);
                                        prom_sample_u64(out, fam[f][0], lb.data, v);
                                }
                                break;
                        case F_ENDPOINTS: {
                                uint64_t cnt[LB_BREAKER_NSTATES] = {0};
                                for (size_t k = 0; k < n; k++)
                                        cnt[lb_breaker_view(
                                            &lb_table_endpoint(e->lb, k)->state->breaker, now)]++;
                                for (int st = 0; st < LB_BREAKER_NSTATES; st++) {
                                        labels_svc(&lb, e, NULL);
                                        prom_label(&lb, "state", lb_breaker_state_name(st));
                                        prom_sample_u64(out, fam[f][0], lb.data, cnt[st]);
                                }
                                break;
                        }
                        case F_LIMIT:
                        case F_OVERFLOW:
                                for (int k = 0; k < LB_LIMIT_NKINDS; k++) {
                                        labels_svc(&lb, e, NULL);
                                        prom_label(&lb, "limit", limit_label[k]);
                                        prom_sample_u64(out, fam[f][0], lb.data,
                                                        f == F_LIMIT
                                                            ? lb_limits_current(&r->limits, k)
                                                            : lb_limits_refused(&r->limits, k));
                                }
                                break;
                        default: {
                                labels_svc(&lb, e, NULL);
                                _Atomic uint64_t *c = f == F_EJECTIONS ? &r->outlier.ejections
                                                      : f == F_SKIPPED ? &r->outlier.skipped
                                                      : f == F_RETRIES ? &r->retries
                                                      : f == F_BUDGET  ? &r->budget.refused
                                                                       : &r->retries_exhausted;
                                prom_sample_u64(out, fam[f][0], lb.data,
                                                atomic_load_explicit(c, memory_order_relaxed));
                        }
                        }
                }
        }
        strbuf_free(&lb);
        render_route_metrics(t, out);
        render_locality_metrics(t, out);
}

/* Locality tiers, per service port with tiers: picks per tier and each
 * tier's share of picks now. */
static void render_locality_metrics(const struct route_table *t, struct strbuf *out)
{
        static const char *const fam[][3] = {
            {"shunt_locality_picks_total", "counter",
             "Endpoints picked per locality tier (load_balancing.local_region)."},
            {"shunt_locality_load_percent", "gauge",
             "Share of picks a locality tier takes now (overprovisioning arithmetic)."},
        };
        struct strbuf lb;
        strbuf_init(&lb);
        for (int f = 0; f < 2; f++) {
                prom_family(out, fam[f][0], fam[f][1], fam[f][2]);
                for (uint32_t i = 0; t && i < t->n_base; i++) {
                        const struct route_entry *e = &t->entries[i];
                        uint32_t n = e->lb ? lb_table_tiers(e->lb) : 0;
                        for (uint32_t k = 0; k < n; k++) {
                                labels_svc(&lb, e, NULL);
                                prom_label(&lb, "tier", lb_tier_name(t->tiers.n_failover, k));
                                if (f == 0) {
                                        prom_sample_u64(out, fam[f][0], lb.data,
                                                        lb_table_tier_picks(e->lb, k));
                                        continue;
                                }
                                uint32_t total, avail, load;
                                lb_table_tier_state(e->lb, k, &total, &avail, &load);
                                prom_sample(out, fam[f][0], lb.data, load / 100.0);
                        }
                }
        }
        strbuf_free(&lb);
}

/* Traffic route counters: per rule, per backend of a rule, and requests
 * no rule matched, for each service port with routes. */
static void render_route_metrics(const struct route_table *t, struct strbuf *out)
{
        static const char *const fam[][3] = {
            {"shunt_route_requests_total", "counter",
             "Requests (TCP: connections) that took a traffic route rule."},
            {"shunt_route_backend_requests_total", "counter",
             "Requests (TCP: connections) a traffic route rule sent to each of its backends."},
            {"shunt_route_unmatched_total", "counter",
             "Requests on a service port with traffic routes that no rule matched (404)."},
            {"shunt_route_faults_total", "counter",
             "Requests a traffic route rule's fault injection aborted."},
            {"shunt_route_delays_total", "counter",
             "Requests a traffic route rule's fault injection delayed."},
            {"shunt_route_rate_limited_total", "counter",
             "Requests a traffic route rule's local rate limit refused (429)."},
            {"shunt_route_mirrors_total", "counter",
             "Request copies a traffic route rule's RequestMirror sent."},
            {"shunt_route_mirror_drops_total", "counter",
             "Request copies a traffic route rule's RequestMirror dropped (a bound, no endpoint)."},
        };
        struct strbuf lb;
        strbuf_init(&lb);
        for (int f = 0; f < (int)(sizeof(fam) / sizeof(fam[0])); f++) {
                prom_family(out, fam[f][0], fam[f][1], fam[f][2]);
                for (uint32_t i = 0; t && i < t->n_base; i++) {
                        const struct route_entry *e = &t->entries[i];
                        if (!e->rt)
                                continue;
                        const struct dr_routes *r = e->routes;
                        if (f == 2) {
                                labels_svc(&lb, e, NULL);
                                prom_sample_u64(
                                    out, fam[f][0], lb.data,
                                    atomic_load_explicit(&r->misses, memory_order_relaxed));
                                continue;
                        }
                        for (uint32_t u = 0; u < r->n_rules; u++) {
                                const struct dr_rule *rule = &r->rules[u];
                                const struct dr_route *rt = &r->routes[rule->route];
                                if (rt->port &&
                                    rt->port != disc_snapshot_service(t->disc, e->service)
                                                    ->ports[e->port_idx]
                                                    .port)
                                        continue;
                                char idx[16];
                                snprintf(idx, sizeof(idx), "%u", rule->index);
                                if ((f == 3 && !rule->abort_ppm) || (f == 4 && !rule->delay_ppm) ||
                                    (f == 5 && !rule->rl) || (f >= 6 && !rule->has_mirror))
                                        continue;
                                for (uint32_t b = 0; b < (f == 1 ? rule->n_backends : 1); b++) {
                                        labels_svc(&lb, e, NULL);
                                        prom_label(&lb, "route", rt->name);
                                        prom_label(&lb, "rule", idx);
                                        uint64_t v;
                                        if (f != 1) {
                                                const _Atomic uint64_t *c[] = {
                                                    &rule->hits,
                                                    NULL,
                                                    NULL,
                                                    &rule->faults,
                                                    &rule->delays,
                                                    rule->rl ? &rule->rl->limited : NULL,
                                                    &rule->mirrors,
                                                    &rule->mirror_drops};
                                                v = atomic_load_explicit(c[f],
                                                                         memory_order_relaxed);
                                        } else {
                                                const struct dr_backend *be = &rule->backends[b];
                                                char name[2 * DR_NAME_MAX + DR_LABELS_MAX + 4];
                                                snprintf(name, sizeof(name), "%s/%s%s%s", be->ns,
                                                         be->name, be->selector[0] ? "#" : "",
                                                         be->selector);
                                                prom_label(&lb, "backend", name);
                                                v = atomic_load_explicit(&be->hits,
                                                                         memory_order_relaxed);
                                        }
                                        prom_sample_u64(out, fam[f][0], lb.data, v);
                                }
                        }
                }
        }
        strbuf_free(&lb);
}

void route_render_routes(struct route_table *t, const char *service, struct strbuf *sb)
{
        strbuf_append(sb, "{\"services\":[");
        bool first = true;
        for (uint32_t i = 0; t && i < t->n_base; i++) {
                const struct route_entry *e = &t->entries[i];
                if (!e->rt)
                        continue;
                const struct disc_service *s = disc_snapshot_service(t->disc, e->service);
                char name[2 * DISC_NAME_MAX + 2];
                snprintf(name, sizeof(name), "%s/%s", s->ns, s->name);
                if (service && strcmp(name, service) && strcmp(s->name, service))
                        continue;
                strbuf_append(sb, first ? "{\"service\":" : ",{\"service\":");
                first = false;
                strbuf_append_json_string(sb, name);
                strbuf_appendf(
                    sb, ",\"port\":%u,\"misses\":%llu,\"rules\":", s->ports[e->port_idx].port,
                    (unsigned long long)atomic_load_explicit(&e->routes->misses,
                                                             memory_order_relaxed));
                dr_render_port(e->routes, s->ports[e->port_idx].port, sb);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
}

/* The next entry from *i on (then past it) of service svc (by namespace
 * and name) in t that has endpoints, or NULL; *s gets its service. */
static const struct route_entry *next_entry_of(const struct route_table *t,
                                               const struct disc_service *svc, uint32_t *i,
                                               const struct disc_service **s)
{
        for (; t && *i < t->n_base; (*i)++) {
                const struct route_entry *e = &t->entries[*i];
                if (!e->lb)
                        continue;
                *s = disc_snapshot_service(t->disc, e->service);
                if (strcmp((*s)->name, svc->name) == 0 && strcmp((*s)->ns, svc->ns) == 0) {
                        (*i)++;
                        return e;
                }
        }
        return NULL;
}

/* ,"locality":[...] of a service port with tiers: per tier its endpoints,
 * the available ones, its share of picks now, picks so far and its
 * settings. */
static void render_tiers(const struct route_table *t, const struct lb_table *lb, struct strbuf *sb)
{
        uint32_t n = lb_table_tiers(lb);
        if (!n)
                return;
        strbuf_append(sb, ",\"locality\":[");
        for (uint32_t k = 0; k < n; k++) {
                uint32_t total, avail, load;
                lb_table_tier_state(lb, k, &total, &avail, &load);
                unsigned c = tier_class((uint8_t)k);
                strbuf_appendf(sb, "%s{\"tier\":\"%s\"", k ? "," : "",
                               lb_tier_name(t->tiers.n_failover, k));
                if (k >= 2 && k - 2 < t->tiers.n_failover) {
                        strbuf_append(sb, ",\"region\":");
                        strbuf_append_json_string(sb, t->tiers.failover[k - 2]);
                }
                strbuf_appendf(sb,
                               ",\"endpoints\":%u,\"available\":%u,\"load_percent\":%u.%02u,"
                               "\"picks\":%llu,\"connect_timeout_ms\":%u,\"request_timeout_ms\":%u,"
                               "\"max_retries\":%u,\"consecutive_failures\":%u}",
                               total, avail, load / 100, load % 100,
                               (unsigned long long)lb_table_tier_picks(lb, k),
                               t->tier_connect_ms[c] ? t->tier_connect_ms[c] : t->connect_ms,
                               t->tier_request_ms[c] ? t->tier_request_ms[c] : t->request_ms,
                               t->tier_retries[c], t->tier_breaker[c].consecutive_failures);
        }
        strbuf_append(sb, "]");
}

void route_render_service(struct route_table *t, const struct disc_service *svc, struct strbuf *sb)
{
        strbuf_append(sb, ",\"resilience\":[");
        bool first = true;
        uint64_t now = clock_mono_ns();
        const struct route_entry *e;
        const struct disc_service *s;
        for (uint32_t i = 0; (e = next_entry_of(t, svc, &i, &s));) {
                struct lb_service_res *r = lb_table_res(e->lb);
                uint32_t n = (uint32_t)lb_table_count(e->lb);
                uint64_t cnt[LB_BREAKER_NSTATES] = {0};
                for (uint32_t k = 0; k < n; k++)
                        cnt[lb_breaker_view(&lb_table_endpoint(e->lb, k)->state->breaker, now)]++;
                strbuf_appendf(
                    sb,
                    "%s{\"port\":%u,\"connections\":%u,\"pending_requests\":%u,\"requests\":%u,"
                    "\"max_connections\":%u,\"max_pending_requests\":%u,\"max_requests\":%u,"
                    "\"retries_in_flight\":%u,\"retry_budget\":%u,\"ejected\":%u,\"max_ejected\":%"
                    "u,"
                    "\"breakers\":{\"closed\":%llu,\"open\":%llu,\"half_open\":%llu,"
                    "\"forced_open\":%llu},\"max_retries\":%u,\"timeouts_ms\":{\"connect\":%u,"
                    "\"request\":%u,\"idle\":%u}",
                    first ? "" : ",", s->ports[e->port_idx].port,
                    lb_limits_current(&r->limits, LB_LIMIT_CONNECTIONS),
                    lb_limits_current(&r->limits, LB_LIMIT_PENDING),
                    lb_limits_current(&r->limits, LB_LIMIT_REQUESTS),
                    t->limits.max[LB_LIMIT_CONNECTIONS], t->limits.max[LB_LIMIT_PENDING],
                    t->limits.max[LB_LIMIT_REQUESTS],
                    atomic_load_explicit(&r->budget.in_flight, memory_order_relaxed),
                    lb_retry_budget_limit(&t->retry, service_active(r)),
                    atomic_load_explicit(&r->outlier.ejected, memory_order_relaxed),
                    lb_outlier_max_ejected(n, t->outlier.max_ejection_percent),
                    (unsigned long long)cnt[0], (unsigned long long)cnt[1],
                    (unsigned long long)cnt[2], (unsigned long long)cnt[3], t->retry.max_retries,
                    t->connect_ms, t->request_ms, t->idle_ms);
                render_tiers(t, e->lb, sb);
                strbuf_append(sb, "}");
                first = false;
        }
        strbuf_append(sb, "]");
}

void route_render_endpoint(struct route_table *t, const struct disc_service *svc,
                           const struct sockaddr_storage *addr, const char *cluster,
                           struct strbuf *sb)
{
        strbuf_append(sb, ",\"resilience\":[");
        bool first = true;
        uint64_t now = clock_mono_ns();
        const struct route_entry *e;
        const struct disc_service *s;
        for (uint32_t i = 0; (e = next_entry_of(t, svc, &i, &s));) {
                int k = lb_table_find_key(e->lb, addr, cluster_key(cluster));
                if (k < 0)
                        continue;
                const struct lb_endpoint *lep = lb_table_endpoint(e->lb, (size_t)k);
                struct lb_ep_state *st = lep->state;
                enum lb_breaker_state bs = lb_breaker_view(&st->breaker, now);
                uint64_t open_until = lb_breaker_open_until(&st->breaker);
                uint64_t ej = lb_outlier_ep_until(&st->outlier);
                strbuf_appendf(
                    sb,
                    "%s{\"port\":%u,\"breaker\":\"%s\",\"breaker_opens\":%llu,"
                    "\"half_open_in_ms\":%llu,\"ejected\":%s,\"ejected_for_ms\":%llu,"
                    "\"ejections\":%u,\"active\":%d,\"available\":%s",
                    first ? "" : ",", s->ports[e->port_idx].port, lb_breaker_state_name(bs),
                    (unsigned long long)lb_breaker_opens(&st->breaker),
                    (unsigned long long)(bs == LB_BREAKER_OPEN && open_until > now
                                             ? (open_until - now) / MS_NS
                                             : 0),
                    ej ? "true" : "false", (unsigned long long)(ej > now ? (ej - now) / MS_NS : 0),
                    atomic_load_explicit(&st->outlier.count, memory_order_relaxed),
                    lb_ep_active(st), lb_ep_available(st) ? "true" : "false");
                if (lb_table_tiers(e->lb))
                        strbuf_appendf(sb, ",\"tier\":\"%s\"",
                                       lb_tier_name(t->tiers.n_failover, lep->tier));
                strbuf_append(sb, "}");
                first = false;
        }
        strbuf_append(sb, "]");
}

int route_force_open(struct route_table *t, const char *service,
                     const struct sockaddr_storage *addr, bool on)
{
        int found = 0;
        uint64_t now = clock_mono_ns();
        for (uint32_t i = 0; t && i < t->n_entries; i++) {
                const struct route_entry *e = &t->entries[i];
                if (!e->lb)
                        continue;
                const struct disc_service *s = disc_snapshot_service(t->disc, e->service);
                char name[2 * DISC_NAME_MAX + 2];
                snprintf(name, sizeof(name), "%s/%s", s->ns, s->name);
                if (strcmp(name, service) && strcmp(s->name, service) && strcmp(e->key, service))
                        continue;
                int k = lb_table_find(e->lb, addr);
                if (k < 0)
                        continue;
                const struct lb_endpoint *lep = lb_table_endpoint(e->lb, (size_t)k);
                struct lb_ep_state *st = lep->state;
                lb_breaker_force_open(&st->breaker, on, now);
                lb_ep_refresh(st, bc_of(t, lep->tier), now);
                found++;
        }
        return found ? 0 : -ENOENT;
}

/* Outbound routing; see route.h. */
#include "proxy/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"

struct route_entry {
        struct lb_table *lb; /* NULL when the port has no endpoint at all */
        uint32_t service;    /* index in the discovery snapshot */
        uint32_t port_idx;
        bool hash_source_ip;             /* consistent hash / maglev on TCP: key is the client IP */
        char key[2 * DISC_NAME_MAX + 8]; /* "ns/name:port", to carry state over */
};

struct route_table {
        struct snapshot snap;
        const struct disc_snapshot *disc; /* a reference */
        uint32_t *first_entry;            /* per service: index of its port 0 entry */
        struct route_entry *entries;
        uint32_t n_entries;
        uint64_t serial; /* tells workers their cursors belong to another table */
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
                       struct lb_endpoint_in *scratch)
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
        e->hash_source_ip = lc.algorithm == LB_CONSISTENT_HASH || lc.algorithm == LB_MAGLEV;
        const struct route_entry *pe = find_prev(prev, e->key);
        return lb_table_build(&lc, scratch, n, pe ? pe->lb : NULL, &e->lb);
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
                        int rc = build_entry(e, svc, k, cfg, prev, scratch);
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

enum route_result route_pick(struct route_table *t, struct route_workers **rw, uint64_t seed,
                             const struct sockaddr_storage *dst,
                             const struct sockaddr_storage *client,
                             const struct sockaddr_storage *exclude,
                             struct sockaddr_storage *upstream, struct route_use *use)
{
        memset(use, 0, sizeof(*use));
        use->declared = PROTO_UNKNOWN;
        if (!t)
                return ROUTE_PASSTHROUGH;
        uint32_t port_idx;
        const struct disc_service *svc = disc_find_vip_sa(t->disc, dst, &port_idx);
        if (!svc)
                return ROUTE_PASSTHROUGH;
        /* Services are one array in the snapshot: the offset is the index. */
        uint32_t s = (uint32_t)(svc - disc_snapshot_service(t->disc, 0));
        uint32_t entry = t->first_entry[s] + port_idx;
        struct route_entry *e = &t->entries[entry];
        use->declared = svc->ports[port_idx].proto;
        if (!e->lb)
                return ROUTE_NO_ENDPOINT;
        struct lb_worker *lw = entry_worker(t, rw, entry, seed);
        if (!lw)
                return ROUTE_NO_ENDPOINT;
        uint64_t h = 0;
        if (e->hash_source_ip)
                h = lb_hash_source_ip(client);
        struct lb_pick pick;
        /* A retry tries the other endpoints before the one that failed. */
        size_t tries = exclude ? lb_table_count(e->lb) : 1;
        for (size_t i = 0; i < tries; i++) {
                if (lb_pick(lw, e->lb, e->hash_source_ip ? &h : NULL, &pick) < 0)
                        return ROUTE_NO_ENDPOINT;
                if (!exclude || memcmp(&pick.ep->addr, exclude, sizeof(*exclude)) != 0)
                        break;
                if (e->hash_source_ip)
                        h = lb_mix64(h);
        }
        *upstream = pick.ep->addr;
        lb_conn_begin(pick.state);
        snapshot_ref(&t->snap);
        use->table = t;
        use->ep = pick.state;
        use->entry = entry;
        return ROUTE_ENDPOINT;
}

void route_report(const struct route_use *use, const struct sockaddr_storage *upstream, bool ok)
{
        if (!use->table)
                return;
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

void route_release(struct route_use *use)
{
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

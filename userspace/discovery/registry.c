// SPDX-License-Identifier: Apache-2.0
/* The registry model (main thread), snapshot building and lock-free lookups.
 *
 * Records live in growable arrays addressed by index (services and
 * endpoints), with free lists and chained hash maps, so a long run of adds and
 * removes reuses memory instead of growing. An endpoint record's index is also
 * its passive-outcome slot: the slot table is allocated once, at the registry's
 * endpoint bound, and shared (reference counted) with every snapshot. */
#include "discovery/registry.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/hash.h"
#include "core/log.h"
#include "core/loop.h"
#include "discovery/registry-int.h"

#define NONE UINT32_MAX
#define COMP "discovery"

/* ---- names --------------------------------------------------------------- */

static const char *const health_names[] = {"unknown", "healthy", "unhealthy", "draining"};

const char *disc_health_name(enum disc_health h)
{
        return (unsigned)h < DISC_HEALTH__COUNT ? health_names[h] : "?";
}

int disc_health_parse(const char *s, enum disc_health *out)
{
        for (unsigned i = 0; s && i < DISC_HEALTH__COUNT; i++) {
                if (strcasecmp(s, health_names[i]) == 0) {
                        *out = (enum disc_health)i;
                        return 0;
                }
        }
        return -EINVAL;
}

const char *disc_mtls_name(enum disc_mtls m)
{
        static const char *const n[] = {"default", "strict", "permissive", "disabled"};
        return (unsigned)m < 4 ? n[m] : "?";
}

int disc_mtls_parse(const char *s, enum disc_mtls *out)
{
        for (enum disc_mtls m = DISC_MTLS_STRICT; s && m <= DISC_MTLS_DISABLED; m++) {
                if (strcmp(s, disc_mtls_name(m)) == 0) {
                        *out = m;
                        return 0;
                }
        }
        return -EINVAL;
}

const char *disc_lb_name(enum disc_lb_algorithm a)
{
        static const char *const n[] = {"default",  "round_robin",     "least_connections",
                                        "weighted", "consistent_hash", "maglev"};
        return (unsigned)a < sizeof(n) / sizeof(n[0]) ? n[a] : "?";
}

const char *disc_hc_type_name(enum disc_hc_type t)
{
        static const char *const n[] = {"none", "tcp", "http"};
        return (unsigned)t < 3 ? n[t] : "?";
}

const char *disc_source_kind_name(enum disc_source_kind k)
{
        static const char *const n[] = {"file", "kubernetes", "consul", "manual", "dns"};
        return (unsigned)k < 5 ? n[k] : "?";
}

/* ---- addresses ----------------------------------------------------------- */

int disc_addr_from_sockaddr(const struct sockaddr_storage *ss, struct disc_addr *out)
{
        memset(out, 0, sizeof(*out));
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const void *)ss;
                out->family = AF_INET;
                out->port = ntohs(a->sin_port);
                memcpy(out->addr, &a->sin_addr, 4);
                return 0;
        }
        if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const void *)ss;
                out->family = AF_INET6;
                out->port = ntohs(a->sin6_port);
                memcpy(out->addr, &a->sin6_addr, 16);
                return 0;
        }
        return -EINVAL;
}

void disc_addr_to_sockaddr(const struct disc_addr *a, struct sockaddr_storage *out)
{
        memset(out, 0, sizeof(*out));
        if (a->family == AF_INET) {
                struct sockaddr_in *s = (void *)out;
                s->sin_family = AF_INET;
                s->sin_port = htons(a->port);
                memcpy(&s->sin_addr, a->addr, 4);
        } else if (a->family == AF_INET6) {
                struct sockaddr_in6 *s = (void *)out;
                s->sin6_family = AF_INET6;
                s->sin6_port = htons(a->port);
                memcpy(&s->sin6_addr, a->addr, 16);
        }
}

int disc_addr_parse(const char *ip, uint16_t port, struct disc_addr *out)
{
        memset(out, 0, sizeof(*out));
        out->port = port;
        if (inet_pton(AF_INET, ip, out->addr) == 1) {
                out->family = AF_INET;
                return 0;
        }
        memset(out->addr, 0, sizeof(out->addr));
        if (inet_pton(AF_INET6, ip, out->addr) == 1) {
                out->family = AF_INET6;
                return 0;
        }
        return -EINVAL;
}

const char *disc_addr_ip(const struct disc_addr *a, char *buf, size_t len)
{
        if (!inet_ntop(a->family == AF_INET6 ? AF_INET6 : AF_INET, a->addr, buf, (socklen_t)len))
                snprintf(buf, len, "-");
        return buf;
}

static void addr_norm(struct disc_addr *dst, const struct disc_addr *src)
{
        memset(dst, 0, sizeof(*dst));
        dst->family = src->family;
        dst->port = src->port;
        memcpy(dst->addr, src->addr, src->family == AF_INET ? 4 : 16);
}

static int addr_cmp(const struct disc_addr *a, const struct disc_addr *b)
{
        if (a->family != b->family)
                return a->family < b->family ? -1 : 1;
        int c = memcmp(a->addr, b->addr, 16);
        if (c)
                return c;
        return a->port < b->port ? -1 : a->port > b->port;
}

static inline uint64_t addr_hash(const struct disc_addr *a)
{
        uint64_t w0, w1;
        memcpy(&w0, a->addr, 8);
        memcpy(&w1, a->addr + 8, 8);
        return hash_fmix64(w0 ^ hash_fmix64(w1 ^ ((uint64_t)a->family << 16 | a->port)));
}

static inline bool addr_eq(const struct disc_addr *a, const struct disc_addr *b)
{
        return memcmp(a, b, sizeof(*a)) == 0;
}

static uint64_t str_hash(uint64_t h, const char *s)
{
        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 0x100000001b3ULL;
        }
        return h;
}

static uint64_t name_hash(const char *ns, const char *name)
{
        uint64_t h = str_hash(0xcbf29ce484222325ULL, ns);
        h ^= '/';
        h *= 0x100000001b3ULL;
        return hash_fmix64(str_hash(h, name));
}

/* ---- defaults ------------------------------------------------------------ */

void disc_health_check_defaults(struct disc_health_check *hc)
{
        memset(hc, 0, sizeof(*hc));
        hc->type = DISC_HC_NONE;
        hc->interval_ms = DISC_HC_DEFAULT_INTERVAL_MS;
        hc->timeout_ms = DISC_HC_DEFAULT_TIMEOUT_MS;
        hc->healthy_threshold = DISC_HC_DEFAULT_HEALTHY;
        hc->unhealthy_threshold = DISC_HC_DEFAULT_UNHEALTHY;
        hc->passive_failures = DISC_HC_DEFAULT_PASSIVE_FAILS;
        hc->ejection_ms = DISC_HC_DEFAULT_EJECTION_MS;
}

void disc_service_spec_init(struct disc_service_spec *s)
{
        memset(s, 0, sizeof(*s));
        snprintf(s->ns, sizeof(s->ns), "%s", DISC_DEFAULT_NAMESPACE);
        disc_health_check_defaults(&s->hc);
}

static void slot_table_unref(struct slot_table *t)
{
        if (t && atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
                free(t);
}

/* ---- hash maps (chained by record index) ---------------------------------- */

/* An endpoint's key: its service, address and port, and its cluster. */
static uint64_t ep_key_hash(uint32_t svc, const struct disc_addr *a, const char *cluster)
{
        return hash_fmix64(str_hash(addr_hash(a) ^ svc, cluster));
}

static int grow_buckets(uint32_t **buckets, uint32_t *nb, uint32_t want)
{
        if (want <= *nb)
                return 0;
        uint32_t n = *nb ? *nb : 64;
        while (n < want)
                n *= 2;
        uint32_t *b = malloc((size_t)n * sizeof(*b));
        if (!b)
                return -ENOMEM;
        memset(b, 0xff, (size_t)n * sizeof(*b));
        free(*buckets);
        *buckets = b;
        *nb = n;
        return 1; /* caller rehashes */
}

static void svc_rehash(struct disc_registry *r)
{
        memset(r->svc_buckets, 0xff, (size_t)r->svc_nbuckets * sizeof(uint32_t));
        for (uint32_t i = 0; i < r->n_svc_recs; i++) {
                struct svc_rec *s = &r->svcs[i];
                if (!s->used)
                        continue;
                uint32_t b = (uint32_t)(s->hash & (r->svc_nbuckets - 1));
                s->hnext = r->svc_buckets[b];
                r->svc_buckets[b] = i;
        }
}

static void ep_rehash(struct disc_registry *r)
{
        memset(r->ep_buckets, 0xff, (size_t)r->ep_nbuckets * sizeof(uint32_t));
        for (uint32_t i = 0; i < r->n_ep_recs; i++) {
                struct ep_rec *e = &r->eps[i];
                if (!e->used)
                        continue;
                uint32_t b = (uint32_t)(ep_key_hash(e->svc, &e->spec.addr, e->spec.cluster) &
                                        (r->ep_nbuckets - 1));
                e->hnext = r->ep_buckets[b];
                r->ep_buckets[b] = i;
        }
}

uint32_t disc_svc_find(const struct disc_registry *r, const char *ns, const char *name)
{
        if (!r->svc_nbuckets)
                return NONE;
        uint64_t h = name_hash(ns, name);
        for (uint32_t i = r->svc_buckets[h & (r->svc_nbuckets - 1)]; i != NONE;
             i = r->svcs[i].hnext) {
                const struct svc_rec *s = &r->svcs[i];
                if (s->hash == h && strcmp(s->spec.name, name) == 0 && strcmp(s->spec.ns, ns) == 0)
                        return i;
        }
        return NONE;
}

static uint32_t ep_find(const struct disc_registry *r, uint32_t svc, const struct disc_addr *a,
                        const char *cluster)
{
        if (!r->ep_nbuckets)
                return NONE;
        uint64_t h = ep_key_hash(svc, a, cluster);
        for (uint32_t i = r->ep_buckets[h & (r->ep_nbuckets - 1)]; i != NONE; i = r->eps[i].hnext) {
                const struct ep_rec *e = &r->eps[i];
                if (e->svc == svc && addr_eq(&e->spec.addr, a) &&
                    strcmp(e->spec.cluster, cluster) == 0)
                        return i;
        }
        return NONE;
}

static void chain_unlink(uint32_t *buckets, uint32_t nb, uint64_t h, uint32_t idx, void *recs,
                         size_t recsz, size_t hnext_off)
{
        uint32_t *pp = &buckets[h & (nb - 1)];
        while (*pp != NONE) {
                uint32_t *next = (uint32_t *)((char *)recs + (size_t)*pp * recsz + hnext_off);
                if (*pp == idx) {
                        *pp = *next;
                        return;
                }
                pp = next;
        }
}

/* ---- health --------------------------------------------------------------- */

static enum disc_health merge_health(const struct disc_registry *r, const struct ep_rec *e,
                                     uint64_t now)
{
        const struct svc_rec *s = &r->svcs[e->svc];
        enum disc_health declared = e->spec.health;
        if (declared == DISC_HEALTH_DRAINING || declared == DISC_HEALTH_UNHEALTHY)
                return declared; /* the source's word on taking it out is final */
        if (e->ejected_until_ms > now)
                return DISC_HEALTH_UNHEALTHY;
        if (s->spec.hc.type != DISC_HC_NONE && e->active != DISC_HEALTH_UNKNOWN)
                return e->active;
        return declared;
}

static void update_effective(struct disc_registry *r, struct ep_rec *e, uint64_t now)
{
        enum disc_health h = merge_health(r, e, now);
        if (h != e->effective) {
                e->effective = h;
                r->dirty = true;
        }
}

/* ---- records -------------------------------------------------------------- */

/* Makes room for one more record in a growable array, doubling up to max.
 * Returns false when max is reached or memory is short. */
static bool rec_reserve(void **arr, uint32_t *cap, uint32_t n, uint32_t first, uint32_t max,
                        size_t size)
{
        if (n < *cap)
                return true;
        uint32_t want = *cap ? *cap * 2 : first;
        if (want > max)
                want = max;
        if (want <= n)
                return false;
        void *p = realloc(*arr, (size_t)want * size);
        if (!p)
                return false;
        *arr = p;
        *cap = want;
        return true;
}

static uint32_t svc_alloc(struct disc_registry *r)
{
        if (r->svc_free != NONE) {
                uint32_t i = r->svc_free;
                r->svc_free = r->svcs[i].hnext;
                return i;
        }
        if (!rec_reserve((void **)&r->svcs, &r->cap_svcs, r->n_svc_recs, 16, r->opts.max_services,
                         sizeof(*r->svcs)))
                return NONE;
        return r->n_svc_recs++;
}

static uint32_t ep_alloc(struct disc_registry *r)
{
        if (r->ep_free != NONE) {
                uint32_t i = r->ep_free;
                r->ep_free = r->eps[i].hnext;
                return i;
        }
        if (!rec_reserve((void **)&r->eps, &r->cap_eps, r->n_ep_recs, 64, r->opts.max_endpoints,
                         sizeof(*r->eps)))
                return NONE;
        uint32_t i = r->n_ep_recs++;
        r->eps[i].gen = 0;
        return i;
}

static void ep_remove(struct disc_registry *r, uint32_t i)
{
        struct ep_rec *e = &r->eps[i];
        struct svc_rec *s = &r->svcs[e->svc];
        chain_unlink(r->ep_buckets, r->ep_nbuckets,
                     ep_key_hash(e->svc, &e->spec.addr, e->spec.cluster), i, r->eps, sizeof(*e),
                     offsetof(struct ep_rec, hnext));
        if (e->prev != NONE)
                r->eps[e->prev].next = e->next;
        else
                s->ep_head = e->next;
        if (e->next != NONE)
                r->eps[e->next].prev = e->prev;
        s->n_eps--;
        if (e->ejected_until_ms)
                r->n_ejected--;
        struct outcome_slot *sl = &r->slots->slots[i];
        atomic_fetch_add_explicit(&sl->gen, 1, memory_order_release);
        atomic_store_explicit(&sl->consecutive_failures, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->failures, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->successes, 0, memory_order_relaxed);
        e->used = false;
        e->hnext = r->ep_free;
        r->ep_free = i;
        r->n_eps--;
        r->dirty = true;
}

static void svc_remove(struct disc_registry *r, uint32_t i)
{
        struct svc_rec *s = &r->svcs[i];
        while (s->ep_head != NONE)
                ep_remove(r, s->ep_head);
        chain_unlink(r->svc_buckets, r->svc_nbuckets, s->hash, i, r->svcs, sizeof(*s),
                     offsetof(struct svc_rec, hnext));
        dr_routes_unref(s->spec.routes);
        s->spec.routes = NULL;
        s->used = false;
        s->hnext = r->svc_free;
        r->svc_free = i;
        r->n_svcs--;
        r->dirty = true;
}

/* Finds or creates the service; NONE on a full registry or no memory. */
static uint32_t svc_get(struct disc_registry *r, int src, const struct disc_service_spec *spec,
                        bool define)
{
        uint32_t i = disc_svc_find(r, spec->ns, spec->name);
        if (i == NONE) {
                int g = grow_buckets(&r->svc_buckets, &r->svc_nbuckets, r->n_svcs + 1);
                if (g < 0)
                        return NONE;
                if (g > 0)
                        svc_rehash(r);
                i = svc_alloc(r);
                if (i == NONE)
                        return NONE;
                struct svc_rec *s = &r->svcs[i];
                memset(s, 0, sizeof(*s));
                s->used = true;
                s->src = src;
                s->ep_head = NONE;
                dr_routes_ref(spec->routes);
                s->spec = *spec;
                s->spec.endpoints = NULL;
                s->spec.n_endpoints = 0;
                s->hash = name_hash(spec->ns, spec->name);
                uint32_t b = (uint32_t)(s->hash & (r->svc_nbuckets - 1));
                s->hnext = r->svc_buckets[b];
                r->svc_buckets[b] = i;
                r->n_svcs++;
                r->dirty = true;
                return i;
        }
        struct svc_rec *s = &r->svcs[i];
        if (define) {
                bool hc_changed = memcmp(&s->spec.hc, &spec->hc, sizeof(spec->hc)) != 0;
                struct dr_routes *old_routes = s->spec.routes;
                dr_routes_ref(spec->routes);
                s->spec = *spec;
                dr_routes_unref(old_routes);
                s->spec.endpoints = NULL;
                s->spec.n_endpoints = 0;
                s->src = src;
                r->dirty = true;
                if (hc_changed) {
                        /* new thresholds or check type: active results start over */
                        uint64_t now = disc_now_ms(r);
                        for (uint32_t e = s->ep_head; e != NONE; e = r->eps[e].next) {
                                r->eps[e].active = DISC_HEALTH_UNKNOWN;
                                r->eps[e].active_ok = r->eps[e].active_fail = 0;
                                update_effective(r, &r->eps[e], now);
                        }
                }
        }
        return i;
}

static uint32_t ep_put(struct disc_registry *r, int src, uint32_t svc,
                       const struct disc_endpoint_spec *spec, uint64_t now)
{
        struct disc_endpoint_spec n = *spec;
        addr_norm(&n.addr, &spec->addr);
        uint32_t i = ep_find(r, svc, &n.addr, n.cluster);
        if (i == NONE) {
                int g = grow_buckets(&r->ep_buckets, &r->ep_nbuckets, r->n_eps + 1);
                if (g < 0)
                        return NONE;
                if (g > 0)
                        ep_rehash(r);
                i = ep_alloc(r);
                if (i == NONE)
                        return NONE;
                struct ep_rec *e = &r->eps[i];
                uint32_t gen = atomic_load_explicit(&r->slots->slots[i].gen, memory_order_relaxed);
                memset(e, 0, sizeof(*e));
                e->used = true;
                e->gen = gen;
                e->svc = svc;
                e->spec = n;
                e->active = DISC_HEALTH_UNKNOWN;
                e->effective = n.health;
                struct svc_rec *s = &r->svcs[svc];
                e->prev = NONE;
                e->next = s->ep_head;
                if (s->ep_head != NONE)
                        r->eps[s->ep_head].prev = i;
                s->ep_head = i;
                s->n_eps++;
                uint32_t b =
                    (uint32_t)(ep_key_hash(svc, &n.addr, n.cluster) & (r->ep_nbuckets - 1));
                e->hnext = r->ep_buckets[b];
                r->ep_buckets[b] = i;
                r->n_eps++;
                r->dirty = true;
        } else {
                struct ep_rec *e = &r->eps[i];
                if (e->spec.weight != n.weight || e->spec.health != n.health ||
                    strcmp(e->spec.zone, n.zone) || strcmp(e->spec.region, n.region) ||
                    strcmp(e->spec.identity, n.identity) || e->spec.unmeshed != n.unmeshed ||
                    e->spec.mtls != n.mtls || strcmp(e->spec.labels, n.labels) || e->src != src)
                        r->dirty = true;
                e->spec = n;
        }
        struct ep_rec *e = &r->eps[i];
        e->src = src;
        e->last_seen_ms = now;
        update_effective(r, e, now);
        return i;
}

/* ---- validation of backend input ------------------------------------------ */

static bool name_ok(const char *s)
{
        size_t n = strnlen(s, DISC_NAME_MAX);
        return n > 0 && n < DISC_NAME_MAX;
}

static int check_spec(const struct disc_service_spec *s, size_t idx)
{
        if (!name_ok(s->name) || !name_ok(s->ns)) {
                log_error(COMP, 0, "service %zu: empty or over-long name or namespace", idx);
                return -EINVAL;
        }
        if (s->n_ports > DISC_MAX_PORTS || s->n_vips > DISC_MAX_VIPS) {
                log_error(COMP, 0, "service %s/%s: too many ports or addresses", s->ns, s->name);
                return -EINVAL;
        }
        for (uint32_t i = 0; i < s->n_ports; i++) {
                if (!s->ports[i].port) {
                        log_error(COMP, 0, "service %s/%s: port 0", s->ns, s->name);
                        return -EINVAL;
                }
        }
        for (uint32_t i = 0; i < s->n_vips; i++) {
                if (s->vips[i].family != AF_INET && s->vips[i].family != AF_INET6) {
                        log_error(COMP, 0, "service %s/%s: address %u has no family", s->ns,
                                  s->name, i);
                        return -EINVAL;
                }
        }
        for (uint32_t i = 0; i < s->n_endpoints; i++) {
                const struct disc_endpoint_spec *e = &s->endpoints[i];
                if ((e->addr.family != AF_INET && e->addr.family != AF_INET6) || !e->addr.port ||
                    e->weight > DISC_WEIGHT_MAX || (unsigned)e->health >= DISC_HEALTH__COUNT ||
                    (unsigned)e->mtls > DISC_MTLS_DISABLED ||
                    strnlen(e->identity, DISC_IDENTITY_MAX) == DISC_IDENTITY_MAX) {
                        log_error(COMP, 0,
                                  "service %s/%s: endpoint %u: bad address, port, weight, health, "
                                  "mTLS mode or identity",
                                  s->ns, s->name, i);
                        return -EINVAL;
                }
        }
        return 0;
}

/* ---- public update API ----------------------------------------------------- */

struct disc_registry *disc_registry_new(const struct disc_registry_opts *opts)
{
        struct disc_registry *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;
        if (opts)
                r->opts = *opts;
        if (!r->opts.max_services)
                r->opts.max_services = DISC_DEFAULT_MAX_SERVICES;
        if (!r->opts.max_endpoints)
                r->opts.max_endpoints = DISC_DEFAULT_MAX_ENDPOINTS;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->wall_offset_ms =
            (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - (int64_t)disc_now_ms(r);
        r->svc_free = r->ep_free = NONE;
        r->slots = calloc(1, sizeof(*r->slots) +
                                 (size_t)r->opts.max_endpoints * sizeof(struct outcome_slot));
        if (!r->slots) {
                free(r);
                return NULL;
        }
        atomic_init(&r->slots->refs, 1);
        r->slots->cap = r->opts.max_endpoints;
        snapshot_slot_init(&r->slot);
        r->dirty = true;
        if (disc_registry_publish(r) < 0) {
                disc_registry_free(r);
                return NULL;
        }
        return r;
}

void disc_registry_free(struct disc_registry *r)
{
        if (!r)
                return;
        disc_registry_detach(r);
        snapshot_slot_destroy(&r->slot);
        slot_table_unref(r->slots);
        for (uint32_t i = 0; i < r->n_svc_recs; i++)
                if (r->svcs[i].used)
                        dr_routes_unref(r->svcs[i].spec.routes);
        free(r->svcs);
        free(r->svc_buckets);
        free(r->eps);
        free(r->ep_buckets);
        free(r);
}

struct snapshot_slot *disc_registry_slot(struct disc_registry *r)
{
        return &r->slot;
}

const struct disc_snapshot *disc_registry_acquire(struct disc_registry *r)
{
        return disc_snapshot_cast(snapshot_acquire(&r->slot, NULL));
}

uint64_t disc_registry_version(const struct disc_registry *r)
{
        return r->version;
}

static bool src_ok(const struct disc_registry *r, int src)
{
        return src >= 0 && src < DISC_MAX_SOURCES && r->sources[src].used;
}

int disc_source_add(struct disc_registry *r, const char *name, enum disc_source_kind kind)
{
        if (!name || !*name || strlen(name) >= DISC_SOURCE_NAME_MAX)
                return -EINVAL;
        int free_id = -1;
        for (int i = 0; i < DISC_MAX_SOURCES; i++) {
                if (r->sources[i].used && strcmp(r->sources[i].name, name) == 0)
                        return -EEXIST;
                if (!r->sources[i].used && free_id < 0)
                        free_id = i;
        }
        if (free_id < 0) {
                log_error(COMP, 0, "source %s: more than %d sources", name, DISC_MAX_SOURCES);
                return -ENOSPC;
        }
        struct source *s = &r->sources[free_id];
        memset(s, 0, sizeof(*s));
        s->used = true;
        s->kind = kind;
        snprintf(s->name, sizeof(s->name), "%s", name);
        return free_id;
}

static void mark_source_stale(struct disc_registry *r, int src)
{
        /* staleness is copied into snapshots: rebuild if this source has data */
        for (uint32_t i = 0; i < r->n_svc_recs; i++) {
                if (r->svcs[i].used && r->svcs[i].src == src) {
                        r->dirty = true;
                        return;
                }
        }
        for (uint32_t i = 0; i < r->n_ep_recs; i++) {
                if (r->eps[i].used && r->eps[i].src == src) {
                        r->dirty = true;
                        return;
                }
        }
}

void disc_source_sync_ok(struct disc_registry *r, int src)
{
        if (!src_ok(r, src))
                return;
        struct source *s = &r->sources[src];
        uint64_t now = disc_now_ms(r);
        s->last_ok_ms = s->last_attempt_ms = now;
        s->ever_synced = true;
        s->n_ok++;
        if (s->failing) {
                s->failing = false;
                log_info(COMP, 0, "source %s: synced again, no longer stale", s->name);
                mark_source_stale(r, src);
        }
}

void disc_source_denied(struct disc_registry *r, int src)
{
        if (src_ok(r, src))
                r->sources[src].n_denied++;
}

void disc_source_sync_failed(struct disc_registry *r, int src, const char *why)
{
        if (!src_ok(r, src))
                return;
        struct source *s = &r->sources[src];
        s->last_attempt_ms = disc_now_ms(r);
        s->n_failed++;
        snprintf(s->error, sizeof(s->error), "%s", why ? why : "unknown error");
        if (!s->failing) {
                s->failing = true;
                log_warn(COMP, 0,
                         "source %s: sync failed, keeping the last known data as stale: %s",
                         s->name, s->error);
                mark_source_stale(r, src);
        }
}

bool disc_source_stale(const struct disc_registry *r, int src)
{
        return src_ok(r, src) && r->sources[src].failing;
}

uint64_t disc_source_staleness_ms(const struct disc_registry *r, int src)
{
        if (!src_ok(r, src) || !r->sources[src].ever_synced)
                return 0;
        return disc_now_ms(r) - r->sources[src].last_ok_ms;
}

static int apply_endpoints(struct disc_registry *r, int src, uint32_t svc,
                           const struct disc_service_spec *spec, uint32_t mark, uint64_t now)
{
        for (uint32_t k = 0; k < spec->n_endpoints; k++) {
                uint32_t e = ep_put(r, src, svc, &spec->endpoints[k], now);
                if (e == NONE) {
                        log_error(COMP, 0, "service %s/%s: endpoint limit %u reached", spec->ns,
                                  spec->name, r->opts.max_endpoints);
                        return -ENOSPC;
                }
                r->eps[e].mark = mark;
        }
        return 0;
}

/* Total endpoints after src's contribution is replaced by `add` new ones:
 * an upper bound, checked before anything changes. */
static int check_capacity(struct disc_registry *r, int src, size_t add_eps, size_t add_svcs)
{
        size_t keep = 0;
        for (uint32_t i = 0; i < r->n_ep_recs; i++)
                keep += r->eps[i].used && r->eps[i].src != src;
        if (keep + add_eps > r->opts.max_endpoints) {
                log_error(COMP, 0, "source %s: %zu endpoints exceed the limit of %u",
                          r->sources[src].name, keep + add_eps, r->opts.max_endpoints);
                return -ENOSPC;
        }
        if (add_svcs > r->opts.max_services) {
                log_error(COMP, 0, "source %s: %zu services exceed the limit of %u",
                          r->sources[src].name, add_svcs, r->opts.max_services);
                return -ENOSPC;
        }
        return 0;
}

int disc_registry_replace(struct disc_registry *r, int src, const struct disc_service_spec *svcs,
                          size_t n)
{
        if (!src_ok(r, src))
                return -EINVAL;
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
                int rc = check_spec(&svcs[i], i);
                if (rc)
                        return rc;
                total += svcs[i].n_endpoints;
        }
        int rc = check_capacity(r, src, total, n);
        if (rc)
                return rc;
        uint32_t mark = ++r->mark;
        uint64_t now = disc_now_ms(r);
        for (size_t i = 0; i < n; i++) {
                uint32_t s = svc_get(r, src, &svcs[i], true);
                if (s == NONE) {
                        log_error(COMP, 0, "service %s/%s: service limit %u reached", svcs[i].ns,
                                  svcs[i].name, r->opts.max_services);
                        rc = -ENOSPC;
                        break;
                }
                r->svcs[s].mark = mark;
                rc = apply_endpoints(r, src, s, &svcs[i], mark, now);
                if (rc)
                        break;
        }
        if (rc)
                return rc; /* only on allocation failure past the checks: partial */
        for (uint32_t i = 0; i < r->n_svc_recs; i++) {
                if (r->svcs[i].used && r->svcs[i].src == src && r->svcs[i].mark != mark)
                        svc_remove(r, i);
        }
        for (uint32_t i = 0; i < r->n_ep_recs; i++) {
                if (r->eps[i].used && r->eps[i].src == src && r->eps[i].mark != mark)
                        ep_remove(r, i);
        }
        r->dirty = true;
        return 0;
}

int disc_registry_upsert_service(struct disc_registry *r, int src,
                                 const struct disc_service_spec *svc, bool replace_endpoints)
{
        if (!src_ok(r, src))
                return -EINVAL;
        int rc = check_spec(svc, 0);
        if (rc)
                return rc;
        if (r->n_eps + svc->n_endpoints > r->opts.max_endpoints) {
                log_error(COMP, 0, "service %s/%s: endpoint limit %u reached", svc->ns, svc->name,
                          r->opts.max_endpoints);
                return -ENOSPC;
        }
        uint32_t s = svc_get(r, src, svc, true);
        if (s == NONE) {
                log_error(COMP, 0, "service %s/%s: service limit %u reached", svc->ns, svc->name,
                          r->opts.max_services);
                return -ENOSPC;
        }
        if (!replace_endpoints)
                return 0;
        uint32_t mark = ++r->mark;
        rc = apply_endpoints(r, src, s, svc, mark, disc_now_ms(r));
        if (rc)
                return rc;
        uint32_t e = r->svcs[s].ep_head;
        while (e != NONE) {
                uint32_t next = r->eps[e].next;
                if (r->eps[e].src == src && r->eps[e].mark != mark)
                        ep_remove(r, e);
                e = next;
        }
        return 0;
}

int disc_registry_remove_service(struct disc_registry *r, int src, const char *ns, const char *name)
{
        uint32_t s = disc_svc_find(r, ns ? ns : DISC_DEFAULT_NAMESPACE, name);
        if (s == NONE || r->svcs[s].src != src)
                return -ENOENT;
        svc_remove(r, s);
        return 0;
}

int disc_registry_upsert_endpoint(struct disc_registry *r, int src, const char *ns,
                                  const char *name, const struct disc_endpoint_spec *ep)
{
        if (!src_ok(r, src))
                return -EINVAL;
        uint32_t s = disc_svc_find(r, ns ? ns : DISC_DEFAULT_NAMESPACE, name);
        if (s == NONE)
                return -ENOENT;
        if ((ep->addr.family != AF_INET && ep->addr.family != AF_INET6) || !ep->addr.port ||
            ep->weight > DISC_WEIGHT_MAX || (unsigned)ep->health >= DISC_HEALTH__COUNT)
                return -EINVAL;
        if (ep_put(r, src, s, ep, disc_now_ms(r)) == NONE) {
                log_error(COMP, 0, "service %s/%s: endpoint limit %u reached", r->svcs[s].spec.ns,
                          name, r->opts.max_endpoints);
                return -ENOSPC;
        }
        return 0;
}

int disc_registry_set_endpoints(struct disc_registry *r, int src, const char *ns, const char *name,
                                const struct disc_endpoint_spec *eps, size_t n)
{
        if (!src_ok(r, src))
                return -EINVAL;
        uint32_t s = disc_svc_find(r, ns ? ns : DISC_DEFAULT_NAMESPACE, name);
        if (s == DISC_NONE)
                return -ENOENT;
        struct disc_service_spec tmp = {0};
        snprintf(tmp.name, sizeof(tmp.name), "%s", name);
        snprintf(tmp.ns, sizeof(tmp.ns), "%s", r->svcs[s].spec.ns);
        tmp.endpoints = (struct disc_endpoint_spec *)(uintptr_t)eps;
        tmp.n_endpoints = (uint32_t)n;
        tmp.n_ports = 0;
        int rc = check_spec(&tmp, 0);
        if (rc)
                return rc;
        size_t keep = 0;
        for (uint32_t e = r->svcs[s].ep_head; e != NONE; e = r->eps[e].next)
                keep += r->eps[e].src == src;
        if (r->n_eps - keep + n > r->opts.max_endpoints) {
                log_error(COMP, 0, "service %s/%s: endpoint limit %u reached", tmp.ns, name,
                          r->opts.max_endpoints);
                return -ENOSPC;
        }
        uint32_t mark = ++r->mark;
        rc = apply_endpoints(r, src, s, &tmp, mark, disc_now_ms(r));
        if (rc)
                return rc;
        uint32_t e = r->svcs[s].ep_head;
        while (e != NONE) {
                uint32_t next = r->eps[e].next;
                if (r->eps[e].src == src && r->eps[e].mark != mark)
                        ep_remove(r, e);
                e = next;
        }
        return 0;
}

int disc_registry_remove_endpoint(struct disc_registry *r, int src, const char *ns,
                                  const char *name, const struct disc_addr *addr)
{
        uint32_t s = disc_svc_find(r, ns ? ns : DISC_DEFAULT_NAMESPACE, name);
        if (s == NONE)
                return -ENOENT;
        struct disc_addr a;
        addr_norm(&a, addr);
        uint32_t e = ep_find(r, s, &a, "");
        if (e == NONE || r->eps[e].src != src)
                return -ENOENT;
        ep_remove(r, e);
        return 0;
}

void disc_registry_active_result(struct disc_registry *r, uint32_t slot, uint32_t slot_gen, bool ok)
{
        if (slot >= r->n_ep_recs || !r->eps[slot].used || r->eps[slot].gen != slot_gen)
                return;
        struct ep_rec *e = &r->eps[slot];
        const struct disc_health_check *hc = &r->svcs[e->svc].spec.hc;
        uint64_t now = disc_now_ms(r);
        if (ok) {
                e->last_seen_ms = now;
                e->active_fail = 0;
                if (e->active_ok < 255)
                        e->active_ok++;
                /* the first result decides; after that the thresholds apply */
                if (e->active == DISC_HEALTH_UNKNOWN ||
                    (e->active == DISC_HEALTH_UNHEALTHY && e->active_ok >= hc->healthy_threshold))
                        e->active = DISC_HEALTH_HEALTHY;
        } else {
                e->active_ok = 0;
                if (e->active_fail < 255)
                        e->active_fail++;
                if (e->active == DISC_HEALTH_UNKNOWN ||
                    (e->active == DISC_HEALTH_HEALTHY && e->active_fail >= hc->unhealthy_threshold))
                        e->active = DISC_HEALTH_UNHEALTHY;
        }
        update_effective(r, e, now);
}

/* ---- tick: passive outcomes and ejections ---------------------------------- */

void disc_registry_tick(struct disc_registry *r)
{
        uint64_t now = disc_now_ms(r);
        bool attention = atomic_exchange_explicit(&r->slots->attention, 0, memory_order_acq_rel);
        if (attention || r->n_ejected) {
                for (uint32_t i = 0; i < r->n_ep_recs; i++) {
                        struct ep_rec *e = &r->eps[i];
                        if (!e->used)
                                continue;
                        struct outcome_slot *sl = &r->slots->slots[i];
                        const struct disc_health_check *hc = &r->svcs[e->svc].spec.hc;
                        e->passive_failures +=
                            atomic_exchange_explicit(&sl->failures, 0, memory_order_relaxed);
                        uint32_t ok =
                            atomic_exchange_explicit(&sl->successes, 0, memory_order_relaxed);
                        e->passive_successes += ok;
                        if (ok)
                                e->last_seen_ms = now;
                        if (e->ejected_until_ms && e->ejected_until_ms <= now) {
                                e->ejected_until_ms = 0;
                                r->n_ejected--;
                                atomic_store_explicit(&sl->consecutive_failures, 0,
                                                      memory_order_relaxed);
                                char ip[64];
                                log_info(COMP, 0, "endpoint %s:%u of %s/%s: ejection over",
                                         disc_addr_ip(&e->spec.addr, ip, sizeof(ip)),
                                         e->spec.addr.port, r->svcs[e->svc].spec.ns,
                                         r->svcs[e->svc].spec.name);
                        }
                        uint32_t consec =
                            atomic_load_explicit(&sl->consecutive_failures, memory_order_relaxed);
                        if (hc->passive_failures && !e->ejected_until_ms &&
                            consec >= hc->passive_failures) {
                                e->ejected_until_ms = now + hc->ejection_ms;
                                e->n_ejections++;
                                r->n_ejected++;
                                atomic_store_explicit(&sl->consecutive_failures, 0,
                                                      memory_order_relaxed);
                                char ip[64];
                                log_warn(COMP, 0,
                                         "endpoint %s:%u of %s/%s: %u consecutive failures, out "
                                         "of rotation for %ums",
                                         disc_addr_ip(&e->spec.addr, ip, sizeof(ip)),
                                         e->spec.addr.port, r->svcs[e->svc].spec.ns,
                                         r->svcs[e->svc].spec.name, consec, hc->ejection_ms);
                        }
                        update_effective(r, e, now);
                }
        }
        if (r->dirty)
                disc_registry_publish(r);
}

static void tick_cb(struct loop *loop, struct loop_timer *t)
{
        struct disc_registry *r = t->data;
        disc_registry_tick(r);
        loop_timer_arm(loop, t, DISC_TICK_MS);
}

int disc_registry_attach(struct disc_registry *r, struct loop *loop)
{
        r->loop = loop;
        loop_timer_init(&r->tick, tick_cb, r);
        return loop_timer_arm(loop, &r->tick, DISC_TICK_MS);
}

void disc_registry_detach(struct disc_registry *r)
{
        if (r->loop)
                loop_timer_cancel(r->loop, &r->tick);
        r->loop = NULL;
}

/* ---- snapshots ------------------------------------------------------------ */

struct vip_entry {
        struct disc_addr key; /* address and service port */
        uint32_t svc;
        uint32_t port_idx;
};

struct disc_snapshot {
        struct snapshot base; /* first: see disc_snapshot_cast */
        uint64_t version;
        struct slot_table *slots;
        uint32_t n_services, n_endpoints, n_vips;
        struct disc_service *services;
        uint64_t *service_hash;
        struct disc_endpoint *endpoints;
        struct vip_entry *vips;
        uint32_t *name_tab, name_mask;
        uint32_t *vip_tab, vip_mask;
        uint32_t *ep_tab, ep_mask;
        size_t bytes;
};

uint64_t disc_snapshot_version(const struct disc_snapshot *s)
{
        return s->version;
}

uint32_t disc_snapshot_n_services(const struct disc_snapshot *s)
{
        return s->n_services;
}

uint32_t disc_snapshot_n_endpoints(const struct disc_snapshot *s)
{
        return s->n_endpoints;
}

const struct disc_service *disc_snapshot_service(const struct disc_snapshot *s, uint32_t i)
{
        return i < s->n_services ? &s->services[i] : NULL;
}

const struct disc_endpoint *disc_snapshot_endpoint(const struct disc_snapshot *s, uint32_t i)
{
        return i < s->n_endpoints ? &s->endpoints[i] : NULL;
}

const struct disc_service *disc_endpoint_service(const struct disc_snapshot *s,
                                                 const struct disc_endpoint *ep)
{
        return ep->service < s->n_services ? &s->services[ep->service] : NULL;
}

void disc_snapshot_release(const struct disc_snapshot *s)
{
        if (s)
                snapshot_unref((struct snapshot *)(void *)(uintptr_t)s);
}

static void snapshot_destroy(struct snapshot *base)
{
        struct disc_snapshot *s = (struct disc_snapshot *)(void *)base;
        for (uint32_t i = 0; i < s->n_services; i++)
                dr_routes_unref((struct dr_routes *)(uintptr_t)s->services[i].routes);
        slot_table_unref(s->slots);
        free(s);
}

const struct disc_service *disc_find_service(const struct disc_snapshot *s, const char *ns,
                                             const char *name)
{
        if (!ns)
                ns = DISC_DEFAULT_NAMESPACE;
        uint64_t h = name_hash(ns, name);
        for (uint32_t b = (uint32_t)h & s->name_mask;; b = (b + 1) & s->name_mask) {
                uint32_t i = s->name_tab[b];
                if (i == NONE)
                        return NULL;
                if (s->service_hash[i] == h && strcmp(s->services[i].name, name) == 0 &&
                    strcmp(s->services[i].ns, ns) == 0)
                        return &s->services[i];
        }
}

const struct disc_service *disc_find_vip(const struct disc_snapshot *s, const struct disc_addr *dst,
                                         uint32_t *port_idx)
{
        struct disc_addr k;
        addr_norm(&k, dst);
        for (uint32_t b = (uint32_t)addr_hash(&k) & s->vip_mask;; b = (b + 1) & s->vip_mask) {
                uint32_t i = s->vip_tab[b];
                if (i == NONE)
                        return NULL;
                if (addr_eq(&s->vips[i].key, &k)) {
                        if (port_idx)
                                *port_idx = s->vips[i].port_idx;
                        return &s->services[s->vips[i].svc];
                }
        }
}

const struct disc_service *disc_find_vip_sa(const struct disc_snapshot *s,
                                            const struct sockaddr_storage *dst, uint32_t *port_idx)
{
        struct disc_addr a;
        if (disc_addr_from_sockaddr(dst, &a))
                return NULL;
        return disc_find_vip(s, &a, port_idx);
}

const struct disc_endpoint *disc_find_endpoint(const struct disc_snapshot *s,
                                               const struct disc_addr *addr)
{
        struct disc_addr k;
        addr_norm(&k, addr);
        for (uint32_t b = (uint32_t)addr_hash(&k) & s->ep_mask;; b = (b + 1) & s->ep_mask) {
                uint32_t i = s->ep_tab[b];
                if (i == NONE)
                        return NULL;
                if (addr_eq(&s->endpoints[i].addr, &k))
                        return &s->endpoints[i];
        }
}

void disc_report(const struct disc_snapshot *s, const struct disc_endpoint *ep,
                 enum disc_outcome outcome)
{
        if (ep->slot >= s->slots->cap)
                return;
        struct outcome_slot *sl = &s->slots->slots[ep->slot];
        if (atomic_load_explicit(&sl->gen, memory_order_acquire) != ep->slot_gen)
                return; /* the endpoint was removed since this snapshot */
        if (outcome == DISC_OUTCOME_FAILURE) {
                atomic_fetch_add_explicit(&sl->failures, 1, memory_order_relaxed);
                atomic_fetch_add_explicit(&sl->consecutive_failures, 1, memory_order_relaxed);
                atomic_store_explicit(&s->slots->attention, 1, memory_order_release);
        } else {
                atomic_fetch_add_explicit(&sl->successes, 1, memory_order_relaxed);
                if (atomic_load_explicit(&sl->consecutive_failures, memory_order_relaxed))
                        atomic_store_explicit(&sl->consecutive_failures, 0, memory_order_relaxed);
        }
}

static uint32_t table_size(uint32_t n)
{
        uint32_t c = 16;
        while (c < n * 2)
                c *= 2;
        return c;
}

static const struct disc_registry *sort_reg; /* qsort has no context argument; main thread only */

static int svc_order(const void *a, const void *b)
{
        const struct svc_rec *x = &sort_reg->svcs[*(const uint32_t *)a];
        const struct svc_rec *y = &sort_reg->svcs[*(const uint32_t *)b];
        int c = strcmp(x->spec.ns, y->spec.ns);
        return c ? c : strcmp(x->spec.name, y->spec.name);
}

static int ep_order(const void *a, const void *b)
{
        const struct disc_endpoint *x = a, *y = b;
        int c = addr_cmp(&x->addr, &y->addr);
        return c ? c : strcmp(x->cluster, y->cluster);
}

/* Bump allocator over one block. */
struct arena {
        char *base;
        size_t off, cap;
};

static void *arena_take(struct arena *a, size_t n, size_t align)
{
        a->off = (a->off + align - 1) & ~(align - 1);
        void *p = a->base + a->off;
        a->off += n;
        return p;
}

static const char *arena_str(struct arena *a, const char *s)
{
        size_t n = strlen(s) + 1;
        char *p = arena_take(a, n, 1);
        memcpy(p, s, n);
        return p;
}

int disc_registry_publish(struct disc_registry *r)
{
        if (!r->dirty)
                return 0;
        uint64_t t0 = clock_mono_ns();
        uint32_t ns = r->n_svcs, ne = r->n_eps, nv = 0, np = 0;
        size_t strbytes = 0;
        uint32_t *order = malloc(((size_t)ns + 1) * sizeof(*order));
        if (!order)
                return -ENOMEM;
        uint32_t k = 0;
        for (uint32_t i = 0; i < r->n_svc_recs; i++) {
                const struct svc_rec *s = &r->svcs[i];
                if (!s->used)
                        continue;
                order[k++] = i;
                np += s->spec.n_ports;
                nv += s->spec.n_vips * s->spec.n_ports;
                strbytes += strlen(s->spec.name) + strlen(s->spec.ns) + strlen(s->spec.identity) +
                            strlen(s->spec.hash_key) + 4;
                for (uint32_t p = 0; p < s->spec.n_ports; p++)
                        strbytes += strlen(s->spec.ports[p].name) + 1;
        }
        for (uint32_t i = 0; i < r->n_ep_recs; i++) {
                if (r->eps[i].used)
                        strbytes += strlen(r->eps[i].spec.zone) + strlen(r->eps[i].spec.region) +
                                    strlen(r->eps[i].spec.identity) +
                                    strlen(r->eps[i].spec.labels) + strlen(r->eps[i].spec.cluster) +
                                    5;
        }
        sort_reg = r;
        qsort(order, ns, sizeof(*order), svc_order);

        uint32_t ntab = table_size(ns), vtab = table_size(nv), etab = table_size(ne);
        size_t vip_addrs = 0;
        for (uint32_t i = 0; i < ns; i++)
                vip_addrs += r->svcs[order[i]].spec.n_vips;
        size_t total =
            sizeof(struct disc_snapshot) + 64 * 8 +
            (size_t)ns * (sizeof(struct disc_service) + sizeof(uint64_t)) +
            (size_t)ne * sizeof(struct disc_endpoint) + (size_t)nv * sizeof(struct vip_entry) +
            (size_t)np * sizeof(struct disc_port) + vip_addrs * sizeof(struct disc_addr) +
            ((size_t)ntab + vtab + etab) * sizeof(uint32_t) + strbytes;
        char *block = malloc(total);
        if (!block) {
                free(order);
                log_error(COMP, 0, "snapshot of %u services, %u endpoints: out of memory", ns, ne);
                return -ENOMEM;
        }
        struct arena a = {.base = block, .cap = total};
        struct disc_snapshot *snap = arena_take(&a, sizeof(*snap), 64);
        memset(snap, 0, sizeof(*snap));
        snapshot_init(&snap->base, snapshot_destroy);
        snap->version = r->version + 1;
        snap->slots = r->slots;
        atomic_fetch_add_explicit(&r->slots->refs, 1, memory_order_relaxed);
        snap->n_services = ns;
        snap->n_endpoints = ne;
        snap->services = arena_take(&a, (size_t)ns * sizeof(struct disc_service), 16);
        snap->service_hash = arena_take(&a, (size_t)ns * sizeof(uint64_t), 8);
        snap->endpoints = arena_take(&a, (size_t)ne * sizeof(struct disc_endpoint), 16);
        snap->vips = arena_take(&a, (size_t)nv * sizeof(struct vip_entry), 8);
        struct disc_port *ports = arena_take(&a, (size_t)np * sizeof(struct disc_port), 8);
        struct disc_addr *vaddrs = arena_take(&a, vip_addrs * sizeof(struct disc_addr), 8);
        snap->name_tab = arena_take(&a, (size_t)ntab * sizeof(uint32_t), 4);
        snap->vip_tab = arena_take(&a, (size_t)vtab * sizeof(uint32_t), 4);
        snap->ep_tab = arena_take(&a, (size_t)etab * sizeof(uint32_t), 4);
        memset(snap->name_tab, 0xff, (size_t)ntab * sizeof(uint32_t));
        memset(snap->vip_tab, 0xff, (size_t)vtab * sizeof(uint32_t));
        memset(snap->ep_tab, 0xff, (size_t)etab * sizeof(uint32_t));
        snap->name_mask = ntab - 1;
        snap->vip_mask = vtab - 1;
        snap->ep_mask = etab - 1;

        uint32_t ei = 0, vi = 0;
        for (uint32_t i = 0; i < ns; i++) {
                const struct svc_rec *rec = &r->svcs[order[i]];
                struct disc_service *svc = &snap->services[i];
                const struct source *src = &r->sources[rec->src];
                svc->name = arena_str(&a, rec->spec.name);
                svc->ns = arena_str(&a, rec->spec.ns);
                svc->identity = arena_str(&a, rec->spec.identity);
                svc->hash_key = arena_str(&a, rec->spec.hash_key);
                svc->mtls = rec->spec.mtls;
                svc->lb = rec->spec.lb;
                svc->hc = rec->spec.hc;
                svc->routes = rec->spec.routes;
                dr_routes_ref(rec->spec.routes);
                svc->source = (uint16_t)rec->src;
                svc->stale = src->failing;
                svc->ports = ports;
                svc->n_ports = rec->spec.n_ports;
                for (uint32_t p = 0; p < rec->spec.n_ports; p++) {
                        const struct disc_port_spec *ps = &rec->spec.ports[p];
                        ports[p].name = arena_str(&a, ps->name);
                        ports[p].port = ps->port;
                        ports[p].target_port = ps->target_port ? ps->target_port : ps->port;
                        ports[p].proto = ps->proto;
                }
                ports += rec->spec.n_ports;
                svc->vips = vaddrs;
                svc->n_vips = rec->spec.n_vips;
                for (uint32_t v = 0; v < rec->spec.n_vips; v++)
                        addr_norm(&vaddrs[v], &rec->spec.vips[v]);
                vaddrs += rec->spec.n_vips;
                snap->service_hash[i] = rec->hash;
                for (uint32_t b = (uint32_t)rec->hash & snap->name_mask;;
                     b = (b + 1) & snap->name_mask) {
                        if (snap->name_tab[b] == NONE) {
                                snap->name_tab[b] = i;
                                break;
                        }
                }
                for (uint32_t v = 0; v < svc->n_vips; v++) {
                        for (uint32_t p = 0; p < svc->n_ports; p++) {
                                struct vip_entry *ve = &snap->vips[vi];
                                ve->key = svc->vips[v];
                                ve->key.port = svc->ports[p].port;
                                ve->svc = i;
                                ve->port_idx = p;
                                uint32_t b = (uint32_t)addr_hash(&ve->key) & snap->vip_mask;
                                bool dup = false;
                                for (;; b = (b + 1) & snap->vip_mask) {
                                        uint32_t o = snap->vip_tab[b];
                                        if (o == NONE)
                                                break;
                                        if (addr_eq(&snap->vips[o].key, &ve->key)) {
                                                dup = true;
                                                break;
                                        }
                                }
                                if (dup) {
                                        char ip[64];
                                        const struct disc_service *first =
                                            &snap->services[snap->vips[snap->vip_tab[b]].svc];
                                        log_warn(COMP, 0,
                                                 "service %s/%s: address %s port %u already "
                                                 "belongs to %s/%s; ignored",
                                                 svc->ns, svc->name,
                                                 disc_addr_ip(&ve->key, ip, sizeof(ip)),
                                                 ve->key.port, first->ns, first->name);
                                        continue;
                                }
                                snap->vip_tab[b] = vi++;
                        }
                }
                svc->endpoints = &snap->endpoints[ei];
                uint32_t first = ei;
                for (uint32_t e = rec->ep_head; e != NONE; e = r->eps[e].next) {
                        const struct ep_rec *er = &r->eps[e];
                        struct disc_endpoint *ep = &snap->endpoints[ei++];
                        ep->addr = er->spec.addr;
                        ep->weight = er->spec.weight;
                        ep->health = er->effective;
                        ep->service = i;
                        ep->slot = e;
                        ep->slot_gen = er->gen;
                        ep->source = (uint16_t)er->src;
                        ep->stale = r->sources[er->src].failing;
                        ep->zone = arena_str(&a, er->spec.zone);
                        ep->region = arena_str(&a, er->spec.region);
                        ep->labels = arena_str(&a, er->spec.labels);
                        ep->cluster = arena_str(&a, er->spec.cluster);
                        /* The service's identity is already in the arena. */
                        ep->identity = er->spec.unmeshed      ? ""
                                       : er->spec.identity[0] ? arena_str(&a, er->spec.identity)
                                                              : svc->identity;
                        ep->meshed = ep->identity[0] != '\0';
                        ep->mtls = er->spec.mtls != DISC_MTLS_DEFAULT ? er->spec.mtls : svc->mtls;
                }
                svc->n_endpoints = ei - first;
                qsort(&snap->endpoints[first], svc->n_endpoints, sizeof(struct disc_endpoint),
                      ep_order);
                uint32_t healthy = 0;
                for (uint32_t e = first; e < ei; e++) {
                        struct disc_endpoint *ep = &snap->endpoints[e];
                        healthy += disc_endpoint_routable(ep);
                        ep->next_same_addr = NONE;
                        uint32_t b = (uint32_t)addr_hash(&ep->addr) & snap->ep_mask;
                        for (;; b = (b + 1) & snap->ep_mask) {
                                uint32_t o = snap->ep_tab[b];
                                if (o == NONE) {
                                        snap->ep_tab[b] = e;
                                        break;
                                }
                                if (addr_eq(&snap->endpoints[o].addr, &ep->addr)) {
                                        /* append to the chain of the first one */
                                        while (snap->endpoints[o].next_same_addr != NONE)
                                                o = snap->endpoints[o].next_same_addr;
                                        snap->endpoints[o].next_same_addr = e;
                                        break;
                                }
                        }
                }
                svc->n_healthy = healthy;
        }
        snap->n_vips = vi;
        snap->bytes = a.off;
        free(order);
        r->version = snap->version;
        r->published_ms = disc_now_ms(r);
        r->snapshot_bytes = a.off;
        r->build_us_last = (clock_mono_ns() - t0) / 1000;
        r->dirty = false;
        snapshot_publish(&r->slot, &snap->base);
        log_debug(COMP, 0, "published snapshot %llu: %u services, %u endpoints, %zu bytes",
                  (unsigned long long)snap->version, ns, ne, a.off);
        return 0;
}

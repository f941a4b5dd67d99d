// SPDX-License-Identifier: Apache-2.0
/* The DNS backend: c-ares lookups on the main loop (see dns.h). */
#include "discovery/dns.h"

#include <ares.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/clock.h"
#include "core/log.h"
#include "discovery/consul.h"
#include "discovery/file.h"

#define COMP "dns"

#define RR_CLASS_IN  1
#define RR_TYPE_A    1
#define RR_TYPE_AAAA 28
#define RR_TYPE_SRV  33

enum dns_rr { DNS_RR_A = 0, DNS_RR_AAAA, DNS_RR_BOTH, DNS_RR_SRV };
static const char *const rr_names[] = {"A", "AAAA", "A+AAAA", "SRV"};

struct dns;
struct dns_name;

/* One host whose addresses a round needs: the name itself (A, AAAA), or an
 * SRV target. */
struct dns_group {
        char host[DNS_HOST_MAX];
        uint16_t port; /* SRV: the record's port; 0: the service's ports */
        uint16_t weight;
        uint8_t pending;
        int hard; /* a failure other than NXDOMAIN/NODATA, or 0 */
        int soft; /* ARES_ENOTFOUND or ARES_ENODATA seen, or 0 */
        uint32_t naddrs;
};

/* The context of one c-ares query. */
struct dns_lookup {
        struct dns_name *n;
        uint32_t round;
        uint32_t group; /* UINT32_MAX: the SRV query */
        int family;
};

struct dns_name {
        struct dns *d;
        uint32_t idx; /* in d->specs */
        char host[DNS_HOST_MAX];
        enum dns_rr rr;
        char zone[DISC_NAME_MAX], region[DISC_NAME_MAX];
        struct loop_timer timer;
        /* the round in flight */
        uint32_t round;
        bool busy;
        uint32_t pending;
        int srv_status; /* the SRV query's failure, or 0 */
        long ttl;       /* smallest TTL seen in this round, -1 none */
        struct dns_group groups[1 + DNS_MAX_TARGETS];
        uint32_t n_groups;
        struct dns_lookup lk[2 * (1 + DNS_MAX_TARGETS) + 1];
        uint32_t n_lk;
        struct disc_endpoint_spec *acc; /* grown up to DNS_MAX_ADDRS */
        uint32_t n_acc, cap_acc;
        uint32_t skipped; /* addresses or records over the bounds, other SRV ports */
        uint16_t srv_port_new;
        /* what was resolved last */
        struct disc_endpoint_spec *eps;
        uint32_t n_eps, cap_eps;
        uint16_t srv_port; /* SRV: the target port in use (0 before the first answer) */
        bool resolved;
        uint32_t failures; /* consecutive failed rounds */
        uint32_t ttl_s;    /* of the last good answer, before the bounds */
        uint64_t next_ms;
        uint64_t lookups, errors, changes, nxdomain, nodata, servfail, timeouts;
        char last_error[DISC_ERROR_MAX];
};

struct dns_io {
        struct loop_io io;
        struct dns *d;
        struct dns_io *next;
        bool dead;
};

struct dns {
        struct disc_registry *reg;
        int src;
        struct loop *loop;
        ares_channel ch;
        bool ch_ok;
        bool destroying;
        struct dns_io *ios;
        struct loop_timer ares_timer;
        struct disc_specs specs;
        struct dns_name *names; /* one per spec */
        uint32_t n_names;
        uint32_t n_failing;
        char servers[CONFIG_PATH_MAX];
        uint32_t min_ttl_ms, max_ttl_ms, timeout_ms, attempts;
        uint32_t mark;
        /* fallback */
        bool fallback;
        bool active;
        uint32_t after_ms;
        uint64_t fail_seen_ms[DISC_MAX_SOURCES];
        struct loop_timer fb_timer;
        uint64_t activations;
        uint64_t syncs;
        char last_error[DISC_ERROR_MAX];
        unsigned rand_state;
};

static void name_start(struct dns_name *n);

/* ---- the answer's TTL ------------------------------------------------------- */

static int skip_name(const unsigned char *msg, int len, const unsigned char *p, long *enclen)
{
        char *s = NULL;
        int rc = ares_expand_name(p, msg, len, &s, enclen);
        if (rc == ARES_SUCCESS)
                ares_free_string(s);
        return rc == ARES_SUCCESS ? 0 : -1;
}

long disc_dns_min_ttl(const unsigned char *msg, int len, int type)
{
        if (!msg || len < 12)
                return -1;
        unsigned qd = (unsigned)msg[4] << 8 | msg[5];
        unsigned an = (unsigned)msg[6] << 8 | msg[7];
        const unsigned char *p = msg + 12, *end = msg + len;
        long enclen;
        for (unsigned i = 0; i < qd; i++) {
                if (skip_name(msg, len, p, &enclen) < 0 || end - p < enclen + 4)
                        return -1;
                p += enclen + 4;
        }
        long best = -1;
        for (unsigned i = 0; i < an; i++) {
                if (skip_name(msg, len, p, &enclen) < 0 || end - p < enclen + 10)
                        return -1;
                p += enclen;
                int t = p[0] << 8 | p[1];
                long ttl = (long)((uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 |
                                  (uint32_t)p[6] << 8 | p[7]);
                unsigned rdlen = (unsigned)p[8] << 8 | p[9];
                if (end - p < 10 + (long)rdlen)
                        return -1;
                if (ttl > 0x7fffffffL)
                        ttl = 0; /* RFC 2181: a TTL with the top bit set is 0 */
                if (t == type && (best < 0 || ttl < best))
                        best = ttl;
                p += 10 + rdlen;
        }
        return best;
}

/* ---- c-ares on the loop ---------------------------------------------------- */

static void ares_rearm(struct dns *d)
{
        if (!d->loop || d->destroying)
                return;
        struct timeval tv, *tvp = ares_timeout(d->ch, NULL, &tv);
        if (!tvp) {
                loop_timer_cancel(d->loop, &d->ares_timer);
                return;
        }
        uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
        loop_timer_arm(d->loop, &d->ares_timer, ms);
}

static void ares_timer_cb(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct dns *d = t->data;
        ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
        ares_rearm(d);
}

static void io_cb(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        struct dns_io *dio = io->data;
        if (dio->dead)
                return;
        struct dns *d = dio->d;
        int fd = io->fd;
        ares_process_fd(d->ch, events & (EPOLLIN | EPOLLERR | EPOLLHUP) ? fd : ARES_SOCKET_BAD,
                        events & EPOLLOUT ? fd : ARES_SOCKET_BAD);
        ares_rearm(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
        struct dns *d = data;
        struct dns_io **pp = &d->ios;
        while (*pp && (*pp)->io.fd != fd)
                pp = &(*pp)->next;
        struct dns_io *dio = *pp;
        if (!readable && !writable) {
                if (!dio)
                        return;
                *pp = dio->next;
                if (d->loop)
                        loop_io_del(d->loop, &dio->io);
                dio->dead = true;
                dio->io.fd = -1;
                if (!d->loop || d->destroying || loop_defer_free(d->loop, dio) < 0)
                        free(dio); /* (loop_defer_free frees it itself on failure) */
                return;
        }
        uint32_t ev = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);
        if (!d->loop)
                return;
        if (!dio) {
                dio = calloc(1, sizeof(*dio));
                if (!dio) {
                        log_error(COMP, 0, "out of memory for a resolver socket");
                        return;
                }
                loop_io_init(&dio->io, fd, io_cb, dio);
                dio->d = d;
                if (loop_io_add(d->loop, &dio->io, ev) < 0) {
                        log_error(COMP, 0, "cannot watch a resolver socket");
                        free(dio);
                        return;
                }
                dio->next = d->ios;
                d->ios = dio;
                return;
        }
        loop_io_mod(d->loop, &dio->io, ev);
}

/* shuntd's own sockets carry proxy_mark: never captured. */
static int sock_config_cb(ares_socket_t fd, int type, void *data)
{
        (void)type;
        struct dns *d = data;
        if (d->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &d->mark, sizeof(d->mark)) < 0)
                return -1;
        return 0;
}

/* ---- rounds ---------------------------------------------------------------- */

static const char *status_text(int status)
{
        switch (status) {
        case ARES_ENOTFOUND:
                return "NXDOMAIN";
        case ARES_ENODATA:
                return "no records (NODATA)";
        case ARES_ESERVFAIL:
                return "SERVFAIL";
        case ARES_EREFUSED:
                return "REFUSED";
        case ARES_ETIMEOUT:
                return "timed out";
        case ARES_ECONNREFUSED:
                return "connection refused";
        default:
                return ares_strerror(status);
        }
}

static double rnd(struct dns *d)
{
        return (double)rand_r(&d->rand_state) / ((double)RAND_MAX + 1.0);
}

static int ep_cmp(const void *a, const void *b)
{
        return memcmp(a, b, sizeof(struct disc_endpoint_spec));
}

static void publish(struct dns *d);

static void count_failure(struct dns_name *n, int status)
{
        n->nxdomain += status == ARES_ENOTFOUND;
        n->nodata += status == ARES_ENODATA;
        n->servfail += status == ARES_ESERVFAIL;
        n->timeouts += status == ARES_ETIMEOUT;
}

static void round_failed(struct dns_name *n, const char *why)
{
        struct dns *d = n->d;
        const struct disc_service_spec *s = &d->specs.svcs[n->idx];
        n->errors++;
        if (n->failures++ == 0)
                d->n_failing++;
        uint32_t delay = consul_backoff_ms(n->failures, rnd(d));
        snprintf(n->last_error, sizeof(n->last_error), "%s %s (service %s/%s): %s", rr_names[n->rr],
                 n->host, s->ns, s->name, why);
        snprintf(d->last_error, sizeof(d->last_error), "%s", n->last_error);
        log_warn(COMP, 0, "%s; %s (retry %u in %ums)", n->last_error,
                 n->resolved ? "keeping its last endpoints, stale" : "no endpoints yet",
                 n->failures, delay);
        disc_source_sync_failed(d->reg, d->src, n->last_error);
        disc_registry_publish(d->reg);
        n->next_ms = loop_now_ms(d->loop) + delay;
        loop_timer_arm(d->loop, &n->timer, delay);
}

static void round_ok(struct dns_name *n)
{
        struct dns *d = n->d;
        const struct disc_service_spec *s = &d->specs.svcs[n->idx];
        qsort(n->acc, n->n_acc, sizeof(n->acc[0]), ep_cmp);
        bool changed = !n->resolved || n->n_acc != n->n_eps || n->srv_port_new != n->srv_port ||
                       (n->n_acc && memcmp(n->acc, n->eps, n->n_acc * sizeof(n->acc[0])) != 0);
        if (n->failures) {
                log_info(COMP, 0, "%s %s (service %s/%s): resolved again after %u failures",
                         rr_names[n->rr], n->host, s->ns, s->name, n->failures);
                n->failures = 0;
                d->n_failing--;
        }
        if (n->skipped)
                log_warn(COMP, 0,
                         "%s %s (service %s/%s): %u records or addresses left out (over %d "
                         "targets or %d endpoints, or another SRV port than %u)",
                         rr_names[n->rr], n->host, s->ns, s->name, n->skipped, DNS_MAX_TARGETS,
                         DNS_MAX_ADDRS, n->srv_port_new);
        uint64_t ttl_ms = n->ttl < 0 ? 0 : (uint64_t)n->ttl * 1000;
        n->ttl_s = n->ttl < 0 ? 0 : (uint32_t)n->ttl;
        if (ttl_ms < d->min_ttl_ms)
                ttl_ms = d->min_ttl_ms;
        if (ttl_ms > d->max_ttl_ms)
                ttl_ms = d->max_ttl_ms;
        if (changed) {
                struct disc_endpoint_spec *t = n->eps;
                uint32_t cap = n->cap_eps;
                n->eps = n->acc;
                n->cap_eps = n->cap_acc;
                n->n_eps = n->n_acc;
                n->acc = t;
                n->cap_acc = cap;
                n->n_acc = 0;
                n->srv_port = n->srv_port_new;
                n->changes++;
                log_info(COMP, 0, "%s %s (service %s/%s): %u endpoints, TTL %us (next in %llums)",
                         rr_names[n->rr], n->host, s->ns, s->name, n->n_eps, n->ttl_s,
                         (unsigned long long)ttl_ms);
        }
        n->resolved = true;
        n->last_error[0] = '\0';
        if (d->n_failing == 0) {
                d->syncs++;
                disc_source_sync_ok(d->reg, d->src);
        }
        if (changed)
                publish(d);
        else
                disc_registry_publish(d->reg); /* (staleness may have ended) */
        n->next_ms = loop_now_ms(d->loop) + ttl_ms;
        loop_timer_arm(d->loop, &n->timer, ttl_ms);
}

/* Every query of the round has answered: judge it. */
static void round_end(struct dns_name *n)
{
        n->busy = false;
        char why[DISC_ERROR_MAX];
        if (n->srv_status) {
                count_failure(n, n->srv_status);
                round_failed(n, status_text(n->srv_status));
                return;
        }
        for (uint32_t g = 0; g < n->n_groups; g++) {
                const struct dns_group *gr = &n->groups[g];
                int st = gr->hard ? gr->hard : gr->naddrs ? 0 : gr->soft ? gr->soft : ARES_ENODATA;
                if (!st)
                        continue;
                count_failure(n, st);
                if (n->rr == DNS_RR_SRV)
                        snprintf(why, sizeof(why), "SRV target %s: %s", gr->host, status_text(st));
                else
                        snprintf(why, sizeof(why), "%s", status_text(st));
                round_failed(n, why);
                return;
        }
        round_ok(n);
}

static bool current(const struct dns_lookup *lk)
{
        return lk->n->busy && lk->round == lk->n->round;
}

static void lookup_done(struct dns_name *n)
{
        if (--n->pending == 0)
                round_end(n);
}

static void see_ttl(struct dns_name *n, long ttl)
{
        if (ttl >= 0 && (n->ttl < 0 || ttl < n->ttl))
                n->ttl = ttl;
}

static void add_endpoint(struct dns_name *n, const struct dns_group *gr, int family,
                         const void *addr)
{
        const struct disc_service_spec *s = &n->d->specs.svcs[n->idx];
        for (uint32_t p = 0; p < (gr->port ? 1 : s->n_ports); p++) {
                struct disc_endpoint_spec e;
                memset(&e, 0, sizeof(e));
                e.addr.family = (uint8_t)family;
                memcpy(e.addr.addr, addr, family == AF_INET ? 4 : 16);
                e.addr.port = gr->port ? gr->port : s->ports[p].target_port;
                e.weight = gr->weight ? gr->weight : DISC_DEFAULT_WEIGHT;
                e.health = DISC_HEALTH_UNKNOWN;
                snprintf(e.zone, sizeof(e.zone), "%s", n->zone);
                snprintf(e.region, sizeof(e.region), "%s", n->region);
                bool dup = false;
                for (uint32_t k = 0; k < n->n_acc && !dup; k++)
                        dup = memcmp(&n->acc[k].addr, &e.addr, sizeof(e.addr)) == 0;
                if (dup)
                        continue;
                if (n->n_acc == n->cap_acc) {
                        uint32_t cap = n->cap_acc ? 2 * n->cap_acc : 8;
                        void *grown =
                            n->cap_acc < DNS_MAX_ADDRS
                                ? realloc(n->acc, (cap > DNS_MAX_ADDRS ? DNS_MAX_ADDRS : cap) *
                                                      sizeof(*n->acc))
                                : NULL;
                        if (!grown) {
                                n->skipped++;
                                continue;
                        }
                        n->acc = grown;
                        n->cap_acc = cap > DNS_MAX_ADDRS ? DNS_MAX_ADDRS : cap;
                }
                n->acc[n->n_acc++] = e;
        }
}

/* The lookup an answer belongs to, or NULL when it is for a round that is
 * over, or c-ares is going away. */
static struct dns_lookup *answer_for(void *arg, int status)
{
        struct dns_lookup *lk = arg;
        if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || !current(lk))
                return NULL;
        return lk;
}

static void addr_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
        (void)timeouts;
        struct dns_lookup *lk = answer_for(arg, status);
        if (!lk)
                return;
        struct dns_name *n = lk->n;
        struct dns_group *gr = &n->groups[lk->group];
        gr->pending--;
        if (status == ARES_SUCCESS) {
                if (lk->family == AF_INET) {
                        struct ares_addrttl t[DNS_MAX_ADDRS];
                        int cnt = DNS_MAX_ADDRS;
                        status = ares_parse_a_reply(abuf, alen, NULL, t, &cnt);
                        for (int i = 0; status == ARES_SUCCESS && i < cnt; i++) {
                                see_ttl(n, t[i].ttl);
                                add_endpoint(n, gr, AF_INET, &t[i].ipaddr);
                                gr->naddrs++;
                        }
                } else {
                        struct ares_addr6ttl t[DNS_MAX_ADDRS];
                        int cnt = DNS_MAX_ADDRS;
                        status = ares_parse_aaaa_reply(abuf, alen, NULL, t, &cnt);
                        for (int i = 0; status == ARES_SUCCESS && i < cnt; i++) {
                                see_ttl(n, t[i].ttl);
                                add_endpoint(n, gr, AF_INET6, &t[i].ip6addr);
                                gr->naddrs++;
                        }
                }
        }
        if (status == ARES_ENOTFOUND || status == ARES_ENODATA)
                gr->soft = status;
        else if (status != ARES_SUCCESS)
                gr->hard = status;
        lookup_done(n);
}

static void issue(struct dns_name *n, const char *host, int type, uint32_t group, int family,
                  ares_callback cb)
{
        struct dns_lookup *lk = &n->lk[n->n_lk++];
        lk->n = n;
        lk->round = n->round;
        lk->group = group;
        lk->family = family;
        n->pending++;
        n->lookups++;
        ares_query(n->d->ch, host, RR_CLASS_IN, type, cb, lk);
}

static void query_addrs(struct dns_name *n, uint32_t g, int family)
{
        n->groups[g].pending++;
        issue(n, n->groups[g].host, family == AF_INET ? RR_TYPE_A : RR_TYPE_AAAA, g, family,
              addr_cb);
}

static void srv_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
        (void)timeouts;
        struct dns_lookup *lk = answer_for(arg, status);
        if (!lk)
                return;
        struct dns_name *n = lk->n;
        struct ares_srv_reply *srv = NULL;
        if (status == ARES_SUCCESS)
                status = ares_parse_srv_reply(abuf, alen, &srv);
        if (status == ARES_SUCCESS && !srv)
                status = ARES_ENODATA;
        if (status != ARES_SUCCESS) {
                n->srv_status = status;
                ares_free_data(srv);
                lookup_done(n);
                return;
        }
        see_ttl(n, disc_dns_min_ttl(abuf, alen, RR_TYPE_SRV));
        /* the lowest priority value, then its most common port */
        unsigned prio = 65536;
        for (const struct ares_srv_reply *r = srv; r; r = r->next)
                if (r->priority < prio)
                        prio = r->priority;
        uint16_t ports[DNS_MAX_TARGETS];
        uint32_t counts[DNS_MAX_TARGETS], n_ports = 0;
        for (const struct ares_srv_reply *r = srv; r; r = r->next) {
                if (r->priority != prio || r->port == 0)
                        continue;
                uint32_t k;
                for (k = 0; k < n_ports && ports[k] != r->port; k++)
                        ;
                if (k == n_ports) {
                        if (n_ports == DNS_MAX_TARGETS)
                                continue;
                        ports[n_ports] = r->port;
                        counts[n_ports++] = 0;
                }
                counts[k]++;
        }
        uint32_t best = 0;
        for (uint32_t k = 1; k < n_ports; k++)
                if (counts[k] > counts[best] ||
                    (counts[k] == counts[best] && ports[k] < ports[best]))
                        best = k;
        n->srv_port_new = n_ports ? ports[best] : 0;
        n->n_groups = 0;
        for (const struct ares_srv_reply *r = srv; r; r = r->next) {
                if (r->priority != prio)
                        continue;
                if (r->port != n->srv_port_new || n->n_groups == DNS_MAX_TARGETS ||
                    strlen(r->host) >= DNS_HOST_MAX || !r->host[0] || strcmp(r->host, ".") == 0) {
                        n->skipped++;
                        continue;
                }
                struct dns_group *g = &n->groups[n->n_groups++];
                memset(g, 0, sizeof(*g));
                snprintf(g->host, sizeof(g->host), "%s", r->host);
                g->port = r->port;
                g->weight = r->weight ? r->weight : 1;
                if (g->weight > DISC_WEIGHT_MAX)
                        g->weight = DISC_WEIGHT_MAX;
        }
        ares_free_data(srv);
        if (n->n_groups == 0)
                n->srv_status = ARES_ENODATA;
        for (uint32_t g = 0; g < n->n_groups; g++) {
                query_addrs(n, g, AF_INET);
                query_addrs(n, g, AF_INET6);
        }
        lookup_done(n);
}

static void name_start(struct dns_name *n)
{
        struct dns *d = n->d;
        if (n->busy)
                return;
        n->busy = true;
        n->round++;
        n->pending = 1; /* held until every query is issued */
        n->srv_status = 0;
        n->ttl = -1;
        n->n_lk = 0;
        n->n_acc = 0;
        n->skipped = 0;
        n->srv_port_new = 0;
        if (n->rr == DNS_RR_SRV) {
                issue(n, n->host, RR_TYPE_SRV, UINT32_MAX, 0, srv_cb);
        } else {
                n->n_groups = 1;
                memset(&n->groups[0], 0, sizeof(n->groups[0]));
                snprintf(n->groups[0].host, sizeof(n->groups[0].host), "%s", n->host);
                if (n->rr != DNS_RR_AAAA)
                        query_addrs(n, 0, AF_INET);
                if (n->rr != DNS_RR_A)
                        query_addrs(n, 0, AF_INET6);
        }
        lookup_done(n);
        ares_rearm(d);
}

static void name_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        name_start(t->data);
}

/* ---- feeding the registry ------------------------------------------------- */

/* The service as published: its spec with the name's endpoints. */
static void spec_of(const struct dns *d, uint32_t i, struct disc_service_spec *out)
{
        const struct dns_name *n = &d->names[i];
        *out = d->specs.svcs[i];
        if (n->rr == DNS_RR_SRV && n->srv_port)
                out->ports[0].target_port = n->srv_port;
        out->endpoints = (struct disc_endpoint_spec *)(uintptr_t)n->eps;
        out->n_endpoints = n->n_eps;
}

static void apply_fallback(struct dns *d, uint32_t i)
{
        struct disc_service_spec s;
        spec_of(d, i, &s);
        int rc =
            disc_registry_set_endpoints(d->reg, d->src, s.ns, s.name, s.endpoints, s.n_endpoints);
        if (rc == -ENOENT) /* the registry does not have it: DNS defines it */
                rc = disc_registry_upsert_service(d->reg, d->src, &s, true);
        if (rc < 0)
                log_warn(COMP, 0, "service %s/%s: DNS endpoints not applied: %s", s.ns, s.name,
                         strerror(-rc));
}

static void publish(struct dns *d)
{
        if (d->fallback) {
                if (!d->active)
                        return;
                for (uint32_t i = 0; i < d->n_names; i++)
                        apply_fallback(d, i);
                disc_registry_publish(d->reg);
                return;
        }
        struct disc_service_spec *tmp = calloc(d->n_names ? d->n_names : 1, sizeof(*tmp));
        if (!tmp) {
                log_error(COMP, 0, "out of memory publishing the DNS registry");
                return;
        }
        for (uint32_t i = 0; i < d->n_names; i++)
                spec_of(d, i, &tmp[i]);
        int rc = disc_registry_replace(d->reg, d->src, tmp, d->n_names);
        free(tmp);
        if (rc < 0)
                log_error(COMP, 0, "the DNS registry was refused (%s): the last one stays",
                          strerror(-rc));
        disc_registry_publish(d->reg);
}

static void fallback_withdraw(struct dns *d)
{
        for (uint32_t i = 0; i < d->n_names; i++) {
                const struct disc_service_spec *s = &d->specs.svcs[i];
                disc_registry_set_endpoints(d->reg, d->src, s->ns, s->name, NULL, 0);
                disc_registry_remove_service(d->reg, d->src, s->ns, s->name);
        }
        disc_registry_publish(d->reg);
}

static void fallback_check(struct loop *loop, struct loop_timer *t)
{
        struct dns *d = t->data;
        uint64_t now = loop_now_ms(loop);
        int failing = -1;
        uint64_t longest = 0;
        for (int s = 0; s < DISC_MAX_SOURCES; s++) {
                if (s == d->src || !disc_source_stale(d->reg, s)) {
                        d->fail_seen_ms[s] = 0;
                        continue;
                }
                if (!d->fail_seen_ms[s])
                        d->fail_seen_ms[s] = now;
                if (now - d->fail_seen_ms[s] >= longest) {
                        longest = now - d->fail_seen_ms[s];
                        failing = s;
                }
        }
        bool want = failing >= 0 && longest >= d->after_ms;
        if (want && !d->active) {
                d->active = true;
                d->activations++;
                log_warn(COMP, 0,
                         "a discovery source has been failing for %llums: DNS endpoints of %u "
                         "services added (service_discovery.dns.fallback)",
                         (unsigned long long)longest, d->n_names);
                publish(d);
        } else if (!want && d->active && failing < 0) {
                d->active = false;
                log_info(COMP, 0, "every discovery source syncs again: DNS endpoints withdrawn");
                fallback_withdraw(d);
        }
        loop_timer_arm(loop, t, DNS_FALLBACK_CHECK_MS);
}

/* ---- configuration -------------------------------------------------------- */

static bool hostname_ok(const char *s)
{
        size_t len = strlen(s), label = 0;
        if (len == 0 || len > 254 || (len == 254 && s[253] != '.') || s[0] == '.')
                return false;
        for (const char *p = s; *p; p++) {
                if (*p == '.') {
                        if (label == 0)
                                return false;
                        label = 0;
                        continue;
                }
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
                        return false;
                if (++label > 63)
                        return false;
        }
        return true;
}

static int want_str(const cJSON *o, const char *key, char *out, size_t cap, bool required,
                    char *why, size_t whylen)
{
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!x) {
                if (required)
                        snprintf(why, whylen, "missing key '%s'", key);
                return required ? -EINVAL : 0;
        }
        if (!cJSON_IsString(x) || strlen(x->valuestring) >= cap) {
                snprintf(why, whylen, "%s: expected a string of at most %zu bytes", key, cap - 1);
                return -EINVAL;
        }
        snprintf(out, cap, "%s", x->valuestring);
        return 0;
}

static int parse_dns(void *ctx, size_t i, const cJSON *x, const cJSON *svc,
                     struct disc_service_spec *s, char *why, size_t whylen)
{
        struct dns *d = ctx;
        static const char *const keys[] = {"name", "type", "zone", "region", NULL};
        if (!cJSON_IsObject(x)) {
                snprintf(why, whylen, "expected an object {\"name\", \"type\"}");
                return -EINVAL;
        }
        for (const cJSON *c = x->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *k = keys; *k; k++)
                        ok |= strcmp(*k, c->string) == 0;
                if (!ok) {
                        snprintf(why, whylen, "%s: unknown key (allowed: name, type, zone, region)",
                                 c->string);
                        return -EINVAL;
                }
        }
        if (i >= DNS_MAX_SERVICES) {
                snprintf(why, whylen, "more than %d services", DNS_MAX_SERVICES);
                return -EINVAL;
        }
        if (cJSON_GetObjectItemCaseSensitive(svc, "endpoints")) {
                snprintf(why, whylen,
                         "a service with \"dns\" takes its endpoints from DNS: "
                         "remove \"endpoints\"");
                return -EINVAL;
        }
        struct dns_name *n = &d->names[i];
        memset(n, 0, sizeof(*n));
        char type[16] = "A";
        if (want_str(x, "name", n->host, sizeof(n->host), true, why, whylen) ||
            want_str(x, "type", type, sizeof(type), false, why, whylen) ||
            want_str(x, "zone", n->zone, sizeof(n->zone), false, why, whylen) ||
            want_str(x, "region", n->region, sizeof(n->region), false, why, whylen))
                return -EINVAL;
        if (!hostname_ok(n->host)) {
                snprintf(why, whylen,
                         "name: '%.80s' is not a DNS name (labels of 1-63 of a-z, "
                         "0-9, '-', '_', at most 253 bytes)",
                         n->host);
                return -EINVAL;
        }
        int rr = -1;
        for (int k = 0; k < 4; k++)
                if (strcmp(type, rr_names[k]) == 0)
                        rr = k;
        if (rr < 0) {
                snprintf(why, whylen, "type: '%s' is not A, AAAA, A+AAAA or SRV", type);
                return -EINVAL;
        }
        n->rr = (enum dns_rr)rr;
        if (n->rr == DNS_RR_SRV) {
                const cJSON *ports = cJSON_GetObjectItemCaseSensitive(svc, "ports");
                if (s->n_ports != 1 ||
                    cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(ports, 0), "target_port")) {
                        snprintf(why, whylen,
                                 "type SRV: the service has exactly one port, without "
                                 "target_port (the SRV records give it)");
                        return -EINVAL;
                }
        }
        n->d = d;
        n->idx = (uint32_t)i;
        return 0;
}

static int dns_load(struct dns *d, const struct shunt_config *cfg, char *err, size_t errlen)
{
        const char *text = cfg->dns_services;
        cJSON *arr = text ? cJSON_Parse(text) : NULL;
        int count = cJSON_GetArraySize(arr);
        cJSON_Delete(arr);
        if (count < 1) {
                snprintf(err, errlen,
                         "config: service_discovery.dns.services: %s (at least one service with "
                         "\"dns\": {\"name\", \"type\"})",
                         text ? "empty" : "not set");
                return -EINVAL;
        }
        if (count > DNS_MAX_SERVICES) {
                snprintf(err, errlen,
                         "config: service_discovery.dns.services: %d services, at "
                         "most %d",
                         count, DNS_MAX_SERVICES);
                return -EINVAL;
        }
        d->names = calloc((size_t)count, sizeof(*d->names));
        size_t len = strlen(text);
        char *wrapped = malloc(len + 16);
        if (!d->names || !wrapped) {
                free(wrapped);
                snprintf(err, errlen, "discovery: out of memory");
                return -ENOMEM;
        }
        snprintf(wrapped, len + 16, "{\"services\":%s}", text);
        const struct disc_file_ext ext = {
            .key = "dns", .required = true, .parse = parse_dns, .ctx = d};
        int rc = disc_file_parse_ext("config: service_discovery.dns", wrapped, strlen(wrapped),
                                     &ext, &d->specs, err, errlen);
        free(wrapped);
        if (rc < 0)
                return rc;
        d->n_names = (uint32_t)d->specs.n;
        for (uint32_t i = 0; i < d->n_names; i++)
                loop_timer_init(&d->names[i].timer, name_timer, &d->names[i]);
        return 0;
}

static void dns_destroy(void *impl);

static struct dns *dns_create(struct disc_registry *r, const struct shunt_config *cfg,
                              bool fallback, char *err, size_t errlen)
{
        struct dns *d = calloc(1, sizeof(*d));
        if (!d) {
                snprintf(err, errlen, "discovery: out of memory");
                return NULL;
        }
        d->reg = r;
        d->src = -1;
        d->fallback = fallback;
        d->after_ms = cfg->dns_fallback_after_ms;
        d->min_ttl_ms = cfg->dns_min_ttl_ms;
        d->max_ttl_ms = cfg->dns_max_ttl_ms;
        d->timeout_ms = cfg->dns_timeout_ms;
        d->attempts = cfg->dns_attempts;
        d->mark = config_socket_mark(cfg);
        d->rand_state = (unsigned)clock_mono_ms() ^ (unsigned)getpid();
        snprintf(d->servers, sizeof(d->servers), "%s", cfg->dns_servers);
        loop_timer_init(&d->ares_timer, ares_timer_cb, d);
        loop_timer_init(&d->fb_timer, fallback_check, d);
        if (dns_load(d, cfg, err, errlen) < 0)
                goto fail;
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
                snprintf(err, errlen, "discovery: dns: c-ares: %s", ares_strerror(rc));
                goto fail;
        }
        struct ares_options o;
        memset(&o, 0, sizeof(o));
        o.sock_state_cb = sock_state_cb;
        o.sock_state_cb_data = d;
        o.timeout = (int)d->timeout_ms;
        o.tries = (int)d->attempts;
        rc = ares_init_options(&d->ch, &o,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
        if (rc != ARES_SUCCESS) {
                ares_library_cleanup();
                snprintf(err, errlen, "discovery: dns: c-ares: %s", ares_strerror(rc));
                goto fail;
        }
        d->ch_ok = true;
        ares_set_socket_configure_callback(d->ch, sock_config_cb, d);
        if (d->servers[0]) {
                rc = ares_set_servers_ports_csv(d->ch, d->servers);
                if (rc != ARES_SUCCESS) {
                        snprintf(err, errlen,
                                 "config: service_discovery.dns.servers: '%.100s': not a list of "
                                 "ip, ip:port or [ipv6]:port (%s)",
                                 d->servers, ares_strerror(rc));
                        goto fail;
                }
        }
        d->src = disc_source_add(r, "dns", DISC_SOURCE_DNS);
        if (d->src < 0) {
                snprintf(err, errlen, "discovery: cannot add the dns source: %s",
                         strerror(-d->src));
                goto fail;
        }
        return d;
fail:
        dns_destroy(d);
        return NULL;
}

static int create(struct disc_registry *r, const struct shunt_config *cfg, void **impl, char *err,
                  size_t errlen)
{
        if (cfg->dns_fallback) {
                snprintf(err, errlen,
                         "config: service_discovery.dns.fallback: on: the fallback of type dns "
                         "would be itself (allowed with file, kubernetes or consul)");
                return -EINVAL;
        }
        struct dns *d = dns_create(r, cfg, false, err, errlen);
        if (!d)
                return -EINVAL;
        *impl = d;
        return 0;
}

void *disc_dns_fallback_new(struct disc_registry *r, const struct shunt_config *cfg, char *err,
                            size_t errlen)
{
        err[0] = '\0';
        if (!cfg->dns_fallback) {
                if (cfg->dns_services)
                        snprintf(err, errlen,
                                 "config: service_discovery.dns.services: set, but used only with "
                                 "service_discovery.type dns or service_discovery.dns.fallback on");
                return NULL;
        }
        return dns_create(r, cfg, true, err, errlen);
}

static int start(void *impl, struct loop *loop, char *err, size_t errlen)
{
        (void)err;
        (void)errlen;
        struct dns *d = impl;
        d->loop = loop;
        log_info(COMP, 0, "resolving %u services through %s%s", d->n_names,
                 d->servers[0] ? d->servers : "the servers of /etc/resolv.conf",
                 d->fallback ? " (fallback of the other discovery sources)" : "");
        if (!d->fallback)
                publish(d); /* the services, without endpoints until resolved */
        else
                loop_timer_arm(loop, &d->fb_timer, DNS_FALLBACK_CHECK_MS);
        /* an unreachable server does not fail start-up: lookups retry */
        for (uint32_t i = 0; i < d->n_names; i++)
                name_start(&d->names[i]);
        return 0;
}

static void render(const void *impl, struct strbuf *sb)
{
        const struct dns *d = impl;
        uint64_t now = d->loop ? loop_now_ms(d->loop) : 0;
        strbuf_append(sb, "{\"servers\":");
        strbuf_append_json_string(sb, d->servers[0] ? d->servers : "/etc/resolv.conf");
        strbuf_appendf(sb,
                       ",\"min_ttl_ms\":%u,\"max_ttl_ms\":%u,\"timeout_ms\":%u,\"attempts\":%u,"
                       "\"fallback\":%s,\"fallback_active\":%s,\"fallback_activations\":%llu,"
                       "\"stale\":%s,\"syncs\":%llu,\"last_error\":",
                       d->min_ttl_ms, d->max_ttl_ms, d->timeout_ms, d->attempts,
                       d->fallback ? "true" : "false", d->active ? "true" : "false",
                       (unsigned long long)d->activations, d->n_failing ? "true" : "false",
                       (unsigned long long)d->syncs);
        if (d->last_error[0])
                strbuf_append_json_string(sb, d->last_error);
        else
                strbuf_append(sb, "null");
        strbuf_append(sb, ",\"names\":[");
        for (uint32_t i = 0; i < d->n_names; i++) {
                const struct dns_name *n = &d->names[i];
                const struct disc_service_spec *s = &d->specs.svcs[i];
                strbuf_append(sb, i ? ",{\"service\":" : "{\"service\":");
                char svc[2 * DISC_NAME_MAX + 2];
                snprintf(svc, sizeof(svc), "%s/%s", s->ns, s->name);
                strbuf_append_json_string(sb, svc);
                strbuf_append(sb, ",\"name\":");
                strbuf_append_json_string(sb, n->host);
                strbuf_appendf(
                    sb,
                    ",\"type\":\"%s\",\"endpoints\":%u,\"resolved\":%s,\"ttl_s\":%u,"
                    "\"next_in_ms\":%lld,\"failures\":%u,\"lookups\":%llu,\"errors\":%llu,"
                    "\"changes\":%llu,\"nxdomain\":%llu,\"nodata\":%llu,\"servfail\":%llu,"
                    "\"timeouts\":%llu,\"in_flight\":%s,\"last_error\":",
                    rr_names[n->rr], n->n_eps, n->resolved ? "true" : "false", n->ttl_s,
                    n->busy ? 0LL : (long long)n->next_ms - (long long)now, n->failures,
                    (unsigned long long)n->lookups, (unsigned long long)n->errors,
                    (unsigned long long)n->changes, (unsigned long long)n->nxdomain,
                    (unsigned long long)n->nodata, (unsigned long long)n->servfail,
                    (unsigned long long)n->timeouts, n->busy ? "true" : "false");
                if (n->last_error[0])
                        strbuf_append_json_string(sb, n->last_error);
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
}

static void dns_destroy(void *impl)
{
        struct dns *d = impl;
        if (!d)
                return;
        d->destroying = true;
        for (uint32_t i = 0; d->names && i < d->n_names; i++) {
                if (d->loop)
                        loop_timer_cancel(d->loop, &d->names[i].timer);
                d->names[i].busy = false;
        }
        if (d->loop) {
                loop_timer_cancel(d->loop, &d->ares_timer);
                loop_timer_cancel(d->loop, &d->fb_timer);
        }
        if (d->ch_ok) {
                ares_destroy(d->ch); /* closes its sockets through sock_state_cb */
                ares_library_cleanup();
        }
        while (d->ios) {
                struct dns_io *n = d->ios->next;
                if (d->loop)
                        loop_io_del(d->loop, &d->ios->io);
                free(d->ios);
                d->ios = n;
        }
        disc_specs_free(&d->specs);
        for (uint32_t i = 0; d->names && i < d->n_names; i++) {
                free(d->names[i].acc);
                free(d->names[i].eps);
        }
        free(d->names);
        free(d);
}

const struct disc_backend_ops disc_dns_ops = {
    .type = "dns",
    .create = create,
    .start = start,
    .render = render,
    .destroy = dns_destroy,
};

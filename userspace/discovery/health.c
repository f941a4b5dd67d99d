// SPDX-License-Identifier: Apache-2.0
/* Active health checks driven from the main loop (see health.h). */
#include "discovery/health.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "http/client.h"

#define COMP "health"

struct target {
        uint32_t slot, gen;
        uint32_t svc; /* index in h->snap */
        struct disc_addr addr;
        uint64_t next_due_ms;
        bool in_flight;
};

enum probe_state { P_CONNECTING, P_WRITING, P_READING };

struct probe {
        struct loop_io io;
        struct loop_timer timer;
        struct disc_checker *h;
        struct probe *prev, *next;
        uint32_t slot, gen;
        enum disc_hc_type type;
        enum probe_state state;
        bool dead; /* freed (deferred): a later event of the same batch is ignored */
        char req[DISC_HC_PATH_MAX + DISC_NAME_MAX + 128];
        size_t req_len, req_off;
        struct http_reader resp; /* the status line and headers, at most DISC_HEALTH_RESP_MAX */
        char where[80];          /* "10.0.0.1:8080 of default/web" for logs */
};

struct disc_checker {
        struct disc_registry *reg;
        struct loop *loop;
        uint32_t mark;
        struct loop_timer scan;
        const struct disc_snapshot *snap; /* held: targets point into it */
        uint64_t version;
        struct target *targets; /* sorted by (slot, gen) */
        uint32_t n_targets;
        struct probe *probes; /* in flight */
        bool dirty;           /* results since the last publish */
        uint64_t last_shed_log_ms;
        uint64_t shed_since_log;
        struct disc_health_stats st;
};

static int target_cmp(const void *a, const void *b)
{
        const struct target *x = a, *y = b;
        if (x->slot != y->slot)
                return x->slot < y->slot ? -1 : 1;
        if (x->gen != y->gen)
                return x->gen < y->gen ? -1 : 1;
        return 0;
}

static struct target *target_find(struct disc_checker *h, uint32_t slot, uint32_t gen)
{
        struct target key = {.slot = slot, .gen = gen};
        if (!h->n_targets)
                return NULL;
        return bsearch(&key, h->targets, h->n_targets, sizeof(key), target_cmp);
}

/* Rebuilds the target list from snapshot s (taking over the reference),
 * keeping the schedule of endpoints that stay. */
static void rebuild(struct disc_checker *h, const struct disc_snapshot *s, uint64_t now)
{
        uint32_t n = 0;
        uint32_t ns = disc_snapshot_n_services(s);
        for (uint32_t i = 0; i < ns; i++) {
                const struct disc_service *svc = disc_snapshot_service(s, i);
                if (svc->hc.type == DISC_HC_TCP || svc->hc.type == DISC_HC_HTTP)
                        n += svc->n_endpoints;
        }
        if (n > DISC_HEALTH_MAX_TARGETS) {
                log_warn(COMP, 0, "%u endpoints have health checks: only the first %u are checked",
                         n, DISC_HEALTH_MAX_TARGETS);
                n = DISC_HEALTH_MAX_TARGETS;
        }
        struct target *t = n ? calloc(n, sizeof(*t)) : NULL;
        if (n && !t) {
                log_error(COMP, 0,
                          "out of memory for %u health check targets; keeping the old list", n);
                disc_snapshot_release(s);
                return;
        }
        uint32_t k = 0;
        for (uint32_t i = 0; i < ns && k < n; i++) {
                const struct disc_service *svc = disc_snapshot_service(s, i);
                if (svc->hc.type != DISC_HC_TCP && svc->hc.type != DISC_HC_HTTP)
                        continue;
                for (uint32_t e = 0; e < svc->n_endpoints && k < n; e++) {
                        const struct disc_endpoint *ep = &svc->endpoints[e];
                        struct target *x = &t[k++];
                        x->slot = ep->slot;
                        x->gen = ep->slot_gen;
                        x->svc = i;
                        x->addr = ep->addr;
                        if (svc->hc.port)
                                x->addr.port = svc->hc.port;
                        x->next_due_ms = now;
                }
        }
        if (k)
                qsort(t, k, sizeof(*t), target_cmp);
        for (uint32_t i = 0; i < k; i++) {
                struct target *old = target_find(h, t[i].slot, t[i].gen);
                if (old) {
                        t[i].next_due_ms = old->next_due_ms;
                        t[i].in_flight = old->in_flight;
                }
        }
        free(h->targets);
        h->targets = t;
        h->n_targets = k;
        h->st.targets = k;
        if (h->snap)
                disc_snapshot_release(h->snap);
        h->snap = s;
        h->version = disc_snapshot_version(s);
}

static void probe_free(struct probe *p, bool deferred)
{
        struct disc_checker *h = p->h;
        p->dead = true;
        if (p->io.fd >= 0) {
                if (p->io.events)
                        loop_io_del(h->loop, &p->io);
                close(p->io.fd);
                p->io.fd = -1;
        }
        loop_timer_cancel(h->loop, &p->timer);
        if (p->prev)
                p->prev->next = p->next;
        else
                h->probes = p->next;
        if (p->next)
                p->next->prev = p->prev;
        h->st.in_flight--;
        http_reader_free(&p->resp);
        if (deferred)
                loop_defer_free(h->loop, p);
        else
                free(p);
}

static void probe_done(struct probe *p, bool ok, const char *why)
{
        struct disc_checker *h = p->h;
        if (ok) {
                h->st.passed++;
                log_debug(COMP, 0, "check of %s passed", p->where);
        } else {
                h->st.failed++;
                log_debug(COMP, 0, "check of %s failed: %s", p->where, why);
        }
        struct target *t = target_find(h, p->slot, p->gen);
        if (t)
                t->in_flight = false;
        disc_registry_active_result(h->reg, p->slot, p->gen, ok);
        h->dirty = true;
        probe_free(p, true);
}

static void probe_timeout(struct loop *loop, struct loop_timer *tm)
{
        (void)loop;
        probe_done(tm->data, false, "timed out");
}

static void probe_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct probe *p = io->data;
        (void)loop;
        if (p->dead)
                return;
        if (p->state == P_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof(err);
                if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                if (err) {
                        probe_done(p, false, strerror(err));
                        return;
                }
                if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                        return;
                if (p->type == DISC_HC_TCP) {
                        probe_done(p, true, NULL);
                        return;
                }
                p->state = P_WRITING;
        }
        if (p->state == P_WRITING) {
                while (p->req_off < p->req_len) {
                        ssize_t w = send(io->fd, p->req + p->req_off, p->req_len - p->req_off,
                                         MSG_NOSIGNAL);
                        if (w < 0) {
                                if (errno == EAGAIN || errno == EINTR)
                                        return;
                                probe_done(p, false, strerror(errno));
                                return;
                        }
                        p->req_off += (size_t)w;
                }
                p->state = P_READING;
                if (loop_io_mod(p->h->loop, io, EPOLLIN) < 0) {
                        probe_done(p, false, "epoll");
                        return;
                }
                return;
        }
        /* P_READING */
        for (;;) {
                char buf[1024];
                ssize_t r = recv(io->fd, buf, sizeof(buf), 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                        return;
                if (r < 0) {
                        probe_done(p, false, strerror(errno));
                        return;
                }
                int rc = r ? http_reader_feed(&p->resp, buf, (size_t)r) : http_reader_eof(&p->resp);
                if (rc == 0)
                        continue;
                if (rc < 0) {
                        probe_done(p, false, p->resp.why);
                        return;
                }
                int st = p->resp.head.status;
                probe_done(p, st >= 200 && st < 400, "status not 2xx/3xx");
                return;
        }
}

/* Starts the probe of t; returns false when it could not start for a local
 * reason (nothing reported). */
static bool probe_start(struct disc_checker *h, struct target *t)
{
        const struct disc_service *svc = disc_snapshot_service(h->snap, t->svc);
        struct probe *p = calloc(1, sizeof(*p));
        if (!p) {
                log_error(COMP, 0, "out of memory for a health probe");
                return false;
        }
        p->h = h;
        p->slot = t->slot;
        p->gen = t->gen;
        p->type = svc->hc.type;
        char ip[64];
        disc_addr_ip(&t->addr, ip, sizeof(ip));
        snprintf(p->where, sizeof(p->where), "%s%s%s:%u of %s/%s",
                 t->addr.family == AF_INET6 ? "[" : "", ip, t->addr.family == AF_INET6 ? "]" : "",
                 t->addr.port, svc->ns, svc->name);
        http_reader_init(&p->resp, HTTP1_M_GET, DISC_HEALTH_RESP_MAX, 0, true);
        if (p->type == DISC_HC_HTTP) {
                struct strbuf req;
                strbuf_init_static(&req, p->req, sizeof(p->req));
                int rc =
                    http_request_write(&req, "GET", svc->hc.path[0] ? svc->hc.path : "/", svc->name,
                                       "User-Agent: shunt-health\r\nAccept: */*\r\n", NULL, 0);
                if (rc < 0) {
                        log_warn(COMP, 0, "health check of %s: path %s: %s", p->where, svc->hc.path,
                                 strerror(-rc));
                        free(p);
                        return false;
                }
                p->req_len = req.len;
        }
        struct sockaddr_storage ss;
        disc_addr_to_sockaddr(&t->addr, &ss);
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                log_warn(COMP, 0, "health check of %s: socket: %s", p->where, strerror(errno));
                free(p);
                return false;
        }
        if (h->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &h->mark, sizeof(h->mark)) < 0)
                log_debug(COMP, 0, "SO_MARK 0x%x: %s", h->mark, strerror(errno));
        loop_io_init(&p->io, fd, probe_io, p);
        loop_timer_init(&p->timer, probe_timeout, p);
        p->next = h->probes;
        if (h->probes)
                h->probes->prev = p;
        h->probes = p;
        h->st.in_flight++;
        h->st.probes++;
        t->in_flight = true;
        socklen_t sl =
            ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
                probe_done(p, false, strerror(errno));
                return true;
        }
        p->state = P_CONNECTING;
        uint32_t tmo = svc->hc.timeout_ms ? svc->hc.timeout_ms : DISC_HC_DEFAULT_TIMEOUT_MS;
        if (loop_io_add(h->loop, &p->io, EPOLLOUT) < 0 ||
            loop_timer_arm(h->loop, &p->timer, tmo) < 0) {
                t->in_flight = false;
                h->st.probes--;
                probe_free(p, true);
                return false;
        }
        return true;
}

static void scan_cb(struct loop *loop, struct loop_timer *tm)
{
        struct disc_checker *h = tm->data;
        uint64_t now = loop_now_ms(loop);
        const struct disc_snapshot *s = disc_registry_acquire(h->reg);
        if (!h->snap || disc_snapshot_version(s) != h->version)
                rebuild(h, s, now);
        else
                disc_snapshot_release(s);

        uint64_t shed = 0;
        for (uint32_t i = 0; i < h->n_targets; i++) {
                struct target *t = &h->targets[i];
                if (t->in_flight || t->next_due_ms > now)
                        continue;
                if (h->st.in_flight >= DISC_HEALTH_MAX_INFLIGHT) {
                        shed++;
                        continue;
                }
                const struct disc_service *svc = disc_snapshot_service(h->snap, t->svc);
                uint32_t iv =
                    svc->hc.interval_ms ? svc->hc.interval_ms : DISC_HC_DEFAULT_INTERVAL_MS;
                t->next_due_ms = now + iv;
                probe_start(h, t); /* may fail for a local reason: retried next interval */
        }
        if (shed) {
                h->st.shed += shed;
                h->shed_since_log += shed;
                if (!h->last_shed_log_ms || now - h->last_shed_log_ms >= DISC_HEALTH_SHED_LOG_MS) {
                        log_warn(COMP, 0,
                                 "%llu due health checks postponed: %u probes in flight is the "
                                 "limit",
                                 (unsigned long long)h->shed_since_log, DISC_HEALTH_MAX_INFLIGHT);
                        h->last_shed_log_ms = now;
                        h->shed_since_log = 0;
                }
        }
        if (h->dirty) {
                h->dirty = false;
                disc_registry_publish(h->reg);
        }
        loop_timer_arm(loop, &h->scan, h->n_targets ? DISC_HEALTH_SCAN_MS : DISC_HEALTH_IDLE_MS);
}

struct disc_checker *disc_health_start(struct disc_registry *r, struct loop *loop, uint32_t mark)
{
        struct disc_checker *h = calloc(1, sizeof(*h));
        if (!h) {
                log_error(COMP, 0, "out of memory for the health checker");
                return NULL;
        }
        h->reg = r;
        h->loop = loop;
        h->mark = mark;
        loop_timer_init(&h->scan, scan_cb, h);
        if (loop_timer_arm(loop, &h->scan, 0) < 0) {
                log_error(COMP, 0, "cannot arm the health check timer");
                free(h);
                return NULL;
        }
        return h;
}

void disc_health_stop(struct disc_checker *h)
{
        if (!h)
                return;
        loop_timer_cancel(h->loop, &h->scan);
        while (h->probes)
                probe_free(h->probes, false);
        free(h->targets);
        if (h->snap)
                disc_snapshot_release(h->snap);
        free(h);
}

void disc_health_get_stats(const struct disc_checker *h, struct disc_health_stats *out)
{
        *out = h->st;
}

void disc_health_render(const struct disc_checker *h, struct strbuf *sb)
{
        strbuf_appendf(sb,
                       "{\"targets\":%u,\"in_flight\":%u,\"probes\":%llu,\"passed\":%llu,"
                       "\"failed\":%llu,\"shed\":%llu}",
                       h->st.targets, h->st.in_flight, (unsigned long long)h->st.probes,
                       (unsigned long long)h->st.passed, (unsigned long long)h->st.failed,
                       (unsigned long long)h->st.shed);
}

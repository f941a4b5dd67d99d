// SPDX-License-Identifier: Apache-2.0
/* Workers, listeners and reporting. See proxy.h. */
#include "proxy/proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "authz/authz.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/sockaddr.h"
#include "intercept/origdst.h"
#include "intercept/splice.h"
#include "proxy/h2proxy.h"
#include "proxy/handover.h"
#include "proxy/proxy-int.h"
#include "proxy/obs.h"
#include "proxy/reqmetrics.h"
#include "proxy/tap.h"

#define ACCEPT_BATCH   32
#define LISTEN_BACKLOG 4096
/* Descriptors per proxied connection (client and upstream), and those kept
 * for the rest: listeners, event loops, admin, discovery, health checks, the
 * idle upstream pool, HTTP/2 upstream sessions. */
#define FDS_PER_CONN          2
#define FD_RESERVE_BASE       64
#define FD_RESERVE_PER_WORKER 16
/* How long listeners rest when no descriptor is left. */
#define ACCEPT_PAUSE_MS 100

static void listeners_watch(struct worker *w, bool on)
{
        for (int i = 0; i < w->n_listeners; i++) {
                struct listener *l = &w->listeners[i];
                if (l->io.fd < 0)
                        continue;
                if (on)
                        loop_io_add(w->loop, &l->io, EPOLLIN);
                else
                        loop_io_del(w->loop, &l->io);
        }
}

static void on_accept_resume(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct worker *w = t->data;
        if (w->spare_fd < 0) /* could not be taken back last time */
                w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        listeners_watch(w, true);
}

/* accept() found no descriptor left (EMFILE/ENFILE). The listener is level
 * triggered: retrying at once would spin. The spare descriptor is given up
 * to take the oldest waiting connection and reset it (its client learns at
 * once instead of waiting in the backlog), then the listeners rest for
 * ACCEPT_PAUSE_MS. One log line a second at most. */
static void accept_exhausted(struct worker *w, struct listener *l, int err)
{
        if (w->spare_fd >= 0) {
                close(w->spare_fd);
                int fd = accept4(l->io.fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd >= 0)
                        relay_reject(w, fd, REASON_OVERLOAD);
                w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        listeners_watch(w, false);
        loop_timer_arm(w->loop, &w->accept_resume, ACCEPT_PAUSE_MS);
        stat_add(&w->stats, ST_ACCEPT_PAUSED, 1);
        uint64_t now = loop_now_ms(w->loop);
        if (now - w->fd_logged_ms >= 1000) {
                w->fd_logged_ms = now;
                log_error("proxy", 0,
                          "accept: %s: no descriptor left, new connections reset and listeners "
                          "paused for %d ms (shunt_accept_paused_total counts it; raise "
                          "RLIMIT_NOFILE or lower max_connections)",
                          strerror(err), ACCEPT_PAUSE_MS);
        }
}

static void on_accept(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        (void)events;
        struct listener *l = (struct listener *)io;
        struct worker *w = io->data;
        for (int i = 0; i < ACCEPT_BATCH; i++) {
                struct sockaddr_storage peer;
                socklen_t plen = sizeof(peer);
                int fd =
                    accept4(io->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EMFILE || errno == ENFILE)
                                accept_exhausted(w, l, errno);
                        return;
                }
                if (atomic_load_explicit(&w->proxy->refusing, memory_order_relaxed)) {
                        origdst_forget(fd);
                        relay_reject(w, fd, REASON_NOT_READY);
                        continue;
                }
                relay_accept(w, l, fd, &peer);
        }
}

/* Descriptors kept for everything but proxied connections. */
static uint64_t fd_reserve(int n_workers)
{
        return FD_RESERVE_BASE + (uint64_t)FD_RESERVE_PER_WORKER * (uint64_t)n_workers;
}

/* How many connections the descriptor limit leaves room for. */
static uint32_t fd_conn_limit(int n_workers)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return UINT32_MAX;
        uint64_t reserve = fd_reserve(n_workers);
        uint64_t fit = rl.rlim_cur > reserve ? (rl.rlim_cur - reserve) / FDS_PER_CONN : 0;
        return fit < 1 ? 1 : fit > UINT32_MAX ? UINT32_MAX : (uint32_t)fit;
}

/* At start and on reload: says so when max_connections asks for more; a
 * reload that keeps the value does not say it again. */
static void conn_limit_report(struct proxy *p, const struct shunt_config *cfg)
{
        if (cfg->max_connections <= p->fd_conn_limit ||
            cfg->max_connections == p->fd_limit_reported)
                return;
        p->fd_limit_reported = cfg->max_connections;
        log_warn(
            "proxy", 0,
            "max_connections %u needs more file descriptors than RLIMIT_NOFILE allows (%d per "
            "connection, %llu kept for listeners, event queues and pools): at most %u connections; "
            "raise the limit (ulimit -n, LimitNOFILE) for more",
            cfg->max_connections, FDS_PER_CONN, (unsigned long long)fd_reserve(p->n_workers),
            p->fd_conn_limit);
}

/* defer: bound now, listen() at proxy_start_accepting (a socket that
 * listens joins the port's SO_REUSEPORT group and gets a share of new
 * connections, which a takeover must not strand if it fails). */
static int listen_on(const struct proxy *p, struct listener *l, const struct sockaddr_storage *addr,
                     bool defer, char *err, size_t errlen)
{
        char abuf[SOCKADDR_STRLEN];
        int fd;
        if (!p->sock) {
                fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        } else if ((fd = p->sock(p->sock_ctx, addr->ss_family)) < 0) {
                errno = -fd;
                fd = -1;
        }
        if (fd < 0)
                goto fail;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
                goto fail;
        /* Inherited by every accepted socket: one setsockopt less per connection. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (addr->ss_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (const struct sockaddr *)addr, sockaddr_len(addr)) < 0)
                goto fail;
        if (!defer && listen(fd, LISTEN_BACKLOG) < 0)
                goto fail;
        l->listen_pending = defer;
        l->addr = *addr;
        l->io.fd = fd;
        return 0;
fail:;
        int e = errno;
        snprintf(err, errlen, "listen on %s: %s", sockaddr_format(addr, abuf, sizeof(abuf)),
                 strerror(e));
        if (fd >= 0)
                close(fd);
        return -e;
}

/* Binds one worker's listeners: inbound and outbound, on bind_address; a
 * wildcard IPv4 bind also gets an IPv6 wildcard listener when IPv6 works. */
static int worker_listen(struct worker *w, const struct shunt_config *cfg, bool defer, char *err,
                         size_t errlen)
{
        w->listeners = calloc(WORKER_MAX_LISTENERS, sizeof(*w->listeners));
        if (!w->listeners) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        const uint16_t ports[2] = {cfg->inbound_port, cfg->outbound_port};
        const enum conn_dir dirs[2] = {DIR_INBOUND, DIR_OUTBOUND};
        for (int i = 0; i < 2; i++) {
                struct sockaddr_storage addr;
                if (sockaddr_from_string(cfg->bind_address, ports[i], &addr) < 0) {
                        snprintf(err, errlen, "bind_address %s: not an IP address",
                                 cfg->bind_address);
                        return -EINVAL;
                }
                struct listener *l = &w->listeners[w->n_listeners];
                loop_io_init(&l->io, -1, on_accept, w);
                l->dir = dirs[i];
                int rc = listen_on(w->proxy, l, &addr, defer, err, errlen);
                if (rc < 0)
                        return rc;
                w->n_listeners++;
                if (addr.ss_family == AF_INET && sockaddr_is_any(&addr)) {
                        struct sockaddr_storage a6;
                        sockaddr_from_string("::", ports[i], &a6);
                        l = &w->listeners[w->n_listeners];
                        loop_io_init(&l->io, -1, on_accept, w);
                        l->dir = dirs[i];
                        char e6[256];
                        if (listen_on(w->proxy, l, &a6, defer, e6, sizeof(e6)) == 0)
                                w->n_listeners++;
                        else if (w->index == 0)
                                log_warn("proxy", 0, "no IPv6 listener (%s): IPv6 is not proxied",
                                         e6);
                }
        }
        return 0;
}

static void *worker_main(void *arg)
{
        struct worker *w = arg;
        char name[16];
        snprintf(name, sizeof(name), "shunt-w%d", w->index);
        pthread_setname_np(pthread_self(), name);
        struct proxy *p = w->proxy;
        if (p->worker_init) {
                int irc = p->worker_init(p->worker_init_ctx);
                if (irc < 0) {
                        /* Its listeners stay unserved: nothing is relayed from
                         * the wrong place (node mode: the wrong namespace). */
                        log_error("proxy", 0, "worker %d: start-up hook failed: %s", w->index,
                                  strerror(-irc));
                        return NULL;
                }
        }
        int rc = loop_run(w->loop);
        if (rc < 0)
                log_error("proxy", 0, "worker %d: event loop failed: %s", w->index, strerror(-rc));
        return NULL;
}

/* Whether an inherited listener sits where cfg listens: the port of its
 * role on bind_address, or the IPv6 wildcard that goes with 0.0.0.0. */
static bool inherited_fits(const struct handover_listener *h, const struct shunt_config *cfg)
{
        uint16_t port = h->role == HANDOVER_INBOUND ? cfg->inbound_port : cfg->outbound_port;
        struct sockaddr_storage want, a6;
        if (sockaddr_from_string(cfg->bind_address, port, &want) < 0)
                return false;
        if (sockaddr_equal(&want, &h->addr))
                return true;
        sockaddr_from_string("::", port, &a6);
        return want.ss_family == AF_INET && sockaddr_is_any(&want) && sockaddr_equal(&a6, &h->addr);
}

/* Worker w takes the inherited listeners of the old workers w, w + n, w + 2n
 * ...: when the old shuntd ran more workers, their extra sockets stay open
 * here rather than being closed, because closing a SO_REUSEPORT listener
 * resets the connections in its accept queue (net.ipv4.tcp_migrate_req
 * would move them, but it is off by default and per network namespace).
 * Those workers get a larger share of new connections; nothing is lost.
 * 0 when w got at least one, 1 when none (it binds its own). */
static int worker_adopt(struct worker *w, int n_workers, struct handover_listener *inh, size_t n,
                        const struct shunt_config *cfg, char *err, size_t errlen)
{
        size_t mine = 0;
        for (size_t i = 0; i < n; i++)
                mine += inh[i].role <= HANDOVER_OUTBOUND && inh[i].fd >= 0 &&
                        (inh[i].worker < 0 ? 0 : inh[i].worker) % n_workers == w->index;
        if (!mine)
                return 1;
        w->listeners = calloc(mine, sizeof(*w->listeners));
        if (!w->listeners) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                struct handover_listener *h = &inh[i];
                if (h->role > HANDOVER_OUTBOUND || h->fd < 0 ||
                    (h->worker < 0 ? 0 : h->worker) % n_workers != w->index)
                        continue;
                if (!inherited_fits(h, cfg)) {
                        char a[SOCKADDR_STRLEN];
                        snprintf(err, errlen,
                                 "the %s listener %s taken over is not where this configuration "
                                 "listens (bind_address %s, inbound_port %u, outbound_port %u): "
                                 "listener addresses cannot change in an upgrade",
                                 handover_role_name(h->role),
                                 sockaddr_format(&h->addr, a, sizeof(a)), cfg->bind_address,
                                 cfg->inbound_port, cfg->outbound_port);
                        return -EINVAL;
                }
                struct listener *l = &w->listeners[w->n_listeners++];
                loop_io_init(&l->io, h->fd, on_accept, w);
                l->dir = h->role == HANDOVER_INBOUND ? DIR_INBOUND : DIR_OUTBOUND;
                l->addr = h->addr;
                h->fd = -1;
        }
        return 0;
}

static struct proxy *proxy_create(struct shunt_config *cfg, struct handover_listener *inh,
                                  size_t n_inh, bool gated, proxy_socket_fn sock, void *sock_ctx,
                                  char *err, size_t errlen)
{
        struct proxy *p = calloc(1, sizeof(*p));
        if (!p) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        snapshot_slot_init(&p->cfg_slot);
        snapshot_slot_init(&p->route_slot);
        snapshot_slot_init(&p->authz_slot);
        snapshot_ref(&cfg->snap);
        snapshot_publish(&p->cfg_slot, &cfg->snap);
        p->inbound_port = cfg->inbound_port;
        p->outbound_port = cfg->outbound_port;
        p->n_workers = cfg->workers > 0 ? cfg->workers : 1;
        p->accept_deferred = inh != NULL || gated;
        p->sock = sock;
        p->sock_ctx = sock_ctx;
        p->workers = calloc((size_t)p->n_workers, sizeof(*p->workers));
        p->reqm = reqmetrics_new(cfg, (uint32_t)p->n_workers);
        p->tap = tap_hub_new((uint32_t)p->n_workers);
        if (!p->workers || !p->reqm || !p->tap) {
                snprintf(err, errlen, "out of memory");
                goto fail;
        }
        p->fd_conn_limit = fd_conn_limit(p->n_workers);
        conn_limit_report(p, cfg);
        if (cfg->tcp_splice) {
                char why[256];
                p->splice = splice_open(why, sizeof(why)) == 0;
                if (p->splice)
                        log_info("proxy", 0,
                                 "tcp_splice auto: plain TCP relays go to the kernel "
                                 "(sockhash + sk_skb verdict)");
                else
                        log_warn("proxy", 0,
                                 "tcp_splice auto: the kernel cannot splice (%s): every relay "
                                 "stays in userspace (shunt_splice_fallback_total counts them)",
                                 why);
        }
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                w->proxy = p;
                w->index = i;
                w->loop = loop_new();
                if (!w->loop) {
                        snprintf(err, errlen, "worker %d: cannot create event loop", i);
                        goto fail;
                }
                w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                loop_timer_init(&w->accept_resume, on_accept_resume, w);
                int rc = inh ? worker_adopt(w, p->n_workers, inh, n_inh, cfg, err, errlen) : 1;
                if (rc < 0)
                        goto fail;
                /* More workers than the old shuntd had: these bind their own
                 * sockets, which listen only once the handover commits. */
                if (rc == 1 && worker_listen(w, cfg, inh != NULL, err, errlen) < 0)
                        goto fail;
                for (int j = 0; !p->accept_deferred && j < w->n_listeners; j++) {
                        if (loop_io_add(w->loop, &w->listeners[j].io, EPOLLIN) < 0) {
                                snprintf(err, errlen, "worker %d: epoll: %s", i, strerror(errno));
                                goto fail;
                        }
                }
        }
        p->sock = NULL; /* the maker lives during this call only */
        return p;
fail:
        proxy_free(p);
        return NULL;
}

struct proxy *proxy_new_adopt(struct shunt_config *cfg, struct handover_listener *inh, size_t n_inh,
                              char *err, size_t errlen)
{
        return proxy_create(cfg, inh, n_inh, false, NULL, NULL, err, errlen);
}

struct proxy *proxy_new(struct shunt_config *cfg, char *err, size_t errlen)
{
        return proxy_create(cfg, NULL, 0, false, NULL, NULL, err, errlen);
}

struct proxy *proxy_new_gated(struct shunt_config *cfg, proxy_socket_fn sock, void *sock_ctx,
                              char *err, size_t errlen)
{
        return proxy_create(cfg, NULL, 0, true, sock, sock_ctx, err, errlen);
}

void proxy_set_refusing(struct proxy *p, bool on)
{
        atomic_store_explicit(&p->refusing, on, memory_order_relaxed);
}

static void start_accepting(void *arg)
{
        listeners_watch(arg, true);
}

int proxy_start_accepting(struct proxy *p)
{
        if (!p->accept_deferred)
                return 0;
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                for (int j = 0; j < w->n_listeners; j++) {
                        struct listener *l = &w->listeners[j];
                        if (l->listen_pending && listen(l->io.fd, LISTEN_BACKLOG) < 0) {
                                int e = errno;
                                log_error("proxy", 0, "worker %d: listen: %s", i, strerror(e));
                                return -e;
                        }
                        l->listen_pending = false;
                }
        }
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                int rc = w->started ? loop_call(w->loop, start_accepting, w, 5000)
                                    : (start_accepting(w), 0);
                if (rc < 0) {
                        log_error("proxy", 0, "worker %d did not start accepting: %s", i,
                                  strerror(-rc));
                        return rc;
                }
        }
        p->accept_deferred = false;
        return 0;
}

size_t proxy_listeners(struct proxy *p, struct handover_listener *out, size_t max)
{
        size_t n = 0;
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                for (int j = 0; j < w->n_listeners && n < max; j++) {
                        const struct listener *l = &w->listeners[j];
                        if (l->io.fd < 0 || l->listen_pending)
                                continue;
                        out[n].fd = l->io.fd;
                        out[n].role = l->dir == DIR_INBOUND ? HANDOVER_INBOUND : HANDOVER_OUTBOUND;
                        out[n].worker = i;
                        out[n].addr = l->addr;
                        n++;
                }
        }
        return n;
}

void proxy_set_worker_init(struct proxy *p, int (*fn)(void *ctx), void *ctx)
{
        p->worker_init = fn;
        p->worker_init_ctx = ctx;
}

size_t proxy_memory_bytes(struct proxy *p)
{
        const struct shunt_config *cfg = (const void *)p->cfg_slot.cur;
        size_t per_conn = relay_conn_bytes() + 2 * (size_t)(cfg ? cfg->buffer_size : 0);
        size_t n = sizeof(*p) + (size_t)p->n_workers * sizeof(struct worker);
        for (int i = 0; i < p->n_workers; i++)
                n += (size_t)p->workers[i].n_listeners * sizeof(struct listener);
        return n + (size_t)atomic_load_explicit(&p->active, memory_order_relaxed) * per_conn;
}

int proxy_start(struct proxy *p)
{
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                int rc = pthread_create(&w->thread, NULL, worker_main, w);
                if (rc != 0) {
                        log_error("proxy", 0, "cannot start worker %d: %s", i, strerror(rc));
                        return -rc;
                }
                w->started = true;
        }
        return 0;
}

void proxy_set_config(struct proxy *p, struct shunt_config *cfg)
{
        conn_limit_report(p, cfg);
        snapshot_ref(&cfg->snap);
        snapshot_publish(&p->cfg_slot, &cfg->snap);
        /* Resilience settings live in the route table: rebuild it. */
        if (p->routes)
                proxy_set_registry(p, route_table_disc(p->routes));
        /* Each worker picks the new snapshot up at its next event; an idle worker
         * holds the old one until then, which costs nothing. */
}

static void close_listeners(void *arg)
{
        struct worker *w = arg;
        loop_timer_cancel(w->loop, &w->accept_resume);
        for (int i = 0; i < w->n_listeners; i++) {
                if (w->listeners[i].io.fd < 0)
                        continue;
                loop_io_del(w->loop, &w->listeners[i].io);
                close(w->listeners[i].io.fd);
                w->listeners[i].io.fd = -1;
        }
}

/* The drain starts: no new connections, and protocol sessions (HTTP
 * keep-alive) end as soon as they can instead of waiting for the client. */
static void stop_accepting(void *arg)
{
        close_listeners(arg);
        engines_drain(arg);
}

void proxy_stop_accepting(struct proxy *p)
{
        for (int i = 0; i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                if (w->started)
                        loop_call(w->loop, stop_accepting, w, 5000);
                else
                        stop_accepting(w);
        }
}

void proxy_set_registry(struct proxy *p, const struct disc_snapshot *disc)
{
        struct snapshot *cs = snapshot_acquire(&p->cfg_slot, NULL);
        struct route_table *t =
            route_table_build(disc, (const struct shunt_config *)(void *)cs, p->routes);
        snapshot_unref(cs);
        if (!t)
                return; /* logged; the previous routes stay */
        p->routes = t;
        /* The slot keeps t alive, and with it p->routes, until the next publish. */
        snapshot_publish(&p->route_slot, route_table_snapshot(t));
}

void proxy_tick(struct proxy *p)
{
        route_table_tick(p->routes);
}

static void hook_service(void *ctx, const struct disc_service *svc, struct strbuf *sb)
{
        struct proxy *p = ctx;
        route_render_service(p->routes, svc, sb);
}

static void hook_endpoint(void *ctx, const struct disc_service *svc, const struct disc_endpoint *ep,
                          struct strbuf *sb)
{
        struct proxy *p = ctx;
        struct sockaddr_storage sa;
        disc_addr_to_sockaddr(&ep->addr, &sa);
        /* What outbound traffic to it does now: mtls, plaintext or refused. */
        struct snapshot *cs = snapshot_acquire(&p->cfg_slot, NULL);
        enum mtls_mode mode = ((const struct shunt_config *)(void *)cs)->mtls_mode;
        snapshot_unref(cs);
        strbuf_appendf(sb, ",\"outbound\":\"%s\"",
                       route_security_name(route_endpoint_security(ep, mode, p->tls_slot != NULL)));
        route_render_endpoint(p->routes, svc, &sa, ep->cluster, sb);
}

void proxy_render_hooks(struct proxy *p, struct disc_render_hooks *h)
{
        h->service = hook_service;
        h->endpoint = hook_endpoint;
        h->ctx = p;
}

void proxy_render_routes(struct proxy *p, const char *service, struct strbuf *sb)
{
        route_render_routes(p->routes, service, sb);
}

int proxy_force_open(struct proxy *p, const char *service, const struct sockaddr_storage *addr,
                     bool on)
{
        return route_force_open(p->routes, service, addr, on);
}

uint64_t proxy_active(struct proxy *p)
{
        return atomic_load_explicit(&p->active, memory_order_relaxed);
}

static void worker_stop(void *arg)
{
        struct worker *w = arg;
        close_listeners(w);
        relay_close_all(w, REASON_SHUTDOWN);
        loop_stop(w->loop);
}

void proxy_set_tls(struct proxy *p, struct snapshot_slot *slot)
{
        p->tls_slot = slot;
}

void proxy_set_authz(struct proxy *p, struct authz *a)
{
        authz_ref(a);
        snapshot_publish(&p->authz_slot, authz_snapshot(a));
}

void proxy_free(struct proxy *p)
{
        if (!p)
                return;
        for (int i = 0; p->workers && i < p->n_workers; i++) {
                struct worker *w = &p->workers[i];
                if (!w->loop)
                        continue;
                if (w->started) {
                        loop_post(w->loop, worker_stop, w);
                        pthread_join(w->thread, NULL);
                } else {
                        close_listeners(w);
                        relay_close_all(w, REASON_SHUTDOWN);
                }
                snapshot_reader_release(&w->cfg_reader);
                snapshot_reader_release(&w->route_reader);
                snapshot_reader_release(&w->tls_reader);
                snapshot_reader_release(&w->authz_reader);
                engines_worker_free(w);
                route_workers_free(w->route_workers);
                while (w->n_buf_cache)
                        free(w->buf_cache[--w->n_buf_cache]);
                if (w->spare_fd >= 0)
                        close(w->spare_fd);
                free(w->listeners);
                loop_free(w->loop);
                obs_worker_detach(w->obs); /* nothing of this worker logs any more */
                w->obs = NULL;
        }
        free(p->workers);
        snapshot_slot_destroy(&p->cfg_slot);
        snapshot_slot_destroy(&p->route_slot);
        snapshot_slot_destroy(&p->authz_slot);
        reqmetrics_free(p->reqm);
        tap_hub_free(p->tap);
        if (p->splice)
                splice_close();
        free(p);
}

/* ---- reporting (admin thread) -------------------------------------------------- */

static uint64_t sum(struct proxy *p, enum stat_id id)
{
        uint64_t total = 0;
        for (int i = 0; i < p->n_workers; i++)
                total += atomic_load_explicit(&p->workers[i].stats.v[id], memory_order_relaxed);
        return total;
}

void proxy_render_listeners(struct proxy *p, struct strbuf *out)
{
        static const char *const names[] = {"inbound", "outbound"};
        struct worker *w = &p->workers[0];
        strbuf_append(out, "[");
        for (int i = 0; i < w->n_listeners; i++) {
                char abuf[SOCKADDR_STRLEN];
                /* Taken over from more workers: one socket per old worker. */
                bool seen = false;
                for (int j = 0; j < i && !seen; j++)
                        seen = w->listeners[j].dir == w->listeners[i].dir &&
                               !memcmp(&w->listeners[j].addr, &w->listeners[i].addr,
                                       sizeof(w->listeners[i].addr));
                if (seen)
                        continue;
                strbuf_appendf(out, "%s{\"name\":\"%s\",\"address\":", i ? "," : "",
                               names[w->listeners[i].dir]);
                strbuf_append_json_string(
                    out, sockaddr_format(&w->listeners[i].addr, abuf, sizeof(abuf)));
                strbuf_appendf(out, ",\"open\":%s}", w->listeners[i].io.fd >= 0 ? "true" : "false");
        }
        strbuf_append(out, "]");
}

static uint64_t rejected(struct proxy *p)
{
        return sum(p, (enum stat_id)(ST_REASON_FIRST + REASON_OVERLOAD));
}

void proxy_totals(struct proxy *p, struct proxy_totals *t)
{
        t->accepted_in = sum(p, ST_ACCEPTED_IN);
        t->accepted_out = sum(p, ST_ACCEPTED_OUT);
        t->active = proxy_active(p);
        t->bytes_upstream = sum(p, ST_BYTES_UPSTREAM);
        t->bytes_downstream = sum(p, ST_BYTES_DOWNSTREAM);
        t->refused_limit = rejected(p);
        t->refused_tls = sum(p, (enum stat_id)(ST_REASON_FIRST + REASON_TLS_HANDSHAKE));
        static const enum conn_reason other[] = {
            REASON_NO_ORIGINAL_DST,   REASON_LOOP,          REASON_UNKNOWN_DESTINATION,
            REASON_PLAINTEXT_REFUSED, REASON_AUTHZ_REFUSED, REASON_MTLS_REQUIRED,
            REASON_TLS_PORT_MISMATCH, REASON_NO_ENDPOINT,
        };
        t->refused_not_ready = sum(p, (enum stat_id)(ST_REASON_FIRST + REASON_NOT_READY));
        t->refused_other = 0;
        for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++)
                t->refused_other += sum(p, (enum stat_id)(ST_REASON_FIRST + other[i]));
}

void proxy_render_counts(struct proxy *p, struct strbuf *out)
{
        strbuf_appendf(out, "{\"active\":%llu,\"accepted\":%llu,\"rejected\":%llu}",
                       (unsigned long long)proxy_active(p),
                       (unsigned long long)(sum(p, ST_ACCEPTED_IN) + sum(p, ST_ACCEPTED_OUT)),
                       (unsigned long long)rejected(p));
}

struct metric_sample {
        const char *labels;
        enum stat_id id;
};

struct metric_def {
        const char *name;
        const char *type;
        const char *help;
        struct metric_sample samples[3];
};

static const struct metric_def proxy_metrics[] = {
    {"shunt_connections_accepted_total",
     "counter",
     "Connections accepted on the capture listeners.",
     {{"direction=\"inbound\"", ST_ACCEPTED_IN}, {"direction=\"outbound\"", ST_ACCEPTED_OUT}}},
    {"shunt_accept_paused_total",
     "counter",
     "Times the listeners paused because no file descriptor was left (EMFILE/ENFILE).",
     {{"", ST_ACCEPT_PAUSED}}},
    {"shunt_connections_active",
     "gauge",
     "Connections being proxied now.",
     {{"direction=\"inbound\"", ST_ACTIVE_IN}, {"direction=\"outbound\"", ST_ACTIVE_OUT}}},
    {"shunt_bytes_total",
     "counter",
     "Bytes relayed: upstream is client to server, downstream server to client.",
     {{"direction=\"upstream\"", ST_BYTES_UPSTREAM},
      {"direction=\"downstream\"", ST_BYTES_DOWNSTREAM}}},
    {"shunt_original_dst_total",
     "counter",
     "Original destination lookups by result.",
     {{"result=\"ok\"", ST_ORIGDST_OK},
      {"result=\"not_redirected\"", ST_ORIGDST_NOT_REDIRECTED},
      {"result=\"error\"", ST_ORIGDST_ERROR}}},
    {"shunt_outbound_routes_total",
     "counter",
     "Outbound connections by route: a service endpoint or the original destination.",
     {{"route=\"service\"", ST_ROUTE_SERVICE}, {"route=\"passthrough\"", ST_ROUTE_PASSTHROUGH}}},
    {"shunt_connect_retries_total",
     "counter",
     "Upstream connects retried on another endpoint of the same service.",
     {{"", ST_CONNECT_RETRIES}}},
    {"shunt_http2_connections_total",
     "counter",
     "Outbound HTTP/2 and gRPC client connections proxied request by request.",
     {{"", ST_H2_CONNS}}},
    {"shunt_http2_streams_total",
     "counter",
     "HTTP/2 request streams proxied.",
     {{"", ST_H2_STREAMS}}},
    {"shunt_http2_streams_active",
     "gauge",
     "HTTP/2 request streams open now.",
     {{"", ST_H2_STREAMS_ACTIVE}}},
    {"shunt_http2_upstream_sessions_total",
     "counter",
     "Upstream HTTP/2 sessions: opened, and those that failed (connect, TLS, reset).",
     {{"event=\"opened\"", ST_H2_UP_OPENED}, {"event=\"failed\"", ST_H2_UP_FAILED}}},
    {"shunt_http2_upstream_sessions_active",
     "gauge",
     "Upstream HTTP/2 sessions open now.",
     {{"", ST_H2_UP_ACTIVE}}},
    {"shunt_http2_stream_retries_total",
     "counter",
     "HTTP/2 streams moved to another endpoint before any of their bytes went upstream.",
     {{"", ST_H2_STREAM_RETRIES}}},
    {"shunt_http2_local_responses_total",
     "counter",
     "HTTP/2 responses shuntd made itself (gRPC: 503 is UNAVAILABLE, 504 DEADLINE_EXCEEDED, 431 "
     "RESOURCE_EXHAUSTED).",
     {{"status=\"503\"", ST_H2_REPLY_503},
      {"status=\"504\"", ST_H2_REPLY_504},
      {"status=\"431\"", ST_H2_REPLY_431}}},
    {"shunt_http2_stream_resets_total",
     "counter",
     "HTTP/2 streams reset towards the client: the upstream failed after the response began, "
     "a header list past twice the limit (an HPACK bomb), a stream stalled after its response "
     "began.",
     {{"", ST_H2_STREAM_RESETS}}},
    {"shunt_http2_streams_stalled_total",
     "counter",
     "HTTP/2 streams ended because their buffered bytes did not move for "
     "http2.stream_stall_timeout (the client granted no window, or the upstream took no "
     "request bytes).",
     {{"", ST_H2_STREAM_STALLS}}},
    {"shunt_http2_connections_closed_total",
     "counter",
     "HTTP/2 client connections closed by shuntd: frame flood, protocol error, client stopped "
     "reading.",
     {{"reason=\"flood\"", ST_H2_FLOOD},
      {"reason=\"protocol_error\"", ST_H2_PROTOCOL_ERROR},
      {"reason=\"write_stall\"", ST_H2_WRITE_STALL}}},
    {"shunt_splice_connections_total",
     "counter",
     "Plain TCP relays handed to the kernel (tcp_splice): sockets paired in the splice map.",
     {{"", ST_SPLICE_STARTED}}},
    {"shunt_splice_connections_active",
     "gauge",
     "Spliced connections open now.",
     {{"", ST_SPLICE_ACTIVE}}},
    {"shunt_splice_fallback_total",
     "counter",
     "Relays left in userspace though tcp_splice is auto: a splice map was full, the kernel "
     "cannot splice (not loaded), or the insert failed.",
     {{"reason=\"map_full\"", ST_SPLICE_FALLBACK_FULL},
      {"reason=\"kernel\"", ST_SPLICE_FALLBACK_KERNEL},
      {"reason=\"error\"", ST_SPLICE_FALLBACK_ERROR}}},
    {"shunt_splice_returned_total",
     "counter",
     "Spliced directions that went back to the userspace relay: a FIN, reset or error on the "
     "source, or flow control (the destination was full).",
     {{"reason=\"fin_or_error\"", ST_SPLICE_RETURNED_FIN},
      {"reason=\"flow_control\"", ST_SPLICE_RETURNED_FLOW}}},
    {"shunt_splice_overruns_total",
     "counter",
     "Spliced connections reset because the kernel put more bytes into a destination than the "
     "splice program gave it (bytes repeated: the stream was corrupt).",
     {{"", ST_SPLICE_OVERRUN}}},
    {"shunt_protocol_detection_timeouts_total",
     "counter",
     "Connections whose client sent nothing within protocol_detection_timeout.",
     {{"", ST_SNIFF_TIMEOUT}}},
    {"shunt_upstream_connections_total",
     "counter",
     "Upstream connections of request-level proxying: opened, or reused from the idle pool.",
     {{"event=\"opened\"", ST_UPSTREAM_OPENED}, {"event=\"reused\"", ST_UPSTREAM_REUSED}}},
    {"shunt_upstream_idle_connections",
     "gauge",
     "Upstream connections in the idle pool now.",
     {{"", ST_UPSTREAM_IDLE}}},
    {"shunt_upstream_idle_closed_total",
     "counter",
     "Idle upstream connections closed: http.upstream_idle_timeout, the server closed it, or "
     "the pool was full (http.upstream_max_idle).",
     {{"reason=\"timeout\"", ST_UPSTREAM_IDLE_EXPIRED},
      {"reason=\"peer_closed\"", ST_UPSTREAM_IDLE_PEER},
      {"reason=\"pool_full\"", ST_UPSTREAM_POOL_FULL}}},
    {"shunt_http_retries_total",
     "counter",
     "HTTP requests re-sent after an upstream failed before any response byte.",
     {{"", ST_HTTP_RETRIES}}},
    {"shunt_http_requests_aborted_total",
     "counter",
     "HTTP requests that ended without a complete response (client gone, upstream reset "
     "mid-response, shutdown).",
     {{"", ST_HTTP_ABORTED}}},
};

/* One family whose samples are a range of counters named by a function. */
static void render_range(struct proxy *p, struct strbuf *out, const char *name, const char *help,
                         const char *label, int first, int last, enum stat_id base,
                         const char *(*label_value)(int))
{
        prom_family(out, name, "counter", help);
        for (int i = first; i < last; i++) {
                char labels[96];
                snprintf(labels, sizeof(labels), "%s=\"%s\"", label, label_value(i));
                prom_sample_u64(out, name, labels, sum(p, (enum stat_id)(base + i)));
        }
}

static const char *status_class_label(int i)
{
        static const char *const names[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
        return names[i];
}

static const char *local_label(int i)
{
        static const char *const names[HTTP_LOCAL__COUNT] = {"400", "431", "502",
                                                             "503", "504", "other"};
        return names[i];
}

static const char *proto_label(int i)
{
        return proto_name((enum proto)i);
}

static const char *grpc_label(int i)
{
        return h2proxy_grpc_code_name(i);
}

static const char *reason_label(int i)
{
        return conn_reason_name((enum conn_reason)i);
}

void proxy_render_metrics(struct proxy *p, struct strbuf *out)
{
        for (size_t i = 0; i < sizeof(proxy_metrics) / sizeof(proxy_metrics[0]); i++) {
                const struct metric_def *m = &proxy_metrics[i];
                prom_family(out, m->name, m->type, m->help);
                for (size_t k = 0; k < 3 && m->samples[k].labels; k++)
                        prom_sample_u64(out, m->name, m->samples[k].labels,
                                        sum(p, m->samples[k].id));
        }
        prom_family(out, "shunt_connections_rejected_total", "counter",
                    "Connections refused because the connection limit was reached.");
        prom_sample_u64(out, "shunt_connections_rejected_total", NULL, rejected(p));
        prom_family(out, "shunt_connections_limit", "gauge",
                    "Connections accepted at most: max_connections, or fewer when RLIMIT_NOFILE "
                    "cannot hold that many.");
        struct snapshot *cs = snapshot_acquire(&p->cfg_slot, NULL);
        prom_sample_u64(out, "shunt_connections_limit", NULL,
                        proxy_conn_limit(p, (const struct shunt_config *)(void *)cs));
        snapshot_unref(cs);
        render_range(p, out, "shunt_protocol_detected_total", "Connections by sniffed protocol.",
                     "protocol", PROTO_TCP, PROTO__COUNT, ST_PROTO_FIRST, proto_label);
        render_range(p, out, "shunt_grpc_requests_total",
                     "gRPC calls proxied per request, by the grpc-status the client got.", "code",
                     0, GRPC_CODES, ST_GRPC_STATUS_FIRST, grpc_label);
        render_range(p, out, "shunt_connections_closed_total",
                     "Connections ended or refused, by reason.", "reason", 0, REASON__COUNT,
                     ST_REASON_FIRST, reason_label);
        render_range(p, out, "shunt_http_requests_total",
                     "HTTP requests by the status class the client got.", "class", 0, 5,
                     ST_HTTP_STATUS_FIRST, status_class_label);
        render_range(p, out, "shunt_http_local_responses_total",
                     "HTTP responses shuntd made itself (other: 414, 501, 505).", "status", 0,
                     HTTP_LOCAL__COUNT, ST_HTTP_LOCAL_FIRST, local_label);
        render_range(p, out, "shunt_errors_total", "Connections that ended in an error.", "reason",
                     REASON_CLIENT_RESET, REASON__COUNT, ST_REASON_FIRST, reason_label);
        splice_render_metrics(out);
        route_render_metrics(p->routes, out);
        reqmetrics_render(p->reqm, out);
        tap_render(p->tap, out);
}

struct render_call {
        struct worker *w;
        struct strbuf sb;
        bool first;
};

static void render_task(void *arg)
{
        struct render_call *rc = arg;
        relay_render(rc->w, &rc->sb, &rc->first);
}

int proxy_render_connections(struct proxy *p, struct strbuf *out)
{
        strbuf_append(out, "{\"connections\":[");
        bool first = true;
        for (int i = 0; i < p->n_workers; i++) {
                struct render_call *rc = calloc(1, sizeof(*rc));
                if (!rc)
                        return -ENOMEM;
                rc->w = &p->workers[i];
                rc->first = first;
                strbuf_init(&rc->sb);
                int err = p->workers[i].started
                              ? loop_call(p->workers[i].loop, render_task, rc, 2000)
                              : (render_task(rc), 0);
                if (err < 0) {
                        /* The worker still owns rc and will write into it: leak it. */
                        log_warn("admin", 0, "worker %d did not answer: connections incomplete", i);
                        continue;
                }
                first = rc->first;
                if (rc->sb.len)
                        strbuf_appendn(out, rc->sb.data, rc->sb.len);
                strbuf_free(&rc->sb);
                free(rc);
        }
        strbuf_append(out, "]}");
        return 0;
}

struct tap_hub *proxy_tap(struct proxy *p)
{
        return p ? p->tap : NULL;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* The proxy: N worker threads, each with its own event loop and its own
 * SO_REUSEPORT listeners on the inbound and outbound ports. A connection
 * lives on the worker that accepted it for its whole life.
 *
 * The main thread owns the proxy object; workers read the configuration
 * through a snapshot and never take a lock on the data path. */
#ifndef SHUNT_PROXY_PROXY_H
#define SHUNT_PROXY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/strbuf.h"

struct proxy;

/* Creates the workers and binds their listeners (nothing runs yet). The
 * proxy takes a new reference to cfg. On failure err says which address. */
struct proxy *proxy_new(struct shunt_config *cfg, char *err, size_t errlen);
/* As proxy_new, with the listening sockets of the shuntd this one takes
 * over (proxy/handover.h): the inbound and outbound ones it takes (their
 * fd set to -1); workers beyond the old count bind their own. Nothing is
 * accepted until proxy_start_accepting. err names a listener whose address
 * this configuration does not listen on. */
struct handover_listener;
struct proxy *proxy_new_adopt(struct shunt_config *cfg, struct handover_listener *inh, size_t n_inh,
                              char *err, size_t errlen);
/* Makes one listening socket of family (AF_INET, AF_INET6), non-blocking
 * and close-on-exec: an fd, or -errno. */
typedef int (*proxy_socket_fn)(void *ctx, int family);
/* As proxy_new, but the listeners, which listen at once (connects wait in
 * their backlog, LISTEN_BACKLOG at most), are accepted from only after
 * proxy_start_accepting (node mode: a pod not ready to be served yet).
 * sock (NULL: socket(2)) makes the listening sockets, during this call
 * only: node mode makes a pod's in the pod's cgroup. */
struct proxy *proxy_new_gated(struct shunt_config *cfg, proxy_socket_fn sock, void *sock_ctx,
                              char *err, size_t errlen);
/* While on, every connection accepted is reset at once and counted (reason
 * not_ready): a pod's listeners whose queued connects must not wait longer
 * but cannot be served yet fail closed. Any thread. */
void proxy_set_refusing(struct proxy *p, bool on);
/* After proxy_new_adopt or proxy_new_gated, and proxy_start: the workers accept from now on.
 * 0 or negative errno (logged). */
int proxy_start_accepting(struct proxy *p);
/* Every open listener, to hand over (fds stay the proxy's). At most max. */
size_t proxy_listeners(struct proxy *p, struct handover_listener *out, size_t max);
/* Runs fn(ctx) first on every worker thread (before proxy_start); a
 * negative return leaves that worker idle, logged. Node mode enters the
 * pod's network namespace there, so every socket the workers open is the
 * pod's. */
void proxy_set_worker_init(struct proxy *p, int (*fn)(void *ctx), void *ctx);
/* An estimate of the memory the proxy holds now (main thread): workers,
 * listeners and, per open connection, its state and two buffers of
 * buffer_size (the bound: max_connections of those). */
size_t proxy_memory_bytes(struct proxy *p);
/* Starts the worker threads. */
int proxy_start(struct proxy *p);
/* Publishes a new configuration to the workers (takes a new reference).
 * Listener addresses and the worker count do not change on reload. */
void proxy_set_config(struct proxy *p, struct shunt_config *cfg);
/* Routes outbound connections by the services of a discovery snapshot
 * (takes a reference); main thread only. */
struct disc_snapshot;
void proxy_set_registry(struct proxy *p, const struct disc_snapshot *disc);
/* Enables mutual TLS: workers take certificates from slot (tls_store_slot),
 * originate TLS to services that have an identity and terminate mesh TLS on
 * the inbound port. Before proxy_start; the store must outlive the proxy. */
struct snapshot_slot;
void proxy_set_tls(struct proxy *p, struct snapshot_slot *slot);
/* Publishes the inbound authorization policies (a new reference is taken):
 * new TLS handshakes and new plaintext connections are checked against them
 * (authz/authz.h); open connections are left alone. */
struct authz;
void proxy_set_authz(struct proxy *p, struct authz *a);
/* Closes the listeners: no new connections; existing ones continue. */
void proxy_stop_accepting(struct proxy *p);
/* Connections open right now, over all workers. */
uint64_t proxy_active(struct proxy *p);
/* Closes every connection, stops and joins the workers, frees everything. */
void proxy_free(struct proxy *p);

/* Listener addresses as JSON array items: [{"name","address"}, ...]. */
void proxy_render_listeners(struct proxy *p, struct strbuf *out);
/* {"active","accepted","rejected"} counts. */
void proxy_render_counts(struct proxy *p, struct strbuf *out);
/* The proxy's totals over its workers (node mode reports them per pod). */
struct proxy_totals {
        uint64_t accepted_in, accepted_out, active;
        uint64_t bytes_upstream, bytes_downstream; /* client -> upstream, upstream -> client */
        uint64_t refused_limit;                    /* max_connections reached */
        uint64_t refused_tls;                      /* mTLS handshake failed (or no certificate) */
        uint64_t refused_other;     /* policy, loop, no original destination, no endpoint */
        uint64_t refused_not_ready; /* proxy_set_refusing */
};
void proxy_totals(struct proxy *p, struct proxy_totals *t);
/* Prometheus text for every proxy counter. */
void proxy_render_metrics(struct proxy *p, struct strbuf *out);
/* The request tap of p's workers (proxy/tap.h: tap_serve for GET /tap). */
struct tap_hub;
struct tap_hub *proxy_tap(struct proxy *p);
/* Resilience (main thread): the time-driven breaker and ejection steps
 * (call every ~100 ms), the /endpoints hooks, and the operator's forced
 * open of one endpoint's breaker (0 or -ENOENT). */
void proxy_tick(struct proxy *p);
struct disc_render_hooks;
void proxy_render_hooks(struct proxy *p, struct disc_render_hooks *h);
struct sockaddr_storage;
/* GET /routes: the traffic routes in force (route_render_routes). */
void proxy_render_routes(struct proxy *p, const char *service, struct strbuf *sb);
int proxy_force_open(struct proxy *p, const char *service, const struct sockaddr_storage *addr,
                     bool on);
/* {"connections":[...]} asking each worker for its live connections. */
int proxy_render_connections(struct proxy *p, struct strbuf *out);

#endif

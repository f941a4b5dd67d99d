/* Outbound routing: from an original destination to an upstream address.
 *
 * The main thread turns each discovery snapshot into a route table: one
 * load-balancer table per (service, port), built from the endpoints that
 * serve that port, carrying each table's state over from the previous route
 * table. Workers look the original destination up by virtual address and
 * port and pick an endpoint without a lock. Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_ROUTE_H
#define SHUNT_PROXY_ROUTE_H

#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/snapshot.h"
#include "discovery/registry.h"
#include "lb/lb.h"

struct route_table;
struct worker;

enum route_result {
        ROUTE_PASSTHROUGH = 0, /* not a known service: relay to the original destination */
        ROUTE_ENDPOINT,        /* a service endpoint was picked */
        ROUTE_NO_ENDPOINT,     /* a known service with no endpoint that can serve */
};

/* What a connection keeps of its route while it lives. */
struct route_use {
        struct route_table *table; /* a reference, or NULL */
        struct lb_ep_state *ep;    /* counted with lb_conn_begin, or NULL */
        uint32_t entry;
        enum proto declared; /* the port's declared protocol, PROTO_UNKNOWN if none */
};

/* Builds a route table from a discovery snapshot (taking a reference to it)
 * and cfg, reusing prev's load-balancer state. Returns NULL on allocation
 * failure (logged). */
struct route_table *route_table_build(const struct disc_snapshot *disc,
                                      const struct shunt_config *cfg,
                                      const struct route_table *prev);
struct snapshot *route_table_snapshot(struct route_table *t);

/* Per worker: the load-balancer cursors for each entry of the table the
 * worker last saw. */
struct route_workers;
void route_workers_free(struct route_workers *rw);

/* Picks the upstream for dst. On ROUTE_ENDPOINT, *upstream is the endpoint
 * and use holds a table reference and an active-connection count; release
 * with route_release. exclude, when set, is an address not to pick again
 * (a retry after a failed connect) unless nothing else is left. */
enum route_result route_pick(struct route_table *t, struct route_workers **rw, uint64_t seed,
                             const struct sockaddr_storage *dst,
                             const struct sockaddr_storage *client,
                             const struct sockaddr_storage *exclude,
                             struct sockaddr_storage *upstream, struct route_use *use);
/* Reports a connect outcome to discovery's passive health. */
void route_report(const struct route_use *use, const struct sockaddr_storage *upstream, bool ok);
void route_release(struct route_use *use);
/* The SPIFFE ID of the service behind use ("" when none or no service) and
 * its mTLS mode as the registry says it (DISC_MTLS_DEFAULT when not set or no
 * service: the daemon's mtls.mode applies). */
const char *route_identity(const struct route_use *use);
enum disc_mtls route_mtls(const struct route_use *use);
/* "ns/name" of the service behind use, for logs. */
const char *route_service_name(const struct route_use *use);

#endif

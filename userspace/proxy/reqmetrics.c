// SPDX-License-Identifier: Apache-2.0
/* Request and TCP metrics of the engines and the relay; see reqmetrics.h. */
#include "proxy/reqmetrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/prom.h"
#include "proxy/h2proxy.h"
#include "proxy/obs.h"
#include "route/route.h"
#include "proxy/upstream.h"
#include "tls/conn.h"
#include "core/spiffe.h"
#include "core/sockaddr.h"
#include "proxy/tap.h"
#include <time.h>

#define NAME_MAX_ 254 /* SPIFFE names, service names: at most 253 characters */
#define UNKNOWN   "unknown"
#define SRC_CACHE 8 /* inbound peers whose service a worker remembers */

enum {
        L_DIRECTION,
        L_SRC_WORKLOAD,
        L_SRC_NAMESPACE,
        L_SRC_SERVICE,
        L_DST_WORKLOAD,
        L_DST_NAMESPACE,
        L_DST_SERVICE,
        L_MTLS,
        L_PROTOCOL, /* requests only, from here on */
        L_CODE,
        L_CLASS,
        L_GRPC,
        L__REQ,
        L__TCP = L_PROTOCOL,
};

static const char *const label_names[L__REQ] = {
    "direction",
    "source_workload",
    "source_namespace",
    "source_service",
    "destination_workload",
    "destination_namespace",
    "destination_service",
    "mtls",
    "protocol",
    "response_code",
    "response_code_class",
    "grpc_status",
};

enum { TCP_OPENED, TCP_CLOSED, TCP_RECEIVED, TCP_SENT, TCP__CELLS };

/* One workload as labels. */
struct who {
        char workload[NAME_MAX_], ns[NAME_MAX_], service[NAME_MAX_];
};

/* An inbound peer's SPIFFE ID and the registry service it is, for one
 * registry snapshot version. */
struct src_service {
        uint64_t version; /* 0: empty */
        char id[SPIFFE_ID_MAX + 1];
        char service[NAME_MAX_];
};

/* Per worker, written by its thread only. */
struct reqm_worker {
        /* This sidecar's own workload, for the configuration and certificate
         * it was computed from. */
        const void *self_cfg, *self_tls;
        struct who self;
        /* The last inbound peer seen, by its SPIFFE ID. */
        char peer_id[SPIFFE_ID_MAX + 1];
        bool peer_mesh;
        struct spiffe_id parsed; /* peer_id's */
        /* The last outbound endpoint identity and its workload. */
        char dst_id[SPIFFE_ID_MAX + 1];
        char dst_workload[NAME_MAX_];
        struct spiffe_id scratch;
        struct src_service src[SRC_CACHE]; /* replaced round robin */
        uint32_t src_next;
};

struct reqmetrics {
        struct prom_buckets buckets;
        struct prom_series *req, *tcp;
        uint32_t max_series;
        uint32_t n_workers;
        struct reqm_worker *workers;
        char hostname[NAME_MAX_];
};

struct reqmetrics *reqmetrics_new(const struct shunt_config *cfg, uint32_t workers)
{
        struct reqmetrics *m = calloc(1, sizeof(*m));
        if (!m)
                return NULL;
        if (prom_buckets_parse(cfg->metrics_histogram_buckets, &m->buckets, NULL) < 0)
                prom_buckets_parse(PROM_DEFAULT_BUCKETS, &m->buckets, NULL); /* config checked it */
        m->max_series = cfg->metrics_max_series;
        m->n_workers = workers;
        m->req = prom_series_new(m->max_series, L__REQ, label_names, PROM_HIST_CELLS(&m->buckets),
                                 workers);
        m->tcp = prom_series_new(m->max_series, L__TCP, label_names, TCP__CELLS, workers);
        m->workers = calloc(workers, sizeof(*m->workers));
        if (!m->req || !m->tcp || !m->workers) {
                reqmetrics_free(m);
                return NULL;
        }
        if (gethostname(m->hostname, sizeof(m->hostname) - 1) < 0 || !m->hostname[0])
                snprintf(m->hostname, sizeof(m->hostname), UNKNOWN);
        return m;
}

void reqmetrics_free(struct reqmetrics *m)
{
        if (!m)
                return;
        prom_series_free(m->req);
        prom_series_free(m->tcp);
        free(m->workers);
        free(m);
}

/* src (or "unknown"), cut to NAME_MAX_ - 1 bytes; no printf: it runs per request. */
static void copy(char *dst, const char *src)
{
        if (!src || !*src)
                src = UNKNOWN;
        size_t n = 0;
        while (n < NAME_MAX_ - 1 && src[n])
                n++;
        memcpy(dst, src, n);
        dst[n] = '\0';
}

/* This sidecar: mtls.service_name (else the host name), mtls.namespace and
 * mtls.service_account as the workload, or what its certificate says. */
static const struct who *self_labels(struct reqmetrics *m, struct worker *w, struct reqm_worker *rw)
{
        const struct shunt_config *cfg = worker_cfg(w);
        struct tls_snapshot *ts = upstream_worker_tls(w);
        if (rw->self_cfg == cfg && rw->self_tls == ts)
                return &rw->self;
        rw->self_cfg = cfg;
        rw->self_tls = ts;
        const char *service = cfg->mtls_service_name[0] ? cfg->mtls_service_name : m->hostname;
        copy(rw->self.service, service);
        copy(rw->self.workload, cfg->mtls_service_account[0] ? cfg->mtls_service_account : service);
        copy(rw->self.ns, cfg->mtls_namespace);
        const char *id = ts ? tls_snapshot_identity(ts) : NULL;
        if (id && *id && spiffe_id_parse(id, &rw->scratch, NULL) == 0 && rw->scratch.mesh) {
                copy(rw->self.workload, rw->scratch.sa);
                copy(rw->self.ns, rw->scratch.ns);
        }
        return &rw->self;
}

/* The inbound client: its SPIFFE ID's service account and namespace. */
static void peer_labels(struct reqm_worker *rw, struct tls_conn *tls, const char **workload,
                        const char **ns)
{
        *workload = *ns = UNKNOWN;
        const char *id = tls ? tls_conn_peer_id(tls) : NULL;
        if (!id || !*id)
                return;
        if (strcmp(id, rw->peer_id) != 0) {
                rw->peer_mesh = spiffe_id_parse(id, &rw->parsed, NULL) == 0 && rw->parsed.mesh;
                snprintf(rw->peer_id, sizeof(rw->peer_id), "%s", id);
        }
        if (rw->peer_mesh) {
                *workload = rw->parsed.sa;
                *ns = rw->parsed.ns;
        }
}

/* The registry service whose identity is id: the first service (registry
 * order) whose own identity, or one of whose endpoints' identity, it is. */
static const char *service_of_identity(const struct disc_snapshot *d, const char *id)
{
        uint32_t n = disc_snapshot_n_services(d);
        for (uint32_t s = 0; s < n; s++) {
                const struct disc_service *svc = disc_snapshot_service(d, s);
                if (!strcmp(svc->identity, id))
                        return svc->name;
                for (uint32_t e = 0; e < svc->n_endpoints; e++)
                        if (svc->endpoints[e].meshed && !strcmp(svc->endpoints[e].identity, id))
                                return svc->name;
        }
        return NULL;
}

/* The inbound client's service: looked up by its SPIFFE ID in the registry
 * (a certificate names a workload, not a service), remembered per worker
 * for the registry version; "unknown" when nothing in the registry has
 * that identity, or without one (plaintext). */
static const char *peer_service(struct worker *w, struct reqm_worker *rw, struct tls_conn *tls)
{
        const char *id = tls ? tls_conn_peer_id(tls) : NULL;
        if (!id || !*id)
                return UNKNOWN;
        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
            &w->route_reader, &w->proxy->route_slot);
        const struct disc_snapshot *d = t ? route_table_disc(t) : NULL;
        if (!d)
                return UNKNOWN;
        uint64_t version = disc_snapshot_version(d);
        for (uint32_t i = 0; i < SRC_CACHE; i++)
                if (rw->src[i].version == version && !strcmp(rw->src[i].id, id))
                        return rw->src[i].service;
        struct src_service *c = &rw->src[rw->src_next++ % SRC_CACHE];
        c->version = version;
        snprintf(c->id, sizeof(c->id), "%s", id);
        copy(c->service, service_of_identity(d, id));
        return c->service;
}

/* "ns/name:port" -> ns and name. */
static void split_service(const char *key, char *ns, char *name)
{
        copy(ns, NULL);
        copy(name, NULL);
        const char *slash = key ? strchr(key, '/') : NULL;
        if (!slash || slash == key || slash - key >= NAME_MAX_)
                return;
        memcpy(ns, key, (size_t)(slash - key));
        ns[slash - key] = '\0';
        const char *colon = strrchr(slash + 1, ':');
        size_t n = colon ? (size_t)(colon - slash - 1) : strlen(slash + 1);
        if (!n || n >= NAME_MAX_)
                return;
        memcpy(name, slash + 1, n);
        name[n] = '\0';
}

/* The destination of an outbound request or connection: the service its
 * original destination is, and the picked endpoint's workload (its SPIFFE
 * ID's service account). */
static void destination(struct worker *w, struct reqm_worker *rw, const char *service,
                        const struct route_use *route, const struct sockaddr_storage *orig_dst,
                        char *ns, char *name, const char **workload)
{
        if ((!service || !strcmp(service, "-")) && route && route->table)
                service = route_service_name(route);
        if ((!service || !strcmp(service, "-")) && orig_dst) {
                struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
                    &w->route_reader, &w->proxy->route_slot);
                enum proto declared;
                service = NULL;
                route_lookup(t, orig_dst, &declared, NULL, &service);
        }
        split_service(service, ns, name);
        *workload = UNKNOWN;
        const char *id = route && route->table ? route_identity(route) : "";
        if (!*id)
                return;
        if (strcmp(id, rw->dst_id) != 0) {
                bool mesh = spiffe_id_parse(id, &rw->scratch, NULL) == 0 && rw->scratch.mesh;
                copy(rw->dst_workload, mesh ? rw->scratch.sa : NULL);
                snprintf(rw->dst_id, sizeof(rw->dst_id), "%s", id);
        }
        *workload = rw->dst_workload;
}

static bool outbound_mtls(struct worker *w, const struct route_use *route)
{
        if (!route || !route->table)
                return false;
        return route_security(route, worker_cfg(w)->mtls_mode, w->proxy->tls_slot != NULL) ==
               ROUTE_MTLS;
}

/* Fills the labels both families share. */
static void common_labels(struct worker *w, enum conn_dir dir, struct tls_conn *peer_tls,
                          const char *service, const struct route_use *route,
                          const struct sockaddr_storage *orig_dst, bool mtls, const char **v,
                          char (*buf)[NAME_MAX_])
{
        struct reqmetrics *m = w->proxy->reqm;
        struct reqm_worker *rw = &m->workers[(uint32_t)w->index % m->n_workers];
        const struct who *self = self_labels(m, w, rw);
        v[L_DIRECTION] = dir == DIR_INBOUND ? "inbound" : "outbound";
        if (dir == DIR_INBOUND) {
                peer_labels(rw, peer_tls, &v[L_SRC_WORKLOAD], &v[L_SRC_NAMESPACE]);
                v[L_SRC_SERVICE] = peer_service(w, rw, peer_tls);
                v[L_DST_WORKLOAD] = self->workload;
                v[L_DST_NAMESPACE] = self->ns;
                v[L_DST_SERVICE] = self->service;
                v[L_MTLS] = peer_tls ? "true" : "false";
        } else {
                v[L_SRC_WORKLOAD] = self->workload;
                v[L_SRC_NAMESPACE] = self->ns;
                v[L_SRC_SERVICE] = self->service;
                destination(w, rw, service, route, orig_dst, buf[0], buf[1], &v[L_DST_WORKLOAD]);
                v[L_DST_NAMESPACE] = buf[0];
                v[L_DST_SERVICE] = buf[1];
                v[L_MTLS] = mtls ? "true" : "false";
        }
}

static void tap_request(struct worker *w, const struct req_end *r, const char *ns,
                        const char *service, uint64_t duration_ns);

void reqmetrics_request(struct worker *w, const struct req_end *r)
{
        obs_request_end(w, r);
        struct reqmetrics *m = w->proxy->reqm;
        if (!m)
                return;
        bool counted = worker_cfg(w)->metrics_requests, tapped = tap_attached(w->proxy->tap);
        if (!counted && !tapped)
                return;
        const char *v[L__REQ];
        char buf[2][NAME_MAX_], code[4] = "0", cls[5] = "none";
        common_labels(w, r->dir, r->peer_tls, r->service, r->route, r->orig_dst,
                      r->dir == DIR_OUTBOUND && outbound_mtls(w, r->route), v, buf);
        v[L_PROTOCOL] = r->protocol;
        int status = r->status >= 100 && r->status <= 599 ? r->status : 0;
        if (status) { /* "503" and "5xx" */
                code[0] = cls[0] = (char)('0' + status / 100);
                code[1] = (char)('0' + status / 10 % 10);
                code[2] = (char)('0' + status % 10);
                code[3] = '\0';
                memcpy(cls + 1, "xx", 3);
        }
        v[L_CODE] = code;
        v[L_CLASS] = cls;
        v[L_GRPC] = r->grpc_status >= 0 ? h2proxy_grpc_code_name(r->grpc_status) : "";
        uint64_t now = clock_mono_ns();
        uint64_t duration = now > r->start_ns ? now - r->start_ns : 0;
        if (counted)
                prom_hist_observe(prom_series_cells(m->req, (uint32_t)w->index, v), &m->buckets,
                                  duration);
        if (tapped)
                tap_request(w, r, v[L_DST_NAMESPACE], v[L_DST_SERVICE], duration);
}

static void field(char *dst, size_t cap, const char *src)
{
        snprintf(dst, cap, "%s", src ? src : "");
}

/* A request for the tap: copied into the worker's ring (tap.h). */
static void tap_request(struct worker *w, const struct req_end *r, const char *ns,
                        const char *service, uint64_t duration_ns)
{
        struct tap_event ev;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ev.unix_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        ev.duration_ns = duration_ns;
        ev.status = r->status >= 100 && r->status <= 599 ? r->status : 0;
        ev.grpc_status = r->grpc_status;
        field(ev.direction, sizeof(ev.direction), r->dir == DIR_INBOUND ? "inbound" : "outbound");
        field(ev.protocol, sizeof(ev.protocol), r->protocol);
        field(ev.method, sizeof(ev.method), r->method);
        field(ev.authority, sizeof(ev.authority), r->authority);
        field(ev.path, sizeof(ev.path), r->path);
        struct tls_snapshot *ts_self = upstream_worker_tls(w);
        const char *self = ts_self ? tls_snapshot_identity(ts_self) : NULL;
        const char *peer = r->peer_tls ? tls_conn_peer_id(r->peer_tls) : NULL;
        const char *dst = r->route && r->route->table ? route_identity(r->route) : NULL;
        field(ev.source, sizeof(ev.source), r->dir == DIR_INBOUND ? peer : self);
        field(ev.destination, sizeof(ev.destination), r->dir == DIR_INBOUND ? self : dst);
        snprintf(ev.service, sizeof(ev.service), "%s/%s", ns, service);
        ev.endpoint[0] = '\0';
        if (r->endpoint && r->endpoint->ss_family)
                sockaddr_format(r->endpoint, ev.endpoint, sizeof(ev.endpoint));
        field(ev.request_id, sizeof(ev.request_id), r->request_id);
        ev.trace_id[0] = ev.span_id[0] = '\0';
        if (r->span && r->span->active) {
                trace_hex(r->span->trace_id, 16, ev.trace_id);
                trace_hex(r->span->span_id, 8, ev.span_id);
        }
        tap_publish(w->proxy->tap, (uint32_t)w->index, &ev);
}

_Atomic uint64_t *reqmetrics_tcp_open(struct worker *w, enum conn_dir dir,
                                      struct tls_conn *peer_tls, const struct route_use *route,
                                      bool mtls)
{
        struct reqmetrics *m = w->proxy->reqm;
        if (!m || !worker_cfg(w)->metrics_requests)
                return NULL;
        const char *v[L__TCP];
        char buf[2][NAME_MAX_];
        common_labels(w, dir, peer_tls, NULL, route, NULL, mtls, v, buf);
        _Atomic uint64_t *cells = prom_series_cells(m->tcp, (uint32_t)w->index, v);
        prom_cell_add(&cells[TCP_OPENED], 1);
        return cells;
}

void reqmetrics_tcp_bytes(_Atomic uint64_t *cells, bool from_client, uint64_t n)
{
        if (cells && n)
                prom_cell_add(&cells[from_client ? TCP_RECEIVED : TCP_SENT], n);
}

void reqmetrics_tcp_close(_Atomic uint64_t *cells)
{
        if (cells)
                prom_cell_add(&cells[TCP_CLOSED], 1);
}

/* ---- rendering (admin thread) ------------------------------------------------- */

struct render_ctx {
        struct reqmetrics *m;
        struct strbuf *out;
        const char *name;
        int cell; /* TCP: which cell; requests: -1 count, -2 histogram */
};

static void render_one(void *arg, const char *labels, const uint64_t *cells)
{
        struct render_ctx *rc = arg;
        if (rc->cell == -2) {
                prom_hist_render(rc->out, rc->name, labels, &rc->m->buckets, cells);
                return;
        }
        uint64_t v = 0;
        if (rc->cell == -1)
                for (uint32_t i = 0; i <= rc->m->buckets.n; i++)
                        v += cells[i];
        else
                v = cells[rc->cell];
        prom_sample_u64(rc->out, rc->name, labels, v);
}

static void family(struct reqmetrics *m, struct strbuf *out, struct prom_series *s,
                   const char *name, const char *type, const char *help, int cell)
{
        prom_family(out, name, type, help);
        struct render_ctx rc = {m, out, name, cell};
        prom_series_foreach(s, render_one, &rc);
}

void reqmetrics_render(struct reqmetrics *m, struct strbuf *out)
{
        if (!m)
                return;
        family(m, out, m->req, "shunt_requests_total", "counter",
               "HTTP/1.1 requests, HTTP/2 streams and gRPC calls proxied, by direction, source, "
               "destination, response code, gRPC status and mTLS.",
               -1);
        family(m, out, m->req, "shunt_request_duration_seconds", "histogram",
               "Time from a request's first byte to the end of its response, by the labels of "
               "shunt_requests_total.",
               -2);
        family(m, out, m->tcp, "shunt_tcp_connections_opened_total", "counter",
               "Connections relayed byte for byte (not HTTP) that began relaying, by direction, "
               "source, destination and mTLS.",
               TCP_OPENED);
        family(m, out, m->tcp, "shunt_tcp_connections_closed_total", "counter",
               "Connections relayed byte for byte that ended.", TCP_CLOSED);
        family(m, out, m->tcp, "shunt_tcp_received_bytes_total", "counter",
               "Bytes received from the client of a byte-relayed connection, as they are relayed.",
               TCP_RECEIVED);
        family(m, out, m->tcp, "shunt_tcp_sent_bytes_total", "counter",
               "Bytes sent to the client of a byte-relayed connection, as they are relayed.",
               TCP_SENT);
        static const char *const fams[] = {"requests", "tcp"};
        struct prom_series *sets[] = {m->req, m->tcp};
        prom_family(
            out, "shunt_metrics_series", "gauge",
            "Label sets in use per metric group (requests: shunt_requests_total and "
            "shunt_request_duration_seconds; tcp: shunt_tcp_*), at most metrics.max_series.");
        for (int i = 0; i < 2; i++) {
                char l[32];
                snprintf(l, sizeof(l), "group=\"%s\"", fams[i]);
                prom_sample_u64(out, "shunt_metrics_series", l, prom_series_count(sets[i]));
        }
        prom_family(out, "shunt_metrics_series_limit", "gauge", "metrics.max_series.");
        prom_sample_u64(out, "shunt_metrics_series_limit", NULL, m->max_series);
        prom_family(out, "shunt_metrics_series_overflow_total", "counter",
                    "Updates recorded in the series labelled \"other\" because metrics.max_series "
                    "label sets were in use.");
        for (int i = 0; i < 2; i++) {
                char l[32];
                snprintf(l, sizeof(l), "group=\"%s\"", fams[i]);
                prom_sample_u64(out, "shunt_metrics_series_overflow_total", l,
                                prom_series_overflows(sets[i]));
        }
}

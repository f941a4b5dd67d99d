// SPDX-License-Identifier: Apache-2.0
/* Kubernetes objects -> registry specs. Services, EndpointSlices, meshed
 * Pods and Namespaces are kept parsed (only the fields the mesh uses); a
 * build joins each Service with the slices labelled
 * kubernetes.io/service-name=<its name> in its namespace, and each slice
 * endpoint with its Pod (targetRef) for its identity and mTLS mode. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "core/log.h"
#include "discovery/k8s.h"

#define COMP "discovery"

#define SLICE_MAX_PORTS DISC_MAX_PORTS

struct k8s_svc_port {
        char name[DISC_NAME_MAX];
        uint16_t port;
        uint16_t target_num;             /* numeric targetPort, 0 if named or absent */
        char target_name[DISC_NAME_MAX]; /* named targetPort */
        enum proto proto;
};

struct k8s_svc {
        char ns[DISC_NAME_MAX];
        char name[DISC_NAME_MAX];
        struct disc_addr vips[DISC_MAX_VIPS];
        uint32_t n_vips;
        struct k8s_svc_port ports[DISC_MAX_PORTS];
        uint32_t n_ports;
        enum disc_mtls mode; /* shunt.io/mtls-mode, DEFAULT if absent */
};

struct k8s_slice_ep {
        struct disc_addr addr; /* port 0 */
        enum disc_health health;
        char zone[DISC_NAME_MAX];
        char pod[K8S_MAX_OBJECT_NAME]; /* targetRef of kind Pod: its name, "" if none */
        char pod_uid[K8S_MAX_UID];     /* and its uid, "" if not given */
};

/* A meshed pod: only what routing needs. */
struct k8s_pod {
        struct k8s_pod *next; /* hash chain */
        char ns[DISC_NAME_MAX];
        char name[K8S_MAX_OBJECT_NAME];
        char uid[K8S_MAX_UID];
        char sa[K8S_MAX_OBJECT_NAME]; /* spec.serviceAccountName ("default" if absent) */
        bool meshed;                  /* label shunt.io/meshed: "true" */
        enum disc_mtls mode;          /* annotation shunt.io/mtls-mode */
        struct disc_addr ips[K8S_MAX_POD_IPS];
        uint32_t n_ips;
};

struct k8s_ns {
        char name[DISC_NAME_MAX];
        enum disc_mtls mode;
};

#define POD_BUCKETS 4096 /* power of two; chains stay short up to K8S_MAX_PODS */

struct k8s_slice {
        char ns[DISC_NAME_MAX];
        char name[K8S_MAX_OBJECT_NAME];
        char svc[DISC_NAME_MAX]; /* kubernetes.io/service-name */
        struct {
                char name[DISC_NAME_MAX];
                uint16_t port;
        } ports[SLICE_MAX_PORTS];
        uint32_t n_ports;
        struct k8s_slice_ep *eps;
        uint32_t n_eps;
};

struct k8s_cache {
        struct k8s_svc *svcs;
        size_t n_svcs, cap_svcs;
        struct k8s_slice *slices;
        size_t n_slices, cap_slices;
        struct k8s_pod **pods; /* POD_BUCKETS chains, allocated with the first pod */
        size_t n_pods;
        uint64_t pods_shed; /* pods not kept: K8S_MAX_PODS reached */
        uint64_t changes;   /* bumped by every change a build would see */
        struct k8s_ns *nss;
        size_t n_nss, cap_nss;
        char td[DISC_IDENTITY_MAX];
        struct k8s_route_store *routes; /* HTTPRoutes and GRPCRoutes (k8s_routes.c) */
};

struct k8s_cache *k8s_cache_new(void)
{
        struct k8s_cache *c = calloc(1, sizeof(struct k8s_cache));
        if (c && !(c->routes = k8s_route_store_new())) {
                free(c);
                return NULL;
        }
        if (c)
                snprintf(c->td, sizeof(c->td), "%s", K8S_DEFAULT_TRUST_DOMAIN);
        return c;
}

int k8s_cache_set_trust_domain(struct k8s_cache *c, const char *td)
{
        /* Room for "spiffe://<td>/ns/<63>/sa/<a name>". */
        if (!td || !*td || strlen(td) > 128)
                return -EINVAL;
        snprintf(c->td, sizeof(c->td), "%s", td);
        return 0;
}

static void pods_clear(struct k8s_cache *c)
{
        for (size_t b = 0; c->pods && b < POD_BUCKETS; b++) {
                while (c->pods[b]) {
                        struct k8s_pod *p = c->pods[b];
                        c->pods[b] = p->next;
                        free(p);
                }
        }
        free(c->pods);
        c->pods = NULL;
        c->n_pods = 0;
}

static void slices_clear(struct k8s_cache *c)
{
        for (size_t i = 0; i < c->n_slices; i++)
                free(c->slices[i].eps);
        c->n_slices = 0;
}

void k8s_cache_free(struct k8s_cache *c)
{
        if (!c)
                return;
        slices_clear(c);
        pods_clear(c);
        free(c->slices);
        free(c->svcs);
        free(c->nss);
        k8s_route_store_free(c->routes);
        free(c);
}

uint64_t k8s_cache_changes(const struct k8s_cache *c)
{
        return c->changes;
}

uint64_t k8s_cache_pods_shed(const struct k8s_cache *c)
{
        return c->pods_shed;
}

size_t k8s_cache_count(const struct k8s_cache *c, enum k8s_kind kind)
{
        switch (kind) {
        case K8S_SERVICES:
                return c->n_svcs;
        case K8S_SLICES:
                return c->n_slices;
        case K8S_PODS:
                return c->n_pods;
        case K8S_HTTPROUTES:
        case K8S_GRPCROUTES:
                return k8s_route_store_count(c->routes, kind == K8S_GRPCROUTES);
        default:
                return c->n_nss;
        }
}

enum proto k8s_app_protocol(const char *ap)
{
        if (!ap || !*ap)
                return PROTO_UNKNOWN;
        static const struct {
                const char *name;
                enum proto p;
        } map[] = {
            {"http", PROTO_HTTP1},
            {"http1", PROTO_HTTP1},
            {"kubernetes.io/h2c", PROTO_HTTP2},
            {"h2c", PROTO_HTTP2},
            {"http2", PROTO_HTTP2},
            {"grpc", PROTO_GRPC},
            {"kubernetes.io/grpc", PROTO_GRPC},
            {"tcp", PROTO_TCP},
            {"https", PROTO_TLS},
            {"tls", PROTO_TLS},
        };
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
                if (strcasecmp(ap, map[i].name) == 0)
                        return map[i].p;
        }
        return PROTO_UNKNOWN;
}

/* ---- JSON helpers ------------------------------------------------------------ */

#define FIELD(o, k) cJSON_GetObjectItemCaseSensitive(o, k)

static const char *str_at(const cJSON *o, const char *k)
{
        const cJSON *x = FIELD(o, k);
        return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int copy_str(char *dst, size_t cap, const char *src, const char *what, char *err,
                    size_t errlen)
{
        if (!src || !*src) {
                snprintf(err, errlen, "missing %s", what);
                return -EINVAL;
        }
        size_t n = strlen(src);
        if (n >= cap) {
                snprintf(err, errlen, "%s longer than %zu characters", what, cap - 1);
                return -EINVAL;
        }
        memcpy(dst, src, n + 1);
        return 0;
}

static int meta(const cJSON *obj, char *ns, char *name, size_t name_cap, char *err, size_t errlen)
{
        const cJSON *m = FIELD(obj, "metadata");
        if (!cJSON_IsObject(m)) {
                snprintf(err, errlen, "object without metadata");
                return -EINVAL;
        }
        if (copy_str(name, name_cap, str_at(m, "name"), "metadata.name", err, errlen))
                return -EINVAL;
        const char *n = str_at(m, "namespace");
        return copy_str(ns, DISC_NAME_MAX, n && *n ? n : DISC_DEFAULT_NAMESPACE,
                        "metadata.namespace", err, errlen);
}

static bool port_number(const cJSON *x, uint16_t *out)
{
        if (!cJSON_IsNumber(x) || x->valuedouble < 1 || x->valuedouble > 65535 ||
            x->valuedouble != (double)(int)x->valuedouble)
                return false;
        *out = (uint16_t)x->valuedouble;
        return true;
}

/* The shunt.io/mtls-mode annotation of obj (DEFAULT when absent; a value
 * that is none of strict, permissive, disabled is logged and ignored). */
static enum disc_mtls mode_annotation(const cJSON *obj, const char *kind, const char *ns,
                                      const char *name)
{
        const char *v = str_at(FIELD(FIELD(obj, "metadata"), "annotations"), K8S_ANNOTATION_MODE);
        enum disc_mtls m;
        if (!v)
                return DISC_MTLS_DEFAULT;
        if (disc_mtls_parse(v, &m) == 0)
                return m;
        log_warn(COMP, 0,
                 "kubernetes: %s %s%s%s: annotation " K8S_ANNOTATION_MODE
                 " '%.32s' is not strict, permissive or disabled: ignored",
                 kind, ns, ns[0] ? "/" : "", name, v);
        return DISC_MTLS_DEFAULT;
}

/* ---- Service ------------------------------------------------------------------ */

static int add_vip(struct k8s_svc *s, const char *ip)
{
        if (!ip || !*ip || strcmp(ip, "None") == 0)
                return 0; /* headless */
        struct disc_addr a;
        if (disc_addr_parse(ip, 0, &a))
                return -EINVAL;
        for (uint32_t i = 0; i < s->n_vips; i++) {
                if (memcmp(&s->vips[i], &a, sizeof(a)) == 0)
                        return 0;
        }
        if (s->n_vips < DISC_MAX_VIPS)
                s->vips[s->n_vips++] = a;
        return 0;
}

static int parse_service(const cJSON *obj, struct k8s_svc *s, char *err, size_t errlen)
{
        memset(s, 0, sizeof(*s));
        if (meta(obj, s->ns, s->name, sizeof(s->name), err, errlen))
                return -EINVAL;
        const cJSON *spec = FIELD(obj, "spec");
        if (!cJSON_IsObject(spec)) {
                snprintf(err, errlen, "service %s/%s: no spec", s->ns, s->name);
                return -EINVAL;
        }
        s->mode = mode_annotation(obj, "service", s->ns, s->name);
        const cJSON *ips = FIELD(spec, "clusterIPs"), *ip;
        cJSON_ArrayForEach(ip, (cJSON_IsArray(ips) ? ips : NULL))
        {
                if (!cJSON_IsString(ip) || add_vip(s, ip->valuestring)) {
                        snprintf(err, errlen, "service %s/%s: spec.clusterIPs: not an address",
                                 s->ns, s->name);
                        return -EINVAL;
                }
        }
        if (add_vip(s, str_at(spec, "clusterIP"))) {
                snprintf(err, errlen, "service %s/%s: spec.clusterIP '%s' is not an address", s->ns,
                         s->name, str_at(spec, "clusterIP"));
                return -EINVAL;
        }
        const cJSON *ports = FIELD(spec, "ports"), *p;
        size_t i = 0;
        cJSON_ArrayForEach(p, (cJSON_IsArray(ports) ? ports : NULL))
        {
                if (s->n_ports == DISC_MAX_PORTS) {
                        log_warn(COMP, 0, "kubernetes: service %s/%s: ports beyond %d ignored",
                                 s->ns, s->name, DISC_MAX_PORTS);
                        break;
                }
                const char *proto = str_at(p, "protocol");
                if (proto && strcmp(proto, "TCP") != 0) {
                        i++;
                        continue; /* UDP, SCTP: not proxied */
                }
                struct k8s_svc_port *sp = &s->ports[s->n_ports];
                memset(sp, 0, sizeof(*sp));
                const char *name = str_at(p, "name");
                if (name && strlen(name) >= sizeof(sp->name)) {
                        snprintf(err, errlen, "service %s/%s: spec.ports[%zu].name too long", s->ns,
                                 s->name, i);
                        return -EINVAL;
                }
                snprintf(sp->name, sizeof(sp->name), "%s", name ? name : "");
                if (!port_number(FIELD(p, "port"), &sp->port)) {
                        snprintf(err, errlen, "service %s/%s: spec.ports[%zu].port: not 1..65535",
                                 s->ns, s->name, i);
                        return -EINVAL;
                }
                const cJSON *tp = FIELD(p, "targetPort");
                if (cJSON_IsString(tp)) {
                        if (strlen(tp->valuestring) >= sizeof(sp->target_name)) {
                                snprintf(err, errlen,
                                         "service %s/%s: spec.ports[%zu].targetPort too long",
                                         s->ns, s->name, i);
                                return -EINVAL;
                        }
                        snprintf(sp->target_name, sizeof(sp->target_name), "%s", tp->valuestring);
                } else if (tp && !port_number(tp, &sp->target_num)) {
                        snprintf(err, errlen,
                                 "service %s/%s: spec.ports[%zu].targetPort: not 1..65535", s->ns,
                                 s->name, i);
                        return -EINVAL;
                } else if (!tp) {
                        sp->target_num = sp->port;
                }
                sp->proto = k8s_app_protocol(str_at(p, "appProtocol"));
                s->n_ports++;
                i++;
        }
        return 0;
}

/* ---- EndpointSlice -------------------------------------------------------------- */

static enum disc_health ep_health(const cJSON *cond)
{
        const cJSON *ready = FIELD(cond, "ready"), *term = FIELD(cond, "terminating");
        if (cJSON_IsTrue(term))
                return DISC_HEALTH_DRAINING; /* serving or not: no new connections */
        if (cJSON_IsTrue(ready))
                return DISC_HEALTH_HEALTHY;
        if (cJSON_IsFalse(ready))
                return DISC_HEALTH_UNHEALTHY;
        return DISC_HEALTH_UNKNOWN; /* nil: unknown, routable */
}

static int parse_slice(const cJSON *obj, struct k8s_slice *s, char *err, size_t errlen)
{
        memset(s, 0, sizeof(*s));
        if (meta(obj, s->ns, s->name, sizeof(s->name), err, errlen))
                return -EINVAL;
        const cJSON *labels = FIELD(FIELD(obj, "metadata"), "labels");
        const char *svc = str_at(labels, "kubernetes.io/service-name");
        if (!svc || strlen(svc) >= sizeof(s->svc)) {
                /* not owned by a Service (or a name no Service can have): kept, unused */
                s->svc[0] = '\0';
        } else {
                memcpy(s->svc, svc, strlen(svc) + 1);
        }
        const char *at = str_at(obj, "addressType");
        if (!at) {
                snprintf(err, errlen, "endpointslice %s/%s: no addressType", s->ns, s->name);
                return -EINVAL;
        }
        if (strcmp(at, "IPv4") != 0 && strcmp(at, "IPv6") != 0)
                return 0; /* FQDN: nothing we can route to */
        const cJSON *ports = FIELD(obj, "ports"), *p;
        cJSON_ArrayForEach(p, (cJSON_IsArray(ports) ? ports : NULL))
        {
                if (s->n_ports == SLICE_MAX_PORTS)
                        break;
                const char *proto = str_at(p, "protocol");
                if (proto && strcmp(proto, "TCP") != 0)
                        continue;
                const char *name = str_at(p, "name");
                uint16_t num;
                if (!port_number(FIELD(p, "port"), &num))
                        continue; /* nil port: "all ports", not routable by number */
                if (name && strlen(name) >= DISC_NAME_MAX)
                        continue;
                snprintf(s->ports[s->n_ports].name, DISC_NAME_MAX, "%s", name ? name : "");
                s->ports[s->n_ports++].port = num;
        }
        const cJSON *eps = FIELD(obj, "endpoints"), *e;
        int n = cJSON_IsArray(eps) ? cJSON_GetArraySize(eps) : 0;
        if (n > K8S_MAX_SLICE_ENDPOINTS) {
                snprintf(err, errlen, "endpointslice %s/%s: more than %d endpoints", s->ns, s->name,
                         K8S_MAX_SLICE_ENDPOINTS);
                return -EINVAL;
        }
        size_t cap = 0;
        cJSON_ArrayForEach(e, (n ? eps : NULL))
        {
                const cJSON *addrs = FIELD(e, "addresses");
                cap += cJSON_IsArray(addrs) ? (size_t)cJSON_GetArraySize(addrs) : 0;
        }
        if (cap > 100u * K8S_MAX_SLICE_ENDPOINTS) {
                snprintf(err, errlen, "endpointslice %s/%s: too many addresses", s->ns, s->name);
                return -EINVAL;
        }
        s->eps = cap ? calloc(cap, sizeof(*s->eps)) : NULL;
        if (cap && !s->eps) {
                snprintf(err, errlen, "endpointslice %s/%s: out of memory", s->ns, s->name);
                return -ENOMEM;
        }
        size_t idx = 0;
        cJSON_ArrayForEach(e, (n ? eps : NULL))
        {
                enum disc_health h = ep_health(FIELD(e, "conditions"));
                const char *zone = str_at(e, "zone");
                const cJSON *a, *addrs = FIELD(e, "addresses");
                cJSON_ArrayForEach(a, (cJSON_IsArray(addrs) ? addrs : NULL))
                {
                        struct k8s_slice_ep *ep = &s->eps[s->n_eps];
                        if (!cJSON_IsString(a) || disc_addr_parse(a->valuestring, 0, &ep->addr)) {
                                snprintf(err, errlen,
                                         "endpointslice %s/%s: endpoints[%zu]: address is not an "
                                         "IP literal",
                                         s->ns, s->name, idx);
                                free(s->eps);
                                s->eps = NULL;
                                return -EINVAL;
                        }
                        ep->health = h;
                        const cJSON *ref = FIELD(e, "targetRef");
                        const char *rk = str_at(ref, "kind"), *rn = str_at(ref, "name");
                        const char *ru = str_at(ref, "uid");
                        if (rk && rn && strcmp(rk, "Pod") == 0 && strlen(rn) < sizeof(ep->pod)) {
                                memcpy(ep->pod, rn, strlen(rn) + 1);
                                if (ru && strlen(ru) < sizeof(ep->pod_uid))
                                        memcpy(ep->pod_uid, ru, strlen(ru) + 1);
                        }
                        snprintf(ep->zone, sizeof(ep->zone), "%s",
                                 zone && strlen(zone) < sizeof(ep->zone) ? zone : "");
                        s->n_eps++;
                }
                idx++;
        }
        return 0;
}

/* ---- Pod, Namespace ------------------------------------------------------------- */

static int parse_pod(const cJSON *obj, struct k8s_pod *p, char *err, size_t errlen)
{
        memset(p, 0, sizeof(*p));
        if (meta(obj, p->ns, p->name, sizeof(p->name), err, errlen))
                return -EINVAL;
        const cJSON *md = FIELD(obj, "metadata");
        const char *uid = str_at(md, "uid");
        if (uid && strlen(uid) < sizeof(p->uid))
                memcpy(p->uid, uid, strlen(uid) + 1);
        const char *meshed = str_at(FIELD(md, "labels"), K8S_LABEL_MESHED);
        p->meshed = meshed && strcmp(meshed, "true") == 0;
        p->mode = mode_annotation(obj, "pod", p->ns, p->name);
        const cJSON *spec = FIELD(obj, "spec");
        const char *sa = str_at(spec, "serviceAccountName");
        if (!sa || !*sa)
                sa = str_at(spec, "serviceAccount"); /* the deprecated alias */
        if (!sa || !*sa)
                sa = "default"; /* what the API server's admission sets */
        if (copy_str(p->sa, sizeof(p->sa), sa, "spec.serviceAccountName", err, errlen))
                return -EINVAL;
        const cJSON *status = FIELD(obj, "status");
        const cJSON *ips = FIELD(status, "podIPs"), *ip;
        cJSON_ArrayForEach(ip, (cJSON_IsArray(ips) ? ips : NULL))
        {
                const char *v = str_at(ip, "ip");
                if (v && p->n_ips < K8S_MAX_POD_IPS &&
                    disc_addr_parse(v, 0, &p->ips[p->n_ips]) == 0)
                        p->n_ips++;
        }
        const char *one = str_at(status, "podIP");
        if (!p->n_ips && one && disc_addr_parse(one, 0, &p->ips[0]) == 0)
                p->n_ips = 1;
        return 0;
}

/* ---- the maps -------------------------------------------------------------------- */

static size_t pod_bucket(const char *ns, const char *name)
{
        uint64_t h = 1469598103934665603ull; /* FNV-1a over "ns/name" */
        for (const char *q = ns; *q; q++)
                h = (h ^ (uint8_t)*q) * 1099511628211ull;
        h = (h ^ '/') * 1099511628211ull;
        for (const char *q = name; *q; q++)
                h = (h ^ (uint8_t)*q) * 1099511628211ull;
        return (size_t)(h & (POD_BUCKETS - 1));
}

static struct k8s_pod **pod_slot(const struct k8s_cache *c, const char *ns, const char *name)
{
        struct k8s_pod **pp = &c->pods[pod_bucket(ns, name)];
        while (*pp && (strcmp((*pp)->name, name) || strcmp((*pp)->ns, ns)))
                pp = &(*pp)->next;
        return pp;
}

static const struct k8s_pod *find_pod(const struct k8s_cache *c, const char *ns, const char *name)
{
        return c->pods ? *pod_slot(c, ns, name) : NULL;
}

static int put_pod(struct k8s_cache *c, const struct k8s_pod *p)
{
        if (!c->pods && !(c->pods = calloc(POD_BUCKETS, sizeof(*c->pods))))
                return -ENOMEM;
        struct k8s_pod **pp = pod_slot(c, p->ns, p->name);
        if (*pp) {
                struct k8s_pod *o = *pp;
                /* Most pod events are status churn (conditions, probes):
                 * nothing routing reads changes, so no build. */
                if (strcmp(o->uid, p->uid) || strcmp(o->sa, p->sa) || o->meshed != p->meshed ||
                    o->mode != p->mode || o->n_ips != p->n_ips ||
                    memcmp(o->ips, p->ips, sizeof(o->ips)))
                        c->changes++;
                struct k8s_pod *next = o->next;
                *o = *p;
                o->next = next;
                return 0;
        }
        if (c->n_pods >= K8S_MAX_PODS) {
                /* Shed: its endpoints are not meshed (plaintext, or refused
                 * when strict) until others go. Said once per 1024. */
                if (c->pods_shed++ % 1024 == 0)
                        log_warn(COMP, 0,
                                 "kubernetes: more than %d meshed pods: pod %s/%s not kept (%llu "
                                 "so far); its endpoints are treated as not meshed",
                                 K8S_MAX_PODS, p->ns, p->name, (unsigned long long)c->pods_shed);
                return 0;
        }
        struct k8s_pod *n = malloc(sizeof(*n));
        if (!n)
                return -ENOMEM;
        *n = *p;
        n->next = NULL;
        *pp = n;
        c->n_pods++;
        c->changes++;
        return 0;
}

static void del_pod(struct k8s_cache *c, const char *ns, const char *name)
{
        if (!c->pods)
                return;
        struct k8s_pod **pp = pod_slot(c, ns, name);
        if (*pp) {
                struct k8s_pod *gone = *pp;
                *pp = gone->next;
                free(gone);
                c->n_pods--;
                c->changes++;
        }
}

static struct k8s_ns *find_ns(const struct k8s_cache *c, const char *name)
{
        for (size_t i = 0; i < c->n_nss; i++) {
                if (strcmp(c->nss[i].name, name) == 0)
                        return &c->nss[i];
        }
        return NULL;
}

static struct k8s_svc *find_svc(struct k8s_cache *c, const char *ns, const char *name)
{
        for (size_t i = 0; i < c->n_svcs; i++) {
                if (strcmp(c->svcs[i].name, name) == 0 && strcmp(c->svcs[i].ns, ns) == 0)
                        return &c->svcs[i];
        }
        return NULL;
}

static struct k8s_slice *find_slice(struct k8s_cache *c, const char *ns, const char *name)
{
        for (size_t i = 0; i < c->n_slices; i++) {
                if (strcmp(c->slices[i].name, name) == 0 && strcmp(c->slices[i].ns, ns) == 0)
                        return &c->slices[i];
        }
        return NULL;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
        if (need <= *cap)
                return 0;
        size_t nc = *cap ? *cap * 2 : 16;
        while (nc < need)
                nc *= 2;
        void *p = realloc(*arr, nc * elem);
        if (!p)
                return -ENOMEM;
        *arr = p;
        *cap = nc;
        return 0;
}

static int put_svc(struct k8s_cache *c, const struct k8s_svc *s)
{
        struct k8s_svc *old = find_svc(c, s->ns, s->name);
        if (old) {
                *old = *s;
                return 0;
        }
        if (grow((void **)&c->svcs, &c->cap_svcs, c->n_svcs + 1, sizeof(*c->svcs)))
                return -ENOMEM;
        c->svcs[c->n_svcs++] = *s;
        return 0;
}

static void del_svc(struct k8s_cache *c, const char *ns, const char *name)
{
        struct k8s_svc *old = find_svc(c, ns, name);
        if (old)
                *old = c->svcs[--c->n_svcs];
}

static int put_slice(struct k8s_cache *c, struct k8s_slice *s)
{
        struct k8s_slice *old = find_slice(c, s->ns, s->name);
        if (old) {
                free(old->eps);
                *old = *s;
                return 0;
        }
        if (grow((void **)&c->slices, &c->cap_slices, c->n_slices + 1, sizeof(*c->slices)))
                return -ENOMEM;
        c->slices[c->n_slices++] = *s;
        return 0;
}

static void del_slice(struct k8s_cache *c, const char *ns, const char *name)
{
        struct k8s_slice *old = find_slice(c, ns, name);
        if (old) {
                free(old->eps);
                *old = c->slices[--c->n_slices];
        }
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem);

static int apply_ns(struct k8s_cache *c, const cJSON *obj, bool del, char *err, size_t errlen)
{
        struct k8s_ns n = {0};
        const char *name = str_at(FIELD(obj, "metadata"), "name");
        if (copy_str(n.name, sizeof(n.name), name, "metadata.name", err, errlen))
                return -EINVAL;
        struct k8s_ns *old = find_ns(c, n.name);
        if (del) {
                if (old) {
                        *old = c->nss[--c->n_nss];
                        c->changes++;
                }
                return 0;
        }
        n.mode = mode_annotation(obj, "namespace", "", n.name);
        if (old) {
                c->changes += old->mode != n.mode;
                *old = n;
                return 0;
        }
        c->changes++;
        if (c->n_nss >= K8S_MAX_NAMESPACES) {
                log_warn(COMP, 0, "kubernetes: more than %d namespaces: %s not kept",
                         K8S_MAX_NAMESPACES, n.name);
                return 0;
        }
        if (grow((void **)&c->nss, &c->cap_nss, c->n_nss + 1, sizeof(*c->nss)))
                return -ENOMEM;
        c->nss[c->n_nss++] = n;
        return 0;
}

static int apply_object(struct k8s_cache *c, enum k8s_kind kind, const cJSON *obj, bool del,
                        char *err, size_t errlen)
{
        if (kind == K8S_NAMESPACES)
                return apply_ns(c, obj, del, err, errlen);
        if (k8s_kind_optional(kind)) {
                c->changes++;
                return k8s_route_store_apply(c->routes, kind == K8S_GRPCROUTES, obj, del, err,
                                             errlen);
        }
        if (kind == K8S_PODS) {
                struct k8s_pod p;
                if (del) {
                        if (meta(obj, p.ns, p.name, sizeof(p.name), err, errlen))
                                return -EINVAL;
                        del_pod(c, p.ns, p.name);
                        return 0;
                }
                if (parse_pod(obj, &p, err, errlen))
                        return -EINVAL;
                /* A pod that lost the label arrives as DELETED in a selector
                 * watch; one listed without a selector is kept only when meshed. */
                if (!p.meshed) {
                        del_pod(c, p.ns, p.name);
                        return 0;
                }
                return put_pod(c, &p);
        }
        c->changes++; /* Services and slices: every event counts */
        if (kind == K8S_SERVICES) {
                struct k8s_svc s;
                if (del) {
                        if (meta(obj, s.ns, s.name, sizeof(s.name), err, errlen))
                                return -EINVAL;
                        del_svc(c, s.ns, s.name);
                        return 0;
                }
                if (parse_service(obj, &s, err, errlen))
                        return -EINVAL;
                return put_svc(c, &s);
        }
        struct k8s_slice s;
        if (del) {
                if (meta(obj, s.ns, s.name, sizeof(s.name), err, errlen))
                        return -EINVAL;
                del_slice(c, s.ns, s.name);
                return 0;
        }
        int rc = parse_slice(obj, &s, err, errlen);
        if (rc)
                return rc;
        rc = put_slice(c, &s);
        if (rc)
                free(s.eps);
        return rc;
}

static void object_rv(const cJSON *obj, char *rv)
{
        const char *v = str_at(FIELD(obj, "metadata"), "resourceVersion");
        if (v && strlen(v) < K8S_MAX_RV)
                memcpy(rv, v, strlen(v) + 1);
}

int k8s_list_page_parse(const char *what, const char *body, size_t len, k8s_apply_fn apply,
                        void *arg, char *rv, char *cont, char *err, size_t errlen)
{
        cJSON *root = cJSON_ParseWithLength(body, len);
        const cJSON *items = root ? FIELD(root, "items") : NULL;
        const cJSON *md = root ? FIELD(root, "metadata") : NULL;
        const char *lrv = str_at(md, "resourceVersion");
        const char *lcont = str_at(md, "continue");
        if (!root || !(cJSON_IsArray(items) || cJSON_IsNull(items)) || !lrv ||
            strlen(lrv) >= K8S_MAX_RV || (lcont && strlen(lcont) >= K8S_MAX_CONTINUE)) {
                snprintf(err, errlen, "%s list: %s", what,
                         !root ? "not JSON"
                         : lcont && strlen(lcont) >= K8S_MAX_CONTINUE
                             ? "continue token too long"
                             : "no items or no metadata.resourceVersion");
                cJSON_Delete(root);
                return -EINVAL;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, (cJSON_IsArray(items) ? items : NULL))
        {
                char why[DISC_ERROR_MAX];
                int rc = apply(arg, it, false, why, sizeof(why));
                if (rc == -EINVAL) {
                        log_warn(COMP, 0, "kubernetes: list item skipped: %s", why);
                } else if (rc) {
                        /* out of memory, or a bound of the consumer: the list fails */
                        snprintf(err, errlen, "%s", rc == -ENOMEM ? "out of memory" : why);
                        cJSON_Delete(root);
                        return rc;
                }
        }
        memcpy(rv, lrv, strlen(lrv) + 1);
        snprintf(cont, K8S_MAX_CONTINUE, "%s", lcont ? lcont : "");
        cJSON_Delete(root);
        return 0;
}

struct cache_kind {
        struct k8s_cache *c;
        enum k8s_kind kind;
};

static int cache_apply(void *arg, const cJSON *obj, bool deleted, char *err, size_t errlen)
{
        struct cache_kind *ck = arg;
        return apply_object(ck->c, ck->kind, obj, deleted, err, errlen);
}

int k8s_cache_list_page(struct k8s_cache *staging, enum k8s_kind kind, const char *body, size_t len,
                        char *rv, char *cont, char *err, size_t errlen)
{
        struct cache_kind ck = {staging, kind};
        static const char *const names[K8S__KINDS] = {"services",   "endpointslices", "pods",
                                                      "namespaces", "httproutes",     "grpcroutes"};
        return k8s_list_page_parse(names[kind], body, len, cache_apply, &ck, rv, cont, err, errlen);
}

void k8s_cache_take(struct k8s_cache *c, struct k8s_cache *staging, enum k8s_kind kind)
{
        if (k8s_kind_optional(kind)) {
                k8s_route_store_take(c->routes, staging->routes, kind == K8S_GRPCROUTES);
                c->changes++;
        } else if (kind == K8S_PODS) {
                pods_clear(c);
                c->pods = staging->pods;
                c->n_pods = staging->n_pods;
                c->pods_shed += staging->pods_shed;
                staging->pods = NULL;
                staging->n_pods = 0;
        } else if (kind == K8S_NAMESPACES) {
                free(c->nss);
                c->nss = staging->nss;
                c->n_nss = staging->n_nss;
                c->cap_nss = staging->cap_nss;
                staging->nss = NULL;
                staging->n_nss = staging->cap_nss = 0;
        } else if (kind == K8S_SERVICES) {
                free(c->svcs);
                c->svcs = staging->svcs;
                c->n_svcs = staging->n_svcs;
                c->cap_svcs = staging->cap_svcs;
                staging->svcs = NULL;
                staging->n_svcs = staging->cap_svcs = 0;
        } else {
                slices_clear(c);
                free(c->slices);
                c->slices = staging->slices;
                c->n_slices = staging->n_slices;
                c->cap_slices = staging->cap_slices;
                staging->slices = NULL;
                staging->n_slices = staging->cap_slices = 0;
        }
}

int k8s_cache_list(struct k8s_cache *c, enum k8s_kind kind, const char *body, size_t len, char *rv,
                   char *err, size_t errlen)
{
        /* Parse everything first into a fresh cache, then swap the kind in. */
        struct k8s_cache *fresh = k8s_cache_new();
        char cont[K8S_MAX_CONTINUE], lrv[K8S_MAX_RV];
        if (!fresh) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        int rc = k8s_cache_list_page(fresh, kind, body, len, lrv, cont, err, errlen);
        if (rc == 0) {
                k8s_cache_take(c, fresh, kind);
                memcpy(rv, lrv, strlen(lrv) + 1);
        }
        k8s_cache_free(fresh);
        return rc;
}

enum k8s_event_result k8s_event_parse(const char *line, size_t len, k8s_apply_fn apply, void *arg,
                                      char *rv, char *err, size_t errlen)
{
        cJSON *ev = cJSON_ParseWithLength(line, len);
        enum k8s_event_result res = K8S_EV_BAD;
        const char *type = ev ? str_at(ev, "type") : NULL;
        const cJSON *obj = ev ? FIELD(ev, "object") : NULL;
        if (!ev) {
                snprintf(err, errlen, "watch event is not JSON: %.*s", len < 80 ? (int)len : 80,
                         line); /* the line only: it need not end in a NUL */
        } else if (!type || !cJSON_IsObject(obj)) {
                snprintf(err, errlen, "watch event without type or object");
        } else if (strcmp(type, "BOOKMARK") == 0) {
                object_rv(obj, rv);
                res = K8S_EV_BOOKMARK;
        } else if (strcmp(type, "ERROR") == 0) {
                const cJSON *code = FIELD(obj, "code");
                const char *msg = str_at(obj, "message");
                snprintf(err, errlen, "watch ERROR event: code %d: %s",
                         cJSON_IsNumber(code) ? code->valueint : 0, msg ? msg : "(no message)");
                res = cJSON_IsNumber(code) && code->valueint == 410 ? K8S_EV_GONE : K8S_EV_ERROR;
        } else if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0 ||
                   strcmp(type, "DELETED") == 0) {
                int rc = apply(arg, obj, type[0] == 'D', err, errlen);
                if (rc == 0) {
                        object_rv(obj, rv);
                        res = K8S_EV_APPLIED;
                }
        } else {
                snprintf(err, errlen, "watch event of unknown type '%.32s'", type);
        }
        cJSON_Delete(ev);
        return res;
}

enum k8s_event_result k8s_cache_event(struct k8s_cache *c, enum k8s_kind kind, const char *line,
                                      size_t len, char *rv, char *err, size_t errlen)
{
        struct cache_kind ck = {c, kind};
        return k8s_event_parse(line, len, cache_apply, &ck, rv, err, errlen);
}

/* ---- build ------------------------------------------------------------------------- */

void k8s_specs_free(struct disc_service_spec *svcs, size_t n)
{
        if (!svcs)
                return;
        for (size_t i = 0; i < n; i++) {
                free(svcs[i].endpoints);
                dr_routes_unref(svcs[i].routes);
        }
        free(svcs);
}

static bool slice_port(const struct k8s_slice *sl, const char *name, uint16_t *out)
{
        for (uint32_t i = 0; i < sl->n_ports; i++) {
                if (strcmp(sl->ports[i].name, name) == 0) {
                        *out = sl->ports[i].port;
                        return true;
                }
        }
        return false;
}

static int ep_cmp(const void *a, const void *b)
{
        const struct disc_endpoint_spec *x = a, *y = b;
        return memcmp(&x->addr, &y->addr, sizeof(x->addr));
}

/* Pods by address, for slice endpoints without a targetRef. */
struct pod_ip {
        struct disc_addr addr;
        const struct k8s_pod *pod;
};

static int pod_ip_cmp(const void *a, const void *b)
{
        const struct pod_ip *x = a, *y = b;
        return memcmp(&x->addr, &y->addr, sizeof(x->addr));
}

struct build_ctx {
        const struct k8s_cache *c;
        struct pod_ip *ips;
        size_t n_ips;
};

/* The meshed pod behind a slice endpoint of namespace ns, or NULL: not
 * meshed, not known (yet), or the name now belongs to another pod (uid). */
static const struct k8s_pod *endpoint_pod(const struct build_ctx *bc, const char *ns,
                                          const struct k8s_slice_ep *e)
{
        if (e->pod[0]) {
                const struct k8s_pod *p = find_pod(bc->c, ns, e->pod);
                if (p && e->pod_uid[0] && p->uid[0] && strcmp(p->uid, e->pod_uid) != 0)
                        return NULL;
                return p;
        }
        struct pod_ip key = {.addr = e->addr};
        const struct pod_ip *hit = bsearch(&key, bc->ips, bc->n_ips, sizeof(key), pod_ip_cmp);
        return hit && strcmp(hit->pod->ns, ns) == 0 ? hit->pod : NULL;
}

/* Identity and mode of one endpoint from its pod. */
static void endpoint_identity(const struct build_ctx *bc, const char *ns,
                              const struct k8s_slice_ep *e, struct disc_endpoint_spec *es)
{
        const struct k8s_pod *p = endpoint_pod(bc, ns, e);
        es->unmeshed = true;
        if (!p || !p->meshed)
                return;
        int n = snprintf(es->identity, sizeof(es->identity), "spiffe://%s/ns/%s/sa/%s", bc->c->td,
                         p->ns, p->sa);
        if (n < 0 || (size_t)n >= sizeof(es->identity)) {
                log_warn(COMP, 0,
                         "kubernetes: pod %s/%s: identity longer than %d bytes: not meshed", p->ns,
                         p->name, DISC_IDENTITY_MAX - 1);
                es->identity[0] = '\0';
                return;
        }
        es->unmeshed = false;
        es->mtls = p->mode;
}

/* sls: the slices of this service (same namespace and service name), in
 * slice name order. */
static int build_one(const struct build_ctx *bc, const struct k8s_slice *const *sls, size_t nsl,
                     const struct k8s_svc *ks, struct disc_service_spec *sp)
{
        disc_service_spec_init(sp);
        /* Most specific first: the Service's annotation, else its Namespace's
         * (a Pod's, per endpoint, wins over both). */
        const struct k8s_ns *kn = ks->mode == DISC_MTLS_DEFAULT ? find_ns(bc->c, ks->ns) : NULL;
        sp->mtls = kn ? kn->mode : ks->mode;
        memcpy(sp->name, ks->name, sizeof(sp->name));
        memcpy(sp->ns, ks->ns, sizeof(sp->ns));
        memcpy(sp->vips, ks->vips, sizeof(sp->vips));
        sp->n_vips = ks->n_vips;
        size_t cap = 0;
        for (size_t i = 0; i < nsl; i++)
                cap += (size_t)sls[i]->n_eps * ks->n_ports;
        sp->endpoints = cap ? calloc(cap, sizeof(*sp->endpoints)) : NULL;
        if (cap && !sp->endpoints)
                return -ENOMEM;
        for (uint32_t p = 0; p < ks->n_ports; p++) {
                const struct k8s_svc_port *kp = &ks->ports[p];
                struct disc_port_spec *ps = &sp->ports[sp->n_ports++];
                memcpy(ps->name, kp->name, sizeof(ps->name));
                ps->port = kp->port;
                ps->proto = kp->proto;
                /* The slices name their ports after the Service's ports and
                 * carry the resolved number (also for a named targetPort). The
                 * registry keeps one target port per service port: the first
                 * slice's wins. */
                uint16_t target = kp->target_num;
                bool found = false;
                for (size_t i = 0; i < nsl && !found; i++) {
                        if (sls[i]->n_eps && slice_port(sls[i], kp->name, &target))
                                found = true;
                }
                ps->target_port = target ? target : kp->port;
                if (!found && !kp->target_num)
                        continue; /* named targetPort not resolved yet: no endpoints */
                for (size_t i = 0; i < nsl; i++) {
                        const struct k8s_slice *sl = sls[i];
                        uint16_t num;
                        if (!slice_port(sl, kp->name, &num) || num != ps->target_port)
                                continue;
                        for (uint32_t e = 0; e < sl->n_eps; e++) {
                                struct disc_endpoint_spec es = {0};
                                es.addr = sl->eps[e].addr;
                                es.addr.port = num;
                                es.weight = DISC_DEFAULT_WEIGHT;
                                es.health = sl->eps[e].health;
                                memcpy(es.zone, sl->eps[e].zone, sizeof(es.zone));
                                endpoint_identity(bc, sl->ns, &sl->eps[e], &es);
                                sp->endpoints[sp->n_endpoints++] = es;
                        }
                }
        }
        /* The same endpoint in two slices (during a slice rebalance): keep one. */
        if (sp->n_endpoints > 1) {
                qsort(sp->endpoints, sp->n_endpoints, sizeof(*sp->endpoints), ep_cmp);
                uint32_t w = 1;
                for (uint32_t r = 1; r < sp->n_endpoints; r++) {
                        if (memcmp(&sp->endpoints[r].addr, &sp->endpoints[w - 1].addr,
                                   sizeof(struct disc_addr)) != 0)
                                sp->endpoints[w++] = sp->endpoints[r];
                }
                sp->n_endpoints = w;
        }
        return 0;
}

static int slice_cmp(const void *a, const void *b)
{
        const struct k8s_slice *x = *(const struct k8s_slice *const *)a;
        const struct k8s_slice *y = *(const struct k8s_slice *const *)b;
        int r = strcmp(x->ns, y->ns);
        if (!r)
                r = strcmp(x->svc, y->svc);
        return r ? r : strcmp(x->name, y->name);
}

/* Index of the first slice in sorted idx at or after (ns, svc). */
static size_t slice_lower(const struct k8s_slice *const *idx, size_t n, const char *ns,
                          const char *svc)
{
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int r = strcmp(idx[mid]->ns, ns);
                if (!r)
                        r = strcmp(idx[mid]->svc, svc);
                if (r < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

int k8s_cache_build(struct k8s_cache *c, struct disc_service_spec **out, size_t *n)
{
        struct disc_service_spec *svcs = calloc(c->n_svcs ? c->n_svcs : 1, sizeof(*svcs));
        const struct k8s_slice **idx = calloc(c->n_slices ? c->n_slices : 1, sizeof(*idx));
        if (!svcs || !idx) {
                free(svcs);
                free(idx);
                return -ENOMEM;
        }
        for (size_t i = 0; i < c->n_slices; i++)
                idx[i] = &c->slices[i];
        qsort(idx, c->n_slices, sizeof(*idx), slice_cmp);
        struct build_ctx bc = {.c = c};
        bc.ips = calloc(c->n_pods * K8S_MAX_POD_IPS + 1, sizeof(*bc.ips));
        if (!bc.ips) {
                free(svcs);
                free(idx);
                return -ENOMEM;
        }
        for (size_t b = 0; c->pods && b < POD_BUCKETS; b++) {
                for (const struct k8s_pod *p = c->pods[b]; p; p = p->next) {
                        for (uint32_t k = 0; k < p->n_ips; k++)
                                bc.ips[bc.n_ips++] = (struct pod_ip){.addr = p->ips[k], .pod = p};
                }
        }
        qsort(bc.ips, bc.n_ips, sizeof(*bc.ips), pod_ip_cmp);
        for (size_t i = 0; i < c->n_svcs; i++) {
                const struct k8s_svc *ks = &c->svcs[i];
                size_t lo = slice_lower(idx, c->n_slices, ks->ns, ks->name), hi = lo;
                while (hi < c->n_slices && strcmp(idx[hi]->ns, ks->ns) == 0 &&
                       strcmp(idx[hi]->svc, ks->name) == 0)
                        hi++;
                if (build_one(&bc, idx + lo, hi - lo, ks, &svcs[i])) {
                        k8s_specs_free(svcs, i + 1);
                        free(idx);
                        free(bc.ips);
                        return -ENOMEM;
                }
        }
        free(idx);
        free(bc.ips);
        if (k8s_route_store_attach(c->routes, svcs, c->n_svcs)) {
                k8s_specs_free(svcs, c->n_svcs);
                return -ENOMEM;
        }
        *out = svcs;
        *n = c->n_svcs;
        return 0;
}

void k8s_cache_render_routes(const struct k8s_cache *c, const char *service, struct strbuf *sb)
{
        k8s_route_store_render(c->routes, service, sb);
}

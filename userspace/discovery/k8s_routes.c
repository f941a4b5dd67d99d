// SPDX-License-Identifier: Apache-2.0
/* Gateway API routes from Kubernetes: HTTPRoute and GRPCRoute objects
 * (gateway.networking.k8s.io/v1) whose parentRefs name a Service (the GAMMA
 * mesh profile) translated into the route model's JSON form (routes.h,
 * docs/routes.md), kept per object with the last version that was valid,
 * and merged per Service at each build in the Gateway API's order (oldest
 * creationTimestamp first, then namespace/name). See k8s.h. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/log.h"
#include "discovery/file.h"
#include "discovery/k8s.h"
#include "discovery/routes.h"

#define COMP "discovery"

#define FIELD(o, k) cJSON_GetObjectItemCaseSensitive(o, k)

static const char *str_at(const cJSON *o, const char *k)
{
        const cJSON *x = FIELD(o, k);
        return cJSON_IsString(x) ? x->valuestring : NULL;
}

__attribute__((format(printf, 3, 4))) static int tbad(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

/* ---- translation -------------------------------------------------------------- */

/* A Gateway API Duration: 1 to 4 groups of 1 to 5 digits and a unit (h, m,
 * s, ms), "1h30m", "500ms". 0 or -EINVAL. */
int k8s_gateway_duration_ms(const char *s, uint64_t *ms)
{
        uint64_t total = 0;
        int groups = 0;
        if (!s || !*s)
                return -EINVAL;
        while (*s) {
                uint64_t v = 0;
                int nd = 0;
                for (; isdigit((unsigned char)*s) && nd <= 5; s++, nd++)
                        v = v * 10 + (uint64_t)(*s - '0');
                if (nd == 0 || nd > 5 || ++groups > 4)
                        return -EINVAL;
                uint64_t unit;
                if (s[0] == 'm' && s[1] == 's')
                        unit = 1, s += 2;
                else if (*s == 'h')
                        unit = 3600000, s++;
                else if (*s == 'm')
                        unit = 60000, s++;
                else if (*s == 's')
                        unit = 1000, s++;
                else
                        return -EINVAL;
                total += v * unit;
        }
        *ms = total;
        return 0;
}

/* The Service parentRefs of spec (group "" and kind Service; the defaults
 * are the Gateway's). Others are some gateway controller's: left out. */
static int parse_parents(const cJSON *spec, const char *route_ns, struct k8s_route_parent *out,
                         uint32_t *n, char *err, size_t errlen)
{
        *n = 0;
        const cJSON *prs = FIELD(spec, "parentRefs"), *pr;
        if (!prs)
                return 0;
        if (!cJSON_IsArray(prs))
                return tbad(err, errlen, "spec.parentRefs: expected an array");
        int i = 0;
        cJSON_ArrayForEach(pr, prs)
        {
                const char *group = str_at(pr, "group"), *kind = str_at(pr, "kind");
                if (!cJSON_IsObject(pr))
                        return tbad(err, errlen, "spec.parentRefs[%d]: expected an object", i);
                if (!group)
                        group = "gateway.networking.k8s.io";
                if (!kind)
                        kind = "Gateway";
                if (group[0] || strcmp(kind, "Service") != 0) {
                        i++;
                        continue;
                }
                if (*n == K8S_ROUTE_MAX_PARENTS)
                        return tbad(err, errlen, "spec.parentRefs: more than %d Services",
                                    K8S_ROUTE_MAX_PARENTS);
                struct k8s_route_parent *p = &out[*n];
                memset(p, 0, sizeof(*p));
                const char *name = str_at(pr, "name"), *ns = str_at(pr, "namespace");
                const char *section = str_at(pr, "sectionName");
                if (!name || !*name || strlen(name) >= sizeof(p->name))
                        return tbad(err, errlen,
                                    "spec.parentRefs[%d].name: expected a Service name of 1..%d "
                                    "characters",
                                    i, DISC_NAME_MAX - 1);
                if (ns && (!*ns || strlen(ns) >= sizeof(p->ns)))
                        return tbad(err, errlen,
                                    "spec.parentRefs[%d].namespace: expected 1..%d characters", i,
                                    DISC_NAME_MAX - 1);
                if (section && (!*section || strlen(section) >= sizeof(p->section)))
                        return tbad(err, errlen,
                                    "spec.parentRefs[%d].sectionName: expected a port name of "
                                    "1..%d characters",
                                    i, DISC_NAME_MAX - 1);
                snprintf(p->name, sizeof(p->name), "%s", name);
                snprintf(p->ns, sizeof(p->ns), "%s", ns ? ns : route_ns);
                snprintf(p->section, sizeof(p->section), "%s", section ? section : "");
                const cJSON *port = FIELD(pr, "port");
                if (port) {
                        if (!cJSON_IsNumber(port) || port->valuedouble < 1 ||
                            port->valuedouble > 65535 ||
                            port->valuedouble != (double)(int)port->valuedouble)
                                return tbad(err, errlen,
                                            "spec.parentRefs[%d].port: expected 1..65535", i);
                        p->port = (uint16_t)port->valuedouble;
                }
                (*n)++;
                i++;
        }
        return 0;
}

static int add_dup(cJSON *to, const char *key, const cJSON *v)
{
        cJSON *d = cJSON_Duplicate(v, true);
        if (!d || !cJSON_AddItemToObject(to, key, d)) {
                cJSON_Delete(d);
                return -ENOMEM;
        }
        return 0;
}

/* A backendRef: Service backends in the route's namespace only. */
static int translate_backend(const cJSON *b, const char *route_ns, const char *at, cJSON *o,
                             char *err, size_t errlen)
{
        static const char *const keys[] = {"group", "kind",   "name",    "namespace",
                                           "port",  "weight", "filters", NULL};
        if (!cJSON_IsObject(b))
                return tbad(err, errlen, "%s: expected an object", at);
        for (const cJSON *c = b->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *k = keys; *k && !ok; k++)
                        ok = strcmp(*k, c->string) == 0;
                if (!ok)
                        return tbad(err, errlen, "%s.%s: unknown field", at, c->string);
        }
        const char *group = str_at(b, "group"), *kind = str_at(b, "kind");
        if ((group && group[0]) || (kind && strcmp(kind, "Service") != 0))
                return tbad(err, errlen,
                            "%s: only Service backends (group \"\", kind Service) are "
                            "supported, not %s/%s",
                            at, group ? group : "", kind ? kind : "Service");
        const char *ns = str_at(b, "namespace");
        if (ns && strcmp(ns, route_ns) != 0)
                return tbad(err, errlen,
                            "%s.namespace: a backend in another namespace (%s) needs a "
                            "ReferenceGrant, which shunt does not read: only backends in the "
                            "route's namespace (%s) are allowed",
                            at, ns, route_ns);
        const cJSON *f = FIELD(b, "filters");
        if (f && !(cJSON_IsArray(f) && cJSON_GetArraySize(f) == 0))
                return tbad(err, errlen, "%s.filters: per-backend filters are not supported", at);
        if (!FIELD(b, "port"))
                return tbad(err, errlen, "%s.port: required for a Service backend", at);
        const cJSON *name = FIELD(b, "name");
        if (!name)
                return tbad(err, errlen, "%s.name: required", at);
        if (add_dup(o, "name", name) || add_dup(o, "port", FIELD(b, "port")) ||
            (FIELD(b, "weight") && add_dup(o, "weight", FIELD(b, "weight"))))
                return tbad(err, errlen, "out of memory");
        return 0;
}

static int translate_timeouts(const cJSON *t, const char *at, cJSON *o, char *err, size_t errlen)
{
        if (!cJSON_IsObject(t))
                return tbad(err, errlen, "%s: expected an object", at);
        for (const cJSON *c = t->child; c; c = c->next) {
                bool req = strcmp(c->string, "request") == 0;
                if (!req && strcmp(c->string, "backendRequest") != 0)
                        return tbad(err, errlen, "%s.%s: unknown field", at, c->string);
                uint64_t ms;
                if (!cJSON_IsString(c) || k8s_gateway_duration_ms(c->valuestring, &ms))
                        return tbad(err, errlen,
                                    "%s.%s: expected a Gateway API duration such as \"10s\", "
                                    "\"1m30s\" or \"500ms\"",
                                    at, c->string);
                /* "0s" turns the timeout off: the longest the model takes for
                 * the request, none (the service's) for a try. */
                if (ms == 0 && !req)
                        continue;
                if (ms == 0)
                        ms = DR_TIMEOUT_MAX_MS;
                char v[32];
                snprintf(v, sizeof(v), "%llums", (unsigned long long)ms);
                if (!cJSON_AddStringToObject(o, c->string, v))
                        return tbad(err, errlen, "out of memory");
        }
        return 0;
}

static int translate_filters(const cJSON *fs, bool grpc, const char *at, cJSON *o, char *err,
                             size_t errlen)
{
        if (!cJSON_IsArray(fs))
                return tbad(err, errlen, "%s: expected an array", at);
        cJSON *arr = cJSON_AddArrayToObject(o, "filters");
        if (!arr)
                return tbad(err, errlen, "out of memory");
        int i = 0;
        const cJSON *f;
        cJSON_ArrayForEach(f, fs)
        {
                const char *type = str_at(f, "type");
                if (type && (strcmp(type, "ExtensionRef") == 0 || strcmp(type, "CORS") == 0))
                        return tbad(err, errlen, "%s[%d].type: %s filters are not supported", at, i,
                                    type);
                if (grpc && type &&
                    (strcmp(type, "URLRewrite") == 0 || strcmp(type, "RequestRedirect") == 0))
                        return tbad(err, errlen, "%s[%d].type: a GRPCRoute has no %s filter", at, i,
                                    type);
                cJSON *d = cJSON_Duplicate(f, true);
                if (!d || !cJSON_AddItemToArray(arr, d)) {
                        cJSON_Delete(d);
                        return tbad(err, errlen, "out of memory");
                }
                i++;
        }
        return 0;
}

static int translate_rule(const cJSON *u, bool grpc, const char *route_ns, int k, cJSON *o,
                          char *err, size_t errlen)
{
        char at[96];
        if (!cJSON_IsObject(u))
                return tbad(err, errlen, "spec.rules[%d]: expected an object", k);
        for (const cJSON *c = u->child; c; c = c->next) {
                snprintf(at, sizeof(at), "spec.rules[%d].%s", k, c->string);
                if (strcmp(c->string, "name") == 0 || strcmp(c->string, "matches") == 0 ||
                    (!grpc && strcmp(c->string, "retry") == 0)) {
                        if (add_dup(o, c->string, c))
                                return tbad(err, errlen, "out of memory");
                } else if (strcmp(c->string, "filters") == 0) {
                        if (translate_filters(c, grpc, at, o, err, errlen))
                                return -EINVAL;
                } else if (!grpc && strcmp(c->string, "timeouts") == 0) {
                        cJSON *t = cJSON_AddObjectToObject(o, "timeouts");
                        if (!t)
                                return tbad(err, errlen, "out of memory");
                        if (translate_timeouts(c, at, t, err, errlen))
                                return -EINVAL;
                } else if (strcmp(c->string, "backendRefs") == 0) {
                        if (!cJSON_IsArray(c))
                                return tbad(err, errlen, "%s: expected an array", at);
                        cJSON *arr = cJSON_AddArrayToObject(o, "backendRefs");
                        if (!arr)
                                return tbad(err, errlen, "out of memory");
                        int i = 0;
                        const cJSON *b;
                        cJSON_ArrayForEach(b, c)
                        {
                                char bat[128];
                                snprintf(bat, sizeof(bat), "%s[%d]", at, i++);
                                cJSON *ob = cJSON_CreateObject();
                                if (!ob || !cJSON_AddItemToArray(arr, ob)) {
                                        cJSON_Delete(ob);
                                        return tbad(err, errlen, "out of memory");
                                }
                                if (translate_backend(b, route_ns, bat, ob, err, errlen))
                                        return -EINVAL;
                        }
                } else if (strcmp(c->string, "sessionPersistence") == 0) {
                        return tbad(err, errlen, "%s: not supported", at);
                } else {
                        return tbad(err, errlen, "%s: unknown field", at);
                }
        }
        return 0;
}

/* The route alone through the model's validation, without what depends on
 * other objects (its ports, its backends' existence). */
static int validate_alone(const cJSON *route, const char *ns, const char *name, char *err,
                          size_t errlen)
{
        cJSON *arr = cJSON_CreateArray();
        if (!arr || !cJSON_AddItemReferenceToArray(arr, (cJSON *)route)) {
                cJSON_Delete(arr);
                return tbad(err, errlen, "out of memory");
        }
        struct dr_parse_ctx pc = {.ns = ns, .name = name, .overlaps_allowed = true};
        struct dr_routes *dr = NULL;
        char why[384], rel[192];
        const cJSON *where;
        int rc = dr_routes_parse(arr, &pc, &dr, why, sizeof(why), rel, sizeof(rel), &where);
        dr_routes_unref(dr);
        cJSON_Delete(arr);
        if (rc) {
                /* "[0].rules[1].matches[0]..." is "spec.rules[1].matches[0]...":
                 * the translation keeps every index. */
                const char *p = strncmp(rel, "[0]", 3) == 0 ? rel + 3 : rel;
                return tbad(err, errlen, "spec%s: %s", p, why);
        }
        return 0;
}

int k8s_route_translate(const cJSON *obj, bool grpc, cJSON **out, struct k8s_route_parent *parents,
                        uint32_t *n_parents, char *err, size_t errlen)
{
        *out = NULL;
        *n_parents = 0;
        const cJSON *md = FIELD(obj, "metadata");
        const char *name = str_at(md, "name"), *ns = str_at(md, "namespace");
        if (!name || !*name)
                return tbad(err, errlen, "metadata.name: missing");
        if (!ns || !*ns)
                ns = DISC_DEFAULT_NAMESPACE;
        const cJSON *spec = FIELD(obj, "spec");
        if (!cJSON_IsObject(spec))
                return tbad(err, errlen, "spec: missing");
        if (parse_parents(spec, ns, parents, n_parents, err, errlen))
                return -EINVAL;
        if (*n_parents == 0)
                return 0; /* a Gateway's route: not the mesh's */
        if (strlen(name) >= DR_NAME_MAX)
                return tbad(err, errlen,
                            "metadata.name: longer than %d characters, the longest route name "
                            "shunt keeps",
                            DR_NAME_MAX - 1);
        for (const cJSON *c = spec->child; c; c = c->next)
                if (strcmp(c->string, "parentRefs") && strcmp(c->string, "hostnames") &&
                    strcmp(c->string, "rules"))
                        return tbad(err, errlen, "spec.%s: unknown field", c->string);
        cJSON *r = cJSON_CreateObject();
        cJSON *rules = r ? cJSON_AddArrayToObject(r, "rules") : NULL;
        if (!rules || !cJSON_AddStringToObject(r, "name", name) ||
            !cJSON_AddStringToObject(r, "kind", grpc ? "GRPCRoute" : "HTTPRoute")) {
                cJSON_Delete(r);
                return tbad(err, errlen, "out of memory");
        }
        const cJSON *in = FIELD(spec, "rules"), *u;
        int rc = 0;
        if (in && !cJSON_IsArray(in)) {
                rc = tbad(err, errlen, "spec.rules: expected an array");
        } else if (!in || cJSON_GetArraySize(in) == 0) {
                /* HTTPRoute's default, one rule matching every request;
                 * the same for a GRPCRoute without rules: the service itself. */
                cJSON *one = cJSON_CreateObject();
                if (!one || !cJSON_AddItemToArray(rules, one)) {
                        cJSON_Delete(one);
                        rc = tbad(err, errlen, "out of memory");
                }
        } else {
                int k = 0;
                cJSON_ArrayForEach(u, in)
                {
                        cJSON *o = cJSON_CreateObject();
                        if (!o || !cJSON_AddItemToArray(rules, o)) {
                                cJSON_Delete(o);
                                rc = tbad(err, errlen, "out of memory");
                                break;
                        }
                        if ((rc = translate_rule(u, grpc, ns, k++, o, err, errlen)))
                                break;
                }
        }
        if (!rc)
                rc = validate_alone(r, ns, name, err, errlen);
        if (rc) {
                cJSON_Delete(r);
                return -EINVAL;
        }
        *out = r;
        return 0;
}

/* ---- the objects ----------------------------------------------------------------- */

struct k8s_route {
        bool grpc;
        char ns[DISC_NAME_MAX];
        char name[K8S_MAX_OBJECT_NAME];
        char created[48]; /* metadata.creationTimestamp: RFC 3339 UTC, sorts as text */
        char rv[K8S_MAX_RV];
        cJSON *good; /* the translated version in force, NULL: none */
        char good_rv[K8S_MAX_RV];
        struct k8s_route_parent *parents; /* good's Service parents */
        uint32_t n_parents;
        char err[K8S_ROUTE_ERR_MAX];       /* why the current version is refused, "" */
        char build_err[K8S_ROUTE_ERR_MAX]; /* why the last build left it out, "" */
        char logged[K8S_ROUTE_ERR_MAX];    /* the last problem logged (once each) */
};

struct k8s_route_store {
        struct k8s_route *v;
        size_t n, cap;
};

struct k8s_route_store *k8s_route_store_new(void)
{
        return calloc(1, sizeof(struct k8s_route_store));
}

static void route_clear(struct k8s_route *r)
{
        cJSON_Delete(r->good);
        free(r->parents);
        r->good = NULL;
        r->parents = NULL;
        r->n_parents = 0;
}

void k8s_route_store_free(struct k8s_route_store *s)
{
        if (!s)
                return;
        for (size_t i = 0; i < s->n; i++)
                route_clear(&s->v[i]);
        free(s->v);
        free(s);
}

size_t k8s_route_store_count(const struct k8s_route_store *s, bool grpc)
{
        size_t n = 0;
        for (size_t i = 0; s && i < s->n; i++)
                n += s->v[i].grpc == grpc;
        return n;
}

static struct k8s_route *find_route(struct k8s_route_store *s, bool grpc, const char *ns,
                                    const char *name)
{
        for (size_t i = 0; i < s->n; i++)
                if (s->v[i].grpc == grpc && strcmp(s->v[i].ns, ns) == 0 &&
                    strcmp(s->v[i].name, name) == 0)
                        return &s->v[i];
        return NULL;
}

static void del_route(struct k8s_route_store *s, struct k8s_route *r)
{
        route_clear(r);
        *r = s->v[--s->n];
}

static const char *kind_of(const struct k8s_route *r)
{
        return r->grpc ? "GRPCRoute" : "HTTPRoute";
}

/* Logs r's problem once (each new text once). */
static void log_problem(struct k8s_route *r)
{
        const char *p = r->err[0] ? r->err : r->build_err;
        if (!p[0])
                r->logged[0] = '\0'; /* the next problem is news again */
        if (!p[0] || strcmp(p, r->logged) == 0)
                return;
        snprintf(r->logged, sizeof(r->logged), "%s", p);
        if (r->err[0])
                log_error(COMP, 0,
                          "kubernetes: %s %s/%s (resourceVersion %s) cannot be applied: %s; %s%s%s",
                          kind_of(r), r->ns, r->name, r->rv, r->err,
                          r->good ? "resourceVersion " : "it is ignored", r->good ? r->good_rv : "",
                          r->good ? " stays in force" : "");
        else
                log_error(COMP, 0, "kubernetes: %s %s/%s (resourceVersion %s) is ignored: %s",
                          kind_of(r), r->ns, r->name, r->good_rv, r->build_err);
}

int k8s_route_store_apply(struct k8s_route_store *s, bool grpc, const cJSON *obj, bool deleted,
                          char *err, size_t errlen)
{
        const cJSON *md = FIELD(obj, "metadata");
        const char *name = str_at(md, "name"), *ns = str_at(md, "namespace");
        const char *rv = str_at(md, "resourceVersion"), *created = str_at(md, "creationTimestamp");
        if (!name || !*name || strlen(name) >= K8S_MAX_OBJECT_NAME)
                return tbad(err, errlen, "%s without a usable metadata.name",
                            grpc ? "GRPCRoute" : "HTTPRoute");
        if (!ns || !*ns)
                ns = DISC_DEFAULT_NAMESPACE;
        if (strlen(ns) >= DISC_NAME_MAX)
                return tbad(err, errlen, "%s %s: metadata.namespace too long",
                            grpc ? "GRPCRoute" : "HTTPRoute", name);
        struct k8s_route *r = find_route(s, grpc, ns, name);
        if (deleted) {
                if (r)
                        del_route(s, r);
                return 0;
        }
        struct k8s_route_parent *parents = calloc(K8S_ROUTE_MAX_PARENTS, sizeof(*parents));
        if (!parents)
                return -ENOMEM;
        uint32_t np = 0;
        cJSON *tr = NULL;
        char why[K8S_ROUTE_ERR_MAX];
        int rc = k8s_route_translate(obj, grpc, &tr, parents, &np, why, sizeof(why));
        if (rc == 0 && !tr) { /* no Service parent: not the mesh's (or no longer) */
                free(parents);
                if (r)
                        del_route(s, r);
                return 0;
        }
        if (!r) {
                if (s->n == s->cap) {
                        size_t nc = s->cap ? s->cap * 2 : 16;
                        struct k8s_route *v = realloc(s->v, nc * sizeof(*v));
                        if (!v) {
                                free(parents);
                                cJSON_Delete(tr);
                                return -ENOMEM;
                        }
                        s->v = v;
                        s->cap = nc;
                }
                r = &s->v[s->n++];
                memset(r, 0, sizeof(*r));
                r->grpc = grpc;
                snprintf(r->ns, sizeof(r->ns), "%s", ns);
                snprintf(r->name, sizeof(r->name), "%s", name);
        }
        snprintf(r->rv, sizeof(r->rv), "%s", rv && strlen(rv) < K8S_MAX_RV ? rv : "");
        snprintf(r->created, sizeof(r->created), "%s",
                 created && strlen(created) < sizeof(r->created) ? created : "");
        if (rc) {
                /* the last good version (if any) stays in force; without one,
                 * the parents say where it was meant to go (/routes) */
                if (!r->good) {
                        free(r->parents);
                        r->parents = parents;
                        r->n_parents = np;
                } else {
                        free(parents);
                }
                snprintf(r->err, sizeof(r->err), "%s", why);
                return 0; /* logged by the next build, which knows what stays in force */
        }
        route_clear(r);
        r->good = tr;
        r->parents = parents;
        r->n_parents = np;
        snprintf(r->good_rv, sizeof(r->good_rv), "%s", r->rv);
        r->err[0] = '\0';
        return 0;
}

void k8s_route_store_take(struct k8s_route_store *s, struct k8s_route_store *staging, bool grpc)
{
        /* A refused object keeps the good version the old list had. */
        for (size_t i = 0; i < staging->n; i++) {
                struct k8s_route *nr = &staging->v[i];
                if (nr->grpc != grpc)
                        continue;
                struct k8s_route *old = find_route(s, grpc, nr->ns, nr->name);
                if (!old)
                        continue;
                snprintf(nr->logged, sizeof(nr->logged), "%s", old->logged);
                snprintf(nr->build_err, sizeof(nr->build_err), "%s", old->build_err);
                if (!nr->good && old->good) {
                        free(nr->parents);
                        nr->good = old->good;
                        nr->parents = old->parents;
                        nr->n_parents = old->n_parents;
                        memcpy(nr->good_rv, old->good_rv, sizeof(nr->good_rv));
                        old->good = NULL;
                        old->parents = NULL;
                }
        }
        for (size_t i = 0; i < s->n;) {
                if (s->v[i].grpc == grpc)
                        del_route(s, &s->v[i]);
                else
                        i++;
        }
        for (size_t i = 0; i < staging->n;) {
                struct k8s_route *nr = &staging->v[i];
                if (nr->grpc != grpc) {
                        i++;
                        continue;
                }
                if (s->n == s->cap) {
                        size_t nc = s->cap ? s->cap * 2 : 16;
                        struct k8s_route *v = realloc(s->v, nc * sizeof(*v));
                        if (!v) { /* dropped: the next change or relist brings it */
                                del_route(staging, nr);
                                continue;
                        }
                        s->v = v;
                        s->cap = nc;
                }
                s->v[s->n++] = *nr;
                *nr = staging->v[--staging->n];
        }
}

/* ---- the build ------------------------------------------------------------------ */

static int route_order(const void *a, const void *b)
{
        const struct k8s_route *x = *(const struct k8s_route *const *)a;
        const struct k8s_route *y = *(const struct k8s_route *const *)b;
        int c = strcmp(x->created, y->created);
        if (!c)
                c = strcmp(x->ns, y->ns);
        if (!c)
                c = strcmp(x->name, y->name);
        return c ? c : (int)x->grpc - (int)y->grpc;
}

struct cand {
        struct k8s_route *r;
        cJSON *json; /* the route with its port (and its name) for this service */
};

/* The routes of r for service sp (one per parentRef naming it); adds to
 * cands. A parentRef that cannot attach sets r->build_err. */
static void candidates(struct k8s_route *r, const struct disc_service_spec *sp, struct cand *cands,
                       size_t *nc, size_t cap)
{
        uint32_t mine = 0;
        for (uint32_t i = 0; i < r->n_parents; i++)
                mine += strcmp(r->parents[i].ns, sp->ns) == 0 &&
                        strcmp(r->parents[i].name, sp->name) == 0;
        for (uint32_t i = 0; i < r->n_parents; i++) {
                const struct k8s_route_parent *p = &r->parents[i];
                if (strcmp(p->ns, sp->ns) || strcmp(p->name, sp->name))
                        continue;
                if (strcmp(p->ns, r->ns) != 0) {
                        snprintf(r->build_err, sizeof(r->build_err),
                                 "service %s/%s: a route from another namespace (a consumer "
                                 "route) is not supported: only routes in the Service's "
                                 "namespace apply",
                                 sp->ns, sp->name);
                        continue;
                }
                uint16_t port = p->port;
                if (p->section[0]) {
                        uint16_t named = 0;
                        for (uint32_t k = 0; k < sp->n_ports; k++)
                                if (strcmp(sp->ports[k].name, p->section) == 0)
                                        named = sp->ports[k].port;
                        if (!named || (port && port != named)) {
                                snprintf(r->build_err, sizeof(r->build_err),
                                         "service %s/%s: parentRefs sectionName '%s'%s is not a "
                                         "port name of the service",
                                         sp->ns, sp->name, p->section,
                                         named ? " (with that port)" : "");
                                continue;
                        }
                        port = named;
                }
                if (*nc == cap) {
                        snprintf(r->build_err, sizeof(r->build_err),
                                 "service %s/%s: more than %d routes attach to it", sp->ns,
                                 sp->name, DR_MAX_ROUTES);
                        continue;
                }
                cJSON *j = cJSON_Duplicate(r->good, true);
                if (!j)
                        continue;
                if (port)
                        cJSON_AddNumberToObject(j, "port", port);
                if (mine > 1) { /* one model route per port: "name:port" */
                        char nm[K8S_MAX_OBJECT_NAME + 8];
                        snprintf(nm, sizeof(nm), "%s:%u", r->name, port);
                        if (strlen(nm) >= DR_NAME_MAX) {
                                snprintf(r->build_err, sizeof(r->build_err),
                                         "service %s/%s: a route on several ports of one "
                                         "service needs a name shorter than %d characters",
                                         sp->ns, sp->name, DR_NAME_MAX - 7);
                                cJSON_Delete(j);
                                continue;
                        }
                        cJSON_ReplaceItemInObjectCaseSensitive(j, "name", cJSON_CreateString(nm));
                }
                cands[(*nc)++] = (struct cand){r, j};
        }
}

static int parse_set(const struct cand *cs, size_t n, const struct dr_parse_ctx *pc,
                     struct dr_routes **out, char *why, size_t whylen, long *bad_index)
{
        cJSON *arr = cJSON_CreateArray();
        for (size_t i = 0; arr && i < n; i++)
                if (!cJSON_AddItemReferenceToArray(arr, cs[i].json)) {
                        cJSON_Delete(arr);
                        arr = NULL;
                }
        if (!arr) {
                snprintf(why, whylen, "out of memory");
                *bad_index = -1;
                return -ENOMEM;
        }
        char rel[192], msg[384];
        const cJSON *where;
        int rc = dr_routes_parse(arr, pc, out, msg, sizeof(msg), rel, sizeof(rel), &where);
        cJSON_Delete(arr);
        if (rc) {
                char *end;
                *bad_index = rel[0] == '[' ? strtol(rel + 1, &end, 10) : -1;
                const char *tail = *bad_index >= 0 ? strchr(rel, ']') + 1 : rel;
                snprintf(why, whylen, "spec%.120s: %.300s", tail, msg);
        }
        return rc;
}

int k8s_route_store_attach(struct k8s_route_store *s, struct disc_service_spec *svcs, size_t n)
{
        for (size_t i = 0; i < s->n; i++)
                s->v[i].build_err[0] = '\0';
        struct k8s_route **order = calloc(s->n ? s->n : 1, sizeof(*order));
        struct cand *cands = calloc(DR_MAX_ROUTES, sizeof(*cands));
        if (!order || !cands) {
                free(order);
                free(cands);
                return -ENOMEM;
        }
        size_t no = 0;
        for (size_t i = 0; i < s->n; i++)
                if (s->v[i].good)
                        order[no++] = &s->v[i];
        qsort(order, no, sizeof(*order), route_order);
        struct disc_specs all = {svcs, n};
        for (size_t i = 0; i < n && no; i++) {
                struct disc_service_spec *sp = &svcs[i];
                size_t nc = 0;
                for (size_t k = 0; k < no; k++)
                        candidates(order[k], sp, cands, &nc, DR_MAX_ROUTES);
                if (!nc)
                        continue;
                uint16_t ports[DISC_MAX_PORTS];
                struct dr_parse_ctx pc;
                disc_specs_route_ctx(&all, sp, ports, &pc);
                pc.overlaps_allowed = true;
                char why[K8S_ROUTE_ERR_MAX];
                long bad;
                /* Each alone (its ports, its backends), then together (bounds
                 * over all of them): one that fails is left out, the rest
                 * apply. At most nc rounds. */
                for (size_t k = 0; k < nc;) {
                        struct dr_routes *dr = NULL;
                        if (parse_set(&cands[k], 1, &pc, &dr, why, sizeof(why), &bad) == 0) {
                                dr_routes_unref(dr);
                                k++;
                                continue;
                        }
                        snprintf(cands[k].r->build_err, sizeof(cands[k].r->build_err),
                                 "service %s/%s: %.360s", sp->ns, sp->name, why);
                        cJSON_Delete(cands[k].json);
                        memmove(&cands[k], &cands[k + 1], (nc - k - 1) * sizeof(*cands));
                        nc--;
                }
                while (nc) {
                        struct dr_routes *dr = NULL;
                        int rc = parse_set(cands, nc, &pc, &dr, why, sizeof(why), &bad);
                        if (rc == 0) {
                                dr_routes_unref(sp->routes);
                                sp->routes = dr;
                                break;
                        }
                        size_t k = bad >= 0 && (size_t)bad < nc ? (size_t)bad : nc - 1;
                        snprintf(cands[k].r->build_err, sizeof(cands[k].r->build_err),
                                 "service %s/%s: %.360s", sp->ns, sp->name, why);
                        cJSON_Delete(cands[k].json);
                        memmove(&cands[k], &cands[k + 1], (nc - k - 1) * sizeof(*cands));
                        nc--;
                }
                for (size_t k = 0; k < nc; k++)
                        cJSON_Delete(cands[k].json);
        }
        free(cands);
        free(order);
        for (size_t i = 0; i < s->n; i++)
                log_problem(&s->v[i]);
        return 0;
}

void k8s_route_store_render(const struct k8s_route_store *s, const char *service, struct strbuf *sb)
{
        strbuf_append(sb, "[");
        bool first = true;
        for (size_t i = 0; s && i < s->n; i++) {
                const struct k8s_route *r = &s->v[i];
                if (!r->err[0] && !r->build_err[0])
                        continue;
                if (service) {
                        bool match = false;
                        for (uint32_t k = 0; k < r->n_parents && !match; k++) {
                                char full[2 * DISC_NAME_MAX + 2];
                                snprintf(full, sizeof(full), "%s/%s", r->parents[k].ns,
                                         r->parents[k].name);
                                match = strcmp(full, service) == 0 ||
                                        strcmp(r->parents[k].name, service) == 0;
                        }
                        if (!match)
                                continue;
                }
                strbuf_appendf(sb, "%s{\"kind\":\"%s\",\"namespace\":", first ? "" : ",",
                               kind_of(r));
                first = false;
                strbuf_append_json_string(sb, r->ns);
                strbuf_append(sb, ",\"name\":");
                strbuf_append_json_string(sb, r->name);
                strbuf_append(sb, ",\"resource_version\":");
                strbuf_append_json_string(sb, r->rv);
                strbuf_append(sb, ",\"error\":");
                strbuf_append_json_string(sb, r->err[0] ? r->err : r->build_err);
                strbuf_append(sb, ",\"in_force\":");
                if (r->good && !r->build_err[0])
                        strbuf_append_json_string(sb, r->good_rv);
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
}

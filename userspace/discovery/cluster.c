// SPDX-License-Identifier: Apache-2.0
/* service_discovery.clusters: one backend and private registry per cluster,
 * merged into the daemon's registry (see cluster.h). */
#include "discovery/cluster.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/log.h"

#define COMP "clusters"

struct fed_cluster {
        char name[DISC_NAME_MAX];
        char region[DISC_NAME_MAX];
        char zone[DISC_NAME_MAX];
        char type[16];
        int priority;
        struct shunt_config *cfg; /* the daemon's, with this cluster's settings */
        struct disc_registry *priv;
        struct disc_backend *b;
        int src; /* in the daemon's registry */
        uint64_t version_seen;
        bool stale_seen;
        bool synced;
        uint32_t n_services, n_endpoints, conflicts;
};

struct fed {
        struct disc_registry *reg;
        struct loop *loop;
        struct loop_timer timer;
        struct fed_cluster c[CLUSTER_MAX];
        uint32_t n;
        uint32_t order[CLUSTER_MAX]; /* by priority, then as listed */
        uint64_t merges;
        uint32_t conflicts; /* in the last merge */
        uint64_t conflicts_seen;
        char last_conflict[DISC_ERROR_MAX];
};

/* ---- configuration ------------------------------------------------------- */

static int bad(char *err, size_t errlen, size_t i, const char *what)
{
        snprintf(err, errlen, "config: service_discovery.clusters[%zu]: %s", i, what);
        return -EINVAL;
}

static bool keys_ok(const cJSON *o, const char *const *allowed, char *which, size_t len)
{
        for (const cJSON *c = o->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *a = allowed; *a; a++)
                        ok |= strcmp(*a, c->string) == 0;
                for (const cJSON *d = o->child; ok && d != c; d = d->next)
                        ok = strcmp(d->string, c->string) != 0;
                if (!ok) {
                        snprintf(which, len, "%s", c->string);
                        return false;
                }
        }
        return true;
}

/* Copies string key k of o into out (cap bytes). 0, or -EINVAL with err. */
static int str_key(const cJSON *o, const char *k, char *out, size_t cap, char *err, size_t errlen,
                   size_t i, const char *where)
{
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
        if (!x)
                return 0;
        char what[160];
        if (!cJSON_IsString(x) || strlen(x->valuestring) >= cap) {
                snprintf(what, sizeof(what), "%s%s: expected a string of at most %zu bytes", where,
                         k, cap - 1);
                return bad(err, errlen, i, what);
        }
        snprintf(out, cap, "%s", x->valuestring);
        return 0;
}

static bool label_ok(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n > 48 || s[0] == '-' || s[n - 1] == '-')
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
                        return false;
        return true;
}

/* The cluster's type settings onto its copy of the configuration. */
static int type_settings(struct fed_cluster *c, const cJSON *o, size_t i, char *err, size_t errlen)
{
        struct shunt_config *k = c->cfg;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, c->type);
        char which[DISC_NAME_MAX], what[256];
        static const char *const k8s_keys[] = {"kubeconfig_path", "namespace", "label_selector",
                                               NULL};
        static const char *const consul_keys[] = {"address",    "token",   "token_file",
                                                  "datacenter", "ca_file", "cert_file",
                                                  "key_file",   NULL};
        static const char *const file_keys[] = {"path", NULL};
        const char *const *allowed = strcmp(c->type, "kubernetes") == 0 ? k8s_keys
                                     : strcmp(c->type, "consul") == 0   ? consul_keys
                                                                        : file_keys;
        if (t && !cJSON_IsObject(t)) {
                snprintf(what, sizeof(what), "%s: expected an object", c->type);
                return bad(err, errlen, i, what);
        }
        if (t && !keys_ok(t, allowed, which, sizeof(which))) {
                snprintf(what, sizeof(what), "%s.%s: unknown or repeated key", c->type, which);
                return bad(err, errlen, i, what);
        }
        /* nothing of the daemon's own single registry leaks into a cluster */
        k->k8s_kubeconfig[0] = k->k8s_label_selector[0] = '\0';
        snprintf(k->k8s_namespace, sizeof(k->k8s_namespace), "default");
        k->sd_file_path[0] = k->consul_token[0] = k->consul_token_file[0] = '\0';
        k->consul_ca_file[0] = k->consul_cert_file[0] = k->consul_key_file[0] = '\0';
        snprintf(k->consul_address, sizeof(k->consul_address), "localhost:8500");
        snprintf(k->consul_datacenter, sizeof(k->consul_datacenter), "dc1");
        char where[32];
        snprintf(where, sizeof(where), "%s.", c->type);
#define S(key, field) str_key(t, key, k->field, sizeof(k->field), err, errlen, i, where)
        if (!t)
                return 0;
        if (strcmp(c->type, "kubernetes") == 0)
                return S("kubeconfig_path", k8s_kubeconfig) || S("namespace", k8s_namespace) ||
                               S("label_selector", k8s_label_selector)
                           ? -EINVAL
                           : 0;
        if (strcmp(c->type, "consul") == 0)
                return S("address", consul_address) || S("token", consul_token) ||
                               S("token_file", consul_token_file) ||
                               S("datacenter", consul_datacenter) || S("ca_file", consul_ca_file) ||
                               S("cert_file", consul_cert_file) || S("key_file", consul_key_file)
                           ? -EINVAL
                           : 0;
        return S("path", sd_file_path) ? -EINVAL : 0;
#undef S
}

static int parse_cluster(struct fed *f, const cJSON *o, size_t i, const struct shunt_config *cfg,
                         char *err, size_t errlen)
{
        static const char *const keys[] = {"name",         "region", "zone", "priority",
                                           "trust_domain", "type",   "file", "kubernetes",
                                           "consul",       NULL};
        char which[DISC_NAME_MAX], what[256];
        if (!cJSON_IsObject(o))
                return bad(err, errlen, i, "expected an object");
        if (!keys_ok(o, keys, which, sizeof(which))) {
                snprintf(what, sizeof(what),
                         "%s: unknown or repeated key (allowed: name, region, zone, priority, "
                         "trust_domain, type, file, kubernetes, consul)",
                         which);
                return bad(err, errlen, i, what);
        }
        struct fed_cluster *c = &f->c[i];
        c->priority = CLUSTER_PRIORITY_DEFAULT;
        c->src = -1;
        if (!(c->cfg = config_clone(cfg)))
                return bad(err, errlen, i, "out of memory");
        free(c->cfg->sd_clusters);
        c->cfg->sd_clusters = NULL;
        free(c->cfg->dns_services);
        c->cfg->dns_services = NULL;
        c->cfg->dns_fallback = 0;
        char td[CONFIG_STR_MAX] = "";
        if (str_key(o, "name", c->name, sizeof(c->name), err, errlen, i, "") ||
            str_key(o, "region", c->region, sizeof(c->region), err, errlen, i, "") ||
            str_key(o, "zone", c->zone, sizeof(c->zone), err, errlen, i, "") ||
            str_key(o, "type", c->type, sizeof(c->type), err, errlen, i, "") ||
            str_key(o, "trust_domain", td, sizeof(td), err, errlen, i, ""))
                return -EINVAL;
        if (!label_ok(c->name)) {
                snprintf(what, sizeof(what),
                         "name: '%s' is not a lower-case DNS label of at most 48 bytes (a-z, "
                         "0-9, '-')",
                         c->name);
                return bad(err, errlen, i, what);
        }
        for (uint32_t k = 0; k < i; k++)
                if (strcmp(f->c[k].name, c->name) == 0) {
                        snprintf(what, sizeof(what), "name: '%s' is used by clusters[%u]", c->name,
                                 k);
                        return bad(err, errlen, i, what);
                }
        if (strcmp(c->type, "kubernetes") && strcmp(c->type, "consul") && strcmp(c->type, "file")) {
                snprintf(what, sizeof(what), "type: '%s' is not file, kubernetes or consul",
                         c->type);
                return bad(err, errlen, i, what);
        }
        snprintf(c->cfg->sd_type, sizeof(c->cfg->sd_type), "%s", c->type);
        if (td[0])
                snprintf(c->cfg->trust_domain, sizeof(c->cfg->trust_domain), "%s", td);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "priority");
        if (p) {
                if (!cJSON_IsNumber(p) || p->valuedouble != (double)(int)p->valuedouble ||
                    p->valuedouble < 0 || p->valuedouble > 1000)
                        return bad(err, errlen, i, "priority: expected an integer 0..1000");
                c->priority = (int)p->valuedouble;
        }
        for (const char *t = "file\0kubernetes\0consul\0"; *t; t += strlen(t) + 1)
                if (strcmp(t, c->type) && cJSON_GetObjectItemCaseSensitive(o, t)) {
                        snprintf(what, sizeof(what), "%s: settings of another type than '%s'", t,
                                 c->type);
                        return bad(err, errlen, i, what);
                }
        return type_settings(c, o, i, err, errlen);
}

/* ---- merging ------------------------------------------------------------- */

struct merged {
        const struct disc_service *def; /* the winner's */
        uint32_t winner;                /* cluster index */
        struct disc_addr vips[DISC_MAX_VIPS];
        uint32_t n_vips;
};

static bool same_ports(const struct disc_service *a, const struct disc_service *b)
{
        if (a->n_ports != b->n_ports)
                return false;
        for (uint32_t i = 0; i < a->n_ports; i++)
                if (a->ports[i].port != b->ports[i].port ||
                    a->ports[i].target_port != b->ports[i].target_port ||
                    a->ports[i].proto != b->ports[i].proto)
                        return false;
        return true;
}

static void spec_from(const struct merged *m, struct disc_service_spec *s)
{
        const struct disc_service *d = m->def;
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof(s->name), "%s", d->name);
        snprintf(s->ns, sizeof(s->ns), "%s", d->ns);
        snprintf(s->identity, sizeof(s->identity), "%s", d->identity);
        snprintf(s->hash_key, sizeof(s->hash_key), "%s", d->hash_key);
        s->mtls = d->mtls;
        s->lb = d->lb;
        s->hc = d->hc;
        memcpy(s->vips, m->vips, m->n_vips * sizeof(m->vips[0]));
        s->n_vips = m->n_vips;
        for (uint32_t p = 0; p < d->n_ports && p < DISC_MAX_PORTS; p++) {
                snprintf(s->ports[p].name, sizeof(s->ports[p].name), "%s", d->ports[p].name);
                s->ports[p].port = d->ports[p].port;
                s->ports[p].target_port = d->ports[p].target_port;
                s->ports[p].proto = d->ports[p].proto;
                s->n_ports++;
        }
}

static void ep_from(const struct fed_cluster *c, const struct disc_endpoint *ep,
                    struct disc_endpoint_spec *e)
{
        memset(e, 0, sizeof(*e));
        e->addr = ep->addr;
        e->weight = ep->weight;
        e->health = ep->health;
        snprintf(e->zone, sizeof(e->zone), "%s", ep->zone[0] ? ep->zone : c->zone);
        snprintf(e->region, sizeof(e->region), "%s", ep->region[0] ? ep->region : c->region);
        snprintf(e->identity, sizeof(e->identity), "%s", ep->identity);
        e->unmeshed = !ep->meshed;
        e->mtls = ep->mtls;
        snprintf(e->labels, sizeof(e->labels), "%s", ep->labels);
        snprintf(e->cluster, sizeof(e->cluster), "%s", c->name);
}

static void conflict(struct fed *f, const struct fed_cluster *c, const struct disc_service *s,
                     const struct fed_cluster *w)
{
        f->conflicts++;
        char msg[DISC_ERROR_MAX];
        snprintf(msg, sizeof(msg),
                 "service %s/%s: cluster %s declares other ports than cluster %s (priority %d "
                 "< %d): %s's definition is used",
                 s->ns, s->name, c->name, w->name, w->priority, c->priority, w->name);
        if (strcmp(msg, f->last_conflict) != 0) {
                log_warn(COMP, 0, "%s", msg);
                snprintf(f->last_conflict, sizeof(f->last_conflict), "%s", msg);
        }
}

/* The index of s's service in m, or n when it is not there. */
static size_t find_merged(const struct merged *m, size_t n, const struct disc_service *s)
{
        size_t j;
        for (j = 0; j < n; j++)
                if (strcmp(m[j].def->name, s->name) == 0 && strcmp(m[j].def->ns, s->ns) == 0)
                        break;
        return j;
}

static void merge(struct fed *f)
{
        const struct disc_snapshot *snaps[CLUSTER_MAX];
        size_t total = 0;
        for (uint32_t i = 0; i < f->n; i++) {
                snaps[i] = disc_registry_acquire(f->c[i].priv);
                total += disc_snapshot_n_services(snaps[i]);
        }
        struct merged *m = calloc(total ? total : 1, sizeof(*m));
        struct disc_service_spec *specs = calloc(total ? total : 1, sizeof(*specs));
        struct disc_endpoint_spec *eps = NULL;
        size_t n_m = 0, max_eps = 0;
        for (uint32_t i = 0; i < f->n; i++)
                if (disc_snapshot_n_endpoints(snaps[i]) > max_eps)
                        max_eps = disc_snapshot_n_endpoints(snaps[i]);
        eps = calloc(max_eps ? max_eps : 1, sizeof(*eps));
        if (!m || !specs || !eps) {
                log_error(COMP, 0, "out of memory merging the clusters' registries");
                goto out;
        }
        f->conflicts = 0;
        /* definitions: by priority */
        for (uint32_t oi = 0; oi < f->n; oi++) {
                uint32_t ci = f->order[oi];
                f->c[ci].conflicts = 0;
                for (uint32_t k = 0; k < disc_snapshot_n_services(snaps[ci]); k++) {
                        const struct disc_service *s = disc_snapshot_service(snaps[ci], k);
                        size_t j = find_merged(m, n_m, s);
                        if (j == n_m) {
                                m[n_m].def = s;
                                m[n_m++].winner = ci;
                        } else if (!same_ports(m[j].def, s)) {
                                f->c[ci].conflicts++;
                                conflict(f, &f->c[ci], s, &f->c[m[j].winner]);
                        }
                        for (uint32_t v = 0; v < s->n_vips; v++) {
                                bool dup = false;
                                for (uint32_t w = 0; w < m[j].n_vips && !dup; w++)
                                        dup = memcmp(&m[j].vips[w], &s->vips[v],
                                                     sizeof(s->vips[v])) == 0;
                                if (!dup && m[j].n_vips < DISC_MAX_VIPS)
                                        m[j].vips[m[j].n_vips++] = s->vips[v];
                        }
                }
        }
        if (f->conflicts)
                f->conflicts_seen++;
        /* each cluster: the merged definitions of its services, its endpoints */
        for (uint32_t ci = 0; ci < f->n; ci++) {
                struct fed_cluster *c = &f->c[ci];
                size_t n = 0, ne = 0;
                for (uint32_t k = 0; k < disc_snapshot_n_services(snaps[ci]); k++) {
                        const struct disc_service *s = disc_snapshot_service(snaps[ci], k);
                        size_t j = find_merged(m, n_m, s);
                        spec_from(&m[j], &specs[n]);
                        specs[n].endpoints = &eps[ne];
                        for (uint32_t e = 0; e < s->n_endpoints; e++)
                                ep_from(c, &s->endpoints[e], &eps[ne++]);
                        specs[n].n_endpoints = s->n_endpoints;
                        n++;
                }
                c->n_services = (uint32_t)n;
                c->n_endpoints = (uint32_t)ne;
                int rc = disc_registry_replace(f->reg, c->src, specs, n);
                if (rc < 0)
                        log_error(COMP, 0, "cluster %s: its registry was refused (%s)", c->name,
                                  strerror(-rc));
        }
        f->merges++;
        disc_registry_publish(f->reg);
out:
        free(eps);
        free(specs);
        free(m);
        for (uint32_t i = 0; i < f->n; i++)
                disc_snapshot_release(snaps[i]);
}

static bool priv_stale(const struct disc_registry *r)
{
        for (int s = 0; s < DISC_MAX_SOURCES; s++)
                if (disc_source_stale(r, s))
                        return true;
        return false;
}

static void poll_cb(struct loop *loop, struct loop_timer *t)
{
        struct fed *f = t->data;
        bool changed = false;
        for (uint32_t i = 0; i < f->n; i++) {
                struct fed_cluster *c = &f->c[i];
                uint64_t v = disc_registry_version(c->priv);
                bool stale = priv_stale(c->priv);
                if (v != c->version_seen) {
                        c->version_seen = v;
                        changed = true;
                }
                if (stale != c->stale_seen || (!stale && !c->synced && v > 1)) {
                        c->stale_seen = stale;
                        if (stale) {
                                char why[DISC_ERROR_MAX];
                                snprintf(why, sizeof(why),
                                         "cluster %s: its %s registry is failing (its last "
                                         "endpoints are kept; /debug/cache has its state)",
                                         c->name, c->type);
                                disc_source_sync_failed(f->reg, c->src, why);
                        } else if (v > 1) {
                                c->synced = true;
                                disc_source_sync_ok(f->reg, c->src);
                        }
                        changed = true;
                }
        }
        if (changed)
                merge(f);
        loop_timer_arm(loop, t, CLUSTER_POLL_MS);
}

/* ---- backend ops ----------------------------------------------------------- */

static void destroy(void *impl)
{
        struct fed *f = impl;
        if (!f)
                return;
        if (f->loop)
                loop_timer_cancel(f->loop, &f->timer);
        for (uint32_t i = 0; i < CLUSTER_MAX; i++) {
                struct fed_cluster *c = &f->c[i];
                disc_backend_free(c->b);
                if (c->priv)
                        disc_registry_free(c->priv);
                if (c->cfg)
                        snapshot_unref(&c->cfg->snap);
        }
        free(f);
}

static int create(struct disc_registry *r, const struct shunt_config *cfg, void **impl, char *err,
                  size_t errlen)
{
        if (config_source_of(cfg, "service_discovery.type") != CONFIG_SRC_DEFAULT) {
                snprintf(err, errlen,
                         "config: service_discovery.type: set with service_discovery.clusters: "
                         "each cluster has its own type");
                return -EINVAL;
        }
        cJSON *arr = cJSON_Parse(cfg->sd_clusters);
        int n = cJSON_GetArraySize(arr);
        struct fed *f = calloc(1, sizeof(*f));
        int rc = 0;
        if (!f) {
                snprintf(err, errlen, "discovery: out of memory");
                rc = -ENOMEM;
        } else if (n < 1 || n > CLUSTER_MAX) {
                snprintf(err, errlen, "config: service_discovery.clusters: %d clusters (1..%d)", n,
                         CLUSTER_MAX);
                rc = -EINVAL;
        }
        for (int i = 0; !rc && i < n; i++) {
                rc = parse_cluster(f, cJSON_GetArrayItem(arr, i), (size_t)i, cfg, err, errlen);
                f->n = (uint32_t)i + 1;
        }
        cJSON_Delete(arr);
        for (uint32_t i = 0; !rc && i < f->n; i++) {
                struct fed_cluster *c = &f->c[i];
                char sub[DISC_ERROR_MAX];
                if (!(c->priv = disc_registry_new(NULL))) {
                        snprintf(err, errlen, "discovery: out of memory");
                        rc = -ENOMEM;
                        break;
                }
                rc = disc_backend_new(c->priv, c->cfg, &c->b, sub, sizeof(sub));
                if (rc < 0) {
                        /* "config: service_discovery.<type>.<key>: ..." of that cluster */
                        snprintf(err, errlen, "config: service_discovery.clusters[%u] (%s): %s", i,
                                 c->name, strncmp(sub, "config: ", 8) ? sub : sub + 8);
                        break;
                }
                char name[DISC_SOURCE_NAME_MAX];
                snprintf(name, sizeof(name), "%.10s@%.48s", c->type, c->name);
                enum disc_source_kind kind = strcmp(c->type, "kubernetes") == 0
                                                 ? DISC_SOURCE_KUBERNETES
                                             : strcmp(c->type, "consul") == 0 ? DISC_SOURCE_CONSUL
                                                                              : DISC_SOURCE_FILE;
                c->src = disc_source_add(r, name, kind);
                if (c->src < 0) {
                        snprintf(err, errlen, "discovery: cannot add the source %s: %s", name,
                                 strerror(-c->src));
                        rc = c->src;
                }
        }
        if (rc) {
                destroy(f);
                return rc;
        }
        /* the merge order: priority, then as listed */
        for (uint32_t i = 0; i < f->n; i++)
                f->order[i] = i;
        for (uint32_t i = 1; i < f->n; i++)
                for (uint32_t j = i;
                     j > 0 && f->c[f->order[j]].priority < f->c[f->order[j - 1]].priority; j--) {
                        uint32_t t = f->order[j];
                        f->order[j] = f->order[j - 1];
                        f->order[j - 1] = t;
                }
        f->reg = r;
        *impl = f;
        return 0;
}

static int start(void *impl, struct loop *loop, char *err, size_t errlen)
{
        struct fed *f = impl;
        f->loop = loop;
        loop_timer_init(&f->timer, poll_cb, f);
        for (uint32_t i = 0; i < f->n; i++) {
                struct fed_cluster *c = &f->c[i];
                char sub[DISC_ERROR_MAX];
                if (disc_backend_start(c->b, loop, sub, sizeof(sub)) < 0) {
                        snprintf(err, errlen, "service_discovery.clusters[%u] (%s): %s", i, c->name,
                                 sub);
                        return -EINVAL;
                }
                log_info(COMP, 0, "cluster %s: %s registry, region '%s', zone '%s', priority %d",
                         c->name, c->type, c->region, c->zone, c->priority);
        }
        poll_cb(loop, &f->timer);
        return 0;
}

static void render(const void *impl, struct strbuf *sb)
{
        const struct fed *f = impl;
        strbuf_appendf(sb, "{\"merges\":%llu,\"conflicts\":%u,\"last_conflict\":",
                       (unsigned long long)f->merges, f->conflicts);
        if (f->last_conflict[0])
                strbuf_append_json_string(sb, f->last_conflict);
        else
                strbuf_append(sb, "null");
        strbuf_append(sb, ",\"clusters\":[");
        for (uint32_t i = 0; i < f->n; i++) {
                const struct fed_cluster *c = &f->c[i];
                strbuf_append(sb, i ? ",{\"name\":" : "{\"name\":");
                strbuf_append_json_string(sb, c->name);
                strbuf_append(sb, ",\"region\":");
                strbuf_append_json_string(sb, c->region);
                strbuf_append(sb, ",\"zone\":");
                strbuf_append_json_string(sb, c->zone);
                strbuf_append(sb, ",\"trust_domain\":");
                strbuf_append_json_string(sb, c->cfg->trust_domain);
                strbuf_appendf(sb,
                               ",\"priority\":%d,\"stale\":%s,\"synced\":%s,\"services\":%u,"
                               "\"endpoints\":%u,\"conflicts\":%u,\"backend\":",
                               c->priority, c->stale_seen ? "true" : "false",
                               c->synced ? "true" : "false", c->n_services, c->n_endpoints,
                               c->conflicts);
                disc_backend_render(c->b, sb);
                strbuf_append(sb, ",\"registry\":");
                disc_render_cache(c->priv, sb);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
}

const struct disc_backend_ops disc_cluster_ops = {
    .type = "clusters",
    .create = create,
    .start = start,
    .render = render,
    .destroy = destroy,
};

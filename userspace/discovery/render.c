// SPDX-License-Identifier: Apache-2.0
/* Admin views of the registry (/endpoints, /debug/cache) and manual
 * registration (POST /admin/endpoints). Main thread. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "core/log.h"
#include "core/prom.h"
#include "discovery/registry-int.h"

#define COMP "discovery"

static void append_time(struct strbuf *sb, const struct disc_registry *r, uint64_t mono, bool set)
{
        if (!set) {
                strbuf_append(sb, "null");
                return;
        }
        uint64_t w = disc_wall_ms(r, mono);
        time_t sec = (time_t)(w / 1000);
        struct tm tm;
        gmtime_r(&sec, &tm);
        char buf[64];
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
        strbuf_appendf(sb, "\"%s.%03uZ\"", buf, (unsigned)(w % 1000));
}

static void append_src(struct strbuf *sb, const struct disc_registry *r, int src)
{
        const struct source *s = &r->sources[src];
        strbuf_append(sb, "\"source\":");
        strbuf_append_json_string(sb, s->name);
        strbuf_appendf(sb, ",\"stale\":%s,\"staleness_seconds\":", s->failing ? "true" : "false");
        if (!s->failing)
                strbuf_append(sb, "0");
        else if (!s->ever_synced)
                strbuf_append(sb, "null");
        else
                strbuf_appendf(sb, "%llu",
                               (unsigned long long)((disc_now_ms(r) - s->last_ok_ms) / 1000));
}

static void render_service(struct disc_registry *r, struct strbuf *sb,
                           const struct disc_snapshot *snap, const struct disc_service *svc,
                           const struct disc_render_hooks *hooks, const char *cluster)
{
        uint32_t si = disc_svc_find(r, svc->ns, svc->name);
        if (si == DISC_NONE)
                return;
        const struct svc_rec *rec = &r->svcs[si];
        char ip[64];
        uint64_t now = disc_now_ms(r);
        strbuf_append(sb, "{\"name\":");
        strbuf_append_json_string(sb, svc->name);
        strbuf_append(sb, ",\"namespace\":");
        strbuf_append_json_string(sb, svc->ns);
        strbuf_append(sb, ",");
        append_src(sb, r, rec->src);
        strbuf_append(sb, ",\"addresses\":[");
        for (uint32_t i = 0; i < svc->n_vips; i++) {
                strbuf_append(sb, i ? "," : "");
                strbuf_append_json_string(sb, disc_addr_ip(&svc->vips[i], ip, sizeof(ip)));
        }
        strbuf_append(sb, "],\"ports\":[");
        for (uint32_t i = 0; i < svc->n_ports; i++) {
                const struct disc_port *p = &svc->ports[i];
                strbuf_append(sb, i ? ",{\"name\":" : "{\"name\":");
                strbuf_append_json_string(sb, p->name);
                strbuf_appendf(sb, ",\"port\":%u,\"target_port\":%u,\"protocol\":\"%s\"}", p->port,
                               p->target_port, proto_name(p->proto));
        }
        strbuf_append(sb, "],\"identity\":");
        strbuf_append_json_string(sb, svc->identity);
        strbuf_appendf(sb,
                       ",\"mtls\":\"%s\",\"load_balancing\":{\"algorithm\":\"%s\",\"hash_key\":",
                       disc_mtls_name(svc->mtls), disc_lb_name(svc->lb));
        strbuf_append_json_string(sb, svc->hash_key);
        const struct disc_health_check *hc = &svc->hc;
        strbuf_appendf(
            sb, "},\"health_check\":{\"type\":\"%s\",\"path\":", disc_hc_type_name(hc->type));
        strbuf_append_json_string(sb, hc->path);
        strbuf_appendf(sb,
                       ",\"port\":%u,\"interval_ms\":%u,\"timeout_ms\":%u,\"healthy_threshold\":%u,"
                       "\"unhealthy_threshold\":%u,\"passive_failures\":%u,\"ejection_ms\":%u}",
                       hc->port, hc->interval_ms, hc->timeout_ms, hc->healthy_threshold,
                       hc->unhealthy_threshold, hc->passive_failures, hc->ejection_ms);
        strbuf_appendf(sb, ",\"endpoints_total\":%u,\"endpoints_routable\":%u,\"endpoints\":[",
                       svc->n_endpoints, svc->n_healthy);
        bool first = true;
        for (uint32_t i = 0; i < svc->n_endpoints; i++) {
                const struct disc_endpoint *ep = &svc->endpoints[i];
                const struct ep_rec *e = &r->eps[ep->slot];
                if (cluster[0] && strcmp(ep->cluster, cluster) != 0)
                        continue;
                strbuf_append(sb, first ? "{\"address\":" : ",{\"address\":");
                first = false;
                strbuf_append_json_string(sb, disc_addr_ip(&ep->addr, ip, sizeof(ip)));
                strbuf_appendf(sb, ",\"port\":%u,\"weight\":%u,\"zone\":", ep->addr.port,
                               ep->weight);
                strbuf_append_json_string(sb, ep->zone);
                strbuf_append(sb, ",\"region\":");
                strbuf_append_json_string(sb, ep->region);
                strbuf_append(sb, ",\"cluster\":");
                strbuf_append_json_string(sb, ep->cluster);
                strbuf_append(sb, ",\"identity\":");
                strbuf_append_json_string(sb, ep->identity);
                strbuf_appendf(sb, ",\"meshed\":%s,\"mtls\":\"%s\"", ep->meshed ? "true" : "false",
                               disc_mtls_name(ep->mtls));
                strbuf_appendf(
                    sb,
                    ",\"health\":\"%s\",\"declared_health\":\"%s\",\"active_health\":"
                    "\"%s\",\"ejected_for_ms\":%llu,\"passive\":{\"failures\":%llu,"
                    "\"successes\":%llu,\"ejections\":%llu},",
                    disc_health_name(ep->health), disc_health_name(e->spec.health),
                    disc_health_name(e->active),
                    (unsigned long long)(e->ejected_until_ms > now ? e->ejected_until_ms - now : 0),
                    (unsigned long long)e->passive_failures,
                    (unsigned long long)e->passive_successes, (unsigned long long)e->n_ejections);
                append_src(sb, r, ep->source);
                strbuf_append(sb, ",\"last_seen\":");
                append_time(sb, r, e->last_seen_ms, e->last_seen_ms != 0);
                if (hooks && hooks->endpoint)
                        hooks->endpoint(hooks->ctx, svc, ep, sb);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
        if (hooks && hooks->service)
                hooks->service(hooks->ctx, svc, sb);
        strbuf_append(sb, "}");
        (void)snap;
}

void disc_render_endpoints(struct disc_registry *r, struct strbuf *sb, const char *service)
{
        disc_render_endpoints_with(r, sb, service, NULL);
}

void disc_render_endpoints_with(struct disc_registry *r, struct strbuf *sb, const char *service,
                                const struct disc_render_hooks *hooks)
{
        disc_registry_publish(r); /* so the snapshot shows every change */
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        char ns[DISC_NAME_MAX] = "", name[DISC_NAME_MAX] = "", cluster[DISC_NAME_MAX] = "";
        if (service && *service) {
                const char *slash = strchr(service, '/'), *dot = strchr(service, '.');
                if (slash) {
                        snprintf(ns, sizeof(ns), "%.*s", (int)(slash - service), service);
                        snprintf(name, sizeof(name), "%s", slash + 1);
                } else if (dot) {
                        /* name.namespace, or name.namespace.cluster: one cluster's */
                        const char *dot2 = strchr(dot + 1, '.');
                        snprintf(name, sizeof(name), "%.*s", (int)(dot - service), service);
                        snprintf(ns, sizeof(ns), "%.*s",
                                 (int)(dot2 ? dot2 - dot - 1 : (long)strlen(dot + 1)), dot + 1);
                        if (dot2)
                                snprintf(cluster, sizeof(cluster), "%s", dot2 + 1);
                } else {
                        snprintf(name, sizeof(name), "%s", service);
                }
        }
        strbuf_appendf(sb, "{\"version\":%llu,\"services\":[",
                       (unsigned long long)disc_snapshot_version(snap));
        bool first = true;
        for (uint32_t i = 0; i < disc_snapshot_n_services(snap); i++) {
                const struct disc_service *svc = disc_snapshot_service(snap, i);
                if (name[0] && (strcmp(svc->name, name) || (ns[0] && strcmp(svc->ns, ns))))
                        continue;
                if (!first)
                        strbuf_append(sb, ",");
                first = false;
                render_service(r, sb, snap, svc, hooks, cluster);
        }
        strbuf_append(sb, "]}");
        disc_snapshot_release(snap);
}

void disc_render_cache(struct disc_registry *r, struct strbuf *sb)
{
        disc_registry_publish(r);
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        uint32_t by_health[DISC_HEALTH__COUNT] = {0}, stale = 0;
        for (uint32_t i = 0; i < disc_snapshot_n_endpoints(snap); i++) {
                const struct disc_endpoint *ep = disc_snapshot_endpoint(snap, i);
                by_health[ep->health]++;
                stale += ep->stale;
        }
        strbuf_appendf(sb, "{\"version\":%llu,\"published_at\":",
                       (unsigned long long)disc_snapshot_version(snap));
        append_time(sb, r, r->published_ms, true);
        strbuf_appendf(sb,
                       ",\"snapshot_bytes\":%zu,\"build_us\":%llu,\"services\":%u,\"endpoints\":%u,"
                       "\"max_services\":%u,\"max_endpoints\":%u,\"by_health\":{",
                       r->snapshot_bytes, (unsigned long long)r->build_us_last,
                       disc_snapshot_n_services(snap), disc_snapshot_n_endpoints(snap),
                       r->opts.max_services, r->opts.max_endpoints);
        for (int h = 0; h < DISC_HEALTH__COUNT; h++)
                strbuf_appendf(sb, "%s\"%s\":%u", h ? "," : "",
                               disc_health_name((enum disc_health)h), by_health[h]);
        strbuf_appendf(sb, "},\"stale_endpoints\":%u,\"ejected_endpoints\":%u,\"sources\":[", stale,
                       r->n_ejected);
        bool first = true;
        for (int i = 0; i < DISC_MAX_SOURCES; i++) {
                const struct source *s = &r->sources[i];
                if (!s->used)
                        continue;
                uint32_t n_svc = 0, n_ep = 0;
                for (uint32_t k = 0; k < r->n_svc_recs; k++)
                        n_svc += r->svcs[k].used && r->svcs[k].src == i;
                for (uint32_t k = 0; k < r->n_ep_recs; k++)
                        n_ep += r->eps[k].used && r->eps[k].src == i;
                strbuf_appendf(sb, "%s{\"id\":%d,\"name\":", first ? "" : ",", i);
                first = false;
                strbuf_append_json_string(sb, s->name);
                strbuf_appendf(sb, ",\"type\":\"%s\",\"synced\":%s,\"stale\":%s,\"last_sync\":",
                               disc_source_kind_name(s->kind), s->ever_synced ? "true" : "false",
                               s->failing ? "true" : "false");
                append_time(sb, r, s->last_ok_ms, s->ever_synced);
                strbuf_append(sb, ",\"last_attempt\":");
                append_time(sb, r, s->last_attempt_ms, s->last_attempt_ms != 0);
                strbuf_appendf(sb,
                               ",\"staleness_seconds\":%llu,\"syncs\":%llu,\"failures\":%llu,"
                               "\"services\":%u,\"endpoints\":%u,\"last_error\":",
                               (unsigned long long)(s->failing && s->ever_synced
                                                        ? (disc_now_ms(r) - s->last_ok_ms) / 1000
                                                        : 0),
                               (unsigned long long)s->n_ok, (unsigned long long)s->n_failed, n_svc,
                               n_ep);
                if (s->error[0] && s->failing)
                        strbuf_append_json_string(sb, s->error);
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
        disc_snapshot_release(snap);
}

/* ---- POST /admin/endpoints ---------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int bad(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static bool only_keys(const cJSON *obj, const char *const *allowed, const char **badkey)
{
        for (const cJSON *c = obj->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *a = allowed; *a; a++)
                        ok |= strcmp(*a, c->string) == 0;
                for (const cJSON *d = obj->child; ok && d != c; d = d->next)
                        ok = strcmp(d->string, c->string) != 0;
                if (!ok) {
                        *badkey = c->string;
                        return false;
                }
        }
        return true;
}

/* "10.0.0.1:8080", "[fd00::1]:8080"; port 0 when absent ("10.0.0.1", "fd00::1"). */
static int parse_id(const char *s, struct disc_addr *out)
{
        char host[64];
        unsigned long port = 0;
        const char *colon = NULL;
        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                if (!close || (size_t)(close - s - 1) >= sizeof(host))
                        return -EINVAL;
                snprintf(host, sizeof(host), "%.*s", (int)(close - s - 1), s + 1);
                if (close[1] == ':')
                        colon = close + 1;
                else if (close[1])
                        return -EINVAL;
        } else {
                colon = strchr(s, ':');
                if (colon && strchr(colon + 1, ':'))
                        colon = NULL; /* a bare IPv6 address */
                size_t n = colon ? (size_t)(colon - s) : strlen(s);
                if (n >= sizeof(host))
                        return -EINVAL;
                snprintf(host, sizeof(host), "%.*s", (int)n, s);
        }
        if (colon) {
                char *end;
                port = strtoul(colon + 1, &end, 10);
                if (!colon[1] || *end || port == 0 || port > 65535)
                        return -EINVAL;
        }
        return disc_addr_parse(host, (uint16_t)port, out);
}

int disc_admin_apply(struct disc_registry *r, const char *body, size_t len, char *err,
                     size_t errlen)
{
        static const char *const top_keys[] = {"service", "namespace", "endpoints", NULL};
        static const char *const ep_keys[] = {"id",   "address", "port",   "weight",
                                              "zone", "region",  "health", NULL};
        cJSON *root = cJSON_ParseWithLength(body, len);
        if (!root)
                return bad(err, errlen, "body: invalid JSON");
        int rc = 0;
        struct disc_endpoint_spec *eps = NULL;
        const char *key = NULL;
        const cJSON *svc, *ns, *list;
        if (!cJSON_IsObject(root)) {
                rc = bad(err, errlen, "body: expected an object");
                goto out;
        }
        if (!only_keys(root, top_keys, &key)) {
                rc = bad(err, errlen,
                         "%s: unknown or duplicate key (allowed: service, namespace, "
                         "endpoints)",
                         key);
                goto out;
        }
        svc = cJSON_GetObjectItemCaseSensitive(root, "service");
        ns = cJSON_GetObjectItemCaseSensitive(root, "namespace");
        list = cJSON_GetObjectItemCaseSensitive(root, "endpoints");
        if (!cJSON_IsString(svc) || !svc->valuestring[0] ||
            strlen(svc->valuestring) >= DISC_NAME_MAX) {
                rc = bad(err, errlen, "service: expected a service name (1-63 characters)");
                goto out;
        }
        if (ns && (!cJSON_IsString(ns) || !ns->valuestring[0] ||
                   strlen(ns->valuestring) >= DISC_NAME_MAX)) {
                rc = bad(err, errlen, "namespace: expected a namespace (1-63 characters)");
                goto out;
        }
        if (!cJSON_IsArray(list)) {
                rc = bad(err, errlen, "endpoints: expected an array");
                goto out;
        }
        const char *nsname = ns ? ns->valuestring : DISC_DEFAULT_NAMESPACE;
        size_t n = (size_t)cJSON_GetArraySize(list);
        if (n > 4096) {
                rc = bad(err, errlen, "endpoints: more than 4096 endpoints in one request");
                goto out;
        }
        eps = calloc(n ? n : 1, sizeof(*eps));
        if (!eps) {
                rc = bad(err, errlen, "out of memory");
                goto out;
        }
        uint32_t si = disc_svc_find(r, nsname, svc->valuestring);
        const struct svc_rec *rec = si == DISC_NONE ? NULL : &r->svcs[si];
        size_t i = 0;
        for (const cJSON *e = list->child; e; e = e->next, i++) {
                struct disc_endpoint_spec *es = &eps[i];
                es->weight = DISC_DEFAULT_WEIGHT;
                es->health = DISC_HEALTH_UNKNOWN;
                if (!cJSON_IsObject(e)) {
                        rc = bad(err, errlen, "endpoints[%zu]: expected an object", i);
                        goto out;
                }
                if (!only_keys(e, ep_keys, &key)) {
                        rc =
                            bad(err, errlen, "endpoints[%zu].%s: unknown or duplicate key", i, key);
                        goto out;
                }
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
                const cJSON *addr = cJSON_GetObjectItemCaseSensitive(e, "address");
                const cJSON *port = cJSON_GetObjectItemCaseSensitive(e, "port");
                if (!!id == !!addr) {
                        rc = bad(err, errlen,
                                 "endpoints[%zu]: give either \"address\" (and \"port\") or \"id\" "
                                 "(\"address:port\")",
                                 i);
                        goto out;
                }
                const cJSON *a = id ? id : addr;
                if (!cJSON_IsString(a) || parse_id(a->valuestring, &es->addr)) {
                        rc = bad(err, errlen, "endpoints[%zu].%s: expected an IP address%s", i,
                                 id ? "id" : "address", id ? " with an optional :port" : "");
                        goto out;
                }
                if (port) {
                        double d = cJSON_IsNumber(port) ? port->valuedouble : -1;
                        if (d < 1 || d > 65535 || d != (double)(int)d) {
                                rc = bad(err, errlen, "endpoints[%zu].port: expected 1..65535", i);
                                goto out;
                        }
                        es->addr.port = (uint16_t)d;
                }
                if (!es->addr.port && rec && rec->spec.n_ports == 1)
                        es->addr.port = rec->spec.ports[0].target_port
                                            ? rec->spec.ports[0].target_port
                                            : rec->spec.ports[0].port;
                if (!es->addr.port) {
                        rc = bad(err, errlen,
                                 "endpoints[%zu]: no port (the service does not have exactly one "
                                 "port to default to)",
                                 i);
                        goto out;
                }
                const cJSON *w = cJSON_GetObjectItemCaseSensitive(e, "weight");
                if (w) {
                        double d = cJSON_IsNumber(w) ? w->valuedouble : -1;
                        if (d < 0 || d > DISC_WEIGHT_MAX || d != (double)(int)d) {
                                rc = bad(err, errlen, "endpoints[%zu].weight: expected 0..%d", i,
                                         DISC_WEIGHT_MAX);
                                goto out;
                        }
                        es->weight = (uint32_t)d;
                }
                static const char *const strkeys[] = {"zone", "region"};
                for (int k = 0; k < 2; k++) {
                        const cJSON *z = cJSON_GetObjectItemCaseSensitive(e, strkeys[k]);
                        if (!z)
                                continue;
                        if (!cJSON_IsString(z) || strlen(z->valuestring) >= DISC_NAME_MAX) {
                                rc = bad(err, errlen,
                                         "endpoints[%zu].%s: expected a string of at most 63 "
                                         "characters",
                                         i, strkeys[k]);
                                goto out;
                        }
                        snprintf(k ? es->region : es->zone, DISC_NAME_MAX, "%s", z->valuestring);
                }
                const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "health");
                if (h && (!cJSON_IsString(h) || disc_health_parse(h->valuestring, &es->health))) {
                        rc = bad(err, errlen,
                                 "endpoints[%zu].health: expected healthy, unhealthy, unknown or "
                                 "draining",
                                 i);
                        goto out;
                }
                for (size_t k = 0; k < i; k++) {
                        if (memcmp(&eps[k].addr, &es->addr, sizeof(es->addr)) == 0) {
                                rc = bad(err, errlen,
                                         "endpoints[%zu]: same address and port as "
                                         "endpoints[%zu]",
                                         i, k);
                                goto out;
                        }
                }
        }
        int src = -1;
        for (int k = 0; k < DISC_MAX_SOURCES; k++) {
                if (r->sources[k].used && r->sources[k].kind == DISC_SOURCE_MANUAL)
                        src = k;
        }
        if (src < 0)
                src = disc_source_add(r, "manual", DISC_SOURCE_MANUAL);
        if (src < 0) {
                rc = bad(err, errlen, "cannot register the manual source: %s", strerror(-src));
                goto out;
        }
        bool created = false;
        if (!rec) {
                if (!n)
                        goto done; /* nothing to remove */
                struct disc_service_spec spec;
                disc_service_spec_init(&spec);
                snprintf(spec.name, sizeof(spec.name), "%s", svc->valuestring);
                snprintf(spec.ns, sizeof(spec.ns), "%s", nsname);
                rc = disc_registry_upsert_service(r, src, &spec, false);
                if (rc) {
                        bad(err, errlen, "service %s/%s: %s", nsname, svc->valuestring,
                            strerror(-rc));
                        goto out;
                }
                created = true;
        }
        rc = disc_registry_set_endpoints(r, src, nsname, svc->valuestring, eps, n);
        if (rc) {
                bad(err, errlen, "service %s/%s: %s", nsname, svc->valuestring, strerror(-rc));
                if (created)
                        disc_registry_remove_service(r, src, nsname, svc->valuestring);
                goto out;
        }
        si = disc_svc_find(r, nsname, svc->valuestring);
        if (!n && si != DISC_NONE && r->svcs[si].src == src && r->svcs[si].n_eps == 0)
                disc_registry_remove_service(r, src, nsname, svc->valuestring);
done:
        disc_source_sync_ok(r, src);
        rc = disc_registry_publish(r);
        log_info(COMP, 0, "manual registration: %s/%s now has %zu manual endpoints", nsname,
                 svc->valuestring, n);
out:
        free(eps);
        cJSON_Delete(root);
        return rc;
}

void disc_render_metrics(struct disc_registry *r, struct strbuf *sb)
{
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        uint32_t by_health[DISC_HEALTH__COUNT] = {0};
        for (uint32_t i = 0; snap && i < disc_snapshot_n_endpoints(snap); i++)
                by_health[disc_snapshot_endpoint(snap, i)->health]++;
        prom_family(sb, "shunt_discovery_endpoints", "gauge",
                    "Endpoints in the published registry, by effective health.");
        for (int h = 0; h < DISC_HEALTH__COUNT; h++) {
                char labels[48];
                snprintf(labels, sizeof(labels), "health=\"%s\"",
                         disc_health_name((enum disc_health)h));
                prom_sample_u64(sb, "shunt_discovery_endpoints", labels, by_health[h]);
        }
        prom_family(sb, "shunt_discovery_services", "gauge", "Services in the published registry.");
        prom_sample_u64(sb, "shunt_discovery_services", NULL,
                        snap ? disc_snapshot_n_services(snap) : 0);
        prom_family(sb, "shunt_discovery_registry_version", "gauge",
                    "Version of the published registry snapshot.");
        prom_sample_u64(sb, "shunt_discovery_registry_version", NULL,
                        snap ? disc_snapshot_version(snap) : 0);
        if (snap)
                disc_snapshot_release(snap);

        static const struct {
                const char *name, *type, *help;
        } fams[] = {
            {"shunt_discovery_staleness_seconds", "gauge",
             "Seconds since the source last synced while it is failing (0 when current)."},
            {"shunt_discovery_source_up", "gauge",
             "1 while the source syncs, 0 while it fails (its last data is kept)."},
            {"shunt_discovery_sync_failures_total", "counter", "Failed syncs of the source."},
            {"shunt_discovery_access_denied_total", "counter",
             "Requests the source's server refused for lack of permission (HTTP 401/403) or "
             "answered with results filtered by ACLs."},
        };
        /* Samples of one family stay together, as the text format requires. */
        for (size_t f = 0; f < sizeof(fams) / sizeof(fams[0]); f++) {
                prom_family(sb, fams[f].name, fams[f].type, fams[f].help);
                for (int i = 0; i < DISC_MAX_SOURCES; i++) {
                        const struct source *s = &r->sources[i];
                        if (!s->used)
                                continue;
                        struct strbuf labels;
                        strbuf_init(&labels);
                        prom_label(&labels, "source", s->name);
                        prom_label(&labels, "type", disc_source_kind_name(s->kind));
                        uint64_t v = f == 0   ? disc_source_staleness_ms(r, i) / 1000
                                     : f == 1 ? !s->failing
                                     : f == 2 ? s->n_failed
                                              : s->n_denied;
                        prom_sample_u64(sb, fams[f].name, labels.data ? labels.data : "", v);
                        strbuf_free(&labels);
                }
        }
}

// SPDX-License-Identifier: Apache-2.0
/* Kubernetes discovery: list responses and watch events (fixtures written
 * from the API reference) mapped to registry specs: clusterIPs, ports with
 * named and numeric targetPorts, appProtocol, UDP left out, endpoint
 * conditions -> health, zones, slices joined by kubernetes.io/service-name
 * within a namespace, duplicates across slices, FQDN slices, headless
 * services; bookmarks, 410 and other ERROR events, bad JSON; identities
 * from pods (targetRef, uid, address fallback, meshed label, a pod moving
 * meshed -> not meshed, a pod not known yet), mode precedence (Pod >
 * Service > Namespace), pods bounded; and the backend's credential errors
 * (no cluster, kubeconfig problems). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/log.h"
#include "discovery/backend.h"
#include "discovery/k8s.h"
#include "discovery/registry.h"
#include "test_disc_util.h"

static char *slurp(const char *name, size_t *len)
{
        char path[512];
        snprintf(path, sizeof(path), "%s/k8s/%s", SHUNT_FIXTURES, name);
        return slurp_path(path, len);
}

static struct k8s_cache *loaded(void)
{
        struct k8s_cache *c = k8s_cache_new();
        assert_non_null(c);
        char rv[K8S_MAX_RV] = "", err[256];
        size_t len;
        char *body = slurp("services.json", &len);
        assert_int_equal(k8s_cache_list(c, K8S_SERVICES, body, len, rv, err, sizeof(err)), 0);
        assert_string_equal(rv, "1042");
        free(body);
        body = slurp("endpointslices.json", &len);
        assert_int_equal(k8s_cache_list(c, K8S_SLICES, body, len, rv, err, sizeof(err)), 0);
        assert_string_equal(rv, "1043");
        free(body);
        return c;
}

static const struct disc_service_spec *spec(const struct disc_service_spec *s, size_t n,
                                            const char *name)
{
        for (size_t i = 0; i < n; i++) {
                if (strcmp(s[i].name, name) == 0)
                        return &s[i];
        }
        return NULL;
}

static const struct disc_endpoint_spec *ep(const struct disc_service_spec *s, const char *ip,
                                           uint16_t port)
{
        struct disc_addr a;
        assert_int_equal(disc_addr_parse(ip, port, &a), 0);
        for (uint32_t i = 0; i < s->n_endpoints; i++) {
                if (memcmp(&s->endpoints[i].addr, &a, sizeof(a)) == 0)
                        return &s->endpoints[i];
        }
        return NULL;
}

static void test_list_mapping(void **state)
{
        struct k8s_cache *c = loaded();
        /* "broken" (clusterIP not an address) is skipped, the rest stays */
        assert_int_equal(k8s_cache_count(c, K8S_SERVICES), 2);
        assert_int_equal(k8s_cache_count(c, K8S_SLICES), 6);
        struct disc_service_spec *svcs;
        size_t n;
        assert_int_equal(k8s_cache_build(c, &svcs, &n), 0);
        assert_int_equal(n, 2);
        const struct disc_service_spec *web = spec(svcs, n, "web");
        assert_non_null(web);
        assert_string_equal(web->ns, "shop");
        assert_int_equal(web->n_vips, 2);
        char ip[64];
        assert_string_equal(disc_addr_ip(&web->vips[0], ip, sizeof(ip)), "10.96.3.7");
        assert_string_equal(disc_addr_ip(&web->vips[1], ip, sizeof(ip)), "fd00:96::3:7");
        /* UDP port left out; named targetPort resolved through the slices */
        assert_int_equal(web->n_ports, 2);
        assert_string_equal(web->ports[0].name, "http");
        assert_int_equal(web->ports[0].port, 80);
        assert_int_equal(web->ports[0].target_port, 8080);
        assert_int_equal(web->ports[0].proto, PROTO_HTTP1);
        assert_int_equal(web->ports[1].port, 9090);
        assert_int_equal(web->ports[1].target_port, 9091);
        assert_int_equal(web->ports[1].proto, PROTO_HTTP2);
        /* http: .5 (in two slices, once), .6 .7 .8 .9 and fd00:1::5; grpc: .5-.8 */
        assert_int_equal(web->n_endpoints, 10);
        assert_int_equal(ep(web, "10.1.0.5", 8080)->health, DISC_HEALTH_HEALTHY);
        assert_string_equal(ep(web, "10.1.0.5", 8080)->zone, "eu-west-1a");
        assert_int_equal(ep(web, "10.1.0.6", 8080)->health, DISC_HEALTH_DRAINING);
        assert_int_equal(ep(web, "10.1.0.7", 8080)->health, DISC_HEALTH_UNHEALTHY);
        assert_int_equal(ep(web, "10.1.0.8", 8080)->health, DISC_HEALTH_UNKNOWN);
        assert_string_equal(ep(web, "10.1.0.9", 8080)->zone, "eu-west-1c");
        assert_non_null(ep(web, "fd00:1::5", 8080));
        assert_non_null(ep(web, "10.1.0.6", 9091));
        assert_null(ep(web, "10.1.0.9", 9091)); /* its slice has no grpc port */
        assert_null(ep(web, "10.2.0.1", 8080)); /* same service name, other namespace */
        for (uint32_t i = 0; i < web->n_endpoints; i++)
                assert_int_equal(web->endpoints[i].weight, DISC_DEFAULT_WEIGHT);
        const struct disc_service_spec *db = spec(svcs, n, "db");
        assert_non_null(db);
        assert_int_equal(db->n_vips, 0); /* headless */
        assert_int_equal(db->n_ports, 1);
        assert_int_equal(db->ports[0].target_port, 5432);
        assert_int_equal(db->ports[0].proto, PROTO_UNKNOWN);
        assert_int_equal(db->n_endpoints, 1);
        assert_non_null(ep(db, "10.1.1.1", 5432));
        /* the specs go into a registry as they are */
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "kubernetes", DISC_SOURCE_KUBERNETES);
        assert_int_equal(disc_registry_replace(r, src, svcs, n), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        struct disc_addr vip;
        disc_addr_parse("10.96.3.7", 80, &vip);
        uint32_t pi;
        const struct disc_service *s = disc_find_vip(snap, &vip, &pi);
        assert_non_null(s);
        assert_string_equal(s->name, "web");
        assert_int_equal(s->ports[pi].target_port, 8080);
        disc_snapshot_release(snap);
        disc_registry_free(r);
        k8s_specs_free(svcs, n);
        k8s_cache_free(c);
}

static enum k8s_event_result ev(struct k8s_cache *c, enum k8s_kind kind, const char *line, char *rv)
{
        char err[256];
        return k8s_cache_event(c, kind, line, strlen(line), rv, err, sizeof(err));
}

static uint32_t n_eps(struct k8s_cache *c, const char *name)
{
        struct disc_service_spec *svcs;
        size_t n;
        assert_int_equal(k8s_cache_build(c, &svcs, &n), 0);
        const struct disc_service_spec *s = spec(svcs, n, name);
        uint32_t r = s ? s->n_endpoints : UINT32_MAX;
        k8s_specs_free(svcs, n);
        return r;
}

static void test_watch_events(void **state)
{
        struct k8s_cache *c = loaded();
        char rv[K8S_MAX_RV] = "1043";
        assert_int_equal(n_eps(c, "web"), 10);
        /* a slice deleted: 10.1.0.9 goes, 10.1.0.5 stays (still in the other slice) */
        assert_int_equal(
            ev(c, K8S_SLICES,
               "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"web-d3e4f\","
               "\"namespace\":\"shop\",\"resourceVersion\":\"1050\"}}}",
               rv),
            K8S_EV_APPLIED);
        assert_string_equal(rv, "1050");
        assert_int_equal(n_eps(c, "web"), 9);
        /* bookmark: only the resourceVersion moves */
        assert_int_equal(ev(c, K8S_SLICES,
                            "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"EndpointSlice\","
                            "\"metadata\":{\"resourceVersion\":\"1077\"}}}",
                            rv),
                         K8S_EV_BOOKMARK);
        assert_string_equal(rv, "1077");
        /* bad JSON and invalid objects: skipped, nothing changes */
        assert_int_equal(ev(c, K8S_SLICES, "{\"type\":\"MODIFIED\",\"object\":{\"metad", rv),
                         K8S_EV_BAD);
        assert_int_equal(ev(c, K8S_SLICES, "[1,2]", rv), K8S_EV_BAD);
        assert_int_equal(ev(c, K8S_SLICES, "{\"type\":\"SHRUGGED\",\"object\":{}}", rv),
                         K8S_EV_BAD);
        assert_int_equal(ev(c, K8S_SERVICES,
                            "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"web\","
                            "\"namespace\":\"shop\",\"resourceVersion\":\"1090\"},\"spec\":{"
                            "\"ports\":[{\"port\":70000}]}}}",
                            rv),
                         K8S_EV_BAD);
        assert_string_equal(rv, "1077");
        assert_int_equal(n_eps(c, "web"), 9);
        /* a service added, then its slice */
        assert_int_equal(ev(c, K8S_SERVICES,
                            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"api\","
                            "\"namespace\":\"shop\",\"resourceVersion\":\"1100\"},\"spec\":{"
                            "\"clusterIP\":\"10.96.3.9\",\"ports\":[{\"name\":\"h\",\"port\":80,"
                            "\"targetPort\":8000,\"appProtocol\":\"grpc\"}]}}}",
                            rv),
                         K8S_EV_APPLIED);
        assert_int_equal(n_eps(c, "api"), 0);
        assert_int_equal(ev(c, K8S_SLICES,
                            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"api-1\","
                            "\"namespace\":\"shop\",\"resourceVersion\":\"1101\",\"labels\":{"
                            "\"kubernetes.io/service-name\":\"api\"}},\"addressType\":\"IPv4\","
                            "\"endpoints\":[{\"addresses\":[\"10.3.0.1\"],\"conditions\":{"
                            "\"ready\":true}},{\"addresses\":[\"10.3.0.2\"],\"conditions\":{"
                            "\"ready\":true}}],\"ports\":[{\"name\":\"h\",\"port\":8000}]}}",
                            rv),
                         K8S_EV_APPLIED);
        assert_string_equal(rv, "1101");
        assert_int_equal(n_eps(c, "api"), 2);
        /* the slice's port number is the resolved one and wins over the
         * Service's numeric targetPort */
        assert_int_equal(ev(c, K8S_SLICES,
                            "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"api-1\","
                            "\"namespace\":\"shop\",\"resourceVersion\":\"1102\",\"labels\":{"
                            "\"kubernetes.io/service-name\":\"api\"}},\"addressType\":\"IPv4\","
                            "\"endpoints\":[{\"addresses\":[\"10.3.0.1\"]}],\"ports\":[{\"name\":"
                            "\"h\",\"port\":8001}]}}",
                            rv),
                         K8S_EV_APPLIED);
        assert_int_equal(n_eps(c, "api"), 1);
        /* the service deleted */
        assert_int_equal(ev(c, K8S_SERVICES,
                            "{\"type\":\"DELETED\",\"object\":{\"metadata\":{\"name\":\"api\","
                            "\"namespace\":\"shop\",\"resourceVersion\":\"1103\"}}}",
                            rv),
                         K8S_EV_APPLIED);
        assert_int_equal(n_eps(c, "api"), UINT32_MAX);
        /* ERROR events: 410 means relist, anything else reconnect */
        assert_int_equal(ev(c, K8S_SERVICES,
                            "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"status\":"
                            "\"Failure\",\"message\":\"too old resource version: 1 (1103)\","
                            "\"reason\":\"Expired\",\"code\":410}}",
                            rv),
                         K8S_EV_GONE);
        assert_int_equal(ev(c, K8S_SERVICES,
                            "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":500}}",
                            rv),
                         K8S_EV_ERROR);
        k8s_cache_free(c);
}

static void test_list_errors(void **state)
{
        struct k8s_cache *c = loaded();
        char rv[K8S_MAX_RV] = "7", err[256];
        const char *bad[] = {"not json", "{\"items\":[]}", "{\"metadata\":{}}",
                             "{\"metadata\":{\"resourceVersion\":\"5\"},\"items\":{}}"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                assert_int_equal(
                    k8s_cache_list(c, K8S_SERVICES, bad[i], strlen(bad[i]), rv, err, sizeof(err)),
                    -EINVAL);
                assert_non_null(strstr(err, "services list"));
        }
        assert_string_equal(rv, "7");
        assert_int_equal(k8s_cache_count(c, K8S_SERVICES), 2); /* unchanged */
        /* an empty list replaces everything */
        const char *empty = "{\"kind\":\"ServiceList\",\"metadata\":{\"resourceVersion\":\"9\"},"
                            "\"items\":[]}";
        assert_int_equal(
            k8s_cache_list(c, K8S_SERVICES, empty, strlen(empty), rv, err, sizeof(err)), 0);
        assert_string_equal(rv, "9");
        assert_int_equal(k8s_cache_count(c, K8S_SERVICES), 0);
        k8s_cache_free(c);
}

static void test_list_pages(void **state)
{
        struct k8s_cache *c = loaded(), *staging = k8s_cache_new();
        char rv[K8S_MAX_RV], cont[K8S_MAX_CONTINUE], err[256];
        const char *p1 = "{\"metadata\":{\"resourceVersion\":\"50\",\"continue\":\"tok-1\"},"
                         "\"items\":[{\"metadata\":{\"name\":\"a\",\"namespace\":\"x\"},"
                         "\"spec\":{\"clusterIP\":\"10.96.9.1\",\"ports\":[{\"port\":80}]}}]}";
        const char *p2 = "{\"metadata\":{\"resourceVersion\":\"50\"},\"items\":[{\"metadata\":{"
                         "\"name\":\"b\",\"namespace\":\"x\"},\"spec\":{\"clusterIP\":"
                         "\"10.96.9.2\",\"ports\":[{\"port\":80}]}}]}";
        assert_int_equal(
            k8s_cache_list_page(staging, K8S_SERVICES, p1, strlen(p1), rv, cont, err, sizeof(err)),
            0);
        assert_string_equal(cont, "tok-1");
        assert_string_equal(rv, "50");
        /* nothing reaches the cache before the last page */
        assert_int_equal(k8s_cache_count(c, K8S_SERVICES), 2);
        assert_int_equal(
            k8s_cache_list_page(staging, K8S_SERVICES, p2, strlen(p2), rv, cont, err, sizeof(err)),
            0);
        assert_string_equal(cont, "");
        k8s_cache_take(c, staging, K8S_SERVICES);
        assert_int_equal(k8s_cache_count(c, K8S_SERVICES), 2); /* a and b replace web and db */
        assert_int_equal(k8s_cache_count(staging, K8S_SERVICES), 0);
        assert_int_equal(k8s_cache_count(c, K8S_SLICES), 6); /* the other kind untouched */
        struct disc_service_spec *svcs;
        size_t n;
        assert_int_equal(k8s_cache_build(c, &svcs, &n), 0);
        assert_non_null(spec(svcs, n, "a"));
        assert_non_null(spec(svcs, n, "b"));
        assert_null(spec(svcs, n, "web"));
        k8s_specs_free(svcs, n);
        /* a continue token beyond the bound is refused */
        struct strbuf sb;
        strbuf_init(&sb);
        strbuf_append(&sb, "{\"metadata\":{\"resourceVersion\":\"1\",\"continue\":\"");
        for (int i = 0; i < K8S_MAX_CONTINUE; i++)
                strbuf_append(&sb, "x");
        strbuf_append(&sb, "\"},\"items\":[]}");
        assert_int_equal(
            k8s_cache_list_page(staging, K8S_SERVICES, sb.data, sb.len, rv, cont, err, sizeof(err)),
            -EINVAL);
        assert_non_null(strstr(err, "continue"));
        strbuf_free(&sb);
        k8s_cache_free(staging);
        k8s_cache_free(c);
}

static void test_app_protocol(void **state)
{
        assert_int_equal(k8s_app_protocol(NULL), PROTO_UNKNOWN);
        assert_int_equal(k8s_app_protocol("HTTP"), PROTO_HTTP1);
        assert_int_equal(k8s_app_protocol("kubernetes.io/h2c"), PROTO_HTTP2);
        assert_int_equal(k8s_app_protocol("grpc"), PROTO_GRPC);
        assert_int_equal(k8s_app_protocol("https"), PROTO_TLS);
        assert_int_equal(k8s_app_protocol("kubernetes.io/ws"), PROTO_UNKNOWN);
}

/* Many services over two namespaces, two slices each (listed in an order
 * unrelated to the services'): every service gets exactly its own. */
static void test_many_services(void **state)
{
        enum { NSVC = 600 };
        struct k8s_cache *c = k8s_cache_new();
        char rv[K8S_MAX_RV], err[256];
        struct strbuf sb;
        strbuf_init(&sb);
        strbuf_append(&sb, "{\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[");
        for (int i = 0; i < NSVC; i++)
                strbuf_appendf(&sb,
                               "%s{\"metadata\":{\"name\":\"s%d\",\"namespace\":\"ns%d\"},"
                               "\"spec\":{\"clusterIP\":\"10.96.%d.%d\",\"ports\":[{\"port\":"
                               "80,\"targetPort\":8080}]}}",
                               i ? "," : "", i, i % 2, i / 250, i % 250 + 1);
        strbuf_append(&sb, "]}");
        assert_int_equal(k8s_cache_list(c, K8S_SERVICES, sb.data, sb.len, rv, err, sizeof(err)), 0);
        strbuf_reset(&sb);
        strbuf_append(&sb, "{\"metadata\":{\"resourceVersion\":\"2\"},\"items\":[");
        for (int k = 0; k < 2 * NSVC; k++) {
                int i = (k * 7919) % NSVC, half = k >= NSVC;
                strbuf_appendf(&sb,
                               "%s{\"metadata\":{\"name\":\"s%d-%d\",\"namespace\":\"ns%d\","
                               "\"labels\":{\"kubernetes.io/service-name\":\"s%d\"}},"
                               "\"addressType\":\"IPv4\",\"ports\":[{\"port\":8080}],"
                               "\"endpoints\":[{\"addresses\":[\"10.%d.%d.%d\"]},{\"addresses\":"
                               "[\"10.%d.%d.%d\"]}]}",
                               k ? "," : "", i, half, i % 2, i, 100 + half, i / 200, i % 200,
                               100 + half, i / 200 + 10, i % 200);
        }
        strbuf_append(&sb, "]}");
        assert_int_equal(k8s_cache_list(c, K8S_SLICES, sb.data, sb.len, rv, err, sizeof(err)), 0);
        strbuf_free(&sb);
        struct disc_service_spec *svcs;
        size_t n;
        assert_int_equal(k8s_cache_build(c, &svcs, &n), 0);
        assert_int_equal(n, NSVC);
        for (size_t i = 0; i < n; i++) {
                int id = atoi(svcs[i].name + 1);
                /* two slices, each with two distinct addresses */
                assert_int_equal(svcs[i].n_endpoints, 4);
                char want[32];
                snprintf(want, sizeof(want), "ns%d", id % 2);
                assert_string_equal(svcs[i].ns, want);
                char ip[64];
                snprintf(want, sizeof(want), "10.100.%d.%d", id / 200, id % 200);
                bool seen = false;
                for (uint32_t e = 0; e < svcs[i].n_endpoints; e++)
                        seen |= strcmp(disc_addr_ip(&svcs[i].endpoints[e].addr, ip, sizeof(ip)),
                                       want) == 0;
                assert_true(seen);
        }
        k8s_specs_free(svcs, n);
        k8s_cache_free(c);
}

/* Watch churn: slices added, modified and deleted over and over, with a
 * build after each event: memory after the second pass is what it was after
 * the first (no growth). */
static void test_churn_bounded(void **state)
{
        enum { SLICES = 200, PASS = 4000 };
        struct k8s_cache *c = k8s_cache_new();
        char rv[K8S_MAX_RV] = "", line[1024];
        const char *svc = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"web\","
                          "\"namespace\":\"x\"},\"spec\":{\"clusterIP\":\"10.96.9.9\","
                          "\"ports\":[{\"port\":80,\"targetPort\":8080}]}}}";
        assert_int_equal(ev(c, K8S_SERVICES, svc, rv), K8S_EV_APPLIED);
        size_t after_first = 0;
        for (int pass = 0; pass < 2; pass++) {
                for (int i = 0; i < PASS; i++) {
                        int id = i % SLICES;
                        const char *type = i % 3 == 2 ? "DELETED" : i % 3 ? "MODIFIED" : "ADDED";
                        snprintf(line, sizeof(line),
                                 "{\"type\":\"%s\",\"object\":{\"metadata\":{\"name\":"
                                 "\"web-%d\",\"namespace\":\"x\",\"resourceVersion\":\"%d\","
                                 "\"labels\":{\"kubernetes.io/service-name\":\"web\"}},"
                                 "\"addressType\":\"IPv4\",\"ports\":[{\"port\":8080}],"
                                 "\"endpoints\":[{\"addresses\":[\"10.5.%d.%d\"]},{"
                                 "\"addresses\":[\"10.6.%d.%d\"]}]}}",
                                 type, id, i, id / 250, id % 250, i % 7, id % 250);
                        assert_int_equal(ev(c, K8S_SLICES, line, rv), K8S_EV_APPLIED);
                        assert_true(n_eps(c, "web") <= 2 * SLICES);
                }
                if (pass == 0)
                        after_first = bytes_in_use();
        }
        assert_true(bytes_in_use() <= after_first);
        k8s_cache_free(c);
}

/* ---- identities: pods, namespaces, annotations --------------------------------- */

/* A pod event line: meshed (label), service account, address, mode
 * annotation ("" = none), uid. */
static void pod_line(char *buf, size_t len, const char *type, const char *ns, const char *name,
                     bool meshed, const char *sa, const char *ip, const char *mode, const char *uid)
{
        char ann[128] = "";
        if (mode[0])
                snprintf(ann, sizeof(ann), ",\"annotations\":{\"shunt.io/mtls-mode\":\"%s\"}",
                         mode);
        snprintf(buf, len,
                 "{\"type\":\"%s\",\"object\":{\"kind\":\"Pod\",\"metadata\":{\"name\":\"%s\","
                 "\"namespace\":\"%s\",\"uid\":\"%s\",\"resourceVersion\":\"7\",\"labels\":{"
                 "\"app\":\"web\"%s}%s},\"spec\":{\"serviceAccountName\":\"%s\"},\"status\":{"
                 "\"podIP\":\"%s\",\"podIPs\":[{\"ip\":\"%s\"}]}}}",
                 type, name, ns, uid, meshed ? ",\"shunt.io/meshed\":\"true\"" : "", ann, sa, ip,
                 ip);
}

static void ns_line(char *buf, size_t len, const char *type, const char *name, const char *mode)
{
        snprintf(buf, len,
                 "{\"type\":\"%s\",\"object\":{\"kind\":\"Namespace\",\"metadata\":{\"name\":"
                 "\"%s\",\"resourceVersion\":\"8\"%s%s%s}}}",
                 type, name, mode[0] ? ",\"annotations\":{\"shunt.io/mtls-mode\":\"" : "", mode,
                 mode[0] ? "\"}" : "");
}

/* Service web in ns (mode annotation "" = none) with one slice: 10.1.0.1
 * -> pod a (uid ua), 10.1.0.2 -> pod b, 10.1.0.3 -> pod gone (never
 * listed), 10.1.0.4 without a targetRef. */
static void web_with_pods(struct k8s_cache *c, const char *ns, const char *svc_mode)
{
        char rv[K8S_MAX_RV] = "", line[2048];
        snprintf(line, sizeof(line),
                 "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"web\",\"namespace\":"
                 "\"%s\"%s%s%s},\"spec\":{\"clusterIP\":\"10.96.1.1\",\"ports\":[{\"port\":80,"
                 "\"targetPort\":8080}]}}}",
                 ns, svc_mode[0] ? ",\"annotations\":{\"shunt.io/mtls-mode\":\"" : "", svc_mode,
                 svc_mode[0] ? "\"}" : "");
        assert_int_equal(ev(c, K8S_SERVICES, line, rv), K8S_EV_APPLIED);
        snprintf(
            line, sizeof(line),
            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"web-1\",\"namespace\":"
            "\"%s\",\"labels\":{\"kubernetes.io/service-name\":\"web\"}},\"addressType\":"
            "\"IPv4\",\"ports\":[{\"port\":8080}],\"endpoints\":["
            "{\"addresses\":[\"10.1.0.1\"],\"targetRef\":{\"kind\":\"Pod\",\"name\":\"a\","
            "\"namespace\":\"%s\",\"uid\":\"ua\"}},"
            "{\"addresses\":[\"10.1.0.2\"],\"targetRef\":{\"kind\":\"Pod\",\"name\":\"b\"}},"
            "{\"addresses\":[\"10.1.0.3\"],\"targetRef\":{\"kind\":\"Pod\",\"name\":\"gone\"}},"
            "{\"addresses\":[\"10.1.0.4\"]}]}}",
            ns, ns);
        assert_int_equal(ev(c, K8S_SLICES, line, rv), K8S_EV_APPLIED);
}

static struct disc_service_spec *built(struct k8s_cache *c, size_t *n)
{
        struct disc_service_spec *svcs;
        assert_int_equal(k8s_cache_build(c, &svcs, n), 0);
        return svcs;
}

static void test_pod_identity(void **state)
{
        struct k8s_cache *c = k8s_cache_new();
        assert_int_equal(k8s_cache_set_trust_domain(c, "mesh.test"), 0);
        assert_int_equal(k8s_cache_set_trust_domain(c, ""), -EINVAL);
        char rv[K8S_MAX_RV] = "", line[2048];
        web_with_pods(c, "shop", "");
        /* Pods arrive after the slice (the race): nothing meshed yet. */
        size_t n;
        struct disc_service_spec *svcs = built(c, &n);
        for (uint32_t i = 0; i < svcs[0].n_endpoints; i++) {
                assert_true(svcs[0].endpoints[i].unmeshed);
                assert_string_equal(svcs[0].endpoints[i].identity, "");
        }
        k8s_specs_free(svcs, n);

        pod_line(line, sizeof(line), "ADDED", "shop", "a", true, "sa-x", "10.1.0.1", "", "ua");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        assert_string_equal(rv, "7");
        pod_line(line, sizeof(line), "ADDED", "shop", "b", true, "sa-y", "10.1.0.2", "", "ub");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        /* 10.1.0.4 has no targetRef: found by address. */
        pod_line(line, sizeof(line), "ADDED", "shop", "d", true, "sa-d", "10.1.0.4", "", "ud");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        /* A pod listed without the selector that is not meshed: not kept. */
        pod_line(line, sizeof(line), "ADDED", "shop", "plain", false, "sa-p", "10.1.0.9", "", "up");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        assert_int_equal(k8s_cache_count(c, K8S_PODS), 3);

        svcs = built(c, &n);
        const struct disc_service_spec *w = spec(svcs, n, "web");
        assert_non_null(w);
        assert_int_equal(w->mtls, DISC_MTLS_DEFAULT);
        assert_string_equal(ep(w, "10.1.0.1", 8080)->identity,
                            "spiffe://mesh.test/ns/shop/sa/sa-x");
        assert_false(ep(w, "10.1.0.1", 8080)->unmeshed);
        assert_string_equal(ep(w, "10.1.0.2", 8080)->identity,
                            "spiffe://mesh.test/ns/shop/sa/sa-y");
        assert_string_equal(ep(w, "10.1.0.4", 8080)->identity,
                            "spiffe://mesh.test/ns/shop/sa/sa-d");
        /* A pod not (yet) known: not meshed. */
        assert_true(ep(w, "10.1.0.3", 8080)->unmeshed);
        assert_string_equal(ep(w, "10.1.0.3", 8080)->identity, "");
        k8s_specs_free(svcs, n);

        /* Status churn (the same pod again): nothing a build reads changed. */
        uint64_t changes = k8s_cache_changes(c);
        pod_line(line, sizeof(line), "MODIFIED", "shop", "d", true, "sa-d", "10.1.0.4", "", "ud");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        assert_true(k8s_cache_changes(c) == changes);
        pod_line(line, sizeof(line), "MODIFIED", "shop", "d", true, "sa-e", "10.1.0.4", "", "ud");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        assert_true(k8s_cache_changes(c) != changes);

        /* The name "a" now belongs to another pod (uid): not meshed until
         * the slice names the new one. */
        pod_line(line, sizeof(line), "MODIFIED", "shop", "a", true, "sa-x", "10.1.0.1", "", "ua2");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        svcs = built(c, &n);
        assert_true(ep(&svcs[0], "10.1.0.1", 8080)->unmeshed);
        k8s_specs_free(svcs, n);
        pod_line(line, sizeof(line), "MODIFIED", "shop", "a", true, "sa-x", "10.1.0.1", "", "ua");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);

        /* b moves meshed -> not meshed: as a MODIFIED without the label (a
         * list or watch without the selector) and, with the selector, as
         * DELETED. Either way its endpoint is no longer meshed. */
        pod_line(line, sizeof(line), "MODIFIED", "shop", "b", false, "sa-y", "10.1.0.2", "", "ub");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        assert_int_equal(k8s_cache_count(c, K8S_PODS), 2);
        svcs = built(c, &n);
        assert_true(ep(&svcs[0], "10.1.0.2", 8080)->unmeshed);
        assert_false(ep(&svcs[0], "10.1.0.1", 8080)->unmeshed);
        k8s_specs_free(svcs, n);
        pod_line(line, sizeof(line), "ADDED", "shop", "b", true, "sa-y", "10.1.0.2", "", "ub");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        pod_line(line, sizeof(line), "DELETED", "shop", "b", false, "sa-y", "10.1.0.2", "", "ub");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        /* Deleting what is not there is harmless. */
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        svcs = built(c, &n);
        assert_true(ep(&svcs[0], "10.1.0.2", 8080)->unmeshed);
        k8s_specs_free(svcs, n);
        k8s_cache_free(c);
}

/* Pod > Service > Namespace > (DEFAULT: the daemon's mtls.mode). */
static void test_mode_precedence(void **state)
{
        struct k8s_cache *c = k8s_cache_new();
        char rv[K8S_MAX_RV] = "", line[2048];
        web_with_pods(c, "shop", "");
        pod_line(line, sizeof(line), "ADDED", "shop", "a", true, "sa-x", "10.1.0.1", "disabled",
                 "ua");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        pod_line(line, sizeof(line), "ADDED", "shop", "b", true, "sa-y", "10.1.0.2", "", "ub");
        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        size_t n;
        struct disc_service_spec *svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_DEFAULT);
        assert_int_equal(ep(&svcs[0], "10.1.0.1", 8080)->mtls, DISC_MTLS_DISABLED);
        assert_int_equal(ep(&svcs[0], "10.1.0.2", 8080)->mtls, DISC_MTLS_DEFAULT);
        k8s_specs_free(svcs, n);

        /* The namespace says strict: the service inherits it. */
        ns_line(line, sizeof(line), "ADDED", "shop", "strict");
        assert_int_equal(ev(c, K8S_NAMESPACES, line, rv), K8S_EV_APPLIED);
        ns_line(line, sizeof(line), "ADDED", "other", "permissive");
        assert_int_equal(ev(c, K8S_NAMESPACES, line, rv), K8S_EV_APPLIED);
        assert_int_equal(k8s_cache_count(c, K8S_NAMESPACES), 2);
        svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_STRICT);
        assert_int_equal(ep(&svcs[0], "10.1.0.1", 8080)->mtls, DISC_MTLS_DISABLED); /* pod wins */
        k8s_specs_free(svcs, n);

        /* The service says permissive: it wins over the namespace. */
        web_with_pods(c, "shop", "permissive");
        svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_PERMISSIVE);
        k8s_specs_free(svcs, n);

        /* A value that is no mode is ignored (logged): the namespace's applies. */
        web_with_pods(c, "shop", "bogus");
        svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_STRICT);
        k8s_specs_free(svcs, n);

        /* The namespace goes: nothing above the service. */
        ns_line(line, sizeof(line), "DELETED", "shop", "");
        assert_int_equal(ev(c, K8S_NAMESPACES, line, rv), K8S_EV_APPLIED);
        svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_DEFAULT);
        k8s_specs_free(svcs, n);

        /* Lists replace: a namespace list without "other". */
        const char *list = "{\"kind\":\"NamespaceList\",\"metadata\":{\"resourceVersion\":\"99\"},"
                           "\"items\":[{\"metadata\":{\"name\":\"shop\",\"annotations\":{"
                           "\"shunt.io/mtls-mode\":\"disabled\"}}}]}";
        char err[256];
        assert_int_equal(
            k8s_cache_list(c, K8S_NAMESPACES, list, strlen(list), rv, err, sizeof(err)), 0);
        assert_string_equal(rv, "99");
        assert_int_equal(k8s_cache_count(c, K8S_NAMESPACES), 1);
        svcs = built(c, &n);
        assert_int_equal(svcs[0].mtls, DISC_MTLS_DISABLED);
        k8s_specs_free(svcs, n);
        k8s_cache_free(c);
}

/* Pods beyond K8S_MAX_PODS are shed (their endpoints not meshed); churn over
 * the pods kept does not grow memory. */
static void test_pods_bounded(void **state)
{
        struct k8s_cache *c = k8s_cache_new();
        char rv[K8S_MAX_RV] = "", line[1024], name[32], ip[32];
        for (int i = 0; i < K8S_MAX_PODS + 10; i++) {
                snprintf(name, sizeof(name), "p-%d", i);
                snprintf(ip, sizeof(ip), "10.%d.%d.%d", 64 + i / 65536, (i / 256) % 256, i % 256);
                pod_line(line, sizeof(line), "ADDED", "ns", name, true, "sa", ip, "", "u");
                assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
        }
        assert_int_equal(k8s_cache_count(c, K8S_PODS), K8S_MAX_PODS);
        size_t before = bytes_in_use();
        for (int pass = 0; pass < 3; pass++) {
                for (int i = 0; i < 2000; i++) {
                        snprintf(name, sizeof(name), "p-%d", i);
                        snprintf(ip, sizeof(ip), "10.64.%d.%d", (i / 256) % 256, i % 256);
                        pod_line(line, sizeof(line), i % 2 ? "DELETED" : "MODIFIED", "ns", name,
                                 true, "sa", ip, "", "u");
                        assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
                        if (i % 2) {
                                pod_line(line, sizeof(line), "ADDED", "ns", name, true, "sa", ip,
                                         "", "u");
                                assert_int_equal(ev(c, K8S_PODS, line, rv), K8S_EV_APPLIED);
                        }
                }
        }
        assert_int_equal(k8s_cache_count(c, K8S_PODS), K8S_MAX_PODS);
        assert_true(bytes_in_use() <= before + 4096);
        k8s_cache_free(c);
}

/* ---- backend creation: credentials ------------------------------------------- */

static int create(const char *kubeconfig, char *err, size_t errlen)
{
        struct shunt_config *cfg = calloc(1, sizeof(*cfg));
        assert_non_null(cfg);
        snprintf(cfg->sd_type, sizeof(cfg->sd_type), "kubernetes");
        snprintf(cfg->k8s_kubeconfig, sizeof(cfg->k8s_kubeconfig), "%s", kubeconfig);
        snprintf(cfg->k8s_namespace, sizeof(cfg->k8s_namespace), "default");
        snprintf(cfg->trust_domain, sizeof(cfg->trust_domain), "cluster.local");
        struct disc_registry *r = disc_registry_new(NULL);
        struct disc_backend *b = NULL;
        int rc = disc_backend_new(r, cfg, &b, err, errlen);
        if (rc == 0) {
                struct strbuf sb;
                strbuf_init(&sb);
                disc_backend_render(b, &sb);
                assert_non_null(strstr(sb.data, "\"type\":\"kubernetes\""));
                assert_non_null(strstr(sb.data, "\"credentials\":\"kubeconfig\""));
                assert_non_null(strstr(sb.data, "https://10.0.0.1:6443"));
                strbuf_free(&sb);
                disc_backend_free(b);
        }
        disc_registry_free(r);
        free(cfg);
        return rc;
}

static void write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static void test_credentials(void **state)
{
        char err[512];
        unsetenv("KUBERNETES_SERVICE_HOST");
        assert_int_equal(create("", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "KUBERNETES_SERVICE_HOST"));
        assert_int_equal(create("/nonexistent/kubeconfig", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "/nonexistent/kubeconfig"));
        char dir[] = "/tmp/shunt-k8s-unit-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[256];
        snprintf(path, sizeof(path), "%s/kubeconfig", dir);
        write_file(path, "{\"clusters\":[]}");
        assert_int_equal(create(path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "current-context"));
        write_file(path, "{\"current-context\":\"c\",\"contexts\":[{\"name\":\"c\",\"context\":{"
                         "\"cluster\":\"k\",\"user\":\"u\"}}],\"clusters\":[{\"name\":\"k\","
                         "\"cluster\":{\"server\":\"https://10.0.0.1:6443\","
                         "\"certificate-authority-data\":\"bm90IGEgY2VydA==\"}}],\"users\":[{"
                         "\"name\":\"u\",\"user\":{\"token\":\"abc\"}}]}");
        assert_int_equal(create(path, err, sizeof(err)), 0);
        write_file(path, "{\"current-context\":\"c\",\"contexts\":[{\"name\":\"c\",\"context\":{"
                         "\"cluster\":\"k\",\"user\":\"u\"}}],\"clusters\":[{\"name\":\"k\","
                         "\"cluster\":{\"server\":\"https://10.0.0.1:6443\","
                         "\"certificate-authority-data\":\"%%%\"}}]}");
        assert_int_equal(create(path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "base64"));
        write_file(path, "{\"current-context\":\"c\",\"contexts\":[{\"name\":\"c\",\"context\":{"
                         "\"cluster\":\"k\",\"user\":\"u\"}}],\"clusters\":[{\"name\":\"k\","
                         "\"cluster\":{\"server\":\"https://10.0.0.1:6443\"}}],\"users\":[{"
                         "\"name\":\"u\",\"user\":{\"client-certificate\":\"c.pem\"}}]}");
        assert_int_equal(create(path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "together"));
        /* the usual YAML form */
        write_file(path, "apiVersion: v1\n"
                         "kind: Config\n"
                         "current-context: c\n"
                         "clusters:\n"
                         "- name: k\n"
                         "  cluster:\n"
                         "    server: https://10.0.0.1:6443\n"
                         "    insecure-skip-tls-verify: true\n"
                         "contexts:\n"
                         "- name: c\n"
                         "  context: {cluster: k, user: u}\n"
                         "users:\n"
                         "- name: u\n"
                         "  user:\n"
                         "    token: \"abc\"\n");
#ifdef SHUNT_HAVE_YAML
        assert_int_equal(create(path, err, sizeof(err)), 0);
        write_file(path, "current-context: [unclosed\n");
        assert_int_equal(create(path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "line"));
#else
        assert_int_equal(create(path, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "libyaml"));
#endif
        unlink(path);
        rmdir(dir);
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_list_mapping),  cmocka_unit_test(test_watch_events),
            cmocka_unit_test(test_list_errors),   cmocka_unit_test(test_list_pages),
            cmocka_unit_test(test_app_protocol),  cmocka_unit_test(test_many_services),
            cmocka_unit_test(test_churn_bounded), cmocka_unit_test(test_credentials),
            cmocka_unit_test(test_pod_identity),  cmocka_unit_test(test_mode_precedence),
            cmocka_unit_test(test_pods_bounded),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* Gateway API routes from Kubernetes (discovery/k8s_routes.c): HTTPRoute and
 * GRPCRoute objects, as the API server serves them, translated into the
 * route model and attached to their Service parents at a build: matches,
 * filters, weighted backends, timeouts, parents (Gateways left alone, port
 * and sectionName), precedence across routes (creationTimestamp, then
 * namespace/name), the last good version kept when a change is refused,
 * and bad input (bad regex, weights summing to 0, unknown backend, another
 * namespace's backend, unsupported filters, bad durations) refused with
 * one line naming the field. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/log.h"
#include "discovery/k8s.h"
#include "discovery/routes.h"

static const char services[] =
    "{\"kind\":\"ServiceList\",\"metadata\":{\"resourceVersion\":\"5\"},\"items\":["
    "{\"metadata\":{\"name\":\"reviews\",\"namespace\":\"shop\"},\"spec\":{\"clusterIP\":"
    "\"10.96.0.20\",\"ports\":[{\"name\":\"http\",\"port\":80,\"targetPort\":8080},"
    "{\"name\":\"grpc\",\"port\":9090,\"appProtocol\":\"grpc\"}]}},"
    "{\"metadata\":{\"name\":\"reviews-v2\",\"namespace\":\"shop\"},\"spec\":{\"clusterIP\":"
    "\"10.96.0.21\",\"ports\":[{\"name\":\"http\",\"port\":80},{\"name\":\"grpc\","
    "\"port\":9090}]}}]}";

static struct k8s_cache *cache_with_services(void)
{
        struct k8s_cache *c = k8s_cache_new();
        assert_non_null(c);
        char rv[K8S_MAX_RV], err[256];
        assert_int_equal(
            k8s_cache_list(c, K8S_SERVICES, services, strlen(services), rv, err, sizeof(err)), 0);
        return c;
}

/* One watch event for an object of kind built from printf-style spec. */
__attribute__((format(printf, 4, 5))) static void event(struct k8s_cache *c, enum k8s_kind kind,
                                                        const char *type, const char *fmt, ...)
{
        char obj[8192], line[9000], rv[K8S_MAX_RV] = "", err[512] = "";
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(obj, sizeof(obj), fmt, ap);
        va_end(ap);
        snprintf(line, sizeof(line), "{\"type\":\"%s\",\"object\":%s}", type, obj);
        assert_int_equal(k8s_cache_event(c, kind, line, strlen(line), rv, err, sizeof(err)),
                         K8S_EV_APPLIED);
}

/* An HTTPRoute in namespace shop, created at ts, attached to reviews. */
#define HTTPROUTE(name, rv, ts, rules)                                                             \
        "{\"apiVersion\":\"gateway.networking.k8s.io/v1\",\"kind\":\"HTTPRoute\",\"metadata\":{"   \
        "\"name\":\"" name "\",\"namespace\":\"shop\",\"resourceVersion\":\"" rv "\","             \
        "\"creationTimestamp\":\"" ts "\"},\"spec\":{\"parentRefs\":[{\"group\":\"\",\"kind\":"    \
        "\"Service\",\"name\":\"reviews\",\"port\":80}],\"rules\":" rules "}}"

struct built {
        struct disc_service_spec *svcs;
        size_t n;
};

static const struct dr_routes *routes_of(struct built *b, struct k8s_cache *c, const char *name)
{
        k8s_specs_free(b->svcs, b->n);
        assert_int_equal(k8s_cache_build(c, &b->svcs, &b->n), 0);
        for (size_t i = 0; i < b->n; i++)
                if (strcmp(b->svcs[i].name, name) == 0)
                        return b->svcs[i].routes;
        fail_msg("no service %s", name);
        return NULL;
}

static char *rejected(struct k8s_cache *c)
{
        static char out[8192];
        struct strbuf sb = {0};
        k8s_cache_render_routes(c, NULL, &sb);
        snprintf(out, sizeof(out), "%s", sb.data ? sb.data : "");
        strbuf_free(&sb);
        return out;
}

struct hdrs {
        const char *name, *value;
};

static bool get_header(void *ctx, const char *name, const char **v, size_t *n)
{
        for (const struct hdrs *h = ctx; h && h->name; h++)
                if (strcasecmp(h->name, name) == 0) {
                        *v = h->value;
                        *n = strlen(h->value);
                        return true;
                }
        return false;
}

/* The rule (route name and index) a request takes on port, or "none". */
static const char *pick(const struct dr_routes *r, uint16_t port, int method, const char *path,
                        struct hdrs *h)
{
        static char out[128];
        const struct dr_port_table *t = dr_port_table(r, port);
        if (!t)
                return "no table";
        struct dr_request req = {.method = method,
                                 .path = path,
                                 .path_len = strlen(path),
                                 .header = get_header,
                                 .ctx = h};
        const struct dr_match *m = dr_match_request(t, &req);
        if (!m)
                return "none";
        const struct dr_rule *u = &r->rules[m->rule];
        snprintf(out, sizeof(out), "%s#%u", r->routes[u->route].name, u->index);
        return out;
}

static void test_translate_http(void **state)
{
        (void)state;
        struct k8s_cache *c = cache_with_services();
        event(
            c, K8S_HTTPROUTES, "ADDED",
            HTTPROUTE("canary", "10", "2026-01-01T00:00:00Z",
                      "[{\"matches\":[{\"path\":{\"type\":\"PathPrefix\",\"value\":\"/api\"},"
                      "\"headers\":[{\"type\":\"Exact\",\"name\":\"x-canary\",\"value\":\"on\"}],"
                      "\"queryParams\":[{\"type\":\"RegularExpression\",\"name\":\"v\","
                      "\"value\":\"[0-9]+\"}],\"method\":\"GET\"}],"
                      "\"filters\":[{\"type\":\"RequestHeaderModifier\",\"requestHeaderModifier\":"
                      "{\"set\":[{\"name\":\"x-via\",\"value\":\"canary\"}],\"remove\":[\"x-a\"]}},"
                      "{\"type\":\"URLRewrite\",\"urlRewrite\":{\"path\":{\"type\":"
                      "\"ReplacePrefixMatch\",\"replacePrefixMatch\":\"/v2\"}}}],"
                      "\"backendRefs\":[{\"group\":\"\",\"kind\":\"Service\",\"name\":\"reviews\","
                      "\"port\":80,\"weight\":90},{\"name\":\"reviews-v2\",\"port\":80,"
                      "\"weight\":10}],\"timeouts\":{\"request\":\"1m30s\","
                      "\"backendRequest\":\"0s\"}},"
                      "{\"matches\":[{\"path\":{\"type\":\"Exact\",\"value\":\"/old\"}}],"
                      "\"filters\":[{\"type\":\"RequestRedirect\",\"requestRedirect\":"
                      "{\"scheme\":\"https\",\"statusCode\":301}}]},"
                      "{\"backendRefs\":[{\"name\":\"reviews\",\"port\":80}],"
                      "\"timeouts\":{\"backendRequest\":\"250ms\"},"
                      "\"filters\":[{\"type\":\"ResponseHeaderModifier\","
                      "\"responseHeaderModifier\":{\"add\":[{\"name\":\"x-r\",\"value\":\"1\"}]}}]}"
                      "]"));
        struct built b = {0};
        const struct dr_routes *r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_int_equal(r->n_routes, 1);
        assert_string_equal(r->routes[0].name, "canary");
        assert_int_equal(r->routes[0].port, 80);
        assert_false(r->routes[0].grpc);
        assert_int_equal(r->n_rules, 3);
        const struct dr_rule *u = &r->rules[0];
        assert_int_equal(u->n_backends, 2);
        assert_string_equal(u->backends[0].name, "reviews");
        assert_string_equal(u->backends[0].ns, "shop");
        assert_int_equal(u->backends[0].weight, 90);
        assert_string_equal(u->backends[1].name, "reviews-v2");
        assert_int_equal(u->backends[1].weight, 10);
        assert_int_equal(u->timeout_ms, 90000);
        assert_int_equal(u->backend_timeout_ms, 0); /* "0s": off */
        /* a try's timeout (per-try), the request's left as the service's */
        assert_int_equal(r->rules[2].backend_timeout_ms, 250);
        assert_int_equal(r->rules[2].timeout_ms, 0);
        assert_true(u->has_req_hdr);
        assert_int_equal(u->req_hdr.n_set, 1);
        assert_int_equal(u->rewrite, DR_REWRITE_PREFIX);
        assert_true(r->rules[1].redirect);
        assert_int_equal(r->rules[1].redirect_status, 301);
        assert_true(r->rules[2].has_resp_hdr);
        /* the port only: 9090 has no routes */
        assert_null(dr_port_table(r, 9090));
        struct hdrs canary[] = {{"x-canary", "on"}, {NULL, NULL}};
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/api/x?v=12", canary), "canary#0");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/api/x?v=a", canary), "canary#2");
        assert_string_equal(pick(r, 80, DR_METHOD_POST, "/api/x?v=12", canary), "canary#2");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/old", NULL), "canary#1");
        assert_string_equal(rejected(c), "[]");
        /* deleted: the service has no routes at the next build */
        event(c, K8S_HTTPROUTES, "DELETED",
              HTTPROUTE("canary", "11", "2026-01-01T00:00:00Z", "[]"));
        assert_null(routes_of(&b, c, "reviews"));
        k8s_specs_free(b.svcs, b.n);
        k8s_cache_free(c);
}

static void test_translate_grpc_and_parents(void **state)
{
        (void)state;
        struct k8s_cache *c = cache_with_services();
        /* sectionName names the port; a Gateway parent is not ours */
        event(c, K8S_GRPCROUTES, "ADDED",
              "{\"kind\":\"GRPCRoute\",\"metadata\":{\"name\":\"rpc\",\"namespace\":\"shop\","
              "\"resourceVersion\":\"3\",\"creationTimestamp\":\"2026-01-01T00:00:00Z\"},"
              "\"spec\":{\"parentRefs\":[{\"name\":\"gw\"},{\"group\":\"\",\"kind\":\"Service\","
              "\"name\":\"reviews\",\"sectionName\":\"grpc\"}],\"rules\":["
              "{\"matches\":[{\"method\":{\"type\":\"Exact\",\"service\":\"shop.Reviews\","
              "\"method\":\"Get\"}}],\"backendRefs\":[{\"name\":\"reviews-v2\",\"port\":9090}]},"
              "{\"matches\":[{\"method\":{\"type\":\"RegularExpression\",\"service\":"
              "\"shop\\\\..*\"}}]}]}}");
        /* only a Gateway parent: left alone, not even validated */
        event(c, K8S_HTTPROUTES, "ADDED",
              "{\"kind\":\"HTTPRoute\",\"metadata\":{\"name\":\"edge\",\"namespace\":\"shop\"},"
              "\"spec\":{\"parentRefs\":[{\"name\":\"gw\"}],\"rules\":[{\"filters\":[{\"type\":"
              "\"ExtensionRef\"}]}]}}");
        assert_int_equal(k8s_cache_count(c, K8S_GRPCROUTES), 1);
        assert_int_equal(k8s_cache_count(c, K8S_HTTPROUTES), 0);
        struct built b = {0};
        const struct dr_routes *r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_true(r->routes[0].grpc);
        assert_int_equal(r->routes[0].port, 9090);
        assert_string_equal(pick(r, 9090, DR_METHOD_POST, "/shop.Reviews/Get", NULL), "rpc#0");
        assert_string_equal(pick(r, 9090, DR_METHOD_POST, "/shop.Reviews/List", NULL), "rpc#1");
        assert_string_equal(pick(r, 9090, DR_METHOD_POST, "/other.S/Get", NULL), "none");
        assert_null(dr_port_table(r, 80));
        /* a sectionName the service does not have: not applied, said why */
        event(c, K8S_GRPCROUTES, "MODIFIED",
              "{\"kind\":\"GRPCRoute\",\"metadata\":{\"name\":\"rpc\",\"namespace\":\"shop\","
              "\"resourceVersion\":\"4\",\"creationTimestamp\":\"2026-01-01T00:00:00Z\"},"
              "\"spec\":{\"parentRefs\":[{\"group\":\"\",\"kind\":\"Service\",\"name\":"
              "\"reviews\",\"sectionName\":\"nope\"}]}}");
        assert_null(routes_of(&b, c, "reviews"));
        assert_non_null(strstr(rejected(c), "sectionName 'nope'"));
        k8s_specs_free(b.svcs, b.n);
        k8s_cache_free(c);
}

static void test_precedence(void **state)
{
        (void)state;
        struct k8s_cache *c = cache_with_services();
        /* Same match in three routes: the oldest wins, then namespace/name. */
        const char *rules = "[{\"matches\":[{\"path\":{\"type\":\"PathPrefix\",\"value\":\"/a\"}}],"
                            "\"backendRefs\":[{\"name\":\"reviews\",\"port\":80}]}]";
        char obj[2048];
        snprintf(obj, sizeof(obj), HTTPROUTE("zeta", "7", "2026-01-02T00:00:00Z", "%s"), rules);
        event(c, K8S_HTTPROUTES, "ADDED", "%s", obj);
        snprintf(obj, sizeof(obj), HTTPROUTE("beta", "8", "2026-01-03T00:00:00Z", "%s"), rules);
        event(c, K8S_HTTPROUTES, "ADDED", "%s", obj);
        snprintf(obj, sizeof(obj), HTTPROUTE("alpha", "9", "2026-01-03T00:00:00Z", "%s"), rules);
        event(c, K8S_HTTPROUTES, "ADDED", "%s", obj);
        struct built b = {0};
        const struct dr_routes *r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_int_equal(r->n_routes, 3);
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/a/b", NULL), "zeta#0");
        /* zeta gone: alpha and beta tie on time, alpha's name sorts first */
        snprintf(obj, sizeof(obj), HTTPROUTE("zeta", "10", "2026-01-02T00:00:00Z", "%s"), rules);
        event(c, K8S_HTTPROUTES, "DELETED", "%s", obj);
        r = routes_of(&b, c, "reviews");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/a/b", NULL), "alpha#0");
        /* a longer prefix in the newest route still wins: precedence is by match */
        event(c, K8S_HTTPROUTES, "ADDED",
              HTTPROUTE("gamma", "11", "2026-02-01T00:00:00Z",
                        "[{\"matches\":[{\"path\":{\"type\":\"PathPrefix\",\"value\":\"/a/b\"}}],"
                        "\"backendRefs\":[{\"name\":\"reviews-v2\",\"port\":80}]}]"));
        r = routes_of(&b, c, "reviews");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/a/b", NULL), "gamma#0");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/a/c", NULL), "alpha#0");
        k8s_specs_free(b.svcs, b.n);
        k8s_cache_free(c);
}

/* A change that cannot be applied leaves the last good version in force. */
static void test_last_good_kept(void **state)
{
        (void)state;
        struct k8s_cache *c = cache_with_services();
        event(
            c, K8S_HTTPROUTES, "ADDED",
            HTTPROUTE("r", "20", "2026-01-01T00:00:00Z",
                      "[{\"matches\":[{\"path\":{\"type\":\"RegularExpression\",\"value\":"
                      "\"/v[0-9]+\"}}],\"backendRefs\":[{\"name\":\"reviews-v2\",\"port\":80}]}]"));
        struct built b = {0};
        const struct dr_routes *r = routes_of(&b, c, "reviews");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/v2", NULL), "r#0");
        /* a regex that does not compile */
        event(c, K8S_HTTPROUTES, "MODIFIED",
              HTTPROUTE("r", "21", "2026-01-01T00:00:00Z",
                        "[{\"matches\":[{\"path\":{\"type\":\"RegularExpression\",\"value\":"
                        "\"/v(\"}}]}]"));
        r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/v2", NULL), "r#0");
        const char *j = rejected(c);
        assert_non_null(strstr(j, "\"name\":\"r\""));
        assert_non_null(strstr(j, "\"resource_version\":\"21\""));
        assert_non_null(strstr(j, "spec.rules[0].matches[0].path"));
        assert_non_null(strstr(j, "\"in_force\":\"20\""));
        /* a relist that still has the bad version keeps the good one too */
        char list[4096], rv[K8S_MAX_RV], err[256];
        snprintf(list, sizeof(list),
                 "{\"kind\":\"HTTPRouteList\",\"metadata\":{\"resourceVersion\":\"30\"},"
                 "\"items\":[" HTTPROUTE("r", "21", "2026-01-01T00:00:00Z",
                                         "[{\"matches\":[{\"path\":{\"type\":"
                                         "\"RegularExpression\",\"value\":\"/v(\"}}]}]") "]}");
        assert_int_equal(
            k8s_cache_list(c, K8S_HTTPROUTES, list, strlen(list), rv, err, sizeof(err)), 0);
        r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/v2", NULL), "r#0");
        /* fixed: the new version applies, nothing rejected */
        event(c, K8S_HTTPROUTES, "MODIFIED",
              HTTPROUTE("r", "31", "2026-01-01T00:00:00Z",
                        "[{\"matches\":[{\"path\":{\"type\":\"Exact\",\"value\":\"/x\"}}]}]"));
        r = routes_of(&b, c, "reviews");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/v2", NULL), "none");
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/x", NULL), "r#0");
        assert_string_equal(rejected(c), "[]");
        k8s_specs_free(b.svcs, b.n);
        k8s_cache_free(c);
}

/* Objects that translate but cannot attach: left out with the reason, the
 * other routes of the service apply. */
static void test_attach_errors(void **state)
{
        (void)state;
        struct k8s_cache *c = cache_with_services();
        event(c, K8S_HTTPROUTES, "ADDED",
              HTTPROUTE("good", "40", "2026-01-01T00:00:00Z",
                        "[{\"backendRefs\":[{\"name\":\"reviews\",\"port\":80}]}]"));
        event(c, K8S_HTTPROUTES, "ADDED",
              HTTPROUTE("ghost", "41", "2026-01-01T00:00:01Z",
                        "[{\"matches\":[{\"path\":{\"value\":\"/g\"}}],"
                        "\"backendRefs\":[{\"name\":\"nosuch\",\"port\":80}]}]"));
        event(c, K8S_HTTPROUTES, "ADDED",
              HTTPROUTE("badport", "42", "2026-01-01T00:00:02Z",
                        "[{\"matches\":[{\"path\":{\"value\":\"/p\"}}],"
                        "\"backendRefs\":[{\"name\":\"reviews-v2\",\"port\":81}]}]"));
        /* a consumer route: another namespace names the service */
        event(c, K8S_HTTPROUTES, "ADDED",
              "{\"kind\":\"HTTPRoute\",\"metadata\":{\"name\":\"consumer\",\"namespace\":"
              "\"other\",\"resourceVersion\":\"43\"},\"spec\":{\"parentRefs\":[{\"group\":\"\","
              "\"kind\":\"Service\",\"name\":\"reviews\",\"namespace\":\"shop\"}]}}");
        struct built b = {0};
        const struct dr_routes *r = routes_of(&b, c, "reviews");
        assert_non_null(r);
        assert_int_equal(r->n_routes, 1);
        assert_string_equal(r->routes[0].name, "good");
        const char *j = rejected(c);
        assert_non_null(strstr(j, "unknown backend service shop/nosuch"));
        assert_non_null(strstr(j, "service shop/reviews-v2 has no port 81"));
        assert_non_null(strstr(j, "consumer route"));
        /* the backend appears: the route applies at the next build */
        const char *more =
            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"nosuch\",\"namespace\":"
            "\"shop\",\"resourceVersion\":\"44\"},\"spec\":{\"clusterIP\":\"10.96.0.30\","
            "\"ports\":[{\"port\":80}]}}}";
        char rv[K8S_MAX_RV], err[256];
        assert_int_equal(k8s_cache_event(c, K8S_SERVICES, more, strlen(more), rv, err, sizeof(err)),
                         K8S_EV_APPLIED);
        r = routes_of(&b, c, "reviews");
        assert_int_equal(r->n_routes, 2);
        assert_string_equal(pick(r, 80, DR_METHOD_GET, "/g", NULL), "ghost#0");
        assert_null(strstr(rejected(c), "nosuch"));
        k8s_specs_free(b.svcs, b.n);
        k8s_cache_free(c);
}

/* Bad objects: one line naming the field, and nothing applied. */
static void test_bad_input(void **state)
{
        (void)state;
        static const struct {
                const char *rules, *want;
        } cases[] = {
            {"[{\"matches\":[{\"headers\":[{\"type\":\"RegularExpression\",\"name\":\"x\","
             "\"value\":\"a{1,2\"}]}]}]",
             "spec.rules[0].matches[0].headers[0]"},
            {"[{\"backendRefs\":[{\"name\":\"reviews\",\"port\":80,\"weight\":0},"
             "{\"name\":\"reviews-v2\",\"port\":80,\"weight\":0}]}]",
             "spec.rules[0].backendRefs: the backends' weights sum to 0"},
            {"[{\"backendRefs\":[{\"name\":\"reviews\",\"namespace\":\"prod\",\"port\":80}]}]",
             "spec.rules[0].backendRefs[0].namespace: a backend in another namespace (prod) "
             "needs a ReferenceGrant"},
            {"[{\"backendRefs\":[{\"name\":\"reviews\"}]}]",
             "spec.rules[0].backendRefs[0].port: required"},
            {"[{\"backendRefs\":[{\"kind\":\"ServiceImport\",\"group\":\"multicluster.x-k8s.io\","
             "\"name\":\"r\",\"port\":80}]}]",
             "only Service backends"},
            {"[{},{\"filters\":[{\"type\":\"ExtensionRef\",\"extensionRef\":{\"group\":\"g\","
             "\"kind\":\"K\",\"name\":\"n\"}}]}]",
             "spec.rules[1].filters[0].type: ExtensionRef filters are not supported"},
            {"[{\"timeouts\":{\"request\":\"10\"}}]",
             "spec.rules[0].timeouts.request: expected a Gateway API duration"},
            {"[{\"timeouts\":{\"request\":\"2h\"}}]",
             "spec.rules[0].timeouts.request: out of range"},
            {"[{\"sessionPersistence\":{}}]", "spec.rules[0].sessionPersistence: not supported"},
            {"[{\"matches\":[{\"path\":{\"type\":\"Prefix\",\"value\":\"/\"}}]}]",
             "spec.rules[0].matches[0].path.type"},
            {"[{\"matches\":[{\"method\":\"BREW\"}]}]", "spec.rules[0].matches[0].method"},
            {"[{\"filters\":[{\"type\":\"RequestHeaderModifier\",\"requestHeaderModifier\":"
             "{\"set\":[{\"name\":\"Host\",\"value\":\"x\"}]}}]}]",
             "'Host' cannot be modified"},
            {"{}", "spec.rules: expected an array"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct k8s_cache *c = cache_with_services();
                char obj[4096];
                snprintf(obj, sizeof(obj), HTTPROUTE("bad", "50", "2026-01-01T00:00:00Z", "%s"),
                         cases[i].rules);
                event(c, K8S_HTTPROUTES, "ADDED", "%s", obj);
                struct built b = {0};
                assert_null(routes_of(&b, c, "reviews"));
                const char *j = rejected(c);
                if (!strstr(j, cases[i].want) || !strstr(j, "\"in_force\":null"))
                        fail_msg("case %zu: '%s' not in %s", i, cases[i].want, j);
                k8s_specs_free(b.svcs, b.n);
                k8s_cache_free(c);
        }
        /* the translation itself, without a cache: a name the model cannot keep */
        char name[100], obj[1024], err[512];
        memset(name, 'n', 80);
        name[80] = '\0';
        snprintf(obj, sizeof(obj),
                 "{\"metadata\":{\"name\":\"%s\",\"namespace\":\"shop\"},\"spec\":{\"parentRefs\":"
                 "[{\"group\":\"\",\"kind\":\"Service\",\"name\":\"reviews\"}]}}",
                 name);
        cJSON *o = cJSON_Parse(obj), *out;
        struct k8s_route_parent parents[K8S_ROUTE_MAX_PARENTS];
        uint32_t np;
        assert_int_equal(k8s_route_translate(o, false, &out, parents, &np, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "metadata.name: longer than 63"));
        cJSON_Delete(o);
        /* a watch event without a name is skipped as bad */
        struct k8s_cache *c = k8s_cache_new();
        const char *line = "{\"type\":\"ADDED\",\"object\":{\"metadata\":{},\"spec\":{}}}";
        char rv[K8S_MAX_RV] = "";
        assert_int_equal(
            k8s_cache_event(c, K8S_HTTPROUTES, line, strlen(line), rv, err, sizeof(err)),
            K8S_EV_BAD);
        k8s_cache_free(c);
}

static void test_duration(void **state)
{
        (void)state;
        uint64_t ms;
        assert_int_equal(k8s_gateway_duration_ms("1h30m", &ms), 0);
        assert_int_equal(ms, 5400000);
        assert_int_equal(k8s_gateway_duration_ms("500ms", &ms), 0);
        assert_int_equal(ms, 500);
        assert_int_equal(k8s_gateway_duration_ms("1h1m1s1ms", &ms), 0);
        assert_int_equal(ms, 3661001);
        assert_int_equal(k8s_gateway_duration_ms("0s", &ms), 0);
        assert_int_equal(ms, 0);
        assert_int_equal(k8s_gateway_duration_ms("99999s", &ms), 0);
        assert_int_equal(k8s_gateway_duration_ms("100000s", &ms), -EINVAL);     /* 6 digits */
        assert_int_equal(k8s_gateway_duration_ms("1h1m1s1ms1h", &ms), -EINVAL); /* 5 groups */
        assert_int_equal(k8s_gateway_duration_ms("1.5s", &ms), -EINVAL);
        assert_int_equal(k8s_gateway_duration_ms("10", &ms), -EINVAL);
        assert_int_equal(k8s_gateway_duration_ms("s", &ms), -EINVAL);
        assert_int_equal(k8s_gateway_duration_ms("", &ms), -EINVAL);
        assert_int_equal(k8s_gateway_duration_ms("1d", &ms), -EINVAL);
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_translate_http),
            cmocka_unit_test(test_translate_grpc_and_parents),
            cmocka_unit_test(test_precedence),
            cmocka_unit_test(test_last_good_kept),
            cmocka_unit_test(test_attach_errors),
            cmocka_unit_test(test_bad_input),
            cmocka_unit_test(test_duration),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* Discovery: the file registry (parsing, every validation error, reload on
 * edit and on atomic rename, last good kept), snapshot lookups (name,
 * virtual address, endpoint address; IPv4 and IPv6), snapshot isolation,
 * staleness, the passive hook, active results, admin JSON and manual
 * registration, and bounded memory under churn. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "core/log.h"
#include "core/loop.h"
#include "discovery/backend.h"
#include "discovery/file.h"
#include "discovery/registry.h"
#include "test_disc_util.h"

static const char *fixture(const char *name)
{
        static char path[512];
        snprintf(path, sizeof(path), "%s/discovery/%s", SHUNT_FIXTURES, name);
        return path;
}

static struct disc_addr A(const char *ip, uint16_t port) {
        struct disc_addr a;
        assert_int_equal(disc_addr_parse(ip, port, &a), 0);
        return a;
}

/* A controllable clock for staleness and ejection timing. */
static uint64_t fake_now = 1000000;
static uint64_t fake_clock(void *ctx)
{
        (void)ctx;
        return fake_now;
}

static struct disc_registry *new_reg(void)
{
        struct disc_registry_opts o = {.clock_ms = fake_clock};
        struct disc_registry *r = disc_registry_new(&o);
        assert_non_null(r);
        return r;
}

/* ---- parsing ------------------------------------------------------------- */

static void test_parse_full(void **state)
{
        (void)state;
        size_t len;
        char *text = slurp_path(fixture("full.json"), &len);
        struct disc_specs s;
        char err[512] = "";
        int rc = disc_file_parse("full.json", text, len, &s, err, sizeof(err));
        if (rc)
                fail_msg("%s", err);
        assert_int_equal(s.n, 3);
        const struct disc_service_spec *web = &s.svcs[0];
        assert_string_equal(web->name, "web");
        assert_string_equal(web->ns, "shop");
        assert_int_equal(web->n_vips, 2);
        assert_int_equal(web->vips[1].family, AF_INET6);
        assert_int_equal(web->n_ports, 2);
        assert_int_equal(web->ports[0].port, 80);
        assert_int_equal(web->ports[0].target_port, 8080);
        assert_int_equal(web->ports[0].proto, PROTO_HTTP1);
        assert_int_equal(web->ports[1].target_port, 9090);
        assert_int_equal(web->ports[1].proto, PROTO_GRPC);
        assert_string_equal(web->identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert_int_equal(web->mtls, DISC_MTLS_STRICT);
        assert_int_equal(web->lb, DISC_LB_CONSISTENT_HASH);
        assert_string_equal(web->hash_key, "X-User-Id");
        assert_int_equal(web->hc.type, DISC_HC_HTTP);
        assert_string_equal(web->hc.path, "/healthz");
        assert_int_equal(web->hc.interval_ms, 5000);
        assert_int_equal(web->hc.timeout_ms, 500);
        assert_int_equal(web->hc.passive_failures, 4);
        assert_int_equal(web->hc.ejection_ms, 20000);
        /* the port-less IPv6 endpoint serves both ports */
        assert_int_equal(web->n_endpoints, 4);
        assert_int_equal(web->endpoints[0].weight, 3);
        assert_string_equal(web->endpoints[0].zone, "eu-west-1a");
        assert_string_equal(web->endpoints[0].region, "eu-west-1");
        assert_int_equal(web->endpoints[0].health, DISC_HEALTH_HEALTHY);
        assert_int_equal(web->endpoints[2].health, DISC_HEALTH_DRAINING);
        assert_int_equal(web->endpoints[2].addr.port, 8080);
        assert_int_equal(web->endpoints[3].addr.port, 9090);
        const struct disc_service_spec *rev = &s.svcs[1];
        assert_string_equal(rev->ns, "default");
        assert_int_equal(rev->mtls, DISC_MTLS_PERMISSIVE);
        assert_int_equal(rev->hc.type, DISC_HC_NONE);
        assert_int_equal(rev->hc.passive_failures, DISC_HC_DEFAULT_PASSIVE_FAILS);
        assert_int_equal(rev->endpoints[0].addr.port, 9080);
        assert_int_equal(rev->endpoints[0].weight, DISC_DEFAULT_WEIGHT);
        assert_int_equal(s.svcs[2].hc.interval_ms, 2000);
        disc_specs_free(&s);
        free(text);
}

/* Identity per endpoint: its own, its service's, none ("meshed": false);
 * its own mode over the service's, in the spec and in the snapshot. */
static void test_endpoint_identity(void **state)
{
        (void)state;
        static const char reg[] =
            "{\"services\":[{\"name\":\"web\",\"addresses\":[\"10.96.0.1\"],\"ports\":[{"
            "\"port\":80,\"target_port\":8080}],\"identity\":\"spiffe://td/ns/a/sa/web\","
            "\"mtls\":\"strict\",\"endpoints\":["
            "{\"address\":\"10.0.0.1\"},"
            "{\"address\":\"10.0.0.2\",\"identity\":\"spiffe://td/ns/a/sa/canary\"},"
            "{\"address\":\"10.0.0.3\",\"meshed\":false},"
            "{\"address\":\"10.0.0.4\",\"mtls\":\"disabled\"}]},"
            "{\"name\":\"plain\",\"addresses\":[\"10.96.0.2\"],\"ports\":[{\"port\":80}],"
            "\"endpoints\":[{\"address\":\"10.0.0.9\"}]}]}";
        struct disc_specs sp;
        char err[512] = "";
        if (disc_file_parse("t.json", reg, strlen(reg), &sp, err, sizeof(err)))
                fail_msg("%s", err);
        const struct disc_service_spec *web = &sp.svcs[0];
        assert_string_equal(web->endpoints[0].identity, "");
        assert_string_equal(web->endpoints[1].identity, "spiffe://td/ns/a/sa/canary");
        assert_true(web->endpoints[2].unmeshed);
        assert_int_equal(web->endpoints[3].mtls, DISC_MTLS_DISABLED);
        struct disc_registry *r = new_reg();
        int src = disc_source_add(r, "file", DISC_SOURCE_FILE);
        assert_int_equal(disc_registry_replace(r, src, sp.svcs, sp.n), 0);
        disc_specs_free(&sp);
        assert_int_equal(disc_registry_publish(r), 0);
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        static const struct {
                const char *ip;
                const char *identity;
                bool meshed;
                enum disc_mtls mtls;
        } want[] = {
            {"10.0.0.1", "spiffe://td/ns/a/sa/web", true, DISC_MTLS_STRICT},
            {"10.0.0.2", "spiffe://td/ns/a/sa/canary", true, DISC_MTLS_STRICT},
            {"10.0.0.3", "", false, DISC_MTLS_STRICT},
            {"10.0.0.4", "spiffe://td/ns/a/sa/web", true, DISC_MTLS_DISABLED},
            {"10.0.0.9", "", false, DISC_MTLS_DEFAULT},
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                struct disc_addr a = A(want[i].ip, strcmp(want[i].ip, "10.0.0.9") ? 8080 : 80);
                const struct disc_endpoint *ep = disc_find_endpoint(snap, &a);
                assert_non_null(ep);
                assert_string_equal(ep->identity, want[i].identity);
                assert_int_equal(ep->meshed, want[i].meshed);
                assert_int_equal(ep->mtls, want[i].mtls);
        }
        disc_snapshot_release(snap);
        /* /endpoints shows them per endpoint */
        struct strbuf sb;
        strbuf_init(&sb);
        disc_render_endpoints(r, &sb, "web");
        assert_non_null(strstr(sb.data,
                               "\"identity\":\"spiffe://td/ns/a/sa/canary\",\"meshed\":true,"
                               "\"mtls\":\"strict\""));
        assert_non_null(strstr(sb.data, "\"identity\":\"\",\"meshed\":false,\"mtls\":\"strict\""));
        strbuf_free(&sb);
        disc_registry_free(r);
}

struct bad_case {
        const char *json;
        const char *expect; /* substring of the error */
};

#define SVC(extra) "{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80}]" extra "}]}"

static const struct bad_case bad_cases[] = {
    {"{\"services\": [", "t.json:1: invalid JSON"},
    {"{\"services\": []} x", "unexpected text after"},
    {"[]", "(top level): expected an object, got an array"},
    {"{}", "(top level): missing key 'services'"},
    {"{\"services\":[],\"extra\":1}", "extra: unknown key (allowed: services)"},
    {"{\"services\":{}}", "services: expected an array, got an object"},
    {"{\"services\":[1]}", "services[0]: expected an object, got a number"},
    {"{\"services\":[{\"ports\":[{\"port\":80}]}]}", "services[0]: missing key 'name'"},
    {"{\"services\":[{\"name\":\"A_b\",\"ports\":[{\"port\":80}]}]}",
     "services[0].name: 'A_b' is not a lower-case DNS label"},
    {"{\"services\":[{\"name\":\"a\"}]}", "services[0]: missing key 'ports'"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[]}]}", "services[0].ports: expected 1..32 ports"},
    {SVC(",\"namespace\":7"), "services[0].namespace: expected a string, got a number"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":70000}]}]}",
     "services[0].ports[0].port: 70000 is out of range 1..65535"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80.5}]}]}",
     "services[0].ports[0].port: expected an integer, got 80.5"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":\"80\"}]}]}",
     "services[0].ports[0].port: expected an integer, got a string"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80,\"protocol\":\"SMTP\"}]}]}",
     "services[0].ports[0].protocol: expected one of HTTP, HTTP2, GRPC, TCP, TLS"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80},{\"port\":80}]}]}",
     "services[0].ports[1]: port 80 is declared twice"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80,\"portt\":1}]}]}",
     "services[0].ports[0].portt: unknown key"},
    {"{\"services\":[{\"name\":\"a\",\"name\":\"b\",\"ports\":[{\"port\":80}]}]}",
     "services[0].name: duplicate key"},
    {SVC(",\"addresses\":[\"10.0.0.300\"]"),
     "services[0].addresses[0]: '10.0.0.300' is not an IPv4 or IPv6 address"},
    {SVC(",\"addresses\":[\"0.0.0.0\"]"), "services[0].addresses[0]: '0.0.0.0' is unspecified"},
    {SVC(",\"addresses\":[\"ff02::1\"]"), "services[0].addresses[0]: 'ff02::1' is multicast"},
    {SVC(",\"addresses\":[\"10.0.0.1\",\"10.0.0.1\"]"),
     "services[0].addresses[1]: '10.0.0.1' is listed twice"},
    {SVC(",\"identity\":\"web\""), "services[0].identity: 'web' is not a SPIFFE ID"},
    {SVC(",\"mtls\":\"on\""), "services[0].mtls: expected one of strict, permissive, disabled"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"identity\":\"sa/x\"}]"),
     "services[0].endpoints[0].identity: 'sa/x' is not a SPIFFE ID"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"meshed\":\"no\"}]"),
     "services[0].endpoints[0].meshed: expected true or false"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"mtls\":\"loose\"}]"),
     "services[0].endpoints[0].mtls: expected one of strict, permissive, disabled"},
    {SVC(",\"load_balancing\":{\"algorithm\":\"random\"}"),
     "services[0].load_balancing.algorithm: expected one of round_robin"},
    {SVC(",\"load_balancing\":{\"hash\":\"x\"}"), "services[0].load_balancing.hash: unknown key"},
    {SVC(",\"health_check\":{\"type\":\"icmp\"}"),
     "services[0].health_check.type: expected one of none, tcp, http"},
    {SVC(",\"health_check\":{\"type\":\"http\"}"),
     "services[0].health_check: missing key 'path' (an http check needs one)"},
    {SVC(",\"health_check\":{\"type\":\"http\",\"path\":\"healthz\"}"),
     "services[0].health_check.path: must start with '/'"},
    {SVC(",\"health_check\":{\"type\":\"tcp\",\"interval\":\"soon\"}"),
     "services[0].health_check.interval: 'soon' is not a duration"},
    {SVC(",\"health_check\":{\"type\":\"tcp\",\"interval\":\"1s\",\"timeout\":\"2s\"}"),
     "services[0].health_check.timeout: timeout 2000ms is longer than the interval 1000ms"},
    {SVC(",\"health_check\":{\"healthy_threshold\":0}"),
     "services[0].health_check.healthy_threshold: 0 is out of range 1..100"},
    {SVC(",\"endpoints\":{}"), "services[0].endpoints: expected an array, got an object"},
    {SVC(",\"endpoints\":[{\"port\":80}]"), "services[0].endpoints[0]: missing key 'address'"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"port\":0}]"),
     "services[0].endpoints[0].port: 0 is out of range 1..65535"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"port\":81}]"),
     "services[0].endpoints[0].port: 81 is not a target_port of this service"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"weight\":-1}]"),
     "services[0].endpoints[0].weight: -1 is out of range 0..10000"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"health\":\"ok\"}]"),
     "services[0].endpoints[0].health: expected one of healthy, unhealthy, unknown, draining"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\",\"zone\":[]}]"),
     "services[0].endpoints[0].zone: expected a string, got an array"},
    {SVC(",\"endpoints\":[{\"address\":\"10.0.0.1\"},{\"address\":\"10.0.0.1\",\"port\":80}]"),
     "services[0].endpoints[1]: endpoint 10.0.0.1 port 80 is listed twice"},
    {SVC(",\"endpoints\":[{\"address\":\"fd00::1\",\"tags\":1}]"),
     "services[0].endpoints[0].tags: unknown key"},
    {"{\"services\":[{\"name\":\"a\",\"ports\":[{\"port\":80}]},"
     "{\"name\":\"a\",\"ports\":[{\"port\":81}]}]}",
     "services[1]: service default/a is already defined by services[0]"},
    {"{\"services\":[{\"name\":\"a\",\"addresses\":[\"10.1.1.1\"],\"ports\":[{\"port\":80}]},"
     "{\"name\":\"b\",\"addresses\":[\"10.1.1.1\"],\"ports\":[{\"port\":80}]}]}",
     "services[1]: address 10.1.1.1 port 80 is already used by services[0] (default/a)"},
};

static void test_validation_errors(void **state)
{
        (void)state;
        for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
                struct disc_specs s;
                char err[512] = "";
                int rc = disc_file_parse("t.json", bad_cases[i].json, strlen(bad_cases[i].json), &s,
                                         err, sizeof(err));
                if (rc != -EINVAL || !strstr(err, bad_cases[i].expect))
                        fail_msg("case %zu: rc %d, error '%s', expected '%s'", i, rc, err,
                                 bad_cases[i].expect);
                assert_true(strncmp(err, "t.json", 6) == 0);
        }
}

static void test_validation_line(void **state)
{
        (void)state;
        const char *text = "{\n"
                           "  \"services\": [\n"
                           "    {\"name\": \"a\", \"ports\": [{\"port\": 80}],\n"
                           "     \"endpoints\": [\n"
                           "       {\"address\": \"10.0.0.1\"},\n"
                           "       {\"address\": \"10.0.0.2\",\n"
                           "        \"weight\": \"heavy\"}\n"
                           "     ]}\n"
                           "  ]\n"
                           "}\n";
        struct disc_specs s;
        char err[512];
        assert_int_equal(disc_file_parse("reg.json", text, strlen(text), &s, err, sizeof(err)),
                         -EINVAL);
        assert_string_equal(err, "reg.json:7: services[0].endpoints[1].weight: expected an "
                                 "integer, got a string");
        const char *syntax = "{\n \"services\": [\n  {\"name\": \"a\",,}\n ]\n}\n";
        assert_int_equal(disc_file_parse("reg.json", syntax, strlen(syntax), &s, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "reg.json:3: invalid JSON"));
}

/* ---- registry and snapshots ------------------------------------------------- */

static struct disc_registry *load_full(int *src)
{
        struct disc_registry *r = new_reg();
        size_t len;
        char *text = slurp_path(fixture("full.json"), &len);
        struct disc_specs s;
        char err[512];
        assert_int_equal(disc_file_parse("full.json", text, len, &s, err, sizeof(err)), 0);
        *src = disc_source_add(r, "file", DISC_SOURCE_FILE);
        assert_true(*src >= 0);
        assert_int_equal(disc_registry_replace(r, *src, s.svcs, s.n), 0);
        disc_source_sync_ok(r, *src);
        assert_int_equal(disc_registry_publish(r), 0);
        disc_specs_free(&s);
        free(text);
        return r;
}

static void test_lookups(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        assert_int_equal(disc_snapshot_n_services(s), 3);
        assert_int_equal(disc_snapshot_n_endpoints(s), 4 + 2 + 2);
        /* services in (namespace, name) order */
        assert_string_equal(disc_snapshot_service(s, 0)->name, "db");
        assert_string_equal(disc_snapshot_service(s, 1)->name, "reviews");
        assert_string_equal(disc_snapshot_service(s, 2)->name, "web");

        const struct disc_service *web = disc_find_service(s, "shop", "web");
        assert_non_null(web);
        assert_null(disc_find_service(s, NULL, "web"));
        assert_null(disc_find_service(s, "default", "nope"));
        assert_non_null(disc_find_service(s, NULL, "reviews"));
        assert_int_equal(web->n_endpoints, 4);
        assert_int_equal(web->n_healthy, 2); /* healthy + unknown; draining is out */

        uint32_t pi = 99;
        struct disc_addr vip = A("10.96.0.10", 9090);
        assert_ptr_equal(disc_find_vip(s, &vip, &pi), web);
        assert_int_equal(pi, 1);
        vip = A("fd00:96::10", 80);
        assert_ptr_equal(disc_find_vip(s, &vip, &pi), web);
        assert_int_equal(pi, 0);
        vip = A("10.96.0.10", 81);
        assert_null(disc_find_vip(s, &vip, NULL));
        struct sockaddr_storage ss;
        struct disc_addr dbvip = A("10.96.0.30", 5432);
        disc_addr_to_sockaddr(&dbvip, &ss);
        const struct disc_service *db = disc_find_vip_sa(s, &ss, &pi);
        assert_non_null(db);
        assert_string_equal(db->name, "db");
        assert_string_equal(db->ns, "data");
        assert_int_equal(db->lb, DISC_LB_MAGLEV);

        struct disc_addr ea = A("fd00:1::3", 9090);
        const struct disc_endpoint *ep = disc_find_endpoint(s, &ea);
        assert_non_null(ep);
        assert_ptr_equal(disc_endpoint_service(s, ep), web);
        assert_true(disc_endpoint_serves(web, 1, ep));
        assert_false(disc_endpoint_serves(web, 0, ep));
        assert_int_equal(ep->health, DISC_HEALTH_DRAINING);
        assert_false(disc_endpoint_routable(ep));
        ea = A("10.0.1.1", 8080);
        ep = disc_find_endpoint(s, &ea);
        assert_non_null(ep);
        assert_int_equal(ep->weight, 3);
        assert_string_equal(ep->zone, "eu-west-1a");
        ea = A("10.0.1.1", 5432);
        ep = disc_find_endpoint(s, &ea);
        assert_non_null(ep);
        assert_string_equal(disc_endpoint_service(s, ep)->name, "db");
        ea = A("10.0.1.9", 8080);
        assert_null(disc_find_endpoint(s, &ea));
        disc_snapshot_release(s);
        disc_registry_free(r);
}

/* The cluster is part of an endpoint's key: the same address from two
 * clusters is two endpoints, each removed on its own. */
static void test_cluster_key(void **state)
{
        (void)state;
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "t", DISC_SOURCE_FILE);
        struct disc_service_spec sp;
        disc_service_spec_init(&sp);
        snprintf(sp.name, sizeof(sp.name), "web");
        sp.ports[0].port = 80;
        sp.ports[0].target_port = 8080;
        sp.n_ports = 1;
        struct disc_endpoint_spec e[3];
        memset(e, 0, sizeof(e));
        for (int i = 0; i < 3; i++) {
                e[i].addr = A(i == 2 ? "10.0.0.2" : "10.0.0.1", 8080);
                e[i].weight = 1;
        }
        snprintf(e[0].cluster, sizeof(e[0].cluster), "east");
        snprintf(e[1].cluster, sizeof(e[1].cluster), "west");
        sp.endpoints = e;
        sp.n_endpoints = 3;
        assert_int_equal(disc_registry_replace(r, src, &sp, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_service *web = disc_find_service(s, NULL, "web");
        assert_int_equal(web->n_endpoints, 3);
        /* sorted by address, then cluster ("" first) */
        assert_string_equal(web->endpoints[0].cluster, "east");
        assert_string_equal(web->endpoints[1].cluster, "west");
        assert_string_equal(web->endpoints[2].cluster, "");
        disc_snapshot_release(s);
        sp.endpoints = &e[1];
        sp.n_endpoints = 2;
        assert_int_equal(disc_registry_replace(r, src, &sp, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        s = disc_registry_acquire(r);
        web = disc_find_service(s, NULL, "web");
        assert_int_equal(web->n_endpoints, 2);
        assert_string_equal(web->endpoints[0].cluster, "west");
        disc_snapshot_release(s);
        disc_registry_free(r);
}

static void test_snapshot_isolation(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        struct snapshot_reader rd = {0};
        const struct disc_snapshot *old =
            disc_snapshot_cast(snapshot_reader_get(&rd, disc_registry_slot(r)));
        uint64_t v = disc_snapshot_version(old);
        const struct disc_service *web = disc_find_service(old, "shop", "web");
        assert_non_null(web);
        /* remove web, change reviews: the held snapshot must not change */
        struct disc_service_spec spec;
        disc_service_spec_init(&spec);
        snprintf(spec.name, sizeof(spec.name), "reviews");
        spec.n_ports = 1;
        spec.ports[0].port = 9080;
        spec.ports[0].proto = PROTO_TCP;
        assert_int_equal(disc_registry_replace(r, src, &spec, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        assert_true(disc_registry_version(r) > v);
        const struct disc_snapshot *cur = disc_registry_acquire(r);
        assert_null(disc_find_service(cur, "shop", "web"));
        assert_int_equal(disc_snapshot_n_endpoints(cur), 0);
        /* the old one is intact */
        assert_int_equal(disc_snapshot_version(old), v);
        assert_ptr_equal(disc_find_service(old, "shop", "web"), web);
        assert_int_equal(web->n_endpoints, 4);
        assert_string_equal(web->endpoints[0].zone, "eu-west-1a");
        assert_int_equal(disc_snapshot_n_endpoints(old), 8);
        /* the reader moves on when it refreshes */
        const struct disc_snapshot *now =
            disc_snapshot_cast(snapshot_reader_get(&rd, disc_registry_slot(r)));
        assert_ptr_equal(now, cur);
        disc_snapshot_release(cur);
        snapshot_reader_release(&rd);
        disc_registry_free(r);
}

static void test_staleness(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        assert_false(disc_source_stale(r, src));
        fake_now += 5000;
        disc_source_sync_failed(r, src, "connection refused");
        assert_true(disc_source_stale(r, src));
        assert_int_equal(disc_source_staleness_ms(r, src), 5000);
        disc_registry_tick(r);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_service *web = disc_find_service(s, "shop", "web");
        assert_true(web->stale);
        for (uint32_t i = 0; i < web->n_endpoints; i++)
                assert_true(web->endpoints[i].stale);
        /* health is kept as it was, not invented */
        struct disc_addr a = A("10.0.1.1", 8080);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_HEALTHY);
        a = A("10.0.2.2", 9080);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_UNHEALTHY);
        a = A("10.0.1.2", 8080);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_UNKNOWN);
        disc_snapshot_release(s);
        fake_now += 30000;
        assert_int_equal(disc_source_staleness_ms(r, src), 35000);
        struct strbuf sb;
        strbuf_init(&sb);
        disc_render_cache(r, &sb);
        cJSON *j = cJSON_Parse(sb.data);
        assert_non_null(j);
        cJSON *src0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "sources"), 0);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(src0, "stale")));
        assert_int_equal(cJSON_GetObjectItem(src0, "staleness_seconds")->valueint, 35);
        assert_string_equal(cJSON_GetObjectItem(src0, "last_error")->valuestring,
                            "connection refused");
        assert_int_equal(cJSON_GetObjectItem(j, "stale_endpoints")->valueint, 8);
        cJSON_Delete(j);
        strbuf_free(&sb);
        /* recovery */
        disc_source_sync_ok(r, src);
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_false(disc_find_service(s, "shop", "web")->stale);
        disc_snapshot_release(s);
        disc_registry_free(r);
}

struct reporter {
        struct disc_registry *r;
        struct disc_addr addr;
        int n;
};

static void *report_thread(void *arg)
{
        struct reporter *rp = arg;
        struct snapshot_reader rd = {0};
        for (int i = 0; i < rp->n; i++) {
                const struct disc_snapshot *s =
                    disc_snapshot_cast(snapshot_reader_get(&rd, disc_registry_slot(rp->r)));
                const struct disc_endpoint *ep = disc_find_endpoint(s, &rp->addr);
                if (ep)
                        disc_report(s, ep, DISC_OUTCOME_FAILURE);
        }
        snapshot_reader_release(&rd);
        return NULL;
}

static void test_passive_hook(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        struct disc_addr a = A("10.0.2.1", 9080); /* reviews: default passive 5 failures */
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_endpoint *ep = disc_find_endpoint(s, &a);
        assert_int_equal(ep->health, DISC_HEALTH_UNKNOWN);
        for (int i = 0; i < 4; i++)
                disc_report(s, ep, DISC_OUTCOME_FAILURE);
        disc_report(s, ep, DISC_OUTCOME_SUCCESS); /* resets the run */
        for (int i = 0; i < 4; i++)
                disc_report(s, ep, DISC_OUTCOME_FAILURE);
        disc_registry_tick(r);
        const struct disc_snapshot *s2 = disc_registry_acquire(r);
        assert_true(disc_endpoint_routable(disc_find_endpoint(s2, &a)));
        disc_snapshot_release(s2);
        disc_report(s, ep, DISC_OUTCOME_FAILURE); /* fifth in a row */
        disc_registry_tick(r);
        s2 = disc_registry_acquire(r);
        assert_true(disc_snapshot_version(s2) > disc_snapshot_version(s));
        assert_int_equal(disc_find_endpoint(s2, &a)->health, DISC_HEALTH_UNHEALTHY);
        assert_int_equal(disc_find_service(s2, NULL, "reviews")->n_healthy, 0);
        disc_snapshot_release(s2);
        /* ejection ends after ejection_time (30 s by default) */
        fake_now += DISC_HC_DEFAULT_EJECTION_MS - 1;
        disc_registry_tick(r);
        s2 = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s2, &a)->health, DISC_HEALTH_UNHEALTHY);
        disc_snapshot_release(s2);
        fake_now += 1;
        disc_registry_tick(r);
        s2 = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s2, &a)->health, DISC_HEALTH_UNKNOWN);
        disc_snapshot_release(s2);
        disc_snapshot_release(s);

        /* from several threads at once, through readers */
        struct reporter rp = {.r = r, .addr = a, .n = 2000};
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
                assert_int_equal(pthread_create(&t[i], NULL, report_thread, &rp), 0);
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        disc_registry_tick(r);
        struct strbuf sb;
        strbuf_init(&sb);
        disc_render_endpoints(r, &sb, "reviews");
        cJSON *j = cJSON_Parse(sb.data);
        assert_non_null(j);
        cJSON *eps = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "services"), 0),
                                         "endpoints");
        cJSON *e0 = cJSON_GetArrayItem(eps, 0);
        assert_string_equal(cJSON_GetObjectItem(e0, "address")->valuestring, "10.0.2.1");
        assert_string_equal(cJSON_GetObjectItem(e0, "health")->valuestring, "unhealthy");
        cJSON *passive = cJSON_GetObjectItem(e0, "passive");
        assert_int_equal(cJSON_GetObjectItem(passive, "failures")->valueint, 9 + 8000);
        assert_int_equal(cJSON_GetObjectItem(passive, "ejections")->valueint, 2);
        cJSON_Delete(j);
        strbuf_free(&sb);

        /* a report against a removed endpoint is dropped */
        s = disc_registry_acquire(r);
        ep = disc_find_endpoint(s, &a);
        assert_int_equal(disc_registry_remove_endpoint(r, src, NULL, "reviews", &a), 0);
        disc_report(s, ep, DISC_OUTCOME_FAILURE);
        disc_snapshot_release(s);
        disc_registry_tick(r);
        disc_registry_free(r);
}

static void test_active_results(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        /* web: healthy_threshold 2, unhealthy_threshold 3 */
        struct disc_addr a = A("10.0.1.2", 8080);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_endpoint *ep = disc_find_endpoint(s, &a);
        uint32_t slot = ep->slot, gen = ep->slot_gen;
        disc_snapshot_release(s);
        disc_registry_active_result(r, slot, gen, false); /* first result decides */
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_UNHEALTHY);
        disc_snapshot_release(s);
        disc_registry_active_result(r, slot, gen, true);
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_UNHEALTHY);
        disc_snapshot_release(s);
        disc_registry_active_result(r, slot, gen, true);
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_HEALTHY);
        disc_snapshot_release(s);
        for (int i = 0; i < 2; i++)
                disc_registry_active_result(r, slot, gen, false);
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_HEALTHY);
        disc_snapshot_release(s);
        disc_registry_active_result(r, slot, gen, false);
        disc_registry_active_result(r, slot, gen + 1, true); /* stale generation: ignored */
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_UNHEALTHY);
        disc_snapshot_release(s);
        /* a declared draining endpoint stays draining whatever the checks say */
        a = A("fd00:1::3", 8080);
        s = disc_registry_acquire(r);
        ep = disc_find_endpoint(s, &a);
        slot = ep->slot;
        gen = ep->slot_gen;
        disc_snapshot_release(s);
        disc_registry_active_result(r, slot, gen, true);
        disc_registry_tick(r);
        s = disc_registry_acquire(r);
        assert_int_equal(disc_find_endpoint(s, &a)->health, DISC_HEALTH_DRAINING);
        disc_snapshot_release(s);
        disc_registry_free(r);
}

/* ---- file watching ---------------------------------------------------------- */

static char tmpdir[256];

static void write_file(const char *path, const char *text)
{
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static const char *reg_v1 =
    "{\"services\":[{\"name\":\"api\",\"addresses\":[\"10.96.1.1\"],"
    "\"ports\":[{\"port\":80}],\"endpoints\":[{\"address\":\"10.1.0.1\"}]}]}";
static const char *reg_v2 = "{\"services\":[{\"name\":\"api\",\"addresses\":[\"10.96.1.1\"],"
                            "\"ports\":[{\"port\":80}],\"endpoints\":[{\"address\":\"10.1.0.1\"},"
                            "{\"address\":\"10.1.0.2\"}]}]}";
static const char *reg_v3 = "{\"services\":[{\"name\":\"api\",\"addresses\":[\"10.96.1.1\"],"
                            "\"ports\":[{\"port\":80}],\"endpoints\":[{\"address\":\"10.1.0.3\"},"
                            "{\"address\":\"10.1.0.4\"},{\"address\":\"10.1.0.5\"}]}]}";

static uint32_t api_endpoints(struct disc_registry *r)
{
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_service *svc = disc_find_service(s, NULL, "api");
        uint32_t n = svc ? svc->n_endpoints : 0;
        disc_snapshot_release(s);
        return n;
}

static void test_file_reload(void **state)
{
        (void)state;
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/shunt-disc-XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
        char path[300];
        snprintf(path, sizeof(path), "%s/registry.json", tmpdir);
        struct disc_registry *r = new_reg();
        char err[512] = "";
        struct disc_file *f = disc_file_new(r, path, err, sizeof(err));
        assert_non_null(f);
        /* missing at first: an error naming the file */
        assert_int_equal(disc_file_check(f, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "registry.json"));
        write_file(path, reg_v1);
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 1);
        assert_int_equal(api_endpoints(r), 1);
        assert_false(disc_source_stale(r, disc_file_source(f)));
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 0); /* unchanged */
        /* an edit (size changes) */
        write_file(path, reg_v2);
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 1);
        assert_int_equal(api_endpoints(r), 2);
        /* an invalid edit keeps the last good registry and marks it stale */
        uint64_t v = disc_registry_version(r);
        write_file(path, "{\"services\":[{\"name\":\"api\",\"ports\":[{\"port\":99999}]}]}");
        assert_int_equal(disc_file_check(f, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "services[0].ports[0].port: 99999 is out of range"));
        assert_non_null(strstr(err, "registry.json:1:"));
        assert_int_equal(api_endpoints(r), 2);
        assert_true(disc_source_stale(r, disc_file_source(f)));
        assert_true(disc_registry_version(r) > v); /* republished only to mark stale */
        assert_int_equal(disc_file_check(f, err, sizeof(err)), -EINVAL); /* not re-read */
        struct strbuf sb;
        strbuf_init(&sb);
        disc_file_render(f, &sb);
        assert_non_null(strstr(sb.data, "\"valid\":false"));
        assert_non_null(strstr(sb.data, "99999 is out of range"));
        strbuf_free(&sb);
        /* fixed again */
        write_file(path, reg_v1);
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 1);
        assert_int_equal(api_endpoints(r), 1);
        assert_false(disc_source_stale(r, disc_file_source(f)));
        /* deleted: last good stays, stale */
        unlink(path);
        assert_int_equal(disc_file_check(f, err, sizeof(err)), -ENOENT);
        assert_int_equal(api_endpoints(r), 1);
        assert_true(disc_source_stale(r, disc_file_source(f)));
        disc_file_free(f);
        disc_registry_free(r);
        rmdir(tmpdir);
}

struct watch_ctx {
        struct disc_registry *r;
        struct loop_timer t;
        uint32_t want;
        uint64_t deadline;
        bool seen;
};

static void watch_timer(struct loop *loop, struct loop_timer *t)
{
        struct watch_ctx *w = t->data;
        if (api_endpoints(w->r) == w->want) {
                w->seen = true;
                loop_stop(loop);
                return;
        }
        if (clock_mono_ms() > w->deadline) {
                loop_stop(loop);
                return;
        }
        loop_timer_arm(loop, t, 10);
}

static bool wait_for(struct loop *loop, struct disc_registry *r, uint32_t want)
{
        struct watch_ctx w = {.r = r, .want = want, .deadline = clock_mono_ms() + 3000};
        loop_timer_init(&w.t, watch_timer, &w);
        loop_timer_arm(loop, &w.t, 10);
        loop_run(loop);
        loop_timer_cancel(loop, &w.t);
        return w.seen;
}

static void test_file_watch_rename(void **state)
{
        (void)state;
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/shunt-disc-XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
        char path[300], tmp[300];
        snprintf(path, sizeof(path), "%s/registry.json", tmpdir);
        snprintf(tmp, sizeof(tmp), "%s/.registry.json.tmp", tmpdir);
        write_file(path, reg_v1);
        struct disc_registry *r = disc_registry_new(NULL);
        char err[512];
        struct disc_file *f = disc_file_new(r, path, err, sizeof(err));
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 1);
        struct loop *loop = loop_new();
        assert_non_null(loop);
        /* a long poll: only inotify can see the changes in time */
        assert_int_equal(disc_file_watch(f, loop, 60000), 0);
        /* atomic replace, as editors and config management do */
        write_file(tmp, reg_v3);
        assert_int_equal(rename(tmp, path), 0);
        assert_true(wait_for(loop, r, 3));
        /* in-place edit */
        write_file(path, reg_v2);
        assert_true(wait_for(loop, r, 2));
        disc_file_free(f);
        loop_free(loop);
        disc_registry_free(r);
        unlink(path);
        rmdir(tmpdir);
}

static void test_file_poll(void **state)
{
        (void)state;
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/shunt-disc-XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
        char path[300];
        snprintf(path, sizeof(path), "%s/registry.json", tmpdir);
        write_file(path, reg_v1);
        struct disc_registry *r = disc_registry_new(NULL);
        char err[512];
        struct disc_file *f = disc_file_new(r, path, err, sizeof(err));
        assert_int_equal(disc_file_check(f, err, sizeof(err)), 1);
        struct loop *loop = loop_new();
        assert_int_equal(disc_file_watch(f, loop, 50), 0);
        write_file(path, reg_v3);
        assert_true(wait_for(loop, r, 3));
        disc_file_free(f);
        loop_free(loop);
        disc_registry_free(r);
        unlink(path);
        rmdir(tmpdir);
}

/* ---- admin ------------------------------------------------------------------ */

static void test_admin_apply_and_render(void **state)
{
        (void)state;
        int src;
        struct disc_registry *r = load_full(&src);
        char err[256] = "";
        /* the seed's example, with "address:port" ids */
        const char *body = "{\"service\":\"test\",\"endpoints\":[{\"id\":\"10.5.0.1:8080\","
                           "\"weight\":10},{\"id\":\"[fd00::5]:8080\",\"weight\":20}]}";
        int rc = disc_admin_apply(r, body, strlen(body), err, sizeof(err));
        if (rc)
                fail_msg("%s", err);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        const struct disc_service *t = disc_find_service(s, NULL, "test");
        assert_non_null(t);
        assert_int_equal(t->n_endpoints, 2);
        struct disc_addr a = A("fd00::5", 8080);
        assert_int_equal(disc_find_endpoint(s, &a)->weight, 20);
        disc_snapshot_release(s);
        /* manual endpoint on a file service; port defaults to its one target port */
        body = "{\"service\":\"reviews\",\"endpoints\":[{\"address\":\"10.0.2.9\",\"zone\":\"z\","
               "\"health\":\"healthy\"}]}";
        assert_int_equal(disc_admin_apply(r, body, strlen(body), err, sizeof(err)), 0);
        s = disc_registry_acquire(r);
        a = A("10.0.2.9", 9080);
        assert_non_null(disc_find_endpoint(s, &a));
        assert_int_equal(disc_find_service(s, NULL, "reviews")->n_endpoints, 3);
        disc_snapshot_release(s);
        /* errors name the JSON path */
        static const struct {
                const char *body, *expect;
        } bad[] = {
            {"{", "body: invalid JSON"},
            {"{\"service\":\"x\",\"endpoints\":[],\"foo\":1}", "foo: unknown or duplicate key"},
            {"{\"endpoints\":[]}", "service: expected a service name"},
            {"{\"service\":\"x\",\"endpoints\":[{\"id\":\"nope\"}]}",
             "endpoints[0].id: expected an IP address"},
            {"{\"service\":\"x\",\"endpoints\":[{\"id\":\"10.0.0.1\"}]}", "endpoints[0]: no port"},
            {"{\"service\":\"x\",\"endpoints\":[{\"address\":\"10.0.0.1\",\"port\":8,"
             "\"weight\":1e9}]}",
             "endpoints[0].weight: expected 0..10000"},
            {"{\"service\":\"x\",\"endpoints\":[{\"address\":\"10.0.0.1\",\"port\":8,"
             "\"health\":\"fine\"}]}",
             "endpoints[0].health"},
            {"{\"service\":\"x\",\"endpoints\":[{\"id\":\"10.0.0.1:1\"},{\"id\":\"10.0.0.1:1\"}]}",
             "endpoints[1]: same address and port as endpoints[0]"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                rc = disc_admin_apply(r, bad[i].body, strlen(bad[i].body), err, sizeof(err));
                if (rc != -EINVAL || !strstr(err, bad[i].expect))
                        fail_msg("case %zu: rc %d, '%s', expected '%s'", i, rc, err, bad[i].expect);
        }
        /* /endpoints renders valid JSON with every field */
        struct strbuf sb;
        strbuf_init(&sb);
        disc_render_endpoints(r, &sb, "shop/web");
        cJSON *j = cJSON_Parse(sb.data);
        assert_non_null(j);
        cJSON *svcs = cJSON_GetObjectItem(j, "services");
        assert_int_equal(cJSON_GetArraySize(svcs), 1);
        cJSON *web = cJSON_GetArrayItem(svcs, 0);
        assert_string_equal(cJSON_GetObjectItem(web, "source")->valuestring, "file");
        assert_string_equal(cJSON_GetObjectItem(web, "mtls")->valuestring, "strict");
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(web, "addresses")), 2);
        cJSON *e0 = cJSON_GetArrayItem(cJSON_GetObjectItem(web, "endpoints"), 0);
        assert_string_equal(cJSON_GetObjectItem(e0, "address")->valuestring, "10.0.1.1");
        assert_int_equal(cJSON_GetObjectItem(e0, "weight")->valueint, 3);
        assert_string_equal(cJSON_GetObjectItem(e0, "zone")->valuestring, "eu-west-1a");
        assert_string_equal(cJSON_GetObjectItem(e0, "health")->valuestring, "healthy");
        assert_false(cJSON_IsTrue(cJSON_GetObjectItem(e0, "stale")));
        assert_true(cJSON_IsString(cJSON_GetObjectItem(e0, "last_seen")));
        cJSON_Delete(j);
        strbuf_reset(&sb);
        disc_render_endpoints(r, &sb, NULL);
        j = cJSON_Parse(sb.data);
        assert_non_null(j);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "services")), 4);
        cJSON_Delete(j);
        strbuf_reset(&sb);
        disc_render_cache(r, &sb);
        j = cJSON_Parse(sb.data);
        assert_non_null(j);
        assert_int_equal(cJSON_GetObjectItem(j, "services")->valueint, 4);
        assert_int_equal(cJSON_GetObjectItem(j, "endpoints")->valueint, 11);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "sources")), 2);
        cJSON_Delete(j);
        strbuf_free(&sb);
        /* an empty list removes the manual endpoints, and the manual-only service */
        body = "{\"service\":\"test\",\"endpoints\":[]}";
        assert_int_equal(disc_admin_apply(r, body, strlen(body), err, sizeof(err)), 0);
        s = disc_registry_acquire(r);
        assert_null(disc_find_service(s, NULL, "test"));
        disc_snapshot_release(s);
        /* a file reload leaves manual endpoints on its services alone */
        disc_registry_free(r);
}

/* ---- bounded memory under churn -------------------------------------------- */

static void test_memory_bounded(void **state)
{
        (void)state;
        enum { N = 10000, UPDATES = 1000000, PASS = 100000 };
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "churn", DISC_SOURCE_KUBERNETES);
        struct disc_service_spec *spec = malloc(sizeof(*spec));
        disc_service_spec_init(spec);
        snprintf(spec->name, sizeof(spec->name), "big");
        spec->n_ports = 1;
        spec->ports[0].port = 80;
        spec->n_vips = 1;
        spec->vips[0] = A("10.200.0.1", 0);
        spec->endpoints = calloc(N, sizeof(*spec->endpoints));
        spec->n_endpoints = N;
        for (uint32_t i = 0; i < N; i++) {
                struct disc_endpoint_spec *e = &spec->endpoints[i];
                e->addr.family = AF_INET;
                uint32_t ip = htonl(0x0a000000u + i);
                memcpy(e->addr.addr, &ip, 4);
                e->addr.port = 80;
                e->weight = 1;
        }
        assert_int_equal(disc_registry_replace(r, src, spec, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        /* passes of random adds and removes; each pass ends by restoring the
         * full set, so the state, and the memory in use, must be the same */
        size_t base = 0;
        uint32_t x = 12345;
        for (int pass = 0; pass < UPDATES / PASS; pass++) {
                for (int u = 0; u < PASS; u++) {
                        x = x * 1103515245u + 12345u;
                        uint32_t i = (x >> 8) % N;
                        struct disc_endpoint_spec *e = &spec->endpoints[i];
                        if (u & 1) {
                                int rc =
                                    disc_registry_remove_endpoint(r, src, NULL, "big", &e->addr);
                                assert_true(rc == 0 || rc == -ENOENT);
                        } else {
                                assert_int_equal(
                                    disc_registry_upsert_endpoint(r, src, NULL, "big", e), 0);
                        }
                        if (u % 500 == 0)
                                assert_int_equal(disc_registry_publish(r), 0);
                }
                assert_int_equal(disc_registry_replace(r, src, spec, 1), 0);
                assert_int_equal(disc_registry_publish(r), 0);
                size_t used = bytes_in_use();
                assert_true(used > (size_t)N * sizeof(struct disc_endpoint));
                if (pass == 0)
                        base = used;
                else if (used > base + 4096)
                        fail_msg("pass %d: %zu bytes in use, %zu after the first pass", pass, used,
                                 base);
        }
        const struct disc_snapshot *s = disc_registry_acquire(r);
        assert_true(disc_snapshot_n_endpoints(s) <= N);
        disc_snapshot_release(s);
        free(spec->endpoints);
        free(spec);
        disc_registry_free(r);
}

static void test_limits(void **state)
{
        (void)state;
        struct disc_registry_opts o = {.max_endpoints = 4, .max_services = 2};
        struct disc_registry *r = disc_registry_new(&o);
        int src = disc_source_add(r, "k", DISC_SOURCE_CONSUL);
        assert_int_equal(disc_source_add(r, "k", DISC_SOURCE_CONSUL), -EEXIST);
        struct disc_service_spec spec;
        disc_service_spec_init(&spec);
        snprintf(spec.name, sizeof(spec.name), "s");
        struct disc_endpoint_spec eps[5];
        memset(eps, 0, sizeof(eps));
        for (int i = 0; i < 5; i++)
                eps[i].addr = A("10.9.0.1", (uint16_t)(100 + i));
        spec.endpoints = eps;
        spec.n_endpoints = 5;
        assert_int_equal(disc_registry_replace(r, src, &spec, 1), -ENOSPC);
        spec.n_endpoints = 4;
        assert_int_equal(disc_registry_replace(r, src, &spec, 1), 0);
        assert_int_equal(disc_registry_upsert_endpoint(r, src, NULL, "s", &eps[4]), -ENOSPC);
        assert_int_equal(disc_registry_upsert_endpoint(r, src, NULL, "nope", &eps[4]), -ENOENT);
        disc_registry_free(r);
}

static void test_backend(void **state)
{
        (void)state;
        struct shunt_config *cfg = calloc(1, sizeof(*cfg));
        assert_non_null(cfg);
        struct disc_registry *r = disc_registry_new(NULL);
        struct loop *loop = loop_new();
        struct disc_backend *b = NULL;
        char err[512] = "";
        snprintf(cfg->sd_type, sizeof(cfg->sd_type), "etcd");
        assert_int_equal(disc_backend_new(r, cfg, &b, err, sizeof(err)), -ENOTSUP);
        assert_non_null(strstr(err, "service_discovery.type: etcd"));
        snprintf(cfg->sd_type, sizeof(cfg->sd_type), "file");
        snprintf(cfg->sd_file_path, sizeof(cfg->sd_file_path), "%.200s", fixture("bad_port.json"));
        assert_int_equal(disc_backend_new(r, cfg, &b, err, sizeof(err)), 0);
        assert_int_equal(disc_backend_start(b, loop, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "bad_port.json:7: services[0].endpoints[0].port: 8080 is not "
                                    "a target_port of this service"));
        disc_backend_free(b);
        disc_registry_free(r);
        r = disc_registry_new(NULL);
        snprintf(cfg->sd_file_path, sizeof(cfg->sd_file_path), "%.200s", fixture("full.json"));
        assert_int_equal(disc_backend_new(r, cfg, &b, err, sizeof(err)), 0);
        assert_int_equal(disc_backend_start(b, loop, err, sizeof(err)), 0);
        const struct disc_snapshot *s = disc_registry_acquire(r);
        assert_int_equal(disc_snapshot_n_services(s), 3);
        disc_snapshot_release(s);
        struct strbuf sb;
        strbuf_init(&sb);
        disc_backend_render(b, &sb);
        assert_non_null(strstr(sb.data, "\"type\":\"file\""));
        assert_non_null(strstr(sb.data, "\"valid\":true"));
        strbuf_free(&sb);
        disc_backend_free(b);
        disc_registry_free(r);
        loop_free(loop);
        free(cfg);
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_full),
            cmocka_unit_test(test_cluster_key),
            cmocka_unit_test(test_endpoint_identity),
            cmocka_unit_test(test_validation_errors),
            cmocka_unit_test(test_validation_line),
            cmocka_unit_test(test_lookups),
            cmocka_unit_test(test_snapshot_isolation),
            cmocka_unit_test(test_staleness),
            cmocka_unit_test(test_passive_hook),
            cmocka_unit_test(test_active_results),
            cmocka_unit_test(test_file_reload),
            cmocka_unit_test(test_file_watch_rename),
            cmocka_unit_test(test_file_poll),
            cmocka_unit_test(test_admin_apply_and_render),
            cmocka_unit_test(test_memory_bounded),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_backend),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* Outbound mTLS per endpoint through the route table: a pick (and a retry's
 * pick) carries the identity and mode of the endpoint it landed on, not of
 * its service; route_endpoint_security's table (registry mode x meshed x
 * the daemon's mtls.mode x certificates); the refusal line. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/log.h"
#include "core/snapshot.h"
#include "discovery/registry.h"
#include "route/route.h"

static struct shunt_config *defaults(void)
{
        char *argv[] = {"shuntd", NULL};
        char *envp[] = {NULL};
        struct shunt_config *cfg;
        char err[256];
        if (config_load(1, argv, envp, &cfg, err, sizeof(err)))
                fail_msg("%s", err);
        return cfg;
}

static void sa(const char *ip, uint16_t port, struct sockaddr_storage *out)
{
        struct disc_addr a;
        assert_int_equal(disc_addr_parse(ip, port, &a), 0);
        disc_addr_to_sockaddr(&a, out);
}

/* Publishes service web (10.96.0.1:80 -> 8080) with identity and eps. */
static const struct disc_snapshot *publish_web(struct disc_registry *r, const char *identity,
                                               struct disc_endpoint_spec *eps, size_t n)
{
        struct disc_service_spec s;
        disc_service_spec_init(&s);
        snprintf(s.name, sizeof(s.name), "web");
        snprintf(s.identity, sizeof(s.identity), "%s", identity);
        assert_int_equal(disc_addr_parse("10.96.0.1", 0, &s.vips[0]), 0);
        s.n_vips = 1;
        s.ports[0].port = 80;
        s.ports[0].target_port = 8080;
        s.n_ports = 1;
        s.endpoints = eps;
        s.n_endpoints = (uint32_t)n;
        int src = disc_source_add(r, "file", DISC_SOURCE_FILE);
        assert_int_equal(disc_registry_replace(r, src, &s, 1), 0);
        assert_int_equal(disc_registry_publish(r), 0);
        return disc_registry_acquire(r);
}

/* web (10.96.0.1:80 -> 8080, identity .../web): 10.0.0.1 its service's
 * identity, 10.0.0.2 its own, 10.0.0.3 not meshed and strict. */
static const struct disc_snapshot *registry(struct disc_registry *r)
{
        struct disc_endpoint_spec eps[3];
        memset(eps, 0, sizeof(eps));
        const char *ips[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3"};
        for (int i = 0; i < 3; i++) {
                assert_int_equal(disc_addr_parse(ips[i], 8080, &eps[i].addr), 0);
                eps[i].weight = 1;
                eps[i].health = DISC_HEALTH_HEALTHY;
        }
        snprintf(eps[1].identity, sizeof(eps[1].identity), "spiffe://td/ns/a/sa/canary");
        eps[2].unmeshed = true;
        eps[2].mtls = DISC_MTLS_STRICT;
        return publish_web(r, "spiffe://td/ns/a/sa/web", eps, 3);
}

static void test_pick_carries_endpoint_identity(void **state)
{
        (void)state;
        struct shunt_config *cfg = defaults(); /* mtls.mode permissive */
        struct disc_registry *r = disc_registry_new(NULL);
        const struct disc_snapshot *snap = registry(r);
        struct route_table *t = route_table_build(snap, cfg, NULL);
        assert_non_null(t);
        struct route_workers *rw = NULL;
        struct sockaddr_storage dst, client, up;
        sa("10.96.0.1", 80, &dst);
        sa("10.1.0.1", 40000, &client);
        int seen = 0;
        for (int i = 0; i < 30; i++) {
                struct route_use use;
                assert_int_equal(route_pick(t, &rw, 1, &dst, &client, NULL, &up, &use),
                                 ROUTE_ENDPOINT);
                char ip[64];
                struct disc_addr a;
                assert_int_equal(disc_addr_from_sockaddr(&up, &a), 0);
                disc_addr_ip(&a, ip, sizeof(ip));
                enum route_security sec = route_security(&use, cfg->mtls_mode, true);
                if (strcmp(ip, "10.0.0.1") == 0) {
                        assert_string_equal(route_identity(&use), "spiffe://td/ns/a/sa/web");
                        assert_int_equal(sec, ROUTE_MTLS);
                        seen |= 1;
                } else if (strcmp(ip, "10.0.0.2") == 0) {
                        assert_string_equal(route_identity(&use), "spiffe://td/ns/a/sa/canary");
                        assert_int_equal(sec, ROUTE_MTLS);
                        seen |= 2;
                } else {
                        assert_string_equal(ip, "10.0.0.3");
                        assert_string_equal(route_identity(&use), "");
                        assert_int_equal(route_mtls(&use), DISC_MTLS_STRICT);
                        assert_int_equal(sec, ROUTE_REFUSED);
                        char line[256];
                        route_refusal(&use, &up, line, sizeof(line));
                        assert_string_equal(line, "default/web:80 endpoint 10.0.0.3:8080 is not "
                                                  "meshed and its mTLS mode is strict");
                        seen |= 4;
                }
                /* A retry moves the use to another endpoint: its identity follows. */
                struct sockaddr_storage next = up;
                if (route_retry_pick(&use, &rw, 1, &client, NULL, &next) == ROUTE_ENDPOINT &&
                    memcmp(&next, &up, sizeof(next)) != 0) {
                        assert_int_equal(disc_addr_from_sockaddr(&next, &a), 0);
                        disc_addr_ip(&a, ip, sizeof(ip));
                        assert_string_equal(route_identity(&use), strcmp(ip, "10.0.0.2") == 0
                                                                      ? "spiffe://td/ns/a/sa/canary"
                                                                  : strcmp(ip, "10.0.0.1") == 0
                                                                      ? "spiffe://td/ns/a/sa/web"
                                                                      : "");
                }
                route_release(&use);
        }
        assert_int_equal(seen, 7);
        /* A passthrough destination: nothing picked, plaintext. */
        struct route_use none;
        sa("192.0.2.1", 80, &dst);
        assert_int_equal(route_pick(t, &rw, 1, &dst, &client, NULL, &up, &none), ROUTE_PASSTHROUGH);
        assert_int_equal(route_security(&none, MTLS_STRICT, true), ROUTE_PLAINTEXT);
        route_workers_free(rw);
        snapshot_unref(route_table_snapshot(t));
        disc_snapshot_release(snap);
        disc_registry_free(r);
        snapshot_unref(&cfg->snap);
}

static void test_security_table(void **state)
{
        (void)state;
        struct disc_endpoint ep;
        memset(&ep, 0, sizeof(ep));
        static const struct {
                bool meshed;
                enum disc_mtls mtls;
                enum mtls_mode daemon;
                bool have_tls;
                enum route_security want;
        } cases[] = {
            /* meshed: mTLS unless disabled (by the registry, or by default) */
            {true, DISC_MTLS_DEFAULT, MTLS_PERMISSIVE, true, ROUTE_MTLS},
            {true, DISC_MTLS_DEFAULT, MTLS_STRICT, true, ROUTE_MTLS},
            {true, DISC_MTLS_DEFAULT, MTLS_DISABLED, true, ROUTE_PLAINTEXT},
            {true, DISC_MTLS_PERMISSIVE, MTLS_DISABLED, true, ROUTE_MTLS},
            {true, DISC_MTLS_DISABLED, MTLS_STRICT, true, ROUTE_PLAINTEXT},
            {true, DISC_MTLS_STRICT, MTLS_PERMISSIVE, true, ROUTE_MTLS},
            /* no certificate: what is strict is refused, the rest plaintext */
            {true, DISC_MTLS_STRICT, MTLS_PERMISSIVE, false, ROUTE_REFUSED},
            {true, DISC_MTLS_DEFAULT, MTLS_PERMISSIVE, false, ROUTE_PLAINTEXT},
            /* not meshed: refused only when the destination says strict; the
             * sidecar's own strict mode is about its inbound side */
            {false, DISC_MTLS_DEFAULT, MTLS_PERMISSIVE, true, ROUTE_PLAINTEXT},
            {false, DISC_MTLS_DEFAULT, MTLS_STRICT, true, ROUTE_PLAINTEXT},
            {false, DISC_MTLS_PERMISSIVE, MTLS_STRICT, true, ROUTE_PLAINTEXT},
            {false, DISC_MTLS_STRICT, MTLS_PERMISSIVE, true, ROUTE_REFUSED},
            {false, DISC_MTLS_DISABLED, MTLS_STRICT, true, ROUTE_PLAINTEXT},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                ep.meshed = cases[i].meshed;
                ep.identity = ep.meshed ? "spiffe://td/x" : "";
                ep.mtls = cases[i].mtls;
                enum route_security got =
                    route_endpoint_security(&ep, cases[i].daemon, cases[i].have_tls);
                if (got != cases[i].want)
                        fail_msg("case %zu: %s, want %s", i, route_security_name(got),
                                 route_security_name(cases[i].want));
        }
}

/* Overlapping pod networks: 10.0.0.9:8080 in clusters east and west, each
 * with its own identity (its trust domain). Both are members of the table,
 * and a pick expects the identity of the cluster it landed on (the address
 * alone would find the first). */
static void test_same_address_two_clusters(void **state)
{
        (void)state;
        struct shunt_config *cfg = defaults();
        struct disc_registry *r = disc_registry_new(NULL);
        struct disc_endpoint_spec eps[2];
        memset(eps, 0, sizeof(eps));
        const char *clusters[] = {"east", "west"};
        for (int i = 0; i < 2; i++) {
                assert_int_equal(disc_addr_parse("10.0.0.9", 8080, &eps[i].addr), 0);
                eps[i].weight = 1;
                eps[i].health = DISC_HEALTH_HEALTHY;
                snprintf(eps[i].cluster, sizeof(eps[i].cluster), "%s", clusters[i]);
                snprintf(eps[i].identity, sizeof(eps[i].identity),
                         "spiffe://%s.example/ns/a/sa/web", clusters[i]);
        }
        const struct disc_snapshot *snap = publish_web(r, "", eps, 2);
        assert_int_equal(disc_snapshot_n_endpoints(snap), 2);
        struct route_table *t = route_table_build(snap, cfg, NULL);
        assert_non_null(t);
        struct route_workers *rw = NULL;
        struct sockaddr_storage dst, client, up;
        sa("10.96.0.1", 80, &dst);
        sa("10.1.0.1", 40000, &client);
        int seen = 0;
        for (int i = 0; i < 20; i++) {
                struct route_use use;
                assert_int_equal(route_pick(t, &rw, 1, &dst, &client, NULL, &up, &use),
                                 ROUTE_ENDPOINT);
                const char *id = route_identity(&use);
                if (!strcmp(id, "spiffe://east.example/ns/a/sa/web"))
                        seen |= 1;
                else if (!strcmp(id, "spiffe://west.example/ns/a/sa/web"))
                        seen |= 2;
                else
                        fail_msg("identity %s", id);
                route_release(&use);
        }
        assert_int_equal(seen, 3); /* round robin over both clusters' copies */
        /* A retry leaves the copy that failed for the other cluster's. */
        for (int i = 0; i < 4; i++) {
                struct route_use use;
                assert_int_equal(route_pick(t, &rw, 1, &dst, &client, NULL, &up, &use),
                                 ROUTE_ENDPOINT);
                char before[128];
                snprintf(before, sizeof(before), "%s", route_identity(&use));
                struct sockaddr_storage next = up;
                assert_int_equal(route_retry_pick(&use, &rw, 1, &client, NULL, &next),
                                 ROUTE_ENDPOINT);
                assert_string_not_equal(route_identity(&use), before);
                route_release(&use);
        }
        route_workers_free(rw);
        snapshot_unref(route_table_snapshot(t));
        disc_snapshot_release(snap);
        disc_registry_free(r);
        snapshot_unref(&cfg->snap);
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_pick_carries_endpoint_identity),
            cmocka_unit_test(test_same_address_two_clusters),
            cmocka_unit_test(test_security_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

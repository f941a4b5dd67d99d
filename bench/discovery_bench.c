// SPDX-License-Identifier: Apache-2.0
/* Discovery microbenchmark: snapshot build time and lookup cost at 10,000
 * endpoints, and memory under one million endpoint add/remove updates.
 *
 *   discovery_bench [services] [endpoints_per_service] [updates]
 *
 * Defaults: 1000 services x 10 endpoints, 1,000,000 updates. Prints one line
 * per measurement; exits 1 if memory grew after the first pass. */
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "discovery/registry.h"

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));

static size_t bytes_in_use(void)
{
        if (__sanitizer_get_current_allocated_bytes)
                return __sanitizer_get_current_allocated_bytes();
        return mallinfo2().uordblks;
}

static uint32_t rng = 2463534242u;
static uint32_t next_rand(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        return rng;
}

static void ep_addr(uint32_t svc, uint32_t i, struct disc_addr *a)
{
        memset(a, 0, sizeof(*a));
        a->family = AF_INET;
        uint32_t ip = htonl(0x0a000000u + svc * 256 + i);
        memcpy(a->addr, &ip, 4);
        a->port = 8080;
}

int main(int argc, char **argv)
{
        log_set_level(LOG_ERROR);
        uint32_t nsvc = argc > 1 ? (uint32_t)atoi(argv[1]) : 1000;
        uint32_t per = argc > 2 ? (uint32_t)atoi(argv[2]) : 10;
        long updates = argc > 3 ? atol(argv[3]) : 1000000;
        if (!nsvc || !per || per > 250 || nsvc > 60000) {
                fprintf(stderr,
                        "usage: %s [services<=60000] [endpoints_per_service<=250] "
                        "[updates]\n",
                        argv[0]);
                return 2;
        }
        uint32_t total = nsvc * per;
        struct disc_registry_opts o = {.max_endpoints = total + 1024, .max_services = nsvc + 16};
        struct disc_registry *r = disc_registry_new(&o);
        int src = disc_source_add(r, "bench", DISC_SOURCE_FILE);
        struct disc_service_spec *specs = calloc(nsvc, sizeof(*specs));
        struct disc_endpoint_spec *eps = calloc(total, sizeof(*eps));
        if (!r || src < 0 || !specs || !eps)
                return 1;
        for (uint32_t s = 0; s < nsvc; s++) {
                struct disc_service_spec *sp = &specs[s];
                disc_service_spec_init(sp);
                snprintf(sp->name, sizeof(sp->name), "svc-%u", s);
                sp->n_ports = 1;
                sp->ports[0].port = 80;
                sp->ports[0].target_port = 8080;
                sp->ports[0].proto = PROTO_HTTP1;
                sp->n_vips = 1;
                disc_addr_parse("10.96.0.0", 0, &sp->vips[0]);
                uint32_t vip = htonl(0x0a600000u + s);
                memcpy(sp->vips[0].addr, &vip, 4);
                sp->endpoints = &eps[s * per];
                sp->n_endpoints = per;
                for (uint32_t i = 0; i < per; i++) {
                        ep_addr(s, i, &sp->endpoints[i].addr);
                        sp->endpoints[i].weight = 1;
                        sp->endpoints[i].health = DISC_HEALTH_HEALTHY;
                        snprintf(sp->endpoints[i].zone, DISC_NAME_MAX, "zone-%u", i % 3);
                }
        }

        /* build */
        enum { BUILDS = 20 };
        uint64_t best = UINT64_MAX, sum = 0;
        for (int k = 0; k < BUILDS; k++) {
                uint64_t t0 = now_ns();
                if (disc_registry_replace(r, src, specs, nsvc) || disc_registry_publish(r))
                        return 1;
                uint64_t dt = now_ns() - t0;
                sum += dt;
                best = dt < best ? dt : best;
                /* force a rebuild next time even though nothing changed */
                disc_source_sync_failed(r, src, "bench");
                disc_source_sync_ok(r, src);
        }
        printf("snapshot build (replace + publish), %u services, %u endpoints: best %.2f ms, "
               "mean %.2f ms\n",
               nsvc, total, best / 1e6, sum / 1e6 / BUILDS);

        /* lookups */
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        enum { KEYS = 4096, ROUNDS = 1000 };
        struct disc_addr *vips = malloc(KEYS * sizeof(*vips));
        struct disc_addr *addrs = malloc(KEYS * sizeof(*addrs));
        char(*names)[DISC_NAME_MAX] = malloc(KEYS * sizeof(*names));
        for (int k = 0; k < KEYS; k++) {
                uint32_t s = next_rand() % nsvc, i = next_rand() % per;
                vips[k] = specs[s].vips[0];
                vips[k].port = 80;
                ep_addr(s, i, &addrs[k]);
                snprintf(names[k], DISC_NAME_MAX, "svc-%u", s);
        }
        uintptr_t sink = 0;
        uint64_t t0 = now_ns();
        for (int round = 0; round < ROUNDS; round++) {
                for (int k = 0; k < KEYS; k++) {
                        uint32_t pi;
                        sink += (uintptr_t)disc_find_vip(snap, &vips[k], &pi);
                }
        }
        double vip_ns = (double)(now_ns() - t0) / ((double)KEYS * ROUNDS);
        t0 = now_ns();
        for (int round = 0; round < ROUNDS; round++) {
                for (int k = 0; k < KEYS; k++)
                        sink += (uintptr_t)disc_find_endpoint(snap, &addrs[k]);
        }
        double ep_ns = (double)(now_ns() - t0) / ((double)KEYS * ROUNDS);
        t0 = now_ns();
        for (int round = 0; round < ROUNDS; round++) {
                for (int k = 0; k < KEYS; k++)
                        sink += (uintptr_t)disc_find_service(snap, NULL, names[k]);
        }
        double name_ns = (double)(now_ns() - t0) / ((double)KEYS * ROUNDS);
        struct disc_addr miss;
        disc_addr_parse("192.0.2.1", 80, &miss);
        t0 = now_ns();
        for (int round = 0; round < ROUNDS * KEYS; round++) {
                miss.addr[3] = (uint8_t)round;
                sink += (uintptr_t)disc_find_vip(snap, &miss, NULL);
        }
        double miss_ns = (double)(now_ns() - t0) / ((double)KEYS * ROUNDS);
        printf("lookup at %u endpoints: by virtual address %.1f ns, by endpoint address %.1f ns, "
               "by name %.1f ns, miss %.1f ns (sink %lu)\n",
               total, vip_ns, ep_ns, name_ns, miss_ns, (unsigned long)(sink & 1));
        disc_snapshot_release(snap);

        /* churn */
        long pass_len = updates / 10 > 0 ? updates / 10 : 1;
        size_t base = 0;
        int grew = 0;
        t0 = now_ns();
        long done = 0;
        for (int pass = 0; pass < 10 && done < updates; pass++) {
                for (long u = 0; u < pass_len && done < updates; u++, done++) {
                        uint32_t s = next_rand() % nsvc, i = next_rand() % per;
                        struct disc_endpoint_spec *e = &specs[s].endpoints[i];
                        if (u & 1)
                                disc_registry_remove_endpoint(r, src, NULL, specs[s].name,
                                                              &e->addr);
                        else if (disc_registry_upsert_endpoint(r, src, NULL, specs[s].name, e))
                                return 1;
                        if (u % 1000 == 0 && disc_registry_publish(r))
                                return 1;
                }
                if (disc_registry_replace(r, src, specs, nsvc) || disc_registry_publish(r))
                        return 1;
                size_t used = bytes_in_use();
                if (pass == 0)
                        base = used;
                else if (used > base + 4096)
                        grew = 1;
                printf("churn pass %d: %ld updates so far, %zu bytes in use\n", pass, done, used);
        }
        double upd_ns = (double)(now_ns() - t0) / (double)(done ? done : 1);
        printf("churn: %ld add/remove updates (publishing every 1000), %.0f ns per update; "
               "memory %s after the first pass\n",
               done, upd_ns, grew ? "GREW" : "flat");
        free(vips);
        free(addrs);
        free(names);
        free(eps);
        free(specs);
        disc_registry_free(r);
        return grew;
}

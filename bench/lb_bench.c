// SPDX-License-Identifier: Apache-2.0
/* Load-balancer microbenchmark: nanoseconds per pick for each algorithm at
 * 1,000 endpoints (one worker, warm caches), and table build times; then
 * the cost of locality tiers: endpoints in three tiers (local zone, local
 * region, a remote region) against the same endpoints in one, as a ratio.
 *
 *   lb_bench [endpoints] [picks]      defaults: 1000 endpoints, 2,000,000 picks
 *
 * Build it in release mode (-O2, no sanitizers) for meaningful numbers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "lb/lb.h"

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static struct lb_endpoint_in *make_endpoints(unsigned n, unsigned wmax)
{
        struct lb_endpoint_in *eps = calloc(n + 1, sizeof(*eps));
        if (!eps)
                return NULL;
        for (unsigned i = 0; i <= n; i++) {
                char ip[32];
                snprintf(ip, sizeof(ip), "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
                sockaddr_from_string(ip, 8080, &eps[i].addr);
                eps[i].weight = 1 + (i * 7919u) % wmax;
                snprintf(eps[i].zone, sizeof(eps[i].zone), "zone-%u", i % 3);
                eps[i].healthy = i % 50 != 7; /* 2 % unhealthy */
        }
        return eps;
}

struct row {
        const char *name;
        enum lb_algorithm algo;
        unsigned wmax; /* weights 1..wmax */
        bool keyed;
        bool local;
        uint32_t p2c_threshold;
        uint32_t swrr_schedule_max;
        /* Also what the proxy adds per request: a clock read, the breaker and
         * ejection check before, the result to both after. */
        bool resilience;
        /* Locality tiers: 0 off; 1 every endpoint in the local tier; 3 a
         * third in each of local, region and remote; 4 the same with half
         * the local ones unavailable (70 % local, 30 % spilled). */
        int tiers;
};

static int bench_row(const struct row *r, unsigned n, unsigned picks, double *ns_per_pick)
{
        struct lb_config c;
        lb_config_default(&c);
        c.algorithm = r->algo;
        if (r->p2c_threshold)
                c.p2c_threshold = r->p2c_threshold;
        c.swrr_schedule_max = r->swrr_schedule_max;
        if (r->local)
                snprintf(c.local_zone, sizeof(c.local_zone), "zone-1");
        struct lb_endpoint_in *eps = make_endpoints(n, r->wmax);
        if (!eps)
                return -ENOMEM;
        if (r->tiers) {
                snprintf(c.local_region, sizeof(c.local_region), "r-local");
                snprintf(c.local_zone, sizeof(c.local_zone), "zone-0");
                for (unsigned i = 0; i <= n; i++) {
                        unsigned k = r->tiers == 1 ? 0 : i % 3;
                        snprintf(eps[i].zone, sizeof(eps[i].zone), "zone-%u", k);
                        snprintf(eps[i].region, sizeof(eps[i].region), "%s",
                                 k == 2 ? "r-far" : "r-local");
                }
        }
        struct lb_table *t = NULL;
        uint64_t b0 = now_ns();
        int rc = lb_table_build(&c, eps, n, NULL, &t);
        uint64_t build = now_ns() - b0;
        if (rc < 0) {
                free(eps);
                return rc;
        }
        /* Incremental rebuild: one endpoint added. */
        struct lb_table *t2 = NULL;
        b0 = now_ns();
        rc = lb_table_build(&c, eps, n + 1, t, &t2);
        uint64_t rebuild = now_ns() - b0;
        lb_table_unref(t2);
        if (rc < 0) {
                lb_table_unref(t);
                free(eps);
                return rc;
        }

        if (r->tiers == 4) /* half the local tier's breakers open */
                for (unsigned i = 0; i < n; i += 6)
                        lb_ep_set_available(lb_table_endpoint(t, i)->state, false);
        /* Some load for least connections. */
        for (unsigned i = 0; i < n; i++)
                for (unsigned k = 0; k < i % 4; k++)
                        lb_conn_begin(lb_table_endpoint(t, i)->state);

        struct lb_worker *w = lb_worker_new(12345);
        uint64_t *keys = malloc(4096 * sizeof(*keys));
        if (!w || !keys) {
                free(keys);
                lb_worker_free(w);
                lb_table_unref(t);
                free(eps);
                return -ENOMEM;
        }
        for (unsigned k = 0; k < 4096; k++)
                keys[k] = lb_mix64(k);
        struct lb_pick p;
        uint64_t sink = 0;
        for (unsigned k = 0; k < 10000; k++) { /* warm up, first bind */
                if (lb_pick(w, t, r->keyed ? &keys[k & 4095] : NULL, &p) == 0)
                        sink += p.index;
        }
        struct lb_breaker_config bc;
        lb_breaker_config_default(&bc);
        struct lb_outlier_config oc;
        lb_outlier_config_default(&oc);
        struct lb_outlier_svc osvc;
        memset(&osvc, 0, sizeof(osvc));
        uint64_t t0 = now_ns();
        for (unsigned k = 0; k < picks; k++) {
                if (lb_pick(w, t, r->keyed ? &keys[k & 4095] : NULL, &p) != 0)
                        continue;
                sink += p.index;
                if (r->resilience) {
                        uint64_t now = now_ns();
                        if (lb_outlier_ep_until(&p.state->outlier) == 0 &&
                            lb_breaker_state(&p.state->breaker, &bc, now) == LB_BREAKER_CLOSED) {
                                lb_breaker_result(&p.state->breaker, &bc, true, false, now);
                                lb_outlier_ep_record(&oc, &osvc, &p.state->outlier, n,
                                                     LB_OUTCOME_SUCCESS, now);
                        }
                }
        }
        uint64_t dt = now_ns() - t0;
        *ns_per_pick = (double)dt / picks;
        printf("| %-34s | %8.1f | %10.3f | %12.3f | %9zu |\n", r->name, (double)dt / picks,
               (double)build / 1e6, (double)rebuild / 1e6, lb_table_hash_size(t));
        for (unsigned i = 0; i < n; i++)
                for (unsigned k = 0; k < i % 4; k++)
                        lb_conn_end(lb_table_endpoint(t, i)->state);
        free(keys);
        lb_worker_free(w);
        lb_table_unref(t);
        free(eps);
        return sink == 0xffffffffffffffffull; /* keeps the loop */
}

int main(int argc, char **argv)
{
        unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1000;
        unsigned picks = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 2000000;
        if (n < 1 || n >= LB_ENDPOINTS_MAX || picks < 1) {
                fprintf(stderr, "usage: lb_bench [endpoints 1..%u] [picks]\n",
                        LB_ENDPOINTS_MAX - 1);
                return 2;
        }
        log_set_level(LOG_WARN);
        static const struct row rows[] = {
            {"round_robin", LB_ROUND_ROBIN, 1, false, false, 0, 65536, false, 0},
            {"round_robin + breaker/outlier", LB_ROUND_ROBIN, 1, false, false, 0, 65536, true, 0},
            {"round_robin, locality", LB_ROUND_ROBIN, 1, false, true, 0, 65536, false, 0},
            {"least_connections (p2c)", LB_LEAST_CONNECTIONS, 1, false, false, 0, 65536, false, 0},
            {"least_connections (exact scan)", LB_LEAST_CONNECTIONS, 1, false, false,
             LB_ENDPOINTS_MAX, 65536, false, 0},
            {"weighted 1..10 (schedule)", LB_WEIGHTED, 10, false, false, 0, 65536, false, 0},
            {"weighted 1..100 (scaled schedule)", LB_WEIGHTED, 100, false, false, 0, 65536, false,
             0},
            {"weighted 1..10 (per-pick scan)", LB_WEIGHTED, 10, false, false, 0, 0, false, 0},
            {"consistent_hash (ring)", LB_CONSISTENT_HASH, 1, true, false, 0, 65536, false, 0},
            {"consistent_hash, weighted 1..10", LB_CONSISTENT_HASH, 10, true, false, 0, 65536,
             false, 0},
            {"maglev (65537)", LB_MAGLEV, 1, true, false, 0, 65536, false, 0},
            {"maglev, weighted 1..10", LB_MAGLEV, 10, true, false, 0, 65536, false, 0},
            {"round_robin, 1 tier", LB_ROUND_ROBIN, 1, false, false, 0, 65536, false, 1},
            {"round_robin, 3 tiers", LB_ROUND_ROBIN, 1, false, false, 0, 65536, false, 3},
            {"round_robin, 3 tiers, 30 % spilled", LB_ROUND_ROBIN, 1, false, false, 0, 65536, false,
             4},
            {"maglev, 1 tier", LB_MAGLEV, 1, true, false, 0, 65536, false, 1},
            {"maglev, 3 tiers", LB_MAGLEV, 1, true, false, 0, 65536, false, 3},
            {"maglev, 3 tiers, 30 % spilled", LB_MAGLEV, 1, true, false, 0, 65536, false, 4},
        };
        double ns[sizeof(rows) / sizeof(rows[0])];
        size_t one_rr = 0, one_mg = 0;
        printf("lb_bench: %u endpoints (2 %% unhealthy, 3 zones), %u picks per row, one worker\n\n",
               n, picks);
        printf("| %-34s | %8s | %10s | %12s | %9s |\n", "algorithm", "ns/pick", "build ms",
               "+1 rebuild ms", "ring/table");
        printf("|%s|%s|%s|%s|%s|\n", "------------------------------------", "----------",
               "------------", "--------------", "-----------");
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                int rc = bench_row(&rows[i], n, picks, &ns[i]);
                if (rc < 0) {
                        fprintf(stderr, "%s: %s\n", rows[i].name, strerror(-rc));
                        return 1;
                }
                if (rows[i].tiers == 1)
                        *(rows[i].algo == LB_MAGLEV ? &one_mg : &one_rr) = i;
        }
        printf("\nlocality tiers: pick cost against the same endpoints in one tier\n");
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
                if (rows[i].tiers > 1)
                        printf("  %-34s %.2fx\n", rows[i].name,
                               ns[i] / ns[rows[i].algo == LB_MAGLEV ? one_mg : one_rr]);
        return 0;
}

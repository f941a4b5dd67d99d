// SPDX-License-Identifier: Apache-2.0
/* Load-balancer algorithms: the seed's acceptance table (lines 6251-6255) at
 * the library level, plus hashing, locality, availability and table
 * lifetimes. Deterministic: fixed seeds and fixed key sets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/snapshot.h"
#include "core/sockaddr.h"
#include "lb/lb.h"

#define NKEYS 1000

static struct lb_endpoint_in mkep(unsigned i, uint32_t weight, const char *zone, bool healthy)
{
        struct lb_endpoint_in e;
        memset(&e, 0, sizeof(e));
        char ip[32];
        snprintf(ip, sizeof(ip), "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        assert_int_equal(sockaddr_from_string(ip, 8080, &e.addr), 0);
        e.weight = weight;
        snprintf(e.zone, sizeof(e.zone), "%s", zone ? zone : "");
        e.healthy = healthy;
        return e;
}

static struct lb_table *build(const struct lb_config *cfg, const struct lb_endpoint_in *eps,
                              size_t n, const struct lb_table *prev)
{
        struct lb_table *t = NULL;
        assert_int_equal(lb_table_build(cfg, eps, n, prev, &t), 0);
        assert_non_null(t);
        return t;
}

static struct lb_config cfg_for(enum lb_algorithm a)
{
        struct lb_config c;
        lb_config_default(&c);
        c.algorithm = a;
        return c;
}

static int pick(struct lb_worker *w, const struct lb_table *t, const uint64_t *h)
{
        struct lb_pick p;
        int rc = lb_pick(w, t, h, &p);
        if (rc < 0)
                return rc;
        assert_ptr_equal(p.ep, lb_table_endpoint(t, p.index));
        assert_ptr_equal(p.state, p.ep->state);
        return (int)p.index;
}

static uint64_t key_hash(unsigned k)
{
        char buf[32];
        int len = snprintf(buf, sizeof(buf), "session-%u", k);
        return lb_hash(buf, (size_t)len);
}

/* The endpoint address a key maps to, as a comparable number. */
static uint64_t addr_of(const struct lb_table *t, int idx)
{
        const struct sockaddr_in *a = (const struct sockaddr_in *)&lb_table_endpoint(t, idx)->addr;
        return ntohl(a->sin_addr.s_addr);
}

static void map_keys(struct lb_worker *w, const struct lb_table *t, uint64_t *out, unsigned n)
{
        for (unsigned k = 0; k < n; k++) {
                uint64_t h = key_hash(k);
                int i = pick(w, t, &h);
                assert_true(i >= 0);
                out[k] = addr_of(t, i);
        }
}

/* ---- round robin -------------------------------------------------------- */

static void test_round_robin_300(void **state)
{
        struct lb_config c = cfg_for(LB_ROUND_ROBIN);
        struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 1, "", true),
                                        mkep(3, 1, "", true)};
        struct lb_table *t = build(&c, eps, 3, NULL);
        struct lb_worker *w = lb_worker_new(42);
        int count[3] = {0}, prev = -1;
        for (int i = 0; i < 300; i++) {
                int p = pick(w, t, NULL);
                assert_in_range(p, 0, 2);
                assert_int_not_equal(p, prev); /* strict rotation */
                prev = p;
                count[p]++;
        }
        for (int i = 0; i < 3; i++)
                assert_int_equal(count[i], 100);
        lb_worker_free(w);
        lb_table_unref(t);
}

/* ---- smooth weighted round robin ---------------------------------------- */

static void weighted_1_2_3(uint32_t schedule_max)
{
        struct lb_config c = cfg_for(LB_WEIGHTED);
        c.swrr_schedule_max = schedule_max;
        struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 2, "", true),
                                        mkep(3, 3, "", true)};
        struct lb_table *t = build(&c, eps, 3, NULL);
        struct lb_worker *w = lb_worker_new(7);
        int count[3] = {0};
        for (int i = 0; i < 600; i++)
                count[pick(w, t, NULL)]++;
        assert_int_equal(count[0], 100);
        assert_int_equal(count[1], 200);
        assert_int_equal(count[2], 300);
        lb_worker_free(w);
        lb_table_unref(t);
}

static void test_weighted_600(void **state)
{
        weighted_1_2_3(65536); /* precomputed period */
        weighted_1_2_3(0);     /* per-pick current weights */
}

/* A period longer than the bound is scaled: 1000:2000:3001 (period 6001)
 * with a bound of 100 becomes 17:33:50, within 2 % of the true shares. */
static void test_weighted_scaled(void **state)
{
        struct lb_config c = cfg_for(LB_WEIGHTED);
        c.swrr_schedule_max = 100;
        struct lb_endpoint_in eps[3] = {mkep(1, 1000, "", true), mkep(2, 2000, "", true),
                                        mkep(3, 3001, "", true)};
        struct lb_table *t = build(&c, eps, 3, NULL);
        struct lb_worker *w = lb_worker_new(7);
        int count[3] = {0};
        for (int i = 0; i < 1000; i++)
                count[pick(w, t, NULL)]++;
        assert_int_equal(count[0], 170);
        assert_int_equal(count[1], 330);
        assert_int_equal(count[2], 500);
        lb_worker_free(w);
        lb_table_unref(t);
}

/* nginx's example: weights 5,1,1 give a a b a c a a (never b or c twice in a
 * row, and a at most twice in a row), whichever path runs. */
static void test_weighted_smooth(void **state)
{
        static const int expect[7] = {0, 0, 1, 0, 2, 0, 0};
        for (int path = 0; path < 2; path++) {
                struct lb_config c = cfg_for(LB_WEIGHTED);
                c.swrr_schedule_max = path ? 0 : 65536;
                struct lb_endpoint_in eps[3] = {mkep(1, 5, "", true), mkep(2, 1, "", true),
                                                mkep(3, 1, "", true)};
                struct lb_table *t = build(&c, eps, 3, NULL);
                struct lb_worker *w = lb_worker_new(99);
                int seq[70];
                for (int i = 0; i < 70; i++)
                        seq[i] = pick(w, t, NULL);
                /* The schedule starts at a random phase: find it. */
                int phase = -1;
                for (int ph = 0; ph < 7 && phase < 0; ph++) {
                        bool ok = true;
                        for (int i = 0; i < 70 && ok; i++)
                                ok = seq[i] == expect[(ph + i) % 7];
                        if (ok)
                                phase = ph;
                }
                assert_true(phase >= 0);
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

static void test_weighted_zero(void **state)
{
        struct lb_config c = cfg_for(LB_WEIGHTED);
        /* All zero: plain round robin. */
        struct lb_endpoint_in eps[3] = {mkep(1, 0, "", true), mkep(2, 0, "", true),
                                        mkep(3, 0, "", true)};
        struct lb_table *t = build(&c, eps, 3, NULL);
        struct lb_worker *w = lb_worker_new(1);
        int count[3] = {0};
        for (int i = 0; i < 300; i++)
                count[pick(w, t, NULL)]++;
        for (int i = 0; i < 3; i++)
                assert_int_equal(count[i], 100);
        lb_table_unref(t);

        /* One zero among positive ones: drained, never picked... */
        eps[0].weight = 0;
        eps[1].weight = 1;
        eps[2].weight = 1;
        t = build(&c, eps, 3, NULL);
        memset(count, 0, sizeof(count));
        for (int i = 0; i < 300; i++)
                count[pick(w, t, NULL)]++;
        assert_int_equal(count[0], 0);
        assert_int_equal(count[1], 150);
        assert_int_equal(count[2], 150);
        /* ...unless it is the only one left available. */
        lb_ep_set_available(lb_table_endpoint(t, 1)->state, false);
        lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
        assert_int_equal(pick(w, t, NULL), 0);
        lb_worker_free(w);
        lb_table_unref(t);
}

/* ---- health and availability --------------------------------------------- */

static const enum lb_algorithm all_algos[] = {LB_ROUND_ROBIN, LB_LEAST_CONNECTIONS, LB_WEIGHTED,
                                              LB_CONSISTENT_HASH, LB_MAGLEV};

static void test_unhealthy_gets_zero(void **state)
{
        for (size_t a = 0; a < sizeof(all_algos) / sizeof(all_algos[0]); a++) {
                struct lb_config c = cfg_for(all_algos[a]);
                struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 1, "", false),
                                                mkep(3, 1, "", true)};
                struct lb_table *t = build(&c, eps, 3, NULL);
                struct lb_worker *w = lb_worker_new(a);
                int count[3] = {0};
                for (unsigned i = 0; i < 200; i++) {
                        uint64_t h = key_hash(i);
                        count[pick(w, t, &h)]++;
                }
                assert_int_equal(count[1], 0);
                assert_int_equal(count[0] + count[2], 200);
                if (all_algos[a] != LB_CONSISTENT_HASH && all_algos[a] != LB_MAGLEV) {
                        assert_int_equal(count[0], 100);
                        assert_int_equal(count[2], 100);
                }
                /* A breaker-open endpoint is skipped the same way. */
                lb_ep_set_available(lb_table_endpoint(t, 0)->state, false);
                for (unsigned i = 0; i < 200; i++) {
                        uint64_t h = key_hash(i);
                        assert_int_equal(pick(w, t, &h), 2);
                }
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
                uint64_t h = key_hash(0);
                assert_int_equal(pick(w, t, &h), LB_ENOENDPOINT);
                assert_int_equal(pick(w, t, NULL), LB_ENOENDPOINT);
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

static void test_empty_set(void **state)
{
        for (size_t a = 0; a < sizeof(all_algos) / sizeof(all_algos[0]); a++) {
                struct lb_config c = cfg_for(all_algos[a]);
                struct lb_worker *w = lb_worker_new(5);
                struct lb_table *t = build(&c, NULL, 0, NULL);
                uint64_t h = 12345;
                struct lb_pick p;
                assert_int_equal(lb_pick(w, t, &h, &p), -EHOSTUNREACH);
                assert_int_equal(lb_pick(w, t, NULL, &p), LB_ENOENDPOINT);
                lb_table_unref(t);

                struct lb_endpoint_in eps[2] = {mkep(1, 1, "", false), mkep(2, 1, "", false)};
                t = build(&c, eps, 2, NULL);
                assert_int_equal(lb_pick(w, t, &h, &p), LB_ENOENDPOINT);
                lb_table_unref(t);
                lb_worker_free(w);
        }
}

/* ---- least connections ----------------------------------------------------- */

static void test_least_connections(void **state)
{
        struct lb_config c = cfg_for(LB_LEAST_CONNECTIONS);
        struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 1, "", true),
                                        mkep(3, 1, "", true)};
        struct lb_table *t = build(&c, eps, 3, NULL);
        struct lb_worker *w = lb_worker_new(3);
        struct lb_ep_state *st[3];
        for (int i = 0; i < 3; i++)
                st[i] = lb_table_endpoint(t, i)->state;

        /* Ties rotate: with no load, three picks hit three endpoints. */
        int seen = 0;
        for (int i = 0; i < 3; i++)
                seen |= 1 << pick(w, t, NULL);
        assert_int_equal(seen, 7);

        /* Artificial loads 5, 2, 7: the least busy wins every time. */
        int load[3] = {5, 2, 7};
        for (int i = 0; i < 3; i++)
                for (int k = 0; k < load[i]; k++)
                        lb_conn_begin(st[i]);
        for (int i = 0; i < 10; i++)
                assert_int_equal(pick(w, t, NULL), 1);
        /* Filling up as connections arrive: new ones go to the least busy. */
        for (int i = 0; i < 8; i++) {
                struct lb_pick p;
                assert_int_equal(lb_pick(w, t, NULL, &p), 0);
                lb_conn_begin(p.state);
        }
        /* 5,2,7 + 8 new -> 7.33 each: 7,8,7 or similar; nobody above 8. */
        for (int i = 0; i < 3; i++) {
                assert_in_range(lb_ep_active(st[i]), 7, 8);
        }
        assert_int_equal(lb_ep_active(st[0]) + lb_ep_active(st[1]) + lb_ep_active(st[2]), 22);
        /* Connections ending make an endpoint the least busy again. */
        for (int k = 0; k < 3; k++)
                lb_conn_end(st[2]);
        assert_int_equal(pick(w, t, NULL), 2);
        /* The busiest endpoint's breaker opens: never picked even if idle. */
        for (int i = 0; i < 3; i++)
                while (lb_ep_active(st[i]) > 0)
                        lb_conn_end(st[i]);
        lb_conn_begin(st[0]);
        lb_ep_set_available(st[1], false);
        lb_ep_set_available(st[2], false);
        assert_int_equal(pick(w, t, NULL), 0);
        lb_conn_end(st[0]);
        lb_worker_free(w);
        lb_table_unref(t);
}

static void test_least_connections_p2c(void **state)
{
        for (unsigned n = 32; n <= 64; n += 32) {
                struct lb_config c = cfg_for(LB_LEAST_CONNECTIONS);
                struct lb_endpoint_in eps[64];
                for (unsigned i = 0; i < n; i++)
                        eps[i] = mkep(i + 1, 1, "", true);
                struct lb_table *t = build(&c, eps, n, NULL);
                struct lb_worker *w = lb_worker_new(11);
                /* Endpoint i carries i connections. */
                for (unsigned i = 0; i < n; i++)
                        for (unsigned k = 0; k < i; k++)
                                lb_conn_begin(lb_table_endpoint(t, i)->state);
                int distinct[64] = {0}, ndistinct = 0;
                uint64_t sum = 0;
                for (int k = 0; k < 10000; k++) {
                        int p = pick(w, t, NULL);
                        assert_true(p >= 0);
                        if (!distinct[p]++)
                                ndistinct++;
                        sum += (uint64_t)p;
                }
                if (n == 32) {
                        /* At the threshold: exact scan, always the idle one. */
                        assert_int_equal(distinct[0], 10000);
                } else {
                        /* Above it: power of two choices. The busiest never
                         * wins a pair; the choice is spread but skewed to the
                         * idle end (expected mean (n-2)/3 = 20.7 vs 31.5). */
                        assert_int_equal(distinct[n - 1], 0);
                        assert_true(ndistinct > 32);
                        assert_true(sum / 10000 < 25);
                        assert_true(sum / 10000 > 16);
                }
                for (unsigned i = 0; i < n; i++)
                        for (unsigned k = 0; k < i; k++)
                                lb_conn_end(lb_table_endpoint(t, i)->state);
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

/* ---- consistent hashing ----------------------------------------------------- */

static void hash_stickiness(enum lb_algorithm algo)
{
        struct lb_config c = cfg_for(algo);
        struct lb_endpoint_in eps[5];
        for (unsigned i = 0; i < 5; i++)
                eps[i] = mkep(i + 1, 1, "", true);
        struct lb_table *t4 = build(&c, eps, 4, NULL);
        struct lb_worker *w1 = lb_worker_new(1), *w2 = lb_worker_new(2);
        static uint64_t a[NKEYS], b[NKEYS], d[NKEYS];

        /* 100 % sticky: same table twice, another worker, a rebuild from
         * scratch, an incremental rebuild, and the list in reverse order. */
        map_keys(w1, t4, a, NKEYS);
        map_keys(w1, t4, b, NKEYS);
        assert_memory_equal(a, b, sizeof(a));
        map_keys(w2, t4, b, NKEYS);
        assert_memory_equal(a, b, sizeof(a));
        struct lb_table *again = build(&c, eps, 4, t4);
        map_keys(w1, again, b, NKEYS);
        assert_memory_equal(a, b, sizeof(a));
        lb_table_unref(again);
        struct lb_endpoint_in rev[4] = {eps[3], eps[2], eps[1], eps[0]};
        struct lb_table *trev = build(&c, rev, 4, NULL);
        map_keys(w1, trev, b, NKEYS);
        assert_memory_equal(a, b, sizeof(a));
        lb_table_unref(trev);

        /* Every endpoint gets a fair share of the keys. */
        for (unsigned i = 0; i < 4; i++) {
                unsigned cnt = 0;
                for (unsigned k = 0; k < NKEYS; k++)
                        cnt += a[k] == addr_of(t4, (int)i);
                assert_in_range(cnt, 150, 350);
        }

        /* Adding a fifth endpoint moves about a fifth of the keys, all of
         * them to the new endpoint. */
        struct lb_table *t5 = build(&c, eps, 5, t4);
        map_keys(w1, t5, b, NKEYS);
        unsigned moved = 0, moved_elsewhere = 0;
        for (unsigned k = 0; k < NKEYS; k++) {
                if (a[k] != b[k]) {
                        moved++;
                        moved_elsewhere += b[k] != addr_of(t5, 4);
                }
        }
        assert_in_range(moved, NKEYS / 10, NKEYS * 3 / 10);
        if (algo == LB_CONSISTENT_HASH)
                assert_int_equal(moved_elsewhere, 0);
        else
                assert_true(moved_elsewhere < NKEYS / 20); /* Maglev: minimal, not zero */

        /* The incremental rebuild equals a rebuild from scratch. */
        struct lb_table *t5full = build(&c, eps, 5, NULL);
        map_keys(w2, t5full, d, NKEYS);
        assert_memory_equal(b, d, sizeof(b));
        assert_int_equal(lb_table_hash_size(t5), lb_table_hash_size(t5full));
        lb_table_unref(t5full);

        /* Removing endpoint 2 (index 1) moves only its keys. */
        struct lb_endpoint_in less[4] = {eps[0], eps[2], eps[3], eps[4]};
        struct lb_table *t4b = build(&c, less, 4, t5);
        map_keys(w1, t4b, d, NKEYS);
        uint64_t gone = addr_of(t5, 1);
        unsigned others_moved = 0;
        for (unsigned k = 0; k < NKEYS; k++) {
                if (b[k] == gone)
                        assert_int_not_equal(d[k], gone);
                else if (d[k] != b[k])
                        others_moved++;
        }
        if (algo == LB_CONSISTENT_HASH)
                assert_int_equal(others_moved, 0);
        else
                assert_true(others_moved < NKEYS / 20); /* Maglev: minimal, not zero */

        /* An endpoint whose breaker opens: only its keys move, and they
         * come back when it closes. */
        lb_ep_set_available(lb_table_endpoint(t5, 2)->state, false);
        map_keys(w1, t5, d, NKEYS);
        uint64_t out = addr_of(t5, 2);
        for (unsigned k = 0; k < NKEYS; k++) {
                if (b[k] == out)
                        assert_int_not_equal(d[k], out);
                else
                        assert_int_equal(d[k], b[k]);
        }
        lb_ep_set_available(lb_table_endpoint(t5, 2)->state, true);
        map_keys(w1, t5, d, NKEYS);
        assert_memory_equal(b, d, sizeof(b));

        /* No key: round robin among the healthy ones. */
        int cnt[5] = {0};
        for (int i = 0; i < 500; i++)
                cnt[pick(w1, t5, NULL)]++;
        for (int i = 0; i < 5; i++)
                assert_int_equal(cnt[i], 100);

        lb_table_unref(t4b);
        lb_table_unref(t5);
        lb_table_unref(t4);
        lb_worker_free(w1);
        lb_worker_free(w2);
}

static void test_ring_hash(void **state)
{
        hash_stickiness(LB_CONSISTENT_HASH);
}

static void test_maglev(void **state)
{
        hash_stickiness(LB_MAGLEV);
}

/* Weighted hashing: shares follow 1:2:3 roughly; the ring's size is exact. */
static void test_hash_weights(void **state)
{
        for (int a = 0; a < 2; a++) {
                enum lb_algorithm algo = a ? LB_MAGLEV : LB_CONSISTENT_HASH;
                struct lb_config c = cfg_for(algo);
                struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 2, "", true),
                                                mkep(3, 3, "", true)};
                struct lb_table *t = build(&c, eps, 3, NULL);
                if (algo == LB_CONSISTENT_HASH)
                        assert_int_equal(lb_table_hash_size(t), 160 * 6);
                else
                        assert_int_equal(lb_table_hash_size(t), 65537);
                struct lb_worker *w = lb_worker_new(1);
                int cnt[3] = {0};
                for (unsigned k = 0; k < 6000; k++) {
                        uint64_t h = key_hash(k);
                        cnt[pick(w, t, &h)]++;
                }
                /* Maglev fills exactly in proportion; the ring within the
                 * spread of 160 points per unit. */
                int tol = algo == LB_MAGLEV ? 10 : 25; /* percent */
                for (int i = 0; i < 3; i++) {
                        int want = 1000 * (i + 1);
                        assert_in_range(cnt[i], want - want * tol / 100, want + want * tol / 100);
                }
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

/* Weight 0 drains an endpoint from the hash algorithms too, until nothing
 * else is available. */
static void test_hash_zero_weight(void **state)
{
        for (int a = 0; a < 2; a++) {
                struct lb_config c = cfg_for(a ? LB_MAGLEV : LB_CONSISTENT_HASH);
                struct lb_endpoint_in eps[3] = {mkep(1, 0, "", true), mkep(2, 1, "", true),
                                                mkep(3, 1, "", true)};
                struct lb_table *t = build(&c, eps, 3, NULL);
                struct lb_worker *w = lb_worker_new(1);
                for (unsigned k = 0; k < 500; k++) {
                        uint64_t h = key_hash(k);
                        assert_int_not_equal(pick(w, t, &h), 0);
                }
                lb_ep_set_available(lb_table_endpoint(t, 1)->state, false);
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
                uint64_t h = key_hash(1);
                assert_int_equal(pick(w, t, &h), 0);
                lb_ep_set_available(lb_table_endpoint(t, 0)->state, false);
                assert_int_equal(pick(w, t, &h), LB_ENOENDPOINT);
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

/* Maglev spreads evenly: 10 equal endpoints, 20000 keys, each within 10 %. */
static void test_maglev_even(void **state)
{
        struct lb_config c = cfg_for(LB_MAGLEV);
        struct lb_endpoint_in eps[10];
        for (unsigned i = 0; i < 10; i++)
                eps[i] = mkep(100 + i, 1, "", true);
        struct lb_table *t = build(&c, eps, 10, NULL);
        struct lb_worker *w = lb_worker_new(1);
        int cnt[10] = {0};
        for (unsigned k = 0; k < 20000; k++) {
                uint64_t h = key_hash(k);
                cnt[pick(w, t, &h)]++;
        }
        for (int i = 0; i < 10; i++)
                assert_in_range(cnt[i], 1800, 2200);
        lb_worker_free(w);
        lb_table_unref(t);
}

/* Ring size is bounded: the weight unit doubles and endpoints keep a prefix
 * of their points. */
static void test_ring_cap(void **state)
{
        struct lb_config c = cfg_for(LB_CONSISTENT_HASH);
        c.ring_max_points = LB_ENDPOINTS_MAX; /* the smallest allowed */
        struct lb_endpoint_in *eps = calloc(200, sizeof(*eps));
        assert_non_null(eps);
        for (unsigned i = 0; i < 200; i++)
                eps[i] = mkep(i + 1, 1, "", true);
        /* 200 * 160 = 32000 > 16384: unit 2 -> 80 points each. */
        struct lb_table *t = build(&c, eps, 200, NULL);
        assert_int_equal(lb_table_hash_size(t), 200 * 80);
        struct lb_worker *w = lb_worker_new(1);
        uint64_t h = key_hash(1);
        assert_true(pick(w, t, &h) >= 0);
        lb_worker_free(w);
        lb_table_unref(t);
        free(eps);
}

/* ---- locality ---------------------------------------------------------------- */

static void test_locality(void **state)
{
        for (size_t a = 0; a < sizeof(all_algos) / sizeof(all_algos[0]); a++) {
                struct lb_config c = cfg_for(all_algos[a]);
                snprintf(c.local_zone, sizeof(c.local_zone), "zone-a");
                struct lb_endpoint_in eps[6] = {
                    mkep(1, 1, "zone-a", true), mkep(2, 1, "zone-b", true),
                    mkep(3, 1, "zone-a", true), mkep(4, 1, "zone-b", true),
                    mkep(5, 1, "zone-a", true), mkep(6, 1, "zone-b", true)};
                struct lb_table *t = build(&c, eps, 6, NULL);
                struct lb_worker *w = lb_worker_new(a + 100);
                int cnt[6];

#define RUN()                                                                                      \
        do {                                                                                       \
                memset(cnt, 0, sizeof(cnt));                                                       \
                for (unsigned k = 0; k < 300; k++) {                                               \
                        uint64_t h = key_hash(k);                                                  \
                        int p_ = pick(w, t, &h);                                                   \
                        assert_true(p_ >= 0);                                                      \
                        cnt[p_]++;                                                                 \
                }                                                                                  \
        } while (0)

                /* All three local endpoints up: only zone-a. */
                RUN();
                assert_int_equal(cnt[1] + cnt[3] + cnt[5], 0);
                assert_true(cnt[0] > 0 && cnt[2] > 0 && cnt[4] > 0);

                /* One local breaker opens: 2 of 3 < ceil(70 % of 3) = 3, so
                 * every zone is used. */
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
                RUN();
                assert_int_equal(cnt[2], 0);
                assert_true(cnt[1] + cnt[3] + cnt[5] > 0);
                assert_true(cnt[0] + cnt[4] > 0);

                /* It closes again: back to zone-a only. */
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, true);
                RUN();
                assert_int_equal(cnt[1] + cnt[3] + cnt[5], 0);
                lb_table_unref(t);

                /* Unhealthy in discovery, with a 50 % threshold: 2 of 3 is
                 * enough (need ceil(1.5) = 2); 1 of 3 is not. */
                c.locality_min_percent = 50;
                eps[2].healthy = false;
                t = build(&c, eps, 6, NULL);
                RUN();
                assert_int_equal(cnt[1] + cnt[3] + cnt[5] + cnt[2], 0);
                lb_ep_set_available(lb_table_endpoint(t, 4)->state, false);
                RUN();
                assert_true(cnt[1] + cnt[3] + cnt[5] > 0);
                assert_int_equal(cnt[2] + cnt[4], 0);
                lb_table_unref(t);

                /* No endpoint in the local zone: every zone. */
                snprintf(c.local_zone, sizeof(c.local_zone), "zone-x");
                t = build(&c, eps, 6, NULL);
                RUN();
                assert_true(cnt[1] + cnt[3] + cnt[5] > 0);
                lb_table_unref(t);
#undef RUN
                lb_worker_free(w);
        }
}

/* ---- locality tiers ---------------------------------------------------------- */

/* Envoy's overprovisioning arithmetic, exactly (basis points). */
static void test_tier_loads(void **state)
{
        (void)state;
        static const struct {
                uint32_t avail[3], total[3], factor, want[3];
        } cases[] = {
            /* all healthy: everything local */
            {{10, 5, 5}, {10, 5, 5}, 140, {10000, 0, 0}},
            /* 8 of 10: 80 % * 1.4 = 112 % >= 100 %: still everything local */
            {{8, 5, 5}, {10, 5, 5}, 140, {10000, 0, 0}},
            /* 5 of 10: 70 %; the region takes the other 30 % */
            {{5, 5, 5}, {10, 5, 5}, 140, {7000, 3000, 0}},
            /* 1 of 3 (46.66 %), region 1 of 4 (35 %): 18.34 % spills on */
            {{1, 1, 5}, {3, 4, 5}, 140, {4666, 3500, 1834}},
            /* factor 1.0: 50 % healthy keeps exactly 50 % */
            {{5, 5, 0}, {10, 5, 0}, 100, {5000, 5000, 0}},
            /* an empty tier (total 0) takes nothing; the next one does */
            {{0, 2, 5}, {0, 4, 5}, 140, {0, 7000, 3000}},
            /* degraded (healths sum below 100 %): 14 % and 28 % scaled up,
             * the rounding's remainder to the first */
            {{1, 0, 2}, {10, 5, 10}, 140, {3334, 0, 6666}},
            /* nothing available anywhere: all zero */
            {{0, 0, 0}, {10, 5, 5}, 140, {0, 0, 0}},
        };
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
                uint32_t l[3];
                lb_tier_loads(cases[c].avail, cases[c].total, 3, cases[c].factor, l);
                for (int k = 0; k < 3; k++) {
                        if (l[k] != cases[c].want[k])
                                print_error("case %zu tier %d: %u, want %u\n", c, k, l[k],
                                            cases[c].want[k]);
                        assert_int_equal(l[k], cases[c].want[k]);
                }
        }
        assert_string_equal(lb_tier_name(0, 0), "local");
        assert_string_equal(lb_tier_name(0, 1), "region");
        assert_string_equal(lb_tier_name(0, 2), "remote");
        assert_string_equal(lb_tier_name(2, 3), "failover2");
        assert_string_equal(lb_tier_name(2, 4), "remote");
}

static struct lb_endpoint_in mkep_r(unsigned i, const char *zone, const char *region)
{
        struct lb_endpoint_in e = mkep(i, 1, zone, true);
        snprintf(e.region, sizeof(e.region), "%s", region);
        return e;
}

/* Picks follow the tier loads: local only while healthy enough, then the
 * share the arithmetic says spills, the failover region before the rest,
 * and back when the local endpoints return. Every algorithm. */
/* cnt[i]: picks of endpoint i among n keyed picks. */
static void count_picks(struct lb_worker *w, const struct lb_table *t, unsigned n, int *cnt,
                        size_t ncnt)
{
        memset(cnt, 0, ncnt * sizeof(*cnt));
        for (unsigned k = 0; k < n; k++) {
                uint64_t h = key_hash(k);
                int p = pick(w, t, &h);
                assert_true(p >= 0 && (size_t)p < ncnt);
                cnt[p]++;
        }
}

/* shunt_locality_picks_total across a reload that changes the failover
 * chain: "remote" is index 2 with no failover region and 3 with one; its
 * count stays with its name, and the new failover1 tier starts at 0. */
static void test_tier_picks_after_reload(void **state)
{
        (void)state;
        struct lb_config c = cfg_for(LB_ROUND_ROBIN);
        snprintf(c.local_zone, sizeof(c.local_zone), "z1");
        snprintf(c.local_region, sizeof(c.local_region), "r1");
        struct lb_endpoint_in eps[2] = {mkep_r(1, "z1", "r1"), mkep_r(2, "z9", "r3")};
        struct lb_table *t1 = build(&c, eps, 2, NULL);
        assert_int_equal(lb_table_tiers(t1), 3);
        assert_string_equal(lb_tier_name(0, 2), "remote");
        for (int i = 0; i < 5; i++)
                lb_table_tier_picked(t1, 2);
        lb_table_tier_picked(t1, 0);
        c.n_failover = 1;
        snprintf(c.failover[0], sizeof(c.failover[0]), "r3");
        struct lb_table *t2 = build(&c, eps, 2, t1);
        assert_int_equal(lb_table_tiers(t2), 4);
        assert_string_equal(lb_tier_name(1, 3), "remote");
        assert_int_equal(lb_table_tier_picks(t2, 3), 5); /* remote */
        assert_int_equal(lb_table_tier_picks(t2, 2), 0); /* failover1: new */
        assert_int_equal(lb_table_tier_picks(t2, 0), 1); /* local */
        /* The old table (connections still on it) counts into the same names. */
        lb_table_tier_picked(t1, 2);
        lb_table_tier_picked(t2, 2);
        assert_int_equal(lb_table_tier_picks(t2, 3), 6);
        assert_int_equal(lb_table_tier_picks(t1, 2), 6);
        assert_int_equal(lb_table_tier_picks(t2, 2), 1);
        assert_int_equal(lb_table_tier_picks(t2, 4), 0); /* no such tier */
        lb_table_unref(t1);
        lb_table_unref(t2);
}

static void test_tier_picks(void **state)
{
        (void)state;
        for (size_t a = 0; a < sizeof(all_algos) / sizeof(all_algos[0]); a++) {
                struct lb_config c = cfg_for(all_algos[a]);
                snprintf(c.local_zone, sizeof(c.local_zone), "z1");
                snprintf(c.local_region, sizeof(c.local_region), "r1");
                snprintf(c.failover[0], sizeof(c.failover[0]), "r3");
                c.n_failover = 1;
                /* local: 0,1; region: 2; failover r3: 3; remote r2 and none: 4,5 */
                struct lb_endpoint_in eps[6] = {mkep_r(1, "z1", "r1"), mkep_r(2, "z1", "r1"),
                                                mkep_r(3, "z2", "r1"), mkep_r(4, "z9", "r3"),
                                                mkep_r(5, "z5", "r2"), mkep_r(6, "", "")};
                struct lb_table *t = build(&c, eps, 6, NULL);
                assert_int_equal(lb_table_tiers(t), 4);
                static const uint8_t want_tier[6] = {0, 0, 1, 2, 3, 3};
                for (int i = 0; i < 6; i++)
                        assert_int_equal(lb_table_endpoint(t, i)->tier, want_tier[i]);
                struct lb_worker *w = lb_worker_new(a + 300);
                int cnt[6];
                enum { N = 2000 };
#define RUN() count_picks(w, t, N, cnt, 6)
                RUN();
                assert_int_equal(cnt[0] + cnt[1], N);
                /* One of two local: 70 % local, 30 % to the region's one. */
                lb_ep_set_available(lb_table_endpoint(t, 1)->state, false);
                RUN();
                assert_int_equal(cnt[1], 0);
                assert_true(cnt[0] > N * 60 / 100 && cnt[0] < N * 80 / 100);
                assert_int_equal(cnt[0] + cnt[2], N);
                uint32_t tot, av, load;
                lb_table_tier_state(t, 0, &tot, &av, &load);
                assert_int_equal(tot, 2);
                assert_int_equal(av, 1);
                assert_int_equal(load, 7000);
                /* Local and region gone: the failover region, not remote. */
                lb_ep_set_available(lb_table_endpoint(t, 0)->state, false);
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
                RUN();
                assert_int_equal(cnt[3], N);
                /* ... and remote once that is gone too. */
                lb_ep_set_available(lb_table_endpoint(t, 3)->state, false);
                RUN();
                assert_int_equal(cnt[4] + cnt[5], N);
                assert_true(cnt[4] > 0 && cnt[5] > 0);
                /* A retry excluding the only remote-tier survivor... */
                lb_ep_set_available(lb_table_endpoint(t, 5)->state, false);
                struct lb_pick p;
                assert_int_equal(lb_pick_excluding(w, t, NULL, 4, &p), LB_ENOENDPOINT);
                /* Everything back: local only again. */
                for (int i = 0; i < 6; i++)
                        lb_ep_set_available(lb_table_endpoint(t, i)->state, true);
                RUN();
                assert_int_equal(cnt[0] + cnt[1], N);
                /* A retry off a local endpoint stays local while another is. */
                for (unsigned k = 0; k < 50; k++) {
                        uint64_t h = key_hash(k);
                        assert_int_equal(lb_pick_excluding(w, t, &h, 0, &p), 0);
                        assert_int_equal(p.index, 1);
                }
                lb_table_unref(t);
                /* Unhealthy in discovery counts against the tier's share. */
                eps[0].healthy = false;
                t = build(&c, eps, 6, NULL);
                RUN();
                assert_int_equal(cnt[0], 0);
                assert_true(cnt[1] > N * 60 / 100 && cnt[1] < N * 80 / 100);
                assert_int_equal(cnt[1] + cnt[2], N);
#undef RUN
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

/* ---- tables: validation, identity, lifetimes -------------------------------- */

/* A retry's pick never returns the endpoint that failed while another can
 * serve: with one local endpoint it leaves the zone; with nothing else left
 * it reports LB_ENOENDPOINT (the caller decides to go back). */
static void test_pick_excluding(void **state)
{
        for (size_t a = 0; a < sizeof(all_algos) / sizeof(all_algos[0]); a++) {
                struct lb_config c = cfg_for(all_algos[a]);
                snprintf(c.local_zone, sizeof(c.local_zone), "zone-a");
                struct lb_endpoint_in eps[3] = {mkep(1, 1, "zone-a", true),
                                                mkep(2, 1, "zone-b", true),
                                                mkep(3, 1, "zone-b", true)};
                struct lb_table *t = build(&c, eps, 3, NULL);
                struct lb_worker *w = lb_worker_new(a + 7);
                for (unsigned k = 0; k < 100; k++) {
                        uint64_t h = key_hash(k);
                        struct lb_pick p;
                        /* Locality: the plain pick stays in zone-a. */
                        assert_int_equal(lb_pick(w, t, &h, &p), 0);
                        assert_int_equal(p.index, 0);
                        int rc = lb_pick_excluding(w, t, &h, 0, &p);
                        if (rc != 0)
                                print_error("algorithm %s key %u: %d\n",
                                            lb_algorithm_name(all_algos[a]), k, rc);
                        assert_int_equal(rc, 0);
                        assert_true(p.index == 1 || p.index == 2);
                        assert_int_equal(lb_pick_excluding(w, t, &h, 1, &p), 0);
                        assert_int_equal(p.index, 0);
                }
                /* Only the excluded one is available. */
                lb_ep_set_available(lb_table_endpoint(t, 1)->state, false);
                lb_ep_set_available(lb_table_endpoint(t, 2)->state, false);
                uint64_t h = key_hash(1);
                struct lb_pick p;
                assert_int_equal(lb_pick_excluding(w, t, &h, 0, &p), LB_ENOENDPOINT);
                assert_int_equal(lb_pick_excluding(w, t, NULL, 0, &p), LB_ENOENDPOINT);
                lb_worker_free(w);
                lb_table_unref(t);
        }
}

static void test_table_validation(void **state)
{
        struct lb_config c = cfg_for(LB_ROUND_ROBIN);
        struct lb_table *t = NULL;
        struct lb_endpoint_in eps[2] = {mkep(1, 1, "", true), mkep(1, 1, "", true)};
        assert_int_equal(lb_table_build(&c, eps, 2, NULL, &t), -EINVAL); /* duplicate */
        assert_null(t);
        eps[1] = mkep(2, LB_WEIGHT_MAX + 1, "", true);
        assert_int_equal(lb_table_build(&c, eps, 2, NULL, &t), -EINVAL);
        eps[1] = mkep(2, 1, "", true);
        eps[1].addr.ss_family = AF_UNIX;
        assert_int_equal(lb_table_build(&c, eps, 2, NULL, &t), -EINVAL);
        eps[1] = mkep(2, 1, "", true);
        memset(eps[1].zone, 'z', sizeof(eps[1].zone)); /* no NUL */
        assert_int_equal(lb_table_build(&c, eps, 2, NULL, &t), -EINVAL);
        assert_int_equal(lb_table_build(&c, NULL, 2, NULL, &t), -EINVAL);
        assert_int_equal(lb_table_build(&c, eps, LB_ENDPOINTS_MAX + 1, NULL, &t), -EINVAL);

        struct lb_config bad;
#define BAD(field, value)                                                                          \
        do {                                                                                       \
                bad = c;                                                                           \
                bad.field = value;                                                                 \
                assert_int_equal(lb_config_validate(&bad), -EINVAL);                               \
        } while (0)
        BAD(maglev_table_size, 65536); /* not prime */
        BAD(maglev_table_size, 13);    /* smaller than the endpoint bound */
        BAD(ring_vnodes, 0);
        BAD(ring_weight_unit, 0);
        BAD(ring_max_points, 100);
        BAD(locality_min_percent, 101);
        BAD(overprovisioning_percent, 99);
        BAD(overprovisioning_percent, 1001);
        BAD(p2c_threshold, 1);
        BAD(swrr_schedule_max, LB_SWRR_SCHEDULE_MAX + 1);
        BAD(algorithm, (enum lb_algorithm)9);
#undef BAD
        assert_int_equal(lb_config_validate(&c), 0);

        enum lb_algorithm a;
        assert_int_equal(lb_algorithm_parse("least_connections", &a), 0);
        assert_int_equal(a, LB_LEAST_CONNECTIONS);
        assert_int_equal(lb_algorithm_parse("maglev", &a), 0);
        assert_int_equal(a, LB_MAGLEV);
        assert_int_equal(lb_algorithm_parse("random", &a), -EINVAL);
        assert_string_equal(lb_algorithm_name(LB_CONSISTENT_HASH), "consistent_hash");

        /* IPv4 and IPv6 endpoints side by side; find by address. */
        struct lb_endpoint_in mix[2] = {mkep(1, 1, "", true), mkep(2, 1, "", true)};
        assert_int_equal(sockaddr_from_string("fd00::1", 8080, &mix[1].addr), 0);
        t = build(&c, mix, 2, NULL);
        struct sockaddr_storage q;
        assert_int_equal(sockaddr_from_string("fd00::1", 8080, &q), 0);
        assert_int_equal(lb_table_find(t, &q), 1);
        assert_int_equal(sockaddr_from_string("fd00::1", 8081, &q), 0);
        assert_int_equal(lb_table_find(t, &q), -ENOENT);
        lb_table_unref(t);
}

/* Two clusters with overlapping pod networks: the same address twice, told
 * apart by their keys (the cluster). Both are members with their own state,
 * carried to the next table by address and key; ref comes back with a pick;
 * the same address and key twice is still refused. Every algorithm. */
static void test_same_address_two_keys(void **state)
{
        for (int a = LB_ROUND_ROBIN; a <= LB_MAGLEV; a++) {
                struct lb_config c = cfg_for((enum lb_algorithm)a);
                struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(1, 1, "", true),
                                                mkep(2, 1, "", true)};
                eps[0].key = 11, eps[0].ref = 100;
                eps[1].key = 22, eps[1].ref = 200;
                eps[2].ref = 300;
                struct lb_table *t = build(&c, eps, 3, NULL);
                assert_int_equal(lb_table_find_key(t, &eps[0].addr, 11), 0);
                assert_int_equal(lb_table_find_key(t, &eps[0].addr, 22), 1);
                assert_int_equal(lb_table_find_key(t, &eps[0].addr, 33), -ENOENT);
                assert_int_equal(lb_table_find_key(t, &eps[2].addr, 0), 2);
                assert_true(lb_table_find(t, &eps[0].addr) == 0); /* by address: the first */
                struct lb_ep_state *s0 = lb_table_endpoint(t, 0)->state;
                struct lb_ep_state *s1 = lb_table_endpoint(t, 1)->state;
                assert_ptr_not_equal(s0, s1);
                assert_int_not_equal(lb_table_endpoint(t, 0)->id, lb_table_endpoint(t, 1)->id);
                /* Both are picked (hashing: some of 1,000 keys reach each). */
                struct lb_worker *w = lb_worker_new(1);
                int seen[3] = {0};
                for (unsigned k = 0; k < NKEYS; k++) {
                        uint64_t h = key_hash(k);
                        struct lb_pick p;
                        assert_int_equal(lb_pick(w, t, &h, &p), 0);
                        assert_int_equal(p.ep->ref, eps[p.index].ref);
                        seen[p.index]++;
                }
                assert_true(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
                /* Next table: the other cluster's copy first; states follow the key. */
                lb_ep_set_available(s1, false);
                struct lb_endpoint_in next[2] = {eps[1], eps[0]};
                struct lb_table *t2 = build(&c, next, 2, t);
                assert_ptr_equal(lb_table_endpoint(t2, 0)->state, s1);
                assert_ptr_equal(lb_table_endpoint(t2, 1)->state, s0);
                assert_false(lb_ep_available(lb_table_endpoint(t2, 0)->state));
                /* One cluster's copy leaves: the other keeps serving. */
                struct lb_table *t3 = build(&c, next + 1, 1, t2);
                assert_ptr_equal(lb_table_endpoint(t3, 0)->state, s0);
                assert_int_equal(pick(w, t3, NULL), 0);
                lb_table_unref(t);
                lb_table_unref(t2);
                lb_table_unref(t3);
                lb_worker_free(w);
                /* The same address and key twice is one endpoint listed twice. */
                struct lb_table *bad = NULL;
                eps[1].key = 11;
                assert_int_equal(lb_table_build(&c, eps, 3, NULL, &bad), -EINVAL);
                assert_null(bad);
        }
}

/* State survives rebuilds; a connection may outlive every table. */
static void test_state_carryover(void **state)
{
        struct lb_config c = cfg_for(LB_LEAST_CONNECTIONS);
        struct lb_endpoint_in eps[3] = {mkep(1, 1, "", true), mkep(2, 1, "", true),
                                        mkep(3, 1, "", true)};
        struct lb_table *t1 = build(&c, eps, 3, NULL);
        struct lb_ep_state *s1 = lb_table_endpoint(t1, 1)->state;
        lb_conn_begin(s1);
        lb_conn_begin(s1);
        lb_ep_set_available(lb_table_endpoint(t1, 2)->state, false);

        /* Endpoint 2 moves to index 0, endpoint 1 leaves. */
        struct lb_endpoint_in next[2] = {eps[1], eps[2]};
        struct lb_table *t2 = build(&c, next, 2, t1);
        assert_ptr_equal(lb_table_endpoint(t2, 0)->state, s1);
        assert_int_equal(lb_ep_active(lb_table_endpoint(t2, 0)->state), 2);
        assert_false(lb_ep_available(lb_table_endpoint(t2, 1)->state));
        assert_int_not_equal(lb_table_serial(t1), lb_table_serial(t2));

        /* Published through a snapshot slot, read by a worker. */
        struct snapshot_slot slot;
        snapshot_slot_init(&slot);
        snapshot_publish(&slot, lb_table_snapshot(t2));
        lb_table_unref(t1);
        struct snapshot_reader r = {0};
        struct lb_table *cur = lb_table_from_snapshot(snapshot_reader_get(&r, &slot));
        assert_ptr_equal(cur, t2);
        struct lb_worker *w = lb_worker_new(1);
        assert_int_equal(pick(w, cur, NULL), 0); /* index 1 is unavailable */
        snapshot_reader_release(&r);
        snapshot_slot_destroy(&slot); /* frees t2 */

        /* The connections end after every table is gone (ASan watches). */
        lb_conn_end(s1);
        lb_conn_end(s1);
        lb_worker_free(w);
}

/* A worker follows table changes, including a shrinking weighted set. */
static void test_worker_rebind(void **state)
{
        struct lb_config c = cfg_for(LB_WEIGHTED);
        c.swrr_schedule_max = 0;
        struct lb_endpoint_in eps[8];
        for (unsigned i = 0; i < 8; i++)
                eps[i] = mkep(i + 1, i + 1, "", true);
        struct lb_worker *w = lb_worker_new(1);
        struct lb_table *prev = NULL;
        for (unsigned n = 8; n >= 1; n--) {
                struct lb_table *t = build(&c, eps, n, prev);
                lb_table_unref(prev);
                unsigned sum = n * (n + 1) / 2, cnt[8] = {0};
                for (unsigned k = 0; k < sum * 4; k++)
                        cnt[pick(w, t, NULL)]++;
                for (unsigned i = 0; i < n; i++)
                        assert_int_equal(cnt[i], 4 * (i + 1));
                prev = t;
        }
        lb_table_unref(prev);
        lb_worker_free(w);
}

/* ---- hashing helpers ---------------------------------------------------------- */

static void test_hash_helpers(void **state)
{
        /* FNV-1a of the empty input is the offset basis, then fmix64. */
        assert_int_not_equal(lb_hash("", 0), lb_hash("\0", 1));
        assert_int_equal(lb_hash("abc", 3), lb_hash("abc", 3));
        assert_int_not_equal(lb_hash("abc", 3), lb_hash("abd", 3));
        /* Avalanche: one flipped input bit flips about half the output bits. */
        unsigned total = 0;
        for (unsigned k = 0; k < 256; k++) {
                uint32_t x = k, y = k ^ 1;
                total += (unsigned)__builtin_popcountll(lb_hash(&x, 4) ^ lb_hash(&y, 4));
        }
        assert_in_range(total / 256, 26, 38);

        assert_int_equal(lb_hash_header_value("  user-1\t", 9), lb_hash("user-1", 6));
        assert_int_equal(lb_hash_header_value(NULL, 0), lb_hash("", 0));

        uint64_t h = 0;
        const char *ck = "theme=dark; session=abc123; other=\"x\"";
        assert_int_equal(lb_hash_cookie(ck, strlen(ck), "session", &h), 0);
        assert_int_equal(h, lb_hash("abc123", 6));
        assert_int_equal(lb_hash_cookie(ck, strlen(ck), "other", &h), 0);
        assert_int_equal(h, lb_hash("x", 1));
        assert_int_equal(lb_hash_cookie(ck, strlen(ck), "sess", &h), -ENOENT);
        assert_int_equal(lb_hash_cookie(ck, strlen(ck), "theme=dark", &h), -ENOENT);
        assert_int_equal(lb_hash_cookie("a=", 2, "a", &h), -ENOENT);
        assert_int_equal(lb_hash_cookie("garbage", 7, "a", &h), -ENOENT);
        /* Only the given length is read. */
        assert_int_equal(lb_hash_cookie("a=1; b=2", 4, "b", &h), -ENOENT);
        assert_int_equal(lb_hash_cookie("a=12345", 4, "a", &h), 0);
        assert_int_equal(h, lb_hash("12", 2));

        struct sockaddr_storage a, b, m;
        assert_int_equal(sockaddr_from_string("192.0.2.7", 1111, &a), 0);
        assert_int_equal(sockaddr_from_string("192.0.2.7", 2222, &b), 0);
        assert_int_equal(sockaddr_from_string("::ffff:192.0.2.7", 3333, &m), 0);
        assert_int_equal(lb_hash_source_ip(&a), lb_hash_source_ip(&b));
        assert_int_equal(lb_hash_source_ip(&a), lb_hash_source_ip(&m));
        assert_int_equal(sockaddr_from_string("192.0.2.8", 1111, &b), 0);
        assert_int_not_equal(lb_hash_source_ip(&a), lb_hash_source_ip(&b));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_round_robin_300),
            cmocka_unit_test(test_weighted_600),
            cmocka_unit_test(test_weighted_smooth),
            cmocka_unit_test(test_weighted_scaled),
            cmocka_unit_test(test_weighted_zero),
            cmocka_unit_test(test_unhealthy_gets_zero),
            cmocka_unit_test(test_empty_set),
            cmocka_unit_test(test_least_connections),
            cmocka_unit_test(test_least_connections_p2c),
            cmocka_unit_test(test_ring_hash),
            cmocka_unit_test(test_maglev),
            cmocka_unit_test(test_hash_weights),
            cmocka_unit_test(test_hash_zero_weight),
            cmocka_unit_test(test_maglev_even),
            cmocka_unit_test(test_ring_cap),
            cmocka_unit_test(test_locality),
            cmocka_unit_test(test_tier_loads),
            cmocka_unit_test(test_tier_picks),
            cmocka_unit_test(test_pick_excluding),
            cmocka_unit_test(test_table_validation),
            cmocka_unit_test(test_state_carryover),
            cmocka_unit_test(test_tier_picks_after_reload),
            cmocka_unit_test(test_same_address_two_keys),
            cmocka_unit_test(test_worker_rebind),
            cmocka_unit_test(test_hash_helpers),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

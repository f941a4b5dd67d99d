// SPDX-License-Identifier: Apache-2.0
/* Resilience state machines with injected time and seeded randomness:
 * circuit breaker, outlier detection, per-service limits, retries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "lb/lb.h"
#include "lb/resilience.h"

#define S  LB_NS_PER_SEC
#define MS 1000000ull

static struct lb_breaker_config bcfg(void)
{
        struct lb_breaker_config c;
        lb_breaker_config_default(&c);
        return c;
}

/* ---- circuit breaker ---------------------------------------------------------- */

static void test_breaker_consecutive(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        uint64_t now = 1000 * S;
        lb_breaker_init(&b, 1, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        /* 4 failures, a success, 4 failures: never 5 in a row. */
        for (int round = 0; round < 2; round++) {
                for (int i = 0; i < 4; i++) {
                        assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
                        lb_breaker_record(&b, &c, false, now);
                }
                lb_breaker_record(&b, &c, true, now);
        }
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        /* The 5th failure in a row opens it. */
        for (int i = 0; i < 4; i++)
                lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_OPEN);
        assert_int_equal(lb_breaker_allow(&b, &c, now), LB_EBREAKER);
        assert_false(lb_breaker_pickable(&b, &c, now));
        assert_int_equal(b.opens, 1);
        /* Late results of requests sent before it opened change nothing. */
        uint64_t until = lb_breaker_open_until(&b);
        lb_breaker_record(&b, &c, true, now + 1);
        lb_breaker_record(&b, &c, false, now + 1);
        assert_int_equal(lb_breaker_state(&b, &c, now + 1), LB_BREAKER_OPEN);
        assert_int_equal(lb_breaker_open_until(&b), until);
}

static void test_breaker_failure_rate(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        uint64_t now = 5 * S;
        lb_breaker_init(&b, 2, now);
        /* Alternating failure/success: never 5 in a row. 19 results (10
         * failures) is below the minimum of 20; the 20th makes 10/20 = 50 %. */
        for (int i = 0; i < 19; i++) {
                lb_breaker_record(&b, &c, i % 2 == 1, now);
                now += 100 * MS;
        }
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_OPEN);

        /* 9 failures in 20 (45 %) and 10 in 21 keep it closed; 11 in 22
         * (50 %) opens it. */
        lb_breaker_init(&b, 2, now);
        for (int i = 0; i < 18; i++)
                lb_breaker_record(&b, &c, i % 2 == 0, now);
        lb_breaker_record(&b, &c, true, now);
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_OPEN);

        /* Old results leave the 30 s window: 15 results (8 failures) now,
         * 15 more (8 failures) 31 s later: never 20 in the window. */
        lb_breaker_init(&b, 3, now);
        for (int k = 0; k < 2; k++) {
                for (int i = 0; i < 15; i++)
                        lb_breaker_record(&b, &c, i % 2 == 1, now);
                assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
                now += 31 * S;
        }
        /* Within the window they add up: 15 + 15 at 50 %+ opens it. */
        lb_breaker_init(&b, 4, now);
        for (int k = 0; k < 2; k++) {
                for (int i = 0; i < 15; i++)
                        lb_breaker_record(&b, &c, i % 2 == 1, now);
                now += 20 * S;
                if (k == 0)
                        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        }
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_OPEN);
}

static void open_it(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        for (uint32_t i = 0; i < c->consecutive_failures; i++)
                lb_breaker_record(b, c, false, now);
        assert_int_equal(lb_breaker_state(b, c, now), LB_BREAKER_OPEN);
}

static void test_breaker_jitter(void **state)
{
        struct lb_breaker_config c = bcfg();
        uint64_t lo = UINT64_MAX, hi = 0, now = 77 * S;
        for (uint64_t seed = 0; seed < 1000; seed++) {
                struct lb_breaker b;
                lb_breaker_init(&b, seed, now);
                open_it(&b, &c, now);
                uint64_t d = lb_breaker_open_until(&b) - now;
                assert_true(d >= 27 * S && d <= 33 * S); /* 30 s +- 10 % */
                lo = d < lo ? d : lo;
                hi = d > hi ? d : hi;
                /* Half-open exactly at open_until, not a nanosecond before. */
                assert_int_equal(lb_breaker_state(&b, &c, now + d - 1), LB_BREAKER_OPEN);
                assert_int_equal(lb_breaker_state(&b, &c, now + d), LB_BREAKER_HALF_OPEN);
        }
        /* The draws cover the range (not a constant). */
        assert_true(lo < 27 * S + 300 * MS);
        assert_true(hi > 33 * S - 300 * MS);
        /* Same seed, same draw. */
        struct lb_breaker x, y;
        lb_breaker_init(&x, 9, now);
        lb_breaker_init(&y, 9, now);
        open_it(&x, &c, now);
        open_it(&y, &c, now);
        assert_int_equal(lb_breaker_open_until(&x), lb_breaker_open_until(&y));
        /* No jitter configured: exactly 30 s. */
        c.jitter_percent = 0;
        lb_breaker_init(&x, 9, now);
        open_it(&x, &c, now);
        assert_int_equal(lb_breaker_open_until(&x), now + 30 * S);
}

static void test_breaker_half_open(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        uint64_t now = 10 * S;
        lb_breaker_init(&b, 5, now);
        open_it(&b, &c, now);
        now = lb_breaker_open_until(&b);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_HALF_OPEN);
        /* Three probes may be in flight; the fourth is refused. */
        for (int i = 0; i < 3; i++) {
                assert_true(lb_breaker_pickable(&b, &c, now));
                assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
        }
        assert_false(lb_breaker_pickable(&b, &c, now));
        assert_int_equal(lb_breaker_allow(&b, &c, now), LB_EBREAKER);
        /* A cancelled probe frees its slot. */
        lb_breaker_cancel(&b);
        assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
        /* Two successes: still half-open, and a slot is free again. */
        lb_breaker_record(&b, &c, true, now);
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_HALF_OPEN);
        assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
        /* The third success closes it, with clean counters. */
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);
        for (int i = 0; i < 4; i++)
                lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_CLOSED);

        /* A failure in half-open opens it again, for a fresh jittered time. */
        lb_breaker_record(&b, &c, false, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_OPEN);
        now = lb_breaker_open_until(&b);
        assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_allow(&b, &c, now), 0);
        lb_breaker_record(&b, &c, false, now + S);
        assert_int_equal(lb_breaker_state(&b, &c, now + S), LB_BREAKER_OPEN);
        uint64_t d = lb_breaker_open_until(&b) - (now + S);
        assert_true(d >= 27 * S && d <= 33 * S);
        assert_int_equal(b.opens, 3);
}

static void test_breaker_forced(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        uint64_t now = S;
        lb_breaker_init(&b, 6, now);
        lb_breaker_force_open(&b, true, now);
        assert_int_equal(lb_breaker_state(&b, &c, now), LB_BREAKER_FORCED_OPEN);
        /* No timeout ends it, no result changes it. */
        lb_breaker_record(&b, &c, true, now);
        assert_int_equal(lb_breaker_allow(&b, &c, now + 3600 * S), LB_EBREAKER);
        assert_int_equal(lb_breaker_state(&b, &c, now + 3600 * S), LB_BREAKER_FORCED_OPEN);
        /* Released: closed, counting from zero. */
        lb_breaker_force_open(&b, false, now + 3600 * S);
        assert_int_equal(lb_breaker_state(&b, &c, now + 3600 * S), LB_BREAKER_CLOSED);
        assert_int_equal(lb_breaker_allow(&b, &c, now + 3600 * S), 0);
        /* Releasing a breaker that is not forced does nothing. */
        open_it(&b, &c, now + 3600 * S);
        lb_breaker_force_open(&b, false, now + 3600 * S);
        assert_int_equal(lb_breaker_state(&b, &c, now + 3600 * S), LB_BREAKER_OPEN);
}

static void test_breaker_aggregate_and_config(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b[5];
        uint64_t now = S;
        for (int i = 0; i < 5; i++)
                lb_breaker_init(&b[i], (uint64_t)i, now);
        open_it(&b[1], &c, now);
        open_it(&b[2], &c, now);
        lb_breaker_force_open(&b[3], true, now);
        struct lb_breaker *p[5] = {&b[0], &b[1], &b[2], &b[3], &b[4]};
        struct lb_breaker_counts n;
        lb_breaker_aggregate(p, 5, &c, now, &n);
        assert_int_equal(n.n[LB_BREAKER_CLOSED], 2);
        assert_int_equal(n.n[LB_BREAKER_OPEN], 2);
        assert_int_equal(n.n[LB_BREAKER_HALF_OPEN], 0);
        assert_int_equal(n.n[LB_BREAKER_FORCED_OPEN], 1);
        /* 40 s later both open ones are half-open. */
        lb_breaker_aggregate(p, 5, &c, now + 40 * S, &n);
        assert_int_equal(n.n[LB_BREAKER_HALF_OPEN], 2);
        assert_int_equal(n.n[LB_BREAKER_OPEN], 0);
        assert_string_equal(lb_breaker_state_name(LB_BREAKER_HALF_OPEN), "half_open");

        assert_int_equal(lb_breaker_config_validate(&c), 0);
        struct lb_breaker_config bad = c;
        bad.consecutive_failures = 0;
        assert_int_equal(lb_breaker_config_validate(&bad), -EINVAL);
        bad = c;
        bad.failure_percent = 101;
        assert_int_equal(lb_breaker_config_validate(&bad), -EINVAL);
        bad = c;
        bad.jitter_percent = 51;
        assert_int_equal(lb_breaker_config_validate(&bad), -EINVAL);
        bad = c;
        bad.window_ns = 1;
        assert_int_equal(lb_breaker_config_validate(&bad), -EINVAL);
        bad = c;
        bad.half_open_probes = 0;
        assert_int_equal(lb_breaker_config_validate(&bad), -EINVAL);
}

/* Only probes decide in half-open; rendering (view, pickable) moves
 * nothing; exactly one caller sees the open -> half-open step. */
static void test_breaker_probes_and_views(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        uint64_t now = 50 * S;
        lb_breaker_init(&b, 11, now);
        open_it(&b, &c, now);
        uint64_t until = lb_breaker_open_until(&b);
        assert_false(lb_breaker_pickable(&b, &c, until - 1));
        /* Time up: pickable and viewed as half-open, still stored open. */
        assert_true(lb_breaker_pickable(&b, &c, until));
        assert_int_equal(lb_breaker_view(&b, until), LB_BREAKER_HALF_OPEN);
        assert_int_equal(lb_breaker_peek(&b), LB_BREAKER_OPEN);
        bool moved;
        assert_int_equal(lb_breaker_advance(&b, &c, until, &moved), LB_BREAKER_HALF_OPEN);
        assert_true(moved);
        assert_int_equal(lb_breaker_advance(&b, &c, until, &moved), LB_BREAKER_HALF_OPEN);
        assert_false(moved);
        /* Results of requests admitted before (not probes) are ignored. */
        for (int i = 0; i < 10; i++)
                assert_int_equal(lb_breaker_result(&b, &c, false, false, until),
                                 LB_BREAKER_HALF_OPEN);
        for (int i = 0; i < 10; i++)
                lb_breaker_result(&b, &c, true, false, until);
        assert_int_equal(lb_breaker_state(&b, &c, until), LB_BREAKER_HALF_OPEN);
        /* Probes: slots taken by allow; the last slot makes it unpickable. */
        for (int i = 0; i < 3; i++)
                assert_int_equal(lb_breaker_allow(&b, &c, until), 0);
        assert_false(lb_breaker_pickable(&b, &c, until));
        assert_int_equal(lb_breaker_result(&b, &c, true, true, until), LB_BREAKER_HALF_OPEN);
        assert_true(lb_breaker_pickable(&b, &c, until));
        assert_int_equal(lb_breaker_result(&b, &c, true, true, until), LB_BREAKER_HALF_OPEN);
        assert_int_equal(lb_breaker_result(&b, &c, true, true, until), LB_BREAKER_CLOSED);
        assert_int_equal(lb_breaker_opens(&b), 1);
}

struct brace {
        struct lb_breaker *b;
        const struct lb_breaker_config *c;
        uint64_t now;
        _Atomic int admitted;
};

static void *breaker_failer(void *arg)
{
        struct brace *r = arg;
        for (int i = 0; i < 5000; i++)
                lb_breaker_record(r->b, r->c, false, r->now);
        return NULL;
}

static void *breaker_prober(void *arg)
{
        struct brace *r = arg;
        for (int i = 0; i < 1000; i++)
                if (lb_breaker_allow(r->b, r->c, r->now) == 0)
                        atomic_fetch_add(&r->admitted, 1);
        return NULL;
}

/* Four threads at once: failures open the breaker once (later results
 * while open change nothing); in half-open exactly half_open_probes
 * requests are admitted however many threads ask. */
static void test_breaker_threads(void **state)
{
        struct lb_breaker_config c = bcfg();
        struct lb_breaker b;
        lb_breaker_init(&b, 12, S);
        struct brace r = {.b = &b, .c = &c, .now = S};
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
                assert_int_equal(pthread_create(&th[i], NULL, breaker_failer, &r), 0);
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        assert_int_equal(lb_breaker_peek(&b), LB_BREAKER_OPEN);
        assert_int_equal(lb_breaker_opens(&b), 1);
        r.now = lb_breaker_open_until(&b);
        for (int i = 0; i < 4; i++)
                assert_int_equal(pthread_create(&th[i], NULL, breaker_prober, &r), 0);
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&r.admitted), 3);
        assert_int_equal(lb_breaker_peek(&b), LB_BREAKER_HALF_OPEN);
}

/* ---- outlier detection ------------------------------------------------------------ */

static void fail_n(struct lb_outlier *o, uint32_t i, int n, enum lb_outcome r, uint64_t now,
                   int expect_last)
{
        for (int k = 0; k < n - 1; k++)
                assert_int_equal(lb_outlier_record(o, i, r, now), 0);
        assert_int_equal(lb_outlier_record(o, i, r, now), expect_last);
}

static void test_outlier_growth(void **state)
{
        struct lb_outlier_config c;
        lb_outlier_config_default(&c);
        struct lb_outlier *o = lb_outlier_new(&c, 10);
        assert_non_null(o);
        uint64_t now = 100 * S;

        /* Failures interrupted by a success, or of another kind, do not eject. */
        fail_n(o, 0, 4, LB_OUTCOME_5XX, now, 0);
        assert_int_equal(lb_outlier_record(o, 0, LB_OUTCOME_SUCCESS, now), 0);
        fail_n(o, 0, 4, LB_OUTCOME_CONNECT_FAILURE, now, 0);
        assert_int_equal(lb_outlier_record(o, 0, LB_OUTCOME_OTHER_FAILURE, now), 0);
        assert_false(lb_outlier_ejected(o, 0));
        /* The 5th in a row (connect failures and 5xx mix) ejects for 30 s. */
        assert_int_equal(lb_outlier_record(o, 0, LB_OUTCOME_5XX, now), 1);
        assert_true(lb_outlier_ejected(o, 0));
        assert_int_equal(lb_outlier_ejected_until(o, 0), now + 30 * S);
        assert_int_equal(lb_outlier_num_ejected(o), 1);
        assert_int_equal(lb_outlier_tick(o, now + 30 * S - 1), 0);
        assert_true(lb_outlier_ejected(o, 0));
        /* Results while ejected are ignored. */
        assert_int_equal(lb_outlier_record(o, 0, LB_OUTCOME_5XX, now + S), 0);
        assert_int_equal(lb_outlier_tick(o, now + 30 * S), 1);
        assert_false(lb_outlier_ejected(o, 0));
        assert_int_equal(lb_outlier_num_ejected(o), 0);

        /* Each further ejection lasts base * k: 60, 90, ... capped at 300. */
        now += 30 * S;
        uint64_t expect[] = {60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300};
        for (size_t k = 0; k < sizeof(expect) / sizeof(expect[0]); k++) {
                fail_n(o, 0, 5, LB_OUTCOME_CONNECT_FAILURE, now, 1);
                assert_int_equal(lb_outlier_ejected_until(o, 0) - now, expect[k] * S);
                now = lb_outlier_ejected_until(o, 0);
                assert_int_equal(lb_outlier_tick(o, now), 1);
        }
        assert_int_equal(lb_outlier_ejection_count(o, 0), 12);
        /* In service for 300 s per step, the count decays by one each. */
        lb_outlier_tick(o, now + 300 * S - 1);
        assert_int_equal(lb_outlier_ejection_count(o, 0), 12);
        lb_outlier_tick(o, now + 300 * S);
        assert_int_equal(lb_outlier_ejection_count(o, 0), 11);
        lb_outlier_tick(o, now + 3000 * S);
        assert_int_equal(lb_outlier_ejection_count(o, 0), 2);
        now += 3000 * S;
        fail_n(o, 0, 5, LB_OUTCOME_5XX, now, 1);
        assert_int_equal(lb_outlier_ejected_until(o, 0) - now, 90 * S);

        assert_int_equal(lb_outlier_record(o, 10, LB_OUTCOME_5XX, now), -EINVAL);
        lb_outlier_free(o);
}

static void test_outlier_cap(void **state)
{
        /* The documented rounding rule. */
        static const uint32_t rows[][3] = {
            {0, 10, 0},  {1, 10, 0},  {1, 100, 0}, {2, 10, 1},  {3, 10, 1},      {10, 10, 1},
            {19, 10, 1}, {20, 10, 2}, {25, 10, 2}, {29, 10, 2}, {30, 10, 3},     {10, 0, 0},
            {10, 50, 5}, {4, 100, 3}, {3, 99, 2},  {7, 33, 2},  {1000, 10, 100},
        };
        for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++)
                assert_int_equal(lb_outlier_max_ejected(rows[r][0], rows[r][1]), rows[r][2]);

        /* Honoured: 20 endpoints at 10 % -> at most 2 out at once. */
        struct lb_outlier_config c;
        lb_outlier_config_default(&c);
        struct lb_outlier *o = lb_outlier_new(&c, 20);
        uint64_t now = S;
        fail_n(o, 3, 5, LB_OUTCOME_5XX, now, 1);
        fail_n(o, 4, 5, LB_OUTCOME_5XX, now + S, 1);
        fail_n(o, 5, 5, LB_OUTCOME_5XX, now + 2 * S, 0); /* cap reached */
        assert_false(lb_outlier_ejected(o, 5));
        assert_int_equal(lb_outlier_num_ejected(o), 2);
        assert_int_equal(lb_outlier_skipped(o), 1);
        /* Its counter restarted: 4 more are not enough once room exists. */
        lb_outlier_tick(o, now + 30 * S); /* endpoint 3 returns */
        assert_int_equal(lb_outlier_num_ejected(o), 1);
        fail_n(o, 5, 4, LB_OUTCOME_5XX, now + 30 * S, 0);
        assert_int_equal(lb_outlier_record(o, 5, LB_OUTCOME_5XX, now + 30 * S), 1);
        assert_int_equal(lb_outlier_num_ejected(o), 2);
        lb_outlier_free(o);

        /* One endpoint alone is never ejected. */
        o = lb_outlier_new(&c, 1);
        fail_n(o, 0, 5, LB_OUTCOME_5XX, now, 0);
        assert_int_equal(lb_outlier_skipped(o), 1);
        lb_outlier_free(o);

        struct lb_outlier_config bad = c;
        bad.max_ejection_percent = 101;
        assert_int_equal(lb_outlier_config_validate(&bad), -EINVAL);
        assert_null(lb_outlier_new(&bad, 3));
        bad = c;
        bad.max_ejection_ns = c.base_ejection_ns - 1;
        assert_int_equal(lb_outlier_config_validate(&bad), -EINVAL);
        bad = c;
        bad.consecutive_failures = 0;
        assert_int_equal(lb_outlier_config_validate(&bad), -EINVAL);
}

struct orace {
        const struct lb_outlier_config *c;
        struct lb_outlier_svc *svc;
        struct lb_outlier_ep *eps;
        uint32_t n;
        int first;
};

static void *outlier_failer(void *arg)
{
        struct orace *r = arg;
        for (int round = 0; round < 50; round++)
                for (uint32_t i = 0; i < r->n; i++)
                        lb_outlier_ep_record(r->c, r->svc, &r->eps[(i + (uint32_t)r->first) % r->n],
                                             r->n, LB_OUTCOME_5XX, S);
        return NULL;
}

/* Every endpoint failing from four threads at once: the cap (20 endpoints
 * at 10 % -> 2) is never passed; the rest count as skipped. */
static void test_outlier_cap_threads(void **state)
{
        struct lb_outlier_config c;
        lb_outlier_config_default(&c);
        struct lb_outlier_svc svc;
        memset(&svc, 0, sizeof(svc));
        struct lb_outlier_ep eps[20];
        memset(eps, 0, sizeof(eps));
        struct orace r[4];
        pthread_t th[4];
        for (int i = 0; i < 4; i++) {
                r[i] = (struct orace){.c = &c, .svc = &svc, .eps = eps, .n = 20, .first = i * 5};
                assert_int_equal(pthread_create(&th[i], NULL, outlier_failer, &r[i]), 0);
        }
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&svc.ejected), 2);
        assert_int_equal(atomic_load(&svc.ejections), 2);
        assert_true(atomic_load(&svc.skipped) > 0);
        uint32_t out = 0;
        for (int i = 0; i < 20; i++)
                out += lb_outlier_ep_until(&eps[i]) != 0;
        assert_int_equal(out, 2);
        /* Expiry returns them and frees the slots; a removed endpoint's
         * release frees its slot at once. */
        uint32_t back = 0;
        for (int i = 0; i < 20; i++)
                back += lb_outlier_ep_expire(&c, &svc, &eps[i], S + 30 * S);
        assert_int_equal(back, 2);
        assert_int_equal(atomic_load(&svc.ejected), 0);
        for (int k = 0; k < 5; k++)
                lb_outlier_ep_record(&c, &svc, &eps[7], 20, LB_OUTCOME_CONNECT_FAILURE, 40 * S);
        assert_int_equal(atomic_load(&svc.ejected), 1);
        lb_outlier_ep_release(&svc, &eps[7]);
        assert_int_equal(atomic_load(&svc.ejected), 0);
        assert_int_equal(lb_outlier_ep_until(&eps[7]), 0);
}

/* ---- limits ------------------------------------------------------------------------- */

static void test_limits(void **state)
{
        struct lb_limits_config c;
        lb_limits_config_default(&c);
        assert_int_equal(c.max[LB_LIMIT_CONNECTIONS], 1024);
        c.max[LB_LIMIT_CONNECTIONS] = 2;
        c.max[LB_LIMIT_PENDING] = 1;
        c.max[LB_LIMIT_REQUESTS] = 3;
        assert_int_equal(lb_limits_config_validate(&c), 0);
        struct lb_limits l;
        lb_limits_init(&l, &c);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), 0);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), 0);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), -EBUSY);
        assert_int_equal(lb_limits_refused(&l, LB_LIMIT_CONNECTIONS), 1);
        assert_int_equal(lb_limits_current(&l, LB_LIMIT_CONNECTIONS), 2);
        /* Kinds are independent. */
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_PENDING), 0);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_PENDING), LB_ELIMIT);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_REQUESTS), 0);
        lb_limits_release(&l, LB_LIMIT_CONNECTIONS);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), 0);
        /* Lowering the limit refuses new ones but cuts nothing. */
        c.max[LB_LIMIT_CONNECTIONS] = 1;
        lb_limits_set(&l, &c);
        assert_int_equal(lb_limits_current(&l, LB_LIMIT_CONNECTIONS), 2);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), LB_ELIMIT);
        lb_limits_release(&l, LB_LIMIT_CONNECTIONS);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), LB_ELIMIT);
        lb_limits_release(&l, LB_LIMIT_CONNECTIONS);
        assert_int_equal(lb_limits_acquire(&l, LB_LIMIT_CONNECTIONS), 0);
        /* An unbalanced release does not wrap. */
        lb_limits_release(&l, LB_LIMIT_PENDING);
        lb_limits_release(&l, LB_LIMIT_PENDING);
        assert_int_equal(lb_limits_current(&l, LB_LIMIT_PENDING), 0);
        assert_string_equal(lb_limit_name(LB_LIMIT_PENDING), "max_pending_requests");
        c.max[LB_LIMIT_REQUESTS] = 0;
        assert_int_equal(lb_limits_config_validate(&c), -EINVAL);
}

struct race {
        struct lb_limits *l;
        _Atomic int over;
        _Atomic uint32_t granted;
};

static void *racer(void *arg)
{
        struct race *r = arg;
        for (int i = 0; i < 20000; i++) {
                if (lb_limits_acquire(r->l, LB_LIMIT_REQUESTS) == 0) {
                        atomic_fetch_add(&r->granted, 1);
                        if (lb_limits_current(r->l, LB_LIMIT_REQUESTS) > 3)
                                atomic_store(&r->over, 1);
                        lb_limits_release(r->l, LB_LIMIT_REQUESTS);
                }
        }
        return NULL;
}

/* Workers share the counters: never above the maximum, nothing lost. */
static void test_limits_threads(void **state)
{
        struct lb_limits_config c;
        lb_limits_config_default(&c);
        c.max[LB_LIMIT_REQUESTS] = 3;
        struct lb_limits l;
        lb_limits_init(&l, &c);
        struct race r = {.l = &l};
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
                assert_int_equal(pthread_create(&th[i], NULL, racer, &r), 0);
        for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
        assert_int_equal(atomic_load(&r.over), 0);
        assert_int_equal(lb_limits_current(&l, LB_LIMIT_REQUESTS), 0);
        assert_int_equal(atomic_load(&r.granted) + lb_limits_refused(&l, LB_LIMIT_REQUESTS),
                         4 * 20000);
}

/* ---- retries ------------------------------------------------------------------------ */

static void test_retry_policy(void **state)
{
        struct lb_retry_config c;
        lb_retry_config_default(&c);
        assert_int_equal(lb_retry_config_validate(&c), 0);
        assert_true(lb_method_idempotent("GET", 3));
        assert_true(lb_method_idempotent("DELETE", 6));
        assert_true(lb_method_idempotent("PUT", 3));
        assert_false(lb_method_idempotent("POST", 4));
        assert_false(lb_method_idempotent("PATCH", 5));
        assert_false(lb_method_idempotent("get", 3));
        assert_false(lb_method_idempotent("GETX", 3 + 1));
        assert_false(lb_method_idempotent(NULL, 0));

        /* Connect failures: any method. */
        assert_true(lb_retry_should(&c, 1, LB_RETRY_CONNECT_FAILURE, 0, false));
        assert_true(lb_retry_should(&c, 2, LB_RETRY_CONNECT_FAILURE, 0, false));
        assert_false(lb_retry_should(&c, 3, LB_RETRY_CONNECT_FAILURE, 0, false)); /* 2 retries */
        assert_false(lb_retry_should(&c, 0, LB_RETRY_CONNECT_FAILURE, 0, true));
        /* After bytes were sent: idempotent only. */
        assert_false(lb_retry_should(&c, 1, LB_RETRY_RESET, 0, false));
        assert_true(lb_retry_should(&c, 1, LB_RETRY_RESET, 0, true));
        assert_true(lb_retry_should(&c, 1, LB_RETRY_STATUS, 503, true));
        assert_true(lb_retry_should(&c, 1, LB_RETRY_STATUS, 502, true));
        assert_false(lb_retry_should(&c, 1, LB_RETRY_STATUS, 500, true));
        assert_false(lb_retry_should(&c, 1, LB_RETRY_STATUS, 503, false));
        assert_false(lb_retry_should(&c, 1, LB_RETRY_STATUS, 404, true));
        c.retry_5xx = false;
        assert_false(lb_retry_should(&c, 1, LB_RETRY_STATUS, 503, true));
        c.max_retries = 0;
        assert_false(lb_retry_should(&c, 1, LB_RETRY_CONNECT_FAILURE, 0, true));

        struct lb_retry_config bad;
        lb_retry_config_default(&bad);
        bad.backoff_max_ns = bad.backoff_base_ns - 1;
        assert_int_equal(lb_retry_config_validate(&bad), -EINVAL);
        lb_retry_config_default(&bad);
        bad.budget_percent = 101;
        assert_int_equal(lb_retry_config_validate(&bad), -EINVAL);
        lb_retry_config_default(&bad);
        bad.max_retries = 11;
        assert_int_equal(lb_retry_config_validate(&bad), -EINVAL);
}

static void test_retry_backoff(void **state)
{
        struct lb_retry_config c;
        lb_retry_config_default(&c); /* 25 ms doubling to 250 ms */
        uint64_t rng = 12345;
        static const uint64_t full[] = {25, 50, 100, 200, 250, 250};
        for (uint32_t r = 1; r <= 6; r++) {
                uint64_t d = full[r - 1] * MS, lo = UINT64_MAX, hi = 0;
                for (int k = 0; k < 2000; k++) {
                        uint64_t b = lb_retry_backoff(&c, r, &rng);
                        assert_true(b >= d / 2 && b <= d);
                        lo = b < lo ? b : lo;
                        hi = b > hi ? b : hi;
                }
                /* Jittered across the range [d/2, d]. */
                assert_true(lo < d / 2 + d / 20);
                assert_true(hi > d - d / 20);
        }
        /* Huge retry numbers stay capped, no overflow. */
        assert_true(lb_retry_backoff(&c, 1000, &rng) <= 250 * MS);
        /* Deterministic for a seed. */
        uint64_t r1 = 5, r2 = 5;
        assert_int_equal(lb_retry_backoff(&c, 2, &r1), lb_retry_backoff(&c, 2, &r2));
}

static void test_retry_budget(void **state)
{
        struct lb_retry_config c;
        lb_retry_config_default(&c); /* 20 %, minimum 3 */
        assert_int_equal(lb_retry_budget_limit(&c, 0), 3);
        assert_int_equal(lb_retry_budget_limit(&c, 14), 3); /* floor(2.8) < 3 */
        assert_int_equal(lb_retry_budget_limit(&c, 19), 3);
        assert_int_equal(lb_retry_budget_limit(&c, 20), 4);
        assert_int_equal(lb_retry_budget_limit(&c, 100), 20);
        assert_int_equal(lb_retry_budget_limit(&c, 104), 20);

        struct lb_retry_budget b;
        lb_retry_budget_init(&b);
        for (int i = 0; i < 3; i++)
                assert_int_equal(lb_retry_budget_acquire(&b, &c, 5), 0);
        assert_int_equal(lb_retry_budget_acquire(&b, &c, 5), -EDQUOT);
        /* More traffic, more room. */
        assert_int_equal(lb_retry_budget_acquire(&b, &c, 20), 0);
        assert_int_equal(lb_retry_budget_acquire(&b, &c, 20), LB_EBUDGET);
        for (int i = 0; i < 4; i++)
                lb_retry_budget_release(&b);
        assert_int_equal(lb_retry_budget_acquire(&b, &c, 0), 0);
        assert_int_equal(atomic_load(&b.refused), 2);
        lb_retry_budget_release(&b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_breaker_consecutive),
            cmocka_unit_test(test_breaker_failure_rate),
            cmocka_unit_test(test_breaker_jitter),
            cmocka_unit_test(test_breaker_half_open),
            cmocka_unit_test(test_breaker_forced),
            cmocka_unit_test(test_breaker_aggregate_and_config),
            cmocka_unit_test(test_breaker_probes_and_views),
            cmocka_unit_test(test_breaker_threads),
            cmocka_unit_test(test_outlier_growth),
            cmocka_unit_test(test_outlier_cap),
            cmocka_unit_test(test_outlier_cap_threads),
            cmocka_unit_test(test_limits),
            cmocka_unit_test(test_limits_threads),
            cmocka_unit_test(test_retry_policy),
            cmocka_unit_test(test_retry_backoff),
            cmocka_unit_test(test_retry_budget),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

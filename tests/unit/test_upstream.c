// SPDX-License-Identifier: Apache-2.0
/* The worker's pool of idle upstream connections (upstream.c) without
 * namespaces: connections to a loopback listener of the test, taken and
 * given back as an engine does (proxy_harness.h runs the worker's loop).
 * An upstream's states: CONNECTING -> OPEN (READY), or -> DEAD (FAILED);
 * an open one goes back to the pool when reusable, where it expires, or is
 * closed when the server speaks or closes, or when the pool is full. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "proxy/upstream.h"
#include "proxy_harness.h"

struct t {
        struct harness h;
        int lfd;
        struct sockaddr_storage app_addr;
        int app[4]; /* the application's ends, as accepted */
        int n_app;
        int ready, failed;
};

static void on_event(struct upstream *u, enum upstream_event ev, void *owner)
{
        (void)u;
        struct t *t = owner;
        if (ev == UPSTREAM_READY)
                t->ready++;
        else if (ev == UPSTREAM_FAILED)
                t->failed++;
}

static int setup(void **state)
{
        struct t *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        harness_init(&t->h);
        t->lfd = app_listen(&t->app_addr);
        *state = t;
        return 0;
}

static int teardown(void **state)
{
        struct t *t = *state;
        harness_free(&t->h);
        for (int i = 0; i < t->n_app; i++)
                close(t->app[i]);
        close(t->lfd);
        free(t);
        return 0;
}

static bool ready_or_failed(void *arg)
{
        struct t *t = arg;
        int fd = accept4(t->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0 && t->n_app < 4)
                t->app[t->n_app++] = fd;
        else if (fd >= 0)
                close(fd);
        return t->ready + t->failed > 0;
}

/* A connection for the test as owner: pooled (ready at once) or new. */
static struct upstream *get(struct t *t, const struct sockaddr_storage *addr)
{
        int err = 0;
        const char *what = "";
        t->ready = t->failed = 0;
        struct upstream *u = upstream_get(t->h.w, addr, "", false, 1, on_event, t, &err, &what);
        assert_non_null(u);
        if (u->state != UPSTREAM_OPEN)
                run_until(&t->h, ready_or_failed, t, "connected or failed");
        return u;
}

static uint64_t idle(struct t *t)
{
        return harness_stat(&t->h, ST_UPSTREAM_IDLE);
}

static bool pool_empty(void *arg)
{
        return idle(arg) == 0;
}

static void test_transition_table(void **state)
{
        (void)state;
        assert_true(upstream_transition_ok(UPSTREAM_CONNECTING, UPSTREAM_OPEN));
        assert_true(upstream_transition_ok(UPSTREAM_CONNECTING, UPSTREAM_HANDSHAKE));
        assert_true(upstream_transition_ok(UPSTREAM_HANDSHAKE, UPSTREAM_OPEN));
        assert_true(upstream_transition_ok(UPSTREAM_OPEN, UPSTREAM_DEAD));
        assert_true(upstream_transition_ok(UPSTREAM_DEAD, UPSTREAM_DEAD));
        assert_false(upstream_transition_ok(UPSTREAM_OPEN, UPSTREAM_CONNECTING));
        assert_false(upstream_transition_ok(UPSTREAM_OPEN, UPSTREAM_HANDSHAKE));
        assert_false(upstream_transition_ok(UPSTREAM_HANDSHAKE, UPSTREAM_CONNECTING));
        assert_false(upstream_transition_ok(UPSTREAM_DEAD, UPSTREAM_OPEN));
        assert_false(upstream_transition_ok(UPSTREAM__COUNT, UPSTREAM_DEAD));
}

/* CONNECTING -> OPEN, back to the pool, taken again: the same connection. */
static void test_reuse(void **state)
{
        struct t *t = *state;
        struct upstream *u = get(t, &t->app_addr);
        assert_int_equal(t->ready, 1);
        assert_int_equal(u->state, UPSTREAM_OPEN);
        assert_false(u->reused);
        upstream_put(u, true);
        assert_int_equal(idle(t), 1);
        struct upstream *v = get(t, &t->app_addr);
        assert_int_equal(v->state, UPSTREAM_OPEN);
        assert_true(v->reused);
        assert_int_equal(idle(t), 0);
        assert_int_equal(t->n_app, 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_OPENED), 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_REUSED), 1);
        /* Not reusable (an exchange cut short): closed, not pooled. */
        upstream_put(v, false);
        assert_int_equal(idle(t), 0);
}

/* Nothing listens: CONNECTING -> DEAD, FAILED to the owner (or, when
 * connect() itself says so, no connection at all). */
static void test_connect_refused(void **state)
{
        struct t *t = *state;
        struct sockaddr_storage dead;
        dead_port(&dead);
        int err = 0;
        const char *what = "";
        struct upstream *u = upstream_get(t->h.w, &dead, "", false, 1, on_event, t, &err, &what);
        if (!u) {
                /* Refused at once by connect(): said so, nothing to fail later. */
                assert_int_equal(err, -ECONNREFUSED);
                assert_string_equal(what, "connect");
                return;
        }
        if (u->state != UPSTREAM_DEAD)
                run_until(&t->h, ready_or_failed, t, "the failure");
        assert_int_equal(t->failed, 1);
        assert_int_equal(u->state, UPSTREAM_DEAD);
        upstream_put(u, true); /* dead: closed, whatever the owner says */
        assert_int_equal(idle(t), 0);
}

/* An idle connection the server closes leaves the pool at once; the next
 * request gets a new one. */
static void test_peer_closes_idle(void **state)
{
        struct t *t = *state;
        upstream_put(get(t, &t->app_addr), true);
        assert_int_equal(idle(t), 1);
        close(t->app[0]);
        t->app[0] = t->app[--t->n_app];
        run_until(&t->h, pool_empty, t, "the closed connection out of the pool");
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_IDLE_PEER), 1);
        struct upstream *u = get(t, &t->app_addr);
        assert_false(u->reused);
        upstream_put(u, false);
}

/* http.upstream_idle_timeout: an unused connection is closed. */
static void test_idle_expiry(void **state)
{
        struct t *t = *state;
        t->h.cfg->http_upstream_idle_timeout_ms = 10;
        upstream_put(get(t, &t->app_addr), true);
        run_until(&t->h, pool_empty, t, "the idle connection expired");
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_IDLE_EXPIRED), 1);
}

/* http.upstream_max_idle per endpoint: one more is closed, counted. */
static void test_pool_full(void **state)
{
        struct t *t = *state;
        t->h.cfg->http_upstream_max_idle = 1;
        struct upstream *a = get(t, &t->app_addr);
        struct upstream *b = get(t, &t->app_addr);
        upstream_put(a, true);
        upstream_put(b, true);
        assert_int_equal(idle(t), 1);
        assert_int_equal(harness_stat(&t->h, ST_UPSTREAM_POOL_FULL), 1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_transition_table),
            cmocka_unit_test_setup_teardown(test_reuse, setup, teardown),
            cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_peer_closes_idle, setup, teardown),
            cmocka_unit_test_setup_teardown(test_idle_expiry, setup, teardown),
            cmocka_unit_test_setup_teardown(test_pool_full, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

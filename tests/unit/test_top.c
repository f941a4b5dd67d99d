// SPDX-License-Identifier: Apache-2.0
/* shuntctl top's arithmetic (admin/top.h): the text-format line parser,
 * histogram_quantile as Prometheus computes it, and rates, success rate and
 * quantiles from two scrapes (counter resets included). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/top.h"

#define EPS 1e-9

static void test_parse_line(void **state)
{
        struct top_sample *s = malloc(sizeof(*s));
        const char *l = "shunt_requests_total{direction=\"outbound\",destination_service=\"a\\\"b"
                        "\\\\c\\n\",le=\"+Inf\",} 12.5 1700000000";
        assert_int_equal(top_parse_line(l, strlen(l), s), 1);
        assert_string_equal(s->name, "shunt_requests_total");
        assert_int_equal(s->n_labels, 3);
        assert_string_equal(top_label(s, "direction"), "outbound");
        assert_string_equal(top_label(s, "destination_service"), "a\"b\\c\n");
        assert_string_equal(top_label(s, "le"), "+Inf");
        assert_null(top_label(s, "nope"));
        assert_true(fabs(s->value - 12.5) < EPS);

        l = "process_open_fds 7";
        assert_int_equal(top_parse_line(l, strlen(l), s), 1);
        assert_int_equal(s->n_labels, 0);
        assert_true(fabs(s->value - 7) < EPS);
        l = "x{} +Inf";
        assert_int_equal(top_parse_line(l, strlen(l), s), 1);
        assert_true(isinf(s->value));

        assert_int_equal(top_parse_line("# HELP x y", 10, s), 0);
        assert_int_equal(top_parse_line("", 0, s), 0);
        const char *bad[] = {"x{a=\"1\" 3", "x{a=1} 3",       "x 3z",       "x",
                             "9x 1",        "x{a=\"\\q\"} 1", "x{a=\"1\"}3"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                assert_int_equal(top_parse_line(bad[i], strlen(bad[i]), s), -1);
        free(s);
}

static void test_quantile(void **state)
{
        const double le[] = {0.1, 0.5, 1, INFINITY};
        const double cum[] = {10, 20, 30, 40};
        /* rank 20 ends the second bucket exactly */
        assert_true(fabs(top_histogram_quantile(0.5, le, cum, 4) - 0.5) < EPS);
        /* rank 10: the first bucket from 0 */
        assert_true(fabs(top_histogram_quantile(0.25, le, cum, 4) - 0.1) < EPS);
        /* rank 24: 0.5 + 0.5 * 4/10 */
        assert_true(fabs(top_histogram_quantile(0.6, le, cum, 4) - 0.7) < EPS);
        /* rank 5: 0 + 0.1 * 5/10 */
        assert_true(fabs(top_histogram_quantile(0.125, le, cum, 4) - 0.05) < EPS);
        /* rank in the +Inf bucket: the highest finite bound */
        assert_true(fabs(top_histogram_quantile(0.99, le, cum, 4) - 1) < EPS);
        assert_true(fabs(top_histogram_quantile(1, le, cum, 4) - 1) < EPS);
        assert_true(fabs(top_histogram_quantile(0, le, cum, 4) - 0) < EPS);
        assert_true(isinf(top_histogram_quantile(-0.1, le, cum, 4)) &&
                    top_histogram_quantile(-0.1, le, cum, 4) < 0);
        assert_true(isinf(top_histogram_quantile(1.1, le, cum, 4)) &&
                    top_histogram_quantile(1.1, le, cum, 4) > 0);

        const double zero[] = {0, 0, 0, 0};
        assert_true(isnan(top_histogram_quantile(0.5, le, zero, 4)));
        const double no_inf[] = {0.1, 0.5, 1, 2};
        assert_true(isnan(top_histogram_quantile(0.5, no_inf, cum, 4)));
        assert_true(isnan(top_histogram_quantile(0.5, le + 3, cum + 3, 1)));
        /* a count going down across buckets is raised to the one before */
        const double dip[] = {10, 8, 20, 20};
        assert_true(fabs(top_histogram_quantile(0.5, le, dip, 4) - 0.1) < EPS);
        /* all in one middle bucket: interpolated inside it */
        const double mid[] = {0, 100, 100, 100};
        assert_true(fabs(top_histogram_quantile(0.99, le, mid, 4) - (0.1 + 0.4 * 0.99)) < EPS);
        /* a first bucket whose bound is not positive is its bound */
        const double neg_le[] = {-1, 1, INFINITY};
        const double neg_cum[] = {5, 10, 10};
        assert_true(fabs(top_histogram_quantile(0.2, neg_le, neg_cum, 3) - -1) < EPS);
}

static void test_counter_delta(void **state)
{
        assert_true(fabs(top_counter_delta(10, 25) - 15) < EPS);
        assert_true(fabs(top_counter_delta(10, 10) - 0) < EPS);
        assert_true(fabs(top_counter_delta(100, 7) - 7) < EPS); /* reset */
}

static const char scrape1[] =
    "# HELP shunt_requests_total x\n"
    "# TYPE shunt_requests_total counter\n"
    "shunt_requests_total{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code=\"200\",response_code_class=\"2xx\"} 100\n"
    "shunt_requests_total{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code=\"503\",response_code_class=\"5xx\"} 10\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"0.1\"} 50\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"0.5\"} 100\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"+Inf\"} 100\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"0.1\"} 10\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"0.5\"} 10\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"+Inf\"} 10\n"
    "shunt_tcp_received_bytes_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 1000\n"
    "shunt_tcp_sent_bytes_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 500\n"
    "shunt_tcp_connections_opened_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 5\n"
    "shunt_tcp_connections_closed_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 3\n"
    "shunt_endpoint_active{service=\"shop/cart:80\",endpoint=\"10.0.0.1:80\"} 2\n"
    "shunt_endpoint_active{service=\"shop/cart:80\",endpoint=\"10.0.0.2:80\"} 1\n"
    "this line is broken\n";

/* 2 s later: cart got 100 more 2xx (40 under 0.1 s,
 * 60 between 0.1 and 0.5 s) and 10 more 5xx under 0.1 s; db moved 3000 bytes. */
static const char scrape2[] =
    "shunt_requests_total{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code=\"200\",response_code_class=\"2xx\"} 200\n"
    "shunt_requests_total{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code=\"503\",response_code_class=\"5xx\"} 20\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"0.1\"} 90\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"0.5\"} 200\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"2xx\",le=\"+Inf\"} 200\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"0.1\"} 20\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"0.5\"} 20\n"
    "shunt_request_duration_seconds_bucket{direction=\"outbound\",destination_namespace=\"shop\","
    "destination_service=\"cart\",response_code_class=\"5xx\",le=\"+Inf\"} 20\n"
    "shunt_tcp_received_bytes_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 3000\n"
    "shunt_tcp_sent_bytes_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 1500\n"
    "shunt_tcp_connections_opened_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 6\n"
    "shunt_tcp_connections_closed_total{direction=\"inbound\",destination_namespace=\"shop\","
    "destination_service=\"db\"} 3\n"
    "shunt_endpoint_active{service=\"shop/cart:80\",endpoint=\"10.0.0.1:80\"} 4\n";

static const struct top_view *view(const struct top_view *v, int n, const char *dir,
                                   const char *svc)
{
        for (int i = 0; i < n; i++)
                if (strcmp(v[i].direction, dir) == 0 && strcmp(v[i].service, svc) == 0)
                        return &v[i];
        fail_msg("no row %s %s", dir, svc);
        return NULL;
}

static void test_rates(void **state)
{
        struct top_scrape a, b;
        assert_int_equal(top_scrape_parse(scrape1, strlen(scrape1), &a), 0);
        assert_int_equal(top_scrape_parse(scrape2, strlen(scrape2), &b), 0);
        assert_int_equal(a.bad_lines, 1);
        assert_int_equal(a.n_rows, 2);
        struct top_view *v;
        int n = top_compute(&a, &b, 2.0, TOP_SORT_RPS, &v);
        assert_int_equal(n, 2);
        const struct top_view *cart = view(v, n, "outbound", "shop/cart");
        assert_ptr_equal(cart, &v[0]);                        /* busiest first */
        assert_true(fabs(cart->rps - 55) < EPS);              /* 110 in 2 s */
        assert_true(fabs(cart->success - 100.0 / 110) < EPS); /* 10 of 110 were 5xx */
        /* window: 50 under 0.1 s (40 + 10), 60 in (0.1, 0.5]: p50 rank 55 */
        assert_true(fabs(cart->p50 - (0.1 + 0.4 * 5.0 / 60)) < EPS);
        assert_true(fabs(cart->p99 - (0.1 + 0.4 * (108.9 - 50) / 60)) < EPS);
        assert_true(fabs(cart->active - 4) < EPS);
        assert_true(fabs(cart->bytes_per_s) < EPS);
        const struct top_view *db = view(v, n, "inbound", "shop/db");
        assert_true(fabs(db->bytes_per_s - 1500) < EPS); /* 3000 more in 2 s */
        assert_true(fabs(db->active - 3) < EPS);
        assert_true(fabs(db->rps) < EPS);
        assert_true(isnan(db->success) && isnan(db->p50) && isnan(db->p99));
        free(v);

        /* sorted by success: the worst first, rows without requests last */
        n = top_compute(&a, &b, 2.0, TOP_SORT_SUCCESS, &v);
        assert_string_equal(v[0].service, "shop/cart");
        assert_string_equal(v[1].service, "shop/db");
        free(v);
        n = top_compute(&a, &b, 2.0, TOP_SORT_NAME, &v);
        assert_string_equal(v[0].service, "shop/cart");
        free(v);

        /* no earlier scrape: everything since shuntd started */
        n = top_compute(NULL, &a, 10.0, TOP_SORT_RPS, &v);
        cart = view(v, n, "outbound", "shop/cart");
        assert_true(fabs(cart->rps - 11) < EPS);
        free(v);

        /* counters went down (shuntd restarted): the new values are the window */
        n = top_compute(&b, &a, 1.0, TOP_SORT_RPS, &v);
        cart = view(v, n, "outbound", "shop/cart");
        assert_true(fabs(cart->rps - 110) < EPS);
        assert_true(fabs(cart->success - 100.0 / 110) < EPS);
        assert_true(fabs(cart->p50 - (0.1 * 55 / 60)) < EPS);
        free(v);

        assert_int_equal(top_compute(&a, &b, 0, TOP_SORT_RPS, &v), -EINVAL);
        assert_int_equal(top_sort_parse("p99"), TOP_SORT_P99);
        assert_int_equal(top_sort_parse("name"), TOP_SORT_NAME);
        assert_int_equal(top_sort_parse("rate"), -1);
        top_scrape_free(&a);
        top_scrape_free(&b);
}

static void test_row_bound(void **state)
{
        /* more destinations than TOP_MAX_ROWS: the rest counted, not grown */
        size_t cap = (TOP_MAX_ROWS + 10) * 120;
        char *text = malloc(cap);
        size_t off = 0;
        for (int i = 0; i < TOP_MAX_ROWS + 10; i++)
                off += (size_t)snprintf(text + off, cap - off,
                                        "shunt_requests_total{direction=\"outbound\","
                                        "destination_namespace=\"n\",destination_service=\"s%d\"} "
                                        "1\n",
                                        i);
        struct top_scrape s;
        assert_int_equal(top_scrape_parse(text, off, &s), 0);
        assert_int_equal(s.n_rows, TOP_MAX_ROWS);
        assert_int_equal(s.dropped_rows, 10);
        top_scrape_free(&s);
        free(text);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_line),    cmocka_unit_test(test_quantile),
            cmocka_unit_test(test_counter_delta), cmocka_unit_test(test_rates),
            cmocka_unit_test(test_row_bound),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

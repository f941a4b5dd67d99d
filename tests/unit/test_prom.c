// SPDX-License-Identifier: Apache-2.0
/* Prometheus text writer: name validation, escaping, value formatting, and a
 * complete exposition checked by the real promtool (missing promtool fails
 * the test, see require.h). */
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
#include <sys/wait.h>
#include <unistd.h>

#include "core/prom.h"
#include "require.h"

static void test_names(void **state)
{
        assert_true(prom_name_valid("shunt_connections_total"));
        assert_true(prom_name_valid("_x"));
        assert_true(prom_name_valid(":ns:metric"));
        assert_true(prom_name_valid("a1_b2:c3"));
        assert_false(prom_name_valid(""));
        assert_false(prom_name_valid(NULL));
        assert_false(prom_name_valid("1abc"));
        assert_false(prom_name_valid("a-b"));
        assert_false(prom_name_valid("a b"));
        assert_false(prom_name_valid("a.b"));
        assert_false(prom_name_valid("métrique"));

        assert_true(prom_label_name_valid("proto"));
        assert_true(prom_label_name_valid("_p1"));
        assert_false(prom_label_name_valid("__name__"));
        assert_false(prom_label_name_valid("a:b"));
        assert_false(prom_label_name_valid("9a"));
        assert_false(prom_label_name_valid(""));
}

static void test_family_validation(void **state)
{
        struct strbuf sb;
        strbuf_init(&sb);
        assert_int_equal(prom_family(&sb, "shunt_conns", "counter", "x"), -EINVAL);
        assert_int_equal(prom_family(&sb, "shunt-conns_total", "counter", "x"), -EINVAL);
        assert_int_equal(prom_family(&sb, "shunt_conns", "histogram", "x"), -EINVAL);
        assert_int_equal(prom_family(&sb, "shunt_conns", NULL, "x"), -EINVAL);
        assert_int_equal(prom_sample_u64(&sb, "bad name", NULL, 1), -EINVAL);
        assert_int_equal(prom_sample(&sb, "ok", "a=\"1\"\nb=\"2\"", 1), -EINVAL);
        assert_int_equal(sb.len, 0); /* nothing written on error */

        assert_int_equal(prom_family(&sb, "shunt_conns_total", "counter", "Conns.\nMore \\ text"),
                         0);
        assert_string_equal(sb.data, "# HELP shunt_conns_total Conns.\\nMore \\\\ text\n"
                                     "# TYPE shunt_conns_total counter\n");
        strbuf_reset(&sb);
        assert_int_equal(prom_family(&sb, "shunt_active", "gauge", NULL), 0);
        assert_string_equal(sb.data, "# TYPE shunt_active gauge\n");
        strbuf_free(&sb);
}

static void test_escape(void **state)
{
        struct strbuf sb;
        strbuf_init(&sb);
        prom_label_escape(&sb, "a\\b\"c\nd");
        assert_string_equal(sb.data, "a\\\\b\\\"c\\nd");
        strbuf_reset(&sb);
        prom_label_escape(&sb, "plain");
        assert_string_equal(sb.data, "plain");
        strbuf_reset(&sb);
        prom_label_escape(&sb, "");
        assert_int_equal(sb.len, 0);

        struct strbuf labels;
        strbuf_init(&labels);
        assert_int_equal(prom_label(&labels, "proto", "http1"), 0);
        assert_int_equal(prom_label(&labels, "reason", "say \"hi\"\\"), 0);
        assert_int_equal(prom_label(&labels, "__bad", "x"), -EINVAL);
        assert_string_equal(labels.data, "proto=\"http1\",reason=\"say \\\"hi\\\"\\\\\"");
        strbuf_free(&labels);
        strbuf_free(&sb);
}

static void test_values(void **state)
{
        struct strbuf sb;
        strbuf_init(&sb);
        prom_sample_u64(&sb, "m", NULL, UINT64_MAX);
        prom_sample_u64(&sb, "m", "", 0);
        prom_sample_u64(&sb, "m", "a=\"b\"", 7);
        prom_sample(&sb, "g", NULL, 0.1);
        prom_sample(&sb, "g", NULL, -2.5);
        prom_sample(&sb, "g", NULL, 1e300);
        prom_sample(&sb, "g", NULL, NAN);
        prom_sample(&sb, "g", NULL, INFINITY);
        prom_sample(&sb, "g", NULL, -INFINITY);
        prom_sample(&sb, "g", NULL, 1.0 / 3.0);
        assert_string_equal(sb.data, "m 18446744073709551615\n"
                                     "m 0\n"
                                     "m{a=\"b\"} 7\n"
                                     "g 0.1\n"
                                     "g -2.5\n"
                                     "g 1e+300\n"
                                     "g NaN\n"
                                     "g +Inf\n"
                                     "g -Inf\n"
                                     "g 0.3333333333333333\n");
        strbuf_free(&sb);
}

/* Runs promtool check metrics on text; returns its exit status. Its output
 * goes to out. */
static int promtool_check(const char *text, char *out, size_t outlen)
{
        char path[] = "/tmp/shunt-prom-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        size_t len = strlen(text);
        assert_int_equal(write(fd, text, len), (ssize_t)len);
        close(fd);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t n = fread(out, 1, outlen - 1, p);
        out[n] = '\0';
        int st = pclose(p);
        unlink(path);
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_promtool(void **state)
{
        struct strbuf sb, labels;
        strbuf_init(&sb);
        strbuf_init(&labels);
        require_tool("promtool", "prometheus");

        assert_int_equal(prom_family(&sb, "shunt_connections_accepted_total", "counter",
                                     "Connections accepted by the listeners."),
                         0);
        assert_int_equal(
            prom_sample_u64(&sb, "shunt_connections_accepted_total", "listener=\"inbound\"", 12),
            0);
        assert_int_equal(prom_sample_u64(&sb, "shunt_connections_accepted_total",
                                         "listener=\"outbound\"", 3456789),
                         0);
        assert_int_equal(
            prom_family(&sb, "shunt_connections_active", "gauge", "Connections being relayed now."),
            0);
        assert_int_equal(prom_sample_u64(&sb, "shunt_connections_active", NULL, 4), 0);
        assert_int_equal(prom_family(&sb, "shunt_connection_errors_total", "counter",
                                     "Connections that failed, by reason (with \\ and\nnewline)."),
                         0);
        /* Label values with every character that needs escaping, and UTF-8. */
        const char *reasons[] = {"connect \"refused\"", "back\\slash", "multi\nline", "héllo ✓"};
        for (size_t i = 0; i < 4; i++) {
                strbuf_reset(&labels);
                assert_int_equal(prom_label(&labels, "reason", reasons[i]), 0);
                assert_int_equal(prom_label(&labels, "proto", "http1"), 0);
                assert_int_equal(
                    prom_sample_u64(&sb, "shunt_connection_errors_total", labels.data, i + 1), 0);
        }
        assert_int_equal(prom_family(&sb, "shunt_uptime_seconds", "gauge", "Seconds since start."),
                         0);
        assert_int_equal(prom_sample(&sb, "shunt_uptime_seconds", NULL, 12.75), 0);
        assert_int_equal(prom_family(&sb, "shunt_ratio", "gauge", "Special values."), 0);
        assert_int_equal(prom_sample(&sb, "shunt_ratio", "k=\"nan\"", NAN), 0);
        assert_int_equal(prom_sample(&sb, "shunt_ratio", "k=\"inf\"", INFINITY), 0);
        assert_false(sb.truncated);

        char out[4096];
        int rc = promtool_check(sb.data, out, sizeof(out));
        if (rc != 0)
                fail_msg("promtool rejected the exposition (exit %d):\n%s\n---\n%s", rc, out,
                         sb.data);

        /* The check can fail: promtool rejects a broken label escape and a
         * counter without the _total suffix, which prom_family refuses. */
        rc = promtool_check("# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"b\\\"} 1\n",
                            out, sizeof(out));
        assert_int_not_equal(rc, 0);
        rc = promtool_check("# HELP shunt_things Things.\n# TYPE shunt_things counter\n"
                            "shunt_things 1\n",
                            out, sizeof(out));
        assert_int_not_equal(rc, 0);
        strbuf_free(&sb);
        strbuf_free(&labels);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names),    cmocka_unit_test(test_family_validation),
            cmocka_unit_test(test_escape),   cmocka_unit_test(test_values),
            cmocka_unit_test(test_promtool),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

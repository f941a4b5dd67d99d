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
#include <pthread.h>
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
        assert_int_equal(prom_family(&sb, "shunt_conns", "summary", "x"), -EINVAL);
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

static void test_buckets(void **state)
{
        struct prom_buckets b;
        const char *why = NULL;
        assert_int_equal(prom_buckets_parse(PROM_DEFAULT_BUCKETS, &b, &why), 0);
        assert_int_equal(b.n, 14);
        assert_int_equal(b.le_ns[0], 500000);
        assert_int_equal(b.le_ns[13], 10000000000ull);
        const char *bad[] = {"",   "0",    "-1",  "1,1", "2,1",   "0.1,,1", "1,",   "abc",
                             "1s", "3601", "nan", "inf", "1e-10", "0.1, 1", " 0.1", "0x10,0x20"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                why = NULL;
                struct prom_buckets keep = b;
                assert_int_equal(prom_buckets_parse(bad[i], &b, &why), -EINVAL);
                assert_non_null(why);
                assert_memory_equal(&keep, &b, sizeof(b)); /* untouched on error */
        }
        char many[512] = "";
        for (int i = 1; i <= 33; i++)
                snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s%d", i > 1 ? "," : "",
                         i);
        assert_int_equal(prom_buckets_parse(many, &b, &why), -EINVAL);
        many[strrchr(many, ',') - many] = '\0'; /* 32 bounds */
        assert_int_equal(prom_buckets_parse(many, &b, &why), 0);
        assert_int_equal(b.n, 32);

        /* Upper bounds are inclusive (le). */
        assert_int_equal(prom_buckets_parse("0.001,0.01,1", &b, NULL), 0);
        assert_int_equal(prom_bucket_index(&b, 0), 0);
        assert_int_equal(prom_bucket_index(&b, 1000000), 0);
        assert_int_equal(prom_bucket_index(&b, 1000001), 1);
        assert_int_equal(prom_bucket_index(&b, 10000000), 1);
        assert_int_equal(prom_bucket_index(&b, 999999999), 2);
        assert_int_equal(prom_bucket_index(&b, 1000000000), 2);
        assert_int_equal(prom_bucket_index(&b, 1000000001), 3); /* +Inf */
        assert_int_equal(prom_bucket_index(&b, UINT64_MAX), 3);
}

static void test_histogram(void **state)
{
        struct prom_buckets b;
        assert_int_equal(prom_buckets_parse("0.0005,0.01,2.5", &b, NULL), 0);
        _Atomic uint64_t cells[PROM_HIST_CELLS(&b)];
        for (size_t i = 0; i < PROM_HIST_CELLS(&b); i++)
                atomic_init(&cells[i], 0);
        uint64_t obs[] = {100000, 500000, 600000, 9000000, 3000000000ull, 1000000};
        for (size_t i = 0; i < sizeof(obs) / sizeof(obs[0]); i++)
                prom_hist_observe(cells, &b, obs[i]);
        uint64_t merged[PROM_HIST_CELLS(&b)];
        for (size_t i = 0; i < PROM_HIST_CELLS(&b); i++)
                merged[i] = atomic_load(&cells[i]);
        struct strbuf sb;
        strbuf_init(&sb);
        assert_int_equal(prom_family(&sb, "shunt_x_seconds", "histogram", "X."), 0);
        assert_int_equal(prom_hist_render(&sb, "shunt_x_seconds", "a=\"1\"", &b, merged), 0);
        assert_int_equal(prom_hist_render(&sb, "shunt_x_seconds", NULL, &b, merged), 0);
        assert_string_equal(sb.data, "# HELP shunt_x_seconds X.\n"
                                     "# TYPE shunt_x_seconds histogram\n"
                                     "shunt_x_seconds_bucket{a=\"1\",le=\"0.0005\"} 2\n"
                                     "shunt_x_seconds_bucket{a=\"1\",le=\"0.01\"} 5\n"
                                     "shunt_x_seconds_bucket{a=\"1\",le=\"2.5\"} 5\n"
                                     "shunt_x_seconds_bucket{a=\"1\",le=\"+Inf\"} 6\n"
                                     "shunt_x_seconds_sum{a=\"1\"} 3.0112\n"
                                     "shunt_x_seconds_count{a=\"1\"} 6\n"
                                     "shunt_x_seconds_bucket{le=\"0.0005\"} 2\n"
                                     "shunt_x_seconds_bucket{le=\"0.01\"} 5\n"
                                     "shunt_x_seconds_bucket{le=\"2.5\"} 5\n"
                                     "shunt_x_seconds_bucket{le=\"+Inf\"} 6\n"
                                     "shunt_x_seconds_sum 3.0112\n"
                                     "shunt_x_seconds_count 6\n");
        assert_int_equal(prom_hist_render(&sb, "bad name", NULL, &b, merged), -EINVAL);
        require_tool("promtool", "prometheus");
        char out[4096];
        strbuf_reset(&sb);
        prom_family(&sb, "shunt_x_seconds", "histogram", "X.");
        prom_hist_render(&sb, "shunt_x_seconds", "a=\"1\"", &b, merged);
        int rc = promtool_check(sb.data, out, sizeof(out));
        if (rc != 0)
                fail_msg("promtool rejected the histogram (exit %d):\n%s\n---\n%s", rc, out,
                         sb.data);
        strbuf_free(&sb);
}

struct seen {
        int n;
        char labels[16][256];
        uint64_t first[16];
};

static void collect(void *ctx, const char *labels, const uint64_t *cells)
{
        struct seen *s = ctx;
        assert_true(s->n < 16);
        snprintf(s->labels[s->n], sizeof(s->labels[0]), "%s", labels);
        s->first[s->n++] = cells[0];
}

static int seen_find(const struct seen *s, const char *labels)
{
        for (int i = 0; i < s->n; i++)
                if (!strcmp(s->labels[i], labels))
                        return i;
        return -1;
}

static void test_series_limit(void **state)
{
        const char *names[] = {"path", "code"};
        assert_null(prom_series_new(4, 2, (const char *[]){"ok", "le"}, 1, 1));
        assert_null(prom_series_new(4, 2, (const char *[]){"ok", "__x"}, 1, 1));
        assert_null(prom_series_new(0, 2, names, 1, 1));
        struct prom_series *s = prom_series_new(4, 2, names, 2, 2);
        assert_non_null(s);
        /* The same label set gets the same cells; shards have their own. */
        _Atomic uint64_t *a = prom_series_cells(s, 0, (const char *[]){"/a", "200"});
        assert_ptr_equal(a, prom_series_cells(s, 0, (const char *[]){"/a", "200"}));
        _Atomic uint64_t *a1 = prom_series_cells(s, 1, (const char *[]){"/a", "200"});
        assert_ptr_not_equal(a, a1);
        atomic_store(&a[0], 3);
        atomic_store(&a1[0], 4);
        /* Escaped values are part of the key. */
        atomic_store(&prom_series_cells(s, 1, (const char *[]){"q\"\\\n", "500"})[0], 1);
        assert_int_equal(prom_series_count(s), 2);
        /* 10,000 distinct label sets: four series at most, the rest in one
         * overflow series, each update counted. */
        for (int i = 0; i < 10000; i++) {
                char path[32];
                snprintf(path, sizeof(path), "/p%d", i);
                _Atomic uint64_t *c =
                    prom_series_cells(s, (uint32_t)(i & 1), (const char *[]){path, "200"});
                atomic_store(&c[0], atomic_load(&c[0]) + 1);
        }
        assert_int_equal(prom_series_count(s), 4);
        assert_int_equal(prom_series_overflows(s), 10000 - 2);
        /* A value too long for a key goes to the overflow series too. */
        char *huge = malloc(8192);
        memset(huge, 'x', 8191);
        huge[8191] = '\0';
        prom_series_cells(s, 0, (const char *[]){huge, "200"});
        free(huge);
        assert_int_equal(prom_series_overflows(s), 10000 - 1);

        struct seen seen = {0};
        prom_series_foreach(s, collect, &seen);
        assert_int_equal(seen.n, 5);
        int i = seen_find(&seen, "path=\"/a\",code=\"200\"");
        assert_true(i >= 0);
        assert_int_equal(seen.first[i], 7); /* 3 + 4 over the two shards */
        assert_true(seen_find(&seen, "path=\"q\\\"\\\\\\n\",code=\"500\"") >= 0);
        assert_true(seen_find(&seen, "path=\"/p0\",code=\"200\"") >= 0);
        assert_true(seen_find(&seen, "path=\"/p1\",code=\"200\"") >= 0);
        i = seen_find(&seen, "path=\"other\",code=\"other\"");
        assert_true(i >= 0);
        assert_int_equal(seen.first[i], 10000 - 2);
        /* Existing label sets still find their own series when full. */
        assert_ptr_equal(a, prom_series_cells(s, 0, (const char *[]){"/a", "200"}));
        prom_series_free(s);
        prom_series_free(NULL);
}

#define RACE_THREADS 4
#define RACE_KEYS    300
#define RACE_ROUNDS  20

struct race {
        struct prom_series *s;
        uint32_t shard;
};

static void *race_thread(void *arg)
{
        struct race *r = arg;
        for (int round = 0; round < RACE_ROUNDS; round++)
                for (int k = 0; k < RACE_KEYS; k++) {
                        char key[16];
                        snprintf(key, sizeof(key), "k%d", (k * 7 + (int)r->shard * 13) % RACE_KEYS);
                        _Atomic uint64_t *c =
                            prom_series_cells(r->s, r->shard, (const char *[]){key});
                        atomic_store_explicit(&c[0],
                                              atomic_load_explicit(&c[0], memory_order_relaxed) + 1,
                                              memory_order_relaxed);
                }
        return NULL;
}

struct race_sum {
        int n;
        uint64_t total;
        char keys[RACE_KEYS + 1][16];
};

static void race_collect(void *ctx, const char *labels, const uint64_t *cells)
{
        struct race_sum *rs = ctx;
        for (int i = 0; i < rs->n; i++)
                assert_string_not_equal(rs->keys[i], labels); /* no label set twice */
        assert_true(rs->n <= RACE_KEYS);
        snprintf(rs->keys[rs->n++], sizeof(rs->keys[0]), "%s", labels);
        rs->total += cells[0];
}

/* Threads creating the same label sets at once: no duplicate series, the
 * limit holds, and no update is lost (each shard has one writer). */
static void test_series_race(void **state)
{
        struct prom_series *s = prom_series_new(200, 1, (const char *[]){"k"}, 1, RACE_THREADS);
        assert_non_null(s);
        pthread_t t[RACE_THREADS];
        struct race r[RACE_THREADS];
        for (uint32_t i = 0; i < RACE_THREADS; i++) {
                r[i] = (struct race){s, i};
                assert_int_equal(pthread_create(&t[i], NULL, race_thread, &r[i]), 0);
        }
        for (int i = 0; i < RACE_THREADS; i++)
                pthread_join(t[i], NULL);
        struct race_sum rs = {0};
        prom_series_foreach(s, race_collect, &rs);
        assert_int_equal(prom_series_count(s), 200);
        assert_int_equal(rs.n, 201); /* the limit and the overflow series */
        assert_int_equal(rs.total, (uint64_t)RACE_THREADS * RACE_KEYS * RACE_ROUNDS);
        assert_true(prom_series_overflows(s) > 0);
        prom_series_free(s);
}

static void test_process(void **state)
{
        struct strbuf sb;
        strbuf_init(&sb);
        prom_process_render(&sb);
        const char *names[] = {"process_cpu_seconds_total",
                               "process_resident_memory_bytes",
                               "process_virtual_memory_bytes",
                               "process_open_fds",
                               "process_max_fds",
                               "process_start_time_seconds"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                char line[128];
                snprintf(line, sizeof(line), "\n%s ", names[i]);
                assert_non_null(strstr(sb.data, line));
        }
        double rss = strtod(strstr(sb.data, "\nprocess_resident_memory_bytes ") + 31, NULL);
        assert_true(rss > 4096);
        double start = strtod(strstr(sb.data, "\nprocess_start_time_seconds ") + 28, NULL);
        assert_true(start > 1.6e9);
        require_tool("promtool", "prometheus");
        char out[4096];
        int rc = promtool_check(sb.data, out, sizeof(out));
        if (rc != 0)
                fail_msg("promtool rejected (exit %d):\n%s\n---\n%s", rc, out, sb.data);
        strbuf_free(&sb);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_names),       cmocka_unit_test(test_family_validation),
            cmocka_unit_test(test_escape),      cmocka_unit_test(test_values),
            cmocka_unit_test(test_promtool),    cmocka_unit_test(test_buckets),
            cmocka_unit_test(test_histogram),   cmocka_unit_test(test_series_limit),
            cmocka_unit_test(test_series_race), cmocka_unit_test(test_process),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* http/tracectx: W3C traceparent and B3 (single and multi) parsing and
 * formatting, malformed values included: a broken value is refused whole
 * and leaves the output untouched. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "http/tracectx.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static int tp(const char *s, struct trace_ctx *c)
{
        return trace_parse_traceparent(s, strlen(s), c);
}

static void test_traceparent_valid(void **state)
{
        (void)state;
        struct trace_ctx c;
        assert_int_equal(tp(TP, &c), 0);
        char hex[33];
        trace_hex(c.trace_id, 16, hex);
        assert_string_equal(hex, "4bf92f3577b34da6a3ce929d0e0e4736");
        trace_hex(c.span_id, 8, hex);
        assert_string_equal(hex, "00f067aa0ba902b7");
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        assert_int_equal(c.format, TRACE_FMT_W3C);
        assert_int_equal(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_NO);
        /* Other flag bits do not matter; whitespace around the value is not part of it. */
        assert_int_equal(tp(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03\t", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        /* A later version may carry more after a '-'. */
        assert_int_equal(tp("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", &c), 0);
        assert_int_equal(tp("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c), 0);
}

static void test_traceparent_malformed(void **state)
{
        (void)state;
        static const char *const bad[] = {
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",   /* short */
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* v00 longer */
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", /* no '-' after */
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version ff */
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace */
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero span */
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* upper case */
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  /* not hex */
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* separators */
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-3600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                struct trace_ctx c;
                memset(&c, 0x5a, sizeof(c));
                assert_int_equal(tp(bad[i], &c), -EINVAL);
                assert_int_equal(c.trace_id[0], 0x5a); /* untouched */
        }
}

static void test_traceparent_format(void **state)
{
        (void)state;
        struct trace_ctx c;
        assert_int_equal(tp(TP, &c), 0);
        uint8_t span[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        char out[TRACEPARENT_LEN + 1];
        assert_int_equal(trace_format_traceparent(c.trace_id, span, true, out), TRACEPARENT_LEN);
        assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
        trace_format_traceparent(c.trace_id, span, false, out);
        assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00");
        /* What it writes, it reads back. */
        struct trace_ctx d;
        assert_int_equal(tp(out, &d), 0);
        assert_memory_equal(d.trace_id, c.trace_id, 16);
        assert_memory_equal(d.span_id, span, 8);
        char b3[B3_SINGLE_MAX_LEN + 1];
        assert_int_equal(trace_format_b3(c.trace_id, span, true, b3), 51);
        assert_string_equal(b3, "4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-1");
        assert_int_equal(trace_parse_b3(b3, strlen(b3), &d), 0);
        assert_memory_equal(d.span_id, span, 8);
        assert_int_equal(d.sampled, TRACE_SAMPLE_YES);
}

static int b3(const char *s, struct trace_ctx *c)
{
        return trace_parse_b3(s, strlen(s), c);
}

static void test_b3_single(void **state)
{
        (void)state;
        struct trace_ctx c;
        char hex[33];
        assert_int_equal(
            b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", &c), 0);
        trace_hex(c.trace_id, 16, hex);
        assert_string_equal(hex, "80f198ee56343ba864fe8b2a57d3eff7");
        trace_hex(c.span_id, 8, hex);
        assert_string_equal(hex, "e457b5a2e4d86bd1");
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        assert_int_equal(c.format, TRACE_FMT_B3_SINGLE);
        /* 64-bit trace id: left-padded. */
        assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1", &c), 0);
        trace_hex(c.trace_id, 16, hex);
        assert_string_equal(hex, "000000000000000064fe8b2a57d3eff7");
        assert_int_equal(c.sampled, TRACE_SAMPLE_DEFER);
        assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_NO);
        assert_int_equal(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        /* A decision alone. */
        assert_int_equal(b3("0", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_NO);
        assert_true(trace_id_is_zero(c.trace_id, 16));
        assert_int_equal(b3("1", &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        static const char *const bad[] = {
            "",
            "2",
            "-",
            "64fe8b2a57d3eff7",
            "64fe8b2a57d3eff7-",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd",
            "64fe8b2a57d3ef-e457b5a2e4d86bd1",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "0000000000000000-e457b5a2e4d86bd1",
            "64fe8b2a57d3eff7-0000000000000000",
            "64fe8b2a57d3eff7-e457b5a2e4d86bdz",
            "64fe8b2a57d3eff7--1",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                memset(&c, 0x5a, sizeof(c));
                assert_int_equal(b3(bad[i], &c), -EINVAL);
                assert_int_equal(c.trace_id[0], 0x5a);
        }
}

#define S(x) x, strlen(x)

static void test_b3_multi(void **state)
{
        (void)state;
        struct trace_ctx c;
        assert_int_equal(trace_parse_b3_multi(NULL, 0, NULL, 0, NULL, 0, NULL, 0, &c), -ENOENT);
        assert_int_equal(trace_parse_b3_multi(S("463ac35c9f6413ad48485a3953bb6124"),
                                              S("a2fb4a1d1a96d312"), S("1"), NULL, 0, &c),
                         0);
        assert_int_equal(c.format, TRACE_FMT_B3_MULTI);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        char hex[33];
        trace_hex(c.span_id, 8, hex);
        assert_string_equal(hex, "a2fb4a1d1a96d312");
        assert_int_equal(trace_parse_b3_multi(S("463ac35c9f6413ad"), S("a2fb4a1d1a96d312"),
                                              S("false"), NULL, 0, &c),
                         0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_NO);
        /* Debug flag wins. */
        assert_int_equal(
            trace_parse_b3_multi(S("463ac35c9f6413ad"), S("a2fb4a1d1a96d312"), S("0"), S("1"), &c),
            0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        /* A decision without ids. */
        assert_int_equal(trace_parse_b3_multi(NULL, 0, NULL, 0, S("true"), NULL, 0, &c), 0);
        assert_int_equal(c.sampled, TRACE_SAMPLE_YES);
        assert_true(trace_id_is_zero(c.trace_id, 16));
        /* A trace id without a span id, bad hex, a bad decision. */
        assert_int_equal(trace_parse_b3_multi(S("463ac35c9f6413ad"), NULL, 0, S("1"), NULL, 0, &c),
                         -EINVAL);
        assert_int_equal(trace_parse_b3_multi(S("463ac35c9f6413ax"), S("a2fb4a1d1a96d312"), NULL, 0,
                                              NULL, 0, &c),
                         -EINVAL);
        assert_int_equal(trace_parse_b3_multi(S("463ac35c9f6413ad"), S("a2fb4a1d1a96d312"),
                                              S("yes"), NULL, 0, &c),
                         -EINVAL);
        assert_int_equal(trace_parse_b3_multi(NULL, 0, NULL, 0, NULL, 0, S("2"), &c), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_traceparent_valid),  cmocka_unit_test(test_traceparent_malformed),
            cmocka_unit_test(test_traceparent_format), cmocka_unit_test(test_b3_single),
            cmocka_unit_test(test_b3_multi),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

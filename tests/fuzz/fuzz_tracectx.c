// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for trace context parsing (http/tracectx.h).
 *
 * The input is a header value: traceparent, b3 and the multi-header form
 * (the input split in four at '\n') must not crash, and what any of them
 * accepts must hold: a W3C context has non-zero ids and a decision, and
 * formatting it gives a traceparent that parses back to the same ids. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/tracectx.h"

static void fail(const char *what)
{
        fprintf(stderr, "fuzz_tracectx: %s\n", what);
        abort();
}

static void roundtrip(const struct trace_ctx *c)
{
        char out[TRACEPARENT_LEN + 1];
        trace_format_traceparent(c->trace_id, c->span_id, c->sampled == TRACE_SAMPLE_YES, out);
        struct trace_ctx d;
        if (trace_parse_traceparent(out, strlen(out), &d) != 0)
                fail("own traceparent refused");
        if (memcmp(d.trace_id, c->trace_id, 16) || memcmp(d.span_id, c->span_id, 8))
                fail("traceparent round trip changed the ids");
        if ((d.sampled == TRACE_SAMPLE_YES) != (c->sampled == TRACE_SAMPLE_YES))
                fail("traceparent round trip changed the decision");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        const char *s = (const char *)data;
        struct trace_ctx c;
        if (trace_parse_traceparent(s, size, &c) == 0) {
                if (trace_id_is_zero(c.trace_id, 16) || trace_id_is_zero(c.span_id, 8))
                        fail("traceparent with a zero id accepted");
                if (c.sampled == TRACE_SAMPLE_DEFER)
                        fail("traceparent without a decision");
                roundtrip(&c);
        }
        if (trace_parse_b3(s, size, &c) == 0 && !trace_id_is_zero(c.trace_id, 16)) {
                if (trace_id_is_zero(c.span_id, 8))
                        fail("b3 with a zero span id accepted");
                roundtrip(&c);
        }
        const char *f[4] = {NULL, NULL, NULL, NULL};
        size_t fl[4] = {0, 0, 0, 0}, k = 0, start = 0;
        for (size_t i = 0; i <= size && k < 4; i++) {
                if (i == size || s[i] == '\n') {
                        if (i > start) {
                                f[k] = s + start;
                                fl[k] = i - start;
                        }
                        k++;
                        start = i + 1;
                }
        }
        if (trace_parse_b3_multi(f[0], fl[0], f[1], fl[1], f[2], fl[2], f[3], fl[3], &c) == 0 &&
            !trace_id_is_zero(c.trace_id, 16))
                roundtrip(&c);
        return 0;
}

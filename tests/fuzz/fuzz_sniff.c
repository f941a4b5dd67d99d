// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for protocol sniffing.
 *
 * Runs sniff() on the input and on its prefixes, with and without eof, and
 * checks what must hold for any bytes:
 *  - with eof (or at SNIFF_MAX_BYTES) the answer is final: SNIFF_DONE;
 *  - a result is one of the protocols, and its strings are NUL-terminated;
 *  - fields belong to their protocol (a method only for HTTP/1, ...);
 *  - a prefix that is decided without eof gives the same answer as the whole
 *    input with eof: more bytes never change a decision;
 *  - a prefix that is not decided is not decided by any shorter prefix. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "intercept/sniff.h"

static void fail(const char *what, size_t len, int eof)
{
        fprintf(stderr, "fuzz_sniff: %s (prefix %zu, eof %d)\n", what, len, eof);
        abort();
}

static void check_str(const char *s, size_t cap, const char *what, size_t len, int eof)
{
        if (!memchr(s, '\0', cap))
                fail(what, len, eof);
}

static void check(const struct sniff_result *r, size_t len, int eof)
{
        if (r->proto <= PROTO_UNKNOWN || r->proto >= PROTO__COUNT)
                fail("result is not a protocol", len, eof);
        check_str(r->http_method, sizeof(r->http_method), "http_method unterminated", len, eof);
        check_str(r->sni, sizeof(r->sni), "sni unterminated", len, eof);
        check_str(r->alpn, sizeof(r->alpn), "alpn unterminated", len, eof);
        check_str(r->grpc_content_type, sizeof(r->grpc_content_type),
                  "grpc_content_type unterminated", len, eof);
        if ((r->http_method[0] != '\0') != (r->proto == PROTO_HTTP1))
                fail("http_method set iff HTTP/1", len, eof);
        if (r->proto != PROTO_TLS && (r->sni[0] || r->alpn[0]))
                fail("sni/alpn outside TLS", len, eof);
        if (r->proto != PROTO_GRPC && r->grpc_content_type[0])
                fail("grpc_content_type outside gRPC", len, eof);
}

static int same(const struct sniff_result *a, const struct sniff_result *b)
{
        return a->proto == b->proto && strcmp(a->http_method, b->http_method) == 0 &&
               strcmp(a->sni, b->sni) == 0 && strcmp(a->alpn, b->alpn) == 0 &&
               strcmp(a->grpc_content_type, b->grpc_content_type) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct sniff_result final, r;
        if (sniff(data, size, 1, &final) != SNIFF_DONE)
                fail("eof but not decided", size, 1);
        check(&final, size, 1);

        /* Prefixes: all of them for short inputs, a sample plus the region
         * around the bounds for long ones. */
        size_t step = size <= 512 ? 1 : size / 256;
        int undecided_seen_after_decided = 0, decided = 0;
        for (size_t n = 0; n <= size; n += step) {
                enum sniff_status st = sniff(data, n, 0, &r);
                if (st == SNIFF_DONE) {
                        check(&r, n, 0);
                        if (!same(&r, &final))
                                fail("decided prefix differs from the whole input", n, 0);
                        decided = 1;
                } else if (st == SNIFF_NEED_MORE) {
                        if (r.proto != PROTO_UNKNOWN)
                                fail("NEED_MORE with a protocol", n, 0);
                        if (n >= SNIFF_MAX_BYTES)
                                fail("NEED_MORE past SNIFF_MAX_BYTES", n, 0);
                        if (decided)
                                undecided_seen_after_decided = 1;
                } else {
                        fail("unknown status", n, 0);
                }
                if (undecided_seen_after_decided)
                        fail("a longer prefix asks for more after a shorter one decided", n, 0);
                if (sniff(data, n, 1, &r) != SNIFF_DONE)
                        fail("eof but not decided", n, 1);
                check(&r, n, 1);
        }
        return 0;
}

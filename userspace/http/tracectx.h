/* SPDX-License-Identifier: Apache-2.0 */
/* Trace context carried in request headers: W3C Trace Context
 * (`traceparent`; `tracestate` is passed on untouched by the proxy) and
 * Zipkin B3, single (`b3`) and multi (`X-B3-TraceId`, `X-B3-SpanId`,
 * `X-B3-Sampled`, `X-B3-Flags`, `X-B3-ParentSpanId`).
 *
 * Parsing is strict: a value that breaks its format is ignored as a whole
 * (the request then starts a new trace), never half-used. Nothing here
 * allocates. */
#ifndef SHUNT_HTTP_TRACECTX_H
#define SHUNT_HTTP_TRACECTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRACE_ID_HEX      32
#define SPAN_ID_HEX       16
#define TRACEPARENT_LEN   55 /* "00-" 32 "-" 16 "-" 2 */
#define B3_SINGLE_MAX_LEN 85 /* trace-span-sampled-parent with a 128-bit trace id */

enum trace_sampled {
        TRACE_SAMPLE_DEFER = -1, /* the incoming context made no decision */
        TRACE_SAMPLE_NO = 0,
        TRACE_SAMPLE_YES = 1,
};

/* Which headers a context came in (and goes out) with. */
enum trace_format {
        TRACE_FMT_NONE = 0,
        TRACE_FMT_W3C,
        TRACE_FMT_B3_SINGLE,
        TRACE_FMT_B3_MULTI,
};

struct trace_ctx {
        uint8_t trace_id[16]; /* all zero: no trace */
        uint8_t span_id[8];   /* the caller's span: the parent of ours */
        int sampled;          /* enum trace_sampled */
        enum trace_format format;
};

/* A traceparent value of n bytes (W3C Trace Context level 1: version 00
 * exactly 55 bytes; a later version at least that, with '-' after the
 * flags when longer; version ff, upper-case hex, an all-zero trace or
 * parent id are invalid). 0, or -EINVAL with *out untouched. */
int trace_parse_traceparent(const char *v, size_t n, struct trace_ctx *out);

/* A single b3 value: "{trace}-{span}[-{sampling}[-{parent}]]" with a 16
 * or 32 hex trace id (16 is left-padded with zeros), or a sampling
 * decision alone ("0", "1", "d": no ids, out->trace_id stays zero).
 * sampling: "1", "d" (debug) → yes, "0" → no. 0 or -EINVAL. */
int trace_parse_b3(const char *v, size_t n, struct trace_ctx *out);

/* The multi-header form: each argument a value and its length (NULL when
 * the header is absent). Ids need both trace and span id; X-B3-Sampled
 * "1"/"true" or X-B3-Flags "1" → yes, "0"/"false" → no. 0 when it gives
 * ids or a decision, -ENOENT when none of them is present, -EINVAL. */
int trace_parse_b3_multi(const char *trace, size_t tn, const char *span, size_t sn,
                         const char *sampled, size_t dn, const char *flags, size_t fn,
                         struct trace_ctx *out);

/* Lower-case hex of n bytes into out (2n bytes, then a NUL). */
void trace_hex(const uint8_t *b, size_t n, char *out);
bool trace_id_is_zero(const uint8_t *b, size_t n);

/* "00-<trace>-<span>-<flags>" into out[TRACEPARENT_LEN + 1]: the
 * context's trace id, span_id as the parent for the next hop, flags 01
 * when sampled. Returns TRACEPARENT_LEN. */
size_t trace_format_traceparent(const uint8_t trace_id[16], const uint8_t span_id[8], bool sampled,
                                char *out);
/* "<trace>-<span>-<1|0>" into out[B3_SINGLE_MAX_LEN + 1]. Returns its length. */
size_t trace_format_b3(const uint8_t trace_id[16], const uint8_t span_id[8], bool sampled,
                       char *out);

#endif

// SPDX-License-Identifier: Apache-2.0
#include "http/tracectx.h"

#include <errno.h>
#include <string.h>

static int hexval(char c, bool upper_ok)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (upper_ok && c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* 2n hex digits into n bytes. */
static bool unhex(const char *s, size_t n, uint8_t *out, bool upper_ok)
{
        for (size_t i = 0; i < n; i++) {
                int hi = hexval(s[2 * i], upper_ok), lo = hexval(s[2 * i + 1], upper_ok);
                if (hi < 0 || lo < 0)
                        return false;
                out[i] = (uint8_t)(hi << 4 | lo);
        }
        return true;
}

bool trace_id_is_zero(const uint8_t *b, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (b[i])
                        return false;
        return true;
}

void trace_hex(const uint8_t *b, size_t n, char *out)
{
        static const char hex[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = hex[b[i] >> 4];
                out[2 * i + 1] = hex[b[i] & 15];
        }
        out[2 * n] = '\0';
}

int trace_parse_traceparent(const char *v, size_t n, struct trace_ctx *out)
{
        /* Optional whitespace around a field value is not part of it. */
        while (n && (v[0] == ' ' || v[0] == '\t'))
                v++, n--;
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
        if (n < TRACEPARENT_LEN)
                return -EINVAL;
        uint8_t ver, fl;
        if (!unhex(v, 1, &ver, false) || ver == 0xff)
                return -EINVAL;
        if (ver == 0 && n != TRACEPARENT_LEN)
                return -EINVAL;
        if (n > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != '-')
                return -EINVAL;
        if (v[2] != '-' || v[35] != '-' || v[52] != '-')
                return -EINVAL;
        struct trace_ctx c = {0};
        if (!unhex(v + 3, 16, c.trace_id, false) || !unhex(v + 36, 8, c.span_id, false) ||
            !unhex(v + 53, 1, &fl, false))
                return -EINVAL;
        if (trace_id_is_zero(c.trace_id, 16) || trace_id_is_zero(c.span_id, 8))
                return -EINVAL;
        c.sampled = (fl & 1) ? TRACE_SAMPLE_YES : TRACE_SAMPLE_NO;
        c.format = TRACE_FMT_W3C;
        *out = c;
        return 0;
}

static int b3_sampling(const char *s, size_t n)
{
        if (n == 1 && (s[0] == '1' || s[0] == 'd'))
                return TRACE_SAMPLE_YES;
        if (n == 1 && s[0] == '0')
                return TRACE_SAMPLE_NO;
        return -2;
}

/* A 16 or 32 hex trace id, upper case accepted (B3 says lower, peers vary). */
static bool b3_trace_id(const char *s, size_t n, uint8_t out[16])
{
        memset(out, 0, 16);
        if (n == 32)
                return unhex(s, 16, out, true);
        if (n == 16)
                return unhex(s, 8, out + 8, true);
        return false;
}

int trace_parse_b3(const char *v, size_t n, struct trace_ctx *out)
{
        while (n && (v[0] == ' ' || v[0] == '\t'))
                v++, n--;
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
        struct trace_ctx c = {0};
        c.format = TRACE_FMT_B3_SINGLE;
        c.sampled = TRACE_SAMPLE_DEFER;
        if (n == 1) {
                int s = b3_sampling(v, n);
                if (s == -2)
                        return -EINVAL;
                c.sampled = s;
                *out = c;
                return 0;
        }
        /* Split on '-': 2 to 4 fields. */
        const char *f[4];
        size_t fl[4], k = 0, start = 0;
        for (size_t i = 0; i <= n; i++) {
                if (i == n || v[i] == '-') {
                        if (k == 4)
                                return -EINVAL;
                        f[k] = v + start;
                        fl[k++] = i - start;
                        start = i + 1;
                }
        }
        if (k < 2)
                return -EINVAL;
        if (!b3_trace_id(f[0], fl[0], c.trace_id) || fl[1] != SPAN_ID_HEX ||
            !unhex(f[1], 8, c.span_id, true))
                return -EINVAL;
        if (trace_id_is_zero(c.trace_id, 16) || trace_id_is_zero(c.span_id, 8))
                return -EINVAL;
        if (k >= 3) {
                int s = b3_sampling(f[2], fl[2]);
                if (s == -2)
                        return -EINVAL;
                c.sampled = s;
        }
        if (k == 4) {
                uint8_t parent[8];
                if (fl[3] != SPAN_ID_HEX || !unhex(f[3], 8, parent, true))
                        return -EINVAL;
        }
        *out = c;
        return 0;
}

int trace_parse_b3_multi(const char *trace, size_t tn, const char *span, size_t sn,
                         const char *sampled, size_t dn, const char *flags, size_t fn,
                         struct trace_ctx *out)
{
        if (!trace && !span && !sampled && !flags)
                return -ENOENT;
        struct trace_ctx c = {0};
        c.format = TRACE_FMT_B3_MULTI;
        c.sampled = TRACE_SAMPLE_DEFER;
        if (trace || span) {
                if (!trace || !span || !b3_trace_id(trace, tn, c.trace_id) || sn != SPAN_ID_HEX ||
                    !unhex(span, 8, c.span_id, true) || trace_id_is_zero(c.trace_id, 16) ||
                    trace_id_is_zero(c.span_id, 8))
                        return -EINVAL;
        }
        if (flags) {
                if (fn == 1 && flags[0] == '1')
                        c.sampled = TRACE_SAMPLE_YES;
                else if (!(fn == 1 && flags[0] == '0'))
                        return -EINVAL;
        }
        if (sampled && c.sampled == TRACE_SAMPLE_DEFER) {
                if ((dn == 1 && sampled[0] == '1') || (dn == 4 && !strncmp(sampled, "true", 4)))
                        c.sampled = TRACE_SAMPLE_YES;
                else if ((dn == 1 && sampled[0] == '0') ||
                         (dn == 5 && !strncmp(sampled, "false", 5)))
                        c.sampled = TRACE_SAMPLE_NO;
                else
                        return -EINVAL;
        }
        *out = c;
        return 0;
}

size_t trace_format_traceparent(const uint8_t trace_id[16], const uint8_t span_id[8], bool sampled,
                                char *out)
{
        memcpy(out, "00-", 3);
        trace_hex(trace_id, 16, out + 3);
        out[35] = '-';
        trace_hex(span_id, 8, out + 36);
        memcpy(out + 52, sampled ? "-01" : "-00", 4);
        return TRACEPARENT_LEN;
}

size_t trace_format_b3(const uint8_t trace_id[16], const uint8_t span_id[8], bool sampled,
                       char *out)
{
        trace_hex(trace_id, 16, out);
        out[32] = '-';
        trace_hex(span_id, 8, out + 33);
        memcpy(out + 49, sampled ? "-1" : "-0", 3);
        return 51;
}

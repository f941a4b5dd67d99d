// SPDX-License-Identifier: Apache-2.0
#include "core/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_init(struct strbuf *sb)
{
        memset(sb, 0, sizeof(*sb));
}

void strbuf_init_static(struct strbuf *sb, char *storage, size_t cap)
{
        sb->data = storage;
        sb->len = 0;
        sb->cap = cap;
        sb->fixed = true;
        sb->truncated = false;
        if (cap)
                storage[0] = '\0';
}

void strbuf_free(struct strbuf *sb)
{
        if (!sb->fixed)
                free(sb->data);
        memset(sb, 0, sizeof(*sb));
}

void strbuf_reset(struct strbuf *sb)
{
        sb->len = 0;
        sb->truncated = false;
        if (sb->cap)
                sb->data[0] = '\0';
}

/* Makes room for n more bytes plus a NUL; returns how many of n fit. */
static size_t reserve(struct strbuf *sb, size_t n)
{
        if (sb->len + n + 1 <= sb->cap)
                return n;
        if (sb->fixed) {
                sb->truncated = true;
                return sb->cap > sb->len + 1 ? sb->cap - sb->len - 1 : 0;
        }
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + n + 1)
                cap *= 2;
        char *p = realloc(sb->data, cap);
        if (!p) {
                sb->truncated = true;
                return sb->cap > sb->len + 1 ? sb->cap - sb->len - 1 : 0;
        }
        sb->data = p;
        sb->cap = cap;
        return n;
}

void strbuf_appendn(struct strbuf *sb, const char *s, size_t n)
{
        size_t fit = reserve(sb, n);
        if (!sb->cap)
                return;
        memcpy(sb->data + sb->len, s, fit);
        sb->len += fit;
        sb->data[sb->len] = '\0';
}

void strbuf_append_u64(struct strbuf *sb, uint64_t v)
{
        char d[20];
        size_t i = sizeof(d);
        do {
                d[--i] = (char)('0' + v % 10);
                v /= 10;
        } while (v);
        strbuf_appendn(sb, d + i, sizeof(d) - i);
}

void strbuf_appendf(struct strbuf *sb, const char *fmt, ...)
{
        char tmp[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n < sizeof(tmp)) {
                strbuf_appendn(sb, tmp, (size_t)n);
                return;
        }
        char *big = malloc((size_t)n + 1);
        if (!big) {
                sb->truncated = true;
                return;
        }
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        strbuf_appendn(sb, big, (size_t)n);
        free(big);
}

void strbuf_append_json_string(struct strbuf *sb, const char *s)
{
        strbuf_appendn(sb, "\"", 1);
        const char *run = s;
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c >= 0x20 && c != '"' && c != '\\')
                        continue;
                strbuf_appendn(sb, run, (size_t)(s - run));
                switch (c) {
                case '"':
                        strbuf_append(sb, "\\\"");
                        break;
                case '\\':
                        strbuf_append(sb, "\\\\");
                        break;
                case '\n':
                        strbuf_append(sb, "\\n");
                        break;
                case '\r':
                        strbuf_append(sb, "\\r");
                        break;
                case '\t':
                        strbuf_append(sb, "\\t");
                        break;
                default:
                        strbuf_appendf(sb, "\\u%04x", c);
                }
                run = s + 1;
        }
        strbuf_appendn(sb, run, (size_t)(s - run));
        strbuf_appendn(sb, "\"", 1);
}

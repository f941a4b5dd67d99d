/* SPDX-License-Identifier: Apache-2.0 */
/* A growable (or fixed) byte string for building text: JSON, metrics, HTTP. */
#ifndef SHUNT_CORE_STRBUF_H
#define SHUNT_CORE_STRBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct strbuf {
        char *data;
        size_t len;
        size_t cap;
        bool fixed;     /* storage is the caller's: never grown, output truncated */
        bool truncated; /* something did not fit (fixed) or allocation failed */
};

void strbuf_init(struct strbuf *sb);
void strbuf_init_static(struct strbuf *sb, char *storage, size_t cap);
void strbuf_free(struct strbuf *sb);
void strbuf_reset(struct strbuf *sb);
void strbuf_appendn(struct strbuf *sb, const char *s, size_t n);
/* Inline: a literal's length is a constant. */
static inline void strbuf_append(struct strbuf *sb, const char *s)
{
        strbuf_appendn(sb, s, strlen(s));
}
/* v in decimal, without printf (hot paths: HTTP heads, metrics). */
void strbuf_append_u64(struct strbuf *sb, uint64_t v);
void strbuf_appendf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string, escaping as RFC 8259 requires. */
void strbuf_append_json_string(struct strbuf *sb, const char *s);

#endif

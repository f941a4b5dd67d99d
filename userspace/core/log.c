// SPDX-License-Identifier: Apache-2.0
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/strbuf.h"

static _Atomic int g_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
        atomic_store_explicit(&g_level, (int)level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
        return (enum log_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

const char *log_level_name(enum log_level level)
{
        if ((unsigned)level > LOG_ERROR)
                return "unknown";
        return level_names[level];
}

int log_level_parse(const char *s, enum log_level *out)
{
        for (int i = LOG_DEBUG; i <= LOG_ERROR; i++) {
                if (strcmp(s, level_names[i]) == 0) {
                        *out = (enum log_level)i;
                        return 0;
                }
        }
        return -EINVAL;
}

static void emit(enum log_level level, const char *component, uint64_t conn_id, const char *msg,
                 const char *extra);

void log_emit(enum log_level level, const char *component, uint64_t conn_id, const char *fmt, ...)
{
        if (level < log_get_level())
                return;

        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        emit(level, component, conn_id, msg, NULL);
}

static void append_audit_value(struct strbuf *sb, const char *v, bool quoted)
{
        static const char hex[] = "0123456789ABCDEF";
        if (quoted)
                strbuf_append(sb, "\"");
        for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
                bool plain =
                    *p > 0x20 && *p < 0x7f && *p != '"' && *p != '\\' && *p != '%' && *p != '=';
                if (plain || (quoted && *p == ' ')) {
                        strbuf_appendn(sb, (const char *)p, 1);
                } else {
                        char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
                        strbuf_appendn(sb, e, 3);
                }
        }
        if (quoted)
                strbuf_append(sb, "\"");
}

void log_audit(enum log_level level, const char *component, uint64_t conn_id, const char *what,
               const struct log_field *fields, size_t n)
{
        if (level < log_get_level())
                return;
        char mbuf[1024], jbuf[1536];
        struct strbuf msg, json;
        strbuf_init_static(&msg, mbuf, sizeof(mbuf));
        strbuf_init_static(&json, jbuf, sizeof(jbuf));
        strbuf_appendf(&msg, "audit: %s:", what);
        strbuf_append(&json, "\"audit\":{\"event\":");
        strbuf_append_json_string(&json, what);
        for (size_t i = 0; i < n; i++) {
                const char *v = fields[i].value ? fields[i].value : "-";
                strbuf_appendf(&msg, " %s=", fields[i].key);
                append_audit_value(&msg, v, fields[i].quoted);
                strbuf_append(&json, ",");
                strbuf_append_json_string(&json, fields[i].key);
                strbuf_append(&json, ":");
                strbuf_append_json_string(&json, v);
        }
        strbuf_append(&json, "}");
        if (json.truncated) /* never a broken object: the fields are in msg too */
                json.len = 0;
        emit(level, component, conn_id, msg.data, json.len ? json.data : NULL);
}

static void emit(enum log_level level, const char *component, uint64_t conn_id, const char *msg,
                 const char *extra)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);

        /* Room for the header, a 1 KiB msg escaped at worst (6 bytes a byte)
         * and an audit object: a line is never cut. */
        char line[8192];
        struct strbuf sb;
        strbuf_init_static(&sb, line, sizeof(line));
        strbuf_appendf(&sb, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\",\"level\":\"%s\"",
                       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                       tm.tm_sec, ts.tv_nsec / 1000, log_level_name(level));
        strbuf_append(&sb, ",\"component\":");
        strbuf_append_json_string(&sb, component ? component : "shunt");
        if (conn_id)
                strbuf_appendf(&sb, ",\"conn\":%llu", (unsigned long long)conn_id);
        strbuf_append(&sb, ",\"msg\":");
        strbuf_append_json_string(&sb, msg);
        if (extra) {
                strbuf_append(&sb, ",");
                strbuf_append(&sb, extra);
        }
        strbuf_append(&sb, "}\n");
        /* One write(2) per line keeps lines from different threads whole. */
        ssize_t rc = write(STDERR_FILENO, sb.data, sb.len);
        (void)rc;
}

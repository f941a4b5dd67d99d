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

void log_emit(enum log_level level, const char *component, uint64_t conn_id, const char *fmt, ...)
{
        if (level < log_get_level())
                return;

        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);

        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);

        char line[2048];
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
        strbuf_append(&sb, "}\n");
        /* One write(2) per line keeps lines from different threads whole. */
        ssize_t rc = write(STDERR_FILENO, sb.data, sb.len);
        (void)rc;
}

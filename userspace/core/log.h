/* SPDX-License-Identifier: Apache-2.0 */
/* Structured logging: one JSON object per line on stderr.
 *
 *   {"time":"2026-11-26T00:38:27.123456Z","level":"info","component":"proxy",
 *    "conn":42,"msg":"..."}
 *
 * The level is global and may be changed at run time from any thread. */
#ifndef SHUNT_CORE_LOG_H
#define SHUNT_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level {
        LOG_DEBUG = 0,
        LOG_INFO = 1,
        LOG_WARN = 2,
        LOG_ERROR = 3,
};

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "debug", "info", "warn" or "error". Returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);

/* conn_id 0 means "not about one connection" and is left out of the line. */
void log_emit(enum log_level level, const char *component, uint64_t conn_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* One field of an audit record. */
struct log_field {
        const char *key;
        const char *value; /* NULL: "-" */
        bool quoted;       /* in msg, between double quotes (may hold spaces) */
};

/* An audit record: a line whose msg reads "audit: <what>: key=value ..."
 * for people, and whose "audit" object holds the same fields as JSON
 * strings (with "event": what) for programs. Values may come from a peer
 * (a presented identity, an address): in msg every byte that could end a
 * value or start another (space outside quotes, '"', '\', '%', '=' and any
 * control or non-ASCII byte) is written as %XX, so no value can forge a
 * field; the JSON object has them exactly, escaped as JSON. */
void log_audit(enum log_level level, const char *component, uint64_t conn_id, const char *what,
               const struct log_field *fields, size_t n);

static inline int log_enabled(enum log_level level)
{
        return level >= log_get_level();
}

#define log_debug(comp, conn, ...)                                                                 \
        do {                                                                                       \
                if (log_enabled(LOG_DEBUG))                                                        \
                        log_emit(LOG_DEBUG, comp, conn, __VA_ARGS__);                              \
        } while (0)
#define log_info(comp, conn, ...)  log_emit(LOG_INFO, comp, conn, __VA_ARGS__)
#define log_warn(comp, conn, ...)  log_emit(LOG_WARN, comp, conn, __VA_ARGS__)
#define log_error(comp, conn, ...) log_emit(LOG_ERROR, comp, conn, __VA_ARGS__)

#endif

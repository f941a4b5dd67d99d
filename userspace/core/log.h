/* Structured logging: one JSON object per line on stderr.
 *
 *   {"time":"2026-11-26T00:38:27.123456Z","level":"info","component":"proxy",
 *    "conn":42,"msg":"..."}
 *
 * The level is global and may be changed at run time from any thread. */
#ifndef SHUNT_CORE_LOG_H
#define SHUNT_CORE_LOG_H

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

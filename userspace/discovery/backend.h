/* SPDX-License-Identifier: Apache-2.0 */
/* Discovery backends behind one interface, chosen by service_discovery.type.
 *
 * A backend owns one registry source and feeds it through the registry's
 * update API (full replacement or incremental changes), reporting each sync
 * with disc_source_sync_ok / disc_source_sync_failed. Network backends
 * (kubernetes, consul) drive libcurl multi handles from the main loop: they
 * plug in by adding a struct disc_backend_ops in backend.c. */
#ifndef SHUNT_DISCOVERY_BACKEND_H
#define SHUNT_DISCOVERY_BACKEND_H

#include <stddef.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/strbuf.h"
#include "discovery/registry.h"

struct disc_backend_ops {
        const char *type; /* "file", "kubernetes", "consul" */
        /* Builds the backend from the configuration and registers its source. */
        int (*create)(struct disc_registry *r, const struct shunt_config *cfg, void **impl,
                      char *err, size_t errlen);
        /* First sync (may fail start-up) and watching on loop. */
        int (*start)(void *impl, struct loop *loop, char *err, size_t errlen);
        /* One JSON object describing the backend's own state for /debug/cache. */
        void (*render)(const void *impl, struct strbuf *sb);
        void (*destroy)(void *impl);
};

struct disc_backend;

/* Picks the backend named by cfg->sd_type. -ENOTSUP (with err naming the
 * type) when it is not built yet, -EINVAL for bad settings. */
int disc_backend_new(struct disc_registry *r, const struct shunt_config *cfg,
                     struct disc_backend **out, char *err, size_t errlen);
int disc_backend_start(struct disc_backend *b, struct loop *loop, char *err, size_t errlen);
/* {"type":"file","state":{...}} */
void disc_backend_render(const struct disc_backend *b, struct strbuf *sb);
void disc_backend_free(struct disc_backend *b);
/* The backend's own object, for wiring its extras (k8s_backend_add_sink on
 * a "kubernetes" backend); its type is disc_backend_type(). */
void *disc_backend_impl(struct disc_backend *b);
const char *disc_backend_type(const struct disc_backend *b);

#endif

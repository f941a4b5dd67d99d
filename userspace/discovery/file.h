/* SPDX-License-Identifier: Apache-2.0 */
/* The file registry backend: a JSON file of services and endpoints
 * (service_discovery.file.path), validated strictly, reloaded when it changes
 * (inotify on its directory, so atomic renames are seen at once, plus stat
 * polling of inode, size and mtime as a safety net). An invalid file is
 * rejected with "<file>:<line>: <json path>: <reason>" and the last good
 * registry stays, marked stale until a good file appears. */
#ifndef SHUNT_DISCOVERY_FILE_H
#define SHUNT_DISCOVERY_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "discovery/registry.h"

#define DISC_FILE_MAX_BYTES    (64u * 1024 * 1024)
#define DISC_FILE_POLL_MS      1000
#define DISC_FILE_MAX_SERVICES DISC_DEFAULT_MAX_SERVICES

/* Parsed services; each spec's endpoints array is owned by this struct. */
struct disc_specs {
        struct disc_service_spec *svcs;
        size_t n;
};

/* svcs[0..n) has the service ns/name with port (0: any port). */
bool disc_specs_have(const struct disc_service_spec *svcs, size_t n, const char *ns,
                     const char *name, uint16_t port);

/* *pc for parsing sp's routes (dr_routes_parse, discovery/routes.h): sp's
 * namespace, name and port numbers (copied into ports), a backendRef
 * checked with disc_specs_have against all; nothing else set. */
struct dr_parse_ctx;
void disc_specs_route_ctx(struct disc_specs *all, const struct disc_service_spec *sp,
                          uint16_t ports[DISC_MAX_PORTS], struct dr_parse_ctx *pc);

/* Parses and validates the text of a registry file (name is used in error
 * messages only). 0, or -EINVAL with one line in err. */
int disc_file_parse(const char *name, const char *text, size_t len, struct disc_specs *out,
                    char *err, size_t errlen);
void disc_specs_free(struct disc_specs *s);

/* A key of each service that the registry file does not have, parsed by
 * another backend (the DNS backend's "dns"). */
struct cJSON;
struct disc_file_ext {
        const char *key;
        bool required;
        /* value: the key's value; svc: the whole service object; s: the
         * service as parsed so far (everything but the key); i: its index.
         * 0, or -EINVAL with a reason in why (the parser adds the path). */
        int (*parse)(void *ctx, size_t i, const struct cJSON *value, const struct cJSON *svc,
                     struct disc_service_spec *s, char *why, size_t whylen);
        void *ctx;
};
/* disc_file_parse with ext's key allowed (and parsed) in every service.
 * With ext set, text is taken as generated (errors name no line). */
int disc_file_parse_ext(const char *name, const char *text, size_t len,
                        const struct disc_file_ext *ext, struct disc_specs *out, char *err,
                        size_t errlen);

struct disc_file;
struct loop;

/* Registers source "file" with r. Does not read the file yet. */
struct disc_file *disc_file_new(struct disc_registry *r, const char *path, char *err,
                                size_t errlen);
void disc_file_free(struct disc_file *f);
/* Reads the file if its identity (device, inode, size, mtime) changed since
 * the last attempt; applies and publishes it when valid. Returns 1 when a new
 * registry was applied, 0 when nothing changed, or a negative errno (the file
 * is missing, unreadable or invalid: err says why, the last good registry
 * stays and the source is stale). */
int disc_file_check(struct disc_file *f, char *err, size_t errlen);
/* Starts watching on loop: inotify on the directory and a poll_ms stat
 * timer (0: DISC_FILE_POLL_MS). 0 or -errno. */
int disc_file_watch(struct disc_file *f, struct loop *loop, uint32_t poll_ms);
int disc_file_source(const struct disc_file *f);
/* {"path":..., "loads":N, "rejects":N, "last_error":...} */
void disc_file_render(const struct disc_file *f, struct strbuf *sb);

#endif

// SPDX-License-Identifier: Apache-2.0
/* Backend selection and the file backend's adapter. */
#include "discovery/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "discovery/cluster.h"
#include "discovery/consul.h"
#include "discovery/dns.h"
#include "discovery/file.h"
#include "discovery/k8s.h"

struct disc_backend {
        const struct disc_backend_ops *ops;
        void *impl;
        void *dns_fallback; /* a struct dns of disc_dns_ops (dns.fallback on), or NULL */
};

/* ---- file ------------------------------------------------------------------ */

struct file_backend {
        struct disc_file *f;
        bool enabled; /* a path is configured */
};

static int file_create(struct disc_registry *r, const struct shunt_config *cfg, void **impl,
                       char *err, size_t errlen)
{
        struct file_backend *fb = calloc(1, sizeof(*fb));
        if (!fb) {
                snprintf(err, errlen, "discovery: out of memory");
                return -ENOMEM;
        }
        if (cfg->sd_file_path[0]) {
                fb->f = disc_file_new(r, cfg->sd_file_path, err, errlen);
                if (!fb->f) {
                        free(fb);
                        return -EINVAL;
                }
                fb->enabled = true;
        }
        *impl = fb;
        return 0;
}

static int file_start(void *impl, struct loop *loop, char *err, size_t errlen)
{
        struct file_backend *fb = impl;
        if (!fb->enabled) {
                log_info("discovery", 0,
                         "no service_discovery.file.path: the registry starts empty (manual "
                         "registration only)");
                return 0;
        }
        char msg[DISC_ERROR_MAX];
        int rc = disc_file_check(fb->f, msg, sizeof(msg));
        if (rc < 0) {
                snprintf(err, errlen, "config: service_discovery.file.path: %s", msg);
                return rc;
        }
        return disc_file_watch(fb->f, loop, DISC_FILE_POLL_MS);
}

static void file_render(const void *impl, struct strbuf *sb)
{
        const struct file_backend *fb = impl;
        if (fb->enabled)
                disc_file_render(fb->f, sb);
        else
                strbuf_append(sb, "{\"path\":null}");
}

static void file_destroy(void *impl)
{
        struct file_backend *fb = impl;
        disc_file_free(fb->f);
        free(fb);
}

static const struct disc_backend_ops file_ops = {
    .type = "file",
    .create = file_create,
    .start = file_start,
    .render = file_render,
    .destroy = file_destroy,
};

static const struct disc_backend_ops *const backends[] = {&file_ops, &k8s_backend_ops,
                                                          &disc_consul_ops, &disc_dns_ops};

int disc_backend_new(struct disc_registry *r, const struct shunt_config *cfg,
                     struct disc_backend **out, char *err, size_t errlen)
{
        const char *type = cfg->sd_type[0] ? cfg->sd_type : "file";
        const struct disc_backend_ops *ops = cfg->sd_clusters ? &disc_cluster_ops : NULL;
        for (size_t i = 0; !ops && i < sizeof(backends) / sizeof(backends[0]); i++) {
                if (strcmp(backends[i]->type, type) == 0)
                        ops = backends[i];
        }
        if (!ops) {
                snprintf(err, errlen,
                         "config: service_discovery.type: %s: unknown (allowed: file, kubernetes, "
                         "consul, dns)",
                         type);
                return -ENOTSUP;
        }
        struct disc_backend *b = calloc(1, sizeof(*b));
        if (!b) {
                snprintf(err, errlen, "discovery: out of memory");
                return -ENOMEM;
        }
        b->ops = ops;
        int rc = ops->create(r, cfg, &b->impl, err, errlen);
        if (rc) {
                free(b);
                return rc;
        }
        if (ops != &disc_dns_ops) {
                b->dns_fallback = disc_dns_fallback_new(r, cfg, err, errlen);
                if (!b->dns_fallback && err[0]) {
                        disc_backend_free(b);
                        return -EINVAL;
                }
        }
        *out = b;
        return 0;
}

int disc_backend_start(struct disc_backend *b, struct loop *loop, char *err, size_t errlen)
{
        int rc = b->ops->start(b->impl, loop, err, errlen);
        if (!rc && b->dns_fallback)
                rc = disc_dns_ops.start(b->dns_fallback, loop, err, errlen);
        return rc;
}

void disc_backend_render(const struct disc_backend *b, struct strbuf *sb)
{
        strbuf_append(sb, "{\"type\":");
        strbuf_append_json_string(sb, b->ops->type);
        strbuf_append(sb, ",\"state\":");
        b->ops->render(b->impl, sb);
        if (b->dns_fallback) {
                strbuf_append(sb, ",\"dns_fallback\":");
                disc_dns_ops.render(b->dns_fallback, sb);
        }
        strbuf_append(sb, "}");
}

void disc_backend_free(struct disc_backend *b)
{
        if (!b)
                return;
        if (b->dns_fallback)
                disc_dns_ops.destroy(b->dns_fallback);
        b->ops->destroy(b->impl);
        free(b);
}

void *disc_backend_impl(struct disc_backend *b)
{
        return b ? b->impl : NULL;
}

const char *disc_backend_type(const struct disc_backend *b)
{
        return b ? b->ops->type : "";
}

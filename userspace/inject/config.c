// SPDX-License-Identifier: Apache-2.0
/* The inject config: what the webhook adds to a pod, from one JSON file. */
#include "inject/inject-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"

static const char *const capture_names[] = {"iptables", "ebpf", "auto", NULL};
static const char *const pull_names[] = {"Always", "IfNotPresent", "Never", NULL};
static const char *const log_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const mtls_names[] = {"strict", "permissive", "disabled", NULL};
static const char *const sd_names[] = {"kubernetes", "file", "consul", NULL};
static const char *const capture_from_names[] = {"pod", "node", NULL};

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
        if (!err || !errlen)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

int inject_enum_index(const char *const *names, const char *s)
{
        for (int i = 0; names[i]; i++)
                if (!strcmp(names[i], s))
                        return i;
        return -1;
}

void inject_enum_list(const char *const *names, char *buf, size_t n)
{
        size_t off = 0;
        buf[0] = '\0';
        for (int i = 0; names[i] && off < n; i++)
                off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? ", " : "", names[i]);
}

/* A string key: copied into dst (NUL-terminated, at most dstlen - 1 bytes). */
static int get_str(const cJSON *item, const char *key, char *dst, size_t dstlen,
                   const char *const *allowed, bool nonempty, char *err, size_t errlen)
{
        if (!cJSON_IsString(item)) {
                errf(err, errlen, "inject config: %s: expected a string", key);
                return -EINVAL;
        }
        const char *v = item->valuestring;
        if (strlen(v) >= dstlen) {
                errf(err, errlen, "inject config: %s: longer than %zu bytes", key, dstlen - 1);
                return -EINVAL;
        }
        if (nonempty && !*v) {
                errf(err, errlen, "inject config: %s: must not be empty", key);
                return -EINVAL;
        }
        if (allowed && *v && inject_enum_index(allowed, v) < 0) {
                char list[128];
                inject_enum_list(allowed, list, sizeof(list));
                errf(err, errlen, "inject config: %s: '%.64s' is not one of %s", key, v, list);
                return -EINVAL;
        }
        snprintf(dst, dstlen, "%s", v);
        return 0;
}

static int get_int(const cJSON *item, const char *key, long lo, long hi, long *out, char *err,
                   size_t errlen)
{
        if (!cJSON_IsNumber(item) || item->valuedouble != (double)(long)item->valuedouble ||
            item->valuedouble < (double)lo || item->valuedouble > (double)hi) {
                errf(err, errlen, "inject config: %s: expected an integer %ld..%ld", key, lo, hi);
                return -EINVAL;
        }
        *out = (long)item->valuedouble;
        return 0;
}

static int get_bool(const cJSON *item, const char *key, bool *out, char *err, size_t errlen)
{
        if (!cJSON_IsBool(item)) {
                errf(err, errlen, "inject config: %s: expected true or false", key);
                return -EINVAL;
        }
        *out = cJSON_IsTrue(item);
        return 0;
}

/* {"requests": {"cpu": Q, "memory": Q}, "limits": {...}}: every quantity
 * checked; the object is kept as it is for the patch. */
static int get_resources(const cJSON *item, const char *key, cJSON **out, char *err, size_t errlen)
{
        if (!cJSON_IsObject(item)) {
                errf(err, errlen, "inject config: %s: expected an object with requests/limits",
                     key);
                return -EINVAL;
        }
        const cJSON *part;
        cJSON_ArrayForEach(part, item)
        {
                if (strcmp(part->string, "requests") && strcmp(part->string, "limits")) {
                        errf(err, errlen,
                             "inject config: %s.%.64s: unknown key (allowed: requests, limits)",
                             key, part->string);
                        return -EINVAL;
                }
                if (!cJSON_IsObject(part)) {
                        errf(err, errlen, "inject config: %s.%s: expected an object", key,
                             part->string);
                        return -EINVAL;
                }
                const cJSON *q;
                cJSON_ArrayForEach(q, part)
                {
                        if (strcmp(q->string, "cpu") && strcmp(q->string, "memory")) {
                                errf(err, errlen,
                                     "inject config: %s.%s.%.64s: unknown resource (allowed: "
                                     "cpu, memory)",
                                     key, part->string, q->string);
                                return -EINVAL;
                        }
                        if (!cJSON_IsString(q) || !inject_valid_quantity(q->valuestring)) {
                                errf(err, errlen,
                                     "inject config: %s.%s.%s: expected a quantity such as "
                                     "\"100m\" or \"128Mi\"",
                                     key, part->string, q->string);
                                return -EINVAL;
                        }
                }
        }
        *out = cJSON_Duplicate(item, true);
        return *out ? 0 : -ENOMEM;
}

/* A list default: a JSON array of ports or CIDRs, kept as comma-separated text. */
static int get_list(const cJSON *item, const char *key, bool cidrs, struct inject_list *l,
                    char *err, size_t errlen)
{
        if (!cJSON_IsArray(item)) {
                errf(err, errlen, "inject config: %s: expected an array", key);
                return -EINVAL;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, item)
        {
                char text[INJECT_ITEM_MAX];
                if (cidrs ? !cJSON_IsString(e) : !cJSON_IsNumber(e)) {
                        errf(err, errlen, "inject config: %s: every element must be %s", key,
                             cidrs ? "a CIDR string" : "a port number");
                        return -EINVAL;
                }
                if (cidrs)
                        snprintf(text, sizeof(text), "%.47s", e->valuestring);
                else
                        snprintf(text, sizeof(text), "%.0f", e->valuedouble);
                char why[160];
                if (inject_list_add(l, text, cidrs, why, sizeof(why)) < 0) {
                        errf(err, errlen, "inject config: %s: %s", key, why);
                        return -EINVAL;
                }
        }
        return 0;
}

/* node_namespaces: namespace names (DNS labels) or "*". */
static int get_namespaces(const cJSON *item, const char *key, struct inject_config *c, char *err,
                          size_t errlen)
{
        if (!cJSON_IsArray(item)) {
                errf(err, errlen, "inject config: %s: expected an array of namespace names", key);
                return -EINVAL;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, item)
        {
                const char *v = cJSON_IsString(e) ? e->valuestring : NULL;
                bool ok = v && *v && strlen(v) < sizeof(c->node_namespaces[0]);
                for (const char *p = v; ok && *p && strcmp(v, "*"); p++)
                        ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-';
                if (!ok) {
                        errf(err, errlen,
                             "inject config: %s: every element must be a namespace name or \"*\"",
                             key);
                        return -EINVAL;
                }
                if (c->n_node_namespaces == INJECT_NODE_NAMESPACES_MAX) {
                        errf(err, errlen, "inject config: %s: more than %d namespaces", key,
                             INJECT_NODE_NAMESPACES_MAX);
                        return -EINVAL;
                }
                snprintf(c->node_namespaces[c->n_node_namespaces++], sizeof(c->node_namespaces[0]),
                         "%s", v);
        }
        return 0;
}

int inject_config_parse(const char *json, size_t len, struct inject_config **out, char *err,
                        size_t errlen)
{
        *out = NULL;
        cJSON *root = cJSON_ParseWithLength(json, len);
        if (!cJSON_IsObject(root)) {
                errf(err, errlen, "inject config: not a JSON object");
                cJSON_Delete(root);
                return -EINVAL;
        }
        struct inject_config *c = calloc(1, sizeof(*c));
        if (!c) {
                cJSON_Delete(root);
                return -ENOMEM;
        }
        snprintf(c->image, sizeof(c->image), "shunt:latest");
        snprintf(c->pull_policy, sizeof(c->pull_policy), "IfNotPresent");
        snprintf(c->capture, sizeof(c->capture), "iptables");
        c->native_sidecar = true;
        c->proxy_uid = 1337;
        snprintf(c->trust_domain, sizeof(c->trust_domain), "cluster.local");
        snprintf(c->audience, sizeof(c->audience), INJECT_TOKEN_AUDIENCE);
        c->token_expiration = 3600;
        snprintf(c->bundle_configmap, sizeof(c->bundle_configmap), INJECT_BUNDLE_CM);
        snprintf(c->log_level, sizeof(c->log_level), "info");
        snprintf(c->discovery, sizeof(c->discovery), "kubernetes");
        snprintf(c->bpf_pin_root, sizeof(c->bpf_pin_root), "/sys/fs/bpf/shunt");
        c->startup_timeout = 120;
        c->metrics_port = 15020;
        c->scrape_annotations = true;

        int rc = 0;
        long v;
        const cJSON *item;
        cJSON_ArrayForEach(item, root)
        {
                const char *k = item->string;
                if (!strcmp(k, "image"))
                        rc = get_str(item, k, c->image, sizeof(c->image), NULL, true, err, errlen);
                else if (!strcmp(k, "image_pull_policy"))
                        rc = get_str(item, k, c->pull_policy, sizeof(c->pull_policy), pull_names,
                                     true, err, errlen);
                else if (!strcmp(k, "capture"))
                        rc = get_str(item, k, c->capture, sizeof(c->capture), capture_names, true,
                                     err, errlen);
                else if (!strcmp(k, "native_sidecar"))
                        rc = get_bool(item, k, &c->native_sidecar, err, errlen);
                else if (!strcmp(k, "scrape_annotations"))
                        rc = get_bool(item, k, &c->scrape_annotations, err, errlen);
                else if (!strcmp(k, "metrics_port")) {
                        if (!(rc = get_int(item, k, 0, 65535, &v, err, errlen)))
                                c->metrics_port = (int)v;
                } else if (!strcmp(k, "proxy_uid")) {
                        if (!(rc = get_int(item, k, 1, 2147483647, &v, err, errlen)))
                                c->proxy_uid = (int)v;
                } else if (!strcmp(k, "startup_timeout_seconds")) {
                        if (!(rc = get_int(item, k, 1, 3600, &v, err, errlen)))
                                c->startup_timeout = (int)v;
                } else if (!strcmp(k, "ca_address"))
                        rc = get_str(item, k, c->ca_address, sizeof(c->ca_address), NULL, false,
                                     err, errlen);
                else if (!strcmp(k, "trust_domain"))
                        rc = get_str(item, k, c->trust_domain, sizeof(c->trust_domain), NULL, true,
                                     err, errlen);
                else if (!strcmp(k, "token_audience"))
                        rc = get_str(item, k, c->audience, sizeof(c->audience), NULL, true, err,
                                     errlen);
                else if (!strcmp(k, "token_expiration_seconds")) {
                        /* The API server refuses projected tokens under 10 minutes. */
                        if (!(rc = get_int(item, k, 600, 86400 * 2, &v, err, errlen)))
                                c->token_expiration = (int)v;
                } else if (!strcmp(k, "bundle_configmap"))
                        rc = get_str(item, k, c->bundle_configmap, sizeof(c->bundle_configmap),
                                     NULL, true, err, errlen);
                else if (!strcmp(k, "log_level"))
                        rc = get_str(item, k, c->log_level, sizeof(c->log_level), log_names, true,
                                     err, errlen);
                else if (!strcmp(k, "mtls_mode")) /* "": shuntd's default */
                        rc = get_str(item, k, c->mtls_mode, sizeof(c->mtls_mode), mtls_names, false,
                                     err, errlen);
                else if (!strcmp(k, "discovery"))
                        rc = get_str(item, k, c->discovery, sizeof(c->discovery), sd_names, true,
                                     err, errlen);
                else if (!strcmp(k, "bpf_pin_root"))
                        rc = get_str(item, k, c->bpf_pin_root, sizeof(c->bpf_pin_root), NULL, true,
                                     err, errlen);
                else if (!strcmp(k, "proxy_resources"))
                        rc = get_resources(item, k, &c->proxy_resources, err, errlen);
                else if (!strcmp(k, "init_resources"))
                        rc = get_resources(item, k, &c->init_resources, err, errlen);
                else if (!strcmp(k, "exclude_inbound_ports"))
                        rc = get_list(item, k, false, &c->exclude_in, err, errlen);
                else if (!strcmp(k, "exclude_outbound_ports"))
                        rc = get_list(item, k, false, &c->exclude_out, err, errlen);
                else if (!strcmp(k, "exclude_outbound_cidrs"))
                        rc = get_list(item, k, true, &c->exclude_cidrs, err, errlen);
                else if (!strcmp(k, "node_namespaces"))
                        rc = get_namespaces(item, k, c, err, errlen);
                else if (!strcmp(k, "capture_from")) {
                        char from[8];
                        if (!(rc = get_str(item, k, from, sizeof(from), capture_from_names, true,
                                           err, errlen)))
                                c->capture_from_node = !strcmp(from, "node");
                } else {
                        errf(err, errlen,
                             "inject config: unknown key '%.64s' (allowed: image, "
                             "image_pull_policy, capture, native_sidecar, proxy_uid, "
                             "startup_timeout_seconds, ca_address, trust_domain, token_audience, "
                             "token_expiration_seconds, bundle_configmap, log_level, mtls_mode, "
                             "discovery, bpf_pin_root, proxy_resources, init_resources, "
                             "exclude_inbound_ports, exclude_outbound_ports, "
                             "exclude_outbound_cidrs, metrics_port, scrape_annotations, "
                             "node_namespaces, capture_from)",
                             k);
                        rc = -EINVAL;
                }
                if (rc)
                        break;
        }
        cJSON_Delete(root);
        if (!rc && c->capture_from_node && strcmp(c->capture, "iptables")) {
                /* The node agent installs what `shuntd init` would with
                 * iptables; an eBPF capture needs the pod's own pins. */
                errf(err, errlen,
                     "inject config: capture_from node needs capture iptables (not '%s')",
                     c->capture);
                rc = -EINVAL;
        }
        if (rc) {
                inject_config_free(c);
                return rc;
        }
        *out = c;
        return 0;
}

int inject_config_load(const char *path, struct inject_config **out, char *err, size_t errlen)
{
        *out = NULL;
        char *buf, why[512];
        size_t len;
        int rc = file_read(path, INJECT_MAX_CONFIG_BYTES, &buf, &len, why, sizeof(why));
        if (rc < 0) {
                errf(err, errlen, "inject config %s", why);
                return rc;
        }
        rc = inject_config_parse(buf, len, out, why, sizeof(why));
        if (rc)
                errf(err, errlen, "%s (file %s)", why, path);
        free(buf);
        return rc;
}

void inject_config_free(struct inject_config *cfg)
{
        if (!cfg)
                return;
        cJSON_Delete(cfg->proxy_resources);
        cJSON_Delete(cfg->init_resources);
        free(cfg);
}

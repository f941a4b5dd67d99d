// SPDX-License-Identifier: Apache-2.0
/* Kubernetes AuthorizationPolicy objects: the watched set, the pod's labels,
 * which objects select this pod. */
#include "authz/authz.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/file.h"
#include "core/log.h"

#define COMP "authz"

#define NAME_MAX_LEN 253 /* metadata.name of a namespaced object */

struct authz_labels {
        size_t n;
        char *key[AUTHZ_MAX_LABELS];
        char *value[AUTHZ_MAX_LABELS];
};

struct kobj {
        char *name;
        char *spec;              /* the spec as compact JSON */
        char why[300];           /* "" when valid, else why it never applies */
        struct authz_labels sel; /* spec.selector.matchLabels */
        bool has_selector;
};

struct objset {
        struct kobj *o;
        size_t n;
};

struct authz_kube {
        char *ns;
        void (*changed)(void *arg);
        void *arg;
        struct objset live, staging;
        bool listed;
        struct authz_labels *labels; /* NULL: unknown */
};

/* ---- labels ------------------------------------------------------------------- */

static void labels_clear(struct authz_labels *l)
{
        for (size_t i = 0; i < l->n; i++) {
                free(l->key[i]);
                free(l->value[i]);
        }
        l->n = 0;
}

void authz_labels_free(struct authz_labels *l)
{
        if (!l)
                return;
        labels_clear(l);
        free(l);
}

static int labels_add(struct authz_labels *l, const char *k, size_t klen, const char *v,
                      size_t vlen)
{
        if (l->n >= AUTHZ_MAX_LABELS)
                return -E2BIG;
        l->key[l->n] = strndup(k, klen);
        l->value[l->n] = strndup(v, vlen);
        if (!l->key[l->n] || !l->value[l->n]) {
                free(l->key[l->n]);
                free(l->value[l->n]);
                return -ENOMEM;
        }
        l->n++;
        return 0;
}

static const char *labels_get(const struct authz_labels *l, const char *k)
{
        for (size_t i = 0; l && i < l->n; i++)
                if (!strcmp(l->key[i], k))
                        return l->value[i];
        return NULL;
}

/* One line key="value" with \" \\ \n \t escapes; the value unescaped into
 * buf. 0 or -EINVAL. */
static int label_line(const char *line, size_t len, size_t *klen, char *buf, size_t cap,
                      size_t *vlen)
{
        const char *eq = memchr(line, '=', len);
        if (!eq || eq == line || (size_t)(eq - line) > 317)
                return -EINVAL;
        *klen = (size_t)(eq - line);
        const char *p = eq + 1, *end = line + len;
        if (p >= end || *p != '"' || end - p < 2 || end[-1] != '"')
                return -EINVAL;
        p++;
        end--;
        size_t n = 0;
        for (; p < end; p++) {
                char c = *p;
                if (c == '\\') {
                        if (++p >= end)
                                return -EINVAL;
                        c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
                        if (*p != 'n' && *p != 't' && *p != '"' && *p != '\\')
                                return -EINVAL;
                } else if (c == '"') {
                        return -EINVAL;
                }
                if (n + 1 >= cap)
                        return -EINVAL;
                buf[n++] = c;
        }
        buf[n] = '\0';
        *vlen = n;
        return 0;
}

int authz_labels_read(const char *path, struct authz_labels **out, char *err, size_t errlen)
{
        *out = NULL;
        char *data;
        size_t len;
        int frc = file_read(path, AUTHZ_LABELS_FILE_MAX, &data, &len, err, errlen);
        if (frc < 0)
                return frc;
        struct authz_labels *l = calloc(1, sizeof(*l));
        char val[1024];
        int rc = l ? 0 : -ENOMEM;
        unsigned lineno = 0;
        for (size_t off = 0; rc == 0 && off < len;) {
                const char *line = data + off;
                const char *nl = memchr(line, '\n', len - off);
                size_t n = nl ? (size_t)(nl - line) : len - off;
                off += n + 1;
                lineno++;
                if (n == 0)
                        continue;
                size_t klen, vlen;
                if (label_line(line, n, &klen, val, sizeof(val), &vlen) < 0) {
                        snprintf(err, errlen, "%s:%u: not key=\"value\"", path, lineno);
                        rc = -EINVAL;
                } else if ((rc = labels_add(l, line, klen, val, vlen)) == -E2BIG) {
                        snprintf(err, errlen, "%s: more than %d labels", path, AUTHZ_MAX_LABELS);
                }
        }
        free(data);
        if (rc) {
                if (rc == -ENOMEM)
                        snprintf(err, errlen, "%s: out of memory", path);
                authz_labels_free(l);
                return rc;
        }
        *out = l;
        return 0;
}

int authz_labels_from_json(const cJSON *labels, struct authz_labels **out)
{
        *out = calloc(1, sizeof(**out));
        if (!*out)
                return -ENOMEM;
        const cJSON *e, *obj = cJSON_IsObject(labels) ? labels : NULL;
        cJSON_ArrayForEach(e, obj)
        {
                int rc = cJSON_IsString(e) ? labels_add(*out, e->string, strlen(e->string),
                                                        e->valuestring, strlen(e->valuestring))
                                           : -EINVAL;
                if (rc) {
                        authz_labels_free(*out);
                        *out = NULL;
                        return rc;
                }
        }
        return 0;
}

/* ---- objects ------------------------------------------------------------------- */

static void kobj_clear(struct kobj *o)
{
        free(o->name);
        free(o->spec);
        labels_clear(&o->sel);
        memset(o, 0, sizeof(*o));
}

static void set_clear(struct objset *s)
{
        for (size_t i = 0; i < s->n; i++)
                kobj_clear(&s->o[i]);
        free(s->o);
        s->o = NULL;
        s->n = 0;
}

static struct kobj *set_find(struct objset *s, const char *name)
{
        for (size_t i = 0; i < s->n; i++)
                if (!strcmp(s->o[i].name, name))
                        return &s->o[i];
        return NULL;
}

struct authz_kube *authz_kube_new(const char *ns, void (*changed)(void *arg), void *arg)
{
        struct authz_kube *k = calloc(1, sizeof(*k));
        if (!k || !(k->ns = strdup(ns))) {
                free(k);
                return NULL;
        }
        k->changed = changed;
        k->arg = arg;
        return k;
}

void authz_kube_free(struct authz_kube *k)
{
        if (!k)
                return;
        set_clear(&k->live);
        set_clear(&k->staging);
        authz_labels_free(k->labels);
        free(k->ns);
        free(k);
}

static void notify(struct authz_kube *k)
{
        if (k->changed)
                k->changed(k->arg);
}

const char *authz_kube_namespace(const struct authz_kube *k)
{
        return k->ns;
}

void authz_kube_set_labels(struct authz_kube *k, struct authz_labels *labels)
{
        authz_labels_free(k->labels);
        k->labels = labels;
}

void authz_kube_list_begin(void *arg)
{
        struct authz_kube *k = arg;
        set_clear(&k->staging);
}

void authz_kube_list_end(void *arg, bool complete)
{
        struct authz_kube *k = arg;
        if (!complete) {
                set_clear(&k->staging);
                return;
        }
        set_clear(&k->live);
        k->live = k->staging;
        k->staging = (struct objset){0};
        k->listed = true;
        notify(k);
}

size_t authz_kube_count(void *arg)
{
        return ((struct authz_kube *)arg)->live.n;
}

/* The selector and the validity of one object's spec: why[] stays "" when
 * it can apply. */
static int kobj_parse(struct kobj *o, const cJSON *spec)
{
        const cJSON *sel = cJSON_GetObjectItemCaseSensitive(spec, "selector");
        if (sel) {
                const cJSON *ml = cJSON_GetObjectItemCaseSensitive(sel, "matchLabels");
                const cJSON *e;
                bool ok = cJSON_IsObject(sel) && (!ml || cJSON_IsObject(ml)) &&
                          cJSON_GetArraySize(sel) == (ml ? 1 : 0);
                const cJSON *labels = ok ? ml : NULL;
                cJSON_ArrayForEach(e, labels)
                {
                        if (!cJSON_IsString(e)) {
                                ok = false;
                                break;
                        }
                        int rc = labels_add(&o->sel, e->string, strlen(e->string), e->valuestring,
                                            strlen(e->valuestring));
                        if (rc == -ENOMEM)
                                return rc;
                        if (rc) {
                                snprintf(o->why, sizeof(o->why),
                                         "spec.selector.matchLabels: more than %d labels",
                                         AUTHZ_MAX_LABELS);
                                return 0;
                        }
                }
                if (!ok) {
                        snprintf(o->why, sizeof(o->why),
                                 "spec.selector: only matchLabels with string values is supported");
                        return 0;
                }
                o->has_selector = o->sel.n > 0;
        }
        /* The policy itself, checked as it will be built. */
        struct authz *scratch = authz_new(NULL);
        if (!scratch)
                return -ENOMEM;
        char err[300];
        int rc =
            authz_add_policy(scratch, spec, "kubernetes", o->name, "selector", err, sizeof(err));
        authz_unref(scratch);
        if (rc == -ENOMEM)
                return rc;
        if (rc)
                snprintf(o->why, sizeof(o->why), "%s", err);
        return 0;
}

int authz_kube_apply(void *arg, bool listing, const cJSON *obj, bool deleted, char *err,
                     size_t errlen)
{
        struct authz_kube *k = arg;
        struct objset *set = listing ? &k->staging : &k->live;
        const cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(md, "name");
        const cJSON *ns = cJSON_GetObjectItemCaseSensitive(md, "namespace");
        /* A DNS subdomain, as the API server requires: safe in a log line. */
        if (!cJSON_IsString(name) || !name->valuestring[0] ||
            strlen(name->valuestring) > NAME_MAX_LEN ||
            strspn(name->valuestring, "abcdefghijklmnopqrstuvwxyz0123456789.-") !=
                strlen(name->valuestring)) {
                snprintf(err, errlen, "authorizationpolicy without a valid metadata.name");
                return -EINVAL;
        }
        if (cJSON_IsString(ns) && strcmp(ns->valuestring, k->ns)) {
                snprintf(err, errlen, "authorizationpolicy %s is not in namespace %s",
                         name->valuestring, k->ns);
                return -EINVAL;
        }
        struct kobj *old = set_find(set, name->valuestring);
        if (deleted) {
                if (old) {
                        kobj_clear(old);
                        *old = set->o[--set->n];
                }
                if (!listing)
                        notify(k);
                return 0;
        }
        const cJSON *spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
        struct kobj o = {0};
        o.name = strdup(name->valuestring);
        o.spec = cJSON_IsObject(spec) ? cJSON_PrintUnformatted(spec) : NULL;
        if (!o.name || (cJSON_IsObject(spec) && !o.spec)) {
                kobj_clear(&o);
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        if (!o.spec)
                snprintf(o.why, sizeof(o.why), "no spec object");
        else if (strlen(o.spec) > AUTHZ_MAX_SPEC_BYTES)
                snprintf(o.why, sizeof(o.why), "spec larger than %d bytes of JSON",
                         AUTHZ_MAX_SPEC_BYTES);
        else if (kobj_parse(&o, spec) < 0) {
                kobj_clear(&o);
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        if (o.why[0])
                log_warn(COMP, 0,
                         "kubernetes authorizationpolicy %s/%s is invalid and never applies: %s",
                         k->ns, o.name, o.why);
        if (old) {
                kobj_clear(old);
                *old = o;
        } else {
                if (set->n >= AUTHZ_MAX_POLICIES) {
                        snprintf(err, errlen,
                                 "authorizationpolicy %s/%s: more than %d objects in the "
                                 "namespace (the bound): refused",
                                 k->ns, o.name, AUTHZ_MAX_POLICIES);
                        kobj_clear(&o);
                        return -E2BIG;
                }
                struct kobj *no = realloc(set->o, (set->n + 1) * sizeof(*no));
                if (!no) {
                        kobj_clear(&o);
                        snprintf(err, errlen, "out of memory");
                        return -ENOMEM;
                }
                set->o = no;
                set->o[set->n++] = o;
        }
        if (!listing)
                notify(k);
        return 0;
}

/* "" when the object applies to a pod with these labels, else why not. */
static const char *applies_to(const struct authz_labels *labels, const struct kobj *o)
{
        if (o->why[0])
                return o->why;
        if (!o->has_selector)
                return "";
        if (!labels)
                return "the pod's labels are unknown (authorization.pod_labels_file)";
        for (size_t i = 0; i < o->sel.n; i++) {
                const char *v = labels_get(labels, o->sel.key[i]);
                if (!v || strcmp(v, o->sel.value[i]))
                        return "spec.selector does not match this pod's labels";
        }
        return "";
}

static int by_name(const void *a, const void *b)
{
        return strcmp(((const struct kobj *)a)->name, ((const struct kobj *)b)->name);
}

static const char *applies(const struct authz_kube *k, const struct kobj *o)
{
        return applies_to(k->labels, o);
}

struct authz *authz_kube_build(struct authz_kube *k, struct authz_stats *stats)
{
        return authz_kube_build_for(k, k->labels, stats);
}

struct authz *authz_kube_build_for(struct authz_kube *k, const struct authz_labels *labels,
                                   struct authz_stats *stats)
{
        struct authz *a = authz_new(stats);
        if (!a)
                return NULL;
        if (k->live.n > 1)
                qsort(k->live.o, k->live.n, sizeof(*k->live.o), by_name);
        for (size_t i = 0; i < k->live.n; i++) {
                const struct kobj *o = &k->live.o[i];
                if (applies_to(labels, o)[0])
                        continue;
                cJSON *spec = cJSON_Parse(o->spec);
                char err[400];
                int rc = spec ? authz_add_policy(a, spec, "kubernetes", o->name, "selector", err,
                                                 sizeof(err))
                              : -ENOMEM;
                cJSON_Delete(spec);
                if (rc == -ENOMEM) {
                        authz_unref(a);
                        return NULL;
                }
                if (rc)
                        log_error(COMP, 0, "kubernetes authorizationpolicy %s/%s left out: %s",
                                  k->ns, o->name, err);
        }
        return a;
}

void authz_kube_render(const struct authz_kube *k, struct strbuf *sb)
{
        strbuf_append(sb, "{\"namespace\":");
        strbuf_append_json_string(sb, k->ns);
        strbuf_appendf(sb, ",\"listed\":%s,\"labels\":", k->listed ? "true" : "false");
        if (!k->labels) {
                strbuf_append(sb, "null");
        } else {
                strbuf_append(sb, "{");
                for (size_t i = 0; i < k->labels->n; i++) {
                        strbuf_append(sb, i ? "," : "");
                        strbuf_append_json_string(sb, k->labels->key[i]);
                        strbuf_append(sb, ":");
                        strbuf_append_json_string(sb, k->labels->value[i]);
                }
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, ",\"objects\":[");
        for (size_t i = 0; i < k->live.n; i++) {
                const struct kobj *o = &k->live.o[i];
                const char *why = applies(k, o);
                strbuf_append(sb, i ? ",{\"name\":" : "{\"name\":");
                strbuf_append_json_string(sb, o->name);
                strbuf_appendf(sb, ",\"applies\":%s,\"why\":", why[0] ? "false" : "true");
                strbuf_append_json_string(sb, why);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
}

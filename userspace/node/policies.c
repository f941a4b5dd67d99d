// SPDX-License-Identifier: Apache-2.0
/* Node mode: each meshed pod's own authorization policies; see policies.h. */
#include "node/policies.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authz/authz.h"
#include "core/log.h"
#include "core/prom.h"

#define COMP "authz"

struct nsent {
        struct node_policies *np;
        struct authz_kube *k;
        bool incomplete, incomplete_staging; /* an object was refused (the bound) */
        struct nsent *next;
};

struct npod {
        uint64_t gen;
        char ns[DISC_NAME_MAX], name[K8S_MAX_OBJECT_NAME];
        struct authz_labels *labels; /* NULL: unreadable (fail closed) */
        char labels_why[120];
        struct authz_stats *stats; /* the pod's own; every set built holds a reference */
        struct authz *set;
        const char *fail_closed; /* why its set refuses everything, NULL */
        uint64_t builds;
        struct npod *next;
};

struct node_policies {
        bool kubernetes, listed, listing;
        bool overflow, overflow_staging; /* a namespace found no room */
        bool batch;                      /* list_end: one rebuild of every pod after */
        struct authz_stats *total;
        void (*changed)(void *ctx, uint64_t gen);
        void *ctx;
        struct authz *file;
        struct nsent *nss;
        size_t n_ns;
        struct npod *pods;
        struct k8s_object_sink sink;
        struct node_pods_observer obs;
        struct {
                uint64_t builds, build_failed, refused_objects;
        } c;
};

/* ---- a pod's set ------------------------------------------------------------------ */

static struct nsent *ns_find(struct node_policies *np, const char *ns)
{
        for (struct nsent *e = np->nss; e; e = e->next)
                if (!strcmp(authz_kube_namespace(e->k), ns))
                        return e;
        return NULL;
}

/* The set of pod p from what is known now; NULL without memory. */
static struct authz *build(struct node_policies *np, struct npod *p, const char **fail)
{
        struct authz *a = authz_new(p->stats);
        char scope[sizeof(p->ns) + sizeof(p->name) + 2], err[400] = "";
        snprintf(scope, sizeof(scope), "%s/%s", p->ns, p->name);
        if (!a || authz_set_scope(a, scope) < 0 || authz_merge(a, np->file, err, sizeof(err)) < 0) {
                authz_unref(a);
                return NULL;
        }
        struct nsent *e = ns_find(np, p->ns);
        *fail = !p->labels           ? "labels-unreadable"
                : e && e->incomplete ? "namespace-policies-incomplete"
                : !e && np->overflow ? "namespaces-bound-reached"
                                     : NULL;
        int rc = 0;
        if (e && !*fail) {
                struct authz *k = authz_kube_build_for(e->k, p->labels, NULL);
                rc = k ? authz_merge(a, k, err, sizeof(err)) : -ENOMEM;
                authz_unref(k);
        }
        if (rc == -ENOMEM) {
                authz_unref(a);
                return NULL;
        }
        if (rc) {
                log_error(COMP, 0,
                          "pod %s: its policies cannot be built (%s): it refuses every "
                          "connection (fail closed)",
                          scope, err);
                *fail = "policies-unbuildable";
        }
        if (*fail) {
                /* Only the deny-all rule: nothing else matters. */
                authz_unref(a);
                char name[64];
                snprintf(name, sizeof(name), "node/%s", *fail);
                a = authz_new(p->stats);
                if (!a || authz_set_scope(a, scope) < 0 ||
                    authz_add_deny_all(a, name, err, sizeof(err)) < 0) {
                        authz_unref(a);
                        return NULL;
                }
        }
        return a;
}

static void rebuild(struct node_policies *np, struct npod *p)
{
        const char *fail = NULL;
        struct authz *a = build(np, p, &fail);
        if (!a) {
                np->c.build_failed++;
                log_error(COMP, 0,
                          "pod %s/%s: out of memory building its policies: the "
                          "previous ones stay",
                          p->ns, p->name);
                return;
        }
        if (fail && fail != p->fail_closed)
                log_warn(COMP, 0,
                         "pod %s/%s refuses every inbound connection (fail closed): %s%s%s", p->ns,
                         p->name, fail, p->labels ? "" : ": ", p->labels ? "" : p->labels_why);
        else if (!fail && p->fail_closed)
                log_info(COMP, 0, "pod %s/%s: its policies are known again (was %s)", p->ns,
                         p->name, p->fail_closed);
        p->fail_closed = fail;
        authz_unref(p->set);
        p->set = a;
        p->builds++;
        np->c.builds++;
        log_debug(COMP, 0, "pod %s/%s: %zu policies, %zu rules", p->ns, p->name,
                  authz_policy_count(a), authz_rule_count(a));
        if (np->changed && np->listed)
                np->changed(np->ctx, p->gen);
}

static void rebuild_ns(struct node_policies *np, const char *ns)
{
        for (struct npod *p = np->pods; p; p = p->next)
                if (!ns || !strcmp(p->ns, ns))
                        rebuild(np, p);
}

static void set_labels(struct npod *p, const char *json)
{
        authz_labels_free(p->labels);
        p->labels = NULL;
        p->labels_why[0] = '\0';
        cJSON *j = json ? cJSON_Parse(json) : NULL;
        int rc = json && !j ? -EINVAL : authz_labels_from_json(j, &p->labels);
        cJSON_Delete(j);
        if (rc)
                snprintf(p->labels_why, sizeof(p->labels_why), "metadata.labels: %s",
                         rc == -E2BIG    ? "more labels than the bound (AUTHZ_MAX_LABELS)"
                         : rc == -ENOMEM ? "out of memory"
                                         : "not an object of strings");
}

/* ---- pods ---------------------------------------------------------------------------- */

static struct npod *pod_find(struct node_policies *np, uint64_t gen)
{
        for (struct npod *p = np->pods; p; p = p->next)
                if (p->gen == gen)
                        return p;
        return NULL;
}

static void on_ready(void *ctx, const struct node_pod_info *pod)
{
        struct node_policies *np = ctx;
        struct npod *p = calloc(1, sizeof(*p));
        if (p)
                p->stats = authz_stats_new(np->total);
        if (!p || !p->stats) {
                free(p);
                log_error(COMP, 0,
                          "pod %s/%s: out of memory: no policies (its connections are "
                          "not accepted)",
                          pod->ns, pod->name);
                return;
        }
        p->gen = pod->gen;
        snprintf(p->ns, sizeof(p->ns), "%s", pod->ns);
        snprintf(p->name, sizeof(p->name), "%s", pod->name);
        set_labels(p, pod->labels);
        p->next = np->pods;
        np->pods = p;
        rebuild(np, p);
}

static void on_updated(void *ctx, const struct node_pod_info *pod)
{
        struct node_policies *np = ctx;
        struct npod *p = pod_find(np, pod->gen);
        if (!p)
                return;
        set_labels(p, pod->labels);
        log_info(COMP, 0, "pod %s/%s: labels changed: its policies are chosen again", p->ns,
                 p->name);
        rebuild(np, p);
}

static void on_gone(void *ctx, const struct node_pod_info *pod)
{
        struct node_policies *np = ctx;
        for (struct npod **pp = &np->pods; *pp; pp = &(*pp)->next) {
                struct npod *p = *pp;
                if (p->gen != pod->gen)
                        continue;
                *pp = p->next;
                authz_unref(p->set); /* the proxy's own reference keeps it while it runs */
                authz_stats_unref(p->stats);
                authz_labels_free(p->labels);
                free(p);
                return;
        }
}

static void on_render(void *ctx, const struct node_pod_info *pod, struct strbuf *sb)
{
        struct node_policies *np = ctx;
        struct npod *p = pod->gen ? pod_find(np, pod->gen) : NULL;
        if (!p)
                return;
        strbuf_appendf(sb, ",\"authz\":{\"state\":\"%s\",\"policies\":",
                       !np->listed      ? "waiting_for_list"
                       : p->fail_closed ? "fail_closed"
                                        : "applied");
        authz_render_policy_names(p->set, sb);
        strbuf_append(sb, ",\"fail_closed\":");
        if (p->fail_closed)
                strbuf_append_json_string(sb, p->fail_closed);
        else
                strbuf_append(sb, "null");
        strbuf_appendf(sb, ",\"builds\":%llu,\"decisions\":{", (unsigned long long)p->builds);
        for (int r = 0; r < AUTHZ__REASONS; r++)
                strbuf_appendf(sb, "%s\"%s\":%llu", r ? "," : "", authz_reason_name(r),
                               (unsigned long long)atomic_load(&p->stats->decisions[r]));
        strbuf_append(sb, "}}");
}

/* ---- the objects ---------------------------------------------------------------------- */

static void ns_changed(void *arg)
{
        struct nsent *e = arg;
        if (!e->np->batch)
                rebuild_ns(e->np, authz_kube_namespace(e->k));
}

static void ns_free(struct nsent *e)
{
        authz_kube_free(e->k);
        free(e);
}

/* Namespaces without objects left are dropped. */
static void ns_prune(struct node_policies *np)
{
        for (struct nsent **pp = &np->nss; *pp;) {
                struct nsent *e = *pp;
                if (authz_kube_count(e->k) || e->incomplete) {
                        pp = &e->next;
                        continue;
                }
                *pp = e->next;
                np->n_ns--;
                ns_free(e);
        }
}

static void sink_begin(void *arg)
{
        struct node_policies *np = arg;
        np->listing = true;
        np->overflow_staging = false;
        for (struct nsent *e = np->nss; e; e = e->next) {
                authz_kube_list_begin(e->k);
                e->incomplete_staging = false;
        }
}

static void sink_end(void *arg, bool complete)
{
        struct node_policies *np = arg;
        np->listing = false;
        np->batch = true;
        for (struct nsent *e = np->nss; e; e = e->next) {
                authz_kube_list_end(e->k, complete);
                if (complete)
                        e->incomplete = e->incomplete_staging;
        }
        np->batch = false;
        if (!complete)
                return; /* what was listed is dropped; the live objects stay */
        np->overflow = np->overflow_staging;
        ns_prune(np);
        if (!np->listed)
                log_info(COMP, 0,
                         "authorization: AuthorizationPolicy objects of %zu namespaces listed: "
                         "each pod's own apply from now on",
                         np->n_ns);
        np->listed = true;
        rebuild_ns(np, NULL);
}

static bool valid_ns(const char *s)
{
        size_t n = strlen(s);
        return n && n < 64 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

static int sink_apply(void *arg, bool listing, const cJSON *obj, bool deleted, char *err,
                      size_t errlen)
{
        struct node_policies *np = arg;
        const cJSON *md = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
        const cJSON *ns = cJSON_GetObjectItemCaseSensitive(md, "namespace");
        if (!cJSON_IsString(ns) || !valid_ns(ns->valuestring)) {
                snprintf(err, errlen, "authorizationpolicy without a valid metadata.namespace");
                return -EINVAL;
        }
        struct nsent *e = ns_find(np, ns->valuestring);
        if (!e && deleted)
                return 0;
        if (!e) {
                if (np->n_ns >= NODE_POLICY_MAX_NAMESPACES) {
                        np->c.refused_objects++;
                        if (listing)
                                np->overflow_staging = true;
                        else if (!np->overflow) {
                                np->overflow = true;
                                rebuild_ns(np, ns->valuestring);
                        }
                        snprintf(err, errlen,
                                 "authorizationpolicy in namespace %s refused: objects of %d "
                                 "namespaces held (the bound); pods of namespaces without a "
                                 "place refuse every connection",
                                 ns->valuestring, NODE_POLICY_MAX_NAMESPACES);
                        return -E2BIG;
                }
                e = calloc(1, sizeof(*e));
                if (e && !(e->k = authz_kube_new(ns->valuestring, ns_changed, e))) {
                        free(e);
                        e = NULL;
                }
                if (!e) {
                        snprintf(err, errlen, "out of memory");
                        return -ENOMEM;
                }
                e->np = np;
                if (listing)
                        authz_kube_list_begin(e->k);
                e->next = np->nss;
                np->nss = e;
                np->n_ns++;
        }
        int rc = authz_kube_apply(e->k, listing, obj, deleted, err, errlen);
        if (!listing && deleted && !authz_kube_count(e->k) && !e->incomplete)
                ns_prune(np); /* its pods were rebuilt without it already */
        if (rc == -E2BIG) {
                np->c.refused_objects++;
                if (listing) {
                        e->incomplete_staging = true;
                } else if (!e->incomplete) {
                        e->incomplete = true;
                        rebuild_ns(np, ns->valuestring);
                }
        }
        return rc;
}

static size_t sink_count(void *arg)
{
        struct node_policies *np = arg;
        size_t n = 0;
        for (struct nsent *e = np->nss; e; e = e->next)
                n += authz_kube_count(e->k);
        return n;
}

/* ---- the table ------------------------------------------------------------------------ */

struct node_policies *node_policies_new(const struct node_policies_config *c)
{
        struct node_policies *np = calloc(1, sizeof(*np));
        if (!np)
                return NULL;
        np->kubernetes = c->kubernetes;
        np->listed = !c->kubernetes;
        np->total = c->total;
        np->changed = c->changed;
        np->ctx = c->ctx;
        np->sink.kind = "authorizationpolicies (every namespace)";
        snprintf(np->sink.path, sizeof(np->sink.path),
                 "/apis/shunt.io/v1alpha1/authorizationpolicies");
        np->sink.arg = np;
        np->sink.list_begin = sink_begin;
        np->sink.list_end = sink_end;
        np->sink.apply = sink_apply;
        np->sink.count = sink_count;
        np->obs = (struct node_pods_observer){.ready = on_ready,
                                              .gone = on_gone,
                                              .updated = on_updated,
                                              .render = on_render,
                                              .ctx = np};
        return np;
}

void node_policies_free(struct node_policies *np)
{
        if (!np)
                return;
        while (np->pods) {
                struct npod *p = np->pods;
                struct node_pod_info i = {.gen = p->gen};
                on_gone(np, &i);
        }
        while (np->nss) {
                struct nsent *e = np->nss;
                np->nss = e->next;
                ns_free(e);
        }
        authz_unref(np->file);
        free(np);
}

int node_policies_attach(struct node_policies *np, struct node_pods *pods)
{
        return node_pods_observe(pods, &np->obs);
}

const struct node_pods_observer *node_policies_observer(struct node_policies *np)
{
        return &np->obs;
}

const struct k8s_object_sink *node_policies_sink(struct node_policies *np)
{
        return &np->sink;
}

void node_policies_set_file(struct node_policies *np, struct authz *file)
{
        if (file)
                authz_ref(file);
        authz_unref(np->file);
        np->file = file;
        rebuild_ns(np, NULL);
}

struct authz *node_policies_get(struct node_policies *np, uint64_t gen)
{
        struct npod *p = np->listed ? pod_find(np, gen) : NULL;
        return p ? p->set : NULL;
}

void node_policies_render(struct node_policies *np, struct strbuf *sb)
{
        size_t fail = 0, n = 0;
        for (struct npod *p = np->pods; p; p = p->next) {
                fail += p->fail_closed != NULL;
                n++;
        }
        strbuf_appendf(sb,
                       "{\"kubernetes\":%s,\"listed\":%s,\"pods\":%zu,\"fail_closed_pods\":%zu,"
                       "\"max_namespaces\":%d,\"namespaces_full\":%s,\"counters\":{\"builds\":%llu,"
                       "\"build_failed\":%llu,\"refused_objects\":%llu},\"namespaces\":[",
                       np->kubernetes ? "true" : "false", np->listed ? "true" : "false", n, fail,
                       NODE_POLICY_MAX_NAMESPACES, np->overflow ? "true" : "false",
                       (unsigned long long)np->c.builds, (unsigned long long)np->c.build_failed,
                       (unsigned long long)np->c.refused_objects);
        for (struct nsent *e = np->nss; e; e = e->next) {
                if (e != np->nss)
                        strbuf_append(sb, ",");
                authz_kube_render(e->k, sb);
        }
        strbuf_append(sb, "]}");
}

void node_policies_render_metrics(struct node_policies *np, struct strbuf *sb)
{
        const char *fam = "shunt_node_pod_authz_decisions_total";
        prom_family(sb, fam, "counter",
                    "Inbound connections to a meshed pod decided by its authorization policies, "
                    "by outcome.");
        struct strbuf l;
        strbuf_init(&l);
        size_t fail = 0;
        for (struct npod *p = np->pods; p; p = p->next) {
                fail += p->fail_closed != NULL;
                for (int r = 0; r < AUTHZ__REASONS; r++) {
                        strbuf_reset(&l);
                        prom_label(&l, "namespace", p->ns);
                        prom_label(&l, "pod", p->name);
                        prom_label(&l, "decision", authz_reason_name(r));
                        prom_sample_u64(sb, fam, l.data, atomic_load(&p->stats->decisions[r]));
                }
        }
        strbuf_free(&l);
        prom_family(sb, "shunt_node_authz_builds_total", "counter",
                    "Meshed pods' policy sets built (a pod READY or relabelled, its namespace's "
                    "objects or the file changed).");
        prom_sample_u64(sb, "shunt_node_authz_builds_total", NULL, np->c.builds);
        prom_family(sb, "shunt_node_authz_fail_closed_pods", "gauge",
                    "Meshed pods refusing every inbound connection because the policies that "
                    "apply to them are not all known.");
        prom_sample_u64(sb, "shunt_node_authz_fail_closed_pods", NULL, fail);
}

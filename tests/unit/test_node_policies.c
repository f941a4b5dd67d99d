// SPDX-License-Identifier: Apache-2.0
/* node/policies: each meshed pod's own authorization policies, chosen by its
 * namespace and labels from AuthorizationPolicy objects of every namespace
 * (fed through the sink as the kubernetes backend feeds it), rebuilt when a
 * pod or an object changes, counted per pod, fail closed where the
 * policies are not all known. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authz/authz.h"
#include "node/policies.h"

#define TD "spiffe://cluster.local"

struct fx {
        struct authz_stats total;
        struct node_policies *np;
        const struct node_pods_observer *obs;
        const struct k8s_object_sink *sink;
        uint64_t changed[16];
        size_t n_changed;
};

static void on_changed(void *ctx, uint64_t gen)
{
        struct fx *f = ctx;
        if (f->n_changed < 16)
                f->changed[f->n_changed] = gen;
        f->n_changed++;
}

static struct fx *fx_new(void)
{
        struct fx *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        struct node_policies_config c = {
            .kubernetes = true, .total = &f->total, .changed = on_changed, .ctx = f};
        f->np = node_policies_new(&c);
        assert_non_null(f->np);
        f->obs = node_policies_observer(f->np);
        f->sink = node_policies_sink(f->np);
        return f;
}

static void fx_free(struct fx *f)
{
        node_policies_free(f->np);
        free(f);
}

static void pod(struct fx *f, uint64_t gen, const char *ns, const char *name, const char *labels,
                bool update)
{
        struct node_pod_info i = {
            .ns = ns, .name = name, .uid = "u", .sa = "sa", .gen = gen, .labels = labels};
        (update ? f->obs->updated : f->obs->ready)(f->obs->ctx, &i);
}

static void gone(struct fx *f, uint64_t gen)
{
        struct node_pod_info i = {.ns = "x", .name = "x", .gen = gen};
        f->obs->gone(f->obs->ctx, &i);
}

/* One AuthorizationPolicy object (JSON text of its spec) applied. */
static int object(struct fx *f, bool listing, const char *ns, const char *name, const char *spec,
                  bool deleted)
{
        char buf[2048], err[400] = "";
        snprintf(buf, sizeof(buf),
                 "{\"metadata\":{\"namespace\":\"%s\",\"name\":\"%s\"},\"spec\":%s}", ns, name,
                 spec ? spec : "{}");
        cJSON *o = cJSON_Parse(buf);
        assert_non_null(o);
        int rc = f->sink->apply(f->sink->arg, listing, o, deleted, err, sizeof(err));
        cJSON_Delete(o);
        return rc;
}

/* Whether pod gen admits peer on port (NULL set: not known yet -> false). */
static enum authz_reason decide(struct fx *f, uint64_t gen, uint16_t port, const char *peer)
{
        struct authz *a = node_policies_get(f->np, gen);
        assert_non_null(a);
        struct authz_verdict v;
        authz_check(a, port, peer, &v);
        return v.reason;
}

#define WEB_ONLY_FRONTEND                                                                          \
        "{\"selector\":{\"matchLabels\":{\"app\":\"web\"}},\"ports\":[8080],"                      \
        "\"allow\":[{\"namespace\":\"shop\",\"service_account\":\"frontend\"}]}"
#define DENY_ALL_TD "{\"ports\":[\"*\"],\"deny\":[{\"trust_domain\":\"cluster.local\"}]}"

/* The list: two pods in two namespaces, each with its own namespace's
 * objects; the agent's namespace's apply to none of them. */
static void listed(struct fx *f)
{
        pod(f, 1, "shop", "web-0", "{\"app\":\"web\"}", false);
        pod(f, 2, "billing", "ledger-0", "{\"app\":\"ledger\"}", false);
        /* Not listed yet: no set (the capture does not accept). */
        assert_null(node_policies_get(f->np, 1));
        assert_int_equal(f->n_changed, 0);
        f->sink->list_begin(f->sink->arg);
        assert_int_equal(object(f, true, "shop", "web-only-frontend", WEB_ONLY_FRONTEND, false), 0);
        assert_int_equal(object(f, true, "shunt-system", "agent-deny", DENY_ALL_TD, false), 0);
        f->sink->list_end(f->sink->arg, true);
        assert_int_equal(f->n_changed, 2);
}

static void test_each_pod_its_own(void **state)
{
        (void)state;
        struct fx *f = fx_new();
        listed(f);
        assert_int_equal(decide(f, 1, 8080, TD "/ns/shop/sa/frontend"), AUTHZ_OK);
        assert_int_equal(decide(f, 1, 8080, TD "/ns/shop/sa/batch"), AUTHZ_NOT_ALLOWED);
        assert_int_equal(decide(f, 1, 8080, NULL), AUTHZ_NO_IDENTITY);
        assert_int_equal(decide(f, 1, 7000, TD "/ns/shop/sa/batch"), AUTHZ_OK); /* no policy */
        /* ledger-0: nothing of shop's, nothing of the agent's namespace */
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/batch"), AUTHZ_OK);
        assert_int_equal(authz_policy_count(node_policies_get(f->np, 2)), 0);
        assert_string_equal(authz_scope(node_policies_get(f->np, 1)), "shop/web-0");
        /* Counted per pod and in the daemon's total. */
        struct strbuf sb;
        strbuf_init(&sb);
        node_policies_render_metrics(f->np, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_pod_authz_decisions_total{namespace=\"shop\","
                                        "pod=\"web-0\",decision=\"not_allowed\"} 1\n"));
        assert_non_null(strstr(sb.data, "shunt_node_pod_authz_decisions_total{namespace=\"shop\","
                                        "pod=\"web-0\",decision=\"allowed\"} 1\n"));
        assert_non_null(strstr(sb.data, "shunt_node_authz_fail_closed_pods 0\n"));
        strbuf_free(&sb);
        assert_int_equal(atomic_load(&f->total.decisions[AUTHZ_NOT_ALLOWED]), 1);
        assert_int_equal(atomic_load(&f->total.decisions[AUTHZ_NO_IDENTITY]), 1);
        /* GET /pods shows the pod's set. */
        strbuf_init(&sb);
        struct node_pod_info i = {.ns = "shop", .name = "web-0", .gen = 1};
        f->obs->render(f->obs->ctx, &i, &sb);
        assert_non_null(strstr(sb.data, "\"authz\":{\"state\":\"applied\",\"policies\":["
                                        "\"kubernetes/web-only-frontend\"]"));
        strbuf_free(&sb);
        fx_free(f);
}

static void test_rebuilt_on_change(void **state)
{
        (void)state;
        struct fx *f = fx_new();
        listed(f);
        /* web-0 relabelled: the selector no longer matches. */
        size_t n = f->n_changed;
        pod(f, 1, "shop", "web-0", "{\"app\":\"web2\"}", true);
        assert_int_equal(f->n_changed, n + 1);
        assert_int_equal(f->changed[n], 1);
        assert_int_equal(decide(f, 1, 8080, TD "/ns/shop/sa/batch"), AUTHZ_OK);
        /* An object of billing added by a watch event: only ledger-0 rebuilt. */
        n = f->n_changed;
        assert_int_equal(object(f, false, "billing", "no-batch",
                                "{\"ports\":[8080],\"deny\":[{\"service_account\":\"batch\"}]}",
                                false),
                         0);
        assert_int_equal(f->n_changed, n + 1);
        assert_int_equal(f->changed[n], 2);
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/batch"), AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/frontend"), AUTHZ_OK);
        /* Deleted: admitted again. */
        assert_int_equal(object(f, false, "billing", "no-batch", NULL, true), 0);
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/batch"), AUTHZ_OK);
        /* The file's policies apply to every pod, with each pod's own. */
        struct authz *file = authz_new(NULL);
        cJSON *j = cJSON_Parse("[{\"name\":\"f\",\"ports\":[9090],\"allow\":[{\"namespace\":"
                               "\"ops\"}]}]");
        char err[300];
        assert_int_equal(authz_add_policies(file, j, "file", err, sizeof(err)), 0);
        cJSON_Delete(j);
        node_policies_set_file(f->np, file);
        authz_unref(file);
        assert_int_equal(decide(f, 1, 9090, TD "/ns/shop/sa/web"), AUTHZ_NOT_ALLOWED);
        assert_int_equal(decide(f, 2, 9090, TD "/ns/ops/sa/x"), AUTHZ_OK);
        fx_free(f);
}

/* The set a proxy still holds outlives the pod's entry, and counts safely. */
static void test_set_outlives_pod(void **state)
{
        (void)state;
        struct fx *f = fx_new();
        listed(f);
        struct authz *a = node_policies_get(f->np, 1);
        authz_ref(a);
        gone(f, 1);
        assert_null(node_policies_get(f->np, 1));
        struct authz_verdict v;
        assert_false(authz_check(a, 8080, TD "/ns/shop/sa/batch", &v));
        assert_string_equal(v.policy, "kubernetes/web-only-frontend");
        authz_unref(a);
        assert_int_equal(atomic_load(&f->total.decisions[AUTHZ_NOT_ALLOWED]), 1);
        fx_free(f);
}

static void test_fail_closed(void **state)
{
        (void)state;
        struct fx *f = fx_new();
        listed(f);
        /* Labels that cannot be read: selectors cannot be decided. */
        pod(f, 3, "shop", "odd-0", "{\"app\":7}", false);
        assert_int_equal(decide(f, 3, 7000, TD "/ns/shop/sa/frontend"), AUTHZ_DENIED_BY_POLICY);
        /* A namespace past its bound of objects: one refused. */
        char name[32];
        for (int i = 0; i < AUTHZ_MAX_POLICIES; i++) {
                snprintf(name, sizeof(name), "p%d", i);
                assert_int_equal(object(f, false, "billing", name, DENY_ALL_TD, false), 0);
        }
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/batch"), AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(object(f, false, "billing", "one-more",
                                "{\"ports\":[1],\"allow\":[{\"namespace\":\"x\"}]}", false),
                         -E2BIG);
        struct authz_verdict v;
        authz_check(node_policies_get(f->np, 2), 1, NULL, &v);
        assert_int_equal(v.reason, AUTHZ_NO_IDENTITY);
        assert_string_equal(v.policy, "node/namespace-policies-incomplete");
        struct strbuf sb;
        strbuf_init(&sb);
        node_policies_render_metrics(f->np, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_authz_fail_closed_pods 2\n"));
        strbuf_free(&sb);
        /* A complete relist that fits: known again. */
        f->sink->list_begin(f->sink->arg);
        assert_int_equal(object(f, true, "shop", "web-only-frontend", WEB_ONLY_FRONTEND, false), 0);
        f->sink->list_end(f->sink->arg, true);
        assert_int_equal(decide(f, 2, 8080, TD "/ns/shop/sa/batch"), AUTHZ_OK);
        assert_int_equal(decide(f, 1, 8080, TD "/ns/shop/sa/batch"), AUTHZ_NOT_ALLOWED);
        /* A failed relist changes nothing. */
        f->sink->list_begin(f->sink->arg);
        f->sink->list_end(f->sink->arg, false);
        assert_int_equal(decide(f, 1, 8080, TD "/ns/shop/sa/batch"), AUTHZ_NOT_ALLOWED);
        /* An object without a namespace is refused with a line. */
        cJSON *o = cJSON_Parse("{\"metadata\":{\"name\":\"x\"},\"spec\":{}}");
        char err[300] = "";
        assert_int_equal(f->sink->apply(f->sink->arg, false, o, false, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "metadata.namespace"));
        cJSON_Delete(o);
        fx_free(f);
}

/* Without Kubernetes' objects: the file's only, known at once. */
static void test_file_only(void **state)
{
        (void)state;
        struct node_policies_config c = {.kubernetes = false};
        struct node_policies *np = node_policies_new(&c);
        assert_non_null(np);
        struct node_pod_info i = {.ns = "shop", .name = "web-0", .gen = 5, .labels = NULL};
        node_policies_observer(np)->ready(node_policies_observer(np)->ctx, &i);
        struct authz *a = node_policies_get(np, 5);
        assert_non_null(a);
        assert_int_equal(authz_policy_count(a), 0);
        node_policies_free(np);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_each_pod_its_own), cmocka_unit_test(test_rebuilt_on_change),
            cmocka_unit_test(test_set_outlives_pod), cmocka_unit_test(test_fail_closed),
            cmocka_unit_test(test_file_only),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

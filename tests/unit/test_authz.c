// SPDX-License-Identifier: Apache-2.0
/* authz/authz.c: the policy format, its bounds and errors, and the decision
 * (deny first, then allow; no rule admits; no identity on a protected port
 * is refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "authz/authz.h"

#define TD "spiffe://cluster.local"

static struct authz_stats stats;

/* Adds the policies of a JSON array text; returns the rc, err filled. */
static int add(struct authz *a, const char *json, char *err, size_t len)
{
        cJSON *j = cJSON_Parse(json);
        assert_non_null(j);
        int rc = authz_add_policies(a, j, "file", err, len);
        cJSON_Delete(j);
        return rc;
}

static struct authz *build(const char *json)
{
        struct authz *a = authz_new(&stats);
        char err[512];
        int rc = add(a, json, err, sizeof(err));
        if (rc)
                fail_msg("%s", err);
        return a;
}

static enum authz_reason check(const struct authz *a, uint16_t port, const char *id,
                               const char **policy)
{
        struct authz_verdict v;
        bool ok = authz_check(a, port, id, &v);
        assert_int_equal(ok, v.reason == AUTHZ_OK);
        if (policy)
                *policy = v.policy;
        return v.reason;
}

static void test_no_rule_admits(void **state)
{
        struct authz *a = authz_new(&stats);
        assert_int_equal(check(a, 80, TD "/ns/a/sa/b", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, NULL, NULL), AUTHZ_OK);
        assert_int_equal(check(NULL, 80, "", NULL), AUTHZ_OK);
        assert_false(authz_port_protected(a, 80));
        char buf[64];
        authz_describe_ports(a, buf, sizeof(buf));
        assert_string_equal(buf, "none");
        authz_unref(a);
}

static void test_deny_before_allow(void **state)
{
        /* The same identity allowed by one policy and denied by another:
         * the deny wins, whatever the order. */
        struct authz *a = build(
            "[{\"name\":\"allow-shop\",\"ports\":[8080],\"allow\":[{\"namespace\":\"shop\"}]},"
            " {\"name\":\"no-batch\",\"ports\":[\"*\"],\"deny\":[{\"namespace\":\"shop\","
            "\"service_account\":\"batch\"}]}]");
        const char *pol;
        assert_int_equal(check(a, 8080, TD "/ns/shop/sa/web", &pol), AUTHZ_OK);
        assert_string_equal(pol, "file/allow-shop");
        assert_int_equal(check(a, 8080, TD "/ns/shop/sa/batch", &pol), AUTHZ_DENIED_BY_POLICY);
        assert_string_equal(pol, "file/no-batch");
        /* Not in the allow list of 8080. */
        assert_int_equal(check(a, 8080, TD "/ns/other/sa/web", &pol), AUTHZ_NOT_ALLOWED);
        assert_string_equal(pol, "file/allow-shop");
        /* 9090 has only the "*" deny: others pass, batch does not. */
        assert_int_equal(check(a, 9090, TD "/ns/other/sa/web", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 9090, TD "/ns/shop/sa/batch", NULL), AUTHZ_DENIED_BY_POLICY);
        /* No identity on a port with any rule: refused (D3). */
        assert_int_equal(check(a, 8080, NULL, &pol), AUTHZ_NO_IDENTITY);
        assert_string_equal(pol, "file/allow-shop");
        assert_int_equal(check(a, 9090, "", &pol), AUTHZ_NO_IDENTITY);
        assert_string_equal(pol, "file/no-batch"); /* deny rules only: the first policy */
        assert_true(authz_port_protected(a, 1));
        char buf[64];
        authz_describe_ports(a, buf, sizeof(buf));
        assert_string_equal(buf, "every port, 8080");
        authz_unref(a);

        /* Reversed order, same answers. */
        a = build(
            "[{\"name\":\"no-batch\",\"ports\":[8080],\"deny\":[{\"service_account\":"
            "\"batch\"}]},"
            " {\"name\":\"allow-shop\",\"ports\":[8080],\"allow\":[{\"namespace\":\"shop\"}]}]");
        assert_int_equal(check(a, 8080, TD "/ns/shop/sa/batch", NULL), AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(check(a, 8080, TD "/ns/shop/sa/web", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 8081, NULL, NULL), AUTHZ_OK); /* no rule for 8081 */
        authz_unref(a);
}

static void test_principals(void **state)
{
        struct authz *a = build("[{\"name\":\"p\",\"ports\":[80,\"443\"],\"allow\":["
                                "{\"identity\":\"spiffe://cluster.local/ns/a/sa/exact\"},"
                                "{\"namespace\":\"ns1\"},"
                                "{\"service_account\":\"anyns\"},"
                                "{\"namespace\":\"ns2\",\"service_account\":\"only\"},"
                                "{\"trust_domain\":\"partner.org\",\"namespace\":\"x\"}]}]");
        assert_int_equal(check(a, 80, TD "/ns/a/sa/exact", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 443, TD "/ns/a/sa/exact", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/a/sa/exact2", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/a/sa/exac", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/ns1/sa/whatever", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/ns10/sa/whatever", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/ns/sa/ns1", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/zzz/sa/anyns", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/ns2/sa/only", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/ns2/sa/other", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, "spiffe://partner.org/ns/x/sa/y", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/x/sa/y", NULL), AUTHZ_NOT_ALLOWED);
        /* Not the mesh form: namespace and service-account rules cannot match. */
        assert_int_equal(check(a, 80, TD "/workload/ns1", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/ns1/sa/x/extra", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/ns1", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 8080, TD "/ns/q/sa/q", NULL), AUTHZ_OK); /* other port */
        authz_unref(a);
}

/* Federation: with the local trust domain set, an allow principal naming a
 * namespace or service account without trust_domain is ours only; one that
 * names the other domain (or an exact identity of it) admits it; deny
 * principals keep matching every domain. */
static void test_local_trust_domain(void **state)
{
        struct authz *a = build("[{\"name\":\"p\",\"ports\":[80],"
                                "\"deny\":[{\"namespace\":\"legacy\"}],\"allow\":["
                                "{\"namespace\":\"shop\"},"
                                "{\"service_account\":\"ops\"},"
                                "{\"trust_domain\":\"partner.org\",\"namespace\":\"shop\"},"
                                "{\"identity\":\"spiffe://partner.org/ns/a/sa/b\"},"
                                "{\"namespace\":\"legacy\"}]}]");
        /* Unset: as before, any domain. */
        assert_int_equal(check(a, 80, "spiffe://other.org/ns/shop/sa/x", NULL), AUTHZ_OK);
        authz_set_local_trust_domain(a, "cluster.local");
        assert_int_equal(check(a, 80, TD "/ns/shop/sa/x", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, TD "/ns/any/sa/ops", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, "spiffe://other.org/ns/shop/sa/x", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, "spiffe://other.org/ns/any/sa/ops", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, "spiffe://partner.org/ns/shop/sa/x", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, "spiffe://partner.org/ns/a/sa/b", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 80, "spiffe://partner.org/ns/a/sa/c", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, "spiffe://partner.org/ns/legacy/sa/x", NULL),
                         AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(check(a, 80, TD "/ns/legacy/sa/x", NULL), AUTHZ_DENIED_BY_POLICY);
        /* A merged set (node mode's per-pod ones) carries it. */
        struct authz *m = authz_new(&stats);
        char err[256];
        assert_int_equal(authz_merge(m, a, err, sizeof(err)), 0);
        assert_int_equal(check(m, 80, "spiffe://other.org/ns/shop/sa/x", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(m, 80, TD "/ns/shop/sa/x", NULL), AUTHZ_OK);
        authz_unref(m);
        authz_set_local_trust_domain(a, NULL);
        assert_int_equal(check(a, 80, "spiffe://other.org/ns/shop/sa/x", NULL), AUTHZ_OK);
        authz_unref(a);
}

static void test_mtls_allow(void **state)
{
        struct authz *a = authz_new(&stats);
        char err[256];
        assert_int_equal(authz_add_allow(a, 8080, TD "/ns/a/sa/one", err, sizeof(err)), 0);
        assert_int_equal(authz_add_allow(a, 8080, TD "/ns/a/sa/two", err, sizeof(err)), 0);
        assert_int_equal(authz_add_allow(a, 0, TD "/ns/ops/sa/admin", err, sizeof(err)), 0);
        assert_int_equal(authz_policy_count(a), 2);
        assert_int_equal(authz_rule_count(a), 3);
        assert_int_equal(check(a, 8080, TD "/ns/a/sa/two", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 8080, TD "/ns/ops/sa/admin", NULL), AUTHZ_OK);
        assert_int_equal(check(a, 7000, TD "/ns/a/sa/two", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(authz_add_allow(a, 80, "spiffe://Bad/x", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "mtls.allow: identity \"spiffe://Bad/x\" is not a SPIFFE ID"));
        struct strbuf sb;
        strbuf_init(&sb);
        authz_render_allow_ids(a, &sb);
        assert_string_equal(sb.data, "[{\"port\":8080,\"id\":\"" TD "/ns/a/sa/one\"},"
                                     "{\"port\":8080,\"id\":\"" TD "/ns/a/sa/two\"},"
                                     "{\"port\":0,\"id\":\"" TD "/ns/ops/sa/admin\"}]");
        strbuf_reset(&sb);
        authz_render_policies(a, &sb);
        assert_string_equal(sb.data,
                            "[{\"name\":\"mtls.allow/8080\",\"ports\":[8080],\"deny\":[],"
                            "\"allow\":[{\"identity\":\"" TD "/ns/a/sa/one\"},{\"identity\":\"" TD
                            "/ns/a/sa/two\"}]},{\"name\":\"mtls.allow/*\",\"ports\":[\"*\"],"
                            "\"deny\":[],\"allow\":[{\"identity\":\"" TD "/ns/ops/sa/admin\"}]}]");
        strbuf_free(&sb);
        authz_unref(a);
}

static void test_merge(void **state)
{
        struct authz *file = build("[{\"name\":\"a\",\"ports\":[80],\"allow\":[{\"namespace\":"
                                   "\"x\"}]}]");
        struct authz *k8s = authz_new(&stats);
        char err[256];
        cJSON *spec = cJSON_Parse("{\"ports\":[80],\"deny\":[{\"service_account\":\"bad\"}],"
                                  "\"selector\":{\"matchLabels\":{\"app\":\"web\"}}}");
        /* "selector" is the caller's to read; a name inside the spec is not ours. */
        assert_int_equal(
            authz_add_policy(k8s, spec, "kubernetes", "a", "selector", err, sizeof(err)), 0);
        cJSON_Delete(spec);
        spec =
            cJSON_Parse("{\"name\":\"n\",\"ports\":[80],\"deny\":[{\"service_account\":\"b\"}]}");
        assert_int_equal(
            authz_add_policy(k8s, spec, "kubernetes", "b", "selector", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "policy kubernetes/b: unknown key \"name\""));
        cJSON_Delete(spec);

        struct authz *m = authz_new(&stats);
        assert_int_equal(authz_merge(m, file, err, sizeof(err)), 0);
        assert_int_equal(authz_merge(m, k8s, err, sizeof(err)), 0);
        assert_int_equal(authz_policy_count(m), 2);
        /* the same name from two sources is two policies */
        assert_int_equal(check(m, 80, TD "/ns/x/sa/bad", NULL), AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(check(m, 80, TD "/ns/x/sa/good", NULL), AUTHZ_OK);
        authz_unref(file);
        authz_unref(k8s);
        /* m owns copies */
        assert_int_equal(check(m, 80, TD "/ns/y/sa/good", NULL), AUTHZ_NOT_ALLOWED);
        authz_unref(m);
}

static void expect_error(const char *json, int rc, const char *want)
{
        struct authz *a = authz_new(&stats);
        char err[512] = "";
        assert_int_equal(add(a, json, err, sizeof(err)), rc);
        if (!strstr(err, want))
                fail_msg("error \"%s\" does not contain \"%s\"", err, want);
        assert_int_equal(authz_policy_count(a), 0); /* nothing half-added */
        authz_unref(a);
}

static void test_bad_input(void **state)
{
        expect_error("{}", -EINVAL, "expected an array of policies");
        expect_error("[1]", -EINVAL, "[0]: a policy must be a JSON object");
        expect_error("[{\"ports\":[80],\"allow\":[{\"namespace\":\"a\"}]}]", -EINVAL,
                     "[0]: policy name is missing");
        expect_error("[{\"name\":\"a b\",\"ports\":[80],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "policy name is missing or invalid");
        expect_error("[{\"name\":\"p\",\"allow\":[{\"namespace\":\"a\"}]}]", -EINVAL,
                     "policy file/p: ports must be a non-empty array");
        expect_error("[{\"name\":\"p\",\"ports\":[],\"allow\":[{\"namespace\":\"a\"}]}]", -EINVAL,
                     "ports must be a non-empty array");
        expect_error("[{\"name\":\"p\",\"ports\":[0],\"allow\":[{\"namespace\":\"a\"}]}]", -EINVAL,
                     "policy file/p: port 0: expected 1..65535 or \"*\"");
        expect_error("[{\"name\":\"p\",\"ports\":[65536],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "port 65536: expected");
        expect_error("[{\"name\":\"p\",\"ports\":[\"08\"],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "port \"08\": expected");
        expect_error("[{\"name\":\"p\",\"ports\":[1.5],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "port 1.5: expected");
        expect_error("[{\"name\":\"p\",\"ports\":[80,80],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "port 80 listed twice");
        expect_error("[{\"name\":\"p\",\"ports\":[80]}]", -EINVAL,
                     "policy file/p: no rule: give a non-empty allow or deny list");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[]}]", -EINVAL, "no rule");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":{}}]", -EINVAL,
                     "allow must be an array of principals");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{}]}]", -EINVAL,
                     "allow[0]: an empty principal would match everyone");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"deny\":[{\"namespace\":\"a\"},"
                     "{\"name_space\":\"b\"}]}]",
                     -EINVAL, "deny[1]: unknown key \"name_space\" in a principal");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":7}]}]", -EINVAL,
                     "principal's namespace must be a string");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":\"a/b\"}]}]",
                     -EINVAL, "namespace \"a/b\" is not a valid name");
        /* Input in an error line is escaped: it stays one line. */
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":\"a\\nb\\\"\"}]}]",
                     -EINVAL, "namespace \"a\\nb\\\"\" is not a valid name");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"x\\ny\":\"a\"}]}]", -EINVAL,
                     "unknown key \"x\\ny\" in a principal");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"service_account\":\"..\"}]}]",
                     -EINVAL, "service_account \"..\" is not a valid name");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"trust_domain\":\"A_B:1\"}]}]",
                     -EINVAL, "trust_domain \"A_B:1\" is not a valid trust domain");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"identity\":\"http://x/y\"}]}]",
                     -EINVAL, "identity \"http://x/y\" is not a SPIFFE ID");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"identity\":\"" TD
                     "/ns/a/sa/b\",\"namespace\":\"a\"}]}]",
                     -EINVAL, "identity names one peer exactly");
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":\"a\"}],"
                     "\"action\":\"ALLOW\"}]",
                     -EINVAL, "policy file/p: unknown key \"action\"");
        /* A bad second policy removes the first one again. */
        expect_error("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":\"a\"}]},"
                     " {\"name\":\"p\",\"ports\":[81],\"allow\":[{\"namespace\":\"a\"}]}]",
                     -EINVAL, "[1]: policy file/p is defined twice");
}

static void test_bounds(void **state)
{
        /* Ports per policy. */
        char buf[65536];
        int n = snprintf(buf, sizeof(buf), "[{\"name\":\"p\",\"ports\":[");
        for (int i = 1; i <= AUTHZ_MAX_PORTS + 1; i++)
                n += snprintf(buf + n, sizeof(buf) - n, "%s%d", i > 1 ? "," : "", i);
        snprintf(buf + n, sizeof(buf) - n, "],\"allow\":[{\"namespace\":\"a\"}]}]");
        expect_error(buf, -E2BIG, "33 ports, at most 32 are allowed");
        /* Principals per list. */
        n = snprintf(buf, sizeof(buf), "[{\"name\":\"p\",\"ports\":[1],\"deny\":[");
        for (int i = 0; i <= AUTHZ_MAX_PRINCIPALS; i++)
                n += snprintf(buf + n, sizeof(buf) - n, "%s{\"namespace\":\"n%d\"}", i ? "," : "",
                              i);
        snprintf(buf + n, sizeof(buf) - n, "]}]");
        expect_error(buf, -E2BIG, "deny has 65 principals, at most 64 are allowed");
        /* Policies per array. */
        n = snprintf(buf, sizeof(buf), "[");
        for (int i = 0; i <= AUTHZ_MAX_POLICIES; i++)
                n +=
                    snprintf(buf + n, sizeof(buf) - n,
                             "%s{\"name\":\"p%d\",\"ports\":[1],\"allow\":[{\"namespace\":\"a\"}]}",
                             i ? "," : "", i);
        snprintf(buf + n, sizeof(buf) - n, "]");
        expect_error(buf, -E2BIG, "129 policies, at most 128 are allowed");
        /* Rules in all: 32 ports x 64 principals = 2048 per policy; the third
         * policy would pass 4096. */
        n = snprintf(buf, sizeof(buf), "[");
        for (int p = 0; p < 3; p++) {
                n += snprintf(buf + n, sizeof(buf) - n, "%s{\"name\":\"p%d\",\"ports\":[",
                              p ? "," : "", p);
                for (int i = 1; i <= AUTHZ_MAX_PORTS; i++)
                        n += snprintf(buf + n, sizeof(buf) - n, "%s%d", i > 1 ? "," : "", i);
                n += snprintf(buf + n, sizeof(buf) - n, "],\"allow\":[");
                for (int i = 0; i < AUTHZ_MAX_PRINCIPALS; i++)
                        n += snprintf(buf + n, sizeof(buf) - n, "%s{\"namespace\":\"n%d\"}",
                                      i ? "," : "", i);
                n += snprintf(buf + n, sizeof(buf) - n, "]}");
        }
        snprintf(buf + n, sizeof(buf) - n, "]");
        assert_true((size_t)n < sizeof(buf) - 8);
        expect_error(buf, -E2BIG, "policy file/p2: more than 4096 rules");
}

static void test_counted(void **state)
{
        memset(&stats, 0, sizeof(stats));
        struct authz *a = build("[{\"name\":\"p\",\"ports\":[80],\"allow\":[{\"namespace\":\"a\"}],"
                                "\"deny\":[{\"namespace\":\"b\"}]}]");
        check(a, 80, TD "/ns/a/sa/x", NULL);
        check(a, 80, TD "/ns/b/sa/x", NULL);
        check(a, 80, TD "/ns/c/sa/x", NULL);
        check(a, 80, NULL, NULL);
        check(a, 81, NULL, NULL); /* no policy: not a decision of ours */
        assert_int_equal(stats.decisions[AUTHZ_OK], 1);
        assert_int_equal(stats.decisions[AUTHZ_DENIED_BY_POLICY], 1);
        assert_int_equal(stats.decisions[AUTHZ_NOT_ALLOWED], 1);
        assert_int_equal(stats.decisions[AUTHZ_NO_IDENTITY], 1);
        struct strbuf sb;
        strbuf_init(&sb);
        authz_render_metrics(&stats, &sb);
        assert_non_null(
            strstr(sb.data, "shunt_authz_decisions_total{decision=\"no_identity\"} 1\n"));
        assert_non_null(strstr(sb.data, "shunt_authz_decisions_total{decision=\"allowed\"} 1\n"));
        strbuf_free(&sb);
        authz_unref(a);
}

/* ---- Kubernetes objects --------------------------------------------------------- */

static int changes;
static void on_change(void *arg)
{
        (void)arg;
        changes++;
}

static char *write_tmp(const char *text)
{
        static char path[64];
        snprintf(path, sizeof(path), "/tmp/test_authz_labels.XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

static void test_labels_file(void **state)
{
        struct authz_labels *l = NULL;
        char err[300];
        char *p = write_tmp("app=\"web\"\nversion=\"v1\"\nnote=\"a \\\"q\\\" \\\\ b\"\n\n");
        assert_int_equal(authz_labels_read(p, &l, err, sizeof(err)), 0);
        unlink(p);
        struct authz_kube *k = authz_kube_new("default", on_change, NULL);
        authz_kube_set_labels(k, l);
        struct strbuf sb;
        strbuf_init(&sb);
        authz_kube_render(k, &sb);
        assert_non_null(strstr(sb.data, "\"labels\":{\"app\":\"web\",\"version\":\"v1\","
                                        "\"note\":\"a \\\"q\\\" \\\\ b\"}"));
        strbuf_free(&sb);
        authz_kube_free(k);

        const char *bad[] = {"app=web\n", "=\"x\"\n", "app=\"x\n", "app=\"a\"b\"\n",
                             "app=\"bad \\q\"\n"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                p = write_tmp(bad[i]);
                assert_int_equal(authz_labels_read(p, &l, err, sizeof(err)), -EINVAL);
                assert_non_null(strstr(err, ":1: not key=\"value\""));
                unlink(p);
        }
        char many[8192];
        size_t n = 0;
        for (int i = 0; i <= AUTHZ_MAX_LABELS; i++)
                n += (size_t)snprintf(many + n, sizeof(many) - n, "l%d=\"v\"\n", i);
        p = write_tmp(many);
        assert_int_equal(authz_labels_read(p, &l, err, sizeof(err)), -E2BIG);
        assert_non_null(strstr(err, "more than 64 labels"));
        unlink(p);
        assert_int_equal(authz_labels_read("/nonexistent/labels", &l, err, sizeof(err)), -ENOENT);
        assert_null(l);
}

static int kapply(struct authz_kube *k, bool listing, const char *json, bool deleted, char *err,
                  size_t len)
{
        cJSON *o = cJSON_Parse(json);
        assert_non_null(o);
        int rc = authz_kube_apply(k, listing, o, deleted, err, len);
        cJSON_Delete(o);
        return rc;
}

#define KOBJ(name, spec)                                                                           \
        "{\"metadata\":{\"name\":\"" name "\",\"namespace\":\"shop\"},\"spec\":" spec "}"

static void test_kube_objects(void **state)
{
        char err[300];
        changes = 0;
        struct authz_kube *k = authz_kube_new("shop", on_change, NULL);
        struct authz_labels *l = NULL;
        char *p = write_tmp("app=\"web\"\ntier=\"front\"\n");
        assert_int_equal(authz_labels_read(p, &l, err, sizeof(err)), 0);
        unlink(p);
        authz_kube_set_labels(k, l);

        /* A list: nothing changes until it completes. */
        authz_kube_list_begin(k);
        assert_int_equal(kapply(k, true,
                                KOBJ("b-mine", "{\"selector\":{\"matchLabels\":{\"app\":\"web\","
                                               "\"tier\":\"front\"}},\"ports\":[80],"
                                               "\"deny\":[{\"namespace\":\"x\"}]}"),
                                false, err, sizeof(err)),
                         0);
        assert_int_equal(kapply(k, true,
                                KOBJ("a-all", "{\"ports\":[\"*\"],\"allow\":[{\"namespace\":"
                                              "\"shop\"}]}"),
                                false, err, sizeof(err)),
                         0);
        assert_int_equal(kapply(k, true,
                                KOBJ("c-other", "{\"selector\":{\"matchLabels\":{\"app\":"
                                                "\"web\",\"tier\":\"back\"}},\"ports\":[80],"
                                                "\"deny\":[{\"namespace\":\"shop\"}]}"),
                                false, err, sizeof(err)),
                         0);
        /* invalid: kept, shown, never applied */
        assert_int_equal(
            kapply(k, true, KOBJ("d-bad", "{\"ports\":[80]}"), false, err, sizeof(err)), 0);
        assert_int_equal(kapply(k, true,
                                KOBJ("e-expr", "{\"selector\":{\"matchExpressions\":[]},"
                                               "\"ports\":[80],\"deny\":[{\"namespace\":\"x\"}]}"),
                                false, err, sizeof(err)),
                         0);
        assert_int_equal(authz_kube_count(k), 0);
        assert_int_equal(changes, 0);
        authz_kube_list_end(k, true);
        assert_int_equal(changes, 1);
        assert_int_equal(authz_kube_count(k), 5);

        struct authz *a = authz_kube_build(k, &stats);
        assert_int_equal(authz_policy_count(a), 2); /* a-all and b-mine, in name order */
        struct strbuf sb;
        strbuf_init(&sb);
        authz_render_policies(a, &sb);
        assert_non_null(strstr(sb.data, "[{\"name\":\"kubernetes/a-all\""));
        assert_non_null(strstr(sb.data, "},{\"name\":\"kubernetes/b-mine\""));
        strbuf_reset(&sb);
        authz_kube_render(k, &sb);
        assert_non_null(strstr(sb.data, "\"name\":\"c-other\",\"applies\":false,\"why\":"
                                        "\"spec.selector does not match this pod's labels\""));
        assert_non_null(strstr(sb.data, "\"name\":\"d-bad\",\"applies\":false,\"why\":"
                                        "\"policy kubernetes/d-bad: no rule"));
        assert_non_null(strstr(sb.data, "\"name\":\"e-expr\",\"applies\":false,\"why\":"
                                        "\"spec.selector: only matchLabels"));
        assert_non_null(strstr(sb.data, "\"listed\":true"));
        strbuf_free(&sb);
        assert_int_equal(check(a, 80, TD "/ns/x/sa/y", NULL), AUTHZ_DENIED_BY_POLICY);
        assert_int_equal(check(a, 80, TD "/ns/shop/sa/y", NULL), AUTHZ_OK);
        authz_unref(a);

        /* Events: modified, deleted, another namespace, no name. */
        assert_int_equal(kapply(k, false,
                                KOBJ("a-all", "{\"ports\":[\"*\"],\"allow\":[{\"namespace\":"
                                              "\"ops\"}]}"),
                                false, err, sizeof(err)),
                         0);
        assert_int_equal(changes, 2);
        assert_int_equal(kapply(k, false, KOBJ("b-mine", "{}"), true, err, sizeof(err)), 0);
        assert_int_equal(changes, 3);
        assert_int_equal(kapply(k, false,
                                "{\"metadata\":{\"name\":\"x\",\"namespace\":\"default\"},"
                                "\"spec\":{}}",
                                false, err, sizeof(err)),
                         -EINVAL);
        assert_non_null(strstr(err, "is not in namespace shop"));
        assert_int_equal(kapply(k, false, "{\"metadata\":{},\"spec\":{}}", false, err, sizeof(err)),
                         -EINVAL);
        a = authz_kube_build(k, &stats);
        assert_int_equal(authz_policy_count(a), 1);
        assert_int_equal(check(a, 80, TD "/ns/shop/sa/y", NULL), AUTHZ_NOT_ALLOWED);
        assert_int_equal(check(a, 80, TD "/ns/ops/sa/y", NULL), AUTHZ_OK);
        authz_unref(a);

        /* Labels unknown: objects with a selector do not apply. */
        authz_kube_set_labels(k, NULL);
        assert_int_equal(kapply(k, false,
                                KOBJ("b-mine", "{\"selector\":{\"matchLabels\":{\"app\":\"web\"}},"
                                               "\"ports\":[80],\"deny\":[{\"namespace\":\"x\"}]}"),
                                false, err, sizeof(err)),
                         0);
        a = authz_kube_build(k, &stats);
        assert_int_equal(authz_policy_count(a), 1);
        authz_unref(a);

        /* A failed list keeps what was there. */
        authz_kube_list_begin(k);
        assert_int_equal(kapply(k, true,
                                KOBJ("z", "{\"ports\":[1],\"deny\":[{\"namespace\":"
                                          "\"x\"}]}"),
                                false, err, sizeof(err)),
                         0);
        authz_kube_list_end(k, false);
        assert_int_equal(authz_kube_count(k), 5);

        /* The bound on objects. */
        authz_kube_list_begin(k);
        for (int i = 0; i <= AUTHZ_MAX_POLICIES; i++) {
                char obj[256];
                snprintf(obj, sizeof(obj),
                         "{\"metadata\":{\"name\":\"p%d\"},\"spec\":{\"ports\":[1],"
                         "\"deny\":[{\"namespace\":\"x\"}]}}",
                         i);
                int rc = kapply(k, true, obj, false, err, sizeof(err));
                assert_int_equal(rc, i < AUTHZ_MAX_POLICIES ? 0 : -E2BIG);
        }
        assert_non_null(strstr(err, "more than 128 objects in the namespace"));
        authz_kube_list_end(k, false);
        assert_int_equal(authz_kube_count(k), 5);
        authz_kube_free(k);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_no_rule_admits),
            cmocka_unit_test(test_deny_before_allow),
            cmocka_unit_test(test_principals),
            cmocka_unit_test(test_mtls_allow),
            cmocka_unit_test(test_local_trust_domain),
            cmocka_unit_test(test_merge),
            cmocka_unit_test(test_bad_input),
            cmocka_unit_test(test_bounds),
            cmocka_unit_test(test_counted),
            cmocka_unit_test(test_labels_file),
            cmocka_unit_test(test_kube_objects),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

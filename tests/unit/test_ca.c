// SPDX-License-Identifier: Apache-2.0
/* ca: CSR checking and signing with CSRs made by the real `openssl req`
 * (valid ECDSA and RSA CSRs signed for exactly the token's SPIFFE ID, checked
 * with `openssl verify` and `openssl x509 -text`; another SPIFFE ID, extra
 * SANs, CA:TRUE, a broken signature, unsupported keys and garbage refused
 * with their reason), the serving certificate's DNS and IP names, the
 * mapping of TokenReview answers to refusal reasons and the pod a bound
 * token names, and the decisions of delegated issuance (node.c) over
 * TokenReview answers and Pod / PodList objects as the API server sends
 * them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/pem.h>

#include <cjson/cJSON.h>

#include "ca/ca-int.h"
#include "core/log.h"
#include "test_tls_util.h"

#define ID "spiffe://cluster.local/ns/web/sa/frontend"

struct fixture {
        char *dir;
        struct tls_ca *ca;
        char ca_pem[512];
};

static int setup(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));
        f->dir = tu_mkdtemp();
        char sd[512];
        tu_path(sd, sizeof(sd), f->dir, "ca");
        struct tls_ca_options o = {.state_dir = sd, .trust_domain = "cluster.local"};
        assert_int_equal(tls_ca_open(&o, &f->ca), 0);
        tu_path(f->ca_pem, sizeof(f->ca_pem), sd, "ca.pem");
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;
        tls_ca_free(f->ca);
        tu_rmrf(f->dir);
        free(f->dir);
        free(f);
        return 0;
}

/* Runs a shell command; its stdout (malloc'd) and exit status. */
static char *run(const char *cmd, int *status)
{
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t cap = 65536, len = 0;
        char *out = malloc(cap);
        size_t n;
        while ((n = fread(out + len, 1, cap - len - 1, p)) > 0)
                len += n;
        out[len] = '\0';
        int st = pclose(p);
        *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        return out;
}

/* A CSR by `openssl req`: keyopt selects the key, extra adds -addext
 * options. Returns the PEM (malloc'd). */
static char *make_csr(struct fixture *f, const char *name, const char *keyopt, const char *extra)
{
        char cmd[2048];
        snprintf(cmd, sizeof(cmd),
                 "openssl req -new -nodes %s -keyout %s/%s.key -out %s/%s.csr -subj /CN=%s %s "
                 "2>/dev/null && cat %s/%s.csr",
                 keyopt, f->dir, name, f->dir, name, name, extra ? extra : "", f->dir, name);
        int st;
        char *pem = run(cmd, &st);
        if (st != 0)
                fail_msg("openssl req failed for %s", name);
        return pem;
}

#define EC_P256 "-newkey ec -pkeyopt ec_paramgen_curve:P-256"

static int sign(struct fixture *f, const char *pem, X509 **out, const char **reason, char *msg,
                size_t msglen)
{
        time_t now = time(NULL);
        return ca_csr_sign(f->ca, pem, strlen(pem), ID, now - 300, now + 86400, out, reason, msg,
                           msglen);
}

static void check_leaf(struct fixture *f, X509 *leaf, const char *name)
{
        char path[512], cmd[1200];
        snprintf(path, sizeof(path), "%s/%s.pem", f->dir, name);
        assert_int_equal(tls_pem_write_certs(path, &leaf, 1, 0644), 0);
        int st;
        snprintf(cmd, sizeof(cmd), "openssl verify -CAfile %s %s 2>&1", f->ca_pem, path);
        char *out = run(cmd, &st);
        if (st != 0)
                fail_msg("openssl verify: %s", out);
        free(out);
        snprintf(cmd, sizeof(cmd), "openssl x509 -noout -text -in %s", path);
        out = run(cmd, &st);
        assert_int_equal(st, 0);
        /* exactly the one URI: the SAN line holds nothing else */
        const char *san = strstr(out, "X509v3 Subject Alternative Name:");
        assert_non_null(san);
        san = strchr(san, '\n') + 1;
        while (*san == ' ')
                san++;
        const char *eol = strchr(san, '\n');
        assert_int_equal((size_t)(eol - san), strlen("URI:" ID));
        assert_memory_equal(san, "URI:" ID, strlen("URI:" ID));
        assert_non_null(strstr(out, "CA:FALSE"));
        assert_non_null(
            strstr(out, "TLS Web Server Authentication, TLS Web Client Authentication"));
        assert_non_null(strstr(out, "Digital Signature"));
        assert_null(strstr(out, "Certificate Sign"));
        assert_null(strstr(out, "DNS:"));
        free(out);
        /* 127-bit random serial, lifetime as asked */
        char serial[80];
        assert_int_equal(tls_cert_serial_hex(leaf, serial, sizeof(serial)), 0);
        assert_int_equal(strlen(serial), 32);
        assert_int_equal(tls_cert_not_after(leaf) - tls_cert_not_before(leaf), 86400 + 300);
}

static void test_valid_csrs_signed_for_the_token_identity(void **state)
{
        struct fixture *f = *state;
        static const struct {
                const char *name, *key, *extra;
        } cases[] = {
            {"ec", EC_P256, NULL},
            {"rsa", "-newkey rsa:2048", NULL},
            /* asking for exactly the token's ID, and a non-CA, is fine */
            {"ec-san", EC_P256,
             "-addext subjectAltName=URI:" ID " -addext basicConstraints=CA:FALSE"},
            /* key usages asked for are not copied: the CA decides them */
            {"ec-ku", EC_P256, "-addext keyUsage=critical,keyCertSign"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *pem = make_csr(f, cases[i].name, cases[i].key, cases[i].extra);
                X509 *leaf = NULL;
                const char *reason;
                char msg[256];
                int rc = sign(f, pem, &leaf, &reason, msg, sizeof(msg));
                if (rc != 0)
                        fail_msg("%s: %d %s: %s", cases[i].name, rc, reason, msg);
                check_leaf(f, leaf, cases[i].name);
                X509_free(leaf);
                free(pem);
        }
}

static void test_bad_csrs_refused(void **state)
{
        struct fixture *f = *state;
        static const struct {
                const char *name, *key, *extra;
                int rc;
                const char *reason, *in_msg;
        } cases[] = {
            {"other-id", EC_P256,
             "-addext subjectAltName=URI:spiffe://cluster.local/ns/kube-system/sa/admin", -EPERM,
             "csr_mismatch", "ns/kube-system/sa/admin"},
            {"extra-dns", EC_P256, "-addext subjectAltName=URI:" ID ",DNS:evil.example", -EPERM,
             "csr_mismatch", "other than"},
            {"extra-ip", EC_P256, "-addext subjectAltName=IP:10.0.0.1", -EPERM, "csr_mismatch",
             "other than"},
            {"two-uris", EC_P256,
             "-addext subjectAltName=URI:" ID ",URI:spiffe://cluster.local/ns/web/sa/x", -EPERM,
             "csr_mismatch", "sa/x"},
            {"ca", EC_P256, "-addext basicConstraints=critical,CA:TRUE", -EPERM, "csr_mismatch",
             "CA:TRUE"},
            {"p384", "-newkey ec -pkeyopt ec_paramgen_curve:P-384", NULL, -EINVAL, "csr_invalid",
             "secp384r1"},
            {"rsa1024", "-newkey rsa:1024", NULL, -EINVAL, "csr_invalid", "RSA-1024"},
            {"ed25519", "-newkey ed25519", NULL, -EINVAL, "csr_invalid", "not supported"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *pem = make_csr(f, cases[i].name, cases[i].key, cases[i].extra);
                X509 *leaf = NULL;
                const char *reason = NULL;
                char msg[256];
                int rc = sign(f, pem, &leaf, &reason, msg, sizeof(msg));
                if (rc != cases[i].rc || !reason || strcmp(reason, cases[i].reason) != 0 ||
                    !strstr(msg, cases[i].in_msg))
                        fail_msg("%s: rc %d reason %s msg \"%s\"", cases[i].name, rc,
                                 reason ? reason : "(null)", msg);
                assert_null(leaf);
                free(pem);
        }
}

static void test_broken_signature_and_garbage(void **state)
{
        struct fixture *f = *state;
        char *pem = make_csr(f, "sig", EC_P256, NULL);
        BIO *b = BIO_new_mem_buf(pem, (int)strlen(pem));
        X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
        BIO_free(b);
        assert_non_null(req);
        /* the last byte of the signature changed: it no longer verifies */
        uint8_t *der = NULL;
        int dlen = i2d_X509_REQ(req, &der);
        assert_true(dlen > 0);
        der[dlen - 1] ^= 0x01;
        X509_REQ_free(req);
        b = BIO_new(BIO_s_mem());
        assert_true(PEM_write_bio(b, "CERTIFICATE REQUEST", "", der, dlen) > 0);
        OPENSSL_free(der);
        const uint8_t *d;
        size_t n;
        BIO_mem_contents(b, &d, &n);
        char *forged = strndup((const char *)d, n);
        BIO_free(b);
        X509 *leaf = NULL;
        const char *reason;
        char msg[256];
        assert_int_equal(sign(f, forged, &leaf, &reason, msg, sizeof(msg)), -EINVAL);
        assert_string_equal(reason, "csr_invalid");
        assert_non_null(strstr(msg, "signature"));
        free(forged);
        free(pem);

        static const char *garbage[] = {
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        };
        for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
                assert_int_equal(sign(f, garbage[i], &leaf, &reason, msg, sizeof(msg)), -EINVAL);
                assert_string_equal(reason, "csr_invalid");
        }
}

static void test_serving_certificate_names(void **state)
{
        struct fixture *f = *state;
        static const char *const sans[] = {"DNS:shunt-ca", "DNS:shunt-ca.shunt-system.svc",
                                           "IP:127.0.0.1", "IP:fd00::1"};
        time_t now = time(NULL);
        struct tls_issue_req r = {
            .sans = sans, .n_sans = 4, .not_before = now, .not_after = now + 3600};
        struct tls_material *m;
        assert_int_equal(tls_ca_issue(f->ca, &r, &m), 0);
        char path[512], cmd[700];
        snprintf(path, sizeof(path), "%s/serving.pem", f->dir);
        assert_int_equal(tls_pem_write_certs(path, &m->leaf, 1, 0644), 0);
        snprintf(cmd, sizeof(cmd), "openssl x509 -noout -ext subjectAltName -in %s", path);
        int st;
        char *out = run(cmd, &st);
        assert_int_equal(st, 0);
        assert_non_null(strstr(out,
                               "DNS:shunt-ca, DNS:shunt-ca.shunt-system.svc, IP Address:127.0.0.1, "
                               "IP Address:FD00:0:0:0:0:0:0:1"));
        assert_null(strstr(out, "URI:"));
        free(out);
        tls_material_free(m);
        static const char *const bad[] = {"IP:not-an-ip"};
        r.sans = bad;
        r.n_sans = 1;
        assert_int_equal(tls_ca_issue(f->ca, &r, &m), -EINVAL);
        static const char *const bad2[] = {"EMAIL:a@b"};
        r.sans = bad2;
        assert_int_equal(tls_ca_issue(f->ca, &r, &m), -EINVAL);
}

static void test_tokenreview_classification(void **state)
{
        static const struct {
                const char *json;
                enum ca_tr_result r;
                const char *ns, *sa;
        } cases[] = {
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"system:serviceaccount:web:frontend\"},\"audiences\":[\"shunt-ca\"]}}",
             CA_TR_OK, "web", "frontend"},
            /* kube-apiserver's refusal texts */
            {"{\"kind\":\"TokenReview\",\"status\":{\"user\":{},\"error\":\"[invalid bearer token, "
             "square/go-jose/jwt: validation failed, token is expired (exp)]\"}}",
             CA_TR_EXPIRED, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"user\":{},\"error\":\"[invalid bearer token, "
             "service account token has expired]\"}}",
             CA_TR_EXPIRED, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"user\":{},\"error\":\"[invalid bearer token, "
             "token audiences [\\\"px\\\"] is invalid for the target audiences "
             "[\\\"shunt-ca\\\"]]\"}}",
             CA_TR_AUDIENCE, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"user\":{},\"error\":\"[invalid bearer token, "
             "serviceaccounts \\\"x\\\" not found]\"}}",
             CA_TR_INVALID, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{}}", CA_TR_INVALID, NULL, NULL},
            /* authenticated, but for the API server's audience only (empty audiences) */
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"system:serviceaccount:web:frontend\"}}}",
             CA_TR_AUDIENCE, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"system:serviceaccount:web:frontend\"},\"audiences\":[\"other\"]}}",
             CA_TR_AUDIENCE, NULL, NULL},
            /* a user, not a service account; a malformed service-account name */
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"alice\"},\"audiences\":[\"shunt-ca\"]}}",
             CA_TR_INVALID, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"system:serviceaccount:web\"},\"audiences\":[\"shunt-ca\"]}}",
             CA_TR_INVALID, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{\"username\":"
             "\"system:serviceaccount:web:a/b\"},\"audiences\":[\"shunt-ca\"]}}",
             CA_TR_INVALID, NULL, NULL},
            /* not a TokenReview: the answer cannot be trusted either way */
            {"{\"kind\":\"Status\",\"code\":500}", CA_TR_UNAVAILABLE, NULL, NULL},
            {"{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":", CA_TR_UNAVAILABLE, NULL,
             NULL},
            {"", CA_TR_UNAVAILABLE, NULL, NULL},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct ca_tr_identity id = {0};
                char msg[256] = "";
                enum ca_tr_result r = ca_tr_classify(cases[i].json, strlen(cases[i].json),
                                                     "shunt-ca", &id, msg, sizeof(msg));
                if (r != cases[i].r)
                        fail_msg("case %zu: %s, want %s (%s)", i, ca_tr_reason(r),
                                 ca_tr_reason(cases[i].r), msg);
                if (r == CA_TR_OK) {
                        assert_string_equal(id.ns, cases[i].ns);
                        assert_string_equal(id.sa, cases[i].sa);
                } else {
                        assert_true(msg[0] != '\0');
                }
        }
}

/* A TokenReview answer for system:serviceaccount:<ns>:<sa> with extra (a
 * JSON object body, may be empty). */
static char *review_json(const char *ns, const char *sa, const char *extra)
{
        char *out = malloc(4096);
        snprintf(out, 4096,
                 "{\"kind\":\"TokenReview\",\"status\":{\"authenticated\":true,\"user\":{"
                 "\"username\":\"system:serviceaccount:%s:%s\",\"uid\":\"u1\",\"groups\":["
                 "\"system:serviceaccounts\"],\"extra\":{%s}},\"audiences\":[\"shunt-ca\"]}}",
                 ns, sa, extra);
        return out;
}

static void test_tokenreview_pod_binding(void **state)
{
        static const struct {
                const char *extra;
                const char *pod, *uid, *node;
        } cases[] = {
            /* Kubernetes 1.30+: the node comes with the pod */
            {"\"authentication.kubernetes.io/pod-name\":[\"shunt-node-x1\"],"
             "\"authentication.kubernetes.io/pod-uid\":[\"0d7e-11\"],"
             "\"authentication.kubernetes.io/node-name\":[\"node-a\"],"
             "\"authentication.kubernetes.io/node-uid\":[\"n-1\"],"
             "\"authentication.kubernetes.io/credential-id\":[\"JTI=1\"]",
             "shunt-node-x1", "0d7e-11", "node-a"},
            /* before 1.30: pod only */
            {"\"authentication.kubernetes.io/pod-name\":[\"shunt-node-x1\"],"
             "\"authentication.kubernetes.io/pod-uid\":[\"0d7e-11\"]",
             "shunt-node-x1", "0d7e-11", ""},
            /* not bound to a pod (kubectl create token) */
            {"", "", "", ""},
            /* ambiguous or malformed values are not trusted */
            {"\"authentication.kubernetes.io/pod-name\":[\"a\",\"b\"],"
             "\"authentication.kubernetes.io/pod-uid\":[\"1\"],"
             "\"authentication.kubernetes.io/node-name\":[\"node-a\",\"node-b\"]",
             "", "", ""},
            {"\"authentication.kubernetes.io/pod-name\":[\"../../x\"],"
             "\"authentication.kubernetes.io/pod-uid\":[\"1\"],"
             "\"authentication.kubernetes.io/node-name\":[\"Node_A\"]",
             "", "", ""},
            {"\"authentication.kubernetes.io/pod-name\":\"p\","
             "\"authentication.kubernetes.io/pod-uid\":[7]",
             "", "", ""},
            /* a name without its uid cannot be checked */
            {"\"authentication.kubernetes.io/pod-name\":[\"p\"]", "", "", ""},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *j = review_json("shunt-system", "shunt-node", cases[i].extra);
                struct ca_tr_identity id;
                char msg[256] = "";
                enum ca_tr_result r =
                    ca_tr_classify(j, strlen(j), "shunt-ca", &id, msg, sizeof(msg));
                if (r != CA_TR_OK)
                        fail_msg("case %zu: %s (%s)", i, ca_tr_reason(r), msg);
                assert_string_equal(id.ns, "shunt-system");
                assert_string_equal(id.sa, "shunt-node");
                if (strcmp(id.pod_name, cases[i].pod) || strcmp(id.pod_uid, cases[i].uid) ||
                    strcmp(id.node_name, cases[i].node))
                        fail_msg("case %zu: pod \"%s\" uid \"%s\" node \"%s\"", i, id.pod_name,
                                 id.pod_uid, id.node_name);
                free(j);
        }
}

static void test_k8s_names(void **state)
{
        static const char *good[] = {"a", "web", "shunt-node-7xk2p", "ip-10-0-1-5.ec2.internal",
                                     "0abc"};
        static const char *bad[] = {"",   "-a", "a-",   "A",   "a_b", "a..b",
                                    ".a", "a.", "a.-b", "a/b", "a b", "é"};
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                if (!ca_k8s_name_valid(good[i], CA_K8S_NAME_MAX))
                        fail_msg("\"%s\" refused", good[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (ca_k8s_name_valid(bad[i], CA_K8S_NAME_MAX))
                        fail_msg("\"%s\" accepted", bad[i]);
        /* namespaces are labels: no dots, 63 at most */
        assert_false(ca_k8s_name_valid("a.b", CA_K8S_NS_MAX));
        static const struct {
                size_t len, max;
                bool ok;
        } lens[] = {{63, CA_K8S_NS_MAX, true},
                    {64, CA_K8S_NS_MAX, false},
                    {253, CA_K8S_NAME_MAX, true},
                    {254, CA_K8S_NAME_MAX, false}};
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
                char name[300];
                memset(name, 'a', lens[i].len);
                name[lens[i].len] = '\0';
                assert_int_equal(ca_k8s_name_valid(name, lens[i].max), lens[i].ok);
        }
}

static void test_node_target_parse(void **state)
{
        static const struct {
                const char *json;
                int rc;
                const char *in_msg;
        } cases[] = {
            {"{\"namespace\":\"web\",\"service_account\":\"frontend\"}", 0, NULL},
            {"{\"namespace\":\"web\",\"service_account\":\"frontend\",\"pod\":\"frontend-0\","
             "\"pod_uid\":\"1-2\"}",
             0, NULL},
            {"{\"namespace\":\"web\"}", -EINVAL, "service_account"},
            {"{\"service_account\":\"frontend\"}", -EINVAL, "namespace"},
            {"{\"namespace\":\"Web\",\"service_account\":\"frontend\"}", -EINVAL, "namespace"},
            {"{\"namespace\":\"web\",\"service_account\":\"a/b\"}", -EINVAL, "service_account"},
            {"{\"namespace\":\"web\",\"service_account\":\"f\",\"pod\":\"../x\"}", -EINVAL, "pod"},
            {"{\"namespace\":\"web\",\"service_account\":\"f\",\"pod_uid\":\"1\"}", -EINVAL,
             "pod_uid"},
            {"{\"namespace\":\"web\",\"service_account\":\"f\",\"node\":\"n1\"}", -EINVAL,
             "unknown field \"node\""},
            {"{\"namespace\":\"web\",\"service_account\":7}", -EINVAL, "must be a string"},
            {"[\"web\",\"frontend\"]", -EINVAL, "must be an object"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                cJSON *o = cJSON_Parse(cases[i].json);
                struct ca_node_target t;
                char msg[256] = "";
                int rc = ca_node_target_parse(o, &t, msg, sizeof(msg));
                if (rc != cases[i].rc || (cases[i].in_msg && !strstr(msg, cases[i].in_msg)))
                        fail_msg("case %zu: rc %d msg \"%s\"", i, rc, msg);
                cJSON_Delete(o);
        }
        cJSON *o = cJSON_Parse("{\"namespace\":\"web\",\"service_account\":\"frontend\","
                               "\"pod\":\"frontend-0\",\"pod_uid\":\"1-2\"}");
        struct ca_node_target t;
        char msg[256];
        assert_int_equal(ca_node_target_parse(o, &t, msg, sizeof(msg)), 0);
        assert_string_equal(t.ns, "web");
        assert_string_equal(t.sa, "frontend");
        assert_string_equal(t.pod, "frontend-0");
        assert_string_equal(t.pod_uid, "1-2");
        cJSON_Delete(o);
}

static void test_node_agents_listed(void **state)
{
        static const char *const agents[] = {"shunt-system/shunt-node", "ops/agent"};
        struct ca_tr_identity who = {.ns = "shunt-system", .sa = "shunt-node"};
        assert_true(ca_node_is_agent(agents, 2, &who));
        snprintf(who.ns, sizeof(who.ns), "ops");
        snprintf(who.sa, sizeof(who.sa), "agent");
        assert_true(ca_node_is_agent(agents, 2, &who));
        /* prefixes and the other half of the pair do not count */
        snprintf(who.sa, sizeof(who.sa), "agen");
        assert_false(ca_node_is_agent(agents, 2, &who));
        snprintf(who.ns, sizeof(who.ns), "shunt");
        snprintf(who.sa, sizeof(who.sa), "system/shunt-node");
        assert_false(ca_node_is_agent(agents, 2, &who));
        snprintf(who.ns, sizeof(who.ns), "shunt-system");
        snprintf(who.sa, sizeof(who.sa), "shunt-node");
        assert_false(ca_node_is_agent(agents, 0, &who));
}

/* A Pod as the API server returns it (fields that matter, and some that do
 * not). */
static char *pod_json(const char *ns, const char *name, const char *uid, const char *sa,
                      const char *node, const char *phase)
{
        char *out = malloc(2048);
        char nodefield[300] = "";
        if (node)
                snprintf(nodefield, sizeof(nodefield), "\"nodeName\":\"%s\",", node);
        snprintf(out, 2048,
                 "{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"%s\","
                 "\"namespace\":\"%s\",\"uid\":\"%s\",\"labels\":{\"app\":\"x\"}},\"spec\":{%s"
                 "\"serviceAccountName\":\"%s\",\"containers\":[{\"name\":\"c\"}]},"
                 "\"status\":{\"phase\":\"%s\",\"podIP\":\"10.0.0.5\"}}",
                 name, ns, uid, nodefield, sa, phase);
        return out;
}

static void test_node_of_agent(void **state)
{
        struct ca_tr_identity who = {.ns = "shunt-system",
                                     .sa = "shunt-node",
                                     .pod_name = "shunt-node-x1",
                                     .pod_uid = "uid-1"};
        static const struct {
                const char *uid, *sa, *node;
                enum ca_node_result r;
                const char *in_msg;
        } cases[] = {
            {"uid-1", "shunt-node", "node-a", CA_NODE_OK, NULL},
            /* deleted and a new pod of that name made: not the token's pod */
            {"uid-2", "shunt-node", "node-a", CA_NODE_DENIED, "no longer exists"},
            {"uid-1", "other", "node-a", CA_NODE_DENIED, "does not run as"},
            {"uid-1", "shunt-node", NULL, CA_NODE_DENIED, "not scheduled"},
            {"uid-1", "shunt-node", "Bad_Node", CA_NODE_DENIED, "not scheduled"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char *j = pod_json("shunt-system", "shunt-node-x1", cases[i].uid, cases[i].sa,
                                   cases[i].node, "Running");
                char node[CA_K8S_NAME_MAX + 1], msg[512] = "";
                enum ca_node_result r =
                    ca_node_of_agent(j, strlen(j), &who, node, msg, sizeof(msg));
                if (r != cases[i].r || (cases[i].in_msg && !strstr(msg, cases[i].in_msg)))
                        fail_msg("case %zu: %d \"%s\"", i, r, msg);
                if (r == CA_NODE_OK)
                        assert_string_equal(node, "node-a");
                else
                        assert_string_equal(node, "");
                free(j);
        }
        /* another pod's object (a confused or hostile answer) */
        char *j =
            pod_json("shunt-system", "shunt-node-zz", "uid-1", "shunt-node", "node-a", "Running");
        char node[CA_K8S_NAME_MAX + 1], msg[512];
        assert_int_equal(ca_node_of_agent(j, strlen(j), &who, node, msg, sizeof(msg)),
                         CA_NODE_DENIED);
        free(j);
        static const char *garbage[] = {"", "{", "{\"kind\":\"Status\",\"code\":404}",
                                        "{\"kind\":\"Pod\",\"metadata\":{}}"};
        for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
                assert_int_equal(
                    ca_node_of_agent(garbage[i], strlen(garbage[i]), &who, node, msg, sizeof(msg)),
                    CA_NODE_UNAVAILABLE);
}

static void test_node_match(void **state)
{
        struct ca_node_target any = {.ns = "web", .sa = "frontend"};
        struct ca_node_target named = {.ns = "web", .sa = "frontend", .pod = "frontend-0"};
        struct ca_node_target named_uid = {
            .ns = "web", .sa = "frontend", .pod = "frontend-0", .pod_uid = "u0"};
        static const struct {
                const char *ns, *sa, *node, *phase;
                int any, named, named_uid; /* 1: entitled */
        } pods[] = {
            {"web", "frontend", "node-a", "Running", 1, 1, 1},
            {"web", "frontend", "node-a", "Pending", 1, 1, 1},
            {"web", "frontend", "node-b", "Running", 0, 0, 0},
            {"web", "frontend", NULL, "Pending", 0, 0, 0}, /* not scheduled yet */
            {"web", "backend", "node-a", "Running", 0, 0, 0},
            {"shop", "frontend", "node-a", "Running", 0, 0, 0},
            {"web", "frontend", "node-a", "Succeeded", 0, 0, 0},
            {"web", "frontend", "node-a", "Failed", 0, 0, 0},
            {"web", "frontend", "node-a", "Unknown", 0, 0, 0},
        };
        for (size_t i = 0; i < sizeof(pods) / sizeof(pods[0]); i++) {
                char *p = pod_json(pods[i].ns, "frontend-0", "u0", pods[i].sa, pods[i].node,
                                   pods[i].phase);
                /* as a list (other pods around it) and as the named pod */
                char *other = pod_json("web", "frontend-9", "u9", "frontend", "node-b", "Running");
                char list[8192];
                snprintf(list, sizeof(list),
                         "{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{"
                         "\"resourceVersion\":\"5\"},\"items\":[%s,%s]}",
                         other, p);
                char pod[CA_K8S_NAME_MAX + 1], msg[512] = "";
                enum ca_node_result r =
                    ca_node_match(list, strlen(list), &any, "node-a", pod, msg, sizeof(msg));
                if ((r == CA_NODE_OK) != pods[i].any)
                        fail_msg("list case %zu: %d \"%s\"", i, r, msg);
                if (r == CA_NODE_OK)
                        assert_string_equal(pod, "frontend-0");
                else
                        assert_non_null(strstr(msg, "no Pending or Running pod of service account "
                                                    "web/frontend is scheduled on node node-a"));
                r = ca_node_match(p, strlen(p), &named, "node-a", pod, msg, sizeof(msg));
                if ((r == CA_NODE_OK) != pods[i].named)
                        fail_msg("named case %zu: %d \"%s\"", i, r, msg);
                if (r != CA_NODE_OK)
                        assert_non_null(strstr(msg, "pod web/frontend-0 "));
                r = ca_node_match(p, strlen(p), &named_uid, "node-a", pod, msg, sizeof(msg));
                if ((r == CA_NODE_OK) != pods[i].named_uid)
                        fail_msg("named uid case %zu: %d \"%s\"", i, r, msg);
                free(p);
                free(other);
        }
        /* an entitling pod without a valid name is not an answer to trust (found by
         * libFuzzer: a name cut short by a NUL) */
        char *noname = pod_json("web", "", "u0", "frontend", "node-a", "Running");
        char nl[4096], nm[CA_K8S_NAME_MAX + 1], m[512];
        snprintf(nl, sizeof(nl), "{\"kind\":\"PodList\",\"items\":[%s]}", noname);
        assert_int_equal(ca_node_match(nl, strlen(nl), &any, "node-a", nm, m, sizeof(m)),
                         CA_NODE_DENIED);
        free(noname);
        /* the named pod was replaced by one of the same name */
        char *p = pod_json("web", "frontend-0", "u1", "frontend", "node-a", "Running");
        char pod[CA_K8S_NAME_MAX + 1], msg[512];
        assert_int_equal(ca_node_match(p, strlen(p), &named_uid, "node-a", pod, msg, sizeof(msg)),
                         CA_NODE_DENIED);
        assert_non_null(strstr(msg, "another uid"));
        /* a Pod where a PodList was asked for, and the reverse, are not answers */
        assert_int_equal(ca_node_match(p, strlen(p), &any, "node-a", pod, msg, sizeof(msg)),
                         CA_NODE_UNAVAILABLE);
        free(p);
        static const char *list = "{\"kind\":\"PodList\",\"items\":[]}";
        assert_int_equal(ca_node_match(list, strlen(list), &named, "node-a", pod, msg, sizeof(msg)),
                         CA_NODE_UNAVAILABLE);
        assert_int_equal(ca_node_match(list, strlen(list), &any, "node-a", pod, msg, sizeof(msg)),
                         CA_NODE_DENIED);
        static const char *garbage[] = {"", "[]", "{\"kind\":\"PodList\"}",
                                        "{\"kind\":\"PodList\",\"items\":{}}",
                                        "{\"kind\":\"PodList\",\"items\":[1,\"x\",{}]}"};
        for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
                enum ca_node_result r = ca_node_match(garbage[i], strlen(garbage[i]), &any,
                                                      "node-a", pod, msg, sizeof(msg));
                assert_true(r != CA_NODE_OK);
        }
}

int main(void)
{
        log_set_level(LOG_ERROR);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_valid_csrs_signed_for_the_token_identity, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_bad_csrs_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_broken_signature_and_garbage, setup, teardown),
            cmocka_unit_test_setup_teardown(test_serving_certificate_names, setup, teardown),
            cmocka_unit_test(test_tokenreview_classification),
            cmocka_unit_test(test_tokenreview_pod_binding),
            cmocka_unit_test(test_k8s_names),
            cmocka_unit_test(test_node_target_parse),
            cmocka_unit_test(test_node_agents_listed),
            cmocka_unit_test(test_node_of_agent),
            cmocka_unit_test(test_node_match),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

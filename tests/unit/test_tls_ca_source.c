// SPDX-License-Identifier: Apache-2.0
/* The "ca" certificate source: the CSR it sends, the token claims it reads,
 * its configuration keys, and a request that finds no CA on the main loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base64.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/strbuf.h"
#include "tls/source.h"
#include "test_tls_util.h"

/* ---- CSR ------------------------------------------------------------------ */

static void check_csr(enum tls_key_type kt, int pkey_id)
{
        const char *id = "spiffe://cluster.local/ns/shop/sa/cart";
        EVP_PKEY *key;
        assert_int_equal(tls_key_generate(kt, &key), 0);
        char *pem = NULL;
        assert_int_equal(tls_csr_build(key, id, &pem), 0);
        assert_non_null(strstr(pem, "-----BEGIN CERTIFICATE REQUEST-----"));
        assert_null(strstr(pem, "PRIVATE KEY"));

        BIO *b = BIO_new_mem_buf(pem, (int)strlen(pem));
        X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
        BIO_free(b);
        assert_non_null(req);
        EVP_PKEY *pub = X509_REQ_get_pubkey(req);
        assert_non_null(pub);
        assert_int_equal(EVP_PKEY_id(pub), pkey_id);
        assert_int_equal(EVP_PKEY_cmp(pub, key), 1);
        assert_int_equal(X509_REQ_verify(req, pub), 1);
        /* Empty subject; exactly one extension, the SAN, with exactly the URI. */
        assert_int_equal(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), 0);
        STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
        assert_non_null(exts);
        assert_int_equal(sk_X509_EXTENSION_num(exts), 1);
        X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, 0);
        assert_int_equal(OBJ_obj2nid(X509_EXTENSION_get_object(ext)), NID_subject_alt_name);
        GENERAL_NAMES *names = X509V3_EXT_d2i(ext);
        assert_non_null(names);
        assert_int_equal(sk_GENERAL_NAME_num(names), 1);
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, 0);
        assert_int_equal(gn->type, GEN_URI);
        const ASN1_IA5STRING *uri = gn->d.uniformResourceIdentifier;
        assert_int_equal(ASN1_STRING_length(uri), (int)strlen(id));
        assert_memory_equal(ASN1_STRING_get0_data(uri), id, strlen(id));
        GENERAL_NAMES_free(names);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        EVP_PKEY_free(pub);
        X509_REQ_free(req);
        free(pem);
        EVP_PKEY_free(key);
}

static void test_csr_roundtrip(void **state)
{
        check_csr(TLS_KEY_ECDSA_P256, EVP_PKEY_EC);
        check_csr(TLS_KEY_RSA_2048, EVP_PKEY_RSA);
}

/* ---- token claims ----------------------------------------------------------- */

/* header.payload.signature with payload base64url-encoded (no padding). */
static char *jwt(const char *payload)
{
        size_t n = strlen(payload);
        size_t cap;
        assert_true(EVP_EncodedLength(&cap, n));
        char *b = malloc(cap);
        size_t out = EVP_EncodeBlock((uint8_t *)b, (const uint8_t *)payload, n);
        while (out && b[out - 1] == '=')
                b[--out] = '\0';
        for (size_t i = 0; i < out; i++)
                b[i] = b[i] == '+' ? '-' : b[i] == '/' ? '_' : b[i];
        char *t = NULL;
        assert_true(asprintf(&t, "eyJhbGciOiJSUzI1NiJ9.%s.c2lnbmF0dXJl", b) > 0);
        free(b);
        return t;
}

static int parse(const char *tok, struct tls_token_claims *c, char *err, size_t errlen)
{
        err[0] = '\0';
        return tls_token_claims_parse(tok, strlen(tok), c, err, errlen);
}

static void test_claims_good(void **state)
{
        struct tls_token_claims c;
        char err[256];
        /* The projected token's kubernetes.io claim (sub disagrees: the claim wins). */
        char *t = jwt("{\"aud\":[\"shunt-ca\"],\"exp\":1900000000,\"iss\":\"https://kubernetes."
                      "default.svc\",\"kubernetes.io\":{\"namespace\":\"shop\",\"pod\":{\"name\":"
                      "\"cart-7d9\",\"uid\":\"u1\"},\"serviceaccount\":{\"name\":\"cart\",\"uid\":"
                      "\"u2\"}},\"sub\":\"system:serviceaccount:other:x\"}");
        assert_int_equal(parse(t, &c, err, sizeof(err)), 0);
        assert_string_equal(c.ns, "shop");
        assert_string_equal(c.sa, "cart");
        assert_int_equal(c.exp, 1900000000);
        free(t);
        /* Only sub. */
        t = jwt("{\"sub\":\"system:serviceaccount:payments:api-v2\"}");
        assert_int_equal(parse(t, &c, err, sizeof(err)), 0);
        assert_string_equal(c.ns, "payments");
        assert_string_equal(c.sa, "api-v2");
        assert_int_equal(c.exp, 0);
        free(t);
        /* A payload whose base64url uses '-' and '_' (bytes 0xfb 0xff). */
        t = jwt("{\"sub\":\"system:serviceaccount:a:b\",\"x\":\"\xfb\xff\xfe\"}");
        assert_true(strchr(t, '-') || strchr(t, '_'));
        assert_int_equal(parse(t, &c, err, sizeof(err)), 0);
        assert_string_equal(c.sa, "b");
        free(t);
}

static void claims_err(const char *tok, int want, const char *needle)
{
        struct tls_token_claims c;
        char err[256];
        int rc = parse(tok, &c, err, sizeof(err));
        if (rc != want || !strstr(err, needle))
                print_error("token %.60s: rc %d (want %d), err \"%s\" (want \"%s\")\n", tok, rc,
                            want, err, needle);
        assert_int_equal(rc, want);
        assert_non_null(strstr(err, needle));
        assert_string_equal(c.ns, "");
        assert_string_equal(c.sa, "");
}

static void test_claims_bad(void **state)
{
        /* Payloads with missing or bad fields. */
        static const struct {
                const char *payload, *needle;
        } bad[] = {
            {"{\"aud\":[\"shunt-ca\"]}", "names no service account"},
            {"{\"kubernetes.io\":{\"namespace\":\"shop\"}}", "names no service account"},
            {"{\"sub\":\"system:serviceaccount:shop\"}",
             "system:serviceaccount:<namespace>:<name>"},
            {"{\"sub\":\"system:serviceaccount::cart\"}", "namespace is empty"},
            {"{\"sub\":\"system:serviceaccount:shop:../x\"}", "not a valid name"},
            {"{\"kubernetes.io\":{\"namespace\":\"a/b\",\"serviceaccount\":{\"name\":\"c\"}}}",
             "namespace \"a/b\" is not a valid name"},
            {"[1,2]", "not a JSON object"},
            {"{\"sub\":", "not a JSON object"},
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char *t = jwt(bad[i].payload);
                claims_err(t, -EINVAL, bad[i].needle);
                free(t);
        }
        /* Not base64url, not a JWT. */
        claims_err("aaa.b*cd.sig", -EINVAL, "not base64url");
        claims_err("aaa.b+cd.sig", -EINVAL, "not base64url");
        claims_err("aaa.abcde.sig", -EINVAL, "not base64url");
        claims_err("aaa.abc=.sig", -EINVAL, "not base64url");
        claims_err("just-one-part", -EINVAL, "not a JWT");
        claims_err("a.b", -EINVAL, "not a JWT");
        claims_err("a.b.c.d", -EINVAL, "not a JWT");
        claims_err("a..c", -EINVAL, "not a JWT");
        claims_err("", -EINVAL, "not a JWT");
        /* Oversized: refused before any decoding. */
        size_t n = TLS_CA_TOKEN_MAX + 1;
        char *big = malloc(n + 1);
        memset(big, 'A', n);
        big[10] = '.';
        big[n - 10] = '.';
        big[n] = '\0';
        claims_err(big, -E2BIG, "at most 16384");
        free(big);
}

/* ---- configuration ------------------------------------------------------------ */

static int cfg(char **argv, char **envp, struct shunt_config **c, char *err, size_t errlen)
{
        int n = 0;
        while (argv[n])
                n++;
        err[0] = '\0';
        return config_load(n, argv, envp, c, err, errlen);
}

static void cfg_err(char **argv, char **envp, const char *n1, const char *n2)
{
        struct shunt_config *c = NULL;
        char err[512];
        int rc = cfg(argv, envp, &c, err, sizeof(err));
        if (rc != -EINVAL || !strstr(err, n1) || !strstr(err, n2))
                print_error("rc %d, error \"%s\" lacks \"%s\" or \"%s\"\n", rc, err, n1, n2);
        assert_int_equal(rc, -EINVAL);
        assert_null(c);
        assert_null(strchr(err, '\n'));
        assert_non_null(strstr(err, n1));
        assert_non_null(strstr(err, n2));
}

static void test_config_keys(void **state)
{
        char *env[] = {"SHUNT_CA_ADDRESS=https://shunt-ca.shunt-system.svc:15012",
                       "CA_BUNDLE_PATH=/var/run/shunt/bundle/ca.crt", NULL};
        char *argv[] = {"shuntd", NULL};
        struct shunt_config *c = NULL;
        char err[512];
        assert_int_equal(cfg(argv, env, &c, err, sizeof(err)), 0);
        assert_string_equal(c->mtls_ca_address, "https://shunt-ca.shunt-system.svc:15012");
        assert_string_equal(c->mtls_ca_token_file, "/var/run/secrets/shunt/token");
        assert_int_equal(config_source_of(c, "mtls.ca_address"), CONFIG_SRC_ENV);
        assert_int_equal(config_source_of(c, "mtls.ca_token_file"), CONFIG_SRC_DEFAULT);
        /* The host name (a pod's name) is not taken as the identity. */
        assert_string_equal(c->mtls_service_name, "");
        assert_string_equal(c->mtls_service_account, "");
        assert_int_equal(config_source_of(c, "mtls.namespace"), CONFIG_SRC_DEFAULT);
        snapshot_unref(&c->snap);

        /* Flags, with explicit overrides. */
        char *argv2[] = {"shuntd",
                         "--mtls.ca-address",
                         "https://10.0.0.7:15012/",
                         "--mtls.ca-token-file",
                         "/tmp/tok",
                         "--mtls.ca-bundle",
                         "/tmp/b.pem",
                         "--mtls.service-account",
                         "cart",
                         NULL};
        char *noenv[] = {NULL};
        assert_int_equal(cfg(argv2, noenv, &c, err, sizeof(err)), 0);
        assert_string_equal(c->mtls_ca_address, "https://10.0.0.7:15012/");
        assert_string_equal(c->mtls_ca_token_file, "/tmp/tok");
        assert_int_equal(config_source_of(c, "mtls.service_account"), CONFIG_SRC_FLAG);
        assert_string_equal(c->mtls_service_account, "cart");
        snapshot_unref(&c->snap);
}

static void test_config_errors(void **state)
{
        char *argv[] = {"shuntd", NULL};
        char *e1[] = {"SHUNT_CA_ADDRESS=http://shunt-ca:15012", "CA_BUNDLE_PATH=/b", NULL};
        cfg_err(argv, e1, "SHUNT_CA_ADDRESS (env): http://shunt-ca:15012",
                "expected https://<host>[:<port>]");
        char *e2[] = {"SHUNT_CA_ADDRESS=https://shunt-ca:15012/v1/certificates",
                      "CA_BUNDLE_PATH=/b", NULL};
        cfg_err(argv, e2, "SHUNT_CA_ADDRESS", "expected https://");
        char *e3[] = {"SHUNT_CA_ADDRESS=https://", "CA_BUNDLE_PATH=/b", NULL};
        cfg_err(argv, e3, "SHUNT_CA_ADDRESS", "expected https://");
        char *e4[] = {"SHUNT_CA_ADDRESS=https://user@ca", "CA_BUNDLE_PATH=/b", NULL};
        cfg_err(argv, e4, "SHUNT_CA_ADDRESS", "expected https://");
        char *e5[] = {"SHUNT_CA_ADDRESS=https://shunt-ca:15012", NULL};
        cfg_err(argv, e5, "mtls.ca_bundle", "required when mtls.ca_address is set");
        char *e6[] = {"SHUNT_CA_ADDRESS=https://shunt-ca:15012", "CA_BUNDLE_PATH=/b",
                      "CERTIFICATE_FILE=/c.pem", "PRIVATE_KEY_FILE=/k.pem", NULL};
        cfg_err(argv, e6, "SHUNT_CA_ADDRESS", "cannot be combined with mtls.certificate_file");
        char *e7[] = {"SHUNT_CA_ADDRESS=https://shunt-ca:15012", "CA_BUNDLE_PATH=/b",
                      "PRIVATE_KEY_FILE=/k.pem", NULL};
        cfg_err(argv, e7, "SHUNT_CA_ADDRESS", "choose one certificate source");
        char *e8[] = {"SHUNT_CA_ADDRESS=https://shunt-ca:15012", "CA_BUNDLE_PATH=/b", NULL};
        char *argv8[] = {"shuntd", "--mtls.ca-token-file", "", NULL};
        cfg_err(argv8, e8, "--mtls.ca-token-file", "");
}

/* ---- no CA: the request runs on the loop and fails with a reason ------------- */

struct done_state {
        struct loop *loop;
        int calls, rc;
        char err[512];
};

static void on_done(void *ctx, int rc, struct tls_material *m, const char *err)
{
        struct done_state *d = ctx;
        d->calls++;
        d->rc = rc;
        snprintf(d->err, sizeof(d->err), "%s", err);
        assert_null(m);
        loop_stop(d->loop);
}

static void test_unreachable_async(void **state)
{
        char *dir = tu_mkdtemp();
        char tok[512], bundle[512];
        tu_path(tok, sizeof(tok), dir, "token");
        tu_path(bundle, sizeof(bundle), dir, "ca.pem");
        char *t = jwt("{\"sub\":\"system:serviceaccount:shop:cart\"}");
        FILE *f = fopen(tok, "w");
        fprintf(f, "%s\n", t);
        fclose(f);
        free(t);
        /* Any certificate will do as a bundle: nothing listens. */
        struct tls_ca_options co = {.state_dir = dir, .trust_domain = "cluster.local"};
        struct tls_ca *ca;
        assert_int_equal(tls_ca_open(&co, &ca), 0);
        X509 *root = tls_ca_cert(ca);
        assert_int_equal(tls_pem_write_certs(bundle, &root, 1, 0644), 0);
        tls_ca_free(ca);

        struct done_state d = {.loop = loop_new()};
        struct tls_ca_source_options o = {
            .address = "https://127.0.0.1:1",
            .token_file = tok,
            .bundle_file = bundle,
            .trust_domain = "cluster.local",
            .loop = d.loop,
        };
        struct tls_source *src;
        assert_int_equal(tls_source_ca_new(&o, &src), 0);
        assert_string_equal(src->ops->kind, "ca");
        assert_true(src->ops->rotates);
        char err[256] = "";
        assert_int_equal(src->ops->fetch_async(src, on_done, &d, err, sizeof(err)), 0);
        /* A second one while the first runs is refused. */
        assert_int_equal(src->ops->fetch_async(src, on_done, &d, err, sizeof(err)), -EBUSY);
        assert_int_equal(loop_run(d.loop), 0);
        assert_int_equal(d.calls, 1);
        assert_int_equal(d.rc, -EAGAIN);
        assert_non_null(strstr(d.err, "shunt-ca at https://127.0.0.1:1 is unreachable"));

        /* After a failure, a new token (renamed over the old, as the kubelet
         * does) is worth an immediate retry; nothing else is. */
        assert_int_equal(src->ops->changed(src), 0);
        char tmp[520];
        snprintf(tmp, sizeof(tmp), "%s.new", tok);
        t = jwt("{\"sub\":\"system:serviceaccount:shop:cart\",\"exp\":1}");
        f = fopen(tmp, "w");
        fprintf(f, "%s\n", t);
        fclose(f);
        free(t);
        assert_int_equal(rename(tmp, tok), 0);
        assert_int_equal(src->ops->changed(src), 1);

        struct strbuf sb;
        strbuf_init(&sb);
        src->ops->render_json(src, &sb);
        assert_non_null(strstr(sb.data, "\"ca_address\":\"https://127.0.0.1:1\""));
        assert_non_null(strstr(sb.data, "\"result\":\"unreachable\""));
        assert_non_null(
            strstr(sb.data, "\"requested\":\"spiffe://cluster.local/ns/shop/sa/cart\""));
        strbuf_free(&sb);

        /* Overrides change what is asked for; an unreadable token fails at once. */
        tls_source_free(src);
        o.sa_override = "api";
        o.loop = NULL;
        assert_int_equal(tls_source_ca_new(&o, &src), 0);
        assert_int_equal(src->ops->fetch_async(src, on_done, &d, err, sizeof(err)), -EOPNOTSUPP);
        unlink(tok);
        struct tls_material *m = NULL;
        assert_int_equal(src->ops->fetch(src, &m, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "token file"));
        tls_source_free(src);
        loop_free(d.loop);
        tu_rmrf(dir);
        free(dir);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_csr_roundtrip), cmocka_unit_test(test_claims_good),
            cmocka_unit_test(test_claims_bad),    cmocka_unit_test(test_config_keys),
            cmocka_unit_test(test_config_errors), cmocka_unit_test(test_unreachable_async),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

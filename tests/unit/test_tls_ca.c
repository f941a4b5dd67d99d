// SPDX-License-Identifier: Apache-2.0
/* tls: SPIFFE IDs, the SNI port name, the built-in CA (state directory,
 * permissions, issued certificate fields checked with BoringSSL and with the
 * real `openssl x509`), the file source (reload, a bad new file keeps the old
 * one), the store's retry backoff and its JSON and metrics. */
#include <setjmp.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/x509v3.h>

#include "require.h"
#include "test_tls_util.h"
#include "core/spiffe.h"
#include "tls/source.h"
#include "tls/store.h"

static void test_spiffe_table(void **state)
{
        static const struct {
                const char *in;
                bool ok;
                bool mesh;
                const char *td, *ns, *sa;
        } cases[] = {
            {"spiffe://cluster.local/ns/default/sa/web", true, true, "cluster.local", "default",
             "web"},
            {"spiffe://example.org", true, false, "example.org", "", ""},
            {"spiffe://example.org/workload/x", true, false, "example.org", "", ""},
            {"spiffe://a_b-c.9/ns/N.s/sa/A-b_c", true, true, "a_b-c.9", "N.s", "A-b_c"},
            {"spiffe://td/ns/a/sa/b/extra", true, false, "td", "", ""},
            {"SPIFFE://td/ns/a/sa/b", false, false, "", "", ""},
            {"spiffe:/td/ns/a/sa/b", false, false, "", "", ""},
            {"https://td/ns/a/sa/b", false, false, "", "", ""},
            {"spiffe://", false, false, "", "", ""},
            {"spiffe:///ns/a/sa/b", false, false, "", "", ""},
            {"spiffe://Example.org/ns/a/sa/b", false, false, "", "", ""},
            {"spiffe://td:8080/ns/a/sa/b", false, false, "", "", ""},
            {"spiffe://user@td/ns/a/sa/b", false, false, "", "", ""},
            {"spiffe://t%64/ns/a", false, false, "", "", ""},
            {"spiffe://td/ns//sa/b", false, false, "", "", ""},
            {"spiffe://td/ns/a/sa/b/", false, false, "", "", ""},
            {"spiffe://td/", false, false, "", "", ""},
            {"spiffe://td/ns/./sa/b", false, false, "", "", ""},
            {"spiffe://td/ns/../sa/b", false, false, "", "", ""},
            {"spiffe://td/ns/a/sa/b?x=1", false, false, "", "", ""},
            {"spiffe://td/ns/a/sa/b#frag", false, false, "", "", ""},
            {"spiffe://td/ns/a b/sa/b", false, false, "", "", ""},
            {"spiffe://td/ns/a%20b/sa/b", false, false, "", "", ""},
            {"", false, false, "", "", ""},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct spiffe_id id;
                const char *why = NULL;
                int rc = spiffe_id_parse(cases[i].in, &id, &why);
                if (rc != (cases[i].ok ? 0 : -EINVAL))
                        fail_msg("%s: rc %d (%s)", cases[i].in, rc, why ? why : "");
                if (!cases[i].ok) {
                        assert_non_null(why);
                        continue;
                }
                assert_string_equal(id.uri, cases[i].in);
                assert_string_equal(id.trust_domain, cases[i].td);
                assert_int_equal(id.mesh, cases[i].mesh);
                assert_string_equal(id.ns, cases[i].ns);
                assert_string_equal(id.sa, cases[i].sa);
        }
        /* Length limits. */
        char big[SPIFFE_ID_MAX + 16];
        strcpy(big, "spiffe://td/");
        size_t l = strlen(big);
        memset(big + l, 'a', sizeof(big) - l - 1);
        big[sizeof(big) - 1] = 0;
        struct spiffe_id id;
        assert_int_equal(spiffe_id_parse(big, &id, NULL), -EINVAL);
        big[SPIFFE_ID_MAX] = 0; /* exactly 2048 */
        assert_int_equal(spiffe_id_parse(big, &id, NULL), 0);
        char td[300] = "spiffe://";
        memset(td + 9, 'a', 256);
        td[265] = 0;
        assert_int_equal(spiffe_id_parse(td, &id, NULL), -EINVAL);
        td[9 + 255] = 0;
        assert_int_equal(spiffe_id_parse(td, &id, NULL), 0);

        assert_int_equal(spiffe_id_build("cluster.local", "prod", "api", &id), 0);
        assert_string_equal(id.uri, "spiffe://cluster.local/ns/prod/sa/api");
        assert_true(id.mesh);
        assert_int_equal(spiffe_id_build("Cluster.local", "prod", "api", &id), -EINVAL);
        assert_int_equal(spiffe_id_build("cluster.local", "", "api", &id), -EINVAL);
        assert_int_equal(spiffe_id_build("cluster.local", "prod", "..", &id), -EINVAL);
        assert_int_equal(spiffe_id_build("cluster.local", "a/b", "api", &id), -EINVAL);
        assert_true(spiffe_trust_domain_valid("my-corp.example_1"));
        assert_false(spiffe_trust_domain_valid(""));
}

static void test_sni_port(void **state)
{
        char b[64];
        uint16_t p = 0;
        assert_int_equal(tls_sni_format(8080, "cluster.local", b, sizeof(b)), 23);
        assert_string_equal(b, "port-8080.cluster.local");
        assert_int_equal(tls_sni_port(b, &p), 0);
        assert_int_equal(p, 8080);
        assert_int_equal(tls_sni_port("port-65535", &p), 0);
        assert_int_equal(p, 65535);
        assert_int_equal(tls_sni_port("port-1.x", &p), 0);
        assert_int_equal(p, 1);
        const char *bad[] = {"port-0",      "port-65536", "port-08080", "port-",    "port-80x",
                             "port-123456", "prt-80",     "",           "port-80:1"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (tls_sni_port(bad[i], &p) != -EINVAL)
                        fail_msg("%s accepted", bad[i]);
        assert_int_equal(tls_sni_format(80, NULL, b, sizeof(b)), 7);
        assert_int_equal(tls_sni_format(80, "x", b, 5), -ENOSPC);
}

static void test_ca_state_dir(void **state)
{
        char *tmp = tu_mkdtemp();
        char dir[512], key[600], cert[600];
        tu_path(dir, sizeof(dir), tmp, "state");
        tu_path(key, sizeof(key), dir, "ca-key.pem");
        tu_path(cert, sizeof(cert), dir, "ca.pem");
        struct tls_ca_options o = {.state_dir = dir, .trust_domain = "cluster.local"};
        struct tls_ca *ca;
        assert_int_equal(tls_ca_open(&o, &ca), 0);
        struct stat st;
        assert_int_equal(stat(dir, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_int_equal(stat(key, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        X509 *root = tls_ca_cert(ca);
        assert_int_equal(X509_check_ca(root), 1);
        ASN1_BIT_STRING *ku = X509_get_ext_d2i(root, NID_key_usage, NULL, NULL);
        assert_non_null(ku);
        assert_true(ASN1_BIT_STRING_get_bit(ku, 5)); /* keyCertSign */
        ASN1_BIT_STRING_free(ku);
        EVP_PKEY *pk = X509_get_pubkey(root);
        assert_int_equal(EVP_PKEY_id(pk), EVP_PKEY_EC);
        EVP_PKEY_free(pk);
        char s1[80], s2[80];
        tls_cert_serial_hex(root, s1, sizeof(s1));
        tls_ca_free(ca);

        /* Second start: the same root is loaded. */
        assert_int_equal(tls_ca_open(&o, &ca), 0);
        tls_cert_serial_hex(tls_ca_cert(ca), s2, sizeof(s2));
        assert_string_equal(s1, s2);
        tls_ca_free(ca);

        /* Loaded from given files too. */
        struct tls_ca_options f = {.cert_file = cert, .key_file = key};
        assert_int_equal(tls_ca_open(&f, &ca), 0);
        tls_cert_serial_hex(tls_ca_cert(ca), s2, sizeof(s2));
        assert_string_equal(s1, s2);
        tls_ca_free(ca);

        /* A key others can read is refused. */
        assert_int_equal(chmod(key, 0644), 0);
        assert_int_equal(tls_ca_open(&o, &ca), -EPERM);
        assert_int_equal(chmod(key, 0600), 0);
        /* An unreadable key: a clear error, not a new CA over it. */
        FILE *fp = fopen(key, "w");
        fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", fp);
        fclose(fp);
        assert_int_equal(tls_ca_open(&o, &ca), -EINVAL);
        /* Key of another CA: mismatch. */
        char other[512];
        tu_path(other, sizeof(other), tmp, "other");
        struct tls_ca_options o2 = {.state_dir = other};
        assert_int_equal(tls_ca_open(&o2, &ca), 0);
        tls_ca_free(ca);
        char okey[600];
        tu_path(okey, sizeof(okey), other, "ca-key.pem");
        struct tls_ca_options mix = {.cert_file = cert, .key_file = okey};
        assert_int_equal(tls_ca_open(&mix, &ca), -EINVAL);
        tu_rmrf(tmp);
        free(tmp);
}

static bool has_eku(X509 *x, int nid)
{
        EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
        bool found = false;
        for (size_t i = 0; eku && i < sk_ASN1_OBJECT_num(eku); i++)
                if (OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)) == nid)
                        found = true;
        EXTENDED_KEY_USAGE_free(eku);
        return found;
}

static void check_issued(struct tls_ca *ca, enum tls_key_type kt, const char *bits)
{
        char *tmp = tu_mkdtemp();
        time_t now = time(NULL);
        struct tls_issue_req req = {
            .spiffe_id = "spiffe://cluster.local/ns/shop/sa/cart",
            .dns_name = "cart.shop.svc.cluster.local",
            .key_type = kt,
            .not_before = now - 60,
            .not_after = now + 86400,
        };
        struct tls_material *m;
        assert_int_equal(tls_ca_issue(ca, &req, &m), 0);
        /* BoringSSL's view. */
        char uri[SPIFFE_ID_MAX + 1];
        assert_int_equal(tls_cert_spiffe_uri(m->leaf, uri, sizeof(uri), NULL), 0);
        assert_string_equal(uri, req.spiffe_id);
        assert_int_equal(X509_check_host(m->leaf, "cart.shop.svc.cluster.local", 27, 0, NULL), 1);
        assert_true(has_eku(m->leaf, NID_server_auth));
        assert_true(has_eku(m->leaf, NID_client_auth));
        assert_int_equal(X509_check_ca(m->leaf), 0);
        int crit = 0;
        ASN1_BIT_STRING *ku = X509_get_ext_d2i(m->leaf, NID_key_usage, &crit, NULL);
        assert_non_null(ku);
        assert_int_equal(crit, 1);
        assert_true(ASN1_BIT_STRING_get_bit(ku, 0));
        assert_false(ASN1_BIT_STRING_get_bit(ku, 5));
        ASN1_BIT_STRING_free(ku);
        assert_int_equal(tls_cert_not_before(m->leaf), now - 60);
        assert_int_equal(tls_cert_not_after(m->leaf), now + 86400);
        char serial[80];
        assert_int_equal(tls_cert_serial_hex(m->leaf, serial, sizeof(serial)), 0);
        assert_int_equal(strlen(serial), 32); /* 128 bits, top bit clear */
        assert_true(serial[0] >= '4' && serial[0] <= '7');
        char err[256];
        assert_int_equal(tls_material_check(m, "cluster.local", 0, err, sizeof(err)), 0);
        assert_int_equal(tls_material_check(m, "other.org", 0, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "not in trust domain other.org"));

        /* The real openssl's view. */
        tu_write_material(m, tmp, "leaf");
        char path[600], out[16384];
        tu_path(path, sizeof(path), tmp, "leaf.pem");
        char *argv[] = {"openssl", "x509", "-in", path, "-noout", "-text", NULL};
        assert_int_equal(tu_run(argv, NULL, out, sizeof(out), 10000), 0);
        assert_non_null(strstr(out, "URI:spiffe://cluster.local/ns/shop/sa/cart"));
        assert_non_null(strstr(out, "DNS:cart.shop.svc.cluster.local"));
        assert_non_null(
            strstr(out, "TLS Web Server Authentication, TLS Web Client Authentication"));
        assert_non_null(
            strstr(out, "X509v3 Key Usage: critical\n                Digital Signature\n"));
        assert_non_null(strstr(out, "CA:FALSE"));
        assert_non_null(strstr(out, bits));
        assert_non_null(strstr(out, "Version: 3"));
        char *argv2[] = {"openssl", "x509", "-in", path, "-noout", "-serial", NULL};
        assert_int_equal(tu_run(argv2, NULL, out, sizeof(out), 10000), 0);
        assert_int_equal(strlen(out), strlen("serial=") + 32 + 1);
        assert_int_equal(strncasecmp(out + 7, serial, 32), 0);
        /* openssl verifies it against the CA for both purposes. */
        char capath[600];
        tu_path(capath, sizeof(capath), tmp, "ca.pem");
        X509 *root = tls_ca_cert(ca);
        tu_write_certs(capath, &root, 1);
        char *argv3[] = {"openssl",  "verify",    "-CAfile", capath,
                         "-purpose", "sslclient", path,      NULL};
        assert_int_equal(tu_run(argv3, NULL, out, sizeof(out), 10000), 0);
        char *argv4[] = {"openssl",  "verify",    "-CAfile", capath,
                         "-purpose", "sslserver", path,      NULL};
        assert_int_equal(tu_run(argv4, NULL, out, sizeof(out), 10000), 0);
        /* The key file is 0600 and openssl reads it as the matching key. */
        tu_path(path, sizeof(path), tmp, "leaf-key.pem");
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        tls_material_free(m);

        /* Two certificates never share a serial. */
        struct tls_material *a, *b;
        assert_int_equal(tls_ca_issue(ca, &req, &a), 0);
        assert_int_equal(tls_ca_issue(ca, &req, &b), 0);
        char sa[80], sb[80];
        tls_cert_serial_hex(a->leaf, sa, sizeof(sa));
        tls_cert_serial_hex(b->leaf, sb, sizeof(sb));
        assert_string_not_equal(sa, sb);
        tls_material_free(a);
        tls_material_free(b);
        tu_rmrf(tmp);
        free(tmp);
}

static void test_issued_fields(void **state)
{
        char *tmp = tu_mkdtemp();
        struct tls_ca_options o = {.state_dir = tmp};
        struct tls_ca *ca;
        assert_int_equal(tls_ca_open(&o, &ca), 0);
        check_issued(ca, TLS_KEY_ECDSA_P256, "Public-Key: (256 bit)");
        check_issued(ca, TLS_KEY_RSA_2048, "Public-Key: (2048 bit)");
        /* Bad requests. */
        struct tls_material *m;
        struct tls_issue_req bad = {.spiffe_id = NULL, .not_before = 0, .not_after = 10};
        assert_int_equal(tls_ca_issue(ca, &bad, &m), -EINVAL);
        bad.spiffe_id = "spiffe://td/x";
        bad.not_after = 0;
        assert_int_equal(tls_ca_issue(ca, &bad, &m), -EINVAL);
        enum tls_key_type kt;
        assert_int_equal(tls_key_type_parse("rsa-2048", &kt), 0);
        assert_int_equal(kt, TLS_KEY_RSA_2048);
        assert_int_equal(tls_key_type_parse("rsa-1024", &kt), -EINVAL);
        tls_ca_free(ca);
        tu_rmrf(tmp);
        free(tmp);
}

static struct tls_material *issue(struct tls_ca *ca, const char *id, long from, long to)
{
        time_t now = time(NULL);
        struct tls_issue_req r = {.spiffe_id = id,
                                  .key_type = TLS_KEY_ECDSA_P256,
                                  .not_before = now + from,
                                  .not_after = now + to};
        struct tls_material *m;
        assert_int_equal(tls_ca_issue(ca, &r, &m), 0);
        return m;
}

static void test_file_source(void **state)
{
        char *tmp = tu_mkdtemp();
        char cadir[512];
        tu_path(cadir, sizeof(cadir), tmp, "ca");
        struct tls_ca_options o = {.state_dir = cadir};
        struct tls_ca *ca;
        assert_int_equal(tls_ca_open(&o, &ca), 0);
        const char *id = "spiffe://cluster.local/ns/default/sa/api";
        struct tls_material *m1 = issue(ca, id, -60, 3600);
        tu_write_material(m1, tmp, "tls");
        char cert[600], key[600], bundle[600];
        tu_path(cert, sizeof(cert), tmp, "tls.pem");
        tu_path(key, sizeof(key), tmp, "tls-key.pem");
        tu_path(bundle, sizeof(bundle), cadir, "ca.pem");

        struct tls_files_options fo = {.cert_file = cert,
                                       .key_file = key,
                                       .bundle_file = bundle,
                                       .trust_domain = "cluster.local",
                                       .clock_skew_s = 300};
        struct tls_source *src;
        assert_int_equal(tls_source_files_new(&fo, &src), 0);
        struct tls_store_options so;
        tls_store_options_init(&so);
        so.trust_domain = "cluster.local";
        so.poll_ms = 50;
        struct tls_store *st;
        assert_int_equal(tls_store_new(&so, src, &st), 0);
        struct tls_snapshot *s = tls_store_acquire(st);
        char s1[80];
        tls_cert_serial_hex(m1->leaf, s1, sizeof(s1));
        assert_string_equal(tls_snapshot_serial(s), s1);
        assert_string_equal(tls_snapshot_identity(s), id);
        tls_snapshot_unref(s);
        uint64_t next = tls_store_tick(st);
        assert_true(next <= 50);

        /* New files: reloaded. */
        struct tls_material *m2 = issue(ca, id, -60, 7200);
        tu_write_material(m2, tmp, "tls");
        tls_store_tick(st);
        char s2[80];
        tls_cert_serial_hex(m2->leaf, s2, sizeof(s2));
        s = tls_store_acquire(st);
        assert_string_equal(tls_snapshot_serial(s), s2);
        tls_snapshot_unref(s);
        struct tls_store_counts c;
        tls_store_counts(st, &c);
        assert_int_equal(c.rotations, 1);
        assert_true(c.draining);

        /* A key that does not match: refused, the old pair keeps serving. */
        struct tls_material *m3 = issue(ca, id, -60, 7200);
        assert_int_equal(tls_pem_write_key(key, m3->key, 0600), 0);
        tls_store_tick(st);
        s = tls_store_acquire(st);
        assert_string_equal(tls_snapshot_serial(s), s2);
        tls_snapshot_unref(s);
        assert_non_null(strstr(tls_store_last_error(st), "does not match"));
        /* Not retried at once while the files stay the same, but after the
         * backoff (1 s ± 20 %): a transient failure recovers by itself. */
        next = tls_store_tick(st);
        tls_store_counts(st, &c);
        assert_int_equal(c.rotation_failures, 1);
        assert_true(c.retrying);
        assert_true(next <= 1200);
        usleep(1300 * 1000); /* idles past the longest backoff: the pause is the test */
        tls_store_tick(st);
        tls_store_counts(st, &c);
        assert_int_equal(c.rotation_failures, 2);
        assert_true(c.retrying);

        /* Garbage certificate file. */
        FILE *fp = fopen(cert, "w");
        fputs("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", fp);
        fclose(fp);
        tls_store_tick(st);
        assert_non_null(strstr(tls_store_last_error(st), "cannot be read"));
        s = tls_store_acquire(st);
        assert_string_equal(tls_snapshot_serial(s), s2);
        tls_snapshot_unref(s);

        /* A certificate from another CA: does not verify against the bundle. */
        char odir[512];
        tu_path(odir, sizeof(odir), tmp, "otherca");
        struct tls_ca_options oo = {.state_dir = odir};
        struct tls_ca *other;
        assert_int_equal(tls_ca_open(&oo, &other), 0);
        struct tls_material *m4 = issue(other, id, -60, 7200);
        tu_write_material(m4, tmp, "tls");
        tls_store_tick(st);
        assert_non_null(strstr(tls_store_last_error(st), "does not verify"));
        /* Another trust domain. */
        struct tls_material *m5 = issue(ca, "spiffe://evil.org/ns/default/sa/api", -60, 7200);
        tu_write_material(m5, tmp, "tls");
        tls_store_tick(st);
        assert_non_null(strstr(tls_store_last_error(st), "not in trust domain"));

        /* Back to a good pair (m3 with its own key): recovers. */
        tu_write_material(m3, tmp, "tls");
        tls_store_tick(st);
        assert_string_equal(tls_store_last_error(st), "");
        char s3[80];
        tls_cert_serial_hex(m3->leaf, s3, sizeof(s3));
        s = tls_store_acquire(st);
        assert_string_equal(tls_snapshot_serial(s), s3);
        tls_snapshot_unref(s);

        /* Never a key in the JSON. */
        struct strbuf sb;
        strbuf_init(&sb);
        tls_store_render_json(st, &sb, "\"allow\":[]");
        assert_null(strstr(sb.data, "PRIVATE"));
        assert_non_null(strstr(sb.data, "\"source\":\"files\""));
        strbuf_free(&sb);

        tls_store_free(st);
        tls_material_free(m1);
        tls_material_free(m2);
        tls_material_free(m3);
        tls_material_free(m4);
        tls_material_free(m5);
        tls_ca_free(ca);
        tls_ca_free(other);

        /* Missing files at start: a start-up error naming the file. */
        fo.key_file = "/nonexistent/key.pem";
        assert_int_equal(tls_source_files_new(&fo, &src), 0);
        assert_int_not_equal(tls_store_new(&so, src, &st), 0);
        tu_rmrf(tmp);
        free(tmp);
}

/* A root loaded from files without the subjectKeyIdentifier RFC 5280 asks
 * for: the built-in CA still issues from it (no authorityKeyIdentifier), and
 * the result verifies. */
static void test_ca_without_ski(void **state)
{
        (void)state;
        char *tmp = tu_mkdtemp();
        char cadir[512], cert[600], key[600];
        tu_path(cadir, sizeof(cadir), tmp, "ca");
        assert_int_equal(mkdir(cadir, 0700), 0);
        tu_path(cert, sizeof(cert), cadir, "ca.pem");
        tu_path(key, sizeof(key), cadir, "ca-key.pem");
        EVP_PKEY *k;
        assert_int_equal(tls_key_generate(TLS_KEY_ECDSA_P256, &k), 0);
        X509 *x = X509_new();
        assert_non_null(x);
        assert_true(X509_set_version(x, X509_VERSION_3));
        assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), 4242));
        X509_NAME *n = X509_get_subject_name(x);
        assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                                               (const uint8_t *)"root without SKI", -1, -1, 0));
        assert_true(X509_set_issuer_name(x, n));
        assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
        assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400));
        assert_true(X509_set_pubkey(x, k));
        X509V3_CTX v3;
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        X509_EXTENSION *bc =
            X509V3_EXT_nconf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
        X509_EXTENSION *ku =
            X509V3_EXT_nconf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        assert_true(bc && ku && X509_add_ext(x, bc, -1) && X509_add_ext(x, ku, -1));
        X509_EXTENSION_free(bc);
        X509_EXTENSION_free(ku);
        assert_true(X509_sign(x, k, EVP_sha256()) > 0);
        assert_true(X509_get_ext_by_NID(x, NID_subject_key_identifier, -1) < 0);
        assert_int_equal(tls_pem_write_certs(cert, &x, 1, 0644), 0);
        assert_int_equal(tls_pem_write_key(key, k, 0600), 0);

        struct tls_ca_options o = {.state_dir = cadir};
        struct tls_ca *ca;
        assert_int_equal(tls_ca_open(&o, &ca), 0);
        struct tls_material *m = issue(ca, "spiffe://cluster.local/ns/default/sa/api", -60, 3600);
        assert_true(X509_get_ext_by_NID(m->leaf, NID_authority_key_identifier, -1) < 0);
        char err[256] = "";
        assert_int_equal(tls_material_check(m, "cluster.local", 300, err, sizeof(err)), 0);
        tls_material_free(m);
        tls_ca_free(ca);
        X509_free(x);
        EVP_PKEY_free(k);
        tu_rmrf(tmp);
        free(tmp);
}

/* A source that fails on demand, wrapping the built-in CA. */
struct flaky {
        struct tls_source src;
        struct tls_ca *ca;
        int fail_next;
        int fetches;
};

static int flaky_fetch(struct tls_source *src, struct tls_material **out, char *err, size_t len)
{
        struct flaky *f = (struct flaky *)src;
        f->fetches++;
        if (f->fail_next > 0) {
                f->fail_next--;
                snprintf(err, len, "CA unavailable (test)");
                return -EAGAIN;
        }
        *out = issue(f->ca, "spiffe://cluster.local/ns/default/sa/api", -5, 3600);
        return 0;
}

static void flaky_destroy(struct tls_source *src)
{
}

static const struct tls_source_ops flaky_ops = {
    .kind = "flaky", .rotates = true, .fetch = flaky_fetch, .destroy = flaky_destroy};

static long json_num(const char *json, const char *key)
{
        char k[64];
        snprintf(k, sizeof(k), "\"%s\":", key);
        const char *p = strstr(json, k);
        assert_non_null(p);
        return strtol(p + strlen(k), NULL, 10);
}

static void test_backoff_and_report(void **state)
{
        require_tool("promtool", "prometheus"); /* checks the exposition below */
        char *tmp = tu_mkdtemp();
        struct tls_ca_options o = {.state_dir = tmp};
        struct flaky f = {.src.ops = &flaky_ops};
        assert_int_equal(tls_ca_open(&o, &f.ca), 0);
        struct tls_store_options so;
        tls_store_options_init(&so);
        so.trust_domain = "cluster.local";
        struct tls_store *st;
        assert_int_equal(tls_store_new(&so, &f.src, &st), 0);
        struct tls_snapshot *s = tls_store_acquire(st);
        char first[80];
        snprintf(first, sizeof(first), "%s", tls_snapshot_serial(s));
        tls_snapshot_unref(s);
        /* Next rotation in about 2/3 of an hour. */
        uint64_t next = tls_store_tick(st);
        assert_true(next > 0 && next <= 60000);

        struct strbuf sb;
        strbuf_init(&sb);
        f.fail_next = 2;
        uint64_t t0 = tu_now_ms();
        tls_store_rotate_now(st);
        next = tls_store_tick(st);
        assert_int_equal(f.fetches, 2);
        tls_store_render_json(st, &sb, NULL);
        long retry = json_num(sb.data, "retry_in_ms");
        /* 1 s ± 20 %, minus the time since the failure: the lower bound
         * subtracts what this thread measured, so a loaded machine cannot
         * break it. */
        long took = (long)(tu_now_ms() - t0);
        assert_true(retry >= 800 - took && retry <= 1200);
        assert_true(next <= 1200);
        assert_non_null(strstr(sb.data, "\"state\":\"retrying\""));
        assert_non_null(strstr(sb.data, "CA unavailable (test)"));
        s = tls_store_acquire(st);
        assert_string_equal(tls_snapshot_serial(s), first); /* still serving */
        tls_snapshot_unref(s);
        /* Not before the backoff. */
        tls_store_tick(st);
        assert_int_equal(f.fetches, 2);
        tu_sleep_ms((int)retry + 20); /* idles past the announced retry: the test */
        tls_store_tick(st);
        assert_int_equal(f.fetches, 3);
        strbuf_reset(&sb);
        tls_store_render_json(st, &sb, NULL);
        retry = json_num(sb.data, "retry_in_ms");
        assert_true(retry >= 1500 && retry <= 2400); /* 2 s ± 20 % */
        assert_int_equal(json_num(sb.data, "consecutive_failures"), 2);
        /* Operator asks again: works, state back to normal. */
        tls_store_rotate_now(st);
        tls_store_tick(st);
        assert_int_equal(f.fetches, 4);
        s = tls_store_acquire(st);
        assert_string_not_equal(tls_snapshot_serial(s), first);
        tls_snapshot_unref(s);

        strbuf_reset(&sb);
        tls_store_render_json(st, &sb, NULL);
        assert_non_null(strstr(sb.data, "\"state\":\"draining\""));
        assert_non_null(strstr(sb.data, "\"previous\":{\"identity\":"));
        assert_non_null(strstr(sb.data, first));
        assert_non_null(strstr(sb.data, "\"trust_bundle\":[{\"serial\":"));
        assert_non_null(strstr(sb.data, "\"require_port\":true}"));
        assert_non_null(strstr(sb.data, "\"last_error\":null"));
        assert_null(strstr(sb.data, "PRIVATE"));
        /* Valid JSON: python's parser agrees. */
        char *argv[] = {"python3", "-c",
                        "import json,sys; d=json.load(sys.stdin); "
                        "assert d['current']['expires_in_s']>3000; "
                        "assert d['rotation']['rotations']==1",
                        NULL};
        char out[4096];
        assert_int_equal(tu_run(argv, sb.data, out, sizeof(out), 10000), 0);

        strbuf_reset(&sb);
        tls_store_render_metrics(st, &sb);
        assert_non_null(strstr(sb.data, "shunt_tls_rotations_total 1\n"));
        assert_non_null(strstr(sb.data, "shunt_tls_rotation_failures_total 2\n"));
        assert_non_null(strstr(sb.data, "shunt_tls_handshake_failures_total{direction=\"inbound\","
                                        "reason=\"untrusted_ca\"} 0\n"));
        assert_non_null(strstr(sb.data, "shunt_tls_cert_expiry_seconds "));
        /* The real promtool accepts the exposition. */
        char *pt[] = {"promtool", "check", "metrics", NULL};
        char pout[4096];
        if (tu_run(pt, sb.data, pout, sizeof(pout), 10000) != 0)
                fail_msg("promtool: %s", pout);
        strbuf_free(&sb);

        tls_store_free(st);
        tls_ca_free(f.ca);
        tu_rmrf(tmp);
        free(tmp);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_spiffe_table),       cmocka_unit_test(test_sni_port),
            cmocka_unit_test(test_ca_state_dir),       cmocka_unit_test(test_issued_fields),
            cmocka_unit_test(test_file_source),        cmocka_unit_test(test_ca_without_ski),
            cmocka_unit_test(test_backoff_and_report),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

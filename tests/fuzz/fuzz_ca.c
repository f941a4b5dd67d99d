/* Fuzz target for shunt-ca's parsers of peer input (ca/ca.h, ca/ca-int.h).
 *
 * The first byte picks the parser, the rest is its input:
 *  - even: a TokenReview answer (ca_tr_classify): the result is one of the
 *    five, a refusal always says why, and an accepted token always names a
 *    namespace and service account that make a valid mesh SPIFFE ID;
 *  - odd: a CSR (ca_csr_sign with a fixed identity): 0 with a certificate
 *    that carries exactly that identity as its only SAN, is not a CA and has
 *    the CA as issuer; or -EINVAL csr_invalid / -EPERM csr_mismatch with a
 *    message; never anything else. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/x509v3.h>

#include "ca/ca-int.h"
#include "core/log.h"

#define ID "spiffe://cluster.local/ns/web/sa/frontend"

static void die(const char *what)
{
        fprintf(stderr, "fuzz_ca: %s\n", what);
        abort();
}

static struct tls_ca *g_ca;
static char g_dir[] = "/tmp/shunt-fuzz-ca-XXXXXX";

static void cleanup(void)
{
        char cmd[128];
        tls_ca_free(g_ca);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
        if (system(cmd) != 0)
                fprintf(stderr, "fuzz_ca: cannot remove %s\n", g_dir);
}

static struct tls_ca *ca(void)
{
        if (g_ca)
                return g_ca;
        log_set_level(LOG_ERROR);
        if (!mkdtemp(g_dir))
                die("mkdtemp");
        struct tls_ca_options o = {.state_dir = g_dir, .trust_domain = "cluster.local"};
        if (tls_ca_open(&o, &g_ca) < 0)
                die("tls_ca_open");
        atexit(cleanup);
        return g_ca;
}

static void tokenreview(const char *data, size_t len)
{
        struct ca_tr_identity id;
        memset(&id, 0x5a, sizeof(id));
        char msg[256] = "";
        enum ca_tr_result r = ca_tr_classify(data, len, "shunt-ca", &id, msg, sizeof(msg));
        if (r > CA_TR_UNAVAILABLE)
                die("result out of range");
        if (r != CA_TR_OK) {
                if (!msg[0])
                        die("a refusal without a reason");
                return;
        }
        if (memchr(id.ns, 0, sizeof(id.ns)) == NULL || memchr(id.sa, 0, sizeof(id.sa)) == NULL)
                die("identity not terminated");
        struct spiffe_id sid;
        if (spiffe_id_build("cluster.local", id.ns, id.sa, &sid) < 0)
                die("accepted a token whose names make no SPIFFE ID");
}

static void csr(const char *data, size_t len)
{
        X509 *leaf = NULL;
        const char *reason = NULL;
        char msg[256] = "";
        time_t now = time(NULL);
        int rc = ca_csr_sign(ca(), data, len, ID, now - 60, now + 3600, &leaf, &reason, msg,
                             sizeof(msg));
        if (rc == -EINVAL || rc == -EPERM) {
                if (leaf || !reason || !msg[0] ||
                    strcmp(reason, rc == -EPERM ? "csr_mismatch" : "csr_invalid") != 0)
                        die("a refusal without its reason");
                return;
        }
        if (rc != 0 || !leaf)
                die("unexpected result");
        char uri[SPIFFE_ID_MAX + 1];
        if (tls_cert_spiffe_uri(leaf, uri, sizeof(uri), NULL) < 0 || strcmp(uri, ID) != 0)
                die("signed a certificate without exactly the identity");
        GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
        if (!names || sk_GENERAL_NAME_num(names) != 1)
                die("signed a certificate with other names");
        GENERAL_NAMES_free(names);
        if (X509_check_ca(leaf) != 0)
                die("signed a CA certificate");
        if (X509_check_issued(tls_ca_cert(ca()), leaf) != X509_V_OK)
                die("not issued by the CA");
        X509_free(leaf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        if (data[0] & 1)
                csr((const char *)data + 1, size - 1);
        else
                tokenreview((const char *)data + 1, size - 1);
        return 0;
}

// SPDX-License-Identifier: Apache-2.0
/* Certificates, keys, PEM files and the built-in CA (BoringSSL). */
#include "tls/cert.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "core/spiffe.h"

#define COMP "tls"

/* The first queued BoringSSL error as text, and the queue cleared. */
static const char *ssl_err(char *buf, size_t len)
{
        uint32_t e = ERR_get_error();
        if (!e) {
                snprintf(buf, len, "unknown error");
        } else {
                ERR_error_string_n(e, buf, len);
        }
        ERR_clear_error();
        return buf;
}

const char *tls_key_type_name(enum tls_key_type t)
{
        return t == TLS_KEY_RSA_2048 ? "rsa-2048" : "ecdsa-p256";
}

int tls_key_type_parse(const char *s, enum tls_key_type *out)
{
        if (s && strcmp(s, "ecdsa-p256") == 0) {
                *out = TLS_KEY_ECDSA_P256;
                return 0;
        }
        if (s && strcmp(s, "rsa-2048") == 0) {
                *out = TLS_KEY_RSA_2048;
                return 0;
        }
        log_error(COMP, 0, "key type \"%s\" is not supported: use ecdsa-p256 or rsa-2048",
                  s ? s : "");
        return -EINVAL;
}

int tls_key_generate(enum tls_key_type t, EVP_PKEY **out)
{
        char eb[160];
        EVP_PKEY *pk = EVP_PKEY_new();
        if (!pk)
                return -ENOMEM;
        if (t == TLS_KEY_RSA_2048) {
                RSA *rsa = RSA_new();
                BIGNUM *e = BN_new();
                if (!rsa || !e || !BN_set_word(e, RSA_F4) ||
                    !RSA_generate_key_ex(rsa, 2048, e, NULL) || !EVP_PKEY_assign_RSA(pk, rsa)) {
                        log_error(COMP, 0, "generating an RSA-2048 key failed: %s",
                                  ssl_err(eb, sizeof(eb)));
                        RSA_free(rsa);
                        BN_free(e);
                        EVP_PKEY_free(pk);
                        return -EIO;
                }
                BN_free(e);
        } else {
                EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
                if (!ec || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pk, ec)) {
                        log_error(COMP, 0, "generating an ECDSA P-256 key failed: %s",
                                  ssl_err(eb, sizeof(eb)));
                        EC_KEY_free(ec);
                        EVP_PKEY_free(pk);
                        return -EIO;
                }
        }
        *out = pk;
        return 0;
}

/* ---- material ------------------------------------------------------------- */

struct tls_material *tls_material_new(void)
{
        struct tls_material *m = calloc(1, sizeof(*m));
        if (!m)
                return NULL;
        m->chain = sk_X509_new_null();
        m->bundle = sk_X509_new_null();
        if (!m->chain || !m->bundle) {
                tls_material_free(m);
                return NULL;
        }
        return m;
}

void tls_material_free(struct tls_material *m)
{
        if (!m)
                return;
        X509_free(m->leaf);
        EVP_PKEY_free(m->key);
        sk_X509_pop_free(m->chain, X509_free);
        sk_X509_pop_free(m->bundle, X509_free);
        free(m);
}

int tls_cert_spiffe_uri(X509 *cert, char *buf, size_t len, const char **why)
{
        const char *dummy;
        if (!why)
                why = &dummy;
        *why = NULL;
        if (len)
                buf[0] = 0;
        GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
        if (!names) {
                *why = "certificate has no URI SAN";
                return -ENOENT;
        }
        int nuri = 0;
        int rc = 0;
        for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
                const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
                if (gn->type != GEN_URI)
                        continue;
                nuri++;
                const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
                size_t l = (size_t)ASN1_STRING_length(s);
                const unsigned char *d = ASN1_STRING_get0_data(s);
                if (nuri > 1) {
                        *why = "certificate has more than one URI SAN";
                        rc = -EINVAL;
                        break;
                }
                if (l >= len || memchr(d, 0, l)) {
                        *why = "URI SAN is too long or has a NUL byte";
                        rc = -EINVAL;
                        continue;
                }
                memcpy(buf, d, l);
                buf[l] = 0;
        }
        GENERAL_NAMES_free(names);
        if (rc == 0 && nuri == 0) {
                *why = "certificate has no URI SAN";
                return -ENOENT;
        }
        if (rc == 0) {
                struct spiffe_id *id = malloc(sizeof(*id));
                if (!id)
                        return -ENOMEM;
                if (spiffe_id_parse(buf, id, why) < 0)
                        rc = -EINVAL;
                free(id);
        }
        return rc;
}

int tls_cert_serial_hex(const X509 *cert, char *buf, size_t len)
{
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
        if (!bn)
                return -ENOMEM;
        char *hex = BN_bn2hex(bn);
        BN_free(bn);
        if (!hex)
                return -ENOMEM;
        size_t n = strlen(hex);
        int rc = 0;
        if (n >= len) {
                rc = -ENOSPC;
        } else {
                for (size_t i = 0; i <= n; i++)
                        buf[i] = (char)((hex[i] >= 'A' && hex[i] <= 'F') ? hex[i] + 32 : hex[i]);
        }
        OPENSSL_free(hex);
        return rc;
}

int tls_asn1_time_unix(const ASN1_TIME *t, time_t *out)
{
        ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
        int days, secs;
        int ok = epoch && t && ASN1_TIME_diff(&days, &secs, epoch, t);
        ASN1_TIME_free(epoch);
        if (!ok)
                return -EINVAL;
        *out = (time_t)days * 86400 + secs;
        return 0;
}

time_t tls_cert_not_before(const X509 *cert)
{
        time_t t = 0;
        tls_asn1_time_unix(X509_get0_notBefore(cert), &t);
        return t;
}

time_t tls_cert_not_after(const X509 *cert)
{
        time_t t = 0;
        tls_asn1_time_unix(X509_get0_notAfter(cert), &t);
        return t;
}

void tls_cert_subject(const X509 *cert, char *buf, size_t len)
{
        if (!len)
                return;
        buf[0] = 0;
        BIO *b = BIO_new(BIO_s_mem());
        if (!b)
                return;
        if (X509_NAME_print_ex(b, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
                const uint8_t *d;
                size_t n;
                if (BIO_mem_contents(b, &d, &n)) {
                        if (n >= len)
                                n = len - 1;
                        memcpy(buf, d, n);
                        buf[n] = 0;
                }
        }
        BIO_free(b);
}

void tls_time_rfc3339(time_t t, char *buf, size_t len)
{
        struct tm tm;
        if (!gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
                snprintf(buf, len, "-");
}

/* Verifies leaf (+chain) against bundle at time t. Returns the X509_V_ERR code
 * (X509_V_OK = 0), or -1 when verification could not run. */
static int verify_at(X509 *leaf, STACK_OF(X509) * chain, STACK_OF(X509) * bundle, time_t t)
{
        X509_STORE *st = X509_STORE_new();
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        int rc = -1;
        if (!st || !ctx)
                goto out;
        for (size_t i = 0; i < sk_X509_num(bundle); i++)
                if (!X509_STORE_add_cert(st, sk_X509_value(bundle, i)))
                        goto out;
        if (!X509_STORE_CTX_init(ctx, st, leaf, chain))
                goto out;
        X509_STORE_CTX_set_time(ctx, 0, t);
        rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
        if (rc == X509_V_OK && X509_STORE_CTX_get_error(ctx) != X509_V_OK)
                rc = X509_STORE_CTX_get_error(ctx);
out:
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(st);
        ERR_clear_error();
        return rc;
}

int tls_material_check(const struct tls_material *m, const char *trust_domain, uint32_t skew_s,
                       char *err, size_t errlen)
{
        char uri[SPIFFE_ID_MAX + 1];
        const char *why;
        if (!m || !m->leaf || !m->key) {
                snprintf(err, errlen, "no certificate or no key");
                return -EINVAL;
        }
        if (sk_X509_num(m->bundle) == 0) {
                snprintf(err, errlen, "trust bundle is empty");
                return -EINVAL;
        }
        if (!X509_check_private_key(m->leaf, m->key)) {
                ERR_clear_error();
                snprintf(err, errlen, "private key does not match the certificate");
                return -EINVAL;
        }
        if (X509_check_ca(m->leaf) > 0) {
                snprintf(err, errlen, "certificate is a CA certificate, not a workload one");
                return -EINVAL;
        }
        time_t now = time(NULL);
        int v = verify_at(m->leaf, m->chain, m->bundle, now);
        if (v == X509_V_ERR_CERT_HAS_EXPIRED)
                v = verify_at(m->leaf, m->chain, m->bundle, now - (time_t)skew_s);
        else if (v == X509_V_ERR_CERT_NOT_YET_VALID)
                v = verify_at(m->leaf, m->chain, m->bundle, now + (time_t)skew_s);
        if (v != X509_V_OK) {
                snprintf(err, errlen, "certificate does not verify against the trust bundle: %s",
                         v < 0 ? "verification could not run" : X509_verify_cert_error_string(v));
                return -EINVAL;
        }
        if (tls_cert_spiffe_uri(m->leaf, uri, sizeof(uri), &why) < 0) {
                snprintf(err, errlen, "%s", why);
                return -EINVAL;
        }
        struct spiffe_id *id = malloc(sizeof(*id));
        if (!id) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        spiffe_id_parse(uri, id, NULL);
        int rc = 0;
        if (trust_domain && strcmp(id->trust_domain, trust_domain) != 0) {
                snprintf(err, errlen, "SPIFFE ID %s is not in trust domain %s", uri, trust_domain);
                rc = -EINVAL;
        }
        free(id);
        return rc;
}

/* ---- PEM files ------------------------------------------------------------ */

int tls_pem_read_certs(const char *path, STACK_OF(X509) * *out)
{
        char eb[160];
        BIO *b = BIO_new_file(path, "r");
        if (!b) {
                int e = errno ? errno : EIO;
                ERR_clear_error();
                log_error(COMP, 0, "cannot open certificate file %s: %s", path, strerror(e));
                return -e;
        }
        STACK_OF(X509) *sk = sk_X509_new_null();
        if (!sk) {
                BIO_free(b);
                return -ENOMEM;
        }
        X509 *x;
        while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
                if (!sk_X509_push(sk, x)) {
                        X509_free(x);
                        sk_X509_pop_free(sk, X509_free);
                        BIO_free(b);
                        return -ENOMEM;
                }
        }
        uint32_t e = ERR_peek_last_error();
        bool eof = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
        BIO_free(b);
        if (sk_X509_num(sk) == 0 || (e && !eof)) {
                log_error(COMP, 0, "certificate file %s: %s", path,
                          sk_X509_num(sk) == 0 && eof ? "no PEM certificate in it"
                                                      : ssl_err(eb, sizeof(eb)));
                ERR_clear_error();
                sk_X509_pop_free(sk, X509_free);
                return -EINVAL;
        }
        ERR_clear_error();
        *out = sk;
        return 0;
}

int tls_pem_read_key(const char *path, EVP_PKEY **out)
{
        BIO *b = BIO_new_file(path, "r");
        if (!b) {
                int e = errno ? errno : EIO;
                ERR_clear_error();
                log_error(COMP, 0, "cannot open key file %s: %s", path, strerror(e));
                return -e;
        }
        EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        BIO_free(b);
        if (!k) {
                /* The library's reason only: it never contains key bytes. */
                uint32_t e = ERR_peek_last_error();
                log_error(COMP, 0, "key file %s holds no readable PEM private key (%s)", path,
                          ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "unknown");
                ERR_clear_error();
                return -EINVAL;
        }
        int id = EVP_PKEY_id(k);
        if (id != EVP_PKEY_EC && id != EVP_PKEY_RSA) {
                log_error(COMP, 0, "key file %s: key type is neither ECDSA nor RSA", path);
                EVP_PKEY_free(k);
                return -EINVAL;
        }
        *out = k;
        return 0;
}

/* Writes the BIO's contents to path atomically with the given mode. */
static int write_atomic(const char *path, BIO *b, unsigned mode)
{
        const uint8_t *d;
        size_t n;
        if (!BIO_mem_contents(b, &d, &n))
                return -ENOMEM;
        char tmp[PATH_MAX];
        if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
                log_error(COMP, 0, "path %s is too long", path);
                return -ENAMETOOLONG;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0) {
                int e = errno;
                log_error(COMP, 0, "cannot create %s: %s", tmp, strerror(e));
                return -e;
        }
        int rc = 0;
        if (fchmod(fd, mode) < 0)
                rc = -errno;
        size_t off = 0;
        while (rc == 0 && off < n) {
                ssize_t w = write(fd, d + off, n - off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        rc = -errno;
                else
                        off += (size_t)w;
        }
        if (rc == 0 && fsync(fd) < 0)
                rc = -errno;
        close(fd);
        if (rc == 0 && rename(tmp, path) < 0)
                rc = -errno;
        if (rc < 0) {
                log_error(COMP, 0, "cannot write %s: %s", path, strerror(-rc));
                unlink(tmp);
        }
        OPENSSL_cleanse((void *)d, n);
        return rc;
}

int tls_pem_write_certs(const char *path, X509 *const *certs, size_t n, unsigned mode)
{
        BIO *b = BIO_new(BIO_s_mem());
        if (!b)
                return -ENOMEM;
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++)
                if (!PEM_write_bio_X509(b, certs[i]))
                        rc = -ENOMEM;
        if (rc == 0)
                rc = write_atomic(path, b, mode);
        BIO_free(b);
        ERR_clear_error();
        return rc;
}

int tls_pem_write_key(const char *path, EVP_PKEY *key, unsigned mode)
{
        BIO *b = BIO_new(BIO_s_mem());
        if (!b)
                return -ENOMEM;
        int rc = PEM_write_bio_PKCS8PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) ? 0 : -ENOMEM;
        if (rc == 0)
                rc = write_atomic(path, b, mode);
        BIO_free(b);
        ERR_clear_error();
        return rc;
}

/* ---- certificate building --------------------------------------------------- */

static int set_random_serial(X509 *x)
{
        uint8_t raw[16];
        RAND_bytes(raw, sizeof(raw));
        raw[0] &= 0x7f; /* positive */
        raw[0] |= 0x40; /* exactly 127 significant bits: never zero, fixed length */
        BIGNUM *bn = BN_bin2bn(raw, sizeof(raw), NULL);
        ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
        int ok = ai && X509_set_serialNumber(x, ai);
        ASN1_INTEGER_free(ai);
        BN_free(bn);
        return ok ? 0 : -ENOMEM;
}

static int set_times(X509 *x, time_t nb, time_t na)
{
        ASN1_TIME *a = ASN1_TIME_set(NULL, nb);
        ASN1_TIME *b = ASN1_TIME_set(NULL, na);
        int ok = a && b && X509_set1_notBefore(x, a) && X509_set1_notAfter(x, b);
        ASN1_TIME_free(a);
        ASN1_TIME_free(b);
        return ok ? 0 : -EINVAL;
}

static int add_key_ids(X509 *x, X509 *issuer)
{
        X509V3_CTX v3;
        X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
        X509_EXTENSION *ski = X509V3_EXT_nconf_nid(NULL, &v3, NID_subject_key_identifier, "hash");
        int ok = ski && X509_add_ext(x, ski, -1);
        X509_EXTENSION_free(ski);
        if (!ok)
                return -EINVAL;
        /* A CA loaded from files may lack the subjectKeyIdentifier RFC 5280
         * asks for (some tools leave it out): then no authorityKeyIdentifier,
         * chains still build by name and signature. */
        if (X509_get_ext_by_NID(issuer, NID_subject_key_identifier, -1) < 0)
                return 0;
        X509_EXTENSION *aki =
            X509V3_EXT_nconf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always");
        ok = aki && X509_add_ext(x, aki, -1);
        X509_EXTENSION_free(aki);
        return ok ? 0 : -EINVAL;
}

static int add_basic_constraints(X509 *x, bool ca)
{
        BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
        if (!bc)
                return -ENOMEM;
        bc->ca = ca ? 0xff : 0;
        int ok = X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT);
        BASIC_CONSTRAINTS_free(bc);
        return ok ? 0 : -EINVAL;
}

static int add_key_usage(X509 *x, const int *bits, size_t n)
{
        ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
        int ok = ku != NULL;
        for (size_t i = 0; ok && i < n; i++)
                ok = ASN1_BIT_STRING_set_bit(ku, bits[i], 1);
        ok = ok && X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT);
        ASN1_BIT_STRING_free(ku);
        return ok ? 0 : -EINVAL;
}

static int add_eku(X509 *x)
{
        EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
        int ok = eku && sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) &&
                 sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) &&
                 X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_DEFAULT);
        sk_ASN1_OBJECT_free(eku); /* the objects are static */
        return ok ? 0 : -EINVAL;
}

static int push_name(GENERAL_NAMES *names, int type, const char *value)
{
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (!gn || !s || !ASN1_STRING_set(s, value, (int)strlen(value))) {
                GENERAL_NAME_free(gn);
                ASN1_IA5STRING_free(s);
                return -ENOMEM;
        }
        GENERAL_NAME_set0_value(gn, type, s);
        if (!sk_GENERAL_NAME_push(names, gn)) {
                GENERAL_NAME_free(gn);
                return -ENOMEM;
        }
        return 0;
}

/* One "DNS:name" or "IP:address" entry of tls_issue_req.sans. */
static int push_typed_name(GENERAL_NAMES *names, const char *san)
{
        if (strncmp(san, "DNS:", 4) == 0 && san[4])
                return push_name(names, GEN_DNS, san + 4);
        if (strncmp(san, "IP:", 3) != 0) {
                log_error(COMP, 0,
                          "subject alternative name \"%s\": use DNS:<name> or IP:<address>", san);
                return -EINVAL;
        }
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(san + 3);
        GENERAL_NAME *gn = ip ? GENERAL_NAME_new() : NULL;
        if (!ip || !gn) {
                ERR_clear_error();
                ASN1_OCTET_STRING_free(ip);
                log_error(COMP, 0, "subject alternative name \"%s\": not an IPv4 or IPv6 address",
                          san);
                return -EINVAL;
        }
        GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
        if (!sk_GENERAL_NAME_push(names, gn)) {
                GENERAL_NAME_free(gn);
                return -ENOMEM;
        }
        return 0;
}

static int add_san(X509 *x, const struct tls_issue_req *req)
{
        GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
        if (!names)
                return -ENOMEM;
        int rc = 0;
        if (req->spiffe_id && *req->spiffe_id)
                rc = push_name(names, GEN_URI, req->spiffe_id);
        if (rc == 0 && req->dns_name && *req->dns_name)
                rc = push_name(names, GEN_DNS, req->dns_name);
        for (size_t i = 0; rc == 0 && i < req->n_sans; i++)
                rc = push_typed_name(names, req->sans[i]);
        /* The subject is not empty, so the SAN is not critical (RFC 5280 4.2.1.6). */
        if (rc == 0 && !X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT))
                rc = -EINVAL;
        GENERAL_NAMES_free(names);
        return rc;
}

static int name_add(X509_NAME *n, int nid, const char *v)
{
        return X509_NAME_add_entry_by_NID(n, nid, MBSTRING_UTF8, (const uint8_t *)v, (int)strlen(v),
                                          -1, 0)
                   ? 0
                   : -EINVAL;
}

/* ---- CA ------------------------------------------------------------------- */

struct tls_ca {
        X509 *cert;
        EVP_PKEY *key;
};

X509 *tls_ca_cert(const struct tls_ca *ca)
{
        return ca->cert;
}

void tls_ca_free(struct tls_ca *ca)
{
        if (!ca)
                return;
        X509_free(ca->cert);
        EVP_PKEY_free(ca->key);
        free(ca);
}

static int ca_create(struct tls_ca *ca, const struct tls_ca_options *opt)
{
        char eb[160];
        int rc = tls_key_generate(opt->key_type, &ca->key);
        if (rc < 0)
                return rc;
        X509 *x = X509_new();
        if (!x)
                return -ENOMEM;
        time_t now = time(NULL);
        uint32_t life = opt->lifetime_s ? opt->lifetime_s : 10u * 365 * 86400;
        char serial[64] = "";
        rc = X509_set_version(x, X509_VERSION_3) ? 0 : -EINVAL;
        if (rc == 0)
                rc = set_random_serial(x);
        if (rc == 0)
                rc = set_times(x, now - 3600, now + (time_t)life);
        if (rc == 0)
                rc = tls_cert_serial_hex(x, serial, sizeof(serial));
        if (rc == 0) {
                /* The serial in the name keeps two roots of one trust domain apart. */
                char cn[128];
                snprintf(cn, sizeof(cn), "shunt mesh CA %.8s", serial);
                X509_NAME *n = X509_get_subject_name(x);
                rc = name_add(n, NID_organizationName,
                              opt->trust_domain ? opt->trust_domain : "shunt");
                if (rc == 0)
                        rc = name_add(n, NID_commonName, cn);
                if (rc == 0 && !X509_set_issuer_name(x, n))
                        rc = -EINVAL;
        }
        if (rc == 0 && !X509_set_pubkey(x, ca->key))
                rc = -EINVAL;
        if (rc == 0)
                rc = add_basic_constraints(x, true);
        if (rc == 0)
                rc = add_key_usage(x, (const int[]){5, 6}, 2); /* keyCertSign, cRLSign */
        if (rc == 0)
                rc = add_key_ids(x, x);
        if (rc == 0 && !X509_sign(x, ca->key, EVP_sha256()))
                rc = -EINVAL;
        if (rc < 0) {
                log_error(COMP, 0, "creating the CA certificate failed: %s",
                          ssl_err(eb, sizeof(eb)));
                X509_free(x);
                return rc;
        }
        ca->cert = x;
        return 0;
}

static int ca_load(struct tls_ca *ca, const char *cert_file, const char *key_file)
{
        STACK_OF(X509) * sk;
        int rc = tls_pem_read_certs(cert_file, &sk);
        if (rc < 0)
                return rc;
        ca->cert = sk_X509_shift(sk);
        sk_X509_pop_free(sk, X509_free);
        rc = tls_pem_read_key(key_file, &ca->key);
        if (rc < 0)
                return rc;
        if (!X509_check_private_key(ca->cert, ca->key)) {
                ERR_clear_error();
                log_error(COMP, 0, "CA key %s does not match CA certificate %s", key_file,
                          cert_file);
                return -EINVAL;
        }
        if (X509_check_ca(ca->cert) <= 0) {
                log_error(COMP, 0, "CA certificate %s is not a CA (basicConstraints CA:TRUE)",
                          cert_file);
                return -EINVAL;
        }
        return 0;
}

/* Creates the missing parents of dir (0755), like mkdir -p without the last
 * component. 0 or -errno (logged). */
static int mkdir_parents(const char *dir)
{
        char p[PATH_MAX];
        if (snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p)) {
                log_error(COMP, 0, "state directory path %s is too long", dir);
                return -ENAMETOOLONG;
        }
        char *last = strrchr(p, '/');
        if (!last || last == p)
                return 0;
        *last = '\0';
        for (char *s = p + 1;; s++) {
                if (*s != '/' && *s != '\0')
                        continue;
                char c = *s;
                *s = '\0';
                if (mkdir(p, 0755) < 0 && errno != EEXIST) {
                        int e = errno;
                        log_error(COMP, 0,
                                  "cannot create directory %s (for state directory %s): %s", p, dir,
                                  strerror(e));
                        return -e;
                }
                *s = c;
                if (!c)
                        return 0;
        }
}

int tls_ca_open(const struct tls_ca_options *opt, struct tls_ca **out)
{
        struct tls_ca *ca = calloc(1, sizeof(*ca));
        if (!ca)
                return -ENOMEM;
        int rc;
        if (opt->cert_file && *opt->cert_file) {
                if (!opt->key_file || !*opt->key_file) {
                        log_error(COMP, 0, "CA certificate %s given without its key file",
                                  opt->cert_file);
                        rc = -EINVAL;
                } else {
                        rc = ca_load(ca, opt->cert_file, opt->key_file);
                }
                goto done;
        }
        if (!opt->state_dir || !*opt->state_dir) {
                log_error(COMP, 0, "built-in CA needs a state directory or CA files");
                rc = -EINVAL;
                goto done;
        }
        char cert_path[PATH_MAX], key_path[PATH_MAX];
        if (snprintf(cert_path, sizeof(cert_path), "%s/ca.pem", opt->state_dir) >=
                (int)sizeof(cert_path) ||
            snprintf(key_path, sizeof(key_path), "%s/ca-key.pem", opt->state_dir) >=
                (int)sizeof(key_path)) {
                log_error(COMP, 0, "state directory path %s is too long", opt->state_dir);
                rc = -ENAMETOOLONG;
                goto done;
        }
        rc = mkdir_parents(opt->state_dir);
        if (rc < 0)
                goto done;
        if (mkdir(opt->state_dir, 0700) < 0 && errno != EEXIST) {
                rc = -errno;
                log_error(COMP, 0, "cannot create state directory %s: %s", opt->state_dir,
                          strerror(-rc));
                goto done;
        }
        struct stat st;
        if (stat(opt->state_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
                log_error(COMP, 0, "state directory %s is not a directory", opt->state_dir);
                rc = -ENOTDIR;
                goto done;
        }
        if (lstat(key_path, &st) == 0) {
                if (!S_ISREG(st.st_mode)) {
                        log_error(COMP, 0, "CA key %s is not a regular file", key_path);
                        rc = -EINVAL;
                        goto done;
                }
                if (st.st_mode & 077) {
                        log_error(COMP, 0,
                                  "CA key %s has mode %04o: group and others must have no access "
                                  "(chmod 600)",
                                  key_path, (unsigned)(st.st_mode & 07777));
                        rc = -EPERM;
                        goto done;
                }
                rc = ca_load(ca, cert_path, key_path);
                if (rc == 0)
                        log_info(COMP, 0, "loaded the mesh CA from %s", opt->state_dir);
                goto done;
        }
        if (errno != ENOENT) {
                rc = -errno;
                log_error(COMP, 0, "cannot stat CA key %s: %s", key_path, strerror(-rc));
                goto done;
        }
        rc = ca_create(ca, opt);
        if (rc == 0)
                rc = tls_pem_write_key(key_path, ca->key, 0600);
        if (rc == 0)
                rc = tls_pem_write_certs(cert_path, &ca->cert, 1, 0644);
        if (rc == 0) {
                char serial[64];
                tls_cert_serial_hex(ca->cert, serial, sizeof(serial));
                log_info(COMP, 0, "created a mesh CA (%s, serial %s) in %s",
                         tls_key_type_name(opt->key_type), serial, opt->state_dir);
        }
done:
        if (rc < 0) {
                tls_ca_free(ca);
                return rc;
        }
        *out = ca;
        return 0;
}

/* The name a log line gives the certificate being made. */
static const char *req_name(const struct tls_issue_req *req)
{
        if (req->spiffe_id && *req->spiffe_id)
                return req->spiffe_id;
        if (req->dns_name && *req->dns_name)
                return req->dns_name;
        return req->n_sans ? req->sans[0] : "(no name)";
}

/* A workload certificate for pub, signed by ca: the one place where the
 * leaf's names and extensions are decided (tls_ca_issue and tls_ca_sign). */
static int build_leaf(struct tls_ca *ca, EVP_PKEY *pub, const struct tls_issue_req *req, X509 **out)
{
        char eb[160];
        if ((!req->spiffe_id || !*req->spiffe_id) && (!req->dns_name || !*req->dns_name) &&
            req->n_sans == 0) {
                log_error(COMP, 0, "certificate request without a SPIFFE ID or another name");
                return -EINVAL;
        }
        if (req->not_after <= req->not_before) {
                log_error(COMP, 0, "certificate request for %s: not_after is not after not_before",
                          req_name(req));
                return -EINVAL;
        }
        X509 *x = X509_new();
        int rc = x ? 0 : -ENOMEM;
        if (rc == 0 && !X509_set_version(x, X509_VERSION_3))
                rc = -EINVAL;
        if (rc == 0)
                rc = set_random_serial(x);
        if (rc == 0)
                rc = set_times(x, req->not_before, req->not_after);
        if (rc == 0) {
                X509_NAME *n = X509_get_subject_name(x);
                char o[SPIFFE_TD_MAX + 1] = "shunt";
                struct spiffe_id *id = malloc(sizeof(*id));
                if (id && req->spiffe_id && spiffe_id_parse(req->spiffe_id, id, NULL) == 0)
                        snprintf(o, sizeof(o), "%s", id->trust_domain);
                free(id);
                rc = name_add(n, NID_organizationName, o);
                if (rc == 0 && !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)))
                        rc = -EINVAL;
        }
        if (rc == 0 && !X509_set_pubkey(x, pub))
                rc = -EINVAL;
        if (rc == 0)
                rc = add_basic_constraints(x, false);
        if (rc == 0)
                rc = add_key_usage(x, (const int[]){0}, 1); /* digitalSignature */
        if (rc == 0)
                rc = add_eku(x);
        if (rc == 0)
                rc = add_san(x, req);
        if (rc == 0)
                rc = add_key_ids(x, ca->cert);
        if (rc == 0 && !X509_sign(x, ca->key, EVP_sha256()))
                rc = -EINVAL;
        if (rc < 0) {
                log_error(COMP, 0, "issuing a certificate for %s failed: %s", req_name(req),
                          ssl_err(eb, sizeof(eb)));
                X509_free(x);
                return rc;
        }
        *out = x;
        return 0;
}

int tls_ca_sign(struct tls_ca *ca, EVP_PKEY *pub, const struct tls_issue_req *req, X509 **out)
{
        return build_leaf(ca, pub, req, out);
}

int tls_ca_issue(struct tls_ca *ca, const struct tls_issue_req *req, struct tls_material **out)
{
        struct tls_material *m = tls_material_new();
        if (!m)
                return -ENOMEM;
        int rc = tls_key_generate(req->key_type, &m->key);
        if (rc == 0)
                rc = build_leaf(ca, m->key, req, &m->leaf);
        if (rc == 0) {
                X509_up_ref(ca->cert);
                if (!sk_X509_push(m->bundle, ca->cert)) {
                        X509_free(ca->cert);
                        rc = -ENOMEM;
                }
        }
        if (rc < 0) {
                tls_material_free(m);
                return rc;
        }
        m->issued_at = time(NULL);
        *out = m;
        return 0;
}

char *tls_pem_encode_certs(X509 *const *certs, size_t n)
{
        BIO *b = BIO_new(BIO_s_mem());
        if (!b)
                return NULL;
        bool ok = true;
        for (size_t i = 0; ok && i < n; i++)
                ok = PEM_write_bio_X509(b, certs[i]) == 1;
        const uint8_t *d;
        size_t len;
        char *out = NULL;
        if (ok && BIO_mem_contents(b, &d, &len) && (out = malloc(len + 1)) != NULL) {
                memcpy(out, d, len);
                out[len] = '\0';
        }
        BIO_free(b);
        ERR_clear_error();
        return out;
}

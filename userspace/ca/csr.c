// SPDX-License-Identifier: Apache-2.0
/* CSR checking and signing: the only names a certificate gets are the ones
 * the token proved; the CSR contributes its public key and nothing else. */
#include "ca/ca.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#define CSR_INVALID  "csr_invalid"
#define CSR_MISMATCH "csr_mismatch"

static int refuse(int rc, const char **reason, char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int refuse(int rc, const char **reason, char *msg, size_t msglen, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, msglen, fmt, ap);
        va_end(ap);
        *reason = rc == -EPERM ? CSR_MISMATCH : CSR_INVALID;
        ERR_clear_error();
        return rc;
}

/* ECDSA P-256 or RSA-2048: the key types the mesh uses. */
static bool key_supported(EVP_PKEY *k, char *what, size_t len)
{
        switch (EVP_PKEY_id(k)) {
        case EVP_PKEY_EC: {
                const EC_GROUP *g = EC_KEY_get0_group(EVP_PKEY_get0_EC_KEY(k));
                int nid = g ? EC_GROUP_get_curve_name(g) : NID_undef;
                snprintf(what, len, "ECDSA %s",
                         nid == NID_undef ? "(unknown curve)" : OBJ_nid2sn(nid));
                return nid == NID_X9_62_prime256v1;
        }
        case EVP_PKEY_RSA:
                snprintf(what, len, "RSA-%d", EVP_PKEY_bits(k));
                return EVP_PKEY_bits(k) == 2048;
        default:
                snprintf(what, len, "key type %d", EVP_PKEY_id(k));
                return false;
        }
}

/* The CSR's requested extensions: only a SAN with exactly spiffe_id and a
 * basicConstraints without CA are acceptable; anything else it asks for
 * (key usages, policies...) is not copied, so it does no harm. */
static int check_extensions(X509_REQ *req, const char *spiffe_id, const char **reason, char *msg,
                            size_t msglen)
{
        STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < sk_X509_EXTENSION_num(exts); i++) {
                X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);
                int nid = OBJ_obj2nid(X509_EXTENSION_get_object(ext));
                if (nid == NID_basic_constraints) {
                        BASIC_CONSTRAINTS *bc = X509V3_EXT_d2i(ext);
                        if (!bc)
                                rc = refuse(-EINVAL, reason, msg, msglen,
                                            "basicConstraints in the CSR is malformed");
                        else if (bc->ca)
                                rc = refuse(-EPERM, reason, msg, msglen,
                                            "the CSR asks for a CA certificate (basicConstraints "
                                            "CA:TRUE)");
                        BASIC_CONSTRAINTS_free(bc);
                } else if (nid == NID_subject_alt_name) {
                        GENERAL_NAMES *names = X509V3_EXT_d2i(ext);
                        if (!names) {
                                rc = refuse(-EINVAL, reason, msg, msglen,
                                            "subjectAltName in the CSR is malformed");
                                continue;
                        }
                        for (size_t j = 0; rc == 0 && j < sk_GENERAL_NAME_num(names); j++) {
                                const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
                                if (gn->type != GEN_URI) {
                                        rc = refuse(-EPERM, reason, msg, msglen,
                                                    "the CSR asks for a subject alternative name "
                                                    "other than %s (type %d)",
                                                    spiffe_id, gn->type);
                                        break;
                                }
                                const ASN1_IA5STRING *u = gn->d.uniformResourceIdentifier;
                                size_t l = (size_t)ASN1_STRING_length(u);
                                const char *d = (const char *)ASN1_STRING_get0_data(u);
                                if (l != strlen(spiffe_id) || memcmp(d, spiffe_id, l) != 0)
                                        rc = refuse(-EPERM, reason, msg, msglen,
                                                    "the CSR asks for %.*s but the token proves %s",
                                                    l > 300 ? 300 : (int)l, d, spiffe_id);
                        }
                        GENERAL_NAMES_free(names);
                }
        }
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        return rc;
}

int ca_csr_sign(struct tls_ca *ca, const char *csr_pem, size_t len, const char *spiffe_id,
                time_t not_before, time_t not_after, X509 **out, const char **reason, char *msg,
                size_t msglen)
{
        *reason = NULL;
        msg[0] = '\0';
        if (len > INT32_MAX)
                return refuse(-EINVAL, reason, msg, msglen, "the CSR is too large");
        BIO *b = BIO_new_mem_buf(csr_pem, (long)len);
        X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (!req)
                return refuse(-EINVAL, reason, msg, msglen,
                              "no PEM CERTIFICATE REQUEST could be parsed");
        int rc = 0;
        char what[64];
        EVP_PKEY *pub = X509_REQ_get_pubkey(req);
        if (!pub)
                rc = refuse(-EINVAL, reason, msg, msglen, "the CSR's public key cannot be read");
        else if (!key_supported(pub, what, sizeof(what)))
                rc = refuse(-EINVAL, reason, msg, msglen,
                            "the CSR's key (%s) is not supported: use ECDSA P-256 or RSA-2048",
                            what);
        else if (X509_REQ_verify(req, pub) != 1)
                rc = refuse(-EINVAL, reason, msg, msglen,
                            "the CSR's signature does not verify with its key");
        if (rc == 0)
                rc = check_extensions(req, spiffe_id, reason, msg, msglen);
        if (rc == 0) {
                struct tls_issue_req ir = {
                    .spiffe_id = spiffe_id,
                    .not_before = not_before,
                    .not_after = not_after,
                };
                rc = tls_ca_sign(ca, pub, &ir, out);
                if (rc < 0) {
                        snprintf(msg, msglen, "signing failed (%s)", strerror(-rc));
                        *reason = "internal";
                }
        }
        EVP_PKEY_free(pub);
        X509_REQ_free(req);
        ERR_clear_error();
        return rc;
}

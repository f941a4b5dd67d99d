/* SPDX-License-Identifier: Apache-2.0 */
/* Certificates, keys and the built-in CA.
 *
 * struct tls_material is one complete identity: the workload's certificate,
 * its intermediates, its private key and the trust bundle it verifies peers
 * against. Sources (source.h) produce it, the store (store.h) turns it into
 * TLS contexts. A private key is never printed: no function here writes one
 * anywhere but the 0600 key file of the CA's state directory. */
#ifndef SHUNT_TLS_CERT_H
#define SHUNT_TLS_CERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

enum tls_key_type {
        TLS_KEY_ECDSA_P256 = 0,
        TLS_KEY_RSA_2048 = 1,
};
/* "ecdsa-p256" or "rsa-2048". */
const char *tls_key_type_name(enum tls_key_type t);
/* 0 or -EINVAL (logged, naming the value and what is allowed). */
int tls_key_type_parse(const char *s, enum tls_key_type *out);
int tls_key_generate(enum tls_key_type t, EVP_PKEY **out);

struct tls_material {
        X509 *leaf;
        STACK_OF(X509) * chain;  /* intermediates sent after the leaf (may be empty) */
        EVP_PKEY *key;           /* the leaf's private key */
        STACK_OF(X509) * bundle; /* trust anchors (one or more CAs) */
        time_t issued_at;        /* start of the rotation schedule */
};

struct tls_material *tls_material_new(void);
void tls_material_free(struct tls_material *m);
/* Checks that the key matches the leaf, the leaf chains to the bundle now
 * (with skew_s of clock allowance), the leaf is not a CA and carries exactly
 * one valid SPIFFE URI SAN in trust_domain. 0, or -EINVAL with a sentence in
 * err (never containing key material). */
int tls_material_check(const struct tls_material *m, const char *trust_domain, uint32_t skew_s,
                       char *err, size_t errlen);

/* The certificate's one URI SAN. 0; -ENOENT when it has none; -EINVAL when
 * it has several or the one is not a valid SPIFFE ID (*why says which). */
int tls_cert_spiffe_uri(X509 *cert, char *buf, size_t len, const char **why);
/* Lower-case hex of the serial, no leading zeros ("0" for zero). */
int tls_cert_serial_hex(const X509 *cert, char *buf, size_t len);
int tls_asn1_time_unix(const ASN1_TIME *t, time_t *out);
time_t tls_cert_not_before(const X509 *cert);
time_t tls_cert_not_after(const X509 *cert);
/* "CN=...,O=..." (RFC 2253 order), truncated to len. */
void tls_cert_subject(const X509 *cert, char *buf, size_t len);
/* "2026-11-26T00:38:27Z". */
void tls_time_rfc3339(time_t t, char *buf, size_t len);

/* PEM files. Readers log the path and reason on failure. */
int tls_pem_read_certs(const char *path, STACK_OF(X509) * *out); /* at least one */
int tls_pem_read_key(const char *path, EVP_PKEY **out);
/* Writes atomically (temporary file, fsync, rename) with the given mode. */
int tls_pem_write_certs(const char *path, X509 *const *certs, size_t n, unsigned mode);
int tls_pem_write_key(const char *path, EVP_PKEY *key, unsigned mode);

/* ---- built-in CA ---------------------------------------------------------- */

struct tls_ca;

struct tls_ca_options {
        /* Either cert_file and key_file (loaded as given), or state_dir: its
         * ca.pem and ca-key.pem are loaded, or created (directory 0700, key
         * 0600) on first start. A key file in the state directory that group
         * or others can read is refused. */
        const char *state_dir;
        const char *cert_file;
        const char *key_file;
        const char *trust_domain; /* in the root's subject */
        enum tls_key_type key_type;
        uint32_t lifetime_s; /* of a created root; 0 = 10 years */
};

int tls_ca_open(const struct tls_ca_options *opt, struct tls_ca **out);
void tls_ca_free(struct tls_ca *ca);
X509 *tls_ca_cert(const struct tls_ca *ca); /* borrowed */

struct tls_issue_req {
        /* URI SAN (not validated against a trust domain); required unless
         * dns_name or sans give the certificate another name */
        const char *spiffe_id;
        const char *dns_name;    /* optional: DNS SAN */
        const char *const *sans; /* optional: more SANs, "DNS:<name>" or "IP:<address>" */
        size_t n_sans;
        enum tls_key_type key_type;
        time_t not_before;
        time_t not_after;
};

/* A new key and a certificate for it: URI SAN, DNS SAN, EKU serverAuth +
 * clientAuth, keyUsage digitalSignature (critical), CA:FALSE, random 128-bit
 * positive serial, SKI/AKI. The material's bundle holds the CA certificate;
 * issued_at is the current time. */
int tls_ca_issue(struct tls_ca *ca, const struct tls_issue_req *req, struct tls_material **out);
/* The same certificate for a public key the caller brings (a CSR's): the
 * names and extensions come from req only (key_type is not used). */
int tls_ca_sign(struct tls_ca *ca, EVP_PKEY *pub, const struct tls_issue_req *req, X509 **out);

/* The certificates as PEM text (malloc'd, NUL-terminated), NULL when out of
 * memory. */
char *tls_pem_encode_certs(X509 *const *certs, size_t n);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Certificate sources: where the workload's certificate comes from.
 *
 * - builtin: the embedded CA (cert.h) issues a fresh key and certificate on
 *   every fetch; the store calls it again when a third of the lifetime is
 *   left. An optional extra bundle file adds trusted CAs (CA rotation with
 *   overlap: put the old root there while peers move to the new one).
 * - files: a certificate chain, key and trust bundle written by an external CA
 *   (cert-manager, SPIRE, a Kubernetes Secret mount). changed() compares
 *   device, inode, size, mtime and ctime of each file with the last attempt,
 *   so a symlink swap or an in-place rewrite are both seen; a new set that
 *   fails validation is refused and the store keeps the old one.
 * - ca: shunt-ca issues the certificate. Each fetch makes a new key in
 *   memory (it is never written anywhere), sends a PKCS#10 CSR for the
 *   identity the service-account token names with that token as bearer, and
 *   takes the chain and trust bundle the CA returns. Renewals run on the main
 *   loop (fetch_async), so a slow or unreachable CA never holds it. */
#ifndef SHUNT_TLS_SOURCE_H
#define SHUNT_TLS_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/strbuf.h"
#include "tls/cert.h"

struct tls_source;

/* The end of an asynchronous fetch: rc 0 with m (the callee takes it over),
 * or a negative errno with a sentence (no key material) in err. */
typedef void (*tls_fetch_done_fn)(void *ctx, int rc, struct tls_material *m, const char *err);

struct tls_source_ops {
        const char *kind; /* "builtin-ca", "files", ... */
        /* true: the store fetches again when a third of the lifetime is left */
        bool rotates;
        /* New material; on failure a sentence (no key material) in err. */
        int (*fetch)(struct tls_source *src, struct tls_material **out, char *err, size_t errlen);
        /* 1 when the source has something new since the last fetch, else 0. May be NULL. */
        int (*changed)(struct tls_source *src);
        /* Starts a fetch that ends with done(ctx, ...) on the main loop, exactly
         * once unless the source is destroyed first. 0 when started;
         * -EOPNOTSUPP when the source cannot (the store then calls fetch); other
         * errors with a sentence in err. May be NULL. */
        int (*fetch_async)(struct tls_source *src, tls_fetch_done_fn done, void *ctx, char *err,
                           size_t errlen);
        /* Appends the source's own /certs fields (",\"key\":value..."). May be NULL. */
        void (*render_json)(struct tls_source *src, struct strbuf *sb);
        /* Appends the source's own Prometheus families. May be NULL. */
        void (*render_metrics)(struct tls_source *src, struct strbuf *sb);
        void (*destroy)(struct tls_source *src);
};

struct tls_source {
        const struct tls_source_ops *ops;
};

struct tls_builtin_options {
        struct tls_ca_options ca;
        const char *spiffe_id;         /* required */
        const char *dns_name;          /* <service>.<namespace>.svc.cluster.local; optional */
        enum tls_key_type key_type;    /* of workload keys */
        uint32_t lifetime_s;           /* 0: 24 h */
        uint32_t backdate_s;           /* notBefore = now - backdate_s; 0 = none */
        const char *extra_bundle_file; /* optional: more trusted CAs */
};
#define TLS_DEFAULT_LIFETIME_S 86400u
#define TLS_DEFAULT_BACKDATE_S 60u

int tls_source_builtin_new(const struct tls_builtin_options *opt, struct tls_source **out);

struct tls_files_options {
        const char *cert_file; /* leaf first, then intermediates */
        const char *key_file;
        const char *bundle_file; /* trusted CAs */
        const char *trust_domain;
        uint32_t clock_skew_s;
};

int tls_source_files_new(const struct tls_files_options *opt, struct tls_source **out);

/* ---- ca: certificates from shunt-ca ---------------------------------------- */

#define TLS_CA_TOKEN_MAX    (16 * 1024)  /* bytes of a service-account token */
#define TLS_CA_RESPONSE_MAX (256 * 1024) /* bytes of the CA's answer */
#define TLS_CA_CONNECT_MS   5000u
#define TLS_CA_REQUEST_MS   15000u /* one request, connection included */
#define TLS_CA_START_MS     20000u /* the first certificate: retries until then */

struct tls_ca_source_options {
        const char *address;     /* https://host[:port], no path */
        const char *token_file;  /* re-read on every request */
        const char *bundle_file; /* verifies the CA; the peers' trust until the CA sends one */
        const char *trust_domain;
        /* Overrides of the token's claims; NULL or "" = from the token. */
        const char *ns_override;
        const char *sa_override;
        /* Delegated issuance (node mode): the certificate of for_ns/for_sa,
         * asked for on a pod's behalf with the node agent's own token as
         * bearer (the request's "for": {"namespace", "service_account"}; the
         * CA checks that a pod of that account runs on the agent's node).
         * Both or neither; they take precedence over the overrides. */
        const char *for_ns;
        const char *for_sa;
        enum tls_key_type key_type;
        uint32_t mark;     /* SO_MARK of the connection to the CA; 0 = none */
        struct loop *loop; /* renewals run on it; NULL = blocking fetches only */
        uint32_t start_ms; /* 0 = TLS_CA_START_MS */
};

int tls_source_ca_new(const struct tls_ca_source_options *opt, struct tls_source **out);

/* What the ca source reads from a projected service-account token: the
 * payload's claims, decoded without verifying the signature (the CA does). */
struct tls_token_claims {
        char ns[254]; /* kubernetes.io.namespace, else from sub */
        char sa[254]; /* kubernetes.io.serviceaccount.name, else from sub */
        int64_t exp;  /* 0 when absent */
};

/* Parses a JWT (header.payload.signature, base64url) of at most
 * TLS_CA_TOKEN_MAX bytes: namespace and service account from the
 * "kubernetes.io" claim, or from "sub" (system:serviceaccount:<ns>:<sa>).
 * 0, or -EINVAL / -E2BIG with a sentence in err (never the token). */
int tls_token_claims_parse(const char *token, size_t len, struct tls_token_claims *out, char *err,
                           size_t errlen);

/* A PKCS#10 request signed by key whose only content is spiffe_id as a URI
 * SAN (empty subject), as PEM in a malloc'd string. 0 or -errno. */
int tls_csr_build(EVP_PKEY *key, const char *spiffe_id, char **pem);

void tls_source_free(struct tls_source *src);

#endif

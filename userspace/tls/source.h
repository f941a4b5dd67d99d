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
 *   fails validation is refused and the store keeps the old one. */
#ifndef SHUNT_TLS_SOURCE_H
#define SHUNT_TLS_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls/cert.h"

struct tls_source;

struct tls_source_ops {
        const char *kind; /* "builtin-ca", "files", ... */
        /* true: the store fetches again when a third of the lifetime is left */
        bool rotates;
        /* New material; on failure a sentence (no key material) in err. */
        int (*fetch)(struct tls_source *src, struct tls_material **out, char *err, size_t errlen);
        /* 1 when the source has something new since the last fetch, else 0. May be NULL. */
        int (*changed)(struct tls_source *src);
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

void tls_source_free(struct tls_source *src);

#endif

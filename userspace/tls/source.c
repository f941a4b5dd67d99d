// SPDX-License-Identifier: Apache-2.0
/* Certificate sources: the built-in CA and files written by an external CA. */
#include "tls/source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>

#include "core/log.h"
#include "tls/tls-int.h"

#define COMP "tls"

void tls_source_free(struct tls_source *src)
{
        if (src)
                src->ops->destroy(src);
}

static char *dup_opt(const char *s)
{
        return s && *s ? strdup(s) : NULL;
}

void tls_file_sig_get(const char *path, struct tls_file_sig *s)
{
        struct stat st;
        memset(s, 0, sizeof(*s));
        if (!path)
                return;
        if (stat(path, &st) < 0) {
                s->err = errno;
                return;
        }
        s->dev = st.st_dev;
        s->ino = st.st_ino;
        s->size = st.st_size;
        s->mtime = st.st_mtim;
        s->ctime = st.st_ctim;
}

bool tls_file_sig_eq(const struct tls_file_sig *a, const struct tls_file_sig *b)
{
        return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
               a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
               a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec &&
               a->err == b->err;
}

/* Appends every certificate of path to sk. */
static int add_bundle_file(STACK_OF(X509) * sk, const char *path, char *err, size_t errlen)
{
        STACK_OF(X509) * extra;
        int rc = tls_pem_read_certs(path, &extra);
        if (rc < 0) {
                snprintf(err, errlen, "trust bundle %s cannot be read (%s)", path,
                         rc == -EINVAL ? "no valid PEM certificate" : strerror(-rc));
                return rc;
        }
        X509 *x;
        while ((x = sk_X509_shift(extra)) != NULL) {
                if (!sk_X509_push(sk, x)) {
                        X509_free(x);
                        sk_X509_pop_free(extra, X509_free);
                        return -ENOMEM;
                }
        }
        sk_X509_free(extra);
        return 0;
}

/* ---- built-in CA ------------------------------------------------------------ */

struct builtin {
        struct tls_source src;
        struct tls_ca *ca;
        char *spiffe_id, *dns_name, *extra_bundle;
        enum tls_key_type key_type;
        uint32_t lifetime_s, backdate_s;
        struct tls_file_sig extra_sig;
};

static int builtin_fetch(struct tls_source *src, struct tls_material **out, char *err,
                         size_t errlen)
{
        struct builtin *b = (struct builtin *)src;
        time_t now = time(NULL);
        struct tls_issue_req req = {
            .spiffe_id = b->spiffe_id,
            .dns_name = b->dns_name,
            .key_type = b->key_type,
            .not_before = now - (time_t)b->backdate_s,
            .not_after = now + (time_t)b->lifetime_s,
        };
        struct tls_material *m;
        tls_file_sig_get(b->extra_bundle, &b->extra_sig);
        int rc = tls_ca_issue(b->ca, &req, &m);
        if (rc < 0) {
                snprintf(err, errlen, "the built-in CA could not issue a certificate for %s",
                         b->spiffe_id);
                return rc;
        }
        if (b->extra_bundle && (rc = add_bundle_file(m->bundle, b->extra_bundle, err, errlen))) {
                tls_material_free(m);
                return rc;
        }
        *out = m;
        return 0;
}

static int builtin_changed(struct tls_source *src)
{
        struct builtin *b = (struct builtin *)src;
        if (!b->extra_bundle)
                return 0;
        struct tls_file_sig s;
        tls_file_sig_get(b->extra_bundle, &s);
        return !tls_file_sig_eq(&s, &b->extra_sig);
}

static void builtin_destroy(struct tls_source *src)
{
        struct builtin *b = (struct builtin *)src;
        tls_ca_free(b->ca);
        free(b->spiffe_id);
        free(b->dns_name);
        free(b->extra_bundle);
        free(b);
}

static const struct tls_source_ops builtin_ops = {
    .kind = "builtin-ca",
    .rotates = true,
    .fetch = builtin_fetch,
    .changed = builtin_changed,
    .destroy = builtin_destroy,
};

int tls_source_builtin_new(const struct tls_builtin_options *opt, struct tls_source **out)
{
        if (!opt->spiffe_id || !*opt->spiffe_id) {
                log_error(COMP, 0, "built-in CA source: no SPIFFE ID to issue for");
                return -EINVAL;
        }
        struct builtin *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->src.ops = &builtin_ops;
        b->spiffe_id = strdup(opt->spiffe_id);
        b->dns_name = dup_opt(opt->dns_name);
        b->extra_bundle = dup_opt(opt->extra_bundle_file);
        b->key_type = opt->key_type;
        b->lifetime_s = opt->lifetime_s ? opt->lifetime_s : TLS_DEFAULT_LIFETIME_S;
        b->backdate_s = opt->backdate_s;
        if (!b->spiffe_id || (opt->dns_name && *opt->dns_name && !b->dns_name) ||
            (opt->extra_bundle_file && *opt->extra_bundle_file && !b->extra_bundle)) {
                builtin_destroy(&b->src);
                return -ENOMEM;
        }
        int rc = tls_ca_open(&opt->ca, &b->ca);
        if (rc < 0) {
                builtin_destroy(&b->src);
                return rc;
        }
        *out = &b->src;
        return 0;
}

/* ---- files ------------------------------------------------------------------ */

struct files {
        struct tls_source src;
        char *cert, *key, *bundle, *td;
        uint32_t skew_s;
        struct tls_file_sig sig[3]; /* of the last attempt */
};

static void files_sigs(struct files *f, struct tls_file_sig sig[3])
{
        tls_file_sig_get(f->cert, &sig[0]);
        tls_file_sig_get(f->key, &sig[1]);
        tls_file_sig_get(f->bundle, &sig[2]);
}

static int files_fetch(struct tls_source *src, struct tls_material **out, char *err, size_t errlen)
{
        struct files *f = (struct files *)src;
        files_sigs(f, f->sig);
        struct tls_material *m = tls_material_new();
        if (!m)
                return -ENOMEM;
        STACK_OF(X509) *certs = NULL;
        int rc = tls_pem_read_certs(f->cert, &certs);
        if (rc < 0) {
                snprintf(err, errlen, "certificate file %s cannot be read (%s)", f->cert,
                         rc == -EINVAL ? "no valid PEM certificate" : strerror(-rc));
                goto fail;
        }
        m->leaf = sk_X509_shift(certs);
        sk_X509_pop_free(m->chain, X509_free);
        m->chain = certs;
        rc = tls_pem_read_key(f->key, &m->key);
        if (rc < 0) {
                snprintf(err, errlen, "key file %s cannot be read (%s)", f->key,
                         rc == -EINVAL ? "no valid PEM private key" : strerror(-rc));
                goto fail;
        }
        rc = add_bundle_file(m->bundle, f->bundle, err, errlen);
        if (rc < 0)
                goto fail;
        rc = tls_material_check(m, f->td, f->skew_s, err, errlen);
        if (rc < 0)
                goto fail;
        m->issued_at = tls_cert_not_before(m->leaf);
        *out = m;
        return 0;
fail:
        tls_material_free(m);
        return rc;
}

static int files_changed(struct tls_source *src)
{
        struct files *f = (struct files *)src;
        struct tls_file_sig now[3];
        files_sigs(f, now);
        for (int i = 0; i < 3; i++)
                if (!tls_file_sig_eq(&now[i], &f->sig[i]))
                        return 1;
        return 0;
}

static void files_destroy(struct tls_source *src)
{
        struct files *f = (struct files *)src;
        free(f->cert);
        free(f->key);
        free(f->bundle);
        free(f->td);
        free(f);
}

static const struct tls_source_ops files_ops = {
    .kind = "files",
    .rotates = false,
    .fetch = files_fetch,
    .changed = files_changed,
    .destroy = files_destroy,
};

int tls_source_files_new(const struct tls_files_options *opt, struct tls_source **out)
{
        const char *missing = !opt->cert_file || !*opt->cert_file       ? "certificate file"
                              : !opt->key_file || !*opt->key_file       ? "key file"
                              : !opt->bundle_file || !*opt->bundle_file ? "trust bundle file"
                                                                        : NULL;
        if (missing) {
                log_error(COMP, 0, "file certificate source: no %s given", missing);
                return -EINVAL;
        }
        struct files *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->src.ops = &files_ops;
        f->cert = strdup(opt->cert_file);
        f->key = strdup(opt->key_file);
        f->bundle = strdup(opt->bundle_file);
        f->td = dup_opt(opt->trust_domain);
        f->skew_s = opt->clock_skew_s;
        if (!f->cert || !f->key || !f->bundle) {
                files_destroy(&f->src);
                return -ENOMEM;
        }
        *out = &f->src;
        return 0;
}

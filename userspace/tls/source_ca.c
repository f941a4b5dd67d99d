// SPDX-License-Identifier: Apache-2.0
/* Certificate source "ca": a key made in memory, a CSR for the identity the
 * service-account token names, and a certificate from shunt-ca. */
#include "tls/source.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/base64.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/file.h"
#include "core/curlloop.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/spiffe.h"
#include "tls/tls-int.h"

#define COMP "tls"

/* ---- the token's claims ----------------------------------------------------- */

static int copy_name(char *dst, size_t cap, const char *src, size_t n, const char *what, char *err,
                     size_t errlen)
{
        if (n == 0 || n >= cap) {
                snprintf(err, errlen, "the token's %s is empty or longer than %zu bytes", what,
                         cap - 1);
                return -EINVAL;
        }
        memcpy(dst, src, n);
        dst[n] = '\0';
        if (!spiffe_name_valid(dst)) {
                snprintf(err, errlen, "the token's %s \"%.64s\" is not a valid name", what, dst);
                return -EINVAL;
        }
        return 0;
}

int tls_token_claims_parse(const char *tok, size_t len, struct tls_token_claims *out, char *err,
                           size_t errlen)
{
        memset(out, 0, sizeof(*out));
        if (len > TLS_CA_TOKEN_MAX) {
                snprintf(err, errlen, "the token is %zu bytes, at most %d are accepted", len,
                         TLS_CA_TOKEN_MAX);
                return -E2BIG;
        }
        const char *d1 = memchr(tok, '.', len);
        const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok)) : NULL;
        if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)) || d1 == tok ||
            d2 == d1 + 1) {
                snprintf(err, errlen, "the token is not a JWT (header.payload.signature)");
                return -EINVAL;
        }
        /* base64url without padding -> standard base64 with padding */
        size_t n = (size_t)(d2 - d1 - 1);
        if (n % 4 == 1) {
                snprintf(err, errlen, "the token's payload is not base64url");
                return -EINVAL;
        }
        char *b64 = malloc(n + 4);
        uint8_t *raw = malloc(n + 4);
        if (!b64 || !raw) {
                free(b64);
                free(raw);
                return -ENOMEM;
        }
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
                char c = d1[1 + i];
                if (c == '-')
                        c = '+';
                else if (c == '_')
                        c = '/';
                else if (!isalnum((unsigned char)c))
                        rc = -EINVAL;
                b64[i] = c;
        }
        size_t padded = n;
        while (padded % 4)
                b64[padded++] = '=';
        size_t rawlen = 0;
        if (rc == 0 && !EVP_DecodeBase64(raw, &rawlen, n + 3, (const uint8_t *)b64, padded))
                rc = -EINVAL;
        ERR_clear_error();
        free(b64);
        if (rc < 0) {
                free(raw);
                snprintf(err, errlen, "the token's payload is not base64url");
                return rc;
        }
        cJSON *j = cJSON_ParseWithLength((const char *)raw, rawlen);
        free(raw);
        if (!cJSON_IsObject(j)) {
                cJSON_Delete(j);
                snprintf(err, errlen, "the token's payload is not a JSON object");
                return -EINVAL;
        }
        const cJSON *exp = cJSON_GetObjectItemCaseSensitive(j, "exp");
        if (cJSON_IsNumber(exp))
                out->exp = (int64_t)exp->valuedouble;
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "kubernetes.io");
        const cJSON *ns = cJSON_GetObjectItemCaseSensitive(k, "namespace");
        const cJSON *sa = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(k, "serviceaccount"), "name");
        const cJSON *sub = cJSON_GetObjectItemCaseSensitive(j, "sub");
        static const char prefix[] = "system:serviceaccount:";
        if (cJSON_IsString(ns) && cJSON_IsString(sa)) {
                rc = copy_name(out->ns, sizeof(out->ns), ns->valuestring, strlen(ns->valuestring),
                               "namespace", err, errlen);
                if (rc == 0)
                        rc = copy_name(out->sa, sizeof(out->sa), sa->valuestring,
                                       strlen(sa->valuestring), "service account", err, errlen);
        } else if (cJSON_IsString(sub) && !strncmp(sub->valuestring, prefix, sizeof(prefix) - 1)) {
                const char *s = sub->valuestring + sizeof(prefix) - 1;
                const char *colon = strchr(s, ':');
                if (!colon) {
                        snprintf(err, errlen,
                                 "the token's sub is not system:serviceaccount:<namespace>:<name>");
                        rc = -EINVAL;
                } else {
                        rc = copy_name(out->ns, sizeof(out->ns), s, (size_t)(colon - s),
                                       "namespace", err, errlen);
                        if (rc == 0)
                                rc = copy_name(out->sa, sizeof(out->sa), colon + 1,
                                               strlen(colon + 1), "service account", err, errlen);
                }
        } else {
                snprintf(err, errlen,
                         "the token names no service account (neither kubernetes.io.namespace and "
                         "kubernetes.io.serviceaccount.name nor a sub of "
                         "system:serviceaccount:<namespace>:<name>)");
                rc = -EINVAL;
        }
        cJSON_Delete(j);
        if (rc < 0)
                memset(out, 0, sizeof(*out));
        return rc;
}

/* ---- the request ------------------------------------------------------------ */

int tls_csr_build(EVP_PKEY *key, const char *spiffe_id, char **pem)
{
        *pem = NULL;
        char san[SPIFFE_ID_MAX + 8];
        snprintf(san, sizeof(san), "URI:%s", spiffe_id);
        X509_REQ *req = X509_REQ_new();
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        /* A SPIFFE ID holds no ',' that the value syntax would split on. */
        X509_EXTENSION *ext = strchr(spiffe_id, ',')
                                  ? NULL
                                  : X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, san);
        BIO *b = BIO_new(BIO_s_mem());
        int rc = -ENOMEM;
        if (req && exts && ext && b && X509_REQ_set_version(req, 0) &&
            X509_REQ_set_pubkey(req, key) && sk_X509_EXTENSION_push(exts, ext)) {
                ext = NULL; /* owned by exts */
                if (X509_REQ_add_extensions(req, exts) && X509_REQ_sign(req, key, EVP_sha256()) &&
                    PEM_write_bio_X509_REQ(b, req)) {
                        const uint8_t *d;
                        size_t n;
                        if (BIO_mem_contents(b, &d, &n) && (*pem = malloc(n + 1))) {
                                memcpy(*pem, d, n);
                                (*pem)[n] = '\0';
                                rc = 0;
                        }
                } else {
                        rc = -EINVAL;
                }
        }
        if (rc < 0)
                log_error(COMP, 0, "building a certificate request for %s failed", spiffe_id);
        ERR_clear_error();
        X509_EXTENSION_free(ext);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        X509_REQ_free(req);
        BIO_free(b);
        return rc;
}

/* Every certificate in a PEM text; 0 or -EINVAL when there is none or one is bad. */
static int pem_parse_certs(const char *pem, STACK_OF(X509) * sk)
{
        BIO *b = BIO_new_mem_buf(pem, (int)strlen(pem));
        if (!b)
                return -ENOMEM;
        X509 *x;
        int n = 0;
        while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
                if (!sk_X509_push(sk, x)) {
                        X509_free(x);
                        BIO_free(b);
                        return -ENOMEM;
                }
                n++;
        }
        uint32_t e = ERR_peek_last_error();
        bool eof = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
        ERR_clear_error();
        BIO_free(b);
        return n > 0 && (!e || eof) ? 0 : -EINVAL;
}

struct ca_src;

/* One request to the CA: its key, body, headers and the answer so far. */
struct ca_req {
        struct ca_src *s;
        CURL *easy;
        struct curl_slist *hdrs;
        char *body;
        EVP_PKEY *key;
        char expected[SPIFFE_ID_MAX + 1];
        struct curl_body resp;
        char errbuf[CURL_ERROR_SIZE];
        tls_fetch_done_fn done;
        void *ctx;
};

struct ca_src {
        struct tls_source src;
        char *address, *url, *token_file, *bundle_file, *td, *ns_override, *sa_override;
        char *for_ns, *for_sa; /* delegated issuance: the identity asked for */
        enum tls_key_type key_type;
        uint32_t mark;
        uint32_t start_ms;
        struct curl_loop *cl; /* NULL without a loop */
        struct ca_req *inflight;
        bool issued; /* a certificate came since start */
        /* The token and bundle files as the last request read them: when
         * that request failed, a change is worth an immediate retry (a
         * rotated token, a fixed bundle). */
        struct tls_file_sig sig[2];
        /* The last attempt, for /certs and the metrics. */
        int64_t last_time;
        bool last_ok;
        char last_result[32]; /* "ok", the CA's error code, "unreachable", ... */
        char last_message[384];
        long last_status;
        char last_expected[SPIFFE_ID_MAX + 1];
        char last_serial[80];
        int64_t last_not_after;
        uint64_t n_requests, n_issued;
};

static void req_free(struct ca_req *r)
{
        if (!r)
                return;
        if (r->easy)
                curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->hdrs);
        if (r->body) {
                OPENSSL_cleanse(r->body, strlen(r->body));
                free(r->body);
        }
        EVP_PKEY_free(r->key);
        curl_body_free(&r->resp);
        free(r);
}

static int sockopt_cb(void *ud, curl_socket_t fd, curlsocktype purpose)
{
        struct ca_src *s = ud;
        if (s->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &s->mark, sizeof(s->mark)) < 0)
                log_debug(COMP, 0, "SO_MARK 0x%x on the connection to %s: %s", s->mark, s->address,
                          strerror(errno));
        return CURL_SOCKOPT_OK;
}

static void note(struct ca_src *s, bool ok, const char *result, long status, const char *msg)
{
        s->last_time = time(NULL);
        s->last_ok = ok;
        snprintf(s->last_result, sizeof(s->last_result), "%s", result);
        snprintf(s->last_message, sizeof(s->last_message), "%s", msg ? msg : "");
        s->last_status = status;
}

/* Reads the token, decides the identity, makes a key and a CSR, and sets up
 * the transfer. */
static int req_new(struct ca_src *s, struct ca_req **out, char *err, size_t errlen)
{
        *out = NULL;
        char *token = NULL;
        size_t tlen = 0;
        tls_file_sig_get(s->token_file, &s->sig[0]);
        tls_file_sig_get(s->bundle_file, &s->sig[1]);
        char tok_why[PATH_MAX + 64];
        int rc = file_read_token(s->token_file, TLS_CA_TOKEN_MAX, &token, &tlen, tok_why,
                                 sizeof(tok_why));
        if (rc < 0) {
                snprintf(err, errlen, "token file %s", tok_why);
                note(s, false, "token_unreadable", 0, err);
                return rc;
        }
        struct tls_token_claims cl;
        char why[256];
        rc = tls_token_claims_parse(token, tlen, &cl, why, sizeof(why));
        if (rc < 0) {
                snprintf(err, errlen, "token file %s: %s", s->token_file, why);
                note(s, false, "token_unusable", 0, err);
                OPENSSL_cleanse(token, tlen);
                free(token);
                return rc;
        }
        struct ca_req *r = calloc(1, sizeof(*r));
        struct spiffe_id *id = malloc(sizeof(*id));
        if (!r || !id) {
                free(r);
                free(id);
                OPENSSL_cleanse(token, tlen);
                free(token);
                return -ENOMEM;
        }
        r->resp.max = TLS_CA_RESPONSE_MAX;
        r->s = s;
        const char *ns = s->for_ns ? s->for_ns : s->ns_override ? s->ns_override : cl.ns;
        const char *sa = s->for_sa ? s->for_sa : s->sa_override ? s->sa_override : cl.sa;
        rc = spiffe_id_build(s->td, ns, sa, id);
        if (rc == 0)
                snprintf(r->expected, sizeof(r->expected), "%s", id->uri);
        else
                snprintf(err, errlen, "no valid SPIFFE ID from namespace %s, service account %s",
                         ns, sa);
        free(id);
        snprintf(s->last_expected, sizeof(s->last_expected), "%s", r->expected);
        char *csr = NULL;
        if (rc == 0 && (rc = tls_key_generate(s->key_type, &r->key)) < 0)
                snprintf(err, errlen, "generating a %s key failed", tls_key_type_name(s->key_type));
        if (rc == 0 && (rc = tls_csr_build(r->key, r->expected, &csr)) < 0)
                snprintf(err, errlen, "building the certificate request failed");
        cJSON *body = rc == 0 ? cJSON_CreateObject() : NULL;
        cJSON *target = rc == 0 && body && s->for_ns ? cJSON_AddObjectToObject(body, "for") : NULL;
        if (rc == 0 &&
            (!body || !cJSON_AddStringToObject(body, "csr", csr) ||
             (s->for_ns && (!target || !cJSON_AddStringToObject(target, "namespace", s->for_ns) ||
                            !cJSON_AddStringToObject(target, "service_account", s->for_sa))) ||
             !(r->body = cJSON_PrintUnformatted(body))))
                rc = -ENOMEM;
        cJSON_Delete(body);
        free(csr);
        char *auth = NULL;
        if (rc == 0 && asprintf(&auth, "Authorization: Bearer %s", token) < 0) {
                auth = NULL;
                rc = -ENOMEM;
        }
        OPENSSL_cleanse(token, tlen);
        free(token);
        const char *hdrs[] = {auth, "Content-Type: application/json", "Accept: application/json",
                              "Expect:"};
        for (size_t i = 0; rc == 0 && i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
                struct curl_slist *h = curl_slist_append(r->hdrs, hdrs[i]);
                if (!h)
                        rc = -ENOMEM;
                else
                        r->hdrs = h;
        }
        if (auth) {
                OPENSSL_cleanse(auth, strlen(auth));
                free(auth);
        }
        if (rc == 0 && !(r->easy = curl_easy_init()))
                rc = -ENOMEM;
        if (rc < 0) {
                if (rc == -ENOMEM && !err[0])
                        snprintf(err, errlen, "out of memory preparing the request");
                note(s, false, "internal", 0, err);
                req_free(r);
                return rc;
        }
        CURL *e = r->easy;
        curl_request_init(e, s->url, "https", r->hdrs, r->errbuf);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_body_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->resp);
        curl_trust_only(e, s->bundle_file);
        curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_3);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)TLS_CA_CONNECT_MS);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)TLS_CA_REQUEST_MS);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
        curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, s);
        s->n_requests++;
        *out = r;
        return 0;
}

static const char *jstr(const cJSON *j, const char *k)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Turns the finished transfer into material. -EAGAIN: worth retrying soon
 * (transport, 429, 5xx); other errors need something to change first. */
static int req_finish(struct ca_req *r, CURLcode cc, struct tls_material **out, char *err,
                      size_t errlen)
{
        struct ca_src *s = r->s;
        *out = NULL;
        if (cc != CURLE_OK) {
                snprintf(err, errlen, "shunt-ca at %s is unreachable: %s", s->address,
                         r->resp.too_large ? "its answer is larger than 256 KiB"
                         : r->errbuf[0]    ? r->errbuf
                                           : curl_easy_strerror(cc));
                note(s, false, r->resp.too_large ? "too_large" : "unreachable", 0, err);
                return r->resp.too_large ? -EMSGSIZE : -EAGAIN;
        }
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        cJSON *j = r->resp.data ? cJSON_ParseWithLength(r->resp.data, r->resp.len) : NULL;
        if (status != 200) {
                const char *code = jstr(j, "error"), *msg = jstr(j, "message");
                snprintf(err, errlen, "shunt-ca at %s refused the request for %s: HTTP %ld %s%s%s",
                         s->address, r->expected, status, code ? code : "(no error code)",
                         msg ? ": " : "", msg ? msg : "");
                note(s, false, code ? code : "http_error", status, err);
                cJSON_Delete(j);
                return status == 429 || status >= 500 ? -EAGAIN : -EACCES;
        }
        const char *chain = jstr(j, "certificate_chain"), *bundle = jstr(j, "trust_bundle");
        const char *id = jstr(j, "spiffe_id");
        struct tls_material *m = tls_material_new();
        STACK_OF(X509) *certs = sk_X509_new_null();
        int rc = m && certs ? 0 : -ENOMEM;
        if (rc == 0 && (!chain || pem_parse_certs(chain, certs) < 0)) {
                snprintf(err, errlen,
                         "shunt-ca at %s answered without a readable certificate_chain",
                         s->address);
                rc = -EPROTO;
        }
        if (rc == 0) {
                m->leaf = sk_X509_shift(certs);
                sk_X509_pop_free(m->chain, X509_free);
                m->chain = certs;
                certs = NULL;
                m->key = r->key;
                r->key = NULL;
                m->issued_at = time(NULL);
        }
        /* The peers' trust: the CA's bundle, else the file that verified the CA. */
        if (rc == 0 && bundle && *bundle && pem_parse_certs(bundle, m->bundle) < 0) {
                snprintf(err, errlen, "shunt-ca at %s answered with an unreadable trust_bundle",
                         s->address);
                rc = -EPROTO;
        }
        if (rc == 0 && sk_X509_num(m->bundle) == 0) {
                STACK_OF(X509) *file = NULL;
                rc = tls_pem_read_certs(s->bundle_file, &file);
                if (rc < 0) {
                        snprintf(err, errlen, "trust bundle %s cannot be read", s->bundle_file);
                } else {
                        sk_X509_pop_free(m->bundle, X509_free);
                        m->bundle = file;
                }
        }
        char got[SPIFFE_ID_MAX + 1] = "";
        if (rc == 0) {
                const char *why = NULL;
                tls_cert_spiffe_uri(m->leaf, got, sizeof(got), &why);
                if (strcmp(got, r->expected) || (id && strcmp(id, got))) {
                        snprintf(err, errlen,
                                 "shunt-ca at %s issued a certificate for %s, but this %s "
                                 "expected %s (%s): refused",
                                 s->address, got[0] ? got : "no SPIFFE ID",
                                 s->for_ns ? "node agent" : "sidecar", r->expected,
                                 s->for_ns ? "asked for on a pod's behalf"
                                 : s->ns_override || s->sa_override
                                     ? "mtls.namespace/mtls.service_account set explicitly"
                                     : "from the token's claims");
                        rc = -EPERM;
                }
        }
        cJSON_Delete(j);
        sk_X509_pop_free(certs, X509_free);
        if (rc < 0) {
                note(s, false, rc == -EPERM ? "identity_mismatch" : "bad_answer", status, err);
                tls_material_free(m);
                return rc;
        }
        s->issued = true;
        s->n_issued++;
        tls_cert_serial_hex(m->leaf, s->last_serial, sizeof(s->last_serial));
        s->last_not_after = tls_cert_not_after(m->leaf);
        note(s, true, "ok", status, NULL);
        const struct log_field f[] = {
            {"ca", s->address, false}, {"identity", got, false}, {"serial", s->last_serial, false}};
        log_audit(LOG_INFO, COMP, 0, "certificate issued by shunt-ca", f, sizeof(f) / sizeof(f[0]));
        *out = m;
        return 0;
}

/* Start-up blocks the main thread (signals wait in the mask for signalfd):
 * a pending SIGTERM or SIGINT ends the wait for the CA. */
static bool stop_pending(void)
{
        sigset_t set;
        return sigpending(&set) == 0 &&
               (sigismember(&set, SIGTERM) == 1 || sigismember(&set, SIGINT) == 1);
}

static int xfer_cb(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
        return stop_pending() ? 1 : 0;
}

static int ca_fetch(struct tls_source *src, struct tls_material **out, char *err, size_t errlen)
{
        struct ca_src *s = (struct ca_src *)src;
        /* Before the first certificate the sidecar is starting: the CA may be
         * starting too, so transient failures are retried for a while. */
        uint64_t deadline = clock_mono_ms() + (s->issued ? 0 : s->start_ms);
        uint32_t backoff = 1000;
        for (;;) {
                err[0] = '\0';
                struct ca_req *r;
                int rc = req_new(s, &r, err, errlen);
                if (rc < 0)
                        return rc;
                curl_easy_setopt(r->easy, CURLOPT_XFERINFOFUNCTION, xfer_cb);
                curl_easy_setopt(r->easy, CURLOPT_NOPROGRESS, 0L);
                CURLcode cc = curl_easy_perform(r->easy);
                rc = req_finish(r, cc, out, err, errlen);
                req_free(r);
                uint64_t now = clock_mono_ms();
                if (rc != -EAGAIN || now + backoff > deadline)
                        return rc;
                log_warn(COMP, 0, "%s; retrying in %.1fs (start-up, until %.0fs have passed)", err,
                         backoff / 1000.0, s->start_ms / 1000.0);
                for (uint32_t slept = 0; slept < backoff; slept += 100) {
                        if (stop_pending()) {
                                snprintf(err, errlen, "stopped while waiting for shunt-ca at %s",
                                         s->address);
                                return -EINTR;
                        }
                        usleep(100 * 1000);
                }
                backoff = backoff * 2 > 8000 ? 8000 : backoff * 2;
        }
}

static int ca_changed(struct tls_source *src)
{
        struct ca_src *s = (struct ca_src *)src;
        if (s->inflight || !s->last_time || s->last_ok)
                return 0;
        struct tls_file_sig now[2];
        tls_file_sig_get(s->token_file, &now[0]);
        tls_file_sig_get(s->bundle_file, &now[1]);
        return !tls_file_sig_eq(&now[0], &s->sig[0]) || !tls_file_sig_eq(&now[1], &s->sig[1]);
}

static void on_done(CURL *e, CURLcode cc, void *ctx)
{
        struct ca_req *r = ctx;
        struct ca_src *s = r->s;
        s->inflight = NULL;
        char err[512] = "";
        struct tls_material *m = NULL;
        int rc = req_finish(r, cc, &m, err, sizeof(err));
        tls_fetch_done_fn done = r->done;
        void *dctx = r->ctx;
        req_free(r);
        done(dctx, rc, m, err);
}

static int ca_fetch_async(struct tls_source *src, tls_fetch_done_fn done, void *ctx, char *err,
                          size_t errlen)
{
        struct ca_src *s = (struct ca_src *)src;
        if (!s->cl)
                return -EOPNOTSUPP;
        if (s->inflight) {
                snprintf(err, errlen, "a request to shunt-ca is already in flight");
                return -EBUSY;
        }
        struct ca_req *r;
        int rc = req_new(s, &r, err, errlen);
        if (rc < 0)
                return rc;
        r->done = done;
        r->ctx = ctx;
        rc = curl_loop_add(s->cl, r->easy, on_done, r);
        if (rc < 0) {
                snprintf(err, errlen, "cannot start the request to shunt-ca");
                req_free(r);
                return rc;
        }
        s->inflight = r;
        return 0;
}

static void ca_render_json(struct tls_source *src, struct strbuf *sb)
{
        struct ca_src *s = (struct ca_src *)src;
        strbuf_append(sb, ",\"ca_address\":");
        strbuf_append_json_string(sb, s->address);
        strbuf_append(sb, ",\"ca_token_file\":");
        strbuf_append_json_string(sb, s->token_file);
        strbuf_append(sb, ",\"identity_from\":");
        strbuf_append_json_string(sb, s->for_ns ? "delegated (the node agent's token, on the "
                                                  "pods' behalf)"
                                      : s->ns_override || s->sa_override
                                          ? "token, with mtls.namespace/service_account overrides"
                                          : "token");
        strbuf_appendf(sb, ",\"ca_requests\":%llu,\"ca_issued\":%llu,\"last_issuance\":",
                       (unsigned long long)s->n_requests, (unsigned long long)s->n_issued);
        if (!s->last_time) {
                strbuf_append(sb, "null");
                return;
        }
        char t[32];
        tls_time_rfc3339((time_t)s->last_time, t, sizeof(t));
        strbuf_append(sb, "{\"time\":");
        strbuf_append_json_string(sb, t);
        strbuf_append(sb, ",\"result\":");
        strbuf_append_json_string(sb, s->last_result);
        strbuf_appendf(sb, ",\"ok\":%s,\"http_status\":%ld,\"requested\":",
                       s->last_ok ? "true" : "false", s->last_status);
        strbuf_append_json_string(sb, s->last_expected);
        strbuf_append(sb, ",\"message\":");
        if (s->last_message[0])
                strbuf_append_json_string(sb, s->last_message);
        else
                strbuf_append(sb, "null");
        strbuf_append(sb, ",\"last_serial\":");
        strbuf_append_json_string(sb, s->last_serial);
        strbuf_append(sb, ",\"in_flight\":");
        strbuf_append(sb, s->inflight ? "true}" : "false}");
}

static void ca_render_metrics(struct tls_source *src, struct strbuf *sb)
{
        struct ca_src *s = (struct ca_src *)src;
        prom_family(sb, "shunt_tls_ca_requests_total", "counter",
                    "Certificate requests sent to shunt-ca, by outcome.");
        prom_sample_u64(sb, "shunt_tls_ca_requests_total", "result=\"issued\"", s->n_issued);
        uint64_t done = s->n_requests - (s->inflight ? 1 : 0);
        prom_sample_u64(sb, "shunt_tls_ca_requests_total", "result=\"failed\"",
                        done > s->n_issued ? done - s->n_issued : 0);
        prom_family(sb, "shunt_tls_ca_last_issuance_timestamp_seconds", "gauge",
                    "When the last certificate request to shunt-ca ended (unix time).");
        prom_sample(sb, "shunt_tls_ca_last_issuance_timestamp_seconds", NULL, (double)s->last_time);
}

static void ca_destroy(struct tls_source *src)
{
        struct ca_src *s = (struct ca_src *)src;
        if (s->inflight) {
                curl_loop_remove(s->cl, s->inflight->easy);
                req_free(s->inflight);
        }
        curl_loop_free(s->cl);
        free(s->address);
        free(s->url);
        free(s->token_file);
        free(s->bundle_file);
        free(s->td);
        free(s->ns_override);
        free(s->sa_override);
        free(s->for_ns);
        free(s->for_sa);
        free(s);
        curl_global_cleanup();
}

static const struct tls_source_ops ca_ops = {
    .kind = "ca",
    .rotates = true,
    .fetch = ca_fetch,
    .changed = ca_changed,
    .fetch_async = ca_fetch_async,
    .render_json = ca_render_json,
    .render_metrics = ca_render_metrics,
    .destroy = ca_destroy,
};

static char *dup_nonempty(const char *s, bool *oom)
{
        if (!s || !*s)
                return NULL;
        char *d = strdup(s);
        if (!d)
                *oom = true;
        return d;
}

int tls_source_ca_new(const struct tls_ca_source_options *opt, struct tls_source **out)
{
        const char *missing = !opt->address || !*opt->address           ? "CA address"
                              : !opt->token_file || !*opt->token_file   ? "token file"
                              : !opt->bundle_file || !*opt->bundle_file ? "trust bundle file"
                              : !opt->trust_domain                      ? "trust domain"
                                                                        : NULL;
        if (missing) {
                log_error(COMP, 0, "shunt-ca certificate source: no %s given", missing);
                return -EINVAL;
        }
        if (!opt->for_ns != !opt->for_sa || (opt->for_ns && (!*opt->for_ns || !*opt->for_sa))) {
                log_error(COMP, 0,
                          "shunt-ca certificate source: a delegated request needs both "
                          "the namespace and the service account it is for");
                return -EINVAL;
        }
        if (strncmp(opt->address, "https://", 8) != 0) {
                log_error(COMP, 0, "shunt-ca address %s is not an https:// URL", opt->address);
                return -EINVAL;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error(COMP, 0, "shunt-ca certificate source: curl_global_init failed");
                return -EIO;
        }
        struct ca_src *s = calloc(1, sizeof(*s));
        if (!s) {
                curl_global_cleanup();
                return -ENOMEM;
        }
        s->src.ops = &ca_ops;
        bool oom = false;
        s->address = dup_nonempty(opt->address, &oom);
        size_t n = s->address ? strlen(s->address) : 0;
        while (n > 8 && s->address[n - 1] == '/')
                s->address[--n] = '\0';
        if (s->address && asprintf(&s->url, "%s/v1/certificates", s->address) < 0) {
                s->url = NULL;
                oom = true;
        }
        s->token_file = dup_nonempty(opt->token_file, &oom);
        s->bundle_file = dup_nonempty(opt->bundle_file, &oom);
        s->td = strdup(opt->trust_domain);
        oom |= !s->td;
        s->ns_override = dup_nonempty(opt->ns_override, &oom);
        s->sa_override = dup_nonempty(opt->sa_override, &oom);
        s->for_ns = dup_nonempty(opt->for_ns, &oom);
        s->for_sa = dup_nonempty(opt->for_sa, &oom);
        s->key_type = opt->key_type;
        s->mark = opt->mark;
        s->start_ms = opt->start_ms ? opt->start_ms : TLS_CA_START_MS;
        if (!oom && opt->loop && !(s->cl = curl_loop_new(opt->loop)))
                oom = true;
        if (oom) {
                ca_destroy(&s->src);
                return -ENOMEM;
        }
        *out = &s->src;
        return 0;
}

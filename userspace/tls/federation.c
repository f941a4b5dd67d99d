// SPDX-License-Identifier: Apache-2.0
/* Trust-domain federation: per-domain bundles, loaded, polled, published. */
#include "tls/federation.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/base64.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/file.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/spiffe.h"
#include "tls/tls-int.h"

#define COMP "tls"

/* One published version of every domain's bundle. */
struct tls_fed_set {
        struct snapshot base;
        size_t n;
        X509_STORE *store[TLS_FED_MAX_DOMAINS];
};

struct fed_domain {
        char *td;
        char *file;
        struct tls_file_sig sig; /* of the last attempt */
        STACK_OF(X509) * cas;    /* the bundle in use */
        const char *format;      /* "pem" or "spiffe" */
        uint64_t reloads, reload_failures;
        char last_error[400];
        _Atomic uint64_t ok[2], refused[2]; /* handshakes, [0] inbound */
};

struct tls_federation {
        size_t n;
        struct fed_domain dom[TLS_FED_MAX_DOMAINS];
        struct snapshot_slot slot; /* struct tls_fed_set */
        struct loop *loop;
        struct loop_timer timer;
};

static int errf(char *err, size_t len, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int errf(char *err, size_t len, int rc, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
        return rc;
}

/* ---- bundle files ------------------------------------------------------------ */

static int push_ca(STACK_OF(X509) * sk, X509 *x, char *err, size_t len)
{
        if (sk_X509_num(sk) >= TLS_FED_MAX_CAS) {
                X509_free(x);
                return errf(err, len, -E2BIG, "more than %d certificates", TLS_FED_MAX_CAS);
        }
        if (X509_check_ca(x) <= 0) {
                X509_free(x);
                return errf(err, len, -EINVAL, "certificate %d is not a CA",
                            (int)sk_X509_num(sk) + 1);
        }
        if (!sk_X509_push(sk, x)) {
                X509_free(x);
                return errf(err, len, -ENOMEM, "out of memory");
        }
        return 0;
}

static int parse_pem(const char *data, size_t n, STACK_OF(X509) * sk, char *err, size_t len)
{
        BIO *b = BIO_new_mem_buf(data, (int)n);
        if (!b)
                return errf(err, len, -ENOMEM, "out of memory");
        int rc = 0;
        X509 *x;
        while (rc == 0 && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
                rc = push_ca(sk, x, err, len);
        uint32_t e = ERR_peek_last_error();
        BIO_free(b);
        if (rc == 0 && e &&
            !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
                rc = errf(err, len, -EINVAL, "a PEM block is not a valid certificate");
        ERR_clear_error();
        return rc;
}

/* The SPIFFE bundle format: {"keys": [{"use": "x509-svid", "x5c": ["<base64 DER>"]}, ...]};
 * other uses (jwt-svid) are skipped. */
static int parse_spiffe(const char *data, STACK_OF(X509) * sk, char *err, size_t len)
{
        cJSON *j = cJSON_Parse(data);
        const cJSON *keys = cJSON_GetObjectItemCaseSensitive(j, "keys");
        if (!j || !cJSON_IsArray(keys)) {
                cJSON_Delete(j);
                return errf(err, len, -EINVAL,
                            "not a SPIFFE bundle (JSON object with a \"keys\" array)");
        }
        int rc = 0, i = 0;
        const cJSON *k;
        cJSON_ArrayForEach(k, keys)
        {
                i++;
                const cJSON *use = cJSON_GetObjectItemCaseSensitive(k, "use");
                if (!cJSON_IsString(use) || strcmp(use->valuestring, "x509-svid"))
                        continue;
                const cJSON *x5c = cJSON_GetObjectItemCaseSensitive(k, "x5c");
                const cJSON *b64 = cJSON_GetArrayItem(x5c, 0);
                if (!cJSON_IsArray(x5c) || cJSON_GetArraySize(x5c) != 1 || !cJSON_IsString(b64)) {
                        rc = errf(err, len, -EINVAL,
                                  "keys[%d]: an x509-svid key needs \"x5c\" with one certificate",
                                  i - 1);
                        break;
                }
                size_t in = strlen(b64->valuestring), dl;
                uint8_t *der = EVP_DecodedLength(&dl, in) ? malloc(dl ? dl : 1) : NULL;
                size_t got = 0;
                if (!der ||
                    !EVP_DecodeBase64(der, &got, dl, (const uint8_t *)b64->valuestring, in)) {
                        free(der);
                        rc = errf(err, len, -EINVAL, "keys[%d]: x5c is not base64", i - 1);
                        break;
                }
                const uint8_t *p = der;
                X509 *x = d2i_X509(NULL, &p, (long)got);
                free(der);
                if (!x) {
                        rc = errf(err, len, -EINVAL, "keys[%d]: x5c is not a DER certificate",
                                  i - 1);
                        break;
                }
                if ((rc = push_ca(sk, x, err, len)) < 0)
                        break;
        }
        ERR_clear_error();
        cJSON_Delete(j);
        return rc;
}

/* Reads path: *format "pem" or "spiffe". 0 or -errno with err. */
static int bundle_load(const char *path, STACK_OF(X509) * *out, const char **format, char *err,
                       size_t len)
{
        char *data;
        size_t n;
        char ferr[200];
        int rc = file_read(path, TLS_FED_BUNDLE_MAX, &data, &n, ferr, sizeof(ferr));
        if (rc < 0)
                return errf(err, len, rc, "%s", ferr);
        STACK_OF(X509) *sk = sk_X509_new_null();
        if (!sk) {
                free(data);
                return errf(err, len, -ENOMEM, "out of memory");
        }
        const char *p = data;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
                p++;
        *format = *p == '{' ? "spiffe" : "pem";
        char why[200] = "";
        rc = *p == '{' ? parse_spiffe(data, sk, why, sizeof(why))
                       : parse_pem(data, n, sk, why, sizeof(why));
        free(data);
        if (rc == 0 && sk_X509_num(sk) == 0)
                rc = errf(why, sizeof(why), -EINVAL, "no CA certificate in it");
        if (rc < 0) {
                sk_X509_pop_free(sk, X509_free);
                return errf(err, len, rc, "%s (%s): %s", path, *format, why);
        }
        *out = sk;
        return 0;
}

/* ---- published sets ------------------------------------------------------------ */

static void set_destroy(struct snapshot *s)
{
        struct tls_fed_set *set = (struct tls_fed_set *)s;
        for (size_t i = 0; i < set->n; i++)
                X509_STORE_free(set->store[i]);
        free(set);
}

static int publish(struct tls_federation *fed)
{
        struct tls_fed_set *set = calloc(1, sizeof(*set));
        if (!set)
                return -ENOMEM;
        snapshot_init(&set->base, set_destroy);
        int rc = 0;
        for (size_t i = 0; i < fed->n; i++) {
                X509_STORE *x = X509_STORE_new();
                if (!x) {
                        rc = -ENOMEM;
                        break;
                }
                set->store[set->n++] = x;
                for (size_t k = 0; k < (size_t)sk_X509_num(fed->dom[i].cas); k++)
                        if (!X509_STORE_add_cert(x, sk_X509_value(fed->dom[i].cas, k)))
                                rc = -ENOMEM;
        }
        ERR_clear_error();
        if (rc < 0) {
                snapshot_unref(&set->base);
                return rc;
        }
        snapshot_publish(&fed->slot, &set->base);
        return 0;
}

struct tls_fed_set *tls_fed_acquire(struct tls_federation *fed)
{
        uint64_t gen;
        return fed && fed->n ? (struct tls_fed_set *)snapshot_acquire(&fed->slot, &gen) : NULL;
}

void tls_fed_release(struct tls_fed_set *set)
{
        if (set)
                snapshot_unref(&set->base);
}

int tls_fed_find(const struct tls_federation *fed, const char *td)
{
        for (size_t i = 0; fed && i < fed->n; i++)
                if (!strcmp(fed->dom[i].td, td))
                        return (int)i;
        return -1;
}

size_t tls_fed_domains(const struct tls_federation *fed)
{
        return fed ? fed->n : 0;
}

const char *tls_fed_name(const struct tls_federation *fed, int i)
{
        return fed->dom[i].td;
}

X509_STORE *tls_fed_store(const struct tls_fed_set *set, int i)
{
        return set && i >= 0 && (size_t)i < set->n ? set->store[i] : NULL;
}

void tls_fed_count(struct tls_federation *fed, int i, bool server, bool ok)
{
        if (!fed || i < 0 || (size_t)i >= fed->n)
                return;
        _Atomic uint64_t *c = ok ? fed->dom[i].ok : fed->dom[i].refused;
        atomic_fetch_add_explicit(&c[server ? 0 : 1], 1, memory_order_relaxed);
}

/* ---- life cycle ----------------------------------------------------------------- */

static int parse_config(struct tls_federation *fed, const char *own_td, const char *json, char *err,
                        size_t len)
{
        cJSON *j = cJSON_Parse(json);
        if (!j || !cJSON_IsArray(j)) {
                cJSON_Delete(j);
                return errf(err, len, -EINVAL, "expected a JSON array");
        }
        int rc = 0, i = -1;
        const cJSON *e;
        cJSON_ArrayForEach(e, j)
        {
                i++;
                const cJSON *td = cJSON_GetObjectItemCaseSensitive(e, "trust_domain");
                const cJSON *bf = cJSON_GetObjectItemCaseSensitive(e, "bundle_file");
                const cJSON *f;
                const cJSON *fields = cJSON_IsObject(e) ? e : NULL;
                cJSON_ArrayForEach(f, fields)
                {
                        if (strcmp(f->string, "trust_domain") && strcmp(f->string, "bundle_file")) {
                                rc = errf(err, len, -EINVAL,
                                          "[%d]: unknown field \"%.40s\" (known: trust_domain, "
                                          "bundle_file)",
                                          i, f->string);
                                break;
                        }
                }
                if (rc)
                        break;
                if (!cJSON_IsObject(e) || !cJSON_IsString(td) || !cJSON_IsString(bf) ||
                    !*bf->valuestring) {
                        rc = errf(err, len, -EINVAL,
                                  "[%d]: expected {\"trust_domain\": string, \"bundle_file\": "
                                  "path}",
                                  i);
                        break;
                }
                if (!spiffe_trust_domain_valid(td->valuestring)) {
                        rc = errf(err, len, -EINVAL,
                                  "[%d]: trust_domain \"%.100s\" is not valid: 1-255 characters of "
                                  "[a-z0-9.-_]",
                                  i, td->valuestring);
                        break;
                }
                if (!strcmp(td->valuestring, own_td)) {
                        rc = errf(err, len, -EINVAL,
                                  "[%d]: trust_domain \"%.100s\" is our own (mtls.trust_domain): "
                                  "its bundle comes from the certificate source",
                                  i, own_td);
                        break;
                }
                if (tls_fed_find(fed, td->valuestring) >= 0) {
                        rc = errf(err, len, -EINVAL, "[%d]: trust_domain \"%.100s\" given twice", i,
                                  td->valuestring);
                        break;
                }
                if (fed->n >= TLS_FED_MAX_DOMAINS) {
                        rc = errf(err, len, -E2BIG, "more than %d trust domains",
                                  TLS_FED_MAX_DOMAINS);
                        break;
                }
                struct fed_domain *d = &fed->dom[fed->n];
                d->td = strdup(td->valuestring);
                d->file = strdup(bf->valuestring);
                fed->n++;
                if (!d->td || !d->file) {
                        rc = errf(err, len, -ENOMEM, "out of memory");
                        break;
                }
                char why[400];
                tls_file_sig_get(d->file, &d->sig);
                if ((rc = bundle_load(d->file, &d->cas, &d->format, why, sizeof(why))) < 0) {
                        errf(err, len, rc, "[%d] (%s): bundle %s", i, d->td, why);
                        break;
                }
        }
        cJSON_Delete(j);
        return rc;
}

int tls_federation_new(const char *own_td, const char *json, struct tls_federation **out, char *err,
                       size_t errlen)
{
        struct tls_federation *fed = calloc(1, sizeof(*fed));
        if (!fed)
                return errf(err, errlen, -ENOMEM, "out of memory");
        snapshot_slot_init(&fed->slot);
        int rc = json && *json ? parse_config(fed, own_td, json, err, errlen) : 0;
        if (rc == 0 && fed->n && publish(fed) < 0)
                rc = errf(err, errlen, -ENOMEM, "out of memory");
        if (rc < 0) {
                tls_federation_free(fed);
                return rc;
        }
        for (size_t i = 0; i < fed->n; i++)
                log_info(COMP, 0, "federated trust domain %s: %d CA(s) from %s (%s)",
                         fed->dom[i].td, (int)sk_X509_num(fed->dom[i].cas), fed->dom[i].file,
                         fed->dom[i].format);
        *out = fed;
        return 0;
}

void tls_federation_free(struct tls_federation *fed)
{
        if (!fed)
                return;
        if (fed->loop)
                loop_timer_cancel(fed->loop, &fed->timer);
        snapshot_slot_destroy(&fed->slot);
        for (size_t i = 0; i < fed->n; i++) {
                free(fed->dom[i].td);
                free(fed->dom[i].file);
                sk_X509_pop_free(fed->dom[i].cas, X509_free);
        }
        free(fed);
}

size_t tls_federation_count(const struct tls_federation *fed)
{
        return fed ? fed->n : 0;
}

uint64_t tls_federation_tick(struct tls_federation *fed)
{
        bool changed = false;
        for (size_t i = 0; i < fed->n; i++) {
                struct fed_domain *d = &fed->dom[i];
                struct tls_file_sig s;
                tls_file_sig_get(d->file, &s);
                if (tls_file_sig_eq(&s, &d->sig))
                        continue;
                d->sig = s;
                STACK_OF(X509) * cas;
                const char *format;
                char why[400];
                if (bundle_load(d->file, &cas, &format, why, sizeof(why)) < 0) {
                        d->reload_failures++;
                        snprintf(d->last_error, sizeof(d->last_error), "%s", why);
                        log_error(COMP, 0,
                                  "federated trust domain %s: new bundle refused, the previous "
                                  "one (%d CA(s)) stays: %s",
                                  d->td, (int)sk_X509_num(d->cas), why);
                        continue;
                }
                sk_X509_pop_free(d->cas, X509_free);
                d->cas = cas;
                d->format = format;
                d->reloads++;
                d->last_error[0] = 0;
                changed = true;
                log_info(COMP, 0,
                         "federated trust domain %s: bundle reloaded, %d CA(s) from %s (%s)", d->td,
                         (int)sk_X509_num(cas), d->file, format);
        }
        if (changed && publish(fed) < 0)
                log_error(COMP, 0, "federated bundles: out of memory; the previous set stays");
        return TLS_FED_POLL_MS;
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        struct tls_federation *fed = t->data;
        if (loop_timer_arm(loop, &fed->timer, tls_federation_tick(fed)) < 0)
                log_error(COMP, 0, "cannot re-arm the federation timer: out of memory");
}

int tls_federation_start(struct tls_federation *fed, struct loop *loop)
{
        if (!fed->n)
                return 0;
        fed->loop = loop;
        loop_timer_init(&fed->timer, on_timer, fed);
        return loop_timer_arm(loop, &fed->timer, TLS_FED_POLL_MS);
}

/* ---- reporting ------------------------------------------------------------------ */

static int64_t first_expiry(const struct fed_domain *d, int64_t now)
{
        int64_t e = INT64_MAX;
        for (size_t k = 0; k < (size_t)sk_X509_num(d->cas); k++) {
                int64_t x = tls_cert_not_after(sk_X509_value(d->cas, k)) - now;
                if (x < e)
                        e = x;
        }
        return e;
}

void tls_federation_render_json(struct tls_federation *fed, struct strbuf *sb)
{
        strbuf_append(sb, "[");
        int64_t now = time(NULL);
        for (size_t i = 0; fed && i < fed->n; i++) {
                const struct fed_domain *d = &fed->dom[i];
                strbuf_append(sb, i ? ",{\"trust_domain\":" : "{\"trust_domain\":");
                strbuf_append_json_string(sb, d->td);
                strbuf_append(sb, ",\"bundle_file\":");
                strbuf_append_json_string(sb, d->file);
                strbuf_appendf(sb, ",\"format\":\"%s\",\"cas\":[", d->format);
                for (size_t k = 0; k < (size_t)sk_X509_num(d->cas); k++) {
                        X509 *x = sk_X509_value(d->cas, k);
                        char buf[512], na[32];
                        tls_cert_serial_hex(x, buf, sizeof(buf));
                        strbuf_append(sb, k ? ",{\"serial\":" : "{\"serial\":");
                        strbuf_append_json_string(sb, buf);
                        tls_cert_subject(x, buf, sizeof(buf));
                        strbuf_append(sb, ",\"subject\":");
                        strbuf_append_json_string(sb, buf);
                        tls_time_rfc3339(tls_cert_not_after(x), na, sizeof(na));
                        strbuf_appendf(sb, ",\"not_after\":\"%s\"}", na);
                }
                strbuf_appendf(sb,
                               "],\"expires_in_s\":%lld,\"reloads\":%llu,\"reload_failures\":%llu,"
                               "\"last_error\":",
                               (long long)first_expiry(d, now), (unsigned long long)d->reloads,
                               (unsigned long long)d->reload_failures);
                if (d->last_error[0])
                        strbuf_append_json_string(sb, d->last_error);
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
}

void tls_federation_render_metrics(struct tls_federation *fed, struct strbuf *sb)
{
        static const char *const dirs[2] = {"inbound", "outbound"};
        int64_t now = time(NULL);
        prom_family(sb, "shunt_tls_federation_handshakes_total", "counter",
                    "Handshakes with peers of a federated trust domain, by the domain their "
                    "SPIFFE ID names, direction and result (refused: the chain failed against "
                    "that domain's bundle).");
        for (size_t i = 0; fed && i < fed->n; i++)
                for (int dir = 0; dir < 2; dir++)
                        for (int r = 0; r < 2; r++) {
                                struct strbuf l;
                                strbuf_init(&l);
                                prom_label(&l, "trust_domain", fed->dom[i].td);
                                prom_label(&l, "direction", dirs[dir]);
                                prom_label(&l, "result", r ? "refused" : "ok");
                                prom_sample_u64(sb, "shunt_tls_federation_handshakes_total", l.data,
                                                atomic_load(r ? &fed->dom[i].refused[dir]
                                                              : &fed->dom[i].ok[dir]));
                                strbuf_free(&l);
                        }
        prom_family(sb, "shunt_tls_federation_bundle_reloads_total", "counter",
                    "Federated bundle files loaded again after a change, by trust domain and "
                    "result (error: the new version was refused, the previous one stays).");
        for (size_t i = 0; fed && i < fed->n; i++)
                for (int r = 0; r < 2; r++) {
                        struct strbuf l;
                        strbuf_init(&l);
                        prom_label(&l, "trust_domain", fed->dom[i].td);
                        prom_label(&l, "result", r ? "error" : "ok");
                        prom_sample_u64(sb, "shunt_tls_federation_bundle_reloads_total", l.data,
                                        r ? fed->dom[i].reload_failures : fed->dom[i].reloads);
                        strbuf_free(&l);
                }
        prom_family(sb, "shunt_tls_federation_bundle_expiry_seconds", "gauge",
                    "Seconds until the first CA of a federated trust domain's bundle expires.");
        for (size_t i = 0; fed && i < fed->n; i++) {
                struct strbuf l;
                strbuf_init(&l);
                prom_label(&l, "trust_domain", fed->dom[i].td);
                prom_sample(sb, "shunt_tls_federation_bundle_expiry_seconds", l.data,
                            (double)first_expiry(&fed->dom[i], now));
                strbuf_free(&l);
        }
}

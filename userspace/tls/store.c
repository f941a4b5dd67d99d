// SPDX-License-Identifier: Apache-2.0
/* Certificate store: snapshots, rotation with backoff, drain, reporting. */
#include "tls/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "core/prom.h"
#include "core/spiffe.h"
#include "tls/tls-int.h"

#define COMP           "tls"
#define BACKOFF_MIN_MS 1000u
#define BACKOFF_MAX_MS 30000u
#define TICK_MAX_MS    60000u
#define TICK_MIN_MS    20u

struct tls_store {
        pthread_mutex_t mu; /* reporting fields, against readers on other threads */
        char *trust_domain;
        char *identity; /* the expected one, for reporting before a certificate */
        uint32_t skew_s, drain_s, poll_ms;
        bool require_port;
        bool log_once;
        struct tls_federation *fed;

        struct tls_source *src;
        struct tls_material *mat; /* of cur */
        struct tls_snapshot *cur; /* the store's own reference */
        struct snapshot_slot slot;
        struct tls_snapshot *prev; /* in drain, or NULL */
        int64_t prev_until_ms;     /* wall clock */

        struct tls_stats stats;
        int64_t rotate_at_ms; /* wall clock; 0: never */
        bool pending;         /* a fetch is wanted */
        uint64_t retry_at_ms; /* monotonic */
        uint32_t backoff_ms;
        uint32_t failures; /* consecutive */
        uint64_t rotations, rotation_failures;
        int64_t last_rotation; /* unix seconds, 0: none since start */
        char last_error[512];
        bool in_flight;        /* an asynchronous fetch is running */
        const char *fetch_why; /* its reason (static text) */

        struct loop *loop;
        struct loop_timer timer;
};

static int64_t wall_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tls_store_options_init(struct tls_store_options *opt)
{
        memset(opt, 0, sizeof(*opt));
        opt->clock_skew_s = TLS_DEFAULT_SKEW_S;
        opt->drain_s = TLS_DEFAULT_DRAIN_S;
        opt->poll_ms = TLS_DEFAULT_POLL_MS;
        opt->require_port = true;
}

static void snap_destroy(struct snapshot *s)
{
        struct tls_snapshot *snap = tls_snapshot_get(s);
        SSL_CTX_free(snap->server);
        SSL_CTX_free(snap->client);
        X509_STORE_free(snap->trust);
        X509_free(snap->leaf);
        free(snap->identity);
        free(snap->trust_domain);
        free(snap);
}

static int snap_build(struct tls_store *st, const struct tls_material *m, struct tls_snapshot **out)
{
        struct tls_snapshot *snap = calloc(1, sizeof(*snap));
        if (!snap)
                return -ENOMEM;
        snapshot_init(&snap->base, snap_destroy);
        char uri[SPIFFE_ID_MAX + 1] = "";
        tls_cert_spiffe_uri(m->leaf, uri, sizeof(uri), NULL);
        tls_cert_serial_hex(m->leaf, snap->serial, sizeof(snap->serial));
        snap->not_before = tls_cert_not_before(m->leaf);
        snap->not_after = tls_cert_not_after(m->leaf);
        snap->identity = strdup(uri);
        snap->trust_domain = strdup(st->trust_domain);
        snap->skew_s = st->skew_s;
        snap->require_port = st->require_port;
        snap->fed = st->fed;
        snap->stats = &st->stats;
        snap->trust = X509_STORE_new();
        snap->leaf = m->leaf;
        X509_up_ref(m->leaf);
        int rc = snap->identity && snap->trust_domain && snap->trust ? 0 : -ENOMEM;
        for (size_t i = 0; rc == 0 && i < sk_X509_num(m->bundle); i++)
                if (!X509_STORE_add_cert(snap->trust, sk_X509_value(m->bundle, i)))
                        rc = -ENOMEM;
        if (rc == 0)
                rc = tls_ctx_build(snap, m);
        if (rc < 0) {
                snapshot_unref(&snap->base);
                return rc;
        }
        *out = snap;
        return 0;
}

static void schedule_rotation(struct tls_store *st)
{
        if (!st->src->ops->rotates) {
                st->rotate_at_ms = 0;
                return;
        }
        int64_t start = (int64_t)st->mat->issued_at * 1000;
        int64_t end = (int64_t)tls_cert_not_after(st->mat->leaf) * 1000;
        st->rotate_at_ms = end - (end - start) / 3;
}

/* Publishes m (taking it over) as the current identity. */
static int install(struct tls_store *st, struct tls_material *m)
{
        struct tls_snapshot *snap;
        int rc = snap_build(st, m, &snap);
        if (rc < 0) {
                tls_material_free(m);
                return rc;
        }
        char nb[32], na[32];
        tls_time_rfc3339(snap->not_before, nb, sizeof(nb));
        tls_time_rfc3339(snap->not_after, na, sizeof(na));
        pthread_mutex_lock(&st->mu);
        struct tls_snapshot *old = st->cur;
        struct tls_snapshot *dropped = NULL;
        if (old) {
                dropped = st->prev;
                st->prev = old;
                st->prev_until_ms = wall_ms() + (int64_t)st->drain_s * 1000;
                st->rotations++;
                st->last_rotation = time(NULL);
        }
        tls_material_free(st->mat);
        st->mat = m;
        st->cur = snap;
        tls_snapshot_ref(snap);
        snapshot_publish(&st->slot, &snap->base);
        schedule_rotation(st);
        pthread_mutex_unlock(&st->mu);
        if (old)
                log_info(
                    COMP, 0,
                    "audit: certificate rotated: identity=%s old_serial=%s new_serial=%s "
                    "not_before=%s not_after=%s; the old one drains for %us (%lld connections)",
                    snap->identity, old->serial, snap->serial, nb, na, st->drain_s,
                    (long long)tls_snapshot_conns(old));
        else
                log_info(COMP, 0,
                         "certificate installed: identity=%s serial=%s not_before=%s not_after=%s "
                         "source=%s",
                         snap->identity, snap->serial, nb, na, st->src->ops->kind);
        tls_snapshot_unref(dropped);
        return 0;
}

int tls_store_new(const struct tls_store_options *opt, struct tls_source *src,
                  struct tls_store **out)
{
        if (!src)
                return -EINVAL;
        if (!spiffe_trust_domain_valid(opt->trust_domain)) {
                log_error(COMP, 0,
                          "trust domain \"%s\" is not valid: 1-255 characters of [a-z0-9.-_]",
                          opt->trust_domain ? opt->trust_domain : "");
                tls_source_free(src);
                return -EINVAL;
        }
        struct tls_store *st = calloc(1, sizeof(*st));
        if (!st) {
                tls_source_free(src);
                return -ENOMEM;
        }
        pthread_mutex_init(&st->mu, NULL);
        snapshot_slot_init(&st->slot);
        st->src = src;
        st->trust_domain = strdup(opt->trust_domain);
        st->identity = strdup(opt->identity ? opt->identity : "");
        st->skew_s = opt->clock_skew_s;
        st->drain_s = opt->drain_s;
        st->poll_ms = opt->poll_ms ? opt->poll_ms : TLS_DEFAULT_POLL_MS;
        st->require_port = opt->require_port;
        st->log_once = opt->log_once;
        st->fed = opt->federation;
        int rc = st->trust_domain && st->identity ? 0 : -ENOMEM;
        if (rc == 0 && opt->deferred) {
                st->pending = true; /* the first tick fetches */
                *out = st;
                return 0;
        }
        struct tls_material *m = NULL;
        char err[sizeof(st->last_error)] = "";
        if (rc == 0) {
                rc = src->ops->fetch(src, &m, err, sizeof(err));
                if (rc < 0)
                        log_error(COMP, 0, "no certificate from the %s source: %s", src->ops->kind,
                                  err);
        }
        if (rc == 0 &&
            (rc = tls_material_check(m, st->trust_domain, st->skew_s, err, sizeof(err))) < 0) {
                log_error(COMP, 0, "certificate from the %s source is not usable: %s",
                          src->ops->kind, err);
                tls_material_free(m);
        }
        if (rc == 0)
                rc = install(st, m);
        if (rc < 0) {
                tls_store_free(st);
                return rc;
        }
        *out = st;
        return 0;
}

void tls_store_free(struct tls_store *st)
{
        if (!st)
                return;
        if (st->loop)
                loop_timer_cancel(st->loop, &st->timer);
        snapshot_slot_destroy(&st->slot);
        tls_snapshot_unref(st->cur);
        tls_snapshot_unref(st->prev);
        tls_material_free(st->mat);
        tls_source_free(st->src);
        free(st->trust_domain);
        free(st->identity);
        pthread_mutex_destroy(&st->mu);
        free(st);
}

struct snapshot_slot *tls_store_slot(struct tls_store *st)
{
        return &st->slot;
}

struct tls_snapshot *tls_store_acquire(struct tls_store *st)
{
        uint64_t gen;
        return tls_snapshot_get(snapshot_acquire(&st->slot, &gen)); /* NULL: none yet */
}

static uint32_t jitter(uint32_t ms)
{
        uint32_t r;
        RAND_bytes((uint8_t *)&r, sizeof(r));
        /* ms * [0.8, 1.2) */
        return (uint32_t)((uint64_t)ms * (800 + r % 400) / 1000);
}

/* The end of a fetch, synchronous or not: install m, or count the failure
 * and schedule the retry. */
static void fetch_finish(struct tls_store *st, int rc, struct tls_material *m, const char *err_in,
                         const char *why)
{
        char err[sizeof(st->last_error)];
        snprintf(err, sizeof(err), "%s", err_in ? err_in : "");
        if (rc == 0 &&
            (rc = tls_material_check(m, st->trust_domain, st->skew_s, err, sizeof(err))) < 0)
                tls_material_free(m);
        if (rc == 0) {
                rc = install(st, m);
                if (rc < 0)
                        snprintf(err, sizeof(err), "building TLS contexts failed");
        }
        pthread_mutex_lock(&st->mu);
        if (rc == 0) {
                uint32_t failed = st->failures;
                st->pending = false;
                st->failures = 0;
                st->backoff_ms = 0;
                st->last_error[0] = 0;
                pthread_mutex_unlock(&st->mu);
                if (failed && st->log_once)
                        log_info(COMP, 0, "certificate for %s obtained after %u failed attempts",
                                 st->identity, failed);
                return;
        }
        st->failures++;
        st->rotation_failures++;
        snprintf(st->last_error, sizeof(st->last_error), "%s", err[0] ? err : strerror(-rc));
        /* Both kinds retry: a file source may have failed on a transient
         * state (a key being rewritten, a mount not there yet) that no further
         * change announces. A change retries at once (tls_store_tick). */
        st->backoff_ms = st->backoff_ms ? st->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (st->backoff_ms > BACKOFF_MAX_MS)
                st->backoff_ms = BACKOFF_MAX_MS;
        uint32_t delay = jitter(st->backoff_ms);
        st->retry_at_ms = clock_mono_ms() + delay;
        /* Logged once per run of failures when asked (many stores, one CA). */
        enum log_level lvl = st->log_once && st->failures > 1 ? LOG_DEBUG : LOG_ERROR;
        if (!st->cur) {
                log_emit(lvl, COMP, 0,
                         "first certificate for %s failed: %s; none is held, so its connections "
                         "are refused; retrying in %.1fs with backoff%s",
                         st->identity, st->last_error, delay / 1000.0,
                         st->log_once ? " (further failures are logged at debug level)" : "");
                pthread_mutex_unlock(&st->mu);
                return;
        }
        char na[32];
        tls_time_rfc3339(st->cur->not_after, na, sizeof(na));
        log_emit(lvl, COMP, 0,
                 "certificate %s (%s) failed: %s; serial %s keeps serving (valid until %s), "
                 "retrying in %.1fs with backoff%s",
                 st->src->ops->rotates ? "renewal" : "reload", why, st->last_error, st->cur->serial,
                 na, delay / 1000.0,
                 st->src->ops->rotates ? "" : " and at once when the files change");
        pthread_mutex_unlock(&st->mu);
}

static void on_fetched(void *ctx, int rc, struct tls_material *m, const char *err)
{
        struct tls_store *st = ctx;
        st->in_flight = false;
        fetch_finish(st, rc, m, err, st->fetch_why);
        /* What is due next changed (rotation time, retry time). */
        if (st->loop && loop_timer_arm(st->loop, &st->timer, tls_store_tick(st)) < 0)
                log_error(COMP, 0, "cannot re-arm the certificate timer: out of memory");
}

static void fetch_now(struct tls_store *st, const char *why)
{
        char err[sizeof(st->last_error)] = "";
        struct tls_material *m = NULL;
        if (st->loop && st->src->ops->fetch_async) {
                st->fetch_why = why;
                int rc = st->src->ops->fetch_async(st->src, on_fetched, st, err, sizeof(err));
                if (rc == 0) {
                        st->in_flight = true;
                        return;
                }
                if (rc != -EOPNOTSUPP) {
                        fetch_finish(st, rc, NULL, err, why);
                        return;
                }
        }
        int rc = st->src->ops->fetch(st->src, &m, err, sizeof(err));
        fetch_finish(st, rc, m, err, why);
}

uint64_t tls_store_tick(struct tls_store *st)
{
        int64_t now = wall_ms();
        /* End of drain. */
        pthread_mutex_lock(&st->mu);
        struct tls_snapshot *done = NULL;
        if (st->prev && now >= st->prev_until_ms) {
                done = st->prev;
                st->prev = NULL;
        }
        pthread_mutex_unlock(&st->mu);
        if (done) {
                log_info(COMP, 0, "drain of certificate %s is over (%lld connections still use it)",
                         done->serial, (long long)tls_snapshot_conns(done));
                tls_snapshot_unref(done);
        }
        const char *why = NULL;
        if (st->src->ops->rotates && st->rotate_at_ms && now >= st->rotate_at_ms)
                why = "a third of the lifetime is left";
        bool changed = st->src->ops->changed && st->src->ops->changed(st->src) > 0;
        if (changed)
                why = "the source changed";
        if (why || st->pending) {
                if (!st->pending || changed) {
                        st->pending = true;
                        st->retry_at_ms = 0;
                }
                if (!st->in_flight && clock_mono_ms() >= st->retry_at_ms)
                        fetch_now(st, why       ? why
                                      : st->cur ? "operator request"
                                                : "first certificate");
        }
        /* Next wake-up. */
        now = wall_ms();
        uint64_t next = TICK_MAX_MS;
        if (st->src->ops->changed && st->poll_ms < next)
                next = st->poll_ms;
        if (st->rotate_at_ms && !st->pending) { /* pending: the retry time counts */
                int64_t d = st->rotate_at_ms - now;
                if (d < (int64_t)next)
                        next = d > 0 ? (uint64_t)d : 0;
        }
        if (st->pending && !st->in_flight) {
                uint64_t m = clock_mono_ms();
                uint64_t d = st->retry_at_ms > m ? st->retry_at_ms - m : 0;
                if (d < next)
                        next = d;
        }
        if (st->prev) {
                int64_t d = st->prev_until_ms - now;
                if (d < (int64_t)next)
                        next = d > 0 ? (uint64_t)d : 0;
        }
        return next < TICK_MIN_MS ? TICK_MIN_MS : next;
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        struct tls_store *st = t->data;
        uint64_t next = tls_store_tick(st);
        if (loop_timer_arm(loop, &st->timer, next) < 0)
                log_error(COMP, 0, "cannot re-arm the certificate timer: out of memory");
}

int tls_store_start(struct tls_store *st, struct loop *loop)
{
        st->loop = loop;
        loop_timer_init(&st->timer, on_timer, st);
        return loop_timer_arm(loop, &st->timer, tls_store_tick(st));
}

void tls_store_rotate_now(struct tls_store *st)
{
        pthread_mutex_lock(&st->mu);
        st->pending = true;
        st->retry_at_ms = 0;
        pthread_mutex_unlock(&st->mu);
}

/* ---- reporting --------------------------------------------------------------- */

static void json_time(struct strbuf *sb, const char *key, int64_t t)
{
        char b[32];
        tls_time_rfc3339((time_t)t, b, sizeof(b));
        strbuf_appendf(sb, "\"%s\":", key);
        strbuf_append_json_string(sb, b);
}

static void json_cert(struct strbuf *sb, X509 *x, int64_t now)
{
        char buf[512];
        tls_cert_serial_hex(x, buf, sizeof(buf));
        strbuf_append(sb, "{\"serial\":");
        strbuf_append_json_string(sb, buf);
        tls_cert_subject(x, buf, sizeof(buf));
        strbuf_append(sb, ",\"subject\":");
        strbuf_append_json_string(sb, buf);
        strbuf_append(sb, ",");
        json_time(sb, "not_before", tls_cert_not_before(x));
        strbuf_append(sb, ",");
        json_time(sb, "not_after", tls_cert_not_after(x));
        strbuf_appendf(sb, ",\"expires_in_s\":%lld}", (long long)(tls_cert_not_after(x) - now));
}

static void json_snap(struct strbuf *sb, const struct tls_snapshot *s, int64_t now)
{
        strbuf_append(sb, "{\"identity\":");
        strbuf_append_json_string(sb, s->identity);
        strbuf_append(sb, ",\"serial\":");
        strbuf_append_json_string(sb, s->serial);
        strbuf_append(sb, ",");
        json_time(sb, "not_before", s->not_before);
        strbuf_append(sb, ",");
        json_time(sb, "not_after", s->not_after);
        strbuf_appendf(sb, ",\"expires_in_s\":%lld,\"connections\":%lld",
                       (long long)(s->not_after - now), (long long)tls_snapshot_conns(s));
}

void tls_store_render_json(struct tls_store *st, struct strbuf *sb, const char *policy_extra)
{
        pthread_mutex_lock(&st->mu);
        int64_t now = time(NULL);
        struct tls_snapshot *cur = st->cur;
        strbuf_append(sb, "{\"identity\":");
        strbuf_append_json_string(sb, cur ? cur->identity : st->identity);
        strbuf_append(sb, ",\"trust_domain\":");
        strbuf_append_json_string(sb, st->trust_domain);
        strbuf_append(sb, ",\"source\":");
        strbuf_append_json_string(sb, st->src->ops->kind);
        if (st->src->ops->render_json)
                st->src->ops->render_json(st->src, sb);
        strbuf_append(sb, ",\"current\":");
        if (cur) {
                json_snap(sb, cur, now);
                EVP_PKEY *pk = X509_get_pubkey(st->mat->leaf);
                strbuf_appendf(sb, ",\"key_type\":\"%s\"}",
                               pk && EVP_PKEY_id(pk) == EVP_PKEY_RSA ? "rsa-2048" : "ecdsa-p256");
                EVP_PKEY_free(pk);
        } else {
                strbuf_append(sb, "null");
        }
        strbuf_append(sb, ",\"rotation\":{\"state\":");
        const char *state = !cur && st->last_error[0] ? "retrying"
                            : !cur                    ? "fetching"
                            : st->last_error[0]       ? "retrying"
                            : cur->not_after <= now   ? "expired"
                            : st->prev                ? "draining"
                                                      : "ok";
        strbuf_append_json_string(sb, state);
        if (st->rotate_at_ms) {
                strbuf_append(sb, ",");
                json_time(sb, "next_rotation", st->rotate_at_ms / 1000);
        } else {
                strbuf_append(sb, ",\"next_rotation\":null");
        }
        if (st->last_rotation) {
                strbuf_append(sb, ",");
                json_time(sb, "last_rotation", st->last_rotation);
        } else {
                strbuf_append(sb, ",\"last_rotation\":null");
        }
        strbuf_appendf(sb,
                       ",\"rotations\":%llu,\"failures\":%llu,\"consecutive_failures\":%u,"
                       "\"in_flight\":%s",
                       (unsigned long long)st->rotations, (unsigned long long)st->rotation_failures,
                       st->failures, st->in_flight ? "true" : "false");
        strbuf_append(sb, ",\"last_error\":");
        if (st->last_error[0])
                strbuf_append_json_string(sb, st->last_error);
        else
                strbuf_append(sb, "null");
        if (st->last_error[0] && st->src->ops->rotates) {
                uint64_t m = clock_mono_ms();
                strbuf_appendf(sb, ",\"retry_in_ms\":%llu",
                               (unsigned long long)(st->retry_at_ms > m ? st->retry_at_ms - m : 0));
        }
        strbuf_append(sb, "},\"previous\":");
        if (st->prev) {
                json_snap(sb, st->prev, now);
                strbuf_append(sb, ",");
                json_time(sb, "drain_ends", st->prev_until_ms / 1000);
                strbuf_append(sb, "}");
        } else {
                strbuf_append(sb, "null");
        }
        strbuf_append(sb, ",\"trust_bundle\":[");
        for (size_t i = 0; st->mat && i < sk_X509_num(st->mat->bundle); i++) {
                if (i)
                        strbuf_append(sb, ",");
                json_cert(sb, sk_X509_value(st->mat->bundle, i), now);
        }
        strbuf_appendf(sb,
                       "],\"policy\":{\"tls\":\"1.3\",\"clock_skew_s\":%u,\"drain_s\":%u,"
                       "\"require_port\":%s",
                       st->skew_s, st->drain_s, st->require_port ? "true" : "false");
        if (policy_extra && *policy_extra) {
                strbuf_append(sb, ",");
                strbuf_append(sb, policy_extra);
        }
        strbuf_append(sb, "}}");
        pthread_mutex_unlock(&st->mu);
}

void tls_store_render_chain_pem(struct tls_store *st, struct strbuf *sb)
{
        X509 *certs[9];
        size_t n = 0;
        pthread_mutex_lock(&st->mu);
        if (st->mat && st->mat->leaf) {
                certs[n++] = st->mat->leaf;
                for (size_t i = 0; i < sk_X509_num(st->mat->chain) && n < 9; i++)
                        certs[n++] = sk_X509_value(st->mat->chain, i);
        }
        char *pem = n ? tls_pem_encode_certs(certs, n) : NULL;
        pthread_mutex_unlock(&st->mu);
        if (pem)
                strbuf_append_json_string(sb, pem);
        else
                strbuf_append(sb, "null");
        free(pem);
}

void tls_store_counts(struct tls_store *st, struct tls_store_counts *out)
{
        memset(out, 0, sizeof(*out));
        pthread_mutex_lock(&st->mu);
        out->rotations = st->rotations;
        out->rotation_failures = st->rotation_failures;
        out->retrying = st->last_error[0] != 0;
        out->draining = st->prev != NULL;
        out->has_cert = st->cur != NULL;
        out->not_after = st->cur ? st->cur->not_after : 0;
        out->conns = (st->cur ? tls_snapshot_conns(st->cur) : 0) +
                     (st->prev ? tls_snapshot_conns(st->prev) : 0);
        out->consecutive_failures = st->failures;
        pthread_mutex_unlock(&st->mu);
        for (int d = 0; d < 2; d++) {
                out->handshakes_ok[d] = atomic_load(&st->stats.ok[d]);
                for (int f = 0; f < TLS_FAIL__COUNT; f++)
                        out->handshake_fail[d][f] = atomic_load(&st->stats.fail[d][f]);
        }
}

const char *tls_store_last_error(struct tls_store *st)
{
        return st->last_error;
}

void tls_store_render_metrics(struct tls_store *st, struct strbuf *sb)
{
        static const char *const dirs[2] = {"inbound", "outbound"};
        struct tls_store_counts c;
        tls_store_counts(st, &c);
        prom_family(sb, "shunt_tls_handshakes_total", "counter",
                    "TLS handshakes completed and verified, by direction.");
        for (int d = 0; d < 2; d++) {
                char l[64];
                snprintf(l, sizeof(l), "direction=\"%s\"", dirs[d]);
                prom_sample_u64(sb, "shunt_tls_handshakes_total", l, c.handshakes_ok[d]);
        }
        prom_family(sb, "shunt_tls_handshake_failures_total", "counter",
                    "TLS handshakes refused or failed, by direction and reason.");
        for (int d = 0; d < 2; d++)
                for (int f = 1; f < TLS_FAIL__COUNT; f++) {
                        char l[96];
                        snprintf(l, sizeof(l), "direction=\"%s\",reason=\"%s\"", dirs[d],
                                 tls_fail_name((enum tls_fail)f));
                        prom_sample_u64(sb, "shunt_tls_handshake_failures_total", l,
                                        c.handshake_fail[d][f]);
                }
        prom_family(sb, "shunt_tls_rotations_total", "counter",
                    "Workload certificates replaced since start.");
        prom_sample_u64(sb, "shunt_tls_rotations_total", NULL, c.rotations);
        prom_family(sb, "shunt_tls_rotation_failures_total", "counter",
                    "Failed attempts to obtain a new workload certificate.");
        prom_sample_u64(sb, "shunt_tls_rotation_failures_total", NULL, c.rotation_failures);

        pthread_mutex_lock(&st->mu);
        int64_t now = time(NULL);
        int64_t cur_exp = st->cur ? st->cur->not_after - now : 0;
        int64_t bundle_exp = st->mat ? INT64_MAX : 0;
        for (size_t i = 0; st->mat && i < sk_X509_num(st->mat->bundle); i++) {
                int64_t e = tls_cert_not_after(sk_X509_value(st->mat->bundle, i)) - now;
                if (e < bundle_exp)
                        bundle_exp = e;
        }
        int64_t cur_conns = st->cur ? tls_snapshot_conns(st->cur) : 0;
        int64_t prev_conns = st->prev ? tls_snapshot_conns(st->prev) : 0;
        pthread_mutex_unlock(&st->mu);
        prom_family(sb, "shunt_tls_cert_expiry_seconds", "gauge",
                    "Seconds until the current workload certificate expires.");
        prom_sample(sb, "shunt_tls_cert_expiry_seconds", NULL, (double)cur_exp);
        prom_family(sb, "shunt_tls_trust_bundle_expiry_seconds", "gauge",
                    "Seconds until the first CA of the trust bundle expires.");
        prom_sample(sb, "shunt_tls_trust_bundle_expiry_seconds", NULL, (double)bundle_exp);
        prom_family(sb, "shunt_tls_rotation_retrying", "gauge",
                    "1 while the last attempt to renew or reload failed.");
        prom_sample_u64(sb, "shunt_tls_rotation_retrying", NULL, c.retrying ? 1 : 0);
        prom_family(sb, "shunt_tls_connections", "gauge",
                    "TLS connections by the certificate they use.");
        prom_sample_u64(sb, "shunt_tls_connections", "cert=\"current\"", (uint64_t)cur_conns);
        prom_sample_u64(sb, "shunt_tls_connections", "cert=\"previous\"", (uint64_t)prev_conns);
        if (st->src->ops->render_metrics)
                st->src->ops->render_metrics(st->src, sb);
}

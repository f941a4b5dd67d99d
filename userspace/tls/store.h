/* SPDX-License-Identifier: Apache-2.0 */
/* Certificate store: the current identity, published to workers as an
 * immutable, reference-counted struct tls_snapshot (core/snapshot.h) holding
 * a ready server and client SSL_CTX, so certificate and key change together
 * and workers take no lock.
 *
 * Main thread only (except tls_store_slot readers and the metrics counters,
 * which workers update through their tls_conn). The store must outlive every
 * tls_conn made from its snapshots.
 *
 * Rotation: a source that rotates (the built-in CA) is asked for a new
 * certificate when a third of the current one's lifetime (issued_at to
 * notAfter) is left; a source that changes (files) is asked when changed()
 * says so. A failed fetch keeps the current certificate serving and is
 * retried after 1 s, doubling to 30 s, ±20 % jitter, and at once when the
 * source changes again. The replaced snapshot stays referenced by the
 * connections that use it; the store keeps it for drain_s more seconds to
 * report it (/certs), then lets it go. */
#ifndef SHUNT_TLS_STORE_H
#define SHUNT_TLS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "tls/conn.h"
#include "tls/source.h"

#define TLS_DEFAULT_SKEW_S  300u
#define TLS_DEFAULT_DRAIN_S 300u
#define TLS_DEFAULT_POLL_MS 1000u

struct tls_store_options {
        const char *trust_domain; /* required */
        uint32_t clock_skew_s;
        uint32_t drain_s;
        uint32_t poll_ms;  /* how often changed() is asked */
        bool require_port; /* inbound needs the port-<N> SNI name */
        /* Deferred start (node mode's per-pod identities): tls_store_new
         * fetches nothing; the first tick does (asynchronously when the
         * source can), and the slot holds no snapshot until a certificate
         * is installed. identity names it for reporting until then. */
        bool deferred;
        const char *identity;
        /* A failed fetch is logged once per run of failures (the first, at
         * error level; the rest at debug), and the recovery at info. */
        bool log_once;
        /* Federated trust domains (tls/federation.h), borrowed: it must
         * outlive the store. NULL: our trust domain only. */
        struct tls_federation *federation;
};

/* Sets the defaults above (require_port true). */
void tls_store_options_init(struct tls_store_options *opt);

struct tls_store;

/* Takes ownership of src (also on failure). Fetches the first certificate
 * now: failure is a start-up error (unless opt->deferred). */
int tls_store_new(const struct tls_store_options *opt, struct tls_source *src,
                  struct tls_store **out);
void tls_store_free(struct tls_store *st);

/* The slot workers read: snapshot_reader_get(r, tls_store_slot(st)) then
 * tls_snapshot_get(). */
struct snapshot_slot *tls_store_slot(struct tls_store *st);
/* A new reference to the current snapshot (tls_snapshot_unref it); NULL
 * while a deferred store has none yet. */
struct tls_snapshot *tls_store_acquire(struct tls_store *st);

/* Does what is due (rotation, retry, reload, end of drain) and returns the
 * milliseconds until it should be called again. */
uint64_t tls_store_tick(struct tls_store *st);
/* Calls tls_store_tick from a timer on loop (the main loop). 0 or -errno. */
int tls_store_start(struct tls_store *st, struct loop *loop);
/* Makes the next tick fetch a new certificate now (operator "rotate"). */
void tls_store_rotate_now(struct tls_store *st);

/* JSON object for /certs: identity, source, current and previous
 * certificate, rotation state, trust bundle, policy. No key material.
 * policy_extra (NULL or JSON members, "\"k\":v,...") goes into "policy". */
void tls_store_render_json(struct tls_store *st, struct strbuf *sb, const char *policy_extra);
/* The current certificate chain (leaf first; public, no key) as a JSON
 * string of PEM, or null while there is none. */
void tls_store_render_chain_pem(struct tls_store *st, struct strbuf *sb);
/* Prometheus families shunt_tls_*. */
void tls_store_render_metrics(struct tls_store *st, struct strbuf *sb);

struct tls_store_counts {
        uint64_t rotations;
        uint64_t rotation_failures;
        uint64_t handshakes_ok[2]; /* [0] inbound, [1] outbound */
        uint64_t handshake_fail[2][TLS_FAIL__COUNT];
        bool retrying;     /* the last fetch failed */
        bool draining;     /* a previous certificate is held */
        bool has_cert;     /* a certificate is installed (false only while deferred) */
        int64_t not_after; /* of the current certificate, 0 without one */
        int64_t conns;     /* tls_conns holding the current or previous certificate */
        uint32_t consecutive_failures;
};
void tls_store_counts(struct tls_store *st, struct tls_store_counts *out);
/* The last fetch error ("" when the last fetch worked). */
const char *tls_store_last_error(struct tls_store *st);

#endif

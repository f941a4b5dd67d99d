/* SPDX-License-Identifier: Apache-2.0 */
/* Trust-domain federation: one trust bundle per foreign trust domain.
 *
 * SPIFFE federation semantics: a peer whose SPIFFE ID names trust domain T
 * is verified against T's bundle only. Our own trust domain keeps the bundle
 * of the certificate source (store.h); each federated domain has its own
 * file, in PEM (one or more CERTIFICATE blocks) or in the SPIFFE bundle
 * format (a JWK set whose "x509-svid" keys carry the CA in "x5c"). A
 * certificate that claims domain A but chains to B's CA is refused
 * (wrong_domain_chain), and one of a domain that is neither ours nor
 * federated is refused (wrong_trust_domain) as before.
 *
 * The files are polled (device, inode, size, mtimes: a symlink swap and an
 * in-place rewrite are both seen) and a changed file is loaded again; a new
 * version that cannot be read or holds no CA is refused with one log line and
 * the domain keeps its last bundle (the reload failure is counted). The
 * current bundles are published as an immutable, reference-counted set; a
 * handshake takes a reference for its verification.
 *
 * Main thread: new, tick, start, free, reporting. Any thread: the verify
 * helpers of tls-int.h. */
#ifndef SHUNT_TLS_FEDERATION_H
#define SHUNT_TLS_FEDERATION_H

#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/strbuf.h"

#define TLS_FED_MAX_DOMAINS 32           /* federated trust domains */
#define TLS_FED_MAX_CAS     64           /* certificates in one domain's bundle */
#define TLS_FED_BUNDLE_MAX  (512 * 1024) /* bytes of one bundle file */
#define TLS_FED_POLL_MS     1000u

struct tls_federation;

/* Parses mtls.federation, a JSON array of {"trust_domain", "bundle_file"}
 * (own_td may not be listed, nor a domain twice), and loads every bundle:
 * a missing or unusable file is a start-up error. json NULL or "[]" gives
 * an empty federation (*out is still made). 0, or -errno with one sentence
 * in err. */
int tls_federation_new(const char *own_td, const char *json, struct tls_federation **out, char *err,
                       size_t errlen);
void tls_federation_free(struct tls_federation *fed);
size_t tls_federation_count(const struct tls_federation *fed);

/* Loads the bundles whose files changed; returns the milliseconds until it
 * should be called again. */
uint64_t tls_federation_tick(struct tls_federation *fed);
/* Calls tls_federation_tick from a timer on loop. 0 or -errno. */
int tls_federation_start(struct tls_federation *fed, struct loop *loop);

/* JSON array for /certs: per domain its file, format, CAs, reloads and last
 * error. */
void tls_federation_render_json(struct tls_federation *fed, struct strbuf *sb);
/* Prometheus families shunt_tls_federation_*. */
void tls_federation_render_metrics(struct tls_federation *fed, struct strbuf *sb);

#endif

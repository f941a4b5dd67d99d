/* SPDX-License-Identifier: Apache-2.0 */
/* TLS 1.3 connections between mesh sidecars, on non-blocking sockets.
 *
 * A worker takes the current struct tls_snapshot from the store's slot
 * (store.h: tls_store_slot + snapshot_reader_get + tls_snapshot_get), and
 * wraps each accepted or connected socket in a tls_conn. The tls_conn keeps
 * its own reference to the snapshot, so the certificate it started with stays
 * alive until the connection ends, whatever rotations happen meanwhile.
 *
 * Both directions are TLS 1.3 only, without session resumption (every
 * handshake verifies the peer's current certificate). The server requires a
 * client certificate. The peer's certificate must chain to the trust bundle,
 * be within its validity (± the clock-skew allowance), not be a CA, carry
 * exactly one URI SAN that is a SPIFFE ID (no CN fallback) in our trust
 * domain or a federated one (tls/federation.h): the chain is checked against
 * the bundle of the trust domain the SPIFFE ID names, and only that one; the
 * server then applies the authorization policies of the
 * destination port (authz/authz.h, given by tls_conn_set_authz), the client
 * requires the exact SPIFFE ID it expects.
 *
 * Destination port: the client sends it as the SNI name
 * "port-<N>.<trust-domain>" (e.g. "port-8080.cluster.local"). The server
 * reads it from the ClientHello, before the client's certificate arrives, so
 * the per-port policies are applied during the handshake; a ClientHello
 * without it is refused (no_destination) unless require_port is off.
 *
 * Use from an edge-triggered epoll loop: call tls_conn_handshake() until it
 * returns 0, and on -EAGAIN wait for the direction tls_conn_want() names.
 * tls_conn_read() must be called until it returns -EAGAIN (it may hold
 * decrypted bytes that epoll does not know about: tls_conn_pending()). After
 * tls_conn_write() returned -EAGAIN, call it again with the same bytes (a
 * prefix at least) once tls_conn_want() is satisfied. A handshake failure is
 * logged once (audit line: direction, peer address, reason, presented
 * identity) and counted in the store's metrics. The caller owns the handshake
 * timeout: when its timer fires, tls_conn_timeout() records the failure.
 *
 * In TLS 1.3 a client finishes its handshake before the server has checked
 * the client's certificate: a server's refusal reaches the client as an
 * alert on its first read (-EPROTO; tls_conn_fail() says "peer_alert"). */
#ifndef SHUNT_TLS_CONN_H
#define SHUNT_TLS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "authz/authz.h"
#include "core/snapshot.h"

enum tls_fail {
        TLS_OK = 0,
        TLS_FAIL_NO_CERTIFICATE, /* peer presented no certificate */
        TLS_FAIL_UNTRUSTED_CA,   /* chain does not lead to the trust bundle */
        TLS_FAIL_EXPIRED,        /* past notAfter + skew */
        TLS_FAIL_NOT_YET_VALID,  /* before notBefore - skew */
        TLS_FAIL_NO_SPIFFE_ID,   /* no URI SAN */
        TLS_FAIL_BAD_SPIFFE_ID,  /* several URI SANs, or not a valid SPIFFE ID */
        TLS_FAIL_WRONG_TRUST_DOMAIN,
        TLS_FAIL_NOT_ALLOWED,       /* no allow rule of the port matches */
        TLS_FAIL_WRONG_IDENTITY,    /* server is not the expected SPIFFE ID */
        TLS_FAIL_BAD_CERTIFICATE,   /* CA certificate as leaf, wrong key usage, ... */
        TLS_FAIL_NO_DESTINATION,    /* no port-<N> SNI name */
        TLS_FAIL_PROTOCOL_VERSION,  /* peer offered no TLS 1.3 */
        TLS_FAIL_PEER_ALERT,        /* peer refused us (alert) */
        TLS_FAIL_HANDSHAKE_TIMEOUT, /* the caller's timer fired */
        TLS_FAIL_HANDSHAKE_ERROR,   /* malformed, truncated, not TLS, peer closed */
        TLS_FAIL_INTERNAL,
        TLS_FAIL_DENIED_BY_POLICY, /* a deny rule of the port matches */
        /* the SPIFFE ID names one trust domain (ours or federated) but the
         * chain leads to another one's bundle */
        TLS_FAIL_WRONG_DOMAIN_CHAIN,
        TLS_FAIL__COUNT
};

/* "ok", "no_certificate", "untrusted_ca", ... (stable: metrics labels). */
const char *tls_fail_name(enum tls_fail f);

/* ---- snapshots: one certificate/key pair with its two contexts ------------- */

struct tls_snapshot;

/* The tls_snapshot behind a snapshot taken from tls_store_slot(). */
struct tls_snapshot *tls_snapshot_get(struct snapshot *s);
void tls_snapshot_ref(struct tls_snapshot *snap);
void tls_snapshot_unref(struct tls_snapshot *snap);
const char *tls_snapshot_identity(const struct tls_snapshot *snap); /* our SPIFFE ID */
const char *tls_snapshot_serial(const struct tls_snapshot *snap);   /* hex */
int64_t tls_snapshot_not_after(const struct tls_snapshot *snap);    /* unix seconds */
/* Connections (tls_conn) currently holding this snapshot. */
int64_t tls_snapshot_conns(const struct tls_snapshot *snap);

/* ---- connections ------------------------------------------------------------ */

struct tls_conn;
struct sockaddr_storage;

enum tls_want {
        TLS_WANT_NOTHING = 0,
        TLS_WANT_READ = 1,
        TLS_WANT_WRITE = 2,
};

/* fd: a connected non-blocking TCP socket, still owned by the caller (never
 * closed here). conn_id goes into log lines (0 = none). 0 or -errno. */
int tls_conn_server_new(struct tls_snapshot *snap, int fd, uint64_t conn_id, struct tls_conn **out);
/* expected_id: the SPIFFE ID the server must present; dst_port: the
 * application port the peer forwards to (1..65535). */
/* The peer's address, for the audit line of a refused handshake: a peer
 * that resets at once (a TLS 1.2 client refused for its version) can no
 * longer be asked with getpeername. */
void tls_conn_set_peer(struct tls_conn *c, const struct sockaddr_storage *peer);
int tls_conn_client_new(struct tls_snapshot *snap, int fd, uint64_t conn_id,
                        const char *expected_id, uint16_t dst_port, struct tls_conn **out);
void tls_conn_free(struct tls_conn *c);
/* Server side, before the handshake: the policies the peer's identity is
 * checked against for the destination port (a reference is taken; NULL:
 * none, any identity of the trust domain). */
void tls_conn_set_authz(struct tls_conn *c, struct authz *a);

/* 0 when done; -EAGAIN (see tls_conn_want); -EPROTO when it failed
 * (tls_conn_fail says why). */
int tls_conn_handshake(struct tls_conn *c);
bool tls_conn_established(const struct tls_conn *c);
enum tls_want tls_conn_want(const struct tls_conn *c);
/* >0 bytes; 0 end of stream (close_notify, or a bare EOF: see
 * tls_conn_clean_eof); -EAGAIN; -EPROTO (alert, bad record) or -errno. */
ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len);
/* >0 bytes taken (may be fewer than len); -EAGAIN; -EPIPE/-EPROTO/-errno. */
ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len);
/* Sends close_notify (our direction's end of stream). 0 or -EAGAIN or
 * -errno. */
int tls_conn_shutdown(struct tls_conn *c);
size_t tls_conn_pending(const struct tls_conn *c);
bool tls_conn_clean_eof(const struct tls_conn *c);

/* Records a handshake timeout (logged and counted once). */
void tls_conn_timeout(struct tls_conn *c);

enum tls_fail tls_conn_fail(const struct tls_conn *c);
const char *tls_conn_fail_detail(const struct tls_conn *c); /* "" when none */
/* The peer's SPIFFE ID: verified after the handshake; as presented (maybe
 * invalid) after a failure; "" when none was seen. */
const char *tls_conn_peer_id(const struct tls_conn *c);
/* Serial (hex) of the peer's leaf certificate, "" when none. */
const char *tls_conn_peer_serial(const struct tls_conn *c);
/* Lower-case hex SHA-256 of the peer's leaf certificate (DER), as
 * X-Forwarded-Client-Cert's Hash carries it; "" when none. Computed on the
 * first call. */
const char *tls_conn_peer_cert_sha256(struct tls_conn *c);
/* Server side: the destination port from the SNI name (0 when none). */
uint16_t tls_conn_dst_port(const struct tls_conn *c);
struct tls_snapshot *tls_conn_snapshot(const struct tls_conn *c); /* borrowed */

/* SNI carrying a destination port: "port-<N>.<suffix>" (suffix may be NULL:
 * "port-<N>"). Returns the length, or -ENOSPC. */
int tls_sni_format(uint16_t port, const char *suffix, char *buf, size_t len);
/* Parses "port-<N>" optionally followed by "." and anything. N in 1..65535
 * without leading zeros. 0 or -EINVAL. */
int tls_sni_port(const char *sni, uint16_t *port);

#endif

// SPDX-License-Identifier: Apache-2.0
/* TLS contexts, peer verification and non-blocking connections (BoringSSL). */
#include "tls/conn.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "core/spiffe.h"
#include "tls/tls-int.h"

#define COMP "tls"

static const char *const fail_names[TLS_FAIL__COUNT] = {
    [TLS_OK] = "ok",
    [TLS_FAIL_NO_CERTIFICATE] = "no_certificate",
    [TLS_FAIL_UNTRUSTED_CA] = "untrusted_ca",
    [TLS_FAIL_EXPIRED] = "expired",
    [TLS_FAIL_NOT_YET_VALID] = "not_yet_valid",
    [TLS_FAIL_NO_SPIFFE_ID] = "no_spiffe_id",
    [TLS_FAIL_BAD_SPIFFE_ID] = "bad_spiffe_id",
    [TLS_FAIL_WRONG_TRUST_DOMAIN] = "wrong_trust_domain",
    [TLS_FAIL_NOT_ALLOWED] = "not_allowed",
    [TLS_FAIL_WRONG_IDENTITY] = "wrong_identity",
    [TLS_FAIL_BAD_CERTIFICATE] = "bad_certificate",
    [TLS_FAIL_NO_DESTINATION] = "no_destination",
    [TLS_FAIL_PROTOCOL_VERSION] = "protocol_version",
    [TLS_FAIL_PEER_ALERT] = "peer_alert",
    [TLS_FAIL_HANDSHAKE_TIMEOUT] = "handshake_timeout",
    [TLS_FAIL_HANDSHAKE_ERROR] = "handshake_error",
    [TLS_FAIL_INTERNAL] = "internal_error",
    [TLS_FAIL_DENIED_BY_POLICY] = "denied_by_policy",
    [TLS_FAIL_WRONG_DOMAIN_CHAIN] = "wrong_domain_chain",
};

const char *tls_fail_name(enum tls_fail f)
{
        return (unsigned)f < TLS_FAIL__COUNT ? fail_names[f] : "unknown";
}

/* ---- snapshot accessors ------------------------------------------------------ */

struct tls_snapshot *tls_snapshot_get(struct snapshot *s)
{
        return s ? (struct tls_snapshot *)((char *)s - offsetof(struct tls_snapshot, base)) : NULL;
}

void tls_snapshot_ref(struct tls_snapshot *snap)
{
        snapshot_ref(&snap->base);
}

void tls_snapshot_unref(struct tls_snapshot *snap)
{
        if (snap)
                snapshot_unref(&snap->base);
}

const char *tls_snapshot_identity(const struct tls_snapshot *snap)
{
        return snap->identity;
}

const char *tls_snapshot_serial(const struct tls_snapshot *snap)
{
        return snap->serial;
}

int64_t tls_snapshot_not_after(const struct tls_snapshot *snap)
{
        return snap->not_after;
}

int64_t tls_snapshot_conns(const struct tls_snapshot *snap)
{
        return atomic_load_explicit(&snap->conns, memory_order_relaxed);
}

/* ---- connections -------------------------------------------------------------- */

struct tls_conn {
        SSL *ssl;
        struct tls_snapshot *snap;
        int fd;
        uint64_t id;
        bool server;
        bool established;
        bool reported; /* outcome counted and logged */
        bool clean_eof;
        enum tls_want want;
        enum tls_fail fail;
        uint16_t dst_port;
        char *expected;
        struct authz *authz;
        char detail[160];
        char peer_id[SPIFFE_ID_MAX + 1];
        struct sockaddr_storage peer; /* for the audit line; family 0: ask the socket */
        char peer_serial[80];
        char peer_sha256[2 * SHA256_DIGEST_LENGTH + 1]; /* "" until asked */
};

static void set_fail(struct tls_conn *c, enum tls_fail f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_fail(struct tls_conn *c, enum tls_fail f, const char *fmt, ...)
{
        if (c->fail != TLS_OK)
                return; /* the first reason is the real one */
        c->fail = f;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
        va_end(ap);
}

static enum tls_fail map_x509_err(int err)
{
        switch (err) {
        case X509_V_ERR_CERT_HAS_EXPIRED:
                return TLS_FAIL_EXPIRED;
        case X509_V_ERR_CERT_NOT_YET_VALID:
                return TLS_FAIL_NOT_YET_VALID;
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        case X509_V_ERR_CERT_UNTRUSTED:
                return TLS_FAIL_UNTRUSTED_CA;
        default:
                return TLS_FAIL_BAD_CERTIFICATE;
        }
}

/* X509_V_ERR code of verifying chain (leaf first) against the bundle at t. */
static int chain_verify(X509_STORE *trust, STACK_OF(X509) * chain, bool server, time_t t)
{
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        if (!ctx)
                return X509_V_ERR_OUT_OF_MEM;
        int rc = X509_V_ERR_UNSPECIFIED;
        if (X509_STORE_CTX_init(ctx, trust, sk_X509_value(chain, 0), chain) &&
            X509_STORE_CTX_set_purpose(ctx, server ? X509_PURPOSE_SSL_CLIENT
                                                   : X509_PURPOSE_SSL_SERVER)) {
                X509_STORE_CTX_set_time(ctx, 0, t);
                rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
                if (rc == X509_V_OK && X509_STORE_CTX_get_error(ctx) != X509_V_OK)
                        rc = X509_STORE_CTX_get_error(ctx);
        }
        X509_STORE_CTX_free(ctx);
        ERR_clear_error();
        return rc;
}

/* chain_verify now, then within the clock-skew allowance. */
static int chain_verify_skew(X509_STORE *trust, STACK_OF(X509) * chain, bool server,
                             uint32_t skew_s)
{
        time_t now = time(NULL);
        int v = chain_verify(trust, chain, server, now);
        if (v == X509_V_ERR_CERT_HAS_EXPIRED)
                v = chain_verify(trust, chain, server, now - (time_t)skew_s);
        else if (v == X509_V_ERR_CERT_NOT_YET_VALID)
                v = chain_verify(trust, chain, server, now + (time_t)skew_s);
        return v;
}

/* The trust domain (ours or a federated one, other than the one tried,
 * fed_i: its index, -1 for ours) whose bundle chain does lead to, or NULL.
 * *set is acquired when needed (the caller releases it). */
static const char *chain_domain(struct tls_snapshot *snap, struct tls_fed_set **set, int fed_i,
                                STACK_OF(X509) * chain, bool server)
{
        if (fed_i >= 0 && chain_verify_skew(snap->trust, chain, server, snap->skew_s) == X509_V_OK)
                return snap->trust_domain;
        size_t n = tls_fed_domains(snap->fed);
        if (!n)
                return NULL;
        if (!*set)
                *set = tls_fed_acquire(snap->fed);
        for (size_t i = 0; i < n; i++) {
                X509_STORE *st = tls_fed_store(*set, (int)i);
                if ((int)i != fed_i && st &&
                    chain_verify_skew(st, chain, server, snap->skew_s) == X509_V_OK)
                        return tls_fed_name(snap->fed, (int)i);
        }
        return NULL;
}

/* The checks after the chain: leaf, SPIFFE ID, trust domain, policy. */
static enum ssl_verify_result_t verify_identity(struct tls_conn *c, X509 *leaf, int urc,
                                                const char *why, const char *td, bool known_td,
                                                uint8_t *alert)
{
        struct tls_snapshot *snap = c->snap;
        if (X509_check_ca(leaf) > 0) {
                set_fail(c, TLS_FAIL_BAD_CERTIFICATE, "peer's leaf certificate is a CA");
                return ssl_verify_invalid;
        }
        if (urc == -ENOENT) {
                set_fail(c, TLS_FAIL_NO_SPIFFE_ID, "%s", why);
                return ssl_verify_invalid;
        }
        if (urc < 0) {
                set_fail(c, TLS_FAIL_BAD_SPIFFE_ID, "%s", why ? why : "invalid URI SAN");
                return ssl_verify_invalid;
        }
        if (!known_td) {
                if (tls_fed_domains(snap->fed))
                        set_fail(c, TLS_FAIL_WRONG_TRUST_DOMAIN,
                                 "trust domain %.100s is neither ours (%.100s) nor federated", td,
                                 snap->trust_domain);
                else
                        set_fail(c, TLS_FAIL_WRONG_TRUST_DOMAIN, "trust domain is not %s",
                                 snap->trust_domain);
                return ssl_verify_invalid;
        }
        struct authz_verdict av;
        if (c->server && !authz_check(c->authz, c->dst_port, c->peer_id, &av)) {
                if (av.reason == AUTHZ_DENIED_BY_POLICY)
                        set_fail(c, TLS_FAIL_DENIED_BY_POLICY, "port %u: denied by policy %.100s",
                                 (unsigned)c->dst_port, av.policy);
                else
                        set_fail(c, TLS_FAIL_NOT_ALLOWED,
                                 "port %u: no allow rule matches (policy %.100s)",
                                 (unsigned)c->dst_port, av.policy);
                *alert = SSL_AD_ACCESS_DENIED;
                return ssl_verify_invalid;
        }
        if (!c->server && strcmp(c->peer_id, c->expected) != 0) {
                set_fail(c, TLS_FAIL_WRONG_IDENTITY, "expected %.100s", c->expected);
                return ssl_verify_invalid;
        }
        return ssl_verify_ok;
}

static enum ssl_verify_result_t verify_peer(SSL *ssl, uint8_t *alert)
{
        struct tls_conn *c = SSL_get_app_data(ssl);
        struct tls_snapshot *snap = c->snap;
        STACK_OF(X509) *chain = SSL_get_peer_full_cert_chain(ssl);
        *alert = SSL_AD_BAD_CERTIFICATE;
        if (!chain || sk_X509_num(chain) == 0) {
                set_fail(c, TLS_FAIL_NO_CERTIFICATE, "peer presented no certificate");
                *alert = SSL_AD_CERTIFICATE_REQUIRED;
                return ssl_verify_invalid;
        }
        X509 *leaf = sk_X509_value(chain, 0);
        tls_cert_serial_hex(leaf, c->peer_serial, sizeof(c->peer_serial));
        const char *why = NULL;
        int urc = tls_cert_spiffe_uri(leaf, c->peer_id, sizeof(c->peer_id), &why);
        /* The trust domain the SPIFFE ID names picks the bundle: ours, or a
         * federated domain's and only that one. Without a usable ID, or for a
         * domain we do not know, ours (the ID is refused after the chain). */
        char td[SPIFFE_TD_MAX + 1] = "";
        if (urc == 0) {
                struct spiffe_id *id = malloc(sizeof(*id));
                if (!id || spiffe_id_parse(c->peer_id, id, NULL) < 0) {
                        free(id);
                        set_fail(c, TLS_FAIL_INTERNAL, "out of memory");
                        *alert = SSL_AD_INTERNAL_ERROR;
                        return ssl_verify_invalid;
                }
                snprintf(td, sizeof(td), "%s", id->trust_domain);
                free(id);
        }
        bool own = urc == 0 && strcmp(td, snap->trust_domain) == 0;
        int fed_i = urc == 0 && !own ? tls_fed_find(snap->fed, td) : -1;
        struct tls_fed_set *set = fed_i >= 0 ? tls_fed_acquire(snap->fed) : NULL;
        X509_STORE *store = fed_i >= 0 ? tls_fed_store(set, fed_i) : snap->trust;
        enum ssl_verify_result_t res;
        int v = store ? chain_verify_skew(store, chain, c->server, snap->skew_s)
                      : X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY;
        if (v != X509_V_OK) {
                enum tls_fail f = map_x509_err(v);
                const char *other = f == TLS_FAIL_UNTRUSTED_CA && (own || fed_i >= 0)
                                        ? chain_domain(snap, &set, fed_i, chain, c->server)
                                        : NULL;
                if (other)
                        set_fail(c, TLS_FAIL_WRONG_DOMAIN_CHAIN,
                                 "the SPIFFE ID names trust domain %.100s but the chain leads to "
                                 "the bundle of %.100s",
                                 td, other);
                else
                        set_fail(c, f, "%s%s%.100s%s", X509_verify_cert_error_string(v),
                                 fed_i >= 0 ? " (bundle of federated trust domain " : "",
                                 fed_i >= 0 ? td : "", fed_i >= 0 ? ")" : "");
                *alert = f == TLS_FAIL_EXPIRED        ? SSL_AD_CERTIFICATE_EXPIRED
                         : f == TLS_FAIL_UNTRUSTED_CA ? SSL_AD_UNKNOWN_CA
                                                      : SSL_AD_BAD_CERTIFICATE;
                res = ssl_verify_invalid;
        } else {
                res = verify_identity(c, leaf, urc, why, td, own || fed_i >= 0, alert);
        }
        tls_fed_release(set);
        if (fed_i >= 0)
                tls_fed_count(snap->fed, fed_i, c->server, res == ssl_verify_ok);
        return res;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
        struct tls_conn *c = SSL_get_app_data(ssl);
        const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        uint16_t port = 0;
        if (sni && tls_sni_port(sni, &port) == 0) {
                c->dst_port = port;
                return SSL_TLSEXT_ERR_OK;
        }
        if (!c->snap->require_port)
                return SSL_TLSEXT_ERR_OK;
        set_fail(c, TLS_FAIL_NO_DESTINATION, "%s",
                 sni ? "server name is not port-<N>[.<suffix>]"
                     : "no server name with the destination port");
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *ctx_new(const struct tls_material *m, bool server)
{
        SSL_CTX *ctx = SSL_CTX_new(TLS_method());
        if (!ctx)
                return NULL;
        bool ok = SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
                  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
                  SSL_CTX_use_certificate(ctx, m->leaf) && SSL_CTX_use_PrivateKey(ctx, m->key);
        for (size_t i = 0; ok && i < sk_X509_num(m->chain); i++)
                ok = SSL_CTX_add1_chain_cert(ctx, sk_X509_value(m->chain, i));
        ok = ok && SSL_CTX_check_private_key(ctx);
        if (!ok) {
                SSL_CTX_free(ctx);
                return NULL;
        }
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (server) {
                SSL_CTX_set_num_tickets(ctx, 0);
                SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                                          verify_peer);
                SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
        } else {
                SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, verify_peer);
        }
        return ctx;
}

int tls_ctx_build(struct tls_snapshot *snap, const struct tls_material *m)
{
        snap->server = ctx_new(m, true);
        snap->client = ctx_new(m, false);
        if (!snap->server || !snap->client) {
                uint32_t e = ERR_peek_last_error();
                log_error(COMP, 0, "building TLS contexts for certificate %s failed: %s",
                          snap->serial,
                          ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "unknown");
                ERR_clear_error();
                return -EINVAL;
        }
        return 0;
}

/* The sessions' transport: recv and send on the socket, the latter with
 * MSG_NOSIGNAL, so writing to a peer that has gone returns EPIPE instead of
 * raising SIGPIPE, whatever disposition the process inherited (BoringSSL's
 * socket BIO uses write(2)). */
static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static int sock_fd(BIO *b)
{
        return (int)(intptr_t)BIO_get_data(b);
}

static bool sock_retry(void)
{
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

static int sock_read(BIO *b, char *buf, int len)
{
        BIO_clear_retry_flags(b);
        ssize_t n = recv(sock_fd(b), buf, (size_t)len, 0);
        if (n < 0 && sock_retry())
                BIO_set_retry_read(b);
        return (int)n;
}

static int sock_write(BIO *b, const char *buf, int len)
{
        BIO_clear_retry_flags(b);
        ssize_t n = send(sock_fd(b), buf, (size_t)len, MSG_NOSIGNAL);
        if (n < 0 && sock_retry())
                BIO_set_retry_write(b);
        return (int)n;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
        (void)b;
        (void)num;
        (void)ptr;
        return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void sock_method_init(void)
{
        BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOCKET, "shunt socket");
        if (m && BIO_meth_set_read(m, sock_read) && BIO_meth_set_write(m, sock_write) &&
            BIO_meth_set_ctrl(m, sock_ctrl)) {
                sock_method = m;
                return;
        }
        BIO_meth_free(m);
}

/* A BIO on fd (not owned: closing is the caller's), or NULL. */
static BIO *sock_bio_new(int fd)
{
        pthread_once(&sock_method_once, sock_method_init);
        BIO *b = sock_method ? BIO_new(sock_method) : NULL;
        if (!b)
                return NULL;
        BIO_set_data(b, (void *)(intptr_t)fd);
        BIO_set_init(b, 1);
        return b;
}

static int conn_new(struct tls_snapshot *snap, int fd, uint64_t id, bool server,
                    struct tls_conn **out)
{
        if (!snap || fd < 0)
                return -EINVAL;
        struct tls_conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->ssl = SSL_new(server ? snap->server : snap->client);
        BIO *bio = c->ssl ? sock_bio_new(fd) : NULL;
        if (!bio) {
                SSL_free(c->ssl);
                free(c);
                ERR_clear_error();
                log_error(COMP, id, "cannot create a TLS session for fd %d", fd);
                return -ENOMEM;
        }
        SSL_set_bio(c->ssl, bio, bio); /* takes the one reference for both */
        SSL_set_app_data(c->ssl, c);
        if (server)
                SSL_set_accept_state(c->ssl);
        else
                SSL_set_connect_state(c->ssl);
        c->snap = snap;
        tls_snapshot_ref(snap);
        atomic_fetch_add_explicit(&snap->conns, 1, memory_order_relaxed);
        c->fd = fd;
        c->id = id;
        c->server = server;
        *out = c;
        return 0;
}

int tls_conn_server_new(struct tls_snapshot *snap, int fd, uint64_t conn_id, struct tls_conn **out)
{
        return conn_new(snap, fd, conn_id, true, out);
}

int tls_conn_client_new(struct tls_snapshot *snap, int fd, uint64_t conn_id,
                        const char *expected_id, uint16_t dst_port, struct tls_conn **out)
{
        const char *why;
        struct spiffe_id *id = malloc(sizeof(*id));
        if (!id)
                return -ENOMEM;
        int rc = expected_id ? spiffe_id_parse(expected_id, id, &why) : -EINVAL;
        free(id);
        if (rc < 0 || dst_port == 0) {
                log_error(COMP, conn_id,
                          "outbound TLS: expected identity \"%s\" or port %u invalid",
                          expected_id ? expected_id : "", (unsigned)dst_port);
                return -EINVAL;
        }
        struct tls_conn *c;
        rc = conn_new(snap, fd, conn_id, false, &c);
        if (rc < 0)
                return rc;
        char sni[300];
        c->expected = strdup(expected_id);
        if (!c->expected || tls_sni_format(dst_port, snap->trust_domain, sni, sizeof(sni)) < 0 ||
            !SSL_set_tlsext_host_name(c->ssl, sni)) {
                ERR_clear_error();
                tls_conn_free(c);
                return -ENOMEM;
        }
        c->dst_port = dst_port;
        *out = c;
        return 0;
}

void tls_conn_free(struct tls_conn *c)
{
        if (!c)
                return;
        SSL_free(c->ssl);
        atomic_fetch_sub_explicit(&c->snap->conns, 1, memory_order_relaxed);
        tls_snapshot_unref(c->snap);
        authz_unref(c->authz);
        free(c->expected);
        free(c);
}

void tls_conn_set_authz(struct tls_conn *c, struct authz *a)
{
        if (a)
                authz_ref(a);
        authz_unref(c->authz);
        c->authz = a;
}

static void report(struct tls_conn *c)
{
        if (c->reported)
                return;
        c->reported = true;
        int dir = c->server ? 0 : 1;
        if (c->fail == TLS_OK) {
                atomic_fetch_add_explicit(&c->snap->stats->ok[dir], 1, memory_order_relaxed);
                log_debug(COMP, c->id, "%s TLS handshake done: peer %s serial %s port %u",
                          c->server ? "inbound" : "outbound", c->peer_id, c->peer_serial,
                          (unsigned)c->dst_port);
                return;
        }
        atomic_fetch_add_explicit(&c->snap->stats->fail[dir][c->fail], 1, memory_order_relaxed);
        char addr[SOCKADDR_STRLEN] = "-", port[8];
        struct sockaddr_storage ss = c->peer;
        socklen_t sl = sizeof(ss);
        if (ss.ss_family || getpeername(c->fd, (struct sockaddr *)&ss, &sl) == 0)
                sockaddr_format(&ss, addr, sizeof(addr));
        snprintf(port, sizeof(port), "%u", (unsigned)c->dst_port);
        const struct log_field f[] = {
            {"peer", addr, false},
            {"port", port, false},
            {"reason", tls_fail_name(c->fail), false},
            {"detail", c->detail, true},
            {"identity", c->peer_id, true},
            {"serial", c->peer_serial[0] ? c->peer_serial : NULL, false},
            /* node mode: the destination pod whose policies decided */
            {"pod", authz_scope(c->authz), true},
        };
        size_t n = sizeof(f) / sizeof(f[0]) - (authz_scope(c->authz) ? 0 : 1);
        log_audit(LOG_WARN, COMP, c->id,
                  c->server ? "inbound TLS handshake refused" : "outbound TLS handshake refused", f,
                  n);
}

void tls_conn_set_peer(struct tls_conn *c, const struct sockaddr_storage *peer)
{
        c->peer = *peer;
}

/* Classifies a failed SSL call; returns the value for the caller. */
static int io_error(struct tls_conn *c, int ret, bool handshake)
{
        int err = SSL_get_error(c->ssl, ret);
        int sys = errno;
        switch (err) {
        case SSL_ERROR_WANT_READ:
                c->want = TLS_WANT_READ;
                return -EAGAIN;
        case SSL_ERROR_WANT_WRITE:
                c->want = TLS_WANT_WRITE;
                return -EAGAIN;
        default:
                break;
        }
        c->want = TLS_WANT_NOTHING;
        if (!handshake) {
                if (err == SSL_ERROR_ZERO_RETURN) {
                        c->clean_eof = true;
                        return 0;
                }
                if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
                        ERR_clear_error();
                        return sys ? -sys : 0; /* bare EOF: clean_eof stays false */
                }
                uint32_t e = ERR_peek_error();
                int reason = ERR_GET_REASON(e);
                if (!c->server && c->fail == TLS_OK && reason >= SSL_AD_REASON_OFFSET) {
                        /* TLS 1.3: the server's verdict on our certificate. */
                        c->reported = false;
                        set_fail(c, TLS_FAIL_PEER_ALERT, "peer sent alert: %s",
                                 SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
                        report(c);
                }
                ERR_clear_error();
                return -EPROTO;
        }
        uint32_t e = ERR_peek_error();
        int reason = ERR_GET_REASON(e);
        if (c->fail == TLS_OK) {
                if (err == SSL_ERROR_SYSCALL && e == 0) {
                        set_fail(c, TLS_FAIL_HANDSHAKE_ERROR, "%s",
                                 sys ? strerror(sys) : "peer closed the connection");
                } else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
                           reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
                        set_fail(c, TLS_FAIL_NO_CERTIFICATE, "peer presented no certificate");
                } else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
                           (reason == SSL_R_UNSUPPORTED_PROTOCOL ||
                            reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION)) {
                        set_fail(c, TLS_FAIL_PROTOCOL_VERSION, "peer does not offer TLS 1.3");
                } else if (ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET) {
                        set_fail(c, TLS_FAIL_PEER_ALERT, "peer sent alert: %s",
                                 SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
                } else {
                        const char *r = ERR_reason_error_string(e);
                        set_fail(c, TLS_FAIL_HANDSHAKE_ERROR, "%s", r ? r : "handshake failed");
                }
        }
        ERR_clear_error();
        report(c);
        return -EPROTO;
}

int tls_conn_handshake(struct tls_conn *c)
{
        if (c->established)
                return 0;
        if (c->reported)
                return -EPROTO; /* failed or timed out before */
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) {
                c->established = true;
                c->want = TLS_WANT_NOTHING;
                report(c);
                return 0;
        }
        return io_error(c, r, true);
}

bool tls_conn_established(const struct tls_conn *c)
{
        return c->established;
}

enum tls_want tls_conn_want(const struct tls_conn *c)
{
        return c->want;
}

ssize_t tls_conn_read(struct tls_conn *c, void *buf, size_t len)
{
        if (!c->established)
                return -ENOTCONN;
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
        if (r > 0) {
                c->want = TLS_WANT_NOTHING;
                return r;
        }
        return io_error(c, r, false);
}

ssize_t tls_conn_write(struct tls_conn *c, const void *buf, size_t len)
{
        if (!c->established)
                return -ENOTCONN;
        if (len == 0)
                return 0;
        ERR_clear_error();
        errno = 0;
        int r = SSL_write(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
        if (r > 0) {
                c->want = TLS_WANT_NOTHING;
                return r;
        }
        int rc = io_error(c, r, false);
        return rc == 0 ? -EPIPE : rc;
}

int tls_conn_shutdown(struct tls_conn *c)
{
        if (!c->established)
                return -ENOTCONN;
        ERR_clear_error();
        errno = 0;
        int r = SSL_shutdown(c->ssl);
        if (r >= 0)
                return 0;
        int rc = io_error(c, r, false);
        return rc == 0 ? -EPIPE : rc;
}

size_t tls_conn_pending(const struct tls_conn *c)
{
        int n = SSL_pending(c->ssl);
        return n > 0 ? (size_t)n : 0;
}

bool tls_conn_clean_eof(const struct tls_conn *c)
{
        return c->clean_eof;
}

void tls_conn_timeout(struct tls_conn *c)
{
        if (c->established || c->reported)
                return;
        set_fail(c, TLS_FAIL_HANDSHAKE_TIMEOUT, "handshake did not finish in time");
        report(c);
}

enum tls_fail tls_conn_fail(const struct tls_conn *c)
{
        return c->fail;
}

const char *tls_conn_fail_detail(const struct tls_conn *c)
{
        return c->detail;
}

const char *tls_conn_peer_id(const struct tls_conn *c)
{
        return c->peer_id;
}

const char *tls_conn_peer_serial(const struct tls_conn *c)
{
        return c->peer_serial;
}

const char *tls_conn_peer_cert_sha256(struct tls_conn *c)
{
        const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(c->ssl);
        if (c->peer_sha256[0] || !chain || sk_CRYPTO_BUFFER_num(chain) == 0)
                return c->peer_sha256;
        const CRYPTO_BUFFER *leaf = sk_CRYPTO_BUFFER_value(chain, 0);
        uint8_t md[SHA256_DIGEST_LENGTH];
        SHA256(CRYPTO_BUFFER_data(leaf), CRYPTO_BUFFER_len(leaf), md);
        for (size_t i = 0; i < sizeof(md); i++)
                snprintf(c->peer_sha256 + 2 * i, 3, "%02x", md[i]);
        return c->peer_sha256;
}

uint16_t tls_conn_dst_port(const struct tls_conn *c)
{
        return c->dst_port;
}

struct tls_snapshot *tls_conn_snapshot(const struct tls_conn *c)
{
        return c->snap;
}

int tls_sni_format(uint16_t port, const char *suffix, char *buf, size_t len)
{
        int n = suffix && *suffix ? snprintf(buf, len, "port-%u.%s", (unsigned)port, suffix)
                                  : snprintf(buf, len, "port-%u", (unsigned)port);
        return n < 0 || (size_t)n >= len ? -ENOSPC : n;
}

int tls_sni_port(const char *sni, uint16_t *port)
{
        if (!sni || strncmp(sni, "port-", 5) != 0)
                return -EINVAL;
        const char *p = sni + 5;
        if (*p < '1' || *p > '9')
                return -EINVAL; /* empty, or a leading zero */
        uint32_t v = 0;
        int digits = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
                if (++digits > 5)
                        return -EINVAL;
                v = v * 10 + (uint32_t)(*p - '0');
        }
        if ((*p != 0 && *p != '.') || v > 65535)
                return -EINVAL;
        *port = (uint16_t)v;
        return 0;
}

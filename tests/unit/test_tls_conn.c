// SPDX-License-Identifier: Apache-2.0
/* tls: connections against real peers. Our server (a thread on 127.0.0.1)
 * against `openssl s_client`: a mesh certificate passes; no certificate,
 * another CA, another trust domain, expired, not yet valid, no SPIFFE URI
 * (signed by the real openssl), TLS 1.2, no destination port, the allow-list
 * are refused with the right reason. Our client against `openssl s_server`:
 * right and wrong SPIFFE ID, untrusted server. Rotation with a 3 s lifetime
 * while a connection keeps exchanging data; CA rotation with overlap; bad
 * input (random bytes, truncated ClientHello, slow handshake). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

#include "test_tls_util.h"
#include "core/loop.h"
#include "tls/conn.h"
#include "core/spiffe.h"
#include "tls/federation.h"
#include "tls/source.h"
#include "tls/store.h"

#define TD        "cluster.local"
#define SERVER_ID "spiffe://cluster.local/ns/default/sa/server"
#define CLIENT_ID "spiffe://cluster.local/ns/default/sa/client"

struct fix {
        char *tmp;
        char cadir[512], cafile[600], cakey[600];
        struct tls_ca *ca; /* the mesh CA (same files the store's source uses) */
        struct tls_store *st;
};

static struct tls_store *store_new_fed(const char *cadir, const char *td, const char *id,
                                       uint32_t lifetime, const char *extra_bundle,
                                       struct tls_federation *fed)
{
        struct tls_builtin_options bo = {
            .ca = {.state_dir = cadir, .trust_domain = td},
            .spiffe_id = id,
            .dns_name = "server.default.svc.cluster.local",
            .lifetime_s = lifetime,
            .backdate_s = lifetime > 60 ? 60 : 0,
            .extra_bundle_file = extra_bundle,
        };
        struct tls_source *src;
        assert_int_equal(tls_source_builtin_new(&bo, &src), 0);
        struct tls_store_options so;
        tls_store_options_init(&so);
        so.trust_domain = td;
        so.federation = fed;
        struct tls_store *st;
        assert_int_equal(tls_store_new(&so, src, &st), 0);
        return st;
}

static struct tls_store *store_new(const char *cadir, const char *id, uint32_t lifetime,
                                   const char *extra_bundle)
{
        return store_new_fed(cadir, TD, id, lifetime, extra_bundle, NULL);
}

static int setup(void **state)
{
        struct fix *f = calloc(1, sizeof(*f));
        f->tmp = tu_mkdtemp();
        tu_path(f->cadir, sizeof(f->cadir), f->tmp, "ca");
        tu_path(f->cafile, sizeof(f->cafile), f->cadir, "ca.pem");
        tu_path(f->cakey, sizeof(f->cakey), f->cadir, "ca-key.pem");
        f->st = store_new(f->cadir, SERVER_ID, 3600, NULL);
        struct tls_ca_options o = {.state_dir = f->cadir};
        assert_int_equal(tls_ca_open(&o, &f->ca), 0);
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fix *f = *state;
        tls_store_free(f->st);
        tls_ca_free(f->ca);
        tu_rmrf(f->tmp);
        free(f->tmp);
        free(f);
        return 0;
}

/* Issues a client certificate into <tmp>/<name>.pem and -key.pem. */
static void issue_to(struct tls_ca *ca, const char *dir, const char *name, const char *id,
                     long from, long to)
{
        time_t now = time(NULL);
        struct tls_issue_req r = {.spiffe_id = id,
                                  .dns_name = "client.default.svc.cluster.local",
                                  .key_type = TLS_KEY_ECDSA_P256,
                                  .not_before = now + from,
                                  .not_after = now + to};
        struct tls_material *m;
        assert_int_equal(tls_ca_issue(ca, &r, &m), 0);
        tu_write_material(m, dir, name);
        tls_material_free(m);
}

/* ---- a one-connection server thread ------------------------------------------- */

struct srv {
        int lfd;
        uint16_t port;
        struct tls_store *st;
        int hs_timeout_ms;
        pthread_t th;
        /* results */
        enum tls_fail fail;
        char peer_id[SPIFFE_ID_MAX + 1];
        char serial[80];
        uint16_t dst_port;
        bool echoed;
};

static int wait_fd(int fd, short ev, int ms)
{
        struct pollfd p = {.fd = fd, .events = ev};
        return poll(&p, 1, ms);
}

/* The policies the server thread checks peers against (NULL: none). */
static struct authz *srv_authz;

static void *srv_main(void *arg)
{
        struct srv *s = arg;
        s->fail = TLS_FAIL__COUNT;
        if (wait_fd(s->lfd, POLLIN, 10000) <= 0)
                return NULL;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
                return NULL;
        struct tls_snapshot *snap = tls_store_acquire(s->st);
        snprintf(s->serial, sizeof(s->serial), "%s", tls_snapshot_serial(snap));
        struct tls_conn *c;
        if (tls_conn_server_new(snap, fd, 1, &c) < 0)
                abort();
        tls_conn_set_authz(c, srv_authz);
        tls_snapshot_unref(snap);
        uint64_t deadline = tu_now_ms() + (uint64_t)s->hs_timeout_ms;
        int rc;
        while ((rc = tls_conn_handshake(c)) == -EAGAIN) {
                uint64_t now = tu_now_ms();
                if (now >= deadline ||
                    wait_fd(fd, tls_conn_want(c) == TLS_WANT_WRITE ? POLLOUT : POLLIN,
                            (int)(deadline - now)) == 0) {
                        if (tu_now_ms() >= deadline) {
                                tls_conn_timeout(c);
                                rc = -ETIMEDOUT;
                                break;
                        }
                }
        }
        if (rc == 0) {
                char buf[4096];
                for (int i = 0; i < 200; i++) {
                        ssize_t n = tls_conn_read(c, buf, sizeof(buf));
                        if (n == -EAGAIN) {
                                wait_fd(fd, POLLIN, 50);
                                continue;
                        }
                        if (n > 0) {
                                ssize_t w;
                                while ((w = tls_conn_write(c, buf, (size_t)n)) == -EAGAIN)
                                        wait_fd(fd, POLLOUT, 50);
                                s->echoed = w == n;
                        }
                        break;
                }
                tls_conn_shutdown(c);
        }
        s->fail = tls_conn_fail(c);
        snprintf(s->peer_id, sizeof(s->peer_id), "%s", tls_conn_peer_id(c));
        s->dst_port = tls_conn_dst_port(c);
        tls_conn_free(c);
        close(fd);
        return NULL;
}

static void srv_start(struct srv *s, struct tls_store *st, int hs_timeout_ms)
{
        memset(s, 0, sizeof(*s));
        s->st = st;
        s->hs_timeout_ms = hs_timeout_ms;
        s->lfd = tu_listen(&s->port);
        assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void srv_join(struct srv *s)
{
        pthread_join(s->th, NULL);
        close(s->lfd);
}

/* openssl s_client against our server; returns what the server saw. */
static enum tls_fail s_client(struct fix *f, struct tls_store *st, const char *cert,
                              const char *key, const char *cafile, const char *version,
                              const char *sni, struct srv *s, char *out, size_t outlen)
{
        srv_start(s, st, 5000);
        char port[32];
        snprintf(port, sizeof(port), "127.0.0.1:%u", s->port);
        char *argv[24];
        int n = 0;
        argv[n++] = "openssl";
        argv[n++] = "s_client";
        argv[n++] = "-connect";
        argv[n++] = port;
        argv[n++] = (char *)version;
        argv[n++] = "-CAfile";
        argv[n++] = (char *)(cafile ? cafile : f->cafile);
        argv[n++] = "-verify_return_error";
        argv[n++] = "-quiet";
        if (sni) {
                argv[n++] = "-servername";
                argv[n++] = (char *)sni;
        } else {
                argv[n++] = "-noservername";
        }
        if (cert) {
                argv[n++] = "-cert";
                argv[n++] = (char *)cert;
                argv[n++] = "-key";
                argv[n++] = (char *)key;
        }
        argv[n] = NULL;
        tu_run(argv, "hello-mesh\n", out, outlen, 10000);
        srv_join(s);
        return s->fail;
}

static enum tls_fail client_with(struct fix *f, const char *name, struct srv *s, char *out,
                                 size_t outlen)
{
        char cert[600], key[600];
        snprintf(cert, sizeof(cert), "%s/%s.pem", f->tmp, name);
        snprintf(key, sizeof(key), "%s/%s-key.pem", f->tmp, name);
        return s_client(f, f->st, cert, key, NULL, "-tls1_3", "port-8080." TD, s, out, outlen);
}

static void test_server_vs_s_client(void **state)
{
        struct fix *f = *state;
        struct srv s;
        char out[8192];
        /* A mesh certificate: accepted, identity and port known, data flows. */
        issue_to(f->ca, f->tmp, "good", CLIENT_ID, -60, 3600);
        assert_int_equal(client_with(f, "good", &s, out, sizeof(out)), TLS_OK);
        assert_string_equal(s.peer_id, CLIENT_ID);
        assert_int_equal(s.dst_port, 8080);
        assert_true(s.echoed);
        assert_non_null(strstr(out, "hello-mesh"));

        /* No client certificate. */
        assert_int_equal(
            s_client(f, f->st, NULL, NULL, NULL, "-tls1_3", "port-8080." TD, &s, out, sizeof(out)),
            TLS_FAIL_NO_CERTIFICATE);
        assert_false(s.echoed);

        /* Another CA. */
        char odir[600];
        tu_path(odir, sizeof(odir), f->tmp, "otherca");
        struct tls_ca_options oo = {.state_dir = odir};
        struct tls_ca *other;
        assert_int_equal(tls_ca_open(&oo, &other), 0);
        issue_to(other, f->tmp, "foreign", CLIENT_ID, -60, 3600);
        tls_ca_free(other);
        assert_int_equal(client_with(f, "foreign", &s, out, sizeof(out)), TLS_FAIL_UNTRUSTED_CA);
        assert_string_equal(s.peer_id, CLIENT_ID); /* presented identity kept for the audit */

        /* Another trust domain, same CA. */
        issue_to(f->ca, f->tmp, "otherdomain", "spiffe://evil.org/ns/default/sa/client", -60, 3600);
        assert_int_equal(client_with(f, "otherdomain", &s, out, sizeof(out)),
                         TLS_FAIL_WRONG_TRUST_DOMAIN);

        /* Expired an hour ago; expired a minute ago is inside the 5 min skew. */
        issue_to(f->ca, f->tmp, "expired", CLIENT_ID, -7200, -3600);
        assert_int_equal(client_with(f, "expired", &s, out, sizeof(out)), TLS_FAIL_EXPIRED);
        issue_to(f->ca, f->tmp, "justexpired", CLIENT_ID, -7200, -60);
        assert_int_equal(client_with(f, "justexpired", &s, out, sizeof(out)), TLS_OK);
        issue_to(f->ca, f->tmp, "future", CLIENT_ID, 3600, 7200);
        assert_int_equal(client_with(f, "future", &s, out, sizeof(out)), TLS_FAIL_NOT_YET_VALID);

        /* No SPIFFE URI: a certificate made by the real openssl with the mesh CA. */
        char csr[600], key[600], crt[600], ext[600];
        tu_path(csr, sizeof(csr), f->tmp, "nouri.csr");
        tu_path(key, sizeof(key), f->tmp, "nouri-key.pem");
        tu_path(crt, sizeof(crt), f->tmp, "nouri.pem");
        tu_path(ext, sizeof(ext), f->tmp, "nouri.ext");
        FILE *fp = fopen(ext, "w");
        fputs("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
              "subjectAltName=DNS:legacy.default.svc.cluster.local\n",
              fp);
        fclose(fp);
        char *req[] = {"openssl",
                       "req",
                       "-new",
                       "-newkey",
                       "ec",
                       "-pkeyopt",
                       "ec_paramgen_curve:prime256v1",
                       "-nodes",
                       "-keyout",
                       key,
                       "-out",
                       csr,
                       "-subj",
                       "/CN=spiffe:\\/\\/cluster.local\\/ns\\/default\\/sa\\/client",
                       NULL};
        assert_int_equal(tu_run(req, NULL, out, sizeof(out), 10000), 0);
        char *sign[] = {"openssl", "x509",     "-req",   "-in",         csr,    "-CA",
                        f->cafile, "-CAkey",   f->cakey, "-set_serial", "4660", "-days",
                        "1",       "-extfile", ext,      "-out",        crt,    NULL};
        assert_int_equal(tu_run(sign, NULL, out, sizeof(out), 10000), 0);
        assert_int_equal(
            s_client(f, f->st, crt, key, NULL, "-tls1_3", "port-8080." TD, &s, out, sizeof(out)),
            TLS_FAIL_NO_SPIFFE_ID); /* the CN holds a SPIFFE ID: no CN fallback */

        /* TLS 1.2 is refused. */
        char gc[600], gk[600];
        snprintf(gc, sizeof(gc), "%s/good.pem", f->tmp);
        snprintf(gk, sizeof(gk), "%s/good-key.pem", f->tmp);
        assert_int_equal(
            s_client(f, f->st, gc, gk, NULL, "-tls1_2", "port-8080." TD, &s, out, sizeof(out)),
            TLS_FAIL_PROTOCOL_VERSION);
        /* No destination port in the server name. */
        assert_int_equal(s_client(f, f->st, gc, gk, NULL, "-tls1_3", NULL, &s, out, sizeof(out)),
                         TLS_FAIL_NO_DESTINATION);
        assert_int_equal(
            s_client(f, f->st, gc, gk, NULL, "-tls1_3", "www.example.com", &s, out, sizeof(out)),
            TLS_FAIL_NO_DESTINATION);

        /* An allow rule for port 8080: another identity is refused there, not on 9090. */
        char aerr[256];
        srv_authz = authz_new(NULL);
        assert_int_equal(authz_add_allow(srv_authz, 8080,
                                         "spiffe://cluster.local/ns/default/sa/frontend", aerr,
                                         sizeof(aerr)),
                         0);
        assert_int_equal(client_with(f, "good", &s, out, sizeof(out)), TLS_FAIL_NOT_ALLOWED);
        assert_int_equal(
            s_client(f, f->st, gc, gk, NULL, "-tls1_3", "port-9090." TD, &s, out, sizeof(out)),
            TLS_OK);
        assert_int_equal(s.dst_port, 9090);
        authz_unref(srv_authz);
        /* A deny rule for the client's namespace on every port. */
        srv_authz = authz_new(NULL);
        cJSON *pol = cJSON_Parse("{\"name\":\"no-default\",\"ports\":[\"*\"],"
                                 "\"deny\":[{\"namespace\":\"default\"}]}");
        assert_int_equal(authz_add_policy(srv_authz, pol, "file", NULL, NULL, aerr, sizeof(aerr)),
                         0);
        cJSON_Delete(pol);
        assert_int_equal(client_with(f, "good", &s, out, sizeof(out)), TLS_FAIL_DENIED_BY_POLICY);
        authz_unref(srv_authz);
        srv_authz = NULL;
        assert_int_equal(client_with(f, "good", &s, out, sizeof(out)), TLS_OK);

        /* Every refusal is counted by reason. */
        struct tls_store_counts c;
        tls_store_counts(f->st, &c);
        assert_int_equal(c.handshakes_ok[0], 4);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_NO_CERTIFICATE], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_UNTRUSTED_CA], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_WRONG_TRUST_DOMAIN], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_EXPIRED], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_NOT_YET_VALID], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_NO_SPIFFE_ID], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_PROTOCOL_VERSION], 1);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_NO_DESTINATION], 2);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_NOT_ALLOWED], 1);
        struct strbuf sb;
        strbuf_init(&sb);
        tls_store_render_metrics(f->st, &sb);
        assert_non_null(strstr(
            sb.data,
            "shunt_tls_handshake_failures_total{direction=\"inbound\",reason=\"expired\"} 1\n"));
        assert_non_null(strstr(sb.data, "shunt_tls_handshakes_total{direction=\"inbound\"} 4\n"));
        strbuf_free(&sb);
}

/* ---- our client against openssl s_server ------------------------------------ */

/* Connects (retrying while s_server starts), handshakes, sends "abc\n" and
 * expects it reversed (s_server -rev). */
static enum tls_fail client_run(struct tls_store *st, uint16_t port, const char *expected,
                                char *peer_serial, size_t len)
{
        int fd = -1;
        for (int i = 0; i < 100 && fd < 0; i++) {
                fd = tu_connect(port, true);
                if (fd < 0)
                        tu_sleep_ms(50);
        }
        assert_true(fd >= 0);
        struct tls_snapshot *snap = tls_store_acquire(st);
        struct tls_conn *c;
        assert_int_equal(tls_conn_client_new(snap, fd, 7, expected, 8080, &c), 0);
        tls_snapshot_unref(snap);
        int rc;
        uint64_t deadline = tu_now_ms() + 5000;
        while ((rc = tls_conn_handshake(c)) == -EAGAIN && tu_now_ms() < deadline)
                wait_fd(fd, tls_conn_want(c) == TLS_WANT_WRITE ? POLLOUT : POLLIN, 100);
        enum tls_fail res = tls_conn_fail(c);
        if (rc == 0) {
                assert_int_equal(tls_conn_write(c, "abc\n", 4), 4);
                char buf[256] = "";
                size_t got = 0;
                while (got < 4 && tu_now_ms() < deadline) {
                        ssize_t n = tls_conn_read(c, buf + got, sizeof(buf) - 1 - got);
                        if (n == -EAGAIN) {
                                wait_fd(fd, POLLIN, 100);
                                continue;
                        }
                        assert_true(n > 0);
                        got += (size_t)n;
                }
                buf[got] = 0;
                assert_non_null(strstr(buf, "cba"));
                assert_string_equal(tls_conn_peer_id(c), SERVER_ID);
        }
        if (peer_serial)
                snprintf(peer_serial, len, "%s", tls_conn_peer_serial(c));
        tls_conn_free(c);
        close(fd);
        return res;
}

static void test_client_vs_s_server(void **state)
{
        struct fix *f = *state;
        issue_to(f->ca, f->tmp, "srv", SERVER_ID, -60, 3600);
        char cert[600], key[600];
        snprintf(cert, sizeof(cert), "%s/srv.pem", f->tmp);
        snprintf(key, sizeof(key), "%s/srv-key.pem", f->tmp);
        /* -Verify 1: s_server requires and checks our client certificate. */
        char *args[] = {"-tls1_3", "-cert",   cert,      "-key", key,
                        "-CAfile", f->cafile, "-Verify", "1",    "-verify_return_error",
                        "-rev",    NULL};
        uint16_t port;
        int out;
        pid_t pid = tu_s_server(args, NULL, &port, &out);
        assert_int_not_equal(port, 0);
        assert_int_equal(client_run(f->st, port, SERVER_ID, NULL, 0), TLS_OK);
        assert_int_equal(
            client_run(f->st, port, "spiffe://cluster.local/ns/default/sa/other", NULL, 0),
            TLS_FAIL_WRONG_IDENTITY);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        close(out);

        /* A server from another CA. */
        char odir[600];
        tu_path(odir, sizeof(odir), f->tmp, "otherca2");
        struct tls_ca_options oo = {.state_dir = odir};
        struct tls_ca *other;
        assert_int_equal(tls_ca_open(&oo, &other), 0);
        issue_to(other, f->tmp, "srv2", SERVER_ID, -60, 3600);
        tls_ca_free(other);
        snprintf(cert, sizeof(cert), "%s/srv2.pem", f->tmp);
        snprintf(key, sizeof(key), "%s/srv2-key.pem", f->tmp);
        pid = tu_s_server(args, NULL, &port, &out);
        assert_int_not_equal(port, 0);
        assert_int_equal(client_run(f->st, port, SERVER_ID, NULL, 0), TLS_FAIL_UNTRUSTED_CA);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        close(out);
        struct tls_store_counts c;
        tls_store_counts(f->st, &c);
        assert_int_equal(c.handshakes_ok[1], 1);
        assert_int_equal(c.handshake_fail[1][TLS_FAIL_WRONG_IDENTITY], 1);
        assert_int_equal(c.handshake_fail[1][TLS_FAIL_UNTRUSTED_CA], 1);
}

/* ---- rotation while a connection lives ----------------------------------------- */

struct pair {
        int cfd, sfd;
        struct tls_conn *cli, *srv;
};

/* A client of cst against a server of sst. */
static void pair_open2(struct tls_store *sst, struct tls_store *cst, const char *expected,
                       struct pair *p)
{
        uint16_t port;
        int lfd = tu_listen(&port);
        p->cfd = tu_connect(port, true);
        assert_true(p->cfd >= 0);
        p->sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        assert_true(p->sfd >= 0);
        close(lfd);
        struct tls_snapshot *snap = tls_store_acquire(sst);
        assert_int_equal(tls_conn_server_new(snap, p->sfd, 1, &p->srv), 0);
        tls_snapshot_unref(snap);
        snap = tls_store_acquire(cst);
        assert_int_equal(tls_conn_client_new(snap, p->cfd, 2, expected, 8080, &p->cli), 0);
        tls_snapshot_unref(snap);
        int rc_c = -EAGAIN, rc_s = -EAGAIN;
        uint64_t deadline = tu_now_ms() + 5000;
        while ((rc_c == -EAGAIN || rc_s == -EAGAIN) && tu_now_ms() < deadline) {
                if (rc_c == -EAGAIN)
                        rc_c = tls_conn_handshake(p->cli);
                if (rc_s == -EAGAIN)
                        rc_s = tls_conn_handshake(p->srv);
                struct pollfd pf[2] = {{.fd = p->cfd, .events = POLLIN},
                                       {.fd = p->sfd, .events = POLLIN}};
                if (rc_c == -EAGAIN || rc_s == -EAGAIN)
                        poll(pf, 2, 20);
        }
        assert_int_equal(rc_c, 0);
        assert_int_equal(rc_s, 0);
}

static void pair_open(struct tls_store *st, const char *expected, struct pair *p)
{
        pair_open2(st, st, expected, p);
}

static void pair_close(struct pair *p)
{
        tls_conn_free(p->cli);
        tls_conn_free(p->srv);
        close(p->cfd);
        close(p->sfd);
}

/* Sends len bytes from a to b and checks they arrive unchanged. */
static void transfer(struct tls_conn *a, int afd, struct tls_conn *b, int bfd, uint32_t seq)
{
        unsigned char out[2048], in[2048];
        for (size_t i = 0; i < sizeof(out); i++)
                out[i] = (unsigned char)(seq * 31 + i);
        size_t sent = 0, got = 0;
        uint64_t deadline = tu_now_ms() + 5000;
        while (got < sizeof(in) && tu_now_ms() < deadline) {
                if (sent < sizeof(out)) {
                        ssize_t w = tls_conn_write(a, out + sent, sizeof(out) - sent);
                        if (w > 0)
                                sent += (size_t)w;
                        else
                                assert_int_equal(w, -EAGAIN);
                }
                ssize_t r = tls_conn_read(b, in + got, sizeof(in) - got);
                if (r > 0) {
                        got += (size_t)r;
                        continue;
                }
                assert_int_equal(r, -EAGAIN);
                struct pollfd pf[2] = {{.fd = afd, .events = POLLOUT},
                                       {.fd = bfd, .events = POLLIN}};
                poll(pf, 2, 20);
        }
        assert_int_equal(got, sizeof(in));
        assert_memory_equal(in, out, sizeof(out));
}

/* A write the kernel answers with EPIPE returns -EPIPE; it never raises
 * SIGPIPE (main() leaves SIGPIPE at its default disposition, which would
 * kill us). Shutting our own side for writing makes the EPIPE certain. */
static void test_write_epipe_no_sigpipe(void **state)
{
        struct fix *f = *state;
        struct pair p;
        pair_open(f->st, SERVER_ID, &p);
        transfer(p.cli, p.cfd, p.srv, p.sfd, 1);
        assert_int_equal(shutdown(p.cfd, SHUT_WR), 0);
        char buf[512] = {0};
        assert_int_equal(tls_conn_write(p.cli, buf, sizeof(buf)), -EPIPE);
        pair_close(&p);
}

static void test_rotation_keeps_connections(void **state)
{
        struct fix *f = *state;
        const char *id = "spiffe://cluster.local/ns/default/sa/rot";
        /* 3 s lifetime: rotation after 2 s. */
        struct tls_store *st = store_new(f->cadir, id, 3, NULL);
        struct pair longp;
        pair_open(st, id, &longp);
        char first[80];
        snprintf(first, sizeof(first), "%s", tls_conn_peer_serial(longp.cli));
        char serials[8][80];
        int nser = 0;
        uint64_t start = tu_now_ms();
        uint32_t seq = 0;
        uint64_t next_new = start;
        /* ~4.5 s: past the first rotation (2 s) and the second (4 s); the long
         * connection's certificate even expires (3 s) while it keeps going. */
        while (tu_now_ms() - start < 4500) {
                tls_store_tick(st);
                transfer(longp.cli, longp.cfd, longp.srv, longp.sfd, seq++);
                transfer(longp.srv, longp.sfd, longp.cli, longp.cfd, seq++);
                if (tu_now_ms() >= next_new && nser < 8) {
                        struct pair p;
                        pair_open(st, id, &p);
                        transfer(p.cli, p.cfd, p.srv, p.sfd, seq++);
                        snprintf(serials[nser++], 80, "%s", tls_conn_peer_serial(p.cli));
                        pair_close(&p);
                        next_new += 700;
                }
                tu_sleep_ms(50);
        }
        /* New handshakes presented new serials; the long connection lived on. */
        assert_true(nser >= 3);
        assert_string_equal(serials[0], first);
        struct pair last;
        pair_open(st, id, &last);
        assert_string_not_equal(tls_conn_peer_serial(last.cli), first);
        assert_string_equal(tls_conn_peer_serial(last.cli),
                            tls_snapshot_serial(tls_conn_snapshot(last.srv)));
        pair_close(&last);
        int distinct = 1;
        for (int i = 1; i < nser; i++)
                if (strcmp(serials[i], serials[i - 1]) != 0)
                        distinct++;
        assert_true(distinct >= 2);
        struct tls_store_counts c;
        tls_store_counts(st, &c);
        assert_true(c.rotations >= 1);
        assert_int_equal(c.rotation_failures, 0);
        assert_true(c.draining);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_HANDSHAKE_ERROR], 0);
        transfer(longp.cli, longp.cfd, longp.srv, longp.sfd, seq++);
        struct strbuf sb;
        strbuf_init(&sb);
        tls_store_render_json(st, &sb, NULL);
        assert_non_null(strstr(sb.data, "\"previous\":{\"identity\":"));
        strbuf_free(&sb);
        /* The long connection still holds its original snapshot. */
        assert_string_equal(tls_snapshot_serial(tls_conn_snapshot(longp.srv)), first);
        assert_int_equal(tls_snapshot_conns(tls_conn_snapshot(longp.srv)), 2);
        pair_close(&longp);
        tls_store_free(st);
}

/* ---- CA rotation with overlap ---------------------------------------------------- */

static void test_ca_overlap(void **state)
{
        struct fix *f = *state;
        /* The new CA; the old one (f->ca) stays trusted through the extra bundle. */
        char newdir[600], newca[600], both[600];
        tu_path(newdir, sizeof(newdir), f->tmp, "newca");
        tu_path(newca, sizeof(newca), newdir, "ca.pem");
        tu_path(both, sizeof(both), f->tmp, "both.pem");
        struct tls_store *st = store_new(newdir, SERVER_ID, 3600, f->cafile);
        struct tls_ca_options o = {.state_dir = newdir};
        struct tls_ca *nca;
        assert_int_equal(tls_ca_open(&o, &nca), 0);
        X509 *roots[2] = {tls_ca_cert(f->ca), tls_ca_cert(nca)};
        tu_write_certs(both, roots, 2);
        issue_to(f->ca, f->tmp, "oldpeer", CLIENT_ID, -60, 3600);
        issue_to(nca, f->tmp, "newpeer", CLIENT_ID, -60, 3600);
        char c1[600], k1[600], c2[600], k2[600], out[4096];
        snprintf(c1, sizeof(c1), "%s/oldpeer.pem", f->tmp);
        snprintf(k1, sizeof(k1), "%s/oldpeer-key.pem", f->tmp);
        snprintf(c2, sizeof(c2), "%s/newpeer.pem", f->tmp);
        snprintf(k2, sizeof(k2), "%s/newpeer-key.pem", f->tmp);
        struct srv s;
        assert_int_equal(
            s_client(f, st, c1, k1, both, "-tls1_3", "port-80." TD, &s, out, sizeof(out)), TLS_OK);
        assert_int_equal(
            s_client(f, st, c2, k2, both, "-tls1_3", "port-80." TD, &s, out, sizeof(out)), TLS_OK);
        struct strbuf sb;
        strbuf_init(&sb);
        tls_store_render_json(st, &sb, NULL);
        /* Two CAs in the trust bundle. */
        const char *tb = strstr(sb.data, "\"trust_bundle\":[");
        assert_non_null(tb);
        assert_non_null(strstr(tb, "},{\"serial\":"));
        strbuf_free(&sb);
        tls_store_free(st);
        /* After the overlap (old CA dropped): old peers are refused. */
        st = store_new(newdir, SERVER_ID, 3600, NULL);
        assert_int_equal(
            s_client(f, st, c1, k1, both, "-tls1_3", "port-80." TD, &s, out, sizeof(out)),
            TLS_FAIL_UNTRUSTED_CA);
        assert_int_equal(
            s_client(f, st, c2, k2, newca, "-tls1_3", "port-80." TD, &s, out, sizeof(out)), TLS_OK);
        tls_store_free(st);
        tls_ca_free(nca);
}

/* ---- bad input --------------------------------------------------------------------- */

/* A real ClientHello from our client, captured over a socketpair. */
static size_t client_hello(struct tls_store *st, unsigned char *buf, size_t len)
{
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        struct tls_snapshot *snap = tls_store_acquire(st);
        struct tls_conn *c;
        assert_int_equal(tls_conn_client_new(snap, sv[0], 3, SERVER_ID, 8080, &c), 0);
        tls_snapshot_unref(snap);
        assert_int_equal(tls_conn_handshake(c), -EAGAIN);
        ssize_t n = read(sv[1], buf, len);
        assert_true(n > 100);
        assert_int_equal(buf[0], 0x16); /* handshake record */
        tls_conn_free(c);
        close(sv[0]);
        close(sv[1]);
        return (size_t)n;
}

static void test_bad_input(void **state)
{
        struct fix *f = *state;
        unsigned char hello[4096];
        size_t hl = client_hello(f->st, hello, sizeof(hello));
        struct srv s;
        int fd;

        /* Random bytes. */
        srv_start(&s, f->st, 2000);
        fd = tu_connect(s.port, false);
        unsigned char junk[600];
        RAND_bytes(junk, sizeof(junk));
        junk[0] = 0x17; /* not a handshake record either way */
        assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        srv_join(&s);
        close(fd);
        assert_int_equal(s.fail, TLS_FAIL_HANDSHAKE_ERROR);

        /* Truncated ClientHello, then the client goes away. */
        srv_start(&s, f->st, 2000);
        fd = tu_connect(s.port, false);
        assert_int_equal(write(fd, hello, hl / 2), (ssize_t)(hl / 2));
        shutdown(fd, SHUT_WR);
        srv_join(&s);
        close(fd);
        assert_int_equal(s.fail, TLS_FAIL_HANDSHAKE_ERROR);

        /* Slow handshake: a few bytes, then nothing: the caller's timeout. */
        srv_start(&s, f->st, 300);
        fd = tu_connect(s.port, false);
        assert_int_equal(write(fd, hello, 7), 7);
        srv_join(&s);
        close(fd);
        assert_int_equal(s.fail, TLS_FAIL_HANDSHAKE_TIMEOUT);

        /* A plaintext HTTP request. */
        srv_start(&s, f->st, 2000);
        fd = tu_connect(s.port, false);
        const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_int_equal(write(fd, http, strlen(http)), (ssize_t)strlen(http));
        srv_join(&s);
        close(fd);
        assert_int_equal(s.fail, TLS_FAIL_HANDSHAKE_ERROR);

        /* Nothing else affected: a mesh client still gets through. */
        issue_to(f->ca, f->tmp, "good", CLIENT_ID, -60, 3600);
        char out[4096];
        assert_int_equal(client_with(f, "good", &s, out, sizeof(out)), TLS_OK);
        assert_true(s.echoed);
        struct tls_store_counts c;
        tls_store_counts(f->st, &c);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_HANDSHAKE_ERROR], 3);
        assert_int_equal(c.handshake_fail[0][TLS_FAIL_HANDSHAKE_TIMEOUT], 1);
        assert_int_equal(c.handshakes_ok[0], 1);
}

/* TLS 1.3: the client finishes first; the server's refusal arrives as an
 * alert on the client's first read. */
static void test_refusal_reaches_client(void **state)
{
        struct fix *f = *state;
        const char *id = "spiffe://cluster.local/ns/default/sa/rot";
        struct tls_store *st = store_new(f->cadir, id, 3600, NULL);
        struct authz *az = authz_new(NULL);
        char aerr[256];
        assert_int_equal(authz_add_allow(az, 0, "spiffe://cluster.local/ns/default/sa/someone",
                                         aerr, sizeof(aerr)),
                         0);
        uint16_t port;
        int lfd = tu_listen(&port);
        int cfd = tu_connect(port, true);
        int sfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        close(lfd);
        struct tls_snapshot *snap = tls_store_acquire(st);
        struct tls_conn *cli, *srv;
        assert_int_equal(tls_conn_server_new(snap, sfd, 1, &srv), 0);
        tls_conn_set_authz(srv, az);
        authz_unref(az); /* the connection holds its own reference */
        assert_int_equal(tls_conn_client_new(snap, cfd, 2, id, 443, &cli), 0);
        tls_snapshot_unref(snap);
        int rc_c = -EAGAIN, rc_s = -EAGAIN;
        uint64_t deadline = tu_now_ms() + 5000;
        while ((rc_c == -EAGAIN || rc_s == -EAGAIN) && tu_now_ms() < deadline) {
                if (rc_c == -EAGAIN)
                        rc_c = tls_conn_handshake(cli);
                if (rc_s == -EAGAIN)
                        rc_s = tls_conn_handshake(srv);
                struct pollfd pf[2] = {{.fd = cfd, .events = POLLIN},
                                       {.fd = sfd, .events = POLLIN}};
                poll(pf, 2, 20);
        }
        assert_int_equal(rc_c, 0);
        assert_int_equal(rc_s, -EPROTO);
        assert_int_equal(tls_conn_fail(srv), TLS_FAIL_NOT_ALLOWED);
        assert_int_equal(tls_conn_dst_port(srv), 443);
        ssize_t n = -EAGAIN;
        char buf[64];
        while (n == -EAGAIN && tu_now_ms() < deadline) {
                n = tls_conn_read(cli, buf, sizeof(buf));
                if (n == -EAGAIN)
                        wait_fd(cfd, POLLIN, 50);
        }
        assert_int_equal(n, -EPROTO);
        assert_int_equal(tls_conn_fail(cli), TLS_FAIL_PEER_ALERT);
        assert_non_null(strstr(tls_conn_fail_detail(cli), "access denied"));
        struct tls_store_counts c;
        tls_store_counts(st, &c);
        assert_int_equal(c.handshake_fail[1][TLS_FAIL_PEER_ALERT], 1);
        assert_int_equal(c.handshakes_ok[1], 1);
        tls_conn_free(cli);
        tls_conn_free(srv);
        close(cfd);
        close(sfd);
        tls_store_free(st);
}

static void stop_loop(struct loop *loop, struct loop_timer *t)
{
        loop_stop(loop);
}

/* tls_store_start drives rotation from the main loop's timer. */
static void test_store_on_loop(void **state)
{
        struct fix *f = *state;
        struct tls_store *st = store_new(f->cadir, SERVER_ID, 3, NULL);
        struct loop *loop = loop_new();
        assert_non_null(loop);
        assert_int_equal(tls_store_start(st, loop), 0);
        struct loop_timer stop;
        loop_timer_init(&stop, stop_loop, NULL);
        assert_int_equal(loop_timer_arm(loop, &stop, 3500), 0);
        assert_int_equal(loop_run(loop), 0);
        struct tls_store_counts c;
        tls_store_counts(st, &c);
        assert_true(c.rotations >= 1);
        tls_store_free(st);
        loop_free(loop);
}

/* ---- trust-domain federation ------------------------------------------------- */

#define OTD          "other.example"
#define OTHER_CLIENT "spiffe://other.example/ns/default/sa/client"
#define OTHER_SERVER "spiffe://other.example/ns/default/sa/server"

static X509 *ca_cert_of(const char *dir)
{
        char p[700];
        tu_path(p, sizeof(p), dir, "ca.pem");
        STACK_OF(X509) * sk;
        assert_int_equal(tls_pem_read_certs(p, &sk), 0);
        X509 *x = sk_X509_shift(sk);
        sk_X509_pop_free(sk, X509_free);
        return x;
}

/* Replaces path (rename, as a ConfigMap mount does) with text. */
static void replace_file(const char *path, const char *text)
{
        char tmp[700];
        snprintf(tmp, sizeof(tmp), "%s.new", path);
        FILE *fp = fopen(tmp, "w");
        assert_non_null(fp);
        fputs(text, fp);
        fclose(fp);
        assert_int_equal(rename(tmp, path), 0);
}

/* The SPIFFE bundle format: a JWK set, each CA an x509-svid key with x5c;
 * a jwt-svid key beside them is skipped. */
static void write_spiffe_bundle(const char *path, X509 *const *cas, size_t n)
{
        struct strbuf sb;
        strbuf_init(&sb);
        strbuf_append(&sb, "{\"spiffe_sequence\":2,\"spiffe_refresh_hint\":300,\"keys\":["
                           "{\"use\":\"jwt-svid\",\"kid\":\"k1\",\"kty\":\"EC\",\"crv\":\"P-256\","
                           "\"x\":\"AA\",\"y\":\"AA\"}");
        for (size_t i = 0; i < n; i++) {
                uint8_t *der = NULL;
                int dl = i2d_X509(cas[i], &der);
                assert_true(dl > 0);
                size_t bl;
                assert_true(EVP_EncodedLength(&bl, (size_t)dl));
                char *b64 = malloc(bl);
                EVP_EncodeBlock((uint8_t *)b64, der, (size_t)dl);
                strbuf_appendf(&sb, ",{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"%s\"]}",
                               b64);
                free(b64);
                OPENSSL_free(der);
        }
        strbuf_append(&sb, "]}\n");
        replace_file(path, sb.data);
        strbuf_free(&sb);
}

static enum tls_fail fed_client(struct fix *f, struct tls_store *st, const char *name,
                                struct srv *s)
{
        char cert[600], key[600], out[8192];
        snprintf(cert, sizeof(cert), "%s/%s.pem", f->tmp, name);
        snprintf(key, sizeof(key), "%s/%s-key.pem", f->tmp, name);
        return s_client(f, st, cert, key, NULL, "-tls1_3", "port-8080." TD, s, out, sizeof(out));
}

static bool has_line(struct tls_federation *fed, const char *line)
{
        struct strbuf sb;
        strbuf_init(&sb);
        tls_federation_render_metrics(fed, &sb);
        bool ok = sb.data && strstr(sb.data, line);
        if (!ok)
                fprintf(stderr, "no \"%s\" in:\n%s", line, sb.data ? sb.data : "");
        strbuf_free(&sb);
        return ok;
}

/* A peer of a federated domain is verified against that domain's bundle
 * only: real s_client peers with certificates of two CAs, crafted to claim
 * the other's domain; rotation of the federated root with overlap (SPIFFE
 * bundle format); a bad new file keeps the old bundle; our client against a
 * server of the other domain; policies naming the other domain. */
static void test_federation(void **state)
{
        struct fix *f = *state;
        char cab[600], cac[600], bundle[600], json[1400], err[600];
        tu_path(cab, sizeof(cab), f->tmp, "ca-b");
        tu_path(cac, sizeof(cac), f->tmp, "ca-c");
        tu_path(bundle, sizeof(bundle), f->tmp, "other-bundle.pem");
        struct tls_ca_options bo = {.state_dir = cab}, co = {.state_dir = cac};
        struct tls_ca *b, *c;
        assert_int_equal(tls_ca_open(&bo, &b), 0);
        assert_int_equal(tls_ca_open(&co, &c), 0);
        X509 *bca = ca_cert_of(cab), *cca = ca_cert_of(cac);
        tu_write_certs(bundle, &bca, 1); /* PEM first */
        snprintf(json, sizeof(json), "[{\"trust_domain\":\"" OTD "\",\"bundle_file\":\"%s\"}]",
                 bundle);
        struct tls_federation *fed;
        assert_int_equal(tls_federation_new(TD, json, &fed, err, sizeof(err)), 0);
        assert_int_equal(tls_federation_count(fed), 1);
        struct tls_store *st = store_new_fed(f->cadir, TD, SERVER_ID, 3600, NULL, fed);

        issue_to(f->ca, f->tmp, "good", CLIENT_ID, -60, 3600);
        issue_to(b, f->tmp, "fedok", OTHER_CLIENT, -60, 3600);
        issue_to(b, f->tmp, "claims-a", CLIENT_ID, -60, 3600);        /* SAN ours, B's CA */
        issue_to(f->ca, f->tmp, "claims-b", OTHER_CLIENT, -60, 3600); /* SAN B's, our CA */
        issue_to(b, f->tmp, "third-b", "spiffe://third.example/ns/default/sa/client", -60, 3600);
        issue_to(f->ca, f->tmp, "third-a", "spiffe://third.example/ns/default/sa/client", -60,
                 3600);
        issue_to(c, f->tmp, "fedc", OTHER_CLIENT, -60, 3600);

        struct srv s;
        assert_int_equal(fed_client(f, st, "good", &s), TLS_OK);
        assert_int_equal(fed_client(f, st, "fedok", &s), TLS_OK);
        assert_string_equal(s.peer_id, OTHER_CLIENT);
        assert_true(s.echoed);
        /* A chain to B's CA is never accepted as our domain, nor ours as B. */
        assert_int_equal(fed_client(f, st, "claims-a", &s), TLS_FAIL_WRONG_DOMAIN_CHAIN);
        assert_string_equal(s.peer_id, CLIENT_ID);
        assert_int_equal(fed_client(f, st, "claims-b", &s), TLS_FAIL_WRONG_DOMAIN_CHAIN);
        /* A domain neither ours nor federated: checked against our bundle. */
        assert_int_equal(fed_client(f, st, "third-b", &s), TLS_FAIL_UNTRUSTED_CA);
        assert_int_equal(fed_client(f, st, "third-a", &s), TLS_FAIL_WRONG_TRUST_DOMAIN);
        /* C is not in the bundle yet. */
        assert_int_equal(fed_client(f, st, "fedc", &s), TLS_FAIL_UNTRUSTED_CA);

        /* Policies naming identities of the other domain. */
        char aerr[256];
        srv_authz = authz_new(NULL);
        cJSON *pol = cJSON_Parse("{\"name\":\"fed\",\"ports\":[8080],"
                                 "\"allow\":[{\"identity\":\"" OTHER_CLIENT "\"}]}");
        assert_int_equal(authz_add_policy(srv_authz, pol, "file", NULL, NULL, aerr, sizeof(aerr)),
                         0);
        cJSON_Delete(pol);
        assert_int_equal(fed_client(f, st, "fedok", &s), TLS_OK);
        assert_int_equal(fed_client(f, st, "good", &s), TLS_FAIL_NOT_ALLOWED);
        authz_unref(srv_authz);
        srv_authz = authz_new(NULL);
        pol = cJSON_Parse("{\"name\":\"fed-ns\",\"ports\":[\"*\"],"
                          "\"allow\":[{\"trust_domain\":\"" OTD "\",\"namespace\":\"default\"}]}");
        assert_int_equal(authz_add_policy(srv_authz, pol, "file", NULL, NULL, aerr, sizeof(aerr)),
                         0);
        cJSON_Delete(pol);
        assert_int_equal(fed_client(f, st, "fedok", &s), TLS_OK);
        assert_int_equal(fed_client(f, st, "good", &s), TLS_FAIL_NOT_ALLOWED);
        authz_unref(srv_authz);
        srv_authz = NULL;

        struct tls_store_counts cnt;
        tls_store_counts(st, &cnt);
        assert_int_equal(cnt.handshake_fail[0][TLS_FAIL_WRONG_DOMAIN_CHAIN], 2);
        struct strbuf sb;
        strbuf_init(&sb);
        tls_store_render_metrics(st, &sb);
        assert_non_null(strstr(sb.data, "shunt_tls_handshake_failures_total{direction=\"inbound\","
                                        "reason=\"wrong_domain_chain\"} 2\n"));
        strbuf_free(&sb);
        /* fedok 3 times, good/claims-a are ours; claims-b and fedc refused. */
        assert_true(has_line(fed, "shunt_tls_federation_handshakes_total{trust_domain=\"" OTD
                                  "\",direction=\"inbound\",result=\"ok\"} 3\n"));
        assert_true(has_line(fed, "shunt_tls_federation_handshakes_total{trust_domain=\"" OTD
                                  "\",direction=\"inbound\",result=\"refused\"} 2\n"));

        /* B's root rotates to C with overlap, in the SPIFFE bundle format. */
        X509 *both[2] = {bca, cca};
        write_spiffe_bundle(bundle, both, 2);
        tls_federation_tick(fed);
        assert_true(has_line(fed, "shunt_tls_federation_bundle_reloads_total{trust_domain=\"" OTD
                                  "\",result=\"ok\"} 1\n"));
        assert_int_equal(fed_client(f, st, "fedc", &s), TLS_OK);
        assert_int_equal(fed_client(f, st, "fedok", &s), TLS_OK);
        /* The end of the overlap: B's certificates are no longer accepted. */
        write_spiffe_bundle(bundle, &cca, 1);
        tls_federation_tick(fed);
        assert_int_equal(fed_client(f, st, "fedok", &s), TLS_FAIL_UNTRUSTED_CA);
        assert_int_equal(fed_client(f, st, "fedc", &s), TLS_OK);
        /* A broken new version is refused; C's bundle stays. */
        replace_file(bundle, "{\"keys\": [{\"use\": \"x509-svid\", \"x5c\": [\"!!\"]}]}");
        tls_federation_tick(fed);
        assert_true(has_line(fed, "shunt_tls_federation_bundle_reloads_total{trust_domain=\"" OTD
                                  "\",result=\"error\"} 1\n"));
        assert_int_equal(fed_client(f, st, "fedc", &s), TLS_OK);
        strbuf_init(&sb);
        tls_federation_render_json(fed, &sb);
        assert_non_null(strstr(sb.data, "\"format\":\"spiffe\""));
        assert_non_null(strstr(sb.data, "x5c is not base64"));
        strbuf_free(&sb);

        /* Our client against a server of the other domain (C's CA, which
         * federates our domain in turn): verified against C's bundle. */
        char ourca[700], json2[2000];
        tu_path(ourca, sizeof(ourca), f->cadir, "ca.pem");
        snprintf(json2, sizeof(json2), "[{\"trust_domain\":\"" TD "\",\"bundle_file\":\"%s\"}]",
                 ourca);
        struct tls_federation *fed2;
        assert_int_equal(tls_federation_new(OTD, json2, &fed2, err, sizeof(err)), 0);
        struct tls_store *other = store_new_fed(cac, OTD, OTHER_SERVER, 3600, NULL, fed2);
        struct pair p;
        pair_open2(other, st, OTHER_SERVER, &p);
        assert_string_equal(tls_conn_peer_id(p.cli), OTHER_SERVER);
        assert_string_equal(tls_conn_peer_id(p.srv), SERVER_ID);
        transfer(p.cli, p.cfd, p.srv, p.sfd, 3);
        pair_close(&p);
        assert_true(has_line(fed, "shunt_tls_federation_handshakes_total{trust_domain=\"" OTD
                                  "\",direction=\"outbound\",result=\"ok\"} 1\n"));
        tls_store_free(other);
        tls_federation_free(fed2);

        /* Configuration errors: one sentence each. */
        struct tls_federation *bad = NULL;
        const struct {
                const char *json, *want;
        } cases[] = {
            {"{}", "expected a JSON array"},
            {"[{\"trust_domain\":\"" TD "\",\"bundle_file\":\"/x\"}]", "our own"},
            {"[{\"trust_domain\":\"Bad Domain\",\"bundle_file\":\"/x\"}]", "not valid"},
            {"[{\"trust_domain\":\"x.org\"}]", "expected {"},
            {"[{\"trust_domain\":\"x.org\",\"bundle_file\":\"/x\",\"url\":1}]", "unknown field"},
            {"[{\"trust_domain\":\"x.org\",\"bundle_file\":\"/nonexistent/b.pem\"}]",
             "/nonexistent/b.pem"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                err[0] = 0;
                assert_true(tls_federation_new(TD, cases[i].json, &bad, err, sizeof(err)) < 0);
                if (!strstr(err, cases[i].want))
                        fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
        }
        /* Twice the same domain; a leaf instead of a CA. */
        snprintf(json2, sizeof(json2),
                 "[{\"trust_domain\":\"x.org\",\"bundle_file\":\"%s\"},"
                 "{\"trust_domain\":\"x.org\",\"bundle_file\":\"%s\"}]",
                 ourca, ourca);
        assert_true(tls_federation_new(TD, json2, &bad, err, sizeof(err)) < 0);
        assert_non_null(strstr(err, "given twice"));
        snprintf(json2, sizeof(json2),
                 "[{\"trust_domain\":\"x.org\",\"bundle_file\":\"%s/good.pem\"}]", f->tmp);
        assert_true(tls_federation_new(TD, json2, &bad, err, sizeof(err)) < 0);
        assert_non_null(strstr(err, "not a CA"));

        tls_store_free(st);
        tls_federation_free(fed);
        X509_free(bca);
        X509_free(cca);
        tls_ca_free(b);
        tls_ca_free(c);
}

int main(void)
{
        /* The default disposition, whatever ctest or a shell handed us: a
         * write that raises SIGPIPE must fail this test, not pass by luck. */
        signal(SIGPIPE, SIG_DFL);
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_server_vs_s_client, setup, teardown),
            cmocka_unit_test_setup_teardown(test_client_vs_s_server, setup, teardown),
            cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
            cmocka_unit_test_setup_teardown(test_refusal_reaches_client, setup, teardown),
            cmocka_unit_test_setup_teardown(test_store_on_loop, setup, teardown),
            cmocka_unit_test_setup_teardown(test_ca_overlap, setup, teardown),
            cmocka_unit_test_setup_teardown(test_rotation_keeps_connections, setup, teardown),
            cmocka_unit_test_setup_teardown(test_write_epipe_no_sigpipe, setup, teardown),
            cmocka_unit_test_setup_teardown(test_federation, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

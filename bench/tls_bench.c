// SPDX-License-Identifier: Apache-2.0
/* TLS benchmark helper (bench/tls_bench.sh drives it):
 *
 *   tls_bench issue N KEY_TYPE          N workload certificates from a fresh
 *                                       built-in CA; one JSON line of timings
 *   tls_bench pki DIR                   the mesh CA in DIR/ca (created when
 *                                       missing) and, issued from it,
 *                                       DIR/client{,-key}.pem (a mesh client)
 *                                       and DIR/server{,-key}.pem (for HAProxy)
 *   tls_bench serve ADDR PORT           the application: reads a request,
 *                                       answers one byte, closes
 *   tls_bench handshake ADDR PORT SNI DIR CONNS SECONDS
 *                                       full TLS 1.3 handshakes with the
 *                                       client certificate of DIR, CONNS at a
 *                                       time for SECONDS: connect, handshake,
 *                                       send one byte, wait for the answer
 *                                       (so the server has verified us and
 *                                       reached the application), close. One
 *                                       JSON line: rate, latencies, errors;
 *                                       exit 1 (and one line on stderr) when
 *                                       not one handshake completed.
 *
 * Never run by ctest. Build in release mode for meaningful numbers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench_util.h"
#include "core/log.h"
#include "tls/cert.h"
#include "core/spiffe.h"

#define MAX_CONNS   1024
#define LAT_SAMPLES (1u << 20)

static int die(const char *what)
{
        fprintf(stderr, "tls_bench: %s\n", what);
        return 2;
}

/* ---- issue ---------------------------------------------------------------- */

static int cmd_issue(int argc, char **argv)
{
        if (argc != 2)
                return die("usage: issue N KEY_TYPE");
        long n = strtol(argv[0], NULL, 10);
        enum tls_key_type kt;
        if (n < 1 || n > 1000000 || tls_key_type_parse(argv[1], &kt) < 0)
                return die("issue: N 1..1000000, KEY_TYPE ecdsa-p256 or rsa-2048");
        char dir[] = "/tmp/tls_bench.XXXXXX";
        if (!mkdtemp(dir))
                return die("mkdtemp failed");
        char state[sizeof(dir) + 8];
        snprintf(state, sizeof(state), "%s/ca", dir);
        struct tls_ca_options o = {
            .state_dir = state, .trust_domain = "cluster.local", .key_type = kt};
        struct tls_ca *ca;
        uint64_t t0 = now_ns();
        if (tls_ca_open(&o, &ca) < 0)
                return die("cannot create the CA");
        uint64_t ca_ns = now_ns() - t0;
        uint64_t *lat = calloc((size_t)n, sizeof(*lat));
        if (!lat)
                return die("out of memory");
        time_t now = time(NULL);
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
                char id[128];
                snprintf(id, sizeof(id), "spiffe://cluster.local/ns/bench/sa/w%ld", i);
                struct tls_issue_req req = {
                    .spiffe_id = id,
                    .dns_name = "w.bench.svc.cluster.local",
                    .key_type = kt,
                    .not_before = now - 60,
                    .not_after = now + 86400,
                };
                struct tls_material *m;
                uint64_t s = now_ns();
                if (tls_ca_issue(ca, &req, &m) < 0)
                        return die("issuing failed");
                lat[i] = now_ns() - s;
                tls_material_free(m);
        }
        uint64_t total = now_ns() - t0;
        qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
        printf("{\"key_type\":\"%s\",\"certificates\":%ld,\"total_s\":%.3f,\"per_cert_us\":{"
               "\"mean\":%.1f,\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f},\"ca_create_ms\":%.1f}\n",
               tls_key_type_name(kt), n, total / 1e9, total / 1e3 / (double)n,
               pct(lat, (size_t)n, 0.5) / 1e3, pct(lat, (size_t)n, 0.99) / 1e3, lat[n - 1] / 1e3,
               ca_ns / 1e6);
        free(lat);
        tls_ca_free(ca);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : 1;
}

/* ---- pki ------------------------------------------------------------------ */

static int write_pair(struct tls_ca *ca, const char *dir, const char *name, const char *id,
                      const char *dns)
{
        time_t now = time(NULL);
        struct tls_issue_req req = {.spiffe_id = id,
                                    .dns_name = dns,
                                    .key_type = TLS_KEY_ECDSA_P256,
                                    .not_before = now - 60,
                                    .not_after = now + 7 * 86400};
        struct tls_material *m;
        if (tls_ca_issue(ca, &req, &m) < 0)
                return -1;
        char pem[512], key[512];
        snprintf(pem, sizeof(pem), "%s/%s.pem", dir, name);
        snprintf(key, sizeof(key), "%s/%s-key.pem", dir, name);
        X509 *certs[2] = {m->leaf, tls_ca_cert(ca)};
        int rc =
            tls_pem_write_certs(pem, certs, 1, 0644) < 0 || tls_pem_write_key(key, m->key, 0600) < 0
                ? -1
                : 0;
        tls_material_free(m);
        return rc;
}

static int cmd_pki(int argc, char **argv)
{
        if (argc != 1)
                return die("usage: pki DIR");
        char state[512];
        snprintf(state, sizeof(state), "%s/ca", argv[0]);
        struct tls_ca_options o = {.state_dir = state, .trust_domain = "cluster.local"};
        struct tls_ca *ca;
        if (tls_ca_open(&o, &ca) < 0)
                return die("cannot open the CA");
        int rc =
            write_pair(ca, argv[0], "client", "spiffe://cluster.local/ns/bench/sa/client", NULL);
        if (rc == 0)
                rc = write_pair(ca, argv[0], "server", "spiffe://cluster.local/ns/default/sa/web",
                                "web.default.svc.cluster.local");
        tls_ca_free(ca);
        return rc < 0 ? die("cannot issue or write the certificates") : 0;
}

/* ---- serve ---------------------------------------------------------------- */

static int listen_on(const char *addr, int port)
{
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
                return -1;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0)
                return -1;
        return fd;
}

static int cmd_serve(int argc, char **argv)
{
        if (argc != 2)
                return die("usage: serve ADDR PORT");
        int lfd = listen_on(argv[0], atoi(argv[1]));
        if (lfd < 0)
                return die("cannot listen");
        /* A proxy may reset its side between our read and our write (a
         * round's end cuts its connections off): that write must fail with
         * EPIPE, not kill the application for every round after it. */
        signal(SIGPIPE, SIG_IGN);
        int ep = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
        epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
        printf("READY\n");
        fflush(stdout);
        for (;;) {
                struct epoll_event evs[256];
                int n = epoll_wait(ep, evs, 256, -1);
                for (int i = 0; i < n; i++) {
                        int fd = evs[i].data.fd;
                        if (fd == lfd) {
                                int c;
                                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                                        struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP,
                                                                 .data.fd = c};
                                        if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0)
                                                close(c);
                                }
                                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                                        fprintf(stderr, "tls_bench serve: accept: %s\n",
                                                strerror(errno));
                                        return 1;
                                }
                                continue;
                        }
                        char buf[4096];
                        ssize_t r = read(fd, buf, sizeof(buf));
                        if (r > 0 && send(fd, "y", 1, MSG_NOSIGNAL) < 0)
                                r = -1;
                        if (r > 0 || r == 0 || errno != EAGAIN) {
                                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                                close(fd);
                        }
                }
        }
}

/* ---- handshake ------------------------------------------------------------ */

enum slot_state { S_IDLE, S_CONNECT, S_HANDSHAKE, S_WRITE, S_READ };

struct slot {
        int fd;
        size_t idx;
        SSL *ssl;
        enum slot_state st;
        uint64_t start;
};

struct hs {
        SSL_CTX *ctx;
        struct sockaddr_in dst;
        const char *sni;
        int ep;
        uint64_t done, errors, connect_errors;
        char first_error[160]; /* what the first failure was */
        uint64_t *lat;
        size_t n_lat;
};

static void note_error(struct hs *h, const char *stage, int err)
{
        if (h->first_error[0])
                return;
        unsigned long e = ERR_peek_error();
        if (e)
                snprintf(h->first_error, sizeof(h->first_error), "%s: %s", stage,
                         ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "TLS error");
        else
                snprintf(h->first_error, sizeof(h->first_error), "%s: %s", stage,
                         err ? strerror(err) : "closed");
}

static void slot_close(struct hs *h, struct slot *s, bool ok)
{
        if (s->ssl)
                SSL_free(s->ssl);
        s->ssl = NULL;
        if (s->fd >= 0) {
                epoll_ctl(h->ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
        }
        s->fd = -1;
        s->st = S_IDLE;
        if (ok) {
                h->done++;
                if (h->n_lat < LAT_SAMPLES)
                        h->lat[h->n_lat++] = now_ns() - s->start;
        } else {
                h->errors++;
        }
        ERR_clear_error();
}

static void slot_start(struct hs *h, struct slot *s, size_t idx)
{
        s->start = now_ns();
        s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(s->fd, (struct sockaddr *)&h->dst, sizeof(h->dst)) < 0 &&
            errno != EINPROGRESS) {
                note_error(h, "connect", errno);
                h->connect_errors++;
                slot_close(h, s, false);
                return;
        }
        s->ssl = SSL_new(h->ctx);
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_tlsext_host_name(s->ssl, h->sni);
        SSL_set_connect_state(s->ssl);
        s->st = S_CONNECT;
        s->idx = idx;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = idx};
        epoll_ctl(h->ep, EPOLL_CTL_ADD, s->fd, &ev);
}

/* Waits for what BoringSSL asked for (level-triggered epoll). */
static void slot_want(struct hs *h, struct slot *s, int e)
{
        struct epoll_event ev = {.events = e == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN,
                                 .data.u64 = s->idx};
        epoll_ctl(h->ep, EPOLL_CTL_MOD, s->fd, &ev);
}

/* Advances s as far as it can go without waiting. */
static void slot_step(struct hs *h, struct slot *s)
{
        for (;;) {
                int r, e;
                switch (s->st) {
                case S_IDLE:
                        return;
                case S_CONNECT: {
                        int err = 0;
                        socklen_t l = sizeof(err);
                        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                        if (err) {
                                note_error(h, "connect", err);
                                h->connect_errors++;
                                slot_close(h, s, false);
                                return;
                        }
                        s->st = S_HANDSHAKE;
                        break;
                }
                case S_HANDSHAKE:
                        r = SSL_do_handshake(s->ssl);
                        if (r == 1) {
                                s->st = S_WRITE;
                                break;
                        }
                        e = SSL_get_error(s->ssl, r);
                        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                                slot_want(h, s, e);
                                return;
                        }
                        note_error(h, "handshake", errno);
                        slot_close(h, s, false);
                        return;
                case S_WRITE:
                        r = SSL_write(s->ssl, "x", 1);
                        if (r == 1) {
                                s->st = S_READ;
                                break;
                        }
                        e = SSL_get_error(s->ssl, r);
                        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                                slot_want(h, s, e);
                                return;
                        }
                        note_error(h, "write", errno);
                        slot_close(h, s, false);
                        return;
                case S_READ: {
                        char b[64];
                        r = SSL_read(s->ssl, b, sizeof(b));
                        if (r > 0) {
                                slot_close(h, s, true);
                                return;
                        }
                        e = SSL_get_error(s->ssl, r);
                        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                                slot_want(h, s, e);
                                return;
                        }
                        note_error(h, "read", errno);
                        slot_close(h, s, false);
                        return;
                }
                }
        }
}

static int cmd_handshake(int argc, char **argv)
{
        if (argc != 6)
                return die("usage: handshake ADDR PORT SNI DIR CONNS SECONDS");
        struct hs h = {.sni = argv[2]};
        h.dst.sin_family = AF_INET;
        h.dst.sin_port = htons((uint16_t)atoi(argv[1]));
        int conns = atoi(argv[4]), secs = atoi(argv[5]);
        if (inet_pton(AF_INET, argv[0], &h.dst.sin_addr) != 1 || conns < 1 || conns > MAX_CONNS ||
            secs < 1 || secs > 3600)
                return die("handshake: bad address, CONNS 1..1024 or SECONDS 1..3600");
        char cert[512], key[512], ca[512];
        snprintf(cert, sizeof(cert), "%s/client.pem", argv[3]);
        snprintf(key, sizeof(key), "%s/client-key.pem", argv[3]);
        snprintf(ca, sizeof(ca), "%s/ca/ca.pem", argv[3]);
        h.ctx = SSL_CTX_new(TLS_method());
        if (!h.ctx || !SSL_CTX_set_min_proto_version(h.ctx, TLS1_3_VERSION) ||
            !SSL_CTX_use_certificate_chain_file(h.ctx, cert) ||
            !SSL_CTX_use_PrivateKey_file(h.ctx, key, SSL_FILETYPE_PEM) ||
            !SSL_CTX_load_verify_locations(h.ctx, ca, NULL))
                return die("cannot load the client certificate, key or CA");
        SSL_CTX_set_verify(h.ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_session_cache_mode(h.ctx, SSL_SESS_CACHE_OFF); /* full handshakes only */
        h.lat = calloc(LAT_SAMPLES, sizeof(*h.lat));
        struct slot *slots = calloc((size_t)conns, sizeof(*slots));
        h.ep = epoll_create1(0);
        if (!h.lat || !slots || h.ep < 0)
                return die("out of memory");
        signal(SIGPIPE, SIG_IGN);
        uint64_t t0 = now_ns(), end = t0 + (uint64_t)secs * 1000000000ull;
        for (int i = 0; i < conns; i++) {
                slots[i].fd = -1;
                slot_start(&h, &slots[i], (size_t)i);
        }
        while (now_ns() < end) {
                struct epoll_event evs[256];
                int n = epoll_wait(h.ep, evs, 256, 100);
                for (int i = 0; i < n; i++) {
                        struct slot *s = &slots[evs[i].data.u64];
                        slot_step(&h, s);
                        if (s->st == S_IDLE && now_ns() < end)
                                slot_start(&h, s, evs[i].data.u64);
                }
                /* Restart slots whose connect failed at once. */
                for (int i = 0; i < conns && now_ns() < end; i++)
                        if (slots[i].st == S_IDLE)
                                slot_start(&h, &slots[i], (size_t)i);
                if (h.errors > 1000 && h.errors > h.done)
                        break; /* nothing works: stop early, the output says so */
        }
        double el = (double)(now_ns() - t0) / 1e9;
        for (int i = 0; i < conns; i++)
                if (slots[i].st != S_IDLE) {
                        slot_close(&h, &slots[i], false);
                        h.errors--; /* cut off by the end of the run, not a failure */
                }
        qsort(h.lat, h.n_lat, sizeof(*h.lat), cmp_u64);
        printf("{\"handshakes\":%llu,\"errors\":%llu,\"connect_errors\":%llu,\"seconds\":%.2f,"
               "\"per_s\":%.1f,\"latency_us\":{\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f},"
               "\"conns\":%d,\"first_error\":\"%s\"}\n",
               (unsigned long long)h.done, (unsigned long long)h.errors,
               (unsigned long long)h.connect_errors, el, (double)h.done / el,
               pct(h.lat, h.n_lat, 0.5) / 1e3, pct(h.lat, h.n_lat, 0.9) / 1e3,
               pct(h.lat, h.n_lat, 0.99) / 1e3, conns, h.first_error);
        /* Not a rate of 0/s: nothing answered, so the setup is broken. */
        if (h.done == 0) {
                fprintf(stderr,
                        "tls_bench handshake: 0 successful handshakes to %s:%s in %.1f s "
                        "(%llu errors, first: %s)\n",
                        argv[0], argv[1], el, (unsigned long long)h.errors,
                        h.first_error[0] ? h.first_error : "none");
                return 1;
        }
        return 0;
}

int main(int argc, char **argv)
{
        log_set_level(LOG_WARN);
        if (argc >= 2 && !strcmp(argv[1], "issue"))
                return cmd_issue(argc - 2, argv + 2);
        if (argc >= 2 && !strcmp(argv[1], "pki"))
                return cmd_pki(argc - 2, argv + 2);
        if (argc >= 2 && !strcmp(argv[1], "serve"))
                return cmd_serve(argc - 2, argv + 2);
        if (argc >= 2 && !strcmp(argv[1], "handshake"))
                return cmd_handshake(argc - 2, argv + 2);
        return die("usage: tls_bench issue|pki|serve|handshake ... (see the source's header)");
}

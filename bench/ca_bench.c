// SPDX-License-Identifier: Apache-2.0
/* shunt-ca benchmark helper (bench/ca_bench.sh drives it):
 *
 *   ca_bench sign N                     N certificates signed from one ECDSA
 *                                       P-256 CSR by a fresh CA, as
 *                                       /v1/certificates does it (parse,
 *                                       check, verify, sign, PEM); one JSON
 *                                       line of timings
 *   ca_bench https ADDR PORT BUNDLE TOKEN_FILE CSR_FILE CONNS SECONDS
 *                                       POST /v1/certificates end to end, CONNS
 *                                       clients at a time for SECONDS: a new
 *                                       TLS 1.3 connection (verified against
 *                                       BUNDLE) per certificate, as a sidecar
 *                                       does. One JSON line: rate, latencies,
 *                                       answers by status; exit 1 when not one
 *                                       certificate was issued.
 *
 * Never run by ctest. Build in release mode for meaningful numbers. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ca/ca.h"
#include "bench_util.h"
#include "core/log.h"
#include "core/strbuf.h"

#define LAT_SAMPLES (1u << 20)
#define MAX_CONNS   256
#define ID          "spiffe://cluster.local/ns/bench/sa/client"

static char *read_file(const char *path)
{
        FILE *f = fopen(path, "r");
        if (!f) {
                fprintf(stderr, "ca_bench: %s: %s\n", path, strerror(errno));
                return NULL;
        }
        struct strbuf sb;
        strbuf_init(&sb);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                strbuf_appendn(&sb, buf, n);
        fclose(f);
        return sb.data;
}

/* A CSR the way a sidecar makes one: a new P-256 key, the SPIFFE ID as URI
 * SAN, signed with the key. PEM, malloc'd. */
static char *make_csr(void)
{
        EVP_PKEY *key = NULL;
        X509_REQ *req = X509_REQ_new();
        if (tls_key_generate(TLS_KEY_ECDSA_P256, &key) < 0 || !req)
                return NULL;
        X509_REQ_set_pubkey(req, key);
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *san = X509V3_EXT_nconf_nid(NULL, NULL, NID_subject_alt_name, "URI:" ID);
        sk_X509_EXTENSION_push(exts, san);
        X509_REQ_add_extensions(req, exts);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        X509_REQ_sign(req, key, EVP_sha256());
        BIO *b = BIO_new(BIO_s_mem());
        PEM_write_bio_X509_REQ(b, req);
        const uint8_t *d;
        size_t n;
        BIO_mem_contents(b, &d, &n);
        char *pem = strndup((const char *)d, n);
        BIO_free(b);
        X509_REQ_free(req);
        EVP_PKEY_free(key);
        return pem;
}

static int cmd_sign(int argc, char **argv)
{
        if (argc != 3)
                return 2;
        long n = strtol(argv[2], NULL, 10);
        if (n <= 0)
                return 2;
        char dir[] = "/tmp/shunt-ca-bench-XXXXXX";
        if (!mkdtemp(dir))
                return 1;
        struct tls_ca_options o = {.state_dir = dir, .trust_domain = "cluster.local"};
        struct tls_ca *ca;
        char *csr = make_csr();
        if (!csr || tls_ca_open(&o, &ca) < 0)
                return 1;
        uint64_t *lat = calloc((size_t)n, sizeof(*lat));
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) {
                uint64_t s = now_ns();
                X509 *leaf;
                const char *reason;
                char msg[256];
                time_t now = time(NULL);
                if (ca_csr_sign(ca, csr, strlen(csr), ID, now - 300, now + 86400, &leaf, &reason,
                                msg, sizeof(msg)) < 0) {
                        fprintf(stderr, "ca_bench: signing failed: %s: %s\n", reason, msg);
                        return 1;
                }
                char *pem = tls_pem_encode_certs(&leaf, 1);
                free(pem);
                X509_free(leaf);
                lat[i] = now_ns() - s;
        }
        double secs = (double)(now_ns() - t0) / 1e9;
        qsort(lat, (size_t)n, sizeof(*lat), cmp_u64);
        printf("{\"what\":\"sign\",\"key\":\"ecdsa-p256\",\"n\":%ld,\"seconds\":%.3f,"
               "\"per_s\":%.0f,\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f}}\n",
               n, secs, (double)n / secs, (double)pct(lat, (size_t)n, 0.5) / 1e3,
               (double)pct(lat, (size_t)n, 0.99) / 1e3);
        free(lat);
        free(csr);
        tls_ca_free(ca);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        return system(cmd) == 0 ? 0 : 1;
}

/* ---- https ------------------------------------------------------------------- */

struct client {
        struct sockaddr_in to;
        SSL_CTX *ctx;
        const char *request;
        size_t request_len;
        uint64_t end_ns;
        _Atomic size_t n_lat;
        uint64_t *lat;
        _Atomic uint64_t ok, refused, errors;
        _Atomic uint64_t by_status[600];
};

/* One certificate over a new connection: the HTTP status, or -1. */
static int one(struct client *c)
{
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        int status = -1;
        SSL *ssl = NULL;
        if (connect(fd, (struct sockaddr *)&c->to, sizeof(c->to)) < 0)
                goto out;
        ssl = SSL_new(c->ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_tlsext_host_name(ssl, "shunt-ca");
        if (SSL_connect(ssl) != 1 || SSL_write(ssl, c->request, (int)c->request_len) <= 0)
                goto out;
        char buf[8192];
        size_t len = 0;
        int n;
        while (len < sizeof(buf) - 1 &&
               (n = SSL_read(ssl, buf + len, (int)(sizeof(buf) - 1 - len))) > 0)
                len += (size_t)n;
        buf[len] = '\0';
        if (len > 12 && strncmp(buf, "HTTP/1.1 ", 9) == 0)
                status = atoi(buf + 9);
out:
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
        return status;
}

static void *client_main(void *arg)
{
        struct client *c = arg;
        while (now_ns() < c->end_ns) {
                uint64_t s = now_ns();
                int st = one(c);
                uint64_t d = now_ns() - s;
                if (st == 200) {
                        atomic_fetch_add(&c->ok, 1);
                        size_t i = atomic_fetch_add(&c->n_lat, 1);
                        if (i < LAT_SAMPLES)
                                c->lat[i] = d;
                } else if (st > 0) {
                        atomic_fetch_add(&c->refused, 1);
                } else {
                        atomic_fetch_add(&c->errors, 1);
                }
                if (st > 0 && st < 600)
                        atomic_fetch_add(&c->by_status[st], 1);
        }
        return NULL;
}

static int cmd_https(int argc, char **argv)
{
        if (argc != 9)
                return 2;
        struct client *c = calloc(1, sizeof(*c));
        c->to.sin_family = AF_INET;
        c->to.sin_port = htons((uint16_t)atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &c->to.sin_addr) != 1)
                return 2;
        int conns = atoi(argv[7]), secs = atoi(argv[8]);
        if (conns < 1 || conns > MAX_CONNS || secs < 1)
                return 2;
        char *token = read_file(argv[5]);
        char *csr = read_file(argv[6]);
        if (!token || !csr)
                return 1;
        token[strcspn(token, "\r\n")] = '\0';
        struct strbuf body, req;
        strbuf_init(&body);
        strbuf_append(&body, "{\"csr\":");
        strbuf_append_json_string(&body, csr);
        strbuf_append(&body, "}");
        strbuf_init(&req);
        strbuf_appendf(&req,
                       "POST /v1/certificates HTTP/1.1\r\nHost: shunt-ca\r\nAuthorization: Bearer "
                       "%s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n\r\n",
                       token, body.len);
        strbuf_appendn(&req, body.data, body.len);
        c->request = req.data;
        c->request_len = req.len;
        c->ctx = SSL_CTX_new(TLS_method());
        SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        if (!SSL_CTX_load_verify_locations(c->ctx, argv[4], NULL)) {
                fprintf(stderr, "ca_bench: cannot load bundle %s\n", argv[4]);
                return 1;
        }
        c->lat = calloc(LAT_SAMPLES, sizeof(*c->lat));
        uint64_t t0 = now_ns();
        c->end_ns = t0 + (uint64_t)secs * 1000000000ull;
        pthread_t th[MAX_CONNS];
        for (int i = 0; i < conns; i++)
                pthread_create(&th[i], NULL, client_main, c);
        for (int i = 0; i < conns; i++)
                pthread_join(th[i], NULL);
        double el = (double)(now_ns() - t0) / 1e9;
        size_t n = atomic_load(&c->n_lat);
        if (n > LAT_SAMPLES)
                n = LAT_SAMPLES;
        qsort(c->lat, n, sizeof(*c->lat), cmp_u64);
        struct strbuf st;
        strbuf_init(&st);
        for (int i = 0; i < 600; i++)
                if (c->by_status[i])
                        strbuf_appendf(&st, "%s\"%d\":%llu", st.len ? "," : "", i,
                                       (unsigned long long)c->by_status[i]);
        uint64_t ok = atomic_load(&c->ok);
        printf("{\"what\":\"https\",\"conns\":%d,\"seconds\":%.3f,\"issued\":%llu,\"per_s\":%.1f,"
               "\"latency_ms\":{\"p50\":%.2f,\"p99\":%.2f},\"refused\":%llu,\"errors\":%llu,"
               "\"by_status\":{%s}}\n",
               conns, el, (unsigned long long)ok, (double)ok / el,
               (double)pct(c->lat, n, 0.5) / 1e6, (double)pct(c->lat, n, 0.99) / 1e6,
               (unsigned long long)atomic_load(&c->refused),
               (unsigned long long)atomic_load(&c->errors), st.data ? st.data : "");
        if (!ok)
                fprintf(stderr, "ca_bench: not one certificate was issued\n");
        strbuf_free(&st);
        strbuf_free(&body);
        strbuf_free(&req);
        SSL_CTX_free(c->ctx);
        free(c->lat);
        free(token);
        free(csr);
        free(c);
        return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
        log_set_level(LOG_ERROR);
        int rc = 2;
        if (argc >= 2 && strcmp(argv[1], "sign") == 0)
                rc = cmd_sign(argc, argv);
        else if (argc >= 2 && strcmp(argv[1], "https") == 0)
                rc = cmd_https(argc, argv);
        if (rc == 2)
                fprintf(stderr, "usage: ca_bench sign N\n"
                                "       ca_bench https ADDR PORT BUNDLE TOKEN_FILE CSR_FILE CONNS "
                                "SECONDS\n");
        return rc;
}

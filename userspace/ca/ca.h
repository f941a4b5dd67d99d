/* SPDX-License-Identifier: Apache-2.0 */
/* shunt-ca: the mesh's certificate authority service.
 *
 * A workload sends a PKCS#10 CSR with its projected service-account token;
 * the token is checked with the Kubernetes TokenReview API (our audience
 * required), and the CA signs a certificate for exactly
 * spiffe://<trust domain>/ns/<namespace>/sa/<service account> of the token,
 * nothing else the CSR asks for. The CA key never leaves this process.
 *
 * A node agent (--node-agent-sa) may instead ask for the identity of a pod
 * on its own node: {"csr", "for": {"namespace", "service_account"[, "pod"]}};
 * the CA learns the agent's node from its pod-bound token and checks with
 * the API server that such a pod is scheduled there (node.c).
 *
 * HTTPS (TLS 1.3 only) API, one request per connection:
 *   POST /v1/certificates  Authorization: Bearer <token>, {"csr": "<PEM>"[, "for": {..}]}
 *        200 {"spiffe_id","serial","not_before","not_after",["node","pod",]
 *             "certificate_chain","trust_bundle"}
 *        errors {"error": "<reason>", "message": "<one line>"}
 *   GET  /v1/bundle        PEM of every trusted root
 *   GET  /healthz, /ready
 * Other routes (the injection webhook) are added with ca_service_route().
 *
 * Bounds: request head and body size (413 too_large, the rest is not read),
 * requests per second per identity (429 rate_limited with Retry-After),
 * concurrent requests and queued connections (503 busy), a deadline for the
 * handshake and the request (slow clients are cut off), a TokenReview
 * timeout (503 tokenreview_unavailable). Every issuance and refusal of
 * /v1/certificates is one audit line. Stateless apart from the key: any
 * number of replicas sharing the key can serve. */
#ifndef SHUNT_CA_CA_H
#define SHUNT_CA_CA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

#include "core/strbuf.h"
#include "tls/cert.h"
#include "tls/source.h"

#define CA_DEFAULT_LISTEN        "0.0.0.0:15012"
#define CA_DEFAULT_AUDIENCE      "shunt-ca"
#define CA_DEFAULT_LIFETIME_S    (24u * 3600)
#define CA_MIN_LIFETIME_S        10u /* short lifetimes: rotation tests */
#define CA_MAX_LIFETIME_S        (90u * 24 * 3600)
#define CA_BACKDATE_S            TLS_DEFAULT_BACKDATE_S /* as the built-in CA: clocks that lag */
#define CA_DEFAULT_MAX_BODY      (64u * 1024)
#define CA_MAX_HEAD              (16u * 1024)
#define CA_DEFAULT_WORKERS       16u  /* requests served at once */
#define CA_DEFAULT_QUEUE         64u  /* accepted connections waiting for a worker */
#define CA_DEFAULT_READ_MS       5000 /* handshake + request, per connection */
#define CA_DEFAULT_TR_TIMEOUT_MS 5000
#define CA_DEFAULT_RATE          5.0 /* certificates per second per identity */
#define CA_DEFAULT_BURST         10u
#define CA_MAX_SERVER_SANS       16
#define CA_DEFAULT_NODE_AGENT    "shunt-node" /* the chart's DaemonSet, in --namespace */
#define CA_MAX_NODE_AGENTS       8

struct ca_options {
        const char *listen; /* "ip:port" */
        const char *trust_domain;
        const char *ca_dir;             /* state directory (root created on first start), or */
        const char *ca_cert, *ca_key;   /* a mounted Secret */
        const char *bundle_file;        /* extra roots (rotation overlap); may be NULL */
        uint32_t lifetime_s;            /* of issued certificates */
        const char *audience;           /* the token audience required */
        const char *kubeconfig;         /* NULL/"": in-cluster credentials */
        const char *namespace;          /* for the serving certificate's DNS names */
        const char *const *server_sans; /* "DNS:x" / "IP:x" / a bare name or address */
        size_t n_server_sans;
        enum tls_key_type key_type; /* of a created root and the serving key */
        unsigned workers, queue;
        uint32_t read_timeout_ms, tokenreview_timeout_ms;
        size_t max_body;
        double rate; /* per identity; burst tokens at most */
        unsigned burst;
        /* Service accounts ("namespace/name") whose pods may ask for the
         * identities of the pods on their node. Unless node_agents_set, the
         * chart's <namespace>/shunt-node; set with none: nobody. */
        const char *const *node_agents;
        size_t n_node_agents;
        bool node_agents_set;
};

/* Fills in the defaults above (trust domain cluster.local, namespace
 * shunt-system, ECDSA P-256). */
void ca_options_default(struct ca_options *opt);

/* ---- requests and routes ------------------------------------------------------ */

struct ca_request {
        const char *method;
        const char *path;
        const char *query;         /* after '?', "" when none */
        const char *authorization; /* the Authorization header, "" when absent */
        const char *content_type;  /* "" when absent */
        const char *peer;          /* "ip:port" of the client */
        const char *body;          /* NUL-terminated; body_len excludes the NUL */
        size_t body_len;
};

struct ca_response {
        int status;               /* 200 unless set */
        const char *content_type; /* static string; default application/json */
        unsigned retry_after_s;   /* > 0: a Retry-After header */
        struct strbuf body;
};

/* Runs on one of the worker threads; may block up to the request's bounds. */
typedef void (*ca_handler_fn)(const struct ca_request *req, struct ca_response *resp, void *ctx);

/* Sets status and the body {"error": reason, "message": message}. */
void ca_respond_error(struct ca_response *resp, int status, const char *reason,
                      const char *message);

/* ---- the service ------------------------------------------------------------------ */

struct ca_service;

/* Opens (or creates) the CA, reads the bundle file, loads the Kubernetes
 * credentials, issues the serving certificate and binds the listener. 0 or a
 * negative errno with one line logged naming the input. */
int ca_service_new(const struct ca_options *opt, struct ca_service **out);
/* Exact method and path; before ca_service_run. max_body bounds the
 * route's request bodies (0: --max-body). 0, -EINVAL or -ENOMEM. */
int ca_service_route(struct ca_service *s, const char *method, const char *path, ca_handler_fn fn,
                     void *ctx, size_t max_body);
uint16_t ca_service_port(const struct ca_service *s);
/* Serves until ca_service_stop(); renews the serving certificate and
 * re-reads the bundle file as needed. 0 or -errno. */
int ca_service_run(struct ca_service *s);
/* Async-signal-safe. */
void ca_service_stop(struct ca_service *s);
void ca_service_free(struct ca_service *s);

/* ---- CSR checking and signing (also used on its own: tests, benchmark) ---------- */

/* Parses the PEM CSR, checks its signature and key (ECDSA P-256 or RSA-2048
 * only) and that it asks for nothing beyond spiffe_id (a SAN other than that
 * one URI, or basicConstraints CA:TRUE, is a mismatch), then signs a
 * certificate for the CSR's key with exactly spiffe_id (see tls_ca_sign).
 * 0, or -EINVAL with *reason "csr_invalid" / -EPERM with *reason
 * "csr_mismatch", and one line in msg that names what was wrong. */
int ca_csr_sign(struct tls_ca *ca, const char *csr_pem, size_t len, const char *spiffe_id,
                time_t not_before, time_t not_after, X509 **out, const char **reason, char *msg,
                size_t msglen);

#endif

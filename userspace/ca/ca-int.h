/* SPDX-License-Identifier: Apache-2.0 */
/* Private to userspace/ca: the HTTPS server, TokenReview client and audit
 * lines shared by the files of the component. */
#ifndef SHUNT_CA_INT_H
#define SHUNT_CA_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "ca/ca.h"
#include "discovery/k8s_creds.h"
#include "core/spiffe.h"

#define CA_COMP "ca"

/* ---- audit (service.c) -------------------------------------------------------- */

/* One audit line (core/log.h log_audit, event "certificate") per issuance
 * or refusal: result "issued" or "refused", the identity (SPIFFE ID, ""
 * when unknown), serial ("" when none), peer, reason ("" for an issuance),
 * the HTTP status and the message. */
void ca_audit(const char *result, const char *identity, const char *serial, const char *peer,
              const char *reason, int status, const char *message);

/* ---- TokenReview (tokenreview.c) ---------------------------------------------------- */

enum ca_tr_result {
        CA_TR_OK = 0,
        CA_TR_INVALID,     /* token_invalid */
        CA_TR_EXPIRED,     /* token_expired */
        CA_TR_AUDIENCE,    /* wrong_audience */
        CA_TR_UNAVAILABLE, /* tokenreview_unavailable: never issue */
};

const char *ca_tr_reason(enum ca_tr_result r);

#define CA_K8S_NAME_MAX 253 /* a DNS subdomain: pod, node, service-account names */
#define CA_K8S_NS_MAX   63  /* a DNS label: namespaces */
#define CA_K8S_UID_MAX  128

/* The status.user.extra keys of a token bound to a pod: pod name and uid
 * since Kubernetes 1.11 (kubernetes#61858); the node's name since 1.30
 * (ServiceAccountTokenPodNodeInfo, beta and on by default there, GA in
 * 1.32), taken by kube-apiserver from the pod's spec.nodeName when the
 * token was issued. */
#define CA_EXTRA_POD_NAME  "authentication.kubernetes.io/pod-name"
#define CA_EXTRA_POD_UID   "authentication.kubernetes.io/pod-uid"
#define CA_EXTRA_NODE_NAME "authentication.kubernetes.io/node-name"

struct ca_tr_identity {
        char ns[SPIFFE_NAME_MAX + 1];
        char sa[SPIFFE_NAME_MAX + 1];
        /* "" unless the token is bound to a pod (and the API server says
         * which node); the names are valid Kubernetes names */
        char pod_name[CA_K8S_NAME_MAX + 1];
        char pod_uid[CA_K8S_UID_MAX + 1];
        char node_name[CA_K8S_NAME_MAX + 1];
};

#define CA_TR_MAX_RESPONSE (1u << 20)
#define CA_TR_MAX_TOKEN    (16u * 1024)

/* Asks the API server whether token is a valid service-account token for
 * audience. Blocking, at most timeout_ms. Thread-safe (a curl handle per
 * thread). msg gets one line saying why when the result is not CA_TR_OK. */
enum ca_tr_result ca_tokenreview(struct k8s_creds *creds, const char *token, const char *audience,
                                 uint32_t timeout_ms, struct ca_tr_identity *id, char *msg,
                                 size_t msglen);
/* Maps a TokenReview status (authenticated, error text, audiences, user
 * name, extra) to a result; pure (unit-tested). */
enum ca_tr_result ca_tr_classify(const char *response_json, size_t len, const char *audience,
                                 struct ca_tr_identity *id, char *msg, size_t msglen);

/* ---- API server calls (kube.c) ------------------------------------------------------ */

struct ca_kube_answer {
        long status; /* HTTP status */
        char *body;  /* malloc'd, NUL-terminated; NULL when empty */
        size_t len;
};

/* GET path (post NULL) or POST post (JSON) at the API server with creds,
 * under timeout_ms, keeping at most max bytes of the answer. 0 with *a
 * filled (free a->body), or -1 with msg saying why (unreachable, timed
 * out, answer over max). Thread-safe (a curl handle per thread). */
int ca_kube_call(struct k8s_creds *creds, const char *path, const char *post, size_t post_len,
                 uint32_t timeout_ms, size_t max, struct ca_kube_answer *a, char *msg,
                 size_t msglen);

/* ---- delegated issuance for node agents (node.c) ------------------------------------ */

struct cJSON;

/* A Kubernetes object name: a DNS-1123 subdomain of at most max characters
 * (a label when max is CA_K8S_NS_MAX: no dots). */
bool ca_k8s_name_valid(const char *s, size_t max);

/* The identity a node agent asks for: namespace and service account, and
 * optionally one pod by name (and uid). */
struct ca_node_target {
        char ns[CA_K8S_NS_MAX + 1];
        char sa[CA_K8S_NAME_MAX + 1];
        char pod[CA_K8S_NAME_MAX + 1];    /* "" when any pod of the account will do */
        char pod_uid[CA_K8S_UID_MAX + 1]; /* "" when not given */
};

/* Reads the request's "for" object: {"namespace", "service_account"[,
 * "pod"[, "pod_uid"]]}. 0, or -EINVAL with msg naming what is wrong. */
int ca_node_target_parse(const struct cJSON *obj, struct ca_node_target *t, char *msg,
                         size_t msglen);

/* Whether the token's service account is one of agents ("namespace/name"). */
bool ca_node_is_agent(const char *const *agents, size_t n, const struct ca_tr_identity *who);

enum ca_node_result {
        CA_NODE_OK = 0,
        CA_NODE_DENIED,      /* 403: the agent is not entitled */
        CA_NODE_UNAVAILABLE, /* 503: the API server's answer is not a Pod / PodList */
};

/* The agent's node from its own Pod object (the GET of who->pod_name): the
 * pod must still be the one the token is bound to (uid) and be scheduled.
 * node gets spec.nodeName. Pure. */
enum ca_node_result ca_node_of_agent(const char *pod_json, size_t len,
                                     const struct ca_tr_identity *who,
                                     char node[CA_K8S_NAME_MAX + 1], char *msg, size_t msglen);

/* Whether the answer (a PodList, or the one Pod t names) holds a pod of t's
 * namespace and service account (and t's name and uid when given) that is
 * scheduled on node and Pending or Running. pod gets its name. Every field
 * is checked here whatever the query selected. Pure. */
enum ca_node_result ca_node_match(const char *json, size_t len, const struct ca_node_target *t,
                                  const char *node, char pod[CA_K8S_NAME_MAX + 1], char *msg,
                                  size_t msglen);

/* The API server answers and bounds of one delegated request (node.c). */
struct ca_node_lookup {
        struct k8s_creds *creds;
        uint32_t timeout_ms; /* per API call */
};

#define CA_NODE_MAX_POD     (1u << 20) /* one Pod object */
#define CA_NODE_MAX_PODLIST (4u << 20) /* the pods of one account on one node */

/* The node of the agent who: from the token's node-name when the API server
 * put one there, else from its pod (GET, uid checked). CA_NODE_UNAVAILABLE
 * also when the API server cannot be asked. */
enum ca_node_result ca_node_agent_node(const struct ca_node_lookup *l,
                                       const struct ca_tr_identity *who,
                                       char node[CA_K8S_NAME_MAX + 1], char *msg, size_t msglen);

/* Asks the API server for t's pods on node (or t's one pod) and checks them
 * with ca_node_match. */
enum ca_node_result ca_node_check(const struct ca_node_lookup *l, const struct ca_node_target *t,
                                  const char *node, char pod[CA_K8S_NAME_MAX + 1], char *msg,
                                  size_t msglen);

/* ---- HTTPS server (server.c) ----------------------------------------------------------- */

struct ca_http;

struct ca_http_options {
        const char *listen;
        unsigned workers, queue;
        uint32_t read_timeout_ms;
        size_t max_body;
};

/* Binds and listens. 0 or -errno (logged). */
int ca_http_new(const struct ca_http_options *opt, struct ca_http **out);
void ca_http_free(struct ca_http *h);
uint16_t ca_http_port(const struct ca_http *h);
/* max_body: the route's bound on request bodies (0: opt.max_body). */
int ca_http_route(struct ca_http *h, const char *method, const char *path, ca_handler_fn fn,
                  void *ctx, bool audited, size_t max_body);
/* The serving context (TLS 1.3 only) for connections accepted from now on;
 * the server takes its own reference. */
void ca_http_set_ctx(struct ca_http *h, SSL_CTX *ctx);
/* Accepts and serves until ca_http_stop; tick(arg) runs about once a second
 * on the calling thread. */
int ca_http_run(struct ca_http *h, void (*tick)(void *arg), void *arg);
void ca_http_stop(struct ca_http *h); /* async-signal-safe */

#endif

// SPDX-License-Identifier: Apache-2.0
/* shunt-ca's service: the CA, its trust bundle, the serving certificate and
 * the handlers of /v1/certificates, /v1/bundle, /healthz and /ready. */
#include "ca/ca-int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/x509v3.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/sockaddr.h"

#define RATE_SLOTS   4096 /* identities tracked by the rate limiter */
#define RATE_PROBE   8
#define RATE_KEY_MAX (SPIFFE_ID_MAX + 1 + CA_K8S_UID_MAX) /* "identity@agent pod uid" */

void ca_options_default(struct ca_options *opt)
{
        memset(opt, 0, sizeof(*opt));
        opt->listen = CA_DEFAULT_LISTEN;
        opt->trust_domain = "cluster.local";
        opt->lifetime_s = CA_DEFAULT_LIFETIME_S;
        opt->audience = CA_DEFAULT_AUDIENCE;
        opt->namespace = "shunt-system";
        opt->key_type = TLS_KEY_ECDSA_P256;
        opt->workers = CA_DEFAULT_WORKERS;
        opt->queue = CA_DEFAULT_QUEUE;
        opt->read_timeout_ms = CA_DEFAULT_READ_MS;
        opt->tokenreview_timeout_ms = CA_DEFAULT_TR_TIMEOUT_MS;
        opt->max_body = CA_DEFAULT_MAX_BODY;
        opt->rate = CA_DEFAULT_RATE;
        opt->burst = CA_DEFAULT_BURST;
}

/* ---- audit ------------------------------------------------------------------------- */

/* Who asked on whose behalf, for the audit line of a delegated request. */
struct ca_delegation {
        char agent[2 * SPIFFE_NAME_MAX + 2]; /* the node agent's "namespace/name" */
        char node[CA_K8S_NAME_MAX + 1];      /* "" until known */
        char pod[CA_K8S_NAME_MAX + 1];       /* the pod that entitles it, "" until known */
};

static void audit(const char *result, const char *identity, const char *serial, const char *peer,
                  const char *reason, int status, const char *message,
                  const struct ca_delegation *d)
{
        char st[8];
        snprintf(st, sizeof(st), "%d", status);
        struct log_field f[10] = {
            {"result", result, false},  {"identity", identity, false}, {"serial", serial, false},
            {"peer", peer, false},      {"reason", reason, false},     {"status", st, false},
            {"message", message, true},
        };
        size_t n = 7;
        if (d) {
                f[n++] = (struct log_field){"agent", d->agent, false};
                f[n++] = (struct log_field){"node", d->node, false};
                f[n++] = (struct log_field){"pod", d->pod, false};
        }
        bool ok = strcmp(result, "issued") == 0;
        log_audit(ok ? LOG_INFO : LOG_WARN, CA_COMP, 0, "certificate", f, n);
}

void ca_audit(const char *result, const char *identity, const char *serial, const char *peer,
              const char *reason, int status, const char *message)
{
        audit(result, identity, serial, peer, reason, status, message, NULL);
}

/* ---- rate limit per identity ---------------------------------------------------------- */

struct rate_slot {
        char id[RATE_KEY_MAX + 1]; /* an identity, or "identity@agent pod uid" */
        double tokens;
        uint64_t last_ms;
};

struct rate {
        pthread_mutex_t mu;
        double rate, burst;
        struct rate_slot *slots;
};

static uint64_t hash_str(const char *s)
{
        uint64_t h = 1469598103934665603ull; /* FNV-1a */
        for (; *s; s++)
                h = (h ^ (uint8_t)*s) * 1099511628211ull;
        return h;
}

/* Takes a token for id. 0, or the seconds until one is available. Memory is
 * bounded: an identity whose slot is needed by another is forgotten (the
 * least recently seen of its probe run), which only ever lets it start again
 * with a full bucket. */
static unsigned rate_take(struct rate *r, const char *id)
{
        uint64_t now = clock_mono_ms();
        size_t base = hash_str(id) % RATE_SLOTS;
        pthread_mutex_lock(&r->mu);
        struct rate_slot *s = NULL, *oldest = NULL;
        for (size_t i = 0; i < RATE_PROBE; i++) {
                struct rate_slot *c = &r->slots[(base + i) % RATE_SLOTS];
                if (strcmp(c->id, id) == 0) {
                        s = c;
                        break;
                }
                if (!oldest || c->last_ms < oldest->last_ms)
                        oldest = c;
        }
        if (!s) {
                s = oldest;
                snprintf(s->id, sizeof(s->id), "%s", id);
                s->tokens = r->burst;
                s->last_ms = now;
        }
        s->tokens += (double)(now - s->last_ms) / 1000.0 * r->rate;
        if (s->tokens > r->burst)
                s->tokens = r->burst;
        s->last_ms = now;
        unsigned wait = 0;
        if (s->tokens >= 1.0) {
                s->tokens -= 1.0;
        } else {
                double need = (1.0 - s->tokens) / r->rate; /* seconds, rounded up */
                wait = (unsigned)need;
                if ((double)wait < need || wait == 0)
                        wait++;
        }
        pthread_mutex_unlock(&r->mu);
        return wait;
}

/* ---- the service ------------------------------------------------------------------------ */

struct ca_service {
        struct ca_options opt;
        struct tls_ca *ca;
        struct k8s_creds *creds;
        struct ca_http *http;
        struct rate rate;

        pthread_mutex_t mu;        /* bundle */
        char *bundle_pem;          /* CA certificate + the bundle file's roots */
        struct stat bundle_st;     /* of the bundle file when last read */
        struct stat bundle_bad_st; /* of the last version that could not be read */
        bool bundle_missing;       /* said once until it is back */
        char *chain_pem;           /* appended to every leaf: the CA when it is an intermediate */
        time_t serving_renew_at;   /* when the serving certificate is renewed */
        char **server_sans;
        size_t n_server_sans;
        char **node_agents; /* "namespace/name" */
        size_t n_node_agents;
};

/* Reads the bundle file's roots (if any) and builds the bundle PEM: the CA
 * certificate first, then every other certificate of the file. */
static bool same_file(const struct stat *a, const struct stat *b)
{
        return a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
               a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size;
}

/* Later reads (initial false) keep the current bundle when the file is
 * missing or broken, saying so once per change of the file. */
static int load_bundle(struct ca_service *s, bool initial)
{
        STACK_OF(X509) *extra = NULL;
        struct stat st = {0};
        if (s->opt.bundle_file && *s->opt.bundle_file) {
                if (stat(s->opt.bundle_file, &st) < 0) {
                        int e = errno;
                        if (initial || !s->bundle_missing)
                                log_error(CA_COMP, 0, "--bundle-file %s: %s%s", s->opt.bundle_file,
                                          strerror(e),
                                          initial ? "" : " (the current trust bundle stays)");
                        s->bundle_missing = true;
                        return -e;
                }
                s->bundle_missing = false;
                if (!initial &&
                    (same_file(&st, &s->bundle_st) || same_file(&st, &s->bundle_bad_st)))
                        return 0;
                int rc = tls_pem_read_certs(s->opt.bundle_file, &extra); /* logs why */
                if (rc < 0) {
                        s->bundle_bad_st = st;
                        return rc;
                }
        } else if (!initial) {
                return 0;
        }
        X509 *ca = tls_ca_cert(s->ca);
        /* the root of the chain: the CA itself when self-signed */
        X509 *certs[64];
        size_t n = 0;
        if (X509_check_issued(ca, ca) == X509_V_OK)
                certs[n++] = ca;
        for (size_t i = 0; extra && i < sk_X509_num(extra) && n < 64; i++) {
                X509 *x = sk_X509_value(extra, i);
                bool dup = false;
                for (size_t j = 0; j < n; j++)
                        dup = dup || X509_cmp(x, certs[j]) == 0;
                if (!dup)
                        certs[n++] = x;
        }
        if (n == 0) {
                log_error(CA_COMP, 0,
                          "the CA certificate is not self-signed and --bundle-file gives no root: "
                          "the trust bundle would be empty");
                sk_X509_pop_free(extra, X509_free);
                return -EINVAL;
        }
        char *pem = tls_pem_encode_certs(certs, n);
        sk_X509_pop_free(extra, X509_free);
        if (!pem)
                return -ENOMEM;
        pthread_mutex_lock(&s->mu);
        free(s->bundle_pem);
        s->bundle_pem = pem;
        s->bundle_st = st;
        pthread_mutex_unlock(&s->mu);
        log_info(CA_COMP, 0, "trust bundle: %zu root(s)%s%s", n,
                 s->opt.bundle_file && *s->opt.bundle_file ? " with " : "",
                 s->opt.bundle_file && *s->opt.bundle_file ? s->opt.bundle_file : "");
        return 0;
}

static char *bundle_copy(struct ca_service *s)
{
        pthread_mutex_lock(&s->mu);
        char *b = strdup(s->bundle_pem);
        pthread_mutex_unlock(&s->mu);
        return b;
}

/* The serving certificate: issued by the CA itself for the Service's DNS
 * names and --server-san, renewed when a third of its life is left. */
static int serving_renew(struct ca_service *s)
{
        time_t now = time(NULL);
        struct tls_issue_req ir = {
            .sans = (const char *const *)s->server_sans,
            .n_sans = s->n_server_sans,
            .key_type = s->opt.key_type,
            .not_before = now - CA_BACKDATE_S,
            .not_after = now + (time_t)s->opt.lifetime_s,
        };
        struct tls_material *m;
        int rc = tls_ca_issue(s->ca, &ir, &m);
        if (rc < 0)
                return rc;
        SSL_CTX *ctx = SSL_CTX_new(TLS_method());
        bool ok = ctx && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) &&
                  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) &&
                  SSL_CTX_use_certificate(ctx, m->leaf) && SSL_CTX_use_PrivateKey(ctx, m->key);
        X509 *ca = tls_ca_cert(s->ca);
        if (ok && X509_check_issued(ca, ca) != X509_V_OK)
                ok = SSL_CTX_add1_chain_cert(ctx, ca);
        if (ok) {
                SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
                SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
                ca_http_set_ctx(s->http, ctx);
                char serial[80], na[32];
                tls_cert_serial_hex(m->leaf, serial, sizeof(serial));
                tls_time_rfc3339(ir.not_after, na, sizeof(na));
                log_info(CA_COMP, 0,
                         "serving certificate %s issued for %zu name(s), valid until %s", serial,
                         s->n_server_sans, na);
                s->serving_renew_at = now + (time_t)s->opt.lifetime_s * 2 / 3;
        } else {
                log_error(CA_COMP, 0, "cannot build the serving TLS context");
                ERR_clear_error();
        }
        SSL_CTX_free(ctx);
        tls_material_free(m);
        return ok ? 0 : -EINVAL;
}

static void tick(void *arg)
{
        struct ca_service *s = arg;
        if (time(NULL) >= s->serving_renew_at && serving_renew(s) < 0)
                s->serving_renew_at = time(NULL) + 60; /* the current one still serves */
        load_bundle(s, false);
}

/* ---- handlers ----------------------------------------------------------------------------- */

static void refuse(struct ca_response *resp, const struct ca_request *req, const char *identity,
                   int status, const char *reason, const char *message,
                   const struct ca_delegation *d)
{
        ca_respond_error(resp, status, reason, message);
        audit("refused", identity, "", req->peer, reason, status, message, d);
}

static bool agent_listed(const struct ca_service *s, const struct ca_tr_identity *who)
{
        return ca_node_is_agent((const char *const *)s->node_agents, s->n_node_agents, who);
}

/* The checks of a delegated request after its token was reviewed: the
 * token's account is a node agent's, bound to a pod; the agent asks at
 * most --rate for one identity; its node is known; and a pod of the target
 * identity is scheduled there. true when entitled; otherwise the answer is
 * made (and audited). The rate limit comes before the pod look-ups so that
 * a flood costs the API server nothing beyond the TokenReviews. */
static bool delegate(struct ca_service *s, const struct ca_request *req, struct ca_response *resp,
                     const struct ca_tr_identity *who, const struct ca_node_target *t,
                     const char *identity, struct ca_delegation *d)
{
        char msg[768];
        snprintf(d->agent, sizeof(d->agent), "%s/%s", who->ns, who->sa);
        if (!agent_listed(s, who)) {
                snprintf(msg, sizeof(msg),
                         "service account %s is not a node agent (--node-agent-sa): it may only "
                         "obtain its own identity",
                         d->agent);
                refuse(resp, req, identity, 403, "not_node_agent", msg, d);
                return false;
        }
        if (!who->pod_name[0]) {
                snprintf(msg, sizeof(msg),
                         "the node agent's token is not bound to a pod (use a projected "
                         "service-account token): its node cannot be known");
                refuse(resp, req, identity, 403, "agent_not_pod_bound", msg, d);
                return false;
        }
        char key[RATE_KEY_MAX + 1];
        snprintf(key, sizeof(key), "%.*s@%s", SPIFFE_ID_MAX, identity, who->pod_uid);
        unsigned wait = rate_take(&s->rate, key);
        if (wait) {
                snprintf(msg, sizeof(msg), "more than %g certificates per second for %.300s",
                         s->opt.rate, identity);
                resp->retry_after_s = wait;
                refuse(resp, req, identity, 429, "rate_limited", msg, d);
                return false;
        }
        struct ca_node_lookup l = {.creds = s->creds, .timeout_ms = s->opt.tokenreview_timeout_ms};
        enum ca_node_result r = ca_node_agent_node(&l, who, d->node, msg, sizeof(msg));
        if (r == CA_NODE_OK)
                r = ca_node_check(&l, t, d->node, d->pod, msg, sizeof(msg));
        if (r == CA_NODE_UNAVAILABLE) {
                log_error(CA_COMP, 0, "pods: %s", msg);
                resp->retry_after_s = 1;
                refuse(resp, req, identity, 503, "kube_api_unavailable",
                       "the node agent's entitlement cannot be checked now (the API server did "
                       "not answer)",
                       d);
                return false;
        }
        if (r != CA_NODE_OK) {
                refuse(resp, req, identity, 403,
                       d->node[0] ? "identity_not_on_node" : "agent_pod_gone", msg, d);
                return false;
        }
        return true;
}

/* Signs csr_pem for identity and answers with the chain and the bundle. */
static void issue(struct ca_service *s, const struct ca_request *req, struct ca_response *resp,
                  const char *csr_pem, const char *identity, const struct ca_delegation *d)
{
        char msg[512];
        time_t now = time(NULL);
        X509 *leaf = NULL;
        const char *reason;
        int rc = ca_csr_sign(s->ca, csr_pem, strlen(csr_pem), identity, now - CA_BACKDATE_S,
                             now + (time_t)s->opt.lifetime_s, &leaf, &reason, msg, sizeof(msg));
        if (rc < 0) {
                refuse(resp, req, identity, strcmp(reason, "internal") == 0 ? 500 : 400, reason,
                       msg, d);
                return;
        }
        char serial[80], nb[32], na[32];
        tls_cert_serial_hex(leaf, serial, sizeof(serial));
        tls_time_rfc3339(tls_cert_not_before(leaf), nb, sizeof(nb));
        tls_time_rfc3339(tls_cert_not_after(leaf), na, sizeof(na));
        char *leaf_pem = tls_pem_encode_certs(&leaf, 1);
        char *bundle = bundle_copy(s);
        X509_free(leaf);
        if (!leaf_pem || !bundle) {
                free(leaf_pem);
                free(bundle);
                refuse(resp, req, identity, 500, "internal", "out of memory", d);
                return;
        }
        struct strbuf *b = &resp->body;
        strbuf_append(b, "{\"spiffe_id\":");
        strbuf_append_json_string(b, identity);
        strbuf_appendf(b, ",\"serial\":\"%s\",\"not_before\":\"%s\",\"not_after\":\"%s\"", serial,
                       nb, na);
        if (d) {
                strbuf_append(b, ",\"node\":");
                strbuf_append_json_string(b, d->node);
                strbuf_append(b, ",\"pod\":");
                strbuf_append_json_string(b, d->pod);
        }
        strbuf_append(b, ",\"certificate_chain\":");
        if (s->chain_pem) {
                size_t n = strlen(leaf_pem) + strlen(s->chain_pem) + 1;
                char *both = realloc(leaf_pem, n);
                if (both) {
                        strcat(both, s->chain_pem);
                        leaf_pem = both;
                }
        }
        strbuf_append_json_string(b, leaf_pem);
        strbuf_append(b, ",\"trust_bundle\":");
        strbuf_append_json_string(b, bundle);
        strbuf_append(b, "}\n");
        free(leaf_pem);
        free(bundle);
        snprintf(msg, sizeof(msg), "serial %s until %s", serial, na);
        audit("issued", identity, serial, req->peer, "", 200, msg, d);
}

static void handle_certificates(const struct ca_request *req, struct ca_response *resp, void *ctx)
{
        struct ca_service *s = ctx;
        const char *a = req->authorization;
        if (strncasecmp(a, "Bearer ", 7) != 0 || !a[7]) {
                refuse(resp, req, "", 401, "no_token",
                       "send the service-account token as Authorization: Bearer <token>", NULL);
                return;
        }
        const char *token = a + 7;
        while (*token == ' ')
                token++;
        char msg[512];
        cJSON *root = cJSON_ParseWithLength(req->body, req->body_len);
        const cJSON *csr = cJSON_GetObjectItemCaseSensitive(root, "csr");
        const cJSON *for_ = cJSON_GetObjectItemCaseSensitive(root, "for");
        struct ca_node_target target;
        struct spiffe_id *id = malloc(sizeof(*id));
        struct ca_delegation *d = NULL;
        if (!id) {
                refuse(resp, req, "", 500, "internal", "out of memory", NULL);
                goto out;
        }
        if (!cJSON_IsString(csr)) {
                refuse(resp, req, "", 400, "bad_request",
                       "the body must be JSON {\"csr\": \"<PEM CERTIFICATE REQUEST>\"[, \"for\": "
                       "{...}]}",
                       NULL);
                goto out;
        }
        if (for_ && ca_node_target_parse(for_, &target, msg, sizeof(msg)) < 0) {
                refuse(resp, req, "", 400, "bad_request", msg, NULL);
                goto out;
        }
        struct ca_tr_identity who;
        enum ca_tr_result tr =
            ca_tokenreview(s->creds, token, s->opt.audience, s->opt.tokenreview_timeout_ms, &who,
                           msg, sizeof(msg));
        if (tr == CA_TR_UNAVAILABLE) {
                log_error(CA_COMP, 0, "TokenReview: %s", msg);
                resp->retry_after_s = 1;
                refuse(resp, req, "", 503, ca_tr_reason(tr),
                       "the token cannot be checked now (TokenReview unavailable)", NULL);
                goto out;
        }
        if (tr != CA_TR_OK) {
                refuse(resp, req, "", 401, ca_tr_reason(tr), msg, NULL);
                goto out;
        }
        /* Kubernetes names (checked above for a target) are valid SPIFFE segments */
        if (!spiffe_name_valid(who.ns) || !spiffe_name_valid(who.sa) ||
            spiffe_id_build(s->opt.trust_domain, for_ ? target.ns : who.ns,
                            for_ ? target.sa : who.sa, id) < 0) {
                refuse(resp, req, "", 401, "token_invalid",
                       "the token's namespace or service account is not a valid SPIFFE path", NULL);
                goto out;
        }
        if (for_) {
                d = calloc(1, sizeof(*d));
                if (!d) {
                        refuse(resp, req, id->uri, 500, "internal", "out of memory", NULL);
                        goto out;
                }
                if (!delegate(s, req, resp, &who, &target, id->uri, d))
                        goto out;
        } else {
                unsigned wait = rate_take(&s->rate, id->uri);
                if (wait) {
                        snprintf(msg, sizeof(msg),
                                 "more than %g certificates per second for %.300s", s->opt.rate,
                                 id->uri);
                        resp->retry_after_s = wait;
                        refuse(resp, req, id->uri, 429, "rate_limited", msg, NULL);
                        goto out;
                }
        }
        issue(s, req, resp, csr->valuestring, id->uri, d);
out:
        cJSON_Delete(root);
        free(id);
        free(d);
}

static void handle_bundle(const struct ca_request *req, struct ca_response *resp, void *ctx)
{
        struct ca_service *s = ctx;
        char *b = bundle_copy(s);
        if (!b) {
                ca_respond_error(resp, 500, "internal", "out of memory");
                return;
        }
        resp->content_type = "application/x-pem-file";
        strbuf_append(&resp->body, b);
        free(b);
}

static void handle_healthz(const struct ca_request *req, struct ca_response *resp, void *ctx)
{
        strbuf_append(&resp->body, "{\"status\":\"ok\"}\n");
}

static void handle_ready(const struct ca_request *req, struct ca_response *resp, void *ctx)
{
        strbuf_append(&resp->body, "{\"status\":\"ready\"}\n");
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static int add_san(struct ca_service *s, const char *fmt, const char *a, const char *b)
{
        char buf[512];
        snprintf(buf, sizeof(buf), fmt, a, b);
        char **v = realloc(s->server_sans, (s->n_server_sans + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        s->server_sans = v;
        v[s->n_server_sans] = strdup(buf);
        if (!v[s->n_server_sans])
                return -ENOMEM;
        s->n_server_sans++;
        return 0;
}

/* The Service names of the contract, then --server-san values: "DNS:x",
 * "IP:x", or bare (an address literal is an IP SAN, anything else DNS). */
static int server_names(struct ca_service *s)
{
        const char *ns = s->opt.namespace;
        int rc = add_san(s, "DNS:shunt-ca%s%s", "", "");
        if (rc == 0)
                rc = add_san(s, "DNS:shunt-ca.%s%s", ns, "");
        if (rc == 0)
                rc = add_san(s, "DNS:shunt-ca.%s.svc%s", ns, "");
        if (rc == 0)
                rc = add_san(s, "DNS:shunt-ca.%s.svc.cluster.local%s", ns, "");
        for (size_t i = 0; rc == 0 && i < s->opt.n_server_sans; i++) {
                const char *v = s->opt.server_sans[i];
                struct sockaddr_storage ss;
                if (strncmp(v, "DNS:", 4) == 0 || strncmp(v, "IP:", 3) == 0)
                        rc = add_san(s, "%s%s", v, "");
                else if (sockaddr_from_string(v, 0, &ss) == 0)
                        rc = add_san(s, "IP:%s%s", v, "");
                else
                        rc = add_san(s, "DNS:%s%s", v, "");
        }
        return rc;
}

/* --node-agent-sa: "namespace/name" each, or the chart's DaemonSet. */
static int node_agents(struct ca_service *s)
{
        char def[CA_K8S_NS_MAX + sizeof(CA_DEFAULT_NODE_AGENT) + 1];
        snprintf(def, sizeof(def), "%s/%s", s->opt.namespace, CA_DEFAULT_NODE_AGENT);
        const char *const defv[] = {def};
        const char *const *v = s->opt.node_agents_set ? s->opt.node_agents : defv;
        size_t n = s->opt.node_agents_set ? s->opt.n_node_agents : 1;
        if (n > CA_MAX_NODE_AGENTS) {
                log_error(CA_COMP, 0, "--node-agent-sa: at most %d service accounts",
                          CA_MAX_NODE_AGENTS);
                return -EINVAL;
        }
        s->node_agents = calloc(n ? n : 1, sizeof(*s->node_agents));
        if (!s->node_agents)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const char *slash = strchr(v[i], '/');
                char ns[CA_K8S_NS_MAX + 2] = "";
                if (slash && (size_t)(slash - v[i]) < sizeof(ns))
                        snprintf(ns, sizeof(ns), "%.*s", (int)(slash - v[i]), v[i]);
                if (!slash || !ca_k8s_name_valid(ns, CA_K8S_NS_MAX) ||
                    !ca_k8s_name_valid(slash + 1, CA_K8S_NAME_MAX)) {
                        log_error(CA_COMP, 0,
                                  "--node-agent-sa \"%s\": expected <namespace>/<service account>",
                                  v[i]);
                        return -EINVAL;
                }
                s->node_agents[i] = strdup(v[i]);
                if (!s->node_agents[i])
                        return -ENOMEM;
                s->n_node_agents++;
        }
        return 0;
}

int ca_service_new(const struct ca_options *opt, struct ca_service **out)
{
        if (!spiffe_trust_domain_valid(opt->trust_domain)) {
                log_error(CA_COMP, 0, "--trust-domain \"%s\" is not a valid SPIFFE trust domain",
                          opt->trust_domain);
                return -EINVAL;
        }
        if (!spiffe_name_valid(opt->namespace)) {
                log_error(CA_COMP, 0, "--namespace \"%s\" is not a valid namespace name",
                          opt->namespace);
                return -EINVAL;
        }
        if (opt->lifetime_s < CA_MIN_LIFETIME_S || opt->lifetime_s > CA_MAX_LIFETIME_S) {
                log_error(CA_COMP, 0, "--lifetime %us is outside %us..%us", opt->lifetime_s,
                          CA_MIN_LIFETIME_S, CA_MAX_LIFETIME_S);
                return -EINVAL;
        }
        if (!opt->workers || !opt->queue || !opt->max_body || !(opt->rate > 0) || !opt->burst ||
            !opt->read_timeout_ms || !opt->tokenreview_timeout_ms) {
                log_error(CA_COMP, 0,
                          "workers, queue, max body, rate, burst and timeouts must "
                          "be above zero");
                return -EINVAL;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                log_error(CA_COMP, 0, "curl_global_init failed");
                return -EIO;
        }
        struct ca_service *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->opt = *opt;
        pthread_mutex_init(&s->mu, NULL);
        pthread_mutex_init(&s->rate.mu, NULL);
        s->rate.rate = opt->rate;
        s->rate.burst = opt->burst;
        s->rate.slots = calloc(RATE_SLOTS, sizeof(*s->rate.slots));
        int rc = s->rate.slots ? 0 : -ENOMEM;
        struct tls_ca_options co = {
            .state_dir = opt->ca_dir,
            .cert_file = opt->ca_cert,
            .key_file = opt->ca_key,
            .trust_domain = opt->trust_domain,
            .key_type = opt->key_type,
        };
        if (rc == 0 && !(opt->ca_cert && *opt->ca_cert) && !(opt->ca_dir && *opt->ca_dir)) {
                log_error(CA_COMP, 0,
                          "give --ca-dir (root created on first start) or --ca-cert "
                          "and --ca-key");
                rc = -EINVAL;
        }
        if (rc == 0)
                rc = tls_ca_open(&co, &s->ca);
        if (rc == 0) {
                X509 *ca = tls_ca_cert(s->ca);
                if (X509_check_issued(ca, ca) != X509_V_OK) {
                        s->chain_pem = tls_pem_encode_certs(&ca, 1);
                        rc = s->chain_pem ? 0 : -ENOMEM;
                }
        }
        if (rc == 0)
                rc = load_bundle(s, true);
        if (rc == 0) {
                char err[512];
                rc = k8s_creds_load(opt->kubeconfig, &s->creds, err, sizeof(err));
                if (rc < 0)
                        log_error(CA_COMP, 0,
                                  "%s (TokenReview needs the API server: give "
                                  "--kubeconfig or run in a pod)",
                                  err);
        }
        if (rc == 0)
                rc = server_names(s);
        if (rc == 0)
                rc = node_agents(s);
        struct ca_http_options ho = {
            .listen = opt->listen,
            .workers = opt->workers,
            .queue = opt->queue,
            .read_timeout_ms = opt->read_timeout_ms,
            .max_body = opt->max_body,
        };
        if (rc == 0)
                rc = ca_http_new(&ho, &s->http);
        if (rc == 0)
                rc = serving_renew(s);
        if (rc == 0)
                rc = ca_http_route(s->http, "POST", "/v1/certificates", handle_certificates, s,
                                   true, 0);
        if (rc == 0)
                rc = ca_http_route(s->http, "GET", "/v1/bundle", handle_bundle, s, false, 0);
        if (rc == 0)
                rc = ca_http_route(s->http, "GET", "/healthz", handle_healthz, s, false, 0);
        if (rc == 0)
                rc = ca_http_route(s->http, "GET", "/ready", handle_ready, s, false, 0);
        if (rc < 0) {
                ca_service_free(s);
                return rc;
        }
        char serial[80], agents[CA_MAX_NODE_AGENTS * 320] = "";
        tls_cert_serial_hex(tls_ca_cert(s->ca), serial, sizeof(serial));
        for (size_t i = 0; i < s->n_node_agents; i++)
                snprintf(agents + strlen(agents), sizeof(agents) - strlen(agents), "%s%s",
                         i ? ", " : "", s->node_agents[i]);
        log_info(CA_COMP, 0,
                 "shunt-ca: CA %s, trust domain %s, audience %s, TokenReview at %s (%s credentials "
                 "from %s), lifetime %us, node agents: %s, listening on %s (port %u)",
                 serial, opt->trust_domain, opt->audience, k8s_creds_server(s->creds),
                 k8s_creds_mode(s->creds), k8s_creds_origin(s->creds), opt->lifetime_s,
                 agents[0] ? agents : "none", opt->listen, ca_http_port(s->http));
        *out = s;
        return 0;
}

int ca_service_route(struct ca_service *s, const char *method, const char *path, ca_handler_fn fn,
                     void *ctx, size_t max_body)
{
        return ca_http_route(s->http, method, path, fn, ctx, false, max_body);
}

uint16_t ca_service_port(const struct ca_service *s)
{
        return ca_http_port(s->http);
}

int ca_service_run(struct ca_service *s)
{
        return ca_http_run(s->http, tick, s);
}

void ca_service_stop(struct ca_service *s)
{
        ca_http_stop(s->http);
}

void ca_service_free(struct ca_service *s)
{
        if (!s)
                return;
        ca_http_free(s->http);
        k8s_creds_free(s->creds);
        tls_ca_free(s->ca);
        free(s->bundle_pem);
        free(s->chain_pem);
        for (size_t i = 0; i < s->n_server_sans; i++)
                free(s->server_sans[i]);
        free(s->server_sans);
        for (size_t i = 0; i < s->n_node_agents; i++)
                free(s->node_agents[i]);
        free(s->node_agents);
        free(s->rate.slots);
        pthread_mutex_destroy(&s->rate.mu);
        pthread_mutex_destroy(&s->mu);
        free(s);
        curl_global_cleanup();
}

/* SPDX-License-Identifier: Apache-2.0 */
/* Outbound routing: from an original destination to an upstream address.
 *
 * The main thread turns each discovery snapshot into a route table: one
 * load-balancer table per (service, port), built from the endpoints that
 * serve that port, carrying each table's state over from the previous route
 * table. Workers look the original destination up by virtual address and
 * port and pick an endpoint without a lock. The component between discovery
 * (the registry it reads) and lb (the tables, breakers and outlier detection
 * it drives); the proxy engines are its users. */
#ifndef SHUNT_ROUTE_ROUTE_H
#define SHUNT_ROUTE_ROUTE_H

#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "discovery/registry.h"
#include "lb/lb.h"
#include "lb/resilience.h"

struct route_table;

enum route_result {
        ROUTE_PASSTHROUGH = 0, /* not a known service: relay to the original destination */
        ROUTE_ENDPOINT,        /* a service endpoint was picked */
        ROUTE_NO_ENDPOINT,     /* a known service with no endpoint that can serve */
        ROUTE_NO_ROUTE,        /* the service port has routes and none matched: 404 */
        ROUTE_REDIRECT,        /* the matched rule redirects: use->rule says where */
        ROUTE_ABORT,           /* the rule's fault injection aborts it: use->rule->abort_* */
        ROUTE_RATE_LIMITED,    /* the rule's rateLimit refused it: 429 (gRPC RESOURCE_EXHAUSTED),
                                  Retry-After use->retry_after_s */
};

/* How one attempt (a request, or for plain TCP a connection) on an endpoint
 * ended; feeds the endpoint's circuit breaker, outlier detection and
 * discovery's passive health. */
enum route_outcome {
        ROUTE_SUCCESS = 0,     /* a response below 500; TCP: the connect succeeded */
        ROUTE_HTTP_5XX,        /* the upstream answered 5xx (gRPC: UNAVAILABLE) */
        ROUTE_CONNECT_FAILURE, /* refused, unreachable or connect timeout: nothing was sent */
        ROUTE_TIMEOUT,         /* no (complete) response within timeouts.request */
        ROUTE_RESET,           /* reset or closed before the response was complete */
        ROUTE_CANCELLED,       /* ended without a verdict (the client left): counts nowhere */
};
const char *route_outcome_name(enum route_outcome o);

/* What a connection or request keeps of its route while it lives. Owned by
 * one worker; route_release frees everything it holds. */
struct route_use {
        struct route_table *table; /* a reference, or NULL */
        struct lb_ep_state *ep;    /* counted with lb_conn_begin, or NULL */
        uint32_t entry;
        enum proto declared; /* the port's declared protocol, PROTO_UNKNOWN if none */
        uint8_t held;        /* ROUTE_HELD_* (private) */
        uint8_t retries;     /* retries granted so far to this request */
        uint8_t routed;      /* the service port has traffic routes */
        uint32_t disc_ep;    /* the picked endpoint's index in the discovery snapshot */
        uint8_t tier;        /* the picked endpoint's locality tier (lb.h) */
        /* Its name ("local", "region", "failover1", "remote"; a static
         * string, still valid after route_release), NULL without tiers. */
        const char *locality;
        /* The traffic route rule and match the request took (NULL: none).
         * Valid while use holds its table (ROUTE_ENDPOINT), else until the
         * worker next refreshes its route table: use them at once. */
        const struct dr_rule *rule;
        const struct dr_match *match;
        /* The rule's fault delay drawn for this request (ms, 0: none): the
         * engine holds the request on a timer that long before its first
         * attempt (the picked endpoint stays held meanwhile). */
        uint32_t delay_ms;
        uint32_t retry_after_s; /* ROUTE_RATE_LIMITED: when a token is back (s, >= 1) */
        uint8_t mirror;         /* the rule's RequestMirror drew this request */
        uint32_t mirror_entry;  /* private: the mirror backend's entry */
};

/* Builds a route table from a discovery snapshot (taking a reference to it)
 * and cfg, reusing prev's load-balancer state. Returns NULL on allocation
 * failure (logged). */
struct route_table *route_table_build(const struct disc_snapshot *disc,
                                      const struct shunt_config *cfg,
                                      const struct route_table *prev);
struct snapshot *route_table_snapshot(struct route_table *t);

/* Per worker: the load-balancer cursors for each entry of the table the
 * worker last saw. */
struct route_workers;
void route_workers_free(struct route_workers *rw);

/* Picks the upstream for dst. On ROUTE_ENDPOINT, *upstream is the endpoint
 * and use holds a table reference and an active-connection count; release
 * with route_release. exclude, when set, is an address not to pick again
 * (a retry after a failed connect) unless nothing else is left. */
enum route_result route_pick(struct route_table *t, struct route_workers **rw, uint64_t seed,
                             const struct sockaddr_storage *dst,
                             const struct sockaddr_storage *client,
                             const struct sockaddr_storage *exclude,
                             struct sockaddr_storage *upstream, struct route_use *use);
/* As route_pick for one request: key_hash is the request's hash key
 * (lb_hash_header_value / lb_hash_cookie of route_hash_key's key), NULL
 * when the request has none; the hash algorithms then hash the client's
 * source address. */
enum route_result route_pick_request(struct route_table *t, struct route_workers **rw,
                                     uint64_t seed, const struct sockaddr_storage *dst,
                                     const struct sockaddr_storage *client,
                                     const uint64_t *key_hash, struct sockaddr_storage *upstream,
                                     struct route_use *use);
/* As route_pick_request, after the service port's traffic routes
 * (discovery/routes.h) when it has some: the first rule req matches in
 * precedence order picks a backend by weight (random, or by key_hash when
 * the rule is sticky), then an endpoint of that backend. Besides the
 * results above: ROUTE_NO_ROUTE (no rule matched: answer 404) and
 * ROUTE_REDIRECT (answer use->rule's redirect, see dr_redirect_location),
 * ROUTE_ABORT (an injected fault: answer use->rule->abort_http, gRPC
 * abort_grpc), ROUTE_RATE_LIMITED (the rule's local rate limit, keyed
 * by client's address when per source); a ROUTE_ENDPOINT may carry an
 * injected delay (use->delay_ms);
 * neither holds anything. Hits are counted per rule and backend. */
enum route_result route_pick_http(struct route_table *t, struct route_workers **rw, uint64_t seed,
                                  const struct sockaddr_storage *dst,
                                  const struct sockaddr_storage *client, const uint64_t *key_hash,
                                  const struct dr_request *req, struct sockaddr_storage *upstream,
                                  struct route_use *use);
/* The request edits of use's rule (its RequestHeaderModifier and
 * URLRewrite), in a form both HTTP engines apply: fields to drop (remove,
 * and set's names), fields to add (set, then add), the new path (with the
 * request's query) and Host / :authority. */
#define ROUTE_EDITS_MAX (2 * DR_MAX_HEADER_OPS + 1)
struct route_edits {
        const char *drop[ROUTE_EDITS_MAX];
        size_t ndrop;
        const char *add_name[ROUTE_EDITS_MAX];
        const char *add_value[ROUTE_EDITS_MAX];
        size_t nadd;
        const char *host; /* NULL: kept */
        int path_len;     /* -1: the path is kept */
        char path[DR_VALUE_MAX * 2];
};
/* Fills e for a request to path[0..path_len) (origin form). False when use
 * took no rule or its rule edits nothing. */
bool route_request_edits(const struct route_use *use, const char *path, size_t path_len,
                         struct route_edits *e);
/* The same for the response (ResponseHeaderModifier; no path or host). */
bool route_response_edits(const struct route_use *use, struct route_edits *e);
/* When use's rule mirrors this request (drawn by its percent): an endpoint
 * of the mirror backend in *addr (no breaker or limit is involved, nothing
 * is held). False when not mirrored, or no endpoint (then count a drop). */
bool route_mirror_pick(struct route_use *use, struct route_workers **rw, uint64_t seed,
                       const struct sockaddr_storage *client, struct sockaddr_storage *addr);
/* Counts a mirrored request of use's rule: sent, or dropped (a bound, no
 * endpoint). Nothing when use's rule did not draw a mirror. */
void route_mirror_count(const struct route_use *use, bool sent);
/* The request timeout for use: its rule's timeouts.request, else the
 * picked endpoint's locality tier's (load_balancing.tiers.*), else dflt. */
uint32_t route_timeout_ms(const struct route_use *use, uint32_t dflt);
/* The timeout of one try (an attempt on one endpoint, until the response
 * head): its rule's timeouts.backendRequest, 0 when none. A try past it
 * is reported ROUTE_TIMEOUT and may be retried (route_retry_allowed); the
 * request's timeout (route_timeout_ms) still bounds all its tries. */
uint32_t route_try_timeout_ms(const struct route_use *use);
/* The connect timeout for use's endpoint: its locality tier's, else dflt. */
uint32_t route_connect_timeout_ms(const struct route_use *use, uint32_t dflt);
/* use->locality: the picked endpoint's locality tier, NULL without tiers. */
const char *route_locality(const struct route_use *use);
/* GET /routes: {"services":[{"service","port","misses","rules":[...]}]}
 * for every service port with routes (service: NULL for all, or "name",
 * "ns/name"). */
void route_render_routes(struct route_table *t, const char *service, struct strbuf *sb);
/* What dst is, without picking: ROUTE_PASSTHROUGH (no service),
 * ROUTE_ENDPOINT (a service port with endpoints) or ROUTE_NO_ENDPOINT.
 * *declared gets the port's declared protocol (PROTO_UNKNOWN if none),
 * *hash_key (when not NULL) the service's load_balancing.hash_key ("" when
 * not set) and *name (when not NULL) "ns/name:port". */
enum route_result route_lookup(struct route_table *t, const struct sockaddr_storage *dst,
                               enum proto *declared, const char **hash_key, const char **name);
/* Inbound: the registry's mTLS mode for local, an address and port of this
 * pod that some service lists as one of its endpoints (the endpoint's own
 * mode, else its service's). Several services listing it: the strictest
 * mode set wins (strict, permissive, disabled).
 * DISC_MTLS_DEFAULT when no service sets one, or t is NULL. */
enum disc_mtls route_inbound_mtls(struct route_table *t, const struct sockaddr_storage *local);
/* The hash key of the service at dst as the registry gives it ("" when
 * none: load_balancing.hash_key applies), or NULL when dst is no service. */
const char *route_hash_key(struct route_table *t, const struct sockaddr_storage *dst);

/* ---- per request (HTTP/1.1 and HTTP/2 streams; relay.c per connection) ----
 *
 * The life of a request:
 *   route_pick_request -> route_limit_acquire(LB_LIMIT_REQUESTS) [503 on
 *   LB_ELIMIT] -> (connect or take a pooled connection) -> send ->
 *   route_request_done(outcome) -> on failure route_retry_allowed ->
 *   wait *backoff_ms -> route_retry_pick -> ... -> route_release.
 * Nothing here blocks or takes a lock. */

/* Reports how the attempt on use's endpoint ended (once per attempt;
 * upstream is the address it went to). Feeds the breaker, outlier detection
 * and passive health; ends a half-open probe. */
void route_request_done(struct route_use *use, const struct sockaddr_storage *upstream,
                        enum route_outcome o);
/* After route_request_done reported a failure: may the request be tried
 * again on another endpoint? Connect failures are retried for any request;
 * a reset, a try past its rule's per-try timeout (ROUTE_TIMEOUT with
 * timeouts.backendRequest set) and a 502/503/504 (status, else 0) only
 * when idempotent; a request timeout never. At most retries.max_retries per request, and the
 * service's retry budget must have room: retries in flight <= max(retries.budget_min,
 * retries.budget_percent % of the service's active requests). On true,
 * *backoff_ms is the jittered delay to wait before route_retry_pick (the
 * budget slot is held by use until route_release). False is counted
 * (budget exhausted, or attempts used up). */
bool route_retry_allowed(struct route_use *use, enum route_outcome o, int status, bool idempotent,
                         uint32_t *backoff_ms);
/* Moves use to another endpoint of the same service for the retry (not the
 * one in *upstream unless nothing else is left), keeping its limits and
 * budget slot; *upstream becomes the new endpoint. ROUTE_ENDPOINT, or
 * ROUTE_NO_ENDPOINT with use unchanged (release it and answer 503). */
enum route_result route_retry_pick(struct route_use *use, struct route_workers **rw, uint64_t seed,
                                   const struct sockaddr_storage *client, const uint64_t *key_hash,
                                   struct sockaddr_storage *upstream);
/* Per-service limits (limits.max_connections / max_pending_requests /
 * max_requests). 0, or LB_ELIMIT when the service is at its limit: counted
 * (shunt_limit_overflows_total) and the caller refuses (HTTP: 503 with
 * Retry-After; TCP: reset). A use holds each kind at most once; release is
 * idempotent and route_release releases whatever is still held. */
int route_limit_acquire(struct route_use *use, enum lb_limit_kind k);
void route_limit_release(struct route_use *use, enum lb_limit_kind k);

void route_release(struct route_use *use);
/* ---- main thread ---------------------------------------------------------- */

/* Time-driven transitions: ejections that ended, open breakers whose time
 * is up become half-open; refreshes what picks may choose. Called every
 * ROUTES_POLL_MS (100 ms) by shuntd, so these happen within 100 ms of due. */
void route_table_tick(struct route_table *t);
const struct disc_snapshot *route_table_disc(const struct route_table *t);
/* Prometheus families shunt_circuit_breaker_*, shunt_outlier_*, shunt_retr*,
 * shunt_limit_*, shunt_endpoint_active (t may be NULL: families only). */
void route_render_metrics(struct route_table *t, struct strbuf *out);
/* /endpoints: appends ,"resilience":[...] to a service's object (one item
 * per port: limits in use, retry budget, ejected vs cap, breakers per
 * state) and to an endpoint's (per port: breaker state, half_open_in_ms,
 * ejected_for_ms, ejections, active, available). */
void route_render_service(struct route_table *t, const struct disc_service *svc, struct strbuf *sb);
void route_render_endpoint(struct route_table *t, const struct disc_service *svc,
                           const struct sockaddr_storage *addr, const char *cluster,
                           struct strbuf *sb);
/* Operator override: forces the breaker of endpoint addr of service
 * ("ns/name", "name" or "ns/name:port") open, or releases it (closed).
 * 0 or -ENOENT. */
int route_force_open(struct route_table *t, const char *service,
                     const struct sockaddr_storage *addr, bool on);

/* The SPIFFE ID of the endpoint use picked ("" when it is not meshed or
 * there is no service) and its mTLS mode as the registry says it (the
 * endpoint's, else its service's; DISC_MTLS_DEFAULT when not set or no
 * service: the daemon's mtls.mode applies). Per endpoint: two endpoints of
 * one service may have different identities. */
const char *route_identity(const struct route_use *use);
enum disc_mtls route_mtls(const struct route_use *use);

/* How outbound traffic reaches an endpoint. */
enum route_security {
        ROUTE_PLAINTEXT = 0, /* not meshed (permissive) or mode disabled, or no service */
        ROUTE_MTLS,          /* originate mTLS and require the endpoint's identity */
        ROUTE_REFUSED,       /* not meshed (or no certificates) and its mode is strict */
};
const char *route_security_name(enum route_security s); /* "plaintext", "mtls", "refused" */
/* The decision for ep: its registry mode disabled (or not set and daemon,
 * the daemon's mtls.mode, disabled) -> plaintext; meshed and have_tls (this
 * daemon has certificates) -> mTLS; else the registry says strict (the
 * destination demands it) -> refused, otherwise plaintext. The daemon's own
 * strict mode is about its inbound side: it refuses nothing outbound. */
enum route_security route_endpoint_security(const struct disc_endpoint *ep, enum mtls_mode daemon,
                                            bool have_tls);
/* The same for the endpoint use picked (ROUTE_PLAINTEXT when none: a
 * passthrough destination). */
enum route_security route_security(const struct route_use *use, enum mtls_mode daemon,
                                   bool have_tls);
/* One line for a refusal: "<ns/name> endpoint <addr> is not meshed and its
 * mTLS mode is strict". */
void route_refusal(const struct route_use *use, const struct sockaddr_storage *upstream, char *buf,
                   size_t len);
/* "ns/name" of the service behind use, for logs. */
const char *route_service_name(const struct route_use *use);

#endif

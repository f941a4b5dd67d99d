/* SPDX-License-Identifier: Apache-2.0 */
/* Traffic routes of a service: the model, its JSON form, validation,
 * compilation and matching.
 *
 * A service may carry routes (the registry file's "routes" key; later the
 * Kubernetes HTTPRoute / GRPCRoute source). Each route has the fields and
 * semantics of a Gateway API HTTPRoute (gateway.networking.k8s.io/v1)
 * attached to the service (the GAMMA mesh profile): rules of matches,
 * filters and weighted backendRefs, timeouts and retry. A GRPCRoute's
 * method matches compile to path matches.
 *
 * Parsing validates strictly and compiles: every match of every rule
 * becomes one entry of a per-port table sorted by the Gateway API's
 * precedence (dr_precedence), regexes compiled (core/regex.h), methods
 * turned into small integers. The result is immutable and reference
 * counted; the registry keeps one per service and every snapshot that
 * includes it holds a reference, so workers match without locks. Only the
 * hit counters (atomics) change after parsing. */
#ifndef SHUNT_DISCOVERY_ROUTES_H
#define SHUNT_DISCOVERY_ROUTES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/regex.h"
#include "core/strbuf.h"

/* ---- bounds --------------------------------------------------------------- */
#define DR_MAX_ROUTES     32   /* per service */
#define DR_MAX_RULES      1024 /* per service, all routes */
#define DR_MAX_MATCHES    8    /* per rule */
#define DR_MAX_KV_MATCHES 16   /* header or query matches per match */
#define DR_MAX_BACKENDS   16   /* per rule */
#define DR_MAX_HEADER_OPS 16   /* per set/add/remove list */
#define DR_MAX_LABELS     8    /* per backend selector */
#define DR_VALUE_MAX      1024 /* a path, header value or rewrite (incl. NUL) */
#define DR_NAME_MAX       64   /* route, header, query and label names */
#define DR_WEIGHT_MAX     1000000
#define DR_LABELS_MAX     128 /* a selector or an endpoint's labels, "k=v,k=v" */
#define DR_TIMEOUT_MAX_MS 3600000u
#define DR_RETRY_MAX      10

enum dr_path_type {
        DR_PATH_PREFIX = 0, /* Gateway API PathPrefix (the default, "/") */
        DR_PATH_EXACT,
        DR_PATH_REGEX, /* RegularExpression */
};

enum dr_value_type {
        DR_VALUE_EXACT = 0,
        DR_VALUE_REGEX,
};

struct dr_kv_match { /* a header (case-insensitive name) or a query parameter */
        enum dr_value_type type;
        char *name;
        char *value;
        size_t value_len;
        struct regex *re;
};

/* One entry of a rule's matches (all of its conditions must hold). */
struct dr_match {
        enum dr_path_type path_type;
        char *path; /* "/" when none was given */
        size_t path_len;
        struct regex *path_re;
        int method; /* DR_METHOD_*, or -1 for any */
        struct dr_kv_match headers[DR_MAX_KV_MATCHES];
        uint32_t n_headers;
        struct dr_kv_match query[DR_MAX_KV_MATCHES];
        uint32_t n_query;
        uint32_t rule;  /* index in dr_routes.rules */
        uint32_t index; /* index in its rule's matches */
};

enum dr_method { /* as HTTPRoute's HTTPMethod */
                 DR_METHOD_GET = 0,
                 DR_METHOD_HEAD,
                 DR_METHOD_POST,
                 DR_METHOD_PUT,
                 DR_METHOD_DELETE,
                 DR_METHOD_CONNECT,
                 DR_METHOD_OPTIONS,
                 DR_METHOD_TRACE,
                 DR_METHOD_PATCH,
                 DR_METHOD__COUNT,
};
/* DR_METHOD_* of an upper-case method token, or -1. */
int dr_method_parse(const char *s, size_t n);

struct dr_header_op {
        char *name;
        char *value; /* NULL for remove */
};

struct dr_header_mod { /* HTTPHeaderFilter */
        struct dr_header_op set[DR_MAX_HEADER_OPS];
        uint32_t n_set;
        struct dr_header_op add[DR_MAX_HEADER_OPS];
        uint32_t n_add;
        struct dr_header_op remove[DR_MAX_HEADER_OPS];
        uint32_t n_remove;
};

enum dr_rewrite {
        DR_REWRITE_NONE = 0,
        DR_REWRITE_FULL,   /* ReplaceFullPath */
        DR_REWRITE_PREFIX, /* ReplacePrefixMatch: the matched prefix is replaced */
};

struct dr_backend {
        char name[DR_NAME_MAX];
        char ns[DR_NAME_MAX];
        uint16_t port;                /* 0: the routed port's number */
        uint32_t weight;              /* 0..DR_WEIGHT_MAX */
        char selector[DR_LABELS_MAX]; /* "k=v,k=v" sorted; "" for all endpoints */
        _Atomic uint64_t hits;
};

/* rateLimit (extension): a token bucket of `burst` requests refilled at
 * `rps` a second, for the rule as a whole or for each source of its
 * requests (per_source). State shared by the workers and changed
 * lock-free (route.c): the bucket is GCRA's theoretical arrival time (one
 * atomic); each thread takes the rule's tokens in chunks into a slot of
 * its own and spends them without touching the shared word. */
#define DR_RL_SLOTS   16   /* per-thread caches of the rule's bucket */
#define DR_RL_SOURCES 1024 /* source buckets of a per-source limit (a power of two) */
#define DR_RL_RPS_MAX 1000000
struct dr_rl_slot {
        _Atomic int64_t tokens;
        char pad[56]; /* one cache line each */
};
struct dr_rl_source {
        _Atomic uint64_t key; /* hash of the source | 1; 0: free */
        _Atomic uint64_t tat;
};
struct dr_ratelimit {
        double rps;
        uint32_t burst;
        bool per_source;
        uint64_t interval_ns; /* one token's worth of time: 1e9 / rps */
        uint32_t chunk;       /* tokens a thread takes from the rule's bucket at once */
        _Atomic uint64_t tat; /* the rule's bucket: GCRA's theoretical arrival time (ns) */
        struct dr_rl_slot slots[DR_RL_SLOTS];
        struct dr_rl_source *sources; /* per_source: DR_RL_SOURCES of them */
        _Atomic uint64_t limited;     /* requests refused (429) */
        _Atomic uint64_t evictions;   /* busy source buckets reused for another source */
};

struct dr_rule {
        uint32_t route; /* index in dr_routes.routes */
        uint32_t index; /* index in its route's rules */
        struct dr_backend backends[DR_MAX_BACKENDS];
        uint32_t n_backends; /* 0: the service itself */
        uint64_t total_weight;
        bool sticky; /* shunt extension: split by the request's hash key */
        bool has_req_hdr, has_resp_hdr;
        struct dr_header_mod req_hdr, resp_hdr;
        enum dr_rewrite rewrite;
        char *rewrite_path;
        char *rewrite_host; /* URLRewrite hostname, NULL when not set */
        bool redirect;
        char *redirect_scheme;    /* NULL: the request's */
        char *redirect_host;      /* NULL: the request's */
        uint16_t redirect_port;   /* 0: none given */
        uint16_t redirect_status; /* 301, 302 (default), 303, 307, 308 */
        enum dr_rewrite redirect_path_type;
        char *redirect_path;
        uint32_t timeout_ms;         /* timeouts.request, 0: the service default */
        uint32_t backend_timeout_ms; /* timeouts.backendRequest (a try's), 0: not set */
        int retry_attempts;          /* retry.attempts, -1: the service default */
        uint32_t retry_backoff_ms;   /* retry.backoff, 0: the service default */
        uint64_t retry_codes[2];     /* retry.codes: bit (code - 500) of 500..599; 0: default */
        /* fault.abort (extension): answer abort_http (gRPC: abort_grpc)
         * to abort_ppm of every million requests, without a backend. */
        uint32_t abort_ppm;
        uint16_t abort_http;
        int16_t abort_grpc;
        /* fault.delay (extension): hold delay_ppm of every million requests
         * for delay_ms before they go upstream (an aborted one is not held). */
        uint32_t delay_ppm;
        uint32_t delay_ms;
        struct dr_ratelimit *rl; /* rateLimit (extension), NULL: none */
        /* RequestMirror: a copy of mirror_ppm of every million requests to
         * mirror (its weight unused), answer discarded. */
        bool has_mirror;
        uint32_t mirror_ppm;
        struct dr_backend mirror;
        _Atomic uint64_t mirrors;      /* copies sent */
        _Atomic uint64_t mirror_drops; /* copies not sent: a bound, no endpoint */
        _Atomic uint64_t hits;
        _Atomic uint64_t faults; /* aborted */
        _Atomic uint64_t delays; /* delayed */
};

struct dr_route {
        char name[DR_NAME_MAX];
        uint16_t port; /* parentRefs port, 0: every port of the service */
        bool grpc;     /* GRPCRoute */
};

/* The precedence-sorted matches for one service port, and their index by
 * path: exact paths and prefixes hashed (kind 1 exact, 2 prefix), each
 * key with the positions of its matches in precedence order; regex paths
 * and the prefix "/" match any path and are always tried. A request tries
 * only the matches its path can take, in precedence order (routes.c). */
struct dr_idx_slot {
        uint64_t hash;
        const char *key;
        uint32_t len;
        uint32_t kind;   /* 0: empty */
        uint32_t off, n; /* its positions: pos[off .. off + n) */
};
struct dr_port_table {
        uint16_t port;
        const struct dr_match **matches;
        uint32_t n;
        struct dr_idx_slot *slots; /* mask + 1 of them */
        uint32_t mask;
        uint32_t *pos;     /* n positions: the always-tried first, then each key's */
        uint32_t n_always; /* pos[0 .. n_always) */
};

struct dr_routes {
        _Atomic uint32_t refs;
        struct dr_route *routes;
        uint32_t n_routes;
        struct dr_rule *rules;
        uint32_t n_rules;
        struct dr_match *matches;
        uint32_t n_matches;
        struct dr_port_table *ports;
        uint32_t n_ports;
        _Atomic uint64_t misses; /* requests on a routed port that no rule matched */
};

void dr_routes_ref(struct dr_routes *r);
void dr_routes_unref(struct dr_routes *r); /* NULL is fine */

/* ---- parsing ---------------------------------------------------------------- */

struct cJSON;
/* The service port numbers the routes may attach to, and the other services
 * a backendRef may name. */
struct dr_parse_ctx {
        const char *ns; /* the service's namespace: backendRefs default to it */
        const char *name;
        const uint16_t *ports;
        uint32_t n_ports;
        /* Whether ns/name exists and has port (0: any port); NULL: not checked. */
        bool (*service_exists)(void *ctx, const char *ns, const char *name, uint16_t port);
        void *ctx;
        /* Gateway API semantics for matches that tie (the Kubernetes source):
         * kept, the first in precedence wins, instead of refused as an
         * overlap (the registry file's stricter rule). */
        bool overlaps_allowed;
};

/* Parses and compiles a service's "routes" array. 0 with *out set (NULL
 * for an empty array), or -EINVAL with a one-line reason in err, its JSON
 * path relative to the array ("[0].rules[1].matches[0].path.value") in
 * path and the offending node in *where (for a line number). */
int dr_routes_parse(const struct cJSON *arr, const struct dr_parse_ctx *pc, struct dr_routes **out,
                    char *err, size_t errlen, char *path, size_t pathlen,
                    const struct cJSON **where);

/* ---- matching (workers) ---------------------------------------------------- */

/* What a request offers to matching. */
struct dr_request {
        int method;       /* DR_METHOD_*, -1 for another */
        const char *path; /* the origin-form target: path, then '?' and the query */
        size_t path_len;
        /* The first value of a header (case-insensitive name); false when absent. */
        bool (*header)(void *ctx, const char *name, const char **value, size_t *len);
        void *ctx;
};

/* The port table for port, or NULL when no route attaches to it. */
const struct dr_port_table *dr_port_table(const struct dr_routes *r, uint16_t port);
/* The first entry of t that req matches, in precedence order, or NULL. */
const struct dr_match *dr_match_request(const struct dr_port_table *t,
                                        const struct dr_request *req);
/* Picks a backend of rule by weight: r is a uniform 64-bit number (random,
 * or the request's hash key when the rule is sticky). Index, or -1 when the
 * rule has no backend (the service itself). */
int dr_pick_backend(const struct dr_rule *rule, uint64_t r);

/* The path the backend sees: the rule's rewrite of req's path (the query is
 * kept). Writes into buf (NUL-terminated); returns the length, or -1 when
 * it does not fit or the rule has no rewrite. */
int dr_rewrite_path(const struct dr_rule *rule, const struct dr_match *m, const char *path,
                    size_t path_len, char *buf, size_t cap);
/* The Location of a redirect rule for a request to host (its Host or
 * :authority) and path, "scheme://host[:port]/path". -1 when it does not fit. */
int dr_redirect_location(const struct dr_rule *rule, const struct dr_match *m, const char *scheme,
                         const char *host, size_t host_len, const char *path, size_t path_len,
                         char *buf, size_t cap);

/* A JSON object of labels ({"version": "v2"}) as "k=v,k=v" sorted by key
 * into out. 0, or -EINVAL with the reason in why. */
int dr_labels_format(const struct cJSON *obj, char *out, size_t cap, char *why, size_t whylen);
/* Whether an endpoint with labels ("k=v,k=v") is in selector ("" selects all). */
bool dr_labels_select(const char *selector, const char *labels);

/* ---- admin ------------------------------------------------------------------ */

/* The routes for port as JSON: [{"route", "rule", "matches": [...],
 * "backends": [{"name", "namespace", "port", "weight", "selector", "hits"}],
 * "filters": [...], "hits"}] in precedence order of each rule's first
 * match. */
void dr_render_port(const struct dr_routes *r, uint16_t port, struct strbuf *sb);

#endif

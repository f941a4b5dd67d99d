/* SPDX-License-Identifier: Apache-2.0 */
/* Proxy internals shared by proxy.c (workers, listeners, reporting),
 * worker.c (services of a worker every connection kind uses), relay.c (one
 * connection's state machine) and the protocol engines. Private to
 * userspace/proxy/. */
#ifndef SHUNT_PROXY_PROXY_INT_H
#define SHUNT_PROXY_PROXY_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "core/proto.h"
#include "proxy/proxy.h"
#include "route/route.h"

enum conn_dir {
        DIR_INBOUND = 0,
        DIR_OUTBOUND = 1,
};

/* Why a connection ended or was refused; each has a counter. */
enum conn_reason {
        REASON_DONE = 0,        /* both sides closed cleanly */
        REASON_CLIENT_RESET,    /* the client reset or errored */
        REASON_UPSTREAM_RESET,  /* the upstream reset or errored mid-stream */
        REASON_CONNECT_REFUSED, /* upstream refused or unreachable */
        REASON_CONNECT_TIMEOUT,
        REASON_IDLE_TIMEOUT,
        REASON_NO_ORIGINAL_DST, /* accepted but not redirected, or the kernel could not say */
        REASON_LOOP,            /* original destination is one of our own listeners */
        REASON_OVERLOAD,        /* max_connections reached: shed */
        REASON_NO_MEMORY,
        REASON_SOCKET,              /* socket/setsockopt/connect failed locally */
        REASON_SHUTDOWN,            /* closed by the daemon's shutdown after the drain */
        REASON_NO_ENDPOINT,         /* a known service with no endpoint that can serve */
        REASON_UNKNOWN_DESTINATION, /* outbound_policy registry_only: not a known service */
        REASON_TLS_HANDSHAKE,       /* mTLS handshake failed or timed out (audit line says why) */
        REASON_PLAINTEXT_REFUSED,   /* inbound plaintext with mtls.mode strict */
        REASON_TLS_PORT_MISMATCH,   /* the SNI port is not the original destination's */
        REASON_AUTHZ_REFUSED,       /* no identity on a port with authorization policies */
        REASON_MTLS_REQUIRED, /* outbound: the endpoint is not meshed and its mode is strict */
        REASON_NOT_READY,     /* node mode: the pod's routes or certificate not there in time */
        REASON__COUNT,
};

/* Responses shuntd makes itself on the HTTP paths; each has a counter. */
enum http_local {
        HTTP_LOCAL_400 = 0, /* malformed request (also 414, 501, 505 for what they mean) */
        HTTP_LOCAL_431,     /* request head over the limits */
        HTTP_LOCAL_502,     /* the upstream failed or answered garbage */
        HTTP_LOCAL_503,     /* no endpoint can serve */
        HTTP_LOCAL_504,     /* no response within timeouts.request */
        HTTP_LOCAL_OTHER,
        HTTP_LOCAL__COUNT,
};

enum stat_id {
        ST_ACCEPTED_IN,
        ST_ACCEPTED_OUT,
        ST_ACCEPT_PAUSED, /* listeners paused: no descriptor left (EMFILE/ENFILE) */
        ST_ACTIVE_IN,
        ST_ACTIVE_OUT,
        ST_BYTES_UPSTREAM,   /* client -> upstream */
        ST_BYTES_DOWNSTREAM, /* upstream -> client */
        ST_ORIGDST_OK,
        ST_ORIGDST_NOT_REDIRECTED,
        ST_ORIGDST_ERROR,
        ST_SNIFF_TIMEOUT,
        ST_ROUTE_SERVICE,     /* outbound connections routed to a service endpoint */
        ST_ROUTE_PASSTHROUGH, /* outbound connections relayed to their original destination */
        ST_CONNECT_RETRIES,   /* connects retried on another endpoint */
        /* upstream connections of request-level proxying (upstream.c) */
        ST_UPSTREAM_OPENED,
        ST_UPSTREAM_REUSED,       /* taken from the idle pool */
        ST_UPSTREAM_IDLE,         /* gauge: in the idle pool now */
        ST_UPSTREAM_IDLE_EXPIRED, /* closed by http.upstream_idle_timeout */
        ST_UPSTREAM_IDLE_PEER,    /* closed because the server closed it while idle */
        ST_UPSTREAM_POOL_FULL,    /* not pooled: http.upstream_max_idle reached */
        /* HTTP/1.1 requests (h1proxy.c), by the status the client got */
        ST_HTTP_STATUS_FIRST,                       /* 1xx .. 5xx: five counters */
        ST_HTTP_ABORTED = ST_HTTP_STATUS_FIRST + 5, /* ended without a complete response */
        ST_HTTP_RETRIES,                            /* requests re-sent after an upstream failure */
        ST_HTTP_LOCAL_FIRST, /* responses shuntd made itself: one per enum http_local */
        /* HTTP/2 and gRPC request proxying (h2proxy.c) */
        ST_H2_CONNS = ST_HTTP_LOCAL_FIRST + HTTP_LOCAL__COUNT, /* handed to the HTTP/2 proxy */
        ST_H2_STREAMS,                                         /* request streams proxied */
        ST_H2_STREAMS_ACTIVE,                                  /* gauge */
        ST_H2_UP_OPENED,                                       /* upstream HTTP/2 sessions opened */
        ST_H2_UP_ACTIVE,                                       /* gauge */
        ST_H2_UP_FAILED,      /* upstream sessions that failed (connect, TLS, reset) */
        ST_H2_STREAM_RETRIES, /* streams moved to another endpoint before any byte went out */
        ST_H2_REPLY_503,      /* local answers: nothing could serve (gRPC: UNAVAILABLE) */
        ST_H2_REPLY_504,      /* upstream timeout (gRPC: DEADLINE_EXCEEDED) */
        ST_H2_REPLY_431,      /* request header list over the limit (gRPC: RESOURCE_EXHAUSTED) */
        ST_H2_STREAM_RESETS,  /* streams reset towards the client after the response began */
        ST_H2_STREAM_STALLS,  /* streams ended: no progress for http2.stream_stall_timeout */
        ST_H2_FLOOD,          /* connections closed for a frame flood (GOAWAY ENHANCE_YOUR_CALM) */
        ST_H2_PROTOCOL_ERROR, /* connections closed for an HTTP/2 protocol error */
        ST_H2_WRITE_STALL,    /* connections closed: the client stopped reading */
        ST_GRPC_STATUS_FIRST, /* one per gRPC status code 0..16 */
        ST_GRPC_STATUS_LAST = ST_GRPC_STATUS_FIRST + 16,
        /* in-kernel splice of plain TCP relays (relay.c, intercept/splice.h) */
        ST_SPLICE_STARTED,         /* connections handed to the kernel */
        ST_SPLICE_ACTIVE,          /* gauge: spliced connections open now */
        ST_SPLICE_FALLBACK_FULL,   /* left to the userspace relay: a splice map was full */
        ST_SPLICE_FALLBACK_KERNEL, /* left to the userspace relay: the kernel cannot splice */
        ST_SPLICE_FALLBACK_ERROR,  /* left to the userspace relay: an insert failed */
        ST_SPLICE_RETURNED_FIN,    /* halves back in userspace for a FIN or an error */
        ST_SPLICE_RETURNED_FLOW,   /* halves back in userspace by flow control */
        ST_SPLICE_OVERRUN,         /* connections reset: the kernel repeated spliced bytes */
        ST_PROTO_FIRST,            /* one per enum proto, PROTO_UNKNOWN unused */
        ST_REASON_FIRST = ST_PROTO_FIRST + PROTO__COUNT,
        ST__COUNT = ST_REASON_FIRST + REASON__COUNT,
};

/* Counters have a single writer (the owning worker) and are read by the
 * admin thread: relaxed atomic loads and stores, no read-modify-write. */
struct worker_stats {
        _Atomic uint64_t v[ST__COUNT];
};

static inline void stat_add(struct worker_stats *s, enum stat_id id, uint64_t n)
{
        uint64_t cur = atomic_load_explicit(&s->v[id], memory_order_relaxed);
        atomic_store_explicit(&s->v[id], cur + n, memory_order_relaxed);
}

static inline void stat_sub(struct worker_stats *s, enum stat_id id, uint64_t n)
{
        uint64_t cur = atomic_load_explicit(&s->v[id], memory_order_relaxed);
        atomic_store_explicit(&s->v[id], cur - n, memory_order_relaxed);
}

struct listener {
        struct loop_io io;
        enum conn_dir dir;
        struct sockaddr_storage addr;
        bool listen_pending; /* bound, listen() waits for proxy_start_accepting */
};

#define WORKER_MAX_LISTENERS 4 /* bound by one worker: {inbound, outbound} x {IPv4, IPv6} */
#define WORKER_BUF_CACHE     64

struct conn;
struct proxy;
struct upstream_pool;
struct h1_worker;
struct h2_worker;
struct tls_conn;
struct obs_worker;

struct worker {
        struct proxy *proxy;
        int index;
        pthread_t thread;
        bool started;
        struct loop *loop;
        struct listener *listeners; /* more than 4 when taken over from more workers */
        int n_listeners;
        struct snapshot_reader cfg_reader;
        struct snapshot_reader route_reader;
        struct snapshot_reader tls_reader; /* when proxy->tls_slot is set */
        struct snapshot_reader authz_reader;
        struct route_workers *route_workers;  /* lb cursors for the route table */
        struct conn *conns;                   /* doubly linked list of live connections */
        uint8_t *buf_cache[WORKER_BUF_CACHE]; /* free relay buffers of buf_cache_size */
        int n_buf_cache;
        uint32_t buf_cache_size;
        uint64_t overload_logged_ms;
        uint64_t fd_logged_ms;
        int spare_fd;                    /* given up to accept and reset when none is left */
        struct loop_timer accept_resume; /* ends a pause of the listeners (EMFILE/ENFILE) */
        struct upstream_pool *upstreams; /* idle upstream connections (upstream.c) */
        struct h1_worker *h1;            /* HTTP/1.1 sessions (h1proxy.c) */
        uint64_t rng;                    /* worker_random() state */
        struct h2_worker *h2;            /* HTTP/2 proxy state (h2proxy.c), created on first use */
        struct obs_worker *obs;          /* access-log and span rings (obs.h), on first use */
        struct mirrors *mirrors;         /* route mirrors' copies (mirror-int.h), on first use */
        struct worker_stats stats;
};

struct proxy {
        struct worker *workers;
        int n_workers;
        struct snapshot_slot cfg_slot;
        struct snapshot_slot route_slot; /* struct route_table, published by main */
        struct route_table *routes;      /* main thread's view of the latest one */
        struct snapshot_slot *tls_slot;  /* the TLS store's (tls/store.h), or NULL: no mTLS */
        struct snapshot_slot authz_slot; /* struct authz (authz/authz.h), published by main */
        _Atomic uint64_t active;         /* over all workers, for max_connections */
        struct reqmetrics *reqm;         /* request and TCP metrics (reqmetrics.h), or NULL */
        struct tap_hub *tap;             /* GET /tap (tap.h) */
        uint32_t fd_conn_limit;          /* connections RLIMIT_NOFILE leaves room for */
        uint32_t fd_limit_reported;      /* max_connections last warned about (0: none) */
        _Atomic uint64_t next_conn_id;
        uint16_t inbound_port, outbound_port;
        proxy_socket_fn sock; /* makes the listening sockets (NULL: socket(2)); creation only */
        void *sock_ctx;
        bool accept_deferred;  /* taken over: listeners join epoll at proxy_start_accepting */
        _Atomic bool refusing; /* proxy_set_refusing: every accepted connection reset */
        bool splice;           /* tcp_splice auto and the splice program loaded (splice_open) */
        int (*worker_init)(void *ctx); /* proxy_set_worker_init */
        void *worker_init_ctx;
};

/* The connection limit in force: max_connections, or fewer when the
 * descriptor limit cannot hold that many. */
static inline uint32_t proxy_conn_limit(const struct proxy *p, const struct shunt_config *cfg)
{
        return cfg->max_connections < p->fd_conn_limit ? cfg->max_connections : p->fd_conn_limit;
}

static inline const struct shunt_config *worker_cfg(struct worker *w)
{
        struct snapshot *s = snapshot_reader_get(&w->cfg_reader, &w->proxy->cfg_slot);
        return (const struct shunt_config *)(const void *)s;
}

/* A xorshift64* step of the worker's generator (request ids, jitter). */
static inline uint64_t worker_random(struct worker *w)
{
        uint64_t x = w->rng ? w->rng : 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)w;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w->rng = x;
        return x * 0x2545f4914f6cdd1dull;
}

#define REQUEST_ID_LEN 36 /* a UUID in text form, without the NUL */

/* Writes a new version 4 UUID (RFC 9562) and a NUL to out, for requests that
 * arrive without an X-Request-ID: both hops can then log the same id. Hex is
 * written by hand: this runs for most requests. */
static inline void worker_request_id(struct worker *w, char out[REQUEST_ID_LEN + 1])
{
        static const char hex[] = "0123456789abcdef";
        uint64_t a = worker_random(w), b = worker_random(w);
        a = (a & ~0xf000ull) | 0x4000ull;                 /* version 4 */
        b = (b & ~(0xc000ull << 48)) | (0x8000ull << 48); /* variant 10 */
        char *p = out;
        for (int i = 0; i < 32; i++) {
                if (i == 8 || i == 12 || i == 16 || i == 20)
                        *p++ = '-';
                uint64_t v = i < 16 ? a : b;
                *p++ = hex[(v >> (60 - 4 * (i & 15))) & 0xf];
        }
        *p = '\0';
}

/* ---- protocol sessions: connections the relay hands over ------------------
 *
 * A connection whose protocol (declared for the port, or sniffed) has an
 * engine below is not relayed byte for byte: the relay hands the client
 * side to the engine, which proxies request by request. Outbound (to a
 * known service) the engine picks an endpoint for each request; inbound
 * (mTLS on for the port: mesh TLS terminated, or permissive plaintext) every
 * request goes to the local application at the original destination, and
 * the client side is the TLS connection from the peer's shuntd. To add an
 * engine, give it a struct proto_engine and list it in worker.c's engines[]
 * under its protocols. */

/* What the relay hands over. */
struct handoff {
        uint64_t id;
        enum conn_dir dir;
        int fd; /* client socket: non-blocking, not registered with the loop */
        /* Inbound mesh TLS, established and checked (its peer's identity is
         * the client's), or NULL: every client byte goes through it. The
         * engine frees it (tls_conn_free) before closing fd. */
        struct tls_conn *tls;
        enum proto proto;
        struct sockaddr_storage client_addr, orig_dst;
        uint8_t *buf; /* client bytes read so far, a worker buffer (worker_buf_take) or NULL */
        uint32_t len, cap;
        bool client_eof; /* the client already sent FIN */
        uint64_t created_ms;
        /* Only for an engine with takes_route, after sniffing: the endpoint
         * the relay picked for the connection (route.table NULL when none),
         * the engine's to use for the first request or release. Its
         * connection, when already open and silent, waits in the worker's
         * upstream pool. So a sniffed connection costs one pick, not two
         * (two picks per connection would skew round robin). */
        struct route_use route;
        /* Outbound with a route: the picked endpoint. Inbound: where every
         * request goes (the original destination, or the port a TLS client
         * sent to shuntd's own port named). */
        struct sockaddr_storage upstream;
};

struct proto_engine {
        const char *name;
        /* Takes h over, always: fd and buf are the engine's from now on, and
         * it ends the connection with session_end() (also on failure). */
        void (*start)(struct worker *w, struct handoff *h);
        /* Closes every session of w (shutdown) with reason. */
        void (*close_all)(struct worker *w, int reason);
        /* Appends w's sessions as /connections items. */
        void (*render)(struct worker *w, struct strbuf *out, bool *first);
        /* Frees the engine's per-worker state, after close_all. */
        void (*worker_free)(struct worker *w);
        /* Optional (NULL: nothing to do): the daemon drains; sessions end
         * as soon as they can (idle ones now, busy ones after what is in
         * flight). Workers stop accepting at the same time. */
        void (*drain)(struct worker *w);
        bool takes_route; /* gets handoff.route (else the relay releases it) */
};

extern const struct proto_engine h1_engine; /* h1proxy.c */
extern const struct proto_engine h2_engine; /* h2proxy.c: HTTP/2 and gRPC */

/* worker.c: a handed-over connection ended: counted as a connection of
 * direction dir that ended for reason (active gauges, max_connections,
 * reason counters). */
void session_end(struct worker *w, enum conn_dir dir, enum conn_reason reason);
/* Buffers of buffer_size from the worker's cache; *cap gets the size. */
uint8_t *worker_buf_take(struct worker *w, uint32_t *cap);
void worker_buf_give(struct worker *w, uint8_t *buf, uint32_t cap);
/* The engine that takes connections of protocol p over, or NULL (relayed). */
const struct proto_engine *engine_for(enum proto p);
/* Every engine's close_all / worker_free / drain / render, each engine once. */
void engines_close_all(struct worker *w, enum conn_reason reason);
void engines_worker_free(struct worker *w);
void engines_drain(struct worker *w);
void engines_render(struct worker *w, struct strbuf *out, bool *first);
const char *conn_dir_name(enum conn_dir d);
const char *conn_reason_name(enum conn_reason r);
/* /connections: opens one connection's object with the fields every kind
 * has (id, worker, direction, client, original_dst, upstream, service); the
 * caller appends its own and the closing brace. */
void conn_render_open(struct strbuf *out, bool *first, struct worker *w, uint64_t id,
                      enum conn_dir dir, const struct sockaddr_storage *client,
                      const struct sockaddr_storage *orig_dst, const char *upstream,
                      const char *service);

/* relay.c */
/* The size of one relayed connection's state (proxy_memory_bytes). */
size_t relay_conn_bytes(void);
/* fd was just accepted on l from peer. */
void relay_accept(struct worker *w, struct listener *l, int fd,
                  const struct sockaddr_storage *peer);
/* Closes fd with a reset (SO_LINGER 0) and counts reason. */
void relay_reject(struct worker *w, int fd, enum conn_reason reason);
void relay_close_all(struct worker *w, enum conn_reason reason);
void relay_render(struct worker *w, struct strbuf *out, bool *first);

#endif

/* Proxy internals shared by proxy.c (workers, listeners, reporting) and
 * relay.c (one connection's state machine). Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_PROXY_T_H
#define SHUNT_PROXY_PROXY_T_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/loop.h"
#include "core/snapshot.h"
#include "core/strbuf.h"
#include "intercept/sniff.h"
#include "proxy/route.h"

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
        REASON__COUNT,
};

enum stat_id {
        ST_ACCEPTED_IN,
        ST_ACCEPTED_OUT,
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
        ST_PROTO_FIRST,       /* one per enum proto, PROTO_UNKNOWN unused */
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
};

#define WORKER_MAX_LISTENERS 4 /* {inbound, outbound} x {IPv4, IPv6} */
#define WORKER_BUF_CACHE     64

struct conn;
struct proxy;

struct worker {
        struct proxy *proxy;
        int index;
        pthread_t thread;
        bool started;
        struct loop *loop;
        struct listener listeners[WORKER_MAX_LISTENERS];
        int n_listeners;
        struct snapshot_reader cfg_reader;
        struct snapshot_reader route_reader;
        struct snapshot_reader tls_reader;    /* when proxy->tls_slot is set */
        struct route_workers *route_workers;  /* lb cursors for the route table */
        struct conn *conns;                   /* doubly linked list of live connections */
        uint8_t *buf_cache[WORKER_BUF_CACHE]; /* free relay buffers of buf_cache_size */
        int n_buf_cache;
        uint32_t buf_cache_size;
        uint64_t overload_logged_ms;
        struct worker_stats stats;
};

struct proxy {
        struct worker *workers;
        int n_workers;
        struct snapshot_slot cfg_slot;
        struct snapshot_slot route_slot; /* struct route_table, published by main */
        struct route_table *routes;      /* main thread's view of the latest one */
        struct snapshot_slot *tls_slot;  /* the TLS store's (tls/store.h), or NULL: no mTLS */
        _Atomic uint64_t active;         /* over all workers, for max_connections */
        _Atomic uint64_t next_conn_id;
        uint16_t inbound_port, outbound_port;
};

static inline const struct shunt_config *worker_cfg(struct worker *w)
{
        struct snapshot *s = snapshot_reader_get(&w->cfg_reader, &w->proxy->cfg_slot);
        return (const struct shunt_config *)(const void *)s;
}

/* relay.c */
/* fd was just accepted on l from peer. */
void relay_accept(struct worker *w, struct listener *l, int fd,
                  const struct sockaddr_storage *peer);
void relay_close_all(struct worker *w, enum conn_reason reason);
void relay_render(struct worker *w, struct strbuf *out, bool *first);
const char *conn_reason_name(enum conn_reason r);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Upstream connections opened by the proxy itself, and a per-worker pool of
 * idle ones for request-level proxying.
 *
 * Every upstream socket is non-blocking, carries shuntd's SO_MARK (so the
 * capture rules let it pass) and TCP_NODELAY. When the service has a SPIFFE
 * identity the connection is mutual TLS (tls/conn.h): the SNI name carries the
 * endpoint's port, the server must present exactly that identity.
 *
 * A struct upstream has one owner at a time: the session using it (which gets
 * its events through a callback) or the worker's idle pool. Idle connections
 * are kept per (endpoint address, identity), at most http.upstream_max_idle
 * of them per endpoint and worker, and closed after http.upstream_idle_timeout
 * of idleness. That timeout is meant to be shorter than the servers' own
 * keep-alive timeout, so a reused connection does not race a server-side
 * close; an idle connection that becomes readable (the server closed it or
 * sent something unasked) is closed at once. Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_UPSTREAM_H
#define SHUNT_PROXY_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/loop.h"

struct worker;
struct tls_conn;
struct tls_snapshot;

/* ---- building blocks shared with relay.c -------------------------------------- */

/* Opens a TCP_NODELAY, non-blocking socket marked with mark (0: unmarked,
 * capture init excludes shuntd by uid) and starts connecting it to addr. Returns the fd (the
 * connect may still be in progress), or -errno; *what then names the step that failed ("socket",
 * "SO_MARK", "connect"). */
int upstream_socket(const struct sockaddr_storage *addr, uint32_t mark, const char **what);

/* The worker's current certificate snapshot, or NULL when mTLS is off. */
struct tls_snapshot *upstream_worker_tls(struct worker *w);

/* The readiness an epoll event mask brings (edge-triggered: it only ever
 * sets; the owner clears a flag when a call would block). TLS may need to
 * write to read and read to write: with tls any event lets both be tried. */
static inline void upstream_io_mark(uint32_t events, bool tls, bool *readable, bool *writable,
                                    bool *rdhup)
{
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                *readable = true;
        if (events & (EPOLLRDHUP | EPOLLHUP))
                *rdhup = true;
        if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                *writable = true;
        if (tls && events)
                *readable = *writable = true;
}

/* How a non-blocking connect on fd stands after an event: 1 still in
 * progress, 0 connected, else the errno it failed with. Writable without an
 * error event is a success: SO_ERROR is read (a syscall) only when the
 * event says there is an error. */
int upstream_connect_result(int fd, uint32_t events);

/* Starts client mTLS on the connected fd to identity (the SNI name carries
 * addr's port). 0, or -1 when there are no certificates or no memory. */
int upstream_tls_start(struct worker *w, int fd, uint64_t conn_id, const char *identity,
                       const struct sockaddr_storage *addr, struct tls_conn **tls);

/* Warnings about failed requests, at most one line a second per worker
 * and engine: a dead service under load must not flood the log (every
 * request still has its counters, HTTP/1.1 its access line). */
struct warn_limit {
        uint64_t last_ms;    /* last warning line */
        uint64_t suppressed; /* warnings left out since */
};
/* True when the caller may log now; first says (under component) how many
 * were left out since the last line. */
bool warn_limit_allow(struct warn_limit *wl, uint64_t now_ms, const char *component);

/* The key of a reusable upstream connection (the pool's, h2proxy's
 * sessions): a hash of (address, identity); equal addresses are
 * sockaddr_equal's (core/sockaddr.h). */
uint64_t upstream_key_hash(const struct sockaddr_storage *addr, const char *identity);

/* recv/send on fd, through tls when it is set; -1 with errno on failure. */
ssize_t upstream_io_recv(int fd, struct tls_conn *tls, void *buf, size_t len);
ssize_t upstream_io_send(int fd, struct tls_conn *tls, const void *buf, size_t len);
/* Ends our direction of fd: close_notify first when tls is set, then FIN.
 * 0, or -EAGAIN when the close_notify must wait for the socket (call again). */
int upstream_io_shutdown(int fd, struct tls_conn *tls);

/* ---- pooled connections ------------------------------------------------------ */

enum upstream_event {
        UPSTREAM_READY,  /* connected (and TLS established): requests may go */
        UPSTREAM_FAILED, /* connect, TLS handshake or their timeout failed: see fail_* */
        UPSTREAM_IO,     /* readiness changed: readable / writable / rdhup updated */
};

/* A connection's states (upstream_set_state checks them in debug builds):
 *
 *   state       event                                          next
 *   CONNECTING  connected, plaintext (READY to the owner)      OPEN
 *   CONNECTING  connected, mTLS to the endpoint's identity     HANDSHAKE
 *   CONNECTING  refused, timed out (FAILED to the owner)       DEAD
 *   HANDSHAKE   TLS established (READY)                        OPEN
 *   HANDSHAKE   handshake failed or timed out (FAILED)         DEAD
 *   OPEN        closed: by its owner, idle expiry, the server  DEAD
 *   DEAD        upstream_put after a failure: freed            DEAD
 *
 * An OPEN connection is its owner's or waits in the pool (in_pool); a
 * pooled one is handed out OPEN (reused). Upstreams made elsewhere
 * (upstream_adopt) start OPEN, in the pool. */
enum upstream_state {
        UPSTREAM_CONNECTING,
        UPSTREAM_HANDSHAKE,
        UPSTREAM_OPEN,
        UPSTREAM_DEAD, /* failed; only upstream_put may follow */
        UPSTREAM__COUNT,
};

bool upstream_transition_ok(enum upstream_state from, enum upstream_state to);

struct upstream;
typedef void (*upstream_fn)(struct upstream *u, enum upstream_event ev, void *owner);

/* Fields an owner reads; the owner clears readable/writable when a call
 * would block (edge-triggered). */
struct upstream {
        struct loop_io io;
        struct tls_conn *tls;
        enum upstream_state state;
        bool readable, writable, rdhup;
        bool reused;           /* taken from the idle pool */
        int fail_reason;       /* enum conn_reason when FAILED */
        const char *fail_what; /* one-line text when FAILED */
        uint64_t conn_id;      /* the session's id, for log lines */
        uint32_t requests;     /* requests carried so far */
        struct sockaddr_storage addr;
        /* private */
        struct worker *w;
        struct loop_timer timer; /* connect/handshake timeout, then idle expiry */
        upstream_fn fn;
        void *owner;
        struct upstream *pool_prev, *pool_next;
        uint32_t bucket;
        bool in_pool;
        char identity[256]; /* "" = plaintext */
};

/* An open connection to addr for owner: an idle one from the pool when one
 * is there (and !fresh): ready at once, state UPSTREAM_OPEN, reused set;
 * else a new one, whose UPSTREAM_READY or UPSTREAM_FAILED comes later
 * through fn. identity "" means plaintext. Returns NULL with *err (-errno)
 * and *what set when no socket could be made (nothing to retry on). */
struct upstream *upstream_get(struct worker *w, const struct sockaddr_storage *addr,
                              const char *identity, bool fresh, uint64_t conn_id, upstream_fn fn,
                              void *owner, int *err, const char **what);
/* A new connection's connect timeout (upstream_get armed
 * timeouts.connect): re-armed to ms while it is still connecting. */
void upstream_connect_timeout(struct upstream *u, uint32_t ms);
/* The owner is done with u: back to the idle pool when reusable (an open
 * connection that carried a complete exchange and holds no unread byte),
 * else closed. */
void upstream_put(struct upstream *u, bool reusable);
/* Reads u (through TLS when it has it); -1 with errno. */
ssize_t upstream_recv(struct upstream *u, void *buf, size_t len);

/* Puts an open connection made elsewhere (the relay's, before a hand-off)
 * into w's idle pool: fd (connected, non-blocking, not registered with
 * the loop) and tls (established, or NULL) are the pool's from now on. */
void upstream_adopt(struct worker *w, int fd, struct tls_conn *tls,
                    const struct sockaddr_storage *addr, const char *identity);

/* Closes every idle connection of w's pool and frees it (worker stop). */
void upstream_pool_free(struct worker *w);

#endif

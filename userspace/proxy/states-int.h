/* SPDX-License-Identifier: Apache-2.0 */
/* The state machines of the proxy's connection and session kinds: one enum
 * per kind, its transitions as a table (state, event, next state). Each
 * kind changes state only through its *_set_state helper, which asserts the
 * transition in debug builds; *_transition_ok is the table, for the unit
 * tests (tests/unit/test_relay.c, test_h1proxy.c, test_h2proxy.c). Flags left in the
 * structs are facts independent of the state (readiness, half-closes of a
 * tunnel, properties of the request in flight). Private to userspace/proxy/. */
#ifndef SHUNT_PROXY_STATES_INT_H
#define SHUNT_PROXY_STATES_INT_H

#include <stdbool.h>

/* ---- a relayed connection (relay.c, struct conn) ------------------------------
 *
 *   state       event                                             next
 *   PEEKING     mesh TLS (or any TLS in strict mode)              TLS_ACCEPT
 *   PEEKING     permissive plaintext or non-mesh TLS: relayed     CONNECTING
 *   PEEKING     the same, an engine's protocol: handed over       CLOSED
 *   PEEKING     strict plaintext, loop, authz, FIN, reset         CLOSED
 *   TLS_ACCEPT  handshake done, peer checked, its port agrees     TLS_SNIFF
 *   TLS_ACCEPT  handshake failed or timed out, port mismatch      CLOSED
 *   TLS_SNIFF   the plaintext's protocol: relayed                 CONNECTING
 *   TLS_SNIFF   an engine's protocol: handed over, or an error    CLOSED
 *   CONNECTING  a retry on another endpoint after its backoff     CONNECTING
 *   CONNECTING  connected, plaintext, protocol known              RELAYING
 *   CONNECTING  connected, plaintext, protocol not known yet      SNIFFING
 *   CONNECTING  connected, mTLS to the endpoint's identity        HANDSHAKE
 *   CONNECTING  no retry left, timeout, handed over, refused      CLOSED
 *   HANDSHAKE   TLS established (RELAYING when the protocol is    RELAYING
 *               known, else SNIFFING)                             SNIFFING
 *   HANDSHAKE   handshake failed or timed out, handed over        CLOSED
 *   SNIFFING    the protocol is known                             RELAYING
 *   SNIFFING    an error, the sniff deadline ends it              CLOSED
 *   RELAYING    one direction's FIN passed on                     HALF_CLOSED
 *   RELAYING    both done, a reset, idle timeout, handed over     CLOSED
 *   HALF_CLOSED the other direction done, a reset, idle timeout   CLOSED
 *
 * Inbound connections with mTLS on start in PEEKING, every other one in
 * CONNECTING (outbound with a verdict to apply once sniffed, see
 * conn.verdict, without connecting). Sniffing runs alongside CONNECTING and
 * HANDSHAKE: whether the protocol is known is conn.proto, not a state.
 * CLOSED is final: freed after the current epoll batch. */
enum conn_state {
        CONN_PEEKING,     /* inbound, mTLS on: the first bytes are peeked to decide */
        CONN_TLS_ACCEPT,  /* inbound mesh TLS handshake */
        CONN_TLS_SNIFF,   /* inbound TLS established: its plaintext is sniffed, the app waits */
        CONN_CONNECTING,  /* the upstream connect in flight, or a retry's backoff */
        CONN_HANDSHAKE,   /* outbound: TLS handshake with the peer's shuntd */
        CONN_SNIFFING,    /* connected, the protocol not known yet: the client's bytes wait */
        CONN_RELAYING,    /* bytes both ways */
        CONN_HALF_CLOSED, /* one direction's FIN passed on, the other still flows */
        CONN_CLOSED,
        CONN__COUNT,
};

bool conn_transition_ok(enum conn_state from, enum conn_state to);
/* The name /connections shows. */
const char *conn_state_name(enum conn_state st);

/* ---- an HTTP/1.1 client session (h1proxy.c, struct h1s) ----------------------
 *
 *   state    event                                              next
 *   IDLE     bytes of a request head arrive                     HEAD
 *   IDLE     client FIN, idle timeout, drain, error             CLOSED
 *   HEAD     complete head: the first upstream attempt starts   AWAIT
 *   HEAD     complete head, the route injects a delay           DELAY
 *   HEAD     refused head, CONNECT, no endpoint, 408: our reply CLOSING
 *   HEAD     client FIN mid-head, idle timeout, error           CLOSED
 *   AWAIT    final response head forwarded                      STREAM
 *   AWAIT    101 to a request that asked for an Upgrade         TUNNEL
 *   AWAIT    upstream failed, the retry policy allows another   BACKOFF
 *   AWAIT    a pooled connection broke: again on a fresh one    AWAIT
 *   AWAIT    502, 503 or 504 of ours                            CLOSING
 *   AWAIT    reset after 1xx, idle timeout, error               CLOSED
 *   STREAM   response out, keep-alive, nothing buffered         IDLE
 *   STREAM   response out, keep-alive, next head buffered       HEAD
 *   STREAM   response out, Connection: close (or drain)         CLOSING
 *   STREAM   upstream reset mid-body, idle timeout, error       CLOSED
 *   BACKOFF  backoff over: the next endpoint                    AWAIT
 *   BACKOFF  no endpoint left: 503                              CLOSING
 *   BACKOFF  client left mid-request, error                     CLOSED
 *   DELAY    the delay is over: the first attempt starts        AWAIT
 *   DELAY    no endpoint, limits, timeouts.request: our reply   CLOSING
 *   DELAY    client left mid-request, error                     CLOSED
 *   CLOSING  the last response is out: FIN sent                 LINGER
 *   CLOSING  nothing left to read, idle timeout, error          CLOSED
 *   LINGER   client FIN, or the linger time is over             CLOSED
 *   TUNNEL   both directions closed, idle timeout, error        CLOSED
 *
 * CLOSED is final: the session is freed after the current epoll batch and
 * ignores the events left in it. */
enum h1_state {
        H1_IDLE,    /* between requests: no byte of the next head; holds no buffer */
        H1_HEAD,    /* reading a request head */
        H1_AWAIT,   /* a request in flight, no final response head yet */
        H1_STREAM,  /* the response head went out: streaming the body */
        H1_BACKOFF, /* waiting to retry the request on another endpoint */
        H1_DELAY,   /* a route's fault delay: the request waits on a timer */
        H1_CLOSING, /* sending a last response, then FIN */
        H1_LINGER,  /* FIN sent: reading what the client still sends, for a moment */
        H1_TUNNEL,  /* after a 101 (Upgrade): bytes both ways until both sides closed */
        H1_CLOSED,
        H1__COUNT,
};

bool h1_transition_ok(enum h1_state from, enum h1_state to);
/* The name /connections shows ("closing" for CLOSING and LINGER). */
const char *h1_state_name(enum h1_state st);

/* ---- an HTTP/2 client connection (h2proxy.c, struct h2c) --------------------
 *
 *   state     event                                              next
 *   OPEN      the daemon drains: GOAWAY (NO_ERROR) sent          DRAINING
 *   OPEN      no memory, bad preface, no epoll, an idle GOAWAY   DEAD
 *             the client would not read
 *   OPEN      the session ended (FIN, GOAWAY, error, flood,      CLOSED
 *             write stall, shutdown)
 *   DRAINING  its last stream ended and everything went out      CLOSED
 *   DRAINING  an idle GOAWAY the client would not read           DEAD
 *   DRAINING  the session ended as in OPEN                       CLOSED
 *   DEAD      the next pump                                      CLOSED
 *
 * Why a connection ended badly is a separate fact (enum h2c_fault in
 * h2proxy.c: write stall, protocol error, flood), as is the client's FIN. */
enum h2c_state {
        H2C_OPEN,     /* serving streams */
        H2C_DRAINING, /* GOAWAY sent for the daemon's drain: ends with its last stream */
        H2C_DEAD,     /* closed at the next pump (never from inside nghttp2's callbacks) */
        H2C_CLOSED,
        H2C__COUNT,
};

/* ---- an HTTP/2 upstream session (h2proxy.c, struct h2u) ----------------------
 *
 *   state       event                                            next
 *   CONNECTING  connected, plaintext                             READY
 *   CONNECTING  connected, mTLS to the endpoint's identity       HANDSHAKE
 *   CONNECTING  no socket, no epoll (failed at the next pump)    DEAD
 *   CONNECTING  connect failed or timed out, shutdown            CLOSED
 *   HANDSHAKE   TLS established                                  READY
 *   HANDSHAKE   handshake failed or timed out, shutdown          CLOSED
 *   READY       the server sent GOAWAY: no new stream on it      GOAWAY
 *   READY       failed, idle timeout, the server closed it       CLOSED
 *   GOAWAY      as READY                                         CLOSED
 *   DEAD        the next pump: its streams retried or failed     CLOSED
 *
 * New streams go on CONNECTING, HANDSHAKE and READY sessions only. */
enum h2u_state {
        H2U_CONNECTING,
        H2U_HANDSHAKE,
        H2U_READY,
        H2U_GOAWAY,
        H2U_DEAD,
        H2U_CLOSED,
        H2U__COUNT,
};

bool h2c_transition_ok(enum h2c_state from, enum h2c_state to);
bool h2u_transition_ok(enum h2u_state from, enum h2u_state to);
/* The name /connections shows ("streams" while open). */
const char *h2c_state_name(enum h2c_state st);

#endif

// SPDX-License-Identifier: Apache-2.0
/* One proxied connection: accept, original destination, upstream connect in
 * parallel with protocol sniffing, then a bidirectional relay.
 *
 * Both sockets are registered once, edge-triggered, for input, output and
 * peer shutdown; readiness is tracked in flags that are cleared when a call
 * would block (or returns short), so a wake-up costs one read and one write
 * per direction and never an epoll_ctl. */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "authz/authz.h"
#include "core/log.h"
#include "core/sockaddr.h"
#include "intercept/origdst.h"
#include "intercept/sniff.h"
#include "intercept/splice.h"
#include "proxy/proxy-int.h"
#include "proxy/obs.h"
#include "proxy/reqmetrics.h"
#include "proxy/states-int.h"
#include "proxy/upstream.h"
#include "tls/conn.h"

#define RELAY_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
/* How long an upstream reset waits for the client send queue (reset_hold). */
#define RESET_HOLD_MS 1000

/* A socket; with tls set, every byte goes through the TLS connection. A TLS
 * side is never taken as drained after a short read (the TLS layer may hold
 * decrypted bytes epoll does not know about): it is read until -EAGAIN. */
struct side {
        struct loop_io io;
        bool readable;
        bool writable;
        bool rdhup; /* the peer's FIN is queued: a short read does not mean drained */
        bool psock; /* in the splice map: reads (its own queue, then TCP's) go until EAGAIN */
        struct tls_conn *tls;
};

/* Bytes flowing one way. The buffer is taken from the worker's cache when
 * bytes arrive and given back as soon as it is empty, so idle connections
 * hold no buffer memory. */
struct half {
        uint8_t *buf;
        uint32_t off, len, cap;
        uint64_t bytes;
        bool eof;  /* the source sent FIN */
        bool shut; /* FIN passed on to the destination */
        /* Spliced (splice.h): the kernel moves this direction's bytes, or
         * did and they may still be on their way to the destination, which
         * shuntd then may not write into yet (draining). */
        bool kernel, draining;
        bool wait_passed; /* an EOF came before every passed byte was read */
        bool src_reset;   /* the source was reset: failed once its bytes are out */
        uint64_t kfolded; /* kernel bytes already added to bytes */
        uint64_t uread;   /* bytes shuntd read from the source since the splice */
};

struct conn {
        struct worker *w;
        struct conn *prev, *next;
        uint64_t id;
        enum conn_dir dir;
        enum conn_state state; /* the one state of the connection: see states-int.h */
        enum proto proto;      /* PROTO_UNKNOWN until the sniffer (or the port) says */
        uint32_t sniffed_len;  /* bytes the sniffer has seen */
        struct side cli, up;
        struct half c2u, u2c;
        struct loop_timer timer;       /* connect timeout, then idle timeout */
        struct loop_timer sniff_timer; /* protocol_detection_timeout */
        uint64_t created_ms;
        uint64_t last_active_ms;
        struct sockaddr_storage client_addr, orig_dst, upstream;
        struct route_use route; /* the service endpoint, when routed */
        /* Inbound: mtls.mode, or the registry's "mtls" of the service this
         * pod's address and port serve (route_inbound_mtls). */
        enum mtls_mode in_mode;
        bool tls_out; /* outbound: originate TLS to the endpoint's identity */
        /* Inbound, sent to the inbound port itself: only mesh TLS may go on,
         * to the port its SNI name carries; the connect waits for it. */
        bool to_listener;
        /* Outbound, decided at accept and applied once sniffed, unless an
         * engine answers per request (a 503) instead: REASON_NO_ENDPOINT (a
         * known service with no endpoint; nothing is connected) or
         * REASON_MTLS_REQUIRED (strict and the endpoint is not meshed).
         * REASON__COUNT: none. */
        enum conn_reason verdict;
        char sni[256];
        _Atomic uint64_t *tcp_cells; /* shunt_tcp_* series, once relaying (reqmetrics.h) */
        /* tcp_splice: tried once per connection; spliced while in the map */
        bool splice_tried, spliced;
        struct splice_pair splice;
        struct loop_timer splice_timer; /* waits for a returning half's bytes to drain */
        uint32_t splice_wait_ms;
        uint64_t reset_by_ms; /* an upstream reset held until then at most (reset_hold) */
};

#define dir_name conn_dir_name

/* ---- the connection's state machine (states-int.h) ---------------------------- */

#define TO(x) (1u << (x))
static const unsigned conn_next[CONN__COUNT] = {
    [CONN_PEEKING] = TO(CONN_TLS_ACCEPT) | TO(CONN_CONNECTING) | TO(CONN_CLOSED),
    [CONN_TLS_ACCEPT] = TO(CONN_TLS_SNIFF) | TO(CONN_CLOSED),
    [CONN_TLS_SNIFF] = TO(CONN_CONNECTING) | TO(CONN_CLOSED),
    [CONN_CONNECTING] = TO(CONN_CONNECTING) | TO(CONN_HANDSHAKE) | TO(CONN_SNIFFING) |
                        TO(CONN_RELAYING) | TO(CONN_CLOSED),
    [CONN_HANDSHAKE] = TO(CONN_SNIFFING) | TO(CONN_RELAYING) | TO(CONN_CLOSED),
    [CONN_SNIFFING] = TO(CONN_RELAYING) | TO(CONN_CLOSED),
    [CONN_RELAYING] = TO(CONN_HALF_CLOSED) | TO(CONN_CLOSED),
    [CONN_HALF_CLOSED] = TO(CONN_CLOSED),
    [CONN_CLOSED] = 0,
};

bool conn_transition_ok(enum conn_state from, enum conn_state to)
{
        return (unsigned)from < CONN__COUNT && (unsigned)to < CONN__COUNT &&
               (conn_next[from] & TO(to));
}

const char *conn_state_name(enum conn_state st)
{
        static const char *const names[CONN__COUNT] = {
            [CONN_PEEKING] = "peeking",         [CONN_TLS_ACCEPT] = "tls_accept",
            [CONN_TLS_SNIFF] = "tls_sniffing",  [CONN_CONNECTING] = "connecting",
            [CONN_HANDSHAKE] = "tls_handshake", [CONN_SNIFFING] = "sniffing",
            [CONN_RELAYING] = "relaying",       [CONN_HALF_CLOSED] = "half_closed",
            [CONN_CLOSED] = "closed",
        };
        return (unsigned)st < CONN__COUNT ? names[st] : "unknown";
}

static void conn_set_state(struct conn *c, enum conn_state next)
{
        assert(conn_transition_ok(c->state, next));
        c->state = next;
}

static bool closed(const struct conn *c)
{
        return c->state == CONN_CLOSED;
}

/* The client's protocol is known (sniffed, or declared for the port). */
static bool proto_known(const struct conn *c)
{
        return c->proto != PROTO_UNKNOWN;
}

/* Connected to the upstream: bytes may flow (c2u once the protocol is known). */
static bool connected(const struct conn *c)
{
        return c->state == CONN_SNIFFING || c->state == CONN_RELAYING ||
               c->state == CONN_HALF_CLOSED;
}

/* The upstream is connected (and its TLS established): RELAYING when the
 * protocol is known, else SNIFFING until it is. */
static void conn_established(struct conn *c)
{
        conn_set_state(c, proto_known(c) ? CONN_RELAYING : CONN_SNIFFING);
}

/* ---- buffers ------------------------------------------------------------ */

static int half_take_buf(struct worker *w, struct half *h)
{
        h->buf = worker_buf_take(w, &h->cap);
        if (!h->buf)
                return -ENOMEM;
        h->off = h->len = 0;
        return 0;
}

static void half_give_buf(struct worker *w, struct half *h)
{
        worker_buf_give(w, h->buf, h->cap);
        h->buf = NULL;
        h->cap = h->off = h->len = 0;
}

/* ---- lifecycle -------------------------------------------------------------- */

/* Frees everything of c but the client socket and the counters. */
static void conn_detach(struct conn *c)
{
        struct worker *w = c->w;
        struct loop *loop = w->loop;
        loop_timer_cancel(loop, &c->timer);
        loop_timer_cancel(loop, &c->sniff_timer);
        loop_timer_cancel(loop, &c->splice_timer);
        tls_conn_free(c->cli.tls);
        tls_conn_free(c->up.tls);
        c->cli.tls = c->up.tls = NULL;
        if (c->up.io.fd >= 0) {
                loop_io_del(loop, &c->up.io);
                close(c->up.io.fd);
                c->up.io.fd = -1;
        }
        half_give_buf(w, &c->c2u);
        half_give_buf(w, &c->u2c);
        conn_set_state(c, CONN_CLOSED);
        if (c->prev)
                c->prev->next = c->next;
        else
                w->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        route_release(&c->route);
        /* An event for the other socket may still be pending in this batch. */
        loop_defer_free(loop, c);
}

/* Hands c's client over to engine e (see proxy-int.h): what was read from the
 * client goes along, and its TLS connection when inbound mesh TLS was
 * terminated; an upstream connect in flight is dropped (the engine
 * connects per request). */
static void conn_handoff(struct conn *c, const struct proto_engine *e)
{
        struct worker *w = c->w;
        struct handoff h = {
            .id = c->id,
            .dir = c->dir,
            .fd = c->cli.io.fd,
            .tls = c->cli.tls,
            .proto = c->proto,
            .client_addr = c->client_addr,
            .orig_dst = c->orig_dst,
            .buf = c->c2u.buf,
            .len = c->c2u.len,
            .cap = c->c2u.cap,
            .client_eof = c->c2u.eof,
            .created_ms = c->created_ms,
        };
        c->c2u.buf = NULL;
        c->c2u.len = c->c2u.cap = 0;
        c->cli.tls = NULL;
        if (c->dir == DIR_INBOUND)
                h.upstream = c->upstream;
        loop_io_del(w->loop, &c->cli.io);
        log_debug("proxy", c->id, "%s session for %s", e->name, route_service_name(&c->route));
        if (e->takes_route && c->route.table) {
                /* The pick goes along (limits of a connection are not a
                 * request's); an open, silent upstream goes to the pool. */
                route_limit_release(&c->route, LB_LIMIT_CONNECTIONS);
                h.route = c->route;
                h.upstream = c->upstream;
                memset(&c->route, 0, sizeof(c->route));
                if ((c->state == CONN_RELAYING || c->state == CONN_HALF_CLOSED) &&
                    c->up.io.fd >= 0 && c->u2c.len == 0 && !c->u2c.eof && !c->up.rdhup) {
                        loop_io_del(w->loop, &c->up.io);
                        upstream_adopt(w, c->up.io.fd, c->up.tls, &c->upstream,
                                       c->tls_out ? route_identity(&h.route) : "");
                        c->up.io.fd = -1;
                        c->up.tls = NULL;
                }
        }
        conn_detach(c);
        e->start(w, &h);
}

static void splice_finish(struct conn *c);
static bool splice_eof_early(struct conn *c, struct half *h);

static void conn_free(struct conn *c, enum conn_reason reason, bool reset_client)
{
        struct worker *w = c->w;
        struct loop *loop = w->loop;

        loop_timer_cancel(loop, &c->timer);
        loop_timer_cancel(loop, &c->sniff_timer);
        if (reset_client) {
                /* Pass an upstream reset on to the client as a reset. */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(c->cli.io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        splice_finish(c); /* the kernel's bytes counted before the access line */
        /* The access line while the client's identity is at hand. */
        const char *peer = c->dir == DIR_INBOUND
                               ? (c->cli.tls ? tls_conn_peer_id(c->cli.tls) : NULL)
                           : c->tls_out && c->route.table ? route_identity(&c->route)
                                                          : NULL;
        obs_tcp_end(w, &(struct obs_tcp_end){
                           .conn_id = c->id,
                           .inbound = c->dir == DIR_INBOUND,
                           .protocol = proto_name(proto_known(c) ? c->proto : PROTO_TCP),
                           .client = &c->client_addr,
                           .orig_dst = &c->orig_dst,
                           .upstream = &c->upstream,
                           .service = route_service_name(&c->route),
                           .peer_id = peer,
                           .locality = c->dir == DIR_OUTBOUND ? route_locality(&c->route) : NULL,
                           .bytes_received = c->c2u.bytes,
                           .bytes_sent = c->u2c.bytes,
                           .duration_ms = loop_now_ms(loop) - c->created_ms,
                           .end = conn_reason_name(reason),
                           .error = reason != REASON_DONE,
                       });
        /* Deregister before close(): a fork() elsewhere in the process (the
         * iptables commands) can hold the socket open for a moment, and a
         * closed but still open file keeps delivering events. */
        tls_conn_free(c->cli.tls);
        c->cli.tls = NULL;
        loop_io_del(loop, &c->cli.io);
        close(c->cli.io.fd);

        reqmetrics_tcp_close(c->tcp_cells);
        session_end(w, c->dir, reason);
        conn_detach(c);
}

/* ---- sniffing ------------------------------------------------------------------ */

static void sniff_finish(struct conn *c, enum proto proto, const struct sniff_result *r)
{
        c->proto = proto;
        if (c->state == CONN_SNIFFING)
                conn_set_state(c, CONN_RELAYING);
        loop_timer_cancel(c->w->loop, &c->sniff_timer);
        stat_add(&c->w->stats, ST_PROTO_FIRST + proto, 1);
        if (r && r->sni[0])
                snprintf(c->sni, sizeof(c->sni), "%s", r->sni);
        log_debug("sniff", c->id, "protocol %s%s%s", proto_name(proto), c->sni[0] ? " sni=" : "",
                  c->sni);
}

/* eBPF mode: the application's socket of an outbound connection may be on
 * the sk_msg shortcut, where a read returns the shortcut's bytes alone while
 * TCP bytes wait behind them (flow control, see origdst.h): only EAGAIN
 * says it is drained. */
static bool shortcut_side(const struct conn *c, const struct side *s)
{
        return origdst_shortcut_active() && c->dir == DIR_OUTBOUND && s == &c->cli;
}

/* recv/send on a side, through TLS when it has it; -1 with errno on failure. */
static ssize_t side_recv(struct side *s, void *buf, size_t len)
{
        return upstream_io_recv(s->io.fd, s->tls, buf, len);
}

static ssize_t side_send(struct side *s, const void *buf, size_t len)
{
        return upstream_io_send(s->io.fd, s->tls, buf, len);
}

/* Reads what the client has sent so far into c2u and asks the sniffer.
 * Returns a reason when the client side failed, else -1. */
static int sniff_step(struct conn *c)
{
        struct half *h = &c->c2u;
        if (!h->buf && half_take_buf(c->w, h) < 0)
                return REASON_NO_MEMORY;
        bool peek = c->state == CONN_PEEKING;
        if (peek && c->cli.readable && !h->eof) {
                /* The bytes stay in the socket: each new edge peeks them all again. */
                ssize_t n;
                do
                        n = recv(c->cli.io.fd, h->buf, h->cap, MSG_PEEK);
                while (n < 0 && errno == EINTR);
                c->cli.readable = false;
                if (n > 0)
                        h->len = (uint32_t)n;
                else if (n == 0)
                        h->eof = true;
                else if (errno != EAGAIN)
                        return REASON_CLIENT_RESET;
        }
        while (!peek && c->cli.readable && !h->eof && h->len < h->cap) {
                ssize_t n = side_recv(&c->cli, h->buf + h->len, h->cap - h->len);
                if (n > 0) {
                        /* A short read drained the socket, unless a FIN waits. */
                        if ((uint32_t)n < h->cap - h->len && !c->cli.rdhup && !c->cli.tls &&
                            !shortcut_side(c, &c->cli))
                                c->cli.readable = false;
                        h->len += (uint32_t)n;
                } else if (n == 0) {
                        h->eof = true;
                } else if (errno == EAGAIN) {
                        c->cli.readable = false;
                } else if (errno != EINTR) {
                        return REASON_CLIENT_RESET;
                }
        }
        int final = h->eof || h->len >= h->cap;
        if (h->len == c->sniffed_len && !final)
                return -1; /* nothing new to look at */
        c->sniffed_len = h->len;
        struct sniff_result r;
        memset(&r, 0, sizeof(r));
        if (sniff(h->buf, h->len, final, &r) == SNIFF_DONE || final)
                sniff_finish(c, r.proto == PROTO_UNKNOWN ? PROTO_TCP : r.proto, &r);
        if (h->len == 0 && proto_known(c))
                half_give_buf(c->w, h);
        return -1;
}

static void on_sniff_timeout(struct loop *loop, struct loop_timer *t);
static void on_splice_timer(struct loop *loop, struct loop_timer *t);
static void connect_failed(struct conn *c, enum conn_reason reason, const char *what);
static void conn_connect(struct conn *c);
static void outbound_refusal(struct conn *c);

static void sockaddr_set_port(struct sockaddr_storage *ss, uint16_t port)
{
        if (ss->ss_family == AF_INET)
                ((struct sockaddr_in *)(void *)ss)->sin_port = htons(port);
        else if (ss->ss_family == AF_INET6)
                ((struct sockaddr_in6 *)(void *)ss)->sin6_port = htons(port);
}

/* ---- relay ---------------------------------------------------------------------- */

/* Runs a side's TLS handshake. 0 done, 1 waiting for the socket, -1 failed
 * (logged by the TLS layer as an audit line, and counted there). */
static int side_handshake(struct conn *c, struct side *s)
{
        if (tls_conn_established(s->tls))
                return 0;
        int r = tls_conn_handshake(s->tls);
        if (r == 0) {
                log_debug("tls", c->id, "%s handshake done: peer %s serial %s",
                          s == &c->cli ? "inbound" : "outbound", tls_conn_peer_id(s->tls),
                          tls_conn_peer_serial(s->tls));
                return 0;
        }
        if (r == -EAGAIN) {
                s->readable = s->writable = false;
                return 1;
        }
        return -1;
}

/* Moves bytes src -> h -> dst until neither a read nor a write can make
 * progress. Returns 0, or -1 with *reason set. */
static int pump(struct conn *c, struct side *src, struct side *dst, struct half *h,
                enum stat_id bytes_stat, enum conn_reason src_err, enum conn_reason dst_err,
                enum conn_reason *reason)
{
        if (h->kernel)
                return 0; /* the kernel moves it (splice) */
        bool progress;
        do {
                progress = false;
                if (h->len > h->off && dst->writable && !h->draining) {
                        size_t want = h->len - h->off;
                        ssize_t n = side_send(dst, h->buf + h->off, want);
                        if (n > 0) {
                                h->off += (uint32_t)n;
                                h->bytes += (uint64_t)n;
                                stat_add(&c->w->stats, bytes_stat, (uint64_t)n);
                                reqmetrics_tcp_bytes(c->tcp_cells, bytes_stat == ST_BYTES_UPSTREAM,
                                                     (uint64_t)n);
                                progress = true;
                                /* TLS writes a record at a time: only EAGAIN says full. */
                                if ((size_t)n < want && !dst->tls)
                                        dst->writable = false;
                        } else if (errno == EAGAIN) {
                                dst->writable = false;
                        } else if (errno != EINTR) {
                                *reason = dst_err;
                                return -1;
                        }
                }
                if (h->buf && h->off == h->len)
                        h->off = h->len = 0;
                if (!h->eof && !h->src_reset && src->readable && (!h->buf || h->len < h->cap)) {
                        if (!h->buf && half_take_buf(c->w, h) < 0) {
                                *reason = REASON_NO_MEMORY;
                                return -1;
                        }
                        size_t space = h->cap - h->len;
                        ssize_t n = side_recv(src, h->buf + h->len, space);
                        if (n > 0) {
                                h->len += (uint32_t)n;
                                h->uread += (uint64_t)n;
                                progress = true;
                                if ((size_t)n < space && !src->rdhup && !src->tls &&
                                    !shortcut_side(c, src) && !src->psock)
                                        src->readable = false;
                        } else if (n == 0) {
                                if (src->psock && splice_eof_early(c, h)) {
                                        src->readable = false;
                                } else {
                                        h->eof = true;
                                        progress = true;
                                }
                        } else if (errno == EAGAIN) {
                                src->readable = false;
                        } else if (errno != EINTR) {
                                /* Bytes read (or spliced) before the reset go
                                 * out first, then the reset. */
                                h->src_reset = true;
                                src->readable = false;
                                progress = true;
                        }
                }
                if (h->src_reset && h->len == h->off && !h->draining) {
                        *reason = src_err;
                        return -1;
                }
        } while (progress);

        if (h->len == h->off && !h->draining) {
                half_give_buf(c->w, h);
                if (h->eof && !h->shut) {
                        /* Half-close: pass the FIN on only once every byte is out;
                         * on TLS, close_notify first. */
                        if (dst->tls) {
                                int r = tls_conn_shutdown(dst->tls);
                                if (r == -EAGAIN) {
                                        dst->writable = false;
                                        return 0;
                                }
                        }
                        /* The other direction already ended: the connection is
                         * freed right after this, and close() sends the same
                         * FIN (dst's receive side is drained). One syscall
                         * less per connection. */
                        const struct half *other = h == &c->c2u ? &c->u2c : &c->c2u;
                        if (dst->tls || !other->shut)
                                shutdown(dst->io.fd, SHUT_WR);
                        h->shut = true;
                }
        }
        return 0;
}

/* ---- in-kernel splice (intercept/splice.h) --------------------------------------- */

/* Half i of the splice pair: 0 is c2u (arrives on the client socket), 1 u2c. */
static struct half *splice_half(struct conn *c, int i)
{
        return i == 0 ? &c->c2u : &c->u2c;
}

static struct side *splice_src(struct conn *c, int i)
{
        return i == 0 ? &c->cli : &c->up;
}

/* Adds what the kernel moved for half i to its byte counts (once). */
static void splice_fold(struct conn *c, int i, uint64_t redirected)
{
        struct half *h = splice_half(c, i);
        if (redirected <= h->kfolded)
                return;
        uint64_t n = redirected - h->kfolded;
        h->kfolded = redirected;
        h->bytes += n;
        stat_add(&c->w->stats, i == 0 ? ST_BYTES_UPSTREAM : ST_BYTES_DOWNSTREAM, n);
        reqmetrics_tcp_bytes(c->tcp_cells, i == 0, n);
}

/* Bytes of half i so far, the kernel's included (for /connections). */
static uint64_t splice_bytes(const struct conn *c, int i)
{
        const struct half *h = i == 0 ? &c->c2u : &c->u2c;
        uint64_t redirected = 0;
        if (c->spliced && splice_half_state(&c->splice, i, &redirected, NULL) == 0 &&
            redirected > h->kfolded)
                return h->bytes + (redirected - h->kfolded);
        return h->bytes;
}

/* The kernel put more of half i's bytes into the destination than the
 * program gave it: some went twice, the peer has a corrupt stream. Both
 * sides are reset (never a silent corruption), counted, said once per
 * process at error level. */
static void splice_overrun(struct conn *c, int i, uint64_t moved, uint64_t gave, bool broken)
{
        static atomic_bool said;
        stat_add(&c->w->stats, ST_SPLICE_OVERRUN, 1);
        if (broken && !atomic_exchange(&said, true))
                log_error("splice", c->id,
                          "a spliced direction (%s) received a retransmission repeating bytes "
                          "the splice program could not cut; both sides reset "
                          "(shunt_splice_overruns_total counts it; tcp_splice: off avoids it)",
                          i == 0 ? "client->upstream" : "upstream->client");
        else if (!broken && !atomic_exchange(&said, true))
                log_error("splice", c->id,
                          "the kernel wrote %llu bytes of a spliced direction (%s) for %llu it "
                          "was given: its socket-map worker repeated bytes; both sides reset "
                          "(shunt_splice_overruns_total counts it; tcp_splice: off avoids it)",
                          (unsigned long long)moved,
                          i == 0 ? "client->upstream" : "upstream->client",
                          (unsigned long long)gave);
        else
                log_debug("splice", c->id, "overrun: %llu bytes for %llu",
                          (unsigned long long)moved, (unsigned long long)gave);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->up.io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        conn_free(c, REASON_SOCKET, true);
}

/* A spliced half whose source shows an event (bytes the program left to
 * shuntd, a FIN, an error) comes back to userspace for good: stopped in the
 * map, then a syscall that takes the source socket's lock (TCP_INFO), so a
 * verdict still running on it has finished and counted its bytes. Its bytes
 * are read as they come but written only once every byte the kernel took
 * is in the destination's send queue (draining); until then a short timer
 * looks again. False: c was freed (splice_overrun). */
static bool splice_poll(struct conn *c)
{
        for (int i = 0; i < 2; i++) {
                struct half *h = splice_half(c, i);
                struct side *src = splice_src(c, i);
                if (h->kernel && (src->readable || src->rdhup)) {
                        uint64_t redirected = 0;
                        bool kernel = true;
                        splice_half_state(&c->splice, i, &redirected, &kernel);
                        splice_stop_half(&c->splice, i);
                        (void)splice_idle_ms(src->io.fd);
                        h->kernel = false;
                        h->draining = true;
                        src->readable = true;
                        stat_add(&c->w->stats,
                                 kernel ? ST_SPLICE_RETURNED_FIN : ST_SPLICE_RETURNED_FLOW, 1);
                        log_debug("splice", c->id, "%s back to userspace (%s)",
                                  i == 0 ? "client->upstream" : "upstream->client",
                                  kernel ? "FIN, reset or stray bytes" : "flow control");
                }
                if (h->wait_passed) {
                        h->wait_passed = false;
                        src->readable = true;
                }
                if (h->draining) {
                        struct side *dst = i == 0 ? &c->up : &c->cli;
                        uint64_t moved = 0, gave = 0;
                        int r = splice_half_drained(&c->splice, i, dst->io.fd, 0, &moved, &gave);
                        if (r == SPLICE_DRAIN_OVERRUN || r == SPLICE_DRAIN_BROKEN) {
                                splice_overrun(c, i, moved, gave, r == SPLICE_DRAIN_BROKEN);
                                return false;
                        }
                        if (r != 0) {
                                /* Drained, or the destination cannot say (closed,
                                 * reset): the write that follows finds out. */
                                uint64_t redirected = 0;
                                splice_half_state(&c->splice, i, &redirected, NULL);
                                log_debug("splice", c->id,
                                          "half %d drained (%d): kernel moved %llu of %llu", i, r,
                                          (unsigned long long)moved,
                                          (unsigned long long)redirected);
                                splice_fold(c, i, redirected);
                                h->draining = false;
                        }
                }
        }
        if (c->c2u.draining || c->u2c.draining) {
                c->splice_wait_ms = c->splice_wait_ms ? c->splice_wait_ms * 2 : 1;
                if (c->splice_wait_ms > 64)
                        c->splice_wait_ms = 64;
                loop_timer_arm(c->w->loop, &c->splice_timer, c->splice_wait_ms);
        } else {
                c->splice_wait_ms = 0;
        }
        return true;
}

/* Once a plain relay (no TLS either side, its protocol known, nothing left
 * to decide) has both buffers empty and both sockets drained, the kernel
 * takes it over (tried once per connection; a failure leaves it here,
 * counted). */
static void splice_try(struct conn *c)
{
        const struct shunt_config *cfg = worker_cfg(c->w);
        if (c->splice_tried || !cfg->tcp_splice || c->state != CONN_RELAYING || !proto_known(c) ||
            c->cli.tls || c->up.tls || c->up.io.fd < 0)
                return;
        if (c->c2u.len || c->u2c.len || c->c2u.eof || c->u2c.eof || c->cli.readable ||
            c->up.readable || c->cli.rdhup || c->up.rdhup)
                return;
        c->splice_tried = true;
        /* The application's end of an outbound connection on the sk_msg
         * shortcut: its bytes land in shuntd's socket's own queue, which no
         * verdict program sees. Those connections stay in userspace. */
        if (shortcut_side(c, &c->cli) && cfg->bpf_shortcut == 1)
                return;
        if (!c->w->proxy->splice) {
                stat_add(&c->w->stats, ST_SPLICE_FALLBACK_KERNEL, 1);
                return;
        }
        const int fds[2] = {c->cli.io.fd, c->up.io.fd};
        enum splice_result r = splice_start(fds, &c->splice);
        c->c2u.uread = c->u2c.uread = 0;
        if (r != SPLICE_OK) {
                stat_add(&c->w->stats,
                         r == SPLICE_MAP_FULL      ? ST_SPLICE_FALLBACK_FULL
                         : r == SPLICE_UNAVAILABLE ? ST_SPLICE_FALLBACK_KERNEL
                                                   : ST_SPLICE_FALLBACK_ERROR,
                         1);
                /* The upstream may be in the map already, its half stopped. */
                c->up.psock = c->splice.cookie[1] != 0;
                log_debug("splice", c->id, "left in userspace: %s",
                          r == SPLICE_MAP_FULL ? "a splice map is full" : "the insert failed");
                return;
        }
        c->spliced = true;
        c->cli.psock = c->up.psock = true;
        c->c2u.kernel = c->u2c.kernel = true;
        stat_add(&c->w->stats, ST_SPLICE_STARTED, 1);
        stat_add(&c->w->stats, ST_SPLICE_ACTIVE, 1);
        log_debug("splice", c->id, "spliced in the kernel after %llu bytes up, %llu down",
                  (unsigned long long)c->c2u.bytes, (unsigned long long)c->u2c.bytes);
}

/* At the end: the kernel's bytes counted, the pair's entries removed (the
 * sockets leave the sockhash as they close). */
static void splice_finish(struct conn *c)
{
        if (!c->splice.cookie[0] && !c->splice.cookie[1])
                return;
        uint64_t redirected[2];
        splice_end(&c->splice, redirected);
        if (c->spliced) {
                splice_fold(c, 0, redirected[0]);
                splice_fold(c, 1, redirected[1]);
                stat_sub(&c->w->stats, ST_SPLICE_ACTIVE, 1);
        }
        memset(&c->splice, 0, sizeof(c->splice));
        c->spliced = false;
}

/* A read of a spliced source returned EOF: true (not yet) while bytes the
 * program passed to shuntd still wait in the kernel's psock queue; a short
 * timer reads again. */
static bool splice_eof_early(struct conn *c, struct half *h)
{
        int i = h == &c->c2u ? 0 : 1;
        uint64_t passed = 0;
        if (!c->splice.cookie[i] || splice_half_passed(&c->splice, i, &passed) < 0 ||
            passed <= h->uread)
                return false;
        h->wait_passed = true;
        if (!loop_timer_armed(&c->splice_timer))
                loop_timer_arm(c->w->loop, &c->splice_timer, 1);
        return true;
}

/* Idle time of a spliced connection: the kernel's traffic is in tcp_info. */
static uint64_t splice_quiet_ms(const struct conn *c, uint64_t quiet)
{
        if (!c->c2u.kernel && !c->u2c.kernel)
                return quiet;
        uint64_t a = splice_idle_ms(c->cli.io.fd), b = splice_idle_ms(c->up.io.fd);
        if (a < quiet)
                quiet = a;
        if (b < quiet)
                quiet = b;
        return quiet;
}

#define worker_tls upstream_worker_tls

static struct authz *worker_authz(struct worker *w)
{
        return authz_from_snapshot(snapshot_reader_get(&w->authz_reader, &w->proxy->authz_slot));
}

/* Inbound without an identity (plaintext, or non-mesh TLS relayed as it is):
 * refused when the destination port has authorization policies (one audit
 * line, counted). */
static bool inbound_unidentified_refused(struct conn *c)
{
        uint16_t port = sockaddr_port(&c->orig_dst);
        struct authz_verdict v;
        if (authz_check(worker_authz(c->w), port, NULL, &v))
                return false;
        char pbuf[SOCKADDR_STRLEN], pnum[8], detail[200];
        snprintf(pnum, sizeof(pnum), "%u", (unsigned)port);
        snprintf(detail, sizeof(detail),
                 "%s connection; port %u has authorization policies (%.100s)",
                 c->proto == PROTO_TLS         ? "non-mesh TLS"
                 : c->in_mode == MTLS_DISABLED ? "plaintext (mTLS disabled for this port)"
                                               : "plaintext",
                 (unsigned)port, v.policy);
        const struct log_field f[] = {
            {"peer", sockaddr_format(&c->client_addr, pbuf, sizeof(pbuf)), false},
            {"port", pnum, false},
            {"reason", authz_reason_name(v.reason), false},
            {"detail", detail, true},
            {"identity", "", true},
            {"pod", authz_scope(worker_authz(c->w)), true}, /* node mode's pod */
        };
        log_audit(LOG_WARN, "authz", c->id, "inbound connection refused", f,
                  sizeof(f) / sizeof(f[0]) - (authz_scope(worker_authz(c->w)) ? 0 : 1));
        return true;
}

/* Inbound, once the client is admitted and the application's protocol is
 * known (permissive plaintext, or the plaintext inside terminated mesh
 * TLS): an engine's protocol goes request by request (the engine connects
 * to the application), anything else is relayed once connected. c may be
 * gone after (closed(c)). */
static void inbound_to_application(struct conn *c)
{
        if (engine_for(c->proto))
                conn_handoff(c, engine_for(c->proto));
        else
                conn_connect(c);
}

/* Inbound, once the client's first bytes are known: terminate mesh TLS (a
 * port-<N> SNI name; in strict mode any TLS; never with mTLS disabled),
 * refuse plaintext in strict mode, or go to the application (an HTTP
 * engine's protocol request by request, parsed for metrics, spans and the
 * access log; anything else relayed as it is). Returns a reason to end, or
 * -1. */
static int inbound_decide(struct conn *c)
{
        const struct shunt_config *cfg = worker_cfg(c->w);
        struct half *h = &c->c2u;
        /* The client closed before sending a byte: nothing was refused (a
         * TCP probe, a client giving up). Where nothing could be relayed
         * anyway, it ends quietly as done. */
        bool silent = h->eof && h->len == 0;
        /* What was peeked is still in the socket: from now on it is read. */
        h->len = h->off = 0;
        h->eof = false;
        half_give_buf(c->w, h);
        c->cli.readable = c->cli.writable = true;
        uint16_t port;
        bool mesh = c->proto == PROTO_TLS && c->in_mode != MTLS_DISABLED &&
                    (c->in_mode == MTLS_STRICT || tls_sni_port(c->sni, &port) == 0);
        if (silent && (c->to_listener || c->in_mode == MTLS_STRICT))
                return REASON_DONE;
        char pbuf[SOCKADDR_STRLEN], dbuf[SOCKADDR_STRLEN];
        if (c->to_listener &&
            (!mesh || tls_sni_port(c->sni, &port) < 0 || port == c->w->proxy->inbound_port ||
             port == c->w->proxy->outbound_port)) {
                log_warn("tls", c->id,
                         "inbound connection from %s to shuntd's own port %s refused: only mesh "
                         "TLS naming an application port may address it",
                         sockaddr_format(&c->client_addr, pbuf, sizeof(pbuf)),
                         sockaddr_format(&c->orig_dst, dbuf, sizeof(dbuf)));
                return REASON_LOOP;
        }
        if (mesh) {
                struct tls_snapshot *ts = worker_tls(c->w);
                if (!ts || tls_conn_server_new(ts, c->cli.io.fd, c->id, &c->cli.tls) < 0)
                        return REASON_NO_MEMORY;
                conn_set_state(c, CONN_TLS_ACCEPT);
                tls_conn_set_authz(c->cli.tls, worker_authz(c->w));
                tls_conn_set_peer(c->cli.tls, &c->client_addr);
                loop_timer_arm(c->w->loop, &c->sniff_timer, cfg->mtls_handshake_timeout_ms);
                /* The application is connected once the peer is
                 * authenticated and authorized (conn_handshakes). */
                if (c->to_listener)
                        sockaddr_set_port(&c->upstream, port);
                return -1;
        }
        if (c->in_mode == MTLS_STRICT) {
                log_warn("tls", c->id,
                         "inbound %s connection from %s to %s refused: mtls.mode is strict",
                         c->proto == PROTO_TLS ? "non-mesh TLS" : "plaintext",
                         sockaddr_format(&c->client_addr, pbuf, sizeof(pbuf)),
                         sockaddr_format(&c->orig_dst, dbuf, sizeof(dbuf)));
                return REASON_PLAINTEXT_REFUSED;
        }
        /* Permissive: no identity, so no policy of the port can admit it. */
        if (!silent && inbound_unidentified_refused(c))
                return REASON_AUTHZ_REFUSED;
        inbound_to_application(c);
        return closed(c) ? -2 : -1;
}

/* TLS handshakes before any byte is relayed. 0 go on, 1 wait, -1 freed, 2
 * inbound TLS is established: sniff its plaintext. */
static int conn_handshakes(struct conn *c)
{
        if (c->state == CONN_TLS_ACCEPT) {
                int r = side_handshake(c, &c->cli);
                if (r < 0) {
                        conn_free(c, REASON_TLS_HANDSHAKE, true);
                        return -1;
                }
                if (r > 0)
                        return 1;
                loop_timer_cancel(c->w->loop, &c->sniff_timer);
                /* The allow-list was applied to the SNI port: forward only there. */
                uint16_t sp = tls_conn_dst_port(c->cli.tls);
                if (sp && sp != sockaddr_port(c->to_listener ? &c->upstream : &c->orig_dst)) {
                        log_warn("tls", c->id,
                                 "inbound TLS from %s names port %u but was sent to port %u: "
                                 "refused",
                                 tls_conn_peer_id(c->cli.tls), sp, sockaddr_port(&c->orig_dst));
                        conn_free(c, REASON_TLS_PORT_MISMATCH, true);
                        return -1;
                }
                /* Authenticated and authorized: the application is
                 * connected once the plaintext's protocol is known (an
                 * engine's, per request, or here for a relay). An
                 * unauthenticated client never holds a connection to it, nor
                 * learns whether its port is open. */
                c->proto = PROTO_UNKNOWN;
                c->sniffed_len = 0;
                conn_set_state(c, CONN_TLS_SNIFF);
                c->cli.readable = true; /* TLS may hold decrypted bytes already */
                loop_timer_arm(c->w->loop, &c->sniff_timer,
                               worker_cfg(c->w)->protocol_detection_timeout_ms);
                return 2;
        }
        if (c->state == CONN_HANDSHAKE) {
                int r = side_handshake(c, &c->up);
                if (r < 0) {
                        conn_free(c, REASON_TLS_HANDSHAKE, true);
                        return -1;
                }
                if (r > 0)
                        return 1;
                conn_established(c);
                c->last_active_ms = loop_now_ms(c->w->loop);
                loop_timer_arm(c->w->loop, &c->timer, worker_cfg(c->w)->idle_timeout_ms);
        }
        return 0;
}

/* An upstream reset reaches the client as a reset (SO_LINGER 0), which
 * throws away what the client's socket has not sent yet: the bytes passed on
 * before the reset. So the reset waits, a short timer at a time, until that
 * send queue is empty, RESET_HOLD_MS at most. True: still waiting (nothing
 * is read or written meanwhile). */
static bool reset_hold(struct conn *c)
{
        uint64_t now = loop_now_ms(c->w->loop);
        int outq = 0;
        if (!c->reset_by_ms)
                c->reset_by_ms = now + RESET_HOLD_MS;
        if (now >= c->reset_by_ms || ioctl(c->cli.io.fd, SIOCOUTQ, &outq) < 0 || outq <= 0)
                return false;
        loop_timer_arm(c->w->loop, &c->splice_timer, 2);
        return true;
}

static void conn_drive(struct conn *c)
{
        enum conn_reason reason = REASON_DONE;
again:
        if (!proto_known(c)) {
                int r = sniff_step(c);
                if (r >= 0) {
                        conn_free(c, (enum conn_reason)r, false);
                        return;
                }
        }
        if (proto_known(c) && c->dir == DIR_OUTBOUND &&
            (c->route.table || c->verdict != REASON__COUNT)) {
                /* Not once the server's bytes reached the client (an HTTP/2
                 * server's SETTINGS belong to that session): then it stays a
                 * byte relay. */
                if (engine_for(c->proto) && !c->u2c.bytes) {
                        conn_handoff(c, engine_for(c->proto));
                        return;
                }
                if (c->verdict != REASON__COUNT) {
                        conn_free(c, c->verdict, true);
                        return;
                }
        }
        if (proto_known(c) && c->state == CONN_PEEKING) {
                int r = inbound_decide(c);
                if (r == -2)
                        return; /* freed by a failed connect */
                if (r >= 0) {
                        conn_free(c, (enum conn_reason)r, true);
                        return;
                }
        }
        int hs = conn_handshakes(c);
        if (hs == 2)
                goto again;
        if (hs != 0)
                return;
        if (c->state == CONN_TLS_SNIFF) {
                if (!proto_known(c))
                        return;
                inbound_to_application(c);
                if (closed(c))
                        return;
        }
        /* Nothing flows before the upstream is connected. */
        if (!connected(c))
                return;
        if (!c->tcp_cells && proto_known(c)) {
                c->tcp_cells = reqmetrics_tcp_open(c->w, c->dir, c->cli.tls, &c->route, c->tls_out);
                reqmetrics_tcp_bytes(c->tcp_cells, true, c->c2u.bytes);
                reqmetrics_tcp_bytes(c->tcp_cells, false, c->u2c.bytes);
        }

        if ((c->spliced || c->splice.cookie[1]) && !splice_poll(c))
                return; /* freed */
        uint64_t before = c->c2u.bytes + c->u2c.bytes + c->c2u.eof + c->u2c.eof;
        if (proto_known(c) && pump(c, &c->cli, &c->up, &c->c2u, ST_BYTES_UPSTREAM,
                                   REASON_CLIENT_RESET, REASON_UPSTREAM_RESET, &reason) < 0)
                goto fail;
        /* Outbound to a service, the server's bytes wait for the sniffer (at
         * most protocol_detection_timeout): an HTTP/2 server's SETTINGS must
         * not reach a client whose connection h2proxy may take over. */
        if ((proto_known(c) || c->dir != DIR_OUTBOUND || !c->route.table) &&
            pump(c, &c->up, &c->cli, &c->u2c, ST_BYTES_DOWNSTREAM, REASON_UPSTREAM_RESET,
                 REASON_CLIENT_RESET, &reason) < 0)
                goto fail;
        if (c->c2u.bytes + c->u2c.bytes + c->c2u.eof + c->u2c.eof != before)
                c->last_active_ms = loop_now_ms(c->w->loop);
        if (c->c2u.shut && c->u2c.shut) {
                conn_free(c, REASON_DONE, false);
                return;
        }
        if ((c->c2u.shut || c->u2c.shut) && c->state == CONN_RELAYING)
                conn_set_state(c, CONN_HALF_CLOSED);
        splice_try(c);
        return;
fail:
        if (reason == REASON_UPSTREAM_RESET && reset_hold(c))
                return;
        conn_free(c, reason, reason == REASON_UPSTREAM_RESET);
}

/* ---- events --------------------------------------------------------------------- */

static void side_mark(struct side *s, uint32_t events)
{
        upstream_io_mark(events, s->tls, &s->readable, &s->writable, &s->rdhup);
}

static void on_client(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct conn *c = io->data;
        if (closed(c))
                return;
        side_mark(&c->cli, events);
        conn_drive(c);
}

static void arm_idle(struct conn *c)
{
        loop_timer_arm(c->w->loop, &c->timer, worker_cfg(c->w)->idle_timeout_ms);
}

static void on_upstream(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct conn *c = io->data;
        if (closed(c))
                return;
        side_mark(&c->up, events);
        if (c->state == CONN_CONNECTING) {
                int err = upstream_connect_result(io->fd, events);
                if (err == 1)
                        return;
                if (err) {
                        connect_failed(c, REASON_CONNECT_REFUSED, strerror(err));
                        return;
                }
                route_request_done(&c->route, &c->upstream, ROUTE_SUCCESS);
                if (c->tls_out) {
                        if (upstream_tls_start(c->w, io->fd, c->id, route_identity(&c->route),
                                               &c->upstream, &c->up.tls) < 0) {
                                conn_free(c, REASON_NO_MEMORY, true);
                                return;
                        }
                        conn_set_state(c, CONN_HANDSHAKE);
                        c->up.readable = c->up.writable = true;
                        loop_timer_arm(loop, &c->timer,
                                       worker_cfg(c->w)->mtls_handshake_timeout_ms);
                } else {
                        conn_established(c);
                        c->last_active_ms = loop_now_ms(loop);
                        arm_idle(c);
                }
        }
        conn_drive(c);
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        struct conn *c = t->data;
        if (c->state == CONN_CONNECTING) {
                if (c->up.io.fd < 0) {
                        conn_connect(c); /* the retry's backoff is over */
                        return;
                }
                connect_failed(c, REASON_CONNECT_TIMEOUT, "timed out");
                return;
        }
        if (c->state == CONN_HANDSHAKE) {
                tls_conn_timeout(c->up.tls);
                conn_free(c, REASON_TLS_HANDSHAKE, true);
                return;
        }
        uint64_t idle = worker_cfg(c->w)->idle_timeout_ms;
        uint64_t quiet = loop_now_ms(loop) - c->last_active_ms;
        if (c->spliced)
                quiet = splice_quiet_ms(c, quiet);
        if (quiet >= idle) {
                log_debug("proxy", c->id, "idle for %llu ms: closing", (unsigned long long)quiet);
                conn_free(c, REASON_IDLE_TIMEOUT, false);
                return;
        }
        loop_timer_arm(loop, t, idle - quiet);
}

static void on_splice_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct conn *c = t->data;
        if (!closed(c))
                conn_drive(c);
}

static void on_sniff_timeout(struct loop *loop, struct loop_timer *t)
{
        struct conn *c = t->data;
        if (proto_known(c)) {
                /* Inbound: the sniff timer now bounds the TLS handshake. */
                if (c->state == CONN_TLS_ACCEPT) {
                        tls_conn_timeout(c->cli.tls);
                        conn_free(c, REASON_TLS_HANDSHAKE, true);
                }
                return;
        }
        /* Inbound with mTLS: the start of a TLS record, or (strict, where
         * plaintext is refused anyway) nothing yet, is a client slow to send
         * its ClientHello: it gets mtls.handshake_timeout, not a plaintext
         * verdict after protocol_detection_timeout. */
        const struct shunt_config *cfg = worker_cfg(c->w);
        if (c->state == CONN_PEEKING &&
            ((c->c2u.len && c->c2u.buf[0] == 0x16) || (!c->c2u.len && c->in_mode == MTLS_STRICT))) {
                uint64_t age = loop_now_ms(loop) - c->created_ms;
                if (age < cfg->mtls_handshake_timeout_ms) {
                        loop_timer_arm(loop, &c->sniff_timer, cfg->mtls_handshake_timeout_ms - age);
                        return;
                }
        }
        stat_add(&c->w->stats, ST_SNIFF_TIMEOUT, 1);
        /* Decide on what has arrived, as if nothing more will come: a complete
         * HTTP/2 preface without a request yet is still HTTP/2. */
        struct sniff_result r;
        memset(&r, 0, sizeof(r));
        if (c->c2u.len)
                sniff(c->c2u.buf, c->c2u.len, 1, &r);
        sniff_finish(c, r.proto == PROTO_UNKNOWN ? PROTO_TCP : r.proto, &r);
        if (c->c2u.buf && c->c2u.len == 0)
                half_give_buf(c->w, &c->c2u);
        conn_drive(c);
}

/* ---- accept --------------------------------------------------------------------- */

static bool is_own_listener(struct worker *w, const struct sockaddr_storage *dst)
{
        uint16_t port = sockaddr_port(dst);
        if (port != w->proxy->inbound_port && port != w->proxy->outbound_port)
                return false;
        for (int i = 0; i < w->n_listeners; i++) {
                const struct sockaddr_storage *l = &w->listeners[i].addr;
                if (l->ss_family == dst->ss_family && sockaddr_port(l) == port)
                        return true; /* bound to any or the same address: ours */
        }
        return false;
}

void relay_reject(struct worker *w, int fd, enum conn_reason reason)
{
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(fd);
        stat_add(&w->stats, ST_REASON_FIRST + reason, 1);
}

/* Picks the upstream of an outbound connection. Returns REASON__COUNT when
 * it may go ahead, else why it is refused. */
static enum conn_reason route_outbound(struct worker *w, const struct shunt_config *cfg,
                                       const struct sockaddr_storage *dst,
                                       const struct sockaddr_storage *peer,
                                       struct sockaddr_storage *upstream, struct route_use *use)
{
        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
            &w->route_reader, &w->proxy->route_slot);
        switch (
            route_pick(t, &w->route_workers, (uint64_t)w->index, dst, peer, NULL, upstream, use)) {
        case ROUTE_ENDPOINT:
                if (route_limit_acquire(use, LB_LIMIT_CONNECTIONS) < 0) {
                        route_release(use); /* limits.max_connections of the service */
                        return REASON_OVERLOAD;
                }
                stat_add(&w->stats, ST_ROUTE_SERVICE, 1);
                return REASON__COUNT;
        case ROUTE_NO_ENDPOINT:
        case ROUTE_NO_ROUTE: /* per request only: route_pick never returns them */
        case ROUTE_REDIRECT:
        case ROUTE_ABORT:
        case ROUTE_RATE_LIMITED:
                return REASON_NO_ENDPOINT;
        case ROUTE_PASSTHROUGH:
                break;
        }
        if (cfg->outbound_policy == OUTBOUND_REGISTRY_ONLY)
                return REASON_UNKNOWN_DESTINATION;
        stat_add(&w->stats, ST_ROUTE_PASSTHROUGH, 1);
        *upstream = *dst;
        return REASON__COUNT;
}

/* Opens the upstream socket and starts a non-blocking connect to
 * c->upstream; frees c on a local failure. */
static void outbound_refusal(struct conn *c)
{
        char why[320];
        route_refusal(&c->route, &c->upstream, why, sizeof(why));
        log_warn("proxy", c->id, "outbound connection refused: %s", why);
}

static void conn_connect(struct conn *c)
{
        struct worker *w = c->w;
        const struct shunt_config *cfg = worker_cfg(w);
        conn_set_state(c, CONN_CONNECTING); /* again, for a retry */
        c->up.readable = c->up.writable = c->up.rdhup = false;
        if (c->dir == DIR_OUTBOUND && c->route.table) {
                /* Per endpoint: a retry may land on one with another identity. */
                enum route_security sec =
                    route_security(&c->route, cfg->mtls_mode, w->proxy->tls_slot != NULL);
                if (sec == ROUTE_REFUSED) {
                        outbound_refusal(c);
                        conn_free(c, REASON_MTLS_REQUIRED, true);
                        return;
                }
                c->tls_out = sec == ROUTE_MTLS;
        }
        const char *what = "";
        int ufd = upstream_socket(&c->upstream, config_socket_mark(cfg), &what);
        if (ufd < 0 && strcmp(what, "connect") == 0) {
                connect_failed(c, REASON_CONNECT_REFUSED, strerror(-ufd));
                return;
        }
        if (ufd < 0) {
                log_error("proxy", c->id, "upstream %s: %s", what, strerror(-ufd));
                conn_free(c, REASON_SOCKET, false);
                return;
        }
        c->up.io.fd = ufd;
        if (loop_io_add(w->loop, &c->up.io, RELAY_EVENTS) < 0) {
                log_error("proxy", c->id, "epoll_ctl on the upstream socket: %s", strerror(errno));
                conn_free(c, REASON_SOCKET, false);
                return;
        }
        loop_timer_arm(w->loop, &c->timer,
                       route_connect_timeout_ms(&c->route, cfg->connect_timeout_ms));
}

/* A connect to c->upstream failed. A service connection is retried on
 * another endpoint (nothing has gone upstream yet: the client's bytes wait
 * in c2u); anything else ends, and the client sees a reset. */
static void connect_failed(struct conn *c, enum conn_reason reason, const char *what)
{
        char ubuf[SOCKADDR_STRLEN];
        log_warn("proxy", c->id, "connect to %s (service %s) failed: %s",
                 sockaddr_format(&c->upstream, ubuf, sizeof(ubuf)), route_service_name(&c->route),
                 what);
        if (c->up.io.fd >= 0) {
                loop_io_del(c->w->loop, &c->up.io);
                close(c->up.io.fd);
                c->up.io.fd = -1;
        }
        route_request_done(&c->route, &c->upstream, ROUTE_CONNECT_FAILURE);
        uint32_t backoff_ms;
        if (!c->route.table ||
            !route_retry_allowed(&c->route, ROUTE_CONNECT_FAILURE, 0, false, &backoff_ms)) {
                conn_free(c, reason, true);
                return;
        }
        if (route_retry_pick(&c->route, &c->w->route_workers, (uint64_t)c->w->index,
                             &c->client_addr, NULL, &c->upstream) != ROUTE_ENDPOINT) {
                conn_free(c, reason, true);
                return;
        }
        stat_add(&c->w->stats, ST_CONNECT_RETRIES, 1);
        /* Jittered backoff (retries.backoff_base..backoff_max); on_timer connects. */
        loop_timer_arm(c->w->loop, &c->timer, backoff_ms);
}

/* An outbound connection to a service port declared with a protocol an
 * engine takes: counted as a routed connection, then handed over. */
static void start_session(struct worker *w, int fd, const struct sockaddr_storage *peer,
                          const struct sockaddr_storage *dst, enum proto proto)
{
        struct proxy *p = w->proxy;
        stat_add(&w->stats, ST_ROUTE_SERVICE, 1);
        stat_add(&w->stats, ST_PROTO_FIRST + proto, 1);
        stat_add(&w->stats, ST_ACTIVE_OUT, 1);
        struct handoff h = {
            .id = atomic_fetch_add_explicit(&p->next_conn_id, 1, memory_order_relaxed) + 1,
            .dir = DIR_OUTBOUND,
            .fd = fd,
            .proto = proto,
            .client_addr = *peer,
            .orig_dst = *dst,
            .created_ms = loop_now_ms(w->loop),
        };
        engine_for(proto)->start(w, &h);
}

void relay_accept(struct worker *w, struct listener *l, int fd, const struct sockaddr_storage *peer)
{
        const struct shunt_config *cfg = worker_cfg(w);
        struct proxy *p = w->proxy;

        stat_add(&w->stats, l->dir == DIR_INBOUND ? ST_ACCEPTED_IN : ST_ACCEPTED_OUT, 1);
        uint64_t active = atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
        uint32_t limit = proxy_conn_limit(p, cfg);
        if (active >= limit) {
                atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
                origdst_forget(fd);
                relay_reject(w, fd, REASON_OVERLOAD);
                /* At most one line a second per worker: overload must not flood the log. */
                uint64_t now = loop_now_ms(w->loop);
                if (now - w->overload_logged_ms >= 1000) {
                        w->overload_logged_ms = now;
                        log_warn("proxy", 0,
                                 "%s (%u) reached: refusing new connections "
                                 "(shunt_connections_rejected_total counts them)",
                                 limit < cfg->max_connections
                                     ? "connection limit fitted to RLIMIT_NOFILE"
                                     : "max_connections",
                                 limit);
                }
                return;
        }

        struct sockaddr_storage local;
        socklen_t llen = sizeof(local);
        getsockname(fd, (struct sockaddr *)&local, &llen);

        struct sockaddr_storage dst;
        enum origdst_result od = origdst_get(fd, &local, peer, &dst);
        enum conn_reason refuse = REASON__COUNT;
        char pbuf[SOCKADDR_STRLEN], dbuf[SOCKADDR_STRLEN];
        bool mtls_in = l->dir == DIR_INBOUND && p->tls_slot && cfg->mtls_mode != MTLS_DISABLED;
        if (od == ORIGDST_NOT_REDIRECTED && mtls_in && sockaddr_port(&local) == p->inbound_port) {
                /* Addressed to the inbound port itself (not redirected): mesh
                 * TLS may name the application port in its SNI name. */
                stat_add(&w->stats, ST_ORIGDST_NOT_REDIRECTED, 1);
                dst = local;
                refuse = REASON_LOOP;
        } else if (od == ORIGDST_OK) {
                stat_add(&w->stats, ST_ORIGDST_OK, 1);
                if (is_own_listener(w, &dst))
                        refuse = REASON_LOOP;
        } else {
                stat_add(
                    &w->stats,
                    od == ORIGDST_NOT_REDIRECTED ? ST_ORIGDST_NOT_REDIRECTED : ST_ORIGDST_ERROR, 1);
                refuse = REASON_NO_ORIGINAL_DST;
        }
        if (refuse == REASON_LOOP && mtls_in && sockaddr_port(&dst) == p->inbound_port)
                refuse = REASON__COUNT; /* decided after sniffing (c->to_listener) */
        if (refuse != REASON__COUNT) {
                atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
                log_warn("proxy", 0, "%s connection from %s refused: %s", dir_name(l->dir),
                         sockaddr_format(peer, pbuf, sizeof(pbuf)),
                         refuse == REASON_LOOP ? "original destination is shuntd itself (loop)"
                                               : "no original destination (not redirected)");
                relay_reject(w, fd, refuse);
                return;
        }

        struct route_use route = {.declared = PROTO_UNKNOWN};
        struct sockaddr_storage upstream = dst;
        bool no_endpoint = false;
        if (l->dir == DIR_OUTBOUND) {
                /* A service port declared with a protocol an engine proxies
                 * per request: hand over at once, nothing to pick now. */
                struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
                    &w->route_reader, &p->route_slot);
                enum proto declared;
                if (route_lookup(t, &dst, &declared, NULL, NULL) != ROUTE_PASSTHROUGH &&
                    engine_for(declared)) {
                        start_session(w, fd, peer, &dst, declared);
                        return;
                }
                enum conn_reason why = route_outbound(w, cfg, &dst, peer, &upstream, &route);
                if (why == REASON_NO_ENDPOINT && declared == PROTO_UNKNOWN) {
                        /* Sniff first: an HTTP client gets a 503, not a reset. */
                        no_endpoint = true;
                        why = REASON__COUNT;
                }
                if (why != REASON__COUNT) {
                        atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
                        log_warn("proxy", 0, "outbound connection from %s to %s refused: %s",
                                 sockaddr_format(peer, pbuf, sizeof(pbuf)),
                                 sockaddr_format(&dst, dbuf, sizeof(dbuf)),
                                 why == REASON_NO_ENDPOINT
                                     ? "its service has no endpoint that can serve"
                                 : why == REASON_OVERLOAD
                                     ? "its service is at limits.max_connections"
                                     : "not a known service (outbound_policy registry_only)");
                        relay_reject(w, fd, why);
                        return;
                }
        }

        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
                route_release(&route);
                atomic_fetch_sub_explicit(&p->active, 1, memory_order_relaxed);
                relay_reject(w, fd, REASON_NO_MEMORY);
                return;
        }
        c->w = w;
        c->id = atomic_fetch_add_explicit(&p->next_conn_id, 1, memory_order_relaxed) + 1;
        c->dir = l->dir;
        c->state = CONN_CONNECTING;
        c->verdict = no_endpoint ? REASON_NO_ENDPOINT : REASON__COUNT;
        c->client_addr = *peer;
        c->orig_dst = dst;
        c->upstream = upstream;
        c->route = route;
        if (l->dir == DIR_INBOUND) {
                /* The registry may set the mode for this pod's service
                 * port; without certificates (mtls.mode disabled) nothing can
                 * be terminated, whatever it says. */
                c->in_mode = cfg->mtls_mode;
                if (p->tls_slot && c->in_mode != MTLS_DISABLED) {
                        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
                            &w->route_reader, &p->route_slot);
                        enum disc_mtls sm = route_inbound_mtls(t, &dst);
                        if (sm != DISC_MTLS_DEFAULT)
                                c->in_mode = sm == DISC_MTLS_STRICT       ? MTLS_STRICT
                                             : sm == DISC_MTLS_PERMISSIVE ? MTLS_PERMISSIVE
                                                                          : MTLS_DISABLED;
                }
                if (!p->tls_slot)
                        c->in_mode = MTLS_DISABLED;
                /* The client's first bytes are peeked, not read: a TLS
                 * handshake can start from the ClientHello (mTLS on), and
                 * an HTTP client's requests go to an engine whatever the
                 * mode (inbound_decide). */
                c->state = CONN_PEEKING;
                c->to_listener = c->in_mode != MTLS_DISABLED && is_own_listener(w, &dst);
        } else if (route.table &&
                   route_security(&route, cfg->mtls_mode, p->tls_slot != NULL) == ROUTE_REFUSED) {
                /* Sniff first: an HTTP client gets a 503 from its engine. */
                outbound_refusal(c);
                c->verdict = REASON_MTLS_REQUIRED;
        }
        c->created_ms = c->last_active_ms = loop_now_ms(w->loop);
        loop_io_init(&c->cli.io, fd, on_client, c);
        loop_io_init(&c->up.io, -1, on_upstream, c);
        loop_timer_init(&c->timer, on_timer, c);
        loop_timer_init(&c->sniff_timer, on_sniff_timeout, c);
        loop_timer_init(&c->splice_timer, on_splice_timer, c);

        c->next = w->conns;
        if (w->conns)
                w->conns->prev = c;
        w->conns = c;
        stat_add(&w->stats, c->dir == DIR_INBOUND ? ST_ACTIVE_IN : ST_ACTIVE_OUT, 1);

        /* TCP_NODELAY comes from the listener. */
        if (c->route.declared != PROTO_UNKNOWN)
                sniff_finish(c, c->route.declared, NULL); /* declared: no sniffing */
        else
                loop_timer_arm(w->loop, &c->sniff_timer, cfg->protocol_detection_timeout_ms);
        if (loop_io_add(w->loop, &c->cli.io, RELAY_EVENTS) < 0) {
                conn_free(c, REASON_SOCKET, false);
                return;
        }
        log_debug("proxy", c->id, "%s %s -> %s via %s", dir_name(c->dir),
                  sockaddr_format(peer, pbuf, sizeof(pbuf)),
                  sockaddr_format(&dst, dbuf, sizeof(dbuf)), route_service_name(&c->route));
        /* Inbound with mTLS on connects once the client is known
         * (inbound_decide, conn_handshakes). */
        if (c->state != CONN_PEEKING && c->verdict == REASON__COUNT)
                conn_connect(c);
}

size_t relay_conn_bytes(void)
{
        return sizeof(struct conn);
}

void relay_close_all(struct worker *w, enum conn_reason reason)
{
        while (w->conns)
                conn_free(w->conns, reason, false);
        engines_close_all(w, reason);
        upstream_pool_free(w);
}

void relay_render(struct worker *w, struct strbuf *out, bool *first)
{
        uint64_t now = clock_mono_ms();
        for (struct conn *c = w->conns; c; c = c->next) {
                char ubuf[SOCKADDR_STRLEN];
                conn_render_open(out, first, w, c->id, c->dir, &c->client_addr, &c->orig_dst,
                                 sockaddr_format(&c->upstream, ubuf, sizeof(ubuf)),
                                 route_service_name(&c->route));
                strbuf_appendf(out,
                               ",\"protocol\":\"%s\",\"state\":\"%s\",\"bytes_in\":%llu,"
                               "\"bytes_out\":%llu,\"age_ms\":%llu,\"sni\":",
                               proto_known(c) ? proto_name(c->proto) : "unknown",
                               conn_state_name(c->state), (unsigned long long)splice_bytes(c, 0),
                               (unsigned long long)splice_bytes(c, 1),
                               (unsigned long long)(now - c->created_ms));
                strbuf_append_json_string(out, c->sni);
                if (c->spliced)
                        strbuf_appendf(out, ",\"spliced\":{\"upstream\":%s,\"downstream\":%s}",
                                       c->c2u.kernel ? "true" : "false",
                                       c->u2c.kernel ? "true" : "false");
                strbuf_append(out, "}");
        }
        engines_render(w, out, first);
}

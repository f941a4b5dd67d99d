// SPDX-License-Identifier: Apache-2.0
/* HTTP/2 and gRPC request-level proxying; see h2proxy.h.
 *
 * Objects:
 *   h2c  a client connection: nghttp2 server session on the client socket
 *   h2u  an upstream session: nghttp2 client session to one endpoint
 *   h2s  one proxied request: a client stream and (when routed) an
 *        upstream stream, with one bounded body buffer per direction
 *
 * Both kinds of session share struct sess (socket, nghttp2 session, output
 * remainder, readiness flags). Sessions are never freed from inside
 * nghttp2 callbacks: work on them is queued on the worker's dirty list and
 * done by pump() at the top of an event, where closing is safe.
 *
 * Flow control: automatic WINDOW_UPDATEs are off on every session. Bytes a
 * peer sends are kept in the stream's buffer. They are given back to the
 * session's connection window at once (nghttp2_session_consume_connection)
 * and to the stream's window only when the other session's data callback
 * copies them into a frame; frames are produced only when the previous
 * batch (at most H2_OUT_BATCH bytes and one frame) has left. A stream thus
 * buffers at most H2_STREAM_WINDOW bytes each way, and a stream that does
 * not move holds its own window only: an upstream session is shared by many
 * clients' streams, and a client that grants no window must not be able to
 * spend the connection window the others' streams need. A stream whose
 * buffered bytes do not move for http2.stream_stall_timeout is ended. */
#include "proxy/h2proxy.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/sockaddr.h"
#include "intercept/origdst.h"
#include "proxy/mirror-int.h"
#include "proxy/proxy-int.h"
#include "proxy/states-int.h"
#include "proxy/obs.h"
#include "proxy/reqmetrics.h"
#include "proxy/tap.h"
#include "proxy/upstream.h"
#include "proxy/xfcc.h"
#include "tls/conn.h"

#define H2_EVENTS          (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
#define H2_STREAM_WINDOW   65535      /* per stream, each way: the buffer bound */
#define H2_CONN_WINDOW     (1u << 20) /* per session */
#define H2_READ_CHUNK      16384
#define H2_OUT_BATCH       65536 /* frames gathered for one send */
#define H2_REFUSED_MAX     4     /* re-sends of a stream the upstream refused unprocessed */
#define H2_UP_PER_ENDPOINT 4     /* upstream sessions per endpoint before streams queue */
#define H2_UP_BUCKETS      256   /* upstream sessions by (endpoint, identity); power of two */
#define H2_DIRTY_ROUNDS    100000
#define H2_REASON_MAX      160
#define H2_MAX_FIELDS      256   /* header fields per request or response (headers and trailers) */
#define H2_WU_PER_FRAME    8     /* WINDOW_UPDATEs free per DATA frame sent or stream opened */
#define H2_WU_CREDIT_MAX   16384 /* at most this many saved up */
#define H2_PREFACE_LEN     24
#define H2_FRAME_HEAD      9

enum sess_kind { SESS_CLIENT, SESS_UPSTREAM };

struct h2_worker;

struct bbuf {
        uint8_t *p;
        uint32_t off, len, cap;
};

/* A header block, copied: names and values in one arena, by offset. */
struct hdr {
        uint32_t name, namelen, value, valuelen;
};
struct hdrs {
        struct hdr *v;
        uint32_t n, cap;
        char *arena;
        uint32_t alen, acap;
};

struct sess {
        enum sess_kind kind;
        union { /* the session's one state, by kind (states-int.h) */
                enum h2c_state c;
                enum h2u_state u;
        } state;
        struct h2_worker *hw;
        struct loop_io io;
        nghttp2_session *ng;
        struct tls_conn *tls;
        struct bbuf out; /* the unsent rest of the last mem_send chunk */
        bool readable, writable;
        bool rdhup;        /* the peer's FIN is queued: a short read does not mean drained */
        bool drain_eagain; /* only EAGAIN says drained (TLS; the eBPF shortcut) */
        bool dirty;        /* on the worker's dirty list */
        struct sess *dnext;
        uint64_t last_active_ms;
        uint64_t last_write_ms; /* last time bytes left (write-stall check) */
};

struct h2s;

/* What went wrong with a client connection, worst last: a worse fault
 * replaces a milder one (client_fault), never the other way. */
enum h2c_fault {
        H2C_FAULT_NONE,
        H2C_FAULT_STALL,    /* it read nothing of what we sent for timeouts.idle_timeout */
        H2C_FAULT_PROTOCOL, /* an HTTP/2 protocol error (GOAWAY PROTOCOL_ERROR) */
        H2C_FAULT_FLOOD,    /* a frame flood (GOAWAY ENHANCE_YOUR_CALM) */
};

struct h2c {
        struct sess s; /* first: a struct sess * is a struct h2c * */
        struct h2c *prev, *next;
        uint64_t id;
        enum conn_dir dir; /* inbound: s.tls is the peer's mesh TLS, or NULL (permissive) */
        enum proto proto;
        struct sockaddr_storage client, orig_dst;
        struct sockaddr_storage app; /* inbound: every stream goes to the application here */
        char *xfcc;                  /* with s.tls: the client's XFCC element (xfcc.h) */
        struct h2s *streams;
        uint32_t n_streams;
        uint64_t n_total;
        struct loop_timer timer;
        uint64_t created_ms;
        uint64_t flood_window_ms;
        uint32_t flood_count;
        /* The frame scanner (frame_scan): the client's frames by their
         * 9-byte heads, as read, whatever nghttp2 does with them. */
        uint32_t scan_skip; /* bytes left of the preface or of a payload */
        uint8_t scan_head[H2_FRAME_HEAD];
        uint8_t scan_hlen;
        uint32_t wu_credit;   /* WINDOW_UPDATEs that answer DATA we sent */
        enum h2c_fault fault; /* why it ends badly, if it does */
        bool eof;             /* the client's FIN arrived */
        uint64_t bytes_in, bytes_out;
};

struct h2u {
        struct sess s;
        struct h2u *prev, *next;
        struct h2u *bprev, *bnext; /* on hw->up_bucket[bucket] */
        uint32_t bucket;
        uint64_t id;
        struct sockaddr_storage addr;
        char identity[256]; /* "" = plaintext h2c */
        struct h2s *streams;
        uint32_t n_streams;
        const char *dead_why; /* H2U_DEAD: why, a static string */
        struct loop_timer timer;
};

struct h2s {
        struct h2_worker *hw;
        struct h2c *c;
        int32_t cid;
        struct h2u *u;
        int32_t uid;
        struct h2s *cprev, *cnext; /* on c->streams */
        struct h2s *uprev, *unext; /* on u->streams */
        struct route_use route;
        struct sockaddr_storage upstream;
        bool routed;
        const char *location; /* a route's redirect while stream_fail answers */
        struct hdrs req, qtrail, resp, rtrail;
        uint32_t req_hdr_bytes;
        uint32_t req_fields, resp_fields; /* header fields, trailers included */
        uint32_t resp_hdr_bytes;          /* response headers and trailers from upstream */
        struct bbuf reqb, respb;
        uint64_t req_sent;    /* body bytes passed upstream */
        uint64_t resp_sent;   /* body bytes given to the client */
        struct span_ctx span; /* this stream's span (obs.h) */
        bool c_open, u_open;
        bool req_eof, resp_eof;
        bool grpc, too_big;
        bool resp_started; /* response headers received from upstream */
        bool replied;      /* response headers submitted to the client */
        bool local;        /* answered by us: further request bytes are dropped */
        bool blk_trailers; /* the upstream header block being received is trailers */
        int blk_status;    /* :status of that block */
        int grpc_status;   /* -1 none seen */
        int http_status;
        uint8_t attempts;
        uint8_t refused;   /* re-sent after REFUSED_STREAM */
        bool attempt_open; /* an attempt on st->upstream awaits route_request_done */
        bool has_key;      /* key_hash: the request's consistent-hash key */
        uint64_t key_hash;
        struct loop_timer retry; /* backoff before a retry, or a route's fault delay */
        bool delaying;           /* retry holds the route's fault delay */
        uint32_t retry_after_s;  /* a local answer's Retry-After (0: 1 s on a 503) */
        struct loop_timer deadline;
        struct loop_timer stall; /* bytes buffered and not moving */
        uint64_t progress_ms;    /* when buffered bytes last moved, or began to wait */
        bool deadline_grpc;
        uint64_t timeout_ms;
        uint64_t start_ms;
        uint64_t start_ns;     /* clock_mono_ns(), for shunt_request_duration_seconds */
        struct mirror *mirror; /* the route's RequestMirror copy until the request ends */
        /* Per-try timeouts (the rule's timeouts.backendRequest): the try's
         * timer, and the body bytes this try sent, kept (at most one stream
         * window) to go again on the next try. */
        struct loop_timer try_t;
        struct bbuf replay;
        bool no_replay;  /* more than a window was sent: no retry after a try's timeout */
        uint32_t resend; /* bytes at the front of reqb sent before: window given back */
};

struct h2_worker {
        struct worker *w;
        struct h2c *conns;
        struct h2u *ups;
        /* The same sessions by key: a stream finds its endpoint's without
         * walking every session of the worker. */
        struct h2u *up_bucket[H2_UP_BUCKETS];
        struct sess *dirty;
        bool running;
        nghttp2_session_callbacks *cb_server, *cb_client;
        nghttp2_option *opt_server, *opt_client;
        uint64_t next_up_id;
        struct warn_limit warn; /* streams answered locally: one line a second */
};

static const char *const grpc_names[GRPC_CODES] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *h2proxy_grpc_code_name(int code)
{
        return code >= 0 && code < GRPC_CODES ? grpc_names[code] : "UNKNOWN";
}

#define GRPC_DEADLINE_EXCEEDED  4
#define GRPC_UNIMPLEMENTED      12
#define GRPC_RESOURCE_EXHAUSTED 8
#define GRPC_UNAVAILABLE        14

static void mark_dirty(struct sess *s);
static void hw_run(struct h2_worker *hw);
static void stream_fail(struct h2s *st, int grpc, int http, const char *reason);
static void stream_maybe_free(struct h2s *st);
static void stream_route(struct h2s *st);
static void stream_mirror_end(struct h2s *st, const char *why);
static bool stream_idempotent(const struct h2s *st);
static void stream_retry(struct h2s *st, enum route_outcome o, const char *what);

/* ---- small buffers -------------------------------------------------------------- */

/* Appends n bytes; growth is bounded by the flow-control window the peer
 * honours (nghttp2 refuses DATA over it), plus small local bodies. */
static int bbuf_put(struct bbuf *b, const uint8_t *d, size_t n)
{
        if (b->off && b->off == b->len)
                b->off = b->len = 0;
        if (b->len + n > b->cap) {
                if (b->off) {
                        memmove(b->p, b->p + b->off, b->len - b->off);
                        b->len -= b->off;
                        b->off = 0;
                }
                if (b->len + n > b->cap) {
                        uint32_t cap = b->cap ? b->cap : 4096;
                        while (cap < b->len + n)
                                cap *= 2;
                        uint8_t *p = realloc(b->p, cap);
                        if (!p)
                                return -ENOMEM;
                        b->p = p;
                        b->cap = cap;
                }
        }
        memcpy(b->p + b->len, d, n);
        b->len += (uint32_t)n;
        return 0;
}

static uint32_t bbuf_avail(const struct bbuf *b)
{
        return b->len - b->off;
}

static void bbuf_free(struct bbuf *b)
{
        free(b->p);
        memset(b, 0, sizeof(*b));
}

static int hdrs_add(struct hdrs *h, const uint8_t *name, size_t nl, const uint8_t *value, size_t vl)
{
        if (h->n == h->cap) {
                uint32_t cap = h->cap ? h->cap * 2 : 16;
                struct hdr *v = realloc(h->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                h->v = v;
                h->cap = cap;
        }
        if (h->alen + nl + vl + 2 > h->acap) {
                uint32_t cap = h->acap ? h->acap : 512;
                while (cap < h->alen + nl + vl + 2)
                        cap *= 2;
                char *a = realloc(h->arena, cap);
                if (!a)
                        return -ENOMEM;
                h->arena = a;
                h->acap = cap;
        }
        struct hdr *e = &h->v[h->n++];
        e->name = h->alen;
        e->namelen = (uint32_t)nl;
        memcpy(h->arena + h->alen, name, nl);
        h->alen += (uint32_t)nl + 1;
        e->value = h->alen;
        e->valuelen = (uint32_t)vl;
        memcpy(h->arena + h->alen, value, vl);
        h->alen += (uint32_t)vl + 1;
        return 0;
}

static void hdrs_clear(struct hdrs *h)
{
        h->n = 0;
        h->alen = 0;
}

static void hdrs_free(struct hdrs *h)
{
        free(h->v);
        free(h->arena);
        memset(h, 0, sizeof(*h));
}

/* nghttp2 copies what it is given: the array lives only for the call. It
 * is the caller's stack array of H2_NV_STACK entries when the block fits
 * (most do: no allocation per request and response), else allocated;
 * hdrs_nv_done frees it then. */
#define H2_NV_STACK 32
static nghttp2_nv *hdrs_nv(const struct hdrs *h, nghttp2_nv *stack)
{
        nghttp2_nv *nv = h->n <= H2_NV_STACK ? stack : calloc(h->n, sizeof(*nv));
        if (!nv)
                return NULL;
        for (uint32_t i = 0; i < h->n; i++) {
                nv[i].name = (uint8_t *)h->arena + h->v[i].name;
                nv[i].namelen = h->v[i].namelen;
                nv[i].value = (uint8_t *)h->arena + h->v[i].value;
                nv[i].valuelen = h->v[i].valuelen;
                nv[i].flags = NGHTTP2_NV_FLAG_NONE;
        }
        return nv;
}

static void hdrs_nv_done(nghttp2_nv *nv, const nghttp2_nv *stack)
{
        if (nv != stack)
                free(nv);
}

#define NV(n, v)                                                                                   \
        {                                                                                          \
                (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE     \
        }

/* ---- worker state ----------------------------------------------------------------- */

static const struct shunt_config *hw_cfg(struct h2_worker *hw)
{
        return worker_cfg(hw->w);
}

/* An idle upstream session closes first, like pooled HTTP/1.1 connections:
 * before the server's own idle timeout can race a new stream. */
static uint32_t up_idle_ms(struct h2_worker *hw)
{
        return hw_cfg(hw)->http_upstream_idle_timeout_ms;
}

static struct loop *hw_loop(struct h2_worker *hw)
{
        return hw->w->loop;
}

static void stat_inc(struct h2_worker *hw, enum stat_id id)
{
        stat_add(&hw->w->stats, id, 1);
}

static void stat_dec(struct h2_worker *hw, enum stat_id id)
{
        stat_sub(&hw->w->stats, id, 1);
}

/* ---- the sessions' state machines (states-int.h) -------------------------------- */

#define TO(x) (1u << (x))
static const unsigned h2c_next[H2C__COUNT] = {
    [H2C_OPEN] = TO(H2C_DRAINING) | TO(H2C_DEAD) | TO(H2C_CLOSED),
    [H2C_DRAINING] = TO(H2C_DEAD) | TO(H2C_CLOSED),
    [H2C_DEAD] = TO(H2C_CLOSED),
    [H2C_CLOSED] = 0,
};
static const unsigned h2u_next[H2U__COUNT] = {
    [H2U_CONNECTING] = TO(H2U_HANDSHAKE) | TO(H2U_READY) | TO(H2U_DEAD) | TO(H2U_CLOSED),
    [H2U_HANDSHAKE] = TO(H2U_READY) | TO(H2U_CLOSED),
    [H2U_READY] = TO(H2U_GOAWAY) | TO(H2U_CLOSED),
    [H2U_GOAWAY] = TO(H2U_CLOSED),
    [H2U_DEAD] = TO(H2U_CLOSED),
    [H2U_CLOSED] = 0,
};

bool h2c_transition_ok(enum h2c_state from, enum h2c_state to)
{
        return (unsigned)from < H2C__COUNT && (unsigned)to < H2C__COUNT &&
               (h2c_next[from] & TO(to));
}

bool h2u_transition_ok(enum h2u_state from, enum h2u_state to)
{
        return (unsigned)from < H2U__COUNT && (unsigned)to < H2U__COUNT &&
               (h2u_next[from] & TO(to));
}

const char *h2c_state_name(enum h2c_state st)
{
        static const char *const names[H2C__COUNT] = {
            [H2C_OPEN] = "streams",
            [H2C_DRAINING] = "draining",
            [H2C_DEAD] = "closing",
            [H2C_CLOSED] = "closed",
        };
        return (unsigned)st < H2C__COUNT ? names[st] : "unknown";
}

static void h2c_set_state(struct h2c *c, enum h2c_state next)
{
        assert(h2c_transition_ok(c->s.state.c, next));
        c->s.state.c = next;
}

static void h2u_set_state(struct h2u *u, enum h2u_state next)
{
        assert(h2u_transition_ok(u->s.state.u, next));
        u->s.state.u = next;
}

/* The client connection is to be closed at the next pump. */
static void client_kill(struct h2c *c)
{
        if (c->s.state.c == H2C_OPEN || c->s.state.c == H2C_DRAINING)
                h2c_set_state(c, H2C_DEAD);
}

static void client_fault(struct h2c *c, enum h2c_fault f)
{
        if (f > c->fault)
                c->fault = f;
}

static bool client_flooded(const struct h2c *c)
{
        return c->fault == H2C_FAULT_FLOOD;
}

/* The upstream session was established (its streams may have gone out). */
static bool up_opened(const struct h2u *u)
{
        return u->s.state.u == H2U_READY || u->s.state.u == H2U_GOAWAY;
}

/* A new stream may go on it: not failed, closed or told GOAWAY. */
static bool up_takes_streams(const struct h2u *u)
{
        return u->s.state.u == H2U_CONNECTING || u->s.state.u == H2U_HANDSHAKE ||
               u->s.state.u == H2U_READY;
}

/* Freed after this epoll batch: no more work, no callbacks. */
static bool sess_closed(const struct sess *s)
{
        return s->kind == SESS_CLIENT ? s->state.c == H2C_CLOSED : s->state.u == H2U_CLOSED;
}

static void mark_dirty(struct sess *s)
{
        if (s->dirty || sess_closed(s))
                return;
        s->dirty = true;
        s->dnext = s->hw->dirty;
        s->hw->dirty = s;
}

/* ---- streams ------------------------------------------------------------------------ */

static const char *grpc_encode(const char *in, char *out, size_t len)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < len; p++) {
                if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
                        out[o++] = (char)*p;
                } else {
                        out[o++] = '%';
                        out[o++] = hex[*p >> 4];
                        out[o++] = hex[*p & 15];
                }
        }
        out[o] = 0;
        return out;
}

/* grpc-timeout: 1-8 digits and a unit (H M S m u n); ms rounded up, 0 if bad. */
static uint64_t grpc_timeout_ms(const uint8_t *v, size_t n)
{
        if (n < 2 || n > 9)
                return 0;
        uint64_t x = 0;
        for (size_t i = 0; i + 1 < n; i++) {
                if (v[i] < '0' || v[i] > '9')
                        return 0;
                x = x * 10 + (uint64_t)(v[i] - '0');
        }
        switch (v[n - 1]) {
        case 'H':
                return x * 3600000;
        case 'M':
                return x * 60000;
        case 'S':
                return x * 1000;
        case 'm':
                return x ? x : 1;
        case 'u':
                return (x + 999) / 1000 ? (x + 999) / 1000 : 1;
        case 'n':
                return (x + 999999) / 1000000 ? (x + 999999) / 1000000 : 1;
        }
        return 0;
}

static void stream_unlink_up(struct h2s *st)
{
        struct h2u *u = st->u;
        if (!u)
                return;
        if (st->uprev)
                st->uprev->unext = st->unext;
        else
                u->streams = st->unext;
        if (st->unext)
                st->unext->uprev = st->uprev;
        st->uprev = st->unext = NULL;
        u->n_streams--;
        if (!u->n_streams && !sess_closed(&u->s))
                loop_timer_arm(hw_loop(st->hw), &u->timer, up_idle_ms(st->hw));
        st->u = NULL;
        st->u_open = false;
        st->uid = 0;
}

/* A pseudo-header of the request copied into buf (NULL when absent), for
 * the tap. */
static const char *req_pseudo(const struct h2s *st, const char *name, char *buf, size_t cap)
{
        size_t n = strlen(name);
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                if (h->namelen == n && !memcmp(st->req.arena + h->name, name, n)) {
                        snprintf(buf, cap, "%.*s", (int)h->valuelen, st->req.arena + h->value);
                        return buf;
                }
        }
        return NULL;
}

/* The stream ended: the per-request end hook (reqmetrics.h). */
static void stream_end_hook(struct h2s *st, int grpc_code)
{
        char method[16], path[256], authority[128], rid[40];
        struct h2c *c = st->c;
        reqmetrics_request(
            st->hw->w, &(struct req_end){
                           .dir = c->dir,
                           .protocol = st->grpc ? "grpc" : "http2",
                           .peer_tls = c->s.tls,
                           .route = &st->route,
                           .orig_dst = &c->orig_dst,
                           .status = st->http_status,
                           .grpc_status = st->grpc ? grpc_code : -1,
                           .start_ns = st->start_ns,
                           .conn_id = c->id,
                           .stream_id = (uint32_t)st->cid,
                           .method = req_pseudo(st, ":method", method, sizeof(method)),
                           .path = req_pseudo(st, ":path", path, sizeof(path)),
                           .authority = req_pseudo(st, ":authority", authority, sizeof(authority)),
                           .request_id = req_pseudo(st, "x-request-id", rid, sizeof(rid)),
                           .span = &st->span,
                           .client = &c->client,
                           .endpoint = st->routed || c->dir == DIR_INBOUND ? &st->upstream : NULL,
                           .bytes_received = st->req_sent,
                           .bytes_sent = st->resp_sent,
                           .attempts = st->attempts,
                           .end = st->local      ? "local"
                                  : st->resp_eof ? "done"
                                                 : "reset",
                       });
}

static void stream_free(struct h2s *st)
{
        struct h2_worker *hw = st->hw;
        loop_timer_cancel(hw_loop(hw), &st->deadline);
        loop_timer_cancel(hw_loop(hw), &st->retry);
        loop_timer_cancel(hw_loop(hw), &st->stall);
        loop_timer_cancel(hw_loop(hw), &st->try_t);
        if (st->attempt_open)
                route_request_done(&st->route, &st->upstream, ROUTE_CANCELLED);
        if (st->c) {
                struct h2c *c = st->c;
                if (st->cprev)
                        st->cprev->cnext = st->cnext;
                else
                        c->streams = st->cnext;
                if (st->cnext)
                        st->cnext->cprev = st->cprev;
                c->n_streams--;
                c->s.last_active_ms = loop_now_ms(hw_loop(hw));
        }
        int code = st->grpc_status >= 0 && st->grpc_status < GRPC_CODES ? st->grpc_status
                                                                        : 2 /* UNKNOWN */;
        if (st->grpc)
                stat_inc(hw, (enum stat_id)(ST_GRPC_STATUS_FIRST + code));
        if (st->mirror)
                stream_mirror_end(st, "the request ended before it was complete");
        if (st->c)
                stream_end_hook(st, code);
        log_debug("h2", st->c ? st->c->id : 0,
                  "stream %d done: upstream %s status %d grpc-status %d attempts %u", st->cid,
                  st->routed ? "routed" : "none", st->http_status, st->grpc_status, st->attempts);
        route_release(&st->route);
        stat_dec(hw, ST_H2_STREAMS_ACTIVE);
        hdrs_free(&st->req);
        hdrs_free(&st->qtrail);
        hdrs_free(&st->resp);
        hdrs_free(&st->rtrail);
        bbuf_free(&st->reqb);
        bbuf_free(&st->respb);
        bbuf_free(&st->replay);
        free(st);
}

static void stream_maybe_free(struct h2s *st)
{
        if (!st->c_open && !st->u_open)
                stream_free(st);
}

/* The verdict on the current attempt, once, for breakers and outlier
 * detection (route.h). */
static void attempt_done(struct h2s *st, enum route_outcome o)
{
        if (!st->attempt_open)
                return;
        st->attempt_open = false;
        route_request_done(&st->route, &st->upstream, o);
}

/* How a finished response counts: 5xx, and gRPC UNAVAILABLE, as failures. */
static enum route_outcome response_outcome(const struct h2s *st)
{
        if (st->http_status >= 500 || st->grpc_status == GRPC_UNAVAILABLE)
                return ROUTE_HTTP_5XX;
        return ROUTE_SUCCESS;
}

/* Resets the upstream half (the client half is gone or answered locally). */
static void stream_cancel_up(struct h2s *st)
{
        attempt_done(st, ROUTE_CANCELLED);
        if (st->u && st->u_open && !sess_closed(&st->u->s)) {
                nghttp2_submit_rst_stream(st->u->s.ng, NGHTTP2_FLAG_NONE, st->uid, NGHTTP2_CANCEL);
                mark_dirty(&st->u->s);
        }
}

/* Reading the response body for the client (client session's data callback). */
static ssize_t resp_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
        (void)ud;
        struct h2s *st = src->ptr;
        size_t n = bbuf_avail(&st->respb);
        if (n > length)
                n = length;
        if (n) {
                memcpy(buf, st->respb.p + st->respb.off, n);
                st->respb.off += (uint32_t)n;
                st->resp_sent += n;
                st->progress_ms = loop_now_ms(hw_loop(st->hw));
                /* A local answer's body never came from upstream. */
                if (st->u && !sess_closed(&st->u->s) && !st->local) {
                        nghttp2_session_consume_stream(st->u->s.ng, st->uid, n);
                        mark_dirty(&st->u->s);
                }
        }
        if (!bbuf_avail(&st->respb) && st->resp_eof) {
                *flags |= NGHTTP2_DATA_FLAG_EOF;
                if (st->rtrail.n) {
                        nghttp2_nv nvs[H2_NV_STACK], *nv = hdrs_nv(&st->rtrail, nvs);
                        if (nv) {
                                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                                nghttp2_submit_trailer(ng, sid, nv, st->rtrail.n);
                                hdrs_nv_done(nv, nvs);
                        }
                }
                return (ssize_t)n;
        }
        if (!n)
                return NGHTTP2_ERR_DEFERRED;
        return (ssize_t)n;
}

/* A try with a timeout keeps what it sent of the body for the next try,
 * up to one stream window (then the request cannot go again). */
static void keep_for_replay(struct h2s *st, const uint8_t *p, size_t n)
{
        if (st->no_replay || !route_try_timeout_ms(&st->route))
                return;
        if (bbuf_avail(&st->replay) + n > H2_STREAM_WINDOW || bbuf_put(&st->replay, p, n) < 0) {
                st->no_replay = true;
                bbuf_free(&st->replay);
        }
}

/* Reading the request body for the upstream (upstream session's callback). */
static ssize_t req_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                        uint32_t *flags, nghttp2_data_source *src, void *ud)
{
        (void)ud;
        struct h2s *st = src->ptr;
        if (!st->u || st->u->s.ng != ng || st->uid != sid)
                return NGHTTP2_ERR_DEFERRED; /* a try given up (its reset follows) */
        size_t n = bbuf_avail(&st->reqb);
        if (n > length)
                n = length;
        if (n) {
                memcpy(buf, st->reqb.p + st->reqb.off, n);
                keep_for_replay(st, buf, n);
                st->reqb.off += (uint32_t)n;
                st->req_sent += n;
                st->progress_ms = loop_now_ms(hw_loop(st->hw));
                size_t give = n - (n < st->resend ? n : st->resend);
                st->resend -= (uint32_t)(n - give);
                if (give && st->c && st->c_open) {
                        nghttp2_session_consume_stream(st->c->s.ng, st->cid, give);
                        mark_dirty(&st->c->s);
                }
        }
        if (!bbuf_avail(&st->reqb) && st->req_eof) {
                *flags |= NGHTTP2_DATA_FLAG_EOF;
                if (st->qtrail.n) {
                        nghttp2_nv nvs[H2_NV_STACK], *nv = hdrs_nv(&st->qtrail, nvs);
                        if (nv) {
                                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                                nghttp2_submit_trailer(ng, sid, nv, st->qtrail.n);
                                hdrs_nv_done(nv, nvs);
                        }
                }
                return (ssize_t)n;
        }
        if (!n)
                return NGHTTP2_ERR_DEFERRED;
        return (ssize_t)n;
}

/* Answers the client ourselves: gRPC gets a trailers-only response with a
 * grpc-status, HTTP a short text with a one-line reason header. After the
 * response began, all that is left is a reset. */
static void stream_fail(struct h2s *st, int grpc, int http, const char *reason)
{
        struct h2_worker *hw = st->hw;
        /* The answer is final: a retry waiting out its backoff goes too. */
        loop_timer_cancel(hw_loop(hw), &st->retry);
        stream_cancel_up(st);
        if (!st->c_open || !st->c || sess_closed(&st->c->s))
                return;
        struct h2c *c = st->c;
        if (st->replied) {
                nghttp2_submit_rst_stream(c->s.ng, NGHTTP2_FLAG_NONE, st->cid,
                                          grpc == GRPC_DEADLINE_EXCEEDED ? NGHTTP2_CANCEL
                                                                         : NGHTTP2_INTERNAL_ERROR);
                stat_inc(hw, ST_H2_STREAM_RESETS);
                if (st->grpc && st->grpc_status < 0)
                        st->grpc_status = grpc;
                mark_dirty(&c->s);
                return;
        }
        st->replied = st->local = true;
        stat_inc(hw, http == 504   ? ST_H2_REPLY_504
                     : http == 431 ? ST_H2_REPLY_431
                                   : ST_H2_REPLY_503);
        if (warn_limit_allow(&hw->warn, loop_now_ms(hw_loop(hw)), "h2"))
                log_warn("h2", c->id, "stream %d (%s) answered locally: %s %d: %s", st->cid,
                         route_service_name(&st->route), st->grpc ? "grpc-status" : "status",
                         st->grpc ? grpc : http, reason);
        /* The request body is no longer wanted: drop it and reopen its window
         * (bytes re-queued for another try had theirs already). */
        if (bbuf_avail(&st->reqb) > st->resend)
                nghttp2_session_consume_stream(c->s.ng, st->cid,
                                               bbuf_avail(&st->reqb) - st->resend);
        st->reqb.off = st->reqb.len = 0;
        st->resend = 0;
        if (st->u && !sess_closed(&st->u->s) && bbuf_avail(&st->respb)) {
                nghttp2_session_consume_stream(st->u->s.ng, st->uid, bbuf_avail(&st->respb));
                mark_dirty(&st->u->s);
        }
        st->respb.off = st->respb.len = 0;
        char code[16];
        if (st->grpc) {
                char msg[3 * H2_REASON_MAX + 1];
                char ra[16];
                snprintf(code, sizeof(code), "%d", grpc);
                snprintf(ra, sizeof(ra), "%u", st->retry_after_s);
                st->grpc_status = grpc;
                st->http_status = 200;
                nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                                   NV("grpc-status", code),
                                   NV("grpc-message", grpc_encode(reason, msg, sizeof(msg))),
                                   NV("retry-after", ra)};
                nghttp2_submit_response(c->s.ng, st->cid, nv, st->retry_after_s ? 5 : 4, NULL);
        } else {
                char status[8], clen[16], ra[16];
                snprintf(status, sizeof(status), "%d", http);
                snprintf(ra, sizeof(ra), "%u", st->retry_after_s ? st->retry_after_s : 1);
                st->http_status = http;
                st->respb.off = st->respb.len = 0;
                bbuf_put(&st->respb, (const uint8_t *)reason, strlen(reason));
                bbuf_put(&st->respb, (const uint8_t *)"\n", 1);
                snprintf(clen, sizeof(clen), "%u", bbuf_avail(&st->respb));
                st->resp_eof = true;
                hdrs_clear(&st->rtrail);
                nghttp2_nv nv[] = {NV(":status", status),      NV("content-type", "text/plain"),
                                   NV("content-length", clen), NV("x-shunt-reason", reason),
                                   NV("retry-after", ra),      NV("location", "")};
                nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = resp_read};
                if (st->location) { /* a route's redirect, in place of Retry-After */
                        nv[4] = (nghttp2_nv)NV("location", st->location);
                }
                /* Retry-After only where retrying may help (503, 429). */
                nghttp2_submit_response(c->s.ng, st->cid, nv,
                                        http == 503 || st->retry_after_s || st->location ? 5 : 4,
                                        &prd);
        }
        mark_dirty(&c->s);
}

static void on_deadline(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct h2s *st = t->data;
        struct h2_worker *hw = st->hw;
        if (st->deadline_grpc) {
                /* The caller's budget ran out: no verdict on the endpoint. */
                attempt_done(st, ROUTE_CANCELLED);
                char why[H2_REASON_MAX];
                snprintf(why, sizeof(why), "deadline of %llu ms (grpc-timeout) exceeded upstream",
                         (unsigned long long)st->timeout_ms);
                stream_fail(st, GRPC_DEADLINE_EXCEEDED, 504, why);
        } else if (!st->resp_started) {
                attempt_done(st, ROUTE_TIMEOUT);
                stream_fail(st, GRPC_UNAVAILABLE, 504,
                            "upstream did not answer within timeouts.request");
        }
        hw_run(hw);
}

/* Bytes went into a stream's buffer: the stall clock starts when they
 * begin to wait (and again after the timer found nothing waiting). */
static void stall_watch(struct h2s *st, bool was_empty)
{
        struct h2_worker *hw = st->hw;
        if (!was_empty && loop_timer_armed(&st->stall))
                return;
        st->progress_ms = loop_now_ms(hw_loop(hw));
        if (!loop_timer_armed(&st->stall))
                loop_timer_arm(hw_loop(hw), &st->stall, hw_cfg(hw)->h2_stream_stall_timeout_ms);
}

/* A stream's buffered bytes have not moved for http2.stream_stall_timeout:
 * the client grants no window for its response, or the upstream takes no
 * more of its request. It holds one stream window each way, no more, but
 * forever and in a stream slot of a shared upstream session: ended, with
 * RST_STREAM CANCEL upstream and, towards the client, RST_STREAM CANCEL once
 * the response began, else 504 (gRPC: DEADLINE_EXCEEDED). */
static void on_stall(struct loop *loop, struct loop_timer *t)
{
        struct h2s *st = t->data;
        struct h2_worker *hw = st->hw;
        bool resp = st->c_open && !st->local && bbuf_avail(&st->respb);
        bool req = st->u_open && bbuf_avail(&st->reqb);
        if (!resp && !req)
                return; /* drained: stall_watch arms it again */
        uint64_t bound = hw_cfg(hw)->h2_stream_stall_timeout_ms;
        uint64_t idle = loop_now_ms(loop) - st->progress_ms;
        if (idle < bound) {
                loop_timer_arm(loop, t, bound - idle);
                return;
        }
        stat_inc(hw, ST_H2_STREAM_STALLS);
        attempt_done(st, resp ? ROUTE_CANCELLED : ROUTE_TIMEOUT);
        char why[H2_REASON_MAX];
        snprintf(why, sizeof(why), "%s no bytes for %llu ms (http2.stream_stall_timeout)",
                 resp ? "the client took" : "the upstream took", (unsigned long long)idle);
        if (warn_limit_allow(&hw->warn, loop_now_ms(loop), "h2"))
                log_warn("h2", st->c ? st->c->id : 0, "stream %d (%s) ended: %s", st->cid,
                         route_service_name(&st->route), why);
        stream_fail(st, GRPC_DEADLINE_EXCEEDED, 504, why);
        hw_run(hw);
}

/* ---- upstream sessions ------------------------------------------------------------ */

static void on_up_io(struct loop *loop, struct loop_io *io, uint32_t events);
static void on_up_timer(struct loop *loop, struct loop_timer *t);

static void up_free(struct h2u *u)
{
        struct h2_worker *hw = u->s.hw;
        loop_timer_cancel(hw_loop(hw), &u->timer);
        if (u->s.io.fd >= 0) {
                loop_io_del(hw_loop(hw), &u->s.io);
                close(u->s.io.fd);
        }
        tls_conn_free(u->s.tls);
        nghttp2_session_del(u->s.ng);
        bbuf_free(&u->s.out);
        if (u->s.state.u != H2U_CLOSED) /* up_fail closed it first */
                h2u_set_state(u, H2U_CLOSED);
        if (u->prev)
                u->prev->next = u->next;
        else
                hw->ups = u->next;
        if (u->next)
                u->next->prev = u->prev;
        if (u->bprev)
                u->bprev->bnext = u->bnext;
        else
                hw->up_bucket[u->bucket] = u->bnext;
        if (u->bnext)
                u->bnext->bprev = u->bprev;
        stat_dec(hw, ST_H2_UP_ACTIVE);
        loop_defer_free(hw_loop(hw), u);
}

/* The session is gone: each of its streams is retried on another endpoint
 * when nothing of it went out and route.h allows it, or fails. */
static void up_fail(struct h2u *u, const char *what)
{
        struct h2_worker *hw = u->s.hw;
        char abuf[SOCKADDR_STRLEN], why[H2_REASON_MAX];
        bool opened = up_opened(u);
        log_warn("h2", 0, "upstream session %llu to %s %s: %s", (unsigned long long)u->id,
                 sockaddr_format(&u->addr, abuf, sizeof(abuf)),
                 opened ? "failed" : "could not be opened", what);
        stat_inc(hw, ST_H2_UP_FAILED);
        h2u_set_state(u, H2U_CLOSED); /* no new streams, no callbacks from here on */
        snprintf(why, sizeof(why), "upstream %s: %s", abuf, what);
        while (u->streams) {
                struct h2s *st = u->streams;
                bool fresh = !st->resp_started && !st->req_sent;
                enum route_outcome o = opened ? ROUTE_RESET : ROUTE_CONNECT_FAILURE;
                stream_unlink_up(st);
                attempt_done(st, o);
                if (!st->c_open || st->local)
                        stream_maybe_free(st); /* gone, or answered: nothing to retry */
                else if (fresh)
                        stream_retry(st, o, why);
                else if (!st->resp_started)
                        stream_fail(st, GRPC_UNAVAILABLE, 503, why);
                else
                        stream_fail(st, GRPC_UNAVAILABLE, 502, "upstream failed mid-response");
        }
        up_free(u);
}

static struct h2u *up_new(struct h2_worker *hw, const struct sockaddr_storage *addr,
                          const char *identity)
{
        const struct shunt_config *cfg = hw_cfg(hw);
        struct h2u *u = calloc(1, sizeof(*u));
        if (!u)
                return NULL;
        u->s.kind = SESS_UPSTREAM;
        u->s.hw = hw;
        u->id = ++hw->next_up_id;
        u->addr = *addr;
        snprintf(u->identity, sizeof(u->identity), "%s", identity ? identity : "");
        loop_io_init(&u->s.io, -1, on_up_io, u);
        loop_timer_init(&u->timer, on_up_timer, u);
        if (nghttp2_session_client_new2(&u->s.ng, hw->cb_client, u, hw->opt_client) != 0) {
                free(u);
                return NULL;
        }
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->h2_max_header_list_size},
        };
        nghttp2_submit_settings(u->s.ng, NGHTTP2_FLAG_NONE, iv, 3);
        nghttp2_session_set_local_window_size(u->s.ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);

        const char *what = "";
        int fd = upstream_socket(addr, config_socket_mark(cfg), &what);
        if (fd < 0 && strcmp(what, "connect") != 0) {
                log_error("h2", 0, "upstream %s: %s", what, strerror(-fd));
                nghttp2_session_del(u->s.ng);
                free(u);
                return NULL;
        }
        u->s.io.fd = fd < 0 ? -1 : fd;
        u->next = hw->ups;
        if (hw->ups)
                hw->ups->prev = u;
        hw->ups = u;
        u->bucket = (uint32_t)(upstream_key_hash(addr, u->identity) & (H2_UP_BUCKETS - 1));
        u->bnext = hw->up_bucket[u->bucket];
        if (u->bnext)
                u->bnext->bprev = u;
        hw->up_bucket[u->bucket] = u;
        stat_inc(hw, ST_H2_UP_OPENED);
        stat_inc(hw, ST_H2_UP_ACTIVE);
        u->s.last_active_ms = u->s.last_write_ms = loop_now_ms(hw_loop(hw));
        if (fd < 0) {
                u->dead_why = strerror(-fd); /* up_fail at the next pump, with its streams */
                h2u_set_state(u, H2U_DEAD);
                mark_dirty(&u->s);
        } else if (loop_io_add(hw_loop(hw), &u->s.io, H2_EVENTS) < 0) {
                u->dead_why = "cannot register with epoll";
                h2u_set_state(u, H2U_DEAD);
                mark_dirty(&u->s);
        }
        loop_timer_arm(hw_loop(hw), &u->timer, cfg->connect_timeout_ms);
        return u;
}

/* A session to addr (with identity) that can take another stream: the
 * least loaded one under its peer's concurrency limit, else a new one,
 * else the least loaded (nghttp2 holds the stream until one ends). */
static struct h2u *up_get(struct h2_worker *hw, const struct sockaddr_storage *addr,
                          const char *identity)
{
        struct h2u *best = NULL, *any = NULL;
        int count = 0;
        uint32_t b = (uint32_t)(upstream_key_hash(addr, identity) & (H2_UP_BUCKETS - 1));
        for (struct h2u *u = hw->up_bucket[b]; u; u = u->bnext) {
                if (!up_takes_streams(u) || !sockaddr_equal(&u->addr, addr) ||
                    strcmp(u->identity, identity))
                        continue;
                count++;
                uint32_t max = nghttp2_session_get_remote_settings(
                    u->s.ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
                if (!any || u->n_streams < any->n_streams)
                        any = u;
                if (u->n_streams < max && (!best || u->n_streams < best->n_streams))
                        best = u;
        }
        if (best)
                return best;
        if (count < H2_UP_PER_ENDPOINT) {
                struct h2u *u = up_new(hw, addr, identity);
                if (u)
                        return u;
        }
        return any;
}

/* Sends the request to st->upstream, on a session shared with others. */
static void stream_send(struct h2s *st)
{
        struct h2_worker *hw = st->hw;
        struct worker *w = hw->w;
        char why[H2_REASON_MAX];
        st->attempts++;
        const char *identity = "";
        switch (route_security(&st->route, hw_cfg(hw)->mtls_mode, w->proxy->tls_slot != NULL)) {
        case ROUTE_MTLS:
                identity = route_identity(&st->route); /* this endpoint's own */
                break;
        case ROUTE_REFUSED:
                stat_add(&w->stats, ST_REASON_FIRST + REASON_MTLS_REQUIRED, 1);
                route_refusal(&st->route, &st->upstream, why, sizeof(why));
                stream_fail(st, GRPC_UNAVAILABLE, 503, why);
                return;
        case ROUTE_PLAINTEXT:
                break;
        }
        struct h2u *u = up_get(hw, &st->upstream, identity);
        if (!u) {
                stream_fail(st, GRPC_UNAVAILABLE, 503, "cannot open an upstream connection");
                return;
        }
        nghttp2_nv nvs[H2_NV_STACK], *nv = hdrs_nv(&st->req, nvs);
        if (!nv) {
                stream_fail(st, GRPC_UNAVAILABLE, 503, "out of memory");
                return;
        }
        nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = req_read};
        bool body = !st->req_eof || bbuf_avail(&st->reqb) || st->qtrail.n;
        int32_t id = nghttp2_submit_request(u->s.ng, NULL, nv, st->req.n, body ? &prd : NULL, st);
        hdrs_nv_done(nv, nvs);
        if (id < 0) {
                snprintf(why, sizeof(why), "upstream session refused the stream: %s",
                         nghttp2_strerror(id));
                stream_fail(st, GRPC_UNAVAILABLE, 503, why);
                return;
        }
        st->attempt_open = true;
        st->u = u;
        st->uid = id;
        st->u_open = true;
        st->unext = u->streams;
        st->uprev = NULL;
        if (u->streams)
                u->streams->uprev = st;
        u->streams = st;
        u->n_streams++;
        if (u->s.state.u == H2U_READY)
                loop_timer_cancel(hw_loop(hw), &u->timer); /* the idle timer */
        uint32_t try_ms = route_try_timeout_ms(&st->route);
        if (try_ms) /* on_try_timeout */
                loop_timer_arm(hw_loop(hw), &st->try_t, try_ms);
        mark_dirty(&u->s);
}

/* The try passed its rule's timeouts.backendRequest before the response
 * headers: its upstream stream is reset (CANCEL) and the request goes to
 * another endpoint as after a reset (idempotent, the retry policy and
 * budget agreeing), its body sent so far first; else 504 (gRPC
 * UNAVAILABLE). The request's own deadline bounds all the tries. */
static void on_try_timeout(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct h2s *st = t->data;
        struct h2_worker *hw = st->hw;
        if (st->resp_started || !st->u || !st->u_open || st->local || !st->c_open)
                return;
        attempt_done(st, ROUTE_TIMEOUT);
        struct h2u *u = st->u;
        if (!sess_closed(&u->s)) { /* off this try's stream: its close is not ours */
                nghttp2_submit_rst_stream(u->s.ng, NGHTTP2_FLAG_NONE, st->uid, NGHTTP2_CANCEL);
                nghttp2_session_set_stream_user_data(u->s.ng, st->uid, NULL);
                mark_dirty(&u->s);
        }
        stream_unlink_up(st);
        bool again = !st->no_replay;
        uint32_t sent = bbuf_avail(&st->replay);
        if (again && sent) { /* reqb becomes what this try sent, then the rest */
                struct bbuf nb = {0};
                if (bbuf_put(&nb, st->replay.p + st->replay.off, sent) < 0 ||
                    (bbuf_avail(&st->reqb) &&
                     bbuf_put(&nb, st->reqb.p + st->reqb.off, bbuf_avail(&st->reqb)) < 0)) {
                        bbuf_free(&nb);
                        again = false;
                } else {
                        bbuf_free(&st->reqb);
                        st->reqb = nb;
                        st->req_sent -= sent;
                        st->resend += sent;
                }
                st->replay.off = st->replay.len = 0;
        }
        uint32_t backoff = 0;
        if (again &&
            route_retry_allowed(&st->route, ROUTE_TIMEOUT, 0, stream_idempotent(st), &backoff)) {
                stat_inc(hw, ST_H2_STREAM_RETRIES);
                log_debug("h2", st->c->id,
                          "stream %d: no response within the try's timeout, retry in %u ms",
                          st->cid, backoff);
                loop_timer_arm(hw_loop(hw), &st->retry, backoff);
        } else {
                char why[H2_REASON_MAX];
                snprintf(why, sizeof(why),
                         "no response within the route's timeouts.backendRequest (%u ms)",
                         route_try_timeout_ms(&st->route));
                stream_fail(st, GRPC_UNAVAILABLE, 504, why);
        }
        hw_run(hw);
}

/* The request's consistent-hash key, as for HTTP/1.1: the service's
 * hash_key (else load_balancing.hash_key) is a header name ("Name" or
 * "header:Name"), "cookie:name", or "source_ip" (no key: the source address
 * is hashed). */
static void stream_key(struct h2s *st, struct route_table *t)
{
        const char *key = route_hash_key(t, &st->c->orig_dst);
        if (!key || !key[0])
                key = hw_cfg(st->hw)->lb_hash_key;
        if (!strcasecmp(key, "source_ip"))
                return;
        bool cookie = !strncasecmp(key, "cookie:", 7);
        const char *name = cookie || !strncasecmp(key, "header:", 7) ? key + 7 : key;
        size_t nl = strlen(name);
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                const char *hn = st->req.arena + h->name;
                const char *hv = st->req.arena + h->value;
                if (cookie && h->namelen == 6 && !memcmp(hn, "cookie", 6)) {
                        if (lb_hash_cookie(hv, h->valuelen, name, &st->key_hash) == 0) {
                                st->has_key = true;
                                return;
                        }
                } else if (!cookie && h->namelen == nl && !strncasecmp(hn, name, nl) &&
                           h->valuelen) {
                        st->key_hash = lb_hash_header_value(hv, h->valuelen);
                        st->has_key = true;
                        return;
                }
        }
}

/* Like the HTTP/1.1 engine: a request without an x-request-id gets one
 * (a version 4 UUID), so both hops can log the same id. */
static void stream_request_id(struct h2s *st)
{
        for (uint32_t i = 0; i < st->req.n; i++)
                if (st->req.v[i].namelen == 12 &&
                    !memcmp(st->req.arena + st->req.v[i].name, "x-request-id", 12) &&
                    st->req.v[i].valuelen)
                        return;
        char id[REQUEST_ID_LEN + 1];
        worker_request_id(st->hw->w, id);
        hdrs_add(&st->req, (const uint8_t *)"x-request-id", 12, (const uint8_t *)id,
                 REQUEST_ID_LEN);
}

/* The stream's span under the request's trace context (as the HTTP/1.1
 * engine: traceparent, then b3, then X-B3-*); when tracing is on, the
 * incoming trace fields are replaced by ours. -ENOMEM, else 0. */
static int stream_trace(struct h2s *st)
{
        const char *v[OBS_TRACE_IN_FIELDS] = {0};
        size_t n[OBS_TRACE_IN_FIELDS] = {0};
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                for (int k = 0; k < OBS_TRACE_IN_FIELDS; k++)
                        if (!v[k] && h->namelen == strlen(obs_trace_in_fields[k]) &&
                            !memcmp(st->req.arena + h->name, obs_trace_in_fields[k], h->namelen)) {
                                v[k] = st->req.arena + h->value;
                                n[k] = h->valuelen;
                        }
        }
        /* obs_trace_in_fields: traceparent, b3, x-b3-traceid, x-b3-spanid,
         * x-b3-parentspanid, x-b3-sampled, x-b3-flags */
        struct trace_ctx in;
        bool have = v[0] && trace_parse_traceparent(v[0], n[0], &in) == 0;
        if (!have && v[1])
                have = trace_parse_b3(v[1], n[1], &in) == 0;
        if (!have && (v[2] || v[3] || v[5] || v[6]))
                have =
                    trace_parse_b3_multi(v[2], n[2], v[3], n[3], v[5], n[5], v[6], n[6], &in) == 0;
        enum trace_format b3 = v[1]   ? TRACE_FMT_B3_SINGLE
                               : v[2] ? TRACE_FMT_B3_MULTI
                                      : TRACE_FMT_NONE;
        obs_trace_begin(st->hw->w, have ? &in : NULL, b3, &st->span);
        if (!st->span.active)
                return 0;
        uint32_t k = 0;
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                bool trace_field = false;
                for (int j = 0; j < OBS_TRACE_IN_FIELDS && !trace_field; j++)
                        trace_field =
                            h->namelen == strlen(obs_trace_in_fields[j]) &&
                            !memcmp(st->req.arena + h->name, obs_trace_in_fields[j], h->namelen);
                if (!trace_field)
                        st->req.v[k++] = *h;
        }
        st->req.n = k;
        struct obs_trace_hdrs th;
        obs_trace_headers(&st->span, &th);
        for (int i = 0; i < th.n; i++)
                if (hdrs_add(&st->req, (const uint8_t *)th.name[i], strlen(th.name[i]),
                             (const uint8_t *)th.value[i], th.len[i]) < 0)
                        return -ENOMEM;
        return 0;
}

/* The request's X-Forwarded-Client-Cert as xfcc_action says (the same
 * decision as for HTTP/1.1). -ENOMEM, else 0. */
static int stream_xfcc(struct h2s *st)
{
        struct h2c *c = st->c;
        enum xfcc_action xa =
            xfcc_action(c->dir, hw_cfg(st->hw)->forward_client_cert, c->xfcc != NULL);
        if (xa == XFCC_KEEP)
                return 0;
        struct strbuf xv;
        strbuf_init(&xv);
        uint32_t k = 0;
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                if (h->namelen == sizeof(XFCC_NAME) - 1 &&
                    !memcmp(st->req.arena + h->name, XFCC_NAME, h->namelen)) {
                        if (xa == XFCC_APPEND)
                                xfcc_list_add(&xv, st->req.arena + h->value, h->valuelen);
                        continue;
                }
                st->req.v[k++] = *h;
        }
        st->req.n = k;
        int rc = 0;
        if (xa == XFCC_SET || xa == XFCC_APPEND) {
                xfcc_list_add(&xv, c->xfcc, strlen(c->xfcc));
                rc = xv.truncated
                         ? -ENOMEM
                         : hdrs_add(&st->req, (const uint8_t *)XFCC_NAME, sizeof(XFCC_NAME) - 1,
                                    (const uint8_t *)xv.data, xv.len);
        }
        strbuf_free(&xv);
        return rc;
}

/* ---- traffic routes (route_pick_http, route_*_edits) ---- */

static int hdrs_find(const struct hdrs *h, const char *name, size_t nl)
{
        for (uint32_t i = 0; i < h->n; i++)
                if (h->v[i].namelen == nl && !strncasecmp(h->arena + h->v[i].name, name, nl))
                        return (int)i;
        return -1;
}

static bool stream_header(void *ctx, const char *name, const char **v, size_t *n)
{
        const struct hdrs *h = ctx;
        int i = hdrs_find(h, name, strlen(name));
        if (i < 0)
                return false;
        *v = h->arena + h->v[i].value;
        *n = h->v[i].valuelen;
        return true;
}

/* Sets the value of entry i (a pseudo-header keeps its place). */
static int hdrs_set_value(struct hdrs *h, int i, const char *v, size_t vl)
{
        if (hdrs_add(h, (const uint8_t *)"", 0, (const uint8_t *)v, vl) < 0)
                return -ENOMEM;
        h->n--;
        h->v[i].value = h->v[h->n].value;
        h->v[i].valuelen = (uint32_t)vl;
        return 0;
}

/* Applies a rule's edits to h: drops, then additions (names lower-cased,
 * as HTTP/2 wants them), :path and :authority. -ENOMEM, else 0. */
static int hdrs_edit(struct hdrs *h, const struct route_edits *ed)
{
        uint32_t k = 0;
        for (uint32_t i = 0; i < h->n; i++) {
                bool drop = false;
                for (size_t d = 0; d < ed->ndrop && !drop; d++)
                        drop = h->v[i].namelen == strlen(ed->drop[d]) &&
                               !strncasecmp(h->arena + h->v[i].name, ed->drop[d], h->v[i].namelen);
                if (!drop)
                        h->v[k++] = h->v[i];
        }
        h->n = k;
        for (size_t i = 0; i < ed->nadd; i++) {
                char name[DR_NAME_MAX];
                size_t nl = strlen(ed->add_name[i]);
                for (size_t j = 0; j < nl; j++)
                        name[j] = (char)tolower((unsigned char)ed->add_name[i][j]);
                if (hdrs_add(h, (const uint8_t *)name, nl, (const uint8_t *)ed->add_value[i],
                             strlen(ed->add_value[i])) < 0)
                        return -ENOMEM;
        }
        int i;
        if (ed->path_len >= 0 && (i = hdrs_find(h, ":path", 5)) >= 0 &&
            hdrs_set_value(h, i, ed->path, (size_t)ed->path_len) < 0)
                return -ENOMEM;
        if (ed->host && (i = hdrs_find(h, ":authority", 10)) >= 0 &&
            hdrs_set_value(h, i, ed->host, strlen(ed->host)) < 0)
                return -ENOMEM;
        return 0;
}

/* The stream's rule and backend, then an endpoint (route_pick_http); the
 * rule's request edits and timeout applied. A redirect or no matching rule
 * is answered here (ROUTE_REDIRECT / ROUTE_NO_ROUTE returned). */
static enum route_result stream_pick(struct h2s *st, struct route_table *t)
{
        struct worker *w = st->hw->w;
        const char *method = "", *path = "/";
        size_t ml = 0, pl = 1;
        stream_header(&st->req, ":method", &method, &ml);
        stream_header(&st->req, ":path", &path, &pl);
        struct dr_request dq = {.method = dr_method_parse(method, ml),
                                .path = path,
                                .path_len = pl,
                                .header = stream_header,
                                .ctx = &st->req};
        enum route_result r = route_pick_http(
            t, &w->route_workers, (uint64_t)w->index, &st->c->orig_dst, &st->c->client,
            st->has_key ? &st->key_hash : NULL, &dq, &st->upstream, &st->route);
        if (r == ROUTE_ABORT) {
                stream_fail(st, st->route.rule->abort_grpc, st->route.rule->abort_http,
                            "fault injected by route");
        } else if (r == ROUTE_RATE_LIMITED) {
                st->retry_after_s = st->route.retry_after_s;
                stream_fail(st, GRPC_RESOURCE_EXHAUSTED, 429, "rate limited by route");
        } else if (r == ROUTE_NO_ROUTE) {
                stream_fail(st, GRPC_UNIMPLEMENTED, 404, "no route of the service matches");
        } else if (r == ROUTE_REDIRECT) {
                const char *host = "";
                size_t hl = 0;
                stream_header(&st->req, ":authority", &host, &hl);
                char loc[2 * DR_VALUE_MAX];
                if (dr_redirect_location(st->route.rule, st->route.match, "http", host, hl, path,
                                         pl, loc, sizeof(loc)) < 0) {
                        stream_fail(st, GRPC_UNAVAILABLE, 500, "redirect location too long");
                } else {
                        st->location = loc;
                        stream_fail(st, GRPC_UNIMPLEMENTED, st->route.rule->redirect_status,
                                    "redirected by route");
                        st->location = NULL;
                }
        } else if (r == ROUTE_ENDPOINT) {
                struct route_edits ed;
                if (route_request_edits(&st->route, path, pl, &ed) && hdrs_edit(&st->req, &ed) < 0)
                        stream_fail(st, GRPC_UNAVAILABLE, 503, "out of memory");
                uint32_t ms = route_timeout_ms(&st->route, 0);
                if (ms && !st->deadline_grpc) {
                        st->deadline_grpc = st->grpc;
                        loop_timer_arm(hw_loop(st->hw), &st->deadline, ms);
                }
        }
        return r;
}

/* ---- request mirrors (mirror-int.h) ---- */

static void stream_mirror_end(struct h2s *st, const char *why)
{
        struct mirror *m = st->mirror;
        st->mirror = NULL;
        if (m && why) {
                mirror_h2_cancel(m);
        } else if (m) {
                int rc = mirror_h2_send(m);
                why = rc < 0 ? strerror(-rc) : NULL;
        }
        route_mirror_count(&st->route, why == NULL);
        if (why && warn_limit_allow(&st->hw->warn, loop_now_ms(hw_loop(st->hw)), "h2"))
                log_warn("h2", st->c ? st->c->id : 0,
                         "stream %d (%s): request copy for the mirror dropped: %s", st->cid,
                         route_service_name(&st->route), why);
}

static void mirror_expired(void *owner)
{
        struct h2s *st = owner;
        st->mirror = NULL;
        stream_mirror_end(st, "the request did not end within http.mirror_timeout");
}

/* The route rule's RequestMirror drew this stream: a copy of its head as
 * it goes upstream and of its body goes to an endpoint of the mirror
 * backend once the request is complete, not waited for; or a drop,
 * counted. */
static void stream_mirror_begin(struct h2s *st)
{
        struct worker *w = st->hw->w;
        const struct shunt_config *cfg = hw_cfg(st->hw);
        struct sockaddr_storage to;
        struct mirrors *ms = NULL;
        const char *why = NULL;
        if (!route_mirror_pick(&st->route, &w->route_workers, (uint64_t)w->index, &st->c->client,
                               &to))
                why = "no endpoint of the mirror backend";
        else if (!(ms = worker_mirrors(w)))
                why = "out of memory";
        nghttp2_nv nvs[H2_NV_STACK], *nv = why ? NULL : hdrs_nv(&st->req, nvs);
        if (!why && nv) {
                int err = -ENOMEM;
                st->mirror =
                    mirror_h2_begin(ms, &to, config_socket_mark(cfg), nv, st->req.n, !st->req_eof,
                                    cfg->mirror_max_in_flight, cfg->mirror_max_body,
                                    cfg->mirror_timeout_ms, mirror_expired, st, &err);
                hdrs_nv_done(nv, nvs);
                if (!st->mirror)
                        why = err == -ENOBUFS ? "http.mirror_max_in_flight copies in flight"
                                              : strerror(-err);
        } else if (!why) {
                why = "out of memory";
        }
        if (why || st->req_eof)
                stream_mirror_end(st, why);
}

/* The first attempt of a picked stream: a request slot, then upstream. */
static void stream_go(struct h2s *st)
{
        if (route_limit_acquire(&st->route, LB_LIMIT_REQUESTS) < 0) {
                stream_fail(st, GRPC_UNAVAILABLE, 503, "the service is at limits.max_requests");
                return;
        }
        stream_send(st);
}

/* Picks the endpoint for a new request (route.h's per-request life). */
static void stream_route(struct h2s *st)
{
        struct h2_worker *hw = st->hw;
        struct worker *w = hw->w;
        struct h2c *c = st->c;
        stream_request_id(st);
        if (stream_trace(st) < 0 || stream_xfcc(st) < 0) {
                stream_fail(st, GRPC_UNAVAILABLE, 503, "out of memory");
                return;
        }
        if (c->dir == DIR_INBOUND) {
                st->upstream = c->app; /* no route: the local application */
                stream_send(st);
                return;
        }
        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
            &w->route_reader, &w->proxy->route_slot);
        stream_key(st, t);
        enum route_result r = stream_pick(st, t);
        if (r == ROUTE_NO_ROUTE || r == ROUTE_REDIRECT || r == ROUTE_ABORT ||
            r == ROUTE_RATE_LIMITED || (r == ROUTE_ENDPOINT && st->replied))
                return; /* answered */
        if (r != ROUTE_ENDPOINT) {
                stream_fail(st, GRPC_UNAVAILABLE, 503,
                            r == ROUTE_NO_ENDPOINT
                                ? "no endpoint of the service can serve"
                                : "the destination is no longer a known service");
                return;
        }
        st->routed = true;
        if (st->route.mirror)
                stream_mirror_begin(st);
        if (st->route.delay_ms) { /* on_retry goes on */
                st->delaying = true;
                /* + 1: the loop's clock counts whole ms, never fire early */
                loop_timer_arm(hw_loop(hw), &st->retry, st->route.delay_ms + 1);
                return;
        }
        stream_go(st);
}

static void on_retry(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct h2s *st = t->data;
        struct h2_worker *hw = st->hw;
        struct worker *w = hw->w;
        if (st->delaying) { /* the route's fault delay is over */
                st->delaying = false;
                stream_go(st);
                hw_run(hw);
                return;
        }
        enum route_result r =
            route_retry_pick(&st->route, &w->route_workers, (uint64_t)w->index, &st->c->client,
                             st->has_key ? &st->key_hash : NULL, &st->upstream);
        if (r != ROUTE_ENDPOINT)
                stream_fail(st, GRPC_UNAVAILABLE, 503, "no other endpoint left to retry on");
        else
                stream_send(st);
        hw_run(hw);
}

static bool stream_idempotent(const struct h2s *st)
{
        static const char *const safe[] = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"};
        for (uint32_t i = 0; i < st->req.n; i++) {
                const struct hdr *h = &st->req.v[i];
                if (h->namelen != 7 || memcmp(st->req.arena + h->name, ":method", 7))
                        continue;
                for (size_t k = 0; k < sizeof(safe) / sizeof(safe[0]); k++)
                        if (!strcmp(st->req.arena + h->value, safe[k]))
                                return true;
                return false;
        }
        return false;
}

/* An attempt failed before anything of the request went out: another
 * endpoint after the jittered backoff, if the retry budget allows. */
static void stream_retry(struct h2s *st, enum route_outcome o, const char *what)
{
        uint32_t backoff = 0;
        if (!route_retry_allowed(&st->route, o, 0, stream_idempotent(st), &backoff)) {
                stream_fail(st, GRPC_UNAVAILABLE, 503, what);
                return;
        }
        stat_inc(st->hw, ST_H2_STREAM_RETRIES);
        log_debug("h2", st->c->id, "stream %d: retry in %u ms after %s", st->cid, backoff, what);
        loop_timer_arm(hw_loop(st->hw), &st->retry, backoff);
}

/* ---- upstream session callbacks ------------------------------------------------------ */

static int up_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        (void)ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st || f->hd.type != NGHTTP2_HEADERS)
                return 0;
        st->blk_trailers = st->resp_started;
        st->blk_status = 0;
        if (!st->resp_started)
                hdrs_clear(&st->resp);
        return 0;
}

static int up_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
        (void)flags;
        (void)ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st || f->hd.type != NGHTTP2_HEADERS)
                return 0;
        /* The same bound as for requests: an upstream cannot make us hold
         * more (the stream is reset and the client told UNAVAILABLE/503). */
        st->resp_hdr_bytes += (uint32_t)(nl + vl + 32);
        if (st->resp_hdr_bytes > hw_cfg(st->hw)->h2_max_header_list_size ||
            ++st->resp_fields > H2_MAX_FIELDS)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (nl == 7 && !memcmp(name, ":status", 7)) {
                st->blk_status = 0;
                for (size_t i = 0; i < vl && i < 3; i++)
                        st->blk_status = st->blk_status * 10 + (value[i] - '0');
        }
        if (nl == 11 && !memcmp(name, "grpc-status", 11)) {
                /* 1-3 digits; anything else is UNKNOWN (2), never a code
                 * made of other characters (UNAVAILABLE counts as a failure). */
                int v = vl >= 1 && vl <= 3 ? 0 : -1;
                for (size_t i = 0; v >= 0 && i < vl; i++)
                        v = value[i] >= '0' && value[i] <= '9' ? v * 10 + (value[i] - '0') : -1;
                st->grpc_status = v < 0 ? 2 : v;
        }
        if (hdrs_add(st->blk_trailers ? &st->rtrail : &st->resp, name, nl, value, vl) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return 0;
}

static void resume_client(struct h2s *st)
{
        if (st->c && st->c_open && st->replied && !st->local) {
                nghttp2_session_resume_data(st->c->s.ng, st->cid);
                mark_dirty(&st->c->s);
        }
}

static int up_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        struct h2u *u = ud;
        if (f->hd.type == NGHTTP2_GOAWAY) {
                /* Streams past its last id come back refused: retried. */
                if (u->s.state.u == H2U_READY)
                        h2u_set_state(u, H2U_GOAWAY);
                return 0;
        }
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st)
                return 0;
        bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
        if (f->hd.type == NGHTTP2_HEADERS) {
                if (!st->blk_trailers) {
                        if (st->blk_status < 200) {
                                hdrs_clear(&st->resp); /* informational: not passed on */
                                return 0;
                        }
                        st->resp_started = true;
                        loop_timer_cancel(hw_loop(st->hw), &st->try_t);
                        st->http_status = st->blk_status;
                        if (!st->deadline_grpc)
                                loop_timer_cancel(hw_loop(st->hw), &st->deadline);
                        if (end)
                                st->resp_eof = true;
                        struct route_edits ed; /* the route rule's response edits */
                        if (route_response_edits(&st->route, &ed) && hdrs_edit(&st->resp, &ed) < 0)
                                ed.nadd = 0; /* out of memory: forwarded without them */
                        if (st->c_open && !st->replied) {
                                nghttp2_nv nvs[H2_NV_STACK], *nv = hdrs_nv(&st->resp, nvs);
                                nghttp2_data_provider prd = {.source = {.ptr = st},
                                                             .read_callback = resp_read};
                                if (!nv) { /* before replied: the client gets a 503 */
                                        stream_fail(st, GRPC_UNAVAILABLE, 503, "out of memory");
                                        return 0;
                                }
                                st->replied = true;
                                nghttp2_submit_response(st->c->s.ng, st->cid, nv, st->resp.n,
                                                        end ? NULL : &prd);
                                hdrs_nv_done(nv, nvs);
                                mark_dirty(&st->c->s);
                        }
                } else {
                        st->resp_eof = true;
                        resume_client(st);
                }
        } else if (f->hd.type == NGHTTP2_DATA && end) {
                st->resp_eof = true;
                resume_client(st);
        }
        return 0;
}

static int up_on_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data,
                      size_t len, void *ud)
{
        (void)flags;
        (void)ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, sid);
        if (!st || !st->c_open || st->local) {
                nghttp2_session_consume(ng, sid, len);
                return 0;
        }
        bool was_empty = !bbuf_avail(&st->respb);
        if (bbuf_put(&st->respb, data, len) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        /* Out of the shared connection window into the stream's own. */
        nghttp2_session_consume_connection(ng, len);
        mark_dirty(&st->u->s);
        stall_watch(st, was_empty);
        resume_client(st);
        return 0;
}

static int up_on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t code, void *ud)
{
        (void)ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, sid);
        if (!st)
                return 0;
        bool fresh = !st->resp_started && !st->req_sent;
        bool complete = code == NGHTTP2_NO_ERROR && st->resp_eof;
        stream_unlink_up(st);
        if (complete) {
                attempt_done(st, response_outcome(st));
        } else if (code == NGHTTP2_REFUSED_STREAM && fresh) {
                /* Refused unprocessed (RFC 9113 8.7): past a graceful GOAWAY
                 * (a server ending a connection after so many requests) or
                 * over its stream limit. No fault of the endpoint and no
                 * retry: the request goes again to the same endpoint, on a
                 * session that is not going away, at most H2_REFUSED_MAX
                 * times. */
                attempt_done(st, ROUTE_CANCELLED);
                if (st->c_open && !st->local) {
                        if (st->refused++ < H2_REFUSED_MAX) {
                                stat_inc(st->hw, ST_H2_STREAM_RETRIES);
                                stream_send(st);
                        } else {
                                stream_fail(st, GRPC_UNAVAILABLE, 503,
                                            "upstream refused the stream again and again");
                        }
                }
        } else {
                attempt_done(st, ROUTE_RESET);
                if (st->c_open && !st->local) {
                        char why[H2_REASON_MAX];
                        snprintf(why, sizeof(why), "upstream reset the stream (%s)%s",
                                 nghttp2_http2_strerror(code),
                                 st->resp_started ? " mid-response" : " before responding");
                        stream_fail(st, GRPC_UNAVAILABLE, 503, why);
                }
        }
        stream_maybe_free(st);
        return 0;
}

/* ---- client session callbacks -------------------------------------------------------- */

static void flood_count(struct h2c *c)
{
        uint64_t now = loop_now_ms(hw_loop(c->s.hw));
        if (now - c->flood_window_ms >= 1000) {
                c->flood_window_ms = now;
                c->flood_count = 0;
        }
        if (++c->flood_count > hw_cfg(c->s.hw)->h2_max_control_frames && !client_flooded(c)) {
                client_fault(c, H2C_FAULT_FLOOD);
                log_warn("h2", c->id,
                         "frame flood: more than %u frames that cost work without progress in "
                         "a second; closing with GOAWAY ENHANCE_YOUR_CALM",
                         hw_cfg(c->s.hw)->h2_max_control_frames);
                nghttp2_session_terminate_session(c->s.ng, NGHTTP2_ENHANCE_YOUR_CALM);
        }
}

/* A client's WINDOW_UPDATEs answer DATA we send it (stream and connection
 * window, and more for clients that open windows ahead of reads, as gRPC
 * does for a message it awaits) or open a new stream's window: each DATA
 * frame sent and each stream opened makes H2_WU_PER_FRAME of them free. */
static void wu_earn(struct h2c *c)
{
        c->wu_credit += H2_WU_PER_FRAME;
        if (c->wu_credit > H2_WU_CREDIT_MAX)
                c->wu_credit = H2_WU_CREDIT_MAX;
}

/* One frame head from the client: frames that make us work without moving
 * a request forward count towards the flood limit; so do WINDOW_UPDATEs
 * beyond the credit (wu_earn), and unknown frame types. */
static void frame_classify(struct h2c *c, const uint8_t *head)
{
        uint32_t len = (uint32_t)head[0] << 16 | (uint32_t)head[1] << 8 | head[2];
        uint8_t type = head[3], flags = head[4];
        switch (type) {
        case NGHTTP2_DATA:
                if (len == 0 && !(flags & NGHTTP2_FLAG_END_STREAM))
                        flood_count(c);
                return;
        case NGHTTP2_HEADERS:
        case NGHTTP2_CONTINUATION: /* nghttp2 bounds CONTINUATION chains */
        case NGHTTP2_GOAWAY:
                return;
        case NGHTTP2_PING:
        case NGHTTP2_SETTINGS:
                if (!(flags & NGHTTP2_FLAG_ACK))
                        flood_count(c);
                return;
        case NGHTTP2_WINDOW_UPDATE:
                if (c->wu_credit)
                        c->wu_credit--;
                else
                        flood_count(c);
                return;
        default: /* RST_STREAM, PRIORITY, PUSH_PROMISE, extensions */
                flood_count(c);
                return;
        }
}

/* Walks the frame heads in bytes read from the client before nghttp2 gets
 * them: every frame is seen, including those nghttp2 drops without a
 * callback (for a closed stream, an unknown type). */
static void frame_scan(struct h2c *c, const uint8_t *p, size_t n)
{
        while (n && !client_flooded(c)) {
                if (c->scan_skip) {
                        size_t k = n < c->scan_skip ? n : c->scan_skip;
                        c->scan_skip -= (uint32_t)k;
                        p += k;
                        n -= k;
                        continue;
                }
                size_t k = H2_FRAME_HEAD - c->scan_hlen;
                if (k > n)
                        k = n;
                memcpy(c->scan_head + c->scan_hlen, p, k);
                c->scan_hlen += (uint8_t)k;
                p += k;
                n -= k;
                if (c->scan_hlen < H2_FRAME_HEAD)
                        return;
                c->scan_hlen = 0;
                c->scan_skip = (uint32_t)c->scan_head[0] << 16 | (uint32_t)c->scan_head[1] << 8 |
                               c->scan_head[2];
                frame_classify(c, c->scan_head);
        }
}

/* Feeds bytes read from the client to its session. */
static ssize_t client_recv(struct h2c *c, const uint8_t *p, size_t n)
{
        frame_scan(c, p, n);
        return nghttp2_session_mem_recv(c->s.ng, p, n);
}

static int cl_on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        struct h2c *c = ud;
        if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0;
        struct h2s *st = calloc(1, sizeof(*st));
        if (!st)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        st->hw = c->s.hw;
        st->c = c;
        st->cid = f->hd.stream_id;
        st->c_open = true;
        st->grpc_status = -1;
        st->start_ms = loop_now_ms(hw_loop(c->s.hw));
        st->start_ns = clock_mono_ns();
        loop_timer_init(&st->deadline, on_deadline, st);
        loop_timer_init(&st->retry, on_retry, st);
        loop_timer_init(&st->stall, on_stall, st);
        loop_timer_init(&st->try_t, on_try_timeout, st);
        st->cnext = c->streams;
        if (c->streams)
                c->streams->cprev = st;
        c->streams = st;
        c->n_streams++;
        c->n_total++;
        wu_earn(c);
        stat_inc(c->s.hw, ST_H2_STREAMS);
        stat_inc(c->s.hw, ST_H2_STREAMS_ACTIVE);
        nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, st);
        return 0;
}

static int cl_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
        (void)flags;
        struct h2c *c = ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st || f->hd.type != NGHTTP2_HEADERS)
                return 0;
        /* RFC 9113 6.5.2: name + value + 32 per field. A list over the
         * limit (bytes or H2_MAX_FIELDS) is answered 431 once its block
         * ends; up to then its fields are decoded but not kept. One that
         * goes on to twice the limit is no request but a decompression
         * bomb (one-byte references to a large table entry): the failure
         * makes nghttp2 reset the stream and skip the rest of the block.
         * The block is still decompressed (HPACK state is per connection)
         * but nothing more is validated, copied or handed to us, so it
         * costs what its bytes cost, not what they expand to. A client
         * doing it again and again is a flood. */
        uint32_t max = hw_cfg(c->s.hw)->h2_max_header_list_size;
        st->req_hdr_bytes += (uint32_t)(nl + vl + 32);
        st->req_fields++;
        if (st->req_hdr_bytes > 2 * max || st->req_fields > 2 * H2_MAX_FIELDS) {
                if (warn_limit_allow(&c->s.hw->warn, loop_now_ms(hw_loop(c->s.hw)), "h2"))
                        log_warn("h2", c->id,
                                 "stream %d: header list past twice http2.max_header_list_size "
                                 "or %u fields: reset, the rest of its block not decoded",
                                 st->cid, 2 * H2_MAX_FIELDS);
                stat_inc(c->s.hw, ST_H2_STREAM_RESETS);
                flood_count(c);
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        if (st->req_hdr_bytes > max || st->req_fields > H2_MAX_FIELDS)
                st->too_big = true;
        if (nl == 12 && !memcmp(name, "content-type", 12) && vl >= 16 &&
            !memcmp(value, "application/grpc", 16))
                st->grpc = true;
        if (nl == 12 && !memcmp(name, "grpc-timeout", 12))
                st->timeout_ms = grpc_timeout_ms(value, vl);
        if (st->too_big)
                return 0;
        struct hdrs *h = f->headers.cat == NGHTTP2_HCAT_REQUEST ? &st->req : &st->qtrail;
        /* Trailers never carry an identity: an XFCC there is dropped (the
         * head's goes by xfcc_action). */
        if (h == &st->qtrail && nl == sizeof(XFCC_NAME) - 1 && !memcmp(name, XFCC_NAME, nl))
                return 0;
        if (hdrs_add(h, name, nl, value, vl) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return 0;
}

static void resume_up(struct h2s *st)
{
        if (st->u && st->u_open && !sess_closed(&st->u->s)) {
                nghttp2_session_resume_data(st->u->s.ng, st->uid);
                mark_dirty(&st->u->s);
        }
}

static void stream_start(struct h2s *st)
{
        struct h2_worker *hw = st->hw;
        if (st->too_big) {
                stream_fail(st, GRPC_RESOURCE_EXHAUSTED, 431,
                            "request header list over http2.max_header_list_size or 256 fields");
                return;
        }
        if (st->grpc && st->timeout_ms) {
                st->deadline_grpc = true;
                loop_timer_arm(hw_loop(hw), &st->deadline, st->timeout_ms);
        } else if (!st->grpc) {
                loop_timer_arm(hw_loop(hw), &st->deadline, hw_cfg(hw)->request_timeout_ms);
        }
        stream_route(st);
}

static int cl_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        (void)ud;
        bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;
        if (f->hd.type != NGHTTP2_DATA && f->hd.type != NGHTTP2_HEADERS)
                return 0; /* control frames were counted by frame_scan */
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st)
                return 0;
        if (end)
                st->req_eof = true;
        if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
                stream_start(st);
                return 0;
        }
        if (end && st->mirror)
                stream_mirror_end(st, NULL);
        if (end || f->hd.type == NGHTTP2_HEADERS)
                resume_up(st);
        return 0;
}

static int cl_on_data(nghttp2_session *ng, uint8_t flags, int32_t sid, const uint8_t *data,
                      size_t len, void *ud)
{
        (void)flags;
        struct h2c *c = ud;
        c->bytes_in += len;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, sid);
        if (st && st->mirror && mirror_h2_body(st->mirror, data, len) < 0)
                stream_mirror_end(st, "its body is larger than http.mirror_max_body");
        if (!st || st->local) {
                nghttp2_session_consume(ng, sid, len);
                mark_dirty(&c->s);
                return 0;
        }
        bool was_empty = !bbuf_avail(&st->reqb);
        if (bbuf_put(&st->reqb, data, len) < 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        /* The client's other streams do not wait for this one's upstream. */
        nghttp2_session_consume_connection(ng, len);
        mark_dirty(&c->s);
        stall_watch(st, was_empty);
        resume_up(st);
        return 0;
}

static int cl_on_stream_close(nghttp2_session *ng, int32_t sid, uint32_t code, void *ud)
{
        (void)ud;
        struct h2s *st = nghttp2_session_get_stream_user_data(ng, sid);
        if (!st)
                return 0;
        st->c_open = false;
        if (code != NGHTTP2_NO_ERROR && st->grpc_status < 0)
                st->grpc_status = 1; /* CANCELLED: the client gave up */
        stream_cancel_up(st);
        stream_maybe_free(st);
        return 0;
}

static int cl_on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
        (void)ng;
        struct h2c *c = ud;
        if (f->hd.type == NGHTTP2_DATA && f->hd.length)
                wu_earn(c);
        if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM &&
            !client_flooded(c)) {
                /* nghttp2's own flood checks (e.g. the stream reset rate). */
                client_fault(c, H2C_FAULT_FLOOD);
                log_warn("h2", c->id, "nghttp2 flood protection: GOAWAY ENHANCE_YOUR_CALM");
        }
        if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code == NGHTTP2_PROTOCOL_ERROR)
                client_fault(c, H2C_FAULT_PROTOCOL);
        if (f->hd.type == NGHTTP2_GOAWAY)
                log_debug("h2", c->id, "GOAWAY sent: %s",
                          nghttp2_http2_strerror(f->goaway.error_code));
        return 0;
}

static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *f, int err, void *ud)
{
        (void)ng;
        (void)ud;
        log_debug("h2", 0, "invalid frame type %u stream %d: %s", f->hd.type, f->hd.stream_id,
                  nghttp2_strerror(err));
        return 0;
}

/* nghttp2's own words on what went wrong (debug level). */
static int on_ng_error(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud)
{
        (void)ng;
        (void)code;
        (void)ud;
        log_debug("h2", 0, "nghttp2: %.*s", (int)len, msg);
        return 0;
}

/* ---- sockets -------------------------------------------------------------------------- */

static ssize_t sess_recv(struct sess *s, void *buf, size_t len)
{
        return upstream_io_recv(s->io.fd, s->tls, buf, len);
}

static ssize_t sess_send(struct sess *s, const void *buf, size_t len)
{
        return upstream_io_send(s->io.fd, s->tls, buf, len);
}

/* Reads and feeds nghttp2 until the socket is drained. -1: the session
 * must end (why in *what). */
static int sess_read(struct sess *s, const char **what)
{
        uint8_t buf[H2_READ_CHUNK];
        /* Not past a GOAWAY of ours (a flood ends here, not after the socket is drained). */
        while (s->readable && !sess_closed(s) && nghttp2_session_want_read(s->ng)) {
                ssize_t n = sess_recv(s, buf, sizeof(buf));
                if (n > 0) {
                        if ((size_t)n < sizeof(buf) && !s->tls && !s->rdhup && !s->drain_eagain)
                                s->readable = false;
                        s->last_active_ms = loop_now_ms(hw_loop(s->hw));
                        ssize_t rv = s->kind == SESS_CLIENT
                                         ? client_recv((struct h2c *)s, buf, (size_t)n)
                                         : nghttp2_session_mem_recv(s->ng, buf, (size_t)n);
                        if (rv < 0) {
                                *what = nghttp2_strerror((int)rv);
                                if (s->kind == SESS_CLIENT) {
                                        struct h2c *c = (struct h2c *)s;
                                        client_fault(c, rv == NGHTTP2_ERR_FLOODED
                                                            ? H2C_FAULT_FLOOD
                                                            : H2C_FAULT_PROTOCOL);
                                }
                                return -1;
                        }
                } else if (n == 0) {
                        *what = "peer closed the connection";
                        if (s->kind == SESS_CLIENT)
                                ((struct h2c *)s)->eof = true;
                        return -1;
                } else if (errno == EAGAIN) {
                        s->readable = false;
                } else if (errno != EINTR) {
                        *what = strerror(errno);
                        return -1;
                }
        }
        return 0;
}

/* Writes what nghttp2 has to send until the socket is full or nothing is
 * left. nghttp2 hands frames out one at a time; they are gathered into one
 * buffer of up to H2_OUT_BATCH bytes and written with one send, since a
 * syscall per frame costs far more than the copy. */
static int sess_write(struct sess *s, const char **what)
{
        for (;;) {
                if (!s->writable)
                        return 0;
                if (!bbuf_avail(&s->out)) {
                        s->out.off = s->out.len = 0;
                        while (s->out.len < H2_OUT_BATCH) {
                                const uint8_t *data;
                                ssize_t n = nghttp2_session_mem_send(s->ng, &data);
                                if (n < 0) {
                                        *what = nghttp2_strerror((int)n);
                                        return -1;
                                }
                                if (n == 0)
                                        break;
                                if (s->kind == SESS_CLIENT)
                                        ((struct h2c *)s)->bytes_out += (uint64_t)n;
                                /* The chunk is only valid until the next mem_send. */
                                if (bbuf_put(&s->out, data, (size_t)n) < 0) {
                                        *what = "out of memory";
                                        return -1;
                                }
                        }
                        if (!bbuf_avail(&s->out))
                                return 0;
                }
                size_t want = bbuf_avail(&s->out);
                ssize_t n = sess_send(s, s->out.p + s->out.off, want);
                if (n > 0) {
                        s->out.off += (uint32_t)n;
                        s->last_write_ms = loop_now_ms(hw_loop(s->hw));
                        if ((size_t)n < want && !s->tls)
                                s->writable = false;
                } else if (errno == EAGAIN) {
                        s->writable = false;
                } else if (errno != EINTR) {
                        *what = strerror(errno);
                        return -1;
                }
        }
}

/* ---- client connections ------------------------------------------------------------ */

static void on_client_io(struct loop *loop, struct loop_io *io, uint32_t events);
static void on_client_timer(struct loop *loop, struct loop_timer *t);

static void client_free(struct h2c *c, const char *why)
{
        struct h2_worker *hw = c->s.hw;
        struct worker *w = hw->w;
        loop_timer_cancel(hw_loop(hw), &c->timer);
        loop_io_del(hw_loop(hw), &c->s.io);
        tls_conn_free(c->s.tls);
        c->s.tls = NULL;
        free(c->xfcc);
        c->xfcc = NULL;
        close(c->s.io.fd);
        h2c_set_state(c, H2C_CLOSED);
        /* Every stream ends on the client side; upstream halves are reset. */
        while (c->streams) {
                struct h2s *st = c->streams;
                st->c_open = false;
                stream_cancel_up(st);
                if (st->u_open) {
                        /* Detach: the upstream half ends on its own. */
                        c->streams = st->cnext;
                        if (c->streams)
                                c->streams->cprev = NULL;
                        st->cprev = st->cnext = NULL;
                        c->n_streams--;
                        st->c = NULL;
                } else {
                        stream_free(st);
                }
        }
        nghttp2_session_del(c->s.ng);
        bbuf_free(&c->s.out);
        if (c->prev)
                c->prev->next = c->next;
        else
                hw->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        enum conn_reason reason = c->eof ? REASON_DONE : REASON_CLIENT_RESET;
        if (c->fault == H2C_FAULT_FLOOD) {
                stat_inc(hw, ST_H2_FLOOD);
                reason = REASON_CLIENT_RESET;
        } else if (c->fault == H2C_FAULT_PROTOCOL) {
                stat_inc(hw, ST_H2_PROTOCOL_ERROR);
        } else if (c->fault == H2C_FAULT_STALL) {
                stat_inc(hw, ST_H2_WRITE_STALL);
                reason = REASON_IDLE_TIMEOUT;
        } else if (!c->eof && !strcmp(why, "idle")) {
                reason = REASON_IDLE_TIMEOUT;
        } else if (!strcmp(why, "drained")) {
                reason = REASON_DONE;
        } else if (!c->eof && !strcmp(why, "shutdown")) {
                reason = REASON_SHUTDOWN;
        }
        session_end(w, c->dir, reason);
        if (log_enabled(LOG_DEBUG)) { /* the streams have their access lines */
                char cbuf[SOCKADDR_STRLEN], obuf[SOCKADDR_STRLEN];
                log_debug("h2", c->id,
                          "%s %s -> %s proto=%s streams=%llu sent=%llu received=%llu "
                          "duration_ms=%llu end=%s (%s)",
                          conn_dir_name(c->dir), sockaddr_format(&c->client, cbuf, sizeof(cbuf)),
                          sockaddr_format(&c->orig_dst, obuf, sizeof(obuf)), proto_name(c->proto),
                          (unsigned long long)c->n_total, (unsigned long long)c->bytes_in,
                          (unsigned long long)c->bytes_out,
                          (unsigned long long)(loop_now_ms(hw_loop(hw)) - c->created_ms),
                          conn_reason_name(reason), why);
        }
        loop_defer_free(hw_loop(hw), c);
}

/* The work queued on one session: read, write, close when it is done. */
static void pump(struct sess *s)
{
        const char *what = NULL;
        if (s->kind == SESS_UPSTREAM) {
                struct h2u *u = (struct h2u *)s;
                if (u->s.state.u == H2U_DEAD) {
                        up_fail(u, u->dead_why ? u->dead_why : "connect failed");
                        return;
                }
                if (!up_opened(u))
                        return;
                if (sess_read(s, &what) < 0 || sess_write(s, &what) < 0) {
                        if (u->streams)
                                up_fail(u, what);
                        else
                                up_free(u); /* an idle session closed by the server */
                        return;
                }
                if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng) &&
                    !bbuf_avail(&s->out)) {
                        if (u->streams)
                                up_fail(u, "session ended");
                        else
                                up_free(u);
                }
                return;
        }
        struct h2c *c = (struct h2c *)s;
        if (c->s.state.c == H2C_DEAD) {
                client_free(c, "closed");
                return;
        }
        const char *werr = NULL;
        int rr = sess_read(s, &what);
        /* Whatever nghttp2 queued (a GOAWAY after an error) goes out if it can. */
        int wr = sess_write(s, &werr);
        if (rr < 0 || wr < 0) {
                client_free(c, what ? what : werr ? werr : "error");
                return;
        }
        bool drained = c->s.state.c == H2C_DRAINING && !c->n_streams && !bbuf_avail(&s->out) &&
                       !nghttp2_session_want_write(s->ng);
        /* A drained session has nothing left to read either (our GOAWAY
         * went out): that is its clean end, not the client's doing. */
        if (drained && !client_flooded(c))
                client_free(c, "drained");
        else if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng) &&
                 !bbuf_avail(&s->out))
                client_free(c, client_flooded(c) ? "flood" : "session ended");
}

static void hw_run(struct h2_worker *hw)
{
        if (hw->running)
                return;
        hw->running = true;
        for (int i = 0; hw->dirty && i < H2_DIRTY_ROUNDS; i++) {
                struct sess *s = hw->dirty;
                hw->dirty = s->dnext;
                s->dirty = false;
                if (!sess_closed(s))
                        pump(s);
        }
        hw->running = false;
}

static void on_client_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        struct h2c *c = io->data;
        if (c->s.state.c == H2C_CLOSED)
                return;
        upstream_io_mark(events, c->s.tls != NULL, &c->s.readable, &c->s.writable, &c->s.rdhup);
        mark_dirty(&c->s);
        hw_run(c->s.hw);
}

static void on_client_timer(struct loop *loop, struct loop_timer *t)
{
        struct h2c *c = t->data;
        const struct shunt_config *cfg = hw_cfg(c->s.hw);
        uint64_t now = loop_now_ms(loop);
        uint64_t idle = cfg->idle_timeout_ms;
        if (bbuf_avail(&c->s.out) && now - c->s.last_write_ms >= idle) {
                client_fault(c, H2C_FAULT_STALL);
                log_warn("h2", c->id, "client read nothing for %llu ms: closing",
                         (unsigned long long)(now - c->s.last_write_ms));
                client_free(c, "stalled");
                hw_run(c->s.hw);
                return;
        }
        if (!c->n_streams && now - c->s.last_active_ms >= idle) {
                log_debug("h2", c->id, "idle for %llu ms: GOAWAY",
                          (unsigned long long)(now - c->s.last_active_ms));
                nghttp2_session_terminate_session(c->s.ng, NGHTTP2_NO_ERROR);
                mark_dirty(&c->s);
                if (!c->s.writable)
                        client_kill(c); /* nobody would read the GOAWAY */
                hw_run(c->s.hw);
                if (c->s.state.c != H2C_CLOSED)
                        loop_timer_arm(loop, t, 1000);
                return;
        }
        loop_timer_arm(loop, t, idle / 4 ? idle / 4 : 1);
}

static void h2_worker_free(struct worker *w);

static struct h2_worker *hw_get(struct worker *w)
{
        if (w->h2)
                return w->h2;
        struct h2_worker *hw = calloc(1, sizeof(*hw));
        if (!hw)
                return NULL;
        hw->w = w;
        nghttp2_session_callbacks *cb;
        if (nghttp2_session_callbacks_new(&hw->cb_server) ||
            nghttp2_session_callbacks_new(&hw->cb_client) || nghttp2_option_new(&hw->opt_server) ||
            nghttp2_option_new(&hw->opt_client)) {
                h2_worker_free(w);
                return NULL;
        }
        cb = hw->cb_server;
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cl_on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cb, cl_on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cl_on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cl_on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, cl_on_stream_close);
        nghttp2_session_callbacks_set_on_frame_send_callback(cb, cl_on_frame_send);
        nghttp2_session_callbacks_set_error_callback2(cb, on_ng_error);
        nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
        cb = hw->cb_client;
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, up_on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cb, up_on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, up_on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, up_on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, up_on_stream_close);
        nghttp2_session_callbacks_set_error_callback2(cb, on_ng_error);
        /* Windows reopen only as bytes leave for the other side. */
        nghttp2_option_set_no_auto_window_update(hw->opt_server, 1);
        nghttp2_option_set_no_auto_window_update(hw->opt_client, 1);
        /* No server push from upstream (also refused by SETTINGS). */
        nghttp2_option_set_max_reserved_remote_streams(hw->opt_client, 0);
        w->h2 = hw;
        return hw;
}

static void h2_start(struct worker *w, struct handoff *h)
{
        int fd = h->fd;
        uint64_t id = h->id;
        const uint8_t *pre = h->buf;
        size_t len = h->len;
        enum proto proto = h->proto;
        const struct sockaddr_storage *client = &h->client_addr;
        const struct sockaddr_storage *orig_dst = &h->orig_dst;
        uint64_t created_ms = h->created_ms;
        struct h2_worker *hw = hw_get(w);
        struct h2c *c = hw ? calloc(1, sizeof(*c)) : NULL;
        const struct shunt_config *cfg = worker_cfg(w);
        if (!c || nghttp2_session_server_new2(&c->s.ng, hw->cb_server, c, hw->opt_server) != 0) {
                log_error("h2", id, "out of memory for an HTTP/2 connection: closed");
                free(c);
                tls_conn_free(h->tls);
                close(fd);
                worker_buf_give(w, h->buf, h->cap);
                session_end(w, h->dir, REASON_NO_MEMORY);
                return;
        }
        c->s.kind = SESS_CLIENT;
        c->s.hw = hw;
        c->s.tls = h->tls;
        if (c->s.tls && !(c->xfcc = xfcc_element(c->s.tls)))
                client_kill(c); /* out of memory: closed at the first pump */
        c->id = id;
        c->dir = h->dir;
        c->app = h->upstream;
        c->proto = proto;
        c->client = *client;
        c->orig_dst = *orig_dst;
        c->created_ms = created_ms;
        c->s.last_active_ms = c->s.last_write_ms = loop_now_ms(w->loop);
        c->flood_window_ms = c->s.last_active_ms;
        c->scan_skip = H2_PREFACE_LEN;
        loop_io_init(&c->s.io, fd, on_client_io, c);
        loop_timer_init(&c->timer, on_client_timer, c);
        c->next = hw->conns;
        if (hw->conns)
                hw->conns->prev = c;
        hw->conns = c;
        stat_inc(hw, ST_H2_CONNS);

        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_concurrent_streams},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
            {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->h2_max_header_list_size},
        };
        nghttp2_submit_settings(c->s.ng, NGHTTP2_FLAG_NONE, iv, 3);
        nghttp2_session_set_local_window_size(c->s.ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
        log_debug("h2", id, "%s connection taken over for per-request routing (%zu bytes replayed)",
                  proto_name(proto), len);
        c->s.readable = c->s.writable = true;
        /* eBPF mode: the application's socket may be on the sk_msg shortcut,
         * where a read returns the shortcut's bytes alone while TCP bytes
         * wait behind them (origdst.h): only EAGAIN says it is drained. */
        c->s.drain_eagain = origdst_shortcut_active();
        if (len) {
                ssize_t rv = client_recv(c, pre, len);
                if (rv < 0) {
                        client_fault(c, H2C_FAULT_PROTOCOL);
                        client_kill(c);
                }
        }
        worker_buf_give(w, h->buf, h->cap);
        h->buf = NULL;
        if (loop_io_add(w->loop, &c->s.io, H2_EVENTS) < 0)
                client_kill(c);
        loop_timer_arm(w->loop, &c->timer, cfg->idle_timeout_ms / 4 ? cfg->idle_timeout_ms / 4 : 1);
        mark_dirty(&c->s);
        hw_run(hw);
}

/* ---- upstream events ------------------------------------------------------------------ */

static void up_connected(struct h2u *u)
{
        struct h2_worker *hw = u->s.hw;
        if (u->identity[0]) {
                if (upstream_tls_start(hw->w, u->s.io.fd, u->id, u->identity, &u->addr, &u->s.tls) <
                    0) {
                        up_fail(u, "cannot start TLS");
                        return;
                }
                h2u_set_state(u, H2U_HANDSHAKE);
                loop_timer_arm(hw_loop(hw), &u->timer, hw_cfg(hw)->mtls_handshake_timeout_ms);
                return;
        }
        h2u_set_state(u, H2U_READY);
        loop_timer_cancel(hw_loop(hw), &u->timer);
        if (!u->n_streams)
                loop_timer_arm(hw_loop(hw), &u->timer, up_idle_ms(hw));
}

static void on_up_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        struct h2u *u = io->data;
        struct h2_worker *hw = u->s.hw;
        if (u->s.state.u == H2U_CLOSED)
                return;
        upstream_io_mark(events, u->s.tls, &u->s.readable, &u->s.writable, &u->s.rdhup);
        if (u->s.state.u == H2U_CONNECTING) {
                int err = upstream_connect_result(io->fd, events);
                if (err == 1)
                        return;
                if (err) {
                        up_fail(u, strerror(err));
                        hw_run(hw);
                        return;
                }
                up_connected(u);
                if (u->s.state.u == H2U_CLOSED) {
                        hw_run(hw);
                        return;
                }
                u->s.readable = u->s.writable = true;
        }
        if (u->s.state.u == H2U_HANDSHAKE) {
                int r = tls_conn_handshake(u->s.tls);
                if (r == -EAGAIN) {
                        hw_run(hw);
                        return;
                }
                if (r < 0) {
                        up_fail(u, "TLS handshake failed");
                        hw_run(hw);
                        return;
                }
                h2u_set_state(u, H2U_READY);
                loop_timer_cancel(hw_loop(hw), &u->timer);
                u->s.readable = u->s.writable = true;
        }
        mark_dirty(&u->s);
        hw_run(hw);
}

static void on_up_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct h2u *u = t->data;
        struct h2_worker *hw = u->s.hw;
        if (u->s.state.u == H2U_CONNECTING || u->s.state.u == H2U_DEAD) {
                up_fail(u, "connect timed out");
        } else if (u->s.state.u == H2U_HANDSHAKE) {
                tls_conn_timeout(u->s.tls);
                up_fail(u, "TLS handshake timed out");
        } else if (!u->n_streams) {
                log_debug("h2", u->id, "upstream session idle: closing");
                up_free(u);
        }
        hw_run(hw);
}

/* ---- worker lifetime and reporting ----------------------------------------------------- */

static void h2_close_all(struct worker *w, int reason)
{
        (void)reason; /* counted as shutdown */
        struct h2_worker *hw = w->h2;
        if (!hw)
                return;
        hw->running = true; /* no pumping while everything goes */
        while (hw->conns)
                client_free(hw->conns, "shutdown");
        while (hw->ups) {
                struct h2u *u = hw->ups;
                while (u->streams) {
                        struct h2s *st = u->streams;
                        stream_unlink_up(st);
                        stream_maybe_free(st);
                }
                up_free(u);
        }
        hw->dirty = NULL;
        hw->running = false;
}

/* The daemon drains: every client gets GOAWAY (NO_ERROR) naming the last
 * stream it started, so it opens new streams elsewhere; the connection ends
 * once its streams have, an idle one at once. */
static void h2_drain(struct worker *w)
{
        struct h2_worker *hw = w->h2;
        if (!hw)
                return;
        for (struct h2c *c = hw->conns; c; c = c->next) {
                if (c->s.state.c != H2C_OPEN)
                        continue;
                h2c_set_state(c, H2C_DRAINING);
                nghttp2_submit_goaway(c->s.ng, NGHTTP2_FLAG_NONE,
                                      nghttp2_session_get_last_proc_stream_id(c->s.ng),
                                      NGHTTP2_NO_ERROR, NULL, 0);
                mark_dirty(&c->s);
        }
        hw_run(hw);
}

static void h2_worker_free(struct worker *w)
{
        struct h2_worker *hw = w->h2;
        if (!hw)
                return;
        h2_close_all(w, REASON_SHUTDOWN);
        if (hw->cb_server)
                nghttp2_session_callbacks_del(hw->cb_server);
        if (hw->cb_client)
                nghttp2_session_callbacks_del(hw->cb_client);
        if (hw->opt_server)
                nghttp2_option_del(hw->opt_server);
        if (hw->opt_client)
                nghttp2_option_del(hw->opt_client);
        free(hw);
        w->h2 = NULL;
}

static void h2_render(struct worker *w, struct strbuf *out, bool *first)
{
        struct h2_worker *hw = w->h2;
        if (!hw)
                return;
        uint64_t now = clock_mono_ms();
        for (struct h2c *c = hw->conns; c; c = c->next) {
                /* One upstream per request: the connection itself has none. */
                struct h2s *st = c->streams;
                conn_render_open(out, first, w, c->id, c->dir, &c->client, &c->orig_dst,
                                 "per-request", st ? route_service_name(&st->route) : "-");
                strbuf_appendf(out,
                               ",\"protocol\":\"%s\",\"state\":\"%s\",\"streams\":%u,"
                               "\"streams_total\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                               "\"age_ms\":%llu,\"sni\":\"\"}",
                               proto_name(c->proto), h2c_state_name(c->s.state.c), c->n_streams,
                               (unsigned long long)c->n_total, (unsigned long long)c->bytes_in,
                               (unsigned long long)c->bytes_out,
                               (unsigned long long)(now - c->created_ms));
        }
}

const struct proto_engine h2_engine = {
    .name = "http2",
    .start = h2_start,
    .close_all = h2_close_all,
    .render = h2_render,
    .worker_free = h2_worker_free,
    .drain = h2_drain,
};

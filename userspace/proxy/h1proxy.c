// SPDX-License-Identifier: Apache-2.0
/* HTTP/1.1 request-level proxying, both directions.
 *
 * The relay hands over an outbound connection to a known service once its
 * protocol is HTTP/1.x (declared for the port or sniffed), and an inbound
 * one with mTLS on for its port once the sniffer found HTTP/1.x (in the
 * plaintext of the terminated mesh TLS, or plain in permissive mode). From
 * then on the session reads one request head at a time (http1.h, strict
 * framing), picks an endpoint for that request (outbound:
 * route_pick_request, with the request's hash key; inbound: always the
 * local application at the original destination), takes an upstream
 * connection from the worker's pool or opens one (upstream.h), forwards the
 * rewritten head and streams the body with its framing unchanged, then
 * streams the response back the same way. Only one request is in flight per
 * client connection; pipelined requests wait in the input buffer. The
 * client side of an inbound session may be TLS: it is read and written
 * like a TLS upstream (upstream_io_*).
 *
 * Memory per session is bounded: two buffers of buffer_size (client input,
 * upstream input), taken from the worker's cache while a request is in
 * flight, plus the two rewritten heads. A full buffer stops reading its
 * source (backpressure both ways); idle keep-alive sessions hold no buffer.
 *
 * Errors shuntd answers itself (each with X-Shunt-Reason, Connection: close):
 * 400/414/431/501/505 for requests the parser refuses, 503 with Retry-After
 * when no endpoint can serve or none could be connected, 504 when no
 * response head arrived within timeouts.request, 502 when the upstream
 * failed or sent garbage before the response started. After response bytes
 * went to the client a failure can only reset the client connection. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/sockaddr.h"
#include "intercept/origdst.h"
#include "lb/lb.h"
#include "http/http1.h"
#include "http/tracectx.h"
#include "proxy/mirror-int.h"
#include "proxy/obs.h"
#include "proxy/proxy-int.h"
#include "proxy/states-int.h"
#include "proxy/reqmetrics.h"
#include "proxy/tap.h"
#include "proxy/upstream.h"
#include "proxy/xfcc.h"
#include "tls/conn.h"

#define H1_EVENTS      (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
#define LINGER_MS      1000 /* reading what a client still sends after an error reply */
#define BACKOFF_MS     25   /* first retry backoff; doubles, +-50 % jitter */
#define RETRY_AFTER_S  1    /* Retry-After of a 503 */
#define SERVICE_MAX    160
#define LOG_TARGET_MAX 128

/* One direction of an exchange: a rewritten head to send first, then the
 * raw bytes of the source in buf. [off, cls) are bytes of the current
 * message that may be sent; [cls, len) are not classified yet (or belong
 * to the next message). */
struct flow {
        uint8_t *buf;
        uint32_t cap, len, off, cls;
        struct strbuf head;
        size_t head_off;
        bool eof; /* the source sent FIN */
        enum http1_body kind;
        uint64_t left; /* HTTP1_BODY_LENGTH: body bytes not classified yet */
        struct http1_chunked ch;
        bool body_done;
        uint64_t bytes; /* sent to the destination, this session */
};

struct h1s {
        struct worker *w;
        struct h1s *prev, *next;
        uint64_t id;
        enum conn_dir dir;
        struct loop_io io;
        struct tls_conn *tls; /* inbound mesh TLS of the client side, or NULL */
        char *xfcc;           /* with tls: the client's XFCC element (xfcc.h) */
        bool readable, writable, rdhup;
        enum h1_state state; /* the one state of the session: see states-int.h */
        struct sockaddr_storage client_addr, orig_dst, upstream_addr;
        char service[SERVICE_MAX];
        struct flow req, resp;
        struct http1_msg *msg; /* the head being parsed, while one is */
        struct upstream *up;
        struct route_use route;
        struct route_use first; /* the relay's pick, for the first request (hand-off) */
        enum route_result rr;   /* the request's pick (route_pick_http), for attempt */
        const char *location;   /* a redirect's Location while local_reply writes it */
        struct sockaddr_storage first_upstream;
        struct loop_timer timer;     /* idle, backoff, linger */
        struct loop_timer req_timer; /* timeouts.request until the response head */
        struct loop_timer try_timer; /* the rule's timeouts.backendRequest, per try */
        uint64_t created_ms, last_active_ms, req_start_ms;
        uint64_t req_start_ns; /* clock_mono_ns(), for shunt_request_duration_seconds */
        uint64_t requests;
        /* The request in flight: facts of the request (begin_request sets
         * them), independent of each other and of the session's state. */
        enum http1_method method;
        char method_s[16];
        char target[LOG_TARGET_MAX];
        char host[128]; /* the request's Host, for the tap */
        char request_id[40];
        struct span_ctx span;             /* this request's span (obs.h) */
        uint64_t req_bytes0, resp_bytes0; /* req.bytes, resp.bytes when it began */
        bool http10;                      /* an HTTP/1.0 client */
        bool idempotent;                  /* may be re-sent after an upstream failure */
        bool body_dropped;                /* body bytes left the buffer: cannot be re-sent */
        bool have_key;
        uint64_t key_hash;
        uint32_t body_start; /* the request body in req.buf, for a re-send */
        uint32_t attempts;   /* upstream attempts made for this request */
        bool fresh;          /* the next attempt must not reuse a pooled connection */
        bool committed;      /* response bytes for this request went out */
        bool reported;       /* the attempt's outcome went to route_request_done */
        bool stale_retried;  /* re-sent once after a pooled connection broke */
        bool resp_close;     /* close the client after this response */
        bool upstream_keep_alive;
        bool upgrade; /* the request asks for an Upgrade (forwarded with it) */
        /* H1_TUNNEL's two half-closes, independent of each other */
        bool cli_fin_sent; /* our FIN went to the client */
        bool up_fin_sent;  /* the client's FIN passed on upstream */
        int status;
};

struct h1_worker {
        struct h1s *sessions;
        bool draining;               /* every response says Connection: close */
        struct warn_limit warn;      /* failed requests: one line a second */
        struct http1_msg *spare_msg; /* see msg_get */
};

static bool warn_allowed(struct h1s *s)
{
        return warn_limit_allow(&s->w->h1->warn, loop_now_ms(s->w->loop), "http1");
}

static void drive(struct h1s *s);
static void msg_done(struct h1s *s);

/* ---- bookkeeping -------------------------------------------------------------------- */

static void flow_give(struct worker *w, struct flow *f)
{
        worker_buf_give(w, f->buf, f->cap);
        f->buf = NULL;
        f->cap = f->len = f->off = f->cls = 0;
}

static int flow_take(struct worker *w, struct flow *f)
{
        if (f->buf)
                return 0;
        f->buf = worker_buf_take(w, &f->cap);
        f->len = f->off = f->cls = 0;
        return f->buf ? 0 : -ENOMEM;
}

/* Moves the bytes from off on to the start of the buffer: room to read. */
static void flow_compact(struct flow *f)
{
        memmove(f->buf, f->buf + f->off, f->len - f->off);
        f->len -= f->off;
        f->cls -= f->off;
        f->off = 0;
}

static void flow_set_body(struct flow *f, const struct http1_msg *m)
{
        f->kind = m->body;
        f->left = m->content_length;
        f->body_done = false;
        if (f->kind == HTTP1_BODY_CHUNKED)
                http1_chunked_init(&f->ch, NULL);
}

/* Marks the body bytes in [cls, len) as part of the message. -EPROTO on a
 * malformed chunked body. */
static int flow_classify(struct flow *f)
{
        while (!f->body_done) {
                uint32_t avail = f->len - f->cls;
                switch (f->kind) {
                case HTTP1_BODY_NONE:
                        f->body_done = true;
                        break;
                case HTTP1_BODY_LENGTH: {
                        uint64_t take = avail < f->left ? avail : f->left;
                        f->cls += (uint32_t)take;
                        f->left -= take;
                        if (f->left == 0)
                                f->body_done = true;
                        return 0;
                }
                case HTTP1_BODY_CHUNKED: {
                        if (avail == 0)
                                return 0;
                        size_t doff, dlen;
                        ssize_t n = http1_chunked_feed(&f->ch, (const char *)f->buf + f->cls, avail,
                                                       &doff, &dlen);
                        if (n < 0)
                                return -EPROTO;
                        f->cls += (uint32_t)n;
                        if (http1_chunked_done(&f->ch))
                                f->body_done = true;
                        else if (n == 0)
                                return 0;
                        break;
                }
                case HTTP1_BODY_UNTIL_CLOSE:
                        f->cls = f->len;
                        if (f->eof)
                                f->body_done = true;
                        return 0;
                }
        }
        return 0;
}

/* ---- the session's state machine ------------------------------------------------------ */

/* The transitions of states-int.h's table, one bit per next state. */
#define TO(x) (1u << (x))
static const unsigned h1_next[H1__COUNT] = {
    [H1_IDLE] = TO(H1_HEAD) | TO(H1_CLOSED),
    [H1_HEAD] = TO(H1_AWAIT) | TO(H1_DELAY) | TO(H1_CLOSING) | TO(H1_CLOSED),
    [H1_AWAIT] = TO(H1_AWAIT) | TO(H1_STREAM) | TO(H1_TUNNEL) | TO(H1_BACKOFF) | TO(H1_CLOSING) |
                 TO(H1_CLOSED),
    [H1_STREAM] = TO(H1_IDLE) | TO(H1_HEAD) | TO(H1_CLOSING) | TO(H1_CLOSED),
    [H1_BACKOFF] = TO(H1_AWAIT) | TO(H1_CLOSING) | TO(H1_CLOSED),
    [H1_DELAY] = TO(H1_AWAIT) | TO(H1_CLOSING) | TO(H1_CLOSED),
    [H1_CLOSING] = TO(H1_LINGER) | TO(H1_CLOSED),
    [H1_LINGER] = TO(H1_CLOSED),
    [H1_TUNNEL] = TO(H1_CLOSED),
    [H1_CLOSED] = 0,
};

bool h1_transition_ok(enum h1_state from, enum h1_state to)
{
        return (unsigned)from < H1__COUNT && (unsigned)to < H1__COUNT && (h1_next[from] & TO(to));
}

const char *h1_state_name(enum h1_state st)
{
        static const char *const names[H1__COUNT] = {
            [H1_IDLE] = "idle",
            [H1_HEAD] = "reading_request",
            [H1_AWAIT] = "awaiting_response",
            [H1_STREAM] = "streaming_response",
            [H1_BACKOFF] = "retry_backoff",
            [H1_DELAY] = "fault_delay",
            [H1_CLOSING] = "closing",
            [H1_LINGER] = "closing",
            [H1_TUNNEL] = "tunnel",
            [H1_CLOSED] = "closed",
        };
        return (unsigned)st < H1__COUNT ? names[st] : "unknown";
}

static void h1_set_state(struct h1s *s, enum h1_state next)
{
        assert(h1_transition_ok(s->state, next));
        s->state = next;
}

static bool closed(const struct h1s *s)
{
        return s->state == H1_CLOSED;
}

/* The final response head went to the client: its body (or the tunnel's
 * bytes) may follow. */
static bool resp_started(const struct h1s *s)
{
        return s->state == H1_STREAM || s->state == H1_TUNNEL;
}

/* A request is in flight: ended now, it counts as aborted. */
static bool in_flight(const struct h1s *s)
{
        return s->state == H1_AWAIT || s->state == H1_STREAM || s->state == H1_BACKOFF ||
               s->state == H1_DELAY;
}

static void count_status(struct h1s *s, int status)
{
        if (status >= 100 && status <= 599)
                stat_add(&s->w->stats, ST_HTTP_STATUS_FIRST + status / 100 - 1, 1);
}

/* The request ended (reqmetrics.h): once per request, with the status the
 * client got (0: none) and how it ended. Metrics, access line, span. */
static void count_request(struct h1s *s, int status, const char *end)
{
        bool head = s->method_s[0] != '\0'; /* else a head that never parsed */
        reqmetrics_request(s->w, &(struct req_end){.dir = s->dir,
                                                   .protocol = "http1",
                                                   .peer_tls = s->tls,
                                                   .service = s->service,
                                                   .route = &s->route,
                                                   .orig_dst = &s->orig_dst,
                                                   .status = status,
                                                   .grpc_status = -1,
                                                   .start_ns = s->req_start_ns,
                                                   .conn_id = s->id,
                                                   .method = head ? s->method_s : NULL,
                                                   .path = head ? s->target : NULL,
                                                   .authority = head ? s->host : NULL,
                                                   .request_id = s->request_id,
                                                   .span = head ? &s->span : NULL,
                                                   .client = &s->client_addr,
                                                   .endpoint = &s->upstream_addr,
                                                   .bytes_received = s->req.bytes - s->req_bytes0,
                                                   .bytes_sent = s->resp.bytes - s->resp_bytes0,
                                                   .attempts = s->attempts,
                                                   .end = end});
}

static void up_drop(struct h1s *s, bool reusable)
{
        if (s->up) {
                upstream_put(s->up, reusable);
                s->up = NULL;
        }
}

static void report(struct h1s *s, enum route_outcome o);

/* The request is over: the attempt's outcome unless already reported
 * (o), the connection back or closed, the route's hold released. */
static void release_upstream(struct h1s *s, bool reusable, enum route_outcome o)
{
        up_drop(s, reusable);
        report(s, o);
        route_release(&s->route);
}

static void session_free(struct h1s *s, enum conn_reason reason, bool reset)
{
        struct worker *w = s->w;
        if (closed(s))
                return;
        if (in_flight(s)) {
                stat_add(&w->stats, ST_HTTP_ABORTED, 1);
                count_request(s, s->status, conn_reason_name(reason));
        }
        release_upstream(s, false, ROUTE_CANCELLED);
        route_release(&s->first);
        loop_timer_cancel(w->loop, &s->timer);
        loop_timer_cancel(w->loop, &s->req_timer);
        loop_timer_cancel(w->loop, &s->try_timer);
        if (reset) {
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(s->io.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        loop_io_del(w->loop, &s->io);
        tls_conn_free(s->tls);
        s->tls = NULL;
        free(s->xfcc);
        close(s->io.fd);
        flow_give(w, &s->req);
        flow_give(w, &s->resp);
        strbuf_free(&s->req.head);
        strbuf_free(&s->resp.head);
        msg_done(s);
        h1_set_state(s, H1_CLOSED);
        if (s->prev)
                s->prev->next = s->next;
        else
                w->h1->sessions = s->next;
        if (s->next)
                s->next->prev = s->prev;
        if (log_enabled(LOG_DEBUG)) {
                char cbuf[SOCKADDR_STRLEN];
                log_debug("http1", s->id, "session from %s ended: %s, %llu requests",
                          sockaddr_format(&s->client_addr, cbuf, sizeof(cbuf)),
                          conn_reason_name(reason), (unsigned long long)s->requests);
        }
        session_end(w, s->dir, reason);
        loop_defer_free(w->loop, s);
}

/* A head being parsed holds a struct http1_msg (some 4 KiB) until it is
 * complete: most are complete at once, so the worker keeps one spare and
 * a request and its response cost no allocation. */
static struct http1_msg *msg_get(struct h1s *s)
{
        if (!s->msg) {
                struct h1_worker *hw = s->w->h1;
                s->msg = hw->spare_msg ? hw->spare_msg : malloc(sizeof(*s->msg));
                hw->spare_msg = NULL;
                if (s->msg)
                        http1_msg_reset(s->msg);
        }
        return s->msg;
}

static void msg_done(struct h1s *s)
{
        struct h1_worker *hw = s->w->h1;
        if (!hw->spare_msg)
                hw->spare_msg = s->msg;
        else
                free(s->msg);
        s->msg = NULL;
}

static void arm_idle(struct h1s *s)
{
        loop_timer_arm(s->w->loop, &s->timer, worker_cfg(s->w)->idle_timeout_ms);
}

/* ---- answers shuntd makes itself -------------------------------------------------------- */

static enum http_local local_slot(int status)
{
        switch (status) {
        case 400:
                return HTTP_LOCAL_400;
        case 431:
                return HTTP_LOCAL_431;
        case 502:
                return HTTP_LOCAL_502;
        case 503:
                return HTTP_LOCAL_503;
        case 504:
                return HTTP_LOCAL_504;
        default:
                return HTTP_LOCAL_OTHER;
        }
}

/* Ends the request with a response of our own and closes the client after
 * it. When response bytes already went out, the client can only be reset.
 * Returns -1: the caller stops driving (the session may be gone). */
/* A redirect's Location after the status line of a local reply. */
static int insert_location(struct strbuf *head, const char *location)
{
        const char *eol = memchr(head->data, '\n', head->len);
        if (!eol || strpbrk(location, "\r\n"))
                return -1;
        struct strbuf out;
        strbuf_init(&out);
        size_t first = (size_t)(eol - head->data) + 1;
        strbuf_appendn(&out, head->data, first);
        strbuf_appendf(&out, "Location: %s\r\n", location);
        strbuf_appendn(&out, head->data + first, head->len - first);
        strbuf_reset(head);
        strbuf_appendn(head, out.data, out.len);
        strbuf_free(&out);
        return head->truncated ? -1 : 0;
}

static int local_reply(struct h1s *s, int status, const char *reason, unsigned retry_after)
{
        struct worker *w = s->w;
        bool in_request = s->state != H1_IDLE && s->state != H1_HEAD;
        if (!s->committed) {           /* nothing of it answered: this answer ends the request */
                if (!s->method_s[0]) { /* the head never parsed: a request of its own */
                        s->req_start_ns = clock_mono_ns();
                        s->req_bytes0 = s->req.bytes;
                        s->resp_bytes0 = s->resp.bytes;
                        s->attempts = 0;
                        s->upstream_addr.ss_family = 0;
                        worker_request_id(s->w, s->request_id);
                }
                count_request(s, status, "local");
        }
        release_upstream(s, false, ROUTE_CANCELLED);
        loop_timer_cancel(w->loop, &s->req_timer);
        stat_add(&w->stats, ST_HTTP_LOCAL_FIRST + local_slot(status), 1);
        if (warn_allowed(s))
                log_warn("http1", s->id, "%s %s service=%s: %d %s",
                         s->method_s[0] ? s->method_s : "-", s->target[0] ? s->target : "-",
                         s->service, status, reason);
        if (s->committed) {
                s->status = status;
                session_free(s, REASON_UPSTREAM_RESET, true);
                return -1;
        }
        s->status = status;
        count_status(s, status);
        strbuf_reset(&s->resp.head);
        s->resp.head_off = 0;
        s->resp.off = s->resp.len = s->resp.cls = 0;
        s->resp.kind = HTTP1_BODY_NONE;
        s->resp.body_done = true;
        if (http1_write_error_response_id(&s->resp.head, status, reason, retry_after,
                                          in_request ? s->request_id : NULL) < 0 ||
            (s->location && insert_location(&s->resp.head, s->location) < 0)) {
                session_free(s, REASON_NO_MEMORY, true);
                return -1;
        }
        s->committed = true;
        h1_set_state(s, H1_CLOSING);
        loop_timer_arm(w->loop, &s->timer, worker_cfg(w)->idle_timeout_ms);
        drive(s);
        return -1;
}

/* ---- sockets ------------------------------------------------------------------------- */

/* Reads the client into req.buf while there is room. 0, or -1 when the
 * session ended. */
static int client_read(struct h1s *s, bool *progress)
{
        struct flow *f = &s->req;
        while (s->readable && !f->eof) {
                if (flow_take(s->w, f) < 0) {
                        session_free(s, REASON_NO_MEMORY, true);
                        return -1;
                }
                if (s->state == H1_CLOSING || s->state == H1_LINGER)
                        f->len = f->off = f->cls = 0; /* draining: what comes is dropped */
                if (f->len == f->cap && f->off > 0) {
                        /* Make room. Sent body bytes leave the buffer: no
                         * re-send of this request any more. */
                        if (s->state != H1_IDLE && s->state != H1_HEAD && f->off > s->body_start)
                                s->body_dropped = true;
                        s->body_start = s->body_start > f->off ? s->body_start - f->off : 0;
                        flow_compact(f);
                }
                if (f->len == f->cap)
                        return 0; /* full: the client waits (backpressure) */
                ssize_t n = upstream_io_recv(s->io.fd, s->tls, f->buf + f->len, f->cap - f->len);
                if (n > 0) {
                        /* On the eBPF shortcut a short read does not mean
                         * drained (intercept/origdst.h): read to EAGAIN; so
                         * on TLS (decrypted bytes epoll does not see). */
                        if ((uint32_t)n < f->cap - f->len && !s->rdhup && !s->tls &&
                            !origdst_shortcut_active())
                                s->readable = false;
                        f->len += (uint32_t)n;
                        *progress = true;
                        s->last_active_ms = loop_now_ms(s->w->loop);
                } else if (n == 0) {
                        f->eof = true;
                        *progress = true;
                } else if (errno == EAGAIN) {
                        s->readable = false;
                } else if (errno != EINTR) {
                        session_free(s, REASON_CLIENT_RESET, false);
                        return -1;
                }
        }
        return 0;
}

/* What f has ready to go, head first, then (body_ok) the sendable body
 * bytes: up to two iovecs. */
static int flow_iov(struct flow *f, bool body_ok, struct iovec iov[2], size_t *total)
{
        int n = 0;
        *total = 0;
        if (f->head_off < f->head.len) {
                iov[n].iov_base = f->head.data + f->head_off;
                iov[n].iov_len = f->head.len - f->head_off;
                *total += iov[n++].iov_len;
        }
        if (body_ok && f->cls > f->off) {
                iov[n].iov_base = f->buf + f->off;
                iov[n].iov_len = f->cls - f->off;
                *total += iov[n++].iov_len;
        }
        return n;
}

/* k bytes of what flow_iov offered went out. A response flow forgets what
 * went out; a request flow keeps its head and bytes for a re-send. */
static void flow_sent(struct flow *f, size_t k, bool forget)
{
        size_t h = f->head.len - f->head_off;
        if (h) {
                size_t t = k < h ? k : h;
                f->head_off += t;
                k -= t;
                if (forget && f->head_off == f->head.len) {
                        strbuf_reset(&f->head);
                        f->head_off = 0;
                }
        }
        f->off += (uint32_t)k;
        if (forget && f->off == f->len) /* all of it out: start over */
                f->off = f->len = f->cls = 0;
}

/* Sends what is ready of f to fd, either side: one sendmsg for head and
 * body, or through tls (a record at a time) the first of them. *want gets
 * what was offered (0: nothing to send). */
static ssize_t flow_send(int fd, struct tls_conn *tls, struct flow *f, bool body_ok, size_t *want)
{
        struct iovec iov[2];
        int n = flow_iov(f, body_ok, iov, want);
        if (n == 0)
                return 0;
        if (tls) {
                *want = iov[0].iov_len;
                return upstream_io_send(fd, tls, iov[0].iov_base, iov[0].iov_len);
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        return sendmsg(fd, &mh, MSG_NOSIGNAL);
}

/* Sends the response flow's head then its sendable bytes to the client.
 * 0 or -1 (ended). */
static int client_write(struct h1s *s, bool *progress)
{
        struct flow *f = &s->resp;
        while (s->writable) {
                size_t n;
                ssize_t k = flow_send(s->io.fd, s->tls, f, resp_started(s), &n);
                if (n == 0)
                        return 0;
                if (k > 0) {
                        *progress = true;
                        s->last_active_ms = loop_now_ms(s->w->loop);
                        f->bytes += (uint64_t)k;
                        stat_add(&s->w->stats, ST_BYTES_DOWNSTREAM, (uint64_t)k);
                        flow_sent(f, (size_t)k, true);
                        if ((size_t)k < n && !s->tls)
                                s->writable = false;
                } else if (errno == EAGAIN) {
                        s->writable = false;
                } else if (errno != EINTR) {
                        session_free(s, REASON_CLIENT_RESET, false);
                        return -1;
                }
        }
        return 0;
}

/* ---- upstream attempts ------------------------------------------------------------------ */

static void on_upstream(struct upstream *u, enum upstream_event ev, void *owner);
static int attempt(struct h1s *s);
static int connect_upstream(struct h1s *s);

static bool all_sent(const struct h1s *s)
{
        return s->req.head_off == s->req.head.len && s->req.body_done && s->req.off == s->req.cls;
}

/* Reports how the current attempt ended (once per attempt) to the
 * breaker, outlier detection and passive health. */
static void report(struct h1s *s, enum route_outcome o)
{
        if (s->reported || !s->route.table)
                return;
        s->reported = true;
        route_request_done(&s->route, &s->upstream_addr, o);
}

/* Waits the retry's backoff; on_timer then moves the request to another
 * endpoint (route_retry_pick) and connects. */
static int retry_later(struct h1s *s, uint32_t backoff_ms)
{
        s->req.head_off = 0;
        s->req.off = s->body_start;
        h1_set_state(s, H1_BACKOFF);
        loop_timer_arm(s->w->loop, &s->timer, backoff_ms);
        return -1;
}

/* The upstream failed before any response byte. Re-sends the request when
 * that is safe (and the retry budget agrees), else 502. Returns -1 when the
 * caller must stop. */
static int upstream_broke(struct h1s *s, const char *what)
{
        struct worker *w = s->w;
        bool reused = s->up && s->up->reused;
        bool replayable = !s->body_dropped;
        char ubuf[SOCKADDR_STRLEN];
        sockaddr_format(&s->upstream_addr, ubuf, sizeof(ubuf));
        up_drop(s, false);
        /* Nothing of this attempt went out: safe to re-send any method. */
        bool unsent = s->req.head_off == 0;
        if (reused && !s->stale_retried && replayable && (s->idempotent || unsent)) {
                /* A pooled connection the server closed under us: not the
                 * endpoint's fault. Once, at once, on a fresh connection. */
                report(s, ROUTE_CANCELLED);
                s->stale_retried = true;
                s->fresh = true;
                stat_add(&w->stats, ST_HTTP_RETRIES, 1);
                s->req.head_off = 0;
                s->req.off = s->body_start;
                log_debug("http1", s->id, "pooled connection to %s %s: re-sending on a fresh one",
                          ubuf, what);
                return connect_upstream(s);
        }
        report(s, ROUTE_RESET);
        uint32_t backoff_ms;
        if (replayable && s->route.table &&
            route_retry_allowed(&s->route, ROUTE_RESET, 0, s->idempotent, &backoff_ms)) {
                stat_add(&w->stats, ST_HTTP_RETRIES, 1);
                log_debug("http1", s->id, "upstream %s %s before responding: re-sending %s", ubuf,
                          what, s->method_s);
                return retry_later(s, backoff_ms);
        }
        char reason[160];
        snprintf(reason, sizeof(reason), "upstream %s %s before responding", ubuf, what);
        return local_reply(s, 502, reason, 0);
}

/* A connect (or TLS handshake) to the picked endpoint failed: retried on
 * another endpoint while the retry policy and budget allow, then 503. */
static int connect_failed(struct h1s *s, const char *what)
{
        struct worker *w = s->w;
        char ubuf[SOCKADDR_STRLEN];
        sockaddr_format(&s->upstream_addr, ubuf, sizeof(ubuf));
        if (warn_allowed(s))
                log_warn("http1", s->id, "connect to %s (service %s) failed: %s", ubuf, s->service,
                         what);
        up_drop(s, false);
        report(s, ROUTE_CONNECT_FAILURE);
        route_limit_release(&s->route, LB_LIMIT_PENDING);
        uint32_t backoff_ms;
        if (s->route.table &&
            route_retry_allowed(&s->route, ROUTE_CONNECT_FAILURE, 0, s->idempotent, &backoff_ms)) {
                stat_add(&w->stats, ST_CONNECT_RETRIES, 1);
                return retry_later(s, backoff_ms);
        }
        char reason[320];
        snprintf(reason, sizeof(reason), "no endpoint of %s could be reached (last %s: %s)",
                 s->service, ubuf, what);
        return local_reply(s, 503, reason, RETRY_AFTER_S);
}

/* The identity to require of s->upstream_addr ("" for plaintext), or NULL
 * when it must not be reached (strict and not meshed: counted, logged). */
static const char *upstream_identity(struct h1s *s)
{
        struct worker *w = s->w;
        if (!s->route.table)
                return "";
        switch (route_security(&s->route, worker_cfg(w)->mtls_mode, w->proxy->tls_slot != NULL)) {
        case ROUTE_MTLS:
                return route_identity(&s->route);
        case ROUTE_REFUSED:
                stat_add(&w->stats, ST_REASON_FIRST + REASON_MTLS_REQUIRED, 1);
                return NULL;
        case ROUTE_PLAINTEXT:
                break;
        }
        return "";
}

/* Gets a connection to s->upstream_addr: pooled (ready at once) or new.
 * Returns -1 when the caller must stop. */
static int connect_upstream(struct h1s *s)
{
        struct worker *w = s->w;
        h1_set_state(s, H1_AWAIT);
        s->attempts++;
        s->reported = false;
        /* Nothing of a failed attempt's response is kept (none had begun). */
        s->resp.eof = false;
        s->resp.off = s->resp.len = s->resp.cls = 0;
        int err = 0;
        const char *what = "";
        const char *identity = upstream_identity(s);
        if (!identity) {
                char reason[320];
                route_refusal(&s->route, &s->upstream_addr, reason, sizeof(reason));
                return local_reply(s, 503, reason, 0);
        }
        struct upstream *u = upstream_get(w, &s->upstream_addr, identity, s->fresh, s->id,
                                          on_upstream, s, &err, &what);
        s->fresh = false;
        if (!u) {
                char detail[96];
                snprintf(detail, sizeof(detail), "%s: %s", what, strerror(-err));
                if (err == -ENOMEM || strcmp(what, "connect") != 0) {
                        char reason[160];
                        snprintf(reason, sizeof(reason), "cannot open an upstream connection (%s)",
                                 detail);
                        return local_reply(s, 503, reason, RETRY_AFTER_S);
                }
                return connect_failed(s, detail);
        }
        s->up = u;
        uint32_t try_ms = route_try_timeout_ms(&s->route);
        if (try_ms) /* on_try_timeout */
                loop_timer_arm(w->loop, &s->try_timer, try_ms);
        else
                loop_timer_cancel(w->loop, &s->try_timer);
        upstream_connect_timeout(
            u, route_connect_timeout_ms(&s->route, worker_cfg(w)->connect_timeout_ms));
        u->requests++;
        if (u->state != UPSTREAM_OPEN && s->route.table &&
            route_limit_acquire(&s->route, LB_LIMIT_PENDING) < 0) {
                up_drop(s, false);
                return local_reply(s, 503, "service at limits.max_pending_requests", RETRY_AFTER_S);
        }
        return 0;
}

/* The first attempt of a request: pick an endpoint, take a request slot of
 * the service's limits, connect. Returns -1 when the caller must stop. */
static int attempt(struct h1s *s)
{
        struct worker *w = s->w;
        const struct shunt_config *cfg = worker_cfg(w);
        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
            &w->route_reader, &w->proxy->route_slot);
        (void)t;
        if (s->dir == DIR_INBOUND) {
                /* Every request to the local application, where the client sent it. */
                s->upstream_addr = s->first_upstream;
                return connect_upstream(s);
        }
        enum route_result rr = s->rr; /* picked by begin_request */
        if (rr == ROUTE_NO_ENDPOINT) {
                char reason[320];
                snprintf(reason, sizeof(reason), "no healthy endpoint for %s", s->service);
                return local_reply(s, 503, reason, RETRY_AFTER_S);
        }
        if (rr == ROUTE_PASSTHROUGH) {
                /* The service left the registry while this client stayed. */
                if (cfg->outbound_policy == OUTBOUND_REGISTRY_ONLY)
                        return local_reply(s, 503, "not a known service any more", RETRY_AFTER_S);
                s->upstream_addr = s->orig_dst;
        } else if (route_limit_acquire(&s->route, LB_LIMIT_REQUESTS) < 0) {
                return local_reply(s, 503, "service at limits.max_requests", RETRY_AFTER_S);
        }
        return connect_upstream(s);
}

/* The backoff of a retry is over: another endpoint, then connect. */
static int retry_now(struct h1s *s)
{
        if (route_retry_pick(&s->route, &s->w->route_workers, (uint64_t)s->w->index,
                             &s->client_addr, s->have_key ? &s->key_hash : NULL,
                             &s->upstream_addr) != ROUTE_ENDPOINT) {
                char reason[320];
                snprintf(reason, sizeof(reason), "no healthy endpoint left for %s", s->service);
                return local_reply(s, 503, reason, RETRY_AFTER_S);
        }
        return connect_upstream(s);
}

static void on_upstream(struct upstream *u, enum upstream_event ev, void *owner)
{
        struct h1s *s = owner;
        if (closed(s) || s->up != u)
                return;
        if (ev == UPSTREAM_FAILED) {
                if (connect_failed(s, u->fail_what) < 0 || closed(s))
                        return;
        } else if (ev == UPSTREAM_READY) {
                route_limit_release(&s->route, LB_LIMIT_PENDING);
        }
        drive(s);
}

/* ---- requests ------------------------------------------------------------------------ */

static bool method_idempotent(enum http1_method m)
{
        return m == HTTP1_M_GET || m == HTTP1_M_HEAD || m == HTTP1_M_OPTIONS || m == HTTP1_M_PUT ||
               m == HTTP1_M_DELETE || m == HTTP1_M_TRACE;
}

/* The request's hash key by the service's (else the daemon's)
 * load_balancing.hash_key: "Header-Name" or "header:Name", "cookie:name",
 * or "source_ip" (no key: the source address is hashed). */
static bool request_key(const struct http1_msg *m, const char *setting, uint64_t *h)
{
        struct http1_slice v;
        if (strcasecmp(setting, "source_ip") == 0)
                return false;
        if (strncasecmp(setting, "cookie:", 7) == 0) {
                if (http1_cookie_get(m, setting + 7, &v) < 0 || v.n == 0)
                        return false;
        } else {
                const char *name = strncasecmp(setting, "header:", 7) == 0 ? setting + 7 : setting;
                if (http1_header_get(m, name, &v) < 0 || v.n == 0)
                        return false;
        }
        *h = lb_hash_header_value(v.p, v.n);
        return true;
}

static bool msg_header(void *ctx, const char *name, const char **v, size_t *n)
{
        struct http1_slice sl;
        if (http1_header_get(ctx, name, &sl) < 0)
                return false;
        *v = sl.p;
        *n = sl.n;
        return true;
}

/* The request's target in origin form (what follows an absolute form's
 * authority). */
static struct http1_slice origin_target(const struct http1_msg *m)
{
        if (m->form != HTTP1_T_ABSOLUTE || !m->authority.n)
                return m->target;
        const char *rest = m->authority.p + m->authority.n;
        struct http1_slice r = {rest, (size_t)(m->target.p + m->target.n - rest)};
        return r.n && rest[0] == '/' ? r : (struct http1_slice){"/", 1};
}

/* Outbound: the request's traffic route rule and backend, then an
 * endpoint (route_pick_http), before its head is written since the rule
 * may edit it. The relay picked for this connection before the hand-off:
 * unless the service has routes, that pick serves the first request (its
 * connection, if it was open, waits in the pool). */
static enum route_result pick_request(struct h1s *s, struct route_table *t,
                                      const struct http1_msg *m)
{
        struct worker *w = s->w;
        if (s->first.table && !s->have_key && !s->first.routed) {
                s->route = s->first;
                s->upstream_addr = s->first_upstream;
                memset(&s->first, 0, sizeof(s->first));
                return ROUTE_ENDPOINT;
        }
        route_release(&s->first);
        struct http1_slice target = origin_target(m);
        struct dr_request dq = {.method = dr_method_parse(m->method_str.p, m->method_str.n),
                                .path = target.p,
                                .path_len = target.n,
                                .header = msg_header,
                                .ctx = (void *)(uintptr_t)m};
        return route_pick_http(t, &w->route_workers, (uint64_t)w->index, &s->orig_dst,
                               &s->client_addr, s->have_key ? &s->key_hash : NULL, &dq,
                               &s->upstream_addr, &s->route);
}

/* A rule's RequestRedirect: 3xx with its Location. */
static int redirect_reply(struct h1s *s, const struct http1_msg *m)
{
        struct http1_slice host = m->authority;
        struct http1_slice hv;
        if (!host.n && http1_header_get(m, "Host", &hv) == 0)
                host = hv;
        struct http1_slice target = origin_target(m);
        char loc[2 * DR_VALUE_MAX];
        if (dr_redirect_location(s->route.rule, s->route.match, s->tls ? "https" : "http", host.p,
                                 host.n, target.p, target.n, loc, sizeof(loc)) < 0)
                return local_reply(s, 500, "redirect location too long", 0);
        s->location = loc;
        int rc = local_reply(s, s->route.rule->redirect_status, "redirected by route", 0);
        s->location = NULL;
        return rc;
}

static void copy_slice(char *dst, size_t cap, struct http1_slice v)
{
        size_t n = v.n < cap - 1 ? v.n : cap - 1;
        for (size_t i = 0; i < n; i++)
                dst[i] = (v.p[i] > 0x20 && v.p[i] < 0x7f) ? v.p[i] : '?';
        dst[n] = '\0';
}

/* A complete request head of head_len bytes at req.buf + req.off. */

/* Fields a request does not carry on: identity claims only a sidecar may
 * make (XFCC; kept only when xfcc_action says so: the list without its
 * first entry), and the settings of an h2c upgrade that is not passed on. */
static const char *const client_dropped[] = {XFCC_NAME, "HTTP2-Settings"};

/* An Upgrade to h2c (cleartext HTTP/2, deprecated by RFC 9113) is not passed
 * on: the server answers in HTTP/1.1, and requests stay balanced one by one
 * instead of becoming one tunnel. */
static bool upgrade_h2c(const struct http1_msg *m)
{
        struct http1_slice v;
        return http1_header_get(m, "Upgrade", &v) == 0 && http1_list_has(v, "h2c");
}

/* The request's span under its trace context: traceparent first, then
 * b3, then the X-B3-* fields (a malformed one is ignored: a new trace). */
static void trace_begin(struct h1s *s, const struct http1_msg *m)
{
        struct trace_ctx in;
        struct http1_slice v;
        bool have = false;
        if (http1_header_get(m, "traceparent", &v) == 0)
                have = trace_parse_traceparent(v.p, v.n, &in) == 0;
        if (!have && http1_header_get(m, "b3", &v) == 0)
                have = trace_parse_b3(v.p, v.n, &in) == 0;
        if (!have) {
                struct http1_slice f[4];
                static const char *const names[4] = {"X-B3-TraceId", "X-B3-SpanId", "X-B3-Sampled",
                                                     "X-B3-Flags"};
                bool any = false;
                for (int i = 0; i < 4; i++) {
                        if (http1_header_get(m, names[i], &f[i]) < 0)
                                f[i] = (struct http1_slice){NULL, 0};
                        any |= f[i].p != NULL;
                }
                have = any && trace_parse_b3_multi(f[0].p, f[0].n, f[1].p, f[1].n, f[2].p, f[2].n,
                                                   f[3].p, f[3].n, &in) == 0;
        }
        enum trace_format b3 = http1_header_get(m, "b3", &v) == 0             ? TRACE_FMT_B3_SINGLE
                               : http1_header_get(m, "X-B3-TraceId", &v) == 0 ? TRACE_FMT_B3_MULTI
                                                                              : TRACE_FMT_NONE;
        obs_trace_begin(s->w, have ? &in : NULL, b3, &s->span);
}

/* The route rule's RequestMirror drew this request: a copy of its head
 * as it goes upstream (with Connection: close) and of its body to an
 * endpoint of the mirror backend, not waited for; or a drop, counted. */
static void mirror_request(struct h1s *s)
{
        struct worker *w = s->w;
        const struct shunt_config *cfg = worker_cfg(w);
        const char *why = NULL;
        struct sockaddr_storage to;
        const struct strbuf *h = &s->req.head;
        if (s->upgrade)
                why = "an Upgrade is not mirrored";
        else if (!s->req.body_done)
                why = "its body did not all come with its head";
        else if (s->req.cls - s->body_start > cfg->mirror_max_body)
                why = "its body is larger than http.mirror_max_body";
        else if (h->len < 4 || memcmp(h->data + h->len - 4, "\r\n\r\n", 4))
                why = "no request head";
        else if (!route_mirror_pick(&s->route, &w->route_workers, (uint64_t)w->index,
                                    &s->client_addr, &to))
                why = "no endpoint of the mirror backend";
        struct mirrors *ms = why ? NULL : worker_mirrors(w);
        if (!why && !ms)
                why = "out of memory";
        if (!why) {
                static const char close_field[] = "Connection: close\r\n\r\n";
                char *copy = malloc(h->len + sizeof(close_field));
                int rc = -ENOMEM;
                if (copy) {
                        memcpy(copy, h->data, h->len - 2);
                        memcpy(copy + h->len - 2, close_field, sizeof(close_field) - 1);
                        rc = mirror_send(ms, &to, config_socket_mark(cfg), copy,
                                         h->len - 2 + sizeof(close_field) - 1,
                                         s->req.buf + s->body_start, s->req.cls - s->body_start,
                                         cfg->mirror_max_in_flight, cfg->mirror_timeout_ms);
                        free(copy);
                }
                if (rc == -ENOBUFS)
                        why = "http.mirror_max_in_flight copies in flight";
                else if (rc < 0)
                        why = strerror(-rc);
        }
        route_mirror_count(&s->route, why == NULL);
        if (why && warn_allowed(s))
                log_warn("http1", s->id,
                         "%s %s service=%s: request copy for the mirror dropped: %s", s->method_s,
                         s->target, s->service, why);
}

static int begin_request(struct h1s *s, const struct http1_msg *m, size_t head_len)
{
        struct worker *w = s->w;
        const struct shunt_config *cfg = worker_cfg(w);
        s->requests++;
        s->req_start_ms = loop_now_ms(w->loop);
        s->req_start_ns = clock_mono_ns();
        s->method = m->method;
        copy_slice(s->method_s, sizeof(s->method_s), m->method_str);
        copy_slice(s->target, sizeof(s->target), m->target);
        struct http1_slice host = {0};
        http1_header_get(m, "Host", &host); /* for the access log, span and tap */
        copy_slice(s->host, sizeof(s->host), host);
        s->http10 = m->version_minor == 0;
        s->idempotent = method_idempotent(m->method);
        s->body_dropped = false;
        s->attempts = 0;
        s->fresh = false;
        s->stale_retried = false;
        s->reported = false;
        s->committed = false;
        s->resp_close = !m->keep_alive || s->w->h1->draining;
        s->status = 0;
        s->upstream_addr.ss_family = 0;
        s->req_bytes0 = s->req.bytes;
        s->resp_bytes0 = s->resp.bytes;
        trace_begin(s, m);
        struct http1_slice rid;
        static const struct http1_slice rid_name = {"X-Request-ID", 12};
        if (http1_header_get(m, "X-Request-ID", &rid) == 0 && rid.n &&
            !http1_is_hop_by_hop(m, rid_name))
                copy_slice(s->request_id, sizeof(s->request_id), rid);
        else
                worker_request_id(s->w, s->request_id);
        /* The connection already goes where the client connected: a CONNECT
         * to the service would turn its endpoint into a tunnel we cannot
         * follow. */
        if (m->method == HTTP1_M_CONNECT)
                return local_reply(s, 501, "CONNECT is not proxied", 0);

        if (s->dir == DIR_OUTBOUND) {
                struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
                    &w->route_reader, &w->proxy->route_slot);
                enum proto declared;
                const char *hk = "", *name = NULL;
                route_lookup(t, &s->orig_dst, &declared, &hk, &name);
                if (name)
                        snprintf(s->service, sizeof(s->service), "%s", name);
                s->have_key = request_key(m, hk[0] ? hk : cfg->lb_hash_key, &s->key_hash);
                s->rr = pick_request(s, t, m);
                if (s->rr == ROUTE_NO_ROUTE)
                        return local_reply(s, 404, "no route of the service matches", 0);
                if (s->rr == ROUTE_REDIRECT)
                        return redirect_reply(s, m);
                if (s->rr == ROUTE_ABORT)
                        return local_reply(s, s->route.rule->abort_http, "fault injected by route",
                                           0);
                if (s->rr == ROUTE_RATE_LIMITED)
                        return local_reply(s, 429, "rate limited by route", s->route.retry_after_s);
        }

        /* An Upgrade (WebSocket) goes out with it; a 101 turns the
         * connection into a tunnel. HTTP/1.0 has no Upgrade. */
        s->upgrade = m->upgrade && !s->http10 && !upgrade_h2c(m);
        enum xfcc_action xa = xfcc_action(s->dir, cfg->forward_client_cert, s->xfcc != NULL);
        bool keep = xa == XFCC_KEEP;
        /* Fields not forwarded: client_dropped (less XFCC when kept), and
         * the trace context when ours replaces it. */
        const char *drop[2 + OBS_TRACE_IN_FIELDS];
        size_t ndrop = 0;
        for (size_t i = keep; i < sizeof(client_dropped) / sizeof(client_dropped[0]); i++)
                drop[ndrop++] = client_dropped[i];
        if (s->span.active)
                for (size_t i = 0; i < OBS_TRACE_IN_FIELDS; i++)
                        drop[ndrop++] = obs_trace_in_fields[i];
        struct http1_forward fw = {
            .request_id = s->request_id, /* when the request has none that goes out */
            .keep_upgrade = s->upgrade,
            .drop = drop,
            .ndrop = ndrop,
        };
        struct strbuf xv; /* XFCC's value when we write it */
        strbuf_init(&xv);
        if (xa == XFCC_APPEND)
                for (int i = http1_header_find(m, XFCC_NAME, 0); i >= 0;
                     i = http1_header_find(m, XFCC_NAME, (size_t)i + 1))
                        xfcc_list_add(&xv, m->headers[i].value.p, m->headers[i].value.n);
        if (xa == XFCC_SET || xa == XFCC_APPEND)
                xfcc_list_add(&xv, s->xfcc, strlen(s->xfcc));
        /* The route rule's edits (route_request_edits) after XFCC's. */
        struct route_edits ed;
        struct http1_header adds[2 + ROUTE_EDITS_MAX + OBS_TRACE_HDRS_MAX];
        const char *drops[2 + OBS_TRACE_IN_FIELDS + ROUTE_EDITS_MAX + 1];
        size_t na = 0;
        if (xv.len)
                adds[na++] = (struct http1_header){.name = {XFCC_NAME, sizeof(XFCC_NAME) - 1},
                                                   .value = {xv.data, xv.len}};
        if (s->dir == DIR_OUTBOUND &&
            route_request_edits(&s->route, origin_target(m).p, origin_target(m).n, &ed)) {
                memcpy(drops, fw.drop, fw.ndrop * sizeof(*drops));
                memcpy(drops + fw.ndrop, ed.drop, ed.ndrop * sizeof(*drops));
                fw.ndrop += ed.ndrop;
                for (size_t i = 0; i < ed.nadd; i++)
                        adds[na++] = (struct http1_header){
                            .name = {ed.add_name[i], strlen(ed.add_name[i])},
                            .value = {ed.add_value[i], strlen(ed.add_value[i])}};
                if (ed.host) {
                        drops[fw.ndrop++] = "Host";
                        adds[na++] = (struct http1_header){.name = {"Host", 4},
                                                           .value = {ed.host, strlen(ed.host)}};
                }
                fw.drop = drops;
                fw.target = ed.path_len >= 0 ? ed.path : NULL;
        }
        /* Our trace context (obs.h) when tracing is on. */
        struct obs_trace_hdrs th;
        obs_trace_headers(&s->span, &th);
        for (int i = 0; i < th.n; i++)
                adds[na++] = (struct http1_header){.name = {th.name[i], strlen(th.name[i])},
                                                   .value = {th.value[i], th.len[i]}};
        fw.add = adds;
        fw.nadd = na;
        strbuf_reset(&s->req.head);
        s->req.head_off = 0;
        int wr = xv.truncated ? -ENOMEM : http1_write_request_head(m, &fw, &s->req.head);
        strbuf_free(&xv);
        if (wr < 0)
                return local_reply(s, 400, "request head cannot be forwarded", 0);
        s->req.off += (uint32_t)head_len;
        s->req.cls = s->req.off;
        s->body_start = s->req.off;
        flow_set_body(&s->req, m);
        /* The response flow starts empty for each request. */
        strbuf_reset(&s->resp.head);
        s->resp.head_off = 0;
        s->resp.eof = false;
        s->resp.body_done = false;
        s->resp.kind = HTTP1_BODY_NONE;
        if (flow_classify(&s->req) < 0)
                return local_reply(s, 400, http1_error_str(s->req.ch.error), 0);
        if (s->route.mirror)
                mirror_request(s);
        loop_timer_arm(w->loop, &s->req_timer,
                       route_timeout_ms(&s->route, cfg->request_timeout_ms));
        loop_timer_cancel(w->loop, &s->timer);
        if (s->route.delay_ms) { /* on_timer starts the attempt */
                h1_set_state(s, H1_DELAY);
                /* + 1: the loop's clock counts whole ms, never fire early */
                loop_timer_arm(w->loop, &s->timer, s->route.delay_ms + 1);
                return -1;
        }
        return attempt(s);
}

/* H1_IDLE, H1_HEAD: parse what the client sent. */
static int parse_request(struct h1s *s, bool *progress)
{
        struct flow *f = &s->req;
        const struct shunt_config *cfg = worker_cfg(s->w);
        if (f->len == f->off) {
                if (f->eof) {
                        session_free(s, REASON_DONE, false);
                        return -1;
                }
                /* Idle between requests: hold no buffer. */
                if (f->buf && !s->resp.buf) {
                        flow_give(s->w, f);
                }
                return 0;
        }
        if (s->state == H1_IDLE)
                h1_set_state(s, H1_HEAD);
        struct http1_msg *m = msg_get(s);
        if (!m) {
                session_free(s, REASON_NO_MEMORY, true);
                return -1;
        }
        struct http1_limits lim;
        http1_limits_default(&lim);
        lim.max_head = cfg->http_max_header_bytes < f->cap ? cfg->http_max_header_bytes : f->cap;
        if (lim.max_line > lim.max_head)
                lim.max_line = lim.max_head;
        lim.max_headers = cfg->http_max_headers;
        int rc = http1_parse_request_head((const char *)f->buf + f->off, f->len - f->off, &lim, m);
        if (rc < 0) {
                int status = http1_error_status(m->error);
                const char *why = http1_error_str(m->error);
                msg_done(s);
                return local_reply(s, status, why, 0);
        }
        if (rc == 0) {
                if (f->off == 0 && f->len == f->cap) {
                        msg_done(s);
                        char why[96];
                        snprintf(why, sizeof(why), "request head larger than %zu bytes",
                                 lim.max_head);
                        return local_reply(s, 431, why, 0);
                }
                if (f->eof) {
                        msg_done(s);
                        session_free(s, REASON_CLIENT_RESET, false);
                        return -1;
                }
                /* A head trickling in is bounded by timeouts.request as a
                 * whole, not only by the idle timeout between bytes. */
                if (!loop_timer_armed(&s->req_timer))
                        loop_timer_arm(s->w->loop, &s->req_timer, cfg->request_timeout_ms);
                return 0;
        }
        *progress = true;
        int r = begin_request(s, m, (size_t)rc);
        msg_done(s);
        return r;
}

/* ---- responses ------------------------------------------------------------------------ */

/* Reads the upstream into resp.buf while there is room and the response is
 * not complete. 0, or -1 when the caller must stop. */
static int upstream_read(struct h1s *s, bool *progress)
{
        struct flow *f = &s->resp;
        struct upstream *u = s->up;
        while (u->readable && !f->eof && !(resp_started(s) && f->body_done)) {
                if (flow_take(s->w, f) < 0) {
                        session_free(s, REASON_NO_MEMORY, true);
                        return -1;
                }
                if (f->len == f->cap && f->off > 0)
                        flow_compact(f);
                if (f->len == f->cap)
                        return 0; /* the client is slow: wait for it */
                ssize_t n = upstream_recv(u, f->buf + f->len, f->cap - f->len);
                if (n > 0) {
                        if ((size_t)n < f->cap - f->len && !u->rdhup && !u->tls)
                                u->readable = false;
                        f->len += (uint32_t)n;
                        *progress = true;
                        s->last_active_ms = loop_now_ms(s->w->loop);
                } else if (n == 0) {
                        f->eof = true;
                        *progress = true;
                } else if (errno == EAGAIN) {
                        u->readable = false;
                } else if (errno != EINTR) {
                        if (s->committed) {
                                log_warn("http1", s->id, "upstream reset mid-response: %s",
                                         strerror(errno));
                                report(s, ROUTE_RESET);
                                session_free(s, REASON_UPSTREAM_RESET, true);
                                return -1;
                        }
                        if (f->len > f->off) {
                                report(s, ROUTE_RESET);
                                return local_reply(s, 502, "upstream reset mid-response head", 0);
                        }
                        return upstream_broke(s, "reset the connection");
                }
        }
        return 0;
}

static int upstream_write(struct h1s *s, bool *progress)
{
        struct flow *f = &s->req;
        struct upstream *u = s->up;
        while (u->writable) {
                size_t n;
                ssize_t k = flow_send(u->io.fd, u->tls, f, true, &n);
                if (n == 0)
                        return 0;
                if (k > 0) {
                        *progress = true;
                        f->bytes += (uint64_t)k;
                        stat_add(&s->w->stats, ST_BYTES_UPSTREAM, (uint64_t)k);
                        /* The request stays in the buffer for a re-send. */
                        flow_sent(f, (size_t)k, false);
                        if ((size_t)k < n && !u->tls)
                                u->writable = false;
                } else if (errno == EAGAIN) {
                        u->writable = false;
                } else if (errno != EINTR) {
                        if (s->committed || s->resp.len > 0) {
                                /* The server answered and closed (e.g. an early
                                 * error): let the response through. */
                                u->writable = false;
                                f->off = f->cls;
                                s->upstream_keep_alive = false;
                                return 0;
                        }
                        return upstream_broke(s, "reset the connection");
                }
        }
        return 0;
}

/* The upstream switched protocols: the 101 goes to the client, then bytes
 * flow both ways unparsed until both sides closed (the upstream connection
 * is never pooled). */
static int start_tunnel(struct h1s *s, struct http1_msg *m, size_t head_len)
{
        struct flow *f = &s->resp;
        struct http1_forward fw = {.keep_upgrade = true};
        if (http1_write_response_head(m, &fw, &f->head) < 0) {
                msg_done(s);
                return local_reply(s, 502, "cannot forward the 101 response", 0);
        }
        msg_done(s);
        s->status = 101;
        s->committed = true;
        s->resp_close = true;
        f->off += (uint32_t)head_len;
        f->cls = f->off;
        f->kind = HTTP1_BODY_UNTIL_CLOSE;
        f->body_done = false;
        /* What the client sends from now on is the new protocol. */
        s->req.kind = HTTP1_BODY_UNTIL_CLOSE;
        s->req.body_done = false;
        s->body_dropped = true;
        loop_timer_cancel(s->w->loop, &s->req_timer);
        report(s, ROUTE_SUCCESS);
        count_status(s, 101);
        count_request(s, 101, "upgraded");
        h1_set_state(s, H1_TUNNEL);
        arm_idle(s);
        return 0;
}

/* H1_TUNNEL: both ways, half-closes passed on once everything before them
 * went out; the session ends when both directions are closed. */
static int tunnel_step(struct h1s *s, bool *progress)
{
        struct flow *q = &s->req, *r = &s->resp;
        struct upstream *u = s->up;
        flow_classify(q);
        if (upstream_write(s, progress) < 0 || closed(s))
                return -1;
        if (q->off == q->len)
                q->off = q->len = q->cls = 0;
        if (q->eof && q->off == q->len && !s->up_fin_sent) {
                if (upstream_io_shutdown(u->io.fd, u->tls) == -EAGAIN)
                        return 0;
                s->up_fin_sent = true;
        }
        if (upstream_read(s, progress) < 0 || closed(s))
                return -1;
        flow_classify(r);
        if (client_write(s, progress) < 0)
                return -1;
        if (r->eof && r->head.len == 0 && r->off == r->len && !s->cli_fin_sent) {
                if (upstream_io_shutdown(s->io.fd, s->tls) == -EAGAIN)
                        return 0;
                s->cli_fin_sent = true;
        }
        if (s->cli_fin_sent && s->up_fin_sent) {
                session_free(s, REASON_DONE, false);
                return -1;
        }
        return 0;
}

/* Parses response heads in resp.buf: 1xx are passed on, the final one
 * starts the body. */
static int parse_response(struct h1s *s, bool *progress)
{
        struct flow *f = &s->resp;
        while (s->state == H1_AWAIT && f->len > f->off) {
                struct http1_msg *m = msg_get(s);
                if (!m) {
                        session_free(s, REASON_NO_MEMORY, true);
                        return -1;
                }
                int rc = http1_parse_response_head((const char *)f->buf + f->off, f->len - f->off,
                                                   NULL, s->method, m);
                if (rc < 0) {
                        char why[160];
                        snprintf(why, sizeof(why), "upstream sent a malformed response: %s",
                                 http1_error_str(m->error));
                        msg_done(s);
                        return local_reply(s, 502, why, 0);
                }
                if (rc == 0) {
                        if (f->off == 0 && f->len == f->cap) {
                                msg_done(s);
                                return local_reply(s, 502, "upstream response head too large", 0);
                        }
                        if (f->eof) {
                                msg_done(s);
                                return local_reply(s, 502, "upstream closed mid-response head", 0);
                        }
                        return 0;
                }
                *progress = true;
                struct http1_forward fw = {0};
                if (m->status == 101 && s->upgrade)
                        return start_tunnel(s, m, (size_t)rc);
                if (m->status >= 100 && m->status < 200) {
                        if (m->status == 101 || s->http10) {
                                /* A 101 nobody asked for is dropped; 1.0
                                 * clients get no 1xx. */
                                f->off += (uint32_t)rc;
                                http1_msg_reset(m);
                                continue;
                        }
                        if (http1_write_response_head(m, &fw, &f->head) < 0) {
                                msg_done(s);
                                return local_reply(s, 502, "cannot forward a 1xx response", 0);
                        }
                        s->committed = true;
                        f->off += (uint32_t)rc;
                        f->cls = f->off;
                        http1_msg_reset(m);
                        continue;
                }
                s->status = m->status;
                s->upstream_keep_alive = m->keep_alive;
                if (m->body == HTTP1_BODY_UNTIL_CLOSE)
                        s->resp_close = true; /* the end of the body is our close */
                struct http1_header ka = {
                    .name = {"Connection", 10},
                    .value = {"keep-alive", 10},
                };
                struct http1_header adds[1 + ROUTE_EDITS_MAX];
                size_t na = 0;
                if (s->http10 && !s->resp_close)
                        adds[na++] = ka;
                struct route_edits ed; /* the route rule's ResponseHeaderModifier */
                if (route_response_edits(&s->route, &ed)) {
                        fw.drop = ed.drop;
                        fw.ndrop = ed.ndrop;
                        for (size_t i = 0; i < ed.nadd; i++)
                                adds[na++] = (struct http1_header){
                                    .name = {ed.add_name[i], strlen(ed.add_name[i])},
                                    .value = {ed.add_value[i], strlen(ed.add_value[i])}};
                }
                fw.add = adds;
                fw.nadd = na;
                fw.close = s->resp_close;
                if (http1_write_response_head(m, &fw, &f->head) < 0) {
                        msg_done(s);
                        return local_reply(s, 502, "cannot forward the response head", 0);
                }
                s->committed = true;
                h1_set_state(s, H1_STREAM);
                f->off += (uint32_t)rc;
                f->cls = f->off;
                flow_set_body(f, m);
                msg_done(s);
                loop_timer_cancel(s->w->loop, &s->req_timer);
                loop_timer_cancel(s->w->loop, &s->try_timer);
                arm_idle(s);
        }
        if (s->state == H1_STREAM && flow_classify(f) < 0) {
                log_warn("http1", s->id, "upstream sent a malformed chunked body: %s",
                         http1_error_str(f->ch.error));
                session_free(s, REASON_UPSTREAM_RESET, true);
                return -1;
        }
        return 0;
}

/* The response is out: the upstream goes back to the pool when it can
 * carry another request, the client goes on with its next one. */
static int finish_exchange(struct h1s *s)
{
        struct worker *w = s->w;
        bool sent = all_sent(s);
        bool reusable = sent && s->upstream_keep_alive && !s->resp.eof &&
                        s->resp.len == s->resp.off && s->resp.kind != HTTP1_BODY_UNTIL_CLOSE;
        count_status(s, s->status);
        count_request(s, s->status, "done");
        release_upstream(s, reusable, s->status >= 500 ? ROUTE_HTTP_5XX : ROUTE_SUCCESS);
        loop_timer_cancel(w->loop, &s->req_timer);
        s->resp.off = s->resp.len = s->resp.cls = 0;
        if (s->resp_close && s->req.body_done && s->req.cls == s->req.len) {
                /* The response is out and nothing of the client is left
                 * unread: close now (its FIN follows the response). Not
                 * in flight: the request is not aborted, nor logged twice. */
                h1_set_state(s, H1_CLOSING);
                session_free(s, REASON_DONE, false);
                return -1;
        }
        if (s->resp_close || !s->req.body_done) {
                /* Bytes of the client may still come: FIN, then read them
                 * for a moment so a reset does not eat the response. */
                h1_set_state(s, H1_CLOSING);
                return 0;
        }
        /* Next request: what follows this one in the buffer. Nothing of its
         * response went out: an error in its head is answered, not reset. */
        s->req.off = s->req.cls;
        s->committed = false;
        h1_set_state(s, s->req.len > s->req.off ? H1_HEAD : H1_IDLE);
        s->method_s[0] = s->target[0] = '\0';
        strbuf_reset(&s->req.head);
        s->req.head_off = 0;
        flow_give(w, &s->resp);
        arm_idle(s);
        return 0;
}

static int exchange_step(struct h1s *s, bool *progress)
{
        if (!s->req.body_done && flow_classify(&s->req) < 0) {
                if (s->committed) {
                        session_free(s, REASON_CLIENT_RESET, true);
                        return -1;
                }
                return local_reply(s, 400, http1_error_str(s->req.ch.error), 0);
        }
        if (s->req.eof && !s->req.body_done) {
                /* The client went away in the middle of its request. */
                session_free(s, REASON_CLIENT_RESET, false);
                return -1;
        }
        struct upstream *u = s->up;
        if (u && u->state == UPSTREAM_OPEN) {
                if (upstream_write(s, progress) < 0 || closed(s) || s->up != u)
                        return -1;
                if (upstream_read(s, progress) < 0 || closed(s) || s->up != u)
                        return -1;
                if (parse_response(s, progress) < 0 || closed(s))
                        return -1;
                if (s->state == H1_TUNNEL)
                        return 0; /* a 101: the tunnel takes over (drive loops) */
                if (s->state != H1_AWAIT && s->state != H1_STREAM)
                        return -1;
                if (s->resp.eof && s->state == H1_AWAIT) {
                        if (s->resp.len == 0 && !s->committed)
                                return upstream_broke(s, "closed the connection");
                        report(s, ROUTE_RESET);
                        return local_reply(s, 502, "upstream closed mid-response head", 0);
                }
                if (s->resp.eof && s->state == H1_STREAM && !s->resp.body_done) {
                        log_warn("http1", s->id, "upstream closed mid-response body");
                        report(s, ROUTE_RESET);
                        /* Let what arrived reach the client first. */
                        if (client_write(s, progress) < 0)
                                return -1;
                        session_free(s, REASON_UPSTREAM_RESET, true);
                        return -1;
                }
        }
        if (client_write(s, progress) < 0)
                return -1;
        if (s->state == H1_STREAM && s->resp.body_done && s->resp.head.len == 0 &&
            s->resp.off == s->resp.cls)
                return finish_exchange(s);
        return 0;
}

static int closing_step(struct h1s *s, bool *progress)
{
        if (client_write(s, progress) < 0)
                return -1;
        if (s->resp.head.len > 0 || s->resp.cls > s->resp.off)
                return 0;
        if (s->state == H1_CLOSING) {
                /* Everything is out: FIN, then read what the client still
                 * sends for a moment, so a reset does not eat our reply. */
                if (upstream_io_shutdown(s->io.fd, s->tls) == -EAGAIN)
                        return 0;
                h1_set_state(s, H1_LINGER);
                loop_timer_arm(s->w->loop, &s->timer, LINGER_MS);
        }
        if (s->req.eof) {
                session_free(s, REASON_DONE, false);
                return -1;
        }
        return 0;
}

static void drive(struct h1s *s)
{
        bool progress = true;
        while (progress && !closed(s)) {
                progress = false;
                if (client_read(s, &progress) < 0)
                        return;
                int r = 0;
                switch (s->state) {
                case H1_IDLE:
                case H1_HEAD:
                        r = parse_request(s, &progress);
                        break;
                case H1_AWAIT:
                case H1_STREAM:
                        r = exchange_step(s, &progress);
                        break;
                case H1_BACKOFF:
                case H1_DELAY:
                        if (s->req.eof && !s->req.body_done) {
                                session_free(s, REASON_CLIENT_RESET, false);
                                return;
                        }
                        break;
                case H1_CLOSING:
                case H1_LINGER:
                        r = closing_step(s, &progress);
                        break;
                case H1_TUNNEL:
                        r = tunnel_step(s, &progress);
                        break;
                case H1_CLOSED:
                case H1__COUNT:
                        return;
                }
                if (r < 0)
                        return;
        }
}

/* ---- events ------------------------------------------------------------------------------ */

static void on_client(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct h1s *s = io->data;
        (void)loop;
        if (closed(s))
                return;
        upstream_io_mark(events, s->tls != NULL, &s->readable, &s->writable, &s->rdhup);
        drive(s);
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        struct h1s *s = t->data;
        uint64_t now = loop_now_ms(loop);
        const struct shunt_config *cfg = worker_cfg(s->w);
        switch (s->state) {
        case H1_BACKOFF:
                if (retry_now(s) == 0)
                        drive(s);
                return;
        case H1_DELAY:
                if (attempt(s) == 0)
                        drive(s);
                return;
        case H1_CLOSING:
                session_free(s, REASON_IDLE_TIMEOUT, false);
                return;
        case H1_LINGER:
                session_free(s, REASON_DONE, false);
                return;
        case H1_CLOSED:
        case H1__COUNT:
                return;
        case H1_IDLE:
        case H1_HEAD:
        case H1_AWAIT:
        case H1_STREAM:
        case H1_TUNNEL:
                if (now - s->last_active_ms >= cfg->idle_timeout_ms) {
                        log_debug("http1", s->id, "idle for %llu ms: closing",
                                  (unsigned long long)(now - s->last_active_ms));
                        session_free(s, REASON_IDLE_TIMEOUT,
                                     s->state != H1_IDLE && s->state != H1_HEAD);
                        return;
                }
                loop_timer_arm(loop, t, cfg->idle_timeout_ms - (now - s->last_active_ms));
                return;
        }
}

/* The try passed its rule's timeouts.backendRequest before a response
 * head: its connection is closed and the request goes to another endpoint
 * as after a reset (idempotent, its body all still here, the retry policy
 * and budget agreeing), else 504. timeouts.request bounds all the tries. */
static void on_try_timeout(struct loop *loop, struct loop_timer *t)
{
        struct h1s *s = t->data;
        (void)loop;
        if (closed(s) || s->state != H1_AWAIT || s->committed || !s->up)
                return;
        char ubuf[SOCKADDR_STRLEN], reason[320];
        sockaddr_format(&s->upstream_addr, ubuf, sizeof(ubuf));
        up_drop(s, false);
        report(s, ROUTE_TIMEOUT);
        route_limit_release(&s->route, LB_LIMIT_PENDING);
        uint32_t backoff_ms;
        if (!s->body_dropped &&
            route_retry_allowed(&s->route, ROUTE_TIMEOUT, 0, s->idempotent, &backoff_ms)) {
                stat_add(&s->w->stats, ST_HTTP_RETRIES, 1);
                log_debug("http1", s->id,
                          "no response from %s within the try's timeout: re-sending %s", ubuf,
                          s->method_s);
                retry_later(s, backoff_ms);
                return;
        }
        snprintf(reason, sizeof(reason),
                 "no response from %s within the route's timeouts.backendRequest (%u ms)", ubuf,
                 route_try_timeout_ms(&s->route));
        local_reply(s, 504, reason, 0);
}

static void on_request_timeout(struct loop *loop, struct loop_timer *t)
{
        struct h1s *s = t->data;
        (void)loop;
        if (s->state == H1_HEAD) {
                local_reply(s, 408, "request head not complete within timeouts.request", 0);
                return;
        }
        /* Only until the response head: no timeout for a body or a tunnel. */
        if (s->state != H1_AWAIT && s->state != H1_BACKOFF && s->state != H1_DELAY)
                return;
        const struct shunt_config *cfg = worker_cfg(s->w);
        char ubuf[SOCKADDR_STRLEN], reason[320];
        if (s->up && s->up->state == UPSTREAM_OPEN)
                report(s, ROUTE_TIMEOUT);
        snprintf(reason, sizeof(reason), "no response from %s within timeouts.request (%u ms)",
                 s->upstream_addr.ss_family ? sockaddr_format(&s->upstream_addr, ubuf, sizeof(ubuf))
                                            : s->service,
                 cfg->request_timeout_ms);
        local_reply(s, 504, reason, 0);
}

/* ---- the engine ------------------------------------------------------------------------ */

static void h1_start(struct worker *w, struct handoff *h)
{
        if (!w->h1)
                w->h1 = calloc(1, sizeof(*w->h1));
        struct h1s *s = w->h1 ? calloc(1, sizeof(*s)) : NULL;
        if (!s) {
                route_release(&h->route); /* the relay's pick came along */
                worker_buf_give(w, h->buf, h->cap);
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(h->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                tls_conn_free(h->tls);
                close(h->fd);
                session_end(w, h->dir, REASON_NO_MEMORY);
                return;
        }
        s->w = w;
        s->id = h->id;
        s->dir = h->dir;
        s->tls = h->tls;
        if (s->tls)
                s->xfcc = xfcc_element(s->tls);
        s->client_addr = h->client_addr;
        s->orig_dst = h->orig_dst;
        s->created_ms = h->created_ms;
        s->last_active_ms = loop_now_ms(w->loop);
        s->req.buf = h->buf;
        s->req.cap = h->cap;
        s->req.len = h->len;
        s->req.eof = h->client_eof;
        s->first = h->route;
        s->first_upstream = h->upstream;
        strbuf_init(&s->req.head);
        strbuf_init(&s->resp.head);
        snprintf(s->service, sizeof(s->service), "-");
        struct route_table *t = (struct route_table *)(void *)snapshot_reader_get(
            &w->route_reader, &w->proxy->route_slot);
        enum proto declared;
        const char *name = NULL;
        if (s->dir == DIR_OUTBOUND)
                route_lookup(t, &s->orig_dst, &declared, NULL, &name);
        if (name)
                snprintf(s->service, sizeof(s->service), "%s", name);
        s->state = H1_IDLE; /* parse_request moves on when h brought bytes */
        loop_io_init(&s->io, h->fd, on_client, s);
        loop_timer_init(&s->timer, on_timer, s);
        loop_timer_init(&s->req_timer, on_request_timeout, s);
        loop_timer_init(&s->try_timer, on_try_timeout, s);
        s->next = w->h1->sessions;
        if (s->next)
                s->next->prev = s;
        w->h1->sessions = s;
        s->readable = s->writable = true;
        if (s->tls && !s->xfcc) {
                session_free(s, REASON_NO_MEMORY, true);
                return;
        }
        if (loop_io_add(w->loop, &s->io, H1_EVENTS) < 0) {
                session_free(s, REASON_SOCKET, true);
                return;
        }
        arm_idle(s);
        drive(s);
}

static void h1_close_all(struct worker *w, int reason)
{
        while (w->h1 && w->h1->sessions)
                session_free(w->h1->sessions, (enum conn_reason)reason, false);
}

static void h1_render(struct worker *w, struct strbuf *out, bool *first)
{
        if (!w->h1)
                return;
        uint64_t now = clock_mono_ms();
        for (struct h1s *s = w->h1->sessions; s; s = s->next) {
                char ubuf[SOCKADDR_STRLEN];
                conn_render_open(out, first, w, s->id, s->dir, &s->client_addr, &s->orig_dst,
                                 s->upstream_addr.ss_family
                                     ? sockaddr_format(&s->upstream_addr, ubuf, sizeof(ubuf))
                                     : "",
                                 s->service);
                strbuf_appendf(out,
                               ",\"protocol\":\"http1\",\"state\":\"%s\",\"bytes_in\":%llu,"
                               "\"bytes_out\":%llu,\"age_ms\":%llu,\"requests\":%llu,\"sni\":\"\"}",
                               h1_state_name(s->state), (unsigned long long)s->req.bytes,
                               (unsigned long long)s->resp.bytes,
                               (unsigned long long)(now - s->created_ms),
                               (unsigned long long)s->requests);
        }
}

static void h1_drain(struct worker *w)
{
        if (!w->h1)
                return;
        w->h1->draining = true;
        struct h1s *next;
        for (struct h1s *s = w->h1->sessions; s; s = next) {
                next = s->next;
                if (s->state == H1_IDLE)
                        session_free(s, REASON_SHUTDOWN, false); /* idle keep-alive */
                else if (s->state != H1_CLOSING && s->state != H1_LINGER)
                        s->resp_close = true; /* after this response */
        }
}

static void h1_worker_free(struct worker *w)
{
        if (w->h1)
                free(w->h1->spare_msg);
        free(w->h1);
        w->h1 = NULL;
}

const struct proto_engine h1_engine = {
    .name = "http1",
    .start = h1_start,
    .close_all = h1_close_all,
    .render = h1_render,
    .worker_free = h1_worker_free,
    .drain = h1_drain,
    .takes_route = true,
};

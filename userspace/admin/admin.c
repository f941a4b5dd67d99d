// SPDX-License-Identifier: Apache-2.0
#include "admin/admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "http/http1.h"

#define COMP            "admin"
#define WRITE_BUDGET    (256 * 1024) /* bytes written per wake-up */
#define READ_BUDGET     (256 * 1024) /* bytes read per wake-up */
#define LINGER_MS       1000         /* max time to drain a client after responding */
#define LINGER_MAX      (2 * ADMIN_MAX_BODY)
#define ACCEPT_BUDGET   64
#define ACCEPT_RETRY_MS 100

struct route {
        char method[8];
        char *path;
        admin_handler_fn fn;
        void *ctx;
};

enum conn_state { C_HEAD, C_BODY, C_WRITE, C_LINGER, C_STREAM };

#define STREAM_DRAIN_MAX (64 * 1024) /* bytes a streamed response's client may send */

struct admin_conn {
        struct admin *a;
        struct admin_conn *prev, *next;
        struct loop_io io;
        struct loop_timer timer;
        enum conn_state state;
        uint64_t start_ms;
        char peer[64];

        char head[ADMIN_MAX_HEAD + 1];
        size_t head_len;
        struct http1_msg msg; /* the parser's progress over head */
        struct admin_head hd;

        /* parsed request */
        char method[16];
        char *path;
        char *query;
        const struct route *route;
        bool is_head;
        char *body;
        size_t body_len, body_need;

        /* response */
        int status;
        struct strbuf out;
        size_t out_off;
        size_t lingered;

        /* a streamed response (admin_respond_stream) */
        admin_stream_close_fn on_close;
        void *close_ctx;
};

struct admin {
        struct loop *loop;
        const char *name; /* "admin" or the read-only listener's name, for logs */
        bool read_only;   /* GET routes only, never a token: nothing served changes shuntd */
        struct loop_io lio;
        struct loop_timer accept_retry;
        uint16_t port;
        unsigned read_timeout_ms;
        struct route *routes;
        size_t nroutes;
        struct admin_conn *conns;
        size_t nconns;
        bool overloaded;
        /* Requests other than GET and HEAD: refused (no token), or allowed
         * with "Authorization: Bearer <token>". */
        char token[ADMIN_TOKEN_MAX + 1];
};

/* ---- helpers ---------------------------------------------------------------- */

/* "Bearer <token>" equal to the admin's token, compared in constant time. */
static bool bearer_matches(const struct admin *a, struct http1_slice v)
{
        size_t n = strlen(a->token);
        if (!n || v.n != n + 7 || strncasecmp(v.p, "Bearer ", 7) != 0)
                return false;
        unsigned char diff = 0;
        for (size_t i = 0; i < n; i++)
                diff |= (unsigned char)(v.p[7 + i] ^ a->token[i]);
        return diff == 0;
}

int admin_set_token(struct admin *a, const char *token)
{
        if (token && a->read_only)
                return -EPERM;
        if (!token) {
                a->token[0] = '\0';
                return 0;
        }
        size_t n = strlen(token);
        if (n < 16 || n > ADMIN_TOKEN_MAX)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (token[i] <= ' ' || token[i] > '~')
                        return -EINVAL;
        memcpy(a->token, token, n + 1);
        return 0;
}

void admin_respond_error(struct admin_response *resp, int status, const char *msg)
{
        resp->status = status;
        resp->content_type = "application/json";
        strbuf_reset(&resp->body);
        strbuf_append(&resp->body, "{\"error\":");
        strbuf_append_json_string(&resp->body, msg);
        strbuf_append(&resp->body, "}\n");
}

/* Decodes s[0..n) (percent escapes, '+' as space) into out; returns the decoded
 * length or -ENOSPC. */
static int form_decode(const char *s, size_t n, char *out, size_t outlen)
{
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (c == '+') {
                        c = ' ';
                } else if (c == '%' && i + 2 < n && http1_hex_digit((unsigned char)s[i + 1]) >= 0 &&
                           http1_hex_digit((unsigned char)s[i + 2]) >= 0) {
                        c = (char)(http1_hex_digit((unsigned char)s[i + 1]) * 16 +
                                   http1_hex_digit((unsigned char)s[i + 2]));
                        i += 2;
                }
                if (o + 1 >= outlen)
                        return -ENOSPC;
                out[o++] = c;
        }
        if (outlen)
                out[o] = '\0';
        return (int)o;
}

int admin_query_get(const char *query, const char *key, char *out, size_t outlen)
{
        if (!query || !key)
                return -ENOENT;
        const char *p = query;
        while (*p) {
                const char *end = strchr(p, '&');
                if (!end)
                        end = p + strlen(p);
                const char *eq = memchr(p, '=', (size_t)(end - p));
                const char *kend = eq ? eq : end;
                char kbuf[128];
                int kl = form_decode(p, (size_t)(kend - p), kbuf, sizeof(kbuf));
                if (kl >= 0 && strcmp(kbuf, key) == 0) {
                        if (!eq)
                                return form_decode("", 0, out, outlen);
                        return form_decode(eq + 1, (size_t)(end - eq - 1), out, outlen);
                }
                p = *end ? end + 1 : end;
        }
        return -ENOENT;
}

static void format_peer(const struct sockaddr_storage *ss, char *buf, size_t len)
{
        char ip[INET6_ADDRSTRLEN] = "?";
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
                inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
                snprintf(buf, len, "%s:%u", ip, ntohs(sin->sin_port));
        } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
                inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
                snprintf(buf, len, "[%s]:%u", ip, ntohs(sin6->sin6_port));
        } else {
                snprintf(buf, len, "unknown");
        }
}

/* ---- connections -------------------------------------------------------------- */

static void conn_close(struct admin_conn *c)
{
        struct admin *a = c->a;
        admin_stream_close_fn on_close = c->on_close;
        c->on_close = NULL;
        if (on_close)
                on_close(c->close_ctx);
        loop_timer_cancel(a->loop, &c->timer);
        loop_io_del(a->loop, &c->io);
        close(c->io.fd);
        if (c->prev)
                c->prev->next = c->next;
        else
                a->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        a->nconns--;
        if (a->nconns < ADMIN_MAX_CONNS)
                a->overloaded = false;
        free(c->body);
        strbuf_free(&c->out);
        free(c);
}

static void conn_linger(struct admin_conn *c)
{
        /* Everything is written: half-close, then read what the client still
         * sends until it closes, so that closing with unread input does not
         * reset the connection before the client has read the response. */
        shutdown(c->io.fd, SHUT_WR);
        c->state = C_LINGER;
        if (loop_io_mod(c->a->loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
                conn_close(c);
                return;
        }
        unsigned ms = c->a->read_timeout_ms < LINGER_MS ? c->a->read_timeout_ms : LINGER_MS;
        if (loop_timer_arm(c->a->loop, &c->timer, ms) < 0)
                conn_close(c);
}

/* Returns false when c was closed. */
static bool conn_write(struct admin_conn *c)
{
        size_t budget = WRITE_BUDGET;
        while (c->out_off < c->out.len && budget) {
                size_t n = c->out.len - c->out_off;
                if (n > budget)
                        n = budget;
                ssize_t w =
                    send(c->io.fd, c->out.data + c->out_off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        log_debug(COMP, 0, "write to %s: %s", c->peer, strerror(errno));
                        conn_close(c);
                        return false;
                }
                c->out_off += (size_t)w;
                budget -= (size_t)w;
        }
        bool streaming = c->state == C_STREAM;
        if (c->out_off == c->out.len && streaming) {
                strbuf_reset(&c->out);
                c->out_off = 0;
                if (loop_io_mod(c->a->loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
                        conn_close(c);
                        return false;
                }
                return true;
        }
        if (c->out_off == c->out.len) {
                conn_linger(c);
                return true;
        }
        /* Not done: wait until writable (level-triggered, so an exhausted budget
         * on a writable socket simply comes back next loop iteration). */
        if (loop_io_mod(c->a->loop, &c->io,
                        streaming ? EPOLLOUT | EPOLLIN | EPOLLRDHUP : EPOLLOUT) < 0) {
                conn_close(c);
                return false;
        }
        return true;
}

static void conn_respond(struct admin_conn *c, int status, const char *content_type,
                         const char *extra_headers, const char *body, size_t body_len)
{
        c->status = status;
        strbuf_reset(&c->out);
        strbuf_appendf(&c->out, "HTTP/1.1 %d %s\r\n", status, http1_status_text(status));
        strbuf_appendf(&c->out, "Content-Type: %s\r\n",
                       content_type ? content_type : "application/json");
        strbuf_appendf(&c->out, "Content-Length: %zu\r\n", body_len);
        strbuf_append(&c->out, "Cache-Control: no-store\r\nConnection: close\r\n");
        if (extra_headers)
                strbuf_append(&c->out, extra_headers);
        strbuf_append(&c->out, "\r\n");
        if (!c->is_head)
                strbuf_appendn(&c->out, body, body_len);
        if (c->out.truncated) {
                log_error(COMP, 0, "out of memory building a response for %s", c->peer);
                conn_close(c);
                return;
        }
        uint64_t ms = loop_now_ms(c->a->loop) - c->start_ms;
        log_debug(COMP, 0, "%s %s %s -> %d (%zu bytes, %llu ms)", c->peer,
                  c->method[0] ? c->method : "-", c->path ? c->path : "-", status, body_len,
                  (unsigned long long)ms);
        c->state = C_WRITE;
        free(c->body);
        c->body = NULL;
        if (loop_timer_arm(c->a->loop, &c->timer, c->a->read_timeout_ms) < 0) {
                conn_close(c);
                return;
        }
        conn_write(c);
}

static void conn_error(struct admin_conn *c, int status, const char *extra_headers, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));

static void conn_error(struct admin_conn *c, int status, const char *extra_headers, const char *fmt,
                       ...)
{
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        struct admin_response r = {.status = status};
        strbuf_init(&r.body);
        admin_respond_error(&r, status, msg);
        conn_respond(c, status, "application/json", extra_headers, r.body.data ? r.body.data : "",
                     r.body.len);
        strbuf_free(&r.body);
}

/* The head of a streamed response; the body follows in chunks as
 * admin_stream_write is called. */
static void stream_start(struct admin_conn *c, const char *content_type, const struct strbuf *first)
{
        c->status = 200;
        strbuf_reset(&c->out);
        c->out_off = 0;
        strbuf_appendf(&c->out,
                       "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
                       "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                       content_type ? content_type : "application/json");
        if (first->len && !first->truncated) {
                strbuf_appendf(&c->out, "%zx\r\n", first->len);
                strbuf_appendn(&c->out, first->data, first->len);
                strbuf_append(&c->out, "\r\n");
        }
        log_debug(COMP, 0, "%s %s %s -> 200 (stream)", c->peer, c->method, c->path);
        c->state = C_STREAM;
        free(c->body);
        c->body = NULL;
        loop_timer_cancel(c->a->loop, &c->timer); /* the handler bounds the stream */
        conn_write(c);
}

struct admin_stream *admin_respond_stream(struct admin_response *resp, const char *content_type,
                                          admin_stream_close_fn on_close, void *ctx)
{
        struct admin_conn *c = resp->conn_;
        if (!c || c->is_head || c->a->read_only)
                return NULL;
        resp->stream_ = true;
        resp->content_type = content_type;
        c->on_close = on_close;
        c->close_ctx = ctx;
        return (struct admin_stream *)c;
}

int admin_stream_write(struct admin_stream *st, const char *data, size_t len)
{
        struct admin_conn *c = (struct admin_conn *)st;
        if (c->state != C_STREAM)
                return -EPIPE;
        if (!len)
                return 0;
        strbuf_appendf(&c->out, "%zx\r\n", len);
        strbuf_appendn(&c->out, data, len);
        strbuf_append(&c->out, "\r\n");
        if (c->out.truncated) {
                log_error(COMP, 0, "out of memory streaming to %s", c->peer);
                conn_close(c);
                return -ENOMEM;
        }
        return conn_write(c) ? 0 : -EPIPE;
}

size_t admin_stream_pending(const struct admin_stream *st)
{
        const struct admin_conn *c = (const struct admin_conn *)st;
        return c->out.len - c->out_off;
}

struct loop *admin_stream_loop(const struct admin_stream *st)
{
        return ((const struct admin_conn *)st)->a->loop;
}

void admin_stream_end(struct admin_stream *st)
{
        struct admin_conn *c = (struct admin_conn *)st;
        c->on_close = NULL;
        if (c->state != C_STREAM)
                return;
        strbuf_append(&c->out, "0\r\n\r\n");
        c->state = C_WRITE;
        if (c->out.truncated || loop_timer_arm(c->a->loop, &c->timer, c->a->read_timeout_ms) < 0) {
                conn_close(c);
                return;
        }
        conn_write(c);
}

/* A streamed response's client: what it sends is read and dropped (up to
 * STREAM_DRAIN_MAX); its close ends the stream. */
static void stream_read(struct admin_conn *c)
{
        char scratch[4096];
        for (;;) {
                ssize_t n = recv(c->io.fd, scratch, sizeof(scratch), MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n <= 0 || (c->lingered += (size_t)n) > STREAM_DRAIN_MAX) {
                        log_debug(COMP, 0, "%s: stream client gone", c->peer);
                        conn_close(c);
                        return;
                }
        }
}

static void conn_dispatch(struct admin_conn *c)
{
        struct admin_request req = {
            .method = c->method,
            .path = c->path,
            .query = c->query,
            .body = c->body ? c->body : "",
            .body_len = c->body_len,
        };
        struct admin_response resp = {.status = 200, .conn_ = c};
        strbuf_init(&resp.body);
        c->route->fn(&req, &resp, c->route->ctx);
        if (resp.stream_) {
                stream_start(c, resp.content_type, &resp.body);
                strbuf_free(&resp.body);
                return;
        }
        if (resp.body.truncated) {
                strbuf_free(&resp.body);
                conn_error(c, 500, NULL, "out of memory building the response");
                return;
        }
        if (resp.status < 100 || resp.status > 599)
                resp.status = 500;
        conn_respond(c, resp.status, resp.content_type, NULL, resp.body.data ? resp.body.data : "",
                     resp.body.len);
        strbuf_free(&resp.body);
}

int admin_parse_head(char *buf, size_t len, struct http1_msg *m, struct admin_head *out, char *why,
                     size_t whylen)
{
        struct http1_limits lim;
        http1_limits_default(&lim);
        lim.max_head = ADMIN_MAX_HEAD;
        int rc = http1_parse_request_head(buf, len, &lim, m);
        if (rc == 0 && len < ADMIN_MAX_HEAD)
                return -EAGAIN;
        if (rc == 0 || (rc < 0 && m->error == HTTP1_E_HEAD_TOO_LARGE)) {
                snprintf(why, whylen, "request head exceeds the limit of %d bytes", ADMIN_MAX_HEAD);
                return 431;
        }
        if (rc < 0) {
                snprintf(why, whylen, "%s", http1_error_str(m->error));
                return http1_error_status(m->error);
        }
        if (m->method_str.n >= sizeof(out->method)) {
                snprintf(why, whylen, "method not implemented");
                return 501;
        }
        if (m->form != HTTP1_T_ORIGIN) {
                snprintf(why, whylen, "request target must be an absolute path");
                return 400;
        }
        if (m->body == HTTP1_BODY_CHUNKED) {
                snprintf(why, whylen,
                         "chunked request bodies are not supported; send "
                         "Content-Length");
                return 411;
        }
        if (m->body == HTTP1_BODY_LENGTH && m->content_length > ADMIN_MAX_BODY) {
                snprintf(why, whylen, "request body of %llu bytes exceeds the limit of %d",
                         (unsigned long long)m->content_length, ADMIN_MAX_BODY);
                return 413;
        }
        memcpy(out->method, m->method_str.p, m->method_str.n);
        out->method[m->method_str.n] = '\0';
        out->expect_continue = m->expect_continue;
        out->body_len = m->body == HTTP1_BODY_LENGTH ? (size_t)m->content_length : 0;
        out->head_len = (size_t)rc;
        out->n_authorization = 0;
        for (int i = http1_header_find(m, "Authorization", 0); i >= 0 && out->n_authorization < 4;
             i = http1_header_find(m, "Authorization", (size_t)i + 1))
                out->authorization[out->n_authorization++] = m->headers[i].value;
        /* The target is followed by the blank before the version, which the
         * parser has read: it becomes the terminator. */
        char *target = (char *)m->target.p;
        target[m->target.n] = '\0';
        char *hash = strchr(target, '#');
        if (hash)
                *hash = '\0';
        char *qm = strchr(target, '?');
        if (qm) {
                *qm = '\0';
                out->query = qm + 1;
        } else {
                out->query = target + strlen(target);
        }
        out->path = target;
        return 0;
}

/* Routes the request whose head c->hd describes. Returns 0 with the route
 * set, or an HTTP status with the response already started. */
static int conn_route(struct admin_conn *c)
{
        bool authorized = false;
        for (size_t i = 0; i < c->hd.n_authorization; i++)
                authorized |= bearer_matches(c->a, c->hd.authorization[i]);
        memcpy(c->method, c->hd.method, sizeof(c->method));
        c->path = c->hd.path;
        c->query = c->hd.query;
        size_t cl = c->hd.body_len;
        bool expect_continue = c->hd.expect_continue;
        size_t head_end = c->hd.head_len;

        /* routing */
        struct admin *a = c->a;
        const struct route *match = NULL;
        char allow[64] = "";
        c->is_head = strcmp(c->method, "HEAD") == 0;
        for (size_t i = 0; i < a->nroutes; i++) {
                const struct route *r = &a->routes[i];
                if (strcmp(r->path, c->path) != 0)
                        continue;
                if (strcmp(r->method, c->method) == 0 ||
                    (c->is_head && strcmp(r->method, "GET") == 0))
                        match = r;
                size_t al = strlen(allow);
                snprintf(allow + al, sizeof(allow) - al, "%s%s%s", al ? ", " : "", r->method,
                         strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
        }
        if (!match && !allow[0])
                return conn_error(c, 404, NULL, "no such admin endpoint: %s", c->path), 404;
        if (!match) {
                char hdr[96];
                snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
                return conn_error(c, 405, hdr, "method %s not allowed for %s; allowed: %s",
                                  c->method, c->path, allow),
                       405;
        }
        if (strcmp(match->method, "GET") != 0) {
                if (!a->token[0])
                        return conn_error(c, 403, NULL,
                                          "%s %s changes shuntd: refused, admin mutations are off "
                                          "(admin.mutations)",
                                          c->method, c->path),
                               403;
                if (!authorized)
                        return conn_error(c, 401, "WWW-Authenticate: Bearer\r\n",
                                          "%s %s needs Authorization: Bearer <the token in "
                                          "admin.token_file>",
                                          c->method, c->path),
                               401;
        }
        c->route = match;
        c->body_need = (size_t)cl;
        if (cl) {
                c->body = malloc((size_t)cl + 1);
                if (!c->body)
                        return conn_error(c, 500, NULL, "out of memory for the request body"), 500;
                if (expect_continue && c->head_len - head_end < cl) {
                        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                        /* Small enough to fit a fresh socket's send buffer; if it
                         * does not, the client sends the body after its own wait. */
                        ssize_t w =
                            send(c->io.fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                        (void)w;
                }
        }
        return 0;
}

/* Returns true when the request was complete and has been dispatched (c may
 * then be gone). */
static bool conn_body_complete(struct admin_conn *c)
{
        if (c->body_len < c->body_need)
                return false;
        if (c->body)
                c->body[c->body_len] = '\0';
        conn_dispatch(c);
        return true;
}

static void conn_read(struct admin_conn *c)
{
        size_t budget = READ_BUDGET;
        while (budget) {
                char *dst;
                size_t room;
                if (c->state == C_HEAD) {
                        dst = c->head + c->head_len;
                        room = ADMIN_MAX_HEAD - c->head_len;
                } else if (c->state == C_BODY) {
                        dst = c->body + c->body_len;
                        room = c->body_need - c->body_len;
                } else {
                        return;
                }
                if (room > budget)
                        room = budget;
                ssize_t n = recv(c->io.fd, dst, room, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        log_debug(COMP, 0, "read from %s: %s", c->peer, strerror(errno));
                        conn_close(c);
                        return;
                }
                if (n == 0) {
                        /* The client went away before a complete request. */
                        log_debug(COMP, 0, "%s closed before sending a complete request", c->peer);
                        conn_close(c);
                        return;
                }
                budget -= (size_t)n;
                if (c->state == C_HEAD) {
                        c->head_len += (size_t)n;
                        char why[160];
                        int st = admin_parse_head(c->head, c->head_len, &c->msg, &c->hd, why,
                                                  sizeof(why));
                        if (st == -EAGAIN)
                                continue;
                        if (st) {
                                conn_error(c, st, NULL, "%s", why);
                                return;
                        }
                        size_t head_end = c->hd.head_len;
                        size_t extra = c->head_len - head_end;
                        if (conn_route(c) != 0)
                                return;
                        if (extra > c->body_need)
                                extra = c->body_need; /* pipelined bytes are ignored */
                        if (extra)
                                memcpy(c->body, c->head + head_end, extra);
                        c->body_len = extra;
                        c->state = C_BODY;
                        if (conn_body_complete(c))
                                return;
                } else {
                        c->body_len += (size_t)n;
                        if (conn_body_complete(c))
                                return;
                }
        }
}

static void conn_drain(struct admin_conn *c)
{
        char scratch[16384];
        for (int i = 0; i < 16; i++) {
                ssize_t n = recv(c->io.fd, scratch, sizeof(scratch), MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n <= 0) {
                        conn_close(c);
                        return;
                }
                c->lingered += (size_t)n;
                if (c->lingered > LINGER_MAX) {
                        conn_close(c);
                        return;
                }
        }
}

static void conn_on_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct admin_conn *c = io->data;
        switch (c->state) {
        case C_HEAD:
        case C_BODY:
                if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                        conn_read(c);
                break;
        case C_WRITE:
                if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                        conn_write(c);
                break;
        case C_LINGER:
                conn_drain(c);
                break;
        case C_STREAM:
                if ((events & EPOLLOUT) && !conn_write(c))
                        break;
                if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        stream_read(c);
                break;
        }
}

static void conn_on_timer(struct loop *loop, struct loop_timer *t)
{
        struct admin_conn *c = t->data;
        static const char *const names[] = {"reading the request head", "reading the request body",
                                            "writing the response", "closing", "streaming"};
        if (c->state != C_LINGER)
                log_debug(COMP, 0, "%s: timed out %s", c->peer, names[c->state]);
        conn_close(c);
}

static void reject_overloaded(struct admin *a, int fd, const char *peer)
{
        char body[96], resp[320];
        int bl =
            snprintf(body, sizeof(body), "{\"error\":\"too many %s connections (limit %d)\"}\n",
                     a->name, ADMIN_MAX_CONNS);
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
                         bl, body);
        /* Consume what the client already sent so that close() sends FIN, not RST. */
        char scratch[4096];
        for (int i = 0; i < 4 && recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT) > 0; i++)
                ;
        ssize_t w = send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        shutdown(fd, SHUT_WR);
        close(fd);
        if (!a->overloaded)
                log_warn(COMP, 0, "%s connection limit (%d) reached; answering 503 to %s", a->name,
                         ADMIN_MAX_CONNS, peer);
        else
                log_debug(COMP, 0, "%s -> 503 (connection limit)", peer);
        a->overloaded = true;
}

static void on_accept_retry(struct loop *loop, struct loop_timer *t)
{
        struct admin *a = t->data;
        if (loop_io_add(loop, &a->lio, EPOLLIN) < 0)
                loop_timer_arm(loop, &a->accept_retry, ACCEPT_RETRY_MS);
}

static void on_accept(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct admin *a = io->data;
        for (int i = 0; i < ACCEPT_BUDGET; i++) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof(ss);
                int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        log_warn(COMP, 0, "accept on %s port %u: %s; retrying in %d ms", a->name,
                                 a->port, strerror(errno), ACCEPT_RETRY_MS);
                        /* Out of descriptors or memory: stop polling the listener for
                         * a moment instead of spinning on it. */
                        loop_io_del(loop, &a->lio);
                        loop_timer_arm(loop, &a->accept_retry, ACCEPT_RETRY_MS);
                        return;
                }
                char peer[64];
                format_peer(&ss, peer, sizeof(peer));
                if (a->nconns >= ADMIN_MAX_CONNS) {
                        reject_overloaded(a, fd, peer);
                        continue;
                }
                struct admin_conn *c = calloc(1, sizeof(*c));
                if (!c) {
                        close(fd);
                        continue;
                }
                c->a = a;
                c->state = C_HEAD;
                c->start_ms = loop_now_ms(loop);
                memcpy(c->peer, peer, sizeof(c->peer));
                strbuf_init(&c->out);
                loop_io_init(&c->io, fd, conn_on_io, c);
                loop_timer_init(&c->timer, conn_on_timer, c);
                if (loop_io_add(loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0 ||
                    loop_timer_arm(loop, &c->timer, a->read_timeout_ms) < 0) {
                        loop_timer_cancel(loop, &c->timer);
                        close(fd);
                        free(c);
                        continue;
                }
                c->next = a->conns;
                if (a->conns)
                        a->conns->prev = c;
                a->conns = c;
                a->nconns++;
        }
}

/* ---- public API --------------------------------------------------------------- */

static struct admin *listener_new(struct loop *loop, const char *name, bool read_only,
                                  const char *address, uint16_t port, char *err, size_t errlen)
{
        struct sockaddr_storage ss;
        socklen_t sl;
        memset(&ss, 0, sizeof(ss));
        char host[INET6_ADDRSTRLEN + 2];
        if (!address || strlen(address) >= sizeof(host)) {
                snprintf(err, errlen, "%s address '%s' is not an IPv4 or IPv6 literal", name,
                         address ? address : "(null)");
                return NULL;
        }
        strcpy(host, address);
        size_t hl = strlen(host);
        if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
                memmove(host, host + 1, hl - 2);
                host[hl - 2] = '\0';
        }
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
                sin->sin_family = AF_INET;
                sin->sin_port = htons(port);
                sl = sizeof(*sin);
        } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons(port);
                sl = sizeof(*sin6);
        } else {
                snprintf(err, errlen, "%s address '%s' is not an IPv4 or IPv6 literal", name,
                         address);
                return NULL;
        }

        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                snprintf(err, errlen, "%s socket for %s: %s", name, address, strerror(errno));
                return NULL;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ss.ss_family == AF_INET6) {
                /* A read-only listener on "::" is for every address, IPv4 ones
                 * too; otherwise an address is exactly that address. */
                int v6only = !(read_only && IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
        }
        const char *fmt = ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u";
        char where[INET6_ADDRSTRLEN + 16];
        snprintf(where, sizeof(where), fmt, host, port);
        if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
                snprintf(err, errlen, "%s: cannot bind %s: %s", name, where, strerror(errno));
                close(fd);
                return NULL;
        }
        if (listen(fd, 128) < 0) {
                snprintf(err, errlen, "%s: cannot listen on %s: %s", name, where, strerror(errno));
                close(fd);
                return NULL;
        }
        return admin_new_fd(loop, name, read_only, fd, err, errlen);
}

struct admin *admin_new_fd(struct loop *loop, const char *name, bool read_only, int fd, char *err,
                           size_t errlen)
{
        struct sockaddr_storage bound;
        socklen_t bl = sizeof(bound);
        memset(&bound, 0, sizeof(bound));
        getsockname(fd, (struct sockaddr *)&bound, &bl);
        char where[SOCKADDR_STRLEN];
        sockaddr_format(&bound, where, sizeof(where));

        struct admin *a = calloc(1, sizeof(*a));
        if (!a) {
                snprintf(err, errlen, "%s: out of memory", name);
                close(fd);
                return NULL;
        }
        a->loop = loop;
        a->name = name;
        a->read_only = read_only;
        a->read_timeout_ms = ADMIN_DEFAULT_READ_TIMEOUT_MS;
        a->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
        loop_io_init(&a->lio, fd, on_accept, a);
        loop_timer_init(&a->accept_retry, on_accept_retry, a);
        int rc = loop_io_add(loop, &a->lio, EPOLLIN);
        if (rc < 0) {
                snprintf(err, errlen, "%s: epoll for %s: %s", name, where, strerror(-rc));
                close(fd);
                free(a);
                return NULL;
        }
        log_info(COMP, 0, "%s listening on http://%s%s", name, where,
                 read_only ? " (read-only)" : "");
        return a;
}

int admin_listen_fd(const struct admin *a)
{
        return a->lio.fd;
}

struct admin *admin_new(struct loop *loop, const char *address, uint16_t port, char *err,
                        size_t errlen)
{
        return listener_new(loop, "admin", false, address, port, err, errlen);
}

struct admin *admin_new_read_only(struct loop *loop, const char *name, const char *address,
                                  uint16_t port, char *err, size_t errlen)
{
        return listener_new(loop, name, true, address, port, err, errlen);
}

int admin_route(struct admin *a, const char *method, const char *path, admin_handler_fn fn,
                void *ctx)
{
        if (!a || !method || !path || path[0] != '/' || !fn)
                return -EINVAL;
        if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0 &&
            strcmp(method, "PUT") != 0 && strcmp(method, "DELETE") != 0)
                return -EINVAL;
        if (a->read_only && strcmp(method, "GET") != 0)
                return -EPERM;
        for (size_t i = 0; i < a->nroutes; i++) {
                struct route *r = &a->routes[i];
                if (strcmp(r->method, method) == 0 && strcmp(r->path, path) == 0) {
                        r->fn = fn;
                        r->ctx = ctx;
                        return 0;
                }
        }
        struct route *routes = realloc(a->routes, (a->nroutes + 1) * sizeof(*routes));
        if (!routes)
                return -ENOMEM;
        a->routes = routes;
        struct route *r = &routes[a->nroutes];
        memset(r, 0, sizeof(*r));
        snprintf(r->method, sizeof(r->method), "%s", method);
        r->path = strdup(path);
        if (!r->path)
                return -ENOMEM;
        r->fn = fn;
        r->ctx = ctx;
        a->nroutes++;
        return 0;
}

uint16_t admin_port(const struct admin *a)
{
        return a->port;
}

void admin_set_read_timeout_ms(struct admin *a, unsigned ms)
{
        a->read_timeout_ms = ms ? ms : 1;
}

void admin_free(struct admin *a)
{
        if (!a)
                return;
        while (a->conns)
                conn_close(a->conns);
        loop_timer_cancel(a->loop, &a->accept_retry);
        loop_io_del(a->loop, &a->lio);
        close(a->lio.fd);
        for (size_t i = 0; i < a->nroutes; i++)
                free(a->routes[i].path);
        free(a->routes);
        free(a);
}

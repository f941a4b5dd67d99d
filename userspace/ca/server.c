// SPDX-License-Identifier: Apache-2.0
/* The CA's HTTPS server: an accept thread and a fixed pool of workers that
 * each serve one connection at a time with blocking I/O under a deadline.
 *
 * Why threads and not the epoll loop: a request blocks on a TokenReview
 * round trip to the API server and then signs; a worker per request keeps
 * that a straight line of code, and the pool size is the bound on requests
 * in flight. Accepted connections wait in a bounded queue; when it is full
 * one more thread answers 503 busy (handshake and answer under a short
 * deadline) and beyond that connections are closed at once. A slow client
 * holds a worker at most read_timeout_ms. */
#include "ca/ca-int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/sockaddr.h"
#include "http/http1.h"

#define CA_MAX_ROUTES    16
#define SHED_QUEUE       16
#define SHED_DEADLINE_MS 1000
/* After an early answer (413 to a body too large) the client may still be
 * sending: what it sends is read and dropped, up to these bounds, so that
 * closing does not reset the connection before it has read the answer (a
 * reset discards the client's unread receive queue). A 1 MiB body sent
 * anyway fits; a client silent for LINGER_IDLE_MS, or that sends more or
 * longer, holds the worker no longer and may get a reset. */
#define LINGER_MAX_BYTES (4u * 1024 * 1024)
#define LINGER_MS        2000
#define LINGER_IDLE_MS   300
#define TICK_MS          1000

struct route {
        char method[8];
        char path[64];
        ca_handler_fn fn;
        void *ctx;
        bool audited;
        size_t max_body;
};

struct pending {
        int fd;
        struct sockaddr_storage peer;
        uint64_t accepted_ms; /* the connection's deadlines count from here */
};

/* Accepted connections waiting for a thread (under ca_http.mu). */
struct ring {
        struct pending *items;
        size_t cap, head, len;
        pthread_cond_t cv;
        bool busy; /* its threads answer 503 busy instead of serving */
};

static bool ring_push(struct ring *r, const struct pending *p)
{
        if (r->len == r->cap)
                return false;
        r->items[(r->head + r->len++) % r->cap] = *p;
        pthread_cond_signal(&r->cv);
        return true;
}

static struct pending ring_pop(struct ring *r)
{
        struct pending p = r->items[r->head];
        r->head = (r->head + 1) % r->cap;
        r->len--;
        return p;
}

static int ring_init(struct ring *r, size_t cap, bool busy)
{
        r->items = calloc(cap, sizeof(*r->items));
        r->cap = cap;
        r->busy = busy;
        pthread_cond_init(&r->cv, NULL);
        return r->items ? 0 : -ENOMEM;
}

static void ring_free(struct ring *r)
{
        if (!r->cap)
                return; /* never initialised */
        while (r->len)
                close(ring_pop(r).fd);
        free(r->items);
        pthread_cond_destroy(&r->cv);
}

struct ca_http {
        struct ca_http_options opt;
        int lfd, stop_fd;
        uint16_t port;
        struct route routes[CA_MAX_ROUTES];
        size_t nroutes;

        pthread_mutex_t mu; /* ctx, both rings, stopping */
        SSL_CTX *ctx;
        struct ring work; /* opt.queue places, served by the workers */
        struct ring shed; /* SHED_QUEUE places, answered 503 busy by one thread */
        bool stopping;
        pthread_t *threads; /* the workers, then the shed thread */
        unsigned nthreads;
        uint64_t n_dropped, drop_logged_ms; /* accept thread only */
};

/* ---- set-up ------------------------------------------------------------------------ */

int ca_http_route(struct ca_http *h, const char *method, const char *path, ca_handler_fn fn,
                  void *ctx, bool audited, size_t max_body)
{
        if (!max_body)
                max_body = h->opt.max_body;
        if (strlen(method) >= sizeof(h->routes[0].method) ||
            strlen(path) >= sizeof(h->routes[0].path) || path[0] != '/')
                return -EINVAL;
        for (size_t i = 0; i < h->nroutes; i++) {
                struct route *r = &h->routes[i];
                if (strcmp(r->method, method) == 0 && strcmp(r->path, path) == 0) {
                        r->fn = fn;
                        r->ctx = ctx;
                        r->audited = audited;
                        r->max_body = max_body;
                        return 0;
                }
        }
        if (h->nroutes == CA_MAX_ROUTES)
                return -ENOMEM;
        struct route *r = &h->routes[h->nroutes++];
        snprintf(r->method, sizeof(r->method), "%s", method);
        snprintf(r->path, sizeof(r->path), "%s", path);
        r->fn = fn;
        r->ctx = ctx;
        r->audited = audited;
        r->max_body = max_body;
        return 0;
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss)
{
        const char *colon = strrchr(listen, ':');
        if (!colon)
                return -EINVAL;
        char host[64];
        size_t hl = (size_t)(colon - listen);
        if (hl >= sizeof(host))
                return -EINVAL;
        memcpy(host, listen, hl);
        host[hl] = '\0';
        if (host[0] == '[' && hl >= 2 && host[hl - 1] == ']') {
                memmove(host, host + 1, hl - 2);
                host[hl - 2] = '\0';
        }
        char *end;
        unsigned long port = strtoul(colon + 1, &end, 10);
        if (!colon[1] || *end || port > 65535)
                return -EINVAL;
        return sockaddr_from_string(host, (uint16_t)port, ss);
}

int ca_http_new(const struct ca_http_options *opt, struct ca_http **out)
{
        struct sockaddr_storage ss;
        if (parse_listen(opt->listen, &ss) < 0) {
                log_error(CA_COMP, 0, "--listen \"%s\": expected <ip>:<port>, e.g. 0.0.0.0:15012",
                          opt->listen);
                return -EINVAL;
        }
        struct ca_http *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->opt = *opt;
        h->lfd = h->stop_fd = -1;
        pthread_mutex_init(&h->mu, NULL);
        h->threads = calloc(opt->workers + 1, sizeof(*h->threads));
        h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        int rc = h->threads ? 0 : -ENOMEM;
        if (rc == 0)
                rc = ring_init(&h->work, opt->queue ? opt->queue : 1, false);
        if (rc == 0)
                rc = ring_init(&h->shed, SHED_QUEUE, true);
        if (rc == 0 && h->stop_fd < 0)
                rc = -errno;
        if (rc == 0) {
                h->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
                int one = 1;
                if (h->lfd < 0 ||
                    setsockopt(h->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
                    bind(h->lfd, (struct sockaddr *)&ss, sockaddr_len(&ss)) < 0 ||
                    listen(h->lfd, 512) < 0) {
                        rc = -errno;
                        log_error(CA_COMP, 0, "cannot listen on %s: %s", opt->listen,
                                  strerror(errno));
                }
        }
        if (rc == 0) {
                struct sockaddr_storage b;
                socklen_t bl = sizeof(b);
                getsockname(h->lfd, (struct sockaddr *)&b, &bl);
                h->port = sockaddr_port(&b);
        }
        if (rc < 0) {
                ca_http_free(h);
                return rc;
        }
        *out = h;
        return 0;
}

uint16_t ca_http_port(const struct ca_http *h)
{
        return h->port;
}

void ca_http_set_ctx(struct ca_http *h, SSL_CTX *ctx)
{
        SSL_CTX_up_ref(ctx);
        pthread_mutex_lock(&h->mu);
        SSL_CTX *old = h->ctx;
        h->ctx = ctx;
        pthread_mutex_unlock(&h->mu);
        SSL_CTX_free(old);
}

void ca_http_stop(struct ca_http *h)
{
        uint64_t one = 1;
        ssize_t rc = write(h->stop_fd, &one, sizeof(one));
        (void)rc;
}

void ca_http_free(struct ca_http *h)
{
        if (!h)
                return;
        if (h->lfd >= 0)
                close(h->lfd);
        if (h->stop_fd >= 0)
                close(h->stop_fd);
        ring_free(&h->work);
        ring_free(&h->shed);
        SSL_CTX_free(h->ctx);
        free(h->threads);
        pthread_mutex_destroy(&h->mu);
        free(h);
}

/* ---- one connection ------------------------------------------------------------------ */

struct conn {
        struct ca_http *h;
        int fd;
        SSL *ssl;
        char peer[SOCKADDR_STRLEN];
        uint64_t deadline_ms;
        bool timed_out;
};

/* Arms the socket's blocking timeouts to what is left of the deadline. */
static bool arm(struct conn *c)
{
        uint64_t now = clock_mono_ms();
        if (now >= c->deadline_ms) {
                c->timed_out = true;
                return false;
        }
        uint64_t left = c->deadline_ms - now;
        struct timeval tv = {.tv_sec = (time_t)(left / 1000),
                             .tv_usec = (suseconds_t)(left % 1000) * 1000};
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        return true;
}

/* SSL_accept/read/write on a blocking socket with timeouts: a timeout shows
 * as WANT_READ/WANT_WRITE; retried until the deadline. */
static bool retry(struct conn *c, int ret)
{
        int e = SSL_get_error(c->ssl, ret);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ||
            (e == SSL_ERROR_SYSCALL && errno == EINTR))
                return arm(c);
        return false;
}

static int conn_read(struct conn *c, char *buf, size_t len)
{
        for (;;) {
                if (!arm(c))
                        return -ETIMEDOUT;
                int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
                if (n > 0)
                        return n;
                if (n == 0 && SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN)
                        return 0;
                if (!retry(c, n))
                        return c->timed_out ? -ETIMEDOUT : -EIO;
        }
}

static int conn_write(struct conn *c, const char *buf, size_t len)
{
        size_t off = 0;
        while (off < len) {
                if (!arm(c))
                        return -ETIMEDOUT;
                size_t n = len - off > INT32_MAX ? INT32_MAX : len - off;
                int w = SSL_write(c->ssl, buf + off, (int)n);
                if (w > 0) {
                        off += (size_t)w;
                        continue;
                }
                if (!retry(c, w))
                        return -EIO;
        }
        return 0;
}

static void send_response(struct conn *c, struct ca_response *resp, const char *allow)
{
        struct strbuf head;
        strbuf_init(&head);
        strbuf_appendf(&head, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n",
                       resp->status, http1_status_text(resp->status),
                       resp->content_type ? resp->content_type : "application/json",
                       resp->body.len);
        if (resp->retry_after_s)
                strbuf_appendf(&head, "Retry-After: %u\r\n", resp->retry_after_s);
        if (allow)
                strbuf_appendf(&head, "Allow: %s\r\n", allow);
        strbuf_append(&head, "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
        if (!head.truncated && conn_write(c, head.data, head.len) == 0 && resp->body.len)
                conn_write(c, resp->body.data, resp->body.len);
        strbuf_free(&head);
}

void ca_respond_error(struct ca_response *resp, int status, const char *reason, const char *message)
{
        resp->status = status;
        resp->content_type = "application/json";
        strbuf_reset(&resp->body);
        strbuf_append(&resp->body, "{\"error\":");
        strbuf_append_json_string(&resp->body, reason);
        strbuf_append(&resp->body, ",\"message\":");
        strbuf_append_json_string(&resp->body, message);
        strbuf_append(&resp->body, "}\n");
}

/* Answers an error the server itself found (bounds, malformed requests);
 * audited when the route is (or unknown yet: busy). */
static void refuse(struct conn *c, bool audited, int status, const char *reason,
                   const char *message, unsigned retry_after_s)
{
        struct ca_response resp = {.retry_after_s = retry_after_s};
        strbuf_init(&resp.body);
        ca_respond_error(&resp, status, reason, message);
        send_response(c, &resp, NULL);
        strbuf_free(&resp.body);
        if (audited)
                ca_audit("refused", "", "", c->peer, reason, status, message);
}

static const struct route *find_route(const struct ca_http *h, const char *method, const char *path,
                                      char *allow, size_t allowlen)
{
        struct strbuf a;
        strbuf_init_static(&a, allow, allowlen);
        for (size_t i = 0; i < h->nroutes; i++) {
                const struct route *r = &h->routes[i];
                if (strcmp(r->path, path) != 0)
                        continue;
                if (strcmp(r->method, method) == 0)
                        return r;
                strbuf_appendf(&a, "%s%s", a.len ? ", " : "", r->method);
        }
        return NULL;
}

static void header_copy(const struct http1_msg *m, const char *name, char *out, size_t outlen)
{
        struct http1_slice v;
        out[0] = '\0';
        if (http1_header_get(m, name, &v) == 0)
                snprintf(out, outlen, "%.*s", (int)v.n, v.p);
}

/* Reads the body after the head into body (cap max_body): from the bytes
 * already read (rest, n_rest), then from the connection. 0, -EMSGSIZE over
 * the bound, -EPROTO malformed, -ETIMEDOUT or -EIO. */
static int read_body(struct conn *c, const struct http1_msg *m, const char *rest, size_t n_rest,
                     char *body, size_t max, size_t *body_len)
{
        *body_len = 0;
        if (m->body == HTTP1_BODY_NONE)
                return 0;
        if (m->body == HTTP1_BODY_LENGTH) {
                if (m->content_length > max)
                        return -EMSGSIZE;
                size_t want = (size_t)m->content_length;
                size_t have = n_rest < want ? n_rest : want;
                memcpy(body, rest, have);
                while (have < want) {
                        int n = conn_read(c, body + have, want - have);
                        if (n <= 0)
                                return n == 0 ? -EPROTO : n;
                        have += (size_t)n;
                }
                *body_len = have;
                return 0;
        }
        /* chunked: decoded as it arrives, never more than max kept */
        struct http1_chunked ch;
        http1_chunked_init(&ch, NULL);
        char raw[4096];
        const char *p = rest;
        size_t n = n_rest;
        for (;;) {
                while (n > 0 && !http1_chunked_done(&ch)) {
                        size_t off, dl;
                        ssize_t used = http1_chunked_feed(&ch, p, n, &off, &dl);
                        if (used < 0)
                                return -EPROTO;
                        if (dl) {
                                if (*body_len + dl > max)
                                        return -EMSGSIZE;
                                memcpy(body + *body_len, p + off, dl);
                                *body_len += dl;
                        }
                        p += used;
                        n -= (size_t)used;
                }
                if (http1_chunked_done(&ch))
                        return 0;
                int r = conn_read(c, raw, sizeof(raw));
                if (r <= 0)
                        return r == 0 ? -EPROTO : r;
                p = raw;
                n = (size_t)r;
        }
}

static void serve_request(struct conn *c)
{
        struct ca_http *h = c->h;
        size_t cap = CA_MAX_HEAD;
        char *buf = malloc(cap + 1);
        char *body = NULL;
        struct http1_msg *m = malloc(sizeof(*m));
        if (!buf || !m)
                goto out;
        http1_msg_reset(m);
        struct http1_limits lim;
        http1_limits_default(&lim);
        lim.max_head = CA_MAX_HEAD;
        lim.max_line = 8192;
        size_t len = 0;
        int hl = 0;
        while (hl == 0) {
                if (len == cap) {
                        hl = -EPROTO;
                        m->error = HTTP1_E_HEAD_TOO_LARGE;
                        break;
                }
                int n = conn_read(c, buf + len, cap - len);
                if (n <= 0) {
                        if (n == -ETIMEDOUT && len > 0)
                                log_warn(CA_COMP, 0,
                                         "client %s: no complete request within %ums: closed",
                                         c->peer, h->opt.read_timeout_ms);
                        goto out;
                }
                len += (size_t)n;
                hl = http1_parse_request_head(buf, len, &lim, m);
        }
        if (hl < 0) {
                int st = http1_error_status(m->error);
                bool big = st == 431 || st == 414;
                refuse(c, false, big ? 413 : (st ? st : 400), big ? "too_large" : "bad_request",
                       http1_error_str(m->error), 0);
                goto out;
        }
        char method[16], path[256], query[512];
        snprintf(method, sizeof(method), "%.*s", (int)m->method_str.n, m->method_str.p);
        const char *t = m->target.p, *qm = memchr(t, '?', m->target.n);
        size_t plen = qm ? (size_t)(qm - t) : m->target.n;
        snprintf(path, sizeof(path), "%.*s", (int)plen, t);
        snprintf(query, sizeof(query), "%.*s", qm ? (int)(m->target.n - plen - 1) : 0,
                 qm ? qm + 1 : "");
        char allow[64];
        const struct route *r = find_route(h, method, path, allow, sizeof(allow));
        if (!r) {
                struct ca_response resp = {0};
                strbuf_init(&resp.body);
                if (allow[0])
                        ca_respond_error(&resp, 405, "method_not_allowed",
                                         "this path takes another method (see Allow)");
                else
                        ca_respond_error(&resp, 404, "not_found", "no such path");
                send_response(c, &resp, allow[0] ? allow : NULL);
                strbuf_free(&resp.body);
                goto out;
        }
        if (m->body == HTTP1_BODY_LENGTH && m->content_length > r->max_body) {
                char msg[128];
                snprintf(msg, sizeof(msg), "the request body is over %zu bytes", r->max_body);
                refuse(c, r->audited, 413, "too_large", msg, 0);
                goto out;
        }
        if (m->expect_continue && m->body != HTTP1_BODY_NONE && (size_t)hl == len) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (conn_write(c, cont, sizeof(cont) - 1) < 0)
                        goto out;
        }
        /* a body of Content-Length bytes, or up to the route's bound (chunked) */
        size_t body_len;
        body = malloc((m->body == HTTP1_BODY_LENGTH ? (size_t)m->content_length : r->max_body) + 1);
        if (!body)
                goto out;
        int rc = read_body(c, m, buf + hl, len - (size_t)hl, body, r->max_body, &body_len);
        if (rc == -EMSGSIZE) {
                char msg[128];
                snprintf(msg, sizeof(msg), "the request body is over %zu bytes", r->max_body);
                refuse(c, r->audited, 413, "too_large", msg, 0);
                goto out;
        }
        if (rc == -EPROTO) {
                refuse(c, r->audited, 400, "bad_request", "the request body is malformed or cut",
                       0);
                goto out;
        }
        if (rc < 0) {
                char msg[128];
                snprintf(msg, sizeof(msg), "request body not received within %ums: closed",
                         h->opt.read_timeout_ms);
                if (r->audited) /* no answer: the client had its time */
                        ca_audit("refused", "", "", c->peer, "timeout", 408, msg);
                else
                        log_warn(CA_COMP, 0, "client %s: %s", c->peer, msg);
                goto out;
        }
        body[body_len] = '\0';
        char authz[CA_TR_MAX_TOKEN + 64], ctype[128];
        header_copy(m, "Authorization", authz, sizeof(authz));
        header_copy(m, "Content-Type", ctype, sizeof(ctype));
        struct ca_request req = {
            .method = method,
            .path = path,
            .query = query,
            .authorization = authz,
            .content_type = ctype,
            .peer = c->peer,
            .body = body,
            .body_len = body_len,
        };
        struct ca_response resp = {.status = 200};
        strbuf_init(&resp.body);
        r->fn(&req, &resp, r->ctx);
        /* the answer has its own time: the handler's API calls may have used
         * up what the request's deadline left */
        c->deadline_ms = clock_mono_ms() + h->opt.read_timeout_ms;
        if (resp.body.truncated)
                ca_respond_error(&resp, 500, "internal", "out of memory");
        send_response(c, &resp, NULL);
        strbuf_free(&resp.body);
out:
        free(m);
        free(body);
        free(buf);
}

/* After the answer: close_notify, then read and drop what the client still
 * sends (the LINGER bounds) so that closing does not reset the connection
 * before the client has read the answer. A client cut off for its slowness
 * is not waited for. */
static void linger_close(struct conn *c)
{
        if (c->timed_out) {
                close(c->fd);
                return;
        }
        c->deadline_ms = clock_mono_ms() + LINGER_IDLE_MS;
        if (arm(c))
                SSL_shutdown(c->ssl);
        shutdown(c->fd, SHUT_WR);
        uint64_t end = clock_mono_ms() + LINGER_MS;
        char junk[16384];
        size_t total = 0;
        for (;;) {
                uint64_t idle = clock_mono_ms() + LINGER_IDLE_MS;
                c->deadline_ms = idle < end ? idle : end;
                if (total >= LINGER_MAX_BYTES || !arm(c))
                        break;
                ssize_t n = recv(c->fd, junk, sizeof(junk), 0);
                if (n <= 0)
                        break;
                total += (size_t)n;
        }
        close(c->fd);
}

static void serve(struct ca_http *h, SSL_CTX *ctx, const struct pending *p, bool busy)
{
        struct conn c = {.h = h, .fd = p->fd};
        sockaddr_format(&p->peer, c.peer, sizeof(c.peer));
        c.deadline_ms = p->accepted_ms + (busy ? SHED_DEADLINE_MS : h->opt.read_timeout_ms);
        int one = 1;
        setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c.ssl = ctx ? SSL_new(ctx) : NULL;
        if (!c.ssl || !SSL_set_fd(c.ssl, c.fd)) {
                log_error(CA_COMP, 0, "client %s: cannot start TLS", c.peer);
                goto done;
        }
        int ret;
        if (!arm(&c))
                goto done; /* it waited in the queue for all its time */
        while ((ret = SSL_accept(c.ssl)) != 1) {
                if (!retry(&c, ret)) {
                        char eb[160];
                        ERR_error_string_n(ERR_peek_last_error(), eb, sizeof(eb));
                        log_debug(CA_COMP, 0, "client %s: TLS handshake failed: %s", c.peer,
                                  c.timed_out ? "timed out" : eb);
                        goto done;
                }
        }
        if (busy)
                refuse(&c, true, 503, "busy", "every worker is busy and the queue is full", 1);
        else
                serve_request(&c);
done:
        ERR_clear_error();
        linger_close(&c);
        SSL_free(c.ssl);
}

struct consumer {
        struct ca_http *h;
        struct ring *ring;
};

/* A worker (ring work) or the shed thread (ring shed): takes connections
 * until stopped and the ring is empty. */
static void *consumer_main(void *arg)
{
        struct consumer *c = arg;
        struct ca_http *h = c->h;
        struct ring *r = c->ring;
        free(c);
        pthread_mutex_lock(&h->mu);
        for (;;) {
                while (!r->len && !h->stopping)
                        pthread_cond_wait(&r->cv, &h->mu);
                if (!r->len)
                        break;
                struct pending p = ring_pop(r);
                SSL_CTX *ctx = h->ctx;
                if (ctx)
                        SSL_CTX_up_ref(ctx);
                pthread_mutex_unlock(&h->mu);
                serve(h, ctx, &p, r->busy);
                SSL_CTX_free(ctx);
                pthread_mutex_lock(&h->mu);
        }
        pthread_mutex_unlock(&h->mu);
        return NULL;
}

static void enqueue(struct ca_http *h, const struct pending *p)
{
        pthread_mutex_lock(&h->mu);
        bool queued = ring_push(&h->work, p) || ring_push(&h->shed, p);
        pthread_mutex_unlock(&h->mu);
        if (queued)
                return;
        char peer[SOCKADDR_STRLEN];
        h->n_dropped++;
        /* at most a line a second keeps a flood from flooding the log */
        uint64_t now = clock_mono_ms();
        if (now - h->drop_logged_ms >= 1000) {
                h->drop_logged_ms = now;
                log_warn(CA_COMP, 0,
                         "overloaded: connection from %s closed unanswered (%llu so far)",
                         sockaddr_format(&p->peer, peer, sizeof(peer)),
                         (unsigned long long)h->n_dropped);
        }
        close(p->fd);
}

static int start_thread(struct ca_http *h, struct ring *r)
{
        struct consumer *c = malloc(sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->h = h;
        c->ring = r;
        if (pthread_create(&h->threads[h->nthreads], NULL, consumer_main, c) != 0) {
                free(c);
                log_error(CA_COMP, 0, "cannot start a thread");
                return -EAGAIN;
        }
        h->nthreads++;
        return 0;
}

int ca_http_run(struct ca_http *h, void (*tick)(void *arg), void *arg)
{
        int rc = 0;
        for (unsigned i = 0; i < h->opt.workers && rc == 0; i++)
                rc = start_thread(h, &h->work);
        if (rc == 0)
                rc = start_thread(h, &h->shed);
        uint64_t next_tick = clock_mono_ms() + TICK_MS;
        while (rc == 0) {
                uint64_t now = clock_mono_ms();
                if (now >= next_tick) {
                        if (tick)
                                tick(arg);
                        next_tick = now + TICK_MS;
                }
                struct pollfd pf[2] = {{.fd = h->lfd, .events = POLLIN},
                                       {.fd = h->stop_fd, .events = POLLIN}};
                int n = poll(pf, 2, (int)(next_tick - now));
                if (n < 0 && errno != EINTR) {
                        rc = -errno;
                        log_error(CA_COMP, 0, "poll: %s", strerror(errno));
                        break;
                }
                if (n > 0 && pf[1].revents)
                        break;
                if (n <= 0 || !(pf[0].revents & POLLIN))
                        continue;
                struct pending p;
                socklen_t sl = sizeof(p.peer);
                p.fd = accept4(h->lfd, (struct sockaddr *)&p.peer, &sl, SOCK_CLOEXEC);
                p.accepted_ms = clock_mono_ms();
                if (p.fd < 0) {
                        if (errno == EMFILE || errno == ENFILE)
                                log_warn(CA_COMP, 0, "accept: %s", strerror(errno));
                        continue;
                }
                enqueue(h, &p);
        }
        pthread_mutex_lock(&h->mu);
        h->stopping = true;
        pthread_cond_broadcast(&h->work.cv);
        pthread_cond_broadcast(&h->shed.cv);
        pthread_mutex_unlock(&h->mu);
        for (unsigned i = 0; i < h->nthreads; i++)
                pthread_join(h->threads[i], NULL);
        h->nthreads = 0;
        h->stopping = false;
        return rc;
}

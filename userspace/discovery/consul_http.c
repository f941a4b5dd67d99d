/* Non-blocking HTTP/1.1 GET client on the main loop (see consul_http.h). */
#include "discovery/consul_http.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"

#define COMP "consul"

enum body_kind { BODY_LENGTH, BODY_CHUNKED, BODY_EOF };

struct chttp {
        struct loop_io io;
        struct loop_timer timer;
        struct loop *loop;
        chttp_done_fn fn;
        void *ctx;
        bool connected;
        bool dead; /* released: a later event of the same epoll batch is ignored */
        char *req;
        size_t req_len, req_off;
        char *buf; /* the response as received */
        size_t len, cap, max_total;
        size_t hdr_len; /* 0 until the headers are complete */
        enum body_kind kind;
        size_t content_length;
        struct chttp_resp resp;
};

static void release(struct chttp *c)
{
        c->dead = true;
        if (c->io.fd >= 0) {
                if (c->io.events)
                        loop_io_del(c->loop, &c->io);
                close(c->io.fd);
                c->io.fd = -1;
        }
        loop_timer_cancel(c->loop, &c->timer);
        free(c->req);
        free(c->buf);
        c->req = c->buf = NULL;
        loop_defer_free(c->loop, c);
}

static void finish(struct chttp *c, int err, const char *why)
{
        chttp_done_fn fn = c->fn;
        void *ctx = c->ctx;
        /* the socket is closed before the callback, which may start the next
         * request at once */
        if (c->io.fd >= 0) {
                if (c->io.events)
                        loop_io_del(c->loop, &c->io);
                close(c->io.fd);
                c->io.fd = -1;
        }
        loop_timer_cancel(c->loop, &c->timer);
        fn(ctx, err, err ? NULL : &c->resp, why);
        release(c);
}

void chttp_cancel(struct chttp *c)
{
        if (c)
                release(c);
}

static void on_timeout(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        finish(t->data, -ETIMEDOUT, "timed out");
}

/* Header value of name in the header block [start, end), or NULL. */
static const char *header(const char *hdrs, const char *name, size_t *vlen)
{
        size_t n = strlen(name);
        for (const char *p = strstr(hdrs, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
                const char *line = p + 2;
                if (strncasecmp(line, name, n) == 0 && line[n] == ':') {
                        const char *v = line + n + 1;
                        while (*v == ' ' || *v == '\t')
                                v++;
                        const char *e = strstr(v, "\r\n");
                        while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                                e--;
                        *vlen = (size_t)(e - v);
                        return v;
                }
        }
        return NULL;
}

/* 0: headers parsed; -EPROTO: malformed. */
static int parse_headers(struct chttp *c)
{
        char *hdrs = c->buf;
        hdrs[c->hdr_len - 2] = '\0'; /* keeps the last "\r\n" of the last header */
        unsigned major, minor;
        int status;
        char sp;
        if (sscanf(hdrs, "HTTP/%u.%u %3d%c", &major, &minor, &status, &sp) != 4 || major != 1 ||
            sp != ' ' || status < 100 || status > 599)
                return -EPROTO;
        c->resp.status = status;
        size_t vl;
        const char *v = header(hdrs, "X-Consul-Index", &vl);
        if (v) {
                c->resp.has_index = true;
                char num[32];
                if (vl > 0 && vl < sizeof(num)) {
                        memcpy(num, v, vl);
                        num[vl] = '\0';
                        char *end;
                        errno = 0;
                        unsigned long long x = strtoull(num, &end, 10);
                        if (!errno && *end == '\0' && isdigit((unsigned char)num[0])) {
                                c->resp.index = x;
                                c->resp.index_valid = true;
                        }
                }
        }
        v = header(hdrs, "Transfer-Encoding", &vl);
        if (v) {
                if (vl != 7 || strncasecmp(v, "chunked", 7) != 0)
                        return -EPROTO;
                c->kind = BODY_CHUNKED;
                return 0;
        }
        v = header(hdrs, "Content-Length", &vl);
        if (v) {
                char num[32];
                if (vl == 0 || vl >= sizeof(num))
                        return -EPROTO;
                memcpy(num, v, vl);
                num[vl] = '\0';
                char *end;
                errno = 0;
                unsigned long long x = strtoull(num, &end, 10);
                if (errno || *end || !isdigit((unsigned char)num[0]))
                        return -EPROTO;
                if (x > c->max_total)
                        return -EMSGSIZE;
                c->kind = BODY_LENGTH;
                c->content_length = (size_t)x;
                return 0;
        }
        c->kind = BODY_EOF;
        return 0;
}

/* Decodes the chunked body in place. 1: complete; 0: need more; <0 error. */
static int dechunk(struct chttp *c, bool decode)
{
        char *p = c->buf + c->hdr_len, *end = c->buf + c->len;
        char *out = p;
        for (;;) {
                char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
                if (!eol)
                        return (end - p) > 64 ? -EPROTO : 0;
                char *e;
                errno = 0;
                unsigned long long sz = strtoull(p, &e, 16);
                if (e == p || errno || (e != eol && *e != ';'))
                        return -EPROTO;
                if (sz > c->max_total)
                        return -EMSGSIZE;
                p = eol + 2;
                if (sz == 0) {
                        /* trailers (ignored) end with an empty line */
                        char *fin = memmem(p, (size_t)(end - p), "\r\n", 2);
                        while (fin && fin != p) {
                                p = fin + 2;
                                fin = memmem(p, (size_t)(end - p), "\r\n", 2);
                        }
                        if (!fin)
                                return 0;
                        if (decode) {
                                *out = '\0';
                                c->resp.body = c->buf + c->hdr_len;
                                c->resp.body_len = (size_t)(out - (c->buf + c->hdr_len));
                        }
                        return 1;
                }
                if ((size_t)(end - p) < sz + 2)
                        return 0;
                if (p[sz] != '\r' || p[sz + 1] != '\n')
                        return -EPROTO;
                if (decode)
                        memmove(out, p, sz);
                out += sz;
                p += sz + 2;
        }
}

/* 1: response complete; 0: need more; <0: error. */
static int progress(struct chttp *c, bool eof)
{
        if (!c->hdr_len) {
                char *e = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (!e) {
                        if (c->len > CHTTP_HEADERS_MAX)
                                return -EMSGSIZE;
                        return eof ? -EPROTO : 0;
                }
                c->hdr_len = (size_t)(e - c->buf) + 4;
                if (c->hdr_len > CHTTP_HEADERS_MAX)
                        return -EMSGSIZE;
                int rc = parse_headers(c);
                if (rc)
                        return rc;
        }
        size_t have = c->len - c->hdr_len;
        if ((c->kind == BODY_EOF && have > c->max_total) ||
            (c->kind == BODY_CHUNKED && have > c->max_total + c->max_total / 8 + 4096))
                return -EMSGSIZE;
        switch (c->kind) {
        case BODY_LENGTH:
                if (have >= c->content_length) {
                        c->buf[c->hdr_len + c->content_length] = '\0';
                        c->resp.body = c->buf + c->hdr_len;
                        c->resp.body_len = c->content_length;
                        return 1;
                }
                return eof ? -EPROTO : 0;
        case BODY_CHUNKED: {
                int rc = dechunk(c, false);
                if (rc == 1)
                        return dechunk(c, true);
                if (rc == 0 && eof)
                        return -EPROTO;
                return rc;
        }
        case BODY_EOF:
                if (!eof)
                        return 0;
                c->buf[c->len] = '\0';
                c->resp.body = c->buf + c->hdr_len;
                c->resp.body_len = have;
                return 1;
        }
        return -EPROTO;
}

static void on_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct chttp *c = io->data;
        (void)events;
        if (c->dead)
                return;
        if (!c->connected) {
                int err = 0;
                socklen_t l = sizeof(err);
                if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
                        err = errno;
                if (err) {
                        finish(c, -err, strerror(err));
                        return;
                }
                c->connected = true;
        }
        while (c->req_off < c->req_len) {
                ssize_t w =
                    send(io->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
                if (w < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return;
                        finish(c, -errno, strerror(errno));
                        return;
                }
                c->req_off += (size_t)w;
                if (c->req_off == c->req_len && loop_io_mod(loop, io, EPOLLIN) < 0) {
                        finish(c, -EIO, "epoll");
                        return;
                }
        }
        for (;;) {
                if (c->cap - c->len < 4096 + 1) {
                        if (c->cap >= c->max_total + CHTTP_HEADERS_MAX + 1) {
                                finish(c, -EMSGSIZE, "response larger than the limit");
                                return;
                        }
                        size_t ncap = c->cap ? c->cap * 2 : 16384;
                        if (ncap > c->max_total + CHTTP_HEADERS_MAX + 1)
                                ncap = c->max_total + CHTTP_HEADERS_MAX + 1;
                        char *nb = realloc(c->buf, ncap);
                        if (!nb) {
                                finish(c, -ENOMEM, "out of memory");
                                return;
                        }
                        c->buf = nb;
                        c->cap = ncap;
                }
                ssize_t r = recv(io->fd, c->buf + c->len, c->cap - c->len - 1, 0);
                if (r < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return;
                        finish(c, -errno, strerror(errno));
                        return;
                }
                c->len += (size_t)r;
                int rc = progress(c, r == 0);
                if (rc == 1) {
                        finish(c, 0, NULL);
                        return;
                }
                if (rc < 0) {
                        finish(c, rc,
                               rc == -EMSGSIZE ? "response larger than the limit"
                                               : (r == 0 ? "connection closed mid-response"
                                                         : "malformed HTTP response"));
                        return;
                }
                if (r == 0) {
                        finish(c, -EPROTO, "connection closed mid-response");
                        return;
                }
        }
}

struct chttp *chttp_get(struct loop *loop, const struct sockaddr_storage *to, const char *host,
                        const char *target, const char *extra_headers, uint32_t timeout_ms,
                        size_t max_body, uint32_t mark, chttp_done_fn fn, void *ctx, char *why,
                        size_t whylen)
{
        if (strlen(target) > CHTTP_TARGET_MAX ||
            (extra_headers && strlen(extra_headers) > CHTTP_REQ_HDRS_MAX)) {
                snprintf(why, whylen, "request target or headers too long");
                return NULL;
        }
        struct chttp *c = calloc(1, sizeof(*c));
        size_t cap =
            strlen(target) + strlen(host) + (extra_headers ? strlen(extra_headers) : 0) + 128;
        char *req = malloc(cap);
        if (!c || !req) {
                free(c);
                free(req);
                snprintf(why, whylen, "out of memory");
                return NULL;
        }
        int n = snprintf(req, cap,
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: shunt\r\nAccept: "
                         "application/json\r\n%sConnection: close\r\n\r\n",
                         target, host, extra_headers ? extra_headers : "");
        c->loop = loop;
        c->fn = fn;
        c->ctx = ctx;
        c->req = req;
        c->req_len = (size_t)n;
        c->max_total = max_body;
        loop_timer_init(&c->timer, on_timeout, c);
        int fd = socket(to->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        loop_io_init(&c->io, fd, on_io, c);
        if (fd < 0) {
                snprintf(why, whylen, "socket: %s", strerror(errno));
                goto fail;
        }
        if (mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
                log_debug(COMP, 0, "SO_MARK 0x%x: %s", mark, strerror(errno));
        socklen_t sl =
            to->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        if (connect(fd, (const struct sockaddr *)to, sl) < 0 && errno != EINPROGRESS) {
                snprintf(why, whylen, "connect: %s", strerror(errno));
                goto fail;
        }
        if (loop_io_add(loop, &c->io, EPOLLOUT) < 0 ||
            loop_timer_arm(loop, &c->timer, timeout_ms) < 0) {
                snprintf(why, whylen, "event loop registration failed");
                goto fail;
        }
        return c;
fail:
        if (fd >= 0) {
                if (c->io.events)
                        loop_io_del(loop, &c->io);
                close(fd);
        }
        free(c->req);
        free(c);
        return NULL;
}

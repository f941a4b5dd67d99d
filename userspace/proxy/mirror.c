// SPDX-License-Identifier: Apache-2.0
/* Request mirrors; see mirror-int.h. */
#include "proxy/mirror-int.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/loop.h"
#include "proxy/proxy-int.h"
#include "proxy/upstream.h"

struct mirror {
        struct mirrors *ms;
        struct mirror *prev, *next;
        struct loop_io io; /* fd -1: an HTTP/2 copy waiting for its request's end */
        struct loop_timer timer;
        size_t len, off;
        bool sent;
        /* HTTP/2 (ng set): the copy's own client session */
        nghttp2_session *ng;
        uint8_t *body; /* the request's body, gathered until its end */
        size_t body_len, body_cap, body_off, max_body;
        uint8_t *out; /* the unsent rest of the last mem_send chunk */
        size_t out_len, out_off;
        uint32_t events; /* epoll interest now */
        bool done;       /* the copy's stream ended */
        void (*expired)(void *owner);
        void *owner;                  /* while the copy waits for its request */
        struct sockaddr_storage addr; /* where it goes, once complete */
        uint32_t mark;
        uint8_t data[]; /* HTTP/1.1: head, then body */
};

struct mirrors {
        struct loop *loop;
        struct mirror *list;
        uint32_t n;
        nghttp2_session_callbacks *cb; /* HTTP/2 copies', on first use */
};

struct mirrors *mirrors_new(struct loop *loop)
{
        struct mirrors *ms = calloc(1, sizeof(*ms));
        if (ms)
                ms->loop = loop;
        return ms;
}

struct mirrors *worker_mirrors(struct worker *w)
{
        if (!w->mirrors)
                w->mirrors = mirrors_new(w->loop);
        return w->mirrors;
}

static void mirror_release(struct mirrors *ms, struct mirror *m)
{
        loop_timer_cancel(ms->loop, &m->timer);
        if (m->io.fd >= 0) {
                loop_io_del(ms->loop, &m->io);
                close(m->io.fd);
                m->io.fd = -1;
        }
        if (m->ng)
                nghttp2_session_del(m->ng);
        m->ng = NULL;
        free(m->body);
        free(m->out);
        m->body = m->out = NULL;
}

static void mirror_close(struct mirror *m)
{
        struct mirrors *ms = m->ms;
        mirror_release(ms, m);
        if (m->prev)
                m->prev->next = m->next;
        else
                ms->list = m->next;
        if (m->next)
                m->next->prev = m->prev;
        ms->n--;
        /* Its io may still be in this epoll batch. */
        if (loop_defer_free(ms->loop, m) < 0)
                free(m);
}

void mirrors_free(struct mirrors *ms)
{
        if (!ms)
                return;
        while (ms->list) {
                struct mirror *m = ms->list;
                ms->list = m->next;
                mirror_release(ms, m);
                free(m);
        }
        if (ms->cb)
                nghttp2_session_callbacks_del(ms->cb);
        free(ms);
}

uint32_t mirrors_in_flight(const struct mirrors *ms)
{
        return ms ? ms->n : 0;
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct mirror *m = t->data;
        if (m->owner) /* its request never completed: the owner counts the drop */
                m->expired(m->owner);
        mirror_close(m);
}

/* Reads and throws away; false when the connection ended or failed. */
static bool drain_input(struct mirror *m)
{
        uint8_t sink[4096];
        for (;;) {
                ssize_t n = recv(m->io.fd, sink, sizeof(sink), 0);
                if (n > 0) {
                        if (m->ng && nghttp2_session_mem_recv(m->ng, sink, (size_t)n) < 0)
                                return false;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                return n < 0 && errno == EAGAIN;
        }
}

/* HTTP/2: sends what the session has. 0 all out, 1 would block, -1 failed. */
static int h2_flush(struct mirror *m)
{
        for (;;) {
                const uint8_t *p = m->out + m->out_off;
                size_t n = m->out_len - m->out_off;
                if (!n) {
                        ssize_t k = nghttp2_session_mem_send(m->ng, &p);
                        if (k < 0)
                                return -1;
                        if (k == 0)
                                return 0;
                        n = (size_t)k;
                        m->out_len = m->out_off = 0;
                }
                ssize_t s = send(m->io.fd, p, n, MSG_NOSIGNAL);
                if (s < 0 && errno == EINTR)
                        continue;
                if (s < 0 && errno != EAGAIN)
                        return -1;
                size_t sent = s > 0 ? (size_t)s : 0;
                if (m->out_len) {
                        m->out_off += sent;
                } else if (sent < n) { /* keep the rest: p lives until the next mem_send */
                        uint8_t *o = realloc(m->out, n - sent);
                        if (!o)
                                return -1;
                        memcpy(o, p + sent, n - sent);
                        m->out = o;
                        m->out_len = n - sent;
                        m->out_off = 0;
                }
                if (sent < n)
                        return 1;
        }
}

static void on_io_h2(struct loop *loop, struct mirror *m, uint32_t events)
{
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !drain_input(m)) {
                mirror_close(m);
                return;
        }
        int rc = m->done ? 0 : h2_flush(m);
        if (m->done || rc < 0 ||
            (!nghttp2_session_want_read(m->ng) && !nghttp2_session_want_write(m->ng))) {
                mirror_close(m); /* answered (thrown away) or reset, or failed */
                return;
        }
        uint32_t want = EPOLLIN | EPOLLRDHUP | (rc == 1 ? EPOLLOUT : 0);
        if (want != m->events) {
                if (loop_io_mod(loop, &m->io, want) < 0) {
                        mirror_close(m);
                        return;
                }
                m->events = want;
        }
}

static void on_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct mirror *m = io->data;
        if (io->fd < 0)
                return;
        if (m->ng) {
                on_io_h2(loop, m, events);
                return;
        }
        if (!m->sent && (events & EPOLLOUT)) {
                while (m->off < m->len) {
                        ssize_t n = send(io->fd, m->data + m->off, m->len - m->off, MSG_NOSIGNAL);
                        if (n > 0) {
                                m->off += (size_t)n;
                        } else if (n < 0 && errno == EAGAIN) {
                                return;
                        } else if (n < 0 && errno == EINTR) {
                                continue;
                        } else { /* refused, reset: the copy is lost */
                                mirror_close(m);
                                return;
                        }
                }
                m->sent = true;
                if (loop_io_mod(loop, io, EPOLLIN | EPOLLRDHUP) < 0) {
                        mirror_close(m);
                        return;
                }
        }
        if (m->sent && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                /* the answer is thrown away; the end (Connection: close) or an error closes */
                if (!drain_input(m)) {
                        mirror_close(m);
                        return;
                }
        }
        if (events & (EPOLLHUP | EPOLLERR))
                mirror_close(m);
}

/* A new copy in the set, its timer running; NULL when the set is full. */
static struct mirror *mirror_add(struct mirrors *ms, size_t extra, uint32_t max_in_flight,
                                 uint32_t timeout_ms, int *err)
{
        if (ms->n >= max_in_flight) {
                *err = -ENOBUFS;
                return NULL;
        }
        struct mirror *m = calloc(1, sizeof(*m) + extra);
        if (!m) {
                *err = -ENOMEM;
                return NULL;
        }
        m->ms = ms;
        m->io.fd = -1;
        loop_timer_init(&m->timer, on_timer, m);
        loop_timer_arm(ms->loop, &m->timer, timeout_ms);
        m->next = ms->list;
        if (ms->list)
                ms->list->prev = m;
        ms->list = m;
        ms->n++;
        return m;
}

/* Opens m's connection to addr (connecting) with interest events. */
static int mirror_connect(struct mirror *m, const struct sockaddr_storage *addr, uint32_t mark,
                          uint32_t events)
{
        const char *what;
        int fd = upstream_socket(addr, mark, &what);
        if (fd < 0)
                return fd;
        loop_io_init(&m->io, fd, on_io, m);
        if (loop_io_add(m->ms->loop, &m->io, events) < 0) {
                close(fd);
                m->io.fd = -1;
                return -ENOMEM;
        }
        m->events = events;
        return 0;
}

int mirror_send(struct mirrors *ms, const struct sockaddr_storage *addr, uint32_t mark,
                const char *head, size_t head_len, const uint8_t *body, size_t body_len,
                uint32_t max_in_flight, uint32_t timeout_ms)
{
        int rc;
        struct mirror *m = mirror_add(ms, head_len + body_len, max_in_flight, timeout_ms, &rc);
        if (!m)
                return rc;
        memcpy(m->data, head, head_len);
        if (body_len)
                memcpy(m->data + head_len, body, body_len);
        m->len = head_len + body_len;
        rc = mirror_connect(m, addr, mark, EPOLLOUT | EPOLLRDHUP);
        if (rc < 0)
                mirror_close(m);
        return rc;
}

/* ---- HTTP/2 ---- */

static ssize_t h2_body_read(nghttp2_session *ng, int32_t sid, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
        (void)ng;
        (void)sid;
        (void)ud;
        struct mirror *m = src->ptr;
        size_t n = m->body_len - m->body_off;
        if (n > length)
                n = length;
        if (n)
                memcpy(buf, m->body + m->body_off, n);
        m->body_off += n;
        if (m->body_off == m->body_len)
                *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
}

static int h2_on_close(nghttp2_session *ng, int32_t sid, uint32_t code, void *ud)
{
        (void)ng;
        (void)sid;
        (void)code;
        struct mirror *m = ud;
        m->done = true;
        return 0;
}

struct mirror *mirror_h2_begin(struct mirrors *ms, const struct sockaddr_storage *addr,
                               uint32_t mark, const nghttp2_nv *nv, size_t nvlen, bool body,
                               uint32_t max_in_flight, uint32_t max_body, uint32_t timeout_ms,
                               void (*expired)(void *owner), void *owner, int *err)
{
        if (!ms->cb) {
                if (nghttp2_session_callbacks_new(&ms->cb) != 0) {
                        ms->cb = NULL;
                        *err = -ENOMEM;
                        return NULL;
                }
                nghttp2_session_callbacks_set_on_stream_close_callback(ms->cb, h2_on_close);
        }
        struct mirror *m = mirror_add(ms, 0, max_in_flight, timeout_ms, err);
        if (!m)
                return NULL;
        m->max_body = max_body;
        m->expired = expired;
        m->owner = owner;
        nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
        nghttp2_data_provider prd = {.source = {.ptr = m}, .read_callback = h2_body_read};
        if (nghttp2_session_client_new(&m->ng, ms->cb, m) != 0) {
                m->ng = NULL;
        } else if (nghttp2_submit_settings(m->ng, NGHTTP2_FLAG_NONE, iv, 1) != 0 ||
                   nghttp2_submit_request(m->ng, NULL, nv, nvlen, body ? &prd : NULL, NULL) < 0) {
                nghttp2_session_del(m->ng);
                m->ng = NULL;
        }
        if (!m->ng) {
                m->owner = NULL;
                mirror_close(m);
                *err = -ENOMEM;
                return NULL;
        }
        memcpy(&m->addr, addr, sizeof(*addr));
        m->mark = mark;
        return m;
}

int mirror_h2_body(struct mirror *m, const uint8_t *p, size_t n)
{
        if (n > m->max_body - m->body_len)
                return -EMSGSIZE;
        if (m->body_len + n > m->body_cap) {
                size_t cap = m->body_cap ? m->body_cap : 1024;
                while (cap < m->body_len + n)
                        cap *= 2;
                if (cap > m->max_body)
                        cap = m->max_body;
                uint8_t *b = realloc(m->body, cap);
                if (!b)
                        return -ENOMEM;
                m->body = b;
                m->body_cap = cap;
        }
        memcpy(m->body + m->body_len, p, n);
        m->body_len += n;
        return 0;
}

int mirror_h2_send(struct mirror *m)
{
        m->owner = NULL;
        m->sent = true;
        int rc = mirror_connect(m, &m->addr, m->mark, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
        if (rc < 0)
                mirror_close(m);
        return rc;
}

void mirror_h2_cancel(struct mirror *m)
{
        m->owner = NULL;
        mirror_close(m);
}

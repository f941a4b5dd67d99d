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
#include "proxy/upstream.h"

struct mirror {
        struct mirrors *ms;
        struct mirror *prev, *next;
        struct loop_io io;
        struct loop_timer timer;
        size_t len, off;
        bool sent;
        uint8_t data[]; /* head, then body */
};

struct mirrors {
        struct loop *loop;
        struct mirror *list;
        uint32_t n;
};

struct mirrors *mirrors_new(struct loop *loop)
{
        struct mirrors *ms = calloc(1, sizeof(*ms));
        if (ms)
                ms->loop = loop;
        return ms;
}

static void mirror_close(struct mirror *m)
{
        struct mirrors *ms = m->ms;
        loop_timer_cancel(ms->loop, &m->timer);
        loop_io_del(ms->loop, &m->io);
        close(m->io.fd);
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
                loop_timer_cancel(ms->loop, &m->timer);
                loop_io_del(ms->loop, &m->io);
                close(m->io.fd);
                free(m);
        }
        free(ms);
}

uint32_t mirrors_in_flight(const struct mirrors *ms)
{
        return ms ? ms->n : 0;
}

static void on_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        mirror_close(t->data);
}

static void on_io(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct mirror *m = io->data;
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
                uint8_t sink[4096];
                for (;;) { /* the answer is thrown away */
                        ssize_t n = recv(io->fd, sink, sizeof(sink), 0);
                        if (n > 0)
                                continue;
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n < 0 && errno == EAGAIN)
                                return;
                        mirror_close(m); /* the end (Connection: close), or an error */
                        return;
                }
        }
        if (events & (EPOLLHUP | EPOLLERR))
                mirror_close(m);
}

int mirror_send(struct mirrors *ms, const struct sockaddr_storage *addr, uint32_t mark,
                const char *head, size_t head_len, const uint8_t *body, size_t body_len,
                uint32_t max_in_flight, uint32_t timeout_ms)
{
        if (ms->n >= max_in_flight)
                return -ENOBUFS;
        struct mirror *m = malloc(sizeof(*m) + head_len + body_len);
        if (!m)
                return -ENOMEM;
        memset(m, 0, sizeof(*m));
        memcpy(m->data, head, head_len);
        if (body_len)
                memcpy(m->data + head_len, body, body_len);
        m->len = head_len + body_len;
        m->ms = ms;
        const char *what;
        int fd = upstream_socket(addr, mark, &what); /* connecting */
        if (fd < 0) {
                free(m);
                return fd;
        }
        loop_io_init(&m->io, fd, on_io, m);
        if (loop_io_add(ms->loop, &m->io, EPOLLOUT | EPOLLRDHUP) < 0) {
                close(fd);
                free(m);
                return -ENOMEM;
        }
        loop_timer_init(&m->timer, on_timer, m);
        loop_timer_arm(ms->loop, &m->timer, timeout_ms);
        m->next = ms->list;
        if (ms->list)
                ms->list->prev = m;
        ms->list = m;
        ms->n++;
        return 0;
}

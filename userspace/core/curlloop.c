// SPDX-License-Identifier: Apache-2.0
/* libcurl's multi socket interface on the main loop. */
#include "core/curlloop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "core/log.h"

struct curl_loop {
        struct loop *loop;
        CURLM *multi;
        struct loop_timer timer;
        bool closing;
};

struct curl_loop_sock {
        struct loop_io io;
        struct curl_loop *cl;
};

/* Per transfer, behind CURLOPT_PRIVATE. */
struct curl_loop_xfer {
        curl_loop_done_fn fn;
        void *ctx;
};

static void drain(struct curl_loop *cl)
{
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(cl->multi, &left))) {
                if (msg->msg != CURLMSG_DONE)
                        continue;
                CURL *e = msg->easy_handle;
                CURLcode rc = msg->data.result;
                struct curl_loop_xfer *x = NULL;
                curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
                curl_multi_remove_handle(cl->multi, e);
                curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
                if (x) {
                        curl_loop_done_fn fn = x->fn;
                        void *ctx = x->ctx;
                        free(x);
                        fn(e, rc, ctx);
                }
        }
}

static void io_cb(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct curl_loop_sock *s = io->data;
        struct curl_loop *cl = s->cl;
        int act = 0, running;
        if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP))
                act |= CURL_CSELECT_IN;
        if (events & EPOLLOUT)
                act |= CURL_CSELECT_OUT;
        if (events & EPOLLERR)
                act |= CURL_CSELECT_ERR;
        curl_multi_socket_action(cl->multi, io->fd, act, &running);
        drain(cl);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
        struct curl_loop *cl = userp;
        struct curl_loop_sock *s = socketp;
        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        loop_io_del(cl->loop, &s->io);
                        curl_multi_assign(cl->multi, fd, NULL);
                        /* Its event may already be queued in this loop turn. */
                        if (cl->closing || loop_defer_free(cl->loop, s) < 0)
                                free(s);
                }
                return 0;
        }
        uint32_t ev = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
        if (s)
                return loop_io_mod(cl->loop, &s->io, ev) < 0 ? -1 : 0;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -1;
        s->cl = cl;
        loop_io_init(&s->io, fd, io_cb, s);
        if (loop_io_add(cl->loop, &s->io, ev) < 0) {
                free(s);
                return -1;
        }
        curl_multi_assign(cl->multi, fd, s);
        return 0;
}

static void timer_cb(struct loop *loop, struct loop_timer *t)
{
        struct curl_loop *cl = t->data;
        int running;
        curl_multi_socket_action(cl->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        drain(cl);
}

static int timer_fn(CURLM *m, long ms, void *userp)
{
        struct curl_loop *cl = userp;
        if (ms < 0) {
                loop_timer_cancel(cl->loop, &cl->timer);
                return 0;
        }
        return loop_timer_arm(cl->loop, &cl->timer, (uint64_t)ms) < 0 ? -1 : 0;
}

struct curl_loop *curl_loop_new(struct loop *loop)
{
        struct curl_loop *cl = calloc(1, sizeof(*cl));
        if (!cl)
                return NULL;
        cl->loop = loop;
        cl->multi = curl_multi_init();
        if (!cl->multi) {
                free(cl);
                return NULL;
        }
        loop_timer_init(&cl->timer, timer_cb, cl);
        curl_multi_setopt(cl->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
        curl_multi_setopt(cl->multi, CURLMOPT_SOCKETDATA, cl);
        curl_multi_setopt(cl->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
        curl_multi_setopt(cl->multi, CURLMOPT_TIMERDATA, cl);
        return cl;
}

int curl_loop_add(struct curl_loop *cl, CURL *e, curl_loop_done_fn fn, void *ctx)
{
        struct curl_loop_xfer *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->fn = fn;
        x->ctx = ctx;
        curl_easy_setopt(e, CURLOPT_PRIVATE, x);
        if (curl_multi_add_handle(cl->multi, e) != CURLM_OK) {
                curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
                free(x);
                return -EINVAL;
        }
        return 0;
}

void curl_loop_remove(struct curl_loop *cl, CURL *e)
{
        struct curl_loop_xfer *x = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
        if (!x)
                return;
        curl_multi_remove_handle(cl->multi, e);
        curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
        free(x);
}

void curl_loop_free(struct curl_loop *cl)
{
        if (!cl)
                return;
        cl->closing = true;
        loop_timer_cancel(cl->loop, &cl->timer);
        curl_multi_cleanup(cl->multi);
        free(cl);
}

size_t curl_body_write(char *p, size_t size, size_t n, void *body)
{
        struct curl_body *b = body;
        size_t len = size * n;
        if (len > b->max - b->len) {
                b->too_large = true;
                return 0;
        }
        char *nb = realloc(b->data, b->len + len + 1);
        if (!nb)
                return 0;
        memcpy(nb + b->len, p, len);
        b->data = nb;
        b->len += len;
        b->data[b->len] = '\0';
        return len;
}

void curl_body_free(struct curl_body *b)
{
        free(b->data);
        b->data = NULL;
        b->len = 0;
}

void curl_request_init(CURL *e, const char *url, const char *protocols, struct curl_slist *hdrs,
                       char *errbuf)
{
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
}

void curl_trust_only(CURL *e, const char *ca_file)
{
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
        curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
}

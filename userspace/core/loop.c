// SPDX-License-Identifier: Apache-2.0
#include "core/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define LOOP_MAX_EVENTS 128

struct loop_task {
        struct loop_task *next;
        loop_task_fn fn;
        void *arg;
};

struct loop {
        int epfd;
        int wakefd;
        struct loop_io wake_io;
        _Atomic bool stopping;
        uint64_t now_ms;

        struct loop_timer **heap; /* 1-based binary min-heap on deadline_ms */
        size_t heap_len;
        size_t heap_cap;

        void **deferred; /* freed after the current batch */
        size_t n_deferred;
        size_t cap_deferred;

        pthread_mutex_t task_mu;
        struct loop_task *task_head;
        struct loop_task *task_tail;
};

uint64_t loop_now_ms(const struct loop *loop)
{
        return loop->now_ms;
}

static void run_tasks(struct loop *loop)
{
        pthread_mutex_lock(&loop->task_mu);
        struct loop_task *t = loop->task_head;
        loop->task_head = loop->task_tail = NULL;
        pthread_mutex_unlock(&loop->task_mu);
        while (t) {
                struct loop_task *next = t->next;
                t->fn(t->arg);
                free(t);
                t = next;
        }
}

static void on_wake(struct loop *loop, struct loop_io *io, uint32_t events)
{
        uint64_t v;
        while (read(io->fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
                ;
        run_tasks(loop);
}

struct loop *loop_new(void)
{
        struct loop *loop = calloc(1, sizeof(*loop));
        if (!loop)
                return NULL;
        loop->epfd = epoll_create1(EPOLL_CLOEXEC);
        loop->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        pthread_mutex_init(&loop->task_mu, NULL);
        loop->now_ms = clock_mono_ms();
        if (loop->epfd < 0 || loop->wakefd < 0)
                goto fail;
        loop_io_init(&loop->wake_io, loop->wakefd, on_wake, NULL);
        if (loop_io_add(loop, &loop->wake_io, EPOLLIN) < 0)
                goto fail;
        return loop;
fail:
        loop_free(loop);
        return NULL;
}

void loop_free(struct loop *loop)
{
        if (!loop)
                return;
        struct loop_task *t = loop->task_head;
        while (t) {
                struct loop_task *next = t->next;
                free(t);
                t = next;
        }
        if (loop->epfd >= 0)
                close(loop->epfd);
        if (loop->wakefd >= 0)
                close(loop->wakefd);
        pthread_mutex_destroy(&loop->task_mu);
        for (size_t i = 0; i < loop->n_deferred; i++)
                free(loop->deferred[i]);
        free(loop->deferred);
        free(loop->heap);
        free(loop);
}

int loop_io_add(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct epoll_event ev = {.events = events, .data.ptr = io};
        if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0)
                return -errno;
        io->events = events;
        return 0;
}

int loop_io_mod(struct loop *loop, struct loop_io *io, uint32_t events)
{
        if (io->events == events)
                return 0;
        struct epoll_event ev = {.events = events, .data.ptr = io};
        if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0)
                return -errno;
        io->events = events;
        return 0;
}

void loop_io_del(struct loop *loop, struct loop_io *io)
{
        if (io->fd >= 0)
                epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        io->events = 0;
}

int loop_defer_free(struct loop *loop, void *ptr)
{
        if (loop->n_deferred == loop->cap_deferred) {
                size_t cap = loop->cap_deferred ? loop->cap_deferred * 2 : 64;
                void **d = realloc(loop->deferred, cap * sizeof(*d));
                if (!d) {
                        free(ptr);
                        return -ENOMEM;
                }
                loop->deferred = d;
                loop->cap_deferred = cap;
        }
        loop->deferred[loop->n_deferred++] = ptr;
        return 0;
}

static void free_deferred(struct loop *loop)
{
        for (size_t i = 0; i < loop->n_deferred; i++)
                free(loop->deferred[i]);
        loop->n_deferred = 0;
}

/* ---- timers: binary min-heap, 1-based so heap_index 0 means "unarmed" ---- */

static void heap_set(struct loop *loop, size_t i, struct loop_timer *t)
{
        loop->heap[i] = t;
        t->heap_index = i;
}

static void heap_up(struct loop *loop, size_t i)
{
        struct loop_timer *t = loop->heap[i];
        while (i > 1 && loop->heap[i / 2]->deadline_ms > t->deadline_ms) {
                heap_set(loop, i, loop->heap[i / 2]);
                i /= 2;
        }
        heap_set(loop, i, t);
}

static void heap_down(struct loop *loop, size_t i)
{
        struct loop_timer *t = loop->heap[i];
        for (;;) {
                size_t c = i * 2;
                if (c > loop->heap_len)
                        break;
                if (c + 1 <= loop->heap_len &&
                    loop->heap[c + 1]->deadline_ms < loop->heap[c]->deadline_ms)
                        c++;
                if (loop->heap[c]->deadline_ms >= t->deadline_ms)
                        break;
                heap_set(loop, i, loop->heap[c]);
                i = c;
        }
        heap_set(loop, i, t);
}

void loop_timer_cancel(struct loop *loop, struct loop_timer *t)
{
        size_t i = t->heap_index;
        if (!i)
                return;
        struct loop_timer *last = loop->heap[loop->heap_len--];
        t->heap_index = 0;
        if (last == t)
                return;
        heap_set(loop, i, last);
        heap_up(loop, i);
        heap_down(loop, last->heap_index);
}

int loop_timer_arm(struct loop *loop, struct loop_timer *t, uint64_t ms)
{
        uint64_t deadline = clock_mono_ms() + ms;
        if (t->heap_index) {
                uint64_t old = t->deadline_ms;
                t->deadline_ms = deadline;
                if (deadline < old)
                        heap_up(loop, t->heap_index);
                else
                        heap_down(loop, t->heap_index);
                return 0;
        }
        if (loop->heap_len + 1 >= loop->heap_cap) {
                size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
                struct loop_timer **h = realloc(loop->heap, cap * sizeof(*h));
                if (!h)
                        return -ENOMEM;
                loop->heap = h;
                loop->heap_cap = cap;
        }
        t->deadline_ms = deadline;
        loop->heap_len++;
        heap_set(loop, loop->heap_len, t);
        heap_up(loop, loop->heap_len);
        return 0;
}

static void run_timers(struct loop *loop)
{
        while (loop->heap_len && loop->heap[1]->deadline_ms <= loop->now_ms) {
                struct loop_timer *t = loop->heap[1];
                loop_timer_cancel(loop, t);
                t->fn(loop, t);
        }
}

static int next_timeout(const struct loop *loop)
{
        if (!loop->heap_len)
                return -1;
        uint64_t d = loop->heap[1]->deadline_ms;
        uint64_t now = clock_mono_ms();
        if (d <= now)
                return 0;
        uint64_t ms = d - now;
        return ms > 60000 ? 60000 : (int)ms;
}

int loop_run(struct loop *loop)
{
        struct epoll_event evs[LOOP_MAX_EVENTS];
        while (!atomic_load_explicit(&loop->stopping, memory_order_acquire)) {
                int n = epoll_wait(loop->epfd, evs, LOOP_MAX_EVENTS, next_timeout(loop));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                loop->now_ms = clock_mono_ms();
                for (int i = 0; i < n; i++) {
                        struct loop_io *io = evs[i].data.ptr;
                        io->fn(loop, io, evs[i].events);
                }
                run_timers(loop);
                free_deferred(loop);
        }
        atomic_store(&loop->stopping, false);
        return 0;
}

static void wake(struct loop *loop)
{
        uint64_t one = 1;
        ssize_t rc = write(loop->wakefd, &one, sizeof(one));
        (void)rc;
}

void loop_stop(struct loop *loop)
{
        atomic_store_explicit(&loop->stopping, true, memory_order_release);
        wake(loop);
}

int loop_post(struct loop *loop, loop_task_fn fn, void *arg)
{
        struct loop_task *t = malloc(sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->fn = fn;
        t->arg = arg;
        t->next = NULL;
        pthread_mutex_lock(&loop->task_mu);
        if (loop->task_tail)
                loop->task_tail->next = t;
        else
                loop->task_head = t;
        loop->task_tail = t;
        pthread_mutex_unlock(&loop->task_mu);
        wake(loop);
        return 0;
}

struct call_state {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        bool done;
        bool abandoned;
        loop_task_fn fn;
        void *arg;
};

static void call_trampoline(void *p)
{
        struct call_state *cs = p;
        cs->fn(cs->arg);
        pthread_mutex_lock(&cs->mu);
        bool abandoned = cs->abandoned;
        cs->done = true;
        pthread_cond_signal(&cs->cv);
        pthread_mutex_unlock(&cs->mu);
        if (abandoned) {
                pthread_mutex_destroy(&cs->mu);
                pthread_cond_destroy(&cs->cv);
                free(cs);
        }
}

int loop_call(struct loop *loop, loop_task_fn fn, void *arg, int timeout_ms)
{
        struct call_state *cs = calloc(1, sizeof(*cs));
        if (!cs)
                return -ENOMEM;
        pthread_mutex_init(&cs->mu, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&cs->cv, &ca);
        pthread_condattr_destroy(&ca);
        cs->fn = fn;
        cs->arg = arg;
        if (loop_post(loop, call_trampoline, cs) < 0) {
                pthread_mutex_destroy(&cs->mu);
                pthread_cond_destroy(&cs->cv);
                free(cs);
                return -ENOMEM;
        }
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&cs->mu);
        while (!cs->done) {
                if (pthread_cond_timedwait(&cs->cv, &cs->mu, &dl) == ETIMEDOUT && !cs->done) {
                        cs->abandoned = true;
                        pthread_mutex_unlock(&cs->mu);
                        return -ETIMEDOUT;
                }
        }
        pthread_mutex_unlock(&cs->mu);
        pthread_mutex_destroy(&cs->mu);
        pthread_cond_destroy(&cs->cv);
        free(cs);
        return 0;
}

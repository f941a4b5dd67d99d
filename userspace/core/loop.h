/* SPDX-License-Identifier: Apache-2.0 */
/* Event loop: one per thread. epoll for file descriptors, a binary heap for
 * timers, and an eventfd-backed queue through which other threads hand work to
 * the loop's thread (loop_post, loop_call).
 *
 * Handles are embedded in their owners (struct loop_io, struct loop_timer), so
 * the loop allocates nothing per connection. */
#ifndef SHUNT_CORE_LOOP_H
#define SHUNT_CORE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/clock.h"

struct loop;
struct loop_io;
struct loop_timer;

typedef void (*loop_io_fn)(struct loop *loop, struct loop_io *io, uint32_t events);
typedef void (*loop_timer_fn)(struct loop *loop, struct loop_timer *t);
typedef void (*loop_task_fn)(void *arg);

struct loop_io {
        int fd;
        uint32_t events; /* EPOLL* mask currently registered */
        loop_io_fn fn;
        void *data;
};

struct loop_timer {
        uint64_t deadline_ms; /* CLOCK_MONOTONIC milliseconds */
        size_t heap_index;    /* 0 = not armed */
        loop_timer_fn fn;
        void *data;
};

struct loop *loop_new(void);
void loop_free(struct loop *loop);

/* Runs until loop_stop(). Returns 0, or a negative errno if epoll fails. */
int loop_run(struct loop *loop);
/* May be called from any thread. */
void loop_stop(struct loop *loop);

/* Monotonic time in milliseconds, cached once per loop iteration. */
uint64_t loop_now_ms(const struct loop *loop);

static inline void loop_io_init(struct loop_io *io, int fd, loop_io_fn fn, void *data)
{
        io->fd = fd;
        io->events = 0;
        io->fn = fn;
        io->data = data;
}

/* Registers, changes or removes interest. Return 0 or -errno. */
int loop_io_add(struct loop *loop, struct loop_io *io, uint32_t events);
int loop_io_mod(struct loop *loop, struct loop_io *io, uint32_t events);
void loop_io_del(struct loop *loop, struct loop_io *io);

static inline void loop_timer_init(struct loop_timer *t, loop_timer_fn fn, void *data)
{
        t->deadline_ms = 0;
        t->heap_index = 0;
        t->fn = fn;
        t->data = data;
}
static inline bool loop_timer_armed(const struct loop_timer *t)
{
        return t->heap_index != 0;
}
/* (Re)arms t to fire once after ms milliseconds. Returns 0 or -ENOMEM. */
int loop_timer_arm(struct loop *loop, struct loop_timer *t, uint64_t ms);
void loop_timer_cancel(struct loop *loop, struct loop_timer *t);

/* Frees ptr (with free()) once the events of the current epoll batch have
 * all been dispatched: an object whose handles may still appear later in the
 * same batch must not be freed at once. Loop thread only. 0 or -ENOMEM (then
 * ptr is freed immediately, which is only safe outside a batch). */
int loop_defer_free(struct loop *loop, void *ptr);

/* Queues fn(arg) to run on the loop's thread. Any thread. 0 or -ENOMEM. */
int loop_post(struct loop *loop, loop_task_fn fn, void *arg);
/* Runs fn(arg) on the loop's thread and waits for it to finish. Must not be
 * called from the loop's own thread. Returns 0, or -ETIMEDOUT after
 * timeout_ms (fn then still runs later, so arg must stay valid: callers pass
 * heap memory they free only on success). */
int loop_call(struct loop *loop, loop_task_fn fn, void *arg, int timeout_ms);

#endif

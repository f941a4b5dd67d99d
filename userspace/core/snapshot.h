/* SPDX-License-Identifier: Apache-2.0 */
/* Immutable, reference-counted snapshots published through one slot.
 *
 * The main thread builds a new object and publishes it; readers (workers)
 * compare the slot's generation with the one they hold, a single atomic load
 * on the hot path, and take a new reference only when it changed. An object
 * is freed when its last reference is dropped, so a reader never sees a
 * half-updated or freed object. */
#ifndef SHUNT_CORE_SNAPSHOT_H
#define SHUNT_CORE_SNAPSHOT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

struct snapshot {
        _Atomic uint32_t refs;
        void (*destroy)(struct snapshot *s); /* frees the enclosing object */
};

struct snapshot_slot {
        pthread_mutex_t mu;
        struct snapshot *cur;
        _Atomic uint64_t gen;
};

/* Sets refs to 1: the creator's reference, handed over by publish. */
void snapshot_init(struct snapshot *s, void (*destroy)(struct snapshot *s));
void snapshot_ref(struct snapshot *s);
void snapshot_unref(struct snapshot *s);

void snapshot_slot_init(struct snapshot_slot *slot);
/* Drops the slot's reference. */
void snapshot_slot_destroy(struct snapshot_slot *slot);
/* Takes over the caller's reference to s; drops the slot's old one. */
void snapshot_publish(struct snapshot_slot *slot, struct snapshot *s);
/* Returns a new reference to the current object (may be NULL) and its
 * generation. */
struct snapshot *snapshot_acquire(struct snapshot_slot *slot, uint64_t *gen);

static inline uint64_t snapshot_gen(struct snapshot_slot *slot)
{
        return atomic_load_explicit(&slot->gen, memory_order_acquire);
}

/* A reader's cached reference: refresh it once per loop iteration or event. */
struct snapshot_reader {
        struct snapshot *cur;
        uint64_t gen;
};

static inline struct snapshot *snapshot_reader_get(struct snapshot_reader *r,
                                                   struct snapshot_slot *slot)
{
        if (__builtin_expect(snapshot_gen(slot) != r->gen || !r->cur, 0)) {
                struct snapshot *old = r->cur;
                r->cur = snapshot_acquire(slot, &r->gen);
                if (old)
                        snapshot_unref(old);
        }
        return r->cur;
}

static inline void snapshot_reader_release(struct snapshot_reader *r)
{
        if (r->cur)
                snapshot_unref(r->cur);
        r->cur = NULL;
        r->gen = 0;
}

#endif

// SPDX-License-Identifier: Apache-2.0
#include "core/snapshot.h"

#include <stddef.h>

void snapshot_init(struct snapshot *s, void (*destroy)(struct snapshot *s))
{
        atomic_init(&s->refs, 1);
        s->destroy = destroy;
}

void snapshot_ref(struct snapshot *s)
{
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void snapshot_unref(struct snapshot *s)
{
        if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
                s->destroy(s);
}

void snapshot_slot_init(struct snapshot_slot *slot)
{
        pthread_mutex_init(&slot->mu, NULL);
        slot->cur = NULL;
        atomic_init(&slot->gen, 0);
}

void snapshot_slot_destroy(struct snapshot_slot *slot)
{
        if (slot->cur)
                snapshot_unref(slot->cur);
        slot->cur = NULL;
        pthread_mutex_destroy(&slot->mu);
}

void snapshot_publish(struct snapshot_slot *slot, struct snapshot *s)
{
        pthread_mutex_lock(&slot->mu);
        struct snapshot *old = slot->cur;
        slot->cur = s;
        atomic_fetch_add_explicit(&slot->gen, 1, memory_order_release);
        pthread_mutex_unlock(&slot->mu);
        if (old)
                snapshot_unref(old);
}

struct snapshot *snapshot_acquire(struct snapshot_slot *slot, uint64_t *gen)
{
        pthread_mutex_lock(&slot->mu);
        struct snapshot *s = slot->cur;
        if (s)
                snapshot_ref(s);
        if (gen)
                *gen = atomic_load_explicit(&slot->gen, memory_order_relaxed);
        pthread_mutex_unlock(&slot->mu);
        return s;
}

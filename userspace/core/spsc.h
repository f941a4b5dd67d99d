/* SPDX-License-Identifier: Apache-2.0 */
/* A bounded single-producer single-consumer ring of variable-length
 * records (each a 4-byte length, then its bytes, wrapping at the end).
 * One thread pushes, one other thread pops; neither ever waits or locks:
 * a push that does not fit fails (the caller drops and counts). */
#ifndef SHUNT_CORE_SPSC_H
#define SHUNT_CORE_SPSC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct spsc_ring {
        _Atomic uint64_t head; /* consumer's position (bytes) */
        char pad1[56];
        _Atomic uint64_t tail; /* producer's position (bytes) */
        char pad2[56];
        uint32_t cap; /* a power of two */
        uint8_t data[];
};

/* At least min_bytes (rounded up to a power of two, at least 4 KiB). */
static inline struct spsc_ring *spsc_new(uint32_t min_bytes)
{
        uint32_t cap = 4096;
        while (cap < min_bytes && cap < (1u << 30))
                cap <<= 1;
        struct spsc_ring *r = calloc(1, sizeof(*r) + cap);
        if (r)
                r->cap = cap;
        return r;
}

static inline void spsc_copy_in(struct spsc_ring *r, uint64_t pos, const void *src, uint32_t n)
{
        uint32_t at = (uint32_t)(pos & (r->cap - 1)), first = r->cap - at;
        if (first > n)
                first = n;
        memcpy(r->data + at, src, first);
        memcpy(r->data, (const uint8_t *)src + first, n - first);
}

static inline void spsc_copy_out(const struct spsc_ring *r, uint64_t pos, void *dst, uint32_t n)
{
        uint32_t at = (uint32_t)(pos & (r->cap - 1)), first = r->cap - at;
        if (first > n)
                first = n;
        memcpy(dst, r->data + at, first);
        memcpy((uint8_t *)dst + first, r->data, n - first);
}

/* Producer: false when the record does not fit now. */
static inline bool spsc_push(struct spsc_ring *r, const void *rec, uint32_t len)
{
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        if ((uint64_t)len + 4 > r->cap - (tail - head))
                return false;
        spsc_copy_in(r, tail, &len, 4);
        spsc_copy_in(r, tail + 4, rec, len);
        atomic_store_explicit(&r->tail, tail + 4 + len, memory_order_release);
        return true;
}

/* Consumer: the next record's length into *len and its bytes into out
 * (max bytes; a longer record is skipped and reported with *len > max).
 * False when the ring is empty. */
static inline bool spsc_pop(struct spsc_ring *r, void *out, uint32_t max, uint32_t *len)
{
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head == tail)
                return false;
        uint32_t n;
        spsc_copy_out(r, head, &n, 4);
        if (n <= max)
                spsc_copy_out(r, head + 4, out, n);
        *len = n;
        atomic_store_explicit(&r->head, head + 4 + n, memory_order_release);
        return true;
}

static inline bool spsc_empty(struct spsc_ring *r)
{
        return atomic_load_explicit(&r->head, memory_order_acquire) ==
               atomic_load_explicit(&r->tail, memory_order_acquire);
}

#endif

// SPDX-License-Identifier: Apache-2.0
/* Circuit breaker per endpoint: closed -> open -> half-open -> closed, and an
 * operator's forced open. The caller passes the time; any thread may call
 * (see struct lb_breaker for how without a lock). */
#include <string.h>

#include "core/log.h"
#include "lb/lb.h"
#include "lb/resilience.h"

#define COMP "lb"

static const char *const state_names[LB_BREAKER_NSTATES] = {"closed", "open", "half_open",
                                                            "forced_open"};

const char *lb_breaker_state_name(enum lb_breaker_state s)
{
        return (unsigned)s < LB_BREAKER_NSTATES ? state_names[s] : "unknown";
}

void lb_breaker_config_default(struct lb_breaker_config *c)
{
        c->consecutive_failures = 5;
        c->failure_percent = 50;
        c->min_requests = 20;
        c->window_ns = 30 * LB_NS_PER_SEC;
        c->open_ns = 30 * LB_NS_PER_SEC;
        c->jitter_percent = 10;
        c->half_open_probes = 3;
        c->success_threshold = 3;
}

#define CHECK(cond, field, fmt, ...)                                                               \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        log_error(COMP, 0, field ": " fmt, __VA_ARGS__);                           \
                        return -EINVAL;                                                            \
                }                                                                                  \
        } while (0)

int lb_breaker_config_validate(const struct lb_breaker_config *c)
{
        CHECK(c->consecutive_failures >= 1 && c->consecutive_failures <= 1000000,
              "circuit_breaker.consecutive_failures", "%u (allowed: 1..1000000)",
              c->consecutive_failures);
        CHECK(c->failure_percent >= 1 && c->failure_percent <= 100,
              "circuit_breaker.failure_percent", "%u (allowed: 1..100)", c->failure_percent);
        CHECK(c->min_requests >= 1 && c->min_requests <= 1000000, "circuit_breaker.min_requests",
              "%u (allowed: 1..1000000)", c->min_requests);
        CHECK(c->window_ns >= LB_BREAKER_BUCKETS * 1000000ull &&
                  c->window_ns <= 3600 * LB_NS_PER_SEC,
              "circuit_breaker.window", "%llu ns (allowed: 10 ms..1 h)",
              (unsigned long long)c->window_ns);
        CHECK(c->open_ns >= 1000000ull && c->open_ns <= 3600 * LB_NS_PER_SEC,
              "circuit_breaker.open_timeout", "%llu ns (allowed: 1 ms..1 h)",
              (unsigned long long)c->open_ns);
        CHECK(c->jitter_percent <= 50, "circuit_breaker.jitter_percent", "%u (allowed: 0..50)",
              c->jitter_percent);
        CHECK(c->half_open_probes >= 1 && c->half_open_probes <= 1000,
              "circuit_breaker.half_open_probes", "%u (allowed: 1..1000)", c->half_open_probes);
        CHECK(c->success_threshold >= 1 && c->success_threshold <= 1000,
              "circuit_breaker.success_threshold", "%u (allowed: 1..1000)", c->success_threshold);
        return 0;
}

/* The state word: state in bits 0-15, probes in flight 16-31, half-open
 * successes 32-47. */
#define W_STATE(w)           ((enum lb_breaker_state)((w)&0xffff))
#define W_PROBES(w)          ((uint32_t)(((w) >> 16) & 0xffff))
#define W_OK(w)              ((uint32_t)(((w) >> 32) & 0xffff))
#define W_MAKE(st, pr, succ) ((uint64_t)(st) | (uint64_t)(pr) << 16 | (uint64_t)(succ) << 32)

#define LD(x)    atomic_load_explicit(&(x), memory_order_relaxed)
#define ST(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

static void clear_window(struct lb_breaker *b, uint64_t now)
{
        for (int i = 0; i < LB_BREAKER_BUCKETS; i++) {
                ST(b->tag[i], 0);
                ST(b->ok[i], 0);
                ST(b->fail[i], 0);
        }
        ST(b->base, now);
        ST(b->consecutive, 0);
}

void lb_breaker_init(struct lb_breaker *b, uint64_t seed, uint64_t now)
{
        memset(b, 0, sizeof(*b));
        atomic_init(&b->word, W_MAKE(LB_BREAKER_CLOSED, 0, 0));
        atomic_init(&b->rng, seed);
        clear_window(b, now);
}

static uint64_t next_rand(struct lb_breaker *b)
{
        uint64_t r =
            atomic_fetch_add_explicit(&b->rng, 0x9e3779b97f4a7c15ull, memory_order_relaxed) +
            0x9e3779b97f4a7c15ull;
        return lb_mix64(r);
}

/* Bucket number of now: buckets of window/B counted from the window's
 * origin (a clock behind the origin falls in bucket 0). */
static uint64_t bucket_of(const struct lb_breaker *b, const struct lb_breaker_config *c,
                          uint64_t now)
{
        uint64_t base = LD(b->base);
        return now > base ? (now - base) / (c->window_ns / LB_BREAKER_BUCKETS) : 0;
}

/* Counts a result in the bucket of now; returns the window's totals (the
 * current bucket and the B-1 before it). */
static void window_add(struct lb_breaker *b, const struct lb_breaker_config *c, bool success,
                       uint64_t now, uint64_t *ok, uint64_t *fail)
{
        uint64_t k = bucket_of(b, c, now);
        uint32_t i = (uint32_t)(k % LB_BREAKER_BUCKETS);
        uint64_t tag = LD(b->tag[i]);
        if (tag != k + 1) {
                /* The slot holds an older bucket: the one who moves the tag
                 * clears the counts. A result landing in between is lost. */
                if (tag < k + 1 && atomic_compare_exchange_strong_explicit(&b->tag[i], &tag, k + 1,
                                                                           memory_order_relaxed,
                                                                           memory_order_relaxed)) {
                        ST(b->ok[i], 0);
                        ST(b->fail[i], 0);
                }
        }
        atomic_fetch_add_explicit(success ? &b->ok[i] : &b->fail[i], 1, memory_order_relaxed);
        *ok = *fail = 0;
        for (int j = 0; j < LB_BREAKER_BUCKETS; j++) {
                uint64_t t = LD(b->tag[j]);
                if (t == 0 || t > k + 1 || k + 1 - t >= LB_BREAKER_BUCKETS)
                        continue;
                *ok += LD(b->ok[j]);
                *fail += LD(b->fail[j]);
        }
}

/* Moves the word from `from` to open. Only the winner of the swap resets
 * the window. open_until is stored before the swap so that whoever sees the
 * new state also sees a time of this opening. */
static void trip(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t from,
                 uint64_t now)
{
        uint64_t jitter = c->open_ns * c->jitter_percent / 100; /* <= 1.8e14: no overflow */
        uint64_t span = 2 * jitter + 1;
        uint64_t until = now + c->open_ns - jitter + next_rand(b) % span;
        for (;;) {
                enum lb_breaker_state st = W_STATE(from);
                if (st == LB_BREAKER_OPEN || st == LB_BREAKER_FORCED_OPEN)
                        return; /* someone else tripped it (or an operator) */
                atomic_store_explicit(&b->open_until, until, memory_order_release);
                if (atomic_compare_exchange_weak_explicit(
                        &b->word, &from, W_MAKE(LB_BREAKER_OPEN, 0, 0), memory_order_acq_rel,
                        memory_order_acquire))
                        break;
        }
        ST(b->opened_at, now);
        atomic_fetch_add_explicit(&b->opens, 1, memory_order_relaxed);
        clear_window(b, now);
}

enum lb_breaker_state lb_breaker_advance(struct lb_breaker *b, const struct lb_breaker_config *c,
                                         uint64_t now, bool *moved)
{
        (void)c;
        if (moved)
                *moved = false;
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        while (W_STATE(w) == LB_BREAKER_OPEN &&
               now >= atomic_load_explicit(&b->open_until, memory_order_acquire)) {
                if (atomic_compare_exchange_weak_explicit(
                        &b->word, &w, W_MAKE(LB_BREAKER_HALF_OPEN, 0, 0), memory_order_acq_rel,
                        memory_order_acquire)) {
                        if (moved)
                                *moved = true;
                        return LB_BREAKER_HALF_OPEN;
                }
        }
        return W_STATE(w);
}

enum lb_breaker_state lb_breaker_state(struct lb_breaker *b, const struct lb_breaker_config *c,
                                       uint64_t now)
{
        return lb_breaker_advance(b, c, now, NULL);
}

enum lb_breaker_state lb_breaker_peek(const struct lb_breaker *b)
{
        return W_STATE(atomic_load_explicit(&b->word, memory_order_acquire));
}

uint64_t lb_breaker_opens(const struct lb_breaker *b)
{
        return LD(b->opens);
}

int lb_breaker_allow(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        if (lb_breaker_state(b, c, now) == LB_BREAKER_CLOSED)
                return 0;
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        for (;;) {
                switch (W_STATE(w)) {
                case LB_BREAKER_CLOSED:
                        return 0;
                case LB_BREAKER_HALF_OPEN:
                        if (W_PROBES(w) >= c->half_open_probes)
                                return LB_EBREAKER;
                        if (atomic_compare_exchange_weak_explicit(
                                &b->word, &w,
                                W_MAKE(LB_BREAKER_HALF_OPEN, W_PROBES(w) + 1, W_OK(w)),
                                memory_order_acq_rel, memory_order_acquire))
                                return 0;
                        break;
                default:
                        return LB_EBREAKER;
                }
        }
}

enum lb_breaker_state lb_breaker_view(const struct lb_breaker *b, uint64_t now)
{
        enum lb_breaker_state s = lb_breaker_peek(b);
        if (s == LB_BREAKER_OPEN &&
            now >= atomic_load_explicit(&b->open_until, memory_order_acquire))
                return LB_BREAKER_HALF_OPEN;
        return s;
}

bool lb_breaker_pickable(const struct lb_breaker *b, const struct lb_breaker_config *c,
                         uint64_t now)
{
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        switch (W_STATE(w)) {
        case LB_BREAKER_CLOSED:
                return true;
        case LB_BREAKER_HALF_OPEN:
                return W_PROBES(w) < c->half_open_probes;
        case LB_BREAKER_OPEN:
                /* Time is up: the next allow() makes it half-open. */
                return now >= atomic_load_explicit(&b->open_until, memory_order_acquire);
        default:
                return false;
        }
}

enum lb_breaker_state lb_breaker_result(struct lb_breaker *b, const struct lb_breaker_config *c,
                                        bool success, bool probe, uint64_t now)
{
        enum lb_breaker_state st = lb_breaker_state(b, c, now);
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        if (st == LB_BREAKER_CLOSED && W_STATE(w) == LB_BREAKER_CLOSED) {
                uint32_t run = 0;
                if (success) {
                        if (LD(b->consecutive)) /* no write (line bounce) when already 0 */
                                ST(b->consecutive, 0);
                } else
                        run =
                            atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed) + 1;
                if (run >= c->consecutive_failures) {
                        trip(b, c, w, now);
                        return lb_breaker_peek(b);
                }
                uint64_t ok, fail;
                window_add(b, c, success, now, &ok, &fail);
                /* Checked after successes too: the one that brings the
                 * count to min_requests may find the rate already high. */
                if (ok + fail >= c->min_requests &&
                    fail * 100 >= (uint64_t)c->failure_percent * (ok + fail))
                        trip(b, c, w, now);
                return lb_breaker_peek(b);
        }
        if (W_STATE(w) != LB_BREAKER_HALF_OPEN || !probe)
                return W_STATE(w); /* open or forced: a late result changes nothing */
        for (;;) {
                uint32_t probes = W_PROBES(w) ? W_PROBES(w) - 1 : 0;
                if (!success) {
                        trip(b, c, w, now);
                        return lb_breaker_peek(b);
                }
                uint32_t okc = W_OK(w) + 1;
                uint64_t next = okc >= c->success_threshold
                                    ? W_MAKE(LB_BREAKER_CLOSED, 0, 0)
                                    : W_MAKE(LB_BREAKER_HALF_OPEN, probes, okc);
                if (okc >= c->success_threshold)
                        clear_window(b, now); /* before the swap: closed starts clean */
                if (atomic_compare_exchange_weak_explicit(&b->word, &w, next, memory_order_acq_rel,
                                                          memory_order_acquire))
                        return W_STATE(next);
                if (W_STATE(w) != LB_BREAKER_HALF_OPEN)
                        return W_STATE(w);
        }
}

enum lb_breaker_state lb_breaker_record(struct lb_breaker *b, const struct lb_breaker_config *c,
                                        bool success, uint64_t now)
{
        return lb_breaker_result(b, c, success, true, now);
}

void lb_breaker_cancel(struct lb_breaker *b)
{
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        while (W_STATE(w) == LB_BREAKER_HALF_OPEN && W_PROBES(w) > 0 &&
               !atomic_compare_exchange_weak_explicit(
                   &b->word, &w, W_MAKE(LB_BREAKER_HALF_OPEN, W_PROBES(w) - 1, W_OK(w)),
                   memory_order_acq_rel, memory_order_acquire))
                ;
}

void lb_breaker_force_open(struct lb_breaker *b, bool on, uint64_t now)
{
        uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
        if (on) {
                if (atomic_exchange_explicit(&b->word, W_MAKE(LB_BREAKER_FORCED_OPEN, 0, 0),
                                             memory_order_acq_rel) !=
                    W_MAKE(LB_BREAKER_FORCED_OPEN, 0, 0)) {
                        atomic_fetch_add_explicit(&b->opens, 1, memory_order_relaxed);
                        ST(b->opened_at, now);
                }
                return;
        }
        if (W_STATE(w) != LB_BREAKER_FORCED_OPEN)
                return;
        clear_window(b, now);
        atomic_compare_exchange_strong_explicit(&b->word, &w, W_MAKE(LB_BREAKER_CLOSED, 0, 0),
                                                memory_order_acq_rel, memory_order_acquire);
}

uint64_t lb_breaker_open_until(const struct lb_breaker *b)
{
        return atomic_load_explicit(&b->open_until, memory_order_acquire);
}

void lb_breaker_aggregate(struct lb_breaker *const *b, size_t n, const struct lb_breaker_config *c,
                          uint64_t now, struct lb_breaker_counts *out)
{
        memset(out, 0, sizeof(*out));
        for (size_t i = 0; i < n; i++)
                out->n[lb_breaker_state(b[i], c, now)]++;
}

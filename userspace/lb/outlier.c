// SPDX-License-Identifier: Apache-2.0
/* Outlier detection: consecutive connect failures or 5xx eject an endpoint
 * for a time that grows with each ejection, under a cap on how many
 * endpoints of the service may be out at once. */
#include <stdatomic.h>
#include <stdlib.h>

#include "core/log.h"
#include "lb/resilience.h"

#define COMP "lb"

uint32_t lb_outlier_max_ejected(uint32_t n, uint32_t percent)
{
        if (n < 2 || percent == 0)
                return 0;
        uint64_t cap = (uint64_t)n * percent / 100;
        if (cap < 1)
                cap = 1;
        if (cap > n - 1)
                cap = n - 1;
        return (uint32_t)cap;
}

void lb_outlier_config_default(struct lb_outlier_config *c)
{
        c->consecutive_failures = 5;
        c->base_ejection_ns = 30 * LB_NS_PER_SEC;
        c->max_ejection_ns = 300 * LB_NS_PER_SEC;
        c->max_ejection_percent = 10;
}

int lb_outlier_config_validate(const struct lb_outlier_config *c)
{
        if (c->consecutive_failures < 1 || c->consecutive_failures > 1000000) {
                log_error(COMP, 0,
                          "outlier_detection.consecutive_failures: %u (allowed: 1..1000000)",
                          c->consecutive_failures);
                return -EINVAL;
        }
        if (c->base_ejection_ns < 1000000ull || c->base_ejection_ns > 3600 * LB_NS_PER_SEC) {
                log_error(COMP, 0,
                          "outlier_detection.base_ejection_time: %llu ns (allowed: 1 ms..1 h)",
                          (unsigned long long)c->base_ejection_ns);
                return -EINVAL;
        }
        if (c->max_ejection_ns < c->base_ejection_ns ||
            c->max_ejection_ns > 24 * 3600 * LB_NS_PER_SEC) {
                log_error(COMP, 0,
                          "outlier_detection.max_ejection_time: %llu ns (allowed: "
                          "base_ejection_time..24 h)",
                          (unsigned long long)c->max_ejection_ns);
                return -EINVAL;
        }
        if (c->max_ejection_percent > 100) {
                log_error(COMP, 0, "outlier_detection.max_ejection_percent: %u (allowed: 0..100)",
                          c->max_ejection_percent);
                return -EINVAL;
        }
        return 0;
}

struct lb_outlier {
        struct lb_outlier_config cfg;
        uint32_t n;
        struct lb_outlier_svc svc;
        struct lb_outlier_ep eps[];
};

#define LD(x)    atomic_load_explicit(&(x), memory_order_relaxed)
#define ST(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)

struct lb_outlier *lb_outlier_new(const struct lb_outlier_config *c, uint32_t n)
{
        if (lb_outlier_config_validate(c) < 0)
                return NULL;
        struct lb_outlier *o = calloc(1, sizeof(*o) + (size_t)n * sizeof(o->eps[0]));
        if (!o) {
                log_error(COMP, 0, "outlier detector for %u endpoints: out of memory", n);
                return NULL;
        }
        o->cfg = *c;
        o->n = n;
        return o;
}

void lb_outlier_free(struct lb_outlier *o)
{
        free(o);
}

/* One step down per max_ejection_ns in service; the swap of decay_from
 * makes each step happen once when two threads decay together. */
static void decay(const struct lb_outlier_config *c, struct lb_outlier_ep *e, uint64_t now)
{
        uint64_t from = LD(e->decay_from);
        while (LD(e->count) > 0 && now >= from + c->max_ejection_ns) {
                if (atomic_compare_exchange_weak_explicit(
                        &e->decay_from, &from, from + c->max_ejection_ns, memory_order_relaxed,
                        memory_order_relaxed)) {
                        atomic_fetch_sub_explicit(&e->count, 1, memory_order_relaxed);
                        from += c->max_ejection_ns;
                }
        }
}

int lb_outlier_ep_record(const struct lb_outlier_config *c, struct lb_outlier_svc *svc,
                         struct lb_outlier_ep *e, uint32_t n, enum lb_outcome r, uint64_t now)
{
        if (LD(e->until))
                return 0; /* results of requests sent before the ejection */
        if (r == LB_OUTCOME_SUCCESS) {
                if (LD(e->consecutive))
                        ST(e->consecutive, 0);
                return 0;
        }
        if (r != LB_OUTCOME_CONNECT_FAILURE && r != LB_OUTCOME_5XX)
                return 0;
        uint32_t run = atomic_fetch_add_explicit(&e->consecutive, 1, memory_order_relaxed) + 1;
        /* The run ends with the result that swaps it back to 0: of results
         * racing past the threshold only one does. */
        if (run < c->consecutive_failures ||
            !atomic_compare_exchange_strong_explicit(&e->consecutive, &run, 0, memory_order_relaxed,
                                                     memory_order_relaxed))
                return 0;
        if (!lb_slot_take(&svc->ejected, lb_outlier_max_ejected(n, c->max_ejection_percent))) {
                atomic_fetch_add_explicit(&svc->skipped, 1, memory_order_relaxed);
                return 0;
        }
        decay(c, e, now);
        uint32_t k = atomic_fetch_add_explicit(&e->count, 1, memory_order_relaxed) + 1;
        uint64_t d = c->base_ejection_ns * k; /* k <= 24 h / 1 ms: no overflow */
        if (d > c->max_ejection_ns || d / k != c->base_ejection_ns)
                d = c->max_ejection_ns;
        uint64_t zero = 0;
        if (!atomic_compare_exchange_strong_explicit(&e->until, &zero, now + d,
                                                     memory_order_relaxed, memory_order_relaxed)) {
                /* Ejected meanwhile by a result of another run: give the slot back. */
                atomic_fetch_sub_explicit(&e->count, 1, memory_order_relaxed);
                atomic_fetch_sub_explicit(&svc->ejected, 1, memory_order_relaxed);
                return 0;
        }
        atomic_fetch_add_explicit(&svc->ejections, 1, memory_order_relaxed);
        return 1;
}

bool lb_outlier_ep_expire(const struct lb_outlier_config *c, struct lb_outlier_svc *svc,
                          struct lb_outlier_ep *e, uint64_t now)
{
        uint64_t until = LD(e->until);
        if (!until) {
                decay(c, e, now);
                return false;
        }
        if (now < until || !atomic_compare_exchange_strong_explicit(
                               &e->until, &until, 0, memory_order_relaxed, memory_order_relaxed))
                return false;
        ST(e->consecutive, 0);
        ST(e->decay_from, now);
        atomic_fetch_sub_explicit(&svc->ejected, 1, memory_order_relaxed);
        return true;
}

void lb_outlier_ep_release(struct lb_outlier_svc *svc, struct lb_outlier_ep *e)
{
        uint64_t until = LD(e->until);
        if (until && atomic_compare_exchange_strong_explicit(
                         &e->until, &until, 0, memory_order_relaxed, memory_order_relaxed))
                atomic_fetch_sub_explicit(&svc->ejected, 1, memory_order_relaxed);
}

int lb_outlier_record(struct lb_outlier *o, uint32_t i, enum lb_outcome r, uint64_t now)
{
        if (i >= o->n) {
                log_error(COMP, 0, "outlier record: endpoint index %u out of range (%u endpoints)",
                          i, o->n);
                return -EINVAL;
        }
        return lb_outlier_ep_record(&o->cfg, &o->svc, &o->eps[i], o->n, r, now);
}

uint32_t lb_outlier_tick(struct lb_outlier *o, uint64_t now)
{
        uint32_t back = 0;
        for (uint32_t i = 0; i < o->n; i++)
                back += lb_outlier_ep_expire(&o->cfg, &o->svc, &o->eps[i], now);
        return back;
}

bool lb_outlier_ejected(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n && LD(o->eps[i].until) != 0;
}

uint64_t lb_outlier_ejected_until(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n ? LD(o->eps[i].until) : 0;
}

uint32_t lb_outlier_ejection_count(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n ? LD(o->eps[i].count) : 0;
}

uint32_t lb_outlier_num_ejected(const struct lb_outlier *o)
{
        return LD(o->svc.ejected);
}

uint64_t lb_outlier_skipped(const struct lb_outlier *o)
{
        return LD(o->svc.skipped);
}

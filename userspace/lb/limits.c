// SPDX-License-Identifier: Apache-2.0
/* Per-service limits, retry policy and retry budget. */
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "lb/lb.h"
#include "lb/resilience.h"

#define COMP "lb"

#define LIMIT_MAX 10000000u

static const char *const limit_names[LB_LIMIT_NKINDS] = {"max_connections", "max_pending_requests",
                                                         "max_requests"};

const char *lb_limit_name(enum lb_limit_kind k)
{
        return (unsigned)k < LB_LIMIT_NKINDS ? limit_names[k] : "unknown";
}

void lb_limits_config_default(struct lb_limits_config *c)
{
        for (int k = 0; k < LB_LIMIT_NKINDS; k++)
                c->max[k] = 1024;
}

int lb_limits_config_validate(const struct lb_limits_config *c)
{
        for (int k = 0; k < LB_LIMIT_NKINDS; k++) {
                if (c->max[k] < 1 || c->max[k] > LIMIT_MAX) {
                        log_error(COMP, 0, "limits.%s: %u (allowed: 1..%u)", limit_names[k],
                                  c->max[k], LIMIT_MAX);
                        return -EINVAL;
                }
        }
        return 0;
}

void lb_limits_init(struct lb_limits *l, const struct lb_limits_config *c)
{
        for (int k = 0; k < LB_LIMIT_NKINDS; k++) {
                atomic_init(&l->cur[k], 0);
                atomic_init(&l->refused[k], 0);
                atomic_init(&l->max[k], c->max[k]);
        }
}

void lb_limits_set(struct lb_limits *l, const struct lb_limits_config *c)
{
        for (int k = 0; k < LB_LIMIT_NKINDS; k++)
                atomic_store_explicit(&l->max[k], c->max[k], memory_order_relaxed);
}

bool lb_slot_take(_Atomic uint32_t *cur, uint32_t max)
{
        uint32_t v = atomic_load_explicit(cur, memory_order_relaxed);
        do {
                if (v >= max)
                        return false;
        } while (!atomic_compare_exchange_weak_explicit(cur, &v, v + 1, memory_order_relaxed,
                                                        memory_order_relaxed));
        return true;
}

static void give(_Atomic uint32_t *cur)
{
        uint32_t v = atomic_load_explicit(cur, memory_order_relaxed);
        do {
                if (v == 0)
                        return; /* unbalanced release: stay at 0 rather than wrap */
        } while (!atomic_compare_exchange_weak_explicit(cur, &v, v - 1, memory_order_relaxed,
                                                        memory_order_relaxed));
}

int lb_limits_acquire(struct lb_limits *l, enum lb_limit_kind k)
{
        if (lb_slot_take(&l->cur[k], atomic_load_explicit(&l->max[k], memory_order_relaxed)))
                return 0;
        atomic_fetch_add_explicit(&l->refused[k], 1, memory_order_relaxed);
        return LB_ELIMIT;
}

void lb_limits_release(struct lb_limits *l, enum lb_limit_kind k)
{
        give(&l->cur[k]);
}

uint32_t lb_limits_current(const struct lb_limits *l, enum lb_limit_kind k)
{
        return atomic_load_explicit(&l->cur[k], memory_order_relaxed);
}

uint64_t lb_limits_refused(const struct lb_limits *l, enum lb_limit_kind k)
{
        return atomic_load_explicit(&l->refused[k], memory_order_relaxed);
}

/* ---- retries -------------------------------------------------------------- */

void lb_retry_config_default(struct lb_retry_config *c)
{
        c->max_retries = 2;
        c->backoff_base_ns = 25 * 1000000ull;
        c->backoff_max_ns = 250 * 1000000ull;
        c->budget_percent = 20;
        c->budget_min = 3;
        c->retry_5xx = true;
}

int lb_retry_config_validate(const struct lb_retry_config *c)
{
        if (c->max_retries > 10) {
                log_error(COMP, 0, "retries.max_retries: %u (allowed: 0..10)", c->max_retries);
                return -EINVAL;
        }
        if (c->backoff_base_ns < 1000000ull || c->backoff_base_ns > 60 * LB_NS_PER_SEC) {
                log_error(COMP, 0, "retries.backoff_base: %llu ns (allowed: 1 ms..60 s)",
                          (unsigned long long)c->backoff_base_ns);
                return -EINVAL;
        }
        if (c->backoff_max_ns < c->backoff_base_ns || c->backoff_max_ns > 300 * LB_NS_PER_SEC) {
                log_error(COMP, 0, "retries.backoff_max: %llu ns (allowed: backoff_base..300 s)",
                          (unsigned long long)c->backoff_max_ns);
                return -EINVAL;
        }
        if (c->budget_percent > 100) {
                log_error(COMP, 0, "retries.budget_percent: %u (allowed: 0..100)",
                          c->budget_percent);
                return -EINVAL;
        }
        if (c->budget_min > LIMIT_MAX) {
                log_error(COMP, 0, "retries.budget_min: %u (allowed: 0..%u)", c->budget_min,
                          LIMIT_MAX);
                return -EINVAL;
        }
        return 0;
}

bool lb_method_idempotent(const char *m, size_t len)
{
        static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
        if (!m)
                return false;
        for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
                if (strlen(methods[i]) == len && memcmp(methods[i], m, len) == 0)
                        return true; /* methods are case-sensitive (RFC 9110 9.1) */
        return false;
}

bool lb_retry_should(const struct lb_retry_config *c, uint32_t attempt, enum lb_retry_cause cause,
                     int status, bool idempotent)
{
        if (attempt == 0 || attempt > c->max_retries)
                return false;
        switch (cause) {
        case LB_RETRY_CONNECT_FAILURE:
                return true;
        case LB_RETRY_RESET:
                return idempotent;
        case LB_RETRY_STATUS:
                return idempotent && c->retry_5xx &&
                       (status == 502 || status == 503 || status == 504);
        }
        return false;
}

uint64_t lb_retry_backoff(const struct lb_retry_config *c, uint32_t retry, uint64_t *rng)
{
        uint64_t d = c->backoff_max_ns;
        if (retry >= 1 && retry <= 20) {
                uint64_t e = c->backoff_base_ns << (retry - 1); /* base < 2^36: no overflow */
                if (e < d)
                        d = e;
        }
        *rng += 0x9e3779b97f4a7c15ull;
        uint64_t r = lb_mix64(*rng);
        uint64_t half = d / 2;
        return half + r % (d - half + 1);
}

void lb_retry_budget_init(struct lb_retry_budget *b)
{
        atomic_init(&b->in_flight, 0);
        atomic_init(&b->refused, 0);
}

uint32_t lb_retry_budget_limit(const struct lb_retry_config *c, uint32_t active)
{
        uint64_t lim = (uint64_t)active * c->budget_percent / 100;
        return lim > c->budget_min ? (uint32_t)lim : c->budget_min;
}

int lb_retry_budget_acquire(struct lb_retry_budget *b, const struct lb_retry_config *c,
                            uint32_t active)
{
        if (lb_slot_take(&b->in_flight, lb_retry_budget_limit(c, active)))
                return 0;
        atomic_fetch_add_explicit(&b->refused, 1, memory_order_relaxed);
        return LB_EBUDGET;
}

void lb_retry_budget_release(struct lb_retry_budget *b)
{
        give(&b->in_flight);
}

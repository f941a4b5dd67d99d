// SPDX-License-Identifier: Apache-2.0
/* One endpoint's resilience, assembled: admission of a pick (outlier
 * ejection, then the circuit breaker), the result of an attempt (breaker,
 * outlier detection) and the time-driven steps, each keeping the endpoint's
 * "available" flag (what picks consider) in line. Any thread, no lock; the
 * caller logs what the events say. */
#include "lb/lb.h"
#include "lb/resilience.h"

bool lb_ep_refresh(struct lb_ep_state *st, const struct lb_breaker_config *bc, uint64_t now)
{
        bool ok =
            lb_outlier_ep_until(&st->outlier) == 0 && lb_breaker_pickable(&st->breaker, bc, now);
        lb_ep_set_available(st, ok);
        return ok;
}

enum lb_admit lb_ep_admit(struct lb_ep_state *st, struct lb_service_res *r,
                          const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                          uint64_t now, struct lb_ep_events *ev)
{
        *ev = (struct lb_ep_events){0};
        uint64_t until = lb_outlier_ep_until(&st->outlier);
        if (until) {
                if (now < until)
                        return LB_ADMIT_REFUSED;
                ev->returned = lb_outlier_ep_expire(oc, &r->outlier, &st->outlier, now);
        }
        switch (lb_breaker_advance(&st->breaker, bc, now, &ev->half_open)) {
        case LB_BREAKER_CLOSED:
                return until == 0 || lb_ep_refresh(st, bc, now) ? LB_ADMIT_OK : LB_ADMIT_REFUSED;
        case LB_BREAKER_HALF_OPEN:
                if (lb_breaker_allow(&st->breaker, bc, now) < 0)
                        return LB_ADMIT_REFUSED;
                lb_ep_refresh(st, bc, now); /* the last free slot makes it unpickable */
                return LB_ADMIT_PROBE;
        default:
                return LB_ADMIT_REFUSED;
        }
}

void lb_ep_result(struct lb_ep_state *st, struct lb_service_res *r, uint32_t n_endpoints,
                  const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                  enum lb_outcome o, bool probe, uint64_t now, struct lb_ep_events *ev)
{
        *ev = (struct lb_ep_events){0};
        if (lb_breaker_peek(&st->breaker) == LB_BREAKER_OPEN)
                lb_breaker_advance(&st->breaker, bc, now, &ev->half_open);
        ev->before = lb_breaker_peek(&st->breaker);
        ev->after = lb_breaker_result(&st->breaker, bc, o == LB_OUTCOME_SUCCESS, probe, now);
        bool changed = ev->before != ev->after;
        if (r && !atomic_load_explicit(&st->gone, memory_order_relaxed) &&
            lb_outlier_ep_record(oc, &r->outlier, &st->outlier, n_endpoints, o, now) == 1) {
                ev->ejected = true;
                changed = true;
        }
        if (changed || probe || o != LB_OUTCOME_SUCCESS)
                lb_ep_refresh(st, bc, now);
}

void lb_ep_cancel(struct lb_ep_state *st, const struct lb_breaker_config *bc, uint64_t now)
{
        lb_breaker_cancel(&st->breaker);
        lb_ep_refresh(st, bc, now);
}

void lb_ep_tick(struct lb_ep_state *st, struct lb_service_res *r,
                const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                uint64_t now, struct lb_ep_events *ev)
{
        *ev = (struct lb_ep_events){0};
        ev->returned = lb_outlier_ep_expire(oc, &r->outlier, &st->outlier, now);
        lb_breaker_advance(&st->breaker, bc, now, &ev->half_open);
        lb_ep_refresh(st, bc, now);
}

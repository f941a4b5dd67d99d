/* Outlier detection: consecutive connect failures or 5xx eject an endpoint
 * for a time that grows with each ejection, under a cap on how many
 * endpoints of the service may be out at once. */
#include <stdlib.h>

#include "core/log.h"
#include "lb/resilience.h"

#define COMP "lb"

struct ep {
        uint32_t consecutive;
        uint32_t count; /* ejections, decaying */
        bool ejected;
        uint64_t until;
        uint64_t decay_from; /* when count last dropped or the endpoint returned */
};

struct lb_outlier {
        struct lb_outlier_config cfg;
        uint32_t n;
        uint32_t num_ejected;
        uint64_t skipped;
        struct ep eps[];
};

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

static void decay(const struct lb_outlier *o, struct ep *e, uint64_t now)
{
        while (e->count > 0 && now >= e->decay_from + o->cfg.max_ejection_ns) {
                e->count--;
                e->decay_from += o->cfg.max_ejection_ns;
        }
}

int lb_outlier_record(struct lb_outlier *o, uint32_t i, enum lb_outcome r, uint64_t now)
{
        if (i >= o->n) {
                log_error(COMP, 0, "outlier record: endpoint index %u out of range (%u endpoints)",
                          i, o->n);
                return -EINVAL;
        }
        struct ep *e = &o->eps[i];
        if (e->ejected)
                return 0; /* results of requests sent before the ejection */
        if (r == LB_OUTCOME_SUCCESS) {
                e->consecutive = 0;
                return 0;
        }
        if (r != LB_OUTCOME_CONNECT_FAILURE && r != LB_OUTCOME_5XX)
                return 0;
        if (++e->consecutive < o->cfg.consecutive_failures)
                return 0;
        e->consecutive = 0;
        if (o->num_ejected >= lb_outlier_max_ejected(o->n, o->cfg.max_ejection_percent)) {
                o->skipped++;
                return 0;
        }
        decay(o, e, now);
        e->count++;
        uint64_t d = o->cfg.base_ejection_ns * e->count; /* count <= 24 h / 1 ms: no overflow */
        if (d > o->cfg.max_ejection_ns || d / e->count != o->cfg.base_ejection_ns)
                d = o->cfg.max_ejection_ns;
        e->ejected = true;
        e->until = now + d;
        o->num_ejected++;
        return 1;
}

uint32_t lb_outlier_tick(struct lb_outlier *o, uint64_t now)
{
        uint32_t back = 0;
        for (uint32_t i = 0; i < o->n; i++) {
                struct ep *e = &o->eps[i];
                if (e->ejected && now >= e->until) {
                        e->ejected = false;
                        e->consecutive = 0;
                        e->decay_from = now;
                        o->num_ejected--;
                        back++;
                } else if (!e->ejected) {
                        decay(o, e, now);
                }
        }
        return back;
}

bool lb_outlier_ejected(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n && o->eps[i].ejected;
}

uint64_t lb_outlier_ejected_until(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n && o->eps[i].ejected ? o->eps[i].until : 0;
}

uint32_t lb_outlier_ejection_count(const struct lb_outlier *o, uint32_t i)
{
        return i < o->n ? o->eps[i].count : 0;
}

uint32_t lb_outlier_num_ejected(const struct lb_outlier *o)
{
        return o->num_ejected;
}

uint64_t lb_outlier_skipped(const struct lb_outlier *o)
{
        return o->skipped;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* Load-balancer internals shared by table.c (building) and pick.c
 * (selecting). Private to userspace/lb/. */
#ifndef SHUNT_LB_LB_INT_H
#define SHUNT_LB_LB_INT_H

#include "lb/lb.h"
#include "lb/resilience.h"

/* State shared by every table of one service (carried through prev). */
struct lb_shared {
        _Atomic uint32_t refs;
        /* Bumped whenever an endpoint's availability flips: workers re-check
         * the locality decision only then. */
        _Atomic uint64_t avail_gen;
        struct lb_service_res res;
        _Atomic uint64_t tier_picks[LB_TIERS_MAX];
};

struct lb_point {
        uint64_t hash;
        uint32_t ep; /* table index */
        uint32_t pad;
};

/* A candidate set: the healthy endpoints of the local zone, or of all zones. */
struct lb_set {
        uint32_t n;
        uint32_t *idx; /* table indices, ascending */
        /* weighted */
        uint32_t *w;     /* effective weights, parallel to idx */
        uint32_t *sched; /* one SWRR period of table indices, or NULL */
        uint32_t sched_len;
        /* consistent hash */
        struct lb_point *ring;
        uint32_t ring_len;
        uint64_t ring_unit; /* weight unit actually used (after scaling) */
        bool allzero;       /* every weight in the set is 0 */
        /* maglev */
        uint32_t *maglev; /* cfg.maglev_table_size table indices */
};

struct lb_table {
        struct snapshot snap;
        uint64_t serial;
        struct lb_config cfg;
        struct lb_shared *shared;
        struct lb_endpoint *eps;
        uint32_t n;
        uint32_t *keymap; /* open addressing: table index + 1, 0 = empty */
        uint32_t keymap_mask;
        bool keyed;           /* some endpoint has a key (lb_endpoint_in.key) */
        uint32_t local_total; /* endpoints in the local zone, healthy or not */
        uint32_t local_need;  /* available local endpoints needed to stay local */
        struct lb_set all, local;
        /* Locality tiers: n_tiers > 0 when cfg.local_region is set. */
        uint32_t n_tiers;
        uint32_t tier_total[LB_TIERS_MAX]; /* endpoints per tier, healthy or not */
        struct lb_set tier[LB_TIERS_MAX];
};

/* Candidate sets: all, the local zone's, then tier k at SET_TIER0 + k. */
enum { SET_ALL = 0, SET_LOCAL = 1, SET_TIER0 = 2, SET_COUNT = SET_TIER0 + LB_TIERS_MAX };

static inline const struct lb_set *lb_set_at(const struct lb_table *t, int which)
{
        return which == SET_ALL     ? &t->all
               : which == SET_LOCAL ? &t->local
                                    : &t->tier[which - SET_TIER0];
}

#endif

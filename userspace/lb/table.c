// SPDX-License-Identifier: Apache-2.0
/* Building load-balancer tables (main thread). */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/sockaddr.h"
#include "lb/lb-int.h"

#define COMP "lb"

/* SWRR schedules are precomputed while period * members stays below this
 * (the cost of simulating one period); larger ones are run per pick. */
#define SWRR_BUILD_WORK_MAX (1u << 24)

static _Atomic uint64_t next_serial = 1;

static const char *const algo_names[] = {
    [LB_ROUND_ROBIN] = "round_robin", [LB_LEAST_CONNECTIONS] = "least_connections",
    [LB_WEIGHTED] = "weighted",       [LB_CONSISTENT_HASH] = "consistent_hash",
    [LB_MAGLEV] = "maglev",
};

int lb_algorithm_parse(const char *name, enum lb_algorithm *out)
{
        for (size_t i = 0; i < sizeof(algo_names) / sizeof(algo_names[0]); i++) {
                if (name && strcmp(name, algo_names[i]) == 0) {
                        *out = (enum lb_algorithm)i;
                        return 0;
                }
        }
        log_error(COMP, 0,
                  "load_balancing.algorithm: unknown value \"%s\" (allowed: round_robin, "
                  "least_connections, weighted, consistent_hash, maglev)",
                  name ? name : "(null)");
        return -EINVAL;
}

const char *lb_algorithm_name(enum lb_algorithm a)
{
        if ((unsigned)a < sizeof(algo_names) / sizeof(algo_names[0]))
                return algo_names[a];
        return "unknown";
}

void lb_config_default(struct lb_config *cfg)
{
        memset(cfg, 0, sizeof(*cfg));
        cfg->algorithm = LB_ROUND_ROBIN;
        cfg->locality_min_percent = 70;
        cfg->ring_vnodes = 160;
        cfg->ring_weight_unit = 1;
        cfg->ring_max_points = 262144;
        cfg->maglev_table_size = 65537;
        cfg->p2c_threshold = 32;
        cfg->swrr_schedule_max = 65536;
        cfg->overprovisioning_percent = LB_OVERPROV_DEFAULT;
}

static bool is_prime(uint32_t v)
{
        if (v < 2)
                return false;
        for (uint32_t d = 2; (uint64_t)d * d <= v; d++)
                if (v % d == 0)
                        return false;
        return true;
}

int lb_config_validate(const struct lb_config *cfg)
{
        if ((unsigned)cfg->algorithm > LB_MAGLEV) {
                log_error(COMP, 0, "lb.algorithm: invalid value %d", (int)cfg->algorithm);
                return -EINVAL;
        }
        if (strnlen(cfg->local_zone, LB_ZONE_MAX) >= LB_ZONE_MAX) {
                log_error(COMP, 0, "lb.local_zone: longer than %d bytes", LB_ZONE_MAX - 1);
                return -EINVAL;
        }
        if (cfg->locality_min_percent > 100) {
                log_error(COMP, 0, "lb.locality_min_percent: %u (allowed: 0..100)",
                          cfg->locality_min_percent);
                return -EINVAL;
        }
        if (cfg->ring_vnodes < 1 || cfg->ring_vnodes > LB_RING_VNODES_MAX) {
                log_error(COMP, 0, "lb.ring_vnodes: %u (allowed: 1..%u)", cfg->ring_vnodes,
                          LB_RING_VNODES_MAX);
                return -EINVAL;
        }
        if (cfg->ring_weight_unit < 1 || cfg->ring_weight_unit > LB_WEIGHT_MAX) {
                log_error(COMP, 0, "lb.ring_weight_unit: %u (allowed: 1..%u)",
                          cfg->ring_weight_unit, LB_WEIGHT_MAX);
                return -EINVAL;
        }
        if (cfg->ring_max_points < LB_ENDPOINTS_MAX || cfg->ring_max_points > LB_RING_POINTS_MAX) {
                log_error(COMP, 0, "lb.ring_max_points: %u (allowed: %u..%u)", cfg->ring_max_points,
                          LB_ENDPOINTS_MAX, LB_RING_POINTS_MAX);
                return -EINVAL;
        }
        if (cfg->maglev_table_size <= LB_ENDPOINTS_MAX ||
            cfg->maglev_table_size > LB_MAGLEV_SIZE_MAX || !is_prime(cfg->maglev_table_size)) {
                log_error(COMP, 0,
                          "lb.maglev_table_size: %u (allowed: a prime in %u..%u, e.g. 65537)",
                          cfg->maglev_table_size, LB_ENDPOINTS_MAX + 1, LB_MAGLEV_SIZE_MAX);
                return -EINVAL;
        }
        if (cfg->p2c_threshold < 2 || cfg->p2c_threshold > LB_P2C_THRESHOLD_MAX) {
                log_error(COMP, 0, "lb.p2c_threshold: %u (allowed: 2..%u)", cfg->p2c_threshold,
                          LB_P2C_THRESHOLD_MAX);
                return -EINVAL;
        }
        if (strnlen(cfg->local_region, LB_ZONE_MAX) >= LB_ZONE_MAX ||
            cfg->n_failover > LB_FAILOVER_MAX) {
                log_error(COMP, 0, "lb.local_region / lb.failover: at most %d regions of %d bytes",
                          LB_FAILOVER_MAX, LB_ZONE_MAX - 1);
                return -EINVAL;
        }
        if (cfg->overprovisioning_percent < 100 || cfg->overprovisioning_percent > 1000) {
                log_error(COMP, 0, "lb.overprovisioning_percent: %u (allowed: 100..1000)",
                          cfg->overprovisioning_percent);
                return -EINVAL;
        }
        if (cfg->swrr_schedule_max > LB_SWRR_SCHEDULE_MAX) {
                log_error(COMP, 0, "lb.swrr_schedule_max: %u (allowed: 0..%u)",
                          cfg->swrr_schedule_max, LB_SWRR_SCHEDULE_MAX);
                return -EINVAL;
        }
        return 0;
}

/* ---- endpoint identity ---------------------------------------------------- */

static size_t addr_key(const struct sockaddr_storage *ss, unsigned char key[19])
{
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
                key[0] = 4;
                memcpy(key + 1, &a->sin_addr, 4);
                memcpy(key + 5, &a->sin_port, 2);
                return 7;
        }
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        key[0] = 6;
        memcpy(key + 1, &a->sin6_addr, 16);
        memcpy(key + 17, &a->sin6_port, 2);
        return 19;
}

/* Without a key, the hash of the address alone (the ids of tables built
 * before keys existed). */
static uint64_t addr_id(const struct sockaddr_storage *ss, uint64_t k)
{
        unsigned char key[19];
        size_t len = addr_key(ss, key);
        uint64_t id = lb_hash(key, len);
        return k ? lb_mix64(id ^ k) : id;
}

int lb_table_find_key(const struct lb_table *t, const struct sockaddr_storage *addr, uint64_t key)
{
        if (!t || (addr->ss_family != AF_INET && addr->ss_family != AF_INET6))
                return -ENOENT;
        uint64_t id = addr_id(addr, key);
        for (uint32_t i = (uint32_t)id & t->keymap_mask;; i = (i + 1) & t->keymap_mask) {
                uint32_t v = t->keymap[i];
                if (v == 0)
                        return -ENOENT;
                const struct lb_endpoint *e = &t->eps[v - 1];
                if (e->id == id && e->key == key && sockaddr_equal(&e->addr, addr))
                        return (int)(v - 1);
        }
}

int lb_table_find(const struct lb_table *t, const struct sockaddr_storage *addr)
{
        int i = lb_table_find_key(t, addr, 0);
        if (i >= 0 || !t || !t->keyed)
                return i;
        for (uint32_t k = 0; k < t->n; k++) /* keyed endpoints: by address alone */
                if (sockaddr_equal(&t->eps[k].addr, addr))
                        return (int)k;
        return -ENOENT;
}

/* ---- shared state --------------------------------------------------------- */

static void shared_unref(struct lb_shared *s)
{
        if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
                free(s);
}

static void state_ref(struct lb_ep_state *st)
{
        atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
}

static void state_unref(struct lb_ep_state *st)
{
        if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) == 1) {
                shared_unref(st->shared);
                free(st);
        }
}

struct lb_service_res *lb_table_res(const struct lb_table *t)
{
        return &t->shared->res;
}

void lb_ep_set_available(struct lb_ep_state *st, bool available)
{
        uint32_t v = available ? 1 : 0;
        /* A plain load first: results call this on every failure, and a
         * write would bounce the line between workers for nothing. */
        if (atomic_load_explicit(&st->available, memory_order_relaxed) == v)
                return;
        if (atomic_exchange_explicit(&st->available, v, memory_order_relaxed) != v)
                atomic_fetch_add_explicit(&st->shared->avail_gen, 1, memory_order_release);
}

void lb_conn_begin(struct lb_ep_state *st)
{
        state_ref(st);
        atomic_fetch_add_explicit(&st->active, 1, memory_order_relaxed);
}

void lb_conn_end(struct lb_ep_state *st)
{
        atomic_fetch_sub_explicit(&st->active, 1, memory_order_relaxed);
        state_unref(st);
}

/* ---- table lifetime ------------------------------------------------------- */

static void set_free(struct lb_set *s)
{
        free(s->idx);
        free(s->w);
        free(s->sched);
        free(s->ring);
        free(s->maglev);
        memset(s, 0, sizeof(*s));
}

static void table_free(struct lb_table *t)
{
        for (uint32_t i = 0; i < t->n; i++)
                if (t->eps[i].state)
                        state_unref(t->eps[i].state);
        set_free(&t->all);
        set_free(&t->local);
        for (uint32_t k = 0; k < LB_TIERS_MAX; k++)
                set_free(&t->tier[k]);
        free(t->eps);
        free(t->keymap);
        if (t->shared)
                shared_unref(t->shared);
        free(t);
}

static void table_destroy(struct snapshot *s)
{
        table_free((struct lb_table *)((char *)s - offsetof(struct lb_table, snap)));
}

struct snapshot *lb_table_snapshot(struct lb_table *t)
{
        return &t->snap;
}

struct lb_table *lb_table_from_snapshot(struct snapshot *s)
{
        return s ? (struct lb_table *)((char *)s - offsetof(struct lb_table, snap)) : NULL;
}

void lb_table_unref(struct lb_table *t)
{
        if (t)
                snapshot_unref(&t->snap);
}

size_t lb_table_count(const struct lb_table *t)
{
        return t->n;
}

const struct lb_endpoint *lb_table_endpoint(const struct lb_table *t, size_t i)
{
        return i < t->n ? &t->eps[i] : NULL;
}

uint64_t lb_table_serial(const struct lb_table *t)
{
        return t->serial;
}

size_t lb_table_hash_size(const struct lb_table *t)
{
        if (t->cfg.algorithm == LB_CONSISTENT_HASH)
                return t->all.ring_len;
        if (t->cfg.algorithm == LB_MAGLEV && t->all.maglev)
                return t->cfg.maglev_table_size;
        return 0;
}

/* ---- weights -------------------------------------------------------------- */

static uint64_t gcd64(uint64_t a, uint64_t b)
{
        while (b) {
                uint64_t r = a % b;
                a = b;
                b = r;
        }
        return a;
}

/* Effective weights: every weight as given, or all 1 when all are 0. */
static int set_weights(const struct lb_table *t, struct lb_set *s)
{
        s->w = calloc(s->n ? s->n : 1, sizeof(*s->w));
        if (!s->w)
                return -ENOMEM;
        s->allzero = true;
        for (uint32_t k = 0; k < s->n; k++)
                if (t->eps[s->idx[k]].weight)
                        s->allzero = false;
        for (uint32_t k = 0; k < s->n; k++)
                s->w[k] = s->allzero ? 1 : t->eps[s->idx[k]].weight;
        return 0;
}

/* One period of nginx's smooth weighted round robin: every step each member
 * gains its weight, the largest current weight wins (first in order on a tie)
 * and loses the total. Weights are divided by their gcd first, so the period
 * is sum(w)/gcd and the schedule is exact.
 *
 * The period is bounded by P = min(swrr_schedule_max, SWRR_BUILD_WORK_MAX /
 * members) (memory, and build time on the main thread). A longer exact period
 * is scaled to fit: each positive weight becomes max(1, round(w * P / sum)),
 * so every share is exact to within half a unit of the scaled weight. Only
 * when the members do not fit even at one unit each (members > P) is sched
 * left NULL: picks then run the same algorithm per worker, O(members). */
static int build_swrr(const struct lb_table *t, struct lb_set *s)
{
        uint64_t g = 0, sum = 0;
        uint32_t np = 0;
        for (uint32_t k = 0; k < s->n; k++) {
                if (s->w[k]) {
                        g = gcd64(s->w[k], g);
                        np++;
                }
        }
        if (g == 0)
                return 0;
        uint64_t bound = SWRR_BUILD_WORK_MAX / np;
        if (bound > t->cfg.swrr_schedule_max)
                bound = t->cfg.swrr_schedule_max;
        if (np > bound)
                return 0;
        uint32_t *pos = malloc(np * sizeof(*pos)); /* positive members */
        int64_t *w = malloc(np * sizeof(*w));
        int64_t *cw = calloc(np, sizeof(*cw));
        if (!pos || !w || !cw)
                goto nomem;
        np = 0;
        for (uint32_t k = 0; k < s->n; k++) {
                if (s->w[k]) {
                        pos[np] = s->idx[k];
                        w[np] = s->w[k] / g;
                        sum += (uint64_t)w[np];
                        np++;
                }
        }
        if (sum > bound) {
                uint64_t raw = sum;
                sum = 0;
                for (uint32_t j = 0; j < np; j++) {
                        uint64_t v = ((uint64_t)w[j] * bound * 2 + raw) / (2 * raw);
                        w[j] = v ? (int64_t)v : 1;
                        sum += (uint64_t)w[j];
                }
                /* Rounding up and the floor of 1 may overshoot a little:
                 * still at most bound + np <= 2 * bound steps. */
        }
        s->sched = malloc(sum * sizeof(*s->sched));
        if (!s->sched)
                goto nomem;
        for (uint64_t step = 0; step < sum; step++) {
                for (uint32_t j = 0; j < np; j++)
                        cw[j] += w[j];
                uint32_t best = 0;
                for (uint32_t j = 1; j < np; j++)
                        if (cw[j] > cw[best])
                                best = j;
                cw[best] -= (int64_t)sum;
                s->sched[step] = pos[best];
        }
        s->sched_len = (uint32_t)sum;
        free(pos);
        free(w);
        free(cw);
        return 0;
nomem:
        free(pos);
        free(w);
        free(cw);
        return -ENOMEM;
}

/* ---- ring hash ------------------------------------------------------------ */

static uint64_t ring_points_for(uint32_t weight, bool allzero, uint32_t vnodes, uint64_t unit)
{
        if (allzero)
                weight = 1;
        if (weight == 0)
                return 0;
        uint64_t p = ((uint64_t)vnodes * weight + unit - 1) / unit;
        return p ? p : 1;
}

static uint64_t ring_point_hash(uint64_t id, uint64_t replica)
{
        return lb_mix64(id ^ lb_mix64(replica * 0x9e3779b97f4a7c15ull + 1));
}

static int point_cmp(const void *a, const void *b, void *arg)
{
        const struct lb_point *x = a, *y = b;
        const struct lb_endpoint *eps = arg;
        if (x->hash != y->hash)
                return x->hash < y->hash ? -1 : 1;
        uint64_t ix = eps[x->ep].id, iy = eps[y->ep].id;
        if (ix != iy)
                return ix < iy ? -1 : 1;
        return 0;
}

/* Endpoints keep their points when the ring is rebuilt: a point's position
 * depends only on the endpoint's address and the replica number, and an
 * endpoint with k points has replicas 0..k-1. Building from prev copies the
 * surviving points (already sorted), generates only the new endpoints' points
 * and merges. If the total would pass ring_max_points the weight unit doubles
 * until it fits (each endpoint then keeps a prefix of its replicas). */
static int build_ring(const struct lb_table *t, struct lb_set *s, const struct lb_table *prev,
                      const struct lb_set *ps, const int32_t *prev_to_new)
{
        const struct lb_config *c = &t->cfg;
        uint64_t unit = c->ring_weight_unit, total;
        for (;;) {
                total = 0;
                for (uint32_t k = 0; k < s->n; k++)
                        total += ring_points_for(t->eps[s->idx[k]].weight, s->allzero,
                                                 c->ring_vnodes, unit);
                if (total <= c->ring_max_points)
                        break;
                unit *= 2;
        }
        s->ring_unit = unit;
        if (total == 0)
                return 0;
        s->ring = malloc(total * sizeof(*s->ring));
        if (!s->ring)
                return -ENOMEM;

        bool incremental = prev && ps && ps->ring && ps->ring_unit == unit &&
                           prev->cfg.ring_vnodes == c->ring_vnodes;
        /* kept[k]: member k's points come from prev's ring. */
        unsigned char *kept = calloc(s->n ? s->n : 1, 1);
        uint32_t *pos_of = NULL;
        if (!kept)
                return -ENOMEM;
        if (incremental) {
                pos_of = malloc(t->n * sizeof(*pos_of));
                if (!pos_of) {
                        free(kept);
                        return -ENOMEM;
                }
                for (uint32_t i = 0; i < t->n; i++)
                        pos_of[i] = UINT32_MAX;
                for (uint32_t k = 0; k < s->n; k++)
                        pos_of[s->idx[k]] = k;
                /* A previous member is kept when it is still a member with the
                 * same number of points. */
                for (uint32_t pk = 0; pk < ps->n; pk++) {
                        uint32_t pi = ps->idx[pk];
                        int32_t ni = prev_to_new[pi];
                        if (ni < 0 || pos_of[ni] == UINT32_MAX)
                                continue;
                        uint64_t before = ring_points_for(prev->eps[pi].weight, ps->allzero,
                                                          c->ring_vnodes, unit);
                        uint64_t after =
                            ring_points_for(t->eps[ni].weight, s->allzero, c->ring_vnodes, unit);
                        if (before == after)
                                kept[pos_of[ni]] = 1;
                }
        }

        /* Fresh points of the members not kept, sorted. */
        uint64_t nfresh = 0;
        for (uint32_t k = 0; k < s->n; k++) {
                if (kept[k])
                        continue;
                uint32_t i = s->idx[k];
                uint64_t p = ring_points_for(t->eps[i].weight, s->allzero, c->ring_vnodes, unit);
                for (uint64_t r = 0; r < p; r++) {
                        s->ring[nfresh].hash = ring_point_hash(t->eps[i].id, r);
                        s->ring[nfresh].ep = i;
                        s->ring[nfresh].pad = 0;
                        nfresh++;
                }
        }
        qsort_r(s->ring, nfresh, sizeof(*s->ring), point_cmp, t->eps);

        if (incremental && nfresh < total) {
                /* Surviving points in prev's order, renumbered. */
                struct lb_point *old = malloc((total - nfresh) * sizeof(*old));
                if (!old) {
                        free(kept);
                        free(pos_of);
                        return -ENOMEM;
                }
                uint64_t nold = 0;
                for (uint32_t j = 0; j < ps->ring_len; j++) {
                        int32_t ni = prev_to_new[ps->ring[j].ep];
                        if (ni < 0 || pos_of[ni] == UINT32_MAX || !kept[pos_of[ni]])
                                continue;
                        old[nold] = ps->ring[j];
                        old[nold].ep = (uint32_t)ni;
                        nold++;
                }
                /* Merge from the back into s->ring. */
                int64_t a = (int64_t)nfresh - 1, b = (int64_t)nold - 1, o = (int64_t)total - 1;
                while (b >= 0) {
                        if (a >= 0 && point_cmp(&s->ring[a], &old[b], t->eps) > 0)
                                s->ring[o--] = s->ring[a--];
                        else
                                s->ring[o--] = old[b--];
                }
                free(old);
        }
        s->ring_len = (uint32_t)total;
        free(kept);
        free(pos_of);
        return 0;
}

/* ---- maglev --------------------------------------------------------------- */

struct member {
        uint64_t id;
        uint32_t k; /* position in the set */
};

static int member_cmp(const void *a, const void *b)
{
        uint64_t x = ((const struct member *)a)->id, y = ((const struct member *)b)->id;
        return x < y ? -1 : x > y;
}

/* Maglev (Eisenbud et al., NSDI 2016): each member walks its own permutation
 * of the M slots (offset + j * skip mod M, M prime) and claims the next free
 * slot in turn. Weighted: in round r a member claims a slot only while it holds
 * fewer than r * w / wmax. Members take turns in order of their id, so the
 * table does not depend on the order of the input list. */
static int build_maglev(const struct lb_table *t, struct lb_set *s)
{
        const uint32_t m = t->cfg.maglev_table_size;
        uint32_t nm = 0, wmax = 0;
        for (uint32_t k = 0; k < s->n; k++) {
                if (s->w[k]) {
                        nm++;
                        if (s->w[k] > wmax)
                                wmax = s->w[k];
                }
        }
        if (nm == 0)
                return 0;
        struct member *order = malloc(nm * sizeof(*order));
        uint32_t *wt = malloc(nm * sizeof(*wt));
        uint64_t *next = malloc(nm * sizeof(*next));
        uint64_t *skip = malloc(nm * sizeof(*skip));
        uint64_t *taken = calloc(nm, sizeof(*taken));
        s->maglev = malloc((size_t)m * sizeof(*s->maglev));
        int rc = -ENOMEM;
        if (!order || !wt || !next || !skip || !taken || !s->maglev)
                goto out;
        nm = 0;
        for (uint32_t k = 0; k < s->n; k++)
                if (s->w[k])
                        order[nm++] = (struct member){.id = t->eps[s->idx[k]].id, .k = k};
        qsort(order, nm, sizeof(*order), member_cmp);
        for (uint32_t j = 0; j < nm; j++) {
                uint64_t id = order[j].id;
                wt[j] = s->w[order[j].k];
                next[j] = lb_mix64(id ^ 0x5851f42d4c957f2dull) % m;
                skip[j] = lb_mix64(id ^ 0x14057b7ef767814full) % (m - 1) + 1;
        }
        for (uint32_t i = 0; i < m; i++)
                s->maglev[i] = UINT32_MAX;
        uint32_t filled = 0;
        for (uint64_t round = 1; filled < m; round++) {
                for (uint32_t j = 0; j < nm && filled < m; j++) {
                        if (taken[j] * wmax >= round * wt[j])
                                continue;
                        while (s->maglev[next[j]] != UINT32_MAX)
                                next[j] = (next[j] + skip[j]) % m;
                        s->maglev[next[j]] = s->idx[order[j].k];
                        next[j] = (next[j] + skip[j]) % m;
                        taken[j]++;
                        filled++;
                }
        }
        rc = 0;
out:
        free(order);
        free(wt);
        free(next);
        free(skip);
        free(taken);
        return rc;
}

/* ---- build ---------------------------------------------------------------- */

static bool in_set(const struct lb_endpoint *e, int which)
{
        return which == SET_ALL || (which == SET_LOCAL ? e->local : e->tier == which - SET_TIER0);
}

static int build_set(struct lb_table *t, int which, const struct lb_table *prev,
                     const int32_t *prev_to_new)
{
        struct lb_set *s = (struct lb_set *)lb_set_at(t, which);
        const struct lb_set *ps = prev ? lb_set_at(prev, which) : NULL;
        s->idx = malloc((t->n ? t->n : 1) * sizeof(*s->idx));
        if (!s->idx)
                return -ENOMEM;
        for (uint32_t i = 0; i < t->n; i++)
                if (t->eps[i].healthy && in_set(&t->eps[i], which))
                        s->idx[s->n++] = i;
        int rc = set_weights(t, s);
        if (rc < 0)
                return rc;
        switch (t->cfg.algorithm) {
        case LB_WEIGHTED:
                return build_swrr(t, s);
        case LB_CONSISTENT_HASH:
                return build_ring(t, s, prev, ps, prev_to_new);
        case LB_MAGLEV:
                return build_maglev(t, s);
        default:
                return 0;
        }
}

/* ---- locality tiers ------------------------------------------------------- */

static uint8_t tier_of(const struct lb_config *c, const struct lb_endpoint_in *in)
{
        if (strcmp(in->region, c->local_region) == 0)
                return c->local_zone[0] && strcmp(in->zone, c->local_zone) ? 1 : 0;
        for (uint32_t k = 0; k < c->n_failover; k++)
                if (strcmp(in->region, c->failover[k]) == 0)
                        return (uint8_t)(2 + k);
        return (uint8_t)(2 + c->n_failover);
}

static bool same_tiers(const struct lb_config *a, const struct lb_config *b)
{
        if (strcmp(a->local_region, b->local_region) || a->n_failover != b->n_failover)
                return false;
        for (uint32_t k = 0; k < a->n_failover; k++)
                if (strcmp(a->failover[k], b->failover[k]))
                        return false;
        return true;
}

void lb_tier_loads(const uint32_t *avail, const uint32_t *total, uint32_t n,
                   uint32_t overprov_percent, uint32_t *loads_bp)
{
        uint32_t health[LB_TIERS_MAX];
        uint64_t sum = 0;
        if (n > LB_TIERS_MAX)
                n = LB_TIERS_MAX;
        for (uint32_t k = 0; k < n; k++) {
                /* basis points: avail / total * factor, at most 100 % */
                uint64_t h = total[k] ? (uint64_t)avail[k] * overprov_percent * 100 / total[k] : 0;
                health[k] = h > 10000 ? 10000 : (uint32_t)h;
                sum += health[k];
        }
        if (sum == 0) {
                memset(loads_bp, 0, n * sizeof(*loads_bp));
                return;
        }
        if (sum >= 10000) { /* in order, each what it can take of what is left */
                uint32_t left = 10000;
                for (uint32_t k = 0; k < n; k++) {
                        loads_bp[k] = health[k] < left ? health[k] : left;
                        left -= loads_bp[k];
                }
                return;
        }
        /* Degraded: the healths scaled up to 100 %; the rounding's remainder
         * goes to the first tier with any health. */
        uint32_t given = 0, first = UINT32_MAX;
        for (uint32_t k = 0; k < n; k++) {
                loads_bp[k] = (uint32_t)((uint64_t)health[k] * 10000 / sum);
                given += loads_bp[k];
                if (health[k] && first == UINT32_MAX)
                        first = k;
        }
        loads_bp[first] += 10000 - given;
}

const char *lb_tier_name(uint32_t n_failover, uint32_t k)
{
        static const char *const names[] = {"local",     "region",    "failover1", "failover2",
                                            "failover3", "failover4", "failover5"};
        if (k == 2 + n_failover)
                return "remote";
        return k < sizeof(names) / sizeof(names[0]) ? names[k] : "remote";
}

uint32_t lb_table_tiers(const struct lb_table *t)
{
        return t->n_tiers;
}

void lb_table_tier_state(const struct lb_table *t, uint32_t k, uint32_t *total, uint32_t *avail,
                         uint32_t *load_bp)
{
        uint32_t av[LB_TIERS_MAX] = {0}, loads[LB_TIERS_MAX] = {0};
        for (uint32_t j = 0; j < t->n_tiers; j++)
                for (uint32_t m = 0; m < t->tier[j].n; m++)
                        av[j] += lb_ep_available(t->eps[t->tier[j].idx[m]].state);
        lb_tier_loads(av, t->tier_total, t->n_tiers, t->cfg.overprovisioning_percent, loads);
        *total = k < t->n_tiers ? t->tier_total[k] : 0;
        *avail = k < t->n_tiers ? av[k] : 0;
        *load_bp = k < t->n_tiers ? loads[k] : 0;
}

/* The counters are kept per tier name, not per index: "remote" is index
 * 2 + n_failover, so a reload that changes load_balancing.failover moves
 * it, and a table of each layout may count at once (old connections). The
 * slot of "remote" is the last one whatever the layout. */
static uint32_t tier_slot(const struct lb_table *t, uint32_t k)
{
        return k >= 2 + t->cfg.n_failover ? LB_TIERS_MAX - 1 : k;
}

void lb_table_tier_picked(const struct lb_table *t, uint32_t k)
{
        if (k < t->n_tiers)
                atomic_fetch_add_explicit(&t->shared->tier_picks[tier_slot(t, k)], 1,
                                          memory_order_relaxed);
}

uint64_t lb_table_tier_picks(const struct lb_table *t, uint32_t k)
{
        return k < t->n_tiers ? atomic_load_explicit(&t->shared->tier_picks[tier_slot(t, k)],
                                                     memory_order_relaxed)
                              : 0;
}

static int check_endpoint(const struct lb_endpoint_in *in, size_t i)
{
        if (in->addr.ss_family != AF_INET && in->addr.ss_family != AF_INET6) {
                log_error(COMP, 0, "endpoint %zu: address family %d is not IPv4 or IPv6", i,
                          (int)in->addr.ss_family);
                return -EINVAL;
        }
        char buf[SOCKADDR_STRLEN];
        if (in->weight > LB_WEIGHT_MAX) {
                log_error(COMP, 0, "endpoint %s: weight %u (allowed: 0..%u)",
                          sockaddr_format(&in->addr, buf, sizeof(buf)), in->weight, LB_WEIGHT_MAX);
                return -EINVAL;
        }
        if (strnlen(in->zone, LB_ZONE_MAX) >= LB_ZONE_MAX ||
            strnlen(in->region, LB_ZONE_MAX) >= LB_ZONE_MAX) {
                log_error(COMP, 0, "endpoint %s: zone or region longer than %d bytes",
                          sockaddr_format(&in->addr, buf, sizeof(buf)), LB_ZONE_MAX - 1);
                return -EINVAL;
        }
        return 0;
}

int lb_table_build(const struct lb_config *cfg, const struct lb_endpoint_in *eps, size_t n,
                   const struct lb_table *prev, struct lb_table **out)
{
        *out = NULL;
        int rc = lb_config_validate(cfg);
        if (rc < 0)
                return rc;
        if (n > LB_ENDPOINTS_MAX) {
                log_error(COMP, 0, "endpoint list: %zu endpoints (allowed: at most %u)", n,
                          LB_ENDPOINTS_MAX);
                return -EINVAL;
        }
        if (n > 0 && !eps) {
                log_error(COMP, 0, "endpoint list: NULL with %zu endpoints", n);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                if ((rc = check_endpoint(&eps[i], i)) < 0)
                        return rc;

        struct lb_table *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        snapshot_init(&t->snap, table_destroy);
        t->serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed);
        t->cfg = *cfg;
        t->n = (uint32_t)n;
        int32_t *prev_to_new = NULL;
        rc = -ENOMEM;

        if (prev) {
                t->shared = prev->shared;
                atomic_fetch_add_explicit(&t->shared->refs, 1, memory_order_relaxed);
        } else {
                t->shared = calloc(1, sizeof(*t->shared));
                if (!t->shared)
                        goto fail;
                atomic_init(&t->shared->refs, 1);
                atomic_init(&t->shared->avail_gen, 1);
                struct lb_limits_config lc;
                lb_limits_config_default(&lc);
                lb_limits_init(&t->shared->res.limits, &lc);
                lb_retry_budget_init(&t->shared->res.budget);
        }

        uint32_t cap = 4;
        while (cap < 2 * t->n)
                cap *= 2;
        t->keymap = calloc(cap, sizeof(*t->keymap));
        t->keymap_mask = cap - 1;
        t->eps = calloc(n ? n : 1, sizeof(*t->eps));
        if (!t->keymap || !t->eps)
                goto fail;

        for (uint32_t i = 0; i < t->n; i++) {
                struct lb_endpoint *e = &t->eps[i];
                e->addr = eps[i].addr;
                e->key = eps[i].key;
                e->ref = eps[i].ref;
                e->id = addr_id(&e->addr, e->key);
                t->keyed |= e->key != 0;
                e->weight = eps[i].weight;
                e->healthy = eps[i].healthy;
                memcpy(e->zone, eps[i].zone, sizeof(e->zone));
                e->local = cfg->local_zone[0] && strcmp(e->zone, cfg->local_zone) == 0;
                if (e->local)
                        t->local_total++;
                if (cfg->local_region[0]) {
                        e->tier = tier_of(cfg, &eps[i]);
                        t->tier_total[e->tier]++;
                }
                if (lb_table_find_key(t, &e->addr, e->key) >= 0) {
                        char buf[SOCKADDR_STRLEN];
                        log_error(COMP, 0, "endpoint %s: listed twice",
                                  sockaddr_format(&e->addr, buf, sizeof(buf)));
                        rc = -EINVAL;
                        goto fail;
                }
                uint32_t slot = (uint32_t)e->id & t->keymap_mask;
                while (t->keymap[slot])
                        slot = (slot + 1) & t->keymap_mask;
                t->keymap[slot] = i + 1;

                int pi = prev ? lb_table_find_key(prev, &e->addr, e->key) : -ENOENT;
                if (pi >= 0) {
                        e->state = prev->eps[pi].state;
                        state_ref(e->state);
                } else {
                        e->state = calloc(1, sizeof(*e->state));
                        if (!e->state)
                                goto fail;
                        atomic_init(&e->state->refs, 1);
                        atomic_init(&e->state->active, 0);
                        atomic_init(&e->state->available, 1);
                        lb_breaker_init(&e->state->breaker, e->id, 0);
                        e->state->shared = t->shared;
                        atomic_fetch_add_explicit(&t->shared->refs, 1, memory_order_relaxed);
                }
        }
        uint64_t need = ((uint64_t)cfg->locality_min_percent * t->local_total + 99) / 100;
        t->local_need = need > 0 ? (uint32_t)need : 1;

        t->n_tiers = cfg->local_region[0] ? cfg->n_failover + 3 : 0;
        bool same_ring = prev && prev->cfg.algorithm == LB_CONSISTENT_HASH &&
                         cfg->algorithm == LB_CONSISTENT_HASH &&
                         strcmp(prev->cfg.local_zone, cfg->local_zone) == 0 &&
                         same_tiers(&prev->cfg, cfg);
        if (same_ring) {
                prev_to_new = malloc((prev->n ? prev->n : 1) * sizeof(*prev_to_new));
                if (!prev_to_new)
                        goto fail;
                for (uint32_t i = 0; i < prev->n; i++)
                        prev_to_new[i] = lb_table_find_key(t, &prev->eps[i].addr, prev->eps[i].key);
        }
        rc = build_set(t, SET_ALL, same_ring ? prev : NULL, prev_to_new);
        if (rc == 0 && cfg->local_zone[0] && !t->n_tiers)
                rc = build_set(t, SET_LOCAL, same_ring ? prev : NULL, prev_to_new);
        for (uint32_t k = 0; rc == 0 && k < t->n_tiers; k++)
                rc = build_set(t, SET_TIER0 + (int)k, same_ring ? prev : NULL, prev_to_new);
        if (rc < 0)
                goto fail;
        /* Endpoints that left the service: out of its ejection count, and
         * late results of their connections no longer count. */
        for (uint32_t i = 0; prev && i < prev->n; i++) {
                if (lb_table_find_key(t, &prev->eps[i].addr, prev->eps[i].key) >= 0)
                        continue;
                struct lb_ep_state *st = prev->eps[i].state;
                atomic_store_explicit(&st->gone, 1, memory_order_relaxed);
                lb_outlier_ep_release(&t->shared->res.outlier, &st->outlier);
        }
        free(prev_to_new);
        *out = t;
        return 0;
fail:
        if (rc == -ENOMEM)
                log_error(COMP, 0, "table for %zu endpoints: out of memory", n);
        free(prev_to_new);
        table_free(t);
        return rc;
}

// SPDX-License-Identifier: Apache-2.0
/* Picking an endpoint (worker threads): no locks, no read-modify-write
 * atomics; only relaxed loads of the shared per-endpoint flags and counts. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "lb/lb-int.h"

#define COMP "lb"

/* Least connections: random pairs tried before an exact scan when the drawn
 * endpoints are unavailable. */
#define P2C_TRIES 4

struct wset {
        uint32_t rr;    /* next position in idx */
        uint32_t sched; /* next position in the SWRR schedule */
        uint32_t lc;    /* rotation start of the least-connections scan */
        int64_t *cw;    /* SWRR current weights when the set has no schedule */
        uint32_t cw_n;
};

struct lb_worker {
        uint64_t rng;
        uint64_t serial; /* table the state below belongs to; 0 = none */
        uint64_t avail_gen;
        bool use_local;
        uint32_t cum[LB_TIERS_MAX]; /* tiers: cumulative loads in basis points */
        struct wset s[SET_COUNT];
};

static uint64_t rnd(struct lb_worker *w)
{
        w->rng += 0x9e3779b97f4a7c15ull;
        uint64_t z = w->rng;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is below
 * n / 2^64). */
static uint32_t rnd_below(struct lb_worker *w, uint32_t n)
{
        return (uint32_t)(((unsigned __int128)rnd(w) * n) >> 64);
}

struct lb_worker *lb_worker_new(uint64_t seed)
{
        struct lb_worker *w = calloc(1, sizeof(*w));
        if (!w) {
                log_error(COMP, 0, "worker state: out of memory");
                return NULL;
        }
        w->rng = seed;
        return w;
}

void lb_worker_free(struct lb_worker *w)
{
        if (!w)
                return;
        for (int k = 0; k < SET_COUNT; k++)
                free(w->s[k].cw);
        free(w);
}

static int wset_bind(struct lb_worker *w, struct wset *ws, const struct lb_set *s,
                     enum lb_algorithm algo)
{
        /* Start at a random place so that workers (and successive tables) do
         * not all begin with the first endpoint. */
        ws->rr = s->n ? rnd_below(w, s->n) : 0;
        ws->lc = s->n ? rnd_below(w, s->n) : 0;
        ws->sched = s->sched_len ? rnd_below(w, s->sched_len) : 0;
        if (algo == LB_WEIGHTED && !s->sched && s->n) {
                if (ws->cw_n < s->n) {
                        int64_t *cw = realloc(ws->cw, s->n * sizeof(*cw));
                        if (!cw) {
                                log_error(COMP, 0, "weighted state for %u endpoints: out of memory",
                                          s->n);
                                return -ENOMEM;
                        }
                        ws->cw = cw;
                        ws->cw_n = s->n;
                }
                memset(ws->cw, 0, s->n * sizeof(*ws->cw));
        }
        return 0;
}

static int worker_bind(struct lb_worker *w, const struct lb_table *t)
{
        w->serial = 0;
        for (int k = 0; k < SET_TIER0 + (int)t->n_tiers; k++) {
                int rc = wset_bind(w, &w->s[k], lb_set_at(t, k), t->cfg.algorithm);
                if (rc < 0)
                        return rc;
        }
        w->serial = t->serial;
        w->avail_gen = 0; /* never a real generation: forces the locality check */
        return 0;
}

static inline bool avail(const struct lb_table *t, uint32_t i)
{
        return lb_ep_available(t->eps[i].state);
}

static int pick_rr(const struct lb_table *t, const struct lb_set *s, struct wset *ws)
{
        uint32_t pos = ws->rr;
        for (uint32_t k = 0; k < s->n; k++) {
                if (pos >= s->n)
                        pos = 0;
                uint32_t i = s->idx[pos];
                if (avail(t, i)) {
                        ws->rr = pos + 1;
                        return (int)i;
                }
                pos++;
        }
        return LB_ENOENDPOINT;
}

/* Exact scan from a rotating start: the first least-loaded endpoint after the
 * previous winner wins, so equal loads rotate. */
static int pick_lc_scan(const struct lb_table *t, const struct lb_set *s, struct wset *ws)
{
        uint32_t pos = ws->lc, best_pos = UINT32_MAX;
        int32_t best = INT32_MAX;
        for (uint32_t k = 0; k < s->n; k++, pos++) {
                if (pos >= s->n)
                        pos = 0;
                uint32_t i = s->idx[pos];
                if (!avail(t, i))
                        continue;
                int32_t a = lb_ep_active(t->eps[i].state);
                if (best_pos == UINT32_MAX || a < best) {
                        best = a;
                        best_pos = pos;
                }
        }
        if (best_pos == UINT32_MAX)
                return LB_ENOENDPOINT;
        ws->lc = best_pos + 1;
        return (int)s->idx[best_pos];
}

static int pick_lc(struct lb_worker *w, const struct lb_table *t, const struct lb_set *s,
                   struct wset *ws)
{
        if (s->n <= t->cfg.p2c_threshold)
                return pick_lc_scan(t, s, ws);
        for (int tries = 0; tries < P2C_TRIES; tries++) {
                uint32_t pa = rnd_below(w, s->n);
                uint32_t pb = rnd_below(w, s->n - 1);
                if (pb >= pa) /* distinct from pa, uniform over the rest */
                        pb++;
                uint32_t a = s->idx[pa], b = s->idx[pb];
                bool va = avail(t, a), vb = avail(t, b);
                if (va && vb)
                        return lb_ep_active(t->eps[b].state) < lb_ep_active(t->eps[a].state)
                                   ? (int)b
                                   : (int)a;
                if (va)
                        return (int)a;
                if (vb)
                        return (int)b;
        }
        return pick_lc_scan(t, s, ws);
}

static int pick_swrr(const struct lb_table *t, const struct lb_set *s, struct wset *ws)
{
        if (s->sched) {
                uint32_t pos = ws->sched;
                for (uint32_t k = 0; k < s->sched_len; k++) {
                        if (pos >= s->sched_len)
                                pos = 0;
                        uint32_t i = s->sched[pos++];
                        if (avail(t, i)) {
                                ws->sched = pos;
                                return (int)i;
                        }
                }
        } else if (ws->cw) {
                /* nginx's algorithm over the available members. */
                int64_t total = 0;
                uint32_t best = UINT32_MAX;
                for (uint32_t k = 0; k < s->n; k++) {
                        if (!s->w[k] || !avail(t, s->idx[k]))
                                continue;
                        ws->cw[k] += s->w[k];
                        total += s->w[k];
                        if (best == UINT32_MAX || ws->cw[k] > ws->cw[best])
                                best = k;
                }
                if (best != UINT32_MAX) {
                        ws->cw[best] -= total;
                        return (int)s->idx[best];
                }
        }
        return LB_ENOENDPOINT;
}

static int pick_ring(const struct lb_table *t, const struct lb_set *s, uint64_t h)
{
        if (!s->ring_len)
                return LB_ENOENDPOINT;
        /* First point at or after h, wrapping. */
        uint32_t lo = 0, hi = s->ring_len;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (s->ring[mid].hash < h)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        uint32_t pos = lo;
        for (uint32_t k = 0; k < s->ring_len; k++, pos++) {
                if (pos >= s->ring_len)
                        pos = 0;
                uint32_t i = s->ring[pos].ep;
                if (avail(t, i))
                        return (int)i;
        }
        return LB_ENOENDPOINT;
}

static int pick_maglev(const struct lb_table *t, const struct lb_set *s, uint64_t h)
{
        if (!s->maglev)
                return LB_ENOENDPOINT;
        const uint32_t m = t->cfg.maglev_table_size;
        uint32_t pos = (uint32_t)(h % m);
        for (uint32_t k = 0; k < m; k++, pos++) {
                if (pos >= m)
                        pos = 0;
                uint32_t i = s->maglev[pos];
                if (avail(t, i))
                        return (int)i;
        }
        return LB_ENOENDPOINT;
}

static int pick_set(struct lb_worker *w, const struct lb_table *t, int which, const uint64_t *hash)
{
        const struct lb_set *s = lb_set_at(t, which);
        struct wset *ws = &w->s[which];
        int r;
        switch (t->cfg.algorithm) {
        case LB_LEAST_CONNECTIONS:
                return pick_lc(w, t, s, ws);
        case LB_WEIGHTED:
                r = pick_swrr(t, s, ws);
                /* Only zero-weight (draining) members left: better them than
                 * nothing. */
                return r >= 0 ? r : pick_rr(t, s, ws);
        case LB_CONSISTENT_HASH:
                if (!hash)
                        return pick_rr(t, s, ws);
                r = pick_ring(t, s, *hash);
                return r >= 0 ? r : pick_rr(t, s, ws);
        case LB_MAGLEV:
                if (!hash)
                        return pick_rr(t, s, ws);
                r = pick_maglev(t, s, *hash);
                return r >= 0 ? r : pick_rr(t, s, ws);
        case LB_ROUND_ROBIN:
        default:
                return pick_rr(t, s, ws);
        }
}

/* Stay in the local zone while it has enough available endpoints; the count
 * is redone only when some endpoint's availability changed. */
static bool use_local(struct lb_worker *w, const struct lb_table *t)
{
        if (!t->local.n)
                return false;
        uint64_t gen = atomic_load_explicit(&t->shared->avail_gen, memory_order_acquire);
        if (gen != w->avail_gen) {
                uint32_t up = 0;
                for (uint32_t k = 0; k < t->local.n && up < t->local_need; k++)
                        up += avail(t, t->local.idx[k]);
                w->use_local = up >= t->local_need;
                w->avail_gen = gen;
        }
        return w->use_local;
}

/* Tiers: the loads are redone only when some endpoint's availability
 * changed; the tier is drawn by them (by the hash when there is one, so a
 * key keeps its tier while the loads stay). */
static int draw_tier(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash)
{
        uint64_t gen = atomic_load_explicit(&t->shared->avail_gen, memory_order_acquire);
        if (gen != w->avail_gen) {
                uint32_t av[LB_TIERS_MAX] = {0}, loads[LB_TIERS_MAX];
                for (uint32_t k = 0; k < t->n_tiers; k++)
                        for (uint32_t m = 0; m < t->tier[k].n; m++)
                                av[k] += avail(t, t->tier[k].idx[m]);
                lb_tier_loads(av, t->tier_total, t->n_tiers, t->cfg.overprovisioning_percent,
                              loads);
                uint32_t c = 0;
                for (uint32_t k = 0; k < t->n_tiers; k++)
                        w->cum[k] = c += loads[k];
                w->avail_gen = gen;
        }
        uint32_t r = hash ? (uint32_t)(lb_mix64(*hash) % 10000) : rnd_below(w, 10000);
        for (uint32_t k = 0; k < t->n_tiers; k++)
                if (r < w->cum[k])
                        return (int)k;
        return 0; /* nothing available: the sets are tried in order */
}

/* The candidate sets in the order a pick tries them. */
static int set_order(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash,
                     int order[SET_COUNT])
{
        int n = 0;
        if (t->n_tiers) {
                int first = draw_tier(w, t, hash);
                order[n++] = SET_TIER0 + first;
                for (int k = 0; k < (int)t->n_tiers; k++)
                        if (k != first && t->tier[k].n)
                                order[n++] = SET_TIER0 + k;
                return n;
        }
        if (use_local(w, t))
                order[n++] = SET_LOCAL;
        order[n++] = SET_ALL;
        return n;
}

int lb_pick(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash,
            struct lb_pick *out)
{
        if (__builtin_expect(w->serial != t->serial, 0)) {
                int rc = worker_bind(w, t);
                if (rc < 0)
                        return rc;
        }
        int i = LB_ENOENDPOINT;
        if (t->n_tiers) {
                int order[SET_COUNT];
                int n = set_order(w, t, hash, order);
                for (int k = 0; k < n && i < 0; k++)
                        i = pick_set(w, t, order[k], hash);
        } else {
                if (use_local(w, t))
                        i = pick_set(w, t, SET_LOCAL, hash);
                if (i < 0)
                        i = pick_set(w, t, SET_ALL, hash);
        }
        if (i < 0) {
                log_debug(COMP, 0, "pick: no healthy available endpoint among %u", t->n);
                return LB_ENOENDPOINT;
        }
        out->index = (uint32_t)i;
        out->ep = &t->eps[i];
        out->state = t->eps[i].state;
        return 0;
}

int lb_pick_excluding(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash,
                      uint32_t exclude, struct lb_pick *out)
{
        if (__builtin_expect(w->serial != t->serial, 0)) {
                int rc = worker_bind(w, t);
                if (rc < 0)
                        return rc;
        }
        uint64_t h = hash ? *hash : 0;
        int i = LB_ENOENDPOINT;
        int order[SET_COUNT];
        int n_order = set_order(w, t, hash, order);
        for (int o = 0; o < n_order && i < 0; o++) {
                int k = order[o];
                const struct lb_set *s = lb_set_at(t, k);
                /* The algorithm first (round robin and the schedules move on
                 * at each call, a hash is mixed to land elsewhere), a few
                 * times; then the set's next available member in rotation,
                 * which least connections may never offer while the excluded
                 * endpoint is the least busy. */
                for (int tries = 0; tries < 4 && i < 0; tries++) {
                        int r = pick_set(w, t, k, hash ? &h : NULL);
                        if (r < 0)
                                break;
                        if ((uint32_t)r != exclude)
                                i = r;
                        h = lb_mix64(h);
                }
                struct wset *ws = &w->s[k];
                for (uint32_t n = 0; n < s->n && i < 0; n++) {
                        uint32_t pos = (ws->rr + n) % s->n;
                        uint32_t x = s->idx[pos];
                        if (x != exclude && avail(t, x)) {
                                i = (int)x;
                                ws->rr = pos + 1;
                        }
                }
        }
        if (i < 0)
                return LB_ENOENDPOINT;
        out->index = (uint32_t)i;
        out->ep = &t->eps[i];
        out->state = t->eps[i].state;
        return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* Load balancing: per-service tables built by the main thread, picks made by
 * workers without locks.
 *
 * Model
 *   - The main thread turns a service's endpoint list (struct lb_endpoint_in)
 *     into an immutable table (struct lb_table) and publishes it as a snapshot
 *     (core/snapshot.h). Building from the previous table carries over each
 *     surviving endpoint's shared state (active connections, availability) and
 *     updates the hash ring incrementally.
 *   - A worker keeps one struct lb_worker per service: round-robin cursors,
 *     smooth-weighted current weights, a random generator. It is owned by one
 *     thread, so picks take no lock and no read-modify-write atomic.
 *   - Each endpoint has a shared struct lb_ep_state: an active-connection count
 *     (relaxed atomics, shared by all workers so least-connections sees the
 *     endpoint's real load, not one worker's share) and an "available" flag
 *     that the owner of the circuit breaker / outlier detector sets. Picks
 *     only read it (relaxed loads).
 *
 * Which endpoints can be picked
 *   Only endpoints that are healthy in the table (discovery's health) and
 *   available (breaker not open, not ejected). Weight 0 means "drain" for the
 *   weighted and hash algorithms (never picked while an endpoint with a
 *   positive weight is available; then they are picked in turn); when every
 *   weight is 0 all count as equal.
 *   Round robin and least connections ignore weights.
 *
 * Locality
 *   With cfg.local_zone set, picks use only the endpoints of that zone while
 *   the zone has "enough" of them: at least
 *   max(1, ceil(locality_min_percent * Z / 100)) healthy and available
 *   endpoints, where Z counts every endpoint of the zone in the table, healthy
 *   or not (default 70 %, about Envoy's 1.4 overprovisioning factor). Below
 *   that, picks use every healthy, available endpoint of every zone.
 *
 * Locality tiers (cfg.local_region set; replaces the zone rule above)
 *   Every endpoint falls in one tier: 0 "local" (the local region and, when
 *   local_zone is set, that zone), 1 "region" (the local region, another
 *   zone), 2.. "failover1".. (the regions of cfg.failover, in order), last
 *   "remote" (every other region, and endpoints without one). Envoy's
 *   priority-level arithmetic with its overprovisioning factor (default
 *   1.4, cfg.overprovisioning_percent 140): tier i's health is
 *   h_i = min(100 %, available_i / total_i * factor) (total_i: every endpoint
 *   of the tier, healthy or not); tiers take load in order, each
 *   min(h_i, what the tiers before left), and what is left spills to the next
 *   (lb_tier_loads). When the healths add up to less than 100 % the loads are
 *   h_i scaled up to sum to 100 %. A pick draws the tier by these loads (the
 *   hash algorithms draw it from the request's hash), then picks in it; a
 *   tier with nothing available after all falls to the next ones in order.
 *
 * Errors: a pick with nothing to pick returns -EHOSTUNREACH (LB_ENOENDPOINT). */
#ifndef SHUNT_LB_LB_H
#define SHUNT_LB_LB_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/snapshot.h"
#include "lb/resilience.h"

#define LB_ENOENDPOINT (-EHOSTUNREACH)

#define LB_ZONE_MAX          64       /* bytes, with the terminating NUL */
#define LB_WEIGHT_MAX        65535u   /* as config.c's load_balancing.weights */
#define LB_ENDPOINTS_MAX     16384u   /* per service */
#define LB_RING_VNODES_MAX   4096u    /* virtual nodes per unit of weight */
#define LB_RING_POINTS_MAX   4194304u /* upper bound for ring_max_points */
#define LB_MAGLEV_SIZE_MAX   1048573u /* a prime; upper bound for maglev_table_size */
#define LB_SWRR_SCHEDULE_MAX 1048576u /* upper bound for swrr_schedule_max */
#define LB_P2C_THRESHOLD_MAX LB_ENDPOINTS_MAX
#define LB_FAILOVER_MAX      5 /* regions in cfg.failover */
#define LB_TIERS_MAX         (LB_FAILOVER_MAX + 3)
#define LB_OVERPROV_DEFAULT  140 /* percent: Envoy's factor 1.4 */

enum lb_algorithm {
        LB_ROUND_ROBIN = 0,
        LB_LEAST_CONNECTIONS = 1,
        LB_WEIGHTED = 2,        /* smooth weighted round robin */
        LB_CONSISTENT_HASH = 3, /* ring hash */
        LB_MAGLEV = 4,
};

/* "round_robin", "least_connections", "weighted", "consistent_hash" (the
 * config names) and "maglev". 0 or -EINVAL (logged, naming the value). */
int lb_algorithm_parse(const char *name, enum lb_algorithm *out);
const char *lb_algorithm_name(enum lb_algorithm a);

struct lb_config {
        enum lb_algorithm algorithm;
        char local_zone[LB_ZONE_MAX];  /* "" = no locality preference */
        uint32_t locality_min_percent; /* 0..100, default 70 */
        uint32_t ring_vnodes;          /* points per unit of weight, default 160 */
        uint32_t ring_weight_unit;     /* weight that earns ring_vnodes points, default 1 */
        uint32_t ring_max_points;      /* per ring, default 262144 */
        uint32_t maglev_table_size;    /* prime, default 65537 */
        uint32_t p2c_threshold;        /* least connections: P2C above this many, default 32 */
        /* Weighted: picks follow a precomputed period of the SWRR sequence,
         * at most this long (default 65536); a longer exact period is scaled
         * down to fit (shares exact to half a scaled unit). 0 = compute per
         * pick, O(endpoints). */
        uint32_t swrr_schedule_max;
        /* Locality tiers (above); "" = off. */
        char local_region[LB_ZONE_MAX];
        char failover[LB_FAILOVER_MAX][LB_ZONE_MAX]; /* regions, in order */
        uint32_t n_failover;
        uint32_t overprovisioning_percent; /* 100..1000, default 140 */
};

void lb_config_default(struct lb_config *cfg);
/* 0 or -EINVAL, logging the field, the value and what is allowed. */
int lb_config_validate(const struct lb_config *cfg);

/* What the discovery layer hands over. */
struct lb_endpoint_in {
        struct sockaddr_storage addr; /* AF_INET or AF_INET6, with the port */
        uint32_t weight;              /* 0..LB_WEIGHT_MAX */
        char zone[LB_ZONE_MAX];
        char region[LB_ZONE_MAX]; /* tiers only */
        bool healthy;
        /* Tells apart endpoints at one address (their cluster, when pod
         * networks of two clusters overlap): part of the endpoint's key,
         * 0 = none. ref: the caller's own index, handed back in lb_endpoint. */
        uint64_t key;
        uint32_t ref;
};

struct lb_shared;

/* Shared per-endpoint state: lives as long as a table or a connection holds
 * it, and is carried from one table to the next while the endpoint stays. */
struct lb_ep_state {
        _Atomic uint32_t refs;
        _Atomic int32_t active;     /* connections/requests in flight, all workers */
        _Atomic uint32_t available; /* 1 unless the breaker/outlier owner says no */
        struct lb_shared *shared;
        /* Resilience (resilience.h): updated by every worker with atomics. */
        struct lb_breaker breaker;
        struct lb_outlier_ep outlier;
        _Atomic uint32_t gone; /* no longer in the service's table */
};

/* One endpoint of a table, read-only. */
struct lb_endpoint {
        struct sockaddr_storage addr;
        uint64_t id;  /* lb_hash of family, address, port and key: stable across tables */
        uint64_t key; /* lb_endpoint_in.key */
        uint32_t ref; /* lb_endpoint_in.ref */
        uint32_t weight;
        bool healthy;
        bool local;   /* zone == cfg.local_zone */
        uint8_t tier; /* locality tier (0 without tiers) */
        char zone[LB_ZONE_MAX];
        struct lb_ep_state *state;
};

struct lb_table;

/* Builds a table. prev (may be NULL) is the service's current table: state
 * of endpoints present in both is shared, and the ring is updated
 * incrementally when the configuration is unchanged. Returns 0, -EINVAL
 * (logged: which endpoint or field) or -ENOMEM. The new table has one
 * reference, owned by the caller (hand it to snapshot_publish through
 * lb_table_snapshot). prev must be a table of the same service. */
int lb_table_build(const struct lb_config *cfg, const struct lb_endpoint_in *eps, size_t n,
                   const struct lb_table *prev, struct lb_table **out);
struct snapshot *lb_table_snapshot(struct lb_table *t);
struct lb_table *lb_table_from_snapshot(struct snapshot *s);
void lb_table_unref(struct lb_table *t);

size_t lb_table_count(const struct lb_table *t);
const struct lb_endpoint *lb_table_endpoint(const struct lb_table *t, size_t i);
/* Index of the endpoint with this address, or -ENOENT. */
int lb_table_find(const struct lb_table *t, const struct sockaddr_storage *addr);
/* The endpoint at addr with key (lb_endpoint_in.key), or -ENOENT.
 * lb_table_find returns the first endpoint at addr whatever its key. */
int lb_table_find_key(const struct lb_table *t, const struct sockaddr_storage *addr, uint64_t key);
/* Unique per built table (never reused in the process). */
uint64_t lb_table_serial(const struct lb_table *t);
/* Ring points or Maglev entries of the all-zones set (0 for other algorithms). */
size_t lb_table_hash_size(const struct lb_table *t);

/* ---- locality tiers -------------------------------------------------------- */

/* The spill arithmetic: avail[i] and total[i] of n tiers (total 0: an empty
 * tier), the overprovisioning factor in percent; loads_bp[i] gets tier i's
 * share of picks in basis points, summing to 10000, or all 0 when no tier
 * has an available endpoint. */
void lb_tier_loads(const uint32_t *avail, const uint32_t *total, uint32_t n,
                   uint32_t overprov_percent, uint32_t *loads_bp);
/* "local", "region", "failover1".."failover5", "remote" for tier k of a
 * configuration with n_failover failover regions (static strings). */
const char *lb_tier_name(uint32_t n_failover, uint32_t k);
/* Whether t was built with tiers, and its number of tiers. */
uint32_t lb_table_tiers(const struct lb_table *t);
/* Tier k of t now (main thread; counts availability as picks see it):
 * endpoints, available ones, and its load in basis points. */
void lb_table_tier_state(const struct lb_table *t, uint32_t k, uint32_t *total, uint32_t *avail,
                         uint32_t *load_bp);
/* Picks counted per tier (shared by every table of the service). */
void lb_table_tier_picked(const struct lb_table *t, uint32_t k);
uint64_t lb_table_tier_picks(const struct lb_table *t, uint32_t k);

/* Marks an endpoint (un)available for picks: breaker open, outlier ejected.
 * Any thread. */
void lb_ep_set_available(struct lb_ep_state *st, bool available);
static inline bool lb_ep_available(const struct lb_ep_state *st)
{
        return atomic_load_explicit(&st->available, memory_order_relaxed) != 0;
}
static inline int32_t lb_ep_active(const struct lb_ep_state *st)
{
        return atomic_load_explicit(&st->active, memory_order_relaxed);
}

/* ---- one endpoint's resilience: the one way the router drives it -------- *
 *
 * An endpoint is admitted when it is not ejected (outlier detection) and its
 * circuit breaker is closed, or half-open with a free probe slot; each call
 * below keeps lb_ep_available (what picks consider) in line with that. Any
 * thread, no lock. The events tell the caller what to log. */

enum lb_admit {
        LB_ADMIT_REFUSED = 0, /* ejected, breaker open or forced open, no probe slot left */
        LB_ADMIT_OK,          /* breaker closed */
        LB_ADMIT_PROBE,       /* half-open: admitted as a probe (report it with probe set) */
};

struct lb_ep_events {
        bool half_open; /* this call moved the breaker from open to half-open */
        bool returned;  /* this call ended the endpoint's ejection */
        bool ejected;   /* lb_ep_result: this result ejected the endpoint */
        /* lb_ep_result: the breaker's state before and after the result. */
        enum lb_breaker_state before, after;
};

/* Admission of a picked endpoint st of the service whose shared state is r
 * (lb_table_res): an ejection whose time is up ends here, an open breaker
 * whose time is up becomes half-open here, and half-open takes a probe slot
 * (LB_ADMIT_PROBE). */
enum lb_admit lb_ep_admit(struct lb_ep_state *st, struct lb_service_res *r,
                          const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                          uint64_t now, struct lb_ep_events *ev);
/* How an attempt on st ended (probe: it was admitted as LB_ADMIT_PROBE):
 * feeds the breaker and, unless st left its service (or r is NULL), outlier
 * detection over the service's n_endpoints. */
void lb_ep_result(struct lb_ep_state *st, struct lb_service_res *r, uint32_t n_endpoints,
                  const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                  enum lb_outcome o, bool probe, uint64_t now, struct lb_ep_events *ev);
/* A probe admitted in half-open ended without a result. */
void lb_ep_cancel(struct lb_ep_state *st, const struct lb_breaker_config *bc, uint64_t now);
/* Time-driven steps (ejections that ended, open breakers whose time is up). */
void lb_ep_tick(struct lb_ep_state *st, struct lb_service_res *r,
                const struct lb_breaker_config *bc, const struct lb_outlier_config *oc,
                uint64_t now, struct lb_ep_events *ev);
/* Recomputes whether picks should consider st now; returns it. Two threads
 * may store a stale value in a race, which the next admission or tick
 * corrects. */
bool lb_ep_refresh(struct lb_ep_state *st, const struct lb_breaker_config *bc, uint64_t now);

/* Per-worker, per-service selection state. */
struct lb_worker;
struct lb_worker *lb_worker_new(uint64_t seed);
void lb_worker_free(struct lb_worker *w);

struct lb_pick {
        uint32_t index;               /* in the table */
        const struct lb_endpoint *ep; /* valid while the table is held */
        struct lb_ep_state *state;    /* for lb_conn_begin */
};

/* Chooses an endpoint. hash: the request's key hash for the hash algorithms
 * (lb_hash_*); NULL when the request has no key, in which case they pick by
 * round robin. Returns 0, LB_ENOENDPOINT when no healthy available endpoint
 * exists, or -ENOMEM (only when the worker first meets a new table whose
 * weighted state it must allocate). */
int lb_pick(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash,
            struct lb_pick *out);

/* As lb_pick, never returning table index exclude (a retry after a failure
 * there): tries the local zone's set, then every zone's, before giving up
 * with LB_ENOENDPOINT (the caller may then fall back to exclude). */
int lb_pick_excluding(struct lb_worker *w, const struct lb_table *t, const uint64_t *hash,
                      uint32_t exclude, struct lb_pick *out);

/* Counts a connection (or request) against the endpoint until lb_conn_end;
 * holds a reference on the state so it can outlive the table. */
void lb_conn_begin(struct lb_ep_state *st);
void lb_conn_end(struct lb_ep_state *st);

/* ---- hashing ------------------------------------------------------------- */

/* 64-bit FNV-1a over the bytes, finished with the murmur3 fmix64 avalanche.
 * Stable across processes and versions (the ring depends on it). */
uint64_t lb_hash(const void *data, size_t len);
/* splitmix64 step: mixes a 64-bit value. */
uint64_t lb_mix64(uint64_t x);
/* Key helpers. A header value is hashed with optional whitespace trimmed; a
 * source address by its IP only (not the port); a cookie by the value of the
 * named cookie in a Cookie header. lb_hash_cookie returns -ENOENT when the
 * cookie is absent or the header malformed (the caller then has no key). */
uint64_t lb_hash_header_value(const char *value, size_t len);
uint64_t lb_hash_source_ip(const struct sockaddr_storage *addr);
int lb_hash_cookie(const char *cookie_header, size_t len, const char *name, uint64_t *out);

#endif

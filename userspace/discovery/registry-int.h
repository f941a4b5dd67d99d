/* SPDX-License-Identifier: Apache-2.0 */
/* Internals of the registry shared by registry.c, render.c and the backends'
 * tests: record layouts. Not an API for other components. */
#ifndef SHUNT_DISCOVERY_REGISTRY_INT_H
#define SHUNT_DISCOVERY_REGISTRY_INT_H

#include <stdatomic.h>

#include "core/loop.h"
#include "discovery/registry.h"

#define DISC_NONE UINT32_MAX

/* ---- passive outcome slots ----------------------------------------------- */

struct outcome_slot {
        _Atomic uint32_t gen; /* bumped when the endpoint in this slot goes away */
        _Atomic uint32_t consecutive_failures;
        _Atomic uint32_t failures;
        _Atomic uint32_t successes;
};

struct slot_table {
        _Atomic uint32_t refs;
        _Atomic uint32_t attention; /* a failure was reported since the last tick */
        uint32_t cap;
        struct outcome_slot slots[];
};

/* ---- registry records ---------------------------------------------------- */

struct source {
        bool used;
        enum disc_source_kind kind;
        char name[DISC_SOURCE_NAME_MAX];
        bool ever_synced;
        bool failing;
        uint64_t last_ok_ms, last_attempt_ms;
        uint64_t n_ok, n_failed;
        uint64_t n_denied; /* requests refused or filtered for lack of permission */
        char error[DISC_ERROR_MAX];
};

struct svc_rec {
        bool used;
        int src; /* the source that defines it */
        uint64_t hash;
        uint32_t hnext; /* hash chain; free-list link when unused */
        uint32_t ep_head;
        uint32_t n_eps;
        uint32_t mark;
        struct disc_service_spec spec; /* endpoints == NULL */
};

struct ep_rec {
        bool used;
        int src;
        uint32_t svc;
        uint32_t hnext; /* hash chain; free-list link when unused */
        uint32_t prev, next;
        uint32_t mark;
        uint32_t gen;
        struct disc_endpoint_spec spec;
        enum disc_health active; /* from active checks; UNKNOWN until the first */
        uint8_t active_ok, active_fail;
        uint64_t ejected_until_ms; /* passive ejection, 0 = not ejected */
        uint64_t n_ejections;
        uint64_t passive_failures, passive_successes;
        uint64_t last_seen_ms;
        enum disc_health effective;
};

struct disc_registry {
        struct disc_registry_opts opts;
        int64_t wall_offset_ms; /* realtime - monotonic at creation */
        struct source sources[DISC_MAX_SOURCES];

        struct svc_rec *svcs;
        uint32_t n_svc_recs, cap_svcs, svc_free, n_svcs;
        uint32_t *svc_buckets;
        uint32_t svc_nbuckets;

        struct ep_rec *eps;
        uint32_t n_ep_recs, cap_eps, ep_free, n_eps;
        uint32_t *ep_buckets;
        uint32_t ep_nbuckets;
        uint32_t n_ejected;

        struct slot_table *slots;
        uint32_t mark;
        bool dirty;
        uint64_t version;
        uint64_t published_ms;
        size_t snapshot_bytes;
        uint64_t build_us_last;
        struct snapshot_slot slot;
        struct loop *loop;
        struct loop_timer tick;
};

static inline uint64_t disc_now_ms(const struct disc_registry *r)
{
        return r->opts.clock_ms ? r->opts.clock_ms(r->opts.clock_ctx) : clock_mono_ms();
}

static inline uint64_t disc_wall_ms(const struct disc_registry *r, uint64_t mono)
{
        return (uint64_t)((int64_t)mono + r->wall_offset_ms);
}

/* Service record index by name, or DISC_NONE. */
uint32_t disc_svc_find(const struct disc_registry *r, const char *ns, const char *name);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* Resilience state machines: circuit breaker, outlier detection, per-service
 * limits, retry policy and retry budget.
 *
 * The breaker and the outlier detector are pure logic: time comes in as a
 * parameter (nanoseconds on any monotonic clock) and randomness from a seeded
 * generator, and they take no lock. Their owner serialises calls (the main
 * thread, or one worker per breaker) and reports the result to picks with
 * lb_ep_set_available(). Limits and the retry budget are counters shared by
 * every worker of a service (relaxed atomics, never above their bound).
 *
 * Errors: a full limit returns -EBUSY (LB_ELIMIT); an exhausted retry budget
 * -EDQUOT (LB_EBUDGET); a breaker that refuses a request -EAGAIN
 * (LB_EBREAKER). Config validation returns -EINVAL and logs the field. */
#ifndef SHUNT_LB_RESILIENCE_H
#define SHUNT_LB_RESILIENCE_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LB_ELIMIT   (-EBUSY)
#define LB_EBUDGET  (-EDQUOT)
#define LB_EBREAKER (-EAGAIN)

#define LB_NS_PER_SEC 1000000000ull

/* ---- circuit breaker ------------------------------------------------------ */

enum lb_breaker_state {
        LB_BREAKER_CLOSED = 0,
        LB_BREAKER_OPEN = 1,
        LB_BREAKER_HALF_OPEN = 2,
        LB_BREAKER_FORCED_OPEN = 3,
};
#define LB_BREAKER_NSTATES 4

const char *lb_breaker_state_name(enum lb_breaker_state s);

/* The failure-rate window is kept in LB_BREAKER_BUCKETS buckets of
 * window/LB_BREAKER_BUCKETS each; the rate covers the current bucket and the
 * previous ones, so it looks back between window*(B-1)/B and window. */
#define LB_BREAKER_BUCKETS 10

struct lb_breaker_config {
        uint32_t consecutive_failures; /* open after this many in a row; default 5 */
        uint32_t failure_percent;      /* open at >= this % failures in the window; 50 */
        uint32_t min_requests;         /* ... with at least this many results; 20 */
        uint64_t window_ns;            /* 30 s */
        uint64_t open_ns;              /* time open before half-open: 30 s */
        uint32_t jitter_percent;       /* open_ns is drawn from +-this %: 10 */
        uint32_t half_open_probes;     /* requests in flight while half-open: 3 */
        uint32_t success_threshold;    /* probe successes that close it: 3 */
};

void lb_breaker_config_default(struct lb_breaker_config *c);
int lb_breaker_config_validate(const struct lb_breaker_config *c);

/* Fields are private; the struct is public so it can be embedded (one per
 * endpoint, in struct lb_ep_state).
 *
 * Every worker records results and asks for admission concurrently, without
 * a lock: the state, the half-open probes in flight and the half-open
 * successes live in one 64-bit word changed only by compare-and-swap, so a
 * transition and its counters are never seen half done (e.g. no worker
 * takes a probe slot of the previous half-open period). The failure window
 * and the consecutive-failure count are plain atomic counters: two results
 * racing with a bucket change may lose one count, which moves a rate
 * decision by one result at most. */
struct lb_breaker {
        _Atomic uint64_t word; /* state | probes << 16 | successes << 32 */
        _Atomic uint32_t consecutive;
        _Atomic uint64_t open_until;
        _Atomic uint64_t opened_at;
        _Atomic uint64_t base;                    /* window origin (its last reset) */
        _Atomic uint64_t tag[LB_BREAKER_BUCKETS]; /* bucket number + 1 the counts belong to */
        _Atomic uint32_t ok[LB_BREAKER_BUCKETS], fail[LB_BREAKER_BUCKETS];
        _Atomic uint64_t rng;
        _Atomic uint64_t opens; /* times it opened (metric) */
};

void lb_breaker_init(struct lb_breaker *b, uint64_t seed, uint64_t now);
/* Current state; an open breaker whose time is up becomes half-open here. */
enum lb_breaker_state lb_breaker_state(struct lb_breaker *b, const struct lb_breaker_config *c,
                                       uint64_t now);
/* As lb_breaker_state; *moved tells whether this call made the open ->
 * half-open step (exactly one caller sees true per step). */
enum lb_breaker_state lb_breaker_advance(struct lb_breaker *b, const struct lb_breaker_config *c,
                                         uint64_t now, bool *moved);
/* May a request go to this endpoint? 0, or LB_EBREAKER when open, forced
 * open, or half-open with half_open_probes already in flight. A 0 in
 * half-open counts a probe: report its result with lb_breaker_record. */
int lb_breaker_allow(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now);
/* Result of a request that allow() let through. Results that arrive while
 * open (requests admitted before it opened) are ignored; in half-open every
 * result counts as a probe's. Returns the state after the result. */
enum lb_breaker_state lb_breaker_record(struct lb_breaker *b, const struct lb_breaker_config *c,
                                        bool success, uint64_t now);
/* As lb_breaker_record, telling whether the request was admitted as a
 * half-open probe: a result of a request admitted while closed that arrives
 * in half-open is ignored (only probes decide). */
enum lb_breaker_state lb_breaker_result(struct lb_breaker *b, const struct lb_breaker_config *c,
                                        bool success, bool probe, uint64_t now);
/* A probe admitted in half-open that ended without a result (cancelled). */
void lb_breaker_cancel(struct lb_breaker *b);
/* Operator override: forced open rejects everything; releasing it closes
 * the breaker with fresh counters. */
void lb_breaker_force_open(struct lb_breaker *b, bool on, uint64_t now);
/* When an open breaker turns half-open (meaningful in LB_BREAKER_OPEN). */
uint64_t lb_breaker_open_until(const struct lb_breaker *b);
/* The state as last stored, without the time-driven open -> half-open step
 * (for rendering). */
enum lb_breaker_state lb_breaker_peek(const struct lb_breaker *b);
uint64_t lb_breaker_opens(const struct lb_breaker *b);
/* Whether picks should consider the endpoint: closed, half-open with a
 * free probe slot, or open with its time up. Changes nothing. */
bool lb_breaker_pickable(const struct lb_breaker *b, const struct lb_breaker_config *c,
                         uint64_t now);
/* The state lb_breaker_state would return, without making the open ->
 * half-open step (for rendering: only admission moves it, and logs). */
enum lb_breaker_state lb_breaker_view(const struct lb_breaker *b, uint64_t now);

/* Per-service aggregation: how many endpoints are in each state. */
struct lb_breaker_counts {
        uint32_t n[LB_BREAKER_NSTATES];
};
void lb_breaker_aggregate(struct lb_breaker *const *b, size_t n, const struct lb_breaker_config *c,
                          uint64_t now, struct lb_breaker_counts *out);

/* ---- outlier detection ---------------------------------------------------- */

struct lb_outlier_config {
        uint32_t consecutive_failures; /* connect failures or 5xx in a row: 5 */
        uint64_t base_ejection_ns;     /* k-th ejection lasts k * base: 30 s */
        uint64_t max_ejection_ns;      /* ... but at most this: 300 s */
        uint32_t max_ejection_percent; /* see below: 10 */
};

/* The cap on ejected endpoints of a service with n endpoints and percent p:
 *   cap = floor(n * p / 100), raised to 1 when p > 0 and n >= 2,
 *   and never more than n - 1 (one endpoint always stays in).
 * An endpoint that reaches its failure threshold while the cap is reached
 * is not ejected (counted as "ejection skipped") and its counter restarts. */
uint32_t lb_outlier_max_ejected(uint32_t n, uint32_t percent);

void lb_outlier_config_default(struct lb_outlier_config *c);
int lb_outlier_config_validate(const struct lb_outlier_config *c);

enum lb_outcome {
        LB_OUTCOME_SUCCESS = 0,
        LB_OUTCOME_CONNECT_FAILURE = 1, /* refused, reset or timed out before connected */
        LB_OUTCOME_5XX = 2,             /* HTTP 5xx (or gRPC UNAVAILABLE) */
        LB_OUTCOME_OTHER_FAILURE = 3,   /* counted by breakers, not by outlier detection */
};

/* Per endpoint (embedded in struct lb_ep_state) and per service (in struct
 * lb_service_res); any thread, no lock. The failure run is an atomic count
 * and only the result that brings it exactly to the threshold tries to
 * eject, so one run ejects once. The cap is honoured exactly under
 * concurrency: an ejection first takes a slot of the service's ejected
 * count with a compare-and-swap that never passes the cap. */
struct lb_outlier_ep {
        _Atomic uint32_t consecutive;
        _Atomic uint32_t count;      /* ejections, decaying */
        _Atomic uint64_t until;      /* ejected until this time; 0 = in service */
        _Atomic uint64_t decay_from; /* when count last dropped or the endpoint returned */
};
struct lb_outlier_svc {
        _Atomic uint32_t ejected;   /* endpoints ejected right now */
        _Atomic uint64_t ejections; /* total */
        _Atomic uint64_t skipped;   /* ejections refused by the cap */
};
/* n: the service's endpoints now (for the cap). Returns 1 when this result
 * ejected the endpoint, else 0. */
int lb_outlier_ep_record(const struct lb_outlier_config *c, struct lb_outlier_svc *svc,
                         struct lb_outlier_ep *e, uint32_t n, enum lb_outcome r, uint64_t now);
/* Returns the endpoint to service when its time is up (true: it returned
 * now); decays its ejection count while in service. */
bool lb_outlier_ep_expire(const struct lb_outlier_config *c, struct lb_outlier_svc *svc,
                          struct lb_outlier_ep *e, uint64_t now);
/* Ends an ejection now, whatever its time (the endpoint left the service). */
void lb_outlier_ep_release(struct lb_outlier_svc *svc, struct lb_outlier_ep *e);
static inline uint64_t lb_outlier_ep_until(const struct lb_outlier_ep *e)
{
        return atomic_load_explicit(&e->until, memory_order_relaxed);
}

/* A service's detector over n endpoints indexed 0..n-1 (tests, tools). */
struct lb_outlier;
/* NULL on -ENOMEM (logged) or a bad config (logged). */
struct lb_outlier *lb_outlier_new(const struct lb_outlier_config *c, uint32_t n);
void lb_outlier_free(struct lb_outlier *o);
/* Records a result for endpoint i. Returns 1 when this result ejected it,
 * 0 otherwise, -EINVAL for a bad index. */
int lb_outlier_record(struct lb_outlier *o, uint32_t i, enum lb_outcome r, uint64_t now);
/* Returns endpoints whose ejection has expired. Returns how many returned. An
 * endpoint's ejection count drops by one for every max_ejection_ns it spends
 * in service without being ejected. */
uint32_t lb_outlier_tick(struct lb_outlier *o, uint64_t now);
bool lb_outlier_ejected(const struct lb_outlier *o, uint32_t i);
uint64_t lb_outlier_ejected_until(const struct lb_outlier *o, uint32_t i);
uint32_t lb_outlier_ejection_count(const struct lb_outlier *o, uint32_t i);
uint32_t lb_outlier_num_ejected(const struct lb_outlier *o);
uint64_t lb_outlier_skipped(const struct lb_outlier *o); /* ejections refused by the cap */

/* ---- per-service limits --------------------------------------------------- */

enum lb_limit_kind {
        LB_LIMIT_CONNECTIONS = 0, /* upstream connections */
        LB_LIMIT_PENDING = 1,     /* requests waiting for a connection */
        LB_LIMIT_REQUESTS = 2,    /* requests in flight */
};
#define LB_LIMIT_NKINDS 3

struct lb_limits_config {
        uint32_t max[LB_LIMIT_NKINDS]; /* defaults 1024, 1024, 1024 (Envoy's) */
};
void lb_limits_config_default(struct lb_limits_config *c);
int lb_limits_config_validate(const struct lb_limits_config *c);

struct lb_limits {
        _Atomic uint32_t cur[LB_LIMIT_NKINDS];
        _Atomic uint64_t refused[LB_LIMIT_NKINDS];
        _Atomic uint32_t max[LB_LIMIT_NKINDS];
};
void lb_limits_init(struct lb_limits *l, const struct lb_limits_config *c);
/* Takes one unit of *cur unless it has reached max (never goes above, also
 * when threads race): the slot counters of limits, the retry budget and
 * the ejection cap. */
bool lb_slot_take(_Atomic uint32_t *cur, uint32_t max);
/* New maxima apply to later acquires; nothing in flight is cut. */
void lb_limits_set(struct lb_limits *l, const struct lb_limits_config *c);
/* 0, or LB_ELIMIT when cur has reached max (counted in refused). */
int lb_limits_acquire(struct lb_limits *l, enum lb_limit_kind k);
void lb_limits_release(struct lb_limits *l, enum lb_limit_kind k);
uint32_t lb_limits_current(const struct lb_limits *l, enum lb_limit_kind k);
uint64_t lb_limits_refused(const struct lb_limits *l, enum lb_limit_kind k);
const char *lb_limit_name(enum lb_limit_kind k);

/* ---- retries -------------------------------------------------------------- */

struct lb_retry_config {
        uint32_t max_retries;     /* per request: 2 */
        uint64_t backoff_base_ns; /* 25 ms */
        uint64_t backoff_max_ns;  /* 250 ms */
        uint32_t budget_percent;  /* retries in flight <= this % of active requests: 20 */
        uint32_t budget_min;      /* ... but always allow this many: 3 */
        bool retry_5xx;           /* retry idempotent requests on 502/503/504: true */
};
void lb_retry_config_default(struct lb_retry_config *c);
int lb_retry_config_validate(const struct lb_retry_config *c);

/* GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 section 9.2.2). */
bool lb_method_idempotent(const char *method, size_t len);

/* What went wrong with an attempt. */
enum lb_retry_cause {
        LB_RETRY_CONNECT_FAILURE = 0, /* nothing was sent: always safe */
        LB_RETRY_RESET = 1,           /* reset after sending: idempotent only */
        LB_RETRY_STATUS = 2,          /* a response with this status */
};

/* Should attempt number `attempt` (1 = the first try) be retried? Connect
 * failures are retried for every method; resets and 502/503/504 only for
 * idempotent ones (and 5xx only with retry_5xx). Does not take budget. */
bool lb_retry_should(const struct lb_retry_config *c, uint32_t attempt, enum lb_retry_cause cause,
                     int status, bool idempotent);
/* Delay before retry number `retry` (1-based): exponential, base * 2^(retry-1)
 * capped at backoff_max, with "equal jitter": uniform in [d/2, d]. rng is the
 * caller's splitmix64 state. */
uint64_t lb_retry_backoff(const struct lb_retry_config *c, uint32_t retry, uint64_t *rng);

/* Retry budget per service: at most max(budget_min, floor(active *
 * budget_percent / 100)) retries in flight, where active is the service's
 * requests in flight (e.g. lb_limits_current(LB_LIMIT_REQUESTS)). */
struct lb_retry_budget {
        _Atomic uint32_t in_flight;
        _Atomic uint64_t refused;
};
void lb_retry_budget_init(struct lb_retry_budget *b);
uint32_t lb_retry_budget_limit(const struct lb_retry_config *c, uint32_t active);
/* 0 (a retry slot taken: release it when the retry ends) or LB_EBUDGET. */
int lb_retry_budget_acquire(struct lb_retry_budget *b, const struct lb_retry_config *c,
                            uint32_t active);
void lb_retry_budget_release(struct lb_retry_budget *b);

/* ---- per-service state ---------------------------------------------------- */

/* Shared by every table of one service (carried across rebuilds like the
 * endpoints' state) and by every worker: relaxed atomics only. */
struct lb_service_res {
        struct lb_limits limits;
        struct lb_retry_budget budget;
        struct lb_outlier_svc outlier;
        _Atomic uint64_t retries;           /* retries granted */
        _Atomic uint64_t retries_exhausted; /* refused: per-request attempts used up */
};

struct lb_table;
/* The service's shared resilience state (valid while t is held). */
struct lb_service_res *lb_table_res(const struct lb_table *t);

#endif

/* Circuit breaker per endpoint: closed -> open -> half-open -> closed, and an
 * operator's forced open. Pure logic; the caller passes the time. */
#include <string.h>

#include "core/log.h"
#include "lb/lb.h"
#include "lb/resilience.h"

#define COMP "lb"

static const char *const state_names[LB_BREAKER_NSTATES] = {"closed", "open", "half_open",
                                                            "forced_open"};

const char *lb_breaker_state_name(enum lb_breaker_state s)
{
        return (unsigned)s < LB_BREAKER_NSTATES ? state_names[s] : "unknown";
}

void lb_breaker_config_default(struct lb_breaker_config *c)
{
        c->consecutive_failures = 5;
        c->failure_percent = 50;
        c->min_requests = 20;
        c->window_ns = 30 * LB_NS_PER_SEC;
        c->open_ns = 30 * LB_NS_PER_SEC;
        c->jitter_percent = 10;
        c->half_open_probes = 3;
        c->success_threshold = 3;
}

#define CHECK(cond, field, fmt, ...)                                                               \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        log_error(COMP, 0, field ": " fmt, __VA_ARGS__);                           \
                        return -EINVAL;                                                            \
                }                                                                                  \
        } while (0)

int lb_breaker_config_validate(const struct lb_breaker_config *c)
{
        CHECK(c->consecutive_failures >= 1 && c->consecutive_failures <= 1000000,
              "circuit_breaker.consecutive_failures", "%u (allowed: 1..1000000)",
              c->consecutive_failures);
        CHECK(c->failure_percent >= 1 && c->failure_percent <= 100,
              "circuit_breaker.failure_percent", "%u (allowed: 1..100)", c->failure_percent);
        CHECK(c->min_requests >= 1 && c->min_requests <= 1000000, "circuit_breaker.min_requests",
              "%u (allowed: 1..1000000)", c->min_requests);
        CHECK(c->window_ns >= LB_BREAKER_BUCKETS * 1000000ull &&
                  c->window_ns <= 3600 * LB_NS_PER_SEC,
              "circuit_breaker.window", "%llu ns (allowed: 10 ms..1 h)",
              (unsigned long long)c->window_ns);
        CHECK(c->open_ns >= 1000000ull && c->open_ns <= 3600 * LB_NS_PER_SEC,
              "circuit_breaker.open_timeout", "%llu ns (allowed: 1 ms..1 h)",
              (unsigned long long)c->open_ns);
        CHECK(c->jitter_percent <= 50, "circuit_breaker.jitter_percent", "%u (allowed: 0..50)",
              c->jitter_percent);
        CHECK(c->half_open_probes >= 1 && c->half_open_probes <= 1000,
              "circuit_breaker.half_open_probes", "%u (allowed: 1..1000)", c->half_open_probes);
        CHECK(c->success_threshold >= 1 && c->success_threshold <= 1000,
              "circuit_breaker.success_threshold", "%u (allowed: 1..1000)", c->success_threshold);
        return 0;
}

static void clear_window(struct lb_breaker *b, uint64_t now)
{
        memset(b->ok, 0, sizeof(b->ok));
        memset(b->fail, 0, sizeof(b->fail));
        b->head = 0;
        b->bucket_start = now;
        b->consecutive = 0;
}

void lb_breaker_init(struct lb_breaker *b, uint64_t seed, uint64_t now)
{
        memset(b, 0, sizeof(*b));
        b->state = LB_BREAKER_CLOSED;
        b->rng = seed;
        clear_window(b, now);
}

/* Moves the window so that the newest bucket contains now. */
static void advance(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        uint64_t width = c->window_ns / LB_BREAKER_BUCKETS;
        if (now < b->bucket_start + width)
                return; /* also when the clock is behind bucket_start */
        uint64_t k = (now - b->bucket_start) / width;
        b->bucket_start += k * width;
        if (k > LB_BREAKER_BUCKETS)
                k = LB_BREAKER_BUCKETS;
        for (uint64_t j = 0; j < k; j++) {
                b->head = (b->head + 1) % LB_BREAKER_BUCKETS;
                b->ok[b->head] = 0;
                b->fail[b->head] = 0;
        }
}

static uint64_t next_rand(struct lb_breaker *b)
{
        b->rng += 0x9e3779b97f4a7c15ull;
        return lb_mix64(b->rng);
}

static void trip(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        uint64_t jitter = c->open_ns * c->jitter_percent / 100; /* <= 1.8e14: no overflow */
        uint64_t span = 2 * jitter + 1;
        b->state = LB_BREAKER_OPEN;
        b->opened_at = now;
        b->open_until = now + c->open_ns - jitter + next_rand(b) % span;
        b->probes_in_flight = 0;
        b->probe_successes = 0;
        b->opens++;
        clear_window(b, now);
}

static void close_breaker(struct lb_breaker *b, uint64_t now)
{
        b->state = LB_BREAKER_CLOSED;
        b->probes_in_flight = 0;
        b->probe_successes = 0;
        clear_window(b, now);
}

enum lb_breaker_state lb_breaker_state(struct lb_breaker *b, const struct lb_breaker_config *c,
                                       uint64_t now)
{
        if (b->state == LB_BREAKER_OPEN && now >= b->open_until) {
                b->state = LB_BREAKER_HALF_OPEN;
                b->probes_in_flight = 0;
                b->probe_successes = 0;
        }
        return b->state;
}

int lb_breaker_allow(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        switch (lb_breaker_state(b, c, now)) {
        case LB_BREAKER_CLOSED:
                return 0;
        case LB_BREAKER_HALF_OPEN:
                if (b->probes_in_flight < c->half_open_probes) {
                        b->probes_in_flight++;
                        return 0;
                }
                return LB_EBREAKER;
        default:
                return LB_EBREAKER;
        }
}

bool lb_breaker_pickable(struct lb_breaker *b, const struct lb_breaker_config *c, uint64_t now)
{
        switch (lb_breaker_state(b, c, now)) {
        case LB_BREAKER_CLOSED:
                return true;
        case LB_BREAKER_HALF_OPEN:
                return b->probes_in_flight < c->half_open_probes;
        default:
                return false;
        }
}

void lb_breaker_record(struct lb_breaker *b, const struct lb_breaker_config *c, bool success,
                       uint64_t now)
{
        switch (lb_breaker_state(b, c, now)) {
        case LB_BREAKER_CLOSED: {
                advance(b, c, now);
                if (success) {
                        b->ok[b->head]++;
                        b->consecutive = 0;
                } else {
                        b->fail[b->head]++;
                        if (++b->consecutive >= c->consecutive_failures) {
                                trip(b, c, now);
                                return;
                        }
                }
                /* Checked after successes too: the one that brings the
                 * count to min_requests may find the rate already high. */
                uint64_t ok = 0, fail = 0;
                for (int i = 0; i < LB_BREAKER_BUCKETS; i++) {
                        ok += b->ok[i];
                        fail += b->fail[i];
                }
                if (ok + fail >= c->min_requests && fail * 100 >= c->failure_percent * (ok + fail))
                        trip(b, c, now);
                return;
        }
        case LB_BREAKER_HALF_OPEN:
                if (b->probes_in_flight > 0)
                        b->probes_in_flight--;
                if (!success) {
                        trip(b, c, now);
                        return;
                }
                if (++b->probe_successes >= c->success_threshold)
                        close_breaker(b, now);
                return;
        default:
                return; /* open or forced open: a late result changes nothing */
        }
}

void lb_breaker_cancel(struct lb_breaker *b)
{
        if (b->state == LB_BREAKER_HALF_OPEN && b->probes_in_flight > 0)
                b->probes_in_flight--;
}

void lb_breaker_force_open(struct lb_breaker *b, bool on, uint64_t now)
{
        if (on) {
                if (b->state != LB_BREAKER_FORCED_OPEN)
                        b->opens++;
                b->state = LB_BREAKER_FORCED_OPEN;
                b->opened_at = now;
                b->probes_in_flight = 0;
                b->probe_successes = 0;
        } else if (b->state == LB_BREAKER_FORCED_OPEN) {
                close_breaker(b, now);
        }
}

uint64_t lb_breaker_open_until(const struct lb_breaker *b)
{
        return b->open_until;
}

void lb_breaker_aggregate(struct lb_breaker *const *b, size_t n, const struct lb_breaker_config *c,
                          uint64_t now, struct lb_breaker_counts *out)
{
        memset(out, 0, sizeof(*out));
        for (size_t i = 0; i < n; i++)
                out->n[lb_breaker_state(b[i], c, now)]++;
}

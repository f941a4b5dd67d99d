/* SPDX-License-Identifier: Apache-2.0 */
/* The numbers of `shuntctl top`: one scrape of shuntd's /metrics (Prometheus
 * text) folded into one row per direction and destination service, and two
 * scrapes' differences turned into rates, success rate and latency
 * quantiles.
 *
 * A row sums, over the series of its direction and destination
 * (namespace/service):
 *   - shunt_requests_total, and those whose response_code_class is not 5xx;
 *   - shunt_request_duration_seconds_bucket per `le` (sum by le);
 *   - shunt_tcp_received_bytes_total + shunt_tcp_sent_bytes_total;
 *   - in flight: outbound, shunt_endpoint_active of the service's endpoints
 *     (its `service` label "ns/name:port"); inbound, the byte-relayed
 *     connections open (shunt_tcp_connections_opened_total minus _closed).
 * Counters that went down between two scrapes (shuntd restarted) count from
 * zero, as Prometheus's rate() does. No I/O here: the caller fetches. */
#ifndef SHUNT_ADMIN_TOP_H
#define SHUNT_ADMIN_TOP_H

#include <stdbool.h>
#include <stddef.h>

#define TOP_MAX_ROWS    1024 /* rows of one scrape; more are counted in dropped_rows */
#define TOP_MAX_BUCKETS 64   /* histogram bounds per row, +Inf included */
#define TOP_NAME_MAX    256
#define TOP_MAX_LABELS  16

/* One parsed sample line. Views into the caller's line buffer except the
 * label values, which are unescaped into val_buf. */
struct top_sample {
        char name[TOP_NAME_MAX];
        size_t n_labels;
        char label[TOP_MAX_LABELS][64];
        char *value_of[TOP_MAX_LABELS];
        char val_buf[4096];
        double value;
};
/* Parses one line of the text format: 1 a sample (out filled), 0 a comment
 * or blank line, -1 a malformed line (or one past the bounds above). */
int top_parse_line(const char *line, size_t len, struct top_sample *out);
/* The value of label name in s, or NULL. */
const char *top_label(const struct top_sample *s, const char *name);

struct top_row {
        char direction[16];
        char service[2 * TOP_NAME_MAX]; /* "namespace/name" */
        double requests, ok;
        size_t n_buckets;
        double le[TOP_MAX_BUCKETS]; /* ascending, the last +Inf when present */
        double bucket[TOP_MAX_BUCKETS];
        double bytes;
        double active;
        bool has_requests, has_tcp;
};

struct top_scrape {
        struct top_row *rows;
        size_t n_rows;
        size_t dropped_rows; /* samples whose row did not fit TOP_MAX_ROWS */
        size_t bad_lines;
};

/* Folds the exposition text[0..len) into s (rows allocated; top_scrape_free).
 * 0, or -ENOMEM. */
int top_scrape_parse(const char *text, size_t len, struct top_scrape *s);
void top_scrape_free(struct top_scrape *s);

/* Prometheus's histogram_quantile over cumulative bucket counts: q in
 * [0, 1]; le ascending with +Inf last; linear interpolation inside the
 * bucket the rank falls in (0 is the lower bound of the first bucket when
 * its upper bound is positive); a rank in the +Inf bucket gives the highest
 * finite bound. NaN with no observations, fewer than two buckets or no +Inf
 * bucket; -Inf/+Inf for q below 0 / above 1. */
double top_histogram_quantile(double q, const double *le, const double *cum, size_t n);
/* cur - prev of a counter, or cur when it went down (a reset). */
double top_counter_delta(double prev, double cur);

struct top_view {
        char direction[16];
        char service[2 * TOP_NAME_MAX];
        double rps;         /* requests per second */
        double success;     /* share of requests not answered 5xx, NaN without requests */
        double p50, p99;    /* seconds, NaN without requests */
        double bytes_per_s; /* byte-relayed traffic, both ways */
        double active;
};

enum top_sort {
        TOP_SORT_RPS,
        TOP_SORT_SUCCESS,
        TOP_SORT_P50,
        TOP_SORT_P99,
        TOP_SORT_BYTES,
        TOP_SORT_ACTIVE,
        TOP_SORT_NAME
};
/* "rps", "success", "p50", "p99", "bytes", "active", "name"; -1 otherwise. */
int top_sort_parse(const char *s);

/* The rates between prev and cur, seconds apart (> 0): one view per row of
 * cur, sorted by `by` (descending; success ascending: the worst first; name
 * ascending), ties by direction and service. Returns the count (views
 * allocated, free()), or -ENOMEM / -EINVAL. */
int top_compute(const struct top_scrape *prev, const struct top_scrape *cur, double seconds,
                enum top_sort by, struct top_view **out);

#endif

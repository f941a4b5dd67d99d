/* SPDX-License-Identifier: Apache-2.0 */
/* Prometheus text exposition format (version 0.0.4) writer.
 *
 * A metric family is written as its HELP and TYPE lines followed by its
 * samples:
 *
 *   prom_family(sb, "shunt_connections_accepted_total", "counter", "Connections accepted.");
 *   prom_sample_u64(sb, "shunt_connections_accepted_total", "listener=\"inbound\"", 12);
 *
 * Names must match [a-zA-Z_:][a-zA-Z0-9_:]*; counter names end in "_total".
 * Label values built from run-time data must be escaped: prom_label() appends
 * one key="value" pair (with the separating comma) to a label string. Every
 * function validates its input and returns 0 or -EINVAL without writing
 * anything when it is invalid. */
#ifndef SHUNT_CORE_PROM_H
#define SHUNT_CORE_PROM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/strbuf.h"

/* The Content-Type of a text exposition. */
#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

bool prom_name_valid(const char *name);
/* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved). */
bool prom_label_name_valid(const char *name);

/* type is "counter", "gauge" or "histogram". help may be NULL (no HELP
 * line). */
int prom_family(struct strbuf *sb, const char *name, const char *type, const char *help);

/* labels: NULL or "" for none, else the text between the braces, e.g.
 * "proto=\"http1\",dir=\"in\"". */
int prom_sample(struct strbuf *sb, const char *name, const char *labels, double value);
int prom_sample_u64(struct strbuf *sb, const char *name, const char *labels, uint64_t value);

/* Appends value escaped for use inside a quoted label value (backslash,
 * double quote and newline are escaped). */
void prom_label_escape(struct strbuf *sb, const char *value);
/* Appends name="escaped value" to labels, preceded by a comma when labels is
 * not empty. */
int prom_label(struct strbuf *labels, const char *name, const char *value);

/* ---- histograms -------------------------------------------------------------
 *
 * A histogram's buckets are finite upper bounds in seconds, strictly
 * increasing; +Inf is implied. Observations are kept in nanoseconds as
 * per-bucket (not cumulative) counts plus a sum, in PROM_HIST_CELLS(b)
 * 64-bit cells: bucket i (0..n-1), +Inf, then the sum. One writer per set of
 * cells (a worker): relaxed loads and stores, no read-modify-write, no lock.
 * A reader (the scrape) sums the cells of every writer and renders them
 * cumulatively; _count is the sum of the buckets, so _count always equals
 * the +Inf bucket. _sum may lag the buckets by the observation being
 * written (a torn read across cells, documented and harmless). */
#define PROM_BUCKETS_MAX 32
struct prom_buckets {
        uint32_t n;
        uint64_t le_ns[PROM_BUCKETS_MAX]; /* upper bounds, nanoseconds */
};
#define PROM_HIST_CELLS(b) ((b)->n + 2)

/* The default buckets: 0.5 ms to 10 s. */
#define PROM_DEFAULT_BUCKETS "0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"

/* Parses a comma-separated list of bucket bounds in seconds ("0.001,0.01,1"):
 * 1..PROM_BUCKETS_MAX finite positive numbers, strictly increasing, each a
 * whole number of nanoseconds at most 3600 s. 0, or -EINVAL with why (a static
 * sentence) set. */
int prom_buckets_parse(const char *text, struct prom_buckets *out, const char **why);

/* The bucket an observation of ns falls in: the first bound >= ns, else n
 * (+Inf). */
uint32_t prom_bucket_index(const struct prom_buckets *b, uint64_t ns);

/* Adds n to a cell that only the calling thread writes (no read-modify-write). */
static inline void prom_cell_add(_Atomic uint64_t *c, uint64_t n)
{
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                              memory_order_relaxed);
}

/* Adds one observation to cells (single writer). */
void prom_hist_observe(_Atomic uint64_t *cells, const struct prom_buckets *b, uint64_t ns);

/* Writes name_bucket{labels,le="..."} (cumulative), name_sum (seconds) and
 * name_count for merged cells (PROM_HIST_CELLS(b) plain sums). */
int prom_hist_render(struct strbuf *sb, const char *name, const char *labels,
                     const struct prom_buckets *b, const uint64_t *cells);

/* ---- bounded label sets ---------------------------------------------------
 *
 * A series set maps label values to a fixed number of cells per series,
 * kept per shard (one shard per worker thread), and bounds the number of
 * distinct label sets at max_series. The label set beyond the limit is
 * recorded in one overflow series whose every label is "other", and each
 * update that went there is counted (prom_series_overflows).
 *
 * Lock-free: the table of label sets is shared; a new label set claims a
 * slot with one compare-and-swap and publishes it with a release store, so
 * the first use of a label set costs a short wait for a concurrent writer
 * of the same slot (bounded; past the bound the update goes to the
 * overflow series). Cells are per shard and written only by their shard's
 * thread; the scrape sums them with relaxed loads. */
struct prom_series;

/* names: nlabels label names (copied). NULL on a bad name or no memory. */
struct prom_series *prom_series_new(uint32_t max_series, uint32_t nlabels, const char *const *names,
                                    uint32_t cells, uint32_t shards);
void prom_series_free(struct prom_series *s);

/* The cells of shard for the label values vals (nlabels strings), created
 * on first use; the overflow series' when the set is full. Never NULL.
 * Only the shard's own thread calls this for a shard. */
_Atomic uint64_t *prom_series_cells(struct prom_series *s, uint32_t shard, const char *const *vals);

/* Calls fn for every series that exists (and the overflow series once used)
 * with its label text (escaped, "a=\"x\",b=\"y\"") and its cells summed over
 * the shards. */
typedef void (*prom_series_fn)(void *ctx, const char *labels, const uint64_t *cells);
void prom_series_foreach(struct prom_series *s, prom_series_fn fn, void *ctx);

/* Label sets created (the overflow series not included). */
uint32_t prom_series_count(struct prom_series *s);
/* Updates that went to the overflow series, over all shards. */
uint64_t prom_series_overflows(struct prom_series *s);

/* ---- process metrics ------------------------------------------------------ */

/* process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds,
 * process_start_time_seconds, as the Prometheus client libraries name them,
 * read from /proc/self. A value that cannot be read is left out. */
void prom_process_render(struct strbuf *sb);

#endif

// SPDX-License-Identifier: Apache-2.0
#include "core/prom.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/hash.h"

static bool is_alpha_(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

bool prom_name_valid(const char *name)
{
        if (!name || !(is_alpha_(name[0]) || name[0] == ':'))
                return false;
        for (const char *p = name + 1; *p; p++)
                if (!(is_alpha_(*p) || is_digit(*p) || *p == ':'))
                        return false;
        return true;
}

bool prom_label_name_valid(const char *name)
{
        if (!name || !is_alpha_(name[0]))
                return false;
        if (name[0] == '_' && name[1] == '_')
                return false;
        for (const char *p = name + 1; *p; p++)
                if (!(is_alpha_(*p) || is_digit(*p)))
                        return false;
        return true;
}

static bool ends_with(const char *s, const char *suffix)
{
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

int prom_family(struct strbuf *sb, const char *name, const char *type, const char *help)
{
        if (!prom_name_valid(name) || !type)
                return -EINVAL;
        if (strcmp(type, "counter") == 0) {
                if (!ends_with(name, "_total"))
                        return -EINVAL;
        } else if (strcmp(type, "gauge") != 0 && strcmp(type, "histogram") != 0) {
                return -EINVAL;
        }
        if (help) {
                strbuf_appendf(sb, "# HELP %s ", name);
                /* HELP text escapes backslash and line feed only. */
                const char *run = help, *p = help;
                for (; *p; p++) {
                        if (*p != '\\' && *p != '\n')
                                continue;
                        strbuf_appendn(sb, run, (size_t)(p - run));
                        strbuf_append(sb, *p == '\\' ? "\\\\" : "\\n");
                        run = p + 1;
                }
                strbuf_appendn(sb, run, (size_t)(p - run));
                strbuf_append(sb, "\n");
        }
        strbuf_appendf(sb, "# TYPE %s %s\n", name, type);
        return 0;
}

void prom_label_escape(struct strbuf *sb, const char *value)
{
        const char *run = value, *p = value;
        for (; *p; p++) {
                const char *rep;
                if (*p == '\\')
                        rep = "\\\\";
                else if (*p == '"')
                        rep = "\\\"";
                else if (*p == '\n')
                        rep = "\\n";
                else
                        continue;
                strbuf_appendn(sb, run, (size_t)(p - run));
                strbuf_append(sb, rep);
                run = p + 1;
        }
        strbuf_appendn(sb, run, (size_t)(p - run));
}

int prom_label(struct strbuf *labels, const char *name, const char *value)
{
        if (!prom_label_name_valid(name) || !value)
                return -EINVAL;
        if (labels->len)
                strbuf_append(labels, ",");
        strbuf_append(labels, name);
        strbuf_append(labels, "=\"");
        prom_label_escape(labels, value);
        strbuf_append(labels, "\"");
        return 0;
}

static void sample_prefix(struct strbuf *sb, const char *name, const char *labels)
{
        strbuf_append(sb, name);
        if (labels && *labels) {
                strbuf_append(sb, "{");
                strbuf_append(sb, labels);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, " ");
}

/* Label text must be balanced: no raw newline (it would end the sample). The
 * full grammar is the caller's job; prom_label() produces it correctly. */
static bool labels_plausible(const char *labels)
{
        return !labels || !strchr(labels, '\n');
}

static const char *format_double(double value, char *buf, size_t n)
{
        if (isnan(value))
                return "NaN";
        if (isinf(value))
                return value > 0 ? "+Inf" : "-Inf";
        /* The shortest %g form that reads back as the same double. */
        for (int prec = 15; prec <= 17; prec++) {
                snprintf(buf, n, "%.*g", prec, value);
                if (strtod(buf, NULL) == value)
                        break;
        }
        return buf;
}

int prom_sample(struct strbuf *sb, const char *name, const char *labels, double value)
{
        if (!prom_name_valid(name) || !labels_plausible(labels))
                return -EINVAL;
        sample_prefix(sb, name, labels);
        char buf[40];
        strbuf_append(sb, format_double(value, buf, sizeof(buf)));
        strbuf_append(sb, "\n");
        return 0;
}

int prom_sample_u64(struct strbuf *sb, const char *name, const char *labels, uint64_t value)
{
        if (!prom_name_valid(name) || !labels_plausible(labels))
                return -EINVAL;
        sample_prefix(sb, name, labels);
        strbuf_appendf(sb, "%llu\n", (unsigned long long)value);
        return 0;
}

/* ---- histograms ---------------------------------------------------------------- */

#define BUCKET_MAX_S 3600.0

int prom_buckets_parse(const char *text, struct prom_buckets *out, const char **why)
{
        const char *dummy;
        if (!why)
                why = &dummy;
        struct prom_buckets b = {0};
        const char *p = text;
        if (!p || !*p) {
                *why = "empty: at least one bucket bound is needed";
                return -EINVAL;
        }
        for (;;) {
                if (b.n == PROM_BUCKETS_MAX) {
                        *why = "more than 32 bucket bounds";
                        return -EINVAL;
                }
                char *end = (char *)p;
                errno = 0;
                /* Plain decimals only: strtod would also take spaces and hex. */
                bool plain = is_digit(*p) || (*p == '.' && is_digit(p[1]));
                for (const char *q = p; plain && *q && *q != ','; q++)
                        plain = is_digit(*q) || *q == '.' || *q == 'e' || *q == 'E' || *q == '-' ||
                                *q == '+';
                double v = plain ? strtod(p, &end) : 0;
                if (end == p || errno || !(v > 0) || v > BUCKET_MAX_S || (*end && *end != ',')) {
                        *why = "each bound must be a number of seconds above 0 and at most 3600, "
                               "separated by commas";
                        return -EINVAL;
                }
                uint64_t ns = (uint64_t)(v * 1e9 + 0.5);
                if (ns == 0) {
                        *why = "a bound below one nanosecond";
                        return -EINVAL;
                }
                if (b.n && ns <= b.le_ns[b.n - 1]) {
                        *why = "bounds must be strictly increasing";
                        return -EINVAL;
                }
                b.le_ns[b.n++] = ns;
                if (!*end)
                        break;
                p = end + 1;
        }
        *out = b;
        return 0;
}

uint32_t prom_bucket_index(const struct prom_buckets *b, uint64_t ns)
{
        /* Binary search for the first bound >= ns. */
        uint32_t lo = 0, hi = b->n;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (b->le_ns[mid] >= ns)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return lo;
}

void prom_hist_observe(_Atomic uint64_t *cells, const struct prom_buckets *b, uint64_t ns)
{
        prom_cell_add(&cells[prom_bucket_index(b, ns)], 1);
        prom_cell_add(&cells[b->n + 1], ns);
}

int prom_hist_render(struct strbuf *sb, const char *name, const char *labels,
                     const struct prom_buckets *b, const uint64_t *cells)
{
        size_t nlen = name ? strlen(name) : 0;
        char metric[256];
        if (!prom_name_valid(name) || nlen + sizeof("_bucket") > sizeof(metric) ||
            !labels_plausible(labels))
                return -EINVAL;
        memcpy(metric, name, nlen);
        memcpy(metric + nlen, "_bucket", sizeof("_bucket"));
        uint64_t cum = 0;
        for (uint32_t i = 0; i <= b->n; i++) {
                cum += cells[i];
                char le[48];
                if (i < b->n)
                        format_double((double)b->le_ns[i] / 1e9, le, sizeof(le));
                strbuf_append(sb, metric);
                strbuf_appendf(sb, "{%s%sle=\"%s\"} %llu\n", labels ? labels : "",
                               labels && *labels ? "," : "", i < b->n ? le : "+Inf",
                               (unsigned long long)cum);
        }
        memcpy(metric + nlen, "_sum", sizeof("_sum"));
        prom_sample(sb, metric, labels, (double)cells[b->n + 1] / 1e9);
        memcpy(metric + nlen, "_count", sizeof("_count"));
        prom_sample_u64(sb, metric, labels, cum);
        return 0;
}

/* ---- bounded label sets ---------------------------------------------------------- */

enum { SLOT_EMPTY = 0, SLOT_BUSY = 1, SLOT_READY = 2, SLOT_STATE = 3 };
#define KEY_BUF    4096      /* label text of one series at most; longer goes to overflow */
#define BUSY_SPINS (1 << 16) /* waits for a concurrent writer of the same slot */

struct series_slot {
        _Atomic uint64_t word; /* hash tag | state */
        uint32_t index;        /* the series' cells, or max: the overflow series */
        uint32_t len;
        char *key; /* label text; NULL when it could not be stored */
};

struct series_shard {
        _Atomic uint64_t *cells;
        _Atomic uint64_t overflow;
        char pad[48]; /* shards are written by different threads */
};

struct prom_series {
        uint32_t max, nlabels, ncells, nshards;
        uint64_t mask;
        char **names;
        struct series_slot *slots;
        _Atomic uint32_t used;
        struct series_shard *shards;
        char *other;
};

void prom_series_free(struct prom_series *s)
{
        if (!s)
                return;
        for (uint32_t i = 0; s->names && i < s->nlabels; i++)
                free(s->names[i]);
        free(s->names);
        for (uint64_t i = 0; s->slots && i <= s->mask; i++)
                free(s->slots[i].key);
        free(s->slots);
        for (uint32_t i = 0; s->shards && i < s->nshards; i++)
                free(s->shards[i].cells);
        free(s->shards);
        free(s->other);
        free(s);
}

/* Appends name="value" pairs to buf; false when they do not fit. */
static bool key_build(const struct prom_series *s, const char *const *vals, char *buf, size_t cap,
                      size_t *len)
{
        size_t n = 0;
        for (uint32_t i = 0; i < s->nlabels; i++) {
                const char *name = s->names[i];
                size_t k = strlen(name);
                if (n + k + 4 > cap)
                        return false;
                if (i)
                        buf[n++] = ',';
                memcpy(buf + n, name, k);
                n += k;
                buf[n++] = '=';
                buf[n++] = '"';
                for (const char *v = vals[i] ? vals[i] : ""; *v; v++) {
                        if (n + 3 > cap)
                                return false;
                        if (*v == '\\' || *v == '"') {
                                buf[n++] = '\\';
                                buf[n++] = *v;
                        } else if (*v == '\n') {
                                buf[n++] = '\\';
                                buf[n++] = 'n';
                        } else {
                                buf[n++] = *v;
                        }
                }
                if (n + 2 > cap)
                        return false;
                buf[n++] = '"';
        }
        buf[n] = '\0';
        *len = n;
        return true;
}

struct prom_series *prom_series_new(uint32_t max_series, uint32_t nlabels, const char *const *names,
                                    uint32_t cells, uint32_t shards)
{
        if (!max_series || max_series > (1u << 24) || !nlabels || !cells || !shards)
                return NULL;
        for (uint32_t i = 0; i < nlabels; i++)
                if (!prom_label_name_valid(names[i]) || !strcmp(names[i], "le"))
                        return NULL;
        struct prom_series *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->max = max_series;
        s->nlabels = nlabels;
        s->ncells = cells;
        s->nshards = shards;
        uint64_t size = 64;
        while (size < 2ull * (max_series + 64))
                size <<= 1;
        s->mask = size - 1;
        s->names = calloc(nlabels, sizeof(*s->names));
        s->slots = calloc(size, sizeof(*s->slots));
        s->shards = calloc(shards, sizeof(*s->shards));
        if (!s->names || !s->slots || !s->shards)
                goto fail;
        for (uint32_t i = 0; i < nlabels; i++)
                if (!(s->names[i] = strdup(names[i])))
                        goto fail;
        for (uint32_t i = 0; i < shards; i++)
                if (!(s->shards[i].cells =
                          calloc((size_t)(max_series + 1) * cells, sizeof(*s->shards[i].cells))))
                        goto fail;
        const char **other = calloc(nlabels, sizeof(*other));
        char *buf = malloc(KEY_BUF);
        size_t len = 0;
        if (other && buf) {
                for (uint32_t i = 0; i < nlabels; i++)
                        other[i] = "other";
                if (key_build(s, other, buf, KEY_BUF, &len))
                        s->other = strdup(buf);
        }
        free(other);
        free(buf);
        if (!s->other)
                goto fail;
        return s;
fail:
        prom_series_free(s);
        return NULL;
}

static _Atomic uint64_t *shard_cells(struct prom_series *s, uint32_t shard, uint32_t index)
{
        struct series_shard *sh = &s->shards[shard];
        if (index >= s->max) {
                prom_cell_add(&sh->overflow, 1);
                index = s->max;
        }
        return sh->cells + (size_t)index * s->ncells;
}

_Atomic uint64_t *prom_series_cells(struct prom_series *s, uint32_t shard, const char *const *vals)
{
        char buf[KEY_BUF];
        size_t len;
        if (shard >= s->nshards)
                shard = 0;
        if (!key_build(s, vals, buf, sizeof(buf), &len))
                return shard_cells(s, shard, s->max);
        /* Eight bytes at a time through the mixer (the key is built on
         * every request: a byte-wise hash was a tenth of its cost). */
        uint64_t h = 0x9e3779b97f4a7c15ull ^ len;
        size_t at = 0;
        for (; at + 8 <= len; at += 8) {
                uint64_t word;
                memcpy(&word, buf + at, 8);
                h = hash_fmix64(h ^ word);
        }
        uint64_t tail = 0;
        memcpy(&tail, buf + at, len - at);
        h = hash_fmix64(h ^ tail);
        uint64_t tag = h & ~(uint64_t)SLOT_STATE;
        uint64_t i = h & s->mask;
        for (uint64_t probes = 0; probes <= s->mask;) {
                struct series_slot *sl = &s->slots[i];
                uint64_t w = atomic_load_explicit(&sl->word, memory_order_acquire);
                if (w == SLOT_EMPTY) {
                        if (atomic_load_explicit(&s->used, memory_order_relaxed) >= s->max)
                                return shard_cells(s, shard, s->max);
                        uint64_t expect = SLOT_EMPTY;
                        if (!atomic_compare_exchange_strong_explicit(
                                &sl->word, &expect, tag | SLOT_BUSY, memory_order_acq_rel,
                                memory_order_acquire))
                                continue; /* taken meanwhile: look at it again */
                        uint32_t idx = atomic_fetch_add_explicit(&s->used, 1, memory_order_relaxed);
                        sl->key = malloc(len + 1);
                        if (sl->key) {
                                memcpy(sl->key, buf, len + 1);
                                sl->len = (uint32_t)len;
                        }
                        sl->index = idx < s->max && sl->key ? idx : s->max;
                        atomic_store_explicit(&sl->word, tag | SLOT_READY, memory_order_release);
                        return shard_cells(s, shard, sl->index);
                }
                if ((w & ~(uint64_t)SLOT_STATE) == tag) {
                        for (uint32_t spin = 0; (w & SLOT_STATE) == SLOT_BUSY; spin++) {
                                if (spin == BUSY_SPINS)
                                        return shard_cells(s, shard, s->max);
                                w = atomic_load_explicit(&sl->word, memory_order_acquire);
                        }
                        if (sl->key && sl->len == len && !memcmp(sl->key, buf, len))
                                return shard_cells(s, shard, sl->index);
                }
                i = (i + 1) & s->mask;
                probes++;
        }
        return shard_cells(s, shard, s->max);
}

static void sum_cells(struct prom_series *s, uint32_t index, uint64_t *out)
{
        memset(out, 0, s->ncells * sizeof(*out));
        for (uint32_t k = 0; k < s->nshards; k++) {
                const _Atomic uint64_t *c = s->shards[k].cells + (size_t)index * s->ncells;
                for (uint32_t j = 0; j < s->ncells; j++)
                        out[j] += atomic_load_explicit(&c[j], memory_order_relaxed);
        }
}

void prom_series_foreach(struct prom_series *s, prom_series_fn fn, void *ctx)
{
        uint64_t *tmp = malloc(s->ncells * sizeof(*tmp));
        if (!tmp)
                return;
        for (uint64_t i = 0; i <= s->mask; i++) {
                struct series_slot *sl = &s->slots[i];
                uint64_t w = atomic_load_explicit(&sl->word, memory_order_acquire);
                if ((w & SLOT_STATE) != SLOT_READY || sl->index >= s->max)
                        continue;
                sum_cells(s, sl->index, tmp);
                fn(ctx, sl->key, tmp);
        }
        if (prom_series_overflows(s)) {
                sum_cells(s, s->max, tmp);
                fn(ctx, s->other, tmp);
        }
        free(tmp);
}

uint32_t prom_series_count(struct prom_series *s)
{
        uint32_t n = atomic_load_explicit(&s->used, memory_order_relaxed);
        return n < s->max ? n : s->max;
}

uint64_t prom_series_overflows(struct prom_series *s)
{
        uint64_t n = 0;
        for (uint32_t k = 0; k < s->nshards; k++)
                n += atomic_load_explicit(&s->shards[k].overflow, memory_order_relaxed);
        return n;
}

/* ---- process metrics ------------------------------------------------------------- */

static void process_sample(struct strbuf *sb, const char *name, const char *type, const char *help,
                           double v)
{
        prom_family(sb, name, type, help);
        prom_sample(sb, name, NULL, v);
}

static bool read_small(const char *path, char *buf, size_t cap)
{
        FILE *f = fopen(path, "re");
        if (!f)
                return false;
        size_t n = fread(buf, 1, cap - 1, f);
        fclose(f);
        buf[n] = '\0';
        return n > 0;
}

void prom_process_render(struct strbuf *sb)
{
        char stat[1024];
        long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
        const char *rp =
            read_small("/proc/self/stat", stat, sizeof(stat)) ? strrchr(stat, ')') : NULL;
        /* After the command's ")": state (field 3), then fields 4...; utime
         * is 14, stime 15, starttime 22, vsize 23, rss 24. */
        unsigned long long utime, stime, start, vsize;
        long long rss;
        if (rp && tick > 0 &&
            sscanf(rp + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
                   "%llu %llu %lld",
                   &utime, &stime, &start, &vsize, &rss) == 5) {
                process_sample(sb, "process_cpu_seconds_total", "counter",
                               "Total user and system CPU time spent in seconds.",
                               (double)(utime + stime) / (double)tick);
                process_sample(sb, "process_resident_memory_bytes", "gauge",
                               "Resident memory size in bytes.", (double)rss * (double)page);
                process_sample(sb, "process_virtual_memory_bytes", "gauge",
                               "Virtual memory size in bytes.", (double)vsize);
                char pst[4096];
                const char *bt =
                    read_small("/proc/stat", pst, sizeof(pst)) ? strstr(pst, "\nbtime ") : NULL;
                unsigned long long btime;
                if (bt && sscanf(bt + 7, "%llu", &btime) == 1)
                        process_sample(sb, "process_start_time_seconds", "gauge",
                                       "Start time of the process since unix epoch in seconds.",
                                       (double)btime + (double)start / (double)tick);
        }
        DIR *d = opendir("/proc/self/fd");
        if (d) {
                long n = 0;
                struct dirent *e;
                while ((e = readdir(d)))
                        n += e->d_name[0] != '.';
                closedir(d);
                /* The directory's own descriptor is not the process's. */
                process_sample(sb, "process_open_fds", "gauge", "Number of open file descriptors.",
                               (double)(n > 0 ? n - 1 : 0));
        }
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
                process_sample(sb, "process_max_fds", "gauge",
                               "Maximum number of open file descriptors.",
                               rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

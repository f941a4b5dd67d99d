// SPDX-License-Identifier: Apache-2.0
/* shuntctl top's arithmetic; see top.h. */
#include "admin/top.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"

static uint64_t str_hash(const char *s)
{
        uint64_t h = 0;
        for (; *s; s++)
                h = hash_fmix64(h ^ (unsigned char)*s);
        return h;
}

static bool name_start(int c)
{
        return isalpha(c) || c == '_' || c == ':';
}

static bool name_char(int c)
{
        return isalnum(c) || c == '_' || c == ':';
}

int top_parse_line(const char *line, size_t len, struct top_sample *out)
{
        size_t i = 0;
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
        if (i == len || line[i] == '#' || line[i] == '\n' || line[i] == '\r')
                return 0;
        if (!name_start((unsigned char)line[i]))
                return -1;
        size_t n = 0;
        while (i < len && name_char((unsigned char)line[i])) {
                if (n + 1 >= sizeof(out->name))
                        return -1;
                out->name[n++] = line[i++];
        }
        out->name[n] = '\0';
        out->n_labels = 0;
        size_t vb = 0;
        if (i < len && line[i] == '{') {
                i++;
                for (;;) {
                        while (i < len && line[i] == ' ')
                                i++;
                        if (i < len && line[i] == '}') {
                                i++;
                                break;
                        }
                        if (out->n_labels == TOP_MAX_LABELS || i == len ||
                            !name_start((unsigned char)line[i]))
                                return -1;
                        char *lname = out->label[out->n_labels];
                        size_t ln = 0;
                        while (i < len && name_char((unsigned char)line[i])) {
                                if (ln + 1 >= sizeof(out->label[0]))
                                        return -1;
                                lname[ln++] = line[i++];
                        }
                        lname[ln] = '\0';
                        if (i + 1 >= len || line[i] != '=' || line[i + 1] != '"')
                                return -1;
                        i += 2;
                        out->value_of[out->n_labels] = out->val_buf + vb;
                        for (;;) {
                                if (i == len || vb + 2 >= sizeof(out->val_buf))
                                        return -1;
                                char c = line[i++];
                                if (c == '"')
                                        break;
                                if (c == '\\') {
                                        if (i == len)
                                                return -1;
                                        c = line[i++];
                                        if (c == 'n')
                                                c = '\n';
                                        else if (c != '\\' && c != '"')
                                                return -1;
                                }
                                out->val_buf[vb++] = c;
                        }
                        out->val_buf[vb++] = '\0';
                        out->n_labels++;
                        if (i < len && line[i] == ',')
                                i++;
                        else if (i < len && line[i] != '}' && line[i] != ' ')
                                return -1;
                }
        }
        if (i == len || (line[i] != ' ' && line[i] != '\t'))
                return -1;
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
                i++;
        char num[64];
        size_t k = 0;
        while (i < len && line[i] != ' ' && line[i] != '\t' && line[i] != '\n' && line[i] != '\r') {
                if (k + 1 >= sizeof(num))
                        return -1;
                num[k++] = line[i++];
        }
        num[k] = '\0';
        if (!k)
                return -1;
        char *end;
        out->value = strtod(num, &end);
        if (*end)
                return -1;
        return 1;
}

const char *top_label(const struct top_sample *s, const char *name)
{
        for (size_t i = 0; i < s->n_labels; i++)
                if (strcmp(s->label[i], name) == 0)
                        return s->value_of[i];
        return NULL;
}

/* ---- folding one scrape -------------------------------------------------------- */

#define SLOTS (TOP_MAX_ROWS * 2) /* open addressing, at most half full */

struct folder {
        struct top_scrape *s;
        int32_t slot[SLOTS]; /* row index + 1; 0 empty */
};

static struct top_row *row_for(struct folder *f, const char *dir, const char *ns, const char *name)
{
        char svc[sizeof(((struct top_row *)0)->service)];
        snprintf(svc, sizeof(svc), "%s/%s", ns ? ns : "unknown", name ? name : "unknown");
        uint64_t h = str_hash(svc) ^ str_hash(dir);
        for (uint32_t probe = 0; probe < SLOTS; probe++) {
                uint32_t i = (uint32_t)((h + probe) % SLOTS);
                int32_t r = f->slot[i];
                if (!r) {
                        if (f->s->n_rows == TOP_MAX_ROWS) {
                                f->s->dropped_rows++;
                                return NULL;
                        }
                        struct top_row *row = &f->s->rows[f->s->n_rows];
                        memset(row, 0, sizeof(*row));
                        snprintf(row->direction, sizeof(row->direction), "%s", dir);
                        memcpy(row->service, svc, sizeof(row->service));
                        f->slot[i] = (int32_t)++f->s->n_rows;
                        return row;
                }
                struct top_row *row = &f->s->rows[r - 1];
                if (strcmp(row->service, svc) == 0 && strcmp(row->direction, dir) == 0)
                        return row;
        }
        return NULL;
}

static void add_bucket(struct top_row *r, double le, double v)
{
        size_t i = 0;
        while (i < r->n_buckets && r->le[i] < le)
                i++;
        if (i < r->n_buckets && r->le[i] == le) {
                r->bucket[i] += v;
                return;
        }
        if (r->n_buckets == TOP_MAX_BUCKETS)
                return;
        memmove(&r->le[i + 1], &r->le[i], (r->n_buckets - i) * sizeof(double));
        memmove(&r->bucket[i + 1], &r->bucket[i], (r->n_buckets - i) * sizeof(double));
        r->le[i] = le;
        r->bucket[i] = v;
        r->n_buckets++;
}

/* "ns/name:port" -> ns, name. */
static void split_key(const char *key, char *ns, size_t nl, char *name, size_t nn)
{
        const char *slash = strchr(key, '/');
        if (!slash) {
                snprintf(ns, nl, "unknown");
                snprintf(name, nn, "%s", key);
                return;
        }
        snprintf(ns, nl, "%.*s", (int)(slash - key), key);
        const char *colon = strrchr(slash + 1, ':');
        int n = colon ? (int)(colon - slash - 1) : (int)strlen(slash + 1);
        snprintf(name, nn, "%.*s", n, slash + 1);
}

static void fold(struct folder *f, const struct top_sample *s)
{
        enum { REQ, BUCKET, RX, TX, OPENED, CLOSED, EP_ACTIVE, NONE } kind = NONE;
        static const char *const names[] = {"shunt_requests_total",
                                            "shunt_request_duration_seconds_bucket",
                                            "shunt_tcp_received_bytes_total",
                                            "shunt_tcp_sent_bytes_total",
                                            "shunt_tcp_connections_opened_total",
                                            "shunt_tcp_connections_closed_total",
                                            "shunt_endpoint_active"};
        for (int i = 0; i < NONE; i++)
                if (strcmp(s->name, names[i]) == 0)
                        kind = i;
        if (kind == NONE || !isfinite(s->value))
                return;
        struct top_row *r;
        if (kind == EP_ACTIVE) {
                const char *key = top_label(s, "service");
                if (!key)
                        return;
                char ns[TOP_NAME_MAX], name[TOP_NAME_MAX];
                split_key(key, ns, sizeof(ns), name, sizeof(name));
                r = row_for(f, "outbound", ns, name);
                if (r)
                        r->active += s->value;
                return;
        }
        const char *dir = top_label(s, "direction");
        if (!dir)
                return;
        r = row_for(f, dir, top_label(s, "destination_namespace"),
                    top_label(s, "destination_service"));
        if (!r)
                return;
        switch (kind) {
        case REQ: {
                const char *cls = top_label(s, "response_code_class");
                r->requests += s->value;
                if (!cls || strcmp(cls, "5xx") != 0)
                        r->ok += s->value;
                r->has_requests = true;
                break;
        }
        case BUCKET: {
                const char *le = top_label(s, "le");
                char *end;
                double b = le ? strtod(le, &end) : NAN;
                if (le && !*end && !isnan(b))
                        add_bucket(r, b, s->value);
                break;
        }
        case RX:
        case TX:
                r->bytes += s->value;
                r->has_tcp = true;
                break;
        case OPENED:
        case CLOSED:
                if (strcmp(dir, "inbound") == 0)
                        r->active += kind == OPENED ? s->value : -s->value;
                r->has_tcp = true;
                break;
        default:
                break;
        }
}

int top_scrape_parse(const char *text, size_t len, struct top_scrape *s)
{
        memset(s, 0, sizeof(*s));
        s->rows = malloc(TOP_MAX_ROWS * sizeof(*s->rows));
        struct folder *f = calloc(1, sizeof(*f));
        struct top_sample *smp = malloc(sizeof(*smp));
        if (!s->rows || !f || !smp) {
                free(f);
                free(smp);
                top_scrape_free(s);
                return -ENOMEM;
        }
        f->s = s;
        size_t off = 0;
        while (off < len) {
                const char *nl = memchr(text + off, '\n', len - off);
                size_t ll = nl ? (size_t)(nl - text - off) : len - off;
                int rc = top_parse_line(text + off, ll, smp);
                if (rc < 0)
                        s->bad_lines++;
                else if (rc > 0)
                        fold(f, smp);
                off += ll + 1;
        }
        free(f);
        free(smp);
        return 0;
}

void top_scrape_free(struct top_scrape *s)
{
        free(s->rows);
        s->rows = NULL;
        s->n_rows = 0;
}

/* ---- the arithmetic ----------------------------------------------------------- */

double top_counter_delta(double prev, double cur)
{
        return cur >= prev ? cur - prev : cur;
}

double top_histogram_quantile(double q, const double *le, const double *cum, size_t n)
{
        if (isnan(q))
                return NAN;
        if (q < 0)
                return -INFINITY;
        if (q > 1)
                return INFINITY;
        if (n < 2 || !isinf(le[n - 1]) || le[n - 1] < 0)
                return NAN;
        double total = cum[n - 1];
        if (!(total > 0))
                return NAN;
        /* Counts that go down across buckets (scraped while being written)
         * are raised to the bucket before, as Prometheus does. */
        double fixed[TOP_MAX_BUCKETS];
        if (n > TOP_MAX_BUCKETS)
                return NAN;
        for (size_t i = 0; i < n; i++)
                fixed[i] = i && cum[i] < fixed[i - 1] ? fixed[i - 1] : cum[i];
        total = fixed[n - 1];
        double rank = q * total;
        size_t b = 0;
        while (b < n - 1 && fixed[b] < rank)
                b++;
        if (b == n - 1)
                return le[n - 2];
        if (b == 0 && le[0] <= 0)
                return le[0];
        double start = b ? le[b - 1] : 0, end = le[b];
        double below = b ? fixed[b - 1] : 0;
        double count = fixed[b] - below;
        if (count <= 0)
                return end;
        return start + (end - start) * ((rank - below) / count);
}

int top_sort_parse(const char *s)
{
        static const char *const names[] = {"rps",   "success", "p50", "p99",
                                            "bytes", "active",  "name"};
        for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
                if (s && strcmp(s, names[i]) == 0)
                        return i;
        return -1;
}

static const struct top_row *find_row(const struct top_scrape *s, const struct top_row *like)
{
        for (size_t i = 0; s && i < s->n_rows; i++)
                if (strcmp(s->rows[i].service, like->service) == 0 &&
                    strcmp(s->rows[i].direction, like->direction) == 0)
                        return &s->rows[i];
        return NULL;
}

static enum top_sort g_sort;

/* NaN sorts last whatever the order. */
static int cmp_num(double a, double b, bool ascending)
{
        if (isnan(a) || isnan(b))
                return isnan(a) - isnan(b);
        if (a == b)
                return 0;
        return (a < b) == ascending ? -1 : 1;
}

static int cmp_view(const void *pa, const void *pb)
{
        const struct top_view *a = pa, *b = pb;
        int c = 0;
        switch (g_sort) {
        case TOP_SORT_RPS:
                c = cmp_num(a->rps, b->rps, false);
                break;
        case TOP_SORT_SUCCESS:
                c = cmp_num(a->success, b->success, true);
                break;
        case TOP_SORT_P50:
                c = cmp_num(a->p50, b->p50, false);
                break;
        case TOP_SORT_P99:
                c = cmp_num(a->p99, b->p99, false);
                break;
        case TOP_SORT_BYTES:
                c = cmp_num(a->bytes_per_s, b->bytes_per_s, false);
                break;
        case TOP_SORT_ACTIVE:
                c = cmp_num(a->active, b->active, false);
                break;
        case TOP_SORT_NAME:
                break;
        }
        if (!c)
                c = strcmp(a->service, b->service);
        if (!c)
                c = strcmp(a->direction, b->direction);
        return c;
}

int top_compute(const struct top_scrape *prev, const struct top_scrape *cur, double seconds,
                enum top_sort by, struct top_view **out)
{
        *out = NULL;
        if (!(seconds > 0) || (unsigned)by > TOP_SORT_NAME)
                return -EINVAL;
        struct top_view *v = calloc(cur->n_rows ? cur->n_rows : 1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        for (size_t i = 0; i < cur->n_rows; i++) {
                const struct top_row *c = &cur->rows[i];
                const struct top_row *p = find_row(prev, c);
                struct top_view *o = &v[i];
                snprintf(o->direction, sizeof(o->direction), "%s", c->direction);
                memcpy(o->service, c->service, sizeof(o->service));
                double dreq = top_counter_delta(p ? p->requests : 0, c->requests);
                double dok = top_counter_delta(p ? p->ok : 0, c->ok);
                if (p && c->requests < p->requests)
                        dok = c->ok; /* reset: both from zero */
                o->rps = dreq / seconds;
                o->success = dreq > 0 ? dok / dreq : NAN;
                double cum[TOP_MAX_BUCKETS];
                bool reset = false;
                for (size_t b = 0; p && b < c->n_buckets; b++) {
                        size_t k = 0;
                        while (k < p->n_buckets && p->le[k] != c->le[b])
                                k++;
                        if (k < p->n_buckets && c->bucket[b] < p->bucket[k])
                                reset = true;
                }
                for (size_t b = 0; b < c->n_buckets; b++) {
                        double before = 0;
                        for (size_t k = 0; p && !reset && k < p->n_buckets; k++)
                                if (p->le[k] == c->le[b])
                                        before = p->bucket[k];
                        cum[b] = c->bucket[b] - before;
                }
                o->p50 = top_histogram_quantile(0.5, c->le, cum, c->n_buckets);
                o->p99 = top_histogram_quantile(0.99, c->le, cum, c->n_buckets);
                o->bytes_per_s = top_counter_delta(p ? p->bytes : 0, c->bytes) / seconds;
                o->active = c->active > 0 ? c->active : 0;
        }
        g_sort = by;
        qsort(v, cur->n_rows, sizeof(*v), cmp_view);
        *out = v;
        return (int)cur->n_rows;
}

// SPDX-License-Identifier: Apache-2.0
/* Access logs and traces; see obs.h. */
#include "proxy/obs.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/sockaddr.h"
#include "core/spsc.h"
#include "proxy/h2proxy.h"
#include "proxy/proxy-int.h"
#include "proxy/reqmetrics.h"
#include "route/route.h"
#include "tls/conn.h"

#define LINE_MAX_      4096 /* an access line; a longer one is dropped (counted) */
#define WRITE_BATCH    (64u << 10)
#define WRITER_WAIT_MS 50
#define EXPORT_POLL_MS 20

/* A finished span as it waits for export: fixed size, no pointers. */
struct span_rec {
        uint8_t trace_id[16], span_id[8], parent_id[8];
        uint8_t kind;  /* OTLP SpanKind: 2 server (inbound), 3 client (outbound) */
        uint8_t proto; /* 1 HTTP/1.1, 2 HTTP/2, 3 gRPC */
        int16_t grpc_status;
        int32_t status;
        uint64_t start_unix_ns, end_unix_ns;
        uint64_t bytes_received, bytes_sent;
        char method[16];
        char path[128];
        char authority[96];
        char peer_id[160];
        char endpoint[SOCKADDR_STRLEN];
        char client[SOCKADDR_STRLEN];
        char service[96];
        char request_id[40];
};

struct obs_worker {
        struct spsc_ring *lines; /* access lines */
        struct spsc_ring *spans; /* struct span_rec */
        _Atomic uint64_t lines_dropped, spans_dropped;
        _Atomic bool closed;
        struct obs_worker *next;
};

struct obs {
        pthread_mutex_t mu; /* the list; workers take it only to attach */
        struct obs_worker *list;
        uint32_t line_buf, span_queue;
        /* access log */
        int fd;
        bool fd_owned;
        int efd;
        _Atomic bool writer_sleeping;
        pthread_t writer;
        /* traces */
        bool tracing;
        char endpoint[CONFIG_PATH_MAX];
        char service_name[128];
        char version[64];
        uint32_t batch, timeout_ms, flush_ms;
        uint32_t mark; /* SO_MARK of the export connections: never captured */
        pthread_t exporter;
        _Atomic bool stop;
        /* counters (the writer's or the exporter's own; retired workers' drops) */
        _Atomic uint64_t lines_written, lines_dropped_retired, write_errors;
        _Atomic uint64_t spans_exported, spans_dropped_retired, spans_export_failed;
        _Atomic uint64_t exports_ok, exports_failed;
};

static _Atomic(struct obs *) g_obs;

const char *const obs_trace_in_fields[OBS_TRACE_IN_FIELDS] = {
    "traceparent",       "b3",           "x-b3-traceid", "x-b3-spanid",
    "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
};

static void counter_add(_Atomic uint64_t *c, uint64_t n)
{
        atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* Single writer (the worker): no read-modify-write needed. */
static void own_inc(_Atomic uint64_t *c)
{
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                              memory_order_relaxed);
}

/* ---- per worker ------------------------------------------------------------------ */

static struct obs_worker *worker_obs(struct obs *o, struct worker *w)
{
        if (w->obs)
                return w->obs;
        struct obs_worker *ow = calloc(1, sizeof(*ow));
        if (!ow)
                return NULL;
        ow->lines = spsc_new(o->line_buf);
        if (o->tracing)
                ow->spans = spsc_new((uint32_t)(o->span_queue * (sizeof(struct span_rec) + 4)));
        if (!ow->lines || (o->tracing && !ow->spans)) {
                free(ow->lines);
                free(ow->spans);
                free(ow);
                return NULL;
        }
        pthread_mutex_lock(&o->mu);
        ow->next = o->list;
        o->list = ow;
        pthread_mutex_unlock(&o->mu);
        w->obs = ow;
        return ow;
}

void obs_worker_detach(struct obs_worker *ow)
{
        if (ow)
                atomic_store_explicit(&ow->closed, true, memory_order_release);
}

static void wake_writer(struct obs *o)
{
        if (atomic_load_explicit(&o->writer_sleeping, memory_order_relaxed) &&
            atomic_exchange(&o->writer_sleeping, false)) {
                uint64_t one = 1;
                ssize_t rc = write(o->efd, &one, sizeof(one));
                (void)rc;
        }
}

static bool sample(struct worker *w, double ratio)
{
        if (ratio >= 1.0)
                return true;
        if (ratio <= 0.0)
                return false;
        return (double)(worker_random(w) >> 11) * 0x1p-53 < ratio;
}

/* ---- traces: begin and headers --------------------------------------------------- */

static void random_bytes(struct worker *w, uint8_t *b, size_t n)
{
        do {
                for (size_t i = 0; i < n; i += 8) {
                        uint64_t r = worker_random(w);
                        memcpy(b + i, &r, n - i < 8 ? n - i : 8);
                }
        } while (trace_id_is_zero(b, n));
}

void obs_trace_begin(struct worker *w, const struct trace_ctx *in, enum trace_format b3,
                     struct span_ctx *span)
{
        memset(span, 0, sizeof(*span));
        struct obs *o = atomic_load_explicit(&g_obs, memory_order_acquire);
        if (!o || !o->tracing)
                return;
        span->active = true;
        bool have = in && !trace_id_is_zero(in->trace_id, 16);
        if (have) {
                memcpy(span->trace_id, in->trace_id, 16);
                memcpy(span->parent_id, in->span_id, 8);
        } else {
                random_bytes(w, span->trace_id, 16);
        }
        random_bytes(w, span->span_id, 8);
        span->format = (uint8_t)b3;
        if (in && in->sampled != TRACE_SAMPLE_DEFER)
                span->sampled = in->sampled == TRACE_SAMPLE_YES;
        else
                span->sampled = sample(w, worker_cfg(w)->tracing_ratio);
}

void obs_trace_headers(const struct span_ctx *span, struct obs_trace_hdrs *out)
{
        out->n = 0;
        if (!span->active)
                return;
        int k = 0;
        out->name[k] = "traceparent";
        out->value[k] = out->tp;
        out->len[k++] =
            trace_format_traceparent(span->trace_id, span->span_id, span->sampled, out->tp);
        if (span->format == TRACE_FMT_B3_SINGLE) {
                out->name[k] = "b3";
                out->value[k] = out->b3;
                out->len[k++] =
                    trace_format_b3(span->trace_id, span->span_id, span->sampled, out->b3);
        } else if (span->format == TRACE_FMT_B3_MULTI) {
                trace_hex(span->trace_id, 16, out->tid);
                trace_hex(span->span_id, 8, out->sid);
                out->name[k] = "x-b3-traceid";
                out->value[k] = out->tid;
                out->len[k++] = TRACE_ID_HEX;
                out->name[k] = "x-b3-spanid";
                out->value[k] = out->sid;
                out->len[k++] = SPAN_ID_HEX;
                if (!trace_id_is_zero(span->parent_id, 8)) {
                        trace_hex(span->parent_id, 8, out->pid);
                        out->name[k] = "x-b3-parentspanid";
                        out->value[k] = out->pid;
                        out->len[k++] = SPAN_ID_HEX;
                }
                out->name[k] = "x-b3-sampled";
                out->value[k] = span->sampled ? "1" : "0";
                out->len[k++] = 1;
        }
        out->n = k;
}

/* ---- the end of a request ---------------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *src)
{
        snprintf(dst, cap, "%s", src ? src : "");
}

static const char *peer_identity(const struct req_end *r)
{
        if (r->dir == DIR_INBOUND)
                return r->peer_tls ? tls_conn_peer_id(r->peer_tls) : NULL;
        return r->route && r->route->table ? route_identity(r->route) : NULL;
}

static const char *service_of(const struct req_end *r)
{
        if (r->service && r->service[0] && strcmp(r->service, "-"))
                return r->service;
        if (r->route && r->route->table)
                return route_service_name(r->route);
        return NULL;
}

static uint64_t unix_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void push_span(struct obs *o, struct worker *w, const struct req_end *r, uint64_t dur_ns,
                      uint64_t end_unix)
{
        struct obs_worker *ow = worker_obs(o, w);
        if (!ow || !ow->spans)
                return;
        struct span_rec s;
        memset(&s, 0, sizeof(s));
        memcpy(s.trace_id, r->span->trace_id, 16);
        memcpy(s.span_id, r->span->span_id, 8);
        memcpy(s.parent_id, r->span->parent_id, 8);
        s.kind = r->dir == DIR_INBOUND ? 2 : 3;
        s.proto = !strcmp(r->protocol, "grpc") ? 3 : !strcmp(r->protocol, "http2") ? 2 : 1;
        s.grpc_status = (int16_t)r->grpc_status;
        s.status = r->status;
        s.end_unix_ns = end_unix;
        s.start_unix_ns = end_unix - dur_ns;
        s.bytes_received = r->bytes_received;
        s.bytes_sent = r->bytes_sent;
        copy_str(s.method, sizeof(s.method), r->method);
        copy_str(s.path, sizeof(s.path), r->path);
        copy_str(s.authority, sizeof(s.authority), r->authority);
        copy_str(s.peer_id, sizeof(s.peer_id), peer_identity(r));
        copy_str(s.service, sizeof(s.service), service_of(r));
        copy_str(s.request_id, sizeof(s.request_id), r->request_id);
        if (r->endpoint && r->endpoint->ss_family)
                sockaddr_format(r->endpoint, s.endpoint, sizeof(s.endpoint));
        if (r->client && r->client->ss_family)
                sockaddr_format(r->client, s.client, sizeof(s.client));
        if (!spsc_push(ow->spans, &s, sizeof(s)))
                own_inc(&ow->spans_dropped);
}

static void json_field_str(struct strbuf *sb, const char *key, const char *v)
{
        strbuf_appendf(sb, ",\"%s\":", key);
        if (v && v[0])
                strbuf_append_json_string(sb, v);
        else
                strbuf_append(sb, "null");
}

static void json_field_addr(struct strbuf *sb, const char *key, const struct sockaddr_storage *a)
{
        char buf[SOCKADDR_STRLEN];
        json_field_str(sb, key, a && a->ss_family ? sockaddr_format(a, buf, sizeof(buf)) : NULL);
}

static void line_begin(struct strbuf *sb, const char *type, bool inbound, const char *protocol,
                       uint64_t conn_id)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strbuf_appendf(
            sb,
            "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ\",\"component\":\"access\","
            "\"type\":\"%s\",\"direction\":\"%s\",\"protocol\":",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000, type, inbound ? "inbound" : "outbound");
        strbuf_append_json_string(sb, protocol);
        strbuf_appendf(sb, ",\"conn\":%llu", (unsigned long long)conn_id);
}

static void line_push(struct obs *o, struct worker *w, struct strbuf *sb)
{
        struct obs_worker *ow = worker_obs(o, w);
        if (!ow)
                return;
        strbuf_append(sb, "}\n");
        if (sb->truncated || !spsc_push(ow->lines, sb->data, (uint32_t)sb->len)) {
                own_inc(&ow->lines_dropped);
                return;
        }
        wake_writer(o);
}

void obs_request_end(struct worker *w, const struct req_end *r)
{
        struct obs *o = atomic_load_explicit(&g_obs, memory_order_acquire);
        if (!o)
                return;
        const struct shunt_config *cfg = worker_cfg(w);
        uint64_t now = clock_mono_ns();
        uint64_t dur = now > r->start_ns && r->start_ns ? now - r->start_ns : 0;
        bool traced = r->span && r->span->active;
        if (traced && r->span->sampled)
                push_span(o, w, r, dur, unix_now_ns());
        bool error = r->status == 0 || r->status >= 400;
        if (!cfg->access_log_enabled || (!error && !sample(w, cfg->access_log_ratio)))
                return;
        char buf[LINE_MAX_];
        struct strbuf sb;
        strbuf_init_static(&sb, buf, sizeof(buf));
        line_begin(&sb, "http", r->dir == DIR_INBOUND, r->protocol, r->conn_id);
        if (r->stream_id)
                strbuf_appendf(&sb, ",\"stream\":%u", r->stream_id);
        json_field_addr(&sb, "client", r->client);
        json_field_addr(&sb, "destination", r->orig_dst);
        json_field_str(&sb, "service", service_of(r));
        json_field_addr(&sb, "upstream", r->endpoint);
        if (r->dir != DIR_INBOUND && r->route && r->route->locality)
                json_field_str(&sb, "locality", r->route->locality);
        json_field_str(&sb, "peer_identity", peer_identity(r));
        json_field_str(&sb, "method", r->method);
        json_field_str(&sb, "path", r->path);
        json_field_str(&sb, "authority", r->authority);
        strbuf_appendf(&sb, ",\"status\":%d", r->status);
        if (r->grpc_status >= 0)
                strbuf_appendf(&sb, ",\"grpc_status\":%d", r->grpc_status);
        else
                strbuf_append(&sb, ",\"grpc_status\":null");
        json_field_str(&sb, "request_id", r->request_id);
        char tid[TRACE_ID_HEX + 1], sid[SPAN_ID_HEX + 1];
        if (traced) {
                trace_hex(r->span->trace_id, 16, tid);
                trace_hex(r->span->span_id, 8, sid);
        }
        json_field_str(&sb, "trace_id", traced ? tid : NULL);
        json_field_str(&sb, "span_id", traced ? sid : NULL);
        strbuf_appendf(&sb, ",\"sampled\":%s", traced && r->span->sampled ? "true" : "false");
        strbuf_appendf(&sb,
                       ",\"attempts\":%u,\"bytes_received\":%llu,\"bytes_sent\":%llu,"
                       "\"duration_ms\":%.3f",
                       r->attempts, (unsigned long long)r->bytes_received,
                       (unsigned long long)r->bytes_sent, (double)dur / 1e6);
        json_field_str(&sb, "end", r->end ? r->end : "done");
        line_push(o, w, &sb);
}

void obs_tcp_end(struct worker *w, const struct obs_tcp_end *t)
{
        struct obs *o = atomic_load_explicit(&g_obs, memory_order_acquire);
        if (!o)
                return;
        const struct shunt_config *cfg = worker_cfg(w);
        if (!cfg->access_log_enabled || (!t->error && !sample(w, cfg->access_log_ratio)))
                return;
        char buf[LINE_MAX_];
        struct strbuf sb;
        strbuf_init_static(&sb, buf, sizeof(buf));
        line_begin(&sb, "tcp", t->inbound, t->protocol, t->conn_id);
        json_field_addr(&sb, "client", t->client);
        json_field_addr(&sb, "destination", t->orig_dst);
        json_field_str(&sb, "service", t->service && strcmp(t->service, "-") ? t->service : NULL);
        json_field_addr(&sb, "upstream", t->upstream);
        if (t->locality)
                json_field_str(&sb, "locality", t->locality);
        json_field_str(&sb, "peer_identity", t->peer_id);
        strbuf_appendf(&sb, ",\"bytes_received\":%llu,\"bytes_sent\":%llu,\"duration_ms\":%llu",
                       (unsigned long long)t->bytes_received, (unsigned long long)t->bytes_sent,
                       (unsigned long long)t->duration_ms);
        json_field_str(&sb, "end", t->end);
        line_push(o, w, &sb);
}

/* ---- the access-log writer --------------------------------------------------------- */

/* Frees closed workers whose rings are empty, folding in their drops. */
static void reap(struct obs *o)
{
        for (struct obs_worker **pp = &o->list; *pp;) {
                struct obs_worker *ow = *pp;
                if (atomic_load_explicit(&ow->closed, memory_order_acquire) &&
                    spsc_empty(ow->lines) && (!ow->spans || spsc_empty(ow->spans))) {
                        *pp = ow->next;
                        counter_add(&o->lines_dropped_retired, atomic_load(&ow->lines_dropped));
                        counter_add(&o->spans_dropped_retired, atomic_load(&ow->spans_dropped));
                        free(ow->lines);
                        free(ow->spans);
                        free(ow);
                        continue;
                }
                pp = &ow->next;
        }
}

static void write_all(struct obs *o, const char *p, size_t n)
{
        while (n) {
                ssize_t rc = write(o->fd, p, n);
                if (rc < 0 && errno == EINTR)
                        continue;
                if (rc <= 0) {
                        counter_add(&o->write_errors, 1);
                        return;
                }
                p += rc;
                n -= (size_t)rc;
        }
}

/* One pass over every ring: whatever is queued is written. Returns the
 * number of lines. */
static size_t drain_lines(struct obs *o, char *batch)
{
        size_t lines = 0, len = 0;
        pthread_mutex_lock(&o->mu);
        for (struct obs_worker *ow = o->list; ow; ow = ow->next) {
                uint32_t n;
                while (len + LINE_MAX_ <= WRITE_BATCH &&
                       spsc_pop(ow->lines, batch + len, LINE_MAX_, &n)) {
                        if (n > LINE_MAX_)
                                continue;
                        len += n;
                        lines++;
                }
                if (len + LINE_MAX_ > WRITE_BATCH) {
                        write_all(o, batch, len);
                        len = 0;
                }
        }
        if (!o->tracing)
                reap(o);
        pthread_mutex_unlock(&o->mu);
        if (len)
                write_all(o, batch, len);
        counter_add(&o->lines_written, lines);
        return lines;
}

static void *writer_main(void *arg)
{
        struct obs *o = arg;
        char *batch = malloc(WRITE_BATCH);
        if (!batch)
                return NULL;
        for (;;) {
                if (drain_lines(o, batch))
                        continue;
                if (atomic_load(&o->stop)) {
                        if (!drain_lines(o, batch))
                                break;
                        continue;
                }
                atomic_store(&o->writer_sleeping, true);
                /* A line pushed between the drain and here still wakes us
                 * within WRITER_WAIT_MS. */
                struct pollfd p = {.fd = o->efd, .events = POLLIN};
                if (poll(&p, 1, WRITER_WAIT_MS) > 0) {
                        uint64_t v;
                        ssize_t rc = read(o->efd, &v, sizeof(v));
                        (void)rc;
                }
                atomic_store(&o->writer_sleeping, false);
        }
        free(batch);
        return NULL;
}

/* ---- the span exporter -------------------------------------------------------------- */

static void attr_str(struct strbuf *sb, bool *first, const char *key, const char *v)
{
        if (!v || !v[0])
                return;
        strbuf_append(sb, *first ? "{\"key\":" : ",{\"key\":");
        *first = false;
        strbuf_append_json_string(sb, key);
        strbuf_append(sb, ",\"value\":{\"stringValue\":");
        strbuf_append_json_string(sb, v);
        strbuf_append(sb, "}}");
}

/* OTLP JSON: int64 values as decimal strings (protobuf JSON mapping). */
static void attr_int(struct strbuf *sb, bool *first, const char *key, long long v)
{
        strbuf_append(sb, *first ? "{\"key\":" : ",{\"key\":");
        *first = false;
        strbuf_append_json_string(sb, key);
        strbuf_appendf(sb, ",\"value\":{\"intValue\":\"%lld\"}}", v);
}

/* "host:port" or "[v6]:port" → host and port (0: none). */
static void split_hostport(const char *a, char *host, size_t cap, int *port)
{
        *port = 0;
        const char *colon = strrchr(a, ':');
        const char *close = strrchr(a, ']');
        size_t n = strlen(a);
        if (colon && (!close || colon > close) && colon[1]) {
                char *end;
                long p = strtol(colon + 1, &end, 10);
                if (!*end && p > 0 && p < 65536) {
                        *port = (int)p;
                        n = (size_t)(colon - a);
                }
        }
        if (n >= 2 && a[0] == '[' && a[n - 1] == ']') {
                a++;
                n -= 2;
        }
        if (n >= cap)
                n = cap - 1;
        memcpy(host, a, n);
        host[n] = '\0';
}

static void encode_span(struct strbuf *sb, const struct span_rec *s, bool first_span)
{
        char hex[TRACE_ID_HEX + 1];
        strbuf_append(sb, first_span ? "{" : ",{");
        trace_hex(s->trace_id, 16, hex);
        strbuf_appendf(sb, "\"traceId\":\"%s\"", hex);
        trace_hex(s->span_id, 8, hex);
        strbuf_appendf(sb, ",\"spanId\":\"%s\"", hex);
        if (!trace_id_is_zero(s->parent_id, 8)) {
                trace_hex(s->parent_id, 8, hex);
                strbuf_appendf(sb, ",\"parentSpanId\":\"%s\"", hex);
        }
        /* Name: "METHOD" for HTTP (no route template is known), the
         * method path without its '/' for gRPC. */
        strbuf_append(sb, ",\"name\":");
        if (s->proto == 3 && s->path[0] == '/')
                strbuf_append_json_string(sb, s->path + 1);
        else
                strbuf_append_json_string(sb, s->method[0] ? s->method : "HTTP");
        strbuf_appendf(sb,
                       ",\"kind\":%u,\"startTimeUnixNano\":\"%llu\",\"endTimeUnixNano\":\"%llu\","
                       "\"attributes\":[",
                       s->kind, (unsigned long long)s->start_unix_ns,
                       (unsigned long long)s->end_unix_ns);
        bool first = true;
        attr_str(sb, &first, "http.request.method", s->method);
        char path[sizeof(s->path)];
        snprintf(path, sizeof(path), "%s", s->path);
        char *q = strchr(path, '?');
        if (q) {
                *q = '\0';
                attr_str(sb, &first, "url.query", q + 1);
        }
        attr_str(sb, &first, "url.path", path);
        attr_str(sb, &first, "url.scheme", "http");
        if (s->status > 0)
                attr_int(sb, &first, "http.response.status_code", s->status);
        char host[sizeof(s->authority)];
        int port;
        if (s->authority[0]) {
                split_hostport(s->authority, host, sizeof(host), &port);
                attr_str(sb, &first, "server.address", host);
                if (port)
                        attr_int(sb, &first, "server.port", port);
        }
        attr_str(sb, &first, "network.protocol.name", "http");
        attr_str(sb, &first, "network.protocol.version", s->proto == 1 ? "1.1" : "2");
        if (s->proto == 3) {
                attr_str(sb, &first, "rpc.system", "grpc");
                const char *slash = strrchr(path, '/');
                if (slash && slash != path) {
                        char svc[sizeof(path)];
                        size_t n = (size_t)(slash - path - 1);
                        memcpy(svc, path + 1, n);
                        svc[n] = '\0';
                        attr_str(sb, &first, "rpc.service", svc);
                        attr_str(sb, &first, "rpc.method", slash + 1);
                }
                if (s->grpc_status >= 0)
                        attr_int(sb, &first, "rpc.grpc.status_code", s->grpc_status);
        }
        if (s->client[0]) {
                split_hostport(s->client, host, sizeof(host), &port);
                attr_str(sb, &first, "client.address", host);
                if (port)
                        attr_int(sb, &first, "client.port", port);
        }
        if (s->endpoint[0]) {
                split_hostport(s->endpoint, host, sizeof(host), &port);
                attr_str(sb, &first, "network.peer.address", host);
                if (port)
                        attr_int(sb, &first, "network.peer.port", port);
                attr_str(sb, &first, "shunt.endpoint", s->endpoint);
        }
        attr_str(sb, &first, "shunt.peer.spiffe_id", s->peer_id);
        attr_str(sb, &first, "shunt.service", s->service);
        attr_str(sb, &first, "shunt.request_id", s->request_id);
        attr_int(sb, &first, "http.request.body.size", (long long)s->bytes_received);
        attr_int(sb, &first, "http.response.body.size", (long long)s->bytes_sent);
        strbuf_append(sb, "]");
        /* Status: error for 5xx and no response; for the client side 4xx
         * too (OpenTelemetry HTTP conventions); gRPC by its status. */
        bool err = s->status == 0 || s->status >= 500 || (s->kind == 3 && s->status >= 400);
        if (s->proto == 3 && s->grpc_status > 0)
                err = true;
        if (err)
                strbuf_append(sb, ",\"status\":{\"code\":2}");
        strbuf_append(sb, "}");
}

static void encode_batch(struct obs *o, struct strbuf *sb, const struct span_rec *spans, size_t n)
{
        strbuf_reset(sb);
        strbuf_append(sb, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
        bool first = true;
        attr_str(sb, &first, "service.name", o->service_name);
        attr_str(sb, &first, "telemetry.sdk.name", "shunt");
        attr_str(sb, &first, "telemetry.sdk.language", "c");
        attr_str(sb, &first, "telemetry.sdk.version", o->version);
        strbuf_append(sb, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"shunt\",\"version\":");
        strbuf_append_json_string(sb, o->version);
        strbuf_append(sb, "},\"spans\":[");
        for (size_t i = 0; i < n; i++)
                encode_span(sb, &spans[i], i == 0);
        strbuf_append(sb, "]}]}]}");
}

static size_t discard_body(char *p, size_t size, size_t n, void *ud)
{
        (void)p;
        (void)ud;
        return size * n;
}

static int sockopt_cb(void *ud, curl_socket_t fd, curlsocktype purpose)
{
        struct obs *o = ud;
        (void)purpose;
        if (o->mark)
                (void)setsockopt(fd, SOL_SOCKET, SO_MARK, &o->mark, sizeof(o->mark));
        return CURL_SOCKOPT_OK;
}

static bool post_batch(struct obs *o, CURL *h, struct strbuf *sb)
{
        if (sb->truncated)
                return false;
        struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, o->endpoint);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, sb->data);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)sb->len);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)o->timeout_ms);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "shunt");
        curl_easy_setopt(h, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
        curl_easy_setopt(h, CURLOPT_SOCKOPTDATA, o);
        CURLcode rc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_slist_free_all(hdrs);
        return rc == CURLE_OK && code >= 200 && code < 300;
}

static size_t collect_spans(struct obs *o, struct span_rec *batch, size_t have)
{
        pthread_mutex_lock(&o->mu);
        for (struct obs_worker *ow = o->list; ow && have < o->batch; ow = ow->next) {
                uint32_t n;
                while (have < o->batch && ow->spans &&
                       spsc_pop(ow->spans, &batch[have], sizeof(batch[have]), &n))
                        if (n == sizeof(batch[have]))
                                have++;
        }
        reap(o);
        pthread_mutex_unlock(&o->mu);
        return have;
}

static void *exporter_main(void *arg)
{
        struct obs *o = arg;
        struct span_rec *batch = calloc(o->batch, sizeof(*batch));
        CURL *h = curl_easy_init();
        struct strbuf sb;
        strbuf_init(&sb);
        size_t n = 0;
        uint64_t first_ms = 0;
        for (;;) {
                bool stopping = atomic_load(&o->stop);
                size_t before = n;
                if (batch)
                        n = collect_spans(o, batch, n);
                if (n && !before)
                        first_ms = clock_mono_ns() / 1000000;
                bool due = n && (n == o->batch || stopping ||
                                 clock_mono_ns() / 1000000 - first_ms >= o->flush_ms);
                if (due) {
                        encode_batch(o, &sb, batch, n);
                        bool ok = h && post_batch(o, h, &sb);
                        counter_add(ok ? &o->exports_ok : &o->exports_failed, 1);
                        counter_add(ok ? &o->spans_exported : &o->spans_export_failed, n);
                        n = 0;
                        if (sb.cap > (4u << 20)) { /* give back an outsized buffer */
                                strbuf_free(&sb);
                                strbuf_init(&sb);
                        }
                        continue;
                }
                if (stopping && !n)
                        break;
                struct timespec ts = {0, EXPORT_POLL_MS * 1000000L};
                nanosleep(&ts, NULL);
        }
        strbuf_free(&sb);
        if (h)
                curl_easy_cleanup(h);
        free(batch);
        return NULL;
}

/* ---- start, stop, metrics --------------------------------------------------------- */

int obs_start(const struct shunt_config *cfg, const char *version, char *err, size_t errlen)
{
        struct obs *o = calloc(1, sizeof(*o));
        if (!o) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        pthread_mutex_init(&o->mu, NULL);
        o->line_buf = cfg->access_log_buffer_size;
        o->span_queue = cfg->tracing_queue_size;
        o->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        const char *dst = cfg->access_log_destination;
        if (!strcmp(dst, "stdout")) {
                o->fd = STDOUT_FILENO;
        } else if (!strcmp(dst, "stderr")) {
                o->fd = STDERR_FILENO;
        } else {
                o->fd = open(dst, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
                o->fd_owned = true;
        }
        if (o->fd < 0 || o->efd < 0) {
                snprintf(err, errlen, "access_log.destination %s: %s", dst, strerror(errno));
                goto fail;
        }
        o->tracing = cfg->tracing_enabled;
        snprintf(o->version, sizeof(o->version), "%s", version ? version : "");
        snprintf(o->endpoint, sizeof(o->endpoint), "%s", cfg->tracing_endpoint);
        if (cfg->tracing_service_name[0])
                snprintf(o->service_name, sizeof(o->service_name), "%s", cfg->tracing_service_name);
        else if (cfg->mtls_service_name[0])
                snprintf(o->service_name, sizeof(o->service_name), "%s", cfg->mtls_service_name);
        else if (gethostname(o->service_name, sizeof(o->service_name) - 1) < 0)
                snprintf(o->service_name, sizeof(o->service_name), "shunt");
        o->batch = cfg->tracing_batch_size;
        o->mark = config_socket_mark(cfg);
        o->timeout_ms = cfg->tracing_timeout_ms;
        o->flush_ms = cfg->tracing_flush_interval_ms;
        if (o->tracing && curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                snprintf(err, errlen, "tracing: curl_global_init failed");
                goto fail;
        }
        if (pthread_create(&o->writer, NULL, writer_main, o) != 0) {
                snprintf(err, errlen, "cannot start the access-log writer");
                goto fail;
        }
        if (o->tracing && pthread_create(&o->exporter, NULL, exporter_main, o) != 0) {
                atomic_store(&o->stop, true);
                pthread_join(o->writer, NULL);
                snprintf(err, errlen, "cannot start the span exporter");
                goto fail;
        }
        atomic_store_explicit(&g_obs, o, memory_order_release);
        if (o->tracing)
                log_info("tracing", 0, "spans to %s (sampling %s, batch %u, queue %u per worker)",
                         o->endpoint, cfg->tracing_sampling, o->batch, o->span_queue);
        return 0;
fail:
        if (o->fd_owned && o->fd >= 0)
                close(o->fd);
        if (o->efd >= 0)
                close(o->efd);
        pthread_mutex_destroy(&o->mu);
        free(o);
        return -EINVAL;
}

void obs_stop(void)
{
        struct obs *o = atomic_exchange(&g_obs, NULL);
        if (!o)
                return;
        atomic_store(&o->stop, true);
        if (o->tracing)
                pthread_join(o->exporter, NULL);
        pthread_join(o->writer, NULL);
        while (o->list) {
                struct obs_worker *ow = o->list;
                o->list = ow->next;
                free(ow->lines);
                free(ow->spans);
                free(ow);
        }
        if (o->fd_owned)
                close(o->fd);
        close(o->efd);
        pthread_mutex_destroy(&o->mu);
        free(o);
}

static uint64_t load(_Atomic uint64_t *c)
{
        return atomic_load_explicit(c, memory_order_relaxed);
}

void obs_render_metrics(struct strbuf *out)
{
        struct obs *o = atomic_load_explicit(&g_obs, memory_order_acquire);
        uint64_t lines_dropped = 0, spans_dropped = 0;
        if (o) {
                pthread_mutex_lock(&o->mu);
                for (struct obs_worker *ow = o->list; ow; ow = ow->next) {
                        lines_dropped += load(&ow->lines_dropped);
                        spans_dropped += load(&ow->spans_dropped);
                }
                pthread_mutex_unlock(&o->mu);
                lines_dropped += load(&o->lines_dropped_retired);
                spans_dropped += load(&o->spans_dropped_retired);
        }
        prom_family(out, "shunt_access_log_lines_total", "counter",
                    "Access log lines written (docs/observability.md).");
        prom_sample_u64(out, "shunt_access_log_lines_total", NULL, o ? load(&o->lines_written) : 0);
        prom_family(out, "shunt_access_log_dropped_total", "counter",
                    "Access log lines dropped: the worker's buffer was full (a slow destination) "
                    "or the line was too long.");
        prom_sample_u64(out, "shunt_access_log_dropped_total", NULL, lines_dropped);
        prom_family(out, "shunt_access_log_write_errors_total", "counter",
                    "Writes of access log lines that failed.");
        prom_sample_u64(out, "shunt_access_log_write_errors_total", NULL,
                        o ? load(&o->write_errors) : 0);
        prom_family(out, "shunt_trace_spans_exported_total", "counter",
                    "Spans the collector accepted.");
        prom_sample_u64(out, "shunt_trace_spans_exported_total", NULL,
                        o ? load(&o->spans_exported) : 0);
        prom_family(out, "shunt_trace_spans_dropped_total", "counter",
                    "Spans dropped: queue_full (the worker's queue, while the collector is slow "
                    "or down), export_failed (the batch's request failed or timed out).");
        prom_sample_u64(out, "shunt_trace_spans_dropped_total", "reason=\"queue_full\"",
                        spans_dropped);
        prom_sample_u64(out, "shunt_trace_spans_dropped_total", "reason=\"export_failed\"",
                        o ? load(&o->spans_export_failed) : 0);
        prom_family(out, "shunt_trace_export_requests_total", "counter",
                    "OTLP export requests, by result.");
        prom_sample_u64(out, "shunt_trace_export_requests_total", "result=\"ok\"",
                        o ? load(&o->exports_ok) : 0);
        prom_sample_u64(out, "shunt_trace_export_requests_total", "result=\"error\"",
                        o ? load(&o->exports_failed) : 0);
}

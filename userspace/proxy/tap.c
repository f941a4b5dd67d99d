// SPDX-License-Identifier: Apache-2.0
/* The request tap; see tap.h. */
#include "proxy/tap.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/prom.h"
#include "proxy/h2proxy.h"

#define COMP "tap"

/* One worker's ring: the worker writes head, the main thread tail. */
struct tap_ring {
        _Atomic uint32_t head, tail;
        _Atomic uint64_t dropped;
        struct tap_event *slots;
};

struct tap_session {
        bool used, gone; /* gone: the client left (on_close) */
        struct tap_hub *hub;
        struct admin_stream *st;
        struct tap_filter f;
        uint64_t end_ms;
        uint32_t sent;
        uint64_t dropped;      /* not written: the client had TAP_MAX_PENDING unread */
        uint64_t ring_dropped; /* the rings' drops when it began */
};

struct tap_hub {
        struct tap_hub_head hd; /* first: tap_attached reads it */
        uint32_t n_workers;
        struct tap_ring *rings; /* allocated at the first tap */
        struct loop *loop;
        struct loop_timer drain;
        struct tap_session sessions[TAP_MAX_SESSIONS];
        uint32_t n_sessions;
        uint64_t taps_total, refused_total, client_dropped_total;
        struct strbuf line;
};

struct tap_hub *tap_hub_new(uint32_t workers)
{
        struct tap_hub *h = calloc(1, sizeof(*h));
        if (!h)
                return NULL;
        h->n_workers = workers ? workers : 1;
        strbuf_init(&h->line);
        return h;
}

static uint64_t ring_drops(const struct tap_hub *h)
{
        uint64_t n = 0;
        for (uint32_t i = 0; h->rings && i < h->n_workers; i++)
                n += atomic_load_explicit(&h->rings[i].dropped, memory_order_relaxed);
        return n;
}

/* Ends session s: the summary line, the last chunk. */
static void session_end(struct tap_session *s, const char *why)
{
        struct tap_hub *h = s->hub;
        if (!s->gone) {
                char line[200];
                int n = snprintf(line, sizeof(line),
                                 "{\"end\":\"%s\",\"events\":%u,\"dropped\":%llu,"
                                 "\"ring_dropped\":%llu}\n",
                                 why, s->sent, (unsigned long long)s->dropped,
                                 (unsigned long long)(ring_drops(h) - s->ring_dropped));
                if (admin_stream_write(s->st, line, (size_t)n) == 0)
                        admin_stream_end(s->st);
        }
        if (!s->gone)
                log_debug(COMP, 0, "tap ended (%s): %u requests, %llu dropped", why, s->sent,
                          (unsigned long long)s->dropped);
        memset(s, 0, sizeof(*s));
        h->n_sessions--;
        if (!h->n_sessions) {
                atomic_store_explicit(&h->hd.attached, 0, memory_order_relaxed);
                loop_timer_cancel(h->loop, &h->drain);
        }
}

void tap_hub_free(struct tap_hub *h)
{
        if (!h)
                return;
        for (int i = 0; i < TAP_MAX_SESSIONS; i++)
                if (h->sessions[i].used)
                        session_end(&h->sessions[i], "shutdown");
        for (uint32_t i = 0; h->rings && i < h->n_workers; i++)
                free(h->rings[i].slots);
        free(h->rings);
        strbuf_free(&h->line);
        free(h);
}

bool tap_publish(struct tap_hub *h, uint32_t worker, const struct tap_event *ev)
{
        if (!atomic_load_explicit(&h->hd.attached, memory_order_acquire))
                return false;
        struct tap_ring *r = &h->rings[worker % h->n_workers];
        uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint32_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head - tail >= TAP_RING_SLOTS) {
                atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
                return false;
        }
        r->slots[head % TAP_RING_SLOTS] = *ev;
        atomic_store_explicit(&r->head, head + 1, memory_order_release);
        return true;
}

/* ---- filter ------------------------------------------------------------------- */

static int set_str(char *dst, size_t cap, const char *v, const char *key, char *why, size_t wl)
{
        if (strlen(v) >= cap) {
                snprintf(why, wl, "tap: %s is longer than %zu bytes", key, cap - 1);
                return -EINVAL;
        }
        snprintf(dst, cap, "%s", v);
        return 0;
}

static int set_uint(uint32_t *dst, const char *v, uint32_t lo, uint32_t hi, const char *key,
                    char *why, size_t wl)
{
        char *end;
        errno = 0;
        unsigned long n = strtoul(v, &end, 10);
        if (!*v || *end || errno || !isdigit((unsigned char)*v) || n < lo || n > hi) {
                snprintf(why, wl, "tap: %s '%s' is not a number from %u to %u", key, v, lo, hi);
                return -EINVAL;
        }
        *dst = (uint32_t)n;
        return 0;
}

int tap_filter_parse(const char *query, struct tap_filter *f, char *why, size_t whylen)
{
        memset(f, 0, sizeof(*f));
        f->status = f->status_class = -1;
        f->max = TAP_DEFAULT_MAX;
        f->seconds = TAP_DEFAULT_SECONDS;
        static const char *const keys[] = {"service", "direction", "protocol", "method", "path",
                                           "source",  "status",    "max",      "seconds"};
        const char *p = query ? query : "";
        while (*p) {
                size_t n = strcspn(p, "&");
                size_t kl = strcspn(p, "=&");
                char key[16];
                bool known = false;
                if (kl && kl < sizeof(key)) {
                        memcpy(key, p, kl);
                        key[kl] = '\0';
                        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                                known |= strcmp(key, keys[i]) == 0;
                }
                if (n && !known) {
                        snprintf(why, whylen,
                                 "tap: unknown parameter '%.*s' (allowed: service, direction, "
                                 "protocol, method, path, source, status, max, seconds)",
                                 (int)(kl < 32 ? kl : 32), p);
                        return -EINVAL;
                }
                p += n;
                if (*p == '&')
                        p++;
        }
        char v[512];
        int rc = 0;
        if (admin_query_get(query, "service", v, sizeof(v)) >= 0)
                rc |= set_str(f->service, sizeof(f->service), v, "service", why, whylen);
        if (!rc && admin_query_get(query, "direction", v, sizeof(v)) >= 0) {
                if (strcmp(v, "inbound") && strcmp(v, "outbound")) {
                        snprintf(why, whylen, "tap: direction must be inbound or outbound");
                        return -EINVAL;
                }
                memcpy(f->direction, v, strlen(v) + 1); /* one of the two above */
        }
        if (!rc && admin_query_get(query, "protocol", v, sizeof(v)) >= 0) {
                if (strcmp(v, "http1") && strcmp(v, "http2") && strcmp(v, "grpc")) {
                        snprintf(why, whylen, "tap: protocol must be http1, http2 or grpc");
                        return -EINVAL;
                }
                memcpy(f->protocol, v, strlen(v) + 1); /* one of the three above */
        }
        if (!rc && admin_query_get(query, "method", v, sizeof(v)) >= 0)
                rc |= set_str(f->method, sizeof(f->method), v, "method", why, whylen);
        if (!rc && admin_query_get(query, "path", v, sizeof(v)) >= 0)
                rc |= set_str(f->path, sizeof(f->path), v, "path", why, whylen);
        if (!rc && admin_query_get(query, "source", v, sizeof(v)) >= 0)
                rc |= set_str(f->source, sizeof(f->source), v, "source", why, whylen);
        if (!rc && admin_query_get(query, "status", v, sizeof(v)) >= 0) {
                if (strcmp(v, "none") == 0) {
                        f->status = 0;
                } else if (strlen(v) == 3 && v[0] >= '1' && v[0] <= '5' &&
                           (strcmp(v + 1, "xx") == 0 || strcmp(v + 1, "XX") == 0)) {
                        f->status_class = v[0] - '0';
                } else if (strlen(v) == 3 && isdigit((unsigned char)v[0]) &&
                           isdigit((unsigned char)v[1]) && isdigit((unsigned char)v[2]) &&
                           v[0] >= '1' && v[0] <= '5') {
                        f->status = atoi(v);
                } else {
                        snprintf(why, whylen,
                                 "tap: status '%.16s' must be a code (503), a class (5xx) or none",
                                 v);
                        return -EINVAL;
                }
        }
        if (!rc && admin_query_get(query, "max", v, sizeof(v)) >= 0)
                rc |= set_uint(&f->max, v, 1, TAP_MAX_MAX, "max", why, whylen);
        if (!rc && admin_query_get(query, "seconds", v, sizeof(v)) >= 0)
                rc |= set_uint(&f->seconds, v, 1, TAP_MAX_SECONDS, "seconds", why, whylen);
        return rc ? -EINVAL : 0;
}

bool tap_filter_match(const struct tap_filter *f, const struct tap_event *ev)
{
        if (f->service[0]) {
                const char *name = strchr(ev->service, '/');
                bool ok = strcmp(f->service, ev->service) == 0 ||
                          (!strchr(f->service, '/') && name && strcmp(f->service, name + 1) == 0);
                if (!ok)
                        return false;
        }
        if (f->direction[0] && strcmp(f->direction, ev->direction) != 0)
                return false;
        if (f->protocol[0] && strcmp(f->protocol, ev->protocol) != 0)
                return false;
        if (f->method[0] && strcasecmp(f->method, ev->method) != 0)
                return false;
        if (f->path[0] && strncmp(f->path, ev->path, strlen(f->path)) != 0)
                return false;
        if (f->source[0] && strncmp(f->source, ev->source, strlen(f->source)) != 0)
                return false;
        if (f->status >= 0 && ev->status != f->status)
                return false;
        if (f->status_class > 0 && ev->status / 100 != f->status_class)
                return false;
        return true;
}

static void json_field(struct strbuf *out, const char *key, const char *v)
{
        strbuf_appendf(out, ",\"%s\":", key);
        if (v && *v)
                strbuf_append_json_string(out, v);
        else
                strbuf_append(out, "null");
}

void tap_event_json(const struct tap_event *ev, struct strbuf *out)
{
        time_t sec = (time_t)(ev->unix_ns / 1000000000ull);
        struct tm tm;
        gmtime_r(&sec, &tm);
        char when[40];
        size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + n, sizeof(when) - n, ".%06lluZ",
                 (unsigned long long)(ev->unix_ns % 1000000000ull / 1000));
        strbuf_appendf(out, "{\"time\":\"%s\"", when);
        json_field(out, "direction", ev->direction);
        json_field(out, "protocol", ev->protocol);
        json_field(out, "method", ev->method);
        json_field(out, "authority", ev->authority);
        json_field(out, "path", ev->path);
        strbuf_appendf(out, ",\"status\":%d", ev->status);
        json_field(out, "grpc_status",
                   ev->grpc_status >= 0 ? h2proxy_grpc_code_name(ev->grpc_status) : NULL);
        strbuf_appendf(out, ",\"duration_ms\":%.3f", (double)ev->duration_ns / 1e6);
        json_field(out, "source", ev->source);
        json_field(out, "destination", ev->destination);
        json_field(out, "service", ev->service);
        json_field(out, "endpoint", ev->endpoint);
        json_field(out, "request_id", ev->request_id);
        json_field(out, "trace_id", ev->trace_id);
        json_field(out, "span_id", ev->span_id);
        strbuf_append(out, "}\n");
}

/* ---- the main thread's side ----------------------------------------------------- */

static void deliver(struct tap_hub *h, const struct tap_event *ev)
{
        bool formatted = false;
        for (int i = 0; i < TAP_MAX_SESSIONS; i++) {
                struct tap_session *s = &h->sessions[i];
                if (!s->used || s->gone || s->sent >= s->f.max || !tap_filter_match(&s->f, ev))
                        continue;
                if (admin_stream_pending(s->st) >= TAP_MAX_PENDING) {
                        s->dropped++;
                        h->client_dropped_total++;
                        continue;
                }
                if (!formatted) {
                        strbuf_reset(&h->line);
                        tap_event_json(ev, &h->line);
                        formatted = true;
                }
                if (h->line.truncated || admin_stream_write(s->st, h->line.data, h->line.len) < 0)
                        continue; /* gone: on_close marked it */
                s->sent++;
        }
}

static void on_drain(struct loop *loop, struct loop_timer *t)
{
        struct tap_hub *h = t->data;
        for (uint32_t w = 0; w < h->n_workers; w++) {
                struct tap_ring *r = &h->rings[w];
                uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
                uint32_t head = atomic_load_explicit(&r->head, memory_order_acquire);
                for (; tail != head; tail++) {
                        deliver(h, &r->slots[tail % TAP_RING_SLOTS]);
                        atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
                }
        }
        uint64_t now = loop_now_ms(loop);
        for (int i = 0; i < TAP_MAX_SESSIONS; i++) {
                struct tap_session *s = &h->sessions[i];
                if (!s->used)
                        continue;
                if (s->gone)
                        session_end(s, "client");
                else if (s->sent >= s->f.max)
                        session_end(s, "max");
                else if (now >= s->end_ms)
                        session_end(s, "time");
        }
        if (h->n_sessions)
                loop_timer_arm(loop, &h->drain, TAP_DRAIN_MS);
}

static void on_client_gone(void *ctx)
{
        struct tap_session *s = ctx;
        s->gone = true; /* freed at the next drain: the admin may be inside a write */
}

static int rings_alloc(struct tap_hub *h)
{
        if (h->rings)
                return 0;
        struct tap_ring *r = calloc(h->n_workers, sizeof(*r));
        if (!r)
                return -ENOMEM;
        for (uint32_t i = 0; i < h->n_workers; i++) {
                r[i].slots = calloc(TAP_RING_SLOTS, sizeof(struct tap_event));
                if (!r[i].slots) {
                        while (i--)
                                free(r[i].slots);
                        free(r);
                        return -ENOMEM;
                }
        }
        h->rings = r;
        return 0;
}

void tap_serve(struct tap_hub *h, const struct admin_request *req, struct admin_response *resp)
{
        struct tap_filter f;
        char why[200];
        if (tap_filter_parse(req->query, &f, why, sizeof(why)) < 0) {
                admin_respond_error(resp, 400, why);
                return;
        }
        if (!h) {
                admin_respond_error(resp, 503, "tap: not available");
                return;
        }
        if (h->n_sessions >= TAP_MAX_SESSIONS) {
                h->refused_total++;
                snprintf(why, sizeof(why), "tap: %d taps are attached already (the limit)",
                         TAP_MAX_SESSIONS);
                admin_respond_error(resp, 429, why);
                return;
        }
        if (rings_alloc(h) < 0) {
                admin_respond_error(resp, 500, "tap: out of memory");
                return;
        }
        struct tap_session *s = NULL;
        for (int i = 0; i < TAP_MAX_SESSIONS && !s; i++)
                if (!h->sessions[i].used)
                        s = &h->sessions[i];
        struct admin_stream *st =
            admin_respond_stream(resp, "application/x-ndjson", on_client_gone, s);
        if (!st) { /* HEAD */
                resp->content_type = "application/x-ndjson";
                return;
        }
        memset(s, 0, sizeof(*s));
        s->used = true;
        s->hub = h;
        s->st = st;
        s->f = f;
        h->loop = admin_stream_loop(st);
        s->end_ms = loop_now_ms(h->loop) + (uint64_t)f.seconds * 1000;
        s->ring_dropped = ring_drops(h);
        h->taps_total++;
        if (!h->n_sessions++) {
                /* Drop what a previous tap left unread, then let the workers in. */
                for (uint32_t w = 0; w < h->n_workers; w++)
                        atomic_store_explicit(
                            &h->rings[w].tail,
                            atomic_load_explicit(&h->rings[w].head, memory_order_acquire),
                            memory_order_release);
                loop_timer_init(&h->drain, on_drain, h);
                loop_timer_arm(h->loop, &h->drain, TAP_DRAIN_MS);
                atomic_store_explicit(&h->hd.attached, 1, memory_order_release);
        }
        struct strbuf *hello = &resp->body; /* the stream's first chunk */
        strbuf_appendf(hello, "{\"tap\":{\"max\":%u,\"seconds\":%u", f.max, f.seconds);
        json_field(hello, "service", f.service);
        json_field(hello, "direction", f.direction);
        json_field(hello, "protocol", f.protocol);
        json_field(hello, "method", f.method);
        json_field(hello, "path", f.path);
        json_field(hello, "source", f.source);
        strbuf_append(hello, "}}\n");
        log_info(COMP, 0, "tap attached (%u of %d): max %u, %u s", h->n_sessions, TAP_MAX_SESSIONS,
                 f.max, f.seconds);
}

void tap_render(struct tap_hub *h, struct strbuf *out)
{
        prom_family(out, "shunt_tap_sessions", "gauge",
                    "Taps attached now (GET /tap, shuntctl tap).");
        prom_sample_u64(out, "shunt_tap_sessions", NULL, h ? h->n_sessions : 0);
        prom_family(out, "shunt_tap_sessions_total", "counter",
                    "Taps attached since start, and those refused at the limit.");
        prom_sample_u64(out, "shunt_tap_sessions_total", "result=\"attached\"",
                        h ? h->taps_total : 0);
        prom_sample_u64(out, "shunt_tap_sessions_total", "result=\"refused\"",
                        h ? h->refused_total : 0);
        prom_family(out, "shunt_tap_dropped_total", "counter",
                    "Requests a tap did not show: ring (a worker's ring was full), client (the "
                    "tap's client had too much unread).");
        prom_sample_u64(out, "shunt_tap_dropped_total", "reason=\"ring\"", h ? ring_drops(h) : 0);
        prom_sample_u64(out, "shunt_tap_dropped_total", "reason=\"client\"",
                        h ? h->client_dropped_total : 0);
}

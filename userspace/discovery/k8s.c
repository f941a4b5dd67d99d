// SPDX-License-Identifier: Apache-2.0
/* Kubernetes watcher: credentials, list then watch per resource over libcurl
 * multi on the main loop, relist on 410 Gone, backoff on failures, a silence
 * bound on watch streams, staleness reported to the registry. */
#include "discovery/k8s.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "core/curlloop.h"
#include "core/log.h"
#include "core/loop.h"
#include "discovery/k8s_creds.h"

#define COMP "discovery"

#define K8S_ERRBODY_MAX     65536
#define K8S_CONNECT_MS      5000
#define K8S_LIST_TIMEOUT_MS 60000
#define K8S_TICK_MS         500
#define K8S_KEEP_BUF        (1u << 20)
#define K8S_KEEPALIVE_S     30L
/* A watch that ends sooner than this with nothing received counts as failed. */
#define K8S_MIN_WATCH_MS 1000
/* Refusals (401/403) of one resource are logged at most this often. */
#define K8S_DENIED_LOG_MS 60000

enum wstate { W_IDLE = 0, W_LIST, W_WATCH, W_BACKOFF };

static const char *const kind_name[K8S__KINDS] = {"services",   "endpointslices", "pods",
                                                  "namespaces", "httproutes",     "grpcroutes"};
static const char *const state_name[] = {"idle", "listing", "watching", "backoff"};

struct k8s;

struct k8s_watch {
        struct k8s *k;
        enum k8s_kind kind;
        const struct k8s_object_sink *sink; /* another component's resource (kind unused) */
        bool sink_listing;                  /* between the sink's list_begin and list_end */
        char *sink_label_q, *sink_field_q;  /* the sink's selectors, escaped (or NULL) */
        enum wstate state;
        CURL *easy;
        struct curl_slist *hdrs;
        char errbuf[CURL_ERROR_SIZE];
        char *buf;
        size_t len, cap;
        long status;
        char rv[K8S_MAX_RV];
        bool listed;      /* a complete list has been applied */
        bool healthy;     /* the last request succeeded (list done / watch open) */
        bool gone;        /* a 410 ERROR event arrived on this watch */
        bool relist_next; /* the stream was cut for an oversized event */
        char abort_why[DISC_ERROR_MAX];
        uint32_t backoff_ms;
        uint64_t started_ms, last_data_ms;
        uint64_t req_events;         /* events and bookmarks in the current request */
        struct k8s_cache *staging;   /* a paginated list in progress */
        char cont[K8S_MAX_CONTINUE]; /* its continue token ("" before the first page) */
        char list_rv[K8S_MAX_RV];
        uint64_t n_pages, n_cont_expired;
        uint64_t n_lists, n_watches, n_events, n_bookmarks, n_bad, n_gone, n_failures, n_silent;
        uint64_t n_denied;        /* 401/403 answers */
        uint64_t n_missing;       /* 404 answers of an optional kind (its CRD is missing) */
        uint64_t denied_log_ms;   /* when a refusal was last logged (0: never) */
        uint64_t denied_unlogged; /* refusals since then */
        struct loop_timer retry;
        char last_error[DISC_ERROR_MAX];
};

struct k8s {
        struct disc_registry *r;
        int src;
        struct loop *loop;
        struct curl_loop *curl; /* from k8s_start on */
        bool closing;
        struct loop_timer tick;
        struct k8s_cache *cache;
        struct k8s_creds *creds;
        char ns[DISC_NAME_MAX];
        char *selector_q; /* escaped label selector, or NULL */
        char *ns_field_q; /* escaped fieldSelector metadata.name=<ns>, or NULL */
        uint32_t watch_s;
        uint64_t silence_ms;
        uint64_t n_builds;
        struct k8s_watch w[K8S__KINDS];
        struct k8s_watch sw[K8S_MAX_SINKS]; /* the sinks' watches, where sw[i].sink is set */
};

static const char *wname(const struct k8s_watch *w)
{
        return w->sink ? w->sink->kind : kind_name[w->kind];
}

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t now_ms(const struct k8s *k)
{
        return k->loop ? loop_now_ms(k->loop) : clock_mono_ms();
}

/* ---- registry ------------------------------------------------------------------ */

static bool all_listed(const struct k8s *k)
{
        for (int i = 0; i < K8S__KINDS; i++) {
                /* an optional kind holds the first build back until it
                 * fails once (its CRD missing, or not granted) */
                if (!k->w[i].listed && !(k8s_kind_optional(i) && k->w[i].n_failures))
                        return false;
        }
        return true;
}

static void rebuild(struct k8s *k)
{
        /* The first full picture needs every list: an endpoint whose pod is
         * not known yet would be taken for not meshed. */
        if (!all_listed(k))
                return;
        struct disc_service_spec *svcs;
        size_t n;
        int rc = k8s_cache_build(k->cache, &svcs, &n);
        if (rc == 0) {
                rc = disc_registry_replace(k->r, k->src, svcs, n);
                k8s_specs_free(svcs, n);
        }
        if (rc) {
                log_error(COMP, 0, "kubernetes: cannot apply %zu services: %s",
                          k8s_cache_count(k->cache, K8S_SERVICES), strerror(-rc));
                return;
        }
        k->n_builds++;
        disc_registry_publish(k->r);
}

static void check_sync(struct k8s *k)
{
        bool healthy = true;
        for (int i = 0; i < K8S__KINDS; i++)
                healthy &= k->w[i].healthy || k8s_kind_optional(i);
        if (healthy && all_listed(k)) {
                disc_source_sync_ok(k->r, k->src);
                disc_registry_publish(k->r);
        }
}

/* ---- requests --------------------------------------------------------------------- */

static void start(struct k8s_watch *w);
static void on_done(CURL *e, CURLcode res, void *ctx);

static void release_easy(struct k8s_watch *w)
{
        if (w->easy) {
                if (w->k->curl)
                        curl_loop_remove(w->k->curl, w->easy);
                curl_easy_cleanup(w->easy);
                w->easy = NULL;
        }
        curl_slist_free_all(w->hdrs);
        w->hdrs = NULL;
        w->len = 0;
        if (w->cap > K8S_KEEP_BUF) { /* a big list is not kept around */
                free(w->buf);
                w->buf = NULL;
                w->cap = 0;
        }
}

static void drop_paging(struct k8s_watch *w)
{
        k8s_cache_free(w->staging);
        w->staging = NULL;
        w->cont[0] = '\0';
        if (w->sink_listing) { /* what the unfinished list brought is dropped */
                w->sink_listing = false;
                w->sink->list_end(w->sink->arg, false);
        }
}

static void retry_cb(struct loop *loop, struct loop_timer *t)
{
        struct k8s_watch *w = t->data;
        start(w);
}

/* A failed request: backoff, and the source is stale. quiet: the caller
 * has logged it (or rate-limits its log). */
static void fail_as(struct k8s_watch *w, const char *why, bool quiet)
{
        struct k8s *k = w->k;
        release_easy(w);
        drop_paging(w);
        w->healthy = false;
        w->n_failures++;
        snprintf(w->last_error, sizeof(w->last_error), "%s", why);
        uint32_t jitter;
        if (getrandom(&jitter, sizeof(jitter), GRND_NONBLOCK) != sizeof(jitter))
                jitter = (uint32_t)now_ms(k) * 2654435761u;
        /* base * [0.8, 1.2) */
        uint64_t delay = (uint64_t)w->backoff_ms * (800 + jitter % 400) / 1000;
        if (!quiet)
                log_warn(COMP, 0, "kubernetes: %s: %s; retrying in %llums", wname(w), why,
                         (unsigned long long)delay);
        w->backoff_ms =
            w->backoff_ms * 2 > K8S_BACKOFF_MAX_MS ? K8S_BACKOFF_MAX_MS : w->backoff_ms * 2;
        if (!w->sink && !k8s_kind_optional(w->kind)) {
                char msg[DISC_ERROR_MAX];
                snprintf(msg, sizeof(msg), "%s: %s", wname(w), why);
                disc_source_sync_failed(k->r, k->src, msg);
                disc_registry_publish(k->r);
        }
        w->state = W_BACKOFF;
        if (k->closing)
                return;
        loop_timer_arm(k->loop, &w->retry, delay);
        /* An optional kind's first failure no longer holds the first build
         * back: the others may all be listed already. */
        if (!w->sink && k8s_kind_optional(w->kind) && w->n_failures == 1 && !w->listed) {
                rebuild(k);
                check_sync(k);
        }
}

static void fail(struct k8s_watch *w, const char *why)
{
        fail_as(w, why, false);
}

/* 401 (credentials not accepted) or 403 (RBAC denies the verb): retried
 * with the usual backoff, which alone would log up to twice a minute per
 * resource for as long as the role is missing; logged once, then at most
 * every K8S_DENIED_LOG_MS with the count in between, and counted. */
static void denied(struct k8s_watch *w, long status, const char *why)
{
        struct k8s *k = w->k;
        uint64_t now = now_ms(k);
        w->n_denied++;
        disc_source_denied(k->r, k->src);
        if (w->denied_log_ms && now - w->denied_log_ms < K8S_DENIED_LOG_MS) {
                w->denied_unlogged++;
        } else {
                char more[64] = "";
                if (w->denied_unlogged)
                        snprintf(more, sizeof(more), " (%llu more refusals since the last report)",
                                 (unsigned long long)w->denied_unlogged);
                if (status == 401)
                        log_error(COMP, 0,
                                  "kubernetes: %s: the API server refused the credentials from "
                                  "%s: %s%s; retrying with backoff",
                                  wname(w), k8s_creds_origin(k->creds), why, more);
                else
                        log_error(COMP, 0,
                                  "kubernetes: %s: forbidden: the credentials from %s lack RBAC "
                                  "permission to %s %s (grant list and watch): %s%s; retrying "
                                  "with backoff",
                                  wname(w), k8s_creds_origin(k->creds),
                                  w->state == W_WATCH ? "watch" : "list", wname(w), why, more);
                w->denied_log_ms = now ? now : 1;
                w->denied_unlogged = 0;
        }
        fail_as(w, why, true);
}

static bool buf_append(struct k8s_watch *w, const char *p, size_t n, size_t max)
{
        if (w->len + n > max)
                return false;
        if (w->len + n + 1 > w->cap) {
                size_t nc = w->cap ? w->cap : 16384;
                while (nc < w->len + n + 1)
                        nc *= 2;
                char *b = realloc(w->buf, nc);
                if (!b)
                        return false;
                w->buf = b;
                w->cap = nc;
        }
        memcpy(w->buf + w->len, p, n);
        w->len += n;
        w->buf[w->len] = '\0';
        return true;
}

static int sink_event(void *arg, const cJSON *obj, bool deleted, char *err, size_t errlen)
{
        const struct k8s_object_sink *sink = ((struct k8s_watch *)arg)->sink;
        return sink->apply(sink->arg, false, obj, deleted, err, errlen);
}

static int sink_list_item(void *arg, const cJSON *obj, bool deleted, char *err, size_t errlen)
{
        const struct k8s_object_sink *sink = ((struct k8s_watch *)arg)->sink;
        return sink->apply(sink->arg, true, obj, deleted, err, errlen);
}

static void watch_lines(struct k8s_watch *w)
{
        struct k8s *k = w->k;
        size_t off = 0;
        bool dirty = false;
        uint64_t changes = k8s_cache_changes(k->cache);
        char *nl;
        while (!w->gone && !w->abort_why[0] &&
               (nl = memchr(w->buf + off, '\n', w->len - off)) != NULL) {
                size_t n = (size_t)(nl - (w->buf + off));
                const char *line = w->buf + off;
                off += n + 1;
                while (n && (line[n - 1] == '\r' || line[n - 1] == ' '))
                        n--;
                if (!n)
                        continue;
                char err[DISC_ERROR_MAX];
                err[0] = '\0';
                enum k8s_event_result r =
                    w->sink ? k8s_event_parse(line, n, sink_event, w, w->rv, err, sizeof(err))
                            : k8s_cache_event(k->cache, w->kind, line, n, w->rv, err, sizeof(err));
                switch (r) {
                case K8S_EV_APPLIED:
                        w->n_events++;
                        w->req_events++;
                        dirty = true;
                        break;
                case K8S_EV_BOOKMARK:
                        w->n_bookmarks++;
                        w->req_events++;
                        break;
                case K8S_EV_GONE:
                        w->gone = true;
                        w->n_gone++;
                        log_info(COMP, 0, "kubernetes: %s watch: %s: relisting", wname(w), err);
                        break;
                case K8S_EV_ERROR:
                        snprintf(w->abort_why, sizeof(w->abort_why), "%s", err);
                        break;
                case K8S_EV_BAD:
                        w->n_bad++;
                        log_error(COMP, 0, "kubernetes: %s watch: event skipped: %s", wname(w),
                                  err);
                        break;
                }
        }
        memmove(w->buf, w->buf + off, w->len - off);
        w->len -= off;
        if (dirty && !w->sink && k8s_cache_changes(k->cache) != changes)
                rebuild(k);
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
        struct k8s_watch *w = ud;
        size_t n = size * nmemb;
        w->last_data_ms = now_ms(w->k);
        if (!w->status)
                curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &w->status);
        if (w->status != 200) {
                buf_append(w, p, n, K8S_ERRBODY_MAX); /* the Status, truncated is fine */
                return n;
        }
        if (w->state == W_LIST) {
                if (!buf_append(w, p, n, K8S_MAX_LIST_BYTES)) {
                        snprintf(w->abort_why, sizeof(w->abort_why),
                                 "list response larger than %u bytes", K8S_MAX_LIST_BYTES);
                        return 0;
                }
                return n;
        }
        if (!buf_append(w, p, n, K8S_MAX_EVENT_BYTES)) {
                snprintf(w->abort_why, sizeof(w->abort_why),
                         "watch event larger than %u bytes: listing again", K8S_MAX_EVENT_BYTES);
                w->relist_next = true; /* watching from rv would bring it again */
                return 0;
        }
        watch_lines(w);
        return w->gone || w->abort_why[0] ? 0 : n;
}

static size_t header_cb(char *p, size_t size, size_t nmemb, void *ud)
{
        struct k8s_watch *w = ud;
        size_t n = size * nmemb;
        w->last_data_ms = now_ms(w->k);
        if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) { /* end of the headers */
                long code = 0;
                curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &code);
                if (code == 200)
                        w->denied_log_ms = 0; /* a refusal after this is news again */
                if (code == 200 && w->state == W_WATCH && !w->healthy) {
                        w->healthy = true;
                        w->backoff_ms = K8S_BACKOFF_MIN_MS;
                        check_sync(w->k);
                }
        }
        return n;
}

static void status_message(const struct k8s_watch *w, char *out, size_t len)
{
        cJSON *st = w->len ? cJSON_ParseWithLength(w->buf, w->len) : NULL;
        const cJSON *m = st ? cJSON_GetObjectItemCaseSensitive(st, "message") : NULL;
        snprintf(out, len, "%s", cJSON_IsString(m) ? m->valuestring : "");
        cJSON_Delete(st);
}

static void done(struct k8s_watch *w, CURLcode res)
{
        struct k8s *k = w->k;
        long status = 0;
        curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &status);
        char why[DISC_ERROR_MAX];
        if (w->gone || (status == 410 && w->state == W_WATCH)) {
                if (!w->gone)
                        w->n_gone++;
                log_info(COMP, 0,
                         "kubernetes: %s: resourceVersion %s expired (410 Gone): relisting",
                         wname(w), w->rv);
                release_easy(w);
                w->rv[0] = '\0';
                w->state = W_IDLE;
                start(w);
                return;
        }
        if (status == 410 && w->state == W_LIST && w->cont[0]) {
                /* the continue token expired (compaction): list from the start */
                w->n_cont_expired++;
                log_info(COMP, 0,
                         "kubernetes: %s: list continue token expired (410 Gone): listing "
                         "again from the first page",
                         wname(w));
                release_easy(w);
                drop_paging(w);
                w->state = W_IDLE;
                start(w);
                return;
        }
        if (w->abort_why[0]) {
                snprintf(why, sizeof(why), "%s", w->abort_why);
                if (w->relist_next)
                        w->rv[0] = '\0';
                fail(w, why);
                return;
        }
        if (res != CURLE_OK) {
                snprintf(why, sizeof(why), "%s: %s", curl_easy_strerror(res),
                         w->errbuf[0] ? w->errbuf : "no detail");
                fail(w, why);
                return;
        }
        if (status != 200) {
                char m[256];
                status_message(w, m, sizeof(m));
                snprintf(why, sizeof(why), "HTTP %ld%s%s", status, m[0] ? ": " : "", m);
                if (status == 404 && (w->sink || k8s_kind_optional(w->kind)))
                        snprintf(why + strlen(why), sizeof(why) - strlen(why),
                                 " (is its CustomResourceDefinition installed?)");
                if (status == 404 && !w->sink && k8s_kind_optional(w->kind)) {
                        /* No Gateway API in this cluster: said once, then
                         * looked for again quietly with the backoff. */
                        if (!w->n_missing++)
                                log_warn(COMP, 0,
                                         "kubernetes: %s: %s: no routes are read from it until "
                                         "it is installed",
                                         wname(w), why);
                        fail_as(w, why, true);
                } else if (status == 401 || status == 403)
                        denied(w, status, why);
                else
                        fail(w, why);
                return;
        }
        if (w->state == W_LIST && w->sink) {
                char err[DISC_ERROR_MAX];
                if (!w->sink_listing) {
                        w->sink_listing = true;
                        w->sink->list_begin(w->sink->arg);
                }
                int rc =
                    k8s_list_page_parse(w->sink->kind, w->buf ? w->buf : "", w->len, sink_list_item,
                                        w, w->list_rv, w->cont, err, sizeof(err));
                if (rc) {
                        fail(w, err);
                        return;
                }
                w->n_pages++;
                release_easy(w);
                w->backoff_ms = K8S_BACKOFF_MIN_MS;
                if (!w->cont[0]) {
                        w->sink_listing = false;
                        w->sink->list_end(w->sink->arg, true);
                        memcpy(w->rv, w->list_rv, sizeof(w->rv));
                        w->listed = true;
                        w->healthy = true;
                        log_info(COMP, 0, "kubernetes: listed %zu %s at resourceVersion %s",
                                 w->sink->count(w->sink->arg), wname(w), w->rv);
                }
                w->state = W_IDLE;
                start(w);
                return;
        }
        if (w->state == W_LIST) {
                char err[DISC_ERROR_MAX];
                if (!w->staging)
                        w->staging = k8s_cache_new();
                int rc = w->staging
                             ? k8s_cache_list_page(w->staging, w->kind, w->buf ? w->buf : "",
                                                   w->len, w->list_rv, w->cont, err, sizeof(err))
                             : -ENOMEM;
                if (rc) {
                        fail(w, rc == -ENOMEM ? "out of memory" : err);
                        return;
                }
                w->n_pages++;
                release_easy(w);
                w->backoff_ms = K8S_BACKOFF_MIN_MS;
                if (w->cont[0]) { /* more pages */
                        w->state = W_IDLE;
                        start(w);
                        return;
                }
                k8s_cache_take(k->cache, w->staging, w->kind);
                drop_paging(w);
                memcpy(w->rv, w->list_rv, sizeof(w->rv));
                w->listed = true;
                w->healthy = true;
                log_info(COMP, 0, "kubernetes: listed %zu %s at resourceVersion %s",
                         k8s_cache_count(k->cache, w->kind), wname(w), w->rv);
                rebuild(k);
                check_sync(k);
                w->state = W_IDLE;
                start(w);
                return;
        }
        /* The server ended the watch (timeoutSeconds): watch again from rv. A
         * watch that ends at once with nothing in it is a failure (no loop). */
        bool quick = now_ms(k) - w->started_ms < K8S_MIN_WATCH_MS && !w->req_events;
        if (quick) {
                fail(w, "watch ended at once");
                return;
        }
        release_easy(w);
        w->state = W_IDLE;
        start(w);
}

/* A transfer ended (curl_loop: already out of the multi). */
static void on_done(CURL *e, CURLcode res, void *ctx)
{
        struct k8s_watch *w = ctx;
        if (w->easy == e)
                done(w, res);
}

static void start(struct k8s_watch *w)
{
        struct k8s *k = w->k;
        if (k->closing)
                return;
        bool watch = w->listed && w->rv[0] && !w->cont[0];
        char path[512];
        static const char *const group[K8S__KINDS] = {
            "/api/v1", "/apis/discovery.k8s.io/v1",          "/api/v1",
            "/api/v1", "/apis/gateway.networking.k8s.io/v1", "/apis/gateway.networking.k8s.io/v1"};
        if (w->sink)
                snprintf(path, sizeof(path), "%s", w->sink->path);
        else if (k->ns[0] && w->kind != K8S_NAMESPACES) /* namespaces are cluster-scoped */
                snprintf(path, sizeof(path), "%s/namespaces/%s/%s", group[w->kind], k->ns,
                         kind_name[w->kind]);
        else
                snprintf(path, sizeof(path), "%s/%s", group[w->kind], kind_name[w->kind]);
        const char *server = k8s_creds_server(k->creds);
        size_t slen = strlen(server);
        char url[2 * K8S_MAX_CONTINUE + 1024];
        int n;
        /* Services: the configured selector. Slices: only those a Service
         * owns. Pods: only meshed ones (one that loses the label arrives as
         * DELETED). Namespaces: only the configured one, if any. */
        const char *sel = w->sink                   ? w->sink_label_q
                          : w->kind == K8S_SERVICES ? k->selector_q
                          : w->kind == K8S_SLICES   ? "kubernetes.io%2Fservice-name"
                          : w->kind == K8S_PODS     ? "shunt.io%2Fmeshed%3Dtrue"
                                                    : NULL;
        const char *fsel = w->sink                     ? w->sink_field_q
                           : w->kind == K8S_NAMESPACES ? k->ns_field_q
                                                       : NULL;
        char *rv_q = curl_easy_escape(NULL, w->rv, 0);
        char *cont_q = w->cont[0] ? curl_easy_escape(NULL, w->cont, 0) : NULL;
        if (watch)
                n = snprintf(url, sizeof(url),
                             "%.*s%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s&"
                             "timeoutSeconds=%u%s%s%s%s",
                             (int)slen, server, path, rv_q ? rv_q : "", k->watch_s,
                             sel ? "&labelSelector=" : "", sel ? sel : "",
                             fsel ? "&fieldSelector=" : "", fsel ? fsel : "");
        else
                n = snprintf(url, sizeof(url), "%.*s%s?limit=%u%s%s%s%s%s%s", (int)slen, server,
                             path, K8S_LIST_LIMIT, cont_q ? "&continue=" : "", cont_q ? cont_q : "",
                             sel ? "&labelSelector=" : "", sel ? sel : "",
                             fsel ? "&fieldSelector=" : "", fsel ? fsel : "");
        curl_free(rv_q);
        curl_free(cont_q);
        if (n < 0 || (size_t)n >= sizeof(url)) {
                fail(w, "request URL too long");
                return;
        }
        w->easy = curl_easy_init();
        if (!w->easy) {
                fail(w, "curl_easy_init failed");
                return;
        }
        w->hdrs = curl_slist_append(NULL, "Accept: application/json");
        k8s_creds_apply(k->creds, w->easy, &w->hdrs);
        w->status = 0;
        w->len = 0;
        w->gone = false;
        w->relist_next = false;
        w->abort_why[0] = '\0';
        w->errbuf[0] = '\0';
        w->req_events = 0;
        CURL *e = w->easy;
        curl_request_init(e, url, "https,http", w->hdrs, w->errbuf);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, w);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, w);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)K8S_CONNECT_MS);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, K8S_KEEPALIVE_S);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, K8S_KEEPALIVE_S / 3);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        if (!watch)
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)K8S_LIST_TIMEOUT_MS);
        w->state = watch ? W_WATCH : W_LIST;
        if (watch)
                w->n_watches++;
        else
                w->n_lists++;
        w->started_ms = w->last_data_ms = now_ms(k);
        log_debug(COMP, 0, "kubernetes: %s %s", watch ? "watch" : "list", url);
        if (curl_loop_add(k->curl, e, on_done, w) < 0)
                fail(w, "cannot start the request: out of memory");
}

static void tick_cb(struct loop *loop, struct loop_timer *t)
{
        struct k8s *k = t->data;
        uint64_t now = now_ms(k);
        for (int i = 0; i < K8S__KINDS + K8S_MAX_SINKS; i++) {
                struct k8s_watch *w = i < K8S__KINDS ? &k->w[i] : &k->sw[i - K8S__KINDS];
                if (w->state == W_WATCH && now - w->last_data_ms > k->silence_ms) {
                        w->n_silent++;
                        char why[128];
                        snprintf(why, sizeof(why), "watch stream silent for %llums",
                                 (unsigned long long)(now - w->last_data_ms));
                        fail(w, why);
                }
        }
        check_sync(k);
        loop_timer_arm(loop, t, K8S_TICK_MS);
}

/* ---- backend ops --------------------------------------------------------------------------- */

static void k8s_destroy(void *impl)
{
        struct k8s *k = impl;
        if (!k)
                return;
        k->closing = true;
        for (int i = 0; i < K8S__KINDS + K8S_MAX_SINKS; i++) {
                struct k8s_watch *w = i < K8S__KINDS ? &k->w[i] : &k->sw[i - K8S__KINDS];
                if (!w->k)
                        continue; /* no sink */
                release_easy(w);
                if (k->loop)
                        loop_timer_cancel(k->loop, &w->retry);
                free(w->buf);
                drop_paging(w);
                curl_free(w->sink_label_q);
                curl_free(w->sink_field_q);
        }
        if (k->loop)
                loop_timer_cancel(k->loop, &k->tick);
        curl_loop_free(k->curl);
        k8s_creds_free(k->creds);
        curl_free(k->selector_q);
        curl_free(k->ns_field_q);
        k8s_cache_free(k->cache);
        free(k);
}

static int k8s_create(struct disc_registry *r, const struct shunt_config *cfg, void **impl,
                      char *err, size_t errlen)
{
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                snprintf(err, errlen, "kubernetes: curl_global_init failed");
                return -EIO;
        }
        struct k8s *k = calloc(1, sizeof(*k));
        if (!k) {
                snprintf(err, errlen, "discovery: out of memory");
                return -ENOMEM;
        }
        k->r = r;
        k->cache = k8s_cache_new();
        if (!k->cache) {
                snprintf(err, errlen, "kubernetes: out of memory");
                goto fail;
        }
        int rc;
        if (cfg->k8s_kubeconfig[0] ||
            (getenv("KUBERNETES_SERVICE_HOST") && *getenv("KUBERNETES_SERVICE_HOST")))
                rc = k8s_creds_load(cfg->k8s_kubeconfig, &k->creds, err, errlen);
        else {
                snprintf(err, errlen,
                         "config: service_discovery.kubernetes.kubeconfig_path is not set and "
                         "KUBERNETES_SERVICE_HOST is not in the environment (not in a cluster)");
                rc = -EINVAL;
        }
        if (rc)
                goto fail;
        if (strlen(cfg->k8s_namespace) >= sizeof(k->ns)) {
                snprintf(err, errlen, "config: service_discovery.kubernetes.namespace: too long");
                goto fail;
        }
        /* "*" watches every namespace (cluster-wide list and watch) */
        if (strcmp(cfg->k8s_namespace, "*") != 0) {
                memcpy(k->ns, cfg->k8s_namespace, strlen(cfg->k8s_namespace) + 1);
                char f[DISC_NAME_MAX + 16];
                snprintf(f, sizeof(f), "metadata.name=%s", k->ns);
                k->ns_field_q = curl_easy_escape(NULL, f, 0);
                if (!k->ns_field_q) {
                        snprintf(err, errlen, "kubernetes: out of memory");
                        goto fail;
                }
        }
        if (k8s_cache_set_trust_domain(k->cache, cfg->trust_domain) < 0) {
                snprintf(err, errlen, "config: mtls.trust_domain '%.64s': empty or too long",
                         cfg->trust_domain);
                goto fail;
        }
        if (cfg->k8s_label_selector[0]) {
                k->selector_q = curl_easy_escape(NULL, cfg->k8s_label_selector, 0);
                if (!k->selector_q) {
                        snprintf(err, errlen, "kubernetes: out of memory");
                        goto fail;
                }
        }
        k->watch_s = K8S_DEFAULT_WATCH_S;
        const char *ws = getenv("SHUNT_K8S_WATCH_TIMEOUT");
        if (ws && *ws) {
                char *end;
                unsigned long v = strtoul(ws, &end, 10);
                if (*end || v < 1 || v > 3600) {
                        snprintf(err, errlen, "SHUNT_K8S_WATCH_TIMEOUT: '%s' is not 1..3600", ws);
                        goto fail;
                }
                k->watch_s = (uint32_t)v;
        }
        k->silence_ms = 2ull * k->watch_s * 1000;
        k->src = disc_source_add(r, "kubernetes", DISC_SOURCE_KUBERNETES);
        if (k->src < 0) {
                snprintf(err, errlen, "discovery: cannot register the kubernetes source: %s",
                         strerror(-k->src));
                goto fail;
        }
        for (int i = 0; i < K8S__KINDS; i++) {
                struct k8s_watch *w = &k->w[i];
                w->k = k;
                w->kind = (enum k8s_kind)i;
                w->backoff_ms = K8S_BACKOFF_MIN_MS;
                loop_timer_init(&w->retry, retry_cb, w);
        }
        loop_timer_init(&k->tick, tick_cb, k);
        log_info(COMP, 0,
                 "kubernetes: %s credentials from %s, server %s, namespace %s, label selector "
                 "'%s', watch timeout %us",
                 k8s_creds_mode(k->creds), k8s_creds_origin(k->creds), k8s_creds_server(k->creds),
                 k->ns[0] ? k->ns : "(all)", cfg->k8s_label_selector, k->watch_s);
        *impl = k;
        return 0;
fail:
        k8s_destroy(k);
        return -EINVAL;
}

static int k8s_start(void *impl, struct loop *loop, char *err, size_t errlen)
{
        struct k8s *k = impl;
        k->loop = loop;
        k->curl = curl_loop_new(loop);
        if (!k->curl) {
                snprintf(err, errlen, "kubernetes: out of memory");
                return -ENOMEM;
        }
        for (int i = 0; i < K8S__KINDS; i++)
                start(&k->w[i]);
        for (int i = 0; i < K8S_MAX_SINKS; i++) {
                if (k->sw[i].sink)
                        start(&k->sw[i]);
        }
        int rc = loop_timer_arm(loop, &k->tick, K8S_TICK_MS);
        if (rc)
                snprintf(err, errlen, "kubernetes: cannot arm a timer");
        return rc;
}

static void k8s_render(const void *impl, struct strbuf *sb)
{
        const struct k8s *k = impl;
        strbuf_append(sb, "{\"credentials\":");
        strbuf_append_json_string(sb, k8s_creds_mode(k->creds));
        strbuf_append(sb, ",\"from\":");
        strbuf_append_json_string(sb, k8s_creds_origin(k->creds));
        strbuf_append(sb, ",\"server\":");
        strbuf_append_json_string(sb, k8s_creds_server(k->creds));
        strbuf_append(sb, ",\"namespace\":");
        strbuf_append_json_string(sb, k->ns);
        strbuf_appendf(sb,
                       ",\"watch_timeout_s\":%u,\"silence_ms\":%llu,\"builds\":%llu,"
                       "\"pods_shed\":%llu",
                       k->watch_s, (unsigned long long)k->silence_ms,
                       (unsigned long long)k->n_builds,
                       (unsigned long long)k8s_cache_pods_shed(k->cache));
        for (int i = 0; i < K8S__KINDS + K8S_MAX_SINKS; i++) {
                const struct k8s_watch *w = i < K8S__KINDS ? &k->w[i] : &k->sw[i - K8S__KINDS];
                if (!w->k)
                        continue; /* no sink */
                strbuf_appendf(sb, ",\"%s\":{\"state\":\"%s\",\"resource_version\":", wname(w),
                               state_name[w->state]);
                strbuf_append_json_string(sb, w->rv);
                strbuf_appendf(
                    sb,
                    ",\"objects\":%zu,\"lists\":%llu,\"watches\":%llu,\"bookmarks\":%llu,"
                    "\"bad_events\":%llu,\"gone\":%llu,\"failures\":%llu,\"silent\":%llu,"
                    "\"backoff_ms\":%u,\"pages\":%llu,\"continue_expired\":%llu,\"denied\":%llu,"
                    "\"missing\":%llu,\"last_error\":",
                    w->sink ? w->sink->count(w->sink->arg) : k8s_cache_count(k->cache, w->kind),
                    (unsigned long long)w->n_lists, (unsigned long long)w->n_watches,
                    (unsigned long long)w->n_bookmarks, (unsigned long long)w->n_bad,
                    (unsigned long long)w->n_gone, (unsigned long long)w->n_failures,
                    (unsigned long long)w->n_silent, w->backoff_ms, (unsigned long long)w->n_pages,
                    (unsigned long long)w->n_cont_expired, (unsigned long long)w->n_denied,
                    (unsigned long long)w->n_missing);
                if (w->last_error[0])
                        strbuf_append_json_string(sb, w->last_error);
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "}");
}

int k8s_backend_add_sink(void *impl, const struct k8s_object_sink *sink)
{
        struct k8s *k = impl;
        if (!k || !sink || !sink->kind || !sink->path[0] || !sink->apply || !sink->list_begin ||
            !sink->list_end || !sink->count)
                return -EINVAL;
        int i = 0;
        while (i < K8S_MAX_SINKS && k->sw[i].sink)
                i++;
        if (i == K8S_MAX_SINKS || k->loop)
                return -EBUSY;
        struct k8s_watch *w = &k->sw[i];
        w->k = k;
        w->sink = sink;
        w->sink_label_q =
            sink->label_selector ? curl_easy_escape(NULL, sink->label_selector, 0) : NULL;
        w->sink_field_q =
            sink->field_selector ? curl_easy_escape(NULL, sink->field_selector, 0) : NULL;
        if ((sink->label_selector && !w->sink_label_q) ||
            (sink->field_selector && !w->sink_field_q)) {
                curl_free(w->sink_label_q);
                curl_free(w->sink_field_q);
                memset(w, 0, sizeof(*w));
                return -ENOMEM;
        }
        w->backoff_ms = K8S_BACKOFF_MIN_MS;
        loop_timer_init(&w->retry, retry_cb, w);
        log_info(COMP, 0, "kubernetes: also watching %s (%s)", sink->kind, sink->path);
        return 0;
}

void k8s_backend_render_routes(void *impl, const char *service, struct strbuf *sb)
{
        const struct k8s *k = impl;
        k8s_cache_render_routes(k->cache, service, sb);
}

const struct disc_backend_ops k8s_backend_ops = {
    .type = "kubernetes",
    .create = k8s_create,
    .start = k8s_start,
    .render = k8s_render,
    .destroy = k8s_destroy,
};

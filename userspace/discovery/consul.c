// SPDX-License-Identifier: Apache-2.0
/* The Consul backend: catalog and per-service blocking queries on the main
 * loop (see consul.h). */
#include "discovery/consul.h"

#include <arpa/inet.h>
#include <errno.h>
#include <strings.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "core/log.h"
#include "discovery/consul_http.h"

#define COMP "consul"

struct consul;

struct watch {
        struct consul *cb;
        bool is_catalog;
        char name[DISC_NAME_MAX]; /* service name; "" for the catalog */
        uint64_t index;           /* 0: the next query does not block */
        struct chttp *req;
        struct loop_timer timer; /* next query (gap, backoff) */
        uint64_t last_start_ms;
        uint32_t failures; /* consecutive */
        bool seen;         /* in the last catalog listing */
        bool applied;      /* body_hash is that of the answer applied last */
        bool limiting;     /* the rate limit delays queries (logged once) */
        bool zero_logged;  /* an X-Consul-Index of 0 was logged */
        int acl_state;     /* answers filtered by ACLs: 0 no, 1 some left, 2 none left */
        uint64_t body_hash;
        struct consul_bucket bucket;
        uint64_t requests, errors, resets, changes, unchanged, limited, zero_index, acl_filtered;
};

struct consul {
        struct disc_registry *reg;
        int src;
        struct loop *loop;
        struct chttp_client *http;
        char address[CONFIG_STR_MAX + 16]; /* the agent's base URL, for logs */
        char token[CONFIG_STR_MAX];
        char dc[CONFIG_STR_MAX];
        char td[CONFIG_STR_MAX]; /* mtls.trust_domain, for Consul-form identities */
        uint32_t wait_s;         /* wait= of blocking queries */
        struct watch catalog;
        struct watch *svcs[CONSUL_MAX_WATCHES];
        uint32_t n_svcs;
        uint32_t n_failing;
        bool over_limit_logged;
        uint64_t syncs;
        char last_error[DISC_ERROR_MAX];
        unsigned rand_state;
};

static void watch_query(struct watch *w);

uint32_t consul_backoff_ms(uint32_t failures, double r)
{
        uint64_t ms = CONSUL_BACKOFF_MIN_MS;
        for (uint32_t i = 1; i < failures && ms < CONSUL_BACKOFF_MAX_MS; i++)
                ms *= 2;
        if (ms > CONSUL_BACKOFF_MAX_MS)
                ms = CONSUL_BACKOFF_MAX_MS;
        /* ±20 % */
        double f = 0.8 + 0.4 * r;
        return (uint32_t)((double)ms * f);
}

uint32_t consul_bucket_take(struct consul_bucket *b, uint64_t now_ms)
{
        if (!b->init) {
                b->init = true;
                b->tokens_milli = CONSUL_RATE_BURST * 1000;
                b->last_ms = now_ms;
        }
        uint64_t refill = 0;
        if (now_ms > b->last_ms) {
                refill = (now_ms - b->last_ms) * 1000 / CONSUL_RATE_REFILL_MS;
                b->last_ms = now_ms;
        }
        b->tokens_milli = b->tokens_milli + refill > CONSUL_RATE_BURST * 1000
                              ? CONSUL_RATE_BURST * 1000
                              : b->tokens_milli + refill;
        if (b->tokens_milli >= 1000) {
                b->tokens_milli -= 1000;
                return 0;
        }
        /* the token that comes next is taken now: the bucket stays empty */
        uint32_t wait = (uint32_t)((1000 - b->tokens_milli) * CONSUL_RATE_REFILL_MS / 1000);
        b->tokens_milli = 0;
        b->last_ms = now_ms + wait;
        return wait;
}

static double rnd(struct consul *cb)
{
        return (double)rand_r(&cb->rand_state) / ((double)RAND_MAX + 1.0);
}

static void watch_timer(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        watch_query(t->data);
}

static void watch_init(struct watch *w, struct consul *cb, const char *name)
{
        w->cb = cb;
        w->is_catalog = name == NULL;
        snprintf(w->name, sizeof(w->name), "%s", name ? name : "");
        loop_timer_init(&w->timer, watch_timer, w);
}

static void watch_stop(struct watch *w)
{
        chttp_cancel(w->req);
        w->req = NULL;
        if (w->cb->loop)
                loop_timer_cancel(w->cb->loop, &w->timer);
}

static const char *watch_what(const struct watch *w, char *buf, size_t len)
{
        if (w->is_catalog)
                snprintf(buf, len, "catalog");
        else
                snprintf(buf, len, "service %s", w->name);
        return buf;
}

/* Schedules the next query of w: at once, but no sooner than the minimum gap
 * after the previous one. */
static void watch_next(struct watch *w, uint32_t delay_ms)
{
        struct consul *cb = w->cb;
        uint64_t now = loop_now_ms(cb->loop);
        uint64_t earliest = w->last_start_ms + CONSUL_MIN_GAP_MS;
        if (now + delay_ms < earliest)
                delay_ms = (uint32_t)(earliest - now);
        loop_timer_arm(cb->loop, &w->timer, delay_ms);
}

static void watch_failed(struct watch *w, const char *why)
{
        struct consul *cb = w->cb;
        char what[DISC_NAME_MAX + 16];
        w->errors++;
        if (w->failures++ == 0)
                cb->n_failing++;
        uint32_t delay = consul_backoff_ms(w->failures, rnd(cb));
        snprintf(cb->last_error, sizeof(cb->last_error), "consul %s: %s: %s", cb->address,
                 watch_what(w, what, sizeof(what)), why);
        log_warn(COMP, 0, "%s (retry %u in %ums)", cb->last_error, w->failures, delay);
        disc_source_sync_failed(cb->reg, cb->src, cb->last_error);
        disc_registry_publish(cb->reg);
        watch_next(w, delay);
}

static void watch_ok(struct watch *w)
{
        struct consul *cb = w->cb;
        if (w->failures) {
                char what[DISC_NAME_MAX + 16];
                log_info(COMP, 0, "consul %s: %s: recovered after %u failures", cb->address,
                         watch_what(w, what, sizeof(what)), w->failures);
                w->failures = 0;
                cb->n_failing--;
        }
        if (cb->n_failing == 0) {
                cb->syncs++;
                disc_source_sync_ok(cb->reg, cb->src);
        }
}

/* ---- mapping a health/service answer to a service spec ---------------------- */

static const char *jstr(const cJSON *o, const char *key)
{
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int status_rank(const char *s)
{
        if (!s)
                return 2;
        if (strcmp(s, "passing") == 0)
                return 0;
        if (strcmp(s, "warning") == 0)
                return 1;
        return 2; /* critical, maintenance or anything unknown: out */
}

static void add_vip(struct disc_service_spec *s, const cJSON *ta, const char *key, uint16_t *vport)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(ta, key);
        if (!cJSON_IsObject(v))
                return;
        const char *a = jstr(v, "Address");
        struct disc_addr vip;
        if (!a || disc_addr_parse(a, 0, &vip) < 0)
                return;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(v, "Port");
        if (cJSON_IsNumber(p) && p->valuedouble >= 1 && p->valuedouble <= 65535 && !*vport)
                *vport = (uint16_t)p->valuedouble;
        for (uint32_t i = 0; i < s->n_vips; i++) {
                if (memcmp(&s->vips[i], &vip, sizeof(vip)) == 0)
                        return;
        }
        if (s->n_vips < DISC_MAX_VIPS)
                s->vips[s->n_vips++] = vip;
}

static enum proto tag_protocol(const cJSON *tags)
{
        const cJSON *t;
        cJSON_ArrayForEach(t, tags)
        {
                if (!cJSON_IsString(t) || strncmp(t->valuestring, "protocol=", 9) != 0)
                        continue;
                const char *v = t->valuestring + 9;
                enum proto p;
                if (strcasecmp(v, "http1") == 0)
                        return PROTO_HTTP1;
                if (proto_parse(v, &p) == 0)
                        return p;
        }
        return PROTO_UNKNOWN;
}

static bool has_tag(const cJSON *tags, const char *want)
{
        const cJSON *t;
        cJSON_ArrayForEach(t, tags)
        {
                if (cJSON_IsString(t) && strcmp(t->valuestring, want) == 0)
                        return true;
        }
        return false;
}

/* Mesh identity of one instance. Meshed when Service.Meta has
 * "shunt-identity" (its SPIFFE ID, used as is), or the tag "shunt-meshed",
 * Meta "shunt-meshed": "true" or Connect.Native; the identity is then
 * Consul's service-mesh form spiffe://<trust domain>/ns/<Namespace or
 * default>/dc/<Node.Datacenter>/svc/<Service>. Meta "shunt-mtls-mode" sets
 * the instance's mode (strict, permissive, disabled). */
static void instance_identity(const struct consul *cb, const char *name, const cJSON *svc,
                              const cJSON *node, struct disc_endpoint_spec *e)
{
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(svc, "Meta");
        const char *mode = jstr(meta, "shunt-mtls-mode");
        if (mode && disc_mtls_parse(mode, &e->mtls) < 0)
                log_warn(COMP, 0,
                         "service %s: Meta shunt-mtls-mode '%.32s' is not strict, "
                         "permissive or disabled: ignored",
                         name, mode);
        const char *id = jstr(meta, "shunt-identity");
        const char *flag = jstr(meta, "shunt-meshed");
        bool meshed = (id && id[0]) || (flag && strcmp(flag, "true") == 0) ||
                      has_tag(cJSON_GetObjectItemCaseSensitive(svc, "Tags"), "shunt-meshed") ||
                      cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(svc, "Connect"), "Native"));
        e->unmeshed = true;
        if (!meshed)
                return;
        int n;
        if (id && id[0]) {
                n = strncmp(id, "spiffe://", 9) == 0
                        ? snprintf(e->identity, sizeof(e->identity), "%s", id)
                        : -1;
        } else {
                const char *ns = jstr(svc, "Namespace"), *dc = jstr(node, "Datacenter");
                const char *sname = jstr(svc, "Service");
                n = snprintf(e->identity, sizeof(e->identity), "spiffe://%s/ns/%s/dc/%s/svc/%s",
                             cb->td, ns && ns[0] ? ns : "default",
                             dc && dc[0] ? dc : (cb->dc[0] ? cb->dc : "dc1"),
                             sname && sname[0] ? sname : name);
        }
        if (n < 0 || (size_t)n >= sizeof(e->identity)) {
                log_warn(COMP, 0,
                         "service %s: Meta shunt-identity is not a SPIFFE ID of at most %d bytes: "
                         "instance not meshed",
                         name, DISC_IDENTITY_MAX - 1);
                e->identity[0] = '\0';
                return;
        }
        e->unmeshed = false;
}

/* Parses the body of /v1/health/service/<name> into s (endpoints in eps,
 * capacity CONSUL_MAX_INSTANCES). 0 or -EINVAL with why. */
static int map_health(const struct consul *cb, const char *name, const char *body, size_t len,
                      struct disc_service_spec *s, struct disc_endpoint_spec *eps, char *why,
                      size_t whylen)
{
        cJSON *root = cJSON_ParseWithLength(body, len);
        if (!cJSON_IsArray(root)) {
                snprintf(why, whylen, "health/service/%s: %s", name,
                         root ? "expected a JSON array" : "invalid JSON");
                cJSON_Delete(root);
                return -EINVAL;
        }
        disc_service_spec_init(s);
        snprintf(s->name, sizeof(s->name), "%s", name);
        s->endpoints = eps;
        uint16_t vport = 0;
        uint16_t tports[DISC_MAX_PORTS];
        enum proto tproto[DISC_MAX_PORTS];
        uint32_t n_tports = 0, skipped = 0;
        const cJSON *entry;
        cJSON_ArrayForEach(entry, root)
        {
                const cJSON *svc = cJSON_GetObjectItemCaseSensitive(entry, "Service");
                const cJSON *node = cJSON_GetObjectItemCaseSensitive(entry, "Node");
                if (!cJSON_IsObject(svc)) {
                        skipped++;
                        continue;
                }
                const char *addr = jstr(svc, "Address");
                if (!addr || !addr[0])
                        addr = jstr(node, "Address");
                const cJSON *port = cJSON_GetObjectItemCaseSensitive(svc, "Port");
                struct disc_endpoint_spec e;
                memset(&e, 0, sizeof(e));
                if (!addr || !cJSON_IsNumber(port) || port->valuedouble < 1 ||
                    port->valuedouble > 65535 ||
                    disc_addr_parse(addr, (uint16_t)port->valuedouble, &e.addr) < 0) {
                        skipped++; /* a hostname, no port: cannot be dialled directly */
                        continue;
                }
                int worst = 0;
                const cJSON *c;
                cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(entry, "Checks"))
                {
                        int r = status_rank(jstr(c, "Status"));
                        if (r > worst)
                                worst = r;
                }
                /* Weights.Passing while every check passes, Weights.Warning
                 * while one warns (Consul's defaults: 1 and 1); 0 takes the
                 * instance out, as Consul's own proxies do. */
                const cJSON *wx = cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(svc, "Weights"),
                    worst == 1 ? "Warning" : "Passing");
                uint64_t w = CONSUL_WEIGHT_SCALE;
                if (cJSON_IsNumber(wx) && wx->valuedouble >= 0)
                        w = wx->valuedouble >= DISC_WEIGHT_MAX
                                ? DISC_WEIGHT_MAX
                                : (uint64_t)wx->valuedouble * CONSUL_WEIGHT_SCALE;
                if (w > DISC_WEIGHT_MAX)
                        w = DISC_WEIGHT_MAX;
                e.weight = (uint32_t)w;
                e.health = worst == 2 || w == 0 ? DISC_HEALTH_UNHEALTHY : DISC_HEALTH_HEALTHY;
                const cJSON *loc = cJSON_GetObjectItemCaseSensitive(svc, "Locality");
                const char *region = jstr(loc, "Region"), *zone = jstr(loc, "Zone");
                if (!region || !region[0])
                        region = jstr(node, "Datacenter");
                if (region)
                        snprintf(e.region, sizeof(e.region), "%s", region);
                if (zone)
                        snprintf(e.zone, sizeof(e.zone), "%s", zone);
                instance_identity(cb, name, svc, node, &e);
                add_vip(s, cJSON_GetObjectItemCaseSensitive(svc, "TaggedAddresses"),
                        "consul-virtual", &vport);
                add_vip(s, cJSON_GetObjectItemCaseSensitive(svc, "TaggedAddresses"), "virtual",
                        &vport);
                uint32_t k;
                for (k = 0; k < n_tports && tports[k] != e.addr.port; k++)
                        ;
                if (k == n_tports) {
                        if (n_tports == DISC_MAX_PORTS) {
                                skipped++;
                                continue;
                        }
                        tports[n_tports] = e.addr.port;
                        tproto[n_tports++] =
                            tag_protocol(cJSON_GetObjectItemCaseSensitive(svc, "Tags"));
                }
                bool dup = false;
                for (uint32_t i = 0; i < s->n_endpoints && !dup; i++)
                        dup = memcmp(&eps[i].addr, &e.addr, sizeof(e.addr)) == 0;
                if (dup)
                        continue;
                if (s->n_endpoints == CONSUL_MAX_INSTANCES) {
                        skipped++;
                        continue;
                }
                eps[s->n_endpoints++] = e;
        }
        cJSON_Delete(root);
        for (uint32_t k = 0; k < n_tports; k++) {
                struct disc_port_spec *p = &s->ports[s->n_ports++];
                p->port = (n_tports == 1 && vport) ? vport : tports[k];
                p->target_port = tports[k];
                p->proto = tproto[k];
        }
        if (skipped)
                log_debug(COMP, 0,
                          "service %s: %u instances skipped (no IP address and port, or "
                          "over the bounds)",
                          name, skipped);
        return 0;
}

/* ---- watches ------------------------------------------------------------------ */

static void remove_watch(struct consul *cb, uint32_t i)
{
        struct watch *w = cb->svcs[i];
        watch_stop(w);
        if (w->failures)
                cb->n_failing--;
        int rc = disc_registry_remove_service(cb->reg, cb->src, DISC_DEFAULT_NAMESPACE, w->name);
        if (rc < 0 && rc != -ENOENT)
                log_warn(COMP, 0, "service %s: removal failed: %s", w->name, strerror(-rc));
        log_info(COMP, 0, "service %s: gone from the catalog", w->name);
        free(w);
        cb->svcs[i] = cb->svcs[--cb->n_svcs];
}

static int apply_catalog(struct consul *cb, const char *body, size_t len, char *why, size_t whylen)
{
        cJSON *root = cJSON_ParseWithLength(body, len);
        if (!cJSON_IsObject(root)) {
                snprintf(why, whylen, "catalog/services: %s",
                         root ? "expected a JSON object" : "invalid JSON");
                cJSON_Delete(root);
                return -EINVAL;
        }
        for (uint32_t i = 0; i < cb->n_svcs; i++)
                cb->svcs[i]->seen = false;
        uint32_t over = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, root)
        {
                const char *name = x->string;
                if (!name || !name[0] || strlen(name) >= DISC_NAME_MAX) {
                        log_debug(COMP, 0,
                                  "catalog: service name '%s' skipped (empty or over %d "
                                  "bytes)",
                                  name ? name : "", DISC_NAME_MAX - 1);
                        continue;
                }
                struct watch *w = NULL;
                for (uint32_t i = 0; i < cb->n_svcs && !w; i++) {
                        if (strcmp(cb->svcs[i]->name, name) == 0)
                                w = cb->svcs[i];
                }
                if (w) {
                        w->seen = true;
                        continue;
                }
                if (cb->n_svcs == CONSUL_MAX_WATCHES) {
                        over++;
                        continue;
                }
                w = calloc(1, sizeof(*w));
                if (!w) {
                        over++;
                        continue;
                }
                watch_init(w, cb, name);
                w->seen = true;
                cb->svcs[cb->n_svcs++] = w;
                log_info(COMP, 0, "service %s: new in the catalog, watching it", name);
                watch_query(w);
        }
        cJSON_Delete(root);
        if (over && !cb->over_limit_logged) {
                log_warn(COMP, 0, "catalog: %u services not watched: at most %d are", over,
                         CONSUL_MAX_WATCHES);
                cb->over_limit_logged = true;
        }
        for (uint32_t i = 0; i < cb->n_svcs;) {
                if (!cb->svcs[i]->seen)
                        remove_watch(cb, i);
                else
                        i++;
        }
        disc_registry_publish(cb->reg);
        return 0;
}

static int apply_service(struct watch *w, const char *body, size_t len, char *why, size_t whylen)
{
        struct consul *cb = w->cb;
        struct disc_endpoint_spec *eps = calloc(CONSUL_MAX_INSTANCES, sizeof(*eps));
        if (!eps) {
                snprintf(why, whylen, "out of memory");
                return -ENOMEM;
        }
        struct disc_service_spec s;
        int rc = map_health(cb, w->name, body, len, &s, eps, why, whylen);
        if (rc == 0) {
                rc = disc_registry_upsert_service(cb->reg, cb->src, &s, true);
                if (rc < 0)
                        snprintf(why, whylen, "service %s rejected by the registry: %s", w->name,
                                 strerror(-rc));
                else
                        disc_registry_publish(cb->reg);
        }
        free(eps);
        return rc;
}

/* FNV-1a: tells an answer that changed from one that did not. */
static uint64_t body_hash(const char *p, size_t n)
{
        uint64_t h = 14695981039346656037ull;
        for (size_t i = 0; i < n; i++)
                h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
        return h;
}

/* The next query after an answer: at once, unless answers come back
 * quickly (before half the wait) faster than the rate limit allows. */
static void watch_again(struct watch *w, uint64_t now)
{
        struct consul *cb = w->cb;
        bool quick = now - w->last_start_ms < (uint64_t)cb->wait_s * 1000 / 2;
        uint32_t delay = quick ? consul_bucket_take(&w->bucket, now) : 0;
        if (!delay) {
                w->limiting = false;
        } else {
                w->limited++;
                if (!w->limiting) {
                        char what[DISC_NAME_MAX + 16];
                        log_info(COMP, 0,
                                 "consul %s: %s: answers come back at once (changes, or a new "
                                 "index with the same data): rate-limited to one query every "
                                 "%d s while this lasts",
                                 cb->address, watch_what(w, what, sizeof(what)),
                                 CONSUL_RATE_REFILL_MS / 1000);
                        w->limiting = true;
                }
        }
        watch_next(w, delay);
}

/* An answer Consul filtered for the token (X-Consul-Results-Filtered-By-
 * ACLs): valid, and applied as it is (it is what this token may route to),
 * but said once per episode (and again when nothing is left), counted, and
 * in the denied metric, so that a service or instances missing for lack of
 * permission are not mistaken for ones that do not exist. */
static void acl_filtered(struct watch *w, const struct chttp_resp *resp)
{
        struct consul *cb = w->cb;
        if (!resp->filtered) {
                if (w->acl_state)
                        log_info(COMP, 0, "consul %s: %s%s: no longer filtered by ACLs",
                                 cb->address, w->is_catalog ? "catalog" : "service ", w->name);
                w->acl_state = 0;
                return;
        }
        w->acl_filtered++;
        disc_source_denied(cb->reg, cb->src);
        const char *p = resp->body;
        while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '[' || *p == '{')
                p++;
        int state = *p == ']' || *p == '}' ? 2 : 1;
        if (state == w->acl_state)
                return; /* said already */
        w->acl_state = state;
        if (w->is_catalog)
                log_warn(COMP, 0,
                         "consul %s: catalog: services filtered out by ACLs "
                         "(X-Consul-Results-Filtered-By-ACLs): the token lacks service:read on "
                         "them, so they are not watched or routed",
                         cb->address);
        else
                log_warn(COMP, 0,
                         "consul %s: service %s: instances filtered out by ACLs "
                         "(X-Consul-Results-Filtered-By-ACLs): the token lacks service:read on "
                         "it or node:read on their nodes; %s",
                         cb->address, w->name,
                         state == 2 ? "none is left: the service has no endpoints"
                                    : "only the others are routed");
}

static void on_response(void *ctx, int err, const struct chttp_resp *resp, const char *why)
{
        struct watch *w = ctx;
        struct consul *cb = w->cb;
        w->req = NULL;
        char msg[DISC_ERROR_MAX];
        char what[DISC_NAME_MAX + 16];
        if (err) {
                watch_failed(w, why);
                return;
        }
        if (resp->status != 200) {
                snprintf(msg, sizeof(msg), "HTTP %d%s", resp->status,
                         resp->status == 403 ? " (ACL token rejected)" : "");
                if (resp->status == 401 || resp->status == 403)
                        disc_source_denied(cb->reg, cb->src);
                watch_failed(w, msg);
                return;
        }
        if (!resp->index_valid) {
                watch_failed(w, resp->has_index ? "invalid X-Consul-Index"
                                                : "no X-Consul-Index header");
                return;
        }
        uint64_t idx = resp->index;
        if (idx == 0) {
                /* a Consul bug, which its documentation says still happens:
                 * blocking on 0 would return at once, forever */
                w->zero_index++;
                if (!w->zero_logged)
                        log_warn(COMP, 0,
                                 "consul %s: %s: X-Consul-Index 0 (a Consul bug): blocking on "
                                 "index 1 instead, changes seen by content",
                                 cb->address, watch_what(w, what, sizeof(what)));
                w->zero_logged = true;
                idx = 1;
        }
        bool reset = w->index && idx < w->index;
        acl_filtered(w, resp);
        uint64_t h = body_hash(resp->body, resp->body_len);
        if (w->applied && h == w->body_hash) {
                /* the wait ran out, or the index moved with the same data */
                w->unchanged++;
        } else {
                int rc = w->is_catalog
                             ? apply_catalog(cb, resp->body, resp->body_len, msg, sizeof(msg))
                             : apply_service(w, resp->body, resp->body_len, msg, sizeof(msg));
                if (rc < 0) {
                        watch_failed(w, msg);
                        return;
                }
                w->applied = true;
                w->body_hash = h;
                w->changes++;
        }
        if (reset) {
                /* went backwards (agent restarted, snapshot restored): start
                 * over with a non-blocking query */
                w->resets++;
                log_info(COMP, 0, "consul %s: %s: index went backwards (%llu < %llu), reset",
                         cb->address, watch_what(w, what, sizeof(what)), (unsigned long long)idx,
                         (unsigned long long)w->index);
                w->index = 0;
        } else {
                w->index = idx;
        }
        watch_ok(w);
        watch_again(w, loop_now_ms(cb->loop));
}

static void url_escape(const char *in, char *out, size_t len)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < len; p++) {
                if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
                        out[o++] = (char)*p;
                } else {
                        out[o++] = '%';
                        out[o++] = hex[*p >> 4];
                        out[o++] = hex[*p & 15];
                }
        }
        out[o] = '\0';
}

static void watch_query(struct watch *w)
{
        struct consul *cb = w->cb;
        if (w->req)
                return;
        char target[CHTTP_TARGET_MAX], name[DISC_NAME_MAX * 3 + 1], dc[CONFIG_STR_MAX * 3 + 1];
        url_escape(w->name, name, sizeof(name));
        url_escape(cb->dc, dc, sizeof(dc));
        int n = snprintf(target, sizeof(target), "/v1/%s%s?wait=%us%s%s",
                         w->is_catalog ? "catalog/services" : "health/service/",
                         w->is_catalog ? "" : name, cb->wait_s, dc[0] ? "&dc=" : "", dc);
        if (w->index && n > 0 && (size_t)n < sizeof(target))
                n += snprintf(target + n, sizeof(target) - (size_t)n, "&index=%llu",
                              (unsigned long long)w->index);
        char hdrs[CONFIG_STR_MAX + 32] = "";
        if (cb->token[0])
                snprintf(hdrs, sizeof(hdrs), "X-Consul-Token: %s\r\n", cb->token);
        /* Consul adds up to wait/16 of jitter to the wait */
        uint32_t timeout = cb->wait_s * 1000 + cb->wait_s * 1000 / 16 + 5000;
        char why[256];
        w->last_start_ms = loop_now_ms(cb->loop);
        w->requests++;
        w->req = chttp_get(cb->http, target, hdrs, timeout, CONSUL_RESP_MAX, on_response, w, why,
                           sizeof(why));
        if (!w->req)
                watch_failed(w, why);
}

/* ---- backend ops ------------------------------------------------------------- */

/* The ACL token: service_discovery.consul.token, or the content of
 * token_file (the form Kubernetes secrets and Vault agents leave behind). */
static int consul_token(const struct shunt_config *cfg, char *out, size_t outlen, char *err,
                        size_t errlen)
{
        char *buf = NULL;
        size_t n = 0;
        const char *tok = cfg->consul_token;
        if (cfg->consul_token_file[0]) {
                if (tok[0]) {
                        snprintf(err, errlen,
                                 "config: service_discovery.consul.token and token_file are both "
                                 "set: keep one");
                        return -EINVAL;
                }
                char why[CONFIG_PATH_MAX + 64];
                int rc =
                    file_read_token(cfg->consul_token_file, outlen - 1, &buf, &n, why, sizeof(why));
                if (rc < 0) {
                        snprintf(err, errlen, "config: service_discovery.consul.token_file: %s",
                                 why);
                        return rc;
                }
                tok = buf;
        }
        int rc = 0;
        for (const char *p = tok; *p && !rc; p++) {
                if ((unsigned char)*p < ' ' || *p == 0x7f) {
                        snprintf(err, errlen,
                                 "config: service_discovery.consul.%s: contains a control "
                                 "character",
                                 buf ? "token_file" : "token");
                        rc = -EINVAL;
                }
        }
        if (!rc)
                snprintf(out, outlen, "%s", tok);
        free(buf);
        return rc;
}

static int consul_create(struct disc_registry *r, const struct shunt_config *cfg, void **impl,
                         char *err, size_t errlen)
{
        struct consul *cb = calloc(1, sizeof(*cb));
        if (!cb) {
                snprintf(err, errlen, "discovery: out of memory");
                return -ENOMEM;
        }
        const struct chttp_client_config hc = {
            .address = cfg->consul_address[0] ? cfg->consul_address : CONSUL_DEFAULT_ADDRESS,
            .ca_file = cfg->consul_ca_file,
            .cert_file = cfg->consul_cert_file,
            .key_file = cfg->consul_key_file,
            .mark = config_socket_mark(cfg),
        };
        int rc = consul_token(cfg, cb->token, sizeof(cb->token), err, errlen);
        if (rc < 0 || !(cb->http = chttp_client_new(&hc, err, errlen))) {
                free(cb);
                return rc < 0 ? rc : -EINVAL;
        }
        snprintf(cb->address, sizeof(cb->address), "%s", chttp_client_url(cb->http));
        cb->wait_s = CONSUL_WAIT_S;
        const char *ws = getenv("SHUNT_CONSUL_WAIT");
        if (ws && *ws) {
                char *end;
                unsigned long v = strtoul(ws, &end, 10);
                if (*end || v < 1 || v > CONSUL_WAIT_MAX_S) {
                        snprintf(err, errlen, "SHUNT_CONSUL_WAIT: '%.32s' is not 1..%d seconds", ws,
                                 CONSUL_WAIT_MAX_S);
                        chttp_client_free(cb->http);
                        free(cb);
                        return -EINVAL;
                }
                cb->wait_s = (uint32_t)v;
        }
        snprintf(cb->dc, sizeof(cb->dc), "%s", cfg->consul_datacenter);
        snprintf(cb->td, sizeof(cb->td), "%s", cfg->trust_domain);
        cb->reg = r;
        cb->rand_state = (unsigned)clock_mono_ms() ^ (unsigned)getpid();
        int src = disc_source_add(r, "consul", DISC_SOURCE_CONSUL);
        if (src < 0) {
                snprintf(err, errlen, "discovery: cannot add the consul source: %s",
                         strerror(-src));
                chttp_client_free(cb->http);
                free(cb);
                return src;
        }
        cb->src = src;
        watch_init(&cb->catalog, cb, NULL);
        *impl = cb;
        return 0;
}

static int consul_start(void *impl, struct loop *loop, char *err, size_t errlen)
{
        struct consul *cb = impl;
        cb->loop = loop;
        if (chttp_client_start(cb->http, loop) < 0) {
                snprintf(err, errlen, "discovery: consul: out of memory for the HTTP client");
                return -ENOMEM;
        }
        log_info(COMP, 0, "watching the Consul catalog at %s%s%s%s", cb->address,
                 cb->dc[0] ? " (datacenter " : "", cb->dc, cb->dc[0] ? ")" : "");
        /* an unreachable agent does not fail start-up: the watch retries */
        watch_query(&cb->catalog);
        return 0;
}

static void render_watch(const struct watch *w, struct strbuf *sb)
{
        strbuf_appendf(sb,
                       "\"index\":%llu,\"failures\":%u,\"requests\":%llu,\"errors\":%llu,"
                       "\"changes\":%llu,\"unchanged\":%llu,\"rate_limited\":%llu,"
                       "\"zero_index\":%llu,\"acl_filtered\":%llu,\"index_resets\":%llu,"
                       "\"in_flight\":%s",
                       (unsigned long long)w->index, w->failures, (unsigned long long)w->requests,
                       (unsigned long long)w->errors, (unsigned long long)w->changes,
                       (unsigned long long)w->unchanged, (unsigned long long)w->limited,
                       (unsigned long long)w->zero_index, (unsigned long long)w->acl_filtered,
                       (unsigned long long)w->resets, w->req ? "true" : "false");
}

static void consul_render(const void *impl, struct strbuf *sb)
{
        const struct consul *cb = impl;
        strbuf_append(sb, "{\"address\":");
        strbuf_append_json_string(sb, cb->address);
        strbuf_append(sb, ",\"datacenter\":");
        strbuf_append_json_string(sb, cb->dc);
        strbuf_appendf(sb, ",\"wait_s\":%u", cb->wait_s);
        strbuf_appendf(sb, ",\"acl_token\":%s,\"stale\":%s,\"syncs\":%llu,\"last_error\":",
                       cb->token[0] ? "true" : "false", cb->n_failing ? "true" : "false",
                       (unsigned long long)cb->syncs);
        if (cb->last_error[0])
                strbuf_append_json_string(sb, cb->last_error);
        else
                strbuf_append(sb, "null");
        strbuf_append(sb, ",\"catalog\":{");
        render_watch(&cb->catalog, sb);
        strbuf_append(sb, "},\"services\":[");
        for (uint32_t i = 0; i < cb->n_svcs; i++) {
                strbuf_append(sb, i ? ",{\"name\":" : "{\"name\":");
                strbuf_append_json_string(sb, cb->svcs[i]->name);
                strbuf_append(sb, ",");
                render_watch(cb->svcs[i], sb);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]}");
}

static void consul_destroy(void *impl)
{
        struct consul *cb = impl;
        if (!cb)
                return;
        watch_stop(&cb->catalog);
        for (uint32_t i = 0; i < cb->n_svcs; i++) {
                watch_stop(cb->svcs[i]);
                free(cb->svcs[i]);
        }
        chttp_client_free(cb->http);
        free(cb);
}

const struct disc_backend_ops disc_consul_ops = {
    .type = "consul",
    .create = consul_create,
    .start = consul_start,
    .render = consul_render,
    .destroy = consul_destroy,
};

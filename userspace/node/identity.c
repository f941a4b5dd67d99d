// SPDX-License-Identifier: Apache-2.0
/* Node mode: one certificate store per (namespace, service account) of the
 * node's READY meshed pods, counted by those pods. */
#include "node/identity.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/spiffe.h"
#include "tls/store.h"

#define COMP "node"

struct ident {
        struct ident *next;
        char *ns, *sa, *spiffe;
        uint32_t pods;        /* READY pods counted */
        uint64_t drain_until; /* monotonic ms; valid while pods == 0 */
        struct tls_store *st;
        bool started; /* its store asks for certificates; else queued (pump) */
};

/* One READY pod as told by node_pods: what it counted (id NULL: shed). */
struct pod_ref {
        uint64_t gen;
        char ns[SPIFFE_NAME_MAX + 1], sa[SPIFFE_NAME_MAX + 1];
        struct ident *id;
};

struct node_identities {
        struct node_identities_config cfg;
        char *trust_domain;
        struct loop *loop;
        struct loop_timer sweep;
        struct ident *ids;
        size_t n_ids;
        struct pod_ref *pods;
        size_t n_pods, cap_pods;
        struct node_pods_observer obs;
        /* what freed stores counted, so totals survive them */
        uint64_t gone_failures, gone_issued;
        uint64_t n_created, n_dropped, n_shed, n_errors;
};

static const char *const state_names[] = {"none",  "fetching", "retrying",
                                          "ready", "draining", "shed"};

const char *node_identity_state_name(enum node_identity_state s)
{
        return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "?";
}

static struct ident *find(const struct node_identities *ids, const char *ns, const char *sa)
{
        for (struct ident *i = ids->ids; i; i = i->next)
                if (strcmp(i->ns, ns) == 0 && strcmp(i->sa, sa) == 0)
                        return i;
        return NULL;
}

static void ident_free(struct node_identities *ids, struct ident *i)
{
        if (i->st) {
                struct tls_store_counts c;
                tls_store_counts(i->st, &c);
                ids->gone_failures += c.rotation_failures;
                ids->gone_issued += c.rotations + (c.has_cert ? 1 : 0);
        }
        tls_store_free(i->st);
        free(i->ns);
        free(i->sa);
        free(i->spiffe);
        free(i);
}

/* Starts queued stores while fewer than NODE_ID_MAX_FIRST_FETCHES started
 * ones wait for the outcome of their first request: a node agent that starts
 * with many pods does not send the CA a request per identity at once. */
static void pump(struct node_identities *ids)
{
        size_t first = 0, queued = 0;
        for (struct ident *i = ids->ids; i; i = i->next) {
                struct tls_store_counts c;
                if (!i->started) {
                        queued++;
                        continue;
                }
                tls_store_counts(i->st, &c);
                if (!c.has_cert && c.rotation_failures == 0)
                        first++;
        }
        /* oldest first: the list is newest first */
        while (queued && first < NODE_ID_MAX_FIRST_FETCHES) {
                struct ident *oldest = NULL;
                for (struct ident *i = ids->ids; i; i = i->next)
                        if (!i->started)
                                oldest = i;
                oldest->started = true;
                queued--;
                if (ids->loop && tls_store_start(oldest->st, ids->loop) < 0)
                        log_error(COMP, 0, "identity %s: cannot arm its certificate timer",
                                  oldest->spiffe);
                struct tls_store_counts c;
                tls_store_counts(oldest->st, &c);
                if (!c.has_cert && c.rotation_failures == 0)
                        first++;
        }
        if (queued && ids->loop) /* look again soon */
                loop_timer_arm(ids->loop, &ids->sweep, NODE_ID_PUMP_MS);
}

/* A new identity with its store (deferred: the first certificate comes
 * asynchronously). NULL, with a logged reason, when it cannot be made. */
static struct ident *ident_new(struct node_identities *ids, const char *ns, const char *sa)
{
        struct spiffe_id *sid = malloc(sizeof(*sid));
        struct ident *i = calloc(1, sizeof(*i));
        char err[512] = "";
        int rc = sid && i ? 0 : -ENOMEM;
        if (rc == 0 && (rc = spiffe_id_build(ids->trust_domain, ns, sa, sid)) < 0)
                snprintf(err, sizeof(err),
                         "no valid SPIFFE ID from namespace %s, service account %s", ns, sa);
        if (rc == 0) {
                i->ns = strdup(ns);
                i->sa = strdup(sa);
                i->spiffe = strdup(sid->uri);
                if (!i->ns || !i->sa || !i->spiffe)
                        rc = -ENOMEM;
        }
        struct tls_source *src = NULL;
        if (rc == 0 &&
            (rc = ids->cfg.make_source(ids->cfg.source_ctx, ns, sa, i->spiffe, &src, err,
                                       sizeof(err))) < 0 &&
            !err[0])
                snprintf(err, sizeof(err), "its certificate source cannot be made: %s",
                         strerror(-rc));
        if (rc == 0) {
                struct tls_store_options so;
                tls_store_options_init(&so);
                so.trust_domain = ids->trust_domain;
                so.clock_skew_s = ids->cfg.clock_skew_s;
                so.drain_s = ids->cfg.drain_s;
                so.deferred = true;
                so.log_once = true;
                so.identity = i->spiffe;
                so.federation = ids->cfg.federation;
                rc = tls_store_new(&so, src, &i->st); /* takes src; started by pump() */
                if (rc < 0)
                        snprintf(err, sizeof(err), "its certificate store cannot be made: %s",
                                 strerror(-rc));
        }
        free(sid);
        if (rc < 0) {
                ids->n_errors++;
                log_error(COMP, 0,
                          "identity %s/%s: %s; its pods have none, so their connections are "
                          "refused",
                          ns, sa, err[0] ? err : strerror(-rc));
                if (i)
                        ident_free(ids, i);
                return NULL;
        }
        i->next = ids->ids;
        ids->ids = i;
        ids->n_ids++;
        ids->n_created++;
        log_info(COMP, 0, "identity %s held for the pods of %s/%s on this node (%zu of %u)",
                 i->spiffe, ns, sa, ids->n_ids, ids->cfg.max_identities);
        pump(ids);
        return i;
}

/* The identity ns/sa for one more pod: found (revived from its drain), made,
 * or NULL (bound reached or failed). */
static struct ident *take(struct node_identities *ids, const char *ns, const char *sa,
                          bool log_shed)
{
        struct ident *i = find(ids, ns, sa);
        if (!i && ids->n_ids >= ids->cfg.max_identities) {
                if (!log_shed)
                        return NULL;
                ids->n_shed++;
                log_warn(COMP, 0,
                         "identity %s/%s shed: node.max_pods (%u) identities are held (draining "
                         "ones included); its pods' connections are refused until one is dropped",
                         ns, sa, ids->cfg.max_identities);
                return NULL;
        }
        if (!i && !(i = ident_new(ids, ns, sa)))
                return NULL;
        if (i->pods++ == 0 && i->drain_until)
                log_info(COMP, 0, "identity %s taken back from its drain", i->spiffe);
        i->drain_until = 0;
        return i;
}

static void release(struct node_identities *ids, struct ident *i)
{
        if (!i || i->pods == 0)
                return;
        if (--i->pods == 0) {
                i->drain_until = clock_mono_ms() + (uint64_t)ids->cfg.drain_s * 1000;
                log_info(COMP, 0, "identity %s: its last pod left the node; dropped in %us (drain)",
                         i->spiffe, ids->cfg.drain_s);
        }
}

static void on_ready(void *ctx, const struct node_pod_info *pod)
{
        struct node_identities *ids = ctx;
        if (pod->sidecar) /* its own proxy holds its identity */
                return;
        if (!pod->sa || !pod->sa[0] || strlen(pod->ns) > SPIFFE_NAME_MAX ||
            strlen(pod->sa) > SPIFFE_NAME_MAX) {
                log_error(COMP, 0, "pod %s/%s has no usable service account: no identity", pod->ns,
                          pod->name);
                return;
        }
        if (ids->n_pods == ids->cap_pods) {
                size_t cap = ids->cap_pods ? ids->cap_pods * 2 : 16;
                struct pod_ref *p = realloc(ids->pods, cap * sizeof(*p));
                if (!p) {
                        ids->n_errors++;
                        log_error(COMP, 0, "pod %s/%s: out of memory: no identity", pod->ns,
                                  pod->name);
                        return;
                }
                ids->pods = p;
                ids->cap_pods = cap;
        }
        struct pod_ref *r = &ids->pods[ids->n_pods++];
        memset(r, 0, sizeof(*r));
        r->gen = pod->gen;
        snprintf(r->ns, sizeof(r->ns), "%s", pod->ns);
        snprintf(r->sa, sizeof(r->sa), "%s", pod->sa);
        r->id = take(ids, pod->ns, pod->sa, true);
}

/* Pods left without an identity get one when there is room again. */
static void give_room(struct node_identities *ids)
{
        for (size_t k = 0; k < ids->n_pods && ids->n_ids < ids->cfg.max_identities; k++) {
                struct pod_ref *r = &ids->pods[k];
                if (!r->id && (r->id = take(ids, r->ns, r->sa, false)))
                        log_info(COMP, 0, "identity %s/%s held now that there is room", r->ns,
                                 r->sa);
        }
}

static void on_gone(void *ctx, const struct node_pod_info *pod)
{
        struct node_identities *ids = ctx;
        for (size_t k = 0; k < ids->n_pods; k++) {
                if (ids->pods[k].gen != pod->gen)
                        continue;
                release(ids, ids->pods[k].id);
                ids->pods[k] = ids->pods[--ids->n_pods];
                return;
        }
}

void node_identities_sweep(struct node_identities *ids, uint64_t now_ms)
{
        bool freed = false;
        for (struct ident **pp = &ids->ids; *pp;) {
                struct ident *i = *pp;
                if (i->pods > 0 || now_ms < i->drain_until) {
                        pp = &i->next;
                        continue;
                }
                struct tls_store_counts c;
                tls_store_counts(i->st, &c);
                if (c.conns > 0) { /* connections still use its certificates */
                        pp = &i->next;
                        continue;
                }
                log_info(COMP, 0, "identity %s dropped: no pod of %s/%s on this node for %us",
                         i->spiffe, i->ns, i->sa, ids->cfg.drain_s);
                *pp = i->next;
                ids->n_ids--;
                ids->n_dropped++;
                ident_free(ids, i);
                freed = true;
        }
        if (freed)
                give_room(ids);
        pump(ids);
}

void node_identities_tick(struct node_identities *ids)
{
        pump(ids);
        for (struct ident *i = ids->ids; i; i = i->next)
                if (i->started)
                        tls_store_tick(i->st);
}

static void on_sweep(struct loop *loop, struct loop_timer *t)
{
        struct node_identities *ids = t->data;
        if (loop_timer_arm(loop, &ids->sweep, NODE_ID_SWEEP_MS) < 0)
                log_error(COMP, 0, "cannot re-arm the identity sweep: out of memory");
        node_identities_sweep(ids, clock_mono_ms()); /* pump() may re-arm it sooner */
}

/* GET /pods: each pod's identity, {"spiffe_id","state"}, or null (its own
 * sidecar, or none held). */
static void on_render(void *ctx, const struct node_pod_info *pod, struct strbuf *sb)
{
        struct node_identities *ids = ctx;
        struct ident *i = pod->sidecar || !pod->sa ? NULL : find(ids, pod->ns, pod->sa);
        enum node_identity_state st =
            pod->sidecar || !pod->sa ? NODE_ID_NONE : node_identity_state(ids, pod->ns, pod->sa);
        if (!i && st != NODE_ID_SHED) {
                strbuf_append(sb, ",\"identity\":null");
                return;
        }
        strbuf_append(sb, ",\"identity\":{\"spiffe_id\":");
        if (i)
                strbuf_append_json_string(sb, i->spiffe);
        else
                strbuf_append(sb, "null");
        strbuf_appendf(sb, ",\"state\":\"%s\"}", node_identity_state_name(st));
}

struct node_identities *node_identities_new(const struct node_identities_config *cfg,
                                            struct loop *loop, char *err, size_t errlen)
{
        if (!cfg->make_source || !cfg->max_identities ||
            !spiffe_trust_domain_valid(cfg->trust_domain)) {
                snprintf(err, errlen,
                         "node identities: a certificate source, a bound and a valid trust "
                         "domain are needed");
                return NULL;
        }
        struct node_identities *ids = calloc(1, sizeof(*ids));
        if (!ids || !(ids->trust_domain = strdup(cfg->trust_domain))) {
                free(ids);
                snprintf(err, errlen, "node identities: out of memory");
                return NULL;
        }
        ids->cfg = *cfg;
        ids->cfg.trust_domain = ids->trust_domain;
        ids->loop = loop;
        ids->obs = (struct node_pods_observer){
            .ready = on_ready, .gone = on_gone, .render = on_render, .ctx = ids};
        loop_timer_init(&ids->sweep, on_sweep, ids);
        if (loop && loop_timer_arm(loop, &ids->sweep, NODE_ID_SWEEP_MS) < 0) {
                snprintf(err, errlen, "node identities: out of memory");
                node_identities_free(ids);
                return NULL;
        }
        return ids;
}

void node_identities_free(struct node_identities *ids)
{
        if (!ids)
                return;
        if (ids->loop)
                loop_timer_cancel(ids->loop, &ids->sweep);
        while (ids->ids) {
                struct ident *i = ids->ids;
                ids->ids = i->next;
                ident_free(ids, i);
        }
        free(ids->pods);
        free(ids->trust_domain);
        free(ids);
}

int node_identities_attach(struct node_identities *ids, struct node_pods *np)
{
        return node_pods_observe(np, &ids->obs);
}

const struct node_pods_observer *node_identities_observer(struct node_identities *ids)
{
        return &ids->obs;
}

struct snapshot_slot *node_identity_slot(struct node_identities *ids, const char *ns,
                                         const char *sa)
{
        struct ident *i = ids && ns && sa ? find(ids, ns, sa) : NULL;
        return i ? tls_store_slot(i->st) : NULL;
}

static enum node_identity_state ident_state(struct ident *i)
{
        if (i->pods == 0)
                return NODE_ID_DRAINING;
        struct tls_store_counts c;
        tls_store_counts(i->st, &c);
        return c.has_cert ? NODE_ID_READY : c.retrying ? NODE_ID_RETRYING : NODE_ID_FETCHING;
}

enum node_identity_state node_identity_state(struct node_identities *ids, const char *ns,
                                             const char *sa)
{
        struct ident *i = ids ? find(ids, ns, sa) : NULL;
        if (i)
                return ident_state(i);
        for (size_t k = 0; ids && k < ids->n_pods; k++)
                if (strcmp(ids->pods[k].ns, ns) == 0 && strcmp(ids->pods[k].sa, sa) == 0)
                        return NODE_ID_SHED;
        return NODE_ID_NONE;
}

uint32_t node_identity_pods(struct node_identities *ids, const char *ns, const char *sa)
{
        struct ident *i = ids ? find(ids, ns, sa) : NULL;
        return i ? i->pods : 0;
}

size_t node_identities_count(const struct node_identities *ids)
{
        return ids ? ids->n_ids : 0;
}

/* ---- reporting ------------------------------------------------------------------ */

struct totals {
        uint64_t failures, issued;
        size_t by_state[6];
};

static void totals(struct node_identities *ids, struct totals *t)
{
        memset(t, 0, sizeof(*t));
        t->failures = ids->gone_failures;
        t->issued = ids->gone_issued;
        for (struct ident *i = ids->ids; i; i = i->next) {
                struct tls_store_counts c;
                tls_store_counts(i->st, &c);
                t->failures += c.rotation_failures;
                t->issued += c.rotations + (c.has_cert ? 1 : 0);
                t->by_state[ident_state(i)]++;
        }
}

void node_identities_render(struct node_identities *ids, struct strbuf *sb)
{
        struct totals t;
        totals(ids, &t);
        size_t shed = 0;
        for (size_t k = 0; k < ids->n_pods; k++)
                shed += ids->pods[k].id == NULL;
        strbuf_appendf(sb,
                       "{\"max_identities\":%u,\"drain_s\":%u,\"held\":%zu,\"pods_without\":%zu,"
                       "\"counters\":{\"created\":%llu,\"dropped\":%llu,\"shed\":%llu,"
                       "\"errors\":%llu,\"issued\":%llu,\"fetch_failures\":%llu},"
                       "\"identities\":[",
                       ids->cfg.max_identities, ids->cfg.drain_s, ids->n_ids, shed,
                       (unsigned long long)ids->n_created, (unsigned long long)ids->n_dropped,
                       (unsigned long long)ids->n_shed, (unsigned long long)ids->n_errors,
                       (unsigned long long)t.issued, (unsigned long long)t.failures);
        uint64_t now = clock_mono_ms();
        for (struct ident *i = ids->ids; i; i = i->next) {
                strbuf_append(sb, "{\"spiffe_id\":");
                strbuf_append_json_string(sb, i->spiffe);
                strbuf_append(sb, ",\"namespace\":");
                strbuf_append_json_string(sb, i->ns);
                strbuf_append(sb, ",\"service_account\":");
                strbuf_append_json_string(sb, i->sa);
                strbuf_appendf(
                    sb, ",\"pods\":%u,\"state\":\"%s\",\"queued\":%s,\"drop_in_ms\":", i->pods,
                    node_identity_state_name(ident_state(i)), i->started ? "false" : "true");
                if (i->pods == 0)
                        strbuf_appendf(
                            sb, "%llu",
                            (unsigned long long)(i->drain_until > now ? i->drain_until - now : 0));
                else
                        strbuf_append(sb, "null");
                strbuf_append(sb, ",\"certificate_chain\":");
                tls_store_render_chain_pem(i->st, sb);
                strbuf_append(sb, ",\"store\":");
                tls_store_render_json(i->st, sb, NULL);
                strbuf_append(sb, i->next ? "}," : "}");
        }
        strbuf_append(sb, "]}");
}

void node_identities_render_metrics(struct node_identities *ids, struct strbuf *sb)
{
        struct totals t;
        totals(ids, &t);
        prom_family(sb, "shunt_node_identities", "gauge",
                    "Pod identities (namespace, service account) held by node mode, by state.");
        for (int s = NODE_ID_FETCHING; s <= NODE_ID_DRAINING; s++) {
                char l[48];
                snprintf(l, sizeof(l), "state=\"%s\"", node_identity_state_name(s));
                prom_sample_u64(sb, "shunt_node_identities", l, t.by_state[s]);
        }
        prom_family(sb, "shunt_node_identity_cert_expiry_seconds", "gauge",
                    "Seconds until the certificate of a pod identity expires.");
        struct strbuf l;
        strbuf_init(&l);
        int64_t now = time(NULL);
        for (struct ident *i = ids->ids; i; i = i->next) {
                struct tls_store_counts c;
                tls_store_counts(i->st, &c);
                if (!c.has_cert)
                        continue;
                strbuf_reset(&l);
                prom_label(&l, "namespace", i->ns);
                prom_label(&l, "service_account", i->sa);
                prom_sample(sb, "shunt_node_identity_cert_expiry_seconds", l.data,
                            (double)(c.not_after - now));
        }
        prom_family(sb, "shunt_node_identity_pods", "gauge",
                    "READY pods counted for a pod identity.");
        for (struct ident *i = ids->ids; i; i = i->next) {
                strbuf_reset(&l);
                prom_label(&l, "namespace", i->ns);
                prom_label(&l, "service_account", i->sa);
                prom_sample_u64(sb, "shunt_node_identity_pods", l.data, i->pods);
        }
        strbuf_free(&l);
        const struct {
                const char *name, *help;
                uint64_t v;
        } counters[] = {
            {"shunt_node_identity_certificates_total",
             "Certificates obtained for pod identities (first ones and renewals).", t.issued},
            {"shunt_node_identity_fetch_failures_total",
             "Failed requests for a pod identity's certificate (retried with backoff).",
             t.failures},
            {"shunt_node_identity_shed_total",
             "Pods left without an identity because node.max_pods identities were held.",
             ids->n_shed},
            {"shunt_node_identity_dropped_total",
             "Pod identities dropped after their last pod left and the drain ended.",
             ids->n_dropped},
        };
        for (size_t k = 0; k < sizeof(counters) / sizeof(counters[0]); k++) {
                prom_family(sb, counters[k].name, "counter", counters[k].help);
                prom_sample_u64(sb, counters[k].name, NULL, counters[k].v);
        }
}

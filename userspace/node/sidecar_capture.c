// SPDX-License-Identifier: Apache-2.0
/* Node-side capture for sidecar pods: the iptables capture `shuntd init`
 * would install, installed by the node agent in the pod's namespace. Why
 * and when: sidecar_capture.h. */
#include "node/sidecar_capture.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/snapshot.h"
#include "inject/inject.h"
#include "intercept/iptables.h"

#define COMP "node"

enum sc_state { SC_INSTALLED, SC_RETRYING, SC_FAILED };

/* What was done for one READY episode of a pod (its gen). */
struct sc_pod {
        uint64_t gen;
        enum sc_state state;
        uint64_t at_ms, next_ms;
        uint32_t attempts;
        uint16_t inbound_port, outbound_port;
        uint32_t uid;
        int netns_fd;   /* a dup, held while an attempt is still to come */
        char *settings; /* the annotation, held likewise */
        uint64_t netns_ino;
        char id[320]; /* namespace/name, for the log */
        char error[240];
};

struct node_sidecar_capture {
        struct node_sidecar_ops ops;
        struct loop *loop; /* NULL: no retries */
        struct loop_timer retry;
        struct sc_pod *pods;
        size_t n, cap;
        bool keep; /* exiting: nothing is removed */
        uint64_t installed, removed, failures, retries;
};

/* ---- the settings ------------------------------------------------------------- */

int node_sidecar_capture_config(const char *annotation, struct shunt_config **out, char *err,
                                size_t errlen)
{
        static const char *const keys[] = {INJECT_NODE_CAPTURE_KEYS};
        enum { NKEYS = sizeof(keys) / sizeof(keys[0]) };
        *out = NULL;
        cJSON *root = cJSON_Parse(annotation);
        if (!cJSON_IsObject(root)) {
                snprintf(err, errlen, "%s: not a JSON object", INJECT_NODE_CAPTURE_ANNOTATION);
                cJSON_Delete(root);
                return -EINVAL;
        }
        /* NAME=value strings for config_load, the only environment it sees:
         * nothing of the node agent's own. */
        char *env[NKEYS + 1] = {0};
        size_t n = 0;
        int rc = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, root)
        {
                size_t k = 0;
                while (k < NKEYS && strcmp(keys[k], e->string))
                        k++;
                if (k == NKEYS) {
                        snprintf(err, errlen,
                                 "%s: %.64s is not a capture setting (allowed: "
                                 "SHUNT_REDIRECT, SHUNT_PROXY_UID, SHUNT_PROXY_MARK, "
                                 "SIDECAR_INBOUND_PORT, SIDECAR_OUTBOUND_PORT, "
                                 "SHUNT_ADMIN_METRICS_PORT, SHUNT_ADMIN_METRICS_ADDRESS, "
                                 "SHUNT_EXCLUDE_*)",
                                 INJECT_NODE_CAPTURE_ANNOTATION, e->string);
                        rc = -EINVAL;
                        break;
                }
                if (!cJSON_IsString(e)) {
                        snprintf(err, errlen, "%s: %s: not a string",
                                 INJECT_NODE_CAPTURE_ANNOTATION, e->string);
                        rc = -EINVAL;
                        break;
                }
                if (!strcmp(e->string, "SHUNT_REDIRECT") && strcmp(e->valuestring, "iptables")) {
                        snprintf(err, errlen,
                                 "%s: SHUNT_REDIRECT '%.32s': the node installs iptables capture "
                                 "only",
                                 INJECT_NODE_CAPTURE_ANNOTATION, e->valuestring);
                        rc = -EINVAL;
                        break;
                }
                if (n == NKEYS || asprintf(&env[n], "%s=%s", e->string, e->valuestring) < 0) {
                        env[n] = NULL;
                        snprintf(err, errlen, "%s: a key given twice, or out of memory",
                                 INJECT_NODE_CAPTURE_ANNOTATION);
                        rc = n == NKEYS ? -EINVAL : -ENOMEM;
                        break;
                }
                n++;
        }
        cJSON_Delete(root);
        if (rc == 0) {
                char *const argv[] = {"shuntd-node-capture", NULL};
                char why[400];
                rc = config_load(1, argv, env, out, why, sizeof(why));
                if (rc < 0)
                        snprintf(err, errlen, "%s: %s", INJECT_NODE_CAPTURE_ANNOTATION, why);
        }
        for (size_t i = 0; i < n; i++)
                free(env[i]);
        return rc < 0 ? rc : 0;
}

/* ---- in the pod's namespace ------------------------------------------------------ */

/* Runs fn in the network namespace netns_fd on this thread, then comes back.
 * Not coming back would leave the loop's thread, and every socket it makes
 * from then on, in a pod's namespace: abort instead. */
static int in_netns(int netns_fd, int (*fn)(void *arg, char *err, size_t errlen), void *arg,
                    char *err, size_t errlen)
{
        int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0) {
                int rc = -errno;
                snprintf(err, errlen, "open /proc/thread-self/ns/net: %s", strerror(-rc));
                return rc;
        }
        if (setns(netns_fd, CLONE_NEWNET) < 0) {
                int rc = -errno;
                snprintf(err, errlen, "setns into the pod's network namespace: %s%s", strerror(-rc),
                         rc == -EPERM ? " (needs CAP_SYS_ADMIN)" : "");
                close(self);
                return rc;
        }
        int rc = fn(arg, err, errlen);
        if (setns(self, CLONE_NEWNET) < 0) {
                log_error(COMP, 0, "node: cannot return to the node's network namespace: %s",
                          strerror(errno));
                abort();
        }
        close(self);
        return rc;
}

static int do_install(void *arg, char *err, size_t errlen)
{
        return ipt_install(arg, err, errlen);
}

static int do_remove(void *arg, char *err, size_t errlen)
{
        (void)arg;
        return ipt_remove(err, errlen);
}

/* The same options as `shuntd init` with iptables: the proxy's uid skipped
 * (proxy_uid, else the default one a capture=init proxy runs as). */
static void init_options(struct ipt_options *o, const struct shunt_config *cfg)
{
        uint32_t uid = cfg->proxy_uid >= 0 ? (uint32_t)cfg->proxy_uid : SHUNT_PROXY_UID_DEFAULT;
        ipt_options_from_config(o, cfg, uid);
}

static int real_install(void *ctx, int netns_fd, const struct shunt_config *cfg, char *err,
                        size_t errlen)
{
        (void)ctx;
        struct ipt_options o;
        init_options(&o, cfg);
        return in_netns(netns_fd, do_install, &o, err, errlen);
}

static int real_remove(void *ctx, int netns_fd, char *err, size_t errlen)
{
        (void)ctx;
        return in_netns(netns_fd, do_remove, NULL, err, errlen);
}

/* ---- observer ---------------------------------------------------------------------- */

static bool wanted(const struct node_pod_info *pod)
{
        return pod->sidecar && pod->node_capture;
}

static struct sc_pod *find(struct node_sidecar_capture *sc, uint64_t gen)
{
        for (size_t i = 0; i < sc->n; i++) {
                if (sc->pods[i].gen == gen)
                        return &sc->pods[i];
        }
        return NULL;
}

/* Drops what is held for further attempts. */
static void settle(struct sc_pod *p)
{
        if (p->netns_fd >= 0)
                close(p->netns_fd);
        p->netns_fd = -1;
        free(p->settings);
        p->settings = NULL;
}

static void arm_retry(struct node_sidecar_capture *sc)
{
        if (!sc->loop)
                return;
        uint64_t now = loop_now_ms(sc->loop), next = UINT64_MAX;
        for (size_t i = 0; i < sc->n; i++) {
                if (sc->pods[i].state == SC_RETRYING && sc->pods[i].next_ms < next)
                        next = sc->pods[i].next_ms;
        }
        if (next != UINT64_MAX)
                loop_timer_arm(sc->loop, &sc->retry, next > now ? next - now : 0);
}

/* One attempt at p's capture. Bad settings are final; an install that fails
 * (iptables busy or missing, the namespace going) is tried again, at most
 * NODE_SIDECAR_ATTEMPTS times, NODE_SIDECAR_RETRY_MS apart and growing. */
static void attempt(struct node_sidecar_capture *sc, struct sc_pod *p)
{
        p->attempts++;
        struct shunt_config *cfg = NULL;
        int rc = node_sidecar_capture_config(p->settings, &cfg, p->error, sizeof(p->error));
        bool final = rc < 0;
        if (rc == 0) {
                struct ipt_options o;
                init_options(&o, cfg);
                p->inbound_port = o.inbound_port;
                p->outbound_port = o.outbound_port;
                p->uid = o.uid;
                rc = sc->ops.install(sc->ops.ctx, p->netns_fd, cfg, p->error, sizeof(p->error));
                snapshot_unref(&cfg->snap);
                final = rc < 0 && (!sc->loop || p->attempts >= NODE_SIDECAR_ATTEMPTS);
        }
        if (rc == 0) {
                p->state = SC_INSTALLED;
                p->error[0] = '\0';
                p->at_ms = clock_mono_ms();
                sc->installed++;
                settle(p);
                log_info(COMP, 0,
                         "node: pod %s: sidecar capture installed from the node in netns %llu "
                         "(inbound -> %u, outbound -> %u, uid %u skipped)",
                         p->id, (unsigned long long)p->netns_ino, p->inbound_port, p->outbound_port,
                         p->uid);
                return;
        }
        if (final) {
                p->state = SC_FAILED;
                sc->failures++;
                settle(p);
                log_warn(COMP, 0,
                         "node: pod %s: sidecar capture from the node failed (attempt %u): %s (its "
                         "traffic is not captured; fix the pod and recreate it)",
                         p->id, p->attempts, p->error);
                return;
        }
        p->state = SC_RETRYING;
        p->next_ms = loop_now_ms(sc->loop) + (uint64_t)NODE_SIDECAR_RETRY_MS * p->attempts;
        sc->retries++;
        log_warn(COMP, 0,
                 "node: pod %s: sidecar capture from the node failed (attempt %u of %u): %s; "
                 "trying again",
                 p->id, p->attempts, NODE_SIDECAR_ATTEMPTS, p->error);
}

static void on_retry(struct loop *loop, struct loop_timer *t)
{
        struct node_sidecar_capture *sc = t->data;
        uint64_t now = loop_now_ms(loop);
        for (size_t i = 0; i < sc->n; i++) {
                if (sc->pods[i].state == SC_RETRYING && sc->pods[i].next_ms <= now)
                        attempt(sc, &sc->pods[i]);
        }
        arm_retry(sc);
}

static void on_ready(void *ctx, const struct node_pod_info *pod)
{
        struct node_sidecar_capture *sc = ctx;
        if (!wanted(pod))
                return;
        if (sc->n == sc->cap) {
                size_t cap = sc->cap ? 2 * sc->cap : 16;
                struct sc_pod *p = realloc(sc->pods, cap * sizeof(*p));
                if (!p) {
                        sc->failures++;
                        log_error(COMP, 0,
                                  "node: pod %s/%s: sidecar capture not installed: out "
                                  "of memory",
                                  pod->ns, pod->name);
                        return;
                }
                sc->pods = p;
                sc->cap = cap;
        }
        struct sc_pod *p = &sc->pods[sc->n++];
        *p = (struct sc_pod){.gen = pod->gen,
                             .at_ms = clock_mono_ms(),
                             .netns_ino = pod->netns_ino,
                             .netns_fd = fcntl(pod->netns_fd, F_DUPFD_CLOEXEC, 0),
                             .settings = strdup(pod->node_capture)};
        snprintf(p->id, sizeof(p->id), "%.100s/%.200s", pod->ns, pod->name);
        if (p->netns_fd < 0 || !p->settings) {
                snprintf(p->error, sizeof(p->error), "out of memory or descriptors");
                p->state = SC_FAILED;
                sc->failures++;
                settle(p);
                log_error(COMP, 0, "node: pod %s: sidecar capture not installed: %s", p->id,
                          p->error);
                return;
        }
        attempt(sc, p);
        arm_retry(sc);
}

static void on_gone(void *ctx, const struct node_pod_info *pod)
{
        struct node_sidecar_capture *sc = ctx;
        struct sc_pod *p = find(sc, pod->gen);
        if (!p)
                return;
        if (p->state == SC_INSTALLED && !sc->keep) {
                char err[400] = "";
                if (sc->ops.remove(sc->ops.ctx, pod->netns_fd, err, sizeof(err)) < 0) {
                        log_warn(COMP, 0,
                                 "node: pod %s/%s: removing its sidecar capture failed: %s",
                                 pod->ns, pod->name, err);
                } else {
                        sc->removed++;
                        log_info(COMP, 0, "node: pod %s/%s: sidecar capture removed", pod->ns,
                                 pod->name);
                }
        }
        settle(p);
        *p = sc->pods[--sc->n];
}

/* GET /pods: "sidecar_capture": null (not one of ours), or its state. */
static void on_render(void *ctx, const struct node_pod_info *pod, struct strbuf *sb)
{
        struct node_sidecar_capture *sc = ctx;
        const struct sc_pod *p = pod->gen ? find(sc, pod->gen) : NULL;
        if (!wanted(pod)) {
                strbuf_append(sb, ",\"sidecar_capture\":null");
                return;
        }
        if (!p) {
                strbuf_append(sb, ",\"sidecar_capture\":{\"state\":\"waiting\"}");
                return;
        }
        if (p->state != SC_INSTALLED) {
                strbuf_appendf(sb,
                               ",\"sidecar_capture\":{\"state\":\"%s\",\"attempts\":%u,"
                               "\"error\":",
                               p->state == SC_FAILED ? "failed" : "retrying", p->attempts);
                strbuf_append_json_string(sb, p->error);
                strbuf_append(sb, "}");
                return;
        }
        strbuf_appendf(sb,
                       ",\"sidecar_capture\":{\"state\":\"installed\",\"mode\":\"iptables\","
                       "\"inbound_port\":%u,\"outbound_port\":%u,\"skipped_uid\":%u,"
                       "\"age_s\":%llu}",
                       p->inbound_port, p->outbound_port, p->uid,
                       (unsigned long long)((clock_mono_ms() - p->at_ms) / 1000));
}

/* ---- lifecycle ------------------------------------------------------------------------ */

struct node_sidecar_capture *node_sidecar_capture_new(const struct node_sidecar_ops *ops)
{
        struct node_sidecar_capture *sc = calloc(1, sizeof(*sc));
        if (!sc)
                return NULL;
        if (ops)
                sc->ops = *ops;
        else
                sc->ops = (struct node_sidecar_ops){.install = real_install, .remove = real_remove};
        return sc;
}

int node_sidecar_capture_attach(struct node_sidecar_capture *sc, struct node_pods *np,
                                struct loop *loop)
{
        sc->loop = loop;
        loop_timer_init(&sc->retry, on_retry, sc);
        struct node_pods_observer obs = {
            .ready = on_ready, .gone = on_gone, .render = on_render, .ctx = sc};
        return node_pods_observe(np, &obs);
}

void node_sidecar_capture_keep(struct node_sidecar_capture *sc)
{
        if (!sc)
                return;
        sc->keep = true;
        size_t n = 0;
        for (size_t i = 0; i < sc->n; i++)
                n += sc->pods[i].state == SC_INSTALLED;
        if (n)
                log_info(COMP, 0,
                         "node: exiting: the sidecar capture of %zu pod(s) stays installed", n);
}

void node_sidecar_capture_free(struct node_sidecar_capture *sc)
{
        if (!sc)
                return;
        if (sc->loop)
                loop_timer_cancel(sc->loop, &sc->retry);
        for (size_t i = 0; i < sc->n; i++)
                settle(&sc->pods[i]);
        free(sc->pods);
        free(sc);
}

size_t node_sidecar_capture_count(const struct node_sidecar_capture *sc)
{
        size_t n = 0;
        for (size_t i = 0; i < sc->n; i++)
                n += sc->pods[i].state == SC_INSTALLED;
        return n;
}

void node_sidecar_capture_render_metrics(const struct node_sidecar_capture *sc, struct strbuf *sb)
{
        prom_family(sb, "shunt_node_sidecar_captures", "gauge",
                    "Sidecar pods whose capture this node agent installed (sidecar.captureFrom "
                    "node).");
        prom_sample_u64(sb, "shunt_node_sidecar_captures", NULL, node_sidecar_capture_count(sc));
        prom_family(sb, "shunt_node_sidecar_capture_failures_total", "counter",
                    "Sidecar pods whose capture could not be installed from the node.");
        prom_sample_u64(sb, "shunt_node_sidecar_capture_failures_total", NULL, sc->failures);
        prom_family(sb, "shunt_node_sidecar_capture_retries_total", "counter",
                    "Failed installs of a sidecar pod's capture that are tried again.");
        prom_sample_u64(sb, "shunt_node_sidecar_capture_retries_total", NULL, sc->retries);
}

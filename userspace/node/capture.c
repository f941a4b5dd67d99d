// SPDX-License-Identifier: Apache-2.0
/* Node mode: each READY pod's listeners, capture and proxy; see capture.h. */
#include "node/capture.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "authz/authz.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/prom.h"
#include "core/snapshot.h"
#include "discovery/registry.h"
#include "intercept/bpfcap.h"
#include "intercept/iptables.h"
#include "intercept/origdst.h"
#include "proxy/handover.h"
#include "proxy/proxy.h"

#define CAP_ERR_MAX 320
enum cap_outbound {
        CAP_OUT_EBPF,
        CAP_OUT_IPTABLES,
};

struct cap_pod {
        struct node_capture *nc;
        char ns[64], name[256], uid[64], sa[256];
        uint64_t gen;
        int netns_fd; /* ours (a dup): the namespace outlives the pod's processes until gone */
        struct shunt_config *cfg; /* the proxy's: the daemon's with the per-pod bounds */
        struct proxy *proxy;
        struct bpfcap *bpf;
        bool rules;            /* iptables rules installed in the pod's namespace */
        bool adopted;          /* its listeners are the agent's taken over */
        bool accepting;        /* its listeners accept (pod_try_accept) */
        bool refusing;         /* ... and reset what they accept: not ready in time */
        uint64_t accept_by_ms; /* connects wait in the backlog until then at most */
        bool identity;         /* a slot of the pod's identity (else the empty one) */
        struct snapshot_slot *slot;
        char error[CAP_ERR_MAX]; /* why the pod is not captured, "" when it is */
        uint64_t ready_ms;
        struct cap_pod *next;
};

struct node_capture {
        struct shunt_config *cfg;
        node_capture_identity_fn identity;
        void *identity_ctx;
        const struct disc_snapshot *disc; /* the latest routes, for pods that come */
        struct authz *authz;
        int self_ns; /* the main thread's own network namespace */
        char pin_root[384];
        bool ebpf;                  /* outbound by eBPF (else iptables) */
        char ebpf_why[256];         /* redirect auto without eBPF: why */
        struct snapshot_slot empty; /* no identity: a slot without a certificate (fail closed) */
        struct cap_pod *pods;
        size_t n;
        bool stopped;  /* node_capture_stop: pods that become READY are not captured */
        bool keep;     /* node_capture_keep: the pods' capture outlives this process */
        bool draining; /* node_capture_stop_accepting: no listener of a pod any more */
        struct handover_pod *inherited; /* taking over: pods' listeners not adopted yet */
        size_t n_inherited;
        uint64_t adopted_pods; /* pods that adopted the listeners of the agent taken over */
        struct node_pods *np;  /* the table observed (node_pods_has_uid) */
        bool swept;            /* the stale pins of a previous agent were looked at */
        struct {
                uint64_t captured, failed, released, no_identity, swept;
        } c;
};

/* ---- namespaces ----------------------------------------------------------------- */

static int enter_netns(int fd)
{
        return setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
}

/* Back to the node's namespace. Failing that, the main thread would open
 * every later socket in a pod's namespace: nothing can continue. */
static void leave_netns(struct node_capture *nc)
{
        if (setns(nc->self_ns, CLONE_NEWNET) < 0) {
                log_error("node", 0, "cannot return to the node's network namespace: %s: exiting",
                          strerror(errno));
                abort();
        }
}

static int pod_worker_init(void *ctx)
{
        struct cap_pod *p = ctx;
        int rc = enter_netns(p->netns_fd);
        if (rc < 0)
                return rc;
        origdst_use_bpf_thread(p->bpf);
        return 0;
}

/* ---- per pod ------------------------------------------------------------------------ */

static struct shunt_config *pod_config(const struct shunt_config *base)
{
        struct shunt_config *c = config_clone(base);
        if (!c)
                return NULL;
        c->workers = (int)base->node_pod_workers;
        c->max_connections = base->node_pod_max_connections;
        return c;
}

static uint32_t pod_map_max(const struct shunt_config *cfg)
{
        /* An entry per connection in flight, plus connects not yet accepted. */
        uint64_t n = (uint64_t)cfg->node_pod_max_connections * 2;
        if (n < 256)
                n = 256;
        return n > SHUNT_MAX_SOCKETS ? SHUNT_MAX_SOCKETS : (uint32_t)n;
}

static int pod_pin_root(struct node_capture *nc, const struct cap_pod *p, char *out, size_t len)
{
        int n = snprintf(out, len, "%s/%s", nc->pin_root, p->uid);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static void pod_rules_remove(struct node_capture *nc, struct cap_pod *p)
{
        if (!p->rules)
                return;
        char err[256] = "";
        if (enter_netns(p->netns_fd) == 0) {
                if (ipt_remove(err, sizeof(err)) < 0)
                        log_warn("node", 0, "pod %s/%s: removing its capture rules: %s", p->ns,
                                 p->name, err);
                leave_netns(nc);
        }
        p->rules = false;
}

/* Releases what p holds; p itself stays listed (failed) or is freed by the
 * caller. The proxy first: its workers look accepted connections up in the
 * pod's capture maps (origdst_use_bpf_thread) until proxy_free has joined
 * them, so the capture may only be closed after it (closing it first freed
 * it under the workers: a use-after-free in bpfcap_lookup, worker segfaults
 * when a pod was deleted under traffic and on SIGTERM under load). A connect
 * the pod makes in between is refused (no listener), never relayed. */
static void pod_release(struct node_capture *nc, struct cap_pod *p)
{
        if (p->proxy) {
                proxy_stop_accepting(p->proxy);
                proxy_free(p->proxy); /* every connection closed, workers joined */
                p->proxy = NULL;
        }
        if (p->bpf) {
                bpfcap_close(p->bpf, !nc->keep);
                p->bpf = NULL;
        }
        if (nc->keep)
                p->rules = false; /* left in the pod's namespace for the next agent */
        pod_rules_remove(nc, p);
        if (p->cfg) {
                snapshot_unref(&p->cfg->snap);
                p->cfg = NULL;
        }
}

static void inherited_close(struct handover_pod *h)
{
        for (size_t i = 0; i < h->n; i++)
                if (h->ls[i].fd >= 0)
                        close(h->ls[i].fd);
        free(h->ls);
        h->ls = NULL;
        h->n = 0;
}

/* Whether socket fd is in the network namespace of inode ino. */
static bool socket_in_netns(int fd, uint64_t ino)
{
        int ns = ioctl(fd, SIOCGSKNS);
        struct stat st;
        bool in = ns >= 0 && fstat(ns, &st) == 0 && (uint64_t)st.st_ino == ino;
        if (ns >= 0)
                close(ns);
        return in;
}

/* The listeners the agent taken over had for pod uid, in the namespace of
 * inode ino; NULL when none (the pod's own are opened), closed when the
 * pod's sandbox changed since. */
static struct handover_pod *inherited_take(struct node_capture *nc, const char *uid, uint64_t ino)
{
        for (size_t i = 0; i < nc->n_inherited; i++) {
                struct handover_pod *h = &nc->inherited[i];
                if (!h->ls || strcmp(h->uid, uid))
                        continue;
                if (h->n && socket_in_netns(h->ls[0].fd, ino))
                        return h;
                inherited_close(h);
                return NULL;
        }
        return NULL;
}

/* Listeners (and rules) inside the pod's namespace, from the main thread. */
static int pod_listen(struct node_capture *nc, struct cap_pod *p, const struct node_pod_info *pod)
{
        char err[256];
        int rc = enter_netns(p->netns_fd);
        if (rc < 0) {
                snprintf(p->error, sizeof(p->error), "entering its network namespace: %s",
                         strerror(-rc));
                return rc;
        }
        struct handover_pod *h = inherited_take(nc, p->uid, pod->netns_ino);
        p->adopted = h != NULL;
        /* Inherited listeners and a pod's own alike accept only once the
         * pod can be served (pod_try_accept): their connects wait in the
         * backlog until then. */
        if (h) {
                p->proxy = proxy_new_adopt(p->cfg, h->ls, h->n, err, sizeof(err));
                inherited_close(h); /* what the proxy did not take */
        } else {
                p->proxy = proxy_new_gated(p->cfg, err, sizeof(err));
        }
        if (!p->proxy) {
                leave_netns(nc);
                snprintf(p->error, sizeof(p->error), "listeners: %s", err);
                return -EADDRINUSE;
        }
        struct ipt_options o;
        ipt_options_from_config(&o, p->cfg, IPT_UID_NONE);
        o.inbound_only = nc->ebpf;
        rc = ipt_install(&o, err, sizeof(err));
        leave_netns(nc);
        if (rc < 0) {
                snprintf(p->error, sizeof(p->error), "capture rules: %s", err);
                return rc;
        }
        p->rules = true;
        return 0;
}

static int pod_bpf(struct node_capture *nc, struct cap_pod *p, const struct node_pod_info *pod)
{
        char cgroup[NODE_PATH_MAX * 2], root[512], err[256];
        snprintf(cgroup, sizeof(cgroup), "%s/%s", pod->cgroup_root, pod->cgroup);
        if (pod_pin_root(nc, p, root, sizeof(root)) < 0) {
                snprintf(p->error, sizeof(p->error), "pin path too long");
                return -ENAMETOOLONG;
        }
        struct bpfcap_options o;
        bpfcap_options_from_config(&o, p->cfg, SHUNT_UID_NONE);
        o.pin_root = root;
        o.cgroup_path = cgroup;
        o.uid = SHUNT_UID_NONE; /* node shuntd's sockets are not in the pod's cgroup */
        o.shortcut = false;     /* its accepted sockets never pair (capture.h) */
        o.map_max = pod_map_max(p->cfg);
        /* Fail closed, always: the pins outlive the agent (node_capture_keep),
         * and while no agent listens in the pod a captured connect must be
         * refused, never sent where the application asked in plaintext. */
        o.fail_open = false;
        p->bpf = bpfcap_open(&o, err, sizeof(err));
        if (!p->bpf) {
                snprintf(p->error, sizeof(p->error), "eBPF capture: %s", err);
                return -EIO;
        }
        return 0;
}

static void pod_set_tls(struct node_capture *nc, struct cap_pod *p)
{
        if (!nc->identity || p->cfg->mtls_mode == MTLS_DISABLED)
                return;
        struct snapshot_slot *slot = nc->identity(nc->identity_ctx, p->ns, p->sa);
        p->identity = slot != NULL;
        if (!slot) {
                nc->c.no_identity++;
                log_warn("node", 0,
                         "pod %s/%s: no identity held for service account %s: its mesh "
                         "connections are refused (fail closed)",
                         p->ns, p->name, p->sa);
                slot = &nc->empty;
        }
        p->slot = slot;
        proxy_set_tls(p->proxy, slot);
}

static bool slot_has_certificate(struct snapshot_slot *slot);

/* A pod's listeners, its own or inherited from the agent taken over, accept
 * once its proxy knows the routes (the first discovery snapshot after the
 * start: before it every destination would look unknown and be passed
 * through in plaintext) and its identity holds a certificate (before it
 * every mesh connection would be refused by TLS); the connects queued in
 * them wait until then, in the backlog (LISTEN_BACKLOG at most), for at most
 * node.accept_timeout after the pod was captured. Past that they fail
 * closed: every connection accepted is reset and counted (not_ready) until
 * both are there. A pod without an identity held (mesh connections refused
 * by TLS anyway) or with mTLS off waits for the routes only. */
static void pod_try_accept(struct node_capture *nc, struct cap_pod *p)
{
        if (!p->proxy || nc->draining || (p->accepting && !p->refusing))
                return;
        bool routes = nc->disc && disc_snapshot_version(nc->disc) > 1;
        bool cert = !p->slot || !p->identity || slot_has_certificate(p->slot);
        bool ready = routes && cert;
        if (!ready && (p->refusing || clock_mono_ms() < p->accept_by_ms))
                return;
        proxy_set_refusing(p->proxy, !ready); /* before the first accept */
        if (!p->accepting && proxy_start_accepting(p->proxy) < 0)
                return; /* logged; tried again at the next tick */
        p->accepting = true;
        if (ready && p->refusing)
                log_info("node", 0,
                         "pod %s/%s: routes and certificate there: its connections "
                         "are served from now on",
                         p->ns, p->name);
        else if (!ready)
                log_warn("node", 0,
                         "pod %s/%s: no %s %u ms after it was captured: its connections are "
                         "refused (reset, counted not_ready) until it has them (fail closed)",
                         p->ns, p->name, !routes ? "routes from a discovery sync" : "certificate",
                         p->cfg->node_accept_timeout_ms);
        p->refusing = !ready;
}

static void on_ready(void *ctx, const struct node_pod_info *pod)
{
        struct node_capture *nc = ctx;
        if (nc->stopped || nc->draining || pod->sidecar)
                return; /* a pod with its own proxy is left alone */
        struct cap_pod *p = calloc(1, sizeof(*p));
        if (!p) {
                log_error("node", 0, "pod %s/%s: out of memory: not captured", pod->ns, pod->name);
                nc->c.failed++;
                return;
        }
        p->nc = nc;
        snprintf(p->ns, sizeof(p->ns), "%s", pod->ns);
        snprintf(p->name, sizeof(p->name), "%s", pod->name);
        snprintf(p->uid, sizeof(p->uid), "%s", pod->uid);
        snprintf(p->sa, sizeof(p->sa), "%s", pod->sa);
        p->gen = pod->gen;
        p->ready_ms = clock_mono_ms();
        p->netns_fd = fcntl(pod->netns_fd, F_DUPFD_CLOEXEC, 0);
        p->next = nc->pods;
        nc->pods = p;
        nc->n++;
        if (p->netns_fd < 0) {
                snprintf(p->error, sizeof(p->error), "netns fd: %s", strerror(errno));
                goto fail;
        }
        p->cfg = pod_config(nc->cfg);
        if (!p->cfg) {
                snprintf(p->error, sizeof(p->error), "out of memory");
                goto fail;
        }
        if (pod_listen(nc, p, pod) < 0 || (nc->ebpf && pod_bpf(nc, p, pod) < 0))
                goto fail;
        pod_set_tls(nc, p);
        if (nc->disc)
                proxy_set_registry(p->proxy, nc->disc);
        if (nc->authz)
                proxy_set_authz(p->proxy, nc->authz);
        proxy_set_worker_init(p->proxy, pod_worker_init, p);
        if (proxy_start(p->proxy) < 0) {
                snprintf(p->error, sizeof(p->error), "cannot start its workers");
                goto fail;
        }
        nc->c.captured++;
        nc->adopted_pods += p->adopted;
        p->accept_by_ms = clock_mono_ms() + p->cfg->node_accept_timeout_ms;
        pod_try_accept(nc, p);
        log_info("node", 0,
                 "pod %s/%s captured: outbound by %s, inbound rules and %s listeners in its "
                 "network namespace (netns inode %llu), identity %s, at most %u connections",
                 p->ns, p->name, nc->ebpf ? "eBPF on its cgroup" : "iptables",
                 p->adopted ? "the taken over agent's" : "its own",
                 (unsigned long long)pod->netns_ino,
                 p->slot == NULL ? "none (mTLS disabled)"
                 : p->identity   ? "held"
                                 : "missing (refused)",
                 p->cfg->max_connections);
        return;
fail:
        nc->c.failed++;
        log_error("node", 0, "pod %s/%s not captured: %s", p->ns, p->name, p->error);
        pod_release(nc, p);
}

static void pod_free(struct node_capture *nc, struct cap_pod *p)
{
        pod_release(nc, p);
        if (p->netns_fd >= 0)
                close(p->netns_fd);
        free(p);
}

static void on_gone(void *ctx, const struct node_pod_info *pod)
{
        struct node_capture *nc = ctx;
        for (struct cap_pod **pp = &nc->pods; *pp; pp = &(*pp)->next) {
                struct cap_pod *p = *pp;
                if (p->gen != pod->gen)
                        continue;
                *pp = p->next;
                nc->n--;
                nc->c.released++;
                bool captured = p->proxy != NULL;
                pod_free(nc, p);
                log_info("node", 0, "pod %s/%s gone: %s", pod->ns, pod->name,
                         captured ? "its capture, listeners and connections released"
                                  : "nothing was held");
                return;
        }
}

/* ---- the table ---------------------------------------------------------------------- */

struct node_capture *node_capture_new(const struct node_capture_config *c, char *err, size_t errlen)
{
        struct node_capture *nc = calloc(1, sizeof(*nc));
        if (!nc) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        nc->self_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (nc->self_ns < 0) {
                snprintf(err, errlen, "node: /proc/thread-self/ns/net: %s", strerror(errno));
                free(nc);
                return NULL;
        }
        snapshot_slot_init(&nc->empty);
        snapshot_ref(&c->cfg->snap);
        nc->cfg = c->cfg;
        nc->identity = c->identity;
        nc->identity_ctx = c->identity_ctx;
        const char *root = c->cfg->bpf_pin_root[0] ? c->cfg->bpf_pin_root : SHUNT_PIN_ROOT;
        snprintf(nc->pin_root, sizeof(nc->pin_root), "%s/pods", root);
        switch (c->cfg->redirect) {
        case REDIRECT_IPTABLES:
                nc->ebpf = false;
                break;
        case REDIRECT_EBPF:
        case REDIRECT_AUTO:
        case REDIRECT_OFF:
                nc->ebpf = bpfcap_probe_kernel(nc->ebpf_why, sizeof(nc->ebpf_why)) == 0;
                if (!nc->ebpf && c->cfg->redirect == REDIRECT_EBPF) {
                        snprintf(err, errlen, "node: eBPF capture unavailable: %s", nc->ebpf_why);
                        node_capture_free(nc);
                        return NULL;
                }
                if (!nc->ebpf)
                        log_warn("node", 0,
                                 "redirect auto: pods' outbound capture by iptables, eBPF "
                                 "unavailable: %s",
                                 nc->ebpf_why);
                break;
        }
        if (nc->ebpf) {
                /* <root>/pods/<uid>: both directories on the bpffs first. */
                char e[256];
                if (bpfcap_pin_dir(root, e, sizeof(e)) < 0 ||
                    bpfcap_pin_dir(nc->pin_root, e, sizeof(e)) < 0) {
                        snprintf(err, errlen, "node: %s", e);
                        node_capture_free(nc);
                        return NULL;
                }
        }
        if (c->n_inherited) {
                nc->inherited = calloc(c->n_inherited, sizeof(*nc->inherited));
                if (!nc->inherited) {
                        snprintf(err, errlen, "out of memory");
                        node_capture_free(nc);
                        return NULL;
                }
                for (size_t i = 0; i < c->n_inherited; i++) {
                        nc->inherited[i] = c->inherited[i]; /* the listeners move here */
                        c->inherited[i].ls = NULL;
                        c->inherited[i].n = 0;
                }
                nc->n_inherited = c->n_inherited;
        }
        return nc;
}

void node_capture_stop(struct node_capture *nc)
{
        if (!nc)
                return;
        nc->stopped = true;
        while (nc->pods) {
                struct cap_pod *p = nc->pods;
                nc->pods = p->next;
                nc->n--;
                pod_free(nc, p);
        }
}

void node_capture_keep(struct node_capture *nc)
{
        if (!nc)
                return;
        nc->keep = true;
        if (nc->n)
                log_info("node", 0,
                         "%zu pods' capture left in place (eBPF pins, rules in their "
                         "namespaces): their connects are refused until the next node agent "
                         "adopts them",
                         nc->n);
}

void node_capture_stop_accepting(struct node_capture *nc)
{
        if (!nc)
                return;
        nc->draining = true;
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                if (p->proxy)
                        proxy_stop_accepting(p->proxy);
}

int node_capture_offer_pod(struct node_capture *nc, size_t index, char *uid, size_t uidlen,
                           struct handover_listener *out, size_t max)
{
        struct cap_pod *p = nc ? nc->pods : NULL;
        for (size_t i = 0; p && i < index; i++)
                p = p->next;
        if (!p)
                return -ENOENT;
        snprintf(uid, uidlen, "%s", p->uid);
        return p->proxy && !nc->draining ? (int)proxy_listeners(p->proxy, out, max) : 0;
}

uint64_t node_capture_active(struct node_capture *nc)
{
        uint64_t n = 0;
        for (struct cap_pod *p = nc ? nc->pods : NULL; p; p = p->next)
                if (p->proxy)
                        n += proxy_active(p->proxy);
        return n;
}

void node_capture_free(struct node_capture *nc)
{
        if (!nc)
                return;
        node_capture_stop(nc);
        if (nc->disc)
                disc_snapshot_release(nc->disc);
        authz_unref(nc->authz);
        if (nc->cfg)
                snapshot_unref(&nc->cfg->snap);
        snapshot_slot_destroy(&nc->empty);
        for (size_t i = 0; i < nc->n_inherited; i++)
                inherited_close(&nc->inherited[i]);
        free(nc->inherited);
        if (nc->self_ns >= 0)
                close(nc->self_ns);
        if (nc->ebpf && !nc->keep)
                rmdir(nc->pin_root); /* empty once every pod is gone */
        free(nc);
}

/* After the first complete list of the node's pods: the pins a previous
 * agent left for pods that no longer exist (deleted while no agent ran;
 * their cgroup, and with it the links' attachment, is gone) are removed.
 * Not while pods are shed: a shed pod is real, its capture stays. */
static void on_synced(void *ctx, bool shed)
{
        struct node_capture *nc = ctx;
        for (size_t i = 0; i < nc->n_inherited; i++)
                if (nc->inherited[i].ls && !node_pods_has_uid(nc->np, nc->inherited[i].uid))
                        inherited_close(&nc->inherited[i]);
        if (nc->swept || !nc->ebpf || nc->stopped)
                return;
        if (shed) {
                log_warn("node", 0,
                         "pods shed (node.max_pods): stale pod pins are not looked for until "
                         "a complete list holds every pod");
                return;
        }
        nc->swept = true;
        DIR *dir = opendir(nc->pin_root);
        if (!dir)
                return;
        struct dirent *e;
        uint64_t n = 0;
        while ((e = readdir(dir)) != NULL) {
                char path[sizeof(nc->pin_root) + 300];
                struct stat st;
                if (e->d_name[0] == '.' || node_pods_has_uid(nc->np, e->d_name))
                        continue;
                int len = snprintf(path, sizeof(path), "%s/%s", nc->pin_root, e->d_name);
                if (len < 0 || (size_t)len >= sizeof(path) || lstat(path, &st) < 0 ||
                    !S_ISDIR(st.st_mode))
                        continue;
                bpfcap_remove_pins(path); /* the directory too */
                if (rmdir(path) < 0 && errno != ENOENT) {
                        log_warn("node", 0, "stale pins of pod uid %s: %s: %s", e->d_name, path,
                                 strerror(errno));
                        continue;
                }
                log_info("node", 0, "pod uid %s is not on this node any more: its pins removed",
                         e->d_name);
                n++;
        }
        closedir(dir);
        nc->c.swept += n;
}

int node_capture_attach(struct node_capture *nc, struct node_pods *np)
{
        nc->np = np;
        struct node_pods_observer o = {
            .ready = on_ready, .gone = on_gone, .synced = on_synced, .ctx = nc};
        return node_pods_observe(np, &o);
}

void node_capture_set_registry(struct node_capture *nc, const struct disc_snapshot *disc)
{
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                if (p->proxy)
                        proxy_set_registry(p->proxy, disc);
        const struct disc_snapshot *old = nc->disc;
        /* A disc_snapshot starts with its struct snapshot (registry.h). */
        snapshot_ref((struct snapshot *)(void *)(uintptr_t)disc);
        nc->disc = disc;
        if (old)
                disc_snapshot_release(old);
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                pod_try_accept(nc, p);
}

void node_capture_set_authz(struct node_capture *nc, struct authz *a)
{
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                if (p->proxy)
                        proxy_set_authz(p->proxy, a);
        authz_ref(a);
        authz_unref(nc->authz);
        nc->authz = a;
}

void node_capture_set_config(struct node_capture *nc, struct shunt_config *cfg)
{
        snapshot_ref(&cfg->snap);
        snapshot_unref(&nc->cfg->snap);
        nc->cfg = cfg;
        for (struct cap_pod *p = nc->pods; p; p = p->next) {
                if (!p->proxy)
                        continue;
                struct shunt_config *c = pod_config(cfg);
                if (!c) {
                        log_error("node", 0, "pod %s/%s: out of memory: keeps its configuration",
                                  p->ns, p->name);
                        continue;
                }
                proxy_set_config(p->proxy, c);
                snapshot_unref(&p->cfg->snap);
                p->cfg = c;
        }
}

void node_capture_tick(struct node_capture *nc)
{
        for (struct cap_pod *p = nc->pods; p; p = p->next) {
                if (p->proxy)
                        proxy_tick(p->proxy);
                pod_try_accept(nc, p);
        }
}

size_t node_capture_count(const struct node_capture *nc)
{
        return nc->n;
}

/* ---- reporting -------------------------------------------------------------------------- */

static bool slot_has_certificate(struct snapshot_slot *slot)
{
        uint64_t gen;
        struct snapshot *s = slot ? snapshot_acquire(slot, &gen) : NULL;
        if (s)
                snapshot_unref(s);
        return s != NULL;
}

static int pod_cmp(const void *a, const void *b)
{
        const struct cap_pod *x = *(const struct cap_pod *const *)a;
        const struct cap_pod *y = *(const struct cap_pod *const *)b;
        int r = strcmp(x->ns, y->ns);
        return r ? r : strcmp(x->name, y->name);
}

/* The pods sorted by namespace and name (NULL when there are none or no memory). */
static struct cap_pod **sorted(struct node_capture *nc)
{
        struct cap_pod **v = nc->n ? calloc(nc->n, sizeof(*v)) : NULL;
        if (!v)
                return NULL;
        size_t i = 0;
        for (struct cap_pod *p = nc->pods; p && i < nc->n; p = p->next)
                v[i++] = p;
        qsort(v, i, sizeof(*v), pod_cmp);
        return v;
}

void node_capture_render(struct node_capture *nc, struct strbuf *sb)
{
        strbuf_appendf(sb,
                       "{\"outbound\":\"%s\",\"pod_max_connections\":%u,\"pod_workers\":%u,"
                       "\"pods_captured\":%zu,\"counters\":{\"captured\":%llu,\"failed\":%llu,"
                       "\"released\":%llu,\"no_identity\":%llu,\"stale_pins_removed\":%llu},"
                       "\"pods\":[",
                       nc->ebpf ? "ebpf" : "iptables", nc->cfg->node_pod_max_connections,
                       nc->cfg->node_pod_workers, nc->n, (unsigned long long)nc->c.captured,
                       (unsigned long long)nc->c.failed, (unsigned long long)nc->c.released,
                       (unsigned long long)nc->c.no_identity, (unsigned long long)nc->c.swept);
        struct cap_pod **v = sorted(nc);
        for (size_t i = 0; v && i < nc->n; i++) {
                struct cap_pod *p = v[i];
                strbuf_append(sb, i ? ",{\"namespace\":" : "{\"namespace\":");
                strbuf_append_json_string(sb, p->ns);
                strbuf_append(sb, ",\"name\":");
                strbuf_append_json_string(sb, p->name);
                strbuf_append(sb, ",\"uid\":");
                strbuf_append_json_string(sb, p->uid);
                strbuf_append(sb, ",\"service_account\":");
                strbuf_append_json_string(sb, p->sa);
                strbuf_appendf(sb, ",\"generation\":%llu,\"capture\":\"%s\",\"error\":",
                               (unsigned long long)p->gen,
                               !p->proxy ? "failed"
                               : p->bpf  ? "ebpf"
                                         : "iptables");
                if (p->error[0])
                        strbuf_append_json_string(sb, p->error);
                else
                        strbuf_append(sb, "null");
                strbuf_appendf(sb, ",\"accepting\":%s,\"gate\":\"%s\",\"listeners_from\":\"%s\"",
                               p->accepting && !p->refusing ? "true" : "false",
                               !p->accepting ? "waiting"
                               : p->refusing ? "refusing"
                                             : "open",
                               p->adopted ? "takeover" : "own");
                strbuf_appendf(sb, ",\"identity\":\"%s\"",
                               !p->slot                        ? "off"
                               : !p->identity                  ? "none"
                               : slot_has_certificate(p->slot) ? "ready"
                                                               : "pending");
                if (p->proxy) {
                        struct proxy_totals t;
                        proxy_totals(p->proxy, &t);
                        strbuf_append(sb, ",\"listeners\":");
                        proxy_render_listeners(p->proxy, sb);
                        strbuf_appendf(
                            sb,
                            ",\"connections\":{\"active\":%llu,\"inbound\":%llu,\"outbound\":%llu,"
                            "\"limit\":%u},\"bytes\":{\"upstream\":%llu,\"downstream\":%llu},"
                            "\"refused\":{\"limit\":%llu,\"tls\":%llu,\"not_ready\":%llu,"
                            "\"other\":%llu},"
                            "\"memory\":{\"proxy_bytes\":%zu,\"bpf_bytes\":%zu}",
                            (unsigned long long)t.active, (unsigned long long)t.accepted_in,
                            (unsigned long long)t.accepted_out, p->cfg->max_connections,
                            (unsigned long long)t.bytes_upstream,
                            (unsigned long long)t.bytes_downstream,
                            (unsigned long long)t.refused_limit, (unsigned long long)t.refused_tls,
                            (unsigned long long)t.refused_not_ready,
                            (unsigned long long)t.refused_other, proxy_memory_bytes(p->proxy),
                            p->bpf ? bpfcap_memory_bytes(p->bpf) : (size_t)0);
                }
                strbuf_append(sb, "}");
        }
        free(v);
        strbuf_append(sb, "]}");
}

static void pod_labels(struct strbuf *l, const struct cap_pod *p, const char *k, const char *v)
{
        strbuf_reset(l);
        prom_label(l, "namespace", p->ns);
        prom_label(l, "pod", p->name);
        if (k)
                prom_label(l, k, v);
}

void node_capture_render_metrics(struct node_capture *nc, struct strbuf *sb)
{
        static const struct {
                const char *name, *type, *help;
        } fam[] = {
            {"shunt_node_pod_connections_total", "counter",
             "Connections accepted for a meshed pod, by direction."},
            {"shunt_node_pod_connections_active", "gauge", "A meshed pod's open connections."},
            {"shunt_node_pod_bytes_total", "counter",
             "Bytes relayed for a meshed pod: upstream (from its clients) and downstream."},
            {"shunt_node_pod_refused_total", "counter",
             "A meshed pod's connections refused: limit (node.pod_max_connections), tls (mTLS "
             "failed or no certificate: fail closed), not_ready (no routes or certificate within "
             "node.accept_timeout: fail closed), other (policy, no endpoint, loop)."},
            {"shunt_node_pod_memory_bytes", "gauge",
             "Memory held for a meshed pod: its proxy (state and buffers) and its BPF maps."},
        };
        struct cap_pod **v = sorted(nc);
        struct strbuf l;
        strbuf_init(&l);
        for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
                prom_family(sb, fam[f].name, fam[f].type, fam[f].help);
                for (size_t i = 0; v && i < nc->n; i++) {
                        struct cap_pod *p = v[i];
                        if (!p->proxy)
                                continue;
                        struct proxy_totals t;
                        proxy_totals(p->proxy, &t);
                        const char *n = fam[f].name;
                        switch (f) {
                        case 0:
                                pod_labels(&l, p, "direction", "inbound");
                                prom_sample_u64(sb, n, l.data, t.accepted_in);
                                pod_labels(&l, p, "direction", "outbound");
                                prom_sample_u64(sb, n, l.data, t.accepted_out);
                                break;
                        case 1:
                                pod_labels(&l, p, NULL, NULL);
                                prom_sample_u64(sb, n, l.data, t.active);
                                break;
                        case 2:
                                pod_labels(&l, p, "direction", "upstream");
                                prom_sample_u64(sb, n, l.data, t.bytes_upstream);
                                pod_labels(&l, p, "direction", "downstream");
                                prom_sample_u64(sb, n, l.data, t.bytes_downstream);
                                break;
                        case 3:
                                pod_labels(&l, p, "reason", "limit");
                                prom_sample_u64(sb, n, l.data, t.refused_limit);
                                pod_labels(&l, p, "reason", "tls");
                                prom_sample_u64(sb, n, l.data, t.refused_tls);
                                pod_labels(&l, p, "reason", "not_ready");
                                prom_sample_u64(sb, n, l.data, t.refused_not_ready);
                                pod_labels(&l, p, "reason", "other");
                                prom_sample_u64(sb, n, l.data, t.refused_other);
                                break;
                        default:
                                pod_labels(&l, p, "part", "proxy");
                                prom_sample_u64(sb, n, l.data, proxy_memory_bytes(p->proxy));
                                pod_labels(&l, p, "part", "bpf");
                                prom_sample_u64(sb, n, l.data,
                                                p->bpf ? bpfcap_memory_bytes(p->bpf) : 0);
                                break;
                        }
                }
        }
        strbuf_free(&l);
        free(v);
        prom_family(sb, "shunt_node_capture_pods", "gauge",
                    "Meshed pods of this node by capture state (captured, failed).");
        size_t failed = 0;
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                failed += p->proxy == NULL;
        prom_sample_u64(sb, "shunt_node_capture_pods", "state=\"captured\"", nc->n - failed);
        prom_sample_u64(sb, "shunt_node_capture_pods", "state=\"failed\"", failed);
        prom_family(sb, "shunt_node_capture_no_identity_total", "counter",
                    "Pods captured without an identity held: their mesh connections are refused.");
        prom_sample_u64(sb, "shunt_node_capture_no_identity_total", NULL, nc->c.no_identity);
}

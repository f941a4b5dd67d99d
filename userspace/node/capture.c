// SPDX-License-Identifier: Apache-2.0
/* Node mode: each READY pod's listeners, capture and proxy; see capture.h. */
#include "node/capture.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
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
#include "node/podsock.h"
#include "proxy/handover.h"
#include "proxy/proxy.h"

#define CAP_ERR_MAX 320
/* A pod's capture: made (setup) and undone (teardown) by the setup thread,
 * its proxy started and served on the main thread in between. */
enum cap_state {
        CAP_SETUP,     /* queued or being set up: the setup thread's fields are its */
        CAP_LIVE,      /* captured, its proxy started */
        CAP_FAILED,    /* not captured (error), nothing held */
        CAP_RELEASING, /* gone: queued or being torn down */
};

enum cap_job {
        JOB_SETUP,
        JOB_TEARDOWN,
};

struct cap_pod {
        struct node_capture *nc;
        char ns[64], name[256], uid[64], sa[256];
        uint64_t gen;
        int netns_fd; /* ours (a dup): the namespace outlives the pod's processes until gone */
        uint64_t netns_ino;
        char cgroup[NODE_PATH_MAX * 2]; /* the cgroup's full path */
        enum cap_state state;           /* main thread's */
        /* Written by the setup thread while the pod is queued (CAP_SETUP,
         * CAP_RELEASING): the main thread reads them only once it is LIVE or
         * FAILED, or after the thread is joined. */
        struct shunt_config *cfg; /* the proxy's: the daemon's with the per-pod bounds */
        struct proxy *proxy;
        struct bpfcap *bpf;
        bool rules;              /* iptables rules installed in the pod's namespace */
        bool adopted;            /* its listeners are the agent's taken over */
        bool listeners_in_pod;   /* made in the pod's cgroup (podsock.h): the shortcut pairs */
        struct handover_pod inh; /* the listeners taken over for it (moved here), until setup */
        bool keep_capture;       /* teardown: pins and rules stay (node_capture_keep) */
        int setup_rc;
        uint64_t cfg_gen; /* nc->cfg_gen when cfg was made */
        /* Under nc->mu. */
        enum cap_job job;
        bool cancelled;        /* gone while its setup ran: torn down right after */
        struct cap_pod *qnext; /* in the job queue or the done list */
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
        node_capture_authz_fn authz;
        void *authz_ctx;
        int self_ns; /* the main thread's own network namespace */
        char pin_root[384];
        bool ebpf;                  /* outbound by eBPF (else iptables) */
        char ebpf_why[256];         /* redirect auto without eBPF: why */
        struct snapshot_slot empty; /* no identity: a slot without a certificate (fail closed) */
        struct cap_pod *pods;
        size_t n;
        bool stopped;     /* node_capture_stop: pods that become READY are not captured */
        bool keep;        /* node_capture_keep: the pods' capture outlives this process */
        bool draining;    /* node_capture_stop_accepting: no listener of a pod any more */
        uint64_t cfg_gen; /* node_capture_set_config calls */
        /* The setup thread: pods' setup and teardown (setns, listeners, rules,
         * BPF load and attach: ~0.5 s each) off the main loop, one at a time
         * and in order (a pod replaced is torn down before its successor,
         * which reuses its pin directory, is set up). Finished jobs go to
         * the done list and the eventfd wakes the main loop. */
        pthread_mutex_t mu;
        pthread_cond_t cv;
        pthread_t thread;
        bool thread_started, quit;
        struct cap_pod *q_head, *q_tail, *running, *done;
        size_t queued; /* jobs queued or running */
        int efd;
        struct loop *loop;
        struct loop_io efd_io;
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

/* p's proxy when the main thread may use it (captured), else NULL. */
static struct proxy *live(const struct cap_pod *p)
{
        return p->state == CAP_LIVE ? p->proxy : NULL;
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
static void pod_release(struct node_capture *nc, struct cap_pod *p, bool keep)
{
        if (p->proxy) {
                proxy_stop_accepting(p->proxy);
                proxy_free(p->proxy); /* every connection closed, workers joined */
                p->proxy = NULL;
        }
        if (p->bpf) {
                bpfcap_close(p->bpf, !keep);
                p->bpf = NULL;
        }
        if (keep)
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

/* The listeners the agent taken over had for pod p, in its namespace, moved
 * into p->inh (left empty when none: the pod's own are opened); closed when
 * the pod's sandbox changed since. */
static void inherited_take(struct node_capture *nc, struct cap_pod *p)
{
        for (size_t i = 0; i < nc->n_inherited; i++) {
                struct handover_pod *h = &nc->inherited[i];
                if (!h->ls || strcmp(h->uid, p->uid))
                        continue;
                if (h->n && socket_in_netns(h->ls[0].fd, p->netns_ino)) {
                        p->inh = *h;
                        h->ls = NULL;
                        h->n = 0;
                } else {
                        inherited_close(h);
                }
                return;
        }
}

static bool pod_wants_shortcut(const struct node_capture *nc, const struct cap_pod *p)
{
        return nc->ebpf && p->cfg->bpf_shortcut == 1;
}

/* Listeners (and rules) inside the pod's namespace (setup thread). */
static int pod_listen(struct node_capture *nc, struct cap_pod *p)
{
        char err[256];
        int rc = enter_netns(p->netns_fd);
        if (rc < 0) {
                snprintf(p->error, sizeof(p->error), "entering its network namespace: %s",
                         strerror(-rc));
                return rc;
        }
        p->adopted = p->inh.ls != NULL;
        /* Inherited listeners and a pod's own alike accept only once the
         * pod can be served (pod_try_accept): their connects wait in the
         * backlog until then. */
        if (p->adopted) {
                p->proxy = proxy_new_adopt(p->cfg, p->inh.ls, p->inh.n, err, sizeof(err));
                inherited_close(&p->inh); /* what the proxy did not take */
        } else if (pod_wants_shortcut(nc, p)) {
                /* The shortcut pairs the application's socket with the
                 * accepted one only when the listener is the pod's (podsock.h). */
                struct podsock ps;
                char why[256];
                if (podsock_start(&ps, p->cgroup, why, sizeof(why)) == 0) {
                        p->proxy = proxy_new_gated(p->cfg, podsock_socket, &ps, err, sizeof(err));
                        p->listeners_in_pod = true;
                        podsock_stop(&ps);
                } else {
                        log_warn("node", 0,
                                 "pod %s/%s: its listeners are the agent's, no sk_msg shortcut "
                                 "for it: %s",
                                 p->ns, p->name, why);
                        p->proxy = proxy_new_gated(p->cfg, NULL, NULL, err, sizeof(err));
                }
        } else {
                p->proxy = proxy_new_gated(p->cfg, NULL, NULL, err, sizeof(err));
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

static int pod_bpf(struct node_capture *nc, struct cap_pod *p)
{
        char root[512], err[256];
        if (pod_pin_root(nc, p, root, sizeof(root)) < 0) {
                snprintf(p->error, sizeof(p->error), "pin path too long");
                return -ENAMETOOLONG;
        }
        struct bpfcap_options o;
        bpfcap_options_from_config(&o, p->cfg, SHUNT_UID_NONE);
        o.pin_root = root;
        o.cgroup_path = p->cgroup;
        o.uid = SHUNT_UID_NONE; /* node shuntd's sockets are not in the pod's cgroup */
        /* Pairs only when the listeners are the pod's (capture.h). */
        o.shortcut = pod_wants_shortcut(nc, p) && (p->listeners_in_pod || p->adopted);
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
        if (!live(p) || nc->draining || (p->accepting && !p->refusing))
                return;
        bool routes = nc->disc && disc_snapshot_version(nc->disc) > 1;
        bool cert = !p->slot || !p->identity || slot_has_certificate(p->slot);
        bool policies = !nc->authz || nc->authz(nc->authz_ctx, p->gen);
        bool ready = routes && cert && policies;
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
                         p->ns, p->name,
                         !routes ? "routes from a discovery sync"
                         : !cert ? "certificate"
                                 : "authorization policies (the first list)",
                         p->cfg->node_accept_timeout_ms);
        p->refusing = !ready;
}

/* The main thread's part once the setup thread has made the listeners,
 * rules and capture: identity, routes, policies, workers, accept gate. */
static void pod_start(struct node_capture *nc, struct cap_pod *p)
{
        if (nc->cfg_gen != p->cfg_gen) { /* reloaded while it was set up */
                struct shunt_config *c = pod_config(nc->cfg);
                if (c) {
                        proxy_set_config(p->proxy, c);
                        snapshot_unref(&p->cfg->snap);
                        p->cfg = c;
                }
        }
        pod_set_tls(nc, p);
        if (nc->disc)
                proxy_set_registry(p->proxy, nc->disc);
        struct authz *az = nc->authz ? nc->authz(nc->authz_ctx, p->gen) : NULL;
        if (az)
                proxy_set_authz(p->proxy, az);
        proxy_set_worker_init(p->proxy, pod_worker_init, p);
        p->state = CAP_LIVE;
        if (nc->draining) {
                /* Held (its capture stays, fail closed) but not served. */
                snprintf(p->error, sizeof(p->error), "not served: the agent is draining");
                return;
        }
        if (proxy_start(p->proxy) < 0) {
                snprintf(p->error, sizeof(p->error), "cannot start its workers");
                nc->c.failed++;
                log_error("node", 0, "pod %s/%s not captured: %s", p->ns, p->name, p->error);
                pod_release(nc, p, false);
                p->state = CAP_FAILED;
                return;
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
                 (unsigned long long)p->netns_ino,
                 p->slot == NULL ? "none (mTLS disabled)"
                 : p->identity   ? "held"
                                 : "missing (refused)",
                 p->cfg->max_connections);
}

/* Frees p (unlinked), releasing what it still holds: keep as pod_release. */
static void pod_free(struct node_capture *nc, struct cap_pod *p, bool keep)
{
        pod_release(nc, p, keep);
        inherited_close(&p->inh);
        if (p->netns_fd >= 0)
                close(p->netns_fd);
        free(p);
}

static void pod_unlink(struct node_capture *nc, struct cap_pod *p)
{
        for (struct cap_pod **pp = &nc->pods; *pp; pp = &(*pp)->next) {
                if (*pp == p) {
                        *pp = p->next;
                        nc->n--;
                        return;
                }
        }
}

/* ---- the setup thread ------------------------------------------------------------ */

static void pod_setup(struct node_capture *nc, struct cap_pod *p)
{
        p->setup_rc = pod_listen(nc, p);
        if (p->setup_rc == 0 && nc->ebpf)
                p->setup_rc = pod_bpf(nc, p);
        if (p->setup_rc < 0)
                pod_release(nc, p, false); /* what was made of it */
}

/* Main thread: a job the setup thread finished (or ran inline). */
static void job_done(struct node_capture *nc, struct cap_pod *p)
{
        if (p->job == JOB_TEARDOWN) {
                pod_unlink(nc, p);
                nc->c.released++;
                log_info("node", 0,
                         "pod %s/%s gone: its capture, listeners and connections released", p->ns,
                         p->name);
                pod_free(nc, p, p->keep_capture);
                return;
        }
        if (p->setup_rc < 0) {
                p->state = CAP_FAILED;
                nc->c.failed++;
                log_error("node", 0, "pod %s/%s not captured: %s", p->ns, p->name, p->error);
                return;
        }
        pod_start(nc, p);
}

static void *setup_main(void *arg)
{
        struct node_capture *nc = arg;
        pthread_setname_np(pthread_self(), "shunt-podsetup");
        pthread_mutex_lock(&nc->mu);
        for (;;) {
                while (!nc->q_head && !nc->quit)
                        pthread_cond_wait(&nc->cv, &nc->mu);
                if (nc->quit)
                        break;
                struct cap_pod *p = nc->q_head;
                nc->q_head = p->qnext;
                if (!nc->q_head)
                        nc->q_tail = NULL;
                nc->running = p;
                enum cap_job job = p->job;
                pthread_mutex_unlock(&nc->mu);
                if (job == JOB_SETUP)
                        pod_setup(nc, p);
                else
                        pod_release(nc, p, p->keep_capture);
                pthread_mutex_lock(&nc->mu);
                if (job == JOB_SETUP && p->cancelled) {
                        /* Gone while it was set up: undone before the next
                         * job, which may be its successor's setup. */
                        p->job = JOB_TEARDOWN;
                        pthread_mutex_unlock(&nc->mu);
                        pod_release(nc, p, p->keep_capture);
                        pthread_mutex_lock(&nc->mu);
                }
                nc->running = NULL;
                p->qnext = nc->done;
                nc->done = p;
                uint64_t one = 1;
                if (write(nc->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
                        log_warn("node", 0, "pod setup: eventfd: %s", strerror(errno));
        }
        pthread_mutex_unlock(&nc->mu);
        return NULL;
}

/* Main thread: runs the jobs the setup thread finished, in the order they
 * finished. */
static void jobs_collect(struct node_capture *nc)
{
        pthread_mutex_lock(&nc->mu);
        struct cap_pod *l = nc->done, *fifo = NULL;
        nc->done = NULL;
        pthread_mutex_unlock(&nc->mu);
        while (l) {
                struct cap_pod *next = l->qnext;
                l->qnext = fifo;
                fifo = l;
                l = next;
        }
        while (fifo) {
                struct cap_pod *next = fifo->qnext;
                nc->queued--;
                job_done(nc, fifo);
                fifo = next;
        }
}

static void on_jobs_done(struct loop *loop, struct loop_io *io, uint32_t events)
{
        (void)loop;
        (void)events;
        struct node_capture *nc = io->data;
        uint64_t n;
        if (read(nc->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
                log_warn("node", 0, "pod setup: eventfd: %s", strerror(errno));
        jobs_collect(nc);
}

/* Queues p's job for the setup thread (started at the first), or runs it
 * here when there is none. */
static void job_push(struct node_capture *nc, struct cap_pod *p, enum cap_job job)
{
        p->job = job;
        nc->queued++;
        if (!nc->thread_started && !nc->quit) {
                int rc = pthread_create(&nc->thread, NULL, setup_main, nc);
                nc->thread_started = rc == 0;
                if (rc)
                        log_warn("node", 0,
                                 "no pod setup thread (%s): pods are set up on the main loop",
                                 strerror(rc));
        }
        if (!nc->thread_started) {
                if (job == JOB_SETUP)
                        pod_setup(nc, p);
                else
                        pod_release(nc, p, p->keep_capture);
                nc->queued--;
                job_done(nc, p);
                return;
        }
        pthread_mutex_lock(&nc->mu);
        p->qnext = NULL;
        if (nc->q_tail)
                nc->q_tail->qnext = p;
        else
                nc->q_head = p;
        nc->q_tail = p;
        pthread_cond_signal(&nc->cv);
        pthread_mutex_unlock(&nc->mu);
}

/* Takes p out of the queue if its job has not started (under nc->mu). */
static bool job_unqueue(struct node_capture *nc, struct cap_pod *p)
{
        struct cap_pod *prev = NULL;
        for (struct cap_pod *q = nc->q_head; q; prev = q, q = q->qnext) {
                if (q != p)
                        continue;
                if (prev)
                        prev->qnext = q->qnext;
                else
                        nc->q_head = q->qnext;
                if (nc->q_tail == q)
                        nc->q_tail = prev;
                return true;
        }
        return false;
}

/* ---- pods ready and gone ----------------------------------------------------------- */

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
        snprintf(p->cgroup, sizeof(p->cgroup), "%s/%s", pod->cgroup_root, pod->cgroup);
        p->gen = pod->gen;
        p->netns_ino = pod->netns_ino;
        p->ready_ms = clock_mono_ms();
        p->state = CAP_SETUP;
        p->netns_fd = fcntl(pod->netns_fd, F_DUPFD_CLOEXEC, 0);
        p->next = nc->pods;
        nc->pods = p;
        nc->n++;
        if (p->netns_fd < 0) {
                snprintf(p->error, sizeof(p->error), "netns fd: %s", strerror(errno));
                goto fail;
        }
        p->cfg = pod_config(nc->cfg);
        p->cfg_gen = nc->cfg_gen;
        if (!p->cfg) {
                snprintf(p->error, sizeof(p->error), "out of memory");
                goto fail;
        }
        inherited_take(nc, p);
        job_push(nc, p, JOB_SETUP);
        return;
fail:
        p->state = CAP_FAILED;
        nc->c.failed++;
        log_error("node", 0, "pod %s/%s not captured: %s", p->ns, p->name, p->error);
        pod_release(nc, p, false);
}

static void on_gone(void *ctx, const struct node_pod_info *pod)
{
        struct node_capture *nc = ctx;
        struct cap_pod *p = nc->pods;
        while (p && (p->gen != pod->gen || p->state == CAP_RELEASING))
                p = p->next;
        if (!p)
                return;
        if (p->state == CAP_SETUP) {
                pthread_mutex_lock(&nc->mu);
                bool queued = job_unqueue(nc, p);
                if (!queued) {
                        p->keep_capture = nc->keep;
                        p->cancelled = true; /* being set up: torn down right after */
                }
                pthread_mutex_unlock(&nc->mu);
                if (queued) {
                        nc->queued--;
                        pod_unlink(nc, p);
                        nc->c.released++;
                        log_info("node", 0, "pod %s/%s gone before it was set up", p->ns, p->name);
                        pod_free(nc, p, false); /* nothing made yet */
                        return;
                }
                p->state = CAP_RELEASING;
                return;
        }
        if (p->state == CAP_FAILED) {
                pod_unlink(nc, p);
                nc->c.released++;
                log_info("node", 0, "pod %s/%s gone: nothing was held", p->ns, p->name);
                pod_free(nc, p, false);
                return;
        }
        /* Its proxy (every connection closed, workers joined), capture and
         * rules are released by the setup thread; listed as releasing until
         * then. */
        p->state = CAP_RELEASING;
        p->keep_capture = nc->keep;
        job_push(nc, p, JOB_TEARDOWN);
}

/* ---- the table ---------------------------------------------------------------------- */

struct node_capture *node_capture_new(const struct node_capture_config *c, char *err, size_t errlen)
{
        struct node_capture *nc = calloc(1, sizeof(*nc));
        if (!nc) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        pthread_mutex_init(&nc->mu, NULL);
        pthread_cond_init(&nc->cv, NULL);
        nc->self_ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        nc->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (nc->self_ns < 0 || nc->efd < 0) {
                snprintf(err, errlen, "node: %s: %s",
                         nc->self_ns < 0 ? "/proc/thread-self/ns/net" : "eventfd", strerror(errno));
                if (nc->self_ns >= 0)
                        close(nc->self_ns);
                pthread_mutex_destroy(&nc->mu);
                pthread_cond_destroy(&nc->cv);
                free(nc);
                return NULL;
        }
        if (c->loop) {
                loop_io_init(&nc->efd_io, nc->efd, on_jobs_done, nc);
                if (loop_io_add(c->loop, &nc->efd_io, EPOLLIN) == 0)
                        nc->loop = c->loop; /* else node_capture_tick collects */
        }
        snapshot_slot_init(&nc->empty);
        snapshot_ref(&c->cfg->snap);
        nc->cfg = c->cfg;
        nc->identity = c->identity;
        nc->identity_ctx = c->identity_ctx;
        nc->authz = c->authz;
        nc->authz_ctx = c->authz_ctx;
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
        if (nc->ebpf && c->cfg->bpf_shortcut == 1)
                origdst_use_ebpf_without_maps(); /* the relays read until EAGAIN */
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
        /* The setup thread ends after its current job; what it finished is
         * collected, what it did not start stays listed and is freed below
         * (a pod gone and not torn down yet with its own keep). */
        pthread_mutex_lock(&nc->mu);
        nc->quit = true;
        pthread_cond_signal(&nc->cv);
        pthread_mutex_unlock(&nc->mu);
        if (nc->thread_started) {
                pthread_join(nc->thread, NULL);
                nc->thread_started = false;
        }
        if (nc->loop && nc->efd >= 0)
                loop_io_del(nc->loop, &nc->efd_io);
        nc->loop = NULL;
        jobs_collect(nc);
        nc->q_head = nc->q_tail = NULL;
        nc->queued = 0;
        while (nc->pods) {
                struct cap_pod *p = nc->pods;
                nc->pods = p->next;
                nc->n--;
                pod_free(nc, p, p->state == CAP_RELEASING ? p->keep_capture : nc->keep);
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
                if (live(p))
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
        return live(p) && !nc->draining ? (int)proxy_listeners(p->proxy, out, max) : 0;
}

uint64_t node_capture_active(struct node_capture *nc)
{
        uint64_t n = 0;
        for (struct cap_pod *p = nc ? nc->pods : NULL; p; p = p->next)
                if (live(p))
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
        if (nc->cfg)
                snapshot_unref(&nc->cfg->snap);
        snapshot_slot_destroy(&nc->empty);
        for (size_t i = 0; i < nc->n_inherited; i++)
                inherited_close(&nc->inherited[i]);
        free(nc->inherited);
        if (nc->self_ns >= 0)
                close(nc->self_ns);
        close(nc->efd);
        pthread_mutex_destroy(&nc->mu);
        pthread_cond_destroy(&nc->cv);
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
                if (live(p))
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

void node_capture_pod_authz_changed(struct node_capture *nc, uint64_t gen)
{
        for (struct cap_pod *p = nc->pods; p; p = p->next) {
                if (p->gen != gen || !live(p))
                        continue;
                struct authz *a = nc->authz ? nc->authz(nc->authz_ctx, gen) : NULL;
                if (a)
                        proxy_set_authz(p->proxy, a);
                pod_try_accept(nc, p);
        }
}

void node_capture_set_config(struct node_capture *nc, struct shunt_config *cfg)
{
        snapshot_ref(&cfg->snap);
        snapshot_unref(&nc->cfg->snap);
        nc->cfg = cfg;
        nc->cfg_gen++; /* pods being set up take it at pod_start */
        for (struct cap_pod *p = nc->pods; p; p = p->next) {
                if (!live(p))
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
        jobs_collect(nc); /* without a loop: finished setups are taken here */
        for (struct cap_pod *p = nc->pods; p; p = p->next) {
                if (live(p))
                        proxy_tick(p->proxy);
                pod_try_accept(nc, p);
        }
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
                       "\"pods_captured\":%zu,\"setup_jobs\":%zu,\"counters\":{\"captured\":%llu,"
                       "\"failed\":%llu,\"released\":%llu,\"no_identity\":%llu,"
                       "\"stale_pins_removed\":%llu},\"pods\":[",
                       nc->ebpf ? "ebpf" : "iptables", nc->cfg->node_pod_max_connections,
                       nc->cfg->node_pod_workers, nc->n, nc->queued,
                       (unsigned long long)nc->c.captured, (unsigned long long)nc->c.failed,
                       (unsigned long long)nc->c.released, (unsigned long long)nc->c.no_identity,
                       (unsigned long long)nc->c.swept);
        struct cap_pod **v = sorted(nc);
        for (size_t i = 0; v && i < nc->n; i++) {
                struct cap_pod *p = v[i];
                node_pod_render_head(sb, i == 0, p->ns, p->name, p->uid, p->sa);
                /* What the setup thread writes is read once it is done. */
                bool settled = p->state == CAP_LIVE || p->state == CAP_FAILED;
                strbuf_appendf(sb, ",\"generation\":%llu,\"capture\":\"%s\",\"error\":",
                               (unsigned long long)p->gen,
                               p->state == CAP_SETUP       ? "setting_up"
                               : p->state == CAP_RELEASING ? "releasing"
                               : !p->proxy                 ? "failed"
                               : p->bpf                    ? "ebpf"
                                                           : "iptables");
                if (settled && p->error[0])
                        strbuf_append_json_string(sb, p->error);
                else
                        strbuf_append(sb, "null");
                strbuf_appendf(sb, ",\"accepting\":%s,\"gate\":\"%s\",\"listeners_from\":\"%s\"",
                               p->accepting && !p->refusing ? "true" : "false",
                               !p->accepting ? "waiting"
                               : p->refusing ? "refusing"
                                             : "open",
                               settled && p->adopted ? "takeover" : "own");
                strbuf_appendf(sb, ",\"identity\":\"%s\"",
                               !p->slot                        ? "off"
                               : !p->identity                  ? "none"
                               : slot_has_certificate(p->slot) ? "ready"
                                                               : "pending");
                if (live(p)) {
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
                        struct shunt_counters k = {0};
                        if (p->bpf)
                                bpfcap_counters(p->bpf, &k);
                        strbuf_appendf(sb,
                                       ",\"shortcut\":{\"listeners_in_pod\":%s,\"paired\":%llu,"
                                       "\"msgs\":%llu,\"bytes\":%llu}",
                                       p->listeners_in_pod ? "true" : "false",
                                       (unsigned long long)k.sockhash_added,
                                       (unsigned long long)k.shortcut_msgs,
                                       (unsigned long long)k.shortcut_bytes);
                }
                strbuf_append(sb, "}");
        }
        free(v);
        strbuf_append(sb, "]}");
}

/* One sample of family n for pod p, labelled k=v too unless k is NULL (l: scratch). */
static void pod_sample(struct strbuf *sb, const char *n, struct strbuf *l, const struct cap_pod *p,
                       const char *k, const char *v, uint64_t x)
{
        strbuf_reset(l);
        prom_label(l, "namespace", p->ns);
        prom_label(l, "pod", p->name);
        if (k)
                prom_label(l, k, v);
        prom_sample_u64(sb, n, l->data, x);
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
                        if (!live(p))
                                continue;
                        struct proxy_totals t;
                        proxy_totals(p->proxy, &t);
                        const char *n = fam[f].name;
                        switch (f) {
                        case 0:
                                pod_sample(sb, n, &l, p, "direction", "inbound", t.accepted_in);
                                pod_sample(sb, n, &l, p, "direction", "outbound", t.accepted_out);
                                break;
                        case 1:
                                pod_sample(sb, n, &l, p, NULL, NULL, t.active);
                                break;
                        case 2:
                                pod_sample(sb, n, &l, p, "direction", "upstream", t.bytes_upstream);
                                pod_sample(sb, n, &l, p, "direction", "downstream",
                                           t.bytes_downstream);
                                break;
                        case 3:
                                pod_sample(sb, n, &l, p, "reason", "limit", t.refused_limit);
                                pod_sample(sb, n, &l, p, "reason", "tls", t.refused_tls);
                                pod_sample(sb, n, &l, p, "reason", "not_ready",
                                           t.refused_not_ready);
                                pod_sample(sb, n, &l, p, "reason", "other", t.refused_other);
                                break;
                        default:
                                pod_sample(sb, n, &l, p, "part", "proxy",
                                           proxy_memory_bytes(p->proxy));
                                pod_sample(sb, n, &l, p, "part", "bpf",
                                           p->bpf ? bpfcap_memory_bytes(p->bpf) : 0);
                                break;
                        }
                }
        }
        strbuf_free(&l);
        free(v);
        prom_family(sb, "shunt_node_capture_pods", "gauge",
                    "Meshed pods of this node by capture state (setting_up, captured, failed, "
                    "releasing).");
        static const char *const state_labels[] = {
            [CAP_SETUP] = "state=\"setting_up\"",
            [CAP_LIVE] = "state=\"captured\"",
            [CAP_FAILED] = "state=\"failed\"",
            [CAP_RELEASING] = "state=\"releasing\"",
        };
        size_t by_state[4] = {0};
        for (struct cap_pod *p = nc->pods; p; p = p->next)
                by_state[p->state]++;
        for (size_t i = 0; i < 4; i++)
                prom_sample_u64(sb, "shunt_node_capture_pods", state_labels[i], by_state[i]);
        prom_family(sb, "shunt_node_capture_no_identity_total", "counter",
                    "Pods captured without an identity held: their mesh connections are refused.");
        prom_sample_u64(sb, "shunt_node_capture_no_identity_total", NULL, nc->c.no_identity);
}

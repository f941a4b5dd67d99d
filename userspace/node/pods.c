// SPDX-License-Identifier: Apache-2.0
/* The node's pod table: Pod objects of this node from the kubernetes
 * backend's watch, each resolved to its cgroup v2 directory and a held
 * network namespace fd. Why a watch and how its races are handled: pods.h. */
#include "node/pods.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/mount.h"
#include "core/prom.h"

#define COMP "node"

/* cgroup root + a pod directory + a container directory + a file name */
#define DIR_MAX (4 * NODE_PATH_MAX)

#define FIELD(o, k) cJSON_GetObjectItemCaseSensitive(o, k)

struct pod {
        char ns[DISC_NAME_MAX];
        char name[K8S_MAX_OBJECT_NAME];
        char uid[K8S_MAX_UID];
        char sa[K8S_MAX_OBJECT_NAME];
        char qos[16];
        char ips[K8S_MAX_POD_IPS][48];
        uint32_t n_ips;
        enum node_pod_state state;
        char cgroup[NODE_PATH_MAX]; /* relative to the cgroup v2 mount, "" until found */
        int netns_fd;               /* -1 until READY */
        uint64_t netns_ino;
        long pid; /* the process the namespace was taken from */
        uint64_t since_ms, next_ms;
        uint32_t attempts;
        uint64_t gen; /* of the current READY episode (node_pod_info.gen) */
        bool seen;    /* in the list in progress */
        bool sidecar;
        char *node_capture; /* owned; NULL when the pod has no such annotation */
        char *labels;       /* owned: metadata.labels as compact JSON, NULL when none */
        char why[160];
};

struct node_pods {
        char node[K8S_MAX_OBJECT_NAME];
        char field_selector[K8S_MAX_OBJECT_NAME + 16];
        char cgroup_root[NODE_PATH_MAX];
        char proc_root[NODE_PATH_MAX];
        uint32_t max_pods, resolve_ms;
        struct pod *pods;
        size_t n, cap;
        bool listing, shedding;
        struct loop *loop;
        struct loop_timer tick;
        struct k8s_object_sink sink;
        struct node_pods_observer obs[NODE_MAX_OBSERVERS];
        size_t n_obs;
        uint64_t gen;
        struct {
                uint64_t added, removed, resolved, retries, failed, netns_changed, uid_replaced,
                    ips_changed, shed, bad;
        } c;
};

static const char *const state_names[] = {"pending", "ready", "failed", "host-network"};

const char *node_pod_state_name(enum node_pod_state s)
{
        return (unsigned)s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "?";
}

/* ---- kubelet's layout ---------------------------------------------------- */

static bool plain_uid(const char *uid)
{
        size_t n = strlen(uid);
        if (!n || n >= K8S_MAX_UID)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (!isxdigit((unsigned char)uid[i]) && uid[i] != '-')
                        return false;
        }
        return true;
}

int node_cgroup_candidates(const char *uid, const char *qos, char out[][NODE_PATH_MAX], int max)
{
        if (!uid || !plain_uid(uid))
                return -EINVAL;
        /* The systemd driver escapes '-' in unit names as '_'. */
        char us[K8S_MAX_UID];
        size_t i = 0;
        for (; uid[i]; i++)
                us[i] = uid[i] == '-' ? '_' : uid[i];
        us[i] = '\0';
        /* Guaranteed pods sit directly under kubepods, the others under
         * their class's cgroup. */
        static const struct {
                const char *qos, *sd, *fs;
        } cls[] = {{"Guaranteed", NULL, NULL},
                   {"Burstable", "burstable", "burstable"},
                   {"BestEffort", "besteffort", "besteffort"}};
        const size_t ncls = sizeof(cls) / sizeof(cls[0]);
        bool known = false;
        for (size_t k = 0; qos && k < ncls; k++)
                known |= strcmp(qos, cls[k].qos) == 0;
        int n = 0;
        for (int driver = 0; driver < 2; driver++) {
                for (size_t k = 0; k < ncls && n < max; k++) {
                        if (known && strcmp(qos, cls[k].qos) != 0)
                                continue;
                        if (driver == 0 && !cls[k].sd)
                                snprintf(out[n++], NODE_PATH_MAX,
                                         "kubepods.slice/kubepods-pod%s.slice", us);
                        else if (driver == 0)
                                snprintf(out[n++], NODE_PATH_MAX,
                                         "kubepods.slice/kubepods-%s.slice/kubepods-%s-pod%s.slice",
                                         cls[k].sd, cls[k].sd, us);
                        else if (!cls[k].fs)
                                snprintf(out[n++], NODE_PATH_MAX, "kubepods/pod%s", uid);
                        else
                                snprintf(out[n++], NODE_PATH_MAX, "kubepods/%s/pod%s", cls[k].fs,
                                         uid);
                }
        }
        return n;
}

/* ---- the table ------------------------------------------------------------ */

static uint64_t now_ms(const struct node_pods *np)
{
        return np->loop ? loop_now_ms(np->loop) : clock_mono_ms();
}

static struct pod *find(struct node_pods *np, const char *ns, const char *name)
{
        for (size_t i = 0; i < np->n; i++) {
                if (!strcmp(np->pods[i].ns, ns) && !strcmp(np->pods[i].name, name))
                        return &np->pods[i];
        }
        return NULL;
}

/* rel is a candidate of node_cgroup_candidates: it fits. */
static void set_cgroup(struct pod *p, const char *rel)
{
        size_t n = strnlen(rel, sizeof(p->cgroup) - 1);
        memcpy(p->cgroup, rel, n);
        p->cgroup[n] = '\0';
}

static void info_of(const struct node_pods *np, const struct pod *p, struct node_pod_info *i)
{
        *i = (struct node_pod_info){.ns = p->ns,
                                    .name = p->name,
                                    .uid = p->uid,
                                    .sa = p->sa,
                                    .ips = p->ips,
                                    .n_ips = p->n_ips,
                                    .cgroup_root = np->cgroup_root,
                                    .cgroup = p->cgroup,
                                    .netns_fd = p->netns_fd,
                                    .netns_ino = p->netns_ino,
                                    .gen = p->state == NODE_POD_READY ? p->gen : 0,
                                    .sidecar = p->sidecar,
                                    .node_capture = p->node_capture,
                                    .labels = p->labels};
}

static void tell(const struct node_pods *np, const struct pod *p, bool ready)
{
        struct node_pod_info i;
        info_of(np, p, &i);
        for (size_t k = 0; k < np->n_obs; k++) {
                const struct node_pods_observer *o = &np->obs[k];
                if (ready ? o->ready != NULL : o->gone != NULL)
                        (ready ? o->ready : o->gone)(o->ctx, &i);
        }
}

/* The pod is READY from now on (a new episode). */
static void become_ready(struct node_pods *np, struct pod *p)
{
        p->state = NODE_POD_READY;
        p->gen = ++np->gen;
        tell(np, p, true);
}

/* Drops what is held for p; observers are told first if it was READY. */
static void release(struct node_pods *np, struct pod *p)
{
        if (p->state == NODE_POD_READY && p->netns_fd >= 0)
                tell(np, p, false);
        if (p->netns_fd >= 0)
                close(p->netns_fd);
        p->netns_fd = -1;
        p->netns_ino = 0;
        p->pid = 0;
        p->cgroup[0] = '\0';
}

static void remove_at(struct node_pods *np, size_t i, const char *why)
{
        struct pod *p = &np->pods[i];
        log_info(COMP, 0, "node: pod %s/%s (%s) leaves the table: %s", p->ns, p->name, p->uid, why);
        release(np, p);
        free(p->node_capture);
        free(p->labels);
        np->pods[i] = np->pods[--np->n];
        np->c.removed++;
        np->shedding = false; /* room again: a new episode is logged */
}

/* The first process of dir's cgroup.procs, 0 if none. */
static long first_pid(const char *dir)
{
        char path[DIR_MAX + 16];
        if (snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= (int)sizeof(path))
                return 0;
        FILE *f = fopen(path, "re");
        long pid = 0;
        if (f) {
                if (fscanf(f, "%ld", &pid) != 1)
                        pid = 0;
                fclose(f);
        }
        return pid;
}

/* Opens pid's network namespace if pid is still in the cgroup rel (a pid
 * read from cgroup.procs may have exited and been reused since: the
 * /proc/<pid> directory fd pins that one process, and its cgroup file is
 * read through it). fd or -errno. */
static int open_netns(const struct node_pods *np, long pid, const char *rel, uint64_t *ino)
{
        char path[NODE_PATH_MAX + 32];
        snprintf(path, sizeof(path), "%s/%ld", np->proc_root, pid);
        int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        int fd = openat(dfd, "ns/net", O_RDONLY | O_CLOEXEC);
        int rc = fd < 0 ? -errno : 0;
        int cfd = rc ? -1 : openat(dfd, "cgroup", O_RDONLY | O_CLOEXEC);
        char buf[2048];
        ssize_t n = cfd < 0 ? -1 : read(cfd, buf, sizeof(buf) - 1);
        if (cfd >= 0)
                close(cfd);
        close(dfd);
        if (rc)
                return rc;
        /* cgroup v2: one line "0::/<path>" */
        size_t rl = strlen(rel);
        char *at = n > 0 ? (buf[n] = '\0', strstr(buf, "0::/")) : NULL;
        if (!at || strncmp(at + 4, rel, rl) != 0 ||
            (at[4 + rl] != '\n' && at[4 + rl] != '/' && at[4 + rl] != '\0')) {
                close(fd);
                return -ESRCH; /* gone, or another process now */
        }
        struct stat st;
        if (fstat(fd, &st) < 0) {
                rc = -errno;
                close(fd);
                return rc;
        }
        *ino = (uint64_t)st.st_ino;
        return fd;
}

/* A process of the pod: in the pod's cgroup itself, else in one of its
 * containers' cgroups (where kubelet's runtimes put them). */
static int pod_netns(const struct node_pods *np, const char *rel, long *pid, uint64_t *ino)
{
        char dir[DIR_MAX];
        if (snprintf(dir, sizeof(dir), "%s/%s", np->cgroup_root, rel) >= (int)sizeof(dir))
                return -ENAMETOOLONG;
        long p = first_pid(dir);
        if (p > 0) {
                int fd = open_netns(np, p, rel, ino);
                if (fd >= 0) {
                        *pid = p;
                        return fd;
                }
        }
        DIR *d = opendir(dir);
        if (!d)
                return -errno;
        int rc = -ESRCH, seen = 0;
        struct dirent *e;
        while (rc < 0 && seen < NODE_MAX_CHILD_DIRS && (e = readdir(d))) {
                if (e->d_type != DT_DIR || e->d_name[0] == '.')
                        continue;
                seen++;
                char sub[DIR_MAX], subrel[DIR_MAX];
                if (snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name) >= (int)sizeof(sub) ||
                    snprintf(subrel, sizeof(subrel), "%s/%s", rel, e->d_name) >=
                        (int)sizeof(subrel))
                        continue;
                p = first_pid(sub);
                if (p > 0 && (rc = open_netns(np, p, subrel, ino)) >= 0)
                        *pid = p;
        }
        closedir(d);
        return rc;
}

/* One attempt at a PENDING pod (or a check of a READY one). */
static void resolve_one(struct node_pods *np, struct pod *p, uint64_t now)
{
        char cands[NODE_CGROUP_LAYOUTS][NODE_PATH_MAX];
        int nc = node_cgroup_candidates(p->uid, p->qos, cands, NODE_CGROUP_LAYOUTS);
        const char *rel = NULL;
        for (int i = 0; i < nc && !rel; i++) {
                char dir[DIR_MAX];
                struct stat st;
                if (snprintf(dir, sizeof(dir), "%s/%s", np->cgroup_root, cands[i]) <
                        (int)sizeof(dir) &&
                    stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
                        rel = cands[i];
        }
        long pid = 0;
        uint64_t ino = 0;
        int fd = rel ? pod_netns(np, rel, &pid, &ino) : -ENOENT;
        if (p->state == NODE_POD_READY) {
                /* Kept as it is when no process is left (the pod is going;
                 * DELETED will come): the fd keeps the namespace. */
                if (fd >= 0 && ino != p->netns_ino) {
                        log_info(COMP, 0,
                                 "node: pod %s/%s: network namespace changed (%llu -> %llu: a "
                                 "new sandbox)",
                                 p->ns, p->name, (unsigned long long)p->netns_ino,
                                 (unsigned long long)ino);
                        tell(np, p, false);
                        close(p->netns_fd);
                        p->netns_fd = fd;
                        p->netns_ino = ino;
                        p->pid = pid;
                        set_cgroup(p, rel);
                        np->c.netns_changed++;
                        become_ready(np, p);
                } else if (fd >= 0) {
                        close(fd);
                }
                p->next_ms = now + NODE_REVALIDATE_MS;
                return;
        }
        if (p->attempts++)
                np->c.retries++;
        if (fd >= 0) {
                p->netns_fd = fd;
                p->netns_ino = ino;
                p->pid = pid;
                set_cgroup(p, rel);
                p->why[0] = '\0';
                p->next_ms = now + NODE_REVALIDATE_MS;
                np->c.resolved++;
                log_info(COMP, 0,
                         "node: pod %s/%s ready: cgroup %s, netns %llu (pid %ld), after %u "
                         "attempts",
                         p->ns, p->name, rel, (unsigned long long)ino, pid, p->attempts);
                become_ready(np, p);
                return;
        }
        snprintf(p->why, sizeof(p->why), "%s",
                 rel ? "no process in its cgroup yet" : "no cgroup yet");
        if (rel)
                set_cgroup(p, rel);
        if (now - p->since_ms >= np->resolve_ms) {
                p->state = NODE_POD_FAILED;
                np->c.failed++;
                log_warn(COMP, 0,
                         "node: pod %s/%s (%s): %s after %ums (%u attempts): given up until the "
                         "pod changes",
                         p->ns, p->name, p->uid, p->why, np->resolve_ms, p->attempts);
                return;
        }
        p->next_ms = now + NODE_RETRY_MS;
}

void node_pods_resolve(struct node_pods *np, uint64_t now)
{
        for (size_t i = 0; i < np->n; i++) {
                struct pod *p = &np->pods[i];
                if ((p->state == NODE_POD_PENDING || p->state == NODE_POD_READY) &&
                    now >= p->next_ms)
                        resolve_one(np, p, now);
        }
}

/* ---- Pod objects ---------------------------------------------------------------- */

static const char *str_at(const cJSON *o, const char *k)
{
        const cJSON *x = FIELD(o, k);
        return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int copy(char *dst, size_t cap, const char *src, const char *what, char *err, size_t errlen)
{
        if (!src || !*src || strlen(src) >= cap) {
                snprintf(err, errlen, "pod: %s missing or longer than %zu", what, cap - 1);
                return -EINVAL;
        }
        memcpy(dst, src, strlen(src) + 1);
        return 0;
}

/* The fields kept of a pod object; *member: it belongs in the table. */
static int parse(struct node_pods *np, const cJSON *obj, struct pod *p, bool *member,
                 bool *host_network, char *err, size_t errlen)
{
        memset(p, 0, sizeof(*p));
        const cJSON *m = FIELD(obj, "metadata"), *spec = FIELD(obj, "spec"),
                    *st = FIELD(obj, "status");
        const char *ns = str_at(m, "namespace");
        if (copy(p->name, sizeof(p->name), str_at(m, "name"), "metadata.name", err, errlen) ||
            copy(p->ns, sizeof(p->ns), ns && *ns ? ns : "default", "metadata.namespace", err,
                 errlen))
                return -EINVAL;
        if (copy(p->uid, sizeof(p->uid), str_at(m, "uid"), "metadata.uid", err, errlen) ||
            !plain_uid(p->uid)) {
                snprintf(err, errlen, "pod %s/%s: metadata.uid missing or not a uid", p->ns,
                         p->name);
                return -EINVAL;
        }
        const char *sa = str_at(spec, "serviceAccountName");
        if (copy(p->sa, sizeof(p->sa), sa && *sa ? sa : "default", "spec.serviceAccountName", err,
                 errlen))
                return -EINVAL;
        const char *qos = str_at(st, "qosClass");
        snprintf(p->qos, sizeof(p->qos), "%s", qos && strlen(qos) < sizeof(p->qos) ? qos : "");
        const cJSON *ips = FIELD(st, "podIPs"), *ip;
        cJSON_ArrayForEach(ip, (cJSON_IsArray(ips) ? ips : NULL))
        {
                const char *a = str_at(ip, "ip");
                if (a && strlen(a) < sizeof(p->ips[0]) && p->n_ips < K8S_MAX_POD_IPS)
                        snprintf(p->ips[p->n_ips++], sizeof(p->ips[0]), "%s", a);
        }
        const char *ip1 = str_at(st, "podIP");
        if (!p->n_ips && ip1 && *ip1 && strlen(ip1) < sizeof(p->ips[0]))
                snprintf(p->ips[p->n_ips++], sizeof(p->ips[0]), "%s", ip1);
        const char *node = str_at(spec, "nodeName");
        const char *meshed = str_at(FIELD(m, "labels"), K8S_LABEL_MESHED);
        const char *phase = str_at(st, "phase");
        /* A finished pod (Succeeded, Failed) has no sandbox any more. */
        *member = node && !strcmp(node, np->node) && meshed && !strcmp(meshed, "true") &&
                  !(phase && (!strcmp(phase, "Succeeded") || !strcmp(phase, "Failed")));
        *host_network = cJSON_IsTrue(FIELD(spec, "hostNetwork"));
        static const char *const lists[] = {"containers", "initContainers"};
        for (size_t l = 0; l < 2 && !p->sidecar; l++) {
                const cJSON *k;
                cJSON_ArrayForEach(k, FIELD(spec, lists[l]))
                {
                        const char *n = str_at(k, "name");
                        p->sidecar |= n && !strcmp(n, NODE_SIDECAR_CONTAINER);
                }
        }
        const char *nc = str_at(FIELD(m, "annotations"), NODE_CAPTURE_ANNOTATION);
        if (nc && strlen(nc) > NODE_CAPTURE_ANNOTATION_MAX) {
                snprintf(err, errlen, "pod %s/%s: annotation %s longer than %d bytes", p->ns,
                         p->name, NODE_CAPTURE_ANNOTATION, NODE_CAPTURE_ANNOTATION_MAX);
                return -EINVAL;
        }
        if (nc && !(p->node_capture = strdup(nc))) {
                snprintf(err, errlen, "node: out of memory");
                return -ENOMEM;
        }
        const cJSON *labels = FIELD(m, "labels");
        if (cJSON_IsObject(labels) && !(p->labels = cJSON_PrintUnformatted(labels))) {
                snprintf(err, errlen, "node: out of memory");
                return -ENOMEM;
        }
        return 0;
}

static bool same_str(const char *a, const char *b)
{
        return a == b || (a && b && !strcmp(a, b));
}

static bool same_ips(const struct pod *a, const struct pod *b)
{
        if (a->n_ips != b->n_ips)
                return false;
        for (uint32_t i = 0; i < a->n_ips; i++) {
                if (strcmp(a->ips[i], b->ips[i]))
                        return false;
        }
        return true;
}

static void apply_update(struct node_pods *np, struct pod *cur, struct pod *in, bool hostnet,
                         uint64_t now)
{
        if (!same_ips(cur, in)) {
                if (cur->n_ips)
                        np->c.ips_changed++;
                memcpy(cur->ips, in->ips, sizeof(cur->ips));
                cur->n_ips = in->n_ips;
        }
        memcpy(cur->sa, in->sa, sizeof(cur->sa));
        memcpy(cur->qos, in->qos, sizeof(cur->qos));
        if (!same_str(cur->labels, in->labels)) {
                char *old = cur->labels;
                cur->labels = in->labels;
                in->labels = old;
                if (cur->state == NODE_POD_READY) {
                        struct node_pod_info i;
                        info_of(np, cur, &i);
                        for (size_t k = 0; k < np->n_obs; k++)
                                if (np->obs[k].updated)
                                        np->obs[k].updated(np->obs[k].ctx, &i);
                }
        }
        if (cur->sidecar != in->sidecar || !same_str(cur->node_capture, in->node_capture)) {
                /* What the observers act on changed: a new episode for them. */
                bool was_ready = cur->state == NODE_POD_READY;
                if (was_ready)
                        tell(np, cur, false);
                char *old = cur->node_capture;
                cur->node_capture = in->node_capture;
                in->node_capture = old;
                cur->sidecar = in->sidecar;
                if (was_ready)
                        become_ready(np, cur);
        }
        if (hostnet) {
                release(np, cur);
                cur->state = NODE_POD_HOST_NETWORK;
        } else if (cur->state == NODE_POD_FAILED || cur->state == NODE_POD_HOST_NETWORK) {
                cur->state = NODE_POD_PENDING; /* the pod changed: try again, afresh */
                cur->since_ms = now;
                cur->attempts = 0;
                resolve_one(np, cur, now);
        }
}

static int apply_parsed(struct node_pods *np, struct pod *inp, bool member, bool hostnet,
                        bool deleted, char *err, size_t errlen);

int node_pods_apply(struct node_pods *np, const cJSON *obj, bool deleted, char *err, size_t errlen)
{
        struct pod in;
        bool member, hostnet;
        int rc = parse(np, obj, &in, &member, &hostnet, err, errlen);
        if (rc) {
                free(in.node_capture);
                free(in.labels);
                np->c.bad++;
                return rc == -ENOMEM ? rc : -EINVAL;
        }
        rc = apply_parsed(np, &in, member, hostnet, deleted, err, errlen);
        free(in.node_capture); /* NULL when the table took it */
        free(in.labels);
        return rc;
}

/* in's node_capture is set to NULL when the table keeps it. */
static int apply_parsed(struct node_pods *np, struct pod *inp, bool member, bool hostnet,
                        bool deleted, char *err, size_t errlen)
{
        struct pod in = *inp;
        uint64_t now = now_ms(np);
        struct pod *cur = find(np, in.ns, in.name);
        if (cur && strcmp(cur->uid, in.uid) != 0) {
                /* The name now belongs to another pod (its DELETED was missed
                 * across a relist, or this is the old one's late event). */
                if (deleted) /* the old one's: the current pod stays */
                        return 0;
                log_info(COMP, 0, "node: pod %s/%s: uid %s replaced by %s", in.ns, in.name,
                         cur->uid, in.uid);
                remove_at(np, (size_t)(cur - np->pods), "replaced by a pod of the same name");
                np->c.uid_replaced++;
                cur = NULL;
        }
        if (deleted || !member) {
                if (cur)
                        remove_at(np, (size_t)(cur - np->pods),
                                  deleted ? "deleted" : "not meshed, finished or not on this node");
                return 0;
        }
        if (cur) {
                apply_update(np, cur, inp, hostnet, now);
                cur->seen = true;
                return 0;
        }
        if (np->n >= np->max_pods) {
                np->c.shed++;
                if (!np->shedding)
                        log_warn(COMP, 0,
                                 "node: pod %s/%s not taken: node.max_pods (%u) pods held; "
                                 "shedding until one leaves (counted in GET /pods)",
                                 in.ns, in.name, np->max_pods);
                np->shedding = true;
                return 0;
        }
        if (np->n == np->cap) {
                size_t cap = np->cap ? 2 * np->cap : 16;
                struct pod *pods = realloc(np->pods, cap * sizeof(*pods));
                if (!pods) {
                        snprintf(err, errlen, "node: out of memory");
                        return -ENOMEM;
                }
                np->pods = pods;
                np->cap = cap;
        }
        cur = &np->pods[np->n++];
        *cur = in;
        inp->node_capture = NULL; /* the table's now */
        inp->labels = NULL;
        cur->netns_fd = -1;
        cur->seen = true;
        cur->since_ms = cur->next_ms = now;
        cur->state = hostnet ? NODE_POD_HOST_NETWORK : NODE_POD_PENDING;
        np->c.added++;
        log_info(COMP, 0, "node: pod %s/%s (%s, sa %s) on this node", in.ns, in.name, in.uid,
                 in.sa);
        if (cur->state == NODE_POD_PENDING)
                resolve_one(np, cur, now);
        return 0;
}

/* ---- the sink ------------------------------------------------------------------------ */

static void sink_begin(void *arg)
{
        struct node_pods *np = arg;
        np->listing = true;
        for (size_t i = 0; i < np->n; i++)
                np->pods[i].seen = false;
}

static void sink_end(void *arg, bool complete)
{
        struct node_pods *np = arg;
        np->listing = false;
        /* A failed list removes nothing: what it applied is current anyway,
         * and the next complete one reconciles. */
        if (!complete)
                return;
        for (size_t i = np->n; i-- > 0;) {
                if (!np->pods[i].seen)
                        remove_at(np, i, "not in the list any more");
        }
        for (size_t k = 0; k < np->n_obs; k++)
                if (np->obs[k].synced)
                        np->obs[k].synced(np->obs[k].ctx, np->shedding);
}

bool node_pods_has_uid(const struct node_pods *np, const char *uid)
{
        for (size_t i = 0; i < np->n; i++)
                if (!strcmp(np->pods[i].uid, uid))
                        return true;
        return false;
}

static int sink_apply(void *arg, bool listing, const cJSON *obj, bool deleted, char *err,
                      size_t errlen)
{
        (void)listing;
        return node_pods_apply(arg, obj, deleted, err, errlen);
}

static size_t sink_count(void *arg)
{
        return node_pods_count(arg);
}

const struct k8s_object_sink *node_pods_sink(struct node_pods *np)
{
        return &np->sink;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static void tick_cb(struct loop *loop, struct loop_timer *t)
{
        struct node_pods *np = t->data;
        node_pods_resolve(np, loop_now_ms(loop));
        loop_timer_arm(loop, t, NODE_RETRY_MS);
}

struct node_pods *node_pods_new(const struct node_pods_config *cfg, char *err, size_t errlen)
{
        if (!cfg->node || !*cfg->node || strlen(cfg->node) >= K8S_MAX_OBJECT_NAME) {
                snprintf(err, errlen, "node: node.name (NODE_NAME) is empty or too long");
                return NULL;
        }
        if (!cfg->max_pods || cfg->max_pods > NODE_MAX_PODS_LIMIT) {
                snprintf(err, errlen, "node: node.max_pods %u is not 1..%d", cfg->max_pods,
                         NODE_MAX_PODS_LIMIT);
                return NULL;
        }
        struct node_pods *np = calloc(1, sizeof(*np));
        if (!np) {
                snprintf(err, errlen, "node: out of memory");
                return NULL;
        }
        snprintf(np->node, sizeof(np->node), "%s", cfg->node);
        np->max_pods = cfg->max_pods;
        np->resolve_ms = cfg->resolve_ms;
        snprintf(np->proc_root, sizeof(np->proc_root), "%s",
                 cfg->proc_root ? cfg->proc_root : "/proc");
        int rc = 0;
        if (cfg->cgroup_root)
                snprintf(np->cgroup_root, sizeof(np->cgroup_root), "%s", cfg->cgroup_root);
        else
                rc =
                    cgroup2_mount("/proc/self/mountinfo", np->cgroup_root, sizeof(np->cgroup_root));
        if (rc) {
                snprintf(err, errlen,
                         "node: no cgroup v2 hierarchy mounted where this process reaches it "
                         "(/proc/self/mountinfo): %s",
                         strerror(-rc));
                free(np);
                return NULL;
        }
        snprintf(np->sink.path, sizeof(np->sink.path), "/api/v1/pods");
        np->sink.kind = "pods (this node)";
        np->sink.arg = np;
        np->sink.list_begin = sink_begin;
        np->sink.list_end = sink_end;
        np->sink.apply = sink_apply;
        np->sink.count = sink_count;
        np->sink.label_selector = K8S_LABEL_MESHED "=true";
        snprintf(np->field_selector, sizeof(np->field_selector), "spec.nodeName=%s", np->node);
        np->sink.field_selector = np->field_selector;
        loop_timer_init(&np->tick, tick_cb, np);
        log_info(COMP, 0, "node: node mode for node %s: cgroup v2 at %s, at most %u pods", np->node,
                 np->cgroup_root, np->max_pods);
        return np;
}

int node_pods_observe(struct node_pods *np, const struct node_pods_observer *obs)
{
        if (np->n_obs >= NODE_MAX_OBSERVERS)
                return -ENOSPC;
        np->obs[np->n_obs++] = *obs;
        for (size_t i = 0; i < np->n; i++) {
                if (np->pods[i].state == NODE_POD_READY) {
                        struct node_pod_info info;
                        info_of(np, &np->pods[i], &info);
                        if (obs->ready)
                                obs->ready(obs->ctx, &info);
                }
        }
        return 0;
}

int node_pods_start(struct node_pods *np, struct loop *loop)
{
        np->loop = loop;
        return loop_timer_arm(loop, &np->tick, NODE_RETRY_MS);
}

void node_pods_free(struct node_pods *np)
{
        if (!np)
                return;
        if (np->loop)
                loop_timer_cancel(np->loop, &np->tick);
        for (size_t i = 0; i < np->n; i++) {
                release(np, &np->pods[i]);
                free(np->pods[i].node_capture);
                free(np->pods[i].labels);
        }
        free(np->pods);
        free(np);
}

size_t node_pods_count(const struct node_pods *np)
{
        return np->n;
}

int node_pods_state(const struct node_pods *np, const char *ns, const char *name)
{
        struct pod *p = find((struct node_pods *)np, ns, name);
        return p ? (int)p->state : -ENOENT;
}

static int pod_cmp(const void *a, const void *b)
{
        const struct pod *x = *(const struct pod *const *)a, *y = *(const struct pod *const *)b;
        int r = strcmp(x->ns, y->ns);
        return r ? r : strcmp(x->name, y->name);
}

void node_pod_render_head(struct strbuf *sb, bool first, const char *ns, const char *name,
                          const char *uid, const char *sa)
{
        strbuf_append(sb, first ? "{\"namespace\":" : ",{\"namespace\":");
        strbuf_append_json_string(sb, ns);
        strbuf_append(sb, ",\"name\":");
        strbuf_append_json_string(sb, name);
        strbuf_append(sb, ",\"uid\":");
        strbuf_append_json_string(sb, uid);
        strbuf_append(sb, ",\"service_account\":");
        strbuf_append_json_string(sb, sa);
}

void node_pods_render(const struct node_pods *np, struct strbuf *sb)
{
        strbuf_append(sb, "{\"node\":");
        strbuf_append_json_string(sb, np->node);
        strbuf_append(sb, ",\"cgroup_root\":");
        strbuf_append_json_string(sb, np->cgroup_root);
        strbuf_appendf(sb,
                       ",\"max_pods\":%u,\"resolve_timeout_ms\":%u,\"pods_held\":%zu,"
                       "\"counters\":{\"added\":%llu,\"removed\":%llu,\"resolved\":%llu,"
                       "\"retries\":%llu,\"failed\":%llu,\"netns_changed\":%llu,"
                       "\"uid_replaced\":%llu,\"ips_changed\":%llu,\"shed\":%llu,\"bad\":%llu},"
                       "\"pods\":[",
                       np->max_pods, np->resolve_ms, np->n, (unsigned long long)np->c.added,
                       (unsigned long long)np->c.removed, (unsigned long long)np->c.resolved,
                       (unsigned long long)np->c.retries, (unsigned long long)np->c.failed,
                       (unsigned long long)np->c.netns_changed,
                       (unsigned long long)np->c.uid_replaced,
                       (unsigned long long)np->c.ips_changed, (unsigned long long)np->c.shed,
                       (unsigned long long)np->c.bad);
        const struct pod **idx = calloc(np->n ? np->n : 1, sizeof(*idx));
        if (!idx) {
                strbuf_append(sb, "],\"error\":\"out of memory\"}");
                return;
        }
        for (size_t i = 0; i < np->n; i++)
                idx[i] = &np->pods[i];
        qsort(idx, np->n, sizeof(*idx), pod_cmp);
        for (size_t i = 0; i < np->n; i++) {
                const struct pod *p = idx[i];
                node_pod_render_head(sb, i == 0, p->ns, p->name, p->uid, p->sa);
                strbuf_appendf(sb, ",\"state\":\"%s\",\"ips\":[", node_pod_state_name(p->state));
                for (uint32_t k = 0; k < p->n_ips; k++) {
                        if (k)
                                strbuf_append(sb, ",");
                        strbuf_append_json_string(sb, p->ips[k]);
                }
                strbuf_append(sb, "],\"cgroup\":");
                strbuf_append_json_string(sb, p->cgroup);
                strbuf_appendf(sb, ",\"netns_inode\":%llu,\"pid\":%ld,\"attempts\":%u,\"error\":",
                               (unsigned long long)p->netns_ino, p->pid, p->attempts);
                if (p->state != NODE_POD_READY && p->why[0])
                        strbuf_append_json_string(sb, p->why);
                else
                        strbuf_append(sb, "null");
                strbuf_appendf(sb, ",\"sidecar\":%s,\"node_capture\":%s",
                               p->sidecar ? "true" : "false", p->node_capture ? "true" : "false");
                struct node_pod_info info;
                info_of(np, p, &info);
                for (size_t k = 0; k < np->n_obs; k++) {
                        if (np->obs[k].render)
                                np->obs[k].render(np->obs[k].ctx, &info, sb);
                }
                strbuf_append(sb, "}");
        }
        free(idx);
        strbuf_append(sb, "]}");
}

void node_pods_render_metrics(const struct node_pods *np, struct strbuf *sb)
{
        uint64_t by_state[sizeof(state_names) / sizeof(state_names[0])] = {0};
        for (size_t i = 0; i < np->n; i++)
                by_state[np->pods[i].state]++;
        prom_family(sb, "shunt_node_pods", "gauge", "Meshed pods of this node held, by state.");
        for (size_t k = 0; k < sizeof(by_state) / sizeof(by_state[0]); k++) {
                char label[48];
                snprintf(label, sizeof(label), "state=\"%s\"", state_names[k]);
                prom_sample_u64(sb, "shunt_node_pods", label, by_state[k]);
        }
        static const struct {
                const char *name, *help;
                size_t off;
        } c[] = {
            {"shunt_node_pods_shed_total", "Pods not taken: node.max_pods were held.",
             offsetof(struct node_pods, c.shed)},
            {"shunt_node_pods_failed_total",
             "Pods whose cgroup or network namespace did not show within node.resolve_timeout.",
             offsetof(struct node_pods, c.failed)},
            {"shunt_node_pods_retries_total", "Attempts at a pending pod after its first.",
             offsetof(struct node_pods, c.retries)},
            {"shunt_node_pods_netns_changed_total",
             "Ready pods whose network namespace was replaced (a new sandbox).",
             offsetof(struct node_pods, c.netns_changed)},
        };
        for (size_t k = 0; k < sizeof(c) / sizeof(c[0]); k++) {
                prom_family(sb, c[k].name, "counter", c[k].help);
                prom_sample_u64(sb, c[k].name, NULL,
                                *(const uint64_t *)((const char *)np + c[k].off));
        }
}

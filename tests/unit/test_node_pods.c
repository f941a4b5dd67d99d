// SPDX-License-Identifier: Apache-2.0
/* node/pods.h: kubelet's cgroup layouts (both drivers, every QoS class),
 * the cgroup v2 mount from mountinfo, and the pod table's states: pending
 * until a process of the pod's cgroup shows, ready with its netns, failed
 * past the bound and retried when the pod changes, a reused pid refused, a
 * name taken by a new uid, label removed, another node's pod, host network,
 * and the max_pods bound shedding. The cgroup and /proc trees are
 * directories of the test's own (the namespace is this process's). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/clock.h"
#include "core/mount.h"
#include "node/pods.h"

#define UID_A "0a1b2c3d-0000-4000-8000-00000000000a"
#define UID_B "0a1b2c3d-0000-4000-8000-00000000000b"

static void test_candidates(void **state)
{
        (void)state;
        char out[NODE_CGROUP_LAYOUTS][NODE_PATH_MAX];
        assert_int_equal(node_cgroup_candidates(UID_A, "Burstable", out, NODE_CGROUP_LAYOUTS), 2);
        assert_string_equal(out[0],
                            "kubepods.slice/kubepods-burstable.slice/"
                            "kubepods-burstable-pod0a1b2c3d_0000_4000_8000_00000000000a.slice");
        assert_string_equal(out[1], "kubepods/burstable/pod" UID_A);
        assert_int_equal(node_cgroup_candidates(UID_A, "Guaranteed", out, NODE_CGROUP_LAYOUTS), 2);
        assert_string_equal(
            out[0], "kubepods.slice/kubepods-pod0a1b2c3d_0000_4000_8000_00000000000a.slice");
        assert_string_equal(out[1], "kubepods/pod" UID_A);
        assert_int_equal(node_cgroup_candidates(UID_A, "BestEffort", out, NODE_CGROUP_LAYOUTS), 2);
        assert_string_equal(out[1], "kubepods/besteffort/pod" UID_A);
        /* unknown or absent class: every layout */
        assert_int_equal(node_cgroup_candidates(UID_A, NULL, out, NODE_CGROUP_LAYOUTS), 6);
        assert_int_equal(node_cgroup_candidates(UID_A, "Other", out, NODE_CGROUP_LAYOUTS), 6);
        assert_int_equal(node_cgroup_candidates(UID_A, NULL, out, 3), 3);
        /* a uid that would climb out of the hierarchy */
        assert_int_equal(node_cgroup_candidates("../../etc", NULL, out, 6), -EINVAL);
        assert_int_equal(node_cgroup_candidates("", NULL, out, 6), -EINVAL);
}

static char *write_tmp(const char *text)
{
        static char path[64];
        snprintf(path, sizeof(path), "/tmp/test_node_mi_XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

static void test_mountinfo(void **state)
{
        (void)state;
        char out[NODE_PATH_MAX], text[2048];
        /* Mount points that exist: this test's directory stands for the
         * hierarchy (its device is the "mount"'s), /proc for a mount whose
         * path lands on another device (covered by a later mount). */
        char dir[] = "/tmp/test_node_cg_XXXXXX";
        assert_non_null(mkdtemp(dir));
        struct stat st;
        assert_int_equal(stat(dir, &st), 0);
        unsigned maj = major(st.st_dev), min = minor(st.st_dev);
        /* hybrid: v1 controllers, v2 under unified; a bind of a sub-cgroup
         * (root not "/") and a covered mount come first and are passed over */
        snprintf(text, sizeof(text),
                 "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
                 "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
                 "40 31 %u:%u /sub %s rw - cgroup2 cgroup2 rw\n"
                 "41 31 %u:%u / /proc rw - cgroup2 cgroup2 rw\n"
                 "42 31 %u:%u / /nonexistent/cg rw - cgroup2 cgroup2 rw\n"
                 "43 31 %u:%u / %s rw shared:9 - cgroup2 cgroup2 rw\n",
                 maj, min, dir, maj, min, maj, min, maj, min, dir);
        char *p = write_tmp(text);
        assert_int_equal(cgroup2_mount(p, out, sizeof(out)), 0);
        assert_string_equal(out, dir);
        assert_int_equal(cgroup2_mount(p, out, 10), -ENAMETOOLONG);
        unlink(p);
        /* only the covered one: none reachable */
        snprintf(text, sizeof(text), "41 31 %u:%u / /proc rw - cgroup2 cgroup2 rw\n", maj, min);
        p = write_tmp(text);
        assert_int_equal(cgroup2_mount(p, out, sizeof(out)), -ENOENT);
        unlink(p);
        p = write_tmp("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n");
        assert_int_equal(cgroup2_mount(p, out, sizeof(out)), -ENOENT);
        unlink(p);
        assert_int_equal(cgroup2_mount("/nonexistent/mountinfo", out, sizeof(out)), -ENOENT);
        rmdir(dir);
}

/* ---- the table ---------------------------------------------------------- */

struct fx {
        char root[64]; /* root/cg: the cgroup tree, root/proc: the /proc tree */
        char cg[96], proc[96];
        struct node_pods *np;
};

static void sh(const char *fmt, ...)
{
        char cmd[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        assert_int_equal(system(cmd), 0);
}

static struct fx *fx_new(uint32_t max_pods)
{
        struct fx *f = calloc(1, sizeof(*f));
        snprintf(f->root, sizeof(f->root), "/tmp/test_node_XXXXXX");
        assert_non_null(mkdtemp(f->root));
        snprintf(f->cg, sizeof(f->cg), "%s/cg", f->root);
        snprintf(f->proc, sizeof(f->proc), "%s/proc", f->root);
        sh("mkdir -p %s %s", f->cg, f->proc);
        struct node_pods_config c = {.node = "n1",
                                     .max_pods = max_pods,
                                     .resolve_ms = 1000,
                                     .cgroup_root = f->cg,
                                     .proc_root = f->proc};
        char err[256];
        f->np = node_pods_new(&c, err, sizeof(err));
        assert_non_null(f->np);
        return f;
}

static void fx_free(struct fx *f)
{
        node_pods_free(f->np);
        sh("rm -rf %s", f->root);
        free(f);
}

/* A process pid of the pod, in container cgroup rel/ctr: its cgroup file
 * says cg_says (another path: the pid was reused). */
static void fake_proc(struct fx *f, const char *rel, long pid, const char *cg_says)
{
        sh("mkdir -p %s/%s/ctr && echo %ld > %s/%s/ctr/cgroup.procs", f->cg, rel, pid, f->cg, rel);
        sh("mkdir -p %s/%ld/ns && ln -sf /proc/self/ns/net %s/%ld/ns/net", f->proc, pid, f->proc,
           pid);
        sh("echo '0::/%s' > %s/%ld/cgroup", cg_says, f->proc, pid);
}

static int apply(struct fx *f, const char *name, const char *uid, const char *node, bool meshed,
                 bool deleted, const char *extra_spec)
{
        char js[1024];
        snprintf(js, sizeof(js),
                 "{\"metadata\":{\"name\":\"%s\",\"namespace\":\"shop\",\"uid\":\"%s\","
                 "\"labels\":{\"shunt.io/meshed\":\"%s\"}},"
                 "\"spec\":{\"nodeName\":\"%s\",\"serviceAccountName\":\"sa-%s\"%s},"
                 "\"status\":{\"qosClass\":\"Burstable\",\"podIPs\":[{\"ip\":\"10.1.0.7\"}]}}",
                 name, uid, meshed ? "true" : "false", node, name, extra_spec ? extra_spec : "");
        cJSON *o = cJSON_Parse(js);
        assert_non_null(o);
        char err[256];
        int rc = node_pods_apply(f->np, o, deleted, err, sizeof(err));
        cJSON_Delete(o);
        return rc;
}

static cJSON *render(struct fx *f)
{
        struct strbuf sb;
        strbuf_init(&sb);
        node_pods_render(f->np, &sb);
        cJSON *j = cJSON_ParseWithLength(sb.data, sb.len);
        strbuf_free(&sb);
        assert_non_null(j);
        return j;
}

static double counter(struct fx *f, const char *name)
{
        cJSON *j = render(f);
        double v = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "counters"), name)->valuedouble;
        cJSON_Delete(j);
        return v;
}

#define REL_A                                                                                      \
        "kubepods.slice/kubepods-burstable.slice/"                                                 \
        "kubepods-burstable-pod0a1b2c3d_0000_4000_8000_00000000000a.slice"
#define REL_B "kubepods/burstable/pod" UID_B

/* An observer that keeps the READY episodes it was told of. */
struct seen {
        char log[512];
        uint64_t live[8]; /* gens readied and not yet gone */
        int n_live;
};

static void obs_ready(void *ctx, const struct node_pod_info *p)
{
        struct seen *s = ctx;
        assert_true(p->netns_fd >= 0 && p->gen > 0 && p->cgroup[0]);
        assert_true(s->n_live < 8);
        s->live[s->n_live++] = p->gen;
        size_t n = strlen(s->log);
        snprintf(s->log + n, sizeof(s->log) - n, "+%s/%s ", p->name, p->sa);
}

static void obs_gone(void *ctx, const struct node_pod_info *p)
{
        struct seen *s = ctx;
        int k = 0;
        while (k < s->n_live && s->live[k] != p->gen)
                k++;
        assert_true(k < s->n_live); /* exactly one gone per ready, same gen */
        s->live[k] = s->live[--s->n_live];
        size_t n = strlen(s->log);
        snprintf(s->log + n, sizeof(s->log) - n, "-%s ", p->name);
}

static void test_states(void **state)
{
        (void)state;
        struct fx *f = fx_new(8);
        struct seen seen = {0};
        struct node_pods_observer obs = {.ready = obs_ready, .gone = obs_gone, .ctx = &seen};
        assert_int_equal(node_pods_observe(f->np, &obs), 0);
        uint64_t t0 = clock_mono_ms();
        assert_int_equal(apply(f, "a", UID_A, "n1", true, false, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "a"), NODE_POD_PENDING);
        /* the cgroup and its process appear later: ready on the next pass */
        fake_proc(f, REL_A, 4242, REL_A "/ctr");
        node_pods_resolve(f->np, t0 + 600);
        assert_int_equal(node_pods_state(f->np, "shop", "a"), NODE_POD_READY);
        struct stat st;
        assert_int_equal(stat("/proc/self/ns/net", &st), 0);
        cJSON *j = render(f);
        cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "pods"), 0);
        assert_int_equal((uint64_t)cJSON_GetObjectItem(p, "netns_inode")->valuedouble,
                         (uint64_t)st.st_ino);
        assert_string_equal(cJSON_GetObjectItem(p, "cgroup")->valuestring, REL_A);
        assert_string_equal(cJSON_GetObjectItem(p, "service_account")->valuestring, "sa-a");
        assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(p, "ips"), 0)->valuestring,
                            "10.1.0.7");
        cJSON_Delete(j);

        /* cgroupfs layout, but the pid listed is now another process's
         * (its cgroup is elsewhere): not taken, and failed past the bound */
        assert_int_equal(apply(f, "b", UID_B, "n1", true, false, NULL), 0);
        fake_proc(f, REL_B, 4343, "system.slice/other");
        node_pods_resolve(f->np, t0 + 600);
        assert_int_equal(node_pods_state(f->np, "shop", "b"), NODE_POD_PENDING);
        node_pods_resolve(f->np, t0 + 100000);
        assert_int_equal(node_pods_state(f->np, "shop", "b"), NODE_POD_FAILED);
        assert_int_equal(counter(f, "failed"), 1);
        /* the pod changes (the process is right now): tried again, ready */
        fake_proc(f, REL_B, 4343, REL_B "/ctr");
        assert_int_equal(apply(f, "b", UID_B, "n1", true, false, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "b"), NODE_POD_READY);

        /* the name a comes back with another uid: a new pod, pending */
        assert_int_equal(apply(f, "a", UID_B, "n1", true, false, NULL), 0);
        assert_int_equal(counter(f, "uid_replaced"), 1);
        /* (UID_B's cgroup is REL_B's: found at once) */
        assert_int_equal(node_pods_state(f->np, "shop", "a"), NODE_POD_READY);
        /* the old uid's late DELETED leaves the new pod alone */
        assert_int_equal(apply(f, "a", UID_A, "n1", true, true, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "a"), NODE_POD_READY);
        /* label removed: leaves */
        assert_int_equal(apply(f, "a", UID_B, "n1", false, false, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "a"), -ENOENT);
        /* another node's pod is not ours */
        assert_int_equal(apply(f, "c", UID_A, "n2", true, false, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "c"), -ENOENT);
        /* host network: listed, never resolved */
        assert_int_equal(apply(f, "h", UID_A, "n1", true, false, ",\"hostNetwork\":true"), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "h"), NODE_POD_HOST_NETWORK);
        /* deleted */
        assert_int_equal(apply(f, "b", UID_B, "n1", true, true, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "b"), -ENOENT);
        assert_int_equal(node_pods_count(f->np), 1);
        /* bad object: refused, counted */
        cJSON *bad = cJSON_Parse("{\"metadata\":{\"name\":\"x\",\"uid\":\"../x\"}}");
        char err[256];
        assert_int_equal(node_pods_apply(f->np, bad, false, err, sizeof(err)), -EINVAL);
        cJSON_Delete(bad);
        assert_int_equal(counter(f, "bad"), 1);
        /* ready a, ready b, a replaced (gone, new a ready), a unmeshed, b deleted */
        assert_string_equal(seen.log, "+a/sa-a +b/sa-b -a +a/sa-a -a -b ");
        assert_int_equal(seen.n_live, 0);
        fx_free(f);
}

static void test_bound(void **state)
{
        (void)state;
        struct fx *f = fx_new(2);
        assert_int_equal(apply(f, "a", UID_A, "n1", true, false, NULL), 0);
        assert_int_equal(apply(f, "b", UID_B, "n1", true, false, NULL), 0);
        assert_int_equal(
            apply(f, "c", "0a1b2c3d-0000-4000-8000-00000000000c", "n1", true, false, NULL), 0);
        assert_int_equal(node_pods_count(f->np), 2);
        assert_int_equal(node_pods_state(f->np, "shop", "c"), -ENOENT);
        assert_int_equal(counter(f, "shed"), 1);
        /* one leaves: the next event of c takes it */
        assert_int_equal(apply(f, "a", UID_A, "n1", true, true, NULL), 0);
        assert_int_equal(
            apply(f, "c", "0a1b2c3d-0000-4000-8000-00000000000c", "n1", true, false, NULL), 0);
        assert_int_equal(node_pods_state(f->np, "shop", "c"), NODE_POD_PENDING);
        fx_free(f);
}
/* Sidecar pods and the node-capture annotation reach the observers; a change
 * of either is a new episode; observers add members to GET /pods. */
struct kinds {
        char log[256];
};

static void kinds_ready(void *ctx, const struct node_pod_info *p)
{
        struct kinds *k = ctx;
        size_t n = strlen(k->log);
        snprintf(k->log + n, sizeof(k->log) - n, "+%s:%d:%s ", p->name, p->sidecar,
                 p->node_capture ? p->node_capture : "-");
}

static void kinds_gone(void *ctx, const struct node_pod_info *p)
{
        struct kinds *k = ctx;
        size_t n = strlen(k->log);
        snprintf(k->log + n, sizeof(k->log) - n, "-%s ", p->name);
}

static void kinds_render(void *ctx, const struct node_pod_info *p, struct strbuf *sb)
{
        (void)ctx;
        strbuf_appendf(sb, ",\"extra\":\"%s-%s\"", p->name, p->gen ? "ready" : "not");
}

static int apply_meta(struct fx *f, const char *name, const char *uid, const char *annotations,
                      const char *containers)
{
        char js[8192];
        snprintf(js, sizeof(js),
                 "{\"metadata\":{\"name\":\"%s\",\"namespace\":\"shop\",\"uid\":\"%s\","
                 "\"labels\":{\"shunt.io/meshed\":\"true\"},\"annotations\":{%s}},"
                 "\"spec\":{\"nodeName\":\"n1\",\"containers\":[%s]},"
                 "\"status\":{\"qosClass\":\"Burstable\"}}",
                 name, uid, annotations, containers);
        cJSON *o = cJSON_Parse(js);
        assert_non_null(o);
        char err[256];
        int rc = node_pods_apply(f->np, o, false, err, sizeof(err));
        cJSON_Delete(o);
        return rc;
}

static void test_sidecar_pods(void **state)
{
        (void)state;
        struct fx *f = fx_new(8);
        struct kinds k = {{0}};
        struct node_pods_observer obs = {
            .ready = kinds_ready, .gone = kinds_gone, .render = kinds_render, .ctx = &k};
        assert_int_equal(node_pods_observe(f->np, &obs), 0);
        fake_proc(f, REL_A, 4242, REL_A "/ctr");
        assert_int_equal(apply_meta(f, "a", UID_A, "", "{\"name\":\"app\"}"), 0);
        /* the same pod, now with a sidecar and the annotation: a new episode */
        assert_int_equal(apply_meta(f, "a", UID_A, "\"shunt.io/node-capture\":\"{}\"",
                                    "{\"name\":\"app\"},{\"name\":\"shunt-proxy\"}"),
                         0);
        /* unchanged: nothing told */
        assert_int_equal(apply_meta(f, "a", UID_A, "\"shunt.io/node-capture\":\"{}\"",
                                    "{\"name\":\"app\"},{\"name\":\"shunt-proxy\"}"),
                         0);
        assert_string_equal(k.log, "+a:0:- -a +a:1:{} ");
        cJSON *j = render(f);
        cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "pods"), 0);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(p, "sidecar")));
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(p, "node_capture")));
        assert_string_equal(cJSON_GetObjectItem(p, "extra")->valuestring, "a-ready");
        cJSON_Delete(j);
        /* a pending pod is rendered too, gen 0 */
        assert_int_equal(apply_meta(f, "b", UID_B, "", "{\"name\":\"app\"}"), 0);
        j = render(f);
        p = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "pods"), 1);
        assert_string_equal(cJSON_GetObjectItem(p, "extra")->valuestring, "b-not");
        assert_true(cJSON_IsFalse(cJSON_GetObjectItem(p, "sidecar")));
        cJSON_Delete(j);
        /* an annotation past the bound: the object is refused, the pod kept as it was */
        char big[NODE_CAPTURE_ANNOTATION_MAX + 64];
        int n = snprintf(big, sizeof(big), "\"shunt.io/node-capture\":\"");
        memset(big + n, 'x', NODE_CAPTURE_ANNOTATION_MAX + 1);
        snprintf(big + n + NODE_CAPTURE_ANNOTATION_MAX + 1, 4, "\"");
        assert_int_equal(apply_meta(f, "a", UID_A, big, "{\"name\":\"shunt-proxy\"}"), -EINVAL);
        assert_int_equal(counter(f, "bad"), 1);
        fx_free(f);
        assert_string_equal(k.log, "+a:0:- -a +a:1:{} -a ");
}

/* A READY pod's labels reach the observers (ready with them, updated when
 * they change: the same episode), nothing when unchanged. */
static void labels_ready(void *ctx, const struct node_pod_info *p)
{
        struct kinds *k = ctx;
        size_t n = strlen(k->log);
        snprintf(k->log + n, sizeof(k->log) - n, "+%s:%llu:%s ", p->name,
                 (unsigned long long)p->gen, p->labels ? p->labels : "-");
}

static void labels_updated(void *ctx, const struct node_pod_info *p)
{
        struct kinds *k = ctx;
        size_t n = strlen(k->log);
        snprintf(k->log + n, sizeof(k->log) - n, "~%s:%llu:%s ", p->name,
                 (unsigned long long)p->gen, p->labels ? p->labels : "-");
}

static int apply_labels(struct fx *f, const char *labels)
{
        char js[1024];
        snprintf(js, sizeof(js),
                 "{\"metadata\":{\"name\":\"a\",\"namespace\":\"shop\",\"uid\":\"%s\","
                 "\"labels\":{\"shunt.io/meshed\":\"true\"%s}},"
                 "\"spec\":{\"nodeName\":\"n1\"},\"status\":{\"qosClass\":\"Burstable\"}}",
                 UID_A, labels);
        cJSON *o = cJSON_Parse(js);
        assert_non_null(o);
        char err[256];
        int rc = node_pods_apply(f->np, o, false, err, sizeof(err));
        cJSON_Delete(o);
        return rc;
}

static void test_labels(void **state)
{
        (void)state;
        struct fx *f = fx_new(8);
        struct kinds k = {{0}};
        struct node_pods_observer obs = {
            .ready = labels_ready, .gone = kinds_gone, .updated = labels_updated, .ctx = &k};
        assert_int_equal(node_pods_observe(f->np, &obs), 0);
        fake_proc(f, REL_A, 4242, REL_A "/ctr");
        assert_int_equal(apply_labels(f, ",\"app\":\"web\""), 0);
        assert_int_equal(apply_labels(f, ",\"app\":\"web\""), 0); /* unchanged */
        assert_int_equal(apply_labels(f, ",\"app\":\"canary\""), 0);
        assert_string_equal(k.log, "+a:1:{\"shunt.io/meshed\":\"true\",\"app\":\"web\"} "
                                   "~a:1:{\"shunt.io/meshed\":\"true\",\"app\":\"canary\"} ");
        fx_free(f);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_candidates),   cmocka_unit_test(test_mountinfo),
            cmocka_unit_test(test_states),       cmocka_unit_test(test_bound),
            cmocka_unit_test(test_sidecar_pods), cmocka_unit_test(test_labels),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

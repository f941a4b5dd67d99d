// SPDX-License-Identifier: Apache-2.0
/* node/sidecar_capture.h: the shunt.io/node-capture settings become the
 * configuration `shuntd init` would have had (and its iptables options);
 * anything else is refused with the reason. With an installer that fails
 * twice: the install is tried again on the loop until it holds; the pod
 * leaving removes it, the agent exiting (keep) does not. The namespaces and
 * iptables: tests/integration/test_node_sidecar_capture.py. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "core/loop.h"
#include "core/snapshot.h"
#include "intercept/iptables.h"
#include "node/sidecar_capture.h"

static void refused(const char *annotation, const char *want)
{
        struct shunt_config *cfg = NULL;
        char err[512] = "";
        assert_int_equal(node_sidecar_capture_config(annotation, &cfg, err, sizeof(err)), -EINVAL);
        assert_null(cfg);
        if (!strstr(err, want))
                fail_msg("%s: error '%s' lacks '%s'", annotation, err, want);
}

static void test_settings(void **state)
{
        (void)state;
        struct shunt_config *cfg = NULL;
        char err[512] = "";
        assert_int_equal(node_sidecar_capture_config(
                             "{\"SHUNT_REDIRECT\":\"iptables\",\"SHUNT_PROXY_UID\":\"1337\","
                             "\"SHUNT_ADMIN_METRICS_PORT\":\"15020\","
                             "\"SHUNT_EXCLUDE_INBOUND_PORTS\":\"9100,8081\","
                             "\"SHUNT_EXCLUDE_OUTBOUND_CIDRS\":\"10.96.0.0/12\"}",
                             &cfg, err, sizeof(err)),
                         0);
        struct ipt_options o;
        ipt_options_from_config(&o, cfg, (uint32_t)cfg->proxy_uid);
        assert_int_equal(o.inbound_port, 15001);
        assert_int_equal(o.outbound_port, 15002);
        assert_int_equal(o.metrics_port, 15020);
        assert_int_equal(o.uid, 1337);
        assert_int_equal(o.n_exclude_inbound_ports, 2);
        assert_int_equal(o.exclude_inbound_ports[1], 8081);
        assert_int_equal(o.n_exclude_outbound_cidrs, 1);
        snapshot_unref(&cfg->snap);
        /* nothing set: shuntd init's defaults */
        assert_int_equal(node_sidecar_capture_config("{}", &cfg, err, sizeof(err)), 0);
        assert_int_equal(cfg->inbound_port, 15001);
        snapshot_unref(&cfg->snap);

        refused("", "not a JSON object");
        refused("[1]", "not a JSON object");
        refused("{\"SHUNT_CA_ADDRESS\":\"https://evil\"}",
                "SHUNT_CA_ADDRESS is not a capture setting");
        refused("{\"SHUNT_REDIRECT\":\"ebpf\"}", "the node installs iptables capture only");
        refused("{\"SHUNT_PROXY_UID\":1337}", "SHUNT_PROXY_UID: not a string");
        refused("{\"SHUNT_EXCLUDE_INBOUND_PORTS\":\"http\"}",
                "SHUNT_EXCLUDE_INBOUND_PORTS (env): http: expected a port");
        refused("{\"SIDECAR_INBOUND_PORT\":\"0\"}", "SIDECAR_INBOUND_PORT (env): 0");
}

struct fake {
        int installs, removes, fail_first;
        struct loop *loop;
};

static int fake_install(void *ctx, int netns_fd, const struct shunt_config *cfg, char *err,
                        size_t errlen)
{
        struct fake *f = ctx;
        assert_true(netns_fd >= 0 && cfg->inbound_port == 15001);
        if (f->installs++ < f->fail_first) {
                snprintf(err, errlen, "xtables lock busy");
                return -EBUSY;
        }
        loop_stop(f->loop);
        return 0;
}

static int fake_remove(void *ctx, int netns_fd, char *err, size_t errlen)
{
        (void)netns_fd, (void)err, (void)errlen;
        ((struct fake *)ctx)->removes++;
        return 0;
}

static void guard(struct loop *loop, struct loop_timer *t)
{
        (void)t;
        loop_stop(loop); /* bounded: the assertions below then fail */
}

static void sh(const char *cmd)
{
        assert_int_equal(system(cmd), 0);
}

static void test_retry_remove_keep(void **state)
{
        (void)state;
        char root[64] = "/tmp/test_sidecar_XXXXXX", cmd[2048];
        assert_non_null(mkdtemp(root));
        /* a pod's cgroup (systemd driver, BestEffort) with a process whose
         * namespace is this test's own */
        const char *rel = "kubepods.slice/kubepods-besteffort.slice/"
                          "kubepods-besteffort-pod0a1b2c3d_0000_4000_8000_0000000000aa.slice";
        snprintf(cmd, sizeof(cmd),
                 "mkdir -p %s/cg/%s %s/proc/77/ns && echo 77 > %s/cg/%s/cgroup.procs && "
                 "ln -s /proc/self/ns/net %s/proc/77/ns/net && echo '0::/%s' > %s/proc/77/cgroup",
                 root, rel, root, root, rel, root, rel, root);
        sh(cmd);
        char cg[96], proc[96], err[256];
        snprintf(cg, sizeof(cg), "%s/cg", root);
        snprintf(proc, sizeof(proc), "%s/proc", root);
        struct node_pods_config c = {
            .node = "n1", .max_pods = 4, .resolve_ms = 1000, .cgroup_root = cg, .proc_root = proc};
        struct node_pods *np = node_pods_new(&c, err, sizeof(err));
        assert_non_null(np);
        struct fake f = {.fail_first = 2, .loop = loop_new()};
        struct node_sidecar_ops ops = {.install = fake_install, .remove = fake_remove, .ctx = &f};
        struct node_sidecar_capture *sc = node_sidecar_capture_new(&ops);
        assert_int_equal(node_sidecar_capture_attach(sc, np, f.loop), 0);
        const char *pod = "{\"metadata\":{\"name\":\"p\",\"namespace\":\"shop\",\"uid\":"
                          "\"0a1b2c3d-0000-4000-8000-0000000000aa\",\"labels\":{"
                          "\"shunt.io/meshed\":\"true\"},\"annotations\":{"
                          "\"shunt.io/node-capture\":\"{\\\"SHUNT_PROXY_UID\\\":\\\"1337\\\"}\"}},"
                          "\"spec\":{\"nodeName\":\"n1\",\"initContainers\":[{\"name\":"
                          "\"shunt-proxy\"}],\"containers\":[{\"name\":\"app\"}]},"
                          "\"status\":{\"qosClass\":\"BestEffort\"}}";
        cJSON *o = cJSON_Parse(pod);
        assert_non_null(o);
        assert_int_equal(node_pods_apply(np, o, false, err, sizeof(err)), 0); /* ready at once */
        assert_int_equal(f.installs, 1);
        assert_int_equal(node_sidecar_capture_count(sc), 0);
        struct strbuf sb;
        strbuf_init(&sb);
        node_pods_render(np, &sb);
        assert_non_null(strstr(sb.data,
                               "\"sidecar_capture\":{\"state\":\"retrying\",\"attempts\":1,"
                               "\"error\":\"xtables lock busy\"}"));
        strbuf_free(&sb);
        struct loop_timer g;
        loop_timer_init(&g, guard, NULL);
        loop_timer_arm(f.loop, &g, 30000);
        loop_run(f.loop); /* until the third attempt holds */
        loop_timer_cancel(f.loop, &g);
        assert_int_equal(f.installs, 3);
        assert_int_equal(node_sidecar_capture_count(sc), 1);
        strbuf_init(&sb);
        node_sidecar_capture_render_metrics(sc, &sb);
        assert_non_null(strstr(sb.data, "shunt_node_sidecar_capture_retries_total 2\n"));
        assert_non_null(strstr(sb.data, "shunt_node_sidecar_captures 1\n"));
        strbuf_free(&sb);
        /* the pod leaves: removed */
        assert_int_equal(node_pods_apply(np, o, true, err, sizeof(err)), 0);
        assert_int_equal(f.removes, 1);
        assert_int_equal(node_sidecar_capture_count(sc), 0);
        /* back, installed, then the agent exits: nothing removed */
        f.fail_first = 0;
        assert_int_equal(node_pods_apply(np, o, false, err, sizeof(err)), 0);
        assert_int_equal(f.installs, 4);
        node_sidecar_capture_keep(sc);
        node_pods_free(np);
        assert_int_equal(f.removes, 1);
        node_sidecar_capture_free(sc);
        cJSON_Delete(o);
        loop_free(f.loop);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
        sh(cmd);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_settings),
            cmocka_unit_test(test_retry_remove_keep),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

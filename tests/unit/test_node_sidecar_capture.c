// SPDX-License-Identifier: Apache-2.0
/* node/sidecar_capture.h: the shunt.io/node-capture settings become the
 * configuration `shuntd init` would have had (and its iptables options);
 * anything else is refused with the reason. The namespaces and iptables:
 * tests/integration/test_node_sidecar_capture.py. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

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

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_settings),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

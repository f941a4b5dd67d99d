// SPDX-License-Identifier: Apache-2.0
/* Configuration: sources, precedence, provenance, every validation error,
 * duration and CIDR parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"

#define FIX(name) SHUNT_FIXTURES "/config/" name

static char *no_env[] = {NULL};

static int count(char **v)
{
        int n = 0;
        while (v[n])
                n++;
        return n;
}

static struct shunt_config *load_ok(char **argv, char **envp)
{
        struct shunt_config *c = NULL;
        char err[CONFIG_ERR_MAX] = "";
        int rc = config_load(count(argv), argv, envp, &c, err, sizeof(err));
        if (rc)
                print_error("config_load failed: %d: %s\n", rc, err);
        assert_int_equal(rc, 0);
        assert_non_null(c);
        assert_string_equal(err, "");
        assert_int_equal(atomic_load(&c->snap.refs), 1);
        return c;
}

/* Loading fails with rc and the error line contains every needle. */
static void load_err(char **argv, char **envp, int want_rc, ...)
{
        struct shunt_config *c = (struct shunt_config *)0x1;
        char err[CONFIG_ERR_MAX] = "";
        int rc = config_load(count(argv), argv, envp, &c, err, sizeof(err));
        if (rc != want_rc)
                print_error("rc %d (want %d): %s\n", rc, want_rc, err);
        assert_int_equal(rc, want_rc);
        assert_null(c);
        assert_non_null(strstr(err, "config: "));
        assert_null(strchr(err, '\n'));
        va_list ap;
        va_start(ap, want_rc);
        for (const char *needle; (needle = va_arg(ap, const char *));) {
                if (!strstr(err, needle))
                        print_error("error %s\n   lacks %s\n", err, needle);
                assert_non_null(strstr(err, needle));
        }
        va_end(ap);
}

/* A temporary file with content; the caller unlinks and frees the path. */
static char *tmp_file(const char *content)
{
        const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        char *path;
        assert_true(asprintf(&path, "%s/shunt-config-XXXXXX", dir) > 0);
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        size_t n = strlen(content);
        assert_int_equal(write(fd, content, n), (ssize_t)n);
        close(fd);
        return path;
}

/* config_load on a JSON text given inline. */
static void json_err(const char *json, ...)
{
        char *path = tmp_file(json);
        char *argv[] = {"shuntd", "--config", path, NULL};
        struct shunt_config *c = (struct shunt_config *)0x1;
        char err[CONFIG_ERR_MAX] = "";
        int rc = config_load(count(argv), argv, no_env, &c, err, sizeof(err));
        unlink(path);
        free(path);
        if (rc != -EINVAL)
                print_error("json %s: rc %d: %s\n", json, rc, err);
        assert_int_equal(rc, -EINVAL);
        assert_null(c);
        va_list ap;
        va_start(ap, json);
        for (const char *needle; (needle = va_arg(ap, const char *));) {
                if (!strstr(err, needle))
                        print_error("json %s\n  error %s\n   lacks %s\n", json, err, needle);
                assert_non_null(strstr(err, needle));
        }
        va_end(ap);
}

static struct shunt_config *json_ok(const char *json)
{
        char *path = tmp_file(json);
        char *argv[] = {"shuntd", "--config", path, NULL};
        struct shunt_config *c = load_ok(argv, no_env);
        unlink(path);
        free(path);
        return c;
}

static void assert_cidr(const struct cidr *c, const char *want)
{
        char s[INET6_ADDRSTRLEN + 8];
        assert_non_null(inet_ntop(c->family, &c->addr, s, sizeof(s)));
        snprintf(s + strlen(s), sizeof(s) - strlen(s), "/%u", c->prefix_len);
        assert_string_equal(s, want);
}

static void test_defaults(void **state)
{
        char *argv[] = {"shuntd", NULL};
        struct shunt_config *c = load_ok(argv, no_env);
        assert_int_equal(c->inbound_port, 15001);
        assert_int_equal(c->outbound_port, 15002);
        assert_int_equal(c->admin_port, 15003);
        assert_string_equal(c->bind_address, "0.0.0.0");
        assert_string_equal(c->admin_address, "127.0.0.1");
        assert_string_equal(c->metrics_address, "0.0.0.0");
        assert_int_equal(c->metrics_port, 15020);
        assert_true(config_metrics_enabled(c));
        assert_int_equal(c->metrics_requests, 1);
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        assert_int_equal(c->workers, cpus > 256 ? 256 : cpus);
        assert_int_equal(c->log_level, LOG_INFO);
        assert_int_equal(c->redirect, REDIRECT_AUTO);
        assert_int_equal(c->bpf_shortcut, 1); /* on */
        assert_int_equal(c->tcp_splice, 0);   /* off: see docs/architecture.md, Splice */
        assert_int_equal(c->proxy_mark, 0x539);
        assert_int_equal(c->proxy_uid, -1);
        assert_int_equal(c->n_exclude_inbound_ports, 2); /* 22 and the admin port */
        assert_int_equal(c->exclude_inbound_ports[0], 22);
        assert_int_equal(c->exclude_inbound_ports[1], 15003);
        assert_int_equal(c->n_exclude_outbound_ports, 0);
        assert_int_equal(c->n_exclude_outbound_cidrs, 0);
        assert_int_equal(c->outbound_policy, OUTBOUND_ALLOW_ANY);
        assert_int_equal(c->protocol_detection_timeout_ms, 100);
        assert_int_equal(c->connect_timeout_ms, 30000);
        assert_int_equal(c->request_timeout_ms, 30000);
        assert_int_equal(c->idle_timeout_ms, 60000);
        assert_int_equal(c->drain_timeout_ms, 30000);
        assert_int_equal(c->max_connections, 65536);
        assert_int_equal(c->buffer_size, 65536);
        assert_string_equal(c->sd_type, "file");
        assert_string_equal(c->sd_file_path, "");
        assert_string_equal(c->k8s_kubeconfig, "");
        assert_string_equal(c->k8s_namespace, "default");
        assert_string_equal(c->k8s_label_selector, "");
        assert_string_equal(c->consul_address, "localhost:8500");
        assert_string_equal(c->consul_token, "");
        assert_string_equal(c->consul_datacenter, "dc1");
        assert_string_equal(c->trust_domain, "cluster.local");
        assert_int_equal(c->cert_rotation_s, 86400);
        assert_string_equal(c->ca_bundle, "");
        assert_string_equal(c->certificate_file, "");
        assert_string_equal(c->private_key_file, "");
        assert_int_equal(c->mtls_mode, MTLS_PERMISSIVE);
        assert_int_equal(c->forward_client_cert, FCC_SANITIZE_SET);
        assert_string_equal(c->mtls_ca_dir, "/var/lib/shunt/ca");
        assert_string_equal(c->mtls_namespace, "default");
        char host[256] = "";
        assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
        assert_string_equal(c->mtls_service_name, host);
        assert_string_equal(c->mtls_service_account, host);
        assert_string_equal(c->mtls_key_type, "ecdsa-p256");
        assert_int_equal(c->mtls_clock_skew_s, 300);
        assert_int_equal(c->mtls_handshake_timeout_ms, 10000);
        assert_string_equal(c->lb_algorithm, "round_robin");
        assert_string_equal(c->lb_hash_key, "X-Request-Key");
        assert_string_equal(c->path, "");
        assert_true(c->n_origins >= 36);
        for (size_t i = 0; i < c->n_origins; i++)
                assert_int_equal(c->origins[i].source, CONFIG_SRC_DEFAULT);
        snapshot_unref(&c->snap);
}

static void test_admin_port_follows_default_excludes(void **state)
{
        char *argv[] = {"shuntd", "--admin-port", "9901", NULL};
        struct shunt_config *c = load_ok(argv, no_env);
        assert_int_equal(c->n_exclude_inbound_ports, 2);
        assert_int_equal(c->exclude_inbound_ports[1], 9901);
        snapshot_unref(&c->snap);

        /* an explicit list is taken as given */
        char *argv2[] = {"shuntd", "--exclude-inbound-ports=22,8080", NULL};
        c = load_ok(argv2, no_env);
        assert_int_equal(c->n_exclude_inbound_ports, 2);
        assert_int_equal(c->exclude_inbound_ports[1], 8080);
        snapshot_unref(&c->snap);

        char *argv3[] = {"shuntd", "--exclude-inbound-ports=", NULL};
        c = load_ok(argv3, no_env);
        assert_int_equal(c->n_exclude_inbound_ports, 0);
        snapshot_unref(&c->snap);
}

static void test_file_values(void **state)
{
        char *argv[] = {"shuntd", "--config", FIX("full.json"), NULL};
        struct shunt_config *c = load_ok(argv, no_env);
        assert_int_equal(c->inbound_port, 16001);
        assert_int_equal(c->outbound_port, 16002);
        assert_int_equal(c->admin_port, 16003);
        assert_string_equal(c->bind_address, "::");
        assert_string_equal(c->admin_address, "127.0.0.1");
        assert_int_equal(c->workers, 2);
        assert_int_equal(c->log_level, LOG_DEBUG);
        assert_int_equal(c->redirect, REDIRECT_IPTABLES);
        assert_int_equal(c->proxy_mark, 0x540);
        assert_int_equal(c->proxy_uid, 1337);
        assert_int_equal(c->n_exclude_inbound_ports, 2);
        assert_int_equal(c->exclude_inbound_ports[0], 22);
        assert_int_equal(c->exclude_inbound_ports[1], 16003);
        assert_int_equal(c->n_exclude_outbound_ports, 2);
        assert_int_equal(c->exclude_outbound_ports[0], 53);
        assert_int_equal(c->exclude_outbound_ports[1], 6443);
        assert_int_equal(c->n_exclude_outbound_cidrs, 3);
        assert_cidr(&c->exclude_outbound_cidrs[0], "169.254.169.254/32");
        assert_cidr(&c->exclude_outbound_cidrs[1], "10.96.0.0/12");
        assert_cidr(&c->exclude_outbound_cidrs[2], "fd00::/8");
        assert_int_equal(c->outbound_policy, OUTBOUND_REGISTRY_ONLY);
        assert_int_equal(c->protocol_detection_timeout_ms, 250);
        assert_int_equal(c->drain_timeout_ms, 45000);
        assert_int_equal(c->max_connections, 10000);
        assert_int_equal(c->buffer_size, 32768);
        assert_int_equal(c->connect_timeout_ms, 5000);
        assert_int_equal(c->request_timeout_ms, 90000);
        assert_int_equal(c->idle_timeout_ms, 300000);
        assert_int_equal(c->http_upstream_idle_timeout_ms, 2500);
        assert_int_equal(c->http_upstream_max_idle, 8);
        assert_int_equal(c->http_max_header_bytes, 16384);
        assert_int_equal(c->http_max_headers, 50);
        assert_int_equal(c->mirror_max_in_flight, 32);
        assert_int_equal(c->mirror_max_body, 32768);
        assert_int_equal(c->mirror_timeout_ms, 3000);
        assert_int_equal(c->h2_max_concurrent_streams, 64);
        assert_int_equal(c->h2_max_header_list_size, 32768);
        assert_int_equal(c->h2_max_control_frames, 500);
        assert_int_equal(c->h2_stream_stall_timeout_ms, 45000);
        assert_string_equal(c->lb_local_zone, "eu-west-1a");
        assert_int_equal(c->lb_locality_min_percent, 50);
        assert_int_equal(c->cb_consecutive_failures, 7);
        assert_int_equal(c->cb_failure_percent, 60);
        assert_int_equal(c->cb_min_requests, 30);
        assert_int_equal(c->cb_window_ms, 40000);
        assert_int_equal(c->cb_open_timeout_ms, 20000);
        assert_int_equal(c->cb_jitter_percent, 5);
        assert_int_equal(c->cb_half_open_probes, 4);
        assert_int_equal(c->cb_success_threshold, 2);
        assert_int_equal(c->od_consecutive_failures, 6);
        assert_int_equal(c->od_base_ejection_ms, 10000);
        assert_int_equal(c->od_max_ejection_ms, 120000);
        assert_int_equal(c->od_max_ejection_percent, 25);
        assert_int_equal(c->limit_max_connections, 500);
        assert_int_equal(c->limit_max_pending, 600);
        assert_int_equal(c->limit_max_requests, 700);
        assert_int_equal(c->retry_max, 3);
        assert_int_equal(c->retry_backoff_base_ms, 10);
        assert_int_equal(c->retry_backoff_max_ms, 1000);
        assert_int_equal(c->retry_budget_percent, 30);
        assert_int_equal(c->retry_budget_min, 5);
        assert_string_equal(c->sd_type, "file");
        assert_string_equal(c->sd_file_path, "/etc/shunt/registry.json");
        assert_string_equal(c->k8s_kubeconfig, "/root/.kube/config");
        assert_string_equal(c->k8s_namespace, "shop");
        assert_string_equal(c->k8s_label_selector, "app=web");
        assert_string_equal(c->consul_address, "127.0.0.1:8500");
        assert_string_equal(c->consul_token, "s3cr3t-consul-token");
        assert_string_equal(c->consul_datacenter, "dc2");
        assert_string_equal(c->consul_token_file, "/run/secrets/consul/token");
        assert_string_equal(c->consul_ca_file, "/etc/consul.d/ca.pem");
        assert_string_equal(c->consul_cert_file, "/etc/consul.d/client.pem");
        assert_string_equal(c->consul_key_file, "/etc/consul.d/client-key.pem");
        assert_non_null(strstr(c->sd_clusters, "\"trust_domain\":\"dc2.example.org\""));
        assert_non_null(
            strstr(c->mtls_federation, "\"bundle_file\":\"/etc/shunt/bundles/dc2.json\""));
        assert_string_equal(c->dns_servers, "10.0.0.53,[fd00::53]:5353");
        assert_int_equal(c->dns_min_ttl_ms, 2000);
        assert_int_equal(c->dns_max_ttl_ms, 600000);
        assert_int_equal(c->dns_timeout_ms, 500);
        assert_int_equal(c->dns_attempts, 3);
        assert_int_equal(c->dns_fallback, 1);
        assert_int_equal(c->dns_fallback_after_ms, 45000);
        assert_non_null(strstr(c->dns_services, "\"cart.shop.example.org\""));
        assert_string_equal(c->trust_domain, "example.org");
        assert_int_equal(c->cert_rotation_s, 12 * 3600);
        assert_string_equal(c->ca_bundle, "/etc/shunt/ca.pem");
        assert_string_equal(c->certificate_file, "/etc/shunt/tls.crt");
        assert_string_equal(c->private_key_file, "/etc/shunt/tls.key");
        assert_int_equal(c->mtls_mode, MTLS_STRICT);
        assert_int_equal(c->forward_client_cert, FCC_APPEND_FORWARD);
        assert_string_equal(c->mtls_ca_dir, "/var/lib/shunt-shop/ca");
        assert_string_equal(c->mtls_namespace, "shop");
        assert_string_equal(c->mtls_service_name, "cart");
        assert_string_equal(c->mtls_service_account, "cart-sa");
        assert_string_equal(c->mtls_key_type, "rsa-2048");
        assert_int_equal(c->mtls_clock_skew_s, 120);
        assert_int_equal(c->mtls_handshake_timeout_ms, 3000);
        assert_int_equal(c->n_mtls_allow, 3);
        assert_int_equal(c->mtls_allow[0].port, 8080);
        assert_string_equal(c->mtls_allow[1].id, "spiffe://example.org/ns/ops/sa/probe");
        assert_int_equal(c->mtls_allow[2].port, 0); /* "*" */
        assert_string_equal(c->mtls_allow[2].id, "spiffe://example.org/ns/ops/sa/admin");
        assert_int_equal(c->authz_kubernetes, 0);
        assert_string_equal(c->authz_namespace, "shop");
        assert_string_equal(c->authz_labels_file, "/run/podinfo/labels");
        /* kept as compact JSON text for authz/ to parse */
        assert_string_equal(c->authorization_policies,
                            "[{\"name\":\"web\",\"ports\":[8080],\"deny\":[{\"namespace\":"
                            "\"legacy\"}],\"allow\":[{\"namespace\":\"shop\",\"service_"
                            "account\":\"web\"}]}]");
        assert_string_equal(c->lb_algorithm, "consistent_hash");
        assert_string_equal(c->lb_hash_key, "X-User-Id");
        assert_string_equal(c->redirect_cgroup, "/sys/fs/cgroup/unified/shop");
        assert_string_equal(c->bpf_pin_root, "/sys/fs/bpf/shunt-shop");
        assert_int_equal(c->bpf_shortcut, 0); /* off */
        assert_int_equal(c->tcp_splice, 0);   /* off */
        assert_int_equal(c->capture, CAPTURE_INIT);
        assert_string_equal(c->pod_uid, "0f3c2a1e-5b6d-4c7e-8f90-a1b2c3d4e5f6");
        assert_string_equal(c->cgroup_root, "/run/shunt/node-cgroup");
        assert_int_equal(config_socket_mark(c), 0); /* no SO_MARK without CAP_NET_ADMIN */
        assert_string_equal(c->path, FIX("full.json"));
        assert_string_equal(c->mtls_ca_token_file, "/var/run/secrets/shop/token");
        assert_int_equal(c->admin_mutations, ADMIN_MUTATIONS_TOKEN);
        assert_string_equal(c->admin_token_file, "/run/shop/admin-token");
        assert_string_equal(c->metrics_address, "::");
        assert_int_equal(c->metrics_port, 16020);
        assert_int_equal(c->metrics_max_series, 5000);
        assert_string_equal(c->metrics_histogram_buckets, "0.001,0.1,1");
        assert_int_equal(c->metrics_requests, 0);
        assert_int_equal(c->access_log_enabled, 0);
        assert_string_equal(c->access_log_sampling, "0.5");
        assert_true(c->access_log_ratio == 0.5);
        assert_string_equal(c->access_log_destination, "/var/log/shop/access.log");
        assert_int_equal(c->access_log_buffer_size, 1 << 20);
        assert_int_equal(c->tracing_enabled, 1);
        assert_string_equal(c->tracing_endpoint, "https://otel.shop:4318/v1/traces");
        assert_true(c->tracing_ratio == 0.25);
        assert_string_equal(c->tracing_service_name, "shop");
        assert_int_equal(c->tracing_queue_size, 4096);
        assert_int_equal(c->tracing_batch_size, 256);
        assert_int_equal(c->tracing_timeout_ms, 2000);
        assert_int_equal(c->tracing_flush_interval_ms, 500);
        assert_string_equal(c->upgrade_socket, "/run/shop/upgrade.sock");
        assert_int_equal(c->mode, 1); /* node */
        assert_string_equal(c->node_name, "node-7");
        assert_string_equal(c->lb_local_region, "eu-west-1");
        assert_string_equal(c->lb_failover, "eu-central-1,us-east-1");
        assert_int_equal(c->lb_overprovisioning_percent, 150);
        assert_int_equal(c->lb_tier[0].connect_ms, 15000);
        assert_int_equal(c->lb_tier[1].request_ms, 120000);
        assert_int_equal(c->lb_tier[1].max_retries, 7);
        assert_int_equal(c->lb_tier[0].consecutive_failures, 10);
        assert_int_equal(c->node_max_pods, 300);
        assert_int_equal(c->node_resolve_timeout_ms, 90000);
        assert_int_equal(c->node_identity_drain_s, 120);
        assert_int_equal(c->node_pod_max_connections, 64);
        assert_int_equal(c->node_pod_workers, 2);
        assert_int_equal(c->node_accept_timeout_ms, 15000);
        /* every key in the file is recorded as coming from it (but
         * mtls.ca_address, which excludes certificate_file: test_tls_ca_source) */
        for (size_t i = 0; i < c->n_origins; i++)
                if (strcmp(c->origins[i].key, "mtls.ca_address"))
                        assert_int_equal(c->origins[i].source, CONFIG_SRC_FILE);
        snapshot_unref(&c->snap);
}

static void test_json_alternatives(void **state)
{
        /* numbers where strings are also accepted, and --config=FILE */
        struct shunt_config *c =
            json_ok("{\"proxy_mark\": 1337, \"buffer_size\": 4096, "
                    "\"timeouts\": {\"connect\": 3}, \"mtls\": {\"cert_rotation\": "
                    "\"1h30m\"}, \"redirect\": \"off\", \"service_discovery\": {}}");
        assert_int_equal(c->proxy_mark, 1337);
        assert_int_equal(c->buffer_size, 4096);
        assert_int_equal(c->connect_timeout_ms, 3000);
        assert_int_equal(c->cert_rotation_s, 5400);
        assert_int_equal(c->redirect, REDIRECT_OFF);
        snapshot_unref(&c->snap);

        char *argv[] = {"shuntd", "--config=" FIX("minimal.json"), NULL};
        c = load_ok(argv, no_env);
        assert_int_equal(c->inbound_port, 17001);
        assert_int_equal(c->connect_timeout_ms, 2000);
        assert_int_equal(config_source_of(c, "inbound_port"), CONFIG_SRC_FILE);
        assert_int_equal(config_source_of(c, "outbound_port"), CONFIG_SRC_DEFAULT);
        assert_int_equal(config_source_of(c, "timeouts.connect"), CONFIG_SRC_FILE);
        assert_int_equal(config_source_of(c, "timeouts.request"), CONFIG_SRC_DEFAULT);
        assert_int_equal(config_source_of(c, "no.such.key"), -1);
        snapshot_unref(&c->snap);
}

static void test_env_overrides_file(void **state)
{
        char *argv[] = {"shuntd", "--config", FIX("full.json"), NULL};
        char *env[] = {"PATH=/usr/bin",
                       "SIDECAR_INBOUND_PORT=17001",
                       "SIDECAR_ADMIN_PORT=", /* empty: unset */
                       "SIDECAR_BIND_ADDRESS=10.1.2.3",
                       "SIDECAR_ADMIN_ADDRESS=::1",
                       "SHUNT_ADMIN_METRICS_ADDRESS=off",
                       "SHUNT_ADMIN_METRICS_PORT=17001", /* off: may equal another port */
                       "SHUNT_WORKERS=3",
                       "SHUNT_LOG_LEVEL=warn",
                       "SHUNT_REDIRECT=off",
                       "SHUNT_OUTBOUND_POLICY=allow_any",
                       "SHUNT_DRAIN_TIMEOUT=0",
                       "SHUNT_PROTOCOL_DETECTION_TIMEOUT=1.5s",
                       "SERVICE_DISCOVERY_TYPE=kubernetes",
                       "KUBECONFIG_PATH=/k/config",
                       "KUBERNETES_NAMESPACE=payments",
                       "KUBERNETES_LABEL_SELECTOR=tier=db",
                       "CONSUL_ADDRESS=consul:8500",
                       "CONSUL_TOKEN=env-token",
                       "CONSUL_DATACENTER=eu1",
                       "TRUST_DOMAIN=env.example",
                       "CERT_ROTATION_INTERVAL=2h",
                       "CA_BUNDLE_PATH=/env/ca.pem",
                       "CERTIFICATE_FILE=/env/tls.crt",
                       "PRIVATE_KEY_FILE=/env/tls.key",
                       "MTLS_MODE=disabled",
                       "LOAD_BALANCING_ALGORITHM=least_connections",
                       "CONNECT_TIMEOUT=7s",
                       "REQUEST_TIMEOUT=250ms",
                       "IDLE_TIMEOUT=2m",
                       "SHUNT_CAPTURE=self",
                       "SHUNT_PROXY_UID=2000",
                       "SHUNT_PROXY_MARK=0x77",
                       "SHUNT_EXCLUDE_INBOUND_PORTS=22,8443",
                       "SHUNT_EXCLUDE_OUTBOUND_PORTS=5432",
                       "SHUNT_EXCLUDE_OUTBOUND_CIDRS=10.0.0.0/8, fd00::/8",
                       "SIDECAR_INBOUND_PORT=1", /* a later duplicate is ignored, as getenv does */
                       NULL};
        struct shunt_config *c = load_ok(argv, env);
        assert_int_equal(c->inbound_port, 17001);
        assert_int_equal(c->admin_port, 16003);
        assert_int_equal(config_source_of(c, "admin_port"), CONFIG_SRC_FILE);
        assert_string_equal(c->bind_address, "10.1.2.3");
        assert_string_equal(c->admin_address, "::1");
        assert_string_equal(c->metrics_address, "off");
        assert_false(config_metrics_enabled(c));
        assert_int_equal(config_source_of(c, "admin.metrics_address"), CONFIG_SRC_ENV);
        assert_int_equal(c->workers, 3);
        assert_int_equal(c->log_level, LOG_WARN);
        assert_int_equal(c->redirect, REDIRECT_OFF);
        assert_int_equal(c->outbound_policy, OUTBOUND_ALLOW_ANY);
        assert_int_equal(c->drain_timeout_ms, 0);
        assert_int_equal(c->protocol_detection_timeout_ms, 1500);
        assert_string_equal(c->sd_type, "kubernetes");
        assert_string_equal(c->k8s_kubeconfig, "/k/config");
        assert_string_equal(c->k8s_namespace, "payments");
        assert_string_equal(c->k8s_label_selector, "tier=db");
        assert_string_equal(c->consul_address, "consul:8500");
        assert_string_equal(c->consul_token, "env-token");
        assert_string_equal(c->consul_datacenter, "eu1");
        assert_string_equal(c->trust_domain, "env.example");
        assert_int_equal(c->cert_rotation_s, 7200);
        assert_string_equal(c->ca_bundle, "/env/ca.pem");
        assert_string_equal(c->certificate_file, "/env/tls.crt");
        assert_string_equal(c->private_key_file, "/env/tls.key");
        assert_int_equal(c->mtls_mode, MTLS_DISABLED);
        assert_string_equal(c->lb_algorithm, "least_connections");
        assert_int_equal(c->connect_timeout_ms, 7000);
        assert_int_equal(c->request_timeout_ms, 250);
        assert_int_equal(c->idle_timeout_ms, 120000);
        /* what the injected pod passes to shuntd init and the proxy */
        assert_int_equal(c->capture, CAPTURE_SELF);
        assert_int_equal(c->proxy_uid, 2000);
        assert_int_equal(c->proxy_mark, 0x77);
        assert_int_equal(config_socket_mark(c), 0x77);
        assert_int_equal(c->n_exclude_inbound_ports, 2);
        assert_int_equal(c->exclude_inbound_ports[1], 8443);
        assert_int_equal(c->n_exclude_outbound_ports, 1);
        assert_int_equal(c->exclude_outbound_ports[0], 5432);
        assert_int_equal(c->n_exclude_outbound_cidrs, 2);
        assert_int_equal(c->exclude_outbound_cidrs[1].family, AF_INET6);
        assert_int_equal(config_source_of(c, "exclude_outbound_cidrs"), CONFIG_SRC_ENV);
        assert_int_equal(config_source_of(c, "inbound_port"), CONFIG_SRC_ENV);
        assert_int_equal(config_source_of(c, "mtls.trust_domain"), CONFIG_SRC_ENV);
        assert_int_equal(config_source_of(c, "load_balancing.hash_key"), CONFIG_SRC_FILE);
        snapshot_unref(&c->snap);
}

static void test_flags_override_env(void **state)
{
        char *argv[] = {"shuntd",
                        "--config",
                        FIX("full.json"),
                        "--inbound-port",
                        "18001",
                        "--timeouts.connect=9s",
                        "--exclude-outbound-cidrs",
                        "10.1.2.3/8, fd00::1/8",
                        "--exclude-outbound-ports=443,8443",
                        "--service-discovery.type",
                        "consul",
                        "--mtls.trust-domain",
                        "flag.example",
                        "--mtls.mode=permissive",
                        "--proxy-uid",
                        "-1",
                        "--proxy-mark=4096",
                        "--workers",
                        "5",
                        "--workers",
                        "6", /* last one wins */
                        "--service-discovery.consul.token",
                        "flag-token",
                        "--load-balancing.hash-key",
                        "cookie:session",
                        "--buffer-size=1MiB",
                        "--max-connections",
                        "1048576",
                        "--timeouts.idle-timeout",
                        "1h",
                        NULL};
        char *env[] = {"SIDECAR_INBOUND_PORT=17001",
                       "CONNECT_TIMEOUT=7s",
                       "TRUST_DOMAIN=env.example",
                       "SERVICE_DISCOVERY_TYPE=kubernetes",
                       "SHUNT_WORKERS=3",
                       "REQUEST_TIMEOUT=11s",
                       NULL};
        struct shunt_config *c = load_ok(argv, env);
        assert_int_equal(c->inbound_port, 18001);
        assert_int_equal(c->connect_timeout_ms, 9000);
        assert_int_equal(c->request_timeout_ms, 11000);
        assert_int_equal(c->n_exclude_outbound_cidrs, 2);
        assert_cidr(&c->exclude_outbound_cidrs[0], "10.0.0.0/8");
        assert_cidr(&c->exclude_outbound_cidrs[1], "fd00::/8");
        assert_int_equal(c->n_exclude_outbound_ports, 2);
        assert_int_equal(c->exclude_outbound_ports[1], 8443);
        assert_string_equal(c->sd_type, "consul");
        assert_string_equal(c->trust_domain, "flag.example");
        assert_int_equal(c->mtls_mode, MTLS_PERMISSIVE);
        assert_int_equal(c->proxy_uid, -1);
        assert_int_equal(c->proxy_mark, 4096);
        assert_int_equal(c->workers, 6);
        assert_string_equal(c->consul_token, "flag-token");
        assert_string_equal(c->lb_hash_key, "cookie:session");
        assert_int_equal(c->buffer_size, 1 << 20);
        assert_int_equal(c->max_connections, 1048576);
        assert_int_equal(c->idle_timeout_ms, 3600000);
        assert_int_equal(config_source_of(c, "inbound_port"), CONFIG_SRC_FLAG);
        assert_int_equal(config_source_of(c, "timeouts.connect"), CONFIG_SRC_FLAG);
        assert_int_equal(config_source_of(c, "timeouts.request"), CONFIG_SRC_ENV);
        assert_int_equal(config_source_of(c, "timeouts.idle_timeout"), CONFIG_SRC_FLAG);
        assert_int_equal(config_source_of(c, "mtls.ca_bundle"), CONFIG_SRC_FILE);
        snapshot_unref(&c->snap);
}

static const cJSON *dump_entry(const cJSON *root, const char *key, const char *source)
{
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, key);
        if (!e)
                print_error("dump lacks %s\n", key);
        assert_non_null(e);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(e, "source");
        assert_true(cJSON_IsString(s));
        assert_string_equal(s->valuestring, source);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "value");
        assert_non_null(v);
        return v;
}

static void test_dump(void **state)
{
        char *argv[] = {"shuntd", "--config", FIX("full.json"), "--timeouts.connect",
                        "1m30s",  NULL};
        char *env[] = {"TRUST_DOMAIN=env.example", NULL};
        struct shunt_config *c = load_ok(argv, env);
        char *s = config_dump_json(c);
        assert_non_null(s);
        assert_null(strstr(s, "s3cr3t"));
        cJSON *root = cJSON_Parse(s);
        assert_non_null(root);
        /* every key but the validated-only weights map */
        assert_int_equal(cJSON_GetArraySize(root), (int)c->n_origins - 1);
        const cJSON *v = dump_entry(root, "inbound_port", "file");
        assert_true(cJSON_IsNumber(v));
        assert_int_equal(v->valueint, 16001);
        v = dump_entry(root, "mtls.trust_domain", "env");
        assert_string_equal(v->valuestring, "env.example");
        v = dump_entry(root, "timeouts.connect", "flag");
        assert_string_equal(v->valuestring, "1m30s");
        v = dump_entry(root, "timeouts.request", "file");
        assert_string_equal(v->valuestring, "1m30s");
        v = dump_entry(root, "protocol_detection_timeout", "file");
        assert_string_equal(v->valuestring, "250ms");
        v = dump_entry(root, "mtls.cert_rotation", "file");
        assert_string_equal(v->valuestring, "12h");
        v = dump_entry(root, "service_discovery.consul.token", "file");
        assert_string_equal(v->valuestring, "<redacted>");
        v = dump_entry(root, "proxy_mark", "file");
        assert_string_equal(v->valuestring, "0x540");
        v = dump_entry(root, "mtls.mode", "file");
        assert_string_equal(v->valuestring, "strict");
        v = dump_entry(root, "log_level", "file");
        assert_string_equal(v->valuestring, "debug");
        v = dump_entry(root, "exclude_outbound_cidrs", "file");
        assert_int_equal(cJSON_GetArraySize(v), 3);
        assert_string_equal(cJSON_GetArrayItem(v, 2)->valuestring, "fd00::/8");
        v = dump_entry(root, "exclude_inbound_ports", "file");
        assert_int_equal(cJSON_GetArrayItem(v, 1)->valueint, 16003);
        v = dump_entry(root, "mtls.private_key_file", "file");
        assert_string_equal(v->valuestring, "/etc/shunt/tls.key");
        dump_entry(root, "workers", "file");
        dump_entry(root, "max_connections", "file");
        cJSON_Delete(root);
        free(s);
        snapshot_unref(&c->snap);

        /* defaults; an empty token is shown as empty, a set one never */
        char *argv2[] = {"shuntd", NULL};
        char *env2[] = {"CONSUL_TOKEN=hunter2", NULL};
        c = load_ok(argv2, no_env);
        s = config_dump_json(c);
        root = cJSON_Parse(s);
        v = dump_entry(root, "service_discovery.consul.token", "default");
        assert_string_equal(v->valuestring, "");
        v = dump_entry(root, "drain_timeout", "default");
        assert_string_equal(v->valuestring, "30s");
        v = dump_entry(root, "redirect", "default");
        assert_string_equal(v->valuestring, "auto");
        cJSON_Delete(root);
        free(s);
        snapshot_unref(&c->snap);

        c = load_ok(argv2, env2);
        s = config_dump_json(c);
        assert_null(strstr(s, "hunter2"));
        root = cJSON_Parse(s);
        v = dump_entry(root, "service_discovery.consul.token", "env");
        assert_string_equal(v->valuestring, "<redacted>");
        cJSON_Delete(root);
        free(s);
        snapshot_unref(&c->snap);
}

static void test_file_errors(void **state)
{
        char *a1[] = {"shuntd", "--config", FIX("bad_syntax.json"), NULL};
        load_err(a1, no_env, -EINVAL, "config: ", "bad_syntax.json:4: invalid JSON near '",
                 "\"admin_port\"", NULL);
        char *a2[] = {"shuntd", "--config", FIX("out_of_range_port.json"), NULL};
        load_err(a2, no_env, -EINVAL, "config: inbound_port: 70000: expected a port 1..65535",
                 NULL);
        char *a3[] = {"shuntd", "--config", FIX("duplicate_ports.json"), NULL};
        load_err(a3, no_env, -EINVAL,
                 "config: outbound_port: 15001: must differ from inbound_port (also 15001)", NULL);
        char *a4[] = {"shuntd", "--config", FIX("unknown_nested.json"), NULL};
        load_err(a4, no_env, -EINVAL,
                 "config: timeouts.conect: unknown key: allowed in timeouts: connect, request, "
                 "idle_timeout",
                 NULL);
        char *a5[] = {"shuntd", "--config", FIX("unknown_deep.json"), NULL};
        load_err(a5, no_env, -EINVAL,
                 "config: service_discovery.consul.tokn: unknown key: allowed in "
                 "service_discovery.consul: address, token, token_file, ca_file, cert_file, "
                 "key_file, datacenter",
                 NULL);
        char *a6[] = {"shuntd", "--config", FIX("wrong_type.json"), NULL};
        load_err(a6, no_env, -EINVAL,
                 "config: inbound_port: \"15001\": expected a port 1..65535 (in JSON: an integer)",
                 NULL);
        char *a7[] = {"shuntd", "--config", FIX("bad_enum.json"), NULL};
        load_err(a7, no_env, -EINVAL,
                 "config: load_balancing.algorithm: \"random\": allowed: round_robin, "
                 "least_connections, weighted, consistent_hash",
                 NULL);
        char *a8[] = {"shuntd", "--config", FIX("bad_cidr.json"), NULL};
        load_err(a8, no_env, -EINVAL,
                 "config: exclude_outbound_cidrs: \"10.0.0.0/33\": expected a CIDR",
                 "10.0.0.0/8 or fd00::/8 (prefix length at most 32 for IPv4, 128 for IPv6)", NULL);
        char *a9[] = {"shuntd", "--config", FIX("bad_duration.json"), NULL};
        load_err(a9, no_env, -EINVAL,
                 "config: timeouts.request: \"30 seconds\": expected a duration 1ms..24h", NULL);
        char *a10[] = {"shuntd", "--config", "/nonexistent/shunt.json", NULL};
        load_err(a10, no_env, -ENOENT,
                 "config: /nonexistent/shunt.json: cannot open: No such file or directory", NULL);
        char *a11[] = {"shuntd", "--config", SHUNT_FIXTURES "/config", NULL};
        load_err(a11, no_env, -EISDIR, "/config: cannot read: Is a directory", NULL);
}

static void test_json_errors(void **state)
{
        json_err("", ":1: invalid JSON: unexpected end of file", NULL);
        json_err("{\n\"inbound_port\": 1\n", ":3: invalid JSON: unexpected end of file", NULL);
        json_err("{\n\n  \"a\": tru }", ":3: invalid JSON near 'tru }'", NULL);
        json_err("{} x", ":1: invalid JSON near 'x'", NULL);
        json_err("[1, 2]", ":1: the top level must be a JSON object", NULL);
        json_err("{\"inbound_prot\": 1}",
                 "config: inbound_prot: unknown key: allowed at the top level",
                 "inbound_port, outbound_port", "load_balancing", ", access_log, tracing", NULL);
        json_err("{\"timeouts\": 5}",
                 "config: timeouts: 5: expected an object with keys connect, request, idle_timeout",
                 NULL);
        json_err("{\"timeouts\": {\"connect\": {\"x\": 1}}}",
                 "config: timeouts.connect: {\"x\":1}: expected a duration", NULL);
        json_err("{\"inbound_port\": 1, \"inbound_port\": 2}",
                 "config: inbound_port: duplicate key", NULL);
        json_err("{\"mtls\": {}, \"mtls\": {}}", "config: mtls: duplicate key", NULL);
        /* authorization.policies: an array (its content is authz/'s to judge) */
        json_err("{\"authorization\": {\"policies\": {\"name\": \"x\"}}}",
                 "config: authorization.policies: {\"name\":\"x\"}: expected a JSON array", NULL);
        json_err("{\"authorization\": {\"polices\": []}}",
                 "config: authorization.polices: unknown key: allowed in authorization: policies",
                 NULL);
        /* mtls.allow: ports, SPIFFE IDs, the trust domain, the bound */
        json_err("{\"mtls\": {\"allow\": [\"x\"]}}",
                 "config: mtls.allow: [\"x\"]: expected an object", NULL);
        json_err("{\"mtls\": {\"allow\": {\"0\": [\"spiffe://cluster.local/a\"]}}}",
                 "config: mtls.allow: ", "key \"0\" is not a port", NULL);
        json_err("{\"mtls\": {\"allow\": {\"80\": []}}}",
                 "config: mtls.allow: []: port \"80\": expected a non-empty array", NULL);
        json_err("{\"mtls\": {\"allow\": {\"80\": [\"spiffe://cluster.local\"]}}}",
                 "config: mtls.allow: \"spiffe://cluster.local\": port \"80\": not a usable "
                 "SPIFFE ID (no path",
                 NULL);
        json_err("{\"mtls\": {\"allow\": {\"80\": [\"spiffe://Cluster/ns/a\"]}}}",
                 "not a usable SPIFFE ID (trust domain has characters", NULL);
        {
                char big[8192];
                size_t n = (size_t)snprintf(big, sizeof(big), "{\"mtls\": {\"allow\": {\"80\": [");
                for (int i = 0; i <= CONFIG_MAX_ALLOW; i++)
                        n += (size_t)snprintf(big + n, sizeof(big) - n,
                                              "%s\"spiffe://cluster.local/ns/a/sa/s%d\"",
                                              i ? "," : "", i);
                snprintf(big + n, sizeof(big) - n, "]}}}");
                json_err(big, "more than 64 SPIFFE IDs in all", NULL);
        }
        json_err("{\"workers\": 1.5}", "config: workers: 1.5: expected an integer 0..256", NULL);
        json_err("{\"workers\": 257}", "config: workers: 257: expected an integer 0..256", NULL);
        json_err("{\"workers\": true}", "config: workers: true: expected an integer", NULL);
        json_err("{\"inbound_port\": 0}", "config: inbound_port: 0: expected a port 1..65535",
                 NULL);
        json_err("{\"inbound_port\": null}", "config: inbound_port: null: expected a port", NULL);
        json_err("{\"admin_port\": 15002}",
                 "config: admin_port: 15002: must differ from outbound_port (also 15002)", NULL);
        json_err("{\"admin\": {\"metrics_port\": 15003}}",
                 "config: admin.metrics_port: 15003: must differ from admin_port (also 15003)",
                 NULL);
        json_err("{\"admin\": {\"metrics_address\": \"any\"}}",
                 "config: admin.metrics_address: \"any\": expected an IPv4 or IPv6 address or off",
                 NULL);
        json_err("{\"bind_address\": \"off\"}",
                 "config: bind_address: \"off\": expected an IPv4 or IPv6 address", NULL);
        json_err("{\"bind_address\": \"localhost\"}",
                 "config: bind_address: \"localhost\": expected an IPv4 or IPv6 address", NULL);
        json_err("{\"bind_address\": 0}", "config: bind_address: 0: expected an IPv4 or IPv6",
                 "(in JSON: a string)", NULL);
        json_err("{\"redirect\": \"bpf\"}",
                 "config: redirect: \"bpf\": allowed: iptables, off, auto, ebpf", NULL);
        json_err("{\"redirect\": \"IPTABLES\"}",
                 "config: redirect: \"IPTABLES\": allowed: iptables, off, auto, ebpf", NULL);
        json_err("{\"mtls\": {\"mode\": \"STRICT\"}}",
                 "config: mtls.mode: \"STRICT\": allowed: strict, permissive, disabled", NULL);
        json_err("{\"outbound_policy\": \"deny\"}", "allowed: allow_any, registry_only", NULL);
        json_err("{\"log_level\": \"trace\"}", "allowed: debug, info, warn, error", NULL);
        json_err("{\"service_discovery\": {\"type\": \"etcd\"}}",
                 "config: service_discovery.type: \"etcd\": allowed: file, kubernetes, consul",
                 NULL);
        json_err("{\"protocol_detection_timeout\": \"11s\"}",
                 "config: protocol_detection_timeout: \"11s\": expected a duration 1ms..10s", NULL);
        json_err("{\"protocol_detection_timeout\": \"0ms\"}", "expected a duration 1ms..10s", NULL);
        json_err("{\"timeouts\": {\"connect\": \"0s\"}}",
                 "config: timeouts.connect: \"0s\": expected a duration 1ms..24h", NULL);
        json_err("{\"timeouts\": {\"idle_timeout\": \"-5s\"}}", "\"-5s\": expected a duration",
                 NULL);
        json_err(
            "{\"mtls\": {\"cert_rotation\": \"1.5s\"}}",
            "config: mtls.cert_rotation: \"1.5s\": expected a duration 1s..8760h in whole seconds",
            NULL);
        json_err("{\"mtls\": {\"trust_domain\": \"Example.org\"}}",
                 "config: mtls.trust_domain: \"Example.org\": expected a trust domain", NULL);
        json_err("{\"mtls\": {\"trust_domain\": \"\"}}",
                 "config: mtls.trust_domain: \"\": expected", NULL);
        json_err("{\"mtls\": {\"namespace\": \"a/b\"}}",
                 "config: mtls.namespace: \"a/b\": expected a name of letters", NULL);
        json_err("{\"mtls\": {\"namespace\": \"\"}}", "config: mtls.namespace: \"\": expected",
                 "not empty", NULL);
        json_err("{\"mtls\": {\"service_account\": \"..\"}}",
                 "config: mtls.service_account: \"..\": expected a name", NULL);
        json_err("{\"mtls\": {\"service_name\": \"a b\"}}",
                 "config: mtls.service_name: \"a b\": expected a name", NULL);
        json_err("{\"mtls\": {\"key_type\": \"ed25519\"}}",
                 "config: mtls.key_type: \"ed25519\": allowed: ecdsa-p256, rsa-2048", NULL);
        json_err("{\"mtls\": {\"handshake_timeout\": \"0s\"}}",
                 "config: mtls.handshake_timeout: \"0s\": expected a duration 1ms..1h", NULL);
        json_err("{\"mtls\": {\"clock_skew\": \"25h\"}}",
                 "config: mtls.clock_skew: \"25h\": expected a duration", NULL);
        json_err("{\"mtls\": {\"certificate_file\": \"/c.pem\"}}",
                 "config: mtls.private_key_file (built-in default): \"\": required when "
                 "mtls.certificate_file is set",
                 NULL);
        json_err("{\"mtls\": {\"certificate_file\": \"/c.pem\", \"private_key_file\": \"/k.pem\"}}",
                 "config: mtls.ca_bundle (built-in default): \"\": required when "
                 "mtls.certificate_file is set",
                 NULL);
        json_err(
            "{\"service_discovery\": {\"kubernetes\": {\"namespace\": \"\"}}}",
            "config: service_discovery.kubernetes.namespace: \"\": expected a non-empty string",
            NULL);
        json_err("{\"proxy_mark\": 0}", "config: proxy_mark: 0: expected a mark 1..0xffffffff",
                 NULL);
        json_err("{\"proxy_mark\": \"0x\"}", "config: proxy_mark: \"0x\": expected a mark", NULL);
        json_err("{\"proxy_mark\": \"0x1g\"}", "expected a mark", NULL);
        json_err("{\"proxy_mark\": \"0x100000000\"}", "expected a mark", NULL);
        json_err("{\"proxy_uid\": -2}", "config: proxy_uid: -2: expected an integer -1..", NULL);
        json_err("{\"buffer_size\": 1024}",
                 "config: buffer_size: 1024: expected a size in bytes 4096..16777216", NULL);
        json_err("{\"buffer_size\": \"64 KiB\"}", "config: buffer_size: \"64 KiB\": expected",
                 NULL);
        json_err("{\"buffer_size\": \"32MiB\"}", "expected a size in bytes 4096..16777216", NULL);
        json_err("{\"max_connections\": 0}",
                 "config: max_connections: 0: expected an integer 1..1048576", NULL);
        json_err("{\"exclude_inbound_ports\": 22}",
                 "config: exclude_inbound_ports: 22: expected at most 32 ports",
                 "(in JSON: an array)", NULL);
        json_err(
            "{\"exclude_inbound_ports\": [22, \"80\"]}",
            "config: exclude_inbound_ports: \"80\": expected a port 1..65535 (in JSON: an integer)",
            NULL);
        json_err("{\"exclude_outbound_ports\": [0]}",
                 "config: exclude_outbound_ports: 0: expected a port 1..65535", NULL);
        json_err("{\"exclude_outbound_ports\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,"
                 "21,22,23,24,25,26,27,28,29,30,31,32,33]}",
                 "config: exclude_outbound_ports: 33: too many entries: at most 32", NULL);
        json_err("{\"exclude_outbound_cidrs\": [\"10.0.0.0/8\", 10]}",
                 "config: exclude_outbound_cidrs: 10: expected a CIDR", "(in JSON: a string)",
                 NULL);
        json_err("{\"load_balancing\": {\"weights\": {\"a\": -1}}}",
                 "config: load_balancing.weights: -1: weight of \"a\": expected an object of name: "
                 "integer weight 0..65535",
                 NULL);
        json_err("{\"load_balancing\": {\"weights\": [1]}}",
                 "config: load_balancing.weights: [1]: expected an object", NULL);
        json_err("{\"load_balancing\": {\"weights\": {\"a\": \"1\"}}}", "weight of \"a\"", NULL);
        /* a secret's value never appears in an error */
        char long_token[300];
        memset(long_token, 'k', sizeof(long_token));
        long_token[sizeof(long_token) - 1] = '\0';
        char json[512];
        snprintf(json, sizeof(json), "{\"service_discovery\": {\"consul\": {\"token\": \"%s\"}}}",
                 long_token);
        json_err(json,
                 "config: service_discovery.consul.token: <redacted>: expected a string of at "
                 "most 127 bytes",
                 NULL);
        char long_path[400];
        memset(long_path, 'p', sizeof(long_path));
        long_path[300] = '\0';
        snprintf(json, sizeof(json), "{\"mtls\": {\"ca_bundle\": \"%s\"}}", long_path);
        json_err(json, "config: mtls.ca_bundle: \"ppp",
                 "...: expected a string of at most 255 bytes", NULL);
        /* access_log and tracing: ratios, the destination, the endpoint */
        json_err("{\"tracing\": {\"sampling\": \"1.5\"}}", "tracing.sampling", "1.5",
                 "a number from 0 to 1", NULL);
        json_err("{\"access_log\": {\"sampling\": \"half\"}}", "access_log.sampling", "half",
                 "a number from 0 to 1", NULL);
        json_err("{\"access_log\": {\"destination\": \"logs/a.log\"}}", "access_log.destination",
                 "stdout, stderr or an absolute path", NULL);
        json_err("{\"tracing\": {\"endpoint\": \"otel:4318\"}}", "tracing.endpoint",
                 "an http:// or https:// URL", NULL);
}

static void test_env_errors(void **state)
{
        char *argv[] = {"shuntd", NULL};
        char *e1[] = {"TRUST_DOMAIN=Bad Domain!", NULL};
        load_err(argv, e1, -EINVAL,
                 "config: TRUST_DOMAIN (env): Bad Domain!: expected a trust domain", NULL);
        char *e2[] = {"SIDECAR_INBOUND_PORT=abc", NULL};
        load_err(argv, e2, -EINVAL,
                 "config: SIDECAR_INBOUND_PORT (env): abc: expected a port 1..65535", NULL);
        char *e3[] = {"SIDECAR_INBOUND_PORT=15001x", NULL};
        load_err(argv, e3, -EINVAL, "SIDECAR_INBOUND_PORT (env): 15001x: expected a port", NULL);
        char *e4[] = {"SIDECAR_OUTBOUND_PORT= 15002", NULL};
        load_err(argv, e4, -EINVAL, "SIDECAR_OUTBOUND_PORT (env):  15002: expected a port", NULL);
        char *e5[] = {"CONNECT_TIMEOUT=5 s", NULL};
        load_err(argv, e5, -EINVAL, "config: CONNECT_TIMEOUT (env): 5 s: expected a duration",
                 NULL);
        char *e6[] = {"LOAD_BALANCING_ALGORITHM=random", NULL};
        load_err(argv, e6, -EINVAL,
                 "config: LOAD_BALANCING_ALGORITHM (env): random: allowed: round_robin, "
                 "least_connections, weighted, consistent_hash",
                 NULL);
        char *e_cap[] = {"SHUNT_CAPTURE=sidecar", NULL};
        load_err(argv, e_cap, -EINVAL, "config: SHUNT_CAPTURE (env): sidecar: allowed: self, init",
                 NULL);
        char *e_cidr[] = {"SHUNT_EXCLUDE_OUTBOUND_CIDRS=10.0.0.0/33", NULL};
        load_err(argv, e_cidr, -EINVAL, "config: SHUNT_EXCLUDE_OUTBOUND_CIDRS (env): ", NULL);
        char *e7[] = {"SHUNT_REDIRECT=bpf", NULL};
        load_err(argv, e7, -EINVAL,
                 "config: SHUNT_REDIRECT (env): bpf: allowed: iptables, off, auto, ebpf", NULL);
        char *e8[] = {"SIDECAR_ADMIN_PORT=15001", NULL};
        load_err(
            argv, e8, -EINVAL,
            "config: SIDECAR_ADMIN_PORT (env): 15001: must differ from inbound_port (also 15001)",
            NULL);
        char *e9[] = {"SHUNT_WORKERS=-1", NULL};
        load_err(argv, e9, -EINVAL, "config: SHUNT_WORKERS (env): -1: expected an integer 0..256",
                 NULL);
        char *e10[] = {"SIDECAR_BIND_ADDRESS=1.2.3.256", NULL};
        load_err(argv, e10, -EINVAL,
                 "config: SIDECAR_BIND_ADDRESS (env): 1.2.3.256: expected an IPv4", NULL);
        char *e11[] = {"MTLS_MODE=mutual", NULL};
        load_err(argv, e11, -EINVAL,
                 "config: MTLS_MODE (env): mutual: allowed: strict, permissive, disabled", NULL);
        char *e12[] = {"CERT_ROTATION_INTERVAL=0s", NULL};
        load_err(argv, e12, -EINVAL,
                 "config: CERT_ROTATION_INTERVAL (env): 0s: expected a duration 1s..", NULL);
        char *e13[] = {"SHUNT_LOG_LEVEL=verbose", NULL};
        load_err(argv, e13, -EINVAL, "config: SHUNT_LOG_LEVEL (env): verbose: allowed: debug",
                 NULL);
        char *e14[] = {"CONSUL_TOKEN=\x01secret", "SIDECAR_INBOUND_PORT=\x01", NULL};
        load_err(argv, e14, -EINVAL, "config: SIDECAR_INBOUND_PORT (env): \\x01: expected a port",
                 NULL);
}

static void test_flag_errors(void **state)
{
        char *a1[] = {"shuntd", "--inbound-port", "70000", NULL};
        load_err(a1, no_env, -EINVAL, "config: --inbound-port: 70000: expected a port 1..65535",
                 NULL);
        char *hb[] = {"shuntd", "--metrics.histogram-buckets", "0.1,0.01", NULL};
        load_err(
            hb, no_env, -EINVAL,
            "config: --metrics.histogram-buckets: 0.1,0.01: bounds must be strictly increasing",
            NULL);
        char *a2[] = {"shuntd", "--inbound-port", NULL};
        load_err(a2, no_env, -EINVAL,
                 "config: --inbound-port: missing value: expected a port 1..65535", NULL);
        char *a3[] = {"shuntd", "--inbound-port", "--workers", "2", NULL};
        load_err(a3, no_env, -EINVAL, "config: --inbound-port: missing value", NULL);
        char *a4[] = {"shuntd", "--inbound-prot", "15001", NULL};
        load_err(a4, no_env, -EINVAL, "config: --inbound-prot: unknown flag", NULL);
        char *a5[] = {"shuntd", "--inbound_port=15001", NULL};
        load_err(a5, no_env, -EINVAL, "config: --inbound_port: unknown flag", NULL);
        char *a6[] = {"shuntd", "15001", NULL};
        load_err(a6, no_env, -EINVAL, "config: 15001: unexpected argument", NULL);
        char *a7[] = {"shuntd", "-v", NULL};
        load_err(a7, no_env, -EINVAL, "config: -v: unexpected argument", NULL);
        char *a8[] = {"shuntd", "--config", NULL};
        load_err(a8, no_env, -EINVAL, "config: --config: missing value: expected a file name",
                 NULL);
        char *a9[] = {"shuntd", "--config=", NULL};
        load_err(a9, no_env, -EINVAL, "config: --config: empty value", NULL);
        char *a10[] = {"shuntd", "--timeouts.connect=forever", NULL};
        load_err(a10, no_env, -EINVAL,
                 "config: --timeouts.connect: forever: expected a duration 1ms..24h", NULL);
        char *r1[] = {"shuntd", "--outlier-detection.max-ejection-percent=101", NULL};
        load_err(r1, no_env, -EINVAL, "--outlier-detection.max-ejection-percent: 101", "0..100",
                 NULL);
        char *r2[] = {"shuntd", "--circuit-breaker.consecutive-failures=0", NULL};
        load_err(r2, no_env, -EINVAL, "--circuit-breaker.consecutive-failures: 0", NULL);
        char *r3[] = {"shuntd", "--outlier-detection.base-ejection-time=1m",
                      "--outlier-detection.max-ejection-time=30s", NULL};
        load_err(r3, no_env, -EINVAL, "--outlier-detection.max-ejection-time: 30000ms",
                 "at least outlier_detection.base_ejection_time", NULL);
        char *r4[] = {"shuntd", "--retries.backoff-max=10ms", NULL};
        load_err(r4, no_env, -EINVAL, "--retries.backoff-max: 10ms",
                 "at least retries.backoff_base", NULL);
        char *r5[] = {"shuntd", "--retries.max-retries=11", NULL};
        load_err(r5, no_env, -EINVAL, "--retries.max-retries: 11", NULL);
        char *f1[] = {"shuntd", "--load-balancing.failover=r2", NULL};
        load_err(f1, no_env, -EINVAL,
                 "--load-balancing.failover: r2:", "needs load_balancing.local_region", NULL);
        char *f2[] = {"shuntd", "--load-balancing.local-region=r1",
                      "--load-balancing.failover=r2,r1", NULL};
        load_err(f2, no_env, -EINVAL, "lists load_balancing.local_region", NULL);
        char *f3[] = {"shuntd", "--load-balancing.local-region=r1",
                      "--load-balancing.failover=r2,r3,r4,r5,r6,r7", NULL};
        load_err(f3, no_env, -EINVAL, "at most 5 regions", NULL);
        char *f4[] = {"shuntd", "--load-balancing.local-region=r1",
                      "--load-balancing.failover=r2,,r3", NULL};
        load_err(f4, no_env, -EINVAL, "1..63 bytes", NULL);
        char *f5[] = {"shuntd", "--load-balancing.overprovisioning-percent=99", NULL};
        load_err(f5, no_env, -EINVAL, "--load-balancing.overprovisioning-percent: 99", NULL);
        char *a11[] = {"shuntd", "--exclude-outbound-cidrs", "10.0.0.0/8,,fd00::/8", NULL};
        load_err(a11, no_env, -EINVAL,
                 "config: --exclude-outbound-cidrs: 10.0.0.0/8,,fd00::/8: expected a CIDR like",
                 NULL);
        char *a12[] = {"shuntd", "--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/129", NULL};
        load_err(a12, no_env, -EINVAL,
                 "config: --exclude-outbound-cidrs: fd00::/129: expected a CIDR", NULL);
        char *a19[] = {
            "shuntd", "--exclude-inbound-ports",
            "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,"
            "30,31,32,33",
            NULL};
        load_err(a19, no_env, -EINVAL,
                 "config: --exclude-inbound-ports: 33: too many entries: at most 32", NULL);
        char *a20[] = {"shuntd", "--exclude-inbound-ports", "22,ssh", NULL};
        load_err(a20, no_env, -EINVAL,
                 "config: --exclude-inbound-ports: ssh: expected a port 1..65535", NULL);
        char *a13[] = {"shuntd", "--load-balancing.weights", "{}", NULL};
        load_err(a13, no_env, -EINVAL, "config: --load-balancing.weights: unknown flag", NULL);
        char *a14[] = {"shuntd", "--workers=", NULL};
        load_err(a14, no_env, -EINVAL, "config: --workers: \"\": expected an integer 0..256", NULL);
        char *a15[] = {"shuntd", "--outbound-port", "15003", NULL};
        load_err(a15, no_env, -EINVAL,
                 "config: --outbound-port: 15003: must differ from admin_port (also 15003)", NULL);
        /* flag errors are reported before the file is read */
        char *a16[] = {"shuntd", "--config", "/nonexistent.json", "--bogus", NULL};
        load_err(a16, no_env, -EINVAL, "config: --bogus: unknown flag", NULL);
        char *a17[] = {"shuntd", "--", NULL};
        load_err(a17, no_env, -EINVAL, "config: --: unexpected argument", NULL);
        char *afm[] = {"shuntd", "--redirect", "iptables", "--failure-mode", "open", NULL};
        load_err(afm, no_env, -EINVAL,
                 "config: --failure-mode: open: needs eBPF capture (redirect ebpf or auto): "
                 "iptables capture can only fail closed",
                 NULL);
        char *afn[] = {"shuntd", "--mode", "node", "--failure-mode", "open", NULL};
        load_err(afn, no_env, -EINVAL,
                 "config: --failure-mode: open: not with mode node: a pod's capture stays while "
                 "no node agent runs and fails closed",
                 NULL);
        char *a18[] = {"shuntd", "--redirect=xdp", NULL};
        load_err(a18, no_env, -EINVAL,
                 "config: --redirect: xdp: allowed: iptables, off, auto, ebpf", NULL);
}

static void test_reload(void **state)
{
        char *path = tmp_file("{\"inbound_port\": 16001}");
        char *argv[] = {"shuntd", "--config", path, NULL};
        struct shunt_config *c = load_ok(argv, no_env);
        assert_int_equal(c->inbound_port, 16001);

        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs("{\"inbound_port\": 16011, \"timeouts\": {\"connect\": \"1s\"}}", f);
        fclose(f);
        struct shunt_config *n = NULL;
        char err[256] = "";
        assert_int_equal(config_reload(c, 3, argv, no_env, &n, err, sizeof(err)), 0);
        /* Listener ports are taken at start: the running value is kept, with
         * its provenance; what applies on reload does. */
        assert_int_equal(n->inbound_port, 16001);
        assert_int_equal(config_source_of(n, "inbound_port"), CONFIG_SRC_FILE);
        assert_int_equal(n->connect_timeout_ms, 1000);
        assert_int_equal(config_source_of(n, "timeouts.connect"), CONFIG_SRC_FILE);
        assert_int_equal(c->inbound_port, 16001); /* the old one is untouched */
        snapshot_unref(&n->snap);

        /* mTLS mode, discovery and capture exclusions under capture init are
         * kept too; under capture self the exclusions apply. */
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("{\"inbound_port\": 16001, \"mtls\": {\"mode\": \"disabled\"},"
              " \"service_discovery\": {\"type\": \"consul\"},"
              " \"exclude_outbound_ports\": [5432], \"max_connections\": 10}",
              f);
        fclose(f);
        assert_int_equal(config_reload(c, 3, argv, no_env, &n, err, sizeof(err)), 0);
        assert_int_equal(n->mtls_mode, c->mtls_mode);
        assert_int_equal(config_source_of(n, "mtls.mode"), CONFIG_SRC_DEFAULT);
        assert_string_equal(n->sd_type, "file");
        assert_int_equal(n->n_exclude_outbound_ports, 1);
        assert_int_equal(n->exclude_outbound_ports[0], 5432);
        assert_int_equal(n->max_connections, 10);
        snapshot_unref(&n->snap);
        char *argv_init[] = {"shuntd", "--config", path, "--capture", "init", NULL};
        struct shunt_config *ci = load_ok(argv_init, no_env);
        assert_int_equal(ci->n_exclude_outbound_ports, 1);
        f = fopen(path, "w");
        assert_non_null(f);
        fputs("{\"inbound_port\": 16001, \"exclude_outbound_ports\": [5432, 6379]}", f);
        fclose(f);
        assert_int_equal(config_reload(ci, 5, argv_init, no_env, &n, err, sizeof(err)), 0);
        assert_int_equal(n->n_exclude_outbound_ports, 1);
        snapshot_unref(&n->snap);
        snapshot_unref(&ci->snap);

        f = fopen(path, "w");
        assert_non_null(f);
        fputs("{\"inbound_port\": 16011,\n \"workers\": }", f);
        fclose(f);
        n = (struct shunt_config *)0x1;
        assert_int_equal(config_reload(c, 3, argv, no_env, &n, err, sizeof(err)), -EINVAL);
        assert_null(n);
        assert_non_null(strstr(err, ":2: invalid JSON near '}'"));
        assert_int_equal(c->inbound_port, 16001);

        /* a reference taken by a reader keeps it alive */
        snapshot_ref(&c->snap);
        snapshot_unref(&c->snap);
        assert_int_equal(c->inbound_port, 16001);
        snapshot_unref(&c->snap);
        unlink(path);
        free(path);
}

static void test_duration(void **state)
{
        static const struct {
                const char *in;
                int rc;
                uint64_t ms;
        } cases[] = {
            {"100ms", 0, 100},
            {"1.5s", 0, 1500},
            {"2m", 0, 120000},
            {"1h", 0, 3600000},
            {"250us", 0, 1},
            {"1000us", 0, 1},
            {"1001us", 0, 2},
            {"1ns", 0, 1},
            {"\xc2\xb5s", -EINVAL, 0},
            {"3\xc2\xb5s", 0, 1},
            {"1m30s", 0, 90000},
            {"1h2m3s4ms", 0, 3723004},
            {"1s500ms", 0, 1500},
            {"0.25h", 0, 900000},
            {".5s", 0, 500},
            {"1.s", 0, 1000},
            {"30", 0, 30000},
            {"0", 0, 0},
            {"0s", 0, 0},
            {"007s", 0, 7000},
            {"1.0000001s", 0, 1001}, /* rounded up */
            {"0.0000000001s", 0, 1}, /* any positive amount is at least 1ms */
            {"0.000s", 0, 0},
            {"", -EINVAL, 0},
            {"s", -EINVAL, 0},
            {".s", -EINVAL, 0},
            {"-1s", -EINVAL, 0},
            {"+1s", -EINVAL, 0},
            {"-5", -EINVAL, 0},
            {"1.5", -EINVAL, 0}, /* a bare number must be an integer */
            {"10x", -EINVAL, 0},
            {"10sec", -EINVAL, 0},
            {"1m30", -EINVAL, 0},
            {"5 s", -EINVAL, 0},
            {" 5s", -EINVAL, 0},
            {"5s ", -EINVAL, 0},
            {"1e3s", -EINVAL, 0},
            {"1S", -EINVAL, 0},
            /* the bound is 2^64 ns (584 years), whatever the spelling */
            {"18446744073", 0, 18446744073000ULL},
            {"18446744074", -EINVAL, 0},
            {"18446744073s", 0, 18446744073000ULL},
            {"18446744074s", -EINVAL, 0},
            {"18446744073709551615", -EINVAL, 0},
            {"99999999999999999999999h", -EINVAL, 0},
            {"5124096h", -EINVAL, 0}, /* > 2^64 ns */
            {"5124095h", 0, 5124095ULL * 3600000},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                uint64_t ms = 12345;
                int rc = parse_duration_ms(cases[i].in, &ms);
                if (rc != cases[i].rc || (!rc && ms != cases[i].ms))
                        print_error("parse_duration_ms(\"%s\") = %d, %llu\n", cases[i].in, rc,
                                    (unsigned long long)ms);
                assert_int_equal(rc, cases[i].rc);
                if (!rc)
                        assert_int_equal(ms, cases[i].ms);
                else
                        assert_int_equal(ms, 12345); /* untouched on error */
        }
        uint64_t ms;
        assert_int_equal(parse_duration_ms(NULL, &ms), -EINVAL);
}

static void test_cidr(void **state)
{
        static const struct {
                const char *in;
                const char *out; /* NULL: rejected */
        } cases[] = {
            {"10.0.0.0/8", "10.0.0.0/8"},
            {"10.1.2.3/8", "10.0.0.0/8"}, /* host bits cleared */
            {"192.168.1.77/26", "192.168.1.64/26"},
            {"10.1.2.3", "10.1.2.3/32"},
            {"0.0.0.0/0", "0.0.0.0/0"},
            {"255.255.255.255/31", "255.255.255.254/31"},
            {"fd00::/8", "fd00::/8"},
            {"fd12:3456::1/8", "fd00::/8"},
            {"2001:db8::ff/127", "2001:db8::fe/127"},
            {"::1", "::1/128"},
            {"::/0", "::/0"},
            {"2001:db8:1:2:3:4:5:6/61", "2001:db8:1::/61"},
            {"10.0.0.0/33", NULL},
            {"fd00::/129", NULL},
            {"10.0.0.0/", NULL},
            {"10.0.0.0/-1", NULL},
            {"10.0.0.0/+8", NULL},
            {"10.0.0.0/8x", NULL},
            {"10.0.0.0/8/8", NULL},
            {"10.0.0.0/1000", NULL},
            {"10.0.0/8", NULL},
            {"10.0.0.256/8", NULL},
            {"/8", NULL},
            {"", NULL},
            {"host.example/8", NULL},
            {" 10.0.0.0/8", NULL},
            {"fd00::/08", "fd00::/8"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct cidr c;
                int rc = parse_cidr(cases[i].in, &c);
                if (!cases[i].out) {
                        if (rc != -EINVAL)
                                print_error("parse_cidr(\"%s\") accepted\n", cases[i].in);
                        assert_int_equal(rc, -EINVAL);
                        continue;
                }
                if (rc)
                        print_error("parse_cidr(\"%s\") = %d\n", cases[i].in, rc);
                assert_int_equal(rc, 0);
                assert_cidr(&c, cases[i].out);
        }
        struct cidr c;
        assert_int_equal(parse_cidr("10.0.0.0/8", &c), 0);
        assert_int_equal(c.family, AF_INET);
        assert_int_equal(parse_cidr("fd00::/8", &c), 0);
        assert_int_equal(c.family, AF_INET6);
        assert_int_equal(c.prefix_len, 8);
}

static void test_usage_and_names(void **state)
{
        const char *u = config_usage();
        static const char *const want[] = {
            "--config FILE",
            "--inbound-port PORT\n      expected a port 1..65535; env SIDECAR_INBOUND_PORT; "
            "default \"15001\"\n",
            "SIDECAR_INBOUND_PORT",
            "--timeouts.connect DURATION",
            "CONNECT_TIMEOUT",
            "--timeouts.idle-timeout",
            "--service-discovery.type NAME",
            "--service-discovery.file.path",
            "--service-discovery.kubernetes.kubeconfig-path",
            "--service-discovery.consul.token",
            "--mtls.trust-domain",
            "--mtls.cert-rotation",
            "--load-balancing.hash-key",
            "--exclude-outbound-cidrs CIDR,...",
            "--protocol-detection-timeout",
            "SHUNT_PROTOCOL_DETECTION_TIMEOUT",
            "MTLS_MODE",
            "allowed: round_robin, least_connections, weighted, consistent_hash",
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                if (!strstr(u, want[i]))
                        print_error("usage lacks %s\n", want[i]);
                assert_non_null(strstr(u, want[i]));
        }
        assert_null(strstr(u, "weights"));
        assert_ptr_equal(config_usage(), u);

        assert_string_equal(redirect_mode_name(REDIRECT_IPTABLES), "iptables");
        assert_string_equal(redirect_mode_name(REDIRECT_OFF), "off");
        assert_string_equal(redirect_mode_name(REDIRECT_AUTO), "auto");
        assert_string_equal(redirect_mode_name(REDIRECT_EBPF), "ebpf");
        assert_string_equal(outbound_policy_name(OUTBOUND_ALLOW_ANY), "allow_any");
        assert_string_equal(outbound_policy_name(OUTBOUND_REGISTRY_ONLY), "registry_only");
        assert_string_equal(mtls_mode_name(MTLS_STRICT), "strict");
        assert_string_equal(mtls_mode_name(MTLS_PERMISSIVE), "permissive");
        assert_string_equal(mtls_mode_name(MTLS_DISABLED), "disabled");
        assert_string_equal(mtls_mode_name((enum mtls_mode)7), "?");
        assert_string_equal(config_source_name(CONFIG_SRC_FLAG), "flag");
        assert_string_equal(config_source_name(CONFIG_SRC_ENV), "env");
}

static void test_small_error_buffer(void **state)
{
        char *argv[] = {"shuntd", "--inbound-port", "x", NULL};
        struct shunt_config *c;
        char err[12];
        assert_int_equal(config_load(3, argv, no_env, &c, err, sizeof(err)), -EINVAL);
        assert_string_equal(err, "config: --i");
        assert_int_equal(config_load(3, argv, no_env, &c, NULL, 0), -EINVAL);
        assert_null(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_defaults),
            cmocka_unit_test(test_admin_port_follows_default_excludes),
            cmocka_unit_test(test_file_values),
            cmocka_unit_test(test_json_alternatives),
            cmocka_unit_test(test_env_overrides_file),
            cmocka_unit_test(test_flags_override_env),
            cmocka_unit_test(test_dump),
            cmocka_unit_test(test_file_errors),
            cmocka_unit_test(test_json_errors),
            cmocka_unit_test(test_env_errors),
            cmocka_unit_test(test_flag_errors),
            cmocka_unit_test(test_reload),
            cmocka_unit_test(test_duration),
            cmocka_unit_test(test_cidr),
            cmocka_unit_test(test_usage_and_names),
            cmocka_unit_test(test_small_error_buffer),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

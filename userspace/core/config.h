/* SPDX-License-Identifier: Apache-2.0 */
/* Configuration: defaults < JSON file (--config) < environment < flags.
 *
 * Every key remembers where its value came from, for the /config dump.
 * Validation rejects a bad value with one line naming the key, the value and
 * what is allowed; nothing is silently replaced by a default. */
#ifndef SHUNT_CORE_CONFIG_H
#define SHUNT_CORE_CONFIG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "core/snapshot.h"

#define CONFIG_MAX_EXCLUDES 32
#define CONFIG_PATH_MAX     256
#define CONFIG_STR_MAX      128
#define CONFIG_MAX_ALLOW    64 /* mtls.allow entries in all */

enum redirect_mode {
        REDIRECT_IPTABLES = 0,
        REDIRECT_OFF,
        REDIRECT_AUTO, /* eBPF when the kernel can (see intercept/bpfcap.h), else iptables */
        REDIRECT_EBPF,
};

enum failure_mode {
        FAILURE_CLOSED = 0,
        FAILURE_OPEN,
};

/* Who installs the capture rules or programs. */
enum admin_mutations {
        ADMIN_MUTATIONS_OFF = 0,
        ADMIN_MUTATIONS_TOKEN,
};

enum capture_mode {
        CAPTURE_SELF = 0, /* shuntd, at start; removed at exit (needs CAP_NET_ADMIN) */
        CAPTURE_INIT,     /* `shuntd init` before shuntd starts; shuntd changes nothing */
};

/* The uid shuntd runs as in a pod (docs/architecture.md, "Names and
 * interfaces"); what capture by `shuntd init` excludes when proxy_uid is
 * automatic. */
#define SHUNT_PROXY_UID_DEFAULT 1337

enum outbound_policy {
        OUTBOUND_ALLOW_ANY = 0,
        OUTBOUND_REGISTRY_ONLY,
};

enum mtls_mode {
        MTLS_STRICT = 0,
        MTLS_PERMISSIVE,
        MTLS_DISABLED,
};

/* mtls.forward_client_cert: what an inbound request's X-Forwarded-Client-Cert
 * becomes on its way to the application (proxy/xfcc.h). */
enum forward_client_cert {
        FCC_SANITIZE = 0, /* removed */
        FCC_SANITIZE_SET, /* removed, then set from the verified peer certificate */
        FCC_APPEND_FORWARD,
        FCC_FORWARD_ONLY,
};

/* An IPv4 or IPv6 prefix, e.g. 10.0.0.0/8 or fd00::/8. */
struct cidr {
        int family; /* AF_INET or AF_INET6 */
        union {
                struct in_addr v4;
                struct in6_addr v6;
        } addr;
        uint8_t prefix_len;
};

/* Where an effective value came from. */
enum config_source {
        CONFIG_SRC_DEFAULT = 0,
        CONFIG_SRC_FILE,
        CONFIG_SRC_ENV,
        CONFIG_SRC_FLAG,
};

/* Provenance of one key: cfg->origins has one entry per key, in the order of
 * config_usage(). key is the dotted JSON path (static storage). */
struct config_origin {
        const char *key;
        enum config_source source;
};

struct shunt_config {
        struct snapshot snap; /* published to workers through a snapshot slot */

        /* network */
        uint16_t inbound_port;  /* inbound_port, SIDECAR_INBOUND_PORT, 15001 */
        uint16_t outbound_port; /* outbound_port, SIDECAR_OUTBOUND_PORT, 15002 */
        uint16_t admin_port;    /* admin_port, SIDECAR_ADMIN_PORT, 15003 */
        char bind_address[64];  /* bind_address, SIDECAR_BIND_ADDRESS, "0.0.0.0" (v4 or v6) */
        char admin_address[64]; /* admin_address, SIDECAR_ADMIN_ADDRESS, "127.0.0.1" */
        /* admin.mutations, SHUNT_ADMIN_MUTATIONS, "off": requests that change
         * shuntd (POST /admin/...) are refused ("off") or need the bearer
         * token shuntd writes to admin.token_file at start ("token") */
        enum admin_mutations admin_mutations;
        char admin_token_file[CONFIG_PATH_MAX]; /* admin.token_file, "/run/shunt/admin-token" */
        /* admin.metrics_address, SHUNT_ADMIN_METRICS_ADDRESS, "0.0.0.0": the
         * read-only listener that serves GET /metrics only, for scrapers
         * outside the pod ("::" = every IPv6 and IPv4 address, "off" = none) */
        char metrics_address[64];
        uint16_t metrics_port; /* admin.metrics_port, SHUNT_ADMIN_METRICS_PORT, 15020 */
        /* metrics.max_series, 1000: label sets per request/TCP family, more go
         * to one "other" series; metrics.histogram_buckets: seconds, "a,b,..."
         * (core/prom.h PROM_DEFAULT_BUCKETS). Both taken at start.
         * metrics.requests: "off" 0 | "on" 1 (default): the request and TCP
         * families updated (applies on reload). */
        uint32_t metrics_max_series;
        int metrics_requests;
        char metrics_histogram_buckets[CONFIG_PATH_MAX];
        /* access_log.*: one JSON line per request, stream, call and TCP
         * connection (docs/observability.md), apart from log_level.
         * enabled and sampling apply on reload; destination and
         * buffer_size are taken at start. sampling is a ratio in [0, 1]
         * as text; access_log_ratio its value (config_load computes it). */
        int access_log_enabled; /* "off" 0 | "on" 1 (default) */
        char access_log_sampling[16];
        double access_log_ratio;
        char access_log_destination[CONFIG_PATH_MAX]; /* "stdout", "stderr" or a file */
        uint32_t access_log_buffer_size;              /* bytes per worker */
        /* tracing.*: spans exported as OTLP/HTTP JSON (docs/observability.md).
         * enabled, endpoint, sizes and timeout taken at start; sampling
         * applies on reload (tracing_ratio computed from it). */
        int tracing_enabled; /* "off" 0 (default) | "on" 1 */
        char tracing_endpoint[CONFIG_PATH_MAX];
        char tracing_sampling[16];
        double tracing_ratio;
        char tracing_service_name[128];
        uint32_t tracing_queue_size; /* spans per worker */
        uint32_t tracing_batch_size; /* spans per POST */
        uint32_t tracing_timeout_ms;
        uint32_t tracing_flush_interval_ms;
        char upgrade_socket[CONFIG_PATH_MAX]; /* upgrade.socket, "/run/shunt/upgrade.sock" */
        int workers;                          /* workers, SHUNT_WORKERS; 0 = online CPUs; 1..256 */
        enum log_level log_level;             /* log_level, SHUNT_LOG_LEVEL, info */

        /* capture */
        enum redirect_mode
            redirect; /* redirect, SHUNT_REDIRECT, "iptables" | "off" | "auto" | "ebpf" */
        char redirect_cgroup[CONFIG_PATH_MAX]; /* redirect_cgroup, SHUNT_REDIRECT_CGROUP, "" */
        char pod_uid[64];                      /* pod_uid, SHUNT_POD_UID, "" */
        char cgroup_root[CONFIG_PATH_MAX];     /* cgroup_root, SHUNT_CGROUP_ROOT, /sys/fs/cgroup */
        char bpf_pin_root[CONFIG_PATH_MAX];    /* bpf_pin_root, SHUNT_BPF_PIN_ROOT, "" =
                                                  /sys/fs/bpf/shunt */
        int bpf_shortcut; /* bpf_shortcut, SHUNT_BPF_SHORTCUT, "off" 0 | "on" 1 (default) */
        int tcp_splice;   /* tcp_splice, SHUNT_TCP_SPLICE, "off" 0 (default) | "auto" 1 */
        enum capture_mode capture; /* capture, SHUNT_CAPTURE, "self" | "init" */
        /* failure_mode, SHUNT_FAILURE_MODE, "closed": when shuntd is gone
         * (killed, crashed) captured connects are refused ("closed") or go
         * where the application asked ("open": eBPF capture only) */
        enum failure_mode failure_mode;
        uint32_t proxy_mark; /* proxy_mark, SHUNT_PROXY_MARK: SO_MARK of shuntd's sockets, 0x539 */
        int proxy_uid; /* proxy_uid, SHUNT_PROXY_UID: uid whose traffic is not captured; -1 = auto
                        */
        /* default {22, admin_port}; a configured list is taken as given */
        uint16_t exclude_inbound_ports[CONFIG_MAX_EXCLUDES];
        size_t n_exclude_inbound_ports;
        uint16_t exclude_outbound_ports[CONFIG_MAX_EXCLUDES]; /* default {} */
        size_t n_exclude_outbound_ports;
        struct cidr exclude_outbound_cidrs[CONFIG_MAX_EXCLUDES]; /* default {} */
        size_t n_exclude_outbound_cidrs;
        enum outbound_policy outbound_policy; /* "allow_any" | "registry_only" */

        /* proxying; durations are milliseconds */
        uint32_t protocol_detection_timeout_ms; /* 100ms */
        uint32_t connect_timeout_ms;            /* timeouts.connect, CONNECT_TIMEOUT, 30s */
        uint32_t request_timeout_ms;            /* timeouts.request, REQUEST_TIMEOUT, 30s */
        uint32_t idle_timeout_ms;               /* timeouts.idle_timeout, IDLE_TIMEOUT, 60s */
        uint32_t drain_timeout_ms;              /* drain_timeout, SHUNT_DRAIN_TIMEOUT, 30s */
        uint32_t max_connections;               /* max_connections, per daemon, 65536 */
        uint32_t buffer_size;                   /* buffer_size, per direction, 64KiB */
        /* HTTP/2 and gRPC request proxying (outbound) */
        uint32_t h2_max_concurrent_streams; /* http2.max_concurrent_streams, per client conn, 100 */
        uint32_t h2_max_header_list_size;   /* http2.max_header_list_size, bytes, 64KiB */
        uint32_t h2_max_control_frames;     /* http2.max_control_frames_per_second, 1000 */
        uint32_t h2_stream_stall_timeout_ms; /* http2.stream_stall_timeout, 30s */

        /* HTTP/1.1 request-level proxying (proxy/h1proxy.c, proxy/upstream.c) */
        uint32_t http_upstream_idle_timeout_ms; /* http.upstream_idle_timeout, 4s */
        uint32_t http_upstream_max_idle; /* http.upstream_max_idle, per endpoint+worker, 32 */
        uint32_t http_max_header_bytes;  /* http.max_request_header_bytes, 64KiB */
        uint32_t http_max_headers;       /* http.max_request_headers, 100 */
        /* route RequestMirror copies (proxy/mirror.c), per worker */
        uint32_t mirror_max_in_flight; /* http.mirror_max_in_flight, 64 */
        uint32_t mirror_max_body;      /* http.mirror_max_body, bytes, 64KiB */
        uint32_t mirror_timeout_ms;    /* http.mirror_timeout, 5s */

        /* resilience, per upstream service (docs/traffic.md, "Resilience") */
        char lb_local_zone[64];           /* load_balancing.local_zone, SHUNT_LOCAL_ZONE, "" */
        uint32_t lb_locality_min_percent; /* load_balancing.locality_min_percent, 70 */
        /* Locality tiers (docs/traffic.md, "Locality tiers") */
        char lb_local_region[64]; /* load_balancing.local_region, SHUNT_LOCAL_REGION, "" */
        char lb_failover[384];    /* load_balancing.failover: regions, comma-separated */
        uint32_t lb_overprovisioning_percent; /* load_balancing.overprovisioning_percent, 140 */
        /* load_balancing.tiers.{region,remote}.*: 0 (-1 for retries) = the
         * global key's value */
        struct {
                uint32_t connect_ms, request_ms, consecutive_failures;
                int max_retries;
        } lb_tier[2];
        uint32_t cb_consecutive_failures; /* circuit_breaker.consecutive_failures, 5 */
        uint32_t cb_failure_percent;      /* circuit_breaker.failure_percent, 50 */
        uint32_t cb_min_requests;         /* circuit_breaker.min_requests, 20 */
        uint32_t cb_window_ms;            /* circuit_breaker.window, 30s */
        uint32_t cb_open_timeout_ms;      /* circuit_breaker.open_timeout, 30s */
        uint32_t cb_jitter_percent;       /* circuit_breaker.jitter_percent, 10 */
        uint32_t cb_half_open_probes;     /* circuit_breaker.half_open_probes, 3 */
        uint32_t cb_success_threshold;    /* circuit_breaker.success_threshold, 3 */
        uint32_t od_consecutive_failures; /* outlier_detection.consecutive_failures, 5 */
        uint32_t od_base_ejection_ms;     /* outlier_detection.base_ejection_time, 30s */
        uint32_t od_max_ejection_ms;      /* outlier_detection.max_ejection_time, 300s */
        uint32_t od_max_ejection_percent; /* outlier_detection.max_ejection_percent, 10 */
        uint32_t limit_max_connections;   /* limits.max_connections, 1024 */
        uint32_t limit_max_pending;       /* limits.max_pending_requests, 1024 */
        uint32_t limit_max_requests;      /* limits.max_requests, 1024 */
        uint32_t retry_max;               /* retries.max_retries, 2 */
        uint32_t retry_backoff_base_ms;   /* retries.backoff_base, 25ms */
        uint32_t retry_backoff_max_ms;    /* retries.backoff_max, 250ms */
        uint32_t retry_budget_percent;    /* retries.budget_percent, 20 */
        uint32_t retry_budget_min;        /* retries.budget_min, 3 */

        /* service discovery */
        char sd_type[16];                   /* service_discovery.type: file|kubernetes|consul|dns */
        char sd_file_path[CONFIG_PATH_MAX]; /* service_discovery.file.path */
        char k8s_kubeconfig[CONFIG_PATH_MAX]; /* ...kubernetes.kubeconfig_path, KUBECONFIG_PATH */
        char k8s_namespace[CONFIG_STR_MAX];   /* ...kubernetes.namespace, KUBERNETES_NAMESPACE */
        char k8s_label_selector[CONFIG_STR_MAX]; /* ...label_selector */
        char consul_address[CONFIG_STR_MAX];     /* ...consul.address, CONSUL_ADDRESS */
        char consul_token[CONFIG_STR_MAX];       /* ...consul.token, CONSUL_TOKEN (never dumped) */
        char consul_datacenter[CONFIG_STR_MAX];  /* ...consul.datacenter, CONSUL_DATACENTER */
        char consul_token_file[CONFIG_PATH_MAX]; /* ...consul.token_file, CONSUL_TOKEN_FILE */
        char consul_ca_file[CONFIG_PATH_MAX];    /* ...consul.ca_file, CONSUL_CACERT */
        char consul_cert_file[CONFIG_PATH_MAX];  /* ...consul.cert_file, CONSUL_CLIENT_CERT */
        char consul_key_file[CONFIG_PATH_MAX];   /* ...consul.key_file, CONSUL_CLIENT_KEY */
        /* DNS discovery (discovery/dns.h): type dns, or dns.fallback on next
         * to another type */
        char dns_servers[CONFIG_PATH_MAX]; /* ...dns.servers, SHUNT_DNS_SERVERS, "" = resolv.conf */
        uint32_t dns_min_ttl_ms;           /* ...dns.min_ttl, 5s */
        uint32_t dns_max_ttl_ms;           /* ...dns.max_ttl, 300s */
        uint32_t dns_timeout_ms;           /* ...dns.timeout, 1s (per try) */
        uint32_t dns_attempts;             /* ...dns.attempts, 2 */
        int dns_fallback;                  /* ...dns.fallback: off 0 | on 1 */
        uint32_t dns_fallback_after_ms;    /* ...dns.fallback_after, 30s */
        char *dns_services;                /* ...dns.services (file only): JSON array text */
        /* service_discovery.clusters (file only): JSON array text, several
         * registries at once (discovery/cluster.h); NULL: one registry */
        char *sd_clusters;

        /* mTLS */
        char trust_domain[CONFIG_STR_MAX]; /* mtls.trust_domain, TRUST_DOMAIN */
        /* mtls.cert_rotation, CERT_ROTATION_INTERVAL, 24h: the lifetime of the
         * workload certificates the built-in CA issues (renewed when a third
         * of it is left) */
        uint32_t cert_rotation_s;
        char ca_bundle[CONFIG_PATH_MAX]; /* mtls.ca_bundle, CA_BUNDLE_PATH */
        /* mtls.ca_address, SHUNT_CA_ADDRESS, "": https URL of shunt-ca; set, it
         * selects the "ca" certificate source (identity from the token at
         * mtls.ca_token_file, SHUNT_CA_TOKEN_FILE, /var/run/secrets/shunt/token;
         * mtls.namespace and mtls.service_account override it only when set) */
        char mtls_ca_address[CONFIG_PATH_MAX];
        char mtls_ca_token_file[CONFIG_PATH_MAX];
        char certificate_file[CONFIG_PATH_MAX];       /* mtls.certificate_file, CERTIFICATE_FILE */
        char private_key_file[CONFIG_PATH_MAX];       /* mtls.private_key_file, PRIVATE_KEY_FILE */
        enum mtls_mode mtls_mode;                     /* mtls.mode */
        enum forward_client_cert forward_client_cert; /* mtls.forward_client_cert */
        /* mtls.ca_dir, SHUNT_MTLS_CA_DIR, "/var/lib/shunt/ca": the built-in CA's
         * state (used when certificate_file is empty). The workload's identity is
         * spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>; its DNS
         * SAN <service_name>.<namespace>.svc.cluster.local. */
        char mtls_ca_dir[CONFIG_PATH_MAX];
        char mtls_namespace[CONFIG_STR_MAX];       /* mtls.namespace, "default" */
        char mtls_service_name[CONFIG_STR_MAX];    /* mtls.service_name; "" -> host name */
        char mtls_service_account[CONFIG_STR_MAX]; /* mtls.service_account; "" -> service_name */
        char mtls_key_type[16];                    /* mtls.key_type: ecdsa-p256 | rsa-2048 */
        uint32_t mtls_clock_skew_s;                /* mtls.clock_skew, 5m */
        uint32_t mtls_handshake_timeout_ms;        /* mtls.handshake_timeout, 10s */
        /* mtls.allow (file only): {"<port>"|"*": ["spiffe://...", ...]}; a port
         * with entries (its own or "*"'s) admits only those source IDs */
        struct config_allow {
                uint16_t port; /* 0: every port ("*") */
                char id[CONFIG_PATH_MAX];
        } mtls_allow[CONFIG_MAX_ALLOW];
        size_t n_mtls_allow;
        /* authorization.policies (file only): the JSON array as text, NULL
         * when not set; parsed and validated by authz/ (shuntd) */
        char *authorization_policies;
        char *mtls_federation; /* JSON array text (tls/federation.h), NULL when unset */
        int authz_kubernetes;  /* authorization.kubernetes, SHUNT_AUTHZ_KUBERNETES: off 0 | on 1 */
        char authz_namespace[CONFIG_STR_MAX];    /* authorization.namespace; "" -> mtls.namespace */
        char authz_labels_file[CONFIG_PATH_MAX]; /* authorization.pod_labels_file */

        /* node mode (README, Node mode) */
        int mode;                          /* mode, SHUNT_MODE: sidecar 0 | node 1 */
        char node_name[CONFIG_STR_MAX];    /* node.name, NODE_NAME */
        uint32_t node_max_pods;            /* node.max_pods, 256 */
        uint32_t node_resolve_timeout_ms;  /* node.resolve_timeout, 120s */
        uint32_t node_identity_drain_s;    /* node.identity_drain, 5m */
        uint32_t node_pod_max_connections; /* node.pod_max_connections, 1024 */
        uint32_t node_pod_workers;         /* node.pod_workers, 1 */
        uint32_t node_accept_timeout_ms;   /* node.accept_timeout, 10s */

        /* load balancing */
        char lb_algorithm[32];            /* load_balancing.algorithm, LOAD_BALANCING_ALGORITHM */
        char lb_hash_key[CONFIG_STR_MAX]; /* load_balancing.hash_key */

        char path[CONFIG_PATH_MAX]; /* the --config file, "" when none */

        /* Provenance, one entry per key that was set or defaulted; see config.c. */
        struct config_origin *origins;
        size_t n_origins;
};

/* Room for a config error: one line, which may list the allowed keys. */
#define CONFIG_ERR_MAX 2048

/* Builds a configuration from defaults, the file named by --config (if any),
 * envp and argv (flags: see config_usage()). argv[0] is skipped; unknown
 * flags are errors. On failure returns -EINVAL (or -errno for I/O) and writes
 * one line into err: "config: <key>: <value>: <what is allowed>".
 * The result has refs == 1 and must be released with snapshot_unref. */
int config_load(int argc, char *const argv[], char *const envp[], struct shunt_config **out,
                char *err, size_t errlen);
/* Re-reads the same sources (the file may have changed). */
int config_reload(const struct shunt_config *old, int argc, char *const argv[], char *const envp[],
                  struct shunt_config **out, char *err, size_t errlen);

/* The flags config_load accepts, one per line, for --help. */
const char *config_usage(void);
/* A copy of c with one reference (the caller's), for a part that needs the
 * same configuration with a few fields changed (node mode: each pod's
 * proxy). NULL without memory. */
struct shunt_config *config_clone(const struct shunt_config *c);
/* The configuration reference (docs/configuration.md) as Markdown, from the
 * same table. Returns a malloc'd string or NULL. */
char *config_reference_markdown(void);

/* Effective values as JSON: {"key": {"value": ..., "source": "default|file|env|flag"}}.
 * Secrets are shown as "<redacted>". Returns malloc'd string or NULL. */
char *config_dump_json(const struct shunt_config *cfg);

/* "100ms", "1.5s", "2m", "1h", "250us" (rounded up to ms), or bare integer
 * seconds. Returns 0 or -EINVAL (negative, overflow, unknown unit, empty). */
int parse_duration_ms(const char *s, uint64_t *out_ms);

/* "10.0.0.0/8", "fd00::/8", or a plain address (full-length prefix). */
int parse_cidr(const char *s, struct cidr *out);

const char *config_source_name(enum config_source s); /* "default", "file", ... */
/* Where key (dotted JSON path, e.g. "timeouts.connect") came from; -1 if no
 * such key. */
int config_source_of(const struct shunt_config *cfg, const char *key);

const char *redirect_mode_name(enum redirect_mode m);
const char *outbound_policy_name(enum outbound_policy p);
const char *capture_mode_name(enum capture_mode m);

/* The SO_MARK shuntd puts on its own sockets: proxy_mark, or 0 (none) with
 * capture init, where shuntd holds no CAP_NET_ADMIN and is excluded by uid. */
static inline uint32_t config_socket_mark(const struct shunt_config *cfg)
{
        return cfg->capture == CAPTURE_INIT ? 0 : cfg->proxy_mark;
}
const char *mtls_mode_name(enum mtls_mode m);
/* False when admin.metrics_address is "off". */
bool config_metrics_enabled(const struct shunt_config *cfg);

#endif

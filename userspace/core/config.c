// SPDX-License-Identifier: Apache-2.0
/* Configuration: one table of key descriptors drives defaults, the JSON file,
 * the environment, the flags, validation messages, --help and the dump. */
#include "core/file.h"
#include "core/config.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/prom.h"
#include "core/strbuf.h"

#define CONFIG_FILE_MAX (4u << 20) /* a config file larger than this is refused */
#define WORKERS_MAX     256
#define SHOW_MAX        64 /* bytes of a bad value quoted in an error */
#define KEY_MAX         128
#define MS_PER_HOUR     3600000LL
#define LB_WEIGHT_MAX   65535

enum ktype {
        K_PORT,    /* uint16_t 1..65535 */
        K_INT,     /* int, min..max */
        K_U32,     /* uint32_t, min..max */
        K_MARK,    /* uint32_t, decimal or 0x hex */
        K_BYTES,   /* uint32_t, integer bytes or with a KiB/MiB suffix */
        K_ADDR,    /* char[], an IPv4 or IPv6 address */
        K_STR,     /* char[] */
        K_ENUM,    /* enum (int): index into names */
        K_STRENUM, /* char[]: one of names */
        K_DUR_MS,  /* uint32_t milliseconds, min..max in ms */
        K_DUR_S,   /* uint32_t seconds, min..max in ms, whole seconds */
        K_PORTS,   /* uint16_t[CONFIG_MAX_EXCLUDES] + size_t count */
        K_CIDRS,   /* struct cidr[CONFIG_MAX_EXCLUDES] + size_t count */
        K_WEIGHTS, /* JSON object name -> weight, validated, not stored */
        K_ALLOW,   /* JSON object port -> [SPIFFE ID], struct config_allow[] + count */
        K_JSONARR, /* JSON array kept as its text (char *, heap) for its component to read */
};

#define KF_SECRET       0x1 /* never shown: dump and errors say <redacted> */
#define KF_NONEMPTY     0x2
#define KF_TRUST_DOMAIN 0x4  /* SPIFFE trust domain characters */
#define KF_FILE_ONLY    0x8  /* no flag, not in the dump */
#define KF_NAME         0x10 /* SPIFFE path segment: [A-Za-z0-9.-_], not "." or ".." */
/* Taken at start only (listeners, capture, discovery, the certificate
 * store): a reload keeps the running value everywhere and says so. */
#define KF_RESTART 0x20
/* Installed with the capture: applied on reload when shuntd installs its own
 * capture, kept like KF_RESTART under capture init (shuntd init set them). */
#define KF_CAPTURE 0x40
#define KF_OFF     0x80 /* K_ADDR: "off" is also allowed (the listener is not opened) */

struct key_desc {
        const char *path; /* dotted JSON path */
        const char *env;  /* environment variable or NULL */
        enum ktype type;
        size_t off, size; /* the field in struct shunt_config */
        size_t count_off; /* lists: the size_t count */
        long long min, max;
        const char *const *names;    /* enums: allowed spellings, index = value */
        const char *const *reserved; /* enums: spellings known but not built yet */
        const char *reserved_why;
        const char *def;  /* default, as text parsed like a flag; NULL = zero/empty */
        const char *note; /* appended to the description of what is allowed */
        unsigned flags;
};

#define FIELD(f)                                                                                   \
        .off = offsetof(struct shunt_config, f), .size = sizeof(((struct shunt_config *)0)->f)
#define LIST(f, n) FIELD(f), .count_off = offsetof(struct shunt_config, n)

static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const redirect_names[] = {"iptables", "off", "auto", "ebpf", NULL};
static const char *const policy_names[] = {"allow_any", "registry_only", NULL};
static const char *const off_on_names[] = {"off", "on", NULL};
static const char *const splice_names[] = {"off", "auto", NULL};
static const char *const capture_names[] = {"self", "init", NULL};
static const char *const mutation_names[] = {"off", "token", NULL};
static const char *const failure_names[] = {"closed", "open", NULL};
static const char *const mtls_names[] = {"strict", "permissive", "disabled", NULL};
static const char *const fcc_names[] = {"sanitize", "sanitize_set", "append_forward",
                                        "forward_only", NULL};
static const char *const key_type_names[] = {"ecdsa-p256", "rsa-2048", NULL};
static const char *const mode_names[] = {"sidecar", "node", NULL};
static const char *const sd_names[] = {"file", "kubernetes", "consul", "dns", NULL};
static const char *const lb_names[] = {
    "round_robin", "least_connections", "weighted", "consistent_hash", "maglev", NULL};

/* clang-format off */
static const struct key_desc keys[] = {
        {.path = "inbound_port", .env = "SIDECAR_INBOUND_PORT", .type = K_PORT, FIELD(inbound_port), .def = "15001", .flags = KF_RESTART},
        {.path = "outbound_port", .env = "SIDECAR_OUTBOUND_PORT", .type = K_PORT, FIELD(outbound_port), .def = "15002", .flags = KF_RESTART},
        {.path = "admin_port", .env = "SIDECAR_ADMIN_PORT", .type = K_PORT, FIELD(admin_port), .def = "15003", .flags = KF_RESTART},
        {.path = "bind_address", .env = "SIDECAR_BIND_ADDRESS", .type = K_ADDR, FIELD(bind_address), .def = "0.0.0.0", .flags = KF_RESTART},
        {.path = "admin_address", .env = "SIDECAR_ADMIN_ADDRESS", .type = K_ADDR, FIELD(admin_address), .def = "127.0.0.1", .flags = KF_RESTART},
        {.path = "admin.mutations", .env = "SHUNT_ADMIN_MUTATIONS", .type = K_ENUM, FIELD(admin_mutations),
         .names = mutation_names, .def = "off", .flags = KF_RESTART,
         .note = "POST /admin/... (endpoints, breakers, log level): off = refused; token = with the bearer token in admin.token_file"},
        {.path = "admin.token_file", .env = "SHUNT_ADMIN_TOKEN_FILE", .type = K_STR, FIELD(admin_token_file),
         .def = "/run/shunt/admin-token", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "written at start (0600, a fresh random token) when admin.mutations is token; removed at exit"},
        {.path = "admin.metrics_address", .env = "SHUNT_ADMIN_METRICS_ADDRESS", .type = K_ADDR, FIELD(metrics_address),
         .def = "0.0.0.0", .flags = KF_RESTART | KF_OFF,
         .note = "of the read-only GET /metrics listener for scrapers outside the pod (its port is never "
                 "captured); :: = every IPv6 and IPv4 address"},
        {.path = "admin.metrics_port", .env = "SHUNT_ADMIN_METRICS_PORT", .type = K_PORT, FIELD(metrics_port),
         .def = "15020", .flags = KF_RESTART},
        {.path = "metrics.max_series", .env = "SHUNT_METRICS_MAX_SERIES", .type = K_U32, FIELD(metrics_max_series),
         .min = 16, .max = 100000, .def = "1000", .flags = KF_RESTART,
         .note = "label sets per request and TCP metric family; beyond it updates go to one series labelled "
                 "\"other\" and count in shunt_metrics_series_overflow_total"},
        {.path = "metrics.requests", .env = "SHUNT_METRICS_REQUESTS", .type = K_ENUM, FIELD(metrics_requests),
         .names = off_on_names, .def = "on",
         .note = "off: shunt_requests_total, shunt_request_duration_seconds and shunt_tcp_* are not updated (applies on reload; "
                 "their families stay, with the series they had)"},
        {.path = "metrics.histogram_buckets", .env = "SHUNT_METRICS_HISTOGRAM_BUCKETS", .type = K_STR,
         FIELD(metrics_histogram_buckets), .def = PROM_DEFAULT_BUCKETS, .flags = KF_RESTART,
         .note = "upper bounds in seconds of shunt_request_duration_seconds, comma-separated, increasing, at most 32"},
        {.path = "upgrade.socket", .env = "SHUNT_UPGRADE_SOCKET", .type = K_STR, FIELD(upgrade_socket),
         .def = "/run/shunt/upgrade.sock", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "Unix socket (0600) through which `shuntd --takeover` takes this shuntd's listeners and capture"},
        {.path = "workers", .env = "SHUNT_WORKERS", .type = K_INT, FIELD(workers), .min = 0, .max = WORKERS_MAX,
         .def = "0", .note = "0 = one per online CPU", .flags = KF_RESTART},
        {.path = "log_level", .env = "SHUNT_LOG_LEVEL", .type = K_ENUM, FIELD(log_level), .names = log_level_names,
         .def = "info"},
        {.path = "redirect", .env = "SHUNT_REDIRECT", .type = K_ENUM, FIELD(redirect), .names = redirect_names,
         .def = "auto", .note = "auto: eBPF when the kernel and redirect_cgroup allow it, else iptables (one log line says why)", .flags = KF_RESTART},
        {.path = "redirect_cgroup", .env = "SHUNT_REDIRECT_CGROUP", .type = K_STR, FIELD(redirect_cgroup),
         .note = "cgroup v2 directory of the workload (eBPF capture); required by ebpf, auto falls back without it; "
                 "`pod` (shuntd init): the cgroup of pod pod_uid under cgroup_root", .flags = KF_RESTART},
        {.path = "pod_uid", .env = "SHUNT_POD_UID", .type = K_STR, FIELD(pod_uid), .flags = KF_RESTART,
         .note = "the Kubernetes pod's metadata.uid, for redirect_cgroup `pod`"},
        {.path = "cgroup_root", .env = "SHUNT_CGROUP_ROOT", .type = K_STR, FIELD(cgroup_root), .flags = KF_RESTART,
         .def = "/sys/fs/cgroup", .note = "the node's cgroup v2 hierarchy as mounted here, for redirect_cgroup `pod`"},
        {.path = "bpf_pin_root", .env = "SHUNT_BPF_PIN_ROOT", .type = K_STR, FIELD(bpf_pin_root),
         .note = "bpffs directory for maps and links; empty = /sys/fs/bpf/shunt", .flags = KF_RESTART},
        {.path = "tcp_splice", .env = "SHUNT_TCP_SPLICE", .type = K_ENUM, FIELD(tcp_splice),
         .names = splice_names, .def = "off", .flags = KF_RESTART,
         .note = "plain TCP relays (no TLS, no request-level feature) handed to the kernel once their first bytes are through "
                 "(sockhash + sk_skb verdict); auto = when the kernel can, per connection the userspace relay otherwise; off = always the userspace relay"},
        {.path = "bpf_shortcut", .env = "SHUNT_BPF_SHORTCUT", .type = K_ENUM, FIELD(bpf_shortcut),
         .names = off_on_names, .def = "on",
         .note = "eBPF mode: sk_msg shortcut between the application and shuntd; off = loopback TCP"},
        {.path = "capture", .env = "SHUNT_CAPTURE", .type = K_ENUM, FIELD(capture), .names = capture_names,
         .def = "self",
         .note = "self: shuntd installs and removes its capture; init: `shuntd init` installed it, shuntd needs no capability", .flags = KF_RESTART},
        {.path = "failure_mode", .env = "SHUNT_FAILURE_MODE", .type = K_ENUM, FIELD(failure_mode),
         .names = failure_names, .def = "closed", .flags = KF_RESTART,
         .note = "shuntd gone (killed, crashed): closed = captured connects refused until it is back or "
                 "`shuntctl cleanup`; open = they go where the application asked (eBPF capture only; not "
                 "with mode node, whose pods always fail closed)"},
        {.path = "proxy_mark", .env = "SHUNT_PROXY_MARK", .type = K_MARK, FIELD(proxy_mark), .min = 1,
         .max = UINT32_MAX, .def = "0x539", .flags = KF_RESTART},
        {.path = "proxy_uid", .env = "SHUNT_PROXY_UID", .type = K_INT, FIELD(proxy_uid), .min = -1, .max = INT_MAX,
         .def = "-1", .note = "-1 = automatic: shuntd's own uid unless root; 1337 for shuntd init and capture init", .flags = KF_RESTART},
        {.path = "exclude_inbound_ports", .env = "SHUNT_EXCLUDE_INBOUND_PORTS", .type = K_PORTS,
         LIST(exclude_inbound_ports, n_exclude_inbound_ports), .def = "22", .flags = KF_CAPTURE},
        {.path = "exclude_outbound_ports", .env = "SHUNT_EXCLUDE_OUTBOUND_PORTS", .type = K_PORTS,
         LIST(exclude_outbound_ports, n_exclude_outbound_ports), .flags = KF_CAPTURE},
        {.path = "exclude_outbound_cidrs", .env = "SHUNT_EXCLUDE_OUTBOUND_CIDRS", .type = K_CIDRS,
         LIST(exclude_outbound_cidrs, n_exclude_outbound_cidrs), .flags = KF_CAPTURE},
        {.path = "outbound_policy", .env = "SHUNT_OUTBOUND_POLICY", .type = K_ENUM, FIELD(outbound_policy),
         .names = policy_names, .def = "allow_any"},
        {.path = "protocol_detection_timeout", .env = "SHUNT_PROTOCOL_DETECTION_TIMEOUT", .type = K_DUR_MS,
         FIELD(protocol_detection_timeout_ms), .min = 1, .max = 10000, .def = "100ms"},
        {.path = "drain_timeout", .env = "SHUNT_DRAIN_TIMEOUT", .type = K_DUR_MS, FIELD(drain_timeout_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "30s"},
        {.path = "max_connections", .type = K_U32, FIELD(max_connections), .min = 1, .max = 1048576, .def = "65536"},
        {.path = "buffer_size", .type = K_BYTES, FIELD(buffer_size), .min = 4096, .max = 16777216, .def = "65536"},
        {.path = "http.upstream_idle_timeout", .type = K_DUR_MS, FIELD(http_upstream_idle_timeout_ms),
         .min = 1, .max = MS_PER_HOUR, .def = "4s",
         .note = "keep it below the servers' keep-alive timeout: a pooled connection is closed first"},
        {.path = "http.upstream_max_idle", .type = K_U32, FIELD(http_upstream_max_idle), .min = 0, .max = 4096,
         .def = "32", .note = "idle upstream connections kept per endpoint and worker; 0 = no reuse"},
        {.path = "http.max_request_header_bytes", .type = K_BYTES, FIELD(http_max_header_bytes), .min = 1024,
         .max = 1048576, .def = "65536", .note = "larger heads get 431; never more than buffer_size"},
        {.path = "http.max_request_headers", .type = K_U32, FIELD(http_max_headers), .min = 1,
         .max = 128, .def = "100", .note = "more header fields get 431"},
        {.path = "http.mirror_max_in_flight", .type = K_U32, FIELD(mirror_max_in_flight), .min = 1,
         .max = 100000, .def = "64",
         .note = "per worker: request copies of a RequestMirror in flight at once (HTTP/2: from the request's head on); more are dropped and counted"},
        {.path = "http.mirror_max_body", .type = K_BYTES, FIELD(mirror_max_body), .min = 0,
         .max = 16777216, .def = "65536",
         .note = "a request whose body is larger (HTTP/1.1: or not all received with its head) is not mirrored (counted)"},
        {.path = "http.mirror_timeout", .type = K_DUR_MS, FIELD(mirror_timeout_ms), .min = 1,
         .max = 24 * MS_PER_HOUR, .def = "5s",
         .note = "a request copy is closed this long after it began, answered or not (HTTP/2: dropped if its request has not ended)"},
        {.path = "http2.max_concurrent_streams", .type = K_U32, FIELD(h2_max_concurrent_streams),
         .min = 1, .max = 10000, .def = "100", .note = "per client connection (SETTINGS_MAX_CONCURRENT_STREAMS)"},
        {.path = "http2.max_header_list_size", .type = K_BYTES, FIELD(h2_max_header_list_size),
         .min = 1024, .max = 1048576, .def = "65536"},
        {.path = "http2.max_control_frames_per_second", .type = K_U32, FIELD(h2_max_control_frames),
         .min = 10, .max = 1000000, .def = "1000",
         .note = "PING, SETTINGS, RST_STREAM, PRIORITY, empty DATA, unearned WINDOW_UPDATE frames per client connection; more is a flood"},
        {.path = "http2.stream_stall_timeout", .type = K_DUR_MS, FIELD(h2_stream_stall_timeout_ms),
         .min = 100, .max = 24 * MS_PER_HOUR, .def = "30s",
         .note = "a stream whose buffered bytes do not move for this long is ended (RST_STREAM both ways, or 504)"},
        {.path = "timeouts.connect", .env = "CONNECT_TIMEOUT", .type = K_DUR_MS, FIELD(connect_timeout_ms),
         .min = 1, .max = 24 * MS_PER_HOUR, .def = "30s"},
        {.path = "timeouts.request", .env = "REQUEST_TIMEOUT", .type = K_DUR_MS, FIELD(request_timeout_ms),
         .min = 1, .max = 24 * MS_PER_HOUR, .def = "30s"},
        {.path = "timeouts.idle_timeout", .env = "IDLE_TIMEOUT", .type = K_DUR_MS, FIELD(idle_timeout_ms),
         .min = 1, .max = 24 * MS_PER_HOUR, .def = "60s"},
        {.path = "load_balancing.local_zone", .env = "SHUNT_LOCAL_ZONE", .type = K_STR, FIELD(lb_local_zone),
         .note = "this workload's zone: picks stay in it while it has enough endpoints; empty = no preference"},
        {.path = "load_balancing.locality_min_percent", .type = K_U32, FIELD(lb_locality_min_percent), .min = 0,
         .max = 100, .def = "70",
         .note = "stay local while max(1, ceil(p% of the zone's endpoints)) are healthy and available"},
        {.path = "load_balancing.local_region", .env = "SHUNT_LOCAL_REGION", .type = K_STR, FIELD(lb_local_region),
         .note = "this workload's region: turns on locality tiers (local zone, local region, failover regions, the rest); empty = off"},
        {.path = "load_balancing.failover", .type = K_STR, FIELD(lb_failover),
         .note = "regions tried after the local region, in order, comma-separated (at most 5); the others come last"},
        {.path = "load_balancing.overprovisioning_percent", .type = K_U32, FIELD(lb_overprovisioning_percent),
         .min = 100, .max = 1000, .def = "140",
         .note = "Envoy's overprovisioning factor in percent: a tier takes min(100, healthy% * factor) of the traffic, the rest spills to the next"},
        {.path = "load_balancing.tiers.region.connect_timeout", .type = K_DUR_MS, FIELD(lb_tier[0].connect_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "0", .note = "timeouts.connect for endpoints of the local region's other zones; 0 = timeouts.connect"},
        {.path = "load_balancing.tiers.region.request_timeout", .type = K_DUR_MS, FIELD(lb_tier[0].request_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "0", .note = "timeouts.request for endpoints of the local region's other zones; 0 = timeouts.request"},
        {.path = "load_balancing.tiers.region.max_retries", .type = K_INT, FIELD(lb_tier[0].max_retries),
         .min = -1, .max = 10, .def = "-1", .note = "retries.max_retries when the failed attempt went to the local region's other zones; -1 = retries.max_retries"},
        {.path = "load_balancing.tiers.region.consecutive_failures", .type = K_U32, FIELD(lb_tier[0].consecutive_failures),
         .min = 0, .max = 1000000, .def = "0", .note = "circuit_breaker.consecutive_failures of the local region's other zones's endpoints; 0 = circuit_breaker.consecutive_failures"},
        {.path = "load_balancing.tiers.remote.connect_timeout", .type = K_DUR_MS, FIELD(lb_tier[1].connect_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "0", .note = "timeouts.connect for endpoints of the other regions; 0 = timeouts.connect"},
        {.path = "load_balancing.tiers.remote.request_timeout", .type = K_DUR_MS, FIELD(lb_tier[1].request_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "0", .note = "timeouts.request for endpoints of the other regions; 0 = timeouts.request"},
        {.path = "load_balancing.tiers.remote.max_retries", .type = K_INT, FIELD(lb_tier[1].max_retries),
         .min = -1, .max = 10, .def = "-1", .note = "retries.max_retries when the failed attempt went to the other regions; -1 = retries.max_retries"},
        {.path = "load_balancing.tiers.remote.consecutive_failures", .type = K_U32, FIELD(lb_tier[1].consecutive_failures),
         .min = 0, .max = 1000000, .def = "0", .note = "circuit_breaker.consecutive_failures of the other regions's endpoints; 0 = circuit_breaker.consecutive_failures"},
        {.path = "circuit_breaker.consecutive_failures", .type = K_U32, FIELD(cb_consecutive_failures),
         .min = 1, .max = 1000000, .def = "5", .note = "failures in a row that open an endpoint's breaker"},
        {.path = "circuit_breaker.failure_percent", .type = K_U32, FIELD(cb_failure_percent), .min = 1, .max = 100,
         .def = "50", .note = "failure rate over the window that opens it (with min_requests results)"},
        {.path = "circuit_breaker.min_requests", .type = K_U32, FIELD(cb_min_requests), .min = 1, .max = 1000000,
         .def = "20"},
        {.path = "circuit_breaker.window", .type = K_DUR_MS, FIELD(cb_window_ms), .min = 10, .max = MS_PER_HOUR,
         .def = "30s"},
        {.path = "circuit_breaker.open_timeout", .type = K_DUR_MS, FIELD(cb_open_timeout_ms), .min = 1,
         .max = MS_PER_HOUR, .def = "30s", .note = "time open before half-open, +-jitter_percent"},
        {.path = "circuit_breaker.jitter_percent", .type = K_U32, FIELD(cb_jitter_percent), .min = 0, .max = 50,
         .def = "10"},
        {.path = "circuit_breaker.half_open_probes", .type = K_U32, FIELD(cb_half_open_probes), .min = 1,
         .max = 1000, .def = "3", .note = "requests in flight while half-open"},
        {.path = "circuit_breaker.success_threshold", .type = K_U32, FIELD(cb_success_threshold), .min = 1,
         .max = 1000, .def = "3", .note = "probe successes that close it"},
        {.path = "outlier_detection.consecutive_failures", .type = K_U32, FIELD(od_consecutive_failures), .min = 1,
         .max = 1000000, .def = "5", .note = "connect failures or 5xx in a row that eject an endpoint"},
        {.path = "outlier_detection.base_ejection_time", .type = K_DUR_MS, FIELD(od_base_ejection_ms), .min = 1,
         .max = MS_PER_HOUR, .def = "30s", .note = "the k-th ejection lasts k times this"},
        {.path = "outlier_detection.max_ejection_time", .type = K_DUR_MS, FIELD(od_max_ejection_ms), .min = 1,
         .max = 24 * MS_PER_HOUR, .def = "300s", .note = "at least base_ejection_time"},
        {.path = "outlier_detection.max_ejection_percent", .type = K_U32, FIELD(od_max_ejection_percent), .min = 0,
         .max = 100, .def = "10", .note = "cap = floor(n * p / 100), at least 1 when p > 0 and n >= 2, at most n - 1"},
        {.path = "limits.max_connections", .type = K_U32, FIELD(limit_max_connections), .min = 1, .max = 10000000,
         .def = "1024", .note = "upstream connections per service"},
        {.path = "limits.max_pending_requests", .type = K_U32, FIELD(limit_max_pending), .min = 1, .max = 10000000,
         .def = "1024", .note = "requests per service waiting for a connection"},
        {.path = "limits.max_requests", .type = K_U32, FIELD(limit_max_requests), .min = 1, .max = 10000000,
         .def = "1024", .note = "requests in flight per service"},
        {.path = "retries.max_retries", .type = K_U32, FIELD(retry_max), .min = 0, .max = 10, .def = "2"},
        {.path = "retries.backoff_base", .type = K_DUR_MS, FIELD(retry_backoff_base_ms), .min = 1, .max = 60000,
         .def = "25ms"},
        {.path = "retries.backoff_max", .type = K_DUR_MS, FIELD(retry_backoff_max_ms), .min = 1, .max = 300000,
         .def = "250ms", .note = "at least backoff_base"},
        {.path = "retries.budget_percent", .type = K_U32, FIELD(retry_budget_percent), .min = 0, .max = 100,
         .def = "20", .note = "retries in flight <= this % of the service's active requests"},
        {.path = "retries.budget_min", .type = K_U32, FIELD(retry_budget_min), .min = 0, .max = 10000000,
         .def = "3", .note = "... but always this many"},
        {.path = "service_discovery.type", .env = "SERVICE_DISCOVERY_TYPE", .type = K_STRENUM, FIELD(sd_type),
         .names = sd_names, .def = "file", .flags = KF_RESTART},
        {.path = "service_discovery.file.path", .type = K_STR, FIELD(sd_file_path), .flags = KF_RESTART},
        {.path = "service_discovery.kubernetes.kubeconfig_path", .env = "KUBECONFIG_PATH", .type = K_STR,
         FIELD(k8s_kubeconfig), .flags = KF_RESTART},
        {.path = "service_discovery.kubernetes.namespace", .env = "KUBERNETES_NAMESPACE", .type = K_STR,
         FIELD(k8s_namespace), .def = "default", .flags = KF_NONEMPTY | KF_RESTART},
        {.path = "service_discovery.kubernetes.label_selector", .env = "KUBERNETES_LABEL_SELECTOR", .type = K_STR,
         FIELD(k8s_label_selector), .flags = KF_RESTART},
        {.path = "service_discovery.consul.address", .env = "CONSUL_ADDRESS", .type = K_STR, FIELD(consul_address),
         .def = "localhost:8500", .flags = KF_NONEMPTY | KF_RESTART},
        {.path = "service_discovery.consul.token", .env = "CONSUL_TOKEN", .type = K_STR, FIELD(consul_token),
         .flags = KF_SECRET | KF_RESTART},
        {.path = "service_discovery.consul.token_file", .env = "CONSUL_TOKEN_FILE", .type = K_STR,
         FIELD(consul_token_file), .flags = KF_RESTART, .note = "the ACL token read from a file (instead of token)"},
        {.path = "service_discovery.consul.ca_file", .env = "CONSUL_CACERT", .type = K_STR, FIELD(consul_ca_file),
         .flags = KF_RESTART, .note = "https: PEM CAs that sign the agent's certificate (empty = the system's)"},
        {.path = "service_discovery.consul.cert_file", .env = "CONSUL_CLIENT_CERT", .type = K_STR,
         FIELD(consul_cert_file), .flags = KF_RESTART, .note = "https: client certificate (agents with verify_incoming)"},
        {.path = "service_discovery.consul.key_file", .env = "CONSUL_CLIENT_KEY", .type = K_STR, FIELD(consul_key_file),
         .flags = KF_RESTART, .note = "https: the client certificate's key"},
        {.path = "service_discovery.consul.datacenter", .env = "CONSUL_DATACENTER", .type = K_STR,
         FIELD(consul_datacenter), .def = "dc1", .flags = KF_NONEMPTY | KF_RESTART},
        {.path = "service_discovery.clusters", .type = K_JSONARR, FIELD(sd_clusters),
         .flags = KF_FILE_ONLY | KF_RESTART,
         .note = "several registries at once: [{\"name\", \"region\", \"zone\", \"priority\", \"trust_domain\", "
                 "\"type\": file|kubernetes|consul, and that type's settings}] (docs/discovery.md, Clusters)"},
        {.path = "service_discovery.dns.servers", .env = "SHUNT_DNS_SERVERS", .type = K_STR, FIELD(dns_servers),
         .flags = KF_RESTART,
         .note = "name servers, comma-separated: ip, ip:port, [ipv6]:port; empty = /etc/resolv.conf"},
        {.path = "service_discovery.dns.min_ttl", .type = K_DUR_MS, FIELD(dns_min_ttl_ms), .min = 1000,
         .max = 24 * MS_PER_HOUR, .def = "5s", .flags = KF_RESTART,
         .note = "floor of the TTL that schedules the next lookup of a name"},
        {.path = "service_discovery.dns.max_ttl", .type = K_DUR_MS, FIELD(dns_max_ttl_ms), .min = 1000,
         .max = 24 * MS_PER_HOUR, .def = "300s", .flags = KF_RESTART,
         .note = "ceiling of that TTL; at least min_ttl"},
        {.path = "service_discovery.dns.timeout", .type = K_DUR_MS, FIELD(dns_timeout_ms), .min = 100,
         .max = 60000, .def = "1s", .flags = KF_RESTART,
         .note = "first try of a query; each later try waits twice as long as the one before"},
        {.path = "service_discovery.dns.attempts", .type = K_U32, FIELD(dns_attempts), .min = 1, .max = 10,
         .def = "2", .flags = KF_RESTART, .note = "tries of a query per server before it fails"},
        {.path = "service_discovery.dns.fallback", .env = "SHUNT_DNS_FALLBACK", .type = K_ENUM, FIELD(dns_fallback),
         .names = off_on_names, .def = "off", .flags = KF_RESTART,
         .note = "on (with type file, kubernetes or consul): the DNS endpoints of dns.services are added while "
                 "that registry has been failing for fallback_after (docs/discovery.md, DNS)"},
        {.path = "service_discovery.dns.fallback_after", .type = K_DUR_MS, FIELD(dns_fallback_after_ms),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "30s", .flags = KF_RESTART},
        {.path = "service_discovery.dns.services", .type = K_JSONARR, FIELD(dns_services),
         .flags = KF_FILE_ONLY | KF_RESTART,
         .note = "services as in the file registry, each with \"dns\": {\"name\", \"type\": A|AAAA|A+AAAA|SRV} "
                 "instead of endpoints (docs/discovery.md, DNS)"},
        {.path = "mtls.trust_domain", .env = "TRUST_DOMAIN", .type = K_STR, FIELD(trust_domain),
         .def = "cluster.local", .flags = KF_NONEMPTY | KF_TRUST_DOMAIN | KF_RESTART},
        {.path = "mtls.cert_rotation", .env = "CERT_ROTATION_INTERVAL", .type = K_DUR_S, FIELD(cert_rotation_s),
         .min = 1000, .max = 8760 * MS_PER_HOUR, .def = "24h", .flags = KF_RESTART},
        {.path = "mtls.ca_bundle", .env = "CA_BUNDLE_PATH", .type = K_STR, FIELD(ca_bundle),
         .note = "trusted CAs; with ca_address it also verifies shunt-ca", .flags = KF_RESTART},
        {.path = "mtls.ca_address", .env = "SHUNT_CA_ADDRESS", .type = K_STR, FIELD(mtls_ca_address),
         .note = "https://host[:port] of shunt-ca: certificates from it (the \"ca\" source)", .flags = KF_RESTART},
        {.path = "mtls.ca_token_file", .env = "SHUNT_CA_TOKEN_FILE", .type = K_STR, FIELD(mtls_ca_token_file),
         .def = "/var/run/secrets/shunt/token", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "projected service-account token (audience shunt-ca), re-read on every request"},
        {.path = "mtls.certificate_file", .env = "CERTIFICATE_FILE", .type = K_STR, FIELD(certificate_file), .flags = KF_RESTART},
        {.path = "mtls.private_key_file", .env = "PRIVATE_KEY_FILE", .type = K_STR, FIELD(private_key_file), .flags = KF_RESTART},
        {.path = "mtls.mode", .env = "MTLS_MODE", .type = K_ENUM, FIELD(mtls_mode), .names = mtls_names,
         .def = "permissive", .flags = KF_RESTART},
        {.path = "mtls.forward_client_cert", .env = "SHUNT_MTLS_FORWARD_CLIENT_CERT", .type = K_ENUM,
         FIELD(forward_client_cert), .names = fcc_names, .def = "sanitize_set",
         .note = "inbound X-Forwarded-Client-Cert for the application (docs/security.md, Mutual TLS)"},
        {.path = "mtls.ca_dir", .env = "SHUNT_MTLS_CA_DIR", .type = K_STR, FIELD(mtls_ca_dir),
         .def = "/var/lib/shunt/ca", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "state directory of the built-in CA (ca.pem, ca-key.pem 0600); unused with certificate_file"},
        {.path = "mtls.namespace", .env = "SHUNT_MTLS_NAMESPACE", .type = K_STR, FIELD(mtls_namespace),
         .def = "default", .flags = KF_NONEMPTY | KF_NAME | KF_RESTART},
        {.path = "mtls.service_name", .env = "SHUNT_MTLS_SERVICE_NAME", .type = K_STR, FIELD(mtls_service_name),
         .flags = KF_NAME | KF_RESTART, .note = "empty = the host name"},
        {.path = "mtls.service_account", .env = "SHUNT_MTLS_SERVICE_ACCOUNT", .type = K_STR,
         FIELD(mtls_service_account), .flags = KF_NAME | KF_RESTART, .note = "empty = mtls.service_name"},
        {.path = "mtls.key_type", .env = "SHUNT_MTLS_KEY_TYPE", .type = K_STRENUM, FIELD(mtls_key_type),
         .names = key_type_names, .def = "ecdsa-p256", .flags = KF_RESTART},
        {.path = "mtls.clock_skew", .env = "SHUNT_MTLS_CLOCK_SKEW", .type = K_DUR_S, FIELD(mtls_clock_skew_s),
         .min = 0, .max = 24 * MS_PER_HOUR, .def = "5m", .flags = KF_RESTART},
        {.path = "mtls.handshake_timeout", .env = "SHUNT_MTLS_HANDSHAKE_TIMEOUT", .type = K_DUR_MS,
         FIELD(mtls_handshake_timeout_ms), .min = 1, .max = MS_PER_HOUR, .def = "10s"},
        {.path = "mtls.federation", .type = K_JSONARR, FIELD(mtls_federation),
         .flags = KF_FILE_ONLY | KF_RESTART,
         .note = "federated trust domains: [{\"trust_domain\", \"bundle_file\": PEM or SPIFFE bundle "
                 "(JWK set)}]; a peer is verified against the bundle of its SPIFFE ID's domain only; "
                 "files reloaded on change (README, Multi-cluster)"},
        {.path = "mtls.allow", .type = K_ALLOW, LIST(mtls_allow, n_mtls_allow), .flags = KF_FILE_ONLY},
        {.path = "authorization.policies", .type = K_JSONARR, FIELD(authorization_policies),
         .flags = KF_FILE_ONLY,
         .note = "inbound authorization policies, see docs/security.md, Authorization"},
        {.path = "authorization.kubernetes", .env = "SHUNT_AUTHZ_KUBERNETES", .type = K_ENUM,
         FIELD(authz_kubernetes), .names = off_on_names, .def = "on",
         .note = "watch AuthorizationPolicy objects when service_discovery.type is kubernetes"},
        {.path = "authorization.namespace", .env = "SHUNT_AUTHZ_NAMESPACE", .type = K_STR,
         FIELD(authz_namespace), .flags = KF_NAME, .note = "whose AuthorizationPolicy objects; empty = mtls.namespace"},
        {.path = "authorization.pod_labels_file", .env = "SHUNT_POD_LABELS_FILE", .type = K_STR,
         FIELD(authz_labels_file), .def = "/etc/shunt/podinfo/labels",
         .note = "the pod's labels (a downward API file) that policy selectors match"},
        {.path = "mode", .env = "SHUNT_MODE", .type = K_ENUM, FIELD(mode), .names = mode_names,
         .def = "sidecar", .flags = KF_RESTART,
         .note = "node: one shuntd per node keeps the table of the node's meshed pods (docs/discovery.md, Node mode; in progress)"},
        {.path = "node.name", .env = "NODE_NAME", .type = K_STR, FIELD(node_name), .flags = KF_RESTART,
         .note = "this node's name (spec.nodeName), from the downward API; needed in node mode"},
        {.path = "node.max_pods", .type = K_U32, FIELD(node_max_pods), .min = 1, .max = 4096, .def = "256",
         .flags = KF_RESTART, .note = "meshed pods held in node mode; more are shed, logged and counted"},
        {.path = "node.resolve_timeout", .type = K_DUR_MS, FIELD(node_resolve_timeout_ms), .min = 1000,
         .max = 24 * MS_PER_HOUR, .def = "120s", .flags = KF_RESTART,
         .note = "how long a pod's cgroup and network namespace are looked for before it is marked failed"},
        {.path = "node.identity_drain", .type = K_DUR_S, FIELD(node_identity_drain_s), .min = 0,
         .max = 24 * MS_PER_HOUR, .def = "5m", .flags = KF_RESTART,
         .note = "how long a pod identity's certificate is kept after the last pod of that service account left the node"},
        {.path = "node.pod_max_connections", .type = K_U32, FIELD(node_pod_max_connections), .min = 1,
         .max = 65536, .def = "1024",
         .note = "node mode: connections at most per meshed pod (inbound and outbound together); more are refused and counted per pod"},
        {.path = "node.accept_timeout", .type = K_DUR_MS, FIELD(node_accept_timeout_ms), .min = 1000,
         .max = 5 * 60 * 1000, .def = "10s",
         .note = "node mode: how long a pod's connects wait in its listeners' backlog for its routes and certificate; later ones are refused (reset, counted not_ready) until both are there"},
        {.path = "node.pod_workers", .type = K_U32, FIELD(node_pod_workers), .min = 1, .max = 16, .def = "1",
         .flags = KF_RESTART, .note = "node mode: worker threads per meshed pod (each pod's connections are served by its own)"},
        {.path = "load_balancing.algorithm", .env = "LOAD_BALANCING_ALGORITHM", .type = K_STRENUM,
         FIELD(lb_algorithm), .names = lb_names, .def = "round_robin"},
        {.path = "load_balancing.hash_key", .type = K_STR, FIELD(lb_hash_key), .def = "X-Request-Key",
         .flags = KF_NONEMPTY},
        /* The seed's per-service weights map. Weights are carried by the service
         * registry (each endpoint's "weight"), so this is validated and not stored. */
        {.path = "load_balancing.weights", .type = K_WEIGHTS, .min = 0, .max = LB_WEIGHT_MAX, .flags = KF_FILE_ONLY},
        {.path = "access_log.enabled", .env = "SHUNT_ACCESS_LOG", .type = K_ENUM, FIELD(access_log_enabled),
         .names = off_on_names, .def = "on",
         .note = "one JSON line per HTTP/1.1 request, HTTP/2 stream, gRPC call and TCP connection, whatever log_level is (docs/observability.md)"},
        {.path = "access_log.sampling", .env = "SHUNT_ACCESS_LOG_SAMPLING", .type = K_STR, FIELD(access_log_sampling),
         .def = "1", .flags = KF_NONEMPTY,
         .note = "ratio in [0, 1] of requests and connections logged; lines of errors (status 0, 4xx, 5xx, a connection that ended in error) are always written"},
        {.path = "access_log.destination", .env = "SHUNT_ACCESS_LOG_DESTINATION", .type = K_STR,
         FIELD(access_log_destination), .def = "stdout", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "stdout, stderr or an absolute file path (opened for appending)"},
        {.path = "access_log.buffer_size", .type = K_BYTES, FIELD(access_log_buffer_size), .min = 4096,
         .max = 64 << 20, .def = "256KiB", .flags = KF_RESTART,
         .note = "per worker: lines wait here for the writer thread; a full buffer drops the line (shunt_access_log_dropped_total)"},
        {.path = "tracing.enabled", .env = "SHUNT_TRACING", .type = K_ENUM, FIELD(tracing_enabled),
         .names = off_on_names, .def = "off", .flags = KF_RESTART,
         .note = "a span per proxied HTTP request, HTTP/2 stream and gRPC call, exported as OTLP/HTTP JSON (docs/observability.md)"},
        {.path = "tracing.endpoint", .env = "SHUNT_TRACING_ENDPOINT", .type = K_STR, FIELD(tracing_endpoint),
         .def = "http://127.0.0.1:4318/v1/traces", .flags = KF_NONEMPTY | KF_RESTART,
         .note = "the collector's OTLP/HTTP traces URL (http:// or https://)"},
        {.path = "tracing.sampling", .env = "SHUNT_TRACING_SAMPLING", .type = K_STR, FIELD(tracing_sampling),
         .def = "0.01", .flags = KF_NONEMPTY,
         .note = "ratio in [0, 1] of new traces sampled; an incoming context's decision (traceparent flags, b3 sampled) is always followed"},
        {.path = "tracing.service_name", .env = "SHUNT_TRACING_SERVICE_NAME", .type = K_STR,
         FIELD(tracing_service_name), .flags = KF_RESTART,
         .note = "the spans' service.name; empty = mtls.service_name, else the host name"},
        {.path = "tracing.queue_size", .type = K_U32, FIELD(tracing_queue_size), .min = 16, .max = 1 << 20,
         .def = "2048", .flags = KF_RESTART,
         .note = "finished spans waiting for export, per worker; beyond it spans are dropped and counted (shunt_trace_spans_dropped_total)"},
        {.path = "tracing.batch_size", .type = K_U32, FIELD(tracing_batch_size), .min = 1, .max = 65536,
         .def = "512", .flags = KF_RESTART, .note = "spans per export request at most"},
        {.path = "tracing.timeout", .type = K_DUR_MS, FIELD(tracing_timeout_ms), .min = 100,
         .max = 60000, .def = "5s", .flags = KF_RESTART,
         .note = "an export request's limit; a batch that fails or times out is dropped and counted"},
        {.path = "tracing.flush_interval", .type = K_DUR_MS, FIELD(tracing_flush_interval_ms), .min = 10,
         .max = 60000, .def = "1s", .flags = KF_RESTART,
         .note = "a partial batch waits at most this long before it is sent"},
};
/* clang-format on */

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

_Static_assert(sizeof(enum log_level) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(enum redirect_mode) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(enum mtls_mode) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(enum capture_mode) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(enum outbound_policy) == sizeof(int), "enum fields are stored as int");

/* ---- small helpers ------------------------------------------------------- */

static void *field(struct shunt_config *c, const struct key_desc *d)
{
        return (char *)c + d->off;
}

static const void *cfield(const struct shunt_config *c, const struct key_desc *d)
{
        return (const char *)c + d->off;
}

static size_t *count_field(struct shunt_config *c, const struct key_desc *d)
{
        return (size_t *)(void *)((char *)c + d->count_off);
}

static size_t ccount(const struct shunt_config *c, const struct key_desc *d)
{
        return *(const size_t *)(const void *)((const char *)c + d->count_off);
}

/* "timeouts.idle_timeout" -> "timeouts.idle-timeout" */
static void flag_name(const struct key_desc *d, char *buf, size_t n)
{
        size_t i = 0;
        for (; d->path[i] && i + 1 < n; i++)
                buf[i] = d->path[i] == '_' ? '-' : d->path[i];
        buf[i] = '\0';
}

static const struct key_desc *find_key(const char *path)
{
        for (size_t i = 0; i < NKEYS; i++)
                if (!strcmp(keys[i].path, path))
                        return &keys[i];
        return NULL;
}

static size_t key_index(const struct key_desc *d)
{
        return (size_t)(d - keys);
}

/* True when some key lies below prefix ("timeouts" for "timeouts.connect"). */
static bool is_group(const char *prefix)
{
        size_t n = strlen(prefix);
        for (size_t i = 0; i < NKEYS; i++)
                if (!strncmp(keys[i].path, prefix, n) && keys[i].path[n] == '.')
                        return true;
        return false;
}

/* The distinct names directly below prefix ("" = top level), comma separated. */
static void children_of(const char *prefix, char *buf, size_t n)
{
        struct strbuf sb;
        strbuf_init_static(&sb, buf, n);
        size_t plen = strlen(prefix);
        for (size_t i = 0; i < NKEYS; i++) {
                const char *p = keys[i].path;
                if (plen) {
                        if (strncmp(p, prefix, plen) || p[plen] != '.')
                                continue;
                        p += plen + 1;
                }
                size_t seg = strcspn(p, ".");
                /* skip a name already listed by an earlier key */
                bool dup = false;
                for (size_t j = 0; j < i && !dup; j++) {
                        const char *q = keys[j].path;
                        if (plen) {
                                if (strncmp(q, prefix, plen) || q[plen] != '.')
                                        continue;
                                q += plen + 1;
                        }
                        dup = strcspn(q, ".") == seg && !strncmp(p, q, seg);
                }
                if (dup)
                        continue;
                if (sb.len)
                        strbuf_append(&sb, ", ");
                strbuf_appendn(&sb, p, seg);
        }
}

static void join_names(const char *const *names, char *buf, size_t n)
{
        struct strbuf sb;
        strbuf_init_static(&sb, buf, n);
        for (size_t i = 0; names[i]; i++)
                strbuf_appendf(&sb, "%s%s", i ? ", " : "", names[i]);
}

/* 90061001 -> "25h1m1s1ms"; 0 -> "0s" */
static void fmt_duration(uint64_t ms, char *buf, size_t n)
{
        struct strbuf sb;
        strbuf_init_static(&sb, buf, n);
        if (!ms) {
                strbuf_append(&sb, "0s");
                return;
        }
        uint64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, r = ms % 1000;
        if (h)
                strbuf_appendf(&sb, "%lluh", (unsigned long long)h);
        if (m)
                strbuf_appendf(&sb, "%llum", (unsigned long long)m);
        if (s)
                strbuf_appendf(&sb, "%llus", (unsigned long long)s);
        if (r)
                strbuf_appendf(&sb, "%llums", (unsigned long long)r);
}

/* What a key accepts, for error messages and --help. */
static void describe(const struct key_desc *d, char *buf, size_t n)
{
        char a[256], b[32], c[32];
        switch (d->type) {
        case K_PORT:
                snprintf(buf, n, "expected a port 1..65535");
                break;
        case K_INT:
        case K_U32:
                snprintf(buf, n, "expected an integer %lld..%lld%s%s", d->min, d->max,
                         d->note ? ", " : "", d->note ? d->note : "");
                break;
        case K_MARK:
                snprintf(buf, n, "expected a mark 1..0xffffffff (decimal or 0x hex)");
                break;
        case K_BYTES:
                snprintf(buf, n, "expected a size in bytes %lld..%lld (e.g. 65536, 64KiB, 1MiB)",
                         d->min, d->max);
                break;
        case K_ADDR:
                snprintf(buf, n, "expected an IPv4 or IPv6 address%s%s%s",
                         d->flags & KF_OFF ? " or off" : "", d->note ? ", " : "",
                         d->note ? d->note : "");
                break;
        case K_STR:
                if (d->flags & KF_TRUST_DOMAIN)
                        snprintf(buf, n,
                                 "expected a trust domain of lowercase letters, digits, '.', '-', "
                                 "'_' (1..%zu bytes)",
                                 d->size - 1);
                else if (d->flags & KF_NAME)
                        snprintf(buf, n,
                                 "expected a name of letters, digits, '.', '-', '_' (at most %zu "
                                 "bytes, not \".\" or \"..\")%s",
                                 d->size - 1, d->flags & KF_NONEMPTY ? ", not empty" : "");
                else
                        snprintf(buf, n, "expected a %sstring of at most %zu bytes",
                                 d->flags & KF_NONEMPTY ? "non-empty " : "", d->size - 1);
                break;
        case K_ENUM:
        case K_STRENUM:
                join_names(d->names, a, sizeof(a));
                snprintf(buf, n, "allowed: %s", a);
                break;
        case K_DUR_MS:
        case K_DUR_S:
                fmt_duration((uint64_t)d->min, b, sizeof(b));
                fmt_duration((uint64_t)d->max, c, sizeof(c));
                snprintf(buf, n,
                         "expected a duration %s..%s%s (e.g. 100ms, 1.5s, 1m30s; a bare integer is "
                         "seconds)",
                         b, c, d->type == K_DUR_S ? " in whole seconds" : "");
                break;
        case K_PORTS:
                snprintf(buf, n,
                         "expected at most %d ports 1..65535 (a JSON array, or comma-separated)",
                         CONFIG_MAX_EXCLUDES);
                break;
        case K_CIDRS:
                snprintf(buf, n,
                         "expected at most %d CIDRs like 10.0.0.0/8 or fd00::/8 (a JSON array, or "
                         "comma-separated)",
                         CONFIG_MAX_EXCLUDES);
                break;
        case K_WEIGHTS:
                snprintf(buf, n, "expected an object of name: integer weight %lld..%lld", d->min,
                         d->max);
                break;
        case K_ALLOW:
                snprintf(buf, n,
                         "expected an object of destination port (\"1\"..\"65535\", or \"*\" for "
                         "every port): array of SPIFFE IDs spiffe://<mtls.trust_domain>/<path>, at "
                         "most %d IDs in all, each under %d bytes",
                         CONFIG_MAX_ALLOW, CONFIG_PATH_MAX);
                break;
        case K_JSONARR:
                snprintf(buf, n, "expected a JSON array%s%s", d->note ? ": " : "",
                         d->note ? d->note : "");
                break;
        }
}

/* ---- errors -------------------------------------------------------------- */

struct ctx {
        struct shunt_config *c;
        char *err;
        size_t errlen;
};

static void errf(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errf(struct ctx *x, const char *fmt, ...)
{
        if (!x->err || !x->errlen)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->err, x->errlen, fmt, ap);
        va_end(ap);
}

static void label(const struct key_desc *d, enum config_source src, char *buf, size_t n)
{
        char f[KEY_MAX];
        switch (src) {
        case CONFIG_SRC_ENV:
                snprintf(buf, n, "%s (env)", d->env);
                break;
        case CONFIG_SRC_FLAG:
                flag_name(d, f, sizeof(f));
                snprintf(buf, n, "--%s", f);
                break;
        case CONFIG_SRC_DEFAULT:
                snprintf(buf, n, "%s (built-in default)", d->path);
                break;
        case CONFIG_SRC_FILE:
                snprintf(buf, n, "%s", d->path);
                break;
        }
}

/* A bad value, shortened and with control characters escaped. */
static void show(const struct key_desc *d, const char *v, char *buf, size_t n)
{
        struct strbuf sb;
        strbuf_init_static(&sb, buf, n);
        if (d && (d->flags & KF_SECRET)) {
                strbuf_append(&sb, "<redacted>");
                return;
        }
        if (!*v) {
                strbuf_append(&sb, "\"\"");
                return;
        }
        size_t i = 0;
        for (; v[i] && i < SHOW_MAX; i++) {
                unsigned char ch = (unsigned char)v[i];
                if (ch < 0x20 || ch == 0x7f)
                        strbuf_appendf(&sb, "\\x%02x", ch);
                else
                        strbuf_appendn(&sb, &v[i], 1);
        }
        if (v[i])
                strbuf_append(&sb, "...");
}

/* "config: <label>: <value>: <what>" ; what defaults to describe(d). */
static int bad(struct ctx *x, const struct key_desc *d, enum config_source src, const char *value,
               const char *what)
{
        char l[KEY_MAX + 16], v[SHOW_MAX * 4 + 8], w[512];
        label(d, src, l, sizeof(l));
        show(d, value, v, sizeof(v));
        if (!what) {
                describe(d, w, sizeof(w));
                what = w;
        }
        errf(x, "config: %s: %s: %s", l, v, what);
        return -EINVAL;
}

/* ---- parsing single values ----------------------------------------------- */

/* Strict decimal (or 0x hex when hex): no spaces, no '+', no junk. */
static bool parse_ll(const char *s, bool hex, long long *out)
{
        int base = 10;
        const char *p = s;
        if (hex && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
                base = 16;
                p += 2;
                if (!*p || p[strspn(p, "0123456789abcdefABCDEF")])
                        return false;
        } else if (!isdigit((unsigned char)*p) && !(*p == '-' && isdigit((unsigned char)p[1]))) {
                return false;
        }
        errno = 0;
        char *end;
        long long v = strtoll(p, &end, base);
        if (errno || *end || end == p)
                return false;
        *out = v;
        return true;
}

static bool parse_bytes(const char *s, long long *out)
{
        size_t n = strspn(s, "0123456789");
        if (!n || n > 12)
                return false;
        char num[16];
        memcpy(num, s, n);
        num[n] = '\0';
        long long v = strtoll(num, NULL, 10);
        const char *u = s + n;
        if (!strcmp(u, "") || !strcmp(u, "B"))
                ;
        else if (!strcmp(u, "K") || !strcmp(u, "KiB"))
                v *= 1024;
        else if (!strcmp(u, "M") || !strcmp(u, "MiB"))
                v *= 1024 * 1024;
        else
                return false;
        *out = v;
        return true;
}

static bool valid_trust_domain(const char *s)
{
        for (; *s; s++)
                if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) &&
                    !strchr(".-_", *s))
                        return false;
        return true;
}

/* A SPIFFE path segment (namespace, service account); "" is checked by KF_NONEMPTY. */
static bool valid_name(const char *s)
{
        if (!strcmp(s, ".") || !strcmp(s, ".."))
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char)*s) && !strchr(".-_", *s))
                        return false;
        return true;
}

/* A SPIFFE ID as mtls.allow takes it: "spiffe://" <trust domain> then
 * "/"-separated path segments (valid_name). NULL when valid, else what is
 * wrong. The same rules as spiffe_id_parse (core/spiffe.c). */
static const char *spiffe_id_problem(const char *s)
{
        if (strncmp(s, "spiffe://", 9))
                return "does not start with spiffe://";
        const char *td = s + 9, *slash = strchr(td, '/');
        size_t tdlen = slash ? (size_t)(slash - td) : strlen(td);
        if (!tdlen || tdlen > 255)
                return "trust domain is empty or longer than 255 bytes";
        char buf[256];
        memcpy(buf, td, tdlen);
        buf[tdlen] = 0;
        if (!valid_trust_domain(buf))
                return "trust domain has characters other than a-z 0-9 . - _";
        if (!slash || !slash[1])
                return "no path (a workload ID looks like spiffe://<td>/ns/<ns>/sa/<sa>)";
        for (const char *p = slash; *p;) {
                const char *seg = p + 1, *end = strchr(seg, '/');
                size_t len = end ? (size_t)(end - seg) : strlen(seg);
                if (!len || len >= sizeof(buf))
                        return "empty or overlong path segment";
                memcpy(buf, seg, len);
                buf[len] = 0;
                if (!valid_name(buf))
                        return "path segment is \".\", \"..\" or has characters other than "
                               "letters, digits . - _";
                p = seg + len;
        }
        return NULL;
}

static int store_string(struct ctx *x, const struct key_desc *d, enum config_source src,
                        const char *text, const char *display)
{
        size_t len = strlen(text);
        if (len >= d->size || ((d->flags & KF_NONEMPTY) && !len) ||
            ((d->flags & KF_TRUST_DOMAIN) && !valid_trust_domain(text)) ||
            ((d->flags & KF_NAME) && !valid_name(text)))
                return bad(x, d, src, display, NULL);
        memcpy(field(x->c, d), text, len + 1);
        return 0;
}

static int store_enum(struct ctx *x, const struct key_desc *d, enum config_source src,
                      const char *text, const char *display)
{
        for (int i = 0; d->names[i]; i++) {
                if (strcmp(text, d->names[i]))
                        continue;
                if (d->type == K_ENUM)
                        *(int *)field(x->c, d) = i;
                else
                        snprintf(field(x->c, d), d->size, "%s", text);
                return 0;
        }
        for (int i = 0; d->reserved && d->reserved[i]; i++) {
                if (strcmp(text, d->reserved[i]))
                        continue;
                char names[256], what[400];
                join_names(d->names, names, sizeof(names));
                snprintf(what, sizeof(what), "%s; allowed: %s", d->reserved_why, names);
                return bad(x, d, src, display, what);
        }
        return bad(x, d, src, display, NULL);
}

#define ELEM_PORT "expected a port 1..65535"
#define ELEM_CIDR                                                                                  \
        "expected a CIDR like 10.0.0.0/8 or fd00::/8 (prefix length at most 32 for IPv4, 128 "     \
        "for IPv6)"

/* One element of a list key, stored at index i. */
static int store_elem(struct ctx *x, const struct key_desc *d, enum config_source src,
                      const char *text, const char *display, size_t i)
{
        if (i >= CONFIG_MAX_EXCLUDES) {
                char what[64];
                snprintf(what, sizeof(what), "too many entries: at most %d", CONFIG_MAX_EXCLUDES);
                return bad(x, d, src, display, what);
        }
        if (d->type == K_PORTS) {
                long long v;
                if (!parse_ll(text, false, &v) || v < 1 || v > 65535)
                        return bad(x, d, src, display, ELEM_PORT);
                ((uint16_t *)field(x->c, d))[i] = (uint16_t)v;
        } else {
                if (parse_cidr(text, &((struct cidr *)field(x->c, d))[i]))
                        return bad(x, d, src, display, ELEM_CIDR);
        }
        *count_field(x->c, d) = i + 1;
        return 0;
}

/* A comma-separated list; spaces around elements are ignored; "" = empty. */
static int store_list_text(struct ctx *x, const struct key_desc *d, enum config_source src,
                           const char *text)
{
        *count_field(x->c, d) = 0;
        const char *p = text;
        while (*p == ' ' || *p == '\t')
                p++;
        if (!*p)
                return 0;
        for (size_t i = 0;; i++) {
                const char *end = strchr(p, ',');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                char elem[96];
                while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
                        n--;
                if (n >= sizeof(elem))
                        n = sizeof(elem) - 1;
                memcpy(elem, p, n);
                elem[n] = '\0';
                int rc = store_elem(x, d, src, elem, n ? elem : text, i);
                if (rc)
                        return rc;
                if (!end)
                        return 0;
                p = end + 1;
                while (*p == ' ' || *p == '\t')
                        p++;
        }
}

/* Sets key d from text (default, environment or flag; the file path converts
 * its JSON value to text first). display is what an error shows. */
static int set_text(struct ctx *x, const struct key_desc *d, enum config_source src,
                    const char *text, const char *display)
{
        long long v;
        uint64_t ms;
        if (!display)
                display = text;
        switch (d->type) {
        case K_PORT:
                if (!parse_ll(text, false, &v) || v < 1 || v > 65535)
                        return bad(x, d, src, display, NULL);
                *(uint16_t *)field(x->c, d) = (uint16_t)v;
                break;
        case K_INT:
        case K_U32:
        case K_MARK:
        case K_BYTES:
                if (d->type == K_BYTES ? !parse_bytes(text, &v)
                                       : !parse_ll(text, d->type == K_MARK, &v))
                        return bad(x, d, src, display, NULL);
                if (v < d->min || v > d->max)
                        return bad(x, d, src, display, NULL);
                if (d->type == K_INT)
                        *(int *)field(x->c, d) = (int)v;
                else
                        *(uint32_t *)field(x->c, d) = (uint32_t)v;
                break;
        case K_ADDR: {
                unsigned char tmp[sizeof(struct in6_addr)];
                if ((d->flags & KF_OFF) && !strcmp(text, "off")) {
                        snprintf(field(x->c, d), d->size, "off");
                        break;
                }
                if (strlen(text) >= d->size ||
                    (inet_pton(AF_INET, text, tmp) != 1 && inet_pton(AF_INET6, text, tmp) != 1))
                        return bad(x, d, src, display, NULL);
                snprintf(field(x->c, d), d->size, "%s", text);
                break;
        }
        case K_STR:
                return store_string(x, d, src, text, display);
        case K_ENUM:
        case K_STRENUM:
                return store_enum(x, d, src, text, display);
        case K_DUR_MS:
        case K_DUR_S:
                if (parse_duration_ms(text, &ms) || ms < (uint64_t)d->min ||
                    ms > (uint64_t)d->max || (d->type == K_DUR_S && ms % 1000))
                        return bad(x, d, src, display, NULL);
                *(uint32_t *)field(x->c, d) = (uint32_t)(d->type == K_DUR_S ? ms / 1000 : ms);
                break;
        case K_PORTS:
        case K_CIDRS:
                return store_list_text(x, d, src, text);
        case K_WEIGHTS:
        case K_ALLOW:
        case K_JSONARR:
                return bad(x, d, src, display, "only settable in the config file");
        }
        return 0;
}

/* ---- the JSON file ------------------------------------------------------- */

/* The JSON text of v, shortened, for error messages (caller frees). */
static char *json_show(const cJSON *v)
{
        char *s = cJSON_PrintUnformatted(v);
        return s ? s : strdup("?");
}

/* An integral JSON number as decimal text, or NULL when it is not one. */
static const char *json_int_text(const cJSON *v, char *buf, size_t n)
{
        if (!cJSON_IsNumber(v))
                return NULL;
        double dv = v->valuedouble;
        if (!(dv > -1e15 && dv < 1e15) || (double)(long long)dv != dv)
                return NULL;
        snprintf(buf, n, "%lld", (long long)dv);
        return buf;
}

static const char *json_kind(const struct key_desc *d)
{
        switch (d->type) {
        case K_PORT:
        case K_INT:
        case K_U32:
                return "an integer";
        case K_MARK:
        case K_BYTES:
        case K_DUR_MS:
        case K_DUR_S:
                return "a string or an integer";
        case K_ADDR:
        case K_STR:
        case K_ENUM:
        case K_STRENUM:
                return "a string";
        case K_PORTS:
        case K_CIDRS:
        case K_JSONARR:
                return "an array";
        case K_WEIGHTS:
        case K_ALLOW:
                return "an object";
        }
        return "?";
}

/* what == NULL: v has the wrong JSON type. */
static int bad_json(struct ctx *x, const struct key_desc *d, const cJSON *v, const char *what)
{
        char buf[600], desc[512];
        if (!what) {
                describe(d, desc, sizeof(desc));
                snprintf(buf, sizeof(buf), "%s (in JSON: %s)", desc, json_kind(d));
                what = buf;
        }
        char *s = json_show(v);
        int rc = bad(x, d, CONFIG_SRC_FILE, s, what);
        free(s);
        return rc;
}

static int set_json(struct ctx *x, const struct key_desc *d, const cJSON *v)
{
        char num[32], *disp = NULL;
        const char *text = NULL;
        int rc;
        switch (d->type) {
        case K_PORT:
        case K_INT:
        case K_U32:
                text = json_int_text(v, num, sizeof(num));
                break;
        case K_MARK:
        case K_BYTES:
        case K_DUR_MS:
        case K_DUR_S:
                text = cJSON_IsString(v) ? v->valuestring : json_int_text(v, num, sizeof(num));
                break;
        case K_ADDR:
        case K_STR:
        case K_ENUM:
        case K_STRENUM:
                text = cJSON_IsString(v) ? v->valuestring : NULL;
                break;
        case K_PORTS:
        case K_CIDRS: {
                if (!cJSON_IsArray(v))
                        return bad_json(x, d, v, NULL);
                *count_field(x->c, d) = 0;
                size_t i = 0;
                const cJSON *e;
                cJSON_ArrayForEach(e, v)
                {
                        const char *t = d->type == K_PORTS
                                            ? json_int_text(e, num, sizeof(num))
                                            : (cJSON_IsString(e) ? e->valuestring : NULL);
                        disp = json_show(e);
                        rc = t ? store_elem(x, d, CONFIG_SRC_FILE, t, disp, i++)
                               : bad(x, d, CONFIG_SRC_FILE, disp,
                                     d->type == K_PORTS ? ELEM_PORT " (in JSON: an integer)"
                                                        : ELEM_CIDR " (in JSON: a string)");
                        free(disp);
                        if (rc)
                                return rc;
                }
                return 0;
        }
        case K_WEIGHTS: {
                if (!cJSON_IsObject(v))
                        return bad_json(x, d, v, NULL);
                const cJSON *e;
                cJSON_ArrayForEach(e, v)
                {
                        long long w;
                        const char *t = json_int_text(e, num, sizeof(num));
                        if (!*e->string || !t || !parse_ll(t, false, &w) || w < d->min ||
                            w > d->max) {
                                char what[400], desc[200];
                                describe(d, desc, sizeof(desc));
                                snprintf(what, sizeof(what), "weight of \"%.64s\": %s", e->string,
                                         desc);
                                return bad_json(x, d, e, what);
                        }
                }
                return 0;
        }
        case K_JSONARR: {
                if (!cJSON_IsArray(v))
                        return bad_json(x, d, v, NULL);
                char **f = field(x->c, d);
                free(*f);
                *f = cJSON_PrintUnformatted(v);
                if (!*f) {
                        errf(x, "config: %s: out of memory", d->path);
                        return -ENOMEM;
                }
                return 0;
        }
        case K_ALLOW: {
                if (!cJSON_IsObject(v))
                        return bad_json(x, d, v, NULL);
                struct config_allow *out = field(x->c, d);
                size_t *cnt = count_field(x->c, d);
                *cnt = 0;
                const cJSON *e;
                cJSON_ArrayForEach(e, v)
                {
                        char what[600], desc[400];
                        long long port = 0;
                        describe(d, desc, sizeof(desc));
                        bool any = !strcmp(e->string, "*");
                        if (!any && (!parse_ll(e->string, false, &port) || port < 1 ||
                                     port > 65535 || e->string[0] == '0')) {
                                snprintf(what, sizeof(what), "key \"%.16s\" is not a port: %s",
                                         e->string, desc);
                                return bad_json(x, d, v, what);
                        }
                        for (const cJSON *p = v->child; p != e; p = p->next)
                                if (!strcmp(p->string, e->string)) {
                                        snprintf(what, sizeof(what), "port \"%s\" given twice",
                                                 e->string);
                                        return bad_json(x, d, v, what);
                                }
                        if (!cJSON_IsArray(e) || !cJSON_GetArraySize(e)) {
                                snprintf(what, sizeof(what),
                                         "port \"%s\": expected a non-empty array of SPIFFE IDs",
                                         e->string);
                                return bad_json(x, d, e, what);
                        }
                        const cJSON *id;
                        cJSON_ArrayForEach(id, e)
                        {
                                const char *why = !cJSON_IsString(id) ? "not a string"
                                                  : strlen(id->valuestring) >= sizeof(out->id)
                                                      ? "too long"
                                                      : spiffe_id_problem(id->valuestring);
                                if (!why && *cnt >= CONFIG_MAX_ALLOW) {
                                        snprintf(what, sizeof(what),
                                                 "more than %d SPIFFE IDs in all (the bound of "
                                                 "mtls.allow)",
                                                 CONFIG_MAX_ALLOW);
                                        return bad_json(x, d, id, what);
                                }
                                if (why) {
                                        snprintf(what, sizeof(what),
                                                 "port \"%s\": not a usable SPIFFE ID (%s): %s",
                                                 e->string, why, desc);
                                        return bad_json(x, d, id, what);
                                }
                                out[*cnt].port = (uint16_t)port;
                                snprintf(out[*cnt].id, sizeof(out->id), "%s", id->valuestring);
                                (*cnt)++;
                        }
                }
                return 0;
        }
        }
        if (!text)
                return bad_json(x, d, v, NULL);
        disp = json_show(v);
        rc = set_text(x, d, CONFIG_SRC_FILE, text, disp);
        free(disp);
        return rc;
}

static int walk(struct ctx *x, const cJSON *obj, const char *prefix)
{
        const cJSON *child;
        cJSON_ArrayForEach(child, obj)
        {
                char path[KEY_MAX], allowed[CONFIG_ERR_MAX];
                const char *name = child->string ? child->string : "";
                int n = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", name);
                bool too_long = n < 0 || (size_t)n >= sizeof(path);
                for (const cJSON *s = obj->child; s != child; s = s->next) {
                        if (!strcmp(s->string, name)) {
                                errf(x, "config: %s: duplicate key", path);
                                return -EINVAL;
                        }
                }
                const struct key_desc *d = too_long ? NULL : find_key(path);
                if (d) {
                        int rc = set_json(x, d, child);
                        if (rc)
                                return rc;
                        x->c->origins[key_index(d)].source = CONFIG_SRC_FILE;
                } else if (!too_long && is_group(path)) {
                        if (!cJSON_IsObject(child)) {
                                char *s = json_show(child);
                                children_of(path, allowed, sizeof(allowed));
                                errf(x, "config: %s: %.64s%s: expected an object with keys %s",
                                     path, s, strlen(s) > 64 ? "..." : "", allowed);
                                free(s);
                                return -EINVAL;
                        }
                        int rc = walk(x, child, path);
                        if (rc)
                                return rc;
                } else {
                        children_of(prefix, allowed, sizeof(allowed));
                        errf(x, "config: %.*s: unknown key: allowed%s%s: %s", KEY_MAX, path,
                             *prefix ? " in " : " at the top level", prefix, allowed);
                        return -EINVAL;
                }
        }
        return 0;
}

static unsigned line_of(const char *buf, const char *pos)
{
        unsigned line = 1;
        for (const char *p = buf; p < pos; p++)
                line += *p == '\n';
        return line;
}

static int load_file(struct ctx *x, const char *path)
{
        char *buf = NULL;
        size_t len = 0;
        char why[CONFIG_PATH_MAX + 64];
        /* a regular file, a pipe or /dev/stdin */
        int rc = file_read(path, CONFIG_FILE_MAX, &buf, &len, why, sizeof(why));
        if (rc < 0)
                errf(x, "config: %s", why);
        if (rc)
                return rc;
        const char *nul = memchr(buf, '\0', len);
        if (nul) {
                errf(x, "config: %s:%u: invalid JSON: contains a NUL byte", path,
                     line_of(buf, nul));
                free(buf);
                return -EINVAL;
        }
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithOpts(buf, &end, 1);
        if (!root) {
                if (!end || end < buf || end > buf + len)
                        end = buf + len;
                char near[SHOW_MAX * 4 + 8];
                size_t n = strcspn(end, "\r\n");
                if (n > 24)
                        n = 24;
                char snip[32];
                memcpy(snip, end, n);
                snip[n] = '\0';
                show(NULL, snip, near, sizeof(near));
                if (*end)
                        errf(x, "config: %s:%u: invalid JSON near '%s'", path, line_of(buf, end),
                             near);
                else
                        errf(x, "config: %s:%u: invalid JSON: unexpected end of file", path,
                             line_of(buf, end));
                free(buf);
                return -EINVAL;
        }
        if (!cJSON_IsObject(root)) {
                errf(x, "config: %s:1: the top level must be a JSON object", path);
                rc = -EINVAL;
        } else {
                rc = walk(x, root, "");
        }
        cJSON_Delete(root);
        free(buf);
        return rc;
}

/* ---- flags and environment ----------------------------------------------- */

struct flag_set {
        const struct key_desc *d;
        const char *value;
};

static const struct key_desc *find_flag(const char *name, size_t n)
{
        char f[KEY_MAX];
        for (size_t i = 0; i < NKEYS; i++) {
                if (keys[i].flags & KF_FILE_ONLY)
                        continue;
                flag_name(&keys[i], f, sizeof(f));
                if (strlen(f) == n && !strncmp(f, name, n))
                        return &keys[i];
        }
        return NULL;
}

/* Checks the flags' shape and collects them; applied after file and env. */
static int scan_flags(struct ctx *x, int argc, char *const argv[], struct flag_set *sets,
                      size_t *nsets, const char **config_path)
{
        *nsets = 0;
        *config_path = NULL;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (strncmp(a, "--", 2) || !a[2]) {
                        char v[SHOW_MAX * 4 + 8];
                        show(NULL, a, v, sizeof(v));
                        errf(
                            x,
                            "config: %s: unexpected argument: flags are --key value or --key=value",
                            v);
                        return -EINVAL;
                }
                const char *name = a + 2, *eq = strchr(name, '='), *value;
                size_t n = eq ? (size_t)(eq - name) : strlen(name);
                bool is_config = n == 6 && !strncmp(name, "config", 6);
                const struct key_desc *d = is_config ? NULL : find_flag(name, n);
                if (!is_config && !d) {
                        char v[SHOW_MAX * 4 + 8], nm[KEY_MAX];
                        snprintf(nm, sizeof(nm), "%.*s", (int)(n < KEY_MAX - 1 ? n : KEY_MAX - 1),
                                 name);
                        show(NULL, nm, v, sizeof(v));
                        errf(x, "config: --%s: unknown flag; the flags are listed by --help", v);
                        return -EINVAL;
                }
                if (eq) {
                        value = eq + 1;
                } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
                        value = argv[++i];
                } else {
                        char what[512];
                        if (is_config)
                                snprintf(what, sizeof(what), "expected a file name");
                        else
                                describe(d, what, sizeof(what));
                        errf(x, "config: --%.*s: missing value: %s", (int)n, name, what);
                        return -EINVAL;
                }
                if (is_config) {
                        if (!*value) {
                                errf(x, "config: --config: empty value: expected a file name");
                                return -EINVAL;
                        }
                        *config_path = value;
                } else {
                        sets[(*nsets)++] = (struct flag_set){d, value};
                }
        }
        return 0;
}

/* The first NAME=value in envp (as getenv would), or NULL. */
static const char *env_lookup(char *const envp[], const char *name)
{
        size_t n = strlen(name);
        for (size_t i = 0; envp && envp[i]; i++)
                if (!strncmp(envp[i], name, n) && envp[i][n] == '=')
                        return envp[i] + n + 1;
        return NULL;
}

/* ---- load ---------------------------------------------------------------- */

static void config_destroy(struct snapshot *s)
{
        struct shunt_config *c = (struct shunt_config *)s;
        free(c->authorization_policies);
        free(c->dns_services);
        free(c->sd_clusters);
        free(c->mtls_federation);
        free(c->origins);
        free(c);
}

struct shunt_config *config_clone(const struct shunt_config *c)
{
        struct shunt_config *n = malloc(sizeof(*n));
        if (!n)
                return NULL;
        memcpy(n, c, sizeof(*n));
        n->authorization_policies = NULL;
        n->dns_services = NULL;
        n->sd_clusters = NULL;
        n->mtls_federation = NULL;
        n->origins = NULL;
        if (c->authorization_policies &&
            !(n->authorization_policies = strdup(c->authorization_policies)))
                goto fail;
        if (c->dns_services && !(n->dns_services = strdup(c->dns_services)))
                goto fail;
        if (c->sd_clusters && !(n->sd_clusters = strdup(c->sd_clusters)))
                goto fail;
        if (c->mtls_federation && !(n->mtls_federation = strdup(c->mtls_federation)))
                goto fail;
        if (c->origins) {
                n->origins = malloc(c->n_origins * sizeof(*n->origins));
                if (!n->origins)
                        goto fail;
                memcpy(n->origins, c->origins, c->n_origins * sizeof(*n->origins));
        }
        snapshot_init(&n->snap, config_destroy);
        return n;
fail:
        free(n->authorization_policies);
        free(n->dns_services);
        free(n->sd_clusters);
        free(n->mtls_federation);
        free(n);
        return NULL;
}

static const struct key_desc *later(const struct shunt_config *c, const struct key_desc *a,
                                    const struct key_desc *b)
{
        /* The key with the more specific source is the one to name. */
        return c->origins[key_index(a)].source > c->origins[key_index(b)].source ? a : b;
}

static int check_ports(struct ctx *x)
{
        struct shunt_config *c = x->c;
        const struct key_desc *p[4] = {find_key("inbound_port"), find_key("outbound_port"),
                                       find_key("admin_port"), find_key("admin.metrics_port")};
        int n = config_metrics_enabled(c) ? 4 : 3;
        for (int i = 0; i < n; i++) {
                for (int j = i + 1; j < n; j++) {
                        uint16_t a = *(uint16_t *)field(c, p[i]), b = *(uint16_t *)field(c, p[j]);
                        if (a != b)
                                continue;
                        const struct key_desc *d = later(c, p[i], p[j]);
                        const struct key_desc *o = d == p[i] ? p[j] : p[i];
                        char v[16], what[128];
                        snprintf(v, sizeof(v), "%u", a);
                        snprintf(what, sizeof(what), "must differ from %s (also %u)", o->path, a);
                        return bad(x, d, c->origins[key_index(d)].source, v, what);
                }
        }
        return 0;
}

bool config_metrics_enabled(const struct shunt_config *cfg)
{
        return strcmp(cfg->metrics_address, "off") != 0;
}

/* "https://" host [":" port] ["/"]: no user info, path, query or blanks. */
static bool valid_ca_address(const char *s)
{
        if (strncmp(s, "https://", 8) != 0)
                return false;
        const char *h = s + 8;
        size_t n = strlen(h);
        if (n && h[n - 1] == '/')
                n--;
        if (n == 0 || h[0] == ':')
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)h[i];
                if (!isalnum(c) && !strchr(".-:[]", c))
                        return false;
        }
        return true;
}

/* The ca source: where shunt-ca is and what verifies it; exclusive with files. */
static int check_ca_source(struct ctx *x)
{
        struct shunt_config *c = x->c;
        const struct key_desc *d = find_key("mtls.ca_address");
        enum config_source src = c->origins[key_index(d)].source;
        if (!valid_ca_address(c->mtls_ca_address))
                return bad(x, d, src, c->mtls_ca_address,
                           "expected https://<host>[:<port>] (shunt-ca, e.g. "
                           "https://shunt-ca.shunt-system.svc:15012)");
        if (c->certificate_file[0] || c->private_key_file[0])
                return bad(x, d, src, c->mtls_ca_address,
                           "cannot be combined with mtls.certificate_file/private_key_file: "
                           "choose one certificate source");
        if (!c->ca_bundle[0]) {
                const struct key_desc *b = find_key("mtls.ca_bundle");
                return bad(x, b, c->origins[key_index(b)].source, "",
                           "required when mtls.ca_address is set (it verifies shunt-ca's "
                           "certificate)");
        }
        return 0;
}

/* The workload's identity defaults and the certificate source's keys. */
static int check_mtls(struct ctx *x)
{
        struct shunt_config *c = x->c;
        /* With the ca source the identity comes from the service-account
         * token: the host name (in a pod, the pod's name) is no service name. */
        if (c->mtls_ca_address[0])
                return check_ca_source(x);
        if (!c->mtls_service_name[0]) {
                char host[256] = "";
                if (gethostname(host, sizeof(host) - 1) < 0 || !host[0] || !valid_name(host) ||
                    strlen(host) >= sizeof(c->mtls_service_name)) {
                        const struct key_desc *d = find_key("mtls.service_name");
                        return bad(x, d, c->origins[key_index(d)].source, "",
                                   "the host name is not a valid service name: set it");
                }
                memcpy(c->mtls_service_name, host, strlen(host) + 1);
        }
        if (!c->mtls_service_account[0])
                snprintf(c->mtls_service_account, sizeof(c->mtls_service_account), "%s",
                         c->mtls_service_name);
        if (!c->certificate_file[0])
                return 0;
        const char *need[] = {"mtls.private_key_file", "mtls.ca_bundle"};
        const char *have[] = {c->private_key_file, c->ca_bundle};
        for (int i = 0; i < 2; i++) {
                if (have[i][0])
                        continue;
                const struct key_desc *d = find_key(need[i]);
                return bad(x, d, c->origins[key_index(d)].source, "",
                           "required when mtls.certificate_file is set");
        }
        return 0;
}

/* Pairs of keys where one bounds the other. */
/* load_balancing.failover: at most LB_FAILOVER_MAX (5) distinct regions of
 * at most 63 bytes, none the local one, and only with local_region. */
static int check_failover(struct ctx *x)
{
        struct shunt_config *c = x->c;
        if (!c->lb_failover[0])
                return 0;
        const struct key_desc *d = find_key("load_balancing.failover");
        const char *src_v = c->lb_failover;
        enum config_source src = c->origins[key_index(d)].source;
        if (!c->lb_local_region[0])
                return bad(x, d, src, src_v, "needs load_balancing.local_region");
        char seen[5][64];
        int n = 0;
        for (const char *p = c->lb_failover; *p;) {
                size_t len = strcspn(p, ",");
                if (len == 0 || len >= sizeof(seen[0]))
                        return bad(x, d, src, src_v, "comma-separated region names of 1..63 bytes");
                if (n == 5)
                        return bad(x, d, src, src_v, "at most 5 regions");
                memcpy(seen[n], p, len);
                seen[n][len] = 0;
                if (strcmp(seen[n], c->lb_local_region) == 0)
                        return bad(x, d, src, src_v, "lists load_balancing.local_region");
                for (int k = 0; k < n; k++)
                        if (strcmp(seen[k], seen[n]) == 0)
                                return bad(x, d, src, src_v, "lists a region twice");
                n++;
                p += len;
                if (*p == ',')
                        p++;
        }
        return 0;
}

static int check_resilience(struct ctx *x)
{
        struct shunt_config *c = x->c;
        if (c->od_max_ejection_ms < c->od_base_ejection_ms) {
                const struct key_desc *d = find_key("outlier_detection.max_ejection_time");
                char v[32];
                snprintf(v, sizeof(v), "%ums", c->od_max_ejection_ms);
                return bad(x, d, c->origins[key_index(d)].source, v,
                           "at least outlier_detection.base_ejection_time");
        }
        if (c->retry_backoff_max_ms < c->retry_backoff_base_ms) {
                const struct key_desc *d = find_key("retries.backoff_max");
                char v[32];
                snprintf(v, sizeof(v), "%ums", c->retry_backoff_max_ms);
                return bad(x, d, c->origins[key_index(d)].source, v,
                           "at least retries.backoff_base");
        }
        int frc = check_failover(x);
        if (frc)
                return frc;
        if (c->dns_max_ttl_ms < c->dns_min_ttl_ms) {
                const struct key_desc *d = find_key("service_discovery.dns.max_ttl");
                char v[32];
                snprintf(v, sizeof(v), "%ums", c->dns_max_ttl_ms);
                return bad(x, d, c->origins[key_index(d)].source, v,
                           "at least service_discovery.dns.min_ttl");
        }
        return 0;
}

/* failing open is the eBPF programs' doing: iptables REDIRECT cannot see
 * that nothing listens any more. */
static int check_failure_mode(struct ctx *x)
{
        struct shunt_config *c = x->c;
        const struct key_desc *d = find_key("failure_mode");
        /* Node mode: each pod's capture outlives the agent (upgrades), and a
         * pod must never send plaintext while no agent runs. */
        if (c->failure_mode == FAILURE_OPEN && c->mode == 1)
                return bad(x, d, c->origins[key_index(d)].source, "open",
                           "not with mode node: a pod's capture stays while no node agent "
                           "runs and fails closed");
        if (c->failure_mode != FAILURE_OPEN || c->redirect != REDIRECT_IPTABLES)
                return 0;
        return bad(x, d, c->origins[key_index(d)].source, "open",
                   "needs eBPF capture (redirect ebpf or auto): iptables capture can only fail "
                   "closed");
}

static int check_metrics(struct ctx *x)
{
        struct prom_buckets b;
        const char *why;
        if (prom_buckets_parse(x->c->metrics_histogram_buckets, &b, &why) == 0)
                return 0;
        const struct key_desc *d = find_key("metrics.histogram_buckets");
        return bad(x, d, x->c->origins[key_index(d)].source, x->c->metrics_histogram_buckets, why);
}

/* A sampling ratio: a decimal number in [0, 1]. */
static int check_ratio(struct ctx *x, const char *key, const char *text, double *out)
{
        char *end;
        errno = 0;
        double v = strtod(text, &end);
        if (errno || end == text || *end || !(v >= 0.0 && v <= 1.0)) {
                const struct key_desc *d = find_key(key);
                return bad(x, d, x->c->origins[key_index(d)].source, text, "a number from 0 to 1");
        }
        *out = v;
        return 0;
}

static int check_observability(struct ctx *x)
{
        struct shunt_config *c = x->c;
        int rc =
            check_ratio(x, "access_log.sampling", c->access_log_sampling, &c->access_log_ratio);
        if (!rc)
                rc = check_ratio(x, "tracing.sampling", c->tracing_sampling, &c->tracing_ratio);
        if (rc)
                return rc;
        const char *dst = c->access_log_destination;
        if (strcmp(dst, "stdout") && strcmp(dst, "stderr") && dst[0] != '/') {
                const struct key_desc *d = find_key("access_log.destination");
                return bad(x, d, c->origins[key_index(d)].source, dst,
                           "stdout, stderr or an absolute path");
        }
        const char *ep = c->tracing_endpoint;
        if (strncmp(ep, "http://", 7) && strncmp(ep, "https://", 8)) {
                const struct key_desc *d = find_key("tracing.endpoint");
                return bad(x, d, c->origins[key_index(d)].source, ep, "an http:// or https:// URL");
        }
        return 0;
}

static int finish(struct ctx *x)
{
        struct shunt_config *c = x->c;
        int rc = check_ports(x);
        if (!rc)
                rc = check_metrics(x);
        if (!rc)
                rc = check_observability(x);
        if (!rc)
                rc = check_failure_mode(x);
        if (!rc)
                rc = check_mtls(x);
        if (!rc)
                rc = check_resilience(x);
        if (rc)
                return rc;
        if (c->workers == 0) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                c->workers = n < 1 ? 1 : n > WORKERS_MAX ? WORKERS_MAX : (int)n;
        }
        /* The admin port is never captured unless the operator lists the
         * excluded ports explicitly. */
        const struct key_desc *ex = find_key("exclude_inbound_ports");
        if (c->origins[key_index(ex)].source == CONFIG_SRC_DEFAULT) {
                bool have = false;
                for (size_t i = 0; i < c->n_exclude_inbound_ports; i++)
                        have |= c->exclude_inbound_ports[i] == c->admin_port;
                if (!have && c->n_exclude_inbound_ports < CONFIG_MAX_EXCLUDES)
                        c->exclude_inbound_ports[c->n_exclude_inbound_ports++] = c->admin_port;
        }
        return 0;
}

int config_load(int argc, char *const argv[], char *const envp[], struct shunt_config **out,
                char *err, size_t errlen)
{
        *out = NULL;
        if (err && errlen)
                err[0] = '\0';
        struct shunt_config *c = calloc(1, sizeof(*c));
        struct flag_set *sets = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*sets));
        if (c)
                c->origins = calloc(NKEYS, sizeof(*c->origins));
        struct ctx x = {.c = c, .err = err, .errlen = errlen};
        if (!c || !c->origins || !sets) {
                if (c)
                        free(c->origins);
                free(c);
                free(sets);
                errf(&x, "config: %s", strerror(ENOMEM));
                return -ENOMEM;
        }
        c->n_origins = NKEYS;
        int rc = 0;
        for (size_t i = 0; i < NKEYS && !rc; i++) {
                c->origins[i] = (struct config_origin){keys[i].path, CONFIG_SRC_DEFAULT};
                if (keys[i].def)
                        rc = set_text(&x, &keys[i], CONFIG_SRC_DEFAULT, keys[i].def, NULL);
        }

        size_t nsets = 0;
        const char *path = NULL;
        if (!rc)
                rc = scan_flags(&x, argc, argv, sets, &nsets, &path);
        if (!rc && path) {
                if (strlen(path) >= sizeof(c->path)) {
                        errf(&x, "config: --config: %.64s...: file name longer than %zu bytes",
                             path, sizeof(c->path) - 1);
                        rc = -EINVAL;
                } else {
                        snprintf(c->path, sizeof(c->path), "%s", path);
                        rc = load_file(&x, path);
                }
        }
        for (size_t i = 0; i < NKEYS && !rc; i++) {
                const char *v = keys[i].env ? env_lookup(envp, keys[i].env) : NULL;
                if (!v || !*v)
                        continue;
                rc = set_text(&x, &keys[i], CONFIG_SRC_ENV, v, NULL);
                c->origins[i].source = CONFIG_SRC_ENV;
        }
        for (size_t i = 0; i < nsets && !rc; i++) {
                rc = set_text(&x, sets[i].d, CONFIG_SRC_FLAG, sets[i].value, NULL);
                c->origins[key_index(sets[i].d)].source = CONFIG_SRC_FLAG;
        }
        if (!rc)
                rc = finish(&x);
        free(sets);
        if (rc) {
                config_destroy(&c->snap);
                return rc;
        }
        snapshot_init(&c->snap, config_destroy);
        *out = c;
        return 0;
}

static cJSON *dump_value(const struct shunt_config *c, const struct key_desc *d);

static bool value_equal(const struct shunt_config *a, const struct shunt_config *b,
                        const struct key_desc *d)
{
        const char *fa = (const char *)a + d->off, *fb = (const char *)b + d->off;
        switch (d->type) {
        case K_ADDR:
        case K_STR:
        case K_STRENUM:
                return strcmp(fa, fb) == 0;
        case K_PORTS:
        case K_CIDRS:
                if (ccount(a, d) != ccount(b, d))
                        return false;
                return memcmp(fa, fb,
                              ccount(a, d) * (d->type == K_PORTS ? sizeof(uint16_t)
                                                                 : sizeof(struct cidr))) == 0;
        default:
                return memcmp(fa, fb, d->size) == 0;
        }
}

static void value_text(const struct shunt_config *c, const struct key_desc *d, char *buf,
                       size_t len)
{
        cJSON *v = dump_value(c, d);
        char *t = v ? cJSON_PrintUnformatted(v) : NULL;
        snprintf(buf, len, "%s", t ? t : "?");
        free(t);
        cJSON_Delete(v);
}

/* Keys taken at start only keep their running value in next, with their
 * provenance, so rules, listeners and /config agree; one warning a key. */
static void keep_restart_only(const struct shunt_config *old, struct shunt_config *next)
{
        for (size_t i = 0; i < NKEYS; i++) {
                const struct key_desc *d = &keys[i];
                bool restart = (d->flags & KF_RESTART) ||
                               ((d->flags & KF_CAPTURE) && old->capture == CAPTURE_INIT);
                if (!restart || value_equal(old, next, d))
                        continue;
                char was[128], asked[128];
                value_text(old, d, was, sizeof(was));
                value_text(next, d, asked, sizeof(asked));
                log_warn("config", 0,
                         "reload: %s changes only on restart%s: keeping %s (the %s now says %s)",
                         d->path,
                         (d->flags & KF_RESTART) ? "" : " (capture init: shuntd init set it)", was,
                         config_source_name(next->origins[i].source), asked);
                memcpy((char *)next + d->off, (const char *)old + d->off, d->size);
                if (d->count_off)
                        memcpy((char *)next + d->count_off, (const char *)old + d->count_off,
                               sizeof(size_t));
                next->origins[i].source = old->origins[i].source;
        }
}

int config_reload(const struct shunt_config *old, int argc, char *const argv[], char *const envp[],
                  struct shunt_config **out, char *err, size_t errlen)
{
        /* The sources are argv and envp; the file is read afresh. */
        int rc = config_load(argc, argv, envp, out, err, errlen);
        if (rc == 0)
                keep_restart_only(old, *out);
        return rc;
}

/* ---- output -------------------------------------------------------------- */

static const char *value_hint(const struct key_desc *d)
{
        switch (d->type) {
        case K_PORT:
                return "PORT";
        case K_INT:
        case K_U32:
                return "N";
        case K_MARK:
                return "MARK";
        case K_BYTES:
                return "BYTES";
        case K_ADDR:
                return "ADDR";
        case K_STR:
                return "STRING";
        case K_ENUM:
        case K_STRENUM:
                return "NAME";
        case K_DUR_MS:
        case K_DUR_S:
                return "DURATION";
        case K_PORTS:
                return "PORT,...";
        case K_CIDRS:
                return "CIDR,...";
        case K_WEIGHTS:
        case K_ALLOW:
        case K_JSONARR:
                return "";
        }
        return "";
}

/* Grown as needed and kept for the process (a fixed buffer once cut the
 * last keys off --help without a word). */
static struct strbuf usage_sb;
static pthread_once_t usage_once = PTHREAD_ONCE_INIT;

static void build_usage(void)
{
        struct strbuf sb;
        strbuf_init(&sb);
        strbuf_append(
            &sb, "  --config FILE\n      the JSON configuration file; its keys are the flag names "
                 "with '-' written '_' (dots = nesting)\n");
        for (size_t i = 0; i < NKEYS; i++) {
                const struct key_desc *d = &keys[i];
                if (d->flags & KF_FILE_ONLY)
                        continue;
                char f[KEY_MAX], what[512];
                flag_name(d, f, sizeof(f));
                describe(d, what, sizeof(what));
                strbuf_appendf(&sb, "  --%s %s\n      %s%s%s; default %s%s%s\n", f, value_hint(d),
                               what, d->env ? "; env " : "", d->env ? d->env : "",
                               d->def ? "\"" : "", d->def ? d->def : "(empty)", d->def ? "\"" : "");
        }
        usage_sb = sb;
}

const char *config_usage(void)
{
        pthread_once(&usage_once, build_usage);
        return usage_sb.data && !usage_sb.truncated ? usage_sb.data : "(out of memory)\n";
}

/* describe() already quotes the note for these types. */
static bool note_in_description(enum ktype t)
{
        return t == K_INT || t == K_U32 || t == K_ADDR || t == K_JSONARR;
}

static const char *reload_text(const struct key_desc *d)
{
        if (d->flags & KF_RESTART)
                return "restart only: a reload (SIGHUP) keeps the running value and logs a warning";
        if (d->flags & KF_CAPTURE)
                return "applied on reload (SIGHUP) with capture self; restart only with capture "
                       "init "
                       "(`shuntd init` installed it)";
        return "applied on reload (SIGHUP)";
}

/* "mtls.mode" -> 4, "workers" -> 0 (top level) */
static size_t group_len(const char *path)
{
        const char *dot = strchr(path, '.');
        return dot ? (size_t)(dot - path) : 0;
}

static bool same_group(const char *path, const char *group, size_t glen)
{
        return group_len(path) == glen && !strncmp(path, group, glen);
}

static void reference_entry(struct strbuf *sb, const struct key_desc *d)
{
        char f[KEY_MAX], what[1024];
        flag_name(d, f, sizeof(f));
        describe(d, what, sizeof(what));
        strbuf_appendf(sb, "\n### `%s`\n\n", d->path);
        if (d->flags & KF_FILE_ONLY)
                strbuf_append(sb, "- flag: none (file only)\n");
        else
                strbuf_appendf(sb, "- flag: `--%s %s`\n", f, value_hint(d));
        if (d->env)
                strbuf_appendf(sb, "- environment: `%s`\n", d->env);
        strbuf_appendf(sb, "- value: %s\n", what);
        if (d->def)
                strbuf_appendf(sb, "- default: `%s`\n", d->def);
        else
                strbuf_append(sb, "- default: empty\n");
        strbuf_appendf(sb, "- reload: %s\n", reload_text(d));
        if (d->flags & KF_SECRET)
                strbuf_append(sb, "- secret: shown as `<redacted>` in `/config` and in errors\n");
        if (d->note && !note_in_description(d->type))
                strbuf_appendf(sb, "- note: %s\n", d->note);
}

/* docs/configuration.md is this text: the table is the only source, so the
 * manual cannot drift from what shuntd parses (tests/docs compares them). */
char *config_reference_markdown(void)
{
        struct strbuf sb;
        strbuf_init(&sb);
        strbuf_append(
            &sb,
            "<!-- Generated by `shuntd --print-config-reference` from the key table in\n"
            "     userspace/core/config.c. Do not edit: regenerate it. The test "
            "docs.config_reference\n"
            "     fails when this file and shuntd disagree. -->\n"
            "# Configuration reference\n\n"
            "Every key has one dotted JSON path in the configuration file (`--config FILE`), a\n"
            "flag (the path with `_` written `-`), and often an environment variable. Flags\n"
            "override environment variables, which override the file, which overrides the\n"
            "built-in default. A bad value stops start-up with one line naming the key, the\n"
            "value and what is allowed; it is never replaced by a default.\n\n"
            "A reload (`SIGHUP`) reads the file again (flags and environment are the ones shuntd\n"
            "started with). Keys marked *restart only* keep their running value; shuntd logs one\n"
            "warning per such key that changed. A rejected reload keeps the whole running\n"
            "configuration. `GET /config` on the admin port shows each effective value and its\n"
            "source.\n\n"
            "Durations are written `100ms`, `1.5s`, `1m30s`, `24h` (a bare integer is seconds);\n"
            "sizes in bytes or with a `KiB`/`MiB` suffix.\n");
        /* Grouped by first path segment, groups in order of first appearance. */
        for (size_t g = 0; g < NKEYS; g++) {
                size_t glen = group_len(keys[g].path);
                bool seen = false;
                for (size_t j = 0; j < g && !seen; j++)
                        seen = same_group(keys[j].path, keys[g].path, glen);
                if (seen)
                        continue;
                if (glen)
                        strbuf_appendf(&sb, "\n## %.*s\n", (int)glen, keys[g].path);
                else
                        strbuf_append(&sb, "\n## Top-level keys\n");
                for (size_t i = g; i < NKEYS; i++)
                        if (same_group(keys[i].path, keys[g].path, glen))
                                reference_entry(&sb, &keys[i]);
        }
        if (sb.truncated) {
                strbuf_free(&sb);
                return NULL;
        }
        return sb.data;
}

const char *config_source_name(enum config_source s)
{
        switch (s) {
        case CONFIG_SRC_DEFAULT:
                return "default";
        case CONFIG_SRC_FILE:
                return "file";
        case CONFIG_SRC_ENV:
                return "env";
        case CONFIG_SRC_FLAG:
                return "flag";
        }
        return "?";
}

int config_source_of(const struct shunt_config *cfg, const char *key)
{
        for (size_t i = 0; i < cfg->n_origins; i++)
                if (!strcmp(cfg->origins[i].key, key))
                        return (int)cfg->origins[i].source;
        return -1;
}

static cJSON *dump_value(const struct shunt_config *c, const struct key_desc *d)
{
        char buf[INET6_ADDRSTRLEN + 8];
        const void *f = cfield(c, d);
        switch (d->type) {
        case K_PORT:
                return cJSON_CreateNumber(*(const uint16_t *)f);
        case K_INT:
                return cJSON_CreateNumber(*(const int *)f);
        case K_U32:
        case K_BYTES:
                return cJSON_CreateNumber(*(const uint32_t *)f);
        case K_MARK:
                snprintf(buf, sizeof(buf), "0x%x", *(const uint32_t *)f);
                return cJSON_CreateString(buf);
        case K_ADDR:
        case K_STR:
        case K_STRENUM:
                if ((d->flags & KF_SECRET) && *(const char *)f)
                        return cJSON_CreateString("<redacted>");
                return cJSON_CreateString(f);
        case K_ENUM:
                return cJSON_CreateString(d->names[*(const int *)f]);
        case K_DUR_MS:
        case K_DUR_S: {
                uint64_t v = *(const uint32_t *)f;
                fmt_duration(d->type == K_DUR_S ? v * 1000 : v, buf, sizeof(buf));
                return cJSON_CreateString(buf);
        }
        case K_PORTS:
        case K_CIDRS: {
                cJSON *a = cJSON_CreateArray();
                for (size_t i = 0; a && i < ccount(c, d); i++) {
                        cJSON *e;
                        if (d->type == K_PORTS) {
                                e = cJSON_CreateNumber(((const uint16_t *)f)[i]);
                        } else {
                                const struct cidr *r = &((const struct cidr *)f)[i];
                                char s[INET6_ADDRSTRLEN + 8];
                                inet_ntop(r->family, &r->addr, s, sizeof(s));
                                snprintf(s + strlen(s), sizeof(s) - strlen(s), "/%u",
                                         r->prefix_len);
                                e = cJSON_CreateString(s);
                        }
                        if (!e || !cJSON_AddItemToArray(a, e)) {
                                cJSON_Delete(e);
                                cJSON_Delete(a);
                                return NULL;
                        }
                }
                return a;
        }
        case K_ALLOW: {
                /* {"8080": [...], "*": [...]}, in file order */
                cJSON *o = cJSON_CreateObject();
                const struct config_allow *a = f;
                for (size_t i = 0; o && i < ccount(c, d); i++) {
                        char port[8];
                        snprintf(port, sizeof(port), "%u", (unsigned)a[i].port);
                        const char *k = a[i].port ? port : "*";
                        cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, k);
                        if (!arr && !(arr = cJSON_AddArrayToObject(o, k)))
                                break;
                        cJSON *e = cJSON_CreateString(a[i].id);
                        if (!e || !cJSON_AddItemToArray(arr, e)) {
                                cJSON_Delete(e);
                                break;
                        }
                }
                return o;
        }
        case K_JSONARR: {
                const char *t = *(char *const *)f;
                return t ? cJSON_Parse(t) : cJSON_CreateArray();
        }
        case K_WEIGHTS:
                break;
        }
        return NULL;
}

char *config_dump_json(const struct shunt_config *cfg)
{
        cJSON *root = cJSON_CreateObject();
        if (!root)
                return NULL;
        for (size_t i = 0; i < NKEYS; i++) {
                const struct key_desc *d = &keys[i];
                if ((d->flags & KF_FILE_ONLY) && d->type != K_ALLOW &&
                    d->type != K_JSONARR) /* these are stored */
                        continue;
                cJSON *o = cJSON_AddObjectToObject(root, d->path);
                cJSON *v = o ? dump_value(cfg, d) : NULL;
                if (!v)
                        goto fail;
                if (!cJSON_AddItemToObject(o, "value", v)) {
                        cJSON_Delete(v);
                        goto fail;
                }
                if (!cJSON_AddStringToObject(o, "source",
                                             config_source_name(cfg->origins[i].source)))
                        goto fail;
        }
        char *s = cJSON_Print(root);
        cJSON_Delete(root);
        return s;
fail:
        cJSON_Delete(root);
        return NULL;
}

/* ---- durations and CIDRs ------------------------------------------------- */

int parse_duration_ms(const char *s, uint64_t *out_ms)
{
        if (!s || !*s)
                return -EINVAL;
        if (s[strspn(s, "0123456789")] == '\0') {
                /* bare integer: seconds */
                unsigned __int128 v = 0;
                for (const char *p = s; *p; p++) {
                        v = v * 10 + (unsigned)(*p - '0');
                        if (v > UINT64_MAX / 1000000000ULL) /* same bound as below: 2^64 ns */
                                return -EINVAL;
                }
                *out_ms = (uint64_t)v * 1000;
                return 0;
        }
        static const struct {
                const char *name;
                uint64_t ns;
        } units[] = {
            {"ns", 1ULL},           {"us", 1000ULL},
            {"\xc2\xb5s", 1000ULL}, /* µs */
            {"ms", 1000000ULL},     {"s", 1000000000ULL},
            {"m", 60000000000ULL},  {"h", 3600000000000ULL},
        };
        unsigned __int128 total = 0;
        const char *p = s;
        while (*p) {
                unsigned __int128 whole = 0, frac = 0, scale = 1;
                bool digits = false;
                for (; isdigit((unsigned char)*p); p++, digits = true) {
                        whole = whole * 10 + (unsigned)(*p - '0');
                        if (whole > UINT64_MAX)
                                return -EINVAL;
                }
                if (*p == '.') {
                        for (p++; isdigit((unsigned char)*p); p++, digits = true) {
                                if (scale >= 1000000000000000000ULL)
                                        continue; /* beyond a nanosecond of an hour */
                                frac = frac * 10 + (unsigned)(*p - '0');
                                scale *= 10;
                        }
                }
                if (!digits)
                        return -EINVAL;
                uint64_t unit = 0;
                size_t ulen = 0;
                for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                        size_t n = strlen(units[i].name);
                        /* longest match: "ms" before "m" */
                        if (n > ulen && !strncmp(p, units[i].name, n)) {
                                unit = units[i].ns;
                                ulen = n;
                        }
                }
                if (!unit)
                        return -EINVAL;
                p += ulen;
                total += whole * unit + (frac * unit + scale - 1) / scale;
                if (total > UINT64_MAX)
                        return -EINVAL;
        }
        *out_ms = (uint64_t)((total + 999999) / 1000000);
        return 0;
}

int parse_cidr(const char *s, struct cidr *out)
{
        char addr[INET6_ADDRSTRLEN + 1];
        const char *slash = strchr(s, '/');
        size_t n = slash ? (size_t)(slash - s) : strlen(s);
        if (!n || n >= sizeof(addr))
                return -EINVAL;
        memcpy(addr, s, n);
        addr[n] = '\0';
        struct cidr c;
        memset(&c, 0, sizeof(c));
        unsigned max;
        if (inet_pton(AF_INET, addr, &c.addr.v4) == 1) {
                c.family = AF_INET;
                max = 32;
        } else if (inet_pton(AF_INET6, addr, &c.addr.v6) == 1) {
                c.family = AF_INET6;
                max = 128;
        } else {
                return -EINVAL;
        }
        unsigned len = max;
        if (slash) {
                const char *p = slash + 1;
                size_t nd = strspn(p, "0123456789");
                if (!nd || nd > 3 || p[nd])
                        return -EINVAL;
                len = (unsigned)atoi(p);
                if (len > max)
                        return -EINVAL;
        }
        /* host bits are accepted and cleared: 10.1.2.3/8 is 10.0.0.0/8 */
        unsigned char *b = c.family == AF_INET ? (unsigned char *)&c.addr.v4 : c.addr.v6.s6_addr;
        for (unsigned i = 0; i < max / 8; i++) {
                if (i * 8 >= len)
                        b[i] = 0;
                else if (i * 8 + 8 > len)
                        b[i] &= (unsigned char)(0xff << (8 - (len - i * 8)));
        }
        c.prefix_len = (uint8_t)len;
        *out = c;
        return 0;
}

const char *redirect_mode_name(enum redirect_mode m)
{
        return (unsigned)m < sizeof(redirect_names) / sizeof(redirect_names[0]) - 1
                   ? redirect_names[m]
                   : "?";
}

const char *capture_mode_name(enum capture_mode m)
{
        return (unsigned)m < sizeof(capture_names) / sizeof(capture_names[0]) - 1 ? capture_names[m]
                                                                                  : "?";
}

const char *outbound_policy_name(enum outbound_policy p)
{
        return (unsigned)p < sizeof(policy_names) / sizeof(policy_names[0]) - 1 ? policy_names[p]
                                                                                : "?";
}

const char *mtls_mode_name(enum mtls_mode m)
{
        return (unsigned)m < sizeof(mtls_names) / sizeof(mtls_names[0]) - 1 ? mtls_names[m] : "?";
}

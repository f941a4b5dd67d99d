// SPDX-License-Identifier: Apache-2.0
/* shuntd: parse, wire, run. The components do the work. */
#include <errno.h>
#include <fcntl.h>
#include <sys/random.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <dirent.h>
#include <linux/capability.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "admin/admin.h"
#include "authz/authz.h"
#include "node/identity.h"
#include "node/capture.h"
#include "node/pods.h"
#include "node/policies.h"
#include "node/sidecar_capture.h"
#include "core/config.h"
#include "core/log.h"
#include "core/sockaddr.h"
#include "core/loop.h"
#include "core/prom.h"
#include "core/version.h"
#include "intercept/bpfcap.h"
#include "intercept/iptables.h"
#include "intercept/origdst.h"
#include "discovery/backend.h"
#include "discovery/health.h"
#include "discovery/k8s.h"
#include "discovery/k8s_creds.h"
#include "discovery/registry.h"
#include "proxy/handover.h"
#include "proxy/obs.h"
#include "proxy/proxy.h"
#include "proxy/tap.h"
#include "tls/cert.h"
#include "tls/source.h"
#include "core/spiffe.h"
#include "tls/federation.h"
#include "tls/store.h"

#define DRAIN_POLL_MS  100
#define ROUTES_POLL_MS 100 /* how often a new registry snapshot is looked for */
#define CAPTURE_CHECK_MS                                                                           \
        5000 /* how often the capture rules are compared with what was installed                   \
              */

struct daemon {
        int argc;
        char **argv;
        struct shunt_config *cfg;
        uint64_t cfg_generation;
        struct loop *loop;
        struct proxy *proxy;
        struct admin *admin;
        struct admin *metrics;    /* read-only GET /metrics for scrapers; NULL when off */
        bool admin_token_written; /* admin.token_file is ours to remove at exit */
        struct loop_io sig_io;
        struct loop_timer drain_timer;
        uint64_t drain_deadline_ms;
        uint64_t started_ms;
        struct bpfcap *bpf; /* eBPF capture, when active */
        struct disc_registry *registry;
        struct disc_backend *backend;
        struct disc_checker *health;
        struct tls_store *tls;      /* NULL when mtls.mode is disabled */
        struct tls_federation *fed; /* mtls.federation; with tls */
        /* Authorization: the file's policies (mtls.allow + authorization.policies),
         * Kubernetes' (AuthorizationPolicy objects), and both merged (published). */
        struct authz_stats authz_stats;
        struct authz *authz_file, *authz_k8s, *authz;
        struct authz_kube *authz_kube; /* AuthorizationPolicy objects, when watched */
        struct k8s_object_sink authz_sink;
        struct node_pods *node_pods; /* node mode: the node's meshed pods */
        /* node mode: the pods' identities, one certificate store per
         * namespace/service account (node/identity.h); NULL when mtls is
         * disabled. The capture takes its slots with node_identity_slot(). */
        struct node_identities *node_ids;
        struct node_sidecar_capture *sidecar_capture; /* node mode: captureFrom=node pods */
        struct node_capture *node_capture;   /* node mode: each meshed pod's capture and proxy */
        struct node_policies *node_policies; /* node mode: each meshed pod's own policies */
        uint64_t routes_version;             /* registry version the proxy routes by */
        struct loop_timer routes_timer;
        bool rules_installed;
        /* Capture rules changed behind our back (another tool flushing the
         * nat table) are put back: what they looked like when installed. */
        struct loop_timer capture_timer;
        struct strbuf capture_seen;
        uint64_t capture_repairs;
        bool init_cmd;          /* `shuntd init`: install, then exit */
        const char *init_found; /* capture init: "ebpf", "iptables", "off" or "unknown" */
        bool ready;
        bool draining;
        char redirect_reason[256];
        int exit_code;
        /* Zero-downtime upgrade (proxy/handover.h). */
        bool takeover;                   /* started with --takeover */
        struct handover_client *taking;  /* the shuntd taken over, until it commits */
        struct handover_server *upgrade; /* our upgrade socket */
        bool upgrade_busy;               /* a handover in progress: no capture repairs */
        bool capture_not_ours;           /* adopted and not committed, or handed over */
        pid_t taken_from, handed_to;
        size_t adopted_listeners;
        const char *adopted_capture; /* "iptables", "ebpf", or NULL */
        struct loop_timer commit_timer;
};

extern char **environ;

/* ---- capture rules ---------------------------------------------------------- */

/* The uid the capture of `shuntd init` skips and a capture=init shuntd runs as. */
static uint32_t init_proxy_uid(const struct shunt_config *cfg)
{
        return cfg->proxy_uid >= 0 ? (uint32_t)cfg->proxy_uid : SHUNT_PROXY_UID_DEFAULT;
}

static uint32_t capture_uid(const struct daemon *d)
{
        if (d->init_cmd)
                return init_proxy_uid(d->cfg);
        if (d->cfg->proxy_uid >= 0)
                return (uint32_t)d->cfg->proxy_uid;
        /* Automatic: our own uid, unless we are root, whom applications share. */
        uid_t me = geteuid();
        return me != 0 ? (uint32_t)me : IPT_UID_NONE;
}

static void bpf_options(struct daemon *d, struct bpfcap_options *o)
{
        uint32_t uid = capture_uid(d);
        bpfcap_options_from_config(o, d->cfg, uid == IPT_UID_NONE ? SHUNT_UID_NONE : uid);
}

/* Inbound capture stays on iptables PREROUTING in eBPF mode too. */
static int inbound_install(struct daemon *d, char *err, size_t errlen)
{
        struct ipt_options o;
        ipt_options_from_config(&o, d->cfg, capture_uid(d));
        o.inbound_only = true;
        char e[400];
        if (ipt_install(&o, e, sizeof(e)) < 0) {
                snprintf(err, errlen, "iptables inbound rules: %s", e);
                return -1;
        }
        return 0;
}

/* Probes and attaches eBPF capture (plus the inbound iptables rules); on
 * failure why says what is missing and nothing stays attached. */
static int bpf_install(struct daemon *d, bool adopt, char *why, size_t whylen)
{
        struct bpfcap_options o;
        bpf_options(d, &o);
        o.adopt = adopt;
        if (bpfcap_probe(o.cgroup_path, why, whylen) < 0)
                return -1;
        d->bpf = bpfcap_open(&o, why, whylen);
        if (!d->bpf)
                return -1;
        if (inbound_install(d, why, whylen) < 0) {
                bpfcap_close(d->bpf, !adopt);
                d->bpf = NULL;
                return -1;
        }
        origdst_use_bpf(d->bpf);
        d->rules_installed = true;
        log_info("intercept", 0, "eBPF capture: outbound -> %u (eBPF), inbound -> %u (iptables)",
                 d->cfg->outbound_port, d->cfg->inbound_port);
        return 0;
}

static int rules_apply(struct daemon *d);
static void upgrade_render_status(const struct daemon *d, struct strbuf *b);
static void upgrade_render_metrics(const struct daemon *d, struct strbuf *b);
static int takeover_listener(struct daemon *d, enum handover_role role, const char *address,
                             uint16_t port, struct admin **out, char *err, size_t errlen);

/* The iptables rules as installed, to tell later whether they changed. */
static void capture_remember(struct daemon *d)
{
        strbuf_reset(&d->capture_seen);
        if (ipt_fingerprint(&d->capture_seen) < 0)
                strbuf_reset(&d->capture_seen);
}

static int rules_install(struct daemon *d)
{
        int rc = rules_apply(d);
        if (rc == 0)
                capture_remember(d);
        return rc;
}

static int rules_apply(struct daemon *d)
{
        char err[512];
        if (d->bpf) {
                /* A reload: new exclusions, mark, uid, port; programs stay. */
                struct bpfcap_options o;
                bpf_options(d, &o);
                if (bpfcap_configure(d->bpf, &o, err, sizeof(err)) < 0) {
                        log_error("intercept", 0, "updating eBPF capture failed: %s", err);
                        return -1;
                }
                if (inbound_install(d, err, sizeof(err)) < 0) {
                        log_error("intercept", 0, "updating inbound capture failed: %s", err);
                        return -1;
                }
                return 0;
        }
        struct ipt_options o;
        ipt_options_from_config(&o, d->cfg, capture_uid(d));
        if (ipt_install(&o, err, sizeof(err)) < 0) {
                log_error("intercept", 0, "installing iptables rules failed: %s", err);
                return -1;
        }
        d->rules_installed = true;
        log_info("intercept", 0, "iptables capture installed: inbound -> %u, outbound -> %u",
                 d->cfg->inbound_port, d->cfg->outbound_port);
        return 0;
}

static void rules_remove(struct daemon *d)
{
        if (d->capture_not_ours) {
                /* Handed over, or adopted by a takeover that did not commit:
                 * the other shuntd owns the rules and pins. */
                origdst_use_bpf(NULL);
                bpfcap_close(d->bpf, false);
                d->bpf = NULL;
                if (d->rules_installed)
                        log_info("intercept", 0, "capture left in place: shuntd pid %d owns it",
                                 (int)(d->handed_to ? d->handed_to : d->taken_from));
                d->rules_installed = false;
                return;
        }
        if (d->init_found) {
                /* capture init: shuntd init's capture stays for the next start. */
                origdst_use_bpf(NULL);
                bpfcap_close(d->bpf, false);
                d->bpf = NULL;
                return;
        }
        if (!d->rules_installed)
                return;
        if (d->bpf) {
                /* Clean exit: links detached, pins removed. A crash leaves the
                 * pins, and the next start takes them over. */
                origdst_use_bpf(NULL);
                bpfcap_close(d->bpf, true);
                d->bpf = NULL;
                log_info("intercept", 0, "eBPF capture detached");
        }
        char err[512];
        if (ipt_remove(err, sizeof(err)) < 0)
                log_error("intercept", 0, "removing iptables rules failed: %s", err);
        else
                log_info("intercept", 0, "iptables capture removed");
        d->rules_installed = false;
}

/* The capture in effect: installed by us, or found (capture init). */
static const char *active_mode(const struct daemon *d)
{
        if (d->init_found)
                return d->init_found;
        return d->bpf ? "ebpf" : d->rules_installed ? "iptables" : "off";
}

/* ---- capture installed by `shuntd init` ------------------------------------------ */

static bool have_cap(int cap)
{
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
        memset(data, 0, sizeof(data));
        if (syscall(SYS_capget, &hdr, data) < 0)
                return false;
        return (data[cap / 32].effective >> (cap % 32)) & 1;
}

/* eBPF capture's capabilities, or why not (the first one missing). */
static bool bpf_caps(char *why, size_t whylen)
{
        static const struct {
                int cap;
                const char *name;
        } need[] = {{CAP_BPF, "CAP_BPF"}, {CAP_PERFMON, "CAP_PERFMON"}};
        for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
                if (!have_cap(need[i].cap) && !have_cap(CAP_SYS_ADMIN)) {
                        snprintf(why, whylen,
                                 "%s missing (eBPF capture needs NET_ADMIN, BPF and PERFMON)",
                                 need[i].name);
                        return false;
                }
        }
        return true;
}

#define POD_CGROUP_DEPTH 3 /* kubepods.slice/kubepods-<qos>.slice/<pod> */

/* Below dir (depth levels at most, only kubepods* directories), the
 * directory the kubelet made for the pod whose uid is given twice (as is,
 * and with '_' for '-'): kubepods[-<qos>]-pod<uid_>.slice (systemd driver)
 * or pod<uid> (cgroupfs driver). */
static bool find_pod_dir(const char *dir, const char *uid, const char *uid_, int depth, char *out,
                         size_t outlen)
{
        DIR *dp = opendir(dir);
        if (!dp)
                return false;
        bool found = false;
        struct dirent *e;
        char want[2][80];
        snprintf(want[0], sizeof(want[0]), "pod%s", uid);
        snprintf(want[1], sizeof(want[1]), "pod%s.slice", uid_);
        while (!found && (e = readdir(dp))) {
                if (e->d_type != DT_DIR || e->d_name[0] == '.')
                        continue;
                size_t n = strlen(e->d_name), w = strlen(want[1]);
                bool is_pod =
                    !strcmp(e->d_name, want[0]) || (n >= w && !strcmp(e->d_name + n - w, want[1]));
                bool kube = !strncmp(e->d_name, "kubepods", 8);
                char path[CONFIG_PATH_MAX];
                if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= (int)sizeof(path))
                        continue;
                if (is_pod)
                        found = snprintf(out, outlen, "%s", path) < (int)outlen;
                else if (kube && depth > 1)
                        found = find_pod_dir(path, uid, uid_, depth - 1, out, outlen);
        }
        closedir(dp);
        return found;
}

/* redirect_cgroup "pod": the pod's cgroup in the node's hierarchy (a private
 * cgroup namespace hides it from the container's own /sys/fs/cgroup). */
static int resolve_pod_cgroup(struct shunt_config *c, char *why, size_t whylen)
{
        if (strcmp(c->redirect_cgroup, "pod") != 0)
                return 0;
        if (!c->pod_uid[0] || strlen(c->pod_uid) > 40 || strchr(c->pod_uid, '/')) {
                snprintf(why, whylen,
                         "redirect_cgroup pod: pod_uid %s: want the pod's metadata.uid (env "
                         "SHUNT_POD_UID from the downward API)",
                         c->pod_uid[0] ? c->pod_uid : "(not set)");
                return -1;
        }
        char uid_[sizeof(c->pod_uid)];
        snprintf(uid_, sizeof(uid_), "%s", c->pod_uid);
        for (char *p = uid_; *p; p++)
                if (*p == '-')
                        *p = '_';
        char found[CONFIG_PATH_MAX];
        if (!find_pod_dir(c->cgroup_root, c->pod_uid, uid_, POD_CGROUP_DEPTH, found,
                          sizeof(found))) {
                snprintf(why, whylen,
                         "redirect_cgroup pod: no cgroup of pod %s under cgroup_root %s (mount "
                         "the node's /sys/fs/cgroup there)",
                         c->pod_uid, c->cgroup_root);
                return -1;
        }
        snprintf(c->redirect_cgroup, sizeof(c->redirect_cgroup), "%s", found);
        log_info("init", 0, "redirect_cgroup pod: %s", found);
        return 0;
}

/* shuntd init with eBPF: the programs stay attached through their pins,
 * which the proxy's group may read. */
static int init_ebpf(struct daemon *d, char *why, size_t whylen)
{
        if (!bpf_caps(why, whylen) || resolve_pod_cgroup(d->cfg, why, whylen) < 0 ||
            bpf_install(d, false, why, whylen) < 0)
                return -1;
        uint32_t gid = init_proxy_uid(d->cfg);
        char err[512];
        if (bpfcap_share(d->bpf, gid, err, sizeof(err)) < 0)
                log_warn("init", 0,
                         "pins stay readable by root only (%s; run the init as group %u or with "
                         "CAP_CHOWN): shuntd reads original destinations through SO_ORIGINAL_DST "
                         "and shows no maps",
                         err, gid);
        log_info("init", 0, "eBPF capture pinned in %s (maps readable by group %u), cgroup %s",
                 bpfcap_pin_root(d->bpf), gid, d->cfg->redirect_cgroup);
        bpfcap_close(d->bpf, false); /* the pins keep it attached */
        d->bpf = NULL;
        origdst_use_bpf(NULL);
        return 0;
}

/* shuntd init with iptables; a previous eBPF capture pinned at the same
 * place (an earlier start with another mode) would capture twice: removed. */
static int init_iptables(struct daemon *d)
{
        struct bpfcap_options o;
        bpf_options(d, &o);
        struct stat st;
        if (stat(o.pin_root, &st) == 0) {
                log_info("init", 0, "removing the eBPF capture pinned in %s", o.pin_root);
                bpfcap_remove_pins(o.pin_root);
        }
        return rules_apply(d); /* shuntd init exits: nothing to watch */
}

/* `shuntd init [--config FILE] [--KEY VALUE ...]`: installs the capture
 * for a proxy that runs without capabilities, then exits. */
static int run_init(int argc, char **argv)
{
        struct daemon d = {.argc = argc, .argv = argv, .init_cmd = true};
        char err[CONFIG_ERR_MAX], why[512];
        if (config_load(argc, argv, environ, &d.cfg, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                return 2;
        }
        log_set_level(d.cfg->log_level);
        int rc = 0;
        if (d.cfg->redirect == REDIRECT_OFF) {
                log_info("init", 0, "redirect off: nothing to install");
                goto out;
        }
        if (!have_cap(CAP_NET_ADMIN)) {
                log_error("init", 0,
                          "shuntd init needs CAP_NET_ADMIN and CAP_NET_RAW (eBPF capture also "
                          "CAP_BPF and CAP_PERFMON): add them to the init container's "
                          "securityContext.capabilities");
                rc = 1;
                goto out;
        }
        switch (d.cfg->redirect) {
        case REDIRECT_EBPF:
                if (init_ebpf(&d, why, sizeof(why)) < 0) {
                        log_error("init", 0, "eBPF capture unavailable: %s", why);
                        rc = 1;
                }
                break;
        case REDIRECT_AUTO:
                if (init_ebpf(&d, why, sizeof(why)) == 0)
                        break;
                if (d.cfg->failure_mode == FAILURE_OPEN) {
                        log_error("init", 0,
                                  "failure_mode open needs eBPF capture, which is unavailable "
                                  "(%s); iptables capture can only fail closed",
                                  why);
                        rc = 1;
                        break;
                }
                log_warn("init", 0, "redirect auto: using iptables, eBPF capture unavailable: %s",
                         why);
                /* fall through */
        case REDIRECT_IPTABLES:
                if (init_iptables(&d) < 0)
                        rc = 1;
                break;
        case REDIRECT_OFF:
                break;
        }
        if (rc == 0)
                log_info("init", 0, "capture installed for a proxy running as uid %u; exiting",
                         init_proxy_uid(d.cfg));
out:
        strbuf_free(&d.capture_seen);
        snapshot_unref(&d.cfg->snap);
        return rc;
}

/* capture init: what `shuntd init` left, found without privileges. Pinned
 * maps mean eBPF; without them, iptables (SO_ORIGINAL_DST either way). */
static int capture_adopt(struct daemon *d, char *err, size_t errlen)
{
        const struct shunt_config *c = d->cfg;
        uint32_t want = init_proxy_uid(c);
        if (geteuid() != want) {
                snprintf(err, errlen,
                         "capture init: shuntd runs as uid %u but the capture skips uid %u "
                         "(proxy_uid): its own upstream connections would be captured again; run "
                         "it as uid %u or set proxy_uid",
                         (unsigned)geteuid(), want, want);
                return -1;
        }
        if (c->redirect == REDIRECT_OFF || c->redirect == REDIRECT_IPTABLES) {
                d->init_found = c->redirect == REDIRECT_OFF ? "off" : "iptables";
                snprintf(d->redirect_reason, sizeof(d->redirect_reason),
                         "capture init: %s (installed by shuntd init)", d->init_found);
                return 0;
        }
        struct bpfcap_options o;
        bpf_options(d, &o);
        char e[400];
        int rc = bpfcap_open_pinned(o.pin_root, &d->bpf, e, sizeof(e));
        if (rc == 0) {
                uint32_t uid;
                if (bpfcap_excluded_uid(d->bpf, &uid) == 0 && uid != want) {
                        snprintf(err, errlen,
                                 "capture init: the eBPF capture in %s skips uid %u, shuntd runs "
                                 "as uid %u: its own connections would be captured again",
                                 o.pin_root, uid, want);
                        return -1;
                }
                origdst_use_bpf(d->bpf);
                d->init_found = "ebpf";
                snprintf(d->redirect_reason, sizeof(d->redirect_reason),
                         "capture init: ebpf (maps in %.200s, read-only)", o.pin_root);
                return 0;
        }
        /* Not ours to read, or not visible here: the getsockopt program (if
         * eBPF capture is there) still answers SO_ORIGINAL_DST, conntrack
         * does otherwise. When the mode cannot be told (auto, nothing
         * visible), reads are shortcut-aware, which is right for both. */
        struct stat st;
        char probe[CONFIG_PATH_MAX + 32];
        snprintf(probe, sizeof(probe), "%s/shunt_config", o.pin_root);
        bool seen = stat(probe, &st) == 0;
        d->init_found = seen || c->redirect == REDIRECT_EBPF ? "ebpf" : "unknown";
        origdst_use_ebpf_without_maps();
        log_emit(rc == -ENOENT ? LOG_INFO : LOG_WARN, "intercept", 0,
                 "capture init: eBPF maps not readable (%s): original destinations by "
                 "SO_ORIGINAL_DST (from the cgroup/getsockopt program, or conntrack), no /maps "
                 "or shunt_bpf_* metrics%s",
                 e,
                 rc == -ENOENT   ? "; nothing pinned there: shuntd init used iptables, or this "
                                   "container does not mount the pin root"
                 : rc == -EACCES ? "; shuntd init shares the pins with group proxy_uid, and every "
                                   "directory above bpf_pin_root must be searchable"
                 : rc == -EPERM  ? "; this kernel refuses bpf() without CAP_BPF "
                                   "(kernel.unprivileged_bpf_disabled, kernels before 5.19)"
                                 : "");
        snprintf(d->redirect_reason, sizeof(d->redirect_reason),
                 "capture init: %s, maps not readable (%.200s)", d->init_found, e);
        return 0;
}

/* ---- admin handlers ------------------------------------------------------------ */

static void h_health(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        strbuf_append(&resp->body, "{\"status\":\"ok\"}");
}

static void h_ready(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        if (d->ready) {
                strbuf_append(&resp->body, "{\"ready\":true}");
                return;
        }
        resp->status = 503;
        strbuf_appendf(&resp->body, "{\"ready\":false,\"reason\":\"%s\"}",
                       d->draining ? "draining" : "starting");
}

static void h_metrics(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        resp->content_type = PROM_CONTENT_TYPE;
        proxy_render_metrics(d->proxy, &resp->body);
        if (d->bpf)
                bpfcap_render_metrics(d->bpf, &resp->body);
        disc_render_metrics(d->registry, &resp->body);
        if (d->tls)
                tls_store_render_metrics(d->tls, &resp->body);
        if (d->fed)
                tls_federation_render_metrics(d->fed, &resp->body);
        authz_render_metrics(&d->authz_stats, &resp->body);
        if (d->node_pods)
                node_pods_render_metrics(d->node_pods, &resp->body);
        if (d->node_ids)
                node_identities_render_metrics(d->node_ids, &resp->body);
        if (d->sidecar_capture)
                node_sidecar_capture_render_metrics(d->sidecar_capture, &resp->body);
        if (d->node_capture)
                node_capture_render_metrics(d->node_capture, &resp->body);
        if (d->node_policies)
                node_policies_render_metrics(d->node_policies, &resp->body);
        prom_family(&resp->body, "shunt_ready", "gauge", "1 when listeners and rules are up.");
        prom_sample_u64(&resp->body, "shunt_ready", NULL, d->ready);
        prom_family(&resp->body, "shunt_config_reloads_total", "counter",
                    "Configuration generations applied after the first.");
        prom_sample_u64(&resp->body, "shunt_config_reloads_total", NULL, d->cfg_generation - 1);
        prom_family(&resp->body, "shunt_capture_repairs_total", "counter",
                    "Times the capture rules were found removed or changed and put back.");
        prom_sample_u64(&resp->body, "shunt_capture_repairs_total", NULL, d->capture_repairs);
        shunt_build_info_render(&resp->body);
        prom_process_render(&resp->body);
        upgrade_render_metrics(d, &resp->body);
        obs_render_metrics(&resp->body);
        prom_family(&resp->body, "shunt_uptime_seconds", "gauge", "Seconds since start.");
        prom_sample_u64(&resp->body, "shunt_uptime_seconds", NULL,
                        (clock_mono_ms() - d->started_ms) / 1000);
}

/* The read-only listener scrapers outside the pod reach (the admin API
 * stays on localhost): GET /metrics and nothing else. */
static int metrics_open(struct daemon *d, char *err, size_t errlen)
{
        /* Taking over: the old one's socket, or a new one when it had none. */
        int rc = d->taking ? takeover_listener(d, HANDOVER_METRICS, d->cfg->metrics_address,
                                               d->cfg->metrics_port, &d->metrics, err, errlen)
                           : 1;
        if (rc < 0)
                return -1;
        if (rc == 1)
                d->metrics = admin_new_read_only(d->loop, "metrics", d->cfg->metrics_address,
                                                 d->cfg->metrics_port, err, errlen);
        if (!d->metrics)
                return -1;
        rc = admin_route(d->metrics, "GET", "/metrics", h_metrics, d);
        if (rc < 0)
                snprintf(err, errlen, "metrics: route /metrics: %s", strerror(-rc));
        return rc;
}

static void h_config(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        char *json = config_dump_json(d->cfg);
        if (!json) {
                resp->status = 500;
                strbuf_append(&resp->body, "{\"error\":\"out of memory\"}");
                return;
        }
        strbuf_append(&resp->body, json);
        free(json);
}

static void h_status(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        struct strbuf *b = &resp->body;
        strbuf_appendf(b, "{\"version\":\"%s\",\"pid\":%d,\"uptime_s\":%llu,", shunt_version(),
                       (int)getpid(),
                       (unsigned long long)((clock_mono_ms() - d->started_ms) / 1000));
        strbuf_appendf(b,
                       "\"redirect_mode\":\"%s\",\"redirect_configured\":\"%s\","
                       "\"capture\":\"%s\",\"redirect_reason\":",
                       active_mode(d), redirect_mode_name(d->cfg->redirect),
                       capture_mode_name(d->cfg->capture));
        strbuf_append_json_string(b, d->redirect_reason);
        strbuf_appendf(b, ",\"ready\":%s,\"draining\":%s,\"workers\":%d,\"listeners\":",
                       d->ready ? "true" : "false", d->draining ? "true" : "false",
                       d->cfg->workers);
        proxy_render_listeners(d->proxy, b);
        if (d->init_found) {
                /* Reading the nat table needs CAP_NET_ADMIN, which we lack. */
                strbuf_appendf(b,
                               ",\"rules\":{\"installed\":null,\"ipv6\":null,"
                               "\"inbound_only\":%s,\"by\":\"init\"}",
                               strcmp(d->init_found, "iptables") ? "true" : "false");
                goto counts;
        }
        /* eBPF mode: the rules are the inbound half only. */
        bool (*check)(int) = d->bpf ? ipt_inbound_installed : ipt_installed;
        bool installed = d->rules_installed && check(AF_INET);
        bool installed6 = d->rules_installed && check(AF_INET6);
        strbuf_appendf(b, ",\"rules\":{\"installed\":%s,\"ipv6\":%s,\"inbound_only\":%s}",
                       installed ? "true" : "false", installed6 ? "true" : "false",
                       d->bpf ? "true" : "false");
counts:
        upgrade_render_status(d, b);
        strbuf_append(b, ",\"connections\":");
        proxy_render_counts(d->proxy, b);
        strbuf_append(b, ",\"config\":{\"path\":");
        strbuf_append_json_string(b, d->cfg->path);
        strbuf_appendf(b, ",\"generation\":%llu},\"log_level\":\"%s\"}",
                       (unsigned long long)d->cfg_generation, log_level_name(log_get_level()));
}

/* The store's JSON with the mode in front; {"mode":"disabled","identity":null}
 * when mTLS is off. */
static void h_certs(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        strbuf_appendf(&resp->body, "{\"mode\":\"%s\"", mtls_mode_name(d->cfg->mtls_mode));
        if (d->node_ids) { /* node mode: the pods' identities first */
                strbuf_append(&resp->body, ",\"node_identities\":");
                node_identities_render(d->node_ids, &resp->body);
        }
        if (!d->tls) {
                strbuf_append(&resp->body, ",\"identity\":null}");
                return;
        }
        strbuf_append(&resp->body, ",\"federation\":");
        tls_federation_render_json(d->fed, &resp->body);
        struct strbuf sb, extra;
        strbuf_init(&sb);
        strbuf_init(&extra);
        strbuf_append(&extra, "\"allow\":");
        authz_render_allow_ids(d->authz, &extra);
        strbuf_appendf(&extra, ",\"authorization_policies\":%zu", authz_policy_count(d->authz));
        tls_store_render_json(d->tls, &sb, extra.data);
        strbuf_free(&extra);
        if (sb.len > 2 && sb.data[0] == '{') {
                strbuf_append(&resp->body, ",");
                strbuf_appendn(&resp->body, sb.data + 1, sb.len - 1);
        } else {
                strbuf_append(&resp->body, "}");
        }
        strbuf_free(&sb);
}

static void h_rules(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        if (ipt_dump_json(&resp->body) < 0) {
                strbuf_reset(&resp->body);
                resp->status = 500;
                strbuf_append(&resp->body, "{\"error\":\"cannot read the nat table\"}");
        }
}

/* eBPF maps decoded; in another mode says which and that there are none. */
static void h_maps(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        strbuf_appendf(&resp->body, "{\"mode\":\"%s\",\"reason\":", active_mode(d));
        strbuf_append_json_string(&resp->body, d->redirect_reason);
        strbuf_append(&resp->body, ",\"maps\":");
        if (d->bpf)
                bpfcap_render_maps(d->bpf, &resp->body);
        else
                strbuf_append(&resp->body, "null");
        strbuf_append(&resp->body, "}");
}

static void h_connections(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        if (proxy_render_connections(d->proxy, &resp->body) < 0) {
                strbuf_reset(&resp->body);
                resp->status = 500;
                strbuf_append(&resp->body, "{\"error\":\"out of memory\"}");
        }
}

static void h_tap(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        tap_serve(proxy_tap(d->proxy), req, resp);
}

static void h_log_level(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        char want[16] = "";
        size_t n = req->body_len < sizeof(want) - 1 ? req->body_len : sizeof(want) - 1;
        memcpy(want, req->body, n);
        while (n && (want[n - 1] == '\n' || want[n - 1] == '\r' || want[n - 1] == ' '))
                want[--n] = '\0';
        enum log_level lvl;
        if (log_level_parse(want, &lvl) < 0) {
                resp->status = 400;
                strbuf_append(&resp->body,
                              "{\"error\":\"log level must be debug, info, warn or error\"}");
                return;
        }
        log_set_level(lvl);
        log_info("admin", 0, "log level set to %s", log_level_name(lvl));
        strbuf_appendf(&resp->body, "{\"log_level\":\"%s\"}", log_level_name(lvl));
}

static void h_endpoints(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        char service[160] = "";
        admin_query_get(req->query, "service", service, sizeof(service));
        struct disc_render_hooks hooks;
        proxy_render_hooks(d->proxy, &hooks);
        disc_render_endpoints_with(d->registry, &resp->body, service[0] ? service : NULL, &hooks);
}

static void h_routes(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        char service[160] = "";
        admin_query_get(req->query, "service", service, sizeof(service));
        proxy_render_routes(d->proxy, service[0] ? service : NULL, &resp->body);
        /* The Kubernetes routes that cannot be applied, as "rejected". */
        struct strbuf *b = &resp->body;
        if (d->backend && strcmp(disc_backend_type(d->backend), "kubernetes") == 0 && b->len &&
            b->data[b->len - 1] == '}') {
                b->len--;
                strbuf_append(b, ",\"rejected\":");
                k8s_backend_render_routes(disc_backend_impl(d->backend),
                                          service[0] ? service : NULL, b);
                strbuf_append(b, "}");
        }
}

/* "10.0.0.1:80" or "[fd00::1]:80". 0 or -EINVAL. */
static int parse_hostport(const char *s, struct sockaddr_storage *out)
{
        const char *colon = strrchr(s, ':');
        if (!colon || colon == s)
                return -EINVAL;
        char ip[64];
        size_t n = (size_t)(colon - s);
        if (s[0] == '[' && n >= 2 && s[n - 1] == ']') {
                s++;
                n -= 2;
        }
        if (n >= sizeof(ip))
                return -EINVAL;
        memcpy(ip, s, n);
        ip[n] = 0;
        char *end;
        unsigned long port = strtoul(colon + 1, &end, 10);
        if (!colon[1] || *end || port == 0 || port > 65535)
                return -EINVAL;
        return sockaddr_from_string(ip, (uint16_t)port, out);
}

/* POST /admin/circuit-breaker?service=ns/name&endpoint=IP:PORT&state=forced_open|closed */
static void h_breaker(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        char service[160] = "", endpoint[80] = "", state[32] = "";
        admin_query_get(req->query, "service", service, sizeof(service));
        admin_query_get(req->query, "endpoint", endpoint, sizeof(endpoint));
        admin_query_get(req->query, "state", state, sizeof(state));
        bool on = strcmp(state, "forced_open") == 0;
        struct sockaddr_storage sa;
        if (!service[0] || (!on && strcmp(state, "closed") != 0) ||
            parse_hostport(endpoint, &sa) < 0) {
                admin_respond_error(resp, 400,
                                    "want service=NS/NAME, endpoint=IP:PORT and "
                                    "state=forced_open or closed");
                return;
        }
        if (proxy_force_open(d->proxy, service, &sa, on) < 0) {
                admin_respond_error(resp, 404, "no such endpoint in that service's routes");
                return;
        }
        log_warn("admin", 0, "circuit breaker of %s (service %s) %s by the operator", endpoint,
                 service, on ? "forced open" : "released");
        strbuf_appendf(&resp->body, "{\"state\":\"%s\"}", on ? "forced_open" : "closed");
}

static void h_debug_cache(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        strbuf_append(&resp->body, "{\"registry\":");
        disc_render_cache(d->registry, &resp->body);
        strbuf_append(&resp->body, ",\"backend\":");
        disc_backend_render(d->backend, &resp->body);
        strbuf_append(&resp->body, ",\"health_checks\":");
        disc_health_render(d->health, &resp->body);
        strbuf_append(&resp->body, "}");
}

static void h_post_endpoints(const struct admin_request *req, struct admin_response *resp,
                             void *ctx)
{
        struct daemon *d = ctx;
        char err[DISC_ERROR_MAX];
        int rc = disc_admin_apply(d->registry, req->body, req->body_len, err, sizeof(err));
        if (rc < 0) {
                admin_respond_error(resp, rc == -EINVAL ? 400 : 500, err);
                return;
        }
        strbuf_appendf(&resp->body, "{\"applied\":true,\"version\":%llu}",
                       (unsigned long long)disc_registry_version(d->registry));
}

/* ---- mutual TLS: the certificate store ------------------------------------ */

/* Builds the certificate source from the configuration: shunt-ca when
 * mtls.ca_address is set, files when mtls.certificate_file is set, else the
 * built-in CA in mtls.ca_dir. */
static int tls_open(struct daemon *d)
{
        const struct shunt_config *c = d->cfg;
        enum tls_key_type kt;
        if (tls_key_type_parse(c->mtls_key_type, &kt) < 0)
                return -EINVAL;
        struct tls_source *src = NULL;
        int rc;
        if (c->mtls_ca_address[0]) {
                /* The token names the identity; these two only override it
                 * when the operator set them. */
                bool ns_set = config_source_of(c, "mtls.namespace") > CONFIG_SRC_DEFAULT;
                bool sa_set = config_source_of(c, "mtls.service_account") > CONFIG_SRC_DEFAULT;
                struct tls_ca_source_options co = {
                    .address = c->mtls_ca_address,
                    .token_file = c->mtls_ca_token_file,
                    .bundle_file = c->ca_bundle,
                    .trust_domain = c->trust_domain,
                    .ns_override = ns_set ? c->mtls_namespace : NULL,
                    .sa_override = sa_set ? c->mtls_service_account : NULL,
                    .key_type = kt,
                    .mark = c->proxy_mark,
                    .loop = d->loop,
                };
                rc = tls_source_ca_new(&co, &src);
        } else if (c->certificate_file[0]) {
                struct tls_files_options fo = {
                    .cert_file = c->certificate_file,
                    .key_file = c->private_key_file,
                    .bundle_file = c->ca_bundle,
                    .trust_domain = c->trust_domain,
                    .clock_skew_s = c->mtls_clock_skew_s,
                };
                rc = tls_source_files_new(&fo, &src);
        } else {
                struct spiffe_id id;
                rc = spiffe_id_build(c->trust_domain, c->mtls_namespace, c->mtls_service_account,
                                     &id);
                if (rc < 0)
                        return rc;
                char dns[2 * CONFIG_STR_MAX + 32];
                snprintf(dns, sizeof(dns), "%s.%s.svc.cluster.local", c->mtls_service_name,
                         c->mtls_namespace);
                struct tls_builtin_options bo = {
                    .ca = {.state_dir = c->mtls_ca_dir,
                           .trust_domain = c->trust_domain,
                           .key_type = kt},
                    .spiffe_id = id.uri,
                    .dns_name = dns,
                    .key_type = kt,
                    .lifetime_s = c->cert_rotation_s,
                    .backdate_s = TLS_DEFAULT_BACKDATE_S,
                    .extra_bundle_file = c->ca_bundle[0] ? c->ca_bundle : NULL,
                };
                rc = tls_source_builtin_new(&bo, &src);
        }
        if (rc < 0)
                return rc;
        if (d->fed && (rc = tls_federation_start(d->fed, d->loop)) < 0) {
                tls_source_free(src);
                return rc;
        }
        struct tls_store_options so;
        tls_store_options_init(&so);
        so.trust_domain = c->trust_domain;
        so.clock_skew_s = c->mtls_clock_skew_s;
        so.federation = d->fed;
        rc = tls_store_new(&so, src, &d->tls);
        if (rc < 0)
                return rc;
        rc = tls_store_start(d->tls, d->loop);
        if (rc < 0)
                return rc;
        struct tls_snapshot *snap = tls_store_acquire(d->tls);
        log_info("tls", 0, "mTLS %s: identity %s, serial %s, source %s",
                 mtls_mode_name(c->mtls_mode), tls_snapshot_identity(snap),
                 tls_snapshot_serial(snap),
                 c->mtls_ca_address[0]    ? "ca"
                 : c->certificate_file[0] ? "files"
                                          : "builtin-ca");
        tls_snapshot_unref(snap);
        return 0;
}

/* ---- authorization ------------------------------------------------------------- */

/* The file's policies: mtls.allow as allow rules, then authorization.policies.
 * 0, or -errno with err "config: <key>: <what>". */
static int authz_from_config(const struct shunt_config *c, struct authz_stats *stats,
                             struct authz **out, char *err, size_t errlen)
{
        *out = NULL;
        struct authz *a = authz_new(stats);
        if (!a) {
                snprintf(err, errlen, "config: authorization: out of memory");
                return -ENOMEM;
        }
        authz_set_local_trust_domain(a, c->trust_domain);
        char why[400];
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < c->n_mtls_allow; i++)
                rc = authz_add_allow(a, c->mtls_allow[i].port, c->mtls_allow[i].id, why,
                                     sizeof(why));
        if (rc) {
                snprintf(err, errlen, "config: authorization (from mtls.allow): %s", why);
        } else if (c->authorization_policies) {
                cJSON *j = cJSON_Parse(c->authorization_policies);
                rc = j ? authz_add_policies(a, j, "file", why, sizeof(why)) : -ENOMEM;
                cJSON_Delete(j);
                if (rc)
                        snprintf(err, errlen, "config: authorization.policies: %s",
                                 j ? why : "out of memory");
        }
        if (rc) {
                authz_unref(a);
                return rc;
        }
        *out = a;
        return 0;
}

/* Merges the file's and Kubernetes' policies and hands them to the proxy;
 * says which ports are protected. */
static void authz_publish(struct daemon *d)
{
        struct authz *a = authz_new(&d->authz_stats);
        char err[400];
        if (!a || authz_merge(a, d->authz_file, err, sizeof(err)) < 0 ||
            authz_merge(a, d->authz_k8s, err, sizeof(err)) < 0) {
                log_error("authz", 0,
                          "cannot merge the authorization policies (%s): the previous ones stay",
                          a ? err : "out of memory");
                authz_unref(a);
                return;
        }
        authz_set_local_trust_domain(a, d->cfg->trust_domain);
        char ports[512];
        authz_describe_ports(a, ports, sizeof(ports));
        log_info("authz", 0,
                 "authorization: %zu policies (%zu from the file, %zu from Kubernetes), %zu "
                 "rules; protected ports: %s",
                 authz_policy_count(a), authz_policy_count(d->authz_file),
                 authz_policy_count(d->authz_k8s), authz_rule_count(a), ports);
        if (authz_policy_count(a) && d->cfg->mtls_mode == MTLS_DISABLED)
                log_warn("authz", 0,
                         "mtls.mode is disabled: no peer has an identity, so every connection to "
                         "a protected port (%s) is refused",
                         ports);
        if (d->proxy)
                proxy_set_authz(d->proxy, a);
        if (d->node_policies) /* node mode: the file's policies go with each pod's own */
                node_policies_set_file(d->node_policies, d->authz_file);
        authz_unref(d->authz);
        d->authz = a;
}

/* Kubernetes' policies changed (or the pod's labels): rebuild and publish. */
static void authz_kube_changed(void *arg)
{
        struct daemon *d = arg;
        struct authz *a = authz_kube_build(d->authz_kube, &d->authz_stats);
        if (!a) {
                log_error("authz", 0,
                          "out of memory building the Kubernetes policies: the "
                          "previous ones stay");
                return;
        }
        authz_unref(d->authz_k8s);
        d->authz_k8s = a;
        authz_publish(d);
}

/* The pod's labels for policy selectors; unknown (NULL) when unreadable. */
static struct authz_labels *authz_pod_labels(const struct shunt_config *c)
{
        struct authz_labels *l = NULL;
        char err[512];
        int rc = authz_labels_read(c->authz_labels_file, &l, err, sizeof(err));
        if (rc == -ENOENT)
                log_warn("authz", 0,
                         "no pod labels file %s (authorization.pod_labels_file): "
                         "AuthorizationPolicy objects with a selector do not apply to this pod",
                         c->authz_labels_file);
        else if (rc < 0)
                log_error("authz", 0,
                          "pod labels unreadable, AuthorizationPolicy objects with a selector do "
                          "not apply to this pod: %s",
                          err);
        return l;
}

/* With Kubernetes discovery: AuthorizationPolicy objects of the pod's
 * namespace are watched by the same machinery. 0 or -errno (err). */
static int authz_kube_open(struct daemon *d, char *err, size_t errlen)
{
        const struct shunt_config *c = d->cfg;
        if (strcmp(disc_backend_type(d->backend), "kubernetes") || !c->authz_kubernetes)
                return 0;
        if (c->mode == 1)
                return 0; /* node mode: every namespace's, for each pod (node_policies_open) */
        /* The pod's own namespace: set, else the service account's, else mtls.namespace. */
        char pod_ns[CONFIG_STR_MAX];
        const char *ns = c->authz_namespace[0]                            ? c->authz_namespace
                         : k8s_pod_namespace(pod_ns, sizeof(pod_ns)) == 0 ? pod_ns
                                                                          : c->mtls_namespace;
        d->authz_kube = authz_kube_new(ns, authz_kube_changed, d);
        if (!d->authz_kube) {
                snprintf(err, errlen, "authorization: out of memory");
                return -ENOMEM;
        }
        authz_kube_set_labels(d->authz_kube, authz_pod_labels(c));
        struct k8s_object_sink *s = &d->authz_sink;
        s->kind = "authorizationpolicies";
        snprintf(s->path, sizeof(s->path),
                 "/apis/shunt.io/v1alpha1/namespaces/%s/authorizationpolicies", ns);
        s->arg = d->authz_kube;
        s->list_begin = authz_kube_list_begin;
        s->list_end = authz_kube_list_end;
        s->apply = authz_kube_apply;
        s->count = authz_kube_count;
        int rc = k8s_backend_add_sink(disc_backend_impl(d->backend), s);
        if (rc < 0)
                snprintf(err, errlen, "authorization: cannot watch AuthorizationPolicy: %s",
                         strerror(-rc));
        return rc;
}

/* Node mode: the source of one pod identity's certificate: shunt-ca by
 * delegated issuance (the node agent's own token, mtls.ca_token_file, "for"
 * the pod's namespace and service account), else the built-in CA. */
static int node_id_source(void *ctx, const char *ns, const char *sa, const char *spiffe_id,
                          struct tls_source **out, char *err, size_t errlen)
{
        struct daemon *d = ctx;
        const struct shunt_config *c = d->cfg;
        enum tls_key_type kt;
        if (tls_key_type_parse(c->mtls_key_type, &kt) < 0)
                return -EINVAL;
        if (c->mtls_ca_address[0]) {
                struct tls_ca_source_options co = {
                    .address = c->mtls_ca_address,
                    .token_file = c->mtls_ca_token_file,
                    .bundle_file = c->ca_bundle,
                    .trust_domain = c->trust_domain,
                    .for_ns = ns,
                    .for_sa = sa,
                    .key_type = kt,
                    .mark = c->proxy_mark,
                    .loop = d->loop,
                };
                return tls_source_ca_new(&co, out);
        }
        if (c->certificate_file[0]) {
                snprintf(err, errlen,
                         "mtls.certificate_file holds one identity: node mode's pod identities "
                         "need shunt-ca (mtls.ca_address) or the built-in CA");
                return -EINVAL;
        }
        char dns[2 * CONFIG_STR_MAX + 32];
        snprintf(dns, sizeof(dns), "%s.%s.svc.cluster.local", sa, ns);
        struct tls_builtin_options bo = {
            .ca = {.state_dir = c->mtls_ca_dir, .trust_domain = c->trust_domain, .key_type = kt},
            .spiffe_id = spiffe_id,
            .dns_name = dns,
            .key_type = kt,
            .lifetime_s = c->cert_rotation_s,
            .backdate_s = TLS_DEFAULT_BACKDATE_S,
            .extra_bundle_file = c->ca_bundle[0] ? c->ca_bundle : NULL,
        };
        return tls_source_builtin_new(&bo, out);
}

/* Node mode with mTLS: the pods' identities, observing the pod table. */
static int node_ids_open(struct daemon *d, char *err, size_t errlen)
{
        const struct shunt_config *c = d->cfg;
        if (!d->tls)
                return 0;
        if (c->certificate_file[0] && !c->mtls_ca_address[0]) {
                snprintf(err, errlen,
                         "config: mode node: mtls.certificate_file holds one identity; the pods' "
                         "identities need shunt-ca (mtls.ca_address) or the built-in CA");
                return -EINVAL;
        }
        struct node_identities_config ic = {.trust_domain = c->trust_domain,
                                            .max_identities = c->node_max_pods,
                                            .drain_s = c->node_identity_drain_s,
                                            .clock_skew_s = c->mtls_clock_skew_s,
                                            .make_source = node_id_source,
                                            .source_ctx = d,
                                            .federation = d->fed};
        d->node_ids = node_identities_new(&ic, d->loop, err, errlen);
        if (!d->node_ids)
                return -EINVAL;
        int rc = node_identities_attach(d->node_ids, d->node_pods);
        if (rc < 0)
                snprintf(err, errlen, "node: cannot observe the pod table: %s", strerror(-rc));
        return rc;
}

/* Node mode: a pod's policies were built anew: its proxy takes them. */
static void node_policies_changed(void *ctx, uint64_t gen)
{
        struct daemon *d = ctx;
        if (d->node_capture)
                node_capture_pod_authz_changed(d->node_capture, gen);
}

/* Node mode: each pod's own authorization policies (node/policies.h), from
 * a watch of AuthorizationPolicy objects in every namespace. 0 or -errno. */
static int node_policies_open(struct daemon *d, char *err, size_t errlen)
{
        bool kube = d->cfg->authz_kubernetes;
        struct node_policies_config pc = {.kubernetes = kube,
                                          .total = &d->authz_stats,
                                          .changed = node_policies_changed,
                                          .ctx = d};
        d->node_policies = node_policies_new(&pc);
        if (!d->node_policies) {
                snprintf(err, errlen, "node: authorization: out of memory");
                return -ENOMEM;
        }
        node_policies_set_file(d->node_policies, d->authz_file);
        int rc = node_policies_attach(d->node_policies, d->node_pods);
        if (rc == 0 && kube)
                rc = k8s_backend_add_sink(disc_backend_impl(d->backend),
                                          node_policies_sink(d->node_policies));
        if (rc < 0)
                snprintf(err, errlen, "node: cannot watch AuthorizationPolicy objects: %s",
                         strerror(-rc));
        return rc;
}

/* Node mode: the table of this node's meshed pods, fed by a Pods watch of
 * the kubernetes backend (README, Node mode). 0 or -errno (err). */
static int node_pods_open(struct daemon *d, char *err, size_t errlen)
{
        const struct shunt_config *c = d->cfg;
        if (c->mode != 1)
                return 0;
        if (strcmp(disc_backend_type(d->backend), "kubernetes") != 0) {
                snprintf(err, errlen, "config: mode node needs service_discovery.type kubernetes");
                return -EINVAL;
        }
        struct node_pods_config nc = {.node = c->node_name,
                                      .max_pods = c->node_max_pods,
                                      .resolve_ms = c->node_resolve_timeout_ms};
        d->node_pods = node_pods_new(&nc, err, errlen);
        if (!d->node_pods)
                return -EINVAL;
        /* Identities observe first: a pod's identity exists when the
         * capture (registered after) hears of it. */
        if (node_ids_open(d, err, errlen) < 0 || node_policies_open(d, err, errlen) < 0)
                return -EINVAL;
        d->sidecar_capture = node_sidecar_capture_new(NULL);
        if (!d->sidecar_capture ||
            node_sidecar_capture_attach(d->sidecar_capture, d->node_pods, d->loop) < 0) {
                snprintf(err, errlen, "node: sidecar capture: out of memory");
                return -ENOMEM;
        }
        int rc = k8s_backend_add_sink(disc_backend_impl(d->backend), node_pods_sink(d->node_pods));
        if (rc < 0)
                snprintf(err, errlen, "node: cannot watch this node's pods: %s", strerror(-rc));
        return rc < 0 ? rc : node_pods_start(d->node_pods, d->loop);
}

/* Node mode: a pod's certificate slot, its identity's (node/identity.h). */
static struct snapshot_slot *node_identity_of(void *ctx, const char *ns, const char *sa)
{
        struct daemon *d = ctx;
        return d->node_ids ? node_identity_slot(d->node_ids, ns, sa) : NULL;
}

/* Node mode: a pod's own policies (node/policies.h). */
static struct authz *node_authz_of(void *ctx, uint64_t gen)
{
        struct daemon *d = ctx;
        return node_policies_get(d->node_policies, gen);
}

/* Node mode with redirect other than off: each READY pod's capture and
 * proxy (node/capture.h). 0 or -errno (err). */
static int node_capture_open(struct daemon *d, char *err, size_t errlen)
{
        if (!d->node_pods || d->cfg->redirect == REDIRECT_OFF)
                return 0;
        struct node_capture_config nc = {.cfg = d->cfg,
                                         .identity = node_identity_of,
                                         .identity_ctx = d,
                                         .authz = d->node_policies ? node_authz_of : NULL,
                                         .authz_ctx = d,
                                         .loop = d->loop};
        if (d->taking) /* the pods' listeners of the agent taken over */
                nc.inherited = handover_client_pods(d->taking, &nc.n_inherited);
        d->node_capture = node_capture_new(&nc, err, errlen);
        if (!d->node_capture)
                return -EINVAL;
        const struct disc_snapshot *snap = disc_registry_acquire(d->registry);
        node_capture_set_registry(d->node_capture, snap);
        disc_snapshot_release(snap);
        return node_capture_attach(d->node_capture, d->node_pods);
}

static void h_pods(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        (void)req;
        if (!d->node_pods) {
                admin_respond_error(resp, 404, "not in node mode (mode: sidecar)");
                return;
        }
        node_pods_render(d->node_pods, &resp->body);
        if (d->node_capture && resp->body.len && resp->body.data[resp->body.len - 1] == '}') {
                resp->body.len--; /* the table's object gets a "capture" member */
                strbuf_append(&resp->body, ",\"capture\":");
                node_capture_render(d->node_capture, &resp->body);
                strbuf_append(&resp->body, "}");
        }
}

static void h_authz(const struct admin_request *req, struct admin_response *resp, void *ctx)
{
        struct daemon *d = ctx;
        struct strbuf *b = &resp->body;
        char ports[512];
        authz_describe_ports(d->authz, ports, sizeof(ports));
        strbuf_appendf(b,
                       "{\"mode\":\"%s\",\"protected_ports\":", mtls_mode_name(d->cfg->mtls_mode));
        strbuf_append_json_string(b, ports);
        strbuf_appendf(b,
                       ",\"rules\":%zu,\"bounds\":{\"policies_per_source\":%d,"
                       "\"ports_per_policy\":%d,\"principals_per_list\":%d,\"rules\":%d},"
                       "\"sources\":{\"file\":%zu,\"kubernetes\":%zu},\"decisions\":{",
                       authz_rule_count(d->authz), AUTHZ_MAX_POLICIES, AUTHZ_MAX_PORTS,
                       AUTHZ_MAX_PRINCIPALS, AUTHZ_MAX_RULES, authz_policy_count(d->authz_file),
                       authz_policy_count(d->authz_k8s));
        for (int r = 0; r < AUTHZ__REASONS; r++)
                strbuf_appendf(b, "%s\"%s\":%llu", r ? "," : "", authz_reason_name(r),
                               (unsigned long long)atomic_load(&d->authz_stats.decisions[r]));
        strbuf_append(b, "},\"kubernetes\":");
        if (d->authz_kube)
                authz_kube_render(d->authz_kube, b);
        else
                strbuf_append(b, "null");
        if (d->node_policies) { /* node mode: each pod's are in GET /pods */
                strbuf_append(b, ",\"node\":");
                node_policies_render(d->node_policies, b);
        }
        strbuf_append(b, ",\"policies\":");
        authz_render_policies(d->authz, b);
        strbuf_append(b, "}");
}

/* ---- routes: a new registry snapshot becomes the proxy's route table ---- */

static void update_routes(struct daemon *d)
{
        uint64_t v = disc_registry_version(d->registry);
        if (v == d->routes_version)
                return;
        const struct disc_snapshot *snap = disc_registry_acquire(d->registry);
        if (!snap)
                return;
        proxy_set_registry(d->proxy, snap);
        if (d->node_capture)
                node_capture_set_registry(d->node_capture, snap);
        disc_snapshot_release(snap);
        d->routes_version = v;
        log_debug("route", 0, "routing by registry version %llu", (unsigned long long)v);
}

static size_t count_lines(const struct strbuf *sb)
{
        size_t n = 0;
        for (size_t i = 0; i < sb->len; i++)
                n += sb->data[i] == '\n';
        return n;
}

/* Every CAPTURE_CHECK_MS: the rules as they are now against what was
 * installed; removed or changed ones are put back, logged and counted. */
static void on_capture_check(struct loop *loop, struct loop_timer *t)
{
        struct daemon *d = t->data;
        if (d->rules_installed && !d->init_found && !d->draining && !d->upgrade_busy &&
            d->capture_seen.len) {
                struct strbuf now;
                strbuf_init(&now);
                if (ipt_fingerprint(&now) == 0 &&
                    (now.len != d->capture_seen.len ||
                     memcmp(now.data, d->capture_seen.data, now.len) != 0)) {
                        d->capture_repairs++;
                        log_warn("intercept", 0,
                                 "capture rules changed behind shuntd's back (%zu rule lines "
                                 "installed, %zu now): reinstalling them "
                                 "(shunt_capture_repairs_total counts it)",
                                 count_lines(&d->capture_seen) - 1, count_lines(&now) - 1);
                        rules_install(d);
                }
                strbuf_free(&now);
        }
        loop_timer_arm(loop, t, CAPTURE_CHECK_MS);
}

static void on_routes_tick(struct loop *loop, struct loop_timer *t)
{
        struct daemon *d = t->data;
        update_routes(d);
        proxy_tick(d->proxy); /* breakers that become half-open, ejections that end */
        if (d->node_capture)
                node_capture_tick(d->node_capture);
        loop_timer_arm(loop, t, ROUTES_POLL_MS);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static void reload(struct daemon *d)
{
        struct shunt_config *next;
        struct authz *az = NULL;
        char err[CONFIG_ERR_MAX];
        if (config_reload(d->cfg, d->argc, d->argv, environ, &next, err, sizeof(err)) < 0) {
                log_error("config", 0, "reload rejected, keeping the running configuration: %s",
                          err);
                return;
        }
        if (authz_from_config(next, &d->authz_stats, &az, err, sizeof(err)) < 0) {
                log_error("config", 0, "reload rejected, keeping the running configuration: %s",
                          err);
                snapshot_unref(&next->snap);
                return;
        }
        /* Keys taken at start only kept their running values in next
         * (config_reload): everything below applies what changed. */
        struct shunt_config *old = d->cfg;
        /* Authorization applies to new handshakes and connections at once. */
        authz_unref(d->authz_file);
        d->authz_file = az;
        if (d->authz_kube) { /* the labels may have changed */
                authz_kube_set_labels(d->authz_kube, authz_pod_labels(next));
                struct authz *k = authz_kube_build(d->authz_kube, &d->authz_stats);
                if (k) {
                        authz_unref(d->authz_k8s);
                        d->authz_k8s = k;
                }
        }
        authz_publish(d);
        log_set_level(next->log_level);
        d->cfg = next;
        d->cfg_generation++;
        proxy_set_config(d->proxy, next);
        if (d->node_capture)
                node_capture_set_config(d->node_capture, next);
        if (d->rules_installed)
                rules_install(d); /* exclusions may have changed; replaced atomically */
        snapshot_unref(&old->snap);
        log_info("config", 0, "configuration reloaded (generation %llu)",
                 (unsigned long long)d->cfg_generation);
}

static void finish(struct daemon *d)
{
        loop_timer_cancel(d->loop, &d->drain_timer);
        loop_stop(d->loop);
}

static void on_drain_tick(struct loop *loop, struct loop_timer *t)
{
        struct daemon *d = t->data;
        uint64_t active = proxy_active(d->proxy) + node_capture_active(d->node_capture);
        if (active == 0) {
                log_info("shuntd", 0, "drained: no connections left");
                finish(d);
                return;
        }
        if (clock_mono_ms() >= d->drain_deadline_ms) {
                log_warn("shuntd", 0,
                         "drain_timeout reached with %llu connections open: closing them",
                         (unsigned long long)active);
                finish(d);
                return;
        }
        loop_timer_arm(loop, t, DRAIN_POLL_MS);
}

static void start_drain(struct daemon *d, const char *sig)
{
        if (d->draining) {
                log_warn("shuntd", 0, "%s again: stopping now", sig);
                finish(d);
                return;
        }
        d->draining = true;
        d->ready = false;
        handover_server_close_listener(d->upgrade); /* nothing left to hand over */
        log_info(
            "shuntd", 0, "%s: no new connections; draining %llu for up to %u ms", sig,
            (unsigned long long)(proxy_active(d->proxy) + node_capture_active(d->node_capture)),
            d->cfg->drain_timeout_ms);
        proxy_stop_accepting(d->proxy);
        node_capture_stop_accepting(d->node_capture);
        d->drain_deadline_ms = clock_mono_ms() + d->cfg->drain_timeout_ms;
        loop_timer_init(&d->drain_timer, on_drain_tick, d);
        on_drain_tick(d->loop, &d->drain_timer);
}

/* ---- upgrade: handing over to a new shuntd, taking over from an old one -------- */

/* The capture as a new shuntd must continue it: "iptables" or "ebpf" when
 * this shuntd installed it (and owns it), "init" when `shuntd init` did,
 * "off" when there is none. */
static const char *capture_owned(const struct daemon *d)
{
        if (d->init_found)
                return "init";
        return d->bpf ? "ebpf" : d->rules_installed ? "iptables" : "off";
}

static int up_offer(void *ctx, struct handover_listener *out, size_t max, char *capture,
                    size_t caplen, char *pin_root, size_t pinlen)
{
        struct daemon *d = ctx;
        if (d->draining || !d->ready || !d->admin || max < 1)
                return -ESHUTDOWN;
        size_t n = proxy_listeners(d->proxy, out, max - 1);
        struct handover_listener *a = &out[n++];
        memset(a, 0, sizeof(*a));
        a->fd = admin_listen_fd(d->admin);
        a->role = HANDOVER_ADMIN;
        a->worker = -1;
        socklen_t sl = sizeof(a->addr);
        if (getsockname(a->fd, (struct sockaddr *)&a->addr, &sl) < 0)
                return -errno;
        if (d->metrics && n < max) {
                a = &out[n++];
                memset(a, 0, sizeof(*a));
                a->fd = admin_listen_fd(d->metrics);
                a->role = HANDOVER_METRICS;
                a->worker = -1;
                sl = sizeof(a->addr);
                if (getsockname(a->fd, (struct sockaddr *)&a->addr, &sl) < 0)
                        return -errno;
        }
        snprintf(capture, caplen, "%s", capture_owned(d));
        snprintf(pin_root, pinlen, "%s", d->bpf ? bpfcap_pin_root(d->bpf) : "");
        return (int)n;
}

static void up_begin(void *ctx, pid_t peer)
{
        struct daemon *d = ctx;
        (void)peer;
        d->upgrade_busy = true; /* the new one installs its rules; not a tampering */
}

static void up_abort(void *ctx, pid_t peer, const char *why)
{
        struct daemon *d = ctx;
        (void)peer;
        (void)why;
        d->upgrade_busy = false; /* rules it changed are put back by the next check */
}

static void on_commit(struct loop *loop, struct loop_timer *t)
{
        (void)loop;
        struct daemon *d = t->data;
        admin_free(d->admin); /* the new shuntd answers on those sockets now */
        d->admin = NULL;
        admin_free(d->metrics);
        d->metrics = NULL;
        start_drain(d, "handed over");
}

static void up_commit(void *ctx, pid_t peer)
{
        struct daemon *d = ctx;
        d->handed_to = peer;
        d->capture_not_ours = true;
        d->upgrade_busy = false;
        /* After this batch of events, which may hold admin connections'. */
        loop_timer_arm(d->loop, &d->commit_timer, 0);
}

static int up_offer_pod(void *ctx, size_t index, char *uid, size_t uidlen,
                        struct handover_listener *out, size_t max)
{
        struct daemon *d = ctx;
        return d->node_capture
                   ? node_capture_offer_pod(d->node_capture, index, uid, uidlen, out, max)
                   : -ENOENT;
}

static const struct handover_server_ops upgrade_ops = {
    .offer = up_offer,
    .offer_pod = up_offer_pod,
    .begin = up_begin,
    .abort = up_abort,
    .commit = up_commit,
};

/* Serving upgrade.socket is not needed to proxy: a failure is said, not fatal. */
static void upgrade_serve(struct daemon *d)
{
        char err[512];
        loop_timer_init(&d->commit_timer, on_commit, d);
        if (handover_server_open(d->loop, d->cfg->upgrade_socket, d->taken_from != 0, &upgrade_ops,
                                 d, &d->upgrade, err, sizeof(err)) < 0)
                log_warn("upgrade", 0, "%s: this shuntd cannot be upgraded without downtime", err);
}

/* The admin (or metrics) listener of the shuntd taken over, which must be
 * where this configuration listens, served as *out. 0, 1 when the old one
 * had none, -1 with err. */
static int takeover_listener(struct daemon *d, enum handover_role role, const char *address,
                             uint16_t port, struct admin **out, char *err, size_t errlen)
{
        size_t n;
        struct handover_listener *ls = handover_client_listeners(d->taking, &n);
        char host[64], a[SOCKADDR_STRLEN], b[SOCKADDR_STRLEN];
        snprintf(host, sizeof(host), "%s", address + (address[0] == '['));
        char *br = strchr(host, ']');
        if (br)
                *br = '\0';
        struct sockaddr_storage want;
        if (sockaddr_from_string(host, port, &want) < 0)
                memset(&want, 0, sizeof(want));
        for (size_t i = 0; i < n; i++) {
                if (ls[i].role != role || ls[i].fd < 0)
                        continue;
                if (!sockaddr_equal(&ls[i].addr, &want)) {
                        sockaddr_format(&ls[i].addr, a, sizeof(a));
                        sockaddr_format(&want, b, sizeof(b));
                        snprintf(err, errlen,
                                 "the %s listener taken over is on %s, this configuration's on "
                                 "%s: listener addresses cannot change in an upgrade",
                                 handover_role_name(role), a, b);
                        return -1;
                }
                int fd = ls[i].fd;
                ls[i].fd = -1;
                *out = admin_new_fd(d->loop, handover_role_name(role), role == HANDOVER_METRICS, fd,
                                    err, errlen);
                return *out ? 0 : -1;
        }
        return 1;
}

/* The capture the old shuntd owns becomes this one's: the same mode and
 * pins, the rules replaced atomically with this configuration's. It stays
 * the old one's until COMMIT (capture_not_ours: a failure here or later
 * removes nothing). 1 when the old one owns no capture: this one starts
 * its own as usual. */
static int capture_takeover(struct daemon *d, char *err, size_t errlen)
{
        const char *old = handover_client_capture(d->taking);
        pid_t pid = d->taken_from;
        bool init = d->cfg->capture == CAPTURE_INIT;
        if (!strcmp(old, "init") != init) {
                snprintf(err, errlen,
                         "pid %d runs capture %s, this configuration capture %s: the capture "
                         "cannot change in an upgrade (stop and start instead)",
                         (int)pid, !strcmp(old, "init") ? "init" : "self",
                         capture_mode_name(d->cfg->capture));
                return -1;
        }
        bool ebpf = !strcmp(old, "ebpf");
        if (!ebpf && strcmp(old, "iptables"))
                return 1;
        enum redirect_mode r = d->cfg->redirect;
        if (r == REDIRECT_OFF || (r == REDIRECT_IPTABLES && ebpf) ||
            (r == REDIRECT_EBPF && !ebpf) || (!ebpf && d->cfg->failure_mode == FAILURE_OPEN)) {
                snprintf(err, errlen,
                         "pid %d captures with %s, this configuration has redirect %s%s: the "
                         "capture mode cannot change in an upgrade (stop and start instead)",
                         (int)pid, old, redirect_mode_name(r),
                         d->cfg->failure_mode == FAILURE_OPEN ? " and failure_mode open" : "");
                return -1;
        }
        d->capture_not_ours = true;
        char found[400];
        if (ebpf) {
                struct bpfcap_options o;
                bpf_options(d, &o);
                if (strcmp(o.pin_root, handover_client_pin_root(d->taking)) != 0) {
                        snprintf(err, errlen,
                                 "pid %d pinned its capture in %s, this configuration's "
                                 "bpf_pin_root is %s",
                                 (int)pid, handover_client_pin_root(d->taking), o.pin_root);
                        return -1;
                }
                if (bpfcap_pins_check(o.pin_root, o.cgroup_path, found, sizeof(found)) < 0) {
                        snprintf(err, errlen, "the eBPF capture of pid %d: %s", (int)pid, found);
                        return -1;
                }
                char why[400];
                if (bpf_install(d, true, why, sizeof(why)) < 0) {
                        snprintf(err, errlen, "adopting the eBPF capture of pid %d: %s", (int)pid,
                                 why);
                        return -1;
                }
        } else {
                snprintf(found, sizeof(found), "%s",
                         ipt_installed(AF_INET) ? "rules found" : "rules missing, installed again");
                if (rules_install(d) < 0) {
                        snprintf(err, errlen, "adopting the iptables capture of pid %d failed",
                                 (int)pid);
                        return -1;
                }
        }
        d->adopted_capture = ebpf ? "ebpf" : "iptables";
        snprintf(d->redirect_reason, sizeof(d->redirect_reason),
                 "takeover: %s (adopted from pid %d)", d->adopted_capture, (int)pid);
        log_info("upgrade", 0,
                 "takeover: adopted the %s capture of pid %d (%s); it is ours once pid %d commits",
                 d->adopted_capture, (int)pid, found, (int)pid);
        return 0;
}

/* Everything is set up and the workers run: the old shuntd commits, stops
 * accepting and drains; this one accepts from now on and owns the capture. */
static int takeover_commit(struct daemon *d)
{
        char err[512];
        if (handover_client_ready(d->taking, err, sizeof(err)) < 0) {
                log_error("upgrade", 0,
                          "takeover failed: %s; pid %d keeps serving and owns the capture", err,
                          (int)d->taken_from);
                return -1;
        }
        handover_client_free(d->taking);
        d->taking = NULL;
        d->capture_not_ours = false;
        if (proxy_start_accepting(d->proxy) < 0)
                return -1;
        log_info("upgrade", 0,
                 "takeover from pid %d complete: accepting on %zu adopted listeners, capture %s",
                 (int)d->taken_from, d->adopted_listeners,
                 d->adopted_capture ? d->adopted_capture : active_mode(d));
        return 0;
}

static void upgrade_render_status(const struct daemon *d, struct strbuf *b)
{
        struct handover_counts c;
        handover_server_counts(d->upgrade, &c);
        strbuf_append(b, ",\"upgrade\":{\"socket\":");
        if (d->upgrade)
                strbuf_append_json_string(b, d->cfg->upgrade_socket);
        else
                strbuf_append(b, "null");
        strbuf_appendf(b,
                       ",\"taken_over_from\":%d,\"handed_over_to\":%d,\"adopted_listeners\":%zu,"
                       "\"adopted_capture\":\"%s\",\"handovers\":{\"completed\":%llu,"
                       "\"failed\":%llu,\"refused\":%llu}}",
                       (int)d->taken_from, (int)d->handed_to, d->adopted_listeners,
                       d->adopted_capture ? d->adopted_capture : "", c.completed, c.failed,
                       c.refused);
}

static void upgrade_render_metrics(const struct daemon *d, struct strbuf *b)
{
        struct handover_counts c;
        handover_server_counts(d->upgrade, &c);
        prom_family(b, "shunt_upgrade_handovers_total", "counter",
                    "Handovers of this shuntd's listeners and capture to a new shuntd, by result.");
        prom_sample_u64(b, "shunt_upgrade_handovers_total", "result=\"completed\"", c.completed);
        prom_sample_u64(b, "shunt_upgrade_handovers_total", "result=\"failed\"", c.failed);
        prom_sample_u64(b, "shunt_upgrade_handovers_total", "result=\"refused\"", c.refused);
        prom_family(b, "shunt_upgrade_adopted_listeners", "gauge",
                    "Listening sockets taken over from the shuntd this one replaced.");
        prom_sample_u64(b, "shunt_upgrade_adopted_listeners", NULL, d->adopted_listeners);
        prom_family(b, "shunt_upgrade_adopted_capture", "gauge",
                    "1 when the capture (rules, pins) was adopted from the shuntd this one "
                    "replaced.");
        prom_sample_u64(b, "shunt_upgrade_adopted_capture", "mode=\"iptables\"",
                        d->adopted_capture && !strcmp(d->adopted_capture, "iptables"));
        prom_sample_u64(b, "shunt_upgrade_adopted_capture", "mode=\"ebpf\"",
                        d->adopted_capture && !strcmp(d->adopted_capture, "ebpf"));
}

static void on_signal(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct daemon *d = io->data;
        struct signalfd_siginfo si;
        while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                switch (si.ssi_signo) {
                case SIGHUP:
                        reload(d);
                        break;
                case SIGTERM:
                        start_drain(d, "SIGTERM");
                        break;
                case SIGINT:
                        start_drain(d, "SIGINT");
                        break;
                }
        }
}

/* admin.mutations token: a fresh random token, written where only shuntd's
 * user can read it (0600, atomically), is what POST /admin/... must carry.
 * Any other process in the pod can read state but not change it. */
static int admin_token_install(struct daemon *d, char *err, size_t errlen)
{
        const char *path = d->cfg->admin_token_file;
        unsigned char raw[32];
        char token[2 * sizeof(raw) + 2], tmp[CONFIG_PATH_MAX + 16], dir[CONFIG_PATH_MAX];
        if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
                snprintf(err, errlen, "admin.token_file: no random bytes: %s", strerror(errno));
                return -1;
        }
        for (size_t i = 0; i < sizeof(raw); i++)
                snprintf(token + 2 * i, 3, "%02x", raw[i]);
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = '\0';
                if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                        snprintf(err, errlen,
                                 "admin.token_file %s: cannot create its directory: %s", path,
                                 strerror(errno));
                        return -1;
                }
        }
        snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        bool ok = fd >= 0 && fchmod(fd, 0600) == 0 &&
                  write(fd, token, strlen(token)) == (ssize_t)strlen(token) && fsync(fd) == 0;
        int e = errno;
        if (fd >= 0)
                close(fd);
        if (!ok || rename(tmp, path) < 0) {
                e = ok ? errno : e;
                unlink(tmp);
                snprintf(err, errlen, "admin.token_file %s: cannot write it: %s", path,
                         strerror(e));
                return -1;
        }
        d->admin_token_written = true;
        return admin_set_token(d->admin, token);
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: shuntd [--takeover] [--config FILE] [--KEY VALUE ...]\n"
                "       shuntd init [--config FILE] [--KEY VALUE ...]\n"
                "       shuntd --help | --version | --print-config-reference\n\n"
                "Transparent service-mesh proxy. Every configuration key can be given as a flag;\n"
                "flags override environment variables, which override the file.\n"
                "`shuntd init` installs the capture (iptables chains, or eBPF programs pinned\n"
                "under bpf_pin_root) for a shuntd started with --capture init, then exits.\n"
                "--takeover replaces the shuntd serving upgrade.socket without refusing a\n"
                "connection: its listening sockets and capture are handed over, then it drains\n"
                "and exits 0; on any failure it keeps serving and this one exits 1.\n\n%s",
                config_usage());
}

static void raise_fd_limit(void)
{
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
}

int main(int argc, char **argv)
{
        if (argc > 1 && !strcmp(argv[1], "init")) {
                for (int i = 2; i < argc; i++) {
                        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                                usage(stdout);
                                return 0;
                        }
                }
                return run_init(argc - 1, argv + 1);
        }
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                        usage(stdout);
                        return 0;
                }
        }
        if (shunt_version_flag(argc, argv, "shuntd"))
                return 0;
        if (argc == 2 && !strcmp(argv[1], "--print-config-reference")) {
                char *md = config_reference_markdown();
                if (!md) {
                        fprintf(stderr, "shuntd: out of memory\n");
                        return 1;
                }
                fputs(md, stdout);
                free(md);
                return 0;
        }

        struct daemon d = {.argc = 0, .argv = argv, .exit_code = 0};
        /* --takeover is not a configuration key: kept out of what
         * config_load and every reload parse. */
        for (int i = 0; i < argc; i++) {
                if (i > 0 && !strcmp(argv[i], "--takeover"))
                        d.takeover = true;
                else
                        argv[d.argc++] = argv[i];
        }
        argv[d.argc] = NULL;
        argc = d.argc;
        char err[CONFIG_ERR_MAX];
        if (config_load(argc, argv, environ, &d.cfg, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                return 2;
        }
        if (authz_from_config(d.cfg, &d.authz_stats, &d.authz_file, err, sizeof(err)) < 0) {
                fprintf(stderr, "%s\n", err);
                snapshot_unref(&d.cfg->snap);
                return 2;
        }
        /* The federated bundles are read now: a missing or bad one is a
         * configuration error. */
        if (d.cfg->mtls_mode != MTLS_DISABLED &&
            tls_federation_new(d.cfg->trust_domain, d.cfg->mtls_federation, &d.fed, err,
                               sizeof(err)) < 0) {
                fprintf(stderr, "config: mtls.federation: %s\n", err);
                authz_unref(d.authz_file);
                snapshot_unref(&d.cfg->snap);
                return 2;
        }
        d.cfg_generation = 1;
        d.started_ms = clock_mono_ms();
        log_set_level(d.cfg->log_level);
        signal(SIGPIPE, SIG_IGN);
        raise_fd_limit();

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        pthread_sigmask(SIG_BLOCK, &mask, NULL); /* before any thread starts */

        d.loop = loop_new();
        int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (!d.loop || sfd < 0) {
                log_error("shuntd", 0, "cannot create the main event loop: %s", strerror(errno));
                return 1;
        }
        loop_io_init(&d.sig_io, sfd, on_signal, &d);
        loop_io_add(d.loop, &d.sig_io, EPOLLIN);

        /* First, so that a takeover with nothing to take fails at once. */
        if (d.takeover) {
                int rc =
                    handover_client_connect(d.cfg->upgrade_socket, &d.taking, err, sizeof(err));
                if (rc < 0) {
                        log_error("upgrade", 0, "takeover failed: %s%s", err,
                                  rc == -ENOENT || rc == -ECONNREFUSED
                                      ? " (no shuntd serves it: start without --takeover)"
                                      : "");
                        d.exit_code = 1;
                        goto out;
                }
                d.taken_from = handover_client_peer(d.taking);
        }

        if (d.cfg->mtls_mode != MTLS_DISABLED && tls_open(&d) < 0) {
                log_error("tls", 0,
                          "cannot set up mTLS (mtls.mode %s; set mtls.mode disabled to "
                          "run without it)",
                          mtls_mode_name(d.cfg->mtls_mode));
                d.exit_code = 1;
                goto out;
        }
        if (obs_start(d.cfg, shunt_version(), err, sizeof(err)) < 0) { /* access log, traces */
                log_error("shuntd", 0, "%s", err);
                d.exit_code = 1;
                goto out;
        }
        if (d.taking) {
                size_t n;
                struct handover_listener *ls = handover_client_listeners(d.taking, &n);
                d.adopted_listeners = n;
                d.proxy = proxy_new_adopt(d.cfg, ls, n, err, sizeof(err));
                if (!d.proxy) {
                        log_error("upgrade", 0, "takeover failed: %s", err);
                        d.exit_code = 1;
                        goto out;
                }
        } else {
                d.proxy = proxy_new(d.cfg, err, sizeof(err));
        }
        if (!d.proxy) {
                log_error("proxy", 0, "cannot start listeners: %s", err);
                d.exit_code = 1;
                goto out;
        }
        if (d.tls)
                proxy_set_tls(d.proxy, tls_store_slot(d.tls));
        authz_publish(&d);
        int taken = d.taking ? takeover_listener(&d, HANDOVER_ADMIN, d.cfg->admin_address,
                                                 d.cfg->admin_port, &d.admin, err, sizeof(err))
                             : 0;
        if (taken != 0) {
                if (taken == 1)
                        snprintf(err, sizeof(err), "pid %d handed over no admin listener",
                                 (int)d.taken_from);
                log_error("upgrade", 0, "takeover failed: %s", err);
                d.exit_code = 1;
                goto out;
        }
        if (!d.taking)
                d.admin =
                    admin_new(d.loop, d.cfg->admin_address, d.cfg->admin_port, err, sizeof(err));
        if (!d.admin) {
                log_error("admin", 0, "cannot start the admin server: %s", err);
                d.exit_code = 1;
                goto out;
        }
        /* Taking over: the old shuntd's token stays valid until it commits. */
        if (!d.taking && d.cfg->admin_mutations == ADMIN_MUTATIONS_TOKEN &&
            admin_token_install(&d, err, sizeof(err)) < 0) {
                log_error("admin", 0, "%s", err);
                d.exit_code = 1;
                goto out;
        }
        admin_route(d.admin, "GET", "/health", h_health, &d);
        admin_route(d.admin, "GET", "/ready", h_ready, &d);
        admin_route(d.admin, "GET", "/metrics", h_metrics, &d);
        admin_route(d.admin, "GET", "/config", h_config, &d);
        admin_route(d.admin, "GET", "/status", h_status, &d);
        admin_route(d.admin, "GET", "/rules", h_rules, &d);
        admin_route(d.admin, "GET", "/maps", h_maps, &d);
        admin_route(d.admin, "GET", "/certs", h_certs, &d);
        admin_route(d.admin, "GET", "/authz", h_authz, &d);
        admin_route(d.admin, "GET", "/connections", h_connections, &d);
        admin_route(d.admin, "GET", "/tap", h_tap, &d);
        admin_route(d.admin, "POST", "/admin/log-level", h_log_level, &d);
        admin_route(d.admin, "GET", "/endpoints", h_endpoints, &d);
        admin_route(d.admin, "GET", "/routes", h_routes, &d);
        admin_route(d.admin, "GET", "/debug/cache", h_debug_cache, &d);
        admin_route(d.admin, "GET", "/pods", h_pods, &d);
        admin_route(d.admin, "POST", "/admin/endpoints", h_post_endpoints, &d);
        admin_route(d.admin, "POST", "/admin/circuit-breaker", h_breaker, &d);
        if (config_metrics_enabled(d.cfg) && metrics_open(&d, err, sizeof(err)) < 0) {
                log_error("admin", 0, "cannot start the metrics listener: %s", err);
                d.exit_code = 1;
                goto out;
        }

        d.registry = disc_registry_new(NULL);
        if (!d.registry || disc_backend_new(d.registry, d.cfg, &d.backend, err, sizeof(err)) < 0 ||
            authz_kube_open(&d, err, sizeof(err)) < 0 || node_pods_open(&d, err, sizeof(err)) < 0 ||
            disc_backend_start(d.backend, d.loop, err, sizeof(err)) < 0 ||
            disc_registry_attach(d.registry, d.loop) < 0 ||
            !(d.health = disc_health_start(d.registry, d.loop, config_socket_mark(d.cfg)))) {
                log_error("discovery", 0, "service discovery: %s",
                          d.registry ? err : "out of memory");
                d.exit_code = 1;
                goto out;
        }
        update_routes(&d);
        loop_timer_init(&d.routes_timer, on_routes_tick, &d);
        loop_timer_arm(d.loop, &d.routes_timer, ROUTES_POLL_MS);
        loop_timer_init(&d.capture_timer, on_capture_check, &d);
        loop_timer_arm(d.loop, &d.capture_timer, CAPTURE_CHECK_MS);

        int own = d.taking ? capture_takeover(&d, err, sizeof(err)) : 1;
        if (own < 0) {
                log_error("upgrade", 0, "takeover failed: %s", err);
                d.exit_code = 1;
                goto out;
        }
        if (own == 1 && d.cfg->capture == CAPTURE_INIT) {
                if (capture_adopt(&d, err, sizeof(err)) < 0) {
                        log_error("intercept", 0, "%s", err);
                        d.exit_code = 1;
                        goto out;
                }
                log_info("intercept", 0, "%s", d.redirect_reason);
        } else if (own == 1 && d.node_pods) {
                /* Node mode: nothing is captured in the node's own namespace;
                 * each pod's capture lives in the pod's (node/capture.h). */
                if (node_capture_open(&d, err, sizeof(err)) < 0) {
                        log_error("node", 0, "%s", err);
                        d.exit_code = 1;
                        goto out;
                }
                snprintf(d.redirect_reason, sizeof(d.redirect_reason),
                         "node mode: per pod, in each pod's network namespace (redirect %s)",
                         redirect_mode_name(d.cfg->redirect));
        } else if (own == 1) {
                switch (d.cfg->redirect) {
                case REDIRECT_IPTABLES:
                        if (rules_install(&d) < 0) {
                                d.exit_code = 1;
                                goto out;
                        }
                        snprintf(d.redirect_reason, sizeof(d.redirect_reason),
                                 "configured: iptables");
                        break;
                case REDIRECT_EBPF:
                        if (bpf_install(&d, false, err, sizeof(err)) < 0) {
                                log_error("intercept", 0, "eBPF capture unavailable: %s", err);
                                d.exit_code = 1;
                                goto out;
                        }
                        snprintf(d.redirect_reason, sizeof(d.redirect_reason),
                                 "configured: ebpf (cgroup %.200s)", d.cfg->redirect_cgroup);
                        break;
                case REDIRECT_AUTO:
                        if (bpf_install(&d, false, err, sizeof(err)) == 0) {
                                snprintf(d.redirect_reason, sizeof(d.redirect_reason),
                                         "auto: ebpf (cgroup %.200s)", d.cfg->redirect_cgroup);
                                break;
                        }
                        if (d.cfg->failure_mode == FAILURE_OPEN) {
                                log_error("intercept", 0,
                                          "failure_mode open needs eBPF capture, which is "
                                          "unavailable (%s); iptables capture can only fail closed",
                                          err);
                                d.exit_code = 1;
                                goto out;
                        }
                        log_warn("intercept", 0,
                                 "redirect auto: using iptables, eBPF capture unavailable: %s",
                                 err);
                        snprintf(d.redirect_reason, sizeof(d.redirect_reason),
                                 "auto: iptables (eBPF: %.200s)", err);
                        if (rules_install(&d) < 0) {
                                d.exit_code = 1;
                                goto out;
                        }
                        break;
                case REDIRECT_OFF:
                        snprintf(
                            d.redirect_reason, sizeof(d.redirect_reason),
                            "configured: off (connections must be redirected by something else)");
                        break;
                }
        }
        if (!d.node_pods && origdst_selftest(err, sizeof(err)) < 0) {
                /* With redirect off nothing may ever redirect to us (a
                 * client of shunt-ca and the API only, such as the chart's
                 * helm test pod), and a network namespace without nat
                 * rules tracks no connection: said, not fatal. */
                if (d.cfg->redirect == REDIRECT_OFF) {
                        log_warn("intercept", 0,
                                 "redirect off: original destinations will not be known for "
                                 "connections redirected here: %s",
                                 err);
                } else {
                        log_error("intercept", 0, "original destination self-test failed: %s", err);
                        d.exit_code = 1;
                        goto out;
                }
        }
        if (proxy_start(d.proxy) < 0) {
                d.exit_code = 1;
                goto out;
        }
        if (d.taking && takeover_commit(&d) < 0) {
                d.exit_code = 1;
                goto out;
        }
        if (d.taken_from && d.cfg->admin_mutations == ADMIN_MUTATIONS_TOKEN &&
            admin_token_install(&d, err, sizeof(err)) < 0)
                log_error("admin", 0, "%s: POST /admin/... is refused", err);
        upgrade_serve(&d);
        d.ready = true;
        log_info("shuntd", 0,
                 "ready: %d workers, inbound %s:%u, outbound %s:%u, admin %s:%u, redirect %s",
                 d.cfg->workers, d.cfg->bind_address, d.cfg->inbound_port, d.cfg->bind_address,
                 d.cfg->outbound_port, d.cfg->admin_address, d.cfg->admin_port,
                 redirect_mode_name(d.cfg->redirect));

        int rc = loop_run(d.loop);
        if (rc < 0) {
                log_error("shuntd", 0, "main loop failed: %s", strerror(-rc));
                d.exit_code = 1;
        }
out:
        d.ready = false;
        /* Close the remaining connections while the NAT rules still exist, so
         * their final FIN or RST is translated back and reaches the client. */
        proxy_free(d.proxy);
        node_capture_keep(d.node_capture); /* the pods stay captured: fail closed */
        node_capture_stop(d.node_capture); /* every pod's proxy: before the stores */
        obs_stop();                        /* after every worker's last access line */
        tls_store_free(d.tls);             /* after every tls_conn is gone */
        authz_unref(d.authz);
        authz_unref(d.authz_file);
        authz_unref(d.authz_k8s);
        rules_remove(&d);
        admin_free(d.admin);
        admin_free(d.metrics);
        /* Handed over: the path is the new shuntd's now. */
        if (d.admin_token_written && !d.handed_to)
                unlink(d.cfg->admin_token_file);
        handover_client_free(d.taking);
        handover_server_free(d.upgrade, !d.handed_to);
        if (d.loop)
                loop_timer_cancel(d.loop, &d.commit_timer);
        if (d.loop)
                loop_timer_cancel(d.loop, &d.routes_timer);
        if (d.loop)
                loop_timer_cancel(d.loop, &d.capture_timer);
        strbuf_free(&d.capture_seen);
        disc_backend_free(d.backend);
        authz_kube_free(d.authz_kube);                /* after the watch that feeds it */
        node_sidecar_capture_keep(d.sidecar_capture); /* the pods' capture outlives us */
        node_pods_free(d.node_pods);                  /* tells node_ids every pod is gone */
        node_sidecar_capture_free(d.sidecar_capture);
        node_capture_free(d.node_capture);   /* after the table's last gone */
        node_policies_free(d.node_policies); /* after the watch and the table's last gone */
        node_identities_free(d.node_ids);    /* after every tls_conn is gone (proxy_free) */
        tls_federation_free(d.fed);          /* after every store that borrows it */
        disc_health_stop(d.health);
        if (d.registry) {
                disc_registry_detach(d.registry);
                disc_registry_free(d.registry);
        }
        if (d.loop)
                loop_free(d.loop);
        close(sfd);
        snapshot_unref(&d.cfg->snap);
        log_info("shuntd", 0, "exit %d", d.exit_code);
        return d.exit_code;
}

// SPDX-License-Identifier: Apache-2.0
/* Checks of shuntctl check that ask the running shuntd (admin API): health
 * and readiness, shuntd's capabilities, its capture, its certificate, the CA
 * it gets certificates from, discovery sync. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check/check-int.h"
#include "intercept/bpfcap.h"
#include "intercept/iptables.h"
#include "shunt/capture.h"

#define TEXT_MAX CHECK_TEXT_MAX

/* A certificate renewal failing this many times in a row (backoff 1 s
 * doubling to 30 s: about three minutes) fails the check. */
#define ROTATION_FAILURES_FAIL 10
/* A discovery source stale for this long fails the check. */
#define DISCOVERY_STALE_FAIL_S 300

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
        return v ? v : dflt;
}

static double jnum(const cJSON *o, const char *key, double dflt)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static void fmt_secs(double s, char *out, size_t len)
{
        long long v = (long long)(s < 0 ? -s : s);
        if (v >= 86400)
                snprintf(out, len, "%lldd%lldh", v / 86400, v % 86400 / 3600);
        else if (v >= 3600)
                snprintf(out, len, "%lldh%02lldm", v / 3600, v % 3600 / 60);
        else if (v >= 60)
                snprintf(out, len, "%lldm%02llds", v / 60, v % 60);
        else
                snprintf(out, len, "%llds", v);
}

/* http://HOST:PORT; a bare IPv6 literal gets brackets and the default port. */
static void admin_url(const char *admin, const char *path, char *out, size_t len)
{
        const char *first = strchr(admin, ':');
        if (admin[0] != '[' && first && strchr(first + 1, ':'))
                snprintf(out, len, "http://[%s]:15003%s", admin, path);
        else
                snprintf(out, len, "http://%s%s", admin, path);
}

static cJSON *admin_json(struct check_ctx *c, const char *path)
{
        char url[512], err[256];
        long status = 0;
        struct strbuf body;
        strbuf_init(&body);
        admin_url(c->o->admin, path, url, sizeof(url));
        cJSON *j = NULL;
        if (check_http_get(url, NULL, &status, &body, err, sizeof(err)) == 0 && status == 200 &&
            body.data)
                j = cJSON_ParseWithLength(body.data, body.len);
        strbuf_free(&body);
        return j;
}

void check_daemon_fetch(struct check_ctx *c)
{
        char url[512];
        long status = 0;
        struct strbuf body;
        strbuf_init(&body);
        admin_url(c->o->admin, "/health", url, sizeof(url));
        if (check_http_get(url, NULL, &status, &body, c->admin_err, sizeof(c->admin_err)) < 0) {
                strbuf_free(&body);
                return;
        }
        if (status != 200) {
                snprintf(c->admin_err, sizeof(c->admin_err), "/health answered %ld", status);
                strbuf_free(&body);
                return;
        }
        c->admin_up = true;
        strbuf_reset(&body);
        admin_url(c->o->admin, "/ready", url, sizeof(url));
        char err[256];
        if (check_http_get(url, NULL, &c->ready_status, &body, err, sizeof(err)) < 0)
                c->ready_status = 0;
        strbuf_free(&body);
        c->status = admin_json(c, "/status");
        c->config = admin_json(c, "/config");
        c->certs = admin_json(c, "/certs");
        c->cache = admin_json(c, "/debug/cache");
        const char *redirect = check_config_str(c, "redirect");
        c->want_ebpf = !(strcmp(redirect, "iptables") == 0 || strcmp(redirect, "off") == 0);
}

/* False, with a WARN for check name, when path did not answer with JSON. */
static bool answered(struct check_ctx *c, const cJSON *j, const char *name, const char *path)
{
        if (j)
                return true;
        struct check_result *res = check_add(c, CHECK_WARN, name);
        snprintf(res->detail, TEXT_MAX, "GET %s did not answer with JSON", path);
        snprintf(res->advice, TEXT_MAX, "see shuntd's log");
        return false;
}

static bool check_admin(struct check_ctx *c)
{
        struct check_result *res;
        if (!c->admin_up) {
                res = check_add(c, CHECK_FAIL, "admin");
                snprintf(res->detail, TEXT_MAX, "cannot reach shuntd admin at %s: %s", c->o->admin,
                         c->admin_err);
                snprintf(res->advice, TEXT_MAX,
                         "start shuntd, or run the check where its admin API listens "
                         "(127.0.0.1:15003 in the pod's network namespace by default: kubectl "
                         "exec into the proxy container), or pass --admin HOST:PORT");
                return false;
        }
        if (c->ready_status != 200) {
                bool draining =
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c->status, "draining"));
                res = check_add(c, CHECK_FAIL, "admin");
                snprintf(res->detail, TEXT_MAX, "/health answers 200 but /ready %ld%s",
                         c->ready_status, draining ? " (draining)" : "");
                snprintf(res->advice, TEXT_MAX, "%s: see 'shuntctl status' and shuntd's log",
                         draining ? "shuntd was told to stop and is draining its connections"
                                  : "shuntd is starting (listeners or capture not up yet) or "
                                    "could not finish starting");
                return true;
        }
        char up[32];
        fmt_secs(jnum(c->status, "uptime_s", 0), up, sizeof(up));
        res = check_add(c, CHECK_PASS, "admin");
        snprintf(res->detail, TEXT_MAX,
                 "/health and /ready answer 200 at %s (shuntd %s, pid %.0f, up %s)", c->o->admin,
                 jstr(c->status, "version", "?"), jnum(c->status, "pid", 0), up);
        return true;
}

/* capture self or init: from /status, else /config (older shuntd: self). */
static bool capture_init(const struct check_ctx *c)
{
        const char *m = jstr(c->status, "capture", NULL);
        return strcmp(m ? m : check_config_str(c, "capture"), "init") == 0;
}

static void check_shuntd_caps(struct check_ctx *c)
{
        struct check_result *res;
        long pid = (long)jnum(c->status, "pid", 0);
        bool init = capture_init(c);
        const char *redirect = jstr(c->status, "redirect_mode", "?");
        char path[64], comm[64];
        uint64_t eff = 0, prm = 0;
        snprintf(path, sizeof(path), "/proc/%ld/status", pid);
        int rc = pid > 0 ? check_read_caps(path, &eff, &prm, comm, sizeof(comm)) : -ESRCH;
        if (rc < 0 || strcmp(comm, "shuntd") != 0) {
                res = check_add(c, CHECK_WARN, "shuntd-capabilities");
                if (rc < 0)
                        snprintf(res->detail, TEXT_MAX, "%s: %s", path, strerror(-rc));
                else
                        snprintf(res->detail, TEXT_MAX,
                                 "pid %ld is '%s' here, not shuntd (another pid namespace)", pid,
                                 comm);
                snprintf(res->advice, TEXT_MAX,
                         "run the check in shuntd's pid namespace (the proxy container) to see "
                         "its capabilities");
                return;
        }
        char held[512];
        check_caps_names(eff | prm, held, sizeof(held));
        if (init) {
                if ((eff | prm) == 0) {
                        res = check_add(c, CHECK_PASS, "shuntd-capabilities");
                        snprintf(res->detail, TEXT_MAX,
                                 "shuntd (pid %ld) holds no capability (capture init: an init "
                                 "container installed capture)",
                                 pid);
                        return;
                }
                res = check_add(c, CHECK_FAIL, "shuntd-capabilities");
                snprintf(res->detail, TEXT_MAX,
                         "shuntd (pid %ld) holds %s although capture is installed by an init "
                         "container (capture init)",
                         pid, held);
                snprintf(res->advice, TEXT_MAX,
                         "a long-running proxy must not keep the right to rewrite the pod's "
                         "network: drop every capability in the proxy container "
                         "(securityContext.capabilities.drop [ALL], runAsUser 1337); only the "
                         "init container needs NET_ADMIN and NET_RAW");
                return;
        }
        bool needs_admin = strcmp(redirect, "off") != 0;
        bool needs_bpf = strcmp(redirect, "ebpf") == 0;
        bool has_admin = eff & CHECK_CAP(CAP_NET_ADMIN_BIT);
        bool has_bpf = eff & (CHECK_CAP(CAP_BPF_BIT) | CHECK_CAP(CAP_SYS_ADMIN_BIT));
        if ((needs_admin && !has_admin) || (needs_bpf && !has_bpf)) {
                res = check_add(c, CHECK_FAIL, "shuntd-capabilities");
                snprintf(res->detail, TEXT_MAX,
                         "shuntd (pid %ld) holds %s, not %s, but installs its own capture "
                         "(--redirect %s)",
                         pid, held, needs_admin && !has_admin ? "NET_ADMIN" : "BPF", redirect);
                snprintf(res->advice, TEXT_MAX,
                         "grant it NET_ADMIN%s, or install capture with an init container "
                         "(shuntd init) and run the proxy with --capture init",
                         needs_bpf ? " and BPF" : "");
                return;
        }
        res = check_add(c, CHECK_PASS, "shuntd-capabilities");
        snprintf(res->detail, TEXT_MAX,
                 "shuntd (pid %ld) holds %s (it installs its own capture: "
                 "--redirect %s, capture self)",
                 pid, held, redirect);
}

#define UNSEEN                                                                                     \
        "installed by shuntd init (shuntd found it at start; reading the nat table again needs "   \
        "NET_ADMIN, which this process lacks)"

static void check_capture(struct check_ctx *c)
{
        struct check_result *res;
        const char *mode = jstr(c->status, "redirect_mode", "?");
        const cJSON *rules = cJSON_GetObjectItemCaseSensitive(c->status, "rules");
        const cJSON *inst = cJSON_GetObjectItemCaseSensitive(rules, "installed");
        /* Reading the nat table needs NET_ADMIN: a shuntd with capture init
         * lacks it (its /status says null), and so may this process. */
        bool may_read = (c->caps & CHECK_CAP(CAP_NET_ADMIN_BIT)) && !c->userns;
        bool installed = cJSON_IsTrue(inst) ||
                         (may_read && (ipt_installed(AF_INET) || ipt_inbound_installed(AF_INET)));
        bool unseen = !installed && !cJSON_IsBool(inst) && !may_read;
        bool init = capture_init(c);
        const char *who = init ? "the init container (shuntd init) installs them: see its log "
                                 "(kubectl logs POD -c shunt-init) and rerun it"
                               : "shuntd installs them at start: see its log, or restart it";
        if (strcmp(mode, "off") == 0) {
                res = check_add(c, CHECK_WARN, "capture");
                snprintf(res->detail, TEXT_MAX, "redirect off: nothing is captured");
                snprintf(res->advice, TEXT_MAX,
                         "applications reach the mesh only by connecting to the outbound port "
                         "themselves; run shuntd with --redirect auto to capture");
                return;
        }
        if (strcmp(mode, "ebpf") == 0) {
                char what[512];
                const char *root =
                    c->o->pin_root ? c->o->pin_root : check_config_str(c, "bpf_pin_root");
                if (!root[0])
                        root = SHUNT_PIN_ROOT;
                if (bpfcap_pins_check(root, check_config_str(c, "redirect_cgroup"), what,
                                      sizeof(what)) < 0) {
                        bool denied =
                            strstr(what, strerror(EACCES)) || strstr(what, strerror(EPERM));
                        res = check_add(c, denied ? CHECK_WARN : CHECK_FAIL, "capture");
                        snprintf(res->detail, TEXT_MAX, "eBPF capture: %s", what);
                        snprintf(res->advice, TEXT_MAX, "%s",
                                 denied ? "reading the pins needs root (or CAP_BPF): run the "
                                          "check as root on the node"
                                        : "the links or maps capture needs are gone (a cleanup "
                                          "of /sys/fs/bpf, another shuntd's clean exit): restart "
                                          "shuntd (capture self) or rerun shuntd init to attach "
                                          "and pin them again; bpftool link show lists what is "
                                          "attached");
                        return;
                }
                res = check_add(c, CHECK_PASS, "capture");
                snprintf(res->detail, TEXT_MAX, "eBPF capture: %s; inbound iptables chain %s", what,
                         installed ? "installed"
                         : unseen  ? UNSEEN
                                   : "missing");
                if (!installed && !unseen) {
                        res->status = CHECK_FAIL;
                        snprintf(res->advice, TEXT_MAX, "inbound capture stays on iptables: %s",
                                 who);
                }
                return;
        }
        if (unseen) {
                res = check_add(c, CHECK_PASS, "capture");
                snprintf(res->detail, TEXT_MAX, "iptables capture %s", UNSEEN);
                return;
        }
        if (!installed) {
                res = check_add(c, CHECK_FAIL, "capture");
                snprintf(res->detail, TEXT_MAX,
                         "iptables capture is configured but the chains %s and %s are not "
                         "installed",
                         IPT_CHAIN_INBOUND, IPT_CHAIN_OUTBOUND);
                snprintf(res->advice, TEXT_MAX, "%s; 'shuntctl rules' shows what is there", who);
                return;
        }
        res = check_add(c, CHECK_PASS, "capture");
        snprintf(res->detail, TEXT_MAX, "iptables chains %s and %s installed (IPv4%s)",
                 IPT_CHAIN_INBOUND, IPT_CHAIN_OUTBOUND,
                 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rules, "ipv6")) ? " and IPv6" : "");
}

static time_t parse_time(const char *s)
{
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
        return end ? timegm(&tm) : 0;
}

static const char *renewal_advice(const char *source)
{
        if (strcmp(source, "files") == 0)
                return "the certificate files are written by an external CA (cert-manager, SPIRE, "
                       "a Secret): check that it renews mtls.certificate_file and "
                       "mtls.private_key_file; shuntd reloads them when they change";
        if (strcmp(source, "ca") == 0)
                return "shunt-ca did not renew it: see the ca check below and last_error in "
                       "'shuntctl certs' (token, network, CA logs)";
        return "the built-in CA did not renew it: see last_error in 'shuntctl certs' and "
               "shuntd's log (mtls.ca_dir readable, the CA itself valid)";
}

static void check_certificate(struct check_ctx *c)
{
        struct check_result *res;
        if (!answered(c, c->certs, "certificate", "/certs"))
                return;
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c->certs, "identity"))) {
                res = check_add(c, CHECK_PASS, "certificate");
                snprintf(res->detail, TEXT_MAX, "mTLS disabled (mtls.mode %s): no certificate",
                         jstr(c->certs, "mode", "?"));
                return;
        }
        const char *source = jstr(c->certs, "source", "?");
        const cJSON *cur = cJSON_GetObjectItemCaseSensitive(c->certs, "current");
        const cJSON *rot = cJSON_GetObjectItemCaseSensitive(c->certs, "rotation");
        const char *serial = jstr(cur, "serial", "?");
        const char *not_after = jstr(cur, "not_after", "?");
        double left = jnum(cur, "expires_in_s", 0);
        time_t nb = parse_time(jstr(cur, "not_before", NULL));
        time_t na = parse_time(jstr(cur, "not_after", NULL));
        double threshold = c->o->cert_warn_s > 0 ? (double)c->o->cert_warn_s
                           : na > nb             ? (double)(na - nb) / 6
                                                 : 3600;
        const char *state = jstr(rot, "state", "?");
        double fails = jnum(rot, "consecutive_failures", 0);
        const char *last_error = jstr(rot, "last_error", "");
        char left_s[32], thr_s[32];
        fmt_secs(left, left_s, sizeof(left_s));
        fmt_secs(threshold, thr_s, sizeof(thr_s));
        if (!cur || left <= 0) {
                res = check_add(c, CHECK_FAIL, "certificate");
                snprintf(res->detail, TEXT_MAX,
                         "certificate serial %s of %s expired at %s (%s ago; source %s)%s%s",
                         serial, jstr(c->certs, "identity", "?"), not_after, left_s, source,
                         last_error[0] ? "; last error: " : "", last_error);
                snprintf(res->advice, TEXT_MAX,
                         "peers refuse an expired certificate, so mesh connections fail: %s",
                         renewal_advice(source));
                return;
        }
        if (strcmp(state, "retrying") == 0) {
                res = check_add(c, fails >= ROTATION_FAILURES_FAIL ? CHECK_FAIL : CHECK_WARN,
                                "certificate");
                snprintf(res->detail, TEXT_MAX,
                         "renewal failing (%.0f times in a row): %s; serial %s keeps serving, "
                         "expires in %s",
                         fails, last_error, serial, left_s);
                snprintf(res->advice, TEXT_MAX, "%s", renewal_advice(source));
                return;
        }
        if (left < threshold) {
                res = check_add(c, CHECK_WARN, "certificate");
                snprintf(res->detail, TEXT_MAX,
                         "certificate serial %s expires in %s (at %s), under the %s threshold; "
                         "source %s, rotation %s",
                         serial, left_s, not_after, thr_s, source, state);
                snprintf(res->advice, TEXT_MAX, "renewal is late: %s", renewal_advice(source));
                return;
        }
        /* A trust bundle root past its end: peers it signed are refused. */
        const cJSON *root;
        int expired_roots = 0;
        cJSON_ArrayForEach(root, cJSON_GetObjectItemCaseSensitive(c->certs, "trust_bundle"))
            expired_roots += jnum(root, "expires_in_s", 1) <= 0;
        res = check_add(c, expired_roots ? CHECK_WARN : CHECK_PASS, "certificate");
        snprintf(res->detail, TEXT_MAX,
                 "%s: serial %s valid until %s (expires in %s), source %s, rotation %s%s",
                 jstr(c->certs, "identity", "?"), serial, not_after, left_s, source, state,
                 expired_roots ? "; the trust bundle holds an expired root" : "");
        if (expired_roots)
                snprintf(res->advice, TEXT_MAX,
                         "remove expired roots from mtls.ca_bundle ('shuntctl certs' lists them)");
}

static void check_ca(struct check_ctx *c)
{
        struct check_result *res;
        const char *addr = jstr(c->certs, "ca_address", "");
        if (!addr[0])
                addr = check_config_str(c, "mtls.ca_address");
        if (!addr[0]) {
                res = check_add(c, CHECK_PASS, "ca");
                snprintf(res->detail, TEXT_MAX, "not used (certificate source %s)",
                         jstr(c->certs, "source", "none"));
                return;
        }
        const char *bundle = check_config_str(c, "mtls.ca_bundle");
        if (!bundle[0] || access(bundle, R_OK) < 0) {
                res = check_add(c, CHECK_WARN, "ca");
                snprintf(res->detail, TEXT_MAX, "cannot verify %s: trust bundle %s%s%s", addr,
                         bundle[0] ? bundle : "(mtls.ca_bundle not set)", bundle[0] ? ": " : "",
                         bundle[0] ? strerror(errno) : "");
                snprintf(res->advice, TEXT_MAX,
                         "run the check in the proxy container, where the bundle (ConfigMap "
                         "shunt-ca-bundle) is mounted at mtls.ca_bundle");
                return;
        }
        char url[600], err[256];
        size_t alen = strlen(addr);
        while (alen && addr[alen - 1] == '/')
                alen--;
        snprintf(url, sizeof(url), "%.*s/healthz", (int)alen, addr);
        long status = 0;
        struct strbuf body;
        strbuf_init(&body);
        int rc = strncmp(addr, "https://", 8) == 0
                     ? check_http_get(url, bundle, &status, &body, err, sizeof(err))
                     : (snprintf(err, sizeof(err), "not an https:// address"), -EINVAL);
        strbuf_free(&body);
        if (rc < 0 || status != 200) {
                res = check_add(c, CHECK_FAIL, "ca");
                if (rc < 0)
                        snprintf(res->detail, TEXT_MAX, "GET %.400s: %.300s", url, err);
                else
                        snprintf(res->detail, TEXT_MAX, "GET %s answered %ld", url, status);
                snprintf(res->advice, TEXT_MAX,
                         "certificates cannot be renewed: check mtls.ca_address (DNS name, "
                         "Service shunt-ca, port 15012), that shunt-ca runs, and that "
                         "mtls.ca_bundle holds the root that signed its serving certificate "
                         "(ConfigMap shunt-ca-bundle)");
                return;
        }
        /* Reachable; the last certificate request may still have been
         * refused (a token the CA does not accept). */
        const cJSON *last = cJSON_GetObjectItemCaseSensitive(c->certs, "last_issuance");
        bool refused = cJSON_IsObject(last) && cJSON_IsFalse(cJSON_GetObjectItem(last, "ok"));
        res = check_add(c, refused ? CHECK_WARN : CHECK_PASS, "ca");
        snprintf(res->detail, TEXT_MAX, "%s answers 200 over TLS verified with %s", url, bundle);
        if (cJSON_IsObject(last)) {
                size_t n = strlen(res->detail);
                snprintf(res->detail + n, TEXT_MAX - n, "; last issuance %s: %s%s%.300s",
                         jstr(last, "time", "?"), jstr(last, "result", "?"),
                         jstr(last, "message", "")[0] ? ", " : "", jstr(last, "message", ""));
        }
        if (!refused)
                return;
        long http = (long)jnum(last, "http_status", 0);
        snprintf(res->advice, TEXT_MAX, "%s",
                 http == 401   ? "the CA refused the service-account token: mtls.ca_token_file "
                                 "must hold a projected token with audience shunt-ca that has "
                                 "not expired (the projected volume renews it)"
                 : http == 400 ? "the CA refused the request: the identity asked for must be the "
                                 "one the token names (mtls.namespace and "
                                 "mtls.service_account override it only when set)"
                 : http == 429 || http == 503
                     ? "the CA is busy or cannot review tokens right now; shuntd retries with "
                       "backoff"
                     : "see shuntd's log and the CA's");
}

static const char *discovery_advice(const char *type)
{
        if (strcmp(type, "kubernetes") == 0)
                return "check the API server address and credentials (kubeconfig or in-cluster "
                       "token) and that the service account may list and watch services and "
                       "endpointslices; endpoints known before stay in use";
        if (strcmp(type, "consul") == 0)
                return "check service_discovery.consul.address, token and datacenter, and that "
                       "the agent answers; endpoints known before stay in use";
        return "check that the registry file exists and is valid JSON (shuntd's log names the "
               "error); the last good version stays in use";
}

static void check_discovery(struct check_ctx *c)
{
        struct check_result *res;
        if (!answered(c, c->cache, "discovery", "/debug/cache"))
                return;
        const cJSON *reg = cJSON_GetObjectItemCaseSensitive(c->cache, "registry");
        const cJSON *sources = cJSON_GetObjectItemCaseSensitive(reg, "sources");
        const cJSON *s, *worst = NULL;
        enum check_status worst_st = CHECK_PASS;
        int n = 0;
        cJSON_ArrayForEach(s, sources)
        {
                if (strcmp(jstr(s, "type", ""), "manual") == 0)
                        continue;
                n++;
                enum check_status st = CHECK_PASS;
                if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "synced")))
                        st = CHECK_FAIL;
                else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "stale")))
                        st = jnum(s, "staleness_seconds", 0) >= DISCOVERY_STALE_FAIL_S ? CHECK_FAIL
                                                                                       : CHECK_WARN;
                if (!worst || st > worst_st) {
                        worst = s;
                        worst_st = st;
                }
        }
        if (n == 0) {
                res = check_add(c, CHECK_PASS, "discovery");
                snprintf(res->detail, TEXT_MAX,
                         "no registry source (service_discovery.type %s with nothing to read): "
                         "%.0f services; outbound connections follow outbound_policy %s",
                         check_config_str(c, "service_discovery.type"), jnum(reg, "services", 0),
                         check_config_str(c, "outbound_policy"));
                return;
        }
        const char *type = jstr(worst, "type", "?");
        /* The file backend's source is called "file": name its path. */
        const char *name = jstr(worst, "name", "?");
        const cJSON *backend = cJSON_GetObjectItemCaseSensitive(c->cache, "backend");
        if (strcmp(type, "file") == 0)
                name = jstr(cJSON_GetObjectItemCaseSensitive(backend, "state"), "path", name);
        res = check_add(c, worst_st, "discovery");
        if (worst_st == CHECK_PASS) {
                snprintf(res->detail, TEXT_MAX,
                         "%d source%s in sync (%s %s, last sync %s): %.0f services, %.0f endpoints",
                         n, n == 1 ? "" : "s", type, name, jstr(worst, "last_sync", "?"),
                         jnum(reg, "services", 0), jnum(reg, "endpoints", 0));
                return;
        }
        char stale[32];
        fmt_secs(jnum(worst, "staleness_seconds", 0), stale, sizeof(stale));
        if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(worst, "synced")))
                snprintf(res->detail, TEXT_MAX, "%s source %s never synced (%.0f attempts): %s",
                         type, name, jnum(worst, "failures", 0),
                         jstr(worst, "last_error", "no error recorded"));
        else
                snprintf(res->detail, TEXT_MAX,
                         "%s source %s stale for %s (last sync %s, %.0f stale endpoints): %s", type,
                         name, stale, jstr(worst, "last_sync", "?"),
                         jnum(reg, "stale_endpoints", 0),
                         jstr(worst, "last_error", "no error recorded"));
        snprintf(res->advice, TEXT_MAX, "%s", discovery_advice(type));
}

void check_daemon(struct check_ctx *c)
{
        if (!check_admin(c))
                return;
        check_shuntd_caps(c);
        check_capture(c);
        check_certificate(c);
        check_ca(c);
        check_discovery(c);
}

// SPDX-License-Identifier: Apache-2.0
/* The webhook: an AdmissionReview for a Pod in, a JSONPatch adding the
 * capture init container, the proxy, their volumes and the meshed label out. */
#include "inject/inject-int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base64.h>

/* Every readiness question goes to the proxy's admin API on 127.0.0.1 inside
 * the pod (the kubelet's HTTP probes would come from outside, to the pod IP,
 * where the admin API does not listen): exec probes through shuntctl. */
#define SHUNTD   "/usr/bin/shuntd"
#define SHUNTCTL "/usr/bin/shuntctl"

/* Annotations the webhook reads; any other shunt.io/ key gets a warning. */
#define A_EXCL_IN   "shunt.io/exclude-inbound-ports"
#define A_EXCL_OUT  "shunt.io/exclude-outbound-ports"
#define A_EXCL_CIDR "shunt.io/exclude-outbound-cidrs"
#define A_MTLS      "shunt.io/mtls-mode"
#define A_LOG       "shunt.io/log-level"
#define A_CPU_REQ   "shunt.io/proxy-cpu-request"
#define A_CPU_LIM   "shunt.io/proxy-cpu-limit"
#define A_MEM_REQ   "shunt.io/proxy-memory-request"
#define A_MEM_LIM   "shunt.io/proxy-memory-limit"

static const char *const known_annotations[] = {INJECT_OPTOUT, A_EXCL_IN, A_EXCL_OUT, A_EXCL_CIDR,
                                                A_MTLS,        A_LOG,     A_CPU_REQ,  A_CPU_LIM,
                                                A_MEM_REQ,     A_MEM_LIM, NULL};
static const char *const mtls_names[] = {"strict", "permissive", "disabled", NULL};
static const char *const log_names[] = {"debug", "info", "warn", "error", NULL};

/* shuntd's read-only metrics listener, as a scraper finds it. */
#define METRICS_PORT_NAME "shunt-metrics"
#define A_PROM_SCRAPE     "prometheus.io/scrape"
#define A_PROM_PORT       "prometheus.io/port"
#define A_PROM_PATH       "prometheus.io/path"

#define VOL_TOKEN   "shunt-token"
#define VOL_BUNDLE  "shunt-ca-bundle"
#define VOL_KUBE    "shunt-kube-api"
#define VOL_TMP     "shunt-tmp"
#define VOL_RUN     "shunt-init-run"
#define VOL_BPFFS   "shunt-bpffs"
#define VOL_CGROUP  "shunt-host-cgroup"
#define VOL_PODINFO "shunt-podinfo"
#define KUBE_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

/* ---- value checks ---------------------------------------------------------- */

bool inject_valid_quantity(const char *s)
{
        /* <digits>[.<digits>] then one suffix: SI (m k M G T P E), binary
         * (Ki Mi Gi Ti Pi Ei) or an exponent e<digits> / E<digits>. */
        if (!s || strlen(s) > 32)
                return false;
        const char *p = s;
        if (*p == '+')
                p++;
        size_t digits = 0;
        while (*p >= '0' && *p <= '9')
                p++, digits++;
        if (*p == '.') {
                p++;
                while (*p >= '0' && *p <= '9')
                        p++, digits++;
        }
        if (!digits)
                return false;
        if (!*p)
                return true;
        static const char *const suffixes[] = {"m",  "k",  "M",  "G",  "T",  "P",  "E",
                                               "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", NULL};
        for (int i = 0; suffixes[i]; i++)
                if (!strcmp(p, suffixes[i]))
                        return true;
        if ((*p == 'e' || *p == 'E') && p[1]) {
                p++;
                if (*p == '-' || *p == '+')
                        p++;
                if (!*p)
                        return false;
                for (; *p; p++)
                        if (*p < '0' || *p > '9')
                                return false;
                return true;
        }
        return false;
}

static bool valid_port(const char *s)
{
        if (!*s || strlen(s) > 5)
                return false;
        long v = 0;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return false;
                v = v * 10 + (*p - '0');
        }
        return v >= 1 && v <= 65535;
}

static bool valid_cidr(const char *s)
{
        const char *slash = strchr(s, '/');
        if (!slash || slash == s || (size_t)(slash - s) >= INET6_ADDRSTRLEN)
                return false;
        char addr[INET6_ADDRSTRLEN];
        memcpy(addr, s, (size_t)(slash - s));
        addr[slash - s] = '\0';
        unsigned char buf[16];
        int max;
        if (inet_pton(AF_INET, addr, buf) == 1)
                max = 32;
        else if (inet_pton(AF_INET6, addr, buf) == 1)
                max = 128;
        else
                return false;
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3)
                return false;
        int len = 0;
        for (; *p; p++) {
                if (*p < '0' || *p > '9')
                        return false;
                len = len * 10 + (*p - '0');
        }
        return len <= max;
}

int inject_list_add(struct inject_list *l, const char *text, bool cidr, char *why, size_t whylen)
{
        if (cidr ? !valid_cidr(text) : !valid_port(text)) {
                snprintf(why, whylen, "'%.47s' is not %s", text,
                         cidr ? "a CIDR such as 10.0.0.0/8 or fd00::/8" : "a port 1..65535");
                return -EINVAL;
        }
        for (size_t i = 0; i < l->n; i++)
                if (!strcmp(l->item[i], text))
                        return 0;
        if (l->n == INJECT_LIST_MAX) {
                snprintf(why, whylen, "more than %d entries (with the chart's defaults)",
                         INJECT_LIST_MAX);
                return -E2BIG;
        }
        snprintf(l->item[l->n++], INJECT_ITEM_MAX, "%s", text);
        return 0;
}

int inject_list_add_csv(struct inject_list *l, const char *csv, bool cidr, char *why, size_t whylen)
{
        const char *p = csv;
        for (;;) {
                while (*p == ' ')
                        p++;
                const char *end = strchr(p, ',');
                size_t n = end ? (size_t)(end - p) : strlen(p);
                while (n && p[n - 1] == ' ')
                        n--;
                if (n == 0 && !end && p == csv)
                        return 0; /* "" is an empty list */
                char item[INJECT_ITEM_MAX];
                if (n >= sizeof(item)) {
                        snprintf(why, whylen, "'%.47s...' is not %s", p,
                                 cidr ? "a CIDR" : "a port 1..65535");
                        return -EINVAL;
                }
                memcpy(item, p, n);
                item[n] = '\0';
                int rc = inject_list_add(l, item, cidr, why, whylen);
                if (rc)
                        return rc;
                if (!end)
                        return 0;
                p = end + 1;
        }
}

static void list_csv(const struct inject_list *l, char *buf, size_t n)
{
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < l->n && off < n; i++)
                off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? "," : "", l->item[i]);
}

/* ---- the review ------------------------------------------------------------ */

/* What the webhook decided, filled while reading the request. */
struct review {
        const struct inject_config *cfg;
        const char *uid;
        const char *ns;
        char pod[320];    /* namespace/name for the log line */
        cJSON *warnings;  /* array of strings, or NULL */
        char refuse[512]; /* non-empty: allowed false, code 400 */
        char note[600];   /* one line for the log */
        cJSON *patch;     /* JSONPatch operations, or NULL */
        /* per-pod values, defaults from the config */
        struct inject_list ex_in, ex_out, ex_cidrs;
        const char *mtls_mode;
        const char *log_level;
        const char *cpu_req, *cpu_lim, *mem_req, *mem_lim;
};

static void notef(struct review *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void notef(struct review *r, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->note, sizeof(r->note), fmt, ap);
        va_end(ap);
}

static void refusef(struct review *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refusef(struct review *r, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->refuse, sizeof(r->refuse), fmt, ap);
        va_end(ap);
        notef(r, "refused %s: %s", r->pod, r->refuse);
}

static void warn(struct review *r, const char *msg)
{
        if (!r->warnings)
                r->warnings = cJSON_CreateArray();
        if (r->warnings)
                cJSON_AddItemToArray(r->warnings, cJSON_CreateString(msg));
}

static const char *str_of(const cJSON *obj, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "shunt.io/meshed" -> "shunt.io~1meshed" (RFC 6901). */
static void pointer_escape(const char *in, char *out, size_t n)
{
        size_t o = 0;
        for (; *in && o + 3 < n; in++) {
                if (*in == '~') {
                        out[o++] = '~';
                        out[o++] = '0';
                } else if (*in == '/') {
                        out[o++] = '~';
                        out[o++] = '1';
                } else {
                        out[o++] = *in;
                }
        }
        out[o] = '\0';
}

static void op_add(cJSON *patch, const char *path, cJSON *value)
{
        cJSON *op = cJSON_CreateObject();
        cJSON_AddStringToObject(op, "op", "add");
        cJSON_AddStringToObject(op, "path", path);
        cJSON_AddItemToObject(op, "value", value);
        cJSON_AddItemToArray(patch, op);
}

static void env_value(cJSON *env, const char *name, const char *value)
{
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", name);
        cJSON_AddStringToObject(e, "value", value);
        cJSON_AddItemToArray(env, e);
}

static void env_field(cJSON *env, const char *name, const char *field_path)
{
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", name);
        cJSON *from = cJSON_AddObjectToObject(e, "valueFrom");
        cJSON *ref = cJSON_AddObjectToObject(from, "fieldRef");
        cJSON_AddStringToObject(ref, "fieldPath", field_path);
        cJSON_AddItemToArray(env, e);
}

static cJSON *strings(const char *const *v)
{
        cJSON *a = cJSON_CreateArray();
        for (; *v; v++)
                cJSON_AddItemToArray(a, cJSON_CreateString(*v));
        return a;
}

static void mount(cJSON *mounts, const char *name, const char *path, bool ro)
{
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "name", name);
        cJSON_AddStringToObject(m, "mountPath", path);
        if (ro)
                cJSON_AddBoolToObject(m, "readOnly", true);
        cJSON_AddItemToArray(mounts, m);
}

static bool ebpf(const struct inject_config *c)
{
        return strcmp(c->capture, "iptables") != 0;
}

/* The environment both containers read (`shuntd init` takes the same
 * configuration as shuntd); where to find the pod's cgroup only for the
 * init container, the only one that sees the node's cgroup tree. */
static cJSON *make_env(const struct review *r, bool init)
{
        const struct inject_config *c = r->cfg;
        cJSON *env = cJSON_CreateArray();
        char buf[INJECT_LIST_MAX * INJECT_ITEM_MAX];
        char uid[16];

        snprintf(uid, sizeof(uid), "%d", c->proxy_uid);
        env_value(env, "SHUNT_REDIRECT", c->capture);
        env_value(env, "SHUNT_PROXY_UID", uid);
        env_value(env, "SHUNT_LOG_LEVEL", r->log_level);
        env_value(env, "TRUST_DOMAIN", c->trust_domain);
        /* The init container too: the capture it installs leaves the
         * metrics port alone. */
        if (c->metrics_port) {
                snprintf(uid, sizeof(uid), "%d", c->metrics_port);
                env_value(env, "SHUNT_ADMIN_METRICS_PORT", uid);
        } else {
                env_value(env, "SHUNT_ADMIN_METRICS_ADDRESS", "off");
        }
        if (r->mtls_mode && *r->mtls_mode)
                env_value(env, "MTLS_MODE", r->mtls_mode);
        if (r->ex_in.n) {
                list_csv(&r->ex_in, buf, sizeof(buf));
                env_value(env, "SHUNT_EXCLUDE_INBOUND_PORTS", buf);
        }
        if (r->ex_out.n) {
                list_csv(&r->ex_out, buf, sizeof(buf));
                env_value(env, "SHUNT_EXCLUDE_OUTBOUND_PORTS", buf);
        }
        if (r->ex_cidrs.n) {
                list_csv(&r->ex_cidrs, buf, sizeof(buf));
                env_value(env, "SHUNT_EXCLUDE_OUTBOUND_CIDRS", buf);
        }
        env_value(env, "SERVICE_DISCOVERY_TYPE", c->discovery);
        if (!strcmp(c->discovery, "kubernetes"))
                env_value(env, "KUBERNETES_NAMESPACE", "*");
        if (*c->ca_address) {
                env_value(env, "SHUNT_CA_ADDRESS", c->ca_address);
                env_value(env, "CA_BUNDLE_PATH", INJECT_BUNDLE_DIR "/ca.crt");
        }
        if (ebpf(c)) {
                /* One pin directory per pod: the pod's uid, expanded by the kubelet. */
                env_field(env, "SHUNT_POD_UID", "metadata.uid");
                snprintf(buf, sizeof(buf), "%s/$(SHUNT_POD_UID)", c->bpf_pin_root);
                env_value(env, "SHUNT_BPF_PIN_ROOT", buf);
                /* shuntd init finds the pod's cgroup (SHUNT_POD_UID) in the
                 * node's hierarchy, whatever the kubelet's cgroup driver. */
                if (init) {
                        env_value(env, "SHUNT_REDIRECT_CGROUP", "pod");
                        env_value(env, "SHUNT_CGROUP_ROOT", INJECT_HOST_CGROUP);
                }
        }
        return env;
}

static cJSON *security_context_proxy(const struct inject_config *c)
{
        static const char *const drop[] = {"ALL", NULL};
        cJSON *sc = cJSON_CreateObject();
        cJSON_AddNumberToObject(sc, "runAsUser", c->proxy_uid);
        cJSON_AddNumberToObject(sc, "runAsGroup", c->proxy_uid);
        cJSON_AddBoolToObject(sc, "runAsNonRoot", true);
        cJSON_AddBoolToObject(sc, "allowPrivilegeEscalation", false);
        cJSON_AddBoolToObject(sc, "privileged", false);
        cJSON_AddBoolToObject(sc, "readOnlyRootFilesystem", true);
        cJSON *caps = cJSON_AddObjectToObject(sc, "capabilities");
        cJSON_AddItemToObject(caps, "drop", strings(drop));
        cJSON *sp = cJSON_AddObjectToObject(sc, "seccompProfile");
        cJSON_AddStringToObject(sp, "type", "RuntimeDefault");
        return sc;
}

/* The init container runs as root with exactly the capabilities capture
 * needs: NET_ADMIN and NET_RAW for iptables, BPF and PERFMON besides for
 * eBPF; nothing else, no privilege escalation. */
static cJSON *security_context_init(const struct inject_config *c)
{
        static const char *const drop[] = {"ALL", NULL};
        static const char *const add_ipt[] = {"NET_ADMIN", "NET_RAW", NULL};
        static const char *const add_bpf[] = {"NET_ADMIN", "NET_RAW", "BPF", "PERFMON", NULL};
        cJSON *sc = cJSON_CreateObject();
        cJSON_AddNumberToObject(sc, "runAsUser", 0);
        /* The proxy's group: `shuntd init` shares the eBPF pins with it. */
        cJSON_AddNumberToObject(sc, "runAsGroup", c->proxy_uid);
        cJSON_AddBoolToObject(sc, "runAsNonRoot", false);
        cJSON_AddBoolToObject(sc, "allowPrivilegeEscalation", false);
        cJSON_AddBoolToObject(sc, "privileged", false);
        cJSON_AddBoolToObject(sc, "readOnlyRootFilesystem", true);
        cJSON *caps = cJSON_AddObjectToObject(sc, "capabilities");
        cJSON_AddItemToObject(caps, "add", strings(ebpf(c) ? add_bpf : add_ipt));
        cJSON_AddItemToObject(caps, "drop", strings(drop));
        cJSON *sp = cJSON_AddObjectToObject(sc, "seccompProfile");
        cJSON_AddStringToObject(sp, "type", "RuntimeDefault");
        return sc;
}

static cJSON *exec_probe(const char *const *cmd, int period, int failures)
{
        cJSON *p = cJSON_CreateObject();
        cJSON *ex = cJSON_AddObjectToObject(p, "exec");
        cJSON_AddItemToObject(ex, "command", strings(cmd));
        cJSON_AddNumberToObject(p, "periodSeconds", period);
        cJSON_AddNumberToObject(p, "timeoutSeconds", 2);
        cJSON_AddNumberToObject(p, "failureThreshold", failures);
        return p;
}

static cJSON *make_init(const struct review *r)
{
        const struct inject_config *c = r->cfg;
        static const char *const cmd[] = {SHUNTD, NULL};
        static const char *const args[] = {"init", NULL};
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "name", INJECT_INIT_NAME);
        cJSON_AddStringToObject(k, "image", c->image);
        cJSON_AddStringToObject(k, "imagePullPolicy", c->pull_policy);
        cJSON_AddItemToObject(k, "command", strings(cmd));
        cJSON_AddItemToObject(k, "args", strings(args));
        cJSON_AddItemToObject(k, "env", make_env(r, true));
        if (c->init_resources)
                cJSON_AddItemToObject(k, "resources", cJSON_Duplicate(c->init_resources, true));
        cJSON_AddItemToObject(k, "securityContext", security_context_init(c));
        cJSON *mounts = cJSON_AddArrayToObject(k, "volumeMounts");
        /* iptables takes its lock in /run. */
        mount(mounts, VOL_RUN, "/run", false);
        if (ebpf(c)) {
                mount(mounts, VOL_BPFFS, "/sys/fs/bpf", false);
                mount(mounts, VOL_CGROUP, INJECT_HOST_CGROUP, true);
        }
        return k;
}

static cJSON *make_resources(const struct review *r)
{
        cJSON *res = r->cfg->proxy_resources ? cJSON_Duplicate(r->cfg->proxy_resources, true)
                                             : cJSON_CreateObject();
        struct {
                const char *part, *name, *value;
        } over[] = {{"requests", "cpu", r->cpu_req},
                    {"requests", "memory", r->mem_req},
                    {"limits", "cpu", r->cpu_lim},
                    {"limits", "memory", r->mem_lim}};
        for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
                if (!over[i].value)
                        continue;
                cJSON *part = cJSON_GetObjectItemCaseSensitive(res, over[i].part);
                if (!part)
                        part = cJSON_AddObjectToObject(res, over[i].part);
                cJSON_DeleteItemFromObjectCaseSensitive(part, over[i].name);
                cJSON_AddStringToObject(part, over[i].name, over[i].value);
        }
        return res;
}

static cJSON *make_proxy(const struct review *r)
{
        const struct inject_config *c = r->cfg;
        static const char *const cmd[] = {SHUNTD, NULL};
        static const char *const args[] = {"--capture", "init", NULL};
        static const char *const ready[] = {SHUNTCTL, "ready", NULL};
        cJSON *k = cJSON_CreateObject();
        cJSON_AddStringToObject(k, "name", INJECT_PROXY_NAME);
        cJSON_AddStringToObject(k, "image", c->image);
        cJSON_AddStringToObject(k, "imagePullPolicy", c->pull_policy);
        cJSON_AddItemToObject(k, "command", strings(cmd));
        cJSON_AddItemToObject(k, "args", strings(args));
        cJSON_AddItemToObject(k, "env", make_env(r, false));
        if (c->metrics_port) {
                cJSON *p = cJSON_CreateObject();
                cJSON_AddStringToObject(p, "name", METRICS_PORT_NAME);
                cJSON_AddNumberToObject(p, "containerPort", c->metrics_port);
                cJSON_AddStringToObject(p, "protocol", "TCP");
                cJSON *ports = cJSON_AddArrayToObject(k, "ports");
                cJSON_AddItemToArray(ports, p);
        }
        cJSON *res = make_resources(r);
        if (cJSON_GetArraySize(res))
                cJSON_AddItemToObject(k, "resources", res);
        else
                cJSON_Delete(res);
        cJSON_AddItemToObject(k, "securityContext", security_context_proxy(c));
        cJSON *mounts = cJSON_AddArrayToObject(k, "volumeMounts");
        mount(mounts, VOL_TOKEN, INJECT_TOKEN_DIR, true);
        mount(mounts, VOL_BUNDLE, INJECT_BUNDLE_DIR, true);
        mount(mounts, VOL_KUBE, KUBE_SA_DIR, true);
        mount(mounts, VOL_PODINFO, "/etc/shunt/podinfo", true);
        mount(mounts, VOL_TMP, "/tmp", false);
        /* eBPF: the maps the init container pinned, read-only (original
         * destinations, /maps). */
        if (ebpf(c))
                mount(mounts, VOL_BPFFS, "/sys/fs/bpf", true);
        /* Started before the application, stopped after it. */
        if (c->native_sidecar) {
                cJSON_AddStringToObject(k, "restartPolicy", "Always");
                cJSON_AddItemToObject(k, "startupProbe", exec_probe(ready, 1, c->startup_timeout));
        } else {
                char secs[16];
                snprintf(secs, sizeof(secs), "%d", c->startup_timeout);
                const char *const wait[] = {SHUNTCTL, "ready", secs, NULL};
                cJSON *lc = cJSON_AddObjectToObject(k, "lifecycle");
                cJSON *ps = cJSON_AddObjectToObject(lc, "postStart");
                cJSON *ex = cJSON_AddObjectToObject(ps, "exec");
                cJSON_AddItemToObject(ex, "command", strings(wait));
        }
        cJSON_AddItemToObject(k, "readinessProbe", exec_probe(ready, 5, 3));
        return k;
}

static cJSON *make_volumes(const struct review *r)
{
        const struct inject_config *c = r->cfg;
        cJSON *vols = cJSON_CreateArray();

        cJSON *v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "name", VOL_TOKEN);
        cJSON *proj = cJSON_AddObjectToObject(v, "projected");
        cJSON *srcs = cJSON_AddArrayToObject(proj, "sources");
        cJSON *s = cJSON_CreateObject();
        cJSON *sat = cJSON_AddObjectToObject(s, "serviceAccountToken");
        cJSON_AddStringToObject(sat, "audience", c->audience);
        cJSON_AddNumberToObject(sat, "expirationSeconds", c->token_expiration);
        cJSON_AddStringToObject(sat, "path", "token");
        cJSON_AddItemToArray(srcs, s);
        cJSON_AddItemToArray(vols, v);

        v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "name", VOL_BUNDLE);
        cJSON *cm = cJSON_AddObjectToObject(v, "configMap");
        cJSON_AddStringToObject(cm, "name", c->bundle_configmap);
        cJSON *items = cJSON_AddArrayToObject(cm, "items");
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "key", "ca.crt");
        cJSON_AddStringToObject(it, "path", "ca.crt");
        cJSON_AddItemToArray(items, it);
        cJSON_AddItemToArray(vols, v);

        /* The proxy's own API credentials for discovery, the same three
         * pieces as the kubelet's kube-api-access volume, whatever the pod's
         * automountServiceAccountToken says (the application may not want
         * them; the proxy needs them). */
        v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "name", VOL_KUBE);
        proj = cJSON_AddObjectToObject(v, "projected");
        srcs = cJSON_AddArrayToObject(proj, "sources");
        s = cJSON_CreateObject();
        sat = cJSON_AddObjectToObject(s, "serviceAccountToken");
        cJSON_AddNumberToObject(sat, "expirationSeconds", 3607);
        cJSON_AddStringToObject(sat, "path", "token");
        cJSON_AddItemToArray(srcs, s);
        s = cJSON_CreateObject();
        cm = cJSON_AddObjectToObject(s, "configMap");
        cJSON_AddStringToObject(cm, "name", "kube-root-ca.crt");
        items = cJSON_AddArrayToObject(cm, "items");
        it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "key", "ca.crt");
        cJSON_AddStringToObject(it, "path", "ca.crt");
        cJSON_AddItemToArray(items, it);
        cJSON_AddItemToArray(srcs, s);
        s = cJSON_CreateObject();
        cJSON *dapi = cJSON_AddObjectToObject(s, "downwardAPI");
        items = cJSON_AddArrayToObject(dapi, "items");
        it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "path", "namespace");
        cJSON *fr = cJSON_AddObjectToObject(it, "fieldRef");
        cJSON_AddStringToObject(fr, "apiVersion", "v1");
        cJSON_AddStringToObject(fr, "fieldPath", "metadata.namespace");
        cJSON_AddItemToArray(items, it);
        cJSON_AddItemToArray(srcs, s);
        cJSON_AddItemToArray(vols, v);

        /* The pod's labels, which AuthorizationPolicy selectors match
         * (authorization.pod_labels_file's default path). */
        v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "name", VOL_PODINFO);
        cJSON *dv = cJSON_AddObjectToObject(v, "downwardAPI");
        items = cJSON_AddArrayToObject(dv, "items");
        it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "path", "labels");
        fr = cJSON_AddObjectToObject(it, "fieldRef");
        cJSON_AddStringToObject(fr, "apiVersion", "v1");
        cJSON_AddStringToObject(fr, "fieldPath", "metadata.labels");
        cJSON_AddItemToArray(items, it);
        cJSON_AddItemToArray(vols, v);

        /* VOL_RUN: the init container's iptables lock (none when the node captures). */
        const char *empty[] = {VOL_TMP, VOL_RUN};
        for (size_t i = 0; i < (c->capture_from_node ? 1u : 2u); i++) {
                v = cJSON_CreateObject();
                cJSON_AddStringToObject(v, "name", empty[i]);
                cJSON *ed = cJSON_AddObjectToObject(v, "emptyDir");
                cJSON_AddStringToObject(ed, "medium", "Memory");
                cJSON_AddStringToObject(ed, "sizeLimit", "16Mi");
                cJSON_AddItemToArray(vols, v);
        }
        if (ebpf(c)) {
                const char *host[][2] = {{VOL_BPFFS, "/sys/fs/bpf"},
                                         {VOL_CGROUP, "/sys/fs/cgroup"}};
                for (size_t i = 0; i < 2; i++) {
                        v = cJSON_CreateObject();
                        cJSON_AddStringToObject(v, "name", host[i][0]);
                        cJSON *hp = cJSON_AddObjectToObject(v, "hostPath");
                        cJSON_AddStringToObject(hp, "path", host[i][1]);
                        cJSON_AddStringToObject(hp, "type", "Directory");
                        cJSON_AddItemToArray(vols, v);
                }
        }
        return vols;
}

static bool has_container(const cJSON *list, const char *name)
{
        const cJSON *k;
        cJSON_ArrayForEach(k, list)
        {
                const char *n = str_of(k, "name");
                if (n && !strcmp(n, name))
                        return true;
        }
        return false;
}

/* Appends each element of items to the array at path, creating it when absent. */
static void add_all(cJSON *patch, const cJSON *spec, const char *key, cJSON *items, bool front)
{
        char path[64];
        const cJSON *have = cJSON_GetObjectItemCaseSensitive(spec, key);
        if (!cJSON_IsArray(have) || cJSON_GetArraySize(have) == 0) {
                snprintf(path, sizeof(path), "/spec/%s", key);
                op_add(patch, path, items);
                return;
        }
        int i = 0;
        while (cJSON_GetArraySize(items)) {
                cJSON *it = cJSON_DetachItemFromArray(items, 0);
                if (front)
                        snprintf(path, sizeof(path), "/spec/%s/%d", key, i++);
                else
                        snprintf(path, sizeof(path), "/spec/%s/-", key);
                op_add(patch, path, it);
        }
        cJSON_Delete(items);
}

/* Sets n {key, value} pairs in metadata.<map>: one "add" of the whole map
 * when the pod has none (a second would replace the first). */
static void add_map_entries(cJSON *patch, const cJSON *meta, const char *map,
                            const char *const (*kv)[2], size_t n)
{
        char path[160], esc[128];
        const cJSON *have = cJSON_GetObjectItemCaseSensitive(meta, map);
        if (!cJSON_IsObject(have)) {
                cJSON *m = cJSON_CreateObject();
                for (size_t i = 0; i < n; i++)
                        cJSON_AddStringToObject(m, kv[i][0], kv[i][1]);
                snprintf(path, sizeof(path), "/metadata/%s", map);
                op_add(patch, path, m);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                pointer_escape(kv[i][0], esc, sizeof(esc));
                snprintf(path, sizeof(path), "/metadata/%s/%s", map, esc);
                /* "add" on an existing member replaces it (RFC 6902 4.1). */
                op_add(patch, path, cJSON_CreateString(kv[i][1]));
        }
}

/* The prometheus.io/ annotations that point scrapers at the metrics
 * listener, unless the pod has its own (its application's metrics: kept). */
static void add_scrape_annotations(struct review *r, cJSON *patch, const cJSON *meta,
                                   const cJSON *ann, const cJSON *containers)
{
        const struct inject_config *c = r->cfg;
        if (!c->metrics_port)
                return;
        const cJSON *k;
        cJSON_ArrayForEach(k, containers)
        {
                const cJSON *p;
                cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(k, "ports"))
                {
                        const cJSON *n = cJSON_GetObjectItemCaseSensitive(p, "containerPort");
                        if (!cJSON_IsNumber(n) || n->valuedouble != c->metrics_port)
                                continue;
                        char msg[200];
                        snprintf(msg, sizeof(msg),
                                 "shunt: container %.64s declares port %d, which the proxy's "
                                 "metrics listener takes",
                                 str_of(k, "name") ? str_of(k, "name") : "?", c->metrics_port);
                        warn(r, msg);
                }
        }
        if (!c->scrape_annotations || str_of(ann, A_PROM_SCRAPE) || str_of(ann, A_PROM_PORT) ||
            str_of(ann, A_PROM_PATH))
                return;
        char port[8];
        snprintf(port, sizeof(port), "%d", c->metrics_port);
        const char *const kv[][2] = {
            {A_PROM_SCRAPE, "true"}, {A_PROM_PORT, port}, {A_PROM_PATH, "/metrics"}};
        add_map_entries(patch, meta, "annotations", kv, 3);
}

/* capture_from node: what the init container's environment would have been
 * (the capture's part of it), as one JSON object for the node agent. */
static char *node_capture_settings(const struct review *r)
{
        static const char *const keys[] = {INJECT_NODE_CAPTURE_KEYS, NULL};
        cJSON *env = make_env(r, true), *out = cJSON_CreateObject();
        const cJSON *e;
        cJSON_ArrayForEach(e, env)
        {
                const char *name = str_of(e, "name"), *value = str_of(e, "value");
                if (name && value && inject_enum_index(keys, name) >= 0)
                        cJSON_AddStringToObject(out, name, value);
        }
        char *text = cJSON_PrintUnformatted(out);
        cJSON_Delete(out);
        cJSON_Delete(env);
        return text;
}

static bool node_namespace(const struct inject_config *c, const char *ns)
{
        for (size_t i = 0; i < c->n_node_namespaces; i++) {
                if (!strcmp(c->node_namespaces[i], "*") ||
                    (ns && !strcmp(c->node_namespaces[i], ns)))
                        return true;
        }
        return false;
}

/* Node mode: the node agent serves the pod; it only needs to be selected. */
static void review_node_mode(struct review *r, const cJSON *meta, const cJSON *labels)
{
        const char *have = str_of(labels, INJECT_MESHED_LABEL);
        if (have && !strcmp(have, "true")) {
                notef(r, "unchanged %s: node mode, already labelled %s", r->pod,
                      INJECT_MESHED_LABEL);
                return;
        }
        r->patch = cJSON_CreateArray();
        if (!r->patch)
                return;
        const char *const meshed[][2] = {{INJECT_MESHED_LABEL, "true"}};
        add_map_entries(r->patch, meta, "labels", meshed, 1);
        notef(r, "labelled %s: node mode (served by the node agent, no sidecar)", r->pod);
}

/* Reads the pod's shunt.io/ annotations into r; false (r->refuse set) on a bad one. */
static bool read_annotations(struct review *r, const cJSON *ann)
{
        const struct inject_config *c = r->cfg;
        r->ex_in = c->exclude_in;
        r->ex_out = c->exclude_out;
        r->ex_cidrs = c->exclude_cidrs;
        r->log_level = c->log_level;
        r->mtls_mode = c->mtls_mode;
        const cJSON *a;
        cJSON_ArrayForEach(a, ann)
        {
                const char *k = a->string;
                if (strncmp(k, "shunt.io/", 9))
                        continue;
                if (!cJSON_IsString(a)) {
                        refusef(r, "annotation %.64s: not a string", k);
                        return false;
                }
                const char *v = a->valuestring;
                char why[200];
                int rc = 0;
                if (!strcmp(k, A_EXCL_IN))
                        rc = inject_list_add_csv(&r->ex_in, v, false, why, sizeof(why));
                else if (!strcmp(k, A_EXCL_OUT))
                        rc = inject_list_add_csv(&r->ex_out, v, false, why, sizeof(why));
                else if (!strcmp(k, A_EXCL_CIDR))
                        rc = inject_list_add_csv(&r->ex_cidrs, v, true, why, sizeof(why));
                else if (!strcmp(k, A_MTLS) || !strcmp(k, A_LOG)) {
                        const char *const *names = !strcmp(k, A_MTLS) ? mtls_names : log_names;
                        if (inject_enum_index(names, v) < 0) {
                                char list[96];
                                inject_enum_list(names, list, sizeof(list));
                                snprintf(why, sizeof(why), "'%.47s' is not one of %s", v, list);
                                rc = -EINVAL;
                        } else if (names == mtls_names) {
                                r->mtls_mode = v;
                        } else {
                                r->log_level = v;
                        }
                } else if (!strcmp(k, A_CPU_REQ) || !strcmp(k, A_CPU_LIM) ||
                           !strcmp(k, A_MEM_REQ) || !strcmp(k, A_MEM_LIM)) {
                        if (!inject_valid_quantity(v)) {
                                snprintf(why, sizeof(why),
                                         "'%.47s' is not a quantity such as 100m or 128Mi", v);
                                rc = -EINVAL;
                        } else if (!strcmp(k, A_CPU_REQ)) {
                                r->cpu_req = v;
                        } else if (!strcmp(k, A_CPU_LIM)) {
                                r->cpu_lim = v;
                        } else if (!strcmp(k, A_MEM_REQ)) {
                                r->mem_req = v;
                        } else {
                                r->mem_lim = v;
                        }
                } else if (inject_enum_index(known_annotations, k) < 0) {
                        char msg[200];
                        snprintf(msg, sizeof(msg),
                                 "shunt: annotation %.64s is not one shunt reads (ignored)", k);
                        warn(r, msg);
                }
                if (rc) {
                        refusef(r, "annotation %.64s: %s", k, why);
                        return false;
                }
        }
        return true;
}

/* Decides for one Pod CREATE; sets r->patch, r->refuse or only r->note. */
static void review_pod(struct review *r, const cJSON *req)
{
        const cJSON *pod = cJSON_GetObjectItemCaseSensitive(req, "object");
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(pod, "metadata");
        const cJSON *spec = cJSON_GetObjectItemCaseSensitive(pod, "spec");
        if (!r->ns || !*r->ns)
                r->ns = str_of(meta, "namespace");
        const char *name = str_of(meta, "name");
        if (!name || !*name)
                name = str_of(req, "name");
        if (!name || !*name)
                name = str_of(meta, "generateName");
        snprintf(r->pod, sizeof(r->pod), "%.100s/%.200s", r->ns ? r->ns : "?",
                 name && *name ? name : "?");

        if (!cJSON_IsObject(pod)) {
                refusef(r, "request.object is not a Pod object");
                return;
        }
        if (meta && !cJSON_IsObject(meta)) {
                refusef(r, "metadata is not an object");
                return;
        }
        const cJSON *containers = cJSON_GetObjectItemCaseSensitive(spec, "containers");
        if (!cJSON_IsObject(spec) || !cJSON_IsArray(containers) ||
            cJSON_GetArraySize(containers) == 0) {
                refusef(r, "spec.containers is missing or empty");
                return;
        }
        const cJSON *inits = cJSON_GetObjectItemCaseSensitive(spec, "initContainers");
        if (inits && !cJSON_IsArray(inits)) {
                refusef(r, "spec.initContainers is not an array");
                return;
        }
        const cJSON *vols = cJSON_GetObjectItemCaseSensitive(spec, "volumes");
        if (vols && !cJSON_IsArray(vols)) {
                refusef(r, "spec.volumes is not an array");
                return;
        }
        const cJSON *ann = cJSON_GetObjectItemCaseSensitive(meta, "annotations");
        const cJSON *labels = cJSON_GetObjectItemCaseSensitive(meta, "labels");
        if ((ann && !cJSON_IsObject(ann)) || (labels && !cJSON_IsObject(labels))) {
                refusef(r, "metadata.annotations or metadata.labels is not an object");
                return;
        }
        const char *opt = str_of(ann, INJECT_OPTOUT);
        const char *opt_label = str_of(labels, INJECT_OPTOUT);
        if ((opt && !strcmp(opt, "false")) || (opt_label && !strcmp(opt_label, "false"))) {
                notef(r, "skipped %s: %s: \"false\"", r->pod, INJECT_OPTOUT);
                return;
        }
        if (has_container(containers, INJECT_PROXY_NAME) ||
            has_container(inits, INJECT_PROXY_NAME) || has_container(inits, INJECT_INIT_NAME)) {
                notef(r, "unchanged %s: already injected", r->pod);
                return;
        }
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(spec, "hostNetwork"))) {
                /* Capture would rewrite the node's own firewall. */
                warn(r, "shunt: pod uses hostNetwork: no sidecar injected");
                notef(r, "skipped %s: hostNetwork", r->pod);
                return;
        }
        const struct inject_config *c = r->cfg;
        if (node_namespace(c, r->ns)) {
                review_node_mode(r, meta, labels);
                return;
        }
        if (!read_annotations(r, ann))
                return;

        cJSON *patch = cJSON_CreateArray();
        if (!patch)
                return;
        const char *const meshed[][2] = {{INJECT_MESHED_LABEL, "true"}};
        add_map_entries(patch, meta, "labels", meshed, 1);

        /* Native sidecar: capture first, then the proxy, then the pod's own
         * init containers (whose traffic is then proxied too). Classic form:
         * the pod's init containers run before capture exists (no proxy
         * would answer them yet), capture last, the proxy first among the
         * containers, holding the others back until ready (postStart). */
        cJSON *new_inits = cJSON_CreateArray();
        if (!c->capture_from_node)
                cJSON_AddItemToArray(new_inits, make_init(r));
        if (c->native_sidecar) {
                cJSON_AddItemToArray(new_inits, make_proxy(r));
                add_all(patch, spec, "initContainers", new_inits, true);
        } else {
                if (cJSON_GetArraySize(new_inits))
                        add_all(patch, spec, "initContainers", new_inits, false);
                else
                        cJSON_Delete(new_inits);
                cJSON *k = cJSON_CreateArray();
                cJSON_AddItemToArray(k, make_proxy(r));
                add_all(patch, spec, "containers", k, true);
        }
        add_all(patch, spec, "volumes", make_volumes(r), false);
        add_scrape_annotations(r, patch, meta, ann, containers);
        if (c->capture_from_node) {
                char *settings = node_capture_settings(r);
                if (!settings) {
                        cJSON_Delete(patch);
                        return;
                }
                /* After the scrape annotations: the map exists by now when
                 * they created it. */
                const char *const kv[][2] = {{INJECT_NODE_CAPTURE_ANNOTATION, settings}};
                cJSON *m = cJSON_GetObjectItemCaseSensitive(meta, "annotations");
                bool created = !cJSON_IsObject(m) && c->metrics_port && c->scrape_annotations;
                if (created) {
                        char path[160], esc[128];
                        pointer_escape(INJECT_NODE_CAPTURE_ANNOTATION, esc, sizeof(esc));
                        snprintf(path, sizeof(path), "/metadata/annotations/%s", esc);
                        op_add(patch, path, cJSON_CreateString(settings));
                } else {
                        add_map_entries(patch, meta, "annotations", kv, 1);
                }
                free(settings);
        }
        r->patch = patch;
        notef(r, "injected %s (%s capture%s, %s sidecar)", r->pod, c->capture,
              c->capture_from_node ? " from the node" : "",
              c->native_sidecar ? "native" : "classic");
}

static int error_body(struct strbuf *out, const char *code, const char *msg)
{
        strbuf_reset(out);
        strbuf_append(out, "{\"error\":\"");
        strbuf_append(out, code);
        strbuf_append(out, "\",\"message\":");
        strbuf_append_json_string(out, msg);
        strbuf_append(out, "}");
        return out->truncated ? -ENOMEM : 0;
}

static int respond(struct review *r, struct strbuf *out)
{
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "apiVersion", "admission.k8s.io/v1");
        cJSON_AddStringToObject(root, "kind", "AdmissionReview");
        cJSON *resp = cJSON_AddObjectToObject(root, "response");
        cJSON_AddStringToObject(resp, "uid", r->uid);
        cJSON_AddBoolToObject(resp, "allowed", !r->refuse[0]);
        if (r->refuse[0]) {
                cJSON *st = cJSON_AddObjectToObject(resp, "status");
                cJSON_AddStringToObject(st, "status", "Failure");
                cJSON_AddNumberToObject(st, "code", 400);
                cJSON_AddStringToObject(st, "reason", "BadRequest");
                char msg[600];
                snprintf(msg, sizeof(msg), "shunt sidecar injection: %s", r->refuse);
                cJSON_AddStringToObject(st, "message", msg);
        } else if (r->patch) {
                char *text = cJSON_PrintUnformatted(r->patch);
                size_t tlen = text ? strlen(text) : 0;
                size_t blen = 0;
                char *b64 = NULL;
                if (text && EVP_EncodedLength(&blen, tlen))
                        b64 = malloc(blen);
                if (!b64) {
                        free(text);
                        cJSON_Delete(root);
                        return -ENOMEM;
                }
                EVP_EncodeBlock((uint8_t *)b64, (const uint8_t *)text, tlen);
                cJSON_AddStringToObject(resp, "patchType", "JSONPatch");
                cJSON_AddStringToObject(resp, "patch", b64);
                free(b64);
                free(text);
        }
        if (r->warnings) {
                cJSON_AddItemToObject(resp, "warnings", r->warnings);
                r->warnings = NULL;
        }
        char *text = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        if (!text)
                return -ENOMEM;
        strbuf_reset(out);
        strbuf_append(out, text);
        free(text);
        return out->truncated ? -ENOMEM : 0;
}

int inject_review(const struct inject_config *cfg, const char *body, size_t len, struct strbuf *out,
                  char *note, size_t notelen)
{
        char msg[300];
        if (note && notelen)
                note[0] = '\0';
        if (len > INJECT_MAX_REVIEW_BYTES) {
                snprintf(msg, sizeof(msg), "AdmissionReview of %zu bytes: the limit is %u bytes",
                         len, INJECT_MAX_REVIEW_BYTES);
                if (note && notelen)
                        snprintf(note, notelen, "refused: %s", msg);
                int rc = error_body(out, "too_large", msg);
                return rc ? rc : -EMSGSIZE;
        }
        cJSON *root = cJSON_ParseWithLength(body, len);
        const cJSON *req = cJSON_GetObjectItemCaseSensitive(root, "request");
        const char *api = str_of(root, "apiVersion");
        const char *kind = str_of(root, "kind");
        const char *uid = str_of(req, "uid");
        msg[0] = '\0';
        if (!root)
                snprintf(msg, sizeof(msg), "body is not JSON");
        else if (!kind || strcmp(kind, "AdmissionReview"))
                snprintf(msg, sizeof(msg), "kind is '%.40s', expected AdmissionReview",
                         kind ? kind : "(none)");
        else if (!api || strcmp(api, "admission.k8s.io/v1"))
                snprintf(msg, sizeof(msg),
                         "apiVersion is '%.40s': only admission.k8s.io/v1 is served "
                         "(admissionReviewVersions: [v1])",
                         api ? api : "(none)");
        else if (!cJSON_IsObject(req))
                snprintf(msg, sizeof(msg), "no request object");
        else if (!uid || !*uid || strlen(uid) > 128)
                snprintf(msg, sizeof(msg), "request.uid is missing or longer than 128 bytes");
        if (msg[0]) {
                cJSON_Delete(root);
                if (note && notelen)
                        snprintf(note, notelen, "bad request: %s", msg);
                int rc = error_body(out, "bad_request", msg);
                return rc ? rc : -EINVAL;
        }

        struct review r = {.cfg = cfg, .uid = uid};
        r.ns = str_of(req, "namespace");
        const cJSON *gvk = cJSON_GetObjectItemCaseSensitive(req, "kind");
        const char *g = str_of(gvk, "group"), *v = str_of(gvk, "version"), *k = str_of(gvk, "kind");
        const char *op = str_of(req, "operation");
        if (!g || *g || !v || strcmp(v, "v1") || !k || strcmp(k, "Pod"))
                notef(&r, "unchanged: request.kind is not a core v1 Pod");
        else if (!op || strcmp(op, "CREATE"))
                notef(&r, "unchanged: operation %.20s (only CREATE is injected)",
                      op ? op : "(none)");
        else
                review_pod(&r, req);

        int rc = respond(&r, out);
        if (note && notelen)
                snprintf(note, notelen, "%s", r.note);
        cJSON_Delete(r.patch);
        cJSON_Delete(r.warnings);
        cJSON_Delete(root);
        return rc;
}

int inject_http_status(int rc)
{
        switch (rc) {
        case 0:
                return 200;
        case -EINVAL:
                return 400;
        case -EMSGSIZE:
                return 413;
        default:
                return 500;
        }
}

// SPDX-License-Identifier: Apache-2.0
/* Credentials for the Kubernetes API (see k8s_creds.h): a kubeconfig (JSON,
 * or YAML through libyaml) or the in-cluster service account. */
#include "discovery/k8s_creds.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/base64.h>
#include <openssl/mem.h>
#ifdef SHUNT_HAVE_YAML
#include <yaml.h>
#endif

#include "core/curlloop.h"
#include "core/file.h"
#include "core/log.h"

#define COMP "discovery"

#define K8S_TOKEN_MAX       16384
#define K8S_KUBECONFIG_MAX  (4u << 20)
#define K8S_DEFAULT_SA_DIR  "/var/run/secrets/kubernetes.io/serviceaccount"
#define K8S_CREDS_ERROR_MAX 512

struct k8s_creds {
        pthread_mutex_t mu; /* the token and its file's identity */
        char mode[16];      /* "in-cluster" or "kubeconfig" */
        char origin[PATH_MAX];
        char server[512]; /* without a trailing '/' */
        char ca_path[PATH_MAX];
        char cert_path[PATH_MAX];
        char key_path[PATH_MAX];
        int mem_fds[3];
        bool insecure;
        char token[K8S_TOKEN_MAX];
        char token_file[PATH_MAX];
        bool token_seen;
        struct stat token_st;
};

/* Refreshes the bearer token from its file when the file changed (a
 * projected service-account token is rotated in place). */
/* Caller holds k->mu. */
static void token_refresh(struct k8s_creds *k)
{
        if (!k->token_file[0])
                return;
        struct stat st;
        if (stat(k->token_file, &st) < 0) {
                log_warn(COMP, 0, "kubernetes: token file %s: %s (keeping the last token)",
                         k->token_file, strerror(errno));
                return;
        }
        if (k->token_seen && st.st_ino == k->token_st.st_ino && st.st_dev == k->token_st.st_dev &&
            st.st_size == k->token_st.st_size && st.st_mtim.tv_sec == k->token_st.st_mtim.tv_sec &&
            st.st_mtim.tv_nsec == k->token_st.st_mtim.tv_nsec)
                return;
        char *buf;
        size_t len;
        char err[K8S_CREDS_ERROR_MAX];
        if (file_read(k->token_file, K8S_TOKEN_MAX - 1, &buf, &len, err, sizeof(err))) {
                log_warn(COMP, 0, "kubernetes: token: %s (keeping the last token)", err);
                return;
        }
        while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
                buf[--len] = '\0';
        memcpy(k->token, buf, len + 1);
        free(buf);
        if (k->token_seen)
                log_info(COMP, 0, "kubernetes: token file %s changed: re-read", k->token_file);
        k->token_seen = true;
        k->token_st = st;
}

/* Inline PEM data (base64 in a kubeconfig) into a memfd curl can read by path. */
static int data_to_path(struct k8s_creds *k, int slot, const char *b64, char *path, size_t pathlen,
                        const char *what, char *err, size_t errlen)
{
        size_t inlen = strlen(b64), max;
        if (!EVP_DecodedLength(&max, inlen)) {
                snprintf(err, errlen, "kubeconfig %s: %s: not base64", k->origin, what);
                return -EINVAL;
        }
        uint8_t *raw = malloc(max ? max : 1);
        size_t n = 0;
        if (!raw || !EVP_DecodeBase64(raw, &n, max, (const uint8_t *)b64, inlen)) {
                free(raw);
                snprintf(err, errlen, "kubeconfig %s: %s: not base64", k->origin, what);
                return -EINVAL;
        }
        int fd = memfd_create(what, MFD_CLOEXEC);
        if (fd < 0 || write(fd, raw, n) != (ssize_t)n) {
                snprintf(err, errlen, "kubeconfig %s: %s: memfd: %s", k->origin, what,
                         strerror(errno));
                free(raw);
                if (fd >= 0)
                        close(fd);
                return -EIO;
        }
        free(raw);
        k->mem_fds[slot] = fd;
        snprintf(path, pathlen, "/proc/self/fd/%d", fd);
        return 0;
}

/* ---- kubeconfig -------------------------------------------------------------- */

#ifdef SHUNT_HAVE_YAML
/* YAML (block or flow) -> cJSON, strings and booleans only: enough for a
 * kubeconfig. Anchors and aliases are refused. */
static cJSON *yaml_value(yaml_parser_t *p, yaml_event_t *ev, int depth, char *err, size_t errlen);

static cJSON *yaml_next(yaml_parser_t *p, int depth, char *err, size_t errlen, bool *end)
{
        yaml_event_t ev;
        if (!yaml_parser_parse(p, &ev)) {
                snprintf(err, errlen, "line %zu: %s", p->problem_mark.line + 1,
                         p->problem ? p->problem : "YAML error");
                return NULL;
        }
        if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
                *end = true;
                yaml_event_delete(&ev);
                return NULL;
        }
        cJSON *v = yaml_value(p, &ev, depth, err, errlen);
        yaml_event_delete(&ev);
        return v;
}

static cJSON *yaml_value(yaml_parser_t *p, yaml_event_t *ev, int depth, char *err, size_t errlen)
{
        if (depth > 64) {
                snprintf(err, errlen, "nested deeper than 64");
                return NULL;
        }
        if (ev->type == YAML_SCALAR_EVENT) {
                const char *s = (const char *)ev->data.scalar.value;
                if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                    (strcmp(s, "true") == 0 || strcmp(s, "false") == 0))
                        return cJSON_CreateBool(s[0] == 't');
                return cJSON_CreateString(s);
        }
        bool map = ev->type == YAML_MAPPING_START_EVENT;
        if (!map && ev->type != YAML_SEQUENCE_START_EVENT) {
                snprintf(err, errlen, "line %zu: unsupported YAML (anchors, aliases, tags)",
                         ev->start_mark.line + 1);
                return NULL;
        }
        cJSON *out = map ? cJSON_CreateObject() : cJSON_CreateArray();
        for (;;) {
                bool end = false;
                cJSON *key = yaml_next(p, depth + 1, err, errlen, &end);
                if (end)
                        return out;
                if (!key) {
                        cJSON_Delete(out);
                        return NULL;
                }
                if (!map) {
                        cJSON_AddItemToArray(out, key);
                        continue;
                }
                if (!cJSON_IsString(key)) {
                        cJSON_Delete(key);
                        cJSON_Delete(out);
                        snprintf(err, errlen, "a mapping key is not a string");
                        return NULL;
                }
                cJSON *val = yaml_next(p, depth + 1, err, errlen, &end);
                if (!val) {
                        cJSON_Delete(key);
                        cJSON_Delete(out);
                        if (end)
                                snprintf(err, errlen, "mapping key without a value");
                        return NULL;
                }
                cJSON_AddItemToObject(out, key->valuestring, val);
                cJSON_Delete(key);
        }
}

static cJSON *parse_yaml(const char *text, size_t len, char *err, size_t errlen)
{
        yaml_parser_t p;
        if (!yaml_parser_initialize(&p)) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
        cJSON *root = NULL;
        for (;;) {
                yaml_event_t ev;
                if (!yaml_parser_parse(&p, &ev)) {
                        snprintf(err, errlen, "line %zu: %s", p.problem_mark.line + 1,
                                 p.problem ? p.problem : "YAML error");
                        break;
                }
                yaml_event_type_t t = ev.type;
                if (t == YAML_MAPPING_START_EVENT && !root) {
                        root = yaml_value(&p, &ev, 0, err, errlen);
                        yaml_event_delete(&ev);
                        if (!root)
                                break;
                        continue;
                }
                yaml_event_delete(&ev);
                if (t == YAML_STREAM_END_EVENT) {
                        if (!root)
                                snprintf(err, errlen, "no mapping at the top level");
                        break;
                }
        }
        yaml_parser_delete(&p);
        return root;
}
#endif

static const cJSON *named(const cJSON *list, const char *name, const char *inner)
{
        const cJSON *it;
        cJSON_ArrayForEach(it, (cJSON_IsArray(list) ? list : NULL))
        {
                const cJSON *n = cJSON_GetObjectItemCaseSensitive(it, "name");
                if (cJSON_IsString(n) && strcmp(n->valuestring, name) == 0)
                        return cJSON_GetObjectItemCaseSensitive(it, inner);
        }
        return NULL;
}

static const char *kstr(const cJSON *o, const char *key)
{
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(x) && x->valuestring[0] ? x->valuestring : NULL;
}

/* A path from the kubeconfig, relative to the kubeconfig's directory. */
static int kpath(const struct k8s_creds *k, const char *p, char *out, size_t outlen)
{
        int n;
        if (p[0] == '/') {
                n = snprintf(out, outlen, "%s", p);
        } else {
                const char *slash = strrchr(k->origin, '/');
                n = snprintf(out, outlen, "%.*s%s", slash ? (int)(slash - k->origin + 1) : 0,
                             k->origin, p);
        }
        return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

static int load_kubeconfig(struct k8s_creds *k, const char *path, char *err, size_t errlen)
{
        snprintf(k->mode, sizeof(k->mode), "kubeconfig");
        snprintf(k->origin, sizeof(k->origin), "%s", path);
        char *text;
        size_t len;
        char msg[K8S_CREDS_ERROR_MAX];
        if (file_read(path, K8S_KUBECONFIG_MAX, &text, &len, msg, sizeof(msg))) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s", msg);
                return -EINVAL;
        }
        size_t i = 0;
        while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r'))
                i++;
        cJSON *root = NULL;
        if (i < len && text[i] == '{') {
                root = cJSON_ParseWithLength(text, len);
                if (!root)
                        snprintf(msg, sizeof(msg), "invalid JSON");
        } else {
#ifdef SHUNT_HAVE_YAML
                root = parse_yaml(text, len, msg, sizeof(msg));
#else
                snprintf(msg, sizeof(msg),
                         "YAML kubeconfigs need a build with libyaml; this build reads the JSON "
                         "form (kubectl config view --raw -o json)");
#endif
        }
        free(text);
        if (!root) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s: %s", path, msg);
                return -EINVAL;
        }
        int rc = -EINVAL;
        const char *cur = kstr(root, "current-context");
        const cJSON *ctx =
            cur ? named(cJSON_GetObjectItemCaseSensitive(root, "contexts"), cur, "context") : NULL;
        const char *cname = ctx ? kstr(ctx, "cluster") : NULL;
        const char *uname = ctx ? kstr(ctx, "user") : NULL;
        const cJSON *cl =
            cname ? named(cJSON_GetObjectItemCaseSensitive(root, "clusters"), cname, "cluster")
                  : NULL;
        const cJSON *us =
            uname ? named(cJSON_GetObjectItemCaseSensitive(root, "users"), uname, "user") : NULL;
        const char *server = cl ? kstr(cl, "server") : NULL;
        if (!cur || !ctx) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s: current-context %s%s", path,
                         cur ? cur : "", cur ? " not found in contexts" : "is not set");
                goto out;
        }
        if (!cl || !server) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s: cluster '%s' has no server", path,
                         cname ? cname : "");
                goto out;
        }
        if (strncmp(server, "https://", 8) != 0 && strncmp(server, "http://", 7) != 0) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s: server '%.200s' is not an URL",
                         path, server);
                goto out;
        }
        if (strlen(server) >= sizeof(k->server)) {
                snprintf(err, errlen, "kubernetes: kubeconfig %s: server URL too long", path);
                goto out;
        }
        snprintf(k->server, sizeof(k->server), "%s", server);
        const cJSON *insec = cJSON_GetObjectItemCaseSensitive(cl, "insecure-skip-tls-verify");
        k->insecure = cJSON_IsTrue(insec) ||
                      (cJSON_IsString(insec) && strcmp(insec->valuestring, "true") == 0);
        const char *s;
        if ((s = kstr(cl, "certificate-authority-data"))) {
                if (data_to_path(k, 0, s, k->ca_path, sizeof(k->ca_path), "k8s-ca", err, errlen))
                        goto out;
        } else if ((s = kstr(cl, "certificate-authority"))) {
                if (kpath(k, s, k->ca_path, sizeof(k->ca_path))) {
                        snprintf(err, errlen, "kubernetes: kubeconfig %s: path too long", path);
                        goto out;
                }
        }
        if (us) {
                if ((s = kstr(us, "client-certificate-data"))) {
                        if (data_to_path(k, 1, s, k->cert_path, sizeof(k->cert_path),
                                         "k8s-client-cert", err, errlen))
                                goto out;
                } else if ((s = kstr(us, "client-certificate"))) {
                        kpath(k, s, k->cert_path, sizeof(k->cert_path));
                }
                if ((s = kstr(us, "client-key-data"))) {
                        if (data_to_path(k, 2, s, k->key_path, sizeof(k->key_path),
                                         "k8s-client-key", err, errlen))
                                goto out;
                } else if ((s = kstr(us, "client-key"))) {
                        kpath(k, s, k->key_path, sizeof(k->key_path));
                }
                if ((s = kstr(us, "token"))) {
                        if (strlen(s) >= sizeof(k->token)) {
                                snprintf(err, errlen, "kubernetes: kubeconfig %s: token too long",
                                         path);
                                goto out;
                        }
                        snprintf(k->token, sizeof(k->token), "%s", s);
                } else if ((s = kstr(us, "tokenFile"))) {
                        kpath(k, s, k->token_file, sizeof(k->token_file));
                }
                if (cJSON_GetObjectItemCaseSensitive(us, "exec") ||
                    cJSON_GetObjectItemCaseSensitive(us, "auth-provider"))
                        log_warn(COMP, 0,
                                 "kubernetes: kubeconfig %s: user '%s': exec and auth-provider "
                                 "credentials are not supported",
                                 path, uname);
        }
        if ((k->cert_path[0] != 0) != (k->key_path[0] != 0)) {
                snprintf(err, errlen,
                         "kubernetes: kubeconfig %s: user '%s': client certificate and key must "
                         "be given together",
                         path, uname ? uname : "");
                goto out;
        }
        rc = 0;
out:
        cJSON_Delete(root);
        return rc;
}

static const char *sa_dir(void)
{
        const char *dir = getenv("SHUNT_K8S_SERVICEACCOUNT_DIR");
        return dir && *dir ? dir : K8S_DEFAULT_SA_DIR;
}

int k8s_pod_namespace(char *out, size_t len)
{
        char path[PATH_MAX], err[PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/namespace", sa_dir());
        char *buf;
        size_t n;
        if (file_read(path, 256, &buf, &n, err, sizeof(err)) < 0)
                return -ENOENT;
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
                buf[--n] = '\0';
        int rc =
            n && n < len && strspn(buf, "abcdefghijklmnopqrstuvwxyz0123456789-") == n ? 0 : -EINVAL;
        if (rc == 0)
                memcpy(out, buf, n + 1);
        free(buf);
        return rc;
}

static int load_in_cluster(struct k8s_creds *k, char *err, size_t errlen)
{
        const char *host = getenv("KUBERNETES_SERVICE_HOST");
        const char *port = getenv("KUBERNETES_SERVICE_PORT");
        const char *dir = sa_dir();
        snprintf(k->mode, sizeof(k->mode), "in-cluster");
        snprintf(k->origin, sizeof(k->origin), "%s", dir);
        if (!port || !*port)
                port = "443";
        int n = snprintf(k->server, sizeof(k->server),
                         strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port);
        if (n < 0 || (size_t)n >= sizeof(k->server) ||
            snprintf(k->token_file, sizeof(k->token_file), "%s/token", dir) >=
                (int)sizeof(k->token_file) ||
            snprintf(k->ca_path, sizeof(k->ca_path), "%s/ca.crt", dir) >= (int)sizeof(k->ca_path)) {
                snprintf(err, errlen, "kubernetes: in-cluster: host or directory too long");
                return -EINVAL;
        }
        if (access(k->token_file, R_OK) < 0 || access(k->ca_path, R_OK) < 0) {
                snprintf(err, errlen, "kubernetes: in-cluster credentials: %s/token or ca.crt: %s",
                         dir, strerror(errno));
                return -EINVAL;
        }
        return 0;
}

int k8s_creds_load(const char *kubeconfig, struct k8s_creds **out, char *err, size_t errlen)
{
        struct k8s_creds *k = calloc(1, sizeof(*k));
        if (!k) {
                snprintf(err, errlen, "kubernetes: out of memory");
                return -ENOMEM;
        }
        pthread_mutex_init(&k->mu, NULL);
        for (int i = 0; i < 3; i++)
                k->mem_fds[i] = -1;
        int rc;
        if (kubeconfig && *kubeconfig) {
                rc = load_kubeconfig(k, kubeconfig, err, errlen);
        } else if (getenv("KUBERNETES_SERVICE_HOST") && *getenv("KUBERNETES_SERVICE_HOST")) {
                rc = load_in_cluster(k, err, errlen);
        } else {
                snprintf(
                    err, errlen,
                    "kubernetes: no kubeconfig given and KUBERNETES_SERVICE_HOST is not in the "
                    "environment (not in a cluster)");
                rc = -ENOENT;
        }
        if (rc == 0) {
                size_t n = strlen(k->server);
                while (n && k->server[n - 1] == '/')
                        k->server[--n] = '\0';
                pthread_mutex_lock(&k->mu);
                token_refresh(k);
                pthread_mutex_unlock(&k->mu);
        }
        if (rc) {
                k8s_creds_free(k);
                return rc;
        }
        *out = k;
        return 0;
}

void k8s_creds_free(struct k8s_creds *k)
{
        if (!k)
                return;
        for (int i = 0; i < 3; i++) {
                if (k->mem_fds[i] >= 0)
                        close(k->mem_fds[i]);
        }
        OPENSSL_cleanse(k->token, sizeof(k->token));
        pthread_mutex_destroy(&k->mu);
        free(k);
}

const char *k8s_creds_mode(const struct k8s_creds *k)
{
        return k->mode;
}

const char *k8s_creds_origin(const struct k8s_creds *k)
{
        return k->origin;
}

const char *k8s_creds_server(const struct k8s_creds *k)
{
        return k->server;
}

int k8s_creds_apply(struct k8s_creds *k, CURL *e, struct curl_slist **hdrs)
{
        int rc = 0;
        pthread_mutex_lock(&k->mu);
        token_refresh(k);
        if (k->token[0]) {
                size_t n = strlen(k->token) + 32;
                char *auth = malloc(n);
                struct curl_slist *h = NULL;
                if (auth) {
                        snprintf(auth, n, "Authorization: Bearer %s", k->token);
                        h = curl_slist_append(*hdrs, auth);
                        OPENSSL_cleanse(auth, n);
                        free(auth);
                }
                if (h)
                        *hdrs = h;
                else
                        rc = -ENOMEM;
        }
        pthread_mutex_unlock(&k->mu);
        if (k->ca_path[0]) /* the cluster's CA only, as kubectl */
                curl_trust_only(e, k->ca_path);
        if (k->cert_path[0]) {
                curl_easy_setopt(e, CURLOPT_SSLCERT, k->cert_path);
                curl_easy_setopt(e, CURLOPT_SSLKEY, k->key_path);
        }
        if (k->insecure) {
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
        }
        return rc;
}

// SPDX-License-Identifier: Apache-2.0
/* Delegated issuance: a node agent (node-mode shuntd, one per node) asks for
 * the certificate of a pod's identity on the pod's behalf. The agent proves
 * who it is with its own pod-bound token; which node it runs on comes from
 * that token (the node name kube-apiserver signs into tokens from 1.30) or,
 * on older clusters, from the agent's own Pod object; and it is entitled to
 * an identity only while a pod with that service account is scheduled on
 * that same node. A compromised node therefore holds the identities of its
 * own pods, which it could read from their memory anyway, and no other.
 *
 * The checks on the API server's answers are pure functions (unit-tested and
 * fuzzed); every field is re-checked here whatever the query selected, so a
 * selector the server ignored cannot widen what is allowed. */
#include "ca/ca-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* ---- names and the request ----------------------------------------------------------- */

static bool alnum(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* RFC 1123: labels of [a-z0-9-] that start and end alphanumeric, joined by
 * dots (no dots at all when max is the label bound). */
bool ca_k8s_name_valid(const char *s, size_t max)
{
        size_t len = s ? strlen(s) : 0;
        if (len == 0 || len > max)
                return false;
        bool dots = max > CA_K8S_NS_MAX;
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                bool edge = i == 0 || i == len - 1 || s[i - 1] == '.' || s[i + 1] == '.';
                if (c == '.' ? !dots || edge : edge ? !alnum(c) : !(alnum(c) || c == '-'))
                        return false;
        }
        return true;
}

static const char *str_item(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

int ca_node_target_parse(const struct cJSON *obj, struct ca_node_target *t, char *msg,
                         size_t msglen)
{
        memset(t, 0, sizeof(*t));
        if (!cJSON_IsObject(obj)) {
                snprintf(
                    msg, msglen,
                    "\"for\" must be an object {\"namespace\", \"service_account\"[, \"pod\"[, "
                    "\"pod_uid\"]]}");
                return -EINVAL;
        }
        const cJSON *it;
        cJSON_ArrayForEach(it, obj)
        {
                const char *k = it->string;
                if (strcmp(k, "namespace") != 0 && strcmp(k, "service_account") != 0 &&
                    strcmp(k, "pod") != 0 && strcmp(k, "pod_uid") != 0) {
                        snprintf(msg, msglen, "\"for\" has an unknown field \"%.64s\"", k);
                        return -EINVAL;
                }
                if (!cJSON_IsString(it)) {
                        snprintf(msg, msglen, "\"for\".%s must be a string", k);
                        return -EINVAL;
                }
        }
        const char *ns = str_item(obj, "namespace"), *sa = str_item(obj, "service_account");
        const char *pod = str_item(obj, "pod"), *uid = str_item(obj, "pod_uid");
        if (!ca_k8s_name_valid(ns, CA_K8S_NS_MAX)) {
                snprintf(msg, msglen, "\"for\".namespace must be a Kubernetes namespace name");
                return -EINVAL;
        }
        if (!ca_k8s_name_valid(sa, CA_K8S_NAME_MAX)) {
                snprintf(msg, msglen,
                         "\"for\".service_account must be a Kubernetes service account name");
                return -EINVAL;
        }
        if (pod && !ca_k8s_name_valid(pod, CA_K8S_NAME_MAX)) {
                snprintf(msg, msglen, "\"for\".pod must be a Kubernetes pod name");
                return -EINVAL;
        }
        if (uid && (!pod || !*uid || strlen(uid) > CA_K8S_UID_MAX)) {
                snprintf(msg, msglen, "\"for\".pod_uid needs \"pod\" and at most %d characters",
                         CA_K8S_UID_MAX);
                return -EINVAL;
        }
        snprintf(t->ns, sizeof(t->ns), "%s", ns);
        snprintf(t->sa, sizeof(t->sa), "%s", sa);
        snprintf(t->pod, sizeof(t->pod), "%s", pod ? pod : "");
        snprintf(t->pod_uid, sizeof(t->pod_uid), "%s", uid ? uid : "");
        return 0;
}

bool ca_node_is_agent(const char *const *agents, size_t n, const struct ca_tr_identity *who)
{
        size_t nl = strlen(who->ns);
        for (size_t i = 0; i < n; i++) {
                const char *a = agents[i];
                if (strncmp(a, who->ns, nl) == 0 && a[nl] == '/' &&
                    strcmp(a + nl + 1, who->sa) == 0)
                        return true;
        }
        return false;
}

/* ---- the API server's answers ------------------------------------------------------------ */

static const char *path_str(const cJSON *o, const char *a, const char *b)
{
        return str_item(cJSON_GetObjectItemCaseSensitive(o, a), b);
}

static bool eq(const char *have, const char *want)
{
        return have && strcmp(have, want) == 0;
}

enum ca_node_result ca_node_of_agent(const char *pod_json, size_t len,
                                     const struct ca_tr_identity *who,
                                     char node[CA_K8S_NAME_MAX + 1], char *msg, size_t msglen)
{
        node[0] = '\0';
        cJSON *pod = cJSON_ParseWithLength(pod_json, len);
        enum ca_node_result r = CA_NODE_DENIED;
        const char *uid = path_str(pod, "metadata", "uid");
        const char *nn = path_str(pod, "spec", "nodeName");
        if (!eq(str_item(pod, "kind"), "Pod") || !uid) {
                snprintf(msg, msglen, "the API server's answer for pod %s/%s is not a Pod", who->ns,
                         who->pod_name);
                r = CA_NODE_UNAVAILABLE;
        } else if (!eq(path_str(pod, "metadata", "namespace"), who->ns) ||
                   !eq(path_str(pod, "metadata", "name"), who->pod_name) ||
                   strcmp(uid, who->pod_uid) != 0) {
                snprintf(msg, msglen,
                         "the node agent's token is bound to pod %s/%s uid %.64s, which no longer "
                         "exists (that name is now uid %.64s)",
                         who->ns, who->pod_name, who->pod_uid, uid);
        } else if (!eq(path_str(pod, "spec", "serviceAccountName"), who->sa)) {
                snprintf(msg, msglen, "the node agent's pod %s/%s does not run as %s", who->ns,
                         who->pod_name, who->sa);
        } else if (!ca_k8s_name_valid(nn, CA_K8S_NAME_MAX)) {
                snprintf(msg, msglen, "the node agent's pod %s/%s is not scheduled on a node",
                         who->ns, who->pod_name);
        } else {
                snprintf(node, CA_K8S_NAME_MAX + 1, "%s", nn);
                r = CA_NODE_OK;
        }
        cJSON_Delete(pod);
        return r;
}

/* Why pod is not one that entitles the agent on node to t, or NULL when it
 * is: a static phrase for the refusal message. */
static const char *mismatch(const cJSON *pod, const struct ca_node_target *t, const char *node)
{
        const char *phase = path_str(pod, "status", "phase");
        if (!eq(path_str(pod, "metadata", "namespace"), t->ns))
                return "is in another namespace";
        if (t->pod[0] && !eq(path_str(pod, "metadata", "name"), t->pod))
                return "has another name";
        if (t->pod_uid[0] && !eq(path_str(pod, "metadata", "uid"), t->pod_uid))
                return "has another uid (the named pod was replaced)";
        if (!eq(path_str(pod, "spec", "serviceAccountName"), t->sa))
                return "runs as another service account";
        if (!eq(path_str(pod, "spec", "nodeName"), node))
                return "is not scheduled on the agent's node";
        /* a pod that ended needs no certificate any more */
        if (!eq(phase, "Running") && !eq(phase, "Pending"))
                return "is neither Pending nor Running";
        return NULL;
}

enum ca_node_result ca_node_match(const char *json, size_t len, const struct ca_node_target *t,
                                  const char *node, char pod[CA_K8S_NAME_MAX + 1], char *msg,
                                  size_t msglen)
{
        pod[0] = '\0';
        cJSON *root = cJSON_ParseWithLength(json, len);
        const char *kind = str_item(root, "kind");
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(root, "items");
        enum ca_node_result r = CA_NODE_DENIED;
        const char *why = NULL;
        if (eq(kind, "Pod") && t->pod[0]) {
                why = mismatch(root, t, node);
                if (!why) {
                        snprintf(pod, CA_K8S_NAME_MAX + 1, "%s", t->pod);
                        r = CA_NODE_OK;
                }
        } else if (eq(kind, "PodList") && !t->pod[0] && cJSON_IsArray(items)) {
                const cJSON *it;
                cJSON_ArrayForEach(it, items)
                {
                        const char *name = path_str(it, "metadata", "name");
                        if (ca_k8s_name_valid(name, CA_K8S_NAME_MAX) && !mismatch(it, t, node)) {
                                snprintf(pod, CA_K8S_NAME_MAX + 1, "%s", name);
                                r = CA_NODE_OK;
                                break;
                        }
                }
        } else {
                r = CA_NODE_UNAVAILABLE;
                snprintf(msg, msglen, "the API server's answer is not a %s",
                         t->pod[0] ? "Pod" : "PodList");
        }
        if (r == CA_NODE_DENIED && why)
                snprintf(msg, msglen, "pod %s/%s %s (node agent on node %s, for %s/%s)", t->ns,
                         t->pod, why, node, t->ns, t->sa);
        else if (r == CA_NODE_DENIED)
                snprintf(msg, msglen,
                         "no Pending or Running pod of service account %s/%s is scheduled on node "
                         "%s",
                         t->ns, t->sa, node);
        cJSON_Delete(root);
        return r;
}

/* ---- asking the API server ------------------------------------------------------------------ */

/* A GET whose answer is an object of kind (200), or the refusal it implies:
 * 404 is CA_NODE_DENIED (msg gone_msg), anything else CA_NODE_UNAVAILABLE. */
static enum ca_node_result get(const struct ca_node_lookup *l, const char *path, size_t max,
                               struct ca_kube_answer *a, const char *gone_msg, char *msg,
                               size_t msglen)
{
        if (ca_kube_call(l->creds, path, NULL, 0, l->timeout_ms, max, a, msg, msglen) < 0)
                return CA_NODE_UNAVAILABLE;
        if (a->status == 200)
                return CA_NODE_OK;
        if (a->status == 404) {
                snprintf(msg, msglen, "%s", gone_msg);
                return CA_NODE_DENIED;
        }
        if (a->status == 401 || a->status == 403)
                snprintf(msg, msglen,
                         "the API server refused shunt-ca's own credentials for GET %.300s (HTTP "
                         "%ld): it needs get and list on pods",
                         path, a->status);
        else
                snprintf(msg, msglen, "GET %.300s answered HTTP %ld", path, a->status);
        return CA_NODE_UNAVAILABLE;
}

enum ca_node_result ca_node_agent_node(const struct ca_node_lookup *l,
                                       const struct ca_tr_identity *who,
                                       char node[CA_K8S_NAME_MAX + 1], char *msg, size_t msglen)
{
        node[0] = '\0';
        if (!who->pod_name[0]) {
                snprintf(msg, msglen,
                         "the node agent's token is not bound to a pod (use a projected "
                         "service-account token): its node cannot be known");
                return CA_NODE_DENIED;
        }
        if (who->node_name[0]) {
                snprintf(node, CA_K8S_NAME_MAX + 1, "%s", who->node_name);
                return CA_NODE_OK;
        }
        char path[1024], gone[1024];
        snprintf(path, sizeof(path), "/api/v1/namespaces/%s/pods/%s", who->ns, who->pod_name);
        snprintf(gone, sizeof(gone),
                 "the node agent's token is bound to pod %s/%s, which no "
                 "longer exists",
                 who->ns, who->pod_name);
        struct ca_kube_answer a;
        enum ca_node_result r = get(l, path, CA_NODE_MAX_POD, &a, gone, msg, msglen);
        if (r == CA_NODE_OK)
                r = ca_node_of_agent(a.body ? a.body : "", a.len, who, node, msg, msglen);
        free(a.body);
        return r;
}

enum ca_node_result ca_node_check(const struct ca_node_lookup *l, const struct ca_node_target *t,
                                  const char *node, char pod[CA_K8S_NAME_MAX + 1], char *msg,
                                  size_t msglen)
{
        pod[0] = '\0';
        char path[1024], gone[1024];
        size_t max = CA_NODE_MAX_POD;
        if (t->pod[0]) {
                snprintf(path, sizeof(path), "/api/v1/namespaces/%s/pods/%s", t->ns, t->pod);
                snprintf(gone, sizeof(gone), "no pod %s/%s", t->ns, t->pod);
        } else {
                /* the names are [a-z0-9.-]: only the selector's own syntax is escaped */
                snprintf(path, sizeof(path),
                         "/api/v1/namespaces/%s/pods?fieldSelector=spec.nodeName%%3D%s"
                         "%%2Cspec.serviceAccountName%%3D%s%%2Cstatus.phase%%21%%3DSucceeded"
                         "%%2Cstatus.phase%%21%%3DFailed",
                         t->ns, node, t->sa);
                snprintf(gone, sizeof(gone), "no namespace %s", t->ns);
                max = CA_NODE_MAX_PODLIST;
        }
        struct ca_kube_answer a;
        enum ca_node_result r = get(l, path, max, &a, gone, msg, msglen);
        if (r == CA_NODE_OK)
                r = ca_node_match(a.body ? a.body : "", a.len, t, node, pod, msg, msglen);
        free(a.body);
        return r;
}

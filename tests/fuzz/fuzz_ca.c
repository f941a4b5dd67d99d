// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for shunt-ca's parsers of peer input (ca/ca.h, ca/ca-int.h).
 *
 * The first byte modulo 4 picks the parser, the rest is its input:
 *  - 0: a TokenReview answer (ca_tr_classify): the result is one of the
 *    five, a refusal always says why, and an accepted token always names a
 *    namespace and service account that make a valid mesh SPIFFE ID, and a
 *    pod and node (if any) that are valid Kubernetes names;
 *  - 1: a CSR (ca_csr_sign with a fixed identity): 0 with a certificate
 *    that carries exactly that identity as its only SAN, is not a CA and has
 *    the CA as issuer; or -EINVAL csr_invalid / -EPERM csr_mismatch with a
 *    message; never anything else;
 *  - 2: a PodList for delegated issuance (ca_node_match, any pod of
 *    web/frontend on node-a): entitled only if the answer really holds such
 *    a Running or Pending pod (checked here independently), refusals say why;
 *  - 3: the node agent's own Pod (ca_node_of_agent): a node only when the
 *    answer is the token's pod (name, namespace, uid) and names one. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/x509v3.h>

#include "ca/ca-int.h"
#include "core/log.h"

#define ID "spiffe://cluster.local/ns/web/sa/frontend"

static void die(const char *what)
{
        fprintf(stderr, "fuzz_ca: %s\n", what);
        abort();
}

static struct tls_ca *g_ca;
static char g_dir[] = "/tmp/shunt-fuzz-ca-XXXXXX";

static void cleanup(void)
{
        char cmd[128];
        tls_ca_free(g_ca);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
        if (system(cmd) != 0)
                fprintf(stderr, "fuzz_ca: cannot remove %s\n", g_dir);
}

static struct tls_ca *ca(void)
{
        if (g_ca)
                return g_ca;
        log_set_level(LOG_ERROR);
        if (!mkdtemp(g_dir))
                die("mkdtemp");
        struct tls_ca_options o = {.state_dir = g_dir, .trust_domain = "cluster.local"};
        if (tls_ca_open(&o, &g_ca) < 0)
                die("tls_ca_open");
        atexit(cleanup);
        return g_ca;
}

static void tokenreview(const char *data, size_t len)
{
        struct ca_tr_identity id;
        memset(&id, 0x5a, sizeof(id));
        char msg[256] = "";
        enum ca_tr_result r = ca_tr_classify(data, len, "shunt-ca", &id, msg, sizeof(msg));
        if (r > CA_TR_UNAVAILABLE)
                die("result out of range");
        if (r != CA_TR_OK) {
                if (!msg[0])
                        die("a refusal without a reason");
                return;
        }
        if (memchr(id.ns, 0, sizeof(id.ns)) == NULL || memchr(id.sa, 0, sizeof(id.sa)) == NULL ||
            memchr(id.pod_name, 0, sizeof(id.pod_name)) == NULL ||
            memchr(id.node_name, 0, sizeof(id.node_name)) == NULL)
                die("identity not terminated");
        struct spiffe_id sid;
        if (spiffe_id_build("cluster.local", id.ns, id.sa, &sid) < 0)
                die("accepted a token whose names make no SPIFFE ID");
        if ((id.pod_name[0] && !ca_k8s_name_valid(id.pod_name, CA_K8S_NAME_MAX)) ||
            (id.node_name[0] && !ca_k8s_name_valid(id.node_name, CA_K8S_NAME_MAX)) ||
            (id.pod_name[0] && !id.pod_uid[0]) || (!id.pod_name[0] && id.pod_uid[0]))
                die("a pod or node name from the token that is not a Kubernetes name");
}

static void csr(const char *data, size_t len)
{
        X509 *leaf = NULL;
        const char *reason = NULL;
        char msg[256] = "";
        time_t now = time(NULL);
        int rc = ca_csr_sign(ca(), data, len, ID, now - 60, now + 3600, &leaf, &reason, msg,
                             sizeof(msg));
        if (rc == -EINVAL || rc == -EPERM) {
                if (leaf || !reason || !msg[0] ||
                    strcmp(reason, rc == -EPERM ? "csr_mismatch" : "csr_invalid") != 0)
                        die("a refusal without its reason");
                return;
        }
        if (rc != 0 || !leaf)
                die("unexpected result");
        char uri[SPIFFE_ID_MAX + 1];
        if (tls_cert_spiffe_uri(leaf, uri, sizeof(uri), NULL) < 0 || strcmp(uri, ID) != 0)
                die("signed a certificate without exactly the identity");
        GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
        if (!names || sk_GENERAL_NAME_num(names) != 1)
                die("signed a certificate with other names");
        GENERAL_NAMES_free(names);
        if (X509_check_ca(leaf) != 0)
                die("signed a CA certificate");
        if (X509_check_issued(tls_ca_cert(ca()), leaf) != X509_V_OK)
                die("not issued by the CA");
        X509_free(leaf);
}

static const char *str_at(const cJSON *o, const char *a, const char *b)
{
        const cJSON *v =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b);
        return cJSON_IsString(v) ? v->valuestring : "";
}

/* Independently of node.c: whether the PodList holds a pod that entitles
 * an agent on node-a to web/frontend. */
static bool has_entitling_pod(const char *data, size_t len)
{
        cJSON *root = cJSON_ParseWithLength(data, len);
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(root, "items");
        const cJSON *list = cJSON_IsArray(items) ? items : NULL;
        bool found = false;
        const cJSON *it;
        cJSON_ArrayForEach(it, list)
        {
                const char *phase = str_at(it, "status", "phase");
                found =
                    found || (strcmp(str_at(it, "metadata", "namespace"), "web") == 0 &&
                              strcmp(str_at(it, "spec", "serviceAccountName"), "frontend") == 0 &&
                              strcmp(str_at(it, "spec", "nodeName"), "node-a") == 0 &&
                              (strcmp(phase, "Running") == 0 || strcmp(phase, "Pending") == 0));
        }
        cJSON_Delete(root);
        return found;
}

static void podlist(const char *data, size_t len)
{
        struct ca_node_target t = {.ns = "web", .sa = "frontend"};
        char pod[CA_K8S_NAME_MAX + 1], msg[512] = "";
        enum ca_node_result r = ca_node_match(data, len, &t, "node-a", pod, msg, sizeof(msg));
        if (r > CA_NODE_UNAVAILABLE)
                die("result out of range");
        if (r != CA_NODE_OK) {
                if (!msg[0] || pod[0])
                        die("a refusal without a reason, or with a pod");
                return;
        }
        if (!has_entitling_pod(data, len) || !pod[0])
                die("entitled without a Running or Pending web/frontend pod on node-a");
}

static void agent_pod(const char *data, size_t len)
{
        struct ca_tr_identity who = {
            .ns = "shunt-system", .sa = "shunt-node", .pod_name = "agent-1", .pod_uid = "u-1"};
        char node[CA_K8S_NAME_MAX + 1], msg[512] = "";
        enum ca_node_result r = ca_node_of_agent(data, len, &who, node, msg, sizeof(msg));
        if (r > CA_NODE_UNAVAILABLE)
                die("result out of range");
        if (r != CA_NODE_OK) {
                if (!msg[0] || node[0])
                        die("a refusal without a reason, or with a node");
                return;
        }
        cJSON *pod = cJSON_ParseWithLength(data, len);
        bool ok = strcmp(str_at(pod, "metadata", "uid"), "u-1") == 0 &&
                  strcmp(str_at(pod, "metadata", "name"), "agent-1") == 0 &&
                  strcmp(str_at(pod, "metadata", "namespace"), "shunt-system") == 0 &&
                  strcmp(str_at(pod, "spec", "nodeName"), node) == 0;
        cJSON_Delete(pod);
        if (!ok || !ca_k8s_name_valid(node, CA_K8S_NAME_MAX))
                die("a node from a pod that is not the token's");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        const char *in = (const char *)data + 1;
        switch (data[0] % 4) {
        case 0:
                tokenreview(in, size - 1);
                break;
        case 1:
                csr(in, size - 1);
                break;
        case 2:
                podlist(in, size - 1);
                break;
        default:
                agent_pod(in, size - 1);
        }
        return 0;
}

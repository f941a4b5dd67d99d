// SPDX-License-Identifier: Apache-2.0
/* Sidecar injection (userspace/inject): the inject config's checks, the
 * JSONPatch operations for pods of every shape, idempotence, opt-out, the
 * per-pod annotations, malformed requests and the size bound. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <openssl/base64.h>

#include "inject/inject-int.h"

static struct inject_config *config(const char *json)
{
        struct inject_config *c = NULL;
        char err[512];
        int rc = inject_config_parse(json, strlen(json), &c, err, sizeof(err));
        if (rc)
                fail_msg("config %s: %s", json, err);
        return c;
}

static void config_error(const char *json, const char *want)
{
        struct inject_config *c = NULL;
        char err[512] = "";
        assert_int_equal(inject_config_parse(json, strlen(json), &c, err, sizeof(err)), -EINVAL);
        assert_null(c);
        if (!strstr(err, want))
                fail_msg("config %s: error '%s' lacks '%s'", json, err, want);
}

static void test_config_checks(void **state)
{
        struct inject_config *c = config("{}");
        assert_string_equal(c->capture, "iptables");
        assert_true(c->native_sidecar);
        assert_int_equal(c->proxy_uid, 1337);
        assert_string_equal(c->audience, "shunt-ca");
        assert_string_equal(c->bundle_configmap, "shunt-ca-bundle");
        inject_config_free(c);

        c = config("{\"capture\":\"ebpf\",\"native_sidecar\":false,\"mtls_mode\":\"\","
                   "\"exclude_inbound_ports\":[22,8080,22],\"exclude_outbound_cidrs\":"
                   "[\"10.0.0.0/8\",\"fd00::/8\"],\"proxy_resources\":{\"limits\":{\"cpu\":"
                   "\"1\",\"memory\":\"1.5Gi\"}}}");
        assert_int_equal(c->exclude_in.n, 2); /* the duplicate dropped */
        assert_string_equal(c->exclude_in.item[1], "8080");
        assert_int_equal(c->exclude_cidrs.n, 2);
        assert_false(c->native_sidecar);
        inject_config_free(c);

        config_error("[]", "not a JSON object");
        config_error("{\"imagee\":\"x\"}", "unknown key 'imagee'");
        config_error("{\"capture\":\"nft\"}", "capture: 'nft' is not one of iptables, ebpf, auto");
        config_error("{\"image\":\"\"}", "image: must not be empty");
        config_error("{\"image\":7}", "image: expected a string");
        config_error("{\"proxy_uid\":0}", "proxy_uid: expected an integer 1..");
        config_error("{\"proxy_uid\":13.5}", "proxy_uid: expected an integer");
        config_error("{\"token_expiration_seconds\":60}", "token_expiration_seconds");
        config_error("{\"native_sidecar\":\"yes\"}", "expected true or false");
        config_error("{\"proxy_resources\":{\"limits\":{\"gpu\":\"1\"}}}", "unknown resource");
        config_error("{\"proxy_resources\":{\"requests\":{\"cpu\":\"lots\"}}}",
                     "proxy_resources.requests.cpu: expected a quantity");
        config_error("{\"init_resources\":{\"max\":{}}}", "init_resources.max: unknown key");
        config_error("{\"exclude_outbound_ports\":[0]}", "'0' is not a port 1..65535");
        config_error("{\"exclude_outbound_ports\":[\"80\"]}", "must be a port number");
        config_error("{\"exclude_outbound_cidrs\":[\"10.0.0.0/40\"]}", "is not a CIDR");
        config_error("{\"log_level\":\"trace\"}", "log_level");
}

static void test_config_file(void **state)
{
        struct inject_config *c = (void *)1;
        char err[512];
        assert_int_equal(inject_config_load("/nonexistent/inject.json", &c, err, sizeof(err)),
                         -ENOENT);
        assert_null(c);
        assert_non_null(strstr(err, "/nonexistent/inject.json"));

        char path[] = "/tmp/test_inject.XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "{\"image\":\"shunt:1\",\n \"bad\":1}", 29), 29);
        assert_int_equal(inject_config_load(path, &c, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "unknown key 'bad'"));
        assert_non_null(strstr(err, path));
        /* Larger than the bound: refused before parsing. */
        assert_int_equal(ftruncate(fd, INJECT_MAX_CONFIG_BYTES + 1), 0);
        assert_int_equal(inject_config_load(path, &c, err, sizeof(err)), -EFBIG);
        close(fd);
        unlink(path);
}

static void test_quantities(void **state)
{
        const char *good[] = {"1", "100m", "0.5", ".5", "128Mi", "1Gi", "2e3", "1E-2", "+1", "5k"};
        const char *bad[] = {"", "m", "1GB", "1 Gi", "-1", "1.2.3", "Mi", "1e", "0x10", "1mm"};
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
                assert_true(inject_valid_quantity(good[i]));
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (inject_valid_quantity(bad[i]))
                        fail_msg("'%s' accepted as a quantity", bad[i]);
}

/* ---- reviews ----------------------------------------------------------------------- */

struct answer {
        int rc;
        char note[700];
        cJSON *body;  /* the whole answer */
        cJSON *patch; /* decoded, or NULL */
};

static void answer_free(struct answer *a)
{
        cJSON_Delete(a->body);
        cJSON_Delete(a->patch);
}

static struct answer ask(const struct inject_config *c, const char *review)
{
        struct answer a = {0};
        struct strbuf out;
        strbuf_init(&out);
        a.rc = inject_review(c, review, strlen(review), &out, a.note, sizeof(a.note));
        a.body = cJSON_Parse(out.data);
        assert_non_null(a.body);
        strbuf_free(&out);
        const cJSON *resp = cJSON_GetObjectItem(a.body, "response");
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(resp, "patch"));
        if (p) {
                assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(resp, "patchType")),
                                    "JSONPatch");
                size_t max = 0, n = 0;
                assert_true(EVP_DecodedLength(&max, strlen(p)));
                uint8_t *buf = malloc(max + 1);
                assert_true(EVP_DecodeBase64(buf, &n, max, (const uint8_t *)p, strlen(p)));
                buf[n] = '\0';
                a.patch = cJSON_Parse((char *)buf);
                free(buf);
                assert_true(cJSON_IsArray(a.patch));
        }
        return a;
}

static char *review_for(const char *pod_json, const char *op)
{
        static char buf[16384];
        snprintf(buf, sizeof(buf),
                 "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\","
                 "\"request\":{\"uid\":\"0df28fbd-5f5f-11e8-9c2d-fa7ae01bbebc\",\"kind\":"
                 "{\"group\":\"\",\"version\":\"v1\",\"kind\":\"Pod\"},\"resource\":{\"group\":"
                 "\"\",\"version\":\"v1\",\"resource\":\"pods\"},\"namespace\":\"demo\","
                 "\"operation\":\"%s\",\"object\":%s}}",
                 op, pod_json);
        return buf;
}

static const cJSON *response(const struct answer *a)
{
        return cJSON_GetObjectItem(a->body, "response");
}

static bool allowed(const struct answer *a)
{
        return cJSON_IsTrue(cJSON_GetObjectItem(response(a), "allowed"));
}

static const cJSON *op_at(const struct answer *a, int i, const char *path)
{
        const cJSON *op = cJSON_GetArrayItem(a->patch, i);
        assert_non_null(op);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(op, "op")), "add");
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(op, "path"));
        if (strcmp(p, path))
                fail_msg("op %d: path %s, expected %s", i, p, path);
        return cJSON_GetObjectItem(op, "value");
}

static const char *name_of(const cJSON *k)
{
        return cJSON_GetStringValue(cJSON_GetObjectItem(k, "name"));
}

static void test_native_sidecar_patch(void **state)
{
        struct inject_config *c = config("{\"image\":\"shunt:0.1\",\"ca_address\":"
                                         "\"https://shunt-ca.mesh.svc:15012\"}");
        /* No labels, no init containers, no volumes: whole arrays added. */
        struct answer a = ask(c, review_for("{\"metadata\":{\"generateName\":\"web-\"},\"spec\":"
                                            "{\"containers\":[{\"name\":\"web\"}]}}",
                                            "CREATE"));
        assert_int_equal(a.rc, 0);
        assert_true(allowed(&a));
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(response(&a), "uid")),
                            "0df28fbd-5f5f-11e8-9c2d-fa7ae01bbebc");
        assert_int_equal(cJSON_GetArraySize(a.patch), 4);
        const cJSON *labels = op_at(&a, 0, "/metadata/labels");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(labels, "shunt.io/meshed")),
                            "true");
        const cJSON *inits = op_at(&a, 1, "/spec/initContainers");
        assert_int_equal(cJSON_GetArraySize(inits), 2);
        assert_string_equal(name_of(cJSON_GetArrayItem(inits, 0)), "shunt-init");
        const cJSON *proxy = cJSON_GetArrayItem(inits, 1);
        assert_string_equal(name_of(proxy), "shunt-proxy");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(proxy, "restartPolicy")),
                            "Always");
        assert_non_null(cJSON_GetObjectItem(proxy, "startupProbe"));
        const cJSON *sc = cJSON_GetObjectItem(proxy, "securityContext");
        assert_int_equal(cJSON_GetObjectItem(sc, "runAsUser")->valueint, 1337);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItem(sc, "readOnlyRootFilesystem")));
        assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(sc, "capabilities"), "add"));
        const cJSON *vols = op_at(&a, 2, "/spec/volumes");
        assert_int_equal(cJSON_GetArraySize(vols), 6);
        /* The metrics listener: declared, and announced to scrapers. */
        char *ports = cJSON_PrintUnformatted(cJSON_GetObjectItem(proxy, "ports"));
        assert_string_equal(
            ports, "[{\"name\":\"shunt-metrics\",\"containerPort\":15020,\"protocol\":\"TCP\"}]");
        free(ports);
        char *ann = cJSON_PrintUnformatted(op_at(&a, 3, "/metadata/annotations"));
        assert_string_equal(ann, "{\"prometheus.io/scrape\":\"true\",\"prometheus.io/port\":"
                                 "\"15020\",\"prometheus.io/path\":\"/metrics\"}");
        free(ann);
        char *text = cJSON_PrintUnformatted(a.patch);
        /* Both containers: the init container's capture leaves the port alone. */
        const char *mp = "{\"name\":\"SHUNT_ADMIN_METRICS_PORT\",\"value\":\"15020\"}";
        assert_non_null(strstr(text, mp));
        assert_non_null(strstr(strstr(text, mp) + 1, mp));
        /* The pod's labels for AuthorizationPolicy selectors, where the
         * proxy looks by default (authorization.pod_labels_file). */
        assert_non_null(strstr(text, "{\"path\":\"labels\",\"fieldRef\":{\"apiVersion\":\"v1\","
                                     "\"fieldPath\":\"metadata.labels\"}}"));
        assert_non_null(strstr(text, "{\"name\":\"shunt-podinfo\",\"mountPath\":"
                                     "\"/etc/shunt/podinfo\",\"readOnly\":true}"));
        assert_non_null(strstr(text, "\"audience\":\"shunt-ca\""));
        assert_non_null(strstr(text, "{\"name\":\"SHUNT_CA_ADDRESS\","
                                     "\"value\":\"https://shunt-ca.mesh.svc:15012\"}"));
        assert_null(strstr(text, "hostPath"));
        free(text);
        assert_string_equal(a.note, "injected demo/web- (iptables capture, native sidecar)");
        answer_free(&a);

        /* Existing labels, init containers and volumes: entries added in place. */
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"labels\":{\"app\":\"x\"}},"
                              "\"spec\":{\"initContainers\":[{\"name\":\"migrate\"}],"
                              "\"containers\":[{\"name\":\"web\"}],\"volumes\":[{\"name\":"
                              "\"data\",\"emptyDir\":{}}]}}",
                              "CREATE"));
        assert_int_equal(cJSON_GetArraySize(a.patch), 10);
        assert_string_equal(cJSON_GetStringValue(op_at(&a, 0, "/metadata/labels/shunt.io~1meshed")),
                            "true");
        assert_string_equal(name_of(op_at(&a, 1, "/spec/initContainers/0")), "shunt-init");
        assert_string_equal(name_of(op_at(&a, 2, "/spec/initContainers/1")), "shunt-proxy");
        for (int i = 3; i < 9; i++)
                op_at(&a, i, "/spec/volumes/-");
        op_at(&a, 9, "/metadata/annotations");
        answer_free(&a);
        inject_config_free(c);
}

static void test_classic_sidecar_and_ebpf(void **state)
{
        struct inject_config *c = config("{\"native_sidecar\":false,\"capture\":\"ebpf\"}");
        struct answer a = ask(c, review_for("{\"metadata\":{\"name\":\"p\"},\"spec\":"
                                            "{\"initContainers\":[{\"name\":\"migrate\"}],"
                                            "\"containers\":[{\"name\":\"web\"}]}}",
                                            "CREATE"));
        assert_true(allowed(&a));
        /* The pod's own init containers run before capture exists. */
        assert_string_equal(name_of(op_at(&a, 1, "/spec/initContainers/-")), "shunt-init");
        const cJSON *proxy = op_at(&a, 2, "/spec/containers/0");
        assert_string_equal(name_of(proxy), "shunt-proxy");
        assert_null(cJSON_GetObjectItem(proxy, "restartPolicy"));
        const cJSON *ps = cJSON_GetObjectItem(cJSON_GetObjectItem(proxy, "lifecycle"), "postStart");
        char *cmd = cJSON_PrintUnformatted(ps);
        assert_string_equal(cmd, "{\"exec\":{\"command\":[\"/usr/bin/shuntctl\",\"ready\","
                                 "\"120\"]}}");
        free(cmd);
        char *text = cJSON_PrintUnformatted(a.patch);
        assert_non_null(strstr(text, "[\"NET_ADMIN\",\"NET_RAW\",\"BPF\",\"PERFMON\"]"));
        assert_non_null(strstr(text, "\"path\":\"/sys/fs/bpf\""));
        assert_non_null(strstr(text, "/sys/fs/bpf/shunt/$(SHUNT_POD_UID)"));
        /* The init container finds the pod's cgroup in the node's tree. */
        const char *cg = "{\"name\":\"SHUNT_REDIRECT_CGROUP\",\"value\":\"pod\"},{\"name\":"
                         "\"SHUNT_CGROUP_ROOT\",\"value\":\"/host/sys/fs/cgroup\"}";
        const char *at = strstr(text, cg);
        assert_non_null(at);
        assert_null(strstr(at + strlen(cg), "SHUNT_REDIRECT_CGROUP")); /* not the proxy's */
        free(text);
        answer_free(&a);
        inject_config_free(c);
}

static void test_left_alone(void **state)
{
        struct inject_config *c = config("{}");
        struct {
                const char *pod, *op, *note;
        } cases[] = {
            {"{\"metadata\":{\"name\":\"p\",\"annotations\":{\"shunt.io/inject\":\"false\"}},"
             "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
             "CREATE", "skipped demo/p: shunt.io/inject: \"false\""},
            {"{\"metadata\":{\"name\":\"p\",\"labels\":{\"shunt.io/inject\":\"false\"}},"
             "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
             "CREATE", "skipped demo/p: shunt.io/inject: \"false\""},
            {"{\"metadata\":{\"name\":\"p\"},\"spec\":{\"initContainers\":[{\"name\":"
             "\"shunt-init\"},{\"name\":\"shunt-proxy\"}],\"containers\":[{\"name\":\"a\"}]}}",
             "CREATE", "unchanged demo/p: already injected"},
            {"{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"shunt-proxy\"},"
             "{\"name\":\"a\"}]}}",
             "CREATE", "unchanged demo/p: already injected"},
            {"{\"metadata\":{\"name\":\"p\"},\"spec\":{\"hostNetwork\":true,\"containers\":"
             "[{\"name\":\"a\"}]}}",
             "CREATE", "skipped demo/p: hostNetwork"},
            {"{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
             "UPDATE", "unchanged: operation UPDATE (only CREATE is injected)"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct answer a = ask(c, review_for(cases[i].pod, cases[i].op));
                assert_int_equal(a.rc, 0);
                assert_true(allowed(&a));
                assert_null(a.patch);
                assert_string_equal(a.note, cases[i].note);
                answer_free(&a);
        }
        inject_config_free(c);
}

static void test_annotations(void **state)
{
        struct inject_config *c = config("{\"exclude_outbound_ports\":[53]}");
        struct answer a =
            ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{"
                              "\"shunt.io/exclude-outbound-ports\":\" 5432 ,53,6379\","
                              "\"shunt.io/exclude-inbound-ports\":\"\","
                              "\"shunt.io/mtls-mode\":\"strict\",\"shunt.io/log-level\":\"debug\","
                              "\"shunt.io/proxy-memory-request\":\"96Mi\",\"other.io/x\":\"1\"}},"
                              "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
                              "CREATE"));
        assert_true(allowed(&a));
        assert_null(cJSON_GetObjectItem(response(&a), "warnings"));
        char *text = cJSON_PrintUnformatted(a.patch);
        assert_non_null(strstr(text, "{\"name\":\"SHUNT_EXCLUDE_OUTBOUND_PORTS\","
                                     "\"value\":\"53,5432,6379\"}"));
        assert_null(strstr(text, "SHUNT_EXCLUDE_INBOUND_PORTS"));
        assert_non_null(strstr(text, "{\"name\":\"MTLS_MODE\",\"value\":\"strict\"}"));
        assert_non_null(strstr(text, "{\"name\":\"SHUNT_LOG_LEVEL\",\"value\":\"debug\"}"));
        assert_non_null(strstr(text, "\"resources\":{\"requests\":{\"memory\":\"96Mi\"}}"));
        free(text);
        answer_free(&a);

        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{"
                              "\"shunt.io/exclude-outbound-cidrs\":\"10.0.0.0/8,,fd00::/8\"}},"
                              "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
                              "CREATE"));
        assert_false(allowed(&a));
        assert_null(a.patch);
        const cJSON *st = cJSON_GetObjectItem(response(&a), "status");
        assert_int_equal(cJSON_GetObjectItem(st, "code")->valueint, 400);
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(st, "message")),
                            "shunt sidecar injection: annotation shunt.io/exclude-outbound-cidrs: "
                            "'' is not a CIDR such as 10.0.0.0/8 or fd00::/8");
        answer_free(&a);
        inject_config_free(c);
}

/* The metrics port: the pod's own prometheus.io/ annotations are kept, a
 * container on the same port is warned about, and the chart can turn the
 * annotations or the listener off. */
static void test_metrics_port(void **state)
{
        struct inject_config *c = config("{}");
        struct answer a =
            ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{\"prometheus.io/"
                              "scrape\":\"true\"}},\"spec\":{\"containers\":[{\"name\":\"a\","
                              "\"ports\":[{\"containerPort\":15020}]}]}}",
                              "CREATE"));
        assert_true(allowed(&a));
        char *text = cJSON_PrintUnformatted(a.patch);
        assert_null(strstr(text, "prometheus.io"));
        free(text);
        char *w = cJSON_PrintUnformatted(cJSON_GetObjectItem(response(&a), "warnings"));
        assert_string_equal(w, "[\"shunt: container a declares port 15020, which the proxy's "
                               "metrics listener takes\"]");
        free(w);
        answer_free(&a);

        /* Annotations of other kinds: the three are added one by one. */
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{\"a\":\"b\"}},"
                              "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
                              "CREATE"));
        int n = cJSON_GetArraySize(a.patch);
        assert_string_equal(
            cJSON_GetStringValue(op_at(&a, n - 3, "/metadata/annotations/prometheus.io~1scrape")),
            "true");
        assert_string_equal(
            cJSON_GetStringValue(op_at(&a, n - 2, "/metadata/annotations/prometheus.io~1port")),
            "15020");
        assert_string_equal(
            cJSON_GetStringValue(op_at(&a, n - 1, "/metadata/annotations/prometheus.io~1path")),
            "/metrics");
        answer_free(&a);
        inject_config_free(c);

        const char *pod = "{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":[{\"name\":"
                          "\"a\"}]}}";
        c = config("{\"metrics_port\":9464,\"scrape_annotations\":false}");
        a = ask(c, review_for(pod, "CREATE"));
        text = cJSON_PrintUnformatted(a.patch);
        assert_non_null(strstr(text, "\"containerPort\":9464"));
        assert_non_null(strstr(text, "{\"name\":\"SHUNT_ADMIN_METRICS_PORT\",\"value\":\"9464\"}"));
        assert_null(strstr(text, "prometheus.io"));
        free(text);
        answer_free(&a);
        inject_config_free(c);

        c = config("{\"metrics_port\":0}");
        a = ask(c, review_for(pod, "CREATE"));
        text = cJSON_PrintUnformatted(a.patch);
        assert_null(strstr(text, "\"ports\""));
        assert_null(strstr(text, "prometheus.io"));
        assert_non_null(
            strstr(text, "{\"name\":\"SHUNT_ADMIN_METRICS_ADDRESS\",\"value\":\"off\"}"));
        free(text);
        answer_free(&a);
        inject_config_free(c);

        config_error("{\"metrics_port\":70000}", "metrics_port: expected an integer 0..65535");
        config_error("{\"scrape_annotations\":\"yes\"}",
                     "scrape_annotations: expected true or false");
}

static void test_bad_requests(void **state)
{
        struct inject_config *c = config("{}");
        struct {
                const char *body, *msg;
        } cases[] = {
            {"", "body is not JSON"},
            {"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",",
             "body is not JSON"},
            {"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\","
             "\"request\":{\"uid\":\"u\"}}",
             "apiVersion is 'admission.k8s.io/v1beta1': only admission.k8s.io/v1 is served"},
            {"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
             "no request object"},
            {"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\","
             "\"request\":{\"uid\":null}}",
             "request.uid is missing"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct answer a = ask(c, cases[i].body);
                assert_int_equal(a.rc, -EINVAL);
                assert_int_equal(inject_http_status(a.rc), 400);
                assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(a.body, "error")),
                                    "bad_request");
                const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(a.body, "message"));
                if (!strstr(m, cases[i].msg))
                        fail_msg("'%s': message '%s' lacks '%s'", cases[i].body, m, cases[i].msg);
                answer_free(&a);
        }

        /* The bound: checked before parsing anything. */
        struct strbuf out;
        strbuf_init(&out);
        char note[200];
        assert_int_equal(
            inject_review(c, "{}", INJECT_MAX_REVIEW_BYTES + 1, &out, note, sizeof(note)),
            -EMSGSIZE);
        assert_int_equal(inject_http_status(-EMSGSIZE), 413);
        assert_non_null(strstr(out.data, "\"error\":\"too_large\""));
        strbuf_free(&out);
        inject_config_free(c);
}
/* Node mode: a namespace the node agent serves gets the meshed label and
 * nothing else; other namespaces are injected as before. */
static void test_node_mode_namespaces(void **state)
{
        config_error("{\"node_namespaces\":\"demo\"}", "expected an array of namespace names");
        config_error("{\"node_namespaces\":[\"Demo\"]}", "namespace name or \"*\"");
        config_error("{\"node_namespaces\":[\"\"]}", "namespace name");
        config_error("{\"capture_from\":\"kubelet\"}", "'kubelet' is not one of pod, node");
        config_error("{\"capture_from\":\"node\",\"capture\":\"ebpf\"}",
                     "capture_from node needs capture iptables (not 'ebpf')");

        struct inject_config *c = config("{\"node_namespaces\":[\"shop\",\"demo\"]}");
        const char *pod = "{\"metadata\":{\"name\":\"p\",\"labels\":{\"app\":\"x\"}},"
                          "\"spec\":{\"containers\":[{\"name\":\"web\"}]}}";
        struct answer a = ask(c, review_for(pod, "CREATE")); /* namespace demo */
        assert_true(allowed(&a));
        assert_int_equal(cJSON_GetArraySize(a.patch), 1);
        assert_string_equal(cJSON_GetStringValue(op_at(&a, 0, "/metadata/labels/shunt.io~1meshed")),
                            "true");
        assert_string_equal(a.note, "labelled demo/p: node mode (served by the node agent, no "
                                    "sidecar)");
        answer_free(&a);
        /* Labelled already: no patch. */
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"labels\":{\"shunt.io/meshed\":"
                              "\"true\"}},\"spec\":{\"containers\":[{\"name\":\"web\"}]}}",
                              "CREATE"));
        assert_true(allowed(&a));
        assert_null(a.patch);
        assert_null(cJSON_GetObjectItem(response(&a), "patch"));
        answer_free(&a);
        /* Opt-out and host network still win. */
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{\"shunt.io/inject\":"
                              "\"false\"}},\"spec\":{\"containers\":[{\"name\":\"web\"}]}}",
                              "CREATE"));
        assert_null(a.patch);
        answer_free(&a);
        inject_config_free(c);

        /* Another namespace: a sidecar as usual. */
        c = config("{\"node_namespaces\":[\"shop\"]}");
        a = ask(c, review_for(pod, "CREATE"));
        assert_string_equal(name_of(op_at(&a, 1, "/spec/initContainers")->child), "shunt-init");
        answer_free(&a);
        inject_config_free(c);
        /* "*": every namespace. */
        c = config("{\"node_namespaces\":[\"*\"]}");
        a = ask(c, review_for(pod, "CREATE"));
        assert_int_equal(cJSON_GetArraySize(a.patch), 1);
        answer_free(&a);
        inject_config_free(c);
}

/* capture_from node: no init container (nothing that needs a capability),
 * the capture's settings in the annotation, the proxy as usual. */
static void test_capture_from_node(void **state)
{
        struct inject_config *c =
            config("{\"capture_from\":\"node\",\"exclude_inbound_ports\":[9100]}");
        struct answer a = ask(c, review_for("{\"metadata\":{\"name\":\"p\",\"annotations\":{"
                                            "\"shunt.io/exclude-outbound-cidrs\":\"10.96.0.0/"
                                            "12\"}},\"spec\":{\"containers\":[{\"name\":"
                                            "\"web\"}]}}",
                                            "CREATE"));
        assert_true(allowed(&a));
        const cJSON *inits = op_at(&a, 1, "/spec/initContainers");
        assert_int_equal(cJSON_GetArraySize(inits), 1);
        assert_string_equal(name_of(cJSON_GetArrayItem(inits, 0)), "shunt-proxy");
        char *text = cJSON_PrintUnformatted(a.patch);
        assert_null(strstr(text, "NET_ADMIN"));
        assert_null(strstr(text, "shunt-init"));
        assert_null(strstr(text, "\"add\":["));
        free(text);
        const cJSON *vols = op_at(&a, 2, "/spec/volumes");
        assert_int_equal(cJSON_GetArraySize(vols), 5); /* no shunt-init-run */
        /* the pod had annotations: one add each, the settings last */
        op_at(&a, 3, "/metadata/annotations/prometheus.io~1scrape");
        const cJSON *nc = op_at(&a, 6, "/metadata/annotations/shunt.io~1node-capture");
        assert_string_equal(
            cJSON_GetStringValue(nc),
            "{\"SHUNT_REDIRECT\":\"iptables\",\"SHUNT_PROXY_UID\":\"1337\","
            "\"SHUNT_ADMIN_METRICS_PORT\":\"15020\",\"SHUNT_EXCLUDE_INBOUND_PORTS\":"
            "\"9100\",\"SHUNT_EXCLUDE_OUTBOUND_CIDRS\":\"10.96.0.0/12\"}");
        assert_string_equal(a.note,
                            "injected demo/p (iptables capture from the node, native sidecar)");
        answer_free(&a);
        /* No annotations on the pod: the scrape annotations create the map,
         * the settings are added to it. */
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":"
                              "[{\"name\":\"web\"}]}}",
                              "CREATE"));
        op_at(&a, 3, "/metadata/annotations");
        op_at(&a, 4, "/metadata/annotations/shunt.io~1node-capture");
        answer_free(&a);
        inject_config_free(c);
        /* Classic sidecar, no metrics: no init container at all, the map made
         * by the settings. */
        c = config("{\"capture_from\":\"node\",\"native_sidecar\":false,\"metrics_port\":0}");
        a = ask(c, review_for("{\"metadata\":{\"name\":\"p\"},\"spec\":{\"containers\":"
                              "[{\"name\":\"web\"}]}}",
                              "CREATE"));
        assert_string_equal(name_of(op_at(&a, 1, "/spec/containers/0")), "shunt-proxy");
        op_at(&a, 2, "/spec/volumes");
        const cJSON *ann = op_at(&a, cJSON_GetArraySize(a.patch) - 1, "/metadata/annotations");
        assert_non_null(
            strstr(cJSON_GetStringValue(cJSON_GetObjectItem(ann, "shunt.io/node-capture")),
                   "\"SHUNT_ADMIN_METRICS_ADDRESS\":\"off\""));
        text = cJSON_PrintUnformatted(a.patch);
        assert_null(strstr(text, "initContainers"));
        free(text);
        answer_free(&a);
        inject_config_free(c);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_config_checks),
            cmocka_unit_test(test_config_file),
            cmocka_unit_test(test_quantities),
            cmocka_unit_test(test_native_sidecar_patch),
            cmocka_unit_test(test_classic_sidecar_and_ebpf),
            cmocka_unit_test(test_left_alone),
            cmocka_unit_test(test_annotations),
            cmocka_unit_test(test_metrics_port),
            cmocka_unit_test(test_bad_requests),
            cmocka_unit_test(test_node_mode_namespaces),
            cmocka_unit_test(test_capture_from_node),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

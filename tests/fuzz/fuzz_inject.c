// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for the sidecar-injection webhook (inject/inject.h).
 *
 * The input is an AdmissionReview body, answered with two inject configs
 * (native sidecar with iptables capture, classic with eBPF). Whatever the
 * bytes, the answer is well formed:
 *  - 0 with an AdmissionReview v1 response echoing request.uid, allowed
 *    true or false; a refusal carries status code 400 and a message and no
 *    patch; a patch is base64 of a JSON array of "add" operations, each
 *    with an absolute path and a value, and comes with patchType JSONPatch;
 *  - or -EINVAL with {"error":"bad_request","message":...};
 *  - never anything else; the log note is always set. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/base64.h>

#include "inject/inject.h"

static void die(const char *what)
{
        fprintf(stderr, "fuzz_inject: %s\n", what);
        abort();
}

static struct inject_config *g_cfg[2];

static void cleanup(void)
{
        inject_config_free(g_cfg[0]);
        inject_config_free(g_cfg[1]);
}

static void setup(void)
{
        static const char *const cfgs[2] = {
            "{\"image\":\"shunt:fuzz\",\"ca_address\":\"https://shunt-ca.shunt-system.svc:15012\","
            "\"exclude_outbound_cidrs\":[\"169.254.169.254/32\"],\"proxy_resources\":"
            "{\"requests\":{\"cpu\":\"50m\"},\"limits\":{\"memory\":\"256Mi\"}}}",
            "{\"capture\":\"ebpf\",\"native_sidecar\":false,\"exclude_inbound_ports\":[22]}"};
        char err[512];
        for (int i = 0; i < 2; i++)
                if (inject_config_parse(cfgs[i], strlen(cfgs[i]), &g_cfg[i], err, sizeof(err)))
                        die(err);
        atexit(cleanup);
}

static const char *str(const cJSON *o, const char *k)
{
        return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k));
}

static void check_patch(const char *b64)
{
        size_t max = 0, n = 0, len = strlen(b64);
        if (!EVP_DecodedLength(&max, len))
                die("patch: not base64");
        uint8_t *buf = malloc(max + 1);
        if (!buf || !EVP_DecodeBase64(buf, &n, max, (const uint8_t *)b64, len))
                die("patch: not base64");
        cJSON *ops = cJSON_ParseWithLength((const char *)buf, n);
        free(buf);
        if (!cJSON_IsArray(ops) || cJSON_GetArraySize(ops) == 0)
                die("patch: not a non-empty JSON array");
        const cJSON *op;
        cJSON_ArrayForEach(op, ops)
        {
                const char *kind = str(op, "op"), *path = str(op, "path");
                if (!kind || strcmp(kind, "add") || !path || path[0] != '/' ||
                    !cJSON_GetObjectItemCaseSensitive(op, "value"))
                        die("patch: an operation is not an add with a path and a value");
        }
        cJSON_Delete(ops);
}

static void answer(const struct inject_config *cfg, const char *data, size_t size)
{
        struct strbuf out;
        strbuf_init(&out);
        char note[700];
        memset(note, 'x', sizeof(note));
        int rc = inject_review(cfg, data, size, &out, note, sizeof(note));
        if (!memchr(note, '\0', sizeof(note)) || !note[0])
                die("note unset or unterminated");
        cJSON *a = cJSON_ParseWithLength(out.data ? out.data : "", out.len);
        if (!a)
                die("answer is not JSON");
        if (rc == -EINVAL) {
                const char *e = str(a, "error");
                if (!e || strcmp(e, "bad_request") || !str(a, "message"))
                        die("bad request without its error body");
        } else if (rc == 0) {
                const cJSON *r = cJSON_GetObjectItemCaseSensitive(a, "response");
                cJSON *req = cJSON_ParseWithLength(data, size);
                const char *uid = str(cJSON_GetObjectItemCaseSensitive(req, "request"), "uid");
                if (!str(a, "apiVersion") || strcmp(str(a, "apiVersion"), "admission.k8s.io/v1") ||
                    !str(a, "kind") || strcmp(str(a, "kind"), "AdmissionReview"))
                        die("response is not an AdmissionReview v1");
                if (!uid || !str(r, "uid") || strcmp(uid, str(r, "uid")))
                        die("response uid is not the request's");
                const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(r, "allowed");
                const char *patch = str(r, "patch");
                if (!cJSON_IsBool(allowed))
                        die("allowed is not a boolean");
                if (cJSON_IsFalse(allowed)) {
                        const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "status");
                        if (patch || !str(st, "message") ||
                            cJSON_GetObjectItemCaseSensitive(st, "code")->valueint != 400)
                                die("a refusal without code 400 and a message, or with a patch");
                }
                if (patch) {
                        const char *pt = str(r, "patchType");
                        if (!pt || strcmp(pt, "JSONPatch"))
                                die("patch without patchType JSONPatch");
                        check_patch(patch);
                }
                cJSON_Delete(req);
        } else {
                die("unexpected return code");
        }
        cJSON_Delete(a);
        strbuf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (!g_cfg[0])
                setup();
        answer(g_cfg[0], (const char *)data, size);
        answer(g_cfg[1], (const char *)data, size);
        return 0;
}

// SPDX-License-Identifier: Apache-2.0
/* TokenReview (authentication.k8s.io/v1) over libcurl: a TokenReview object
 * with spec.token and spec.audiences goes in, the same object with a status
 * comes back (201 Created). The API server says why a token is refused only
 * in status.error (free text, e.g. "[invalid bearer token, token audiences
 * [\"x\"] is invalid for the target audiences [\"shunt-ca\"]]"), so the
 * reason is read from that text; an authenticated answer is still checked
 * for our audience in status.audiences and a service-account user name.
 * The pod a bound token belongs to (and, from Kubernetes 1.30, its node) is
 * read from status.user.extra for delegated issuance (node.c). */
#include "ca/ca-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/mem.h>

#include "core/log.h"
#include "core/strbuf.h"

#define SA_PREFIX "system:serviceaccount:"

const char *ca_tr_reason(enum ca_tr_result r)
{
        switch (r) {
        case CA_TR_OK:
                return "ok";
        case CA_TR_INVALID:
                return "token_invalid";
        case CA_TR_EXPIRED:
                return "token_expired";
        case CA_TR_AUDIENCE:
                return "wrong_audience";
        case CA_TR_UNAVAILABLE:
        default:
                return "tokenreview_unavailable";
        }
}

static bool has_audience(const cJSON *list, const char *audience)
{
        if (!cJSON_IsArray(list))
                return false;
        const cJSON *a;
        cJSON_ArrayForEach(a, list)
        {
                if (cJSON_IsString(a) && strcmp(a->valuestring, audience) == 0)
                        return true;
        }
        return false;
}

/* "system:serviceaccount:<ns>:<sa>" with both names valid path segments. */
static bool sa_user(const char *user, struct ca_tr_identity *id)
{
        if (strncmp(user, SA_PREFIX, strlen(SA_PREFIX)) != 0)
                return false;
        const char *ns = user + strlen(SA_PREFIX);
        const char *colon = strchr(ns, ':');
        if (!colon || (size_t)(colon - ns) > SPIFFE_NAME_MAX)
                return false;
        snprintf(id->ns, sizeof(id->ns), "%.*s", (int)(colon - ns), ns);
        snprintf(id->sa, sizeof(id->sa), "%s", colon + 1);
        return strlen(colon + 1) <= SPIFFE_NAME_MAX && spiffe_name_valid(id->ns) &&
               spiffe_name_valid(id->sa);
}

/* One value of status.user.extra (a list of strings): copied when the list
 * holds exactly one string that fits; anything else leaves "" (treated as
 * absent, so a node agent whose token does not say plainly which pod it is
 * bound to is not trusted with a node). */
static void extra_one(const cJSON *extra, const char *key, char *out, size_t outlen)
{
        out[0] = '\0';
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(extra, key);
        const cJSON *s = cJSON_GetArrayItem(v, 0);
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 1 || !cJSON_IsString(s) ||
            strlen(s->valuestring) >= outlen)
                return;
        snprintf(out, outlen, "%s", s->valuestring);
}

static void read_extras(const cJSON *extra, struct ca_tr_identity *id)
{
        extra_one(extra, CA_EXTRA_POD_NAME, id->pod_name, sizeof(id->pod_name));
        extra_one(extra, CA_EXTRA_POD_UID, id->pod_uid, sizeof(id->pod_uid));
        extra_one(extra, CA_EXTRA_NODE_NAME, id->node_name, sizeof(id->node_name));
        /* names go into API paths and selectors: only what Kubernetes allows */
        if (!ca_k8s_name_valid(id->pod_name, CA_K8S_NAME_MAX) || !id->pod_uid[0]) {
                id->pod_name[0] = '\0';
                id->pod_uid[0] = '\0';
        }
        if (!ca_k8s_name_valid(id->node_name, CA_K8S_NAME_MAX))
                id->node_name[0] = '\0';
}

enum ca_tr_result ca_tr_classify(const char *response_json, size_t len, const char *audience,
                                 struct ca_tr_identity *id, char *msg, size_t msglen)
{
        memset(id, 0, sizeof(*id));
        cJSON *root = cJSON_ParseWithLength(response_json, len);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "status");
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
        enum ca_tr_result r;
        if (!cJSON_IsObject(st) || !cJSON_IsString(kind) ||
            strcmp(kind->valuestring, "TokenReview") != 0) {
                snprintf(msg, msglen, "the TokenReview answer is not a TokenReview with a status");
                r = CA_TR_UNAVAILABLE;
                goto out;
        }
        const cJSON *auth = cJSON_GetObjectItemCaseSensitive(st, "authenticated");
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(st, "error");
        const char *etext = cJSON_IsString(err) ? err->valuestring : "";
        if (!cJSON_IsTrue(auth)) {
                /* kube-apiserver's texts: go-jose's "token is expired (exp)" or
                 * "service account token has expired"; "token audiences [..] is
                 * invalid for the target audiences [..]" */
                if (strstr(etext, "expired"))
                        r = CA_TR_EXPIRED;
                else if (strstr(etext, "audience"))
                        r = CA_TR_AUDIENCE;
                else
                        r = CA_TR_INVALID;
                snprintf(msg, msglen, "the API server did not authenticate the token: %.300s",
                         *etext ? etext : "(no reason given)");
                goto out;
        }
        const cJSON *auds = cJSON_GetObjectItemCaseSensitive(st, "audiences");
        if (!has_audience(auds, audience)) {
                /* an empty status.audiences means "valid for the API server" */
                snprintf(msg, msglen, "the token is valid, but not for audience %s", audience);
                r = CA_TR_AUDIENCE;
                goto out;
        }
        const cJSON *user = cJSON_GetObjectItemCaseSensitive(st, "user");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(user, "username");
        if (!cJSON_IsString(name) || !sa_user(name->valuestring, id)) {
                snprintf(msg, msglen, "the token's user %.200s is not a service account",
                         cJSON_IsString(name) ? name->valuestring : "(none)");
                r = CA_TR_INVALID;
                goto out;
        }
        read_extras(cJSON_GetObjectItemCaseSensitive(user, "extra"), id);
        r = CA_TR_OK;
out:
        cJSON_Delete(root);
        return r;
}

/* ---- the HTTP call ----------------------------------------------------------------- */

enum ca_tr_result ca_tokenreview(struct k8s_creds *creds, const char *token, const char *audience,
                                 uint32_t timeout_ms, struct ca_tr_identity *id, char *msg,
                                 size_t msglen)
{
        struct strbuf req;
        strbuf_init(&req);
        strbuf_append(&req, "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\","
                            "\"spec\":{\"token\":");
        strbuf_append_json_string(&req, token);
        strbuf_append(&req, ",\"audiences\":[");
        strbuf_append_json_string(&req, audience);
        strbuf_append(&req, "]}}");
        enum ca_tr_result r = CA_TR_UNAVAILABLE;
        struct ca_kube_answer a = {0};
        if (req.truncated) {
                snprintf(msg, msglen, "out of memory");
                goto out;
        }
        if (ca_kube_call(creds, "/apis/authentication.k8s.io/v1/tokenreviews", req.data, req.len,
                         timeout_ms, CA_TR_MAX_RESPONSE, &a, msg, msglen) < 0)
                goto out;
        if (a.status == 401 || a.status == 403) {
                snprintf(msg, msglen,
                         "the API server refused shunt-ca's own credentials for TokenReview "
                         "(HTTP %ld): it needs create on tokenreviews.authentication.k8s.io",
                         a.status);
                goto out;
        }
        if (a.status != 200 && a.status != 201) {
                snprintf(msg, msglen, "TokenReview answered HTTP %ld", a.status);
                goto out;
        }
        r = ca_tr_classify(a.body ? a.body : "", a.len, audience, id, msg, msglen);
out:
        if (req.data)
                OPENSSL_cleanse(req.data, req.len);
        strbuf_free(&req);
        free(a.body);
        return r;
}

/* TokenReview (authentication.k8s.io/v1) over libcurl: a TokenReview object
 * with spec.token and spec.audiences goes in, the same object with a status
 * comes back (201 Created). The API server says why a token is refused only
 * in status.error (free text, e.g. "[invalid bearer token, token audiences
 * [\"x\"] is invalid for the target audiences [\"shunt-ca\"]]"), so the
 * reason is read from that text; an authenticated answer is still checked
 * for our audience in status.audiences and a service-account user name. */
#include "ca/ca-int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <openssl/mem.h>

#include "core/curlloop.h"
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

enum ca_tr_result ca_tr_classify(const char *response_json, size_t len, const char *audience,
                                 struct ca_tr_identity *id, char *msg, size_t msglen)
{
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
        r = CA_TR_OK;
out:
        cJSON_Delete(root);
        return r;
}

/* ---- the HTTP call ----------------------------------------------------------------- */

/* A curl handle per worker thread: connections to the API server are kept
 * alive between reviews. */
static pthread_key_t easy_key;
static pthread_once_t easy_once = PTHREAD_ONCE_INIT;

static void easy_free(void *e)
{
        curl_easy_cleanup(e);
}

static void easy_key_init(void)
{
        pthread_key_create(&easy_key, easy_free);
}

static CURL *thread_easy(void)
{
        pthread_once(&easy_once, easy_key_init);
        CURL *e = pthread_getspecific(easy_key);
        if (!e) {
                e = curl_easy_init();
                if (e && pthread_setspecific(easy_key, e) != 0) {
                        curl_easy_cleanup(e);
                        e = NULL;
                }
        }
        if (e)
                curl_easy_reset(e);
        return e;
}

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
        char url[640];
        snprintf(url, sizeof(url), "%s/apis/authentication.k8s.io/v1/tokenreviews",
                 k8s_creds_server(creds));
        enum ca_tr_result r = CA_TR_UNAVAILABLE;
        struct curl_body body = {.max = CA_TR_MAX_RESPONSE};
        struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
        struct curl_slist *h2 = hdrs ? curl_slist_append(hdrs, "Accept: application/json") : NULL;
        CURL *e = thread_easy();
        if (req.truncated || !h2 || !e || k8s_creds_apply(creds, e, &h2) < 0) {
                snprintf(msg, msglen, "out of memory");
                curl_slist_free_all(h2 ? h2 : hdrs);
                goto out;
        }
        hdrs = h2;
        char errbuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req.data);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req.len);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_body_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http");
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
        CURLcode cc = curl_easy_perform(e);
        long code = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_slist_free_all(hdrs);
        /* the request held the token: no copy of it outlives the call */
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
        if (cc != CURLE_OK) {
                snprintf(msg, msglen, "TokenReview at %s failed: %s", k8s_creds_server(creds),
                         body.too_large ? "answer over 1 MiB"
                                        : (errbuf[0] ? errbuf : curl_easy_strerror(cc)));
                goto out;
        }
        if (code == 401 || code == 403) {
                snprintf(msg, msglen,
                         "the API server refused shunt-ca's own credentials for TokenReview "
                         "(HTTP %ld): it needs create on tokenreviews.authentication.k8s.io",
                         code);
                goto out;
        }
        if (code != 200 && code != 201) {
                snprintf(msg, msglen, "TokenReview answered HTTP %ld", code);
                goto out;
        }
        r = ca_tr_classify(body.data ? body.data : "", body.len, audience, id, msg, msglen);
out:
        if (req.data)
                OPENSSL_cleanse(req.data, req.len);
        strbuf_free(&req);
        curl_body_free(&body);
        return r;
}

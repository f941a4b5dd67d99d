// SPDX-License-Identifier: Apache-2.0
/* Calls to the Kubernetes API server over libcurl for the CA's workers:
 * TokenReview (tokenreview.c) and the pod look-ups of delegated issuance
 * (node.c). Blocking, one call at a time per worker thread, each under its
 * own timeout and with its answer bounded, so a slow or hostile API server
 * holds a worker for at most the timeout and memory for at most the bound. */
#include "ca/ca-int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "core/curlloop.h"

/* A curl handle per worker thread: connections to the API server are kept
 * alive between calls. */
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

int ca_kube_call(struct k8s_creds *creds, const char *path, const char *post, size_t post_len,
                 uint32_t timeout_ms, size_t max, struct ca_kube_answer *a, char *msg,
                 size_t msglen)
{
        memset(a, 0, sizeof(*a));
        char url[1024];
        if ((size_t)snprintf(url, sizeof(url), "%s%s", k8s_creds_server(creds), path) >=
            sizeof(url)) {
                snprintf(msg, msglen, "API path too long");
                return -1;
        }
        struct curl_body body = {.max = max};
        struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
        struct curl_slist *h2 =
            hdrs && post ? curl_slist_append(hdrs, "Content-Type: application/json") : hdrs;
        CURL *e = thread_easy();
        if (!h2 || !e || k8s_creds_apply(creds, e, &h2) < 0) {
                snprintf(msg, msglen, "out of memory");
                curl_slist_free_all(h2 ? h2 : hdrs);
                return -1;
        }
        hdrs = h2;
        char errbuf[CURL_ERROR_SIZE] = "";
        curl_request_init(e, url, "https,http", hdrs, errbuf);
        if (post) {
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, post);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)post_len);
        }
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_body_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
        CURLcode cc = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &a->status);
        curl_slist_free_all(hdrs);
        /* a TokenReview request holds a token: the handle keeps no pointer to it */
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, NULL);
        if (cc != CURLE_OK) {
                if (body.too_large)
                        snprintf(msg, msglen, "%s %s: the answer is over %zu bytes",
                                 post ? "POST" : "GET", path, max);
                else
                        snprintf(msg, msglen, "%s at %s failed: %s", post ? "POST" : "GET",
                                 k8s_creds_server(creds),
                                 errbuf[0] ? errbuf : curl_easy_strerror(cc));
                curl_body_free(&body);
                return -1;
        }
        a->body = body.data;
        a->len = body.len;
        return 0;
}

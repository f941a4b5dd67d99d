/* SPDX-License-Identifier: Apache-2.0 */
/* A libcurl multi handle driven by a core/loop: its sockets are watched by
 * the loop's epoll and its timeouts by a loop timer, so transfers never block
 * the thread that runs the loop. Main thread only, like the loop.
 *
 * The caller owns each easy handle and sets its options (timeouts included:
 * nothing here bounds a transfer). Used by the Kubernetes discovery backend
 * and the "ca" certificate source. */
#ifndef SHUNT_CORE_CURLLOOP_H
#define SHUNT_CORE_CURLLOOP_H

#include <curl/curl.h>
#include <stdbool.h>

#include "core/loop.h"

struct curl_loop;

/* Called once when a transfer ends (rc from libcurl), after the easy handle
 * has been removed from the multi: the callback may free or reuse it. */
typedef void (*curl_loop_done_fn)(CURL *easy, CURLcode rc, void *ctx);

/* NULL when out of memory. */
struct curl_loop *curl_loop_new(struct loop *loop);
/* Cancels what is in flight (no callbacks). */
void curl_loop_free(struct curl_loop *cl);

/* Starts e (CURLOPT_PRIVATE is taken over). 0 or -ENOMEM/-EINVAL. */
int curl_loop_add(struct curl_loop *cl, CURL *e, curl_loop_done_fn fn, void *ctx);
/* Stops e if it is in flight; its callback is not called. */
void curl_loop_remove(struct curl_loop *cl, CURL *e);

/* A response body collected with a bound: CURLOPT_WRITEFUNCTION
 * curl_body_write, CURLOPT_WRITEDATA the struct (zeroed, max set). Past max
 * (too_large set) or out of memory the transfer is aborted
 * (CURLE_WRITE_ERROR). data is NUL-terminated once anything arrived. */
struct curl_body {
        char *data;
        size_t len, max;
        bool too_large;
};
size_t curl_body_write(char *p, size_t size, size_t n, void *body);
void curl_body_free(struct curl_body *b);

/* What every request of shunt's sets: the URL and the schemes it may take
 * ("https" or "https,http": never a redirect to another scheme), headers,
 * an error buffer of CURL_ERROR_SIZE, HTTP/1.1, no signals (the loop's
 * threads must not get SIGALRM). Timeouts, bodies and TLS are the caller's. */
void curl_request_init(CURL *e, const char *url, const char *protocols, struct curl_slist *hdrs,
                       char *errbuf);

/* The server's certificate must chain to the roots in ca_file and to no
 * other: libcurl's default directory of system roots is switched off too
 * (CAINFO alone would add to it, not replace it). */
void curl_trust_only(CURL *e, const char *ca_file);

#endif

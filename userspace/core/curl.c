// SPDX-License-Identifier: Apache-2.0
/* libcurl, loaded when first used. shunt calls libcurl only to reach the
 * Kubernetes API, Consul and shunt-ca; a sidecar with a file registry never
 * does. Linking libcurl-gnutls would map it and about 25 libraries it needs
 * (GnuTLS, Kerberos, LDAP, libssh2 and OpenSSL's libcrypto beside BoringSSL)
 * into every shuntd at start, several megabytes of resident memory. So no
 * binary links it: these definitions of the libcurl functions shunt uses
 * dlopen() it on the first call, and forward. If it cannot be loaded, every
 * call fails as libcurl itself would (CURLE_FAILED_INIT, NULL) and the reason
 * is logged once.
 *
 * curl_easy_setopt and curl_multi_setopt are variadic: the option's number
 * says the type of its argument (curl.h's CURLOPTTYPE_* ranges), and the
 * argument is passed on with that type. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"

#ifndef SHUNT_CURL_SONAME
#define SHUNT_CURL_SONAME "libcurl-gnutls.so.4"
#endif

typedef void (*any_fn)(void);

static struct {
        CURLcode (*global_init)(long);
        void (*global_cleanup)(void);
        CURL *(*easy_init)(void);
        CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
        CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
        CURLcode (*easy_perform)(CURL *);
        void (*easy_cleanup)(CURL *);
        void (*easy_reset)(CURL *);
        char *(*easy_escape)(CURL *, const char *, int);
        const char *(*easy_strerror)(CURLcode);
        void (*free)(void *);
        struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
        void (*slist_free_all)(struct curl_slist *);
        CURLM *(*multi_init)(void);
        CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
        CURLMcode (*multi_add_handle)(CURLM *, CURL *);
        CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
        CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
        CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
        CURLMsg *(*multi_info_read)(CURLM *, int *);
        CURLMcode (*multi_cleanup)(CURLM *);
} fn;

static const struct {
        const char *name;
        size_t off;
} symbols[] = {
#define SYM(field)                                                                                 \
        {                                                                                          \
                "curl_" #field, offsetof(__typeof__(fn), field)                                    \
        }
    SYM(global_init),
    SYM(global_cleanup),
    SYM(easy_init),
    SYM(easy_setopt),
    SYM(easy_getinfo),
    SYM(easy_perform),
    SYM(easy_cleanup),
    SYM(easy_reset),
    SYM(easy_escape),
    SYM(easy_strerror),
    SYM(free),
    SYM(slist_append),
    SYM(slist_free_all),
    SYM(multi_init),
    SYM(multi_setopt),
    SYM(multi_add_handle),
    SYM(multi_remove_handle),
    SYM(multi_assign),
    SYM(multi_socket_action),
    SYM(multi_info_read),
    SYM(multi_cleanup),
#undef SYM
};

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static bool loaded;

static void load(void)
{
        /* RTLD_LOCAL: libcurl's own libraries stay out of the global scope. */
        void *h = dlopen(SHUNT_CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
                log_error(
                    "core", 0,
                    "cannot load libcurl (%s): %s; install the Debian package 'libcurl3-gnutls'",
                    SHUNT_CURL_SONAME, dlerror());
                return;
        }
        for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
                void *p = dlsym(h, symbols[i].name);
                if (!p) {
                        log_error("core", 0, "cannot load libcurl (%s): no symbol %s",
                                  SHUNT_CURL_SONAME, symbols[i].name);
                        dlclose(h);
                        return;
                }
                memcpy((char *)&fn + symbols[i].off, &p, sizeof(p));
        }
        loaded = true;
}

static bool ready(void)
{
        pthread_once(&load_once, load);
        return loaded;
}

CURLcode curl_global_init(long flags)
{
        return ready() ? fn.global_init(flags) : CURLE_FAILED_INIT;
}

void curl_global_cleanup(void)
{
        if (ready())
                fn.global_cleanup();
}

CURL *curl_easy_init(void)
{
        return ready() ? fn.easy_init() : NULL;
}

/* Both setopt functions: the argument's type by the option's range. */
#define FORWARD_OPTION(call, opt, ap)                                                              \
        ((opt) < CURLOPTTYPE_OBJECTPOINT     ? call(va_arg(ap, long))                              \
         : (opt) < CURLOPTTYPE_FUNCTIONPOINT ? call(va_arg(ap, void *))                            \
         : (opt) < CURLOPTTYPE_OFF_T         ? call(va_arg(ap, any_fn))                            \
         : (opt) < CURLOPTTYPE_BLOB          ? call(va_arg(ap, curl_off_t))                        \
                                             : call(va_arg(ap, void *)))

CURLcode curl_easy_setopt(CURL *e, CURLoption opt, ...)
{
        if (!ready())
                return CURLE_FAILED_INIT;
        va_list ap;
        va_start(ap, opt);
#define CALL(arg) fn.easy_setopt(e, opt, arg)
        CURLcode rc = FORWARD_OPTION(CALL, opt, ap);
#undef CALL
        va_end(ap);
        return rc;
}

CURLcode curl_easy_getinfo(CURL *e, CURLINFO info, ...)
{
        if (!ready())
                return CURLE_FAILED_INIT;
        va_list ap;
        va_start(ap, info);
        CURLcode rc = fn.easy_getinfo(e, info, va_arg(ap, void *)); /* always a pointer */
        va_end(ap);
        return rc;
}

CURLcode curl_easy_perform(CURL *e)
{
        return ready() ? fn.easy_perform(e) : CURLE_FAILED_INIT;
}

void curl_easy_cleanup(CURL *e)
{
        if (ready())
                fn.easy_cleanup(e);
}

void curl_easy_reset(CURL *e)
{
        if (ready())
                fn.easy_reset(e);
}

char *curl_easy_escape(CURL *e, const char *s, int len)
{
        return ready() ? fn.easy_escape(e, s, len) : NULL;
}

const char *curl_easy_strerror(CURLcode rc)
{
        return ready() ? fn.easy_strerror(rc) : "libcurl could not be loaded";
}

void curl_free(void *p)
{
        if (ready())
                fn.free(p);
}

struct curl_slist *curl_slist_append(struct curl_slist *l, const char *s)
{
        return ready() ? fn.slist_append(l, s) : NULL;
}

void curl_slist_free_all(struct curl_slist *l)
{
        if (ready())
                fn.slist_free_all(l);
}

CURLM *curl_multi_init(void)
{
        return ready() ? fn.multi_init() : NULL;
}

CURLMcode curl_multi_setopt(CURLM *m, CURLMoption opt, ...)
{
        if (!ready())
                return CURLM_INTERNAL_ERROR;
        va_list ap;
        va_start(ap, opt);
#define CALL(arg) fn.multi_setopt(m, opt, arg)
        CURLMcode rc = FORWARD_OPTION(CALL, opt, ap);
#undef CALL
        va_end(ap);
        return rc;
}

CURLMcode curl_multi_add_handle(CURLM *m, CURL *e)
{
        return ready() ? fn.multi_add_handle(m, e) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_remove_handle(CURLM *m, CURL *e)
{
        return ready() ? fn.multi_remove_handle(m, e) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_assign(CURLM *m, curl_socket_t s, void *p)
{
        return ready() ? fn.multi_assign(m, s, p) : CURLM_INTERNAL_ERROR;
}

CURLMcode curl_multi_socket_action(CURLM *m, curl_socket_t s, int ev, int *running)
{
        return ready() ? fn.multi_socket_action(m, s, ev, running) : CURLM_INTERNAL_ERROR;
}

CURLMsg *curl_multi_info_read(CURLM *m, int *left)
{
        return ready() ? fn.multi_info_read(m, left) : NULL;
}

CURLMcode curl_multi_cleanup(CURLM *m)
{
        return ready() ? fn.multi_cleanup(m) : CURLM_INTERNAL_ERROR;
}

// SPDX-License-Identifier: Apache-2.0
/* The Consul agent's HTTP API over libcurl on the main loop (see
 * consul_http.h). */
#include "discovery/consul_http.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/curlloop.h"
#include "core/log.h"
#include "http/http1.h"

#define COMP                "consul"
#define CHTTP_CONNECT_MS    5000
#define CHTTP_DEFAULT_HTTP  8500
#define CHTTP_DEFAULT_HTTPS 8501

struct chttp_client {
        struct curl_loop *cl;
        char url[CONFIG_STR_MAX + 16]; /* scheme://host:port */
        bool https;
        char ca_file[CONFIG_PATH_MAX];
        char cert_file[CONFIG_PATH_MAX];
        char key_file[CONFIG_PATH_MAX];
        uint32_t mark;
        struct chttp *reqs; /* in flight */
};

struct chttp {
        struct chttp_client *c;
        struct chttp *prev, *next;
        CURL *e;
        struct curl_slist *hdrs;
        chttp_done_fn fn;
        void *ctx;
        struct curl_body body;
        struct chttp_resp resp;
        char errbuf[CURL_ERROR_SIZE];
};

/* ---- the client ---------------------------------------------------------------------------- */

static int file_readable(const char *key, const char *path, char *err, size_t errlen)
{
        FILE *f = fopen(path, "re");
        if (!f) {
                snprintf(err, errlen, "config: service_discovery.consul.%s: %s: %s", key, path,
                         strerror(errno));
                return -EINVAL;
        }
        fclose(f);
        return 0;
}

/* [scheme://]host[:port][/] into c->url; the host is a name, an IPv4
 * literal or a bracketed IPv6 literal. */
static int parse_address(struct chttp_client *c, const char *in, char *err, size_t errlen)
{
        const char *a = in;
        if (strncmp(a, "https://", 8) == 0) {
                c->https = true;
                a += 8;
        } else if (strncmp(a, "http://", 7) == 0) {
                a += 7;
        } else if (strstr(a, "://")) {
                snprintf(err, errlen,
                         "config: service_discovery.consul.address: %s: the scheme must be "
                         "http or https",
                         in);
                return -EINVAL;
        }
        char buf[CONFIG_STR_MAX];
        snprintf(buf, sizeof(buf), "%s", a);
        size_t bl = strlen(buf);
        if (bl && buf[bl - 1] == '/')
                buf[--bl] = '\0';
        char *host = buf, *port = NULL;
        bool v6 = false;
        if (buf[0] == '[') {
                char *e = strchr(buf, ']');
                if (!e || (e[1] && e[1] != ':')) {
                        snprintf(err, errlen,
                                 "config: service_discovery.consul.address: %s: expected "
                                 "[IPv6]:port",
                                 in);
                        return -EINVAL;
                }
                *e = '\0';
                host = buf + 1;
                port = e[1] ? e + 2 : NULL;
                v6 = true;
        } else {
                char *colon = strrchr(buf, ':');
                if (colon && strchr(buf, ':') == colon) {
                        *colon = '\0';
                        port = colon + 1;
                }
        }
        long p = c->https ? CHTTP_DEFAULT_HTTPS : CHTTP_DEFAULT_HTTP;
        if (port) {
                char *end;
                errno = 0;
                p = strtol(port, &end, 10);
                if (!*port || *end || errno || p < 1 || p > 65535) {
                        snprintf(err, errlen,
                                 "config: service_discovery.consul.address: %s: invalid port", in);
                        return -EINVAL;
                }
        }
        /* What may stand in a URL's host: no path, userinfo or blanks. */
        if (!host[0] || !http1_is_host(host, strlen(host)) || strchr(host, '/') ||
            (!v6 && strchr(host, ':'))) {
                snprintf(err, errlen,
                         "config: service_discovery.consul.address: %s: expected host:port", in);
                return -EINVAL;
        }
        snprintf(c->url, sizeof(c->url), "%s://%s%s%s:%ld", c->https ? "https" : "http",
                 v6 ? "[" : "", host, v6 ? "]" : "", p);
        return 0;
}

struct chttp_client *chttp_client_new(const struct chttp_client_config *cfg, char *err,
                                      size_t errlen)
{
        struct chttp_client *c = calloc(1, sizeof(*c));
        if (!c) {
                snprintf(err, errlen, "discovery: out of memory");
                return NULL;
        }
        c->mark = cfg->mark;
        if (parse_address(c, cfg->address, err, errlen) < 0)
                goto fail;
        const char *ca = cfg->ca_file ? cfg->ca_file : "";
        const char *cert = cfg->cert_file ? cfg->cert_file : "";
        const char *key = cfg->key_file ? cfg->key_file : "";
        if (!c->https && (ca[0] || cert[0] || key[0])) {
                snprintf(err, errlen,
                         "config: service_discovery.consul.ca_file, cert_file and key_file need "
                         "an https:// address (service_discovery.consul.address is %s)",
                         cfg->address);
                goto fail;
        }
        if (!cert[0] != !key[0]) {
                snprintf(err, errlen,
                         "config: service_discovery.consul.cert_file and key_file go together "
                         "(one is set, the other is empty)");
                goto fail;
        }
        if ((ca[0] && file_readable("ca_file", ca, err, errlen) < 0) ||
            (cert[0] && file_readable("cert_file", cert, err, errlen) < 0) ||
            (key[0] && file_readable("key_file", key, err, errlen) < 0))
                goto fail;
        snprintf(c->ca_file, sizeof(c->ca_file), "%s", ca);
        snprintf(c->cert_file, sizeof(c->cert_file), "%s", cert);
        snprintf(c->key_file, sizeof(c->key_file), "%s", key);
        return c;
fail:
        free(c);
        return NULL;
}

int chttp_client_start(struct chttp_client *c, struct loop *loop)
{
        c->cl = curl_loop_new(loop);
        return c->cl ? 0 : -ENOMEM;
}

const char *chttp_client_url(const struct chttp_client *c)
{
        return c->url;
}

static void req_free(struct chttp *r)
{
        struct chttp_client *c = r->c;
        if (r->prev)
                r->prev->next = r->next;
        else
                c->reqs = r->next;
        if (r->next)
                r->next->prev = r->prev;
        if (r->e)
                curl_easy_cleanup(r->e);
        curl_slist_free_all(r->hdrs);
        curl_body_free(&r->body);
        free(r);
}

void chttp_client_free(struct chttp_client *c)
{
        if (!c)
                return;
        while (c->reqs)
                chttp_cancel(c->reqs);
        curl_loop_free(c->cl);
        free(c);
}

/* ---- one request --------------------------------------------------------------------------- */

static size_t header_cb(char *p, size_t size, size_t n, void *ud)
{
        struct chttp *r = ud;
        size_t len = size * n;
        static const char name[] = "X-Consul-Index:";
        static const char filtered[] = "X-Consul-Results-Filtered-By-ACLs:";
        if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
                /* a new status line (after a 1xx): its own headers follow */
                r->resp.has_index = r->resp.index_valid = r->resp.filtered = false;
                r->resp.index = 0;
        } else if (len > sizeof(filtered) - 1 &&
                   strncasecmp(p, filtered, sizeof(filtered) - 1) == 0) {
                const char *v = p + sizeof(filtered) - 1;
                size_t vn = len - (sizeof(filtered) - 1);
                while (vn && (*v == ' ' || *v == '\t')) {
                        v++;
                        vn--;
                }
                r->resp.filtered = vn >= 4 && strncasecmp(v, "true", 4) == 0;
        } else if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
                struct http1_slice v = {p + sizeof(name) - 1, len - (sizeof(name) - 1)};
                while (v.n && (v.p[0] == ' ' || v.p[0] == '\t')) {
                        v.p++;
                        v.n--;
                }
                while (v.n && (v.p[v.n - 1] == '\r' || v.p[v.n - 1] == '\n' ||
                               v.p[v.n - 1] == ' ' || v.p[v.n - 1] == '\t'))
                        v.n--;
                r->resp.has_index = true;
                uint64_t x = 0;
                bool ok = v.n > 0 && v.n <= 19;
                for (size_t i = 0; ok && i < v.n; i++) {
                        ok = v.p[i] >= '0' && v.p[i] <= '9';
                        x = x * 10 + (uint64_t)(v.p[i] - '0');
                }
                r->resp.index_valid = ok;
                r->resp.index = ok ? x : 0;
        }
        return len;
}

static int sockopt_cb(void *ud, curl_socket_t fd, curlsocktype purpose)
{
        struct chttp_client *c = ud;
        (void)purpose;
        if (c->mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &c->mark, sizeof(c->mark)) < 0)
                log_debug(COMP, 0, "SO_MARK 0x%x on the connection to %s: %s", c->mark, c->url,
                          strerror(errno));
        return CURL_SOCKOPT_OK;
}

/* libcurl's result as an errno and one line. */
static int failure(struct chttp *r, CURLcode rc, char *why, size_t whylen)
{
        const struct chttp_client *c = r->c;
        const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        if (r->body.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
                snprintf(why, whylen, "response body over the limit of %zu bytes", r->body.max);
                return -EMSGSIZE;
        }
        switch (rc) {
        case CURLE_COULDNT_CONNECT:
                snprintf(why, whylen, "cannot connect: %s", detail);
                return -ECONNREFUSED;
        case CURLE_OPERATION_TIMEDOUT:
                snprintf(why, whylen, "timed out");
                return -ETIMEDOUT;
        case CURLE_COULDNT_RESOLVE_HOST:
                snprintf(why, whylen, "cannot resolve the agent's name: %s", detail);
                return -EHOSTUNREACH;
        case CURLE_PEER_FAILED_VERIFICATION:
                snprintf(why, whylen, "TLS: the agent's certificate is not trusted by %s%s (%s)",
                         c->ca_file[0] ? "service_discovery.consul.ca_file " : "the system CAs",
                         c->ca_file, detail);
                return -EPROTO;
        case CURLE_SSL_CACERT_BADFILE:
                snprintf(why, whylen, "TLS: service_discovery.consul.ca_file %s: %s", c->ca_file,
                         detail);
                return -EPROTO;
        case CURLE_SSL_CERTPROBLEM:
                snprintf(why, whylen, "TLS: service_discovery.consul.cert_file/key_file: %s",
                         detail);
                return -EPROTO;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
                /* With TLS 1.3 an agent that wants a client certificate
                 * says so with an alert after the client's handshake ends:
                 * the first read fails, not the handshake, and when the
                 * agent's close overtakes its alert, with a reset. */
                if (c->https && (rc == CURLE_SSL_CONNECT_ERROR || strstr(detail, "alert") ||
                                 !c->cert_file[0])) {
                        snprintf(why, whylen, "TLS: the agent refused the connection%s (%s)",
                                 c->cert_file[0] ? ""
                                                 : "; it may require a client certificate and "
                                                   "service_discovery.consul.cert_file is empty",
                                 detail);
                        return -EPROTO;
                }
                snprintf(why, whylen, "%s", detail);
                return -EPROTO;
        default:
                snprintf(why, whylen, "%s", detail);
                return -EPROTO;
        }
}

static void on_done(CURL *e, CURLcode rc, void *ctx)
{
        struct chttp *r = ctx;
        char why[CURL_ERROR_SIZE + CONFIG_PATH_MAX + 160];
        int err = 0;
        if (rc == CURLE_OK) {
                long st = 0;
                curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
                r->resp.status = (int)st;
                r->resp.body = r->body.data ? r->body.data : "";
                r->resp.body_len = r->body.len;
                why[0] = '\0';
        } else {
                err = failure(r, rc, why, sizeof(why));
        }
        r->fn(r->ctx, err, err ? NULL : &r->resp, why);
        req_free(r);
}

/* "Name: value\r\n" lines into a header list. */
static int add_headers(struct chttp *r, const char *lines)
{
        while (lines && *lines) {
                const char *eol = strstr(lines, "\r\n");
                size_t n = eol ? (size_t)(eol - lines) : strlen(lines);
                char line[CHTTP_REQ_HDRS_MAX];
                if (n >= sizeof(line))
                        return -EINVAL;
                memcpy(line, lines, n);
                line[n] = '\0';
                struct curl_slist *h = curl_slist_append(r->hdrs, line);
                if (!h)
                        return -ENOMEM;
                r->hdrs = h;
                lines = eol ? eol + 2 : lines + n;
        }
        return 0;
}

struct chttp *chttp_get(struct chttp_client *c, const char *target, const char *extra_headers,
                        uint32_t timeout_ms, size_t max_body, chttp_done_fn fn, void *ctx,
                        char *why, size_t whylen)
{
        char url[sizeof(c->url) + CHTTP_TARGET_MAX];
        if (!c->cl) {
                snprintf(why, whylen, "the client is not started");
                return NULL;
        }
        if (target[0] != '/' || !http1_is_visible(target, strlen(target)) ||
            (size_t)snprintf(url, sizeof(url), "%s%s", c->url, target) >= sizeof(url)) {
                snprintf(why, whylen, "invalid or too long request target");
                return NULL;
        }
        struct chttp *r = calloc(1, sizeof(*r));
        if (!r || !(r->e = curl_easy_init())) {
                free(r);
                snprintf(why, whylen, "out of memory");
                return NULL;
        }
        r->c = c;
        r->fn = fn;
        r->ctx = ctx;
        r->body.max = max_body;
        r->next = c->reqs;
        if (c->reqs)
                c->reqs->prev = r;
        c->reqs = r;
        int rc = add_headers(r, extra_headers);
        if (rc < 0) {
                snprintf(why, whylen, "request headers: %s", strerror(-rc));
                req_free(r);
                return NULL;
        }
        CURL *e = r->e;
        curl_request_init(e, url, c->https ? "https" : "http", r->hdrs, r->errbuf);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_body_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->body);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
        curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
        curl_easy_setopt(e, CURLOPT_SOCKOPTDATA, c);
        /* The agent is reached directly: proxy settings in the environment
         * are for the application, not for shunt. */
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(timeout_ms < CHTTP_CONNECT_MS ? timeout_ms : CHTTP_CONNECT_MS));
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
        if (c->ca_file[0])
                curl_trust_only(e, c->ca_file);
        if (c->cert_file[0]) {
                curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert_file);
                curl_easy_setopt(e, CURLOPT_SSLKEY, c->key_file);
        }
        if (curl_loop_add(c->cl, e, on_done, r) < 0) {
                snprintf(why, whylen, "cannot start the request: out of memory");
                req_free(r);
                return NULL;
        }
        return r;
}

void chttp_cancel(struct chttp *r)
{
        if (!r)
                return;
        curl_loop_remove(r->c->cl, r->e);
        req_free(r);
}

// SPDX-License-Identifier: Apache-2.0
/* shuntctl: command-line client for shuntd's admin HTTP API.
 *
 *   shuntctl [--admin HOST:PORT] [--json] COMMAND [ARGS]
 *
 * Talks HTTP/1.1 over a plain TCP socket, one request per connection, with a
 * 5 s deadline for the whole exchange. Exit codes: 0 success, 1 the daemon
 * could not be reached or answered with an error, 2 bad usage. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check/check.h"
#include "core/file.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/strbuf.h"
#include "core/version.h"
#include "admin/top.h"
#include "http/client.h"
#include "intercept/bpfcap.h"
#include "intercept/iptables.h"

#define DEFAULT_ADMIN     "127.0.0.1:15003"
#define TIMEOUT_MS        5000
#define MAX_RESPONSE      (64u * 1024 * 1024)
#define MAX_RESPONSE_HEAD (16u * 1024)

static const char usage_text[] =
    "usage: shuntctl [--admin HOST:PORT] [--json] COMMAND [ARGS]\n"
    "\n"
    "Query and control a running shuntd through its admin API.\n"
    "\n"
    "commands:\n"
    "  status           mode, readiness, listeners, rule state, connection counts\n"
    "  rules            installed iptables rules with packet and byte counts\n"
    "  maps             eBPF capture maps decoded: original destinations with age,\n"
    "                   sockhash size, shortcut flags, exclusions, counters\n"
    "  conns            live proxied connections\n"
    "  endpoints [SVC]  services and endpoints with health, weight, zone, staleness,\n"
    "                   circuit breaker, ejection, requests in flight, outbound mTLS\n"
    "                   (mtls, plaintext, refused; the mode) and the peer identity\n"
    "                   (SVC: name or namespace/name)\n"
    "  routes [SVC]     traffic routes per service port in precedence order: each\n"
    "                   rule's matches, backends with weight and hits, filters\n"
    "                   (mirror, fault and rate-limit counters)\n"
    "  certs            mTLS: identity, certificate serials and validity, rotation\n"
    "                   state, trust bundle; node mode: every pod identity\n"
    "                   (SPIFFE ID, pods, expiry, rotation state)\n"
    "  authz            inbound authorization: protected ports, policies (file and\n"
    "                   Kubernetes) with their deny and allow rules, decisions\n"
    "  pods             node mode: this node's meshed pods with their identity, state,\n"
    "                   IPs, cgroup and network namespace inode; shed and failed counts\n"
    "  config           effective configuration and where each value came from\n"
    "  log-level LEVEL  set the daemon's log level (debug, info, warn, error)\n"
    "  check [--pre] [--strict] [--cert-warn DURATION] [--pin-root DIR]\n"
    "                   check this host and the running shuntd: one line per check,\n"
    "                   PASS, WARN or FAIL with what to do; --pre: host checks only,\n"
    "                   before an install; exit 1 on a FAIL (--strict: or a WARN)\n"
    "  cleanup [--pin-root DIR] [--force]\n"
    "                   remove the capture a shuntd left behind (kill -9): the\n"
    "                   iptables chains and the eBPF pins; refused while a shuntd\n"
    "                   answers at the admin address (it owns the capture)\n"
    "  top [--interval SECONDS] [--once] [--count N] [--sort KEY]\n"
    "                   live table per destination service and direction from\n"
    "                   /metrics: requests/s, success rate (not 5xx), p50 and p99\n"
    "                   latency, bytes/s of byte-relayed traffic, in flight; the\n"
    "                   rates are between two scrapes SECONDS apart (default 2,\n"
    "                   0.5 to 60); KEY: rps (default), success, p50, p99, bytes,\n"
    "                   active, name; redrawn on a terminal, printed one after\n"
    "                   the other otherwise; --json: one JSON object per refresh\n"
    "  tap [--service S] [--direction D] [--protocol P] [--method M] [--path PREFIX]\n"
    "      [--status S] [--source ID-PREFIX] [--max N] [--seconds S]\n"
    "                   live stream of the requests that end and match (GET /tap):\n"
    "                   time, direction, protocol, method, authority and path,\n"
    "                   status, duration, source -> destination identity, service,\n"
    "                   endpoint; S: namespace/name or name; status: 503, 5xx or\n"
    "                   none; ends after N requests (default 100) or S seconds\n"
    "                   (default 30); --json: shuntd's NDJSON lines unchanged\n"
    "  ready [SECONDS]  exit 0 when shuntd is ready (GET /ready), else 1; with\n"
    "                   SECONDS, ask once a second until then (a pod's probes)\n"
    "  reload           SIGHUP to the shuntd answering at the admin address (same\n"
    "                   pid and network namespace); exit 0 once it applied the\n"
    "                   configuration again, 1 when it rejected it (its log says why)\n"
    "  drain            SIGTERM to that shuntd: it stops accepting, finishes what is in\n"
    "                   flight (up to drain_timeout), removes its capture and exits;\n"
    "                   returns when it has exited\n"
    "  wait-idle [SECONDS]\n"
    "                   return once shuntd has accepted no new connection for 2 s\n"
    "                   (the application is done), or is gone; exit 1 after SECONDS\n"
    "                   (default 30) without that (a proxy's preStop hook)\n"
    "\n"
    "options:\n"
    "  --admin HOST:PORT  admin address (default " DEFAULT_ADMIN ", or $SHUNTCTL_ADMIN)\n"
    "  --json             print the daemon's JSON unchanged\n"
    "  -h, --help         show this help\n"
    "  --version          print the version and commit\n"
    "\n"
    "exit status: 0 success, 1 daemon unreachable or error, 2 bad usage\n";

static const char *g_admin = DEFAULT_ADMIN;
static bool g_json;

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        fputs("shuntctl: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputs("\nrun 'shuntctl --help' for usage\n", stderr);
        va_end(ap);
        exit(2);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        fputs("shuntctl: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(1);
}

/* ---- HTTP client ------------------------------------------------------------ */

struct endpoint {
        char host[256];
        char port[8];
};

/* HOST:PORT, [V6]:PORT, HOST (default port), or a bare IPv6 literal. */
static int parse_endpoint(const char *s, struct endpoint *ep)
{
        const char *host = s, *port = "15003";
        size_t hlen;
        if (s[0] == '[') {
                const char *rb = strchr(s, ']');
                if (!rb)
                        return -EINVAL;
                host = s + 1;
                hlen = (size_t)(rb - host);
                if (rb[1] == ':')
                        port = rb + 2;
                else if (rb[1])
                        return -EINVAL;
        } else {
                const char *colon = strrchr(s, ':');
                if (colon && colon == strchr(s, ':')) {
                        hlen = (size_t)(colon - s);
                        port = colon + 1;
                } else {
                        hlen = strlen(s); /* no port, or a bare IPv6 literal */
                }
        }
        if (hlen == 0 || hlen >= sizeof(ep->host))
                return -EINVAL;
        char *end;
        errno = 0;
        long p = strtol(port, &end, 10);
        if (!*port || *end || errno || p < 1 || p > 65535)
                return -EINVAL;
        memcpy(ep->host, host, hlen);
        ep->host[hlen] = '\0';
        snprintf(ep->port, sizeof(ep->port), "%ld", p);
        return 0;
}

/* Waits for events on fd until the deadline. Returns 0 or -ETIMEDOUT/-errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
        for (;;) {
                int64_t left = deadline - (int64_t)clock_mono_ms();
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd pfd = {.fd = fd, .events = events};
                int n = poll(&pfd, 1, (int)left);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -ETIMEDOUT;
                return 0;
        }
}

static int connect_to(const struct endpoint *ep, int64_t deadline, char *err, size_t errlen)
{
        struct addrinfo hints = {
            .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
        struct addrinfo *res;
        int gai = getaddrinfo(ep->host, ep->port, &hints, &res);
        if (gai != 0) {
                snprintf(err, errlen, "%s", gai_strerror(gai));
                return -1;
        }
        int last = ECONNREFUSED;
        int fd = -1;
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
                if (fd < 0) {
                        last = errno;
                        continue;
                }
                if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
                        break;
                if (errno == EINPROGRESS) {
                        int rc = wait_fd(fd, POLLOUT, deadline);
                        if (rc == 0) {
                                int soerr = 0;
                                socklen_t sl = sizeof(soerr);
                                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                                if (soerr == 0)
                                        break;
                                last = soerr;
                        } else {
                                last = -rc;
                        }
                } else {
                        last = errno;
                }
                close(fd);
                fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0)
                snprintf(err, errlen, "%s", strerror(last));
        return fd;
}

struct http_response {
        int status;
        char *body; /* NUL-terminated */
        size_t body_len;
};

/* Performs one request. On a transport failure prints the "cannot reach"
 * line and exits 1. */
static void http_call(const char *method, const char *path, const char *body,
                      struct http_response *resp);

/* The bearer token a request that changes shuntd carries: read from
 * SHUNTCTL_ADMIN_TOKEN_FILE, else from the admin.token_file /config names.
 * Only a user who can read that file (shuntd's, or root) can change shuntd;
 * without it the request goes out as it is and shuntd's answer says why. */
static void admin_token(char *buf, size_t len)
{
        buf[0] = '\0';
        char path[512] = "";
        const char *env = getenv("SHUNTCTL_ADMIN_TOKEN_FILE");
        if (env && *env) {
                snprintf(path, sizeof(path), "%s", env);
        } else {
                struct http_response r;
                http_call("GET", "/config", NULL, &r);
                cJSON *j = r.status == 200 ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
                cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "admin.token_file");
                const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(k, "value"));
                if (v)
                        snprintf(path, sizeof(path), "%s", v);
                cJSON_Delete(j);
                free(r.body);
        }
        char *tok, why[600];
        size_t n;
        if (!path[0] || file_read_token(path, len - 1, &tok, &n, why, sizeof(why)) < 0)
                return;
        memcpy(buf, tok, n + 1);
        free(tok);
}

/* A streamed response body: called with the decoded bytes as they arrive
 * (then dropped); returns the bytes it used (the rest is kept for the next
 * call). */
typedef size_t (*body_sink_fn)(const char *data, size_t len, void *arg);
static void http_exchange(const char *method, const char *path, const char *body,
                          struct http_response *resp, body_sink_fn sink, void *sink_arg,
                          int idle_ms);

static void http_call(const char *method, const char *path, const char *body,
                      struct http_response *resp)
{
        http_exchange(method, path, body, resp, NULL, NULL, TIMEOUT_MS);
}

/* One request; with sink, the body goes to it as it comes and the deadline
 * is idle_ms after the last bytes received (else idle_ms for the whole
 * exchange). */
static void http_exchange(const char *method, const char *path, const char *body,
                          struct http_response *resp, body_sink_fn sink, void *sink_arg,
                          int idle_ms)
{
        struct endpoint ep;
        if (parse_endpoint(g_admin, &ep) < 0)
                die_usage("invalid admin address '%s' (want HOST:PORT, e.g. %s)", g_admin,
                          DEFAULT_ADMIN);
        int64_t deadline = (int64_t)clock_mono_ms() + (sink ? TIMEOUT_MS : idle_ms);
        char err[256];
        int fd = connect_to(&ep, deadline, err, sizeof(err));
        if (fd < 0)
                die("cannot reach shuntd admin at %s: %s", g_admin, err);

        struct strbuf req;
        strbuf_init(&req);
        bool v6 = strchr(ep.host, ':') != NULL;
        char host[sizeof(ep.host) + sizeof(ep.port) + 3];
        snprintf(host, sizeof(host), "%s%s%s:%s", v6 ? "[" : "", ep.host, v6 ? "]" : "", ep.port);
        char extra[512];
        int xl =
            snprintf(extra, sizeof(extra),
                     "User-Agent: shuntctl/%s\r\nAccept: application/json\r\n", shunt_version());
        if (strcmp(method, "GET") != 0) {
                char token[160];
                admin_token(token, sizeof(token));
                if (token[0])
                        xl += snprintf(extra + xl, sizeof(extra) - (size_t)xl,
                                       "Authorization: Bearer %s\r\n", token);
        }
        if (body)
                snprintf(extra + xl, sizeof(extra) - (size_t)xl, "Content-Type: text/plain\r\n");
        int rc = http_request_write(&req, method, path, host, extra, body, body ? strlen(body) : 0);
        if (rc == -EINVAL)
                die("cannot send %s %s: the path or the admin token holds bytes a request head "
                    "cannot "
                    "carry",
                    method, path);
        if (rc < 0)
                die("out of memory");

        size_t off = 0;
        while (off < req.len) {
                ssize_t w = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
                if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        int wr = wait_fd(fd, POLLOUT, deadline);
                        if (wr < 0)
                                die("cannot reach shuntd admin at %s: %s", g_admin, strerror(-wr));
                        continue;
                }
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        die("cannot reach shuntd admin at %s: %s", g_admin, strerror(errno));
                off += (size_t)w;
        }
        strbuf_free(&req);

        struct http_reader in;
        http_reader_init(&in, HTTP1_M_GET, MAX_RESPONSE_HEAD, MAX_RESPONSE, false);
        char chunk[16384];
        for (rc = 0; rc == 0;) {
                ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
                if (n > 0) {
                        rc = http_reader_feed(&in, chunk, (size_t)n);
                        if (sink && in.state != HTTP_R_HEAD && in.head.status == 200 &&
                            in.body.len) {
                                size_t used = sink(in.body.data, in.body.len, sink_arg);
                                memmove(in.body.data, in.body.data + used, in.body.len - used);
                                in.body.len -= used;
                                deadline = (int64_t)clock_mono_ms() + idle_ms;
                        }
                        continue;
                }
                if (n == 0) {
                        rc = http_reader_eof(&in);
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        int wr = wait_fd(fd, POLLIN, deadline);
                        if (wr < 0)
                                die("no answer from shuntd admin at %s: %s", g_admin,
                                    strerror(-wr));
                        continue;
                }
                if (in.state == HTTP_R_HEAD && in.raw.len == 0)
                        die("cannot reach shuntd admin at %s: %s", g_admin, strerror(errno));
                /* A reset after a body read until close ends it; else the
                 * reader says what is missing. */
                rc = http_reader_eof(&in);
        }
        close(fd);
        if (rc < 0)
                die("bad HTTP response from shuntd admin at %s: %s", g_admin, in.why);
        resp->status = in.head.status;
        resp->body_len = in.body.len;
        resp->body = malloc(in.body.len + 1);
        if (!resp->body)
                die("out of memory");
        if (in.body.len)
                memcpy(resp->body, in.body.data, in.body.len);
        resp->body[in.body.len] = '\0';
        http_reader_free(&in);
}

/* Fetches path; prints the raw body and exits with --json; exits 1 on an
 * error status. Returns the parsed JSON otherwise. */
static cJSON *fetch(const char *method, const char *path, const char *body)
{
        struct http_response r;
        http_call(method, path, body, &r);
        if (g_json) {
                fwrite(r.body, 1, r.body_len, stdout);
                if (r.body_len && r.body[r.body_len - 1] != '\n')
                        fputc('\n', stdout);
        }
        if (r.status < 200 || r.status > 299) {
                cJSON *e = cJSON_Parse(r.body);
                const char *msg =
                    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "error"));
                char tmp[200];
                if (!msg) {
                        snprintf(tmp, sizeof(tmp), "%.*s", (int)strcspn(r.body, "\r\n"), r.body);
                        msg = tmp;
                }
                fprintf(stderr, "shuntctl: shuntd admin at %s answered %d to %s %s%s%s\n", g_admin,
                        r.status, method, path, *msg ? ": " : "", msg);
                exit(1);
        }
        if (g_json)
                exit(0);
        cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
        if (!j)
                die("shuntd admin at %s sent invalid JSON for %s", g_admin, path);
        free(r.body);
        return j;
}

/* ---- output helpers ----------------------------------------------------------- */

#define MAX_COLS 14

struct table {
        int ncols;
        const char *header[MAX_COLS];
        bool right[MAX_COLS];
        char **cells; /* rows * ncols */
        size_t rows, cap;
};

static void table_add(struct table *t, ...)
{
        if (t->rows == t->cap) {
                t->cap = t->cap ? t->cap * 2 : 16;
                t->cells = realloc(t->cells, t->cap * (size_t)t->ncols * sizeof(char *));
                if (!t->cells)
                        die("out of memory");
        }
        va_list ap;
        va_start(ap, t);
        for (int i = 0; i < t->ncols; i++) {
                const char *s = va_arg(ap, const char *);
                t->cells[t->rows * (size_t)t->ncols + (size_t)i] = strdup(s ? s : "");
        }
        va_end(ap);
        t->rows++;
}

static void table_print(struct table *t)
{
        size_t w[MAX_COLS];
        for (int i = 0; i < t->ncols; i++) {
                w[i] = strlen(t->header[i]);
                for (size_t r = 0; r < t->rows; r++) {
                        size_t l = strlen(t->cells[r * (size_t)t->ncols + (size_t)i]);
                        if (l > w[i])
                                w[i] = l;
                }
        }
        for (size_t r = 0; r <= t->rows; r++) {
                for (int i = 0; i < t->ncols; i++) {
                        const char *s = r == 0 ? t->header[i]
                                               : t->cells[(r - 1) * (size_t)t->ncols + (size_t)i];
                        bool last = i == t->ncols - 1;
                        if (t->right[i])
                                printf("%*s", (int)w[i], s);
                        else if (last)
                                printf("%s", s);
                        else
                                printf("%-*s", (int)w[i], s);
                        printf(last ? "\n" : "  ");
                }
        }
        for (size_t i = 0; i < t->rows * (size_t)t->ncols; i++)
                free(t->cells[i]);
        free(t->cells);
        t->cells = NULL;
        t->rows = t->cap = 0;
}

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
        return s ? s : dflt;
}

static bool jnum(const cJSON *o, const char *key, double *out)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v))
                return false;
        *out = v->valuedouble;
        return true;
}

/* Formats a JSON number field as an integer, or "-" when absent. */
static const char *jint(const cJSON *o, const char *key, char *buf, size_t len)
{
        double d;
        if (!jnum(o, key, &d))
                return "-";
        snprintf(buf, len, "%.0f", d);
        return buf;
}

static const char *fmt_bytes(double b, char *buf, size_t len)
{
        static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
        int u = 0;
        while (b >= 1024 && u < 4) {
                b /= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, len, "%.0f B", b);
        else
                snprintf(buf, len, "%.1f %s", b, units[u]);
        return buf;
}

static const char *fmt_duration_ms(double ms, char *buf, size_t len)
{
        if (ms < 1000) {
                snprintf(buf, len, "%.0fms", ms);
                return buf;
        }
        double s = ms / 1000;
        if (s < 60) {
                snprintf(buf, len, "%.1fs", s);
                return buf;
        }
        unsigned long long t = (unsigned long long)s;
        if (t < 3600)
                snprintf(buf, len, "%llum%02llus", t / 60, t % 60);
        else if (t < 86400)
                snprintf(buf, len, "%lluh%02llum", t / 3600, t / 60 % 60);
        else
                snprintf(buf, len, "%llud%02lluh", t / 86400, t / 3600 % 24);
        return buf;
}

/* ---- commands ----------------------------------------------------------------- */

static int cmd_status(void)
{
        cJSON *j = fetch("GET", "/status", NULL);
        char b1[64], b2[64], b3[64];
        double d;

        printf("shuntd %s", jstr(j, "version", "?"));
        if (jnum(j, "pid", &d))
                printf(", pid %.0f", d);
        if (jnum(j, "uptime_s", &d))
                printf(", up %s", fmt_duration_ms(d * 1000, b1, sizeof(b1)));
        printf("\n");

        const cJSON *ready = cJSON_GetObjectItemCaseSensitive(j, "ready");
        bool draining = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "draining"));
        printf("%-13s%s%s\n",
               "ready:", cJSON_IsBool(ready) ? (cJSON_IsTrue(ready) ? "yes" : "no") : "unknown",
               draining ? " (draining)" : "");
        const char *mode = jstr(j, "redirect_mode", "unknown");
        const char *reason = jstr(j, "redirect_reason", "");
        if (*reason)
                printf("%-13s%s (%s)\n", "redirect:", mode, reason);
        else
                printf("%-13s%s\n", "redirect:", mode);
        if (jnum(j, "workers", &d))
                printf("%-13s%.0f\n", "workers:", d);

        const cJSON *ls = cJSON_GetObjectItemCaseSensitive(j, "listeners");
        int n = cJSON_GetArraySize(ls);
        size_t nw = 0;
        for (int i = 0; i < n; i++) {
                size_t l = strlen(jstr(cJSON_GetArrayItem(ls, i), "name", "?"));
                nw = l > nw ? l : nw;
        }
        if (n == 0)
                printf("%-13snone\n", "listeners:");
        for (int i = 0; i < n; i++) {
                const cJSON *l = cJSON_GetArrayItem(ls, i);
                printf("%-13s%-*s  %s\n", i == 0 ? "listeners:" : "", (int)nw, jstr(l, "name", "?"),
                       jstr(l, "address", "?"));
        }

        const cJSON *rules = cJSON_GetObjectItemCaseSensitive(j, "rules");
        if (rules && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(rules, "installed"))) {
                /* capture init: shuntd cannot read the nat table. */
                printf("%-13s%s\n",
                       "rules:", "installed by shuntd init (not readable without CAP_NET_ADMIN)");
        } else if (rules) {
                bool inst = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rules, "installed"));
                bool v6 = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rules, "ipv6"));
                bool in_only =
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rules, "inbound_only"));
                printf("%-13s%s%s\n", "rules:",
                       inst ? (v6 ? "installed (IPv4 and IPv6)" : "installed (IPv4 only)")
                            : "not installed",
                       inst && in_only ? ", inbound only (outbound is eBPF)" : "");
        }
        const cJSON *up = cJSON_GetObjectItemCaseSensitive(j, "upgrade");
        if (up) {
                const char *sock = jstr(up, "socket", "");
                printf("%-13s%s%s", "upgrade:", sock[0] ? "shuntd --takeover through " : "",
                       sock[0] ? sock : "not possible (no upgrade socket)");
                if (jnum(up, "taken_over_from", &d) && d > 0)
                        printf("; took over from pid %.0f (%s listeners, capture %s)", d,
                               jint(up, "adopted_listeners", b1, sizeof(b1)),
                               jstr(up, "adopted_capture", "")[0] ? jstr(up, "adopted_capture", "")
                                                                  : "its own");
                const cJSON *h = cJSON_GetObjectItemCaseSensitive(up, "handovers");
                if (h)
                        printf("; handovers: %s completed, %s failed, %s refused",
                               jint(h, "completed", b1, sizeof(b1)),
                               jint(h, "failed", b2, sizeof(b2)),
                               jint(h, "refused", b3, sizeof(b3)));
                printf("\n");
        }
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "connections");
        if (c)
                printf("%-13s%s active, %s accepted, %s rejected\n",
                       "connections:", jint(c, "active", b1, sizeof(b1)),
                       jint(c, "accepted", b2, sizeof(b2)), jint(c, "rejected", b3, sizeof(b3)));
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(j, "config");
        if (cfg) {
                const char *path = jstr(cfg, "path", "");
                printf("%-13s%s (generation %s)\n",
                       "config:", path[0] ? path : "no file (defaults, environment, flags)",
                       jint(cfg, "generation", b1, sizeof(b1)));
        }
        printf("%-13s%s\n", "log level:", jstr(j, "log_level", "unknown"));
        cJSON_Delete(j);
        return 0;
}

static int cmd_rules(void)
{
        cJSON *j = fetch("GET", "/rules", NULL);
        struct table t = {.ncols = 5,
                          .header = {"FAMILY", "CHAIN", "PACKETS", "BYTES", "RULE"},
                          .right = {false, false, true, true, false}};
        static const char *const fams[] = {"ipv4", "ipv6"};
        for (int f = 0; f < 2; f++) {
                const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, fams[f]);
                const cJSON *r;
                cJSON_ArrayForEach(r, arr)
                {
                        char p[32], b[32];
                        table_add(&t, fams[f], jstr(r, "chain", "?"),
                                  jint(r, "packets", p, sizeof(p)), jint(r, "bytes", b, sizeof(b)),
                                  jstr(r, "rule", ""));
                }
        }
        if (t.rows == 0)
                printf("no shunt rules installed\n");
        else
                table_print(&t);
        cJSON_Delete(j);
        return 0;
}

static int cmd_maps(void)
{
        cJSON *j = fetch("GET", "/maps", NULL);
        const char *mode = jstr(j, "mode", "unknown");
        const char *reason = jstr(j, "reason", "");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "maps");
        printf("%-13s%s%s%s%s\n", "mode:", mode, *reason ? " (" : "", reason, *reason ? ")" : "");
        if (!cJSON_IsObject(m)) {
                printf("no eBPF maps: capture is not in eBPF mode\n");
                cJSON_Delete(j);
                return 0;
        }
        char b1[64], b2[64], b3[64];
        printf("%-13s%s\n", "pins:", jstr(m, "pin_root", "?"));
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(m, "config");
        if (cfg) {
                double mark = 0, uid = -1;
                jnum(cfg, "mark", &mark);
                jnum(cfg, "uid", &uid);
                printf(
                    "%-13soutbound -> %s, mark 0x%llx, uid %s, shortcut %s\n",
                    "config:", jint(cfg, "outbound_port", b1, sizeof(b1)), (unsigned long long)mark,
                    uid < 0 ? "none" : jint(cfg, "uid", b2, sizeof(b2)),
                    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "shortcut")) ? "on" : "off");
                printf("%-13sa sender takes TCP while its reader would have more than %s "
                       "shortcut bytes unread; back at %s or less, its TCP bytes read\n",
                       "flow:", jint(cfg, "flow_high", b1, sizeof(b1)),
                       jint(cfg, "flow_low", b2, sizeof(b2)));
        }
        static const char *const names[] = {"orig_by_cookie", "orig_by_tuple", "sockhash",
                                            "shortcut_off",   "flow",          "exclude_ports",
                                            "exclude_cidrs"};
        struct table t = {
            .ncols = 3, .header = {"MAP", "ENTRIES", "MAX"}, .right = {false, true, true}};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                const cJSON *x = cJSON_GetObjectItemCaseSensitive(m, names[i]);
                table_add(&t, names[i], jint(x, "entries", b1, sizeof(b1)),
                          jint(x, "max", b2, sizeof(b2)));
        }
        printf("\n");
        table_print(&t);

        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "counters");
        struct table tc = {.ncols = 2, .header = {"COUNTER", "VALUE"}, .right = {false, true}};
        const cJSON *e;
        cJSON_ArrayForEach(e, c)
        {
                snprintf(b1, sizeof(b1), "%.0f", cJSON_GetNumberValue(e));
                table_add(&tc, e->string, b1);
        }
        printf("\n");
        table_print(&tc);

        struct table to = {.ncols = 5,
                           .header = {"APP", "LISTENER", "ORIGINAL_DST", "PID", "AGE"},
                           .right = {false, false, false, true, true}};
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(m, "orig_by_tuple"), "items"))
        {
                double age = 0;
                jnum(e, "age_ms", &age);
                table_add(&to, jstr(e, "app", "?"), jstr(e, "listener", "?"),
                          jstr(e, "original_dst", "?"), jint(e, "pid", b1, sizeof(b1)),
                          fmt_duration_ms(age, b2, sizeof(b2)));
        }
        printf("\noriginal destinations (established, waiting for shuntd):\n");
        if (to.rows)
                table_print(&to);
        else
                printf("  none\n");

        struct table tk = {.ncols = 4,
                           .header = {"COOKIE", "ORIGINAL_DST", "PID", "AGE"},
                           .right = {true, false, true, true}};
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(m, "orig_by_cookie"), "items"))
        {
                double age = 0;
                jnum(e, "age_ms", &age);
                table_add(&tk, jint(e, "cookie", b1, sizeof(b1)), jstr(e, "original_dst", "?"),
                          jint(e, "pid", b2, sizeof(b2)), fmt_duration_ms(age, b3, sizeof(b3)));
        }
        if (tk.rows) {
                printf("\nconnects in progress:\n");
                table_print(&tk);
        }

        struct table ts = {.ncols = 2, .header = {"LOCAL", "REMOTE"}};
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(m, "shortcut_off"), "items"))
            table_add(&ts, jstr(e, "local", "?"), jstr(e, "remote", "?"));
        if (ts.rows) {
                printf("\nshortcut off (set by hand):\n");
                table_print(&ts);
        }

        /* Readers whose sender is off the shortcut now (flow control). */
        struct table tf = {.ncols = 3, .header = {"READER", "WRITER", "STATE"}};
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(
                                  cJSON_GetObjectItemCaseSensitive(m, "flow"), "items"))
        {
                const char *state = jstr(e, "state", "?");
                if (strcmp(state, "tcp") == 0)
                        table_add(&tf, jstr(e, "local", "?"), jstr(e, "remote", "?"), state);
        }
        if (tf.rows) {
                printf("\nshortcut paused (the reader is behind; its writer's bytes take TCP):\n");
                table_print(&tf);
        }
        cJSON_Delete(j);
        return 0;
}

static int cmd_conns(void)
{
        cJSON *j = fetch("GET", "/connections", NULL);
        struct table t = {
            .ncols = 10,
            .header = {"ID", "WORKER", "DIR", "CLIENT", "ORIGINAL_DST", "PROTO", "STATE", "IN",
                       "OUT", "AGE"},
            .right = {true, true, false, false, false, false, false, true, true, true}};
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(j, "connections"))
        {
                char id[32], wk[32], in[32] = "-", out[32] = "-", age[32] = "-";
                double d;
                if (jnum(c, "bytes_in", &d))
                        fmt_bytes(d, in, sizeof(in));
                if (jnum(c, "bytes_out", &d))
                        fmt_bytes(d, out, sizeof(out));
                if (jnum(c, "age_ms", &d))
                        fmt_duration_ms(d, age, sizeof(age));
                table_add(&t, jint(c, "id", id, sizeof(id)), jint(c, "worker", wk, sizeof(wk)),
                          jstr(c, "direction", "?"), jstr(c, "client", "?"),
                          jstr(c, "original_dst", "?"), jstr(c, "protocol", "?"),
                          jstr(c, "state", "?"), in, out, age);
        }
        if (t.rows == 0)
                printf("no active connections\n");
        else
                table_print(&t);
        cJSON_Delete(j);
        return 0;
}

static int cmd_endpoints(const char *service)
{
        char path[256] = "/endpoints";
        if (service) {
                for (const char *p = service; *p; p++)
                        if (!isalnum((unsigned char)*p) && !strchr("._-/", *p))
                                die_usage("invalid service name '%s'", service);
                snprintf(path, sizeof(path), "/endpoints?service=%.200s", service);
        }
        cJSON *j = fetch("GET", path, NULL);
        struct table t = {.ncols = 14,
                          .header = {"SERVICE", "ENDPOINT", "HEALTH", "WEIGHT", "ZONE", "SOURCE",
                                     "STALE", "FAILURES", "BREAKER", "EJECTED_MS", "ACTIVE", "MTLS",
                                     "PEER_IDENTITY", "CLUSTER"},
                          .right = {false, false, false, true, false, false, true, true, false,
                                    true, true, false, false, false}};
        const cJSON *svc;
        cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(j, "services"))
        {
                char name[160];
                snprintf(name, sizeof(name), "%s/%s", jstr(svc, "namespace", "?"),
                         jstr(svc, "name", "?"));
                const cJSON *ep;
                cJSON_ArrayForEach(ep, cJSON_GetObjectItemCaseSensitive(svc, "endpoints"))
                {
                        char addr[96], port[16], weight[16], stale[32] = "-", fails[16] = "0";
                        const char *a = jstr(ep, "address", "?");
                        jint(ep, "port", port, sizeof(port));
                        snprintf(addr, sizeof(addr), strchr(a, ':') ? "[%s]:%s" : "%s:%s", a, port);
                        const cJSON *b = cJSON_GetObjectItemCaseSensitive(ep, "stale");
                        if (cJSON_IsTrue(b))
                                jint(ep, "staleness_seconds", stale, sizeof(stale));
                        const cJSON *passive = cJSON_GetObjectItemCaseSensitive(ep, "passive");
                        if (passive)
                                jint(passive, "failures", fails, sizeof(fails));
                        /* The proxy's view (first port): breaker state, time
                         * left in an ejection, requests/connections in flight. */
                        char ejected[32] = "-", active[16] = "-";
                        const char *breaker = "-";
                        const cJSON *res = cJSON_GetArrayItem(
                            cJSON_GetObjectItemCaseSensitive(ep, "resilience"), 0);
                        if (res) {
                                breaker = jstr(res, "breaker", "?");
                                if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "ejected")))
                                        jint(res, "ejected_for_ms", ejected, sizeof(ejected));
                                jint(res, "active", active, sizeof(active));
                        }
                        /* Outbound to it: mtls, plaintext or refused, with the
                         * mode that decided (default: mtls.mode); the identity
                         * its peer must present ("-": not meshed). */
                        char mtls[48];
                        snprintf(mtls, sizeof(mtls), "%s(%s)", jstr(ep, "outbound", "?"),
                                 jstr(ep, "mtls", "?"));
                        const char *peer = jstr(ep, "identity", "");
                        table_add(&t, name, addr, jstr(ep, "health", "?"),
                                  jint(ep, "weight", weight, sizeof(weight)),
                                  jstr(ep, "zone", "")[0] ? jstr(ep, "zone", "") : "-",
                                  jstr(ep, "source", "?"), stale, fails, breaker, ejected, active,
                                  mtls, peer[0] ? peer : "-",
                                  jstr(ep, "cluster", "")[0] ? jstr(ep, "cluster", "") : "-");
                }
        }
        if (t.rows == 0)
                printf("no endpoints%s%s\n", service ? " for " : "", service ? service : "");
        else
                table_print(&t);
        cJSON_Delete(j);
        return 0;
}

/* One match as text: "PathPrefix /api GET h:x-user=~a.* q:v=1". */
static void match_text(const cJSON *m, char *out, size_t cap)
{
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(m, "path");
        size_t off =
            (size_t)snprintf(out, cap, "%s %s", jstr(path, "type", "?"), jstr(path, "value", "?"));
        const char *method = jstr(m, "method", "");
        if (method[0] && off < cap)
                off += (size_t)snprintf(out + off, cap - off, " %s", method);
        static const char *const kinds[][2] = {{"headers", "h"}, {"queryParams", "q"}};
        for (int k = 0; k < 2; k++) {
                const cJSON *x;
                cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(m, kinds[k][0]))
                {
                        if (off >= cap)
                                return;
                        bool re = strcmp(jstr(x, "type", ""), "RegularExpression") == 0;
                        off += (size_t)snprintf(out + off, cap - off, " %s:%s=%s%s", kinds[k][1],
                                                jstr(x, "name", "?"), re ? "~" : "",
                                                jstr(x, "value", "?"));
                }
        }
}

static int cmd_routes(const char *service)
{
        char path[256] = "/routes";
        if (service) {
                for (const char *p = service; *p; p++)
                        if (!isalnum((unsigned char)*p) && !strchr("._-/", *p))
                                die_usage("invalid service name '%s'", service);
                snprintf(path, sizeof(path), "/routes?service=%.200s", service);
        }
        cJSON *j = fetch("GET", path, NULL);
        struct table t = {
            .ncols = 7,
            .header = {"SERVICE", "ROUTE", "RULE", "MATCHES", "BACKENDS", "FILTERS", "HITS"},
            .right = {false, false, true, false, false, false, true}};
        const cJSON *svc;
        cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(j, "services"))
        {
                char name[200], num[24];
                snprintf(name, sizeof(name), "%s:%s", jstr(svc, "service", "?"),
                         jint(svc, "port", num, sizeof(num)));
                const cJSON *rule;
                cJSON_ArrayForEach(rule, cJSON_GetObjectItemCaseSensitive(svc, "rules"))
                {
                        char matches[512] = "", backends[512] = "", filters[256] = "", one[256];
                        const cJSON *x;
                        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(rule, "matches"))
                        {
                                match_text(x, one, sizeof(one));
                                snprintf(matches + strlen(matches),
                                         sizeof(matches) - strlen(matches), "%s%s",
                                         matches[0] ? " | " : "", one);
                        }
                        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(rule, "backends"))
                        {
                                char w[24], h[24];
                                const char *sel = jstr(x, "selector", "");
                                snprintf(backends + strlen(backends),
                                         sizeof(backends) - strlen(backends),
                                         "%s%s%s%s w=%s hits=%s", backends[0] ? ", " : "",
                                         jstr(x, "name", "?"), sel[0] ? "#" : "", sel,
                                         jint(x, "weight", w, sizeof(w)),
                                         jint(x, "hits", h, sizeof(h)));
                        }
                        char a[24], b[24];
                        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(rule, "filters"))
                        {
                                snprintf(filters + strlen(filters),
                                         sizeof(filters) - strlen(filters), "%s%s",
                                         filters[0] ? "," : "", jstr(x, "type", "?"));
                                if (cJSON_GetObjectItemCaseSensitive(x, "mirrors"))
                                        snprintf(filters + strlen(filters),
                                                 sizeof(filters) - strlen(filters),
                                                 "(mirrors=%s drops=%s)",
                                                 jint(x, "mirrors", a, sizeof(a)),
                                                 jint(x, "drops", b, sizeof(b)));
                        }
                        /* shunt's extensions, with their counters */
                        if (cJSON_GetObjectItemCaseSensitive(rule, "fault"))
                                snprintf(filters + strlen(filters),
                                         sizeof(filters) - strlen(filters),
                                         "%sfault(aborts=%s delays=%s)", filters[0] ? "," : "",
                                         jint(rule, "faults", a, sizeof(a)),
                                         jint(rule, "delays", b, sizeof(b)));
                        if (cJSON_GetObjectItemCaseSensitive(rule, "rateLimit"))
                                snprintf(filters + strlen(filters),
                                         sizeof(filters) - strlen(filters),
                                         "%srateLimit(limited=%s)", filters[0] ? "," : "",
                                         jint(rule, "rate_limited", a, sizeof(a)));
                        char idx[16], hits[24];
                        table_add(&t, name, jstr(rule, "route", "?"),
                                  jint(rule, "rule", idx, sizeof(idx)), matches,
                                  backends[0] ? backends : "(the service)",
                                  filters[0] ? filters : "-",
                                  jint(rule, "hits", hits, sizeof(hits)));
                }
                char misses[24];
                table_add(&t, name, "(none)", "-", "no rule matched: 404", "-", "-",
                          jint(svc, "misses", misses, sizeof(misses)));
        }
        if (t.rows == 0)
                printf("no routes%s%s\n", service ? " for " : "", service ? service : "");
        else
                table_print(&t);
        /* Kubernetes routes that cannot be applied, and why. */
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(j, "rejected"))
        {
                const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "in_force");
                printf("rejected: %s %s/%s (resourceVersion %s): %s; %s%s\n", jstr(x, "kind", "?"),
                       jstr(x, "namespace", "?"), jstr(x, "name", "?"),
                       jstr(x, "resource_version", "?"), jstr(x, "error", "?"),
                       cJSON_IsString(f) ? "in force: resourceVersion " : "not applied",
                       cJSON_IsString(f) ? f->valuestring : "");
        }
        cJSON_Delete(j);
        return 0;
}

/* One certificate line: serial, validity and time left. */
static void print_cert(const char *label, const cJSON *c)
{
        char left[64] = "-";
        double d;
        if (jnum(c, "expires_in_s", &d))
                fmt_duration_ms(d > 0 ? d * 1000 : 0, left, sizeof(left));
        printf("%-15sserial %s, valid %s .. %s (%s%s)\n", label, jstr(c, "serial", "?"),
               jstr(c, "not_before", "?"), jstr(c, "not_after", "?"),
               jnum(c, "expires_in_s", &d) && d <= 0 ? "expired" : "expires in ",
               jnum(c, "expires_in_s", &d) && d <= 0 ? "" : left);
}

/* Readiness for exec probes: the admin API listens on 127.0.0.1 inside the
 * pod, where the kubelet's HTTP probes (sent to the pod IP) cannot reach it. */
static int ready_once(void)
{
        struct http_response r;
        http_call("GET", "/ready", NULL, &r);
        if (r.status == 200) {
                free(r.body);
                printf("ready\n");
                return 0;
        }
        cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
        free(r.body);
        const char *why = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "reason"));
        fprintf(stderr, "shuntctl: shuntd at %s is not ready (%d%s%s)\n", g_admin, r.status,
                why ? ": " : "", why ? why : "");
        cJSON_Delete(j);
        return 1;
}

static int cmd_ready(const char *seconds)
{
        if (!seconds)
                return ready_once();
        char *end;
        long wait = strtol(seconds, &end, 10);
        if (*end || end == seconds || wait < 1 || wait > 3600)
                die_usage("invalid wait '%s' (want seconds 1..3600)", seconds);
        /* One child per attempt: http_call exits on an unreachable daemon. */
        for (long i = 0;; i++) {
                fflush(NULL);
                pid_t pid = fork();
                if (pid < 0)
                        die("fork: %s", strerror(errno));
                if (pid == 0) {
                        if (i + 1 < wait && !freopen("/dev/null", "w", stderr))
                                _exit(1);
                        exit(ready_once());
                }
                int st;
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                        ;
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                        return 0;
                if (i + 1 >= wait)
                        die("shuntd at %s not ready after %ld s", g_admin, wait);
                sleep(1);
        }
}

/* A number of the admin JSON at path (obj.key, or key at the top when obj is
 * NULL; a duration string counts in ms), read in a child (http_call exits
 * when shuntd is unreachable); -1 when it cannot be read. */
static long long admin_number(const char *path, const char *obj, const char *key)
{
        int p[2];
        if (pipe(p) < 0)
                die("pipe: %s", strerror(errno));
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                die("fork: %s", strerror(errno));
        if (pid == 0) {
                close(p[0]);
                if (!freopen("/dev/null", "w", stderr))
                        _exit(1);
                g_json = false;
                cJSON *j = fetch("GET", path, NULL);
                double n;
                uint64_t ms;
                const cJSON *o = obj ? cJSON_GetObjectItemCaseSensitive(j, obj) : j;
                const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
                long long v = jnum(o, key, &n)                            ? (long long)n
                              : text && parse_duration_ms(text, &ms) == 0 ? (long long)ms
                                                                          : -1;
                cJSON_Delete(j);
                _exit(write(p[1], &v, sizeof(v)) == (ssize_t)sizeof(v) ? 0 : 1);
        }
        close(p[1]);
        long long v = -1;
        if (read(p[0], &v, sizeof(v)) != (ssize_t)sizeof(v))
                v = -1;
        close(p[0]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        return v;
}

static long long status_number(const char *obj, const char *key)
{
        return admin_number("/status", obj, key);
}

static long long accepted_total(void)
{
        return status_number("connections", "accepted");
}

#define RELOAD_WAIT_MS 10000

/* True when pid is a process named shuntd in this network namespace: the pid
 * /status reports is in shuntd's pid namespace, and a pid of another
 * namespace must not get a signal meant for shuntd. */
static bool is_local_shuntd(long long pid)
{
        char path[64], err[128], *comm = NULL;
        size_t len;
        snprintf(path, sizeof(path), "/proc/%lld/comm", pid);
        if (file_read_token(path, 64, &comm, &len, err, sizeof(err)) < 0)
                return false;
        bool named = strcmp(comm, "shuntd") == 0;
        free(comm);
        if (!named)
                return false;
        struct stat mine, its;
        snprintf(path, sizeof(path), "/proc/%lld/ns/net", pid);
        return stat("/proc/self/ns/net", &mine) == 0 && stat(path, &its) == 0 &&
               mine.st_ino == its.st_ino && mine.st_dev == its.st_dev;
}

/* SIGHUP to the shuntd at the admin address, then wait for /status to show
 * the next configuration generation: a rejected reload keeps the running
 * configuration and the generation, and shuntd's log says why. */
/* Sends sig to the shuntd at the admin address; returns its pid. */
static long long signal_shuntd(int sig)
{
        long long pid = status_number(NULL, "pid");
        if (pid <= 0)
                die("cannot reach shuntd admin at %s to read its pid", g_admin);
        if (!is_local_shuntd(pid))
                die("pid %lld from shuntd admin at %s is not a shuntd in this pid and network "
                    "namespace: run shuntctl where shuntd runs",
                    pid, g_admin);
        if (kill((pid_t)pid, sig) < 0)
                die("cannot signal shuntd (pid %lld): %s", pid, strerror(errno));
        return pid;
}

static int cmd_reload(void)
{
        long long gen = status_number("config", "generation");
        if (gen < 0)
                die("cannot read the configuration generation from shuntd admin at %s", g_admin);
        signal_shuntd(SIGHUP);
        uint64_t start = clock_mono_ms();
        for (;;) {
                long long now = status_number("config", "generation");
                if (now > gen) {
                        printf("reloaded: configuration generation %lld\n", now);
                        return 0;
                }
                if (now < 0)
                        die("shuntd at %s stopped answering during the reload", g_admin);
                if (clock_mono_ms() - start >= RELOAD_WAIT_MS) {
                        fprintf(stderr,
                                "shuntctl: reload not applied (generation still %lld after %d s): "
                                "shuntd rejected it, its log says why\n",
                                now, RELOAD_WAIT_MS / 1000);
                        return 1;
                }
                struct timespec ts = {0, 100 * 1000000L};
                nanosleep(&ts, NULL);
        }
}

#define DRAIN_SLACK_MS 10000

/* The graceful stop: SIGTERM, then shuntd stops accepting, finishes what is
 * in flight for up to drain_timeout, removes its capture and exits. Waits
 * for its process to end, bounded by drain_timeout and some slack. */
static int cmd_drain(void)
{
        long long drain_ms = admin_number("/config", "drain_timeout", "value");
        if (drain_ms < 0)
                die("cannot read drain_timeout from shuntd admin at %s", g_admin);
        long long pid = signal_shuntd(SIGTERM);
        printf("draining shuntd (pid %lld, up to %lld ms)\n", pid, drain_ms);
        fflush(stdout);
        uint64_t start = clock_mono_ms();
        char path[64];
        snprintf(path, sizeof(path), "/proc/%lld", pid);
        for (;;) {
                struct stat st;
                /* gone, or a zombie its parent has not reaped yet */
                if (stat(path, &st) < 0 || !is_local_shuntd(pid)) {
                        printf("drained: shuntd (pid %lld) exited\n", pid);
                        return 0;
                }
                if (clock_mono_ms() - start >= (uint64_t)drain_ms + DRAIN_SLACK_MS) {
                        fprintf(stderr,
                                "shuntctl: shuntd (pid %lld) still running %lld ms after SIGTERM\n",
                                pid, drain_ms + DRAIN_SLACK_MS);
                        return 1;
                }
                struct timespec ts = {0, 100 * 1000000L};
                nanosleep(&ts, NULL);
        }
}

/* preStop of a proxy that is not a native sidecar: the kubelet sends SIGTERM
 * to the application and runs this at the same time; shuntd keeps serving
 * (and the hook holds its own SIGTERM back) until the application has made
 * no new connection for WAIT_IDLE_QUIET_MS. Connections still open then are
 * shuntd's drain's to finish. */
#define WAIT_IDLE_QUIET_MS 2000
#define WAIT_IDLE_POLL_MS  200

static int cmd_wait_idle(const char *seconds)
{
        long max_s = 30;
        if (seconds) {
                char *end;
                max_s = strtol(seconds, &end, 10);
                if (*end || end == seconds || max_s < 1 || max_s > 3600)
                        die_usage("invalid wait '%s' (want seconds 1..3600)", seconds);
        }
        uint64_t start = clock_mono_ms(), since = start;
        long long last = -2;
        for (;;) {
                long long n = accepted_total();
                uint64_t now = clock_mono_ms();
                if (n < 0) {
                        printf("shuntd at %s is gone: nothing to wait for\n", g_admin);
                        return 0;
                }
                if (n != last) {
                        last = n;
                        since = now;
                } else if (now - since >= WAIT_IDLE_QUIET_MS) {
                        printf("idle: no new connection for %d s (%lld accepted in all)\n",
                               WAIT_IDLE_QUIET_MS / 1000, n);
                        return 0;
                }
                if (now - start >= (uint64_t)max_s * 1000) {
                        fprintf(stderr,
                                "shuntctl: shuntd at %s still accepting new connections after %ld "
                                "s\n",
                                g_admin, max_s);
                        return 1;
                }
                struct timespec ts = {0, WAIT_IDLE_POLL_MS * 1000000L};
                nanosleep(&ts, NULL);
        }
}

/* Node mode: one line per pod identity (namespace/service account). */
static void print_node_identities(const cJSON *n)
{
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(n, "counters");
        char b[6][64];
        printf("node identities: %s held (at most %s), drain %ss; issued %s, fetch failures %s, "
               "shed %s\n",
               jint(n, "held", b[0], sizeof(b[0])), jint(n, "max_identities", b[1], sizeof(b[1])),
               jint(n, "drain_s", b[2], sizeof(b[2])), jint(c, "issued", b[3], sizeof(b[3])),
               jint(c, "fetch_failures", b[4], sizeof(b[4])), jint(c, "shed", b[5], sizeof(b[5])));
        printf("  %-52s %5s  %-9s %-21s %s\n", "SPIFFE ID", "PODS", "STATE", "EXPIRES", "ROTATION");
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(n, "identities"))
        {
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "store");
                const cJSON *cur = cJSON_GetObjectItemCaseSensitive(st, "current");
                const cJSON *rot = cJSON_GetObjectItemCaseSensitive(st, "rotation");
                printf("  %-52s %5s  %-9s %-21s %s\n", jstr(it, "spiffe_id", "?"),
                       jint(it, "pods", b[0], sizeof(b[0])), jstr(it, "state", "?"),
                       cJSON_IsObject(cur) ? jstr(cur, "not_after", "?") : "-",
                       jstr(rot, "state", "?"));
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(rot, "last_error");
                if (cJSON_IsString(e))
                        printf("  %-52s last error: %s\n", "", e->valuestring);
        }
}

static int cmd_certs(void)
{
        cJSON *j = fetch("GET", "/certs", NULL);
        char b1[64];
        printf("%-15s%s\n", "mtls mode:", jstr(j, "mode", "?"));
        const cJSON *nid = cJSON_GetObjectItemCaseSensitive(j, "node_identities");
        if (cJSON_IsObject(nid))
                print_node_identities(nid);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "identity");
        if (!cJSON_IsString(id)) {
                printf("%-15snone (mtls.mode is disabled)\n", "identity:");
                cJSON_Delete(j);
                return 0;
        }
        printf("%-15s%s\n", "identity:", id->valuestring);
        printf("%-15s%s\n", "trust domain:", jstr(j, "trust_domain", "?"));
        printf("%-15s%s\n", "source:", jstr(j, "source", "?"));
        /* The ca source: where certificates come from and how the last request went. */
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "ca_address"))) {
                printf("%-15s%s (token %s, identity from the %s)\n",
                       "ca:", jstr(j, "ca_address", "?"), jstr(j, "ca_token_file", "?"),
                       jstr(j, "identity_from", "?"));
                const cJSON *li = cJSON_GetObjectItemCaseSensitive(j, "last_issuance");
                if (cJSON_IsObject(li)) {
                        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(li, "message");
                        printf("%-15s%s %s for %s%s%s\n", "last issuance:", jstr(li, "time", "?"),
                               jstr(li, "result", "?"), jstr(li, "requested", "?"),
                               cJSON_IsString(msg) ? ": " : "",
                               cJSON_IsString(msg) ? msg->valuestring : "");
                } else {
                        printf("%-15snone yet\n", "last issuance:");
                }
        }
        const cJSON *cur = cJSON_GetObjectItemCaseSensitive(j, "current");
        if (cur) {
                print_cert("certificate:", cur);
                printf("%-15s%s, %s connections\n", "", jstr(cur, "key_type", "?"),
                       jint(cur, "connections", b1, sizeof(b1)));
        }
        const cJSON *prev = cJSON_GetObjectItemCaseSensitive(j, "previous");
        if (cJSON_IsObject(prev)) {
                print_cert("previous:", prev);
                printf("%-15sdraining until %s, %s connections\n", "",
                       jstr(prev, "drain_ends", "?"), jint(prev, "connections", b1, sizeof(b1)));
        }
        const cJSON *rot = cJSON_GetObjectItemCaseSensitive(j, "rotation");
        if (rot) {
                const cJSON *next = cJSON_GetObjectItemCaseSensitive(rot, "next_rotation");
                const cJSON *last = cJSON_GetObjectItemCaseSensitive(rot, "last_rotation");
                char b2[64];
                printf("%-15s%s, next %s, last %s, %s rotations, %s failures\n",
                       "rotation:", jstr(rot, "state", "?"),
                       cJSON_IsString(next) ? next->valuestring : "on file change",
                       cJSON_IsString(last) ? last->valuestring : "never",
                       jint(rot, "rotations", b1, sizeof(b1)),
                       jint(rot, "failures", b2, sizeof(b2)));
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(rot, "last_error");
                if (cJSON_IsString(e))
                        printf("%-15s%s\n", "last error:", e->valuestring);
        }
        /* The inbound allow-list (mtls.allow), one line per entry. */
        const cJSON *pol = cJSON_GetObjectItemCaseSensitive(j, "policy");
        const cJSON *allow = pol ? cJSON_GetObjectItemCaseSensitive(pol, "allow") : NULL;
        double npol = 0;
        jnum(pol, "authorization_policies", &npol);
        if (npol > 0)
                printf("%-15s%.0f policies (see shuntctl authz)\n", "authorization:", npol);
        if (cJSON_GetArraySize(allow) == 0) {
                if (npol <= 0)
                        printf("%-15sany identity of the trust domain, every port\n",
                               "inbound allow:");
        } else {
                const cJSON *a;
                bool first = true;
                cJSON_ArrayForEach(a, allow)
                {
                        const char *port = jint(a, "port", b1, sizeof(b1));
                        printf("%-15sport %s: %s\n", first ? "inbound allow:" : "",
                               strcmp(port, "0") ? port : "*", jstr(a, "id", "?"));
                        first = false;
                }
        }
        const cJSON *bundle = cJSON_GetObjectItemCaseSensitive(j, "trust_bundle");
        struct table t = {.ncols = 4, .header = {"TRUST BUNDLE", "SERIAL", "NOT_AFTER", "SUBJECT"}};
        const cJSON *c;
        int i = 0;
        cJSON_ArrayForEach(c, bundle)
        {
                char n[16];
                snprintf(n, sizeof(n), "%d", ++i);
                table_add(&t, n, jstr(c, "serial", "?"), jstr(c, "not_after", "?"),
                          jstr(c, "subject", "?"));
        }
        printf("\n");
        if (t.rows)
                table_print(&t);
        else
                printf("trust bundle: empty\n");
        cJSON_Delete(j);
        return 0;
}

/* "ns=a sa=b" or the identity; principals joined by "; ". */
static void principals_text(const cJSON *list, char *out, size_t len)
{
        size_t n = 0;
        out[0] = '\0';
        const cJSON *p;
        cJSON_ArrayForEach(p, list)
        {
                const char *id = jstr(p, "identity", NULL);
                if (id) {
                        n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s%s", n ? "; " : "",
                                              id);
                } else {
                        const char *keys[] = {"trust_domain", "namespace", "service_account"};
                        const char *tags[] = {"td", "ns", "sa"};
                        bool first = true;
                        for (int k = 0; k < 3; k++) {
                                const char *v = jstr(p, keys[k], NULL);
                                if (!v)
                                        continue;
                                n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s%s=%s",
                                                      first ? (n ? "; " : "") : " ", tags[k], v);
                                first = false;
                        }
                }
                if (n >= len)
                        break;
        }
        if (!out[0])
                snprintf(out, len, "-");
}

/* Node mode's pod table: one line per pod, then what was shed or given up. */
/* GET /pods "capture": each pod's capture, identity, connections, bytes,
 * refusals and memory (node/capture.h). */
static void pods_capture(const cJSON *cap)
{
        if (!cJSON_IsObject(cap))
                return;
        char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
        printf("\ncapture: outbound by %s, at most %s connections per pod\n",
               jstr(cap, "outbound", "?"), jint(cap, "pod_max_connections", b1, sizeof(b1)));
        printf("%-32s %-9s %-8s %-18s %-24s %-22s %s\n", "NAMESPACE/NAME", "CAPTURE", "IDENTITY",
               "CONNS act/in/out", "BYTES up/down", "REFUSED limit/tls/oth", "MEMORY");
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(cap, "pods"))
        {
                char name[256], conns[112], bytes[80], refused[112], mem[112];
                snprintf(name, sizeof(name), "%s/%s", jstr(p, "namespace", "?"),
                         jstr(p, "name", "?"));
                const cJSON *cn = cJSON_GetObjectItemCaseSensitive(p, "connections");
                const cJSON *by = cJSON_GetObjectItemCaseSensitive(p, "bytes");
                const cJSON *rf = cJSON_GetObjectItemCaseSensitive(p, "refused");
                const cJSON *me = cJSON_GetObjectItemCaseSensitive(p, "memory");
                snprintf(conns, sizeof(conns), "%s/%s/%s", jint(cn, "active", b1, sizeof(b1)),
                         jint(cn, "inbound", b2, sizeof(b2)), jint(cn, "outbound", b3, sizeof(b3)));
                snprintf(bytes, sizeof(bytes), "%s/%s", jint(by, "upstream", b4, sizeof(b4)),
                         jint(by, "downstream", b5, sizeof(b5)));
                snprintf(refused, sizeof(refused), "%s/%s/%s", jint(rf, "limit", b1, sizeof(b1)),
                         jint(rf, "tls", b2, sizeof(b2)), jint(rf, "other", b3, sizeof(b3)));
                snprintf(mem, sizeof(mem), "proxy %s B, bpf %s B",
                         jint(me, "proxy_bytes", b4, sizeof(b4)),
                         jint(me, "bpf_bytes", b6, sizeof(b6)));
                printf("%-32s %-9s %-8s %-18s %-24s %-22s %s\n", name, jstr(p, "capture", "?"),
                       jstr(p, "identity", "?"), conns, bytes, refused, mem);
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(p, "error");
                if (cJSON_IsString(e))
                        printf("%-32s %s\n", "", e->valuestring);
        }
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(cap, "counters");
        printf("captured %s, failed %s, released %s, without identity %s\n",
               jint(c, "captured", b1, sizeof(b1)), jint(c, "failed", b2, sizeof(b2)),
               jint(c, "released", b3, sizeof(b3)), jint(c, "no_identity", b4, sizeof(b4)));
}

/* A pod's own authorization policies (GET /pods "authz", node/policies.h). */
static void pod_policies(const cJSON *az)
{
        if (!cJSON_IsObject(az))
                return;
        char names[512] = "", b1[32], b2[32];
        const cJSON *n;
        cJSON_ArrayForEach(n, cJSON_GetObjectItemCaseSensitive(az, "policies"))
        {
                if (cJSON_IsString(n))
                        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                                 names[0] ? ", " : "", n->valuestring);
        }
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(az, "decisions"), *x;
        double refused = 0;
        cJSON_ArrayForEach(x, d)
        {
                if (cJSON_IsNumber(x) && strcmp(x->string, "allowed"))
                        refused += x->valuedouble;
        }
        snprintf(b2, sizeof(b2), "%.0f", refused);
        printf("%-32s policies %s: %s (allowed %s, refused %s)\n", "", jstr(az, "state", "?"),
               names[0] ? names : "none", jint(d, "allowed", b1, sizeof(b1)), b2);
}

static int cmd_pods(void)
{
        cJSON *j = fetch("GET", "/pods", NULL);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "counters");
        char b1[32], b2[32], b3[32], b4[32];
        printf("node %s: %s pods held (at most %s), cgroup v2 at %s\n", jstr(j, "node", "?"),
               jint(j, "pods_held", b1, sizeof(b1)), jint(j, "max_pods", b2, sizeof(b2)),
               jstr(j, "cgroup_root", "?"));
        printf("%-32s %-12s %-20s %-31s %-12s %s\n", "NAMESPACE/NAME", "STATE", "SERVICE ACCOUNT",
               "IPS", "NETNS", "CGROUP");
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(j, "pods"))
        {
                char name[256], ips[128] = "";
                snprintf(name, sizeof(name), "%s/%s", jstr(p, "namespace", "?"),
                         jstr(p, "name", "?"));
                const cJSON *ip;
                cJSON_ArrayForEach(ip, cJSON_GetObjectItemCaseSensitive(p, "ips"))
                {
                        if (cJSON_IsString(ip))
                                snprintf(ips + strlen(ips), sizeof(ips) - strlen(ips), "%s%s",
                                         ips[0] ? "," : "", ip->valuestring);
                }
                const char *cg = jstr(p, "cgroup", "");
                printf("%-32s %-12s %-20s %-31s %-12s %s\n", name, jstr(p, "state", "?"),
                       jstr(p, "service_account", "?"), ips[0] ? ips : "-",
                       jint(p, "netns_inode", b1, sizeof(b1)), cg[0] ? cg : "-");
                const cJSON *e = cJSON_GetObjectItemCaseSensitive(p, "error");
                if (cJSON_IsString(e))
                        printf("%-32s %s (uid %s, %s attempts)\n", "", e->valuestring,
                               jstr(p, "uid", "?"), jint(p, "attempts", b2, sizeof(b2)));
                pod_policies(cJSON_GetObjectItemCaseSensitive(p, "authz"));
        }
        printf("shed %s (max_pods reached), failed %s, netns changed %s, uid replaced %s\n",
               jint(c, "shed", b1, sizeof(b1)), jint(c, "failed", b2, sizeof(b2)),
               jint(c, "netns_changed", b3, sizeof(b3)), jint(c, "uid_replaced", b4, sizeof(b4)));
        pods_capture(cJSON_GetObjectItemCaseSensitive(j, "capture"));
        cJSON_Delete(j);
        return 0;
}

static int cmd_authz(void)
{
        cJSON *j = fetch("GET", "/authz", NULL);
        char b1[32], b2[32];
        printf("%-17s%s\n", "mtls mode:", jstr(j, "mode", "?"));
        printf("%-17s%s\n", "protected ports:", jstr(j, "protected_ports", "?"));
        const cJSON *src = cJSON_GetObjectItemCaseSensitive(j, "sources");
        printf("%-17sfile %s, kubernetes %s\n", "policies:", jint(src, "file", b1, sizeof(b1)),
               jint(src, "kubernetes", b2, sizeof(b2)));
        const cJSON *dec = cJSON_GetObjectItemCaseSensitive(j, "decisions");
        printf("%-17s", "decisions:");
        const cJSON *d;
        bool first = true;
        cJSON_ArrayForEach(d, dec)
        {
                printf("%s%s %s", first ? "" : ", ", d->string,
                       jint(dec, d->string, b1, sizeof(b1)));
                first = false;
        }
        printf("\n\n");
        struct table t = {.ncols = 4, .header = {"POLICY", "PORTS", "DENY", "ALLOW"}};
        const cJSON *p;
        cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(j, "policies"))
        {
                char ports[256] = "", deny[2048], allow[2048];
                size_t n = 0;
                const cJSON *port;
                cJSON_ArrayForEach(port, cJSON_GetObjectItemCaseSensitive(p, "ports"))
                {
                        if (cJSON_IsNumber(port))
                                n += (size_t)snprintf(ports + n,
                                                      n < sizeof(ports) ? sizeof(ports) - n : 0,
                                                      "%s%d", n ? "," : "", (int)port->valuedouble);
                        else
                                n += (size_t)snprintf(ports + n,
                                                      n < sizeof(ports) ? sizeof(ports) - n : 0,
                                                      "%s*", n ? "," : "");
                }
                principals_text(cJSON_GetObjectItemCaseSensitive(p, "deny"), deny, sizeof(deny));
                principals_text(cJSON_GetObjectItemCaseSensitive(p, "allow"), allow, sizeof(allow));
                table_add(&t, jstr(p, "name", "?"), ports, deny, allow);
        }
        if (t.rows)
                table_print(&t);
        else
                printf("no policy: any identity of the trust domain may reach every port\n");
        cJSON_Delete(j);
        return 0;
}

static int cmd_config(void)
{
        cJSON *j = fetch("GET", "/config", NULL);
        struct table t = {.ncols = 3, .header = {"KEY", "VALUE", "SOURCE"}};
        const cJSON *e;
        cJSON_ArrayForEach(e, j)
        {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "value");
                char *printed = NULL;
                const char *val;
                if (cJSON_IsString(v)) {
                        val = v->valuestring;
                } else if (v) {
                        printed = cJSON_PrintUnformatted(v);
                        val = printed ? printed : "?";
                } else {
                        val = "-";
                }
                table_add(&t, e->string ? e->string : "?", val, jstr(e, "source", "?"));
                free(printed);
        }
        table_print(&t);
        cJSON_Delete(j);
        return 0;
}

/* shuntctl check [--pre] [--strict] [--json] [--admin A] [--cert-warn D] [--pin-root DIR] */
/* ---- top ---------------------------------------------------------------------- */

#define TOP_MIN_INTERVAL_MS 500
#define TOP_MAX_INTERVAL_MS 60000

static void top_fetch(struct top_scrape *s, int64_t *at_ms)
{
        struct http_response r;
        http_call("GET", "/metrics", NULL, &r);
        *at_ms = (int64_t)clock_mono_ms();
        if (r.status != 200)
                die("shuntd admin at %s answered %d to GET /metrics", g_admin, r.status);
        if (top_scrape_parse(r.body, r.body_len, s) < 0)
                die("out of memory");
        free(r.body);
}

static const char *fmt_pct(double v, char *buf, size_t len)
{
        if (isnan(v))
                return "-";
        snprintf(buf, len, "%.2f%%", v * 100);
        return buf;
}

static const char *fmt_latency(double s, char *buf, size_t len)
{
        if (isnan(s))
                return "-";
        if (isinf(s))
                return s > 0 ? ">max" : "-";
        if (s < 0.001)
                snprintf(buf, len, "%.0fus", s * 1e6);
        else if (s < 1)
                snprintf(buf, len, "%.2fms", s * 1e3);
        else
                snprintf(buf, len, "%.2fs", s);
        return buf;
}

static void top_json_num(cJSON *o, const char *key, double v)
{
        if (isfinite(v))
                cJSON_AddNumberToObject(o, key, v);
        else
                cJSON_AddNullToObject(o, key);
}

static void top_print(const struct top_view *v, int n, const struct top_scrape *cur, double seconds,
                      const char *sort, bool tty, int max_rows)
{
        if (g_json) {
                cJSON *root = cJSON_CreateObject();
                cJSON_AddNumberToObject(root, "interval_seconds", seconds);
                cJSON_AddNumberToObject(root, "rows_dropped", (double)cur->dropped_rows);
                cJSON *rows = cJSON_AddArrayToObject(root, "rows");
                for (int i = 0; i < n; i++) {
                        cJSON *o = cJSON_CreateObject();
                        cJSON_AddStringToObject(o, "direction", v[i].direction);
                        cJSON_AddStringToObject(o, "service", v[i].service);
                        top_json_num(o, "requests_per_second", v[i].rps);
                        top_json_num(o, "success_rate", v[i].success);
                        top_json_num(o, "p50_seconds", v[i].p50);
                        top_json_num(o, "p99_seconds", v[i].p99);
                        top_json_num(o, "bytes_per_second", v[i].bytes_per_s);
                        top_json_num(o, "active", v[i].active);
                        cJSON_AddItemToArray(rows, o);
                }
                char *text = cJSON_PrintUnformatted(root);
                if (!text)
                        die("out of memory");
                printf("%s\n", text);
                free(text);
                cJSON_Delete(root);
                fflush(stdout);
                return;
        }
        if (tty)
                fputs("\033[H\033[2J", stdout); /* home, clear the screen */
        time_t now = time(NULL);
        struct tm tm;
        char when[32];
        strftime(when, sizeof(when), "%H:%M:%S", localtime_r(&now, &tm));
        printf("shuntd %s  %s  over %.1f s  sorted by %s  %d destination%s%s\n\n", g_admin, when,
               seconds, sort, n, n == 1 ? "" : "s",
               cur->dropped_rows ? "  (more not shown: row limit)" : "");
        struct table t = {
            .ncols = 8,
            .header = {"DIRECTION", "SERVICE", "RPS", "SUCCESS", "P50", "P99", "BYTES/S", "ACTIVE"},
            .right = {false, false, true, true, true, true, true, true}};
        for (int i = 0; i < n && (max_rows <= 0 || i < max_rows); i++) {
                char rps[32], ok[32], p50[32], p99[32], bytes[32], act[32];
                snprintf(rps, sizeof(rps), "%.1f", v[i].rps);
                snprintf(act, sizeof(act), "%.0f", v[i].active);
                table_add(&t, v[i].direction, v[i].service, rps, fmt_pct(v[i].success, ok, 32),
                          fmt_latency(v[i].p50, p50, 32), fmt_latency(v[i].p99, p99, 32),
                          fmt_bytes(v[i].bytes_per_s, bytes, 32), act);
        }
        table_print(&t);
        if (!n)
                printf("(no proxied requests or connections yet)\n");
        if (!tty)
                putchar('\n');
        fflush(stdout);
}

/* `shuntctl top [--interval SECONDS] [--once] [--count N] [--sort KEY]`:
 * scrapes /metrics every interval and prints the rates between the last
 * two scrapes. On a terminal the table is redrawn in place; otherwise (a
 * pipe, a file) each refresh is printed after the last. */
static int cmd_top(int argc, char **argv)
{
        int64_t interval_ms = 2000;
        long count = 0;
        const char *sort = "rps";
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--once") == 0) {
                        count = 1;
                } else if (strcmp(a, "--admin") == 0 && i + 1 < argc) {
                        g_admin = argv[++i];
                } else if (strcmp(a, "--json") == 0) {
                        g_json = true;
                } else if (strcmp(a, "--interval") == 0 && i + 1 < argc) {
                        char *end;
                        double sec = strtod(argv[++i], &end);
                        if (*end || !(sec * 1000 >= TOP_MIN_INTERVAL_MS) ||
                            !(sec * 1000 <= TOP_MAX_INTERVAL_MS))
                                die_usage("top: --interval %s: want seconds from %.1f to %d",
                                          argv[i], TOP_MIN_INTERVAL_MS / 1000.0,
                                          TOP_MAX_INTERVAL_MS / 1000);
                        interval_ms = (int64_t)(sec * 1000);
                } else if (strcmp(a, "--count") == 0 && i + 1 < argc) {
                        char *end;
                        count = strtol(argv[++i], &end, 10);
                        if (*end || count < 1 || count > 1000000)
                                die_usage("top: --count %s: want 1 to 1000000", argv[i]);
                } else if (strcmp(a, "--sort") == 0 && i + 1 < argc) {
                        sort = argv[++i];
                        if (top_sort_parse(sort) < 0)
                                die_usage("top: --sort %s: want rps, success, p50, p99, bytes, "
                                          "active or name",
                                          sort);
                } else {
                        die_usage("top: unknown or incomplete option '%s'", a);
                }
        }
        bool tty = isatty(STDOUT_FILENO) && !g_json;
        int max_rows = 0;
        struct top_scrape prev, cur;
        int64_t prev_ms, cur_ms;
        top_fetch(&prev, &prev_ms);
        for (long k = 0; !count || k < count; k++) {
                struct timespec ts = {.tv_sec = interval_ms / 1000,
                                      .tv_nsec = (interval_ms % 1000) * 1000000};
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
                top_fetch(&cur, &cur_ms);
                struct top_view *v;
                double sec = (double)(cur_ms - prev_ms) / 1000;
                int n = top_compute(&prev, &cur, sec > 0 ? sec : 0.001, top_sort_parse(sort), &v);
                if (n < 0)
                        die("out of memory");
                struct winsize ws;
                if (tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0)
                        max_rows = ws.ws_row > 4 ? ws.ws_row - 4 : 1; /* the header's lines */
                top_print(v, n, &cur, sec, sort, tty, max_rows);
                free(v);
                top_scrape_free(&prev);
                prev = cur;
                prev_ms = cur_ms;
        }
        top_scrape_free(&prev);
        return 0;
}

/* ---- tap ---------------------------------------------------------------------- */

static void query_add(struct strbuf *q, const char *key, const char *v)
{
        strbuf_append(q, q->len ? "&" : "?");
        strbuf_append(q, key);
        strbuf_append(q, "=");
        for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
                if (isalnum(*p) || strchr("-._~/:", *p))
                        strbuf_appendn(q, (const char *)p, 1);
                else
                        strbuf_appendf(q, "%%%02X", *p);
        }
}

struct tap_out {
        long events;
        bool ended;
};

static void tap_line(const char *line, size_t len, struct tap_out *o)
{
        if (g_json) {
                fwrite(line, 1, len, stdout);
                fputc('\n', stdout);
        }
        cJSON *j = cJSON_ParseWithLength(line, len);
        if (!j) {
                fprintf(stderr, "shuntctl: tap: a line that is not JSON: %.*s\n",
                        (int)(len > 200 ? 200 : len), line);
                return;
        }
        const char *end = jstr(j, "end", NULL);
        if (end) {
                double ev = 0, dr = 0, rd = 0;
                jnum(j, "events", &ev);
                jnum(j, "dropped", &dr);
                jnum(j, "ring_dropped", &rd);
                fprintf(stderr,
                        "tap ended (%s): %.0f requests shown, %.0f dropped (client slow), %.0f "
                        "not seen (rings full)\n",
                        end, ev, dr, rd);
                o->ended = true;
        } else if (!cJSON_GetObjectItemCaseSensitive(j, "tap") && !g_json) {
                const char *t = jstr(j, "time", "");
                double st = 0, ms = 0;
                jnum(j, "status", &st);
                jnum(j, "duration_ms", &ms);
                const char *grpc = jstr(j, "grpc_status", NULL);
                char status[48];
                if (grpc)
                        snprintf(status, sizeof(status), "%.0f %s", st, grpc);
                else
                        snprintf(status, sizeof(status), "%.0f", st);
                /* The ids to find the request's access lines and trace by. */
                const char *rid = jstr(j, "request_id", NULL), *tid = jstr(j, "trace_id", NULL);
                printf("%s %-8s %-5s %-6s %s%s %s %.3fms %s -> %s (%s) %s%s%s%s%s\n",
                       strlen(t) > 11 ? t + 11 : t, jstr(j, "direction", "-"),
                       jstr(j, "protocol", "-"), jstr(j, "method", "-"), jstr(j, "authority", ""),
                       jstr(j, "path", "-"), status, ms, jstr(j, "source", "-"),
                       jstr(j, "destination", "-"), jstr(j, "service", "-"),
                       jstr(j, "endpoint", "-"), rid ? " request_id=" : "", rid ? rid : "",
                       tid ? " trace_id=" : "", tid ? tid : "");
                o->events++;
        }
        fflush(stdout);
        cJSON_Delete(j);
}

static size_t tap_sink(const char *data, size_t len, void *arg)
{
        size_t used = 0;
        for (;;) {
                const char *nl = memchr(data + used, '\n', len - used);
                if (!nl)
                        break;
                size_t n = (size_t)(nl - data - used);
                if (n)
                        tap_line(data + used, n, arg);
                used += n + 1;
        }
        return used;
}

/* `shuntctl tap [--service S] [--direction D] [--protocol P] [--method M]
 * [--path PREFIX] [--status S] [--source ID-PREFIX] [--max N] [--seconds S]`:
 * streams GET /tap, one line per request that matches. */
static int cmd_tap(int argc, char **argv)
{
        static const char *const keys[] = {"service", "direction", "protocol", "method", "path",
                                           "source",  "status",    "max",      "seconds"};
        struct strbuf q;
        strbuf_init(&q);
        strbuf_append(&q, "/tap");
        size_t base = q.len;
        long seconds = 30;
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--json") == 0) {
                        g_json = true;
                        continue;
                }
                if (strcmp(a, "--admin") == 0 && i + 1 < argc) {
                        g_admin = argv[++i];
                        continue;
                }
                bool known = false;
                for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]) && !known; k++) {
                        if (strncmp(a, "--", 2) != 0 || strcmp(a + 2, keys[k]) != 0)
                                continue;
                        if (i + 1 >= argc)
                                die_usage("tap: %s needs a value", a);
                        known = true;
                        struct strbuf part;
                        strbuf_init(&part);
                        query_add(&part, keys[k], argv[++i]);
                        strbuf_append(&q, q.len == base ? "?" : "&");
                        strbuf_append(&q, part.data + 1);
                        strbuf_free(&part);
                        if (strcmp(keys[k], "seconds") == 0)
                                seconds = atol(argv[i]);
                }
                if (!known)
                        die_usage("tap: unknown or incomplete option '%s'", a);
        }
        if (q.truncated)
                die("out of memory");
        struct tap_out o = {0};
        struct http_response r;
        /* shuntd ends the stream after --seconds; a stream silent for longer
         * than that (and a margin) is a dead one. */
        int idle_ms = (int)((seconds > 0 && seconds < 3600 ? seconds : 600) * 1000 + TIMEOUT_MS);
        http_exchange("GET", q.data, NULL, &r, tap_sink, &o, idle_ms);
        strbuf_free(&q);
        if (r.status != 200) {
                cJSON *e = cJSON_Parse(r.body);
                const char *msg =
                    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "error"));
                fprintf(stderr, "shuntctl: shuntd admin at %s answered %d to GET /tap%s%s\n",
                        g_admin, r.status, msg ? ": " : "", msg ? msg : "");
                cJSON_Delete(e);
                free(r.body);
                return 1;
        }
        if (r.body_len)
                tap_sink(r.body, r.body_len, &o);
        free(r.body);
        if (!o.ended) {
                fprintf(stderr, "shuntctl: the tap stream ended without its last line\n");
                return 1;
        }
        return 0;
}

static int cmd_check(int argc, char **argv)
{
        struct check_options o = {.admin = g_admin};
        bool strict = false;
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "--pre") == 0) {
                        o.pre = true;
                } else if (strcmp(a, "--strict") == 0) {
                        strict = true;
                } else if (strcmp(a, "--json") == 0) {
                        g_json = true;
                } else if (strcmp(a, "--admin") == 0 && i + 1 < argc) {
                        o.admin = argv[++i];
                } else if (strcmp(a, "--pin-root") == 0 && i + 1 < argc) {
                        o.pin_root = argv[++i];
                } else if (strcmp(a, "--cert-warn") == 0 && i + 1 < argc) {
                        uint64_t ms;
                        if (parse_duration_ms(argv[++i], &ms) < 0 || ms < 1000)
                                die_usage("--cert-warn %s: want a duration of at least 1s, "
                                          "e.g. 6h",
                                          argv[i]);
                        o.cert_warn_s = (int64_t)(ms / 1000);
                } else {
                        die_usage("check: unknown or incomplete option '%s'", a);
                }
        }
        struct endpoint ep;
        if (parse_endpoint(o.admin, &ep) < 0)
                die_usage("invalid admin address '%s' (want HOST:PORT, e.g. %s)", o.admin,
                          DEFAULT_ADMIN);
        struct check_report *r = check_run(&o);
        if (!r)
                die("out of memory");
        struct strbuf out;
        strbuf_init(&out);
        check_report_write(r, g_json, strict, &out);
        if (out.truncated)
                die("out of memory");
        fwrite(out.data, 1, out.len, stdout);
        strbuf_free(&out);
        enum check_status worst = check_report_worst(r);
        check_report_free(r);
        return worst == CHECK_FAIL || (strict && worst == CHECK_WARN) ? 1 : 0;
}

/* `shuntctl cleanup [--pin-root DIR] [--force]`: removes the capture a
 * shuntd left behind (killed with -9, or a pod whose proxy is gone while its
 * init container's capture stays): every outbound connect of the pod is
 * refused until then. Refused while a shuntd answers at the admin address,
 * since that one owns the capture (SIGTERM removes it; --force anyway). */
static int cmd_cleanup(int argc, char **argv)
{
        const char *pin_root = SHUNT_PIN_ROOT;
        bool force = false;
        for (int i = 0; i < argc; i++) {
                if (strcmp(argv[i], "--force") == 0)
                        force = true;
                else if (strcmp(argv[i], "--pin-root") == 0 && i + 1 < argc)
                        pin_root = argv[++i];
                else
                        die_usage("cleanup: unknown or incomplete option '%s'", argv[i]);
        }
        struct endpoint ep;
        char err[512];
        if (parse_endpoint(g_admin, &ep) < 0)
                die_usage("invalid admin address '%s' (want HOST:PORT, e.g. %s)", g_admin,
                          DEFAULT_ADMIN);
        int fd = connect_to(&ep, (int64_t)clock_mono_ms() + 1000, err, sizeof(err));
        if (fd >= 0) {
                close(fd);
                if (!force)
                        die("a shuntd answers at %s and owns the capture: stop it (SIGTERM "
                            "removes its capture) or pass --force",
                            g_admin);
        }
        bool v4 = ipt_installed(AF_INET), v6 = ipt_installed(AF_INET6);
        bool in4 = ipt_inbound_installed(AF_INET), in6 = ipt_inbound_installed(AF_INET6);
        struct stat st;
        bool pins = stat(pin_root, &st) == 0;
        int rc = 0;
        if (v4 || v6 || in4 || in6) {
                if (ipt_remove(err, sizeof(err)) < 0) {
                        fprintf(stderr, "shuntctl: removing the iptables capture failed: %s\n",
                                err);
                        rc = 1;
                } else {
                        printf("removed the iptables capture (%s%s%s)\n", v4 || in4 ? "IPv4" : "",
                               (v4 || in4) && (v6 || in6) ? ", " : "", v6 || in6 ? "IPv6" : "");
                }
        }
        if (pins) {
                int r = bpfcap_remove_pins(pin_root);
                if (r < 0) {
                        fprintf(stderr,
                                "shuntctl: removing the eBPF capture pinned in %s failed: %s\n",
                                pin_root, strerror(-r));
                        rc = 1;
                } else {
                        printf("removed the eBPF capture pinned in %s\n", pin_root);
                }
        }
        if (!rc && !pins && !(v4 || v6 || in4 || in6))
                printf("nothing to remove: no capture chains, nothing pinned in %s\n", pin_root);
        return rc;
}

static int cmd_log_level(const char *level)
{
        enum log_level lv;
        if (log_level_parse(level, &lv) < 0)
                die_usage("invalid log level '%s' (allowed: debug, info, warn, error)", level);
        cJSON *j = fetch("POST", "/admin/log-level", level);
        printf("log level: %s\n", jstr(j, "log_level", level));
        cJSON_Delete(j);
        return 0;
}

int main(int argc, char **argv)
{
        if (shunt_version_flag(argc, argv, "shuntctl"))
                return 0;
        const char *env = getenv("SHUNTCTL_ADMIN");
        if (env && *env)
                g_admin = env;
        const char *cmd = NULL;
        const char *args[4];
        int nargs = 0;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
                        fputs(usage_text, stdout);
                        return 0;
                } else if (strcmp(a, "--json") == 0) {
                        g_json = true;
                } else if (strcmp(a, "--admin") == 0) {
                        if (i + 1 >= argc)
                                die_usage("--admin needs HOST:PORT");
                        g_admin = argv[++i];
                } else if (strncmp(a, "--admin=", 8) == 0) {
                        g_admin = a + 8;
                } else if (a[0] == '-' && a[1]) {
                        die_usage("unknown option '%s'", a);
                } else if (!cmd && strcmp(a, "check") == 0) {
                        return cmd_check(argc - i - 1, argv + i + 1);
                } else if (!cmd && strcmp(a, "cleanup") == 0) {
                        return cmd_cleanup(argc - i - 1, argv + i + 1);
                } else if (!cmd && strcmp(a, "top") == 0) {
                        return cmd_top(argc - i - 1, argv + i + 1);
                } else if (!cmd && strcmp(a, "tap") == 0) {
                        return cmd_tap(argc - i - 1, argv + i + 1);
                } else if (!cmd) {
                        cmd = a;
                } else if (nargs < 4) {
                        args[nargs++] = a;
                } else {
                        die_usage("too many arguments");
                }
        }
        if (!cmd)
                die_usage("no command given");
        struct endpoint ep;
        if (parse_endpoint(g_admin, &ep) < 0)
                die_usage("invalid admin address '%s' (want HOST:PORT, e.g. %s)", g_admin,
                          DEFAULT_ADMIN);

        struct {
                const char *name;
                int nargs;
                const char *argname;
        } const cmds[] = {{"status", 0, NULL},
                          {"rules", 0, NULL},
                          {"conns", 0, NULL},
                          {"config", 0, NULL},
                          {"log-level", 1, "LEVEL"},
                          {"endpoints", -1, "[SERVICE]"},
                          {"maps", 0, NULL},
                          {"certs", 0, NULL},
                          {"authz", 0, NULL},
                          {"ready", -1, "[SECONDS]"},
                          {"wait-idle", -1, "[SECONDS]"},
                          {"pods", 0, NULL},
                          {"reload", 0, NULL},
                          {"drain", 0, NULL},
                          {"routes", -1, "[SERVICE]"}};
        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
                if (strcmp(cmd, cmds[i].name) != 0)
                        continue;
                if (cmds[i].nargs < 0 ? nargs > 1 : nargs != cmds[i].nargs) {
                        if (cmds[i].nargs < 0)
                                die_usage("'%s' takes at most one argument, %s", cmd,
                                          cmds[i].argname);
                        if (cmds[i].nargs)
                                die_usage("'%s' needs %s", cmd, cmds[i].argname);
                        die_usage("'%s' takes no arguments", cmd);
                }
                switch (i) {
                case 0:
                        return cmd_status();
                case 1:
                        return cmd_rules();
                case 2:
                        return cmd_conns();
                case 3:
                        return cmd_config();
                case 4:
                        return cmd_log_level(args[0]);
                case 6:
                        return cmd_maps();
                case 7:
                        return cmd_certs();
                case 8:
                        return cmd_authz();
                case 9:
                        return cmd_ready(nargs ? args[0] : NULL);
                case 10:
                        return cmd_wait_idle(nargs ? args[0] : NULL);
                case 11:
                        return cmd_pods();
                case 12:
                        return cmd_reload();
                case 13:
                        return cmd_drain();
                case 14:
                        return cmd_routes(nargs ? args[0] : NULL);
                default:
                        return cmd_endpoints(nargs ? args[0] : NULL);
                }
        }
        die_usage("unknown command '%s'", cmd);
}

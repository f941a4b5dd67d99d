// SPDX-License-Identifier: Apache-2.0
/* check: the decisions of the checks that read shuntd's admin API, fed from
 * a small HTTP responder with the JSON shuntd writes in states hard to reach
 * with a real one (renewal failing for minutes, a Kubernetes source that
 * never synced, a source stale for long, draining); the CA check against a
 * real TLS server (openssl s_server) verified with the right and the wrong
 * bundle; shuntd's capabilities read from a real process named shuntd, with
 * and without capabilities. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <pthread.h>

#include "check/check.h"
#include "test_tls_util.h"

/* ---- a responder: path -> status and body --------------------------------------- */

#define MAX_ROUTES 8

struct route {
        const char *path;
        int status;
        char body[4096];
};

struct responder {
        int lfd;
        uint16_t port;
        pthread_t thread;
        volatile int stop;
        struct route routes[MAX_ROUTES];
        int n;
};

static void *responder_main(void *arg)
{
        struct responder *r = arg;
        while (!r->stop) {
                struct pollfd p = {.fd = r->lfd, .events = POLLIN};
                if (poll(&p, 1, 50) <= 0)
                        continue;
                int fd = accept(r->lfd, NULL, NULL);
                if (fd < 0)
                        continue;
                char req[8192];
                size_t got = 0;
                while (got < sizeof(req) - 1) {
                        ssize_t n = read(fd, req + got, sizeof(req) - 1 - got);
                        if (n <= 0)
                                break;
                        got += (size_t)n;
                        req[got] = '\0';
                        if (strstr(req, "\r\n\r\n"))
                                break;
                }
                req[got] = '\0';
                char path[256] = "";
                sscanf(req, "GET %255s", path);
                int status = 404;
                const char *body = "{\"error\":\"not found\"}";
                for (int i = 0; i < r->n; i++) {
                        if (strcmp(r->routes[i].path, path) == 0) {
                                status = r->routes[i].status;
                                body = r->routes[i].body;
                        }
                }
                char head[256];
                int hl = snprintf(head, sizeof(head),
                                  "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                                  "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                                  status, strlen(body));
                if (write(fd, head, (size_t)hl) != hl || write(fd, body, strlen(body)) < 0)
                        fprintf(stderr, "responder: short write\n");
                close(fd);
        }
        return NULL;
}

static void route(struct responder *r, const char *path, int status, const char *fmt, ...)
{
        assert_true(r->n < MAX_ROUTES);
        struct route *rt = &r->routes[r->n++];
        rt->path = path;
        rt->status = status;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(rt->body, sizeof(rt->body), fmt, ap);
        va_end(ap);
}

/* A shuntd that answers /health and /ready, with redirect off (nothing of
 * this host's nat table is read) and the given pid, /certs, /debug/cache
 * and extra /config keys. */
static void daemon_routes(struct responder *r, long pid, const char *capture, const char *certs,
                          const char *cache, const char *config_extra)
{
        route(r, "/health", 200, "{\"status\":\"ok\"}");
        route(r, "/ready", 200, "{\"ready\":true}");
        route(r, "/status", 200,
              "{\"version\":\"0.1.0\",\"pid\":%ld,\"uptime_s\":5,\"redirect_mode\":\"off\","
              "\"capture\":\"%s\",\"ready\":true,\"draining\":false,"
              "\"rules\":{\"installed\":false,\"ipv6\":false,\"inbound_only\":false}}",
              pid, capture);
        route(r, "/config", 200,
              "{\"redirect\":{\"value\":\"off\",\"source\":\"flag\"},"
              "\"service_discovery.type\":{\"value\":\"kubernetes\",\"source\":\"flag\"}%s%s}",
              config_extra ? "," : "", config_extra ? config_extra : "");
        route(r, "/certs", 200, "%s",
              certs ? certs : "{\"mode\":\"disabled\",\"identity\":null,\"source\":null}");
        route(r, "/debug/cache", 200, "%s",
              cache ? cache : "{\"registry\":{\"services\":0,\"endpoints\":0,\"sources\":[]}}");
}

static void responder_start(struct responder *r)
{
        r->lfd = tu_listen(&r->port);
        assert_int_equal(pthread_create(&r->thread, NULL, responder_main, r), 0);
}

static void responder_stop(struct responder *r)
{
        r->stop = 1;
        pthread_join(r->thread, NULL);
        close(r->lfd);
}

/* ---- running a check ------------------------------------------------------------------ */

struct outcome {
        cJSON *json;
        enum check_status worst;
};

static struct outcome run(uint16_t port, const char *pin_root)
{
        char admin[64];
        snprintf(admin, sizeof(admin), "127.0.0.1:%u", port);
        struct check_options o = {.admin = admin, .pin_root = pin_root};
        struct check_report *rep = check_run(&o);
        assert_non_null(rep);
        struct strbuf sb;
        strbuf_init(&sb);
        check_report_write(rep, true, false, &sb);
        struct outcome out = {.json = cJSON_Parse(sb.data), .worst = check_report_worst(rep)};
        assert_non_null(out.json);
        strbuf_free(&sb);
        check_report_free(rep);
        return out;
}

/* The check's status, and its detail and advice joined in text. */
static const char *result(const struct outcome *o, const char *name, char *text, size_t len)
{
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(o->json, "checks"))
        {
                if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(c, "name")), name) != 0)
                        continue;
                snprintf(text, len, "%s; %s",
                         cJSON_GetStringValue(cJSON_GetObjectItem(c, "detail")),
                         cJSON_GetStringValue(cJSON_GetObjectItem(c, "advice")));
                return cJSON_GetStringValue(cJSON_GetObjectItem(c, "status"));
        }
        return "absent";
}

#define assert_contains(hay, needle)                                                               \
        do {                                                                                       \
                if (!strstr((hay), (needle)))                                                      \
                        fail_msg("'%s' not in '%s'", (needle), (hay));                             \
        } while (0)

static void iso(time_t t, char *buf, size_t len)
{
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* /certs of a 24 h certificate with left seconds to go and a rotation state. */
static void certs_json(char *out, size_t len, long left, const char *state, int fails,
                       const char *extra)
{
        time_t now = time(NULL);
        char nb[32], na[32];
        iso(now + left - 86400, nb, sizeof(nb));
        iso(now + left, na, sizeof(na));
        snprintf(out, len,
                 "{\"mode\":\"permissive\",\"identity\":\"spiffe://cluster.local/ns/a/sa/b\","
                 "\"source\":\"builtin-ca\",\"current\":{\"serial\":\"abcd\",\"not_before\":\"%s\","
                 "\"not_after\":\"%s\",\"expires_in_s\":%ld},\"rotation\":{\"state\":\"%s\","
                 "\"consecutive_failures\":%d,\"last_error\":%s},\"trust_bundle\":[]%s}",
                 nb, na, left, state, fails, fails ? "\"CA unreachable\"" : "null",
                 extra ? extra : "");
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_admin_unreachable(void **state)
{
        int held;
        uint16_t port = tu_closed_port(&held);
        struct outcome o = run(port, NULL);
        char t[2048];
        assert_string_equal(result(&o, "admin", t, sizeof(t)), "fail");
        assert_contains(t, "cannot reach shuntd admin at 127.0.0.1:");
        assert_contains(t, "start shuntd");
        /* Nothing is asked of a daemon that is not there. */
        assert_string_equal(result(&o, "certificate", t, sizeof(t)), "absent");
        assert_int_equal(o.worst, CHECK_FAIL);
        cJSON_Delete(o.json);
        close(held);
}

static void test_draining(void **state)
{
        struct responder r = {0};
        route(&r, "/health", 200, "{}");
        route(&r, "/ready", 503, "{\"ready\":false}");
        route(&r, "/status", 200, "{\"pid\":1,\"draining\":true,\"redirect_mode\":\"off\"}");
        responder_start(&r);
        struct outcome o = run(r.port, NULL);
        char t[2048];
        assert_string_equal(result(&o, "admin", t, sizeof(t)), "fail");
        assert_contains(t, "/health answers 200 but /ready 503 (draining)");
        assert_contains(t, "draining its connections");
        cJSON_Delete(o.json);
        responder_stop(&r);
}

static void test_certificate_states(void **state)
{
        static const struct {
                long left;
                const char *state;
                int fails;
                const char *status, *want;
        } cases[] = {
            {20 * 3600, "ok", 0, "pass", "serial abcd valid until"},
            {3 * 3600, "ok", 0, "warn", "under the 4h00m threshold"},
            {20 * 3600, "retrying", 3, "warn",
             "renewal failing (3 times in a row): CA unreachable"},
            {20 * 3600, "retrying", 12, "fail", "renewal failing (12 times in a row)"},
            {-60, "expired", 0, "fail", "expired at"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char certs[2048];
                certs_json(certs, sizeof(certs), cases[i].left, cases[i].state, cases[i].fails,
                           NULL);
                struct responder r = {0};
                daemon_routes(&r, 1, "self", certs, NULL, NULL);
                responder_start(&r);
                struct outcome o = run(r.port, NULL);
                char t[2048];
                const char *st = result(&o, "certificate", t, sizeof(t));
                if (strcmp(st, cases[i].status) != 0 || !strstr(t, cases[i].want))
                        fail_msg("case %zu: %s: %s", i, st, t);
                if (strcmp(st, "pass") != 0)
                        assert_contains(t, "the built-in CA did not renew it");
                cJSON_Delete(o.json);
                responder_stop(&r);
        }
}

static void test_discovery_states(void **state)
{
        static const struct {
                const char *source;
                const char *status, *want;
        } cases[] = {
            {"{\"name\":\"kubernetes\",\"type\":\"kubernetes\",\"synced\":false,\"stale\":true,"
             "\"staleness_seconds\":0,\"failures\":7,\"last_error\":\"401 Unauthorized\"}",
             "fail",
             "kubernetes source kubernetes never synced (7 attempts): 401 Unauthorized; "
             "check the API server address and credentials"},
            {"{\"name\":\"consul\",\"type\":\"consul\",\"synced\":true,\"stale\":true,"
             "\"staleness_seconds\":30,\"last_sync\":\"T\",\"last_error\":\"connection refused\"}",
             "warn",
             "consul source consul stale for 30s (last sync T, 2 stale endpoints): "
             "connection refused; check service_discovery.consul.address"},
            {"{\"name\":\"consul\",\"type\":\"consul\",\"synced\":true,\"stale\":true,"
             "\"staleness_seconds\":400,\"last_sync\":\"T\",\"last_error\":\"timeout\"}",
             "fail", "stale for 6m40s"},
            {"{\"name\":\"kubernetes\",\"type\":\"kubernetes\",\"synced\":true,\"stale\":false,"
             "\"staleness_seconds\":0,\"last_sync\":\"T\"}",
             "pass",
             "1 source in sync (kubernetes kubernetes, last sync T): 3 services, 5 endpoints"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char cache[2048];
                snprintf(cache, sizeof(cache),
                         "{\"registry\":{\"services\":3,\"endpoints\":5,\"stale_endpoints\":2,"
                         "\"sources\":[{\"name\":\"admin\",\"type\":\"manual\",\"synced\":true},"
                         "%s]},\"backend\":{\"type\":\"kubernetes\"}}",
                         cases[i].source);
                struct responder r = {0};
                daemon_routes(&r, 1, "self", NULL, cache, NULL);
                responder_start(&r);
                struct outcome o = run(r.port, NULL);
                char t[2048];
                const char *st = result(&o, "discovery", t, sizeof(t));
                if (strcmp(st, cases[i].status) != 0 || !strstr(t, cases[i].want))
                        fail_msg("case %zu: %s: %s", i, st, t);
                cJSON_Delete(o.json);
                responder_stop(&r);
        }
}

/* A process named shuntd (a symlink to sleep), started through wrap. */
static pid_t fake_shuntd(const char *dir, const char *wrap)
{
        char link[512], cmd[1024];
        tu_path(link, sizeof(link), dir, "shuntd");
        unlink(link);
        assert_int_equal(symlink("/bin/sleep", link), 0);
        snprintf(cmd, sizeof(cmd), "exec %s %s 30", wrap, link);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
        }
        /* Until the exec has happened, /proc/<pid>/comm is sh. */
        char path[64], comm[64] = "";
        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
        for (int i = 0; i < 200 && strcmp(comm, "shuntd\n") != 0; i++) {
                FILE *f = fopen(path, "r");
                if (f) {
                        if (!fgets(comm, sizeof(comm), f))
                                comm[0] = '\0';
                        fclose(f);
                }
                tu_sleep_ms(10);
        }
        assert_string_equal(comm, "shuntd\n");
        return pid;
}

static void test_shuntd_capabilities(void **state)
{
        char *dir = tu_mkdtemp();
        static const struct {
                const char *wrap;
                const char *capture;
                const char *status, *want;
        } cases[] = {
            /* capture init and every capability of root: fails. */
            {"", "init", "fail", "although capture is installed by an init container"},
            /* capture init, uid 1337 and nothing: passes. */
            {"setpriv --reuid 1337 --regid 1337 --clear-groups --inh-caps=-all "
             "--bounding-set=-all --no-new-privs",
             "init", "pass", "holds no capability (capture init"},
            /* capture self with redirect off needs nothing. */
            {"setpriv --reuid 1337 --regid 1337 --clear-groups --inh-caps=-all "
             "--bounding-set=-all --no-new-privs",
             "self", "pass", "holds none (it installs its own capture: --redirect off"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                pid_t pid = fake_shuntd(dir, cases[i].wrap);
                struct responder r = {0};
                daemon_routes(&r, (long)pid, cases[i].capture, NULL, NULL, NULL);
                responder_start(&r);
                struct outcome o = run(r.port, NULL);
                char t[2048];
                const char *st = result(&o, "shuntd-capabilities", t, sizeof(t));
                if (strcmp(st, cases[i].status) != 0 || !strstr(t, cases[i].want))
                        fail_msg("case %zu: %s: %s", i, st, t);
                if (i == 0)
                        assert_contains(t, "drop every capability in the proxy container");
                cJSON_Delete(o.json);
                responder_stop(&r);
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
        }
        /* Another pid namespace: the pid names some other process. */
        struct responder r = {0};
        daemon_routes(&r, (long)getpid(), "init", NULL, NULL, NULL);
        responder_start(&r);
        struct outcome o = run(r.port, NULL);
        char t[2048];
        assert_string_equal(result(&o, "shuntd-capabilities", t, sizeof(t)), "warn");
        assert_contains(t, "not shuntd (another pid namespace)");
        cJSON_Delete(o.json);
        responder_stop(&r);
        tu_rmrf(dir);
        free(dir);
}

static void sh(const char *dir, const char *fmt, ...)
{
        char cmd[2048], line[1800];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        snprintf(cmd, sizeof(cmd), "cd '%s' && (%s) >/dev/null 2>&1", dir, line);
        if (system(cmd) != 0)
                fail_msg("failed: %s", line);
}

/* A root CA and a server certificate for 127.0.0.1 signed by it. */
static void make_ca(const char *dir, const char *name, bool server)
{
        sh(dir,
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
           "-subj /CN=%s -keyout %s-key.pem -out %s.pem",
           name, name, name);
        if (!server)
                return;
        sh(dir,
           "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=shunt-ca "
           "-keyout srv-key.pem -out srv.csr && printf 'subjectAltName=IP:127.0.0.1\\n' > ext && "
           "openssl x509 -req -in srv.csr -CA %s.pem -CAkey %s-key.pem -CAcreateserial -days 1 "
           "-extfile ext -out srv.pem",
           name, name);
}

static void test_ca_reachability(void **state)
{
        char *dir = tu_mkdtemp();
        make_ca(dir, "root", true);
        make_ca(dir, "other", false);
        sh(dir, "echo ok > healthz");
        char *args[] = {"-cert", "srv.pem", "-key", "srv-key.pem", "-tls1_3", "-WWW", NULL};
        uint16_t ca_port;
        int srv_out, held = -1;
        pid_t srv = tu_s_server(args, dir, &ca_port, &srv_out);
        assert_int_not_equal(ca_port, 0);

        static const struct {
                const char *bundle;
                bool up, refused;
                const char *status, *want;
        } cases[] = {
            {"root.pem", true, false, "pass", "/healthz answers 200 over TLS verified with"},
            {"root.pem", true, true, "warn",
             "last issuance 2026-01-01T00:00:00Z: token_invalid; "
             "the CA refused the service-account token"},
            {"other.pem", true, false, "fail", "GET https://127.0.0.1:"},
            {"missing.pem", true, false, "warn", "No such file or directory"},
            {"root.pem", false, false, "fail", "GET https://127.0.0.1:"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                if (!cases[i].up && srv > 0) {
                        kill(srv, SIGKILL);
                        waitpid(srv, NULL, 0);
                        srv = 0;
                        /* Held, never listened on: refused, and no other
                         * process can start listening there meanwhile. */
                        held = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        int one = 1; /* past the server's TIME_WAIT sockets */
                        setsockopt(held, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                        struct sockaddr_in a = {.sin_family = AF_INET,
                                                .sin_port = htons(ca_port),
                                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
                        assert_int_equal(bind(held, (struct sockaddr *)&a, sizeof(a)), 0);
                }
                char config[1024], certs[2048], extra[600];
                snprintf(config, sizeof(config),
                         "\"mtls.ca_address\":{\"value\":\"https://127.0.0.1:%u\"},"
                         "\"mtls.ca_bundle\":{\"value\":\"%s/%s\"}",
                         ca_port, dir, cases[i].bundle);
                snprintf(extra, sizeof(extra),
                         ",\"ca_address\":\"https://127.0.0.1:%u\",\"last_issuance\":"
                         "{\"time\":\"2026-01-01T00:00:00Z\",\"result\":\"%s\",\"ok\":%s,"
                         "\"http_status\":%d,\"message\":null}",
                         ca_port, cases[i].refused ? "token_invalid" : "issued",
                         cases[i].refused ? "false" : "true", cases[i].refused ? 401 : 200);
                certs_json(certs, sizeof(certs), 20 * 3600, "ok", 0, extra);
                struct responder r = {0};
                daemon_routes(&r, 1, "self", certs, NULL, config);
                responder_start(&r);
                struct outcome o = run(r.port, NULL);
                char t[2048];
                const char *st = result(&o, "ca", t, sizeof(t));
                if (strcmp(st, cases[i].status) != 0 || !strstr(t, cases[i].want))
                        fail_msg("case %zu: %s: %s", i, st, t);
                if (i == 0)
                        assert_contains(t, "last issuance 2026-01-01T00:00:00Z: issued");
                if (strcmp(st, "fail") == 0)
                        assert_contains(t, "certificates cannot be renewed");
                cJSON_Delete(o.json);
                responder_stop(&r);
        }
        if (srv > 0) {
                kill(srv, SIGKILL);
                waitpid(srv, NULL, 0);
        }
        close(srv_out);
        if (held >= 0)
                close(held);
        tu_rmrf(dir);
        free(dir);
}

static void test_text_output(void **state)
{
        int held;
        uint16_t port = tu_closed_port(&held);
        char admin[64];
        snprintf(admin, sizeof(admin), "127.0.0.1:%u", port);
        struct check_options o = {.admin = admin, .pre = true};
        struct check_report *rep = check_run(&o);
        struct strbuf sb;
        strbuf_init(&sb);
        check_report_write(rep, false, true, &sb);
        /* --pre: the six host checks, one line each, then the summary. */
        static const char *const names[] = {"kernel-bpf", "kernel-btf", "cgroup-v2",
                                            "iptables",   "conntrack",  "capabilities"};
        const char *p = sb.data;
        for (size_t i = 0; i < 6; i++) {
                char want[64];
                assert_true(strncmp(p, "PASS ", 5) == 0 || strncmp(p, "WARN ", 5) == 0 ||
                            strncmp(p, "FAIL ", 5) == 0);
                snprintf(want, sizeof(want), "%s: ", names[i]);
                assert_int_equal(strncmp(p + 5, want, strlen(want)), 0);
                p = strchr(p, '\n') + 1;
        }
        assert_int_equal(strncmp(p, "6 checks: ", 10), 0);
        strbuf_free(&sb);
        check_report_free(rep);
        close(held);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_admin_unreachable),   cmocka_unit_test(test_draining),
            cmocka_unit_test(test_certificate_states),  cmocka_unit_test(test_discovery_states),
            cmocka_unit_test(test_shuntd_capabilities), cmocka_unit_test(test_ca_reachability),
            cmocka_unit_test(test_text_output),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

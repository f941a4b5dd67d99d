// SPDX-License-Identifier: Apache-2.0
/* Traffic route microbenchmark: nanoseconds per request pick
 * (route_pick_http + route_release, one worker, warm caches) for a service
 * with no routes (today's pick) and with 1, 100 and 1,000 rules, for a
 * request that takes the first rule in precedence order, one that takes
 * the last in that order (every rule tried, before the path index), and
 * the same with a header and a regex match on every rule.
 *
 *   route_bench [picks]      default 1,000,000 picks per row
 *
 * The registry is a real file registry text parsed by disc_file_parse, the
 * route table the one shuntd builds. Build in release mode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench_util.h"
#include "core/config.h"
#include "core/log.h"
#include "core/sockaddr.h"
#include "discovery/file.h"
#include "discovery/registry.h"
#include "route/route.h"

/* n rules on /p<i> (PathPrefix), each with a header match when headers and
 * a regex on the header value when regex; every rule splits 90/10 between
 * v1 and v2 of "reviews". */
static char *registry_text(unsigned n, bool headers, bool regex)
{
        size_t cap = 4096 + (size_t)n * 512;
        char *t = malloc(cap);
        size_t off = (size_t)snprintf(
            t, cap,
            "{\"services\": [{\"name\": \"reviews\", \"ports\": [{\"port\": 80, \"target_port\": "
            "8080}], \"endpoints\": [{\"address\": \"10.0.0.1\", \"labels\": {\"version\": "
            "\"v1\"}}, {\"address\": \"10.0.0.2\", \"labels\": {\"version\": \"v2\"}}]},"
            " {\"name\": \"web\", \"addresses\": [\"10.96.0.1\"], \"ports\": [{\"port\": 80, "
            "\"target_port\": 8080}], \"endpoints\": [{\"address\": \"10.0.0.3\"}]");
        if (n) {
                off += (size_t)snprintf(t + off, cap - off,
                                        ", \"routes\": [{\"name\": \"r\", \"rules\": [");
                for (unsigned i = 0; i < n; i++) {
                        char hdr[160] = "";
                        if (headers)
                                snprintf(hdr, sizeof(hdr),
                                         ", \"headers\": [{\"type\": \"%s\", \"name\": "
                                         "\"x-user\", \"value\": \"%s\"}]",
                                         regex ? "RegularExpression" : "Exact",
                                         regex ? "user-[0-9]+" : "user-1");
                        off += (size_t)snprintf(
                            t + off, cap - off,
                            "%s{\"matches\": [{\"path\": {\"value\": \"/p%u\"}%s}], "
                            "\"backendRefs\": [{\"name\": \"reviews\", \"weight\": 90, "
                            "\"selector\": {\"version\": \"v1\"}}, {\"name\": \"reviews\", "
                            "\"weight\": 10, \"selector\": {\"version\": \"v2\"}}]}",
                            i ? "," : "", i, hdr);
                }
                off += (size_t)snprintf(t + off, cap - off, "]}]");
        }
        snprintf(t + off, cap - off, "}]}");
        return t;
}

static bool header(void *ctx, const char *name, const char **v, size_t *n)
{
        (void)ctx;
        if (strcasecmp(name, "x-user"))
                return false;
        *v = "user-1";
        *n = 6;
        return true;
}

static double bench(unsigned n, bool headers, bool regex, const char *path, unsigned picks,
                    const struct shunt_config *cfg)
{
        char *text = registry_text(n, headers, regex);
        struct disc_specs specs;
        char err[512];
        if (disc_file_parse("bench", text, strlen(text), &specs, err, sizeof(err))) {
                fprintf(stderr, "route_bench: %s\n", err);
                exit(1);
        }
        free(text);
        struct disc_registry *r = disc_registry_new(NULL);
        int src = disc_source_add(r, "file", DISC_SOURCE_FILE);
        if (disc_registry_replace(r, src, specs.svcs, specs.n) || disc_registry_publish(r)) {
                fprintf(stderr, "route_bench: registry refused the services\n");
                exit(1);
        }
        disc_specs_free(&specs);
        const struct disc_snapshot *snap = disc_registry_acquire(r);
        struct route_table *t = route_table_build(snap, cfg, NULL);
        struct route_workers *rw = NULL;
        struct sockaddr_storage dst, client, up;
        sockaddr_from_string("10.96.0.1", 80, &dst);
        sockaddr_from_string("10.1.0.1", 40000, &client);
        struct dr_request req = {
            .method = DR_METHOD_GET, .path = path, .path_len = strlen(path), .header = header};
        uint64_t t0 = now_ns();
        for (unsigned i = 0; i < picks; i++) {
                struct route_use use;
                if (route_pick_http(t, &rw, 1, &dst, &client, NULL, &req, &up, &use) !=
                    ROUTE_ENDPOINT) {
                        fprintf(stderr, "route_bench: %s was not routed\n", path);
                        exit(1);
                }
                route_release(&use);
        }
        double ns = (double)(now_ns() - t0) / picks;
        route_workers_free(rw);
        snapshot_unref(route_table_snapshot(t));
        disc_snapshot_release(snap);
        disc_registry_free(r);
        return ns;
}

int main(int argc, char **argv)
{
        unsigned picks = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 1000000;
        log_set_level(LOG_WARN);
        char *av[] = {"shuntd", NULL};
        char *envp[] = {NULL};
        struct shunt_config *cfg;
        char err[256];
        if (config_load(1, av, envp, &cfg, err, sizeof(err))) {
                fprintf(stderr, "route_bench: %s\n", err);
                return 1;
        }
        printf("%-34s %10s\n", "case", "ns/request");
        printf("%-34s %10.1f\n", "no routes (today's pick)",
               bench(0, false, false, "/p0", picks, cfg));
        static const unsigned sizes[] = {1, 100, 1000};
        for (size_t k = 0; k < 3; k++) {
                unsigned n = sizes[k];
                /* Longer prefixes rank first, then rule order: /p100 (or
                 * /p10, /p0) is tried first and /p9 (or /p0) last. */
                const char *first = n >= 1000 ? "/p100/x" : n >= 100 ? "/p10/x" : "/p0/x";
                const char *last = n >= 10 ? "/p9/x" : "/p0/x";
                char name[64];
                snprintf(name, sizeof(name), "%u rules, path, first rule", n);
                printf("%-34s %10.1f\n", name, bench(n, false, false, first, picks, cfg));
                snprintf(name, sizeof(name), "%u rules, path, last rule", n);
                printf("%-34s %10.1f\n", name, bench(n, false, false, last, picks, cfg));
                snprintf(name, sizeof(name), "%u rules, path+header, last", n);
                printf("%-34s %10.1f\n", name, bench(n, true, false, last, picks, cfg));
                snprintf(name, sizeof(name), "%u rules, path+regex header, last", n);
                printf("%-34s %10.1f\n", name, bench(n, true, true, last, picks, cfg));
        }
        snapshot_unref(&cfg->snap);
        return 0;
}

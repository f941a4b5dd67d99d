// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for traffic routes: the input is the "routes" value of a
 * service in a fixed two-service registry file (disc_file_parse, the path
 * every route from the file takes). When it is accepted, requests are
 * matched against every port table (path, method, header and query), the
 * chosen rule's rewrite and redirect are computed and the table rendered;
 * checks:
 *  - an accepted file has routes whose tables hold only its own matches,
 *    in precedence order (an Exact path never after a PathPrefix);
 *  - a rewrite or redirect result is NUL-terminated and starts with '/'
 *    (rewrite) or a scheme (redirect);
 *  - a rejected file leaves an error message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "discovery/file.h"
#include "discovery/routes.h"

static bool hdr(void *ctx, const char *name, const char **v, size_t *n)
{
        (void)ctx;
        (void)name;
        *v = "tester";
        *n = 6;
        return true;
}

static void check(const struct dr_routes *r)
{
        static const char *const paths[] = {"/", "/api", "/api/v2/x?q=1&v=2", "/a.b/C", "/x%20y"};
        for (uint32_t p = 0; p < r->n_ports; p++) {
                const struct dr_port_table *t = &r->ports[p];
                int last_rank = 0;
                for (uint32_t i = 0; i < t->n; i++) {
                        const struct dr_match *m = t->matches[i];
                        if (m < r->matches || m >= r->matches + r->n_matches)
                                abort();
                        int rank = m->path_type == DR_PATH_EXACT   ? 0
                                   : m->path_type == DR_PATH_REGEX ? 1
                                                                   : 2;
                        if (rank < last_rank)
                                abort();
                        last_rank = rank;
                }
                for (size_t k = 0; k < sizeof(paths) / sizeof(paths[0]); k++) {
                        struct dr_request req = {.method = (int)(k % DR_METHOD__COUNT),
                                                 .path = paths[k],
                                                 .path_len = strlen(paths[k]),
                                                 .header = hdr};
                        const struct dr_match *m = dr_match_request(t, &req);
                        if (!m)
                                continue;
                        const struct dr_rule *u = &r->rules[m->rule];
                        char buf[4096];
                        if (dr_rewrite_path(u, m, req.path, req.path_len, buf, sizeof(buf)) >= 0 &&
                            buf[0] != '/')
                                abort();
                        if (u->redirect &&
                            dr_redirect_location(u, m, "http", "h:1", 3, req.path, req.path_len,
                                                 buf, sizeof(buf)) >= 0 &&
                            !strstr(buf, "://"))
                                abort();
                        if (u->n_backends && dr_pick_backend(u, UINT64_MAX) >= (int)u->n_backends)
                                abort();
                }
                struct strbuf sb;
                strbuf_init(&sb);
                dr_render_port(r, t->port, &sb);
                strbuf_free(&sb);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const char head[] =
            "{\"services\": [{\"name\": \"web\", \"ports\": [{\"port\": 80}, {\"port\": 81}], "
            "\"routes\": ";
        static const char tail[] =
            "}, {\"name\": \"reviews\", \"ports\": [{\"port\": 80}], \"endpoints\": "
            "[{\"address\": \"10.0.0.1\", \"labels\": {\"version\": \"v1\"}}]}]}";
        log_set_level(LOG_ERROR);
        size_t n = sizeof(head) - 1 + size + sizeof(tail) - 1;
        char *text = malloc(n + 1);
        if (!text)
                return 0;
        memcpy(text, head, sizeof(head) - 1);
        memcpy(text + sizeof(head) - 1, data, size);
        memcpy(text + sizeof(head) - 1 + size, tail, sizeof(tail));
        struct disc_specs specs;
        char err[512] = "";
        if (disc_file_parse("fuzz", text, n, &specs, err, sizeof(err)) == 0) {
                if (specs.svcs[0].routes)
                        check(specs.svcs[0].routes);
                disc_specs_free(&specs);
        } else if (!err[0]) {
                abort();
        }
        free(text);
        return 0;
}

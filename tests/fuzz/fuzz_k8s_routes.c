// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for Kubernetes routes (discovery/k8s_routes.c): the input is
 * the object of a watch event, applied as an HTTPRoute (first byte even)
 * or a GRPCRoute (odd) to a cache that holds two Services, then as a
 * MODIFIED event of the same bytes, then the cache is built (each route
 * translated, validated and attached) and the routes that cannot be
 * applied rendered. Checks:
 *  - applying never fails except as a skipped event with a reason;
 *  - the build succeeds, and an attached route set has its routes only on
 *    ports of its Service;
 *  - the "rejected" list is valid JSON. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/log.h"
#include "discovery/k8s.h"
#include "discovery/routes.h"

static const char services[] =
    "{\"kind\":\"ServiceList\",\"metadata\":{\"resourceVersion\":\"5\"},\"items\":["
    "{\"metadata\":{\"name\":\"reviews\",\"namespace\":\"shop\"},\"spec\":{\"clusterIP\":"
    "\"10.96.0.20\",\"ports\":[{\"name\":\"http\",\"port\":80},{\"name\":\"grpc\","
    "\"port\":9090}]}},{\"metadata\":{\"name\":\"v2\",\"namespace\":\"shop\"},\"spec\":{"
    "\"clusterIP\":\"10.96.0.21\",\"ports\":[{\"name\":\"http\",\"port\":80}]}}]}";

static void event(struct k8s_cache *c, enum k8s_kind kind, const char *type, const uint8_t *obj,
                  size_t size)
{
        size_t n = size + 64;
        char *line = malloc(n);
        if (!line)
                return;
        int h = snprintf(line, n, "{\"type\":\"%s\",\"object\":", type);
        memcpy(line + h, obj, size);
        line[h + size] = '}';
        line[h + size + 1] = '\0'; /* as the watch's buffer is (its error quotes the line) */
        char rv[K8S_MAX_RV] = "", err[512] = "";
        enum k8s_event_result r =
            k8s_cache_event(c, kind, line, (size_t)h + size + 1, rv, err, sizeof(err));
        if (r == K8S_EV_BAD && !err[0])
                abort();
        free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        log_set_level(LOG_ERROR);
        struct k8s_cache *c = k8s_cache_new();
        char rv[K8S_MAX_RV], err[256];
        if (!c || k8s_cache_list(c, K8S_SERVICES, services, strlen(services), rv, err, sizeof(err)))
                abort();
        enum k8s_kind kind = data[0] & 1 ? K8S_GRPCROUTES : K8S_HTTPROUTES;
        event(c, kind, "ADDED", data + 1, size - 1);
        event(c, kind, "MODIFIED", data + 1, size - 1);
        struct disc_service_spec *svcs;
        size_t n;
        if (k8s_cache_build(c, &svcs, &n))
                abort();
        for (size_t i = 0; i < n; i++) {
                const struct dr_routes *r = svcs[i].routes;
                for (uint32_t k = 0; r && k < r->n_routes; k++) {
                        bool known = r->routes[k].port == 0;
                        for (uint32_t p = 0; p < svcs[i].n_ports; p++)
                                known |= svcs[i].ports[p].port == r->routes[k].port;
                        if (!known)
                                abort();
                }
        }
        k8s_specs_free(svcs, n);
        struct strbuf sb;
        strbuf_init(&sb);
        k8s_cache_render_routes(c, NULL, &sb);
        cJSON *j = cJSON_ParseWithLength(sb.data ? sb.data : "", sb.len);
        if (!cJSON_IsArray(j))
                abort();
        cJSON_Delete(j);
        strbuf_free(&sb);
        k8s_cache_free(c);
        return 0;
}

// SPDX-License-Identifier: Apache-2.0
/* Fuzz target for the authorization policy parser and decision (authz/authz.h).
 *
 * The input is JSON text, read as the config file's authorization.policies
 * and as the spec of a Kubernetes AuthorizationPolicy. What must hold:
 *  - a refused array says why (one line) and adds nothing;
 *  - an accepted set stays within its bounds, and every decision for a
 *    fixed set of peers and ports is a known reason, "no identity" only
 *    for a peer without one, and "allowed" on every port no policy names;
 *  - the policies as /authz renders them, parsed again, decide every case
 *    the same way (the rendering is faithful);
 *  - a Kubernetes object with the input as its spec is kept or refused,
 *    never anything else, and builds into a set within the bounds. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authz/authz.h"
#include "core/log.h"

static void die(const char *what)
{
        fprintf(stderr, "fuzz_authz: %s\n", what);
        abort();
}

static const char *const peers[] = {
    NULL,
    "spiffe://cluster.local/ns/default/sa/client",
    "spiffe://cluster.local/ns/shop/sa/cart",
    "spiffe://cluster.local/ns/a/sa/b",
    "spiffe://partner.org/ns/x/sa/y",
    "spiffe://cluster.local/workload/odd",
};
static const uint16_t ports[] = {1, 80, 443, 8080, 9090, 65535};
#define NPEERS (sizeof(peers) / sizeof(peers[0]))
#define NPORTS (sizeof(ports) / sizeof(ports[0]))

static void decide(const struct authz *a, enum authz_reason out[NPEERS][NPORTS])
{
        for (size_t i = 0; i < NPEERS; i++)
                for (size_t j = 0; j < NPORTS; j++) {
                        struct authz_verdict v;
                        bool ok = authz_check(a, ports[j], peers[i], &v);
                        if ((unsigned)v.reason >= AUTHZ__REASONS || !v.policy)
                                die("verdict out of range");
                        if (ok != (v.reason == AUTHZ_OK))
                                die("admitted and refused at once");
                        if (v.reason == AUTHZ_NO_IDENTITY && peers[i])
                                die("no_identity for a peer with an identity");
                        if (!authz_port_protected(a, ports[j]) && !ok)
                                die("refused on a port no policy names");
                        out[i][j] = v.reason;
                }
}

/* The rendered policies with their "origin/" prefix taken off the names. */
static struct authz *reparse(const struct authz *a)
{
        struct strbuf sb;
        strbuf_init(&sb);
        authz_render_policies(a, &sb);
        cJSON *arr = cJSON_Parse(sb.data);
        strbuf_free(&sb);
        if (!arr)
                die("rendered policies are not JSON");
        const cJSON *p;
        cJSON_ArrayForEach(p, arr)
        {
                cJSON *name = cJSON_GetObjectItemCaseSensitive(p, "name");
                const char *slash = strchr(name->valuestring, '/');
                char *bare = strdup(slash ? slash + 1 : name->valuestring);
                for (char *c = bare; *c; c++)
                        if (*c == '*')
                                *c = 'x'; /* the name of mtls.allow for every port */
                cJSON_SetValuestring(name, bare);
                free(bare);
        }
        struct authz *b = authz_new(NULL);
        char err[600];
        if (!b || authz_add_policies(b, arr, "file", err, sizeof(err)) < 0) {
                fprintf(stderr, "fuzz_authz: %s\n", b ? err : "out of memory");
                die("rendered policies are refused");
        }
        cJSON_Delete(arr);
        return b;
}

static void as_kube_spec(const cJSON *spec)
{
        struct authz_kube *k = authz_kube_new("default", NULL, NULL);
        cJSON *obj = cJSON_CreateObject();
        cJSON *md = cJSON_AddObjectToObject(obj, "metadata");
        cJSON_AddStringToObject(md, "name", "fuzz");
        cJSON_AddItemToObject(obj, "spec", cJSON_Duplicate(spec, 1));
        char err[400];
        authz_kube_list_begin(k);
        int rc = authz_kube_apply(k, true, obj, false, err, sizeof(err));
        if (rc != 0 && rc != -EINVAL && rc != -ENOMEM)
                die("kube apply returned an unknown error");
        authz_kube_list_end(k, true);
        struct authz *a = authz_kube_build(k, NULL);
        if (a && authz_rule_count(a) > AUTHZ_MAX_RULES)
                die("kube set over the rule bound");
        authz_unref(a);
        cJSON_Delete(obj);
        authz_kube_free(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        log_set_level(LOG_ERROR);
        cJSON *j = cJSON_ParseWithLength((const char *)data, size);
        if (!j)
                return 0;
        struct authz *a = authz_new(NULL);
        char err[600] = "";
        int rc = authz_add_policies(a, j, "file", err, sizeof(err));
        if (rc < 0) {
                if (!err[0] || strchr(err, '\n'))
                        die("a refusal without its one line");
                if (authz_policy_count(a))
                        die("a refused array added policies");
        } else {
                if (authz_policy_count(a) > AUTHZ_MAX_POLICIES ||
                    authz_rule_count(a) > AUTHZ_MAX_RULES)
                        die("accepted over the bounds");
                static enum authz_reason d1[NPEERS][NPORTS], d2[NPEERS][NPORTS];
                decide(a, d1);
                struct authz *b = reparse(a);
                decide(b, d2);
                if (memcmp(d1, d2, sizeof(d1)))
                        die("the rendered policies decide differently");
                authz_unref(b);
        }
        authz_unref(a);
        if (cJSON_IsArray(j) && cJSON_GetArraySize(j) > 0)
                as_kube_spec(cJSON_GetArrayItem(j, 0));
        else if (cJSON_IsObject(j))
                as_kube_spec(j);
        cJSON_Delete(j);
        return 0;
}

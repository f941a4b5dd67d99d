// SPDX-License-Identifier: Apache-2.0
/* File registry: strict parsing with JSON paths and line numbers, and
 * change detection. */
#include "discovery/file.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/file.h"
#include "core/config.h"
#include "core/log.h"
#include "core/loop.h"

#define COMP "discovery"

/* ---- line numbers --------------------------------------------------------
 * cJSON keeps no positions. The values of a document appear in the text in
 * the same order as a pre-order walk of cJSON's tree, so one scan that notes
 * the line where each value starts gives every node's line: find the node's
 * pre-order index, then look it up. Only done when reporting an error. */

#define SCAN_DEPTH 1100 /* above cJSON's nesting limit */

static size_t value_lines(const char *p, const char *end, unsigned *lines, size_t max)
{
        unsigned line = 1;
        size_t n = 0;
        int depth = 0;
        bool in_obj[SCAN_DEPTH];
        bool want_key[SCAN_DEPTH];
#define NOTE()                                                                                     \
        do {                                                                                       \
                if (n < max)                                                                       \
                        lines[n] = line;                                                           \
                n++;                                                                               \
        } while (0)
        while (p < end) {
                char c = *p;
                if (c == '\n') {
                        line++;
                        p++;
                } else if (c == '"') {
                        if (!(depth > 0 && depth <= SCAN_DEPTH && in_obj[depth - 1] &&
                              want_key[depth - 1]))
                                NOTE();
                        for (p++; p < end && *p != '"'; p++) {
                                if (*p == '\\' && p + 1 < end)
                                        p++;
                        }
                        p++;
                } else if (c == '{' || c == '[') {
                        NOTE();
                        if (depth < SCAN_DEPTH) {
                                in_obj[depth] = c == '{';
                                want_key[depth] = c == '{';
                        }
                        depth++;
                        p++;
                } else if (c == '}' || c == ']') {
                        depth--;
                        p++;
                } else if (c == ':') {
                        if (depth > 0 && depth <= SCAN_DEPTH)
                                want_key[depth - 1] = false;
                        p++;
                } else if (c == ',') {
                        if (depth > 0 && depth <= SCAN_DEPTH && in_obj[depth - 1])
                                want_key[depth - 1] = true;
                        p++;
                } else if (c == '-' || isdigit((unsigned char)c) || c == 't' || c == 'f' ||
                           c == 'n') {
                        NOTE();
                        while (p < end && !strchr(",]}\n \t\r", *p))
                                p++;
                } else {
                        p++;
                }
        }
#undef NOTE
        return n;
}

static bool preorder_index(const cJSON *n, const cJSON *x, size_t *idx)
{
        if (n == x)
                return true;
        (*idx)++;
        for (const cJSON *c = n->child; c; c = c->next) {
                if (preorder_index(c, x, idx))
                        return true;
        }
        return false;
}

/* ---- validation context ------------------------------------------------- */

struct vctx {
        const struct disc_file_ext *ext; /* NULL for a registry file */
        size_t svc_index;
        const char *name;
        const char *text;
        size_t len;
        const cJSON *root;
        char *err;
        size_t errlen;
        char path[256];
        size_t plen;
};

static unsigned line_of(const struct vctx *v, const cJSON *node)
{
        size_t idx = 0;
        if (v->ext || !node || !preorder_index(v->root, node, &idx))
                return 0; /* embedded text (ext): its lines are not the user's */
        size_t n = value_lines(v->text, v->text + v->len, NULL, 0);
        unsigned *lines = malloc((n ? n : 1) * sizeof(*lines));
        if (!lines)
                return 0;
        value_lines(v->text, v->text + v->len, lines, n);
        unsigned line = idx < n ? lines[idx] : 0;
        free(lines);
        return line;
}

__attribute__((format(printf, 3, 4))) static int fail(struct vctx *v, const cJSON *node,
                                                      const char *fmt, ...)
{
        char msg[384];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        unsigned line = line_of(v, node);
        const char *path = v->plen ? v->path : "(top level)";
        if (line)
                snprintf(v->err, v->errlen, "%s:%u: %s: %s", v->name, line, path, msg);
        else
                snprintf(v->err, v->errlen, "%s: %s: %s", v->name, path, msg);
        return -EINVAL;
}

static size_t path_push_key(struct vctx *v, const char *key)
{
        size_t old = v->plen;
        int n =
            snprintf(v->path + v->plen, sizeof(v->path) - v->plen, "%s%s", v->plen ? "." : "", key);
        if (n > 0)
                v->plen += (size_t)n;
        if (v->plen >= sizeof(v->path))
                v->plen = sizeof(v->path) - 1;
        return old;
}

static size_t path_push_idx(struct vctx *v, size_t i)
{
        size_t old = v->plen;
        int n = snprintf(v->path + v->plen, sizeof(v->path) - v->plen, "[%zu]", i);
        if (n > 0)
                v->plen += (size_t)n;
        if (v->plen >= sizeof(v->path))
                v->plen = sizeof(v->path) - 1;
        return old;
}

static void path_pop(struct vctx *v, size_t old)
{
        v->plen = old;
        v->path[old] = '\0';
}

static const char *type_name(const cJSON *x)
{
        if (cJSON_IsObject(x))
                return "an object";
        if (cJSON_IsArray(x))
                return "an array";
        if (cJSON_IsString(x))
                return "a string";
        if (cJSON_IsNumber(x))
                return "a number";
        if (cJSON_IsBool(x))
                return "a boolean";
        if (cJSON_IsNull(x))
                return "null";
        return "invalid";
}

/* Object with only the allowed keys, none twice. */
static int check_keys(struct vctx *v, const cJSON *obj, const char *const *allowed)
{
        if (!cJSON_IsObject(obj))
                return fail(v, obj, "expected an object, got %s", type_name(obj));
        for (const cJSON *c = obj->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *a = allowed; *a; a++)
                        ok |= strcmp(*a, c->string) == 0;
                if (!ok) {
                        char list[256] = "";
                        size_t off = 0;
                        for (const char *const *a = allowed; *a && off < sizeof(list); a++) {
                                int n = snprintf(list + off, sizeof(list) - off, "%s%s",
                                                 off ? ", " : "", *a);
                                if (n > 0)
                                        off += (size_t)n;
                        }
                        size_t old = path_push_key(v, c->string);
                        int rc = fail(v, c, "unknown key (allowed: %s)", list);
                        path_pop(v, old);
                        return rc;
                }
                for (const cJSON *d = obj->child; d != c; d = d->next) {
                        if (strcmp(d->string, c->string) == 0) {
                                size_t old = path_push_key(v, c->string);
                                int rc = fail(v, c, "duplicate key");
                                path_pop(v, old);
                                return rc;
                        }
                }
        }
        return 0;
}

/* The helpers below take the value's key already pushed on the path. */

static int want_string(struct vctx *v, const cJSON *x, size_t cap, char *out)
{
        if (!cJSON_IsString(x))
                return fail(v, x, "expected a string, got %s", type_name(x));
        size_t n = strlen(x->valuestring);
        if (n >= cap)
                return fail(v, x, "longer than %zu characters", cap - 1);
        memcpy(out, x->valuestring, n + 1);
        return 0;
}

static int want_int(struct vctx *v, const cJSON *x, long long min, long long max, long long *out)
{
        if (!cJSON_IsNumber(x))
                return fail(v, x, "expected an integer, got %s", type_name(x));
        double d = x->valuedouble;
        if (d != d || d < -9e15 || d > 9e15 || d != (double)(long long)d)
                return fail(v, x, "expected an integer, got %g", d);
        long long i = (long long)d;
        if (i < min || i > max)
                return fail(v, x, "%lld is out of range %lld..%lld", i, min, max);
        *out = i;
        return 0;
}

static int want_duration(struct vctx *v, const cJSON *x, uint64_t min_ms, uint64_t max_ms,
                         uint32_t *out)
{
        uint64_t ms;
        if (cJSON_IsString(x)) {
                if (parse_duration_ms(x->valuestring, &ms))
                        return fail(v, x, "'%s' is not a duration (e.g. 500ms, 10s, 1m)",
                                    x->valuestring);
        } else if (cJSON_IsNumber(x)) {
                long long s;
                if (want_int(v, x, 0, 86400, &s))
                        return -EINVAL;
                ms = (uint64_t)s * 1000;
        } else {
                return fail(v, x, "expected a duration string, got %s", type_name(x));
        }
        if (ms < min_ms || ms > max_ms)
                return fail(v, x, "%llums is out of range %llums..%llums", (unsigned long long)ms,
                            (unsigned long long)min_ms, (unsigned long long)max_ms);
        *out = (uint32_t)ms;
        return 0;
}

/* RFC 1123 label, as Kubernetes requires for service and namespace names. */
static bool dns_label(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1]))
                return false;
        for (size_t i = 0; i < n; i++) {
                if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
                        return false;
        }
        return true;
}

static bool spiffe_id(const char *s)
{
        if (strncmp(s, "spiffe://", 9) != 0)
                return false;
        const char *td = s + 9, *slash = strchr(td, '/');
        if (!slash || slash == td || slash[1] == '\0')
                return false;
        for (const char *p = td; p < slash; p++) {
                if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '.' ||
                      *p == '-' || *p == '_'))
                        return false;
        }
        for (const char *p = slash; *p; p++) {
                if ((unsigned char)*p <= ' ' || *p == '?' || *p == '#' || *p == 0x7f)
                        return false;
        }
        return true;
}

static int want_ip(struct vctx *v, const cJSON *x, struct disc_addr *out)
{
        char buf[64];
        if (want_string(v, x, sizeof(buf), buf))
                return -EINVAL;
        if (disc_addr_parse(buf, 0, out))
                return fail(v, x, "'%s' is not an IPv4 or IPv6 address", buf);
        static const uint8_t zero[16];
        bool unspec = memcmp(out->addr, zero, 16) == 0;
        bool mcast = out->family == AF_INET ? (out->addr[0] & 0xf0) == 0xe0 : out->addr[0] == 0xff;
        if (unspec || mcast)
                return fail(v, x, "'%s' is %s, not a unicast address", buf,
                            unspec ? "unspecified" : "multicast");
        return 0;
}

/* ---- schema ---------------------------------------------------------------- */

static const char *const root_keys[] = {"services", NULL};
static const char *const svc_keys[] = {
    "name",           "namespace",    "addresses", "ports",  "identity", "mtls",
    "load_balancing", "health_check", "endpoints", "routes", NULL};
static const char *const port_keys[] = {"name", "port", "target_port", "protocol", NULL};
static const char *const lb_keys[] = {"algorithm", "hash_key", NULL};
static const char *const hc_keys[] = {"type",
                                      "path",
                                      "port",
                                      "interval",
                                      "timeout",
                                      "healthy_threshold",
                                      "unhealthy_threshold",
                                      "passive_failures",
                                      "ejection_time",
                                      NULL};
static const char *const ep_keys[] = {"address",  "port",   "weight", "zone",   "region", "health",
                                      "identity", "meshed", "mtls",   "labels", NULL};

#define FIELD(obj, key) cJSON_GetObjectItemCaseSensitive(obj, key)

static int parse_port(struct vctx *v, const cJSON *x, struct disc_port_spec *p)
{
        if (check_keys(v, x, port_keys))
                return -EINVAL;
        const cJSON *f;
        long long n;
        size_t old;
        memset(p, 0, sizeof(*p));
        p->proto = PROTO_UNKNOWN; /* not declared: the proxy sniffs */
        if ((f = FIELD(x, "name"))) {
                old = path_push_key(v, "name");
                if (want_string(v, f, sizeof(p->name), p->name))
                        return -EINVAL;
                if (p->name[0] && !dns_label(p->name))
                        return fail(v, f, "'%s' is not a lower-case DNS label", p->name);
                path_pop(v, old);
        }
        if (!(f = FIELD(x, "port")))
                return fail(v, x, "missing key 'port'");
        old = path_push_key(v, "port");
        if (want_int(v, f, 1, 65535, &n))
                return -EINVAL;
        p->port = (uint16_t)n;
        path_pop(v, old);
        p->target_port = p->port;
        if ((f = FIELD(x, "target_port"))) {
                old = path_push_key(v, "target_port");
                if (want_int(v, f, 1, 65535, &n))
                        return -EINVAL;
                p->target_port = (uint16_t)n;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "protocol"))) {
                old = path_push_key(v, "protocol");
                if (!cJSON_IsString(f) || proto_parse(f->valuestring, &p->proto))
                        return fail(v, f, "expected one of HTTP, HTTP2, GRPC, TCP, TLS");
                path_pop(v, old);
        }
        return 0;
}

static int parse_lb(struct vctx *v, const cJSON *x, struct disc_service_spec *s)
{
        if (check_keys(v, x, lb_keys))
                return -EINVAL;
        const cJSON *f;
        size_t old;
        if ((f = FIELD(x, "algorithm"))) {
                old = path_push_key(v, "algorithm");
                static const enum disc_lb_algorithm algos[] = {
                    DISC_LB_ROUND_ROBIN, DISC_LB_LEAST_CONNECTIONS, DISC_LB_WEIGHTED,
                    DISC_LB_CONSISTENT_HASH, DISC_LB_MAGLEV};
                bool ok = false;
                for (size_t i = 0; cJSON_IsString(f) && i < sizeof(algos) / sizeof(algos[0]); i++) {
                        if (strcmp(f->valuestring, disc_lb_name(algos[i])) == 0) {
                                s->lb = algos[i];
                                ok = true;
                        }
                }
                if (!ok)
                        return fail(v, f,
                                    "expected one of round_robin, least_connections, weighted, "
                                    "consistent_hash, maglev");
                path_pop(v, old);
        }
        if ((f = FIELD(x, "hash_key"))) {
                old = path_push_key(v, "hash_key");
                if (want_string(v, f, sizeof(s->hash_key), s->hash_key))
                        return -EINVAL;
                path_pop(v, old);
        }
        return 0;
}

static int parse_hc(struct vctx *v, const cJSON *x, struct disc_health_check *hc)
{
        if (check_keys(v, x, hc_keys))
                return -EINVAL;
        const cJSON *f;
        size_t old;
        long long n;
        if ((f = FIELD(x, "type"))) {
                old = path_push_key(v, "type");
                if (!cJSON_IsString(f))
                        return fail(v, f, "expected one of none, tcp, http");
                if (strcmp(f->valuestring, "tcp") == 0)
                        hc->type = DISC_HC_TCP;
                else if (strcmp(f->valuestring, "http") == 0)
                        hc->type = DISC_HC_HTTP;
                else if (strcmp(f->valuestring, "none") == 0)
                        hc->type = DISC_HC_NONE;
                else
                        return fail(v, f, "expected one of none, tcp, http");
                path_pop(v, old);
        }
        if ((f = FIELD(x, "path"))) {
                old = path_push_key(v, "path");
                if (want_string(v, f, sizeof(hc->path), hc->path))
                        return -EINVAL;
                if (hc->path[0] != '/')
                        return fail(v, f, "must start with '/'");
                for (const char *p = hc->path; *p; p++) {
                        if ((unsigned char)*p <= ' ' || *p == 0x7f)
                                return fail(v, f, "contains a space or control character");
                }
                if (hc->type != DISC_HC_HTTP)
                        return fail(v, f, "only an http check has a path");
                path_pop(v, old);
        } else if (hc->type == DISC_HC_HTTP) {
                return fail(v, x, "missing key 'path' (an http check needs one)");
        }
        if ((f = FIELD(x, "port"))) {
                old = path_push_key(v, "port");
                if (want_int(v, f, 1, 65535, &n))
                        return -EINVAL;
                hc->port = (uint16_t)n;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "interval"))) {
                old = path_push_key(v, "interval");
                if (want_duration(v, f, 100, 3600000, &hc->interval_ms))
                        return -EINVAL;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "timeout"))) {
                old = path_push_key(v, "timeout");
                if (want_duration(v, f, 10, 3600000, &hc->timeout_ms))
                        return -EINVAL;
                if (hc->timeout_ms > hc->interval_ms)
                        return fail(v, f, "timeout %ums is longer than the interval %ums",
                                    hc->timeout_ms, hc->interval_ms);
                path_pop(v, old);
        } else if (hc->timeout_ms > hc->interval_ms) {
                hc->timeout_ms = hc->interval_ms;
        }
        static const struct {
                const char *key;
                long long min, max;
        } ints[] = {{"healthy_threshold", 1, 100},
                    {"unhealthy_threshold", 1, 100},
                    {"passive_failures", 0, 1000}};
        for (size_t i = 0; i < 3; i++) {
                if (!(f = FIELD(x, ints[i].key)))
                        continue;
                old = path_push_key(v, ints[i].key);
                if (want_int(v, f, ints[i].min, ints[i].max, &n))
                        return -EINVAL;
                path_pop(v, old);
                if (i == 0)
                        hc->healthy_threshold = (uint8_t)n;
                else if (i == 1)
                        hc->unhealthy_threshold = (uint8_t)n;
                else
                        hc->passive_failures = (uint32_t)n;
        }
        if ((f = FIELD(x, "ejection_time"))) {
                old = path_push_key(v, "ejection_time");
                if (want_duration(v, f, 1000, 3600000, &hc->ejection_ms))
                        return -EINVAL;
                path_pop(v, old);
        }
        return 0;
}

/* "identity" (a SPIFFE ID) and "mtls" (strict, permissive, disabled) of a
 * service or an endpoint; absent keys leave the outputs alone. */
static int want_identity_mtls(struct vctx *v, const cJSON *x, char *identity, enum disc_mtls *mtls)
{
        const cJSON *f;
        size_t old;
        if ((f = FIELD(x, "identity"))) {
                old = path_push_key(v, "identity");
                if (want_string(v, f, DISC_IDENTITY_MAX, identity))
                        return -EINVAL;
                if (!spiffe_id(identity))
                        return fail(v, f,
                                    "'%s' is not a SPIFFE ID (spiffe://<trust-domain>/<path>)",
                                    identity);
                path_pop(v, old);
        }
        if ((f = FIELD(x, "mtls"))) {
                old = path_push_key(v, "mtls");
                if (!cJSON_IsString(f) || disc_mtls_parse(f->valuestring, mtls) < 0)
                        return fail(v, f, "expected one of strict, permissive, disabled");
                path_pop(v, old);
        }
        return 0;
}

static int parse_endpoint(struct vctx *v, const cJSON *x, const struct disc_service_spec *s,
                          struct disc_endpoint_spec *e, bool *has_port)
{
        if (check_keys(v, x, ep_keys))
                return -EINVAL;
        const cJSON *f;
        size_t old;
        long long n;
        memset(e, 0, sizeof(*e));
        e->weight = DISC_DEFAULT_WEIGHT;
        e->health = DISC_HEALTH_UNKNOWN;
        if (!(f = FIELD(x, "address")))
                return fail(v, x, "missing key 'address'");
        old = path_push_key(v, "address");
        if (want_ip(v, f, &e->addr))
                return -EINVAL;
        path_pop(v, old);
        *has_port = false;
        if ((f = FIELD(x, "port"))) {
                old = path_push_key(v, "port");
                if (want_int(v, f, 1, 65535, &n))
                        return -EINVAL;
                bool known = false;
                for (uint32_t i = 0; i < s->n_ports; i++)
                        known |= s->ports[i].target_port == n;
                if (!known)
                        return fail(v, f, "%lld is not a target_port of this service", n);
                e->addr.port = (uint16_t)n;
                *has_port = true;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "weight"))) {
                old = path_push_key(v, "weight");
                if (want_int(v, f, 0, DISC_WEIGHT_MAX, &n))
                        return -EINVAL;
                e->weight = (uint32_t)n;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "zone"))) {
                old = path_push_key(v, "zone");
                if (want_string(v, f, sizeof(e->zone), e->zone))
                        return -EINVAL;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "region"))) {
                old = path_push_key(v, "region");
                if (want_string(v, f, sizeof(e->region), e->region))
                        return -EINVAL;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "health"))) {
                old = path_push_key(v, "health");
                if (!cJSON_IsString(f) || disc_health_parse(f->valuestring, &e->health))
                        return fail(v, f, "expected one of healthy, unhealthy, unknown, draining");
                path_pop(v, old);
        }
        if ((f = FIELD(x, "meshed"))) {
                old = path_push_key(v, "meshed");
                if (!cJSON_IsBool(f))
                        return fail(v, f, "expected true or false");
                e->unmeshed = cJSON_IsFalse(f);
                path_pop(v, old);
        }
        if ((f = FIELD(x, "labels"))) {
                char why[200];
                old = path_push_key(v, "labels");
                if (dr_labels_format(f, e->labels, sizeof(e->labels), why, sizeof(why)))
                        return fail(v, f, "%s", why);
                path_pop(v, old);
        }
        return want_identity_mtls(v, x, e->identity, &e->mtls);
}

static int parse_service(struct vctx *v, const cJSON *x, struct disc_service_spec *s)
{
        const char *keys[sizeof(svc_keys) / sizeof(svc_keys[0]) + 1];
        size_t nk = 0;
        for (; svc_keys[nk]; nk++)
                keys[nk] = svc_keys[nk];
        if (v->ext)
                keys[nk++] = v->ext->key;
        keys[nk] = NULL;
        if (check_keys(v, x, keys))
                return -EINVAL;
        const cJSON *f;
        size_t old;
        disc_service_spec_init(s);
        if (!(f = FIELD(x, "name")))
                return fail(v, x, "missing key 'name'");
        old = path_push_key(v, "name");
        if (want_string(v, f, sizeof(s->name), s->name))
                return -EINVAL;
        if (!dns_label(s->name))
                return fail(v, f, "'%s' is not a lower-case DNS label (a-z, 0-9, '-', 1-63)",
                            s->name);
        path_pop(v, old);
        if ((f = FIELD(x, "namespace"))) {
                old = path_push_key(v, "namespace");
                if (want_string(v, f, sizeof(s->ns), s->ns))
                        return -EINVAL;
                if (!dns_label(s->ns))
                        return fail(v, f, "'%s' is not a lower-case DNS label", s->ns);
                path_pop(v, old);
        }
        if (!(f = FIELD(x, "ports")))
                return fail(v, x, "missing key 'ports'");
        old = path_push_key(v, "ports");
        if (!cJSON_IsArray(f))
                return fail(v, f, "expected an array, got %s", type_name(f));
        if (cJSON_GetArraySize(f) < 1 || cJSON_GetArraySize(f) > DISC_MAX_PORTS)
                return fail(v, f, "expected 1..%d ports", DISC_MAX_PORTS);
        size_t i = 0;
        for (const cJSON *p = f->child; p; p = p->next, i++) {
                size_t o2 = path_push_idx(v, i);
                struct disc_port_spec *ps = &s->ports[s->n_ports];
                if (parse_port(v, p, ps))
                        return -EINVAL;
                for (uint32_t k = 0; k < s->n_ports; k++) {
                        if (s->ports[k].port == ps->port)
                                return fail(v, p, "port %u is declared twice", ps->port);
                        if (ps->name[0] && strcmp(s->ports[k].name, ps->name) == 0)
                                return fail(v, p, "port name '%s' is used twice", ps->name);
                }
                s->n_ports++;
                path_pop(v, o2);
        }
        path_pop(v, old);
        if ((f = FIELD(x, "addresses"))) {
                old = path_push_key(v, "addresses");
                if (!cJSON_IsArray(f))
                        return fail(v, f, "expected an array, got %s", type_name(f));
                if (cJSON_GetArraySize(f) > DISC_MAX_VIPS)
                        return fail(v, f, "more than %d addresses", DISC_MAX_VIPS);
                i = 0;
                for (const cJSON *a = f->child; a; a = a->next, i++) {
                        size_t o2 = path_push_idx(v, i);
                        struct disc_addr *va = &s->vips[s->n_vips];
                        if (want_ip(v, a, va))
                                return -EINVAL;
                        for (uint32_t k = 0; k < s->n_vips; k++) {
                                if (memcmp(&s->vips[k], va, sizeof(*va)) == 0)
                                        return fail(v, a, "'%s' is listed twice", a->valuestring);
                        }
                        s->n_vips++;
                        path_pop(v, o2);
                }
                path_pop(v, old);
        }
        if (want_identity_mtls(v, x, s->identity, &s->mtls))
                return -EINVAL;
        if ((f = FIELD(x, "load_balancing"))) {
                old = path_push_key(v, "load_balancing");
                if (parse_lb(v, f, s))
                        return -EINVAL;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "health_check"))) {
                old = path_push_key(v, "health_check");
                if (parse_hc(v, f, &s->hc))
                        return -EINVAL;
                path_pop(v, old);
        }
        if ((f = FIELD(x, "endpoints"))) {
                old = path_push_key(v, "endpoints");
                if (!cJSON_IsArray(f))
                        return fail(v, f, "expected an array, got %s", type_name(f));
                size_t n = (size_t)cJSON_GetArraySize(f) * s->n_ports;
                if (n > DISC_DEFAULT_MAX_ENDPOINTS)
                        return fail(v, f, "more than %d endpoints", DISC_DEFAULT_MAX_ENDPOINTS);
                s->endpoints = calloc(n ? n : 1, sizeof(*s->endpoints));
                if (!s->endpoints)
                        return fail(v, f, "out of memory");
                i = 0;
                for (const cJSON *e = f->child; e; e = e->next, i++) {
                        size_t o2 = path_push_idx(v, i);
                        struct disc_endpoint_spec es;
                        bool has_port = false;
                        if (parse_endpoint(v, e, s, &es, &has_port))
                                return -EINVAL;
                        /* no port: one endpoint per service port */
                        for (uint32_t p = 0; p < (has_port ? 1 : s->n_ports); p++) {
                                if (!has_port)
                                        es.addr.port = s->ports[p].target_port;
                                for (uint32_t k = 0; k < s->n_endpoints; k++) {
                                        if (memcmp(&s->endpoints[k].addr, &es.addr,
                                                   sizeof(es.addr)) == 0) {
                                                char ip[64];
                                                return fail(v, e,
                                                            "endpoint %s port %u is listed twice",
                                                            disc_addr_ip(&es.addr, ip, sizeof(ip)),
                                                            es.addr.port);
                                        }
                                }
                                s->endpoints[s->n_endpoints++] = es;
                        }
                        path_pop(v, o2);
                }
                path_pop(v, old);
        }
        if (v->ext) {
                f = FIELD(x, v->ext->key);
                if (!f && v->ext->required)
                        return fail(v, x, "missing key '%s'", v->ext->key);
                char why[256] = "";
                old = path_push_key(v, v->ext->key);
                if (f && v->ext->parse(v->ext->ctx, v->svc_index, f, x, s, why, sizeof(why)))
                        return fail(v, f, "%s", why);
                path_pop(v, old);
        }
        return 0;
}

bool disc_specs_have(const struct disc_service_spec *svcs, size_t n, const char *ns,
                     const char *name, uint16_t port)
{
        for (size_t i = 0; i < n; i++) {
                const struct disc_service_spec *s = &svcs[i];
                if (strcmp(s->ns, ns) || strcmp(s->name, name))
                        continue;
                for (uint32_t p = 0; p < s->n_ports; p++)
                        if (port == 0 || s->ports[p].port == port)
                                return true;
                return false;
        }
        return false;
}

/* A route's backendRef names a service of ctx (and one of its ports). */
static bool specs_service_exists(void *ctx, const char *ns, const char *name, uint16_t port)
{
        const struct disc_specs *specs = ctx;
        return disc_specs_have(specs->svcs, specs->n, ns, name, port);
}

void disc_specs_route_ctx(struct disc_specs *all, const struct disc_service_spec *sp,
                          uint16_t ports[DISC_MAX_PORTS], struct dr_parse_ctx *pc)
{
        for (uint32_t p = 0; p < sp->n_ports; p++)
                ports[p] = sp->ports[p].port;
        *pc = (struct dr_parse_ctx){.ns = sp->ns,
                                    .name = sp->name,
                                    .ports = ports,
                                    .n_ports = sp->n_ports,
                                    .service_exists = specs_service_exists,
                                    .ctx = all};
}

/* Each service's "routes", once every service is known: a backendRef may
 * name any service of the file. */
static int parse_routes(struct vctx *v, const cJSON *svcs, struct disc_specs *out)
{
        size_t i = 0;
        for (const cJSON *s = svcs->child; s; s = s->next, i++) {
                const cJSON *f = FIELD(s, "routes");
                if (!f)
                        continue;
                struct disc_service_spec *sp = &out->svcs[i];
                uint16_t ports[DISC_MAX_PORTS];
                struct dr_parse_ctx pc;
                disc_specs_route_ctx(out, sp, ports, &pc);
                char why[384], rel[192];
                const cJSON *where = f;
                if (dr_routes_parse(f, &pc, &sp->routes, why, sizeof(why), rel, sizeof(rel),
                                    &where)) {
                        size_t old = path_push_idx(v, i);
                        path_push_key(v, "routes");
                        snprintf(v->path + v->plen, sizeof(v->path) - v->plen, "%s", rel);
                        v->plen = strlen(v->path);
                        int rc = fail(v, where, "%s", why);
                        path_pop(v, old);
                        return rc;
                }
        }
        return 0;
}

void disc_specs_free(struct disc_specs *s)
{
        for (size_t i = 0; s->svcs && i < s->n; i++) {
                free(s->svcs[i].endpoints);
                dr_routes_unref(s->svcs[i].routes);
        }
        free(s->svcs);
        s->svcs = NULL;
        s->n = 0;
}

int disc_file_parse(const char *name, const char *text, size_t len, struct disc_specs *out,
                    char *err, size_t errlen)
{
        return disc_file_parse_ext(name, text, len, NULL, out, err, errlen);
}

int disc_file_parse_ext(const char *name, const char *text, size_t len,
                        const struct disc_file_ext *ext, struct disc_specs *out, char *err,
                        size_t errlen)
{
        memset(out, 0, sizeof(*out));
        struct vctx v = {
            .ext = ext, .name = name, .text = text, .len = len, .err = err, .errlen = errlen};
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
        if (!root) {
                unsigned line = 1;
                const char *pos = end ? end : cJSON_GetErrorPtr();
                for (const char *p = text; pos && p < pos && p < text + len; p++)
                        line += *p == '\n';
                snprintf(err, errlen, "%s:%u: invalid JSON near '%.20s'", name, line,
                         pos && pos < text + len ? pos : "<end of file>");
                return -EINVAL;
        }
        for (const char *p = end; p && p < text + len; p++) {
                if (!isspace((unsigned char)*p)) {
                        unsigned line = 1;
                        for (const char *q = text; q < p; q++)
                                line += *q == '\n';
                        snprintf(err, errlen, "%s:%u: unexpected text after the JSON document",
                                 name, line);
                        cJSON_Delete(root);
                        return -EINVAL;
                }
        }
        v.root = root;
        int rc = check_keys(&v, root, root_keys);
        const cJSON *svcs = rc ? NULL : FIELD(root, "services");
        if (!rc && !svcs)
                rc = fail(&v, root, "missing key 'services'");
        size_t old = 0;
        if (!rc) {
                old = path_push_key(&v, "services");
                if (!cJSON_IsArray(svcs))
                        rc = fail(&v, svcs, "expected an array, got %s", type_name(svcs));
                else if (cJSON_GetArraySize(svcs) > DISC_FILE_MAX_SERVICES)
                        rc = fail(&v, svcs, "more than %d services", DISC_FILE_MAX_SERVICES);
        }
        if (!rc) {
                size_t n = (size_t)cJSON_GetArraySize(svcs);
                out->svcs = calloc(n ? n : 1, sizeof(*out->svcs));
                if (!out->svcs)
                        rc = fail(&v, svcs, "out of memory");
        }
        size_t i = 0;
        size_t total = 0;
        for (const cJSON *s = rc ? NULL : svcs->child; s; s = s->next, i++) {
                size_t o2 = path_push_idx(&v, i);
                struct disc_service_spec *sp = &out->svcs[i];
                out->n = i + 1;
                v.svc_index = i;
                rc = parse_service(&v, s, sp);
                if (rc)
                        break;
                total += sp->n_endpoints;
                if (total > DISC_DEFAULT_MAX_ENDPOINTS) {
                        rc = fail(&v, s, "more than %d endpoints in the file",
                                  DISC_DEFAULT_MAX_ENDPOINTS);
                        break;
                }
                for (size_t k = 0; k < i; k++) {
                        const struct disc_service_spec *o = &out->svcs[k];
                        if (strcmp(o->name, sp->name) == 0 && strcmp(o->ns, sp->ns) == 0) {
                                rc =
                                    fail(&v, s, "service %s/%s is already defined by services[%zu]",
                                         sp->ns, sp->name, k);
                                break;
                        }
                        for (uint32_t a = 0; !rc && a < sp->n_vips; a++) {
                                for (uint32_t b = 0; !rc && b < o->n_vips; b++) {
                                        if (memcmp(&sp->vips[a], &o->vips[b], sizeof(sp->vips[a])))
                                                continue;
                                        for (uint32_t p = 0; !rc && p < sp->n_ports; p++) {
                                                for (uint32_t q = 0; q < o->n_ports; q++) {
                                                        if (sp->ports[p].port != o->ports[q].port)
                                                                continue;
                                                        char ip[64];
                                                        rc = fail(&v, s,
                                                                  "address %s port %u is already "
                                                                  "used by services[%zu] (%s/%s)",
                                                                  disc_addr_ip(&sp->vips[a], ip,
                                                                               sizeof(ip)),
                                                                  sp->ports[p].port, k, o->ns,
                                                                  o->name);
                                                        break;
                                                }
                                        }
                                }
                        }
                        if (rc)
                                break;
                }
                if (rc)
                        break;
                path_pop(&v, o2);
        }
        (void)old;
        if (!rc)
                rc = parse_routes(&v, svcs, out);
        cJSON_Delete(root);
        if (rc)
                disc_specs_free(out);
        return rc;
}

/* ---- the watcher ------------------------------------------------------------ */

struct disc_file {
        struct disc_registry *r;
        int src;
        char path[PATH_MAX];
        char dir[PATH_MAX];
        char base[NAME_MAX + 1];
        bool have_id;
        bool good; /* the last attempt applied */
        dev_t dev;
        ino_t ino;
        off_t size;
        struct timespec mtime;
        uint64_t n_loads, n_rejects;
        char last_error[DISC_ERROR_MAX];
        struct loop *loop;
        struct loop_timer poll;
        struct loop_io ino_io;
        int ifd;
        uint32_t poll_ms;
};

struct disc_file *disc_file_new(struct disc_registry *r, const char *path, char *err, size_t errlen)
{
        if (!path || !*path || strlen(path) >= PATH_MAX) {
                snprintf(err, errlen, "discovery: file registry path '%s' is empty or too long",
                         path ? path : "");
                return NULL;
        }
        struct disc_file *f = calloc(1, sizeof(*f));
        if (!f) {
                snprintf(err, errlen, "discovery: out of memory");
                return NULL;
        }
        f->r = r;
        f->ifd = -1;
        snprintf(f->path, sizeof(f->path), "%s", path);
        const char *slash = strrchr(path, '/');
        if (slash) {
                snprintf(f->dir, sizeof(f->dir), "%.*s", (int)(slash == path ? 1 : slash - path),
                         path);
                snprintf(f->base, sizeof(f->base), "%s", slash + 1);
        } else {
                snprintf(f->dir, sizeof(f->dir), ".");
                snprintf(f->base, sizeof(f->base), "%s", path);
        }
        f->src = disc_source_add(r, "file", DISC_SOURCE_FILE);
        if (f->src < 0) {
                snprintf(err, errlen, "discovery: %s: cannot register the file source: %s", path,
                         strerror(-f->src));
                free(f);
                return NULL;
        }
        return f;
}

int disc_file_source(const struct disc_file *f)
{
        return f->src;
}

static bool same_id(const struct disc_file *f, const struct stat *st)
{
        return f->have_id && f->dev == st->st_dev && f->ino == st->st_ino &&
               f->size == st->st_size && f->mtime.tv_sec == st->st_mtim.tv_sec &&
               f->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static void remember_id(struct disc_file *f, const struct stat *st)
{
        f->have_id = true;
        f->dev = st->st_dev;
        f->ino = st->st_ino;
        f->size = st->st_size;
        f->mtime = st->st_mtim;
}

static int reject(struct disc_file *f, int rc, const char *msg, char *err, size_t errlen)
{
        snprintf(f->last_error, sizeof(f->last_error), "%s", msg);
        if (err && err != msg)
                snprintf(err, errlen, "%s", msg);
        f->good = false;
        f->n_rejects++;
        log_error(COMP, 0, "file registry rejected, keeping the last good one: %s", msg);
        disc_source_sync_failed(f->r, f->src, msg);
        disc_registry_publish(f->r);
        return rc;
}

int disc_file_check(struct disc_file *f, char *err, size_t errlen)
{
        char msg[DISC_ERROR_MAX];
        struct stat st;
        if (stat(f->path, &st) < 0) {
                int e = errno;
                if (!f->have_id && !f->good && f->n_rejects)
                        return -e; /* still missing: already reported */
                f->have_id = false;
                snprintf(msg, sizeof(msg), "%.300s: %s", f->path, strerror(e));
                return reject(f, -e, msg, err, errlen);
        }
        if (same_id(f, &st)) {
                if (f->good)
                        disc_source_sync_ok(f->r, f->src);
                return f->good ? 0 : -EINVAL;
        }
        int fd = open(f->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0) {
                int e = errno;
                if (fd >= 0)
                        close(fd);
                snprintf(msg, sizeof(msg), "%.300s: %s", f->path, strerror(e));
                return reject(f, -e, msg, err, errlen);
        }
        remember_id(f, &st); /* an invalid version is not re-read until it changes */
        if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > DISC_FILE_MAX_BYTES) {
                close(fd);
                snprintf(msg, sizeof(msg), "%.300s: %s", f->path,
                         S_ISREG(st.st_mode) ? "larger than 64 MiB" : "not a regular file");
                return reject(f, -EINVAL, msg, err, errlen);
        }
        char *buf;
        size_t got;
        int frc = file_read_fd(fd, DISC_FILE_MAX_BYTES, &buf, &got);
        close(fd);
        if (frc < 0) {
                snprintf(msg, sizeof(msg), "%.300s: %s", f->path,
                         frc == -EFBIG ? "larger than 64 MiB" : strerror(-frc));
                return reject(f, frc, msg, err, errlen);
        }
        struct disc_specs specs;
        int rc = disc_file_parse(f->path, buf, got, &specs, msg, sizeof(msg));
        free(buf);
        if (rc)
                return reject(f, rc, msg, err, errlen);
        rc = disc_registry_replace(f->r, f->src, specs.svcs, specs.n);
        size_t n_svcs = specs.n;
        disc_specs_free(&specs);
        if (rc) {
                snprintf(msg, sizeof(msg), "%.300s: cannot apply: %s", f->path, strerror(-rc));
                return reject(f, rc, msg, err, errlen);
        }
        f->good = true;
        f->n_loads++;
        f->last_error[0] = '\0';
        disc_source_sync_ok(f->r, f->src);
        rc = disc_registry_publish(f->r);
        log_info(COMP, 0, "file registry %s loaded: %zu services, snapshot %llu", f->path, n_svcs,
                 (unsigned long long)disc_registry_version(f->r));
        return rc < 0 ? rc : 1;
}

static void poll_cb(struct loop *loop, struct loop_timer *t)
{
        struct disc_file *f = t->data;
        disc_file_check(f, NULL, 0);
        loop_timer_arm(loop, t, f->poll_ms);
}

static void inotify_cb(struct loop *loop, struct loop_io *io, uint32_t events)
{
        struct disc_file *f = io->data;
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool relevant = false;
        for (;;) {
                ssize_t n = read(io->fd, buf, sizeof(buf));
                if (n <= 0)
                        break;
                for (char *p = buf; p < buf + n;) {
                        const struct inotify_event *ev = (const void *)p;
                        /* the file itself, or a symlink swap such as a ConfigMap's ..data */
                        if (ev->mask & IN_Q_OVERFLOW || !ev->len ||
                            strcmp(ev->name, f->base) == 0 || ev->name[0] == '.')
                                relevant = true;
                        p += sizeof(*ev) + ev->len;
                }
        }
        if (relevant)
                disc_file_check(f, NULL, 0);
}

int disc_file_watch(struct disc_file *f, struct loop *loop, uint32_t poll_ms)
{
        f->loop = loop;
        f->poll_ms = poll_ms ? poll_ms : DISC_FILE_POLL_MS;
        loop_timer_init(&f->poll, poll_cb, f);
        int rc = loop_timer_arm(loop, &f->poll, f->poll_ms);
        if (rc)
                return rc;
        f->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (f->ifd < 0) {
                log_warn(COMP, 0, "inotify unavailable (%s): polling %s every %ums",
                         strerror(errno), f->path, f->poll_ms);
                return 0;
        }
        if (inotify_add_watch(f->ifd, f->dir,
                              IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE |
                                  IN_ATTRIB) < 0) {
                log_warn(COMP, 0, "cannot watch %s (%s): polling %s every %ums", f->dir,
                         strerror(errno), f->path, f->poll_ms);
                close(f->ifd);
                f->ifd = -1;
                return 0;
        }
        loop_io_init(&f->ino_io, f->ifd, inotify_cb, f);
        rc = loop_io_add(loop, &f->ino_io, EPOLLIN);
        if (rc) {
                close(f->ifd);
                f->ifd = -1;
                return rc;
        }
        return 0;
}

void disc_file_free(struct disc_file *f)
{
        if (!f)
                return;
        if (f->loop) {
                loop_timer_cancel(f->loop, &f->poll);
                if (f->ifd >= 0)
                        loop_io_del(f->loop, &f->ino_io);
        }
        if (f->ifd >= 0)
                close(f->ifd);
        free(f);
}

void disc_file_render(const struct disc_file *f, struct strbuf *sb)
{
        strbuf_append(sb, "{\"path\":");
        strbuf_append_json_string(sb, f->path);
        strbuf_appendf(sb, ",\"valid\":%s,\"loads\":%llu,\"rejects\":%llu,\"last_error\":",
                       f->good ? "true" : "false", (unsigned long long)f->n_loads,
                       (unsigned long long)f->n_rejects);
        if (f->last_error[0])
                strbuf_append_json_string(sb, f->last_error);
        else
                strbuf_append(sb, "null");
        strbuf_append(sb, "}");
}

// SPDX-License-Identifier: Apache-2.0
/* Traffic routes: parsing, compilation and matching; see routes.h. */
#include "discovery/routes.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "core/config.h"
#include "core/hash.h"

/* ---- lifetime --------------------------------------------------------------- */

static void kv_free(struct dr_kv_match *k)
{
        free(k->name);
        free(k->value);
        regex_free(k->re);
}

static void hdr_mod_free(struct dr_header_mod *h)
{
        for (uint32_t i = 0; i < h->n_set; i++)
                free(h->set[i].name), free(h->set[i].value);
        for (uint32_t i = 0; i < h->n_add; i++)
                free(h->add[i].name), free(h->add[i].value);
        for (uint32_t i = 0; i < h->n_remove; i++)
                free(h->remove[i].name);
}

static void routes_free(struct dr_routes *r)
{
        for (uint32_t i = 0; i < r->n_matches; i++) {
                struct dr_match *m = &r->matches[i];
                free(m->path);
                regex_free(m->path_re);
                for (uint32_t k = 0; k < m->n_headers; k++)
                        kv_free(&m->headers[k]);
                for (uint32_t k = 0; k < m->n_query; k++)
                        kv_free(&m->query[k]);
        }
        for (uint32_t i = 0; i < r->n_rules; i++) {
                struct dr_rule *u = &r->rules[i];
                hdr_mod_free(&u->req_hdr);
                hdr_mod_free(&u->resp_hdr);
                free(u->rewrite_path);
                free(u->rewrite_host);
                free(u->redirect_scheme);
                free(u->redirect_host);
                free(u->redirect_path);
                if (u->rl)
                        free(u->rl->sources);
                free(u->rl);
        }
        for (uint32_t i = 0; i < r->n_ports; i++) {
                free(r->ports[i].matches);
                free(r->ports[i].slots);
                free(r->ports[i].pos);
        }
        free(r->ports);
        free(r->matches);
        free(r->rules);
        free(r->routes);
        free(r);
}

void dr_routes_ref(struct dr_routes *r)
{
        if (r)
                atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void dr_routes_unref(struct dr_routes *r)
{
        if (r && atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
                routes_free(r);
}

static const char *const method_names[DR_METHOD__COUNT] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"};

int dr_method_parse(const char *s, size_t n)
{
        for (int i = 0; i < DR_METHOD__COUNT; i++)
                if (strlen(method_names[i]) == n && memcmp(method_names[i], s, n) == 0)
                        return i;
        return -1;
}

/* ---- parsing ---------------------------------------------------------------- */

struct pctx {
        const struct dr_parse_ctx *pc;
        struct dr_routes *r;
        char *err;
        size_t errlen;
        char *path;
        size_t pathlen, plen;
        const cJSON **where;
};

__attribute__((format(printf, 3, 4))) static int bad(struct pctx *p, const cJSON *at,
                                                     const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, p->errlen, fmt, ap);
        va_end(ap);
        *p->where = at;
        return -EINVAL;
}

static size_t push(struct pctx *p, const char *key, long idx)
{
        size_t old = p->plen;
        int n = key ? snprintf(p->path + p->plen, p->pathlen - p->plen, ".%s", key)
                    : snprintf(p->path + p->plen, p->pathlen - p->plen, "[%ld]", idx);
        if (n > 0)
                p->plen += (size_t)n;
        if (p->plen >= p->pathlen)
                p->plen = p->pathlen - 1;
        return old;
}

static void pop(struct pctx *p, size_t old)
{
        p->plen = old;
        p->path[old] = '\0';
}

/* Only the allowed keys. */
static int keys_ok(struct pctx *p, const cJSON *o, const char *const *allowed)
{
        if (!cJSON_IsObject(o))
                return bad(p, o, "expected an object");
        for (const cJSON *c = o->child; c; c = c->next) {
                bool ok = false;
                for (const char *const *a = allowed; *a && !ok; a++)
                        ok = strcmp(*a, c->string) == 0;
                if (!ok) {
                        push(p, c->string, 0);
                        return bad(p, c, "unknown key");
                }
                for (const cJSON *d = o->child; d != c; d = d->next)
                        if (strcmp(d->string, c->string) == 0) {
                                push(p, c->string, 0);
                                return bad(p, c, "duplicate key");
                        }
        }
        return 0;
}

/* A string field into a new allocation (*out), 1..cap-1 bytes. Missing:
 * an error when required, else *out stays NULL. */
static int str_field(struct pctx *p, const cJSON *o, const char *key, size_t cap, bool required,
                     char **out)
{
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!f)
                return required ? bad(p, o, "missing key '%s'", key) : 0;
        size_t old = push(p, key, 0);
        if (!cJSON_IsString(f))
                return bad(p, f, "expected a string");
        size_t n = strlen(f->valuestring);
        if (n == 0 || n >= cap)
                return bad(p, f, "expected 1..%zu characters", cap - 1);
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)f->valuestring[i] < 0x20 || f->valuestring[i] == 0x7f)
                        return bad(p, f, "control character in value");
        *out = strdup(f->valuestring);
        if (!*out)
                return bad(p, f, "out of memory");
        pop(p, old);
        return 0;
}

static int int_field(struct pctx *p, const cJSON *o, const char *key, long long min, long long max,
                     long long *out)
{
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!f)
                return 1;
        size_t old = push(p, key, 0);
        if (!cJSON_IsNumber(f))
                return bad(p, f, "expected an integer");
        double d = f->valuedouble;
        /* The range first: a cast of a double beyond long long is undefined. */
        if (!(d >= (double)min && d <= (double)max))
                return bad(p, f, "%g is out of range %lld..%lld", d, min, max);
        if (d != (double)(long long)d)
                return bad(p, f, "expected an integer");
        *out = (long long)d;
        pop(p, old);
        return 0;
}

static int duration_field(struct pctx *p, const cJSON *o, const char *key, uint32_t *out)
{
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!f)
                return 0;
        size_t old = push(p, key, 0);
        uint64_t ms;
        if (!cJSON_IsString(f) || parse_duration_ms(f->valuestring, &ms))
                return bad(p, f, "expected a duration such as \"500ms\" or \"10s\"");
        if (ms == 0 || ms > DR_TIMEOUT_MAX_MS)
                return bad(p, f, "out of range 1ms..%us", DR_TIMEOUT_MAX_MS / 1000);
        *out = (uint32_t)ms;
        pop(p, old);
        return 0;
}

static const cJSON *array_field(struct pctx *p, const cJSON *o, const char *key, int max, int *err)
{
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, key);
        *err = 0;
        if (!f)
                return NULL;
        if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) > max) {
                push(p, key, 0);
                *err = bad(p, f, "expected an array of at most %d items", max);
                return NULL;
        }
        return f;
}

/* HTTP field names are tokens. */
static bool token(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!(isalnum((unsigned char)*s) || strchr("!#$%&'*+-.^_`|~", *s)))
                        return false;
        return true;
}

static int compile_re(struct pctx *p, const cJSON *at, const char *pattern, struct regex **out)
{
        char why[200];
        *out = regex_compile(pattern, why, sizeof(why));
        if (!*out)
                return bad(p, at, "regular expression '%s' rejected: %s", pattern, why);
        return 0;
}

static int parse_kv(struct pctx *p, const cJSON *arr, bool header, struct dr_kv_match *out,
                    uint32_t *n)
{
        static const char *const keys[] = {"type", "name", "value", NULL};
        long i = 0;
        for (const cJSON *x = arr->child; x; x = x->next, i++) {
                size_t old = push(p, NULL, i);
                struct dr_kv_match *k = &out[*n];
                memset(k, 0, sizeof(*k));
                (*n)++;
                if (keys_ok(p, x, keys) || str_field(p, x, "name", DR_NAME_MAX, true, &k->name) ||
                    str_field(p, x, "value", DR_VALUE_MAX, true, &k->value))
                        return -EINVAL;
                k->value_len = strlen(k->value);
                if (header && !token(k->name))
                        return bad(p, x, "'%s' is not a valid header name", k->name);
                for (uint32_t j = 0; j + 1 < *n; j++)
                        if (header ? strcasecmp(out[j].name, k->name) == 0
                                   : strcmp(out[j].name, k->name) == 0)
                                return bad(p, x, "'%s' is matched twice", k->name);
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(x, "type");
                if (t && !(cJSON_IsString(t) && (strcmp(t->valuestring, "Exact") == 0 ||
                                                 strcmp(t->valuestring, "RegularExpression") == 0)))
                        return push(p, "type", 0),
                               bad(p, t, "expected \"Exact\" or \"RegularExpression\"");
                if (t && strcmp(t->valuestring, "RegularExpression") == 0) {
                        k->type = DR_VALUE_REGEX;
                        if (compile_re(p, x, k->value, &k->re))
                                return -EINVAL;
                }
                pop(p, old);
        }
        return 0;
}

/* o's array key (optional, at most DR_MAX_KV_MATCHES) of header (else
 * query parameter) matches, parsed into out[0..*n); on failure the path
 * names key. */
static int kv_field(struct pctx *p, const cJSON *o, const char *key, bool header,
                    struct dr_kv_match *out, uint32_t *n)
{
        int err;
        const cJSON *arr = array_field(p, o, key, DR_MAX_KV_MATCHES, &err);
        size_t old = push(p, key, 0);
        if (err || (arr && parse_kv(p, arr, header, out, n)))
                return -EINVAL;
        pop(p, old);
        return 0;
}

static int set_path(struct pctx *p, const cJSON *at, struct dr_match *m, enum dr_path_type type,
                    const char *value)
{
        m->path_type = type;
        m->path = strdup(value);
        if (!m->path)
                return bad(p, at, "out of memory");
        m->path_len = strlen(m->path);
        if (type == DR_PATH_REGEX)
                return compile_re(p, at, value, &m->path_re);
        if (value[0] != '/')
                return bad(p, at, "a path must start with '/'");
        if (strchr(value, '?') || strchr(value, '#'))
                return bad(p, at, "a path match cannot contain '?' or '#'");
        /* A prefix matches by path element: "/foo/" is "/foo". */
        while (type == DR_PATH_PREFIX && m->path_len > 1 && m->path[m->path_len - 1] == '/')
                m->path[--m->path_len] = '\0';
        return 0;
}

static int parse_http_match(struct pctx *p, const cJSON *x, struct dr_match *m)
{
        static const char *const keys[] = {"path", "method", "headers", "queryParams", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "path");
        if (f) {
                static const char *const pkeys[] = {"type", "value", NULL};
                size_t old = push(p, "path", 0);
                char *value = NULL;
                if (keys_ok(p, f, pkeys) || str_field(p, f, "value", DR_VALUE_MAX, false, &value))
                        return -EINVAL;
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(f, "type");
                enum dr_path_type type = DR_PATH_PREFIX;
                if (t) {
                        const char *ts = cJSON_IsString(t) ? t->valuestring : "";
                        if (strcmp(ts, "Exact") == 0)
                                type = DR_PATH_EXACT;
                        else if (strcmp(ts, "RegularExpression") == 0)
                                type = DR_PATH_REGEX;
                        else if (strcmp(ts, "PathPrefix") != 0) {
                                free(value);
                                push(p, "type", 0);
                                return bad(p, t,
                                           "expected \"Exact\", \"PathPrefix\" or "
                                           "\"RegularExpression\"");
                        }
                }
                push(p, "value", 0);
                int rc = set_path(p, f, m, type, value ? value : "/");
                free(value);
                if (rc)
                        return rc;
                pop(p, old);
        } else if (set_path(p, x, m, DR_PATH_PREFIX, "/")) {
                return -EINVAL;
        }
        m->method = -1;
        if ((f = cJSON_GetObjectItemCaseSensitive(x, "method"))) {
                m->method = cJSON_IsString(f)
                                ? dr_method_parse(f->valuestring, strlen(f->valuestring))
                                : -1;
                if (m->method < 0)
                        return push(p, "method", 0),
                               bad(p, f,
                                   "expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, "
                                   "OPTIONS, TRACE, PATCH");
        }
        if (kv_field(p, x, "headers", true, m->headers, &m->n_headers) ||
            kv_field(p, x, "queryParams", false, m->query, &m->n_query))
                return -EINVAL;
        return 0;
}

static bool grpc_name(const char *s, bool dots)
{
        for (; *s; s++)
                if (!(isalnum((unsigned char)*s) || *s == '_' || (dots && *s == '.')))
                        return false;
        return true;
}

/* A GRPCRoute match: its method match becomes a path match on
 * "/<service>/<method>". */
static int parse_grpc_match(struct pctx *p, const cJSON *x, struct dr_match *m)
{
        static const char *const keys[] = {"method", "headers", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        m->method = -1;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "method");
        char *svc = NULL, *meth = NULL;
        bool regex = false;
        if (f) {
                static const char *const mkeys[] = {"type", "service", "method", NULL};
                size_t old = push(p, "method", 0);
                if (keys_ok(p, f, mkeys) ||
                    str_field(p, f, "service", DR_VALUE_MAX / 4, false, &svc) ||
                    str_field(p, f, "method", DR_VALUE_MAX / 4, false, &meth))
                        goto fail;
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(f, "type");
                if (t &&
                    !(cJSON_IsString(t) && (strcmp(t->valuestring, "Exact") == 0 ||
                                            strcmp(t->valuestring, "RegularExpression") == 0))) {
                        bad(p, t, "expected \"Exact\" or \"RegularExpression\"");
                        goto fail;
                }
                regex = t && strcmp(t->valuestring, "RegularExpression") == 0;
                if (!svc && !meth) {
                        bad(p, f, "a method match needs 'service' or 'method'");
                        goto fail;
                }
                if (!regex &&
                    ((svc && !grpc_name(svc, true)) || (meth && !grpc_name(meth, false)))) {
                        bad(p, f, "not a gRPC service or method name");
                        goto fail;
                }
                pop(p, old);
        }
        char path[DR_VALUE_MAX];
        int rc;
        if (!f) {
                rc = set_path(p, x, m, DR_PATH_PREFIX, "/");
        } else if (regex || (!svc && meth)) {
                snprintf(path, sizeof(path), "/%s%s%s/%s%s%s", svc ? "(?:" : "",
                         svc ? svc : "[^/]+", svc ? ")" : "", meth && regex ? "(?:" : "",
                         meth ? meth : "[^/]+", meth && regex ? ")" : "");
                push(p, "method", 0);
                rc = set_path(p, f, m, DR_PATH_REGEX, path);
        } else if (meth) {
                snprintf(path, sizeof(path), "/%s/%s", svc, meth);
                rc = set_path(p, f, m, DR_PATH_EXACT, path);
        } else {
                snprintf(path, sizeof(path), "/%s", svc);
                rc = set_path(p, f, m, DR_PATH_PREFIX, path);
        }
        free(svc);
        free(meth);
        if (rc)
                return rc;
        return kv_field(p, x, "headers", true, m->headers, &m->n_headers);
fail:
        free(svc);
        free(meth);
        return -EINVAL;
}

static int parse_ops(struct pctx *p, const cJSON *o, const char *key, bool with_value,
                     struct dr_header_op *ops, uint32_t *n)
{
        int err;
        const cJSON *arr = array_field(p, o, key, DR_MAX_HEADER_OPS, &err);
        if (err || !arr)
                return err;
        size_t old = push(p, key, 0);
        long i = 0;
        for (const cJSON *x = arr->child; x; x = x->next, i++) {
                size_t o2 = push(p, NULL, i);
                struct dr_header_op *op = &ops[(*n)++];
                if (!with_value) {
                        if (!cJSON_IsString(x) || !token(x->valuestring))
                                return bad(p, x, "expected a header name");
                        if (!(op->name = strdup(x->valuestring)))
                                return bad(p, x, "out of memory");
                } else {
                        static const char *const keys[] = {"name", "value", NULL};
                        if (keys_ok(p, x, keys) ||
                            str_field(p, x, "name", DR_NAME_MAX, true, &op->name))
                                return -EINVAL;
                        const cJSON *v = cJSON_GetObjectItemCaseSensitive(x, "value");
                        if (!token(op->name))
                                return bad(p, x, "'%s' is not a valid header name", op->name);
                        if (!cJSON_IsString(v) || strlen(v->valuestring) >= DR_VALUE_MAX ||
                            strpbrk(v->valuestring, "\r\n"))
                                return bad(p, x, "expected 'value', a string without CR or LF");
                        if (!(op->value = strdup(v->valuestring)))
                                return bad(p, x, "out of memory");
                }
                if (strcasecmp(op->name, "host") == 0 || op->name[0] == ':')
                        return bad(p, x, "'%s' cannot be modified by a header filter", op->name);
                pop(p, o2);
        }
        pop(p, old);
        return 0;
}

static int parse_hdr_mod(struct pctx *p, const cJSON *x, struct dr_header_mod *h)
{
        static const char *const keys[] = {"set", "add", "remove", NULL};
        if (keys_ok(p, x, keys) || parse_ops(p, x, "set", true, h->set, &h->n_set) ||
            parse_ops(p, x, "add", true, h->add, &h->n_add) ||
            parse_ops(p, x, "remove", false, h->remove, &h->n_remove))
                return -EINVAL;
        return 0;
}

/* HTTPPathModifier: {"type": "ReplaceFullPath"|"ReplacePrefixMatch", ...}. */
static int parse_path_mod(struct pctx *p, const cJSON *x, enum dr_rewrite *type, char **path)
{
        static const char *const keys[] = {"type", "replaceFullPath", "replacePrefixMatch", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(x, "type");
        const char *ts = cJSON_IsString(t) ? t->valuestring : "";
        if (strcmp(ts, "ReplaceFullPath") == 0) {
                *type = DR_REWRITE_FULL;
                if (str_field(p, x, "replaceFullPath", DR_VALUE_MAX, true, path))
                        return -EINVAL;
        } else if (strcmp(ts, "ReplacePrefixMatch") == 0) {
                *type = DR_REWRITE_PREFIX;
                if (str_field(p, x, "replacePrefixMatch", DR_VALUE_MAX, true, path))
                        return -EINVAL;
        } else {
                return bad(p, t ? t : x,
                           "'type' must be \"ReplaceFullPath\" or \"ReplacePrefixMatch\"");
        }
        if ((*path)[0] != '/' || strpbrk(*path, "?# "))
                return bad(p, x, "a path must start with '/' and have no '?', '#' or space");
        return 0;
}

static int parse_backend(struct pctx *p, const cJSON *x, uint16_t route_port, struct dr_backend *b);
static int parse_mirror(struct pctx *p, const cJSON *x, uint16_t route_port, struct dr_rule *u);

static int parse_filter(struct pctx *p, const cJSON *x, uint16_t route_port, struct dr_rule *u)
{
        static const char *const keys[] = {
            "type",       "requestHeaderModifier", "responseHeaderModifier",
            "urlRewrite", "requestRedirect",       "requestMirror",
            NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(x, "type");
        const char *ts = cJSON_IsString(t) ? t->valuestring : "";
        static const struct {
                const char *type, *key;
        } kinds[] = {{"RequestHeaderModifier", "requestHeaderModifier"},
                     {"ResponseHeaderModifier", "responseHeaderModifier"},
                     {"URLRewrite", "urlRewrite"},
                     {"RequestRedirect", "requestRedirect"},
                     {"RequestMirror", "requestMirror"}};
        int kind = -1;
        for (int i = 0; i < 5; i++)
                if (strcmp(ts, kinds[i].type) == 0)
                        kind = i;
        if (kind < 0)
                return bad(p, t ? t : x,
                           "'type' must be RequestHeaderModifier, ResponseHeaderModifier, "
                           "URLRewrite, RequestRedirect or RequestMirror");
        const cJSON *body = cJSON_GetObjectItemCaseSensitive(x, kinds[kind].key);
        if (!body)
                return bad(p, x, "a %s filter needs '%s'", ts, kinds[kind].key);
        for (const cJSON *c = x->child; c; c = c->next)
                if (strcmp(c->string, "type") && strcmp(c->string, kinds[kind].key))
                        return push(p, c->string, 0), bad(p, c, "not allowed with type %s", ts);
        size_t old = push(p, kinds[kind].key, 0);
        switch (kind) {
        case 0:
        case 1: {
                bool *has = kind ? &u->has_resp_hdr : &u->has_req_hdr;
                if (*has)
                        return bad(p, body, "a second %s in one rule", ts);
                *has = true;
                if (parse_hdr_mod(p, body, kind ? &u->resp_hdr : &u->req_hdr))
                        return -EINVAL;
                break;
        }
        case 2: {
                static const char *const rkeys[] = {"hostname", "path", NULL};
                if (u->rewrite || u->rewrite_host)
                        return bad(p, body, "a second URLRewrite in one rule");
                if (keys_ok(p, body, rkeys) ||
                    str_field(p, body, "hostname", 254, false, &u->rewrite_host))
                        return -EINVAL;
                const cJSON *pm = cJSON_GetObjectItemCaseSensitive(body, "path");
                size_t o2 = push(p, "path", 0);
                if (pm && parse_path_mod(p, pm, &u->rewrite, &u->rewrite_path))
                        return -EINVAL;
                pop(p, o2);
                if (!pm && !u->rewrite_host)
                        return bad(p, body, "a URLRewrite needs 'hostname' or 'path'");
                break;
        }
        case 4:
                if (parse_mirror(p, body, route_port, u))
                        return -EINVAL;
                break;
        default: {
                static const char *const rkeys[] = {"scheme", "hostname",   "path",
                                                    "port",   "statusCode", NULL};
                if (u->redirect)
                        return bad(p, body, "a second RequestRedirect in one rule");
                u->redirect = true;
                u->redirect_status = 302;
                long long v;
                if (keys_ok(p, body, rkeys) ||
                    str_field(p, body, "scheme", 16, false, &u->redirect_scheme) ||
                    str_field(p, body, "hostname", 254, false, &u->redirect_host))
                        return -EINVAL;
                if (u->redirect_scheme && strcmp(u->redirect_scheme, "http") &&
                    strcmp(u->redirect_scheme, "https"))
                        return bad(p, body, "'scheme' must be \"http\" or \"https\"");
                int rc = int_field(p, body, "port", 1, 65535, &v);
                if (rc < 0)
                        return rc;
                if (rc == 0)
                        u->redirect_port = (uint16_t)v;
                if ((rc = int_field(p, body, "statusCode", 301, 308, &v)) < 0)
                        return rc;
                if (rc == 0) {
                        if (v != 301 && v != 302 && v != 303 && v != 307 && v != 308)
                                return bad(p, body,
                                           "'statusCode' must be 301, 302, 303, 307 "
                                           "or 308");
                        u->redirect_status = (uint16_t)v;
                }
                const cJSON *pm = cJSON_GetObjectItemCaseSensitive(body, "path");
                size_t o2 = push(p, "path", 0);
                if (pm && parse_path_mod(p, pm, &u->redirect_path_type, &u->redirect_path))
                        return -EINVAL;
                pop(p, o2);
                break;
        }
        }
        pop(p, old);
        return 0;
}

static bool label_chars(const char *s)
{
        if (!*s || strlen(s) >= DR_NAME_MAX)
                return false;
        for (; *s; s++)
                if (!(isalnum((unsigned char)*s) || strchr("-_./", *s)))
                        return false;
        return true;
}

static int kv_cmp(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* {"k": "v", ...} into "k=v,k=v" sorted by key. 0 or -EINVAL with why. */
int dr_labels_format(const cJSON *obj, char *out, size_t cap, char *why, size_t whylen)
{
        if (!cJSON_IsObject(obj)) {
                snprintf(why, whylen, "expected an object of label names to values");
                return -EINVAL;
        }
        const char *items[DR_MAX_LABELS];
        char buf[DR_MAX_LABELS][2 * DR_NAME_MAX + 2];
        size_t n = 0;
        for (const cJSON *c = obj->child; c; c = c->next) {
                if (n == DR_MAX_LABELS) {
                        snprintf(why, whylen, "more than %d labels", DR_MAX_LABELS);
                        return -EINVAL;
                }
                if (!label_chars(c->string) || !cJSON_IsString(c) || !label_chars(c->valuestring)) {
                        snprintf(why, whylen,
                                 "label '%s': names and values are 1..%d of a-z, A-Z, 0-9, "
                                 "'-', '_', '.', '/'",
                                 c->string, DR_NAME_MAX - 1);
                        return -EINVAL;
                }
                snprintf(buf[n], sizeof(buf[n]), "%s=%s", c->string, c->valuestring);
                items[n] = buf[n];
                n++;
        }
        qsort(items, n, sizeof(items[0]), kv_cmp);
        size_t off = 0;
        out[0] = '\0';
        for (size_t i = 0; i < n; i++) {
                int w = snprintf(out + off, cap - off, "%s%s", i ? "," : "", items[i]);
                if (w < 0 || (size_t)w >= cap - off) {
                        snprintf(why, whylen, "labels longer than %zu bytes", cap - 1);
                        return -EINVAL;
                }
                off += (size_t)w;
        }
        return 0;
}

bool dr_labels_select(const char *selector, const char *labels)
{
        const char *s = selector;
        while (*s) {
                const char *e = strchr(s, ',');
                size_t n = e ? (size_t)(e - s) : strlen(s);
                bool found = false;
                for (const char *l = labels; *l && !found;) {
                        const char *le = strchr(l, ',');
                        size_t ln = le ? (size_t)(le - l) : strlen(l);
                        found = ln == n && memcmp(l, s, n) == 0;
                        l = le ? le + 1 : l + ln;
                }
                if (!found)
                        return false;
                s = e ? e + 1 : s + n;
        }
        return true;
}

static int parse_backend(struct pctx *p, const cJSON *x, uint16_t route_port, struct dr_backend *b)
{
        static const char *const keys[] = {"name",     "namespace", "port",  "weight",
                                           "selector", "kind",      "group", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        char *name = NULL, *ns = NULL;
        if (str_field(p, x, "name", DR_NAME_MAX, true, &name) ||
            str_field(p, x, "namespace", DR_NAME_MAX, false, &ns)) {
                free(name);
                return -EINVAL;
        }
        snprintf(b->name, sizeof(b->name), "%s", name);
        snprintf(b->ns, sizeof(b->ns), "%s", ns ? ns : p->pc->ns);
        free(name);
        free(ns);
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(x, "kind");
        if (k && !(cJSON_IsString(k) && strcmp(k->valuestring, "Service") == 0))
                return push(p, "kind", 0), bad(p, k, "only \"Service\" backends are supported");
        k = cJSON_GetObjectItemCaseSensitive(x, "group");
        if (k && !(cJSON_IsString(k) && k->valuestring[0] == '\0'))
                return push(p, "group", 0), bad(p, k, "only the core group (\"\") is supported");
        long long v;
        int rc = int_field(p, x, "port", 1, 65535, &v);
        if (rc < 0)
                return rc;
        b->port = rc == 0 ? (uint16_t)v : 0;
        b->weight = 1;
        if ((rc = int_field(p, x, "weight", 0, DR_WEIGHT_MAX, &v)) < 0)
                return rc;
        if (rc == 0)
                b->weight = (uint32_t)v;
        const cJSON *sel = cJSON_GetObjectItemCaseSensitive(x, "selector");
        if (sel) {
                char why[160];
                push(p, "selector", 0);
                if (dr_labels_format(sel, b->selector, sizeof(b->selector), why, sizeof(why)))
                        return bad(p, sel, "%s", why);
                if (!b->selector[0])
                        return bad(p, sel, "an empty selector: leave it out to use every endpoint");
                p->plen = strlen(p->path) - strlen(".selector");
                p->path[p->plen] = '\0';
        }
        uint16_t port = b->port ? b->port : route_port;
        if (p->pc->service_exists && !p->pc->service_exists(p->pc->ctx, b->ns, b->name, port)) {
                if (p->pc->service_exists(p->pc->ctx, b->ns, b->name, 0))
                        return bad(p, x, "service %s/%s has no port %u", b->ns, b->name, port);
                return bad(p, x, "unknown backend service %s/%s", b->ns, b->name);
        }
        return 0;
}

/* RequestMirror: {"backendRef", "percent" 0..100 | "fraction":
 * {"numerator", "denominator"}} (default: every request). */
static int parse_mirror(struct pctx *p, const cJSON *x, uint16_t route_port, struct dr_rule *u)
{
        static const char *const keys[] = {"backendRef", "percent", "fraction", NULL};
        if (u->has_mirror)
                return bad(p, x, "a second RequestMirror in one rule (one is supported)");
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(x, "backendRef");
        if (!cJSON_IsObject(b))
                return bad(p, b ? b : x, "a RequestMirror needs 'backendRef', an object");
        size_t old = push(p, "backendRef", 0);
        if (parse_backend(p, b, route_port, &u->mirror))
                return -EINVAL;
        pop(p, old);
        u->has_mirror = true;
        u->mirror_ppm = 1000000;
        long long v;
        int rc = int_field(p, x, "percent", 0, 100, &v);
        if (rc < 0)
                return rc;
        if (rc == 0)
                u->mirror_ppm = (uint32_t)v * 10000;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "fraction");
        if (f) {
                static const char *const fkeys[] = {"numerator", "denominator", NULL};
                long long num, den = 100;
                old = push(p, "fraction", 0);
                if (rc == 0)
                        return bad(p, f, "'percent' and 'fraction' are exclusive");
                if (keys_ok(p, f, fkeys))
                        return -EINVAL;
                if ((rc = int_field(p, f, "numerator", 0, 1000000, &num)) < 0)
                        return rc;
                if (rc)
                        return bad(p, f, "a fraction needs 'numerator'");
                if ((rc = int_field(p, f, "denominator", 1, 1000000, &den)) < 0)
                        return rc;
                if (num > den)
                        return bad(p, f, "the numerator is above the denominator");
                u->mirror_ppm = (uint32_t)(num * 1000000 / den);
                pop(p, old);
        }
        return 0;
}

/* A fault's "percentage": a number in (0, 100], as parts per million. */
static int percent_field(struct pctx *p, const cJSON *o, uint32_t *ppm)
{
        const cJSON *pc = cJSON_GetObjectItemCaseSensitive(o, "percentage");
        if (!cJSON_IsNumber(pc) || pc->valuedouble <= 0 || pc->valuedouble > 100)
                return push(p, "percentage", 0),
                       bad(p, pc ? pc : o, "'percentage' must be a number above 0, at most 100");
        *ppm = (uint32_t)(pc->valuedouble * 10000 + 0.5);
        return 0;
}

static int parse_abort(struct pctx *p, const cJSON *a, struct dr_rule *u)
{
        static const char *const akeys[] = {"httpStatus", "grpcStatus", "percentage", NULL};
        long long v;
        if (keys_ok(p, a, akeys))
                return -EINVAL;
        int rc = int_field(p, a, "httpStatus", 200, 599, &v);
        if (rc < 0)
                return rc;
        if (rc)
                return bad(p, a, "an abort needs 'httpStatus'");
        u->abort_http = (uint16_t)v;
        u->abort_grpc = 14; /* UNAVAILABLE */
        if ((rc = int_field(p, a, "grpcStatus", 1, 16, &v)) < 0)
                return rc;
        if (rc == 0)
                u->abort_grpc = (int16_t)v;
        return percent_field(p, a, &u->abort_ppm);
}

static int parse_delay(struct pctx *p, const cJSON *d, struct dr_rule *u)
{
        static const char *const dkeys[] = {"fixedDelay", "percentage", NULL};
        if (keys_ok(p, d, dkeys) || duration_field(p, d, "fixedDelay", &u->delay_ms))
                return -EINVAL;
        if (!u->delay_ms)
                return bad(p, d, "a delay needs 'fixedDelay'");
        return percent_field(p, d, &u->delay_ppm);
}

/* fault (extension, as Istio's HTTPFaultInjection): {"abort": {"httpStatus",
 * "grpcStatus", "percentage"}, "delay": {"fixedDelay", "percentage"}}. */
static int parse_fault(struct pctx *p, const cJSON *x, struct dr_rule *u)
{
        static const char *const keys[] = {"abort", "delay", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(x, "abort");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(x, "delay");
        if (!a && !d)
                return bad(p, x, "a fault needs 'abort' or 'delay'");
        size_t old;
        if (a) {
                old = push(p, "abort", 0);
                if (parse_abort(p, a, u))
                        return -EINVAL;
                pop(p, old);
        }
        if (d) {
                old = push(p, "delay", 0);
                if (parse_delay(p, d, u))
                        return -EINVAL;
                pop(p, old);
        }
        return 0;
}

/* rateLimit (extension): {"requestsPerSecond", "burst", "perSource"}. */
static int parse_rate_limit(struct pctx *p, const cJSON *x, struct dr_rule *u)
{
        static const char *const keys[] = {"requestsPerSecond", "burst", "perSource", NULL};
        if (keys_ok(p, x, keys))
                return -EINVAL;
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "requestsPerSecond");
        if (!cJSON_IsNumber(f) || !(f->valuedouble >= 0.001 && f->valuedouble <= DR_RL_RPS_MAX))
                return push(p, "requestsPerSecond", 0),
                       bad(p, f ? f : x, "'requestsPerSecond' must be a number 0.001..%d",
                           DR_RL_RPS_MAX);
        double rps = f->valuedouble;
        long long burst = 0;
        int rc = int_field(p, x, "burst", 1, DR_RL_RPS_MAX, &burst);
        if (rc < 0)
                return rc;
        if (rc) /* default: one second's worth */
                burst = rps < 1 ? 1 : (long long)(rps + 0.5);
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(x, "perSource");
        if (ps && !cJSON_IsBool(ps))
                return push(p, "perSource", 0), bad(p, ps, "expected true or false");
        struct dr_ratelimit *rl = aligned_alloc(64, sizeof(*rl));
        if (!rl)
                return bad(p, x, "out of memory");
        memset(rl, 0, sizeof(*rl));
        u->rl = rl;
        rl->rps = rps;
        rl->burst = (uint32_t)burst;
        rl->interval_ns = (uint64_t)(1e9 / rps);
        /* 10 ms of the rate per take from the shared bucket, at most a
         * quarter of the burst: what a thread may hold unspent is small. */
        double chunk = rps / 100;
        if (chunk > burst / 4.0)
                chunk = burst / 4.0;
        rl->chunk = chunk < 1 ? 1 : (uint32_t)chunk;
        rl->per_source = cJSON_IsTrue(ps);
        if (rl->per_source) {
                rl->chunk = 1; /* no per-thread cache: each source is its own bucket */
                rl->sources = calloc(DR_RL_SOURCES, sizeof(*rl->sources));
                if (!rl->sources)
                        return bad(p, x, "out of memory");
        }
        return 0;
}

static int parse_rule(struct pctx *p, const cJSON *x, const struct dr_route *rt, uint32_t route,
                      uint32_t index)
{
        static const char *const keys[] = {"name",  "matches", "filters", "backendRefs", "timeouts",
                                           "retry", "sticky",  "fault",   "rateLimit",   NULL};
        struct dr_routes *r = p->r;
        if (r->n_rules >= DR_MAX_RULES)
                return bad(p, x, "more than %d rules for one service", DR_MAX_RULES);
        struct dr_rule *u = &r->rules[r->n_rules++];
        u->route = route;
        u->index = index;
        u->retry_attempts = -1;
        if (keys_ok(p, x, keys))
                return -EINVAL;
        int err;
        const cJSON *arr = array_field(p, x, "matches", DR_MAX_MATCHES, &err);
        if (err)
                return err;
        size_t old = push(p, "matches", 0);
        long i = 0;
        for (const cJSON *m = arr ? arr->child : NULL; m; m = m->next, i++) {
                size_t o2 = push(p, NULL, i);
                struct dr_match *dm = &r->matches[r->n_matches++];
                dm->rule = r->n_rules - 1;
                dm->index = (uint32_t)i;
                if (rt->grpc ? parse_grpc_match(p, m, dm) : parse_http_match(p, m, dm))
                        return -EINVAL;
                pop(p, o2);
        }
        if (!arr || cJSON_GetArraySize(arr) == 0) { /* no matches: every request */
                struct dr_match *dm = &r->matches[r->n_matches++];
                dm->rule = r->n_rules - 1;
                dm->method = -1;
                if (set_path(p, x, dm, DR_PATH_PREFIX, "/"))
                        return -EINVAL;
        }
        pop(p, old);
        if ((arr = array_field(p, x, "filters", 8, &err)) || err) {
                if (err)
                        return err;
                old = push(p, "filters", 0);
                i = 0;
                for (const cJSON *f = arr->child; f; f = f->next, i++) {
                        size_t o2 = push(p, NULL, i);
                        if (parse_filter(p, f, rt->port, u))
                                return -EINVAL;
                        pop(p, o2);
                }
                pop(p, old);
        }
        if ((arr = array_field(p, x, "backendRefs", DR_MAX_BACKENDS, &err)) || err) {
                if (err)
                        return err;
                old = push(p, "backendRefs", 0);
                i = 0;
                for (const cJSON *b = arr->child; b; b = b->next, i++) {
                        size_t o2 = push(p, NULL, i);
                        struct dr_backend *db = &u->backends[u->n_backends++];
                        if (parse_backend(p, b, rt->port, db))
                                return -EINVAL;
                        u->total_weight += db->weight;
                        pop(p, o2);
                }
                if (u->n_backends && u->total_weight == 0)
                        return bad(p, arr, "the backends' weights sum to 0");
                pop(p, old);
        }
        if (u->redirect && (u->n_backends || u->rewrite || u->rewrite_host))
                return bad(p, x,
                           "a RequestRedirect rule cannot also have backendRefs or a "
                           "URLRewrite");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(x, "timeouts");
        if (f) {
                static const char *const tkeys[] = {"request", "backendRequest", NULL};
                old = push(p, "timeouts", 0);
                if (keys_ok(p, f, tkeys) || duration_field(p, f, "request", &u->timeout_ms) ||
                    duration_field(p, f, "backendRequest", &u->backend_timeout_ms))
                        return -EINVAL;
                if (u->timeout_ms && u->backend_timeout_ms > u->timeout_ms)
                        return bad(p, f, "backendRequest is longer than request");
                pop(p, old);
        }
        if ((f = cJSON_GetObjectItemCaseSensitive(x, "retry"))) {
                static const char *const rkeys[] = {"attempts", "backoff", "codes", NULL};
                old = push(p, "retry", 0);
                long long v;
                if (keys_ok(p, f, rkeys) || duration_field(p, f, "backoff", &u->retry_backoff_ms))
                        return -EINVAL;
                int rc = int_field(p, f, "attempts", 0, DR_RETRY_MAX, &v);
                if (rc < 0)
                        return rc;
                if (rc == 0)
                        u->retry_attempts = (int)v;
                const cJSON *codes = array_field(p, f, "codes", 100, &err);
                if (err)
                        return err;
                for (const cJSON *c = codes ? codes->child : NULL; c; c = c->next) {
                        if (!cJSON_IsNumber(c) || c->valuedouble < 500 || c->valuedouble > 599 ||
                            c->valuedouble != (double)(int)c->valuedouble)
                                return push(p, "codes", 0),
                                       bad(p, c, "retry codes are integers 500..599");
                        int code = (int)c->valuedouble - 500;
                        u->retry_codes[code / 64] |= 1ull << (code % 64);
                }
                pop(p, old);
        }
        if ((f = cJSON_GetObjectItemCaseSensitive(x, "fault"))) {
                old = push(p, "fault", 0);
                if (parse_fault(p, f, u))
                        return -EINVAL;
                pop(p, old);
        }
        if ((f = cJSON_GetObjectItemCaseSensitive(x, "rateLimit"))) {
                old = push(p, "rateLimit", 0);
                if (parse_rate_limit(p, f, u))
                        return -EINVAL;
                pop(p, old);
        }
        if ((f = cJSON_GetObjectItemCaseSensitive(x, "sticky"))) {
                if (!cJSON_IsBool(f))
                        return push(p, "sticky", 0), bad(p, f, "expected true or false");
                u->sticky = cJSON_IsTrue(f);
        }
        return 0;
}

/* ---- precedence ----------------------------------------------------------- */

/* Gateway API HTTPRoute precedence: Exact path, then (implementation
 * specific) RegularExpression by pattern length, then PathPrefix by length,
 * then a method match, then more header matches, then more query matches;
 * ties go to the older route (earlier in the file), then rule order. */
static int match_rank(const struct dr_match *m)
{
        return m->path_type == DR_PATH_EXACT ? 0 : m->path_type == DR_PATH_REGEX ? 1 : 2;
}

static const struct dr_routes *sort_routes; /* qsort context; main thread only */

static int precedence(const void *a, const void *b)
{
        const struct dr_match *x = *(const struct dr_match *const *)a;
        const struct dr_match *y = *(const struct dr_match *const *)b;
        int c = match_rank(x) - match_rank(y);
        if (c)
                return c;
        if (x->path_len != y->path_len)
                return x->path_len > y->path_len ? -1 : 1;
        if ((x->method >= 0) != (y->method >= 0))
                return x->method >= 0 ? -1 : 1;
        if (x->n_headers != y->n_headers)
                return x->n_headers > y->n_headers ? -1 : 1;
        if (x->n_query != y->n_query)
                return x->n_query > y->n_query ? -1 : 1;
        const struct dr_rule *rx = &sort_routes->rules[x->rule], *ry = &sort_routes->rules[y->rule];
        if (rx->route != ry->route)
                return rx->route < ry->route ? -1 : 1;
        if (x->rule != y->rule)
                return x->rule < y->rule ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

static bool kv_set_equal(const struct dr_kv_match *a, uint32_t na, const struct dr_kv_match *b,
                         uint32_t nb, bool header)
{
        if (na != nb)
                return false;
        for (uint32_t i = 0; i < na; i++) {
                bool found = false;
                for (uint32_t j = 0; j < nb && !found; j++)
                        found = (header ? strcasecmp(a[i].name, b[j].name) == 0
                                        : strcmp(a[i].name, b[j].name) == 0) &&
                                a[i].type == b[j].type && strcmp(a[i].value, b[j].value) == 0;
                if (!found)
                        return false;
        }
        return true;
}

/* Same conditions: the later one could never match. */
static bool same_match(const struct dr_match *a, const struct dr_match *b)
{
        return a->path_type == b->path_type && a->path_len == b->path_len &&
               strcmp(a->path, b->path) == 0 && a->method == b->method &&
               kv_set_equal(a->headers, a->n_headers, b->headers, b->n_headers, true) &&
               kv_set_equal(a->query, a->n_query, b->query, b->n_query, false);
}

/* ---- the path index (dr_port_table) ---- */

#define IDX_EXACT  1
#define IDX_PREFIX 2
#define IDX_LISTS  64 /* keys a request's path may hit; more: the linear walk */

static uint32_t idx_kind(const struct dr_match *m)
{
        if (m->path_type == DR_PATH_EXACT)
                return IDX_EXACT;
        if (m->path_type == DR_PATH_PREFIX && m->path_len > 1)
                return IDX_PREFIX;
        return 0; /* a regex, or "/": any path */
}

static uint64_t idx_hash(uint32_t kind, const char *p, size_t n)
{
        uint64_t h = hash_fmix64(0x9e3779b97f4a7c15ull ^ kind ^ ((uint64_t)n << 8));
        for (size_t i = 0; i < n; i += 8) {
                uint64_t w = 0;
                memcpy(&w, p + i, n - i < 8 ? n - i : 8);
                h = hash_fmix64(h ^ w);
        }
        return h;
}

/* The slot of (kind, p[0..n)): found, or the empty one it would take
 * (read only: workers look up without a lock). */
static struct dr_idx_slot *idx_slot(const struct dr_port_table *t, uint32_t kind, const char *p,
                                    size_t n)
{
        uint64_t h = idx_hash(kind, p, n);
        for (uint32_t i = (uint32_t)h & t->mask;; i = (i + 1) & t->mask) {
                struct dr_idx_slot *s = &t->slots[i];
                if (!s->kind ||
                    (s->hash == h && s->kind == kind && s->len == n && memcmp(s->key, p, n) == 0))
                        return s;
        }
}

static int build_index(struct dr_port_table *t)
{
        uint32_t cap = 8;
        while (cap < 2 * t->n)
                cap *= 2;
        t->slots = calloc(cap, sizeof(*t->slots));
        t->pos = calloc(t->n, sizeof(*t->pos));
        if (!t->slots || !t->pos)
                return -ENOMEM;
        t->mask = cap - 1;
        for (uint32_t i = 0; i < t->n; i++) { /* count */
                const struct dr_match *m = t->matches[i];
                uint32_t kind = idx_kind(m);
                if (!kind) {
                        t->n_always++;
                        continue;
                }
                struct dr_idx_slot *s = idx_slot(t, kind, m->path, m->path_len);
                s->hash = idx_hash(kind, m->path, m->path_len);
                s->kind = kind;
                s->key = m->path;
                s->len = (uint32_t)m->path_len;
                s->n++;
        }
        uint32_t off = t->n_always;
        for (uint32_t i = 0; i <= t->mask; i++)
                if (t->slots[i].kind) {
                        t->slots[i].off = off;
                        off += t->slots[i].n;
                        t->slots[i].n = 0;
                }
        uint32_t na = 0;
        for (uint32_t i = 0; i < t->n; i++) { /* fill, in precedence order */
                const struct dr_match *m = t->matches[i];
                uint32_t kind = idx_kind(m);
                struct dr_idx_slot *s = kind ? idx_slot(t, kind, m->path, m->path_len) : NULL;
                if (s)
                        t->pos[s->off + s->n++] = i;
                else
                        t->pos[na++] = i;
        }
        return 0;
}

static int build_ports(struct pctx *p, const cJSON *arr)
{
        struct dr_routes *r = p->r;
        const struct dr_parse_ctx *pc = p->pc;
        r->ports = calloc(pc->n_ports ? pc->n_ports : 1, sizeof(*r->ports));
        if (!r->ports)
                return bad(p, arr, "out of memory");
        sort_routes = r;
        for (uint32_t k = 0; k < pc->n_ports; k++) {
                uint16_t port = pc->ports[k];
                const struct dr_match **list =
                    calloc(r->n_matches ? r->n_matches : 1, sizeof(*list));
                if (!list)
                        return bad(p, arr, "out of memory");
                uint32_t n = 0;
                for (uint32_t i = 0; i < r->n_matches; i++) {
                        const struct dr_route *rt = &r->routes[r->rules[r->matches[i].rule].route];
                        if (rt->port == 0 || rt->port == port)
                                list[n++] = &r->matches[i];
                }
                if (n == 0) {
                        free(list);
                        continue;
                }
                for (uint32_t i = 0; i < n && !pc->overlaps_allowed; i++) {
                        for (uint32_t j = 0; j < i; j++) {
                                if (!same_match(list[i], list[j]))
                                        continue;
                                const struct dr_rule *ri = &r->rules[list[i]->rule];
                                const struct dr_rule *rj = &r->rules[list[j]->rule];
                                snprintf(p->path, p->pathlen, "[%u].rules[%u].matches[%u]",
                                         ri->route, ri->index, list[i]->index);
                                p->plen = strlen(p->path);
                                uint32_t jm = list[j]->index;
                                free(list);
                                return bad(p, arr,
                                           "overlaps routes[%u].rules[%u].matches[%u] on port "
                                           "%u (same path, method, headers and query "
                                           "parameters): it could never match",
                                           rj->route, rj->index, jm, port);
                        }
                }
                qsort(list, n, sizeof(*list), precedence);
                struct dr_port_table *t = &r->ports[r->n_ports++];
                t->port = port;
                t->matches = list;
                t->n = n;
                if (build_index(t) < 0)
                        return bad(p, arr, "out of memory");
        }
        return 0;
}

int dr_routes_parse(const cJSON *arr, const struct dr_parse_ctx *pc, struct dr_routes **out,
                    char *err, size_t errlen, char *path, size_t pathlen, const cJSON **where)
{
        *out = NULL;
        *where = arr;
        path[0] = '\0';
        struct pctx p = {.pc = pc,
                         .err = err,
                         .errlen = errlen,
                         .path = path,
                         .pathlen = pathlen,
                         .where = where};
        if (!cJSON_IsArray(arr))
                return bad(&p, arr, "expected an array of routes");
        int n = cJSON_GetArraySize(arr);
        if (n > DR_MAX_ROUTES)
                return bad(&p, arr, "more than %d routes", DR_MAX_ROUTES);
        if (n == 0)
                return 0;
        /* Upper bounds for the arrays: rules and matches are counted first. */
        size_t n_rules = 0, n_matches = 0;
        for (const cJSON *x = arr->child; x; x = x->next) {
                const cJSON *rules = cJSON_GetObjectItemCaseSensitive(x, "rules");
                for (const cJSON *u = cJSON_IsArray(rules) ? rules->child : NULL; u; u = u->next) {
                        n_rules++;
                        const cJSON *m = cJSON_GetObjectItemCaseSensitive(u, "matches");
                        int nm = cJSON_IsArray(m) ? cJSON_GetArraySize(m) : 0;
                        n_matches += nm > DR_MAX_MATCHES ? DR_MAX_MATCHES : nm ? nm : 1;
                }
        }
        if (n_rules > DR_MAX_RULES)
                return bad(&p, arr, "more than %d rules for one service", DR_MAX_RULES);
        struct dr_routes *r = calloc(1, sizeof(*r));
        if (!r)
                return bad(&p, arr, "out of memory");
        p.r = r;
        atomic_init(&r->refs, 1);
        r->routes = calloc((size_t)n, sizeof(*r->routes));
        r->rules = calloc(n_rules ? n_rules : 1, sizeof(*r->rules));
        r->matches = calloc(n_matches ? n_matches : 1, sizeof(*r->matches));
        int rc = 0;
        if (!r->routes || !r->rules || !r->matches)
                rc = bad(&p, arr, "out of memory");
        static const char *const keys[] = {"name", "kind", "port", "rules", NULL};
        long i = 0;
        for (const cJSON *x = rc ? NULL : arr->child; x; x = x->next, i++) {
                size_t old = push(&p, NULL, i);
                struct dr_route *rt = &r->routes[r->n_routes++];
                char *name = NULL, *kind = NULL;
                long long v;
                if ((rc = keys_ok(&p, x, keys)) ||
                    (rc = str_field(&p, x, "name", DR_NAME_MAX, true, &name)) ||
                    (rc = str_field(&p, x, "kind", 16, false, &kind)))
                        goto out_route;
                snprintf(rt->name, sizeof(rt->name), "%s", name);
                rt->grpc = kind && strcmp(kind, "GRPCRoute") == 0;
                for (uint32_t k = 0; k + 1 < r->n_routes; k++)
                        if (strcmp(r->routes[k].name, rt->name) == 0 &&
                            r->routes[k].grpc == rt->grpc) {
                                rc = bad(&p, x, "route name '%s' is used twice", rt->name);
                                goto out_route;
                        }
                if (kind && strcmp(kind, "HTTPRoute") && strcmp(kind, "GRPCRoute")) {
                        rc = bad(&p, x, "'kind' must be \"HTTPRoute\" or \"GRPCRoute\"");
                        goto out_route;
                }
                if ((rc = int_field(&p, x, "port", 1, 65535, &v)) < 0)
                        goto out_route;
                rt->port = rc == 0 ? (uint16_t)v : 0;
                rc = 0;
                if (rt->port) {
                        bool known = false;
                        for (uint32_t k = 0; k < pc->n_ports; k++)
                                known |= pc->ports[k] == rt->port;
                        if (!known) {
                                push(&p, "port", 0);
                                rc = bad(&p, x, "%u is not a port of %s/%s", rt->port, pc->ns,
                                         pc->name);
                                goto out_route;
                        }
                }
                const cJSON *rules = cJSON_GetObjectItemCaseSensitive(x, "rules");
                if (!cJSON_IsArray(rules) || cJSON_GetArraySize(rules) == 0) {
                        push(&p, "rules", 0);
                        rc = bad(&p, rules ? rules : x, "expected a non-empty array 'rules'");
                        goto out_route;
                }
                size_t o2 = push(&p, "rules", 0);
                long k = 0;
                for (const cJSON *u = rules->child; u; u = u->next, k++) {
                        size_t o3 = push(&p, NULL, k);
                        if ((rc = parse_rule(&p, u, rt, r->n_routes - 1, (uint32_t)k)))
                                goto out_route;
                        pop(&p, o3);
                }
                pop(&p, o2);
        out_route:
                free(name);
                free(kind);
                if (rc)
                        break;
                pop(&p, old);
        }
        if (!rc)
                rc = build_ports(&p, arr);
        if (rc) {
                routes_free(r);
                return rc;
        }
        *out = r;
        return 0;
}

/* ---- matching ----------------------------------------------------------------- */

const struct dr_port_table *dr_port_table(const struct dr_routes *r, uint16_t port)
{
        for (uint32_t i = 0; r && i < r->n_ports; i++)
                if (r->ports[i].port == port)
                        return &r->ports[i];
        return NULL;
}

static bool value_match(const struct dr_kv_match *k, const char *v, size_t n)
{
        if (k->type == DR_VALUE_REGEX)
                return regex_match(k->re, v, n);
        return n == k->value_len && memcmp(v, k->value, n) == 0;
}

/* The value of query parameter name in q[0..n) (no percent-decoding). */
static bool query_get(const char *q, size_t n, const char *name, const char **v, size_t *vn)
{
        size_t nl = strlen(name);
        const char *end = q + n;
        while (q < end) {
                const char *amp = memchr(q, '&', (size_t)(end - q));
                const char *e = amp ? amp : end;
                if ((size_t)(e - q) >= nl && memcmp(q, name, nl) == 0 &&
                    (q + nl == e || q[nl] == '=')) {
                        *v = q + nl == e ? e : q + nl + 1;
                        *vn = (size_t)(e - *v);
                        return true;
                }
                q = amp ? amp + 1 : end;
        }
        return false;
}

static bool path_match(const struct dr_match *m, const char *p, size_t n)
{
        switch (m->path_type) {
        case DR_PATH_EXACT:
                return n == m->path_len && memcmp(p, m->path, n) == 0;
        case DR_PATH_REGEX:
                return regex_match(m->path_re, p, n);
        default:
                if (m->path_len == 1) /* "/" */
                        return true;
                return n >= m->path_len && memcmp(p, m->path, m->path_len) == 0 &&
                       (n == m->path_len || p[m->path_len] == '/');
        }
}

static bool one_match(const struct dr_match *m, const struct dr_request *req, size_t plen,
                      const char *q, size_t qn)
{
        if (m->method >= 0 && m->method != req->method)
                return false;
        if (!path_match(m, req->path, plen))
                return false;
        for (uint32_t i = 0; i < m->n_headers; i++) {
                const char *v;
                size_t vn;
                if (!req->header || !req->header(req->ctx, m->headers[i].name, &v, &vn) ||
                    !value_match(&m->headers[i], v, vn))
                        return false;
        }
        for (uint32_t i = 0; i < m->n_query; i++) {
                const char *v;
                size_t vn;
                if (!query_get(q, qn, m->query[i].name, &v, &vn) ||
                    !value_match(&m->query[i], v, vn))
                        return false;
        }
        return true;
}

const struct dr_match *dr_match_request(const struct dr_port_table *t, const struct dr_request *req)
{
        const char *qm = memchr(req->path, '?', req->path_len);
        size_t plen = qm ? (size_t)(qm - req->path) : req->path_len;
        const char *q = qm ? qm + 1 : req->path + req->path_len;
        size_t qn = (size_t)(req->path + req->path_len - q);
        /* The lists of positions the path can match (each position is in
         * one list), walked together in precedence order. */
        const uint32_t *at[IDX_LISTS], *end[IDX_LISTS];
        int nl = 0;
        if (t->n_always) {
                at[nl] = t->pos;
                end[nl++] = t->pos + t->n_always;
        }
        const struct dr_idx_slot *s = idx_slot(t, IDX_EXACT, req->path, plen);
        if (s->kind) {
                at[nl] = t->pos + s->off;
                end[nl++] = t->pos + s->off + s->n;
        }
        for (size_t k = 2; k <= plen; k++) { /* every prefix ending at a path element */
                if (k < plen && req->path[k] != '/')
                        continue;
                s = idx_slot(t, IDX_PREFIX, req->path, k);
                if (!s->kind)
                        continue;
                if (nl == IDX_LISTS)
                        goto linear;
                at[nl] = t->pos + s->off;
                end[nl++] = t->pos + s->off + s->n;
        }
        for (;;) {
                int best = -1;
                for (int j = 0; j < nl; j++)
                        if (at[j] < end[j] && (best < 0 || *at[j] < *at[best]))
                                best = j;
                if (best < 0)
                        return NULL;
                const struct dr_match *m = t->matches[*at[best]++];
                if (one_match(m, req, plen, q, qn))
                        return m;
        }
linear:
        for (uint32_t i = 0; i < t->n; i++)
                if (one_match(t->matches[i], req, plen, q, qn))
                        return t->matches[i];
        return NULL;
}

int dr_pick_backend(const struct dr_rule *rule, uint64_t r)
{
        if (rule->n_backends == 0)
                return -1;
        /* r scaled onto [0, total): the high bits, so a hash or a random
         * number both spread evenly. */
        uint64_t x = (uint64_t)(((unsigned __int128)r * rule->total_weight) >> 64);
        for (uint32_t i = 0; i < rule->n_backends; i++) {
                if (x < rule->backends[i].weight)
                        return (int)i;
                x -= rule->backends[i].weight;
        }
        return (int)rule->n_backends - 1; /* not reached */
}

int dr_rewrite_path(const struct dr_rule *rule, const struct dr_match *m, const char *path,
                    size_t path_len, char *buf, size_t cap)
{
        if (rule->rewrite == DR_REWRITE_NONE)
                return -1;
        const char *qm = memchr(path, '?', path_len);
        size_t plen = qm ? (size_t)(qm - path) : path_len;
        size_t qn = path_len - plen; /* '?' and the query */
        int n;
        if (rule->rewrite == DR_REWRITE_FULL || m->path_type != DR_PATH_PREFIX) {
                n = snprintf(buf, cap, "%s%.*s", rule->rewrite_path, (int)qn, path + plen);
        } else {
                /* The matched prefix (by path element) replaced: "/api" with
                 * "/v2" makes "/api/x" "/v2/x"; with "/" it makes "/x". */
                size_t skip = m->path_len == 1 ? 0 : m->path_len;
                const char *rest = path + skip;
                size_t rn = plen - skip;
                const char *rp = rule->rewrite_path;
                size_t rpl = strlen(rp);
                if (rn && rpl && rp[rpl - 1] == '/' && rest[0] == '/')
                        rpl--;
                n = snprintf(buf, cap, "%.*s%.*s%.*s", (int)rpl, rp, (int)rn, rest, (int)qn,
                             path + plen);
                if (n > 0 && buf[0] != '/' && (size_t)n + 1 < cap) {
                        memmove(buf + 1, buf, (size_t)n + 1);
                        buf[0] = '/';
                        n++;
                }
                if (n == 0 && cap > 1) {
                        buf[0] = '/', buf[1] = '\0';
                        n = 1;
                }
        }
        return n < 0 || (size_t)n >= cap ? -1 : n;
}

int dr_redirect_location(const struct dr_rule *rule, const struct dr_match *m, const char *scheme,
                         const char *host, size_t host_len, const char *path, size_t path_len,
                         char *buf, size_t cap)
{
        char newpath[DR_VALUE_MAX * 2];
        if (rule->redirect_path_type != DR_REWRITE_NONE) {
                struct dr_rule tmp = {.rewrite = rule->redirect_path_type,
                                      .rewrite_path = rule->redirect_path};
                if (dr_rewrite_path(&tmp, m, path, path_len, newpath, sizeof(newpath)) < 0)
                        return -1;
                path = newpath;
                path_len = strlen(newpath);
        }
        /* The request's host without its port. */
        const char *h = rule->redirect_host ? rule->redirect_host : host;
        size_t hn = rule->redirect_host ? strlen(rule->redirect_host) : host_len;
        if (!rule->redirect_host && hn && h[0] != '[') {
                const char *colon = memchr(h, ':', hn);
                if (colon)
                        hn = (size_t)(colon - h);
        }
        const char *sch = rule->redirect_scheme ? rule->redirect_scheme : scheme;
        char port[8] = "";
        if (rule->redirect_port)
                snprintf(port, sizeof(port), ":%u", rule->redirect_port);
        int n = snprintf(buf, cap, "%s://%.*s%s%.*s", sch, (int)hn, h, port, (int)path_len, path);
        return n < 0 || (size_t)n >= cap ? -1 : n;
}

/* ---- admin ---------------------------------------------------------------- */

static void render_kv(struct strbuf *sb, const char *key, const struct dr_kv_match *k, uint32_t n)
{
        if (!n)
                return;
        strbuf_appendf(sb, ",\"%s\":[", key);
        for (uint32_t i = 0; i < n; i++) {
                strbuf_appendf(sb, "%s{\"type\":\"%s\",\"name\":", i ? "," : "",
                               k[i].type == DR_VALUE_REGEX ? "RegularExpression" : "Exact");
                strbuf_append_json_string(sb, k[i].name);
                strbuf_append(sb, ",\"value\":");
                strbuf_append_json_string(sb, k[i].value);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
}

static void render_ops(struct strbuf *sb, const char *key, const struct dr_header_op *ops,
                       uint32_t n)
{
        strbuf_appendf(sb, ",\"%s\":[", key);
        for (uint32_t i = 0; i < n; i++) {
                strbuf_append(sb, i ? "," : "");
                if (ops[i].value) {
                        strbuf_append(sb, "{\"name\":");
                        strbuf_append_json_string(sb, ops[i].name);
                        strbuf_append(sb, ",\"value\":");
                        strbuf_append_json_string(sb, ops[i].value);
                        strbuf_append(sb, "}");
                } else {
                        strbuf_append_json_string(sb, ops[i].name);
                }
        }
        strbuf_append(sb, "]");
}

static void render_hdr_mod(struct strbuf *sb, const char *type, const struct dr_header_mod *h)
{
        strbuf_appendf(sb, "{\"type\":\"%s\"", type);
        render_ops(sb, "set", h->set, h->n_set);
        render_ops(sb, "add", h->add, h->n_add);
        render_ops(sb, "remove", h->remove, h->n_remove);
        strbuf_append(sb, "}");
}

static const char *const path_type_names[] = {"PathPrefix", "Exact", "RegularExpression"};

static void render_rule(const struct dr_routes *r, const struct dr_rule *u, uint16_t port,
                        struct strbuf *sb)
{
        const struct dr_route *rt = &r->routes[u->route];
        strbuf_append(sb, "{\"route\":");
        strbuf_append_json_string(sb, rt->name);
        strbuf_appendf(sb, ",\"kind\":\"%s\",\"rule\":%u,\"hits\":%llu,\"matches\":[",
                       rt->grpc ? "GRPCRoute" : "HTTPRoute", u->index,
                       (unsigned long long)atomic_load_explicit(&u->hits, memory_order_relaxed));
        bool first = true;
        for (uint32_t i = 0; i < r->n_matches; i++) {
                const struct dr_match *m = &r->matches[i];
                if (&r->rules[m->rule] != u)
                        continue;
                strbuf_appendf(sb, "%s{\"path\":{\"type\":\"%s\",\"value\":", first ? "" : ",",
                               path_type_names[m->path_type]);
                first = false;
                strbuf_append_json_string(sb, m->path);
                strbuf_append(sb, "}");
                if (m->method >= 0)
                        strbuf_appendf(sb, ",\"method\":\"%s\"", method_names[m->method]);
                render_kv(sb, "headers", m->headers, m->n_headers);
                render_kv(sb, "queryParams", m->query, m->n_query);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "],\"backends\":[");
        for (uint32_t i = 0; i < u->n_backends; i++) {
                const struct dr_backend *b = &u->backends[i];
                strbuf_appendf(sb, "%s{\"name\":", i ? "," : "");
                strbuf_append_json_string(sb, b->name);
                strbuf_append(sb, ",\"namespace\":");
                strbuf_append_json_string(sb, b->ns);
                strbuf_appendf(sb,
                               ",\"port\":%u,\"weight\":%u,\"selector\":", b->port ? b->port : port,
                               b->weight);
                strbuf_append_json_string(sb, b->selector);
                strbuf_appendf(
                    sb, ",\"hits\":%llu}",
                    (unsigned long long)atomic_load_explicit(&b->hits, memory_order_relaxed));
        }
        strbuf_append(sb, "],\"filters\":[");
        size_t mark = sb->len;
        if (u->has_req_hdr)
                render_hdr_mod(sb, "RequestHeaderModifier", &u->req_hdr);
        if (u->has_resp_hdr) {
                strbuf_append(sb, sb->len > mark ? "," : "");
                render_hdr_mod(sb, "ResponseHeaderModifier", &u->resp_hdr);
        }
        if (u->rewrite || u->rewrite_host) {
                strbuf_append(sb, sb->len > mark ? "," : "");
                strbuf_append(sb, "{\"type\":\"URLRewrite\",\"hostname\":");
                strbuf_append_json_string(sb, u->rewrite_host ? u->rewrite_host : "");
                strbuf_appendf(sb, ",\"path\":{\"type\":\"%s\",\"value\":",
                               u->rewrite == DR_REWRITE_FULL     ? "ReplaceFullPath"
                               : u->rewrite == DR_REWRITE_PREFIX ? "ReplacePrefixMatch"
                                                                 : "");
                strbuf_append_json_string(sb, u->rewrite_path ? u->rewrite_path : "");
                strbuf_append(sb, "}}");
        }
        if (u->redirect) {
                strbuf_append(sb, sb->len > mark ? "," : "");
                strbuf_appendf(sb, "{\"type\":\"RequestRedirect\",\"statusCode\":%u,\"scheme\":",
                               u->redirect_status);
                strbuf_append_json_string(sb, u->redirect_scheme ? u->redirect_scheme : "");
                strbuf_append(sb, ",\"hostname\":");
                strbuf_append_json_string(sb, u->redirect_host ? u->redirect_host : "");
                strbuf_appendf(sb, ",\"port\":%u,\"path\":", u->redirect_port);
                strbuf_append_json_string(sb, u->redirect_path ? u->redirect_path : "");
                strbuf_append(sb, "}");
        }
        if (u->has_mirror) {
                strbuf_append(sb, sb->len > mark ? "," : "");
                strbuf_append(sb, "{\"type\":\"RequestMirror\",\"backend\":");
                char name[2 * DR_NAME_MAX + DR_LABELS_MAX + 4];
                snprintf(name, sizeof(name), "%s/%s%s%s", u->mirror.ns, u->mirror.name,
                         u->mirror.selector[0] ? "#" : "", u->mirror.selector);
                strbuf_append_json_string(sb, name);
                strbuf_appendf(
                    sb, ",\"port\":%u,\"percent\":%.4g,\"mirrors\":%llu,\"drops\":%llu}",
                    u->mirror.port, u->mirror_ppm / 10000.0,
                    (unsigned long long)atomic_load_explicit(&u->mirrors, memory_order_relaxed),
                    (unsigned long long)atomic_load_explicit(&u->mirror_drops,
                                                             memory_order_relaxed));
        }
        strbuf_appendf(sb, "],\"timeouts\":{\"request_ms\":%u,\"backend_request_ms\":%u}",
                       u->timeout_ms, u->backend_timeout_ms);
        strbuf_appendf(sb, ",\"retry\":{\"attempts\":%d,\"backoff_ms\":%u,\"codes\":[",
                       u->retry_attempts, u->retry_backoff_ms);
        first = true;
        for (int c = 0; c < 100; c++)
                if (u->retry_codes[c / 64] >> (c % 64) & 1) {
                        strbuf_appendf(sb, "%s%d", first ? "" : ",", 500 + c);
                        first = false;
                }
        strbuf_appendf(sb, "]},\"sticky\":%s", u->sticky ? "true" : "false");
        if (u->abort_ppm || u->delay_ppm) {
                strbuf_append(sb, ",\"fault\":{");
                if (u->abort_ppm)
                        strbuf_appendf(sb,
                                       "\"abort\":{\"httpStatus\":%u,\"grpcStatus\":%d,"
                                       "\"percentage\":%.4g}",
                                       u->abort_http, u->abort_grpc, u->abort_ppm / 10000.0);
                if (u->delay_ppm)
                        strbuf_appendf(sb, "%s\"delay\":{\"fixedDelay_ms\":%u,\"percentage\":%.4g}",
                                       u->abort_ppm ? "," : "", u->delay_ms,
                                       u->delay_ppm / 10000.0);
                strbuf_appendf(
                    sb, "},\"faults\":%llu,\"delays\":%llu",
                    (unsigned long long)atomic_load_explicit(&u->faults, memory_order_relaxed),
                    (unsigned long long)atomic_load_explicit(&u->delays, memory_order_relaxed));
        }
        if (u->rl)
                strbuf_appendf(
                    sb,
                    ",\"rateLimit\":{\"requestsPerSecond\":%.6g,\"burst\":%u,\"perSource\":%s},"
                    "\"rate_limited\":%llu,\"rate_limit_evictions\":%llu",
                    u->rl->rps, u->rl->burst, u->rl->per_source ? "true" : "false",
                    (unsigned long long)atomic_load_explicit(&u->rl->limited, memory_order_relaxed),
                    (unsigned long long)atomic_load_explicit(&u->rl->evictions,
                                                             memory_order_relaxed));
        strbuf_append(sb, "}");
}

void dr_render_port(const struct dr_routes *r, uint16_t port, struct strbuf *sb)
{
        const struct dr_port_table *t = dr_port_table(r, port);
        strbuf_append(sb, "[");
        bool first = true;
        for (uint32_t i = 0; t && i < t->n; i++) {
                /* Each rule once, where its first match ranks. */
                bool seen = false;
                for (uint32_t j = 0; j < i && !seen; j++)
                        seen = t->matches[j]->rule == t->matches[i]->rule;
                if (seen)
                        continue;
                strbuf_append(sb, first ? "" : ",");
                first = false;
                render_rule(r, &r->rules[t->matches[i]->rule], port, sb);
        }
        strbuf_append(sb, "]");
}

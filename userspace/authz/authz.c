// SPDX-License-Identifier: Apache-2.0
/* Authorization policies: parsing, merging, the per-connection decision. */
#include "authz/authz.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/prom.h"
#include "core/spiffe.h"

/* One principal: every non-NULL field must match. */
struct principal {
        char *id, *ns, *sa, *td;
};

struct policy {
        char *name;                      /* "origin/name" */
        uint16_t ports[AUTHZ_MAX_PORTS]; /* 0: every port */
        size_t n_ports;
        struct principal *deny, *allow;
        size_t n_deny, n_allow;
};

struct authz {
        struct snapshot base;
        struct authz_stats *stats;
        char *scope; /* authz_set_scope, NULL */
        struct policy *pols;
        size_t n, cap;
        size_t n_rules;
        char local_td[256]; /* "" = allow principals without trust_domain match any */
};

static const char *const reason_names[AUTHZ__REASONS] = {
    [AUTHZ_OK] = "allowed",
    [AUTHZ_DENIED_BY_POLICY] = "denied_by_policy",
    [AUTHZ_NOT_ALLOWED] = "not_allowed",
    [AUTHZ_NO_IDENTITY] = "no_identity",
};

const char *authz_reason_name(enum authz_reason r)
{
        return (unsigned)r < AUTHZ__REASONS ? reason_names[r] : "unknown";
}

/* ---- lifetime ------------------------------------------------------------------ */

static void principals_free(struct principal *p, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                free(p[i].id);
                free(p[i].ns);
                free(p[i].sa);
                free(p[i].td);
        }
        free(p);
}

static void policy_free(struct policy *p)
{
        free(p->name);
        principals_free(p->deny, p->n_deny);
        principals_free(p->allow, p->n_allow);
        memset(p, 0, sizeof(*p));
}

struct authz_stats *authz_stats_new(struct authz_stats *parent)
{
        struct authz_stats *st = calloc(1, sizeof(*st));
        if (!st)
                return NULL;
        st->parent = parent;
        atomic_init(&st->refs, 1);
        return st;
}

void authz_stats_unref(struct authz_stats *st)
{
        if (st && atomic_load(&st->refs) &&
            atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) == 1)
                free(st);
}

static void destroy(struct snapshot *s)
{
        struct authz *a = authz_from_snapshot(s);
        for (size_t i = 0; i < a->n; i++)
                policy_free(&a->pols[i]);
        free(a->pols);
        free(a->scope);
        authz_stats_unref(a->stats);
        free(a);
}

struct authz *authz_new(struct authz_stats *stats)
{
        struct authz *a = calloc(1, sizeof(*a));
        if (!a)
                return NULL;
        snapshot_init(&a->base, destroy);
        /* The caller holds a reference while it passes stats: one more can
         * be taken without a race. */
        if (stats && atomic_load(&stats->refs))
                atomic_fetch_add_explicit(&stats->refs, 1, memory_order_relaxed);
        a->stats = stats;
        return a;
}

int authz_set_scope(struct authz *a, const char *scope)
{
        char *s = scope ? strdup(scope) : NULL;
        if (scope && !s)
                return -ENOMEM;
        free(a->scope);
        a->scope = s;
        return 0;
}

const char *authz_scope(const struct authz *a)
{
        return a ? a->scope : NULL;
}

void authz_set_local_trust_domain(struct authz *a, const char *td)
{
        snprintf(a->local_td, sizeof(a->local_td), "%s", td ? td : "");
}

void authz_ref(struct authz *a)
{
        snapshot_ref(&a->base);
}

void authz_unref(struct authz *a)
{
        if (a)
                snapshot_unref(&a->base);
}

struct authz *authz_from_snapshot(struct snapshot *s)
{
        return s ? (struct authz *)((char *)s - offsetof(struct authz, base)) : NULL;
}

struct snapshot *authz_snapshot(struct authz *a)
{
        return &a->base;
}

size_t authz_policy_count(const struct authz *a)
{
        return a ? a->n : 0;
}

size_t authz_rule_count(const struct authz *a)
{
        return a ? a->n_rules : 0;
}

/* ---- parsing --------------------------------------------------------------------- */

static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return rc;
}

/* s as a JSON string (quoted, escaped), its first max bytes: input shown in
 * an error line can never break the line. */
static const char *quoted(const char *s, size_t max, char *buf, size_t len)
{
        char cut[256];
        snprintf(cut, sizeof(cut) < max + 1 ? sizeof(cut) : max + 1, "%s", s);
        struct strbuf sb;
        strbuf_init_static(&sb, buf, len);
        strbuf_append_json_string(&sb, cut);
        return buf;
}

static bool valid_policy_name(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n >= 64)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.'))
                        return false;
        return true;
}

/* A port: an integer 1..65535, its decimal string, or "*" (0). */
static bool parse_port(const cJSON *v, uint16_t *out)
{
        if (cJSON_IsString(v)) {
                const char *s = v->valuestring;
                if (!strcmp(s, "*")) {
                        *out = 0;
                        return true;
                }
                if (!*s || *s == '0' || strlen(s) > 5 || strspn(s, "0123456789") != strlen(s))
                        return false;
                long p = strtol(s, NULL, 10);
                if (p < 1 || p > 65535)
                        return false;
                *out = (uint16_t)p;
                return true;
        }
        /* The range first: converting a double out of long's range is undefined. */
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 65535) ||
            v->valuedouble != (double)(long)v->valuedouble)
                return false;
        *out = (uint16_t)v->valuedouble;
        return true;
}

static char *dup_field(const cJSON *o, const char *key, bool *bad)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!v)
                return NULL;
        if (!cJSON_IsString(v)) {
                *bad = true;
                return NULL;
        }
        char *s = strdup(v->valuestring);
        if (!s)
                *bad = true;
        return s;
}

/* One principal object; 0 or -EINVAL/-ENOMEM with why. */
static int parse_principal(const cJSON *o, struct principal *p, char *why, size_t len)
{
        memset(p, 0, sizeof(*p));
        if (!cJSON_IsObject(o))
                return errf(why, len, -EINVAL, "a principal must be an object");
        const cJSON *f;
        char q[600];
        cJSON_ArrayForEach(f, o)
        {
                if (strcmp(f->string, "identity") && strcmp(f->string, "namespace") &&
                    strcmp(f->string, "service_account") && strcmp(f->string, "trust_domain"))
                        return errf(why, len, -EINVAL,
                                    "unknown key %s in a principal: allowed identity, "
                                    "namespace, service_account, trust_domain",
                                    quoted(f->string, 40, q, sizeof(q)));
                if (!cJSON_IsString(f))
                        return errf(why, len, -EINVAL, "principal's %s must be a string",
                                    f->string);
        }
        bool bad = false;
        p->id = dup_field(o, "identity", &bad);
        p->ns = dup_field(o, "namespace", &bad);
        p->sa = dup_field(o, "service_account", &bad);
        p->td = dup_field(o, "trust_domain", &bad);
        int rc = 0;
        const char *w = NULL;
        struct spiffe_id *id = NULL;
        if (bad) {
                rc = errf(why, len, -ENOMEM, "out of memory");
        } else if (!p->id && !p->ns && !p->sa && !p->td) {
                rc = errf(why, len, -EINVAL,
                          "an empty principal would match everyone: name an identity, "
                          "namespace, service_account or trust_domain");
        } else if (p->id && (p->ns || p->sa || p->td)) {
                rc = errf(why, len, -EINVAL,
                          "identity names one peer exactly: no other field goes with it");
        } else if (p->id && (!(id = malloc(sizeof(*id))) || spiffe_id_parse(p->id, id, &w) < 0)) {
                rc = id ? errf(why, len, -EINVAL, "identity %s is not a SPIFFE ID: %s",
                               quoted(p->id, 100, q, sizeof(q)), w ? w : "invalid")
                        : errf(why, len, -ENOMEM, "out of memory");
        } else if (p->ns && !spiffe_name_valid(p->ns)) {
                rc = errf(why, len, -EINVAL, "namespace %s is not a valid name",
                          quoted(p->ns, 100, q, sizeof(q)));
        } else if (p->sa && !spiffe_name_valid(p->sa)) {
                rc = errf(why, len, -EINVAL, "service_account %s is not a valid name",
                          quoted(p->sa, 100, q, sizeof(q)));
        } else if (p->td && !spiffe_trust_domain_valid(p->td)) {
                rc = errf(why, len, -EINVAL, "trust_domain %s is not a valid trust domain",
                          quoted(p->td, 100, q, sizeof(q)));
        }
        free(id);
        if (rc) {
                free(p->id);
                free(p->ns);
                free(p->sa);
                free(p->td);
                memset(p, 0, sizeof(*p));
        }
        return rc;
}

static int parse_list(const cJSON *arr, const char *key, struct principal **out, size_t *n,
                      char *why, size_t len)
{
        *out = NULL;
        *n = 0;
        if (!arr)
                return 0;
        if (!cJSON_IsArray(arr))
                return errf(why, len, -EINVAL, "%s must be an array of principals", key);
        int cnt = cJSON_GetArraySize(arr);
        if (cnt > AUTHZ_MAX_PRINCIPALS)
                return errf(why, len, -E2BIG, "%s has %d principals, at most %d are allowed", key,
                            cnt, AUTHZ_MAX_PRINCIPALS);
        if (cnt == 0)
                return 0;
        struct principal *p = calloc((size_t)cnt, sizeof(*p));
        if (!p)
                return errf(why, len, -ENOMEM, "out of memory");
        const cJSON *e;
        size_t i = 0;
        cJSON_ArrayForEach(e, arr)
        {
                char w[300];
                int rc = parse_principal(e, &p[i], w, sizeof(w));
                if (rc) {
                        principals_free(p, i);
                        return errf(why, len, rc, "%s[%zu]: %s", key, i, w);
                }
                i++;
        }
        *out = p;
        *n = i;
        return 0;
}

static int grow(struct authz *a)
{
        if (a->n < a->cap)
                return 0;
        size_t nc = a->cap ? a->cap * 2 : 8;
        struct policy *p = realloc(a->pols, nc * sizeof(*p));
        if (!p)
                return -ENOMEM;
        a->pols = p;
        a->cap = nc;
        return 0;
}

static size_t policy_rules(const struct policy *p)
{
        return p->n_ports * (p->n_deny + p->n_allow);
}

/* Appends p (taking its memory) after checking the bounds. */
static int push(struct authz *a, struct policy *p, const char *origin, char *err, size_t errlen)
{
        size_t same = 0;
        size_t plen = strlen(origin);
        for (size_t i = 0; i < a->n; i++)
                same += !strncmp(a->pols[i].name, origin, plen) && a->pols[i].name[plen] == '/';
        int rc = 0;
        if (same >= AUTHZ_MAX_POLICIES)
                rc = errf(err, errlen, -E2BIG, "policy %s: more than %d policies from %s", p->name,
                          AUTHZ_MAX_POLICIES, origin);
        else if (a->n_rules + policy_rules(p) > AUTHZ_MAX_RULES)
                rc = errf(err, errlen, -E2BIG,
                          "policy %s: more than %d rules (ports x principals) in all", p->name,
                          AUTHZ_MAX_RULES);
        else if (grow(a))
                rc = errf(err, errlen, -ENOMEM, "out of memory");
        if (rc) {
                policy_free(p);
                return rc;
        }
        a->n_rules += policy_rules(p);
        a->pols[a->n++] = *p;
        return 0;
}

int authz_add_policy(struct authz *a, const cJSON *o, const char *origin, const char *name,
                     const char *ignore, char *err, size_t errlen)
{
        if (!cJSON_IsObject(o))
                return errf(err, errlen, -EINVAL, "a policy must be a JSON object");
        const cJSON *jn = cJSON_GetObjectItemCaseSensitive(o, "name");
        bool named_inside = !name;
        if (!name) {
                if (!cJSON_IsString(jn) || !valid_policy_name(jn->valuestring))
                        return errf(err, errlen, -EINVAL,
                                    "policy name %s: expected 1..63 characters of "
                                    "[A-Za-z0-9._-]",
                                    jn ? "is missing or invalid" : "is missing");
                name = jn->valuestring;
        }
        char label[AUTHZ_NAME_MAX + 32];
        snprintf(label, sizeof(label), "%s/%s", origin, name);
        const cJSON *f;
        char q[300];
        cJSON_ArrayForEach(f, o)
        {
                if (strcmp(f->string, "ports") && strcmp(f->string, "allow") &&
                    strcmp(f->string, "deny") && (strcmp(f->string, "name") || !named_inside) &&
                    (!ignore || strcmp(f->string, ignore)))
                        return errf(err, errlen, -EINVAL,
                                    "policy %s: unknown key %s: allowed name, ports, allow, "
                                    "deny%s%s",
                                    label, quoted(f->string, 40, q, sizeof(q)), ignore ? ", " : "",
                                    ignore ? ignore : "");
        }
        struct policy p;
        memset(&p, 0, sizeof(p));
        const cJSON *ports = cJSON_GetObjectItemCaseSensitive(o, "ports");
        int np = cJSON_IsArray(ports) ? cJSON_GetArraySize(ports) : -1;
        if (np <= 0)
                return errf(err, errlen, -EINVAL,
                            "policy %s: ports must be a non-empty array of ports (1..65535) or "
                            "\"*\"",
                            label);
        if (np > AUTHZ_MAX_PORTS)
                return errf(err, errlen, -E2BIG, "policy %s: %d ports, at most %d are allowed",
                            label, np, AUTHZ_MAX_PORTS);
        const cJSON *e;
        cJSON_ArrayForEach(e, ports)
        {
                uint16_t port;
                if (!parse_port(e, &port)) {
                        char *s = cJSON_PrintUnformatted(e);
                        errf(err, errlen, -EINVAL,
                             "policy %s: port %.32s: expected 1..65535 or \"*\"", label,
                             s ? s : "?");
                        free(s);
                        return -EINVAL;
                }
                for (size_t i = 0; i < p.n_ports; i++)
                        if (p.ports[i] == port)
                                return errf(err, errlen, -EINVAL,
                                            "policy %s: port %u listed twice (0 is \"*\")", label,
                                            (unsigned)port);
                p.ports[p.n_ports++] = port;
        }
        char why[400];
        int rc = parse_list(cJSON_GetObjectItemCaseSensitive(o, "deny"), "deny", &p.deny, &p.n_deny,
                            why, sizeof(why));
        if (!rc)
                rc = parse_list(cJSON_GetObjectItemCaseSensitive(o, "allow"), "allow", &p.allow,
                                &p.n_allow, why, sizeof(why));
        if (!rc && !p.n_deny && !p.n_allow)
                rc =
                    errf(why, sizeof(why), -EINVAL, "no rule: give a non-empty allow or deny list");
        if (!rc)
                rc =
                    (p.name = strdup(label)) ? 0 : errf(why, sizeof(why), -ENOMEM, "out of memory");
        if (rc) {
                policy_free(&p);
                return errf(err, errlen, rc, "policy %s: %s", label, why);
        }
        for (size_t i = 0; i < a->n; i++)
                if (!strcmp(a->pols[i].name, label)) {
                        policy_free(&p);
                        return errf(err, errlen, -EINVAL, "policy %s is defined twice", label);
                }
        return push(a, &p, origin, err, errlen);
}

int authz_add_policies(struct authz *a, const cJSON *arr, const char *origin, char *err,
                       size_t errlen)
{
        if (!cJSON_IsArray(arr))
                return errf(err, errlen, -EINVAL, "expected an array of policies");
        int n = cJSON_GetArraySize(arr);
        if (n > AUTHZ_MAX_POLICIES)
                return errf(err, errlen, -E2BIG, "%d policies, at most %d are allowed", n,
                            AUTHZ_MAX_POLICIES);
        size_t before = a->n, rules = a->n_rules;
        const cJSON *e;
        int i = 0;
        cJSON_ArrayForEach(e, arr)
        {
                char why[600];
                int rc = authz_add_policy(a, e, origin, NULL, NULL, why, sizeof(why));
                if (rc) {
                        while (a->n > before)
                                policy_free(&a->pols[--a->n]);
                        a->n_rules = rules;
                        return errf(err, errlen, rc, "[%d]: %s", i, why);
                }
                i++;
        }
        return 0;
}

int authz_add_allow(struct authz *a, uint16_t port, const char *id, char *err, size_t errlen)
{
        char label[64];
        if (port)
                snprintf(label, sizeof(label), "mtls.allow/%u", (unsigned)port);
        else
                snprintf(label, sizeof(label), "mtls.allow/*");
        struct principal pr = {0};
        cJSON *o = cJSON_CreateObject();
        char why[300];
        int rc = o && cJSON_AddStringToObject(o, "identity", id)
                     ? parse_principal(o, &pr, why, sizeof(why))
                     : errf(why, sizeof(why), -ENOMEM, "out of memory");
        cJSON_Delete(o);
        if (rc)
                return errf(err, errlen, rc, "mtls.allow: %s", why);
        for (size_t i = 0; i < a->n; i++) {
                struct policy *p = &a->pols[i];
                if (strcmp(p->name, label))
                        continue;
                if (p->n_allow >= AUTHZ_MAX_PRINCIPALS || a->n_rules + 1 > AUTHZ_MAX_RULES) {
                        free(pr.id);
                        return errf(err, errlen, -E2BIG, "mtls.allow: too many entries for %s",
                                    label);
                }
                struct principal *np = realloc(p->allow, (p->n_allow + 1) * sizeof(*np));
                if (!np) {
                        free(pr.id);
                        return errf(err, errlen, -ENOMEM, "out of memory");
                }
                p->allow = np;
                p->allow[p->n_allow++] = pr;
                a->n_rules++;
                return 0;
        }
        struct policy p;
        memset(&p, 0, sizeof(p));
        p.ports[p.n_ports++] = port;
        p.allow = malloc(sizeof(*p.allow));
        p.name = strdup(label);
        if (!p.allow || !p.name) {
                free(pr.id);
                policy_free(&p);
                return errf(err, errlen, -ENOMEM, "out of memory");
        }
        p.allow[p.n_allow++] = pr;
        return push(a, &p, "mtls.allow", err, errlen);
}

static char *sdup(const char *s, bool *bad)
{
        if (!s)
                return NULL;
        char *d = strdup(s);
        if (!d)
                *bad = true;
        return d;
}

static int copy_list(const struct principal *in, size_t n, struct principal **out)
{
        *out = NULL;
        if (!n)
                return 0;
        struct principal *p = calloc(n, sizeof(*p));
        if (!p)
                return -ENOMEM;
        bool bad = false;
        for (size_t i = 0; i < n; i++) {
                p[i].id = sdup(in[i].id, &bad);
                p[i].ns = sdup(in[i].ns, &bad);
                p[i].sa = sdup(in[i].sa, &bad);
                p[i].td = sdup(in[i].td, &bad);
        }
        if (bad) {
                principals_free(p, n);
                return -ENOMEM;
        }
        *out = p;
        return 0;
}

int authz_merge(struct authz *a, const struct authz *src, char *err, size_t errlen)
{
        if (src && !a->local_td[0]) /* the local trust domain goes with the rules */
                memcpy(a->local_td, src->local_td, sizeof(a->local_td));
        for (size_t i = 0; src && i < src->n; i++) {
                const struct policy *s = &src->pols[i];
                struct policy p;
                memset(&p, 0, sizeof(p));
                memcpy(p.ports, s->ports, sizeof(p.ports));
                p.n_ports = s->n_ports;
                p.n_deny = s->n_deny;
                p.n_allow = s->n_allow;
                p.name = strdup(s->name);
                if (!p.name || copy_list(s->deny, s->n_deny, &p.deny) ||
                    copy_list(s->allow, s->n_allow, &p.allow)) {
                        policy_free(&p);
                        return errf(err, errlen, -ENOMEM, "out of memory");
                }
                /* The origin is the name's prefix; the per-origin bound was
                 * checked when src was built. */
                if (a->n_rules + policy_rules(&p) > AUTHZ_MAX_RULES) {
                        int rc = errf(err, errlen, -E2BIG,
                                      "policy %s: more than %d rules (ports x principals) in all",
                                      p.name, AUTHZ_MAX_RULES);
                        policy_free(&p);
                        return rc;
                }
                if (grow(a)) {
                        policy_free(&p);
                        return errf(err, errlen, -ENOMEM, "out of memory");
                }
                a->n_rules += policy_rules(&p);
                a->pols[a->n++] = p;
        }
        return 0;
}

int authz_add_deny_all(struct authz *a, const char *name, char *err, size_t errlen)
{
        struct policy p;
        memset(&p, 0, sizeof(p));
        p.ports[p.n_ports++] = 0;
        /* A principal without a field matches every identity (parsing never
         * makes one: it is refused there for exactly that reason). */
        p.deny = calloc(1, sizeof(*p.deny));
        p.name = strdup(name);
        if (!p.deny || !p.name) {
                policy_free(&p);
                return errf(err, errlen, -ENOMEM, "out of memory");
        }
        p.n_deny = 1;
        if (grow(a)) {
                policy_free(&p);
                return errf(err, errlen, -ENOMEM, "out of memory");
        }
        a->n_rules += policy_rules(&p);
        a->pols[a->n++] = p;
        return 0;
}

/* ---- the decision ---------------------------------------------------------------- */

/* The parts of a (verified) SPIFFE ID, without copies. */
struct id_parts {
        const char *uri;
        const char *td, *ns, *sa;
        size_t td_len, ns_len, sa_len; /* ns/sa: 0 unless the mesh form */
};

static void id_split(const char *uri, struct id_parts *p)
{
        memset(p, 0, sizeof(*p));
        p->uri = uri;
        const char *s = uri;
        if (strncmp(s, "spiffe://", 9))
                return;
        s += 9;
        p->td = s;
        const char *slash = strchr(s, '/');
        p->td_len = slash ? (size_t)(slash - s) : strlen(s);
        if (!slash || strncmp(slash, "/ns/", 4))
                return;
        const char *ns = slash + 4;
        const char *e = strchr(ns, '/');
        if (!e || strncmp(e, "/sa/", 4))
                return;
        const char *sa = e + 4;
        if (!*sa || strchr(sa, '/') || e == ns)
                return;
        p->ns = ns;
        p->ns_len = (size_t)(e - ns);
        p->sa = sa;
        p->sa_len = strlen(sa);
}

static bool part_eq(const char *want, const char *have, size_t len)
{
        return have && strlen(want) == len && !memcmp(want, have, len);
}

/* local_td (allow principals, when set): a principal that names a namespace
 * or a service account and no trust domain is one of ours. */
static bool principal_match(const struct principal *p, const struct id_parts *id,
                            const char *local_td)
{
        if (p->id)
                return !strcmp(p->id, id->uri);
        if (p->td && !part_eq(p->td, id->td, id->td_len))
                return false;
        if (!p->td && local_td && *local_td && (p->ns || p->sa) &&
            !part_eq(local_td, id->td, id->td_len))
                return false;
        if (p->ns && !part_eq(p->ns, id->ns, id->ns_len))
                return false;
        if (p->sa && !part_eq(p->sa, id->sa, id->sa_len))
                return false;
        return true;
}

static bool applies(const struct policy *p, uint16_t port)
{
        for (size_t i = 0; i < p->n_ports; i++)
                if (p->ports[i] == 0 || p->ports[i] == port)
                        return true;
        return false;
}

static bool verdict(const struct authz *a, struct authz_verdict *v, enum authz_reason r,
                    const char *policy)
{
        v->reason = r;
        v->policy = policy ? policy : "";
        for (struct authz_stats *st = a ? a->stats : NULL; st; st = st->parent)
                atomic_fetch_add_explicit(&st->decisions[r], 1, memory_order_relaxed);
        return r == AUTHZ_OK;
}

bool authz_check(const struct authz *a, uint16_t port, const char *peer_id, struct authz_verdict *v)
{
        bool have_id = peer_id && *peer_id;
        struct id_parts id;
        if (have_id)
                id_split(peer_id, &id);
        const char *first = NULL, *allow_policy = NULL;
        for (size_t i = 0; a && i < a->n; i++) {
                const struct policy *p = &a->pols[i];
                if (!applies(p, port))
                        continue;
                if (!first)
                        first = p->name;
                for (size_t j = 0; have_id && j < p->n_deny; j++)
                        if (principal_match(&p->deny[j], &id, NULL))
                                return verdict(a, v, AUTHZ_DENIED_BY_POLICY, p->name);
                if (p->n_allow && !allow_policy)
                        allow_policy = p->name;
        }
        if (!first) {
                v->reason = AUTHZ_OK;
                v->policy = "";
                return true; /* not a decision of ours: not counted */
        }
        if (!have_id)
                return verdict(a, v, AUTHZ_NO_IDENTITY, allow_policy ? allow_policy : first);
        const char *first_allow = allow_policy;
        for (size_t i = 0; allow_policy && i < a->n; i++) {
                const struct policy *p = &a->pols[i];
                if (!applies(p, port))
                        continue;
                for (size_t j = 0; j < p->n_allow; j++)
                        if (principal_match(&p->allow[j], &id, a->local_td))
                                return verdict(a, v, AUTHZ_OK, p->name);
        }
        if (first_allow)
                return verdict(a, v, AUTHZ_NOT_ALLOWED, first_allow);
        return verdict(a, v, AUTHZ_OK, NULL); /* deny rules only, none matched */
}

bool authz_port_protected(const struct authz *a, uint16_t port)
{
        for (size_t i = 0; a && i < a->n; i++)
                if (applies(&a->pols[i], port))
                        return true;
        return false;
}

void authz_describe_ports(const struct authz *a, char *buf, size_t len)
{
        struct strbuf sb;
        strbuf_init_static(&sb, buf, len);
        bool every = false;
        uint16_t seen[AUTHZ_MAX_RULES];
        size_t n = 0;
        for (size_t i = 0; a && i < a->n; i++) {
                const struct policy *p = &a->pols[i];
                for (size_t j = 0; j < p->n_ports; j++) {
                        uint16_t port = p->ports[j];
                        every |= port == 0;
                        bool dup = port == 0;
                        for (size_t k = 0; !dup && k < n; k++)
                                dup = seen[k] == port;
                        if (!dup && n < AUTHZ_MAX_RULES)
                                seen[n++] = port;
                }
        }
        if (every)
                strbuf_append(&sb, "every port");
        for (size_t k = 0; k < n; k++)
                strbuf_appendf(&sb, "%s%u", k || every ? ", " : "", (unsigned)seen[k]);
        if (!every && !n)
                strbuf_append(&sb, "none");
}

/* ---- rendering --------------------------------------------------------------------- */

static void render_field(struct strbuf *sb, bool *first, const char *k, const char *v)
{
        if (!v)
                return;
        strbuf_appendf(sb, "%s\"%s\":", *first ? "" : ",", k);
        strbuf_append_json_string(sb, v);
        *first = false;
}

static void render_list(struct strbuf *sb, const struct principal *p, size_t n)
{
        strbuf_append(sb, "[");
        for (size_t i = 0; i < n; i++) {
                bool first = true;
                strbuf_append(sb, i ? ",{" : "{");
                render_field(sb, &first, "identity", p[i].id);
                render_field(sb, &first, "namespace", p[i].ns);
                render_field(sb, &first, "service_account", p[i].sa);
                render_field(sb, &first, "trust_domain", p[i].td);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
}

void authz_render_policies(const struct authz *a, struct strbuf *sb)
{
        strbuf_append(sb, "[");
        for (size_t i = 0; a && i < a->n; i++) {
                const struct policy *p = &a->pols[i];
                strbuf_append(sb, i ? ",{\"name\":" : "{\"name\":");
                strbuf_append_json_string(sb, p->name);
                strbuf_append(sb, ",\"ports\":[");
                for (size_t j = 0; j < p->n_ports; j++) {
                        if (p->ports[j])
                                strbuf_appendf(sb, "%s%u", j ? "," : "", (unsigned)p->ports[j]);
                        else
                                strbuf_appendf(sb, "%s\"*\"", j ? "," : "");
                }
                strbuf_append(sb, "],\"deny\":");
                render_list(sb, p->deny, p->n_deny);
                strbuf_append(sb, ",\"allow\":");
                render_list(sb, p->allow, p->n_allow);
                strbuf_append(sb, "}");
        }
        strbuf_append(sb, "]");
}

void authz_render_policy_names(const struct authz *a, struct strbuf *sb)
{
        strbuf_append(sb, "[");
        for (size_t i = 0; a && i < a->n; i++) {
                if (i)
                        strbuf_append(sb, ",");
                strbuf_append_json_string(sb, a->pols[i].name);
        }
        strbuf_append(sb, "]");
}

void authz_render_allow_ids(const struct authz *a, struct strbuf *sb)
{
        bool first = true;
        strbuf_append(sb, "[");
        for (size_t i = 0; a && i < a->n; i++) {
                const struct policy *p = &a->pols[i];
                for (size_t j = 0; j < p->n_ports; j++)
                        for (size_t k = 0; k < p->n_allow; k++) {
                                if (!p->allow[k].id)
                                        continue;
                                strbuf_appendf(sb, "%s{\"port\":%u,\"id\":", first ? "" : ",",
                                               (unsigned)p->ports[j]);
                                strbuf_append_json_string(sb, p->allow[k].id);
                                strbuf_append(sb, "}");
                                first = false;
                        }
        }
        strbuf_append(sb, "]");
}

void authz_render_metrics(const struct authz_stats *st, struct strbuf *sb)
{
        prom_family(sb, "shunt_authz_decisions_total", "counter",
                    "Inbound connections decided by an authorization policy, by outcome.");
        for (int r = 0; r < AUTHZ__REASONS; r++) {
                char label[64];
                snprintf(label, sizeof(label), "decision=\"%s\"", reason_names[r]);
                prom_sample_u64(sb, "shunt_authz_decisions_total", label,
                                st ? atomic_load(&st->decisions[r]) : 0);
        }
}

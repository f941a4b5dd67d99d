// SPDX-License-Identifier: Apache-2.0
/* Traffic routes (discovery/routes.h, core/regex.h): the bounded regex
 * engine, matching and Gateway API precedence, the weighted backend pick,
 * rewrites and redirects, and the registry file's validation of routes
 * (one clear error per bad input). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "core/regex.h"
#include "discovery/file.h"
#include "discovery/routes.h"

static bool re_match(const char *pattern, const char *s)
{
        char err[200];
        struct regex *re = regex_compile(pattern, err, sizeof(err));
        if (!re)
                fail_msg("'%s' did not compile: %s", pattern, err);
        bool m = regex_match(re, s, strlen(s));
        regex_free(re);
        return m;
}

static const char *re_error(const char *pattern)
{
        static char err[200];
        struct regex *re = regex_compile(pattern, err, sizeof(err));
        if (re) {
                regex_free(re);
                return NULL;
        }
        return err;
}

static void test_regex(void **state)
{
        (void)state;
        assert_true(re_match("/api/v[0-9]+/.*", "/api/v12/users"));
        assert_false(re_match("/api/v[0-9]+/.*", "/api/vx/users"));
        assert_false(re_match("/api", "/api/x")); /* the whole value */
        assert_true(re_match("^/a(b|cd)*e$", "/acdbbcde"));
        assert_true(re_match("(?:ab){2,3}", "ababab"));
        assert_false(re_match("(?:ab){2,3}", "abababab"));
        assert_true(re_match("\\d{3}-\\w+", "123-abc_9"));
        assert_true(re_match("[^/]+\\.json", "a.json"));
        assert_false(re_match("[^/]+\\.json", "a/b.json"));
        assert_true(re_match("", ""));
        assert_true(re_match("a|", ""));
        /* Pathological for a backtracking engine: linear here. */
        char s[101];
        memset(s, 'a', 100);
        s[100] = '\0';
        assert_false(re_match("(a*)*b", s));
        assert_false(re_match("(a|aa)+c", s));
        /* Refused at compile time, with the reason. */
        assert_non_null(strstr(re_error("(a"), "missing ')'"));
        assert_non_null(strstr(re_error("a)"), "unexpected ')'"));
        assert_non_null(strstr(re_error("(a)\\1"), "backreferences"));
        assert_non_null(strstr(re_error("a*?"), "lazy"));
        assert_non_null(strstr(re_error("*a"), "missing argument"));
        assert_non_null(strstr(re_error("a{1000}"), "above 100"));
        assert_non_null(strstr(re_error("(a{50}){50}"), "too expensive"));
        assert_non_null(strstr(re_error("(?=a)"), "only (?:...)"));
        char big[REGEX_MAX_PATTERN + 2];
        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        assert_non_null(strstr(re_error(big), "longer than"));
}

/* One service "web" (ports 80, 81) and "reviews" (80) with routes. */
static int parse(const char *routes_json, struct disc_specs *out, char *err, size_t errlen)
{
        size_t cap = strlen(routes_json) + 1024;
        char *text = malloc(cap);
        assert_non_null(text);
        snprintf(text, cap,
                 "{\"services\": [{\"name\": \"web\", \"addresses\": [\"10.96.0.1\"],"
                 " \"ports\": [{\"port\": 80, \"protocol\": \"HTTP\"}, {\"port\": 81}],"
                 " \"routes\": %s},"
                 " {\"name\": \"reviews\", \"ports\": [{\"port\": 80}],"
                 "  \"endpoints\": [{\"address\": \"10.0.0.1\", \"labels\": {\"version\": "
                 "\"v1\"}}, {\"address\": \"10.0.0.2\", \"labels\": {\"version\": \"v2\"}}]}]}",
                 routes_json);
        int rc = disc_file_parse("reg.json", text, strlen(text), out, err, errlen);
        free(text);
        return rc;
}

static const char *parse_error(const char *routes_json)
{
        static char err[512];
        struct disc_specs specs;
        if (parse(routes_json, &specs, err, sizeof(err)) == 0) {
                disc_specs_free(&specs);
                return NULL;
        }
        return err;
}

struct hdrs {
        const char *names[4], *values[4];
};

static bool get_header(void *ctx, const char *name, const char **v, size_t *n)
{
        const struct hdrs *h = ctx;
        for (int i = 0; i < 4 && h->names[i]; i++)
                if (strcasecmp(h->names[i], name) == 0) {
                        *v = h->values[i];
                        *n = strlen(h->values[i]);
                        return true;
                }
        return false;
}

/* The route name and rule index req takes on port 80, "" for none. */
static const char *take(const struct dr_routes *r, const char *method, const char *path,
                        const struct hdrs *h)
{
        static char out[80];
        struct dr_request req = {.method = dr_method_parse(method, strlen(method)),
                                 .path = path,
                                 .path_len = strlen(path),
                                 .header = get_header,
                                 .ctx = (void *)(uintptr_t)h};
        const struct dr_match *m = dr_match_request(dr_port_table(r, 80), &req);
        if (!m)
                return "";
        const struct dr_rule *u = &r->rules[m->rule];
        snprintf(out, sizeof(out), "%s/%u", r->routes[u->route].name, u->index);
        return out;
}

static void test_precedence(void **state)
{
        (void)state;
        struct disc_specs specs;
        char err[512];
        const char *routes =
            "[{\"name\": \"a\", \"rules\": ["
            " {\"matches\": [{\"path\": {\"type\": \"PathPrefix\", \"value\": \"/\"}}]},"
            " {\"matches\": [{\"path\": {\"type\": \"PathPrefix\", \"value\": \"/api\"}}]},"
            " {\"matches\": [{\"path\": {\"type\": \"PathPrefix\", \"value\": \"/api/v2/\"}}]},"
            " {\"matches\": [{\"path\": {\"type\": \"Exact\", \"value\": \"/api/v2/health\"}}]},"
            " {\"matches\": [{\"path\": {\"type\": \"RegularExpression\","
            "                \"value\": \"/api/v[0-9]+/users/[0-9]+\"}}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/api\"}, \"method\": \"POST\"}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/api\"}, \"method\": \"POST\","
            "   \"headers\": [{\"name\": \"x-user\", \"value\": \"tester\"}]}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/api\"}, \"method\": \"POST\","
            "   \"headers\": [{\"name\": \"x-user\", \"value\": \"tester\"}],"
            "   \"queryParams\": [{\"name\": \"v\", \"type\": \"RegularExpression\","
            "                      \"value\": \"[0-9]\"}]}]}]},"
            " {\"name\": \"b\", \"port\": 81, \"rules\": [{\"matches\": [{\"method\": "
            "\"GET\"}]}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_routes *r = specs.svcs[0].routes;
        assert_non_null(r);
        struct hdrs none = {{0}, {0}}, tester = {{"X-User"}, {"tester"}};
        assert_string_equal(take(r, "GET", "/", &none), "a/0");
        assert_string_equal(take(r, "GET", "/apix", &none), "a/0"); /* by path element */
        assert_string_equal(take(r, "GET", "/api", &none), "a/1");
        assert_string_equal(take(r, "GET", "/api/v1?x=1", &none), "a/1");
        assert_string_equal(take(r, "GET", "/api/v2", &none), "a/2"); /* "/api/v2/" is /api/v2 */
        assert_string_equal(take(r, "GET", "/api/v2/x", &none), "a/2");
        assert_string_equal(take(r, "GET", "/api/v2/health", &none), "a/3"); /* exact first */
        assert_string_equal(take(r, "GET", "/api/v2/health?x", &none), "a/3");
        assert_string_equal(take(r, "GET", "/api/v2/users/7", &none), "a/4"); /* regex > prefix */
        assert_string_equal(take(r, "GET", "/api/v9/users/7", &none), "a/4");
        assert_string_equal(take(r, "POST", "/api/x", &none), "a/5");         /* method */
        assert_string_equal(take(r, "POST", "/api/x", &tester), "a/6");       /* more headers */
        assert_string_equal(take(r, "POST", "/api/x?a&v=3", &tester), "a/7"); /* more query */
        assert_string_equal(take(r, "POST", "/api/x?v=x", &tester), "a/6");
        /* Route b is on port 81 only. */
        assert_non_null(dr_port_table(r, 81));
        assert_int_equal(dr_port_table(r, 81)->n, 9);
        assert_int_equal(dr_port_table(r, 80)->n, 8);
        disc_specs_free(&specs);
}

static void test_weighted_pick(void **state)
{
        (void)state;
        struct disc_specs specs;
        char err[512];
        const char *routes =
            "[{\"name\": \"canary\", \"rules\": [{\"backendRefs\": ["
            " {\"name\": \"reviews\", \"weight\": 90, \"selector\": {\"version\": \"v1\"}},"
            " {\"name\": \"reviews\", \"port\": 80, \"weight\": 10,"
            "  \"selector\": {\"version\": \"v2\"}},"
            " {\"name\": \"web\", \"weight\": 0}]}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_rule *u = &specs.svcs[0].routes->rules[0];
        assert_int_equal(u->total_weight, 100);
        assert_string_equal(u->backends[0].selector, "version=v1");
        /* Evenly spread numbers: exactly the weights. */
        int counts[3] = {0};
        for (uint64_t i = 0; i < 1000; i++)
                counts[dr_pick_backend(u, i * (UINT64_MAX / 1000) + UINT64_MAX / 2000)]++;
        assert_int_equal(counts[0], 900);
        assert_int_equal(counts[1], 100);
        assert_int_equal(counts[2], 0);
        assert_true(dr_labels_select("version=v2", "app=r,version=v2"));
        assert_false(dr_labels_select("version=v2", "version=v1"));
        assert_true(dr_labels_select("", "version=v1"));
        disc_specs_free(&specs);
}

static void test_fault(void **state)
{
        (void)state;
        struct disc_specs specs;
        char err[512];
        const char *routes =
            "[{\"name\": \"f\", \"rules\": [{\"fault\": {"
            " \"abort\": {\"httpStatus\": 503, \"grpcStatus\": 8, \"percentage\": 2.5},"
            " \"delay\": {\"fixedDelay\": \"250ms\", \"percentage\": 30}}}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_rule *u = &specs.svcs[0].routes->rules[0];
        assert_int_equal(u->abort_ppm, 25000);
        assert_int_equal(u->abort_http, 503);
        assert_int_equal(u->abort_grpc, 8);
        assert_int_equal(u->delay_ppm, 300000);
        assert_int_equal(u->delay_ms, 250);
        struct strbuf sb;
        strbuf_init(&sb);
        dr_render_port(specs.svcs[0].routes, 80, &sb);
        assert_non_null(strstr(sb.data, "\"delay\":{\"fixedDelay_ms\":250,\"percentage\":30}"));
        assert_non_null(strstr(sb.data, "\"faults\":0,\"delays\":0"));
        strbuf_free(&sb);
        disc_specs_free(&specs);
        /* RequestMirror: a fraction, rendered as a percent */
        routes = "[{\"name\": \"m\", \"rules\": [{\"filters\": [{\"type\": \"RequestMirror\","
                 " \"requestMirror\": {\"backendRef\": {\"name\": \"reviews\", \"port\": 80},"
                 " \"fraction\": {\"numerator\": 1, \"denominator\": 8}}}]}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        assert_true(specs.svcs[0].routes->rules[0].has_mirror);
        assert_int_equal(specs.svcs[0].routes->rules[0].mirror_ppm, 125000);
        strbuf_init(&sb);
        dr_render_port(specs.svcs[0].routes, 80, &sb);
        assert_non_null(strstr(sb.data, "{\"type\":\"RequestMirror\",\"backend\":\"default/"
                                        "reviews\",\"port\":80,\"percent\":12.5,\"mirrors\":0"));
        strbuf_free(&sb);
        disc_specs_free(&specs);
        /* rateLimit: the burst defaults to a second's worth; a thread takes
         * 10 ms of the rate at a time, at most a quarter of the burst. */
        routes = "[{\"name\": \"r\", \"rules\": ["
                 " {\"matches\": [{\"path\": {\"value\": \"/a\"}}],"
                 "  \"rateLimit\": {\"requestsPerSecond\": 1000}},"
                 " {\"rateLimit\": {\"requestsPerSecond\": 0.5, \"burst\": 3, \"perSource\": "
                 "true}}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_ratelimit *a = specs.svcs[0].routes->rules[0].rl;
        const struct dr_ratelimit *b = specs.svcs[0].routes->rules[1].rl;
        assert_int_equal(a->burst, 1000);
        assert_int_equal(a->chunk, 10);
        assert_int_equal(a->interval_ns, 1000000);
        assert_false(a->per_source);
        assert_null(a->sources);
        assert_int_equal(b->burst, 3);
        assert_int_equal(b->chunk, 1);
        assert_true(b->per_source);
        assert_non_null(b->sources);
        strbuf_init(&sb);
        dr_render_port(specs.svcs[0].routes, 80, &sb);
        assert_non_null(strstr(sb.data, "\"rateLimit\":{\"requestsPerSecond\":0.5,\"burst\":3,"
                                        "\"perSource\":true},\"rate_limited\":0"));
        strbuf_free(&sb);
        disc_specs_free(&specs);
}

static void test_rewrite_redirect(void **state)
{
        (void)state;
        struct disc_specs specs;
        char err[512], buf[256];
        const char *routes =
            "[{\"name\": \"rw\", \"rules\": ["
            " {\"matches\": [{\"path\": {\"value\": \"/old\"}}], \"filters\": [{\"type\": "
            "   \"URLRewrite\", \"urlRewrite\": {\"path\": {\"type\": \"ReplacePrefixMatch\","
            "   \"replacePrefixMatch\": \"/new\"}}}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/strip\"}}], \"filters\": [{\"type\": "
            "   \"URLRewrite\", \"urlRewrite\": {\"path\": {\"type\": \"ReplacePrefixMatch\","
            "   \"replacePrefixMatch\": \"/\"}}}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/full\"}}], \"filters\": [{\"type\": "
            "   \"URLRewrite\", \"urlRewrite\": {\"path\": {\"type\": \"ReplaceFullPath\","
            "   \"replaceFullPath\": \"/x\"}}}]},"
            " {\"matches\": [{\"path\": {\"value\": \"/moved\"}}], \"filters\": [{\"type\": "
            "   \"RequestRedirect\", \"requestRedirect\": {\"scheme\": \"https\", \"port\": 8443,"
            "   \"statusCode\": 301}}]}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_routes *r = specs.svcs[0].routes;
        const struct dr_port_table *t = dr_port_table(r, 80);
        struct dr_request req = {.method = 0};
        struct {
                const char *in, *out;
        } cases[] = {{"/old/a?q=1", "/new/a?q=1"},
                     {"/old", "/new"},
                     {"/strip/a/b", "/a/b"},
                     {"/strip", "/"},
                     {"/full/y?z", "/x?z"}};
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                req.path = cases[i].in;
                req.path_len = strlen(cases[i].in);
                const struct dr_match *m = dr_match_request(t, &req);
                assert_non_null(m);
                int n = dr_rewrite_path(&r->rules[m->rule], m, req.path, req.path_len, buf,
                                        sizeof(buf));
                assert_true(n > 0);
                assert_string_equal(buf, cases[i].out);
        }
        req.path = "/moved/x";
        req.path_len = strlen(req.path);
        const struct dr_match *m = dr_match_request(t, &req);
        assert_true(r->rules[m->rule].redirect);
        assert_true(dr_redirect_location(&r->rules[m->rule], m, "http", "web:80", 6, req.path,
                                         req.path_len, buf, sizeof(buf)) > 0);
        assert_string_equal(buf, "https://web:8443/moved/x");
        assert_int_equal(r->rules[m->rule].redirect_status, 301);
        disc_specs_free(&specs);
}

static void test_grpc(void **state)
{
        (void)state;
        struct disc_specs specs;
        char err[512];
        const char *routes =
            "[{\"name\": \"g\", \"kind\": \"GRPCRoute\", \"rules\": ["
            " {\"matches\": [{\"method\": {\"service\": \"pkg.Echo\", \"method\": \"Say\"}}]},"
            " {\"matches\": [{\"method\": {\"service\": \"pkg.Echo\"}}]},"
            " {\"matches\": [{\"method\": {\"method\": \"Ping\"}}]}]}]";
        assert_int_equal(parse(routes, &specs, err, sizeof(err)), 0);
        const struct dr_routes *r = specs.svcs[0].routes;
        struct hdrs none = {{0}, {0}};
        assert_string_equal(take(r, "POST", "/pkg.Echo/Say", &none), "g/0");
        assert_string_equal(take(r, "POST", "/pkg.Echo/Other", &none), "g/1");
        assert_string_equal(take(r, "POST", "/x.Y/Ping", &none), "g/2");
        assert_string_equal(take(r, "POST", "/x.Y/Pong", &none), "");
        disc_specs_free(&specs);
}

static void test_bad_input(void **state)
{
        (void)state;
        const char *e;
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"matches\": [{\"path\": {\"value\": "
                        "\"/x\"}}]}, {\"matches\": [{\"path\": {\"value\": \"/x/\"}}]}]}]");
        assert_non_null(e);
        assert_non_null(strstr(e, "services[0].routes[0].rules[1].matches[0]: overlaps "
                                  "routes[0].rules[0].matches[0]"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"matches\": [{\"path\": {\"type\": "
                        "\"RegularExpression\", \"value\": \"/(a\"}}]}]}]");
        assert_non_null(strstr(e, "routes[0].rules[0].matches[0].path.value: regular "
                                  "expression '/(a' rejected: missing ')'"));
        e = parse_error(
            "[{\"name\": \"a\", \"rules\": [{\"matches\": [{\"headers\": [{\"type\": "
            "\"RegularExpression\", \"name\": \"x\", \"value\": \"(a{50}){50}\"}]}]}]}]");
        assert_non_null(strstr(e, "too expensive"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"backendRefs\": [{\"name\": \"reviews\", "
                        "\"weight\": 0}]}]}]");
        assert_non_null(
            strstr(e, "routes[0].rules[0].backendRefs: the backends' weights sum to 0"));
        e = parse_error(
            "[{\"name\": \"a\", \"rules\": [{\"backendRefs\": [{\"name\": \"nope\"}]}]}]");
        assert_non_null(strstr(e, "backendRefs[0]: unknown backend service default/nope"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"backendRefs\": [{\"name\": \"reviews\", "
                        "\"port\": 9}]}]}]");
        assert_non_null(strstr(e, "service default/reviews has no port 9"));
        e = parse_error("[{\"name\": \"a\", \"port\": 99, \"rules\": [{}]}]");
        assert_non_null(strstr(e, "99 is not a port of default/web"));
        e = parse_error(
            "[{\"name\": \"a\", \"rules\": [{\"matches\": [{\"method\": \"FETCH\"}]}]}]");
        assert_non_null(strstr(e, "matches[0].method: expected one of GET"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"bogus\": 1}]}]");
        assert_non_null(strstr(e, "rules[0].bogus: unknown key"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"filters\": [{\"type\": "
                        "\"RequestHeaderModifier\", \"requestHeaderModifier\": {\"set\": "
                        "[{\"name\": \"bad name\", \"value\": \"v\"}]}}]}]}]");
        assert_non_null(strstr(e, "not a valid header name"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{}]}, {\"name\": \"a\", \"rules\": [{}]}]");
        assert_non_null(strstr(e, "route name 'a' is used twice"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"fault\": {\"abort\": {\"httpStatus\": "
                        "503, \"percentage\": 0}}}]}]");
        assert_non_null(strstr(e, "rules[0].fault.abort.percentage: 'percentage' must be"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"fault\": {\"delay\": {}}}]}]");
        assert_non_null(strstr(e, "fault.delay: a delay needs 'fixedDelay'"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"fault\": {\"delay\": "
                        "{\"fixedDelay\": \"2h\", \"percentage\": 5}}}]}]");
        assert_non_null(strstr(e, "fault.delay.fixedDelay: out of range"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"fault\": {\"delay\": "
                        "{\"fixedDelay\": \"1s\"}}}]}]");
        assert_non_null(strstr(e, "fault.delay.percentage: 'percentage' must be"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"rateLimit\": {\"burst\": 5}}]}]");
        assert_non_null(
            strstr(e, "rules[0].rateLimit.requestsPerSecond: 'requestsPerSecond' must"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"rateLimit\": "
                        "{\"requestsPerSecond\": 5, \"burst\": 0}}]}]");
        assert_non_null(strstr(e, "rateLimit.burst: 0 is out of range 1..1000000"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"rateLimit\": "
                        "{\"requestsPerSecond\": 5, \"perSource\": 1}}]}]");
        assert_non_null(strstr(e, "rateLimit.perSource: expected true or false"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"filters\": [{\"type\": "
                        "\"RequestMirror\", \"requestMirror\": {\"backendRef\": {\"name\": "
                        "\"reviews\"}, \"percent\": 5, \"fraction\": {\"numerator\": 1}}}]}]}]");
        assert_non_null(
            strstr(e, "requestMirror.fraction: 'percent' and 'fraction' are exclusive"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"filters\": [{\"type\": "
                        "\"RequestMirror\", \"requestMirror\": {\"backendRef\": {\"name\": "
                        "\"ghost\"}}}]}]}]");
        assert_non_null(
            strstr(e, "requestMirror.backendRef: unknown backend service default/ghost"));
        e = parse_error("[{\"name\": \"a\", \"rules\": [{\"fault\": {}}]}]");
        assert_non_null(strstr(e, "rules[0].fault: a fault needs 'abort' or 'delay'"));
        /* The line of the offending value is named. */
        e = parse_error(
            "[{\"name\": \"a\", \"rules\": [{\"timeouts\": {\"request\": \"soon\"}}]}]");
        assert_non_null(strstr(e, "reg.json:1: services[0].routes[0].rules[0].timeouts.request"));
}

/* 803 rules on one port: the path index (exact paths and prefixes hashed,
 * regexes and "/" always tried) gives what precedence order gives. */
static void test_index_large(void **state)
{
        (void)state;
        size_t cap = 256 * 1024, n = 0;
        char *j = malloc(cap);
        assert_non_null(j);
#define RULE(...) n += (size_t)snprintf(j + n, cap - n, __VA_ARGS__)
        RULE("[{\"name\": \"a\", \"rules\": [");
        for (int i = 0; i < 400; i++) /* rules 0..399 */
                RULE("{\"matches\": [{\"path\": {\"value\": \"/p%d\"}}]},", i);
        for (int i = 0; i < 200; i++) /* 400..599 */
                RULE("{\"matches\": [{\"path\": {\"type\": \"Exact\", \"value\": \"/p%d/e\"}}]},",
                     i);
        for (int i = 0; i < 200; i++) /* 600..799 */
                RULE("{\"matches\": [{\"path\": {\"value\": \"/p%d/deep/\"}}]},", i);
        RULE("{\"matches\": [{\"path\": {\"value\": \"/p7\"}, \"headers\": [{\"name\": "
             "\"x-v\", \"value\": \"2\"}]}]},"); /* 800 */
        RULE("{\"matches\": [{\"path\": {\"type\": \"RegularExpression\", \"value\": "
             "\"/r/[0-9]+\"}}]},");                                 /* 801 */
        RULE("{\"matches\": [{\"path\": {\"value\": \"/\"}}]}]}]"); /* 802 */
#undef RULE
        assert_true(n < cap);
        struct disc_specs specs;
        char err[512];
        int rc = parse(j, &specs, err, sizeof(err));
        free(j);
        if (rc)
                fail_msg("%s", err);
        const struct dr_routes *r = specs.svcs[0].routes;
        assert_non_null(r);
        assert_int_equal(dr_port_table(r, 80)->n, 803);
        struct hdrs none = {{0}, {0}}, v2 = {{"X-V"}, {"2"}};
        assert_string_equal(take(r, "GET", "/p5/x", &none), "a/5");
        assert_string_equal(take(r, "GET", "/p5", &none), "a/5");
        assert_string_equal(take(r, "GET", "/p55?q=1", &none), "a/55");
        assert_string_equal(take(r, "GET", "/p5x", &none), "a/802");  /* by path element */
        assert_string_equal(take(r, "GET", "/p3/e", &none), "a/403"); /* exact first */
        assert_string_equal(take(r, "GET", "/p3/e/f", &none), "a/3");
        assert_string_equal(take(r, "GET", "/p3/deep/z", &none), "a/603"); /* longest prefix */
        assert_string_equal(take(r, "GET", "/p3/deep", &none), "a/603");
        assert_string_equal(take(r, "GET", "/p300/deep", &none), "a/300");
        assert_string_equal(take(r, "GET", "/p7/x", &v2), "a/800"); /* more headers */
        assert_string_equal(take(r, "GET", "/p7/x", &none), "a/7");
        assert_string_equal(take(r, "GET", "/r/12", &none), "a/801");
        assert_string_equal(take(r, "GET", "/r/x", &none), "a/802");
        assert_string_equal(take(r, "GET", "/", &none), "a/802");
        assert_string_equal(take(r, "GET", "/a/b/c/d/e/f/g/h?x", &none), "a/802");
        disc_specs_free(&specs);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_regex),         cmocka_unit_test(test_precedence),
            cmocka_unit_test(test_weighted_pick), cmocka_unit_test(test_rewrite_redirect),
            cmocka_unit_test(test_grpc),          cmocka_unit_test(test_bad_input),
            cmocka_unit_test(test_fault),         cmocka_unit_test(test_index_large),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

// SPDX-License-Identifier: Apache-2.0
/* shunt-ca: parse flags (and their SHUNT_CA_* environment mirrors), wire the
 * CA service, run until SIGTERM/SIGINT. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca/ca.h"
#include "core/config.h"
#include "core/log.h"
#include "core/version.h"
#include "inject/inject.h"

enum opt_kind {
        O_STR,
        O_SANS,
        O_AGENTS,
        O_DURATION_S,
        O_DURATION_MS,
        O_UINT,
        O_SIZE,
        O_RATE,
        O_KEY,
        O_LEVEL
};

struct flag {
        const char *name; /* --name; env SHUNT_CA_<NAME upper, '-' → '_'> */
        enum opt_kind kind;
        const char *help;
};

static const struct flag flags[] = {
    {"listen", O_STR, "address:port to serve HTTPS on (" CA_DEFAULT_LISTEN ")"},
    {"trust-domain", O_STR, "SPIFFE trust domain (cluster.local)"},
    {"ca-dir", O_STR, "state directory: ca.pem and ca-key.pem, created on first start"},
    {"ca-cert", O_STR, "CA certificate file (a mounted Secret), with --ca-key"},
    {"ca-key", O_STR, "CA private key file"},
    {"bundle-file", O_STR, "more trusted roots for the bundle (rotation overlap)"},
    {"lifetime", O_DURATION_S, "lifetime of issued certificates (24h)"},
    {"audience", O_STR, "token audience required (" CA_DEFAULT_AUDIENCE ")"},
    {"kubeconfig", O_STR, "kubeconfig for TokenReview (default: in-cluster credentials)"},
    {"namespace", O_STR, "namespace of the shunt-ca Service, for its DNS names (shunt-system)"},
    {"server-san", O_SANS,
     "extra name of the serving certificate: DNS:x, IP:x or bare "
     "(repeatable; comma-separated in the environment)"},
    {"node-agent-sa", O_AGENTS,
     "service account <namespace>/<name> of node agents, which may obtain the identities "
     "of the pods on their node (repeatable; comma-separated in the environment; \"\": "
     "none; default <namespace>/" CA_DEFAULT_NODE_AGENT ")"},
    {"key-type", O_KEY, "key type of a created root and the serving key (ecdsa-p256)"},
    {"workers", O_UINT, "requests served at once (16)"},
    {"queue", O_UINT, "accepted connections waiting for a worker (64)"},
    {"read-timeout", O_DURATION_MS, "time for a client's handshake and request (5s)"},
    {"tokenreview-timeout", O_DURATION_MS, "time for one TokenReview (5s)"},
    {"max-body", O_SIZE, "largest request body in bytes (65536)"},
    {"rate", O_RATE, "certificates per second per identity (5)"},
    {"burst", O_UINT, "burst of certificates per identity (10)"},
    {"log-level", O_LEVEL, "debug, info, warn or error (info)"},
    {"inject-config", O_STR,
     "serve the sidecar-injection webhook at POST /v1/inject with this "
     "inject config (JSON)"},
};
#define NFLAGS (sizeof(flags) / sizeof(flags[0]))

static struct ca_service *g_service;
static const char *g_inject_config;

/* POST /v1/inject: an AdmissionReview in, its answer out (userspace/inject). */
static void handle_inject(const struct ca_request *req, struct ca_response *resp, void *ctx)
{
        char note[512] = "";
        int rc = inject_review(ctx, req->body, req->body_len, &resp->body, note, sizeof(note));
        resp->status = inject_http_status(rc);
        if (rc == -ENOMEM)
                ca_respond_error(resp, 500, "internal", "out of memory");
        if (note[0])
                log_info("inject", 0, "%s", note);
}

static void on_signal(int sig)
{
        if (g_service)
                ca_service_stop(g_service);
}

static void usage(FILE *f)
{
        fprintf(f, "usage: shunt-ca [--flag value]... | --help | --version\n\n");
        for (size_t i = 0; i < NFLAGS; i++)
                fprintf(f, "  --%-20s %s\n", flags[i].name, flags[i].help);
        fprintf(f, "\nEvery flag has an environment mirror: --trust-domain is "
                   "SHUNT_CA_TRUST_DOMAIN. Flags win.\n");
}

struct list {
        const char *v[CA_MAX_SERVER_SANS];
        size_t n;
        bool set;
};

/* Comma-separated values appended to l (at most max). */
static int add_list(struct list *l, size_t max, char *val, const char *origin)
{
        l->set = true;
        for (char *save, *tok = strtok_r(val, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (l->n == max) {
                        fprintf(stderr, "shunt-ca: %s: at most %zu values\n", origin, max);
                        return -EINVAL;
                }
                l->v[l->n++] = tok;
        }
        return 0;
}

static int set(struct ca_options *o, struct list *sans, struct list *agents, const struct flag *f,
               char *val, const char *origin)
{
        uint64_t ms;
        char *end;
        switch (f->kind) {
        case O_STR: {
                const char **dst = NULL;
                if (!strcmp(f->name, "listen"))
                        dst = &o->listen;
                else if (!strcmp(f->name, "trust-domain"))
                        dst = &o->trust_domain;
                else if (!strcmp(f->name, "ca-dir"))
                        dst = &o->ca_dir;
                else if (!strcmp(f->name, "ca-cert"))
                        dst = &o->ca_cert;
                else if (!strcmp(f->name, "ca-key"))
                        dst = &o->ca_key;
                else if (!strcmp(f->name, "bundle-file"))
                        dst = &o->bundle_file;
                else if (!strcmp(f->name, "audience"))
                        dst = &o->audience;
                else if (!strcmp(f->name, "kubeconfig"))
                        dst = &o->kubeconfig;
                else if (!strcmp(f->name, "namespace"))
                        dst = &o->namespace;
                else if (!strcmp(f->name, "inject-config"))
                        dst = &g_inject_config;
                if (!*val && strcmp(f->name, "kubeconfig") != 0 &&
                    strcmp(f->name, "bundle-file") != 0 && strcmp(f->name, "inject-config") != 0)
                        goto bad;
                *dst = val;
                return 0;
        }
        case O_SANS:
                return add_list(sans, CA_MAX_SERVER_SANS, val, origin);
        case O_AGENTS:
                return add_list(agents, CA_MAX_NODE_AGENTS, val, origin);
        case O_DURATION_S:
                if (parse_duration_ms(val, &ms) < 0 || ms / 1000 > UINT32_MAX)
                        goto bad;
                o->lifetime_s = (uint32_t)(ms / 1000);
                return 0;
        case O_DURATION_MS:
                if (parse_duration_ms(val, &ms) < 0 || ms == 0 || ms > 600000)
                        goto bad;
                if (!strcmp(f->name, "read-timeout"))
                        o->read_timeout_ms = (uint32_t)ms;
                else
                        o->tokenreview_timeout_ms = (uint32_t)ms;
                return 0;
        case O_UINT:
        case O_SIZE: {
                errno = 0;
                unsigned long long v = strtoull(val, &end, 10);
                if (errno || !*val || *end || v == 0 || v > (f->kind == O_SIZE ? 16u << 20 : 4096))
                        goto bad;
                if (!strcmp(f->name, "workers"))
                        o->workers = (unsigned)v;
                else if (!strcmp(f->name, "queue"))
                        o->queue = (unsigned)v;
                else if (!strcmp(f->name, "burst"))
                        o->burst = (unsigned)v;
                else
                        o->max_body = (size_t)v;
                return 0;
        }
        case O_RATE: {
                double v = strtod(val, &end);
                if (!*val || *end || !(v > 0) || v > 1e6)
                        goto bad;
                o->rate = v;
                return 0;
        }
        case O_KEY:
                return tls_key_type_parse(val, &o->key_type);
        case O_LEVEL: {
                enum log_level l;
                if (log_level_parse(val, &l) < 0)
                        goto bad;
                log_set_level(l);
                return 0;
        }
        }
bad:
        fprintf(stderr, "shunt-ca: %s \"%s\" is not valid: %s\n", origin, val, f->help);
        return -EINVAL;
}

int main(int argc, char **argv)
{
        if (shunt_version_flag(argc, argv, "shunt-ca"))
                return 0;
        struct ca_options o;
        ca_options_default(&o);
        struct list sans = {0}, env_sans = {0};
        struct list agents = {0}, env_agents = {0};
        char *env_vals[NFLAGS] = {0};
        int rc = 0;
        /* environment first, flags override */
        for (size_t i = 0; i < NFLAGS && rc == 0; i++) {
                char name[64] = "SHUNT_CA_";
                for (const char *p = flags[i].name; *p && strlen(name) < sizeof(name) - 1; p++) {
                        size_t l = strlen(name);
                        name[l] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
                        name[l + 1] = '\0';
                }
                const char *v = getenv(name);
                if (!v)
                        continue;
                env_vals[i] = strdup(v);
                if (!env_vals[i])
                        return 1;
                rc = set(&o, &env_sans, &env_agents, &flags[i], env_vals[i], name);
        }
        struct option lo[NFLAGS + 2];
        for (size_t i = 0; i < NFLAGS; i++)
                lo[i] = (struct option){flags[i].name, required_argument, NULL, (int)i + 1000};
        lo[NFLAGS] = (struct option){"help", no_argument, NULL, 'h'};
        lo[NFLAGS + 1] = (struct option){0};
        int c;
        while (rc == 0 && (c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
                if (c == 'h') {
                        usage(stdout);
                        goto out;
                }
                if (c < 1000) {
                        usage(stderr);
                        rc = -EINVAL;
                        break;
                }
                char origin[64];
                snprintf(origin, sizeof(origin), "--%s", flags[c - 1000].name);
                rc = set(&o, &sans, &agents, &flags[c - 1000], optarg, origin);
        }
        if (rc == 0 && optind < argc) {
                fprintf(stderr, "shunt-ca: unexpected argument \"%s\"\n", argv[optind]);
                rc = -EINVAL;
        }
        if (rc < 0) {
                rc = 2;
                goto out;
        }
        /* flags replace the environment's list (--server-san, --node-agent-sa) */
        struct list *use = sans.n ? &sans : &env_sans;
        o.server_sans = use->v;
        o.n_server_sans = use->n;
        use = agents.set ? &agents : &env_agents;
        o.node_agents = use->v;
        o.n_node_agents = use->n;
        o.node_agents_set = use->set;

        signal(SIGPIPE, SIG_IGN);
        struct inject_config *inject = NULL;
        if (g_inject_config && *g_inject_config) {
                char err[512];
                if (inject_config_load(g_inject_config, &inject, err, sizeof(err)) < 0) {
                        fprintf(stderr, "shunt-ca: --inject-config %s: %s\n", g_inject_config, err);
                        rc = 2;
                        goto out;
                }
        }
        rc = ca_service_new(&o, &g_service);
        if (rc == 0 && inject)
                rc = ca_service_route(g_service, "POST", "/v1/inject", handle_inject, inject,
                                      INJECT_MAX_REVIEW_BYTES);
        if (rc < 0) {
                ca_service_free(g_service);
                inject_config_free(inject);
                rc = 1;
                goto out;
        }
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        rc = ca_service_run(g_service) < 0 ? 1 : 0;
        log_info("ca", 0, "shunt-ca: stopped");
        ca_service_free(g_service);
        g_service = NULL;
        inject_config_free(inject);
out:
        for (size_t i = 0; i < NFLAGS; i++)
                free(env_vals[i]);
        return rc;
}

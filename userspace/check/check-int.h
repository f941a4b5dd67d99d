/* SPDX-License-Identifier: Apache-2.0 */
/* Internals shared by the check component's files: the report, the run's
 * context and a few helpers. Not an API. */
#ifndef SHUNT_CHECK_CHECK_INT_H
#define SHUNT_CHECK_CHECK_INT_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "check/check.h"

#define CHECK_MAX_RESULTS 24
#define CHECK_TEXT_MAX    768

struct check_result {
        enum check_status status;
        char name[32];
        char detail[CHECK_TEXT_MAX];
        char advice[CHECK_TEXT_MAX];
};

struct check_report {
        struct check_result items[CHECK_MAX_RESULTS];
        size_t n;
};

struct check_ctx {
        const struct check_options *o;
        struct check_report *r;
        /* shuntd, from its admin API (NULL or false when not reached) */
        bool admin_up;
        char admin_err[256]; /* why /health did not answer 200 */
        long ready_status;   /* HTTP status of /ready */
        cJSON *status, *config, *certs, *cache;
        /* this process */
        uint64_t caps;  /* effective capabilities */
        bool userns;    /* in a user namespace other than the host's */
        bool want_ebpf; /* eBPF capture wanted: kernel shortcomings fail */
};

/* Appends a result (name and status set, texts empty) and returns it for
 * the caller to fill. Past CHECK_MAX_RESULTS the last slot is reused. */
struct check_result *check_add(struct check_ctx *c, enum check_status st, const char *name);

/* GET url (http:// or https://; with cainfo the server must chain to that
 * PEM bundle), 5 s in all, at most 4 MiB of body. 0 with status and body, or
 * negative with err saying why. */
int check_http_get(const char *url, const char *cainfo, long *status, struct strbuf *body,
                   char *err, size_t errlen);

/* The "value" of key in shuntd's /config as a string ("" when absent or not
 * a string). */
const char *check_config_str(const struct check_ctx *c, const char *key);

/* Effective and permitted capabilities and the command name of the process
 * whose /proc status file is path. 0 or negative errno. */
int check_read_caps(const char *path, uint64_t *eff, uint64_t *prm, char *comm, size_t commlen);

/* "NET_ADMIN, NET_RAW" or "none"; a full set is "all N (as root)". */
void check_caps_names(uint64_t caps, char *out, size_t len);

#define CHECK_CAP(n)      (1ull << (n))
#define CAP_NET_ADMIN_BIT 12
#define CAP_NET_RAW_BIT   13
#define CAP_SYS_ADMIN_BIT 21
#define CAP_BPF_BIT       39

/* A run: shuntd's state first (it says which capture is wanted), then the
 * host checks, then those about shuntd. */
void check_daemon_fetch(struct check_ctx *c);
void check_host(struct check_ctx *c);
void check_daemon(struct check_ctx *c);

#endif

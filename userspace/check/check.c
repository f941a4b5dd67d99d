// SPDX-License-Identifier: Apache-2.0
/* shuntctl check: the run, the report and the helpers the checks share. */
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check-int.h"
#include "core/curlloop.h"
#include "core/log.h"

#define HTTP_TIMEOUT_MS 5000
#define HTTP_BODY_MAX   (4u << 20)

/* ---- report ------------------------------------------------------------------ */

struct check_result *check_add(struct check_ctx *c, enum check_status st, const char *name)
{
        struct check_report *r = c->r;
        if (r->n < CHECK_MAX_RESULTS)
                r->n++;
        struct check_result *res = &r->items[r->n - 1];
        memset(res, 0, sizeof(*res));
        res->status = st;
        snprintf(res->name, sizeof(res->name), "%s", name);
        return res;
}

static const char *status_word(enum check_status st, bool upper)
{
        static const char *const words[][2] = {
            {"pass", "PASS"}, {"warn", "WARN"}, {"fail", "FAIL"}};
        return words[st][upper];
}

enum check_status check_report_worst(const struct check_report *r)
{
        enum check_status worst = CHECK_PASS;
        for (size_t i = 0; i < r->n; i++)
                if (r->items[i].status > worst)
                        worst = r->items[i].status;
        return worst;
}

void check_report_write(const struct check_report *r, bool json, bool strict, struct strbuf *out)
{
        size_t count[3] = {0, 0, 0};
        for (size_t i = 0; i < r->n; i++)
                count[r->items[i].status]++;
        enum check_status worst = check_report_worst(r);
        bool ok = worst == CHECK_PASS || (worst == CHECK_WARN && !strict);
        if (json) {
                strbuf_append(out, "{\"checks\":[");
                for (size_t i = 0; i < r->n; i++) {
                        const struct check_result *res = &r->items[i];
                        strbuf_append(out, i ? ",{\"name\":" : "{\"name\":");
                        strbuf_append_json_string(out, res->name);
                        strbuf_appendf(
                            out, ",\"status\":\"%s\",\"detail\":", status_word(res->status, false));
                        strbuf_append_json_string(out, res->detail);
                        strbuf_append(out, ",\"advice\":");
                        strbuf_append_json_string(out, res->advice);
                        strbuf_append(out, "}");
                }
                strbuf_appendf(out, "],\"pass\":%zu,\"warn\":%zu,\"fail\":%zu,\"ok\":%s}\n",
                               count[0], count[1], count[2], ok ? "true" : "false");
                return;
        }
        for (size_t i = 0; i < r->n; i++) {
                const struct check_result *res = &r->items[i];
                strbuf_appendf(out, "%s %s: %s", status_word(res->status, true), res->name,
                               res->detail);
                if (res->advice[0])
                        strbuf_appendf(out, "; %s", res->advice);
                strbuf_append(out, "\n");
        }
        strbuf_appendf(out, "%zu checks: %zu passed, %zu warnings, %zu failed%s\n", r->n, count[0],
                       count[1], count[2], strict && count[1] ? " (--strict: warnings fail)" : "");
}

void check_report_free(struct check_report *r)
{
        free(r);
}

/* ---- helpers ----------------------------------------------------------------- */

static size_t http_body_cb(char *data, size_t size, size_t n, void *arg)
{
        struct strbuf *body = arg;
        size_t len = size * n;
        if (body->len + len > HTTP_BODY_MAX)
                return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
        strbuf_appendn(body, data, len);
        return body->truncated ? 0 : len;
}

int check_http_get(const char *url, const char *cainfo, long *status, struct strbuf *body,
                   char *err, size_t errlen)
{
        CURL *h = curl_easy_init();
        if (!h) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        char cerr[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)HTTP_TIMEOUT_MS);
        curl_easy_setopt(h, CURLOPT_USERAGENT, "shuntctl-check");
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, http_body_cb);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, body);
        if (cainfo)
                curl_trust_only(h, cainfo);
        CURLcode rc = curl_easy_perform(h);
        int ret = 0;
        if (rc != CURLE_OK) {
                snprintf(err, errlen, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
                if (rc == CURLE_WRITE_ERROR)
                        snprintf(err, errlen, "answer larger than %u bytes", HTTP_BODY_MAX);
                ret = -EIO;
        } else {
                curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        }
        curl_easy_cleanup(h);
        return ret;
}

const char *check_config_str(const struct check_ctx *c, const char *key)
{
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(c->config, key);
        const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "value"));
        return v ? v : "";
}

int check_read_caps(const char *path, uint64_t *eff, uint64_t *prm, char *comm, size_t commlen)
{
        FILE *f = fopen(path, "r");
        if (!f)
                return -errno;
        char line[256];
        int found = 0;
        comm[0] = '\0';
        while (fgets(line, sizeof(line), f)) {
                unsigned long long v;
                if (strncmp(line, "Name:\t", 6) == 0)
                        snprintf(comm, commlen, "%.*s", (int)strcspn(line + 6, "\n"), line + 6);
                else if (sscanf(line, "CapEff: %llx", &v) == 1)
                        *eff = v, found |= 1;
                else if (sscanf(line, "CapPrm: %llx", &v) == 1)
                        *prm = v, found |= 2;
        }
        fclose(f);
        return found == 3 ? 0 : -EINVAL;
}

void check_caps_names(uint64_t caps, char *out, size_t len)
{
        static const char *const names[] = {
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        };
        const size_t n_names = sizeof(names) / sizeof(names[0]);
        uint64_t all = (1ull << n_names) - 1;
        if (caps == 0) {
                snprintf(out, len, "none");
                return;
        }
        if ((caps & all) == all) {
                snprintf(out, len, "all %zu (as root)", n_names);
                return;
        }
        /* A long list names only those capture is about, and counts the rest. */
        uint64_t shown = caps;
        if (__builtin_popcountll(caps) > 6)
                shown &= CHECK_CAP(CAP_NET_ADMIN_BIT) | CHECK_CAP(CAP_NET_RAW_BIT) |
                         CHECK_CAP(CAP_SYS_ADMIN_BIT) | CHECK_CAP(CAP_BPF_BIT);
        struct strbuf sb;
        strbuf_init_static(&sb, out, len);
        for (size_t i = 0; i < 64; i++) {
                if (!(shown & (1ull << i)))
                        continue;
                if (sb.len)
                        strbuf_append(&sb, ", ");
                if (i < n_names)
                        strbuf_append(&sb, names[i]);
                else
                        strbuf_appendf(&sb, "cap_%zu", i);
        }
        if (shown != caps)
                strbuf_appendf(&sb, "%s%d other%s", sb.len ? " and " : "",
                               __builtin_popcountll(caps & ~shown),
                               __builtin_popcountll(caps & ~shown) == 1 ? "" : "s");
}

/* ---- the run ------------------------------------------------------------------- */

/* True when this process's user namespace is not the initial one: its
 * capabilities then cover only namespaces it owns (no bpf(), no host
 * iptables). The initial namespace maps every uid to itself. */
static bool in_user_namespace(void)
{
        FILE *f = fopen("/proc/self/uid_map", "r");
        if (!f)
                return false;
        unsigned long inside, outside, count;
        int n = fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
        fclose(f);
        return !(n == 3 && inside == 0 && outside == 0 && count == 4294967295ul);
}

struct check_report *check_run(const struct check_options *o)
{
        struct check_report *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;
        /* Probes log through the component loggers; the report says it all. */
        log_set_level(LOG_ERROR);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        struct check_ctx c = {.o = o, .r = r};
        uint64_t prm = 0;
        char comm[64];
        if (check_read_caps("/proc/self/status", &c.caps, &prm, comm, sizeof(comm)) < 0)
                c.caps = 0;
        c.userns = in_user_namespace();
        c.want_ebpf = true;
        if (!o->pre)
                check_daemon_fetch(&c);
        check_host(&c);
        if (!o->pre)
                check_daemon(&c);
        cJSON_Delete(c.status);
        cJSON_Delete(c.config);
        cJSON_Delete(c.certs);
        cJSON_Delete(c.cache);
        curl_global_cleanup();
        return r;
}

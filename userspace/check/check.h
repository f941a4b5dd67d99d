/* SPDX-License-Identifier: Apache-2.0 */
/* shuntctl check: can this host capture traffic, and is the shuntd running
 * here healthy? Each check ends in one result, PASS, WARN or FAIL, with what
 * was found and what to do about it.
 *
 * Host checks run in this process: the kernel's eBPF support (program and
 * map types, helpers), BTF, cgroup v2, iptables and its nat table,
 * connection tracking (SO_ORIGINAL_DST), this process's capabilities. The
 * others ask shuntd's admin API: health and readiness, shuntd's own
 * capabilities, its capture (rules or pinned programs), its certificate, the
 * CA it gets certificates from, discovery sync. With pre, only the host
 * checks run (before anything is installed). */
#ifndef SHUNT_CHECK_CHECK_H
#define SHUNT_CHECK_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "core/strbuf.h"

enum check_status {
        CHECK_PASS = 0,
        CHECK_WARN = 1,
        CHECK_FAIL = 2,
};

struct check_options {
        const char *admin;    /* HOST:PORT (or [V6]:PORT) of shuntd's admin API */
        bool pre;             /* host checks only, as before an install */
        int64_t cert_warn_s;  /* certificate warning threshold; 0: a sixth of its lifetime */
        const char *pin_root; /* NULL: bpf_pin_root from /config, else SHUNT_PIN_ROOT */
};

struct check_report;

/* Runs every check that applies. NULL only when out of memory. */
struct check_report *check_run(const struct check_options *o);

/* One line per check, "PASS|WARN|FAIL <name>: <found>; <what to do>" (a
 * PASS has no advice), then a summary line; or with json one object:
 * {"checks": [{"name", "status": "pass"|"warn"|"fail", "detail",
 * "advice"}], "pass", "warn", "fail", "ok"}. */
void check_report_write(const struct check_report *r, bool json, bool strict, struct strbuf *out);

/* The worst status in the report. */
enum check_status check_report_worst(const struct check_report *r);

void check_report_free(struct check_report *r);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/* iptables capture (nat table), mirrored for IPv6 with ip6tables.
 *
 *   PREROUTING -p tcp -j SIDECAR_PROXY_INBOUND   -> REDIRECT to inbound_port
 *   OUTPUT     -p tcp -j SIDECAR_PROXY_OUTBOUND  -> REDIRECT to outbound_port
 *
 * Excluded: shuntd's own traffic (by uid and by SO_MARK), loopback
 * destinations, shuntd's own ports (its metrics listener's too, so that a
 * scrape from outside reaches it), configured inbound/outbound ports and
 * outbound CIDRs.
 * Rules are installed atomically with iptables-restore --noflush; a stale
 * set from a crashed run is replaced. */
#ifndef SHUNT_INTERCEPT_IPTABLES_H
#define SHUNT_INTERCEPT_IPTABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/strbuf.h"

#define IPT_CHAIN_INBOUND  "SIDECAR_PROXY_INBOUND"
#define IPT_CHAIN_OUTBOUND "SIDECAR_PROXY_OUTBOUND"

/* ipt_options.uid when no uid is excluded (e.g. shuntd runs as root and the
 * applications do too: excluding uid 0 would let all their traffic bypass). */
#define IPT_UID_NONE UINT32_MAX

struct ipt_options {
        uint16_t inbound_port;
        uint16_t outbound_port;
        uint16_t metrics_port; /* shuntd's metrics listener, reached from outside: never
                                  captured; 0 = none */
        uint32_t mark; /* SO_MARK on shuntd's sockets; 0 = no mark rule (0 would match all) */
        uint32_t uid;  /* uid whose traffic is never captured (shuntd's), or IPT_UID_NONE */
        const uint16_t *exclude_inbound_ports;
        size_t n_exclude_inbound_ports;
        const uint16_t *exclude_outbound_ports;
        size_t n_exclude_outbound_ports;
        const struct cidr *exclude_outbound_cidrs; /* v4 go to iptables, v6 to ip6tables */
        size_t n_exclude_outbound_cidrs;
        bool ipv6;        /* also install with ip6tables (skipped with a log line if unavailable) */
        bool no_comments; /* leave out "-m comment --comment shunt" (ipt_install also
                             drops it by itself when the comment match is missing) */
        bool inbound_only; /* only SIDECAR_PROXY_INBOUND and its PREROUTING jump (eBPF
                              mode captures outbound); a stale outbound chain is removed */
};

/* Fills o from cfg (mark from cfg->proxy_mark, ipv6 on). The excluded uid is
 * cfg->proxy_uid when that is >= 0, else the uid argument (the caller's own
 * uid, or IPT_UID_NONE for no uid rule). o points into cfg: keep cfg alive. */
void ipt_options_from_config(struct ipt_options *o, const struct shunt_config *cfg, uint32_t uid);

/* The iptables-restore input for one family (AF_INET or AF_INET6). Exposed
 * for tests. */
void ipt_render(const struct ipt_options *o, int family, struct strbuf *out);

/* Removes stale chains (if any), then installs. 0 or negative errno; on
 * failure err names the command and what it printed. */
int ipt_install(const struct ipt_options *o, char *err, size_t errlen);
/* Removes the jumps and chains for both families. Idempotent. */
int ipt_remove(char *err, size_t errlen);
/* True when our chains exist and PREROUTING/OUTPUT jump to them, for
 * family AF_INET or AF_INET6. */
bool ipt_installed(int family);
/* True when the inbound chain exists and PREROUTING jumps to it (whether or
 * not the outbound half is there). */
bool ipt_inbound_installed(int family);

/* For shuntctl check: the version line of <family>tables-save
 * ("iptables-save v1.8.9 (nf_tables)": nf_tables or legacy backend) into
 * version, then whether the nat table can be read here. 0, or negative
 * errno with err naming the command and what it printed. */
int ipt_probe(int family, char *version, size_t vlen, char *err, size_t errlen);

/* Rules of the raw table that exempt packets from connection tracking
 * (-j NOTRACK, -j CT --notrack): REDIRECT and SO_ORIGINAL_DST do not work
 * for what they match. Their number, or negative errno. */
int ipt_notrack_rules(int family);

/* Our rules and jumps as they are installed now, one "chain rule" line each
 * (IPv4, "--", IPv6), without counters: two readings differ when something
 * removed or changed them. 0 or negative errno. */
int ipt_fingerprint(struct strbuf *out);

/* Installed rules with packet and byte counters, for shuntctl rules and
 * admin /rules: JSON {"ipv4": [{"chain", "rule", "packets", "bytes"}], "ipv6": [...]}. */
int ipt_dump_json(struct strbuf *out);

#endif

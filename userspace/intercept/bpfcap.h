/* SPDX-License-Identifier: Apache-2.0 */
/* eBPF capture: loads bpf/capture.bpf.c, attaches it to a cgroup v2 and pins
 * its maps and links under a bpffs directory (SHUNT_PIN_ROOT by default).
 *
 *   <pin root>/shunt_orig_by_cookie, shunt_orig_by_tuple, shunt_sockhash,
 *             shunt_shortcut_off, shunt_config, shunt_exclude_ports,
 *             shunt_exclude_cidrs, shunt_counters      maps (with BTF)
 *             shunt_flow
 *   <pin root>/link_connect4, link_connect6, link_sockops,
 *             link_getsockopt                          cgroup links
 *
 * Pinned links keep capturing when shuntd is gone, so a restart does not
 * interrupt traffic: the next bpfcap_open reuses the pinned maps and swaps
 * the program of each pinned link in place (a link on another cgroup, or an
 * incompatible map from another build, is removed and created again).
 * bpfcap_close(b, true) detaches and unpins everything (clean exit). */
#ifndef SHUNT_INTERCEPT_BPFCAP_H
#define SHUNT_INTERCEPT_BPFCAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/strbuf.h"
#include "shunt/capture.h"

struct bpfcap;

struct bpfcap_options {
        const char *pin_root;          /* bpffs directory; created (bpffs mounted on
                                          /sys/fs/bpf if nothing is) */
        const char *cgroup_path;       /* cgroup v2 directory the programs attach to */
        uint16_t outbound_port;        /* captured connects go to 127.0.0.1 / ::1 : this */
        uint32_t mark;                 /* SO_MARK of shuntd's sockets (0 = none) */
        uint32_t uid;                  /* shuntd's uid, or SHUNT_UID_NONE */
        bool shortcut;                 /* pair local sockets for the sk_msg shortcut */
        bool fail_open;                /* no outbound listener: connects left alone */
        const uint16_t *exclude_ports; /* destination ports never captured */
        size_t n_exclude_ports;
        const struct cidr *exclude_cidrs; /* destination prefixes never captured */
        size_t n_exclude_cidrs;
        uint32_t map_max; /* 0: SHUNT_MAX_ORIGDST / SHUNT_MAX_SOCKETS; else the entries of the
                             per-connection maps (node mode sizes each pod's capture by its
                             connection limit) */
        bool adopt;       /* takeover: the pins of a running shuntd must be reused as they
                             are (never removed or replaced), and a failed open detaches
                             nothing */
};

/* Fills o from cfg (redirect_cgroup, bpf_pin_root, bpf_shortcut,
 * outbound_port, proxy_mark, exclude_outbound_*); uid as for ipt_options_from_config
 * (SHUNT_UID_NONE for none). o points into cfg: keep cfg alive. */
void bpfcap_options_from_config(struct bpfcap_options *o, const struct shunt_config *cfg,
                                uint32_t uid);

/* Checks that this kernel and these privileges can run eBPF capture on
 * cgroup_path: the program and map types, the helpers the programs call,
 * a cgroup v2 directory. Returns 0, or -1 with one line in why naming what
 * is missing. The environment variable SHUNT_BPF_REFUSE=1 makes the probe
 * fail as if the kernel refused to load programs (for testing fallback).
 * SHUNT_BPF_TEST_MAP_MAX=N (testing only) shrinks orig_by_cookie,
 * orig_by_tuple, the sockhash, shortcut_off and flow to N entries so tests
 * can fill them. */
int bpfcap_probe(const char *cgroup_path, char *why, size_t whylen);
/* The two halves of bpfcap_probe: the kernel's program and map types and
 * helpers (a few test loads: needs the privileges to load programs), and
 * cgroup_path being a cgroup v2 directory. 0, or negative errno with why
 * (-EOPNOTSUPP: the kernel lacks a type or helper; -EPERM: a load refused). */
int bpfcap_probe_kernel(char *why, size_t whylen);
int bpfcap_check_cgroup(const char *cgroup_path, char *why, size_t whylen);

/* Inspects, without changing anything, what a running capture pinned under
 * pin_root: every link a cgroup link of its hook with a program, attached to
 * cgroup_path when that is set, and every map pinned. 0 with what saying so,
 * or -1 with what naming the first pin missing or wrong. */
int bpfcap_pins_check(const char *pin_root, const char *cgroup_path, char *what, size_t len);

/* Loads, pins and attaches. NULL with err on failure (nothing is left
 * attached or pinned by a failed open, apart from pins that existed). */
struct bpfcap *bpfcap_open(const struct bpfcap_options *o, char *err, size_t errlen);

/* Applies new exclusions, mark, uid and port to the running programs. */
int bpfcap_configure(struct bpfcap *b, const struct bpfcap_options *o, char *err, size_t errlen);

/* detach: remove the links, the sk_msg attachment and every pin (clean
 * exit). Without it the pins stay and capture continues (restart). */
void bpfcap_close(struct bpfcap *b, bool detach);

/* Capture by an init process (`shuntd init`): makes the pin root (mode 0750)
 * and the pinned maps (0640) readable by group gid, the proxy's, so that a
 * shuntd without capabilities can open them read-only. The links stay
 * root's (0600): the proxy can neither detach nor replace the programs, nor
 * change its own exclusions. Without CAP_CHOWN only a group the caller is
 * in can be given (run the init with gid 1337). 0 or negative errno + err. */
int bpfcap_share(struct bpfcap *b, uint32_t gid, char *err, size_t errlen);

/* The capture another process pinned in pin_root, opened read-only without
 * privileges (no program loaded, nothing attached; bpfcap_close never
 * detaches it): lookups, counters and map dumps work, bpfcap_configure and
 * bpfcap_shortcut_set fail with -EPERM, and bpfcap_lookup cannot consume.
 * -ENOENT when nothing is pinned there; -EACCES when the pins are not
 * readable by this uid; -EPERM when the kernel refuses bpf() to processes
 * without CAP_BPF (kernel.unprivileged_bpf_disabled on kernels before 5.19);
 * err says which path. */
int bpfcap_open_pinned(const char *pin_root, struct bpfcap **out, char *err, size_t errlen);

/* Makes directory dir on the bpffs its parent is on (mounting a bpffs on
 * /sys/fs/bpf when dir's parent is that and none is mounted), as
 * bpfcap_open does for its pin root: for a tree of pin roots (node mode).
 * 0 or negative errno with err. */
int bpfcap_pin_dir(const char *dir, char *err, size_t errlen);

/* Removes the pins under pin_root (links detached first) left by another
 * run. 0 or negative errno. Idempotent. */
int bpfcap_remove_pins(const char *pin_root);

/* Original destination of the connection whose accepted socket has peer
 * address client and local address local (both as returned by
 * getpeername/getsockname). consume: delete the entry once read unless the
 * kernel removes it when the accepted socket closes (SHUNT_OD_WATCHED: the
 * listener was created inside the cgroup), so live connections stay listed.
 * 0, -ENOENT when not captured, or negative errno. */
int bpfcap_lookup(struct bpfcap *b, const struct sockaddr_storage *client,
                  const struct sockaddr_storage *local, struct sockaddr_storage *out, bool consume);

/* Turns the sk_msg shortcut off (or back on) for both directions of the
 * connection of fd, a socket of one of its ends (an operator's or a test's
 * switch: flow control needs none). Back on, each direction resumes as after
 * a flow-control pause, once its TCP bytes have been read. */
int bpfcap_shortcut_set(struct bpfcap *b, int fd, bool on);

/* Counters summed over CPUs. */
int bpfcap_counters(struct bpfcap *b, struct shunt_counters *out);

enum bpfcap_map {
        BPFCAP_ORIG_BY_COOKIE,
        BPFCAP_ORIG_BY_TUPLE,
        BPFCAP_SOCKHASH,
        BPFCAP_SHORTCUT_OFF,
        BPFCAP_FLOW,
};
/* Entries in a map now (walks the keys; bounded by the map size). */
long bpfcap_map_entries(struct bpfcap *b, enum bpfcap_map m);

/* Kernel memory of the maps (memlock in /proc/self/fdinfo), in bytes. */
size_t bpfcap_memory_bytes(struct bpfcap *b);

/* Map file descriptor, for tests and tools. */
int bpfcap_map_fd(struct bpfcap *b, enum bpfcap_map m);

/* Every map decoded as one JSON object, for admin /maps and shuntctl maps:
 *   {"pin_root", "config": {...}, "counters": {field: sum over CPUs},
 *    "orig_by_cookie" | "orig_by_tuple" | "sockhash" | "shortcut_off" |
 *    "flow" | "exclude_ports" | "exclude_cidrs": {"entries", "max",
 *    "truncated", "items": [...]}}
 * A flow item is one paired socket as a reader ("local", "remote", its
 * "cookie") and the path its sender is on ("state": redirect; tcp, paused
 * by flow control or the shortcut_off flag; start, nothing sent yet).
 * Original destinations carry "original_dst", "pid" and "age_ms"; a
 * connect in progress holds a slot of orig_by_tuple ("reserved_for_cookie"),
 * so a full map leaves new connects on the normal path; at most
 * BPFCAP_MAP_ITEMS_MAX items per map are listed ("truncated" says so), the
 * entry count is exact. The sockhash lists no items (its values are
 * sockets). */
#define BPFCAP_MAP_ITEMS_MAX 1000
void bpfcap_render_maps(struct bpfcap *b, struct strbuf *out);

/* Counters as Prometheus text (shunt_bpf_*). */
void bpfcap_render_metrics(struct bpfcap *b, struct strbuf *out);

/* The uid the programs skip (SHUNT_UID_NONE: none), from the config map. */
int bpfcap_excluded_uid(struct bpfcap *b, uint32_t *uid);

const char *bpfcap_pin_root(const struct bpfcap *b);

#endif

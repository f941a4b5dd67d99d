/* SPDX-License-Identifier: Apache-2.0 */
/* Map keys and values shared by the BPF capture programs (bpf/capture.bpf.c)
 * and userspace (userspace/intercept/bpfcap.c, shuntctl).
 *
 * Conventions: addresses are stored in network byte order in a 16-byte
 * array (an IPv4 address in the first 4 bytes, the rest zero); ports in
 * network byte order unless the field name ends in _host. Every struct has
 * explicit padding so both compilers agree on the layout. */
#ifndef SHUNT_CAPTURE_H
#define SHUNT_CAPTURE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define SHUNT_PIN_ROOT "/sys/fs/bpf/shunt"

/* Map sizes: each is a hard bound. When one is full the connection takes
 * the normal path (not captured, or not shortcut) and map_full is counted. */
#define SHUNT_MAX_ORIGDST  65536
#define SHUNT_MAX_SOCKETS  65536
#define SHUNT_MAX_EXCLUDES 64

/* Flow control of the shortcut (docs/architecture.md, shortcut pitfall 1): a
 * redirect lands in the peer's receive queue with no window, so the sender's
 * bytes take TCP while more than SHUNT_FLOW_HIGH redirected bytes wait unread
 * there, and come back to the shortcut once no more than SHUNT_FLOW_LOW wait
 * and the reader has consumed every byte that went by TCP (so none is
 * overtaken). */
#define SHUNT_FLOW_HIGH (2u << 20)
#define SHUNT_FLOW_LOW  (1u << 20)

#define SHUNT_UID_NONE 0xffffffffu

/* Socket options answered by cgroup/getsockopt (from <linux/netfilter_ipv4.h>
 * and <linux/netfilter_ipv6/ip6_tables.h>). */
#define SHUNT_SO_ORIGINAL_DST 80
#define SHUNT_SOL_IP          0
#define SHUNT_SOL_IPV6        41

#define SHUNT_AF_INET  2
#define SHUNT_AF_INET6 10

/* One TCP connection as seen from one of its sockets. */
struct shunt_tuple {
        __u8 saddr[16];
        __u8 daddr[16];
        __u16 sport; /* network order */
        __u16 dport; /* network order */
        __u16 family;
        __u16 pad;
};

/* Where an application's connect() was going. */
struct shunt_origdst {
        __u8 addr[16];
        __u16 port; /* network order */
        __u16 family;
        __u32 pid;        /* thread group that called connect() */
        __u64 created_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns) at connect() */
        __u32 flags;      /* SHUNT_OD_* */
        __u32 pad;
};

/* shunt_origdst.flags: the accepting socket (shuntd's) is watched by sockops,
 * so the entry is removed when it closes; the daemon reads without deleting.
 * Unset when shuntd's listener lives outside the cgroup: the daemon deletes
 * the entry once read. */
#define SHUNT_OD_WATCHED 1u

/* The daemon's settings, one element of shunt_config. */
struct shunt_capture_config {
        __u32 enabled;            /* 0: connect programs pass everything untouched */
        __u32 mark;               /* SO_MARK of shuntd's sockets; 0 = none */
        __u32 uid;                /* shuntd's uid, or SHUNT_UID_NONE */
        __u16 outbound_port_host; /* where captured connects go (127.0.0.1 / ::1) */
        __u16 shortcut;           /* 1: pair local sockets in the sockhash */
        __u32 flow_high;          /* SHUNT_FLOW_HIGH: redirected bytes a reader may have unread */
        __u32 flow_low;           /* SHUNT_FLOW_LOW: at most this many for the shortcut to resume */
        __u32 fail_open;          /* 1: nothing listens on outbound_port: connects left alone */
};

/* One direction of a paired connection, keyed by the receiving socket's own
 * view (shunt_flow). The sender's sk_msg program reads the receiver's queue
 * through sk: the kernel address sockops saw when it paired the socket,
 * only ever read with bpf_probe_read_kernel and trusted only while the
 * cookie read there still matches (the entry leaves when the socket
 * closes). */
struct shunt_flow {
        __u64 cookie; /* the receiving socket's cookie */
        __u64 sk;     /* its struct sock, as an address */
        __u32 state;  /* SHUNT_FLOW_*: its sender's path */
        __u32 pad;
};

#define SHUNT_FLOW_REDIRECT 0u /* sends are redirected */
#define SHUNT_FLOW_TCP      1u /* sends take TCP until the reader catches up */
#define SHUNT_FLOW_START    2u /* new: first send checks nothing went by TCP before pairing */

/* Key of shunt_exclude_cidrs (LPM trie): prefixlen counts the family byte
 * (8 bits) plus the prefix. */
struct shunt_cidr_key {
        __u32 prefixlen;
        __u8 family;
        __u8 addr[16];
};

/* Per-CPU counters: one element; userspace sums the CPUs. */
struct shunt_counters {
        __u64 redirected;       /* connect() rewritten to the outbound listener */
        __u64 skipped_own;      /* shuntd's own connects (mark or uid) */
        __u64 skipped_excluded; /* loopback, excluded port or CIDR */
        __u64 established;      /* original destination moved to its 4-tuple */
        __u64 sockhash_added;   /* sockets paired for the shortcut */
        __u64 shortcut_msgs;    /* sendmsg calls redirected to the peer socket */
        __u64 shortcut_bytes;   /* bytes redirected */
        __u64 shortcut_off;     /* sends that took the stack because the flag was off */
        __u64 getsockopt_answered;
        __u64 lookup_missed; /* an established captured socket with no cookie entry,
                                or SO_ORIGINAL_DST asked for an unknown tuple */
        __u64 map_full;      /* an insert failed: connection left on the normal path */
        __u64 flow_paused;   /* a reader had SHUNT_FLOW_HIGH unread: its sender went to TCP */
        __u64 flow_resumed;  /* the reader caught up: its sender back on the shortcut */
        __u64 flow_tcp_msgs; /* sends that took TCP for flow control (paused or draining) */
        __u64 flow_tcp_bytes;
        __u64 flow_unknown;        /* a reader's queue could not be read: its sender took TCP */
        __u64 skipped_no_listener; /* fail_open: shuntd's listener gone, connect left alone */
};

/* The layout is an ABI: pinned maps outlive a shuntd, so a new shuntd (an
 * upgrade, another compiler, the BPF target) must read what an old one wrote.
 * Any change here must be a deliberate, versioned one. */
#define SHUNT_ABI_SIZE(type, n) _Static_assert(sizeof(struct type) == (n), #type " changed size")
#define SHUNT_ABI_AT(type, field, n)                                                               \
        _Static_assert(__builtin_offsetof(struct type, field) == (n), #type "." #field " moved")
SHUNT_ABI_SIZE(shunt_tuple, 40);
SHUNT_ABI_AT(shunt_tuple, sport, 32);
SHUNT_ABI_AT(shunt_tuple, family, 36);
SHUNT_ABI_SIZE(shunt_origdst, 40);
SHUNT_ABI_AT(shunt_origdst, pid, 20);
SHUNT_ABI_AT(shunt_origdst, created_ns, 24);
SHUNT_ABI_AT(shunt_origdst, flags, 32);
SHUNT_ABI_SIZE(shunt_capture_config, 28);
SHUNT_ABI_AT(shunt_capture_config, outbound_port_host, 12);
SHUNT_ABI_AT(shunt_capture_config, flow_high, 16);
SHUNT_ABI_AT(shunt_capture_config, fail_open, 24);
SHUNT_ABI_SIZE(shunt_flow, 24);
SHUNT_ABI_AT(shunt_flow, state, 16);
SHUNT_ABI_SIZE(shunt_cidr_key, 24);
SHUNT_ABI_AT(shunt_cidr_key, addr, 5);
SHUNT_ABI_SIZE(shunt_counters, 17 * 8);
SHUNT_ABI_AT(shunt_counters, skipped_no_listener, 16 * 8);
#undef SHUNT_ABI_SIZE
#undef SHUNT_ABI_AT

#endif

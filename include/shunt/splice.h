/* SPDX-License-Identifier: Apache-2.0 */
/* Map values shared by the splice program (bpf/splice.bpf.c) and shuntd
 * (userspace/proxy/splice.c). The maps are not pinned: they belong to one
 * shuntd and go with it, so the layout is private to a build. */
#ifndef SHUNT_SPLICE_H
#define SHUNT_SPLICE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Sockets spliced at once (two per connection): a hard bound; a full map
 * leaves the connection on the userspace relay (counted). */
#define SHUNT_SPLICE_MAX_SOCKETS 65536

/* Flow control: a half goes back to shuntd when its peer's send queue is
 * full and at least this many skbs wait in the peer's psock. */
#define SHUNT_SPLICE_QLEN_MAX 16

#define SHUNT_SPLICE_KERNEL 0u /* bytes are redirected to the peer */
#define SHUNT_SPLICE_USER   1u /* bytes wait for shuntd (sticky) */
#define SHUNT_SPLICE_BROKEN 2u /* an skb repeated bytes the program could not cut: reset */

/* One direction of a spliced connection, keyed by the cookie of the socket
 * its bytes arrive on. Written by the program once created. */
struct shunt_splice_half {
        __u64 peer;       /* cookie of the socket its bytes leave by */
        __u64 redirected; /* bytes the kernel sent on to the peer */
        __u64 passed;     /* bytes left to shuntd (after a stop or a pause) */
        __u32 state;      /* SHUNT_SPLICE_* */
        __u32 seq_known;  /* next_seq is set (by the first skb) */
        __u32 next_seq;   /* TCP sequence number after the last byte seen */
        __u32 pad;
};

struct shunt_splice_config {
        __u32 qlen_max;     /* 0: SHUNT_SPLICE_QLEN_MAX */
        __u32 keep_repeats; /* tests only: do not cut repeated bytes (the kernel's bug shows) */
};

/* Per-CPU counters: one element; userspace sums the CPUs. */
struct shunt_splice_counters {
        __u64 redirected_skbs;
        __u64 redirected_bytes;
        __u64 passed_bytes;   /* bytes left to shuntd in a half that went back */
        __u64 paused;         /* halves sent back by flow control (the peer was full) */
        __u64 stopped;        /* skbs that found the half stopped by shuntd */
        __u64 no_peer;        /* skbs whose peer was not in the map */
        __u64 fins;           /* bare FINs left to shuntd */
        __u64 repeats;        /* skbs that began with bytes already taken (a retransmission) */
        __u64 repeated_bytes; /* those bytes, cut before the skb went on */
};

#endif

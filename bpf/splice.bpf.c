// SPDX-License-Identifier: GPL-2.0
/* shunt's in-kernel splice of plain TCP relays. See docs/architecture.md,
 * "Splice", and userspace/proxy/splice.h.
 *
 * Once shuntd has relayed a connection's first bytes and both of its
 * buffers are empty, it puts the accepted socket and the upstream socket in
 * splice_socks (keyed by socket cookie) with a half each in splice_halves.
 * Every skb then arriving on one of them runs shunt_splice_verdict, which
 * sends it out of the other socket (egress redirect: the kernel's psock
 * worker writes it into the peer's send queue) without shuntd reading it.
 *
 * A half goes back to shuntd (SK_PASS: the bytes wait in the socket's own
 * queue, charged to its receive buffer, so its TCP window closes) and stays
 * there when:
 *   - shuntd asks (splice_stop): it saw the peer's FIN or an error, or ends;
 *   - the peer socket cannot take more (its send queue full and more than
 *     cfg.qlen_max skbs wait for the worker): flow control, the slow reader
 *     holds the writer back through TCP's window;
 *   - the peer is not (or no longer) in splice_socks.
 * Once a half has passed a byte to shuntd it never redirects again, so no
 * redirected byte overtakes one shuntd still has to write. shuntd writes
 * what it reads only after the kernel has put every redirected byte in the
 * peer's send queue (it compares `redirected` with the peer's tcp_info).
 * A zero-length skb (a bare FIN) is neither redirected nor queued: shuntd
 * sees the FIN and passes it on after the peer has drained.
 *
 * Repeated bytes: TCP queues a segment that starts before rcv_nxt (a
 * retransmission that overlaps bytes already received, GRO-merged with new
 * ones) as it is, and only tcp_recvmsg skips its head by copied_seq; the
 * kernel's read_skb hands the whole skb to this program, and a redirect or
 * a pass would deliver those bytes a second time (tcp_eat_skb then also
 * moves copied_seq past rcv_nxt). So each half keeps the sequence number
 * after the last byte it saw (next_seq, from the socket's copied_seq at the
 * first skb) and cuts an skb's head that lies before it. An skb that cannot
 * be cut marks the half broken: shuntd resets the connection. */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "shunt/splice.h"

struct {
        __uint(type, BPF_MAP_TYPE_SOCKHASH);
        __uint(max_entries, SHUNT_SPLICE_MAX_SOCKETS);
        __type(key, __u64); /* socket cookie */
        __type(value, __u64);
} splice_socks SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_SPLICE_MAX_SOCKETS);
        __type(key, __u64); /* the receiving socket's cookie */
        __type(value, struct shunt_splice_half);
} splice_halves SEC(".maps");

/* Written by shuntd only: present = this socket's half goes to shuntd. */
struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_SPLICE_MAX_SOCKETS);
        __type(key, __u64);
        __type(value, __u8);
} splice_stop SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct shunt_splice_config);
} splice_cfg SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct shunt_splice_counters);
} splice_stats SEC(".maps");

#define COUNT(field, n)                                                                            \
        do {                                                                                       \
                __u32 zero_ = 0;                                                                   \
                struct shunt_splice_counters *c_ = bpf_map_lookup_elem(&splice_stats, &zero_);     \
                if (c_)                                                                            \
                        c_->field += (n);                                                          \
        } while (0)

/* skbs waiting in the peer's psock for the worker to send them, or -1. */
static __always_inline __s64 peer_backlog(struct bpf_sock *peer, __u32 *full)
{
        struct tcp_sock *tp = bpf_skc_to_tcp_sock(peer);
        if (!tp)
                return -1;
        struct sock *sk = (struct sock *)tp;
        int queued = BPF_CORE_READ(sk, sk_wmem_queued);
        int sndbuf = BPF_CORE_READ(sk, sk_sndbuf);
        *full = queued >= sndbuf;
        unsigned long ud = (unsigned long)BPF_CORE_READ(sk, sk_user_data);
        struct sk_psock *ps = (void *)(ud & ~7ul); /* SK_USER_DATA_* flag bits */
        if (!ps)
                return -1;
        return BPF_CORE_READ(ps, ingress_skb.qlen);
}

/* The first TCP sequence number of skb: TCP_SKB_CB(skb)->seq. The context
 * is the kernel's sk_buff; the read goes through bpf_probe_read_kernel
 * (shuntd loads this program with CAP_BPF and CAP_PERFMON). */
static __always_inline int skb_seq(struct __sk_buff *skb, __u32 *seq)
{
        /* seq is the first field of struct tcp_skb_cb, which is not in
         * every kernel's BTF (the cb array is). */
        unsigned long off = bpf_core_field_offset(struct sk_buff, cb);
        return bpf_probe_read_kernel(seq, sizeof(*seq), (void *)((unsigned long)skb + off));
}

/* The socket's copied_seq (the first byte not yet consumed), or -1. */
static __always_inline int own_copied_seq(__u64 cookie, __u32 *out)
{
        struct bpf_sock *self = bpf_map_lookup_elem(&splice_socks, &cookie);
        if (!self)
                return -1;
        struct tcp_sock *tp = bpf_skc_to_tcp_sock(self);
        int rc = -1;
        if (tp) {
                *out = BPF_CORE_READ(tp, copied_seq);
                rc = 0;
        }
        bpf_sk_release(self);
        return rc;
}

#define CUT_STEP  4095u /* what sk_skb's bpf_skb_adjust_room takes off at once */
#define CUT_STEPS 128   /* 511 KiB: more than any skb's repeated head */

/* Cuts the bytes of skb that come before h->next_seq. 0, or -1: the half
 * is broken (its peer would get bytes twice). */
static __always_inline int cut_repeat(struct __sk_buff *skb, struct shunt_splice_half *h,
                                      __u64 cookie, const struct shunt_splice_config *cfg)
{
        __u32 seq;
        if (skb_seq(skb, &seq) < 0)
                return -1;
        if (!h->seq_known) {
                if (own_copied_seq(cookie, &h->next_seq) < 0)
                        return -1;
                h->seq_known = 1;
        }
        __u32 len = skb->len;
        __s32 dup = (__s32)(h->next_seq - seq);
        if (dup <= 0) {
                h->next_seq = seq + len;
                return 0;
        }
        if ((__u32)dup >= len)
                return -1; /* TCP queues none of these: never seen */
        COUNT(repeats, 1);
        COUNT(repeated_bytes, (__u32)dup);
        h->next_seq = seq + len;
        if (cfg && cfg->keep_repeats)
                return 0;
        __u32 left = (__u32)dup;
        for (int i = 0; i < CUT_STEPS && left > 0; i++) {
                __u32 n = left < CUT_STEP ? left : CUT_STEP;
                if (bpf_skb_adjust_room(skb, -(__s32)n, 0, 0) < 0)
                        return -1;
                left -= n;
        }
        return left ? -1 : 0;
}

static __always_inline int to_shuntd(struct shunt_splice_half *h, __u32 len)
{
        if (h->state == SHUNT_SPLICE_KERNEL)
                h->state = SHUNT_SPLICE_USER;
        h->passed += len;
        COUNT(passed_bytes, len);
        return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int shunt_splice_verdict(struct __sk_buff *skb)
{
        __u64 cookie = bpf_get_socket_cookie(skb);
        struct shunt_splice_half *h = bpf_map_lookup_elem(&splice_halves, &cookie);
        if (!h)
                return SK_PASS; /* not (or no longer) spliced: shuntd reads it */
        __u32 len = skb->len;
        if (len == 0) {
                /* A bare FIN: the socket has it already (shuntd sees EOF once
                 * its queue is read). Passed to the socket's own queue it
                 * could wait behind bytes for the worker, which takes an
                 * empty skb for a broken pipe and stops sending. */
                COUNT(fins, 1);
                return SK_DROP;
        }
        __u32 zero = 0;
        struct shunt_splice_config *cfg = bpf_map_lookup_elem(&splice_cfg, &zero);
        if (h->state != SHUNT_SPLICE_BROKEN && cut_repeat(skb, h, cookie, cfg) < 0)
                h->state = SHUNT_SPLICE_BROKEN;
        len = skb->len;
        if (h->state != SHUNT_SPLICE_KERNEL)
                return to_shuntd(h, len);
        if (bpf_map_lookup_elem(&splice_stop, &cookie)) {
                COUNT(stopped, 1);
                return to_shuntd(h, len);
        }
        __u64 peer_key = h->peer;
        struct bpf_sock *peer = bpf_map_lookup_elem(&splice_socks, &peer_key);
        if (!peer) {
                COUNT(no_peer, 1);
                return to_shuntd(h, len);
        }
        __u32 full = 0;
        __s64 backlog = peer_backlog(peer, &full);
        bpf_sk_release(peer);
        __s64 qmax = cfg && cfg->qlen_max ? cfg->qlen_max : SHUNT_SPLICE_QLEN_MAX;
        if (backlog < 0 || (full && backlog >= qmax)) {
                COUNT(paused, 1);
                return to_shuntd(h, len);
        }
        if (bpf_sk_redirect_hash(skb, &splice_socks, &peer_key, 0) != SK_PASS) {
                COUNT(no_peer, 1);
                return to_shuntd(h, len);
        }
        h->redirected += len;
        COUNT(redirected_skbs, 1);
        COUNT(redirected_bytes, len);
        return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";

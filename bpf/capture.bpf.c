// SPDX-License-Identifier: GPL-2.0
/* shunt's eBPF capture: connect rewrite, original destinations, the local
 * socket shortcut and SO_ORIGINAL_DST. See docs/architecture.md, "Data path".
 *
 *   cgroup/connect4, connect6  an application's TCP connect() to a remote
 *                              address goes to shuntd's outbound listener;
 *                              the original destination is stored by
 *                              socket cookie
 *   sockops                    on establishment the entry moves to the
 *                              connection's 4-tuple (what the daemon sees
 *                              after accept()); local pairs with the
 *                              outbound listener join the sockhash; entries
 *                              leave when the socket closes
 *   sk_msg                     bytes between two paired sockets go straight
 *                              into the peer's receive queue, unless the
 *                              sender's shortcut flag is off or the peer
 *                              has too much unread (flow control: the
 *                              bytes take TCP, whose window holds the
 *                              sender back)
 *   cgroup/getsockopt          SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST from
 *                              the 4-tuple map
 */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "shunt/capture.h"

#define SK_PASS_RC 1
#define TCP_PROTO  6
#define STREAM     1 /* SOCK_STREAM */

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct shunt_capture_config);
} shunt_config SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_MAX_ORIGDST);
        __type(key, __u64); /* socket cookie */
        __type(value, struct shunt_origdst);
} shunt_orig_by_cookie SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_MAX_ORIGDST);
        __type(key, struct shunt_tuple); /* the application's view */
        __type(value, struct shunt_origdst);
} shunt_orig_by_tuple SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_SOCKHASH);
        __uint(max_entries, SHUNT_MAX_SOCKETS);
        __type(key, struct shunt_tuple); /* each socket's own view */
        __type(value, __u64);
} shunt_sockhash SEC(".maps");

/* Present = the shortcut is off for sends from that socket (own view). */
struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_MAX_SOCKETS);
        __type(key, struct shunt_tuple);
        __type(value, __u8);
} shunt_shortcut_off SEC(".maps");

/* Flow control state of each paired socket as a reader (its own view). */
struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_MAX_SOCKETS);
        __type(key, struct shunt_tuple);
        __type(value, struct shunt_flow);
} shunt_flow SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, SHUNT_MAX_EXCLUDES);
        __type(key, __u16); /* host order */
        __type(value, __u8);
} shunt_exclude_ports SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_LPM_TRIE);
        __uint(max_entries, SHUNT_MAX_EXCLUDES);
        __uint(map_flags, BPF_F_NO_PREALLOC);
        __type(key, struct shunt_cidr_key);
        __type(value, __u8);
} shunt_exclude_cidrs SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct shunt_counters);
} shunt_counters SEC(".maps");

static __always_inline struct shunt_counters *counters(void)
{
        __u32 zero = 0;
        return bpf_map_lookup_elem(&shunt_counters, &zero);
}

#define COUNT(field, n)                                                                            \
        do {                                                                                       \
                struct shunt_counters *c_ = counters();                                            \
                if (c_)                                                                            \
                        c_->field += (n);                                                          \
        } while (0)

static __always_inline struct shunt_capture_config *get_config(void)
{
        __u32 zero = 0;
        return bpf_map_lookup_elem(&shunt_config, &zero);
}

/* sock_ops and sk_msg expose remote_port shifted into the upper half on
 * some kernels and not on others; either way the low 16 bits of the result
 * are the port in network order. */
static __always_inline __u16 port_be(__u32 raw)
{
        return raw > 0xffff ? (__u16)(raw >> 16) : (__u16)raw;
}

static __always_inline void put4(__u8 *dst, __u32 v)
{
        __builtin_memcpy(dst, &v, 4);
}

static __always_inline void put16(__u8 *dst, __u32 a, __u32 b, __u32 c, __u32 d)
{
        __builtin_memcpy(dst, &a, 4);
        __builtin_memcpy(dst + 4, &b, 4);
        __builtin_memcpy(dst + 8, &c, 4);
        __builtin_memcpy(dst + 12, &d, 4);
}

static __always_inline void swap_tuple(const struct shunt_tuple *in, struct shunt_tuple *out)
{
        __builtin_memcpy(out->saddr, in->daddr, 16);
        __builtin_memcpy(out->daddr, in->saddr, 16);
        out->sport = in->dport;
        out->dport = in->sport;
        out->family = in->family;
        out->pad = 0;
}

static __always_inline int v4_loopback(__u32 addr_be)
{
        return (bpf_ntohl(addr_be) >> 24) == 127;
}

static __always_inline int v6_loopback(__u32 a, __u32 b, __u32 c, __u32 d)
{
        if (a == 0 && b == 0 && c == 0 && d == bpf_htonl(1))
                return 1;
        /* ::ffff:127.x.y.z */
        return a == 0 && b == 0 && c == bpf_htonl(0xffff) && v4_loopback(d);
}

static __always_inline int tuple_is_loopback(const struct shunt_tuple *t, int local_side)
{
        const __u8 *a = local_side ? t->saddr : t->daddr;
        __u32 w[4];
        __builtin_memcpy(w, a, 16);
        if (t->family == SHUNT_AF_INET)
                return v4_loopback(w[0]);
        return v6_loopback(w[0], w[1], w[2], w[3]);
}

/* Shared checks of connect4/connect6: shuntd's own sockets, excluded ports. */
static __always_inline int own_socket(struct bpf_sock_addr *ctx,
                                      const struct shunt_capture_config *cfg)
{
        struct bpf_sock *sk = ctx->sk;
        if (sk && cfg->mark != 0 && sk->mark == cfg->mark)
                return 1;
        __u32 uid = (__u32)bpf_get_current_uid_gid();
        return cfg->uid != SHUNT_UID_NONE && uid == cfg->uid;
}

static __always_inline int excluded(__u16 port_host, __u8 family, const __u32 *addr)
{
        if (bpf_map_lookup_elem(&shunt_exclude_ports, &port_host))
                return 1;
        struct shunt_cidr_key k = {};
        k.family = family;
        if (family == SHUNT_AF_INET) {
                k.prefixlen = 8 + 32;
                put4(k.addr, addr[0]);
        } else {
                k.prefixlen = 8 + 128;
                put16(k.addr, addr[0], addr[1], addr[2], addr[3]);
        }
        return bpf_map_lookup_elem(&shunt_exclude_cidrs, &k) != NULL;
}

/* The 4-tuple map slot a connect reserves until it is established: a tuple
 * of family 0 holding the socket cookie (never a real connection). */
static __always_inline void reservation(__u64 cookie, struct shunt_tuple *k)
{
        __builtin_memset(k, 0, sizeof(*k));
        __builtin_memcpy(k->saddr, &cookie, sizeof(cookie));
}

/* A connect is captured only when both maps have room for it: the 4-tuple
 * entry the daemon needs after accept() is reserved now, so a full map sends
 * the connection down the normal path instead of to a daemon that could not
 * tell where it was going. */
static __always_inline int record(void *ctx, const struct shunt_origdst *od)
{
        __u64 cookie = bpf_get_socket_cookie(ctx);
        struct shunt_tuple rk;
        reservation(cookie, &rk);
        if (bpf_map_update_elem(&shunt_orig_by_tuple, &rk, od, BPF_ANY) != 0) {
                COUNT(map_full, 1);
                return -1;
        }
        if (bpf_map_update_elem(&shunt_orig_by_cookie, &cookie, od, BPF_ANY) != 0) {
                bpf_map_delete_elem(&shunt_orig_by_tuple, &rk);
                COUNT(map_full, 1);
                return -1;
        }
        return 0;
}

/* failure_mode open: shuntd's outbound listener is gone (shuntd was killed
 * or crashed), so a rewritten connect would be refused; it is left to go
 * where the application asked. The listener is looked up in the caller's
 * network namespace; a socket of shuntd's own closes with the process. */
static __always_inline int listener_gone(void *ctx, struct shunt_capture_config *cfg, int v6)
{
        struct bpf_sock_tuple t = {};
        struct bpf_sock *sk;
        if (v6) {
                t.ipv6.daddr[3] = bpf_htonl(1);
                t.ipv6.dport = bpf_htons(cfg->outbound_port_host);
                sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
        } else {
                t.ipv4.daddr = bpf_htonl(0x7f000001);
                t.ipv4.dport = bpf_htons(cfg->outbound_port_host);
                sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        }
        if (!sk)
                return 1;
        bpf_sk_release(sk);
        return 0;
}

SEC("cgroup/connect4")
int shunt_connect4(struct bpf_sock_addr *ctx)
{
        if (ctx->type != STREAM)
                return SK_PASS_RC;
        struct shunt_capture_config *cfg = get_config();
        if (!cfg || !cfg->enabled)
                return SK_PASS_RC;
        if (own_socket(ctx, cfg)) {
                COUNT(skipped_own, 1);
                return SK_PASS_RC;
        }
        __u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
        __u16 port = (__u16)ctx->user_port;
        if (addr[0] == 0 || v4_loopback(addr[0]) ||
            excluded(bpf_ntohs(port), SHUNT_AF_INET, addr)) {
                COUNT(skipped_excluded, 1);
                return SK_PASS_RC;
        }
        if (cfg->fail_open && listener_gone(ctx, cfg, 0)) {
                COUNT(skipped_no_listener, 1);
                return SK_PASS_RC;
        }
        struct shunt_origdst od = {};
        put4(od.addr, addr[0]);
        od.port = port;
        od.family = SHUNT_AF_INET;
        od.pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
        od.created_ns = bpf_ktime_get_ns();
        if (record(ctx, &od) < 0)
                return SK_PASS_RC;
        ctx->user_ip4 = bpf_htonl(0x7f000001);
        ctx->user_port = (__u32)bpf_htons(cfg->outbound_port_host);
        COUNT(redirected, 1);
        return SK_PASS_RC;
}

SEC("cgroup/connect6")
int shunt_connect6(struct bpf_sock_addr *ctx)
{
        if (ctx->type != STREAM)
                return SK_PASS_RC;
        struct shunt_capture_config *cfg = get_config();
        if (!cfg || !cfg->enabled)
                return SK_PASS_RC;
        if (own_socket(ctx, cfg)) {
                COUNT(skipped_own, 1);
                return SK_PASS_RC;
        }
        __u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
        __u16 port = (__u16)ctx->user_port;
        int unspecified = (addr[0] | addr[1] | addr[2] | addr[3]) == 0;
        if (unspecified || v6_loopback(addr[0], addr[1], addr[2], addr[3]) ||
            excluded(bpf_ntohs(port), SHUNT_AF_INET6, addr)) {
                COUNT(skipped_excluded, 1);
                return SK_PASS_RC;
        }
        /* An IPv4-mapped destination is also checked against IPv4 exclusions. */
        if (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff)) {
                __u32 v4[4] = {addr[3], 0, 0, 0};
                if (excluded(bpf_ntohs(port), SHUNT_AF_INET, v4)) {
                        COUNT(skipped_excluded, 1);
                        return SK_PASS_RC;
                }
        }
        if (cfg->fail_open && listener_gone(ctx, cfg, 1)) {
                COUNT(skipped_no_listener, 1);
                return SK_PASS_RC;
        }
        struct shunt_origdst od = {};
        put16(od.addr, addr[0], addr[1], addr[2], addr[3]);
        od.port = port;
        od.family = SHUNT_AF_INET6;
        od.pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
        od.created_ns = bpf_ktime_get_ns();
        if (record(ctx, &od) < 0)
                return SK_PASS_RC;
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = 0;
        ctx->user_ip6[3] = bpf_htonl(1);
        ctx->user_port = (__u32)bpf_htons(cfg->outbound_port_host);
        COUNT(redirected, 1);
        return SK_PASS_RC;
}

/* The socket's own view of its connection. */
static __always_inline int sockops_tuple(struct bpf_sock_ops *skops, struct shunt_tuple *t)
{
        __builtin_memset(t, 0, sizeof(*t));
        t->sport = bpf_htons((__u16)skops->local_port);
        t->dport = port_be(skops->remote_port);
        if (skops->family == SHUNT_AF_INET) {
                t->family = SHUNT_AF_INET;
                put4(t->saddr, skops->local_ip4);
                put4(t->daddr, skops->remote_ip4);
                return 0;
        }
        if (skops->family == SHUNT_AF_INET6) {
                t->family = SHUNT_AF_INET6;
                put16(t->saddr, skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
                      skops->local_ip6[3]);
                put16(t->daddr, skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
                      skops->remote_ip6[3]);
                return 0;
        }
        return -1;
}

static __always_inline void watch_close(struct bpf_sock_ops *skops)
{
        bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A paired socket gets its flow state (as a reader) first: a socket without
 * one is never redirected to. Its sender starts in SHUNT_FLOW_START, so bytes
 * sent by TCP before both ends were paired are read before any redirected. */
static __always_inline void pair(struct bpf_sock_ops *skops, struct shunt_tuple *t)
{
        struct bpf_sock *sk = skops->sk;
        if (!sk)
                return;
        struct shunt_flow f = {};
        f.cookie = bpf_get_socket_cookie(skops);
        f.sk = (__u64)sk;
        f.state = SHUNT_FLOW_START;
        if (bpf_map_update_elem(&shunt_flow, t, &f, BPF_ANY) != 0) {
                COUNT(map_full, 1);
                return;
        }
        if (bpf_sock_hash_update(skops, &shunt_sockhash, t, BPF_NOEXIST) == 0) {
                COUNT(sockhash_added, 1);
        } else {
                bpf_map_delete_elem(&shunt_flow, t);
                COUNT(map_full, 1);
        }
}

SEC("sockops")
int shunt_sockops(struct bpf_sock_ops *skops)
{
        struct shunt_capture_config *cfg = get_config();
        if (!cfg || !cfg->enabled)
                return 1;
        struct shunt_tuple t, peer;
        __u64 cookie;
        switch (skops->op) {
        case BPF_SOCK_OPS_TCP_CONNECT_CB:
                /* A captured connect: clean its cookie entry up even if the
                 * connection never establishes. */
                cookie = bpf_get_socket_cookie(skops);
                if (bpf_map_lookup_elem(&shunt_orig_by_cookie, &cookie))
                        watch_close(skops);
                break;
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
                if (sockops_tuple(skops, &t) < 0)
                        break;
                cookie = bpf_get_socket_cookie(skops);
                struct shunt_origdst *od = bpf_map_lookup_elem(&shunt_orig_by_cookie, &cookie);
                if (!od)
                        break; /* not captured */
                watch_close(skops);
                reservation(cookie, &peer);
                bpf_map_delete_elem(&shunt_orig_by_tuple, &peer); /* its slot, for t */
                if (bpf_map_update_elem(&shunt_orig_by_tuple, &t, od, BPF_ANY) == 0) {
                        COUNT(established, 1);
                        bpf_map_delete_elem(&shunt_orig_by_cookie, &cookie);
                } else {
                        COUNT(map_full, 1);
                }
                if (cfg->shortcut && t.dport == bpf_htons(cfg->outbound_port_host) &&
                    tuple_is_loopback(&t, 0))
                        pair(skops, &t);
                break;
        }
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
                if (sockops_tuple(skops, &t) < 0)
                        break;
                if (t.sport != bpf_htons(cfg->outbound_port_host) || !tuple_is_loopback(&t, 1))
                        break;
                swap_tuple(&t, &peer);
                struct shunt_origdst *pod = bpf_map_lookup_elem(&shunt_orig_by_tuple, &peer);
                if (!pod)
                        break; /* reached the listener directly: not ours to pair */
                watch_close(skops);
                pod->flags |= SHUNT_OD_WATCHED; /* removed when this socket closes */
                if (cfg->shortcut)
                        pair(skops, &t);
                break;
        case BPF_SOCK_OPS_STATE_CB:
                if (skops->args[1] != BPF_TCP_CLOSE)
                        break;
                cookie = bpf_get_socket_cookie(skops);
                if (bpf_map_delete_elem(&shunt_orig_by_cookie, &cookie) == 0) {
                        /* Closed before it was established. */
                        reservation(cookie, &t);
                        bpf_map_delete_elem(&shunt_orig_by_tuple, &t);
                }
                if (sockops_tuple(skops, &t) < 0)
                        break;
                /* Both directions' flags: the other end may not be watched
                 * (shuntd's listener outside the cgroup). */
                bpf_map_delete_elem(&shunt_shortcut_off, &t);
                bpf_map_delete_elem(&shunt_flow, &t);
                swap_tuple(&t, &peer);
                bpf_map_delete_elem(&shunt_shortcut_off, &peer);
                /* The 4-tuple entry lives until the accepting side closes
                 * (or the daemon consumes it): the application may close
                 * before shuntd has accepted. */
                if (t.sport == bpf_htons(cfg->outbound_port_host)) {
                        swap_tuple(&t, &peer);
                        bpf_map_delete_elem(&shunt_orig_by_tuple, &peer);
                }
                /* The sockhash drops a closing socket by itself. */
                break;
        }
        return 1;
}

/* Messages counted in a reader's queue on kernels without msg_tot_len; a
 * longer queue counts as over the threshold. */
#define FLOW_WALK_MAX 64

/* Bytes waiting in the shortcut receive queue of reader r (its psock's
 * ingress_msg), or -1 when it cannot be read. 6.18 keeps a total
 * (msg_tot_len); 6.1 does not, so the queue is walked. Read without the
 * queue's lock: a value off by a message in flight only moves a pause by
 * that much. */
static __always_inline __s64 reader_queued(struct sock *r)
{
        unsigned long ud = (unsigned long)BPF_CORE_READ(r, sk_user_data);
        struct sk_psock *ps = (void *)(ud & ~7ul); /* SK_USER_DATA_* flag bits */
        if (!ps)
                return -1;
        if (bpf_core_field_exists(ps->msg_tot_len))
                return BPF_CORE_READ(ps, msg_tot_len);
        unsigned long head = (unsigned long)ps + bpf_core_field_offset(ps->ingress_msg);
        unsigned long next = (unsigned long)BPF_CORE_READ(ps, ingress_msg.next);
        unsigned long list_off = bpf_core_field_offset(struct sk_msg, list);
        __s64 total = 0;
        for (int i = 0; i < FLOW_WALK_MAX; i++) {
                if (next == head || next == 0)
                        return total;
                struct sk_msg *m = (void *)(next - list_off);
                total += BPF_CORE_READ(m, sg.size);
                next = (unsigned long)BPF_CORE_READ(m, list.next);
        }
        return SHUNT_FLOW_HIGH + 1; /* longer than we count: treat as full */
}

SEC("sk_msg")
int shunt_msg(struct sk_msg_md *msg)
{
        struct shunt_tuple t = {}, peer;
        t.sport = bpf_htons((__u16)msg->local_port);
        t.dport = port_be(msg->remote_port);
        if (msg->family == SHUNT_AF_INET) {
                t.family = SHUNT_AF_INET;
                put4(t.saddr, msg->local_ip4);
                put4(t.daddr, msg->remote_ip4);
        } else if (msg->family == SHUNT_AF_INET6) {
                t.family = SHUNT_AF_INET6;
                put16(t.saddr, msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2],
                      msg->local_ip6[3]);
                put16(t.daddr, msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2],
                      msg->remote_ip6[3]);
        } else {
                return SK_PASS;
        }
        swap_tuple(&t, &peer);
        /* The peer as a reader: no state, not paired (yet): TCP. */
        struct shunt_flow *f = bpf_map_lookup_elem(&shunt_flow, &peer);
        if (!f)
                return SK_PASS;
        __u32 size = msg->size;
        if (bpf_map_lookup_elem(&shunt_shortcut_off, &t)) {
                /* When the flag goes, the shortcut resumes as after a pause. */
                f->state = SHUNT_FLOW_TCP;
                COUNT(shortcut_off, 1);
                return SK_PASS;
        }
        struct shunt_capture_config *cfg = get_config();
        __s64 high = cfg ? cfg->flow_high : SHUNT_FLOW_HIGH;
        __s64 low = cfg ? cfg->flow_low : SHUNT_FLOW_LOW;
        struct sock *r = (void *)f->sk;
        __s64 queued = -1;
        if (BPF_CORE_READ(r, __sk_common.skc_cookie.counter) == (__s64)f->cookie)
                queued = reader_queued(r);
        if (queued < 0) {
                f->state = SHUNT_FLOW_TCP;
                COUNT(flow_unknown, 1);
                return SK_PASS;
        }
        if (f->state != SHUNT_FLOW_REDIRECT) {
                /* Paused (or new): back to the shortcut only when the reader
                 * has caught up and has read every byte we put on TCP, for
                 * it reads its shortcut queue first and would take later
                 * redirected bytes before those. */
                struct tcp_sock *tp = msg->sk ? bpf_skc_to_tcp_sock(msg->sk) : 0;
                if (queued > low || !tp ||
                    tp->write_seq != BPF_CORE_READ((struct tcp_sock *)r, copied_seq)) {
                        COUNT(flow_tcp_msgs, 1);
                        COUNT(flow_tcp_bytes, size);
                        return SK_PASS;
                }
                if (f->state == SHUNT_FLOW_TCP)
                        COUNT(flow_resumed, 1);
                f->state = SHUNT_FLOW_REDIRECT;
        }
        if (queued + size > high) {
                /* This and the next sends queue in TCP, whose window holds
                 * the sender back; the reader takes what we redirected
                 * before them, so the order holds. */
                f->state = SHUNT_FLOW_TCP;
                COUNT(flow_paused, 1);
                COUNT(flow_tcp_msgs, 1);
                COUNT(flow_tcp_bytes, size);
                return SK_PASS;
        }
        /* No peer in the sockhash: the helper reports SK_DROP without
         * redirecting; the bytes then take the normal stack path. */
        if (bpf_msg_redirect_hash(msg, &shunt_sockhash, &peer, BPF_F_INGRESS) == SK_PASS) {
                COUNT(shortcut_msgs, 1);
                COUNT(shortcut_bytes, size);
        } else {
                f->state = SHUNT_FLOW_TCP; /* the next redirect waits for these */
        }
        return SK_PASS;
}

static __always_inline void sk_tuple_peer_view(struct bpf_sock *sk, struct shunt_tuple *t)
{
        /* The accepting socket's peer is the application: key by its view. */
        __builtin_memset(t, 0, sizeof(*t));
        t->sport = (__u16)sk->dst_port;
        t->dport = bpf_htons((__u16)sk->src_port);
        if (sk->family == SHUNT_AF_INET) {
                t->family = SHUNT_AF_INET;
                put4(t->saddr, sk->dst_ip4);
                put4(t->daddr, sk->src_ip4);
        } else {
                t->family = SHUNT_AF_INET6;
                put16(t->saddr, sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]);
                put16(t->daddr, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
        }
}

SEC("cgroup/getsockopt")
int shunt_getsockopt(struct bpf_sockopt *ctx)
{
        if (ctx->optname != SHUNT_SO_ORIGINAL_DST)
                return 1;
        int level = ctx->level;
        if (level != SHUNT_SOL_IP && level != SHUNT_SOL_IPV6)
                return 1;
        struct bpf_sock *sk = ctx->sk;
        if (!sk || sk->protocol != TCP_PROTO)
                return 1;
        if (sk->family != SHUNT_AF_INET && sk->family != SHUNT_AF_INET6)
                return 1;
        struct shunt_tuple t;
        sk_tuple_peer_view(sk, &t);
        struct shunt_origdst *od = bpf_map_lookup_elem(&shunt_orig_by_tuple, &t);
        if (!od) {
                if (ctx->retval != 0)
                        COUNT(lookup_missed, 1);
                return 1; /* the kernel's own answer (netfilter) stands */
        }
        if (level == SHUNT_SOL_IP && od->family == SHUNT_AF_INET) {
                struct sockaddr_in *sin = ctx->optval;
                if ((void *)(sin + 1) > ctx->optval_end)
                        return 1;
                __builtin_memset(sin, 0, sizeof(*sin));
                sin->sin_family = SHUNT_AF_INET;
                sin->sin_port = od->port;
                __builtin_memcpy(&sin->sin_addr.s_addr, od->addr, 4);
                ctx->optlen = sizeof(*sin);
        } else if (level == SHUNT_SOL_IPV6 && od->family == SHUNT_AF_INET6) {
                struct sockaddr_in6 *sin6 = ctx->optval;
                if ((void *)(sin6 + 1) > ctx->optval_end)
                        return 1;
                __builtin_memset(sin6, 0, sizeof(*sin6));
                sin6->sin6_family = SHUNT_AF_INET6;
                sin6->sin6_port = od->port;
                __builtin_memcpy(&sin6->sin6_addr, od->addr, 16);
                ctx->optlen = sizeof(*sin6);
        } else {
                return 1;
        }
        ctx->retval = 0;
        COUNT(getsockopt_answered, 1);
        return 1;
}

char LICENSE[] SEC("license") = "GPL";

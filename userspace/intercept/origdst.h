/* SPDX-License-Identifier: Apache-2.0 */
/* Original destination of a captured connection.
 *
 * One interface for every capture mode: iptables REDIRECT answers through
 * SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST; eBPF capture will answer from its
 * map (and through cgroup/getsockopt for the same socket option). */
#ifndef SHUNT_INTERCEPT_ORIGDST_H
#define SHUNT_INTERCEPT_ORIGDST_H

#include <stdbool.h>
#include <sys/socket.h>

struct bpfcap;

enum origdst_result {
        ORIGDST_OK = 0,
        ORIGDST_NOT_REDIRECTED, /* the socket reached us directly (dst == our listener) */
        ORIGDST_ERROR,          /* the kernel could not answer: errno is set */
};

/* fd is an accepted socket; local is its getsockname() address and peer the
 * address accept() returned. An IPv4-mapped IPv6 destination (a dual-stack
 * client's IPv6 socket connected to ::ffff:a.b.c.d, as eBPF capture sees it)
 * comes back as the IPv4 address, as iptables capture reports it. */
enum origdst_result origdst_get(int fd, const struct sockaddr_storage *local,
                                const struct sockaddr_storage *peer, struct sockaddr_storage *out);

/* eBPF mode: answer from the capture's 4-tuple map first (the entry is
 * consumed unless the kernel removes it on close, see bpfcap_lookup), then
 * from the kernel as above. NULL returns to the kernel only.
 * Set before the workers start; b must outlive them. */
void origdst_use_bpf(struct bpfcap *b);

/* Node mode: the calling thread (a pod's worker) answers from b, that
 * pod's capture, before the process-wide one. NULL clears it. */
void origdst_use_bpf_thread(struct bpfcap *b);

/* Drops the original destination the calling thread's capture holds for
 * the accepted socket fd without using it (a connection refused before its
 * destination was asked: node mode's captures are not watched by sockops,
 * so the entry would otherwise stay until its 4-tuple is reused). Only
 * with origdst_use_bpf_thread; else nothing. */
void origdst_forget(int fd);

/* eBPF capture whose maps this process cannot open (installed by `shuntd
 * init`, see bpfcap_open_pinned): original destinations come from
 * SO_ORIGINAL_DST, which the capture's cgroup/getsockopt program answers
 * from its map, and reads are shortcut-aware as with origdst_use_bpf. */
void origdst_use_ebpf_without_maps(void);

/* eBPF mode: the application's end of an outbound connection may be a
 * sk_msg shortcut socket. Flow control (bpf/capture.bpf.c) moves each
 * direction between the shortcut and TCP as the reader keeps up or not, and
 * a read of such a socket returns only shortcut bytes while any wait, TCP
 * bytes only after: a short read does not mean the socket is drained, so
 * the relay reads it until EAGAIN. origdst_shortcut_active() is the cheap
 * test for the hot path: true only in eBPF mode. */
extern bool origdst_shortcut_enabled;
static inline bool origdst_shortcut_active(void)
{
        return origdst_shortcut_enabled;
}

/* Start-up self-test: proves the running kernel can answer SO_ORIGINAL_DST
 * (conntrack loaded, the nat table present). On failure fills why with what
 * to fix and returns -1. In eBPF mode, which does not need conntrack for
 * outbound connections, it checks nothing and returns 0. */
int origdst_selftest(char *why, size_t whylen);

#endif

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

/* fd is an accepted socket; local is its getsockname() address. */
enum origdst_result origdst_get(int fd, const struct sockaddr_storage *local,
                                struct sockaddr_storage *out);

/* eBPF mode: answer from the capture's 4-tuple map first (the entry is
 * consumed unless the kernel removes it on close, see bpfcap_lookup), then
 * from the kernel as above. NULL returns to the kernel only.
 * Set before the workers start; b must outlive them. */
void origdst_use_bpf(struct bpfcap *b);

/* Pitfall 1 (DESIGN.md): bytes an application sends over the sk_msg
 * shortcut land in shuntd's socket with no flow control. When the relay
 * stops reading a connection because its buffer is full it turns the
 * shortcut off for that connection, both directions, for the rest of its
 * life: the application's sends then take TCP, whose window holds it back.
 * It is not turned on again: bytes still in TCP (the sender's write queue,
 * our receive queue) would be overtaken by redirected ones, which the
 * integration tests caught as corrupted streams.
 * origdst_shortcut_active() is the cheap test for the hot path: true only in
 * eBPF mode. origdst_shortcut_set: 0 or negative errno (-ENOTSUP outside
 * eBPF mode). */
extern bool origdst_shortcut_enabled;
static inline bool origdst_shortcut_active(void)
{
        return origdst_shortcut_enabled;
}
int origdst_shortcut_set(int fd, bool on);

/* Start-up self-test: proves the running kernel can answer SO_ORIGINAL_DST
 * (conntrack loaded, the nat table present). On failure fills why with what
 * to fix and returns -1. In eBPF mode, which does not need conntrack for
 * outbound connections, it checks nothing and returns 0. */
int origdst_selftest(char *why, size_t whylen);

#endif
